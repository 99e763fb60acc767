//! The accept loop and the state all sessions share: the current config
//! (swapped on SIGHUP), TLS material, cancel keys and metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::RngCore;
use sluice_config::Config;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsConnector;

use crate::cancel::CancelRegistry;
use crate::tls::{self, ServerTls};
use crate::Metrics;

/// Everything a new session needs, fixed for that session's life.
pub struct Runtime {
    /// The config.
    pub config: Arc<Config>,
    /// Client-facing TLS.
    pub server_tls: ServerTls,
    /// TLS connector per target name (`None`: plaintext).
    pub upstream_tls: HashMap<String, Option<TlsConnector>>,
    /// Salt source for the decoy exchange of unknown users.
    pub decoy_secret: [u8; 32],
    /// Cancel keys (shared with every runtime).
    pub cancels: CancelRegistry,
    /// Metrics (shared with every runtime).
    pub metrics: Arc<Metrics>,
    /// Policies and guardrails.
    pub policy: Arc<sluice_policy::PolicyEngine>,
    /// Masking of results (`None`: `[masking] enabled = false`).
    pub masker: Option<Arc<sluice_mask::Masker>>,
    /// Column names per target, for masking plans.
    pub catalogs: HashMap<String, Arc<crate::catalog::Catalog>>,
    /// The audit trail (shared with every runtime).
    pub audit: sluice_audit::AuditSink,
    /// Approval requests (shared with every runtime and replica).
    pub approvals: sluice_audit::ApprovalStore,
    /// Statement analyses shared by the sessions of this runtime.
    pub analyses: Arc<crate::guard::SharedAnalyses>,
}

/// State shared by every session of one process.
pub struct ProxyState {
    runtime: RwLock<Arc<Runtime>>,
    config_path: PathBuf,
    data_dir: PathBuf,
    decoy_secret: [u8; 32],
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancel keys.
    pub cancels: CancelRegistry,
    draining: AtomicBool,
    live: AtomicUsize,
    idle: Notify,
    force_close: watch::Sender<bool>,
    /// The audit trail's writer; stopped (flushed, checkpointed) at shutdown.
    audit_writer: std::sync::Mutex<Option<sluice_audit::AuditWriter>>,
    audit: sluice_audit::AuditSink,
    approvals: sluice_audit::ApprovalStore,
    /// OpenTelemetry span exporter (`[telemetry]`, read at start).
    pub tracer: Option<Arc<crate::telemetry::Tracer>>,
    /// Sessions relaying now, by session id (locked at session start and
    /// end and by the admin API, never per message).
    sessions: std::sync::Mutex<HashMap<String, LiveSession>>,
}

/// What the admin API shows of a live session.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    /// Session id (as in the audit trail).
    pub id: String,
    /// Principal name.
    pub principal: String,
    /// human, service or agent.
    pub kind: String,
    /// Who an agent acts for.
    pub on_behalf_of: Option<String>,
    /// Target name.
    pub target: String,
    /// Its environment.
    pub environment: String,
    /// Client address.
    pub client: String,
    /// The client's application_name.
    pub application_name: String,
    /// Whether the client uses TLS.
    pub tls: bool,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
}

struct LiveSession {
    info: SessionInfo,
    kill: Arc<Notify>,
}

/// Removes a session from the registry when it ends.
pub struct SessionHandle<'a> {
    state: &'a ProxyState,
    id: String,
    /// Notified when an administrator ends the session.
    pub kill: Arc<Notify>,
}

impl Drop for SessionHandle<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.sessions.lock() {
            s.remove(&self.id);
        }
    }
}

