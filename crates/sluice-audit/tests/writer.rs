//! The writer: backpressure policies, store outages, crash recovery.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sluice_audit::verify::{local_from_data_dir, verify};
use sluice_audit::writer::StoreOpener;
use sluice_audit::{
    AuditConfig, AuditError, AuditWriter, OnSpoolFull, Query, RecordError, SqliteStore, Store,
};

/// An opener that fails while `down` is set.
fn flaky(path: std::path::PathBuf, down: Arc<AtomicBool>) -> StoreOpener {
    Box::new(move || {
        if down.load(Ordering::SeqCst) {
            return Err(AuditError::Store("test: store is down".into()));
        }
        Ok(Box::new(SqliteStore::open(&path)?) as Box<dyn Store>)
    })
}

fn small_spool(policy: OnSpoolFull) -> AuditConfig {
    AuditConfig {
        spool_max_bytes: 16 * 1024,
        on_spool_full: policy,
        ..config()
    }
}

/// Record until the spool is full (the store is down), flushing to the
/// spool as we go so the counter is current; returns how many went in.
fn fill(w: &AuditWriter) -> usize {
    let sink = w.sink();
    let max = 16 * 1024;
    let mut n = 0;
    while sink.counters().spool_bytes.load(Ordering::Relaxed) < max {
        sink.record(statement(n, "alice", "production")).unwrap();
        n += 1;
        if n % 10 == 0 {
            sink.flush_blocking(false, Duration::from_secs(10)).unwrap();
        }
        assert!(n < 10_000, "spool never filled");
    }
    n
}

#[test]
fn spool_full_fail_closed_refuses_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let db = dir.path().join("audit/audit.db");
    let w = AuditWriter::start_with(
        &small_spool(OnSpoolFull::FailClosed),
        dir.path(),
        flaky(db.clone(), down.clone()),
    )
    .unwrap();
    let n = fill(&w);
    let sink = w.sink();
    assert_eq!(
        sink.record(statement(0, "alice", "production")),
        Err(RecordError::SpoolFull)
    );
    assert_eq!(sink.counters().refused.load(Ordering::Relaxed), 1);
    assert!(sink.counters().store_errors.load(Ordering::Relaxed) > 0);
    // The store comes back: everything spooled arrives, and recording works again.
    down.store(false, Ordering::SeqCst);
    let st = sink.flush_blocking(true, Duration::from_secs(30)).unwrap();
    assert_eq!(st.stored_seq, n as u64);
    sink.record(statement(0, "alice", "production")).unwrap();
    w.shutdown().unwrap();
    let mut s = SqliteStore::open(&db).unwrap();
    let r = verify(&mut s, &keys(dir.path()), None).unwrap();
    assert_eq!(r.chains[0].records, n as u64 + 1);
}

#[test]
fn spool_full_fail_open_drops_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let db = dir.path().join("audit/audit.db");
    let w = AuditWriter::start_with(
        &small_spool(OnSpoolFull::FailOpen),
        dir.path(),
        flaky(db.clone(), down.clone()),
    )
    .unwrap();
    let n = fill(&w);
    let sink = w.sink();
    for i in 0..5 {
        assert_eq!(sink.record(statement(i, "alice", "production")), Ok(()));
    }
    assert_eq!(sink.counters().dropped.load(Ordering::Relaxed), 5);
    assert_eq!(sink.counters().refused.load(Ordering::Relaxed), 0);
    down.store(false, Ordering::SeqCst);
    sink.flush_blocking(true, Duration::from_secs(30)).unwrap();
    // Once there is room, the next batch carries a note of the drop.
    sink.record(statement(0, "alice", "production")).unwrap();
    sink.flush_blocking(true, Duration::from_secs(30)).unwrap();
    w.shutdown().unwrap();
    let mut s = SqliteStore::open(&db).unwrap();
    let page = s
        .search(&Query {
            kind: Some("admin".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.rows.len(), 1, "{page:?}");
    assert!(
        page.rows[0]
            .summary
            .contains("audit.dropped events -> 5 dropped"),
        "{page:?}"
    );
    let r = verify(&mut s, &keys(dir.path()), None).unwrap();
    assert_eq!(r.chains[0].records, n as u64 + 2);
}

#[test]
fn store_outage_replays_in_order_and_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let db = dir.path().join("audit/audit.db");
    let w =
        AuditWriter::start_with(&config(), dir.path(), flaky(db.clone(), down.clone())).unwrap();
    write(&w, 10, "alice", "production");
    down.store(true, Ordering::SeqCst);
    // Force a reconnect so the outage is seen: a fresh writer would reopen;
    // here the next insert uses the open handle, so make it fail by
    // stopping the writer while down and restarting it.
    w.shutdown().unwrap();
    let w =
        AuditWriter::start_with(&config(), dir.path(), flaky(db.clone(), down.clone())).unwrap();
    let sink = w.sink();
    for i in 0..20 {
        sink.record(statement(i, "bob", "staging")).unwrap();
    }
    let st = sink.flush_blocking(false, Duration::from_secs(10)).unwrap();
    // Not reached in this run, so nothing is known to be stored yet.
    assert_eq!((st.spooled_seq, st.stored_seq), (30, 0));
    // Stopped while the store is still down: the spool keeps the events.
    w.shutdown().unwrap();
    down.store(false, Ordering::SeqCst);
    let w =
        AuditWriter::start_with(&config(), dir.path(), flaky(db.clone(), down.clone())).unwrap();
    write(&w, 1, "carol", "staging");
    w.shutdown().unwrap();
    let mut s = SqliteStore::open(&db).unwrap();
    let r = verify(
        &mut s,
        &keys(dir.path()),
        Some(&local_from_data_dir(dir.path()).unwrap()),
    )
    .unwrap();
    assert_eq!(r.chains[0].records, 31);
    let page = s
        .search(&Query {
            principal: Some("bob".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.rows.len(), 20);
}

#[test]
fn literals_are_dropped_unless_configured() {
    for log_literals in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuditConfig {
            log_literals,
            ..config()
        };
        let w = AuditWriter::start(&cfg, dir.path()).unwrap();
        write(&w, 1, "alice", "production");
        w.shutdown().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("audit/audit.db")).unwrap();
        let page = s.search(&Query::default()).unwrap();
        let text = page.rows[0].event.as_ref().unwrap().get("text").cloned();
        assert_eq!(text.is_some(), log_literals, "{page:?}");
    }
}

