//! The approval request store, on SQLite and on PostgreSQL, from async code
//! (a current-thread runtime, as the proxy's workers) and from plain sync
//! code (as the CLI). Every scenario uses two store handles on the same
//! database, as two replicas would.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_audit::approvals::{
    ApprovalStore, Approver, Binding, DecideError, ListFilter, NewRequest, Status,
};
use sluice_audit::util::now_ms;
use sluice_audit::{AuditConfig, StoreTls};
use sluice_testkit::{PgOptions, PgServer, SCRAM_PASSWORD, SCRAM_USER};

const HOUR: i64 = 3_600_000;

fn binding(principal: &str, fingerprint: &str) -> Binding {
    Binding {
        principal: principal.into(),
        target: "app-production".into(),
        fingerprint: fingerprint.into(),
        params_hash: "p1".into(),
    }
}

fn new_req(principal: &str, fingerprint: &str) -> NewRequest {
    NewRequest {
        binding: binding(principal, fingerprint),
        principal_kind: "agent".into(),
        on_behalf_of: Some("alice@example.com".into()),
        groups: vec!["agents".into()],
        environment: "production".into(),
        session: "s1".into(),
        normalized: "DELETE FROM orders WHERE id = $1".into(),
        statement: "DELETE FROM orders WHERE id = 42".into(),
        facts: serde_json::json!({"kind": "delete", "tables_written": ["orders"], "rows": 1}),
        rule: "approve-deletes".into(),
        reason: "deletes in production need a DBA".into(),
        approver_group: "dba".into(),
        required_approvals: 1,
        require_justification: false,
        mode: "hold".into(),
        expires_at_ms: now_ms() + HOUR,
        break_glass: None,
    }
}

fn dba(name: &str) -> Approver {
    Approver {
        name: name.into(),
        groups: vec!["staff".into(), "dba".into()],
    }
}

fn sqlite_pair(dir: &Path) -> (ApprovalStore, ApprovalStore) {
    let c = AuditConfig::default();
    (
        ApprovalStore::open(&c, dir).unwrap(),
        ApprovalStore::open(&c, dir).unwrap(),
    )
}

/// `[audit] store = "postgres://sluice_scram@127.0.0.1:PORT/app"` with the
/// password in `password_file`.
fn pg_config(pg: &PgServer, dir: &Path) -> AuditConfig {
    let pw = dir.join("store.password");
    std::fs::write(&pw, format!("{SCRAM_PASSWORD}\n")).unwrap();
    AuditConfig {
        store: Some(format!(
            "postgres://{SCRAM_USER}@127.0.0.1:{}/app",
            pg.port()
        )),
        password_file: Some(pw),
        ..AuditConfig::default()
    }
}

fn pg_pair(pg: &PgServer, dir: &Path) -> (ApprovalStore, ApprovalStore) {
    let c = pg_config(pg, dir);
    let a = ApprovalStore::open(&c, &dir.join("a")).unwrap();
    let b = ApprovalStore::open(&c, &dir.join("b")).unwrap();
    assert!(a.is_postgres() && b.is_postgres());
    (a, b)
}

// ---------------------------------------------------------------------------
// The async scenario, run on both stores
// ---------------------------------------------------------------------------

async fn scenario(a: &ApprovalStore, b: &ApprovalStore) {
    create_get_list(a, b).await;
    n_of_m_and_rules(a, b).await;
    deny_wins(a, b).await;
    expiry(a, b).await;
    consume_exactly_once(a, b).await;
    concurrent_decisions(a, b).await;
    find_approved_binding(a, b).await;
    break_glass(a).await;
    wait_timeouts(a).await;
}

