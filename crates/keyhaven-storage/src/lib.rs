//! The storage boundary of keyhaven.
//!
//! A [`Store`] holds opaque byte values under non-secret, `/`-separated keys. It is
//! deliberately small and untrusted: everything above it (the barrier in
//! `keyhaven-engine`) encrypts values before they get here, so a store never sees
//! plaintext secrets and must never need to.
//!
//! Invariants every implementation upholds (checked by `conformance::exercise`, behind
//! the `testing` feature):
//! - a completed `put`, `delete` or committed [`Transaction`] is durable and visible to
//!   every later call;
//! - a transaction is atomic: either every condition holds and every operation is
//!   applied, or nothing is;
//! - listing returns the immediate children of a prefix in byte order, sub-folders
//!   with a trailing `/`, one page at a time;
//! - keys are compared as bytes; no store interprets `.`, `..` or repeated `/`, so a
//!   [`ScopedStore`] (which only prepends its prefix) cannot be escaped;
//! - values never appear in errors, logs or `Debug` output.
//!
//! Non-goals: encryption (the barrier's job), secondary indexes, TTLs, watches, or
//! cross-store transactions. Extra capabilities belong in separate traits.
//!
//! This crate provides the trait, [`MemStore`] (tests, dev mode), [`ScopedStore`] (the
//! view each engine component gets), [`listing`] (the shared paging logic backends use)
//! and, with the `testing` feature, the conformance suite.
#![forbid(unsafe_code)]

use async_trait::async_trait;

mod error;
pub mod listing;
mod mem;
mod read_mostly;
mod scoped;

// The conformance suite reports a contract violation by panicking, exactly like the
// assertions of the tests that call it; it is only compiled with the `testing` feature.
#[cfg(feature = "testing")]
#[allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]
pub mod conformance;

pub use error::StorageError;
pub use mem::MemStore;
pub use read_mostly::ReadMostly;
pub use scoped::ScopedStore;

/// The largest number of names one [`Store::list_page`] call returns.
pub const MAX_LIST_PAGE: usize = 10_000;

/// One write inside a [`Transaction`].
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace the value at `key`.
    Put {
        /// Storage key.
        key: String,
        /// New value (opaque bytes).
        value: Vec<u8>,
    },
    /// Remove `key`; removing an absent key is not an error.
    Delete {
        /// Storage key.
        key: String,
    },
}

/// A precondition of a [`Transaction`], checked atomically with its writes.
#[derive(Clone, PartialEq, Eq)]
pub enum Condition {
    /// `key` holds no value.
    Absent {
        /// Storage key.
        key: String,
    },
    /// `key` holds exactly `value`.
    Equals {
        /// Storage key.
        key: String,
        /// Expected value (opaque bytes).
        value: Vec<u8>,
    },
}

impl Condition {
    /// The key this condition looks at.
    pub fn key(&self) -> &str {
        match self {
            Condition::Absent { key } | Condition::Equals { key, .. } => key,
        }
    }
}

impl Op {
    /// The key this operation writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

// Values are opaque but may be large; keep Debug short and never print them.
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put { key, value } => write!(f, "Put({key:?}, {} bytes)", value.len()),
            Op::Delete { key } => write!(f, "Delete({key:?})"),
        }
    }
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Absent { key } => write!(f, "Absent({key:?})"),
            Condition::Equals { key, value } => {
                write!(f, "Equals({key:?}, {} bytes)", value.len())
            }
        }
    }
}

/// An atomic multi-key write: all `conditions` are checked, then all `ops` applied in
/// order, as one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// Preconditions; if any fails, nothing is written.
    pub conditions: Vec<Condition>,
    /// Writes, applied in order.
    pub ops: Vec<Op>,
}

/// How a committed [`Transaction`] changed one key, as a store that tells other
/// processes of changes (PostgreSQL with high availability) asks the engine whether
/// the change must be announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWrite {
    /// A value was written; `replaced` when the transaction required the key's previous
    /// value (`Condition::Equals`), so the key certainly existed before.
    Put {
        /// The transaction held an `Equals` condition on this key.
        replaced: bool,
    },
    /// The key was deleted.
    Delete,
}

impl KeyWrite {
    /// How a transaction with these `conditions` whose last op on `key` is a put (or,
    /// when `deleted`, a delete) changes it.
    pub fn of(conditions: &[Condition], key: &str, deleted: bool) -> KeyWrite {
        if deleted {
            return KeyWrite::Delete;
        }
        KeyWrite::Put {
            replaced: conditions
                .iter()
                .any(|c| matches!(c, Condition::Equals { key: k, .. } if k == key)),
        }
    }
}

