use std::error::Error as StdError;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The key breaks the rules in [`crate::Store`]'s docs.
    #[error("invalid storage key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key (truncated).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The backend could not be reached or failed an I/O operation.
    #[error("storage backend unavailable")]
    Unavailable {
        /// The backend's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The backend holds data it cannot interpret.
    #[error("storage data is corrupt: {detail}")]
    Corrupt {
        /// What was found.
        detail: String,
    },
    /// The backend is shutting down or has shut down.
    #[error("storage backend is closed")]
    Closed,
}
