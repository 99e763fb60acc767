//! OIDC tokens as passwords: validate an ID token or a JWT access token
//! against its issuer's discovery document and JWKS, and map its claims to
//! a [`Principal`].
//!
//! Checks, in order: shape and size; the algorithm (`none` and HMAC are
//! never accepted, others only if configured); the issuer (`iss` must be a
//! configured issuer exactly; it picks the settings); the signature (with
//! the issuer's key named by `kid`; an unknown `kid` refetches the JWKS, at
//! most once per [`FORCED_REFRESH_INTERVAL`], so key rotation needs no
//! restart and random `kid`s cannot make Sluice hammer the IdP); `exp`
//! (required) and `nbf` with the configured skew; `aud`. Only then are the
//! claims read.
//!
//! Keys are cached per issuer for the life of the process (they survive a
//! config reload) and refetched after [`KEYS_MAX_AGE`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::jwt::{self, Alg, Jwk, JwtError};
use crate::principal::{OnExpiry, Principal, PrincipalKind};

/// How long fetched keys are used before they are fetched again.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(300);
/// Least time between two refetches caused by an unknown `kid`.
pub const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// One `[[oidc]]` issuer, as Sluice uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSettings {
    /// Issuer URL, exactly as in the tokens' `iss`.
    pub issuer: String,
    /// Accepted audiences: the token's `aud` must contain one of them.
    pub audiences: Vec<String>,
    /// Claim that names the principal (e.g. `email`).
    pub user_claim: String,
    /// Claim that lists the groups (an array of strings, or one string).
    pub groups_claim: String,
    /// Claim with the kind (`human`, `service`, `agent`), if any.
    pub kind_claim: Option<String>,
    /// Kind when no claim says.
    pub default_kind: PrincipalKind,
    /// Claim with a display name.
    pub display_name_claim: String,
    /// Attributes from claims: attribute name → claim name.
    pub attribute_claims: BTreeMap<String, String>,
    /// Clock skew allowed for `exp` and `nbf`.
    pub skew: Duration,
    /// Accepted signature algorithms.
    pub algorithms: Vec<Alg>,
    /// What happens to a session when its token expires.
    pub on_expiry: OnExpiry,
    /// OAuth clients that are principals themselves (client credentials).
    pub clients: Vec<ClientMapping>,
}

/// An OAuth client whose own tokens (client credentials) sign in as a
/// service or agent principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMapping {
    /// The client id (`client_id`/`azp` claim, or `sub` for client credentials).
    pub client_id: String,
    /// Principal name.
    pub name: String,
    /// Service or agent (human is allowed but unusual).
    pub kind: PrincipalKind,
    /// Groups.
    pub groups: Vec<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// Claim naming the person the client acts for: a string, or an object
    /// with `sub` (RFC 8693 style).
    pub on_behalf_of_claim: Option<String>,
    /// The person the client always acts for (when no claim says).
    pub on_behalf_of: Option<String>,
}

/// Why a token was refused. The message is for the client: it says why
/// without repeating the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT.
    #[error("the password is not a valid token ({0})")]
    Malformed(String),
    /// `iss` is not a configured issuer.
    #[error("the token's issuer is not trusted by this proxy")]
    UntrustedIssuer,
    /// Refused algorithm.
    #[error("the token's signing algorithm {0} is not accepted")]
    Algorithm(String),
    /// No key of the issuer has this `kid` (or fits the algorithm).
    #[error("the token was signed with a key the issuer does not publish")]
    UnknownKey,
    /// Signature does not verify.
    #[error("the token's signature is not valid")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired; run `sluice login` again")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` does not name Sluice.
    #[error("the token is not meant for this proxy (audience)")]
    Audience,
    /// A required claim is missing or has the wrong type.
    #[error("the token has no usable {0:?} claim")]
    Claim(String),
    /// Discovery or JWKS could not be fetched.
    #[error("the identity provider could not be reached to check the token")]
    IssuerUnavailable(String),
}

impl TokenError {
    /// SQLSTATE for the refusal: `28P01` when the credential is wrong,
    /// `08001`-like trouble reaching the IdP is `28000` too (not the client's
    /// fault, but still no sign-in).
    pub fn sqlstate(&self) -> &'static str {
        match self {
            TokenError::IssuerUnavailable(_) => "28000",
            _ => "28P01",
        }
    }
}