async fn create_get_list(a: &ApprovalStore, b: &ApprovalStore) {
    let mut ids = Vec::new();
    for (i, who) in ["agent-1", "agent-2", "agent-1"].iter().enumerate() {
        let mut n = new_req(who, &format!("fp-list-{i}"));
        n.binding.target = format!("list-target-{}", i % 2);
        let r = a.create(n.clone()).await.unwrap();
        assert_eq!(r.id.len(), 26);
        assert_eq!(r.status, Status::Pending);
        assert!(r.decisions.is_empty() && r.decided_ms.is_none());
        assert_eq!(
            (&r.binding, &r.statement, &r.facts),
            (&n.binding, &n.statement, &n.facts)
        );
        // The other replica sees it, field for field.
        let got = b.get(&r.id).await.unwrap().unwrap();
        assert_eq!(got, r);
        // JSON for the API, facts as JSON.
        let json = serde_json::to_value(&got).unwrap();
        assert_eq!(json["status"], "pending");
        assert_eq!(json["facts"]["tables_written"][0], "orders");
        assert_eq!(json["binding"]["fingerprint"], format!("fp-list-{i}"));
        let back: sluice_audit::approvals::Request = serde_json::from_value(json).unwrap();
        assert_eq!(back, got);
        ids.push(r.id);
        std::thread::sleep(Duration::from_millis(2)); // distinct ms: a total order
    }
    assert!(a.get("01NOSUCHREQUEST00000000000").await.unwrap().is_none());

    let list = |f: ListFilter| async move { b.list(&f).await.unwrap() };
    let ours = |v: Vec<sluice_audit::approvals::Request>| -> Vec<String> {
        v.into_iter()
            .filter(|r| r.binding.target.starts_with("list-target-"))
            .map(|r| r.id)
            .collect()
    };
    // Newest first.
    let all = ours(list(ListFilter::default()).await);
    assert_eq!(all, vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]);
    let f = ListFilter {
        principal: Some("agent-1".into()),
        ..ListFilter::default()
    };
    assert_eq!(ours(list(f).await), vec![ids[2].clone(), ids[0].clone()]);
    let f = ListFilter {
        target: Some("list-target-1".into()),
        ..ListFilter::default()
    };
    assert_eq!(ours(list(f).await), vec![ids[1].clone()]);
    let f = ListFilter {
        target: Some("list-target-0".into()),
        status: Some(Status::Pending),
        limit: 1,
        ..ListFilter::default()
    };
    assert_eq!(ours(list(f).await), vec![ids[2].clone()]);
    // Paging with `before`.
    let f = ListFilter {
        target: Some("list-target-0".into()),
        before: Some(ids[2].clone()),
        ..ListFilter::default()
    };
    assert_eq!(ours(list(f).await), vec![ids[0].clone()]);
    let f = ListFilter {
        status: Some(Status::Approved),
        target: Some("list-target-0".into()),
        ..ListFilter::default()
    };
    assert!(list(f).await.is_empty());
}

