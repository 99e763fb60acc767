//! The client side of a session's statements: what each client message is,
//! what the server will answer to it (queued in [`Flight`]), which prepared
//! statements and portals exist, and which messages need more than
//! forwarding (a refusal, or the rows-affected guard).
//!
//! Prepared statements made by Parse and by SQL `PREPARE` share one
//! namespace on the server, so they share one map here.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use sluice_sql::RowsEffect;
use sluice_wire::frame::Reader;
use sluice_wire::messages::{bind, describe, execute};
use sluice_wire::tags::frontend as tag;

use crate::audit::{PendingAudit, SessionAudit, StatementInfo};
use crate::flight::{Awaiting, Expect, Flight};
use crate::guard::{parse_message, query_message, Guard, Verdict};
use crate::masking::CopyPlan;

/// Most prepared statements one session may hold.
const MAX_PREPARED: usize = 100_000;
/// Above this many portals, those whose transaction has ended are dropped.
const PORTAL_SWEEP: usize = 256;

/// What the loop must do with a client message.
pub enum Step {
    /// Forward it as it is.
    Forward,
    /// Send this instead (a refusal marker).
    Replace(Bytes),
    /// A simple Query under the rows-affected guard.
    GuardedQuery,
    /// An Execute under the rows-affected guard.
    GuardedExecute,
    /// Send these bytes first, then the message.
    Prefix(Bytes),
    /// A `COPY … TO STDOUT` whose data must be masked: its columns are
    /// probed first.
    CopyOut(sluice_sql::CopyOut),
    /// The Parse (of this statement name) of such a COPY.
    CopyOutParse(String, sluice_sql::CopyOut),
    /// The caller's token has expired: the session ends.
    Expired,
    /// It needs approval before it runs.
    Approval(ApprovalStep),
}

/// A statement waiting for approval.
pub struct ApprovalStep {
    /// What approval it needs.
    pub need: Arc<crate::guard::ApprovalNeed>,
    /// Its full text (approvers see it).
    pub text: String,
    /// For a Parse: the statement name.
    pub parse: Option<String>,
}

/// What Sluice knows of a prepared statement.
#[derive(Debug, Clone, Default)]
struct Prepared {
    rows: RowsEffect,
    /// Its text, kept only when the audit trail records literals.
    text: Option<Arc<str>>,
    /// What it is, for the audit record of each execution.
    info: Arc<StatementInfo>,
    /// For a `COPY … TO STDOUT`: how to mask its data.
    copy: Option<Arc<CopyPlan>>,
}

#[derive(Debug, Clone)]
struct Portal {
    rows: RowsEffect,
    text: Option<Arc<str>>,
    info: Arc<StatementInfo>,
    copy: Option<Arc<CopyPlan>>,
    /// The client described it since it was bound (so its columns are known).
    described: bool,
    /// Sync points sent before it was bound: once the server has reported
    /// an idle transaction after more than these, the portal is gone.
    bound_after: u64,
}

/// Per-session statement state, owned by the client-to-upstream loop.
pub struct Statements<'a> {
    /// The policy guard.
    pub guard: Guard<'a>,
    /// The queue shared with the upstream loop.
    pub flight: Flight,
    /// Rows one UPDATE/DELETE may change (0: unlimited).
    pub rows_limit: u64,
    prepared: HashMap<String, Prepared>,
    /// Extended-protocol messages were sent since the last Sync.
    segment_open: bool,
    portals: HashMap<String, Portal>,
    /// Sync points (Sync, Query, FunctionCall) pushed so far.
    syncs: u64,
    /// Entries for messages not yet written; pushed before the write.
    pending: Vec<Expect>,
    /// Results are masked: every Execute must have its portal described.
    pub masking: bool,
    /// The target's catalog cache, cleared when DDL passes.
    pub catalog: Option<Arc<crate::catalog::Catalog>>,
    /// A Describe Sluice adds before the next Execute.
    prefix: Option<Bytes>,
    /// The session's audit record.
    pub audit: Option<Arc<SessionAudit>>,
    /// The audit record waiting for the entry of the statement just judged.
    next_audit: Option<Box<PendingAudit>>,
    /// What the statement just judged is.
    last_info: Arc<StatementInfo>,
    /// The portal of the guarded Execute being run.
    pub guarded_portal: String,
    /// `[audit] log_literals`: keep statement texts for the audit trail.
    pub log_literals: bool,
    /// `[telemetry]` is on: look for a `traceparent` in statements.
    pub tracing: bool,
    /// The `traceparent` of the last statement text seen.
    last_traceparent: Option<crate::telemetry::TraceParent>,
    /// `[masking] unmaskable = "refuse"`.
    pub refuse_unmaskable: bool,
    /// Statements that need approval become approval requests (else they
    /// are refused with SL001).
    pub approvals: bool,
    /// The text of the statement just judged, when literals are logged.
    last_text: Option<Arc<str>>,
}

