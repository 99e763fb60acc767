//! `sluice.toml`: parsing, validation and secret resolution.
//!
//! A config error names the file, the key and the reason. Secrets are read
//! from the environment or from files, never written inline, and never shown
//! by `Debug`.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_identity::{PrincipalKind, ScramVerifier};

/// A config that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The key (`targets[0].password_env`), or `-` when the file as a whole is wrong.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// A secret value; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners.
    pub listen: Listen,
    /// Client-facing TLS; `None` means a self-signed certificate in the data directory.
    pub tls: Option<TlsFiles>,
    /// Databases clients may reach.
    pub targets: Vec<Target>,
    /// Local identities.
    pub users: Vec<User>,
    /// OIDC issuers whose tokens are accepted as passwords.
    pub oidc: Vec<Oidc>,
    /// CA that client certificates must chain to (`[tls] client_ca`); when
    /// set, clients are asked for a certificate (optional for them).
    pub client_ca: Option<PathBuf>,
    /// How a verified client certificate becomes a principal (`[[mtls]]`).
    pub mtls: Vec<sluice_identity::mtls::CertRule>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Where policies come from.
    pub policy: PolicyConfig,
    /// Masking of results.
    pub masking: Masking,
    /// The audit trail (`[audit]`; SQLite in the data directory by default).
    pub audit: sluice_audit::AuditConfig,
    /// Approval requests (`[approvals]`).
    pub approvals: Approvals,
    /// Who may use the admin REST API (`[admin]`; nobody by default).
    pub admin: AdminConfig,
    /// OpenTelemetry traces (`[telemetry]`; off by default).
    pub telemetry: Option<Telemetry>,
}

/// `[telemetry]`: a span per statement, exported over OTLP/HTTP (JSON).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`); spans
    /// go to `<endpoint>/v1/traces`.
    pub otlp_endpoint: String,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of statements traced when the client sent no sampled
    /// `traceparent` (0.0–1.0).
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// Extra HTTP headers for the collector (an API key, a tenant).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

fn default_service_name() -> String {
    "sluice".into()
}

fn one() -> f64 {
    1.0
}

/// What a statement that needs approval does while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalMode {
    /// The statement waits in the session until approved, denied or timed
    /// out; the client is told the request id and where to approve it.
    #[default]
    Hold,
    /// The statement is refused at once (SQLSTATE SL001) with the request
    /// id; sent again after approval, it runs once.
    Refuse,
}

/// `[approvals]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Approvals {
    /// hold (default) or refuse; a policy's `@approval_mode` overrides it.
    pub mode: ApprovalMode,
    /// Seconds a request stays open (and a held statement waits).
    pub timeout_secs: u64,
    /// Distinct approvers needed (a policy's `@approvals("N")` overrides it).
    pub required_approvals: u32,
    /// Approvers must give a justification.
    pub require_justification: bool,
    /// Where approvers act, shown to the client as `<url>/<id>`.
    pub url: Option<String>,
    /// Members of these groups may run a statement that needs approval by
    /// giving a justification in the statement (`/* sluice:break-glass
    /// reason */`); it runs at once and is flagged in the audit trail.
    pub break_glass_groups: Vec<String>,
    /// Chat notifications and chat approvals (`[approvals.webhook]`).
    pub webhook: Option<Webhook>,
}

/// `[approvals.webhook]`: every new approval request (and every break-glass
/// run) is posted as a Slack-compatible message whose approve and deny
/// buttons carry signed, expiring links; the chat's interactive callbacks
/// come back to `POST /api/approvals/callback`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where messages are posted (a Slack incoming-webhook URL or any
    /// endpoint taking the same JSON). None: links and callbacks only.
    pub url: Option<String>,
    /// Sluice's HTTP address as approvers reach it (the links point there).
    pub public_url: String,
    /// HMAC key of the links, from an environment variable…
    pub link_secret_env: Option<String>,
    /// …or a file.
    pub link_secret_file: Option<PathBuf>,
    /// How long a link stays valid (default: the request's lifetime).
    pub link_ttl_secs: Option<u64>,
    /// The chat's signing secret (Slack "Signing Secret"), which signs its
    /// interactive callbacks, from an environment variable…
    pub signing_secret_env: Option<String>,
    /// …or a file. Without one, callbacks are refused.
    pub signing_secret_file: Option<PathBuf>,
    /// Chat users who may decide from the chat, and who they are here.
    #[serde(default)]
    pub chat_users: Vec<ChatUser>,
    /// The link key (read at load).
    #[serde(skip)]
    pub link_secret: Option<Secret>,
    /// The signing secret (read at load).
    #[serde(skip)]
    pub signing_secret: Option<Secret>,
}

/// `[[approvals.webhook.chat_users]]`: a chat account and the principal it
/// decides as (its groups are checked against the approver group).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChatUser {
    /// The chat's user id (Slack `U024BE7LH`).
    pub chat_id: String,
    /// The principal name recorded as the approver.
    pub name: String,
    /// The principal's groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals {
            mode: ApprovalMode::Hold,
            timeout_secs: 300,
            required_approvals: 1,
            require_justification: false,
            url: None,
            break_glass_groups: Vec::new(),
            webhook: None,
        }
    }
}

/// `[telemetry]` as written (`headers` as a table).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: String,
    #[serde(default = "default_service_name")]
    service_name: String,
    #[serde(default = "one")]
    sample_ratio: f64,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

fn telemetry_settings(t: RawTelemetry, err: &ErrFn<'_>) -> Result<Telemetry, ConfigError> {
    if !(t.otlp_endpoint.starts_with("http://") || t.otlp_endpoint.starts_with("https://")) {
        return Err(err(
            "telemetry.otlp_endpoint".into(),
            "expected an http:// or https:// URL (OTLP/HTTP, usually port 4318)".into(),
        ));
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        return Err(err(
            "telemetry.sample_ratio".into(),
            "expected a number from 0.0 to 1.0".into(),
        ));
    }
    if t.service_name.is_empty() {
        return Err(err(
            "telemetry.service_name".into(),
            "must not be empty".into(),
        ));
    }
    Ok(Telemetry {
        otlp_endpoint: t.otlp_endpoint,
        service_name: t.service_name,
        sample_ratio: t.sample_ratio,
        headers: t.headers.into_iter().collect(),
    })
}

