//! A whole row in its record form (`SELECT c FROM customers c`, a
//! composite column): `(1,"Alice Smith",alice@example.com,)`. Its fields
//! are planned like the table's columns (by their attribute names, which
//! the catalog supplies), so a name in it is masked as the `full_name`
//! column would be, and the rest stays readable.

use crate::detect::Finding;
use crate::plan::{ColumnPlan, Outcome};
use crate::report::MaskReport;
use crate::Masker;

/// The plans of a composite type's fields, in attribute order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPlan {
    /// One plan per attribute.
    pub fields: Vec<ColumnPlan>,
}

impl RecordPlan {
    /// Does any field need more than the detectors' scan of the whole text?
    pub fn masks(&self) -> bool {
        self.fields
            .iter()
            .any(|p| matches!(p, ColumnPlan::Mask { .. }))
    }
}

/// One field of a record literal: its raw bytes and, unless NULL, its
/// unescaped content.
fn next_field(b: &[u8], mut i: usize, content: &mut Vec<u8>) -> Option<(usize, bool)> {
    content.clear();
    if b.get(i) == Some(&b'"') {
        i += 1;
        loop {
            match *b.get(i)? {
                b'"' if b.get(i + 1) == Some(&b'"') => {
                    content.push(b'"');
                    i += 2;
                }
                b'"' => return Some((i + 1, false)),
                b'\\' => {
                    content.push(*b.get(i + 1)?);
                    i += 2;
                }
                c => {
                    content.push(c);
                    i += 1;
                }
            }
        }
    }
    let start = i;
    while !matches!(b.get(i), Some(b',') | Some(b')') | None) {
        i += 1;
    }
    content.extend_from_slice(&b[start..i]);
    // an empty unquoted field is NULL
    Some((i, i == start))
}

fn push_quoted(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    for &c in v {
        if c == b'"' || c == b'\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push(b'"');
}

impl Masker {
    /// Mask the fields of a record literal (text format) by `plan`.
    /// [`Outcome::Null`] for text that is not a record of that many
    /// fields: it is withheld rather than sent unread.
    pub fn mask_record_text(
        &self,
        plan: &RecordPlan,
        value: &[u8],
        findings: &mut Vec<Finding>,
        report: &mut MaskReport,
    ) -> Outcome {
        if value.first() != Some(&b'(') {
            return Outcome::Null;
        }
        let mut out = Vec::with_capacity(value.len() + 16);
        out.push(b'(');
        let mut content = Vec::new();
        let mut i = 1;
        let mut changed = false;
        for (k, field) in plan.fields.iter().enumerate() {
            if k > 0 {
                if value.get(i) != Some(&b',') {
                    return Outcome::Null;
                }
                out.push(b',');
                i += 1;
            }
            let Some((end, null)) = next_field(value, i, &mut content) else {
                return Outcome::Null;
            };
            let raw = &value[i..end];
            i = end;
            if null || field.is_pass() {
                out.extend_from_slice(raw);
                continue;
            }
            match self.mask_text(field, &content, findings, report) {
                Outcome::Unchanged => out.extend_from_slice(raw),
                Outcome::Masked(m) => {
                    push_quoted(&mut out, &m);
                    changed = true;
                }
                // NULL in a record is an empty field
                Outcome::Null | Outcome::CannotMask => changed = true,
            }
        }
        if value.get(i..) != Some(b")") {
            return Outcome::Null;
        }
        out.push(b')');
        if changed {
            Outcome::Masked(out)
        } else {
            Outcome::Unchanged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, Strategy, ValueType};

    fn name() -> ColumnPlan {
        ColumnPlan::Mask {
            kind: Kind::Name,
            strategy: Strategy::Token,
            value_type: ValueType::Text,
        }
    }

    fn masked(plan: &RecordPlan, v: &str) -> Option<String> {
        let m = Masker::new(&[3; 32]);
        match m.mask_record_text(
            plan,
            v.as_bytes(),
            &mut Vec::new(),
            &mut MaskReport::default(),
        ) {
            Outcome::Masked(o) => Some(String::from_utf8(o).unwrap()),
            Outcome::Unchanged => Some(v.to_owned()),
            _ => None,
        }
    }

    #[test]
    fn named_fields_are_masked_and_the_rest_kept() {
        let scan = ColumnPlan::Scan {
            value_type: ValueType::Text,
        };
        let plan = RecordPlan {
            fields: vec![ColumnPlan::Pass, name(), scan, ColumnPlan::Pass, name()],
        };
        let out = masked(&plan, r#"(1,"Alice ""Al"" Smith",alice@example.com,gold,)"#).unwrap();
        assert!(out.starts_with(r#"(1,"Name_"#), "{out}");
        assert!(!out.contains("Alice") && !out.contains("alice@"), "{out}");
        assert!(out.ends_with(",gold,)"), "NULL stays NULL: {out}");
        // nothing to mask: the same text
        assert_eq!(masked(&plan, "(1,,,plain,)").unwrap(), "(1,,,plain,)");
        // not a record of five fields: withheld
        for bad in ["(1,2)", "1,2,3,4,5", r#"(1,"open,3,4,5)"#, "(1,2,3,4,5,6)"] {
            assert_eq!(masked(&plan, bad), None, "{bad}");
        }
    }
}
