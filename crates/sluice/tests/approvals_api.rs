//! Approvers at work through the REST API and through chat: the rules of
//! approval seen over HTTP, the Slack-compatible webhook with its signed
//! links and signed interactive callbacks, and two replicas sharing one
//! PostgreSQL store, where a statement held on one replica is approved
//! through the API of the other and then runs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use sluice_testkit::{wait_until, SCRAM_PASSWORD, SCRAM_USER};

const PROD: &str = "app-prod";
/// `printf %s TOKEN | sha256sum`.
const DBA_TOKEN: &str = "approver-token-for-tests-c5d071";
const DBA_SHA256: &str = "2c83eddec4dd7c2d36aa9876192f4a36620af2468ec87b5c5a87f3d2a94a3cda";
const AUDITOR_TOKEN: &str = "auditor-token-for-tests-2b8e41";
const AUDITOR_SHA256: &str = "c8a8ac76dbb523d7eb9c650c10a70068b0409ac5703300c113f6e912c4913f78";
const OUTSIDER_TOKEN: &str = "admin-token-for-tests-7f3a9c";
const OUTSIDER_SHA256: &str = "f51f5253f0aa66226af13f266332538988f36cb3e1b5924ce7b30f232ebd3e2f";
const LINK_SECRET: &str = "link-secret-for-tests-0123456789";
const SIGNING_SECRET: &str = "slack-signing-secret-for-tests-42";

fn admin_tokens() -> String {
    format!(
        r#"[admin]
tokens = [
  {{ name = "dana", role = "approver", groups = ["dba"], token_sha256 = "{DBA_SHA256}" }},
  {{ name = "audrey", role = "auditor", groups = ["dba"], token_sha256 = "{AUDITOR_SHA256}" }},
  {{ name = "oscar", role = "approver", groups = ["dev"], token_sha256 = "{OUTSIDER_SHA256}" }},
]
"#
    )
}

fn config(pg: &PgServer, extra: &str) -> String {
    let oncall = format!(
        "[[users]]\nname = \"olga\"\nkind = \"human\"\ngroups = [\"oncall\"]\npassword_hash = \"{}\"\n",
        sluice_identity::make_verifier("olga-pw")
    );
    format!(
        "{}{}{}{oncall}{}{extra}",
        listen(""),
        target_in("production", PROD, &pg.addr(), SCRAM_USER, "disable"),
        user(USER, PASSWORD),
        admin_tokens()
    )
}

fn prepare(pg: &PgServer) {
    pg.psql(
        "app",
        "create table customers (id int); alter table customers owner to sluice_scram;",
    );
}

fn columns(pg: &PgServer) -> String {
    pg.psql(
        "app",
        "select string_agg(column_name, ',' order by ordinal_position) from information_schema.columns where table_name = 'customers'",
    )
    .trim()
    .to_owned()
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

/// Run `sql` on its own connection in the background.
fn hold(
    sluice: &SluiceProcess,
    sql: &'static str,
) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let conn = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={PROD} sslmode=disable",
        sluice.pg_port()
    );
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client.batch_execute(sql).await
    })
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

fn get(sluice: &SluiceProcess, path: &str, token: Option<&str>) -> Answer {
    let mut r = agent().get(format!("http://127.0.0.1:{}{path}", sluice.http_port()));
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    answer(r.call())
}

fn post(sluice: &SluiceProcess, path: &str, token: &str, body: &str) -> Answer {
    answer(
        agent()
            .post(format!("http://127.0.0.1:{}{path}", sluice.http_port()))
            .header("Authorization", format!("Bearer {token}"))
            .content_type("application/json")
            .send(body),
    )
}

