//! One client connection from accept to close: handshake, upstream login,
//! then two relay loops, one per direction.
//!
//! The loops follow the hot-path rules of DESIGN.md: read into a large
//! buffer, cut out every complete message, forward the whole batch with one
//! write, and decode only what must be looked at. A DataRow or CopyData
//! larger than what has arrived is streamed on as it comes, so a huge value
//! never sits in memory whole.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use sluice_wire::messages::{Authentication, ErrorResponse, Severity};
use sluice_wire::tags::{backend, frontend as tag_in};
use sluice_wire::{peek_header, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend as upstream;
use crate::cancel::CancelTarget;
use crate::error::{SessionError, UpstreamError};
use crate::frontend::{self, Opening};
use crate::guard::{Action, Guard, Refusals};
use crate::server::{ProxyState, Runtime};
use crate::stream::{ReadHalf, WriteHalf};
use crate::Metrics;

/// Read buffer size per direction.
const READ_SIZE: usize = 64 * 1024;
/// Grow the buffer when less than this is free.
const MIN_FREE: usize = 8 * 1024;
/// Largest upstream message Sluice will hold whole (streamed kinds excepted).
const UPSTREAM_HOLD_LIMIT: usize = (1 << 30) + (1 << 20);

/// Serve one accepted connection to the end.
pub async fn run(tcp: tokio::net::TcpStream, peer: SocketAddr, state: &Arc<ProxyState>) {
    let _ = tcp.set_nodelay(true);
    let rt = state.runtime();
    let limits = rt.config.limits;
    let opening = match tokio::time::timeout(
        Duration::from_secs(limits.startup_timeout_secs),
        frontend::handshake(tcp, peer, &rt),
    )
    .await
    {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            Metrics::inc(&rt.metrics.startup_failures_total);
            tracing::debug!(%peer, reason = %e, kind = e.label(), "connection ended during startup");
            return;
        }
        Err(_) => {
            Metrics::inc(&rt.metrics.startup_failures_total);
            tracing::info!(%peer, "startup timed out");
            return;
        }
    };
    match opening {
        Opening::Cancel(target, mut stream) => {
            cancel(target, &rt, peer).await;
            // A clean close (TLS close_notify included) tells the client the
            // cancel has been delivered.
            let _ = stream.shutdown().await;
        }
        Opening::Session(h) => session(*h, peer, &rt, state).await,
    }
}

async fn cancel(target: Option<CancelTarget>, rt: &Runtime, peer: SocketAddr) {
    Metrics::inc(&rt.metrics.cancel_requests_total);
    let Some(target) = target else {
        tracing::info!(%peer, "cancel request with an unknown key ignored");
        return;
    };
    let connector = rt
        .config
        .targets
        .iter()
        .find(|t| t.upstream == target.upstream)
        .and_then(|t| rt.upstream_tls.get(&t.name).cloned().flatten());
    let timeout = Duration::from_secs(rt.config.limits.connect_timeout_secs);
    if let Err(e) = upstream::send_cancel(&target, connector.as_ref(), timeout).await {
        tracing::warn!(%peer, error = %e, "could not forward a cancel request");
    }
}

