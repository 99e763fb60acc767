//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, server side.
//!
//! The verifier format is PostgreSQL's own:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64), so a
//! verifier from `sluice passwd` or from `pg_authid` works unchanged.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Mechanism names as advertised.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The channel-binding variant.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Why a SCRAM exchange failed. Messages never include secrets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// The verifier string is not in PostgreSQL's format.
    #[error("invalid SCRAM verifier: {0}")]
    BadVerifier(&'static str),
    /// The client sent something that is not SCRAM.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding was required, refused or did not match.
    #[error("SCRAM channel binding failed: {0}")]
    ChannelBinding(&'static str),
    /// Wrong password (or unknown user).
    #[error("password authentication failed")]
    WrongPassword,
}

/// A stored SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

impl ScramVerifier {
    /// Parse `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadVerifier("must start with SCRAM-SHA-256$"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(ScramError::BadVerifier("missing keys"))?;
        let (iter, salt) = params
            .split_once(':')
            .ok_or(ScramError::BadVerifier("missing salt"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(ScramError::BadVerifier("missing server key"))?;
        let iterations: u32 = iter
            .parse()
            .map_err(|_| ScramError::BadVerifier("iteration count is not a number"))?;
        if iterations == 0 {
            return Err(ScramError::BadVerifier("iteration count is zero"));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| ScramError::BadVerifier("salt is not base64"))?;
        let key = |k: &str| -> Result<[u8; 32], ScramError> {
            B64.decode(k)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or(ScramError::BadVerifier("key is not 32 bytes of base64"))
        };
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// A verifier that no password matches, with a salt derived from the user
    /// name, so that an unknown user goes through the same exchange as a known
    /// one and cannot be told apart.
    pub fn decoy(user: &str, secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(user.as_bytes());
        let salt = mac.finalize().into_bytes()[..16].to_vec();
        let mut stored_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut stored_key);
        ScramVerifier {
            iterations: 4096,
            salt,
            stored_key,
            server_key: [0u8; 32],
        }
    }
}

/// Make a verifier for a password, in PostgreSQL's format.
pub fn make_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Server side of one SCRAM exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    /// `tls-server-end-point` data when the client is on TLS.
    channel_binding: Option<Vec<u8>>,
    state: State,
}

enum State {
    Initial,
    SentFirst {
        client_first_bare: String,
        server_first: String,
        gs2_header: String,
        nonce: String,
    },
    Done,
}

/// What the server sends next.
pub enum Step {
    /// Send this as AuthenticationSASLContinue.
    Continue(Vec<u8>),
    /// Authenticated: send this as AuthenticationSASLFinal, then AuthenticationOk.
    Final(Vec<u8>),
}

impl ScramServer {
    /// Begin an exchange against `verifier`. `channel_binding` is the
    /// `tls-server-end-point` hash of Sluice's certificate, when on TLS.
    pub fn new(verifier: ScramVerifier, channel_binding: Option<Vec<u8>>) -> Self {
        ScramServer {
            verifier,
            channel_binding,
            state: State::Initial,
        }
    }

    /// Mechanisms to advertise.
    pub fn mechanisms(&self) -> Vec<String> {
        let mut m = Vec::with_capacity(2);
        if self.channel_binding.is_some() {
            m.push(SCRAM_SHA_256_PLUS.to_owned());
        }
        m.push(SCRAM_SHA_256.to_owned());
        m
    }

    /// Handle the SASLInitialResponse.
    pub fn initial(&mut self, mechanism: &str, data: &[u8]) -> Result<Step, ScramError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.channel_binding.is_some() => true,
            _ => return Err(ScramError::Malformed("unsupported mechanism")),
        };
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let mut parts = text.splitn(3, ',');
        let flag = parts.next().unwrap_or_default();
        let authzid = parts.next().ok_or(ScramError::Malformed("gs2 header"))?;
        let bare = parts.next().ok_or(ScramError::Malformed("gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity not supported",
            ));
        }
        match (flag, plus) {
            ("n", false) => {}
            // The client can bind but believes we cannot: we offered PLUS, so
            // someone removed it from the list (downgrade).
            ("y", false) if self.channel_binding.is_some() => {
                return Err(ScramError::ChannelBinding("downgrade detected"))
            }
            ("y", false) => {}
            ("p=tls-server-end-point", true) => {}
            _ => return Err(ScramError::ChannelBinding("unsupported channel binding")),
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("client nonce"))?;
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let gs2_header = format!("{flag},{authzid},");
        self.state = State::SentFirst {
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            gs2_header,
            nonce,
        };
        Ok(Step::Continue(server_first.into_bytes()))
    }

    /// Handle the SASLResponse carrying the client-final message.
    pub fn response(&mut self, data: &[u8]) -> Result<Step, ScramError> {
        let State::SentFirst {
            client_first_bare,
            server_first,
            gs2_header,
            nonce,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Malformed("unexpected message"));
        };
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("missing channel binding"))?;
        let got_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("missing nonce"))?;
        let binding = B64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        let mut expected = gs2_header.clone().into_bytes();
        if gs2_header.starts_with("p=") {
            let cb = self
                .channel_binding
                .as_ref()
                .ok_or(ScramError::ChannelBinding("no TLS"))?;
            expected.extend_from_slice(cb);
        }
        if binding.ct_eq(&expected).unwrap_u8() == 0 {
            return Err(ScramError::ChannelBinding("binding data does not match"));
        }
        if got_nonce.as_bytes().ct_eq(nonce.as_bytes()).unwrap_u8() == 0 {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof = B64
            .decode(proof)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or(ScramError::Malformed("proof"))?;

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if stored.ct_eq(&self.verifier.stored_key).unwrap_u8() == 0 {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(Step::Final(
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        ))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(
        password: &str,
        verifier: &str,
        cb: Option<Vec<u8>>,
        client_cb: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut server = ScramServer::new(ScramVerifier::parse(verifier)?, cb);
        let plus = server.mechanisms()[0] == SCRAM_SHA_256_PLUS;
        let mut client = ScramSha256::new(password.as_bytes(), client_cb);
        let mech = if plus && matches!(client.message().first(), Some(b'p')) {
            SCRAM_SHA_256_PLUS
        } else {
            SCRAM_SHA_256
        };
        let Step::Continue(first) = server.initial(mech, client.message())? else {
            panic!("expected continue")
        };
        client
            .update(&first)
            .map_err(|_| ScramError::Malformed("client"))?;
        let Step::Final(fin) = server.response(client.message())? else {
            panic!("expected final")
        };
        client
            .finish(&fin)
            .map_err(|_| ScramError::Malformed("server signature"))?;
        Ok(())
    }

    #[test]
    fn accepts_right_password_and_client_checks_server() {
        let v = make_verifier("s3cret");
        run("s3cret", &v, None, ChannelBinding::unsupported()).unwrap();
    }

    #[test]
    fn refuses_wrong_password() {
        let v = make_verifier("s3cret");
        assert_eq!(
            run("guess", &v, None, ChannelBinding::unsupported()),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn channel_binding_must_match() {
        let v = make_verifier("pw");
        run(
            "pw",
            &v,
            Some(vec![1; 32]),
            ChannelBinding::tls_server_end_point(vec![1; 32]),
        )
        .unwrap();
        assert!(matches!(
            run(
                "pw",
                &v,
                Some(vec![1; 32]),
                ChannelBinding::tls_server_end_point(vec![2; 32])
            ),
            Err(ScramError::ChannelBinding(_))
        ));
    }

    #[test]
    fn detects_downgrade() {
        let v = make_verifier("pw");
        // The client could bind ("y") but we offered PLUS.
        assert!(matches!(
            run("pw", &v, Some(vec![1; 32]), ChannelBinding::unrequested()),
            Err(ScramError::ChannelBinding(_))
        ));
    }

    #[test]
    fn parses_postgres_verifier_and_rejects_garbage() {
        assert!(ScramVerifier::parse(&make_verifier("x")).is_ok());
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$x:salt$a:b",
            "SCRAM-SHA-256$4096:c2FsdA==$YQ==:YQ==",
        ] {
            assert!(ScramVerifier::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decoy_never_matches() {
        let mut server = ScramServer::new(ScramVerifier::decoy("bob", b"k"), None);
        let mut client = ScramSha256::new(b"", ChannelBinding::unsupported());
        let Ok(Step::Continue(first)) = server.initial(SCRAM_SHA_256, client.message()) else {
            panic!()
        };
        client.update(&first).unwrap();
        assert!(server.response(client.message()).is_err());
    }
}
