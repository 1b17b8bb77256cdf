//! The barrier: every value stored by the engine passes through here and is encrypted
//! with the active keyring term, bound to its storage path.
//!
//! Key hierarchy (as in Vault): the **unseal key** (split into Shamir shares, never
//! stored) encrypts the **root key**; the root key encrypts the **keyring**; keyring terms
//! encrypt everything else. Rotating the keyring (`sys/rotate`) adds a term; entries
//! written under older terms stay readable and are re-encrypted when next written.
//!
//! Raw storage layout of the seal (outside the barrier):
//! - `core/seal-config`: JSON seal configuration (type, shares, threshold); not secret;
//! - `core/root-key`: the root key, sealed with the unseal key (AAD: path);
//! - `core/keyring`: the keyring, sealed with the root key (AAD: path).
//!
//! These three keys are reserved: the barrier refuses to read or write them as ordinary
//! entries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use keyhaven_crypto::{AeadAlgorithm, AeadKey, SecretBytes, SecretKey, barrier};
use keyhaven_storage::{Condition, Op, ReadMostly, StorageError, Store, Transaction, TxOutcome};
use parking_lot::RwLock;
use zeroize::Zeroizing;

use crate::error::{CryptoOp, EngineError};
use crate::metrics::{BarrierOp, Metrics};

/// Raw key of the seal configuration.
pub(crate) const SEAL_CONFIG_PATH: &str = "core/seal-config";
/// Raw key of the root key sealed by the unseal key.
pub(crate) const ROOT_KEY_PATH: &str = "core/root-key";
/// Raw key of the keyring sealed by the root key.
pub(crate) const KEYRING_PATH: &str = "core/keyring";
/// Raw key of the recovery key's check value (auto-unseal only).
pub(crate) const RECOVERY_KEY_PATH: &str = "core/recovery-key";
/// What the recovery check value encrypts: a fixed text, so the record proves knowledge
/// of the recovery key and carries nothing else.
const RECOVERY_CHECK_TEXT: &[u8] = b"keyhaven recovery key check v1";

/// The term number used for entries sealed directly with the root or unseal key.
const SEAL_TERM: u32 = 0;
const KEYRING_FORMAT: u8 = 1;

fn is_reserved(key: &str) -> bool {
    matches!(
        key,
        SEAL_CONFIG_PATH | ROOT_KEY_PATH | KEYRING_PATH | RECOVERY_KEY_PATH
    )
}

/// One keyring term.
struct Term {
    key: SecretKey,
    aead: AeadKey,
    installed_unix: i64,
}

/// The keyring: every term ever installed, and the active one.
pub(crate) struct Keyring {
    terms: BTreeMap<u32, Term>,
    active: u32,
}

impl Keyring {
    /// A keyring with one fresh term.
    pub(crate) fn generate(now_unix: i64) -> Result<Self, EngineError> {
        let key =
            SecretKey::generate().map_err(|_| EngineError::Crypto(CryptoOp::KeyGeneration))?;
        let mut kr = Keyring {
            terms: BTreeMap::new(),
            active: 1,
        };
        kr.insert(1, key, now_unix)?;
        Ok(kr)
    }

    fn insert(
        &mut self,
        term: u32,
        key: SecretKey,
        installed_unix: i64,
    ) -> Result<(), EngineError> {
        let aead = AeadKey::new(AeadAlgorithm::Aes256Gcm, &key)
            .map_err(|_| EngineError::Crypto(CryptoOp::KeySetup))?;
        self.terms.insert(
            term,
            Term {
                key,
                aead,
                installed_unix,
            },
        );
        Ok(())
    }

    /// A copy of this keyring with one more term, made active.
    fn rotated(&self, now_unix: i64) -> Result<Self, EngineError> {
        let mut next = Keyring {
            terms: BTreeMap::new(),
            active: self.active,
        };
        for (&t, term) in &self.terms {
            next.insert(t, term.key.try_clone(), term.installed_unix)?;
        }
        let new_term = self
            .terms
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .saturating_add(1);
        let key =
            SecretKey::generate().map_err(|_| EngineError::Crypto(CryptoOp::KeyGeneration))?;
        next.insert(new_term, key, now_unix)?;
        next.active = new_term;
        Ok(next)
    }

