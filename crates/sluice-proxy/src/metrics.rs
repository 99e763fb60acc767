//! Counters for `/metrics`, rendered in Prometheus text format.
//!
//! Sessions add to these once per batch of messages, not per message.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted.
    pub connections_total: AtomicU64,
    /// Sessions now relaying.
    pub sessions_active: AtomicU64,
    /// Sessions that reached the relay.
    pub sessions_total: AtomicU64,
    /// Failed authentications.
    pub auth_failures_total: AtomicU64,
    /// Connections refused or failed before the relay.
    pub startup_failures_total: AtomicU64,
    /// Upstream connections that failed.
    pub upstream_errors_total: AtomicU64,
    /// Cancel requests received.
    pub cancel_requests_total: AtomicU64,
    /// Protocol violations by clients.
    pub protocol_errors_total: AtomicU64,
    /// Bytes from clients to upstreams.
    pub client_bytes_total: AtomicU64,
    /// Bytes from upstreams to clients.
    pub upstream_bytes_total: AtomicU64,
    /// Statements judged (misses of the session's verdict cache).
    pub statements_checked_total: AtomicU64,
    /// Statements parsed and analysed (judged statements whose analysis
    /// no other session had made).
    pub statements_analysed_total: AtomicU64,
    /// Statements refused by policy.
    pub statements_denied_total: AtomicU64,
    /// Statements refused because they need approval.
    pub statements_held_total: AtomicU64,
    /// The audit writer's counters, once it runs.
    audit: std::sync::OnceLock<std::sync::Arc<sluice_audit::Counters>>,
    /// Statements by kind and decision.
    statements: [[AtomicU64; DECISIONS.len()]; KINDS.len()],
    /// Seconds Sluice spent judging a statement (analysis and policy, or a cache hit).
    pub policy_seconds: Histogram,
    /// Seconds from a statement leaving Sluice to its last answer.
    pub statement_seconds: Histogram,
    /// Values masked (replaced or nulled) in results.
    pub masked_values_total: AtomicU64,
    /// Approval requests made.
    pub approval_requests_total: AtomicU64,
    /// Statements held now, waiting for approval.
    pub approvals_waiting: AtomicU64,
    /// Approval webhook messages that could not be delivered.
    pub webhook_failures_total: AtomicU64,
}

/// Statement kinds, as labels.
pub const KINDS: [&str; 13] = [
    "select",
    "insert",
    "update",
    "delete",
    "ddl",
    "drop",
    "truncate",
    "grant",
    "copy_out",
    "copy_in",
    "admin",
    "other",
    "unparseable",
];
/// Decisions, as labels.
pub const DECISIONS: [&str; 3] = ["allow", "deny", "approval"];

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
    1.0, 5.0,
];

/// A Prometheus histogram on atomics (no lock; a few adds per observation).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Record one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ns.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

impl Metrics {
    /// Add one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Count a statement by its kind (first kind of a `kind,kind` list) and decision.
    pub fn statement(&self, kind: &str, decision: &str) {
        let first = kind.split(',').next().unwrap_or("other");
        let k = KINDS.iter().position(|x| *x == first).unwrap_or(11);
        let d = DECISIONS.iter().position(|x| *x == decision).unwrap_or(0);
        self.statements[k][d].fetch_add(1, Relaxed);
    }

    /// Export the audit writer's counters too.
    pub fn set_audit(&self, counters: std::sync::Arc<sluice_audit::Counters>) {
        let _ = self.audit.set(counters);
    }

