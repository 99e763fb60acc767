//! Throughput of the audit writer for a realistic statement event.
//!
//! ```text
//! cargo run --release -p sluice-audit --example writer_bench -- [--events N] [--dir DIR]
//!     [--fsync batch|always|interval] [--sessions K] [--verify]
//! ```
//!
//! One producer thread records `db.statement` events like those of
//! `pgbench -S` through the proxy (`SELECT abalance FROM pgbench_accounts
//! WHERE aid = $1`: fingerprint, normalized text, one table, two columns,
//! nothing masked, one row) as fast as the queue takes them (retrying while
//! it is full, as the proxy's backpressure does), with the default config
//! (SQLite store, `fsync = "batch"`). It then waits until everything is in
//! the store. Reported: events/s (wall clock, first record to last event
//! stored), and CPU µs per event of the writer thread alone and of the
//! whole process (CPU time from `/proc`, not wall clock). The writer is one
//! thread, so its events/s on one core is `1e6 / writer µs per event`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_audit::event::{Actor, Decision, EventBody, Statement};
use sluice_audit::{AuditConfig, AuditWriter, FsyncPolicy, RecordError};

struct Args {
    events: usize,
    dir: Option<PathBuf>,
    fsync: FsyncPolicy,
    sessions: usize,
    verify: bool,
}

fn args() -> Args {
    let mut a = Args {
        events: 300_000,
        dir: None,
        fsync: FsyncPolicy::Batch,
        sessions: 10,
        verify: false,
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
            "--help" | "-h" => {
                eprintln!(
                    "writer_bench [--events N] [--dir DIR] [--fsync batch|always|interval] \
                     [--sessions K] [--verify]"
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

fn event(i: usize, sessions: usize) -> EventBody {
    EventBody::Statement(Statement {
        session: format!("01JBENCHSESSION{:04}", i % sessions),
        principal: Actor {
            name: "bench".into(),
            kind: "human".into(),
            on_behalf_of: None,
        },
        target: "pgbench".into(),
        environment: "production".into(),
        fingerprint: "5f1b2e7a9c3d4e60".into(),
        normalized: "SELECT abalance FROM pgbench_accounts WHERE aid = $1".into(),
        text: None,
        kind: "select".into(),
        decision: Decision::Allow,
        rule: None,
        approval_id: None,
        tables_read: vec!["pgbench_accounts".into()],
        tables_written: Vec::new(),
        columns_read: vec![
            "pgbench_accounts.abalance".into(),
            "pgbench_accounts.aid".into(),
        ],
        columns_written: Vec::new(),
        masked: Vec::new(),
        rows_returned: 1,
        rows_affected: 0,
        bytes_to_client: 11,
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
                    let mut ev = event(i, sessions);
                    loop {
                        // The proxy waits while the queue is congested
                        // rather than have a statement refused.
                        match sink.record(ev) {
                            Ok(()) => break,
                            Err(RecordError::QueueFull) => {
                                full_waits += 1;
                                std::thread::sleep(Duration::from_micros(200));
                                ev = event(i, sessions);
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
    }
}
