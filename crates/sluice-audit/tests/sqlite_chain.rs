//! The chain on SQLite: an intact trail verifies; each tampering is found
//! and named; retention keeps the rest verifiable.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use sluice_audit::store::block::BlockRecord;
use sluice_audit::verify::{local_from_data_dir, verify};
use sluice_audit::{AuditWriter, SqliteStore, Store};

fn db(dir: &Path) -> SqliteStore {
    SqliteStore::open_existing(&dir.join("audit/audit.db")).unwrap()
}

/// 25 statements (checkpoints at 10, 20 and 25 at shutdown).
fn trail() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    write(&w, 25, "alice", "production");
    w.shutdown().unwrap();
    dir
}

fn exec(s: &SqliteStore, sql: &str) {
    s.connection().execute_batch(sql).unwrap();
}

/// Edit the records in the file as an attacker with write access could
/// (blocks and search keys rewritten to match).
fn edit(dir: &Path, f: impl FnOnce(&mut Vec<(String, BlockRecord)>)) {
    db(dir).edit_records(f).unwrap();
}

fn at(records: &mut [(String, BlockRecord)], seq: u64) -> &mut BlockRecord {
    &mut records.iter_mut().find(|(_, r)| r.seq == seq).unwrap().1
}

fn failure(dir: &Path) -> sluice_audit::Failure {
    let mut s = db(dir);
    verify(&mut s, &keys(dir), None).expect_err("tampering must be detected")
}

#[test]
fn intact_trail_verifies() {
    let dir = trail();
    let mut s = db(dir.path());
    let local = local_from_data_dir(dir.path()).unwrap();
    let r = verify(&mut s, &keys(dir.path()), Some(&local)).unwrap();
    assert_eq!(r.chains.len(), 1);
    let c = &r.chains[0];
    assert_eq!((c.records, c.head_seq, c.last_checkpoint_seq), (25, 25, 25));
    assert_eq!(c.checkpoints, 3, "{c:?}");
}

#[test]
fn restart_continues_the_chain() {
    let dir = trail();
    let templates = |s: &SqliteStore| number(s, "SELECT COUNT(*) FROM audit_body_templates");
    let before = templates(&db(dir.path()));
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    write(&w, 5, "bob", "staging");
    // Statements seen before the restart find their templates again.
    write(&w, 5, "alice", "production");
    w.shutdown().unwrap();
    let mut s = db(dir.path());
    assert_eq!(templates(&s), before + 5);
    let r = verify(&mut s, &keys(dir.path()), None).unwrap();
    assert_eq!(r.chains[0].head_seq, 35);
}

#[test]
fn changed_body_is_detected() {
    let dir = trail();
    let mut s = db(dir.path());
    // Change the principal inside the body and fix the digest and column
    // too, as a careful attacker would: only the MAC can tell.
    let chain = s.chains().unwrap()[0].chain.clone();
    let body = s.read_chain(&chain, 4, 1).unwrap()[0]
        .record
        .body
        .clone()
        .unwrap();
    let forged = body.replace("\"alice\"", "\"mallory\"");
    assert_ne!(forged, body);
    drop(s);
    edit(dir.path(), |all| {
        let r = at(all, 5);
        r.digest = sluice_audit::chain::sha256(forged.as_bytes()).to_vec();
        r.body = Some(forged);
        r.tpl = None;
        r.principal = "mallory".into();
    });
    let f = failure(dir.path());
    assert_eq!(f.seq, 5, "{f}");
    assert!(f.what.contains("MAC mismatch"), "{f}");
    assert_ne!(f.ulid, "-");
}

