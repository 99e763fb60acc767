//! Cost of judging a statement, as the proxy pays it in `Guard::judge_text`:
//!
//! - **hit**: the verdict found by exact text (prepared statements, repeated
//!   statements);
//! - **template**: the same statement with other constants, found by
//!   template (what pgbench's simple protocol sends);
//! - **miss**: a statement the session has not seen: template, pg_query
//!   analysis, Cedar decision and the cache inserts, on one guard that
//!   judges a new text each time (the target's "miss");
//! - **new sess.**: the same on a fresh guard each time (built outside the
//!   timed loop): the first statement of a session, with cold caches;
//! - **shared**: the first statement of a new session that another session
//!   of the process has sent: the analysis comes from the process-wide
//!   cache (`SharedAnalyses`), the decision is the session's own;
//! - the parts of a miss alone: `sluice_sql::template`, `sluice_sql::with_parse_tree`
//!   (PostgreSQL's parser and the tree decoded into Rust),
//!   `sluice_sql::analyze` (parse + facts), `PolicyEngine::decide_in`, and
//!   `rest`: miss − template − analyze − decide, what else a miss pays;
//! - **cedar**: `PolicyEngine::decide_uncached`, Cedar itself. `decide_in`
//!   remembers decisions by the facts the policies read (actions, risks and
//!   whatever context they name), so a new text whose facts were decided
//!   before, as in the miss here, skips it; the first statement with new
//!   facts (for the built-in guardrails: a new mix of actions and risks)
//!   pays `cedar` on top of the miss.
//!
//! On pgbench's statements and on long analytical queries, in microseconds
//! of the thread's CPU time per statement (so that other processes on a
//! busy machine do not count; the wall clock is in the JSON), median of
//! several repetitions, taken in rounds over all the statements. Each kind
//! of measurement is
//! checked with the guard's own counter (`statements_checked_total`): a
//! "hit" that analysed anything, or a "miss" that did not, is reported as
//! such instead of as a figure.
//!
//! Run by bench/policy.sh. Arguments: `--quick` (fewer iterations and
//! repetitions), `--reps N`, `--json PATH` (also write the results as JSON).
//! Targets (issue 5): hit < 1 µs, miss < 30 µs on OLTP statements.

use std::hint::black_box;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use sluice_identity::{Principal, PrincipalKind};
use sluice_policy::{Decision, PolicyEngine, Request, TargetRef};
use sluice_proxy::guard::{Guard, SharedAnalyses, Verdict};
use sluice_proxy::Metrics;

const HIT_TARGET_US: f64 = 1.0;
const MISS_TARGET_US: f64 = 30.0;

/// `{n}` stands for the constant that differs between executions.
struct Stmt {
    name: &'static str,
    kind: &'static str,
    sql: &'static str,
}

