//! The embedded store: one SQLite file in WAL mode with an FTS5 index.

use std::fmt::Write as _;
use std::path::Path;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, ToSql};

use super::{template, BatchEntry, ChainInfo, Entry, Store, StoredRecord};
use crate::chain::Checkpoint;
use crate::event::{EventBody, IndexFields, Record};
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
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY,
    chain TEXT NOT NULL, seq INTEGER NOT NULL, ulid TEXT NOT NULL, time_ms INTEGER NOT NULL,
    code TEXT NOT NULL, environment TEXT NOT NULL, principal TEXT NOT NULL,
    target TEXT NOT NULL, session TEXT NOT NULL, decision TEXT NOT NULL,
    fingerprint TEXT NOT NULL, digest BLOB NOT NULL, body TEXT, mac BLOB NOT NULL,
    shape INTEGER, tpl INTEGER,
    UNIQUE (chain, seq));
-- A statement body is its template (tpl) with the values in body filled in
-- (see store/template.rs); last_ms and last_seq tell retention when every
-- event using it has had its body removed.
CREATE TABLE IF NOT EXISTS audit_body_templates (
    id INTEGER PRIMARY KEY, chain TEXT NOT NULL, environment TEXT NOT NULL,
    last_ms INTEGER NOT NULL, last_seq INTEGER NOT NULL, body TEXT NOT NULL,
    UNIQUE (chain, body));
