//! Event bodies as JSON, the bytes the chain seals.
//!
//! Every execution of a statement in a session gives a body that differs
//! from the previous one only after `"masked"`: the session, principal,
//! target, texts, tables and columns are the same. Serializing those with
//! serde each time was the largest part of sealing an event. [`BodyWriter`]
//! keeps that part as bytes per statement shape and writes the rest by
//! hand; the output is byte for byte what serde writes (tested), so the
//! stores' templates and `verify` see no difference.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use crate::event::{EventBody, Statement};
use crate::AuditError;

/// Shapes kept; the cache starts over when it holds this many.
const SHAPES_MAX: usize = 4096;

/// What serde writes after `columns_written` for a statement with no masked
/// column, zero counts, and no SQLSTATE or lineage.
const EMPTY_TAIL: &str =
    r#""masked":[],"rows_returned":0,"rows_affected":0,"bytes_to_client":0,"duration_us":0}"#;

/// A statement shape: the statement it was made from (holding its shared
/// lists, so their addresses stay its own) and its bytes up to `"masked"`.
struct Shape {
    statement: Statement,
    prefix: Box<[u8]>,
    /// Unique among this writer's shapes, made or to come (never reused).
    number: u64,
}

/// Writes event bodies; one per writer thread.
#[derive(Default)]
pub struct BodyWriter {
    shapes: HashMap<u64, Shape>,
    /// Keys seen once, without a shape yet.
    seen_once: std::collections::HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
    /// Number of the last shape made.
    last_number: u64,
}

impl BodyWriter {
    /// Append the JSON of `body` to `out`. Returns the number of the shape
    /// it was written from when the body has no masked column and no
    /// lineage: such bodies of one shape differ only in their counts and
    /// SQLSTATE ([`BatchEntry::shape`]). 0 otherwise.
    ///
    /// [`BatchEntry::shape`]: crate::store::BatchEntry::shape
    pub fn write(&mut self, body: &EventBody, out: &mut Vec<u8>) -> Result<u64, AuditError> {
        match body {
            EventBody::Statement(s) if s.text.is_none() && s.approval_id.is_none() => {
                self.write_statement(body, s, out)
            }
            _ => {
                serde_json::to_writer(out, body)?;
                Ok(0)
            }
        }
    }

    /// `s` is `body`'s statement.
    fn write_statement(
        &mut self,
        body: &EventBody,
        s: &Statement,
        out: &mut Vec<u8>,
    ) -> Result<u64, AuditError> {
        let key = self.key(s);
        let known = self
            .shapes
            .get(&key)
            .is_some_and(|shape| same_shape(&shape.statement, s));
        if !known {
            // A shape is made the second time its key comes: a statement
            // seen once (or a producer that shares nothing) costs a hash.
            if self.seen_once.len() >= SHAPES_MAX {
                self.seen_once.clear();
            }
            if self.seen_once.insert(key) {
                serde_json::to_writer(out, body)?;
                return Ok(0);
            }
            self.last_number += 1;
            let Some(shape) = Shape::of(s, self.last_number)? else {
                serde_json::to_writer(out, body)?;
                return Ok(0);
            };
            if self.shapes.len() >= SHAPES_MAX {
                self.shapes.clear();
            }
            // A different shape with the same hash is replaced.
            self.shapes.insert(key, shape);
        }
        let Some(shape) = self.shapes.get(&key) else {
            serde_json::to_writer(out, body)?;
            return Ok(0);
        };
        out.extend_from_slice(&shape.prefix);
        out.extend_from_slice(b"\"masked\":");
        serde_json::to_writer(&mut *out, &s.masked)?;
        for (name, n) in [
            ("rows_returned", s.rows_returned),
            ("rows_affected", s.rows_affected),
            ("bytes_to_client", s.bytes_to_client),
            ("duration_us", s.duration_us),
        ] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        }
        if let Some(code) = &s.sqlstate {
            out.extend_from_slice(b",\"sqlstate\":");
            serde_json::to_writer(&mut *out, code)?;
        }
        if let Some(lineage) = &s.lineage {
            out.extend_from_slice(b",\"lineage\":");
            serde_json::to_writer(&mut *out, lineage)?;
        }
        out.push(b'}');
        Ok(if s.masked.is_empty() && s.lineage.is_none() {
            shape.number
        } else {
            0
        })
    }

    /// A hash of what makes a shape: the addresses of its shared texts and
    /// lists, the session and principal; [`same_shape`] checks the rest.
    fn key(&self, s: &Statement) -> u64 {
        let mut h = self.hasher.build_hasher();
        Arc::as_ptr(&s.normalized).hash(&mut h);
        Arc::as_ptr(&s.tables_read).hash(&mut h);
        s.session.hash(&mut h);
        s.principal.name.hash(&mut h);
        s.decision.hash(&mut h);
        s.rule.hash(&mut h);
        h.finish()
    }
}

