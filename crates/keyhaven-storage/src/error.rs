use std::error::Error as StdError;
use std::path::PathBuf;

/// Why a storage call failed.
///
/// No variant ever carries a stored value: values are opaque (barrier ciphertext) and
/// must not reach logs or error text. Keys are non-secret and may appear.
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
    /// The backend's schema was written by a newer version of keyhaven; opening it
    /// with this version could misread or damage it.
    #[error(
        "storage schema version {found} is newer than the newest this build knows \
         ({supported}); run a keyhaven release that supports it"
    )]
    SchemaTooNew {
        /// Schema version found in the backend.
        found: u64,
        /// Newest schema version this build can migrate to.
        supported: u64,
    },
    /// Another process (or another store in this process) has the database open; a
    /// single-node backend serves one process at a time.
    #[error(
        "storage file {path:?} is in use by another keyhaven process; stop it first, \
         or point this one at a different file"
    )]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// High availability: this replica is not (or no longer) the active one, so its
    /// writes are refused; nothing was written. Another replica serves writes.
    #[error(
        "this replica is not the active one (another replica holds the leadership); \
         the write was not committed"
    )]
    Fenced,
    /// A storage file can be modified by users other than its owner, so its
    /// integrity cannot be relied on; the backend refuses to use it.
    #[error(
        "storage file {path:?} has mode {mode:o}, which lets group or others write it; \
         restrict it (e.g. chmod 600)"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl StorageError {
    /// Wrap a backend error as [`StorageError::Unavailable`].
    pub fn unavailable(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        StorageError::Unavailable {
            source: source.into(),
        }
    }
}