async fn n_of_m_and_rules(a: &ApprovalStore, b: &ApprovalStore) {
    let mut n = new_req("agent-1", "fp-nofm");
    n.required_approvals = 2;
    n.require_justification = true;
    let r = a.create(n).await.unwrap();
    let now = now_ms();
    let id = r.id.as_str();

    // No self-approval: neither the principal nor the human it acts for
    // (names compared without ASCII case).
    for name in ["agent-1", "alice@example.com", "Alice@Example.COM"] {
        let e = b.decide(id, &dba(name), true, Some("mine"), now).await;
        assert!(matches!(e, Err(DecideError::SelfApproval)), "{name}: {e:?}");
    }
    // The approver group is enforced.
    let dev = Approver {
        name: "mallory".into(),
        groups: vec!["dev".into()],
    };
    let e = a.decide(id, &dev, true, Some("trust me"), now).await;
    assert!(
        matches!(&e, Err(DecideError::NotInGroup(g)) if g == "dba"),
        "{e:?}"
    );
    // A justification is required for an approval…
    for j in [None, Some(""), Some("   ")] {
        let e = a.decide(id, &dba("bob"), true, j, now).await;
        assert!(
            matches!(e, Err(DecideError::JustificationRequired)),
            "{e:?}"
        );
    }
    // None of the refusals counted.
    assert!(a.get(id).await.unwrap().unwrap().decisions.is_empty());

    // 1 of 2: still pending.
    let r = a
        .decide(id, &dba("bob"), true, Some("checked the row"), now)
        .await
        .unwrap();
    assert_eq!((r.status, r.approvals()), (Status::Pending, 1));
    // Each approver votes once, whichever replica they go through.
    let e = b.decide(id, &dba("BOB"), true, Some("again"), now).await;
    assert!(matches!(e, Err(DecideError::AlreadyVoted)), "{e:?}");
    // 2 of 2, through the other replica: approved.
    let r = b
        .decide(id, &dba("carol"), true, Some("ok"), now + 5)
        .await
        .unwrap();
    assert_eq!(r.status, Status::Approved);
    assert_eq!(r.decided_ms, Some(now + 5));
    assert_eq!(
        r.decisions
            .iter()
            .map(|v| (v.approver.as_str(), v.approve, v.justification.as_deref()))
            .collect::<Vec<_>>(),
        vec![
            ("bob", true, Some("checked the row")),
            ("carol", true, Some("ok"))
        ]
    );
    assert_eq!(a.get(id).await.unwrap().unwrap(), r);
    // Decided: no more votes.
    let e = a.decide(id, &dba("dave"), false, None, now).await;
    assert!(
        matches!(e, Err(DecideError::NotPending(Status::Approved))),
        "{e:?}"
    );
    let e = a
        .decide("01NOSUCHREQUEST00000000000", &dba("dave"), true, None, now)
        .await;
    assert!(matches!(e, Err(DecideError::NotFound)), "{e:?}");
}

async fn deny_wins(a: &ApprovalStore, b: &ApprovalStore) {
    let mut n = new_req("agent-1", "fp-deny");
    n.required_approvals = 2;
    n.require_justification = true;
    let r = a.create(n).await.unwrap();
    let now = now_ms();
    a.decide(&r.id, &dba("bob"), true, Some("fine"), now)
        .await
        .unwrap();
    // A denial needs no justification (but may carry one).
    let r = b
        .decide(&r.id, &dba("carol"), false, None, now + 1)
        .await
        .unwrap();
    assert_eq!((r.status, r.decided_ms), (Status::Denied, Some(now + 1)));
    let e = a.decide(&r.id, &dba("dave"), true, Some("x"), now).await;
    assert!(
        matches!(e, Err(DecideError::NotPending(Status::Denied))),
        "{e:?}"
    );
    assert!(!a.consume(&r.id, now).await.unwrap());
    // Any single deny wins, even the first vote.
    let r = a.create(new_req("agent-1", "fp-deny2")).await.unwrap();
    let r = b
        .decide(&r.id, &dba("carol"), false, Some("no"), now)
        .await
        .unwrap();
    assert_eq!(r.status, Status::Denied);
    assert_eq!(r.decisions[0].justification.as_deref(), Some("no"));
}

