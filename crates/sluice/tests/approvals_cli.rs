//! `sluice approvals list|show|approve|deny` against a real Sluice (admin
//! API) and a real PostgreSQL: a held statement is listed, shown, approved
//! by an approver and then runs; a denied one fails; the requester cannot
//! approve their own; no token and an unreachable API fail clearly.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;
use sluice_testkit::{wait_until, SCRAM_PASSWORD, SCRAM_USER};

const PROD: &str = "app-prod";
const RULE: &str = "approve-schema-changes-in-production";

/// Static admin tokens and their SHA-256 (`printf %s TOKEN | sha256sum`):
/// dan approves for the `dba` group; so does "alice", the requester's name.
const DAN_TOKEN: &str = "approver-dan-token-4e1f09";
const DAN_SHA256: &str = "a247e2d460f9431aebdf65cb8fbebf2250d2f5db4643e8c3b637586b42242edd";
const ALICE_TOKEN: &str = "approver-alice-token-93bd2a";
const ALICE_SHA256: &str = "1d812ae879244ae1f3f4e741ed4664dddfa41f6e579ce7d32abdb86a6bcea638";

fn start_prod() -> (PgServer, SluiceProcess) {
    let pg = PgServer::start();
    let config = format!(
        r#"{}{}{}[admin]
tokens = [
  {{ name = "dan", role = "approver", token_sha256 = "{DAN_SHA256}", groups = ["dba"] }},
  {{ name = "{USER}", role = "approver", token_sha256 = "{ALICE_SHA256}", groups = ["dba"] }},
]
"#,
        listen(""),
        target_in("production", PROD, &pg.addr(), SCRAM_USER, "disable"),
        user(USER, PASSWORD),
    );
    pg.psql(
        "app",
        "create table customers (id int); alter table customers owner to sluice_scram;",
    );
    let sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", SCRAM_PASSWORD)
        .start();
    (pg, sluice)
}

