//! Masking quality on a synthetic corpus: `tests/masking/generate.py`
//! (Faker, fixed seed, seven locales) writes 10,000 rows with ground truth;
//! every value goes through the detectors, and per-kind recall, precision
//! and the false-positive rate on non-PII columns are printed and checked.
//!
//! Needs python3 with the `faker` module (pinned in
//! tests/clients/python/requirements.txt, installed by
//! scripts/install-test-deps.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sluice_mask::copy::{parse_csv_record, CsvFormat, RecordSplitter};
use sluice_mask::{classify_column, classify_csv_with, scan, DetectedBy, Kind, Masker};

const ROWS: usize = 10_000;
const SEED: u64 = 42;

/// Recall targets: these kinds must be found in ≥ 99% of their values.
const RECALL_99: [Kind; 12] = [
    Kind::Card,
    Kind::Ssn,
    Kind::Email,
    Kind::Iban,
    Kind::AwsKey,
    Kind::GcpKey,
    Kind::AzureKey,
    Kind::GithubToken,
    Kind::SlackToken,
    Kind::StripeKey,
    Kind::PrivateKey,
    Kind::Jwt,
];

/// False positives allowed on non-PII columns (fraction of non-empty cells).
const MAX_FP_RATE: f64 = 0.01;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-mask-quality-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}

fn generator() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/masking/generate.py")
}

fn generate(dir: &Path) {
    let faker = Command::new("python3")
        .args(["-c", "import faker"])
        .output()
        .expect("python3 must be installed to run the masking quality test");
    assert!(
        faker.status.success(),
        "the Python module `faker` is missing: run scripts/install-test-deps.sh \
         (it installs tests/clients/python/requirements.txt)"
    );
    let out = Command::new("python3")
        .arg(generator())
        .args(["--out"])
        .arg(dir)
        .args(["--rows", &ROWS.to_string(), "--seed", &SEED.to_string()])
        .output()
        .expect("run generate.py");
    assert!(
        out.status.success(),
        "generate.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Column {
    name: String,
    kind: Option<Kind>,
    pii: bool,
    by: Option<String>,
    pg_type: String,
}

fn read_truth(dir: &Path) -> (Vec<Column>, BTreeMap<String, Vec<Vec<Kind>>>) {
    let text = std::fs::read_to_string(dir.join("truth.json")).expect("truth.json");
    let v: Value = serde_json::from_str(&text).expect("truth.json is JSON");
    let kind = |x: &Value| x.as_str().map(|s| s.parse::<Kind>().expect("known kind"));
    let columns = v["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| Column {
            name: c["name"].as_str().expect("name").to_string(),
            kind: kind(&c["kind"]),
            pii: c["pii"].as_bool().expect("pii"),
            by: c["by"].as_str().map(str::to_string),
            pg_type: c["pg_type"].as_str().unwrap_or("text").to_string(),
        })
        .collect();
    let embedded = v["embedded"]
        .as_object()
        .expect("embedded")
        .iter()
        .map(|(name, rows)| {
            let rows = rows
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| {
                    r.as_array()
                        .expect("kinds")
                        .iter()
                        .filter_map(kind)
                        .collect()
                })
                .collect();
            (name.clone(), rows)
        })
        .collect();
    (columns, embedded)
}

fn read_rows(path: &Path) -> Vec<Vec<String>> {
    let data = std::fs::read(path).expect("corpus.csv");
    let fmt = CsvFormat::default();
    let mut sp = RecordSplitter::csv(&fmt);
    sp.push(&data);
    let mut rows = Vec::new();
    while let Some(rec) = sp.next_record().or_else(|| sp.finish()) {
        let fields = parse_csv_record(&fmt, &rec).expect("valid CSV");
        rows.push(
            fields
                .into_iter()
                .map(|f| String::from_utf8(f.value).expect("UTF-8"))
                .collect(),
        );
    }
    rows
}

/// A finding of kind `found` is right for a cell that holds `truth`.
fn compatible(found: Kind, truth: Kind) -> bool {
    found == truth
        || (found == Kind::Secret && truth.is_secret())
        || (truth == Kind::Secret && found.is_secret())
}

#[derive(Default)]
struct Tally {
    values: u64,
    recalled: u64,
    tp: u64,
    fp: u64,
    missed: Vec<String>,
}

