//! Usage aggregates (who touched which table and column, how much) and
//! lineage edges (where a table's data came from), derived from statement
//! events by the store as it inserts them.

use serde::{Deserialize, Serialize};

use crate::event::{Decision, Record, Statement};
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
    if s.decision != Decision::Allow || s.sqlstate.is_some() {
        return Vec::new();
    }
    let base = UsageDelta {
        day: day_of(time_ms),
        principal: s.principal.name.clone(),
        on_behalf_of: s.principal.on_behalf_of.clone().unwrap_or_default(),
        target: s.target.clone(),
        environment: s.environment.clone(),
        table: String::new(),
        column: String::new(),
        masked: false,
        reads: 0,
        writes: 0,
        rows: 0,
        bytes: 0,
        time_ms,
    };
    let masked: Vec<String> = s.masked.iter().map(|m| m.column.to_lowercase()).collect();
    let mut out: Vec<UsageDelta> = Vec::new();
    let mut add =
        |table: String, column: String, masked: bool, write: bool, rows: u64, bytes: u64| {
            if let Some(d) = out
                .iter_mut()
                .find(|d| d.table == table && d.column == column && d.masked == masked)
            {
                // The same column listed twice in one statement counts once.
                if write {
                    d.writes = 1;
                } else {
                    d.reads = 1;
                }
                return;
            }
            out.push(UsageDelta {
                table,
                column,
                masked,
                reads: i64::from(!write),
                writes: i64::from(write),
                rows: sat(rows),
                bytes: sat(bytes),
                ..base.clone()
            });
        };
    for t in &s.tables_read {
        add(
            t.to_lowercase(),
            String::new(),
            false,
            false,
            s.rows_returned,
            s.bytes_to_client,
        );
    }
    let mut read_cols: Vec<String> = s.columns_read.iter().map(|c| c.to_lowercase()).collect();
    for m in &masked {
        if !read_cols.contains(m) {
            read_cols.push(m.clone());
        }
    }
    for c in &read_cols {
        let (t, col) = split_column(c);
        add(
            t.unwrap_or("").to_owned(),
            col.to_owned(),
            masked.contains(c),
            false,
            s.rows_returned,
            0,
        );
    }
    for t in &s.tables_written {
        add(
            t.to_lowercase(),
            String::new(),
            false,
            true,
            s.rows_affected,
            0,
        );
    }
    for c in &s.columns_written {
        let c = c.to_lowercase();
        let (t, col) = split_column(&c);
        add(
            t.unwrap_or("").to_owned(),
            col.to_owned(),
            false,
            true,
            s.rows_affected,
            0,
        );
    }
    out
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
            fingerprint: s.fingerprint.clone(),
            principal: s.principal.name.clone(),
            on_behalf_of: s.principal.on_behalf_of.clone().unwrap_or_default(),
            principal_kind: s.principal.kind.clone(),
            target: s.target.clone(),
            environment: s.environment.clone(),
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
            principal: Actor {
                name: "alice".into(),
                kind: "human".into(),
                on_behalf_of: None,
            },
            target: "app-prod".into(),
            environment: "production".into(),
            tables_read: vec!["users".into()],
            columns_read: vec!["users.email".into(), "users.id".into()],
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
}
