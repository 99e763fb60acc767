//! What a session tells the audit trail: its start and end, and one event
//! per statement (or per refusal) with what analysis found, what policy
//! decided, what was masked and how much data moved. Recording never waits
//! for the store (see `sluice-audit`); values are never recorded, only the
//! normalized text and the names of tables and columns.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use sluice_audit::{Actor, AuditSink, Decision, EventBody, Lineage, MaskedColumn, Statement};
use sluice_identity::Principal;
use sluice_mask::MaskReport;
use sluice_sql::{Analysis, Kind};

/// What stays the same for every run of one statement text: cached with
/// its verdict, so a repeated statement costs nothing to describe.
#[derive(Debug, Default)]
pub struct StatementInfo {
    /// Fingerprint (equal for statements differing in constants; see
    /// `sluice_sql::fingerprint_and_normalize`).
    pub fingerprint: Arc<str>,
    /// The text with constants replaced by `$n`.
    pub normalized: Arc<str>,
    /// Kind of the (first) statement.
    pub kind: Arc<str>,
    /// Tables read.
    pub tables_read: Arc<[String]>,
    /// Tables written.
    pub tables_written: Arc<[String]>,
    /// Columns read.
    pub columns_read: Arc<[String]>,
    /// Columns written.
    pub columns_written: Arc<[String]>,
    /// Where the data written comes from (INSERT … SELECT, CREATE TABLE AS,
    /// UPDATE … FROM), or `copy_out` for COPY to the client.
    pub lineage: Option<(String, Vec<String>, Option<String>)>,
    /// Where the columns of each statement's result come from, for masking
    /// computed columns; `None` when no result column reads a table column.
    pub outputs: Option<Arc<ResultSources>>,
    /// Statements (by index) whose rows were computed by another one:
    /// `EXECUTE name` and `FETCH … name`.
    pub deferred: Vec<(usize, Deferred)>,
    /// Statements (by index) declaring a cursor, and its name.
    pub declares: Vec<(usize, String)>,
}

/// Where the rows of a statement were defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deferred {
    /// `EXECUTE name`: a prepared statement's.
    Execute(String),
    /// `FETCH … name`: a cursor's.
    Fetch(String),
}

/// Per statement of a query string, the sources of its result columns
/// (`None`: the statement returns no rows of its own).
pub type ResultSources = Vec<Option<Vec<sluice_sql::OutputColumn>>>;

impl StatementInfo {
    /// Describe a statement by its analysis (`None`: it could not be
    /// parsed). Literals never reach the description: only the normalized
    /// text is kept.
    pub fn of(analysis: Option<&Analysis>) -> StatementInfo {
        let Some(a) = analysis else {
            return StatementInfo {
                kind: "unparseable".into(),
                normalized: "(unparseable statement)".into(),
                ..StatementInfo::default()
            };
        };
        let (fingerprint, normalized) = (a.fingerprint.clone(), a.normalized.clone());
        let kind = match a.statements.as_slice() {
            [] => "empty".to_owned(),
            [one] => one.kind.map_or("other", Kind::as_str).to_owned(),
            many => many
                .iter()
                .map(|s| s.kind.map_or("other", Kind::as_str))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(","),
        };
        let read: Vec<String> = a.tables_read().into_iter().collect();
        let written: Vec<String> = a.tables_written().into_iter().collect();
        let lineage = lineage_of(a, &read, &written);
        let reads_columns = a.statements.iter().any(|s| {
            s.outputs
                .as_ref()
                .is_some_and(|o| o.iter().any(|c| !c.sources.is_empty()))
        });
        let outputs = reads_columns.then(|| {
            Arc::new(
                a.statements
                    .iter()
                    .map(|s| s.outputs.clone())
                    .collect::<ResultSources>(),
            )
        });
        let deferred = a
            .statements
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match (&s.executes, &s.fetches) {
                (Some(name), _) => Some((i, Deferred::Execute(name.clone()))),
                (_, Some(name)) => Some((i, Deferred::Fetch(name.clone()))),
                _ => None,
            })
            .collect();
        let declares = a
            .statements
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.declares.clone()?)))
            .collect();
        StatementInfo {
            fingerprint: fingerprint.into(),
            normalized: normalized.into(),
            kind: kind.into(),
            columns_read: a.columns_read().into_iter().collect(),
            columns_written: a.columns_written().into_iter().collect(),
            tables_read: read.into(),
            tables_written: written.into(),
            lineage,
            outputs,
            deferred,
            declares,
        }
    }
}

