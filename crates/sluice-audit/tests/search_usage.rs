//! Search, export, usage and lineage on SQLite.

mod common;

use common::*;
use sluice_audit::event::*;
use sluice_audit::export::{export, Format};
use sluice_audit::usage::trace_lineage;
use sluice_audit::{AuditWriter, Decision, Query, SqliteStore, Store, UsageQuery};

fn lineage_stmt(
    who: &str,
    kind: &str,
    behalf: Option<&str>,
    sources: &[&str],
    dest: &str,
) -> EventBody {
    EventBody::Statement(Statement {
        session: "s7".into(),
        principal: std::sync::Arc::new(Actor {
            name: who.into(),
            kind: kind.into(),
            on_behalf_of: behalf.map(Into::into),
        }),
        target: "ml-production".into(),
        environment: "production".into(),
        fingerprint: "fplin".into(),
        normalized: format!("INSERT INTO {dest} SELECT * FROM {}", sources.join(", ")).into(),
        kind: "insert".into(),
        tables_read: sources.iter().map(|s| s.to_string()).collect(),
        tables_written: vec![dest.into()].into(),
        rows_affected: 10,
        lineage: Some(Lineage {
            kind: "insert_select".into(),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            destination: dest.into(),
        }),
        ..Statement::default()
    })
}

fn filled() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    let sink = w.sink();
    sink.record(session_start("alice")).unwrap();
    for i in 0..30 {
        sink.record(statement(i, "alice", "production")).unwrap();
    }
    for i in 0..5 {
        sink.record(statement(i, "bob", "development")).unwrap();
    }
    sink.record(denied("agent-7")).unwrap();
    sink.record(lineage_stmt(
        "etl",
        "service",
        None,
        &["raw.events", "public.users"],
        "staging_set",
    ))
    .unwrap();
    sink.record(lineage_stmt(
        "agent-7",
        "agent",
        Some("alice"),
        &["staging_set"],
        "training_set",
    ))
    .unwrap();
    sink.flush_blocking(true, std::time::Duration::from_secs(30))
        .unwrap();
    w.shutdown().unwrap();
    let s = SqliteStore::open(&dir.path().join("audit/audit.db")).unwrap();
    (dir, s)
}

#[test]
fn filters_text_and_cursor_pages() {
    let (_dir, mut s) = filled();
    let q = Query {
        principal: Some("alice".into()),
        kind: Some("statement".into()),
        limit: 7,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut q2 = q.clone();
    loop {
        let p = s.search(&q2).unwrap();
        assert!(p.rows.len() <= 7);
        seen.extend(p.rows.iter().map(|r| r.ulid.clone()));
        match p.next_cursor {
            Some(c) => q2.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first, no duplicates across pages");
    assert_eq!(s.count(&q).unwrap(), 30);

    let env = Query {
        environment: Some("development".into()),
        ..Default::default()
    };
    assert_eq!(s.search(&env).unwrap().rows.len(), 5);
    let deny = Query {
        decision: Some(Decision::Deny),
        ..Default::default()
    };
    let rows = s.search(&deny).unwrap().rows;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].principal, "agent-7");
    let session = Query {
        kind: Some("session".into()),
        ..Default::default()
    };
    assert_eq!(s.search(&session).unwrap().rows.len(), 1);
    // Column filters: `users.email`, or `email` on any table; tables match
    // with or without a schema.
    let col = Query {
        column: Some("users.email".into()),
        ..Default::default()
    };
    assert_eq!(s.count(&col).unwrap(), 35);
    let col = Query {
        column: Some("email".into()),
        environment: Some("development".into()),
        ..Default::default()
    };
    assert_eq!(s.count(&col).unwrap(), 5);
    let table = Query {
        table: Some("users".into()),
        ..Default::default()
    };
    assert_eq!(
        s.count(&table).unwrap(),
        37,
        "35 reads, the denied DROP, public.users as a source"
    );
    // Text: words from the normalized statement or names, no FTS syntax.
    let text = Query {
        text: Some("DROP users".into()),
        ..Default::default()
    };
    assert_eq!(s.count(&text).unwrap(), 1);
    let text = Query {
        text: Some("\"unbalanced OR (".into()),
        ..Default::default()
    };
    assert_eq!(s.count(&text).unwrap(), 0);
    let none = Query {
        since: Some(sluice_audit::util::now_ms() + 60_000),
        ..Default::default()
    };
    assert_eq!(s.count(&none).unwrap(), 0);
}

#[test]
fn export_streams_jsonl_and_csv() {
    let (_dir, mut s) = filled();
    let mut out = Vec::new();
    let mut last = 0;
    let n = export(
        &mut s,
        &Query::default(),
        Format::JsonLines,
        &mut out,
        &mut |k| last = k,
    )
    .unwrap();
    assert_eq!(n, 39);
    assert_eq!(last, 39);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 39);
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["ulid"].is_string() && v["event"]["code"].is_string());
    }
    let mut out = Vec::new();
    export(
        &mut s,
        &Query::default(),
        Format::Csv,
        &mut out,
        &mut |_| {},
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with(sluice_audit::export::CSV_HEADER));
    assert_eq!(
        text.lines().count(),
        40,
        "header + 39; no field has a raw newline"
    );
}

#[test]
fn who_read_a_column_and_where_data_came_from() {
    let (_dir, mut s) = filled();
    let rows = s
        .usage(&UsageQuery {
            table: Some("users".into()),
            column: Some("email".into()),
            environment: Some("production".into()),
            since: Some(sluice_audit::util::now_ms() - 30 * 86_400_000),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (
            rows[0].principal.as_str(),
            rows[0].masked,
            rows[0].reads,
            rows[0].rows
        ),
        ("alice", true, 30, 30)
    );
    let all = s
        .usage(&UsageQuery {
            column: Some("users.email".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 2);
    let tables = s
        .usage(&UsageQuery {
            principal: Some("alice".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(
        (tables[0].table.as_str(), tables[0].bytes),
        ("users", 30 * 42)
    );

    let edges = trace_lineage(&mut s, "training_set", 5).unwrap();
    assert_eq!(edges.len(), 3, "{edges:?}");
    assert_eq!(edges[0].destination, "training_set");
    assert_eq!(
        (
            edges[0].principal.as_str(),
            edges[0].principal_kind.as_str(),
            edges[0].on_behalf_of.as_str()
        ),
        ("agent-7", "agent", "alice")
    );
    assert!(edges
        .iter()
        .any(|e| e.source == "raw.events" && e.destination == "staging_set"));
}
