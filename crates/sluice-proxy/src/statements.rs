//! The client side of a session's statements: what each client message is,
//! what the server will answer to it (queued in [`Flight`]), which prepared
//! statements and portals exist, and which messages need more than
//! forwarding (a refusal, or the rows-affected guard).
//!
//! Prepared statements made by Parse and by SQL `PREPARE` share one
//! namespace on the server, so they share one map here. Both maps follow the
//! server's answers, not the client's requests (see [`Names`]): a rejected
//! redefinition or removal must not change what an execution is judged as.

use std::sync::Arc;

use bytes::Bytes;
use sluice_sql::RowsEffect;
use sluice_wire::frame::Reader;
use sluice_wire::messages::{bind, describe, execute};
use sluice_wire::tags::frontend as tag;

use crate::audit::{Deferred, PendingAudit, SessionAudit, StatementInfo};
use crate::flight::{Awaiting, Change, Expect, Flight};
use crate::guard::{parse_message, query_message, Guard, PreparedChange, Verdict};
use crate::masking::CopyPlan;
use crate::names::Names;

/// Most prepared statements one session may hold, and most changes to
/// statements and portals it may have waiting for the server's answer.
const MAX_PREPARED: usize = 100_000;
/// The name of the failing Parse that stands in for a refused Bind or Execute.
const REFUSED: &str = "sluice_refused";
/// Above this many portals, those whose transaction has ended are dropped.
const PORTAL_SWEEP: usize = 256;
/// Cursors remembered per session for masking (the map starts over past this).
const MAX_CURSORS: usize = 1024;

