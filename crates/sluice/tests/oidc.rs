//! Identity-aware, credential-free access with real servers: a real OpenID
//! Provider (`oidc-provider` under Node.js, tests/idp), a real PostgreSQL,
//! Sluice, and real clients (psql, psycopg 3, pgjdbc, the `sluice` CLI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use sluice_testkit::idp::{self, IdpServer};
use sluice_testkit::{
    wait_until, CLEAR_USER, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER, TRUST_USER,
};

/// PostgreSQL with a table whose rows are filtered by `sluice.attr.region`.
fn postgres() -> PgServer {
    let pg = PgServer::start();
    pg.psql(
        "app",
        &format!(
            "create table regional (region text, v int);
             insert into regional values ('eu', 1), ('eu', 2), ('us', 3);
             alter table regional enable row level security;
             create policy by_region on regional
               using (region = current_setting('sluice.attr.region', true));
             grant select on regional to {SCRAM_USER}, {MD5_USER}, {CLEAR_USER}, {TRUST_USER};"
        ),
    );
    pg
}

/// A policy directory: only DBAs may open production targets.
fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("connect.cedar"),
        r#"@id("production-is-for-dbas")
@reason("only members of dba may open production targets")
forbid (principal, action == Sluice::Action::"connect", resource)
when { resource.environment == "production" }
unless { principal in Sluice::Group::"dba" };
"#,
    )
    .expect("write policy");
    dir
}

/// The config: two targets on one server (development and production),
/// whose upstream role depends on the principal's groups; a local user;
/// the IdP as issuer with its two clients.
fn config(
    pg: &PgServer,
    idp: &IdpServer,
    policies: &Path,
    oidc_extra: &str,
    extra: &str,
) -> String {
    let target = |name: &str, env: &str| {
        format!(
            r#"[[targets]]
name = "{name}"
environment = "{env}"
upstream = "{upstream}"
database = "app"
user = "{TRUST_USER}"
tls = "disable"

[[targets.logins]]
groups = ["dba"]
user = "{SCRAM_USER}"
password_env = "SCRAM_PW"

[[targets.logins]]
groups = ["etl", "analyst"]
user = "{MD5_USER}"
password_env = "MD5_PW"

"#,
            upstream = pg.addr()
        )
    };
    format!(
        r#"{listen}
{dev}{prod}{local}
[policy]
dir = "{policies}"

[[oidc]]
issuer = "{issuer}"
audience = ["sluice", "sluice-cli"]
user_claim = "email"
groups_claim = "groups"
attribute_claims = {{ region = "region" }}
{oidc_extra}

[[oidc.clients]]
client_id = "etl-service"
kind = "service"
groups = ["etl"]

[[oidc.clients]]
client_id = "report-agent"
name = "report-agent"
kind = "agent"
on_behalf_of_claim = "on_behalf_of"

{extra}
"#,
        listen = listen(""),
        dev = target(TARGET, "development"),
        prod = target("app-prod", "production"),
        local = user(USER, PASSWORD),
        policies = policies.display(),
        issuer = idp.issuer(),
    )
}

struct Setup {
    _pg: PgServer,
    idp: IdpServer,
    sluice: SluiceProcess,
    _policies: tempfile::TempDir,
}

fn start_all(ttl: u64, extra: &str) -> Setup {
    start_all_with(ttl, "", extra)
}

fn start_all_with(ttl: u64, oidc_extra: &str, extra: &str) -> Setup {
    start_custom(ttl, "", oidc_extra, extra)
}

/// [`start_all`] with extra keys for `[listen]`, `[[oidc]]` and the top level.
fn start_custom(ttl: u64, listen_extra: &str, oidc_extra: &str, extra: &str) -> Setup {
    let pg = postgres();
    let idp = IdpServer::start_with_ttl(ttl);
    let policies = policy_dir();
    let text = config(&pg, &idp, policies.path(), oidc_extra, extra).replacen(
        "[listen]\n",
        &format!("[listen]\n{listen_extra}"),
        1,
    );
    let sluice = SluiceProcess::builder(bin(), &text)
        .env("SCRAM_PW", SCRAM_PASSWORD)
        .env("MD5_PW", MD5_PASSWORD)
        .start();
    Setup {
        _pg: pg,
        idp,
        sluice,
        _policies: policies,
    }
}

