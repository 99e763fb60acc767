//! Masking in flight: from a RowDescription to a plan per column, and from
//! a DataRow to the row the client may see.
//!
//! A result whose plan masks nothing is forwarded as the upstream's bytes;
//! only rows of a result with masked or scanned columns are decoded, and
//! then only those fields are touched. A value that cannot be masked is
//! sent as NULL, never as it was. Rows too large to hold are streamed with
//! length-preserving redaction (see [`StreamingRow`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice_mask::{
    ColumnInfo, ColumnPlan, Finding, MaskReport, Masker, Outcome, RecordPlan, ValueType, Written,
};
use sluice_sql::OutputColumn;
use sluice_wire::messages::row_description;

use crate::audit::ResultSources;
use crate::catalog::{Catalog, Missing};
use crate::flight::ResultSourcesAt;
use sluice_policy::ColumnUnmask;

/// Rows up to this size are held whole to be masked; larger ones stream.
pub const HOLD_ROW_LIMIT: usize = 16 << 20;
/// Bytes of a streamed value kept back so a finding split across reads is
/// still seen whole.
const SCAN_WINDOW: usize = 64 << 10;
/// Plans remembered per session, by RowDescription.
const PLAN_CACHE: usize = 512;

/// What to do with each column of one result.
#[derive(Debug)]
pub struct ResultPlan {
    /// One plan per column.
    pub columns: Vec<ColumnPlan>,
    /// Format per column (0 text, 1 binary).
    pub formats: Vec<i16>,
    /// `schema.table.column` (or the field name) per column, for reports.
    pub labels: Vec<String>,
    /// False when every column passes: rows are forwarded untouched.
    pub active: bool,
    /// Per column: for a whole row in record form with fields to mask by
    /// name, their plans (text format; the column's own plan scans it).
    pub records: Vec<Option<Arc<RecordPlan>>>,
    /// Per column: for JSON made of a table's whole rows (`row_to_json(c)`),
    /// that table: the context of its top-level keys.
    pub json_roots: Vec<Option<Arc<str>>>,
    /// Per column: for a computed field, the table columns it is computed
    /// from (`table.column` as the statement wrote them), noted as masked
    /// with it, less those another field of the result shows as they are.
    pub sources: Vec<Vec<String>>,
}

impl ResultPlan {
    /// Note in `report` that column `i` had a value masked.
    fn note(&self, i: usize, report: &mut MaskReport) {
        note_masked(&self.labels, &self.sources, i, report);
    }
}

/// Note label `i` (and the sources of a computed field) as masked.
fn note_masked(labels: &[String], sources: &[Vec<String>], i: usize, report: &mut MaskReport) {
    if let Some(label) = labels.get(i) {
        report.note_column(label);
    }
    for source in sources.get(i).into_iter().flatten() {
        report.note_column(source);
    }
}

/// The unqualified table of a name as written (`public.t` → `t`).
fn bare_table(table: &str) -> &str {
    table.rsplit('.').next().unwrap_or(table)
}

/// The plan for the columns of a RowDescription (`body` without header):
/// `Err` lists what the catalog must look up first; `Ok(None)` for a
/// RowDescription that cannot be read.
/// Columns `unmask` lets the session see are passed as they are.
pub fn plan_columns(
    masker: &Masker,
    catalog: &Catalog,
    body: &[u8],
    sources: Option<&[OutputColumn]>,
    unmask: Option<&ColumnUnmask>,
) -> Result<Option<ResultPlan>, Missing> {
    let Ok(fields) = row_description::decode(body) else {
        return Ok(None);
    };
    let mut missing = Missing::default();
    for f in &fields {
        if f.table_oid != 0 && f.column > 0 && catalog.column(f.table_oid, f.column).is_none() {
            missing.columns.push((f.table_oid, f.column));
        }
        if catalog.type_name(f.type_oid).is_none() {
            missing.types.push(f.type_oid);
        }
    }
    if !missing.is_empty() {
        missing.columns.sort_unstable();
        missing.columns.dedup();
        missing.types.sort_unstable();
        missing.types.dedup();
        return Err(missing);
    }
    let mut plan = ResultPlan {
        columns: Vec::with_capacity(fields.len()),
        formats: Vec::with_capacity(fields.len()),
        labels: Vec::with_capacity(fields.len()),
        active: false,
        records: Vec::with_capacity(fields.len()),
        json_roots: Vec::with_capacity(fields.len()),
        sources: Vec::with_capacity(fields.len()),
    };
    let count = fields.len();
    // Per field: what it is computed from; the (table, column) pairs a
    // field that passes shows as they are.
    let mut computed_sources: Vec<Vec<(String, String)>> = Vec::with_capacity(count);
    let mut shown: HashSet<(String, String)> = HashSet::new();
    for (i, f) in fields.into_iter().enumerate() {
        let origin = (f.table_oid != 0 && f.column > 0)
            .then(|| catalog.column(f.table_oid, f.column))
            .flatten()
            .filter(|o| !o.table.is_empty());
        let label = match &origin {
            Some(o) => format!("{}.{}.{}", o.schema, o.table, o.column),
            None => f.name.clone(),
        };
        let unmasked = match (unmask, &origin) {
            (Some(u), Some(o)) => u.column(&o.schema, &o.table, &o.column),
            (Some(u), None) => u.everything_else(),
            (None, _) => false,
        };
        let computed = match (&origin, sources) {
            (None, Some(outputs)) => Some(computed_from(outputs, count, i)),
            _ => None,
        };
        if unmasked {
            plan.columns.push(ColumnPlan::Pass);
            plan.formats.push(f.format);
            plan.labels.push(label);
            plan.records.push(None);
            plan.json_roots.push(None);
            note_shown(&mut shown, origin.as_ref(), computed.as_deref());
            computed_sources.push(Vec::new());
            continue;
        }
        let type_name = catalog
            .type_name(f.type_oid)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let info = match &origin {
            Some(o) => ColumnInfo {
                schema: Some(o.schema.clone()),
                table: Some(o.table.clone()),
                column: o.column.clone(),
                pg_type_name: type_name,
                type_oid: f.type_oid,
            },
            None => ColumnInfo {
                schema: None,
                table: None,
                column: f.name.clone(),
                pg_type_name: type_name,
                type_oid: f.type_oid,
            },
        };
        let mut column = match &computed {
            // A computed column: judged also by what it is computed from.
            Some(from) => masker.plan_computed(&info, from),
            None => masker.plan(&info),
        };
        plan.json_roots
            .push(computed.as_deref().and_then(whole_row_table));
        let record = record_plan(masker, catalog, f.type_oid);
        if let (Some(r), ColumnPlan::Scan { value_type }) = (&record, column) {
            if info.pg_type_name != "record" {
                // an array of rows: its fields cannot be told apart in
                // the text, so what the detectors cannot find withholds it
                let hidden = r.fields.iter().find_map(|p| match p {
                    ColumnPlan::Mask { kind, .. } if !kind.found_by_detectors() => Some(*kind),
                    _ => None,
                });
                if let Some(kind) = hidden {
                    column = ColumnPlan::Mask {
                        kind,
                        strategy: sluice_mask::Strategy::Null,
                        value_type,
                    };
                }
            }
        }
        let record = record.filter(|_| info.pg_type_name == "record");
        if record.is_some() && column.is_pass() {
            // masked by its fields' names even when unnamed text is not scanned
            column = ColumnPlan::Scan {
                value_type: ValueType::Structured,
            };
        }
        plan.records.push(record);
        plan.active |= !column.is_pass();
        plan.labels.push(label);
        if column.is_pass() {
            note_shown(&mut shown, origin.as_ref(), computed.as_deref());
        }
        plan.columns.push(column);
        plan.formats.push(f.format);
        computed_sources.push(computed.unwrap_or_default());
    }
    plan.sources = computed_sources
        .into_iter()
        .map(|from| {
            from.into_iter()
                .filter(|(t, c)| {
                    c != "*" && !shown.contains(&(bare_table(t).to_owned(), c.clone()))
                })
                .map(|(t, c)| format!("{t}.{c}"))
                .collect()
        })
        .collect();
    Ok(Some(plan))
}

