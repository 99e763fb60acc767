//! COPY data: the text format, CSV and the binary format, masked one row at
//! a time with a plan per column.
//!
//! PostgreSQL sends `COPY … TO STDOUT` data as CopyData messages, in
//! practice one row per message; [`RecordSplitter`] cuts a byte stream into
//! rows anyway (a CSV row may span lines inside quotes), and
//! [`BinaryCopyRewriter`] consumes arbitrary chunks of the binary format.

use crate::detect::Finding;
use crate::plan::{ColumnPlan, Outcome, Written};
use crate::{MaskReport, Masker};

/// A COPY row that cannot be rewritten safely; the caller fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// The row has a different number of fields than there are plans.
    #[error("COPY row has {found} fields, expected {expected}")]
    ColumnCount {
        /// Plans given.
        expected: usize,
        /// Fields in the row.
        found: usize,
    },
    /// The data does not follow the format.
    #[error("malformed COPY data: {0}")]
    Malformed(&'static str),
    /// A field under a masking plan cannot be masked in this format.
    #[error("COPY field {column} cannot be masked in this format")]
    CannotMask {
        /// Zero-based field index.
        column: usize,
    },
}

/// `COPY … (FORMAT text)` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextFormat {
    /// Field separator (default tab).
    pub delimiter: u8,
    /// NULL marker (default `\N`).
    pub null: Vec<u8>,
}

impl Default for TextFormat {
    fn default() -> Self {
        TextFormat {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
        }
    }
}

/// `COPY … (FORMAT csv)` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvFormat {
    /// Field separator (default `,`).
    pub delimiter: u8,
    /// Quote character (default `"`).
    pub quote: u8,
    /// Escape character inside quotes (default: the quote character).
    pub escape: u8,
    /// NULL marker, unquoted (default: the empty string).
    pub null: Vec<u8>,
}

impl Default for CsvFormat {
    fn default() -> Self {
        CsvFormat {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
        }
    }
}

/// Split a line terminator off a row.
fn split_terminator(row: &[u8]) -> (&[u8], &[u8]) {
    if let Some(body) = row.strip_suffix(b"\r\n") {
        (body, b"\r\n")
    } else if let Some(body) = row.strip_suffix(b"\n") {
        (body, b"\n")
    } else {
        (row, b"")
    }
}

fn apply(
    masker: &Masker,
    plan: &ColumnPlan,
    value: &[u8],
    column: usize,
    findings: &mut Vec<Finding>,
    report: &mut MaskReport,
) -> Result<Outcome, CopyError> {
    match masker.mask_text(plan, value, findings, report) {
        Outcome::CannotMask => Err(CopyError::CannotMask { column }),
        o => Ok(o),
    }
}

/// Mask one row of the text format (with or without its `\n`). `Ok(None)`:
/// send the row unchanged.
pub fn mask_text_row(
    masker: &Masker,
    format: &TextFormat,
    plans: &[ColumnPlan],
    row: &[u8],
    report: &mut MaskReport,
) -> Result<Option<Vec<u8>>, CopyError> {
    let mut out = Vec::new();
    let mut scratch = RowScratch::default();
    let changed = mask_text_row_into(masker, format, plans, row, report, &mut scratch, &mut out)?;
    Ok(changed.then_some(out))
}

/// Buffers reused from one COPY row to the next.
#[derive(Debug, Default)]
pub struct RowScratch {
    fields: Vec<std::ops::Range<usize>>,
    findings: Vec<Finding>,
    value: Vec<u8>,
    masked: Vec<u8>,
}

/// [`mask_text_row`] appending the masked row (with its terminator) to
/// `out`: `Ok(true)` when it did, `Ok(false)` when the row goes unchanged
/// (nothing appended).
pub fn mask_text_row_into(
    masker: &Masker,
    format: &TextFormat,
    plans: &[ColumnPlan],
    row: &[u8],
    report: &mut MaskReport,
    scratch: &mut RowScratch,
    out: &mut Vec<u8>,
) -> Result<bool, CopyError> {
    if plans.iter().all(ColumnPlan::is_pass) {
        return Ok(false);
    }
    let (body, term) = split_terminator(row);
    if body == b"\\." {
        return Ok(false);
    }
    split_text_fields(body, format.delimiter, &mut scratch.fields);
    if scratch.fields.len() != plans.len() {
        return Err(CopyError::ColumnCount {
            expected: plans.len(),
            found: scratch.fields.len(),
        });
    }
    let start = out.len();
    out.reserve(body.len() + body.len() / 2 + 32);
    let mut changed = false;
    for (i, (field, plan)) in scratch.fields.iter().zip(plans).enumerate() {
        let raw = &body[field.clone()];
        let outcome = if plan.is_pass() || raw == format.null.as_slice() {
            Written::Unchanged
        } else {
            // most values have no escapes: mask them where they are
            let value: &[u8] = if raw.contains(&b'\\') {
                scratch.value.clear();
                unescape_text(raw, &mut scratch.value);
                &scratch.value
            } else {
                raw
            };
            scratch.masked.clear();
            masker.mask_field_into(
                plan,
                false,
                value,
                &mut scratch.findings,
                report,
                &mut scratch.masked,
            )
        };
        match outcome {
            Written::Unchanged => out.extend_from_slice(raw),
            Written::Masked => {
                changed = true;
                escape_text(&scratch.masked, format.delimiter, out);
            }
            Written::Null => {
                changed = true;
                out.extend_from_slice(&format.null);
            }
            Written::CannotMask => {
                out.truncate(start);
                return Err(CopyError::CannotMask { column: i });
            }
        }
        if i + 1 < scratch.fields.len() {
            out.push(format.delimiter);
        }
    }
    if !changed {
        out.truncate(start);
        return Ok(false);
    }
    out.extend_from_slice(term);
    Ok(true)
}

