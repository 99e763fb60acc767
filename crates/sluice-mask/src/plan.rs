//! Per-column plans for the proxy, and masking of one field in PostgreSQL's
//! text or binary value format.

use std::net::IpAddr;

use crate::classify::{classify_column_in, type_family, TypeFamily};
use crate::config::ColumnRule;
use crate::detect::Finding;
use crate::masker::{Masker, REDACTED};
use crate::report::MaskReport;
use crate::{Kind, Strategy};

/// Well-known PostgreSQL type OIDs used here.
pub mod oid {
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `"char"`
    pub const CHAR: u32 = 18;
    /// `name`
    pub const NAME: u32 = 19;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `json`
    pub const JSON: u32 = 114;
    /// `xml`
    pub const XML: u32 = 142;
    /// `unknown`
    pub const UNKNOWN: u32 = 705;
    /// `inet`
    pub const INET: u32 = 869;
    /// `bpchar` (`character(n)`)
    pub const BPCHAR: u32 = 1042;
    /// `varchar`
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `date[]`
    pub const DATE_ARRAY: u32 = 1182;
    /// `jsonb`
    pub const JSONB: u32 = 3802;
    /// `cstring` (`record_out(c)`, `textout(x)`): binary = text.
    pub const CSTRING: u32 = 2275;
    /// `refcursor`: binary = text.
    pub const REFCURSOR: u32 = 1790;
    /// Arrays of cstring, refcursor, tsvector, tsquery, jsonpath.
    pub const STRUCTURED_ARRAYS: [u32; 5] = [1263, 2201, 3643, 3645, 4073];
    /// `record` (an anonymous row)
    pub const RECORD: u32 = 2249;
    /// `record[]`
    pub const RECORD_ARRAY: u32 = 2287;
    /// `anyarray` (`pg_stats.most_common_vals`, `histogram_bounds`)
    pub const ANYARRAY: u32 = 2277;
    /// `tsvector`
    pub const TSVECTOR: u32 = 3614;
    /// `tsquery`
    pub const TSQUERY: u32 = 3615;
    /// `jsonpath`
    pub const JSONPATH: u32 = 4072;
    /// `text[]`, `varchar[]`, `bpchar[]`, `name[]`, `json[]`, `jsonb[]`, `xml[]`
    pub const TEXT_ARRAYS: [u32; 7] = [1009, 1015, 1014, 1003, 199, 3807, 143];
}

/// A result column as the proxy knows it (from RowDescription and a
/// catalog lookup). `schema`/`table` are `None` for computed expressions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ColumnInfo {
    /// Schema of the origin table, when known.
    pub schema: Option<String>,
    /// Origin table, when known.
    pub table: Option<String>,
    /// The column's name (the field name for computed columns).
    pub column: String,
    /// Type name (`text`, `varchar`, `citext`, `int4`, `_text`, …).
    pub pg_type_name: String,
    /// Type OID from RowDescription.
    pub type_oid: u32,
}

/// How values of a column are encoded, as far as masking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// text, varchar, bpchar, name, "char", citext, unknown: binary = text.
    Text,
    /// json: binary = text.
    Json,
    /// jsonb: binary = version byte 1 + text.
    Jsonb,
    /// xml: binary = text.
    Xml,
    /// Arrays of text-like types and other values whose text form holds
    /// text (records and composite types, `anyarray` as in `pg_stats`,
    /// tsvector, tsquery, jsonpath, hstore): the text format is scanned,
    /// the binary format cannot be masked.
    Structured,
    /// date: binary = days since 2000-01-01 (i32).
    Date,
    /// `date[]`: each element masked as a date.
    DateArray,
    /// bytea: text format `\x…` (or escape format), binary = the bytes.
    /// Scanned after decoding; masked whole, it can only be NULL.
    Bytea,
    /// inet: binary = family, bits, is_cidr, length, address.
    Inet,
    /// Anything else (numbers, timestamps, uuid, …).
    Other,
}

