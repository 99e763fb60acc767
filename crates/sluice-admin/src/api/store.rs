//! Reading the audit trail of the running proxy: the store its writer
//! writes to (`[audit] store`, by default SQLite in the data directory),
//! opened on first use and kept. Store calls block, so they run on the
//! blocking pool, one at a time.

use std::path::Path;
use std::sync::{Arc, Mutex};

use sluice_audit::store::{self, Store};
use sluice_audit::{AuditConfig, AuditError, StoreLocation};

use super::error::ApiError;

/// The audit store, opened lazily.
pub struct AuditStore {
    location: StoreLocation,
    config: AuditConfig,
    store: Mutex<Option<Box<dyn Store>>>,
}

impl AuditStore {
    /// The store `config` points at (relative to `data_dir` by default).
    /// The writer reads `[audit]` once at start; so does this.
    pub fn new(config: &AuditConfig, data_dir: &Path) -> AuditStore {
        AuditStore {
            location: config.location(data_dir),
            config: config.clone(),
            store: Mutex::new(None),
        }
    }

    fn open(&self) -> Result<Box<dyn Store>, AuditError> {
        let password = match &self.location {
            StoreLocation::Postgres(_) => self.config.password()?,
            StoreLocation::Sqlite(_) => None,
        };
        store::open(&self.location, password.as_deref())
    }

    /// Run `f` with the store on the blocking pool. A failing store is
    /// dropped and opened again on the next call.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, AuditError> + Send + 'static,
    {
        let this = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut slot = match this.store.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let mut store = match slot.take() {
                Some(s) => s,
                None => this.open()?,
            };
            let result = f(store.as_mut());
            let failed = matches!(result, Err(AuditError::Store(_) | AuditError::Io { .. }));
            if !failed {
                *slot = Some(store);
            }
            result
        })
        .await;
        match joined {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "admin API: the audit store cannot be read");
                Err(ApiError::unavailable(
                    "store_unavailable",
                    format!("the audit store cannot be read: {e}"),
                ))
            }
            Err(e) => Err(ApiError::internal(format!("the audit query failed: {e}"))),
        }
    }
}

impl Drop for AuditStore {
    fn drop(&mut self) {
        // The PostgreSQL store owns a small runtime, which must not be
        // dropped inside an async context: drop it on a plain thread.
        let store = match self.store.get_mut() {
            Ok(s) => s.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(s) = store {
            let _ = std::thread::Builder::new()
                .name("sluice-admin-store-drop".into())
                .spawn(move || drop(s));
        }
    }
}
