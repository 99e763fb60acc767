//! Cost of judging a statement, as the proxy pays it: a verdict found by
//! exact text (prepared and repeated statements), by template (the same
//! statement with other constants), and a miss (parse + policy decision).
//! Run by bench/policy.sh; prints microseconds per statement.

use std::time::Instant;

use bytes::BytesMut;
use sluice_identity::{Principal, PrincipalKind};
use sluice_policy::{PolicyEngine, Request, TargetRef};
use sluice_proxy::guard::Guard;
use sluice_proxy::Metrics;

const OLTP: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48211;",
    "UPDATE pgbench_accounts SET abalance = abalance + -4210 WHERE aid = 48211;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -4210 WHERE tid = 3;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 48211, -4210, CURRENT_TIMESTAMP);",
];

const ANALYTICAL: &[&str] = &[
    "select c.region, date_trunc('month', o.created_at) as month, count(distinct c.id) as buyers, sum(o.total) as revenue \
     from customers c join orders o on o.customer_id = c.id left join refunds r on r.order_id = o.id \
     where o.created_at >= now() - interval '1 year' and r.id is null group by 1, 2 having sum(o.total) > 1000 order by 2, 3 desc",
    "with recent as (select customer_id, max(created_at) as last from orders group by customer_id), \
     churned as (select customer_id from recent where last < now() - interval '90 days') \
     select c.email, c.name, r.last from customers c join recent r on r.customer_id = c.id \
     where c.id in (select customer_id from churned) and c.email not like '%@example.com' order by r.last limit 500",
];

fn query(sql: &str) -> Vec<u8> {
    let mut m = BytesMut::new();
    m.extend_from_slice(b"Q");
    m.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.extend_from_slice(&[0]);
    m.to_vec()
}

fn per_op(n: u32, f: impl FnMut(u32)) -> f64 {
    let mut f = f;
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let engine = PolicyEngine::builtin().expect("built-in guardrails load");
    let principal = Principal {
        name: "bench".into(),
        kind: PrincipalKind::Service,
        groups: vec!["app".into()],
        attributes: Default::default(),
        method: "bench",
    };
    let target = sluice_config::Target {
        name: "bench".into(),
        environment: "production".into(),
        upstream: "127.0.0.1:5432".into(),
        database: "bench".into(),
        user: "bench".into(),
        password: None,
        tls: sluice_config::UpstreamTls::Disable,
        ca_file: None,
    };
    let metrics = Metrics::default();
    let mut guard = Guard::new(&engine, &principal, &target, "bench", &metrics);

    let session = engine
        .session(
            &principal,
            &TargetRef {
                name: "bench",
                environment: "production",
            },
        )
        .expect("session entities");
    let miss = |sql: &str, n: u32| {
        per_op(n, |_| {
            let a = sluice_sql::analyze(sql, sluice_sql::Dialect::default()).ok();
            let _ = engine.decide_in(
                &session,
                &Request {
                    principal: &principal,
                    target: TargetRef {
                        name: "bench",
                        environment: "production",
                    },
                    analysis: a.as_ref(),
                    application_name: "bench",
                    hour_utc: 12,
                },
            );
        })
    };
    let sql = OLTP[0];
    let parse = per_op(5000, |_| {
        let _ = pg_query::parse(sql, 0);
    });
    let analyze = per_op(5000, |_| {
        let _ = sluice_sql::analyze(sql, sluice_sql::Dialect::default());
    });
    let a = sluice_sql::analyze(sql, sluice_sql::Dialect::default()).ok();
    let session = engine
        .session(
            &principal,
            &TargetRef {
                name: "bench",
                environment: "production",
            },
        )
        .expect("session entities");
    let decide = per_op(5000, |_| {
        let _ = engine.decide_in(
            &session,
            &Request {
                principal: &principal,
                target: TargetRef {
                    name: "bench",
                    environment: "production",
                },
                analysis: a.as_ref(),
                application_name: "bench",
                hour_utc: 12,
            },
        );
    });
    println!("breakdown on pgbench's SELECT: pg_query::parse {parse:.1} µs, analyze {analyze:.1} µs, decide {decide:.1} µs");
    println!(
        "{:<58} {:>10} {:>10} {:>10}",
        "statement", "hit µs", "template µs", "miss µs"
    );
    for sql in OLTP.iter().chain(ANALYTICAL) {
        let msg = query(sql);
        guard.inspect(b'Q', &msg);
        let hit = per_op(200_000, |_| {
            guard.inspect(b'Q', &msg);
        });
        // Same statement, other constants each time: found by template.
        let variants: Vec<Vec<u8>> = (0..1000)
            .map(|i| query(&sql.replace("48211", &(i + 1).to_string())))
            .collect();
        let template = per_op(100_000, |i| {
            guard.inspect(b'Q', &variants[(i % 1000) as usize]);
        });
        let n = if sql.len() > 200 { 2_000 } else { 10_000 };
        let label: String = sql.chars().take(56).collect();
        println!(
            "{label:<58} {hit:>10.3} {template:>10.3} {:>10.1}",
            miss(sql, n)
        );
    }
}

#[allow(dead_code)]
fn breakdown() {}
