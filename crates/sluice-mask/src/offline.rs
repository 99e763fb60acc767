//! The offline twin of in-flight masking: `sluice mask classify` reads a
//! CSV with a header and reports, per column, the kind of sensitive data
//! (by name, else by values) and a masked sample.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Serialize;

use crate::copy::{parse_csv_record, CopyError, CsvFormat, RecordSplitter};
use crate::{classify_column, scan, Kind, Masker};

/// Rows whose values are examined per column (the rest are read and skipped).
const SAMPLE_ROWS: usize = 10_000;

/// How a column's kind was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectedBy {
    /// The column name (wins over values).
    Name,
    /// At least half of the column's non-empty sampled values contain that
    /// kind (as the whole value or inside it, e.g. a key in a connection
    /// string).
    Values,
}

/// One column of [`classify_csv`]'s report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnReport {
    /// Header name.
    pub column: String,
    /// The kind of sensitive data, or `None`.
    pub kind: Option<Kind>,
    /// How `kind` was found, or `None`.
    pub detected_by: Option<DetectedBy>,
    /// A value as Sluice would send it: masked when the column has a kind
    /// or the value contains findings. Never an unmasked detected value.
    pub sample_masked: Option<String>,
    /// Non-empty values examined.
    pub values_sampled: u64,
    /// Of those, values containing `kind`.
    pub values_matched: u64,
    /// Values containing each kind somewhere (free text, JSON, …).
    pub contains: BTreeMap<Kind, u64>,
}

/// Why classification failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Reading the input failed.
    #[error("reading the CSV: {0}")]
    Io(#[from] std::io::Error),
    /// The CSV is malformed.
    #[error("{0}")]
    Csv(#[from] CopyError),
    /// No header line.
    #[error("the CSV is empty: a header line is required")]
    Empty,
}

/// Classify a CSV (RFC 4180: `,` and `"`, header first) with a fresh
/// random masking key, so tokens in the samples cannot be linked to any
/// deployment's tokens.
pub fn classify_csv<R: Read>(input: R) -> Result<Vec<ColumnReport>, OfflineError> {
    classify_csv_with(input, &Masker::new(&random_key()))
}

/// [`classify_csv`] with the caller's masker (its key and strategies).
pub fn classify_csv_with<R: Read>(
    mut input: R,
    masker: &Masker,
) -> Result<Vec<ColumnReport>, OfflineError> {
    let format = CsvFormat::default();
    let mut splitter = RecordSplitter::csv(&format);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut header: Option<Vec<String>> = None;
    let mut stats: Vec<Stats> = Vec::new();
    let mut rows = 0usize;
    let mut eof = false;
    while !eof {
        let n = input.read(&mut chunk)?;
        if n == 0 {
            eof = true;
        } else {
            splitter.push(&chunk[..n]);
        }
        loop {
            let record = match splitter.next_record() {
                Some(r) => r,
                None if eof => match splitter.finish() {
                    Some(r) => r,
                    None => break,
                },
                None => break,
            };
            let fields = parse_csv_record(&format, &record)?;
            match &header {
                None => {
                    let mut names: Vec<String> = fields
                        .iter()
                        .map(|f| String::from_utf8_lossy(&f.value).into_owned())
                        .collect();
                    if let Some(first) = names.first_mut() {
                        // a UTF-8 byte-order mark is not part of the name
                        *first = first.trim_start_matches('\u{feff}').to_string();
                    }
                    stats = names
                        .iter()
                        .map(|n| Stats::new(classify_column(n, "text")))
                        .collect();
                    header = Some(names);
                }
                Some(_) if rows < SAMPLE_ROWS => {
                    rows += 1;
                    for (st, f) in stats.iter_mut().zip(&fields) {
                        st.add(&String::from_utf8_lossy(&f.value));
                    }
                }
                Some(_) => {}
            }
        }
    }
    let names = header.ok_or(OfflineError::Empty)?;
    Ok(names
        .into_iter()
        .zip(stats)
        .map(|(name, st)| st.report(name, masker))
        .collect())
}

struct Stats {
    by_name: Option<Kind>,
    sampled: u64,
    /// Values containing each kind (as a whole or inside).
    contains: [u64; Kind::COUNT],
    /// First value, first value containing each kind.
    first: Option<String>,
    first_with: BTreeMap<Kind, String>,
}

impl Stats {
    fn new(by_name: Option<Kind>) -> Stats {
        Stats {
            by_name,
            sampled: 0,
            contains: [0; Kind::COUNT],
            first: None,
            first_with: BTreeMap::new(),
        }
    }

    fn add(&mut self, v: &str) {
        if v.trim().is_empty() {
            return;
        }
        self.sampled += 1;
        if self.first.is_none() {
            self.first = Some(v.to_string());
        }
        let mut seen = [false; Kind::COUNT];
        for f in scan(v) {
            seen[f.kind.index()] = true;
        }
        for k in Kind::ALL {
            if seen[k.index()] {
                self.contains[k.index()] += 1;
                self.first_with.entry(k).or_insert_with(|| v.to_string());
            }
        }
    }

    fn report(self, column: String, masker: &Masker) -> ColumnReport {
        // the kind found in the most values, if in at least half of them
        let majority = Kind::ALL
            .iter()
            .copied()
            .max_by_key(|k| (self.contains[k.index()], std::cmp::Reverse(k.index())))
            .filter(|k| {
                self.contains[k.index()] > 0 && self.contains[k.index()] * 2 >= self.sampled
            });
        let (kind, by) = match (self.by_name, majority) {
            (Some(k), _) => (Some(k), Some(DetectedBy::Name)),
            (None, Some(k)) => (Some(k), Some(DetectedBy::Values)),
            (None, None) => (None, None),
        };
        // what Sluice would send: a column classified by name is masked
        // whole; any other column is scanned and its findings masked
        let sample = match by {
            Some(DetectedBy::Name) => kind
                .zip(self.first.as_deref())
                .map(|(k, v)| masker.mask(k, v)),
            _ => match kind
                .and_then(|k| self.first_with.get(&k))
                .or_else(|| self.first_with.values().next())
            {
                Some(v) => masker.mask_in_text(v).map(|(m, _)| m),
                None => self.first.clone(),
            },
        };
        let contains = Kind::ALL
            .iter()
            .filter(|k| self.contains[k.index()] > 0)
            .map(|&k| (k, self.contains[k.index()]))
            .collect();
        ColumnReport {
            column,
            kind,
            detected_by: by,
            sample_masked: sample,
            values_sampled: self.sampled,
            values_matched: kind.map_or(0, |k| self.contains[k.index()]),
            contains,
        }
    }
}

/// 32 bytes from the standard library's per-process random hasher keys
/// (seeded by the OS), mixed with SHA-256: enough to keep sample tokens
/// unlinkable, without a dependency on a random-number crate.
fn random_key() -> [u8; 32] {
    use sha2::{Digest, Sha256};
    use std::hash::{BuildHasher, Hasher};
    let mut h = Sha256::new();
    for i in 0..4u64 {
        let mut s = std::collections::hash_map::RandomState::new().build_hasher();
        s.write_u64(i);
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            s.write_u128(t.as_nanos());
        }
        h.update(s.finish().to_le_bytes());
    }
    h.finalize().into()
}

