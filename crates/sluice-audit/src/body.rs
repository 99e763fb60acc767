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
}

/// Writes event bodies; one per writer thread.
#[derive(Default)]
pub struct BodyWriter {
    shapes: HashMap<u64, Shape>,
    /// Keys seen once, without a shape yet.
    seen_once: std::collections::HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
}

impl BodyWriter {
    /// Append the JSON of `body` to `out`.
    pub fn write(&mut self, body: &EventBody, out: &mut Vec<u8>) -> Result<(), AuditError> {
        match body {
            EventBody::Statement(s) if s.text.is_none() && s.approval_id.is_none() => {
                self.write_statement(body, s, out)
            }
            _ => Ok(serde_json::to_writer(out, body)?),
        }
    }

    /// `s` is `body`'s statement.
    fn write_statement(
        &mut self,
        body: &EventBody,
        s: &Statement,
        out: &mut Vec<u8>,
    ) -> Result<(), AuditError> {
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
                return Ok(serde_json::to_writer(out, body)?);
            }
            let Some(shape) = Shape::of(s)? else {
                return Ok(serde_json::to_writer(out, body)?);
            };
            if self.shapes.len() >= SHAPES_MAX {
                self.shapes.clear();
            }
            // A different shape with the same hash is replaced.
            self.shapes.insert(key, shape);
        }
        let Some(shape) = self.shapes.get(&key) else {
            return Ok(serde_json::to_writer(out, body)?);
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
        Ok(())
    }

    /// A hash of what makes a shape: the addresses of its shared texts and
    /// lists and the session; [`same_shape`] checks the rest.
    fn key(&self, s: &Statement) -> u64 {
        let mut h = self.hasher.build_hasher();
        Arc::as_ptr(&s.normalized).hash(&mut h);
        Arc::as_ptr(&s.tables_read).hash(&mut h);
        s.session.hash(&mut h);
        s.decision.hash(&mut h);
        s.rule.hash(&mut h);
        h.finish()
    }
}

impl Shape {
    /// `None` when serde's output does not end as expected (then every
    /// body of the shape is serialized whole).
    fn of(s: &Statement) -> Result<Option<Shape>, AuditError> {
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
        }))
    }
}

/// Whether `s` serializes to `shape`'s bytes up to `"masked"`: the shared
/// texts and lists are the same allocations (or equal), and the rest equal.
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
        && shape.text == s.text
        && shape.approval_id == s.approval_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Actor, Decision, Lineage, MaskedColumn};

    fn statement() -> Statement {
        Statement {
            session: "0123456789abcdef".into(),
            principal: Actor {
                name: "ana \"quoted\" ü".into(),
                kind: "human".into(),
                on_behalf_of: Some("bob".into()),
            },
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
        other.principal.on_behalf_of = None;
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