/// Read `{name}_env` or `{name}_file` (not both) for `[approvals.webhook]`.
fn webhook_secret(
    name: &str,
    var: Option<&str>,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    err: &ErrFn<'_>,
) -> Result<Option<Secret>, ConfigError> {
    let key = |suffix: &str| format!("approvals.webhook.{name}_{suffix}");
    let value = match (var, file) {
        (Some(_), Some(_)) => {
            return Err(err(
                key("env"),
                format!("set {name}_env or {name}_file, not both"),
            ))
        }
        (Some(var), None) => env(var)
            .ok_or_else(|| err(key("env"), format!("environment variable {var} is not set")))?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|v| v.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| err(key("file"), format!("cannot read {}: {e}", path.display())))?,
        (None, None) => return Ok(None),
    };
    if value.len() < 16 {
        return Err(err(
            key(if var.is_some() { "env" } else { "file" }),
            "the secret must be at least 16 characters".into(),
        ));
    }
    Ok(Some(Secret(value)))
}

fn webhook_settings(
    mut w: Webhook,
    env: &dyn Fn(&str) -> Option<String>,
    err: &ErrFn<'_>,
) -> Result<Webhook, ConfigError> {
    let http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
    if !http(&w.public_url) {
        return Err(err(
            "approvals.webhook.public_url".into(),
            "expected an http:// or https:// URL".into(),
        ));
    }
    if let Some(u) = &w.url {
        sluice_identity::http::check_url(u).map_err(|e| err("approvals.webhook.url".into(), e))?;
    }
    if w.link_ttl_secs == Some(0) {
        return Err(err(
            "approvals.webhook.link_ttl_secs".into(),
            "must be at least 1".into(),
        ));
    }
    w.link_secret = webhook_secret(
        "link_secret",
        w.link_secret_env.as_deref(),
        w.link_secret_file.as_deref(),
        env,
        err,
    )?;
    if w.link_secret.is_none() {
        return Err(err(
            "approvals.webhook.link_secret_env".into(),
            "the links are signed: set link_secret_env or link_secret_file".into(),
        ));
    }
    w.signing_secret = webhook_secret(
        "signing_secret",
        w.signing_secret_env.as_deref(),
        w.signing_secret_file.as_deref(),
        env,
        err,
    )?;
    for (i, u) in w.chat_users.iter().enumerate() {
        if u.chat_id.is_empty() || u.name.is_empty() {
            return Err(err(
                format!("approvals.webhook.chat_users[{i}]"),
                "chat_id and name must not be empty".into(),
            ));
        }
    }
    Ok(w)
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Whether statements are judged at all (default true). `false` turns
    /// the guard off entirely: no analysis, no policy, everything runs; for
    /// measuring what policy costs, never for production.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Directory of `*.cedar` files added to the built-in guardrails
    /// (relative paths are relative to the config file).
    pub dir: Option<PathBuf>,
    /// Built-in guardrails to switch off, by @id.
    #[serde(default)]
    pub disable: Vec<String>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            enabled: true,
            dir: None,
            disable: Vec::new(),
        }
    }
}

/// `[listen]`.
#[derive(Debug, Clone)]
pub struct Listen {
    /// PostgreSQL wire protocol listener.
    pub postgres: SocketAddr,
    /// HTTP admin listener.
    pub http: Option<SocketAddr>,
    /// Whether clients may connect without TLS.
    pub plaintext: Plaintext,
    /// Whether an OIDC token may be sent as a password without TLS (for
    /// development only; default false).
    pub plaintext_tokens: bool,
    /// Load balancers whose connections start with a PROXY protocol header
    /// (v1 or v2) naming the client; empty: none.
    pub proxy_protocol_from: Vec<IpRange>,
    /// The other replicas' PostgreSQL listeners (`host:port`): a cancel
    /// request for a session that is not here is passed to them.
    pub cancel_peers: Vec<String>,
}

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<IpRange, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(IpRange { addr, prefix })
    }
}

/// Who may connect without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plaintext {
    /// Anyone.
    Allow,
    /// Only clients on a loopback address (the default).
    Loopback,
    /// Nobody: TLS is required.
    Deny,
}

/// `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// How Sluice talks TLS to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Never.
    Disable,
    /// If the server offers it, without verifying the certificate.
    Prefer,
    /// Always, without verifying the certificate.
    Require,
    /// Always, verifying the chain and the host name.
    VerifyFull,
}

/// One `[[targets]]` entry.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name clients use as their database name.
    pub name: String,
    /// Environment label (`production`, `staging`, …).
    pub environment: String,
    /// `host:port` of the upstream.
    pub upstream: String,
    /// Database name on the upstream.
    pub database: String,
    /// Sluice's own login on the upstream.
    pub user: String,
    /// Its password, if the server asks for one.
    pub password: Option<Secret>,
    /// TLS mode to the upstream.
    pub tls: UpstreamTls,
    /// CA bundle for `verify-full` (system roots when absent).
    pub ca_file: Option<PathBuf>,
    /// Upstream logins by group (least privilege at the database); first match wins.
    pub logins: Vec<Login>,
    /// Most rows one UPDATE, DELETE or MERGE may change; more is rolled
    /// back and refused. 0: no limit.
    pub max_rows_affected: u64,
}

impl Target {
    /// True for targets marked production.
    pub fn is_production(&self) -> bool {
        self.environment == "production"
    }

    /// The upstream login for a principal with `groups`: the first
    /// `[[targets.logins]]` entry sharing a group, else the target's own.
    pub fn login_for(&self, groups: &[String]) -> (&str, Option<&Secret>) {
        self.logins
            .iter()
            .find(|l| l.groups.iter().any(|g| groups.contains(g)))
            .map_or((self.user.as_str(), self.password.as_ref()), |l| {
                (l.user.as_str(), l.password.as_ref())
            })
    }
}

