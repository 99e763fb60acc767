//! The sink the proxy records into and the writer thread behind it.
//!
//! `record()` checks two atomics and does one `try_send` on a bounded
//! channel: it never blocks and never touches the store. The writer thread
//! takes batches from the channel, seals them into the chain, appends them
//! to the spool (fsync per policy), saves the chain state, and then inserts
//! them into the store; on a store error the entries stay in the spool and
//! are retried, in order, with backoff.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::body::BodyWriter;
use crate::chain::{self, ChainKeys, ChainState, Checkpoint, Signer};
use crate::config::{AuditConfig, FsyncPolicy, OnSpoolFull};
use crate::event::{Actor, AdminAction, EventBody, Record};
use crate::retention::{self, RetentionReport};
use crate::spool::{self, Spool};
use crate::store::{self, BatchEntry, Entry, Store};
use crate::util::{now_ms, ulid};
use crate::AuditError;

/// Events the writer takes from the queue at once. A deep queue gives big
/// batches, so the fsyncs and store commits per event shrink as load grows.
const BATCH_MAX: usize = 16384;
/// How long the writer lets events gather after a small batch while it
/// competes for the CPU (see [`Contention`]).
const GROUP_WINDOW: Duration = Duration::from_millis(5);
/// A batch this large is not followed by a window.
const GROUP_TARGET: usize = 512;
/// Entries the store gets per transaction.
const STORE_BATCH: usize = 8192;
/// Spooled entries wait for the store until this many have gathered or
/// the oldest has waited [`STORE_DELAY`]: a store transaction has a fixed
/// cost (its commit rewrites the last page of every index into the WAL),
/// which tens of events per batch would each pay a large share of. The
/// spool already holds them durably, so waiting loses nothing; a flush
/// that waits for the store, retention and shutdown do not wait.
const STORE_GATHER: usize = 1024;
/// See [`STORE_GATHER`]: how long an event may take to become searchable.
const STORE_DELAY: Duration = Duration::from_millis(100);
/// Unstored entries kept in memory; beyond this they are re-read from the
/// spool when the store is back.
const MEM_CAP: u64 = 64 << 20;
/// Spool encoding buffer capacity kept between batches.
const SPOOL_BUF_KEEP: usize = 32 << 20;
/// The chain state file is rewritten at most this often (three fsyncs each
/// time): recovery advances it over the spool, which keeps every entry
/// after the saved state (see `Writer::save_state`).
const STATE_SAVE_EVERY: Duration = Duration::from_secs(1);
/// Retention runs this often.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Counters for `/metrics`: plain atomics, read with `Ordering::Relaxed`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events in the queue to the writer.
    pub queue_depth: AtomicU64,
    /// Bytes in the spool not yet in the store.
    pub spool_bytes: AtomicU64,
    /// Events accepted by `record()`.
    pub recorded: AtomicU64,
    /// Events let through without a record (`fail_open`).
    pub dropped: AtomicU64,
    /// `record()` calls refused (`fail_closed`).
    pub refused: AtomicU64,
    /// Failed store operations (connect, insert).
    pub store_errors: AtomicU64,
    /// Failed spool writes.
    pub spool_errors: AtomicU64,
    /// 1 while the spool cannot be written.
    pub spool_failing: AtomicU64,
    /// Seq of the last record in the spool.
    pub spooled_seq: AtomicU64,
    /// Seq of the last record in the store.
    pub stored_seq: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Store transactions (batches written to the store).
    pub store_writes: AtomicU64,
}

/// Why `record()` refused an event (fail-closed). The proxy refuses the
/// statement or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The spool holds `spool_max_bytes` of events the store has not taken.
    #[error("the audit spool is full (the audit store is unreachable or too slow)")]
    SpoolFull,
    /// The queue to the writer is full.
    #[error("the audit queue is full")]
    QueueFull,
    /// The spool cannot be written.
    #[error("the audit spool cannot be written")]
    SpoolFailing,
    /// The writer has stopped.
    #[error("the audit writer has stopped")]
    Stopped,
}

/// Where the writer stands after a flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStatus {
    /// Last seq in the spool.
    pub spooled_seq: u64,
    /// Last seq in the store.
    pub stored_seq: u64,
}

/// An entry waiting for the store.
struct Pending {
    entry: Entry,
    /// Its size in the spool.
    size: u64,
    /// The event a record was made from, so the store need not parse the
    /// body back (`None` after a restart or while the store is down).
    event: Option<Box<PendingEvent>>,
}

impl Pending {
    fn new(entry: Entry, size: u64) -> Pending {
        Pending {
            entry,
            size,
            event: None,
        }
    }
}

struct PendingEvent {
    ulid: String,
    time_ms: i64,
    body: EventBody,
    /// The body's shape number ([`BodyWriter::write`]), once written.
    shape: u64,
}

enum Msg {
    Event(Box<PendingEvent>),
    Flush {
        stored: bool,
        reply: std::sync::mpsc::Sender<FlushStatus>,
    },
    Retention {
        now_ms: i64,
        reply: std::sync::mpsc::Sender<Result<RetentionReport, String>>,
    },
    Shutdown,
}

struct SinkShared {
    tx: SyncSender<Msg>,
    /// The writer thread, woken early by flushes and a filling queue
    /// (`None` for the discard sink).
    writer: Option<std::thread::Thread>,
    counters: Arc<Counters>,
    log_literals: bool,
    spool_max: u64,
    on_full: OnSpoolFull,
    /// Events the queue holds.
    capacity: u64,
}

/// Handle the proxy records events with. Cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    inner: Arc<SinkShared>,
}

impl SinkShared {
    fn wake(&self) {
        if let Some(t) = &self.writer {
            t.unpark();
        }
    }
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("on_full", &self.inner.on_full)
            .finish()
    }
}