/// Adds what a field that passes untouched shows: its table column, or
/// the columns it is computed from.
fn note_shown(
    shown: &mut HashSet<(String, String)>,
    origin: Option<&Arc<crate::catalog::ColumnOrigin>>,
    computed: Option<&[(String, String)]>,
) {
    if let Some(o) = origin {
        shown.insert((o.table.clone(), o.column.clone()));
    }
    for (t, c) in computed.into_iter().flatten() {
        shown.insert((bare_table(t).to_owned(), c.clone()));
    }
}

/// The one table whose whole rows a computed value is made of
/// (`row_to_json(c)`, `json_agg(c)`), without its schema.
fn whole_row_table(from: &[(String, String)]) -> Option<Arc<str>> {
    let mut tables = from.iter().filter(|(_, c)| c == "*").map(|(t, _)| t);
    let table = tables.next()?;
    if tables.any(|t| t != table) {
        return None;
    }
    let short = table.rsplit_once('.').map_or(table.as_str(), |(_, t)| t);
    Some(Arc::from(short))
}

/// The plans of the fields of composite type `type_oid` (a table's row, or
/// an array of them) when some field is masked by its name.
fn record_plan(masker: &Masker, catalog: &Catalog, type_oid: u32) -> Option<Arc<RecordPlan>> {
    let attributes = catalog.composite(type_oid)?;
    let plan = RecordPlan {
        fields: attributes
            .iter()
            .map(|a| {
                masker.plan(&ColumnInfo {
                    schema: None,
                    table: Some(a.table.clone()),
                    column: a.name.clone(),
                    pg_type_name: a.type_name.clone(),
                    type_oid: 0,
                })
            })
            .collect(),
    };
    plan.masks().then(|| Arc::new(plan))
}

/// The table columns result field `i` (of `fields`) is computed from,
/// given the statement's result columns. Fields line up with the
/// statement's columns one to one, except that a `*` over a table stands
/// for as many fields as the table has: with one such `*` the fields still
/// line up around it. When they cannot be lined up (several, or a count
/// that does not fit), every column's sources count for the field.
fn computed_from(outputs: &[OutputColumn], fields: usize, i: usize) -> Vec<(String, String)> {
    let stars: Vec<usize> = outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| o.star)
        .map(|(k, _)| k)
        .collect();
    let at = match stars.as_slice() {
        [] if outputs.len() == fields => Some(i),
        [s] if fields + 1 >= outputs.len() => {
            let width = fields + 1 - outputs.len();
            if i < *s {
                Some(i)
            } else if i >= s + width {
                Some(i + 1 - width)
            } else {
                None // inside the `*`
            }
        }
        _ => None,
    };
    match at.and_then(|k| outputs.get(k)) {
        Some(o) if !o.star => o.sources.clone(),
        _ => {
            let mut all: Vec<(String, String)> = outputs
                .iter()
                .flat_map(|o| o.sources.iter().cloned())
                .collect();
            all.sort();
            all.dedup();
            all
        }
    }
}

/// A plan made with a statement's column sources. The same `Arc` stands
/// for every run of one statement; holding it keeps its address from being
/// reused by another statement's sources while the plan is cached.
struct SourcedPlan {
    sources: Arc<ResultSources>,
    index: usize,
    plan: Arc<ResultPlan>,
}

/// Per-session masking state, owned by the upstream loop.
pub struct Masking {
    masker: Arc<Masker>,
    catalog: Arc<Catalog>,
    generation: u64,
    plans: HashMap<Bytes, Arc<ResultPlan>>,
    /// Plans of results whose statement's column sources are known, by
    /// RowDescription, then by statement.
    sourced_plans: HashMap<Bytes, Vec<SourcedPlan>>,
    findings: Vec<Finding>,
    /// Decoded bytes of a streamed bytea, reused.
    bytes: Vec<u8>,
    /// What was masked since the report was last taken.
    pub report: MaskReport,
    /// Fail the statement instead of sending NULL for a value that cannot be masked.
    pub refuse_unmaskable: bool,
    /// Columns policy lets this session see unmasked.
    pub unmask: Option<Arc<ColumnUnmask>>,
    /// The plan whose masked columns `noted` marks.
    noted_plan: Option<Arc<ResultPlan>>,
    noted: Vec<bool>,
    /// The last masked row, reused from row to row.
    row_buf: Vec<u8>,
}