    /// Encode: format ‖ active(u32) ‖ count(u32) ‖ { term(u32) ‖ installed(i64) ‖ key(32) }*.
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(9 + self.terms.len() * 44));
        out.push(KEYRING_FORMAT);
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(self.terms.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for (t, term) in &self.terms {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&term.installed_unix.to_be_bytes());
            out.extend_from_slice(term.key.expose_secret());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let bad = || EngineError::Corrupt("keyring record is malformed".to_owned());
        let mut r = Reader(bytes);
        if r.take::<1>().ok_or_else(bad)? != [KEYRING_FORMAT] {
            return Err(EngineError::Corrupt(
                "keyring record has an unknown format".to_owned(),
            ));
        }
        let active = u32::from_be_bytes(r.take::<4>().ok_or_else(bad)?);
        let count = u32::from_be_bytes(r.take::<4>().ok_or_else(bad)?);
        let mut kr = Keyring {
            terms: BTreeMap::new(),
            active,
        };
        for _ in 0..count {
            let term = u32::from_be_bytes(r.take::<4>().ok_or_else(bad)?);
            let installed = i64::from_be_bytes(r.take::<8>().ok_or_else(bad)?);
            let key = SecretKey::from_bytes(r.take::<32>().ok_or_else(bad)?);
            kr.insert(term, key, installed)?;
        }
        if !r.0.is_empty() || !kr.terms.contains_key(&active) {
            return Err(bad());
        }
        Ok(kr)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }
}

/// Seal `root` under the unseal key for storage at [`ROOT_KEY_PATH`].
pub(crate) fn seal_root_key(unseal: &SecretKey, root: &SecretKey) -> Result<Vec<u8>, EngineError> {
    let aead = AeadKey::new(AeadAlgorithm::Aes256Gcm, unseal)
        .map_err(|_| EngineError::Crypto(CryptoOp::KeySetup))?;
    barrier::seal(SEAL_TERM, &aead, ROOT_KEY_PATH, root.expose_secret())
        .map_err(|_| EngineError::Crypto(CryptoOp::Encrypt))
}

/// Open the root key with a candidate unseal key; `None` if the candidate is wrong.
pub(crate) fn open_root_key(
    unseal: &SecretBytes,
    sealed: &[u8],
) -> Result<Option<SecretKey>, EngineError> {
    let Ok(candidate) = SecretKey::from_slice(unseal.expose_secret()) else {
        return Ok(None);
    };
    let aead = AeadKey::new(AeadAlgorithm::Aes256Gcm, &candidate)
        .map_err(|_| EngineError::Crypto(CryptoOp::KeySetup))?;
    match barrier::open(&aead, ROOT_KEY_PATH, sealed) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            SecretKey::from_slice(&bytes)
                .map(Some)
                .map_err(|_| EngineError::Corrupt("root key has the wrong length".to_owned()))
        }
        Err(_) => Ok(None),
    }
}

/// The recovery key's check value, for storage at [`RECOVERY_KEY_PATH`].
pub(crate) fn seal_recovery_check(recovery: &SecretKey) -> Result<Vec<u8>, EngineError> {
    let aead = AeadKey::new(AeadAlgorithm::Aes256Gcm, recovery)
        .map_err(|_| EngineError::Crypto(CryptoOp::KeySetup))?;
    barrier::seal(SEAL_TERM, &aead, RECOVERY_KEY_PATH, RECOVERY_CHECK_TEXT)
        .map_err(|_| EngineError::Crypto(CryptoOp::Encrypt))
}

/// Whether `candidate` opens the recovery check value `sealed`.
pub(crate) fn recovery_check_opens(
    candidate: &SecretBytes,
    sealed: &[u8],
) -> Result<bool, EngineError> {
    let Ok(candidate) = SecretKey::from_slice(candidate.expose_secret()) else {
        return Ok(false);
    };
    let aead = AeadKey::new(AeadAlgorithm::Aes256Gcm, &candidate)
        .map_err(|_| EngineError::Crypto(CryptoOp::KeySetup))?;
    Ok(barrier::open(&aead, RECOVERY_KEY_PATH, sealed)
        .is_ok_and(|plain| keyhaven_crypto::ct_eq(&plain, RECOVERY_CHECK_TEXT)))
}

/// Key status as `sys/key-status` reports it.
#[derive(Debug, Clone, Copy)]
pub struct KeyStatus {
    /// The active term.
    pub term: u32,
    /// When the active term was installed (Unix seconds).
    pub installed_unix: i64,
    /// Encryptions with the active term since this server unsealed.
    pub encryptions: u64,
}

/// The encrypting view of raw storage. Implements [`Store`] over plaintext values.
pub struct Barrier {
    raw: Arc<dyn Store>,
    root: RwLock<Option<AeadKey>>,
    keyring: ReadMostly<Option<Arc<Keyring>>>,
    encryptions: AtomicU64,
    /// Where storage latencies are counted (`vault.barrier.*`).
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("sealed", &self.keyring.read().is_none())
            .finish()
    }
}