async fn session(h: frontend::Handshaken, peer: SocketAddr, rt: &Runtime, state: &Arc<ProxyState>) {
    let frontend::Handshaken {
        mut stream,
        principal,
        target,
        upstream_params,
        application_name,
    } = h;
    let connector = rt.upstream_tls.get(&target.name).cloned().flatten();
    let timeout = Duration::from_secs(rt.config.limits.connect_timeout_secs);
    // The whole login, not only the TCP connect, is bounded: an upstream that
    // accepts and then says nothing must not hold the client forever.
    let login = tokio::time::timeout(
        timeout * 2,
        upstream::connect(&target, connector.as_ref(), &upstream_params, timeout),
    )
    .await
    .unwrap_or_else(|_| {
        Err(UpstreamError::Unreachable {
            addr: target.upstream.clone(),
            reason: "the login did not finish in time".into(),
        })
    });
    let up = match login {
        Ok(up) => up,
        Err(e) => {
            Metrics::inc(&rt.metrics.upstream_errors_total);
            Metrics::inc(&rt.metrics.startup_failures_total);
            tracing::warn!(%peer, user = %principal.name, target = %target.name, error = %e, "upstream login failed");
            let (code, what) = match e {
                UpstreamError::Unreachable { .. } => {
                    ("08001", "the upstream database is unreachable")
                }
                UpstreamError::Rejected(_) => {
                    ("08004", "the upstream database refused Sluice's login")
                }
                _ => ("08006", "the connection to the upstream database failed"),
            };
            let err = SessionError::fatal_hint(
                code,
                format!("sluice: target \"{}\" is unavailable: {what}", target.name),
                "try again later; if it persists, ask your administrator (details are in Sluice's log)",
            );
            frontend::refuse(&mut stream, &err).await;
            return;
        }
    };

    let (client_key, _cancel_guard) = rt.cancels.register(CancelTarget {
        upstream: target.upstream.clone(),
        tls: up.stream.is_tls(),
        upstream_key: up.key,
    });

    // The client's AuthenticationOk waits until the upstream accepted us, so
    // a dead upstream is a clean startup error, not a broken session.
    let mut hello = BytesMut::with_capacity(512 + up.greeting.len());
    hello.extend_from_slice(&Authentication::Ok.encode());
    hello.extend_from_slice(&up.greeting);
    hello.extend_from_slice(&client_key.encode());
    hello.extend_from_slice(&up.ready);
    if stream.write_all(&hello).await.is_err() || stream.flush().await.is_err() {
        return;
    }

    let started = Instant::now();
    Metrics::inc(&rt.metrics.sessions_total);
    rt.metrics.sessions_active.fetch_add(1, Relaxed);
    tracing::info!(
        %peer, user = %principal.name, kind = %principal.kind, method = principal.method,
        target = %target.name, environment = %target.environment,
        application_name = %application_name, tls = stream.is_tls(),
        "session started"
    );

    let client_tls = stream.is_tls();
    let (mut client_read, client_write) = stream.split();
    let (mut up_read, mut up_write) = up.stream.split();
    let mut to_client = ClientWriter {
        w: client_write,
        mid_write: false,
    };
    let mut force_close = state.force_close_signal();
    let max = rt.config.limits.max_message_size;
    let metrics = &rt.metrics;

    let mut guard = Guard::new(&rt.policy, &principal, &target, &application_name, metrics);
    let refusals = guard.refusals.clone();
    let marker_prefix = guard.marker_prefix.clone();
    let end = tokio::select! {
        r = client_to_upstream(&mut client_read, &mut up_write, max, metrics, &mut guard) => r,
        r = upstream_to_client(&mut up_read, up.leftover, &mut to_client, metrics, &refusals, &marker_prefix) => r,
        _ = force_close.wait_for(|v| *v) => End::ShuttingDown,
    };

    // Say why, when the client is still there to hear it.
    let goodbye = match &end {
        End::ClientClosed | End::ClientGone(_) | End::UpstreamClosedAfterFatal => None,
        End::ClientViolation(e) => Some(e.clone()),
        End::UpstreamGone(_) => Some(
            ErrorResponse::new(
                Severity::Fatal,
                "08006",
                "sluice: lost the connection to the upstream database",
            )
            .hint("the statement may or may not have run; reconnect and check"),
        ),
        End::UpstreamViolation(why) => Some(ErrorResponse::new(
            Severity::Fatal,
            "08P01",
            format!("sluice: closing the session: {why}"),
        )),
        End::ShuttingDown => Some(ErrorResponse::new(
            Severity::Fatal,
            "57P01",
            "sluice: terminating connection because Sluice is shutting down",
        )),
    };
    if let Some(e) = goodbye {
        if !to_client.mid_write {
            let _ = to_client.w.write_all(&e.encode()).await;
            let _ = to_client.w.flush().await;
        }
    }
    if !matches!(
        end,
        End::UpstreamGone(_) | End::UpstreamClosedAfterFatal | End::ClientClosed
    ) {
        let _ = up_write.write_all(&[tag_in::TERMINATE, 0, 0, 0, 4]).await;
    }
    let _ = up_write.shutdown().await;
    let _ = to_client.w.shutdown().await;

    rt.metrics.sessions_active.fetch_sub(1, Relaxed);
    match &end {
        End::ClientViolation(_) => Metrics::inc(&rt.metrics.protocol_errors_total),
        End::UpstreamGone(_) => Metrics::inc(&rt.metrics.upstream_errors_total),
        _ => {}
    }
    tracing::info!(
        %peer, user = %principal.name, target = %target.name, tls = client_tls,
        duration_ms = started.elapsed().as_millis() as u64, end = %end,
        "session ended"
    );
}

