//! Sensitive values in JSON by the key that holds them: `{"full_name":
//! "Alice Smith"}`, `row_to_json(customer)`, `{"contact": {"name": …}}`.
//!
//! Names, addresses and dates of birth are recognised by what a value is
//! called, not by the value, so a JSON document gets the same reading as a
//! result column: each key is classified like a column name (the key of
//! the enclosing object as its table, so a bare `name` counts inside a
//! `customer` or `contact` object), and every string under a sensitive key,
//! in nested arrays and objects too, becomes a finding of that kind. One
//! linear pass; malformed JSON yields what was read before the fault.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;

use crate::classify::classify_column_in;
use crate::detect::Finding;
use crate::Kind;

/// Keys classified per thread, by (enclosing key, key).
const CACHE_LIMIT: usize = 4096;

/// Classified keys, by `context \0 key`, and a buffer to build lookups in.
type KeyCache = (HashMap<Vec<u8>, Option<Kind>>, Vec<u8>);

thread_local! {
    static KEYS: RefCell<KeyCache> = RefCell::new((HashMap::new(), Vec::new()));
}

fn classify_key(context: &[u8], key: &[u8]) -> Option<Kind> {
    KEYS.with(|cache| {
        let (cache, scratch) = &mut *cache.borrow_mut();
        scratch.clear();
        scratch.extend_from_slice(context);
        scratch.push(0);
        scratch.extend_from_slice(key);
        if let Some(k) = cache.get(scratch.as_slice()) {
            return *k;
        }
        let kind = match (std::str::from_utf8(context), std::str::from_utf8(key)) {
            (Ok(ctx), Ok(key)) if !key.is_empty() && key.len() <= 128 => {
                let table = (!ctx.is_empty()).then_some(ctx);
                classify_column_in(table, key, "text")
            }
            _ => None,
        };
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(scratch.clone(), kind);
        kind
    })
}

struct Frame {
    object: bool,
    /// The kind of the key holding this container: every string in it.
    inherited: Option<Kind>,
    /// That key's bytes, the context for this object's own keys.
    key: Range<usize>,
    /// In an object: the next string is a key.
    expect_key: bool,
    /// In an object: the kind of the key whose value comes next.
    value_kind: Option<Kind>,
    /// In an object: the last key read.
    last_key: Range<usize>,
}

/// Does `b` look like a JSON object or array (first and last non-blank
/// bytes `{…}` or `[…]`)? Text columns often hold JSON.
pub fn looks_like_json(b: &[u8]) -> bool {
    let first = b.iter().find(|c| !c.is_ascii_whitespace());
    let last = b.iter().rev().find(|c| !c.is_ascii_whitespace());
    matches!(
        (first, last),
        (Some(b'{'), Some(b'}')) | (Some(b'['), Some(b']'))
    )
}

/// The text of the JSON string whose content is `b[inner]`, its escapes
/// (`\u005f`, `\n`) decoded, so that a key cannot hide its name.
fn key_text<'a>(b: &'a [u8], inner: &Range<usize>) -> Cow<'a, [u8]> {
    let raw = &b[inner.clone()];
    if !raw.contains(&b'\\') || inner.start == 0 {
        return Cow::Borrowed(raw);
    }
    match serde_json::from_slice::<String>(&b[inner.start - 1..inner.end + 1]) {
        Ok(s) => Cow::Owned(s.into_bytes()),
        Err(_) => Cow::Borrowed(raw),
    }
}

/// End (index after the closing quote) of the JSON string starting at the
/// quote at `i`; `None` when it does not end.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    None
}