impl Masking {
    /// A message outside the result rows with the sensitive values in its
    /// text masked: the message, detail, hint and context of an
    /// ErrorResponse or NoticeResponse (a unique violation's `Key
    /// (email)=(…)`), a NOTIFY payload, and a ParameterStatus value
    /// (`set_config('application_name', ssn, …)`). `None`
    /// when nothing was found or the message is not one of these.
    pub fn out_of_band(&mut self, tag: u8, body: &[u8]) -> Option<Bytes> {
        use sluice_wire::messages::{parameter_status, ErrorResponse};
        use sluice_wire::tags::backend;
        let mut report = std::mem::take(&mut self.report);
        let mut scan = |text: &[u8]| {
            self.masker
                .mask_bytes_in_text(text, &mut self.findings, &mut report)
        };
        let out = match tag {
            backend::ERROR_RESPONSE | backend::NOTICE_RESPONSE => {
                let mut e = ErrorResponse::decode(body).ok()?;
                let mut changed = false;
                for (kind, value) in &mut e.fields {
                    // Every text a function can set (RAISE … USING COLUMN = v
                    // sets 'c'), not severity, code, position or source.
                    if !matches!(*kind, b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R') {
                        if let Some(m) = scan(value.as_bytes()) {
                            *value = String::from_utf8_lossy(&m).into_owned();
                            changed = true;
                        }
                    }
                }
                changed.then(|| {
                    if tag == backend::ERROR_RESPONSE {
                        e.encode()
                    } else {
                        e.encode_notice()
                    }
                })
            }
            backend::NOTIFICATION_RESPONSE => {
                // process id, channel, payload
                let pid = body.get(..4)?;
                let rest = body.get(4..)?;
                let channel_end = rest.iter().position(|&b| b == 0)?;
                let payload = rest.get(channel_end + 1..)?;
                let payload = payload.strip_suffix(&[0])?;
                let masked = scan(payload)?;
                let channel = &rest[..=channel_end];
                let len = 4 + pid.len() + channel.len() + masked.len() + 1;
                let mut m = BytesMut::with_capacity(1 + len);
                m.extend_from_slice(&[backend::NOTIFICATION_RESPONSE]);
                m.extend_from_slice(&u32::try_from(len).ok()?.to_be_bytes());
                m.extend_from_slice(pid);
                m.extend_from_slice(channel);
                m.extend_from_slice(&masked);
                m.extend_from_slice(&[0]);
                Some(m.freeze())
            }
            // Any reported setting can be set from a value
            // (`set_config('TimeZone', …)`), not only application_name.
            backend::PARAMETER_STATUS => {
                let (name, value) = parameter_status::decode(body).ok()?;
                let masked = scan(value.as_bytes())?;
                Some(parameter_status::encode(
                    name,
                    &String::from_utf8_lossy(&masked),
                ))
            }
            _ => None,
        };
        self.report = report;
        out
    }
}

/// What a DataRow became.
pub enum RowOutcome {
    /// Forward it as it is.
    Unchanged,
    /// Forward the masked row instead: a whole DataRow message, in
    /// [`Masking::rewritten`] until the next row.
    Rewritten,
    /// A value of this column cannot be masked and `unmaskable = "refuse"`:
    /// the statement fails.
    Refuse(String),
}

impl Masking {
    /// Masking for one session.
    pub fn new(masker: Arc<Masker>, catalog: Arc<Catalog>) -> Self {
        Masking {
            generation: catalog.generation(),
            masker,
            catalog,
            plans: HashMap::new(),
            sourced_plans: HashMap::new(),
            findings: Vec::new(),
            bytes: Vec::new(),
            report: MaskReport::default(),
            refuse_unmaskable: false,
            unmask: None,
            noted_plan: None,
            noted: Vec::new(),
            row_buf: Vec::new(),
        }
    }

    /// The plan for a RowDescription (`body` without header); `Err` lists
    /// the catalog entries to load first.
    pub fn plan(
        &mut self,
        body: &[u8],
        sources: Option<ResultSourcesAt>,
    ) -> Result<Option<Arc<ResultPlan>>, Missing> {
        let generation = self.catalog.generation();
        if generation != self.generation {
            // DDL went through Sluice: names may have changed.
            self.plans.clear();
            self.sourced_plans.clear();
            self.generation = generation;
        }
        let Some(sources) = sources.filter(|s| s.columns().is_some()) else {
            if let Some(p) = self.plans.get(body) {
                return Ok(Some(p.clone()));
            }
            let Some(plan) = plan_columns(
                &self.masker,
                &self.catalog,
                body,
                None,
                self.unmask.as_deref(),
            )?
            else {
                return Ok(None);
            };
            let plan = Arc::new(plan);
            if self.plans.len() >= PLAN_CACHE {
                self.plans.clear();
            }
            self.plans
                .insert(Bytes::copy_from_slice(body), plan.clone());
            return Ok(Some(plan));
        };
        let same =
            |p: &SourcedPlan| Arc::ptr_eq(&p.sources, &sources.all) && p.index == sources.index;
        if let Some(p) = self
            .sourced_plans
            .get(body)
            .and_then(|v| v.iter().find(|p| same(p)))
        {
            return Ok(Some(p.plan.clone()));
        }
        let Some(plan) = plan_columns(
            &self.masker,
            &self.catalog,
            body,
            sources.columns(),
            self.unmask.as_deref(),
        )?
        else {
            return Ok(None);
        };
        let plan = Arc::new(plan);
        if self.sourced_plans.len() >= PLAN_CACHE {
            self.sourced_plans.clear();
        }
        let held = self
            .sourced_plans
            .entry(Bytes::copy_from_slice(body))
            .or_default();
        if held.len() >= 8 {
            held.clear();
        }
        held.push(SourcedPlan {
            sources: sources.all,
            index: sources.index,
            plan: plan.clone(),
        });
        Ok(Some(plan))
    }