/// Why the relay stopped.
#[derive(Debug)]
enum End {
    /// The client sent Terminate.
    ClientClosed,
    /// The client's socket closed or failed.
    ClientGone(String),
    /// The client broke the protocol; it is told this error.
    ClientViolation(ErrorResponse),
    /// The upstream closed right after a FATAL error it sent (already relayed).
    UpstreamClosedAfterFatal,
    /// The upstream's socket closed or failed unexpectedly.
    UpstreamGone(String),
    /// The upstream did something Sluice must not let through.
    UpstreamViolation(String),
    /// Sluice is shutting down and the drain timeout passed.
    ShuttingDown,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed => f.write_str("client terminated"),
            End::ClientGone(e) => write!(f, "client disconnected: {e}"),
            End::ClientViolation(e) => write!(
                f,
                "client protocol violation: {}",
                e.message().unwrap_or("")
            ),
            End::UpstreamClosedAfterFatal => f.write_str("upstream ended the session"),
            End::UpstreamGone(e) => write!(f, "upstream lost: {e}"),
            End::UpstreamViolation(e) => write!(f, "upstream violation: {e}"),
            End::ShuttingDown => f.write_str("shutdown"),
        }
    }
}

struct ClientWriter {
    w: WriteHalf,
    /// True while a batch is partly written: then nothing else may be
    /// written, or the client would read a message cut in two.
    mid_write: bool,
}

fn violation(code: &str, message: String) -> End {
    End::ClientViolation(ErrorResponse::new(Severity::Fatal, code, message))
}

/// Client → upstream.
async fn client_to_upstream(
    r: &mut ReadHalf,
    w: &mut WriteHalf,
    max: usize,
    metrics: &Metrics,
    guard: &mut Guard<'_>,
) -> End {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    // Bytes of a CopyData message still to stream through.
    let mut streaming = 0usize;
    loop {
        let mut ready = 0usize;
        let mut terminate = false;
        loop {
            if streaming > 0 {
                if pass_streamed(&mut streaming, &mut ready, buf.len()) {
                    continue;
                }
                break;
            }
            let header = match peek_header(&buf[ready..], max) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(WireError::TooLarge { len, limit }) => {
                    return violation(
                        "54000",
                        format!("sluice: message of {len} bytes exceeds the limit of {limit} bytes (limits.max_message_size)"),
                    )
                }
                Err(e) => return violation("08P01", format!("sluice: invalid message: {e}")),
            };
            if !tag_in::is_valid(header.tag) {
                return violation(
                    "08P01",
                    format!(
                        "sluice: invalid frontend message type {:?}",
                        header.tag as char
                    ),
                );
            }
            let available = buf.len() - ready;
            if available >= header.total_len {
                if matches!(
                    header.tag,
                    tag_in::QUERY | tag_in::PARSE | tag_in::FUNCTION_CALL
                ) {
                    let msg = &buf[ready..ready + header.total_len];
                    if let Action::Replace(replacement) = guard.inspect(header.tag, msg) {
                        // What came before goes as it is; the refused message
                        // is swapped for its marker.
                        let before = buf.split_to(ready);
                        buf.advance(header.total_len);
                        ready = 0;
                        if let Err(e) = write_all2(w, &before, &replacement).await {
                            return End::UpstreamGone(e.to_string());
                        }
                        continue;
                    }
                }
                ready += header.total_len;
                if header.tag == tag_in::TERMINATE {
                    terminate = true;
                    break;
                }
            } else if header.tag == tag_in::COPY_DATA {
                ready += available;
                streaming = header.total_len - available;
                break;
            } else {
                buf.reserve(header.total_len - available);
                break;
            }
        }
        if ready > 0 {
            let batch = buf.split_to(ready);
            if let Err(e) = write_flush(w, &batch).await {
                return End::UpstreamGone(e.to_string());
            }
            metrics.client_bytes_total.fetch_add(ready as u64, Relaxed);
        }
        if terminate {
            return End::ClientClosed;
        }
        if buf.capacity() - buf.len() < MIN_FREE {
            buf.reserve(READ_SIZE);
        }
        match r.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() && streaming == 0 => return End::ClientGone("closed".into()),
            Ok(0) => return End::ClientGone("closed inside a message".into()),
            Ok(_) => {}
            Err(e) => return End::ClientGone(e.to_string()),
        }
    }
}

