//! [`MemStore`]: the whole contract over a `BTreeMap`, for tests and dev mode.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::ReadMostly;
use async_trait::async_trait;

use crate::listing::{PageBuilder, Step};
use crate::{
    Condition, Op, StorageError, Store, Transaction, TxOutcome, validate_key, validate_prefix,
};

/// An in-memory [`Store`]: a `BTreeMap` behind a read-write lock.
///
/// Nothing is persisted; "durable" means "visible to every later call on this value".
/// Every call completes without awaiting, and the lock is never held across an await.
/// Cloning is not offered: share it through an `Arc`. Reads lock only their own
/// thread's shard of the lock (every `--dev` request reads here, and with one lock word
/// requests on different CPUs pass its cache line back and forth); writes lock all.
#[derive(Default)]
pub struct MemStore {
    map: ReadMostly<BTreeMap<String, Vec<u8>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        MemStore::default()
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }

    /// Every key it holds, in order (for tests and diagnostics; values stay inside).
    pub fn keys(&self) -> Vec<String> {
        self.map.read().keys().cloned().collect()
    }
}

// Never print values: only how many keys there are.
impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore")
            .field("keys", &self.len())
            .finish()
    }
}

fn holds(map: &BTreeMap<String, Vec<u8>>, condition: &Condition) -> bool {
    match condition {
        Condition::Absent { key } => !map.contains_key(key.as_str()),
        Condition::Equals { key, value } => map.get(key.as_str()) == Some(value),
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        validate_key(key)?;
        Ok(self.map.read().get(key).cloned())
    }

    fn get_ready(&self, key: &str) -> Option<Result<Option<Vec<u8>>, StorageError>> {
        Some(validate_key(key).map(|()| self.map.read().get(key).cloned()))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        validate_key(key)?;
        self.map.write().insert(key.to_owned(), value);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        self.map.write().remove(key);
        Ok(())
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        validate_prefix(prefix)?;
        let (mut page, mut lower) = PageBuilder::new(prefix, after, limit);
        let map = self.map.read();
        'seek: while !page.is_full() {
            let range = map.range::<str, _>((Bound::Included(lower.as_str()), Bound::Unbounded));
            for key in range.map(|(key, _)| key) {
                match page.push(key) {
                    Step::Continue => {}
                    Step::Seek(next) => {
                        lower = next;
                        continue 'seek;
                    }
                    Step::Done => break 'seek,
                }
            }
            break;
        }
        drop(map);
        Ok(page.into_names())
    }

    async fn transact(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        for condition in &tx.conditions {
            validate_key(condition.key())?;
        }
        for op in &tx.ops {
            validate_key(op.key())?;
        }
        let mut map = self.map.write();
        if let Some(index) = tx.conditions.iter().position(|c| !holds(&map, c)) {
            return Ok(TxOutcome::ConditionFailed { index });
        }
        for op in tx.ops {
            match op {
                Op::Put { key, value } => {
                    map.insert(key, value);
                }
                Op::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
        Ok(TxOutcome::Committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_values() {
        let store = MemStore::new();
        store
            .map
            .write()
            .insert("k".into(), b"opaque-value".to_vec());
        let shown = format!("{store:?}");
        assert_eq!(shown, "MemStore { keys: 1 }");
    }
}
