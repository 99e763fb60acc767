//! Approval requests: statements held (or refused) until enough approvers
//! said yes, stored next to the audit trail (the SQLite file by default, the
//! PostgreSQL store when `[audit] store = "postgres://…"`, so that several
//! replicas share them).
//!
//! An approval is **per statement** and **single use**: it is bound to a
//! [`Binding`] (principal, target, statement fingerprint, hash of the bind
//! parameters), expires, cannot be granted by the principal or the person an
//! agent acts for, needs `required_approvals` distinct members of
//! `approver_group`, and [`ApprovalStore::consume`] turns it from `approved`
//! into `used` exactly once, even with several replicas racing.
//!
//! # Async and blocking callers
//!
//! All database work runs on a small runtime owned by the store (one worker
//! thread plus a blocking pool for SQLite), never on the caller's runtime and
//! never with `block_on` on the caller's thread. So:
//!
//! - **async code** (the proxy's current-thread runtimes, the admin API) calls
//!   the `async fn`s ([`ApprovalStore::create`], [`ApprovalStore::decide`], …).
//!   Their futures only wait for the store's runtime to answer; they can be
//!   polled by any executor and never block the caller's thread.
//! - **plain sync code** (the CLI) calls the `*_blocking` twins
//!   ([`ApprovalStore::create_blocking`], …), which park the calling thread
//!   until the answer is there. They work from any thread, including inside
//!   `spawn_blocking`; called on an async worker thread they would block it,
//!   so don't.
//!
//! [`ApprovalStore::open`] blocks (connecting and creating the tables); from
//! async code call it at start-up or inside `spawn_blocking`.
//!
//! # Waiting for a decision
//!
//! [`ApprovalStore::wait_decided`] returns as soon as a request is no longer
//! pending. With PostgreSQL every change is announced with
//! `NOTIFY sluice_approvals, '<id>'` (see [`NOTIFY_CHANNEL`]) and every store
//! keeps one connection `LISTEN`ing, so a decision made through another
//! replica wakes the waiter at once (a 5 s poll is kept as a safety net, 250
//! ms while the listening connection is being re-established). With SQLite,
//! changes made through the same store wake waiters at once and others
//! (another process on the same file) are seen by polling every 100 ms.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot, Semaphore, SemaphorePermit};

use crate::config::{AuditConfig, StoreLocation};
use crate::util::{now_ms, ulid};
use crate::AuditError;

/// The PostgreSQL `NOTIFY` channel: the payload is the id of the request
/// that was created or changed.
pub const NOTIFY_CHANNEL: &str = "sluice_approvals";

/// How often a waiter re-reads a SQLite request.
const SQLITE_POLL_MS: i64 = 100;
/// Safety-net poll with PostgreSQL while `LISTEN` is up.
const PG_POLL_MS: i64 = 5_000;
/// Poll with PostgreSQL while the listening connection is down.
const PG_UNLISTENED_POLL_MS: i64 = 250;
/// Connections per store (PostgreSQL), idle connections kept (SQLite).
const PG_POOL: usize = 8;
const SQLITE_IDLE: usize = 4;
/// `list` limits.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Advisory lock key serialising schema creation between replicas.
const SCHEMA_LOCK: i64 = 7_377_418_351;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS approval_requests (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    decided_ms BIGINT,
    used_ms BIGINT,
    expires_at_ms BIGINT NOT NULL,
    principal TEXT NOT NULL,
    target TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    params_hash TEXT NOT NULL,
    principal_kind TEXT NOT NULL,
    on_behalf_of TEXT,
    principal_groups TEXT NOT NULL,
    environment TEXT NOT NULL,
    session TEXT NOT NULL,
    normalized TEXT NOT NULL,
    statement TEXT NOT NULL,
    facts TEXT NOT NULL,
    rule TEXT NOT NULL,
    reason TEXT NOT NULL,
    approver_group TEXT NOT NULL,
    required_approvals BIGINT NOT NULL,
    require_justification BOOLEAN NOT NULL,
    mode TEXT NOT NULL,
    break_glass TEXT,
    decisions TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS approval_requests_binding
    ON approval_requests (principal, target, fingerprint, params_hash, status);
CREATE INDEX IF NOT EXISTS approval_requests_status ON approval_requests (status, expires_at_ms);
CREATE INDEX IF NOT EXISTS approval_requests_created ON approval_requests (created_ms);
";

const COLS: &str = "id, status, created_ms, decided_ms, used_ms, expires_at_ms, principal, target, \
    fingerprint, params_hash, principal_kind, on_behalf_of, principal_groups, environment, session, \
    normalized, statement, facts, rule, reason, approver_group, required_approvals, \
    require_justification, mode, break_glass, decisions";
const NCOLS: usize = 26;

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for approvers.
    Pending,
    /// Enough approvers said yes; not used yet.
    Approved,
    /// An approver said no.
    Denied,
    /// Not decided (or not used) before `expires_at_ms`.
    Expired,
    /// Approved and then run (consumed): it cannot be used again.
    Used,
    /// Run under break-glass: the principal's own justification stands in
    /// for the approvers; recorded for review, never consumable.
    BreakGlass,
}

impl Status {
    /// The stored and serialized name (`pending`, `break_glass`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Used => "used",
            Status::BreakGlass => "break_glass",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        Ok(match s {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            "used" => Status::Used,
            "break_glass" => Status::BreakGlass,
            other => return Err(format!("unknown approval status {other:?}")),
        })
    }
}

/// What an approval is bound to: it lets exactly this principal run exactly
/// this statement (fingerprint and parameters) on exactly this target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Binding {
    /// The principal's name.
    pub principal: String,
    /// The target (database name the client asked for).
    pub target: String,
    /// Fingerprint of the statement (`sluice_sql::fingerprint_and_normalize`).
    pub fingerprint: String,
    /// Hash of the literals / bind parameters (`""` when there are none), so
    /// an approval for `DELETE … WHERE id = 1` does not allow `id = 2`.
    pub params_hash: String,
}

/// A new request, as the proxy makes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRequest {
    /// What the approval will allow.
    pub binding: Binding,
    /// `human`, `service` or `agent`.
    pub principal_kind: String,
    /// The person an agent or service acts for (cannot approve).
    pub on_behalf_of: Option<String>,
    /// The principal's groups.
    pub groups: Vec<String>,
    /// The target's environment.
    pub environment: String,
    /// The session that asked.
    pub session: String,
    /// The statement with literals replaced by `$n`.
    pub normalized: String,
    /// The full statement text: approvers must see what they approve.
    pub statement: String,
    /// The statement facts the policy saw (JSON).
    pub facts: serde_json::Value,
    /// The policy rule that asked for approval.
    pub rule: String,
    /// Why (the rule's message).
    pub reason: String,
    /// The group whose members may decide.
    pub approver_group: String,
    /// How many distinct approvals are needed (N of M; 0 counts as 1).
    pub required_approvals: u32,
    /// Whether an approval must carry a justification.
    pub require_justification: bool,
    /// `hold` (the statement waits) or `refuse` (it is refused, and allowed
    /// once approved when the client runs it again).
    pub mode: String,
    /// When the request expires (ms since the epoch); an approved request
    /// must also be used before then.
    pub expires_at_ms: i64,
    /// The principal's justification when the statement runs under
    /// break-glass: the request is recorded as `break_glass` (already
    /// approved by the principal), for review.
    pub break_glass: Option<String>,
}

