//! JSON Web Tokens: split and decode a compact JWS, and check its signature
//! against a JSON Web Key with `ring`.
//!
//! Only asymmetric algorithms exist here. `none` and the HMAC family
//! (`HS256`, …) are refused by name before any key is looked at: a verifier
//! that holds only public keys must never accept a token "signed" with a
//! public key used as an HMAC secret, or with no signature at all.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest token accepted, in bytes (real ID tokens are a few KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A signature algorithm Sluice can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// The JOSE name (`RS256`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The default set: RS256, ES256, EdDSA.
    pub fn defaults() -> Vec<Alg> {
        vec![Alg::Rs256, Alg::Es256, Alg::EdDsa]
    }

    fn key_type(self) -> &'static str {
        match self {
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => "RSA",
            Alg::Es256 | Alg::Es384 => "EC",
            Alg::EdDsa => "OKP",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            "none" => return Err("\"none\" (unsigned tokens) is never accepted".into()),
            s if s.starts_with("HS") => {
                return Err(format!(
                    "{s:?} (shared-secret HMAC) is never accepted; use an asymmetric algorithm"
                ))
            }
            other => {
                return Err(format!(
                    "unsupported algorithm {other:?}; expected RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
                ))
            }
        })
    }
}

/// Why a token could not be read or its signature not checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a compact JWS, bad base64 or bad JSON.
    #[error("not a valid token: {0}")]
    Malformed(String),
    /// `none`, an HMAC algorithm, or one not allowed by config.
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    /// The signature does not verify with the key.
    #[error("the signature does not verify")]
    BadSignature,
    /// The key cannot be used (wrong type, curve or size).
    #[error("unusable key: {0}")]
    BadKey(String),
}

/// The protected header fields Sluice reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    /// Signature algorithm.
    pub alg: String,
    /// Key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// Extensions the verifier must understand (Sluice understands none).
    #[serde(default)]
    pub crit: Option<Vec<String>>,
}

