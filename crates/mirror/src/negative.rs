//! A negative cache: names the upstream said it lacks, remembered for a short time so that a
//! client retrying (or many clients asking) for a name that does not exist upstream costs one
//! upstream request per TTL, not one each. Bounded: at most [`NegativeCache::capacity`]
//! names; when full, expired names go first, then the oldest.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many names are remembered at most.
pub const CAPACITY: usize = 4096;

/// Names known missing upstream, each until its deadline.
#[derive(Debug)]
pub struct NegativeCache<K> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, Instant>>,
}

impl<K: Eq + Hash + Clone> NegativeCache<K> {
    /// A cache remembering each name for `ttl` (zero: nothing is remembered).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Instant>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `key` was found missing less than the TTL ago.
    pub fn contains(&self, key: &K) -> bool {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                entries.remove(key);
                false
            }
            None => false,
        }
    }

    /// Remembers that the upstream lacks `key`.
    pub fn insert(&self, key: K) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, until| *until > now);
            if entries.len() >= self.capacity
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(key, now + self.ttl);
    }

    /// Forgets `key` (it was pulled, or a refresh was asked for).
    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_remembered_for_the_ttl_only() {
        let cache = NegativeCache::new(Duration::from_millis(50), 8);
        cache.insert("a");
        assert!(cache.contains(&"a"));
        assert!(!cache.contains(&"b"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!cache.contains(&"a"), "expired");
        assert!(cache.is_empty(), "an expired name is dropped when seen");
        cache.insert("a");
        cache.remove(&"a");
        assert!(!cache.contains(&"a"));
        // A zero TTL remembers nothing.
        let off = NegativeCache::new(Duration::ZERO, 8);
        off.insert("a");
        assert!(!off.contains(&"a"));
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest() {
        let cache = NegativeCache::new(Duration::from_secs(60), 4);
        for i in 0..100 {
            cache.insert(i);
            assert!(cache.len() <= 4);
            assert!(cache.contains(&i), "the newest name is kept");
        }
        assert!((0..100).filter(|i| cache.contains(i)).count() <= 4);
    }
}
