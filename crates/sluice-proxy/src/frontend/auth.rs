//! Authentication of the caller over the wire, in this order:
//!
//! 1. a verified client certificate (`[tls] client_ca`) that an `[[mtls]]`
//!    rule maps to a principal named like the startup `user`: no password;
//! 2. a local `[[users]]` name: SCRAM-SHA-256 (-PLUS over TLS);
//! 3. any other name, when `[[oidc]]` is configured: the password is an
//!    OIDC token, asked for in clear (AuthenticationCleartextPassword), and
//!    only over TLS unless `[listen] plaintext_tokens = true`; the token,
//!    not the `user`, decides who the principal is;
//! 4. otherwise SCRAM against a decoy verifier, which always fails.

use std::time::SystemTime;

use bytes::BytesMut;
use sluice_identity::oidc::{HttpFetch, KeyCache, TokenError, Validator};
use sluice_identity::scram::{ScramError, Step};
use sluice_identity::{Principal, ScramServer, ScramVerifier};
use sluice_wire::messages::{password, Authentication};
use sluice_wire::tags::frontend;
use tokio::io::AsyncWriteExt;

use crate::error::SessionError;
use crate::io::read_message;
use crate::server::Runtime;
use crate::stream::ClientStream;
use crate::Metrics;

/// Largest authentication message accepted (tokens can be several KiB).
const AUTH_MESSAGE_LIMIT: usize = 64 * 1024;

/// A sign-in that failed: the error for the client, and for the audit
/// trail the method tried and why it failed (the client is told less, so
/// that names and methods cannot be probed).
#[derive(Debug)]
pub struct AuthFailed {
    /// What the session ends with.
    pub error: SessionError,
    /// `scram-sha-256` or `token`.
    pub method: &'static str,
    /// `bad_credentials`, `unknown_user`, `channel_binding`, `protocol`,
    /// `tls_required`, `token_invalid`, `token_expired`,
    /// `idp_unavailable` or `other`.
    pub reason: &'static str,
}

impl AuthFailed {
    fn new(method: &'static str, reason: &'static str, error: SessionError) -> AuthFailed {
        AuthFailed {
            error,
            method,
            reason,
        }
    }
}

/// Authenticate `user`; on success the client has been sent what the method
/// needs (AuthenticationSASLFinal for SCRAM) but not yet AuthenticationOk.
pub async fn authenticate(
    stream: &mut ClientStream,
    user: &str,
    rt: &Runtime,
) -> Result<Principal, AuthFailed> {
    if let Some(p) = certificate_principal(stream, rt) {
        // As PostgreSQL's `cert` method: the certificate must name this user.
        if p.name == user {
            return Ok(p);
        }
        tracing::debug!(user = ?user, certificate = %p.name, "client certificate names another principal; asking for a password");
    }
    let local = rt.config.user(user);
    if local.is_none() && !rt.config.oidc.is_empty() {
        return token(stream, user, rt).await;
    }
    scram(stream, user, local, rt).await
}

/// A failure while exchanging messages (the client broke the protocol or
/// went away) during `method`.
fn exchange(method: &'static str) -> impl Fn(SessionError) -> AuthFailed {
    move |e| {
        let reason = match &e {
            SessionError::Refused(_) => "protocol",
            _ => "other",
        };
        AuthFailed::new(method, reason, e)
    }
}

/// The principal a verified client certificate maps to, if any.
fn certificate_principal(stream: &ClientStream, rt: &Runtime) -> Option<Principal> {
    if rt.config.client_ca.is_none() || rt.config.mtls.is_empty() {
        return None;
    }
    let crate::stream::MaybeTls::Tls(tls) = stream else {
        return None;
    };
    // rustls verified the chain against client_ca during the handshake.
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    let names = sluice_identity::mtls::cert_names(leaf);
    sluice_identity::mtls::principal_for(&names, &rt.config.mtls)
}

/// Sign-in with an OIDC token as the password.
async fn token(
    stream: &mut ClientStream,
    user: &str,
    rt: &Runtime,
) -> Result<Principal, AuthFailed> {
    const METHOD: &str = "token";
    let exchange = exchange(METHOD);
    // Refuse before asking, so the client never sends the token in clear.
    if !stream.is_tls() && !rt.config.listen.plaintext_tokens {
        Metrics::inc(&rt.metrics.auth_failures_total);
        return Err(AuthFailed::new(
            METHOD,
            "tls_required",
            SessionError::fatal_hint(
                "28000",
                "sluice: signing in with a token requires TLS",
                "connect with sslmode=require (tokens are never accepted in clear)",
            ),
        ));
    }
    stream
        .write_all(&Authentication::CleartextPassword.encode())
        .await
        .map_err(|e| exchange(e.into()))?;
    stream.flush().await.map_err(|e| exchange(e.into()))?;
    let mut buf = BytesMut::with_capacity(4096);
    let body = expect_password(stream, &mut buf).await.map_err(&exchange)?;
    let token = password::decode_password(&body)
        .map_err(|e| {
            exchange(SessionError::fatal(
                "08P01",
                format!("invalid password message: {e}"),
            ))
        })?
        .to_owned();
    let config = rt.config.clone();
    // Validation may fetch the issuer's keys over HTTP: off the session's thread.
    let result = tokio::task::spawn_blocking(move || {
        Validator::new(&config.oidc, &HttpFetch, KeyCache::global())
            .validate(&token, SystemTime::now())
    })
    .await
    .map_err(|e| {
        exchange(std::io::Error::other(format!("token validation task failed: {e}")).into())
    })?;
    match result {
        Ok(v) => {
            if v.principal.name != user {
                tracing::info!(user = ?user, principal = ?v.principal.name, issuer = %v.issuer, "token sign-in under another startup user name; the token decides");
            }
            Ok(v.principal)
        }
        Err(e) => {
            Metrics::inc(&rt.metrics.auth_failures_total);
            // The reason names what failed, never the token itself.
            tracing::info!(user = ?user, reason = %e, detail = ?e, "token authentication failed");
            let reason = match e {
                TokenError::Expired => "token_expired",
                TokenError::IssuerUnavailable(_) => "idp_unavailable",
                _ => "token_invalid",
            };
            Err(AuthFailed::new(
                METHOD,
                reason,
                SessionError::fatal(
                    e.sqlstate(),
                    format!("sluice: token authentication failed for user \"{user}\": {e}"),
                ),
            ))
        }
    }
}