/// The one pending request, once the API lists it.
fn pending_via_api(sluice: &SluiceProcess) -> Value {
    let mut found = Value::Null;
    wait_until(
        Duration::from_secs(20),
        "a pending approval request",
        || {
            let a = get(sluice, "/api/approvals?status=pending", Some(AUDITOR_TOKEN));
            assert_eq!(a.status, 200, "{}", a.text);
            match a.body["approvals"].as_array() {
                Some(list) if list.len() == 1 => {
                    found = list[0].clone();
                    true
                }
                _ => false,
            }
        },
    );
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn approvers_decide_through_the_api_under_the_rules_of_approval() {
    let pg = PgServer::start();
    prepare(&pg);
    let sluice = SluiceProcess::builder(bin(), &config(&pg, ""))
        .env("TARGET_PW", SCRAM_PASSWORD)
        .start();

    let held = hold(&sluice, "alter table customers add column note text");
    let req = pending_via_api(&sluice);
    let id = req["id"].as_str().unwrap().to_owned();
    assert_eq!(req["binding"]["principal"], USER);
    assert_eq!(
        req["statement"],
        "alter table customers add column note text"
    );
    assert_eq!(req["approver_group"], "dba");
    assert_eq!(req["environment"], "production");
    let one = get(&sluice, &format!("/api/approvals/{id}"), Some(DBA_TOKEN));
    assert_eq!(one.status, 200);
    assert_eq!(one.body["id"], id.as_str());
    assert_eq!(
        get(
            &sluice,
            "/api/approvals/01ARZ3NDEKTSV4RRFFQ69G5FAV",
            Some(DBA_TOKEN)
        )
        .status,
        404
    );

    // An auditor reads but does not decide; an approver outside the
    // request's approver group cannot decide it either.
    let a = post(
        &sluice,
        &format!("/api/approvals/{id}/approve"),
        AUDITOR_TOKEN,
        "",
    );
    assert_eq!((a.status, a.code()), (403, "forbidden"), "{}", a.text);
    let a = post(
        &sluice,
        &format!("/api/approvals/{id}/approve"),
        OUTSIDER_TOKEN,
        "",
    );
    assert_eq!((a.status, a.code()), (403, "not_in_group"), "{}", a.text);
    let a = post(
        &sluice,
        &format!("/api/approvals/{id}/approve"),
        DBA_TOKEN,
        r#"{"reason": "typo"}"#,
    );
    assert_eq!(a.status, 400, "{}", a.text);
    assert!(!held.is_finished(), "still waiting");
    assert_eq!(columns(&pg), "id");

    let a = post(
        &sluice,
        &format!("/api/approvals/{id}/approve"),
        DBA_TOKEN,
        r#"{"justification": "CHG-1234"}"#,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "approved");
    assert_eq!(a.body["decisions"][0]["approver"], "dana");
    assert_eq!(a.body["decisions"][0]["justification"], "CHG-1234");
    held.await.unwrap().unwrap();
    assert_eq!(columns(&pg), "id,note");
    // Single use; a second vote on a decided request is a conflict.
    let a = post(
        &sluice,
        &format!("/api/approvals/{id}/approve"),
        DBA_TOKEN,
        "",
    );
    assert_eq!((a.status, a.code()), (409, "not_pending"), "{}", a.text);
    let used = get(&sluice, &format!("/api/approvals/{id}"), Some(DBA_TOKEN));
    assert_eq!(used.body["status"], "used");

    // Denied through the API: the client hears who and why.
    let held = hold(&sluice, "alter table customers drop column note");
    let req = pending_via_api(&sluice);
    let id2 = req["id"].as_str().unwrap().to_owned();
    let a = post(
        &sluice,
        &format!("/api/approvals/{id2}/deny"),
        DBA_TOKEN,
        r#"{"justification": "not during the freeze"}"#,
    );
    assert_eq!((a.status, a.body["status"].as_str()), (200, Some("denied")));
    let e = held.await.unwrap().unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "SL002");
    assert!(
        db.message()
            .contains("denied by dana: not during the freeze"),
        "{}",
        db.message()
    );
    assert_eq!(columns(&pg), "id,note");

    // Every decision and refused attempt is in the audit trail.
    let audit = get(
        &sluice,
        "/api/audit?kind=admin.action&limit=100",
        Some(AUDITOR_TOKEN),
    );
    assert_eq!(audit.status, 200);
    let rows = audit.body["rows"].as_array().unwrap();
    let actions: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["event"]["actor"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                r["event"]["action"].as_str().unwrap_or("").to_owned(),
                r["event"]["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for expected in [
        ("dana", "approval.approve", "approved"),
        ("dana", "approval.deny", "denied"),
        ("audrey", "approval.approve", "denied"),
        ("oscar", "approval.approve", "not_in_group"),
        ("dana", "approval.approve", "not_pending"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()) == expected),
            "{expected:?} not in {actions:?}"
        );
    }
}

