//! Large batches: the writer takes thousands of events per batch, sums
//! usage per batch and shares search entries between statements of the same
//! shape. Everything must come out exactly as if each event were stored on
//! its own.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use sluice_audit::event::*;
use sluice_audit::usage::usage_deltas;
use sluice_audit::verify::{local_from_data_dir, verify};
use sluice_audit::{AuditConfig, AuditWriter, Query, SqliteStore, Store, UsageQuery};

/// Statement `i` of a varied mix: three principals (one acting for a
/// person), mixed-case names, masked columns, repeated columns, refusals
/// and failures (which do not count for usage), one statement with literal
/// text in ten.
fn varied(i: usize) -> EventBody {
    let who = ["alice", "bob", "etl"][i % 3];
    let (normalized, tables_read, tables_written, columns_read, columns_written) = match i % 5 {
        0 => (
            "SELECT id, email FROM Users WHERE id = $1",
            vec!["Users"],
            vec![],
            vec!["users.id", "Users.Email", "users.id"],
            vec![],
        ),
        1 => (
            "UPDATE orders SET total = $1 WHERE id = $2",
            vec![],
            vec!["orders"],
            vec!["orders.total", "orders.id"],
            vec!["orders.total"],
        ),
        2 => (
            "INSERT INTO app.audit_copy SELECT * FROM orders",
            vec!["orders"],
            vec!["app.audit_copy"],
            vec!["orders.*"],
            vec!["app.audit_copy.*"],
        ),
        3 => ("BEGIN", vec![], vec![], vec![], vec![]),
        _ => (
            "SELECT o.id, u.email FROM orders o JOIN users u ON u.id = o.user_id",
            vec!["orders", "users"],
            vec![],
            vec!["orders.id", "users.email", "orders.user_id", "users.id"],
            vec![],
        ),
    };
    let strings = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
    let masked = if columns_read
        .iter()
        .any(|c| c.eq_ignore_ascii_case("users.email"))
    {
        vec![MaskedColumn {
            column: "users.email".into(),
            detector: "email".into(),
        }]
    } else {
        Vec::new()
    };
    let (decision, sqlstate) = match i % 11 {
        7 => (Decision::Deny, Some("42501".to_string())),
        9 => (Decision::Allow, Some("57014".to_string())),
        _ => (Decision::Allow, None),
    };
    EventBody::Statement(Statement {
        session: format!("s{}", i % 4).into(),
        principal: std::sync::Arc::new(Actor {
            name: who.into(),
            kind: if who == "etl" { "agent" } else { "human" }.into(),
            on_behalf_of: (who == "etl").then(|| "carol".to_string()),
        }),
        target: "app-prod".into(),
        environment: if i.is_multiple_of(2) {
            "production"
        } else {
            "staging"
        }
        .into(),
        fingerprint: format!("fp{}", i % 5).into(),
        normalized: normalized.into(),
        text: i
            .is_multiple_of(10)
            .then(|| format!("{normalized} -- literal {i}")),
        kind: "select".into(),
        decision,
        rule: (decision == Decision::Deny).then(|| "no-orders".to_string()),
        tables_read: strings(tables_read).into(),
        tables_written: strings(tables_written).into(),
        columns_read: strings(columns_read).into(),
        columns_written: strings(columns_written).into(),
        masked,
        rows_returned: (i % 7) as u64,
        rows_affected: (i % 3) as u64,
        bytes_to_client: (i % 13) as u64 * 10,
        sqlstate,
        ..Statement::default()
    })
}

type Key = (String, String, String, String, String, bool);
type Sums = (i64, i64, i64, i64);

/// What usage must say: every event's deltas, summed.
fn expected_usage(events: &[EventBody]) -> BTreeMap<Key, Sums> {
    let mut want: BTreeMap<Key, Sums> = BTreeMap::new();
    for ev in events {
        let EventBody::Statement(s) = ev else {
            continue;
        };
        for d in usage_deltas(s, 0) {
            let w = want
                .entry((
                    d.principal,
                    d.on_behalf_of,
                    d.environment,
                    d.table,
                    d.column,
                    d.masked,
                ))
                .or_default();
            w.0 += d.reads;
            w.1 += d.writes;
            w.2 += d.rows;
            w.3 += d.bytes;
        }
    }
    want
}