impl ValueType {
    /// From the OID, falling back to the type name for types with dynamic
    /// OIDs (`citext`, domains over text).
    pub fn of(type_oid: u32, type_name: &str) -> ValueType {
        match type_oid {
            oid::TEXT
            | oid::VARCHAR
            | oid::BPCHAR
            | oid::NAME
            | oid::CHAR
            | oid::UNKNOWN
            | oid::CSTRING
            | oid::REFCURSOR => ValueType::Text,
            oid::JSON => ValueType::Json,
            oid::JSONB => ValueType::Jsonb,
            oid::XML => ValueType::Xml,
            oid::DATE => ValueType::Date,
            oid::DATE_ARRAY => ValueType::DateArray,
            oid::BYTEA => ValueType::Bytea,
            oid::INET => ValueType::Inet,
            o if oid::TEXT_ARRAYS.contains(&o) => ValueType::Structured,
            oid::RECORD
            | oid::RECORD_ARRAY
            | oid::ANYARRAY
            | oid::TSVECTOR
            | oid::TSQUERY
            | oid::JSONPATH => ValueType::Structured,
            o if oid::STRUCTURED_ARRAYS.contains(&o) => ValueType::Structured,
            // The catalog lookup names composite types `record` (see
            // sluice-proxy's catalog.rs); hstore has no fixed OID.
            _ if matches!(
                type_name.to_ascii_lowercase().as_str(),
                "record" | "_record" | "hstore" | "_hstore"
            ) =>
            {
                ValueType::Structured
            }
            _ => match type_family(type_name) {
                TypeFamily::Text => ValueType::Text,
                TypeFamily::Json if type_name.to_ascii_lowercase().contains("jsonb") => {
                    ValueType::Jsonb
                }
                TypeFamily::Json => ValueType::Json,
                TypeFamily::Xml => ValueType::Xml,
                TypeFamily::TextArray => ValueType::Structured,
                TypeFamily::Date => ValueType::Date,
                TypeFamily::DateArray
                    if matches!(type_name.to_ascii_lowercase().as_str(), "_date" | "date[]") =>
                {
                    ValueType::DateArray
                }
                TypeFamily::Inet => ValueType::Inet,
                TypeFamily::Bytea => ValueType::Bytea,
                _ => ValueType::Other,
            },
        }
    }

    /// Values of this type are text that value detectors can scan.
    pub fn is_textual(self) -> bool {
        matches!(
            self,
            ValueType::Text
                | ValueType::Json
                | ValueType::Jsonb
                | ValueType::Xml
                | ValueType::Structured
        )
    }

    /// Values the detectors can look into: text, or bytes that may hold text.
    pub fn is_scannable(self) -> bool {
        self.is_textual() || self == ValueType::Bytea
    }
}

/// What the proxy does with each value of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnPlan {
    /// Forward untouched.
    Pass,
    /// Every non-NULL value is sensitive: replace it.
    Mask {
        /// What the column holds.
        kind: Kind,
        /// How to replace it (already adjusted to what the type can hold).
        strategy: Strategy,
        /// How values are encoded.
        value_type: ValueType,
    },
    /// Run the value detectors on each value and replace what they find.
    Scan {
        /// How values are encoded.
        value_type: ValueType,
    },
}

impl ColumnPlan {
    /// Does this plan ever change a value? (A result whose plans are all
    /// `Pass` can be forwarded as the upstream's bytes.)
    pub fn is_pass(&self) -> bool {
        matches!(self, ColumnPlan::Pass)
    }
}

/// Result of masking one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send the original bytes.
    Unchanged,
    /// Send these bytes instead.
    Masked(Vec<u8>),
    /// Send SQL NULL.
    Null,
    /// The value cannot be masked in this format: fail closed (send NULL
    /// or refuse the result), never the original.
    CannotMask,
}

/// What [`Masker::mask_field_into`] did with one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing written: send the original bytes.
    Unchanged,
    /// The masked value was appended to the output.
    Masked,
    /// Nothing written: send SQL NULL.
    Null,
    /// Nothing written: the value cannot be masked in this format (fail
    /// closed: NULL or refuse, never the original).
    CannotMask,
}

/// The outcome of [`Masker::mask_binary`].
pub type BinaryOutcome = Outcome;

/// Only strategies whose output is valid for the type; others become NULL.
fn fit_strategy(vt: ValueType, s: Strategy) -> Strategy {
    match vt {
        ValueType::Text | ValueType::Json | ValueType::Jsonb => s,
        ValueType::Date | ValueType::DateArray | ValueType::Inet => match s {
            Strategy::Partial | Strategy::Token | Strategy::Null => s,
            Strategy::FormatPreserving => Strategy::Token,
            Strategy::Redact => Strategy::Null,
        },
        ValueType::Xml | ValueType::Structured | ValueType::Bytea | ValueType::Other => {
            Strategy::Null
        }
    }
}