/// One `[[targets.logins]]` entry: the upstream role for members of some groups.
#[derive(Debug, Clone)]
pub struct Login {
    /// Principals in any of these groups use this login.
    pub groups: Vec<String>,
    /// Upstream role.
    pub user: String,
    /// Its password.
    pub password: Option<Secret>,
}

/// One `[[users]]` entry.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Human, service or agent.
    pub kind: PrincipalKind,
    /// Groups.
    pub groups: Vec<String>,
    /// SCRAM verifier.
    pub verifier: ScramVerifier,
    /// Attributes seen by policy.
    pub attributes: BTreeMap<String, String>,
}

/// One `[[oidc]]` entry, validated (see `sluice_identity::oidc`).
pub use sluice_identity::oidc::IssuerSettings as Oidc;

/// `[[oidc]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: String,
    audience: OneOrMany,
    #[serde(default = "default_user_claim")]
    user_claim: String,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    kind_claim: Option<String>,
    #[serde(default = "default_human")]
    default_kind: String,
    #[serde(default = "default_name_claim")]
    display_name_claim: String,
    #[serde(default)]
    attribute_claims: BTreeMap<String, String>,
    #[serde(default = "default_skew")]
    skew_secs: u64,
    algorithms: Option<Vec<String>>,
    #[serde(default = "default_on_expiry")]
    on_expiry: String,
    #[serde(default)]
    clients: Vec<RawOidcClient>,
}

/// `[[oidc.clients]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidcClient {
    client_id: String,
    name: Option<String>,
    #[serde(default = "default_service")]
    kind: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    on_behalf_of_claim: Option<String>,
    on_behalf_of: Option<String>,
}

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[[mtls]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMtls {
    from: String,
    #[serde(default)]
    prefix: String,
    name: Option<String>,
    #[serde(default = "default_service")]
    kind: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

/// `[[targets.logins]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogin {
    groups: Vec<String>,
    user: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

fn default_user_claim() -> String {
    "email".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_name_claim() -> String {
    "name".into()
}
fn default_human() -> String {
    "human".into()
}
fn default_service() -> String {
    "service".into()
}
fn default_skew() -> u64 {
    60
}
fn default_on_expiry() -> String {
    "disconnect".into()
}

/// Names usable after `sluice.attr.` in a setting name.
pub fn valid_attribute_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

type ErrFn<'a> = dyn Fn(String, String) -> ConfigError + 'a;

/// Read a secret from `password_env` or `password_file` (not both).
fn read_secret(
    key: &dyn Fn(&str) -> String,
    var: Option<&str>,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    err: &ErrFn<'_>,
) -> Result<Option<Secret>, ConfigError> {
    match (var, file) {
        (Some(_), Some(_)) => Err(err(
            key("password_env"),
            "set password_env or password_file, not both".into(),
        )),
        (Some(var), None) => env(var).map(|v| Some(Secret(v))).ok_or_else(|| {
            err(
                key("password_env"),
                format!("environment variable {var} is not set"),
            )
        }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|v| Some(Secret(v.trim_end_matches(['\r', '\n']).to_owned())))
            .map_err(|e| {
                err(
                    key("password_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            }),
        (None, None) => Ok(None),
    }
}

fn masking_settings(
    raw: RawMasking,
    env: &dyn Fn(&str) -> Option<String>,
    err: &ErrFn<'_>,
) -> Result<Masking, ConfigError> {
    let key = |k: &str| format!("masking.{k}");
    let mut rules = sluice_mask::MaskingConfig::default();
    if let Some(e) = raw.enabled {
        rules.enabled = e;
    }
    if let Some(s) = raw.scan_unclassified {
        rules.scan_unclassified = s;
    }
    for (kind, strategy) in raw.default_strategy {
        let k: sluice_mask::Kind = kind.parse().map_err(|e: sluice_mask::UnknownKind| {
            err(key(&format!("default_strategy.{kind}")), e.to_string())
        })?;
        let s: sluice_mask::Strategy =
            strategy
                .parse()
                .map_err(|e: sluice_mask::UnknownStrategy| {
                    err(key(&format!("default_strategy.{kind}")), e.to_string())
                })?;
        rules.default_strategy.insert(k, s);
    }
    for (column, rule) in raw.columns {
        let parts = column.split('.').count();
        if !(2..=3).contains(&parts) || column.split('.').any(str::is_empty) {
            return Err(err(
                key(&format!("columns.\"{column}\"")),
                "expected \"table.column\" or \"schema.table.column\"".into(),
            ));
        }
        let r: sluice_mask::ColumnRule = rule.parse().map_err(|e: sluice_mask::ConfigError| {
            err(key(&format!("columns.\"{column}\"")), e.to_string())
        })?;
        rules.columns.insert(column.to_lowercase(), r);
    }
    if raw.key_env.is_some() && raw.key_file.is_some() {
        return Err(err(
            key("key_env"),
            "set key_env or key_file, not both".into(),
        ));
    }
    let secret = read_secret(
        &|k: &str| key(&k.replace("password", "key")),
        raw.key_env.as_deref(),
        raw.key_file.as_deref(),
        env,
        err,
    )?;
    if let Some(s) = &secret {
        if s.expose().len() < 32 {
            return Err(err(
                key("key_env"),
                "the masking key must be at least 32 characters (for example 64 hex digits)".into(),
            ));
        }
    }
    let refuse_unmaskable = match raw.unmaskable.as_deref() {
        None | Some("null") => false,
        Some("refuse") => true,
        Some(other) => {
            return Err(err(
                key("unmaskable"),
                format!("{other:?}: expected \"null\" or \"refuse\""),
            ))
        }
    };
    Ok(Masking {
        rules,
        key: secret,
        refuse_unmaskable,
    })
}

fn check_attributes(
    key: &str,
    attributes: &BTreeMap<String, String>,
    err: &ErrFn<'_>,
) -> Result<(), ConfigError> {
    match attributes.keys().find(|k| !valid_attribute_name(k)) {
        Some(bad) => Err(err(
            key.to_owned(),
            format!("attribute name {bad:?} must be lower-case letters, digits and _ (it becomes the setting sluice.attr.{bad})"),
        )),
        None => Ok(()),
    }
}

fn oidc_settings(i: usize, o: RawOidc, err: &ErrFn<'_>) -> Result<Oidc, ConfigError> {
    let key = |k: &str| format!("oidc[{i}].{k}");
    sluice_identity::http::check_url(&o.issuer).map_err(|e| err(key("issuer"), e))?;
    let audiences = match o.audience {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(list) => list,
    };
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Err(err(
            key("audience"),
            "must name at least one audience".into(),
        ));
    }
    let algorithms = match o.algorithms {
        None => sluice_identity::jwt::Alg::defaults(),
        Some(list) => {
            let mut out = Vec::new();
            for a in &list {
                out.push(a.parse().map_err(|e| err(key("algorithms"), e))?);
            }
            if out.is_empty() {
                return Err(err(key("algorithms"), "must not be empty".into()));
            }
            out
        }
    };
    check_attributes(&key("attribute_claims"), &o.attribute_claims, err)?;
    let mut clients: Vec<sluice_identity::oidc::ClientMapping> = Vec::new();
    for (j, c) in o.clients.into_iter().enumerate() {
        let ckey = |k: &str| format!("oidc[{i}].clients[{j}].{k}");
        if c.client_id.is_empty() {
            return Err(err(ckey("client_id"), "must not be empty".into()));
        }
        if clients.iter().any(|o| o.client_id == c.client_id) {
            return Err(err(
                ckey("client_id"),
                format!("duplicate client {:?}", c.client_id),
            ));
        }
        check_attributes(&ckey("attributes"), &c.attributes, err)?;
        clients.push(sluice_identity::oidc::ClientMapping {
            name: c.name.unwrap_or_else(|| c.client_id.clone()),
            client_id: c.client_id,
            kind: c.kind.parse().map_err(|e| err(ckey("kind"), e))?,
            groups: c.groups,
            attributes: c.attributes,
            on_behalf_of_claim: c.on_behalf_of_claim,
            on_behalf_of: c.on_behalf_of,
        });
    }
    Ok(Oidc {
        issuer: o.issuer,
        audiences,
        user_claim: o.user_claim,
        groups_claim: o.groups_claim,
        kind_claim: o.kind_claim,
        default_kind: o
            .default_kind
            .parse()
            .map_err(|e| err(key("default_kind"), e))?,
        display_name_claim: o.display_name_claim,
        attribute_claims: o.attribute_claims,
        skew: std::time::Duration::from_secs(o.skew_secs),
        algorithms,
        on_expiry: o.on_expiry.parse().map_err(|e| err(key("on_expiry"), e))?,
        clients,
    })
}

/// `[limits]`: sizes and timeouts.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message a client may send, in bytes. (Server messages that
    /// could be large, DataRow and CopyData, are streamed and not held whole.)
    pub max_message_size: usize,
    /// Seconds a client has to finish startup and authentication.
    pub startup_timeout_secs: u64,
    /// Seconds to wait for an upstream to accept a connection.
    pub connect_timeout_secs: u64,
    /// Seconds SIGTERM waits for sessions to end before closing them.
    pub shutdown_timeout_secs: u64,
    /// Threads that run sessions; 0 means one per CPU.
    pub workers: usize,
    /// Longest statement text Sluice parses, in bytes. Parsing takes
    /// hundreds of bytes of memory per byte of a pathological text, so a
    /// longer one is not parsed, and, unchecked, is refused everywhere.
    pub max_statement_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // PostgreSQL's own limit for a single field is 1 GiB.
            max_message_size: 1 << 30,
            startup_timeout_secs: 10,
            connect_timeout_secs: 5,
            shutdown_timeout_secs: 30,
            workers: 0,
            max_statement_size: 256 << 10,
        }
    }
}

/// A role of the admin REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdminRole {
    /// Everything: read, end sessions, reload and validate policy.
    Admin,
    /// Read only: audit trail, usage, sessions, targets.
    Auditor,
    /// Approvals (later), and reading live sessions.
    Approver,
}

impl AdminRole {
    /// Lower-case name as used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Admin => "admin",
            AdminRole::Auditor => "auditor",
            AdminRole::Approver => "approver",
        }
    }
}

