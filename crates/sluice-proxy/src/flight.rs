//! What the upstream still owes: one entry per message that the server will
//! answer, in the order they were sent, so that every response can be
//! attributed to its statement (for the rows-affected guard, masking plans
//! and the audit record) even when many statements are pipelined.
//!
//! The client-to-upstream loop pushes entries just before it writes the
//! messages; the upstream-to-client loop pops them as the answers complete,
//! and reports back which changes to prepared statements and portals the
//! server confirmed or rejected ([`Change`]).
//! Both loops run in the session's one task, so the lock is never contended;
//! it is taken once per batch, not per message.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use sluice_wire::messages::TransactionStatus;
use tokio::sync::{oneshot, Notify};

use crate::audit::{Outcome, PendingAudit};
use crate::masking::{CopyPlan, ResultPlan};

/// The answer a message gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    /// Simple Query: results, then ReadyForQuery.
    Query,
    /// Parse: ParseComplete.
    Parse,
    /// Bind: BindComplete.
    Bind,
    /// Describe of a statement: ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// Describe of a portal: RowDescription or NoData.
    DescribePortal,
    /// Execute: rows, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// Close: CloseComplete.
    Close,
    /// Sync: ReadyForQuery.
    Sync,
    /// Fast-path FunctionCall: FunctionCallResponse, then ReadyForQuery.
    FunctionCall,
}

impl Awaiting {
    /// True for the entries whose answer ends with ReadyForQuery.
    fn ends_with_ready(self) -> bool {
        matches!(
            self,
            Awaiting::Query | Awaiting::Sync | Awaiting::FunctionCall
        )
    }
}

/// Who sent the message, and so who gets the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client: answers go to the client.
    Client,
    /// Sluice itself (BEGIN/COMMIT around a guarded statement, a Describe it
    /// needed): answers are consumed, except errors and, where
    /// `forward_ready` is set, the final ReadyForQuery.
    Sluice,
}

/// How a statement ended, for the one waiting on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// Rows affected by an UPDATE, DELETE or MERGE over the guard's limit
    /// (the largest such count), if any.
    pub over_limit: Option<u64>,
    /// SQLSTATE of the error the statement ended with, if any.
    pub error: Option<String>,
    /// Execute stopped at its row limit (PortalSuspended).
    pub suspended: bool,
    /// Transaction status after it, when the entry ended with ReadyForQuery.
    pub status: Option<TransactionStatus>,
    /// For a Describe: the RowDescription body (if the result has rows).
    pub row_description: Option<Bytes>,
    /// The whole ErrorResponse the entry ended with (kept for Sluice's probes).
    pub error_message: Option<Bytes>,
    /// The server skipped it: it came after an error and before the Sync
    /// that ends the skipping, so it never ran and gets no answer.
    pub skipped: bool,
}

/// A limit on the rows one UPDATE, DELETE or MERGE may change.
#[derive(Debug)]
pub struct RowsGuard {
    /// The largest row count allowed.
    pub limit: u64,
    /// Keep the entry's ReadyForQuery from the client (Sluice ends the
    /// transaction it opened, or refuses, before the client hears it).
    pub swallow_ready: bool,
}

/// A change to the session's prepared statements or portals that holds only
/// once the server confirms it (the client side keeps it pending till then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Its number on the client side.
    pub id: u64,
    /// In a simple Query: the statement (from 0) whose CommandComplete
    /// confirms it. `None`: the entry's own answer does (ParseComplete,
    /// BindComplete, CloseComplete, or a Query's ReadyForQuery).
    pub statement: Option<usize>,
}

impl Change {
    /// Change `id`, confirmed by the entry's own answer.
    pub fn own(id: u64) -> Change {
        Change {
            id,
            statement: None,
        }
    }
}

