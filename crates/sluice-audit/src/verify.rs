//! Verification of every chain in a store.
//!
//! Per chain: every checkpoint's signature; the start (after the latest
//! `cut` checkpoint, else seq 1); then each record in seq order: no gap,
//! body digest, body consistent with the header and the stored columns, a
//! body removed only under a retention checkpoint, the MAC chained to the
//! previous record, and every checkpoint's MAC equal to its record's. At
//! the end, the head must reach the highest signed checkpoint and, when the
//! writer's local state is given, its seq (truncated tail).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::chain::{self, ChainKeys, ChainState, Checkpoint};
use crate::event::{EventBody, IndexFields};
use crate::store::{Entry, Store, StoredRecord};
use crate::util::ulid_time;

/// A chain that verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Chain id.
    pub chain: String,
    /// First seq checked (after the latest cut).
    pub first_seq: u64,
    /// Head seq.
    pub head_seq: u64,
    /// Records checked.
    pub records: u64,
    /// Of which only the header remains (retention).
    pub removed_bodies: u64,
    /// Of which were read from the local spool (not yet in the store).
    pub from_spool: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Seq of the highest checkpoint.
    pub last_checkpoint_seq: u64,
    /// Seq where verification started (the latest cut), 0 if none.
    pub cut_seq: u64,
}

/// All chains verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Per chain.
    pub chains: Vec<ChainReport>,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("chain {chain} seq {seq} (ulid {ulid}): {what}")]
pub struct Failure {
    /// Chain id.
    pub chain: String,
    /// Seq of the bad (or first missing) record; 0 when not about one record.
    pub seq: u64,
    /// Its ULID (`-` when unknown).
    pub ulid: String,
    /// What is wrong.
    pub what: String,
}

/// What the verifier may also look at on the writer's host.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// Spooled entries not yet in the store (they extend the chain).
    pub spool: Vec<Entry>,
    /// The writer's state: (chain, head seq).
    pub heads: Vec<(String, u64)>,
}

fn fail(chain: &str, seq: u64, ulid: &str, what: impl Into<String>) -> Failure {
    Failure {
        chain: chain.to_owned(),
        seq,
        ulid: if ulid.is_empty() {
            "-".into()
        } else {
            ulid.to_owned()
        },
        what: what.into(),
    }
}

/// Verify every chain in `store` (and every chain `keys` names).
pub fn verify(
    store: &mut dyn Store,
    keys: &[ChainKeys],
    local: Option<&Local>,
) -> Result<Report, Failure> {
    let mut chains: Vec<String> = store
        .chains()
        .map_err(|e| fail("-", 0, "", format!("cannot read the store: {e}")))?
        .into_iter()
        .map(|c| c.chain)
        .collect();
    for k in keys {
        if !chains.contains(&k.chain) {
            chains.push(k.chain.clone());
        }
    }
    if let Some(l) = local {
        for (c, _) in &l.heads {
            if !chains.contains(c) {
                chains.push(c.clone());
            }
        }
    }
    chains.sort();
    let mut report = Report::default();
    for chain in chains {
        report
            .chains
            .push(verify_chain(store, &chain, keys, local)?);
    }
    Ok(report)
}

struct Walk<'a> {
    chain: &'a str,
    st: ChainState,
    checkpoints: BTreeMap<u64, Vec<Checkpoint>>,
    retention: Vec<Checkpoint>,
    report: ChainReport,
}