/// Someone deciding a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    /// Their name (compared with the principal and `on_behalf_of` without
    /// regard to ASCII case).
    pub name: String,
    /// Their groups.
    pub groups: Vec<String>,
}

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Who.
    pub approver: String,
    /// Approve (true) or deny.
    pub approve: bool,
    /// Why, if given.
    pub justification: Option<String>,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

/// A stored request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// A ULID (its time is `created_ms`).
    pub id: String,
    /// Where it is. Reads report a pending or approved request past its
    /// expiry as `expired` even before the row is updated.
    pub status: Status,
    /// When it was made.
    pub created_ms: i64,
    /// When it was approved, denied or expired.
    pub decided_ms: Option<i64>,
    /// When it was consumed.
    pub used_ms: Option<i64>,
    /// When it expires.
    pub expires_at_ms: i64,
    /// The votes so far, in order.
    pub decisions: Vec<Vote>,
    /// What the approval allows.
    pub binding: Binding,
    /// `human`, `service` or `agent`.
    pub principal_kind: String,
    /// The person an agent or service acts for.
    pub on_behalf_of: Option<String>,
    /// The principal's groups.
    pub groups: Vec<String>,
    /// The target's environment.
    pub environment: String,
    /// The session that asked.
    pub session: String,
    /// The normalized statement.
    pub normalized: String,
    /// The full statement text.
    pub statement: String,
    /// The statement facts (JSON).
    pub facts: serde_json::Value,
    /// The rule that asked for approval.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// Who may decide.
    pub approver_group: String,
    /// Approvals needed.
    pub required_approvals: u32,
    /// Whether approvals need a justification.
    pub require_justification: bool,
    /// `hold` or `refuse`.
    pub mode: String,
    /// The break-glass justification, if it ran under break-glass.
    pub break_glass: Option<String>,
}

impl Request {
    /// Distinct approvals so far.
    pub fn approvals(&self) -> u32 {
        let mut names: Vec<String> = self
            .decisions
            .iter()
            .filter(|v| v.approve)
            .map(|v| v.approver.to_ascii_lowercase())
            .collect();
        names.sort();
        names.dedup();
        names.len() as u32
    }

    /// Whether it is past its expiry at `now_ms`.
    pub fn is_expired_at(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// The request as it stands at `now_ms`: a pending or approved request
    /// past its expiry is `expired` (decided at its expiry if not before).
    fn effective(mut self, now_ms: i64) -> Request {
        if matches!(self.status, Status::Pending | Status::Approved) && self.is_expired_at(now_ms) {
            self.status = Status::Expired;
            self.decided_ms = self.decided_ms.or(Some(self.expires_at_ms));
        }
        self
    }
}

/// Which requests [`ApprovalStore::list`] returns (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListFilter {
    /// Only this status (as of `now_ms`: `pending` excludes requests past
    /// their expiry, `expired` includes them).
    pub status: Option<Status>,
    /// Only this principal.
    pub principal: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only this environment.
    pub environment: Option<String>,
    /// Only requests this group decides.
    pub approver_group: Option<String>,
    /// Paging: only requests older than this id (the last id of the
    /// previous page).
    pub before: Option<String>,
    /// At most this many (0: 100; at most 1000).
    pub limit: usize,
    /// The time expiry is judged at (default: now).
    pub now_ms: Option<i64>,
}

/// Why [`ApprovalStore::decide`] refused a decision.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// No such request.
    #[error("no such approval request")]
    NotFound,
    /// It was already decided (or used, or expired).
    #[error("the approval request is {0}, not pending")]
    NotPending(Status),
    /// It expired before this decision (it is now `expired`).
    #[error("the approval request has expired")]
    Expired,
    /// The approver is the principal, or the person the principal acts for.
    #[error("an approval request cannot be decided by its principal or the person it acts for")]
    SelfApproval,
    /// The approver is not in the approver group (named).
    #[error("the approver is not in the approver group {0:?}")]
    NotInGroup(String),
    /// An approval needs a justification.
    #[error("this approval request needs a justification")]
    JustificationRequired,
    /// This approver already decided this request.
    #[error("this approver has already voted on the request")]
    AlreadyVoted,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] AuditError),
}

// ---------------------------------------------------------------------------
// The decision rules (shared by both backends, applied under a row lock)
// ---------------------------------------------------------------------------

