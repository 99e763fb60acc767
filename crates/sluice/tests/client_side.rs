//! The client side of startup: TLS, plaintext policy, authentication,
//! protocol negotiation and the startup parameters a client may send.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_the_self_signed_certificate_and_channel_binding() {
    let (_pg, sluice) = start();
    // psql with channel_binding=require needs SCRAM-SHA-256-PLUS over TLS.
    let (ok, out, err) = psql(
        &sluice,
        "sslmode=require channel_binding=require",
        &["-A", "-t", "-c", "select 'over tls'"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "over tls");
    assert!(sluice.data_dir().join("tls/server.crt").exists());
    // The certificate verifies against itself as a CA.
    let cert = sluice.data_dir().join("tls/server.crt");
    let (ok, _, err) = psql(
        &sluice,
        &format!(
            "sslmode=verify-full sslrootcert={} host=localhost",
            cert.display()
        ),
        &["-c", "select 1"],
    );
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_can_be_denied() {
    let (_pg, sluice) = start_with("plaintext = \"deny\"", "");
    let (ok, _, err) = psql(&sluice, "sslmode=disable", &["-c", "select 1"]);
    assert!(!ok);
    assert!(
        err.contains("sluice: this connection must use TLS"),
        "{err}"
    );
    assert!(err.contains("sslmode=require"), "{err}");
    assert!(psql(&sluice, "sslmode=require", &["-c", "select 1"]).0);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_user_look_the_same() {
    let (_pg, sluice) = start();
    let try_login = |user: &str, pw: &str| {
        let out = std::process::Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user={user} dbname={TARGET} sslmode=disable",
                sluice.pg_port()
            ))
            .args(["-X", "-c", "select 1"])
            .env("PGPASSWORD", pw)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).replace(user, "USER")
    };
    let wrong = try_login(USER, "nope");
    let unknown = try_login("mallory", "nope");
    assert!(
        wrong.contains("password authentication failed for user \"USER\""),
        "{wrong}"
    );
    assert_eq!(
        wrong.replace(&sluice.pg_port().to_string(), ""),
        unknown.replace(&sluice.pg_port().to_string(), "")
    );
    let (_, body) = sluice.http_get("/metrics");
    assert!(body.contains("sluice_auth_failures_total 2"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_target_is_refused_without_listing_targets() {
    let (_pg, sluice) = start();
    let out = std::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={USER} dbname=nope sslmode=disable",
            sluice.pg_port()
        ))
        .args(["-X", "-c", "select 1"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database \"nope\" is not a target"), "{err}");
    assert!(!err.contains(TARGET), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gssenc_then_ssl_then_startup() {
    let (_pg, sluice) = start();
    let mut raw = Raw::connect(sluice.pg_port());
    let mut gss = 8i32.to_be_bytes().to_vec();
    gss.extend_from_slice(&80877104i32.to_be_bytes());
    raw.send(&gss);
    assert_eq!(raw.recv_byte(), b'N');
    let mut ssl = 8i32.to_be_bytes().to_vec();
    ssl.extend_from_slice(&80877103i32.to_be_bytes());
    raw.send(&ssl);
    assert_eq!(raw.recv_byte(), b'S');
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_protocol_is_negotiated_down() {
    let (_pg, sluice) = start();
    let mut raw = Raw::connect(sluice.pg_port());
    raw.send(&startup_version(
        3,
        2,
        &[
            ("user", USER),
            ("database", TARGET),
            ("_pq_.test_option", "1"),
        ],
    ));
    let (tag, body) = raw.recv().unwrap();
    assert_eq!(tag, b'v');
    assert_eq!(&body[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&body[8..], b"_pq_.test_option\0");
    // Then authentication goes on as usual.
    assert_eq!(raw.recv().unwrap().0, b'R');
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_and_identity_changing_parameters_are_refused() {
    let (_pg, sluice) = start();
    for (k, v, code) in [
        ("replication", "database", "0A000"),
        ("options", "-c role=postgres", "42501"),
        ("options", "-c session_authorization=postgres", "42501"),
        ("client_encoding", "SJIS", "22023"),
        ("sluice.user", "someone-else", "42501"),
    ] {
        let mut raw = Raw::connect(sluice.pg_port());
        raw.send(&startup(&[("user", USER), ("database", TARGET), (k, v)]));
        // Refused after authentication or before it (replication): either way a FATAL.
        let e = if k == "replication" {
            raw.expect_error()
        } else {
            raw_login_then_error(&mut raw)
        };
        assert_eq!(field(&e, b'C'), code, "{k}={v}: {e:?}");
        assert!(field(&e, b'M').starts_with("sluice:"), "{e:?}");
    }
}

/// Finish SCRAM on a connection whose startup packet was already sent, and
/// return the error that follows.
fn raw_login_then_error(raw: &mut Raw) -> Vec<(u8, String)> {
    let mut scram = None;
    loop {
        let (tag, body) = raw.recv().expect("closed without an error");
        match tag {
            b'R' => match i32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
                10 => {
                    let s = postgres_protocol::authentication::sasl::ScramSha256::new(
                        PASSWORD.as_bytes(),
                        postgres_protocol::authentication::sasl::ChannelBinding::unsupported(),
                    );
                    let mut m = b"SCRAM-SHA-256\0".to_vec();
                    m.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                    m.extend_from_slice(s.message());
                    raw.send(&message(b'p', &m));
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().unwrap();
                    s.update(&body[4..]).unwrap();
                    let m = s.message().to_vec();
                    raw.send(&message(b'p', &m));
                }
                _ => {}
            },
            b'E' => return parse_fields(&body),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_to_an_unsafe_encoding_is_refused_or_ends_the_session() {
    let (_pg, sluice) = start();
    let c = connect(&sluice).await;
    // Said plainly, policy refuses it and the session goes on.
    let e = c
        .batch_execute("set client_encoding = 'SJIS'")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .contains("no-encoding-change"));
    assert_eq!(
        c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    // Hidden behind a computed name (allowed, flagged, outside production),
    // the server's ParameterStatus gives it away and the session is closed
    // before another statement is read in the wrong encoding.
    let result = c
        .batch_execute("select set_config('client_' || 'encoding', 'SJIS', false)")
        .await;
    assert!(result.is_err() || c.query_one("select 1", &[]).await.is_err());
    assert!(c.is_closed() || c.query_one("select 1", &[]).await.is_err());
    sluice_testkit::wait_until(
        std::time::Duration::from_secs(5),
        "log names the reason",
        || sluice.log().contains("client_encoding was changed"),
    );
}

/// Direct TLS as PostgreSQL 17 clients do it with `sslnegotiation=direct`.
async fn direct_tls(
    port: u16,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use std::sync::Arc;
    let roots = {
        // Trust Sluice's self-signed certificate, as `sslrootcert` would.
        let mut r = rustls::RootCertStore::empty();
        r.add_parsable_certificates(SELF_SIGNED.with(|c| c.borrow().clone()));
        r
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("direct TLS handshake")
}

thread_local! {
    static SELF_SIGNED: std::cell::RefCell<Vec<rustls_pki_types::CertificateDer<'static>>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[tokio::test(flavor = "current_thread")]
async fn direct_tls_needs_alpn_postgresql() {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_pg, sluice) = start();
    let certs: Vec<_> =
        rustls_pki_types::CertificateDer::pem_file_iter(sluice.data_dir().join("tls/server.crt"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    SELF_SIGNED.with(|c| *c.borrow_mut() = certs);

    let mut tls = direct_tls(sluice.pg_port(), &[b"postgresql"]).await;
    tls.write_all(&startup(&[("user", USER), ("database", TARGET)]))
        .await
        .unwrap();
    let mut first = [0u8; 9];
    tls.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], b'R', "authentication request over direct TLS");
    assert_eq!(&first[5..9], &10i32.to_be_bytes(), "SASL");

    // Without ALPN the connection is refused.
    let mut tls = direct_tls(sluice.pg_port(), &[]).await;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    assert_eq!(out.first(), Some(&b'E'), "{out:?}");
    assert!(String::from_utf8_lossy(&out).contains("ALPN"));
}

/// A version 2 PROXY protocol header: `LOCAL`, or a TCP over IPv4 client.
fn proxy_v2(client: Option<([u8; 4], u16)>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match client {
        None => h.extend_from_slice(&[0x20, 0x00, 0, 0]),
        Some((ip, port)) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&ip);
            h.extend_from_slice(&[127, 0, 0, 1]);
            h.extend_from_slice(&port.to_be_bytes());
            h.extend_from_slice(&7432u16.to_be_bytes());
        }
    }
    h
}

/// Behind a TCP load balancer speaking the PROXY protocol (here "at"
/// 127.0.0.2): the client named in the header is the one Sluice judges and
/// records; the balancer must send a header; nobody else can claim an
/// address.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_names_the_client_behind_a_load_balancer() {
    let (_pg, sluice) = start_with("proxy_protocol_from = [\"127.0.0.2/32\"]", "");
    let balancer = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let port = sluice.pg_port();
    let sessions = || -> Vec<String> {
        let o = std::process::Command::new(bin())
            .args([
                "audit",
                "search",
                "--kind",
                "session.start",
                "--format",
                "json",
                "--data-dir",
            ])
            .arg(sluice.data_dir())
            .output()
            .expect("run sluice audit search");
        let page: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        page["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r["event"]["source"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };

    // Version 1, a client on a loopback address: plaintext is allowed for
    // it, and the trail names it, not the balancer.
    let mut raw = Raw::connect_from(balancer, port);
    raw.send(b"PROXY TCP4 127.0.0.9 127.0.0.1 40001 7432\r\n");
    raw.login(USER, PASSWORD, TARGET);
    drop(raw);
    // Version 2, a remote client: the loopback-only plaintext rule refuses it.
    let mut raw = Raw::connect_from(balancer, port);
    raw.send(&proxy_v2(Some(([203, 0, 113, 7], 51234))));
    raw.send(&startup(&[("user", USER), ("database", TARGET)]));
    let e = raw.expect_error();
    assert!(field(&e, b'M').contains("must use TLS"), "{e:?}");
    // The balancer's own connection (a health check) keeps its address.
    let mut raw = Raw::connect_from(balancer, port);
    raw.send(&proxy_v2(None));
    raw.login(USER, PASSWORD, TARGET);
    drop(raw);
    // A listed balancer that sends no header gets nowhere.
    let mut raw = Raw::connect_from(balancer, port);
    raw.send(&startup(&[("user", USER), ("database", TARGET)]));
    assert!(raw.closed());
    // From an address not listed, a header is not believed: it is not a
    // startup packet, and the connection is refused.
    let mut raw = Raw::connect(port);
    raw.send(b"PROXY TCP4 127.0.0.8 127.0.0.1 40002 7432\r\n");
    raw.send(&startup(&[("user", USER), ("database", TARGET)]));
    assert!(raw.closed());

    sluice_testkit::wait_until(Duration::from_secs(10), "sessions in the trail", || {
        sessions().len() == 2
    });
    let sources = sessions();
    assert!(
        sources.contains(&"127.0.0.9:40001".to_owned()),
        "{sources:?}"
    );
    assert!(
        sources.iter().any(|s| s.starts_with("127.0.0.2:")),
        "{sources:?}"
    );
}