/// psql through Sluice with `password`; (success, stdout, stderr).
fn psql_token(
    sluice: &SluiceProcess,
    user: &str,
    target: &str,
    sslmode: &str,
    password: &str,
    sql: &str,
) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname={target} sslmode={sslmode}",
            sluice.pg_port()
        ))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLCERT")
        .env_remove("PGSSLKEY")
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Who the database sees, one `|`-separated line. Emails are printed with
/// `(at)`, so that Sluice's masking (on by default) leaves them readable.
const WHO: &str = "select current_user || '|' || replace(current_setting('sluice.principal'), '@', '(at)') || '|' || current_setting('sluice.kind') || '|' || current_setting('sluice.groups') || '|' || coalesce(current_setting('sluice.attr.region', true), '') || '|' || replace(coalesce(current_setting('sluice.on_behalf_of', true), ''), '@', '(at)') || '|' || current_setting('sluice.method')";

/// The principal's name, readable through masking (see [`WHO`]).
const PRINCIPAL: &str = "select replace(current_setting('sluice.principal'), '@', '(at)')";

fn who(s: &Setup, token: &str, target: &str) -> String {
    let (ok, out, err) = psql_token(&s.sluice, "token-user", target, "require", token, WHO);
    assert!(ok, "psql failed: {err}\n--- sluice log\n{}", s.sluice.log());
    out
}

fn assert_never_logged(s: &Setup, secrets: &[&str]) {
    let log = s.sluice.log();
    for secret in secrets {
        // A JWT's signature part is what makes it usable: it must not appear.
        let sig = secret.rsplit('.').next().unwrap_or(secret);
        assert!(
            sig.len() < 8 || !log.contains(sig),
            "the sluice log contains a token"
        );
    }
}