/// The values [`template::split`] cuts from a body [`BodyWriter::write`]
/// wrote from a shape (it returned a number), without parsing it: the
/// session, the four counts and the SQLSTATE, as JSON, in body order.
///
/// [`template::split`]: crate::store::template::split
pub(crate) fn cut_values(s: &Statement, out: &mut String) {
    fn string(out: &mut String, v: &str) {
        // What serde escapes; anything else is written as it is.
        if v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            if let Ok(json) = serde_json::to_string(v) {
                out.push_str(&json);
            }
        } else {
            out.push('"');
            out.push_str(v);
            out.push('"');
        }
    }
    out.clear();
    out.push('[');
    string(out, &s.session);
    for n in [
        s.rows_returned,
        s.rows_affected,
        s.bytes_to_client,
        s.duration_us,
    ] {
        out.push(',');
        out.push_str(itoa::Buffer::new().format(n));
    }
    if let Some(code) = &s.sqlstate {
        out.push(',');
        string(out, code);
    }
    out.push(']');
}

impl Shape {
    /// `None` when serde's output does not end as expected (then every
    /// body of the shape is serialized whole).
    fn of(s: &Statement, number: u64) -> Result<Option<Shape>, AuditError> {
        let statement = Statement {
            masked: Vec::new(),
            rows_returned: 0,
            rows_affected: 0,
            bytes_to_client: 0,
            duration_us: 0,
            sqlstate: None,
            lineage: None,
            ..s.clone()
        };
        let mut json = serde_json::to_vec(&EventBody::Statement(statement.clone()))?;
        if !json.ends_with(EMPTY_TAIL.as_bytes()) {
            return Ok(None);
        }
        json.truncate(json.len() - EMPTY_TAIL.len());
        Ok(Some(Shape {
            statement,
            prefix: json.into_boxed_slice(),
            number,
        }))
    }
}

