//! Authentication of the caller over the wire: SCRAM-SHA-256 against the
//! local users of the config. OIDC tokens will arrive behind the same seam.

use bytes::BytesMut;
use sluice_identity::scram::Step;
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

/// Authenticate `user`; on success the client has been sent
/// AuthenticationSASLFinal but not yet AuthenticationOk.
pub async fn authenticate(
    stream: &mut ClientStream,
    user: &str,
    rt: &Runtime,
) -> Result<Principal, SessionError> {
    let local = rt.config.user(user);
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
        .await?;

    let mut buf = BytesMut::with_capacity(1024);
    let failed = |reason: String| {
        Metrics::inc(&rt.metrics.auth_failures_total);
        tracing::info!(user, %reason, "authentication failed");
        SessionError::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
    };

    let body = expect_password(stream, &mut buf).await?;
    let initial = password::decode_sasl_initial(&body).map_err(|e| failed(e.to_string()))?;
    let data = initial.data.unwrap_or_default();
    let first = scram
        .initial(initial.mechanism, data)
        .map_err(|e| failed(e.to_string()))?;
    let Step::Continue(first) = first else {
        return Err(failed("unexpected SCRAM step".into()));
    };
    stream
        .write_all(&Authentication::SaslContinue(first.into()).encode())
        .await?;

    let body = expect_password(stream, &mut buf).await?;
    let last = scram.response(&body).map_err(|e| failed(e.to_string()))?;
    let Step::Final(last) = last else {
        return Err(failed("unexpected SCRAM step".into()));
    };
    let Some(u) = local else {
        return Err(failed("unknown user".into()));
    };
    stream
        .write_all(&Authentication::SaslFinal(last.into()).encode())
        .await?;
    Ok(Principal {
        name: u.name.clone(),
        kind: u.kind,
        groups: u.groups.clone(),
        attributes: u.attributes.clone(),
        method: "scram-sha-256",
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