#[test]
fn id_tokens_sign_in_people_with_their_groups_roles_and_attributes() {
    let s = start_all(300, "");
    let alice = s.idp.id_token(idp::ALICE);
    let dan = s.idp.id_token(idp::DAN);
    let bob = s.idp.id_token(idp::BOB);

    // The token decides who: the startup user name does not matter.
    assert_eq!(
        who(&s, &alice, TARGET),
        format!("{TRUST_USER}|alice(at)example.com|human|dev|eu||oidc")
    );
    // Least privilege at the database: dba → the admin role, analyst → another.
    assert_eq!(
        who(&s, &dan, TARGET),
        format!("{SCRAM_USER}|dan(at)example.com|human|dba,dev|us||oidc")
    );
    assert!(who(&s, &bob, TARGET).starts_with(&format!("{MD5_USER}|bob(at)example.com|")));

    // Row level security reads the principal's attribute.
    let (ok, rows, err) = psql_token(
        &s.sluice,
        "x",
        TARGET,
        "require",
        &alice,
        "select string_agg(v::text, ',' order by v) from regional",
    );
    assert!(ok, "{err}");
    assert_eq!(rows, "1,2");

    // Connect-time policy: production is for DBAs only, and the refusal
    // does not list targets.
    let (ok, _, err) = psql_token(&s.sluice, "x", "app-prod", "require", &alice, "select 1");
    assert!(!ok);
    assert!(
        err.contains("alice@example.com may not connect to target \"app-prod\": only members of dba may open production targets"),
        "{err}"
    );
    assert!(!err.contains(TARGET), "{err}");
    assert!(who(&s, &dan, "app-prod").starts_with(&format!("{SCRAM_USER}|dan(at)example.com")));

    // A token is never accepted in clear (the client is refused before it
    // is asked for the password).
    let (ok, _, err) = psql_token(&s.sluice, "x", TARGET, "disable", &alice, "select 1");
    assert!(!ok);
    assert!(
        err.contains("signing in with a token requires TLS"),
        "{err}"
    );

    // Local users keep SCRAM.
    let (ok, out, err) = psql(
        &s.sluice,
        "sslmode=require",
        &["-A", "-t", "-c", "select current_setting('sluice.method')"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "scram-sha-256");

    assert_never_logged(&s, &[&alice, &dan, &bob]);
}

#[test]
fn bad_tokens_are_refused_with_the_reason() {
    let s = start_all(300, "");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = r#"{"sub":"user-alice","email":"alice@example.com","aud":"sluice"}"#;
    let cases: Vec<(String, &str)> = vec![
        (s.idp.mint(good, "RS256", "current"), ""),
        (s.idp.mint(good, "EdDSA", "current"), ""),
        (s.idp.mint(good, "ES256", "current"), ""),
        (
            s.idp.mint(
                r#"{"sub":"u","email":"e@x","aud":"someone-else"}"#,
                "RS256",
                "current",
            ),
            "the token is not meant for this proxy (audience)",
        ),
        (
            s.idp.mint(
                r#"{"sub":"u","email":"e@x","aud":"sluice","iss":"http://127.0.0.1:1"}"#,
                "RS256",
                "current",
            ),
            "the token's issuer is not trusted by this proxy",
        ),
        (
            s.idp.mint(
                &format!(
                    r#"{{"sub":"u","email":"e@x","aud":"sluice","iat":{},"exp":{}}}"#,
                    now - 7200,
                    now - 3600
                ),
                "RS256",
                "current",
            ),
            "the token has expired; run `sluice login` again",
        ),
        (
            s.idp.mint(
                &format!(
                    r#"{{"sub":"u","email":"e@x","aud":"sluice","nbf":{}}}"#,
                    now + 3600
                ),
                "ES256",
                "current",
            ),
            "the token is not valid yet",
        ),
        (
            s.idp.mint(good, "none", "current"),
            "signing algorithm none is not accepted",
        ),
        (
            s.idp.mint(good, "HS256", "current"),
            "signing algorithm HS256 is not accepted",
        ),
        (
            s.idp.mint(good, "RS256", "foreign"),
            "the token's signature is not valid",
        ),
        (
            s.idp
                .mint(r#"{"sub":"u","aud":"sluice"}"#, "RS256", "current"),
            "the token has no usable \"email\" claim",
        ),
        (
            "not-a-token".to_owned(),
            "the password is not a valid token",
        ),
    ];
    for (token, want) in &cases {
        let (ok, out, err) = psql_token(&s.sluice, "mallory", TARGET, "require", token, PRINCIPAL);
        if want.is_empty() {
            assert!(ok, "{err}\n{}", s.sluice.log());
            assert_eq!(out, "alice(at)example.com");
            continue;
        }
        assert!(!ok, "accepted a bad token (wanted: {want})");
        assert!(
            err.contains("token authentication failed for user \"mallory\""),
            "{err}"
        );
        assert!(err.contains(want), "wanted {want:?} in {err}");
        assert!(!err.contains(token.as_str()), "the error echoes the token");
    }
    let tokens: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
    assert_never_logged(&s, &tokens);
    assert!(s.sluice.log().contains("token authentication failed"));

    // The trail has one auth.failure per refused token, with its category
    // and what the client was told, and never the token.
    let events = || -> Vec<serde_json::Value> {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "audit",
                "search",
                "--kind",
                "auth",
                "--format",
                "json",
                "--data-dir",
            ])
            .arg(s.sluice.data_dir())
            .output()
            .expect("run sluice audit search");
        let page: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        page["rows"]
            .as_array()
            .map(|rows| rows.iter().map(|r| r["event"].clone()).collect())
            .unwrap_or_default()
    };
    let refused = cases.iter().filter(|(_, want)| !want.is_empty()).count();
    sluice_testkit::wait_until(
        Duration::from_secs(10),
        "auth failures in the trail",
        || events().len() == refused,
    );
    let events = events();
    let out = serde_json::to_string(&events).unwrap();
    let reasons = |r: &str| events.iter().filter(|e| e["reason"] == r).count();
    assert_eq!(reasons("token_expired"), 1, "{out}");
    assert_eq!(reasons("token_invalid"), refused - 1, "{out}");
    for e in &events {
        assert_eq!(e["user"], "mallory");
        assert_eq!(e["method"], "token");
        let detail = e["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("token authentication failed"), "{e}");
    }
    for token in &tokens {
        let sig = token.rsplit('.').next().unwrap_or(token);
        assert!(
            sig.len() < 8 || !out.contains(sig),
            "the trail holds a token"
        );
    }
}

#[test]
fn key_rotation_is_picked_up_without_a_restart() {
    let s = start_all(300, "");
    let before = s.idp.id_token(idp::ALICE);
    assert!(who(&s, &before, TARGET).contains("alice(at)example.com"));

    // New keys, old ones still published: both tokens work.
    s.idp.rotate(true);
    let after = s.idp.id_token(idp::ALICE);
    assert_ne!(before, after);
    // An unknown kid refetches the JWKS (rate-limited to once a second).
    wait_until(Duration::from_secs(15), "the new key to be fetched", || {
        psql_token(&s.sluice, "x", TARGET, "require", &after, "select 1").0
    });
    assert!(psql_token(&s.sluice, "x", TARGET, "require", &before, "select 1").0);

    // New keys again, old ones removed: once the JWKS is refetched, tokens
    // signed with removed keys stop working.
    s.idp.rotate(false);
    let latest = s.idp.id_token(idp::ALICE);
    wait_until(
        Duration::from_secs(15),
        "the newest key to be fetched",
        || psql_token(&s.sluice, "x", TARGET, "require", &latest, "select 1").0,
    );
    let (ok, _, err) = psql_token(&s.sluice, "x", TARGET, "require", &before, "select 1");
    assert!(!ok);
    assert!(
        err.contains("signed with a key the issuer does not publish"),
        "{err}"
    );
}

#[test]
fn services_and_agents_sign_in_with_client_credentials() {
    let s = start_all(300, "");
    let etl = s.idp.client_credentials(idp::SERVICE_CLIENT);
    assert_eq!(
        who(&s, &etl, TARGET),
        format!("{MD5_USER}|etl-service|service|etl|||oidc-client")
    );
    // The agent acts for alice, and the database (and audit) see both.
    let agent = s.idp.client_credentials(idp::AGENT_CLIENT);
    assert_eq!(
        who(&s, &agent, TARGET),
        format!("{TRUST_USER}|report-agent|agent|||alice(at)example.com|oidc-client")
    );
    // Clients cannot forge Sluice's settings.
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=x dbname={TARGET} sslmode=require options='-c sluice.principal=root'",
            s.sluice.pg_port()
        ))
        .args(["-X", "-c", "select 1"])
        .env("PGPASSWORD", &etl)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved for Sluice"));
}

