//! The spool: append-only segment files in `DATA_DIR/audit/spool/` that
//! hold every sealed entry before it reaches the store.
//!
//! Entry format: `u32` little-endian payload length with the top bit set,
//! the payload's CRC-32 (little-endian), then the payload: a record as [`RECORD_TAG`] and
//! its fields (strings and byte strings as a `u32` little-endian length and
//! the bytes, numbers little-endian: no JSON escaping of a JSON body on
//! the path of every event), or any entry as JSON (checkpoints, and
//! records spooled by earlier versions). A torn tail (crash during a write)
//! fails the length or checksum test and is cut off when the spool is
//! opened. The checksum only finds torn writes (the chain's MACs find
//! tampering), so it is a CRC; entries spooled by earlier versions carry the
//! first 4 bytes of the payload's SHA-256 instead and a length without the
//! top bit, and still read.
//!
//! A new segment is first filled with [`SEGMENT_PREALLOC`] zero bytes and
//! entries are then written over them, as PostgreSQL does with its WAL:
//! the per-batch `fdatasync` then writes data blocks only, with no block
//! allocation or file size change to journal, which halves its cost. The
//! zeros after the last entry read as the end of the spool (a length of
//! 0 is never an entry).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::chain::sha256;
use crate::event::Record;
use crate::store::Entry;
use crate::AuditError;

/// A segment is closed when it grows past this.
pub const SEGMENT_MAX: u64 = 4 << 20;
/// Zero bytes a new segment starts with (entries beyond are appended).
pub const SEGMENT_PREALLOC: u64 = 1 << 20;
/// A fully stored active segment is rotated (and deleted) past this: once
/// its zeros are used up.
const ROTATE_STORED: u64 = SEGMENT_PREALLOC;
const MAX_ENTRY: u32 = 64 << 20;
/// Set in the length of an entry whose checksum is a CRC-32 (lengths stay
/// under [`MAX_ENTRY`], so the bit is free).
const CRC_FLAG: u32 = 1 << 31;

/// One segment file.
#[derive(Debug, Clone)]
struct Segment {
    index: u64,
    path: PathBuf,
    /// Highest seq in it (0 when empty).
    last_seq: u64,
    bytes: u64,
}

/// The spool.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    segments: Vec<Segment>,
    active: Option<File>,
    /// A write failed part way (a full disk): the active segment may end in
    /// a partial entry, cut off before anything else is written after it.
    torn: bool,
}

/// Encode one entry.
pub fn encode(e: &Entry) -> Result<Vec<u8>, AuditError> {
    let mut out = Vec::new();
    encode_into(e, &mut out)?;
    Ok(out)
}

/// Append the encoding of one entry to `out` (the same bytes as
/// [`encode`], without a buffer per entry). On error `out` is unchanged.
pub fn encode_into(e: &Entry, out: &mut Vec<u8>) -> Result<(), AuditError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    match e {
        Entry::Record(r) => encode_record(r, out),
        Entry::Checkpoint(_) => {
            if let Err(err) = serde_json::to_writer(&mut *out, e) {
                out.truncate(start);
                return Err(err.into());
            }
        }
    }
    if out.len() - start - 8 > MAX_ENTRY as usize {
        out.truncate(start);
        return Err(AuditError::Corrupt("an audit event over 64 MiB".into()));
    }
    let len = (out.len() - start - 8) as u32 | CRC_FLAG;
    let sum = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// First payload byte of a record in the binary layout (a JSON payload
/// starts with `{`).
pub const RECORD_TAG: u8 = 1;

fn encode_record(r: &Record, out: &mut Vec<u8>) {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        // MAX_ENTRY (checked after) keeps every length within u32
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.push(RECORD_TAG);
    bytes(out, r.chain.as_bytes());
    out.extend_from_slice(&r.seq.to_le_bytes());
    bytes(out, r.ulid.as_bytes());
    out.extend_from_slice(&r.time_ms.to_le_bytes());
    bytes(out, r.code.as_bytes());
    bytes(out, r.environment.as_bytes());
    bytes(out, &r.digest);
    match &r.body {
        Some(b) => {
            out.push(1);
            bytes(out, b.as_bytes());
        }
        None => out.push(0),
    }
    bytes(out, &r.mac);
}

