//! The shared store: PostgreSQL, for several replicas (one chain each).
//!
//! Methods block on a small private runtime, so call them from a plain
//! thread (the writer) or `spawn_blocking`. TLS as `[audit] store_tls`
//! says (see [`super::pg_tls`]).

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::pg_tls::PgLocation;

use super::{BatchEntry, ChainInfo, Entry, Store, StoredRecord};
use crate::chain::Checkpoint;
use crate::event::{EventBody, IndexFields, Record};
use crate::search::{self, Dialect, Page, Param, Query};
use crate::usage::{self, LineageEdge, UsageQuery, UsageRow};
use crate::util::format_time;
use crate::AuditError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_chains (
    chain TEXT PRIMARY KEY, public_key TEXT NOT NULL, created_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_events (
    id BIGSERIAL PRIMARY KEY,
    chain TEXT NOT NULL, seq BIGINT NOT NULL, ulid TEXT NOT NULL, time_ms BIGINT NOT NULL,
    code TEXT NOT NULL, environment TEXT NOT NULL, principal TEXT NOT NULL,
    target TEXT NOT NULL, session TEXT NOT NULL, decision TEXT NOT NULL,
    fingerprint TEXT NOT NULL, digest BYTEA NOT NULL, body TEXT, mac BYTEA NOT NULL,
    search_text TEXT NOT NULL DEFAULT '',
    UNIQUE (chain, seq));
CREATE INDEX IF NOT EXISTS audit_events_ulid ON audit_events (ulid COLLATE \"C\");
CREATE INDEX IF NOT EXISTS audit_events_principal ON audit_events (principal);
CREATE INDEX IF NOT EXISTS audit_events_notable ON audit_events (ulid COLLATE \"C\") WHERE decision <> 'allow';
DROP INDEX IF EXISTS audit_events_time;
CREATE INDEX IF NOT EXISTS audit_events_fts ON audit_events USING gin (to_tsvector('simple', search_text));
CREATE TABLE IF NOT EXISTS audit_event_objects (
    tbl TEXT NOT NULL, col TEXT NOT NULL, event_id BIGINT NOT NULL,
    PRIMARY KEY (tbl, col, event_id));
CREATE INDEX IF NOT EXISTS audit_event_objects_event ON audit_event_objects (event_id);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain TEXT NOT NULL, seq BIGINT NOT NULL, time_ms BIGINT NOT NULL, reason TEXT NOT NULL,
    environment TEXT, before_ms BIGINT, mac BYTEA NOT NULL, signature BYTEA NOT NULL,
    PRIMARY KEY (chain, seq, reason, time_ms));
CREATE TABLE IF NOT EXISTS audit_usage_daily (
    day BIGINT NOT NULL, principal TEXT NOT NULL, on_behalf_of TEXT NOT NULL,
    target TEXT NOT NULL, environment TEXT NOT NULL, tbl TEXT NOT NULL, col TEXT NOT NULL,
    masked BOOLEAN NOT NULL, reads BIGINT NOT NULL, writes BIGINT NOT NULL,
    nrows BIGINT NOT NULL, nbytes BIGINT NOT NULL, first_ms BIGINT NOT NULL, last_ms BIGINT NOT NULL,
    PRIMARY KEY (day, principal, on_behalf_of, target, environment, tbl, col, masked));
CREATE INDEX IF NOT EXISTS audit_usage_tbl ON audit_usage_daily (tbl, col);
CREATE TABLE IF NOT EXISTS audit_lineage (
    id BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, destination TEXT NOT NULL, kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL, principal TEXT NOT NULL, on_behalf_of TEXT NOT NULL,
    principal_kind TEXT NOT NULL, target TEXT NOT NULL, environment TEXT NOT NULL,
    time_ms BIGINT NOT NULL, chain TEXT NOT NULL, seq BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_lineage_dest ON audit_lineage (destination);
";

/// PostgreSQL store.
pub struct PgStore {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

fn db(e: tokio_postgres::Error) -> AuditError {
    AuditError::Store(format!("postgres: {}", super::pg_tls::describe(&e)))
}

fn seq_i(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn boxed(params: &[Param]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync + Send> {
            match p {
                Param::Text(s) => Box::new(s.clone()),
                Param::Int(i) => Box::new(*i),
            }
        })
        .collect()
}

fn refs(b: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    b.iter()
        .map(|x| x.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

impl PgStore {
    /// Connect to a URL (TLS as its `sslmode` says; 10 s timeout) and
    /// create the schema if needed. `password` overrides one in the URL.
    pub fn connect(url: &str, password: Option<&str>) -> Result<PgStore, AuditError> {
        let location = PgLocation {
            url: url.to_owned(),
            tls: None,
            ca_file: None,
        };
        Self::connect_to(&location, password)
    }

    /// [`connect`](Self::connect) with the TLS settings of a config.
    pub fn connect_to(
        location: &PgLocation,
        password: Option<&str>,
    ) -> Result<PgStore, AuditError> {
        let (cfg, tls) = location.connect_config(password, "sluice-audit")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AuditError::Store(format!("runtime: {e}")))?;
        let client = rt.block_on(async {
            let (client, conn) = cfg.connect(tls).await.map_err(db)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "audit store connection ended");
                }
            });
            // Replicas starting together must not race on CREATE TABLE.
            client
                .batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock(7377418350); {SCHEMA} COMMIT;"
                ))
                .await
                .map_err(db)?;
            Ok::<_, AuditError>(client)
        })?;
        Ok(PgStore { rt, client })
    }

    /// Run raw SQL (tests use it to tamper).
    pub fn execute_raw(&mut self, sql: &str) -> Result<(), AuditError> {
        let c = &self.client;
        self.rt.block_on(c.batch_execute(sql)).map_err(db)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, AuditError> {
        let c = &self.client;
        self.rt.block_on(c.query(sql, params)).map_err(db)
    }

    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, AuditError> {
        let c = &self.client;
        self.rt.block_on(c.execute(sql, params)).map_err(db)
    }
}

