//! Stores: where chained events, checkpoints and usage aggregates live.
//!
//! Methods block (SQLite is synchronous; the PostgreSQL store runs its own
//! small runtime). From async code call them inside `spawn_blocking`.

use serde::{Deserialize, Serialize};

use crate::chain::Checkpoint;
use crate::event::{EventBody, IndexFields, Record};
use crate::search::{Page, Query};
use crate::usage::{LineageEdge, UsageQuery, UsageRow};
use crate::AuditError;

pub mod block;
pub mod pg_tls;
pub mod postgres;
pub mod sqlite;
pub mod template;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// One entry of the spool and of a store batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// A chained event.
    Record(Record),
    /// A signed checkpoint.
    Checkpoint(Checkpoint),
}

impl Entry {
    /// The seq it is about.
    pub fn seq(&self) -> u64 {
        match self {
            Entry::Record(r) => r.seq,
            Entry::Checkpoint(c) => c.seq,
        }
    }
}

/// One entry of a batch for [`Store::append_batch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchEntry<'a> {
    /// The entry.
    pub entry: &'a Entry,
    /// For a record: its body, parsed (what `body` parses to), when the
    /// caller has it; `None` makes the store parse the body.
    pub event: Option<&'a EventBody>,
    /// For a statement record: the number of the shape its body was
    /// written from ([`BodyWriter::write`](crate::body::BodyWriter::write)),
    /// 0 when none. The bodies of one shape number differ only in their
    /// counts and SQLSTATE, so a store may reuse what it derived from the
    /// first of them (with a SQLSTATE, and without).
    pub shape: u64,
}

impl<'a> BatchEntry<'a> {
    /// An entry whose body the store parses.
    pub fn new(entry: &'a Entry) -> BatchEntry<'a> {
        BatchEntry {
            entry,
            event: None,
            shape: 0,
        }
    }
}

/// Parsed bodies of a batch's records: the caller's, or parsed here (once)
/// when it had none. `None` for checkpoints and unreadable bodies.
pub(crate) fn parse_bodies(batch: &[BatchEntry<'_>]) -> Vec<Option<EventBody>> {
    batch
        .iter()
        .map(|b| match (b.event, b.entry) {
            (None, Entry::Record(r)) => r.event().ok().flatten(),
            _ => None,
        })
        .collect()
}

/// A stored record with the searchable columns stored next to it (which
/// `verify` compares with the body).
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// The record.
    pub record: Record,
    /// The columns as stored.
    pub index: IndexFields,
}

/// A chain registered in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainInfo {
    /// Chain id.
    pub chain: String,
    /// The public key the replica registered (informational: a verifier
    /// takes public keys from the key file).
    pub public_key: String,
    /// When it was registered.
    pub created_ms: i64,
}

/// The interface both stores implement.
pub trait Store: Send {
    /// Register a chain and its public key (idempotent).
    fn register_chain(
        &mut self,
        chain: &str,
        public_key_hex: &str,
        time_ms: i64,
    ) -> Result<(), AuditError>;

    /// All chains.
    fn chains(&mut self) -> Result<Vec<ChainInfo>, AuditError>;

    /// Insert a batch in one transaction, in order: records (ignored when
    /// already present, so a replay is harmless; usage and lineage updated
    /// for new ones) and checkpoints.
    fn append(&mut self, entries: &[Entry]) -> Result<(), AuditError>;

