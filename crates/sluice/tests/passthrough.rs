//! Real clients through Sluice see exactly what a direct connection shows.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt, TryStreamExt};

#[tokio::test(flavor = "multi_thread")]
async fn simple_and_extended_queries_with_types() {
    let (_pg, sluice) = start();
    let c = connect(&sluice).await;

    let row = c
        .query_one(
            "select 42::int4, 'héllo'::text, 1.5::numeric::text, true, null::int, '\\x0102'::bytea, '{\"a\":1}'::jsonb::text, array[1,2,3]",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, &str>(1), "héllo");
    assert_eq!(row.get::<_, &str>(2), "1.5");
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, Option<i32>>(4), None);
    assert_eq!(row.get::<_, Vec<u8>>(5), vec![1u8, 2]);
    assert_eq!(row.get::<_, Vec<i32>>(7), vec![1, 2, 3]);

    // A named statement reused with different binary parameters.
    let stmt = c
        .prepare("select $1::int8 * 2, $2::text || '!'")
        .await
        .unwrap();
    for i in 0..20i64 {
        let r = c.query_one(&stmt, &[&i, &"x"]).await.unwrap();
        assert_eq!(r.get::<_, i64>(0), i * 2);
        assert_eq!(r.get::<_, &str>(1), "x!");
    }

    // Multi-statement simple query.
    let msgs = c.simple_query("select 1; select 2, 3").await.unwrap();
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, ["1", "2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_queries_arrive_in_order() {
    let (_pg, sluice) = start();
    let c = connect(&sluice).await;
    let stmt = c.prepare("select $1::int4 + 1").await.unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let futures = (0..200i32).map(|i| {
        let c = &c;
        let stmt = &stmt;
        async move { c.query_one(stmt, &[&i]).await.unwrap().get::<_, i32>(0) }
    });
    let got = futures_util::future::join_all(futures).await;
    assert_eq!(got, (1..=200).collect::<Vec<i32>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_errors_and_notices_keep_their_meaning() {
    let (_pg, sluice) = start();
    let mut c = connect(&sluice).await;
    c.batch_execute("create table t (id int primary key, v text)")
        .await
        .unwrap();

    let tx = c.transaction().await.unwrap();
    tx.execute("insert into t values (1, 'kept')", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute("insert into t values (2, 'dropped')", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let n: i64 = c
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    // Every field of an error comes through.
    let err = c
        .execute("insert into t values (1, 'dup')", &[])
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "23505");
    assert_eq!(db.constraint(), Some("t_pkey"));
    assert_eq!(db.table(), Some("t"));
    assert!(db.detail().unwrap().contains("(id)=(1)"));

    // A failed transaction block stays failed until rollback.
    c.batch_execute("begin").await.unwrap();
    let e = c.batch_execute("select 1/0").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "22012");
    let e = c.batch_execute("select 1").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "25P02");
    c.batch_execute("rollback").await.unwrap();
    let e = c.batch_execute("selec 1").await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42601");
    assert_eq!(
        c.query_one("select 7", &[]).await.unwrap().get::<_, i32>(0),
        7
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn notices_and_notifications_reach_the_client() {
    let (_pg, sluice) = start();
    let (c, mut conn) = tokio_postgres::connect(&conn_str(&sluice), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    c.batch_execute("do $$ begin raise notice 'hello %', 42; end $$")
        .await
        .unwrap();
    c.batch_execute("listen ch").await.unwrap();
    let other = connect(&sluice).await;
    other.batch_execute("notify ch, 'payload-1'").await.unwrap();

    let mut notice = None;
    let mut notification = None;
    while notice.is_none() || notification.is_none() {
        match tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await {
            Ok(Some(tokio_postgres::AsyncMessage::Notice(n))) => {
                notice = Some(n.message().to_owned())
            }
            Ok(Some(tokio_postgres::AsyncMessage::Notification(n))) => {
                notification = Some((n.channel().to_owned(), n.payload().to_owned()))
            }
            Ok(Some(_)) => {}
            _ => panic!("timed out: notice={notice:?} notification={notification:?}"),
        }
    }
    assert_eq!(notice.unwrap(), "hello 42");
    assert_eq!(
        notification.unwrap(),
        ("ch".to_owned(), "payload-1".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out() {
    let (_pg, sluice) = start();
    let c = connect(&sluice).await;
    c.batch_execute("create table c (id int, name text)")
        .await
        .unwrap();
    let sink = c.copy_in("copy c from stdin").await.unwrap();
    let mut data = String::new();
    for i in 0..50_000 {
        data.push_str(&format!("{i}\tname-{i}\n"));
    }
    let mut sink = Box::pin(sink);
    for chunk in data.as_bytes().chunks(7000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(sink.as_mut().finish().await.unwrap(), 50_000);

    let out: Vec<bytes::Bytes> = c
        .copy_out("copy (select * from c order by id) to stdout with (format csv)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let text: String = out.iter().map(|b| String::from_utf8_lossy(b)).collect();
    assert_eq!(text.lines().count(), 50_000);
    assert_eq!(text.lines().last(), Some("49999,name-49999"));

    // A failing COPY leaves the session usable.
    let sink = c.copy_in("copy c from stdin").await.unwrap();
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    let err = sink.as_mut().finish().await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "22P02");
    assert_eq!(
        c.query_one("select count(*) from c", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        50_000
    );
}

/// Wait until `select pg_sleep(30)` runs upstream (seen through `sluice`).
async fn sleep_is_running(sluice: &sluice_testkit::SluiceProcess) {
    let watcher = connect(sluice).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n: i64 = watcher
            .query_one(
                "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "query never started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_right_backend() {
    let (_pg, sluice) = start();
    let c = connect(&sluice).await;
    let bystander = connect(&sluice).await;
    let token = c.cancel_token();
    let slow = tokio::spawn(async move { c.batch_execute("select pg_sleep(30)").await });
    let other = tokio::spawn(async move {
        bystander
            .query_one("select pg_sleep(1), 'still here'", &[])
            .await
    });
    // Wait until the sleep is running upstream, then cancel it.
    sleep_is_running(&sluice).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), slow)
        .await
        .expect("cancel took effect")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014");
    // The other session's statement was not touched.
    let row = other.await.unwrap().unwrap();
    assert_eq!(row.get::<_, &str>(1), "still here");
}

/// Behind a load balancer a cancel request may reach another replica than
/// the one running the session: with `[listen] cancel_peers`, that replica
/// passes it on, and the query is cancelled.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_sent_to_another_replica_is_passed_on() {
    let (pg, a) = start();
    let config = |listen_extra: &str| {
        format!(
            "{}{}{}",
            listen(listen_extra),
            target(TARGET, &pg.addr(), sluice_testkit::SCRAM_USER, "disable"),
            user(USER, PASSWORD)
        )
    };
    let b = sluice_testkit::SluiceProcess::builder(bin(), &config(""))
        .env("TARGET_PW", sluice_testkit::SCRAM_PASSWORD)
        .start();
    a.rewrite_config(&config(&format!(
        "cancel_peers = [\"127.0.0.1:{}\"]",
        b.pg_port()
    )));
    a.signal("HUP");
    sluice_testkit::wait_until(std::time::Duration::from_secs(10), "reload", || {
        a.log().contains("configuration reloaded")
    });

    let c = connect(&b).await;
    let token = c.cancel_token();
    let slow = tokio::spawn(async move { c.batch_execute("select pg_sleep(30)").await });
    sleep_is_running(&b).await;
    // The cancel goes to replica A, which does not run the session.
    let to_a = tokio::net::TcpStream::connect(("127.0.0.1", a.pg_port()))
        .await
        .unwrap();
    token
        .cancel_query_raw(to_a, tokio_postgres::NoTls)
        .await
        .unwrap();
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), slow)
        .await
        .expect("the cancel was passed on and took effect")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_cancel_keys_cancel_nothing() {
    let (_pg, sluice) = start();
    let c = connect(&sluice).await;
    let slow = tokio::spawn(async move { c.query_one("select pg_sleep(1.5), 'done'", &[]).await });
    for pid in [0, 1, 12345, i32::MAX] {
        let mut raw = Raw::connect(sluice.pg_port());
        let mut p = 16i32.to_be_bytes().to_vec();
        p.extend_from_slice(&80877102i32.to_be_bytes());
        p.extend_from_slice(&pid.to_be_bytes());
        p.extend_from_slice(&7i32.to_be_bytes());
        raw.send(&p);
        assert!(raw.closed());
    }
    let row = slow.await.unwrap().unwrap();
    assert_eq!(row.get::<_, &str>(1), "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_session() {
    let (_pg, sluice) = start();
    let (ok, out, err) = psql(
        &sluice,
        "sslmode=require",
        &[
            "-c",
            "create table p (id int, sku text)",
            "-c",
            "insert into p select g, 'item-' || g from generate_series(1, 1000) g",
            "-c",
            "\\copy p to '/dev/null'",
            "-c",
            "select count(*), max(sku) from p",
            "-c",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("1000 | item-999"), "{out}");
    let (ok, _, err) = psql(&sluice, "", &["-c", "select 1/0"]);
    assert!(!ok);
    assert!(err.contains("division by zero"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_simple_extended_and_prepared() {
    let (_pg, sluice) = start();
    let env = |cmd: &mut std::process::Command| {
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", sluice.pg_port().to_string())
            .env("PGUSER", USER)
            .env("PGPASSWORD", PASSWORD)
            .env("PGDATABASE", TARGET)
            .env("PGSSLMODE", "disable");
    };
    let mut init = std::process::Command::new("pgbench");
    init.args(["-i", "-s", "1", "-q"]);
    env(&mut init);
    let out = init.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for mode in ["simple", "extended", "prepared"] {
        let mut run = std::process::Command::new("pgbench");
        run.args(["-c", "4", "-j", "2", "-t", "200", "-M", mode]);
        env(&mut run);
        let out = run.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("number of transactions actually processed: 800/800"),
            "{stdout}"
        );
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_results_stream_with_flat_memory() {
    let (_pg, sluice) = start();
    let c = connect(&sluice).await;
    // A 100 MB single value, twice.
    for _ in 0..2 {
        let n: i32 = c
            .query_one(
                "select length(v) from (select repeat('x', 100000000) as v) s",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 100_000_000);
        let v: String = c
            .query_one("select repeat('y', 100000000)", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v.len(), 100_000_000);
    }
    let after_values = peak_rss_kib(sluice.pid()) / 1024;
    // A million rows of ~100 bytes, by SELECT and by COPY.
    let rows = c
        .query_raw("select g, md5(g::text) || md5(g::text) || md5(g::text) from generate_series(1, 1000000) g", std::iter::empty::<i32>())
        .await
        .unwrap();
    let mut rows = Box::pin(rows);
    let mut count = 0u64;
    while let Some(r) = rows.next().await {
        r.unwrap();
        count += 1;
    }
    assert_eq!(count, 1_000_000);
    let after_rows = peak_rss_kib(sluice.pid()) / 1024;
    let mut out = Box::pin(
        c.copy_out("copy (select g, repeat('z', 90) from generate_series(1, 1000000) g) to stdout")
            .await
            .unwrap(),
    );
    let mut bytes = 0usize;
    while let Some(chunk) = out.next().await {
        bytes += chunk.unwrap().len();
    }
    assert!(bytes > 90_000_000);
    let peak_mib = peak_rss_kib(sluice.pid()) / 1024;
    assert!(
        peak_mib < 64,
        "Sluice peaked at {peak_mib} MiB while streaming (after the 100 MB values: {after_values} MiB, after 1M rows: {after_rows} MiB)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gigabyte_streams_through_with_flat_memory() {
    let (_pg, sluice) = start();
    let c = connect(&sluice).await;
    // 1,000,000 rows of 1 KB: one gigabyte out of the server, by COPY.
    let mut out = Box::pin(
        c.copy_out("copy (select repeat('x', 1000) from generate_series(1, 1000000)) to stdout")
            .await
            .unwrap(),
    );
    let mut bytes = 0u64;
    while let Some(chunk) = out.next().await {
        bytes += chunk.unwrap().len() as u64;
    }
    assert_eq!(bytes, 1_001_000_000);
    let peak_mib = peak_rss_kib(sluice.pid()) / 1024;
    assert!(
        peak_mib < 64,
        "Sluice peaked at {peak_mib} MiB while streaming 1 GB"
    );
}
