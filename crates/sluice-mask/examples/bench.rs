//! Micro-benchmark of the value detectors (std::time only).
//!
//! `cargo run -p sluice-mask --release --example bench`
//!
//! Reports ns per ~100-byte ordinary (non-sensitive) value, which is what
//! the proxy pays for every text value of an unclassified column, and MB/s
//! for ordinary, sensitive and adversarial inputs.

use std::hint::black_box;
use std::time::Instant;

use sluice_mask::{scan_into, Finding, Kind, MaskReport, Masker};

/// A small deterministic PRNG (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "the",
    "order",
    "was",
    "shipped",
    "to",
    "warehouse",
    "customer",
    "requested",
    "a",
    "refund",
    "because",
    "item",
    "arrived",
    "damaged",
    "please",
    "review",
    "ticket",
    "priority",
    "high",
    "low",
    "update",
    "status",
    "pending",
    "delivered",
    "returned",
    "quality",
    "check",
    "passed",
    "product",
    "blue",
    "large",
    "cotton",
    "shirt",
    "with",
    "long",
    "sleeves",
    "and",
    "pocket",
    "Berlin",
    "Paris",
    "Madrid",
    "team",
    "meeting",
    "notes",
    "follow",
    "up",
    "next",
    "week",
];

fn sentence(rng: &mut Rng, target: usize) -> String {
    let mut s = String::new();
    while s.len() < target {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(rng.pick(WORDS));
    }
    s.truncate(target);
    s
}

fn ordinary(rng: &mut Rng) -> String {
    match rng.next() % 6 {
        0 | 1 => sentence(rng, 100),
        2 => format!(
            "Order {} shipped on 2024-0{}-1{} from aisle {}; {}",
            10_000 + rng.next() % 90_000,
            1 + rng.next() % 9,
            rng.next() % 10,
            rng.next() % 40,
            sentence(rng, 40)
        ),
        3 => format!(
            "{{\"id\": {}, \"sku\": \"SKU-{}-XL\", \"qty\": {}, \"price\": {}.99, \"tags\": [\"a\", \"b\"]}}",
            rng.next() % 100_000,
            rng.next() % 10_000,
            rng.next() % 10,
            rng.next() % 100
        ),
        4 => format!(
            "2024-06-0{}T1{}:3{}:00Z INFO request done status=200 bytes={} path=/api/v1/items",
            1 + rng.next() % 9,
            rng.next() % 10,
            rng.next() % 10,
            rng.next() % 100_000
        ),
        _ => format!("Release {}.{}.{}: {}", rng.next() % 20, rng.next() % 20, rng.next() % 20, sentence(rng, 80)),
    }
}

const LABELS: [&str; 6] = [
    "prose",
    "prose",
    "order line (dates, ids)",
    "JSON document",
    "log line (time, k=v)",
    "release note (version)",
];

fn category(v: &str) -> u64 {
    if v.starts_with("Order") {
        2
    } else if v.starts_with('{') {
        3
    } else if v.starts_with("2024") {
        4
    } else if v.starts_with("Release") {
        5
    } else {
        0
    }
}

fn sensitive(rng: &mut Rng) -> String {
    let s = sentence(rng, 40);
    match rng.next() % 5 {
        0 => format!("{s} contact ann.lee{}@example.com", rng.next() % 1000),
        1 => format!("{s} card 4111 1111 1111 1111 exp 12/27"),
        2 => format!("{s} call +44 20 7946 {:04}", rng.next() % 10_000),
        3 => format!("{s} key AKIAIOSFODNN7EXAMPLE ok"),
        _ => format!("{s} password=hunter{} ssn 123-45-6789", rng.next() % 100),
    }
}

/// Nanoseconds this thread has spent on a CPU (Linux schedstat), so a
/// loaded machine does not inflate the numbers; wall time elsewhere.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

struct Timer(Instant, Option<u64>);

impl Timer {
    fn start() -> Timer {
        Timer(Instant::now(), cpu_ns())
    }
    fn secs(&self) -> f64 {
        match (self.1, cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e9,
            _ => self.0.elapsed().as_secs_f64(),
        }
    }
}