impl Walk<'_> {
    fn step(&mut self, r: &StoredRecord) -> Result<(), Failure> {
        let rec = &r.record;
        let f = |what: String| fail(self.chain, rec.seq, &rec.ulid, what);
        if rec.seq <= self.st.seq {
            return Err(f(format!(
                "duplicate or out-of-order record after seq {}",
                self.st.seq
            )));
        }
        if rec.seq > self.st.seq + 1 {
            let first = self.st.seq + 1;
            return Err(fail(
                self.chain,
                first,
                "",
                if rec.seq - 1 == first {
                    format!("record {first} is missing (deleted)")
                } else {
                    format!("records {first}..{} are missing (deleted)", rec.seq - 1)
                },
            ));
        }
        if ulid_time(&rec.ulid) != Some(rec.time_ms) {
            return Err(f("time does not match the ULID (changed)".into()));
        }
        match &rec.body {
            Some(body) => {
                if chain::sha256(body.as_bytes()).as_slice() != rec.digest.as_slice() {
                    return Err(f("body changed (digest mismatch)".into()));
                }
                let ev: EventBody =
                    serde_json::from_str(body).map_err(|e| f(format!("body unreadable: {e}")))?;
                if ev.code() != rec.code || ev.environment() != rec.environment {
                    return Err(f(
                        "header does not match the body (code or environment changed)".into(),
                    ));
                }
                let want = ev.index();
                if want != r.index {
                    return Err(f(format!(
                        "stored columns do not match the body: {}",
                        diff(&want, &r.index)
                    )));
                }
            }
            None => {
                let covered = self.retention.iter().any(|c| {
                    c.environment.as_deref() == Some(rec.environment.as_str())
                        && c.before_ms.is_some_and(|b| rec.time_ms < b)
                        && c.seq >= rec.seq
                });
                if !covered {
                    return Err(f(
                        "body removed without a retention checkpoint covering it".into()
                    ));
                }
                let empty = IndexFields {
                    code: rec.code.clone(),
                    environment: rec.environment.clone(),
                    ..IndexFields::default()
                };
                if r.index != empty {
                    return Err(f(format!(
                        "stored columns changed: {}",
                        diff(&empty, &r.index)
                    )));
                }
                self.report.removed_bodies += 1;
            }
        }
        self.st.advance(rec).map_err(|w| {
            f(format!(
                "{w}: the record was changed, inserted or reordered"
            ))
        })?;
        if let Some(cks) = self.checkpoints.get(&rec.seq) {
            for c in cks {
                if c.mac != rec.mac {
                    return Err(f(format!(
                        "{} checkpoint at this seq does not match the record",
                        c.reason
                    )));
                }
            }
        }
        self.report.records += 1;
        Ok(())
    }
}

