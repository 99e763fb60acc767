//! Statements are judged before the database sees them: a refused statement
//! is an ordinary error, the session and its transaction behave as
//! PostgreSQL's own would after an error, and nothing of it runs.

mod common;

use common::*;

const PROD: &str = "app-prod";

/// PostgreSQL with a production target and a development target in front.
fn start_prod() -> (PgServer, SluiceProcess) {
    let pg = PgServer::start();
    let config = format!(
        "{}{}{}{}[approvals]\nmode = \"refuse\"\n",
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
    pg.psql("app", "create table customers (id int primary key, email text); insert into customers values (1, 'a@example.com'), (2, 'b@example.com'); alter table customers owner to sluice_scram");
    let sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .start();
    (pg, sluice)
}

async fn connect_to(sluice: &SluiceProcess, db: &str) -> tokio_postgres::Client {
    open(&format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={db} sslmode=disable",
        sluice.pg_port()
    ))
    .await
}

/// A client for a connection string, its connection driven in the background.
async fn open(conn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// PostgreSQL with `setup` run in `app`, and Sluice in front of it with one
/// development target, the usual user plus `extra_users` (`[[users]]`
/// entries) and `cedar` as its one policy file. The directory must outlive
/// the process (reloads read it).
fn start_with_policy(
    cedar: &str,
    extra_users: &str,
    setup: &str,
) -> (PgServer, SluiceProcess, tempfile::TempDir) {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.cedar"), cedar).unwrap();
    let config = format!(
        "{}{}{}{extra_users}[policy]\ndir = \"{}\"\n",
        listen(""),
        target(TARGET, &pg.addr(), sluice_testkit::SCRAM_USER, "disable"),
        user(USER, PASSWORD),
        dir.path().display()
    );
    pg.psql("app", setup);
    let sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .start();
    (pg, sluice, dir)
}

fn count(pg: &PgServer) -> String {
    pg.psql("app", "select count(*) from customers")
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_in_production_is_blocked_with_a_clear_error() {
    let (pg, sluice) = start_prod();
    let (ok, _, err) = psql_db(&sluice, PROD, "drop table customers");
    assert!(!ok);
    assert!(
        err.contains("sluice: blocked by no-drop-in-production: DROP is not allowed in production"),
        "{err}"
    );
    assert!(err.contains("HINT:"), "{err}");
    assert!(
        !err.contains("sluice_denied_"),
        "the marker must never reach the client: {err}"
    );
    assert_eq!(count(&pg), "2", "the table is still there");

    let c = connect_to(&sluice, PROD).await;
    let e = c.batch_execute("DROP TABLE customers").await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message()
            .starts_with("sluice: blocked by no-drop-in-production"),
        "{}",
        db.message()
    );
    // The session goes on.
    assert_eq!(
        c.query_one("select count(*) from customers", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );

    // In development the same statement is allowed (and flagged).
    let dev = connect_to(&sluice, TARGET).await;
    dev.batch_execute("create table scratch (a int); drop table scratch")
        .await
        .unwrap();
    let (_, metrics) = sluice.http_get("/metrics");
    assert!(
        metrics.contains("sluice_statements_denied_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_statements_total{kind=\"drop\",decision=\"deny\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_statements_total{kind=\"select\",decision=\"allow\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_policy_seconds_bucket{le=\"+Inf\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_statement_seconds_count"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_statement_fails_the_transaction_like_any_error() {
    let (pg, sluice) = start_prod();
    let c = connect_to(&sluice, PROD).await;
    c.batch_execute("begin").await.unwrap();
    c.batch_execute("insert into customers values (3, 'c@example.com')")
        .await
        .unwrap();
    let e = c.batch_execute("delete from customers").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .contains("no-unfiltered-write-in-production"));
    // As after any error: the transaction is aborted until ROLLBACK.
    let e = c.batch_execute("select 1").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "25P02");
    c.batch_execute("rollback").await.unwrap();
    assert_eq!(count(&pg), "2");
    // A filtered delete is fine.
    c.batch_execute("delete from customers where id = 2")
        .await
        .unwrap();
    assert_eq!(count(&pg), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_refused_statement_refuses_the_whole_string() {
    let (pg, sluice) = start_prod();
    let c = connect_to(&sluice, PROD).await;
    let e = c
        .batch_execute("insert into customers values (9, 'x'); truncate customers; insert into customers values (10, 'y')")
        .await
        .unwrap_err();
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .contains("no-truncate-in-production"));
    assert_eq!(count(&pg), "2", "nothing of the string ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_inside_a_pipeline_keep_every_other_answer_in_order() {
    let (_pg, sluice) = start_prod();
    let c = connect_to(&sluice, PROD).await;
    // tokio-postgres pipelines these: Parse/Bind/Execute/Sync for each, all sent at once.
    let (a, b, d, e) = tokio::join!(
        c.query_one("select 1::int4", &[]),
        c.query("delete from customers where 1 = 1", &[]),
        c.query_one("select 2::int4", &[]),
        c.prepare("drop table customers"),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap_err().as_db_error().unwrap().code().code(), "42501");
    assert_eq!(d.unwrap().get::<_, i32>(0), 2);
    assert_eq!(e.unwrap_err().as_db_error().unwrap().code().code(), "42501");
    // A named prepared statement that was refused does not exist afterwards,
    // and an allowed one works.
    let ok = c
        .prepare("select id + 1 from customers where id = $1")
        .await
        .unwrap();
    let row = c.query_one(&ok, &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_changes_need_approval_in_production() {
    let (_pg, sluice) = start_prod();
    let c = connect_to(&sluice, PROD).await;
    let e = c
        .batch_execute("alter table customers drop column email")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "SL001");
    assert!(
        db.message()
            .starts_with("sluice: approval required by approve-schema-changes-in-production"),
        "{}",
        db.message()
    );
    assert!(db.hint().unwrap().contains("\"dba\""), "{:?}", db.hint());
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_level_prepare_and_server_functions_cannot_hide_effects() {
    let (pg, sluice) = start_prod();
    let c = connect_to(&sluice, PROD).await;
    for sql in [
        "prepare p as delete from customers",
        "with d as (delete from customers returning *) select count(*) from d",
        "copy (delete from customers returning *) to stdout",
        "explain analyze delete from customers",
        "select pg_read_file('/etc/passwd')",
        "do $$ begin delete from customers; end $$",
        "set role postgres",
        "set client_encoding = 'SJIS'",
        "selec 1",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("42501"),
            "{sql}"
        );
    }
    assert_eq!(count(&pg), "2");
}

fn psql_db(sluice: &SluiceProcess, db: &str, sql: &str) -> (bool, String, String) {
    let out = std::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={USER} dbname={db} sslmode=disable",
            sluice.pg_port()
        ))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn policy_test_cli_works_without_a_database() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("policy")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&[
        "test",
        "--environment",
        "production",
        "--as",
        "alice",
        "--format",
        "json",
        "DROP TABLE customers",
    ]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["rule"], "no-drop-in-production");
    assert_eq!(v["facts"]["statements"][0]["kind"], "drop");

    let (code, out, _) = run(&[
        "test",
        "--environment",
        "staging",
        "--format",
        "json",
        "DROP TABLE customers",
    ]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "allow");
    assert!(v["flags"].as_array().unwrap().iter().any(|f| f == "drop"));

    let (code, out, _) = run(&[
        "test",
        "--environment",
        "production",
        "alter table t add column c int",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("decision: approval") && out.contains("approvers: dba"),
        "{out}"
    );

    // A config with its own policy directory; a broken policy names its file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[listen]\npostgres = \"127.0.0.1:1\"\n[policy]\ndir = \"policies\"\ndisable = [\"no-truncate-in-production\"]\n",
    )
    .unwrap();
    let config = dir.path().join("sluice.toml").display().to_string();
    let (code, _, err) = run(&["validate", "--config", &config]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = run(&["test", "--config", &config, "truncate t"]);
    assert_eq!(code, Some(0), "disabled guardrail");
    std::fs::write(
        dir.path().join("policies/broken.cedar"),
        "permit (principal, action, resource) when { nope };",
    )
    .unwrap();
    let (code, _, err) = run(&["validate", "--config", &config]);
    assert_eq!(code, Some(2));
    assert!(err.contains("broken.cedar"), "{err}");
}

#[test]
fn policy_unmask_cli_shows_which_columns_a_principal_sees() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/unmask.cedar"),
        r#"@id("support-sees-phones")
permit (principal in Sluice::Group::"support", action == Sluice::Action::"unmask",
        resource == Sluice::Column::"public.customers.phone");"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[listen]\npostgres = \"127.0.0.1:1\"\n[policy]\ndir = \"policies\"\n",
    )
    .unwrap();
    let config = dir.path().join("sluice.toml").display().to_string();
    let unmask = |groups: &str, format: &str| {
        let out = std::process::Command::new(bin())
            .args(["policy", "unmask", "--config", &config, "--as", "sam"])
            .args(["--groups", groups, "--format", format])
            .args(["customers.phone", "public.customers.email"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let v: serde_json::Value = serde_json::from_str(&unmask("support", "json")).unwrap();
    assert_eq!(v["target"]["unmasked"], false, "{v:#}");
    assert_eq!(v["columns"][0]["column"], "public.customers.phone");
    assert_eq!(v["columns"][0]["unmasked"], true, "{v:#}");
    assert_eq!(v["columns"][1]["unmasked"], false, "{v:#}");
    let text = unmask("sales", "text");
    assert!(
        text.contains("public.customers.phone: masked")
            && text.contains("public.customers.email: masked"),
        "{text}"
    );
    // A malformed column name is a usage error.
    let out = std::process::Command::new(bin())
        .args(["policy", "unmask", "email"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn mask_classify_previews_masking_of_a_csv_offline() {
    use std::io::Write;
    let mut child = std::process::Command::new(bin())
        .args(["mask", "classify", "--format", "json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"id,contact,card,comment\n1,alice@example.com,4111 1111 1111 1111,hello\n2,bob@example.org,5500 0000 0000 0004,fine\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("alice@example.com") && !text.contains("4111 1111 1111 1111"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kind = |col: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["column"] == col)
            .map(|c| c["kind"].clone())
            .unwrap()
    };
    assert_eq!(kind("contact"), "email");
    assert_eq!(kind("card"), "card");
    assert!(kind("id").is_null());
    assert!(kind("comment").is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_search_path_does_not_hide_a_protected_table() {
    let (pg, sluice, _policies) = start_with_policy(
        r#"@id("payroll-is-read-only")
@reason("public.payroll is read-only through Sluice")
forbid (principal, action in [Sluice::Action::"update", Sluice::Action::"delete", Sluice::Action::"insert", Sluice::Action::"truncate"], resource)
when { context.relations_written.contains("public.payroll") };"#,
        "",
        "create schema scratch authorization sluice_scram;
         create table payroll (id int, amount int); insert into payroll values (1, 100);
         alter table payroll owner to sluice_scram;
         create table scratch.notes (id int); alter table scratch.notes owner to sluice_scram;",
    );
    let c = connect(&sluice).await;
    for sql in [
        "update payroll set amount = 0 where id = 1",
        "set search_path = scratch, public; update payroll set amount = 0 where id = 1",
        "select set_config('search_path', 'scratch, public', false)",
    ] {
        let r = c.batch_execute(sql).await;
        if sql.starts_with("select") {
            r.unwrap();
            continue;
        }
        let e = r.unwrap_err();
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("payroll-is-read-only")),
            "{sql}: {e}"
        );
    }
    // After the path changed in another statement, the unqualified name is
    // still counted in public.
    let e = c
        .batch_execute("delete from payroll where id = 1")
        .await
        .unwrap_err();
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("payroll-is-read-only")),
        "{e}"
    );
    // Tables of other schemas are not affected.
    c.batch_execute("insert into notes values (1)")
        .await
        .unwrap();
    assert_eq!(pg.psql("app", "select amount from payroll"), "100");
}

/// Evasions a red team found: each ran through Sluice before and must now
/// be refused, with nothing of it done.
#[tokio::test(flavor = "multi_thread")]
async fn hidden_role_changes_sql_in_strings_and_constant_conditions_are_refused() {
    let (pg, sluice) = start_prod();
    pg.psql(
        "app",
        "create role other nologin; grant other to sluice_scram",
    );
    let c = connect_to(&sluice, PROD).await;
    for sql in [
        "values (set_config('role', 'other', false))",
        "select array[set_config('role', 'other', false)]",
        "select set_config('role', 'other', false) collate \"C\"",
        "begin; declare c cursor for select set_config('role', 'other', false); fetch all from c; commit",
        "values (set_config('standard_conforming_strings', 'off', false))",
        "select query_to_xml('select set_config(''role'', ''other'', false)', true, false, '')",
        "merge into customers using (select 1) s on true when matched then delete",
        "delete from customers where 1 in (1)",
        "alter database app set role = 'other'",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("42501"),
            "{sql}: {e}"
        );
        c.batch_execute("rollback").await.unwrap();
    }
    let who = c.query_one("select current_user::text", &[]).await.unwrap();
    assert_eq!(who.get::<_, String>(0), sluice_testkit::SCRAM_USER);
    assert_eq!(count(&pg), "2");
    assert_eq!(
        pg.psql("app", "select count(*) from pg_db_role_setting"),
        "0"
    );

    // A verdict for `ANALYZE 'off'` is not reused for `ANALYZE 'on'`.
    c.batch_execute("explain (analyze 'off') delete from customers where id > 0")
        .await
        .unwrap();
    let e = c
        .batch_execute("explain (analyze 'on') delete from customers where id > 0")
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("42501"),
        "{e}"
    );
    assert_eq!(count(&pg), "2");
}

/// Sluice reads string literals with standard_conforming_strings on. A
/// server session that reads them otherwise would run what Sluice took for
/// a literal, so Sluice ends it, and refuses sessions that start that way.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_reads_backslashes_in_strings_is_refused() {
    let (pg, sluice) = start_prod();
    // A function made directly on the server, out of Sluice's sight.
    pg.psql(
        "app",
        "create function flip() returns text language sql
           as $$ select set_config('standard_conforming_strings', 'off', false) $$",
    );
    let c = connect_to(&sluice, TARGET).await;
    let r = c.batch_execute("select flip()").await;
    assert!(r.is_err(), "the session must end");
    let e = c.batch_execute("select 1").await.unwrap_err();
    assert!(e.is_closed(), "{e}");

    pg.psql(
        "app",
        "alter database app set standard_conforming_strings = off",
    );
    let (ok, _, err) = psql_db(&sluice, TARGET, "select 1");
    assert!(!ok);
    assert!(
        err.contains("standard_conforming_strings = off, which Sluice does not support"),
        "{err}"
    );
    pg.psql(
        "app",
        "alter database app reset standard_conforming_strings",
    );
    let (ok, _, err) = psql_db(&sluice, TARGET, "select 1");
    assert!(ok, "{err}");
}

/// Tables read where pg_query's own walk does not look, and search paths
/// set at connect time, changed twice or set for the role outside Sluice,
/// still meet table policies.
#[tokio::test(flavor = "multi_thread")]
async fn table_policies_see_cursors_values_and_startup_search_paths() {
    let (pg, sluice, _policies) = start_with_policy(
        r#"@id("no-payroll")
@reason("hr.payroll is not readable through Sluice")
forbid (principal, action, resource)
when { context.relations_read.contains("hr.payroll") };"#,
        "",
        "create schema hr authorization sluice_scram;
         create table hr.payroll (name text, salary int); insert into hr.payroll values ('ceo', 999999);
         alter table hr.payroll owner to sluice_scram;",
    );
    let refused = |r: Result<(), tokio_postgres::Error>, sql: &str| {
        let e = r.unwrap_err();
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("no-payroll")),
            "{sql}: {e}"
        );
    };
    let c = connect(&sluice).await;
    for sql in [
        "begin; declare c cursor for select * from hr.payroll; fetch all from c; commit",
        "values ((select salary from hr.payroll limit 1))",
        "select array[(select salary from hr.payroll limit 1)]",
    ] {
        refused(c.batch_execute(sql).await, sql);
        c.batch_execute("rollback").await.unwrap();
    }
    // Two SETs of one template: the second's path counts.
    c.batch_execute("set search_path = 'public'").await.unwrap();
    c.batch_execute("set search_path = 'hr'").await.unwrap();
    refused(c.batch_execute("select * from payroll").await, "after set");

    // A path given at connect time in `options`.
    let conn = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={TARGET} sslmode=disable options='-c search_path=hr'",
        sluice.pg_port()
    );
    let c = open(&conn).await;
    refused(c.batch_execute("select * from payroll").await, "options");

    // A path the role starts with, set outside Sluice (ALTER ROLE … SET).
    pg.psql(
        "app",
        "alter role sluice_scram in database app set search_path = hr, public",
    );
    let c = connect(&sluice).await;
    refused(
        c.batch_execute("select * from payroll").await,
        "role default",
    );
    refused(
        c.batch_execute("select count(*) from payroll").await,
        "role default",
    );
}

/// The value of a counter on `/metrics`.
fn counter(sluice: &SluiceProcess, name: &str) -> u64 {
    let (_, text) = sluice.http_get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Sessions share what a statement is, not whether it may run: a statement
/// another session sent is not parsed again (by text, or by template for
/// other constants), and each session still judges it by its own principal.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_share_analyses_but_each_is_judged_by_its_own_principal() {
    let (_pg, sluice, _policies) = start_with_policy(
        r#"@id("interns-no-payroll")
@reason("interns may not read hr.payroll")
forbid (principal == Sluice::User::"intern", action, resource)
when { context.relations_read.contains("hr.payroll") };"#,
        &user("intern", "intern-pw"),
        "create schema hr authorization sluice_scram;
         create table hr.payroll (id int, salary int); insert into hr.payroll values (1, 100), (2, 200);
         alter table hr.payroll owner to sluice_scram;",
    );
    let session = |who: &'static str, pw: &'static str| {
        let conn = format!(
            "host=127.0.0.1 port={} user={who} password={pw} dbname={TARGET} sslmode=disable",
            sluice.pg_port()
        );
        async move { open(&conn).await }
    };
    let sql = "select salary from hr.payroll where id = 1";
    let first = session(USER, PASSWORD).await;
    let rows = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| {
        msgs.iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count()
    };
    assert_eq!(rows(first.simple_query(sql).await.unwrap()), 1);
    let analysed = counter(&sluice, "sluice_statements_analysed_total");
    let checked = counter(&sluice, "sluice_statements_checked_total");

    // The intern's session finds the analysis (by template: another
    // constant) and is refused all the same; the same text is then a hit
    // of the session's own cache.
    let intern = session("intern", "intern-pw").await;
    for sql in ["select salary from hr.payroll where id = 2", sql] {
        let e = intern.simple_query(sql).await.unwrap_err();
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("interns-no-payroll")),
            "{sql}: {e}"
        );
    }
    // A third session of the first user runs it, again without a parse.
    let again = session(USER, PASSWORD).await;
    let third = "select salary from hr.payroll where id = 3";
    assert_eq!(rows(again.simple_query(third).await.unwrap()), 0);
    assert_eq!(
        counter(&sluice, "sluice_statements_checked_total"),
        checked + 2,
        "each new session judges the statement once"
    );
    assert_eq!(
        counter(&sluice, "sluice_statements_analysed_total"),
        analysed,
        "no session parsed it again"
    );
    // A statement no session has sent is parsed.
    again
        .simple_query("select count(*) from hr.payroll")
        .await
        .unwrap();
    assert_eq!(
        counter(&sluice, "sluice_statements_analysed_total"),
        analysed + 1
    );
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A huge statement is not parsed (parsing would take hundreds of bytes of
/// memory per byte): it is refused in every environment (padding must not
/// switch checks off), Sluice's memory stays flat, and the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_too_long_to_parse_is_refused_cheaply() {
    let (pg, sluice) = start_prod();
    let c = connect_to(&sluice, PROD).await;
    c.batch_execute("select 1").await.unwrap();
    let before = peak_rss_kib(sluice.pid());
    let huge = format!("select {}", vec!["1"; 200_000].join(","));
    let e = c.batch_execute(&huge).await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "54000");
    assert!(
        db.message().contains("statement-too-long"),
        "{}",
        db.message()
    );
    let grown = peak_rss_kib(sluice.pid()).saturating_sub(before);
    assert!(grown < 64 << 10, "peak RSS grew by {grown} KiB");
    c.batch_execute("select 1").await.unwrap();

    // Padding a write past the limit does not slip it past the checks
    // elsewhere either.
    let dev = connect_to(&sluice, TARGET).await;
    let padded = format!("delete from customers /* {} */", "x".repeat(300 << 10));
    let e = dev.batch_execute(&padded).await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("54000"));
    assert_eq!(count(&pg), "2");
}