fn same_name(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// Apply one vote to `req` (the locked, current row). On `Expired` the
/// request has been marked expired and must be stored too.
fn apply_vote(
    req: &mut Request,
    approver: &Approver,
    approve: bool,
    justification: Option<&str>,
    now_ms: i64,
) -> Result<(), DecideError> {
    if req.status != Status::Pending {
        return Err(DecideError::NotPending(req.status));
    }
    if req.is_expired_at(now_ms) {
        req.status = Status::Expired;
        req.decided_ms = Some(req.expires_at_ms);
        return Err(DecideError::Expired);
    }
    if same_name(&approver.name, &req.binding.principal)
        || req
            .on_behalf_of
            .as_deref()
            .is_some_and(|p| same_name(&approver.name, p))
    {
        return Err(DecideError::SelfApproval);
    }
    if !approver.groups.contains(&req.approver_group) {
        return Err(DecideError::NotInGroup(req.approver_group.clone()));
    }
    if req
        .decisions
        .iter()
        .any(|v| same_name(&v.approver, &approver.name))
    {
        return Err(DecideError::AlreadyVoted);
    }
    let justification = justification
        .map(str::trim)
        .filter(|j| !j.is_empty())
        .map(str::to_owned);
    if approve && req.require_justification && justification.is_none() {
        return Err(DecideError::JustificationRequired);
    }
    req.decisions.push(Vote {
        approver: approver.name.clone(),
        approve,
        justification,
        at_ms: now_ms,
    });
    if !approve {
        req.status = Status::Denied;
        req.decided_ms = Some(now_ms);
    } else if req.approvals() >= req.required_approvals.max(1) {
        req.status = Status::Approved;
        req.decided_ms = Some(now_ms);
    }
    Ok(())
}

fn new_request(req: NewRequest) -> Result<Request, AuditError> {
    if req.mode != "hold" && req.mode != "refuse" {
        return Err(AuditError::Config(format!(
            "approval request: mode must be \"hold\" or \"refuse\", not {:?}",
            req.mode
        )));
    }
    if req.approver_group.trim().is_empty() && req.break_glass.is_none() {
        return Err(AuditError::Config(
            "approval request: approver_group must not be empty".into(),
        ));
    }
    let created_ms = now_ms();
    let mut out = Request {
        id: ulid(created_ms),
        status: Status::Pending,
        created_ms,
        decided_ms: None,
        used_ms: None,
        expires_at_ms: req.expires_at_ms,
        decisions: Vec::new(),
        binding: req.binding,
        principal_kind: req.principal_kind,
        on_behalf_of: req.on_behalf_of,
        groups: req.groups,
        environment: req.environment,
        session: req.session,
        normalized: req.normalized,
        statement: req.statement,
        facts: req.facts,
        rule: req.rule,
        reason: req.reason,
        approver_group: req.approver_group,
        required_approvals: req.required_approvals.max(1),
        require_justification: req.require_justification,
        mode: req.mode,
        break_glass: req.break_glass,
    };
    if let Some(j) = &out.break_glass {
        out.status = Status::BreakGlass;
        out.decided_ms = Some(created_ms);
        out.decisions.push(Vote {
            approver: out.binding.principal.clone(),
            approve: true,
            justification: Some(j.clone()),
            at_ms: created_ms,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// SQL shared by both dialects
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn ph(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// Byte-order comparison of ULIDs whatever the database collation.
    fn collate(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " COLLATE \"C\"",
        }
    }
}

/// A parameter value, bound by either driver.
#[derive(Debug, Clone)]
enum V {
    T(String),
    OT(Option<String>),
    I(i64),
    OI(Option<i64>),
    B(bool),
}

fn sqlite_params(v: &[V]) -> Vec<&dyn rusqlite::ToSql> {
    v.iter()
        .map(|v| -> &dyn rusqlite::ToSql {
            match v {
                V::T(x) => x,
                V::OT(x) => x,
                V::I(x) => x,
                V::OI(x) => x,
                V::B(x) => x,
            }
        })
        .collect()
}

fn pg_params(v: &[V]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    v.iter()
        .map(|v| -> &(dyn tokio_postgres::types::ToSql + Sync) {
            match v {
                V::T(x) => x,
                V::OT(x) => x,
                V::I(x) => x,
                V::OI(x) => x,
                V::B(x) => x,
            }
        })
        .collect()
}

/// SQL text with numbered placeholders and its values.
struct Sql {
    d: Dialect,
    text: String,
    vals: Vec<V>,
}

impl Sql {
    fn new(d: Dialect) -> Sql {
        Sql {
            d,
            text: String::new(),
            vals: Vec::new(),
        }
    }

    /// Bind a value; returns its placeholder.
    fn bind(&mut self, v: V) -> String {
        self.vals.push(v);
        self.d.ph(self.vals.len())
    }
}

fn row_values(r: &Request) -> Result<Vec<V>, AuditError> {
    Ok(vec![
        V::T(r.id.clone()),
        V::T(r.status.as_str().into()),
        V::I(r.created_ms),
        V::OI(r.decided_ms),
        V::OI(r.used_ms),
        V::I(r.expires_at_ms),
        V::T(r.binding.principal.clone()),
        V::T(r.binding.target.clone()),
        V::T(r.binding.fingerprint.clone()),
        V::T(r.binding.params_hash.clone()),
        V::T(r.principal_kind.clone()),
        V::OT(r.on_behalf_of.clone()),
        V::T(serde_json::to_string(&r.groups)?),
        V::T(r.environment.clone()),
        V::T(r.session.clone()),
        V::T(r.normalized.clone()),
        V::T(r.statement.clone()),
        V::T(serde_json::to_string(&r.facts)?),
        V::T(r.rule.clone()),
        V::T(r.reason.clone()),
        V::T(r.approver_group.clone()),
        V::I(i64::from(r.required_approvals)),
        V::B(r.require_justification),
        V::T(r.mode.clone()),
        V::OT(r.break_glass.clone()),
        V::T(serde_json::to_string(&r.decisions)?),
    ])
}

fn insert_sql(d: Dialect) -> String {
    let ph: Vec<String> = (1..=NCOLS).map(|n| d.ph(n)).collect();
    format!(
        "INSERT INTO approval_requests ({COLS}) VALUES ({})",
        ph.join(", ")
    )
}

fn select_one_sql(d: Dialect, for_update: bool) -> String {
    format!(
        "SELECT {COLS} FROM approval_requests WHERE id = {}{}",
        d.ph(1),
        if for_update { " FOR UPDATE" } else { "" }
    )
}

fn update_vote_sql(d: Dialect) -> String {
    format!(
        "UPDATE approval_requests SET status = {}, decided_ms = {}, decisions = {} WHERE id = {}",
        d.ph(1),
        d.ph(2),
        d.ph(3),
        d.ph(4)
    )
}

fn vote_values(r: &Request) -> Result<Vec<V>, AuditError> {
    Ok(vec![
        V::T(r.status.as_str().into()),
        V::OI(r.decided_ms),
        V::T(serde_json::to_string(&r.decisions)?),
        V::T(r.id.clone()),
    ])
}

/// approved → used, if unexpired. `$1` id, `$2` now.
fn consume_where(d: Dialect) -> String {
    format!(
        "UPDATE approval_requests SET status = 'used', used_ms = {now}
         WHERE id = {id} AND status = 'approved' AND expires_at_ms > {now}",
        id = d.ph(1),
        now = d.ph(2)
    )
}

/// pending/approved past expiry → expired. With `by_id`, `$1` id and `$2`
/// now; else `$1` now.
fn expire_where(d: Dialect, by_id: bool) -> String {
    let (id, now) = if by_id {
        (format!("id = {} AND ", d.ph(1)), d.ph(2))
    } else {
        (String::new(), d.ph(1))
    };
    format!(
        "UPDATE approval_requests SET status = 'expired', decided_ms = COALESCE(decided_ms, expires_at_ms)
         WHERE {id}status IN ('pending', 'approved') AND expires_at_ms <= {now}"
    )
}

fn find_sql(d: Dialect, b: &Binding, now_ms: i64) -> Sql {
    let mut q = Sql::new(d);
    let (p, t, f, h, n) = (
        q.bind(V::T(b.principal.clone())),
        q.bind(V::T(b.target.clone())),
        q.bind(V::T(b.fingerprint.clone())),
        q.bind(V::T(b.params_hash.clone())),
        q.bind(V::I(now_ms)),
    );
    q.text = format!(
        "SELECT {COLS} FROM approval_requests WHERE principal = {p} AND target = {t}
         AND fingerprint = {f} AND params_hash = {h} AND status = 'approved' AND expires_at_ms > {n}
         ORDER BY created_ms, id{c} LIMIT 1",
        c = d.collate()
    );
    q
}

fn list_sql(d: Dialect, f: &ListFilter, now_ms: i64) -> Sql {
    let mut q = Sql::new(d);
    let mut conds: Vec<String> = Vec::new();
    match f.status {
        Some(s @ (Status::Pending | Status::Approved)) => {
            let (st, n) = (q.bind(V::T(s.as_str().into())), q.bind(V::I(now_ms)));
            conds.push(format!("status = {st} AND expires_at_ms > {n}"));
        }
        Some(Status::Expired) => {
            let n = q.bind(V::I(now_ms));
            conds.push(format!(
                "(status = 'expired' OR (status IN ('pending', 'approved') AND expires_at_ms <= {n}))"
            ));
        }
        Some(s) => {
            let st = q.bind(V::T(s.as_str().into()));
            conds.push(format!("status = {st}"));
        }
        None => {}
    }
    for (col, v) in [
        ("principal", &f.principal),
        ("target", &f.target),
        ("environment", &f.environment),
        ("approver_group", &f.approver_group),
    ] {
        if let Some(v) = v {
            let p = q.bind(V::T(v.clone()));
            conds.push(format!("{col} = {p}"));
        }
    }
    if let Some(before) = &f.before {
        // ULIDs sort by creation time, then randomly within a millisecond.
        let t = crate::util::ulid_time(before).unwrap_or(i64::MAX);
        let (t1, t2, id) = (
            q.bind(V::I(t)),
            q.bind(V::I(t)),
            q.bind(V::T(before.to_ascii_uppercase())),
        );
        conds.push(format!(
            "(created_ms < {t1} OR (created_ms = {t2} AND id{c} < {id}))",
            c = d.collate()
        ));
    }
    let limit = match f.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let lim = q.bind(V::I(limit as i64));
    q.text = format!(
        "SELECT {COLS} FROM approval_requests{}{} ORDER BY created_ms DESC, id{} DESC LIMIT {lim}",
        if conds.is_empty() { "" } else { " WHERE " },
        conds.join(" AND "),
        d.collate()
    );
    q
}

/// Column access common to both drivers.
trait Cols {
    fn text(&self, i: usize) -> Result<String, AuditError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, AuditError>;
    fn int(&self, i: usize) -> Result<i64, AuditError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, AuditError>;
    fn boolean(&self, i: usize) -> Result<bool, AuditError>;
}

impl Cols for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<String, AuditError> {
        self.get(i).map_err(sq)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, AuditError> {
        self.get(i).map_err(sq)
    }
    fn int(&self, i: usize) -> Result<i64, AuditError> {
        self.get(i).map_err(sq)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, AuditError> {
        self.get(i).map_err(sq)
    }
    fn boolean(&self, i: usize) -> Result<bool, AuditError> {
        self.get(i).map_err(sq)
    }
}

impl Cols for tokio_postgres::Row {
    fn text(&self, i: usize) -> Result<String, AuditError> {
        self.try_get(i).map_err(pg)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, AuditError> {
        self.try_get(i).map_err(pg)
    }
    fn int(&self, i: usize) -> Result<i64, AuditError> {
        self.try_get(i).map_err(pg)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, AuditError> {
        self.try_get(i).map_err(pg)
    }
    fn boolean(&self, i: usize) -> Result<bool, AuditError> {
        self.try_get(i).map_err(pg)
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> AuditError {
    AuditError::Corrupt(format!("approval request {what}: {e}"))
}

fn request_from(r: &impl Cols) -> Result<Request, AuditError> {
    let id = r.text(0)?;
    let status = r.text(1)?.parse().map_err(|e| corrupt(&id, e))?;
    let groups = serde_json::from_str(&r.text(12)?).map_err(|e| corrupt(&id, e))?;
    let facts = serde_json::from_str(&r.text(17)?).map_err(|e| corrupt(&id, e))?;
    let decisions = serde_json::from_str(&r.text(25)?).map_err(|e| corrupt(&id, e))?;
    Ok(Request {
        status,
        created_ms: r.int(2)?,
        decided_ms: r.opt_int(3)?,
        used_ms: r.opt_int(4)?,
        expires_at_ms: r.int(5)?,
        binding: Binding {
            principal: r.text(6)?,
            target: r.text(7)?,
            fingerprint: r.text(8)?,
            params_hash: r.text(9)?,
        },
        principal_kind: r.text(10)?,
        on_behalf_of: r.opt_text(11)?,
        groups,
        environment: r.text(13)?,
        session: r.text(14)?,
        normalized: r.text(15)?,
        statement: r.text(16)?,
        facts,
        rule: r.text(18)?,
        reason: r.text(19)?,
        approver_group: r.text(20)?,
        required_approvals: u32::try_from(r.int(21)?.max(1)).unwrap_or(u32::MAX),
        require_justification: r.boolean(22)?,
        mode: r.text(23)?,
        break_glass: r.opt_text(24)?,
        decisions,
        id,
    })
}

fn sq(e: rusqlite::Error) -> AuditError {
    AuditError::Store(format!("sqlite: {e}"))
}

fn pg(e: tokio_postgres::Error) -> AuditError {
    AuditError::Store(format!("postgres: {}", crate::store::pg_tls::describe(&e)))
}

fn not_found(id: &str) -> AuditError {
    AuditError::Store(format!("no approval request {id}"))
}

fn stopped() -> AuditError {
    AuditError::Store("the approval store has stopped".into())
}

// ---------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------

struct SqliteBackend {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl SqliteBackend {
    fn open(path: &Path) -> Result<SqliteBackend, AuditError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        }
        let conn = Self::connect(path)?;
        conn.execute_batch(SCHEMA).map_err(sq)?;
        Ok(SqliteBackend {
            path: path.to_owned(),
            idle: Mutex::new(vec![conn]),
        })
    }

    fn connect(path: &Path) -> Result<rusqlite::Connection, AuditError> {
        let conn = rusqlite::Connection::open(path).map_err(sq)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sq)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sq)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sq)?;
        Ok(conn)
    }

    /// Run `f` on a pooled connection (on a blocking thread).
    fn with<T, E: From<AuditError>>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match conn {
            Some(c) => c,
            None => Self::connect(&self.path)?,
        };
        let out = f(&mut conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < SQLITE_IDLE && conn.is_autocommit() {
            idle.push(conn);
        }
        out
    }

    fn insert(&self, r: &Request) -> Result<(), AuditError> {
        let vals = row_values(r)?;
        self.with(|c| {
            c.execute(&insert_sql(Dialect::Sqlite), &sqlite_params(&vals)[..])
                .map_err(sq)
                .map(|_| ())
        })
    }

    fn get(&self, id: &str) -> Result<Option<Request>, AuditError> {
        self.with(|c| {
            let mut st = c
                .prepare_cached(&select_one_sql(Dialect::Sqlite, false))
                .map_err(sq)?;
            let mut rows = st.query([id]).map_err(sq)?;
            match rows.next().map_err(sq)? {
                Some(r) => request_from(r).map(Some),
                None => Ok(None),
            }
        })
    }

    fn select(&self, q: &Sql) -> Result<Vec<Request>, AuditError> {
        self.with(|c| {
            let mut st = c.prepare_cached(&q.text).map_err(sq)?;
            let mut rows = st.query(&sqlite_params(&q.vals)[..]).map_err(sq)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sq)? {
                out.push(request_from(r)?);
            }
            Ok(out)
        })
    }

    fn decide(
        &self,
        id: &str,
        approver: &Approver,
        approve: bool,
        justification: Option<&str>,
        now_ms: i64,
    ) -> Result<Request, DecideError> {
        self.with(|c| {
            // BEGIN IMMEDIATE: take the write lock before reading, so two
            // deciders (threads or processes) are serialised.
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sq)?;
            let found = {
                let mut st = tx
                    .prepare_cached(&select_one_sql(Dialect::Sqlite, false))
                    .map_err(sq)?;
                let mut rows = st.query([id]).map_err(sq)?;
                match rows.next().map_err(sq)? {
                    Some(r) => Some(request_from(r)?),
                    None => None,
                }
            };
            let mut req = found.ok_or(DecideError::NotFound)?;
            let outcome = apply_vote(&mut req, approver, approve, justification, now_ms);
            if matches!(outcome, Ok(()) | Err(DecideError::Expired)) {
                let vals = vote_values(&req)?;
                tx.execute(&update_vote_sql(Dialect::Sqlite), &sqlite_params(&vals)[..])
                    .map_err(sq)?;
                tx.commit().map_err(sq)?;
            }
            outcome.map(|()| req)
        })
    }

    fn consume(&self, id: &str, now_ms: i64) -> Result<bool, AuditError> {
        self.with(|c| {
            let n = c
                .execute(
                    &consume_where(Dialect::Sqlite),
                    rusqlite::params![id, now_ms],
                )
                .map_err(sq)?;
            if n == 0 {
                c.execute(
                    &expire_where(Dialect::Sqlite, true),
                    rusqlite::params![id, now_ms],
                )
                .map_err(sq)?;
            }
            Ok(n == 1)
        })
    }

    fn expire(&self, id: Option<&str>, now_ms: i64) -> Result<u64, AuditError> {
        self.with(|c| {
            let n = match id {
                Some(id) => c.execute(
                    &expire_where(Dialect::Sqlite, true),
                    rusqlite::params![id, now_ms],
                ),
                None => c.execute(
                    &expire_where(Dialect::Sqlite, false),
                    rusqlite::params![now_ms],
                ),
            }
            .map_err(sq)?;
            Ok(n as u64)
        })
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

struct PgBackend {
    cfg: tokio_postgres::Config,
    tls: crate::store::pg_tls::PgTls,
    idle: Mutex<Vec<tokio_postgres::Client>>,
    permits: Semaphore,
}

/// A pooled connection, back to the pool on drop unless it broke.
struct Pooled<'a> {
    pool: &'a PgBackend,
    client: Option<tokio_postgres::Client>,
    _permit: SemaphorePermit<'a>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        self.client.as_ref().expect("pooled client")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Client {
        self.client.as_mut().expect("pooled client")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(c);
            }
        }
    }
}

impl PgBackend {
    fn new(
        location: &crate::store::pg_tls::PgLocation,
        password: Option<&str>,
    ) -> Result<PgBackend, AuditError> {
        let (cfg, tls) = location.connect_config(password, "sluice-approvals")?;
        Ok(PgBackend {
            cfg,
            tls,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(PG_POOL),
        })
    }

    /// A connection from the pool (or a new one). Must run on the store's
    /// runtime: a new connection's task is spawned there.
    async fn client(&self) -> Result<Pooled<'_>, AuditError> {
        let permit = self.permits.acquire().await.map_err(|_| stopped())?;
        loop {
            let c = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match c {
                Some(c) if !c.is_closed() => {
                    return Ok(Pooled {
                        pool: self,
                        client: Some(c),
                        _permit: permit,
                    })
                }
                Some(_) => continue,
                None => break,
            }
        }
        let (client, conn) = self.cfg.connect(self.tls.clone()).await.map_err(pg)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "approval store connection ended");
            }
        });
        Ok(Pooled {
            pool: self,
            client: Some(client),
            _permit: permit,
        })
    }

    async fn create_schema(&self) -> Result<(), AuditError> {
        let c = self.client().await?;
        c.batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
        ))
        .await
        .map_err(pg)
    }

    async fn insert(&self, r: &Request) -> Result<(), AuditError> {
        let vals = row_values(r)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        tx.execute(&insert_sql(Dialect::Postgres), &pg_params(&vals))
            .await
            .map_err(pg)?;
        tx.execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &r.id])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)
    }

    async fn get(&self, id: &str) -> Result<Option<Request>, AuditError> {
        let c = self.client().await?;
        let rows = c
            .query(&select_one_sql(Dialect::Postgres, false), &[&id])
            .await
            .map_err(pg)?;
        rows.first().map(request_from).transpose()
    }

    async fn select(&self, q: &Sql) -> Result<Vec<Request>, AuditError> {
        let c = self.client().await?;
        let rows = c.query(&q.text, &pg_params(&q.vals)).await.map_err(pg)?;
        rows.iter().map(request_from).collect()
    }

    async fn decide(
        &self,
        id: &str,
        approver: &Approver,
        approve: bool,
        justification: Option<&str>,
        now_ms: i64,
    ) -> Result<Request, DecideError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // The row lock serialises deciders on every replica; the second
        // sees the first one's vote.
        let rows = tx
            .query(&select_one_sql(Dialect::Postgres, true), &[&id])
            .await
            .map_err(pg)?;
        let mut req = match rows.first() {
            Some(r) => request_from(r)?,
            None => return Err(DecideError::NotFound),
        };
        let outcome = apply_vote(&mut req, approver, approve, justification, now_ms);
        if matches!(outcome, Ok(()) | Err(DecideError::Expired)) {
            let vals = vote_values(&req)?;
            tx.execute(&update_vote_sql(Dialect::Postgres), &pg_params(&vals))
                .await
                .map_err(pg)?;
            tx.execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &req.id])
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
        }
        // Otherwise the transaction rolls back when dropped.
        outcome.map(|()| req)
    }

    /// Run an `UPDATE … WHERE …` and notify for every row it changed, in
    /// one statement. Returns how many rows changed.
    async fn update_notify(&self, update: &str, params: &[V]) -> Result<u64, AuditError> {
        let c = self.client().await?;
        let sql = format!(
            "WITH u AS ({update} RETURNING id) SELECT pg_notify('{NOTIFY_CHANNEL}', id) FROM u"
        );
        let rows = c.query(&sql, &pg_params(params)).await.map_err(pg)?;
        Ok(rows.len() as u64)
    }

    async fn consume(&self, id: &str, now_ms: i64) -> Result<bool, AuditError> {
        let vals = [V::T(id.to_owned()), V::I(now_ms)];
        let n = self
            .update_notify(&consume_where(Dialect::Postgres), &vals)
            .await?;
        if n == 0 {
            self.update_notify(&expire_where(Dialect::Postgres, true), &vals)
                .await?;
        }
        Ok(n == 1)
    }

    async fn expire(&self, id: Option<&str>, now_ms: i64) -> Result<u64, AuditError> {
        match id {
            Some(id) => {
                self.update_notify(
                    &expire_where(Dialect::Postgres, true),
                    &[V::T(id.to_owned()), V::I(now_ms)],
                )
                .await
            }
            None => {
                self.update_notify(&expire_where(Dialect::Postgres, false), &[V::I(now_ms)])
                    .await
            }
        }
    }
}