/// Usage as the store reports it, for every table and column of `want`.
fn stored_usage(s: &mut SqliteStore, want: &BTreeMap<Key, Sums>) -> BTreeMap<Key, Sums> {
    let objects: std::collections::BTreeSet<(String, String)> =
        want.keys().map(|k| (k.3.clone(), k.4.clone())).collect();
    let mut got: BTreeMap<Key, Sums> = BTreeMap::new();
    for (table, column) in objects {
        let q = UsageQuery {
            table: Some(table.clone()),
            column: (!column.is_empty()).then(|| format!("{table}.{column}")),
            ..UsageQuery::default()
        };
        for r in s.usage(&q).unwrap() {
            // `users` also matches `public.users`: keep exact names only.
            if r.table != table {
                continue;
            }
            let g = got
                .entry((
                    r.principal,
                    r.on_behalf_of,
                    r.environment,
                    r.table,
                    r.column,
                    r.masked,
                ))
                .or_default();
            g.0 += r.reads;
            g.1 += r.writes;
            g.2 += r.rows;
            g.3 += r.bytes;
        }
    }
    got
}

/// The first 1,000 records of `chain`.
fn chain_records(s: &mut SqliteStore, chain: &str) -> Vec<Record> {
    s.read_chain(chain, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|r| r.record)
        .collect()
}

fn count(s: &mut SqliteStore, q: Query) -> u64 {
    s.count(&q).unwrap()
}

