//! Short-lived copies of what nearly every request reads: which workspace an API key belongs
//! to, the deployment an invoke names, and the deployment whose secrets sign a callback. Writes through this node clear them at once; a
//! write on another node (PostgreSQL) reaches this one when the copy expires, after
//! [`LOOKUP_TTL`] at most.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hookflow_store::Deployment;

/// How long a looked-up API key or deployment is reused.
pub const LOOKUP_TTL: Duration = Duration::from_secs(1);

/// Entries kept before a map starts over (bounds memory whatever the callers send).
const MAX_ENTRIES: usize = 10_000;

/// A map whose entries expire.
pub struct Expiring<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Hash + Eq, V: Clone> Expiring<K, V> {
    /// An empty map whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The value stored under `key`, unless it expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let map = self.map.lock().expect("lookup lock");
        map.get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, value)| value.clone())
    }

    /// Stores `value` under `key` from now on.
    pub fn insert(&self, key: K, value: V) {
        let mut map = self.map.lock().expect("lookup lock");
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(key, (Instant::now(), value));
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        self.map.lock().expect("lookup lock").clear();
    }
}

/// The node's cached lookups.
pub struct Lookups {
    /// API key hash → workspace id (only keys that exist).
    pub keys: Expiring<String, String>,
    /// (workspace id, deployment id or name) → deployment (only deployments that exist).
    pub deployments: Expiring<(String, String), Deployment>,
    /// Deployment id → deployment, for signing its callbacks.
    pub signing: Expiring<String, Deployment>,
}

impl Default for Lookups {
    fn default() -> Self {
        Self {
            keys: Expiring::new(LOOKUP_TTL),
            deployments: Expiring::new(LOOKUP_TTL),
            signing: Expiring::new(LOOKUP_TTL),
        }
    }
}

impl Lookups {
    /// Forgets everything: an API key or a deployment changed.
    pub fn clear(&self) {
        self.keys.clear();
        self.deployments.clear();
        self.signing.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_clear() {
        let map = Expiring::new(Duration::from_millis(50));
        map.insert("k", 1);
        assert_eq!(map.get(&"k"), Some(1));
        assert_eq!(map.get(&"other"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(map.get(&"k"), None, "expired");
        map.insert("k", 2);
        map.clear();
        assert_eq!(map.get(&"k"), None, "cleared");
    }

    #[test]
    fn memory_is_bounded() {
        let map = Expiring::new(Duration::from_secs(60));
        for n in 0..=MAX_ENTRIES {
            map.insert(n, n);
        }
        assert_eq!(map.map.lock().unwrap().len(), 1, "started over when full");
        assert_eq!(map.get(&MAX_ENTRIES), Some(MAX_ENTRIES));
    }
}
