//! Sluice logs in upstream with whatever the server asks for, over TLS when
//! configured, with SCRAM channel binding.

mod common;

use common::*;
use sluice_testkit::{PgOptions, PgServer};

async fn current_user_and_ssl(sluice: &SluiceProcess) -> (String, bool) {
    let c = connect(sluice).await;
    let row = c
        .query_one(
            "select current_user::text, coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn sluice_for(
    pg: &PgServer,
    role: &str,
    password: &str,
    tls: &str,
    ca: Option<&str>,
) -> SluiceProcess {
    let mut t = target(TARGET, &pg.addr(), role, tls);
    if let Some(ca) = ca {
        t.push_str(&format!("ca_file = \"{ca}\"\n"));
    }
    let config = format!("{}{t}{}", listen(""), user(USER, PASSWORD));
    SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", password)
        .start()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_password_method() {
    let pg = PgServer::start();
    for (role, pw) in [
        (sluice_testkit::SCRAM_USER, sluice_testkit::SCRAM_PASSWORD),
        (sluice_testkit::MD5_USER, sluice_testkit::MD5_PASSWORD),
        (sluice_testkit::CLEAR_USER, sluice_testkit::CLEAR_PASSWORD),
        (sluice_testkit::TRUST_USER, "unused"),
    ] {
        let sluice = sluice_for(&pg, role, pw, "disable", None);
        let (who, ssl) = current_user_and_ssl(&sluice).await;
        assert_eq!(who, role);
        assert!(!ssl);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_upstream_password_is_08004_without_details() {
    let pg = PgServer::start();
    let sluice = sluice_for(&pg, sluice_testkit::SCRAM_USER, "wrong", "disable", None);
    let err = tokio_postgres::connect(&conn_str(&sluice), tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "08004");
    assert!(
        !db.message().contains(sluice_testkit::SCRAM_USER),
        "{}",
        db.message()
    );
    assert!(sluice.log().contains("password authentication failed"));
    assert!(
        !sluice.log().contains("wrong"),
        "the password must not be logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verify_full_with_scram_channel_binding() {
    let pg = PgServer::start_with(PgOptions { tls: true });
    let ca = pg.ca_file().unwrap().display().to_string();
    let sluice = sluice_for(
        &pg,
        sluice_testkit::SCRAM_USER,
        sluice_testkit::SCRAM_PASSWORD,
        "verify-full",
        Some(&ca),
    );
    let (who, ssl) = current_user_and_ssl(&sluice).await;
    assert_eq!(who, sluice_testkit::SCRAM_USER);
    assert!(ssl, "the upstream connection must be TLS");
    // Over TLS the server offers SCRAM-SHA-256-PLUS and Sluice binds to the
    // server's certificate; md5 and cleartext work over TLS as well.
    for role in [sluice_testkit::MD5_USER, sluice_testkit::CLEAR_USER] {
        let pw = if role == sluice_testkit::MD5_USER {
            sluice_testkit::MD5_PASSWORD
        } else {
            sluice_testkit::CLEAR_PASSWORD
        };
        let s = sluice_for(&pg, role, pw, "require", None);
        let (who, ssl) = current_user_and_ssl(&s).await;
        assert_eq!(who, role);
        assert!(ssl);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_refuses_an_unknown_ca() {
    let pg = PgServer::start_with(PgOptions { tls: true });
    let other = sluice_testkit::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let files = other.write_server_files(dir.path());
    let sluice = sluice_for(
        &pg,
        sluice_testkit::SCRAM_USER,
        sluice_testkit::SCRAM_PASSWORD,
        "verify-full",
        Some(&files.ca.display().to_string()),
    );
    let err = tokio_postgres::connect(&conn_str(&sluice), tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(err.as_db_error().unwrap().code().code(), "08006");
    assert!(sluice.log().contains("TLS"), "{}", sluice.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn require_refuses_a_server_without_tls() {
    let pg = PgServer::start();
    let sluice = sluice_for(
        &pg,
        sluice_testkit::SCRAM_USER,
        sluice_testkit::SCRAM_PASSWORD,
        "require",
        None,
    );
    let err = tokio_postgres::connect(&conn_str(&sluice), tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(err.as_db_error().unwrap().code().code(), "08006");
    // prefer falls back to plaintext.
    let sluice = sluice_for(
        &pg,
        sluice_testkit::SCRAM_USER,
        sluice_testkit::SCRAM_PASSWORD,
        "prefer",
        None,
    );
    assert!(!current_user_and_ssl(&sluice).await.1);
}
