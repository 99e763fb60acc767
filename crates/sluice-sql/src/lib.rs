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

mod columns;
mod facts;
mod normalize;
mod outputs;
mod parse;
mod sweep;
mod template;
mod walk;

pub use facts::{Analysis, CopyFormat, CopyOut, Kind, Risk, RowsEffect, StatementFacts, Upsert};
pub use normalize::{normalize, redact_secrets, scan};
pub use outputs::OutputColumn;
pub use template::template;
pub use walk::{default_search_path, split_search_path};

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

/// `f` of PostgreSQL's parse tree of a query string, as [`analyze`] reads
/// it (the tree lives only during `f`: see `parse.rs`).
pub fn with_parse_tree<R>(
    sql: &str,
    dialect: Dialect,
    f: impl FnOnce(&pg_query::protobuf::ParseResult) -> R,
) -> Result<R, ParseError> {
    let mut options = pg_query::ParserOptions::DEFAULT;
    if dialect.backslash_escapes {
        options |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    parse::with_parse_tree(sql, options, f)
}

/// Analyse a query string (one or more statements).
pub fn analyze(sql: &str, dialect: Dialect) -> Result<Analysis, ParseError> {
    let (statements, tokens) = with_parse_tree(sql, dialect, |tree| {
        // One scan serves the token risks, the fingerprint and the
        // normalized text.
        let tokens = normalize::scan(sql).unwrap_or_default();
        (walk::statements(tree, sql, &tokens), tokens)
    })?;
    let (fingerprint, normalized) =
        normalize::fingerprint_and_normalize_tokens(sql, &tokens).unwrap_or_default();
    Ok(Analysis {
        statements,
        fingerprint,
        normalized,
    })
}

/// The statement's fingerprint (equal for statements that differ only in
/// constants, bind parameters, comments, whitespace and case; see
/// `normalize.rs`) and its text with constants replaced by `$n` (safe to
/// store), from one scan. Both are empty when the text cannot be scanned.
pub fn fingerprint_and_normalize(sql: &str) -> (String, String) {
    normalize::fingerprint_and_normalize(sql).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_values_split_like_the_server_reads_them() {
        assert_eq!(split_search_path("\"$user\", public"), ["$user", "public"]);
        assert_eq!(split_search_path("Secret ,  PUBLIC"), ["secret", "public"]);
        assert_eq!(
            split_search_path("\"My, Schema\" , \"a\"\"b\",hr"),
            ["My, Schema", "a\"b", "hr"]
        );
        assert_eq!(split_search_path(""), Vec::<String>::new());
        assert_eq!(split_search_path("  , app"), ["app"]);
    }

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
        // Literals that change what happens: the path, whether EXPLAIN
        // runs the statement, how COPY writes its data.
        assert!(!reusable("set search_path = 'hr'"));
        assert!(!reusable(
            "explain (analyze 'off') delete from t where id > 0"
        ));
        assert!(!reusable("copy t to stdout (delimiter ';')"));
        assert!(reusable("explain delete from t where id > 0"));
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

    #[test]
    fn an_analysis_carries_the_fingerprint_and_normalized_text_of_its_scan() {
        for sql in [
            "delete from t where id = 5",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48211; select 'x' || $1",
            "select U&\"d\\0061t\\+000061\" from t -- comment 7",
        ] {
            let a = analyze(sql, Dialect::default()).unwrap();
            let (fingerprint, normalized) = fingerprint_and_normalize(sql);
            assert!(!fingerprint.is_empty(), "{sql}");
            assert_eq!(
                (a.fingerprint, a.normalized),
                (fingerprint, normalized),
                "{sql}"
            );
        }
        // The scan's risks still reach the facts: a Unicode-escaped name is dynamic code.
        let a = analyze("select U&\"d\\0061t\\+000061\" from t", Dialect::default()).unwrap();
        assert!(a.risks().contains(&Risk::DynamicCode));
    }
}

#[cfg(test)]
mod rows_effect_tests {
    use super::*;

    fn effect(sql: &str) -> RowsEffect {
        analyze(sql, Dialect::default()).unwrap().rows_effect()
    }

    #[test]
    fn which_writes_can_be_counted_from_the_tag() {
        assert_eq!(effect("select 1"), RowsEffect::None);
        assert_eq!(effect("insert into t values (1)"), RowsEffect::None);
        assert_eq!(
            effect("update t set a = 1 where b = 2"),
            RowsEffect::Countable
        );
        assert_eq!(
            effect("delete from t where a = 1; update u set b = 1 where c = 1"),
            RowsEffect::Countable
        );
        assert_eq!(
            effect("merge into t using s on t.id = s.id when matched then delete"),
            RowsEffect::Countable
        );
        // An upsert from VALUES updates at most the rows written out; one
        // from a query may update any number, uncounted by `INSERT 0 n`.
        assert_eq!(
            effect("insert into t values (1, 'x') on conflict (id) do update set v = excluded.v"),
            RowsEffect::None
        );
        assert_eq!(
            effect(
                "insert into t select id, 'x' from t on conflict (id) do update set v = excluded.v"
            ),
            RowsEffect::Uncountable
        );
        assert_eq!(
            effect("insert into t values (generate_series(1, 100), 'x') on conflict (id) do update set v = 'y'"),
            RowsEffect::Uncountable
        );
        assert_eq!(
            effect("insert into t select id from u on conflict do nothing"),
            RowsEffect::None
        );
        assert_eq!(effect("execute p(1)"), RowsEffect::None);
        assert_eq!(
            effect("prepare p as delete from t where id = $1"),
            RowsEffect::None
        );
        let p = analyze(
            "prepare p as delete from t where id = $1",
            Dialect::default(),
        )
        .unwrap();
        assert_eq!(
            p.statements[0].prepared_rows_effect(),
            RowsEffect::Countable
        );
        let d = analyze(
            "deallocate p; deallocate all; discard all",
            Dialect::default(),
        )
        .unwrap();
        assert_eq!(d.statements[0].deallocates.as_deref(), Some("p"));
        assert!(d.statements[1].deallocates_all && d.statements[2].deallocates_all);
        assert_eq!(effect("explain delete from t"), RowsEffect::None);
        assert_eq!(
            effect("explain (analyze) delete from t"),
            RowsEffect::Uncountable
        );
        assert_eq!(
            effect("explain (analyze false) delete from t"),
            RowsEffect::None
        );
        assert_eq!(
            effect("with d as (delete from t returning *) select count(*) from d"),
            RowsEffect::Uncountable
        );
        assert_eq!(effect("with d as (delete from a returning id) update b set x = 1 where id in (select id from d)"), RowsEffect::Uncountable);
        assert_eq!(
            effect("copy (delete from t returning *) to stdout"),
            RowsEffect::Uncountable
        );
        assert!(analyze(
            "begin; update t set a = 1 where b = 1; commit",
            Dialect::default()
        )
        .unwrap()
        .controls_transactions());
    }
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    fn copy(sql: &str) -> CopyOut {
        analyze(sql, Dialect::default()).unwrap().statements[0]
            .copy_out
            .clone()
            .unwrap()
    }

    #[test]
    fn copy_to_stdout_is_described() {
        let c = copy(
            "copy app.users (email, \"Name\") to stdout with (format csv, header, delimiter ';')",
        );
        assert_eq!(c.format, CopyFormat::Csv);
        assert!(c.header);
        assert_eq!(c.delimiter.as_deref(), Some(";"));
        assert_eq!(
            c.probe.as_deref(),
            Some("SELECT \"email\", \"Name\" FROM \"app\".\"users\"")
        );
        let c = copy("COPY (select email from users where id > 3) TO STDOUT WITH CSV HEADER");
        assert_eq!(c.format, CopyFormat::Csv);
        assert!(c.header);
        assert_eq!(
            c.probe.as_deref(),
            Some("SELECT email FROM users WHERE id > 3")
        );
        assert_eq!(
            copy("copy t to stdout (format binary)").format,
            CopyFormat::Binary
        );
        assert_eq!(
            copy("copy t to stdout").probe.as_deref(),
            Some("SELECT * FROM \"t\"")
        );
        let a = analyze("copy t to '/tmp/x'", Dialect::default()).unwrap();
        assert!(a.statements[0].copy_out.is_none());
    }
}

#[cfg(test)]
mod search_path_tests {
    use super::*;

    fn path(sql: &str) -> Option<Vec<String>> {
        analyze(sql, Dialect::default()).unwrap().statements[0]
            .search_path
            .clone()
    }

    #[test]
    fn search_path_changes_are_seen() {
        assert_eq!(
            path("set search_path to app, \"Sales\", public").unwrap(),
            ["app", "Sales", "public"]
        );
        assert_eq!(
            path("set local search_path = '$user', x").unwrap(),
            ["$user", "x"]
        );
        assert_eq!(path("reset search_path").unwrap(), ["$user", "public"]);
        assert_eq!(
            path("select set_config('search_path', 'evil, \"Public\"', false)").unwrap(),
            ["evil", "Public"]
        );
        assert_eq!(path("reset all").unwrap(), ["$user", "public"]);
        assert!(path("set statement_timeout = 5").is_none());
        let a = analyze(
            "select set_config('search_path', current_user, false)",
            Dialect::default(),
        )
        .unwrap();
        assert!(a.risks().contains(&Risk::DynamicCode));
    }

    #[test]
    fn a_write_is_filtered_only_by_a_where_that_names_a_column() {
        let unfiltered = |sql: &str| {
            analyze(sql, Dialect::default())
                .unwrap()
                .risks()
                .contains(&Risk::UnfilteredWrite)
        };
        for sql in [
            "delete from t where id = 5",
            "delete from t where 5 = id",
            "update t set a = 1 where t.id = $1",
            "delete from t where id + 0 = 5",
            "delete from t where 5 > abs(id)",
            "delete from t where id in (1, 2)",
            "delete from t where 1 = 0",
        ] {
            assert!(!unfiltered(sql), "{sql}");
        }
        for sql in [
            "delete from t",
            "delete from t where id = id",
            "delete from t where 1 = 1",
            "update t set a = 1 where $1 = $1",
            "delete from t where 'x' = 'x' or false",
        ] {
            assert!(unfiltered(sql), "{sql}");
        }
    }
}
