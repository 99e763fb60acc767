//! Search: filters, cursor pagination, result rows.

use serde::{Deserialize, Serialize};

use crate::event::{Decision, EventBody};
use crate::util::format_time;

/// A search. Every filter is optional; results are newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Principal name (or the user name of an auth failure, or an actor).
    pub principal: Option<String>,
    /// Target.
    pub target: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// Table read or written (`users` also matches `public.users`).
    pub table: Option<String>,
    /// Column read or written: `email`, or `users.email`.
    pub column: Option<String>,
    /// Statement decision.
    pub decision: Option<Decision>,
    /// Kind: an event code (`db.statement`) or `statement`, `session`,
    /// `auth`, `admin`.
    pub kind: Option<String>,
    /// Session id.
    pub session: Option<String>,
    /// Chain id.
    pub chain: Option<String>,
    /// From this time (ms since the epoch, inclusive).
    pub since: Option<i64>,
    /// Until this time (exclusive).
    pub until: Option<i64>,
    /// Words that must all appear (names, tables, statement text).
    pub text: Option<String>,
    /// Page size (0 means 100).
    pub limit: usize,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Leave each row's `event` empty and fill only `body`, the parsed
    /// event: for callers in this process that read every event (the
    /// evidence report), which would otherwise pay for a JSON tree too.
    #[serde(skip)]
    pub parsed_only: bool,
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRow {
    /// Chain id.
    pub chain: String,
    /// Seq in the chain.
    pub seq: u64,
    /// ULID.
    pub ulid: String,
    /// RFC 3339 time.
    pub time: String,
    /// Ms since the epoch.
    pub time_ms: i64,
    /// Event code.
    pub code: String,
    /// Environment.
    pub environment: String,
    /// Principal.
    pub principal: String,
    /// Target.
    pub target: String,
    /// Decision (statements).
    pub decision: String,
    /// One-line summary.
    pub summary: String,
    /// The event body; `null` once retention removed it.
    pub event: Option<serde_json::Value>,
    /// The same, parsed, for callers in this process (not serialized):
    /// reading it back from `event` would parse every body once more.
    #[serde(skip)]
    pub body: Option<EventBody>,
}

/// A page of results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// Rows, newest first.
    pub rows: Vec<SearchRow>,
    /// Pass as `cursor` for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// A bound parameter.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

/// Placeholder style and text search flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

pub(crate) struct Sql {
    pub text: String,
    pub params: Vec<Param>,
    dialect: Dialect,
}

impl Sql {
    pub fn new(dialect: Dialect, text: &str) -> Sql {
        Sql {
            text: text.to_owned(),
            params: Vec::new(),
            dialect,
        }
    }

    /// Add a parameter and return its placeholder.
    pub fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    pub fn and(&mut self, cond: &str) {
        self.text.push_str(" AND ");
        self.text.push_str(cond);
    }
}