/// Keep one connection `LISTEN`ing on [`NOTIFY_CHANNEL`], forwarding each
/// payload (a request id) to the waiters; reconnect with backoff when it
/// drops (then wake every waiter, `*`, to re-read what it may have missed).
/// The result of the first attempt goes to `ready`.
async fn listen(
    cfg: tokio_postgres::Config,
    tls: crate::store::pg_tls::PgTls,
    events: broadcast::Sender<String>,
    listening: Arc<AtomicBool>,
    mut ready: Option<oneshot::Sender<Result<(), AuditError>>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let failed = match cfg.connect(tls.clone()).await {
            Err(e) => Some(pg(e)),
            Ok((client, mut conn)) => {
                let ev = events.clone();
                let mut driver = tokio::spawn(async move {
                    while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                        match m {
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                let _ = ev.send(n.payload().to_owned());
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!(error = %e, "approval listener connection failed");
                                break;
                            }
                        }
                    }
                });
                let sql = format!("LISTEN {NOTIFY_CHANNEL}");
                let listen = client.batch_execute(&sql);
                let outcome = tokio::select! {
                    r = listen => r.map_err(pg),
                    _ = &mut driver => Err(AuditError::Store("postgres: the listening connection closed".into())),
                };
                match outcome {
                    Ok(()) => {
                        listening.store(true, Ordering::SeqCst);
                        let _ = events.send("*".into());
                        if let Some(r) = ready.take() {
                            let _ = r.send(Ok(()));
                        }
                        backoff = Duration::from_millis(100);
                        let _ = driver.await;
                        listening.store(false, Ordering::SeqCst);
                        tracing::warn!("approval store: lost the LISTEN connection; reconnecting");
                        None
                    }
                    Err(e) => {
                        driver.abort();
                        Some(e)
                    }
                }
            }
        };
        if let Some(e) = failed {
            if let Some(r) = ready.take() {
                let _ = r.send(Err(e));
                return;
            }
            tracing::debug!(error = %e, "approval store: LISTEN connection failed");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

// ---------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------

enum Backend {
    Sqlite(SqliteBackend),
    Postgres(Box<PgBackend>),
}

struct Shared {
    backend: Backend,
    /// Ids of requests that changed (`*`: re-read everything).
    events: broadcast::Sender<String>,
    /// PostgreSQL: whether the `LISTEN` connection is up.
    listening: Arc<AtomicBool>,
}

/// Run a SQLite call on the store runtime's blocking pool.
async fn blocking<T: Send + 'static, E: From<AuditError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(stopped().into()),
    }
}