async fn expiry(a: &ApprovalStore, b: &ApprovalStore) {
    let now = now_ms();
    // Deciding after the expiry: refused, and the request becomes expired.
    let r = a.create(new_req("agent-1", "fp-exp")).await.unwrap();
    let e = b
        .decide(&r.id, &dba("bob"), true, None, r.expires_at_ms)
        .await;
    assert!(matches!(e, Err(DecideError::Expired)), "{e:?}");
    let e = b
        .decide(&r.id, &dba("carol"), true, None, r.expires_at_ms + 1)
        .await;
    assert!(
        matches!(e, Err(DecideError::NotPending(Status::Expired))),
        "{e:?}"
    );
    // Stored as expired: listed as expired at any time now.
    let f = ListFilter {
        status: Some(Status::Expired),
        ..ListFilter::default()
    };
    assert!(a.list(&f).await.unwrap().iter().any(|x| x.id == r.id));

    // Already past its expiry when read: reported expired before any write.
    let mut n = new_req("agent-1", "fp-exp2");
    n.expires_at_ms = now - 1;
    let r = a.create(n).await.unwrap();
    let got = b.get(&r.id).await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.decided_ms),
        (Status::Expired, Some(now - 1))
    );
    let pending = ListFilter {
        status: Some(Status::Pending),
        ..ListFilter::default()
    };
    assert!(!b.list(&pending).await.unwrap().iter().any(|x| x.id == r.id));
    assert!(b.list(&f).await.unwrap().iter().any(|x| x.id == r.id));
    // The sweep writes it down.
    assert!(a.expire_due(now_ms()).await.unwrap() >= 1);
    assert_eq!(a.expire_due(now_ms()).await.unwrap(), 0);

    // Approved but not used in time: consume refuses it and it expires.
    let r = a.create(new_req("agent-1", "fp-exp3")).await.unwrap();
    a.decide(&r.id, &dba("bob"), true, None, now).await.unwrap();
    assert!(!b.consume(&r.id, r.expires_at_ms).await.unwrap());
    let got = a.get(&r.id).await.unwrap().unwrap();
    assert_eq!(got.status, Status::Expired);
    assert!(
        !a.consume(&r.id, now).await.unwrap(),
        "an expired request stays expired"
    );
}

async fn consume_exactly_once(a: &ApprovalStore, b: &ApprovalStore) {
    for round in 0..10 {
        let r = a
            .create(new_req("agent-1", &format!("fp-consume-{round}")))
            .await
            .unwrap();
        let now = now_ms();
        // Not approved yet: nothing to consume.
        assert!(!b.consume(&r.id, now).await.unwrap());
        a.decide(&r.id, &dba("bob"), true, None, now).await.unwrap();
        // Two replicas race to use it, twice each: exactly one wins.
        let (x, y, z, w) = tokio::join!(
            a.consume(&r.id, now),
            b.consume(&r.id, now),
            a.consume(&r.id, now),
            b.consume(&r.id, now)
        );
        let wins = [x, y, z, w]
            .into_iter()
            .filter(|v| *v.as_ref().unwrap())
            .count();
        assert_eq!(wins, 1, "round {round}");
        let got = b.get(&r.id).await.unwrap().unwrap();
        assert_eq!((got.status, got.used_ms), (Status::Used, Some(now)));
        assert!(!a.consume(&r.id, now).await.unwrap());
    }
    assert!(!a
        .consume("01NOSUCHREQUEST00000000000", now_ms())
        .await
        .unwrap());
}

