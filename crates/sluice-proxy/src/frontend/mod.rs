//! The client side of startup: TLS negotiation, the startup packet, the
//! parameters a client may pass on, and authentication of the caller.

mod auth;
pub mod params;

use std::net::SocketAddr;

use sluice_config::Plaintext;
use sluice_identity::Principal;
use sluice_wire::messages::startup::{self, StartupPacket};
use sluice_wire::messages::{negotiate_protocol_version, Startup};
use sluice_wire::WireError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cancel::CancelTarget;
use crate::error::SessionError;
use crate::server::Runtime;
use crate::stream::{ClientStream, MaybeTls};

pub use params::upstream_params;

/// What a new connection turned out to be.
pub enum Opening {
    /// A session that passed authentication.
    Session(Box<Handshaken>),
    /// A cancel request, and the client's socket, to close once the cancel
    /// is delivered.
    Cancel(CancelRequest, ClientStream),
}

/// A cancel request as it came.
pub struct CancelRequest {
    /// The session it is for, when it runs here.
    pub target: Option<CancelTarget>,
    /// The key the client gave (`process_id`, `secret_key`).
    pub key: (i32, i32),
    /// Whether another replica relayed it (then it is not passed on).
    pub relayed: bool,
}

/// A client that passed startup and authentication.
pub struct Handshaken {
    /// The socket.
    pub stream: ClientStream,
    /// Who they are.
    pub principal: Principal,
    /// The target they asked for.
    pub target: sluice_config::Target,
    /// Startup parameters to pass to the upstream.
    pub upstream_params: Vec<(String, String)>,
    /// `application_name`, for logs.
    pub application_name: String,
}

/// Run startup and authentication. Refusals are written to the client here.
pub async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    rt: &Runtime,
) -> Result<Opening, SessionError> {
    let (mut stream, first) = negotiate(MaybeTls::Plain(tcp), rt).await?;
    let result = match first {
        StartupPacket::CancelRequest {
            process_id,
            secret_key,
        }
        | StartupPacket::RelayedCancel {
            process_id,
            secret_key,
        } => {
            // The socket is kept until the cancel has reached the upstream:
            // clients (asyncpg, libpq) wait for it to close before going on.
            let request = CancelRequest {
                target: rt.cancels.lookup(process_id, secret_key),
                key: (process_id, secret_key),
                relayed: matches!(first, StartupPacket::RelayedCancel { .. }),
            };
            return Ok(Opening::Cancel(request, stream));
        }
        StartupPacket::Startup(s) => after_startup(&mut stream, s, peer, rt).await,
        _ => Err(SessionError::fatal(
            "08P01",
            "invalid startup packet sequence",
        )),
    };
    match result {
        Ok((principal, target, upstream_params, application_name)) => {
            Ok(Opening::Session(Box::new(Handshaken {
                stream,
                principal,
                target,
                upstream_params,
                application_name,
            })))
        }
        Err(e) => {
            refuse(&mut stream, &e).await;
            Err(e)
        }
    }
}

/// Who the client is. Connections from a load balancer listed in
/// `[listen] proxy_protocol_from` must start with a PROXY protocol header
/// (v1 or v2), whose source address then stands for the client everywhere
/// (plaintext rule, policy, audit trail, logs); a balancer's own
/// connection (`LOCAL`, `UNKNOWN`) keeps its address. Other connections
/// are taken as they are: nobody else can claim an address.
pub async fn client_address(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    rt: &Runtime,
) -> Result<SocketAddr, SessionError> {
    use sluice_wire::proxy_header::{self as header, ProxyHeader};
    let trusted = &rt.config.listen.proxy_protocol_from;
    if !trusted.iter().any(|r| r.contains(peer.ip())) {
        return Ok(peer);
    }
    let refuse = |e: header::ProxyHeaderError| {
        tracing::warn!(%peer, error = %e, "connection from a listed load balancer without a valid PROXY protocol header");
        SessionError::fatal("08P01", format!("sluice: {e}"))
    };
    let mut first = [0u8; 1];
    tcp.read_exact(&mut first).await?;
    let parsed = match header::version(first[0]).map_err(refuse)? {
        1 => {
            // Byte by byte: what follows the line is the client's, not ours.
            let mut line = first.to_vec();
            while !line.ends_with(b"\r\n") {
                if line.len() >= header::V1_MAX {
                    return Err(refuse(header::ProxyHeaderError::Malformed(
                        "a version 1 header is at most 107 bytes",
                    )));
                }
                let mut b = [0u8; 1];
                tcp.read_exact(&mut b).await?;
                line.push(b[0]);
            }
            header::parse_v1(&line)
        }
        _ => {
            let mut fixed = [0u8; header::V2_FIXED];
            fixed[0] = first[0];
            tcp.read_exact(&mut fixed[1..]).await?;
            let mut rest = vec![0u8; header::v2_remaining(&fixed).map_err(refuse)?];
            tcp.read_exact(&mut rest).await?;
            header::parse_v2(&fixed, &rest)
        }
    };
    match parsed.map_err(refuse)? {
        ProxyHeader::Local => Ok(peer),
        ProxyHeader::Proxied { source, .. } => {
            tracing::debug!(balancer = %peer, client = %source, "PROXY protocol header");
            Ok(source)
        }
    }
}

