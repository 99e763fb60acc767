//! Throughput of the audit writer for a realistic statement event.
//!
//! ```text
//! cargo run --release -p sluice-audit --example writer_bench -- [--events N] [--dir DIR]
//!     [--fsync batch|always|interval] [--sessions K] [--select-only] [--bare] [--verify]
//! ```
//!
//! One producer thread records `db.statement` events like those of
//! pgbench's default script through the proxy (`BEGIN`, updates of
//! `pgbench_accounts`, `_tellers`, `_branches`, the `SELECT abalance`, the
//! `INSERT INTO pgbench_history`, `END`: fingerprint, normalized text, a
//! table, a few columns, nothing masked; `--select-only` records only the
//! select, like `pgbench -S`), spread over `--sessions` sessions and four
//! principals, as fast as the queue takes them (retrying while
//! it is full, as the proxy's backpressure does), with the default config
//! (SQLite store, `fsync = "batch"`). It then waits until everything is in
//! the store. Reported: events/s (wall clock, first record to last event
//! stored), and CPU µs per event of the writer thread alone and of the
//! whole process (CPU time from `/proc`, not wall clock). The writer is one
//! thread, so its events/s on one core is `1e6 / writer µs per event`.
//! `--verify` then runs `verify` on the trail and checks that text search
//! and the usage aggregates match what was recorded, exactly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_audit::event::{Actor, Decision, EventBody, Statement};
use sluice_audit::{AuditConfig, AuditWriter, FsyncPolicy, RecordError};

struct Args {
    events: usize,
    dir: Option<PathBuf>,
    fsync: FsyncPolicy,
    sessions: usize,
    verify: bool,
    select_only: bool,
    bare: bool,
}

fn args() -> Args {
    let mut a = Args {
        events: 300_000,
        dir: None,
        fsync: FsyncPolicy::Batch,
        sessions: 10,
        verify: false,
        select_only: false,
        bare: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--events" | "-n" => a.events = v().parse().expect("--events N"),
            "--dir" => a.dir = Some(PathBuf::from(v())),
            "--sessions" => a.sessions = v().parse::<usize>().expect("--sessions K").max(1),
            "--fsync" => {
                a.fsync = match v().as_str() {
                    "always" => FsyncPolicy::Always,
                    "batch" => FsyncPolicy::Batch,
                    "interval" => FsyncPolicy::Interval,
                    o => panic!("--fsync {o}: always, batch or interval"),
                }
            }
            "--verify" => a.verify = true,
            "--select-only" | "-S" => a.select_only = true,
            "--bare" => a.bare = true,
            "--help" | "-h" => {
                eprintln!(
                    "writer_bench [--events N] [--dir DIR] [--fsync batch|always|interval] \
                     [--sessions K] [--select-only] [--bare] [--verify]"
                );
                std::process::exit(0);
            }
            o => panic!("unknown argument {o}"),
        }
    }
    a
}

/// (utime + stime) in clock ticks from a `/proc/.../stat` line.
fn ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) … utime(11) stime(12).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_sec() -> f64 {
    // USER_HZ is 100 on every Linux platform Sluice runs on.
    100.0
}

/// CPU seconds of the whole process.
fn process_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    ticks(&s).unwrap_or(0) as f64 / clock_ticks_per_sec()
}

/// CPU seconds of the thread named `name` (summed if several).
fn thread_cpu(name: &str) -> f64 {
    let mut total = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let s = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                total += ticks(&s).unwrap_or(0);
            }
        }
    }
    total as f64 / clock_ticks_per_sec()
}

/// Statements of one pgbench transaction: the TPC-B-like default script
/// (`BEGIN`, 3 updates, a select, an insert, `END`), or `-S` (the select).
struct Shape {
    fingerprint: &'static str,
    normalized: &'static str,
    kind: &'static str,
    tables_read: &'static [&'static str],
    tables_written: &'static [&'static str],
    columns_read: &'static [&'static str],
    columns_written: &'static [&'static str],
    rows_returned: u64,
    rows_affected: u64,
    bytes: u64,
}

const SELECT: Shape = Shape {
    fingerprint: "5f1b2e7a9c3d4e60",
    normalized: "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    kind: "select",
    tables_read: &["pgbench_accounts"],
    tables_written: &[],
    columns_read: &["pgbench_accounts.abalance", "pgbench_accounts.aid"],
    columns_written: &[],
    rows_returned: 1,
    rows_affected: 0,
    bytes: 11,
};

