//! A block of the SQLite store: up to [`BLOCK_MAX`] consecutive records of
//! one chain in one BLOB, with the searchable fields of each record next to
//! it. One row and a handful of key rows per block instead of a row and
//! five index entries per event: the store's cost per event falls to a
//! fraction (see `bench/README.md`).
//!
//! Layout: [`VERSION`], then per record: seq, time_ms, shape, tpl (`u64`/
//! `i64` little-endian; 0 for no shape or template), ulid, code,
//! environment, principal, target, session, decision, fingerprint, digest,
//! mac (each a `u32` little-endian length and the bytes), then a flag byte
//! (1: a body follows, as a length and the bytes).

use crate::event::{IndexFields, Record};
use crate::AuditError;

/// Records per block at most.
pub const BLOCK_MAX: usize = 256;
const VERSION: u8 = 1;

/// One record as a block holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockRecord {
    /// Position in the chain.
    pub seq: u64,
    /// ULID.
    pub ulid: String,
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    /// Event code.
    pub code: String,
    /// Environment.
    pub environment: String,
    /// Principal (empty once retention removed the body).
    pub principal: String,
    /// Target.
    pub target: String,
    /// Session id.
    pub session: String,
    /// Decision.
    pub decision: String,
    /// Fingerprint.
    pub fingerprint: String,
    /// SHA-256 of the whole body.
    pub digest: Vec<u8>,
    /// Chained MAC.
    pub mac: Vec<u8>,
    /// The shape whose search text and objects stand for this event's.
    pub shape: Option<i64>,
    /// The template `body` fills in (then `body` holds only its values).
    pub tpl: Option<i64>,
    /// The body (or its template's values); `None` once removed.
    pub body: Option<String>,
}

impl BlockRecord {
    /// The searchable fields, as verify compares them with the body.
    pub fn index(&self) -> IndexFields {
        IndexFields {
            code: self.code.clone(),
            environment: self.environment.clone(),
            principal: self.principal.clone(),
            target: self.target.clone(),
            session: self.session.clone(),
            decision: self.decision.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// The record, with `body` as stored (a template's values are joined by
    /// the caller, who has the template).
    pub fn record(&self, chain: &str, body: Option<String>) -> Record {
        Record {
            chain: chain.to_owned(),
            seq: self.seq,
            ulid: self.ulid.clone(),
            time_ms: self.time_ms,
            code: self.code.clone(),
            environment: self.environment.clone(),
            digest: self.digest.clone(),
            body,
            mac: self.mac.clone(),
        }
    }
}

/// A record to encode, borrowed (the writer's path: no copies); the
/// fields are [`BlockRecord`]'s.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub ulid: &'a str,
    pub time_ms: i64,
    pub code: &'a str,
    pub environment: &'a str,
    pub principal: &'a str,
    pub target: &'a str,
    pub session: &'a str,
    pub decision: &'a str,
    pub fingerprint: &'a str,
    pub digest: &'a [u8],
    pub mac: &'a [u8],
    pub shape: Option<i64>,
    pub tpl: Option<i64>,
    pub body: Option<&'a str>,
}

impl BlockRecord {
    /// Borrowed, for [`encode_record`] and [`add_keys`].
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            seq: self.seq,
            ulid: &self.ulid,
            time_ms: self.time_ms,
            code: &self.code,
            environment: &self.environment,
            principal: &self.principal,
            target: &self.target,
            session: &self.session,
            decision: &self.decision,
            fingerprint: &self.fingerprint,
            digest: &self.digest,
            mac: &self.mac,
            shape: self.shape,
            tpl: self.tpl,
            body: self.body.as_deref(),
        }
    }
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    // Bodies are under the spool's 64 MiB entry limit, so lengths fit.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Append one record's encoding (a block is [`VERSION`] and records).
pub fn encode_record(r: &RecordRef<'_>, out: &mut Vec<u8>) {
    if out.is_empty() {
        out.push(VERSION);
    }
    out.extend_from_slice(&r.seq.to_le_bytes());
    out.extend_from_slice(&r.time_ms.to_le_bytes());
    out.extend_from_slice(&r.shape.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&r.tpl.unwrap_or(0).to_le_bytes());
    for s in [
        r.ulid,
        r.code,
        r.environment,
        r.principal,
        r.target,
        r.session,
        r.decision,
        r.fingerprint,
    ] {
        put(out, s.as_bytes());
    }
    put(out, r.digest);
    put(out, r.mac);
    match r.body {
        Some(b) => {
            out.push(1);
            put(out, b.as_bytes());
        }
        None => out.push(0),
    }
}

