//! `sluice evidence`: a compliance report built from the audit trail that a
//! real Sluice wrote while a client read masked PII, was refused a DROP in
//! production, and someone failed to sign in.

mod common;

use common::*;
use std::time::Duration;

const PROD: &str = "app-prod";
/// A user name that would be markup if the HTML report did not escape it.
const EVIL: &str = "<script>alert(1)</script>";

fn sluice_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("run sluice")
}

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn evidence_report_from_a_real_trail() {
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
        "create table customers (id int primary key, email text);
         insert into customers values (1, 'alice.smith@example.com'), (2, 'bob@example.org');
         alter table customers owner to sluice_scram;",
    );
    let mut sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .start();
    let conn = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={PROD} sslmode=disable",
        sluice.pg_port()
    );
    let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = c
        .simple_query("select id, email from customers where id = 1")
        .await
        .unwrap();
    // The PII really was masked on the way out.
    let shown: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(shown.len(), 1);
    assert_ne!(shown[0], "alice.smith@example.com");
    c.batch_execute("drop table customers").await.unwrap_err();
    drop(c);
    // Failed sign-ins: a wrong password, and a name that is markup.
    for (name, pw) in [(USER, "wrong-guess-1234"), (EVIL, "x")] {
        let wrong = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(sluice.pg_port())
            .user(name)
            .password(pw)
            .dbname(PROD)
            .connect(tokio_postgres::NoTls)
            .await;
        assert!(wrong.is_err());
    }

    // SIGTERM: the trail is flushed and sealed.
    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(30)).is_some());
    let data = sluice.data_dir();
    let d = data.to_str().unwrap();

    // JSON.
    let o = sluice_cli(&[
        "evidence",
        "--data-dir",
        d,
        "--from",
        "1d",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["report"], "sluice-evidence");
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["verification"]["status"], "intact", "{r:#}");
    assert!(!r["verification"]["chains"].as_array().unwrap().is_empty());
    assert!(r["store"].as_str().unwrap().ends_with("audit.db"));
    assert!(r["controls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == "AU-9"));

    let access = r["access"].as_array().unwrap();
    let alice = access
        .iter()
        .find(|p| p["principal"] == USER)
        .unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(alice["kinds"][0], "human");
    assert!(alice["sessions"].as_u64().unwrap() >= 1, "{alice:#}");
    assert!(alice["statements"].as_u64().unwrap() >= 2, "{alice:#}");
    assert_eq!(alice["targets"][0]["target"], PROD);
    assert_eq!(alice["targets"][0]["environment"], "production");
    assert!(alice["tables_read"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "customers"));

    let denied = r["blocked"]["denied"].as_array().unwrap();
    let drop = denied
        .iter()
        .find(|g| g["rule"] == "no-drop-in-production")
        .unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(drop["principal"], USER);
    assert_eq!(drop["count"], 1);
    assert_eq!(drop["examples"][0], "drop table customers");
    // The refused DROP is not a privileged action that ran.
    assert!(r["privileged"]["statements"].as_array().unwrap().is_empty());

    let auth = r["blocked"]["auth_failures"].as_array().unwrap();
    assert!(
        auth.iter()
            .any(|g| g["user"] == USER && g["count"] == 1 && g["reason"] == "bad_credentials"),
        "{auth:#?}"
    );
    // The client heard "password authentication failed" for both; the
    // report tells a wrong password from a name that does not exist.
    assert!(
        auth.iter()
            .any(|g| g["user"] == EVIL && g["reason"] == "unknown_user"),
        "{auth:#?}"
    );
    assert_eq!(r["blocked"]["auth_failures_total"], 2);

    let columns = r["masking"]["columns"].as_array().unwrap();
    let email = columns
        .iter()
        .find(|c| c["column"] == "customers.email")
        .unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(email["masked_reads"], 1, "{email:#}");
    assert_eq!(email["unmasked_reads"], 0, "{email:#}");
    assert_eq!(email["environment"], "production");
    assert_eq!(email["principals_masked"][0], USER);
    assert!(r["masking"]["masked_column_reads"].as_i64().unwrap() >= 1);
    assert!(r["approvals"]["error"].is_null(), "{r:#}");

    // No literal anywhere in the report.
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.contains("alice.smith@example.com"));
    assert!(!text.contains("wrong-guess-1234"));

    // Markdown (default) to a file.
    let md_path = data.join("evidence.md");
    let o = sluice_cli(&[
        "evidence",
        "--data-dir",
        d,
        "--from",
        "1d",
        "--output",
        md_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let md = std::fs::read_to_string(&md_path).unwrap();
    for needle in [
        "## 1. Period, store and integrity",
        "INTACT",
        "## 5. Blocked attempts",
        "no-drop-in-production",
        "customers.email",
        "&lt;script&gt;",
    ] {
        assert!(md.contains(needle), "{needle} missing:\n{md}");
    }
    assert!(!md.contains("<script>"), "{md}");

    // HTML: self-contained and escaped.
    let o = sluice_cli(&[
        "evidence",
        "--data-dir",
        d,
        "--from",
        "1d",
        "--format",
        "html",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let html = String::from_utf8_lossy(&o.stdout);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("src=") && !html.contains("href="));
    assert!(html.contains("no-drop-in-production"));

    // A period before anything happened: an empty but intact report.
    let o = sluice_cli(&[
        "evidence",
        "--data-dir",
        d,
        "--from",
        "2020-01-01",
        "--to",
        "2020-02-01",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["events"]["total"], 0);
    assert!(r["access"].as_array().unwrap().is_empty());
    assert_eq!(r["verification"]["status"], "intact");

    // No store: a clear error, exit 2.
    let o = sluice_cli(&[
        "evidence",
        "--data-dir",
        "/nonexistent/sluice",
        "--from",
        "1d",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no audit store"));
    // A bad time: exit 2 naming the flag.
    let o = sluice_cli(&["evidence", "--data-dir", d, "--from", "yesterday"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--from"));
}