impl ProxyState {
    /// Load the config and TLS material.
    pub fn load(config_path: &Path, data_dir: &Path) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
        let mut decoy_secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut decoy_secret);
        let metrics = Arc::new(Metrics::default());
        let cancels = CancelRegistry::default();
        // The audit trail outlives reloads: its settings take effect on restart.
        let first = Config::load(config_path).map_err(|e| e.to_string())?;
        let audit_config = first.audit;
        // Traces, like the audit trail, take their settings at start.
        let tracer = match &first.telemetry {
            Some(t) => Some(
                crate::telemetry::Tracer::start(t, format!("{:016x}", rand::random::<u64>()))
                    .map_err(|e| format!("{}: [telemetry]: {e}", config_path.display()))?,
            ),
            None => None,
        };
        // Opening a PostgreSQL store blocks on a runtime of its own, which
        // must not happen on a thread of ours: start it on a plain thread.
        let dir = data_dir.to_owned();
        let (writer, approvals) = std::thread::spawn(move || {
            let writer = if audit_config.enabled {
                Some(sluice_audit::AuditWriter::start(&audit_config, &dir)?)
            } else {
                tracing::warn!("[audit] enabled = false: NOTHING IS RECORDED (for measuring only, never production)");
                None
            };
            let approvals = sluice_audit::ApprovalStore::open(&audit_config, &dir)?;
            Ok::<_, sluice_audit::AuditError>((writer, approvals))
        })
        .join()
        .map_err(|_| {
            format!(
                "{}: [audit]: the audit writer failed to start",
                config_path.display()
            )
        })?
        .map_err(|e| format!("{}: [audit]: {e}", config_path.display()))?;
        let audit = match &writer {
            Some(w) => {
                metrics.set_audit(w.counters());
                w.sink()
            }
            None => sluice_audit::AuditSink::discard(),
        };
        let runtime = build_runtime(
            config_path,
            data_dir,
            decoy_secret,
            &cancels,
            &metrics,
            &audit,
            &approvals,
        )?;
        Ok(Arc::new(ProxyState {
            audit_writer: std::sync::Mutex::new(writer),
            audit,
            approvals,
            tracer,
            sessions: std::sync::Mutex::new(HashMap::new()),
            runtime: RwLock::new(Arc::new(runtime)),
            config_path: config_path.to_owned(),
            data_dir: data_dir.to_owned(),
            decoy_secret,
            metrics,
            cancels,
            draining: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            idle: Notify::new(),
            force_close: watch::channel(false).0,
        }))
    }

    /// The runtime new sessions use.
    pub fn runtime(&self) -> Arc<Runtime> {
        match self.runtime.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-read the config file; on error the old config stays in force.
    pub fn reload(&self) -> Result<(), String> {
        let runtime = build_runtime(
            &self.config_path,
            &self.data_dir,
            self.decoy_secret,
            &self.cancels,
            &self.metrics,
            &self.audit,
            &self.approvals,
        )?;
        let new_listen = runtime.config.listen.clone();
        let old = self.runtime();
        if new_listen.postgres != old.config.listen.postgres
            || new_listen.http != old.config.listen.http
        {
            tracing::warn!("listen addresses changed in the config; they take effect on restart");
        }
        match self.runtime.write() {
            Ok(mut r) => *r = Arc::new(runtime),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(runtime),
        }
        Ok(())
    }

    /// Stop the audit writer: everything recorded is written, a signed
    /// checkpoint closes the chain. Blocking; call once sessions are gone.
    pub fn shutdown_audit(&self) {
        let writer = match self.audit_writer.lock() {
            Ok(mut w) => w.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(w) = writer {
            if let Err(e) = w.shutdown() {
                tracing::error!(error = %e, "the audit trail did not close cleanly");
            }
        }
    }

    /// Add a session to the registry of live sessions.
    pub fn register_session(&self, info: SessionInfo) -> SessionHandle<'_> {
        let kill = Arc::new(Notify::new());
        let id = info.id.clone();
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(
                id.clone(),
                LiveSession {
                    info,
                    kill: kill.clone(),
                },
            );
        }
        SessionHandle {
            state: self,
            id,
            kill,
        }
    }

    /// The live sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = match self.sessions.lock() {
            Ok(s) => s.values().map(|l| l.info.clone()).collect(),
            Err(_) => Vec::new(),
        };
        v.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then(a.id.cmp(&b.id)));
        v
    }

    /// End a live session (it gets FATAL 57P01); false if there is none by that id.
    pub fn kill_session(&self, id: &str) -> bool {
        match self.sessions.lock() {
            Ok(s) => match s.get(id) {
                Some(l) => {
                    l.kill.notify_one();
                    true
                }
                None => false,
            },
            Err(_) => false,
        }
    }

    /// The audit trail's sink (for events of the admin API).
    pub fn audit(&self) -> &sluice_audit::AuditSink {
        &self.audit
    }

    /// The approval request store (for the admin API).
    pub fn approvals(&self) -> &sluice_audit::ApprovalStore {
        &self.approvals
    }

    /// The data directory (the default audit store lives in it).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The config file [`reload`](Self::reload) reads.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// True once shutdown started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Connections open now (in startup or relaying).
    pub fn live_connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// A receiver that turns `true` when sessions must close now.
    pub fn force_close_signal(&self) -> watch::Receiver<bool> {
        self.force_close.subscribe()
    }

    /// Accept connections until `shutdown` resolves, then drain: wait for
    /// sessions to end up to the configured timeout, then close the rest.
    ///
    /// Sessions run on `workers`: single-threaded runtimes, one per core, each
    /// on its own thread. A session stays on one thread for its whole life, so
    /// its two relay loops never wake each other across threads; new sessions
    /// are dealt out in turn. With no workers, sessions run on the caller's runtime.
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        workers: &[tokio::runtime::Handle],
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut next = 0usize;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let worker = workers.get(next % workers.len().max(1));
                        next = next.wrapping_add(1);
                        self.spawn_session(tcp, peer, worker);
                    }
                    // Out of file descriptors and the like: keep serving.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        self.draining.store(true, Ordering::Relaxed);
        let timeout = Duration::from_secs(self.runtime().config.limits.shutdown_timeout_secs);
        tracing::info!(
            sessions = self.live_connections(),
            timeout_secs = timeout.as_secs(),
            "draining"
        );
        if tokio::time::timeout(timeout, self.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = self.live_connections(),
                "drain timeout; closing remaining sessions"
            );
            let _ = self.force_close.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.wait_idle()).await;
        }
        tracing::info!("shutdown complete");
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn spawn_session(
        self: &Arc<Self>,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        worker: Option<&tokio::runtime::Handle>,
    ) {
        Metrics::inc(&self.metrics.connections_total);
        self.live.fetch_add(1, Ordering::SeqCst);
        let state = self.clone();
        let Some(worker) = worker else {
            tokio::spawn(async move {
                let _live = LiveGuard(&state);
                crate::session::run(tcp, peer, &state).await;
            });
            return;
        };
        // Move the socket from the accepting runtime's reactor to the worker's.
        let std_tcp = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand the connection to a worker");
                self.live.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        };
        worker.spawn(async move {
            let _live = LiveGuard(&state);
            match tokio::net::TcpStream::from_std(std_tcp) {
                Ok(tcp) => crate::session::run(tcp, peer, &state).await,
                Err(e) => tracing::warn!(%peer, error = %e, "cannot register the connection"),
            }
        });
    }
}