/// (kind, sources, destination; `None` destination means "the client").
fn lineage_of(
    a: &Analysis,
    read: &[String],
    written: &[String],
) -> Option<(String, Vec<String>, Option<String>)> {
    let first = a.statements.first()?;
    if first.copy_out.is_some() {
        return Some(("copy_out".into(), read.to_vec(), None));
    }
    let sources: Vec<String> = read
        .iter()
        .filter(|t| !written.contains(t))
        .cloned()
        .collect();
    if sources.is_empty() || written.len() != 1 {
        return None;
    }
    let kind = match first.kind? {
        Kind::Insert => "insert_select",
        Kind::Update => "update_from",
        Kind::Ddl => "create_table_as",
        _ => return None,
    };
    Some((kind.into(), sources, written.first().cloned()))
}

/// A statement sent upstream, waiting for its outcome.
#[derive(Debug)]
pub struct PendingAudit {
    /// What the statement is.
    pub info: Arc<StatementInfo>,
    /// When it was sent.
    pub started: Instant,
    /// Its text with literals, only when `[audit] log_literals` is on.
    pub text: Option<std::sync::Arc<str>>,
    /// The approval request it runs under.
    pub approval_id: Option<String>,
    /// The application's trace context, from a sqlcommenter comment.
    pub traceparent: Option<crate::telemetry::TraceParent>,
}

/// How a statement ended, as the upstream loop saw it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rows sent to the client.
    pub rows_returned: u64,
    /// Rows inserted, updated, deleted or copied in.
    pub rows_affected: u64,
    /// Bytes of result data sent to the client.
    pub bytes_to_client: u64,
    /// SQLSTATE of the error it ended with.
    pub sqlstate: Option<String>,
    /// Refused after it ran (the rows-affected limit).
    pub refused_by: Option<String>,
}

/// The audit identity of one session, shared by its two loops.
pub struct SessionAudit {
    sink: AuditSink,
    /// Session id.
    pub session: Arc<str>,
    actor: Arc<Actor>,
    target: Arc<str>,
    environment: Arc<str>,
    /// Totals for the session-end event.
    pub totals: Totals,
    /// Process metrics (statements by kind and decision, latency).
    pub metrics: Option<std::sync::Arc<crate::Metrics>>,
    /// Span exporter (`[telemetry]`).
    pub tracer: Option<std::sync::Arc<crate::telemetry::Tracer>>,
}

impl SessionAudit {
    /// For a session of `principal` on `target`.
    pub fn new(sink: AuditSink, principal: &Principal, target: &sluice_config::Target) -> Self {
        let session = format!("{:016x}", rand::random::<u64>());
        SessionAudit {
            sink,
            session: session.into(),
            actor: Arc::new(actor(principal)),
            target: target.name.as_str().into(),
            environment: target.environment.as_str().into(),
            totals: Totals::default(),
            metrics: None,
            tracer: None,
        }
    }

    /// Send a span for a statement, if tracing is on and it is sampled.
    fn trace(
        &self,
        s: &Statement,
        started: Instant,
        parent: Option<&crate::telemetry::TraceParent>,
    ) {
        let Some(tracer) = &self.tracer else { return };
        if !tracer.sampled(parent) {
            return;
        }
        let mut span = tracer.span(parent, format!("{} {}", s.kind, s.target), started);
        let decision = match s.decision {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Approval => "approval",
        };
        span.attributes = vec![
            ("db.system", "postgresql".into()),
            ("db.name", s.target.to_string().into()),
            ("db.operation", s.kind.to_string().into()),
            ("db.statement", s.normalized.to_string().into()),
            ("enduser.id", s.principal.name.clone().into()),
            ("sluice.principal.kind", s.principal.kind.clone().into()),
            ("sluice.session", s.session.to_string().into()),
            ("sluice.environment", s.environment.to_string().into()),
            ("sluice.decision", decision.into()),
            ("sluice.fingerprint", s.fingerprint.to_string().into()),
            ("sluice.rows_returned", s.rows_returned.into()),
            ("sluice.rows_affected", s.rows_affected.into()),
            ("sluice.bytes_to_client", s.bytes_to_client.into()),
            ("sluice.masked_columns", (s.masked.len() as u64).into()),
        ];
        if let Some(p) = &s.principal.on_behalf_of {
            span.attributes
                .push(("sluice.on_behalf_of", p.clone().into()));
        }
        if let Some(r) = &s.rule {
            span.attributes.push(("sluice.rule", r.clone().into()));
        }
        if let Some(a) = &s.approval_id {
            span.attributes
                .push(("sluice.approval_id", a.clone().into()));
        }
        if let Some(code) = &s.sqlstate {
            span.attributes
                .push(("db.response.status_code", code.clone().into()));
            span.error = Some(match &s.rule {
                Some(r) => format!("{code}: refused by {r}"),
                None => code.clone(),
            });
        }
        tracer.record(span);
    }

    /// The sink.
    pub fn sink(&self) -> &AuditSink {
        &self.sink
    }

