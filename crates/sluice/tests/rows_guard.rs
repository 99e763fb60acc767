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

// Prepared statements and portals follow the server: a redefinition or
// removal the server rejects must not change what an execution is judged as.

/// A raw protocol session on the production target.
fn raw_prod(sluice: &SluiceProcess) -> Raw {
    let mut raw = Raw::connect(sluice.pg_port());
    raw.login(USER, PASSWORD, PROD);
    raw
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for s in [name, sql] {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &b)
}

fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for s in [portal, statement] {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }
    // No parameter formats, no parameters, no result formats.
    b.extend_from_slice(&[0; 6]);
    message(b'B', &b)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = portal.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(&0i32.to_be_bytes());
    message(b'E', &b)
}

fn close_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    message(b'C', &b)
}

fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// The messages up to and including the next ReadyForQuery.
fn until_ready(raw: &mut Raw) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let m = raw.recv().expect("connection closed before ReadyForQuery");
        let done = m.0 == b'Z';
        out.push(m);
        if done {
            return out;
        }
    }
}

/// The SQLSTATE and message of each ErrorResponse among `msgs`.
fn errors(msgs: &[(u8, Vec<u8>)]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, body)| {
            let f = parse_fields(body);
            (field(&f, b'C'), field(&f, b'M'))
        })
        .collect()
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_default()
}

fn assert_refused_by_rows_guard(msgs: &[(u8, Vec<u8>)]) {
    let errs = errors(msgs);
    assert!(
        errs.iter()
            .any(|(code, m)| code == "42501"
                && m.starts_with("sluice: blocked by rows-affected-limit")),
        "{errs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_prepare_does_not_redefine_the_statement() {
    let (pg, sluice) = start_guarded();
    let c = connect_to(&sluice, PROD).await;
    c.batch_execute("prepare p as delete from customers where id > 0")
        .await
        .unwrap();
    // The server keeps the DELETE: the name is taken.
    let e = c.batch_execute("prepare p as select 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P05", "{e}");
    let e = c.batch_execute("execute p").await.unwrap_err();
    assert_rows_refusal(&e, 30);
    assert_eq!(total(&pg), "30");
}

/// Send `sql` inside a failed transaction (the server rejects it), then roll back.
async fn rejected_in_a_failed_transaction(c: &tokio_postgres::Client, sql: &str) {
    c.batch_execute("begin").await.unwrap();
    c.batch_execute("select 1/0").await.unwrap_err();
    let e = c.batch_execute(sql).await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02", "{sql}: {e}");
    c.batch_execute("rollback").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deallocate_rejected_in_a_failed_transaction_keeps_the_statement() {
    let (pg, sluice) = start_guarded();
    let c = connect_to(&sluice, PROD).await;
    c.batch_execute("prepare p2 as delete from customers where id > 0")
        .await
        .unwrap();
    rejected_in_a_failed_transaction(&c, "deallocate p2").await;
    let e = c.batch_execute("execute p2").await.unwrap_err();
    assert_rows_refusal(&e, 30);
    assert_eq!(total(&pg), "30");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discard_all_rejected_in_a_failed_transaction_keeps_the_statements() {
    let (pg, sluice) = start_guarded();
    let c = connect_to(&sluice, PROD).await;
    c.batch_execute("prepare p3 as delete from customers where id > 0")
        .await
        .unwrap();
    rejected_in_a_failed_transaction(&c, "discard all").await;
    let e = c.batch_execute("execute p3").await.unwrap_err();
    assert_rows_refusal(&e, 30);
    assert_eq!(total(&pg), "30");
    // Accepted, it does remove them.
    c.batch_execute("discard all").await.unwrap();
    let e = c.batch_execute("execute p3").await.unwrap_err();
    assert_eq!(sqlstate(&e), "26000", "{e}");
}

#[test]
fn a_rejected_parse_does_not_redefine_the_statement() {
    let (pg, sluice) = start_guarded();
    let mut raw = raw_prod(&sluice);
    raw.send(&[parse("s1", "delete from customers where id > 0"), sync()].concat());
    assert_eq!(errors(&until_ready(&mut raw)), []);
    raw.send(&[parse("s1", "select 1"), sync()].concat());
    let errs = errors(&until_ready(&mut raw));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].0, "42P05", "{errs:?}");
    raw.send(&[bind("", "s1"), execute(""), sync()].concat());
    assert_refused_by_rows_guard(&until_ready(&mut raw));
    assert_eq!(total(&pg), "30");

    // Pipelined, before any answer: either definition may be the one that
    // runs, so the worse is judged.
    raw.send(
        &[
            parse("s2", "delete from customers where id > 0"),
            sync(),
            parse("s2", "select 1"),
            sync(),
            bind("", "s2"),
            execute(""),
            sync(),
        ]
        .concat(),
    );
    assert_eq!(errors(&until_ready(&mut raw)), []);
    assert_eq!(errors(&until_ready(&mut raw)).len(), 1);
    assert_refused_by_rows_guard(&until_ready(&mut raw));
    assert_eq!(total(&pg), "30");
}

#[test]
fn a_close_skipped_after_an_error_keeps_the_statement() {
    let (pg, sluice) = start_guarded();
    let mut raw = raw_prod(&sluice);
    raw.send(&[parse("s2", "delete from customers where id > 0"), sync()].concat());
    assert_eq!(errors(&until_ready(&mut raw)), []);
    // The Close comes after a failing Parse: the server skips it.
    raw.send(
        &[
            parse("bad", "select * from no_such_table"),
            close_statement("s2"),
            sync(),
            bind("", "s2"),
            execute(""),
            sync(),
        ]
        .concat(),
    );
    let errs = errors(&until_ready(&mut raw));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].0, "42P01", "{errs:?}");
    assert_refused_by_rows_guard(&until_ready(&mut raw));
    assert_eq!(total(&pg), "30");
    // Once the Close is answered, the statement is gone (the server agrees).
    raw.send(&[close_statement("s2"), sync()].concat());
    assert_eq!(errors(&until_ready(&mut raw)), []);
    raw.send(&[bind("", "s2"), execute(""), sync()].concat());
    let errs = errors(&until_ready(&mut raw));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].0, "26000", "{errs:?}");
}