impl<'a> Statements<'a> {
    /// State for a new session.
    pub fn new(guard: Guard<'a>, rows_limit: u64) -> Self {
        Statements {
            guard,
            flight: Flight::default(),
            rows_limit,
            prepared: HashMap::new(),
            segment_open: false,
            portals: HashMap::new(),
            syncs: 0,
            pending: Vec::new(),
            masking: false,
            catalog: None,
            prefix: None,
            audit: None,
            next_audit: None,
            last_info: Arc::default(),
            guarded_portal: String::new(),
            log_literals: false,
            tracing: false,
            last_traceparent: None,
            refuse_unmaskable: false,
            approvals: false,
            last_text: None,
        }
    }

    /// Queue the entries of every message handled so far; call right before
    /// writing them upstream.
    pub fn commit(&mut self) {
        if !self.pending.is_empty() {
            self.flight.push(self.pending.drain(..));
        }
    }

    /// Queue an entry now (for messages Sluice writes itself).
    pub fn expect(&mut self, e: Expect) {
        self.pending.push(e);
    }

    /// Look at one complete client message (`msg` includes the header).
    pub fn on_message(&mut self, t: u8, msg: &[u8]) -> Step {
        let body = &msg[5..];
        if matches!(
            t,
            tag::QUERY | tag::PARSE | tag::FUNCTION_CALL | tag::EXECUTE
        ) && self
            .guard
            .principal()
            .must_end(std::time::SystemTime::now())
        {
            return Step::Expired;
        }
        let open = self.segment_open;
        self.segment_open = match t {
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE => true,
            tag::SYNC => false,
            _ => open,
        };
        if matches!(
            t,
            tag::QUERY | tag::PARSE | tag::FUNCTION_CALL | tag::EXECUTE
        ) && self.audit.as_ref().is_some_and(|a| !a.can_record())
        {
            return self.audit_unavailable(t, body);
        }
        if t == tag::PARSE {
            // Whether this Parse starts a pipeline is what matters for it.
            let step = self.parse(body, open);
            return step;
        }
        match t {
            tag::QUERY => self.query(body),
            tag::BIND => {
                let (portal, prepared) = match bind::decode(body) {
                    Ok(b) => (
                        b.portal.to_owned(),
                        self.prepared.get(b.statement).cloned().unwrap_or_default(),
                    ),
                    // The server will reject it; nothing is bound.
                    Err(_) => {
                        self.pending.push(Expect::client(Awaiting::Bind));
                        return Step::Forward;
                    }
                };
                self.sweep_portals();
                self.pending
                    .push(Expect::for_portal(Awaiting::Bind, &portal));
                self.portals.insert(
                    portal,
                    Portal {
                        rows: prepared.rows,
                        text: prepared.text,
                        info: prepared.info,
                        copy: prepared.copy,
                        described: false,
                        bound_after: self.syncs,
                    },
                );
                Step::Forward
            }
            tag::DESCRIBE => {
                let e = match describe::decode(body) {
                    Ok(describe::Target::Statement(_)) => {
                        Expect::client(Awaiting::DescribeStatement)
                    }
                    Ok(describe::Target::Portal(name)) => {
                        if let Some(p) = self.portals.get_mut(name) {
                            p.described = true;
                        }
                        Expect::for_portal(Awaiting::DescribePortal, name)
                    }
                    // Malformed: the server answers with an error.
                    Err(_) => Expect::client(Awaiting::DescribePortal),
                };
                self.pending.push(e);
                Step::Forward
            }
            tag::EXECUTE => {
                let portal = execute::decode(body).map(|(p, _)| p).unwrap_or("");
                let (rows, described, info, text) = self
                    .portals
                    .get_mut(portal)
                    .map(|p| {
                        (
                            p.rows,
                            std::mem::replace(&mut p.described, true),
                            p.info.clone(),
                            p.text.clone(),
                        )
                    })
                    .unwrap_or_default();
                self.last_text = text;
                self.will_run(&info);
                // The columns of what it returns must be known to mask
                // them: describe the portal if the client did not.
                let prefix = (self.masking && !described).then(|| {
                    self.pending
                        .push(Expect::for_portal(Awaiting::DescribePortal, portal).by_sluice());
                    describe::encode_describe_portal(portal)
                });
                if self.rows_limit > 0 && rows == RowsEffect::Countable {
                    // The runner queues the Execute's entry itself.
                    self.prefix = prefix;
                    portal.clone_into(&mut self.guarded_portal);
                    return Step::GuardedExecute;
                }
                let copy = self.portals.get(portal).and_then(|p| p.copy.clone());
                let audit = self.next_audit.take();
                self.pending.push(Expect {
                    copy,
                    audit,
                    ..Expect::for_portal(Awaiting::Execute, portal)
                });
                match prefix {
                    Some(p) => Step::Prefix(p),
                    None => Step::Forward,
                }
            }
            tag::CLOSE => {
                let e = match describe::decode(body) {
                    Ok(describe::Target::Statement(name)) => {
                        self.prepared.remove(name);
                        Expect::client(Awaiting::Close)
                    }
                    Ok(describe::Target::Portal(name)) => {
                        self.portals.remove(name);
                        Expect::for_portal(Awaiting::Close, name)
                    }
                    Err(_) => Expect::client(Awaiting::Close),
                };
                self.pending.push(e);
                Step::Forward
            }
            tag::SYNC => {
                self.syncs += 1;
                self.pending.push(Expect::client(Awaiting::Sync));
                Step::Forward
            }
            tag::FUNCTION_CALL => {
                self.syncs += 1;
                match self.guard.judge_function_call() {
                    Verdict::Allow(a) => {
                        self.will_run(&a.info);
                        let e = self.client_entry(Awaiting::FunctionCall);
                        self.pending.push(e);
                        Step::Forward
                    }
                    Verdict::Refuse {
                        error,
                        held,
                        rule,
                        info,
                        ..
                    } => {
                        let marker = self.refused(info, error, held, &rule);
                        self.pending.push(Expect::client(Awaiting::Query));
                        Step::Replace(query_message(&marker))
                    }
                }
            }
            // Flush, COPY data and Terminate get no answer of their own.
            _ => Step::Forward,
        }
    }