impl Barrier {
    /// Open the barrier with the root key, reading the keyring from storage.
    pub(crate) async fn unseal(raw: Arc<dyn Store>, root: &SecretKey) -> Result<Self, EngineError> {
        let root_aead = AeadKey::new(AeadAlgorithm::Aes256Gcm, root)
            .map_err(|_| EngineError::Crypto(CryptoOp::KeySetup))?;
        let sealed = raw
            .get(KEYRING_PATH)
            .await?
            .ok_or_else(|| EngineError::Corrupt("the keyring is missing".to_owned()))?;
        let plain = Zeroizing::new(barrier::open(&root_aead, KEYRING_PATH, &sealed).map_err(
            |_| EngineError::Corrupt("the keyring does not open with the root key".to_owned()),
        )?);
        let keyring = Keyring::decode(&plain)?;
        Ok(Barrier {
            raw,
            root: RwLock::new(Some(root_aead)),
            keyring: ReadMostly::new(Some(Arc::new(keyring))),
            encryptions: AtomicU64::new(0),
            metrics: Arc::default(),
        })
    }

    /// Count storage latencies in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// A barrier over `raw` with `keyring`, for init (nothing is written).
    pub(crate) fn new_for_init(
        raw: Arc<dyn Store>,
        root: &SecretKey,
        keyring: Keyring,
    ) -> Result<Self, EngineError> {
        let root_aead = AeadKey::new(AeadAlgorithm::Aes256Gcm, root)
            .map_err(|_| EngineError::Crypto(CryptoOp::KeySetup))?;
        Ok(Barrier {
            raw,
            root: RwLock::new(Some(root_aead)),
            keyring: ReadMostly::new(Some(Arc::new(keyring))),
            encryptions: AtomicU64::new(0),
            metrics: Arc::default(),
        })
    }

    /// The sealed keyring record, for storage at [`KEYRING_PATH`].
    pub(crate) fn sealed_keyring(&self) -> Result<Vec<u8>, EngineError> {
        let keyring = self.keyring()?;
        let root = self.root.read();
        let root = root.as_ref().ok_or(EngineError::Sealed)?;
        barrier::seal(SEAL_TERM, root, KEYRING_PATH, &keyring.encode())
            .map_err(|_| EngineError::Crypto(CryptoOp::Encrypt))
    }

    /// Drop every key this barrier holds. Later calls fail with [`StorageError::Closed`].
    pub(crate) fn seal(&self) {
        *self.keyring.write() = None;
        *self.root.write() = None;
    }

    fn keyring(&self) -> Result<Arc<Keyring>, EngineError> {
        self.keyring.read().clone().ok_or(EngineError::Sealed)
    }

    fn check_unsealed(&self) -> Result<(), StorageError> {
        match *self.keyring.read() {
            Some(_) => Ok(()),
            None => Err(StorageError::Closed),
        }
    }

    /// Add a keyring term and make it active. Persists the keyring first.
    pub(crate) async fn rotate(&self, now_unix: i64) -> Result<KeyStatus, EngineError> {
        let current = self.keyring()?;
        let next = Arc::new(current.rotated(now_unix)?);
        let sealed = {
            let root = self.root.read();
            let root = root.as_ref().ok_or(EngineError::Sealed)?;
            barrier::seal(SEAL_TERM, root, KEYRING_PATH, &next.encode())
                .map_err(|_| EngineError::Crypto(CryptoOp::Encrypt))?
        };
        self.raw.put(KEYRING_PATH, sealed).await?;
        let status = KeyStatus {
            term: next.active,
            installed_unix: next
                .terms
                .get(&next.active)
                .map(|t| t.installed_unix)
                .unwrap_or(now_unix),
            encryptions: 0,
        };
        *self.keyring.write() = Some(next);
        self.encryptions.store(0, Ordering::Relaxed);
        Ok(status)
    }

    /// The active term and its use.
    pub(crate) fn key_status(&self) -> Result<KeyStatus, EngineError> {
        let kr = self.keyring()?;
        Ok(KeyStatus {
            term: kr.active,
            installed_unix: kr
                .terms
                .get(&kr.active)
                .map(|t| t.installed_unix)
                .unwrap_or(0),
            encryptions: self.encryptions.load(Ordering::Relaxed),
        })
    }

    /// Encrypt `plaintext` for storage at `key` without writing it (for init's single
    /// transaction).
    pub(crate) fn encrypt_entry(
        &self,
        key: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        Self::check(key)?;
        Ok(self.encrypt(key, plaintext)?)
    }