async fn connect_prod(sluice: &SluiceProcess) -> tokio_postgres::Client {
    let conn = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={PROD} sslmode=disable",
        sluice.pg_port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

fn columns(pg: &PgServer) -> String {
    pg.psql(
        "app",
        "select string_agg(column_name, ',' order by ordinal_position) from information_schema.columns where table_name = 'customers'",
    )
}

/// What one `sluice approvals …` run printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={}\n--- stdout\n{}--- stderr\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

/// `sluice approvals ARGS` with no token cache, `SLUICE_ADMIN_URL` = `url`
/// and `SLUICE_TOKEN` = `token` when given.
fn approvals(url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("approvals")
        .args(args)
        .env("SLUICE_ADMIN_URL", url)
        .env("SLUICE_CONFIG_DIR", home.path())
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_ISSUER")
        .env("COLUMNS", "200");
    if let Some(t) = token {
        cmd.env("SLUICE_TOKEN", t);
    }
    let out: Output = cmd.output().expect("run sluice approvals");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn api_url(sluice: &SluiceProcess) -> String {
    format!("http://127.0.0.1:{}", sluice.http_port())
}

/// The id of the newest pending request, once there is one, as `list --format json` shows it.
fn newest_pending(url: &str, not: &[&str]) -> String {
    let mut id = String::new();
    wait_until(
        Duration::from_secs(20),
        "a pending approval request",
        || {
            let r = approvals(url, Some(DAN_TOKEN), &["list", "--format", "json"]);
            assert!(r.ok, "{r:?}");
            let page: Value = serde_json::from_str(&r.stdout).unwrap();
            match page["approvals"][0]["id"].as_str() {
                Some(i) if !not.contains(&i) => {
                    id = i.to_owned();
                    true
                }
                _ => false,
            }
        },
    );
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approver_lists_shows_approves_and_denies_held_statements() {
    let (pg, sluice) = start_prod();
    let url = api_url(&sluice);
    let c = connect_prod(&sluice).await;

    // A schema change in production is held until someone decides.
    let held = tokio::spawn(async move {
        let r = c
            .batch_execute("alter table customers add column note text")
            .await;
        (c, r)
    });
    let id = newest_pending(&url, &[]);

    // list: one aligned row with who, where, the rule, 0/1 and the statement.
    let r = approvals(&url, Some(DAN_TOKEN), &["list"]);
    assert!(r.ok, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{r:?}");
    for h in [
        "ID",
        "AGE",
        "PRINCIPAL",
        "TARGET/ENV",
        "RULE",
        "APPROVALS",
        "EXPIRES IN",
        "STATEMENT",
    ] {
        assert!(lines[0].contains(h), "{h}: {r:?}");
    }
    let row = lines[1];
    assert!(row.starts_with(&id), "{r:?}");
    for want in [USER, "app-prod/production", RULE, "0/1"] {
        assert!(row.contains(want), "{want}: {r:?}");
    }
    assert!(
        row.ends_with("alter table customers add column note text"),
        "{r:?}"
    );
    assert_eq!(
        lines[0].find("STATEMENT"),
        row.find("alter table"),
        "aligned: {r:?}"
    );

    // show: everything needed to decide.
    let r = approvals(&url, Some(DAN_TOKEN), &["show", &id]);
    assert!(r.ok, "{r:?}");
    for want in [
        format!("request      {id}"),
        "status       pending: 0 of 1 approvals".into(),
        format!("principal    {USER} (human)"),
        "groups       dev".into(),
        "target       app-prod (environment production)".into(),
        format!("rule         {RULE}"),
        "approvers    group \"dba\", 1 approval needed".into(),
        "\n  alter table customers add column note text\n".into(),
        "tables written   customers".into(),
        "votes:\n  (none yet)".into(),
    ] {
        assert!(r.stdout.contains(&want), "{want:?}: {r:?}");
    }
    assert!(r.stdout.contains("expires      "), "{r:?}");

    // The requester cannot approve their own statement, even as an approver.
    let r = approvals(&url, None, &["approve", &id, "--token", ALICE_TOKEN]);
    assert!(!r.ok, "{r:?}");
    assert!(
        r.stderr
            .starts_with(&format!("sluice: cannot approve {id}: ")),
        "{r:?}"
    );
    assert!(r.stderr.contains("(self_approval)"), "{r:?}");
    assert!(!r.stderr.contains(ALICE_TOKEN), "never echo the token");
    assert!(!held.is_finished(), "still waiting");
    assert_eq!(columns(&pg), "id", "nothing ran yet");

    // dan approves: the held statement runs.
    let r = approvals(&url, Some(DAN_TOKEN), &["approve", &id, "-m", "reviewed"]);
    assert!(r.ok, "{r:?}");
    assert!(
        r.stdout
            .starts_with(&format!("approved: request {id} is approved (1/1)")),
        "{r:?}"
    );
    let (c, result) = held.await.unwrap();
    result.unwrap();
    assert_eq!(columns(&pg), "id,note");
    // The vote is on record, and it was used once.
    let r = approvals(&url, Some(DAN_TOKEN), &["show", &id]);
    assert!(r.ok, "{r:?}");
    assert!(r.stdout.contains("status       used"), "{r:?}");
    assert!(r.stdout.contains(" dan approved: reviewed"), "{r:?}");
    let r = approvals(&url, Some(DAN_TOKEN), &["list"]);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout.trim(), "no pending approval requests", "{r:?}");
    // Deciding it again is refused.
    let r = approvals(&url, Some(DAN_TOKEN), &["deny", &id]);
    assert!(!r.ok, "{r:?}");
    assert!(r.stderr.contains(&format!("cannot deny {id}")), "{r:?}");

    // Denied: the held statement fails with who denied it and why.
    let held = tokio::spawn(async move {
        c.batch_execute("alter table customers drop column note")
            .await
    });
    let second = newest_pending(&url, &[&id]);
    let r = approvals(
        &url,
        Some(DAN_TOKEN),
        &["deny", &second, "--justification", "not today"],
    );
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.stdout.trim(),
        format!("denied: request {second} is denied; the statement will not run"),
        "{r:?}"
    );
    let e = held.await.unwrap().unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "SL002");
    assert!(db.message().contains("not today"), "{}", db.message());
    assert_eq!(columns(&pg), "id,note");

    // --all shows both, with their status.
    let r = approvals(&url, Some(DAN_TOKEN), &["list", "--all"]);
    assert!(r.ok, "{r:?}");
    assert!(r.stdout.lines().next().unwrap().contains("STATUS"), "{r:?}");
    let denied = r.stdout.lines().find(|l| l.starts_with(&second)).unwrap();
    assert!(denied.contains("denied"), "{r:?}");

    // An id that does not exist.
    let r = approvals(
        &url,
        Some(DAN_TOKEN),
        &["show", "01HZZZZZZZZZZZZZZZZZZZZZZZ"],
    );
    assert!(!r.ok, "{r:?}");
    assert!(r.stderr.contains("(not_found)"), "{r:?}");
}

#[test]
fn without_a_token_or_a_reachable_api_it_says_what_to_do() {
    // No --token, no SLUICE_TOKEN, no `sluice login` cache.
    let r = approvals("http://127.0.0.1:9", None, &["list"]);
    assert!(!r.ok, "{r:?}");
    assert!(
        r.stderr.contains("run `sluice login` or pass --token"),
        "{r:?}"
    );

    // Nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let r = approvals(&url, Some("some-token"), &["approve", "01HX", "-m", "ok"]);
    assert!(!r.ok, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("cannot reach the admin API at {url}")),
        "{r:?}"
    );
    assert!(!r.stderr.contains("some-token"), "never echo the token");
}
