//! The admin REST API (`/api/…`) against a real Sluice process, a real
//! PostgreSQL, a real OpenID Provider (tests/idp) and real tokens: live
//! sessions listed and ended, the audit trail searched, usage and lineage,
//! reload and validation of policies, target health, authentication and
//! roles, and schemathesis fuzzing the whole API from its OpenAPI document.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;
use sluice_testkit::idp::{self, IdpServer};
use sluice_testkit::{wait_until, SCRAM_PASSWORD, SCRAM_USER};

/// Static tokens and their SHA-256 (`printf %s TOKEN | sha256sum`).
const ADMIN_TOKEN: &str = "admin-token-for-tests-7f3a9c";
const ADMIN_SHA256: &str = "f51f5253f0aa66226af13f266332538988f36cb3e1b5924ce7b30f232ebd3e2f";
const AUDITOR_TOKEN: &str = "auditor-token-for-tests-2b8e41";
const AUDITOR_SHA256: &str = "c8a8ac76dbb523d7eb9c650c10a70068b0409ac5703300c113f6e912c4913f78";
const APPROVER_TOKEN: &str = "approver-token-for-tests-c5d071";
const APPROVER_SHA256: &str = "2c83eddec4dd7c2d36aa9876192f4a36620af2468ec87b5c5a87f3d2a94a3cda";

/// `[admin]` with the three static tokens and `extra` keys.
fn admin_section(extra: &str) -> String {
    format!(
        r#"[admin]
{extra}
tokens = [
  {{ name = "ci-admin", role = "admin", token_sha256 = "{ADMIN_SHA256}" }},
  {{ name = "ci-auditor", role = "auditor", token_sha256 = "{AUDITOR_SHA256}" }},
  {{ name = "ci-approver", role = "approver", token_sha256 = "{APPROVER_SHA256}" }},
]
"#
    )
}

/// Sluice in front of `pg` with one target, one user, the static tokens,
/// and `extra` TOML.
fn start_sluice(pg: &PgServer, extra: &str) -> SluiceProcess {
    let config = format!(
        "{}{}{}{}{extra}",
        listen(""),
        target(TARGET, &pg.addr(), SCRAM_USER, "disable"),
        user(USER, PASSWORD),
        admin_section("")
    );
    SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", SCRAM_PASSWORD)
        .start()
}

/// An answer of the API.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    text: String,
    www_authenticate: Option<String>,
}

impl Answer {
    /// The error code of an error answer.
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

/// A small client for one Sluice's HTTP port.
struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    fn new(sluice: &SluiceProcess) -> Http {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Http {
            agent,
            base: format!("http://127.0.0.1:{}", sluice.http_port()),
        }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Answer {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let result = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            "POST" => {
                let mut r = self.agent.post(&url).content_type("text/plain");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(body.unwrap_or(""))
            }
            other => panic!("method {other}"),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let www_authenticate = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            text,
            www_authenticate,
        }
    }

    fn get(&self, path: &str, token: &str) -> Answer {
        self.call("GET", path, Some(token), None)
    }

    /// GET that must answer 200; returns the body.
    fn get_ok(&self, path: &str, token: &str) -> Value {
        let a = self.get(path, token);
        assert_eq!(a.status, 200, "GET {path}: {a:?}");
        a.body
    }
}

