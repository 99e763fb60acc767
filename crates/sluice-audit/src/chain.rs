//! The hash chain and checkpoints.
//!
//! `mac_s = HMAC-SHA256(key_s, canonical(record_s) ‖ mac_{s-1})` with
//! `mac_0` = 32 zero bytes, `key_1` = the chain's initial key and
//! `key_{s+1} = SHA-256(key_s)`. The writer keeps only the current key, so
//! whoever takes the host later cannot recompute the MAC of an earlier
//! record (forward security, as in Acra's secure logging).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::event::{hex_bytes, Record};
use crate::util::{hex, unhex};
use crate::AuditError;

/// Key and MAC length.
pub const LEN: usize = 32;

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; LEN] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// The next key of the ratchet.
pub fn ratchet(key: &[u8; LEN]) -> [u8; LEN] {
    sha256(key)
}

/// The key of record `seq` (from 1), from the initial key.
pub fn key_at(initial: &[u8; LEN], seq: u64) -> [u8; LEN] {
    let mut k = *initial;
    for _ in 1..seq {
        k = ratchet(&k);
    }
    k
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Canonical bytes of a record: length-prefixed (u32 big-endian) fields
/// `"sluice-audit-record-v1"`, chain, seq (u64 BE), ulid, time (i64 BE ms),
/// code, environment, SHA-256 of the body. The body enters through its
/// digest, so a record whose body retention removed still verifies.
pub fn canonical_record(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    field(&mut out, b"sluice-audit-record-v1");
    field(&mut out, r.chain.as_bytes());
    field(&mut out, &r.seq.to_be_bytes());
    field(&mut out, r.ulid.as_bytes());
    field(&mut out, &r.time_ms.to_be_bytes());
    field(&mut out, r.code.as_bytes());
    field(&mut out, r.environment.as_bytes());
    field(&mut out, &r.digest);
    out
}

/// `HMAC-SHA256(key, canonical(record) ‖ prev_mac)`.
pub fn record_mac(key: &[u8; LEN], r: &Record, prev_mac: &[u8]) -> [u8; LEN] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(&canonical_record(r));
    ctx.update(prev_mac);
    let mut out = [0u8; LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Where a chain stands: the last record written and the key of the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// Chain id.
    pub chain: String,
    /// Seq of the last record (0 before the first).
    pub seq: u64,
    /// Key for record `seq + 1`.
    pub key: [u8; LEN],
    /// MAC of record `seq` (zeros before the first).
    pub mac: [u8; LEN],
}

impl ChainState {
    /// A new chain.
    pub fn new(chain: &str, initial: [u8; LEN]) -> ChainState {
        ChainState {
            chain: chain.to_owned(),
            seq: 0,
            key: initial,
            mac: [0; LEN],
        }
    }

    /// Seal a record (its seq, digest and header filled): set its MAC and
    /// move the chain on.
    pub fn seal(&mut self, r: &mut Record) {
        r.seq = self.seq + 1;
        let mac = record_mac(&self.key, r, &self.mac);
        r.mac = mac.to_vec();
        self.seq = r.seq;
        self.mac = mac;
        self.key = ratchet(&self.key);
    }

    /// Check that `r` is the next record of this chain and, if so, move on.
    pub fn advance(&mut self, r: &Record) -> Result<(), String> {
        if r.chain != self.chain {
            return Err(format!("belongs to chain {}", r.chain));
        }
        if r.seq != self.seq + 1 {
            return Err(format!("expected seq {}, found {}", self.seq + 1, r.seq));
        }
        let mac = record_mac(&self.key, r, &self.mac);
        // Not secret-dependent timing: the verifier holds the key, the
        // attacker does not observe it.
        if mac.as_slice() != r.mac.as_slice() {
            return Err("MAC mismatch".into());
        }
        self.seq = r.seq;
        self.mac = mac;
        self.key = ratchet(&self.key);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    chain: String,
    seq: u64,
    key: String,
    mac: String,
}

/// Save the writer state atomically (temp file, fsync, rename), mode 0600.
pub fn save_state(path: &Path, s: &ChainState) -> Result<(), AuditError> {
    let json = serde_json::to_vec(&StateFile {
        chain: s.chain.clone(),
        seq: s.seq,
        key: hex(&s.key),
        mac: hex(&s.mac),
    })?;
    write_private_atomic(path, &json)
}

/// Load the writer state, if present.
pub fn load_state(path: &Path) -> Result<Option<ChainState>, AuditError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError::io(path, e)),
    };
    let f: StateFile = serde_json::from_slice(&bytes)
        .map_err(|e| AuditError::Corrupt(format!("{}: {e}", path.display())))?;
    let key =
        key32(&f.key).ok_or_else(|| AuditError::Corrupt(format!("{}: bad key", path.display())))?;
    let mac =
        key32(&f.mac).ok_or_else(|| AuditError::Corrupt(format!("{}: bad mac", path.display())))?;
    Ok(Some(ChainState {
        chain: f.chain,
        seq: f.seq,
        key,
        mac,
    }))
}

