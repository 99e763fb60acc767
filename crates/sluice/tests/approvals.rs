//! Statements that need approval become approval requests, inside the live
//! session: held until an approver decides (hold), or refused with the
//! request id and run once when sent again after approval (refuse), or run
//! at once under break-glass, loudly recorded.

mod common;

use std::time::Duration;

use common::*;
use sluice_audit::approvals::{ApprovalStore, Approver, ListFilter, Status};
use sluice_audit::AuditConfig;

const PROD: &str = "app-prod";

fn start_prod(approvals: &str) -> (PgServer, SluiceProcess) {
    let pg = PgServer::start();
    let oncall = format!(
        "[[users]]\nname = \"olga\"\nkind = \"human\"\ngroups = [\"oncall\"]\npassword_hash = \"{}\"\n",
        sluice_identity::make_verifier("olga-pw")
    );
    let config = format!(
        "{}{}{}{oncall}[approvals]\n{approvals}\n",
        listen(""),
        target_in(
            "production",
            PROD,
            &pg.addr(),
            sluice_testkit::SCRAM_USER,
            "disable"
        ),
        user(USER, PASSWORD),
    );
    pg.psql(
        "app",
        "create table customers (id int); alter table customers owner to sluice_scram;",
    );
    let sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .start();
    (pg, sluice)
}

async fn connect_as(sluice: &SluiceProcess, user: &str, password: &str) -> tokio_postgres::Client {
    let conn = format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname={PROD} sslmode=disable",
        sluice.pg_port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

fn store(sluice: &SluiceProcess) -> ApprovalStore {
    ApprovalStore::open_existing(&AuditConfig::default(), &sluice.data_dir()).unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn dba(name: &str) -> Approver {
    Approver {
        name: name.into(),
        groups: vec!["dba".into()],
    }
}

/// The one pending request, once it exists.
fn pending(store: &ApprovalStore) -> sluice_audit::approvals::Request {
    let mut found = None;
    sluice_testkit::wait_until(Duration::from_secs(20), "an approval request", || {
        found = store
            .list_blocking(&ListFilter {
                status: Some(Status::Pending),
                ..ListFilter::default()
            })
            .unwrap()
            .into_iter()
            .next();
        found.is_some()
    });
    found.unwrap()
}

fn columns(pg: &PgServer) -> String {
    pg.psql(
        "app",
        "select string_agg(column_name, ',' order by ordinal_position) from information_schema.columns where table_name = 'customers'",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_statement_runs_once_approved_and_fails_when_denied() {
    let (pg, sluice) = start_prod("");
    let store = store(&sluice);
    let c = connect_as(&sluice, USER, PASSWORD).await;

    // Held: the client waits while the request is pending.
    let held = tokio::spawn(async move {
        let r = c
            .batch_execute("alter table customers add column note text")
            .await;
        (c, r)
    });
    let req = pending(&store);
    assert_eq!(req.binding.principal, USER);
    assert_eq!(req.rule, "approve-schema-changes-in-production");
    assert_eq!(req.statement, "alter table customers add column note text");
    assert!(!held.is_finished(), "the statement waits for its approval");
    assert_eq!(columns(&pg), "id", "nothing ran yet");
    // The requester cannot approve it; a DBA can.
    let mut me = dba(USER);
    me.groups.push("dev".into());
    assert!(store
        .decide_blocking(&req.id, &me, true, None, now_ms())
        .is_err());
    store
        .decide_blocking(&req.id, &dba("dan"), true, Some("reviewed"), now_ms())
        .unwrap();
    let (c, r) = held.await.unwrap();
    r.unwrap();
    assert_eq!(columns(&pg), "id,note");
    let used = store.get_blocking(&req.id).unwrap().unwrap();
    assert_eq!(used.status, Status::Used, "single use");

    // Denied: the client gets SL002 with who denied it; nothing ran.
    let held = tokio::spawn(async move {
        let r = c
            .batch_execute("alter table customers drop column note")
            .await;
        (c, r)
    });
    let req = pending(&store);
    store
        .decide_blocking(&req.id, &dba("dan"), false, Some("not today"), now_ms())
        .unwrap();
    let (c, r) = held.await.unwrap();
    let e = r.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "SL002");
    assert!(
        db.message().contains("denied by dan: not today"),
        "{}",
        db.message()
    );
    assert_eq!(columns(&pg), "id,note");
    // The session goes on.
    c.batch_execute("select 1").await.unwrap();

    // psql shows the notice with the request id while it waits.
    let port = sluice.pg_port();
    let psql = std::thread::spawn(move || {
        std::process::Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={port} user={USER} dbname={PROD} sslmode=disable"
            ))
            .args(["-X", "-c", "alter table customers add column memo text"])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    });
    let req = pending(&store);
    store
        .decide_blocking(&req.id, &dba("dan"), true, None, now_ms())
        .unwrap();
    let out = psql.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("NOTICE:") && err.contains(&req.id) && err.contains("\"dba\""),
        "{err}"
    );
    assert_eq!(columns(&pg), "id,note,memo");
}