/// Fetches JSON documents (discovery, JWKS). Tests substitute their own.
pub trait Fetch: Send + Sync {
    /// GET `url` as JSON.
    fn get_json(&self, url: &str) -> Result<Value, String>;
}

/// The real fetcher: HTTPS (or loopback HTTP) with `ureq`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpFetch;

impl Fetch for HttpFetch {
    fn get_json(&self, url: &str) -> Result<Value, String> {
        crate::http::get_json(url)
    }
}

/// The URL of an issuer's discovery document.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

#[derive(Default)]
struct KeysState {
    jwks_uri: Option<String>,
    keys: Vec<Jwk>,
    fetched: Option<Instant>,
    forced: Option<Instant>,
}

/// Per-issuer key cache.
#[derive(Default)]
struct IssuerKeys {
    state: RwLock<KeysState>,
    /// Held while fetching, so concurrent misses fetch once.
    fetching: Mutex<()>,
}

/// Keys of every issuer, shared by all sessions.
#[derive(Default)]
pub struct KeyCache {
    issuers: Mutex<HashMap<String, Arc<IssuerKeys>>>,
}

impl KeyCache {
    /// The process-wide cache.
    pub fn global() -> &'static KeyCache {
        static CACHE: OnceLock<KeyCache> = OnceLock::new();
        CACHE.get_or_init(KeyCache::default)
    }

    fn issuer(&self, issuer: &str) -> Arc<IssuerKeys> {
        let mut map = match self.issuers.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(issuer.to_owned()).or_default().clone()
    }
}

fn read_state(keys: &IssuerKeys) -> std::sync::RwLockReadGuard<'_, KeysState> {
    match keys.state.read() {
        Ok(s) => s,
        Err(p) => p.into_inner(),
    }
}

fn write_state(keys: &IssuerKeys) -> std::sync::RwLockWriteGuard<'_, KeysState> {
    match keys.state.write() {
        Ok(s) => s,
        Err(p) => p.into_inner(),
    }
}

/// Fetch discovery (once) and the JWKS into `keys`.
fn refresh(settings: &IssuerSettings, keys: &IssuerKeys, fetch: &dyn Fetch) -> Result<(), String> {
    let jwks_uri = read_state(keys).jwks_uri.clone();
    let jwks_uri = match jwks_uri {
        Some(u) => u,
        None => {
            let url = discovery_url(&settings.issuer);
            let doc = fetch.get_json(&url)?;
            let issuer = doc
                .get("issuer")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // OpenID Connect Discovery §4.3: the document must name this issuer.
            if issuer != settings.issuer {
                return Err(format!(
                    "{url}: the discovery document names issuer {issuer:?}, not {:?}",
                    settings.issuer
                ));
            }
            let uri = doc
                .get("jwks_uri")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{url}: no jwks_uri"))?
                .to_owned();
            crate::http::check_url(&uri)?;
            uri
        }
    };
    let doc = fetch.get_json(&jwks_uri)?;
    let parsed = jwt::parse_jwks(&doc).map_err(|e| format!("{jwks_uri}: {e}"))?;
    let mut state = write_state(keys);
    state.jwks_uri = Some(jwks_uri);
    state.keys = parsed;
    state.fetched = Some(Instant::now());
    Ok(())
}

/// A token that passed every check, as a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// Who.
    pub principal: Principal,
    /// Which issuer vouched.
    pub issuer: String,
}

/// Validates tokens against configured issuers.
pub struct Validator<'a> {
    issuers: &'a [IssuerSettings],
    fetch: &'a dyn Fetch,
    cache: &'a KeyCache,
}

impl<'a> Validator<'a> {
    /// A validator over `issuers`, fetching with `fetch` into `cache`.
    pub fn new(issuers: &'a [IssuerSettings], fetch: &'a dyn Fetch, cache: &'a KeyCache) -> Self {
        Validator {
            issuers,
            fetch,
            cache,
        }
    }

