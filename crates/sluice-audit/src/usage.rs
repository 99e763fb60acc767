//! Usage aggregates (who touched which table and column, how much) and
//! lineage edges (where a table's data came from), derived from statement
//! events by the store as it inserts them.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{lower, Decision, MaskedColumn, Record, Statement};
use crate::search::{split_column, table_cond, Dialect, Param, Sql};
use crate::store::Store;
use crate::util::{day_of, format_time};
use crate::AuditError;

/// One increment of the daily usage table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// UTC day number.
    pub day: i64,
    /// Principal.
    pub principal: String,
    /// On behalf of (`""` when none).
    pub on_behalf_of: String,
    /// Target.
    pub target: String,
    /// Environment.
    pub environment: String,
    /// Table (lower case).
    pub table: String,
    /// Column (lower case), `""` for the table as a whole.
    pub column: String,
    /// Whether the column's values were masked.
    pub masked: bool,
    /// Reads (statements).
    pub reads: i64,
    /// Writes (statements).
    pub writes: i64,
    /// Rows returned (reads) or affected (writes).
    pub rows: i64,
    /// Bytes sent to the client (table rows only).
    pub bytes: i64,
    /// Event time.
    pub time_ms: i64,
}

fn sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Usage increments of one statement. Only statements that ran (decision
/// `allow`, no SQLSTATE) count. Table rows (`column = ""`) carry rows and
/// bytes; column rows carry rows and whether the column was masked.
pub fn usage_deltas(s: &Statement, time_ms: i64) -> Vec<UsageDelta> {
    let mut parts = Vec::new();
    if counts(s) {
        statement_parts(s, Counts::of(s), &mut parts);
    }
    parts
        .into_iter()
        .map(|p| UsageDelta {
            day: day_of(time_ms),
            principal: s.principal.name.clone(),
            on_behalf_of: s.principal.on_behalf_of.clone().unwrap_or_default(),
            target: s.target.to_string(),
            environment: s.environment.to_string(),
            table: p.table.into_owned(),
            column: p.column.into_owned(),
            masked: p.masked,
            reads: p.reads,
            writes: p.writes,
            rows: p.rows,
            bytes: p.bytes,
            time_ms,
        })
        .collect()
}

/// The per-table/column part of a statement's usage increments.
#[derive(Debug)]
struct Part<'a> {
    table: Cow<'a, str>,
    column: Cow<'a, str>,
    masked: bool,
    reads: i64,
    writes: i64,
    rows: i64,
    bytes: i64,
}

/// Whether a statement counts for usage: it ran (decision `allow`, no SQLSTATE).
fn counts(s: &Statement) -> bool {
    s.decision == Decision::Allow && s.sqlstate.is_none()
}

/// What a statement (or a group of statements that count alike) moved.
#[derive(Debug, Clone, Copy)]
struct Counts {
    statements: u64,
    returned: u64,
    affected: u64,
    bytes: u64,
}

impl Counts {
    fn of(s: &Statement) -> Counts {
        Counts {
            statements: 1,
            returned: s.rows_returned,
            affected: s.rows_affected,
            bytes: s.bytes_to_client,
        }
    }

    fn add(&mut self, o: Counts) {
        self.statements = self.statements.saturating_add(o.statements);
        self.returned = self.returned.saturating_add(o.returned);
        self.affected = self.affected.saturating_add(o.affected);
        self.bytes = self.bytes.saturating_add(o.bytes);
    }
}