impl Masker {
    /// The plan for one result column. Order: masking disabled → `Pass`;
    /// a `[masking.columns]` rule; the name classification (with the table
    /// as context for a bare `name`); otherwise `Scan` for text-like types
    /// (when `scan_unclassified`), `Pass` for the rest. Whole-value masking
    /// of arrays and XML would break their syntax, so those are scanned.
    pub fn plan(&self, col: &ColumnInfo) -> ColumnPlan {
        let rules = &self.rules;
        if !rules.enabled {
            return ColumnPlan::Pass;
        }
        let vt = ValueType::of(col.type_oid, &col.pg_type_name);
        let rule = self.column_rule(col);
        let classified =
            || classify_column_in(col.table.as_deref(), &col.column, &col.pg_type_name);
        let mask = |kind: Kind, strategy: Option<Strategy>| {
            if matches!(vt, ValueType::Structured | ValueType::Xml) {
                // Masking the whole value would break its syntax, so the
                // detectors look inside; what they cannot find (names,
                // addresses, dates of birth) is withheld instead.
                if kind.found_by_detectors() {
                    return ColumnPlan::Scan { value_type: vt };
                }
                return ColumnPlan::Mask {
                    kind,
                    strategy: Strategy::Null,
                    value_type: vt,
                };
            }
            let s = strategy.unwrap_or_else(|| self.strategy_for(kind));
            ColumnPlan::Mask {
                kind,
                strategy: fit_strategy(vt, s),
                value_type: vt,
            }
        };
        match rule {
            Some(ColumnRule::Pass) => ColumnPlan::Pass,
            Some(ColumnRule::Scan) if vt.is_scannable() => ColumnPlan::Scan { value_type: vt },
            Some(ColumnRule::Scan) => ColumnPlan::Pass,
            Some(ColumnRule::Mask { kind, strategy }) => {
                let kind = kind.or_else(classified).unwrap_or(Kind::Secret);
                mask(kind, strategy)
            }
            None => match classified() {
                Some(kind) => mask(kind, None),
                None if rules.scan_unclassified && vt.is_scannable() => {
                    ColumnPlan::Scan { value_type: vt }
                }
                None => ColumnPlan::Pass,
            },
        }
    }

    /// The plan for a computed result column (PostgreSQL names no table
    /// for it) whose value the statement computes from the table columns
    /// `sources` (`(table, column)`, the table possibly `schema.table`).
    /// The column's own plan if it masks; otherwise the plan a source
    /// column would get with the computed column's type, so that
    /// `first_name || ' ' || last_name` is a name and `max(dob)` a date of
    /// birth, while `count(email)` (a number) stays a number. Among
    /// several sensitive sources the most specific kind wins.
    pub fn plan_computed(&self, col: &ColumnInfo, sources: &[(String, String)]) -> ColumnPlan {
        let own = self.plan(col);
        if matches!(own, ColumnPlan::Mask { .. }) {
            return own;
        }
        let mut best: Option<ColumnPlan> = None;
        for (table, column) in sources {
            if column == "*" {
                continue;
            }
            let (schema, table) = match table.rsplit_once('.') {
                Some((s, t)) => (Some(s.to_owned()), t.to_owned()),
                None => (None, table.clone()),
            };
            let source = ColumnInfo {
                schema,
                table: Some(table),
                column: column.clone(),
                pg_type_name: col.pg_type_name.clone(),
                type_oid: col.type_oid,
            };
            let plan = self.plan(&source);
            let ColumnPlan::Mask { kind, .. } = plan else {
                continue;
            };
            let better = match &best {
                Some(ColumnPlan::Mask { kind: held, .. }) => kind.priority() > held.priority(),
                _ => true,
            };
            if better {
                best = Some(plan);
            }
        }
        best.unwrap_or(own)
    }

