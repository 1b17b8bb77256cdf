//! Decoded metadata records, kept for reads.
//!
//! A read of a secret starts with its metadata record (which versions exist, which is
//! current, whether it is deleted). Decoding it from storage (a barrier decryption and
//! a JSON decode) was half of a read's own work; this cache keeps the decoded record of
//! each path read, on the replica that makes every change to the mount: the active one.
//! A standby's view of storage is read-only ([`Store::read_only`](keyhaven_storage::Store::read_only)),
//! and KV changes are not announced to it, so its mounts keep nothing.
//!
//! Metadata records hold no secret values (custom metadata is not secret, as in
//! Vault); payloads are never kept.
//!
//! Exactness, as the SQLite read cache's: every change goes through the mount's
//! [`commit`](super::KvBackend) and brackets its transaction with
//! [`MetaCache::writing`]: the changed keys are dropped before the transaction starts and
//! again once it has ended (or was abandoned), and the generation moves both times. A
//! read that missed keeps what it decoded only if no change was under way when it
//! started and none began since ([`MetaCache::ticket`], [`MetaCache::fill`]), so a
//! record read before a change can never be kept after it.

use std::collections::HashMap;
use std::sync::Arc;

use keyhaven_storage::{Op, ReadMostly};

use super::record::KeyRecord;

/// At most this many bytes of encoded records are kept; past it, everything is dropped
/// and the cache fills again with what is read.
const BUDGET_BYTES: usize = 16 << 20;

/// What an entry costs beyond its encoded record (key, map slot, decoded structure).
const ENTRY_OVERHEAD: usize = 128;

#[derive(Default)]
struct State {
    /// Each record with what it costs (its encoded size, key and [`ENTRY_OVERHEAD`]).
    entries: HashMap<String, (Arc<KeyRecord>, usize)>,
    /// What `entries` costs in all.
    bytes: usize,
    /// Moves when a change starts and when it ends.
    generation: u64,
    /// Changes under way.
    writing: usize,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct MetaCache {
    state: ReadMostly<State>,
}

impl std::fmt::Debug for MetaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.read();
        f.debug_struct("MetaCache")
            .field("entries", &s.entries.len())
            .field("bytes", &s.bytes)
            .finish()
    }
}

impl MetaCache {
    /// The decoded record at storage key `key`, if kept.
    pub(super) fn get(&self, key: &str) -> Option<Arc<KeyRecord>> {
        self.state.read().entries.get(key).map(|(r, _)| r.clone())
    }

    /// Taken before reading storage: what [`MetaCache::fill`] needs to keep the result;
    /// `None` while a change is under way (the result is then not kept).
    pub(super) fn ticket(&self) -> Option<u64> {
        let s = self.state.read();
        (s.writing == 0).then_some(s.generation)
    }

    /// Keep `record` (decoded from `encoded_len` bytes read at `key`) if nothing
    /// changed since `ticket` was taken.
    pub(super) fn fill(&self, key: &str, record: &Arc<KeyRecord>, encoded_len: usize, ticket: u64) {
        let cost = encoded_len
            .saturating_add(key.len())
            .saturating_add(ENTRY_OVERHEAD);
        if cost > BUDGET_BYTES {
            return;
        }
        let mut s = self.state.write();
        if s.writing != 0 || s.generation != ticket {
            return;
        }
        if s.bytes.saturating_add(cost) > BUDGET_BYTES {
            s.entries.clear();
            s.bytes = 0;
        }
        s.forget_one(key);
        s.entries.insert(key.to_owned(), (record.clone(), cost));
        s.bytes = s.bytes.saturating_add(cost);
    }

    /// A change of the keys `ops` writes is about to be made; it is over when the guard
    /// is dropped (committed, refused, failed or abandoned alike).
    pub(super) fn writing(&self, ops: &[Op]) -> Writing<'_> {
        let keys: Vec<String> = ops.iter().map(|op| op.key().to_owned()).collect();
        {
            let mut s = self.state.write();
            s.writing = s.writing.saturating_add(1);
            s.generation = s.generation.wrapping_add(1);
            s.forget(&keys);
        }
        Writing { cache: self, keys }
    }
}

impl State {
    fn forget(&mut self, keys: &[String]) {
        for key in keys {
            self.forget_one(key);
        }
    }

    fn forget_one(&mut self, key: &str) {
        if let Some((_, cost)) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(cost);
        }
    }
}

/// A change under way; see [`MetaCache::writing`].
pub(super) struct Writing<'a> {
    cache: &'a MetaCache,
    keys: Vec<String>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut s = self.cache.state.write();
        s.writing = s.writing.saturating_sub(1);
        s.generation = s.generation.wrapping_add(1);
        s.forget(&self.keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(versions: u64) -> Arc<KeyRecord> {
        let mut r = KeyRecord::new(1);
        r.current_version = versions;
        Arc::new(r)
    }

    fn put(key: &str) -> Op {
        Op::Put {
            key: key.to_owned(),
            value: Vec::new(),
        }
    }

    #[test]
    fn a_read_is_kept_until_its_key_changes() {
        let cache = MetaCache::default();
        let t = cache.ticket().expect("no change under way");
        cache.fill("meta/a", &record(1), 10, t);
        cache.fill("meta/b", &record(2), 10, t);
        assert_eq!(cache.get("meta/a").map(|r| r.current_version), Some(1));
        drop(cache.writing(&[put("meta/a")]));
        assert!(cache.get("meta/a").is_none(), "a changed key is dropped");
        assert_eq!(
            cache.get("meta/b").map(|r| r.current_version),
            Some(2),
            "other keys stay"
        );
    }

    #[test]
    fn a_read_that_overlaps_a_change_is_not_kept() {
        let cache = MetaCache::default();
        // Read started before the change began, finished after it ended.
        let t = cache.ticket().expect("no change under way");
        drop(cache.writing(&[put("meta/a")]));
        cache.fill("meta/a", &record(1), 10, t);
        assert!(cache.get("meta/a").is_none());
        // Read started while a change (of any key) was under way.
        let change = cache.writing(&[put("meta/b")]);
        assert!(cache.ticket().is_none());
        drop(change);
        // Read started during one change and finished during another.
        let first = cache.writing(&[put("meta/c")]);
        let t = cache.state.read().generation;
        drop(first);
        let _second = cache.writing(&[put("meta/d")]);
        cache.fill("meta/a", &record(1), 10, t);
        assert!(cache.get("meta/a").is_none());
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let cache = MetaCache::default();
        let t = cache.ticket().expect("no change under way");
        cache.fill("meta/huge", &record(1), BUDGET_BYTES, t);
        assert!(cache.get("meta/huge").is_none(), "larger than the budget");
        let each = BUDGET_BYTES / 4;
        for key in ["meta/1", "meta/2", "meta/3"] {
            cache.fill(key, &record(1), each, t);
        }
        assert!(cache.get("meta/1").is_some());
        cache.fill("meta/4", &record(1), each, t);
        assert!(
            cache.get("meta/1").is_none() && cache.get("meta/4").is_some(),
            "over the budget, the cache starts again"
        );
        assert!(cache.state.read().bytes <= BUDGET_BYTES);
        drop(cache.writing(&[put("meta/4")]));
        assert_eq!(
            cache.state.read().bytes,
            0,
            "a dropped entry gives its cost back"
        );
    }
}
