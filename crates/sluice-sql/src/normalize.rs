//! Statement text without its constants, for the audit trail and for
//! approvers.
//!
//! Built on PostgreSQL's own scanner (`pg_query::scan`), so a literal is
//! exactly what the server reads as one. pg_query's `normalize` was used
//! before; it works on the parse tree, keeps the literals of some statements
//! (EXECUTE arguments, PREPARE bodies, `ALTER ROLE … SET` values), leaves a
//! text that already holds `$n` alone, and needs about 8 KB of memory per
//! constant (400 MB for a 100 KB `SELECT 1,1,…`). The scanner needs a few
//! hundred bytes per token.

use pg_query::protobuf::Token;

/// `sql` with every constant (number, string, bit string, dollar-quoted
/// body) replaced by `$n`, numbered after the highest `$n` already in it;
/// comments, identifiers and keywords are kept. `None` when the scanner
/// refuses the text (an unterminated string).
pub fn normalize(sql: &str) -> Option<String> {
    let scan = pg_query::scan(sql).ok()?;
    let constant = |t: i32| {
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
    };
    let mut next = 1 + scan
        .tokens
        .iter()
        .filter(|t| t.token == Token::Param as i32)
        .filter_map(|t| span(sql, t)?.get(1..)?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for t in &scan.tokens {
        if !constant(t.token) {
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

fn span<'a>(sql: &'a str, t: &pg_query::protobuf::ScanToken) -> Option<&'a str> {
    sql.get(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?)
}

/// `sql` with the string literals that carry credentials replaced by
/// `'***'`: the one after `PASSWORD` (`ALTER ROLE … PASSWORD '…'`), the
/// value of a `password` or `passfile` option (user mappings, foreign
/// servers), and any literal holding `password=` (connection strings of
/// subscriptions and dblink). Approvers see the statement, not the secret.
pub fn redact_secrets(sql: &str) -> String {
    let Ok(scan) = pg_query::scan(sql) else {
        return sql.to_owned();
    };
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    let mut previous = "";
    for t in &scan.tokens {
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