/// Appends to `out` the parts of `s`, or of `c.statements` statements with
/// the objects of `s` that moved `c` together (the parts are linear in the
/// counts); the one definition of what a statement counts for. The caller
/// checks [`counts`].
fn statement_parts<'a>(s: &'a Statement, c: Counts, out: &mut Vec<Part<'a>>) {
    let n = sat(c.statements);
    let first = out.len();
    let masked: Vec<Cow<'a, str>> = s.masked.iter().map(|m| lower(&m.column)).collect();
    let add = |out: &mut Vec<Part<'a>>,
               table: Cow<'a, str>,
               column: Cow<'a, str>,
               masked: bool,
               write: bool,
               rows: u64,
               bytes: u64| {
        if let Some(d) = out[first..]
            .iter_mut()
            .find(|d| d.table == table && d.column == column && d.masked == masked)
        {
            // The same column listed twice in one statement counts once.
            if write {
                d.writes = n;
            } else {
                d.reads = n;
            }
            return;
        }
        out.push(Part {
            table,
            column,
            masked,
            reads: if write { 0 } else { n },
            writes: if write { n } else { 0 },
            rows: sat(rows),
            bytes: sat(bytes),
        });
    };
    for t in s.tables_read.iter() {
        add(
            out,
            lower(t),
            Cow::Borrowed(""),
            false,
            false,
            c.returned,
            c.bytes,
        );
    }
    let mut read_cols: Vec<Cow<'a, str>> = s.columns_read.iter().map(|c| lower(c)).collect();
    for m in &masked {
        if !read_cols.contains(m) {
            read_cols.push(m.clone());
        }
    }
    for name in read_cols {
        let is_masked = masked.contains(&name);
        let (t, col) = split_cow(name);
        add(out, t, col, is_masked, false, c.returned, 0);
    }
    for t in s.tables_written.iter() {
        add(out, lower(t), Cow::Borrowed(""), false, true, c.affected, 0);
    }
    for name in s.columns_written.iter() {
        let (t, col) = split_cow(lower(name));
        add(out, t, col, false, true, c.affected, 0);
    }
}

/// `split_column` of an already lower-cased name; the table part is `""`
/// when there is none.
fn split_cow(c: Cow<'_, str>) -> (Cow<'_, str>, Cow<'_, str>) {
    match c {
        Cow::Borrowed(b) => {
            let (t, col) = split_column(b);
            (Cow::Borrowed(t.unwrap_or("")), Cow::Borrowed(col))
        }
        Cow::Owned(o) => {
            let (t, col) = split_column(&o);
            (
                Cow::Owned(t.unwrap_or("").to_owned()),
                Cow::Owned(col.to_owned()),
            )
        }
    }
}

/// Key of the daily usage table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct UsageKey<'a> {
    pub day: i64,
    pub principal: &'a str,
    pub on_behalf_of: &'a str,
    pub target: &'a str,
    pub environment: &'a str,
    pub table: Cow<'a, str>,
    pub column: Cow<'a, str>,
    pub masked: bool,
}

/// What a batch adds to one row of the daily usage table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UsageSum {
    pub reads: i64,
    pub writes: i64,
    pub rows: i64,
    pub bytes: i64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// Usage increments of a batch of statements summed per key, so the store
/// does one upsert per distinct key rather than one per statement and
/// column. Adding the sums gives exactly what adding each increment would.
///
/// Statements are first summed per [`Group`] (executions of one statement
/// by one principal on one day: a handful per batch), and each group is
/// split into its tables and columns once, not each execution.
#[derive(Debug, Default)]
pub(crate) struct UsageBatch<'a> {
    /// foldhash: a group key is a few hundred bytes, hashed per statement
    /// on the writer.
    groups: HashMap<Group<'a>, GroupSum<'a>, foldhash::fast::RandomState>,
}

/// Statements that count alike: the same day, principal, target and objects.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Group<'a> {
    day: i64,
    principal: &'a str,
    on_behalf_of: &'a str,
    target: &'a str,
    environment: &'a str,
    tables_read: &'a [String],
    columns_read: &'a [String],
    tables_written: &'a [String],
    columns_written: &'a [String],
    masked: &'a [MaskedColumn],
}

#[derive(Debug)]
struct GroupSum<'a> {
    /// One of the group's statements (they differ only in their counts).
    first: &'a Statement,
    counts: Counts,
    first_ms: i64,
    last_ms: i64,
}