/// The `admin.action` events of the trail, newest first.
fn admin_events(http: &Http) -> Vec<Value> {
    let page = http.get_ok("/api/audit?kind=admin&limit=1000", ADMIN_TOKEN);
    page["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["event"].clone())
        .collect()
}

fn has_event(events: &[Value], actor: &str, action: &str, outcome: &str) -> bool {
    events
        .iter()
        .any(|e| e["actor"]["name"] == actor && e["action"] == action && e["outcome"] == outcome)
}

#[test]
fn live_sessions_are_listed_and_ended() {
    let pg = PgServer::start();
    let sluice = start_sluice(&pg, "");
    let http = Http::new(&sluice);

    let mut raw = Raw::connect(sluice.pg_port());
    raw.login(USER, PASSWORD, TARGET);
    let mut id = String::new();
    wait_until(Duration::from_secs(10), "the session to be listed", || {
        let list = http.get_ok("/api/sessions", ADMIN_TOKEN);
        match list["sessions"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["principal"] == USER))
        {
            Some(s) => {
                assert_eq!(s["target"], TARGET);
                assert_eq!(s["environment"], "development");
                assert_eq!(s["kind"], "human");
                id = s["id"].as_str().unwrap_or_default().to_owned();
                true
            }
            None => false,
        }
    });
    // Auditors and approvers may see sessions too.
    for token in [AUDITOR_TOKEN, APPROVER_TOKEN] {
        let list = http.get_ok("/api/sessions", token);
        assert!(list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str()));
    }

    // Only admins may end one.
    let path = format!("/api/sessions/{id}");
    for token in [AUDITOR_TOKEN, APPROVER_TOKEN] {
        let a = http.call("DELETE", &path, Some(token), None);
        assert_eq!((a.status, a.code()), (403, "forbidden"), "{a:?}");
        assert!(a.body["error"].as_str().unwrap().contains("admin"), "{a:?}");
    }
    let a = http.call("DELETE", &path, Some(ADMIN_TOKEN), None);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["killed"], true);
    assert_eq!(a.body["principal"], USER);

    // The client hears why, as PostgreSQL's own pg_terminate_backend says it.
    let fields = raw.expect_error();
    assert_eq!(field(&fields, b'C'), "57P01", "{fields:?}");
    assert_eq!(field(&fields, b'V'), "FATAL", "{fields:?}");
    assert!(raw.closed());
    wait_until(Duration::from_secs(10), "the session to go", || {
        let list = http.get_ok("/api/sessions", ADMIN_TOKEN);
        !list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str())
    });

    let a = http.call("DELETE", &path, Some(ADMIN_TOKEN), None);
    assert_eq!((a.status, a.code()), (404, "not_found"), "{a:?}");
    let a = http.call(
        "DELETE",
        "/api/sessions/not%20an%20id",
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!((a.status, a.code()), (400, "bad_request"), "{a:?}");

    // Every attempt is in the audit trail.
    let events = admin_events(&http);
    assert!(
        has_event(&events, "ci-admin", "session.kill", "ok"),
        "{events:#?}"
    );
    assert!(has_event(&events, "ci-admin", "session.kill", "not_found"));
    assert!(has_event(&events, "ci-auditor", "session.kill", "denied"));
    let kill = events
        .iter()
        .find(|e| e["outcome"] == "ok")
        .expect("the kill");
    assert_eq!(kill["object"], id.as_str());
    assert_eq!(kill["environment"], "development");
    assert!(kill["detail"].as_str().unwrap().contains(USER), "{kill:#}");
    // No token in the trail's search results or in the log.
    let all = http.get("/api/audit?limit=1000", ADMIN_TOKEN).text;
    let log = sluice.log();
    for secret in [ADMIN_TOKEN, AUDITOR_TOKEN, APPROVER_TOKEN] {
        assert!(!all.contains(secret) && !log.contains(secret));
    }
}