    fn column_rule(&self, col: &ColumnInfo) -> Option<ColumnRule> {
        let columns = &self.rules.columns;
        if columns.is_empty() {
            return None;
        }
        let table = col.table.as_deref()?;
        let short = format!("{table}.{}", col.column).to_lowercase();
        if let Some(schema) = col.schema.as_deref() {
            let full = format!("{}.{short}", schema.to_lowercase());
            if let Some(r) = columns.get(&full) {
                return Some(*r);
            }
        }
        columns.get(&short).copied()
    }

    /// Mask one non-NULL field in the text format. `findings` is scratch
    /// space reused between calls.
    pub fn mask_text(
        &self,
        plan: &ColumnPlan,
        value: &[u8],
        findings: &mut Vec<Finding>,
        report: &mut MaskReport,
    ) -> Outcome {
        match *plan {
            ColumnPlan::Pass => Outcome::Unchanged,
            ColumnPlan::Scan {
                value_type: ValueType::Bytea,
            } => self.scan_bytea_text(plan, value, findings, report),
            ColumnPlan::Scan { value_type } if value_type.is_textual() => {
                // JSON, and text holding it, is also read by its keys
                let json = matches!(value_type, ValueType::Json | ValueType::Jsonb);
                let masked = if json || crate::looks_like_json(value) {
                    self.mask_json_text(value, findings, report)
                } else {
                    self.mask_bytes_in_text(value, findings, report)
                };
                match masked {
                    Some(v) => {
                        report.values_masked += 1;
                        Outcome::Masked(v)
                    }
                    None => Outcome::Unchanged,
                }
            }
            ColumnPlan::Scan { .. } => Outcome::Unchanged,
            ColumnPlan::Mask {
                kind,
                strategy,
                value_type,
            } => {
                report.record(kind);
                let out = self.mask_whole(kind, strategy, value_type, value);
                match &out {
                    Outcome::Masked(_) => report.values_masked += 1,
                    Outcome::Null => report.values_nulled += 1,
                    Outcome::CannotMask => report.cannot_mask += 1,
                    Outcome::Unchanged => {}
                }
                out
            }
        }
    }

    /// Mask one non-NULL field (text format, or binary when `binary`) and
    /// append the masked value to `out`: what [`Masker::mask_text`] and
    /// [`Masker::mask_binary`] do, without a buffer per value for the common
    /// case of a text column masked whole.
    pub fn mask_field_into(
        &self,
        plan: &ColumnPlan,
        binary: bool,
        value: &[u8],
        findings: &mut Vec<Finding>,
        report: &mut MaskReport,
        out: &mut Vec<u8>,
    ) -> Written {
        // text's binary form is its UTF-8 bytes, as in the text format
        if let ColumnPlan::Mask {
            kind,
            strategy,
            value_type: ValueType::Text,
        } = *plan
        {
            if let Ok(text) = std::str::from_utf8(value) {
                report.record(kind);
                return if self.mask_into(kind, strategy, text, out) {
                    report.values_masked += 1;
                    Written::Masked
                } else {
                    report.values_nulled += 1;
                    Written::Null
                };
            }
        }
        let outcome = if binary {
            self.mask_binary(plan, value, findings, report)
        } else {
            self.mask_text(plan, value, findings, report)
        };
        match outcome {
            Outcome::Unchanged => Written::Unchanged,
            Outcome::Masked(m) => {
                out.extend_from_slice(&m);
                Written::Masked
            }
            Outcome::Null => Written::Null,
            Outcome::CannotMask => Written::CannotMask,
        }
    }

    fn mask_whole(&self, kind: Kind, strategy: Strategy, vt: ValueType, value: &[u8]) -> Outcome {
        if strategy == Strategy::Null {
            return Outcome::Null;
        }
        let text = String::from_utf8_lossy(value);
        match vt {
            ValueType::Text => match self.mask_with(kind, strategy, &text) {
                Some(m) => Outcome::Masked(m.into_bytes()),
                None => Outcome::Null,
            },
            // a whole JSON value becomes a JSON string: still valid JSON
            ValueType::Json | ValueType::Jsonb => match self.mask_with(kind, strategy, &text) {
                Some(m) => Outcome::Masked(json_string(&m).into_bytes()),
                None => Outcome::Null,
            },
            ValueType::Date => match self.mask_date_text(strategy, &text) {
                Some(d) => Outcome::Masked(d.into_bytes()),
                None => Outcome::Null,
            },
            ValueType::DateArray => match self.mask_date_array_text(strategy, &text) {
                Some(a) => Outcome::Masked(a.into_bytes()),
                None => Outcome::Null,
            },
            ValueType::Inet => {
                if text.trim().parse::<IpAddr>().is_err() && !text.contains('/') {
                    return Outcome::Null;
                }
                match self.mask_with(Kind::IpAddress, strategy, &text) {
                    Some(m)
                        if m.split('/')
                            .next()
                            .is_some_and(|a| a.parse::<IpAddr>().is_ok()) =>
                    {
                        Outcome::Masked(m.into_bytes())
                    }
                    _ => Outcome::Null,
                }
            }
            ValueType::Xml | ValueType::Structured | ValueType::Bytea | ValueType::Other => {
                Outcome::Null
            }
        }
    }