const TPCB: &[Shape] = &[
    Shape {
        fingerprint: "a0e1c5d4b3f29871",
        normalized: "BEGIN",
        kind: "transaction",
        tables_read: &[],
        tables_written: &[],
        columns_read: &[],
        columns_written: &[],
        rows_returned: 0,
        rows_affected: 0,
        bytes: 0,
    },
    Shape {
        fingerprint: "3c9d0f6e2b7a1845",
        normalized: "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        kind: "update",
        tables_read: &[],
        tables_written: &["pgbench_accounts"],
        columns_read: &["pgbench_accounts.abalance", "pgbench_accounts.aid"],
        columns_written: &["pgbench_accounts.abalance"],
        rows_returned: 0,
        rows_affected: 1,
        bytes: 0,
    },
    SELECT,
    Shape {
        fingerprint: "7b2f4a9e0c1d3856",
        normalized: "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
        kind: "update",
        tables_read: &[],
        tables_written: &["pgbench_tellers"],
        columns_read: &["pgbench_tellers.tbalance", "pgbench_tellers.tid"],
        columns_written: &["pgbench_tellers.tbalance"],
        rows_returned: 0,
        rows_affected: 1,
        bytes: 0,
    },
    Shape {
        fingerprint: "e4d8a1c6f0b25937",
        normalized: "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
        kind: "update",
        tables_read: &[],
        tables_written: &["pgbench_branches"],
        columns_read: &["pgbench_branches.bbalance", "pgbench_branches.bid"],
        columns_written: &["pgbench_branches.bbalance"],
        rows_returned: 0,
        rows_affected: 1,
        bytes: 0,
    },
    Shape {
        fingerprint: "1f6c3b8d2e9a4070",
        normalized: "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
        kind: "insert",
        tables_read: &[],
        tables_written: &["pgbench_history"],
        columns_read: &[],
        columns_written: &[
            "pgbench_history.tid",
            "pgbench_history.bid",
            "pgbench_history.aid",
            "pgbench_history.delta",
            "pgbench_history.mtime",
        ],
        rows_returned: 0,
        rows_affected: 1,
        bytes: 0,
    },
    Shape {
        fingerprint: "c2a7e9f1d3b60584",
        normalized: "END",
        kind: "transaction",
        tables_read: &[],
        tables_written: &[],
        columns_read: &[],
        columns_written: &[],
        rows_returned: 0,
        rows_affected: 0,
        bytes: 0,
    },
];

/// A statement's texts and lists as the proxy holds them: built once per
/// statement (cached with its verdict) and shared by every event of it.
struct Described {
    fingerprint: Arc<str>,
    normalized: Arc<str>,
    kind: Arc<str>,
    tables_read: Arc<[String]>,
    tables_written: Arc<[String]>,
    columns_read: Arc<[String]>,
    columns_written: Arc<[String]>,
}

impl Described {
    fn of(shape: &Shape) -> Described {
        fn strings(v: &[&str]) -> Arc<[String]> {
            v.iter().map(|s| (*s).to_owned()).collect()
        }
        Described {
            fingerprint: shape.fingerprint.into(),
            normalized: shape.normalized.into(),
            kind: shape.kind.into(),
            tables_read: strings(shape.tables_read),
            tables_written: strings(shape.tables_written),
            columns_read: strings(shape.columns_read),
            columns_written: strings(shape.columns_written),
        }
    }
}

/// [`Described`] of SELECT, then of each TPCB statement.
fn described(select_only: bool, i: usize) -> &'static Described {
    static ALL: std::sync::OnceLock<Vec<Described>> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(|| {
        std::iter::once(&SELECT)
            .chain(TPCB.iter())
            .map(Described::of)
            .collect()
    });
    if select_only {
        &all[0]
    } else {
        &all[1 + i % TPCB.len()]
    }
}