#[test]
fn audit_search_usage_and_lineage() {
    let pg = PgServer::start();
    pg.psql(
        "app",
        &format!(
            "create table orders (id int, email text, amount int);
             insert into orders values (1, 'a@example.com', 5), (2, 'b@example.com', 50), (3, 'c@example.com', 500);
             create table orders_copy (id int, amount int);
             alter table orders owner to {SCRAM_USER}; alter table orders_copy owner to {SCRAM_USER};"
        ),
    );
    let sluice = start_sluice(&pg, "");
    let http = Http::new(&sluice);
    for sql in [
        "select id, amount from orders where amount > 10",
        "insert into orders_copy select id, amount from orders",
        "select count(*) from orders_copy",
    ] {
        let (ok, out, err) = psql(&sluice, "sslmode=disable", &["-c", sql]);
        assert!(ok, "{sql}: {out}{err}");
    }

    // The statements just run are found (the search waits for them to be stored).
    let page = http.get_ok(
        &format!("/api/audit?principal={USER}&kind=statement"),
        AUDITOR_TOKEN,
    );
    let rows = page["rows"].as_array().unwrap();
    let normalized: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["event"]["normalized"].as_str())
        .collect();
    assert!(
        normalized.contains(&"select id, amount from orders where amount > $1"),
        "{page:#}"
    );
    assert!(normalized.contains(&"insert into orders_copy select id, amount from orders"));
    assert!(rows
        .iter()
        .all(|r| r["code"] == "db.statement" && r["principal"] == USER));

    // Filters: by table written, by words, by decision.
    let page = http.get_ok("/api/audit?table=orders_copy&kind=statement", AUDITOR_TOKEN);
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{page:#}");
    let page = http.get_ok("/api/audit?text=orders_copy%20insert", AUDITOR_TOKEN);
    assert_eq!(page["rows"].as_array().unwrap().len(), 1, "{page:#}");
    let page = http.get_ok("/api/audit?decision=deny", AUDITOR_TOKEN);
    assert!(page["rows"].as_array().unwrap().is_empty(), "{page:#}");
    let page = http.get_ok(
        "/api/audit?kind=session.start&since=1h&until=2999-01-01",
        AUDITOR_TOKEN,
    );
    assert_eq!(page["rows"].as_array().unwrap().len(), 3, "{page:#}");

    // Pages: newest first, then on with the cursor.
    let first = http.get_ok("/api/audit?kind=statement&limit=1", AUDITOR_TOKEN);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = http.get_ok(
        &format!("/api/audit?kind=statement&limit=1&cursor={cursor}"),
        AUDITOR_TOKEN,
    );
    assert!(
        second["rows"][0]["ulid"].as_str().unwrap() < first["rows"][0]["ulid"].as_str().unwrap()
    );

    // Bad input is a 400 that names the parameter.
    for (query, name) in [
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("since=yesterday", "since"),
        ("decision=maybe", "decision"),
        ("kind=everything", "kind"),
        ("cursor=abc", "cursor"),
        ("principal=%00", "principal"),
        ("principle=alice", "principle"),
        ("limit=1&limit=2", "limit"),
    ] {
        let a = http.get(&format!("/api/audit?{query}"), AUDITOR_TOKEN);
        assert_eq!((a.status, a.code()), (400, "bad_request"), "{query}: {a:?}");
        assert!(
            a.body["error"].as_str().unwrap().contains(name),
            "{query}: {a:?}"
        );
    }

    // Usage: who read orders, how much.
    let usage = http.get_ok(
        &format!("/api/usage?principal={USER}&table=orders"),
        AUDITOR_TOKEN,
    );
    let rows = usage["rows"].as_array().unwrap();
    let orders = rows
        .iter()
        .find(|r| r["table"] == "orders" && r["column"] == "")
        .unwrap_or_else(|| panic!("{usage:#}"));
    assert_eq!(orders["reads"], 2, "{usage:#}");
    let usage = http.get_ok("/api/usage?column=orders.amount", AUDITOR_TOKEN);
    assert!(!usage["rows"].as_array().unwrap().is_empty(), "{usage:#}");
    let a = http.get("/api/usage?since=soon", AUDITOR_TOKEN);
    assert_eq!(a.status, 400, "{a:?}");

    // Lineage: where orders_copy came from.
    let lineage = http.get_ok("/api/usage/lineage/orders_copy?depth=3", AUDITOR_TOKEN);
    assert_eq!(lineage["edges"][0]["source"], "orders", "{lineage:#}");
    assert_eq!(lineage["edges"][0]["principal"], USER);
    let lineage = http.get_ok("/api/usage/lineage/nothing_here", AUDITOR_TOKEN);
    assert!(lineage["edges"].as_array().unwrap().is_empty());
    let a = http.get("/api/usage/lineage/orders_copy?depth=0", AUDITOR_TOKEN);
    assert_eq!(a.status, 400, "{a:?}");

    // Approvers do not read the trail.
    let a = http.get("/api/audit", APPROVER_TOKEN);
    assert_eq!((a.status, a.code()), (403, "forbidden"), "{a:?}");
    let a = http.get("/api/usage", APPROVER_TOKEN);
    assert_eq!(a.status, 403, "{a:?}");
}