    /// A text-format bytea holding UTF-8 text, decoded and scanned like
    /// text; what is found is masked and the whole value re-encoded in hex.
    /// Binary data is sent as it is (see `bytea::decode_text_if_utf8`).
    fn scan_bytea_text(
        &self,
        plan: &ColumnPlan,
        value: &[u8],
        findings: &mut Vec<Finding>,
        report: &mut MaskReport,
    ) -> Outcome {
        let mut bytes = Vec::new();
        match crate::bytea::decode_text_if_utf8(value, &mut bytes) {
            Some(true) => {}
            Some(false) => return Outcome::Unchanged,
            None => return self.cannot(plan, report),
        }
        match self.mask_bytes_in_text(&bytes, findings, report) {
            Some(m) => {
                report.values_masked += 1;
                let mut out = Vec::with_capacity(2 + 2 * m.len());
                crate::bytea::encode_hex(&m, &mut out);
                Outcome::Masked(out)
            }
            None => Outcome::Unchanged,
        }
    }

    /// A `date[]` in text form (`{1985-03-14,NULL}`, also with dimensions
    /// `[0:1]={…}` or nested), each date masked as a `date` column's is.
    /// `None` (NULL) when an element is not an ISO date or infinity.
    fn mask_date_array_text(&self, strategy: Strategy, text: &str) -> Option<String> {
        let b = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        if b.first() == Some(&b'[') {
            // dimension decoration: copied up to and including `=`
            let eq = text.find('=')?;
            out.push_str(&text[..=eq]);
            i = eq + 1;
        }
        while i < b.len() {
            match b[i] {
                b'{' | b'}' | b',' | b' ' => {
                    out.push(char::from(b[i]));
                    i += 1;
                }
                _ => {
                    let (elem, quoted, next) = if b[i] == b'"' {
                        let end = i + 1 + text[i + 1..].find('"')?;
                        (&text[i + 1..end], true, end + 1)
                    } else {
                        let end = text[i..].find([',', '}']).map_or(text.len(), |e| i + e);
                        (&text[i..end], false, end)
                    };
                    if (!quoted && elem.eq_ignore_ascii_case("NULL"))
                        || elem == "infinity"
                        || elem == "-infinity"
                    {
                        out.push_str(&text[i..next]);
                    } else {
                        out.push_str(&self.mask_date_text(strategy, elem)?);
                    }
                    i = next;
                }
            }
        }
        Some(out)
    }

    /// Dates in ISO text (`DateStyle` ISO, PostgreSQL's default): partial
    /// keeps the year (`YYYY-01-01`), token is a keyed date. Other styles
    /// give NULL.
    fn mask_date_text(&self, strategy: Strategy, text: &str) -> Option<String> {
        let (y, m, d) = parse_iso_date(text.trim())?;
        let (y2, m2, d2) = self.mask_ymd(strategy, (y, m, d))?;
        Some(format!("{y2:04}-{m2:02}-{d2:02}"))
    }

    /// Partial keeps the year, token is a keyed date; `None` for the others.
    fn mask_ymd(&self, strategy: Strategy, (y, m, d): (i32, u32, u32)) -> Option<(i32, u32, u32)> {
        match strategy {
            Strategy::Partial => Some((y, 1, 1)),
            Strategy::Token | Strategy::FormatPreserving => {
                Some(self.date_token_for(&format!("{y:04}-{m:02}-{d:02}")))
            }
            Strategy::Redact | Strategy::Null => None,
        }
    }