/// One message the server will answer.
#[derive(Debug)]
pub struct Expect {
    /// What answer.
    pub awaiting: Awaiting,
    /// Who gets it.
    pub origin: Origin,
    /// For Sluice's own entries: forward the final ReadyForQuery to the client.
    pub forward_ready: bool,
    /// An error to send the client just before that ReadyForQuery.
    pub error_before_ready: Option<Bytes>,
    /// Rows-affected guard on this statement.
    pub guard: Option<RowsGuard>,
    /// Told how the entry ended.
    pub done: Option<oneshot::Sender<Completion>>,
    /// The portal a Bind, Describe, Execute or Close names (`""`: the
    /// unnamed one; `None`: the message names no portal).
    pub portal: Option<String>,
    /// How to mask the data of the `COPY … TO STDOUT` this runs.
    pub copy: Option<Arc<CopyPlan>>,
    /// Sluice's own probe: its errors are not the client's business.
    pub quiet: bool,
    /// The statement's audit record, completed when its answer is.
    pub audit: Option<Box<PendingAudit>>,
    /// An error to send in place of the server's first error for this entry.
    pub replace_error: Option<Bytes>,
    /// Changes to prepared statements or portals its success confirms.
    pub changes: Vec<Change>,
    /// For a Query or a Describe of a portal: where the columns of the
    /// results it describes come from (masking of computed columns).
    pub outputs: Option<Arc<crate::audit::ResultSources>>,
}

impl Expect {
    /// A client message with an ordinary answer.
    pub fn client(awaiting: Awaiting) -> Self {
        Expect {
            awaiting,
            origin: Origin::Client,
            forward_ready: true,
            error_before_ready: None,
            guard: None,
            done: None,
            portal: None,
            copy: None,
            quiet: false,
            audit: None,
            replace_error: None,
            changes: Vec::new(),
            outputs: None,
        }
    }

    /// The same entry, for a message Sluice sent itself.
    pub fn by_sluice(self) -> Self {
        Expect {
            origin: Origin::Sluice,
            forward_ready: false,
            ..self
        }
    }

    /// A client message that names a portal.
    pub fn for_portal(awaiting: Awaiting, portal: &str) -> Self {
        Expect {
            portal: Some(portal.to_owned()),
            ..Expect::client(awaiting)
        }
    }

    /// A message Sluice sent itself; its answer is consumed.
    pub fn sluice(awaiting: Awaiting) -> Self {
        Expect {
            origin: Origin::Sluice,
            forward_ready: false,
            ..Expect::client(awaiting)
        }
    }
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Expect>,
    status: TransactionStatus,
    /// Client sync points (Sync, Query, FunctionCall) answered so far.
    readies: u64,
    /// `readies` when the server last reported an idle transaction.
    idle_through: u64,
    /// Masking plans of described portals (`""`: the unnamed one).
    portal_plans: HashMap<String, Arc<ResultPlan>>,
    /// Statements answered whose audit records are to be written.
    finished: Vec<Finished>,
    /// The last error of one of Sluice's probes.
    probe_error: Option<Bytes>,
    /// Changes answered since the client side last looked, in the server's
    /// order: (id, confirmed).
    resolved: Vec<(u64, bool)>,
    /// An extended-protocol message failed and no ReadyForQuery has come
    /// since: the server discards everything up to the next Sync.
    skipping: bool,
}

impl State {
    /// Nothing sent so far will be answered before another Sync is sent:
    /// the queue is empty, or the server skips to a Sync none of its
    /// entries is.
    fn waits_for_sync(&self) -> bool {
        self.queue.is_empty() || self.discards_what_comes()
    }

    /// The server skips to a Sync and none is queued: whatever is sent
    /// now is discarded.
    fn discards_what_comes(&self) -> bool {
        self.skipping && !self.queue.iter().any(|e| e.awaiting == Awaiting::Sync)
    }

    /// Tell whoever waits for an entry the server will skip that it was
    /// skipped (it stays queued until the Sync's ReadyForQuery).
    fn complete_skipped(&mut self) {
        if !self.skipping {
            return;
        }
        for e in self.queue.iter_mut() {
            if e.awaiting == Awaiting::Sync {
                break;
            }
            if let Some(done) = e.done.take() {
                let _ = done.send(Completion {
                    skipped: true,
                    ..Completion::default()
                });
            }
        }
    }
}

/// A statement whose answer is complete, for the audit trail.
#[derive(Debug)]
pub struct Finished {
    /// What it was.
    pub audit: Box<PendingAudit>,
    /// How it went.
    pub outcome: Outcome,
}

/// The queue shared by the two loops of a session.
#[derive(Debug, Clone)]
pub struct Flight {
    state: Arc<Mutex<State>>,
    drained: Arc<Notify>,
}

impl Default for Flight {
    fn default() -> Self {
        Flight {
            state: Arc::new(Mutex::new(State {
                queue: VecDeque::new(),
                status: TransactionStatus::Idle,
                readies: 0,
                idle_through: 0,
                portal_plans: HashMap::new(),
                finished: Vec::new(),
                probe_error: None,
                resolved: Vec::new(),
                skipping: false,
            })),
            drained: Arc::new(Notify::new()),
        }
    }
}