async fn concurrent_decisions(a: &ApprovalStore, b: &ApprovalStore) {
    let now = now_ms();
    let (bob, carol) = (dba("bob"), dba("carol"));
    for _ in 0..5 {
        // 1 of N, two approvers at once on two replicas: one decides, the
        // other finds it already approved (never two approvals counted).
        let r = a.create(new_req("agent-1", "fp-race1")).await.unwrap();
        let (x, y) = tokio::join!(
            a.decide(&r.id, &bob, true, None, now),
            b.decide(&r.id, &carol, true, None, now)
        );
        let ok = [&x, &y].iter().filter(|v| v.is_ok()).count();
        assert_eq!(ok, 1, "{x:?} {y:?}");
        assert!(
            [&x, &y]
                .iter()
                .any(|v| matches!(v, Err(DecideError::NotPending(Status::Approved)))),
            "{x:?} {y:?}"
        );
        assert_eq!(a.get(&r.id).await.unwrap().unwrap().decisions.len(), 1);

        // 2 of N, both at once: both count, approved once.
        let mut n = new_req("agent-1", "fp-race2");
        n.required_approvals = 2;
        let r = a.create(n).await.unwrap();
        let (x, y) = tokio::join!(
            a.decide(&r.id, &bob, true, None, now),
            b.decide(&r.id, &carol, true, None, now)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        let mut statuses = vec![x.status, y.status];
        statuses.sort_by_key(|s| s.as_str());
        assert_eq!(statuses, vec![Status::Approved, Status::Pending]);
        let got = b.get(&r.id).await.unwrap().unwrap();
        assert_eq!((got.status, got.approvals()), (Status::Approved, 2));

        // The same approver on both replicas at once: one vote.
        let mut n = new_req("agent-1", "fp-race3");
        n.required_approvals = 2;
        let r = a.create(n).await.unwrap();
        let (x, y) = tokio::join!(
            a.decide(&r.id, &bob, true, None, now),
            b.decide(&r.id, &bob, true, None, now)
        );
        assert!(
            [&x, &y]
                .iter()
                .any(|v| matches!(v, Err(DecideError::AlreadyVoted))),
            "{x:?} {y:?}"
        );
        let got = b.get(&r.id).await.unwrap().unwrap();
        assert_eq!((got.status, got.approvals()), (Status::Pending, 1));
    }
}

async fn find_approved_binding(a: &ApprovalStore, b: &ApprovalStore) {
    let now = now_ms();
    let n = new_req("agent-9", "fp-find");
    let exact = n.binding.clone();
    let r = a.create(n).await.unwrap();
    // Pending: not found.
    assert!(b.find_approved(&exact, now).await.unwrap().is_none());
    a.decide(&r.id, &dba("bob"), true, None, now).await.unwrap();
    let found = b.find_approved(&exact, now).await.unwrap().unwrap();
    assert_eq!(
        (found.id.as_str(), found.status),
        (r.id.as_str(), Status::Approved)
    );
    // Only for exactly this binding.
    let variants = [
        Binding {
            principal: "agent-8".into(),
            ..exact.clone()
        },
        Binding {
            principal: "AGENT-9".into(),
            ..exact.clone()
        },
        Binding {
            target: "app-staging".into(),
            ..exact.clone()
        },
        Binding {
            fingerprint: "fp-other".into(),
            ..exact.clone()
        },
        Binding {
            params_hash: "p2".into(),
            ..exact.clone()
        },
    ];
    for v in &variants {
        assert!(b.find_approved(v, now).await.unwrap().is_none(), "{v:?}");
        assert!(b.take_approved(v, now).await.unwrap().is_none(), "{v:?}");
    }
    // Not after its expiry.
    assert!(b
        .find_approved(&exact, r.expires_at_ms)
        .await
        .unwrap()
        .is_none());
    // take_approved finds and consumes it, once.
    let taken = b.take_approved(&exact, now).await.unwrap().unwrap();
    assert_eq!(
        (taken.id.as_str(), taken.status),
        (r.id.as_str(), Status::Used)
    );
    assert!(a.find_approved(&exact, now).await.unwrap().is_none());
    assert!(a.take_approved(&exact, now).await.unwrap().is_none());
    assert!(!a.consume(&r.id, now).await.unwrap());

    // Two approved for the same binding, two replicas taking at once: each
    // gets a different one.
    let (r1, r2) = (
        a.create(new_req("agent-9", "fp-find")).await.unwrap(),
        a.create(new_req("agent-9", "fp-find")).await.unwrap(),
    );
    for r in [&r1, &r2] {
        b.decide(&r.id, &dba("bob"), true, None, now).await.unwrap();
    }
    let (x, y) = tokio::join!(a.take_approved(&exact, now), b.take_approved(&exact, now));
    let (x, y) = (x.unwrap().unwrap(), y.unwrap().unwrap());
    assert_ne!(x.id, y.id);
    assert!(a.take_approved(&exact, now).await.unwrap().is_none());
}

async fn break_glass(a: &ApprovalStore) {
    let mut n = new_req("alice", "fp-bg");
    n.break_glass = Some("incident 42: orders table on fire".into());
    let r = a.create(n).await.unwrap();
    assert_eq!(r.status, Status::BreakGlass);
    assert_eq!(r.decided_ms, Some(r.created_ms));
    assert_eq!(r.decisions.len(), 1);
    assert_eq!(r.decisions[0].approver, "alice");
    assert_eq!(
        r.decisions[0].justification.as_deref(),
        Some("incident 42: orders table on fire")
    );
    assert_eq!(serde_json::to_value(&r).unwrap()["status"], "break_glass");
    let got = a.get(&r.id).await.unwrap().unwrap();
    assert_eq!(got, r);
    assert!(!a.consume(&r.id, now_ms()).await.unwrap());
    let e = a.decide(&r.id, &dba("bob"), true, None, now_ms()).await;
    assert!(
        matches!(e, Err(DecideError::NotPending(Status::BreakGlass))),
        "{e:?}"
    );
    // Returned by wait_decided at once: it is not pending.
    let w = a.wait_decided(&r.id, now_ms() + 5_000).await.unwrap();
    assert_eq!(w.unwrap().status, Status::BreakGlass);

    // Bad input.
    let mut n = new_req("alice", "fp-bad");
    n.mode = "later".into();
    assert!(a.create(n).await.is_err());
}

async fn wait_timeouts(a: &ApprovalStore) {
    // Still pending at the deadline: None, at the deadline.
    let r = a
        .create(new_req("agent-1", "fp-wait-timeout"))
        .await
        .unwrap();
    let t = Instant::now();
    assert!(a
        .wait_decided(&r.id, now_ms() + 300)
        .await
        .unwrap()
        .is_none());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A deadline in the past: answers at once.
    assert!(a.wait_decided(&r.id, 0).await.unwrap().is_none());
    // Expiring while waited for: returns it expired, at its expiry.
    let mut n = new_req("agent-1", "fp-wait-expiry");
    n.expires_at_ms = now_ms() + 300;
    let r = a.create(n).await.unwrap();
    let t = Instant::now();
    let w = a
        .wait_decided(&r.id, now_ms() + 10_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.status, Status::Expired);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(a.get(&r.id).await.unwrap().unwrap().status, Status::Expired);
    // No such request: an error, not a timeout.
    assert!(a
        .wait_decided("01NOSUCHREQUEST00000000000", now_ms() + 1_000)
        .await
        .is_err());
    // A waiter that gives up (its future dropped) stops waiting.
    let r = a
        .create(new_req("agent-1", "fp-wait-dropped"))
        .await
        .unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        a.wait_decided(&r.id, now_ms() + 60_000),
    )
    .await;
    assert!(gave_up.is_err());
}

