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
    /// Statements analysed and judged (cache misses included).
    pub statements_checked_total: AtomicU64,
    /// Statements refused by policy.
    pub statements_denied_total: AtomicU64,
    /// Statements refused because they need approval.
    pub statements_held_total: AtomicU64,
    /// The audit writer's counters, once it runs.
    audit: std::sync::OnceLock<std::sync::Arc<sluice_audit::Counters>>,
}

impl Metrics {
    /// Add one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
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
            "sluice_draining",
            "gauge",
            "1 while shutting down.",
            u64::from(draining),
        );
        out
    }
}