/// Escape `%`, `_` and `\` for LIKE … ESCAPE '\'.
pub(crate) fn like_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// An FTS5 query where every word must appear, each quoted (no operators).
pub(crate) fn fts5_query(text: &str) -> String {
    text.split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Split `schema.table.column` into (table part, column).
pub(crate) fn split_column(c: &str) -> (Option<&str>, &str) {
    match c.rfind('.') {
        Some(i) => (Some(&c[..i]), &c[i + 1..]),
        None => (None, c),
    }
}

/// Code condition for a kind.
fn kind_codes(kind: &str) -> (bool, String) {
    match kind {
        "statement" => (false, crate::event::STATEMENT.into()),
        "auth" => (false, crate::event::AUTH_FAILURE.into()),
        "admin" => (false, crate::event::ADMIN.into()),
        "session" => (true, "session.%".into()),
        other => (false, other.into()),
    }
}

/// Table condition on `o.tbl`.
pub(crate) fn table_cond(sql: &mut Sql, col: &str, table: &str) -> String {
    let t = table.to_lowercase();
    let a = sql.bind(Param::Text(t.clone()));
    let b = sql.bind(Param::Text(format!("%.{}", like_escape(&t))));
    format!("({col} = {a} OR {col} LIKE {b} ESCAPE '\\')")
}

// The statements below are the PostgreSQL store's (a row per event); the
// SQLite store searches its blocks (store/sqlite.rs) with the same filters.

/// The count statement (filters only).
pub(crate) fn build_count(q: &Query) -> Sql {
    let mut sql = Sql::new(
        Dialect::Postgres,
        "SELECT COUNT(*) FROM audit_events e WHERE 1=1",
    );
    filters(&mut sql, q);
    sql
}

/// The event's ULID as its index has it (byte order).
const ULID_COLUMN: &str = "e.ulid COLLATE \"C\"";

/// The search statement.
pub(crate) fn build(q: &Query) -> Sql {
    let mut sql = Sql::new(
        Dialect::Postgres,
        "SELECT e.chain, e.seq, e.ulid, e.time_ms, e.code, e.environment, e.principal, e.target, \
         e.decision, e.body FROM audit_events e WHERE 1=1",
    );
    filters(&mut sql, q);
    if let Some(c) = &q.cursor {
        let p = sql.bind(Param::Text(c.clone()));
        sql.and(&format!("{ULID_COLUMN} < {p}"));
    }
    let limit = page_size(q) as i64 + 1;
    let p = sql.bind(Param::Int(limit));
    sql.text
        .push_str(&format!(" ORDER BY {ULID_COLUMN} DESC LIMIT {p}"));
    sql
}

fn filters(sql: &mut Sql, q: &Query) {
    let eq = |sql: &mut Sql, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            let p = sql.bind(Param::Text(v.clone()));
            sql.and(&format!("{col} = {p}"));
        }
    };
    eq(sql, "e.principal", &q.principal);
    eq(sql, "e.target", &q.target);
    eq(sql, "e.environment", &q.environment);
    eq(sql, "e.session", &q.session);
    eq(sql, "e.chain", &q.chain);
    eq(
        sql,
        "e.decision",
        &q.decision.map(|d| d.as_str().to_owned()),
    );
    if let Some(kind) = &q.kind {
        let (like, v) = kind_codes(kind);
        let p = sql.bind(Param::Text(v));
        sql.and(&format!("e.code {} {p}", if like { "LIKE" } else { "=" }));
    }
    // Refused statements and events other than statements (their decision
    // is empty) are in the partial index `audit_events_notable`: its
    // condition, written out, lets the planner walk it instead of the
    // whole trail ("every blocked attempt this year").
    let refused = q.decision.is_some_and(|d| d != Decision::Allow);
    let not_statements = q
        .kind
        .as_deref()
        .is_some_and(|k| kind_codes(k).1 != crate::event::STATEMENT);
    if refused || not_statements {
        sql.and("e.decision <> 'allow'");
    }
    // The ULID bound lets the ULID index find the range: an event's ULID
    // carries its time_ms (there is no index on time_ms).
    if let Some(t) = q.since {
        let p = sql.bind(Param::Int(t));
        sql.and(&format!("e.time_ms >= {p}"));
        if let Some(floor) = crate::util::ulid_floor(t) {
            let p = sql.bind(Param::Text(floor));
            sql.and(&format!("{ULID_COLUMN} >= {p}"));
        }
    }
    if let Some(t) = q.until {
        let p = sql.bind(Param::Int(t));
        sql.and(&format!("e.time_ms < {p}"));
        if let Some(floor) = crate::util::ulid_floor(t) {
            let p = sql.bind(Param::Text(floor));
            sql.and(&format!("{ULID_COLUMN} < {p}"));
        }
    }
    if q.table.is_some() || q.column.is_some() {
        let mut conds = vec!["o.event_id = e.id".to_owned()];
        let (ctable, col) = match &q.column {
            Some(c) => {
                let (t, c) = split_column(c);
                (t.map(str::to_owned), Some(c.to_lowercase()))
            }
            None => (None, None),
        };
        for t in [q.table.as_deref(), ctable.as_deref()]
            .into_iter()
            .flatten()
        {
            conds.push(table_cond(sql, "o.tbl", t));
        }
        if let Some(c) = col {
            let p = sql.bind(Param::Text(c));
            conds.push(format!("o.col = {p}"));
        }
        sql.and(&format!(
            "EXISTS (SELECT 1 FROM audit_event_objects o WHERE {})",
            conds.join(" AND ")
        ));
    }
    if let Some(text) = q.text.as_deref().filter(|t| !t.trim().is_empty()) {
        let p = sql.bind(Param::Text(text.to_owned()));
        sql.and(&format!(
            "to_tsvector('simple', e.search_text) @@ plainto_tsquery('simple', {p})"
        ));
    }
}

/// The effective page size.
pub(crate) fn page_size(q: &Query) -> usize {
    if q.limit == 0 {
        100
    } else {
        q.limit.min(10_000)
    }
}

/// A row from the selected columns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row(
    chain: String,
    seq: i64,
    ulid: String,
    time_ms: i64,
    code: String,
    environment: String,
    principal: String,
    target: String,
    decision: String,
    body: Option<String>,
    json: bool,
) -> SearchRow {
    let parsed: Option<EventBody> = body.as_deref().and_then(|b| serde_json::from_str(b).ok());
    let summary = match (&parsed, &body) {
        (Some(e), _) => e.summary(),
        (None, None) => "(body removed by retention)".into(),
        (None, Some(_)) => "(unreadable body)".into(),
    };
    SearchRow {
        chain,
        seq: seq.max(0) as u64,
        ulid,
        time: format_time(time_ms),
        time_ms,
        code,
        environment,
        principal,
        target,
        decision,
        summary,
        event: body
            .as_deref()
            .filter(|_| json)
            .and_then(|b| serde_json::from_str(b).ok()),
        body: parsed,
    }
}

/// Trim the extra row fetched to learn whether a next page exists.
pub(crate) fn page(q: &Query, mut rows: Vec<SearchRow>) -> Page {
    let size = page_size(q);
    let next_cursor = if rows.len() > size {
        rows.truncate(size);
        rows.last().map(|r| r.ulid.clone())
    } else {
        None
    };
    Page { rows, next_cursor }
}