/// SCRAM-SHA-256 against a local user (or a decoy for an unknown name).
async fn scram(
    stream: &mut ClientStream,
    user: &str,
    local: Option<&sluice_config::User>,
    rt: &Runtime,
) -> Result<Principal, AuthFailed> {
    const METHOD: &str = "scram-sha-256";
    let exchange = exchange(METHOD);
    let verifier = match local {
        Some(u) => u.verifier.clone(),
        // Same exchange for an unknown user, so names cannot be probed.
        None => ScramVerifier::decoy(user, &rt.decoy_secret),
    };
    let end_point = match stream {
        crate::stream::MaybeTls::Tls(_) => Some(rt.server_tls.end_point.clone()),
        crate::stream::MaybeTls::Plain(_) => None,
    };
    let mut scram = ScramServer::new(verifier, end_point);
    stream
        .write_all(
            &Authentication::Sasl {
                mechanisms: scram.mechanisms(),
            }
            .encode(),
        )
        .await
        .map_err(|e| exchange(e.into()))?;

    let mut buf = BytesMut::with_capacity(1024);
    // The client hears the same for every cause; the trail gets the cause.
    let failed = |reason: &'static str, detail: String| {
        Metrics::inc(&rt.metrics.auth_failures_total);
        tracing::info!(user, reason, %detail, "authentication failed");
        let reason = if local.is_none() && reason == "bad_credentials" {
            "unknown_user"
        } else {
            reason
        };
        AuthFailed::new(
            METHOD,
            reason,
            SessionError::fatal(
                "28P01",
                format!("password authentication failed for user \"{user}\""),
            ),
        )
    };
    let scram_failed = |e: ScramError| {
        let reason = match e {
            ScramError::ChannelBinding(_) => "channel_binding",
            ScramError::WrongPassword => "bad_credentials",
            ScramError::Malformed(_) => "protocol",
            ScramError::BadVerifier(_) => "other",
        };
        failed(reason, e.to_string())
    };

    let body = expect_password(stream, &mut buf).await.map_err(&exchange)?;
    let initial =
        password::decode_sasl_initial(&body).map_err(|e| failed("protocol", e.to_string()))?;
    let data = initial.data.unwrap_or_default();
    let first = scram
        .initial(initial.mechanism, data)
        .map_err(scram_failed)?;
    let Step::Continue(first) = first else {
        return Err(failed("protocol", "unexpected SCRAM step".into()));
    };
    stream
        .write_all(&Authentication::SaslContinue(first.into()).encode())
        .await
        .map_err(|e| exchange(e.into()))?;

    let body = expect_password(stream, &mut buf).await.map_err(&exchange)?;
    let last = scram.response(&body).map_err(scram_failed)?;
    let Step::Final(last) = last else {
        return Err(failed("protocol", "unexpected SCRAM step".into()));
    };
    let Some(u) = local else {
        return Err(failed("unknown_user", "unknown user".into()));
    };
    stream
        .write_all(&Authentication::SaslFinal(last.into()).encode())
        .await
        .map_err(|e| exchange(e.into()))?;
    Ok(Principal {
        name: u.name.clone(),
        kind: u.kind,
        groups: u.groups.clone(),
        attributes: u.attributes.clone(),
        method: "scram-sha-256",
        ..Default::default()
    })
}

async fn expect_password(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, SessionError> {
    match read_message(stream, buf, AUTH_MESSAGE_LIMIT).await {
        Ok(Some((frontend::PASSWORD, body))) => Ok(body),
        // libpq hangs up when it has no password to give.
        Ok(None) | Ok(Some((frontend::TERMINATE, _))) => Err(SessionError::ClientGone),
        Ok(Some((t, _))) => Err(SessionError::fatal(
            "08P01",
            format!(
                "expected a password message, got message type {:?}",
                t as char
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(SessionError::fatal(
            "08P01",
            format!("invalid authentication message: {e}"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(SessionError::ClientGone),
        Err(e) => Err(e.into()),
    }
}
