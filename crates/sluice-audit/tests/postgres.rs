//! The PostgreSQL store: chains of several replicas, tampering, outages.

mod common;

use std::time::Duration;

use common::*;
use sluice_audit::verify::verify;
use sluice_audit::{
    AuditConfig, AuditWriter, PgStore, Query, Store, StoreLocation, StoreTls, UsageQuery,
};
use sluice_testkit::{PgOptions, PgServer, TestCa};

fn pg_config(pg: &PgServer) -> AuditConfig {
    AuditConfig {
        store: Some(pg.direct_url()),
        ..config()
    }
}

fn store(pg: &PgServer) -> PgStore {
    PgStore::connect(&pg.direct_url(), None).unwrap()
}

#[test]
fn two_replicas_share_a_store_and_tampering_is_found() {
    let pg = PgServer::start();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wa = AuditWriter::start(&pg_config(&pg), a.path()).unwrap();
    let wb = AuditWriter::start(&pg_config(&pg), b.path()).unwrap();
    write(&wa, 25, "alice", "production");
    write(&wb, 12, "bob", "staging");
    wa.shutdown().unwrap();
    wb.shutdown().unwrap();
    let mut all_keys = keys(a.path());
    all_keys.extend(keys(b.path()));
    let mut s = store(&pg);
    let r = verify(&mut s, &all_keys, None).unwrap();
    assert_eq!(r.chains.len(), 2);
    assert_eq!(r.chains.iter().map(|c| c.records).sum::<u64>(), 37);
    // A chain without its key is a failure, not a silent skip.
    assert!(verify(&mut s, &keys(a.path()), None)
        .unwrap_err()
        .what
        .contains("no initial key"));

    assert_eq!(
        s.count(&Query {
            text: Some("users".into()),
            ..Default::default()
        })
        .unwrap(),
        37
    );
    let page = s
        .search(&Query {
            principal: Some("bob".into()),
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.rows.len(), 5);
    assert!(page.next_cursor.is_some());
    let u = s
        .usage(&UsageQuery {
            column: Some("users.email".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(u.len(), 2);

    // Change a body (and its digest) in chain a.
    let chain_a = all_keys[0].chain.clone();
    s.execute_raw(&format!(
        "UPDATE audit_events SET body = replace(body, 'alice', 'mallory'),
           digest = sha256(convert_to(replace(body, 'alice', 'mallory'), 'UTF8'))
         WHERE chain = '{chain_a}' AND seq = 9"
    ))
    .unwrap();
    let f = verify(&mut s, &all_keys, None).unwrap_err();
    assert_eq!((f.chain.as_str(), f.seq), (chain_a.as_str(), 9), "{f}");
    assert!(
        f.what.contains("MAC mismatch") || f.what.contains("principal"),
        "{f}"
    );
}

#[test]
fn store_outage_events_arrive_after_restart() {
    let mut pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&pg_config(&pg), dir.path()).unwrap();
    write(&w, 10, "alice", "production");
    pg.stop();
    let sink = w.sink();
    for i in 0..20 {
        sink.record(statement(i, "during-outage", "production"))
            .unwrap();
    }
    let st = sink.flush_blocking(false, Duration::from_secs(10)).unwrap();
    assert_eq!((st.spooled_seq, st.stored_seq), (30, 10));
    wait_for(30, "a failed store write", || {
        sink.counters()
            .store_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    });
    pg.restart();
    let st = sink.flush_blocking(true, Duration::from_secs(60)).unwrap();
    assert_eq!(st.stored_seq, 30);
    w.shutdown().unwrap();
    let mut s = store(&pg);
    let r = verify(&mut s, &keys(dir.path()), None).unwrap();
    assert_eq!(r.chains[0].records, 30);
    assert_eq!(
        s.count(&Query {
            principal: Some("during-outage".into()),
            ..Default::default()
        })
        .unwrap(),
        20
    );
}

/// The shared store over TLS. With `store_tls = "verify-full"` the writer
/// stores and `verify` reads the trail over TLS (the server takes no
/// plaintext login: its pg_hba has only `hostssl`), also when the URL says
/// `sslmode=disable`; a CA that did not sign the server's certificate is
/// refused, and so is plaintext.
#[test]
fn the_store_is_reached_over_verified_tls() {
    let pg = PgServer::start_with(PgOptions { tls: true });
    let plain_url = pg
        .direct_url()
        .replace("sslmode=require", "sslmode=disable");
    let cfg = AuditConfig {
        store: Some(plain_url.clone()),
        store_tls: Some(StoreTls::VerifyFull),
        store_ca_file: pg.ca_file(),
        ..config()
    };
    cfg.validate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let w = AuditWriter::start(&cfg, dir.path()).unwrap();
    write(&w, 10, "alice", "production");
    w.shutdown().unwrap();
    let pg_location = |c: &AuditConfig| match c.location(dir.path()) {
        StoreLocation::Postgres(l) => l,
        other => panic!("{other:?}"),
    };
    let mut s = PgStore::connect_to(&pg_location(&cfg), None).unwrap();
    let r = verify(&mut s, &keys(dir.path()), None).unwrap();
    assert_eq!(r.chains[0].records, 10);

    let e = PgStore::connect(&plain_url, None).unwrap_err().to_string();
    assert!(e.contains("no encryption"), "{e}");
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, TestCa::new().cert_pem()).unwrap();
    let wrong = AuditConfig {
        store_ca_file: Some(other_ca),
        ..cfg.clone()
    };
    let e = PgStore::connect_to(&pg_location(&wrong), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate"), "{e}");
    // Settings that would not do what they say are config errors.
    let sqlite_tls = AuditConfig {
        store_tls: Some(StoreTls::Require),
        ..config()
    };
    assert!(sqlite_tls.validate().unwrap_err().contains("store_tls"));
    let ca_without_verify = AuditConfig {
        store_tls: Some(StoreTls::Require),
        ..cfg
    };
    assert!(ca_without_verify
        .validate()
        .unwrap_err()
        .contains("store_ca_file"));
}