    fn query(&mut self, body: &[u8]) -> Step {
        self.syncs += 1;
        // A simple query drops the unnamed statement and portal.
        self.prepared.remove("");
        self.portals.remove("");
        let text = match Reader::new(body, "Query").cstr() {
            Ok(q) => q.as_bytes(),
            // Not a valid string: judged as unparseable.
            Err(_) => b"\xff",
        };
        self.keep_text(text);
        let allowed = match self.guard.judge_text(text) {
            Verdict::Allow(a) => a,
            Verdict::Refuse {
                info,
                approval: Some(need),
                ..
            } if self.approvals => {
                self.last_info = info;
                return Step::Approval(ApprovalStep {
                    need,
                    text: String::from_utf8_lossy(text).into_owned(),
                    parse: None,
                });
            }
            Verdict::Refuse {
                error,
                held,
                rule,
                info,
                ..
            } => {
                let marker = self.refused(info, error, held, &rule);
                self.pending.push(Expect::client(Awaiting::Query));
                return Step::Replace(query_message(&marker));
            }
        };
        self.will_run(&allowed.info);
        let mut rows = allowed.rows;
        for name in &allowed.executes {
            rows = rows.and(self.prepared.get(name).map(|p| p.rows).unwrap_or_default());
        }
        if self.rows_limit > 0 && rows != RowsEffect::None {
            if let Some(marker) = self.uncheckable(rows, allowed.controls_transactions) {
                self.pending.push(Expect::client(Awaiting::Query));
                return Step::Replace(query_message(&marker));
            }
        }
        if self.masking && !allowed.copy_out.is_empty() {
            match (allowed.copy_out.len(), allowed.copy_out.first()) {
                (1, Some(copy)) => {
                    self.remember(&allowed);
                    return Step::CopyOut(copy.clone());
                }
                _ => {
                    let marker = self.refuse_own(
                        "masking",
                        "COPY … TO STDOUT must be sent on its own (one statement) for its data to be masked",
                        "send the COPY as a query string of its own",
                    );
                    self.pending.push(Expect::client(Awaiting::Query));
                    return Step::Replace(query_message(&marker));
                }
            }
        }
        self.remember(&allowed);
        if self.rows_limit > 0 && rows == RowsEffect::Countable {
            return Step::GuardedQuery;
        }
        let e = self.client_entry(Awaiting::Query);
        self.pending.push(e);
        Step::Forward
    }

