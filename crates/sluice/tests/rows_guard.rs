//! The rows-affected guard: in production an UPDATE or DELETE that changes
//! more rows than the target allows is rolled back and refused, whatever
//! the protocol, and the client's own transactions keep their meaning.

mod common;

use common::*;

const PROD: &str = "app-prod";
const LIMIT: i64 = 10;

/// PostgreSQL with 30 customers, Sluice in front with a production target
/// limited to 10 rows per statement and a development target without limit.
fn start_guarded() -> (PgServer, SluiceProcess) {
    let pg = PgServer::start();
    let config = format!(
        "{}{}max_rows_affected = {LIMIT}\n{}{}",
        listen(""),
        target_in(
            "production",
            PROD,
            &pg.addr(),
            sluice_testkit::SCRAM_USER,
            "disable"
        ),
        target(TARGET, &pg.addr(), sluice_testkit::SCRAM_USER, "disable"),
        user(USER, PASSWORD)
    );
    pg.psql(
        "app",
        "create table customers (id int primary key, tier text not null default 'basic');
         insert into customers select g from generate_series(1, 30) g;
         alter table customers owner to sluice_scram",
    );
    let sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .start();
    (pg, sluice)
}

async fn connect_to(sluice: &SluiceProcess, db: &str) -> tokio_postgres::Client {
    let conn = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={db} sslmode=disable",
        sluice.pg_port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Customers whose tier is not the default, read directly from PostgreSQL.
fn changed(pg: &PgServer) -> String {
    pg.psql(
        "app",
        "select count(*) from customers where tier <> 'basic'",
    )
}

fn total(pg: &PgServer) -> String {
    pg.psql("app", "select count(*) from customers")
}

fn assert_rows_refusal(e: &tokio_postgres::Error, rows: u64) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e}"));
    assert_eq!(db.code().code(), "42501", "{}", db.message());
    assert!(
        db.message().starts_with(&format!(
            "sluice: blocked by rows-affected-limit: the statement changed {rows} rows, more than the {LIMIT} allowed"
        )),
        "{}",
        db.message()
    );
    assert!(
        db.hint().is_some_and(|h| h.contains("batches")),
        "{:?}",
        db.hint()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_query_over_the_limit_is_rolled_back_outside_a_transaction() {
    let (pg, sluice) = start_guarded();
    let c = connect_to(&sluice, PROD).await;
    let e = c
        .batch_execute("update customers set tier = 'gold' where id > 5")
        .await
        .unwrap_err();
    assert_rows_refusal(&e, 25);
    assert_eq!(changed(&pg), "0", "nothing was committed");
    let e = c
        .batch_execute("delete from customers where id <= 20")
        .await
        .unwrap_err();
    assert_rows_refusal(&e, 20);
    assert_eq!(total(&pg), "30");

    // The session is idle and usable afterwards, and a change within the
    // limit is committed.
    let n = c
        .execute(
            "update customers set tier = 'gold' where id <= $1",
            &[&(LIMIT as i32)],
        )
        .await;
    assert_eq!(n.unwrap(), 10);
    let msgs = c
        .simple_query("update customers set tier = 'silver' where id between 11 and 13")
        .await
        .unwrap();
    assert!(matches!(
        msgs.first(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(3))
    ));
    assert_eq!(changed(&pg), "13");
    assert!(!c.is_closed());
    let (_, metrics) = sluice.http_get("/metrics");
    assert!(
        metrics.contains("sluice_statements_denied_total 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_limit_inside_a_transaction_aborts_it_like_an_error() {
    let (pg, sluice) = start_guarded();
    let c = connect_to(&sluice, PROD).await;
    c.batch_execute("begin; update customers set tier = 'a' where id = 1")
        .await
        .unwrap_err(); // multi-statement string with transaction control: refused
    c.batch_execute("begin").await.unwrap();
    c.batch_execute("update customers set tier = 'a' where id = 1")
        .await
        .unwrap();
    let e = c
        .batch_execute("update customers set tier = 'b' where id > 0")
        .await
        .unwrap_err();
    assert_rows_refusal(&e, 30);
    // As after any error, the transaction accepts nothing until it ends.
    let e = c.batch_execute("select 1").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "25P02");
    // COMMIT of a failed transaction rolls back.
    c.batch_execute("commit").await.unwrap();
    assert_eq!(changed(&pg), "0");

    // A transaction that stays under the limit commits.
    c.batch_execute("begin").await.unwrap();
    c.batch_execute("update customers set tier = 'a' where id <= 10")
        .await
        .unwrap();
    c.batch_execute("delete from customers where id = 30")
        .await
        .unwrap();
    c.batch_execute("commit").await.unwrap();
    assert_eq!(changed(&pg), "10");
    assert_eq!(total(&pg), "29");
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_and_pipelines_are_guarded_too() {
    let (pg, sluice) = start_guarded();
    let c = connect_to(&sluice, PROD).await;
    // Parse/Bind/Execute/Sync in the implicit transaction.
    let e = c
        .execute(
            "update customers set tier = $1 where id > $2",
            &[&"x", &0i32],
        )
        .await
        .unwrap_err();
    assert_rows_refusal(&e, 30);
    assert_eq!(changed(&pg), "0");

    // Pipelined: every other answer arrives, in order.
    let stmt = c
        .prepare("delete from customers where id > $1")
        .await
        .unwrap();
    let (a, b, d) = tokio::join!(
        c.query_one("select 1::int4", &[]),
        c.execute(&stmt, &[&5i32]),
        c.execute(&stmt, &[&25i32]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_rows_refusal(&b.unwrap_err(), 25);
    assert_eq!(d.unwrap(), 5);
    assert_eq!(total(&pg), "25");

    // In an explicit transaction: refused, and the transaction cannot commit.
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    tx.execute("update customers set tier = 'y' where id = 1", &[])
        .await
        .unwrap();
    let e = tx
        .execute("update customers set tier = 'y' where id > 1", &[])
        .await
        .unwrap_err();
    assert_rows_refusal(&e, 24);
    let e = tx.commit().await;
    // tokio-postgres reports the commit of a failed transaction as success
    // (the server answers ROLLBACK); either way nothing is kept.
    drop(e);
    assert_eq!(changed(&pg), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn effects_the_tag_cannot_count_are_refused_and_other_targets_are_free() {
    let (pg, sluice) = start_guarded();
    let c = connect_to(&sluice, PROD).await;
    for sql in [
        "with d as (delete from customers where id > 0 returning *) select count(*) from d",
        "explain analyze delete from customers where id > 0",
        "begin; delete from customers where id > 0; commit",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        let db = e.as_db_error().unwrap();
        assert_eq!(db.code().code(), "42501", "{sql}");
        assert!(
            db.message()
                .starts_with("sluice: blocked by rows-affected-limit"),
            "{sql}: {}",
            db.message()
        );
    }
    // SQL-level PREPARE/EXECUTE is counted like the statement itself.
    c.batch_execute("prepare wipe(int) as delete from customers where id > $1")
        .await
        .unwrap();
    let e = c.batch_execute("execute wipe(0)").await.unwrap_err();
    assert_rows_refusal(&e, 30);
    c.batch_execute("execute wipe(28)").await.unwrap();
    assert_eq!(total(&pg), "28");
    // RETURNING rows of a refused statement are followed by the refusal.
    let e = c
        .simple_query("delete from customers where id > 0 returning id")
        .await
        .unwrap_err();
    assert_rows_refusal(&e, 28);
    assert_eq!(total(&pg), "28");

    // psql sees the same error.
    let out = std::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={USER} dbname={PROD} sslmode=disable",
            sluice.pg_port()
        ))
        .args(["-X", "-c", "update customers set tier = 'z' where id > 0"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("rows-affected-limit"), "{err}");

    // A development target has no limit by default.
    let dev = connect_to(&sluice, TARGET).await;
    assert_eq!(
        dev.execute("update customers set tier = 'dev' where id > 0", &[])
            .await
            .unwrap(),
        28
    );
}
