//! [`ScopedStore`]: a prefixed view of a store that its holder cannot escape.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    Condition, Op, StorageError, Store, Transaction, TxOutcome, validate_key, validate_prefix,
};

/// A view of another [`Store`] confined to the keys under one prefix.
///
/// Every key, condition key, op key and list prefix is validated as a *relative* key
/// with the usual rules ([`validate_key`], [`validate_prefix`]) and then the scope's
/// prefix is prepended; nothing is normalised or stripped. Stores compare keys as
/// bytes and give no meaning to `..` or `//`, so every key this view touches starts
/// with its prefix: `"../x"` is just the key `prefix + "../x"`. Listing returns names
/// relative to the listed prefix, which need no rewriting.
///
/// The prefix is non-empty and ends with `/`, so a scope `app/` cannot see `app0` or
/// `app.x`. The full key must still fit [`crate::MAX_KEY_LEN`], so relative keys are
/// limited to `MAX_KEY_LEN - prefix().len()` bytes. Nested scopes share the underlying store (no double indirection).
#[derive(Clone)]
pub struct ScopedStore {
    inner: Arc<dyn Store>,
    prefix: String,
}

impl ScopedStore {
    /// A view of `inner` confined to `prefix`, which must be a valid key ending with `/`.
    pub fn new(inner: Arc<dyn Store>, prefix: impl Into<String>) -> Result<Self, StorageError> {
        let prefix = prefix.into();
        check_scope_prefix(&prefix)?;
        Ok(ScopedStore { inner, prefix })
    }

    /// The prefix this view prepends, e.g. `"logical/6f1c…/"`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A view of the sub-scope `sub` (relative to this one, ending with `/`).
    pub fn scope(&self, sub: &str) -> Result<ScopedStore, StorageError> {
        check_scope_prefix(sub)?;
        let prefix = format!("{}{sub}", self.prefix);
        validate_key(&prefix)?;
        Ok(ScopedStore {
            inner: Arc::clone(&self.inner),
            prefix,
        })
    }

    /// The full key of the relative `key`, after checking both.
    fn full_key(&self, key: &str) -> Result<String, StorageError> {
        validate_key(key)?;
        // Every call of a mounted backend comes through here: no formatting machinery.
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        validate_key(&full)?;
        Ok(full)
    }
}

fn check_scope_prefix(prefix: &str) -> Result<(), StorageError> {
    validate_key(prefix)?;
    if !prefix.ends_with('/') {
        return Err(StorageError::InvalidKey {
            key: prefix.chars().take(128).collect(),
            reason: "a scope prefix must end with '/'",
        });
    }
    Ok(())
}

impl std::fmt::Debug for ScopedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedStore")
            .field("prefix", &self.prefix)
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl Store for ScopedStore {
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let key = self.full_key(key)?;
        self.inner.get(&key).await
    }

    fn get_ready(&self, key: &str) -> Option<Result<Option<Vec<u8>>, StorageError>> {
        match self.full_key(key) {
            Ok(key) => self.inner.get_ready(&key),
            Err(e) => Some(Err(e)),
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        let key = self.full_key(key)?;
        self.inner.put(&key, value).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let key = self.full_key(key)?;
        self.inner.delete(&key).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        validate_prefix(prefix)?;
        let full = format!("{}{prefix}", self.prefix);
        validate_key(&full)?;
        self.inner.list_page(&full, after, limit).await
    }

    async fn transact(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        let mut conditions = Vec::with_capacity(tx.conditions.len());
        for condition in tx.conditions {
            conditions.push(match condition {
                Condition::Absent { key } => Condition::Absent {
                    key: self.full_key(&key)?,
                },
                Condition::Equals { key, value } => Condition::Equals {
                    key: self.full_key(&key)?,
                    value,
                },
            });
        }
        let mut ops = Vec::with_capacity(tx.ops.len());
        for op in tx.ops {
            ops.push(match op {
                Op::Put { key, value } => Op::Put {
                    key: self.full_key(&key)?,
                    value,
                },
                Op::Delete { key } => Op::Delete {
                    key: self.full_key(&key)?,
                },
            });
        }
        self.inner.transact(Transaction { conditions, ops }).await
    }

    // Forwarded so that a backend with a cheaper native compare-and-swap keeps it.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StorageError> {
        let key = self.full_key(key)?;
        self.inner.compare_and_swap(&key, expected, new).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;

    fn inner() -> Arc<dyn Store> {
        Arc::new(MemStore::new())
    }

    #[test]
    fn prefix_rules() {
        assert!(ScopedStore::new(inner(), "").is_err());
        assert!(ScopedStore::new(inner(), "app").is_err());
        assert!(ScopedStore::new(inner(), "/app/").is_err());
        assert!(ScopedStore::new(inner(), "a\0/").is_err());
        let scope = ScopedStore::new(inner(), "app/").unwrap();
        assert_eq!(scope.prefix(), "app/");
        assert_eq!(scope.scope("kv/").unwrap().prefix(), "app/kv/");
        assert!(scope.scope("").is_err());
        assert!(scope.scope("kv").is_err());
        assert!(scope.scope("/kv/").is_err());
    }

    #[test]
    fn full_key_checks_relative_and_full() {
        let scope = ScopedStore::new(inner(), "app/").unwrap();
        assert_eq!(scope.full_key("../x").unwrap(), "app/../x");
        assert!(scope.full_key("/x").is_err());
        assert!(scope.full_key("").is_err());
        let long = "k".repeat(crate::MAX_KEY_LEN - 1);
        assert!(
            scope.full_key(&long).is_err(),
            "full key longer than MAX_KEY_LEN"
        );
    }
}
