//! The parse tree, straight from libpg_query.
//!
//! `pg_query::parse` also builds a summary of the tree (tables, aliases,
//! functions, filter columns: a walk over every node with hash sets of
//! strings) that Sluice does not use, about 7 % of analysing a statement.
//! This parses with the same C parser and stops at the tree.
//!
//! The tree comes from `pg_query_parse_protobuf_direct_opts`, a function
//! of the vendored libpg_query (vendor/README.md) that writes the protobuf
//! bytes in one pass; `pg_query::parse` builds the messages with upb and
//! encodes them, about a third of the parse. Both decode to the same tree
//! (tested below).

use std::ffi::{c_char, c_int, CStr, CString};

use pg_query::protobuf::ParseResult;
use prost::Message;

use crate::ParseError;

/// The declarations of `vendor/pg_query/libpg_query/pg_query.h` this uses.
/// That header is the one the linked library was built from (the crate is
/// vendored, so the two cannot drift apart).
#[repr(C)]
struct PgQueryError {
    message: *mut c_char,
    funcname: *mut c_char,
    filename: *mut c_char,
    lineno: c_int,
    cursorpos: c_int,
    context: *mut c_char,
}

#[repr(C)]
struct PgQueryProtobuf {
    len: usize,
    data: *mut c_char,
}

#[repr(C)]
struct PgQueryProtobufParseResult {
    parse_tree: PgQueryProtobuf,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

extern "C" {
    fn pg_query_parse_protobuf_direct_opts(
        input: *const c_char,
        parser_options: c_int,
    ) -> PgQueryProtobufParseResult;
    fn pg_query_free_protobuf_parse_result(result: PgQueryProtobufParseResult);
}

/// The parse tree of `sql` under `options`, or the parser's error.
pub(crate) fn parse_tree(
    sql: &str,
    options: pg_query::ParserOptions,
) -> Result<ParseResult, ParseError> {
    let input =
        CString::new(sql).map_err(|e| ParseError(format!("Invalid statement format: {e}")))?;
    // SAFETY: `input` is a NUL-terminated string that outlives the call;
    // the function only reads it and returns a result it allocated, which
    // is freed exactly once below, after its last use. `error`, when not
    // null, points to a PgQueryError whose `message` is a NUL-terminated
    // string; otherwise `parse_tree.data` points to `parse_tree.len`
    // initialized bytes (libpg_query's contract, as `pg_query::parse`
    // relies on it too). Both are only read before the result is freed, and
    // the decoded tree owns its own memory.
    unsafe {
        let result = pg_query_parse_protobuf_direct_opts(input.as_ptr(), options.bits());
        let tree = if !result.error.is_null() {
            let message = CStr::from_ptr((*result.error).message).to_string_lossy();
            Err(ParseError(format!("Invalid statement: {message}")))
        } else {
            // An empty tree (a text of only comments) may come without a
            // buffer: no slice from a null pointer.
            let data: &[u8] = if result.parse_tree.len == 0 || result.parse_tree.data.is_null() {
                &[]
            } else {
                std::slice::from_raw_parts(
                    result.parse_tree.data as *const u8,
                    result.parse_tree.len,
                )
            };
            ParseResult::decode(data).map_err(|e| ParseError(format!("Error decoding result: {e}")))
        };
        pg_query_free_protobuf_parse_result(result);
        tree
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_and_the_errors_are_pg_querys() {
        for sql in [
            "select 1",
            "",
            "-- only a comment",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42; update t set a = $1",
            "with d as (delete from t returning *) select * from d",
        ] {
            let ours = parse_tree(sql, pg_query::ParserOptions::DEFAULT).unwrap();
            let theirs = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).unwrap();
            assert_eq!(ours, theirs.protobuf, "{sql:?}");
        }
        for bad in ["selec 1", "select 'open", "select \0"] {
            let ours = parse_tree(bad, pg_query::ParserOptions::DEFAULT).unwrap_err();
            let theirs = pg_query::parse(bad, pg_query::ParserOptions::DEFAULT).unwrap_err();
            assert_eq!(ours.0, theirs.to_string(), "{bad:?}");
        }
        let escapes = pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
        let sql = "select 'a\\'b'";
        assert_eq!(
            parse_tree(sql, escapes).unwrap(),
            pg_query::parse(sql, escapes).unwrap().protobuf
        );
        assert!(parse_tree(sql, pg_query::ParserOptions::DEFAULT).is_err());
    }

    /// The one-pass protobuf writer and upb's (through `pg_query::parse`)
    /// give the same tree, or the same error, for every statement.
    fn same_as_upb(sql: &str) -> bool {
        let options = pg_query::ParserOptions::DEFAULT;
        match (parse_tree(sql, options), pg_query::parse(sql, options)) {
            (Ok(ours), Ok(theirs)) => {
                assert!(ours == theirs.protobuf, "trees differ for {sql:?}");
                true
            }
            (Err(ours), Err(theirs)) => {
                assert_eq!(ours.0, theirs.to_string(), "{sql:?}");
                false
            }
            (ours, theirs) => panic!("{sql:?}: ours {ours:?}, upb's {theirs:?}"),
        }
    }

    #[test]
    fn the_one_pass_writer_gives_upbs_tree_across_the_grammar() {
        let corpus = include_str!("../tests/data/grammar.sql");
        let statements: Vec<&str> = corpus
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("--"))
            .collect();
        let refused: Vec<&str> = statements
            .iter()
            .copied()
            .filter(|sql| !same_as_upb(sql))
            .collect();
        // All but the last line (a psql variable) are PostgreSQL.
        assert_eq!(refused, ["select * from t where a = any(:'x');"]);
        assert!(statements.len() > 150, "{}", statements.len());
    }

    #[test]
    fn the_one_pass_writer_handles_long_and_deep_trees() {
        // A statement whose tree is over 2 MiB: lengths of four bytes and
        // more, written after the message (the writer reserves three).
        let long = format!(
            "select {}",
            vec!["'a fairly long constant value'"; 40_000].join(", ")
        );
        let tree = parse_tree(&long, pg_query::ParserOptions::DEFAULT).unwrap();
        let pg_query::protobuf::node::Node::SelectStmt(select) =
            tree.stmts[0].stmt.as_ref().unwrap().node.as_ref().unwrap()
        else {
            panic!("not a SELECT");
        };
        assert_eq!(select.target_list.len(), 40_000);
        assert!(same_as_upb(&long));
        // Nested deeper than the decoder's recursion limit (prost's 100
        // messages), then deeper than PostgreSQL's stack allows: the same
        // errors. On a thread with room for a debug build's decoder frames.
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(|| {
                for depth in [10, 45, 50, 300] {
                    let deep = format!("select {}1", "1 + ".repeat(depth));
                    assert_eq!(same_as_upb(&deep), depth < 50, "{depth}");
                }
                let deeper = format!("select {}1{}", "array[".repeat(20_000), "]".repeat(20_000));
                assert!(!same_as_upb(&deeper));
            })
            .unwrap()
            .join()
            .unwrap();
        // Many statements in one text.
        let many = "select 1; ".repeat(5_000);
        assert!(same_as_upb(&many));
    }
}