    /// Mask a JSON document standing for rows of table `root` (binary
    /// jsonb keeps its version byte) and write it to `out`.
    fn mask_json_in(
        &mut self,
        root: &str,
        value: &[u8],
        jsonb_binary: bool,
        out: &mut Vec<u8>,
    ) -> Written {
        let (version, text) = match (jsonb_binary, value.split_first()) {
            (true, Some((&1, body))) => (Some(1u8), body),
            (true, _) => return Written::Null,
            (false, _) => (None, value),
        };
        match self.masker.mask_json_text_in(
            root.as_bytes(),
            text,
            &mut self.findings,
            &mut self.report,
        ) {
            Some(m) => {
                self.report.values_masked += 1;
                out.extend(version);
                out.extend_from_slice(&m);
                Written::Masked
            }
            None => Written::Unchanged,
        }
    }

    /// Mask one whole DataRow (`body` without header).
    pub fn row(&mut self, plan: &Arc<ResultPlan>, body: &[u8]) -> RowOutcome {
        if !plan.active {
            return RowOutcome::Unchanged;
        }
        // Most rows have nothing to mask: look before decoding into vectors.
        match self.row_needs_rewrite(plan, body) {
            Some(false) => return RowOutcome::Unchanged,
            Some(true) => {}
            // Malformed: the client will reject it; never forward it unmasked.
            None => return self.rewrite_empty(),
        }
        // Write the new row in one pass: fields that pass are copied, masked
        // ones are written straight into the row (no buffer per value).
        let Some(count) = body.get(..2) else {
            return self.rewrite_empty();
        };
        let mut out = std::mem::take(&mut self.row_buf);
        out.clear();
        out.reserve(body.len() + 64);
        out.extend_from_slice(&[b'D', 0, 0, 0, 0]);
        let outcome = self.mask_row_into(plan, body, count, &mut out);
        self.row_buf = out;
        outcome.unwrap_or_else(|| self.rewrite_empty())
    }

    /// The masked DataRow of the last [`RowOutcome::Rewritten`].
    pub fn rewritten(&self) -> &[u8] {
        &self.row_buf
    }

    /// A malformed row is replaced by an empty one (the client will reject
    /// it); it is never forwarded unmasked.
    fn rewrite_empty(&mut self) -> RowOutcome {
        self.row_buf.clear();
        self.row_buf.extend_from_slice(&[b'D', 0, 0, 0, 6, 0, 0]);
        RowOutcome::Rewritten
    }

    /// The masked row after `out`'s header (tag, length to patch); `None`:
    /// the row is malformed.
    fn mask_row_into(
        &mut self,
        plan: &Arc<ResultPlan>,
        body: &[u8],
        count: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<RowOutcome> {
        out.extend_from_slice(count);
        let count = u16::from_be_bytes([count[0], count[1]]) as usize;
        let mut at = 2usize;
        let mut changed = false;
        for i in 0..count {
            let len = body
                .get(at..at + 4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))?;
            at += 4;
            if len < 0 {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            let value = body.get(at..at + len as usize)?;
            at += len as usize;
            let column = plan.columns.get(i).copied().unwrap_or(ColumnPlan::Pass);
            if column.is_pass() {
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(value);
                continue;
            }
            let binary = plan.formats.get(i).copied().unwrap_or(0) == 1;
            let len_at = out.len();
            out.extend_from_slice(&[0; 4]);
            let record = plan.records.get(i).and_then(Option::as_ref);
            let root = plan.json_roots.get(i).and_then(Option::as_deref);
            let written = match (record, root) {
                // JSON of a table's whole rows: its keys in that table
                (None, Some(root)) if matches!(column, ColumnPlan::Scan { .. }) => {
                    let jsonb_binary = binary
                        && column
                            == ColumnPlan::Scan {
                                value_type: ValueType::Jsonb,
                            };
                    self.mask_json_in(root, value, jsonb_binary, out)
                }
                // a whole row in text: its fields by their names
                (Some(record), _) if !binary => {
                    match self.masker.mask_record_text(
                        record,
                        value,
                        &mut self.findings,
                        &mut self.report,
                    ) {
                        Outcome::Unchanged => Written::Unchanged,
                        Outcome::Masked(m) => {
                            out.extend_from_slice(&m);
                            Written::Masked
                        }
                        Outcome::Null | Outcome::CannotMask => Written::Null,
                    }
                }
                _ => self.masker.mask_field_into(
                    &column,
                    binary,
                    value,
                    &mut self.findings,
                    &mut self.report,
                    out,
                ),
            };
            match written {
                Written::Unchanged => {
                    out.extend_from_slice(value);
                }
                Written::Masked => {}
                // A type that cannot carry a mask gets NULL, or with
                // `unmaskable = "refuse"` fails the statement.
                Written::CannotMask | Written::Null
                    if self.refuse_unmaskable
                        && (written == Written::CannotMask
                            || matches!(
                                column,
                                ColumnPlan::Mask {
                                    value_type: ValueType::Other
                                        | ValueType::Bytea
                                        | ValueType::Structured
                                        | ValueType::Xml,
                                    ..
                                }
                            )) =>
                {
                    let label = plan.labels.get(i).cloned().unwrap_or_default();
                    return Some(RowOutcome::Refuse(label));
                }
                // Fail closed: a value that cannot be masked is not sent.
                Written::Null | Written::CannotMask => {
                    out.truncate(len_at);
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                }
            }
            if written != Written::Unchanged {
                changed = true;
                self.note_column(plan, i);
            }
            let field_len = out.len() - len_at - 4;
            let Ok(field_len) = i32::try_from(field_len) else {
                return None;
            };
            if written != Written::Null && written != Written::CannotMask {
                out[len_at..len_at + 4].copy_from_slice(&field_len.to_be_bytes());
            }
        }
        if at != body.len() {
            // bytes after the last field: malformed, never forwarded
            return None;
        }
        if !changed {
            return Some(RowOutcome::Unchanged);
        }
        let Ok(total) = i32::try_from(out.len() - 1) else {
            return None;
        };
        out[1..5].copy_from_slice(&total.to_be_bytes());
        Some(RowOutcome::Rewritten)
    }

    /// Note that a column of the current result had a value masked: once per
    /// column per plan, not per row.
    fn note_column(&mut self, plan: &Arc<ResultPlan>, column: usize) {
        // a new plan, or the report was taken since: note afresh
        let same_plan = self
            .noted_plan
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, plan));
        if !same_plan || self.report.columns_masked.is_empty() {
            self.noted_plan = Some(plan.clone());
            self.noted.clear();
        }
        if self.noted.len() <= column {
            self.noted.resize(column + 1, false);
        }
        if !self.noted[column] {
            self.noted[column] = true;
            plan.note(column, &mut self.report);
        }
    }

    /// Whether any field of a DataRow would change, walking it without
    /// allocating (`None`: malformed). Scanned text that finds nothing and
    /// NULLs are the common case.
    fn row_needs_rewrite(&mut self, plan: &ResultPlan, body: &[u8]) -> Option<bool> {
        let count = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
        let mut at = 2usize;
        for i in 0..count {
            let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            if len < 0 {
                continue;
            }
            let value = body.get(at..at + len as usize)?;
            at += len as usize;
            let column = plan.columns.get(i).copied().unwrap_or(ColumnPlan::Pass);
            if plan.records.get(i).is_some_and(Option::is_some) {
                return Some(true);
            }
            match column {
                ColumnPlan::Pass => {}
                ColumnPlan::Scan { value_type }
                    if value_type.is_textual()
                        && !(value_type == ValueType::Jsonb
                            && plan.formats.get(i).copied().unwrap_or(0) == 1) =>
                {
                    // JSON (or text holding it) also by its keys
                    let found = if matches!(value_type, ValueType::Json | ValueType::Jsonb)
                        || sluice_mask::looks_like_json(value)
                    {
                        let root = plan.json_roots.get(i).and_then(Option::as_deref);
                        let root = root.map_or(&b""[..], str::as_bytes);
                        Masker::json_has_findings_in(root, value, &mut self.findings)
                    } else {
                        sluice_mask::scan_into(value, &mut self.findings);
                        !self.findings.is_empty()
                    };
                    if found {
                        return Some(true);
                    }
                }
                _ => return Some(true),
            }
        }
        // Bytes after the last field: let the full decode refuse it.
        Some(at != body.len())
    }

    /// Start streaming a DataRow too large to hold (`total_len` includes the header).
    pub fn stream(&self, plan: Arc<ResultPlan>, total_len: usize) -> StreamingRow {
        StreamingRow {
            plan,
            remaining: total_len,
            stage: Stage::Header { need: 7 },
            small: Vec::new(),
            field: 0,
            field_left: 0,
            pending: Vec::new(),
            value_sent: 0,
            escape_bytea: false,
            binary_data: false,
        }
    }

    /// Scan a chunk of a streamed value and redact findings in place,
    /// keeping the value's length.
    fn redact_in_place(&mut self, bytes: &mut [u8]) {
        sluice_mask::scan_into(bytes, &mut self.findings);
        for f in &self.findings {
            self.report.record(f.kind);
            if let Some(part) = bytes.get_mut(f.range.clone()) {
                part.fill(b'*');
            }
        }
    }
}