    /// Validate `token` at time `now`. May block on HTTP (a cache miss):
    /// call from `spawn_blocking` in async code.
    pub fn validate(&self, token: &str, now: SystemTime) -> Result<Validated, TokenError> {
        let t = jwt::decode(token).map_err(|e| match e {
            JwtError::Malformed(m) => TokenError::Malformed(m),
            other => TokenError::Malformed(other.to_string()),
        })?;
        // The algorithm is judged before anything else, so `none` and HMAC
        // tokens never get near a key.
        let alg: Alg = t
            .header
            .alg
            .parse()
            .map_err(|_| TokenError::Algorithm(t.header.alg.clone()))?;
        if t.header.crit.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(TokenError::Malformed("unsupported critical header".into()));
        }
        let iss = t
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| TokenError::Claim("iss".into()))?;
        let settings = self
            .issuers
            .iter()
            .find(|s| s.issuer == iss)
            .ok_or(TokenError::UntrustedIssuer)?;
        if !settings.algorithms.contains(&alg) {
            return Err(TokenError::Algorithm(alg.to_string()));
        }
        self.check_signature(settings, alg, &t)?;
        check_times(&t.claims, settings.skew, now)?;
        check_audience(&t.claims, &settings.audiences)?;
        let principal = map_claims(settings, &t.claims)?;
        Ok(Validated {
            principal,
            issuer: settings.issuer.clone(),
        })
    }

    fn check_signature(
        &self,
        settings: &IssuerSettings,
        alg: Alg,
        t: &jwt::Unverified<'_>,
    ) -> Result<(), TokenError> {
        let keys = self.cache.issuer(&settings.issuer);
        let kid = t.header.kid.as_deref();
        let attempt = |state: &KeysState| -> Option<Result<(), TokenError>> {
            let candidates: Vec<&Jwk> = state
                .keys
                .iter()
                .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
                .filter(|k| k.fits(alg))
                .collect();
            if candidates.is_empty() {
                return None;
            }
            let input = t.signing_input.as_bytes();
            Some(
                if candidates
                    .iter()
                    .any(|k| jwt::verify(alg, k, input, &t.signature).is_ok())
                {
                    Ok(())
                } else {
                    Err(TokenError::BadSignature)
                },
            )
        };
        {
            let state = read_state(&keys);
            let fresh = state.fetched.is_some_and(|f| f.elapsed() < KEYS_MAX_AGE);
            if fresh {
                if let Some(result) = attempt(&state) {
                    return result;
                }
            }
        }
        // Stale, never fetched, or an unknown kid: fetch (once for everyone
        // waiting), unless an unknown-kid refetch happened a moment ago.
        let _fetching = match keys.fetching.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (stale, recently_forced) = {
            let state = read_state(&keys);
            let stale = state.fetched.is_none_or(|f| f.elapsed() >= KEYS_MAX_AGE);
            let recently = state
                .forced
                .is_some_and(|f| f.elapsed() < FORCED_REFRESH_INTERVAL);
            // Someone else may have fetched while we waited for the lock.
            if !stale {
                if let Some(result) = attempt(&state) {
                    return result;
                }
            }
            (stale, recently)
        };
        if stale || !recently_forced {
            if !stale {
                write_state(&keys).forced = Some(Instant::now());
            }
            if let Err(e) = refresh(settings, &keys, self.fetch) {
                tracing::warn!(issuer = %settings.issuer, error = %e, "cannot fetch the issuer's keys");
                // Keep using keys we have, if they fit.
                let state = read_state(&keys);
                return match attempt(&state) {
                    Some(r) => r,
                    None => Err(TokenError::IssuerUnavailable(e)),
                };
            }
        }
        let state = read_state(&keys);
        attempt(&state).unwrap_or(Err(TokenError::UnknownKey))
    }
}

fn seconds(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        // NumericDate may have a fraction; whole seconds are enough.
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Some(s as u64))
            .ok_or_else(|| TokenError::Claim(name.into())),
    }
}

fn check_times(
    claims: &Map<String, Value>,
    skew: Duration,
    now: SystemTime,
) -> Result<(), TokenError> {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let skew = skew.as_secs();
    let exp = seconds(claims, "exp")?.ok_or_else(|| TokenError::Claim("exp".into()))?;
    if now >= exp.saturating_add(skew) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = seconds(claims, "nbf")? {
        if now.saturating_add(skew) < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(())
}

fn check_audience(claims: &Map<String, Value>, audiences: &[String]) -> Result<(), TokenError> {
    let ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(TokenError::Audience)
    }
}