#[test]
fn a_large_batched_write_verifies_and_usage_and_search_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    // A queue deep enough for the whole burst, so the writer sees batches
    // of thousands.
    let cfg = AuditConfig {
        log_literals: true,
        queue_capacity: 32_768,
        ..AuditConfig::default()
    };
    let w = AuditWriter::start(&cfg, dir.path()).unwrap();
    let sink = w.sink();
    let n = 20_000;
    let mut events: Vec<EventBody> = (0..n).map(varied).collect();
    // Shared as in the proxy: most bodies are written from shapes, and
    // stored as known shapes (values cut without parsing).
    intern(&mut events);
    // Recorded in one go, so the writer sees batches of thousands.
    for ev in &events {
        sink.record(ev.clone()).unwrap();
    }
    sink.record(session_start("alice")).unwrap();
    let st = sink.flush_blocking(true, Duration::from_secs(120)).unwrap();
    assert_eq!(st.stored_seq, n as u64 + 1);
    w.shutdown().unwrap();

    let mut s = SqliteStore::open_existing(&dir.path().join("audit/audit.db")).unwrap();
    let local = local_from_data_dir(dir.path()).unwrap();
    let r = verify(&mut s, &keys(dir.path()), Some(&local)).unwrap();
    assert_eq!(r.chains[0].records, n as u64 + 1);
    // Every body reads back as serde writes its event.
    let chain = s.chains().unwrap()[0].chain.clone();
    let mut after = 0;
    while after < n as u64 {
        let page = s.read_chain(&chain, after, 1000).unwrap();
        assert!(!page.is_empty());
        for r in &page {
            let i = (r.record.seq - 1) as usize;
            assert_eq!(
                r.record.body.as_deref(),
                Some(serde_json::to_string(&events[i]).unwrap().as_str()),
                "record {}",
                r.record.seq
            );
        }
        after = page.last().map_or(after, |r| r.record.seq);
    }

    let want = expected_usage(&events);
    assert!(want.len() > 20, "a varied mix: {}", want.len());
    assert_eq!(stored_usage(&mut s, &want), want);

    // Search: the same answers whether an event's entries are its own
    // (literal text, sessions) or shared with others of its shape.
    let mentions = |word: &str| {
        events
            .iter()
            .filter(|e| match e {
                EventBody::Statement(s) => {
                    s.normalized.to_lowercase().contains(word)
                        || s.rule.as_deref().is_some_and(|r| r.contains(word))
                        || s.tables_read
                            .iter()
                            .chain(s.tables_written.iter())
                            .any(|t| t.to_lowercase().contains(word))
                }
                _ => false,
            })
            .count() as u64
    };
    let text = |t: &str| Query {
        text: Some(t.into()),
        ..Query::default()
    };
    assert_eq!(count(&mut s, text("orders")), mentions("orders"));
    assert_eq!(count(&mut s, text("audit_copy")), mentions("audit_copy"));
    assert_eq!(count(&mut s, text("literal")), (n / 10) as u64);
    assert_eq!(count(&mut s, text("literal 4990")), 1);
    assert_eq!(
        count(&mut s, text("psql")),
        1,
        "session.start is searchable"
    );
    assert_eq!(
        count(&mut s, text("no-orders")),
        (0..n).filter(|i| i % 11 == 7).count() as u64
    );
    // Table and column filters, on shared and on own entries alike.
    let touches = |f: &dyn Fn(&Statement) -> bool| {
        events
            .iter()
            .filter(|e| matches!(e, EventBody::Statement(s) if f(s)))
            .count() as u64
    };
    assert_eq!(
        count(
            &mut s,
            Query {
                table: Some("users".into()),
                ..Query::default()
            }
        ),
        touches(&|s| s
            .tables_read
            .iter()
            .chain(s.columns_read.iter())
            .any(|t| t.to_lowercase().starts_with("users")))
    );
    assert_eq!(
        count(
            &mut s,
            Query {
                column: Some("users.email".into()),
                ..Query::default()
            }
        ),
        touches(&|s| !s.masked.is_empty())
    );
    assert_eq!(
        count(
            &mut s,
            Query {
                table: Some("audit_copy".into()),
                principal: Some("bob".into()),
                ..Query::default()
            }
        ),
        (0..n).filter(|i| i % 5 == 2 && i % 3 == 1).count() as u64
    );
    // Pages of a shared-entry search come newest first without repeats.
    let page = s
        .search(&Query {
            text: Some("orders".into()),
            limit: 50,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(page.rows.len(), 50);
    assert!(page.rows.windows(2).all(|w| w[0].ulid > w[1].ulid));
}

#[test]
fn a_replayed_batch_counts_usage_once() {
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    write(&w, 50, "alice", "production");
    w.shutdown().unwrap();
    let mut s = SqliteStore::open_existing(&dir.path().join("audit/audit.db")).unwrap();
    let q = UsageQuery {
        column: Some("users.email".into()),
        ..UsageQuery::default()
    };
    let before = s.usage(&q).unwrap();
    assert_eq!(before[0].reads, 50);
    // The whole trail again (a crash between the store commit and the
    // writer noting it): nothing is counted twice.
    let chain = s.chains().unwrap()[0].chain.clone();
    let entries: Vec<sluice_audit::Entry> = s
        .read_chain(&chain, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|r| sluice_audit::Entry::Record(r.record))
        .collect();
    assert_eq!(entries.len(), 50);
    s.append(&entries).unwrap();
    assert_eq!(s.usage(&q).unwrap(), before);
    let text = Query {
        text: Some("users".into()),
        ..Query::default()
    };
    assert_eq!(s.count(&text).unwrap(), 50);
}

/// The same statement whoever runs it and wherever: one shape per principal.
fn same(who: &str, env: &str) -> EventBody {
    EventBody::Statement(Statement {
        session: "s1".into(),
        principal: actor(who, "human").into(),
        target: "app".into(),
        environment: env.into(),
        fingerprint: "fp".into(),
        normalized: "SELECT id, email FROM users WHERE id = $1".into(),
        kind: "select".into(),
        tables_read: vec!["users".into()].into(),
        columns_read: vec!["users.id".into(), "users.email".into()].into(),
        rows_returned: 1,
        ..Statement::default()
    })
}

fn record(w: &AuditWriter, n: usize, who: &str, env: &str) {
    let sink = w.sink();
    for _ in 0..n {
        sink.record(same(who, env)).unwrap();
    }
    sink.flush_blocking(true, Duration::from_secs(30)).unwrap();
}

fn statements_matching(text: &str) -> Query {
    Query {
        text: Some(text.into()),
        kind: Some("statement".into()),
        ..Query::default()
    }
}

fn reading(column: &str) -> Query {
    Query {
        column: Some(column.into()),
        ..Query::default()
    }
}

#[test]
fn retention_removes_the_shared_search_entries_it_no_longer_needs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.retention = [("development".to_string(), "30d".to_string())].into();
    let w = AuditWriter::start(&cfg, dir.path()).unwrap();
    // Alice's shape is shared by development and production events; bob's
    // only by development ones.
    record(&w, 8, "alice", "development");
    record(&w, 5, "alice", "production");
    record(&w, 6, "bob", "development");
    let day = 86_400_000;
    let r = w
        .apply_retention(
            sluice_audit::util::now_ms() + 31 * day,
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(r.removed, 14, "{r:?}");
    let db = dir.path().join("audit/audit.db");
    // Statement shapes (other events have shapes of their own, without
    // objects: the retention's admin event).
    let shapes = |s: &SqliteStore| -> i64 {
        s.connection()
            .query_row(
                "SELECT COUNT(DISTINCT shape) FROM audit_shape_objects",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    // Bob's shape went with his bodies; alice's stays for production.
    assert_eq!(shapes(&SqliteStore::open_existing(&db).unwrap()), 1);
    // A shape whose entries retention removed is made again when needed.
    record(&w, 2, "bob", "development");
    w.shutdown().unwrap();
    let mut s = SqliteStore::open_existing(&db).unwrap();
    assert_eq!(shapes(&s), 2);
    assert_eq!(s.count(&statements_matching("alice")).unwrap(), 5);
    assert_eq!(s.count(&statements_matching("bob")).unwrap(), 2);
    assert_eq!(s.count(&reading("users.email")).unwrap(), 7);
    assert!(verify(&mut s, &keys(dir.path()), None).is_ok());
}

/// A file written before blocks, in the first layout: a row per event in
/// `audit_events`, with its own FTS row and objects, whole bodies. Opening
/// it moves the records into blocks, and search and verify find everything
/// as before; the writer carries on in it.
#[test]
fn a_file_from_the_earlier_layout_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    record(&w, 4, "alice", "development");
    record(&w, 3, "bob", "production");
    w.shutdown().unwrap();
    let db = dir.path().join("audit/audit.db");
    let mut s = SqliteStore::open_existing(&db).unwrap();
    let chain = s.chains().unwrap()[0].chain.clone();
    let records = s.read_chain(&chain, 0, 100).unwrap();
    drop(s);
    let old = dir.path().join("old.db");
    {
        let c = rusqlite::Connection::open(&old).unwrap();
        c.execute_batch(&format!(
            "{FIRST_LAYOUT}
             ATTACH '{}' AS cur;
             INSERT INTO audit_chains SELECT * FROM cur.audit_chains;
             INSERT INTO audit_checkpoints SELECT * FROM cur.audit_checkpoints;
             INSERT INTO audit_usage_daily SELECT * FROM cur.audit_usage_daily;
             DETACH cur;",
            db.display()
        ))
        .unwrap();
        for r in &records {
            let (rec, idx) = (&r.record, &r.index);
            c.execute(
                "INSERT INTO audit_events (chain, seq, ulid, time_ms, code, environment, principal,
                 target, session, decision, fingerprint, digest, body, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                rusqlite::params![
                    rec.chain,
                    rec.seq as i64,
                    rec.ulid,
                    rec.time_ms,
                    rec.code,
                    rec.environment,
                    idx.principal,
                    idx.target,
                    idx.session,
                    idx.decision,
                    idx.fingerprint,
                    rec.digest,
                    rec.body,
                    rec.mac
                ],
            )
            .unwrap();
            let id = c.last_insert_rowid();
            let ev = rec.event().unwrap().unwrap();
            c.execute(
                "INSERT INTO audit_events_fts (rowid, text) VALUES (?1, ?2)",
                rusqlite::params![id, ev.search_text()],
            )
            .unwrap();
            for (t, col) in ev.objects() {
                c.execute(
                    "INSERT OR IGNORE INTO audit_event_objects (tbl, col, event_id) VALUES (?1, ?2, ?3)",
                    rusqlite::params![t, col, id],
                )
                .unwrap();
            }
        }
    }
    std::fs::rename(&old, &db).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    let mut s = SqliteStore::open_existing(&db).unwrap();
    let tables: Vec<String> = s
        .connection()
        .prepare("SELECT name FROM sqlite_master WHERE name LIKE 'audit_event%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        !tables
            .iter()
            .any(|t| t == "audit_events" || t == "audit_event_objects"),
        "{tables:?}"
    );
    assert_eq!(
        number(
            &s,
            "SELECT CAST(value AS INTEGER) FROM audit_meta WHERE key = 'schema'"
        ),
        2
    );
    assert_eq!(s.count(&statements_matching("alice")).unwrap(), 4);
    assert_eq!(s.count(&statements_matching("bob")).unwrap(), 3);
    assert_eq!(s.count(&reading("users.email")).unwrap(), 7);
    let by_bob = Query {
        principal: Some("bob".into()),
        ..Query::default()
    };
    assert_eq!(s.count(&by_bob).unwrap(), 3);
    assert_eq!(s.read_chain(&chain, 0, 100).unwrap().len(), records.len());
    assert!(verify(&mut s, &keys(dir.path()), None).is_ok());
    drop(s);
    // The writer carries on in the migrated file; a second open changes nothing.
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    record(&w, 2, "bob", "production");
    w.shutdown().unwrap();
    let mut s = SqliteStore::open_existing(&db).unwrap();
    assert_eq!(s.count(&statements_matching("bob")).unwrap(), 5);
    assert_eq!(s.count(&reading("users.email")).unwrap(), 9);
    assert!(verify(&mut s, &keys(dir.path()), None).is_ok());
}

/// The first layout of the SQLite store (a row per event), as files made
/// by the first versions have it.
const FIRST_LAYOUT: &str = "
CREATE TABLE audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE audit_chains (
    chain TEXT PRIMARY KEY, public_key TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY,
    chain TEXT NOT NULL, seq INTEGER NOT NULL, ulid TEXT NOT NULL, time_ms INTEGER NOT NULL,
    code TEXT NOT NULL, environment TEXT NOT NULL, principal TEXT NOT NULL,
    target TEXT NOT NULL, session TEXT NOT NULL, decision TEXT NOT NULL,
    fingerprint TEXT NOT NULL, digest BLOB NOT NULL, body TEXT, mac BLOB NOT NULL,
    UNIQUE (chain, seq));
CREATE INDEX audit_events_ulid ON audit_events (ulid);
CREATE INDEX audit_events_time ON audit_events (time_ms);
CREATE INDEX audit_events_principal ON audit_events (principal, ulid);
CREATE TABLE audit_event_objects (
    tbl TEXT NOT NULL, col TEXT NOT NULL, event_id INTEGER NOT NULL,
    PRIMARY KEY (tbl, col, event_id)) WITHOUT ROWID;
CREATE INDEX audit_event_objects_event ON audit_event_objects (event_id);
CREATE VIRTUAL TABLE audit_events_fts USING fts5 (text, content='', contentless_delete=1);
CREATE TABLE audit_checkpoints (
    chain TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL, reason TEXT NOT NULL,
    environment TEXT, before_ms INTEGER, mac BLOB NOT NULL, signature BLOB NOT NULL,
    PRIMARY KEY (chain, seq, reason, time_ms));
CREATE TABLE audit_usage_daily (
    day INTEGER NOT NULL, principal TEXT NOT NULL, on_behalf_of TEXT NOT NULL,
    target TEXT NOT NULL, environment TEXT NOT NULL, tbl TEXT NOT NULL, col TEXT NOT NULL,
    masked INTEGER NOT NULL, reads INTEGER NOT NULL, writes INTEGER NOT NULL,
    nrows INTEGER NOT NULL, nbytes INTEGER NOT NULL, first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
    PRIMARY KEY (day, principal, on_behalf_of, target, environment, tbl, col, masked));
CREATE TABLE audit_lineage (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, destination TEXT NOT NULL, kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL, principal TEXT NOT NULL, on_behalf_of TEXT NOT NULL,
    principal_kind TEXT NOT NULL, target TEXT NOT NULL, environment TEXT NOT NULL,
    time_ms INTEGER NOT NULL, chain TEXT NOT NULL, seq INTEGER NOT NULL);
INSERT INTO audit_meta (key, value) VALUES ('schema', '1');
";

/// Time ranges are answered through the ULID index: the bounds are exact
/// to the millisecond.
#[test]
fn a_time_range_is_exact_to_the_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    let sink = w.sink();
    for _ in 0..5 {
        // events a millisecond or more apart, so the bounds fall between
        // them: the clock read after recording is at or past the event's
        // time, so the next event is later
        sink.record(same("alice", "development")).unwrap();
        let t = sluice_audit::util::now_ms();
        while sluice_audit::util::now_ms() == t {
            std::hint::spin_loop();
        }
    }
    w.shutdown().unwrap();
    let mut s = SqliteStore::open_existing(&dir.path().join("audit/audit.db")).unwrap();
    let all = s.search(&Query::default()).unwrap().rows;
    assert!(all.len() >= 5, "{}", all.len());
    let distinct: std::collections::BTreeSet<i64> = all.iter().map(|r| r.time_ms).collect();
    assert!(distinct.len() >= 5, "{distinct:?}");
    let times: Vec<i64> = all.iter().map(|r| r.time_ms).collect();
    let (lo, hi) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let mut range = |since: Option<i64>, until: Option<i64>| {
        s.count(&Query {
            since,
            until,
            ..Query::default()
        })
        .unwrap() as usize
    };
    let expect = |since: Option<i64>, until: Option<i64>| {
        times
            .iter()
            .filter(|&&t| since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u))
            .count()
    };
    for (since, until) in [
        (Some(lo), None),
        (Some(lo + 1), None),
        (Some(hi), None),
        (Some(hi + 1), None),
        (None, Some(hi)),
        (None, Some(hi + 1)),
        (None, Some(lo)),
        (Some(lo), Some(hi + 1)),
        (Some(0), Some(i64::MAX)),
        (Some(-1), None),
    ] {
        assert_eq!(
            range(since, until),
            expect(since, until),
            "{since:?}..{until:?}"
        );
    }
}