impl<'a> UsageBatch<'a> {
    /// Count one stored statement.
    pub fn add(&mut self, s: &'a Statement, time_ms: i64) {
        if !counts(s) {
            return;
        }
        let group = Group {
            day: day_of(time_ms),
            principal: &s.principal.name,
            on_behalf_of: s.principal.on_behalf_of.as_deref().unwrap_or(""),
            target: &s.target,
            environment: &s.environment,
            tables_read: &s.tables_read,
            columns_read: &s.columns_read,
            tables_written: &s.tables_written,
            columns_written: &s.columns_written,
            masked: &s.masked,
        };
        let sum = self.groups.entry(group).or_insert(GroupSum {
            first: s,
            counts: Counts {
                statements: 0,
                returned: 0,
                affected: 0,
                bytes: 0,
            },
            first_ms: time_ms,
            last_ms: time_ms,
        });
        sum.counts.add(Counts::of(s));
        sum.first_ms = sum.first_ms.min(time_ms);
        sum.last_ms = sum.last_ms.max(time_ms);
    }

    /// The sums, in key order (a stable order also keeps concurrent
    /// PostgreSQL writers from deadlocking on each other's rows).
    pub fn into_sorted(self) -> Vec<(UsageKey<'a>, UsageSum)> {
        let mut sums: HashMap<UsageKey<'a>, UsageSum, foldhash::fast::RandomState> =
            HashMap::default();
        let mut parts = Vec::new();
        for (g, sum) in self.groups {
            parts.clear();
            statement_parts(sum.first, sum.counts, &mut parts);
            for p in parts.drain(..) {
                let key = UsageKey {
                    day: g.day,
                    principal: g.principal,
                    on_behalf_of: g.on_behalf_of,
                    target: g.target,
                    environment: g.environment,
                    table: p.table,
                    column: p.column,
                    masked: p.masked,
                };
                let total = sums.entry(key).or_insert(UsageSum {
                    reads: 0,
                    writes: 0,
                    rows: 0,
                    bytes: 0,
                    first_ms: sum.first_ms,
                    last_ms: sum.last_ms,
                });
                total.reads = total.reads.saturating_add(p.reads);
                total.writes = total.writes.saturating_add(p.writes);
                total.rows = total.rows.saturating_add(p.rows);
                total.bytes = total.bytes.saturating_add(p.bytes);
                total.first_ms = total.first_ms.min(sum.first_ms);
                total.last_ms = total.last_ms.max(sum.last_ms);
            }
        }
        let mut v: Vec<_> = sums.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// A lineage edge: data moved from `source` to `destination`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageEdge {
    /// Source table.
    pub source: String,
    /// Destination table, or `client:<principal>`.
    pub destination: String,
    /// `insert_select`, `create_table_as`, `update_from`, `copy_out`, …
    pub kind: String,
    /// Statement fingerprint.
    pub fingerprint: String,
    /// Who ran it.
    pub principal: String,
    /// On behalf of whom (`""` when none).
    pub on_behalf_of: String,
    /// Principal kind (`human`, `service`, `agent`).
    pub principal_kind: String,
    /// Target.
    pub target: String,
    /// Environment.
    pub environment: String,
    /// Ms since the epoch.
    pub time_ms: i64,
    /// RFC 3339 time.
    pub time: String,
    /// Chain of the statement event.
    pub chain: String,
    /// Seq of the statement event.
    pub seq: u64,
}

/// Edges of one statement that ran.
pub fn lineage_edges(s: &Statement, r: &Record) -> Vec<LineageEdge> {
    let Some(l) = &s.lineage else {
        return Vec::new();
    };
    if s.decision != Decision::Allow || s.sqlstate.is_some() || l.destination.is_empty() {
        return Vec::new();
    }
    let mut sources: Vec<String> = l.sources.iter().map(|x| x.to_lowercase()).collect();
    sources.sort();
    sources.dedup();
    sources
        .into_iter()
        .map(|source| LineageEdge {
            source,
            destination: l.destination.to_lowercase(),
            kind: l.kind.clone(),
            fingerprint: s.fingerprint.to_string(),
            principal: s.principal.name.clone(),
            on_behalf_of: s.principal.on_behalf_of.clone().unwrap_or_default(),
            principal_kind: s.principal.kind.clone(),
            target: s.target.to_string(),
            environment: s.environment.to_string(),
            time_ms: r.time_ms,
            time: format_time(r.time_ms),
            chain: r.chain.clone(),
            seq: r.seq,
        })
        .collect()
}

/// A usage question.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageQuery {
    /// Principal.
    pub principal: Option<String>,
    /// Target.
    pub target: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// Table (`users` also matches `public.users`).
    pub table: Option<String>,
    /// Column: `email` or `users.email`. Without it, table rows are shown;
    /// with it, that column's rows.
    pub column: Option<String>,
    /// From (ms; counted by whole UTC days).
    pub since: Option<i64>,
    /// Until (ms, exclusive; whole UTC days).
    pub until: Option<i64>,
}

