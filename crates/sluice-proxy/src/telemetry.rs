//! OpenTelemetry traces (`[telemetry]`): one span per statement, exported
//! as OTLP/HTTP JSON (`POST {endpoint}/v1/traces`) by a background thread in
//! batches. A statement that carries a W3C `traceparent` in a sqlcommenter
//! comment (`/*traceparent='00-…-…-01'*/`, as ORMs and OpenTelemetry SQL
//! instrumentations add) becomes a child of the application's span, so the
//! database call shows up in the application's trace with Sluice's
//! decision on it.
//!
//! Spans carry the normalized statement (no literals for DML), never the
//! full text. A full queue drops spans (counted), never blocks a session.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sluice_config::Telemetry;

/// Spans queued at most.
const QUEUE: usize = 8192;
/// Spans per export request at most.
const BATCH: usize = 512;

/// A W3C trace context taken from a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// The caller's span id (the parent of Sluice's span).
    pub span_id: [u8; 8],
    /// Sampled flag from the caller.
    pub sampled: bool,
}

fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    let bytes = sluice_audit::util::unhex(s)?;
    out.copy_from_slice(&bytes);
    Some(())
}

/// The `traceparent` of a sqlcommenter comment in `text`, if any and valid.
pub fn traceparent(text: &[u8]) -> Option<TraceParent> {
    const KEY: &[u8] = b"traceparent='";
    let at = text.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = text.get(at + KEY.len()..)?;
    let end = rest.iter().position(|&b| b == b'\'')?;
    let value = std::str::from_utf8(rest.get(..end)?).ok()?;
    // sqlcommenter URL-encodes values; a traceparent has nothing to encode.
    let mut parts = value.split('-');
    let (Some("00"), Some(trace), Some(span), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let mut tp = TraceParent {
        trace_id: [0; 16],
        span_id: [0; 8],
        sampled: false,
    };
    hex_into(trace, &mut tp.trace_id)?;
    hex_into(span, &mut tp.span_id)?;
    let mut f = [0u8; 1];
    hex_into(flags, &mut f)?;
    tp.sampled = f[0] & 1 == 1;
    if tp.trace_id == [0; 16] || tp.span_id == [0; 8] {
        return None;
    }
    Some(tp)
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// The trace it belongs to.
    pub trace_id: [u8; 16],
    /// Its id.
    pub span_id: [u8; 8],
    /// The application's span, when the statement carried one.
    pub parent: Option<[u8; 8]>,
    /// `<kind> <target>` (`select app-prod`).
    pub name: String,
    /// Start, ns since the epoch.
    pub start_ns: u64,
    /// End, ns since the epoch.
    pub end_ns: u64,
    /// Attributes.
    pub attributes: Vec<(&'static str, Value)>,
    /// The error it ended with (SQLSTATE or refusal), if any.
    pub error: Option<String>,
}

/// The exporter handle sessions record spans with.
#[derive(Debug)]
pub struct Tracer {
    tx: SyncSender<Span>,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans exported.
    pub exported: Arc<AtomicU64>,
    /// Export requests that failed.
    pub failed: Arc<AtomicU64>,
    ratio: f64,
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `started` (a monotonic instant) as ns since the epoch.
pub fn instant_to_unix_ns(started: Instant) -> u64 {
    let now = SystemTime::now();
    unix_ns(now).saturating_sub(started.elapsed().as_nanos() as u64)
}

impl Tracer {
    /// Start the export thread for `[telemetry]`.
    pub fn start(config: &Telemetry, instance: String) -> std::io::Result<Arc<Tracer>> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let exported = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let url = format!("{}/v1/traces", config.otlp_endpoint.trim_end_matches('/'));
        let resource = json!({ "attributes": [
            attr("service.name", json!(config.service_name)),
            attr("service.instance.id", json!(instance)),
            attr("service.version", json!(env!("CARGO_PKG_VERSION"))),
        ] });
        let headers = config.headers.clone();
        let (e, f) = (exported.clone(), failed.clone());
        std::thread::Builder::new()
            .name("sluice-otlp".into())
            .spawn(move || export_loop(rx, url, resource, headers, e, f))?;
        Ok(Arc::new(Tracer {
            tx,
            dropped: AtomicU64::new(0),
            exported,
            failed,
            ratio: config.sample_ratio,
        }))
    }

    /// Whether to record a span for a statement: a caller's sampled flag
    /// wins; otherwise `sample_ratio`.
    pub fn sampled(&self, parent: Option<&TraceParent>) -> bool {
        match parent {
            Some(p) => p.sampled,
            None => self.ratio >= 1.0 || rand::random::<f64>() < self.ratio,
        }
    }

    /// Queue a span; drops it (counted) when the exporter is behind.
    pub fn record(&self, span: Span) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A new span for a statement started at `started`, ending now.
    pub fn span(&self, parent: Option<&TraceParent>, name: String, started: Instant) -> Span {
        Span {
            trace_id: parent.map_or_else(rand::random, |p| p.trace_id),
            span_id: rand::random(),
            parent: parent.map(|p| p.span_id),
            name,
            start_ns: instant_to_unix_ns(started),
            end_ns: unix_ns(SystemTime::now()),
            attributes: Vec::new(),
            error: None,
        }
    }
}

fn attr(key: &str, value: Value) -> Value {
    let v = match value {
        Value::String(s) => json!({ "stringValue": s }),
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Number(n) if n.is_u64() || n.is_i64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n }),
        Value::Array(items) => {
            json!({ "arrayValue": { "values": items.into_iter().map(|i| json!({ "stringValue": i.as_str().unwrap_or_default() })).collect::<Vec<_>>() } })
        }
        other => json!({ "stringValue": other.to_string() }),
    };
    json!({ "key": key, "value": v })
}

