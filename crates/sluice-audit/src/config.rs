//! `[audit]` in `sluice.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::store::pg_tls::{PgLocation, StoreTls};
use crate::AuditError;

/// When the spool is fsynced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every event (safest, slowest).
    Always,
    /// Once per batch the writer takes from the queue (default).
    #[default]
    Batch,
    /// At most every `fsync_interval_ms`; a process crash still loses
    /// nothing written, a machine crash up to that interval.
    Interval,
}

/// What `record()` does when the spool holds `spool_max_bytes` of events
/// not yet in the store, or the queue to the writer is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSpoolFull {
    /// Refuse: `record()` returns an error and the proxy refuses the
    /// statement (default; nothing happens unaudited).
    #[default]
    FailClosed,
    /// Let it happen without a record; counted in `dropped`, and an
    /// `admin.action` `audit.dropped` event notes the count later.
    FailOpen,
}

/// `[audit]`. Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Whether there is an audit trail at all (default true). `false`
    /// records nothing: for measuring what the trail costs, never for
    /// production (`sluice serve` warns at start).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Where events go: absent for SQLite at `DATA_DIR/audit/audit.db`,
    /// `sqlite:PATH` for SQLite elsewhere, or `postgres://user@host:port/db`
    /// for a PostgreSQL store shared by several replicas.
    #[serde(default)]
    pub store: Option<String>,
    /// Environment variable holding the PostgreSQL store's password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the PostgreSQL store's password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to a PostgreSQL store: `disable`, `prefer`, `require` or
    /// `verify-full` (unset: the URL's `sslmode`, else `prefer`).
    #[serde(default)]
    pub store_tls: Option<StoreTls>,
    /// CA certificates (PEM) for `store_tls = "verify-full"` (unset: the
    /// system's).
    #[serde(default)]
    pub store_ca_file: Option<PathBuf>,
    /// Bytes of events the spool may hold while the store is behind or
    /// unreachable (default 1 GiB).
    #[serde(default = "default_spool_max")]
    pub spool_max_bytes: u64,
    /// Spool fsync policy (default `batch`).
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// Interval for `fsync = "interval"` (default 1000).
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_ms: u64,
    /// Spool full policy (default `fail_closed`).
    #[serde(default)]
    pub on_spool_full: OnSpoolFull,
    /// A signed checkpoint every this many events (default 1000).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// And at least this often when there were new events (default 60 s).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_secs: u64,
    /// Keep statement text with its literals (default false: only the
    /// normalized text and fingerprint are kept).
    #[serde(default)]
    pub log_literals: bool,
    /// Retention per environment: `{ production = "400d", development =
    /// "30d", "*" = "90d" }`; `*` covers environments not named (and events
    /// without one). Absent: keep everything.
    #[serde(default)]
    pub retention: BTreeMap<String, String>,
    /// The key file the initial key of a new chain is appended to (default
    /// `DATA_DIR/audit/initial.key`). Copy it to the auditor and remove it
    /// from the host.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Events the queue to the writer holds (default 4096: enough to absorb
    /// bursts between batches; a deeper queue only holds memory, since the
    /// writer sets the pace either way).
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
}

fn default_spool_max() -> u64 {
    1 << 30
}
fn default_fsync_interval() -> u64 {
    1000
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_interval() -> u64 {
    60
}
fn enabled_by_default() -> bool {
    true
}
fn default_queue() -> usize {
    4096
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            store: None,
            password_env: None,
            password_file: None,
            store_tls: None,
            store_ca_file: None,
            spool_max_bytes: default_spool_max(),
            fsync: FsyncPolicy::default(),
            fsync_interval_ms: default_fsync_interval(),
            on_spool_full: OnSpoolFull::default(),
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval_secs: default_checkpoint_interval(),
            log_literals: false,
            retention: BTreeMap::new(),
            key_file: None,
            queue_capacity: default_queue(),
        }
    }
}

/// Which store a config points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL store.
    Postgres(PgLocation),
}

