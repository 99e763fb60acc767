//! Cancel keys: the client gets Sluice's own key, and a cancel is forwarded
//! to the upstream backend that session uses, never to another one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;
use sluice_wire::messages::BackendKeyData;

/// Where a cancel for one session goes.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Upstream `host:port`.
    pub upstream: String,
    /// Whether the upstream wants TLS first.
    pub tls: bool,
    /// The upstream's own key for that backend.
    pub upstream_key: BackendKeyData,
}

struct Entry {
    secret: i32,
    target: CancelTarget,
}

/// Live sessions by the process id Sluice gave their client.
///
/// Locked only when a session starts or ends and on a cancel, never per message.
#[derive(Default, Clone)]
pub struct CancelRegistry {
    inner: Arc<Mutex<HashMap<i32, Entry>>>,
}

/// Removes the session's key when dropped.
pub struct CancelGuard {
    registry: CancelRegistry,
    process_id: i32,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.inner.lock() {
            map.remove(&self.process_id);
        }
    }
}

impl CancelRegistry {
    /// Register a session; returns the key to give the client.
    pub fn register(&self, target: CancelTarget) -> (BackendKeyData, CancelGuard) {
        let mut rng = rand::thread_rng();
        let mut map = match self.inner.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let process_id = loop {
            let pid = rng.gen_range(1..i32::MAX);
            if !map.contains_key(&pid) {
                break pid;
            }
        };
        let secret = rng.gen::<i32>();
        map.insert(process_id, Entry { secret, target });
        (
            BackendKeyData {
                process_id,
                secret_key: secret,
            },
            CancelGuard {
                registry: self.clone(),
                process_id,
            },
        )
    }

    /// The upstream to cancel for a client's key, if the key is right.
    pub fn lookup(&self, process_id: i32, secret_key: i32) -> Option<CancelTarget> {
        let map = self.inner.lock().ok()?;
        let entry = map.get(&process_id)?;
        // Compare without an early exit so the time does not leak the secret.
        let same = subtle_eq(entry.secret, secret_key);
        same.then(|| entry.target.clone())
    }
}

fn subtle_eq(a: i32, b: i32) -> bool {
    (a ^ b) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CancelTarget {
        CancelTarget {
            upstream: "127.0.0.1:1".into(),
            tls: false,
            upstream_key: BackendKeyData {
                process_id: 42,
                secret_key: 7,
            },
        }
    }

    #[test]
    fn only_the_right_secret_cancels() {
        let reg = CancelRegistry::default();
        let (key, guard) = reg.register(target());
        assert!(reg.lookup(key.process_id, key.secret_key).is_some());
        assert!(reg
            .lookup(key.process_id, key.secret_key.wrapping_add(1))
            .is_none());
        drop(guard);
        assert!(reg.lookup(key.process_id, key.secret_key).is_none());
    }
}