#[test]
fn drivers_sign_in_with_tokens() {
    let s = start_all(300, "");
    let token = s.idp.id_token(idp::ALICE);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients");
    let env = |cmd: &mut Command| {
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", s.sluice.pg_port().to_string())
            .env("PGUSER", "alice@example.com")
            .env("PGDATABASE", TARGET)
            .env("SLUICE_TOKEN", &token)
            .env_remove("PGPASSWORD");
    };
    let expect = format!("identity: alice(at)example.com|human|{TRUST_USER}");

    let mut py = Command::new("python3");
    py.arg(root.join("python/token_login.py"));
    env(&mut py);
    let out = py.output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&expect),
        "psycopg: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let classes = tempfile::tempdir().unwrap();
    let jar = "/usr/share/java/postgresql.jar";
    let javac = Command::new("javac")
        .args(["-encoding", "UTF-8", "-cp", jar, "-d"])
        .arg(classes.path())
        .arg(root.join("java/TokenLogin.java"))
        .output()
        .expect("run javac");
    assert!(
        javac.status.success(),
        "{}",
        String::from_utf8_lossy(&javac.stderr)
    );
    let mut java = Command::new("java");
    java.arg("-cp")
        .arg(format!("{jar}:{}", classes.path().display()))
        .arg("TokenLogin");
    env(&mut java);
    let out = java.output().expect("run java");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&expect),
        "pgjdbc: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a client certificate for `cn` (PEM files in `dir`): (ca, cert, key).
fn client_cert(dir: &Path, cn: &str, prefix: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Sluice client CA {prefix}"),
    );
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, cn);
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let paths = (
        dir.join(format!("{prefix}-ca.crt")),
        dir.join(format!("{prefix}-client.crt")),
        dir.join(format!("{prefix}-client.key")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&paths.2, std::fs::Permissions::from_mode(0o600)).unwrap();
    paths
}