#[test]
fn audit_search_on_a_postgresql_store_survives_its_outage() {
    let mut pg = PgServer::start();
    let store = format!("postgres://{SCRAM_USER}@127.0.0.1:{}/app", pg.port());
    let mut sluice = start_sluice(
        &pg,
        &format!("[audit]\nstore = \"{store}\"\npassword_env = \"TARGET_PW\"\n"),
    );
    let http = Http::new(&sluice);
    let (ok, _, err) = psql(&sluice, "sslmode=disable", &["-c", "select 42 as answer"]);
    assert!(ok, "{err}");
    let page = http.get_ok("/api/audit?kind=statement", AUDITOR_TOKEN);
    assert_eq!(
        page["rows"][0]["event"]["normalized"], "select $1 as answer",
        "{page:#}"
    );
    assert_eq!(http.get("/api/usage", AUDITOR_TOKEN).status, 200);

    // The store goes away: a clear 503, not a hang or a crash.
    pg.stop();
    let a = http.get("/api/audit", AUDITOR_TOKEN);
    assert_eq!((a.status, a.code()), (503, "store_unavailable"), "{a:?}");
    // It comes back: the API reconnects.
    pg.restart();
    wait_until(Duration::from_secs(30), "the store to answer again", || {
        http.get("/api/audit?kind=statement", AUDITOR_TOKEN).status == 200
    });

    // A clean shutdown with the store connection open.
    sluice.signal("TERM");
    let status = sluice
        .wait_exit(Duration::from_secs(30))
        .expect("sluice exits");
    assert!(status.success(), "{}", sluice.log());
    assert!(!sluice.log().contains("panicked"), "{}", sluice.log());
}

const TEAM_POLICY: &str = r#"@id("no-truncate-orders")
@reason("orders are never truncated")
forbid (principal, action == Sluice::Action::"truncate", resource);
"#;