/// After an error the server skips every message up to the next Sync, a
/// guarded statement included: Sluice must not wait for an answer that
/// cannot come, and the client's Sync must still get through.
#[test]
fn a_guarded_statement_skipped_after_an_error_does_not_hang_the_session() {
    let (pg, sluice) = start_guarded();
    let mut raw = raw_prod(&sluice);
    raw.send(&[parse("sd", "delete from customers where id > 0"), sync()].concat());
    assert_eq!(errors(&until_ready(&mut raw)), []);
    // An Execute and a simple Query after a failed Parse, before the Sync.
    raw.send(
        &[
            parse("bad", "select * from no_such_table"),
            bind("", "sd"),
            execute(""),
            query("delete from customers where id > 0"),
            // A COPY whose columns Sluice would probe for masking: the
            // probe's own Sync must not end the server's skipping early.
            query("copy customers to stdout"),
            sync(),
        ]
        .concat(),
    );
    let msgs = until_ready(&mut raw);
    let errs = errors(&msgs);
    assert_eq!(errs.len(), 1, "{msgs:?}");
    assert_eq!(errs[0].0, "42P01", "{errs:?}");
    // Nothing ran: only the error and the Sync's ReadyForQuery came back.
    assert_eq!(
        msgs.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        [b'E', b'Z'],
        "{msgs:?}"
    );
    assert_eq!(total(&pg), "30");
    // The session goes on, guarded as before.
    raw.send(&query("delete from customers where id > 0"));
    assert_refused_by_rows_guard(&until_ready(&mut raw));
    raw.send(&query("select 1"));
    assert_eq!(errors(&until_ready(&mut raw)), []);
    assert_eq!(total(&pg), "30");
}