impl std::str::FromStr for AdminRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(AdminRole::Admin),
            "auditor" => Ok(AdminRole::Auditor),
            "approver" => Ok(AdminRole::Approver),
            other => Err(format!(
                "unknown role {other:?}; expected admin, auditor or approver"
            )),
        }
    }
}

/// A static bearer token of the admin API (for automation), kept as the
/// SHA-256 of the token; `Debug` does not show the hash.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Who it is, in the audit trail.
    pub name: String,
    /// What it may do.
    pub role: AdminRole,
    /// SHA-256 of the token.
    pub token_sha256: [u8; 32],
    /// Groups the token's holder is in (an approver token needs the
    /// approver group of the requests it decides).
    pub groups: Vec<String>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// `[admin]`: who may use the admin REST API. OIDC callers get roles from
/// their groups; static tokens have one role each. Empty: nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// Groups whose members are admins.
    pub admin_groups: Vec<String>,
    /// Groups whose members are auditors.
    pub auditor_groups: Vec<String>,
    /// Groups whose members are approvers.
    pub approver_groups: Vec<String>,
    /// Static tokens.
    pub tokens: Vec<AdminToken>,
}

impl AdminConfig {
    /// The roles of a principal with `groups`.
    pub fn roles_for(&self, groups: &[String]) -> Vec<AdminRole> {
        let member = |list: &[String]| list.iter().any(|g| groups.contains(g));
        let mut roles = Vec::new();
        if member(&self.admin_groups) {
            roles.push(AdminRole::Admin);
        }
        if member(&self.auditor_groups) {
            roles.push(AdminRole::Auditor);
        }
        if member(&self.approver_groups) {
            roles.push(AdminRole::Approver);
        }
        roles
    }
}