/// A search reads the blocks holding its keys, newest first, and stops as
/// soon as no older block can hold a newer match: a rare principal, a
/// refusal filter matching nothing, the newest page of a long trail. Pages
/// come back in order, without repeats or gaps.
#[test]
fn a_search_reads_only_the_blocks_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    record(&w, 2000, "alice", "production");
    record(&w, 1, "bob", "staging");
    record(&w, 1000, "alice", "production");
    w.shutdown().unwrap();
    let mut s = SqliteStore::open_existing(&dir.path().join("audit/audit.db")).unwrap();
    let blocks = number(&s, "SELECT COUNT(*) FROM audit_blocks");
    assert!(blocks >= 12, "{blocks} blocks");
    let reads = |s: &mut SqliteStore, q: Query| {
        let before = s.blocks_read();
        let page = s.search(&q).unwrap();
        (page, s.blocks_read() - before)
    };
    let (page, read) = reads(
        &mut s,
        Query {
            principal: Some("bob".into()),
            ..Query::default()
        },
    );
    assert_eq!(page.rows.len(), 1);
    assert_eq!(page.rows[0].environment, "staging");
    assert_eq!(read, 1);
    let (page, read) = reads(
        &mut s,
        Query {
            environment: Some("staging".into()),
            ..Query::default()
        },
    );
    assert_eq!((page.rows.len(), read), (1, 1));
    let (page, read) = reads(
        &mut s,
        Query {
            decision: Some(Decision::Deny),
            ..Query::default()
        },
    );
    assert_eq!((page.rows.len(), read), (0, 0));
    let (page, read) = reads(&mut s, Query::default());
    assert_eq!(page.rows.len(), 100);
    assert!(read <= 3, "{read} blocks read for the newest page");
    // Every page of alice's 3000, in order.
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .search(&Query {
                principal: Some("alice".into()),
                limit: 700,
                cursor: cursor.clone(),
                ..Query::default()
            })
            .unwrap();
        all.extend(page.rows.into_iter().map(|r| (r.ulid, r.seq)));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(all.len(), 3000);
    assert!(
        all.windows(2).all(|w| w[0].0 > w[1].0),
        "newest first, no repeats"
    );
    let alice = Query {
        principal: Some("alice".into()),
        ..Query::default()
    };
    assert_eq!(s.count(&alice).unwrap(), 3000);
}

