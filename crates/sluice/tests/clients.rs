//! Real drivers in other languages through Sluice, each running its own
//! scenario program from tests/clients/ (queries, prepared statements,
//! transactions, errors, COPY, cancel, LISTEN/NOTIFY, notices, large results).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn run_scenario(which: &str, sslmode: &str) {
    let (_pg, sluice) = start();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/run.sh");
    let out = Command::new(script)
        .arg(which)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", sluice.pg_port().to_string())
        .env("PGUSER", USER)
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", TARGET)
        .env("SCENARIO_SSLMODE", sslmode)
        .output()
        .expect("run the scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{which} scenario failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- sluice log\n{}",
        sluice.log()
    );
    assert!(stdout.contains("scenario passed"), "{stdout}");
    assert!(stdout.contains("ok: cancel"), "{stdout}");
}

#[test]
fn psycopg3() {
    run_scenario("python-psycopg", "disable");
}

#[test]
fn psycopg3_over_tls() {
    run_scenario("python-psycopg", "require");
}

#[test]
fn asyncpg() {
    run_scenario("python-asyncpg", "disable");
}

#[test]
fn node_postgres() {
    run_scenario("node", "disable");
}

#[test]
fn pgjdbc() {
    run_scenario("java", "disable");
}

#[test]
fn pgjdbc_over_tls() {
    run_scenario("java", "require");
}

#[test]
fn asyncpg_over_tls() {
    run_scenario("python-asyncpg", "require");
}

#[test]
fn node_postgres_over_tls() {
    run_scenario("node", "require");
}