/// A waiter on replica `a` is woken by a decision made through replica `b`,
/// within `max_delay` of the decision.
async fn woken_by_other_replica(a: &ApprovalStore, b: &ApprovalStore, max_delay: Duration) {
    for approve in [true, false] {
        let r = a.create(new_req("agent-1", "fp-wake")).await.unwrap();
        let waiter = async {
            let w = a.wait_decided(&r.id, now_ms() + 30_000).await;
            (w, Instant::now())
        };
        let decider = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            b.decide(&r.id, &dba("bob"), approve, None, now_ms())
                .await
                .unwrap();
            Instant::now()
        };
        let ((w, woke), decided) = tokio::join!(waiter, decider);
        let w = w.unwrap().expect("decided, not timed out");
        let want = if approve {
            Status::Approved
        } else {
            Status::Denied
        };
        assert_eq!(w.status, want);
        let delay = woke.saturating_duration_since(decided);
        assert!(delay < max_delay, "woken {delay:?} after the decision");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sqlite_async() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = sqlite_pair(dir.path());
    assert!(!a.is_postgres());
    assert!(dir.path().join("audit/audit.db").exists());
    scenario(&a, &b).await;
    // Another handle: seen by polling (100 ms).
    woken_by_other_replica(&a, &b, Duration::from_millis(1_000)).await;
    // The same handle: woken at once.
    woken_by_other_replica(&a, &a, Duration::from_millis(1_000)).await;
    // Clones share everything; the last one dropped here, in async code.
    let c = a.clone();
    drop(a);
    assert_eq!(c.list(&ListFilter::default()).await.unwrap().len(), 45);
}