/// The block a batch leaves open is extended by the next batch; when
/// another process rewrote it meanwhile (retention from the CLI), the
/// next batch fails once, is retried in a block of its own, and nothing is
/// lost or doubled.
#[test]
fn an_open_block_rewritten_by_another_process_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    record(&w, 30, "alice", "production");
    w.shutdown().unwrap();
    let mut s = SqliteStore::open_existing(&dir.path().join("audit/audit.db")).unwrap();
    let chain = s.chains().unwrap()[0].chain.clone();
    let records: Vec<sluice_audit::Entry> = s
        .read_chain(&chain, 0, 100)
        .unwrap()
        .into_iter()
        .map(|r| sluice_audit::Entry::Record(r.record))
        .collect();
    assert_eq!(records.len(), 30);
    let copy = dir.path().join("copy.db");
    let mut a = SqliteStore::open(&copy).unwrap();
    a.append(&records[..10]).unwrap();
    a.append(&records[10..20]).unwrap();
    assert_eq!(
        number(&a, "SELECT COUNT(*) FROM audit_blocks"),
        1,
        "extended"
    );
    // Another process rewrites the open block.
    let mut b = SqliteStore::open_existing(&copy).unwrap();
    b.edit_records(|_| {}).unwrap();
    let err = a.append(&records[20..]).unwrap_err();
    assert!(
        err.to_string().contains("changed under the writer"),
        "{err}"
    );
    a.append(&records[20..]).unwrap();
    let back = a.read_chain(&chain, 0, 100).unwrap();
    let seqs: Vec<u64> = back.iter().map(|r| r.record.seq).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
    // A replay of everything changes nothing.
    a.append(&records).unwrap();
    assert_eq!(a.read_chain(&chain, 0, 100).unwrap().len(), 30);
    let alice = Query {
        principal: Some("alice".into()),
        ..Query::default()
    };
    assert_eq!(a.count(&alice).unwrap(), 30);
}