/// `[admin]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    admin_groups: Vec<String>,
    #[serde(default)]
    auditor_groups: Vec<String>,
    #[serde(default)]
    approver_groups: Vec<String>,
    #[serde(default)]
    tokens: Vec<RawAdminToken>,
}

/// `[[admin.tokens]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminToken {
    name: String,
    role: String,
    token_sha256: String,
    #[serde(default)]
    groups: Vec<String>,
}

fn admin_settings(raw: RawAdmin, err: &ErrFn<'_>) -> Result<AdminConfig, ConfigError> {
    for (list, name) in [
        (&raw.admin_groups, "admin_groups"),
        (&raw.auditor_groups, "auditor_groups"),
        (&raw.approver_groups, "approver_groups"),
    ] {
        if list.iter().any(String::is_empty) {
            return Err(err(
                format!("admin.{name}"),
                "group names must not be empty".into(),
            ));
        }
    }
    let mut tokens: Vec<AdminToken> = Vec::new();
    for (i, t) in raw.tokens.into_iter().enumerate() {
        let key = |k: &str| format!("admin.tokens[{i}].{k}");
        if t.name.is_empty() {
            return Err(err(key("name"), "must not be empty".into()));
        }
        if tokens.iter().any(|o| o.name == t.name) {
            return Err(err(
                key("name"),
                format!("duplicate token name {:?}", t.name),
            ));
        }
        let role = t.role.parse().map_err(|e| err(key("role"), e))?;
        let hex = t.token_sha256.trim();
        let mut hash = [0u8; 32];
        let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(err(
                key("token_sha256"),
                "expected 64 hex digits: the SHA-256 of the token (printf %s \"$TOKEN\" | sha256sum), never the token itself".into(),
            ));
        }
        for (j, b) in hash.iter_mut().enumerate() {
            // Only ASCII hex digits here, so every slice is two of them.
            *b = u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).unwrap_or(0);
        }
        if tokens.iter().any(|o| o.token_sha256 == hash) {
            return Err(err(
                key("token_sha256"),
                "the same token is configured twice".into(),
            ));
        }
        tokens.push(AdminToken {
            name: t.name,
            role,
            token_sha256: hash,
            groups: t.groups,
        });
    }
    Ok(AdminConfig {
        admin_groups: raw.admin_groups,
        auditor_groups: raw.auditor_groups,
        approver_groups: raw.approver_groups,
        tokens,
    })
}

// ---- raw (as written) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: RawListen,
    tls: Option<RawTls>,
    #[serde(default)]
    targets: Vec<RawTarget>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    oidc: Vec<RawOidc>,
    #[serde(default)]
    mtls: Vec<RawMtls>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    policy: PolicyConfig,
    #[serde(default)]
    masking: RawMasking,
    #[serde(default)]
    audit: sluice_audit::AuditConfig,
    #[serde(default)]
    approvals: Approvals,
    telemetry: Option<RawTelemetry>,
    #[serde(default)]
    admin: RawAdmin,
}

/// `[masking]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMasking {
    enabled: Option<bool>,
    scan_unclassified: Option<bool>,
    #[serde(default)]
    default_strategy: BTreeMap<String, String>,
    #[serde(default)]
    columns: BTreeMap<String, String>,
    key_env: Option<String>,
    key_file: Option<PathBuf>,
    unmaskable: Option<String>,
}

/// `[masking]`: masking of sensitive values in results (on by default).
#[derive(Debug, Clone)]
pub struct Masking {
    /// What to mask and how.
    pub rules: sluice_mask::MaskingConfig,
    /// The key for deterministic tokens (hex or any text of at least 32
    /// bytes); `None`: a key generated once in the data directory.
    pub key: Option<Secret>,
    /// A value that must be masked but cannot be in its format (binary
    /// values of types that cannot hold a mask): `false` (`"null"`, the
    /// default) sends NULL in its place, `true` (`"refuse"`) fails the
    /// statement with an error instead.
    pub refuse_unmaskable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    postgres: String,
    http: Option<String>,
    #[serde(default = "default_plaintext")]
    plaintext: Plaintext,
    #[serde(default)]
    plaintext_tokens: bool,
    #[serde(default)]
    proxy_protocol_from: Vec<String>,
    #[serde(default)]
    cancel_peers: Vec<String>,
}

fn default_plaintext() -> Plaintext {
    Plaintext::Loopback
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    environment: String,
    upstream: String,
    database: String,
    user: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_upstream_tls")]
    tls: UpstreamTls,
    ca_file: Option<PathBuf>,
    max_rows_affected: Option<u64>,
    #[serde(default)]
    logins: Vec<RawLogin>,
}

/// Rows one UPDATE/DELETE may change in production unless configured.
pub const DEFAULT_PRODUCTION_ROWS_LIMIT: u64 = 1000;