impl AuditConfig {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = &self.store {
            if !(s.starts_with("postgres://")
                || s.starts_with("postgresql://")
                || s.starts_with("sqlite:"))
            {
                return Err("store: expected postgres://…, postgresql://… or sqlite:PATH".into());
            }
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            return Err("password_env: set password_env or password_file, not both".into());
        }
        let postgres = self
            .store
            .as_deref()
            .is_some_and(|s| !s.starts_with("sqlite:"));
        if self.store_tls.is_some() && !postgres {
            return Err("store_tls: only for a postgres:// store".into());
        }
        if self.store_ca_file.is_some() && self.store_tls != Some(StoreTls::VerifyFull) {
            return Err("store_ca_file: only used with store_tls = \"verify-full\"".into());
        }
        if let Some(mode) = self.store_tls {
            // A CA file that does not load is a config error, not an outage.
            crate::store::pg_tls::client_config(
                mode,
                self.store_ca_file.as_deref(),
                "store_ca_file",
            )
            .map_err(|e| format!("store_tls: {e}"))?;
        }
        if self.checkpoint_every == 0 {
            return Err("checkpoint_every: must be at least 1".into());
        }
        if self.queue_capacity == 0 {
            return Err("queue_capacity: must be at least 1".into());
        }
        for (env, age) in &self.retention {
            crate::util::parse_duration_ms(age).map_err(|e| format!("retention.{env}: {e}"))?;
        }
        Ok(())
    }

    /// Retention rules as (environment or `*`, age in ms).
    pub fn retention_rules(&self) -> Result<Vec<(String, i64)>, String> {
        self.retention
            .iter()
            .map(|(env, age)| {
                crate::util::parse_duration_ms(age)
                    .map(|ms| (env.clone(), ms))
                    .map_err(|e| format!("retention.{env}: {e}"))
            })
            .collect()
    }

    /// Where the store is, relative to `data_dir` for the default.
    pub fn location(&self, data_dir: &Path) -> StoreLocation {
        match self.store.as_deref() {
            None => StoreLocation::Sqlite(data_dir.join("audit").join("audit.db")),
            Some(s) => match s.strip_prefix("sqlite:") {
                Some(p) => StoreLocation::Sqlite(PathBuf::from(p.trim_start_matches("//"))),
                None => StoreLocation::Postgres(PgLocation {
                    url: s.to_owned(),
                    tls: self.store_tls,
                    ca_file: self.store_ca_file.clone(),
                }),
            },
        }
    }

    /// The PostgreSQL store's password from `password_env` or
    /// `password_file`, if either is set.
    pub fn password(&self) -> Result<Option<String>, AuditError> {
        resolve_password(self.password_env.as_deref(), self.password_file.as_deref())
    }

    /// The key file path.
    pub fn key_file(&self, data_dir: &Path) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("audit").join("initial.key"))
    }
}

/// A password from an environment variable or a file (trailing newline
/// removed). The error never contains the value.
pub fn resolve_password(
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, AuditError> {
    match (env, file) {
        (Some(_), Some(_)) => Err(AuditError::Config(
            "set password_env or password_file, not both".into(),
        )),
        (Some(var), None) => std::env::var(var).map(Some).map_err(|_| {
            AuditError::Config(format!(
                "password_env: environment variable {var} is not set"
            ))
        }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|v| Some(v.trim_end_matches(['\r', '\n']).to_owned()))
            .map_err(|e| {
                AuditError::Config(format!(
                    "password_file: cannot read {}: {e}",
                    path.display()
                ))
            }),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c: AuditConfig = serde_json::from_value(serde_json::json!({
            "fsync": "interval", "on_spool_full": "fail_open",
            "retention": { "production": "400d", "*": "30d" }
        }))
        .unwrap();
        assert_eq!(c.fsync, FsyncPolicy::Interval);
        assert_eq!(c.on_spool_full, OnSpoolFull::FailOpen);
        c.validate().unwrap();
        assert_eq!(c.retention_rules().unwrap().len(), 2);
        let bad: Result<AuditConfig, _> = serde_json::from_value(serde_json::json!({ "nope": 1 }));
        assert!(bad.is_err());
        let c2 = AuditConfig {
            retention: [("dev".to_string(), "30 days".to_string())].into(),
            ..AuditConfig::default()
        };
        assert!(c2.validate().unwrap_err().starts_with("retention.dev"));
        assert_eq!(
            AuditConfig::default().location(Path::new("/d")),
            StoreLocation::Sqlite("/d/audit/audit.db".into())
        );
    }
}