/// Field ranges of a text-format row; a backslash escapes the next byte, so
/// an escaped delimiter does not split.
fn split_text_fields(body: &[u8], delim: u8, fields: &mut Vec<std::ops::Range<usize>>) {
    fields.clear();
    let mut start = 0;
    let mut escaped_until = 0;
    for i in memchr::memchr2_iter(delim, b'\\', body) {
        if i < escaped_until {
            continue;
        }
        if body[i] == b'\\' {
            escaped_until = i + 2;
        } else {
            fields.push(start..i);
            start = i + 1;
        }
    }
    fields.push(start..body.len());
}

/// Text-format backslash sequences (PostgreSQL COPY docs): `\b \f \n \r \t
/// \v`, octal `\NNN`, hex `\xHH`, anything else stands for itself.
pub fn unescape_text(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' || i + 1 >= raw.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = raw[i + 1];
        i += 2;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut k = 0;
                while k < 2 && i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                    v = v * 8 + u32::from(raw[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if i < raw.len() && raw[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 && i < raw.len() && raw[i].is_ascii_hexdigit() {
                    v = v * 16 + char::from(raw[i]).to_digit(16).unwrap_or(0);
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
}

/// Escape a value for the text format.
pub fn escape_text(v: &[u8], delim: u8, out: &mut Vec<u8>) {
    // copy runs of plain bytes whole; escape the rest
    let mut run = 0;
    for (i, &c) in v.iter().enumerate() {
        let escaped = match c {
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            8 => b'b',
            12 => b'f',
            11 => b'v',
            c if c == delim => c,
            _ => continue,
        };
        out.extend_from_slice(&v[run..i]);
        out.push(b'\\');
        out.push(escaped);
        run = i + 1;
    }
    out.extend_from_slice(&v[run..]);
}

/// One parsed CSV field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvField {
    /// The value with quotes and escapes removed.
    pub value: Vec<u8>,
    /// Was it quoted? (A quoted empty string is not NULL.)
    pub quoted: bool,
}

/// Parse one CSV record (with or without its line terminator) into fields.
pub fn parse_csv_record(format: &CsvFormat, record: &[u8]) -> Result<Vec<CsvField>, CopyError> {
    let (body, _) = split_terminator(record);
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        let mut f = CsvField {
            value: Vec::new(),
            quoted: false,
        };
        if i < body.len() && body[i] == format.quote {
            f.quoted = true;
            i += 1;
            loop {
                if i >= body.len() {
                    return Err(CopyError::Malformed("unterminated quoted CSV field"));
                }
                let c = body[i];
                let next = body.get(i + 1).copied();
                if c == format.escape
                    && format.escape != format.quote
                    && (next == Some(format.quote) || next == Some(format.escape))
                {
                    f.value.push(body[i + 1]);
                    i += 2;
                } else if c == format.quote {
                    if format.escape == format.quote && next == Some(format.quote) {
                        f.value.push(c);
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    f.value.push(c);
                    i += 1;
                }
            }
            // text after the closing quote up to the delimiter is kept (PostgreSQL allows `"a"b`)
            while i < body.len() && body[i] != format.delimiter {
                f.value.push(body[i]);
                i += 1;
            }
        } else {
            while i < body.len() && body[i] != format.delimiter {
                f.value.push(body[i]);
                i += 1;
            }
        }
        fields.push(f);
        if i >= body.len() {
            break;
        }
        i += 1; // delimiter
    }
    Ok(fields)
}

/// Write a value as a CSV field, quoting when needed.
pub fn write_csv_field(format: &CsvFormat, value: &[u8], force_quote: bool, out: &mut Vec<u8>) {
    let needs = force_quote
        || value == format.null.as_slice()
        || value.iter().any(|&c| {
            c == format.delimiter
                || c == format.quote
                || c == format.escape
                || c == b'\n'
                || c == b'\r'
        })
        || value == b"\\.";
    if !needs {
        out.extend_from_slice(value);
        return;
    }
    out.push(format.quote);
    for &c in value {
        if c == format.quote || c == format.escape {
            out.push(format.escape);
        }
        out.push(c);
    }
    out.push(format.quote);
}

/// Mask one CSV record. `Ok(None)`: send it unchanged. Unchanged fields are
/// re-quoted only if the record is rewritten.
pub fn mask_csv_record(
    masker: &Masker,
    format: &CsvFormat,
    plans: &[ColumnPlan],
    record: &[u8],
    report: &mut MaskReport,
) -> Result<Option<Vec<u8>>, CopyError> {
    if plans.iter().all(ColumnPlan::is_pass) {
        return Ok(None);
    }
    let (_, term) = split_terminator(record);
    let fields = parse_csv_record(format, record)?;
    if fields.len() != plans.len() {
        return Err(CopyError::ColumnCount {
            expected: plans.len(),
            found: fields.len(),
        });
    }
    let mut findings = Vec::new();
    let mut outcomes = Vec::with_capacity(fields.len());
    let mut changed = false;
    for (i, (f, plan)) in fields.iter().zip(plans).enumerate() {
        let is_null = !f.quoted && f.value == format.null;
        let o = if plan.is_pass() || is_null {
            Outcome::Unchanged
        } else {
            apply(masker, plan, &f.value, i, &mut findings, report)?
        };
        changed |= !matches!(o, Outcome::Unchanged);
        outcomes.push(o);
    }
    if !changed {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(record.len() + 32);
    for (i, (f, o)) in fields.iter().zip(outcomes).enumerate() {
        if i > 0 {
            out.push(format.delimiter);
        }
        match o {
            Outcome::Unchanged => {
                let is_null = !f.quoted && f.value == format.null;
                if is_null {
                    out.extend_from_slice(&format.null);
                } else {
                    write_csv_field(format, &f.value, f.quoted, &mut out);
                }
            }
            Outcome::Masked(m) => write_csv_field(format, &m, false, &mut out),
            Outcome::Null => out.extend_from_slice(&format.null),
            Outcome::CannotMask => return Err(CopyError::CannotMask { column: i }),
        }
    }
    out.extend_from_slice(term);
    Ok(Some(out))
}

/// Cuts a COPY byte stream into rows: at every `\n` for the text format
/// (newlines in values are escaped there), at `\n` outside quotes for CSV.
/// Each byte is examined once.
#[derive(Debug, Clone)]
pub struct RecordSplitter {
    csv: Option<(u8, u8)>,
    buf: Vec<u8>,
    start: usize,
    pos: usize,
    in_quotes: bool,
}

impl RecordSplitter {
    /// For the text format.
    pub fn text() -> RecordSplitter {
        RecordSplitter {
            csv: None,
            buf: Vec::new(),
            start: 0,
            pos: 0,
            in_quotes: false,
        }
    }

    /// For CSV with these quote and escape characters.
    pub fn csv(format: &CsvFormat) -> RecordSplitter {
        RecordSplitter {
            csv: Some((format.quote, format.escape)),
            ..RecordSplitter::text()
        }
    }

    /// Add bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete row, with its `\n`.
    pub fn next_record(&mut self) -> Option<Vec<u8>> {
        while self.pos < self.buf.len() {
            let c = self.buf[self.pos];
            match self.csv {
                Some((quote, escape)) if self.in_quotes => {
                    if c == escape && escape != quote {
                        // escape + next byte: wait for the next byte if needed
                        if self.pos + 1 >= self.buf.len() {
                            return None;
                        }
                        self.pos += 2;
                        continue;
                    }
                    if c == quote {
                        self.in_quotes = false;
                    }
                }
                Some((quote, _)) if c == quote => self.in_quotes = true,
                _ => {
                    if c == b'\n' {
                        self.pos += 1;
                        let rec = self.buf[self.start..self.pos].to_vec();
                        self.start = self.pos;
                        return Some(rec);
                    }
                }
            }
            self.pos += 1;
        }
        None
    }

    /// Bytes held for the row in progress.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// What remains at the end of the stream (a last row without `\n`).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = self.buf[self.start..].to_vec();
        self.buf.clear();
        self.start = 0;
        self.pos = 0;
        self.in_quotes = false;
        (!rest.is_empty()).then_some(rest)
    }
}

/// Signature of the binary COPY format.
pub const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinState {
    Header,
    Tuples,
    Done,
}

/// What to do with a binary field that cannot be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CannotMaskPolicy {
    /// Send NULL in its place (counted in [`MaskReport::cannot_mask`]).
    SendNull,
    /// Stop with [`CopyError::CannotMask`].
    Fail,
}

/// Streaming rewriter for the binary COPY format: header (signature,
/// flags, extension), tuples (i16 field count, then i32 length + bytes per
/// field, −1 for NULL), trailer (field count −1). Feed it chunks; it writes
/// complete, rewritten tuples to `out` and keeps a partial one.
#[derive(Debug, Clone)]
pub struct BinaryCopyRewriter {
    plans: Vec<ColumnPlan>,
    policy: CannotMaskPolicy,
    state: BinState,
    buf: Vec<u8>,
    findings: Vec<Finding>,
}

impl BinaryCopyRewriter {
    /// A rewriter for rows with these column plans.
    pub fn new(plans: Vec<ColumnPlan>, policy: CannotMaskPolicy) -> BinaryCopyRewriter {
        BinaryCopyRewriter {
            plans,
            policy,
            state: BinState::Header,
            buf: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// Consume a chunk, appending rewritten output to `out`.
    pub fn push(
        &mut self,
        masker: &Masker,
        chunk: &[u8],
        out: &mut Vec<u8>,
        report: &mut MaskReport,
    ) -> Result<(), CopyError> {
        self.buf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            match self.state {
                BinState::Header => {
                    let b = &self.buf[pos..];
                    if b.len() < 19 {
                        break;
                    }
                    if &b[..11] != BINARY_SIGNATURE {
                        return Err(CopyError::Malformed("bad binary COPY signature"));
                    }
                    let ext = u32::from_be_bytes([b[15], b[16], b[17], b[18]]) as usize;
                    // PostgreSQL writes no extension; a huge one is garbage, not something to buffer
                    if ext > 1 << 20 {
                        return Err(CopyError::Malformed(
                            "binary COPY header extension too long",
                        ));
                    }
                    let total = 19 + ext;
                    if b.len() < total {
                        break;
                    }
                    out.extend_from_slice(&b[..total]);
                    pos += total;
                    self.state = BinState::Tuples;
                }
                BinState::Tuples => match self.tuple(masker, pos, out, report)? {
                    Some(next) => pos = next,
                    None => break,
                },
                BinState::Done => {
                    if pos < self.buf.len() {
                        return Err(CopyError::Malformed("data after the binary COPY trailer"));
                    }
                    break;
                }
            }
        }
        self.buf.drain(..pos);
        Ok(())
    }

    /// Has the trailer been seen, with nothing pending?
    pub fn is_done(&self) -> bool {
        self.state == BinState::Done && self.buf.is_empty()
    }

    /// Rewrite the tuple at `pos` if it is complete; return where the next
    /// one starts.
    fn tuple(
        &mut self,
        masker: &Masker,
        pos: usize,
        out: &mut Vec<u8>,
        report: &mut MaskReport,
    ) -> Result<Option<usize>, CopyError> {
        let b = &self.buf[pos..];
        if b.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([b[0], b[1]]);
        if count == -1 {
            out.extend_from_slice(&b[..2]);
            self.state = BinState::Done;
            return Ok(Some(pos + 2));
        }
        let count =
            usize::try_from(count).map_err(|_| CopyError::Malformed("negative field count"))?;
        if count != self.plans.len() {
            return Err(CopyError::ColumnCount {
                expected: self.plans.len(),
                found: count,
            });
        }
        // is the whole tuple here?
        let mut fields = Vec::with_capacity(count);
        let mut p = 2;
        for _ in 0..count {
            if b.len() < p + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]);
            p += 4;
            if len < 0 {
                if len != -1 {
                    return Err(CopyError::Malformed("negative field length"));
                }
                fields.push(None);
                continue;
            }
            let len = len as usize;
            if b.len() < p + len {
                return Ok(None);
            }
            fields.push(Some(p..p + len));
            p += len;
        }
        let tuple_start = out.len();
        out.extend_from_slice(&b[..2]);
        for (i, (f, plan)) in fields.iter().zip(&self.plans).enumerate() {
            let Some(range) = f else {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            };
            let value = &b[range.clone()];
            match masker.mask_binary(plan, value, &mut self.findings, report) {
                Outcome::Unchanged => put_field(out, value),
                Outcome::Masked(m) => put_field(out, &m),
                Outcome::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Outcome::CannotMask => match self.policy {
                    CannotMaskPolicy::SendNull => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    CannotMaskPolicy::Fail => {
                        out.truncate(tuple_start);
                        return Err(CopyError::CannotMask { column: i });
                    }
                },
            }
        }
        Ok(Some(pos + p))
    }
}

fn put_field(out: &mut Vec<u8>, v: &[u8]) {
    // a masked value longer than 2 GiB cannot occur: inputs are ≤ 1 GiB
    let len = i32::try_from(v.len()).unwrap_or(i32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(v);
}

#[cfg(test)]
mod tests;