/// Event `i`: session `i % sessions`, principal one of four, statement `i`
/// of the script.
fn event(i: usize, sessions: usize, select_only: bool) -> EventBody {
    let shape = if select_only {
        &SELECT
    } else {
        &TPCB[i % TPCB.len()]
    };
    let d = described(select_only, i);
    // Who and where, held once per session as the proxy's sessions do.
    type Who = (Arc<str>, Arc<Actor>, Arc<str>, Arc<str>);
    thread_local! {
        static SESSIONS: std::cell::RefCell<std::collections::HashMap<usize, Who>> =
            Default::default();
    }
    let session = i % sessions;
    let (id, principal, target, environment) = SESSIONS.with(|all| {
        all.borrow_mut()
            .entry(session)
            .or_insert_with(|| {
                (
                    format!("{:016x}", 0x5eed_0000_0000_0000u64 + session as u64).into(),
                    Arc::new(Actor {
                        name: format!("bench{}@example.com", session % 4),
                        kind: "human".into(),
                        on_behalf_of: None,
                    }),
                    "pgbench".into(),
                    "production".into(),
                )
            })
            .clone()
    });
    EventBody::Statement(Statement {
        session: id,
        principal,
        target,
        environment,
        fingerprint: d.fingerprint.clone(),
        normalized: d.normalized.clone(),
        text: None,
        kind: d.kind.clone(),
        decision: Decision::Allow,
        rule: None,
        approval_id: None,
        tables_read: d.tables_read.clone(),
        tables_written: d.tables_written.clone(),
        columns_read: d.columns_read.clone(),
        columns_written: d.columns_written.clone(),
        masked: Vec::new(),
        rows_returned: shape.rows_returned,
        rows_affected: shape.rows_affected,
        bytes_to_client: shape.bytes,
        duration_us: 90 + (i % 61) as u64,
        sqlstate: None,
        lineage: None,
    })
}

fn main() {
    let a = args();
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).expect("create --dir");
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().expect("tempdir");
            tmp.path().to_owned()
        }
    };
    let cfg = AuditConfig {
        fsync: a.fsync,
        ..AuditConfig::default()
    };
    let w = AuditWriter::start(&cfg, &dir).expect("start the writer");
    let sink = w.sink();
    // Events are built by the producer, as the proxy's sessions do.
    let events = a.events;
    let sessions = a.sessions;
    let select_only = a.select_only;
    let bare = a.bare;
    // --bare: events as Sluice records them with policy off (no analysis:
    // no fingerprint, text, kind, tables or columns)
    let event = move |i: usize, sessions: usize, select_only: bool| {
        let mut ev = event(i, sessions, select_only);
        if let (true, EventBody::Statement(s)) = (bare, &mut ev) {
            s.fingerprint = "".into();
            s.normalized = "".into();
            s.kind = "".into();
            s.tables_read = Default::default();
            s.tables_written = Default::default();
            s.columns_read = Default::default();
            s.columns_written = Default::default();
        }
        ev
    };

    let cpu0 = process_cpu();
    let wcpu0 = thread_cpu("sluice-audit");
    let t0 = Instant::now();
    let producer = {
        let sink = sink.clone();
        std::thread::Builder::new()
            .name("bench-producer".into())
            .spawn(move || {
                let mut full_waits = 0u64;
                for i in 0..events {
                    let mut ev = event(i, sessions, select_only);
                    loop {
                        // The proxy waits while the queue is congested
                        // rather than have a statement refused.
                        match sink.record(ev) {
                            Ok(()) => break,
                            Err(RecordError::QueueFull) => {
                                full_waits += 1;
                                std::thread::sleep(Duration::from_micros(200));
                                ev = event(i, sessions, select_only);
                            }
                            Err(e) => panic!("record: {e}"),
                        }
                    }
                }
                full_waits
            })
            .expect("spawn")
    };
    let full_waits = producer.join().expect("producer");
    let produced = t0.elapsed();
    let st = sink
        .flush_blocking(true, Duration::from_secs(600))
        .expect("flush");
    let wall = t0.elapsed();
    let cpu = process_cpu() - cpu0;
    let wcpu = thread_cpu("sluice-audit") - wcpu0;
    let c = sink.counters();
    let refused = c.refused.load(std::sync::atomic::Ordering::Relaxed);
    let n = events as f64;
    println!(
        "events {events}  stored_seq {}  wall {:.2}s (producer done at {:.2}s, queue-full waits {full_waits}, refused {refused})",
        st.stored_seq,
        wall.as_secs_f64(),
        produced.as_secs_f64()
    );
    println!(
        "throughput          {:>10.0} events/s",
        n / wall.as_secs_f64()
    );
    println!(
        "writer thread CPU   {:>10.2} us/event  ({:.2}s; one core => {:.0} events/s)",
        wcpu * 1e6 / n,
        wcpu,
        if wcpu > 0.0 { n / wcpu } else { f64::INFINITY }
    );
    println!(
        "process CPU         {:>10.2} us/event  ({:.2}s, producer included)",
        cpu * 1e6 / n,
        cpu
    );
    let db = sluice_audit::audit_dir(&dir).join("audit.db");
    let db_bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(db.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!(
        "store size          {:>10.1} MiB",
        db_bytes as f64 / 1048576.0
    );
    w.shutdown().expect("shutdown");
    if a.verify {
        let t = Instant::now();
        let mut s = sluice_audit::SqliteStore::open(&db).expect("open store");
        let keys =
            sluice_audit::chain::read_key_file(&sluice_audit::audit_dir(&dir).join("initial.key"))
                .expect("key file");
        let local = sluice_audit::verify::local_from_data_dir(&dir).expect("local");
        match sluice_audit::verify(&mut s, &keys, Some(&local)) {
            Ok(r) => println!(
                "verify: intact, {} records, {} checkpoints ({:.1}s)",
                r.chains[0].records,
                r.chains[0].checkpoints,
                t.elapsed().as_secs_f64()
            ),
            Err(f) => {
                println!("verify FAILED: {f}");
                std::process::exit(1);
            }
        }
        if !bare {
            check_search_and_usage(&mut s, events, sessions, select_only);
        }
    }
}

