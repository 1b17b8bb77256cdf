//! Where tokens live: the salt and hashing, entries and accessors in storage, the cache,
//! and lookups. The lookup that authenticates a request spends one use of a limited-use
//! token; other lookups, by value or by accessor, spend none.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keyhaven_crypto::{HmacKey, fill_random};
use keyhaven_storage::{ReadMostly, Store};
use keyhaven_types::token;
use zeroize::Zeroizing;

use super::{
    ACCESSOR_PREFIX, ID_PREFIX, INDEX_MARKER, REVOKING_PREFIX, SALT_PATH, TokenEntry, TokenStore,
    corrupt, expire_key,
};
use crate::clock::Clock;
use crate::error::{CryptoOp, EngineError};

/// Make a new random salt, for init.
pub(crate) fn new_salt() -> Result<Zeroizing<Vec<u8>>, EngineError> {
    let mut salt = Zeroizing::new(vec![0u8; 32]);
    fill_random(&mut salt).map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
    Ok(salt)
}

/// Storage key and value of the salt, for init.
pub(crate) fn salt_entry(salt: &[u8]) -> (String, Vec<u8>) {
    (SALT_PATH.to_owned(), salt.to_vec())
}

fn valid_accessor(a: &str) -> bool {
    a.len() == 36 && a.bytes().all(|b| b.is_ascii_hexdigit())
}

impl TokenStore {
    /// Load the store of an unsealed barrier view.
    pub(crate) async fn load(
        storage: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, EngineError> {
        let salt = Zeroizing::new(
            storage
                .get(SALT_PATH)
                .await?
                .ok_or_else(|| EngineError::Corrupt("the token salt is missing".to_owned()))?,
        );
        let store = Self::with_salt(storage, clock, &salt);
        if store.storage.get(INDEX_MARKER).await?.is_none() {
            store.build_expiry_index().await?;
        }
        Ok(store)
    }

    pub(crate) fn with_salt(storage: Arc<dyn Store>, clock: Arc<dyn Clock>, salt: &[u8]) -> Self {
        TokenStore {
            storage,
            clock,
            hasher: HmacKey::new(salt),
            cache: ReadMostly::new(HashMap::with_hasher(super::TagHasher)),
            epoch: AtomicU64::new(0),
            cubbyholes: std::sync::OnceLock::new(),
            leases: std::sync::OnceLock::new(),
            counted_at: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// Set the storage of the cubbyhole mount, whose folder `<hash>/` each token owns.
    pub(crate) fn set_cubbyholes(&self, store: Arc<dyn Store>) {
        let _ = self.cubbyholes.set(store);
    }

    /// Set the lease store, whose leases of a token end with it.
    pub(crate) fn set_leases(&self, leases: Arc<crate::lease::LeaseStore>) {
        let _ = self.leases.set(leases);
    }

    /// Whether an entry (live or not) is stored under this storage hash.
    pub(crate) async fn exists_hash(&self, hash_hex: &str) -> Result<bool, EngineError> {
        Ok(self.storage.get(&Self::id_key(hash_hex)).await?.is_some())
    }

    /// The storage of the cubbyhole mount, once set.
    pub(crate) fn cubbyholes(&self) -> Option<&Arc<dyn Store>> {
        self.cubbyholes.get()
    }

    /// Drop a changed entry from the cache, and keep lookups that read it before the
    /// change from putting the old one back. Call after the storage write.
    fn forget(&self, hash: &[u8; 32]) {
        let mut cache = self.cache.write();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        cache.remove(hash);
    }

    pub(crate) fn forget_hex(&self, hash_hex: &str) -> Result<(), EngineError> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hash_hex, &mut hash).map_err(|_| corrupt())?;
        self.forget(&hash);
        Ok(())
    }

    pub(super) fn hash(&self, token: &str) -> [u8; 32] {
        self.hasher.sign(token.as_bytes())
    }

    pub(super) fn id_key(hash_hex: &str) -> String {
        format!("{ID_PREFIX}{hash_hex}")
    }

    /// Look up a presented token; `None` if unknown, revoked or expired. Uses up one use
    /// of a limited-use token.
    pub async fn lookup(&self, token: &str) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        // Keyhaven-format tokens with a bad checksum are refused without a lookup.
        if matches!(
            token::parse(token),
            Err(token::TokenFormatError::BadChecksum | token::TokenFormatError::Malformed)
        ) || token.is_empty()
            || token.len() > 512
        {
            return Ok(None);
        }
        let hash = self.hash(token);
        let entry = self.entry_by_hash(&hash).await?;
        let Some(entry) = entry else { return Ok(None) };
        if !entry.live(self.clock.unix_seconds()) {
            return Ok(None);
        }
        if entry.num_uses > 0 {
            return self.use_once(&hash).await;
        }
        Ok(Some(entry))
    }

