//! Every session and statement that passes through Sluice lands in the
//! tamper-evident audit trail: who ran what, what policy decided, what was
//! masked, how much data moved, and where written data came from. The
//! trail verifies, is searchable, and never holds a literal value.

mod common;

use common::*;
use std::time::Duration;

const PROD: &str = "app-prod";

fn sluice_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("run sluice")
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_statements_refusals_masking_and_lineage_are_recorded() {
    let pg = PgServer::start();
    let config = format!(
        "{}{}{}",
        listen(""),
        target_in(
            "production",
            PROD,
            &pg.addr(),
            sluice_testkit::SCRAM_USER,
            "disable"
        ),
        user(USER, PASSWORD)
    );
    pg.psql(
        "app",
        "create table customers (id int primary key, email text, tier text);
         insert into customers values (1, 'alice.smith@example.com', 'gold'), (2, 'bob@example.org', 'basic');
         create table training_set (id int, email text);
         alter table customers owner to sluice_scram; alter table training_set owner to sluice_scram;",
    );
    let mut sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .start();
    let conn = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={PROD} sslmode=disable application_name=audit-test",
        sluice.pg_port()
    );
    let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    c.simple_query("select id, email from customers order by id")
        .await
        .unwrap();
    c.batch_execute("drop table customers").await.unwrap_err();
    c.batch_execute("insert into training_set select id, email from customers")
        .await
        .unwrap();
    // A literal that must never reach the trail.
    c.batch_execute("update customers set tier = 'secret-literal-4711' where id = 2")
        .await
        .unwrap();
    drop(c);
    // A failed sign-in.
    let wrong = format!(
        "host=127.0.0.1 port={} user={USER} password=wrong-guess-1234 dbname={PROD} sslmode=disable",
        sluice.pg_port()
    );
    assert!(tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .is_err());

    // SIGTERM: the session ends, the trail is flushed and sealed.
    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(30)).is_some());
    let data = sluice.data_dir();
    let d = data.to_str().unwrap();

    let o = sluice_cli(&["audit", "verify", "--data-dir", d]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    let o = sluice_cli(&[
        "audit",
        "search",
        "--data-dir",
        d,
        "--format",
        "json",
        "--limit",
        "100",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = page["rows"].as_array().unwrap();
    let events: Vec<&serde_json::Value> = rows
        .iter()
        .filter_map(|r| r["event"].as_object().map(|_| &r["event"]))
        .collect();
    let code = |c: &str| events.iter().filter(|e| e["code"] == c).count();
    assert_eq!(code("session.start"), 1, "{events:#?}");
    assert_eq!(code("session.end"), 1);
    let failure = events
        .iter()
        .find(|e| e["code"] == "auth.failure")
        .expect("failed sign-in recorded");
    assert_eq!(failure["user"], USER);
    assert_eq!(failure["target"], PROD);
    assert_eq!(failure["method"], "scram-sha-256");
    assert_eq!(failure["reason"], "bad_credentials", "{failure:#}");
    assert!(failure["detail"]
        .as_str()
        .unwrap()
        .contains("password authentication failed"));
    let start = events
        .iter()
        .find(|e| e["code"] == "session.start")
        .unwrap();
    assert_eq!(start["principal"]["name"], USER);
    assert_eq!(start["application_name"], "audit-test");
    assert_eq!(start["environment"], "production");

    let statements: Vec<&&serde_json::Value> = events
        .iter()
        .filter(|e| e["code"] == "db.statement")
        .collect();
    let select = statements
        .iter()
        .find(|e| e["kind"] == "select")
        .expect("the select is recorded");
    assert_eq!(select["rows_returned"], 2);
    assert!(select["bytes_to_client"].as_u64().unwrap() > 0);
    assert_eq!(
        select["normalized"],
        "select id, email from customers order by id"
    );
    assert!(select["columns_read"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "customers.email"));
    let masked = select["masked"].as_array().unwrap();
    assert!(
        masked.iter().any(|m| m["column"] == "customers.email"),
        "{select:#}"
    );

    let drop = statements.iter().find(|e| e["kind"] == "drop").unwrap();
    assert_eq!(drop["decision"], "deny");
    assert_eq!(drop["rule"], "no-drop-in-production");

    let insert = statements.iter().find(|e| e["kind"] == "insert").unwrap();
    assert_eq!(insert["rows_affected"], 2);
    assert_eq!(insert["lineage"]["destination"], "training_set");
    assert_eq!(insert["lineage"]["sources"][0], "customers");

    let update = statements.iter().find(|e| e["kind"] == "update").unwrap();
    assert_eq!(update["rows_affected"], 1);
    assert_eq!(
        update["normalized"],
        "update customers set tier = $1 where id = $2"
    );

    // No literal value anywhere in the trail's files.
    for entry in walk(&data.join("audit")) {
        let bytes = std::fs::read(&entry).unwrap();
        for needle in [
            "secret-literal-4711",
            "alice.smith@example.com",
            PASSWORD,
            "wrong-guess-1234",
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} found in {}",
                entry.display()
            );
        }
    }

    // Usage: who read customers.email in production, masked or not.
    let o = sluice_cli(&[
        "usage",
        "--data-dir",
        d,
        "--column",
        "customers.email",
        "--environment",
        "production",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let usage: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = usage.as_array().unwrap();
    // Read masked by the SELECT (2 rows to the client), unmasked by the
    // INSERT … SELECT (inside the database, nothing to the client).
    let masked = rows
        .iter()
        .find(|r| r["principal"] == USER && r["masked"] == true)
        .unwrap_or_else(|| panic!("{usage:#}"));
    assert_eq!(masked["rows"], 2, "{usage:#}");
    assert!(rows
        .iter()
        .any(|r| r["principal"] == USER && r["masked"] == false));
    // Lineage: where training_set came from.
    let o = sluice_cli(&[
        "usage",
        "lineage",
        "training_set",
        "--data-dir",
        d,
        "--format",
        "json",
    ]);
    let edges: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(edges[0]["source"], "customers", "{edges:#}");
    assert_eq!(edges[0]["principal"], USER);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn full_text_is_kept_only_when_log_literals_is_on() {
    let (pg, mut sluice) = start_with("", "[audit]\nlog_literals = true\n");
    pg.psql(
        "app",
        "create table t (v text); alter table t owner to sluice_scram;",
    );
    let c = connect(&sluice).await;
    c.batch_execute("insert into t values ('kept-literal-99')")
        .await
        .unwrap();
    drop(c);
    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(30)).is_some());
    let d = sluice.data_dir();
    let o = sluice_cli(&[
        "audit",
        "search",
        "--data-dir",
        d.to_str().unwrap(),
        "--table",
        "t",
        "--format",
        "json",
    ]);
    let page: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ev = &page["rows"][0]["event"];
    assert_eq!(
        ev["text"], "insert into t values ('kept-literal-99')",
        "{page:#}"
    );
    assert_eq!(ev["normalized"], "insert into t values ($1)");
}

fn metric(sluice: &SluiceProcess, name: &str) -> u64 {
    let (_, text) = sluice.http_get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_sluice_loses_nothing_spooled_and_its_chain_goes_on_in_a_postgres_store() {
    let pg = PgServer::start();
    let store = format!(
        "postgres://{}@127.0.0.1:{}/app",
        sluice_testkit::SCRAM_USER,
        pg.port()
    );
    let config = format!(
        "{}{}{}[audit]\nstore = \"{store}\"\npassword_env = \"TARGET_PW\"\n",
        listen(""),
        target(TARGET, &pg.addr(), sluice_testkit::SCRAM_USER, "disable"),
        user(USER, PASSWORD),
    );
    pg.psql(
        "app",
        "create table t (id int); alter table t owner to sluice_scram;",
    );
    let data = tempfile::tempdir().unwrap();
    let start = || {
        SluiceProcess::builder(bin(), &config)
            .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
            .data_dir(data.path())
            .start()
    };
    let sluice = start();
    let c = connect(&sluice).await;
    for i in 0..100 {
        c.batch_execute(&format!("insert into t values ({i})"))
            .await
            .unwrap();
    }
    // Everything so far is in the durable spool.
    let recorded = metric(&sluice, "sluice_audit_events_total");
    sluice_testkit::wait_until(Duration::from_secs(30), "the spool to catch up", || {
        metric(&sluice, "sluice_audit_spooled_seq") >= recorded
    });
    // Kill it in the middle of more work.
    let load = tokio::spawn(async move {
        for i in 100..100_000 {
            if c.batch_execute(&format!("insert into t values ({i})"))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sluice.signal("KILL");
    let _ = load.await;
    drop(sluice);

    // It comes back on the same data directory and goes on with its chain.
    let mut sluice = start();
    let c = connect(&sluice).await;
    c.batch_execute("insert into t values (-1)").await.unwrap();
    drop(c);
    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(30)).is_some());

    let key = data.path().join("audit").join("initial.key");
    let o = std::process::Command::new(bin())
        .args([
            "audit",
            "verify",
            "--store",
            &store,
            "--password-env",
            "TARGET_PW",
        ])
        .args(["--key-file", key.to_str().unwrap(), "--format", "json"])
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = std::process::Command::new(bin())
        .args([
            "audit",
            "search",
            "--store",
            &store,
            "--password-env",
            "TARGET_PW",
        ])
        .args(["--table", "t", "--limit", "100000", "--format", "json"])
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .output()
        .unwrap();
    let page: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = page["rows"].as_array().unwrap().len();
    assert!(
        n >= 101,
        "the 100 spooled inserts and the one after the restart: {n}"
    );

    // The PostgreSQL store's chain, dumped, verifies without Sluice too.
    let o = std::process::Command::new(bin())
        .args([
            "audit",
            "dump",
            "--store",
            &store,
            "--password-env",
            "TARGET_PW",
        ])
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut py = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tools/verify_trail.py"
        ))
        .args([
            "--require-signatures",
            "--key-file",
            key.to_str().unwrap(),
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    py.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    let v = py.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(v.status.success(), "{said}");
    assert!(said.contains("audit trail intact: 1 chain(s)"), "{said}");
}
