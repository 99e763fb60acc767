//! Statement bodies kept as a shared template plus the values that vary.
//!
//! A statement event's JSON repeats, execution after execution, everything
//! but a few scalars (the session, the counts, the duration, the SQLSTATE),
//! and stored whole it is most of a row. The SQLite store keeps the
//! repeated part once, as a template: the body with those top-level scalar
//! values cut out (`…,"rows_returned":,"rows_affected":,…`). The event row
//! keeps only the values cut, as a JSON array in their order. [`join`] gives
//! back the exact bytes: the digest and the MAC cover them, so `verify`
//! checks every join.

/// Top-level members whose scalar values stay in the template: fixed for
/// one statement shape. Every other top-level scalar is cut, so a field
/// added later varies freely without making a template per event.
const KEPT: &[&str] = &[
    "code",
    "target",
    "environment",
    "fingerprint",
    "normalized",
    "kind",
    "decision",
    "rule",
];

/// Splits a compact JSON object (as `serde_json::to_string` writes it):
/// the template is appended to `template` (a buffer the caller may have
/// put a prefix in), the values replace `values`. `false`, with `template`
/// as it was, when `body` is not such an object: it is then stored whole.
pub fn split(body: &str, template: &mut String, values: &mut String) -> bool {
    let start = template.len();
    let ok = split_into(body, template, values).is_some();
    if !ok {
        template.truncate(start);
    }
    ok
}

fn split_into(body: &str, template: &mut String, values: &mut String) -> Option<()> {
    let b = body.as_bytes();
    values.clear();
    if b.first() != Some(&b'{') || b.get(1) == Some(&b'}') {
        return None;
    }
    template.push('{');
    values.push('[');
    let mut i = 1;
    let mut cut = 0usize;
    loop {
        let key_end = skip_string(b, i)?;
        if b.get(key_end) != Some(&b':') {
            return None;
        }
        let key = body.get(i + 1..key_end - 1)?;
        let value_start = key_end + 1;
        let value_end = skip_value(b, value_start)?;
        template.push_str(body.get(i..value_start)?);
        let value = body.get(value_start..value_end)?;
        if is_scalar(b[value_start]) && !KEPT.contains(&key) {
            if cut > 0 {
                values.push(',');
            }
            values.push_str(value);
            cut += 1;
        } else {
            template.push_str(value);
        }
        match next_member(b, value_end, template)? {
            Some(next) => i = next,
            None => break,
        }
    }
    values.push(']');
    Some(())
}

/// The body that [`split`] cut into `template` and `values`; `None` when
/// they do not fit together (a template or values changed by hand).
pub fn join(template: &str, values: &str) -> Option<String> {
    let t = template.as_bytes();
    let v = values.as_bytes();
    if t.first() != Some(&b'{') || v.first() != Some(&b'[') {
        return None;
    }
    let mut out = String::with_capacity(template.len() + values.len());
    out.push('{');
    let mut i = 1;
    let mut vi = 1;
    loop {
        let key_end = skip_string(t, i)?;
        if t.get(key_end) != Some(&b':') {
            return None;
        }
        out.push_str(template.get(i..=key_end)?);
        let value_start = key_end + 1;
        let next = if matches!(t.get(value_start), Some(b',' | b'}')) {
            // A hole: the next value.
            if !is_scalar(*v.get(vi)?) {
                return None;
            }
            let end = skip_value(v, vi)?;
            out.push_str(values.get(vi..end)?);
            vi = match v.get(end) {
                Some(b',') => end + 1,
                Some(b']') => end,
                _ => return None,
            };
            value_start
        } else {
            let end = skip_value(t, value_start)?;
            out.push_str(template.get(value_start..end)?);
            end
        };
        match next_member(t, next, &mut out)? {
            Some(next) => i = next,
            None => break,
        }
    }
    // Every value used, none left over.
    (v.get(vi) == Some(&b']') && vi + 1 == v.len()).then_some(out)
}

/// What follows the member ending at `b[at]`, copied to `out`: a `,` and
/// the start of the next member, or the closing `}` at the very end (`None`).
fn next_member(b: &[u8], at: usize, out: &mut String) -> Option<Option<usize>> {
    match b.get(at) {
        Some(b',') => {
            out.push(',');
            Some(Some(at + 1))
        }
        Some(b'}') if at + 1 == b.len() => {
            out.push('}');
            Some(None)
        }
        _ => None,
    }
}