    // Encryption and decryption borrow the keyring under its read lock (a lock of this
    // thread's own shard) instead of cloning its `Arc`: a reference count every request
    // changes is a cache line both CPUs fight over.
    fn encrypt(&self, key: &str, plaintext: &[u8]) -> Result<Vec<u8>, StorageError> {
        let kr = self.keyring.read();
        let kr = kr.as_ref().ok_or(StorageError::Closed)?;
        let term = kr.terms.get(&kr.active).ok_or(StorageError::Closed)?;
        self.encryptions.fetch_add(1, Ordering::Relaxed);
        barrier::seal(kr.active, &term.aead, key, plaintext).map_err(|e| {
            StorageError::Unavailable {
                source: Box::new(e),
            }
        })
    }

    fn decrypt(&self, key: &str, entry: &[u8]) -> Result<Vec<u8>, StorageError> {
        let kr = self.keyring.read();
        let kr = kr.as_ref().ok_or(StorageError::Closed)?;
        let corrupt = || StorageError::Corrupt {
            detail: format!("entry {key:?} does not decrypt"),
        };
        let term_no = barrier::peek_term(entry).map_err(|_| corrupt())?;
        let term = kr
            .terms
            .get(&term_no)
            .ok_or_else(|| StorageError::Corrupt {
                detail: format!("entry {key:?} uses unknown keyring term {term_no}"),
            })?;
        barrier::open(&term.aead, key, entry).map_err(|_| corrupt())
    }

    fn check(key: &str) -> Result<(), StorageError> {
        keyhaven_storage::validate_key(key)?;
        if is_reserved(key) {
            return Err(StorageError::InvalidKey {
                key: key.to_owned(),
                reason: "reserved for the seal",
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Store for Barrier {
    fn read_only(&self) -> bool {
        self.raw.read_only()
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Self::check(key)?;
        let started = Instant::now();
        let out = match self.raw.get(key).await? {
            Some(entry) => self.decrypt(key, &entry).map(Some),
            None => Ok(None),
        };
        self.metrics.barrier(BarrierOp::Get).since(started);
        out
    }

    fn get_ready(&self, key: &str) -> Option<Result<Option<Vec<u8>>, StorageError>> {
        if let Err(e) = Self::check(key) {
            return Some(Err(e));
        }
        let started = Instant::now();
        let out = match self.raw.get_ready(key)? {
            Ok(Some(entry)) => self.decrypt(key, &entry).map(Some),
            other => other,
        };
        self.metrics.barrier(BarrierOp::Get).since(started);
        Some(out)
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        Self::check(key)?;
        let started = Instant::now();
        let entry = self.encrypt(key, &value)?;
        let out = self.raw.put(key, entry).await;
        self.metrics.barrier(BarrierOp::Put).since(started);
        out
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        Self::check(key)?;
        let started = Instant::now();
        let out = self.raw.delete(key).await;
        self.metrics.barrier(BarrierOp::Delete).since(started);
        out
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        self.check_unsealed()?;
        let started = Instant::now();
        let out = self.raw.list_page(prefix, after, limit).await;
        self.metrics.barrier(BarrierOp::List).since(started);
        out
    }

    async fn transact(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        let started = Instant::now();
        let out = self.transact_timed(tx).await;
        self.metrics.barrier(BarrierOp::Transaction).since(started);
        out
    }
}

impl Barrier {
    async fn transact_timed(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        // Plaintext conditions become conditions on the exact ciphertext read here, so the
        // check stays atomic in the raw store.
        let mut conditions = Vec::with_capacity(tx.conditions.len());
        for (index, cond) in tx.conditions.into_iter().enumerate() {
            Self::check(cond.key())?;
            match cond {
                Condition::Absent { key } => conditions.push(Condition::Absent { key }),
                Condition::Equals { key, value } => match self.raw.get(&key).await? {
                    Some(raw) if self.decrypt(&key, &raw)? == value => {
                        conditions.push(Condition::Equals { key, value: raw });
                    }
                    _ => return Ok(TxOutcome::ConditionFailed { index }),
                },
            }
        }
        let mut ops = Vec::with_capacity(tx.ops.len());
        for op in tx.ops {
            Self::check(op.key())?;
            ops.push(match op {
                Op::Put { key, value } => {
                    let value = self.encrypt(&key, &value)?;
                    Op::Put { key, value }
                }
                Op::Delete { key } => Op::Delete { key },
            });
        }
        self.raw.transact(Transaction { conditions, ops }).await
    }
}
