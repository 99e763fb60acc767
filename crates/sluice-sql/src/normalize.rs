//! Statement text without its constants, for the audit trail and for
//! approvers.
//!
//! Built on PostgreSQL's own scanner ([`scan`]), so a literal is
//! exactly what the server reads as one. pg_query's `normalize` was used
//! before; it works on the parse tree, keeps the literals of some statements
//! (EXECUTE arguments, PREPARE bodies, `ALTER ROLE … SET` values), leaves a
//! text that already holds `$n` alone, and needs about 8 KB of memory per
//! constant (400 MB for a 100 KB `SELECT 1,1,…`). The scanner needs a few
//! hundred bytes per token.

use pg_query::protobuf::{KeywordKind, ScanToken, Token};

/// PostgreSQL's tokens of `sql`; `None` when its scanner refuses the text
/// (an unterminated string, quoted name or comment).
///
/// `pg_query::scan_tokens` skips protobuf, but for a text with no token at
/// all (empty, or only comments) it makes a slice from a null pointer
/// (undefined behaviour). So the text is scanned with `\n;` after it, which
/// always ends in one token of its own (a newline ends any comment or token
/// that can still be open without being an error), and that token is dropped.
pub fn scan(sql: &str) -> Option<Vec<ScanToken>> {
    let mut text = String::with_capacity(sql.len() + 2);
    text.push_str(sql);
    text.push_str("\n;");
    let mut tokens = pg_query::scan_tokens(&text).ok()?;
    match tokens.pop() {
        Some(t) if usize::try_from(t.start).ok() == Some(sql.len() + 1) => Some(tokens),
        _ => None,
    }
}

/// `sql` with every constant (number, string, bit string, dollar-quoted
/// body) replaced by `$n`, numbered after the highest `$n` already in it;
/// comments, identifiers and keywords are kept. `None` when the scanner
/// refuses the text (an unterminated string).
pub fn normalize(sql: &str) -> Option<String> {
    normalized(sql, &scan(sql)?)
}

/// The fingerprint and the normalized text of `sql` from one scan (see
/// [`fingerprint`]); `None` when the scanner refuses the text.
pub fn fingerprint_and_normalize(sql: &str) -> Option<(String, String)> {
    fingerprint_and_normalize_tokens(sql, &scan(sql)?)
}

/// [`fingerprint_and_normalize`] from the text's tokens, already scanned.
pub fn fingerprint_and_normalize_tokens(
    sql: &str,
    tokens: &[ScanToken],
) -> Option<(String, String)> {
    Some((fingerprint(sql, tokens), normalized(sql, tokens)?))
}

fn is_constant(t: i32) -> bool {
    [
        Token::Iconst,
        Token::Fconst,
        Token::Sconst,
        Token::Usconst,
        Token::Bconst,
        Token::Xconst,
    ]
    .iter()
    .any(|k| *k as i32 == t)
}

