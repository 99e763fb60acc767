//! The upstream side: connect, TLS, log in as the target's own user, and
//! forward cancel requests.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use sluice_config::{Target, UpstreamTls};
use sluice_wire::messages::{password, startup, Authentication, BackendKeyData, ErrorResponse};
use sluice_wire::tags::backend as tag;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::cancel::CancelTarget;
use crate::error::UpstreamError;
use crate::io::read_message;
use crate::stream::{MaybeTls, UpstreamStream};
use crate::tls;

/// Largest message accepted from an upstream during login.
const LOGIN_MESSAGE_LIMIT: usize = 1 << 20;

/// A logged-in upstream connection, ready for queries.
pub struct Upstream {
    /// The socket.
    pub stream: UpstreamStream,
    /// Bytes read after ReadyForQuery (normally none).
    pub leftover: BytesMut,
    /// The upstream backend's cancel key.
    pub key: BackendKeyData,
    /// ParameterStatus and NoticeResponse messages to relay to the client, in order.
    pub greeting: BytesMut,
    /// The ReadyForQuery that ended the login.
    pub ready: Bytes,
    /// Parameters the server reported.
    pub server_params: Vec<(String, String)>,
}

/// Open a connection and optionally TLS, per the target's mode.
async fn open(
    target: &Target,
    connector: Option<&TlsConnector>,
    timeout: Duration,
) -> Result<UpstreamStream, UpstreamError> {
    let unreachable = |reason: String| UpstreamError::Unreachable {
        addr: target.upstream.clone(),
        reason,
    };
    let mut tcp = tokio::time::timeout(timeout, TcpStream::connect(&target.upstream))
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", timeout.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    tcp.set_nodelay(true)?;
    let Some(connector) = connector else {
        return Ok(MaybeTls::Plain(tcp));
    };
    tcp.write_all(&startup::encode_ssl_request()).await?;
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {
            let name = tls::server_name(&target.upstream).map_err(UpstreamError::Tls)?;
            let stream = tokio::time::timeout(timeout, connector.connect(name, tcp))
                .await
                .map_err(|_| UpstreamError::Tls("handshake timed out".into()))?
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            Ok(MaybeTls::Tls(Box::new(stream)))
        }
        b'N' if target.tls == UpstreamTls::Prefer => Ok(MaybeTls::Plain(tcp)),
        b'N' => Err(UpstreamError::Tls(
            "the upstream does not offer TLS but the target requires it".into(),
        )),
        other => Err(UpstreamError::Protocol(format!(
            "unexpected answer {other:#04x} to SSLRequest"
        ))),
    }
}