fn default_upstream_tls() -> UpstreamTls {
    UpstreamTls::Prefer
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    kind: String,
    #[serde(default)]
    groups: Vec<String>,
    password_hash: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

impl Config {
    /// Load and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        let mut config = Self::parse(&text, &file, &|name| std::env::var(name).ok())?;
        if let Some(dir) = &config.policy.dir {
            if dir.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                config.policy.dir = Some(base.join(dir));
            }
        }
        Ok(config)
    }

    /// Parse config text; `env` looks up environment variables.
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let err = |key: String, reason: String| ConfigError {
            file: file.to_owned(),
            key,
            reason,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let reason = e.message().to_owned();
            let key = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "-".into());
            err(key, reason)
        })?;

        let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse().map_err(|_| {
                err(
                    key.into(),
                    format!("{v:?} is not an address like 127.0.0.1:7432"),
                )
            })
        };
        let listen = Listen {
            postgres: addr("listen.postgres", &raw.listen.postgres)?,
            http: raw
                .listen
                .http
                .as_deref()
                .map(|h| addr("listen.http", h))
                .transpose()?,
            plaintext: raw.listen.plaintext,
            plaintext_tokens: raw.listen.plaintext_tokens,
            proxy_protocol_from: raw
                .listen
                .proxy_protocol_from
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    r.parse()
                        .map_err(|e| err(format!("listen.proxy_protocol_from[{i}]"), e))
                })
                .collect::<Result<_, _>>()?,
            cancel_peers: raw
                .listen
                .cancel_peers
                .iter()
                .enumerate()
                .map(|(i, p)| match p.rsplit_once(':') {
                    Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                        Ok(p.clone())
                    }
                    _ => Err(err(
                        format!("listen.cancel_peers[{i}]"),
                        format!("{p:?} is not host:port"),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };

        let mut targets = Vec::new();
        for (i, t) in raw.targets.into_iter().enumerate() {
            let key = |k: &str| format!("targets[{i}].{k}");
            if t.name.is_empty() {
                return Err(err(key("name"), "must not be empty".into()));
            }
            if targets.iter().any(|o: &Target| o.name == t.name) {
                return Err(err(key("name"), format!("duplicate target {:?}", t.name)));
            }
            if !t.upstream.contains(':') {
                return Err(err(
                    key("upstream"),
                    format!("{:?} must be host:port", t.upstream),
                ));
            }
            let password = match (&t.password_env, &t.password_file) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        key("password_env"),
                        "set password_env or password_file, not both".into(),
                    ))
                }
                (Some(var), None) => Some(Secret(env(var).ok_or_else(|| {
                    err(
                        key("password_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?)),
                (None, Some(path)) => {
                    let v = std::fs::read_to_string(path).map_err(|e| {
                        err(
                            key("password_file"),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    Some(Secret(v.trim_end_matches(['\r', '\n']).to_owned()))
                }
                (None, None) => None,
            };
            if t.ca_file.is_some() && t.tls != UpstreamTls::VerifyFull {
                return Err(err(
                    key("ca_file"),
                    "only used with tls = \"verify-full\"".into(),
                ));
            }
            let mut logins = Vec::new();
            for (j, l) in t.logins.iter().enumerate() {
                let lkey = |k: &str| format!("targets[{i}].logins[{j}].{k}");
                if l.groups.is_empty() {
                    return Err(err(lkey("groups"), "must name at least one group".into()));
                }
                if l.user.is_empty() {
                    return Err(err(lkey("user"), "must not be empty".into()));
                }
                let password = read_secret(
                    &lkey,
                    l.password_env.as_deref(),
                    l.password_file.as_deref(),
                    env,
                    &err,
                )?;
                logins.push(Login {
                    groups: l.groups.clone(),
                    user: l.user.clone(),
                    password,
                });
            }
            let default_rows_limit = if t.environment == "production" {
                DEFAULT_PRODUCTION_ROWS_LIMIT
            } else {
                0
            };
            targets.push(Target {
                name: t.name,
                environment: t.environment,
                upstream: t.upstream,
                database: t.database,
                user: t.user,
                password,
                tls: t.tls,
                ca_file: t.ca_file,
                logins,
                // On by default in production only; 0 switches it off.
                max_rows_affected: t.max_rows_affected.unwrap_or(default_rows_limit),
            });
        }

        let mut users = Vec::new();
        for (i, u) in raw.users.into_iter().enumerate() {
            let key = |k: &str| format!("users[{i}].{k}");
            if users.iter().any(|o: &User| o.name == u.name) {
                return Err(err(key("name"), format!("duplicate user {:?}", u.name)));
            }
            let kind = u.kind.parse().map_err(|e| err(key("kind"), e))?;
            let verifier = ScramVerifier::parse(&u.password_hash).map_err(|e| {
                err(
                    key("password_hash"),
                    format!("{e} (make one with `sluice passwd`)"),
                )
            })?;
            users.push(User {
                name: u.name,
                kind,
                groups: u.groups,
                verifier,
                attributes: u.attributes,
            });
        }

        let limits = raw.limits;
        if limits.max_message_size < 8192 {
            return Err(err(
                "limits.max_message_size".into(),
                "must be at least 8192".into(),
            ));
        }

        let mut oidc: Vec<Oidc> = Vec::new();
        for (i, o) in raw.oidc.into_iter().enumerate() {
            let o = oidc_settings(i, o, &err)?;
            if oidc.iter().any(|x| x.issuer == o.issuer) {
                return Err(err(
                    format!("oidc[{i}].issuer"),
                    format!("duplicate issuer {:?}", o.issuer),
                ));
            }
            oidc.push(o);
        }

        let (tls, client_ca) = match raw.tls {
            None => (None, None),
            Some(t) => {
                let files = match (t.cert, t.key) {
                    (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                    (None, None) if t.client_ca.is_some() => None,
                    (None, None) => return Err(err("tls.cert".into(), "set cert and key".into())),
                    (Some(_), None) => {
                        return Err(err("tls.key".into(), "set together with cert".into()))
                    }
                    (None, Some(_)) => {
                        return Err(err("tls.cert".into(), "set together with key".into()))
                    }
                };
                (files, t.client_ca)
            }
        };
        let mut mtls = Vec::new();
        for (i, m) in raw.mtls.into_iter().enumerate() {
            let key = |k: &str| format!("mtls[{i}].{k}");
            if client_ca.is_none() {
                return Err(err(
                    key("from"),
                    "client certificates are only asked for with [tls] client_ca".into(),
                ));
            }
            check_attributes(&key("attributes"), &m.attributes, &err)?;
            mtls.push(sluice_identity::mtls::CertRule {
                from: m.from.parse().map_err(|e| err(key("from"), e))?,
                prefix: m.prefix,
                name: m.name,
                kind: m.kind.parse().map_err(|e| err(key("kind"), e))?,
                groups: m.groups,
                attributes: m.attributes,
            });
        }

        let masking = masking_settings(raw.masking, env, &err)?;
        raw.audit
            .validate()
            .map_err(|reason| err("audit".into(), reason))?;
        let admin = admin_settings(raw.admin, &err)?;

        Ok(Config {
            listen,
            tls,
            client_ca,
            mtls,
            targets,
            users,
            oidc,
            limits,
            policy: raw.policy,
            masking,
            audit: raw.audit,
            approvals: {
                let a = raw.approvals;
                if a.required_approvals == 0 {
                    return Err(err(
                        "approvals.required_approvals".into(),
                        "must be at least 1".into(),
                    ));
                }
                if a.timeout_secs == 0 {
                    return Err(err(
                        "approvals.timeout_secs".into(),
                        "must be at least 1".into(),
                    ));
                }
                let mut a = a;
                a.webhook = match a.webhook.take() {
                    Some(w) => Some(webhook_settings(w, env, &err)?),
                    None => None,
                };
                a
            },
            admin,
            telemetry: match raw.telemetry {
                Some(t) => Some(telemetry_settings(t, &err)?),
                None => None,
            },
        })
    }

    /// The target a client names as its database.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// A local user by name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "APP_PROD_DB_PASSWORD").then(|| "hunter2".to_owned())
    }

    fn minimal() -> String {
        format!(
            r#"
[listen]
postgres = "127.0.0.1:7432"
http = "127.0.0.1:7080"

[[targets]]
name = "app-prod"
environment = "production"
upstream = "127.0.0.1:5432"
database = "app"
user = "sluice_app"
password_env = "APP_PROD_DB_PASSWORD"

[[users]]
name = "alice"
kind = "human"
groups = ["dev"]
password_hash = "{}"
attributes = {{ region = "eu" }}
"#,
            sluice_identity::make_verifier("pw")
        )
    }

    #[test]
    fn proxy_protocol_balancers_are_address_ranges() {
        let text = minimal().replace(
            "http = \"127.0.0.1:7080\"",
            "http = \"127.0.0.1:7080\"\nproxy_protocol_from = [\"10.1.0.0/16\", \"192.0.2.7\", \"2001:db8::/32\"]",
        );
        let c = Config::parse(&text, "sluice.toml", &env).unwrap();
        let listed = |ip: &str| {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            c.listen.proxy_protocol_from.iter().any(|r| r.contains(ip))
        };
        assert!(listed("10.1.255.3"));
        assert!(listed("::ffff:10.1.0.1"));
        assert!(listed("192.0.2.7"));
        assert!(listed("2001:db8:5::1"));
        assert!(!listed("10.2.0.1"));
        assert!(!listed("192.0.2.8"));
        assert!(!listed("2001:db9::1"));
        for bad in ["10.0.0.0/33", "somehost", "10.0.0.0/x"] {
            let text = minimal().replace(
                "http = \"127.0.0.1:7080\"",
                &format!("http = \"127.0.0.1:7080\"\nproxy_protocol_from = [\"{bad}\"]"),
            );
            let e = Config::parse(&text, "sluice.toml", &env).unwrap_err();
            assert_eq!(e.key, "listen.proxy_protocol_from[0]", "{e}");
        }
        assert!("0.0.0.0/0"
            .parse::<IpRange>()
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let with_peers = |peers: &str| {
            Config::parse(
                &minimal().replace(
                    "http = \"127.0.0.1:7080\"",
                    &format!("http = \"127.0.0.1:7080\"\ncancel_peers = [{peers}]"),
                ),
                "sluice.toml",
                &env,
            )
        };
        let c = with_peers("\"10.0.0.11:7432\", \"sluice-2.internal:7432\"").unwrap();
        assert_eq!(c.listen.cancel_peers.len(), 2);
        for bad in ["\"10.0.0.11\"", "\":7432\"", "\"h:99999\""] {
            let e = with_peers(bad).unwrap_err();
            assert_eq!(e.key, "listen.cancel_peers[0]", "{e}");
        }
    }

    #[test]
    fn audit_store_tls_settings_are_checked() {
        let with = |audit: &str| {
            Config::parse(
                &format!("{}\n[audit]\n{audit}\n", minimal()),
                "sluice.toml",
                &env,
            )
        };
        let c = with("store = \"postgres://a@db:5432/x\"\nstore_tls = \"verify-full\"").unwrap();
        assert_eq!(c.audit.store_tls, Some(sluice_audit::StoreTls::VerifyFull));
        let e = with(
            "store = \"postgres://a@db:5432/x\"\nstore_tls = \"verify-full\"\nstore_ca_file = \"/nonexistent/ca.pem\"",
        )
        .unwrap_err();
        assert_eq!(e.key, "audit");
        assert!(
            e.reason.contains("store_ca_file /nonexistent/ca.pem"),
            "{e}"
        );
        let e = with("store_tls = \"require\"").unwrap_err();
        assert!(e.reason.contains("only for a postgres:// store"), "{e}");
        let e = with("store = \"postgres://a@db:5432/x\"\nstore_tls = \"verify\"").unwrap_err();
        assert!(e.to_string().contains("expected one of"), "{e}");
    }

    #[test]
    fn the_design_contract_file_loads() {
        let c = Config::parse(&minimal(), "sluice.toml", &env).unwrap();
        assert_eq!(c.listen.postgres.port(), 7432);
        assert_eq!(c.listen.plaintext, Plaintext::Loopback);
        let t = c.target("app-prod").unwrap();
        assert!(t.is_production());
        assert_eq!(t.password.as_ref().unwrap().expose(), "hunter2");
        assert_eq!(t.tls, UpstreamTls::Prefer);
        let u = c.user("alice").unwrap();
        assert_eq!(u.kind, PrincipalKind::Human);
        assert_eq!(u.attributes["region"], "eu");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = Config::parse(&minimal(), "sluice.toml", &|_| None).unwrap_err();
        assert_eq!(e.to_string(), "sluice.toml: targets[0].password_env: environment variable APP_PROD_DB_PASSWORD is not set");

        let text = minimal().replace("kind = \"human\"", "kind = \"robot\"");
        let e = Config::parse(&text, "f.toml", &env).unwrap_err();
        assert_eq!(e.key, "users[0].kind");

        let text = minimal().replace("upstream =", "upstreem =");
        let e = Config::parse(&text, "f.toml", &env).unwrap_err();
        assert!(e.reason.contains("upstreem"), "{e}");
        assert!(e.key.starts_with("line "), "{e}");

        let text = minimal().replace("SCRAM-SHA-256$", "md5$");
        let e = Config::parse(&text, "f.toml", &env).unwrap_err();
        assert_eq!(e.key, "users[0].password_hash");
    }

    #[test]
    fn identity_keys_parse_and_are_checked() {
        let oidc = r#"
[[oidc]]
issuer = "https://login.example.com/"
audience = "sluice"

[[oidc]]
issuer = "http://127.0.0.1:9000"
audience = ["sluice", "sluice-cli"]
attribute_claims = { region = "region" }
skew_secs = 5
algorithms = ["ES256"]
on_expiry = "allow"

[[oidc.clients]]
client_id = "etl"
kind = "agent"
on_behalf_of = "alice"
"#;
        let text = format!("{}{oidc}", minimal());
        let c = Config::parse(&text, "f.toml", &env).unwrap();
        assert_eq!(c.oidc.len(), 2);
        assert_eq!(c.oidc[0].user_claim, "email");
        assert_eq!(c.oidc[0].audiences, ["sluice"]);
        assert_eq!(c.oidc[0].on_expiry, sluice_identity::OnExpiry::Disconnect);
        assert_eq!(c.oidc[1].audiences, ["sluice", "sluice-cli"]);
        assert_eq!(c.oidc[1].on_expiry, sluice_identity::OnExpiry::Allow);
        assert_eq!(c.oidc[1].clients[0].name, "etl");
        assert_eq!(c.oidc[1].clients[0].kind, PrincipalKind::Agent);
        assert!(!c.listen.plaintext_tokens);

        for (bad, key) in [
            ("issuer = \"https://login.example.com/\"", "oidc[0].issuer"),
            ("algorithms = [\"HS256\"]", "oidc[0].algorithms"),
            ("on_expiry = \"later\"", "oidc[0].on_expiry"),
            (
                "attribute_claims = { Region = \"r\" }",
                "oidc[0].attribute_claims",
            ),
        ] {
            let text = format!(
                "{}[[oidc]]\nissuer = \"http://idp.example.com\"\naudience = \"s\"\n",
                minimal()
            );
            let text = if key == "oidc[0].issuer" {
                text
            } else {
                text.replace("http://idp.example.com", "https://idp.example.com") + bad + "\n"
            };
            let e = Config::parse(&text, "f.toml", &env).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn logins_mtls_and_client_ca() {
        let text = minimal().replace(
            "[[users]]",
            r#"[[targets.logins]]
groups = ["dba"]
user = "app_admin"
password_env = "APP_PROD_DB_PASSWORD"

[tls]
client_ca = "/etc/ca.pem"

[[mtls]]
from = "san_uri"
prefix = "spiffe://x/"
kind = "agent"

[[users]]"#,
        );
        let c = Config::parse(&text, "f.toml", &env).unwrap();
        let t = &c.targets[0];
        assert_eq!(t.login_for(&["dba".into()]).0, "app_admin");
        assert_eq!(t.login_for(&["dev".into()]).0, "sluice_app");
        assert!(c.tls.is_none());
        assert_eq!(c.client_ca.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.mtls[0].kind, PrincipalKind::Agent);

        let text = minimal() + "[[mtls]]\nfrom = \"cn\"\n";
        let e = Config::parse(&text, "f.toml", &env).unwrap_err();
        assert_eq!(e.key, "mtls[0].from");
        let text = minimal() + "[tls]\ncert = \"a.pem\"\n";
        let e = Config::parse(&text, "f.toml", &env).unwrap_err();
        assert_eq!(e.key, "tls.key");
    }

    #[test]
    fn admin_section_parses_and_is_checked() {
        let c = Config::parse(&minimal(), "f.toml", &env).unwrap();
        assert_eq!(c.admin, AdminConfig::default());
        assert!(c.admin.roles_for(&["dev".into()]).is_empty());

        let hash = "ab".repeat(32);
        let text = format!(
            "{}[admin]\nadmin_groups = [\"ops\"]\nauditor_groups = [\"audit\", \"ops\"]\ntokens = [{{ name = \"ci\", role = \"auditor\", token_sha256 = \"{hash}\" }}]\n",
            minimal()
        );
        let c = Config::parse(&text, "f.toml", &env).unwrap();
        assert_eq!(
            c.admin.roles_for(&["ops".into()]),
            [AdminRole::Admin, AdminRole::Auditor]
        );
        assert_eq!(c.admin.tokens[0].role, AdminRole::Auditor);
        assert_eq!(c.admin.tokens[0].token_sha256, [0xab; 32]);
        assert!(!format!("{c:?}").contains(&hash));

        for (bad, key) in [
            ("role = \"root\"", "admin.tokens[0].role"),
            ("token_sha256 = \"abc\"", "admin.tokens[0].token_sha256"),
            ("name = \"\"", "admin.tokens[0].name"),
        ] {
            let field = bad.split(' ').next().unwrap();
            let mut entry = vec![
                "name = \"ci\"".to_owned(),
                "role = \"admin\"".to_owned(),
                format!("token_sha256 = \"{hash}\""),
            ];
            entry.retain(|e| !e.starts_with(field));
            entry.push(bad.to_owned());
            let text = format!("{}[[admin.tokens]]\n{}\n", minimal(), entry.join("\n"));
            let e = Config::parse(&text, "f.toml", &env).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        let twice = format!(
            "{}[admin]\ntokens = [{{ name = \"a\", role = \"admin\", token_sha256 = \"{hash}\" }}, {{ name = \"b\", role = \"admin\", token_sha256 = \"{hash}\" }}]\n",
            minimal()
        );
        let e = Config::parse(&twice, "f.toml", &env).unwrap_err();
        assert_eq!(e.key, "admin.tokens[1].token_sha256", "{e}");
        let unknown = format!("{}[admin]\nadmins = [\"x\"]\n", minimal());
        assert!(Config::parse(&unknown, "f.toml", &env).is_err());
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let text = minimal().replace(
            "password_env = \"APP_PROD_DB_PASSWORD\"",
            &format!("password_file = {:?}", p.display().to_string()),
        );
        let c = Config::parse(&text, "f.toml", &env).unwrap();
        assert_eq!(c.targets[0].password.as_ref().unwrap().expose(), "s3cret");
    }
}