#[derive(Debug)]
enum Stage {
    /// Tag, length and column count (7 bytes).
    Header { need: usize },
    /// A field's 4-byte length.
    Length,
    /// A field's bytes.
    Value,
    /// Everything passed.
    Done,
}

/// A DataRow streamed through with length-preserving masking: every field
/// keeps its length, so the row's length (already sent) stays right.
/// Scanned text values are redacted with `*` where detectors fire (a window
/// of bytes is held back so nothing is missed at a read boundary); values
/// of columns masked whole become `*` of the same length when they are
/// text. A masked non-text value this large cannot keep its length: the
/// session ends instead (fail closed).
pub struct StreamingRow {
    plan: Arc<ResultPlan>,
    /// Bytes of the message not yet consumed.
    remaining: usize,
    stage: Stage,
    /// Header or length bytes gathered so far.
    small: Vec<u8>,
    field: usize,
    field_left: usize,
    /// Held-back bytes of a scanned value.
    pending: Vec<u8>,
    /// Bytes of the current value already sent.
    value_sent: usize,
    /// The current value is a bytea in the escape format.
    escape_bytea: bool,
    /// The current value is a bytea holding binary data, not text.
    binary_data: bool,
}

/// A streamed row that cannot be masked while keeping its length.
#[derive(Debug)]
pub struct CannotStream(pub String);