fn diff(want: &IndexFields, got: &IndexFields) -> String {
    let pairs = [
        ("code", &want.code, &got.code),
        ("environment", &want.environment, &got.environment),
        ("principal", &want.principal, &got.principal),
        ("target", &want.target, &got.target),
        ("session", &want.session, &got.session),
        ("decision", &want.decision, &got.decision),
        ("fingerprint", &want.fingerprint, &got.fingerprint),
    ];
    pairs
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(n, a, b)| format!("{n} is {b:?}, body says {a:?}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn verify_chain(
    store: &mut dyn Store,
    chain: &str,
    keys: &[ChainKeys],
    local: Option<&Local>,
) -> Result<ChainReport, Failure> {
    let read_err = |e: crate::AuditError| fail(chain, 0, "", format!("cannot read the store: {e}"));
    let k = keys.iter().find(|k| k.chain == chain).ok_or_else(|| {
        fail(
            chain,
            0,
            "",
            "no initial key for this chain (give the key file with --key-file)",
        )
    })?;
    let cks = store.checkpoints(chain).map_err(read_err)?;
    for c in &cks {
        if c.chain != chain || !chain::verify_checkpoint(c, &k.public) {
            return Err(fail(
                chain,
                c.seq,
                "",
                format!("{} checkpoint: bad signature", c.reason),
            ));
        }
    }
    let cut = cks
        .iter()
        .filter(|c| c.reason == "cut")
        .max_by_key(|c| c.seq);
    let mut st = ChainState::new(chain, k.initial);
    if let Some(c) = cut {
        st.seq = c.seq;
        st.key = chain::key_at(&k.initial, c.seq + 1);
        st.mac = c
            .mac
            .clone()
            .try_into()
            .map_err(|_| fail(chain, c.seq, "", "cut checkpoint: bad MAC length"))?;
    }
    let mut by_seq: BTreeMap<u64, Vec<Checkpoint>> = BTreeMap::new();
    for c in &cks {
        if c.seq > st.seq {
            by_seq.entry(c.seq).or_default().push(c.clone());
        }
    }
    let mut walk = Walk {
        chain,
        report: ChainReport {
            chain: chain.to_owned(),
            first_seq: st.seq + 1,
            cut_seq: st.seq,
            checkpoints: cks.len() as u64,
            last_checkpoint_seq: cks.iter().map(|c| c.seq).max().unwrap_or(0),
            ..ChainReport::default()
        },
        retention: cks
            .iter()
            .filter(|c| c.reason == "retention")
            .cloned()
            .collect(),
        checkpoints: by_seq,
        st,
    };
    loop {
        let rows = store
            .read_chain(chain, walk.st.seq, 1000)
            .map_err(read_err)?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            walk.step(r)?;
        }
    }
    // Records a search cannot find are hidden from an investigation even
    // though the chain holds them.
    if let Some((seq, what)) = store.search_index_problem(chain).map_err(read_err)? {
        return Err(fail(chain, seq, "", what));
    }
    let mut last_ckpt = walk.report.last_checkpoint_seq;
    if let Some(l) = local {
        for e in &l.spool {
            match e {
                Entry::Record(r) if r.chain == chain && r.seq > walk.st.seq => {
                    let ev = r.event().ok().flatten();
                    let sr = StoredRecord {
                        index: ev.map(|e| e.index()).unwrap_or_default(),
                        record: r.clone(),
                    };
                    walk.step(&sr)?;
                    walk.report.from_spool += 1;
                }
                Entry::Checkpoint(c) if c.chain == chain && c.seq > walk.st.seq => {
                    if !chain::verify_checkpoint(c, &k.public) {
                        return Err(fail(chain, c.seq, "", "spooled checkpoint: bad signature"));
                    }
                    last_ckpt = last_ckpt.max(c.seq);
                }
                Entry::Checkpoint(c)
                    if c.chain == chain
                        && c.seq == walk.st.seq
                        && c.seq > 0
                        && c.mac != walk.st.mac =>
                {
                    return Err(fail(
                        chain,
                        c.seq,
                        "",
                        "spooled checkpoint does not match the record",
                    ));
                }
                _ => {}
            }
        }
    }
    let head = walk.st.seq;
    if last_ckpt > head {
        return Err(fail(
            chain,
            head + 1,
            "",
            format!("truncated: a signed checkpoint covers seq {last_ckpt} but the trail ends at seq {head}"),
        ));
    }
    if let Some(l) = local {
        if let Some((_, s)) = l.heads.iter().find(|(c, _)| c == chain) {
            if *s > head {
                return Err(fail(
                    chain,
                    head + 1,
                    "",
                    format!("truncated: the writer's state is at seq {s} but the trail ends at seq {head}"),
                ));
            }
        }
    }
    walk.report.head_seq = head;
    walk.report.last_checkpoint_seq = last_ckpt;
    Ok(walk.report)
}

/// What the writer left in `data_dir` that the verifier can use: the
/// spool (records not yet in the store) and the state file (the head, to
/// detect a truncated tail after the last checkpoint).
pub fn local_from_data_dir(data_dir: &std::path::Path) -> Result<Local, crate::AuditError> {
    let dir = crate::audit_dir(data_dir);
    let spool = crate::spool::read_all(&dir.join("spool"))?;
    let heads = match chain::load_state(&dir.join("state"))? {
        Some(s) => vec![(s.chain, s.seq)],
        None => Vec::new(),
    };
    Ok(Local { spool, heads })
}