    /// Whether statements may run: under `fail_closed`, not while the
    /// audit trail cannot take their events.
    pub fn can_record(&self) -> bool {
        self.sink.check().is_ok()
    }

    fn record(&self, body: EventBody) {
        if let Err(e) = self.sink.record(body) {
            // One line per second at most: an overloaded writer must not
            // also flood the log.
            static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if LAST.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
                tracing::warn!(session = %self.session, error = %e, "audit events not recorded (counted in sluice_audit_refused_total / sluice_audit_dropped_total)");
            }
        }
    }

    /// Under `fail_closed`, wait while the audit writer is behind (up to
    /// `limit`), so statements slow down instead of running unrecorded.
    /// False when it is still behind after `limit`.
    pub async fn wait_for_room(&self, limit: std::time::Duration) -> bool {
        if !self.sink.congested() {
            return true;
        }
        let deadline = Instant::now() + limit;
        while self.sink.congested() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        true
    }

    fn statement(
        &self,
        info: &StatementInfo,
        decision: Decision,
        rule: Option<String>,
    ) -> Statement {
        Statement {
            session: self.session.clone(),
            principal: self.actor.clone(),
            target: self.target.clone(),
            environment: self.environment.clone(),
            fingerprint: info.fingerprint.clone(),
            normalized: info.normalized.clone(),
            text: None,
            kind: info.kind.clone(),
            decision,
            rule,
            approval_id: None,
            tables_read: info.tables_read.clone(),
            tables_written: info.tables_written.clone(),
            columns_read: info.columns_read.clone(),
            columns_written: info.columns_written.clone(),
            masked: Vec::new(),
            rows_returned: 0,
            rows_affected: 0,
            bytes_to_client: 0,
            duration_us: 0,
            sqlstate: None,
            lineage: None,
        }
    }

    /// A statement refused before it ran.
    pub fn refused(
        &self,
        info: &StatementInfo,
        held: bool,
        rule: &str,
        text: Option<&str>,
        trace: Option<&crate::telemetry::TraceParent>,
    ) {
        if let Some(m) = &self.metrics {
            m.statement(&info.kind, if held { "approval" } else { "deny" });
        }
        self.totals
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let decision = if held {
            Decision::Approval
        } else {
            Decision::Deny
        };
        let mut s = self.statement(info, decision, Some(rule.to_owned()));
        s.sqlstate = Some(if held { "SL001" } else { "42501" }.to_owned());
        s.text = text.map(str::to_owned);
        self.trace(&s, Instant::now(), trace);
        self.record(EventBody::Statement(s));
    }

    /// A statement held for (or refused pending) approval.
    pub fn refused_approval(
        &self,
        info: &StatementInfo,
        rule: &str,
        text: Option<&str>,
        id: Option<&str>,
        trace: Option<&crate::telemetry::TraceParent>,
    ) {
        if let Some(m) = &self.metrics {
            m.statement(&info.kind, "approval");
        }
        self.totals
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut s = self.statement(info, Decision::Approval, Some(rule.to_owned()));
        s.sqlstate = Some("SL001".to_owned());
        s.text = text.map(str::to_owned);
        s.approval_id = id.map(str::to_owned);
        self.trace(&s, Instant::now(), trace);
        self.record(EventBody::Statement(s));
    }

    /// An administrative step (approval requests and decisions, break-glass).
    pub fn admin(&self, action: &str, object: &str, outcome: &str, detail: Option<String>) {
        self.record(EventBody::Admin(sluice_audit::AdminAction {
            actor: (*self.actor).clone(),
            action: action.to_owned(),
            object: object.to_owned(),
            outcome: outcome.to_owned(),
            detail,
            environment: Some(self.environment.to_string()),
        }));
    }

    /// A statement that ran (or was refused after running).
    pub fn finished(&self, pending: &PendingAudit, outcome: Outcome, masked: &MaskReport) {
        if let Some(m) = &self.metrics {
            m.statement(
                &pending.info.kind,
                if outcome.refused_by.is_some() {
                    "deny"
                } else {
                    "allow"
                },
            );
            m.statement_seconds.observe(pending.started.elapsed());
            m.masked_values_total.fetch_add(
                masked.values_masked + masked.values_nulled,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        use std::sync::atomic::Ordering::Relaxed;
        self.totals.statements.fetch_add(1, Relaxed);
        self.totals.rows.fetch_add(outcome.rows_returned, Relaxed);
        self.totals
            .bytes_to_client
            .fetch_add(outcome.bytes_to_client, Relaxed);
        if outcome.refused_by.is_some() {
            self.totals.refused.fetch_add(1, Relaxed);
        }
        if self.tracer.is_none() && self.sink.discards() {
            return; // `[audit] enabled = false`: no event to build
        }
        let (decision, rule) = match outcome.refused_by {
            Some(rule) => (Decision::Deny, Some(rule)),
            None => (Decision::Allow, None),
        };
        let info = &pending.info;
        let mut s = self.statement(info, decision, rule);
        s.text = pending.text.as_deref().map(str::to_owned);
        s.approval_id = pending.approval_id.clone();
        s.rows_returned = outcome.rows_returned;
        s.rows_affected = outcome.rows_affected;
        s.bytes_to_client = outcome.bytes_to_client;
        s.duration_us = pending.started.elapsed().as_micros() as u64;
        s.sqlstate = outcome.sqlstate;
        if !masked.columns_masked.is_empty() {
            let detectors: Vec<&str> = masked.detectors().keys().map(|k| k.as_str()).collect();
            let detector = if detectors.is_empty() {
                "column".to_owned()
            } else {
                detectors.join(",")
            };
            s.masked = masked
                .columns_masked
                .iter()
                .map(|c| MaskedColumn {
                    column: as_written(c, &info.columns_read),
                    detector: detector.clone(),
                })
                .collect();
        }
        // Lineage only for what happened.
        if s.sqlstate.is_none() && s.decision == Decision::Allow {
            s.lineage = info.lineage.as_ref().map(|(kind, sources, dest)| Lineage {
                kind: kind.clone(),
                sources: sources.clone(),
                destination: dest
                    .clone()
                    .unwrap_or_else(|| format!("client:{}", self.actor.name)),
            });
        }
        self.trace(&s, pending.started, pending.traceparent.as_ref());
        self.record(EventBody::Statement(s));
    }

    /// The session began.
    pub fn started(
        &self,
        principal: &Principal,
        peer: std::net::SocketAddr,
        application_name: &str,
        tls: Option<(String, String)>,
    ) {
        self.record(EventBody::SessionStart(sluice_audit::SessionStart {
            session: self.session.to_string(),
            principal: (*self.actor).clone(),
            groups: principal.groups.clone(),
            method: principal.method.to_owned(),
            source: peer.to_string(),
            application_name: application_name.to_owned(),
            tls: match tls {
                Some((version, cipher)) => sluice_audit::TlsInfo { version, cipher },
                None => sluice_audit::TlsInfo::none(),
            },
            target: self.target.to_string(),
            environment: self.environment.to_string(),
        }));
    }

    /// The session ended.
    pub fn ended(&self, reason: String, duration_ms: u64) {
        let totals = &self.totals;
        self.record(EventBody::SessionEnd(sluice_audit::SessionEnd {
            session: self.session.to_string(),
            principal: (*self.actor).clone(),
            target: self.target.to_string(),
            environment: self.environment.to_string(),
            reason,
            duration_ms,
            statements: totals.statements.load(std::sync::atomic::Ordering::Relaxed),
            refused: totals.refused.load(std::sync::atomic::Ordering::Relaxed),
            rows: totals.rows.load(std::sync::atomic::Ordering::Relaxed),
            bytes_to_client: totals
                .bytes_to_client
                .load(std::sync::atomic::Ordering::Relaxed),
            bytes_from_client: totals
                .bytes_from_client
                .load(std::sync::atomic::Ordering::Relaxed),
        }));
    }
}

/// A masked column (`schema.table.column` from the catalog) named as the
/// statement named it (`table.column` unless it qualified the table), so
/// usage reports match reads and masking.
fn as_written(label: &str, columns_read: &[String]) -> String {
    let mut parts = label.splitn(2, '.');
    let (Some(_schema), Some(table_column)) = (parts.next(), parts.next()) else {
        return label.to_owned();
    };
    if !table_column.contains('.') {
        // A computed column: its field name.
        return label.to_owned();
    }
    if columns_read.iter().any(|c| c == label) {
        return label.to_owned();
    }
    if columns_read.iter().any(|c| c == table_column) {
        return table_column.to_owned();
    }
    label.to_owned()
}

/// Per-session totals for the session-end event.
#[derive(Debug, Default)]
pub struct Totals {
    /// Statements run.
    pub statements: std::sync::atomic::AtomicU64,
    /// Statements refused.
    pub refused: std::sync::atomic::AtomicU64,
    /// Rows returned.
    pub rows: std::sync::atomic::AtomicU64,
    /// Bytes to the client.
    pub bytes_to_client: std::sync::atomic::AtomicU64,
    /// Bytes from the client.
    pub bytes_from_client: std::sync::atomic::AtomicU64,
}

/// The audit actor of a principal.
pub fn actor(p: &Principal) -> Actor {
    Actor {
        name: p.name.clone(),
        kind: p.kind.as_str().to_owned(),
        on_behalf_of: p.on_behalf_of.clone(),
    }
}
