//! Statement templates: the text with the contents of literals blanked, for
//! caching verdicts across statements that differ only in their constants
//! (`... WHERE aid = 17` and `... WHERE aid = 42`).
//!
//! Two texts with the same template must be the same statement to the
//! server except for literal values, so this lexer is deliberately narrow:
//! anything it is not certain to read exactly as PostgreSQL does (non-ASCII,
//! backslashes, dollar quotes and parameters, comments, prefixed strings
//! such as E'…', U&'…', B'…', X'…', numbers glued to letters) gives no
//! template, and the statement is simply judged on its own.

/// The template of `sql`, or `None` when it is not certain.
pub fn template(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    if !sql.is_ascii() || b.iter().any(|&c| c == b'\\' || c == b'$' || c == 0) {
        return None;
    }
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                // A standard string: '' is an escaped quote.
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                out.push_str("'?'");
            }
            b'"' => {
                // Quoted identifier: kept as written.
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                out.push_str(&sql[start..i]);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                if i > 0 && (ident(b[i - 1]) || b[i - 1] == b'.') {
                    // Part of an identifier or of something we do not read.
                    return None;
                }
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                if i < b.len() && (ident(b[i]) || b[i] == b'\'') {
                    // 1e5, 0x1F, 1_000, 12abc: leave it to the parser.
                    return None;
                }
                out.push('?');
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                if b.get(i) == Some(&b'\'') || b.get(i) == Some(&b'&') {
                    // E'…', B'…', X'…', N'…', U&'…', U&"…"
                    return None;
                }
                out.push_str(&sql[start..i]);
            }
            _ => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanks_only_literal_contents() {
        assert_eq!(
            template("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;")
        );
        assert_eq!(
            template("select 'it''s', \"Col\" from t").as_deref(),
            Some("select '?', \"Col\" from t")
        );
        assert_eq!(
            template("select t1.a, x2 from t1 where b = -1.5").as_deref(),
            Some("select t1.a, x2 from t1 where b = -?")
        );
    }

    #[test]
    fn refuses_what_it_cannot_read_for_certain() {
        for sql in [
            "select E'a\\'b'",
            "select $$x$$",
            "select $1",
            "select 1 -- c",
            "select /* c */ 1",
            "select U&'d\\0061'",
            "select B'101'",
            "select x'1f'",
            "select 1e5",
            "select 0x1f",
            "select 1_000",
            "select 'é'",
            "select 'unterminated",
            "select \"unterminated",
        ] {
            assert_eq!(template(sql), None, "{sql}");
        }
    }

    #[test]
    fn different_statements_have_different_templates() {
        assert_ne!(
            template("delete from t where a = 1"),
            template("delete from u where a = 1")
        );
        assert_ne!(template("select 1 from t"), template("select 1 from \"T\""));
    }
}
