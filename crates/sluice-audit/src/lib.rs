//! Sluice's audit trail: typed events, a forward-secure HMAC chain with
//! signed checkpoints, a durable spool, SQLite and PostgreSQL stores,
//! verification, search, export, retention, and usage/lineage aggregates.
//!
//! The proxy holds an [`AuditSink`] (cheap to clone) and calls
//! [`AuditSink::record`], which never blocks: events go through a bounded
//! queue to a writer thread that seals them into the chain, appends them to
//! the spool and then inserts them into the store. See `README.md` in this
//! crate for the event reference and the formats.
#![warn(missing_docs)]

use std::path::Path;

pub mod approvals;
pub mod body;
pub mod chain;
pub mod config;
pub mod event;
pub mod export;
pub mod retention;
pub mod search;
pub mod spool;
pub mod store;
pub mod usage;
pub mod util;
pub mod verify;
pub mod writer;

pub use approvals::ApprovalStore;
pub use chain::{ChainKeys, Checkpoint};
pub use config::{AuditConfig, FsyncPolicy, OnSpoolFull, PgLocation, StoreLocation, StoreTls};
pub use event::{
    Actor, AdminAction, AuthFailure, Decision, EventBody, Lineage, MaskedColumn, Record,
    SessionEnd, SessionStart, Statement, TlsInfo,
};
pub use search::{Page, Query, SearchRow};
pub use store::{Entry, PgStore, SqliteStore, Store};
pub use usage::{LineageEdge, UsageQuery, UsageRow};
pub use verify::{verify, Failure, Report};
pub use writer::{AuditSink, AuditWriter, Counters, FlushStatus, RecordError};

/// An audit error. Never contains a password or key.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("audit store: {0}")]
    Store(String),
    /// Stored or spooled data is not what it should be.
    #[error("corrupt audit data: {0}")]
    Corrupt(String),
    /// A key could not be made or used.
    #[error("audit crypto: {0}")]
    Crypto(String),
    /// The configuration is wrong.
    #[error("audit config: {0}")]
    Config(String),
    /// JSON encoding failed.
    #[error("audit json: {0}")]
    Json(#[from] serde_json::Error),
    /// The writer stopped.
    #[error("the audit writer has stopped")]
    Stopped,
}

impl AuditError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The audit directory inside a data directory.
pub fn audit_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("audit")
}