impl StreamingRow {
    /// Bytes of the row still to come.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Consume `input` (the next bytes of the row) and append what may be
    /// sent to `out`.
    pub fn push(
        &mut self,
        masking: &mut Masking,
        mut input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CannotStream> {
        self.remaining -= input.len();
        while !input.is_empty() {
            match self.stage {
                Stage::Header { need } => {
                    let n = need.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n == need {
                        self.stage = Stage::Length;
                    } else {
                        self.stage = Stage::Header { need: need - n };
                    }
                }
                Stage::Length => {
                    let n = (4 - self.small.len()).min(input.len());
                    self.small.extend_from_slice(&input[..n]);
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.small.len() == 4 {
                        let len = i32::from_be_bytes([
                            self.small[0],
                            self.small[1],
                            self.small[2],
                            self.small[3],
                        ]);
                        self.small.clear();
                        if len <= 0 {
                            self.next_field();
                        } else {
                            self.field_left = len as usize;
                            self.check_field(masking)?;
                            self.stage = Stage::Value;
                        }
                    }
                }
                Stage::Value => {
                    let n = self.field_left.min(input.len());
                    let chunk = &input[..n];
                    input = &input[n..];
                    self.field_left -= n;
                    self.value_bytes(masking, chunk, out);
                    if self.field_left == 0 {
                        self.finish_value(masking, out);
                        self.next_field();
                    }
                }
                Stage::Done => {
                    // Bytes past the last field: the row was malformed.
                    return Err(CannotStream("a DataRow longer than its fields".into()));
                }
            }
        }
        Ok(())
    }

    fn column(&self) -> ColumnPlan {
        self.plan
            .columns
            .get(self.field)
            .copied()
            .unwrap_or(ColumnPlan::Pass)
    }

    fn next_field(&mut self) {
        self.field += 1;
        self.stage = if self.field >= self.plan.columns.len() {
            Stage::Done
        } else {
            Stage::Length
        };
    }

    fn check_field(&self, masking: &mut Masking) -> Result<(), CannotStream> {
        let column = self.column();
        let binary = self.plan.formats.get(self.field).copied().unwrap_or(0) == 1;
        let textual =
            |vt: ValueType| matches!(vt, ValueType::Text | ValueType::Json | ValueType::Xml);
        let ok = match column {
            ColumnPlan::Pass => true,
            // a binary bytea is its bytes: redacted in place like text
            ColumnPlan::Scan { value_type } => {
                !binary || textual(value_type) || value_type == ValueType::Bytea
            }
            ColumnPlan::Mask { value_type, .. } => !binary || textual(value_type),
        };
        if let (false, Some(label)) = (ok, self.plan.labels.get(self.field)) {
            masking.report.cannot_mask += 1;
            return Err(CannotStream(format!(
                "a value of column \"{label}\" is too large to mask without changing its length"
            )));
        }
        Ok(())
    }

    fn value_bytes(&mut self, masking: &mut Masking, chunk: &[u8], out: &mut Vec<u8>) {
        match self.column() {
            ColumnPlan::Pass => out.extend_from_slice(chunk),
            ColumnPlan::Mask { .. } => {
                self.plan.note(self.field, &mut masking.report);
                out.extend(std::iter::repeat_n(b'*', chunk.len()));
            }
            ColumnPlan::Scan { .. } => {
                self.pending.extend_from_slice(chunk);
                if self.pending.len() >= 2 * SCAN_WINDOW {
                    self.redact_pending(masking);
                    // an even cut keeps hex pairs whole
                    let mut send = self.pending.len() - SCAN_WINDOW;
                    send -= send % 2;
                    out.extend_from_slice(&self.pending[..send]);
                    self.pending.drain(..send);
                    self.value_sent += send;
                }
            }
        }
    }

    fn finish_value(&mut self, masking: &mut Masking, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.redact_pending(masking);
            out.extend_from_slice(&self.pending);
            self.pending.clear();
        }
        self.value_sent = 0;
        self.escape_bytea = false;
        self.binary_data = false;
    }

