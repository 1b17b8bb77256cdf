//! The seeds the plugin has wrapped or unwrapped, kept in memory so an apiserver that
//! restarts while keyhaven is down or sealed can still read what it wrote.
//!
//! Bounded (the least recently used entry goes first), keyed by the plugin's ciphertext,
//! zeroized when evicted, purged or dropped. Nothing here is ever written to disk.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use zeroize::Zeroizing;

struct Slot {
    seed: Zeroizing<Vec<u8>>,
    version: u32,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Box<[u8]>, Slot>,
    tick: u64,
}

/// A bounded, zeroizing map from ciphertext to seed.
pub struct SeedCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl fmt::Debug for SeedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl SeedCache {
    /// A cache of at most `capacity` seeds (0 keeps none).
    pub fn new(capacity: usize) -> SeedCache {
        SeedCache {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters: take it over.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many seeds are held.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether no seed is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The seed of `ciphertext`, if held; marks it recently used.
    pub fn get(&self, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let slot = inner.map.get_mut(ciphertext)?;
        slot.last_used = tick;
        Some(slot.seed.clone())
    }

    /// Remembers the seed of `ciphertext` (made with key `version`), evicting the least
    /// recently used entry when full.
    pub fn insert(&self, ciphertext: &[u8], version: u32, seed: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if !inner.map.contains_key(ciphertext) && inner.map.len() >= self.capacity {
            let oldest = inner
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                inner.map.remove(&k);
            }
        }
        inner.map.insert(
            ciphertext.into(),
            Slot {
                seed: Zeroizing::new(seed.to_vec()),
                version,
                last_used: tick,
            },
        );
    }

    /// Drops the seeds of key versions below `min_version` (the key's
    /// `min_decryption_version` moved up); returns how many.
    pub fn purge_below(&self, min_version: u32) -> usize {
        let mut inner = self.lock();
        let before = inner.map.len();
        inner.map.retain(|_, s| s.version >= min_version);
        before - inner.map.len()
    }

    /// Drops every seed.
    pub fn clear(&self) {
        self.lock().map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_seed_goes_first_and_old_versions_can_be_purged() {
        let cache = SeedCache::new(2);
        cache.insert(b"a", 1, b"seed-a");
        cache.insert(b"b", 2, b"seed-b");
        assert_eq!(cache.get(b"a").unwrap().as_slice(), b"seed-a");
        cache.insert(b"c", 2, b"seed-c");
        assert!(cache.get(b"b").is_none(), "b was least recently used");
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.purge_below(2), 1);
        assert!(cache.get(b"a").is_none());
        assert_eq!(cache.get(b"c").unwrap().as_slice(), b"seed-c");
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn a_zero_capacity_cache_keeps_nothing_and_debug_shows_no_seed() {
        let cache = SeedCache::new(0);
        cache.insert(b"a", 1, b"MARKER-SEED");
        assert!(cache.get(b"a").is_none());
        let full = SeedCache::new(4);
        full.insert(b"a", 1, b"MARKER-SEED");
        assert!(!format!("{full:?}").contains("MARKER"));
    }
}