/// One usage row: totals over the days asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Principal.
    pub principal: String,
    /// On behalf of (`""` when none).
    pub on_behalf_of: String,
    /// Target.
    pub target: String,
    /// Environment.
    pub environment: String,
    /// Table.
    pub table: String,
    /// Column (`""` for the table as a whole).
    pub column: String,
    /// Whether the values were masked.
    pub masked: bool,
    /// Statements that read it.
    pub reads: i64,
    /// Statements that wrote it.
    pub writes: i64,
    /// Rows returned or affected.
    pub rows: i64,
    /// Bytes to the client (table rows).
    pub bytes: i64,
    /// First seen (RFC 3339).
    pub first_seen: String,
    /// Last seen (RFC 3339).
    pub last_seen: String,
}

pub(crate) fn build_usage(q: &UsageQuery, dialect: Dialect) -> Sql {
    let mut sql = Sql::new(
        dialect,
        "SELECT principal, on_behalf_of, target, environment, tbl, col, masked, \
         SUM(reads), SUM(writes), SUM(nrows), SUM(nbytes), MIN(first_ms), MAX(last_ms) \
         FROM audit_usage_daily u WHERE 1=1",
    );
    for (col, v) in [
        ("principal", &q.principal),
        ("target", &q.target),
        ("environment", &q.environment),
    ] {
        if let Some(v) = v {
            let p = sql.bind(Param::Text(v.clone()));
            sql.and(&format!("{col} = {p}"));
        }
    }
    let (ctable, column) = match &q.column {
        Some(c) => {
            let (t, c) = split_column(c);
            (t.map(str::to_owned), c.to_lowercase())
        }
        None => (None, String::new()),
    };
    for t in [q.table.as_deref(), ctable.as_deref()]
        .into_iter()
        .flatten()
    {
        let c = table_cond(&mut sql, "tbl", t);
        sql.and(&c);
    }
    let p = sql.bind(Param::Text(column));
    sql.and(&format!("col = {p}"));
    if let Some(t) = q.since {
        let p = sql.bind(Param::Int(day_of(t)));
        sql.and(&format!("day >= {p}"));
    }
    if let Some(t) = q.until {
        let p = sql.bind(Param::Int(day_of(t.saturating_sub(1))));
        sql.and(&format!("day <= {p}"));
    }
    sql.text.push_str(
        " GROUP BY principal, on_behalf_of, target, environment, tbl, col, masked \
         ORDER BY MAX(last_ms) DESC, principal, tbl, col",
    );
    sql
}