#[test]
fn changed_body_without_digest_and_changed_column_are_detected() {
    // A value of one statement (its duration).
    let dir = trail();
    edit(dir.path(), |all| {
        let r = at(all, 6);
        let body = r.body.take().unwrap();
        assert!(body.contains(",100"), "{body}");
        r.body = Some(body.replace(",100", ",101"));
    });
    let f = failure(dir.path());
    assert_eq!(f.seq, 6);
    assert!(f.what.contains("digest"), "{f}");

    // Values that no longer fit their template.
    let dir = trail();
    edit(dir.path(), |all| at(all, 8).body = Some("[]".into()));
    let f = failure(dir.path());
    assert_eq!(f.seq, 8);
    assert!(f.what.contains("digest"), "{f}");

    // The template several statements share: the first of them is named.
    let dir = trail();
    let s = db(dir.path());
    exec(
        &s,
        "UPDATE audit_body_templates SET body = replace(body, 'alice', 'alicf')",
    );
    let mut first = 0;
    edit(dir.path(), |all| {
        first = all
            .iter()
            .filter(|(_, r)| r.tpl.is_some())
            .map(|(_, r)| r.seq)
            .min()
            .unwrap();
    });
    let f = failure(dir.path());
    assert_eq!(f.seq, first);
    assert!(f.what.contains("digest"), "{f}");

    // A template gone.
    let dir = trail();
    exec(&db(dir.path()), "DELETE FROM audit_body_templates");
    let f = failure(dir.path());
    assert_eq!(f.seq, first);
    assert!(f.what.contains("digest"), "{f}");

    let dir = trail();
    edit(dir.path(), |all| {
        at(all, 7).principal = "someone-else".into()
    });
    let f = failure(dir.path());
    assert_eq!(f.seq, 7);
    assert!(f.what.contains("principal"), "{f}");
}

/// Key rows deleted so that searches miss a record: the chain is intact,
/// but verify names the first record the index no longer finds.
#[test]
fn search_index_tampering_is_detected() {
    let dir = trail();
    let s = db(dir.path());
    let first = number(&s, "SELECT MIN(first_seq) FROM audit_blocks");
    exec(
        &s,
        "DELETE FROM audit_block_keys WHERE key LIKE 'p%'
         AND block = (SELECT id FROM audit_blocks ORDER BY first_seq LIMIT 1)",
    );
    let f = failure(dir.path());
    assert_eq!(f.seq, first as u64, "{f}");
    assert!(f.what.contains("principal is not indexed"), "{f}");
}

#[test]
fn deleted_record_is_detected() {
    let dir = trail();
    edit(dir.path(), |all| all.retain(|(_, r)| r.seq != 7));
    let f = failure(dir.path());
    assert_eq!(f.seq, 7, "{f}");
    assert!(f.what.contains("missing"), "{f}");
}

#[test]
fn inserted_record_is_detected() {
    let dir = trail();
    // Make room at seq 8 and insert a copy of record 7 there.
    edit(dir.path(), |all| {
        for (_, r) in all.iter_mut().filter(|(_, r)| r.seq >= 8) {
            r.seq += 1;
        }
        let mut copy = at(all, 7).clone();
        copy.seq = 8;
        let pos = all.iter().position(|(_, r)| r.seq == 9).unwrap();
        let chain = all[0].0.clone();
        all.insert(pos, (chain, copy));
    });
    let f = failure(dir.path());
    assert_eq!(f.seq, 8, "{f}");
    assert!(f.what.contains("MAC mismatch"), "{f}");
}

#[test]
fn reordered_records_are_detected() {
    let dir = trail();
    edit(dir.path(), |all| {
        at(all, 3).seq = 0;
        at(all, 4).seq = 3;
        at(all, 0).seq = 4;
    });
    let f = failure(dir.path());
    assert_eq!(f.seq, 3, "{f}");
}

#[test]
fn truncated_tail_is_detected() {
    // Through a checkpoint: the store alone shows it.
    let dir = trail();
    edit(dir.path(), |all| all.retain(|(_, r)| r.seq <= 15));
    let f = failure(dir.path());
    assert_eq!(f.seq, 16, "{f}");
    assert!(f.what.contains("truncated"), "{f}");

    // After the last checkpoint, that checkpoint and the spooled copies
    // deleted too: the writer's state file in the data dir shows it.
    let dir = trail();
    edit(dir.path(), |all| all.retain(|(_, r)| r.seq <= 22));
    exec(
        &db(dir.path()),
        "DELETE FROM audit_checkpoints WHERE seq > 22;",
    );
    let local = local_from_data_dir(dir.path()).unwrap();
    assert_eq!(
        verify(&mut db(dir.path()), &keys(dir.path()), Some(&local))
            .unwrap()
            .chains[0]
            .from_spool,
        3
    );
    std::fs::remove_dir_all(dir.path().join("audit/spool")).unwrap();
    let mut s = db(dir.path());
    verify(&mut s, &keys(dir.path()), None).expect("the store alone cannot tell");
    let local = local_from_data_dir(dir.path()).unwrap();
    let f = verify(&mut s, &keys(dir.path()), Some(&local)).unwrap_err();
    assert_eq!(f.seq, 23, "{f}");
    assert!(f.what.contains("writer's state"), "{f}");
}