fn normalized(sql: &str, tokens: &[ScanToken]) -> Option<String> {
    let mut next = 1 + tokens
        .iter()
        .filter(|t| t.token == Token::Param as i32)
        .filter_map(|t| span(sql, t)?.get(1..)?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for t in tokens {
        if !is_constant(t.token) {
            continue;
        }
        let (Ok(start), Ok(end)) = (usize::try_from(t.start), usize::try_from(t.end)) else {
            return None;
        };
        if start < copied || !sql.is_char_boundary(start) || !sql.is_char_boundary(end) {
            return None;
        }
        out.push_str(sql.get(copied..start)?);
        out.push('$');
        out.push_str(&next.to_string());
        next += 1;
        copied = end;
    }
    out.push_str(sql.get(copied..)?);
    Some(out)
}

/// Sluice's statement fingerprint: 16 hex digits of a 64-bit FNV-1a hash
/// of the statement's tokens as PostgreSQL's scanner reads them, with
/// comments, whitespace and trailing semicolons left out, keywords and
/// unquoted identifiers lower-cased (as the server folds them), every
/// constant and bind parameter read as one placeholder and a list of them
/// (`IN (1, 2, 3)`) as one. Statements that differ only in those share a
/// fingerprint, also when one is sent with literals and the other prepared
/// with `$n`. Read off the scan that normalizing needs anyway: pg_query's
/// own fingerprint parsed the statement a second time, about a third of
/// the cost of judging a new statement.
fn fingerprint(sql: &str, tokens: &[ScanToken]) -> String {
    const PLACEHOLDER: &str = "?";
    // Each part, and whether it can end an operand (so that a `-` after
    // it subtracts rather than negates).
    let mut parts: Vec<(std::borrow::Cow<'_, str>, bool)> = Vec::with_capacity(tokens.len());
    for t in tokens {
        if t.token == Token::SqlComment as i32 || t.token == Token::CComment as i32 {
            continue;
        }
        if is_constant(t.token) || t.token == Token::Param as i32 {
            // `x = -5` reads as the constant -5: `+ -4210` and `+ 4210` are
            // one statement with another constant.
            let negated = match parts.as_slice() {
                [.., (_, ends), (minus, _)] => minus == "-" && !ends,
                [(minus, _)] => minus == "-",
                _ => false,
            };
            if negated {
                parts.pop();
            }
            // `?, ?` → `?`: lists of any length share a fingerprint.
            if let [.., (p, _), (comma, _)] = parts.as_slice() {
                if p == PLACEHOLDER && comma == "," {
                    parts.pop();
                    continue;
                }
            }
            parts.push((PLACEHOLDER.into(), true));
            continue;
        }
        let Some(text) = span(sql, t) else { continue };
        let quoted =
            text.starts_with('"') || text.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("u&"));
        let ends_operand = t.token == Token::Ident as i32
            || (t.keyword_kind != KeywordKind::NoKeyword as i32
                && t.keyword_kind != KeywordKind::ReservedKeyword as i32)
            || text == ")"
            || text == "]";
        let text = if quoted || !text.bytes().any(|b| b.is_ascii_uppercase()) {
            text.into()
        } else {
            text.to_ascii_lowercase().into()
        };
        parts.push((text, ends_operand));
    }
    while parts.last().is_some_and(|(p, _)| p == ";") {
        parts.pop();
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (part, _) in &parts {
        // A separator byte no token holds, so tokens cannot run together.
        for b in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

fn span<'a>(sql: &'a str, t: &ScanToken) -> Option<&'a str> {
    sql.get(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?)
}

/// `sql` with the string literals that carry credentials replaced by
/// `'***'`: the one after `PASSWORD` (`ALTER ROLE … PASSWORD '…'`), the
/// value of a `password` or `passfile` option (user mappings, foreign
/// servers), and any literal holding `password=` (connection strings of
/// subscriptions and dblink). Approvers see the statement, not the secret.
pub fn redact_secrets(sql: &str) -> String {
    let Some(tokens) = scan(sql) else {
        return sql.to_owned();
    };
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    let mut previous = "";
    for t in &tokens {
        let Some(text) = span(sql, t) else { continue };
        let is_string = t.token == Token::Sconst as i32 || t.token == Token::Usconst as i32;
        if is_string {
            let lower = text.to_ascii_lowercase();
            let secret = matches!(previous, "password" | "passfile")
                || lower.contains("password=")
                || lower.contains("password =");
            if secret {
                if let (Ok(start), Ok(end)) = (usize::try_from(t.start), usize::try_from(t.end)) {
                    if start >= copied {
                        out.push_str(&sql[copied..start]);
                        out.push_str("'***'");
                        copied = end;
                    }
                }
            }
        }
        if !matches!(t.token, x if x == Token::SqlComment as i32 || x == Token::CComment as i32) {
            previous = if is_string { "" } else { text };
            if previous.eq_ignore_ascii_case("password") {
                previous = "password";
            } else if previous.eq_ignore_ascii_case("passfile") {
                previous = "passfile";
            }
        }
    }
    out.push_str(&sql[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanning_gives_the_scanners_tokens_also_for_texts_without_any() {
        for sql in [
            "",
            "   \n\t",
            "-- only a comment",
            "/* only a comment */",
            "/* nested /* comment */ */ -- and more",
            "select 1",
            "select 1 -- trailing comment",
            "select 'a' 'b' from t where x = $1 /* c */",
            "select $$dollar$$ || E'\\n' || U&'\\0041' -",
            "select 1;",
        ] {
            let expected = pg_query::scan(sql).unwrap().tokens;
            assert_eq!(scan(sql), Some(expected), "{sql:?}");
        }
        for refused in [
            "select 'open",
            "select /* open",
            "select \"open",
            "select $x$ open",
        ] {
            assert!(pg_query::scan(refused).is_err(), "{refused:?}");
            assert_eq!(scan(refused), None, "{refused:?}");
        }
        assert_eq!(normalize("-- nothing"), Some("-- nothing".to_owned()));
    }

    #[test]
    fn every_constant_becomes_a_parameter() {
        assert_eq!(
            normalize("select * from t where a = 1 and b = 'x' and c = 1.5e3").as_deref(),
            Some("select * from t where a = $1 and b = $2 and c = $3")
        );
        // Statements pg_query's normalize left alone.
        assert_eq!(
            normalize("execute q('secret')").as_deref(),
            Some("execute q($1)")
        );
        assert_eq!(
            normalize("prepare q as select 'secret'::text").as_deref(),
            Some("prepare q as select $1::text")
        );
        assert_eq!(
            normalize("alter role r set app.key = 'secret'").as_deref(),
            Some("alter role r set app.key = $1")
        );
        assert_eq!(
            normalize("prepare q(text) as select $1, 'x'; execute q('secret')").as_deref(),
            Some("prepare q(text) as select $1, $2; execute q($3)")
        );
        assert_eq!(
            normalize("select E'a\\'b', $$x$$, B'101', X'ff', U&'d\\0061t'").as_deref(),
            Some("select $1, $2, $3, $4, $5")
        );
        // Identifiers, keywords and comments stay.
        assert_eq!(
            normalize("select \"a'b\" /* c */ from t where x is true").as_deref(),
            Some("select \"a'b\" /* c */ from t where x is true")
        );
        assert_eq!(normalize("select 'unterminated"), None);
    }

    fn fp(sql: &str) -> String {
        fingerprint_and_normalize(sql).unwrap().0
    }

    #[test]
    fn fingerprints_group_statements_that_differ_only_in_constants() {
        let select = fp("SELECT abalance FROM pgbench_accounts WHERE aid = 42;");
        assert_eq!(select.len(), 16);
        for same in [
            "select abalance from pgbench_accounts where aid = 7",
            "SELECT  abalance\n FROM pgbench_accounts /* c */ WHERE aid = $1 ;",
            "select abalance from pgbench_accounts where aid = 'x' -- why",
        ] {
            assert_eq!(fp(same), select, "{same}");
        }
        assert_eq!(
            fp("update t set b = b + -4210 where id = 1"),
            fp("update t set b = b + 4210 where id = -1")
        );
        assert_ne!(fp("select a - 1 from t"), fp("select a 1 from t"));
        assert_eq!(
            fp("select * from t where id in (1, 2, 3)"),
            fp("select * from t where id in ($1)")
        );
        for different in [
            "select abalance from pgbench_branches where aid = 42",
            "select abalance from pgbench_accounts where aid > 42",
            "select \"Abalance\" from pgbench_accounts where aid = 42",
            "select abalance from pgbench_accounts where aid = 42; select 1",
        ] {
            assert_ne!(fp(different), select, "{different}");
        }
        // Tokens never run together: `ab c` is not `a bc`.
        assert_ne!(fp("select ab c"), fp("select a bc"));
        assert_eq!(fingerprint_and_normalize("select 'unterminated"), None);
    }

    #[test]
    fn a_long_list_of_constants_is_cheap() {
        let sql = format!("select {}", vec!["1"; 100_000].join(","));
        let n = normalize(&sql).unwrap();
        assert!(n.ends_with(",$99999,$100000"), "{}", &n[n.len() - 20..]);
    }

    #[test]
    fn secrets_are_redacted_for_approvers() {
        assert_eq!(
            redact_secrets("ALTER ROLE app PASSWORD 'hunter2' VALID UNTIL '2030-01-01'"),
            "ALTER ROLE app PASSWORD '***' VALID UNTIL '2030-01-01'"
        );
        assert_eq!(
            redact_secrets(
                "create user mapping for bob server s options (user 'bob', password 'pw')"
            ),
            "create user mapping for bob server s options (user 'bob', password '***')"
        );
        assert_eq!(
            redact_secrets("create subscription s connection 'host=h password=pw' publication p"),
            "create subscription s connection '***' publication p"
        );
        assert_eq!(
            redact_secrets("alter table t add column c int"),
            "alter table t add column c int"
        );
    }
}