fn bench(name: &str, values: &[String], rounds: usize) {
    let bytes: usize = values.iter().map(String::len).sum();
    let mut findings: Vec<Finding> = Vec::new();
    let mut found = 0usize;
    // warm up
    for v in values {
        scan_into(v.as_bytes(), &mut findings);
    }
    let start = Timer::start();
    for _ in 0..rounds {
        for v in values {
            scan_into(black_box(v.as_bytes()), &mut findings);
            found += findings.len();
        }
    }
    let secs = start.secs();
    let n = (values.len() * rounds) as f64;
    let avg_len = bytes as f64 / values.len() as f64;
    println!(
        "{name:<28} {:>8.1} ns/value  ({:>5.1} B avg, {:>7.1} ns per 100 B)  {:>8.1} MB/s  findings/value {:.2}",
        secs * 1e9 / n,
        avg_len,
        secs * 1e9 / n * 100.0 / avg_len,
        (bytes * rounds) as f64 / secs / 1e6,
        found as f64 / n
    );
}

fn main() {
    println!(
        "clock: {}",
        if cpu_ns().is_some() {
            "on-CPU time of this thread (/proc/thread-self/schedstat)"
        } else {
            "wall time"
        }
    );
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    if std::env::var("BENCH_ONLY").as_deref() == Ok("hex") {
        let vals: Vec<String> = (0..10_000)
            .map(|_| format!("{:016x}{:016x}{}", rng.next(), rng.next(), "x".repeat(30)))
            .collect();
        bench("md5 hex + 30 x, 62 B", &vals, 1000);
        return;
    }
    // BENCH_ONLY=N: only category N of ordinary values (for profiling)
    if let Some(k) = std::env::var("BENCH_ONLY")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let mut r2 = Rng(k);
        let vals: Vec<String> = (0..5000)
            .map(|_| loop {
                let v = crate::ordinary(&mut r2);
                if category(&v) == k {
                    break v;
                }
            })
            .collect();
        bench(LABELS[k as usize], &vals, 1000);
        return;
    }
    let ordinary: Vec<String> = (0..10_000).map(|_| ordinary(&mut rng)).collect();
    let sensitive: Vec<String> = (0..10_000).map(|_| sensitive(&mut rng)).collect();
    let prose: Vec<String> = (0..10_000).map(|_| sentence(&mut rng, 100)).collect();
    bench("ordinary (mixed) values", &ordinary, 100);
    bench("plain prose, 100 B", &prose, 100);
    for k in 2..6u64 {
        let mut r2 = Rng(k);
        let vals: Vec<String> = (0..5000)
            .map(|_| loop {
                let v = crate::ordinary(&mut r2);
                let mut r3 = Rng(r2.0);
                let _ = r3.next();
                if category(&v) == k {
                    return v;
                }
            })
            .collect();
        bench(&format!("  {}", LABELS[k as usize]), &vals, 100);
    }
    bench("sensitive values", &sensitive, 30);
    // digests as bench/run.sh's `big` table holds them: md5 hex, and md5
    // hex followed by padding
    let hex =
        |rng: &mut Rng| -> String { (0..2).map(|_| format!("{:016x}", rng.next())).collect() };
    let digests: Vec<String> = (0..10_000).map(|_| hex(&mut rng)).collect();
    let padded: Vec<String> = (0..10_000)
        .map(|_| hex(&mut rng) + &"x".repeat(30))
        .collect();
    bench("md5 hex digest, 32 B", &digests, 100);
    bench("md5 hex + 30 x, 62 B", &padded, 100);
    let adversarial: Vec<(&str, Vec<u8>)> = vec![
        ("1 MB of digits", b"1".repeat(1 << 20)),
        ("1 MB 'a@' repeated", b"a@".repeat(1 << 19)),
        ("1 MB '$2b$' repeated", b"$2b$".repeat(1 << 18)),
        ("1 MB base64 run", b"Ab1+".repeat(1 << 18)),
        (
            "1 MB 'password=' repeated",
            b"password=".repeat((1 << 20) / 9),
        ),
    ];
    for (name, input) in &adversarial {
        let mut f = Vec::new();
        let start = Timer::start();
        for _ in 0..5 {
            scan_into(black_box(input), &mut f);
        }
        let secs = start.secs() / 5.0;
        println!(
            "{name:<28} {:>8.2} ms  {:>8.1} MB/s",
            secs * 1e3,
            input.len() as f64 / secs / 1e6
        );
    }
    // whole-field masking cost on the proxy path
    let m = Masker::new(&[1; 32]);
    let mut report = MaskReport::default();
    let mut f = Vec::new();
    let start = Timer::start();
    let mut changed = 0;
    for v in &sensitive {
        if m.mask_bytes_in_text(v.as_bytes(), &mut f, &mut report)
            .is_some()
        {
            changed += 1;
        }
    }
    let secs = start.secs();
    println!(
        "{:<28} {:>8.1} ns/value  ({changed} changed, email tokens {})",
        "mask_in_text (sensitive)",
        secs * 1e9 / sensitive.len() as f64,
        report.count(Kind::Email)
    );
}