#[test]
fn forged_checkpoint_and_wrong_key_are_detected() {
    let dir = trail();
    exec(
        &db(dir.path()),
        "UPDATE audit_checkpoints SET seq = 11 WHERE seq = 10",
    );
    let f = failure(dir.path());
    assert!(f.what.contains("signature"), "{f}");

    let dir = trail();
    let mut k = keys(dir.path());
    k[0].initial[0] ^= 1;
    let f = verify(&mut db(dir.path()), &k, None).unwrap_err();
    assert_eq!(f.seq, 1, "{f}");
}

#[test]
fn retention_keeps_the_trail_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.retention = [
        ("development".to_string(), "30d".to_string()),
        ("production".to_string(), "400d".to_string()),
    ]
    .into();
    let w = AuditWriter::start(&cfg, dir.path()).unwrap();
    write(&w, 6, "alice", "development");
    write(&w, 4, "alice", "production");
    write(&w, 3, "bob", "development");
    let day = 86_400_000;
    // 31 days on: development bodies go, production stays.
    let r = w
        .apply_retention(
            sluice_audit::util::now_ms() + 31 * day,
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(r.removed, 9, "{r:?}");
    assert_eq!(
        r.cut,
        Some(6),
        "the first six records are now only headers: {r:?}"
    );
    w.sink()
        .flush_blocking(true, Duration::from_secs(30))
        .unwrap();
    let mut s = db(dir.path());
    let rep = verify(&mut s, &keys(dir.path()), None).unwrap();
    let c = &rep.chains[0];
    assert_eq!(c.cut_seq, 6);
    assert_eq!(c.removed_bodies, 3, "{c:?}");
    // Templates of removed bodies go with them (they name principals);
    // production's stay.
    let templates = |env: &str| {
        number(
            &s,
            &format!("SELECT COUNT(*) FROM audit_body_templates WHERE environment = '{env}'"),
        )
    };
    assert_eq!(templates("development"), 0);
    assert!(templates("production") > 0);
    // The retention itself is in the trail.
    let page = sluice_audit::Store::search(
        &mut s,
        &sluice_audit::Query {
            kind: Some("admin".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        page.rows
            .iter()
            .any(|r| r.summary.contains("audit.retention")),
        "{page:?}"
    );
    w.shutdown().unwrap();

    // A body removed by hand (no retention checkpoint covers production).
    edit(dir.path(), |all| {
        let r = at(all, 8);
        *r = BlockRecord {
            seq: r.seq,
            ulid: r.ulid.clone(),
            time_ms: r.time_ms,
            code: r.code.clone(),
            environment: r.environment.clone(),
            digest: r.digest.clone(),
            mac: r.mac.clone(),
            ..BlockRecord::default()
        };
    });
    let f = failure(dir.path());
    assert_eq!(f.seq, 8);
    assert!(f.what.contains("retention"), "{f}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_crash_with_the_state_file_behind_loses_nothing() {
    // The state file is rewritten at most once a second; a copy of the data
    // directory taken while the writer runs is what a crash leaves behind.
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&config(), dir.path()).unwrap();
    write(&w, 25, "alice", "production");
    let status = w
        .sink()
        .flush_blocking(true, Duration::from_secs(10))
        .expect("flushed");
    assert_eq!(status.stored_seq, 25);
    let crashed = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), crashed.path());
    w.shutdown().unwrap();

    let behind = sluice_audit::chain::load_state(&crashed.path().join("audit/state"))
        .unwrap()
        .expect("a state file");
    assert!(
        behind.seq < 25,
        "the state file lags the spool: {}",
        behind.seq
    );
    let w = AuditWriter::start(&config(), crashed.path()).unwrap();
    write(&w, 5, "bob", "staging");
    w.shutdown().unwrap();
    let mut s = db(crashed.path());
    let local = local_from_data_dir(crashed.path()).unwrap();
    let r = verify(&mut s, &keys(crashed.path()), Some(&local)).unwrap();
    assert_eq!((r.chains[0].records, r.chains[0].head_seq), (30, 30));
}
