//! The process: CLI contract, config errors, reload, drain, health and metrics.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn passwd_prints_a_verifier_that_logs_in() {
    use std::io::Write;
    let mut child = Command::new(bin())
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let verifier = String::from_utf8(out.stdout).unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    assert!(!verifier.contains("correct horse"));
    assert!(sluice_identity::ScramVerifier::parse(verifier.trim()).is_ok());
}

#[test]
fn config_errors_name_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[listen]\npostgres = \"127.0.0.1:1\"\n[[targets]]\nname = \"a\"\nenvironment = \"x\"\nupstream = \"h:1\"\ndatabase = \"d\"\nuser = \"u\"\npassword_env = \"SLUICE_TEST_UNSET_VAR\"\n",
            "targets[0].password_env: environment variable SLUICE_TEST_UNSET_VAR is not set",
        ),
        ("[listen]\npostgres = \"nonsense\"\n", "listen.postgres:"),
        ("[listen]\npostgres = \"127.0.0.1:1\"\nbogus = 1\n", "unknown field `bogus`"),
        ("[[users]]\nname = \"a\"\n", "missing field"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_remove("SLUICE_TEST_UNSET_VAR")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics() {
    let (_pg, sluice) = start();
    assert_eq!(sluice.http_get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(sluice.http_get("/readyz").0, 200);
    let c = connect(&sluice).await;
    c.query_one("select 1", &[]).await.unwrap();
    let (status, body) = sluice.http_get("/metrics");
    assert_eq!(status, 200);
    let value = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing in {body}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("sluice_sessions_active"), 1);
    assert!(value("sluice_sessions_total") >= 1);
    assert!(value("sluice_upstream_bytes_total") > 0);
    assert!(body.contains("# TYPE sluice_sessions_active gauge"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_targets_and_users() {
    let (pg, sluice) = start();
    let (ok, _, err) = psql_as(&sluice, "bob", "bob-pw", "second", "select 1");
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );

    let config = format!(
        "{}{}{}{}{}",
        listen(""),
        target(TARGET, &pg.addr(), sluice_testkit::SCRAM_USER, "disable"),
        target("second", &pg.addr(), sluice_testkit::SCRAM_USER, "disable"),
        user(USER, PASSWORD),
        user("bob", "bob-pw"),
    );
    sluice.rewrite_config(&config);
    sluice.signal("HUP");
    sluice_testkit::wait_until(Duration::from_secs(10), "reload", || {
        psql_as(&sluice, "bob", "bob-pw", "second", "select 1").0
    });

    // A broken config is refused and the running one stays.
    sluice.rewrite_config("[listen]\npostgres = 1\n");
    sluice.signal("HUP");
    sluice_testkit::wait_until(Duration::from_secs(10), "reload failure logged", || {
        sluice.log().contains("reload failed")
    });
    assert!(psql_as(&sluice, "bob", "bob-pw", "second", "select 1").0);

    // Both reloads are in the audit trail, with their outcome.
    let search = || {
        let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["audit", "search", "--kind", "admin", "--data-dir"])
            .arg(sluice.data_dir())
            .output()
            .expect("run sluice audit search");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    sluice_testkit::wait_until(Duration::from_secs(10), "reloads in the trail", || {
        let out = search();
        out.contains("config.reload") && out.contains("-> failed")
    });
    let out = search();
    let reloads: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("config.reload"))
        .collect();
    assert_eq!(reloads.len(), 2, "{out}");
    assert!(reloads.iter().any(|l| l.contains("-> ok")), "{out}");
}

fn psql_as(
    sluice: &SluiceProcess,
    user: &str,
    pw: &str,
    db: &str,
    sql: &str,
) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname={db} sslmode=disable",
            sluice.pg_port()
        ))
        .args(["-X", "-c", sql])
        .env("PGPASSWORD", pw)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_then_closes() {
    let (_pg, mut sluice) = start_with("", "[limits]\nshutdown_timeout_secs = 3\n");
    let c = connect(&sluice).await;
    sluice.signal("TERM");
    // Draining: not ready, no new sessions, but the open one still works.
    sluice_testkit::wait_until(Duration::from_secs(5), "readyz turns 503", || {
        sluice.http_get("/readyz").0 == 503
    });
    assert!(
        tokio_postgres::connect(&conn_str(&sluice), tokio_postgres::NoTls)
            .await
            .is_err()
    );
    assert_eq!(
        c.query_one("select 5", &[]).await.unwrap().get::<_, i32>(0),
        5
    );
    // After the timeout the session is closed with a clear reason, and the process exits cleanly.
    let status = sluice
        .wait_exit(Duration::from_secs(15))
        .expect("sluice exited");
    assert!(status.success(), "{status:?}");
    assert!(c.query_one("select 1", &[]).await.is_err());
    assert!(sluice.log().contains("drain timeout"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_no_sessions_exits_at_once() {
    let (_pg, mut sluice) = start();
    sluice.signal("TERM");
    let status = sluice
        .wait_exit(Duration::from_secs(5))
        .expect("sluice exited quickly");
    assert!(status.success());
}