const STATEMENTS: &[Stmt] = &[
    // pgbench's built-in scripts as sent with -M simple (variables substituted).
    Stmt {
        name: "pgbench -S select",
        kind: "oltp",
        sql: "SELECT abalance FROM pgbench_accounts WHERE aid = {n};",
    },
    // ... and with -M prepared / extended: the Parse text, judged once per session.
    Stmt {
        name: "pgbench -S select ($1)",
        kind: "oltp",
        sql: "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    },
    Stmt {
        name: "tpcb begin",
        kind: "oltp",
        sql: "BEGIN;",
    },
    Stmt {
        name: "tpcb update accounts",
        kind: "oltp",
        sql: "UPDATE pgbench_accounts SET abalance = abalance + -4210 WHERE aid = {n};",
    },
    Stmt {
        name: "tpcb update tellers",
        kind: "oltp",
        sql: "UPDATE pgbench_tellers SET tbalance = tbalance + -4210 WHERE tid = {n};",
    },
    Stmt {
        name: "tpcb update branches",
        kind: "oltp",
        sql: "UPDATE pgbench_branches SET bbalance = bbalance + -4210 WHERE bid = {n};",
    },
    Stmt {
        name: "tpcb insert history",
        kind: "oltp",
        sql: "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, {n}, -4210, CURRENT_TIMESTAMP);",
    },
    Stmt {
        name: "tpcb end",
        kind: "oltp",
        sql: "END;",
    },
    Stmt {
        name: "revenue by region and month",
        kind: "analytical",
        sql: "select c.region, date_trunc('month', o.created_at) as month, count(distinct c.id) as buyers, sum(o.total) as revenue \
              from customers c join orders o on o.customer_id = c.id left join refunds r on r.order_id = o.id \
              where o.created_at >= now() - interval '1 year' and r.id is null group by 1, 2 having sum(o.total) > {n} order by 2, 3 desc",
    },
    Stmt {
        name: "churned customers (CTEs)",
        kind: "analytical",
        sql: "with recent as (select customer_id, max(created_at) as last from orders group by customer_id), \
              churned as (select customer_id from recent where last < now() - interval '90 days') \
              select c.email, c.name, r.last from customers c join recent r on r.customer_id = c.id \
              where c.id in (select customer_id from churned) and c.email not like '%@example.com' order by r.last limit {n}",
    },
    Stmt {
        name: "TPC-H Q9-like product profit",
        kind: "analytical",
        sql: "select nation, o_year, sum(amount) as sum_profit from (\
              select n_name as nation, extract(year from o_orderdate) as o_year, \
              l_extendedprice * (1 - l_discount) - ps_supplycost * l_quantity as amount \
              from part, supplier, lineitem, partsupp, orders, nation \
              where s_suppkey = l_suppkey and ps_suppkey = l_suppkey and ps_partkey = l_partkey \
              and p_partkey = l_partkey and o_orderkey = l_orderkey and s_nationkey = n_nationkey \
              and p_name like '%green%' and o_orderdate >= date '1995-01-01' and l_quantity < {n}) as profit \
              group by nation, o_year order by nation, o_year desc",
    },
    Stmt {
        name: "window + lateral + union report",
        kind: "analytical",
        sql: "with daily as (select date_trunc('day', e.ts) as day, e.account_id, count(*) as events, \
              sum(case when e.kind = 'purchase' then e.amount else 0 end) as spent \
              from events e where e.ts >= current_date - {n} group by 1, 2), \
              ranked as (select d.*, rank() over (partition by d.day order by d.spent desc) as rnk, \
              avg(d.spent) over (partition by d.account_id order by d.day rows between 6 preceding and current row) as avg7 \
              from daily d) \
              select a.name, r.day, r.spent, r.avg7, last.note from ranked r join accounts a on a.id = r.account_id \
              left join lateral (select n.body as note from notes n where n.account_id = a.id order by n.created_at desc limit 1) last on true \
              where r.rnk <= 10 and a.status in ('active', 'trial') \
              union all \
              select 'total', null, sum(spent), null, null from daily \
              order by 2 desc nulls last, 3 desc",
    },
];

struct Settings {
    reps: usize,
    /// Work per repetition: multiplier of the iteration counts.
    scale: f64,
    json: Option<String>,
}

fn settings() -> Settings {
    let mut s = Settings {
        reps: 7,
        scale: 1.0,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                s.reps = 3;
                s.scale = 0.2;
            }
            "--reps" => s.reps = args.next().and_then(|v| v.parse().ok()).expect("--reps N"),
            "--json" => s.json = Some(args.next().expect("--json PATH")),
            other => panic!("unknown argument {other}; expected --quick, --reps N, --json PATH"),
        }
    }
    s.reps = s.reps.max(1);
    s
}

fn iterations(base: u32, scale: f64) -> u32 {
    ((f64::from(base) * scale) as u32).max(20)
}