    fn parse(&mut self, body: &[u8], segment_open: bool) -> Step {
        let mut r = Reader::new(body, "Parse");
        let (name, text) = match (r.cstr(), r.cstr()) {
            (Ok(name), Ok(q)) => (name, q.as_bytes()),
            // Malformed: the server will reject it.
            _ => {
                self.pending.push(Expect::client(Awaiting::Parse));
                return Step::Forward;
            }
        };
        let name = name.to_owned();
        self.keep_text(text);
        let refuse = |this: &mut Self, marker: String| {
            this.prepared.remove(&name);
            this.pending.push(Expect::client(Awaiting::Parse));
            Step::Replace(parse_message(&name, &marker))
        };
        let allowed = match self.guard.judge_text(text) {
            Verdict::Allow(a) => a,
            Verdict::Refuse {
                info,
                approval: Some(need),
                ..
            } if self.approvals => {
                self.last_info = info;
                return Step::Approval(ApprovalStep {
                    need,
                    text: String::from_utf8_lossy(text).into_owned(),
                    parse: Some(name),
                });
            }
            Verdict::Refuse {
                error,
                held,
                rule,
                info,
                ..
            } => {
                let marker = self.refused(info, error, held, &rule);
                return refuse(self, marker);
            }
        };
        // Each execution is audited, not the Parse.
        self.last_info = allowed.info.clone();
        if self.rows_limit > 0 && allowed.rows != RowsEffect::None {
            if let Some(marker) = self.uncheckable(allowed.rows, allowed.controls_transactions) {
                return refuse(self, marker);
            }
        }
        if self.masking && !allowed.copy_out.is_empty() && segment_open {
            let marker = self.refuse_own(
                "masking",
                "the data of COPY … TO STDOUT can be masked only when its Parse starts a pipeline (right after a Sync)",
                "prepare the COPY on its own, or send it as a simple query",
            );
            return refuse(self, marker);
        }
        if !name.is_empty()
            && self.prepared.len() >= MAX_PREPARED
            && !self.prepared.contains_key(&name)
        {
            let marker = self.refuse_own(
                "prepared-statement-limit",
                &format!("this session already holds {MAX_PREPARED} prepared statements"),
                "close (DEALLOCATE) prepared statements you no longer use",
            );
            return refuse(self, marker);
        }
        if allowed.changes_schema {
            if let Some(c) = &self.catalog {
                c.invalidate();
            }
        }
        if self.masking {
            if let Some(copy) = allowed.copy_out.first() {
                // Its columns are probed before the Parse goes on.
                return Step::CopyOutParse(name, copy.clone());
            }
        }
        self.prepared.insert(
            name,
            Prepared {
                rows: allowed.rows,
                text: self.last_text.clone(),
                info: allowed.info.clone(),
                copy: None,
            },
        );
        self.pending.push(Expect::client(Awaiting::Parse));
        Step::Forward
    }