#[test]
fn reload_and_validate_policies() {
    let pg = PgServer::start();
    let policies = tempfile::tempdir().expect("temp dir");
    std::fs::write(policies.path().join("team.cedar"), TEAM_POLICY).unwrap();
    let sluice = start_sluice(
        &pg,
        &format!("[policy]\ndir = \"{}\"\n", policies.path().display()),
    );
    let http = Http::new(&sluice);

    let a = http.call("POST", "/api/policy/reload", Some(ADMIN_TOKEN), None);
    assert_eq!(
        (a.status, &a.body["status"]),
        (200, &Value::from("ok")),
        "{a:?}"
    );
    let a = http.call("POST", "/api/policy/reload", Some(AUDITOR_TOKEN), None);
    assert_eq!((a.status, a.code()), (403, "forbidden"), "{a:?}");

    // A broken file: the reload is refused with the reason, and the old
    // policies stay in force.
    let broken = policies.path().join("broken.cedar");
    std::fs::write(
        &broken,
        "@id(\"half\")\nforbid (principal, action, resource\n",
    )
    .unwrap();
    let a = http.call("POST", "/api/policy/reload", Some(ADMIN_TOKEN), None);
    assert_eq!((a.status, a.code()), (422, "reload_failed"), "{a:?}");
    let message = a.body["error"].as_str().unwrap();
    assert!(message.contains("broken.cedar"), "{a:?}");
    assert!(message.contains("previous configuration stays"), "{a:?}");
    let (ok, _, err) = psql(&sluice, "sslmode=disable", &["-c", "select 1"]);
    assert!(ok, "{err}");
    std::fs::remove_file(&broken).unwrap();

    // Validate: a good policy, without installing it.
    let good = r#"@id("no-delete-for-agents")
@reason("agents do not delete")
forbid (principal is Sluice::Agent, action == Sluice::Action::"delete", resource);
"#;
    let a = http.call(
        "POST",
        "/api/policy/validate",
        Some(ADMIN_TOKEN),
        Some(good),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["valid"], true);
    assert_eq!(a.body["policies"], 1);
    assert!(!policies.path().join("submitted.cedar").exists());

    // A syntax error, with its line.
    let bad =
        "@id(\"x\")\nforbid (principal, action, resource)\nwhen { context.environment == };\n";
    let a = http.call("POST", "/api/policy/validate", Some(ADMIN_TOKEN), Some(bad));
    assert_eq!((a.status, a.code()), (422, "policy_invalid"), "{a:?}");
    assert_eq!(a.body["line"], 3, "{a:?}");
    assert_eq!(a.body["valid"], false);
    // A schema error (a misspelled context field), with its line.
    let typo = "\n\n@id(\"typo\")\nforbid (principal, action, resource)\nwhen { context.enviroment == \"production\" };\n";
    let a = http.call(
        "POST",
        "/api/policy/validate",
        Some(ADMIN_TOKEN),
        Some(typo),
    );
    assert_eq!((a.status, a.code()), (422, "policy_invalid"), "{a:?}");
    assert!(matches!(a.body["line"].as_u64(), Some(3..=5)), "{a:?}");
    assert!(a.body["error"].as_str().unwrap().contains("typo"), "{a:?}");
    // Together with the policies in force: a duplicate @id, unless it
    // replaces that file.
    let a = http.call(
        "POST",
        "/api/policy/validate",
        Some(ADMIN_TOKEN),
        Some(TEAM_POLICY),
    );
    assert_eq!(a.status, 422, "{a:?}");
    assert!(
        a.body["error"].as_str().unwrap().contains("duplicate"),
        "{a:?}"
    );
    let a = http.call(
        "POST",
        "/api/policy/validate?replaces=team.cedar",
        Some(ADMIN_TOKEN),
        Some(TEAM_POLICY),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let a = http.call(
        "POST",
        "/api/policy/validate",
        Some(AUDITOR_TOKEN),
        Some(good),
    );
    assert_eq!(a.status, 403, "{a:?}");

    let events = admin_events(&http);
    assert!(
        has_event(&events, "ci-admin", "config.reload", "ok"),
        "{events:#?}"
    );
    assert!(has_event(&events, "ci-auditor", "config.reload", "denied"));
    let failed = events
        .iter()
        .find(|e| e["action"] == "config.reload" && e["outcome"] == "failed")
        .expect("the failed reload is recorded");
    assert!(
        failed["detail"].as_str().unwrap().contains("broken.cedar"),
        "{failed:#}"
    );
}

#[test]
fn targets_show_their_health() {
    let pg = PgServer::start();
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sluice = start_sluice(
        &pg,
        &target_in(
            "production",
            "gone-prod",
            &format!("127.0.0.1:{closed}"),
            SCRAM_USER,
            "disable",
        ),
    );
    let http = Http::new(&sluice);
    let a = http.get("/api/targets", AUDITOR_TOKEN);
    assert_eq!(a.status, 200, "{a:?}");
    let targets = a.body["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    let up = &targets[0];
    assert_eq!(up["name"], TARGET);
    assert_eq!(up["upstream"], pg.addr().as_str());
    assert_eq!(up["health"]["status"], "up", "{up:#}");
    assert!(up["health"]["latency_ms"].as_f64().unwrap() >= 0.0);
    let down = &targets[1];
    assert_eq!(down["name"], "gone-prod");
    assert_eq!(down["environment"], "production");
    assert_eq!(down["health"]["status"], "down", "{down:#}");
    assert!(down["health"]["error"].as_str().is_some());
    // Sluice's own logins stay secret.
    assert!(
        !a.text.contains(SCRAM_PASSWORD) && !a.text.contains(SCRAM_USER),
        "{}",
        a.text
    );

    let a = http.get("/api/targets", APPROVER_TOKEN);
    assert_eq!(a.status, 403, "{a:?}");
}

#[test]
fn authentication_with_real_oidc_tokens_and_static_tokens() {
    let pg = PgServer::start();
    let idp = IdpServer::start();
    let config = format!(
        r#"{}{}{}
[[oidc]]
issuer = "{}"
audience = ["sluice", "sluice-cli"]

[[oidc.clients]]
client_id = "etl-service"
groups = ["etl"]

{}"#,
        listen(""),
        target(TARGET, &pg.addr(), SCRAM_USER, "disable"),
        user(USER, PASSWORD),
        idp.issuer(),
        admin_section("admin_groups = [\"dba\"]\nauditor_groups = [\"analyst\"]")
    );
    let sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", SCRAM_PASSWORD)
        .start();
    let http = Http::new(&sluice);

    // No token, another scheme, a token that is nothing: 401 with a challenge.
    let a = http.call("GET", "/api/sessions", None, None);
    assert_eq!((a.status, a.code()), (401, "unauthenticated"), "{a:?}");
    assert!(
        a.www_authenticate
            .as_deref()
            .unwrap_or("")
            .starts_with("Bearer"),
        "{a:?}"
    );
    let a = http.get("/api/sessions", "not-a-token");
    assert_eq!(a.status, 401, "{a:?}");
    assert!(a.www_authenticate.unwrap().contains("invalid_token"));
    // Health and metrics stay open.
    assert_eq!(sluice.http_get("/healthz").0, 200);
    assert_eq!(sluice.http_get("/metrics").0, 200);

    // dan is in dba: an admin, with his ID token from the device flow.
    let dan = idp.id_token(idp::DAN);
    let a = http.call("POST", "/api/policy/reload", Some(&dan), None);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(http.get("/api/targets", &dan).status, 200);
    // bob is an analyst: an auditor.
    let bob = idp.id_token(idp::BOB);
    assert_eq!(http.get("/api/audit?limit=5", &bob).status, 200);
    let a = http.call("POST", "/api/policy/reload", Some(&bob), None);
    assert_eq!((a.status, a.code()), (403, "forbidden"), "{a:?}");
    assert!(
        a.body["error"].as_str().unwrap().contains(idp::BOB),
        "{a:?}"
    );
    // alice (dev) and the etl service have no role: 403, not 401.
    let alice = idp.id_token(idp::ALICE);
    let a = http.get("/api/sessions", &alice);
    assert_eq!((a.status, a.code()), (403, "forbidden"), "{a:?}");
    let etl = idp.client_credentials(idp::SERVICE_CLIENT);
    assert_eq!(http.get("/api/openapi.json", &etl).status, 403);

    // Forged, expired and foreign tokens are 401s that say why.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = r#"{"sub":"dan","email":"dan@example.com","aud":"sluice","groups":["dba"]}"#;
    let forged = idp.mint(claims, "RS256", "foreign");
    let a = http.get("/api/sessions", &forged);
    assert_eq!(a.status, 401, "{a:?}");
    assert!(
        a.body["error"].as_str().unwrap().contains("signature"),
        "{a:?}"
    );
    let expired = idp.mint(
        &format!(
            r#"{{"sub":"dan","email":"dan@example.com","aud":"sluice","groups":["dba"],"iat":{},"exp":{}}}"#,
            now - 7200,
            now - 3600
        ),
        "RS256",
        "current",
    );
    let a = http.get("/api/sessions", &expired);
    assert_eq!(a.status, 401, "{a:?}");
    assert!(
        a.body["error"].as_str().unwrap().contains("expired"),
        "{a:?}"
    );
    let other_audience = idp.mint(
        r#"{"sub":"dan","email":"dan@example.com","aud":"elsewhere","groups":["dba"]}"#,
        "RS256",
        "current",
    );
    assert_eq!(http.get("/api/sessions", &other_audience).status, 401);
    let none = idp.mint(claims, "none", "current");
    assert_eq!(http.get("/api/sessions", &none).status, 401);
    // A minted token with the right groups is an admin like any other.
    let minted = idp.mint(claims, "ES256", "current");
    assert_eq!(http.get("/api/sessions", &minted).status, 200);

    // Static tokens work next to OIDC.
    assert_eq!(http.get("/api/sessions", ADMIN_TOKEN).status, 200);

    // Who did what is recorded with their identity, and no token is logged.
    let events = admin_events(&http);
    assert!(
        has_event(&events, idp::DAN, "config.reload", "ok"),
        "{events:#?}"
    );
    assert!(has_event(&events, idp::BOB, "config.reload", "denied"));
    let log = sluice.log();
    for token in [&dan, &bob, &alice, &etl, &forged] {
        assert!(!log.contains(token.as_str()));
    }
}

/// schemathesis (PyPI) generates requests for every operation of
/// `/api/openapi.json`, valid and invalid, and finds no server error.
#[test]
fn schemathesis_finds_no_server_error() {
    let available = Command::new("python3")
        .args(["-c", "import schemathesis"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        available,
        "schemathesis is not installed: run scripts/install-test-deps.sh"
    );
    let pg = PgServer::start();
    let sluice = start_sluice(&pg, "");
    // Something in the trail and a live session, so searches and the kill
    // have data to work on.
    let mut raw = Raw::connect(sluice.pg_port());
    raw.login(USER, PASSWORD, TARGET);
    let (ok, _, err) = psql(&sluice, "sslmode=disable", &["-c", "select 1"]);
    assert!(ok, "{err}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/api/schemathesis.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}", sluice.http_port()))
        .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SCHEMATHESIS_EXAMPLES", "25")
        .env("PYTHONIOENCODING", "utf-8")
        .output()
        .expect("run tests/api/schemathesis.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\n--- sluice log ---\n{}",
        sluice.log()
    );
    assert!(!sluice.log().contains("panicked"), "{}", sluice.log());
    println!("{stdout}");
}
