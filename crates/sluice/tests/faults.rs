//! Bad input and failing upstreams: each gets a clear error for that
//! session, and Sluice keeps serving everyone else.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Sluice still serves a normal session.
async fn still_serving(sluice: &SluiceProcess) {
    let c = connect(sluice).await;
    assert_eq!(
        c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_before_startup() {
    let (_pg, sluice) = start();
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0, 0, 0, 2, 1, 2, 3, 4],
        vec![0xff; 64],
        startup_version(2, 0, &[("user", "alice")]),
    ] {
        let mut raw = Raw::connect(sluice.pg_port());
        raw.send(&garbage);
        let e = raw.expect_error();
        assert_eq!(field(&e, b'S'), "FATAL");
        assert!(
            ["08P01", "0A000"].contains(&field(&e, b'C').as_str()),
            "{e:?}"
        );
        assert!(raw.closed());
    }
    still_serving(&sluice).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_after_login() {
    let (_pg, sluice) = start();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("length below four", vec![b'Q', 0, 0, 0, 2], "08P01"),
        (
            "negative length",
            vec![b'Q', 0xff, 0xff, 0xff, 0xf0],
            "08P01",
        ),
        ("unknown message type", message(b'!', b"x"), "08P01"),
        (
            "a startup-only message",
            message(b'p', b"password\0"),
            "08P01",
        ),
    ];
    for (what, bytes, code) in cases {
        let mut raw = Raw::connect(sluice.pg_port());
        raw.login(USER, PASSWORD, TARGET);
        raw.send(&bytes);
        let e = raw.expect_error();
        assert_eq!(field(&e, b'C'), code, "{what}: {e:?}");
        assert!(
            field(&e, b'M').starts_with("sluice: invalid"),
            "{what}: {e:?}"
        );
        assert!(raw.closed(), "{what}");
    }
    // A message cut short, then the client vanishes.
    let mut raw = Raw::connect(sluice.pg_port());
    raw.login(USER, PASSWORD, TARGET);
    let q = query("select 1");
    raw.send(&q[..q.len() - 3]);
    drop(raw);
    still_serving(&sluice).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_is_refused() {
    let (_pg, sluice) = start_with("", "[limits]\nmax_message_size = 65536\n");
    let mut raw = Raw::connect(sluice.pg_port());
    raw.login(USER, PASSWORD, TARGET);
    // Announce 10 MB; Sluice refuses on the header, before reading the body.
    let mut m = vec![b'Q'];
    m.extend_from_slice(&(10_000_000i32).to_be_bytes());
    m.extend_from_slice(b"select ");
    raw.send(&m);
    let e = raw.expect_error();
    assert_eq!(field(&e, b'C'), "54000", "{e:?}");
    assert!(field(&e, b'M').contains("limits.max_message_size"), "{e:?}");
    assert!(raw.closed());
    // Under the limit still works; a large result from the server is not limited.
    let c = connect(&sluice).await;
    let big: String = c
        .query_one("select repeat('x', 1000000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 1_000_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_slow_clients_time_out() {
    let (_pg, sluice) = start_with("", "[limits]\nstartup_timeout_secs = 1\n");
    let started = Instant::now();
    let mut silent = Raw::connect(sluice.pg_port());
    // Slow loris: a startup packet dribbled one byte at a time.
    let mut slow = Raw::connect(sluice.pg_port());
    let packet = startup(&[("user", USER), ("database", TARGET)]);
    let dribble = std::thread::spawn(move || {
        for b in packet {
            if slow.s.write_all_checked(&[b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    // Meanwhile a normal client is served.
    still_serving(&sluice).await;
    assert!(silent.closed(), "silent client was not closed");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        dribble.join().unwrap(),
        "slow-loris client was never cut off"
    );
}

trait WriteChecked {
    fn write_all_checked(&mut self, b: &[u8]) -> std::io::Result<()>;
}
impl WriteChecked for std::net::TcpStream {
    fn write_all_checked(&mut self, b: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.write_all(b)?;
        self.flush()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_a_clear_fatal() {
    let dead = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let config = format!(
        "{}{}{}",
        listen(""),
        target(TARGET, &dead, "nobody", "disable"),
        user(USER, PASSWORD)
    );
    let sluice = SluiceProcess::builder(bin(), &config)
        .env("TARGET_PW", "x")
        .start();
    let err = tokio_postgres::connect(&conn_str(&sluice), tokio_postgres::NoTls)
        .await
        .err()
        .expect("connection must fail");
    let db = err
        .as_db_error()
        .expect("an ErrorResponse, not a dropped socket");
    assert_eq!(db.code().code(), "08001");
    assert_eq!(db.severity(), "FATAL");
    assert!(
        db.message().contains("app-dev") && db.message().contains("unreachable"),
        "{}",
        db.message()
    );
    // The internal address is in Sluice's log, not in the client's error.
    assert!(!db.message().contains(&dead));
    assert!(sluice.log().contains(&dead));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_dying_mid_query_ends_only_that_session() {
    let (mut pg, sluice) = start();
    let c = connect(&sluice).await;
    let running = tokio::spawn(async move { c.batch_execute("select pg_sleep(60)").await });
    let watcher = connect(&sluice).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher
        .query_one(
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg.kill();
    let err = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    if let Some(db) = err.as_db_error() {
        // The dying backend may say so itself (57P01) before Sluice notices the socket close (08006).
        assert!(["08006", "57P01"].contains(&db.code().code()), "{db:?}");
    } else {
        assert!(
            err.is_closed() || err.to_string().contains("closed"),
            "{err}"
        );
    }
    // Sluice itself is fine: health answers, and once the database is back
    // new sessions work.
    assert_eq!(sluice.http_get("/healthz").0, 200);
    pg.restart();
    still_serving(&sluice).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_killed_without_a_word_gives_08006() {
    let (_pg, sluice) = start();
    let mut raw = Raw::connect(sluice.pg_port());
    raw.login(USER, PASSWORD, TARGET);
    raw.send(&query("select pg_backend_pid()"));
    let pid = loop {
        match raw.recv() {
            Some((b'D', body)) => break String::from_utf8_lossy(&body[6..]).into_owned(),
            Some(_) => continue,
            None => panic!("closed"),
        }
    };
    // SIGKILL: the backend dies without sending anything.
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    let e = raw.expect_error();
    assert_eq!(field(&e, b'S'), "FATAL");
    assert_eq!(field(&e, b'C'), "08006", "{e:?}");
    assert!(field(&e, b'M').contains("lost the connection"), "{e:?}");
    assert!(raw.closed());
}