/// The inverse of [`encode_record`] (`payload` without the tag); `None`
/// when it is not one.
fn decode_record(payload: &[u8]) -> Option<Record> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        fn bytes(&mut self) -> Option<&'a [u8]> {
            let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
            self.take(usize::try_from(n).ok()?)
        }
        fn string(&mut self) -> Option<String> {
            String::from_utf8(self.bytes()?.to_vec()).ok()
        }
    }
    let mut c = Cursor(payload);
    let r = Record {
        chain: c.string()?,
        seq: c.u64()?,
        ulid: c.string()?,
        time_ms: c.u64()? as i64,
        code: c.string()?,
        environment: c.string()?,
        digest: c.bytes()?.to_vec(),
        body: match c.take(1)? {
            [0] => None,
            [1] => Some(c.string()?),
            _ => return None,
        },
        mac: c.bytes()?.to_vec(),
    };
    c.0.is_empty().then_some(r)
}

fn decode(payload: &[u8]) -> Option<Entry> {
    match payload.split_first()? {
        (&RECORD_TAG, rest) => decode_record(rest).map(Entry::Record),
        _ => serde_json::from_slice(payload).ok(),
    }
}

fn seg_name(index: u64) -> String {
    format!("seg-{index:012}.log")
}

/// Parse entries of a buffer; returns the entries with their encoded sizes
/// and the offset where valid data ends.
fn parse(buf: &[u8]) -> (Vec<(Entry, u64)>, usize) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while buf.len() - pos >= 8 {
        let mut len4 = [0u8; 4];
        len4.copy_from_slice(&buf[pos..pos + 4]);
        let word = u32::from_le_bytes(len4);
        let len = word & !CRC_FLAG;
        if len == 0 || len > MAX_ENTRY || buf.len() - pos - 8 < len as usize {
            break;
        }
        let payload = &buf[pos + 8..pos + 8 + len as usize];
        let sum = &buf[pos + 4..pos + 8];
        let intact = if word & CRC_FLAG != 0 {
            crc32fast::hash(payload).to_le_bytes() == sum
        } else {
            sha256(payload)[..4] == *sum
        };
        if !intact {
            break;
        }
        let Some(e) = decode(payload) else {
            break;
        };
        out.push((e, 8 + u64::from(len)));
        pos += 8 + len as usize;
    }
    (out, pos)
}