/// Median, min, max of µs per operation over the repetitions: the thread's
/// CPU time (what the machine's other processes cannot add to, as long as
/// they do not evict our caches), and the median wall-clock time beside it.
#[derive(Clone)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
    wall_median: f64,
    /// The repetitions themselves, to merge with other runs of the same.
    raw: Vec<Sample>,
}

impl Stat {
    /// One statistic over the repetitions of several runs.
    fn merge(parts: Vec<Stat>) -> Stat {
        stat(parts.into_iter().flat_map(|p| p.raw).collect())
    }
}

impl Outcome {
    /// See [`Stat::merge`]; a run that is not a measurement stands for all.
    fn merge(parts: Vec<Outcome>) -> Outcome {
        let mut stats = Vec::with_capacity(parts.len());
        for part in parts {
            match part {
                Outcome::Measured(s) => stats.push(s),
                other => return other,
            }
        }
        Outcome::Measured(Stat::merge(stats))
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn stat(samples: Vec<Sample>) -> Stat {
    let mut cpu: Vec<f64> = samples.iter().map(|s| s.cpu).collect();
    let mut wall: Vec<f64> = samples.iter().map(|s| s.wall).collect();
    cpu.sort_by(f64::total_cmp);
    wall.sort_by(f64::total_cmp);
    Stat {
        median: median(&cpu),
        min: cpu[0],
        max: cpu[cpu.len() - 1],
        wall_median: median(&wall),
        samples: samples.iter().map(|s| s.cpu).collect(),
        raw: samples,
    }
}

/// µs per call, one repetition.
#[derive(Clone, Copy)]
struct Sample {
    cpu: f64,
    wall: f64,
}

/// This thread's CPU time in seconds (Linux; elsewhere the wall clock).
#[cfg(target_os = "linux")]
fn thread_cpu_secs() -> f64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec (64-bit Linux layout) to ts.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_secs() -> f64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// µs per call of `f`, over `n` calls.
fn per_op(n: u32, mut f: impl FnMut(u32)) -> Sample {
    let cpu = thread_cpu_secs();
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_secs() - cpu;
    Sample {
        cpu: cpu * 1e6 / f64::from(n),
        wall: wall * 1e6 / f64::from(n),
    }
}

/// One measurement: a figure, or why there is none.
enum Outcome {
    Measured(Stat),
    NotApplicable(&'static str),
    /// The counter shows it did not measure what it claims.
    Wrong(String),
}

fn with_constant(sql: &str, n: u32) -> String {
    sql.replace("{n}", &n.to_string())
}

fn verdict_name(v: &Verdict) -> String {
    match v {
        Verdict::Allow(_) => "allow".into(),
        Verdict::Refuse { rule, held, .. } => {
            format!("{} ({rule})", if *held { "approval" } else { "deny" })
        }
    }
}

struct Env<'a> {
    engine: &'a PolicyEngine,
    principal: &'a Principal,
    target: &'a sluice_config::Target,
}

impl<'a> Env<'a> {
    fn guard(&self, metrics: &'a Metrics) -> Guard<'a> {
        Guard::new(self.engine, self.principal, self.target, "pgbench", metrics)
    }

    fn request<'r>(&'r self, analysis: Option<&'r sluice_sql::Analysis>) -> Request<'r> {
        Request {
            principal: self.principal,
            target: TargetRef {
                name: &self.target.name,
                environment: &self.target.environment,
            },
            analysis,
            application_name: "pgbench",
            hour_utc: 12,
            client_address: "",
            search_path: &[],
        }
    }
}

struct Row {
    stmt: &'static Stmt,
    bytes: usize,
    verdict: String,
    hit: Outcome,
    template: Outcome,
    /// A miss in a session that has judged other statements.
    miss: Outcome,
    /// A miss on a new session (its first statement).
    miss_fresh: Outcome,
    /// The same, analysed before by another session.
    shared: Outcome,
    /// Parts of a miss, measured alone.
    template_fn: Outcome,
    parse: Stat,
    analyze: Stat,
    decide: Stat,
    /// Cedar itself: a decision for facts not remembered.
    cedar: Stat,
}

impl Row {
    /// One row from the runs of a statement.
    fn merge(runs: Vec<Row>) -> Row {
        let first = &runs[0];
        let (stmt, bytes, verdict) = (first.stmt, first.bytes, first.verdict.clone());
        let mut hit = Vec::new();
        let mut template = Vec::new();
        let mut miss = Vec::new();
        let mut miss_fresh = Vec::new();
        let mut shared = Vec::new();
        let mut template_fn = Vec::new();
        let mut parse = Vec::new();
        let mut analyze = Vec::new();
        let mut decide = Vec::new();
        let mut cedar = Vec::new();
        for r in runs {
            hit.push(r.hit);
            template.push(r.template);
            miss.push(r.miss);
            miss_fresh.push(r.miss_fresh);
            shared.push(r.shared);
            template_fn.push(r.template_fn);
            parse.push(r.parse);
            analyze.push(r.analyze);
            decide.push(r.decide);
            cedar.push(r.cedar);
        }
        Row {
            stmt,
            bytes,
            verdict,
            hit: Outcome::merge(hit),
            template: Outcome::merge(template),
            miss: Outcome::merge(miss),
            miss_fresh: Outcome::merge(miss_fresh),
            shared: Outcome::merge(shared),
            template_fn: Outcome::merge(template_fn),
            parse: Stat::merge(parse),
            analyze: Stat::merge(analyze),
            decide: Stat::merge(decide),
            cedar: Stat::merge(cedar),
        }
    }

    /// What a miss costs beyond template + analysis + decision: caches,
    /// verdict, and anything else the guard does on a miss.
    fn rest(&self) -> Option<f64> {
        let Outcome::Measured(miss) = &self.miss else {
            return None;
        };
        let template = match &self.template_fn {
            Outcome::Measured(t) => t.median,
            _ => 0.0,
        };
        Some(miss.median - template - self.analyze.median - self.decide.median)
    }
}

fn measure(env: &Env<'_>, stmt: &'static Stmt, s: &Settings) -> Row {
    let text = with_constant(stmt.sql, 48211);
    let bytes = text.as_bytes();
    let long = text.len() > 300;
    let metrics = Metrics::default();
    let checked = || metrics.statements_checked_total.load(Relaxed);

    // --- exact-text hit: the same text again and again on one session.
    let mut guard = env.guard(&metrics);
    let verdict = verdict_name(&guard.judge_text(bytes));
    let n = iterations(200_000, s.scale);
    let before = checked();
    let samples: Vec<Sample> = (0..s.reps)
        .map(|_| {
            per_op(n, |_| {
                black_box(guard.judge_text(black_box(bytes)));
            })
        })
        .collect();
    let hit = match checked() - before {
        0 => Outcome::Measured(stat(samples)),
        k => Outcome::Wrong(format!("{k} of the hits were analysed")),
    };

    // --- template hit: other constants each time, never the same text twice
    // in a row; template hits are not added to the exact-text cache, so every
    // call goes through the template.
    let template = if !stmt.sql.contains("{n}") {
        Outcome::NotApplicable("no constant")
    } else if sluice_sql::template(&text).is_none() {
        Outcome::NotApplicable("no template ($n, comment, …)")
    } else {
        let variants: Vec<String> = (0..1000u32)
            .map(|i| with_constant(stmt.sql, 1000 + i * 7))
            .collect();
        let mut guard = env.guard(&metrics);
        // The first one is a miss that stores the template's verdict.
        black_box(guard.judge_text(variants[0].as_bytes()));
        let n = iterations(if long { 20_000 } else { 100_000 }, s.scale);
        let before = checked();
        let samples: Vec<Sample> = (0..s.reps)
            .map(|_| {
                per_op(n, |i| {
                    let v = &variants[1 + (i as usize) % (variants.len() - 1)];
                    black_box(guard.judge_text(black_box(v.as_bytes())));
                })
            })
            .collect();
        match checked() - before {
            0 => Outcome::Measured(stat(samples)),
            k => Outcome::Wrong(format!(
                "{k} of {} were analysed: the verdict is not reused for the template",
                n as usize * s.reps
            )),
        }
    };

    // --- miss on a new session: each call on a fresh guard (built outside
    // the timed loop, as a session's is), so nothing is cached and the
    // guard's memory is cold; includes the cache inserts.
    let n = iterations(if long { 1_000 } else { 4_000 }, s.scale);
    let mut samples = Vec::with_capacity(s.reps);
    let mut miss_wrong = None;
    for _ in 0..s.reps {
        let mut guards: Vec<Guard<'_>> = (0..n).map(|_| env.guard(&metrics)).collect();
        let before = checked();
        let us = per_op(n, |i| {
            black_box(guards[i as usize].judge_text(black_box(bytes)));
        });
        if checked() - before != u64::from(n) {
            miss_wrong = Some(format!("{} of {n} calls analysed", checked() - before));
        }
        drop(guards);
        samples.push(us);
    }
    let miss_fresh = match miss_wrong {
        None => Outcome::Measured(stat(samples)),
        Some(w) => Outcome::Wrong(w),
    };

    // --- the same, with the process's shared analyses holding the text:
    // judged without a parse.
    let shared_analyses = Arc::new(SharedAnalyses::default());
    {
        let mut first = env.guard(&metrics);
        first.shared = Some(shared_analyses.clone());
        black_box(first.judge_text(bytes));
    }
    let analysed = || metrics.statements_analysed_total.load(Relaxed);
    let mut samples = Vec::with_capacity(s.reps);
    let mut shared_wrong = None;
    for _ in 0..s.reps {
        let mut guards: Vec<Guard<'_>> = (0..n)
            .map(|_| {
                let mut g = env.guard(&metrics);
                g.shared = Some(shared_analyses.clone());
                g
            })
            .collect();
        let (before, parsed) = (checked(), analysed());
        let us = per_op(n, |i| {
            black_box(guards[i as usize].judge_text(black_box(bytes)));
        });
        if checked() - before != u64::from(n) || analysed() != parsed {
            shared_wrong = Some(format!(
                "{} of {n} calls judged, {} analysed",
                checked() - before,
                analysed() - parsed
            ));
        }
        drop(guards);
        samples.push(us);
    }
    let shared = match shared_wrong {
        None => Outcome::Measured(stat(samples)),
        Some(w) => Outcome::Wrong(w),
    };

    // --- miss in a warm session: one guard, a statement it has not seen,
    // each time: the text with a 12-character suffix of spaces and tabs
    // spelling the call's number, which the parser skips but which gives
    // the text a template of its own. Past 2048 entries the guard clears its
    // caches, as in a session.
    let n = iterations(if long { 1_000 } else { 4_000 }, s.scale).min(4096);
    let variants: Vec<String> = (0..n)
        .map(|k| {
            let tail: String = (0..12)
                .map(|bit| if k >> bit & 1 == 1 { '\t' } else { ' ' })
                .collect();
            format!("{text}{tail}")
        })
        .collect();
    let mut samples = Vec::with_capacity(s.reps);
    let mut wrong = None;
    for _ in 0..s.reps {
        let mut guard = env.guard(&metrics);
        let before = checked();
        let us = per_op(n, |i| {
            black_box(guard.judge_text(black_box(variants[i as usize].as_bytes())));
        });
        if checked() - before != u64::from(n) {
            wrong = Some(format!("{} of {n} calls analysed", checked() - before));
        }
        drop(guard);
        samples.push(us);
    }
    let miss = match wrong {
        None => Outcome::Measured(stat(samples)),
        Some(w) => Outcome::Wrong(w),
    };

    // --- the parts of a miss, alone.
    let n = iterations(if long { 1_000 } else { 5_000 }, s.scale);
    let reps = |f: &mut dyn FnMut() -> Sample| stat((0..s.reps).map(|_| f()).collect());
    let template_fn = match sluice_sql::template(&text) {
        None => Outcome::NotApplicable("no template"),
        Some(_) => Outcome::Measured(reps(&mut || {
            per_op(n * 4, |_| {
                black_box(sluice_sql::template(black_box(&text)));
            })
        })),
    };
    let parse = reps(&mut || {
        per_op(n, |_| {
            let _ = black_box(sluice_sql::with_parse_tree(
                black_box(&text),
                sluice_sql::Dialect::default(),
                |tree| tree.stmts.len(),
            ));
        })
    });
    let analyze = reps(&mut || {
        per_op(n, |_| {
            let _ = black_box(sluice_sql::analyze(
                black_box(&text),
                sluice_sql::Dialect::default(),
            ));
        })
    });
    let analysis = sluice_sql::analyze(&text, sluice_sql::Dialect::default()).ok();
    let session = env
        .engine
        .session(
            env.principal,
            &TargetRef {
                name: &env.target.name,
                environment: &env.target.environment,
            },
        )
        .expect("session entities");
    let decide = reps(&mut || {
        per_op(n, |_| {
            let d: Decision = env
                .engine
                .decide_in(&session, &env.request(black_box(analysis.as_ref())));
            black_box(d);
        })
    });
    let cedar = reps(&mut || {
        per_op(n, |_| {
            let d: Decision = env
                .engine
                .decide_uncached(&session, &env.request(black_box(analysis.as_ref())));
            black_box(d);
        })
    });

    Row {
        stmt,
        bytes: text.len(),
        verdict,
        hit,
        template,
        miss,
        miss_fresh,
        shared,
        template_fn,
        parse,
        analyze,
        decide,
        cedar,
    }
}

fn cell(o: &Outcome, width: usize) -> String {
    match o {
        Outcome::Measured(s) if s.median < 10.0 => format!("{:>width$.3}", s.median),
        Outcome::Measured(s) => format!("{:>width$.1}", s.median),
        Outcome::NotApplicable(_) => format!("{:>width$}", "-"),
        Outcome::Wrong(_) => format!("{:>width$}", "WRONG"),
    }
}

fn num(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_f(x: f64) -> String {
    format!("{:.4}", x)
}

fn json_stat(s: &Stat) -> String {
    format!(
        "{{\"median\": {}, \"min\": {}, \"max\": {}, \"wall_median\": {}, \"samples\": [{}]}}",
        json_f(s.median),
        json_f(s.min),
        json_f(s.max),
        json_f(s.wall_median),
        s.samples
            .iter()
            .map(|x| json_f(*x))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn json_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Measured(s) => json_stat(s),
        Outcome::NotApplicable(why) => format!(
            "{{\"median\": null, \"not_applicable\": {}}}",
            json_str(why)
        ),
        Outcome::Wrong(why) => format!("{{\"median\": null, \"error\": {}}}", json_str(why)),
    }
}

fn json_opt(x: Option<f64>) -> String {
    x.map_or("null".into(), json_f)
}

fn json_bool(x: Option<bool>) -> String {
    x.map_or("null".into(), |b| b.to_string())
}

/// Worst median of `f` over the OLTP rows; None if any of them has no figure
/// where one is expected.
fn worst(rows: &[Row], f: impl Fn(&Row) -> &Outcome) -> (Option<f64>, bool) {
    let mut max: Option<f64> = None;
    let mut complete = true;
    for r in rows.iter().filter(|r| r.stmt.kind == "oltp") {
        match f(r) {
            Outcome::Measured(s) => max = Some(max.map_or(s.median, |m: f64| m.max(s.median))),
            Outcome::NotApplicable(_) => {}
            Outcome::Wrong(_) => complete = false,
        }
    }
    (max, complete)
}

fn main() {
    let s = settings();
    let engine = PolicyEngine::builtin().expect("built-in guardrails load");
    let principal = Principal {
        name: "bench".into(),
        kind: PrincipalKind::Service,
        groups: vec!["app".into()],
        method: "scram-sha-256",
        ..Default::default()
    };
    // Production: the built-in guardrails judged are the production ones.
    let target = sluice_config::Target {
        name: "bench".into(),
        environment: "production".into(),
        upstream: "127.0.0.1:5432".into(),
        database: "bench".into(),
        user: "bench".into(),
        password: None,
        tls: sluice_config::UpstreamTls::Disable,
        ca_file: None,
        logins: Vec::new(),
        max_rows_affected: 0,
    };
    let env = Env {
        engine: &engine,
        principal: &principal,
        target: &target,
    };

    // Per session, not per statement: the principal and target as entities.
    let metrics = Metrics::default();
    let n = iterations(5_000, s.scale);
    let session_new = stat(
        (0..s.reps)
            .map(|_| {
                per_op(n, |_| {
                    black_box(env.guard(&metrics));
                })
            })
            .collect(),
    );

    // Repetitions go round the statements (each statement once per round)
    // rather than one statement's all at once: on a machine whose speed
    // drifts with its neighbours' load, a slow minute then spreads over
    // every statement instead of landing on the few measured in it.
    let once = Settings {
        reps: 1,
        scale: s.scale,
        json: None,
    };
    let mut runs: Vec<Vec<Row>> = STATEMENTS.iter().map(|_| Vec::new()).collect();
    for _ in 0..s.reps {
        for (st, runs) in STATEMENTS.iter().zip(&mut runs) {
            runs.push(measure(&env, st, &once));
        }
    }
    let rows: Vec<Row> = runs.into_iter().map(Row::merge).collect();

    println!(
        "guard cost, µs of CPU time per statement, median of {} repetition(s) in rounds over the statements; target environment \"production\"",
        s.reps
    );
    println!(
        "{:<30} {:>5} {:>8} {:>9} {:>8} {:>9} {:>7} | {:>9} {:>7} {:>8} {:>7} {:>7} {:>7}  verdict",
        "statement",
        "bytes",
        "hit",
        "template",
        "miss",
        "new sess.",
        "shared",
        "template()",
        "parse",
        "analyze",
        "decide",
        "rest",
        "cedar"
    );
    for kind in ["oltp", "analytical"] {
        for r in rows.iter().filter(|r| r.stmt.kind == kind) {
            println!(
                "{:<30} {:>5} {} {} {} {} {} | {} {:>7} {:>8} {:>7} {:>7} {:>7}  {}",
                r.stmt.name,
                r.bytes,
                cell(&r.hit, 8),
                cell(&r.template, 9),
                cell(&r.miss, 8),
                cell(&r.miss_fresh, 9),
                cell(&r.shared, 7),
                cell(&r.template_fn, 10),
                num(r.parse.median),
                num(r.analyze.median),
                num(r.decide.median),
                r.rest().map_or("-".into(), num),
                num(r.cedar.median),
                r.verdict
            );
        }
    }
    for r in &rows {
        for (what, o) in [
            ("hit", &r.hit),
            ("template", &r.template),
            ("miss", &r.miss),
            ("miss on a new session", &r.miss_fresh),
            ("shared analysis", &r.shared),
        ] {
            if let Outcome::Wrong(why) = o {
                println!("WARNING: {} {what}: {why}", r.stmt.name);
            }
        }
    }
    println!(
        "per session (Guard::new: principal and target as policy entities): {} µs",
        num(session_new.median)
    );

    let (hit_max, hit_ok) = worst(&rows, |r| &r.hit);
    let (tpl_max, tpl_ok) = worst(&rows, |r| &r.template);
    let (miss_max, miss_ok) = worst(&rows, |r| &r.miss);
    let (fresh_max, _) = worst(&rows, |r| &r.miss_fresh);
    let (shared_max, _) = worst(&rows, |r| &r.shared);
    let goal = |max: Option<f64>, complete: bool, limit: f64| -> Option<bool> {
        if complete {
            max.map(|m| m < limit)
        } else {
            Some(false)
        }
    };
    let hit_met = goal(hit_max, hit_ok, HIT_TARGET_US);
    let tpl_met = goal(tpl_max, tpl_ok, HIT_TARGET_US);
    let miss_met = goal(miss_max, miss_ok, MISS_TARGET_US);
    let word = |m: Option<bool>| match m {
        Some(true) => "ok",
        Some(false) => "MISS",
        None => "n/a",
    };
    let show = |x: Option<f64>| x.map_or("n/a".into(), num);
    println!(
        "OLTP targets: exact hit < {HIT_TARGET_US} µs: {} (worst {}); template hit < {HIT_TARGET_US} µs: {} (worst {}); miss < {MISS_TARGET_US} µs: {} (worst {}; on a new session {}; analysed before by another session {})",
        word(hit_met),
        show(hit_max),
        word(tpl_met),
        show(tpl_max),
        word(miss_met),
        show(miss_max),
        show(fresh_max),
        show(shared_max)
    );

    if let Some(path) = &s.json {
        let mut j = String::new();
        j.push_str("{\n");
        j.push_str(&format!(
            "  \"unit\": \"microseconds of the thread's CPU time per statement (wall_median: wall clock)\",\n  \"repetitions\": {},\n  \"scale\": {},\n  \"environment\": \"production\",\n",
            s.reps, s.scale
        ));
        j.push_str(&format!(
            "  \"session_setup_us\": {},\n",
            json_stat(&session_new)
        ));
        j.push_str(&format!(
            "  \"targets\": {{\"hit_us\": {HIT_TARGET_US}, \"miss_us\": {MISS_TARGET_US}, \"applies_to\": \"oltp\"}},\n"
        ));
        j.push_str(&format!(
            "  \"oltp_worst\": {{\"hit\": {}, \"template\": {}, \"miss\": {}, \"miss_new_session\": {}, \"shared_analysis\": {}}},\n",
            json_opt(hit_max),
            json_opt(tpl_max),
            json_opt(miss_max),
            json_opt(fresh_max),
            json_opt(shared_max)
        ));
        j.push_str(&format!(
            "  \"goals\": {{\"hit\": {}, \"template\": {}, \"miss\": {}}},\n",
            json_bool(hit_met),
            json_bool(tpl_met),
            json_bool(miss_met)
        ));
        j.push_str("  \"statements\": [\n");
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "    {{\"name\": {}, \"kind\": {}, \"bytes\": {}, \"sql\": {}, \"verdict\": {},\n      \"hit\": {},\n      \"template\": {},\n      \"miss\": {},\n      \"miss_new_session\": {},\n      \"shared_analysis\": {},\n      \"template_fn\": {},\n      \"parse\": {},\n      \"analyze\": {},\n      \"decide\": {},\n      \"cedar\": {},\n      \"rest_us\": {}}}",
                    json_str(r.stmt.name),
                    json_str(r.stmt.kind),
                    r.bytes,
                    json_str(&with_constant(r.stmt.sql, 48211)),
                    json_str(&r.verdict),
                    json_outcome(&r.hit),
                    json_outcome(&r.template),
                    json_outcome(&r.miss),
                    json_outcome(&r.miss_fresh),
                    json_outcome(&r.shared),
                    json_outcome(&r.template_fn),
                    json_stat(&r.parse),
                    json_stat(&r.analyze),
                    json_stat(&r.decide),
                    json_stat(&r.cedar),
                    json_opt(r.rest()),
                )
            })
            .collect();
        j.push_str(&items.join(",\n"));
        j.push_str("\n  ]\n}\n");
        std::fs::write(path, j).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
}