#[tokio::test(flavor = "current_thread")]
async fn postgres_async() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pg_pair(&pg, dir.path());
    scenario(&a, &b).await;
    // LISTEN/NOTIFY: far quicker than the 5 s safety-net poll.
    woken_by_other_replica(&a, &b, Duration::from_millis(1_000)).await;
    // The tables are there, in the shared database.
    let n = pg.psql("app", "SELECT count(*) FROM approval_requests");
    assert_eq!(n, "43");
}

/// The approval store over verified TLS (the server takes no plaintext
/// login): requests, decisions and the LISTEN/NOTIFY wake-up between
/// replicas.
#[tokio::test(flavor = "current_thread")]
async fn postgres_over_tls() {
    let pg = PgServer::start_with(PgOptions { tls: true });
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        store_tls: Some(StoreTls::VerifyFull),
        store_ca_file: pg.ca_file(),
        ..pg_config(&pg, dir.path())
    };
    c.validate().unwrap();
    let a = ApprovalStore::open(&c, &dir.path().join("a")).unwrap();
    let b = ApprovalStore::open(&c, &dir.path().join("b")).unwrap();
    create_get_list(&a, &b).await;
    woken_by_other_replica(&a, &b, Duration::from_millis(1_000)).await;
    let plain = AuditConfig {
        store_tls: Some(StoreTls::Disable),
        store_ca_file: None,
        ..c
    };
    let e = match ApprovalStore::open(&plain, &dir.path().join("c")) {
        Ok(_) => panic!("plaintext is refused"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("no encryption"), "{e}");
}

#[test]
fn postgres_open_errors() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = pg_config(&pg, dir.path());
    std::fs::write(c.password_file.as_ref().unwrap(), "wrong").unwrap();
    let e = ApprovalStore::open(&c, dir.path()).unwrap_err().to_string();
    assert!(e.contains("postgres"), "{e}");
    assert!(!e.contains("wrong"), "{e}");
    c.password_file = None;
    c.store = Some("postgres://nobody@127.0.0.1:1/app?connect_timeout=2".into());
    assert!(ApprovalStore::open(&c, dir.path()).is_err());
}

#[test]
fn open_existing_refuses_a_missing_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig::default();
    assert!(ApprovalStore::open_existing(&c, dir.path()).is_err());
    assert!(!dir.path().join("audit/audit.db").exists());
    drop(ApprovalStore::open(&c, dir.path()).unwrap());
    ApprovalStore::open_existing(&c, dir.path()).unwrap();
}

// ---------------------------------------------------------------------------
// Sync callers (the CLI)
// ---------------------------------------------------------------------------