/// 32 bytes from hex.
pub fn key32(s: &str) -> Option<[u8; LEN]> {
    unhex(s)?.try_into().ok()
}

/// Write `data` to `path` with mode 0600 via a temp file and rename, fsynced.
pub fn write_private_atomic(path: &Path, data: &[u8]) -> Result<(), AuditError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AuditError::io(&tmp, e))?;
    f.write_all(data).map_err(|e| AuditError::io(&tmp, e))?;
    f.sync_all().map_err(|e| AuditError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| AuditError::io(path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A signed statement about a chain: "record `seq` has MAC `mac`", made
/// every `checkpoint_every` records, on an interval, at shutdown, and by
/// retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Chain id.
    pub chain: String,
    /// Seq of the last record covered.
    pub seq: u64,
    /// MAC of that record.
    #[serde(with = "hex_bytes")]
    pub mac: Vec<u8>,
    /// When it was made, ms since the epoch.
    pub time_ms: i64,
    /// `count`, `interval`, `shutdown`, `retention` (bodies of `environment`
    /// older than `before_ms` removed) or `cut` (records up to `seq` deleted;
    /// verification starts after it).
    pub reason: String,
    /// For `retention`: the environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// For `retention`: the cutoff time.
    #[serde(default)]
    pub before_ms: Option<i64>,
    /// Ed25519 signature over [`canonical_checkpoint`].
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

/// Canonical bytes of a checkpoint (everything but the signature),
/// length-prefixed like [`canonical_record`].
pub fn canonical_checkpoint(c: &Checkpoint) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    field(&mut out, b"sluice-audit-checkpoint-v1");
    field(&mut out, c.chain.as_bytes());
    field(&mut out, &c.seq.to_be_bytes());
    field(&mut out, &c.mac);
    field(&mut out, &c.time_ms.to_be_bytes());
    field(&mut out, c.reason.as_bytes());
    field(&mut out, c.environment.as_deref().unwrap_or("").as_bytes());
    field(&mut out, &c.before_ms.unwrap_or(i64::MIN).to_be_bytes());
    out
}

/// The Ed25519 key a replica signs its checkpoints with.
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(public {})", self.public_hex())
    }
}

impl Signer {
    /// Load the PKCS#8 key at `path`, or create it (mode 0600).
    pub fn load_or_create(path: &Path) -> Result<Signer, AuditError> {
        let der = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| AuditError::Crypto("cannot generate an Ed25519 key".into()))?;
                write_private_atomic(path, doc.as_ref())?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(AuditError::io(path, e)),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| {
            AuditError::Corrupt(format!("{}: not an Ed25519 PKCS#8 key", path.display()))
        })?;
        Ok(Signer { pair })
    }

    /// The public key.
    pub fn public(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// The public key in hex.
    pub fn public_hex(&self) -> String {
        hex(self.pair.public_key().as_ref())
    }

    /// Sign a checkpoint in place.
    pub fn sign(&self, c: &mut Checkpoint) {
        c.signature = self.pair.sign(&canonical_checkpoint(c)).as_ref().to_vec();
    }
}

/// Check a checkpoint's signature.
pub fn verify_checkpoint(c: &Checkpoint, public: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&canonical_checkpoint(c), &c.signature)
        .is_ok()
}