#[test]
fn client_certificates_sign_in_services() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = client_cert(dir.path(), "billing-job", "good");
    let (_, other_cert, other_key) = client_cert(dir.path(), "billing-job", "stranger");
    let extra = format!(
        r#"[tls]
client_ca = "{}"

[[mtls]]
from = "cn"
prefix = "billing-"
kind = "service"
groups = ["etl"]
attributes = {{ region = "eu" }}
"#,
        ca.display()
    );
    let s = start_all(300, &extra);
    let run = |cert: &Path, key: &Path, user: &str| {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user={user} dbname={TARGET} sslmode=require sslcert={} sslkey={}",
                s.sluice.pg_port(),
                cert.display(),
                key.display()
            ))
            .args(["-X", "-A", "-t", "-w", "-c", WHO])
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("run psql")
    };
    // No password: the certificate is the credential (-w: never prompt).
    let out = run(&cert, &key, "billing-job");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.sluice.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{MD5_USER}|billing-job|service|etl|eu||mtls")
    );
    // A certificate for another name than the user: a password is needed.
    let out = run(&cert, &key, "someone-else");
    assert!(!out.status.success());
    // A certificate from an unknown CA: the handshake fails.
    let out = run(&other_cert, &other_key, "billing-job");
    assert!(!out.status.success());
    // Without a certificate, tokens still work.
    let token = s.idp.id_token(idp::ALICE);
    assert!(who(&s, &token, TARGET).contains("alice(at)example.com"));
}

/// Run the CLI with its own config directory.
fn cli(config_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("SLUICE_CONFIG_DIR", config_dir)
        .env_remove("SLUICE_ISSUER")
        .env_remove("SLUICE_PROXY")
        .output()
        .expect("run sluice")
}