#[tokio::test(flavor = "multi_thread")]
async fn refuse_mode_runs_the_same_statement_once_after_approval() {
    let (pg, sluice) =
        start_prod("mode = \"refuse\"\nurl = \"https://sluice.example.com/approvals\"\n");
    let store = store(&sluice);
    let c = connect_as(&sluice, USER, PASSWORD).await;
    let sql = "alter table customers add column tier text";
    let e = c.batch_execute(sql).await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "SL001");
    let req = pending(&store);
    assert!(db.message().contains(&req.id), "{}", db.message());
    assert!(
        db.hint().is_some_and(
            |h| h.contains(&format!("https://sluice.example.com/approvals/{}", req.id))
        ),
        "{:?}",
        db.hint()
    );
    store
        .decide_blocking(&req.id, &dba("dan"), true, None, now_ms())
        .unwrap();
    c.batch_execute(sql).await.unwrap();
    assert_eq!(columns(&pg), "id,tier");
    // Used once: the same statement again is a new request.
    let e = c
        .batch_execute("alter table customers drop column tier")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "SL001");
}

#[tokio::test(flavor = "multi_thread")]
async fn break_glass_runs_now_and_unanswered_requests_expire() {
    let (pg, sluice) = start_prod("timeout_secs = 2\nbreak_glass_groups = [\"oncall\"]\n");
    let store = store(&sluice);
    let olga = connect_as(&sluice, "olga", "olga-pw").await;
    olga.batch_execute(
        "/* sluice:break-glass incident 4711, restoring the index */ alter table customers add column fix int",
    )
    .await
    .unwrap();
    assert_eq!(columns(&pg), "id,fix");
    let all = store.list_blocking(&ListFilter::default()).unwrap();
    assert_eq!(all[0].status, Status::BreakGlass);
    assert_eq!(
        all[0].break_glass.as_deref(),
        Some("incident 4711, restoring the index")
    );

    // Without the group, the comment is only a comment: it waits, and expires.
    let c = connect_as(&sluice, USER, PASSWORD).await;
    let e = c
        .batch_execute("/* sluice:break-glass please */ alter table customers drop column fix")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "SL003");
    assert_eq!(columns(&pg), "id,fix");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prepared_statement_with_parameters_is_refused_not_approved_blindly() {
    // A team policy: deletes in production need a DBA's approval.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deletes.cedar"),
        "@id(\"approve-deletes-in-production\")\n@reason(\"deletes in production need approval\")\n@approval(\"dba\")\nforbid (principal, action == Sluice::Action::\"delete\", resource)\nwhen { resource.environment == \"production\" };\n",
    )
    .unwrap();
    let (pg, sluice) = start_prod(&format!(
        "mode = \"refuse\"\n[policy]\ndir = \"{}\"",
        dir.path().display()
    ));
    pg.psql("app", "insert into customers values (1), (2)");
    let c = connect_as(&sluice, USER, PASSWORD).await;
    // Prepared with $1: an approval could not be bound to the value.
    let e = c
        .execute("delete from customers where id = $1", &[&1i32])
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "SL005", "{}", db.message());
    assert!(db.message().contains("bind parameters"), "{}", db.message());
    // The same through SQL: EXECUTE would run it later with any value.
    let e = c
        .batch_execute("prepare del(int) as delete from customers where id = $1")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "SL005", "{}", db.message());
    let e = c.batch_execute("execute del(1)").await.unwrap_err();
    assert_eq!(
        e.as_db_error().unwrap().code().code(),
        "26000",
        "nothing was prepared: {e}"
    );
    // `$1` in a SQL-standard function body is no bind parameter: the
    // schema change is an ordinary approval request.
    let e = c
        .batch_execute(
            "create function twice(int) returns int language sql begin atomic select $1 * 2; end",
        )
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "SL001", "{e}");
    // With its value in the text, it becomes an approval request.
    let e = c
        .batch_execute("delete from customers where id = 1")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "SL001");
    assert_eq!(
        pg.psql("app", "select count(*) from customers").trim(),
        "2",
        "nothing was deleted"
    );
}
