//! Sensitive-data detection and masking for Sluice.
//!
//! No I/O and no knowledge of the wire protocol beyond value encodings: the
//! proxy asks for a [`ColumnPlan`] per result column ([`Masker::plan`]),
//! then masks each field with [`Masker::mask_text`] or
//! [`Masker::mask_binary`] (or a whole COPY row with [`copy`]). The
//! offline twin, `sluice mask classify`, is [`classify_csv`].
//!
//! - [`classify_column`]: names in several styles and languages → [`Kind`].
//! - [`detect()`] / [`scan`]: value detectors with checksums, linear time.
//! - [`Strategy`]: redact, partial, keyed token, NULL, format-preserving.
//! - [`MaskReport`]: which detectors fired, never the values.
#![warn(missing_docs)]

mod bytea;
mod classify;
mod config;
pub mod copy;
pub mod detect;
mod json_keys;
mod kind;
mod masker;
mod offline;
mod plan;
mod record;
mod report;
mod strategy;

pub use bytea::{redact_hex_in_place, window_is_text};
pub use classify::{classify_column, classify_column_in};
pub use config::{ColumnRule, ConfigError, MaskingConfig};
pub use detect::{detect, scan, scan_bytes, scan_into, Finding};
pub use json_keys::looks_like_json;
pub use kind::{Kind, UnknownKind};
pub use masker::{Masker, REDACTED};
pub use offline::{
    classify_csv, classify_csv_with, render_json, render_text, ColumnReport, DetectedBy,
    OfflineError,
};
pub use plan::{oid, BinaryOutcome, ColumnInfo, ColumnPlan, Outcome, ValueType, Written};
pub use record::RecordPlan;
pub use report::MaskReport;
pub use strategy::{Strategy, UnknownStrategy};