impl Shared {
    fn changed(&self, id: &str) {
        let _ = self.events.send(id.to_owned());
    }

    async fn insert(self: Arc<Self>, r: Request) -> Result<Request, AuditError> {
        match &self.backend {
            Backend::Sqlite(_) => {
                let (sh, r2) = (self.clone(), r.clone());
                blocking(move || sh.sqlite().insert(&r2)).await?
            }
            Backend::Postgres(p) => p.insert(&r).await?,
        }
        self.changed(&r.id);
        Ok(r)
    }

    fn sqlite(&self) -> &SqliteBackend {
        match &self.backend {
            Backend::Sqlite(s) => s,
            Backend::Postgres(_) => unreachable!("not a SQLite store"),
        }
    }

    /// The stored row, as stored.
    async fn get_raw(self: Arc<Self>, id: String) -> Result<Option<Request>, AuditError> {
        match &self.backend {
            Backend::Sqlite(_) => {
                let sh = self.clone();
                blocking(move || sh.sqlite().get(&id)).await
            }
            Backend::Postgres(p) => p.get(&id).await,
        }
    }

    async fn select(self: Arc<Self>, q: Sql) -> Result<Vec<Request>, AuditError> {
        match &self.backend {
            Backend::Sqlite(_) => {
                let sh = self.clone();
                blocking(move || sh.sqlite().select(&q)).await
            }
            Backend::Postgres(p) => p.select(&q).await,
        }
    }

    fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    async fn decide(
        self: Arc<Self>,
        id: String,
        approver: Approver,
        approve: bool,
        justification: Option<String>,
        now_ms: i64,
    ) -> Result<Request, DecideError> {
        let out = match &self.backend {
            Backend::Sqlite(_) => {
                let (sh, id) = (self.clone(), id.clone());
                blocking(move || {
                    sh.sqlite()
                        .decide(&id, &approver, approve, justification.as_deref(), now_ms)
                })
                .await
            }
            Backend::Postgres(p) => {
                p.decide(&id, &approver, approve, justification.as_deref(), now_ms)
                    .await
            }
        };
        if matches!(out, Ok(_) | Err(DecideError::Expired)) {
            self.changed(&id);
        }
        out
    }

    async fn consume(self: Arc<Self>, id: String, now_ms: i64) -> Result<bool, AuditError> {
        let out = match &self.backend {
            Backend::Sqlite(_) => {
                let (sh, id) = (self.clone(), id.clone());
                blocking(move || sh.sqlite().consume(&id, now_ms)).await?
            }
            Backend::Postgres(p) => p.consume(&id, now_ms).await?,
        };
        self.changed(&id);
        Ok(out)
    }

    async fn expire(self: Arc<Self>, id: Option<String>, now_ms: i64) -> Result<u64, AuditError> {
        let n = match &self.backend {
            Backend::Sqlite(_) => {
                let (sh, id) = (self.clone(), id.clone());
                blocking(move || sh.sqlite().expire(id.as_deref(), now_ms)).await?
            }
            Backend::Postgres(p) => p.expire(id.as_deref(), now_ms).await?,
        };
        if n > 0 {
            self.changed(id.as_deref().unwrap_or("*"));
        }
        Ok(n)
    }

    async fn take_approved(
        self: Arc<Self>,
        binding: Binding,
        now_ms: i64,
    ) -> Result<Option<Request>, AuditError> {
        // Find a candidate, then consume it; consume is the atomic step, so
        // a replica that loses the race looks again.
        for _ in 0..8 {
            let q = find_sql(self.dialect(), &binding, now_ms);
            let Some(mut r) = self.clone().select(q).await?.pop() else {
                return Ok(None);
            };
            if self.clone().consume(r.id.clone(), now_ms).await? {
                r.status = Status::Used;
                r.used_ms = Some(now_ms);
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    fn poll_ms(&self) -> i64 {
        match self.backend {
            Backend::Sqlite(_) => SQLITE_POLL_MS,
            Backend::Postgres(_) if self.listening.load(Ordering::SeqCst) => PG_POLL_MS,
            Backend::Postgres(_) => PG_UNLISTENED_POLL_MS,
        }
    }

    async fn wait_decided(
        self: Arc<Self>,
        id: String,
        until_ms: i64,
    ) -> Result<Option<Request>, AuditError> {
        // Subscribe before reading, so a change between the read and the
        // wait is not missed.
        let mut rx = self.events.subscribe();
        loop {
            let now = now_ms();
            let req = self
                .clone()
                .get_raw(id.clone())
                .await?
                .ok_or_else(|| not_found(&id))?;
            if req.status == Status::Pending && req.is_expired_at(now) {
                self.clone().expire(Some(id.clone()), now).await?;
                return Ok(Some(req.effective(now)));
            }
            if req.status != Status::Pending {
                return Ok(Some(req.effective(now)));
            }
            if now >= until_ms {
                return Ok(None);
            }
            let wake = until_ms
                .min(req.expires_at_ms)
                .min(now + self.poll_ms())
                .max(now + 1);
            let sleep = tokio::time::sleep(Duration::from_millis((wake - now) as u64));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    m = rx.recv() => match m {
                        Ok(p) if p == id || p == "*" => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            (&mut sleep).await;
                            break;
                        }
                    },
                }
            }
        }
    }
}