struct LiveGuard<'a>(&'a ProxyState);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn build_runtime(
    config_path: &Path,
    data_dir: &Path,
    decoy_secret: [u8; 32],
    cancels: &CancelRegistry,
    metrics: &Arc<Metrics>,
    audit: &sluice_audit::AuditSink,
    approvals: &sluice_audit::ApprovalStore,
) -> Result<Runtime, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let server_tls = tls::server_tls(config.tls.as_ref(), config.client_ca.as_deref(), data_dir)?;
    let mut upstream_tls = HashMap::new();
    for (i, t) in config.targets.iter().enumerate() {
        let connector = tls::upstream_connector(t)
            .map_err(|e| format!("{}: targets[{i}].tls: {e}", config_path.display()))?;
        upstream_tls.insert(t.name.clone(), connector);
    }
    let policy =
        sluice_policy::PolicyEngine::load(config.policy.dir.as_deref(), &config.policy.disable)
            .map_err(|e| format!("{}: [policy]: {e}", config_path.display()))?;
    let masker = if config.masking.rules.enabled {
        let key = masking_key(config.masking.key.as_ref(), data_dir)?;
        let masker = sluice_mask::Masker::with_config(&key, &config.masking.rules)
            .map_err(|e| format!("{}: [masking]: {e}", config_path.display()))?;
        Some(Arc::new(masker))
    } else {
        None
    };
    let catalogs = config
        .targets
        .iter()
        .map(|t| (t.name.clone(), Arc::new(crate::catalog::Catalog::default())))
        .collect();
    Ok(Runtime {
        audit: audit.clone(),
        approvals: approvals.clone(),
        masker,
        catalogs,
        config: Arc::new(config),
        server_tls,
        upstream_tls,
        decoy_secret,
        cancels: cancels.clone(),
        metrics: metrics.clone(),
        policy: Arc::new(policy),
        analyses: Arc::default(),
    })
}

/// The key for masking tokens: from the config (64 hex digits are used as
/// they are, other text is hashed), else generated once and kept in the
/// data directory so tokens stay the same across restarts. Replicas that
/// must give equal tokens share a configured key.
fn masking_key(
    configured: Option<&sluice_config::Secret>,
    data_dir: &Path,
) -> Result<[u8; 32], String> {
    use sha2::Digest;
    let from_text = |text: &str| -> [u8; 32] {
        let t = text.trim();
        let mut key = [0u8; 32];
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            for (i, k) in key.iter_mut().enumerate() {
                *k = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            key
        } else {
            sha2::Sha256::digest(t.as_bytes()).into()
        }
    };
    if let Some(secret) = configured {
        return Ok(from_text(secret.expose()));
    }
    let path = data_dir.join("masking.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(from_text(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&path, &hex)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Write a file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}
