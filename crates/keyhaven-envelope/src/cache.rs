//! An optional cache of data keys, for many small messages under the same KEKs and context.
//!
//! A cached data key is reused for at most `max_uses` messages and for at most `max_age`
//! after the KEKs produced it; each message still has its own random message id, so its
//! content key, nonces and header MAC key differ. Entries zeroize on drop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keyhaven_crypto::SecretKey;

use crate::format::{ALG_AES256GCM_HKDF_SHA256_COMMIT, EncryptionContext, WrappedKey, wrap_aad};
use crate::kek::KekProvider;

struct Entry {
    dek: SecretKey,
    wrapped: Vec<WrappedKey>,
    created: Instant,
    uses: u64,
}

/// A bounded data-key cache.
pub struct DataKeyCache {
    max_uses: u64,
    max_age: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<Vec<u8>, Entry>>,
}

impl std::fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyCache")
            .field("max_uses", &self.max_uses)
            .field("max_age", &self.max_age)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl DataKeyCache {
    /// A cache whose data keys serve at most `max_uses` messages each (at least 1) and live
    /// at most `max_age`, holding at most `max_entries` keys.
    pub fn new(max_uses: u64, max_age: Duration, max_entries: usize) -> Self {
        Self {
            max_uses: max_uses.max(1),
            max_age,
            max_entries: max_entries.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn key_for(keks: &[&dyn KekProvider], context: &EncryptionContext) -> Vec<u8> {
        let mut key = wrap_aad(ALG_AES256GCM_HKDF_SHA256_COMMIT, context);
        for k in keks {
            key.push(0);
            key.extend_from_slice(k.label().as_bytes());
        }
        key
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Entry>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A use of the cached key for `key`, if one is within bounds.
    pub(crate) fn take(&self, key: &[u8]) -> Option<(SecretKey, Vec<WrappedKey>)> {
        let mut map = self.lock();
        let fresh = map
            .get(key)
            .is_some_and(|e| e.uses < self.max_uses && e.created.elapsed() < self.max_age);
        if !fresh {
            map.remove(key);
            return None;
        }
        let e = map.get_mut(key)?;
        e.uses += 1;
        Some((e.dek.try_clone(), e.wrapped.clone()))
    }

    /// Caches a new key, counted as used once.
    pub(crate) fn put(&self, key: Vec<u8>, dek: &SecretKey, wrapped: &[WrappedKey]) {
        let mut map = self.lock();
        map.retain(|_, e| e.uses < self.max_uses && e.created.elapsed() < self.max_age);
        while map.len() >= self.max_entries {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.created)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            key,
            Entry {
                dek: dek.try_clone(),
                wrapped: wrapped.to_vec(),
                created: Instant::now(),
                uses: 1,
            },
        );
    }

    /// How many data keys are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