/// POST a chat callback (Slack's form encoding), signed with `secret`.
fn callback(sluice: &SluiceProcess, secret: &str, chat_user: &str, token: &str) -> Answer {
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": { "id": chat_user, "username": "someone" },
        "actions": [{ "action_id": "sluice_approve", "value": token }]
    })
    .to_string();
    let body = format!(
        "payload={}",
        percent_encoding::utf8_percent_encode(&payload, percent_encoding::NON_ALPHANUMERIC)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signature = sluice_proxy::webhook::chat_signature(secret.as_bytes(), now, body.as_bytes());
    answer(
        agent()
            .post(format!(
                "http://127.0.0.1:{}/api/approvals/callback",
                sluice.http_port()
            ))
            .header("X-Slack-Request-Timestamp", now.to_string())
            .header("X-Slack-Signature", signature)
            .content_type("application/x-www-form-urlencoded")
            .send(body),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_messages_carry_signed_links_and_signed_callbacks_decide() {
    let pg = PgServer::start();
    prepare(&pg);
    pg.psql("app", "insert into customers values (42), (43)");
    let (hook_url, hooks) = json_receiver("/hooks/approvals");
    let extra = format!(
        r#"[approvals]
break_glass_groups = ["oncall"]
[approvals.webhook]
url = "{hook_url}"
public_url = "https://sluice.example.com:7080/"
link_secret_env = "LINK_SECRET"
signing_secret_env = "SIGNING_SECRET"
chat_users = [
  {{ chat_id = "UDANA", name = "dana", groups = ["dba"] }},
  {{ chat_id = "UALICE", name = "{USER}", groups = ["dba"] }},
]
"#
    );
    let sluice = SluiceProcess::builder(bin(), &config(&pg, &extra))
        .env("TARGET_PW", SCRAM_PASSWORD)
        .env("LINK_SECRET", LINK_SECRET)
        .env("SIGNING_SECRET", SIGNING_SECRET)
        .start();

    // A statement needing approval posts a message with signed buttons.
    let held = hold(
        &sluice,
        "alter table customers add column note text default 'n/a'",
    );
    let message = hooks.recv_timeout(Duration::from_secs(30)).unwrap();
    let id = message["sluice"]["request"].as_str().unwrap().to_owned();
    let text = message["text"].as_str().unwrap();
    assert!(
        text.contains(USER) && text.contains(PROD) && text.contains("production"),
        "{text}"
    );
    let blocks = message["blocks"].to_string();
    assert!(
        blocks.contains("Approve") && blocks.contains("Deny"),
        "{blocks}"
    );
    assert!(blocks.contains("add column note"), "{blocks}");
    let buttons = message["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap()["elements"]
        .clone();
    let approve_url = buttons[0]["url"].as_str().unwrap();
    let approve_token = buttons[0]["value"].as_str().unwrap().to_owned();
    let deny_token = buttons[1]["value"].as_str().unwrap().to_owned();
    assert!(
        approve_url.starts_with("https://sluice.example.com:7080/api/approvals/link?t="),
        "{approve_url}"
    );

    // The link shows the request in full, and decides nothing.
    let page = get(
        &sluice,
        &format!("/api/approvals/link?t={approve_token}"),
        None,
    );
    assert_eq!(page.status, 200);
    assert!(
        page.text
            .contains("alter table customers add column note text default &#39;n/a&#39;"),
        "{}",
        page.text
    );
    assert!(page.text.contains(&id));
    let tampered = approve_token.replacen(".a.", ".d.", 1);
    assert_eq!(
        get(&sluice, &format!("/api/approvals/link?t={tampered}"), None).status,
        403
    );
    assert!(!held.is_finished(), "a link alone decides nothing");

    // Callbacks: a wrong signature is refused; an unknown chat user and the
    // requester's own chat account are told why nothing happened.
    let a = callback(
        &sluice,
        "not-the-signing-secret-at-all",
        "UDANA",
        &approve_token,
    );
    assert_eq!(a.status, 401, "{}", a.text);
    let a = callback(&sluice, SIGNING_SECRET, "UNOBODY", &approve_token);
    assert_eq!(a.status, 200);
    assert!(
        a.body["text"]
            .as_str()
            .unwrap()
            .contains("does not know your chat account"),
        "{}",
        a.text
    );
    let a = callback(&sluice, SIGNING_SECRET, "UALICE", &approve_token);
    assert!(
        a.body["text"].as_str().unwrap().contains("self_approval"),
        "{}",
        a.text
    );
    let a = callback(&sluice, SIGNING_SECRET, "UDANA", &tampered);
    assert_eq!(a.status, 403, "{}", a.text);
    assert!(!held.is_finished());

    // Dana presses Approve: the statement runs.
    let a = callback(&sluice, SIGNING_SECRET, "UDANA", &approve_token);
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(
        a.body["text"].as_str().unwrap().contains("is approved"),
        "{}",
        a.text
    );
    held.await.unwrap().unwrap();
    // The deny button of a decided request does nothing more.
    let a = callback(&sluice, SIGNING_SECRET, "UDANA", &deny_token);
    assert!(
        a.body["text"].as_str().unwrap().contains("not_pending"),
        "{}",
        a.text
    );

    assert_eq!(columns(&pg), "id,note");

    // Break-glass runs at once and is announced, with the justification.
    let c = connect_as(&sluice, "olga", "olga-pw").await;
    c.batch_execute(
        "/* sluice:break-glass INC-7 primary is down */ alter table customers add column fix text",
    )
    .await
    .unwrap();
    assert_eq!(columns(&pg), "id,note,fix");
    let message = hooks.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(message["sluice"]["event"], "approval.break_glass");
    let text = message["text"].as_str().unwrap();
    assert!(
        text.contains("BREAK-GLASS")
            && text.contains("olga")
            && text.contains("INC-7 primary is down"),
        "{text}"
    );
    assert!(
        message["blocks"]
            .to_string()
            .find("sluice_approve")
            .is_none(),
        "no buttons"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_held_on_one_replica_is_approved_through_another() {
    let pg = PgServer::start();
    prepare(&pg);
    let store = format!("postgres://{SCRAM_USER}@127.0.0.1:{}/app", pg.port());
    let extra = format!("[audit]\nstore = \"{store}\"\npassword_env = \"TARGET_PW\"\n");
    let replica_a = SluiceProcess::builder(bin(), &config(&pg, &extra))
        .env("TARGET_PW", SCRAM_PASSWORD)
        .start();
    let replica_b = SluiceProcess::builder(bin(), &config(&pg, &extra))
        .env("TARGET_PW", SCRAM_PASSWORD)
        .start();

    let held = hold(&replica_a, "alter table customers add column shared text");
    // Replica B sees the request replica A made...
    let req = pending_via_api(&replica_b);
    let id = req["id"].as_str().unwrap().to_owned();
    assert_eq!(req["binding"]["target"], PROD);
    // ...and approving it there releases the statement held on A at once.
    let started = std::time::Instant::now();
    let a = post(
        &replica_b,
        &format!("/api/approvals/{id}/approve"),
        DBA_TOKEN,
        "",
    );
    assert_eq!(a.status, 200, "{}", a.text);
    held.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "LISTEN/NOTIFY wakes the holding replica without waiting for its 5 s poll ({:?})",
        started.elapsed()
    );
    assert_eq!(columns(&pg), "id,shared");
    assert_eq!(
        get(
            &replica_a,
            &format!("/api/approvals/{id}"),
            Some(AUDITOR_TOKEN)
        )
        .body["status"],
        "used"
    );

    // The audit trail is shared too: B's search finds A's statement once
    // A's writer has stored it (within about 100 ms; B cannot flush A).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = get(
            &replica_b,
            "/api/audit?text=shared&kind=db.statement",
            Some(AUDITOR_TOKEN),
        );
        assert_eq!(found.status, 200);
        if found.body["rows"].as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica B never found replica A's statement: {}",
            found.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Approvers see what a statement does, not the password in it: the
/// request's statement has its credential literals redacted, in the API
/// and in the store.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_in_a_held_statement_is_not_shown_to_approvers() {
    let pg = PgServer::start();
    prepare(&pg);
    let sluice = SluiceProcess::builder(bin(), &config(&pg, ""))
        .env("TARGET_PW", SCRAM_PASSWORD)
        .start();
    let _held = hold(&sluice, "alter role sluice_scram password 'Hunter2-secret'");
    let req = pending_via_api(&sluice);
    assert_eq!(
        req["statement"], "alter role sluice_scram password '***'",
        "{req}"
    );
    let all = get(&sluice, "/api/approvals", Some(DBA_TOKEN));
    assert!(!all.text.contains("Hunter2"), "{}", all.text);
    // The request is stored (SQLite in WAL mode: the file and its log).
    let dir = sluice.data_dir().join("audit");
    assert!(dir.join("audit.db").is_file());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("Hunter2"),
            "the password is in the approvals store"
        );
    }
}