/// Tell the client why, if there is anything to tell, and close.
pub async fn refuse(stream: &mut ClientStream, e: &SessionError) {
    if let SessionError::Refused(err) = e {
        let _ = stream.write_all(&err.encode()).await;
        let _ = stream.flush().await;
    }
    let _ = stream.shutdown().await;
}

/// SSLRequest / GSSENCRequest negotiation, up to the packet that starts the
/// session (or cancels another).
async fn negotiate(
    mut stream: ClientStream,
    rt: &Runtime,
) -> Result<(ClientStream, StartupPacket), SessionError> {
    stream = direct_tls(stream, rt).await?;
    let mut gss_refused = false;
    loop {
        let packet = match read_startup_packet(&mut stream).await {
            Ok(p) => p,
            Err(e) => {
                refuse(&mut stream, &e).await;
                return Err(e);
            }
        };
        match packet {
            StartupPacket::SslRequest if !stream.is_tls() => {
                let MaybeTls::Plain(tcp) = stream else {
                    unreachable!("checked above")
                };
                let mut tcp = tcp;
                tcp.write_all(b"S").await?;
                // read_startup_packet read exactly the request, so nothing the
                // client sent in clear can leak into the TLS session.
                let tls = rt.server_tls.acceptor.accept(tcp).await.map_err(|e| {
                    SessionError::ClientIo(std::io::Error::other(format!("TLS handshake: {e}")))
                })?;
                stream = MaybeTls::Tls(Box::new(tls));
            }
            StartupPacket::GssEncRequest if !gss_refused && !stream.is_tls() => {
                gss_refused = true;
                stream.write_all(b"N").await?;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let e = SessionError::fatal(
                    "08P01",
                    "unexpected encryption request after encryption was negotiated",
                );
                refuse(&mut stream, &e).await;
                return Err(e);
            }
            other => return Ok((stream, other)),
        }
    }
}

/// Direct TLS (`sslnegotiation=direct`, PostgreSQL 17 clients): the first
/// byte is a TLS handshake record instead of a length. As PostgreSQL does,
/// require ALPN `postgresql`, so that a TLS connection meant for another
/// protocol cannot be replayed here.
async fn direct_tls(stream: ClientStream, rt: &Runtime) -> Result<ClientStream, SessionError> {
    const TLS_HANDSHAKE_RECORD: u8 = 0x16;
    let MaybeTls::Plain(tcp) = stream else {
        return Ok(stream);
    };
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 || first[0] != TLS_HANDSHAKE_RECORD {
        return Ok(MaybeTls::Plain(tcp));
    }
    let tls = rt.server_tls.acceptor.accept(tcp).await.map_err(|e| {
        SessionError::ClientIo(std::io::Error::other(format!("direct TLS handshake: {e}")))
    })?;
    if tls.get_ref().1.alpn_protocol() != Some(b"postgresql") {
        let mut stream = MaybeTls::Tls(Box::new(tls));
        let e = SessionError::fatal("08P01", "direct TLS requires ALPN \"postgresql\"");
        refuse(&mut stream, &e).await;
        return Err(e);
    }
    Ok(MaybeTls::Tls(Box::new(tls)))
}

/// Read exactly one startup packet, and not a byte more.
async fn read_startup_packet(stream: &mut ClientStream) -> Result<StartupPacket, SessionError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(SessionError::ClientGone)
        }
        Err(e) => return Err(e.into()),
    }
    let total = startup::peek_len(&len)
        .map_err(|_| SessionError::fatal("08P01", "invalid length of startup packet"))?
        .ok_or(SessionError::ClientGone)?;
    let mut packet = vec![0u8; total];
    packet[..4].copy_from_slice(&len);
    stream
        .read_exact(&mut packet[4..])
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SessionError::ClientGone,
            _ => e.into(),
        })?;
    startup::decode(&packet).map_err(|e| match e {
        WireError::UnsupportedProtocol { major, minor } => SessionError::fatal(
            "0A000",
            format!("unsupported frontend protocol {major}.{minor}: server supports 3.0"),
        ),
        other => SessionError::fatal("08P01", format!("invalid startup packet: {other}")),
    })
}

async fn after_startup(
    stream: &mut ClientStream,
    s: Startup,
    peer: SocketAddr,
    rt: &Runtime,
) -> Result<
    (
        Principal,
        sluice_config::Target,
        Vec<(String, String)>,
        String,
    ),
    SessionError,
