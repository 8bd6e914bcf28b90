//! Query vectors of recent recommend calls, so a repeated call with an unchanged history
//! skips the history lookup and the user tower. Keyed by (user, history fingerprint,
//! model version); entries live at most the TTL, so an item re-ingested with a new vector
//! reaches cached users within it. Only complete lookups are cached: a history with items
//! on shards that did not answer is never remembered.

use std::time::Duration;

use moka::sync::Cache;
use xxhash_rust::xxh3::Xxh3;

use crate::api::HistoryReport;

#[derive(Debug, Clone)]
pub struct CachedUser {
    pub queries: Vec<Vec<f32>>,
    pub report: HistoryReport,
}

pub struct UserCache {
    cache: Option<Cache<u128, CachedUser>>,
}

impl UserCache {
    /// `capacity` 0 turns the cache off.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        let cache = (capacity > 0 && !ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build()
        });
        Self { cache }
    }

    /// The key of a history: the user, each event's item and scenario in order, and the
    /// towers' version.
    pub fn key(user: Option<&str>, events: &[(String, i64)], model_version: &str) -> u128 {
        let mut h = Xxh3::new();
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(user.unwrap_or("").as_bytes());
        field(model_version.as_bytes());
        for (id, scenario) in events {
            field(id.as_bytes());
            field(&scenario.to_le_bytes());
        }
        h.digest128()
    }

    pub fn get(&self, key: u128) -> Option<CachedUser> {
        self.cache.as_ref()?.get(&key)
    }

    pub fn insert(&self, key: u128, entry: CachedUser) {
        if let Some(c) = &self.cache {
            c.insert(key, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_users_histories_order_and_versions_apart() {
        let ev = |ids: &[&str]| -> Vec<(String, i64)> {
            ids.iter().map(|i| (i.to_string(), 0)).collect()
        };
        let base = UserCache::key(Some("u1"), &ev(&["a", "b"]), "v0");
        assert_eq!(base, UserCache::key(Some("u1"), &ev(&["a", "b"]), "v0"));
        assert_ne!(base, UserCache::key(Some("u2"), &ev(&["a", "b"]), "v0"));
        assert_ne!(base, UserCache::key(Some("u1"), &ev(&["b", "a"]), "v0"));
        assert_ne!(base, UserCache::key(Some("u1"), &ev(&["ab"]), "v0"));
        assert_ne!(base, UserCache::key(Some("u1"), &ev(&["a", "b"]), "v1"));
        let mut other_scenario = ev(&["a", "b"]);
        other_scenario[1].1 = 2;
        assert_ne!(base, UserCache::key(Some("u1"), &other_scenario, "v0"));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = UserCache::new(10, Duration::from_millis(50));
        let entry = CachedUser {
            queries: vec![vec![1.0]],
            report: HistoryReport::default(),
        };
        cache.insert(1, entry);
        assert!(cache.get(1).is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert!(cache.get(1).is_none());
        assert!(UserCache::new(0, Duration::from_secs(1)).get(1).is_none());
    }
}