    /// Redact findings in the held-back bytes of a scanned value. A
    /// text-format bytea is scanned as the bytes its hex digits stand for;
    /// one in the escape format cannot be decoded piecewise, so it is
    /// overwritten whole with `*` (still a valid escape-format bytea). A
    /// bytea that turns out not to be text is left alone from there on, as
    /// a held one is (masking random bytes would corrupt the file).
    fn redact_pending(&mut self, masking: &mut Masking) {
        let binary = self.plan.formats.get(self.field).copied().unwrap_or(0) == 1;
        let bytea = matches!(
            self.column(),
            ColumnPlan::Scan {
                value_type: ValueType::Bytea
            }
        );
        if bytea && self.binary_data {
            return;
        }
        if !bytea || binary {
            if bytea && !sluice_mask::window_is_text(&self.pending, self.value_sent == 0) {
                self.binary_data = true;
                return;
            }
            masking.redact_in_place(&mut self.pending);
            return;
        }
        if self.value_sent == 0 && !self.pending.starts_with(b"\\x") {
            self.escape_bytea = true;
        }
        if self.escape_bytea {
            self.pending.fill(b'*');
            masking.report.cannot_mask += 1;
            return;
        }
        let skip = if self.value_sent == 0 { 2 } else { 0 };
        if let Some(hex) = self.pending.get_mut(skip..) {
            let start = self.value_sent == 0;
            match sluice_mask::redact_hex_in_place(
                hex,
                start,
                &mut masking.bytes,
                &mut masking.findings,
            ) {
                Some(kinds) => kinds.into_iter().for_each(|k| masking.report.record(k)),
                None => self.binary_data = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_wire::messages::data_row;
    use sluice_wire::messages::row_description::Field;

    fn masking() -> Masking {
        Masking::new(
            Arc::new(Masker::new(&[7u8; 32])),
            Arc::new(Catalog::default()),
        )
    }

    fn computed(name: &str, type_oid: u32) -> Field {
        Field {
            name: name.into(),
            table_oid: 0,
            column: 0,
            type_oid,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }
    }

    #[test]
    fn rows_of_a_plan_that_masks_are_rewritten() {
        let mut m = masking();
        let desc = row_description::encode(&[computed("id", 23), computed("contact", 25)]);
        let plan = m.plan(&desc[5..], None).unwrap().unwrap();
        assert!(plan.active, "a text column is scanned");
        let mut row = BytesMut::new();
        let values: Vec<Option<&[u8]>> = vec![Some(b"1"), Some(b"mail alice@example.com now")];
        data_row::encode_into(&mut row, values.into_iter());
        let RowOutcome::Rewritten = m.row(&plan, &row[5..]) else {
            panic!("not masked");
        };
        let out = m.rewritten().to_vec();
        let vals = data_row::decode(&out[5..]).unwrap();
        assert_eq!(vals[0], Some(&b"1"[..]));
        let text = String::from_utf8_lossy(vals[1].unwrap()).into_owned();
        assert!(!text.contains("alice@"), "{text}");
        // A row without findings goes as it is.
        let mut plain = BytesMut::new();
        let values: Vec<Option<&[u8]>> = vec![Some(b"2"), None];
        data_row::encode_into(&mut plain, values.into_iter());
        assert!(matches!(m.row(&plan, &plain[5..]), RowOutcome::Unchanged));
    }

    #[test]
    fn streamed_rows_keep_their_length_and_hide_findings_across_chunks() {
        let mut m = masking();
        let desc = row_description::encode(&[computed("n", 23), computed("blob", 25)]);
        let plan = m.plan(&desc[5..], None).unwrap().unwrap();
        let mut big = vec![b'x'; 300_000];
        let secret = b" bob@example.org ";
        let at = 2 * SCAN_WINDOW - 5; // straddles the first cut
        big[at..at + secret.len()].copy_from_slice(secret);
        let mut row = BytesMut::new();
        let values: Vec<Option<&[u8]>> = vec![Some(b"42"), Some(&big)];
        data_row::encode_into(&mut row, values.into_iter());
        let mut s = m.stream(plan, row.len());
        let mut out = Vec::new();
        for chunk in row.chunks(7919) {
            s.push(&mut m, chunk, &mut out).unwrap();
        }
        assert_eq!(s.remaining(), 0);
        assert_eq!(out.len(), row.len());
        let vals = data_row::decode(&out[5..]).unwrap();
        assert_eq!(vals[0], Some(&b"42"[..]));
        let text = vals[1].unwrap();
        assert!(
            !text.windows(3).any(|w| w == b"bob"),
            "the address is redacted"
        );
        assert_eq!(
            text.iter().filter(|&&b| b == b'x').count(),
            300_000 - secret.len()
        );
    }

    fn col(star: bool, sources: &[(&str, &str)]) -> OutputColumn {
        OutputColumn {
            star,
            sources: sources
                .iter()
                .map(|(t, c)| ((*t).to_owned(), (*c).to_owned()))
                .collect(),
        }
    }

    /// Fields line up with the statement's columns, around one `*`; when
    /// they cannot, every column's sources count.
    #[test]
    fn fields_line_up_with_the_statement_columns() {
        let name = col(false, &[("people", "name")]);
        let none = col(false, &[]);
        let star = col(true, &[("people", "*")]);
        let src = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(t, c)| ((*t).to_owned(), (*c).to_owned()))
                .collect()
        };
        let plain = [none.clone(), name.clone()];
        assert_eq!(computed_from(&plain, 2, 0), src(&[]));
        assert_eq!(computed_from(&plain, 2, 1), src(&[("people", "name")]));
        // `select *, upper(name)` over a table of 3 columns: 4 fields
        let starred = [star.clone(), name.clone()];
        assert_eq!(computed_from(&starred, 4, 3), src(&[("people", "name")]));
        // `select upper(name), *, 1`
        let around = [name.clone(), star.clone(), none.clone()];
        assert_eq!(computed_from(&around, 5, 0), src(&[("people", "name")]));
        assert_eq!(computed_from(&around, 5, 4), src(&[]));
        // two stars, or a count that does not fit: everything counts
        let two = [star.clone(), star, none];
        assert_eq!(computed_from(&two, 7, 6), src(&[("people", "*")]));
        assert_eq!(computed_from(&plain, 3, 2), src(&[("people", "name")]));
    }
}

/// Values masked or withheld so far.
fn masked_values(report: &MaskReport) -> u64 {
    report.values_masked + report.values_nulled
}

/// How to mask the data of one `COPY … TO STDOUT`.
#[derive(Debug)]
pub struct CopyPlan {
    /// Column plans, in COPY order.
    pub columns: Vec<ColumnPlan>,
    /// Labels for reports.
    pub labels: Vec<String>,
    /// Sources of computed columns, for reports (see [`ResultPlan::sources`]).
    pub sources: Vec<Vec<String>>,
    /// The data format.
    pub format: sluice_sql::CopyFormat,
    /// Text format options.
    pub text: sluice_mask::copy::TextFormat,
    /// CSV options.
    pub csv: sluice_mask::copy::CsvFormat,
    /// The first CSV line names the columns.
    pub header: bool,
    /// A binary value that cannot be masked ends the COPY instead of being NULL.
    pub refuse_unmaskable: bool,
}

impl CopyPlan {
    /// The plan for a COPY whose columns are those of `result`; `Err` when
    /// an option is one Sluice cannot read the data with.
    pub fn new(result: &ResultPlan, copy: &sluice_sql::CopyOut) -> Result<CopyPlan, String> {
        let one_byte = |what: &str, v: &Option<String>, default: u8| -> Result<u8, String> {
            match v.as_deref() {
                None => Ok(default),
                Some(s) if s.len() == 1 => Ok(s.as_bytes()[0]),
                Some(_) => Err(format!("a multi-byte COPY {what} cannot be masked")),
            }
        };
        if let Some(enc) = &copy.encoding {
            let e = enc.to_ascii_uppercase().replace(['-', '_'], "");
            if e != "UTF8" && e != "UNICODE" {
                return Err(format!(
                    "COPY with ENCODING '{enc}' cannot be masked; use UTF8"
                ));
            }
        }
        let mut text = sluice_mask::copy::TextFormat::default();
        let mut csv = sluice_mask::copy::CsvFormat::default();
        match copy.format {
            sluice_sql::CopyFormat::Text => {
                text.delimiter = one_byte("DELIMITER", &copy.delimiter, b'\t')?;
                if let Some(n) = &copy.null {
                    text.null = n.as_bytes().to_vec();
                }
            }
            sluice_sql::CopyFormat::Csv => {
                csv.delimiter = one_byte("DELIMITER", &copy.delimiter, b',')?;
                csv.quote = one_byte("QUOTE", &copy.quote, b'"')?;
                csv.escape = one_byte("ESCAPE", &copy.escape, csv.quote)?;
                if let Some(n) = &copy.null {
                    csv.null = n.as_bytes().to_vec();
                }
            }
            sluice_sql::CopyFormat::Binary => {}
        }
        // A whole row in COPY's escaping is not rewritten field by field:
        // one with fields masked by name is withheld.
        let columns = result
            .columns
            .iter()
            .zip(result.records.iter().chain(std::iter::repeat(&None)))
            .map(|(c, r)| {
                let kind = r.as_ref().and_then(|r| {
                    r.fields.iter().find_map(|p| match p {
                        ColumnPlan::Mask { kind, .. } => Some(*kind),
                        _ => None,
                    })
                });
                match (kind, c) {
                    (Some(kind), ColumnPlan::Scan { value_type }) => ColumnPlan::Mask {
                        kind,
                        strategy: sluice_mask::Strategy::Null,
                        value_type: *value_type,
                    },
                    _ => *c,
                }
            })
            .collect();
        Ok(CopyPlan {
            columns,
            labels: result.labels.clone(),
            sources: result.sources.clone(),
            format: copy.format,
            text,
            csv,
            header: copy.header,
            refuse_unmaskable: false,
        })
    }
}

/// The state of one COPY's data on its way to the client: rows are cut
/// out of the CopyData stream, masked, and sent as CopyData again.
pub struct CopyMasker {
    plan: Arc<CopyPlan>,
    splitter: sluice_mask::copy::RecordSplitter,
    binary: Option<sluice_mask::copy::BinaryCopyRewriter>,
    header_pending: bool,
    scratch: sluice_mask::copy::RowScratch,
    /// The last masked text row, reused from row to row.
    row: Vec<u8>,
    /// The masked columns are in the report.
    noted: bool,
}

impl CopyMasker {
    /// Start masking a COPY.
    pub fn new(plan: Arc<CopyPlan>) -> Self {
        let splitter = match plan.format {
            sluice_sql::CopyFormat::Csv => sluice_mask::copy::RecordSplitter::csv(&plan.csv),
            _ => sluice_mask::copy::RecordSplitter::text(),
        };
        let binary = (plan.format == sluice_sql::CopyFormat::Binary).then(|| {
            sluice_mask::copy::BinaryCopyRewriter::new(
                plan.columns.clone(),
                if plan.refuse_unmaskable {
                    sluice_mask::copy::CannotMaskPolicy::Fail
                } else {
                    sluice_mask::copy::CannotMaskPolicy::SendNull
                },
            )
        });
        CopyMasker {
            header_pending: plan.header && plan.format == sluice_sql::CopyFormat::Csv,
            plan,
            splitter,
            binary,
            scratch: Default::default(),
            row: Vec::new(),
            noted: false,
        }
    }