    /// The stored entry (live or not), through the cache.
    pub(super) async fn entry_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        if let Some(hit) = self.cache.read().get(hash) {
            return Ok(Some(hit.clone()));
        }
        let seen = self.epoch.load(Ordering::Acquire);
        let Some(bytes) = self.storage.get(&Self::id_key(&hex::encode(hash))).await? else {
            return Ok(None);
        };
        let entry: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
        let entry = Arc::new(entry);
        // Limited-use entries change on every use, and marked ones are on their way out.
        if entry.num_uses == 0 && !entry.revoking {
            let mut cache = self.cache.write();
            if self.epoch.load(Ordering::Acquire) == seen {
                if cache.len() >= 100_000 {
                    cache.clear();
                }
                cache.insert(*hash, entry.clone());
            }
        }
        Ok(Some(entry))
    }

    /// Read, change and compare-and-swap an entry until no concurrent change interferes.
    /// `change` returns `Ok(false)` to leave the entry as it is. Returns the entry as
    /// written (or as found, if left alone); `None` if there is no entry.
    pub(super) async fn update_entry(
        &self,
        hash_hex: &str,
        mut change: impl FnMut(&mut TokenEntry) -> Result<bool, EngineError>,
    ) -> Result<Option<TokenEntry>, EngineError> {
        let key = Self::id_key(hash_hex);
        for _ in 0..16 {
            let Some(bytes) = self.storage.get(&key).await? else {
                return Ok(None);
            };
            let mut entry: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
            let (old_expiry, old_revoking) = (entry.expire_time, entry.revoking);
            if !change(&mut entry)? {
                return Ok(Some(entry));
            }
            let new =
                serde_json::to_vec(&entry).map_err(|_| EngineError::Encode("a token entry"))?;
            let mut ops = vec![keyhaven_storage::Op::Put {
                key: key.clone(),
                value: new,
            }];
            // The indexes follow the entry in the same transaction: a new expiry is
            // indexed (the old one is dropped when the sweeper reaches it), and a
            // revocation begun is listed until the entry is gone.
            if let Some(exp) = entry
                .expire_time
                .filter(|_| entry.expire_time != old_expiry)
            {
                ops.push(keyhaven_storage::Op::Put {
                    key: expire_key(exp, hash_hex),
                    value: Vec::new(),
                });
            }
            if entry.revoking && !old_revoking {
                ops.push(keyhaven_storage::Op::Put {
                    key: format!("{REVOKING_PREFIX}{hash_hex}"),
                    value: Vec::new(),
                });
            }
            let tx = keyhaven_storage::Transaction {
                conditions: vec![keyhaven_storage::Condition::Equals {
                    key: key.clone(),
                    value: bytes,
                }],
                ops,
            };
            if self.storage.transact(tx).await? == keyhaven_storage::TxOutcome::Committed {
                self.forget_hex(hash_hex)?;
                return Ok(Some(entry));
            }
        }
        Err(EngineError::Unavailable(
            "too much contention on a token entry".to_owned(),
        ))
    }

    /// Spend one use of a limited-use token. The final use marks the token `revoking`
    /// (no later request can use it), and the returned entry carries the mark so the
    /// request that spent it revokes the tree when it ends
    /// ([`TokenStore::finish_request`]).
    async fn use_once(&self, hash: &[u8; 32]) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        let now = self.clock.unix_seconds();
        let mut spent = false;
        let entry = self
            .update_entry(&hex::encode(hash), |e| {
                spent = false;
                if !e.live(now) || e.num_uses == 0 {
                    return Ok(false);
                }
                e.num_uses -= 1;
                if e.num_uses == 0 {
                    e.revoking = true;
                }
                spent = true;
                Ok(true)
            })
            .await?;
        Ok(entry.filter(|_| spent).map(|mut e| {
            // Report the use count as it was before this use, as Vault does.
            e.num_uses += 1;
            Arc::new(e)
        }))
    }

    /// Look up by accessor (no use is consumed).
    pub async fn lookup_accessor(
        &self,
        accessor: &str,
    ) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        let Some((_, entry)) = self.by_accessor(accessor).await? else {
            return Ok(None);
        };
        Ok(Some(entry).filter(|e| e.live(self.clock.unix_seconds())))
    }

    /// Look up a token by accessor or by value without consuming a use.
    pub(crate) async fn lookup_accessor_or_token(
        &self,
        accessor: Option<&str>,
        token: Option<&str>,
    ) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        match (accessor, token) {
            (Some(a), _) => self.lookup_accessor(a).await,
            (None, Some(t)) => self.peek(t).await,
            (None, None) => Ok(None),
        }
    }

    pub(super) async fn by_accessor(
        &self,
        accessor: &str,
    ) -> Result<Option<([u8; 32], Arc<TokenEntry>)>, EngineError> {
        if !valid_accessor(accessor) {
            return Ok(None);
        }
        let Some(h) = self
            .storage
            .get(&format!("{ACCESSOR_PREFIX}{accessor}"))
            .await?
        else {
            return Ok(None);
        };
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&h, &mut hash).map_err(|_| corrupt())?;
        Ok(self.entry_by_hash(&hash).await?.map(|e| (hash, e)))
    }

    /// Whether `entry`'s token no longer works: deleted, being revoked or expired.
    pub(crate) async fn is_revoked(&self, entry: &TokenEntry) -> Result<bool, EngineError> {
        let Some(bytes) = self.storage.get(&Self::id_key(&entry.hash)).await? else {
            return Ok(true);
        };
        let stored: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
        Ok(!stored.live(self.clock.unix_seconds()))
    }

    /// Look up without consuming a use (for lookup/renew/revoke by value).
    pub(crate) async fn peek(&self, token: &str) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        if token.is_empty() || token.len() > 512 {
            return Ok(None);
        }
        let e = self.entry_by_hash(&self.hash(token)).await?;
        Ok(e.filter(|e| e.live(self.clock.unix_seconds())))
    }
}
