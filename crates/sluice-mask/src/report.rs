//! The audit seam: which detectors fired and which columns were masked,
//! never the values.

use std::collections::{BTreeMap, BTreeSet};

use crate::Kind;

/// Counts of what masking did, cheap to update per value (a fixed array
/// indexed by kind; column names are inserted once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskReport {
    counts: [u64; Kind::COUNT],
    /// Columns whose values were masked (`schema.table.column` or the field name).
    pub columns_masked: BTreeSet<String>,
    /// Values replaced (whole values or values with replaced parts).
    pub values_masked: u64,
    /// Values sent as NULL by a `null` strategy or a type that cannot hold a masked value.
    pub values_nulled: u64,
    /// Values that could not be masked (the caller failed closed).
    pub cannot_mask: u64,
}

impl MaskReport {
    /// Count one finding or one masked value of `kind`.
    #[inline]
    pub fn record(&mut self, kind: Kind) {
        self.counts[kind.index()] += 1;
    }

    /// How many times `kind` fired.
    pub fn count(&self, kind: Kind) -> u64 {
        self.counts[kind.index()]
    }

    /// Non-zero detector counts by kind.
    pub fn detectors(&self) -> BTreeMap<Kind, u64> {
        Kind::ALL
            .iter()
            .filter(|k| self.counts[k.index()] > 0)
            .map(|&k| (k, self.counts[k.index()]))
            .collect()
    }

    /// Note a masked column (allocates only the first time).
    pub fn note_column(&mut self, column: &str) {
        if !self.columns_masked.contains(column) {
            self.columns_masked.insert(column.to_string());
        }
    }

    /// Nothing was masked.
    pub fn is_empty(&self) -> bool {
        self.values_masked == 0
            && self.values_nulled == 0
            && self.cannot_mask == 0
            && self.counts.iter().all(|&c| c == 0)
    }

    /// Add another report's counts to this one.
    pub fn merge(&mut self, other: &MaskReport) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.columns_masked
            .extend(other.columns_masked.iter().cloned());
        self.values_masked += other.values_masked;
        self.values_nulled += other.values_nulled;
        self.cannot_mask += other.cannot_mask;
    }
}