/// Records whose bodies were written from a shape are stored by the shape
/// number the writer gives them: values cut by hand, shape and template
/// reused. They read back exactly, with and without a SQLSTATE.
#[test]
fn records_of_a_known_body_shape_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    let mut events: Vec<EventBody> = (0..300)
        .map(|i| {
            let mut e = same(["alice", "bob"][i % 2], "production");
            if let EventBody::Statement(s) = &mut e {
                s.rows_returned = i as u64;
                s.duration_us = 7 * i as u64;
                s.sqlstate = (i % 3 == 0).then(|| "57014".to_owned());
            }
            e
        })
        .collect();
    intern(&mut events);
    for e in &events {
        w.sink().record(e.clone()).unwrap();
    }
    w.sink()
        .flush_blocking(true, Duration::from_secs(30))
        .unwrap();
    w.shutdown().unwrap();
    let mut first = SqliteStore::open_existing(&dir.path().join("audit/audit.db")).unwrap();
    let chain = first.chains().unwrap()[0].chain.clone();
    let records = chain_records(&mut first, &chain);
    assert_eq!(records.len(), 300);

    // The same records into another file, numbered as the writer numbers
    // them.
    let mut parsed: Vec<EventBody> = records
        .iter()
        .map(|r| r.event().unwrap().unwrap())
        .collect();
    intern(&mut parsed);
    let mut bodies = sluice_audit::body::BodyWriter::default();
    let entries: Vec<sluice_audit::Entry> = records
        .iter()
        .cloned()
        .map(sluice_audit::Entry::Record)
        .collect();
    let mut numbers = Vec::new();
    for (e, r) in parsed.iter().zip(&records) {
        let mut out = Vec::new();
        numbers.push(bodies.write(e, &mut out).unwrap());
        assert_eq!(Some(String::from_utf8(out).unwrap()), r.body);
    }
    assert!(numbers.iter().filter(|n| **n != 0).count() > 250);
    let batch: Vec<sluice_audit::store::BatchEntry<'_>> = entries
        .iter()
        .zip(&parsed)
        .zip(&numbers)
        .map(|((entry, e), n)| sluice_audit::store::BatchEntry {
            entry,
            event: Some(e),
            shape: *n,
        })
        .collect();
    let other = tempfile::tempdir().unwrap();
    let mut second = SqliteStore::open(&other.path().join("audit.db")).unwrap();
    // In two transactions: the second finds every shape known.
    second.append_batch(&batch[..150]).unwrap();
    second.append_batch(&batch[150..]).unwrap();
    assert!(second.records_from_known_shapes() > 250);
    assert_eq!(chain_records(&mut second, &chain), records);
}