    /// Mask COPY data (`chunk`: CopyData contents, possibly part of one)
    /// and append whole CopyData messages to `out`.
    pub fn data(
        &mut self,
        masking: &mut Masking,
        chunk: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), String> {
        let before = masked_values(&masking.report);
        let result = self.data_inner(masking, chunk, out);
        self.note_columns(masking, before);
        result
    }

    /// Once a value was masked, the COPY's masked columns go in the report
    /// (the statement's audit record and usage): every column whose plan
    /// masks or scans, since the values of a row are not told apart here.
    fn note_columns(&mut self, masking: &mut Masking, before: u64) {
        if self.noted || masked_values(&masking.report) == before {
            return;
        }
        self.noted = true;
        for (i, plan) in self.plan.columns.iter().enumerate() {
            if !plan.is_pass() {
                note_masked(
                    &self.plan.labels,
                    &self.plan.sources,
                    i,
                    &mut masking.report,
                );
            }
        }
    }

    fn data_inner(
        &mut self,
        masking: &mut Masking,
        chunk: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), String> {
        if let Some(b) = &mut self.binary {
            let mut o = Vec::with_capacity(chunk.len() + 16);
            b.push(&masking.masker, chunk, &mut o, &mut masking.report)
                .map_err(|e| e.to_string())?;
            if !o.is_empty() {
                put_copy_data(out, &o)?;
            }
            return Ok(());
        }
        let mut chunk = chunk;
        if self.plan.format != sluice_sql::CopyFormat::Csv && self.splitter.pending() == 0 {
            // The text format escapes newlines inside values, so each `\n`
            // ends a row: mask whole rows where they lie (PostgreSQL sends
            // one per CopyData) and keep only a partial one.
            while let Some(end) = memchr::memchr(b'\n', chunk) {
                let (row, rest) = chunk.split_at(end + 1);
                self.record(masking, row, out)?;
                chunk = rest;
            }
        }
        if !chunk.is_empty() {
            self.splitter.push(chunk);
        }
        while let Some(record) = self.splitter.next_record() {
            self.record(masking, &record, out)?;
        }
        if self.splitter_pending() > HOLD_ROW_LIMIT {
            return Err("a COPY row is too large to mask".into());
        }
        Ok(())
    }

    /// The COPY's data ended: flush a last row without a newline.
    pub fn done(&mut self, masking: &mut Masking, out: &mut BytesMut) -> Result<(), String> {
        if let Some(record) = self.splitter.finish() {
            let before = masked_values(&masking.report);
            let result = self.record(masking, &record, out);
            self.note_columns(masking, before);
            result?;
        }
        Ok(())
    }

    fn splitter_pending(&self) -> usize {
        self.splitter.pending()
    }

    /// Append one row, masked, to `out` as a CopyData message.
    fn record(
        &mut self,
        masking: &mut Masking,
        record: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), String> {
        if std::mem::take(&mut self.header_pending) {
            return put_copy_data(out, record);
        }
        let masked = match self.plan.format {
            sluice_sql::CopyFormat::Csv => sluice_mask::copy::mask_csv_record(
                &masking.masker,
                &self.plan.csv,
                &self.plan.columns,
                record,
                &mut masking.report,
            )
            .map_err(|e| e.to_string())?,
            _ => {
                self.row.clear();
                sluice_mask::copy::mask_text_row_into(
                    &masking.masker,
                    &self.plan.text,
                    &self.plan.columns,
                    record,
                    &mut masking.report,
                    &mut self.scratch,
                    &mut self.row,
                )
                .map_err(|e| e.to_string())?
                .then(|| std::mem::take(&mut self.row))
            }
        };
        match masked {
            Some(m) => {
                let sent = put_copy_data(out, &m);
                // keep the buffer for the next row
                self.row = m;
                sent
            }
            None => put_copy_data(out, record),
        }
    }
}

/// Append a CopyData message holding `payload` to `out`.
fn put_copy_data(out: &mut BytesMut, payload: &[u8]) -> Result<(), String> {
    let len =
        i32::try_from(payload.len() + 4).map_err(|_| "a COPY row is too large".to_string())?;
    out.reserve(payload.len() + 5);
    out.extend_from_slice(b"d");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}