#[test]
fn cli_login_whoami_and_connect() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;

    // Tokens live 40 s, so the CLI (which refreshes 30 s before expiry)
    // must use its refresh token within the test.
    let s = start_all(40, "");
    let home = tempfile::tempdir().unwrap();
    let config_dir = home.path().join("sluice");
    let mut login = Command::new(bin())
        .args(["login", "--issuer", s.idp.issuer()])
        .env("SLUICE_CONFIG_DIR", &config_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sluice login");
    // Read the code the person would type, and approve it as they would.
    let mut stderr = BufReader::new(login.stderr.take().unwrap());
    let mut shown = String::new();
    let code = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "login printed no code: {shown}"
        );
        shown.push_str(&line);
        if let Some(code) = line
            .trim()
            .strip_prefix("To sign in, open ")
            .and_then(|l| l.split("enter the code ").nth(1))
        {
            break code.trim().to_owned();
        }
    };
    assert!(
        shown.contains(&format!("{}/device", s.idp.issuer())),
        "{shown}"
    );
    s.idp.approve(&code, idp::ALICE);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = login.wait().unwrap();
    assert!(status.success(), "{shown}{rest}");
    assert!(
        rest.contains("Signed in to") && rest.contains("alice@example.com"),
        "{rest}"
    );

    // The cache is private.
    let cache = config_dir.join("tokens.json");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert_eq!(
        std::fs::metadata(&config_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let first = std::fs::read_to_string(&cache).unwrap();

    let out = cli(&config_dir, &["whoami"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("user:    alice@example.com (Alice Example)"),
        "{text}"
    );
    assert!(text.contains("groups:  dev"), "{text}");
    assert!(
        text.contains("expires: ") && text.contains("(in "),
        "{text}"
    );

    // --print: the settings for any tool; they work with plain psql.
    let proxy = format!("127.0.0.1:{}", s.sluice.pg_port());
    let out = cli(
        &config_dir,
        &["connect", TARGET, "--proxy", &proxy, "--print"],
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains(&format!(
            "postgresql://alice%40example.com@127.0.0.1:{}/{TARGET}?sslmode=require",
            s.sluice.pg_port()
        )),
        "{printed}"
    );
    let token = printed
        .lines()
        .find_map(|l| l.strip_prefix("export PGPASSWORD='"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("PGPASSWORD in the output")
        .to_owned();
    assert!(
        psql_token(
            &s.sluice,
            "alice@example.com",
            TARGET,
            "require",
            &token,
            "select 1"
        )
        .0
    );

    // Once the ID token is within 30 s of expiry, connect refreshes it with
    // the refresh token and runs psql with the new one.
    let exp = token_exp(&token);
    wait_until(
        Duration::from_secs(40),
        "the token to near its expiry",
        || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 30
                >= exp
        },
    );
    let out = cli(
        &config_dir,
        &[
            "connect", TARGET, "--proxy", &proxy, "--", "-X", "-A", "-t", "-c", PRINCIPAL,
        ],
    );
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.sluice.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "alice(at)example.com"
    );
    let second = std::fs::read_to_string(&cache).unwrap();
    assert_ne!(first, second, "the token was not refreshed");
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Not logged in: a clear message.
    let out = cli(&home.path().join("nobody"), &["whoami"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `sluice login --issuer URL`"));
}

#[test]
fn expired_tokens_are_refused() {
    // Tokens live 3 s and no skew is allowed: wait for expiry, never sleep blindly.
    let s = start_all_with(3, "skew_secs = 0\non_expiry = \"disconnect\"", "");
    let token = s.idp.id_token(idp::BOB);
    let exp = token_exp(&token);
    // While valid, it signs in.
    let (ok, _, err) = psql_token(&s.sluice, "bob", TARGET, "require", &token, "select 1");
    assert!(ok || err.contains("expired"), "{err}");
    wait_until(Duration::from_secs(15), "the token to expire", || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            >= exp
    });
    let (ok, _, err) = psql_token(&s.sluice, "bob", TARGET, "require", &token, "select 1");
    assert!(!ok);
    assert!(
        err.contains("the token has expired; run `sluice login` again"),
        "{err}"
    );
}

/// A token's `exp` (Unix seconds).
fn token_exp(token: &str) -> u64 {
    idp::jwt_claims(token)
        .split("\"exp\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|e| e.trim().parse().ok())
        .expect("exp in the token")
}

/// Sign in over the raw protocol with a token as the password (plain TCP:
/// needs `plaintext_tokens = true`); returns after ReadyForQuery.
fn raw_token_login(port: u16, token: &str) -> Raw {
    let mut raw = Raw::connect(port);
    raw.send(&startup(&[("user", "token-user"), ("database", TARGET)]));
    let (tag, body) = raw.recv().expect("an authentication request");
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &3i32.to_be_bytes()[..]),
        "AuthenticationCleartextPassword"
    );
    let mut password = token.as_bytes().to_vec();
    password.push(0);
    raw.send(&message(b'p', &password));
    loop {
        match raw.recv().expect("login answer") {
            (b'Z', _) => return raw,
            (b'E', body) => panic!("login failed: {:?}", parse_fields(&body)),
            _ => {}
        }
    }
}

/// Send a simple query; the ErrorResponse fields, or `None` when it ran.
fn raw_query(raw: &mut Raw, sql: &str) -> Option<Vec<(u8, String)>> {
    raw.send(&query(sql));
    let mut error = None;
    loop {
        match raw.recv() {
            Some((b'Z', _)) => return error,
            Some((b'E', body)) => error = Some(parse_fields(&body)),
            Some(_) => {}
            None => return Some(error.unwrap_or_default()),
        }
    }
}

#[test]
fn plaintext_tokens_is_a_development_switch() {
    let s = start_custom(300, "plaintext_tokens = true\n", "", "");
    let token = s.idp.id_token(idp::ALICE);
    let mut raw = raw_token_login(s.sluice.pg_port(), &token);
    assert_eq!(raw_query(&mut raw, "select 1"), None);
}

#[test]
fn a_session_ends_after_its_token_expires() {
    let s = start_custom(4, "plaintext_tokens = true\n", "skew_secs = 0", "");
    let token = s.idp.id_token(idp::BOB);
    let exp = token_exp(&token);
    let mut raw = raw_token_login(s.sluice.pg_port(), &token);
    assert_eq!(raw_query(&mut raw, "select 1"), None);
    wait_until(Duration::from_secs(15), "the token to expire", || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            >= exp
    });
    let err = raw_query(&mut raw, "select 1").expect("refused after expiry");
    assert!(field(&err, b'M').contains("sluice login"), "{err:?}");
    assert!(raw.closed(), "the session must end");

    // With on_expiry = "allow" the session goes on.
    let s = start_custom(
        4,
        "plaintext_tokens = true\n",
        "skew_secs = 0\non_expiry = \"allow\"",
        "",
    );
    let token = s.idp.id_token(idp::BOB);
    let exp = token_exp(&token);
    let mut raw = raw_token_login(s.sluice.pg_port(), &token);
    wait_until(Duration::from_secs(15), "the token to expire", || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            >= exp + 5
    });
    assert_eq!(raw_query(&mut raw, "select 1"), None);
}
