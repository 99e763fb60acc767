//! Masking quality measured end to end: the synthetic corpus of
//! `tests/masking/generate.py` (10,000 Faker rows, fixed seed, seven
//! locales, ground truth per column) is loaded into a real PostgreSQL with
//! real column types, read back through Sluice, and compared with what is
//! stored. A value counts as masked when what the client got differs.
//! Recall per kind and the false-positive rate on columns without PII are
//! printed and checked against the targets.

mod common;

use std::collections::BTreeMap;

use common::*;
use tokio_postgres::SimpleQueryMessage;

const ROWS: usize = 10_000;

/// Kinds that must be masked in ≥ 99% of their values.
const RECALL_99: &[&str] = &[
    "card",
    "ssn",
    "email",
    "iban",
    "aws_key",
    "gcp_key",
    "azure_key",
];

fn rows(msgs: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn corpus_read_through_sluice_meets_the_recall_and_false_positive_targets() {
    let dir = tempfile::tempdir().unwrap();
    let generator = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/masking/generate.py"
    );
    let out = std::process::Command::new("python3")
        .arg(generator)
        .args([
            "--out",
            dir.path().to_str().unwrap(),
            "--rows",
            &ROWS.to_string(),
        ])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "generate.py failed (run scripts/install-test-deps.sh for Faker): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("truth.json")).unwrap()).unwrap();
    let columns = truth["columns"].as_array().unwrap();

    let (pg, sluice) = start();
    let quote = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let defs: Vec<String> = columns
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                quote(c["name"].as_str().unwrap()),
                c["pg_type"].as_str().unwrap()
            )
        })
        .collect();
    let names: Vec<String> = columns
        .iter()
        .map(|c| quote(c["name"].as_str().unwrap()))
        .collect();
    // The corpus file is readable by the server's own user.
    let csv = dir.path().join("corpus.csv");
    let data = std::fs::read(&csv).unwrap();
    let load = format!(
        "create table corpus (row_no serial primary key, {});\n\
         alter table corpus owner to {};\n\
         \\copy corpus ({}) from stdin with (format csv, header)\n",
        defs.join(", "),
        sluice_testkit::SCRAM_USER,
        names.join(", ")
    );
    let script = dir.path().join("load.sql");
    let mut body = load.into_bytes();
    body.extend_from_slice(&data);
    body.extend_from_slice(b"\\.\n");
    std::fs::write(&script, &body).unwrap();
    let out = std::process::Command::new(sluice_testkit::pg_bin_dir().join("psql"))
        .arg(pg.direct_url())
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            script.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let select = format!("select {} from corpus order by row_no", names.join(", "));
    let direct = {
        let (c, conn) = tokio_postgres::connect(&pg.direct_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        rows(c.simple_query(&select).await.unwrap())
    };
    let through = rows(connect(&sluice).await.simple_query(&select).await.unwrap());
    assert_eq!(direct.len(), ROWS);
    assert_eq!(through.len(), ROWS);

    // kind -> (values, masked); non-PII: (values, changed)
    let mut by_kind: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut clean, mut changed) = (0u64, 0u64);
    let mut fp_columns: BTreeMap<String, u64> = BTreeMap::new();
    for (i, c) in columns.iter().enumerate() {
        let name = c["name"].as_str().unwrap();
        let pii = c["pii"].as_bool().unwrap();
        let kind = c["kind"].as_str();
        for (d, t) in direct.iter().zip(&through) {
            let Some(original) = &d[i] else { continue };
            if original.is_empty() {
                continue;
            }
            let differs = t[i].as_ref() != Some(original);
            match (pii, kind) {
                (true, Some(k)) => {
                    let e = by_kind.entry(k.to_owned()).or_default();
                    e.0 += 1;
                    e.1 += u64::from(differs);
                }
                (false, _) => {
                    clean += 1;
                    if differs {
                        changed += 1;
                        *fp_columns.entry(name.to_owned()).or_default() += 1;
                    }
                }
                // Embedded PII in free text: no per-value truth to score.
                (true, None) => {}
            }
        }
    }
    println!("masking through Sluice, {ROWS} rows:");
    println!(
        "{:<16} {:>8} {:>8} {:>8}",
        "kind", "values", "masked", "recall"
    );
    for (k, (n, m)) in &by_kind {
        println!(
            "{k:<16} {n:>8} {m:>8} {:>7.2}%",
            100.0 * *m as f64 / *n as f64
        );
    }
    let fp = changed as f64 / clean.max(1) as f64;
    println!(
        "non-PII values changed: {changed} of {clean} ({:.3}%) {fp_columns:?}",
        100.0 * fp
    );
    for k in RECALL_99 {
        let (n, m) = by_kind.get(*k).copied().unwrap_or((0, 0));
        assert!(n > 0, "the corpus has no {k} values");
        assert!(
            m as f64 / n as f64 >= 0.99,
            "recall for {k}: {m} of {n} masked"
        );
    }
    assert!(
        fp <= 0.01,
        "false-positive rate {fp:.4} on non-PII columns: {fp_columns:?}"
    );
}