/// A deeply nested statement (a generated report summing hundreds of
/// columns) is checked and runs in production, on a proxy worker's stack;
/// one nested past Sluice's limit is refused as unparseable with a clear
/// error, and the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn deeply_nested_statements_are_checked_without_exhausting_the_stack() {
    let (_pg, sluice) = start_prod();
    let c = connect_to(&sluice, PROD).await;
    let sum = format!("select {}1 as total", "1 + ".repeat(400));
    let row = c.query_one(sum.as_str(), &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>("total"), 401);
    let calls = format!("select {}-7{}", "abs(".repeat(150), ")".repeat(150));
    let row = c.query_one(calls.as_str(), &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);

    let too_deep = format!("select {}1", "1 + ".repeat(600));
    let e = c.batch_execute(&too_deep).await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message().contains("no-unparseable-in-production"),
        "{}",
        db.message()
    );
    c.batch_execute("select 1").await.unwrap();
}

/// What a client sends is logged escaped: a newline in application_name
/// cannot forge a log line.
#[tokio::test(flavor = "multi_thread")]
async fn client_values_cannot_forge_log_lines() {
    let (_pg, sluice) = start_prod();
    let conn = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={PROD} sslmode=disable application_name='x\nFORGED session started user=admin'",
        sluice.pg_port()
    );
    let c = open(&conn).await;
    c.batch_execute("select 1").await.unwrap();
    let log = sluice.log();
    assert!(log.contains("FORGED"), "the session was logged: {log}");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a client forged a log line: {log}"
    );
}