/// What a verifier needs for one chain: the initial key and the public key.
#[derive(Clone, PartialEq, Eq)]
pub struct ChainKeys {
    /// Chain id.
    pub chain: String,
    /// `key_1`.
    pub initial: [u8; LEN],
    /// Ed25519 public key of the checkpoints.
    pub public: Vec<u8>,
}

impl std::fmt::Debug for ChainKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainKeys({}, public {})", self.chain, hex(&self.public))
    }
}

impl ChainKeys {
    /// The key-file line: `<chain> <initial key hex> <public key hex>`.
    pub fn line(&self) -> String {
        format!(
            "{} {} {}\n",
            self.chain,
            hex(&self.initial),
            hex(&self.public)
        )
    }
}

/// Parse a key file: one chain per line, `<chain> <initial key hex>
/// <public key hex>`; `#` comments and blank lines are skipped. Files of
/// several replicas can be concatenated.
pub fn parse_key_file(text: &str) -> Result<Vec<ChainKeys>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let bad = || {
            format!(
                "line {}: expected `<chain> <initial key hex> <public key hex>`",
                i + 1
            )
        };
        if parts.len() != 3 {
            return Err(bad());
        }
        let initial = key32(parts[1]).ok_or_else(bad)?;
        let public = unhex(parts[2]).filter(|p| p.len() == 32).ok_or_else(bad)?;
        out.push(ChainKeys {
            chain: parts[0].to_owned(),
            initial,
            public,
        });
    }
    Ok(out)
}

/// Read a key file.
pub fn read_key_file(path: &Path) -> Result<Vec<ChainKeys>, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuditError::io(path, e))?;
    parse_key_file(&text).map_err(|e| AuditError::Corrupt(format!("{}: {e}", path.display())))
}

/// Append a chain's keys to a key file (mode 0600), fsynced.
pub fn append_key_file(path: &Path, keys: &ChainKeys) -> Result<(), AuditError> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AuditError::io(path, e))?;
    f.write_all(keys.line().as_bytes())
        .map_err(|e| AuditError::io(path, e))?;
    f.sync_all().map_err(|e| AuditError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            chain: "c".into(),
            seq,
            ulid: crate::util::ulid(1000),
            time_ms: 1000,
            code: "admin.action".into(),
            environment: String::new(),
            digest: sha256(b"{}").to_vec(),
            body: Some("{}".into()),
            mac: vec![],
        }
    }

    #[test]
    fn seal_then_advance() {
        let init = [7u8; LEN];
        let mut w = ChainState::new("c", init);
        let mut v = ChainState::new("c", init);
        let mut rs: Vec<Record> = (0..5).map(|_| rec(0)).collect();
        for r in &mut rs {
            w.seal(r);
        }
        for r in &rs {
            v.advance(r).unwrap();
        }
        assert_eq!(v, w);
        assert_eq!(key_at(&init, 6), w.key);
        let mut bad = rs[2].clone();
        bad.time_ms += 1;
        let mut v2 = ChainState::new("c", init);
        v2.advance(&rs[0]).unwrap();
        v2.advance(&rs[1]).unwrap();
        assert!(v2.advance(&bad).is_err());
    }

    #[test]
    fn checkpoint_signature() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::load_or_create(&dir.path().join("k")).unwrap();
        let s2 = Signer::load_or_create(&dir.path().join("k")).unwrap();
        assert_eq!(s.public(), s2.public());
        let mut c = Checkpoint {
            chain: "c".into(),
            seq: 3,
            mac: vec![1; 32],
            time_ms: 5,
            reason: "count".into(),
            environment: None,
            before_ms: None,
            signature: vec![],
        };
        s.sign(&mut c);
        assert!(verify_checkpoint(&c, &s.public()));
        c.seq = 2;
        assert!(!verify_checkpoint(&c, &s.public()));
    }

    #[test]
    fn key_file_roundtrip() {
        let k = ChainKeys {
            chain: "01ABC".into(),
            initial: [9; 32],
            public: vec![3; 32],
        };
        let parsed = parse_key_file(&format!("# keys\n{}", k.line())).unwrap();
        assert_eq!(parsed, vec![k]);
        assert!(parse_key_file("x y").is_err());
    }
}
