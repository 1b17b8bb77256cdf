//! An exact in-process cache of stored values for point reads.
//!
//! The values are what the store holds: barrier ciphertext, never plaintext. The cache
//! is exact (a read never returns a value older than the last acknowledged write, nor
//! older than a value any read already returned) because of three rules:
//!
//! - the process holds an exclusive lock on the database (see `SqliteStore::open`), so
//!   every write goes through this store's writer thread;
//! - before a batch's `COMMIT`, the writer removes the batch's keys from the cache and
//!   opens a commit window; after `COMMIT` returned, and before any request of the
//!   batch is answered, it closes the window. Opening and closing each advance a
//!   counter, which is odd while a window is open;
//! - a read that missed fills the cache only if the counter is even and has not moved
//!   since the miss. A read that overlapped a commit may have seen the old value while
//!   another read already saw the new one from SQLite; it does not keep it.
//!
//! Reads take the lock shared, and only their own thread's part of it
//! ([`ReadMostly`]): every request reads here, and with one lock
//! word requests on different CPUs would pass its cache line back and forth. A hit is
//! copied out under the lock rather than handed out as a shared reference, for the
//! same reason (its reference count). Fills and commit windows take the whole lock.
//!
//! Memory is bounded by a byte budget (keys, values and a fixed per-entry overhead);
//! when a fill goes over it, the oldest entries go first. Values larger than an eighth
//! of the budget are never kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use keyhaven_storage::ReadMostly;

/// What a cached entry costs beyond its key and value bytes (map slot, queue slot,
/// reference counts), rounded up.
const ENTRY_OVERHEAD: usize = 96;

/// The outcome of [`ReadCache::get`].
pub(crate) enum Lookup {
    /// The value at the key.
    Hit(Vec<u8>),
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
    state: ReadMostly<State>,
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
            state: ReadMostly::new(State::default()),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Lookup {
        let state = self.state.read();
        match state.entries.get(key) {
            Some(entry) => Lookup::Hit(entry.value.to_vec()),
            None => Lookup::Miss(Ticket(state.batches)),
        }
    }

    /// Keep `value` (read from the database after the miss that gave `ticket`) unless
    /// a commit was under way at the miss or began since, or the value is too large.
    pub(crate) fn fill(&self, key: &str, value: &[u8], ticket: Ticket) {
        let charge = cost(key, value);
        if charge > self.budget / 8 {
            return;
        }
        let mut state = self.state.write();
        if state.batches != ticket.0
            || !ticket.0.is_multiple_of(2)
            || state.entries.contains_key(key)
        {
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

    /// Open a commit window: forget `keys` and refuse every fill until
    /// [`ReadCache::committed`]. The writer thread calls this before `COMMIT`.
    pub(crate) fn committing<'k>(&self, keys: impl Iterator<Item = &'k str>) {
        let mut state = self.state.write();
        debug_assert!(
            state.batches.is_multiple_of(2),
            "commit windows do not nest"
        );
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

    /// Close the commit window (whether the batch committed or failed). The writer
    /// thread calls this after `COMMIT` and before answering any request of the batch.
    /// No key of the batch can have been filled meanwhile.
    pub(crate) fn committed(&self) {
        let mut state = self.state.write();
        debug_assert!(!state.batches.is_multiple_of(2), "no commit window is open");
        state.batches += 1;
    }

    /// Entries and bytes held, for tests.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let state = self.state.read();
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

    fn commit(cache: &ReadCache, key: &str) {
        cache.committing([key].into_iter());
        cache.committed();
    }

    fn hit(cache: &ReadCache, key: &str) -> Vec<u8> {
        match cache.get(key) {
            Lookup::Hit(v) => v,
            Lookup::Miss(_) => panic!("{key} should be cached"),
        }
    }

    #[test]
    fn a_fill_is_served_until_a_commit_touches_the_key() {
        let cache = ReadCache::new(1 << 20);
        let t = miss(&cache, "a");
        cache.fill("a", b"one", t);
        assert_eq!(hit(&cache, "a"), b"one");
        commit(&cache, "b");
        assert_eq!(hit(&cache, "a"), b"one", "other keys stay");
        commit(&cache, "a");
        miss(&cache, "a");
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn a_read_that_overlapped_a_commit_does_not_fill() {
        let cache = ReadCache::new(1 << 20);
        // The read missed, then a batch (which may have changed the key) committed
        // before the read's value came back: that value may be stale.
        let t = miss(&cache, "a");
        commit(&cache, "a");
        cache.fill("a", b"maybe stale", t);
        let t = miss(&cache, "a");
        cache.fill("a", b"fresh", t);
        assert_eq!(hit(&cache, "a"), b"fresh");
    }

    #[test]
    fn nothing_is_filled_while_a_commit_is_under_way() {
        let cache = ReadCache::new(1 << 20);
        let t = miss(&cache, "a");
        cache.fill("a", b"old", t);
        cache.committing(["a"].into_iter());
        // A read during the window finds the key gone and reads SQLite, which may still
        // hold the old value while another read already sees the new one: not kept.
        let t = miss(&cache, "a");
        cache.fill("a", b"old", t);
        miss(&cache, "a");
        cache.committed();
        miss(&cache, "a");
        let t = miss(&cache, "a");
        cache.fill("a", b"new", t);
        assert_eq!(hit(&cache, "a"), b"new");
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
            commit(&cache, "hot");
            let queue = cache.state.read().queue.len();
            assert!(queue <= 1025 + 1, "round {round}: queue {queue}");
        }
    }
}