impl AuditSink {
    /// A sink that accepts and discards everything (tests, tools that run
    /// the proxy without an audit trail). Its counters stay at zero except
    /// `dropped`.
    pub fn discard() -> AuditSink {
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        AuditSink {
            inner: Arc::new(SinkShared {
                tx,
                writer: None,
                counters: Arc::new(Counters::default()),
                log_literals: false,
                spool_max: u64::MAX,
                on_full: OnSpoolFull::FailOpen,
                capacity: 1,
            }),
        }
    }

    /// Whether this is [`AuditSink::discard`]: callers may then skip
    /// building events.
    pub fn discards(&self) -> bool {
        self.inner.writer.is_none()
    }

    /// Record an event. Never blocks. `Err` only under `fail_closed` (the
    /// caller must then refuse what it was about to allow); under
    /// `fail_open` an event that cannot be queued is counted in `dropped`.
    /// A statement's `text` is removed here unless `log_literals` is on.
    pub fn record(&self, mut body: EventBody) -> Result<(), RecordError> {
        let s = &self.inner;
        if !s.log_literals {
            if let EventBody::Statement(st) = &mut body {
                st.text = None;
            }
        }
        let refuse = |e: RecordError| {
            match s.on_full {
                OnSpoolFull::FailClosed => {
                    s.counters.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                OnSpoolFull::FailOpen => {
                    s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        };
        if s.counters.spool_failing.load(Ordering::Relaxed) != 0 {
            return refuse(RecordError::SpoolFailing);
        }
        if s.counters.spool_bytes.load(Ordering::Relaxed) >= s.spool_max {
            return refuse(RecordError::SpoolFull);
        }
        let time_ms = now_ms();
        let ev = PendingEvent {
            ulid: ulid(time_ms),
            time_ms,
            body,
            shape: 0,
        };
        // Counted before the send so the writer's decrement never underflows.
        let depth = s.counters.queue_depth.fetch_add(1, Ordering::Relaxed) + 1;
        match s.tx.try_send(Msg::Event(Box::new(ev))) {
            Ok(()) => {
                s.counters.recorded.fetch_add(1, Ordering::Relaxed);
                // A writer waiting out its group-commit window is woken
                // before the queue can fill.
                if depth == s.capacity / 4 + 1 {
                    s.wake();
                }
                Ok(())
            }
            Err(e) => {
                s.counters.queue_depth.fetch_sub(1, Ordering::Relaxed);
                refuse(match e {
                    TrySendError::Full(_) => RecordError::QueueFull,
                    TrySendError::Disconnected(_) => RecordError::Stopped,
                })
            }
        }
    }

    /// Whether an event recorded now would be accepted: `Err` only under
    /// `fail_closed` while the spool is full or failing, so the proxy can
    /// refuse a statement before it runs rather than after.
    pub fn check(&self) -> Result<(), RecordError> {
        let s = &self.inner;
        if s.on_full != OnSpoolFull::FailClosed {
            return Ok(());
        }
        if s.counters.spool_failing.load(Ordering::Relaxed) != 0 {
            return Err(RecordError::SpoolFailing);
        }
        if s.counters.spool_bytes.load(Ordering::Relaxed) >= s.spool_max {
            return Err(RecordError::SpoolFull);
        }
        if s.counters.queue_depth.load(Ordering::Relaxed) >= s.capacity {
            return Err(RecordError::QueueFull);
        }
        Ok(())
    }

    /// Whether the queue to the writer is nearly full: the proxy slows new
    /// statements down (backpressure) rather than lose or refuse events
    /// while the writer catches up. Always false under `fail_open`.
    pub fn congested(&self) -> bool {
        let s = &self.inner;
        s.on_full == OnSpoolFull::FailClosed
            && s.counters.queue_depth.load(Ordering::Relaxed) * 10 >= s.capacity * 9
    }

    /// Count a statement or connection the proxy refused because
    /// [`check`](Self::check) failed.
    pub fn note_refused(&self) {
        self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.inner.counters
    }

    /// Wait until every event recorded before this call is in the spool
    /// (fsynced), and with `stored` also in the store; `None` on timeout.
    /// Blocking: from async code use [`flush`](Self::flush).
    pub fn flush_blocking(&self, stored: bool, timeout: Duration) -> Option<FlushStatus> {
        let (reply, rx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush { stored, reply };
        // The queue may be full for a moment; the flush waits its turn.
        loop {
            match self.inner.tx.try_send(msg) {
                Ok(()) => {
                    self.inner.wake();
                    break;
                }
                Err(TrySendError::Full(m)) => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Disconnected(_)) => return None,
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    }

    /// Async [`flush_blocking`](Self::flush_blocking) (runs it on the
    /// blocking pool).
    pub async fn flush(&self, stored: bool, timeout: Duration) -> Option<FlushStatus> {
        let sink = self.clone();
        tokio::task::spawn_blocking(move || sink.flush_blocking(stored, timeout))
            .await
            .ok()
            .flatten()
    }
}

/// Opens the store; called again after a failure.
pub type StoreOpener = Box<dyn FnMut() -> Result<Box<dyn Store>, AuditError> + Send>;

/// The running writer. Dropping it shuts it down (like [`shutdown`](Self::shutdown)).
pub struct AuditWriter {
    sink: AuditSink,
    thread: Option<std::thread::JoinHandle<()>>,
    chain: String,
    public: Vec<u8>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("chain", &self.chain)
            .finish()
    }
}

fn load_or_create_replica_id(path: &Path) -> Result<String, AuditError> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Ok(_) => Err(AuditError::Corrupt(format!("{}: empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = ulid(now_ms());
            chain::write_private_atomic(path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(AuditError::io(path, e)),
    }
}

fn random_key() -> Result<[u8; chain::LEN], AuditError> {
    use ring::rand::SecureRandom;
    let mut k = [0u8; chain::LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| AuditError::Crypto("no randomness for the initial key".into()))?;
    Ok(k)
}

impl AuditWriter {
    /// Start the writer for `data_dir` with the store `config` names.
    /// Recovers the chain from the state file, the spool and the store;
    /// creates the replica id, keys and initial key on first start.
    pub fn start(config: &AuditConfig, data_dir: &Path) -> Result<AuditWriter, AuditError> {
        config.validate().map_err(AuditError::Config)?;
        let location = config.location(data_dir);
        let password = config.password()?;
        let opener: StoreOpener = Box::new(move || store::open(&location, password.as_deref()));
        Self::start_with(config, data_dir, opener)
    }

    /// [`start`](Self::start) with a custom store opener.
    pub fn start_with(
        config: &AuditConfig,
        data_dir: &Path,
        mut opener: StoreOpener,
    ) -> Result<AuditWriter, AuditError> {
        config.validate().map_err(AuditError::Config)?;
        let dir = crate::audit_dir(data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| AuditError::io(&dir, e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let chain_id = load_or_create_replica_id(&dir.join("replica.id"))?;
        let signer = Signer::load_or_create(&dir.join("signing.key"))?;
        let pub_path = dir.join("signing.pub");
        if !pub_path.exists() {
            std::fs::write(&pub_path, format!("{}\n", signer.public_hex()))
                .map_err(|e| AuditError::io(&pub_path, e))?;
        }
        let state_path = dir.join("state");
        let saved = chain::load_state(&state_path)?;
        if let Some(s) = &saved {
            if s.chain != chain_id {
                return Err(AuditError::Corrupt(format!(
                    "{}: state is for chain {}, replica.id says {chain_id}",
                    state_path.display(),
                    s.chain
                )));
            }
        }
        let key_file = config.key_file(data_dir);
        let mut state = match saved {
            Some(s) => s,
            None => {
                let initial = random_key()?;
                let keys = ChainKeys {
                    chain: chain_id.clone(),
                    initial,
                    public: signer.public(),
                };
                chain::append_key_file(&key_file, &keys)?;
                let s = ChainState::new(&chain_id, initial);
                chain::save_state(&state_path, &s)?;
                tracing::info!(chain = %chain_id, key_file = %key_file.display(),
                    "audit: new chain; copy the key file to your auditor and remove it from this host");
                s
            }
        };
        let had_state_seq = state.seq;

        // The spool: advance the chain over records written after the
        // state was saved, and queue everything for the store.
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut pending_bytes = 0u64;
        let mut from_disk = false;
        let mut last_ckpt_seq = 0u64;
        let mut spool_records = 0u64;
        let spool = Spool::open(&dir.join("spool"), |e, size| {
            match e {
                Entry::Record(r) => {
                    spool_records += 1;
                    if r.seq > state.seq {
                        state.advance(r).map_err(|w| {
                            AuditError::Corrupt(format!(
                                "spool record {} does not continue the chain: {w}",
                                r.seq
                            ))
                        })?;
                    }
                }
                Entry::Checkpoint(c) => last_ckpt_seq = last_ckpt_seq.max(c.seq),
            }
            pending_bytes += size;
            if from_disk {
                return Ok(());
            }
            pending.push_back(Pending::new(e.clone(), size));
            if pending_bytes > MEM_CAP {
                from_disk = true;
                pending.clear();
            }
            Ok(())
        })?;
        if had_state_seq == 0 && spool_records > 0 && state.seq == 0 {
            return Err(AuditError::Corrupt(
                "the spool has records but the chain state is new".into(),
            ));
        }

        let counters = Arc::new(Counters::default());
        let mut w = Writer {
            cfg: config.clone(),
            state_path,
            state,
            signer,
            spool,
            opener: None,
            store: None,
            pending,
            from_disk,
            stored_seq: 0,
            stored_known: false,
            unstored_bytes: pending_bytes,
            last_ckpt_seq,
            last_ckpt_at: Instant::now(),
            unsynced: false,
            last_sync: Instant::now(),
            state_saved_seq: had_state_seq,
            state_saved_at: Instant::now(),
            waiters: Vec::new(),
            next_store_try: Instant::now(),
            pending_since: None,
            backoff: Duration::from_millis(100),
            next_retention: Instant::now(),
            dropped_noted: 0,
            counters: counters.clone(),
            last_store_error_log: None,
            spool_buf: Vec::new(),
            entries_buf: Vec::new(),
            sizes_buf: Vec::new(),
            unspooled: Vec::new(),
            unspooled_last: 0,
            spooled_seq: 0,
            next_spool_try: Instant::now(),
            last_spool_error_log: None,
            bodies: BodyWriter::default(),
        };
        // First contact with the store: catch up with records it has that
        // the local state lacks (machine crash under fsync = "interval").
        match opener() {
            Ok(s) => {
                w.store = Some(s);
                w.connect()?;
            }
            Err(e) => {
                counters.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "audit store unreachable at start; events wait in the spool");
            }
        }
        w.opener = Some(opener);
        if w.state.seq != had_state_seq {
            chain::save_state(&w.state_path, &w.state)?;
            w.state_saved_seq = w.state.seq;
        }
        w.spooled_seq = w.state.seq;
        w.publish();

        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue_capacity);
        let public = w.signer.public();
        let thread = std::thread::Builder::new()
            .name("sluice-audit".into())
            .spawn(move || w.run(rx))
            .map_err(|e| AuditError::Io {
                path: "audit writer thread".into(),
                source: e,
            })?;
        let sink = AuditSink {
            inner: Arc::new(SinkShared {
                tx,
                writer: Some(thread.thread().clone()),
                counters,
                log_literals: config.log_literals,
                spool_max: config.spool_max_bytes,
                on_full: config.on_spool_full,
                capacity: config.queue_capacity as u64,
            }),
        };
        Ok(AuditWriter {
            sink,
            thread: Some(thread),
            chain: chain_id,
            public,
        })
    }

    /// A sink to record with.
    pub fn sink(&self) -> AuditSink {
        self.sink.clone()
    }

    /// This replica's chain id.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The checkpoint public key (hex).
    pub fn public_key_hex(&self) -> String {
        crate::util::hex(&self.public)
    }

    /// The counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.sink.inner.counters.clone()
    }

    /// Apply `[audit] retention` now (it also runs hourly); `now_ms` is the
    /// time retention ages are measured from.
    pub fn apply_retention(
        &self,
        now_ms: i64,
        timeout: Duration,
    ) -> Result<RetentionReport, AuditError> {
        let (reply, rx) = std::sync::mpsc::channel();
        self.sink
            .inner
            .tx
            .send(Msg::Retention { now_ms, reply })
            .map_err(|_| AuditError::Stopped)?;
        self.sink.inner.wake();
        rx.recv_timeout(timeout)
            .map_err(|_| AuditError::Stopped)?
            .map_err(AuditError::Store)
    }

    /// Stop: write what is queued, a `shutdown` checkpoint, save the
    /// state and try the store once more (what it does not take stays in
    /// the spool for the next start). Blocks until done.
    pub fn shutdown(mut self) -> Result<(), AuditError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), AuditError> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.sink.inner.tx.send(Msg::Shutdown);
        self.sink.inner.wake();
        t.join().map_err(|_| AuditError::Stopped)
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Whether the writer competes for the CPU, from the share of its
/// runnable time it spent waiting for one (`/proc/thread-self/schedstat`),
/// sampled every [`CONTENTION_SAMPLE`]. Only then does a group-commit
/// window pay: it saves the store's per-commit work and the wakeups. On an
/// idle machine it would only add latency (a parked writer leaves CPUs to
/// go idle, and waking them is slow on virtual machines).
#[derive(Default)]
struct Contention {
    last: Option<(SchedStat, Instant)>,
    on: bool,
}

const CONTENTION_SAMPLE: Duration = Duration::from_millis(50);
/// Waiting share above which the writer counts as contended …
const CONTENDED_ABOVE: f64 = 0.4;
/// … and below which it no longer does.
const UNCONTENDED_BELOW: f64 = 0.2;

/// Nanoseconds a thread has run and waited to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SchedStat {
    run_ns: u64,
    wait_ns: u64,
}

impl SchedStat {
    fn parse(text: &str) -> Option<SchedStat> {
        let mut f = text.split_ascii_whitespace().map(str::parse::<u64>);
        Some(SchedStat {
            run_ns: f.next()?.ok()?,
            wait_ns: f.next()?.ok()?,
        })
    }
}

impl Contention {
    fn contended(&mut self) -> bool {
        let now = Instant::now();
        if matches!(self.last, Some((_, at)) if now.duration_since(at) < CONTENTION_SAMPLE) {
            return self.on;
        }
        // Without schedstat (not Linux), never a window.
        let Some(stat) = std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .as_deref()
            .and_then(SchedStat::parse)
        else {
            return false;
        };
        if let Some((before, _)) = self.last {
            self.on = next_contended(self.on, before, stat);
        }
        self.last = Some((stat, now));
        self.on
    }
}

/// The contention state after a sample, with hysteresis.
fn next_contended(on: bool, before: SchedStat, now: SchedStat) -> bool {
    let run = now.run_ns.saturating_sub(before.run_ns);
    let wait = now.wait_ns.saturating_sub(before.wait_ns);
    let share = wait as f64 / (run + wait).max(1) as f64;
    if on {
        share > UNCONTENDED_BELOW
    } else {
        share > CONTENDED_ABOVE
    }
}

struct Writer {
    cfg: AuditConfig,
    state_path: PathBuf,
    state: ChainState,
    signer: Signer,
    spool: Spool,
    opener: Option<StoreOpener>,
    store: Option<Box<dyn Store>>,
    pending: VecDeque<Pending>,
    from_disk: bool,
    stored_seq: u64,
    stored_known: bool,
    unstored_bytes: u64,
    last_ckpt_seq: u64,
    last_ckpt_at: Instant,
    unsynced: bool,
    last_sync: Instant,
    /// Seq of the chain state last written to the state file, and when.
    state_saved_seq: u64,
    state_saved_at: Instant,
    /// Flushes waiting for a seq to be stored (`true`) or spooled.
    waiters: Vec<(u64, bool, std::sync::mpsc::Sender<FlushStatus>)>,
    next_store_try: Instant,
    /// When the oldest entry of `pending` was spooled (see [`STORE_GATHER`]).
    pending_since: Option<Instant>,
    backoff: Duration,
    next_retention: Instant,
    dropped_noted: u64,
    counters: Arc<Counters>,
    last_store_error_log: Option<Instant>,
    /// Encoding buffer of [`spool_pending`](Self::spool_pending).
    spool_buf: Vec<u8>,
    /// A batch's records on their way to the spool, and their encoded
    /// sizes: buffers kept between batches (see `Writer::run`).
    entries_buf: Vec<(Entry, Option<Box<PendingEvent>>)>,
    sizes_buf: Vec<usize>,
    /// Entries the spool could not take (a full disk), in chain order,
    /// encoded: written before anything else once it can take them. Their
    /// events are kept, not dropped: the statements they record have run.
    unspooled: Vec<u8>,
    /// Highest seq in `unspooled`.
    unspooled_last: u64,
    /// Highest seq whose record is in the spool.
    spooled_seq: u64,
    next_spool_try: Instant,
    last_spool_error_log: Option<Instant>,
    /// Statement bodies from cached shapes.
    bodies: BodyWriter,
}

fn make_record(
    chain: &str,
    ev: &mut PendingEvent,
    bodies: &mut BodyWriter,
) -> Result<Record, AuditError> {
    // Sized for a typical statement body: no regrowing while serializing.
    let mut buf = Vec::with_capacity(1024);
    ev.shape = bodies.write(&ev.body, &mut buf)?;
    let body = String::from_utf8(buf)
        .map_err(|e| AuditError::Corrupt(format!("event body is not UTF-8: {e}")))?;
    Ok(Record {
        chain: chain.to_owned(),
        seq: 0,
        ulid: std::mem::take(&mut ev.ulid),
        time_ms: ev.time_ms,
        code: ev.body.code().to_owned(),
        environment: ev.body.environment().to_owned(),
        digest: chain::sha256(body.as_bytes()).to_vec(),
        body: Some(body),
        mac: Vec::new(),
    })
}

fn sluice_actor() -> Actor {
    Actor {
        name: "sluice".into(),
        kind: "service".into(),
        on_behalf_of: None,
    }
}

impl Writer {
    fn status(&self) -> FlushStatus {
        FlushStatus {
            spooled_seq: self.spooled_seq,
            stored_seq: self.stored_seq,
        }
    }

    fn publish(&self) {
        let c = &self.counters;
        c.spooled_seq.store(self.spooled_seq, Ordering::Relaxed);
        c.stored_seq.store(self.stored_seq, Ordering::Relaxed);
        c.spool_bytes.store(self.unstored_bytes, Ordering::Relaxed);
    }

    /// After (re)connecting: register the chain, learn the store's head,
    /// catch the local state up if the store is ahead, drop what it has.
    fn connect(&mut self) -> Result<(), AuditError> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        store.register_chain(&self.state.chain, &self.signer.public_hex(), now_ms())?;
        let head = store.head(&self.state.chain)?.map_or(0, |(s, _)| s);
        if head > self.state.seq {
            if self.stored_known {
                // Records we did not write in this run: another process
                // with the same replica id? Refuse to fork the chain.
                return Err(AuditError::Corrupt(format!(
                    "the store has chain {} up to seq {head}, beyond this writer's {}",
                    self.state.chain, self.state.seq
                )));
            }
            let mut st = self.state.clone();
            while st.seq < head {
                let rows = store.read_chain(&st.chain, st.seq, 1000)?;
                if rows.is_empty() {
                    break;
                }
                for r in rows {
                    st.advance(&r.record).map_err(|w| {
                        AuditError::Corrupt(format!(
                            "store record {} of chain {} does not continue the local chain state: {w} \
                             (was the audit state file lost?)",
                            r.record.seq, st.chain
                        ))
                    })?;
                }
            }
            tracing::warn!(
                from = self.state.seq,
                to = st.seq,
                "audit: chain state caught up from the store"
            );
            self.state = st;
            self.spooled_seq = self.spooled_seq.max(self.state.seq);
        }
        self.stored_known = true;
        self.stored_seq = head;
        let mut dropped = 0u64;
        self.pending.retain(|p| {
            let keep = match &p.entry {
                Entry::Record(r) => r.seq > head,
                Entry::Checkpoint(c) => c.seq >= head,
            };
            if !keep {
                dropped += p.size;
            }
            keep
        });
        self.unstored_bytes = self.unstored_bytes.saturating_sub(dropped);
        Ok(())
    }

    fn run(mut self, rx: Receiver<Msg>) {
        // Whether the last batch was small: then the writer waits out a
        // group-commit window, parked rather than blocked on the queue, so
        // recording an event wakes no thread and the next batch is larger.
        let mut linger = false;
        let mut contention = Contention::default();
        // Kept between batches: a deep queue gives batches of thousands,
        // whose buffers would otherwise be allocated (past glibc's mmap
        // threshold: mapped and faulted in) and regrown every time.
        let mut msgs = Vec::new();
        let mut events = Vec::new();
        loop {
            if linger {
                std::thread::park_timeout(GROUP_WINDOW);
            }
            let timeout = if !self.unspooled.is_empty() {
                Duration::from_millis(50)
            } else if self.pending.is_empty() && !self.from_disk && !self.unsynced {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(100)
            };
            let timeout = if self.cfg.fsync == FsyncPolicy::Interval {
                timeout.min(Duration::from_millis(self.cfg.fsync_interval_ms.max(1)))
            } else {
                timeout
            };
            // Wake up when the gathering entries are due for the store (when
            // they are overdue, the store is failing and backs off instead).
            let timeout = match self.pending_since {
                Some(since) if self.store.is_some() => {
                    match (since + STORE_DELAY).saturating_duration_since(Instant::now()) {
                        left if left.is_zero() => timeout,
                        left => timeout.min(left),
                    }
                }
                _ => timeout,
            };
            let mut disconnected = false;
            match rx.recv_timeout(timeout) {
                Ok(m) => msgs.push(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
            while msgs.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            let mut flushes = Vec::new();
            let mut retentions = Vec::new();
            let mut shutdown = disconnected;
            for m in msgs.drain(..) {
                match m {
                    Msg::Event(e) => events.push(e),
                    Msg::Flush { stored, reply } => flushes.push((stored, reply)),
                    Msg::Retention { now_ms, reply } => retentions.push((now_ms, reply)),
                    Msg::Shutdown => shutdown = true,
                }
            }
            self.counters
                .queue_depth
                .fetch_sub(events.len() as u64, Ordering::Relaxed);
            linger = !events.is_empty() && events.len() < GROUP_TARGET && contention.contended();
            self.note_dropped(&mut events);
            self.write_events(&mut events);
            if !flushes.is_empty() {
                self.sync();
            }
            self.periodic();
            for (stored, reply) in flushes {
                self.waiters.push((self.state.seq, stored, reply));
            }
            self.try_store(shutdown);
            for (now, reply) in retentions {
                let r = self.retention(now).map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            if !self.cfg.retention.is_empty() && Instant::now() >= self.next_retention {
                self.next_retention = Instant::now() + RETENTION_EVERY;
                if let Err(e) = self.retention(now_ms()) {
                    tracing::warn!(error = %e, "audit retention failed; will retry");
                    self.next_retention = Instant::now() + Duration::from_secs(60);
                }
            }
            self.answer_waiters(false);
            self.publish();
            if shutdown {
                self.finish();
                return;
            }
        }
    }

    fn answer_waiters(&mut self, all: bool) {
        let status = self.status();
        self.waiters.retain(|(target, stored, reply)| {
            let done = if *stored {
                status.stored_seq
            } else {
                status.spooled_seq
            };
            if all || done >= *target {
                let _ = reply.send(status);
                false
            } else {
                true
            }
        });
    }

    fn finish(&mut self) {
        if self.state.seq > 0 {
            let c = self.checkpoint("shutdown");
            self.spool_entries(vec![Entry::Checkpoint(c)], 0);
        }
        if !self.unspooled.is_empty() {
            self.retry_spool();
        }
        self.sync();
        self.save_state(true);
        self.try_store(true);
        if !self.unspooled.is_empty() && self.stored_seq < self.unspooled_last {
            tracing::error!(
                bytes = self.unspooled.len(),
                up_to_seq = self.unspooled_last,
                "audit: shutting down with events the spool could not take and the store does not have; they are lost"
            );
        }
        self.answer_waiters(true);
        self.publish();
    }

    /// Under fail_open, note how many events went unrecorded.
    // Boxed as they come from the queue; the boxes move on to `pending`.
    #[allow(clippy::vec_box)]
    fn note_dropped(&mut self, events: &mut Vec<Box<PendingEvent>>) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_noted && self.unstored_bytes < self.cfg.spool_max_bytes {
            let t = now_ms();
            events.push(Box::new(PendingEvent {
                ulid: ulid(t),
                time_ms: t,
                shape: 0,
                body: EventBody::Admin(AdminAction {
                    actor: sluice_actor(),
                    action: "audit.dropped".into(),
                    object: "events".into(),
                    outcome: format!("{} dropped", dropped - self.dropped_noted),
                    detail: Some("spool or queue full under on_spool_full = fail_open".into()),
                    environment: None,
                }),
            }));
            self.dropped_noted = dropped;
        }
    }

    fn checkpoint(&self, reason: &str) -> Checkpoint {
        let mut c = Checkpoint {
            chain: self.state.chain.clone(),
            seq: self.state.seq,
            mac: self.state.mac.to_vec(),
            time_ms: now_ms(),
            reason: reason.into(),
            environment: None,
            before_ms: None,
            signature: Vec::new(),
        };
        self.signer.sign(&mut c);
        c
    }

    #[allow(clippy::vec_box)] // as in note_dropped
    fn write_events(&mut self, events: &mut Vec<Box<PendingEvent>>) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        let saved = self.state.clone();
        let mut entries = std::mem::take(&mut self.entries_buf);
        entries.reserve(events.len() + 1);
        let mut ckpt_seq = self.last_ckpt_seq;
        // The parsed events ride along to the store only while it is up;
        // during an outage they would just hold memory.
        let keep_events = self.store.is_some() && !self.from_disk;
        for mut ev in events.drain(..) {
            let mut r = match make_record(&self.state.chain, &mut ev, &mut self.bodies) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "audit: cannot encode an event");
                    continue;
                }
            };
            self.state.seal(&mut r);
            entries.push((Entry::Record(r), keep_events.then_some(ev)));
            if self.state.seq - ckpt_seq >= self.cfg.checkpoint_every {
                entries.push((Entry::Checkpoint(self.checkpoint("count")), None));
                ckpt_seq = self.state.seq;
            }
        }
        let spooled = self.spool_pending(&mut entries, n);
        self.entries_buf = entries;
        if spooled {
            if ckpt_seq != self.last_ckpt_seq {
                self.last_ckpt_seq = ckpt_seq;
                self.last_ckpt_at = Instant::now();
            }
        } else {
            self.state = saved;
        }
    }

    /// Append to the spool and queue for the store; false when the entries
    /// are lost (counted): only when so much waits for a full disk that
    /// memory cannot hold more.
    fn spool_entries(&mut self, entries: Vec<Entry>, events: u64) -> bool {
        self.spool_pending(
            &mut entries.into_iter().map(|e| (e, None)).collect(),
            events,
        )
    }

    /// [`spool_entries`](Self::spool_entries) with the events records were
    /// made from. Takes the entries out of `entries` (always: a batch it
    /// could not take is counted lost).
    fn spool_pending(
        &mut self,
        entries: &mut Vec<(Entry, Option<Box<PendingEvent>>)>,
        events: u64,
    ) -> bool {
        // One buffer for the whole batch (one write), kept between batches
        // so it does not regrow each time.
        let mut all = std::mem::take(&mut self.spool_buf);
        all.clear();
        let mut sizes = std::mem::take(&mut self.sizes_buf);
        sizes.clear();
        for (e, _) in entries.iter() {
            let before = all.len();
            if let Err(err) = spool::encode_into(e, &mut all) {
                tracing::error!(error = %err, "audit: cannot encode a spool entry");
                self.keep_spool_buf(all);
                entries.clear();
                return false;
            }
            sizes.push(all.len() - before);
        }
        let last = entries.iter().map(|(e, _)| e.seq()).max().unwrap_or(0);
        if !self.unspooled.is_empty() {
            // Behind entries still waiting for room: in order, after them.
            if self.unspooled.len() + all.len() > MEM_CAP as usize {
                self.keep_spool_buf(all);
                entries.clear();
                self.counters.dropped.fetch_add(events, Ordering::Relaxed);
                tracing::error!(
                    events,
                    "audit spool unwritable and its memory backlog full; events lost"
                );
                return false;
            }
            self.unspooled.extend_from_slice(&all);
            self.unspooled_last = self.unspooled_last.max(last);
            self.retry_spool();
        } else {
            let written = if self.cfg.fsync == FsyncPolicy::Always {
                let mut at = 0;
                let mut failed = None;
                for ((e, _), size) in entries.iter().zip(&sizes) {
                    let r = self
                        .spool
                        .append(&all[at..at + size], e.seq())
                        .and_then(|()| self.spool.sync());
                    if let Err(err) = r {
                        failed = Some(err);
                        break;
                    }
                    at += size;
                    self.spooled_seq = self.spooled_seq.max(e.seq());
                }
                failed.map_or(Ok(()), |err| Err((at, err)))
            } else {
                self.spool.append(&all, last).map_err(|err| (0, err))
            };
            match written {
                Ok(()) => self.spooled_seq = self.spooled_seq.max(last),
                Err((at, err)) => {
                    self.unspooled.extend_from_slice(&all[at..]);
                    self.unspooled_last = last;
                    self.spool_failed(&err);
                }
            }
        }
        self.keep_spool_buf(all);
        for ((e, event), &size) in entries.drain(..).zip(&sizes) {
            if matches!(e, Entry::Checkpoint(_)) {
                self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
            }
            let size = size as u64;
            self.unstored_bytes += size;
            if !self.from_disk {
                if self.pending.is_empty() {
                    self.pending_since = Some(Instant::now());
                }
                self.pending.push_back(Pending {
                    entry: e,
                    size,
                    event,
                });
            }
        }
        self.sizes_buf = sizes;
        if !self.from_disk && self.unstored_bytes > MEM_CAP {
            self.from_disk = true;
            self.pending.clear();
            self.pending_since = None;
        }
        if self.unspooled.is_empty() {
            self.unsynced = true;
            match self.cfg.fsync {
                FsyncPolicy::Always | FsyncPolicy::Batch => self.sync(),
                FsyncPolicy::Interval => {}
            }
        }
        true
    }

    /// The spool could not take what is in `unspooled`: new statements are
    /// refused (`fail_closed`) or go unrecorded and counted (`fail_open`)
    /// until it can; `unspooled` waits in memory meanwhile.
    fn spool_failed(&mut self, e: &AuditError) {
        self.counters.spool_errors.fetch_add(1, Ordering::Relaxed);
        self.counters.spool_failing.store(1, Ordering::Relaxed);
        self.next_spool_try = Instant::now() + Duration::from_millis(200);
        if self
            .last_spool_error_log
            .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
        {
            tracing::error!(error = %e, waiting_bytes = self.unspooled.len(), up_to_seq = self.unspooled_last,
                "audit spool write failed (disk full?); its events wait in memory and new statements are held back until it can be written");
            self.last_spool_error_log = Some(Instant::now());
        }
    }

    /// Write what waits for the spool.
    fn retry_spool(&mut self) {
        let last = self.unspooled_last;
        let waiting = std::mem::take(&mut self.unspooled);
        let r = self.spool.append(&waiting, last).and_then(|()| {
            if self.cfg.fsync == FsyncPolicy::Always {
                self.spool.sync()
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => {
                self.spooled_seq = self.spooled_seq.max(last);
                self.counters.spool_failing.store(0, Ordering::Relaxed);
                self.last_spool_error_log = None;
                tracing::warn!(
                    bytes = waiting.len(),
                    up_to_seq = last,
                    "audit spool writable again; the events waiting for it are written"
                );
                self.unsynced = true;
                if self.cfg.fsync != FsyncPolicy::Interval {
                    self.sync();
                }
            }
            Err(e) => {
                self.unspooled = waiting;
                self.spool_failed(&e);
            }
        }
    }

    fn keep_spool_buf(&mut self, buf: Vec<u8>) {
        // A burst may have grown it a lot; do not hold on to that.
        if buf.capacity() <= SPOOL_BUF_KEEP {
            self.spool_buf = buf;
        }
    }

    fn sync(&mut self) {
        if !self.unsynced {
            return;
        }
        if let Err(e) = self.spool.sync() {
            self.counters.spool_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "audit spool fsync failed");
            return;
        }
        self.unsynced = false;
        self.last_sync = Instant::now();
        self.save_state(false);
    }

    /// Save the chain state once the spool holding its records is synced.
    /// The state follows the spool, never leads it: recovery advances the
    /// state over the spool's records, and the spool keeps every record
    /// after the saved state (`release` stops there), so a state up to
    /// [`STATE_SAVE_EVERY`] old loses nothing. `force`: at shutdown.
    fn save_state(&mut self, force: bool) {
        if self.state.seq == self.state_saved_seq
            || self.unsynced
            || !self.unspooled.is_empty()
            || (!force && self.state_saved_at.elapsed() < STATE_SAVE_EVERY)
        {
            return;
        }
        if let Err(e) = chain::save_state(&self.state_path, &self.state) {
            self.counters.spool_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "audit state save failed");
            return;
        }
        self.state_saved_seq = self.state.seq;
        self.state_saved_at = Instant::now();
    }

    fn periodic(&mut self) {
        if !self.unspooled.is_empty() && Instant::now() >= self.next_spool_try {
            self.retry_spool();
        }
        self.save_state(false);
        if self.cfg.fsync == FsyncPolicy::Interval
            && self.unsynced
            && self.last_sync.elapsed() >= Duration::from_millis(self.cfg.fsync_interval_ms)
        {
            self.sync();
        }
        if self.state.seq > self.last_ckpt_seq
            && self.last_ckpt_at.elapsed() >= Duration::from_secs(self.cfg.checkpoint_interval_secs)
        {
            let c = self.checkpoint("interval");
            if self.spool_entries(vec![Entry::Checkpoint(c)], 0) {
                self.last_ckpt_seq = self.state.seq;
                self.last_ckpt_at = Instant::now();
            }
        }
    }

    fn store_failed(&mut self, e: &AuditError) {
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        // One line per 30 s is enough while the store is down.
        if self
            .last_store_error_log
            .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
        {
            tracing::warn!(error = %e, pending_bytes = self.unstored_bytes,
                "audit store write failed; events stay in the spool and are retried");
            self.last_store_error_log = Some(Instant::now());
        }
        self.store = None;
        self.next_store_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }

    fn try_store(&mut self, force: bool) {
        if self.pending.is_empty() && !self.from_disk {
            return;
        }
        if !force && Instant::now() < self.next_store_try {
            return;
        }
        // A flush waiting for the store does not wait for a batch to gather.
        let gathered = self.pending.len() >= STORE_GATHER
            || self
                .pending_since
                .is_none_or(|since| since.elapsed() >= STORE_DELAY)
            || self.waiters.iter().any(|(_, stored, _)| *stored);
        if !force && !self.from_disk && !gathered {
            return;
        }
        if self.store.is_none() {
            let Some(opener) = self.opener.as_mut() else {
                return;
            };
            match opener() {
                Ok(s) => {
                    self.store = Some(s);
                    if let Err(e) = self.connect() {
                        self.store_failed(&e);
                        return;
                    }
                }
                Err(e) => {
                    self.store_failed(&e);
                    return;
                }
            }
        }
        // Bounded work per turn so the queue keeps draining.
        for _ in 0..16 {
            let mut from_disk: Vec<(Entry, u64)> = Vec::new();
            let batch: Vec<BatchEntry<'_>> = if self.from_disk {
                from_disk = match self.spool.read_after(self.stored_seq, STORE_BATCH) {
                    // What waits for a full disk is not in the memory
                    // queue: it is read from the spool once written.
                    Ok(b) if b.is_empty() && !self.unspooled.is_empty() => break,
                    Ok(b) if b.is_empty() => {
                        self.from_disk = false;
                        self.unstored_bytes = 0;
                        break;
                    }
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "audit: cannot re-read the spool");
                        self.counters.spool_errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
                from_disk.iter().map(|(e, _)| BatchEntry::new(e)).collect()
            } else {
                let n = self.pending.len().min(STORE_BATCH);
                if n == 0 {
                    break;
                }
                self.pending.make_contiguous()[..n]
                    .iter()
                    .map(|p| BatchEntry {
                        entry: &p.entry,
                        event: p.event.as_deref().map(|e| &e.body),
                        shape: p.event.as_deref().map_or(0, |e| e.shape),
                    })
                    .collect()
            };
            let Some(store) = self.store.as_mut() else {
                return;
            };
            if let Err(e) = store.append_batch(&batch) {
                drop(batch);
                self.store_failed(&e);
                return;
            }
            self.counters.store_writes.fetch_add(1, Ordering::Relaxed);
            let len = batch.len();
            let max = batch
                .iter()
                .filter_map(|b| match b.entry {
                    Entry::Record(r) => Some(r.seq),
                    Entry::Checkpoint(_) => None,
                })
                .max();
            drop(batch);
            self.backoff = Duration::from_millis(100);
            let bytes: u64 = if self.from_disk {
                from_disk.iter().map(|(_, s)| *s).sum()
            } else {
                let bytes = self.pending.drain(..len).map(|p| p.size).sum();
                if self.pending.is_empty() {
                    self.pending_since = None;
                }
                bytes
            };
            self.unstored_bytes = self.unstored_bytes.saturating_sub(bytes);
            if let Some(max) = max {
                self.stored_seq = self.stored_seq.max(max);
            }
            if self.from_disk && len < STORE_BATCH && self.unspooled.is_empty() {
                // Re-read everything the spool had: back to the memory queue.
                self.from_disk = false;
                self.unstored_bytes = 0;
            }
            // records after the saved state stay: recovery needs them
            self.spool
                .release(self.stored_seq.min(self.state_saved_seq));
            self.publish();
            self.answer_waiters(false);
            if self.pending.is_empty() && !self.from_disk {
                break;
            }
        }
    }