/// Fill a new, empty segment with [`SEGMENT_PREALLOC`] zero bytes. On a
/// full disk it is left empty: entries are then appended as the disk
/// allows, and a write that does not fit fails as it would have.
fn preallocate(f: &File, path: &Path) {
    let zeros = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < SEGMENT_PREALLOC {
        if let Err(e) = f.write_all_at(&zeros, at) {
            tracing::debug!(file = %path.display(), error = %e, "audit spool: segment not preallocated");
            let _ = f.set_len(0);
            return;
        }
        at += zeros.len() as u64;
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Spool {
    /// Open the spool, calling `visit` for every entry in order. A torn
    /// tail of the last segment is cut off (and logged); damage inside an
    /// earlier segment is an error.
    pub fn open(
        dir: &Path,
        mut visit: impl FnMut(&Entry, u64) -> Result<(), AuditError>,
    ) -> Result<Spool, AuditError> {
        std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        let mut segments = Vec::new();
        for ent in std::fs::read_dir(dir).map_err(|e| AuditError::io(dir, e))? {
            let ent = ent.map_err(|e| AuditError::io(dir, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(index) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            segments.push(Segment {
                index,
                path: ent.path(),
                last_seq: 0,
                bytes: 0,
            });
        }
        segments.sort_by_key(|s| s.index);
        let count = segments.len();
        for (i, seg) in segments.iter_mut().enumerate() {
            let mut buf = Vec::new();
            File::open(&seg.path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(|e| AuditError::io(&seg.path, e))?;
            let (entries, end) = parse(&buf);
            // Zeros after the entries are the rest of a preallocated segment.
            if end < buf.len() && buf[end..].iter().any(|&b| b != 0) {
                if i + 1 < count {
                    return Err(AuditError::Corrupt(format!(
                        "{}: damaged entry at byte {end} in a closed spool segment",
                        seg.path.display()
                    )));
                }
                tracing::warn!(
                    file = %seg.path.display(),
                    offset = end,
                    dropped_bytes = buf.len() - end,
                    "audit spool: cutting off a torn tail (crash during a write)"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .map_err(|e| AuditError::io(&seg.path, e))?;
                f.set_len(end as u64)
                    .map_err(|e| AuditError::io(&seg.path, e))?;
                f.sync_all().map_err(|e| AuditError::io(&seg.path, e))?;
            }
            for (e, size) in &entries {
                seg.last_seq = seg.last_seq.max(e.seq());
                visit(e, *size)?;
            }
            seg.bytes = end as u64;
        }
        Ok(Spool {
            dir: dir.to_owned(),
            segments,
            active: None,
            torn: false,
        })
    }

    /// The active segment's file, and where its next entry goes (after its
    /// last entry: over its zeros, or appended).
    fn active_file(&mut self) -> Result<(&File, u64), AuditError> {
        let need_new = match self.segments.last() {
            None => true,
            Some(s) => s.bytes >= SEGMENT_MAX,
        };
        if need_new {
            let index = self.segments.last().map_or(1, |s| s.index + 1);
            let path = self.dir.join(seg_name(index));
            self.segments.push(Segment {
                index,
                path,
                last_seq: 0,
                bytes: 0,
            });
            self.active = None;
        }
        if self.active.is_none() {
            let seg = self
                .segments
                .last()
                .ok_or_else(|| AuditError::Corrupt("spool has no segment".into()))?;
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&seg.path)
                .map_err(|e| AuditError::io(&seg.path, e))?;
            if need_new {
                preallocate(&f, &seg.path);
                sync_dir(&self.dir);
            }
            self.active = Some(f);
        }
        let at = self.segments.last().map_or(0, |s| s.bytes);
        let f = self
            .active
            .as_ref()
            .ok_or_else(|| AuditError::Corrupt("spool has no active segment".into()))?;
        Ok((f, at))
    }

    /// Append encoded entries (one write). Not synced: call [`sync`](Self::sync).
    /// A failed write leaves the segment as it was: a partial entry would
    /// end the readable spool there and hide every entry written after it.
    pub fn append(&mut self, encoded: &[u8], last_seq: u64) -> Result<(), AuditError> {
        if self.torn {
            self.cut_torn_tail()?;
        }
        let (f, at) = self.active_file()?;
        if let Err(e) = f.write_all_at(encoded, at) {
            self.torn = true;
            // If this fails too, the next append tries again before writing.
            let _ = self.cut_torn_tail();
            return Err(AuditError::Io {
                path: "audit spool".into(),
                source: e,
            });
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.bytes += encoded.len() as u64;
            seg.last_seq = seg.last_seq.max(last_seq);
        }
        Ok(())
    }

    /// Truncate the active segment back to its last whole entry.
    fn cut_torn_tail(&mut self) -> Result<(), AuditError> {
        if let (Some(f), Some(seg)) = (&self.active, self.segments.last()) {
            f.set_len(seg.bytes)
                .map_err(|e| AuditError::io(&seg.path, e))?;
        }
        self.torn = false;
        Ok(())
    }

    /// fdatasync the active segment.
    pub fn sync(&mut self) -> Result<(), AuditError> {
        if let Some(f) = &self.active {
            f.sync_data().map_err(|e| AuditError::Io {
                path: "audit spool".into(),
                source: e,
            })?;
        }
        Ok(())
    }

    /// Delete segments whose entries are all in the store (seq ≤
    /// `stored_seq`); the active one is closed and deleted once it is fully
    /// stored and larger than a small threshold.
    pub fn release(&mut self, stored_seq: u64) {
        let n = self.segments.len();
        let mut keep = Vec::with_capacity(n);
        for (i, seg) in std::mem::take(&mut self.segments).into_iter().enumerate() {
            let active = i + 1 == n;
            let done = seg.last_seq <= stored_seq && seg.bytes > 0;
            if done && (!active || seg.bytes >= ROTATE_STORED) {
                if active {
                    self.active = None;
                }
                if let Err(e) = std::fs::remove_file(&seg.path) {
                    tracing::warn!(file = %seg.path.display(), error = %e, "audit spool: cannot delete a stored segment");
                    keep.push(seg);
                }
            } else {
                keep.push(seg);
            }
        }
        self.segments = keep;
    }

    /// Read entries with seq > `after` (and checkpoints at `after`), in
    /// order, at most `max` (for replay when the memory queue overflowed).
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<(Entry, u64)>, AuditError> {
        let mut out = Vec::new();
        for seg in &self.segments {
            if seg.last_seq < after {
                continue;
            }
            let mut buf = Vec::new();
            File::open(&seg.path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(|e| AuditError::io(&seg.path, e))?;
            let (entries, _) = parse(&buf[..buf.len().min(seg.bytes as usize)]);
            for (e, size) in entries {
                let keep = match &e {
                    Entry::Record(r) => r.seq > after,
                    Entry::Checkpoint(c) => c.seq >= after,
                };
                if keep {
                    out.push((e, size));
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Total bytes of all segment files.
    pub fn file_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

/// Read every entry of a spool directory without changing it (for
/// `verify`, which includes records not yet in the store).
pub fn read_all(dir: &Path) -> Result<Vec<Entry>, AuditError> {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(it) => it
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io(dir, e)),
    };
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let buf = std::fs::read(&p).map_err(|e| AuditError::io(&p, e))?;
        out.extend(parse(&buf).0.into_iter().map(|(e, _)| e));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Checkpoint;

    fn ck(seq: u64) -> Entry {
        Entry::Checkpoint(Checkpoint {
            chain: "c".into(),
            seq,
            mac: vec![0; 32],
            time_ms: 0,
            reason: "count".into(),
            environment: None,
            before_ms: None,
            signature: vec![1; 64],
        })
    }

    fn rec(seq: u64, body: Option<&str>) -> Entry {
        Entry::Record(Record {
            chain: "01CHAIN".into(),
            seq,
            ulid: "01HF7YAT00V6472VFZVBBKAAWP".into(),
            time_ms: 1_700_000_000_000,
            code: "db.statement".into(),
            environment: "prodüction".into(),
            digest: vec![7; 32],
            body: body.map(str::to_owned),
            mac: vec![9; 32],
        })
    }

    #[test]
    fn records_round_trip_and_earlier_json_records_still_read() {
        let entries = [
            rec(
                1,
                Some(r#"{"code":"db.statement","normalized":"SELECT \"é\" FROM t"}"#),
            ),
            rec(2, None),
            rec(3, Some("")),
            ck(3),
        ];
        let mut buf = Vec::new();
        for e in &entries {
            encode_into(e, &mut buf).unwrap();
        }
        assert_eq!(buf[8], RECORD_TAG, "records are not JSON");
        // A record as an earlier version spooled it: JSON, body escaped.
        let json = serde_json::to_vec(&rec(4, Some(r#"{"a":"b"}"#))).unwrap();
        buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
        buf.extend_from_slice(&sha256(&json)[..4]);
        buf.extend_from_slice(&json);
        // A record as versions before the CRC spooled it: SHA-256 checksum.
        let mut binary = encode(&rec(5, Some("{}"))).unwrap();
        let payload = binary.split_off(8);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&sha256(&payload)[..4]);
        buf.extend_from_slice(&payload);
        let (got, end) = parse(&buf);
        assert_eq!(end, buf.len());
        let got: Vec<Entry> = got.into_iter().map(|(e, _)| e).collect();
        let mut want = entries.to_vec();
        want.push(rec(4, Some(r#"{"a":"b"}"#)));
        want.push(rec(5, Some("{}")));
        assert_eq!(got, want);
        // One flipped payload bit fails the CRC: the entry and all after it
        // are the torn tail.
        let mut flipped = encode(&rec(6, Some("{}"))).unwrap();
        let good = flipped.len();
        flipped.extend(encode(&rec(7, None)).unwrap());
        flipped[good - 5] ^= 0x10;
        assert_eq!(parse(&flipped).1, 0);
        // A payload that passes the checksum but does not decode is the end.
        let mut bad = encode(&rec(5, Some("x"))).unwrap();
        let n = bad.len();
        bad.truncate(n - 3);
        let len = (bad.len() - 8) as u32 | CRC_FLAG;
        bad[..4].copy_from_slice(&len.to_le_bytes());
        let sum = crc32fast::hash(&bad[8..]);
        bad[4..8].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(parse(&bad).1, 0);
    }

    #[test]
    fn append_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), |_, _| Ok(())).unwrap();
        let mut buf = Vec::new();
        for i in 1..=3 {
            buf.extend(encode(&ck(i)).unwrap());
        }
        s.append(&buf, 3).unwrap();
        s.sync().unwrap();
        drop(s);
        // A torn write: half an entry after the last whole one, over the
        // segment's zeros.
        let seg = dir.path().join(seg_name(1));
        let half = encode(&ck(4)).unwrap();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&half[..half.len() / 2], buf.len() as u64)
            .unwrap();
        drop(f);
        let mut seen = Vec::new();
        let s = Spool::open(dir.path(), |e, _| {
            seen.push(e.seq());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), buf.len() as u64);
        assert_eq!(s.read_after(2, 10).unwrap().len(), 2);
        assert_eq!(read_all(dir.path()).unwrap().len(), 3);
    }

    #[test]
    fn entries_are_written_over_the_zeros_of_a_preallocated_segment() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(seg_name(1));
        let mut s = Spool::open(dir.path(), |_, _| Ok(())).unwrap();
        let first = encode(&ck(1)).unwrap();
        s.append(&first, 1).unwrap();
        s.sync().unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), SEGMENT_PREALLOC);
        assert_eq!(s.file_bytes(), first.len() as u64);
        drop(s);
        // Reopened: the zeros are not a torn tail; writing goes on after
        // the last entry.
        let mut s = Spool::open(dir.path(), |_, _| Ok(())).unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), SEGMENT_PREALLOC);
        s.append(&encode(&ck(2)).unwrap(), 2).unwrap();
        drop(s);
        let mut seen = Vec::new();
        Spool::open(dir.path(), |e, _| {
            seen.push(e.seq());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(read_all(dir.path()).unwrap().len(), 2);
        // Past the zeros, entries extend the file.
        let mut s = Spool::open(dir.path(), |_, _| Ok(())).unwrap();
        let last = 3 + SEGMENT_PREALLOC / first.len() as u64;
        let mut all = Vec::new();
        for seq in 3..=last {
            all.extend(encode(&ck(seq)).unwrap());
        }
        s.append(&all, last).unwrap();
        drop(s);
        let mut count = 0;
        Spool::open(dir.path(), |_, _| {
            count += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(count, last);
        assert!(std::fs::metadata(&seg).unwrap().len() > SEGMENT_PREALLOC);
    }
}
