//! `sluice audit verify|search|export` and `sluice usage` against a data
//! directory filled through the library.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use sluice_audit::event::*;
use sluice_audit::{AuditConfig, AuditWriter};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn who(name: &str, kind: &str, behalf: Option<&str>) -> Actor {
    Actor {
        name: name.into(),
        kind: kind.into(),
        on_behalf_of: behalf.map(Into::into),
    }
}

/// 20 reads of users.email by alice (masked), one denied DROP, one
/// INSERT … SELECT into training_set by an agent for alice.
fn fill(dir: &Path) {
    let cfg = AuditConfig {
        checkpoint_every: 5,
        ..AuditConfig::default()
    };
    let w = AuditWriter::start(&cfg, dir).unwrap();
    let sink = w.sink();
    for i in 0..20 {
        sink.record(EventBody::Statement(Statement {
            session: "s1".into(),
            principal: who("alice", "human", None).into(),
            target: "app-prod".into(),
            environment: "production".into(),
            fingerprint: "fp1".into(),
            normalized: format!("SELECT email FROM users WHERE id = $1 -- {i}").into(),
            kind: "select".into(),
            tables_read: vec!["users".into()].into(),
            columns_read: vec!["users.email".into()].into(),
            masked: vec![MaskedColumn {
                column: "users.email".into(),
                detector: "email".into(),
            }],
            rows_returned: 1,
            bytes_to_client: 30,
            ..Statement::default()
        }))
        .unwrap();
    }
    sink.record(EventBody::Statement(Statement {
        principal: who("bot", "agent", Some("alice")).into(),
        target: "app-prod".into(),
        environment: "production".into(),
        normalized: "DROP TABLE users".into(),
        kind: "drop".into(),
        decision: Decision::Deny,
        rule: Some("no-drop".into()),
        tables_written: vec!["users".into()].into(),
        ..Statement::default()
    }))
    .unwrap();
    sink.record(EventBody::Statement(Statement {
        principal: who("bot", "agent", Some("alice")).into(),
        target: "ml-prod".into(),
        environment: "production".into(),
        fingerprint: "fp-ins".into(),
        normalized: "INSERT INTO training_set SELECT * FROM users".into(),
        kind: "insert".into(),
        tables_read: vec!["users".into()].into(),
        tables_written: vec!["training_set".into()].into(),
        rows_affected: 20,
        lineage: Some(Lineage {
            kind: "insert_select".into(),
            sources: vec!["users".into()],
            destination: "training_set".into(),
        }),
        ..Statement::default()
    }))
    .unwrap();
    sink.flush_blocking(true, Duration::from_secs(30)).unwrap();
    w.shutdown().unwrap();
}

