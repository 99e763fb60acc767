//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use sluice_audit::chain::read_key_file;
use sluice_audit::event::*;
use sluice_audit::{AuditConfig, AuditWriter, ChainKeys};

/// A config for tests: small checkpoint interval, default SQLite store.
pub fn config() -> AuditConfig {
    AuditConfig {
        checkpoint_every: 10,
        ..AuditConfig::default()
    }
}

pub fn actor(name: &str, kind: &str) -> Actor {
    Actor {
        name: name.into(),
        kind: kind.into(),
        on_behalf_of: None,
    }
}

/// A statement event reading `users.email` (masked) and `users.id`.
pub fn statement(i: usize, who: &str, env: &str) -> EventBody {
    EventBody::Statement(Statement {
        session: format!("s{}", i % 3).into(),
        principal: actor(who, "human").into(),
        target: format!("app-{env}").into(),
        environment: env.into(),
        fingerprint: format!("fp{}", i % 5).into(),
        normalized: format!("SELECT id, email FROM users WHERE id = $1 /* {i} */").into(),
        text: Some(format!("SELECT id, email FROM users WHERE id = {i}")),
        kind: "select".into(),
        decision: Decision::Allow,
        tables_read: vec!["users".into()].into(),
        columns_read: vec!["users.id".into(), "users.email".into()].into(),
        masked: vec![MaskedColumn {
            column: "users.email".into(),
            detector: "email".into(),
        }],
        rows_returned: 1,
        bytes_to_client: 42,
        duration_us: 100,
        ..Statement::default()
    })
}

pub fn denied(who: &str) -> EventBody {
    EventBody::Statement(Statement {
        session: "s9".into(),
        principal: actor(who, "agent").into(),
        target: "app-production".into(),
        environment: "production".into(),
        fingerprint: "fpdrop".into(),
        normalized: "DROP TABLE users".into(),
        kind: "drop".into(),
        decision: Decision::Deny,
        rule: Some("no-drop-in-production".into()),
        tables_written: vec!["users".into()].into(),
        sqlstate: Some("42501".into()),
        ..Statement::default()
    })
}

pub fn session_start(who: &str) -> EventBody {
    EventBody::SessionStart(SessionStart {
        session: "s1".into(),
        principal: actor(who, "human"),
        groups: vec!["dev".into()],
        method: "scram-sha-256".into(),
        source: "127.0.0.1:5555".into(),
        application_name: "psql".into(),
        tls: TlsInfo::none(),
        target: "app-production".into(),
        environment: "production".into(),
    })
}

/// The single number a query on the store's file answers (`SELECT COUNT(*) …`).
pub fn number(s: &sluice_audit::SqliteStore, sql: &str) -> i64 {
    s.connection()
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Keys from the data dir's key file.
pub fn keys(data_dir: &Path) -> Vec<ChainKeys> {
    read_key_file(&data_dir.join("audit/initial.key")).expect("key file")
}

/// Record `n` statements and wait until they are stored.
pub fn write(w: &AuditWriter, n: usize, who: &str, env: &str) {
    let sink = w.sink();
    for i in 0..n {
        sink.record(statement(i, who, env)).expect("record");
    }
    sink.flush_blocking(true, Duration::from_secs(30))
        .expect("flush");
}

/// Poll until `f` holds (every 10 ms), panicking after `secs`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Make equal texts and lists of statements share one allocation, as the
/// proxy's do (they come from one analysis, cached with its verdict): the
/// writer then writes their bodies from shapes.
pub fn intern(events: &mut [EventBody]) {
    use std::collections::HashMap;
    use std::sync::Arc;
    let mut texts: HashMap<String, Arc<str>> = HashMap::new();
    let mut lists: HashMap<Vec<String>, Arc<[String]>> = HashMap::new();
    let mut text = |t: &mut Arc<str>| {
        *t = texts
            .entry(t.to_string())
            .or_insert_with(|| t.clone())
            .clone();
    };
    for e in events {
        if let EventBody::Statement(s) = e {
            text(&mut s.fingerprint);
            text(&mut s.normalized);
            text(&mut s.kind);
            for l in [
                &mut s.tables_read,
                &mut s.tables_written,
                &mut s.columns_read,
                &mut s.columns_written,
            ] {
                *l = lists.entry(l.to_vec()).or_insert_with(|| l.clone()).clone();
            }
        }
    }
}