/// Where a table's data came from: edges into `table`, then into their
/// sources, up to `depth` steps back (a cycle stops at a table already seen).
pub fn trace_lineage(
    store: &mut dyn Store,
    table: &str,
    depth: usize,
) -> Result<Vec<LineageEdge>, AuditError> {
    let mut out: Vec<LineageEdge> = Vec::new();
    let mut seen = vec![table.to_lowercase()];
    let mut frontier = vec![table.to_lowercase()];
    for _ in 0..depth.max(1) {
        let mut next = Vec::new();
        for t in &frontier {
            for e in store.lineage_into(t)? {
                if !seen.contains(&e.source) {
                    seen.push(e.source.clone());
                    next.push(e.source.clone());
                }
                if !out.contains(&e) {
                    out.push(e);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, MaskedColumn};

    #[test]
    fn deltas_for_a_masked_read() {
        let s = Statement {
            principal: std::sync::Arc::new(Actor {
                name: "alice".into(),
                kind: "human".into(),
                on_behalf_of: None,
            }),
            target: "app-prod".into(),
            environment: "production".into(),
            tables_read: vec!["users".into()].into(),
            columns_read: vec!["users.email".into(), "users.id".into()].into(),
            masked: vec![MaskedColumn {
                column: "users.email".into(),
                detector: "email".into(),
            }],
            rows_returned: 3,
            bytes_to_client: 100,
            ..Statement::default()
        };
        let d = usage_deltas(&s, 86_400_000 * 2 + 5);
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|x| x.day == 2 && x.reads == 1 && x.rows == 3));
        assert!(d
            .iter()
            .any(|x| x.column == "email" && x.masked && x.table == "users"));
        assert!(d.iter().any(|x| x.column == "id" && !x.masked));
        assert!(d.iter().any(|x| x.column.is_empty() && x.bytes == 100));
        let denied = Statement {
            decision: Decision::Deny,
            ..s
        };
        assert!(usage_deltas(&denied, 0).is_empty());
    }

    /// A batch summed by groups gives exactly the sums of every statement's
    /// own deltas: executions with other counts, other days, a column listed
    /// twice, names in other cases, a denied and a failed statement, writes.
    #[test]
    fn batch_sums_equal_the_sums_of_each_statement() {
        let read = |who: &str, rows: u64, bytes: u64| Statement {
            principal: std::sync::Arc::new(Actor {
                name: who.into(),
                kind: "service".into(),
                on_behalf_of: (who == "agent").then(|| "bob".into()),
            }),
            target: "app".into(),
            environment: "production".into(),
            tables_read: vec!["Users".into()].into(),
            columns_read: vec![
                "users.email".into(),
                "USERS.id".into(),
                "users.email".into(),
            ]
            .into(),
            masked: vec![MaskedColumn {
                column: "users.email".into(),
                detector: "email".into(),
            }],
            rows_returned: rows,
            bytes_to_client: bytes,
            ..Statement::default()
        };
        let write = |rows: u64| Statement {
            tables_read: vec!["users".into()].into(),
            tables_written: vec!["audit_copy".into()].into(),
            columns_written: vec!["audit_copy.email".into()].into(),
            rows_affected: rows,
            ..read("etl", 0, 0)
        };
        let day = 86_400_000;
        let mut stmts = Vec::new();
        for i in 0..40u64 {
            let who = ["alice", "agent", "alice", "etl"][i as usize % 4];
            stmts.push((read(who, i, 10 * i), day * (i as i64 % 3) + i as i64));
            stmts.push((write(i * 2), day + i as i64));
        }
        stmts.push((
            Statement {
                decision: Decision::Deny,
                ..read("alice", 5, 5)
            },
            7,
        ));
        stmts.push((
            Statement {
                sqlstate: Some("57014".into()),
                ..read("alice", 5, 5)
            },
            8,
        ));
        let mut batch = UsageBatch::default();
        for (st, ms) in &stmts {
            batch.add(st, *ms);
        }
        let got: Vec<_> = batch
            .into_sorted()
            .into_iter()
            .map(|(k, v)| {
                let key = (
                    k.day,
                    k.principal.to_owned(),
                    k.on_behalf_of.to_owned(),
                    k.table.into_owned(),
                    k.column.into_owned(),
                    k.masked,
                );
                (
                    key,
                    (v.reads, v.writes, v.rows, v.bytes, v.first_ms, v.last_ms),
                )
            })
            .collect();
        let mut want: std::collections::BTreeMap<_, (i64, i64, i64, i64, i64, i64)> =
            Default::default();
        for (st, ms) in &stmts {
            for d in usage_deltas(st, *ms) {
                let key = (
                    d.day,
                    d.principal,
                    d.on_behalf_of,
                    d.table,
                    d.column,
                    d.masked,
                );
                let e = want.entry(key).or_insert((0, 0, 0, 0, i64::MAX, i64::MIN));
                e.0 += d.reads;
                e.1 += d.writes;
                e.2 += d.rows;
                e.3 += d.bytes;
                e.4 = e.4.min(d.time_ms);
                e.5 = e.5.max(d.time_ms);
            }
        }
        let want: Vec<_> = want.into_iter().collect();
        assert_eq!(got, want);
        assert!(
            got.iter().any(|(k, v)| k.4 == "email" && k.5 && v.0 > 1),
            "{got:?}"
        );
        assert!(
            got.iter().any(|(k, v)| k.3 == "audit_copy" && v.1 == 40),
            "{got:?}"
        );
    }
}
