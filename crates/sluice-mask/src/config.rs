//! The `[masking]` configuration section.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use serde::Deserialize;

use crate::{Kind, Strategy};

/// `[masking]` in `sluice.toml`. With no section, automatic masking is on
/// with the built-in defaults. The HMAC key is not part of it: the caller
/// resolves it (env var or file) and passes it to [`crate::Masker::with_config`].
///
/// ```toml
/// [masking]
/// enabled = true               # default true
/// scan_unclassified = true     # run value detectors on text columns not classified by name
/// [masking.default_strategy]
/// email = "partial"
/// card = "token"
/// [masking.columns]
/// "public.users.notes" = "scan"
/// "public.users.nickname" = "name:token"
/// "audit.events.payload" = "none"
/// "orders.customer_ref" = "redact"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskingConfig {
    /// Master switch (default `true`).
    pub enabled: bool,
    /// Scan the values of text-like columns that no name rule classified
    /// (default `true`).
    pub scan_unclassified: bool,
    /// Strategy per kind, overriding [`Strategy::default_for`].
    pub default_strategy: BTreeMap<Kind, Strategy>,
    /// Rules per column: key `schema.table.column` or `table.column` (any
    /// schema), value a [`ColumnRule`] string.
    pub columns: BTreeMap<String, ColumnRule>,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            enabled: true,
            scan_unclassified: true,
            default_strategy: BTreeMap::new(),
            columns: BTreeMap::new(),
        }
    }
}

/// What to do with one column, from a string:
///
/// | string | meaning |
/// |---|---|
/// | `none`, `pass`, `off` | never mask this column |
/// | `scan` | run the value detectors on each value |
/// | a strategy (`redact`, `partial`, `token`, `null`, `format-preserving`) | mask with it (kind from the name, else `secret`) |
/// | a kind (`email`, `card`, …) | mask as that kind with its strategy |
/// | `kind:strategy` (`name:token`) | both |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ColumnRule {
    /// Never mask.
    Pass,
    /// Value detectors on each value.
    Scan,
    /// Mask every value.
    Mask {
        /// The kind, or `None` for the name classification (or `secret`).
        kind: Option<Kind>,
        /// The strategy, or `None` for the kind's configured strategy.
        strategy: Option<Strategy>,
    },
}

/// An invalid masking rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A column rule string that is not understood.
    #[error("invalid masking rule {0:?}: expected none, scan, a strategy (redact, partial, token, null, format-preserving), a kind (email, card, …) or kind:strategy")]
    Rule(String),
    /// A column key that is not `table.column` or `schema.table.column`.
    #[error("invalid masking column {0:?}: expected \"table.column\" or \"schema.table.column\"")]
    Column(String),
}

impl FromStr for ColumnRule {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "none" | "pass" | "off" => return Ok(ColumnRule::Pass),
            "scan" => return Ok(ColumnRule::Scan),
            _ => {}
        }
        if let Some((k, st)) = t.split_once(':') {
            let kind = k
                .parse::<Kind>()
                .map_err(|_| ConfigError::Rule(s.to_string()))?;
            let strategy = st
                .parse::<Strategy>()
                .map_err(|_| ConfigError::Rule(s.to_string()))?;
            return Ok(ColumnRule::Mask {
                kind: Some(kind),
                strategy: Some(strategy),
            });
        }
        if let Ok(strategy) = t.parse::<Strategy>() {
            return Ok(ColumnRule::Mask {
                kind: None,
                strategy: Some(strategy),
            });
        }
        if let Ok(kind) = t.parse::<Kind>() {
            return Ok(ColumnRule::Mask {
                kind: Some(kind),
                strategy: None,
            });
        }
        Err(ConfigError::Rule(s.to_string()))
    }
}

impl TryFrom<String> for ColumnRule {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The configuration compiled for lookups.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) enabled: bool,
    pub(crate) scan_unclassified: bool,
    pub(crate) strategies: [Strategy; Kind::COUNT],
    /// Lower-case `schema.table.column` or `table.column` → rule.
    pub(crate) columns: HashMap<String, ColumnRule>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            enabled: true,
            scan_unclassified: true,
            strategies: Kind::ALL.map(Strategy::default_for),
            columns: HashMap::new(),
        }
    }
}

impl Rules {
    pub(crate) fn from_config(c: &MaskingConfig) -> Result<Rules, ConfigError> {
        let mut r = Rules {
            enabled: c.enabled,
            scan_unclassified: c.scan_unclassified,
            ..Rules::default()
        };
        for (k, s) in &c.default_strategy {
            r.strategies[k.index()] = *s;
        }
        for (col, rule) in &c.columns {
            let parts = col.split('.').count();
            if !(2..=3).contains(&parts) || col.split('.').any(|p| p.trim().is_empty()) {
                return Err(ConfigError::Column(col.clone()));
            }
            r.columns.insert(col.trim().to_lowercase(), *rule);
        }
        Ok(r)
    }
}