#[test]
fn masking_quality_on_faker_corpus() {
    let dir = temp_dir();
    generate(&dir.0);
    let (columns, embedded) = read_truth(&dir.0);
    let rows = read_rows(&dir.0.join("corpus.csv"));
    let header = &rows[0];
    assert_eq!(header.len(), columns.len());
    assert_eq!(rows.len(), ROWS + 1);

    let mut tally: BTreeMap<Kind, Tally> = BTreeMap::new();
    let mut fp_cells: BTreeMap<&str, (u64, Vec<String>)> = BTreeMap::new();
    let mut non_pii_cells = 0u64;
    let mut non_pii_flagged = 0u64;
    for (r, row) in rows[1..].iter().enumerate() {
        for (c, col) in columns.iter().enumerate() {
            let value = &row[c];
            if value.is_empty() {
                continue;
            }
            let findings = scan(value);
            let truth: Vec<Kind> = match col.by.as_deref() {
                Some("embedded") => embedded[&col.name][r].clone(),
                _ => col.kind.into_iter().collect(),
            };
            if !col.pii {
                non_pii_cells += 1;
                if !findings.is_empty() {
                    non_pii_flagged += 1;
                    let e = fp_cells.entry(&col.name).or_default();
                    e.0 += 1;
                    if e.1.len() < 3 {
                        e.1.push(format!("{} in {value:?}", findings[0].kind));
                    }
                }
                for f in &findings {
                    tally.entry(f.kind).or_default().fp += 1;
                }
                continue;
            }
            // recall on value and embedded columns
            if matches!(col.by.as_deref(), Some("values" | "embedded")) {
                for &t in &truth {
                    let t_entry = tally.entry(t).or_default();
                    t_entry.values += 1;
                    if findings
                        .iter()
                        .any(|f| f.kind == t || (t == Kind::Secret && f.kind.is_secret()))
                    {
                        t_entry.recalled += 1;
                    } else if t_entry.missed.len() < 4 {
                        t_entry.missed.push(format!("{}: {value:?}", col.name));
                    }
                }
            }
            // precision where the truth is known value by value
            let detectable = !matches!(
                col.kind,
                Some(Kind::Name | Kind::Address | Kind::DateOfBirth | Kind::PostalCode)
            );
            if detectable {
                for f in &findings {
                    let e = tally.entry(f.kind).or_default();
                    if truth.iter().any(|&t| compatible(f.kind, t)) {
                        e.tp += 1;
                    } else {
                        e.fp += 1;
                    }
                }
            }
        }
    }

    println!(
        "\nmasking quality: {ROWS} rows, seed {SEED}, generator {}",
        generator().display()
    );
    println!(
        "{:<14} {:>7} {:>8} {:>9} {:>7} {:>6}",
        "kind", "values", "recall", "precision", "TP", "FP"
    );
    for (k, t) in &tally {
        let recall = if t.values > 0 {
            format!("{:.2}%", 100.0 * t.recalled as f64 / t.values as f64)
        } else {
            "-".into()
        };
        let precision = if t.tp + t.fp > 0 {
            format!("{:.2}%", 100.0 * t.tp as f64 / (t.tp + t.fp) as f64)
        } else {
            "-".into()
        };
        println!(
            "{:<14} {:>7} {:>8} {:>9} {:>7} {:>6}",
            k.as_str(),
            t.values,
            recall,
            precision,
            t.tp,
            t.fp
        );
    }
    for (k, t) in &tally {
        if !t.missed.is_empty() {
            println!("  missed {k}: {}", t.missed.join("; "));
        }
    }
    let fp_rate = non_pii_flagged as f64 / non_pii_cells as f64;
    println!(
        "non-PII columns: {non_pii_flagged} of {non_pii_cells} cells flagged (false-positive rate {:.3}%)",
        100.0 * fp_rate
    );
    for (col, (n, examples)) in &fp_cells {
        println!("  {col}: {n} cells, e.g. {}", examples.join("; "));
    }

    // column-name classification of the named columns, PII or not
    let mut misclassified = Vec::new();
    for col in &columns {
        let got = classify_column(&col.name, &col.pg_type);
        let want = if col.by.as_deref() == Some("name") {
            col.kind
        } else {
            None
        };
        if (col.by.as_deref() == Some("name") || !col.pii) && got != want {
            misclassified.push(format!(
                "{} ({}): got {got:?}, want {want:?}",
                col.name, col.pg_type
            ));
        }
    }
    println!("column names: {} misclassified", misclassified.len());

    // the offline twin agrees on the value columns
    let data = std::fs::read(dir.0.join("corpus.csv")).expect("corpus.csv");
    let reports = classify_csv_with(&data[..], &Masker::new(&[5; 32])).expect("classify_csv");
    let mut offline_wrong = Vec::new();
    for (rep, col) in reports.iter().zip(&columns) {
        let want = match col.by.as_deref() {
            Some("values") => col.kind.map(|k| (k, DetectedBy::Values)),
            Some("name") => col.kind.map(|k| (k, DetectedBy::Name)),
            _ => None,
        };
        let got = rep.kind.zip(rep.detected_by);
        let ok = match (col.by.as_deref(), want) {
            (Some("values" | "name"), Some(w)) => got == Some(w),
            (Some("embedded"), _) => got.is_none() && !rep.contains.is_empty(),
            _ => got.is_none(),
        };
        if !ok {
            offline_wrong.push(format!("{}: got {got:?}, want {want:?}", col.name));
        }
        // the sample of a sensitive column is never its raw first value
        if let (Some(sample), Some(_)) = (&rep.sample_masked, rep.kind) {
            let c = columns.iter().position(|x| x.name == col.name).unwrap_or(0);
            if let Some(first) = rows[1..].iter().map(|r| &r[c]).find(|v| !v.is_empty()) {
                assert!(sample != first, "{}: the sample is the raw value", col.name);
            }
        }
    }
    println!(
        "offline classify_csv: {} columns disagree",
        offline_wrong.len()
    );

    let mut failures = Vec::new();
    for k in RECALL_99 {
        let t = tally
            .get(&k)
            .unwrap_or_else(|| panic!("no {k} values in the corpus"));
        let recall = t.recalled as f64 / t.values.max(1) as f64;
        if recall < 0.99 {
            failures.push(format!("recall of {k} is {:.2}% (< 99%)", 100.0 * recall));
        }
    }
    if fp_rate > MAX_FP_RATE {
        failures.push(format!(
            "false-positive rate on non-PII columns is {:.3}% (> 1%)",
            100.0 * fp_rate
        ));
    }
    failures.extend(misclassified.iter().map(|m| format!("column name: {m}")));
    failures.extend(offline_wrong.iter().map(|m| format!("classify_csv: {m}")));
    assert!(
        failures.is_empty(),
        "masking quality targets missed:\n  {}",
        failures.join("\n  ")
    );
}
