//! The parse tree, straight from libpg_query.
//!
//! `pg_query::parse` also builds a summary of the tree (tables, aliases,
//! functions, filter columns: a walk over every node with hash sets of
//! strings) that Sluice does not use, about 7 % of analysing a statement.
//! This calls the C function it calls and decodes the same protobuf, and
//! stops there.

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
    fn pg_query_parse_protobuf_opts(
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
        let result = pg_query_parse_protobuf_opts(input.as_ptr(), options.bits());
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
}
