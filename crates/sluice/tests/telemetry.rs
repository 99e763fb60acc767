//! OpenTelemetry: every statement becomes a span exported over OTLP/HTTP
//! JSON, with Sluice's decision on it, joined to the application's trace
//! when the statement carries a sqlcommenter `traceparent`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The value of attribute `key` of an OTLP span, as text.
fn attribute(span: &Value, key: &str) -> Option<String> {
    span["attributes"].as_array()?.iter().find_map(|a| {
        (a["key"] == key).then(|| {
            let v = &a["value"];
            v["stringValue"]
                .as_str()
                .or(v["intValue"].as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        })
    })
}

#[test]
fn statements_become_spans_in_the_callers_trace() {
    let (collector, requests) = json_receiver("");
    let (_pg, sluice) = start_with(
        "",
        &format!("[telemetry]\notlp_endpoint = \"{collector}\"\nservice_name = \"sluice-test\"\n"),
    );
    let (ok, out, err) = psql(
        &sluice,
        "",
        &[
            "-c",
            "select 41 + 1 as answer /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/",
            "-c",
            "drop table if exists nothing_here",
        ],
    );
    assert!(ok || err.contains("drop"), "{out}{err}");

    // Collect spans until both statements are there.
    let mut spans: Vec<(Value, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while spans.len() < 2 && Instant::now() < deadline {
        let Ok(body) = requests.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        for rs in body["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for span in ss["spans"].as_array().unwrap() {
                    spans.push((rs["resource"].clone(), span.clone()));
                }
            }
        }
    }
    let select = spans
        .iter()
        .find(|(_, s)| attribute(s, "db.operation").as_deref() == Some("select"))
        .unwrap_or_else(|| panic!("no select span in {spans:?}"));
    let (resource, span) = select;
    assert_eq!(
        resource["attributes"][0]["value"]["stringValue"],
        "sluice-test"
    );
    // Joined to the application's trace, under its span.
    assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["name"], format!("select {TARGET}"));
    assert_eq!(attribute(span, "enduser.id").as_deref(), Some(USER));
    assert_eq!(attribute(span, "sluice.decision").as_deref(), Some("allow"));
    assert_eq!(
        attribute(span, "sluice.rows_returned").as_deref(),
        Some("1")
    );
    assert_eq!(attribute(span, "db.system").as_deref(), Some("postgresql"));
    let statement = attribute(span, "db.statement").unwrap();
    assert!(
        !statement.contains("41"),
        "literals stay out of spans: {statement}"
    );
    let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && end >= start);

    // A statement without a traceparent starts its own trace.
    let other = spans
        .iter()
        .find(|(_, s)| attribute(s, "db.operation").as_deref() != Some("select"))
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no second span in {spans:?}"));
    assert_ne!(other["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(other.get("parentSpanId").is_none());
    // The exporter counts a batch once the collector has answered.
    sluice_testkit::wait_until(Duration::from_secs(20), "exported spans counted", || {
        let metrics = ureq::get(format!("http://127.0.0.1:{}/metrics", sluice.http_port()))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_otlp_spans_exported_total ") && !l.ends_with(" 0"))
    });
}

#[test]
fn a_refused_statement_is_an_error_span_naming_the_rule() {
    let (collector, requests) = json_receiver("");
    let pg = PgServer::start();
    let config = format!(
        "{}{}{}[telemetry]\notlp_endpoint = \"{collector}\"\n",
        listen(""),
        target_in(
            "production",
            TARGET,
            &pg.addr(),
            sluice_testkit::SCRAM_USER,
            "disable"
        ),
        user(USER, PASSWORD),
    );
    let sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .start();
    let (ok, _, err) = psql(&sluice, "", &["-c", "drop table customers"]);
    assert!(!ok, "{err}");
    let body = requests.recv_timeout(Duration::from_secs(30)).unwrap();
    let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(attribute(span, "sluice.decision").as_deref(), Some("deny"));
    assert!(attribute(span, "sluice.rule").is_some(), "{span}");
    assert_eq!(span["status"]["code"], 2, "{span}");
}