fn record_from_row(r: &tokio_postgres::Row) -> Result<StoredRecord, tokio_postgres::Error> {
    Ok(StoredRecord {
        record: Record {
            chain: r.try_get(0)?,
            seq: r.try_get::<_, i64>(1)?.max(0) as u64,
            ulid: r.try_get(2)?,
            time_ms: r.try_get(3)?,
            code: r.try_get(4)?,
            environment: r.try_get(5)?,
            digest: r.try_get(11)?,
            body: r.try_get(12)?,
            mac: r.try_get(13)?,
        },
        index: IndexFields {
            code: r.try_get(4)?,
            environment: r.try_get(5)?,
            principal: r.try_get(6)?,
            target: r.try_get(7)?,
            session: r.try_get(8)?,
            decision: r.try_get(9)?,
            fingerprint: r.try_get(10)?,
        },
    })
}

impl Store for PgStore {
    fn register_chain(
        &mut self,
        chain: &str,
        public_key_hex: &str,
        time_ms: i64,
    ) -> Result<(), AuditError> {
        self.exec(
            "INSERT INTO audit_chains (chain, public_key, created_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&chain, &public_key_hex, &time_ms],
        )
        .map(|_| ())
    }

    fn chains(&mut self) -> Result<Vec<ChainInfo>, AuditError> {
        let rows = self.query(
            "SELECT chain, public_key, created_ms FROM audit_chains
             UNION SELECT DISTINCT chain, '', 0::bigint FROM audit_events WHERE chain NOT IN (SELECT chain FROM audit_chains)
             UNION SELECT DISTINCT chain, '', 0::bigint FROM audit_checkpoints WHERE chain NOT IN (SELECT chain FROM audit_chains)
             ORDER BY 1",
            &[],
        )?;
        let mut out: Vec<ChainInfo> = rows
            .iter()
            .map(|r| {
                Ok(ChainInfo {
                    chain: r.try_get(0)?,
                    public_key: r.try_get(1)?,
                    created_ms: r.try_get(2)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(db)?;
        out.dedup_by(|a, b| a.chain == b.chain);
        Ok(out)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), AuditError> {
        let batch: Vec<BatchEntry<'_>> = entries.iter().map(BatchEntry::new).collect();
        self.append_batch(&batch)
    }

    fn append_batch(&mut self, batch: &[BatchEntry<'_>]) -> Result<(), AuditError> {
        let parsed = super::parse_bodies(batch);
        let client = &mut self.client;
        self.rt.block_on(async {
            let tx = client.transaction().await.map_err(db)?;
            let ins = tx
                .prepare(
                    "INSERT INTO audit_events (chain, seq, ulid, time_ms, code, environment, principal, target,
                     session, decision, fingerprint, digest, body, mac, search_text)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                     ON CONFLICT (chain, seq) DO NOTHING RETURNING id",
                )
                .await
                .map_err(db)?;
            let obj = tx
                .prepare("INSERT INTO audit_event_objects (tbl, col, event_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .await
                .map_err(db)?;
            let ck = tx
                .prepare(
                    "INSERT INTO audit_checkpoints (chain, seq, time_ms, reason, environment, before_ms, mac, signature)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(db)?;
            // Records inserted now (not replays), with their bodies: only
            // they add to usage and lineage.
            let mut new_records: Vec<(&Record, &EventBody)> = Vec::with_capacity(batch.len());
            for (b, p) in batch.iter().zip(&parsed) {
                match b.entry {
                    Entry::Record(r) => {
                        let ev = b.event.or(p.as_ref());
                        let idx = ev.map(EventBody::index_ref).unwrap_or_default();
                        let text = ev.map(EventBody::search_text).unwrap_or_default();
                        let rows = tx
                            .query(
                                &ins,
                                &[
                                    &r.chain,
                                    &seq_i(r.seq),
                                    &r.ulid,
                                    &r.time_ms,
                                    &r.code,
                                    &r.environment,
                                    &idx.principal,
                                    &idx.target,
                                    &idx.session,
                                    &idx.decision,
                                    &idx.fingerprint,
                                    &r.digest,
                                    &r.body,
                                    &r.mac,
                                    &text,
                                ],
                            )
                            .await
                            .map_err(db)?;
                        let Some(row) = rows.first() else {
                            continue; // replayed: already stored
                        };
                        let id: i64 = row.try_get(0).map_err(db)?;
                        if let Some(ev) = ev {
                            for (t, c) in ev.objects_ref() {
                                let (t, c): (&str, &str) = (&t, &c);
                                tx.execute(&obj, &[&t, &c, &id]).await.map_err(db)?;
                            }
                            new_records.push((r, ev));
                        }
                    }
                    Entry::Checkpoint(c) => {
                        tx.execute(
                            &ck,
                            &[
                                &c.chain,
                                &seq_i(c.seq),
                                &c.time_ms,
                                &c.reason,
                                &c.environment,
                                &c.before_ms,
                                &c.mac,
                                &c.signature,
                            ],
                        )
                        .await
                        .map_err(db)?;
                    }
                }
            }
            let (sums, edges) = super::derive(&new_records);
            if !sums.is_empty() {
                let up = tx
                    .prepare(
                        "INSERT INTO audit_usage_daily AS u (day, principal, on_behalf_of, target, environment, tbl, col,
                         masked, reads, writes, nrows, nbytes, first_ms, last_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                         ON CONFLICT (day, principal, on_behalf_of, target, environment, tbl, col, masked) DO UPDATE SET
                           reads = u.reads + excluded.reads, writes = u.writes + excluded.writes,
                           nrows = u.nrows + excluded.nrows, nbytes = u.nbytes + excluded.nbytes,
                           first_ms = LEAST(u.first_ms, excluded.first_ms), last_ms = GREATEST(u.last_ms, excluded.last_ms)",
                    )
                    .await
                    .map_err(db)?;
                for (k, d) in &sums {
                    let (table, column): (&str, &str) = (&k.table, &k.column);
                    tx.execute(
                        &up,
                        &[
                            &k.day,
                            &k.principal,
                            &k.on_behalf_of,
                            &k.target,
                            &k.environment,
                            &table,
                            &column,
                            &k.masked,
                            &d.reads,
                            &d.writes,
                            &d.rows,
                            &d.bytes,
                            &d.first_ms,
                            &d.last_ms,
                        ],
                    )
                    .await
                    .map_err(db)?;
                }
            }
            if !edges.is_empty() {
                let li = tx
                    .prepare(
                        "INSERT INTO audit_lineage (source, destination, kind, fingerprint, principal, on_behalf_of,
                         principal_kind, target, environment, time_ms, chain, seq)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    )
                    .await
                    .map_err(db)?;
                for e in &edges {
                    tx.execute(
                        &li,
                        &[
                            &e.source,
                            &e.destination,
                            &e.kind,
                            &e.fingerprint,
                            &e.principal,
                            &e.on_behalf_of,
                            &e.principal_kind,
                            &e.target,
                            &e.environment,
                            &e.time_ms,
                            &e.chain,
                            &seq_i(e.seq),
                        ],
                    )
                    .await
                    .map_err(db)?;
                }
            }
            tx.commit().await.map_err(db)
        })
    }

    fn head(&mut self, chain: &str) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        let rows = self.query(
            "SELECT seq, mac FROM audit_events WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
            &[&chain],
        )?;
        rows.first()
            .map(|r| Ok((r.try_get::<_, i64>(0)?.max(0) as u64, r.try_get(1)?)))
            .transpose()
            .map_err(db)
    }

    fn read_chain(
        &mut self,
        chain: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, AuditError> {
        let rows = self.query(
            "SELECT chain, seq, ulid, time_ms, code, environment, principal, target, session,
             decision, fingerprint, digest, body, mac FROM audit_events
             WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&chain, &seq_i(after), &(limit as i64)],
        )?;
        rows.iter()
            .map(record_from_row)
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    fn checkpoints(&mut self, chain: &str) -> Result<Vec<Checkpoint>, AuditError> {
        let rows = self.query(
            "SELECT chain, seq, mac, time_ms, reason, environment, before_ms, signature
             FROM audit_checkpoints WHERE chain = $1 ORDER BY seq, time_ms",
            &[&chain],
        )?;
        rows.iter()
            .map(|r| {
                Ok(Checkpoint {
                    chain: r.try_get(0)?,
                    seq: r.try_get::<_, i64>(1)?.max(0) as u64,
                    mac: r.try_get(2)?,
                    time_ms: r.try_get(3)?,
                    reason: r.try_get(4)?,
                    environment: r.try_get(5)?,
                    before_ms: r.try_get(6)?,
                    signature: r.try_get(7)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(db)
    }

    fn search(&mut self, q: &Query) -> Result<Page, AuditError> {
        let sql = search::build(q);
        let b = boxed(&sql.params);
        let rows = self.query(&sql.text, &refs(&b))?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(search::row(
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                    r.try_get(7)?,
                    r.try_get(8)?,
                    r.try_get(9)?,
                    !q.parsed_only,
                ))
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(db)?;
        Ok(search::page(q, rows))
    }

    fn count(&mut self, q: &Query) -> Result<u64, AuditError> {
        let sql = search::build_count(q);
        let b = boxed(&sql.params);
        let rows = self.query(&sql.text, &refs(&b))?;
        let n: i64 = rows
            .first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(db)?
            .unwrap_or(0);
        Ok(n.max(0) as u64)
    }

    fn usage(&mut self, q: &UsageQuery) -> Result<Vec<UsageRow>, AuditError> {
        let mut sql = usage::build_usage(q, Dialect::Postgres);
        // SUM(bigint) is numeric in PostgreSQL.
        sql.text = sql.text.replace(
            "SUM(reads), SUM(writes), SUM(nrows), SUM(nbytes)",
            "SUM(reads)::bigint, SUM(writes)::bigint, SUM(nrows)::bigint, SUM(nbytes)::bigint",
        );
        let b = boxed(&sql.params);
        let rows = self.query(&sql.text, &refs(&b))?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    principal: r.try_get(0)?,
                    on_behalf_of: r.try_get(1)?,
                    target: r.try_get(2)?,
                    environment: r.try_get(3)?,
                    table: r.try_get(4)?,
                    column: r.try_get(5)?,
                    masked: r.try_get(6)?,
                    reads: r.try_get(7)?,
                    writes: r.try_get(8)?,
                    rows: r.try_get(9)?,
                    bytes: r.try_get(10)?,
                    first_seen: format_time(r.try_get(11)?),
                    last_seen: format_time(r.try_get(12)?),
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(db)
    }

    fn lineage_into(&mut self, table: &str) -> Result<Vec<LineageEdge>, AuditError> {
        let t = table.to_lowercase();
        let like = format!("%.{}", search::like_escape(&t));
        let rows = self.query(
            "SELECT source, destination, kind, fingerprint, principal, on_behalf_of, principal_kind,
             target, environment, time_ms, chain, seq FROM audit_lineage
             WHERE destination = $1 OR destination LIKE $2 ESCAPE '\\' ORDER BY time_ms DESC, id DESC",
            &[&t, &like],
        )?;
        rows.iter()
            .map(|r| {
                let time_ms: i64 = r.try_get(9)?;
                Ok(LineageEdge {
                    source: r.try_get(0)?,
                    destination: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    fingerprint: r.try_get(3)?,
                    principal: r.try_get(4)?,
                    on_behalf_of: r.try_get(5)?,
                    principal_kind: r.try_get(6)?,
                    target: r.try_get(7)?,
                    environment: r.try_get(8)?,
                    time_ms,
                    time: format_time(time_ms),
                    chain: r.try_get(10)?,
                    seq: r.try_get::<_, i64>(11)?.max(0) as u64,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(db)
    }

    fn environments(&mut self, chain: &str) -> Result<Vec<String>, AuditError> {
        let rows = self.query(
            "SELECT DISTINCT environment FROM audit_events WHERE chain = $1 AND body IS NOT NULL",
            &[&chain],
        )?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    fn count_removable(
        &mut self,
        chain: &str,
        environment: &str,
        before_ms: i64,
        max_seq: u64,
    ) -> Result<u64, AuditError> {
        let rows = self.query(
            "SELECT COUNT(*) FROM audit_events WHERE chain = $1 AND environment = $2 AND time_ms < $3
             AND seq <= $4 AND body IS NOT NULL",
            &[&chain, &environment, &before_ms, &seq_i(max_seq)],
        )?;
        let n: i64 = rows
            .first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(db)?
            .unwrap_or(0);
        Ok(n.max(0) as u64)
    }

    fn remove_bodies(
        &mut self,
        chain: &str,
        environment: &str,
        before_ms: i64,
        max_seq: u64,
    ) -> Result<u64, AuditError> {
        let client = &mut self.client;
        let s = seq_i(max_seq);
        self.rt.block_on(async {
            let tx = client.transaction().await.map_err(db)?;
            let cond = "chain = $1 AND environment = $2 AND time_ms < $3 AND seq <= $4 AND body IS NOT NULL";
            tx.execute(
                &format!("DELETE FROM audit_event_objects WHERE event_id IN (SELECT id FROM audit_events WHERE {cond})"),
                &[&chain, &environment, &before_ms, &s],
            )
            .await
            .map_err(db)?;
            let n = tx
                .execute(
                    &format!(
                        "UPDATE audit_events SET body = NULL, principal = '', target = '', session = '',
                         decision = '', fingerprint = '', search_text = '' WHERE {cond}"
                    ),
                    &[&chain, &environment, &before_ms, &s],
                )
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(n)
        })
    }

    fn first_with_body(&mut self, chain: &str) -> Result<Option<u64>, AuditError> {
        let rows = self.query(
            "SELECT MIN(seq) FROM audit_events WHERE chain = $1 AND body IS NOT NULL",
            &[&chain],
        )?;
        let v: Option<i64> = rows
            .first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(db)?
            .flatten();
        Ok(v.map(|s| s.max(0) as u64))
    }

    fn mac_at(&mut self, chain: &str, seq: u64) -> Result<Option<Vec<u8>>, AuditError> {
        let rows = self.query(
            "SELECT mac FROM audit_events WHERE chain = $1 AND seq = $2",
            &[&chain, &seq_i(seq)],
        )?;
        rows.first().map(|r| r.try_get(0)).transpose().map_err(db)
    }

    fn delete_through(&mut self, chain: &str, seq: u64) -> Result<u64, AuditError> {
        let client = &mut self.client;
        let s = seq_i(seq);
        self.rt.block_on(async {
            let tx = client.transaction().await.map_err(db)?;
            tx.execute(
                "DELETE FROM audit_event_objects WHERE event_id IN (SELECT id FROM audit_events WHERE chain = $1 AND seq <= $2)",
                &[&chain, &s],
            )
            .await
            .map_err(db)?;
            let n = tx
                .execute("DELETE FROM audit_events WHERE chain = $1 AND seq <= $2", &[&chain, &s])
                .await
                .map_err(db)?;
            tx.execute(
                "DELETE FROM audit_checkpoints WHERE chain = $1 AND (seq < $2 OR (seq = $2 AND reason <> 'cut'))",
                &[&chain, &s],
            )
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(n)
        })
    }
}