fn span_json(s: &Span) -> Value {
    use sluice_audit::util::hex;
    let mut v = json!({
        "traceId": hex(&s.trace_id),
        "spanId": hex(&s.span_id),
        "name": s.name,
        "kind": 3, // SPAN_KIND_CLIENT: a call to the database
        "startTimeUnixNano": s.start_ns.to_string(),
        "endTimeUnixNano": s.end_ns.max(s.start_ns).to_string(),
        "attributes": s.attributes.iter().map(|(k, v)| attr(k, v.clone())).collect::<Vec<_>>(),
        "status": match &s.error {
            Some(m) => json!({ "code": 2, "message": m }),
            None => json!({ "code": 0 }),
        },
    });
    if let Some(p) = s.parent {
        v["parentSpanId"] = json!(hex(&p));
    }
    v
}

fn export_loop(
    rx: Receiver<Span>,
    url: String,
    resource: Value,
    headers: Vec<(String, String)>,
    exported: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut last_warning: Option<Instant> = None;
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(s) => s,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        // Gather what arrives within 200 ms, up to a batch.
        let deadline = Instant::now() + Duration::from_millis(200);
        while batch.len() < BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        let body = json!({ "resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{
                "scope": { "name": "sluice", "version": env!("CARGO_PKG_VERSION") },
                "spans": batch.iter().map(span_json).collect::<Vec<_>>(),
            }]
        }] });
        let mut request = agent.post(&url).header("content-type", "application/json");
        for (k, v) in &headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let result = request.send(body.to_string());
        match result {
            Ok(r) if r.status().is_success() => {
                exported.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            other => {
                failed.fetch_add(1, Ordering::Relaxed);
                let why = match other {
                    Ok(r) => format!("HTTP status {}", r.status().as_u16()),
                    Err(e) => e.to_string(),
                };
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(url = %url, error = %why, spans = batch.len(), "OTLP trace export failed; spans dropped");
                    last_warning = Some(Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_from_sqlcommenter() {
        let sql = b"select 1 /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',route='%2Fusers'*/";
        let tp = traceparent(sql).unwrap();
        assert_eq!(
            sluice_audit::util::hex(&tp.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sluice_audit::util::hex(&tp.span_id), "00f067aa0ba902b7");
        assert!(tp.sampled);
        assert!(traceparent(b"select 1").is_none());
        assert!(traceparent(b"/*traceparent='00-zz-00f067aa0ba902b7-01'*/").is_none());
        assert!(traceparent(
            b"/*traceparent='00-00000000000000000000000000000000-00f067aa0ba902b7-01'*/"
        )
        .is_none());
        assert!(traceparent(
            b"/*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )
        .is_none());
        let unsampled = traceparent(
            b"/*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00'*/",
        )
        .unwrap();
        assert!(!unsampled.sampled);
    }

    #[test]
    fn otlp_json_shape() {
        let s = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            name: "select app".into(),
            start_ns: 10,
            end_ns: 20,
            attributes: vec![
                ("db.system", json!("postgresql")),
                ("sluice.rows", json!(5)),
            ],
            error: Some("42501".into()),
        };
        let v = span_json(&s);
        assert_eq!(v["traceId"], "01010101010101010101010101010101");
        assert_eq!(v["parentSpanId"], "0303030303030303");
        assert_eq!(v["startTimeUnixNano"], "10");
        assert_eq!(v["attributes"][1]["value"]["intValue"], "5");
        assert_eq!(v["status"]["code"], 2);
    }
}