#[test]
fn a_rejected_bind_does_not_redefine_the_portal() {
    let (pg, sluice) = start_guarded();
    let mut raw = raw_prod(&sluice);
    raw.send(&query("begin"));
    until_ready(&mut raw);
    raw.send(
        &[
            parse("sd", "delete from customers where id > 0"),
            bind("p", "sd"),
            sync(),
        ]
        .concat(),
    );
    assert_eq!(errors(&until_ready(&mut raw)), []);
    // Within a savepoint, so that the portal outlives the error.
    raw.send(&query("savepoint a"));
    until_ready(&mut raw);
    raw.send(&[parse("ss", "select 1"), bind("p", "ss"), sync()].concat());
    let errs = errors(&until_ready(&mut raw));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].0, "42P03", "{errs:?}");
    raw.send(&query("rollback to savepoint a"));
    assert_eq!(errors(&until_ready(&mut raw)), []);
    raw.send(&[execute("p"), sync()].concat());
    assert_refused_by_rows_guard(&until_ready(&mut raw));
    raw.send(&query("rollback"));
    until_ready(&mut raw);
    assert_eq!(total(&pg), "30");
}

#[test]
fn close_and_parse_again_in_one_pipeline_judges_the_new_statement() {
    let (pg, sluice) = start_guarded();
    let mut raw = raw_prod(&sluice);
    // What drivers do when they reuse a statement name.
    raw.send(&[parse("s1", "select 1"), sync()].concat());
    assert_eq!(errors(&until_ready(&mut raw)), []);
    raw.send(
        &[
            close_statement("s1"),
            parse("s1", "delete from customers where id > 0"),
            bind("", "s1"),
            execute(""),
            sync(),
        ]
        .concat(),
    );
    assert_refused_by_rows_guard(&until_ready(&mut raw));
    assert_eq!(total(&pg), "30");
    raw.send(
        &[
            close_statement("s1"),
            parse("s1", "select count(*) from customers"),
            bind("", "s1"),
            execute(""),
            sync(),
        ]
        .concat(),
    );
    let msgs = until_ready(&mut raw);
    assert_eq!(errors(&msgs), []);
    let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert!(row.1.ends_with(b"30"), "{:?}", row.1);
    // And the DELETE within the limit runs.
    raw.send(
        &[
            close_statement("s1"),
            parse("s1", "delete from customers where id > 25"),
            bind("", "s1"),
            execute(""),
            sync(),
        ]
        .concat(),
    );
    let msgs = until_ready(&mut raw);
    assert_eq!(errors(&msgs), []);
    assert_eq!(total(&pg), "25");
}

/// PostgreSQL compares statement names by their first 63 bytes: a Bind of
/// another long name with the same start runs the same statement, and is
/// judged as it.
#[test]
fn long_statement_names_are_compared_as_the_server_does() {
    let (pg, sluice) = start_guarded();
    let mut raw = raw_prod(&sluice);
    let long = "s".repeat(63);
    raw.send(
        &[
            parse(
                &format!("{long}_delete"),
                "delete from customers where id > 0",
            ),
            sync(),
        ]
        .concat(),
    );
    assert_eq!(errors(&until_ready(&mut raw)), []);
    raw.send(&[bind("", &format!("{long}_other")), execute(""), sync()].concat());
    assert_refused_by_rows_guard(&until_ready(&mut raw));
    assert_eq!(total(&pg), "30");
}

/// A message Sluice cannot decode is never forwarded unjudged: on a
/// SQL_ASCII database the server would take a statement name that is not
/// UTF-8, and what it names would run unchecked.
#[test]
fn a_statement_name_that_is_not_utf8_ends_the_session() {
    let (pg, sluice) = start_guarded();
    let mut raw = raw_prod(&sluice);
    let mut body = b"s\xff\xfe\0".to_vec();
    body.extend_from_slice(b"delete from customers where id > 0\0");
    body.extend_from_slice(&0i16.to_be_bytes());
    raw.send(&[message(b'P', &body), sync()].concat());
    let m = raw.recv().expect("an error before the session ends");
    assert_eq!(m.0, b'E');
    let f = parse_fields(&m.1);
    assert_eq!(field(&f, b'C'), "08P01");
    assert!(
        field(&f, b'M').starts_with("sluice: malformed Parse message"),
        "{f:?}"
    );
    assert!(raw.recv().is_none(), "the session ends");
    assert_eq!(total(&pg), "30");
}
