//! An exact in-process cache of stored values for point reads.
//!
//! The values are what the store holds: barrier ciphertext, never plaintext. The cache
//! is exact (a read never returns a value older than the last acknowledged write)
//! because of three rules:
//!
//! - the process holds an exclusive lock on the database (see `SqliteStore::open`), so
//!   every write goes through this store's writer thread;
//! - the writer thread removes the keys of a batch from the cache, and counts the
//!   batch, after `COMMIT` returned and before any request of the batch is answered;
//! - a read that missed fills the cache only if no batch was counted between the
//!   moment it missed and the moment it fills. A read that started before a commit
//!   may have seen the old value; the count tells it not to keep that value.
//!
//! Memory is bounded by a byte budget (keys, values and a fixed per-entry overhead);
//! when a fill goes over it, the oldest entries go first. Values larger than an eighth
//! of the budget are never kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

/// What a cached entry costs beyond its key and value bytes (map slot, queue slot,
/// reference counts), rounded up.
const ENTRY_OVERHEAD: usize = 96;

/// The outcome of [`ReadCache::get`].
pub(crate) enum Lookup {
    /// The value at the key.
    Hit(Arc<[u8]>),
    /// Not cached: read the database, then offer the value to [`ReadCache::fill`] with
    /// this ticket.
    Miss(Ticket),
}

/// The batch count seen at a miss.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

/// See the module docs.
pub(crate) struct ReadCache {
    budget: usize,
    state: Mutex<State>,
}

struct Entry {
    value: Arc<[u8]>,
    /// Identifies this fill in the eviction queue; a queue slot whose id differs from
    /// the entry's is stale.
    id: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<Arc<str>, Entry>,
    /// Keys in the order they were filled, oldest first.
    queue: VecDeque<(Arc<str>, u64)>,
    bytes: usize,
    /// Write batches committed so far.
    batches: u64,
    next_id: u64,
}

fn cost(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl ReadCache {
    /// A cache holding at most `budget` bytes; 0 keeps nothing.
    pub(crate) fn new(budget: usize) -> Self {
        ReadCache {
            budget,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Lookup {
        let state = self.state.lock();
        match state.entries.get(key) {
            Some(entry) => Lookup::Hit(Arc::clone(&entry.value)),
            None => Lookup::Miss(Ticket(state.batches)),
        }
    }

    /// Keep `value` (read from the database after the miss that gave `ticket`) unless
    /// a batch was committed since, or it is too large.
    pub(crate) fn fill(&self, key: &str, value: &[u8], ticket: Ticket) {
        let charge = cost(key, value);
        if charge > self.budget / 8 {
            return;
        }
        let mut state = self.state.lock();
        if state.batches != ticket.0 || state.entries.contains_key(key) {
            return;
        }
        let key: Arc<str> = Arc::from(key);
        let id = state.next_id;
        state.next_id += 1;
        state.entries.insert(
            Arc::clone(&key),
            Entry {
                value: Arc::from(value),
                id,
            },
        );
        state.queue.push_back((key, id));
        state.bytes += charge;
        while state.bytes > self.budget {
            let Some((old, old_id)) = state.queue.pop_front() else {
                break;
            };
            if state.entries.get(&old).is_some_and(|e| e.id == old_id)
                && let Some(entry) = state.entries.remove(&old)
            {
                state.bytes -= cost(&old, &entry.value);
            }
        }
    }

    /// Forget `keys` and count one committed batch. The writer thread calls this after
    /// `COMMIT` and before answering any request of the batch.
    pub(crate) fn committed<'k>(&self, keys: impl Iterator<Item = &'k str>) {
        let mut state = self.state.lock();
        state.batches += 1;
        for key in keys {
            if let Some(entry) = state.entries.remove(key) {
                state.bytes -= cost(key, &entry.value);
            }
        }
        // Removed keys leave stale queue slots behind; drop them once they outnumber
        // the live ones, so the queue stays proportional to the cache.
        if state.queue.len() > 2 * state.entries.len() + 1024 {
            let State { entries, queue, .. } = &mut *state;
            queue.retain(|(key, id)| entries.get(key).is_some_and(|e| e.id == *id));
        }
    }

    /// Entries and bytes held, for tests.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.entries.len(), state.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miss(cache: &ReadCache, key: &str) -> Ticket {
        match cache.get(key) {
            Lookup::Miss(t) => t,
            Lookup::Hit(_) => panic!("{key} should not be cached"),
        }
    }

    fn hit(cache: &ReadCache, key: &str) -> Vec<u8> {
        match cache.get(key) {
            Lookup::Hit(v) => v.to_vec(),
            Lookup::Miss(_) => panic!("{key} should be cached"),
        }
    }

    #[test]
    fn a_fill_is_served_until_a_commit_touches_the_key() {
        let cache = ReadCache::new(1 << 20);
        let t = miss(&cache, "a");
        cache.fill("a", b"one", t);
        assert_eq!(hit(&cache, "a"), b"one");
        cache.committed(["b"].into_iter());
        assert_eq!(hit(&cache, "a"), b"one", "other keys stay");
        cache.committed(["a"].into_iter());
        miss(&cache, "a");
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn a_read_that_overlapped_a_commit_does_not_fill() {
        let cache = ReadCache::new(1 << 20);
        // The read missed, then a batch (which may have changed the key) committed
        // before the read's value came back: that value may be stale.
        let t = miss(&cache, "a");
        cache.committed(["a"].into_iter());
        cache.fill("a", b"maybe stale", t);
        let t = miss(&cache, "a");
        cache.fill("a", b"fresh", t);
        assert_eq!(hit(&cache, "a"), b"fresh");
    }

    #[test]
    fn the_budget_evicts_oldest_first_and_skips_large_values() {
        let per = cost("k0", &[0; 100]);
        let cache = ReadCache::new(per * 10);
        for i in 0..12 {
            let key = format!("k{i:x}");
            let t = miss(&cache, &key);
            cache.fill(&key, &[0; 100], t);
        }
        let (n, bytes) = cache.usage();
        assert_eq!(n, 10);
        assert!(bytes <= per * 10);
        miss(&cache, "k0");
        miss(&cache, "k1");
        hit(&cache, "k2");
        hit(&cache, "kb");
        let t = miss(&cache, "big");
        cache.fill("big", &vec![0; per * 2], t);
        miss(&cache, "big");
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = ReadCache::new(0);
        let t = miss(&cache, "a");
        cache.fill("a", b"x", t);
        miss(&cache, "a");
    }

    #[test]
    fn stale_queue_slots_are_compacted() {
        let cache = ReadCache::new(1 << 20);
        for round in 0..3000 {
            let t = miss(&cache, "hot");
            cache.fill("hot", b"v", t);
            cache.committed(["hot"].into_iter());
            let queue = cache.state.lock().queue.len();
            assert!(queue <= 1025 + 1, "round {round}: queue {queue}");
        }
    }
}
