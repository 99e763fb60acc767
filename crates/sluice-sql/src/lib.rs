//! Statement analysis with the real PostgreSQL parser (`pg_query`).
//!
//! A governance proxy must read a statement exactly as the server will, or a
//! guardrail can be evaded; so the text is parsed by PostgreSQL's own
//! grammar and the facts policy needs are read off the tree: what kind of
//! statement, which tables it reads and writes, whether an UPDATE or DELETE
//! is filtered, which functions it calls and which risky capabilities it
//! touches. Effects hidden inside other statements (a DELETE in a CTE, in
//! `COPY (…) TO`, in `EXPLAIN ANALYZE`, in `PREPARE`) count as if written
//! at the top.
#![warn(missing_docs)]

mod facts;
mod template;
mod walk;

pub use facts::{Analysis, Kind, Risk, StatementFacts};
pub use template::template;

/// A statement the parser refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("cannot parse statement: {0}")]
pub struct ParseError(pub String);

/// How the session reads string literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dialect {
    /// `standard_conforming_strings = off`: backslashes escape in '…'.
    pub backslash_escapes: bool,
}

/// Analyse a query string (one or more statements).
pub fn analyze(sql: &str, dialect: Dialect) -> Result<Analysis, ParseError> {
    let mut options = pg_query::ParserOptions::DEFAULT;
    if dialect.backslash_escapes {
        options |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let parsed = pg_query::parse(sql, options).map_err(|e| ParseError(e.to_string()))?;
    let statements = walk::statements(&parsed.protobuf, sql);
    Ok(Analysis { statements })
}

/// The statement's fingerprint (equal for statements that differ only in
/// constants) and its text with constants replaced by `$n` (safe to store).
/// Kept off the per-statement path: each is another parse.
pub fn fingerprint_and_normalize(sql: &str) -> (String, String) {
    let fingerprint = pg_query::fingerprint(sql, 0, 0)
        .map(|f| f.hex)
        .unwrap_or_default();
    let normalized = pg_query::normalize(sql).unwrap_or_default();
    (fingerprint, normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reusable(sql: &str) -> bool {
        analyze(sql, Dialect::default())
            .unwrap()
            .reusable_for_template()
    }

    #[test]
    fn verdicts_that_depend_on_literals_are_not_reused() {
        assert!(reusable(
            "select abalance from pgbench_accounts where aid = 42"
        ));
        assert!(reusable("update t set a = 1 where id = 7"));
        assert!(reusable("insert into t values (1, 'x')"));
        assert!(!reusable("delete from t where 1 = 2"));
        assert!(!reusable("delete from t where false"));
        assert!(!reusable("update t set a = 1 where id = 7 or 1 = 2"));
        assert!(!reusable(
            "select set_config('application_name', 'x', false)"
        ));
    }

    #[test]
    fn facts_of_a_hidden_delete() {
        let a = analyze(
            "with d as (delete from t returning *) select * from d",
            Dialect::default(),
        )
        .unwrap();
        assert_eq!(a.statements.len(), 1);
        assert_eq!(a.statements[0].kind, Some(Kind::Select));
        assert!(a.actions().contains(&Kind::Delete));
        assert!(a.risks().contains(&Risk::UnfilteredWrite));
        let (fingerprint, normalized) = fingerprint_and_normalize("delete from t where id = 5");
        assert_eq!(fingerprint.len(), 16);
        assert_eq!(normalized, "delete from t where id = $1");
    }
}