/// Whether `s` serializes to `shape`'s bytes up to `"masked"`: the shared
/// texts and lists are the same allocations (or equal), and the rest equal
/// (`text` and `approval_id` are `None` in both: bodies with either are
/// not written from shapes).
fn same_shape(shape: &Statement, s: &Statement) -> bool {
    fn same<T: ?Sized + PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
        Arc::ptr_eq(a, b) || a == b
    }
    same(&shape.fingerprint, &s.fingerprint)
        && same(&shape.normalized, &s.normalized)
        && same(&shape.kind, &s.kind)
        && same(&shape.tables_read, &s.tables_read)
        && same(&shape.tables_written, &s.tables_written)
        && same(&shape.columns_read, &s.columns_read)
        && same(&shape.columns_written, &s.columns_written)
        && shape.session == s.session
        && shape.principal == s.principal
        && shape.target == s.target
        && shape.environment == s.environment
        && shape.decision == s.decision
        && shape.rule == s.rule
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, Decision, Lineage, MaskedColumn};

    fn statement() -> Statement {
        Statement {
            session: "0123456789abcdef".into(),
            principal: std::sync::Arc::new(Actor {
                name: "ana \"quoted\" ü".into(),
                kind: "human".into(),
                on_behalf_of: Some("bob".into()),
            }),
            target: "app".into(),
            environment: "production".into(),
            fingerprint: "a1b2".into(),
            normalized: "SELECT \"e\\x\" FROM t WHERE id = $1\n\t-- ✓".into(),
            kind: "select".into(),
            tables_read: vec!["public.t".to_owned()].into(),
            columns_read: vec!["t.e\\x".to_owned(), "t.id".to_owned()].into(),
            ..Statement::default()
        }
    }

    fn serde_bytes(s: &Statement) -> Vec<u8> {
        serde_json::to_vec(&EventBody::Statement(s.clone())).unwrap()
    }

    fn written(w: &mut BodyWriter, s: &Statement) -> Vec<u8> {
        let mut out = Vec::new();
        w.write(&EventBody::Statement(s.clone()), &mut out).unwrap();
        out
    }

    #[test]
    fn statement_bodies_are_what_serde_writes() {
        let mut w = BodyWriter::default();
        let base = statement();
        let mut variants = vec![base.clone()];
        let mut s = base.clone();
        s.rows_returned = 12;
        s.bytes_to_client = u64::MAX;
        s.duration_us = 734;
        variants.push(s.clone());
        s.masked = vec![MaskedColumn {
            column: "t.email".into(),
            detector: "column-name:email".into(),
        }];
        s.sqlstate = Some("57014".into());
        variants.push(s.clone());
        s.lineage = Some(Lineage {
            kind: "insert_select".into(),
            sources: vec!["a".into()],
            destination: "b".into(),
        });
        variants.push(s.clone());
        // Everything before "masked" that can differ makes another shape.
        let mut other = base.clone();
        other.session = "fedcba9876543210".into();
        variants.push(other.clone());
        other.decision = Decision::Deny;
        other.rule = Some("no-drop".into());
        variants.push(other.clone());
        Arc::make_mut(&mut other.principal).on_behalf_of = None;
        variants.push(other.clone());
        other.tables_read = vec!["public.u".to_owned()].into();
        variants.push(other.clone());
        other.normalized = "SELECT 1".into();
        variants.push(other.clone());
        // Bodies serde writes whole.
        let mut text = base.clone();
        text.text = Some("SELECT 'x'".into());
        variants.push(text);
        let mut approved = base.clone();
        approved.approval_id = Some("01J".into());
        variants.push(approved);
        // Twice: the second time from the cached shapes.
        // Three times: serde the first time, then a shape made, then reused.
        for round in 0..3 {
            for (i, v) in variants.iter().enumerate() {
                assert_eq!(
                    String::from_utf8(written(&mut w, v)).unwrap(),
                    String::from_utf8(serde_bytes(v)).unwrap(),
                    "variant {i}, round {round}"
                );
            }
        }
    }

    #[test]
    fn a_changed_list_in_the_same_allocation_is_not_a_stale_shape() {
        // Equal lists in different allocations share a shape; a list that
        // differs never does, whatever the hash says.
        let mut w = BodyWriter::default();
        let a = statement();
        let mut b = a.clone();
        b.columns_read = vec!["t.other".to_owned()].into();
        for _ in 0..3 {
            assert_eq!(written(&mut w, &a), serde_bytes(&a));
            assert_eq!(written(&mut w, &b), serde_bytes(&b));
        }
    }

    #[test]
    fn values_cut_by_hand_are_those_split_finds() {
        let mut w = BodyWriter::default();
        let mut s = statement();
        s.session = "odd \"session\"\n".into();
        let mut seen = Vec::new();
        for i in 0..6u64 {
            s.rows_returned = i * 1000;
            s.duration_us = u64::MAX - i;
            s.sqlstate = (i % 2 == 1).then(|| "40P01".to_owned());
            let mut out = Vec::new();
            let number = w.write(&EventBody::Statement(s.clone()), &mut out).unwrap();
            let body = String::from_utf8(out).unwrap();
            let (mut template, mut values) = (String::new(), String::new());
            assert!(crate::store::template::split(
                &body,
                &mut template,
                &mut values
            ));
            let mut by_hand = String::new();
            cut_values(&s, &mut by_hand);
            assert_eq!(by_hand, values, "{body}");
            if number != 0 {
                seen.push((number, s.sqlstate.is_some(), template));
            }
        }
        // One number (with or without a SQLSTATE), one template.
        assert!(seen.len() >= 3, "{seen:?}");
        for (n, code, t) in &seen {
            for (m, other, u) in &seen {
                if n == m && code == other {
                    assert_eq!(t, u);
                }
            }
        }
        // A masked column or lineage gives no number: they vary per event.
        s.masked = vec![MaskedColumn::default()];
        let mut out = Vec::new();
        assert_eq!(
            w.write(&EventBody::Statement(s.clone()), &mut out).unwrap(),
            0
        );
    }

    #[test]
    fn shapes_that_alternate_keep_their_numbers() {
        // Two principals on one session (a pooled connection): each keeps
        // its shape instead of replacing the other's.
        let mut w = BodyWriter::default();
        let a = statement();
        let mut b = a.clone();
        Arc::make_mut(&mut b.principal).name = "other".into();
        let mut number = |s: &Statement| {
            w.write(&EventBody::Statement(s.clone()), &mut Vec::new())
                .unwrap()
        };
        let first: Vec<u64> = (0..3).flat_map(|_| [number(&a), number(&b)]).collect();
        assert_eq!(first[..2], [0, 0], "made the second time");
        assert!(first[2] != 0 && first[3] != 0 && first[2] != first[3]);
        assert_eq!(first[2..4], first[4..6]);
    }

    #[test]
    fn other_events_are_serde_json() {
        let mut w = BodyWriter::default();
        let e = EventBody::SessionEnd(crate::event::SessionEnd {
            session: "s".into(),
            reason: "client closed".into(),
            ..Default::default()
        });
        let mut out = Vec::new();
        w.write(&e, &mut out).unwrap();
        assert_eq!(out, serde_json::to_vec(&e).unwrap());
    }
}