/// Upstream → client.
async fn upstream_to_client(
    r: &mut ReadHalf,
    mut buf: BytesMut,
    to_client: &mut ClientWriter,
    metrics: &Metrics,
    refusals: &Refusals,
    marker_prefix: &str,
) -> End {
    if buf.capacity() < READ_SIZE {
        buf.reserve(READ_SIZE);
    }
    let mut streaming = 0usize;
    let mut saw_fatal = false;
    loop {
        let mut ready = 0usize;
        let mut violation: Option<String> = None;
        loop {
            if streaming > 0 {
                if pass_streamed(&mut streaming, &mut ready, buf.len()) {
                    continue;
                }
                break;
            }
            let header = match peek_header(&buf[ready..], usize::MAX) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    return End::UpstreamViolation(format!("invalid message from upstream: {e}"))
                }
            };
            let available = buf.len() - ready;
            if available < header.total_len {
                if matches!(header.tag, backend::DATA_ROW | backend::COPY_DATA) {
                    ready += available;
                    streaming = header.total_len - available;
                } else if header.total_len > UPSTREAM_HOLD_LIMIT {
                    return End::UpstreamViolation(format!(
                        "upstream message of {} bytes",
                        header.total_len
                    ));
                } else {
                    buf.reserve(header.total_len - available);
                }
                break;
            }
            let body = &buf[ready + 5..ready + header.total_len];
            match header.tag {
                backend::ERROR_RESPONSE => {
                    if let Ok(e) = ErrorResponse::decode(body) {
                        saw_fatal |=
                            matches!(e.field(b'V').or(e.field(b'S')), Some("FATAL" | "PANIC"));
                        let refusal = e.message().and_then(|m| refusals.take(marker_prefix, m));
                        if let Some(refusal) = refusal {
                            // The server rejected a marker: tell the client why.
                            let before = buf.split_to(ready);
                            buf.advance(header.total_len);
                            ready = 0;
                            to_client.mid_write = true;
                            if let Err(e) = write_all2(&mut to_client.w, &before, &refusal).await {
                                return End::ClientGone(e.to_string());
                            }
                            to_client.mid_write = false;
                            continue;
                        }
                    }
                }
                backend::PARAMETER_STATUS => {
                    if let Ok(("client_encoding", value)) =
                        sluice_wire::messages::parameter_status::decode(body)
                    {
                        if !crate::frontend::params::encoding_allowed(value) {
                            violation = Some(format!(
                                "client_encoding was changed to \"{value}\", which Sluice does not support; use UTF8"
                            ));
                            break;
                        }
                    }
                }
                _ => {}
            }
            ready += header.total_len;
        }
        if let Some(why) = violation {
            // Forward what came before, then stop: later statements would be
            // read by the server in an encoding Sluice does not parse.
            if ready > 0 {
                let batch = buf.split_to(ready);
                to_client.mid_write = true;
                if write_flush(&mut to_client.w, &batch).await.is_err() {
                    return End::ClientGone("write failed".into());
                }
                to_client.mid_write = false;
            }
            return End::UpstreamViolation(why);
        }
        if ready > 0 {
            let batch = buf.split_to(ready);
            to_client.mid_write = true;
            if let Err(e) = write_flush(&mut to_client.w, &batch).await {
                return End::ClientGone(e.to_string());
            }
            to_client.mid_write = streaming > 0;
            metrics
                .upstream_bytes_total
                .fetch_add(ready as u64, Relaxed);
        }
        if buf.capacity() - buf.len() < MIN_FREE {
            buf.reserve(READ_SIZE);
        }
        match r.read_buf(&mut buf).await {
            Ok(0) if saw_fatal && buf.is_empty() => return End::UpstreamClosedAfterFatal,
            Ok(0) => return End::UpstreamGone("closed".into()),
            Ok(_) => {}
            Err(e) => return End::UpstreamGone(e.to_string()),
        }
    }
}

/// Count the bytes of a message being streamed through that have arrived.
/// True when the message is complete and the next one can be read.
fn pass_streamed(streaming: &mut usize, ready: &mut usize, buffered: usize) -> bool {
    let n = (*streaming).min(buffered - *ready);
    *ready += n;
    *streaming -= n;
    *streaming == 0
}

async fn write_all2(w: &mut WriteHalf, first: &[u8], second: &[u8]) -> std::io::Result<()> {
    w.write_all(first).await?;
    w.write_all(second).await?;
    w.flush().await
}

async fn write_flush(w: &mut WriteHalf, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}