/// Encode a whole block.
pub fn encode(records: &[BlockRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + records.len() * 320);
    out.push(VERSION);
    for r in records {
        encode_record(&r.as_ref(), &mut out);
    }
    out
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AuditError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(AuditError::Corrupt("audit block cut short".into()));
        };
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, AuditError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn bytes(&mut self) -> Result<&'a [u8], AuditError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        self.take(u32::from_le_bytes(b) as usize)
    }
    fn string(&mut self) -> Result<String, AuditError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| AuditError::Corrupt("audit block holds text that is not UTF-8".into()))
    }
}

/// Decode a block.
pub fn decode(data: &[u8]) -> Result<Vec<BlockRecord>, AuditError> {
    match data.first() {
        Some(&VERSION) => {}
        Some(v) => {
            return Err(AuditError::Corrupt(format!(
                "audit block of unknown version {v}"
            )))
        }
        None => return Ok(Vec::new()),
    }
    let mut r = Reader { data, at: 1 };
    let mut out = Vec::new();
    while r.at < data.len() {
        let seq = r.u64()?;
        let time_ms = r.u64()? as i64;
        let shape = Some(r.u64()? as i64).filter(|&s| s != 0);
        let tpl = Some(r.u64()? as i64).filter(|&s| s != 0);
        let ulid = r.string()?;
        let code = r.string()?;
        let environment = r.string()?;
        let principal = r.string()?;
        let target = r.string()?;
        let session = r.string()?;
        let decision = r.string()?;
        let fingerprint = r.string()?;
        let digest = r.bytes()?.to_vec();
        let mac = r.bytes()?.to_vec();
        let body = match r.take(1)?[0] {
            0 => None,
            _ => Some(r.string()?),
        };
        out.push(BlockRecord {
            seq,
            ulid,
            time_ms,
            code,
            environment,
            principal,
            target,
            session,
            decision,
            fingerprint,
            digest,
            mac,
            shape,
            tpl,
            body,
        });
    }
    Ok(out)
}

/// The search keys of a block's records: what `audit_block_keys` holds for
/// it. One letter for the field, then the value.
pub fn keys_of<'a>(records: impl IntoIterator<Item = &'a BlockRecord>) -> Vec<String> {
    let mut keys = std::collections::BTreeSet::new();
    for r in records {
        add_keys(&r.as_ref(), &mut |k| {
            keys.insert(k.to_owned());
        });
    }
    keys.into_iter().collect()
}

/// Call `f` with each search key of one record (repeats possible).
pub fn add_keys(r: &RecordRef<'_>, f: &mut dyn FnMut(&str)) {
    let mut buf = String::with_capacity(64);
    // `b` (an environment with bodies, for retention) also when empty:
    // retention's `*` covers events without an environment.
    let mut key = |letter: char, v: &str| {
        if !v.is_empty() || letter == 'b' {
            buf.clear();
            buf.push(letter);
            buf.push_str(v);
            f(&buf);
        }
    };
    key('c', r.code);
    key('e', r.environment);
    key('p', r.principal);
    key('t', r.target);
    key('s', r.session);
    key('d', r.decision);
    if r.body.is_some() {
        key('b', r.environment);
    }
    if let Some(shape) = r.shape {
        key('h', &shape.to_string());
    }
}

/// What a key's letter stands for.
pub fn key_field(letter: char) -> &'static str {
    match letter {
        'c' => "event code",
        'e' => "environment",
        'p' => "principal",
        't' => "target",
        's' => "session",
        'd' => "decision",
        'b' => "environment (for retention)",
        'h' => "statement shape (text, tables and columns)",
        _ => "search key",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_refuse_damage() {
        let a = BlockRecord {
            seq: 7,
            ulid: "01J0000000000000000000000A".into(),
            time_ms: 1_700_000_000_000,
            code: "db.statement".into(),
            environment: "production".into(),
            principal: "alice".into(),
            target: "app".into(),
            session: "s1".into(),
            decision: "allow".into(),
            fingerprint: "abc".into(),
            digest: vec![1; 32],
            mac: vec![2; 32],
            shape: Some(3),
            tpl: Some(4),
            body: Some("[1,2]".into()),
        };
        let b = BlockRecord {
            seq: 8,
            body: None,
            shape: None,
            tpl: None,
            principal: String::new(),
            ..a.clone()
        };
        let data = encode(&[a.clone(), b.clone()]);
        assert_eq!(decode(&data).unwrap(), vec![a.clone(), b.clone()]);
        let first = encode(std::slice::from_ref(&a)).len();
        for cut in (2..data.len()).filter(|&c| c != first) {
            assert!(decode(&data[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&[9]).is_err());
        let keys = keys_of([&a, &b]);
        assert!(keys.contains(&"palice".to_owned()));
        assert!(keys.contains(&"h3".to_owned()));
        assert!(keys.contains(&"bproduction".to_owned()));
    }
}