#[test]
fn files_in_the_data_dir_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    w.shutdown().unwrap();
    for f in ["initial.key", "signing.key", "state"] {
        let mode = std::fs::metadata(dir.path().join("audit").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is {mode:o}");
    }
}

/// Not a test on its own: the child process of the crash test. It writes
/// events forever and prints the count the spool has acknowledged.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("SLUICE_AUDIT_CRASH_CHILD") else {
        return;
    };
    let w = AuditWriter::start(&config(), std::path::Path::new(&dir)).unwrap();
    let sink = w.sink();
    let mut n = 0u64;
    loop {
        for _ in 0..10 {
            n += 1;
            sink.record(statement(n as usize, "crash-test", "production"))
                .unwrap();
        }
        sink.flush_blocking(false, Duration::from_secs(30)).unwrap();
        // Only what the spool has taken is reported as acknowledged.
        println!("acked {n}");
    }
}

#[test]
fn sigkill_loses_nothing_acknowledged() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("SLUICE_AUDIT_CRASH_CHILD", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = 0u64;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.trim().parse().unwrap();
            if acked >= 300 {
                break;
            }
        }
    }
    // Killed (SIGKILL) while it keeps writing.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(acked >= 300, "the child stopped early");

    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    let before = w
        .sink()
        .flush_blocking(true, Duration::from_secs(30))
        .unwrap();
    assert!(
        before.stored_seq >= acked,
        "acknowledged {acked}, recovered {before:?}"
    );
    write(&w, 10, "after-crash", "production");
    w.shutdown().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("audit/audit.db")).unwrap();
    let r = verify(
        &mut s,
        &keys(dir.path()),
        Some(&local_from_data_dir(dir.path()).unwrap()),
    )
    .unwrap();
    assert_eq!(r.chains[0].head_seq, before.stored_seq + 10);
    assert_eq!(r.chains[0].records, before.stored_seq + 10);
}

#[test]
fn discard_sink_accepts_everything() {
    let sink = sluice_audit::AuditSink::discard();
    assert_eq!(sink.record(statement(0, "alice", "production")), Ok(()));
    assert_eq!(sink.counters().dropped.load(Ordering::Relaxed), 1);
}

/// Sets the process's file size limit: writes past it fail (EFBIG) the way
/// they fail on a full disk (ENOSPC), part way through a write included.
fn limit_file_size(bytes: Option<u64>) {
    let lim = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; ignoring SIGXFSZ only
    // turns the signal sent at the limit into the write's EFBIG error.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
}