impl Flight {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only the session's own task takes this lock; a panic while holding
        // it ends the session, so a poisoned state is never seen in use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue entries for messages about to be written upstream.
    pub fn push(&self, entries: impl IntoIterator<Item = Expect>) {
        let mut state = self.lock();
        state.queue.extend(entries);
        // Sent while the server skips to a Sync: they will never be answered.
        state.complete_skipped();
    }

    /// The server is skipping to a Sync (an extended-protocol message
    /// failed) and none has been sent: whatever is sent now is discarded.
    pub fn skipping(&self) -> bool {
        self.lock().discards_what_comes()
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn status(&self) -> TransactionStatus {
        self.lock().status
    }

    /// How many client sync points had been answered when the server last
    /// reported an idle transaction (portals bound before are gone).
    pub fn idle_through(&self) -> u64 {
        self.lock().idle_through
    }

    /// The error a probe of Sluice's ended with, if any (taken).
    pub fn take_probe_error(&self) -> Option<Bytes> {
        self.lock().probe_error.take()
    }

    /// Move the changes answered so far, in order, into `into` (emptied
    /// first): (id, confirmed by the server).
    pub fn take_resolved(&self, into: &mut Vec<(u64, bool)>) {
        into.clear();
        std::mem::swap(&mut self.lock().resolved, into);
    }

    /// True when nothing is waiting for an answer.
    pub fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Wait until the server has answered everything sent so far, or
    /// skips what is left of it (an error, and no Sync sent after it).
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().waits_for_sync() {
                return;
            }
            notified.await;
        }
    }

    /// Run `f` on the queue (for the upstream loop, once per batch).
    pub fn with<R>(&self, f: impl FnOnce(&mut Tracker<'_>) -> R) -> R {
        let mut state = self.lock();
        let mut tracker = Tracker { state: &mut state };
        let r = f(&mut tracker);
        if state.waits_for_sync() {
            self.drained.notify_waiters();
        }
        r
    }
}

/// What to do with one upstream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Pass it to the client.
    Forward,
    /// Keep it from the client.
    Swallow,
    /// Send this to the client first, then the message.
    Prefix(Bytes),
    /// Send this to the client instead of the message.
    Replace(Bytes),
}

/// The sources of one statement's result columns, within those of its
/// query string.
#[derive(Debug, Clone)]
pub struct ResultSourcesAt {
    /// Every statement's.
    pub all: Arc<crate::audit::ResultSources>,
    /// Which statement.
    pub index: usize,
}

impl ResultSourcesAt {
    /// The columns of this statement's result, when it returns rows.
    pub fn columns(&self) -> Option<&[sluice_sql::OutputColumn]> {
        self.all.get(self.index)?.as_deref()
    }
}

/// The upstream loop's view of the queue while it holds the lock.
pub struct Tracker<'a> {
    state: &'a mut State,
}

/// Per-entry progress kept by the upstream loop.
#[derive(Debug, Default)]
pub struct Progress {
    over_limit: Option<u64>,
    error: Option<String>,
    /// Rows of the current statement so far.
    pub rows: u64,
    /// Rows its commands inserted, updated, deleted or copied in.
    pub affected: u64,
    /// Bytes of result data sent to the client for it.
    pub bytes: u64,
    /// A COPY TO STDOUT is under way (its `COPY n` counts rows returned).
    pub copy_out: bool,
    /// The masking plan of the current result, once known.
    pub plan: Option<Arc<ResultPlan>>,
    /// CommandCompletes of a simple Query so far (its statements done).
    statements: usize,
    /// Something other than ReadyForQuery answered the entry (a Query or
    /// call that gets none was ignored: the server was skipping to Sync).
    answered: bool,
}