struct Inner {
    /// Owned so that dropping the last handle stops it; `None` only while
    /// dropping.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never blocks, so the last handle may be dropped in async code.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Aborts a spawned task when the caller stops waiting for it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Drive a future on the calling thread, parking it between polls. Used
/// only for futures that wait for the store's runtime (which does the
/// work), so it needs no reactor and works inside or outside tokio.
fn park_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = Pin::as_mut(&mut f).poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The approval request store. Cheap to clone (all clones share one
/// runtime and one set of connections); `Send + Sync`. Dropping the last
/// clone stops its runtime and closes its connections.
#[derive(Clone)]
pub struct ApprovalStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApprovalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner.shared.backend {
            Backend::Sqlite(_) => "ApprovalStore(sqlite)",
            Backend::Postgres(_) => "ApprovalStore(postgres)",
        })
    }
}

impl ApprovalStore {
    /// Open the store `[audit]` points at (SQLite at
    /// `DATA_DIR/audit/audit.db` by default; `sqlite:PATH`; or
    /// `postgres://…` with `password_env` / `password_file`), creating the
    /// tables if missing. With PostgreSQL it connects, and starts the
    /// `LISTEN` connection before returning. Blocks: call it from sync code
    /// or `spawn_blocking` (it does not panic inside a runtime, but it
    /// blocks the thread for up to the connect timeout).
    pub fn open(config: &AuditConfig, data_dir: &Path) -> Result<ApprovalStore, AuditError> {
        Self::open_at(&config.location(data_dir), config.password()?.as_deref())
    }

    /// Like [`open`](Self::open) but refuse to create a missing SQLite file
    /// (for the CLI: a typo in `--data-dir` must not create an empty store).
    pub fn open_existing(
        config: &AuditConfig,
        data_dir: &Path,
    ) -> Result<ApprovalStore, AuditError> {
        let loc = config.location(data_dir);
        if let StoreLocation::Sqlite(p) = &loc {
            if !p.exists() {
                return Err(AuditError::Store(format!(
                    "{}: no audit store there",
                    p.display()
                )));
            }
        }
        Self::open_at(&loc, config.password()?.as_deref())
    }