/// A decoded token whose signature has not been checked yet.
#[derive(Debug, Clone)]
pub struct Unverified<'a> {
    /// The header.
    pub header: Header,
    /// The claims.
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`: what was signed.
    pub signing_input: &'a str,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

/// Split and decode a compact JWS without checking anything but its shape.
pub fn decode(token: &str) -> Result<Unverified<'_>, JwtError> {
    let bad = |why: &str| JwtError::Malformed(why.to_owned());
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad("too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("a token has three dot-separated parts"));
    };
    let b64 = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwtError::Malformed(format!("the {what} is not base64url")))
    };
    let header: Header = serde_json::from_slice(&b64(h, "header")?)
        .map_err(|_| bad("the header is not a JSON object with an alg"))?;
    let claims: Map<String, Value> = serde_json::from_slice(&b64(p, "payload")?)
        .map_err(|_| bad("the claims are not a JSON object"))?;
    let signature = b64(s, "signature")?;
    Ok(Unverified {
        header,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

/// One public key from a JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Jwk {
    /// `RSA`, `EC` or `OKP`.
    pub kty: String,
    /// Key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// The algorithm the key is for, if the issuer says.
    #[serde(default)]
    pub alg: Option<String>,
    /// `sig` or `enc`.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    /// RSA modulus.
    #[serde(default)]
    pub n: Option<String>,
    /// RSA exponent.
    #[serde(default)]
    pub e: Option<String>,
    /// Curve (`P-256`, `P-384`, `Ed25519`).
    #[serde(default)]
    pub crv: Option<String>,
    /// EC x coordinate, or the Ed25519 public key.
    #[serde(default)]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(default)]
    pub y: Option<String>,
}

impl Jwk {
    /// Whether this key may verify tokens signed with `alg`.
    pub fn fits(&self, alg: Alg) -> bool {
        self.kty == alg.key_type()
            && self.use_.as_deref().is_none_or(|u| u == "sig")
            && self.alg.as_deref().is_none_or(|a| a == alg.as_str())
            && match alg {
                Alg::Es256 => self.crv.as_deref() == Some("P-256"),
                Alg::Es384 => self.crv.as_deref() == Some("P-384"),
                Alg::EdDsa => self.crv.as_deref() == Some("Ed25519"),
                _ => true,
            }
    }
}

/// Parse a JWKS document, keeping the keys Sluice can use and skipping the
/// rest (encryption keys, unknown types), as a JWKS may hold keys for other
/// consumers.
pub fn parse_jwks(doc: &Value) -> Result<Vec<Jwk>, String> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no \"keys\" array")?;
    Ok(keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(|k| matches!(k.kty.as_str(), "RSA" | "EC" | "OKP"))
        .collect())
}

fn field(v: &Option<String>, name: &str) -> Result<Vec<u8>, JwtError> {
    let v = v
        .as_deref()
        .ok_or_else(|| JwtError::BadKey(format!("missing {name}")))?;
    URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| JwtError::BadKey(format!("{name} is not base64url")))
}

/// Check `signature` over `signing_input` with `key` for `alg`.
pub fn verify(alg: Alg, key: &Jwk, signing_input: &[u8], signature: &[u8]) -> Result<(), JwtError> {
    if !key.fits(alg) {
        return Err(JwtError::BadKey(format!("the key does not fit {alg}")));
    }
    let ok = match alg {
        Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => {
            let params: &signature::RsaParameters = match alg {
                Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                _ => &signature::RSA_PSS_2048_8192_SHA512,
            };
            let n = field(&key.n, "n")?;
            let e = field(&key.e, "e")?;
            // JWK integers are unsigned big-endian; ring wants no leading zeros.
            let strip = |b: &[u8]| b.iter().position(|&x| x != 0).map_or(0, |i| i);
            let components = RsaPublicKeyComponents {
                n: &n[strip(&n)..],
                e: &e[strip(&e)..],
            };
            components.verify(params, signing_input, signature).is_ok()
        }
        Alg::Es256 | Alg::Es384 => {
            let (params, len): (&'static dyn signature::VerificationAlgorithm, usize) = match alg {
                Alg::Es256 => (&signature::ECDSA_P256_SHA256_FIXED, 32),
                _ => (&signature::ECDSA_P384_SHA384_FIXED, 48),
            };
            let x = field(&key.x, "x")?;
            let y = field(&key.y, "y")?;
            if x.len() != len || y.len() != len {
                return Err(JwtError::BadKey("wrong coordinate length".into()));
            }
            // Uncompressed point: 0x04 || x || y.
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            UnparsedPublicKey::new(params, &point)
                .verify(signing_input, signature)
                .is_ok()
        }
        Alg::EdDsa => {
            let x = field(&key.x, "x")?;
            UnparsedPublicKey::new(&signature::ED25519, &x)
                .verify(signing_input, signature)
                .is_ok()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(JwtError::BadSignature)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Signing helpers for tests: Ed25519 and ES256 keys made with ring.
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    /// A key pair that can sign test tokens.
    pub enum TestKey {
        /// Ed25519.
        Ed(Ed25519KeyPair),
        /// ECDSA P-256.
        Es(EcdsaKeyPair),
    }

    impl TestKey {
        pub fn ed25519() -> TestKey {
            let rng = SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            TestKey::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
        }

        pub fn es256() -> TestKey {
            let rng = SystemRandom::new();
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            TestKey::Es(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap())
        }

        pub fn alg(&self) -> &'static str {
            match self {
                TestKey::Ed(_) => "EdDSA",
                TestKey::Es(_) => "ES256",
            }
        }

        pub fn jwk(&self, kid: &str) -> Jwk {
            match self {
                TestKey::Ed(k) => Jwk {
                    kty: "OKP".into(),
                    kid: Some(kid.into()),
                    alg: None,
                    use_: Some("sig".into()),
                    n: None,
                    e: None,
                    crv: Some("Ed25519".into()),
                    x: Some(URL_SAFE_NO_PAD.encode(k.public_key().as_ref())),
                    y: None,
                },
                TestKey::Es(k) => {
                    let p = k.public_key().as_ref();
                    Jwk {
                        kty: "EC".into(),
                        kid: Some(kid.into()),
                        alg: Some("ES256".into()),
                        use_: None,
                        n: None,
                        e: None,
                        crv: Some("P-256".into()),
                        x: Some(URL_SAFE_NO_PAD.encode(&p[1..33])),
                        y: Some(URL_SAFE_NO_PAD.encode(&p[33..65])),
                    }
                }
            }
        }

        /// A compact JWS with this header and these claims.
        pub fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig = match self {
                TestKey::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
                TestKey::Es(k) => k
                    .sign(&SystemRandom::new(), input.as_bytes())
                    .unwrap()
                    .as_ref()
                    .to_vec(),
            };
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestKey;
    use super::*;
    use serde_json::json;

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        for key in [TestKey::ed25519(), TestKey::es256()] {
            let alg: Alg = key.alg().parse().unwrap();
            let token = key.sign(
                &json!({"alg": key.alg(), "kid": "k1"}),
                &json!({"sub": "a"}),
            );
            let t = decode(&token).unwrap();
            assert_eq!(t.header.kid.as_deref(), Some("k1"));
            assert_eq!(t.claims["sub"], "a");
            let jwk = key.jwk("k1");
            verify(alg, &jwk, t.signing_input.as_bytes(), &t.signature).unwrap();
            let mut sig = t.signature.clone();
            sig[0] ^= 1;
            assert_eq!(
                verify(alg, &jwk, t.signing_input.as_bytes(), &sig),
                Err(JwtError::BadSignature)
            );
            // Another key of the same type does not verify it.
            let other = if alg == Alg::EdDsa {
                TestKey::ed25519()
            } else {
                TestKey::es256()
            };
            assert!(verify(
                alg,
                &other.jwk("k1"),
                t.signing_input.as_bytes(),
                &t.signature
            )
            .is_err());
        }
    }

    #[test]
    fn none_and_hmac_are_refused_by_name() {
        assert!("none".parse::<Alg>().unwrap_err().contains("never"));
        assert!("HS256".parse::<Alg>().unwrap_err().contains("never"));
        assert!("RS256".parse::<Alg>().is_ok());
    }

    #[test]
    fn malformed_tokens() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.",
            "e30.e30.!!",
            "bm90IGpzb24.e30.",
        ] {
            assert!(matches!(decode(bad), Err(JwtError::Malformed(_))), "{bad}");
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(decode(&long).is_err());
    }

    #[test]
    fn keys_fit_only_their_algorithm() {
        let ed = TestKey::ed25519().jwk("k");
        assert!(ed.fits(Alg::EdDsa));
        assert!(!ed.fits(Alg::Es256));
        assert!(!ed.fits(Alg::Rs256));
        let es = TestKey::es256().jwk("k");
        assert!(es.fits(Alg::Es256));
        assert!(!es.fits(Alg::Es384));
        let jwks = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "OKP", "crv": "Ed25519", "x": "AA"}]});
        assert_eq!(parse_jwks(&jwks).unwrap().len(), 1);
    }
}
