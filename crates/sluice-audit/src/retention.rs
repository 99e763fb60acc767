//! Retention that keeps the rest of the trail verifiable.
//!
//! Step 1, per environment: a signed `retention` checkpoint (environment,
//! cutoff, head seq and MAC) is stored, then the bodies of that
//! environment's records older than the cutoff are removed. The record
//! header (seq, ULID, time, code, environment, body digest, MAC) stays, so
//! the chain still verifies; the verifier accepts a missing body only when
//! a retention checkpoint covers it.
//!
//! Step 2: the longest prefix of body-less records is deleted outright
//! after a signed `cut` checkpoint at its last seq (with that record's
//! MAC); verification starts after the latest cut.

use serde::Serialize;

use crate::chain::{Checkpoint, Signer};
use crate::store::Store;
use crate::AuditError;

/// What retention did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Bodies removed.
    pub removed: u64,
    /// Records deleted by a cut.
    pub deleted: u64,
    /// Seq of the new cut, if one was made.
    pub cut: Option<u64>,
    /// Environments whose bodies were removed.
    pub environments: Vec<String>,
}

/// Apply `rules` (environment or `*`, age in ms) to `chain` as of `now_ms`.
pub fn apply(
    store: &mut dyn Store,
    signer: &Signer,
    chain: &str,
    rules: &[(String, i64)],
    now_ms: i64,
) -> Result<RetentionReport, AuditError> {
    let mut report = RetentionReport::default();
    let Some((head, head_mac)) = store.head(chain)? else {
        return Ok(report);
    };
    for env in store.environments(chain)? {
        let rule = rules
            .iter()
            .find(|(e, _)| *e == env)
            .or_else(|| rules.iter().find(|(e, _)| e == "*"));
        let Some((_, age)) = rule else {
            continue;
        };
        let before = now_ms.saturating_sub(*age);
        if store.count_removable(chain, &env, before, head)? == 0 {
            continue;
        }
        let mut c = Checkpoint {
            chain: chain.to_owned(),
            seq: head,
            mac: head_mac.clone(),
            time_ms: now_ms,
            reason: "retention".into(),
            environment: Some(env.clone()),
            before_ms: Some(before),
            signature: Vec::new(),
        };
        signer.sign(&mut c);
        // The checkpoint first: a crash between the two leaves an unused
        // checkpoint, never a removed body without one.
        store.put_checkpoint(&c)?;
        report.removed += store.remove_bodies(chain, &env, before, head)?;
        report.environments.push(env);
    }
    let cut_to = match store.first_with_body(chain)? {
        Some(first) => first.saturating_sub(1),
        None => head,
    };
    let current_cut = store
        .checkpoints(chain)?
        .iter()
        .filter(|c| c.reason == "cut")
        .map(|c| c.seq)
        .max()
        .unwrap_or(0);
    if cut_to > current_cut {
        let mac = store.mac_at(chain, cut_to)?.ok_or_else(|| {
            AuditError::Corrupt(format!("chain {chain}: record {cut_to} is missing"))
        })?;
        let mut c = Checkpoint {
            chain: chain.to_owned(),
            seq: cut_to,
            mac,
            time_ms: now_ms,
            reason: "cut".into(),
            environment: None,
            before_ms: None,
            signature: Vec::new(),
        };
        signer.sign(&mut c);
        store.put_checkpoint(&c)?;
        report.deleted = store.delete_through(chain, cut_to)?;
        report.cut = Some(cut_to);
    }
    Ok(report)
}