    /// [`append`](Self::append) for a batch whose record bodies the caller
    /// may already hold parsed, which saves the store parsing them again.
    /// The default copies the entries and calls `append`.
    fn append_batch(&mut self, batch: &[BatchEntry<'_>]) -> Result<(), AuditError> {
        let entries: Vec<Entry> = batch.iter().map(|b| b.entry.clone()).collect();
        self.append(&entries)
    }

    /// The highest seq of a chain and its MAC.
    fn head(&mut self, chain: &str) -> Result<Option<(u64, Vec<u8>)>, AuditError>;

    /// Records of a chain with seq > `after`, in seq order, at most `limit`.
    fn read_chain(
        &mut self,
        chain: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, AuditError>;

    /// Checkpoints of a chain, by seq.
    fn checkpoints(&mut self, chain: &str) -> Result<Vec<Checkpoint>, AuditError>;

    /// Store one checkpoint (idempotent).
    fn put_checkpoint(&mut self, c: &Checkpoint) -> Result<(), AuditError> {
        self.append(&[Entry::Checkpoint(c.clone())])
    }

    /// Search events, newest first.
    fn search(&mut self, q: &Query) -> Result<Page, AuditError>;

    /// Usage aggregates.
    fn usage(&mut self, q: &UsageQuery) -> Result<Vec<UsageRow>, AuditError>;

    /// Lineage edges whose destination is `table` (exact, or
    /// `schema.table` when `table` has no schema).
    fn lineage_into(&mut self, table: &str) -> Result<Vec<LineageEdge>, AuditError>;

    /// Environments present in a chain.
    fn environments(&mut self, chain: &str) -> Result<Vec<String>, AuditError>;

    /// How many records [`remove_bodies`](Self::remove_bodies) would touch.
    fn count_removable(
        &mut self,
        chain: &str,
        environment: &str,
        before_ms: i64,
        max_seq: u64,
    ) -> Result<u64, AuditError>;

    /// How many events a search would return without its limit and cursor.
    fn count(&mut self, q: &Query) -> Result<u64, AuditError>;

    /// Retention, step 1: remove the bodies (and their search index
    /// entries) of records of `chain` in `environment` older than
    /// `before_ms` with seq ≤ `max_seq`. Returns how many.
    fn remove_bodies(
        &mut self,
        chain: &str,
        environment: &str,
        before_ms: i64,
        max_seq: u64,
    ) -> Result<u64, AuditError>;

    /// The lowest seq of a chain whose body is still present.
    fn first_with_body(&mut self, chain: &str) -> Result<Option<u64>, AuditError>;

    /// The MAC of one record.
    fn mac_at(&mut self, chain: &str, seq: u64) -> Result<Option<Vec<u8>>, AuditError>;

    /// The first record of `chain` that the store's search index does not
    /// find by one of its fields (a key row deleted to hide it from
    /// searches): its seq and what is missing. Stores whose index the
    /// database maintains itself have none.
    fn search_index_problem(&mut self, _chain: &str) -> Result<Option<(u64, String)>, AuditError> {
        Ok(None)
    }

    /// Retention, step 2: delete records with seq ≤ `seq` and checkpoints
    /// before the `cut` checkpoint at `seq` (stored first). Returns how many
    /// records.
    fn delete_through(&mut self, chain: &str, seq: u64) -> Result<u64, AuditError>;
}

/// Open the store a config points at.
pub fn open(
    location: &crate::config::StoreLocation,
    password: Option<&str>,
) -> Result<Box<dyn Store>, AuditError> {
    match location {
        crate::config::StoreLocation::Sqlite(p) => Ok(Box::new(SqliteStore::open(p)?)),
        crate::config::StoreLocation::Postgres(pg) => {
            Ok(Box::new(PgStore::connect_to(pg, password)?))
        }
    }
}

/// Usage sums and lineage edges implied by the new records of a batch,
/// each with its parsed body.
pub(crate) fn derive<'a>(
    records: &[(&'a Record, &'a EventBody)],
) -> (
    Vec<(crate::usage::UsageKey<'a>, crate::usage::UsageSum)>,
    Vec<LineageEdge>,
) {
    let mut usage = crate::usage::UsageBatch::default();
    let mut lineage = Vec::new();
    for (r, ev) in records {
        if let EventBody::Statement(s) = ev {
            usage.add(s, r.time_ms);
            if s.lineage.is_some() {
                lineage.extend(crate::usage::lineage_edges(s, r));
            }
        }
    }
    (usage.into_sorted(), lineage)
}
