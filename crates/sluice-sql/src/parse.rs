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
//! encodes them, about 40 % of the C call. Both decode to the same tree
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
        max_depth: c_int,
        deepest: *mut c_int,
    ) -> PgQueryProtobufParseResult;
    fn pg_query_free_protobuf_parse_result(result: PgQueryProtobufParseResult);
}

/// The deepest nesting of messages (a node is two: the `Node` and its
/// type's message) read from a tree; deeper statements are refused as
/// unparseable ("statement nested more than 1000 levels deep"). About 500
/// nested operators (`1 + 1 + …`) or 160 nested subqueries: far beyond
/// what people and generators write, and PostgreSQL's own parser allows
/// several thousand. prost's limit of 100 (its default) refused a sum of
/// 50 terms.
const MAX_DEPTH: c_int = 1000;

/// Stack that decoding and walking a tree take per nested message, with
/// margin: measured in a release build at 0.65 KiB for a sum
/// (`1 + 1 + …`; a 2 MiB thread overflowed at 3,200 messages) and 1.7 KiB
/// for nested function calls (a 400 KiB thread at 240), and at about
/// 26 KiB in a debug build.
#[cfg(not(debug_assertions))]
const STACK_PER_MESSAGE: usize = 8 << 10;
#[cfg(debug_assertions)]
const STACK_PER_MESSAGE: usize = 128 << 10;

/// Trees up to this deep are read on the caller's stack (a proxy worker
/// thread has 2 MiB, of which this takes at most about 220 KiB in a release
/// build); deeper ones on a stack of their own, sized to them.
#[cfg(not(debug_assertions))]
const INLINE_DEPTH: usize = 128;
#[cfg(debug_assertions)]
const INLINE_DEPTH: usize = 16;

/// `f` of the parse tree of `sql` under `options`, or the parser's error.
///
/// The tree lives only during `f`: decoding, reading and dropping a tree
/// recurse once per level, so a deep one is handled on a stack grown for
/// it, never by overflowing the caller's (which would abort the proxy).
pub(crate) fn with_parse_tree<R>(
    sql: &str,
    options: pg_query::ParserOptions,
    f: impl FnOnce(&ParseResult) -> R,
) -> Result<R, ParseError> {
    let input =
        CString::new(sql).map_err(|e| ParseError(format!("Invalid statement format: {e}")))?;
    let mut deepest: c_int = 0;
    // SAFETY: `input` is a NUL-terminated string that outlives the call and
    // `deepest` a valid int; the function only reads the one and writes the
    // other. It returns a result it allocated, freed once below.
    let result = unsafe {
        pg_query_parse_protobuf_direct_opts(input.as_ptr(), options.bits(), MAX_DEPTH, &mut deepest)
    };
    let out = if !result.error.is_null() {
        // SAFETY: a non-null `error` points to a PgQueryError whose
        // `message` is a NUL-terminated string (libpg_query's contract),
        // read here before the result is freed.
        let message = unsafe { CStr::from_ptr((*result.error).message) }.to_string_lossy();
        Err(ParseError(format!("Invalid statement: {message}")))
    } else {
        // An empty tree (a text of only comments) may come without a
        // buffer: no slice from a null pointer.
        let data: &[u8] = if result.parse_tree.len == 0 || result.parse_tree.data.is_null() {
            &[]
        } else {
            // SAFETY: without an error, `parse_tree.data` points to
            // `parse_tree.len` initialized bytes (libpg_query's contract,
            // as `pg_query::parse` relies on it too), which stay valid
            // until the result is freed below, after the last use of
            // `data`; the decoded tree owns its own memory.
            unsafe {
                std::slice::from_raw_parts(
                    result.parse_tree.data as *const u8,
                    result.parse_tree.len,
                )
            }
        };
        let read = || {
            ParseResult::decode(data)
                .map(|tree| f(&tree))
                .map_err(|e| ParseError(format!("Error decoding result: {e}")))
        };
        let depth = usize::try_from(deepest).unwrap_or(usize::MAX);
        if depth <= INLINE_DEPTH {
            read()
        } else {
            let depth = depth.min(MAX_DEPTH as usize);
            stacker::grow((depth + 64) * STACK_PER_MESSAGE, read)
        }
    };
    // SAFETY: the result came from the call above and is freed once; no
    // pointer into it is used after this.
    unsafe { pg_query_free_protobuf_parse_result(result) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the tree (for shallow trees: the copy is dropped on the
    /// test's stack).
    fn parse_tree(sql: &str, options: pg_query::ParserOptions) -> Result<ParseResult, ParseError> {
        with_parse_tree(sql, options, ParseResult::clone)
    }

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
        // Deep trees: the same trees, read on a stack grown for them (the
        // test's thread has 2 MiB, as a proxy worker's), up to Sluice's limit
        // of 1000 nested messages, where upb's encoder (10,000) still goes on.
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(|| {
                for depth in [10, 45, 50, 300, 495] {
                    let deep = format!("select {}1", "1 + ".repeat(depth));
                    assert!(same_as_upb(&deep), "{depth}");
                }
            })
            .unwrap()
            .join()
            .unwrap();
        for (sql, error) in [
            (
                format!("select {}1", "1 + ".repeat(600)),
                "statement nested more than 1000 levels deep",
            ),
            (
                format!("select {}1{}", "array[".repeat(700), "]".repeat(700)),
                "statement nested more than 1000 levels deep",
            ),
        ] {
            let refused = parse_tree(&sql, pg_query::ParserOptions::DEFAULT).unwrap_err();
            assert!(refused.0.ends_with(error), "{}", refused.0);
        }
        // Many statements in one text.
        let many = "select 1; ".repeat(5_000);
        assert!(same_as_upb(&many));
    }

    #[test]
    fn a_deep_statement_is_analysed_on_a_proxy_workers_stack() {
        // A proxy worker thread has 2 MiB of stack; decoding, walking and
        // dropping a tree 990 messages deep takes more in a debug build.
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let sum = format!("select {}1 from t", "a + ".repeat(490));
                let analysis = crate::analyze(&sum, crate::Dialect::default()).unwrap();
                assert_eq!(analysis.statements.len(), 1);
                let nested = format!(
                    "select * from t where a in {}(1){}",
                    "(select b from u where c in ".repeat(60),
                    ")".repeat(60)
                );
                if let Err(e) = crate::analyze(&nested, crate::Dialect::default()) {
                    panic!("{e}");
                }
                let too_deep = format!("select {}1", "a + ".repeat(600));
                let refused = crate::analyze(&too_deep, crate::Dialect::default()).unwrap_err();
                assert!(
                    refused.0.contains("nested more than 1000 levels deep"),
                    "{}",
                    refused.0
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