    /// The marker of a refusal when the guard cannot count what `rows` changes.
    fn uncheckable(&mut self, rows: RowsEffect, controls_transactions: bool) -> Option<String> {
        let limit = self.rows_limit;
        let hint = "run each UPDATE or DELETE as a statement of its own (transaction control in separate statements)";
        if rows == RowsEffect::Uncountable {
            return Some(self.refuse_own(
                "rows-affected-limit",
                &format!("Sluice cannot count the rows this statement updates or deletes (a data-modifying WITH, COPY of a DELETE, EXPLAIN ANALYZE, an INSERT … SELECT … ON CONFLICT DO UPDATE), and this target allows at most {limit} per statement"),
                hint,
            ));
        }
        if controls_transactions {
            return Some(self.refuse_own(
                "rows-affected-limit",
                &format!("a query string that both controls transactions and updates or deletes rows cannot be checked against this target's limit of {limit} rows per statement"),
                hint,
            ));
        }
        None
    }

    /// The entry of the client's statement just judged, with its audit record.
    pub fn client_entry(&mut self, awaiting: Awaiting) -> Expect {
        Expect {
            audit: self.next_audit.take(),
            ..Expect::client(awaiting)
        }
    }

    fn will_run(&mut self, info: &Arc<StatementInfo>) {
        self.last_info = info.clone();
        let text = self.last_text.clone();
        self.next_audit = self.audit.as_ref().map(|_| {
            Box::new(PendingAudit {
                info: info.clone(),
                started: std::time::Instant::now(),
                text,
                approval_id: None,
                traceparent: self.last_traceparent,
            })
        });
    }

    fn keep_text(&mut self, text: &[u8]) {
        if self.tracing {
            self.last_traceparent = crate::telemetry::traceparent(text);
        }
        self.last_text = self
            .log_literals
            .then(|| Arc::from(String::from_utf8_lossy(text).as_ref()));
    }

    /// Record a refusal of the statement just judged in the audit trail.
    pub fn audit_refusal(&mut self, held: bool, rule: &str) {
        self.next_audit = None;
        if let Some(a) = &self.audit {
            a.refused(
                &self.last_info,
                held,
                rule,
                self.last_text.as_deref(),
                self.last_traceparent.as_ref(),
            );
        }
    }

    fn refused(
        &mut self,
        verdict_info: Arc<StatementInfo>,
        error: Bytes,
        held: bool,
        rule: &str,
    ) -> String {
        self.last_info = verdict_info;
        self.audit_refusal(held, rule);
        self.guard.refuse(error, held, rule)
    }

    /// Sluice's own refusal of the statement just judged, audited.
    fn refuse_own(&mut self, rule: &str, reason: &str, hint: &str) -> String {
        self.audit_refusal(false, rule);
        self.guard.refuse_with(rule, reason, hint)
    }

    /// The audit trail cannot take events and is set to fail closed: the
    /// statement is refused (as an ordinary error; the session goes on).
    fn audit_unavailable(&mut self, t: u8, body: &[u8]) -> Step {
        let e = sluice_wire::messages::ErrorResponse::new(
            sluice_wire::messages::Severity::Error,
            "53000",
            "sluice: refused because the audit trail cannot record it (its spool is full or failing)",
        )
        .hint("try again later; the administrator is alerted by sluice_audit_refused_total")
        .encode();
        if let Some(a) = &self.audit {
            a.sink().note_refused();
        }
        let marker = self.guard.refuse(e, false, "audit-unavailable");
        match t {
            tag::PARSE => {
                let name = Reader::new(body, "Parse").cstr().unwrap_or("").to_owned();
                self.prepared.remove(&name);
                self.pending.push(Expect::client(Awaiting::Parse));
                Step::Replace(parse_message(&name, &marker))
            }
            // In place of the Execute: a failing Parse of a name of Sluice's,
            // so the pipeline fails there and skips to its Sync.
            tag::EXECUTE => {
                self.pending.push(Expect::client(Awaiting::Parse));
                Step::Replace(parse_message("sluice_refused", &marker))
            }
            _ => {
                self.pending.push(Expect::client(Awaiting::Query));
                Step::Replace(query_message(&marker))
            }
        }
    }

