//! The embedded store: one SQLite file in WAL mode with an FTS5 index.
//!
//! Records live in blocks (store/block.rs): a row per block of up to 256
//! records of one chain, and a row per distinct search key of a block
//! (principal, target, environment, session, decision, code, shape). A
//! search finds the blocks holding its keys, newest first, and filters
//! their records; statement text, tables and columns are found through
//! shapes (the FTS index and `audit_shape_objects`), which every event
//! with a body has: shared by the executions of a statement, or its own.

use std::fmt::Write as _;
use std::path::Path;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, ToSql};

use super::block::{self, BlockRecord, RecordRef};
use super::{template, BatchEntry, ChainInfo, Entry, Store, StoredRecord};
use crate::chain::Checkpoint;
use crate::event::{EventBody, Record};
use crate::search::{self, Dialect, Page, Param, Query};
use crate::usage::{self, LineageEdge, UsageQuery, UsageRow};
use crate::util::format_time;
use crate::AuditError;

/// Shape and template keys are hundreds of bytes and hashed once per event:
/// foldhash, not SipHash (the keys are the writer's own, made of
/// statements already analysed; a per-process seed still varies them).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_chains (
    chain TEXT PRIMARY KEY, public_key TEXT NOT NULL, created_ms INTEGER NOT NULL);
-- Records, BLOCK_MAX at most per block, encoded (store/block.rs); the
-- search keys of each block in audit_block_keys.
-- AUTOINCREMENT: a block rewritten (delete and insert) never gets the id
-- of the one it replaces, so the writer extending its open block by id
-- notices (store/sqlite.rs, BlockBuilder::write).
CREATE TABLE IF NOT EXISTS audit_blocks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, chain TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    min_ulid TEXT NOT NULL, max_ulid TEXT NOT NULL, min_ms INTEGER NOT NULL, bodies INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (chain, first_seq));
CREATE INDEX IF NOT EXISTS audit_blocks_newest ON audit_blocks (max_ulid);
CREATE TABLE IF NOT EXISTS audit_block_keys (
    key TEXT NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (key, block)) WITHOUT ROWID;
-- A statement body is its template (tpl) with the values in body filled in
-- (see store/template.rs); last_ms and last_seq tell retention when every
-- event using it has had its body removed.
CREATE TABLE IF NOT EXISTS audit_body_templates (
    id INTEGER PRIMARY KEY, chain TEXT NOT NULL, environment TEXT NOT NULL,
    last_ms INTEGER NOT NULL, last_seq INTEGER NOT NULL, body TEXT NOT NULL,
    UNIQUE (chain, body));