/// Connect and log in. `params` are the startup parameters to pass on
/// (user and database are the target's and are added here).
pub async fn connect(
    target: &Target,
    connector: Option<&TlsConnector>,
    params: &[(String, String)],
    timeout: Duration,
) -> Result<Upstream, UpstreamError> {
    let mut stream = open(target, connector, timeout).await?;
    let mut all: Vec<(&str, &str)> = vec![("user", &target.user), ("database", &target.database)];
    all.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    stream.write_all(&startup::Startup::encode(&all)).await?;

    let end_point = match &stream {
        MaybeTls::Tls(t) => t
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| tls::end_point_hash(c)),
        MaybeTls::Plain(_) => None,
    };
    let password = || {
        target
            .password
            .as_ref()
            .map(|p| p.expose())
            .ok_or_else(|| UpstreamError::Rejected("the upstream asks for a password but the target has none configured (password_env or password_file)".into()))
    };

    let mut buf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramSha256> = None;
    // Authentication.
    loop {
        let (t, body) = next(&mut stream, &mut buf).await?;
        match t {
            tag::AUTHENTICATION => match Authentication::decode(&body).map_err(proto)? {
                Authentication::Ok => break,
                Authentication::CleartextPassword => {
                    stream
                        .write_all(&password::encode_password(password()?))
                        .await?;
                }
                Authentication::Md5Password { salt } => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        target.user.as_bytes(),
                        password()?.as_bytes(),
                        salt,
                    );
                    stream.write_all(&password::encode_password(&hash)).await?;
                }
                Authentication::Sasl { mechanisms } => {
                    let plus = mechanisms.iter().any(|m| m == "SCRAM-SHA-256-PLUS");
                    let (binding, mechanism) = match (&end_point, plus) {
                        (Some(hash), true) => (
                            ChannelBinding::tls_server_end_point(hash.clone()),
                            "SCRAM-SHA-256-PLUS",
                        ),
                        (Some(_), false) => (ChannelBinding::unrequested(), "SCRAM-SHA-256"),
                        (None, _) => (ChannelBinding::unsupported(), "SCRAM-SHA-256"),
                    };
                    if !mechanisms.iter().any(|m| m == mechanism) {
                        return Err(UpstreamError::Unsupported(format!(
                            "SASL mechanisms {mechanisms:?}"
                        )));
                    }
                    let s = ScramSha256::new(password()?.as_bytes(), binding);
                    stream
                        .write_all(&password::encode_sasl_initial(mechanism, s.message()))
                        .await?;
                    scram = Some(s);
                }
                Authentication::SaslContinue(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| proto("SASLContinue before SASL"))?;
                    s.update(&data)
                        .map_err(|e| UpstreamError::Rejected(format!("SCRAM: {e}")))?;
                    stream
                        .write_all(&password::encode_sasl_response(s.message()))
                        .await?;
                }
                Authentication::SaslFinal(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| proto("SASLFinal before SASL"))?;
                    // Proves the server knew the verifier: mutual authentication.
                    s.finish(&data).map_err(|e| {
                        UpstreamError::Rejected(format!(
                            "the upstream's SCRAM signature is wrong: {e}"
                        ))
                    })?;
                }
                Authentication::Unsupported(code) => {
                    return Err(UpstreamError::Unsupported(format!(
                        "authentication method {code} (Kerberos/GSSAPI/SSPI)"
                    )))
                }
            },
            tag::ERROR_RESPONSE => return Err(rejected(&body)),
            tag::NEGOTIATE_PROTOCOL_VERSION | tag::NOTICE_RESPONSE => {}
            other => {
                return Err(proto(format!(
                    "unexpected message {:?} during login",
                    other as char
                )))
            }
        }
    }

    // After AuthenticationOk: parameters, key, then ReadyForQuery.
    let mut greeting = BytesMut::new();
    let mut key = None;
    let mut server_params = Vec::new();
    loop {
        let (t, body) = next(&mut stream, &mut buf).await?;
        match t {
            tag::PARAMETER_STATUS => {
                let (k, v) =
                    sluice_wire::messages::parameter_status::decode(&body).map_err(proto)?;
                server_params.push((k.to_owned(), v.to_owned()));
                greeting.extend_from_slice(&sluice_wire::messages::parameter_status::encode(k, v));
            }
            tag::NOTICE_RESPONSE => {
                let notice = ErrorResponse::decode(&body).map_err(proto)?;
                greeting.extend_from_slice(&notice.encode_notice());
            }
            tag::BACKEND_KEY_DATA => key = Some(BackendKeyData::decode(&body).map_err(proto)?),
            tag::READY_FOR_QUERY => {
                let ready = sluice_wire::messages::ready_for_query::encode(
                    body.first()
                        .copied()
                        .and_then(sluice_wire::messages::TransactionStatus::from_byte)
                        .ok_or_else(|| proto("bad ReadyForQuery"))?,
                );
                return Ok(Upstream {
                    stream,
                    leftover: buf,
                    key: key.ok_or_else(|| proto("no BackendKeyData"))?,
                    greeting,
                    ready,
                    server_params,
                });
            }
            tag::ERROR_RESPONSE => return Err(rejected(&body)),
            other => {
                return Err(proto(format!(
                    "unexpected message {:?} after login",
                    other as char
                )))
            }
        }
    }
}

async fn next(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
) -> Result<(u8, Bytes), UpstreamError> {
    read_message(stream, buf, LOGIN_MESSAGE_LIMIT)
        .await?
        .ok_or_else(|| {
            UpstreamError::Protocol("the upstream closed the connection during login".into())
        })
}

fn proto(e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Protocol(e.to_string())
}

fn rejected(body: &[u8]) -> UpstreamError {
    match ErrorResponse::decode(body) {
        Ok(e) => UpstreamError::Rejected(format!(
            "{} ({})",
            e.message().unwrap_or("no message"),
            e.code().unwrap_or("no SQLSTATE")
        )),
        Err(e) => proto(e),
    }
}

/// Pass a cancel request with an unknown key to another Sluice replica
/// (`host:port` of its PostgreSQL listener), as a relayed cancel, and wait
/// until it closes the connection (the cancel has been dealt with).
pub async fn relay_cancel(
    replica: &str,
    process_id: i32,
    secret_key: i32,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let work = async {
        let mut tcp = TcpStream::connect(replica).await?;
        tcp.write_all(&startup::encode_relayed_cancel(process_id, secret_key))
            .await?;
        let _ = tcp.read_u8().await;
        Ok(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| UpstreamError::Unreachable {
            addr: replica.to_owned(),
            reason: "relaying the cancel timed out".into(),
        })?
}

/// Forward a cancel to the upstream backend behind a session.
pub async fn send_cancel(
    target: &CancelTarget,
    connector: Option<&TlsConnector>,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let packet = startup::encode_cancel(
        target.upstream_key.process_id,
        target.upstream_key.secret_key,
    );
    let work = async {
        let mut tcp = TcpStream::connect(&target.upstream).await?;
        match connector.filter(|_| target.tls) {
            Some(connector) => {
                tcp.write_all(&startup::encode_ssl_request()).await?;
                if tcp.read_u8().await? != b'S' {
                    return Err(UpstreamError::Tls(
                        "upstream refused TLS for the cancel".into(),
                    ));
                }
                let name = tls::server_name(&target.upstream).map_err(UpstreamError::Tls)?;
                let mut s = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                s.write_all(&packet).await?;
                s.flush().await?;
                // The server closes when done; wait for that so the cancel has landed.
                let _ = s.read_u8().await;
            }
            None => {
                tcp.write_all(&packet).await?;
                let _ = tcp.read_u8().await;
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| UpstreamError::Unreachable {
            addr: target.upstream.clone(),
            reason: "cancel timed out".into(),
        })?
}