    /// The statement of `step` was approved (request `id`): queue what its
    /// message expects, as for an allowed statement, and audit it with the id.
    pub fn approved(&mut self, step: &ApprovalStep, id: &str) {
        let allowed = step.need.allowed.clone();
        self.will_run(&allowed.info);
        if let Some(a) = self.next_audit.as_mut() {
            a.approval_id = Some(id.to_owned());
        }
        match &step.parse {
            Some(name) => {
                self.prepared.insert(
                    name.clone(),
                    Prepared {
                        rows: allowed.rows,
                        text: self.last_text.clone(),
                        info: allowed.info.clone(),
                        copy: None,
                    },
                );
                // Each execution is audited, not the Parse.
                self.next_audit = None;
                self.pending.push(Expect::client(Awaiting::Parse));
            }
            None => {
                self.remember(&allowed);
                let e = self.client_entry(Awaiting::Query);
                self.pending.push(e);
            }
        }
    }

    /// The statement of `step` may not run: refuse it with `error` (an
    /// ErrorResponse) and audit that.
    pub fn not_approved(&mut self, step: &ApprovalStep, error: Bytes, id: Option<&str>) -> Bytes {
        self.next_audit = None;
        if let Some(a) = &self.audit {
            a.refused_approval(
                &self.last_info,
                &step.need.rule,
                self.last_text.as_deref(),
                id,
                self.last_traceparent.as_ref(),
            );
        }
        let marker = self.guard.refuse(error, true, &step.need.rule);
        match &step.parse {
            Some(name) => {
                self.prepared.remove(name);
                self.pending.push(Expect::client(Awaiting::Parse));
                parse_message(name, &marker)
            }
            None => {
                self.pending.push(Expect::client(Awaiting::Query));
                query_message(&marker)
            }
        }
    }

    /// Record a probed COPY statement (its Parse is about to be sent).
    pub fn prepared_copy(
        &mut self,
        name: String,
        copy: Option<Arc<CopyPlan>>,
        replace_error: Option<Bytes>,
    ) {
        self.prepared.insert(
            name,
            Prepared {
                rows: RowsEffect::None,
                text: self.last_text.clone(),
                info: self.last_info.clone(),
                copy,
            },
        );
        self.pending.push(Expect {
            replace_error,
            ..Expect::client(Awaiting::Parse)
        });
    }

    /// The Describe to send before a guarded Execute, if one is needed.
    pub fn take_prefix(&mut self) -> Option<Bytes> {
        self.prefix.take()
    }

    /// Track what an allowed string does to prepared statements.
    fn remember(&mut self, allowed: &Arc<crate::guard::Allowed>) {
        if allowed.changes_schema {
            if let Some(c) = &self.catalog {
                c.invalidate();
            }
        }
        if allowed.deallocates_all {
            self.prepared.clear();
        }
        for name in &allowed.deallocates {
            self.prepared.remove(name);
        }
        for (name, rows) in &allowed.prepares {
            if self.prepared.len() < MAX_PREPARED {
                self.prepared.insert(
                    name.clone(),
                    Prepared {
                        rows: *rows,
                        text: None,
                        info: allowed.info.clone(),
                        copy: None,
                    },
                );
            }
        }
    }

    fn sweep_portals(&mut self) {
        if self.portals.len() < PORTAL_SWEEP {
            return;
        }
        let idle_through = self.flight.idle_through();
        self.portals.retain(|_, p| p.bound_after >= idle_through);
    }
}