/// Findings for the string values under sensitive keys of the JSON text
/// `b` (ranges inside the quotes), appended to `out`.
/// `root`: the table the document stands for (`row_to_json(c)` of a
/// customers row), the context of its top-level keys; empty when unknown.
pub(crate) fn key_findings(b: &[u8], root: &[u8], out: &mut Vec<Finding>) {
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c @ (b'{' | b'[') => {
                let (inherited, key) = match stack.last() {
                    Some(f) if f.object => (f.value_kind.or(f.inherited), f.last_key.clone()),
                    Some(f) => (f.inherited, f.key.clone()),
                    None => (None, 0..0),
                };
                stack.push(Frame {
                    object: c == b'{',
                    inherited,
                    key,
                    expect_key: c == b'{',
                    value_kind: None,
                    last_key: 0..0,
                });
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                if let Some(f) = stack.last_mut() {
                    f.expect_key = f.object;
                }
                i += 1;
            }
            b'"' => {
                let Some(end) = string_end(b, i) else { return };
                let inner = i + 1..end - 1;
                match stack.last_mut() {
                    Some(f) if f.object && f.expect_key => {
                        // a key is followed by `:`; otherwise this is not
                        // JSON (an array literal `{"a","b"}`): stop
                        let colon = b[end..].iter().find(|c| !c.is_ascii_whitespace());
                        if colon != Some(&b':') {
                            return;
                        }
                        let context = if f.key.is_empty() {
                            Cow::Borrowed(root)
                        } else {
                            key_text(b, &f.key)
                        };
                        f.value_kind = classify_key(&context, &key_text(b, &inner));
                        f.last_key = inner;
                        f.expect_key = false;
                    }
                    Some(f) => {
                        let kind = if f.object {
                            f.value_kind.or(f.inherited)
                        } else {
                            f.inherited
                        };
                        if let Some(kind) = kind.filter(|_| !inner.is_empty()) {
                            out.push(Finding { kind, range: inner });
                        }
                    }
                    None => {}
                }
                i = end;
            }
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(json: &str) -> Vec<(Kind, &str)> {
        let mut out = Vec::new();
        key_findings(json.as_bytes(), b"", &mut out);
        out.into_iter().map(|f| (f.kind, &json[f.range])).collect()
    }

    #[test]
    fn values_under_sensitive_keys() {
        assert_eq!(
            found(
                r#"{"id": 1, "full_name": "Alice Smith", "plan": "gold", "date_of_birth": "1985-03-14"}"#
            ),
            vec![
                (Kind::Name, "Alice Smith"),
                (Kind::DateOfBirth, "1985-03-14")
            ]
        );
        // a bare `name` in a person's object; not in a product's
        assert_eq!(
            found(
                r#"{"customer": {"name": "Bob \"B\" Jones", "id": 2}, "product": {"name": "Lamp"}}"#
            ),
            vec![(Kind::Name, r#"Bob \"B\" Jones"#)]
        );
        // arrays and objects under a sensitive key: every string in them
        assert_eq!(
            found(
                r#"[{"home_address": {"street": "1 Main St", "zip": 12345}}, {"member_names": ["Ann", "Cy"]}]"#
            ),
            vec![
                (Kind::Address, "1 Main St"),
                (Kind::Name, "Ann"),
                (Kind::Name, "Cy")
            ]
        );
        // keys that only look similar, and malformed text
        assert!(found(r#"{"name_count": "3", "username_policy": "strict"}"#).is_empty());
        assert_eq!(
            found(r#"{"full_name": "Ann", "x": "unterminated"#),
            vec![(Kind::Name, "Ann")]
        );
        assert!(found(r#"]]]}}}"full_name""#).is_empty());
        // the table a whole-row document stands for: context for its keys
        let mut out = Vec::new();
        key_findings(br#"[{"id": 1, "name": "Ann"}]"#, b"users", &mut out);
        assert_eq!(out.len(), 1);
        assert!(found(r#"[{"id": 1, "name": "Ann"}]"#).is_empty());
        // escapes in a key do not hide it
        assert_eq!(
            found(r#"{"full\u005fname": "Ann", "x": 1}"#),
            vec![(Kind::Name, "Ann")]
        );
        // a PostgreSQL array literal is not JSON
        assert!(found(r#"{"full_name","Alice Smith"}"#).is_empty());
        assert!(looks_like_json(br#" {"a": 1} "#) && !looks_like_json(b"{a"));
    }
}