    fn retention(&mut self, now: i64) -> Result<RetentionReport, AuditError> {
        let rules = self.cfg.retention_rules().map_err(AuditError::Config)?;
        if !self.pending.is_empty() || self.from_disk {
            self.try_store(true);
            if !self.pending.is_empty() || self.from_disk {
                return Err(AuditError::Store(
                    "the store is behind; retention waits".into(),
                ));
            }
        }
        let chain = self.state.chain.clone();
        let Some(store) = self.store.as_mut() else {
            return Err(AuditError::Store(
                "the store is unreachable; retention waits".into(),
            ));
        };
        let report = retention::apply(store.as_mut(), &self.signer, &chain, &rules, now)?;
        if report.removed > 0 || report.deleted > 0 {
            let t = now_ms();
            let ev = Box::new(PendingEvent {
                ulid: ulid(t),
                time_ms: t,
                shape: 0,
                body: EventBody::Admin(AdminAction {
                    actor: sluice_actor(),
                    action: "audit.retention".into(),
                    object: report.environments.join(","),
                    outcome: format!(
                        "{} bodies removed, {} records deleted",
                        report.removed, report.deleted
                    ),
                    detail: None,
                    environment: None,
                }),
            });
            self.write_events(&mut vec![ev]);
            self.try_store(true);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_is_read_from_procfs_format() {
        assert_eq!(
            SchedStat::parse("2950635122 489237135 48512\n"),
            Some(SchedStat {
                run_ns: 2_950_635_122,
                wait_ns: 489_237_135
            })
        );
        assert_eq!(SchedStat::parse("12\n"), None);
        assert_eq!(SchedStat::parse("x 1 2"), None);
    }

    #[test]
    fn group_commit_starts_when_the_writer_waits_for_a_cpu_and_stops_with_hysteresis() {
        let at = |run_ns, wait_ns| SchedStat { run_ns, wait_ns };
        let base = at(1_000, 1_000);
        // Two thirds of its runnable time waiting: contended.
        assert!(next_contended(false, base, at(2_000, 3_000)));
        // A third: not enough to start …
        assert!(!next_contended(false, base, at(3_000, 2_000)));
        // … but enough to keep going once started.
        assert!(next_contended(true, base, at(3_000, 2_000)));
        // A tenth: stop.
        assert!(!next_contended(true, base, at(10_000, 2_000)));
        // An idle writer (no time at all) is not contended.
        assert!(!next_contended(true, base, base));
    }

    #[test]
    fn this_thread_has_a_schedstat_on_linux() {
        if cfg!(target_os = "linux") {
            let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            assert!(SchedStat::parse(&text).is_some(), "{text}");
        }
    }
}