/// A claim as a string: strings as they are, numbers and booleans printed.
fn claim_str(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Groups: an array of strings, or a single string.
fn claim_groups(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// A person named by a claim: a string, or an object's `sub` (RFC 8693 `act`).
fn claim_person(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("sub").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn expiry(claims: &Map<String, Value>) -> Option<SystemTime> {
    let exp = claims.get("exp")?.as_f64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp as u64))
}

fn attributes_from(
    settings: &IssuerSettings,
    claims: &Map<String, Value>,
) -> BTreeMap<String, String> {
    settings
        .attribute_claims
        .iter()
        .filter_map(|(attr, claim)| Some((attr.clone(), claim_str(claims, claim)?)))
        .collect()
}

/// Map verified claims to a principal.
fn map_claims(
    settings: &IssuerSettings,
    claims: &Map<String, Value>,
) -> Result<Principal, TokenError> {
    let sub = claim_str(claims, "sub");
    let client_id = claim_str(claims, "client_id").or_else(|| claim_str(claims, "azp"));
    let subject = sub.as_ref().map(|s| format!("{}#{s}", settings.issuer));
    let base = Principal {
        subject,
        expires_at: expiry(claims),
        on_expiry: settings.on_expiry,
        display_name: claim_str(claims, &settings.display_name_claim),
        ..Default::default()
    };
    let client = |id: &str| settings.clients.iter().find(|c| c.client_id == id);

    // A client's own token (client credentials): its subject is the client.
    if let Some(c) = client_id.as_deref().and_then(client) {
        if sub.as_deref().is_none_or(|s| s == c.client_id) {
            let mut groups = c.groups.clone();
            groups.extend(claim_groups(claims, &settings.groups_claim));
            let mut attributes = c.attributes.clone();
            attributes.extend(attributes_from(settings, claims));
            let on_behalf_of = c
                .on_behalf_of_claim
                .as_deref()
                .and_then(|name| claim_person(claims, name))
                .or_else(|| c.on_behalf_of.clone());
            return Ok(Principal {
                name: c.name.clone(),
                kind: c.kind,
                groups: dedup(groups),
                attributes,
                method: "oidc-client",
                on_behalf_of,
                ..base
            });
        }
    }

    let user = claim_str(claims, &settings.user_claim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| TokenError::Claim(settings.user_claim.clone()))?;

    // Delegation (RFC 8693): a person's token carrying `act` for a configured
    // client is that client acting for the person.
    if let Some(c) = claim_person(claims, "act").as_deref().and_then(client) {
        let mut attributes = c.attributes.clone();
        attributes.extend(attributes_from(settings, claims));
        return Ok(Principal {
            name: c.name.clone(),
            kind: c.kind,
            groups: c.groups.clone(),
            attributes,
            method: "oidc-delegated",
            on_behalf_of: Some(user),
            ..base
        });
    }

    let kind = match &settings.kind_claim {
        Some(k) => match claim_str(claims, k) {
            Some(v) => v.parse().map_err(|_| TokenError::Claim(k.clone()))?,
            None => settings.default_kind,
        },
        None => settings.default_kind,
    };
    Ok(Principal {
        name: user,
        kind,
        groups: dedup(claim_groups(claims, &settings.groups_claim)),
        attributes: attributes_from(settings, claims),
        method: "oidc",
        ..base
    })
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|g| seen.insert(g.clone()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::testing::TestKey;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ISS: &str = "https://idp.test";

    struct FakeIdp {
        keys: Mutex<Vec<Jwk>>,
        jwks_fetches: AtomicUsize,
    }

    impl Fetch for FakeIdp {
        fn get_json(&self, url: &str) -> Result<Value, String> {
            if url == discovery_url(ISS) {
                return Ok(json!({"issuer": ISS, "jwks_uri": "https://idp.test/jwks"}));
            }
            self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys = self.keys.lock().unwrap().clone();
            let keys: Vec<Value> = keys
                .iter()
                .map(|k| {
                    json!({"kty": k.kty, "kid": k.kid, "crv": k.crv, "x": k.x, "y": k.y, "alg": k.alg})
                })
                .collect();
            Ok(json!({ "keys": keys }))
        }
    }

    fn settings() -> IssuerSettings {
        IssuerSettings {
            issuer: ISS.into(),
            audiences: vec!["sluice".into()],
            user_claim: "email".into(),
            groups_claim: "groups".into(),
            kind_claim: None,
            default_kind: PrincipalKind::Human,
            display_name_claim: "name".into(),
            attribute_claims: BTreeMap::from([("region".into(), "region".into())]),
            skew: Duration::from_secs(30),
            algorithms: Alg::defaults(),
            on_expiry: OnExpiry::Disconnect,
            clients: vec![
                ClientMapping {
                    client_id: "etl".into(),
                    name: "etl-service".into(),
                    kind: PrincipalKind::Service,
                    groups: vec!["etl".into()],
                    attributes: BTreeMap::new(),
                    on_behalf_of_claim: None,
                    on_behalf_of: None,
                },
                ClientMapping {
                    client_id: "bot".into(),
                    name: "report-bot".into(),
                    kind: PrincipalKind::Agent,
                    groups: vec![],
                    attributes: BTreeMap::new(),
                    on_behalf_of_claim: Some("on_behalf_of".into()),
                    on_behalf_of: None,
                },
            ],
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({"iss": ISS, "aud": "sluice", "sub": "u1", "email": "alice@x.test",
            "groups": ["dev", "dev", "ops"], "name": "Alice", "region": "eu", "exp": now() + 300});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    struct Setup {
        idp: FakeIdp,
        cache: KeyCache,
        issuers: Vec<IssuerSettings>,
    }

    impl Setup {
        fn new(keys: Vec<Jwk>) -> Setup {
            Setup {
                idp: FakeIdp {
                    keys: Mutex::new(keys),
                    jwks_fetches: AtomicUsize::new(0),
                },
                cache: KeyCache::default(),
                issuers: vec![settings()],
            }
        }
        fn validate(&self, token: &str) -> Result<Validated, TokenError> {
            Validator::new(&self.issuers, &self.idp, &self.cache).validate(token, SystemTime::now())
        }
    }

    fn sign(key: &TestKey, kid: &str, c: Value) -> String {
        key.sign(&json!({"alg": key.alg(), "kid": kid}), &c)
    }

    #[test]
    fn a_good_token_maps_to_a_person() {
        let key = TestKey::es256();
        let s = Setup::new(vec![key.jwk("k1")]);
        let v = s.validate(&sign(&key, "k1", claims(json!({})))).unwrap();
        let p = v.principal;
        assert_eq!(p.name, "alice@x.test");
        assert_eq!(p.kind, PrincipalKind::Human);
        assert_eq!(p.groups, ["dev", "ops"]);
        assert_eq!(p.attributes["region"], "eu");
        assert_eq!(p.display_name.as_deref(), Some("Alice"));
        assert_eq!(p.subject.as_deref(), Some("https://idp.test#u1"));
        assert_eq!(p.method, "oidc");
        assert!(p.expires_at.is_some());
        // Cached: a second token does not fetch again.
        s.validate(&sign(&key, "k1", claims(json!({})))).unwrap();
        assert_eq!(s.idp.jwks_fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn refusals_say_why() {
        let key = TestKey::ed25519();
        let s = Setup::new(vec![key.jwk("k1")]);
        let cases = [
            (claims(json!({"exp": now() - 100})), TokenError::Expired),
            (claims(json!({"nbf": now() + 100})), TokenError::NotYetValid),
            (claims(json!({"aud": "other"})), TokenError::Audience),
            (claims(json!({"aud": ["a", "b"]})), TokenError::Audience),
            (
                claims(json!({"iss": "https://evil.test"})),
                TokenError::UntrustedIssuer,
            ),
            (
                claims(json!({"exp": null})),
                TokenError::Claim("exp".into()),
            ),
            (
                claims(json!({"email": null})),
                TokenError::Claim("email".into()),
            ),
        ];
        for (c, want) in cases {
            assert_eq!(s.validate(&sign(&key, "k1", c.clone())), Err(want), "{c}");
        }
        // Within the skew: still fine.
        s.validate(&sign(
            &key,
            "k1",
            claims(json!({"exp": now() - 10, "aud": ["x", "sluice"]})),
        ))
        .unwrap();
        // Another key with the same kid: bad signature.
        let forged = sign(&TestKey::ed25519(), "k1", claims(json!({})));
        assert_eq!(s.validate(&forged), Err(TokenError::BadSignature));
        // alg none and HS256 are refused before any key is used.
        for alg in ["none", "HS256"] {
            let t = format!(
                "{}.{}.",
                base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    json!({"alg": alg}).to_string()
                ),
                base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    claims(json!({})).to_string()
                )
            );
            assert_eq!(s.validate(&t), Err(TokenError::Algorithm(alg.into())));
        }
        assert!(matches!(
            s.validate("hunter2"),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn algorithms_can_be_narrowed() {
        let key = TestKey::ed25519();
        let mut s = Setup::new(vec![key.jwk("k1")]);
        s.issuers[0].algorithms = vec![Alg::Rs256];
        assert_eq!(
            s.validate(&sign(&key, "k1", claims(json!({})))),
            Err(TokenError::Algorithm("EdDSA".into()))
        );
    }

    #[test]
    fn rotation_is_picked_up_and_removed_keys_stop_working() {
        let old = TestKey::es256();
        let s = Setup::new(vec![old.jwk("old")]);
        let old_token = sign(&old, "old", claims(json!({})));
        s.validate(&old_token).unwrap();
        let new = TestKey::es256();
        *s.idp.keys.lock().unwrap() = vec![new.jwk("new")];
        // Let the refetch rate limit pass.
        std::thread::sleep(FORCED_REFRESH_INTERVAL);
        s.validate(&sign(&new, "new", claims(json!({})))).unwrap();
        assert_eq!(s.validate(&old_token), Err(TokenError::UnknownKey));
        // Unknown kids do not refetch more than once per interval.
        let before = s.idp.jwks_fetches.load(Ordering::SeqCst);
        for i in 0..5 {
            let _ = s.validate(&sign(&new, &format!("random-{i}"), claims(json!({}))));
        }
        assert!(s.idp.jwks_fetches.load(Ordering::SeqCst) <= before + 1);
    }

    #[test]
    fn clients_are_services_and_agents() {
        let key = TestKey::es256();
        let s = Setup::new(vec![key.jwk("k1")]);
        let etl = claims(json!({"sub": "etl", "client_id": "etl", "email": null, "groups": null}));
        let p = s.validate(&sign(&key, "k1", etl)).unwrap().principal;
        assert_eq!(
            (p.name.as_str(), p.kind, p.method),
            ("etl-service", PrincipalKind::Service, "oidc-client")
        );
        assert_eq!(p.groups, ["etl"]);
        assert_eq!(p.on_behalf_of, None);

        let bot = claims(
            json!({"sub": "bot", "client_id": "bot", "email": null, "on_behalf_of": "alice@x.test"}),
        );
        let p = s.validate(&sign(&key, "k1", bot)).unwrap().principal;
        assert_eq!(
            (p.name.as_str(), p.kind),
            ("report-bot", PrincipalKind::Agent)
        );
        assert_eq!(p.on_behalf_of.as_deref(), Some("alice@x.test"));

        // RFC 8693: Alice's token with the bot as actor.
        let delegated = claims(json!({"act": {"sub": "bot"}}));
        let p = s.validate(&sign(&key, "k1", delegated)).unwrap().principal;
        assert_eq!(
            (p.name.as_str(), p.kind, p.method),
            ("report-bot", PrincipalKind::Agent, "oidc-delegated")
        );
        assert_eq!(p.on_behalf_of.as_deref(), Some("alice@x.test"));

        // A person's token from a configured client's app is still the person.
        let person = claims(json!({"client_id": "etl"}));
        let p = s.validate(&sign(&key, "k1", person)).unwrap().principal;
        assert_eq!(p.name, "alice@x.test");
    }

    #[test]
    fn kind_from_a_claim() {
        let key = TestKey::es256();
        let mut s = Setup::new(vec![key.jwk("k1")]);
        s.issuers[0].kind_claim = Some("kind".into());
        let p = s
            .validate(&sign(&key, "k1", claims(json!({"kind": "agent"}))))
            .unwrap()
            .principal;
        assert_eq!(p.kind, PrincipalKind::Agent);
        assert_eq!(
            s.validate(&sign(&key, "k1", claims(json!({"kind": "robot"})))),
            Err(TokenError::Claim("kind".into()))
        );
    }

    #[test]
    fn discovery_must_name_the_issuer() {
        struct Liar;
        impl Fetch for Liar {
            fn get_json(&self, _url: &str) -> Result<Value, String> {
                Ok(json!({"issuer": "https://other.test", "jwks_uri": "https://idp.test/jwks"}))
            }
        }
        let key = TestKey::es256();
        let issuers = vec![settings()];
        let cache = KeyCache::default();
        let r = Validator::new(&issuers, &Liar, &cache)
            .validate(&sign(&key, "k1", claims(json!({}))), SystemTime::now());
        assert!(matches!(r, Err(TokenError::IssuerUnavailable(_))), "{r:?}");
    }
}
