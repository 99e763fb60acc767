//! Sensitive values are masked in flight with zero configuration: by column
//! name (through aliases, via the catalog), by value detectors (computed
//! columns, free text, JSON), in text and binary results, in every protocol
//! path and in COPY, with deterministic tokens that keep joins working.

mod common;

use common::*;
use futures_util::StreamExt;
use tokio_postgres::SimpleQueryMessage;

const CARD: &str = "4111 1111 1111 1111";
const SSN: &str = "123-45-6789";
const EMAIL: &str = "alice.smith@example.com";

/// PostgreSQL with a customers table full of PII, Sluice in front.
fn start_pii(extra: &str) -> (PgServer, SluiceProcess) {
    let (pg, sluice) = start_with("", extra);
    pg.psql(
        "app",
        &format!(
            "create table customers (
               id int primary key, full_name text, email text, phone text,
               card_number text, ssn text, notes text, profile jsonb, plan text);
             insert into customers values
               (1, 'Alice Smith', '{EMAIL}', '+1 415 555 2671', '{CARD}', '{SSN}',
                'call alice.smith@example.com about order 42', '{{\"contact\": \"{EMAIL}\", \"vip\": true}}', 'gold'),
               (2, 'Bob Jones', 'bob@example.org', '+44 20 7946 0958', '5500 0000 0000 0004', '078-05-1120',
                'no contact details', '{{\"vip\": false}}', 'basic'),
               (3, 'Alice Smith', '{EMAIL}', null, null, null, null, null, 'gold');
             alter table customers owner to {};",
            sluice_testkit::SCRAM_USER
        ),
    );
    (pg, sluice)
}

fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pii_is_masked_with_zero_configuration() {
    let (_pg, sluice) = start_pii("");
    let c = connect(&sluice).await;
    let rows = simple_rows(
        &c.simple_query("select id, full_name, email, phone, card_number, ssn, notes, plan from customers order by id")
            .await
            .unwrap(),
    );
    let alice = &rows[0];
    assert_eq!(alice[0].as_deref(), Some("1"), "ids pass untouched");
    assert_eq!(alice[7].as_deref(), Some("gold"), "ordinary text passes");
    for (i, original) in [
        (1, "Alice Smith"),
        (2, EMAIL),
        (3, "+1 415 555 2671"),
        (4, CARD),
        (5, SSN),
    ] {
        let v = alice[i].clone().unwrap_or_default();
        assert_ne!(v, original, "column {i} is masked");
        assert!(!v.contains("alice") && !v.contains("Smith"), "{v}");
    }
    assert!(
        alice[4].as_deref().unwrap().ends_with("1111"),
        "card keeps its last four: {:?}",
        alice[4]
    );
    assert!(
        alice[5].as_deref().unwrap().ends_with("6789"),
        "SSN keeps its last four: {:?}",
        alice[5]
    );
    let notes = alice[6].as_deref().unwrap();
    assert!(
        notes.starts_with("call ") && notes.ends_with(" about order 42"),
        "{notes}"
    );
    assert!(
        !notes.contains("alice.smith"),
        "an address inside free text is masked: {notes}"
    );
    assert_eq!(rows[1][6].as_deref(), Some("no contact details"));
    // NULL stays NULL.
    assert_eq!(rows[2][3], None);

    // Deterministic tokens: equal values mask equally, so grouping still works.
    assert_eq!(rows[0][2], rows[2][2]);
    assert_eq!(rows[0][1], rows[2][1]);
    let grouped = simple_rows(
        &c.simple_query("select email, count(*) from customers group by email order by 2 desc")
            .await
            .unwrap(),
    );
    assert_eq!(grouped[0][1].as_deref(), Some("2"));
    assert_eq!(grouped[0][0], rows[0][2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn aliases_computed_columns_json_and_binary_results_are_masked() {
    let (_pg, sluice) = start_pii("");
    let c = connect(&sluice).await;
    // An alias does not hide where a column comes from.
    let r = c
        .query_one(
            "select ssn as x, card_number as y from customers where id = 1",
            &[],
        )
        .await
        .unwrap();
    let (x, y): (String, String) = (r.get(0), r.get(1));
    assert_ne!(x, SSN);
    assert_ne!(y, CARD);
    // Computed expressions have no origin: value detectors find them.
    let r = c
        .query_one(
            "select email || '', lower(email), concat('mail: ', email), upper(full_name) from customers where id = 1",
            &[],
        )
        .await
        .unwrap();
    for i in 0..3 {
        let v: String = r.get(i);
        assert!(!v.to_lowercase().contains("alice.smith@"), "{i}: {v}");
    }
    // JSON stays valid JSON, with the address masked inside.
    let rows = simple_rows(
        &c.simple_query("select profile, profile::text from customers where id = 1")
            .await
            .unwrap(),
    );
    for v in &rows[0] {
        let profile: serde_json::Value = serde_json::from_str(v.as_deref().unwrap()).unwrap();
        assert_eq!(profile["vip"], true);
        assert!(profile["contact"].is_string());
        assert_ne!(profile["contact"], EMAIL);
    }
    // Prepared statements, binary format, several executions.
    let st = c
        .prepare("select email, card_number from customers where id = $1")
        .await
        .unwrap();
    for _ in 0..3 {
        let r = c.query_one(&st, &[&1i32]).await.unwrap();
        assert_ne!(r.get::<_, String>(0), EMAIL);
        assert!(r.get::<_, String>(1).ends_with("1111"));
    }
    let (_, metrics) = sluice.http_get("/metrics");
    assert!(metrics.contains("sluice_sessions_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn execute_without_describe_and_psql_are_masked() {
    let (_pg, sluice) = start_pii("");
    // Parse + Describe once, then Bind/Execute/Sync with no Describe (as
    // JDBC does for a statement it has prepared): still masked.
    let mut raw = Raw::connect(sluice.pg_port());
    raw.login(USER, PASSWORD, TARGET);
    let mut parse = b"s1\0select ssn from customers where id = 1\0".to_vec();
    parse.extend_from_slice(&0i16.to_be_bytes());
    raw.send(&message(b'P', &parse));
    raw.send(&message(b'D', b"Ss1\0"));
    raw.send(&message(b'S', b""));
    while raw.recv().expect("answer").0 != b'Z' {}
    let mut bind = b"\0s1\0".to_vec();
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    raw.send(&message(b'B', &bind));
    raw.send(&message(b'E', b"\0\0\0\0\0"));
    raw.send(&message(b'S', b""));
    let mut seen = Vec::new();
    loop {
        let (tag, body) = raw.recv().expect("answer");
        seen.push(tag);
        if tag == b'D' {
            let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
            let v = String::from_utf8_lossy(&body[6..6 + len]).into_owned();
            assert_ne!(v, SSN);
            assert!(v.ends_with("6789"), "{v}");
        }
        if tag == b'Z' {
            break;
        }
    }
    // The client sees exactly the answers to what it sent.
    assert_eq!(seen, vec![b'2', b'D', b'C', b'Z']);

    let (ok, out, err) = psql(
        &sluice,
        "sslmode=require",
        &[
            "-A",
            "-t",
            "-c",
            "select email, card_number from customers where id = 1",
        ],
    );
    assert!(ok, "{err}");
    assert!(!out.contains(EMAIL) && !out.contains(CARD), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_to_stdout_is_masked_in_text_csv_and_binary() {
    let (_pg, sluice) = start_pii("");
    let c = connect(&sluice).await;
    for sql in [
        "copy customers (id, email, ssn, notes) to stdout",
        "copy (select id, email, ssn, notes from customers order by id) to stdout with (format csv, header)",
        "copy customers to stdout with (format binary)",
    ] {
        let mut out = Box::pin(c.copy_out(sql).await.unwrap());
        let mut data = Vec::new();
        while let Some(chunk) = out.next().await {
            data.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8_lossy(&data);
        assert!(!text.contains(EMAIL), "{sql}: {text}");
        assert!(!text.contains(SSN), "{sql}: {text}");
        assert!(!text.contains("bob@example.org"), "{sql}: {text}");
        if sql.contains("header") {
            assert!(text.starts_with("id,email,ssn,notes\n"), "{text}");
            assert_eq!(text.lines().count(), 4);
        }
        if sql.contains("binary") {
            assert!(data.starts_with(b"PGCOPY\n\xff\r\n\0"));
        }
    }
    // psql's \copy, CSV.
    let (ok, out, err) = psql(
        &sluice,
        "",
        &[
            "-c",
            "\\copy customers (email, card_number) to stdout with csv",
        ],
    );
    assert!(ok, "{err}");
    assert!(!out.contains(EMAIL) && !out.contains(CARD), "{out}");
    assert_eq!(out.lines().count(), 3);
    // Simple-protocol COPY (as psql, psycopg, JDBC's CopyManager send it).
    let rows = c.simple_query("copy customers (email) to stdout").await;
    // tokio-postgres' simple_query does not read COPY data; what matters is
    // that the connection is still in step afterwards.
    drop(rows);
    let r = c.query_one("select 1::int4", &[]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_and_policy_lift_or_change_masking() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("unmask.cedar"),
        r#"@id("dev-group-sees-development-unmasked")
permit (principal in Sluice::Group::"dev", action == Sluice::Action::"unmask", resource)
when { resource.environment == "development" };"#,
    )
    .unwrap();
    // The test user is in group "dev": it sees the development target unmasked.
    let (_pg, sluice) = start_pii(&format!("[policy]\ndir = \"{}\"\n", dir.path().display()));
    let c = connect(&sluice).await;
    let r = c
        .query_one("select email from customers where id = 1", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), EMAIL);
    drop(sluice);

    // Per-column rules: notes pass, plan is redacted, phones get a token.
    let (_pg, sluice) = start_pii(
        "[masking]\ncolumns = { \"public.customers.notes\" = \"none\", \"customers.plan\" = \"redact\" }\n",
    );
    let c = connect(&sluice).await;
    let r = c
        .query_one("select notes, plan, email from customers where id = 1", &[])
        .await
        .unwrap();
    assert_eq!(
        r.get::<_, String>(0),
        "call alice.smith@example.com about order 42"
    );
    assert_ne!(r.get::<_, String>(1), "gold");
    assert_ne!(r.get::<_, String>(2), EMAIL);
    drop(sluice);

    // Masking off.
    let (_pg, sluice) = start_pii("[masking]\nenabled = false\n");
    let c = connect(&sluice).await;
    let r = c
        .query_one("select ssn from customers where id = 1", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), SSN);
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_unmasks_one_column_and_keeps_the_rest_masked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("unmask.cedar"),
        r#"@id("dev-sees-phones-and-emails")
permit (principal in Sluice::Group::"dev", action == Sluice::Action::"unmask", resource)
when { resource is Sluice::Column && ["phone", "email"].contains(resource.column) };
@id("but-no-emails-in-development")
forbid (principal, action == Sluice::Action::"unmask", resource == Sluice::Column::"public.customers.email")
when { resource.environment == "development" };"#,
    )
    .unwrap();
    // The test user is in group "dev"; the target is in development.
    let (_pg, mut sluice) = start_pii(&format!("[policy]\ndir = \"{}\"\n", dir.path().display()));
    let c = connect(&sluice).await;
    // Extended protocol, an alias: the phone is shown, the rest masked.
    let r = c
        .query_one(
            "select phone as tel, email, ssn, full_name from customers where id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "+1 415 555 2671");
    assert_ne!(r.get::<_, String>(1), EMAIL, "the forbid wins");
    assert_ne!(r.get::<_, String>(2), SSN);
    assert_ne!(r.get::<_, String>(3), "Alice Smith");
    // Simple protocol, a join of the table with itself.
    let rows = simple_rows(
        &c.simple_query(
            "select a.phone, b.card_number from customers a join customers b using (id) where id = 2",
        )
        .await
        .unwrap(),
    );
    assert_eq!(rows[0][0].as_deref(), Some("+44 20 7946 0958"));
    assert_ne!(rows[0][1].as_deref(), Some("5500 0000 0000 0004"));
    // A value computed from the phone is not the column: still masked.
    let r = c
        .query_one("select phone, phone || '' from customers where id = 1", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "+1 415 555 2671");
    assert_ne!(r.get::<_, String>(1), "+1 415 555 2671");
    // A card number reaches the client only inside a computed value, masked.
    let r = c
        .query_one(
            "select 'card ' || card_number from customers where id = 1",
            &[],
        )
        .await
        .unwrap();
    assert!(
        !r.get::<_, String>(0).contains(CARD),
        "{}",
        r.get::<_, String>(0)
    );
    // COPY follows the same rules.
    let mut out = Box::pin(
        c.copy_out("copy (select phone, ssn from customers where id = 1) to stdout")
            .await
            .unwrap(),
    );
    let mut data = Vec::new();
    while let Some(chunk) = out.next().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8_lossy(&data);
    assert!(text.starts_with("+1 415 555 2671\t"), "{text}");
    assert!(!text.contains(SSN), "{text}");
    drop(c);

    // The trail records the phone as read unmasked (also where a computed
    // copy of it was masked: the column itself was shown), the SSN as
    // masked, and the card number as masked though only a value computed
    // from it was.
    sluice.signal("TERM");
    assert!(sluice
        .wait_exit(std::time::Duration::from_secs(30))
        .is_some());
    let data = sluice.data_dir();
    let usage = |column: &str| -> serde_json::Value {
        let o = std::process::Command::new(bin())
            .args(["usage", "--data-dir", data.to_str().unwrap()])
            .args(["--column", column, "--format", "json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let phone = usage("customers.phone");
    let rows = phone.as_array().unwrap();
    assert!(!rows.is_empty(), "{phone:#}");
    assert!(rows.iter().all(|r| r["masked"] == false), "{phone:#}");
    for column in ["customers.ssn", "customers.card_number"] {
        let read = usage(column);
        let rows = read.as_array().unwrap();
        assert!(!rows.is_empty(), "{read:#}");
        assert!(rows.iter().all(|r| r["masked"] == true), "{read:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn renamed_columns_are_seen_after_ddl() {
    let (_pg, sluice) = start_pii("");
    let c = connect(&sluice).await;
    let before: String = c
        .query_one("select plan from customers where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, "gold");
    // The same column, renamed to a sensitive name, through Sluice.
    c.batch_execute("alter table customers rename column plan to password")
        .await
        .unwrap();
    let after: String = c
        .query_one("select password from customers where id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(after, "gold", "a password column is masked");
}

#[tokio::test(flavor = "multi_thread")]
async fn values_a_type_cannot_mask_are_null_or_refused() {
    let (pg, sluice) = start_with("", "");
    pg.psql(
        "app",
        "create table vault (id int, api_key bytea); insert into vault values (1, '\\x0102');
         alter table vault owner to sluice_scram;",
    );
    let c = connect(&sluice).await;
    let r = c
        .query_one("select id, api_key from vault", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 1);
    assert_eq!(
        r.get::<_, Option<Vec<u8>>>(1),
        None,
        "sent as NULL by default"
    );
    drop(sluice);

    let (pg, sluice) = start_with("", "[masking]\nunmaskable = \"refuse\"\n");
    pg.psql(
        "app",
        "create table vault (id int, api_key bytea); insert into vault values (1, '\\x0102');
         alter table vault owner to sluice_scram;",
    );
    let c = connect(&sluice).await;
    let e = c
        .query_one("select id, api_key from vault", &[])
        .await
        .unwrap_err();
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message().contains("cannot be masked")),
        "{e}"
    );
    // The session goes on.
    let r = c.query_one("select id from vault", &[]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 1);
}

/// Values whose text form carries other values: whole rows, composite
/// columns, `pg_stats` samples, text search vectors, COPY with options that
/// share a template. A red team got raw PII out through each of these.
#[tokio::test(flavor = "multi_thread")]
async fn rows_composites_statistics_and_arrays_are_masked() {
    let (pg, sluice) = start_pii("");
    pg.psql(
        "app",
        &format!(
            "analyze customers;
             create domain email_t as text;
             create table households (id int, member_names text[]);
             insert into households values (1, array['Alice Smith', 'Bob Jones']);
             alter table households owner to {};",
            sluice_testkit::SCRAM_USER
        ),
    );
    let c = connect(&sluice).await;
    let leaks =
        |text: &str| text.contains(SSN) || text.contains(EMAIL) || text.contains("4111 1111");
    for sql in [
        "select c from customers c where id = 1",
        "select row(email, ssn) from customers where id = 1",
        "select array_agg(c) from customers c",
        "select most_common_vals, histogram_bounds from pg_stats where tablename = 'customers'",
        "select to_tsvector('simple', notes) from customers where id = 1",
        "select array[to_tsvector('simple', notes)] from customers where id = 1",
        "select record_out(c) from customers c where id = 1",
        "select textout(ssn), email::refcursor from customers where id = 1",
        "select array[email::email_t] from customers where id = 1",
    ] {
        let rows = simple_rows(&c.simple_query(sql).await.unwrap());
        let text = format!("{rows:?}");
        assert!(!leaks(&text), "{sql}: {text}");
    }
    // The row is still there, with its safe parts readable, and its
    // fields masked as the table's columns are: the name too.
    let rows = simple_rows(
        &c.simple_query("select c, 1 as n from customers c where id = 1")
            .await
            .unwrap(),
    );
    let row = rows[0][0].clone().unwrap();
    assert!(row.contains("gold"), "{row}");
    assert!(row.starts_with("(1,\"Name_"), "{row}");
    assert!(!row.contains("Alice") && !leaks(&row), "{row}");
    assert_eq!(rows[0][1].as_deref(), Some("1"));
    // an array of rows cannot be rewritten field by field: withheld
    let rows = simple_rows(
        &c.simple_query("select array_agg(c) from customers c")
            .await
            .unwrap(),
    );
    assert_eq!(rows[0][0], None, "{rows:?}");
    // COPY of whole rows: withheld too
    let stream = c
        .copy_out("copy (select id, c from customers c where id = 1) to stdout")
        .await
        .unwrap();
    let chunks: Vec<_> = stream.collect().await;
    let text: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap()).collect();
    assert_eq!(String::from_utf8_lossy(&text), "1\t\\N\n");

    // A classified array whose kind no detector finds is withheld whole.
    let rows = simple_rows(
        &c.simple_query("select id, member_names from households")
            .await
            .unwrap(),
    );
    assert_eq!(rows[0][1], None, "{rows:?}");

    // In binary, such values cannot be masked: NULL or refused, never raw.
    match c.query("select c from customers c where id = 1", &[]).await {
        Ok(rows) => assert!(rows.is_empty() || !format!("{rows:?}").contains(SSN)),
        Err(e) => assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("42501"),
            "{e}"
        ),
    }

    // Two COPYs that differ only in an option literal: the second is read
    // with its own options.
    for options in [
        "(delimiter ',')",
        "(delimiter ';')",
        "(format csv, header 'true')",
        "(format csv, header 'false')",
    ] {
        let sql = format!("copy (select id, email, ssn from customers) to stdout {options}");
        let stream = c.copy_out(sql.as_str()).await.unwrap();
        let chunks: Vec<_> = stream.collect().await;
        let mut out = Vec::new();
        for ch in chunks {
            out.extend_from_slice(&ch.unwrap());
        }
        let text = String::from_utf8_lossy(&out);
        assert!(!leaks(&text), "{sql}: {text}");
    }
}

/// Values that reach the client outside result rows: an error's detail
/// (a unique violation shows the key), a notice and a NOTIFY payload.
#[tokio::test(flavor = "multi_thread")]
async fn errors_notices_notifications_and_parameter_status_are_masked() {
    let (pg, sluice) = start_pii("");
    pg.psql(
        "app",
        &format!(
            "create table contacts (email text unique); alter table contacts owner to {0};
             create function shout(v text) returns int language plpgsql
               as $$ begin raise notice 'value is %', v; return 1; end $$;
             alter function shout(text) owner to {0};
             create function fail_with(v text) returns int language plpgsql
               as $$ begin raise exception 'failed' using column = v, detail = v; end $$;
             alter function fail_with(text) owner to {0};",
            sluice_testkit::SCRAM_USER
        ),
    );
    let conn = format!(
        "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={TARGET} sslmode=disable",
        sluice.pg_port()
    );
    let (c, mut connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(m) => {
                    let _ = tx.send(format!("{m:?}"));
                }
                Err(_) => break,
            }
        }
    });
    c.batch_execute("insert into contacts select email from customers where id = 1")
        .await
        .unwrap();
    let e = c
        .batch_execute("insert into contacts select email from customers where id = 1")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "23505");
    let detail = db.detail().unwrap_or_default();
    assert!(detail.contains("already exists"), "{detail}");
    assert!(!detail.contains(EMAIL), "{detail}");

    let e = c
        .batch_execute("select fail_with(email) from customers where id = 1")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.message(), "failed");
    assert!(db.column().is_some_and(|v| !v.contains(EMAIL)), "{db:?}");
    assert!(db.detail().is_some_and(|v| !v.contains(EMAIL)), "{db:?}");

    c.batch_execute("listen c").await.unwrap();
    c.batch_execute(
        "select shout(ssn) from customers where id = 1; select pg_notify('c', email) from customers where id = 1",
    )
    .await
    .unwrap();
    c.batch_execute("select 1").await.unwrap();
    let mut seen = Vec::new();
    while let Ok(m) = rx.try_recv() {
        seen.push(m);
    }
    let seen = seen.join("\n");
    assert!(seen.contains("value is"), "the notice arrived: {seen}");
    assert!(
        seen.contains("Notification"),
        "the notification arrived: {seen}"
    );
    assert!(!seen.contains(SSN) && !seen.contains(EMAIL), "{seen}");
}

/// Any column in binary format, as its raw bytes (`None` for NULL).
struct RawValue(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawValue {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// A text-format bytea (`\x…` or the escape format) as bytes.
fn bytea_text(v: &str) -> Vec<u8> {
    if let Some(hex) = v.strip_prefix("\\x") {
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
    }
    let b = v.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'\\' && b[i + 1] == b'\\' {
            out.push(b'\\');
            i += 2;
        } else if b[i] == b'\\' {
            out.push(u8::from_str_radix(&v[i + 1..i + 4], 8).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn people(pg: &PgServer) {
    pg.psql(
        "app",
        &format!(
            "create table people (id int, date_of_birth date, birth_dates date[],
               dob_history date[], contact_email bytea, note_bytes bytea, photo bytea);
             insert into people values (1, '1985-03-14', '{{1985-03-14,NULL,1990-07-01}}',
               array['1985-03-14'::date], convert_to('{EMAIL}', 'UTF8'),
               convert_to('ssn {SSN} on file', 'UTF8'), '\\x89504e470d0a1a0a00ff');
             create type textrange as range (subtype = text);
             alter table people owner to {0};",
            sluice_testkit::SCRAM_USER
        ),
    );
}

/// Dates of birth in arrays: masked per element as the `date` column is,
/// in text and in binary.
#[tokio::test(flavor = "multi_thread")]
async fn date_arrays_of_birth_dates_are_masked() {
    let (pg, sluice) = start_pii("");
    people(&pg);
    let c = connect(&sluice).await;
    let rows = simple_rows(
        &c.simple_query(
            "select date_of_birth, birth_dates, dob_history,
                    array_agg(date_of_birth) over () as birth_dates from people",
        )
        .await
        .unwrap(),
    );
    assert_eq!(rows[0][0].as_deref(), Some("1985-01-01"), "{rows:?}");
    assert_eq!(
        rows[0][1].as_deref(),
        Some("{1985-01-01,NULL,1990-01-01}"),
        "same strategy as the date column, NULL kept"
    );
    assert_eq!(rows[0][2].as_deref(), Some("{1985-01-01}"));
    assert_eq!(rows[0][3].as_deref(), Some("{1985-01-01}"));
    assert!(!format!("{rows:?}").contains("03-14"), "{rows:?}");

    // Binary (tokio-postgres' extended protocol): each element rebuilt.
    let r = c
        .query_one("select birth_dates from people", &[])
        .await
        .unwrap();
    let v = r.get::<_, RawValue>(0).0;
    let day = |at: usize| i32::from_be_bytes(v[at..at + 4].try_into().unwrap());
    assert_eq!(day(8), 1082, "still an array of dates");
    // days since 2000-01-01: 1985-01-01 and 1990-01-01, the NULL kept
    assert_eq!((day(20), day(24), day(28)), (4, -5478, -1));
    assert_eq!((day(32), day(36)), (4, -3652));
    // timestamps of birth in an array cannot be masked per element: NULL
    let r = c
        .query_one(
            "select array[date_of_birth::timestamptz] as birth_dates from people",
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, Option<RawValue>>(0).is_none());
    // COPY is masked the same way.
    let stream = c
        .copy_out("copy (select birth_dates from people) to stdout")
        .await
        .unwrap();
    let chunks: Vec<_> = stream.collect().await;
    let text: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap()).collect();
    assert_eq!(
        String::from_utf8_lossy(&text),
        "{1985-01-01,NULL,1990-01-01}\n"
    );
}

/// Text hidden in bytea: decoded and scanned (hex and escape output, binary
/// format, COPY, a row too large to hold); a bytea named like PII is
/// withheld; real binary data goes through as it is.
#[tokio::test(flavor = "multi_thread")]
async fn bytea_holding_text_is_masked() {
    let (pg, sluice) = start_pii("");
    people(&pg);
    let c = connect(&sluice).await;
    let raw_ssn_hex: String = SSN.bytes().map(|b| format!("{b:02x}")).collect();
    for output in ["hex", "escape"] {
        c.batch_execute(&format!("set bytea_output = {output}"))
            .await
            .unwrap();
        let rows = simple_rows(
            &c.simple_query(
                "select convert_to(ssn, 'UTF8'), customers.email::bytea, note_bytes, photo,
                        customers.email, contact_email
                 from customers, people where customers.id = 1",
            )
            .await
            .unwrap(),
        );
        let row = &rows[0];
        let text = format!("{row:?}");
        assert!(!text.contains(&raw_ssn_hex), "{output}: {text}");
        // computed from the ssn column: withheld like a bytea named ssn
        assert_eq!(row[0], None, "{output}");
        assert_eq!(row[1], None, "a bytea named email is withheld: {output}");
        let scan = String::from_utf8(bytea_text(row[2].as_deref().unwrap())).unwrap();
        assert_eq!(scan, "ssn ***-**-6789 on file", "{output}");
        assert_eq!(
            bytea_text(row[3].as_deref().unwrap()),
            b"\x89PNG\r\n\x1a\n\x00\xff",
            "binary data passes: {output}"
        );
        assert_ne!(row[4].as_deref(), Some(EMAIL));
        assert_eq!(row[5], None, "{output}");
    }
    // Binary format: the bytes are scanned as they are.
    let r = c
        .query_one(
            "select note_bytes, customers.email::bytea, photo, convert_to(ssn, 'UTF8')
             from customers, people where customers.id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, Vec<u8>>(0), b"ssn ***-**-6789 on file");
    assert_eq!(r.get::<_, Option<Vec<u8>>>(3), None, "computed from ssn");
    assert_eq!(r.get::<_, Option<Vec<u8>>>(1), None);
    assert_eq!(r.get::<_, Vec<u8>>(2), b"\x89PNG\r\n\x1a\n\x00\xff");
    // COPY, text and binary.
    for sql in [
        "copy (select note_bytes, convert_to(ssn, 'UTF8') from people, customers) to stdout",
        "copy (select note_bytes, convert_to(ssn, 'UTF8') from people, customers) to stdout (format binary)",
    ] {
        let stream = c.copy_out(sql).await.unwrap();
        let chunks: Vec<_> = stream.collect().await;
        let data: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap()).collect();
        let text = String::from_utf8_lossy(&data);
        assert!(
            !text.contains(SSN) && !text.contains(&raw_ssn_hex),
            "{sql}: {text}"
        );
    }
    // A row over 16 MiB is streamed: the finding is redacted in place.
    c.batch_execute("set bytea_output = hex").await.unwrap();
    let rows = simple_rows(
        &c.simple_query(&format!(
            "select convert_to('{SSN}' || ' ' || repeat('x', 9000000), 'UTF8') from customers where id = 1"
        ))
        .await
        .unwrap(),
    );
    let big = rows[0][0].as_deref().unwrap();
    assert_eq!(big.len(), 2 + 2 * (SSN.len() + 1 + 9_000_000));
    let bytes = bytea_text(big);
    assert!(bytes.starts_with(b"*********** xxx"), "{:?}", &bytes[..20]);
}

/// Multiranges are treated as ranges: over strings their text is scanned
/// (binary: NULL), over dates a column named as a date of birth is withheld.
#[tokio::test(flavor = "multi_thread")]
async fn multiranges_are_masked_like_ranges() {
    let (pg, sluice) = start_pii("");
    people(&pg);
    let c = connect(&sluice).await;
    let rows = simple_rows(
        &c.simple_query(
            "select textmultirange(textrange(customers.email, customers.email || 'z')),
                    array[textmultirange(textrange(ssn, ssn || ' z'))],
                    datemultirange(daterange(date_of_birth, date_of_birth, '[]')) as date_of_birth,
                    array[daterange(date_of_birth, date_of_birth, '[]')] as dob_ranges
             from customers, people where customers.id = 1",
        )
        .await
        .unwrap(),
    );
    let text = format!("{rows:?}");
    assert!(!text.contains(EMAIL) && !text.contains(SSN), "{text}");
    assert!(rows[0][0].as_deref().unwrap().starts_with("{["), "{text}");
    assert_eq!(rows[0][2], None, "{text}");
    assert_eq!(rows[0][3], None, "{text}");
    // Binary: a multirange over strings cannot be rebuilt, so it is NULL.
    let r = c
        .query_one(
            "select textmultirange(textrange(email, email || 'z')) from customers where id = 1",
            &[],
        )
        .await
        .unwrap();
    assert!(r.get::<_, Option<RawValue>>(0).is_none());
}

/// A value computed from a name or a date of birth is masked like the
/// column it comes from: PostgreSQL names no column for it, so Sluice
/// reads the statement (expressions, aggregates, CTEs, subqueries, UNION),
/// in the simple and the extended protocol. What is computed into a number
/// stays a number; a column that is not PII stays as it is.
#[tokio::test(flavor = "multi_thread")]
async fn values_computed_from_names_and_birth_dates_are_masked() {
    let (pg, sluice) = start_pii("");
    people(&pg);
    let c = connect(&sluice).await;
    let rows = simple_rows(
        &c.simple_query(
            "select upper(full_name) as shout, full_name || '!', split_part(full_name, ' ', 1) as first,
                    length(full_name), upper(plan), 'Alice Smith' as literal
             from customers where id = 1",
        )
        .await
        .unwrap(),
    );
    let row = &rows[0];
    for v in &row[..3] {
        let v = v.as_deref().unwrap_or_default();
        assert!(v.starts_with("Name_"), "a name token, not {v:?}: {rows:?}");
    }
    assert_eq!(row[3].as_deref(), Some("11"), "a length is a number");
    assert_eq!(row[4].as_deref(), Some("GOLD"), "not PII: untouched");
    assert_eq!(
        row[5].as_deref(),
        Some("Alice Smith"),
        "a literal comes from no column"
    );
    // a condition on a name is not the name
    let rows = simple_rows(
        &c.simple_query(
            "select case when full_name is null then 'missing' else 'present' end as status
             from customers where id = 1",
        )
        .await
        .unwrap(),
    );
    assert_eq!(rows[0][0].as_deref(), Some("present"));
    // the token of a computed name equals the column's, so joins still work
    let direct = simple_rows(
        &c.simple_query("select full_name from customers where id = 1")
            .await
            .unwrap(),
    );
    assert_eq!(row[0], direct[0][0]);

    for sql in [
        "with x as (select full_name || '' as n from customers) select upper(n) from x",
        "select t.n from (select concat(full_name, '') as n from customers) t",
        "select 'nobody' union all select full_name from customers",
        "select (select full_name from customers where id = 1)",
        "select max(full_name) from customers",
        "select string_agg(full_name, ', ') from customers",
        "select *, lower(full_name) from customers",
    ] {
        let rows = simple_rows(&c.simple_query(sql).await.unwrap());
        let text = format!("{rows:?}").to_lowercase();
        assert!(
            !text.contains("alice") && !text.contains("bob jones"),
            "{sql}: {rows:?}"
        );
    }

    // The extended protocol (tokio-postgres prepares and binds).
    let r = c
        .query_one(
            "select upper(full_name), full_name || ' <' || $1 || '>' from customers where id = $2",
            &[&"x", &1i32],
        )
        .await
        .unwrap();
    let (a, b): (String, String) = (r.get(0), r.get(1));
    assert!(a.starts_with("Name_") && b.starts_with("Name_"), "{a} {b}");

    // Rows computed by a statement defined earlier: SQL PREPARE/EXECUTE
    // and cursors, declared and fetched by simple query and by the
    // extended protocol.
    for sql in [
        "prepare shout as select upper(full_name) from customers; execute shout",
        "begin; declare c cursor for select upper(full_name) from customers; fetch all from c; commit",
    ] {
        let rows = simple_rows(&c.simple_query(sql).await.unwrap());
        let text = format!("{rows:?}").to_lowercase();
        assert!(rows.len() >= 2, "{sql}: {rows:?}");
        assert!(!text.contains("alice") && !text.contains("bob"), "{sql}: {rows:?}");
    }
    let mut c2 = connect(&sluice).await;
    let tx = c2.transaction().await.unwrap();
    tx.execute(
        "declare c2 cursor for select id, split_part(full_name, ' ', 1) from customers order by id",
        &[],
    )
    .await
    .unwrap();
    let fetched = tx.query("fetch 2 from c2", &[]).await.unwrap();
    let first: Vec<String> = fetched.iter().map(|r| r.get(1)).collect();
    assert_eq!(fetched.len(), 2);
    assert!(first.iter().all(|v| v.starts_with("Name_")), "{first:?}");
    tx.commit().await.unwrap();

    // COPY of a query: its columns are planned the same way.
    let stream = c
        .copy_out("copy (select id, upper(full_name) from customers order by id) to stdout")
        .await
        .unwrap();
    let chunks: Vec<_> = stream.collect().await;
    let text: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap()).collect();
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("1\tName_"), "{text}");
    assert!(!text.contains("ALICE") && !text.contains("BOB"), "{text}");

    // A date of birth computed over: the date strategy.
    let r = c
        .query_one(
            "select max(date_of_birth)::text, min(date_of_birth) + 0 as d, count(date_of_birth) from people",
            &[],
        )
        .await
        .unwrap();
    let (max, d, n): (String, RawValue, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(max, "1985-01-01");
    assert_eq!(
        i32::from_be_bytes(d.0[..4].try_into().unwrap()),
        -5478,
        "1985-01-01 in days since 2000-01-01"
    );
    assert_eq!(n, 1);
}

/// Names in JSON are found by their key, as columns are by their name: in
/// a jsonb column, in `row_to_json` of a whole row, in text and binary.
/// The document stays valid JSON and what is not sensitive stays readable.
#[tokio::test(flavor = "multi_thread")]
async fn json_values_are_masked_by_their_keys() {
    let (pg, sluice) = start_pii("");
    pg.psql(
        "app",
        &format!(
            "create table profiles (id int, doc jsonb);
             insert into profiles values (1,
               '{{\"contact\": {{\"name\": \"Alice Smith\", \"phone_number\": \"n/a\"}},
                 \"household\": {{\"member_names\": [\"Bob Jones\", \"Carol Smith\"]}},
                 \"product\": {{\"name\": \"Desk Lamp\"}}, \"plan\": \"gold\"}}');
             alter table profiles owner to {};",
            sluice_testkit::SCRAM_USER
        ),
    );
    let c = connect(&sluice).await;
    for sql in [
        "select doc from profiles",
        "select doc::text as doc from profiles",
        "select row_to_json(c) from customers c where id = 1",
        "select json_agg(c) from customers c",
    ] {
        let rows = simple_rows(&c.simple_query(sql).await.unwrap());
        let text = rows[0][0].clone().unwrap_or_default();
        for name in ["Alice", "Bob Jones", "Carol"] {
            assert!(!text.contains(name), "{sql}: {text}");
        }
        let doc: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
        assert!(text.contains("gold"), "{sql}: {doc}");
    }
    let rows = simple_rows(&c.simple_query("select doc from profiles").await.unwrap());
    let doc: serde_json::Value = serde_json::from_str(rows[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(
        doc["product"]["name"], "Desk Lamp",
        "a product's name is not a person's"
    );
    assert!(
        doc["contact"]["name"]
            .as_str()
            .unwrap()
            .starts_with("Name_"),
        "{doc}"
    );

    // A whole row of a table of people: its bare `name` key is a person's
    // name, as the column is.
    pg.psql(
        "app",
        &format!(
            "create table users (id int, name text, plan text);
             insert into users values (1, 'Dana Scully', 'gold');
             alter table users owner to {};",
            sluice_testkit::SCRAM_USER
        ),
    );
    for sql in [
        "select row_to_json(u) from users u",
        "select json_agg(u) from users u",
        "select to_jsonb(u)::text from users u",
    ] {
        let rows = simple_rows(&c.simple_query(sql).await.unwrap());
        let text = rows[0][0].clone().unwrap_or_default();
        assert!(
            !text.contains("Dana") && text.contains("gold"),
            "{sql}: {text}"
        );
    }
    let r = c
        .query_one("select to_jsonb(u), row_to_json(u) from users u", &[])
        .await
        .unwrap();
    let jsonb = r.get::<_, RawValue>(0).0;
    let json = r.get::<_, RawValue>(1).0;
    assert_eq!(jsonb.first(), Some(&1));
    for v in [&jsonb[1..], &json[..]] {
        let text = String::from_utf8_lossy(v);
        assert!(!text.contains("Dana") && text.contains("gold"), "{text}");
        serde_json::from_slice::<serde_json::Value>(v).expect("still JSON");
    }

    // jsonb in binary (tokio-postgres): the same, after the version byte
    let r = c
        .query_one(
            "select doc, to_jsonb(c) from profiles, customers c where c.id = 1",
            &[],
        )
        .await
        .unwrap();
    for i in 0..2 {
        let raw = r.get::<_, RawValue>(i).0;
        assert_eq!(raw.first(), Some(&1), "jsonb version byte");
        let v: serde_json::Value = serde_json::from_slice(&raw[1..]).expect("still JSON");
        let text = v.to_string();
        assert!(
            !text.contains("Alice") && !text.contains("Bob Jones"),
            "{text}"
        );
        assert!(text.contains("gold"), "{text}");
    }
}