/// A fixed-width table for people.
pub fn render_text(reports: &[ColumnReport]) -> String {
    let rows: Vec<[String; 4]> = reports
        .iter()
        .map(|r| {
            let kind = match (&r.kind, r.values_sampled) {
                (Some(k), _) => k.as_str().to_string(),
                (None, _) if !r.contains.is_empty() => {
                    let parts: Vec<String> = r
                        .contains
                        .iter()
                        .map(|(k, n)| format!("{k} in {n}"))
                        .collect();
                    format!("- (contains {})", parts.join(", "))
                }
                (None, _) => "-".to_string(),
            };
            let by = match r.detected_by {
                Some(DetectedBy::Name) => "name".to_string(),
                Some(DetectedBy::Values) => {
                    format!("values {}/{}", r.values_matched, r.values_sampled)
                }
                None => "-".to_string(),
            };
            let sample = r
                .sample_masked
                .as_deref()
                .map_or_else(|| "-".to_string(), shorten);
            [r.column.clone(), kind, by, sample]
        })
        .collect();
    let head = ["column", "kind", "detected by", "masked sample"].map(String::from);
    let mut width = [0usize; 3];
    for row in rows.iter().chain(std::iter::once(&head)) {
        for (w, cell) in width.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(rows.iter()) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One line, at most 60 characters.
fn shorten(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > 60 {
        let head: String = flat.chars().take(57).collect();
        format!("{head}...")
    } else {
        flat
    }
}

/// A JSON array of objects with `column`, `kind` (or null), `detected_by`
/// (`"name"`, `"values"` or null), `sample_masked`, `values_sampled`,
/// `values_matched` and `contains` (kind → number of values).
pub fn render_json(reports: &[ColumnReport]) -> String {
    serde_json::to_string_pretty(reports).unwrap_or_else(|_| "[]".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_name_and_values_and_never_shows_raw() {
        let csv = "id,customer_email,col7,notes,sku\n\
                   1,ann@example.com,4111 1111 1111 1111,\"call me at ann@example.org\nthanks\",SKU-1\n\
                   2,bob@example.com,5555555555554444,nothing here,SKU-2\n\
                   3,cid@example.com,378282246310005,\"quoted \"\"text\"\"\",SKU-3\n";
        let r = classify_csv_with(csv.as_bytes(), &Masker::new(&[7; 32])).expect("classify");
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].kind, None);
        assert_eq!(r[1].kind, Some(Kind::Email));
        assert_eq!(r[1].detected_by, Some(DetectedBy::Name));
        assert_eq!(r[2].kind, Some(Kind::Card));
        assert_eq!(r[2].detected_by, Some(DetectedBy::Values));
        assert_eq!(r[2].values_matched, 3);
        assert_eq!(r[3].kind, None);
        assert_eq!(r[3].contains.get(&Kind::Email), Some(&1));
        let json = render_json(&r);
        let text = render_text(&r);
        for raw in ["ann@example.com", "4111 1111 1111 1111", "ann@example.org"] {
            assert!(!json.contains(raw), "{raw} in {json}");
            assert!(!text.contains(raw), "{raw} in {text}");
        }
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v[1]["kind"], "email");
        assert_eq!(v[1]["detected_by"], "name");
        assert_eq!(v[0]["kind"], serde_json::Value::Null);
        assert!(v[2]["sample_masked"]
            .as_str()
            .is_some_and(|s| s.ends_with("1111")));
    }

    #[test]
    fn empty_input_is_an_error() {
        assert!(matches!(classify_csv(&b""[..]), Err(OfflineError::Empty)));
    }
}