    /// Render all metrics.
    pub fn render(&self, draining: bool) -> String {
        let mut out = String::with_capacity(2048);
        let mut put = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        put(
            "sluice_connections_total",
            "counter",
            "Client connections accepted.",
            self.connections_total.load(Relaxed),
        );
        put(
            "sluice_sessions_active",
            "gauge",
            "Sessions relaying now.",
            self.sessions_active.load(Relaxed),
        );
        put(
            "sluice_sessions_total",
            "counter",
            "Sessions that reached the relay.",
            self.sessions_total.load(Relaxed),
        );
        put(
            "sluice_auth_failures_total",
            "counter",
            "Failed client authentications.",
            self.auth_failures_total.load(Relaxed),
        );
        put(
            "sluice_startup_failures_total",
            "counter",
            "Connections refused or failed before the relay.",
            self.startup_failures_total.load(Relaxed),
        );
        put(
            "sluice_upstream_errors_total",
            "counter",
            "Upstream connections that failed.",
            self.upstream_errors_total.load(Relaxed),
        );
        put(
            "sluice_cancel_requests_total",
            "counter",
            "Cancel requests received.",
            self.cancel_requests_total.load(Relaxed),
        );
        put(
            "sluice_protocol_errors_total",
            "counter",
            "Protocol violations by clients.",
            self.protocol_errors_total.load(Relaxed),
        );
        put(
            "sluice_client_bytes_total",
            "counter",
            "Bytes relayed from clients to upstreams.",
            self.client_bytes_total.load(Relaxed),
        );
        put(
            "sluice_upstream_bytes_total",
            "counter",
            "Bytes relayed from upstreams to clients.",
            self.upstream_bytes_total.load(Relaxed),
        );
        put(
            "sluice_statements_checked_total",
            "counter",
            "Statements judged by policy.",
            self.statements_checked_total.load(Relaxed),
        );
        put(
            "sluice_statements_analysed_total",
            "counter",
            "Statements parsed and analysed (the rest of those judged came from other sessions' analyses).",
            self.statements_analysed_total.load(Relaxed),
        );
        put(
            "sluice_statements_denied_total",
            "counter",
            "Statements refused by policy.",
            self.statements_denied_total.load(Relaxed),
        );
        put(
            "sluice_statements_held_total",
            "counter",
            "Statements refused because they need approval.",
            self.statements_held_total.load(Relaxed),
        );
        if let Some(a) = self.audit.get() {
            for (name, kind, help, v) in [
                (
                    "sluice_audit_queue_depth",
                    "gauge",
                    "Audit events waiting for the writer.",
                    &a.queue_depth,
                ),
                (
                    "sluice_audit_spool_bytes",
                    "gauge",
                    "Bytes of audit events in the spool, not yet in the store.",
                    &a.spool_bytes,
                ),
                (
                    "sluice_audit_events_total",
                    "counter",
                    "Audit events recorded.",
                    &a.recorded,
                ),
                (
                    "sluice_audit_dropped_total",
                    "counter",
                    "Audit events dropped (fail_open with a full spool).",
                    &a.dropped,
                ),
                (
                    "sluice_audit_refused_total",
                    "counter",
                    "Statements refused because the audit trail could not take them (fail_closed).",
                    &a.refused,
                ),
                (
                    "sluice_audit_store_errors_total",
                    "counter",
                    "Errors writing to the audit store.",
                    &a.store_errors,
                ),
                (
                    "sluice_audit_spool_failing",
                    "gauge",
                    "1 while the audit spool cannot be written (a full disk): its events wait in memory.",
                    &a.spool_failing,
                ),
                (
                    "sluice_audit_spool_errors_total",
                    "counter",
                    "Failed audit spool writes and fsyncs.",
                    &a.spool_errors,
                ),
                (
                    "sluice_audit_store_writes_total",
                    "counter",
                    "Batches of audit events written to the store (one transaction each).",
                    &a.store_writes,
                ),
                (
                    "sluice_audit_spooled_seq",
                    "gauge",
                    "Sequence number of the last audit event in the durable spool.",
                    &a.spooled_seq,
                ),
                (
                    "sluice_audit_stored_seq",
                    "gauge",
                    "Sequence number of the last audit event in the store.",
                    &a.stored_seq,
                ),
            ] {
                put(name, kind, help, v.load(Relaxed));
            }
        }
        put(
            "sluice_masked_values_total",
            "counter",
            "Result values masked (replaced or sent as NULL).",
            self.masked_values_total.load(Relaxed),
        );
        put(
            "sluice_approval_requests_total",
            "counter",
            "Approval requests made by this process.",
            self.approval_requests_total.load(Relaxed),
        );
        put(
            "sluice_approvals_waiting",
            "gauge",
            "Statements held now, waiting for approval.",
            self.approvals_waiting.load(Relaxed),
        );
        put(
            "sluice_approval_webhook_failures_total",
            "counter",
            "Approval webhook messages not delivered after three tries.",
            self.webhook_failures_total.load(Relaxed),
        );
        put(
            "sluice_draining",
            "gauge",
            "1 while shutting down.",
            u64::from(draining),
        );
        let _ = writeln!(
            out,
            "# HELP sluice_statements_total Statements by kind and decision.\n# TYPE sluice_statements_total counter"
        );
        for (k, kind) in KINDS.iter().enumerate() {
            for (d, decision) in DECISIONS.iter().enumerate() {
                let v = self.statements[k][d].load(Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "sluice_statements_total{{kind=\"{kind}\",decision=\"{decision}\"}} {v}"
                    );
                }
            }
        }
        self.policy_seconds.render(
            &mut out,
            "sluice_policy_seconds",
            "Time Sluice adds to judge a statement (analysis and policy, or a cached verdict).",
        );
        self.statement_seconds.render(
            &mut out,
            "sluice_statement_seconds",
            "Time from a statement leaving Sluice to its last answer from the database.",
        );
        out
    }
}
