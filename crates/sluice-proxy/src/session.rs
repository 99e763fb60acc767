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

use bytes::{Buf, Bytes, BytesMut};
use sluice_wire::messages::{Authentication, ErrorResponse, Severity};
use sluice_wire::tags::{backend, frontend as tag_in};
use sluice_wire::{peek_header, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::audit::SessionAudit;
use crate::backend as upstream;
use crate::cancel::CancelTarget;
use crate::catalog::Missing;
use crate::copy_probe;
use crate::error::{SessionError, UpstreamError};
use crate::flight::{Disposition, Flight, Progress, Tracker};
use crate::frontend::{self, Opening};
use crate::guard::{Guard, Refusals};
use crate::masking::{CannotStream, CopyMasker, Masking, RowOutcome, StreamingRow, HOLD_ROW_LIMIT};
use crate::rows_guard::{self, GuardError};
use crate::server::{ProxyState, Runtime};
use crate::statements::{Statements, Step};
use crate::stream::{ReadHalf, WriteHalf};
use crate::Metrics;

/// Read buffer size per direction.
const READ_SIZE: usize = 64 * 1024;
/// Grow the buffer when less than this is free.
const MIN_FREE: usize = 8 * 1024;
/// Largest upstream message Sluice will hold whole (streamed kinds excepted).
const UPSTREAM_HOLD_LIMIT: usize = (1 << 30) + (1 << 20);

/// Serve one accepted connection to the end.
pub async fn run(mut tcp: tokio::net::TcpStream, peer: SocketAddr, state: &Arc<ProxyState>) {
    let _ = tcp.set_nodelay(true);
    let rt = state.runtime();
    let limits = rt.config.limits;
    let opening = match tokio::time::timeout(
        Duration::from_secs(limits.startup_timeout_secs),
        async {
            let peer = frontend::client_address(&mut tcp, peer, &rt).await?;
            frontend::handshake(tcp, peer, &rt).await.map(|o| (peer, o))
        },
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
    let (peer, opening) = opening;
    match opening {
        Opening::Cancel(request, mut stream) => {
            cancel(request, &rt, peer).await;
            // A clean close (TLS close_notify included) tells the client the
            // cancel has been delivered.
            let _ = stream.shutdown().await;
        }
        Opening::Session(h) => session(*h, peer, &rt, state).await,
    }
}

async fn cancel(request: frontend::CancelRequest, rt: &Runtime, peer: SocketAddr) {
    Metrics::inc(&rt.metrics.cancel_requests_total);
    let Some(target) = request.target else {
        let peers = &rt.config.listen.cancel_peers;
        if request.relayed || peers.is_empty() {
            tracing::info!(%peer, "cancel request with an unknown key ignored");
        } else {
            // The session may run on another replica (the balancer sent
            // the cancel elsewhere): each is asked, the one that has it acts.
            let timeout = Duration::from_secs(rt.config.limits.connect_timeout_secs);
            let (process_id, secret_key) = request.key;
            let relays: Vec<_> = peers
                .iter()
                .cloned()
                .map(|to| {
                    tokio::spawn(async move {
                        if let Err(e) =
                            upstream::relay_cancel(&to, process_id, secret_key, timeout).await
                        {
                            tracing::warn!(%peer, replica = %to, error = %e, "could not pass a cancel request on");
                        }
                    })
                })
                .collect();
            for relay in relays {
                let _ = relay.await;
            }
        }
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
    let mut up = match login {
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

    // Sluice parses with standard_conforming_strings on; a server that reads
    // '\'' differently (set by ALTER DATABASE/ROLE … SET) would run what
    // Sluice took for a string literal.
    if let Some(value) = frontend::params::nonstandard_strings(&up.server_params) {
        tracing::warn!(%peer, user = %principal.name, target = %target.name, value, "upstream session reads strings non-standardly; refused");
        let err = SessionError::fatal_hint(
            "42501",
            format!("sluice: target \"{}\" starts sessions with standard_conforming_strings = {value}, which Sluice does not support", target.name),
            "ask your administrator to reset standard_conforming_strings for this database and role",
        );
        frontend::refuse(&mut stream, &err).await;
        return;
    }

    // The search_path the session really starts with: the role's and the
    // database's defaults (`ALTER ROLE … SET search_path`, set outside
    // Sluice) apply as well as the client's. Unqualified table names are
    // judged against it.
    let server_search_path = if rt.config.policy.enabled {
        match crate::catalog::simple_query(
            &mut up,
            "SELECT pg_catalog.current_setting('search_path')",
        )
        .await
        {
            Ok(rows) => rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .map(|v| sluice_sql::split_search_path(&v)),
            Err(e) => {
                tracing::debug!(target = %target.name, error = %e, "could not read the session's search_path");
                None
            }
        }
    } else {
        None
    };

    let (client_key, _cancel_guard) = rt.cancels.register(CancelTarget {
        upstream: target.upstream.clone(),
        tls: up.stream.is_tls(),
        upstream_key: up.key,
    });

    // Under fail_closed, no session starts that the audit trail cannot record.
    if rt.audit.check().is_err() {
        rt.audit.note_refused();
        let err = SessionError::fatal_hint(
            "53000",
            "sluice: refused because the audit trail cannot record new sessions (its spool is full or failing)",
            "try again later; the administrator is alerted by sluice_audit_refused_total",
        );
        frontend::refuse(&mut stream, &err).await;
        return;
    }

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
        %peer, user = ?principal.name, kind = %principal.kind, method = principal.method,
        target = %target.name, environment = %target.environment,
        application_name = ?application_name, tls = stream.is_tls(),
        "session started"
    );

    let client_tls = stream.is_tls();
    let tls_info = match &stream {
        crate::stream::MaybeTls::Tls(t) => {
            let conn = t.get_ref().1;
            Some((
                conn.protocol_version()
                    .map(|v| format!("{v:?}").replace('_', "."))
                    .unwrap_or_default(),
                conn.negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default(),
            ))
        }
        crate::stream::MaybeTls::Plain(_) => None,
    };
    let audit = Arc::new({
        let mut a = SessionAudit::new(rt.audit.clone(), &principal, &target);
        a.metrics = Some(rt.metrics.clone());
        a.tracer = state.tracer.clone();
        a
    });
    audit.started(&principal, peer, &application_name, tls_info);
    let registered = state.register_session(crate::server::SessionInfo {
        id: audit.session.to_string(),
        principal: principal.name.clone(),
        kind: principal.kind.as_str().to_owned(),
        on_behalf_of: principal.on_behalf_of.clone(),
        target: target.name.clone(),
        environment: target.environment.clone(),
        client: peer.to_string(),
        application_name: application_name.clone(),
        tls: client_tls,
        started_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    });
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
    guard.enabled = rt.config.policy.enabled;
    guard.shared = Some(rt.analyses.clone());
    guard.max_statement_size = rt.config.limits.max_statement_size;
    guard.client_address = peer.ip().to_string();
    guard.upstream_user = target.user.clone();
    let start_path = frontend::params::startup_search_path(&upstream_params)
        .map(|v| sluice_sql::split_search_path(&v))
        .unwrap_or_else(sluice_sql::default_search_path);
    let upstream_user = guard.upstream_user.clone();
    guard.widen_search_path(&start_path, &upstream_user);
    if let Some(path) = &server_search_path {
        guard.widen_search_path(path, &upstream_user);
    }
    let refusals = guard.refusals.clone();
    let marker_prefix = guard.marker_prefix.clone();
    let mut statements = Statements::new(guard, target.max_rows_affected);
    statements.audit = Some(audit.clone());
    statements.log_literals = rt.config.audit.log_literals;
    statements.tracing = state.tracer.is_some();
    statements.refuse_unmaskable = rt.config.masking.refuse_unmaskable;
    let flight = statements.flight.clone();
    // Results are masked unless masking is off or policy lets this principal
    // see them whole; with column rules, plans ask per column (masking.rs).
    let (unmasked, column_unmask) = match rt.policy.unmask_for(
        &principal,
        &sluice_policy::TargetRef {
            name: &target.name,
            environment: &target.environment,
        },
    ) {
        sluice_policy::Unmask::Nothing => (false, None),
        sluice_policy::Unmask::Everything => (true, None),
        sluice_policy::Unmask::Columns(c) => (false, Some(c)),
    };
    let catalog = rt.catalogs.get(&target.name).cloned().unwrap_or_default();
    // DDL from any session makes the target's cached column names stale.
    statements.catalog = Some(catalog.clone());
    // Catalog lookups log in as the target's own user, not a group's login.
    let catalog_target = rt.config.target(&target.name).unwrap_or(&target);
    let access = || CatalogAccess {
        catalog: catalog.clone(),
        target: catalog_target,
        connector: connector.as_ref(),
        timeout,
        unmask: column_unmask.clone(),
    };
    let copy_ctx = match (&rt.masker, unmasked) {
        (Some(masker), false) => Some((masker.clone(), access())),
        _ => None,
    };
    let masking = match (&rt.masker, unmasked) {
        (Some(masker), false) => {
            statements.masking = true;
            statements.catalog = Some(catalog.clone());
            let mut m = Masking::new(masker.clone(), catalog.clone());
            m.refuse_unmaskable = rt.config.masking.refuse_unmaskable;
            m.unmask = column_unmask.clone();
            Some((m, access()))
        }
        _ => None,
    };
    let (masking, lookup) = match masking {
        Some((m, l)) => (Some(m), Some(l)),
        None => (None, None),
    };
    let (notice_tx, notice_rx) = tokio::sync::mpsc::channel(8);
    let mut walk = UpstreamWalk::new(&refusals, &marker_prefix, masking, audit.clone());
    walk.notices = Some(notice_rx);
    statements.approvals = true;
    let client_context = ClientContext {
        environment: &target.environment,
        copy: copy_ctx,
        approvals: crate::approval::ApprovalContext {
            store: rt.approvals.clone(),
            config: &rt.config.approvals,
            principal: &principal,
            target: &target.name,
            environment: &target.environment,
            notices: notice_tx,
            metrics: rt.metrics.clone(),
        },
    };
    let end = tokio::select! {
        r = client_to_upstream(&mut client_read, &mut up_write, max, metrics, &mut statements, &client_context) => r,
        r = upstream_to_client(&mut up_read, up.leftover, &mut to_client, metrics, &flight, walk, lookup) => r,
        _ = force_close.wait_for(|v| *v) => End::ShuttingDown,
        _ = registered.kill.notified() => End::Killed,
    };
    drop(registered);

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
        End::Killed => Some(ErrorResponse::new(
            Severity::Fatal,
            "57P01",
            "sluice: terminating connection: an administrator ended this session",
        )),
        End::TokenExpired => Some(
            ErrorResponse::new(Severity::Fatal, "28000", sluice_identity::EXPIRED_MESSAGE)
                .hint("your identity provider's token for this session is no longer valid"),
        ),
        End::CannotMask(why) => Some(
            ErrorResponse::new(
                Severity::Fatal,
                "XX000",
                format!("sluice: closing the session: a result could not be masked ({why}), so it was not sent"),
            )
            .hint("try again; if it persists, ask your administrator (details are in Sluice's log)"),
        ),
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
    audit.ended(end.to_string(), started.elapsed().as_millis() as u64);
}

/// What the client-to-upstream loop needs besides its sockets.
struct ClientContext<'a> {
    environment: &'a str,
    /// Masking of COPY data (masker and catalog), when this session masks.
    copy: Option<(Arc<sluice_mask::Masker>, CatalogAccess<'a>)>,
    approvals: crate::approval::ApprovalContext<'a>,
}

/// Where to look up the columns of a result.
pub struct CatalogAccess<'a> {
    /// The target's cache.
    pub catalog: Arc<crate::catalog::Catalog>,
    /// The target.
    pub target: &'a sluice_config::Target,
    /// Its TLS connector.
    pub connector: Option<&'a tokio_rustls::TlsConnector>,
    /// Connect timeout.
    pub timeout: Duration,
    /// Columns the session sees unmasked (plans made here honour them).
    pub unmask: Option<Arc<sluice_policy::ColumnUnmask>>,
}

/// Why the relay stopped.
#[derive(Debug)]
enum End {
    /// A result could not be masked; it was not sent.
    CannotMask(String),
    /// The caller's token expired.
    TokenExpired,
    /// An administrator ended the session.
    Killed,
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
            End::CannotMask(e) => write!(f, "cannot mask a result: {e}"),
            End::TokenExpired => f.write_str("token expired"),
            End::Killed => f.write_str("ended by an administrator"),
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
    st: &mut Statements<'_>,
    cx: &ClientContext<'_>,
) -> End {
    let (environment, copy_ctx, approvals) = (cx.environment, &cx.copy, &cx.approvals);
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
                let msg = &buf[ready..ready + header.total_len];
                match st.on_message(header.tag, msg) {
                    Step::Forward => {}
                    Step::Malformed(what) => {
                        // What Sluice cannot read, it cannot judge: never
                        // forward it (on a SQL_ASCII database the server
                        // would accept a name that is not UTF-8).
                        return violation(
                            "08P01",
                            format!("sluice: malformed {what} message (or one that is not UTF-8)"),
                        );
                    }
                    Step::Expired => {
                        // What came before goes on; then the session ends.
                        let before = buf.split_to(ready);
                        st.commit();
                        if !before.is_empty() && write_flush(w, &before).await.is_err() {
                            return End::UpstreamGone("write failed".into());
                        }
                        return End::TokenExpired;
                    }
                    Step::Prefix(first) => {
                        // Sluice's message goes just before the client's.
                        let before = buf.split_to(ready);
                        ready = 0;
                        st.commit();
                        if let Err(e) = write_all2(w, &before, &first).await {
                            return End::UpstreamGone(e.to_string());
                        }
                    }
                    Step::Replace(replacement) => {
                        // What came before goes as it is; the refused message
                        // is swapped for its marker.
                        let before = buf.split_to(ready);
                        buf.advance(header.total_len);
                        ready = 0;
                        st.commit();
                        if let Err(e) = write_all2(w, &before, &replacement).await {
                            return End::UpstreamGone(e.to_string());
                        }
                        continue;
                    }
                    Step::Approval(step) => {
                        let before = buf.split_to(ready);
                        let msg = buf.split_to(header.total_len).freeze();
                        ready = 0;
                        st.commit();
                        if !before.is_empty() {
                            if let Err(e) = write_flush(w, &before).await {
                                return End::UpstreamGone(e.to_string());
                            }
                        }
                        match crate::approval::run(w, st, msg, step, approvals).await {
                            Ok(()) => continue,
                            Err(GuardError::Upstream(e)) => {
                                return End::UpstreamGone(e.to_string())
                            }
                            Err(GuardError::Gone) => return End::UpstreamGone("closed".into()),
                        }
                    }
                    Step::CopyOutParse(name, copy) => {
                        let before = buf.split_to(ready);
                        let msg = buf.split_to(header.total_len).freeze();
                        ready = 0;
                        st.commit();
                        if !before.is_empty() {
                            if let Err(e) = write_flush(w, &before).await {
                                return End::UpstreamGone(e.to_string());
                            }
                        }
                        let Some((masker, lookup)) = &copy_ctx else {
                            return End::CannotMask("COPY masking without a masker".into());
                        };
                        match copy_probe::run_parse(w, st, msg, name, &copy, masker, lookup).await {
                            Ok(()) => continue,
                            Err(GuardError::Upstream(e)) => {
                                return End::UpstreamGone(e.to_string())
                            }
                            Err(GuardError::Gone) => return End::UpstreamGone("closed".into()),
                        }
                    }
                    Step::CopyOut(copy) => {
                        let before = buf.split_to(ready);
                        let msg = buf.split_to(header.total_len).freeze();
                        ready = 0;
                        st.commit();
                        if !before.is_empty() {
                            if let Err(e) = write_flush(w, &before).await {
                                return End::UpstreamGone(e.to_string());
                            }
                        }
                        let Some((masker, lookup)) = &copy_ctx else {
                            return End::CannotMask("COPY masking without a masker".into());
                        };
                        match copy_probe::run(w, st, msg, &copy, masker, lookup).await {
                            Ok(()) => continue,
                            Err(GuardError::Upstream(e)) => {
                                return End::UpstreamGone(e.to_string())
                            }
                            Err(GuardError::Gone) => return End::UpstreamGone("closed".into()),
                        }
                    }
                    step @ (Step::GuardedQuery | Step::GuardedExecute) => {
                        let before = buf.split_to(ready);
                        let msg = match st.take_prefix() {
                            Some(first) => {
                                let mut m = BytesMut::from(&first[..]);
                                m.extend_from_slice(&buf.split_to(header.total_len));
                                m.freeze()
                            }
                            None => buf.split_to(header.total_len).freeze(),
                        };
                        ready = 0;
                        st.commit();
                        if !before.is_empty() {
                            if let Err(e) = write_flush(w, &before).await {
                                return End::UpstreamGone(e.to_string());
                            }
                        }
                        let run = if matches!(step, Step::GuardedQuery) {
                            rows_guard::run_query(w, st, msg, environment).await
                        } else {
                            rows_guard::run_execute(w, st, msg, environment).await
                        };
                        match run {
                            Ok(()) => continue,
                            Err(GuardError::Upstream(e)) => {
                                return End::UpstreamGone(e.to_string())
                            }
                            Err(GuardError::Gone) => return End::UpstreamGone("closed".into()),
                        }
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
            st.commit();
            let batch = buf.split_to(ready);
            if let Err(e) = write_flush(w, &batch).await {
                return End::UpstreamGone(e.to_string());
            }
            metrics.client_bytes_total.fetch_add(ready as u64, Relaxed);
            if let Some(a) = &st.audit {
                a.totals.bytes_from_client.fetch_add(ready as u64, Relaxed);
            }
        }
        if terminate {
            return End::ClientClosed;
        }
        // Backpressure: while the audit writer is behind, new statements wait.
        if let Some(a) = &st.audit {
            if !a.wait_for_room(Duration::from_secs(10)).await {
                tracing::warn!(
                    "the audit writer is behind; statements will be refused until it catches up"
                );
            }
        }
        match read_some(r, &mut buf).await {
            Ok(0) if buf.is_empty() && streaming == 0 => return End::ClientGone("closed".into()),
            Ok(0) => return End::ClientGone("closed inside a message".into()),
            Ok(_) => {}
            Err(e) => return End::ClientGone(e.to_string()),
        }
    }
}

/// What one pass over the upstream's buffered bytes found.
enum Walked {
    /// Go on reading.
    More,
    /// The upstream did something the session must end for.
    Violation(String),
    /// A result's columns must be looked up in the catalog before it can go on.
    Catalog(Missing),
    /// A result cannot be masked: the session ends rather than send it.
    CannotMask(String),
}

/// Upstream state the walk keeps between reads.
struct UpstreamWalk<'a> {
    refusals: &'a Refusals,
    marker_prefix: &'a str,
    progress: Progress,
    /// Bytes of a DataRow or CopyData still to stream through.
    streaming: usize,
    /// Whether those bytes are kept from the client.
    streaming_swallowed: bool,
    saw_fatal: bool,
    /// Masking of results (`None`: not masked for this session).
    masking: Option<Masking>,
    /// A DataRow too large to hold, streamed with length-preserving masking.
    masked_row: Option<StreamingRow>,
    /// The COPY whose data is being masked.
    copy: Option<CopyMasker>,
    /// The session's audit record.
    audit: Arc<SessionAudit>,
    /// Bytes of a CopyData too large to hold still to feed the COPY masker.
    copy_left: usize,
    /// A result is being refused (a value could not be masked): its rows
    /// are dropped and this error replaces its completion.
    refusing: Option<Bytes>,
    /// Notices Sluice sends the client itself (approval requests).
    notices: Option<tokio::sync::mpsc::Receiver<Bytes>>,
    /// Masked rows written one after another, sent as one buffer rather
    /// than one allocation per row.
    assembled: BytesMut,
}

impl<'a> UpstreamWalk<'a> {
    fn new(
        refusals: &'a Refusals,
        marker_prefix: &'a str,
        masking: Option<Masking>,
        audit: Arc<SessionAudit>,
    ) -> Self {
        UpstreamWalk {
            refusals,
            marker_prefix,
            progress: Progress::default(),
            streaming: 0,
            streaming_swallowed: false,
            saw_fatal: false,
            masking,
            masked_row: None,
            copy: None,
            copy_left: 0,
            audit,
            refusing: None,
            notices: None,
            assembled: BytesMut::new(),
        }
    }

    /// Write the audit records of statements whose answers completed.
    fn audit_finished(&mut self, tracker: &mut Tracker<'_>) {
        for f in tracker.take_finished() {
            let report = self
                .masking
                .as_mut()
                .map(|m| std::mem::take(&mut m.report))
                .unwrap_or_default();
            self.audit.finished(&f.audit, f.outcome, &report);
        }
    }

    /// Cut every complete message out of `buf` into `out` (the bytes for the
    /// client, in order), consulting the flight queue once for the batch.
    fn walk(
        &mut self,
        buf: &mut BytesMut,
        tracker: &mut Tracker<'_>,
        out: &mut Vec<Bytes>,
    ) -> Walked {
        let mut ready = 0usize;
        let walked = loop {
            if let (Some(row), Some(masking)) = (&mut self.masked_row, &mut self.masking) {
                take_run(buf, &mut ready, &mut self.assembled, out);
                let n = row.remaining().min(buf.len());
                let chunk = buf.split_to(n);
                let mut masked = Vec::with_capacity(n);
                if let Err(CannotStream(why)) = row.push(masking, &chunk, &mut masked) {
                    break Walked::CannotMask(why);
                }
                out.push(Bytes::from(masked));
                if row.remaining() > 0 {
                    break Walked::More;
                }
                self.masked_row = None;
                continue;
            }
            if self.copy_left > 0 {
                let (Some(copy), Some(masking)) = (&mut self.copy, &mut self.masking) else {
                    break Walked::CannotMask("COPY data without a plan".into());
                };
                take_run(buf, &mut ready, &mut self.assembled, out);
                let n = self.copy_left.min(buf.len());
                self.copy_left -= n;
                let masked = copy.data(masking, &buf[..n], &mut self.assembled);
                buf.advance(n);
                if let Err(why) = masked {
                    break Walked::CannotMask(why);
                }
                if self.copy_left > 0 {
                    break Walked::More;
                }
                continue;
            }
            if self.streaming > 0 {
                let n = self.streaming.min(buf.len() - ready);
                self.streaming -= n;
                if self.streaming_swallowed {
                    take_run(buf, &mut ready, &mut self.assembled, out);
                    buf.advance(n);
                } else {
                    ready += n;
                }
                if self.streaming == 0 {
                    continue;
                }
                break Walked::More;
            }
            let header = match peek_header(&buf[ready..], usize::MAX) {
                Ok(Some(h)) => h,
                Ok(None) => break Walked::More,
                Err(e) => break Walked::Violation(format!("invalid message from upstream: {e}")),
            };
            let available = buf.len() - ready;
            if header.tag == backend::COPY_DATA && self.copy.is_some() {
                let (Some(copy), Some(masking)) = (&mut self.copy, &mut self.masking) else {
                    break Walked::CannotMask("COPY data without a plan".into());
                };
                if available < header.total_len && header.total_len <= HOLD_ROW_LIMIT {
                    buf.reserve(header.total_len - available);
                    break Walked::More;
                }
                // The upstream's CopyData is replaced by masked CopyData.
                tracker.on_message(header.tag, &[], &mut self.progress);
                self.progress.bytes += header.total_len as u64;
                if ready > 0 {
                    take_run(buf, &mut ready, &mut self.assembled, out);
                }
                buf.advance(5);
                let n = (header.total_len - 5).min(buf.len());
                self.copy_left = header.total_len - 5 - n;
                let masked = copy.data(masking, &buf[..n], &mut self.assembled);
                buf.advance(n);
                if let Err(why) = masked {
                    break Walked::CannotMask(why);
                }
                if self.copy_left > 0 {
                    break Walked::More;
                }
                continue;
            }
            // The masking plan of a row, when this session masks.
            let mut row_plan = None;
            if header.tag == backend::DATA_ROW && self.masking.is_some() {
                match tracker.row_plan(&mut self.progress) {
                    Some(plan) => row_plan = Some(plan).filter(|p| p.active),
                    // Rows whose columns are unknown cannot be masked.
                    None => {
                        break Walked::CannotMask(
                            "a result arrived whose columns are unknown".into(),
                        )
                    }
                }
            }
            if let (Some(plan), true) = (&row_plan, available < header.total_len) {
                if header.total_len <= HOLD_ROW_LIMIT {
                    // Wait for the whole row: it is masked as one.
                    buf.reserve(header.total_len - available);
                    break Walked::More;
                }
                // Too large to hold: stream it with length-preserving masking.
                let Some(masking) = self.masking.as_mut() else {
                    break Walked::More;
                };
                tracker.on_message(header.tag, &[], &mut self.progress);
                self.progress.bytes += header.total_len as u64;
                take_run(buf, &mut ready, &mut self.assembled, out);
                let mut row = masking.stream(plan.clone(), header.total_len);
                let chunk = buf.split_to(available);
                let mut masked = Vec::with_capacity(available);
                if let Err(CannotStream(why)) = row.push(masking, &chunk, &mut masked) {
                    break Walked::CannotMask(why);
                }
                out.push(Bytes::from(masked));
                self.masked_row = Some(row);
                break Walked::More;
            }
            if header.tag == backend::ROW_DESCRIPTION && available >= header.total_len {
                if let Some(masking) = self.masking.as_mut() {
                    let body = &buf[ready + 5..ready + header.total_len];
                    match masking.plan(body, tracker.result_sources(&self.progress)) {
                        Ok(plan) => tracker.on_row_description(plan, &mut self.progress),
                        // Not consumed: handled again once the names are known.
                        Err(missing) => break Walked::Catalog(missing),
                    }
                }
            }
            if available < header.total_len {
                if matches!(header.tag, backend::DATA_ROW | backend::COPY_DATA) {
                    // Too big to wait for: stream it through as it comes.
                    let d = tracker.on_message(header.tag, &[], &mut self.progress);
                    self.progress.bytes += header.total_len as u64;
                    self.streaming = header.total_len - available;
                    self.streaming_swallowed = d == Disposition::Swallow;
                    if self.streaming_swallowed {
                        take_run(buf, &mut ready, &mut self.assembled, out);
                        buf.advance(available);
                    } else {
                        ready += available;
                    }
                } else if header.total_len > UPSTREAM_HOLD_LIMIT {
                    break Walked::Violation(format!(
                        "upstream message of {} bytes",
                        header.total_len
                    ));
                } else {
                    buf.reserve(header.total_len - available);
                }
                break Walked::More;
            }
            if let Some(masking) = self.masking.as_mut() {
                match header.tag {
                    backend::COPY_OUT_RESPONSE => match tracker.copy_plan() {
                        Some(plan) => self.copy = Some(CopyMasker::new(plan)),
                        None => {
                            break Walked::CannotMask(
                                "COPY data arrived whose columns are unknown".into(),
                            )
                        }
                    },
                    backend::COPY_DONE => {
                        if let Some(mut copy) = self.copy.take() {
                            take_run(buf, &mut ready, &mut self.assembled, out);
                            if let Err(why) = copy.done(masking, &mut self.assembled) {
                                break Walked::CannotMask(why);
                            }
                        }
                    }
                    backend::ERROR_RESPONSE | backend::COMMAND_COMPLETE => self.copy = None,
                    _ => {}
                }
            }
            let body = &buf[ready + 5..ready + header.total_len];
            let mut disposition = tracker.on_message(header.tag, body, &mut self.progress);
            // the row was masked: the masked row replaces it
            let mut masked = false;
            if matches!(header.tag, backend::DATA_ROW | backend::COPY_DATA) {
                self.progress.bytes += header.total_len as u64;
            }
            self.audit_finished(tracker);
            if let (Some(plan), Some(masking), Disposition::Forward) =
                (&row_plan, self.masking.as_mut(), &disposition)
            {
                match masking.row(plan, body) {
                    RowOutcome::Unchanged => {}
                    RowOutcome::Rewritten => masked = true,
                    RowOutcome::Refuse(column) => {
                        self.refusing = Some(
                            ErrorResponse::new(
                                Severity::Error,
                                "42501",
                                format!("sluice: blocked by masking: a value of \"{column}\" cannot be masked in the format asked for, so the result is not sent"),
                            )
                            .hint("ask for this column in text format, or leave it out")
                            .encode(),
                        );
                    }
                }
            }
            if self.refusing.is_some() {
                match header.tag {
                    backend::DATA_ROW => disposition = Disposition::Swallow,
                    backend::COMMAND_COMPLETE
                    | backend::PORTAL_SUSPENDED
                    | backend::EMPTY_QUERY_RESPONSE => {
                        if let Some(e) = self.refusing.take() {
                            disposition = Disposition::Replace(e);
                        }
                    }
                    backend::ERROR_RESPONSE | backend::READY_FOR_QUERY => self.refusing = None,
                    _ => {}
                }
            }
            match header.tag {
                backend::ERROR_RESPONSE => {
                    if let Ok(e) = ErrorResponse::decode(body) {
                        self.saw_fatal |=
                            matches!(e.field(b'V').or(e.field(b'S')), Some("FATAL" | "PANIC"));
                        let refusal = e
                            .message()
                            .and_then(|m| self.refusals.take(self.marker_prefix, m));
                        if let Some(refusal) = refusal {
                            // The server rejected a marker: tell the client why.
                            disposition = Disposition::Replace(refusal);
                        }
                    }
                }
                backend::PARAMETER_STATUS => {
                    match sluice_wire::messages::parameter_status::decode(body) {
                        Ok(("client_encoding", value))
                            if !crate::frontend::params::encoding_allowed(value) =>
                        {
                            break Walked::Violation(format!(
                                "client_encoding was changed to \"{value}\", which Sluice does not support; use UTF8"
                            ));
                        }
                        Ok(("standard_conforming_strings", value)) if value != "on" => {
                            break Walked::Violation(format!(
                                "standard_conforming_strings was changed to \"{value}\", which Sluice does not support"
                            ));
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
            if matches!(disposition, Disposition::Forward)
                && matches!(
                    header.tag,
                    backend::ERROR_RESPONSE
                        | backend::NOTICE_RESPONSE
                        | backend::NOTIFICATION_RESPONSE
                        | backend::PARAMETER_STATUS
                )
            {
                if let Some(m) = self
                    .masking
                    .as_mut()
                    .and_then(|m| m.out_of_band(header.tag, body))
                {
                    disposition = Disposition::Replace(m);
                }
            }
            match disposition {
                Disposition::Forward if masked => {
                    if ready > 0 {
                        // forwarded messages came before this row
                        take_run(buf, &mut ready, &mut self.assembled, out);
                    }
                    buf.advance(header.total_len);
                    if let Some(masking) = &self.masking {
                        self.assembled.extend_from_slice(masking.rewritten());
                    }
                }
                Disposition::Forward => ready += header.total_len,
                Disposition::Swallow => {
                    take_run(buf, &mut ready, &mut self.assembled, out);
                    buf.advance(header.total_len);
                }
                Disposition::Replace(with) => {
                    take_run(buf, &mut ready, &mut self.assembled, out);
                    buf.advance(header.total_len);
                    out.push(with);
                }
                Disposition::Prefix(first) => {
                    take_run(buf, &mut ready, &mut self.assembled, out);
                    out.push(first);
                    ready = header.total_len;
                }
            }
        };
        // Whatever was cut so far goes out, even before a violation: it
        // arrived before the reason to stop.
        take_run(buf, &mut ready, &mut self.assembled, out);
        walked
    }
}

/// Move what is ready to `out`, in order: the rewritten messages assembled
/// so far, then the forwarded run at the front of `buf`.
fn take_run(buf: &mut BytesMut, ready: &mut usize, assembled: &mut BytesMut, out: &mut Vec<Bytes>) {
    if !assembled.is_empty() {
        // keeps the spare capacity: the next rows are written after these
        out.push(assembled.split().freeze());
    }
    if *ready > 0 {
        out.push(buf.split_to(*ready).freeze());
        *ready = 0;
    }
}

/// Upstream → client.
async fn upstream_to_client(
    r: &mut ReadHalf,
    mut buf: BytesMut,
    to_client: &mut ClientWriter,
    metrics: &Metrics,
    flight: &Flight,
    mut state: UpstreamWalk<'_>,
    lookup: Option<CatalogAccess<'_>>,
) -> End {
    if buf.capacity() < READ_SIZE {
        buf.reserve(READ_SIZE);
    }
    let mut out: Vec<Bytes> = Vec::with_capacity(4);
    loop {
        let walked = flight.with(|tracker| state.walk(&mut buf, tracker, &mut out));
        if !out.is_empty() {
            let bytes: usize = out.iter().map(Bytes::len).sum();
            to_client.mid_write = true;
            if let Err(e) = write_parts(&mut to_client.w, &out).await {
                return End::ClientGone(e.to_string());
            }
            out.clear();
            to_client.mid_write =
                (state.streaming > 0 && !state.streaming_swallowed) || state.masked_row.is_some();
            metrics
                .upstream_bytes_total
                .fetch_add(bytes as u64, Relaxed);
        }
        match walked {
            Walked::More => {}
            Walked::Violation(why) => return End::UpstreamViolation(why),
            Walked::CannotMask(why) => return End::CannotMask(why),
            Walked::Catalog(missing) => {
                let Some(l) = &lookup else {
                    return End::CannotMask("no catalog to look columns up in".into());
                };
                if let Err(e) = l
                    .catalog
                    .load(l.target, l.connector, l.timeout, &missing)
                    .await
                {
                    tracing::warn!(target = %l.target.name, error = %e, "catalog lookup for masking failed");
                    return End::CannotMask(
                        "the names of a result's columns could not be looked up".into(),
                    );
                }
                // The walk resumes with the names known.
                continue;
            }
        }
        // Between messages, a notice of Sluice's own may go to the client.
        let between = state.streaming == 0 && state.masked_row.is_none();
        let read = match state.notices.as_mut() {
            Some(notices) if between => tokio::select! {
                r = read_some(r, &mut buf) => r,
                Some(notice) = notices.recv() => {
                    to_client.mid_write = true;
                    if let Err(e) = write_flush(&mut to_client.w, &notice).await {
                        return End::ClientGone(e.to_string());
                    }
                    to_client.mid_write = false;
                    continue;
                }
            },
            _ => read_some(r, &mut buf).await,
        };
        match read {
            Ok(0) if state.saw_fatal && buf.is_empty() => return End::UpstreamClosedAfterFatal,
            Ok(0) => return End::UpstreamGone("closed".into()),
            Ok(_) => {}
            Err(e) => return End::UpstreamGone(e.to_string()),
        }
    }
}

/// Write the parts with as few writes as possible: many small parts (masked
/// rows, COPY rows) are gathered into one buffer, one syscall.
async fn write_parts(w: &mut WriteHalf, parts: &[Bytes]) -> std::io::Result<()> {
    match parts {
        [] => {}
        [one] => w.write_all(one).await?,
        many => {
            let total: usize = many.iter().map(Bytes::len).sum();
            let mut all = BytesMut::with_capacity(total);
            for p in many {
                all.extend_from_slice(p);
            }
            w.write_all(&all).await?;
        }
    }
    w.flush().await
}

/// Read what has arrived, at most [`READ_SIZE`] bytes at a time: however
/// much the peer has queued, one pass of a loop handles a bounded batch,
/// and a buffer that grew to hold one large message shrinks back after it.
async fn read_some(r: &mut ReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() > 4 * READ_SIZE && buf.len() < MIN_FREE {
        let mut fresh = BytesMut::with_capacity(READ_SIZE + buf.len());
        fresh.extend_from_slice(buf);
        *buf = fresh;
    }
    if buf.capacity() - buf.len() < MIN_FREE {
        buf.reserve(READ_SIZE);
    }
    (&mut *r).take(READ_SIZE as u64).read_buf(buf).await
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