fn is_scalar(first: u8) -> bool {
    !matches!(first, b'{' | b'[')
}

/// The index just past the string starting at `b[i]` (a `"`).
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The index just past the JSON value starting at `b[i]`; compact JSON
/// only (whitespace is refused).
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(&c) = b.get(j) {
                if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.') {
                    j += 1;
                } else {
                    break;
                }
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, Decision, EventBody, Lineage, MaskedColumn, Statement};

    fn round_trip(body: &str) -> (String, String) {
        let (mut t, mut v) = (String::new(), String::new());
        assert!(split(body, &mut t, &mut v), "{body}");
        assert_eq!(join(&t, &v).as_deref(), Some(body), "{t} + {v}");
        (t, v)
    }

    fn statement(session: &str, rows: u64, text: Option<&str>) -> String {
        let s = Statement {
            session: session.into(),
            principal: std::sync::Arc::new(Actor {
                name: "ann \"the\" {admin}, [ops]".into(),
                kind: "human".into(),
                ..Actor::default()
            }),
            target: "app".into(),
            environment: "production".into(),
            fingerprint: "ab12".into(),
            normalized: "SELECT \"a,b\" FROM t WHERE x = $1 -- }]\\\"".into(),
            text: text.map(str::to_string),
            kind: "select".into(),
            decision: Decision::Allow,
            tables_read: vec!["t".into()].into(),
            columns_read: vec!["t.\"a,b\"".into()].into(),
            masked: vec![MaskedColumn {
                column: "t.email".into(),
                detector: "email".into(),
            }],
            rows_returned: rows,
            bytes_to_client: 10 * rows,
            duration_us: 117,
            sqlstate: Some("22012".into()),
            lineage: Some(Lineage::default()),
            ..Statement::default()
        };
        serde_json::to_string(&EventBody::Statement(s)).unwrap()
    }

    #[test]
    fn executions_of_one_shape_share_the_template() {
        let (t1, v1) = round_trip(&statement("s1", 1, None));
        let (t2, v2) = round_trip(&statement("s2", 500, None));
        assert_eq!(t1, t2);
        assert_ne!(v1, v2);
        assert!(t1.contains("\"rows_returned\":,"), "{t1}");
        assert!(t1.contains("\"normalized\":\"SELECT"), "{t1}");
        assert!(!t1.contains("s1") && v1.contains("\"s1\""), "{t1} / {v1}");
        // Literal text (when config keeps it) varies: it is a value.
        let (t3, v3) = round_trip(&statement("s1", 1, Some("select 'x, }' ")));
        assert!(!t3.contains("select 'x"), "{t3}");
        assert!(v3.contains("select 'x, }'"), "{v3}");
    }

    #[test]
    fn values_are_a_json_array() {
        let (_, v) = round_trip(&statement("s\u{e9}\n", 3, None));
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&v).unwrap();
        assert_eq!(parsed[0], "s\u{e9}\n");
        assert!(parsed.contains(&serde_json::json!(3)));
    }

    #[test]
    fn other_shapes_of_json_round_trip_or_are_refused() {
        for body in [
            r#"{"a":1}"#,
            r#"{"a":"x"}"#,
            r#"{"a":[1,{"b":"]"}],"c":null,"d":true,"e":-1.5e3}"#,
            r#"{"code":"x","a":{}}"#,
        ] {
            round_trip(body);
        }
        let (mut t, mut v) = (String::new(), String::new());
        for bad in [
            "",
            "{}",
            "[1]",
            r#"{"a": 1}"#,
            r#"{"a":1} "#,
            r#"{"a":1,}"#,
            r#"{"a":"x}"#,
            r#"{"a"}"#,
            "not json",
        ] {
            assert!(!split(bad, &mut t, &mut v), "{bad}");
            assert!(t.is_empty(), "{bad}: template left as it was");
        }
    }

    #[test]
    fn a_template_and_values_that_do_not_fit_do_not_join() {
        let (t, v) = round_trip(&statement("s1", 1, None));
        let fewer = v.replacen("\"s1\",", "", 1);
        assert_eq!(join(&t, &fewer), None);
        let more = v.replace(']', ",7]");
        assert_eq!(join(&t, &more), None);
        assert_eq!(join(&t, "[{\"a\":1}]"), None);
        assert_eq!(join(&t, ""), None);
        assert_eq!(join("", &v), None);
        assert_eq!(
            join(&t.replace("\"rows_returned\":,", "\"rows_returned\",,"), &v),
            None
        );
    }
}