    /// A binary `date` (days since 2000-01-01) masked; infinity is kept
    /// (not a birth date). `None`: NULL.
    fn mask_days(&self, strategy: Strategy, days: i32) -> Option<i32> {
        if days == i32::MAX || days == i32::MIN {
            return Some(days);
        }
        let ymd = civil_from_days(i64::from(days) + DAYS_1970_TO_2000);
        let (y, m, d) = self.mask_ymd(strategy, ymd)?;
        i32::try_from(days_from_civil(y, m, d) - DAYS_1970_TO_2000).ok()
    }

    /// Mask one non-NULL field in the binary format. Text-like types are
    /// masked like their text (jsonb keeps its version byte); `date` and
    /// `inet` are decoded and re-encoded; anything else under a masking plan
    /// is NULL for a `null` strategy and [`Outcome::CannotMask`] otherwise,
    /// so the caller can fail closed.
    pub fn mask_binary(
        &self,
        plan: &ColumnPlan,
        value: &[u8],
        findings: &mut Vec<Finding>,
        report: &mut MaskReport,
    ) -> BinaryOutcome {
        let vt = match *plan {
            ColumnPlan::Pass => return Outcome::Unchanged,
            ColumnPlan::Scan { value_type } | ColumnPlan::Mask { value_type, .. } => value_type,
        };
        match vt {
            ValueType::Text | ValueType::Json | ValueType::Xml => {
                self.mask_text(plan, value, findings, report)
            }
            ValueType::Jsonb => match value.split_first() {
                Some((1, body)) => match self.mask_text(plan, body, findings, report) {
                    Outcome::Masked(m) => {
                        let mut v = Vec::with_capacity(m.len() + 1);
                        v.push(1);
                        v.extend_from_slice(&m);
                        Outcome::Masked(v)
                    }
                    other => other,
                },
                _ => self.cannot(plan, report),
            },
            ValueType::Date => match *plan {
                ColumnPlan::Mask { kind, strategy, .. } => {
                    report.record(kind);
                    self.mask_date_binary(strategy, value, report)
                }
                _ => Outcome::Unchanged,
            },
            ValueType::Inet => match *plan {
                ColumnPlan::Mask { kind, strategy, .. } => {
                    report.record(kind);
                    self.mask_inet_binary(strategy, value, report)
                }
                _ => Outcome::Unchanged,
            },
            ValueType::DateArray => match *plan {
                ColumnPlan::Mask {
                    kind,
                    strategy: strategy @ (Strategy::Partial | Strategy::Token),
                    ..
                } => {
                    report.record(kind);
                    match self.mask_binary_date_array(strategy, value) {
                        Some(v) => {
                            report.values_masked += 1;
                            Outcome::Masked(v)
                        }
                        None => self.cannot(plan, report),
                    }
                }
                ColumnPlan::Mask { kind, .. } => {
                    report.record(kind);
                    report.values_nulled += 1;
                    Outcome::Null
                }
                _ => Outcome::Unchanged,
            },
            // a bytea's binary form is its bytes: scanned when they are text
            ValueType::Bytea if matches!(plan, ColumnPlan::Scan { .. }) => {
                if std::str::from_utf8(value).is_err() {
                    return Outcome::Unchanged;
                }
                match self.mask_bytes_in_text(value, findings, report) {
                    Some(m) => {
                        report.values_masked += 1;
                        Outcome::Masked(m)
                    }
                    None => Outcome::Unchanged,
                }
            }
            ValueType::Structured if matches!(plan, ColumnPlan::Scan { .. }) => {
                match self.mask_binary_text_array(value, findings, report) {
                    Some(outcome) => outcome,
                    None => self.cannot(plan, report),
                }
            }
            ValueType::Structured | ValueType::Bytea | ValueType::Other => match *plan {
                ColumnPlan::Mask {
                    kind,
                    strategy: Strategy::Null,
                    ..
                } => {
                    report.record(kind);
                    report.values_nulled += 1;
                    Outcome::Null
                }
                _ => self.cannot(plan, report),
            },
        }
    }