/// Search and usage must agree with what was recorded, exactly.
fn check_search_and_usage(
    s: &mut sluice_audit::SqliteStore,
    events: usize,
    sessions: usize,
    select_only: bool,
) {
    use sluice_audit::{Query, Store, UsageQuery};
    use std::collections::BTreeMap;
    let t = Instant::now();
    type Key = (String, String, String, bool);
    let mut want: BTreeMap<Key, (i64, i64, i64, i64)> = BTreeMap::new();
    let mut tellers = 0u64;
    for i in 0..events {
        let EventBody::Statement(st) = event(i, sessions, select_only) else {
            continue;
        };
        if st.normalized.contains("pgbench_tellers") {
            tellers += 1;
        }
        for d in sluice_audit::usage::usage_deltas(&st, 0) {
            let w = want
                .entry((d.principal, d.table, d.column, d.masked))
                .or_default();
            w.0 += d.reads;
            w.1 += d.writes;
            w.2 += d.rows;
            w.3 += d.bytes;
        }
    }
    let found = s
        .count(&Query {
            text: Some("pgbench_tellers".into()),
            ..Query::default()
        })
        .unwrap_or_else(|e| fail(&format!("search: {e}")));
    if found != tellers {
        fail(&format!(
            "search: {found} events mention pgbench_tellers, expected {tellers}"
        ));
    }
    let mut got: BTreeMap<Key, (i64, i64, i64, i64)> = BTreeMap::new();
    let tables: std::collections::BTreeSet<(String, String)> = want
        .keys()
        .map(|(_, t, c, _)| (t.clone(), c.clone()))
        .collect();
    for (table, column) in &tables {
        let q = UsageQuery {
            table: Some(table.clone()),
            column: (!column.is_empty()).then(|| format!("{table}.{column}")),
            ..UsageQuery::default()
        };
        for r in s.usage(&q).unwrap_or_else(|e| fail(&format!("usage: {e}"))) {
            let g = got
                .entry((r.principal, r.table, r.column, r.masked))
                .or_default();
            g.0 += r.reads;
            g.1 += r.writes;
            g.2 += r.rows;
            g.3 += r.bytes;
        }
    }
    if got != want {
        fail(&format!("usage differs:\n got  {got:?}\n want {want:?}"));
    }
    println!(
        "search and usage: exact ({} usage rows, {tellers} text hits; {:.1}s)",
        want.len(),
        t.elapsed().as_secs_f64()
    );
}

fn fail(msg: &str) -> ! {
    println!("check FAILED: {msg}");
    std::process::exit(1);
}