/// A full disk loses no event: what the spool cannot take waits in memory,
/// new statements are refused meanwhile (fail_closed), a write torn at the
/// limit does not hide later entries, and once there is room everything is
/// written, stored and verifiable, also after a restart.
#[test]
fn full_disk_loses_no_event() {
    const CHILD: &str = "SLUICE_TEST_FULL_DISK_CHILD";
    if std::env::var_os(CHILD).is_none() {
        // The limit applies to the whole process: run in a child of our own.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "full_disk_loses_no_event", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("1 passed"),
            "the child ran no test: {stdout}"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit/audit.db");
    let cfg = AuditConfig {
        on_spool_full: OnSpoolFull::FailClosed,
        ..config()
    };
    // The store is down throughout: every event lives in the spool only,
    // so a torn entry inside it would lose the events written after it.
    let down = Arc::new(AtomicBool::new(true));
    let w = AuditWriter::start_with(&cfg, dir.path(), flaky(db.clone(), down.clone())).unwrap();
    let sink = w.sink();
    for i in 0..50 {
        sink.record(statement(i, "alice", "production")).unwrap();
    }
    sink.flush_blocking(false, Duration::from_secs(10)).unwrap();
    let spool_size = std::fs::read_dir(dir.path().join("audit/spool"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap_or(0);
    // Entries are written over the zeros a segment starts with, where a
    // full disk cannot fail them: fill those until the next entry or two
    // must extend the file.
    let mut filled = 0u64;
    loop {
        let left = spool_size.saturating_sub(sink.counters().spool_bytes.load(Ordering::Relaxed));
        if left < 1500 {
            break;
        }
        let n = if left > 20_000 { 20 } else { 1 };
        for _ in 0..n {
            sink.record(statement(filled as usize, "dave", "production"))
                .unwrap();
            filled += 1;
        }
        sink.flush_blocking(false, Duration::from_secs(10)).unwrap();
    }
    // Less than one more entry fits: the next write is torn part way.
    limit_file_size(Some(spool_size + 200));
    let mut accepted = 0u64;
    for i in 0..20 {
        if sink.record(statement(i, "bob", "production")).is_ok() {
            accepted += 1;
        }
    }
    wait_for(10, "the spool to fail", || {
        sink.check() == Err(RecordError::SpoolFailing)
    });
    assert_eq!(
        sink.record(statement(0, "bob", "production")),
        Err(RecordError::SpoolFailing)
    );
    assert!(accepted > 0);
    // Nothing claims to be in the spool while it is not.
    assert!(sink
        .flush_blocking(false, Duration::from_millis(300))
        .is_none());
    assert!(sink.counters().spool_errors.load(Ordering::Relaxed) > 0);

    // Room again: the waiting events are written, recording works again.
    limit_file_size(None);
    wait_for(10, "the spool to recover", || sink.check().is_ok());
    sink.record(statement(0, "carol", "production")).unwrap();
    sink.flush_blocking(false, Duration::from_secs(10)).unwrap();
    assert_eq!(sink.counters().dropped.load(Ordering::Relaxed), 0);
    w.shutdown().unwrap();

    // A restart reads the whole spool back and, with the store up, stores it.
    down.store(false, Ordering::SeqCst);
    let w = AuditWriter::start_with(&cfg, dir.path(), flaky(db.clone(), down)).unwrap();
    let st = w
        .sink()
        .flush_blocking(true, Duration::from_secs(30))
        .unwrap();
    w.shutdown().unwrap();
    let expected = 50 + filled + accepted + 1;
    assert_eq!(st.stored_seq, st.spooled_seq);
    let mut s = SqliteStore::open(&db).unwrap();
    let r = verify(
        &mut s,
        &keys(dir.path()),
        Some(&local_from_data_dir(dir.path()).unwrap()),
    )
    .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(r.chains[0].records, expected);
}

/// Events that come one at a time (each its own writer batch, fsynced to
/// the spool) are gathered into few store transactions, and still reach
/// the store without anyone asking; a flush that waits for the store
/// finds everything stored.
#[test]
fn a_trickle_of_events_is_stored_in_few_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    let sink = w.sink();
    let n = 200;
    let mut spooled = 0;
    for i in 0..n {
        sink.record(statement(i, "alice", "production")).unwrap();
        spooled = sink
            .flush_blocking(false, Duration::from_secs(10))
            .unwrap()
            .spooled_seq;
    }
    let counters = sink.counters();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counters.stored_seq.load(Ordering::Relaxed) < spooled {
        assert!(
            std::time::Instant::now() < deadline,
            "spooled events never reached the store by themselves"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let writes = counters.store_writes.load(Ordering::Relaxed);
    assert!(
        writes <= n as u64 / 5,
        "{writes} store transactions for {n} events arriving one by one"
    );
    sink.record(statement(n, "bob", "production")).unwrap();
    let st = sink.flush_blocking(true, Duration::from_secs(10)).unwrap();
    assert_eq!(st.stored_seq, st.spooled_seq);
    w.shutdown().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("audit/audit.db")).unwrap();
    let page = s
        .search(&Query {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        page.rows
            .iter()
            .filter(|r| r.code == "db.statement")
            .count(),
        n + 1
    );
    // The block a batch leaves open is extended by the next one: a
    // trickle fills blocks as a burst does.
    let blocks: i64 = s
        .connection()
        .query_row("SELECT COUNT(*) FROM audit_blocks", [], |r| r.get(0))
        .unwrap();
    assert!(blocks <= 2, "{blocks} blocks for {} records", n + 2);
}