fn sync_scenario(a: &ApprovalStore, b: &ApprovalStore, max_delay: Duration) {
    let mut n = new_req("agent-1", "fp-sync");
    n.required_approvals = 2;
    let r = a.create_blocking(n).unwrap();
    assert_eq!(b.get_blocking(&r.id).unwrap().unwrap(), r);
    let f = ListFilter {
        status: Some(Status::Pending),
        principal: Some("agent-1".into()),
        ..ListFilter::default()
    };
    assert!(b.list_blocking(&f).unwrap().iter().any(|x| x.id == r.id));
    let now = now_ms();
    let e = b.decide_blocking(&r.id, &dba("alice@example.com"), true, None, now);
    assert!(matches!(e, Err(DecideError::SelfApproval)), "{e:?}");
    b.decide_blocking(&r.id, &dba("bob"), true, None, now)
        .unwrap();
    assert!(b.find_approved_blocking(&r.binding, now).unwrap().is_none());

    // A CLI waits while an approver (another replica, another thread)
    // decides.
    let (b2, id) = (b.clone(), r.id.clone());
    let decider = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        b2.decide_blocking(&id, &dba("carol"), true, None, now_ms())
            .unwrap();
        Instant::now()
    });
    let w = a.wait_decided_blocking(&r.id, now_ms() + 30_000).unwrap();
    let woke = Instant::now();
    let decided = decider.join().unwrap();
    assert_eq!(w.unwrap().status, Status::Approved);
    let delay = woke.saturating_duration_since(decided);
    assert!(delay < max_delay, "woken {delay:?} after the decision");

    assert!(a.find_approved_blocking(&r.binding, now).unwrap().is_some());
    // Two threads, two replicas, one use.
    let (a2, b2) = (a.clone(), b.clone());
    let (id1, id2) = (r.id.clone(), r.id.clone());
    let t1 = std::thread::spawn(move || a2.consume_blocking(&id1, now_ms()).unwrap());
    let t2 = std::thread::spawn(move || b2.consume_blocking(&id2, now_ms()).unwrap());
    let wins = [t1.join().unwrap(), t2.join().unwrap()];
    assert_eq!(wins.iter().filter(|w| **w).count(), 1);
    assert!(a.take_approved_blocking(&r.binding, now).unwrap().is_none());
    assert!(a
        .wait_decided_blocking(
            &a.create_blocking(new_req("x", "fp-t")).unwrap().id,
            now_ms() + 200
        )
        .unwrap()
        .is_none());
    assert_eq!(a.expire_due_blocking(now_ms()).unwrap(), 0);
}

#[test]
fn sqlite_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = sqlite_pair(dir.path());
    sync_scenario(&a, &b, Duration::from_millis(1_000));
}

#[test]
fn postgres_sync() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pg_pair(&pg, dir.path());
    sync_scenario(&a, &b, Duration::from_millis(1_000));
}

/// The blocking API inside `spawn_blocking` of a current-thread runtime,
/// and `open` there too: no "runtime within a runtime" panic.
#[tokio::test(flavor = "current_thread")]
async fn blocking_api_inside_spawn_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let r = tokio::task::spawn_blocking(move || {
        let s = ApprovalStore::open(&AuditConfig::default(), &path).unwrap();
        let r = s.create_blocking(new_req("agent-1", "fp-sb")).unwrap();
        s.decide_blocking(&r.id, &dba("bob"), true, None, now_ms())
            .unwrap();
        (s, r.id)
    })
    .await
    .unwrap();
    let (s, id) = r;
    // And the async API from here, then the last handle dropped in async code.
    assert!(s.consume(&id, now_ms()).await.unwrap());
}

/// The store can be shared between tasks and threads, and its futures can
/// be spawned or returned from axum handlers (they are `Send`).
#[test]
fn store_and_futures_are_send() {
    fn shared<T: Clone + Send + Sync + 'static>() {}
    fn send<T: Send>(_: &T) {}
    shared::<ApprovalStore>();
    let dir = tempfile::tempdir().unwrap();
    let s = ApprovalStore::open(&AuditConfig::default(), dir.path()).unwrap();
    let (who, b) = (dba("bob"), binding("x", "y"));
    send(&s.create(new_req("x", "y")));
    send(&s.get("id"));
    send(&s.list(&ListFilter::default()));
    send(&s.decide("id", &who, true, Some("j"), 0));
    send(&s.consume("id", 0));
    send(&s.find_approved(&b, 0));
    send(&s.take_approved(&b, 0));
    send(&s.wait_decided("id", 0));
    send(&s.expire_due(0));
}