> {
    // Newer minor versions and protocol options are answered as PostgreSQL
    // does: "I speak 3.0, and none of these options".
    let unknown: Vec<&str> = s
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if s.minor_version > 0 || !unknown.is_empty() {
        stream
            .write_all(&negotiate_protocol_version::encode(0, &unknown))
            .await?;
    }

    let config = &rt.config;
    let plaintext_ok = match config.listen.plaintext {
        Plaintext::Allow => true,
        Plaintext::Loopback => peer.ip().is_loopback(),
        Plaintext::Deny => false,
    };
    if !stream.is_tls() && !plaintext_ok {
        return Err(SessionError::fatal_hint(
            "28000",
            "sluice: this connection must use TLS",
            "connect with sslmode=require (or verify-full with Sluice's CA)",
        ));
    }
    if let Some(r) = s.param("replication") {
        if !matches!(
            r.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        ) {
            return Err(SessionError::fatal(
                "0A000",
                "sluice: replication connections are not supported through Sluice",
            ));
        }
    }
    let user = s
        .param("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            SessionError::fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
        })?
        .to_owned();
    let database = s
        .param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();

    // Authenticate before saying anything about targets, so that nobody
    // learns which targets exist without signing in.
    let principal = match auth::authenticate(stream, &user, rt).await {
        Ok(p) => p,
        Err(failed) => {
            if let SessionError::Refused(refusal) = &failed.error {
                audit_auth_failure(
                    rt,
                    AuthAttempt {
                        user: &user,
                        method: failed.method,
                        reason: failed.reason,
                        detail: refusal.message().unwrap_or(""),
                    },
                    peer,
                    &database,
                );
            }
            return Err(failed.error);
        }
    };

    let target = config.target(&database).cloned().ok_or_else(|| {
        SessionError::fatal_hint(
            "3D000",
            format!("sluice: database \"{database}\" is not a target of this proxy"),
            "use the target name your administrator gave you as the database name",
        )
    })?;
    let mut params = upstream_params(&s)?;
    let application_name = s.param("application_name").unwrap_or_default().to_owned();

    // Which principals may open which targets: the policy's `connect` action.
    let hour_utc = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() / 3600 % 24) as u8);
    let target_ref = sluice_policy::TargetRef {
        name: &target.name,
        environment: &target.environment,
    };
    if let Err(denied) =
        rt.policy
            .authorize_connect(&principal, &target_ref, &application_name, hour_utc)
    {
        tracing::info!(
            %peer, user = %principal.name, target = %target.name, rule = %denied.rule,
            reason = %denied.reason, "connection refused by policy"
        );
        audit_auth_failure(
            rt,
            AuthAttempt {
                user: &principal.name,
                method: principal.method,
                reason: "policy",
                detail: &format!("connect refused by policy rule {}", denied.rule),
            },
            peer,
            &target.name,
        );
        return Err(SessionError::fatal_hint(
            "42501",
            format!(
                "sluice: {} may not connect to target \"{}\": {} (rule {})",
                principal.name, target.name, denied.reason, denied.rule
            ),
            "ask your administrator for access to this target",
        ));
    }

    // Least privilege at the database: the principal's groups pick the login.
    let mut target = target;
    let (login_user, login_password) = target.login_for(&principal.groups);
    let (login_user, login_password) = (login_user.to_owned(), login_password.cloned());
    target.user = login_user;
    target.password = login_password;

    params.extend(params::identity_settings(&principal));
    Ok((principal, target, params, application_name))
}

/// A sign-in that failed, as the audit trail records it.
struct AuthAttempt<'a> {
    user: &'a str,
    method: &'a str,
    /// The category (see `sluice_audit::AuthFailure::reason`).
    reason: &'a str,
    /// Sluice's own message to the client: never the password or token.
    detail: &'a str,
}

/// Record a failed sign-in (or a refused connection) in the audit trail;
/// the target is the one asked for, known to exist or not.
fn audit_auth_failure(rt: &Runtime, attempt: AuthAttempt<'_>, peer: SocketAddr, database: &str) {
    let target = rt.config.target(database);
    let event = sluice_audit::EventBody::AuthFailure(sluice_audit::AuthFailure {
        user: attempt.user.to_owned(),
        method: attempt.method.to_owned(),
        source: peer.to_string(),
        reason: attempt.reason.to_owned(),
        detail: Some(attempt.detail.to_owned()).filter(|d| !d.is_empty()),
        target: target.map(|t| t.name.clone()),
        environment: target.map(|t| t.environment.clone()),
    });
    if let Err(e) = rt.audit.record(event) {
        tracing::warn!(error = %e, "audit event not recorded");
    }
}