CREATE INDEX IF NOT EXISTS audit_events_ulid ON audit_events (ulid);
CREATE INDEX IF NOT EXISTS audit_events_principal ON audit_events (principal, ulid);
-- The few events an auditor asks for by kind or decision: refused
-- statements and everything but statements (whose decision is ''). Allowed
-- statements, nearly all events, never touch it.
CREATE INDEX IF NOT EXISTS audit_events_notable ON audit_events (ulid) WHERE decision <> 'allow';
-- Time ranges use the ULID index (search adds the ULID bound); files made
-- before this had an index on time_ms that only cost writes.
DROP INDEX IF EXISTS audit_events_time;
CREATE TABLE IF NOT EXISTS audit_event_objects (
    tbl TEXT NOT NULL, col TEXT NOT NULL, event_id INTEGER NOT NULL,
    PRIMARY KEY (tbl, col, event_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_event_objects_event ON audit_event_objects (event_id);
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
INSERT OR IGNORE INTO audit_meta (key, value) VALUES ('schema', '1');
";

/// Brings a file made by an earlier version up to [`SCHEMA`]: the shape of
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

/// SQLite store.
pub struct SqliteStore {
    conn: Connection,
    /// Shape key → shape id, for shapes committed to this file.
    shapes: HashMap<String, i64>,
    /// Buffer for shape keys.
    key_buf: String,
    /// `chain \n template` → template id, for templates in this file.
    templates: HashMap<String, i64>,
    /// Buffers for a body's template key and values.
    template_buf: String,
    values_buf: String,
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

/// Deletes shapes no event refers to any more, with their objects and FTS
/// rows (after retention removed or deleted events).
const SHAPES_GC: &str = "
CREATE TEMP TABLE IF NOT EXISTS gone_shapes (shape INTEGER PRIMARY KEY);
DELETE FROM gone_shapes;
INSERT INTO gone_shapes SELECT shape FROM audit_shapes s
  WHERE NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.shape = s.shape);
DELETE FROM audit_events_fts WHERE rowid IN (SELECT -shape FROM gone_shapes);
DELETE FROM audit_shape_objects WHERE shape IN (SELECT shape FROM gone_shapes);
DELETE FROM audit_shapes WHERE shape IN (SELECT shape FROM gone_shapes);
DELETE FROM gone_shapes;
";

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
        // WAL: readers (the CLI, the admin API) never block the writer.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn,
            shapes: HashMap::default(),
            key_buf: String::new(),
            templates: HashMap::default(),
            template_buf: String::new(),
            values_buf: String::new(),
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

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let seq: i64 = row.get(1)?;
    Ok(StoredRecord {
        record: Record {
            chain: row.get(0)?,
            seq: seq.max(0) as u64,
            ulid: row.get(2)?,
            time_ms: row.get(3)?,
            code: row.get(4)?,
            environment: row.get(5)?,
            digest: row.get(11)?,
            body: full_body(row.get(12)?, row.get(14)?),
            mac: row.get(13)?,
        },
        index: IndexFields {
            code: row.get(4)?,
            environment: row.get(5)?,
            principal: row.get(6)?,
            target: row.get(7)?,
            session: row.get(8)?,
            decision: row.get(9)?,
            fingerprint: row.get(10)?,
        },
    })
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
                 UNION SELECT DISTINCT chain, '', 0 FROM audit_events
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
        // Shapes found or made in this transaction; cached only once it commits.
        let mut new_shapes: HashMap<String, i64> = HashMap::default();
        let mut new_templates: HashMap<String, i64> = HashMap::default();
        // Templates used in this batch → the latest (time_ms, seq) using them.
        let mut used_templates: HashMap<i64, (i64, i64)> = HashMap::default();
        let tx = self.conn.transaction().map_err(db)?;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO audit_events (chain, seq, ulid, time_ms, code, environment,
                     principal, target, session, decision, fingerprint, digest, body, mac, shape, tpl)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .map_err(db)?;
            let mut obj = tx
                .prepare_cached("INSERT OR IGNORE INTO audit_event_objects (tbl, col, event_id) VALUES (?1, ?2, ?3)")
                .map_err(db)?;
            let mut fts = tx
                .prepare_cached("INSERT INTO audit_events_fts (rowid, text) VALUES (?1, ?2)")
                .map_err(db)?;
            let mut ck = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO audit_checkpoints (chain, seq, time_ms, reason, environment,
                     before_ms, mac, signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db)?;
            // Records inserted now (not replays), with their bodies: only
            // they add to usage and lineage.
            let mut new_records: Vec<(&Record, &EventBody)> = Vec::with_capacity(batch.len());
            for (b, p) in batch.iter().zip(&parsed) {
                match b.entry {
                    Entry::Record(r) => {
                        let ev = b.event.or(p.as_ref());
                        let idx = ev.map(EventBody::index_ref).unwrap_or_default();
                        let shaped = ev.is_some_and(|ev| shape_key_into(ev, &mut self.key_buf));
                        let shape = match (ev, shaped) {
                            (Some(ev), true) => {
                                Some(match self.shapes.get(self.key_buf.as_str()) {
                                    Some(&shape) => shape,
                                    None => {
                                        shape_id(&tx, ev, self.key_buf.clone(), &mut new_shapes)?
                                    }
                                })
                            }
                            _ => None,
                        };
                        let seq = seq_i(r.seq);
                        let template = match (ev, r.body.as_deref()) {
                            (Some(EventBody::Statement(_)), Some(body)) => {
                                self.template_buf.clear();
                                self.template_buf.push_str(&r.chain);
                                self.template_buf.push('\n');
                                if template::split(
                                    body,
                                    &mut self.template_buf,
                                    &mut self.values_buf,
                                ) {
                                    let id = match self.templates.get(self.template_buf.as_str()) {
                                        Some(&id) => id,
                                        None => template_id(
                                            &tx,
                                            &self.template_buf,
                                            &r.chain,
                                            &r.environment,
                                            r.time_ms,
                                            seq,
                                            &mut new_templates,
                                        )?,
                                    };
                                    let last = used_templates.entry(id).or_insert((r.time_ms, seq));
                                    *last = (last.0.max(r.time_ms), last.1.max(seq));
                                    Some(id)
                                } else {
                                    None
                                }
                            }
                            _ => None,
                        };
                        let body = match template {
                            Some(_) => Some(self.values_buf.as_str()),
                            None => r.body.as_deref(),
                        };
                        let n = ins
                            .execute(params![
                                r.chain,
                                seq,
                                r.ulid,
                                r.time_ms,
                                r.code,
                                r.environment,
                                idx.principal,
                                idx.target,
                                idx.session,
                                idx.decision,
                                idx.fingerprint,
                                r.digest,
                                body,
                                r.mac,
                                shape,
                                template
                            ])
                            .map_err(db)?;
                        if n == 0 {
                            continue; // replayed: already stored
                        }
                        let id = tx.last_insert_rowid();
                        if let Some(ev) = ev {
                            if shape.is_none() {
                                for (t, c) in ev.objects_ref() {
                                    obj.execute(params![t, c, id]).map_err(db)?;
                                }
                                fts.execute(params![id, ev.search_text()]).map_err(db)?;
                            }
                            new_records.push((r, ev));
                        }
                    }
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
                    }
                }
            }
            let mut touch = tx
                .prepare_cached(
                    "UPDATE audit_body_templates SET last_ms = MAX(last_ms, ?2), last_seq = MAX(last_seq, ?3)
                     WHERE id = ?1",
                )
                .map_err(db)?;
            for (id, (ms, seq)) in &used_templates {
                touch.execute(params![id, ms, seq]).map_err(db)?;
            }
            let (sums, edges) = super::derive(&new_records);
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
        }
        tx.commit().map_err(db)?;
        if self.shapes.len() + new_shapes.len() > SHAPE_CACHE {
            self.shapes.clear();
        }
        self.shapes.extend(new_shapes);
        if self.templates.len() + new_templates.len() > TEMPLATE_CACHE {
            self.templates.clear();
        }
        self.templates.extend(new_templates);
        Ok(())
    }

    fn head(&mut self, chain: &str) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        self.conn
            .query_row(
                "SELECT seq, mac FROM audit_events WHERE chain = ?1 ORDER BY seq DESC LIMIT 1",
                params![chain],
                |r| Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()
            .map_err(db)
    }

    fn read_chain(
        &mut self,
        chain: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, AuditError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT e.chain, e.seq, e.ulid, e.time_ms, e.code, e.environment, e.principal, e.target,
                 e.session, e.decision, e.fingerprint, e.digest, e.body, e.mac, t.body
                 FROM audit_events e LEFT JOIN audit_body_templates t ON t.id = e.tpl
                 WHERE e.chain = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![chain, seq_i(after), limit as i64], record_from_row)
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
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
        let sql = search::build(q, Dialect::Sqlite);
        let params: Vec<Box<dyn ToSql>> = sql.params.iter().map(to_sql).collect();
        let mut st = self.conn.prepare(&sql.text).map_err(db)?;
        let rows = st
            .query_map(params_from_iter(params.iter()), |r| {
                Ok(search::row(
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    full_body(r.get(9)?, r.get(10)?),
                    !q.parsed_only,
                ))
            })
            .map_err(db)?;
        let rows = rows.collect::<Result<Vec<_>, _>>().map_err(db)?;
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
        let mut st = self
            .conn
            .prepare("SELECT DISTINCT environment FROM audit_events WHERE chain = ?1 AND body IS NOT NULL")
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
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM audit_events WHERE chain = ?1 AND environment = ?2 AND time_ms < ?3
                 AND seq <= ?4 AND body IS NOT NULL",
                params![chain, environment, before_ms, seq_i(max_seq)],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(db)
    }

    fn count(&mut self, q: &Query) -> Result<u64, AuditError> {
        let sql = search::build_count(q, Dialect::Sqlite);
        let params: Vec<Box<dyn ToSql>> = sql.params.iter().map(to_sql).collect();
        self.conn
            .query_row(&sql.text, params_from_iter(params.iter()), |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(db)
    }

    fn remove_bodies(
        &mut self,
        chain: &str,
        environment: &str,
        before_ms: i64,
        max_seq: u64,
    ) -> Result<u64, AuditError> {
        let tx = self.conn.transaction().map_err(db)?;
        let cond =
            "chain = ?1 AND environment = ?2 AND time_ms < ?3 AND seq <= ?4 AND body IS NOT NULL";
        let p = params![chain, environment, before_ms, seq_i(max_seq)];
        tx.execute(
            &format!("DELETE FROM audit_events_fts WHERE rowid IN (SELECT id FROM audit_events WHERE {cond})"),
            p,
        )
        .map_err(db)?;
        tx.execute(
            &format!("DELETE FROM audit_event_objects WHERE event_id IN (SELECT id FROM audit_events WHERE {cond})"),
            p,
        )
        .map_err(db)?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE audit_events SET body = NULL, principal = '', target = '', session = '',
                     decision = '', fingerprint = '', shape = NULL, tpl = NULL WHERE {cond}"
                ),
                p,
            )
            .map_err(db)?;
        tx.execute_batch(SHAPES_GC).map_err(db)?;
        self.shapes.clear();
        // Every event using such a template matched `cond`: the template
        // records the latest time and seq that used it.
        tx.execute(
            "DELETE FROM audit_body_templates
             WHERE chain = ?1 AND environment = ?2 AND last_ms < ?3 AND last_seq <= ?4",
            p,
        )
        .map_err(db)?;
        self.templates.clear();
        tx.commit().map_err(db)?;
        Ok(n as u64)
    }

    fn first_with_body(&mut self, chain: &str) -> Result<Option<u64>, AuditError> {
        self.conn
            .query_row(
                "SELECT MIN(seq) FROM audit_events WHERE chain = ?1 AND body IS NOT NULL",
                params![chain],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map(|v| v.map(|s| s.max(0) as u64))
            .map_err(db)
    }

    fn mac_at(&mut self, chain: &str, seq: u64) -> Result<Option<Vec<u8>>, AuditError> {
        self.conn
            .query_row(
                "SELECT mac FROM audit_events WHERE chain = ?1 AND seq = ?2",
                params![chain, seq_i(seq)],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    fn delete_through(&mut self, chain: &str, seq: u64) -> Result<u64, AuditError> {
        let tx = self.conn.transaction().map_err(db)?;
        let s = seq_i(seq);
        let sub = "SELECT id FROM audit_events WHERE chain = ?1 AND seq <= ?2";
        tx.execute(
            &format!("DELETE FROM audit_events_fts WHERE rowid IN ({sub})"),
            params![chain, s],
        )
        .map_err(db)?;
        tx.execute(
            &format!("DELETE FROM audit_event_objects WHERE event_id IN ({sub})"),
            params![chain, s],
        )
        .map_err(db)?;
        let n = tx
            .execute(
                "DELETE FROM audit_events WHERE chain = ?1 AND seq <= ?2",
                params![chain, s],
            )
            .map_err(db)?;
        tx.execute_batch(SHAPES_GC).map_err(db)?;
        self.shapes.clear();
        tx.execute(
            "DELETE FROM audit_checkpoints WHERE chain = ?1 AND (seq < ?2 OR (seq = ?2 AND reason <> 'cut'))",
            params![chain, s],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of a search, as SQLite reports it.
    fn plan(store: &SqliteStore, q: &Query) -> String {
        let sql = search::build(q, Dialect::Sqlite);
        let params: Vec<Box<dyn ToSql>> = sql.params.iter().map(to_sql).collect();
        let mut st = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text))
            .unwrap();
        let rows = st
            .query_map(params_from_iter(params.iter()), |r| r.get::<_, String>(3))
            .unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join("\n")
    }

    #[test]
    fn refused_statements_and_sessions_are_found_without_scanning_the_trail() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("audit.db")).unwrap();
        for q in [
            Query {
                decision: Some(crate::event::Decision::Deny),
                ..Query::default()
            },
            Query {
                decision: Some(crate::event::Decision::Approval),
                principal: Some("alice".into()),
                ..Query::default()
            },
            Query {
                kind: Some("session".into()),
                ..Query::default()
            },
            Query {
                kind: Some("auth".into()),
                since: Some(1_700_000_000_000),
                ..Query::default()
            },
        ] {
            let plan = plan(&store, &q);
            assert!(
                plan.contains("audit_events_notable") || plan.contains("audit_events_principal"),
                "{q:?}: {plan}"
            );
            assert!(
                !plan.contains("SCAN e\n") && plan != "SCAN e",
                "{q:?}: {plan}"
            );
        }
        // Allowed statements are most of the trail: not in that index.
        let allowed = Query {
            decision: Some(crate::event::Decision::Allow),
            ..Query::default()
        };
        assert!(!plan(&store, &allowed).contains("audit_events_notable"));
    }
}