#[test]
fn verify_passes_then_names_the_tampered_record() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let d = dir.path().to_str().unwrap();
    let o = sluice(&["audit", "verify", "--data-dir", d]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("audit trail intact: 1 chain(s)"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("22 records"), "{}", stdout(&o));
    // Every 5 records (the test config) and at shutdown.
    assert!(
        stdout(&o).contains("5 signed checkpoints (last at seq 22)"),
        "{}",
        stdout(&o)
    );

    let o = sluice(&["audit", "verify", "--data-dir", d, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["intact"], true);

    let db = rusqlite_free_update(dir.path());
    assert!(db);
    let o = sluice(&["audit", "verify", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("seq 4 ") && err.contains("ulid ") && err.contains("chain "),
        "{err}"
    );

    // A data dir that does not exist is an error, not an empty "intact" trail.
    let o = sluice(&["audit", "verify", "--data-dir", "/nonexistent/sluice"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Tamper through the library's own SQLite handle.
fn rusqlite_free_update(dir: &Path) -> bool {
    let mut s = sluice_audit::SqliteStore::open_existing(&dir.join("audit/audit.db")).unwrap();
    s.edit_records(|all| all.retain(|(_, r)| r.seq != 4))
        .is_ok()
}

#[test]
fn search_text_and_json_with_cursor() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let d = dir.path().to_str().unwrap();
    let o = sluice(&["audit", "search", "--data-dir", d, "--decision", "deny"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("TIME") && lines[0].contains("PRINCIPAL"));
    assert!(lines[1].contains("bot") && lines[1].contains("DROP TABLE users"));
    // Aligned: the SUMMARY column starts at the same offset.
    assert_eq!(lines[0].find("SUMMARY"), lines[1].find("DROP"));

    let o = sluice(&[
        "audit",
        "search",
        "--data-dir",
        d,
        "--principal",
        "alice",
        "--limit",
        "15",
        "--format",
        "json",
    ]);
    let page: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(page["rows"].as_array().unwrap().len(), 15);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let o = sluice(&[
        "audit",
        "search",
        "--data-dir",
        d,
        "--principal",
        "alice",
        "--limit",
        "15",
        "--format",
        "json",
        "--cursor",
        &cursor,
    ]);
    let page: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(page["rows"].as_array().unwrap().len(), 5);
    assert!(page["next_cursor"].is_null());

    let o = sluice(&["audit", "search", "--data-dir", d, "--since", "yesterday"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--since"));
}

#[test]
fn export_jsonl_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let d = dir.path().to_str().unwrap();
    let out = dir.path().join("out.jsonl");
    let o = sluice(&[
        "audit",
        "export",
        "--data-dir",
        d,
        "--format",
        "jsonl",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 22);
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    let o = sluice(&[
        "audit",
        "export",
        "--data-dir",
        d,
        "--format",
        "csv",
        "--column",
        "users.email",
    ]);
    assert!(o.status.success());
    let csv = stdout(&o);
    assert_eq!(csv.lines().count(), 21, "header + 20");
    assert!(csv.starts_with("time,chain,seq,ulid,code"));
}

#[test]
fn usage_and_lineage() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let d = dir.path().to_str().unwrap();
    let o = sluice(&[
        "usage",
        "--data-dir",
        d,
        "--column",
        "users.email",
        "--environment",
        "production",
        "--since",
        "30d",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["principal"], "alice");
    assert_eq!(rows[0]["masked"], true);
    assert_eq!(rows[0]["reads"], 20);

    // BYTES (the 11th column) is a table's: column rows show `-`.
    let bytes_of = |args: &[&str]| -> Vec<String> {
        let o = sluice(args);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        assert!(text.starts_with("PRINCIPAL"), "{text}");
        text.lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(10).unwrap_or_default().to_owned())
            .collect()
    };
    let table = bytes_of(&["usage", "--data-dir", d, "--table", "users"]);
    assert!(
        table.iter().all(|b| b.parse::<u64>().is_ok()) && table.contains(&"600".to_owned()),
        "{table:?}"
    );
    let column = bytes_of(&["usage", "--data-dir", d, "--column", "users.email"]);
    assert!(
        !column.is_empty() && column.iter().all(|b| b == "-"),
        "{column:?}"
    );

    let o = sluice(&[
        "usage",
        "lineage",
        "training_set",
        "--data-dir",
        d,
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let edges: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &edges.as_array().unwrap()[0];
    assert_eq!(
        (
            e["source"].as_str(),
            e["principal"].as_str(),
            e["principal_kind"].as_str(),
            e["on_behalf_of"].as_str()
        ),
        (Some("users"), Some("bot"), Some("agent"), Some("alice"))
    );
    let o = sluice(&["usage", "lineage", "training_set", "--data-dir", d]);
    assert!(
        stdout(&o).contains("users") && stdout(&o).contains("bot (agent)"),
        "{}",
        stdout(&o)
    );
}

/// `tools/verify_trail.py --require-signatures` on a dump: exit status and
/// what it printed.
fn verify_trail(key_file: &Path, dump: &Path) -> (Option<i32>, String) {
    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tools/verify_trail.py"
        ))
        .args(["--require-signatures", "--key-file"])
        .args([key_file, dump])
        .output()
        .expect("run python3");
    (o.status.code(), format!("{}{}", stdout(&o), stderr(&o)))
}

/// `sluice audit dump` gives what a verifier other than Sluice needs, and
/// `tools/verify_trail.py` (Python's standard library and `cryptography`)
/// proves the trail intact, then names each kind of tampering.
#[test]
fn a_dump_verifies_without_sluice_and_names_tampering() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let d = dir.path().to_str().unwrap();
    let dump = dir.path().join("trail.jsonl");
    let o = sluice(&[
        "audit",
        "dump",
        "--data-dir",
        d,
        "--output",
        dump.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("dumped 22 records and 5 checkpoints of 1 chain(s)"),
        "{}",
        stderr(&o)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&dump)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let key_file = dir.path().join("audit/initial.key");
    let check = |lines: &[serde_json::Value]| -> (Option<i32>, String) {
        let path = dir.path().join("changed.jsonl");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        verify_trail(&key_file, &path)
    };
    let (code, out) = check(&lines);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("audit trail intact: 1 chain(s)"), "{out}");
    assert!(out.contains("seq 1..22, 22 records"), "{out}");

    let record = |seq: u64| {
        lines
            .iter()
            .position(|l| l["type"] == "record" && l["seq"] == seq)
            .unwrap()
    };
    let sha256 = |s: &str| sluice_audit::util::hex(&sluice_audit::chain::sha256(s.as_bytes()));
    type Change<'a> = Box<dyn Fn(&mut Vec<serde_json::Value>) + 'a>;
    let cases: Vec<(&str, Change, &[&str])> = vec![
        (
            "a changed body",
            Box::new(|l| {
                let body = l[record(4)]["body"]
                    .as_str()
                    .unwrap()
                    .replace("alice", "mallory");
                l[record(4)]["body"] = body.into();
            }),
            &["seq 4 (ulid", "body changed (digest mismatch)"],
        ),
        (
            "a changed body with its digest recomputed",
            Box::new(move |l| {
                let body = l[record(4)]["body"]
                    .as_str()
                    .unwrap()
                    .replace("alice", "mallory");
                l[record(4)]["digest"] = sha256(&body).into();
                l[record(4)]["body"] = body.into();
            }),
            &["seq 4 (ulid", "MAC mismatch"],
        ),
        (
            "a deleted record",
            Box::new(|l| {
                l.remove(record(7));
            }),
            &["seq 7: record 7 is missing (deleted)"],
        ),
        (
            "two records swapped (their seq kept)",
            Box::new(|l| {
                let (a, b) = (record(3), record(4));
                let (ra, rb) = (l[a].clone(), l[b].clone());
                l[a] = rb;
                l[a]["seq"] = 3.into();
                l[b] = ra;
                l[b]["seq"] = 4.into();
            }),
            &["seq 3 (ulid", "MAC mismatch"],
        ),
        (
            "a record inserted (later ones renumbered)",
            Box::new(move |l| {
                let at = record(6);
                for x in l.iter_mut().filter(|x| x["type"] == "record") {
                    let seq = x["seq"].as_u64().unwrap();
                    if seq >= 6 {
                        x["seq"] = (seq + 1).into();
                    }
                }
                let mut forged = l[record(5)].clone();
                let body = forged["body"].as_str().unwrap().replace("alice", "mallory");
                forged["digest"] = sha256(&body).into();
                forged["body"] = body.into();
                forged["seq"] = 6.into();
                l.insert(at, forged);
            }),
            &["seq 6 (ulid", "MAC mismatch"],
        ),
        (
            "the tail cut",
            Box::new(|l| {
                l.remove(record(22));
            }),
            &["a signed checkpoint covers seq 22 but the trail ends at seq 21"],
        ),
        (
            "a checkpoint changed",
            Box::new(|l| {
                let c = l.iter().position(|x| x["type"] == "checkpoint").unwrap();
                l[c]["time_ms"] = 0.into();
            }),
            &["count checkpoint: bad signature"],
        ),
    ];
    for (what, change, says) in cases {
        let mut changed = lines.clone();
        change(&mut changed);
        let (code, out) = check(&changed);
        assert_eq!(code, Some(1), "{what}: {out}");
        for says in says {
            assert!(out.contains(says), "{what}: expected {says:?} in {out}");
        }
    }

    // Only the chain asked for, and a clear error for an unknown one.
    let o = sluice(&["audit", "dump", "--data-dir", d, "--chain", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("the store has no chain nope"),
        "{}",
        stderr(&o)
    );
}

/// After retention removed bodies and cut a prefix of the chain, the
/// standalone verifier agrees with `sluice audit verify`.
#[test]
fn a_dump_after_retention_verifies_without_sluice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AuditConfig {
        checkpoint_every: 5,
        retention: [("development".to_string(), "30d".to_string())].into(),
        ..AuditConfig::default()
    };
    let w = AuditWriter::start(&cfg, dir.path()).unwrap();
    // Development first (a prefix that retention can cut), then
    // production mixed with development (bodies removed, records kept).
    for env in ["development"; 6]
        .into_iter()
        .chain(["production", "development"].into_iter().cycle().take(8))
    {
        w.sink()
            .record(EventBody::Statement(Statement {
                principal: who("alice", "human", None).into(),
                target: "app".into(),
                environment: env.into(),
                normalized: "SELECT 1".into(),
                kind: "select".into(),
                ..Statement::default()
            }))
            .unwrap();
    }
    w.sink()
        .flush_blocking(true, Duration::from_secs(30))
        .unwrap();
    let day = 86_400_000;
    let r = w
        .apply_retention(
            sluice_audit::util::now_ms() + 31 * day,
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(r.cut, Some(6), "{r:?}");
    w.shutdown().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = sluice(&["audit", "verify", "--data-dir", d]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = stdout(&o);
    assert!(ours.contains("4 bodies removed by retention"), "{ours}");
    assert!(
        ours.contains("records up to 6 deleted by retention"),
        "{ours}"
    );

    let dump = dir.path().join("trail.jsonl");
    let o = sluice(&[
        "audit",
        "dump",
        "--data-dir",
        d,
        "-o",
        dump.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (code, theirs) = verify_trail(&dir.path().join("audit/initial.key"), &dump);
    assert_eq!(code, Some(0), "{theirs}");
    // Records 7..14 and the retention event after them.
    assert!(
        theirs.contains("seq 7..15, 9 records; 4 bodies removed by retention; records up to 6 deleted by retention"),
        "{theirs}\nsluice audit verify said:\n{ours}"
    );
}