-- FTS rows are shapes, at rowid -shape.
CREATE VIRTUAL TABLE IF NOT EXISTS audit_events_fts USING fts5 (text, content='', contentless_delete=1);
CREATE TABLE IF NOT EXISTS audit_shapes (shape INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS audit_shape_objects (
    shape INTEGER NOT NULL, tbl TEXT NOT NULL, col TEXT NOT NULL,
    PRIMARY KEY (shape, tbl, col)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL, reason TEXT NOT NULL,
    environment TEXT, before_ms INTEGER, mac BLOB NOT NULL, signature BLOB NOT NULL,
    PRIMARY KEY (chain, seq, reason, time_ms));
CREATE TABLE IF NOT EXISTS audit_usage_daily (
    day INTEGER NOT NULL, principal TEXT NOT NULL, on_behalf_of TEXT NOT NULL,
    target TEXT NOT NULL, environment TEXT NOT NULL, tbl TEXT NOT NULL, col TEXT NOT NULL,
    masked INTEGER NOT NULL, reads INTEGER NOT NULL, writes INTEGER NOT NULL,
    nrows INTEGER NOT NULL, nbytes INTEGER NOT NULL, first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
    PRIMARY KEY (day, principal, on_behalf_of, target, environment, tbl, col, masked));
CREATE INDEX IF NOT EXISTS audit_usage_tbl ON audit_usage_daily (tbl, col);
CREATE TABLE IF NOT EXISTS audit_lineage (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, destination TEXT NOT NULL, kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL, principal TEXT NOT NULL, on_behalf_of TEXT NOT NULL,
    principal_kind TEXT NOT NULL, target TEXT NOT NULL, environment TEXT NOT NULL,
    time_ms INTEGER NOT NULL, chain TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS audit_lineage_dest ON audit_lineage (destination);
INSERT OR IGNORE INTO audit_meta (key, value) VALUES ('schema', '2');
";

/// Brings a file with a row per event up to the last such layout (then
/// [`convert_rows_to_blocks`] moves its rows into blocks): the shape of
/// a statement event was a row of its own in `audit_event_shapes` (two
/// more B-trees to write per event); it is now a column of the event. Body
/// templates came later (`tpl`): earlier rows keep their whole bodies.
fn migrate(conn: &mut Connection) -> Result<(), AuditError> {
    let has_column = |c: &Connection, name: &str| {
        c.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('audit_events') WHERE name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    let has_shape = |c: &Connection| has_column(c, "shape");
    if !has_column(conn, "tpl").map_err(db)? {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        if !has_column(&tx, "tpl").map_err(db)? {
            tx.execute_batch("ALTER TABLE audit_events ADD COLUMN tpl INTEGER;")
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
    }
    if !has_shape(conn).map_err(db)? {
        // IMMEDIATE: a second process opening the file waits, then sees the column.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        if !has_shape(&tx).map_err(db)? {
            tx.execute_batch("ALTER TABLE audit_events ADD COLUMN shape INTEGER;")
                .map_err(db)?;
            let had_shapes: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit_event_shapes'",
                    [],
                    |r| r.get(0),
                )
                .map_err(db)?;
            if had_shapes > 0 {
                tx.execute_batch(
                    "UPDATE audit_events SET shape =
                       (SELECT es.shape FROM audit_event_shapes es WHERE es.event_id = audit_events.id)
                       WHERE id IN (SELECT event_id FROM audit_event_shapes);
                     DROP TABLE audit_event_shapes;",
                )
                .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS audit_events_shape ON audit_events (shape);")
        .map_err(db)
}

/// Whether the file has a table.
fn has_table(conn: &Connection, name: &str) -> Result<bool, AuditError> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(db)
}

/// Moves the records of a file made before blocks (a row per event in
/// `audit_events`, objects and FTS rows of their own for events without a
/// shape) into blocks, in one transaction; the old tables go.
fn convert_rows_to_blocks(conn: &mut Connection) -> Result<(), AuditError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    // Another process may have converted it while this one waited.
    if !has_table(&tx, "audit_events")? {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let chains: Vec<String> = tx
        .prepare("SELECT DISTINCT chain FROM audit_events ORDER BY chain")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(db)?;
    let mut moved = 0u64;
    for chain in &chains {
        let mut st = tx
            .prepare(
                "SELECT e.id, e.seq, e.ulid, e.time_ms, e.code, e.environment, e.principal, e.target,
                 e.session, e.decision, e.fingerprint, e.digest, e.body, e.mac, e.shape, e.tpl, t.body
                 FROM audit_events e LEFT JOIN audit_body_templates t ON t.id = e.tpl
                 WHERE e.chain = ?1 ORDER BY e.seq",
            )
            .map_err(db)?;
        let mut rows = st.query(params![chain]).map_err(db)?;
        let mut records = Vec::with_capacity(block::BLOCK_MAX);
        while let Some(row) = rows.next().map_err(db)? {
            let get = |i: usize| -> Result<String, AuditError> { row.get(i).map_err(db) };
            let id: i64 = row.get(0).map_err(db)?;
            let mut r = BlockRecord {
                seq: row.get::<_, i64>(1).map_err(db)?.max(0) as u64,
                ulid: get(2)?,
                time_ms: row.get(3).map_err(db)?,
                code: get(4)?,
                environment: get(5)?,
                principal: get(6)?,
                target: get(7)?,
                session: get(8)?,
                decision: get(9)?,
                fingerprint: get(10)?,
                digest: row.get(11).map_err(db)?,
                body: row.get(12).map_err(db)?,
                mac: row.get(13).map_err(db)?,
                shape: row.get(14).map_err(db)?,
                tpl: row.get(15).map_err(db)?,
            };
            if r.shape.is_none() && r.body.is_some() {
                // Its objects and FTS row move to a shape of its own.
                tx.execute("DELETE FROM audit_events_fts WHERE rowid = ?1", params![id])
                    .map_err(db)?;
                let template: Option<String> = row.get(16).map_err(db)?;
                let full = full_body(r.body.clone(), template);
                let ev: Option<EventBody> =
                    full.as_deref().and_then(|b| serde_json::from_str(b).ok());
                if let Some(ev) = ev {
                    r.shape = Some(shape_id(
                        &tx,
                        &ev,
                        format!("\u{1}{chain}\n{}", r.seq),
                        &mut HashMap::default(),
                    )?);
                }
            }
            records.push(r);
            if records.len() == block::BLOCK_MAX {
                insert_block(&tx, chain, &records)?;
                moved += records.len() as u64;
                records.clear();
            }
        }
        insert_block(&tx, chain, &records)?;
        moved += records.len() as u64;
    }
    tx.execute_batch(
        "DROP TABLE audit_events;
         DROP TABLE IF EXISTS audit_event_objects;
         UPDATE audit_meta SET value = '2' WHERE key = 'schema';",
    )
    .map_err(db)?;
    tx.commit().map_err(db)?;
    tracing::info!(
        records = moved,
        seconds = started.elapsed().as_secs_f64(),
        "audit store: records moved into blocks"
    );
    Ok(())
}

/// SQLite store.
pub struct SqliteStore {
    conn: Connection,
    /// The shapes and templates of this file, as far as remembered.
    cache: ShapeCache,
    /// Blocks searches have read (tests check that a search reads few).
    blocks_read: u64,
    /// The block the last batch left open, extended by the next batch.
    tail: Option<BlockBuilder>,
}

/// What the store remembers of the shapes and templates committed to its
/// file, and the buffers it cuts records' bodies with.
#[derive(Default)]
struct ShapeCache {
    /// Shape key → shape id.
    shapes: HashMap<String, i64>,
    /// Buffer for shape keys.
    key_buf: String,
    /// `chain \n template` → template id.
    templates: HashMap<String, i64>,
    /// Buffers for a body's template key and values.
    template_buf: String,
    values_buf: String,
    /// (Body shape number, has a SQLSTATE) → the shape and template its
    /// records were found to have ([`BatchEntry::shape`]).
    hints: HashMap<(u64, bool), Hint>,
    /// Records stored through `hints`.
    known_shape_records: u64,
}

/// Shapes, templates and hints found or made in a batch's transaction:
/// remembered only once it commits.
#[derive(Default)]
struct NewShapes {
    shapes: HashMap<String, i64>,
    templates: HashMap<String, i64>,
    hints: HashMap<(u64, bool), Hint>,
}

/// What a body shape's records are stored with.
struct Hint {
    chain: String,
    shape: i64,
    template: i64,
}

impl ShapeCache {
    /// The shape and template a record is stored with (`number`: its
    /// [`BatchEntry::shape`]); with a template, its body's values are left
    /// in `values_buf`.
    fn shape_and_template(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        r: &Record,
        ev: Option<&EventBody>,
        number: u64,
        new: &mut NewShapes,
    ) -> Result<(Option<i64>, Option<i64>), AuditError> {
        // A record of a body shape seen before: its shape and
        // template are known, its values are cut by hand.
        let hint_key = match ev {
            Some(EventBody::Statement(s)) if number != 0 => Some((number, s.sqlstate.is_some(), s)),
            _ => None,
        };
        let known = hint_key.and_then(|(number, code, s)| {
            let hint = self
                .hints
                .get(&(number, code))
                .or_else(|| new.hints.get(&(number, code)))
                .filter(|h| h.chain == r.chain)?;
            Some((hint.shape, hint.template, s))
        });
        if let Some((shape, template, s)) = known {
            self.known_shape_records += 1;
            crate::body::cut_values(s, &mut self.values_buf);
            return Ok((Some(shape), Some(template)));
        }
        self.find_or_make(tx, r, ev, hint_key, new)
    }

    /// [`Self::shape_and_template`] of a record whose body shape has no
    /// hint yet: its shape key and template looked up (in the cache, then
    /// the file) or stored, and a hint made for the next ones.
    fn find_or_make(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        r: &Record,
        ev: Option<&EventBody>,
        hint_key: Option<(u64, bool, &crate::Statement)>,
        new: &mut NewShapes,
    ) -> Result<(Option<i64>, Option<i64>), AuditError> {
        let seq = seq_i(r.seq);
        let shaped = ev.is_some_and(|ev| shape_key_into(ev, &mut self.key_buf));
        let shape = match ev {
            Some(ev) if shaped => Some(match self.shapes.get(self.key_buf.as_str()) {
                Some(&shape) => shape,
                None => shape_id(tx, ev, self.key_buf.clone(), &mut new.shapes)?,
            }),
            // An event of its own kind (session, admin, a statement
            // with its literals): a shape of its own, not cached.
            Some(ev) if r.body.is_some() => Some(shape_id(
                tx,
                ev,
                format!("\u{1}{}\n{}", r.chain, r.seq),
                &mut HashMap::default(),
            )?),
            _ => None,
        };
        let template = match (ev, r.body.as_deref()) {
            (Some(EventBody::Statement(_)), Some(body)) => {
                self.template_buf.clear();
                self.template_buf.push_str(&r.chain);
                self.template_buf.push('\n');
                if template::split(body, &mut self.template_buf, &mut self.values_buf) {
                    let id = match self.templates.get(self.template_buf.as_str()) {
                        Some(&id) => id,
                        None => template_id(
                            tx,
                            &self.template_buf,
                            &r.chain,
                            &r.environment,
                            r.time_ms,
                            seq,
                            &mut new.templates,
                        )?,
                    };
                    Some(id)
                } else {
                    None
                }
            }
            _ => None,
        };
        // The next records of this body shape take the fast
        // arm above, if cutting by hand gives what was cut.
        if let (Some((number, code, s)), Some(shape), Some(template)) = (hint_key, shape, template)
        {
            // The shape key is used by now: its buffer is free.
            crate::body::cut_values(s, &mut self.key_buf);
            if self.key_buf == self.values_buf {
                new.hints.insert(
                    (number, code),
                    Hint {
                        chain: r.chain.clone(),
                        shape,
                        template,
                    },
                );
            }
        }
        Ok((shape, template))
    }

    /// Take in what a committed batch found or made; a cache that would
    /// grow past its bound starts over.
    fn remember(&mut self, new: NewShapes) {
        if self.shapes.len() + new.shapes.len() > SHAPE_CACHE {
            self.shapes.clear();
        }
        self.shapes.extend(new.shapes);
        if self.templates.len() + new.templates.len() > TEMPLATE_CACHE {
            self.templates.clear();
        }
        self.templates.extend(new.templates);
        if self.hints.len() + new.hints.len() > TEMPLATE_CACHE {
            self.hints.clear();
        }
        self.hints.extend(new.hints);
    }
}

/// Shapes the cache holds at most (it starts over beyond).
const SHAPE_CACHE: usize = 65_536;
/// Templates the cache holds at most (it starts over beyond): keys are
/// whole templates (about 500 bytes), so fewer than shapes; a miss costs
/// one lookup in the table's unique index.
const TEMPLATE_CACHE: usize = 4096;

/// The shape key of an event whose search text and objects are shared
/// through `audit_shapes`: statements without literal text (their search
/// text and objects repeat with every execution). Other events are indexed
/// on their own. Length-prefixed parts, so different shapes never share a
/// key. Written into `key` (reused: the common case is a cache hit).
fn shape_key_into(ev: &EventBody, key: &mut String) -> bool {
    let EventBody::Statement(s) = ev else {
        return false;
    };
    if s.text.is_some() {
        return false;
    }
    key.clear();
    let part = |key: &mut String, p: &str| {
        let _ = write!(key, "{}:", p.len());
        key.push_str(p);
    };
    ev.search_parts(&mut |p| part(key, p));
    // The objects come from these lists as written (equal lists, equal
    // objects), which saves lower-casing and sorting them per event. After
    // a part comes a digit or a separator: lists cannot pass for text or
    // for each other.
    for list in [
        &s.tables_read,
        &s.tables_written,
        &s.columns_read,
        &s.columns_written,
    ] {
        key.push('|');
        list.iter().for_each(|p| part(key, p));
    }
    key.push('|');
    s.masked.iter().for_each(|m| part(key, &m.column));
    true
}

/// The id of a shape not in the cache: from `new` (made or found earlier in
/// this transaction), the table, or made now (its objects and its FTS row,
/// at rowid `-shape`).
fn shape_id(
    tx: &rusqlite::Transaction<'_>,
    ev: &EventBody,
    key: String,
    new: &mut HashMap<String, i64>,
) -> Result<i64, AuditError> {
    if let Some(&shape) = new.get(&key) {
        return Ok(shape);
    }
    let hash = crate::chain::sha256(key.as_bytes());
    let found: Option<i64> = tx
        .prepare_cached("SELECT shape FROM audit_shapes WHERE key = ?1")
        .and_then(|mut st| st.query_row(params![&hash[..]], |r| r.get(0)).optional())
        .map_err(db)?;
    let shape = match found {
        Some(shape) => shape,
        None => {
            tx.prepare_cached("INSERT INTO audit_shapes (key) VALUES (?1)")
                .and_then(|mut st| st.execute(params![&hash[..]]))
                .map_err(db)?;
            let shape = tx.last_insert_rowid();
            let mut obj = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO audit_shape_objects (shape, tbl, col) VALUES (?1, ?2, ?3)",
                )
                .map_err(db)?;
            for (t, c) in ev.objects_ref() {
                obj.execute(params![shape, t, c]).map_err(db)?;
            }
            tx.prepare_cached("INSERT INTO audit_events_fts (rowid, text) VALUES (?1, ?2)")
                .and_then(|mut st| st.execute(params![-shape, ev.search_text()]))
                .map_err(db)?;
            shape
        }
    };
    new.insert(key, shape);
    Ok(shape)
}

/// The id of the template of `chain` not in the cache: from `new` (made or
/// found earlier in this transaction), the table, or made now. `key` is the
/// cache key, `chain \n template`.
fn template_id(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    chain: &str,
    environment: &str,
    time_ms: i64,
    seq: i64,
    new: &mut HashMap<String, i64>,
) -> Result<i64, AuditError> {
    if let Some(&id) = new.get(key) {
        return Ok(id);
    }
    let template = key.get(chain.len() + 1..).unwrap_or_default();
    let found: Option<i64> = tx
        .prepare_cached("SELECT id FROM audit_body_templates WHERE chain = ?1 AND body = ?2")
        .and_then(|mut st| {
            st.query_row(params![chain, template], |r| r.get(0))
                .optional()
        })
        .map_err(db)?;
    let id = match found {
        Some(id) => id,
        None => {
            tx.prepare_cached(
                "INSERT INTO audit_body_templates (chain, environment, last_ms, last_seq, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| st.execute(params![chain, environment, time_ms, seq, template]))
            .map_err(db)?;
            tx.last_insert_rowid()
        }
    };
    new.insert(key.to_string(), id);
    Ok(id)
}

/// Deletes shapes no block refers to any more, with their objects and FTS
/// rows (after retention removed or deleted events).
const SHAPES_GC: &str = "
CREATE TEMP TABLE IF NOT EXISTS gone_shapes (shape INTEGER PRIMARY KEY);
DELETE FROM gone_shapes;
INSERT INTO gone_shapes SELECT shape FROM audit_shapes s
  WHERE NOT EXISTS (SELECT 1 FROM audit_block_keys k WHERE k.key = 'h' || s.shape);
DELETE FROM audit_events_fts WHERE rowid IN (SELECT -shape FROM gone_shapes);
DELETE FROM audit_shape_objects WHERE shape IN (SELECT shape FROM gone_shapes);
DELETE FROM audit_shapes WHERE shape IN (SELECT shape FROM gone_shapes);
DELETE FROM gone_shapes;
";

/// The block being filled by `append_batch`: records of one chain, encoded
/// as they come, and the keys they add.
#[derive(Default)]
struct BlockBuilder {
    /// Its row, once written: a block left open at the end of a batch is
    /// extended by the next one (at a trickle every batch holds a record or
    /// two, and blocks of one record would index no better than rows).
    id: Option<i64>,
    /// Records pushed since the last write.
    dirty: bool,
    /// `last_seq` as last written.
    written_last_seq: u64,
    chain: String,
    data: Vec<u8>,
    len: usize,
    first_seq: u64,
    last_seq: u64,
    min_ulid: String,
    max_ulid: String,
    min_ms: i64,
    bodies: i64,
    keys: std::collections::HashSet<String, foldhash::fast::RandomState>,
}

impl BlockBuilder {
    fn push(&mut self, r: &RecordRef<'_>) {
        if self.len == 0 {
            self.first_seq = r.seq;
            self.min_ulid.clear();
            self.min_ulid.push_str(r.ulid);
            self.max_ulid.clear();
            self.max_ulid.push_str(r.ulid);
            self.min_ms = r.time_ms;
        } else {
            // ULIDs come from the sessions, a little out of order.
            if r.ulid < self.min_ulid.as_str() {
                self.min_ulid.clear();
                self.min_ulid.push_str(r.ulid);
            }
            if r.ulid > self.max_ulid.as_str() {
                self.max_ulid.clear();
                self.max_ulid.push_str(r.ulid);
            }
            self.min_ms = self.min_ms.min(r.time_ms);
        }
        self.last_seq = r.seq;
        self.len += 1;
        self.dirty = true;
        self.bodies += i64::from(r.body.is_some());
        block::encode_record(r, &mut self.data);
        let keys = &mut self.keys;
        block::add_keys(r, &mut |k| {
            if !keys.contains(k) {
                keys.insert(k.to_owned());
            }
        });
    }

    /// Write the block (if any) and start an empty one.
    fn flush(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), AuditError> {
        self.write(tx)?;
        self.id = None;
        self.keys.clear();
        self.data.clear();
        self.len = 0;
        self.bodies = 0;
        Ok(())
    }

    /// Write the block as it is (its row made or updated), keeping it open.
    fn write(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), AuditError> {
        if self.len == 0 || !self.dirty {
            return Ok(());
        }
        let (first, last, written) = (
            seq_i(self.first_seq),
            seq_i(self.last_seq),
            seq_i(self.written_last_seq),
        );
        // The same numbered parameters for both statements.
        let fields: [&dyn ToSql; 8] = [
            &self.chain,
            &first,
            &last,
            &self.min_ulid,
            &self.max_ulid,
            &self.min_ms,
            &self.bodies,
            &self.data,
        ];
        let id = match self.id {
            None => {
                tx.prepare_cached(
                    "INSERT INTO audit_blocks (chain, first_seq, last_seq, min_ulid, max_ulid, min_ms, bodies, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .and_then(|mut st| st.execute(&fields[..]))
                .map_err(db)?;
                tx.last_insert_rowid()
            }
            Some(id) => {
                let n = tx
                    .prepare_cached(
                        "UPDATE audit_blocks SET last_seq = ?3, min_ulid = ?4, max_ulid = ?5, min_ms = ?6,
                         bodies = ?7, data = ?8
                         WHERE chain = ?1 AND first_seq = ?2 AND id = ?9 AND last_seq = ?10",
                    )
                    .and_then(|mut st| {
                        let key: [&dyn ToSql; 2] = [&id, &written];
                        st.execute(params_from_iter(fields.iter().chain(key.iter())))
                    })
                    .map_err(db)?;
                if n != 1 {
                    // Rewritten meanwhile (retention from another process):
                    // the batch fails and is retried in a block of its own.
                    return Err(AuditError::Store(format!(
                        "the open audit block of chain {} from seq {} changed under the writer",
                        self.chain, self.first_seq
                    )));
                }
                id
            }
        };
        self.id = Some(id);
        self.dirty = false;
        self.written_last_seq = self.last_seq;
        let mut k = tx
            .prepare_cached("INSERT OR IGNORE INTO audit_block_keys (key, block) VALUES (?1, ?2)")
            .map_err(db)?;
        for key in &self.keys {
            k.execute(params![key, id]).map_err(db)?;
        }
        Ok(())
    }
}

/// Write a block made of `records` (a rewrite by retention, a migration).
fn insert_block(
    tx: &rusqlite::Transaction<'_>,
    chain: &str,
    records: &[BlockRecord],
) -> Result<(), AuditError> {
    let mut b = BlockBuilder {
        chain: chain.to_owned(),
        ..BlockBuilder::default()
    };
    for r in records {
        b.push(&r.as_ref());
    }
    b.flush(tx)
}

/// Delete a block and its keys.
fn delete_block(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    records: &[BlockRecord],
) -> Result<(), AuditError> {
    let mut k = tx
        .prepare_cached("DELETE FROM audit_block_keys WHERE key = ?1 AND block = ?2")
        .map_err(db)?;
    for key in block::keys_of(records) {
        k.execute(params![key, id]).map_err(db)?;
    }
    tx.execute("DELETE FROM audit_blocks WHERE id = ?1", params![id])
        .map_err(db)?;
    Ok(())
}

/// The highest stored seq of a chain (0 when none).
fn head_seq(conn: &Connection, chain: &str) -> Result<u64, AuditError> {
    conn.prepare_cached(
        "SELECT last_seq FROM audit_blocks WHERE chain = ?1 ORDER BY first_seq DESC LIMIT 1",
    )
    .and_then(|mut st| {
        st.query_row(params![chain], |r| r.get::<_, i64>(0))
            .optional()
    })
    .map(|s| s.map_or(0, |s| s.max(0) as u64))
    .map_err(db)
}

/// Blocks of a chain in seq order: (id, records), from the block holding
/// `from` (or the first after it) on, while `more` says so.
fn chain_blocks(
    conn: &Connection,
    chain: &str,
    from: u64,
    more: &mut dyn FnMut(i64, Vec<BlockRecord>) -> Result<bool, AuditError>,
) -> Result<(), AuditError> {
    let start: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(MAX(first_seq), 0) FROM audit_blocks WHERE chain = ?1 AND first_seq <= ?2",
        )
        .and_then(|mut st| st.query_row(params![chain, seq_i(from)], |r| r.get(0)))
        .map_err(db)?;
    let mut st = conn
        .prepare_cached(
            "SELECT id, first_seq, data FROM audit_blocks WHERE chain = ?1 AND first_seq >= ?2 ORDER BY first_seq",
        )
        .map_err(db)?;
    let mut rows = st.query(params![chain, start]).map_err(db)?;
    while let Some(row) = rows.next().map_err(db)? {
        let id: i64 = row.get(0).map_err(db)?;
        let first: i64 = row.get(1).map_err(db)?;
        let data: Vec<u8> = row.get(2).map_err(db)?;
        if !more(id, decode_block(chain, first, &data)?)? {
            break;
        }
    }
    Ok(())
}

/// Usage, lineage and template ages for the records of a batch.
fn write_derived(
    tx: &rusqlite::Transaction<'_>,
    used_templates: &HashMap<i64, (i64, i64)>,
    new_records: &[(&Record, &EventBody)],
) -> Result<(), AuditError> {
    let mut touch = tx
            .prepare_cached(
                "UPDATE audit_body_templates SET last_ms = MAX(last_ms, ?2), last_seq = MAX(last_seq, ?3)
                 WHERE id = ?1",
            )
            .map_err(db)?;
    for (id, (ms, seq)) in used_templates {
        touch.execute(params![id, ms, seq]).map_err(db)?;
    }
    let (sums, edges) = super::derive(new_records);
    let mut up = tx
            .prepare_cached(
                "INSERT INTO audit_usage_daily (day, principal, on_behalf_of, target, environment, tbl, col,
                 masked, reads, writes, nrows, nbytes, first_ms, last_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                 ON CONFLICT (day, principal, on_behalf_of, target, environment, tbl, col, masked) DO UPDATE SET
                   reads = reads + excluded.reads, writes = writes + excluded.writes,
                   nrows = nrows + excluded.nrows, nbytes = nbytes + excluded.nbytes,
                   first_ms = MIN(first_ms, excluded.first_ms), last_ms = MAX(last_ms, excluded.last_ms)",
            )
            .map_err(db)?;
    for (k, d) in &sums {
        up.execute(params![
            k.day,
            k.principal,
            k.on_behalf_of,
            k.target,
            k.environment,
            k.table,
            k.column,
            k.masked,
            d.reads,
            d.writes,
            d.rows,
            d.bytes,
            d.first_ms,
            d.last_ms
        ])
        .map_err(db)?;
    }
    if !edges.is_empty() {
        let mut li = tx
                .prepare_cached(
                    "INSERT INTO audit_lineage (source, destination, kind, fingerprint, principal, on_behalf_of,
                     principal_kind, target, environment, time_ms, chain, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(db)?;
        for e in &edges {
            li.execute(params![
                e.source,
                e.destination,
                e.kind,
                e.fingerprint,
                e.principal,
                e.on_behalf_of,
                e.principal_kind,
                e.target,
                e.environment,
                e.time_ms,
                e.chain,
                seq_i(e.seq)
            ])
            .map_err(db)?;
        }
    }
    Ok(())
}

/// [`block::decode`], naming the block in an error.
fn decode_block(chain: &str, first_seq: i64, data: &[u8]) -> Result<Vec<BlockRecord>, AuditError> {
    block::decode(data).map_err(|e| {
        AuditError::Corrupt(format!(
            "the block of chain {chain} from seq {first_seq} is damaged: {e}"
        ))
    })
}

/// A block a search may read: id, chain and ULID range.
struct BlockMeta {
    id: i64,
    chain: String,
    min_ulid: String,
    max_ulid: String,
}

/// Shapes whose objects or search text match the table, column and text
/// filters of `q`; `None` when it has none of them.
fn matching_shapes(
    conn: &Connection,
    q: &Query,
) -> Result<Option<std::collections::HashSet<i64>>, AuditError> {
    let mut found: Option<std::collections::HashSet<i64>> = None;
    let mut narrow = |ids: Vec<i64>| found = Some(intersect(found.take(), ids));
    if q.table.is_some() || q.column.is_some() {
        let mut sql = search::Sql::new(
            Dialect::Sqlite,
            "SELECT DISTINCT o.shape FROM audit_shape_objects o WHERE 1=1",
        );
        let (ctable, col) = match &q.column {
            Some(c) => {
                let (t, c) = search::split_column(c);
                (t.map(str::to_owned), Some(c.to_lowercase()))
            }
            None => (None, None),
        };
        for t in [q.table.as_deref(), ctable.as_deref()]
            .into_iter()
            .flatten()
        {
            let cond = search::table_cond(&mut sql, "o.tbl", t);
            sql.and(&cond);
        }
        if let Some(c) = col {
            let p = sql.bind(Param::Text(c));
            sql.and(&format!("o.col = {p}"));
        }
        narrow(query_ids(conn, &sql)?);
    }
    if let Some(text) = q.text.as_deref().filter(|t| !t.trim().is_empty()) {
        let mut sql = search::Sql::new(
            Dialect::Sqlite,
            "SELECT -rowid FROM audit_events_fts WHERE audit_events_fts MATCH ",
        );
        let p = sql.bind(Param::Text(search::fts5_query(text)));
        sql.text.push_str(&p);
        narrow(query_ids(conn, &sql)?);
    }
    Ok(found)
}

/// `ids`, narrowed to those also in `acc` when there is one.
fn intersect(
    acc: Option<std::collections::HashSet<i64>>,
    ids: Vec<i64>,
) -> std::collections::HashSet<i64> {
    let ids: std::collections::HashSet<i64> = ids.into_iter().collect();
    match acc {
        None => ids,
        Some(a) => a.intersection(&ids).copied().collect(),
    }
}

fn query_ids(conn: &Connection, sql: &search::Sql) -> Result<Vec<i64>, AuditError> {
    let params: Vec<Box<dyn ToSql>> = sql.params.iter().map(to_sql).collect();
    let mut st = conn.prepare(&sql.text).map_err(db)?;
    let rows = st
        .query_map(params_from_iter(params.iter()), |r| r.get::<_, i64>(0))
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

/// Blocks holding a key (`exact`), or a key in [from, to) (`range`).
fn blocks_with_key(conn: &Connection, key: &str) -> Result<Vec<i64>, AuditError> {
    conn.prepare_cached("SELECT block FROM audit_block_keys WHERE key = ?1")
        .and_then(|mut st| {
            st.query_map(params![key], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(db)
}

fn blocks_with_key_range(conn: &Connection, from: &str, to: &str) -> Result<Vec<i64>, AuditError> {
    conn.prepare_cached("SELECT DISTINCT block FROM audit_block_keys WHERE key >= ?1 AND key < ?2")
        .and_then(|mut st| {
            st.query_map(params![from, to], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(db)
}

/// Shapes beyond this many are not looked up block by block: the blocks
/// are read and their records filtered instead.
const SHAPE_KEYS_MAX: usize = 2048;

/// Candidate blocks up to this many are looked up one by one (about 0.1 ms
/// each); more are found walking the blocks newest first, which stops as
/// soon as a page is full.
const FEW_BLOCKS: usize = 256;

/// A visitor of [`candidate_blocks`]: a block and the newest event of the
/// next; false stops.
type BlockVisit<'a> = dyn FnMut(&BlockMeta, Option<&str>) -> Result<bool, AuditError> + 'a;

/// Call `f` with each block that may hold events matching `q` (`shapes`
/// from [`matching_shapes`]), newest first (by newest event), and the
/// newest event of the next such block; stop when it returns false.
fn candidate_blocks(
    conn: &Connection,
    q: &Query,
    shapes: Option<&std::collections::HashSet<i64>>,
    f: &mut BlockVisit<'_>,
) -> Result<(), AuditError> {
    // Each keyed filter narrows the blocks to those holding its key.
    let mut sets: Vec<Vec<i64>> = Vec::new();
    for (letter, v) in [
        ('p', &q.principal),
        ('t', &q.target),
        ('e', &q.environment),
        ('s', &q.session),
    ] {
        if let Some(v) = v {
            sets.push(blocks_with_key(conn, &format!("{letter}{v}"))?);
        }
    }
    if let Some(d) = q.decision {
        sets.push(blocks_with_key(conn, &format!("d{}", d.as_str()))?);
    }
    if let Some(kind) = &q.kind {
        match kind_code(kind) {
            (true, prefix) => sets.push(blocks_with_key_range(
                conn,
                &format!("c{prefix}"),
                &format!("c{prefix}\u{10ffff}"),
            )?),
            (false, code) => sets.push(blocks_with_key(conn, &format!("c{code}"))?),
        }
    }
    if let Some(shapes) = shapes.filter(|s| s.len() <= SHAPE_KEYS_MAX) {
        let mut ids = Vec::new();
        for s in shapes {
            ids.extend(blocks_with_key(conn, &format!("h{s}"))?);
        }
        sets.push(ids);
    }
    let wanted = sets
        .into_iter()
        .fold(None, |acc, ids| Some(intersect(acc, ids)));
    // An event's ULID carries its time: a time range is a ULID range.
    let since = q.since.and_then(crate::util::ulid_floor);
    let until = q.until.and_then(crate::util::ulid_floor);
    let keep = |m: &BlockMeta| {
        q.chain.as_deref().is_none_or(|c| c == m.chain)
            && since.as_deref().is_none_or(|f| m.max_ulid.as_str() >= f)
            && until.as_deref().is_none_or(|f| m.min_ulid.as_str() < f)
            && q.cursor.as_deref().is_none_or(|c| m.min_ulid.as_str() < c)
    };
    let meta = |r: &rusqlite::Row<'_>| {
        Ok(BlockMeta {
            id: r.get(0)?,
            chain: r.get(1)?,
            min_ulid: r.get(2)?,
            max_ulid: r.get(3)?,
        })
    };
    const META: &str = "SELECT id, chain, min_ulid, max_ulid FROM audit_blocks";
    match &wanted {
        // A few blocks: looked up one by one, then ordered.
        Some(ids) if ids.len() <= FEW_BLOCKS => {
            let mut st = conn
                .prepare_cached(&format!("{META} WHERE id = ?1"))
                .map_err(db)?;
            let mut list = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(m) = st.query_row(params![id], meta).optional().map_err(db)? {
                    list.extend(Some(m).filter(|m| keep(m)));
                }
            }
            list.sort_by(|a, b| b.max_ulid.cmp(&a.max_ulid));
            for (i, m) in list.iter().enumerate() {
                if !f(m, list.get(i + 1).map(|n| n.max_ulid.as_str()))? {
                    break;
                }
            }
        }
        // Otherwise the blocks newest first through their index, as far as
        // the caller reads.
        _ => {
            let floor = since.as_deref().unwrap_or("");
            let mut st = conn
                .prepare_cached(&format!(
                    "{META} WHERE max_ulid >= ?1 ORDER BY max_ulid DESC"
                ))
                .map_err(db)?;
            let rows = st.query_map(params![floor], meta).map_err(db)?;
            let mut held: Option<BlockMeta> = None;
            for m in rows {
                let m = m.map_err(db)?;
                if !keep(&m) || wanted.as_ref().is_some_and(|ids| !ids.contains(&m.id)) {
                    continue;
                }
                if let Some(prev) = held.replace(m) {
                    let next = held.as_ref().map(|n| n.max_ulid.as_str());
                    if !f(&prev, next)? {
                        return Ok(());
                    }
                }
            }
            if let Some(last) = held {
                f(&last, None)?;
            }
        }
    }
    Ok(())
}

/// `(prefix?, value)`: the event code a kind stands for, or the prefix of
/// its codes.
fn kind_code(kind: &str) -> (bool, &str) {
    match kind {
        "statement" => (false, crate::event::STATEMENT),
        "auth" => (false, crate::event::AUTH_FAILURE),
        "admin" => (false, crate::event::ADMIN),
        "session" => (true, "session."),
        other => (false, other),
    }
}

/// What [`SqliteStore::each_match`] hands its visitor.
// Moved once per record; boxing the record would allocate per match.
#[allow(clippy::large_enum_variant)]
enum Match<'a> {
    /// A matching record of a chain.
    Record(&'a str, BlockRecord),
    /// The end of a block; the newest ULID of the blocks left.
    EndOfBlock { next_newest: Option<&'a str> },
}

/// Whether a record of `chain` matches every filter of `q`.
fn record_matches(
    q: &Query,
    chain: &str,
    r: &BlockRecord,
    shapes: Option<&std::collections::HashSet<i64>>,
) -> bool {
    let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
    eq(&q.principal, &r.principal)
        && eq(&q.target, &r.target)
        && eq(&q.environment, &r.environment)
        && eq(&q.session, &r.session)
        && eq(&q.chain, chain)
        && q.decision.is_none_or(|d| d.as_str() == r.decision)
        && q.kind.as_deref().is_none_or(|k| match kind_code(k) {
            (true, prefix) => r.code.starts_with(prefix),
            (false, code) => r.code == code,
        })
        && q.since.is_none_or(|t| r.time_ms >= t)
        && q.until.is_none_or(|t| r.time_ms < t)
        && q.cursor.as_deref().is_none_or(|c| r.ulid.as_str() < c)
        && shapes.is_none_or(|s| r.shape.is_some_and(|shape| s.contains(&shape)))
}

impl SqliteStore {
    /// The records matching `q` (chain, record), newest first: the newest
    /// `limit`, reading blocks only until no older block can hold a newer
    /// match.
    fn find(&mut self, q: &Query, limit: usize) -> Result<Vec<(String, BlockRecord)>, AuditError> {
        let mut found: Vec<(String, BlockRecord)> = Vec::new();
        self.each_match(q, &mut |m| match m {
            Match::Record(chain, r) => {
                found.push((chain.to_owned(), r));
                true
            }
            Match::EndOfBlock { next_newest } => {
                if found.len() < limit {
                    return true;
                }
                found.sort_by(|a, b| b.1.ulid.cmp(&a.1.ulid));
                found.truncate(limit);
                // Blocks come newest first: once the next one's newest
                // event is older than the last kept, none can place.
                let oldest = found.last().map(|f| f.1.ulid.as_str()).unwrap_or("");
                next_newest.is_some_and(|n| n >= oldest)
            }
        })?;
        found.sort_by(|a, b| b.1.ulid.cmp(&a.1.ulid));
        found.truncate(limit);
        Ok(found)
    }

    /// Call `visit` with each record matching `q`, blocks newest first, and
    /// at the end of each block; the search ends when it returns false
    /// there.
    fn each_match(
        &mut self,
        q: &Query,
        visit: &mut dyn FnMut(Match<'_>) -> bool,
    ) -> Result<(), AuditError> {
        let shapes = matching_shapes(&self.conn, q)?;
        if shapes.as_ref().is_some_and(|s| s.is_empty()) {
            return Ok(());
        }
        let mut st = self
            .conn
            .prepare_cached("SELECT first_seq, data FROM audit_blocks WHERE id = ?1")
            .map_err(db)?;
        let mut read = 0;
        candidate_blocks(&self.conn, q, shapes.as_ref(), &mut |b, next_newest| {
            let Some((first, data)) = st
                .query_row(params![b.id], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()
                .map_err(db)?
            else {
                return Ok(true);
            };
            read += 1;
            for r in decode_block(&b.chain, first, &data)? {
                if record_matches(q, &b.chain, &r, shapes.as_ref()) {
                    visit(Match::Record(&b.chain, r));
                }
            }
            Ok(visit(Match::EndOfBlock { next_newest }))
        })?;
        self.blocks_read += read;
        Ok(())
    }

    /// A template's text, through a per-call cache.
    fn template_text(
        &self,
        id: i64,
        cache: &mut HashMap<i64, Option<String>>,
    ) -> Result<Option<String>, AuditError> {
        if let Some(t) = cache.get(&id) {
            return Ok(t.clone());
        }
        let t: Option<String> = self
            .conn
            .prepare_cached("SELECT body FROM audit_body_templates WHERE id = ?1")
            .and_then(|mut st| st.query_row(params![id], |r| r.get(0)).optional())
            .map_err(db)?;
        cache.insert(id, t.clone());
        Ok(t)
    }

    /// The whole body of a stored record (its template's values filled in).
    fn body_of(
        &self,
        r: &BlockRecord,
        cache: &mut HashMap<i64, Option<String>>,
    ) -> Result<Option<String>, AuditError> {
        let template = match r.tpl {
            Some(id) if r.body.is_some() => self.template_text(id, cache)?,
            _ => None,
        };
        Ok(full_body(r.body.clone(), template))
    }
}

/// Blocks of `chain` a retention step for `environment` may touch.
fn retention_blocks(
    conn: &Connection,
    chain: &str,
    environment: &str,
    before_ms: i64,
    max_seq: u64,
) -> Result<Vec<(i64, i64, Vec<u8>)>, AuditError> {
    let mut st = conn
        .prepare_cached(
            "SELECT b.id, b.first_seq, b.data FROM audit_block_keys k JOIN audit_blocks b ON b.id = k.block
             WHERE k.key = ?1 AND b.chain = ?2 AND b.min_ms < ?3 AND b.first_seq <= ?4
             ORDER BY b.first_seq",
        )
        .map_err(db)?;
    let rows = st
        .query_map(
            params![format!("b{environment}"), chain, before_ms, seq_i(max_seq)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

/// Whether retention removes this record's body.
fn removable(r: &BlockRecord, environment: &str, before_ms: i64, max_seq: u64) -> bool {
    r.environment == environment && r.time_ms < before_ms && r.seq <= max_seq && r.body.is_some()
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn db(e: rusqlite::Error) -> AuditError {
    AuditError::Store(format!("sqlite: {e}"))
}

fn to_sql(p: &Param) -> Box<dyn ToSql> {
    match p {
        Param::Text(s) => Box::new(s.clone()),
        Param::Int(i) => Box::new(*i),
    }
}

fn seq_i(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Open (creating it and the schema) in WAL mode.
    pub fn open(path: &Path) -> Result<SqliteStore, AuditError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        }
        let mut conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        // Large pages for a new file (an existing one keeps its size): a
        // block of records is tens of KiB, and each page is a WAL frame
        // and a checkpoint write of its own.
        conn.pragma_update(None, "page_size", 65536).map_err(db)?;
        // WAL: readers (the CLI, the admin API) never block the writer.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.pragma_update(None, "wal_autocheckpoint", 128)
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        if has_table(&conn, "audit_events")? {
            migrate(&mut conn)?;
            convert_rows_to_blocks(&mut conn)?;
        }
        Ok(SqliteStore {
            conn,
            cache: ShapeCache::default(),
            blocks_read: 0,
            tail: None,
        })
    }

    /// Open an existing file without creating it (the CLI: a typo in
    /// `--data-dir` must not create an empty, "intact" trail).
    pub fn open_existing(path: &Path) -> Result<SqliteStore, AuditError> {
        if !path.exists() {
            return Err(AuditError::Store(format!(
                "{}: no audit store there",
                path.display()
            )));
        }
        Self::open(path)
    }

    /// The raw connection (tests use it to tamper).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Every record of the file, in block order, handed to `edit`, and
    /// written back as `edit` left them (blocks and keys made anew): what
    /// an attacker with write access to the file can do. For tests.
    #[doc(hidden)]
    pub fn edit_records(
        &mut self,
        edit: impl FnOnce(&mut Vec<(String, BlockRecord)>),
    ) -> Result<(), AuditError> {
        let mut all = Vec::new();
        {
            let mut st = self
                .conn
                .prepare(
                    "SELECT chain, first_seq, data FROM audit_blocks ORDER BY chain, first_seq",
                )
                .map_err(db)?;
            let mut rows = st.query([]).map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                let chain: String = row.get(0).map_err(db)?;
                let data: Vec<u8> = row.get(2).map_err(db)?;
                for r in decode_block(&chain, row.get(1).map_err(db)?, &data)? {
                    all.push((chain.clone(), r));
                }
            }
        }
        edit(&mut all);
        self.tail = None;
        self.cache.hints.clear();
        let tx = self.conn.transaction().map_err(db)?;
        tx.execute_batch("DELETE FROM audit_blocks; DELETE FROM audit_block_keys;")
            .map_err(db)?;
        for (chain, r) in &all {
            insert_block(&tx, chain, std::slice::from_ref(r))?;
        }
        tx.commit().map_err(db)
    }

    /// How many blocks searches on this handle have read.
    pub fn blocks_read(&self) -> u64 {
        self.blocks_read
    }

    /// How many records this handle stored by a known body shape
    /// ([`BatchEntry::shape`]) rather than by splitting their bodies.
    #[doc(hidden)]
    pub fn records_from_known_shapes(&self) -> u64 {
        self.cache.known_shape_records
    }
}

/// A stored body: whole, or the values of its template filled in. Values
/// that do not fit their template (or a template gone) come back as they
/// are, so the digest check names the record.
pub(crate) fn full_body(body: Option<String>, template: Option<String>) -> Option<String> {
    match (body, template) {
        (Some(values), Some(t)) => Some(template::join(&t, &values).unwrap_or(values)),
        (body, _) => body,
    }
}

impl Store for SqliteStore {
    fn register_chain(
        &mut self,
        chain: &str,
        public_key_hex: &str,
        time_ms: i64,
    ) -> Result<(), AuditError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO audit_chains (chain, public_key, created_ms) VALUES (?1, ?2, ?3)",
                params![chain, public_key_hex, time_ms],
            )
            .map_err(db)?;
        Ok(())
    }

    fn chains(&mut self) -> Result<Vec<ChainInfo>, AuditError> {
        // Chains with events but no registration still get verified.
        let mut st = self
            .conn
            .prepare(
                "SELECT chain, public_key, created_ms FROM audit_chains
                 UNION SELECT DISTINCT chain, '', 0 FROM audit_blocks
                   WHERE chain NOT IN (SELECT chain FROM audit_chains)
                 UNION SELECT DISTINCT chain, '', 0 FROM audit_checkpoints
                   WHERE chain NOT IN (SELECT chain FROM audit_chains)
                 ORDER BY 1",
            )
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok(ChainInfo {
                    chain: r.get(0)?,
                    public_key: r.get(1)?,
                    created_ms: r.get(2)?,
                })
            })
            .map_err(db)?;
        let mut out: Vec<ChainInfo> = rows.collect::<Result<_, _>>().map_err(db)?;
        out.dedup_by(|a, b| a.chain == b.chain);
        Ok(out)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), AuditError> {
        let batch: Vec<BatchEntry<'_>> = entries.iter().map(BatchEntry::new).collect();
        self.append_batch(&batch)
    }

    fn append_batch(&mut self, batch: &[BatchEntry<'_>]) -> Result<(), AuditError> {
        let parsed = super::parse_bodies(batch);
        let mut new = NewShapes::default();
        // Templates used in this batch → the latest (time_ms, seq) using them.
        let mut used_templates: HashMap<i64, (i64, i64)> = HashMap::default();
        let tx = self.conn.transaction().map_err(db)?;
        let tail;
        {
            let mut ck = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO audit_checkpoints (chain, seq, time_ms, reason, environment,
                     before_ms, mac, signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db)?;
            // The stored head of each chain: records at or below it are
            // replays (the spool re-read after a crash), already stored.
            let mut heads: Vec<(&str, u64)> = Vec::new();
            // Taken: an error below drops it, and the next batch starts a
            // block of its own.
            let mut open = self.tail.take().unwrap_or_default();
            // Records stored now (not replays), with their bodies: only
            // they add to usage and lineage.
            let mut new_records: Vec<(&Record, &EventBody)> = Vec::with_capacity(batch.len());
            for (b, p) in batch.iter().zip(&parsed) {
                let r = match b.entry {
                    Entry::Record(r) => r,
                    Entry::Checkpoint(c) => {
                        ck.execute(params![
                            c.chain,
                            seq_i(c.seq),
                            c.time_ms,
                            c.reason,
                            c.environment,
                            c.before_ms,
                            c.mac,
                            c.signature
                        ])
                        .map_err(db)?;
                        continue;
                    }
                };
                let at = match heads.iter().position(|(c, _)| *c == r.chain) {
                    Some(at) => at,
                    None => {
                        heads.push((&r.chain, head_seq(&tx, &r.chain)?));
                        heads.len() - 1
                    }
                };
                if r.seq <= heads[at].1 {
                    continue; // replayed: already stored
                }
                heads[at].1 = r.seq;
                let ev = b.event.or(p.as_ref());
                let idx = ev.map(EventBody::index_ref).unwrap_or_default();
                let seq = seq_i(r.seq);
                let (shape, template) = self
                    .cache
                    .shape_and_template(&tx, r, ev, b.shape, &mut new)?;
                if let Some(id) = template {
                    let last = used_templates.entry(id).or_insert((r.time_ms, seq));
                    *last = (last.0.max(r.time_ms), last.1.max(seq));
                }
                let body = match template {
                    Some(_) => Some(self.cache.values_buf.as_str()),
                    None => r.body.as_deref(),
                };
                if open.chain != r.chain || open.len >= block::BLOCK_MAX {
                    open.flush(&tx)?;
                    open.chain.clear();
                    open.chain.push_str(&r.chain);
                }
                open.push(&RecordRef {
                    seq: r.seq,
                    ulid: &r.ulid,
                    time_ms: r.time_ms,
                    code: &r.code,
                    environment: &r.environment,
                    principal: idx.principal,
                    target: idx.target,
                    session: idx.session,
                    decision: idx.decision,
                    fingerprint: idx.fingerprint,
                    digest: &r.digest,
                    mac: &r.mac,
                    shape,
                    tpl: template,
                    body,
                });
                if let Some(ev) = ev {
                    new_records.push((r, ev));
                }
            }
            open.write(&tx)?;
            write_derived(&tx, &used_templates, &new_records)?;
            tail = Some(open).filter(|o| o.len > 0 && o.len < block::BLOCK_MAX);
        }
        tx.commit().map_err(db)?;
        self.tail = tail;
        self.cache.remember(new);
        Ok(())
    }

    fn head(&mut self, chain: &str) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        let last: Option<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT first_seq, data FROM audit_blocks WHERE chain = ?1 ORDER BY first_seq DESC LIMIT 1",
            )
            .and_then(|mut st| st.query_row(params![chain], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(db)?;
        let Some((first, data)) = last else {
            return Ok(None);
        };
        Ok(decode_block(chain, first, &data)?
            .into_iter()
            .max_by_key(|r| r.seq)
            .map(|r| (r.seq, r.mac)))
    }

    fn read_chain(
        &mut self,
        chain: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, AuditError> {
        let mut found = Vec::new();
        chain_blocks(
            &self.conn,
            chain,
            after.saturating_add(1),
            &mut |_, records| {
                found.extend(records.into_iter().filter(|r| r.seq > after));
                Ok(found.len() < limit)
            },
        )?;
        found.truncate(limit);
        let mut cache = HashMap::default();
        found
            .into_iter()
            .map(|r| {
                let body = self.body_of(&r, &mut cache)?;
                Ok(StoredRecord {
                    index: r.index(),
                    record: r.record(chain, body),
                })
            })
            .collect()
    }

    fn checkpoints(&mut self, chain: &str) -> Result<Vec<Checkpoint>, AuditError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT chain, seq, mac, time_ms, reason, environment, before_ms, signature
                 FROM audit_checkpoints WHERE chain = ?1 ORDER BY seq, time_ms",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![chain], |r| {
                Ok(Checkpoint {
                    chain: r.get(0)?,
                    seq: r.get::<_, i64>(1)?.max(0) as u64,
                    mac: r.get(2)?,
                    time_ms: r.get(3)?,
                    reason: r.get(4)?,
                    environment: r.get(5)?,
                    before_ms: r.get(6)?,
                    signature: r.get(7)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn search(&mut self, q: &Query) -> Result<Page, AuditError> {
        let found = self.find(q, search::page_size(q) + 1)?;
        let mut cache = HashMap::default();
        let mut rows = Vec::with_capacity(found.len());
        for (chain, r) in found {
            let body = self.body_of(&r, &mut cache)?;
            rows.push(search::row(
                chain,
                seq_i(r.seq),
                r.ulid,
                r.time_ms,
                r.code,
                r.environment,
                r.principal,
                r.target,
                r.decision,
                body,
                !q.parsed_only,
            ));
        }
        Ok(search::page(q, rows))
    }

    fn usage(&mut self, q: &UsageQuery) -> Result<Vec<UsageRow>, AuditError> {
        let sql = usage::build_usage(q, Dialect::Sqlite);
        let params: Vec<Box<dyn ToSql>> = sql.params.iter().map(to_sql).collect();
        let mut st = self.conn.prepare(&sql.text).map_err(db)?;
        let rows = st
            .query_map(params_from_iter(params.iter()), |r| {
                Ok(UsageRow {
                    principal: r.get(0)?,
                    on_behalf_of: r.get(1)?,
                    target: r.get(2)?,
                    environment: r.get(3)?,
                    table: r.get(4)?,
                    column: r.get(5)?,
                    masked: r.get(6)?,
                    reads: r.get(7)?,
                    writes: r.get(8)?,
                    rows: r.get(9)?,
                    bytes: r.get(10)?,
                    first_seen: format_time(r.get(11)?),
                    last_seen: format_time(r.get(12)?),
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn lineage_into(&mut self, table: &str) -> Result<Vec<LineageEdge>, AuditError> {
        let t = table.to_lowercase();
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT source, destination, kind, fingerprint, principal, on_behalf_of, principal_kind,
                 target, environment, time_ms, chain, seq FROM audit_lineage
                 WHERE destination = ?1 OR destination LIKE ?2 ESCAPE '\\' ORDER BY time_ms DESC, id DESC",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![t, format!("%.{}", search::like_escape(&t))], |r| {
                let time_ms: i64 = r.get(9)?;
                Ok(LineageEdge {
                    source: r.get(0)?,
                    destination: r.get(1)?,
                    kind: r.get(2)?,
                    fingerprint: r.get(3)?,
                    principal: r.get(4)?,
                    on_behalf_of: r.get(5)?,
                    principal_kind: r.get(6)?,
                    target: r.get(7)?,
                    environment: r.get(8)?,
                    time_ms,
                    time: format_time(time_ms),
                    chain: r.get(10)?,
                    seq: r.get::<_, i64>(11)?.max(0) as u64,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn environments(&mut self, chain: &str) -> Result<Vec<String>, AuditError> {
        // `b` keys: environments with bodies (see store/block.rs).
        let mut st = self
            .conn
            .prepare(
                "SELECT DISTINCT substr(k.key, 2) FROM audit_block_keys k
                 WHERE k.key >= 'b' AND k.key < 'c'
                   AND k.block IN (SELECT id FROM audit_blocks WHERE chain = ?1)",
            )
            .map_err(db)?;
        let rows = st.query_map(params![chain], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn count_removable(
        &mut self,
        chain: &str,
        environment: &str,
        before_ms: i64,
        max_seq: u64,
    ) -> Result<u64, AuditError> {
        let mut n = 0;
        for (_, first, data) in
            retention_blocks(&self.conn, chain, environment, before_ms, max_seq)?
        {
            n += decode_block(chain, first, &data)?
                .iter()
                .filter(|r| removable(r, environment, before_ms, max_seq))
                .count() as u64;
        }
        Ok(n)
    }

    fn count(&mut self, q: &Query) -> Result<u64, AuditError> {
        let mut n = 0u64;
        self.each_match(q, &mut |m| {
            n += u64::from(matches!(m, Match::Record(..)));
            true
        })?;
        Ok(n)
    }

    fn remove_bodies(
        &mut self,
        chain: &str,
        environment: &str,
        before_ms: i64,
        max_seq: u64,
    ) -> Result<u64, AuditError> {
        self.tail = None;
        // Read inside the (write) transaction: a second retention run, from
        // the CLI, waits and then finds the blocks as this one left them.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let blocks = retention_blocks(&tx, chain, environment, before_ms, max_seq)?;
        let mut n = 0u64;
        for (id, first, data) in blocks {
            let mut records = decode_block(chain, first, &data)?;
            let before = records.clone();
            for r in records.iter_mut() {
                if removable(r, environment, before_ms, max_seq) {
                    *r = BlockRecord {
                        seq: r.seq,
                        ulid: std::mem::take(&mut r.ulid),
                        time_ms: r.time_ms,
                        code: std::mem::take(&mut r.code),
                        environment: std::mem::take(&mut r.environment),
                        digest: std::mem::take(&mut r.digest),
                        mac: std::mem::take(&mut r.mac),
                        ..BlockRecord::default()
                    };
                    n += 1;
                }
            }
            delete_block(&tx, id, &before)?;
            insert_block(&tx, chain, &records)?;
        }
        tx.execute_batch(SHAPES_GC).map_err(db)?;
        self.cache.shapes.clear();
        self.cache.hints.clear();
        // Every event using such a template matched: the template records
        // the latest time and seq that used it.
        tx.execute(
            "DELETE FROM audit_body_templates
             WHERE chain = ?1 AND environment = ?2 AND last_ms < ?3 AND last_seq <= ?4",
            params![chain, environment, before_ms, seq_i(max_seq)],
        )
        .map_err(db)?;
        self.cache.templates.clear();
        tx.commit().map_err(db)?;
        Ok(n)
    }

    fn first_with_body(&mut self, chain: &str) -> Result<Option<u64>, AuditError> {
        let first: Option<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT first_seq, data FROM audit_blocks WHERE chain = ?1 AND bodies > 0
                 ORDER BY first_seq LIMIT 1",
            )
            .and_then(|mut st| {
                st.query_row(params![chain], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(db)?;
        let Some((first, data)) = first else {
            return Ok(None);
        };
        Ok(decode_block(chain, first, &data)?
            .iter()
            .filter(|r| r.body.is_some())
            .map(|r| r.seq)
            .min())
    }

    fn mac_at(&mut self, chain: &str, seq: u64) -> Result<Option<Vec<u8>>, AuditError> {
        let mut mac = None;
        chain_blocks(&self.conn, chain, seq, &mut |_, records| {
            mac = records.into_iter().find(|r| r.seq == seq).map(|r| r.mac);
            Ok(false)
        })?;
        Ok(mac)
    }

    fn search_index_problem(&mut self, chain: &str) -> Result<Option<(u64, String)>, AuditError> {
        let mut indexed: HashMap<i64, std::collections::HashSet<String>> = HashMap::default();
        {
            let mut st = self
                .conn
                .prepare(
                    "SELECT block, key FROM audit_block_keys
                     WHERE block IN (SELECT id FROM audit_blocks WHERE chain = ?1)",
                )
                .map_err(db)?;
            let mut rows = st.query(params![chain]).map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                indexed
                    .entry(row.get(0).map_err(db)?)
                    .or_default()
                    .insert(row.get(1).map_err(db)?);
            }
        }
        let mut problem = None;
        chain_blocks(&self.conn, chain, 0, &mut |id, records| {
            let keys = indexed.get(&id);
            for r in &records {
                let mut missing = None;
                block::add_keys(&r.as_ref(), &mut |k| {
                    if missing.is_none() && !keys.is_some_and(|ks| ks.contains(k)) {
                        missing = k.chars().next();
                    }
                });
                if let Some(letter) = missing {
                    problem = Some((
                        r.seq,
                        format!(
                            "search index changed: the record's {} is not indexed, so searches would not find it",
                            block::key_field(letter)
                        ),
                    ));
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        Ok(problem)
    }

    fn delete_through(&mut self, chain: &str, seq: u64) -> Result<u64, AuditError> {
        self.tail = None;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let mut blocks = Vec::new();
        {
            let mut st = tx
                .prepare_cached(
                    "SELECT id, first_seq, data FROM audit_blocks WHERE chain = ?1 AND first_seq <= ?2",
                )
                .map_err(db)?;
            let rows = st
                .query_map(params![chain, seq_i(seq)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .map_err(db)?;
            for row in rows {
                let (id, first, data) = row.map_err(db)?;
                blocks.push((id, decode_block(chain, first, &data)?));
            }
        }
        let mut n = 0u64;
        for (id, records) in blocks {
            delete_block(&tx, id, &records)?;
            let (gone, kept): (Vec<BlockRecord>, Vec<BlockRecord>) =
                records.into_iter().partition(|r| r.seq <= seq);
            n += gone.len() as u64;
            insert_block(&tx, chain, &kept)?;
        }
        tx.execute_batch(SHAPES_GC).map_err(db)?;
        self.cache.shapes.clear();
        self.cache.hints.clear();
        tx.execute(
            "DELETE FROM audit_checkpoints WHERE chain = ?1 AND (seq < ?2 OR (seq = ?2 AND reason <> 'cut'))",
            params![chain, seq_i(seq)],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(n)
    }
}