/// What the loop must do with a client message.
pub enum Step {
    /// Forward it as it is.
    Forward,
    /// A message Sluice cannot decode (malformed, or a name or text that is
    /// not UTF-8): the session ends rather than forward what was not judged.
    Malformed(&'static str),
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
    /// Which statement of `info` it is (a SQL `PREPARE` in a longer string).
    at: usize,
}

#[derive(Debug, Clone)]
struct Portal {
    /// What its statement was when it was bound.
    of: Prepared,
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
    prepared: Names<Prepared>,
    /// Extended-protocol messages were sent since the last Sync.
    segment_open: bool,
    portals: Names<Portal>,
    /// The number of the last change to statements or portals.
    last_change: u64,
    /// The changes of the simple Query being judged, for its entry.
    query_changes: Vec<Change>,
    /// Changes the server has answered (reused buffer).
    resolved: Vec<(u64, bool)>,
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
    /// Cursors declared in this session, by the sources of their result
    /// columns (see [`StatementInfo::declares`]).
    cursors: std::collections::HashMap<String, Option<Vec<sluice_sql::OutputColumn>>>,
}

impl<'a> Statements<'a> {
    /// State for a new session.
    pub fn new(guard: Guard<'a>, rows_limit: u64) -> Self {
        Statements {
            guard,
            flight: Flight::default(),
            rows_limit,
            prepared: Names::default(),
            segment_open: false,
            portals: Names::default(),
            last_change: 0,
            query_changes: Vec::new(),
            resolved: Vec::new(),
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
            cursors: std::collections::HashMap::new(),
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
        self.follow_server();
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
                let Ok(b) = bind::decode(body) else {
                    return Step::Malformed("Bind");
                };
                let judged = judge(self.prepared.candidates(b.statement, self.syncs));
                if judged.mixed_copy || self.pending_changes() >= MAX_PREPARED {
                    // For the audit record of the refusal.
                    self.last_text = judged.of.text.clone();
                    self.last_info = judged.of.info.clone();
                    return if judged.mixed_copy {
                        self.refuse_ambiguous(tag::BIND)
                    } else {
                        self.refuse_backlog(tag::BIND)
                    };
                }
                self.sweep_portals();
                let id = self.next_change();
                self.portals.define(
                    b.portal,
                    Portal {
                        of: judged.of,
                        described: false,
                        bound_after: self.syncs,
                    },
                    id,
                    self.syncs,
                );
                self.pending.push(Expect {
                    changes: vec![Change::own(id)],
                    ..Expect::for_portal(Awaiting::Bind, b.portal)
                });
                Step::Forward
            }
            tag::DESCRIBE => {
                let e = match describe::decode(body) {
                    Ok(describe::Target::Statement(_)) => {
                        Expect::client(Awaiting::DescribeStatement)
                    }
                    Ok(describe::Target::Portal(name)) => {
                        self.portals
                            .candidates_mut(name, self.syncs, |p| p.described = true);
                        Expect {
                            outputs: self.portal_outputs(name),
                            ..Expect::for_portal(Awaiting::DescribePortal, name)
                        }
                    }
                    // Malformed: the server answers with an error.
                    Err(_) => return Step::Malformed("Describe"),
                };
                self.pending.push(e);
                Step::Forward
            }
            tag::EXECUTE => {
                let Ok((portal, _)) = execute::decode(body) else {
                    return Step::Malformed("Execute");
                };
                let segment = self.syncs;
                let judged = judge(self.portals.candidates(portal, segment).map(|p| &p.of));
                // Described only if whichever portal runs was described.
                let mut known = false;
                let described = self
                    .portals
                    .candidates(portal, segment)
                    .inspect(|_| known = true)
                    .all(|p| p.described)
                    && known;
                self.portals
                    .candidates_mut(portal, segment, |p| p.described = true);
                self.last_text = judged.of.text.clone();
                if judged.mixed_copy {
                    self.last_info = judged.of.info.clone();
                    return self.refuse_ambiguous(tag::EXECUTE);
                }
                self.will_run(&judged.of.info);
                let info = judged.of.info.clone();
                self.declare_cursors(&info, Some(judged.of.at));
                // The columns of what it returns must be known to mask
                // them: describe the portal if the client did not.
                let prefix = (self.masking && !described).then(|| {
                    self.pending.push(
                        Expect {
                            outputs: self.prepared_outputs(&judged.of),
                            ..Expect::for_portal(Awaiting::DescribePortal, portal)
                        }
                        .by_sluice(),
                    );
                    describe::encode_describe_portal(portal)
                });
                if self.rows_limit > 0 && judged.of.rows == RowsEffect::Countable {
                    // The runner queues the Execute's entry itself.
                    self.prefix = prefix;
                    portal.clone_into(&mut self.guarded_portal);
                    return Step::GuardedExecute;
                }
                let audit = self.next_audit.take();
                self.pending.push(Expect {
                    copy: judged.of.copy,
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
                        let changes = self.statement_removal(name);
                        Expect {
                            changes: changes.into_iter().collect(),
                            ..Expect::client(Awaiting::Close)
                        }
                    }
                    Ok(describe::Target::Portal(name)) => {
                        let changes = self.portal_removal(name);
                        Expect {
                            changes: changes.into_iter().collect(),
                            ..Expect::for_portal(Awaiting::Close, name)
                        }
                    }
                    Err(_) => return Step::Malformed("Close"),
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
        let mut mixed_copy = false;
        for name in &allowed.executes {
            // Statements this string prepares itself may be the ones run.
            let own: Vec<Prepared> = allowed
                .prepared
                .iter()
                .filter_map(|(at, c)| match c {
                    PreparedChange::Define(n, rows) if n == name => Some(Prepared {
                        rows: *rows,
                        info: allowed.info.clone(),
                        at: *at,
                        ..Prepared::default()
                    }),
                    _ => None,
                })
                .collect();
            let judged = judge(self.prepared.candidates(name, self.syncs).chain(&own));
            rows = rows.and(judged.of.rows);
            mixed_copy |= judged.mixed_copy;
        }
        if mixed_copy {
            return self.refuse_ambiguous(tag::QUERY);
        }
        let full = allowed.prepared.iter().any(
            |(_, c)| matches!(c, PreparedChange::Define(name, _) if !self.room_for_statement(name)),
        );
        if full {
            return self.refuse_backlog(tag::QUERY);
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
            _ => return Step::Malformed("Parse"),
        };
        let name = name.to_owned();
        self.keep_text(text);
        // A refused Parse changes nothing: its marker fails on the server.
        let refuse = |this: &mut Self, marker: String| {
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
        if !self.room_for_statement(&name) {
            let marker = self.backlog_marker();
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
        let e = self.define_statement(
            &name,
            Prepared {
                rows: allowed.rows,
                text: self.last_text.clone(),
                info: allowed.info.clone(),
                copy: None,
                at: 0,
            },
        );
        self.pending.push(e);
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
            changes: std::mem::take(&mut self.query_changes),
            outputs: self.outputs_of(&self.last_info.clone()),
            ..Expect::client(awaiting)
        }
    }

    /// The sources of the result columns of each statement of `info`, with
    /// those of `EXECUTE` and `FETCH` taken from the prepared statement or
    /// cursor that computes their rows.
    fn outputs_of(&self, info: &StatementInfo) -> Option<Arc<crate::audit::ResultSources>> {
        if info.deferred.is_empty() {
            return info.outputs.clone();
        }
        let mut all: crate::audit::ResultSources =
            info.outputs.as_deref().cloned().unwrap_or_default();
        for (i, d) in &info.deferred {
            let columns = match d {
                Deferred::Execute(name) => self
                    .prepared
                    .candidates(name, self.syncs)
                    .find_map(|p| p.info.outputs.as_ref()?.get(p.at)?.clone()),
                Deferred::Fetch(name) => self.cursors.get(name).cloned().flatten(),
            };
            if all.len() <= *i {
                all.resize(*i + 1, None);
            }
            all[*i] = columns;
        }
        all.iter().any(Option::is_some).then(|| Arc::new(all))
    }

    /// The sources of the result columns of prepared statement `p`, as
    /// those of a one-statement string.
    fn prepared_outputs(&self, p: &Prepared) -> Option<Arc<crate::audit::ResultSources>> {
        if !p.info.deferred.is_empty() {
            // a Parse of `FETCH …` or `EXECUTE …`
            return self.outputs_of(&p.info);
        }
        let all = p.info.outputs.as_ref()?;
        if p.at == 0 && all.len() == 1 {
            return Some(all.clone());
        }
        let one = all.get(p.at)?.clone()?;
        Some(Arc::new(vec![Some(one)]))
    }

    /// Remember the cursors `info` declares, by the sources of their
    /// columns (`FETCH` returns their rows later). `only`: the statement of
    /// `info` that runs (a portal's), else all of them.
    fn declare_cursors(&mut self, info: &StatementInfo, only: Option<usize>) {
        for (i, name) in &info.declares {
            if only.is_some_and(|o| o != *i) {
                continue;
            }
            if self.cursors.len() >= MAX_CURSORS {
                self.cursors.clear();
            }
            let columns = info
                .outputs
                .as_ref()
                .and_then(|o| o.get(*i).cloned().flatten());
            self.cursors.insert(name.clone(), columns);
        }
    }

    /// The sources of the result columns of portal `name`'s statement.
    fn portal_outputs(&self, name: &str) -> Option<Arc<crate::audit::ResultSources>> {
        let all: Vec<Option<Arc<crate::audit::ResultSources>>> = self
            .portals
            .candidates(name, self.syncs)
            .map(|p| self.prepared_outputs(&p.of))
            .collect();
        match all.as_slice() {
            [] => None,
            [one] => one.clone(),
            // which one runs depends on answers still to come: mask for all
            many => merged_sources(many.iter().flatten()),
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
        // A refused string changes no statement.
        for c in std::mem::take(&mut self.query_changes) {
            self.resolve(c.id, false);
        }
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
                self.pending.push(Expect::client(Awaiting::Parse));
                Step::Replace(parse_message(&name, &marker))
            }
            // In place of the Execute: a failing Parse of a name of Sluice's,
            // so the pipeline fails there and skips to its Sync.
            tag::EXECUTE => {
                self.pending.push(Expect::client(Awaiting::Parse));
                Step::Replace(parse_message(REFUSED, &marker))
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
                let e = self.define_statement(
                    name,
                    Prepared {
                        rows: allowed.rows,
                        text: self.last_text.clone(),
                        info: allowed.info.clone(),
                        copy: None,
                        at: 0,
                    },
                );
                // Each execution is audited, not the Parse.
                self.next_audit = None;
                self.pending.push(e);
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
        let e = self.define_statement(
            &name,
            Prepared {
                rows: RowsEffect::None,
                text: self.last_text.clone(),
                info: self.last_info.clone(),
                copy,
                at: 0,
            },
        );
        self.pending.push(Expect { replace_error, ..e });
    }

    /// The Describe to send before a guarded Execute, if one is needed.
    pub fn take_prefix(&mut self) -> Option<Bytes> {
        self.prefix.take()
    }

    /// Track what an allowed string does to prepared statements: pending
    /// changes, each confirmed by its statement's CommandComplete.
    fn remember(&mut self, allowed: &Arc<crate::guard::Allowed>) {
        if allowed.changes_schema {
            if let Some(c) = &self.catalog {
                c.invalidate();
            }
        }
        let segment = self.syncs;
        let mut changes = Vec::new();
        for (at, change) in &allowed.prepared {
            // Removing what is not known changes nothing.
            let known = match change {
                PreparedChange::Define(..) => true,
                PreparedChange::Remove(name) => self.prepared.contains(name),
                PreparedChange::RemoveAll => !self.prepared.is_empty(),
            };
            if !known {
                continue;
            }
            let id = self.next_change();
            match change {
                PreparedChange::Define(name, rows) => {
                    let p = Prepared {
                        rows: *rows,
                        text: None,
                        info: allowed.info.clone(),
                        copy: None,
                        at: *at,
                    };
                    self.prepared.define(name, p, id, segment);
                }
                PreparedChange::Remove(name) => self.prepared.remove(name, id, segment),
                PreparedChange::RemoveAll => self.prepared.clear(id),
            }
            changes.push(Change {
                id,
                statement: Some(*at),
            });
        }
        self.declare_cursors(&allowed.info, None);
        // A simple query drops the unnamed statement and portal (whatever
        // its statements do).
        changes.extend(self.statement_removal(""));
        changes.extend(self.portal_removal(""));
        self.query_changes = changes;
    }

    /// The entry of a Parse defining `name` as `p`.
    fn define_statement(&mut self, name: &str, p: Prepared) -> Expect {
        let id = self.next_change();
        self.prepared.define(name, p, id, self.syncs);
        Expect {
            changes: vec![Change::own(id)],
            ..Expect::client(Awaiting::Parse)
        }
    }

    /// The pending removal of statement `name`, if there is one to track.
    /// Untracked (over the bound), the old statement stays a candidate:
    /// stricter, never looser.
    fn statement_removal(&mut self, name: &str) -> Option<Change> {
        let room = self.pending_changes() < MAX_PREPARED;
        let id = self.last_change + 1;
        let change = track_removal(&mut self.prepared, name, room, id, self.syncs)?;
        self.last_change = id;
        Some(change)
    }

    /// The pending removal of portal `name` (as [`Self::statement_removal`]).
    fn portal_removal(&mut self, name: &str) -> Option<Change> {
        let room = self.pending_changes() < MAX_PREPARED;
        let id = self.last_change + 1;
        let change = track_removal(&mut self.portals, name, room, id, self.syncs)?;
        self.last_change = id;
        Some(change)
    }

    fn next_change(&mut self) -> u64 {
        self.last_change += 1;
        self.last_change
    }

    fn pending_changes(&self) -> usize {
        self.prepared.pending() + self.portals.pending()
    }

    /// Whether a definition of statement `name` fits the session's bounds.
    fn room_for_statement(&self, name: &str) -> bool {
        self.pending_changes() < MAX_PREPARED
            && (name.is_empty()
                || self.prepared.contains(name)
                || self.prepared.len() < MAX_PREPARED)
    }

    /// Apply what the server has answered about pending changes.
    fn follow_server(&mut self) {
        if self.pending_changes() == 0 {
            return;
        }
        let mut resolved = std::mem::take(&mut self.resolved);
        self.flight.take_resolved(&mut resolved);
        for &(id, confirmed) in &resolved {
            self.resolve(id, confirmed);
        }
        self.resolved = resolved;
    }

    fn resolve(&mut self, id: u64, confirmed: bool) {
        if !self.prepared.resolve(id, confirmed) {
            self.portals.resolve(id, confirmed);
        }
    }

    /// Refuse message `t` (Query, Bind or Execute) in place: a failing
    /// statement of Sluice's carries the refusal `marker`.
    fn refuse_in_place(&mut self, t: u8, marker: &str) -> Step {
        if t == tag::QUERY {
            self.pending.push(Expect::client(Awaiting::Query));
            Step::Replace(query_message(marker))
        } else {
            // A failing Parse: the pipeline fails there and skips to its Sync.
            self.pending.push(Expect::client(Awaiting::Parse));
            Step::Replace(parse_message(REFUSED, marker))
        }
    }

    /// A statement that may stand for COPYs masked differently, depending
    /// on which unanswered (re)definition the server accepted.
    fn refuse_ambiguous(&mut self, t: u8) -> Step {
        let marker = self.refuse_own(
            "masking",
            "the prepared statement or portal it uses was redefined or removed, and the server has not answered yet, so it is not known how its COPY data is to be masked",
            "deallocate (Close) the statement or portal and wait for the answer before defining it again",
        );
        self.refuse_in_place(t, &marker)
    }

    fn backlog_marker(&mut self) -> String {
        self.refuse_own(
            "prepared-statement-limit",
            &format!("this session already holds {MAX_PREPARED} prepared statements, or has as many definitions the server has not answered yet"),
            "close (DEALLOCATE) prepared statements you no longer use, and read the server's answers",
        )
    }

    fn refuse_backlog(&mut self, t: u8) -> Step {
        let marker = self.backlog_marker();
        self.refuse_in_place(t, &marker)
    }

    fn sweep_portals(&mut self) {
        if self.portals.len() < PORTAL_SWEEP {
            return;
        }
        let idle_through = self.flight.idle_through();
        self.portals.retain_held(|p| p.bound_after >= idle_through);
    }
}

/// What a name stands for, judged by the worst of its candidates.
struct Judged {
    /// The newest candidate, with the worst rows effect of them all
    /// (an unknown statement when there is none).
    of: Prepared,
    /// The candidates' COPY masking plans differ.
    mixed_copy: bool,
}

fn judge<'p>(candidates: impl Iterator<Item = &'p Prepared>) -> Judged {
    let mut of: Option<Prepared> = None;
    let mut mixed_copy = false;
    for c in candidates {
        of = Some(match of {
            None => c.clone(),
            Some(prev) => {
                mixed_copy |= !same_plan(prev.copy.as_ref(), c.copy.as_ref());
                Prepared {
                    rows: prev.rows.and(c.rows),
                    ..c.clone()
                }
            }
        });
    }
    Judged {
        of: of.unwrap_or_default(),
        mixed_copy,
    }
}

fn same_plan(a: Option<&Arc<CopyPlan>>, b: Option<&Arc<CopyPlan>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Track the removal of `name` as change `id`, when the name is known and
/// there is `room`.
fn track_removal<T>(
    names: &mut Names<T>,
    name: &str,
    room: bool,
    id: u64,
    segment: u64,
) -> Option<Change> {
    if !names.contains(name) || !room {
        return None;
    }
    names.remove(name, id, segment);
    Some(Change::own(id))
}

/// Statement by statement, column by column, the union of several
/// statements' result sources (the candidates of an unconfirmed portal).
fn merged_sources<'a>(
    all: impl Iterator<Item = &'a Arc<crate::audit::ResultSources>>,
) -> Option<Arc<crate::audit::ResultSources>> {
    let mut merged: crate::audit::ResultSources = Vec::new();
    for sources in all {
        for (i, statement) in sources.iter().enumerate() {
            if merged.len() <= i {
                merged.push(None);
            }
            let Some(columns) = statement else { continue };
            let into = merged[i].get_or_insert_with(Vec::new);
            for (k, c) in columns.iter().enumerate() {
                match into.get_mut(k) {
                    Some(have) => have.merge(c),
                    None => into.push(c.clone()),
                }
            }
        }
    }
    (!merged.is_empty()).then(|| Arc::new(merged))
}