/// Whether a change of a key must be announced to the processes that cache what it
/// holds (see [`KeyWrite`]).
pub type AnnounceRule = fn(key: &str, write: KeyWrite) -> bool;

/// What happened to a [`Transaction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum TxOutcome {
    /// Every condition held and every op was applied durably.
    Committed,
    /// The condition at this index did not hold; nothing was written.
    ConditionFailed {
        /// Index into [`Transaction::conditions`].
        index: usize,
    },
}

/// A key-value store of opaque bytes. See the crate docs for the invariants.
///
/// Keys are non-empty UTF-8 strings without NUL bytes, at most [`MAX_KEY_LEN`] bytes,
/// that do not start with `/` ([`validate_key`]). Implementations reject other keys with
/// [`StorageError::InvalidKey`], before touching any data. Keys are compared and
/// ordered as bytes; `.`, `..` and `//` have no meaning to a store.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The value at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;

    /// What [`Store::get`] would answer for `key`, when this store has it at hand (in
    /// memory, or in a read cache that holds `key`); `None`: call `get`. Reads on the
    /// request path ask this first ([`get_ready_or_wait`]): no future is boxed and polled
    /// for a value that needs no waiting. A store that wraps another forwards it only if
    /// its own `get` does nothing that waits.
    fn get_ready(&self, key: &str) -> Option<Result<Option<Vec<u8>>, StorageError>> {
        let _ = key;
        None
    }

    /// Create or replace the value at `key`; durable when it returns.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError>;

    /// Remove `key`; removing an absent key succeeds.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// One page of the immediate children of `prefix`, in byte order.
    ///
    /// A key `prefix + "a"` is listed as `"a"`; keys `prefix + "d/x"` and
    /// `prefix + "d/y"` are listed once, as `"d/"`. Only names strictly greater than
    /// `after` are returned, at most `limit` (capped at [`MAX_LIST_PAGE`]). A page
    /// shorter than `limit` is the last one.
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError>;

    /// Apply `tx` atomically; see [`Transaction`].
    async fn transact(&self, tx: Transaction) -> Result<TxOutcome, StorageError>;

    /// Whether this view refuses every write (a high-availability standby's): what it
    /// reads is changed by another process, so a caller must not keep decoded copies
    /// of it on the grounds that it makes every change itself.
    fn read_only(&self) -> bool {
        false
    }

    /// Set `key` to `new` (or delete it when `None`) only if it currently holds
    /// `expected` (`None`: absent). Returns whether the swap happened.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StorageError> {
        let condition = match expected {
            Some(value) => Condition::Equals {
                key: key.to_owned(),
                value: value.to_vec(),
            },
            None => Condition::Absent {
                key: key.to_owned(),
            },
        };
        let op = match new {
            Some(value) => Op::Put {
                key: key.to_owned(),
                value,
            },
            None => Op::Delete {
                key: key.to_owned(),
            },
        };
        let outcome = self
            .transact(Transaction {
                conditions: vec![condition],
                ops: vec![op],
            })
            .await?;
        Ok(outcome == TxOutcome::Committed)
    }
}

/// The longest key a store accepts, in bytes.
pub const MAX_KEY_LEN: usize = 2048;

/// Check a [`Store::list_page`] prefix: empty (the root) or a valid key.
pub fn validate_prefix(prefix: &str) -> Result<(), StorageError> {
    if prefix.is_empty() {
        Ok(())
    } else {
        validate_key(prefix)
    }
}

/// The value at `key`: [`Store::get_ready`] if the store has it at hand, else
/// [`Store::get`].
///
/// # Errors
///
/// What [`Store::get`] returns.
pub async fn get_ready_or_wait(
    store: &(impl Store + ?Sized),
    key: &str,
) -> Result<Option<Vec<u8>>, StorageError> {
    match store.get_ready(key) {
        Some(answer) => answer,
        None => store.get(key).await,
    }
}

/// Check `key` against the rules in [`Store`]'s docs.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let reason = if key.is_empty() {
        "empty"
    } else if key.len() > MAX_KEY_LEN {
        "longer than 2048 bytes"
    } else if key.starts_with('/') {
        "starts with '/'"
    } else if key.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(StorageError::InvalidKey {
        key: key.chars().take(128).collect(),
        reason,
    })
}