impl Tracker<'_> {
    /// The entry being answered.
    pub fn front(&self) -> Option<&Expect> {
        self.state.queue.front()
    }

    /// A RowDescription is about to be handled: remember its plan for the
    /// result it starts (a Query's) or for the portal it describes.
    pub fn on_row_description(&mut self, plan: Option<Arc<ResultPlan>>, progress: &mut Progress) {
        let Some(front) = self.state.queue.front() else {
            progress.plan = plan;
            return;
        };
        match front.awaiting {
            Awaiting::DescribePortal => {
                let name = front.portal.clone().unwrap_or_default();
                match plan {
                    Some(p) => self.state.portal_plans.insert(name, p),
                    None => self.state.portal_plans.remove(&name),
                };
            }
            Awaiting::DescribeStatement => {}
            _ => progress.plan = plan,
        }
    }

    /// Where the columns of the RowDescription now arriving come from: the
    /// current statement of a Query, or the statement of a described
    /// portal. `None` when not known (policy off, or nothing read).
    pub fn result_sources(&self, progress: &Progress) -> Option<ResultSourcesAt> {
        let front = self.front()?;
        let index = match front.awaiting {
            Awaiting::Query => progress.statements,
            Awaiting::DescribePortal | Awaiting::Execute => 0,
            _ => return None,
        };
        Some(ResultSourcesAt {
            all: front.outputs.clone()?,
            index,
        })
    }

    /// The COPY plan of the entry being answered.
    pub fn copy_plan(&self) -> Option<Arc<CopyPlan>> {
        self.front().and_then(|e| e.copy.clone())
    }

    /// The masking plan for a DataRow now: the current result's, or for an
    /// Execute the plan of its portal. `None` when no plan is known.
    pub fn row_plan(&mut self, progress: &mut Progress) -> Option<Arc<ResultPlan>> {
        if progress.plan.is_none() {
            if let Some(front) = self.state.queue.front() {
                if front.awaiting == Awaiting::Execute {
                    let name = front.portal.as_deref().unwrap_or("");
                    progress.plan = self.state.portal_plans.get(name).cloned();
                }
            }
        }
        progress.plan.clone()
    }

    /// Audit records of statements answered since the last call.
    pub fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.state.finished)
    }

    /// End the front entry. `confirmed`: it got its own success answer, so
    /// the changes waiting for that answer hold; all others it carries did not.
    fn pop(&mut self, progress: &mut Progress, completion: Completion, confirmed: bool) {
        if let Some(front) = self.state.queue.front_mut() {
            for c in front.changes.drain(..) {
                let ok = confirmed && c.statement.is_none();
                self.state.resolved.push((c.id, ok));
            }
        }
        if let Some(front) = self.state.queue.front() {
            // A new Bind or a Close replaces or ends the portal's plan.
            if matches!(front.awaiting, Awaiting::Bind | Awaiting::Close) {
                if let Some(name) = &front.portal {
                    self.state.portal_plans.remove(name);
                }
            }
        }
        if let Some(mut e) = self.state.queue.pop_front() {
            if let Some(audit) = e.audit.take() {
                self.state.finished.push(Finished {
                    audit,
                    outcome: Outcome {
                        rows_returned: progress.rows,
                        rows_affected: progress.affected,
                        bytes_to_client: progress.bytes,
                        sqlstate: completion.error.clone().or_else(|| progress.error.clone()),
                        refused_by: completion
                            .over_limit
                            .map(|_| "rows-affected-limit".to_owned()),
                    },
                });
            }
            if let Some(done) = e.done.take() {
                let _ = done.send(completion);
            }
        }
        *progress = Progress::default();
    }

    fn is_sluice(&self) -> bool {
        self.front().is_some_and(|e| e.origin == Origin::Sluice)
    }

    /// Account for one upstream message (`body` without the header) and say
    /// what to do with it. Messages that do not fit the queue are forwarded:
    /// the server is the authority on what happened.
    pub fn on_message(&mut self, tag: u8, body: &[u8], progress: &mut Progress) -> Disposition {
        use sluice_wire::tags::backend as b;
        if !matches!(
            tag,
            b::NOTICE_RESPONSE
                | b::NOTIFICATION_RESPONSE
                | b::PARAMETER_STATUS
                | b::READY_FOR_QUERY
        ) {
            progress.answered = true;
        }
        if tag == b::COMMAND_COMPLETE {
            // Counted before anything is swallowed: statements after one
            // over the limit still ran (a PREPARE is not rolled back).
            self.statement_done(progress);
        }
        // After a statement went over the limit, the rest of its query
        // string is Sluice's to discard: the client hears only the refusal.
        if progress.over_limit.is_some()
            && !matches!(
                tag,
                b::NOTICE_RESPONSE
                    | b::NOTIFICATION_RESPONSE
                    | b::PARAMETER_STATUS
                    | b::READY_FOR_QUERY
            )
        {
            if tag == b::ERROR_RESPONSE {
                self.error(body, progress);
            }
            return Disposition::Swallow;
        }
        match tag {
            // Asynchronous: they belong to no entry.
            b::NOTICE_RESPONSE | b::NOTIFICATION_RESPONSE | b::PARAMETER_STATUS => {
                Disposition::Forward
            }
            b::PARSE_COMPLETE | b::BIND_COMPLETE | b::CLOSE_COMPLETE | b::NO_DATA => {
                if tag == b::NO_DATA {
                    self.on_row_description(None, progress);
                }
                let sluice = self.is_sluice();
                // Only the answer its message gets confirms a change.
                let confirmed = match self.front().map(|e| e.awaiting) {
                    Some(Awaiting::Parse) => tag == b::PARSE_COMPLETE,
                    Some(Awaiting::Bind) => tag == b::BIND_COMPLETE,
                    Some(Awaiting::Close) => tag == b::CLOSE_COMPLETE,
                    _ => false,
                };
                self.pop(progress, Completion::default(), confirmed);
                if sluice {
                    Disposition::Swallow
                } else {
                    Disposition::Forward
                }
            }
            b::PARAMETER_DESCRIPTION => self.own_or_forward(),
            b::ROW_DESCRIPTION => {
                let describe = self.front().is_some_and(|e| {
                    matches!(
                        e.awaiting,
                        Awaiting::DescribeStatement | Awaiting::DescribePortal
                    )
                });
                let d = self.own_or_forward();
                if describe {
                    let wants = self.front().is_some_and(|e| e.done.is_some());
                    let completion = Completion {
                        row_description: wants.then(|| Bytes::copy_from_slice(body)),
                        ..Completion::default()
                    };
                    self.pop(progress, completion, false);
                }
                d
            }
            b::DATA_ROW => {
                progress.rows += 1;
                self.own_or_forward()
            }
            b::COMMAND_COMPLETE => self.command_complete(body, progress),
            b::EMPTY_QUERY_RESPONSE => {
                let execute = self
                    .front()
                    .is_some_and(|e| e.awaiting == Awaiting::Execute);
                let d = self.own_or_forward();
                if execute {
                    self.pop(progress, Completion::default(), false);
                }
                d
            }
            b::PORTAL_SUSPENDED => {
                let d = self.own_or_forward();
                if self
                    .front()
                    .is_some_and(|e| e.awaiting == Awaiting::Execute)
                {
                    self.pop(
                        progress,
                        Completion {
                            suspended: true,
                            ..Completion::default()
                        },
                        false,
                    );
                }
                d
            }
            b::ERROR_RESPONSE => self.error(body, progress),
            b::COPY_OUT_RESPONSE => {
                progress.copy_out = true;
                self.own_or_forward()
            }
            b::READY_FOR_QUERY => self.ready(body, progress),
            // COPY responses and data, FunctionCallResponse: part of the
            // entry being answered.
            _ => self.own_or_forward(),
        }
    }

    /// A simple Query's statement completed: the changes it makes hold.
    fn statement_done(&mut self, progress: &mut Progress) {
        let Some(front) = self.state.queue.front_mut() else {
            return;
        };
        if front.awaiting != Awaiting::Query {
            return;
        }
        let done = progress.statements;
        progress.statements += 1;
        let resolved = &mut self.state.resolved;
        front.changes.retain(|c| {
            let now = c.statement == Some(done);
            if now {
                resolved.push((c.id, true));
            }
            !now
        });
    }

    /// A Sync is queued after the front entry.
    fn sync_follows(&self) -> bool {
        self.state
            .queue
            .iter()
            .skip(1)
            .any(|e| e.awaiting == Awaiting::Sync)
    }

    fn own_or_forward(&self) -> Disposition {
        if self.is_sluice() {
            Disposition::Swallow
        } else {
            Disposition::Forward
        }
    }

    fn command_complete(&mut self, body: &[u8], progress: &mut Progress) -> Disposition {
        let Some(front) = self.state.queue.front() else {
            return Disposition::Forward;
        };
        let sluice = front.origin == Origin::Sluice;
        let limit = front.guard.as_ref().map(|g| g.limit);
        let awaiting = front.awaiting;
        if let (Some(limit), Ok(tag)) =
            (limit, sluice_wire::messages::command_complete::decode(body))
        {
            if let ("UPDATE" | "DELETE" | "MERGE", Some(n)) =
                sluice_wire::messages::command_complete::rows(tag)
            {
                if n > limit {
                    progress.over_limit = Some(progress.over_limit.unwrap_or(0).max(n));
                }
            }
        }
        if let Ok(tag) = sluice_wire::messages::command_complete::decode(body) {
            match sluice_wire::messages::command_complete::rows(tag) {
                ("INSERT" | "UPDATE" | "DELETE" | "MERGE", Some(n)) => progress.affected += n,
                ("COPY", Some(n)) if progress.copy_out => progress.rows += n,
                ("COPY", Some(n)) => progress.affected += n,
                _ => {}
            }
        }
        // Once over the limit, nothing more of the statement reaches the client.
        let swallow = sluice || progress.over_limit.is_some();
        if awaiting == Awaiting::Execute {
            let completion = Completion {
                over_limit: progress.over_limit,
                ..Completion::default()
            };
            self.pop(progress, completion, false);
        }
        if swallow {
            Disposition::Swallow
        } else {
            Disposition::Forward
        }
    }

    fn error(&mut self, body: &[u8], progress: &mut Progress) -> Disposition {
        let code = sluice_wire::messages::ErrorResponse::decode(body)
            .ok()
            .and_then(|e| e.code().map(str::to_owned));
        let quiet = self.front().is_some_and(|e| e.quiet);
        if quiet {
            // Kept for the probe that failed: the client may need to hear it.
            let mut whole = bytes::BytesMut::with_capacity(body.len() + 5);
            whole.extend_from_slice(b"E");
            whole.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            whole.extend_from_slice(body);
            self.state.probe_error = Some(whole.freeze());
        }
        let replacement = self
            .state
            .queue
            .front_mut()
            .and_then(|e| e.replace_error.take());
        match self.front().map(|e| e.awaiting) {
            // The whole simple query (or call) ends at ReadyForQuery.
            Some(Awaiting::Query | Awaiting::FunctionCall) => {
                progress.error = progress.error.take().or(code);
            }
            // The extended protocol skips to Sync: this entry has failed, and
            // those after it up to the Sync get no answer (dropped at ReadyForQuery).
            Some(_) => {
                let completion = Completion {
                    error: code,
                    over_limit: progress.over_limit,
                    ..Completion::default()
                };
                self.pop(progress, completion, false);
                self.state.skipping = true;
                self.state.complete_skipped();
            }
            None => {}
        }
        // Errors always reach the client, Sluice's own included (a COMMIT
        // that fails must be heard), except those of Sluice's probes.
        match (quiet, replacement) {
            (true, _) => Disposition::Swallow,
            (false, Some(r)) => Disposition::Replace(r),
            (false, None) => Disposition::Forward,
        }
    }

    fn ready(&mut self, body: &[u8], progress: &mut Progress) -> Disposition {
        let status = body
            .first()
            .copied()
            .and_then(TransactionStatus::from_byte)
            .unwrap_or(TransactionStatus::Idle);
        self.state.status = status;
        self.state.skipping = false;
        if status == TransactionStatus::Idle {
            // Every portal ends with its transaction.
            self.state.portal_plans.clear();
        }
        // Entries skipped after an error got no answer of their own; their
        // statements never ran, so they leave no audit record. A Query or
        // call sent before the Sync was skipped too if nothing answered it:
        // this ReadyForQuery is the Sync's.
        while self.front().is_some_and(|e| {
            !e.awaiting.ends_with_ready()
                || (e.awaiting != Awaiting::Sync && !progress.answered && self.sync_follows())
        }) {
            if let Some(e) = self.state.queue.front_mut() {
                e.audit = None;
            }
            self.pop(progress, Completion::default(), false);
        }
        let Some(front) = self.state.queue.front_mut() else {
            return Disposition::Forward;
        };
        if front.origin == Origin::Client {
            self.state.readies += 1;
            if status == TransactionStatus::Idle {
                self.state.idle_through = self.state.readies;
            }
        }
        let Some(front) = self.state.queue.front_mut() else {
            return Disposition::Forward;
        };
        let over = progress.over_limit.is_some();
        let swallow = match (&front.guard, front.origin) {
            (Some(g), _) if g.swallow_ready || over => true,
            (_, Origin::Sluice) => !front.forward_ready,
            _ => false,
        };
        let prefix = front.error_before_ready.take();
        let completion = Completion {
            over_limit: progress.over_limit,
            error: progress.error.take(),
            suspended: false,
            status: Some(status),
            row_description: None,
            error_message: None,
            skipped: false,
        };
        self.pop(progress, completion, true);
        match (swallow, prefix) {
            (true, _) => Disposition::Swallow,
            (false, Some(p)) => Disposition::Prefix(p),
            (false, None) => Disposition::Forward,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_wire::tags::backend as b;

    fn run(flight: &Flight, msgs: &[(u8, &[u8])]) -> Vec<Disposition> {
        let mut progress = Progress::default();
        flight.with(|t| {
            msgs.iter()
                .map(|(tag, body)| t.on_message(*tag, body, &mut progress))
                .collect()
        })
    }

    #[test]
    fn extended_error_skips_to_sync() {
        let f = Flight::default();
        f.push([
            Expect::client(Awaiting::Parse),
            Expect::client(Awaiting::Bind),
            Expect::client(Awaiting::Execute),
            Expect::client(Awaiting::Sync),
        ]);
        let d = run(
            &f,
            &[
                (b::ERROR_RESPONSE, b"SERROR\0C42601\0Mbad\0\0"),
                (b::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(d, vec![Disposition::Forward, Disposition::Forward]);
        assert!(f.lock().queue.is_empty());
    }

    #[test]
    fn entries_the_server_skips_after_an_error_complete_at_once() {
        let f = Flight::default();
        let (before, before_rx) = oneshot::channel();
        f.push([
            Expect::client(Awaiting::Parse),
            Expect {
                done: Some(before),
                ..Expect::client(Awaiting::Execute)
            },
        ]);
        assert!(!f.skipping());
        run(&f, &[(b::ERROR_RESPONSE, b"SERROR\0C42P01\0Mbad\0\0")]);
        // Queued before the error arrived: told now, not at the Sync.
        assert!(before_rx.blocking_recv().unwrap().skipped);
        assert!(f.skipping());
        // Queued after it, before any Sync: told as it is queued.
        let (after, after_rx) = oneshot::channel();
        f.push([Expect {
            done: Some(after),
            ..Expect::client(Awaiting::Query)
        }]);
        assert!(after_rx.blocking_recv().unwrap().skipped);
        // Nothing more can be answered until a Sync is sent.
        assert!(f.lock().waits_for_sync());
        // Once a Sync is queued, what follows it runs.
        let (later, mut later_rx) = oneshot::channel();
        f.push([
            Expect::client(Awaiting::Sync),
            Expect {
                done: Some(later),
                ..Expect::client(Awaiting::Execute)
            },
        ]);
        assert!(!f.skipping());
        assert!(later_rx.try_recv().is_err());
        run(
            &f,
            &[
                (b::READY_FOR_QUERY, b"I"),
                (b::COMMAND_COMPLETE, b"SELECT 1\0"),
            ],
        );
        let c = later_rx.blocking_recv().unwrap();
        assert!(!c.skipped);
        assert!(!f.skipping());
    }

    #[test]
    fn guarded_update_over_limit_is_kept_from_the_client() {
        let f = Flight::default();
        let (tx, rx) = oneshot::channel();
        f.push([
            Expect::sluice(Awaiting::Query),
            Expect {
                guard: Some(RowsGuard {
                    limit: 10,
                    swallow_ready: true,
                }),
                done: Some(tx),
                ..Expect::client(Awaiting::Query)
            },
        ]);
        let d = run(
            &f,
            &[
                (b::COMMAND_COMPLETE, b"BEGIN\0"),
                (b::READY_FOR_QUERY, b"T"),
                (b::COMMAND_COMPLETE, b"UPDATE 11\0"),
                (b::READY_FOR_QUERY, b"T"),
            ],
        );
        assert_eq!(d, vec![Disposition::Swallow; 4]);
        let c = rx.blocking_recv().unwrap();
        assert_eq!(c.over_limit, Some(11));
        assert_eq!(c.status, Some(TransactionStatus::InTransaction));
    }

    #[test]
    fn guarded_update_under_limit_passes() {
        let f = Flight::default();
        f.push([Expect {
            guard: Some(RowsGuard {
                limit: 10,
                swallow_ready: false,
            }),
            ..Expect::client(Awaiting::Query)
        }]);
        let d = run(
            &f,
            &[
                (b::COMMAND_COMPLETE, b"UPDATE 10\0"),
                (b::READY_FOR_QUERY, b"T"),
            ],
        );
        assert_eq!(d, vec![Disposition::Forward, Disposition::Forward]);
    }

    #[test]
    fn sluice_ready_forwarded_with_an_error_first() {
        let f = Flight::default();
        f.push([Expect {
            forward_ready: true,
            error_before_ready: Some(Bytes::from_static(b"E...")),
            ..Expect::sluice(Awaiting::Query)
        }]);
        let d = run(
            &f,
            &[
                (b::COMMAND_COMPLETE, b"ROLLBACK\0"),
                (b::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(
            d,
            vec![
                Disposition::Swallow,
                Disposition::Prefix(Bytes::from_static(b"E..."))
            ]
        );
    }

    fn change(id: u64, statement: Option<usize>) -> Change {
        Change { id, statement }
    }

    fn resolved(f: &Flight) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        f.take_resolved(&mut out);
        out
    }

    #[test]
    fn changes_hold_only_when_the_server_confirms_them() {
        let f = Flight::default();
        f.push([
            Expect {
                changes: vec![change(1, None)],
                ..Expect::client(Awaiting::Parse)
            },
            Expect {
                changes: vec![change(2, None)],
                ..Expect::client(Awaiting::Close)
            },
            Expect::client(Awaiting::Sync),
            Expect {
                changes: vec![change(3, None)],
                ..Expect::client(Awaiting::Parse)
            },
            Expect {
                changes: vec![change(4, None)],
                ..Expect::client(Awaiting::Close)
            },
            Expect::client(Awaiting::Sync),
        ]);
        run(
            &f,
            &[
                (b::PARSE_COMPLETE, b""),
                (b::CLOSE_COMPLETE, b""),
                (b::READY_FOR_QUERY, b"I"),
                (b::ERROR_RESPONSE, b"SERROR\0C42P05\0Mexists\0\0"),
                (b::READY_FOR_QUERY, b"I"),
            ],
        );
        assert_eq!(resolved(&f), [(1, true), (2, true), (3, false), (4, false)]);
    }

    #[test]
    fn a_query_confirms_the_changes_of_the_statements_that_completed() {
        let f = Flight::default();
        f.push([Expect {
            changes: vec![change(1, Some(0)), change(2, Some(2)), change(3, None)],
            ..Expect::client(Awaiting::Query)
        }]);
        run(
            &f,
            &[
                (b::COMMAND_COMPLETE, b"PREPARE\0"),
                (b::COMMAND_COMPLETE, b"SELECT 1\0"),
                (b::ERROR_RESPONSE, b"SERROR\0C25P02\0Maborted\0\0"),
                (b::READY_FOR_QUERY, b"E"),
            ],
        );
        // The third statement never ran; the unnamed statement was dropped.
        assert_eq!(resolved(&f), [(1, true), (2, false), (3, true)]);
    }

    #[test]
    fn statements_after_one_over_the_limit_still_count() {
        let f = Flight::default();
        f.push([Expect {
            guard: Some(RowsGuard {
                limit: 10,
                swallow_ready: false,
            }),
            changes: vec![change(1, Some(1))],
            ..Expect::client(Awaiting::Query)
        }]);
        run(
            &f,
            &[
                (b::COMMAND_COMPLETE, b"DELETE 11\0"),
                (b::COMMAND_COMPLETE, b"PREPARE\0"),
                (b::READY_FOR_QUERY, b"T"),
            ],
        );
        assert_eq!(resolved(&f), [(1, true)]);
    }

    #[test]
    fn a_query_skipped_after_an_error_is_not_answered_by_the_sync() {
        let f = Flight::default();
        f.push([
            Expect::client(Awaiting::Parse),
            Expect {
                changes: vec![change(1, None)],
                ..Expect::client(Awaiting::Query)
            },
            Expect {
                changes: vec![change(2, None)],
                ..Expect::client(Awaiting::Parse)
            },
            Expect::client(Awaiting::Sync),
            Expect {
                changes: vec![change(3, None)],
                ..Expect::client(Awaiting::Parse)
            },
        ]);
        run(
            &f,
            &[
                (b::ERROR_RESPONSE, b"SERROR\0C42601\0Mbad\0\0"),
                (b::READY_FOR_QUERY, b"I"),
                (b::PARSE_COMPLETE, b""),
            ],
        );
        assert_eq!(resolved(&f), [(1, false), (2, false), (3, true)]);
        assert!(f.is_empty());
    }
}