    /// Open a store at a location (a password overrides one in the URL).
    pub fn open_at(
        location: &StoreLocation,
        password: Option<&str>,
    ) -> Result<ApprovalStore, AuditError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(16)
            .thread_name("sluice-approvals")
            .enable_all()
            .build()
            .map_err(|e| AuditError::Store(format!("approval store runtime: {e}")))?;
        let handle = rt.handle().clone();
        let (events, _) = broadcast::channel(1024);
        let listening = Arc::new(AtomicBool::new(false));
        let backend = match location {
            StoreLocation::Sqlite(path) => Backend::Sqlite(SqliteBackend::open(path)?),
            StoreLocation::Postgres(location) => {
                Backend::Postgres(Box::new(PgBackend::new(location, password)?))
            }
        };
        let inner = Inner {
            rt: Some(rt),
            handle,
            shared: Arc::new(Shared {
                backend,
                events,
                listening,
            }),
        };
        // From here on errors drop `inner`, which shuts the runtime down
        // without blocking.
        if let Backend::Postgres(p) = &inner.shared.backend {
            let sh = inner.shared.clone();
            park_on(Self::spawned(&inner.handle, async move {
                match &sh.backend {
                    Backend::Postgres(p) => p.create_schema().await,
                    Backend::Sqlite(_) => Ok(()),
                }
            }))?;
            let (tx, rx) = oneshot::channel();
            inner.handle.spawn(listen(
                p.cfg.clone(),
                p.tls.clone(),
                inner.shared.events.clone(),
                inner.shared.listening.clone(),
                Some(tx),
            ));
            park_on(rx).map_err(|_| stopped())??;
        }
        Ok(ApprovalStore {
            inner: Arc::new(inner),
        })
    }

    /// Whether the store is PostgreSQL (shared by replicas).
    pub fn is_postgres(&self) -> bool {
        matches!(self.inner.shared.backend, Backend::Postgres(_))
    }

    async fn spawned<T: Send + 'static, E: From<AuditError> + Send + 'static>(
        handle: &tokio::runtime::Handle,
        f: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, E> {
        match handle.spawn(f).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(stopped().into()),
        }
    }

    /// Run on the store's runtime and wait (any executor).
    async fn run<T: Send + 'static, E: From<AuditError> + Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, E> {
        Self::spawned(&self.inner.handle, f).await
    }

    fn shared(&self) -> Arc<Shared> {
        self.inner.shared.clone()
    }

    // ---- async API ------------------------------------------------------

    /// Store a new request (status `pending`, or `break_glass` when
    /// `break_glass` is set) and return it with its id (a ULID).
    /// `required_approvals` 0 is stored as 1; `mode` must be `hold` or
    /// `refuse`.
    pub async fn create(&self, req: NewRequest) -> Result<Request, AuditError> {
        let r = new_request(req)?;
        self.run(self.shared().insert(r)).await
    }

    /// One request, or `None`. A pending or approved request past its
    /// expiry is reported as `expired`.
    pub async fn get(&self, id: &str) -> Result<Option<Request>, AuditError> {
        let id = id.to_owned();
        let r = self.run(self.shared().get_raw(id)).await?;
        let now = now_ms();
        Ok(r.map(|r| r.effective(now)))
    }

    /// Requests matching `filter`, newest first (see [`ListFilter`]).
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Request>, AuditError> {
        let now = filter.now_ms.unwrap_or_else(now_ms);
        let q = list_sql(self.inner.shared.dialect(), filter, now);
        let rows = self.run(self.shared().select(q)).await?;
        Ok(rows.into_iter().map(|r| r.effective(now)).collect())
    }

    /// Record one approver's vote, atomically (row lock on PostgreSQL,
    /// `BEGIN IMMEDIATE` on SQLite), and return the request as it now
    /// stands. Rules, checked in this order: the request exists
    /// (`NotFound`); it is pending (`NotPending`); it has not expired at
    /// `now_ms` (`Expired`, and it is marked expired); the approver is not
    /// the principal nor `on_behalf_of` (`SelfApproval`, for denials too);
    /// the approver is in `approver_group` (`NotInGroup`); they have not
    /// voted on it (`AlreadyVoted`); an approval carries a non-blank
    /// justification if one is required (`JustificationRequired`). A denial
    /// makes the request `denied`; `required_approvals` distinct approvals
    /// make it `approved`.
    pub async fn decide(
        &self,
        id: &str,
        approver: &Approver,
        approve: bool,
        justification: Option<&str>,
        now_ms: i64,
    ) -> Result<Request, DecideError> {
        let f = self.shared().decide(
            id.to_owned(),
            approver.clone(),
            approve,
            justification.map(str::to_owned),
            now_ms,
        );
        self.run(f).await
    }

    /// Use an approved request: `approved` → `used`, exactly once across
    /// all handles and replicas. False if it is not approved, already used,
    /// or expired at `now_ms` (an expired one is marked `expired`).
    pub async fn consume(&self, id: &str, now_ms: i64) -> Result<bool, AuditError> {
        self.run(self.shared().consume(id.to_owned(), now_ms)).await
    }

    /// An approved, unused, unexpired request for exactly this binding
    /// (oldest first), without consuming it. Prefer
    /// [`take_approved`](Self::take_approved) to find and use one in one go.
    pub async fn find_approved(
        &self,
        binding: &Binding,
        now_ms: i64,
    ) -> Result<Option<Request>, AuditError> {
        let q = find_sql(self.inner.shared.dialect(), binding, now_ms);
        Ok(self.run(self.shared().select(q)).await?.pop())
    }

    /// Find an approved, unused, unexpired request for exactly this binding
    /// and consume it; returns it (now `used`), or `None`. Safe against
    /// other replicas taking the same one.
    pub async fn take_approved(
        &self,
        binding: &Binding,
        now_ms: i64,
    ) -> Result<Option<Request>, AuditError> {
        self.run(self.shared().take_approved(binding.clone(), now_ms))
            .await
    }

    /// Wait until the request is no longer pending and return it (approved,
    /// denied, expired, …), or `None` once `until_ms` (ms since the epoch)
    /// passes with it still pending. Returns at once if it is already
    /// decided; an error if there is no such request. Woken immediately by
    /// a change made through any handle to a PostgreSQL store (`LISTEN`), or
    /// through this handle to a SQLite store; otherwise within 100 ms
    /// (SQLite). Dropping the future stops the wait.
    pub async fn wait_decided(
        &self,
        id: &str,
        until_ms: i64,
    ) -> Result<Option<Request>, AuditError> {
        let mut task = AbortOnDrop(
            self.inner
                .handle
                .spawn(self.shared().wait_decided(id.to_owned(), until_ms)),
        );
        match (&mut task.0).await {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(stopped()),
        }
    }

    /// Mark every pending or approved request past its expiry at `now_ms`
    /// as `expired` (reads already report them so; this makes the rows
    /// say it too). Returns how many.
    pub async fn expire_due(&self, now_ms: i64) -> Result<u64, AuditError> {
        self.run(self.shared().expire(None, now_ms)).await
    }

    // ---- blocking API (the CLI) ------------------------------------------

    /// [`create`](Self::create), blocking the calling thread.
    pub fn create_blocking(&self, req: NewRequest) -> Result<Request, AuditError> {
        park_on(self.create(req))
    }

    /// [`get`](Self::get), blocking.
    pub fn get_blocking(&self, id: &str) -> Result<Option<Request>, AuditError> {
        park_on(self.get(id))
    }

    /// [`list`](Self::list), blocking.
    pub fn list_blocking(&self, filter: &ListFilter) -> Result<Vec<Request>, AuditError> {
        park_on(self.list(filter))
    }

    /// [`decide`](Self::decide), blocking.
    pub fn decide_blocking(
        &self,
        id: &str,
        approver: &Approver,
        approve: bool,
        justification: Option<&str>,
        now_ms: i64,
    ) -> Result<Request, DecideError> {
        park_on(self.decide(id, approver, approve, justification, now_ms))
    }

    /// [`consume`](Self::consume), blocking.
    pub fn consume_blocking(&self, id: &str, now_ms: i64) -> Result<bool, AuditError> {
        park_on(self.consume(id, now_ms))
    }

    /// [`find_approved`](Self::find_approved), blocking.
    pub fn find_approved_blocking(
        &self,
        binding: &Binding,
        now_ms: i64,
    ) -> Result<Option<Request>, AuditError> {
        park_on(self.find_approved(binding, now_ms))
    }

    /// [`take_approved`](Self::take_approved), blocking.
    pub fn take_approved_blocking(
        &self,
        binding: &Binding,
        now_ms: i64,
    ) -> Result<Option<Request>, AuditError> {
        park_on(self.take_approved(binding, now_ms))
    }

    /// [`wait_decided`](Self::wait_decided), blocking.
    pub fn wait_decided_blocking(
        &self,
        id: &str,
        until_ms: i64,
    ) -> Result<Option<Request>, AuditError> {
        park_on(self.wait_decided(id, until_ms))
    }

    /// [`expire_due`](Self::expire_due), blocking.
    pub fn expire_due_blocking(&self, now_ms: i64) -> Result<u64, AuditError> {
        park_on(self.expire_due(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request {
        let mut r = new_request(NewRequest {
            binding: Binding {
                principal: "agent-1".into(),
                target: "app".into(),
                fingerprint: "fp".into(),
                params_hash: "".into(),
            },
            principal_kind: "agent".into(),
            on_behalf_of: Some("Alice@example.com".into()),
            groups: vec![],
            environment: "production".into(),
            session: "s1".into(),
            normalized: "DELETE FROM t".into(),
            statement: "DELETE FROM t".into(),
            facts: serde_json::json!({}),
            rule: "r".into(),
            reason: "why".into(),
            approver_group: "dba".into(),
            required_approvals: 2,
            require_justification: true,
            mode: "hold".into(),
            expires_at_ms: i64::MAX,
            break_glass: None,
        })
        .unwrap();
        r.expires_at_ms = 1_000;
        r
    }

    fn who(name: &str, groups: &[&str]) -> Approver {
        Approver {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn vote_rules() {
        let mut r = req();
        let dba = |n| who(n, &["dba"]);
        assert!(matches!(
            apply_vote(&mut r, &dba("alice@EXAMPLE.com"), true, Some("x"), 1),
            Err(DecideError::SelfApproval)
        ));
        assert!(matches!(
            apply_vote(&mut r, &dba("AGENT-1"), false, None, 1),
            Err(DecideError::SelfApproval)
        ));
        assert!(matches!(
            apply_vote(&mut r, &who("bob", &["dev"]), true, Some("x"), 1),
            Err(DecideError::NotInGroup(g)) if g == "dba"
        ));
        assert!(matches!(
            apply_vote(&mut r, &dba("bob"), true, Some("  "), 1),
            Err(DecideError::JustificationRequired)
        ));
        apply_vote(&mut r, &dba("bob"), true, Some("ok"), 1).unwrap();
        assert_eq!(r.status, Status::Pending);
        assert!(matches!(
            apply_vote(&mut r, &dba("Bob"), true, Some("ok"), 2),
            Err(DecideError::AlreadyVoted)
        ));
        apply_vote(&mut r, &dba("carol"), true, Some("ok"), 3).unwrap();
        assert_eq!((r.status, r.decided_ms), (Status::Approved, Some(3)));
        assert!(matches!(
            apply_vote(&mut r, &dba("dave"), false, None, 4),
            Err(DecideError::NotPending(Status::Approved))
        ));
        let mut r = req();
        assert!(matches!(
            apply_vote(&mut r, &dba("bob"), true, Some("ok"), 1_000),
            Err(DecideError::Expired)
        ));
        assert_eq!(r.status, Status::Expired);
    }

    #[test]
    fn list_sql_binds_in_order() {
        let f = ListFilter {
            status: Some(Status::Pending),
            principal: Some("a".into()),
            before: Some(ulid(5)),
            ..ListFilter::default()
        };
        let q = list_sql(Dialect::Postgres, &f, 7);
        assert!(q.text.contains("$6"), "{}", q.text);
        assert_eq!(q.vals.len(), 7);
        assert_eq!(
            serde_json::to_value(Status::BreakGlass).unwrap(),
            serde_json::json!("break_glass")
        );
    }
}