    /// Scan each element of a binary array of a text-like type (PostgreSQL's
    /// array send format: ndim, has-null flag, element type, dimensions,
    /// then length-prefixed elements) and rebuild it with the findings
    /// masked. `None` when the array is not one this can read.
    fn mask_binary_text_array(
        &self,
        value: &[u8],
        findings: &mut Vec<Finding>,
        report: &mut MaskReport,
    ) -> Option<Outcome> {
        let i32_at = |at: usize| -> Option<i32> {
            value
                .get(at..at + 4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let ndim = usize::try_from(i32_at(0)?).ok()?;
        if ndim > 6 {
            return None;
        }
        let elem_type = i32_at(8)? as u32;
        let jsonb = elem_type == oid::JSONB;
        let textual = matches!(
            elem_type,
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::JSON | oid::XML | oid::JSONB
        );
        if !textual {
            return None;
        }
        let header = 12 + 8 * ndim;
        let mut count: usize = 1;
        for d in 0..ndim {
            let n = usize::try_from(i32_at(12 + 8 * d)?).ok()?;
            count = count.checked_mul(n)?;
        }
        if ndim == 0 {
            count = 0;
        }
        let mut pos = header;
        let mut out: Option<Vec<u8>> = None;
        for _ in 0..count {
            let len = i32_at(pos)?;
            let start = pos + 4;
            if len < 0 {
                if let Some(o) = &mut out {
                    o.extend_from_slice(&(-1i32).to_be_bytes());
                }
                pos = start;
                continue;
            }
            let end = start.checked_add(len as usize)?;
            let elem = value.get(start..end)?;
            let (prefix, text) = if jsonb {
                match elem.split_first() {
                    Some((1, body)) => (&elem[..1], body),
                    _ => return None,
                }
            } else {
                (&elem[..0], elem)
            };
            let masked = self.mask_bytes_in_text(text, findings, report);
            if masked.is_some() && out.is_none() {
                out = Some(value[..pos].to_vec());
            }
            if let Some(o) = &mut out {
                match masked {
                    Some(m) => {
                        let n = i32::try_from(prefix.len() + m.len()).ok()?;
                        o.extend_from_slice(&n.to_be_bytes());
                        o.extend_from_slice(prefix);
                        o.extend_from_slice(&m);
                    }
                    None => o.extend_from_slice(&value[pos..end]),
                }
            }
            pos = end;
        }
        if pos != value.len() {
            return None;
        }
        Some(match out {
            Some(o) => {
                report.values_masked += 1;
                Outcome::Masked(o)
            }
            None => Outcome::Unchanged,
        })
    }

    /// A binary `date[]` (array header, then 4-byte elements or -1 for
    /// NULL) with each date masked in place. `None`: not an array of dates
    /// this can read.
    fn mask_binary_date_array(&self, strategy: Strategy, value: &[u8]) -> Option<Vec<u8>> {
        let i32_at = |at: usize| -> Option<i32> {
            value
                .get(at..at + 4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let ndim = usize::try_from(i32_at(0)?).ok()?;
        if ndim > 6 || i32_at(8)? as u32 != oid::DATE {
            return None;
        }
        let mut count: usize = usize::from(ndim > 0);
        for d in 0..ndim {
            count = count.checked_mul(usize::try_from(i32_at(12 + 8 * d)?).ok()?)?;
        }
        let mut out = value.to_vec();
        let mut pos = 12 + 8 * ndim;
        for _ in 0..count {
            match i32_at(pos)? {
                -1 => pos += 4,
                4 => {
                    let masked = self.mask_days(strategy, i32_at(pos + 4)?)?;
                    out.get_mut(pos + 4..pos + 8)?
                        .copy_from_slice(&masked.to_be_bytes());
                    pos += 8;
                }
                _ => return None,
            }
        }
        (pos == value.len()).then_some(out)
    }

    fn cannot(&self, plan: &ColumnPlan, report: &mut MaskReport) -> Outcome {
        if let ColumnPlan::Mask { kind, .. } = plan {
            report.record(*kind);
        }
        report.cannot_mask += 1;
        Outcome::CannotMask
    }

    fn mask_date_binary(
        &self,
        strategy: Strategy,
        value: &[u8],
        report: &mut MaskReport,
    ) -> Outcome {
        let Ok(raw) = <[u8; 4]>::try_from(value) else {
            report.cannot_mask += 1;
            return Outcome::CannotMask;
        };
        let days = i32::from_be_bytes(raw);
        // ±infinity are i32::MAX/MIN: not a birth date, nothing to hide
        if days == i32::MAX || days == i32::MIN {
            return Outcome::Unchanged;
        }
        match self.mask_days(strategy, days) {
            Some(v) => {
                report.values_masked += 1;
                Outcome::Masked(v.to_be_bytes().to_vec())
            }
            None => {
                report.values_nulled += 1;
                Outcome::Null
            }
        }
    }

    fn mask_inet_binary(
        &self,
        strategy: Strategy,
        value: &[u8],
        report: &mut MaskReport,
    ) -> Outcome {
        let Some((addr, bits, is_cidr)) = decode_inet(value) else {
            report.cannot_mask += 1;
            return Outcome::CannotMask;
        };
        if is_cidr != 0 {
            report.values_nulled += 1;
            return Outcome::Null;
        }
        let masked = self
            .mask_with(Kind::IpAddress, strategy, &addr.to_string())
            .and_then(|m| m.parse::<IpAddr>().ok());
        match masked {
            Some(ip) => {
                report.values_masked += 1;
                Outcome::Masked(encode_inet(ip, bits))
            }
            None => {
                report.values_nulled += 1;
                Outcome::Null
            }
        }
    }
}

/// A JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{REDACTED}\""))
}

fn parse_iso_date(t: &str) -> Option<(i32, u32, u32)> {
    let b = t.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y = t[..4].parse().ok()?;
    let m = t[5..7].parse().ok()?;
    let d = t[8..10].parse().ok()?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

const DAYS_1970_TO_2000: i64 = 10957;

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y as i32, m as u32, d as u32)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// PostgreSQL inet binary: family (2 = v4, 3 = v6), bits, is_cidr, length, bytes.
fn decode_inet(v: &[u8]) -> Option<(IpAddr, u8, u8)> {
    let (&[family, bits, is_cidr, len], rest) = v.split_first_chunk::<4>()?;
    match (family, len, rest.len()) {
        (2, 4, 4) => {
            let a: [u8; 4] = rest.try_into().ok()?;
            Some((IpAddr::from(a), bits, is_cidr))
        }
        (3, 16, 16) => {
            let a: [u8; 16] = rest.try_into().ok()?;
            Some((IpAddr::from(a), bits, is_cidr))
        }
        _ => None,
    }
}

fn encode_inet(ip: IpAddr, bits: u8) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => {
            let mut v = vec![2, bits.min(32), 0, 4];
            v.extend_from_slice(&a.octets());
            v
        }
        IpAddr::V6(a) => {
            let mut v = vec![3, bits.min(128), 0, 16];
            v.extend_from_slice(&a.octets());
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in [-800_000i64, -1, 0, 10957, 11016, 20000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(DAYS_1970_TO_2000), (2000, 1, 1));
    }

    fn text_array(elems: &[Option<&str>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&1i32.to_be_bytes());
        v.extend_from_slice(&(elems.iter().any(Option::is_none) as i32).to_be_bytes());
        v.extend_from_slice(&oid::TEXT.to_be_bytes());
        v.extend_from_slice(&(elems.len() as i32).to_be_bytes());
        v.extend_from_slice(&1i32.to_be_bytes());
        for e in elems {
            match e {
                Some(t) => {
                    v.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    v.extend_from_slice(t.as_bytes());
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v
    }

    #[test]
    fn binary_text_arrays_are_scanned_element_by_element() {
        let m = Masker::new(&[1u8; 32]);
        let plan = ColumnPlan::Scan {
            value_type: ValueType::Structured,
        };
        let (mut f, mut r) = (Vec::new(), MaskReport::default());
        let plain = text_array(&[Some("x"), None, Some("z")]);
        assert_eq!(
            m.mask_binary(&plan, &plain, &mut f, &mut r),
            Outcome::Unchanged
        );
        let secret = text_array(&[Some("a"), Some("mail carol@example.net"), None]);
        let Outcome::Masked(out) = m.mask_binary(&plan, &secret, &mut f, &mut r) else {
            panic!("not masked");
        };
        assert!(!String::from_utf8_lossy(&out).contains("carol@"));
        assert_eq!(&out[..20], &secret[..20], "header kept");
        // Truncated: cannot be read, so it is not sent.
        assert_eq!(
            m.mask_binary(&plan, &secret[..secret.len() - 3], &mut f, &mut r),
            Outcome::CannotMask
        );
    }
}
