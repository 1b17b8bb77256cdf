//! The engine's error type and its mapping to stable API codes.

use keyhaven_storage::StorageError;
use keyhaven_types::ErrorCode;

/// Why the engine refused or failed a request.
///
/// Messages are shown to API callers: they name what is wrong and never contain secret
/// values (keys, tokens, secret data, plaintexts).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The request is malformed or a parameter is invalid.
    #[error("{0}")]
    InvalidRequest(String),
    /// Missing, unknown or insufficient credentials.
    #[error("permission denied")]
    PermissionDenied,
    /// Nothing at this path (no mount, no route, or no such item where Vault answers 404).
    #[error("{0}")]
    NotFound(String),
    /// The path does not support this operation.
    #[error("unsupported operation")]
    UnsupportedOperation,
    /// A check-and-set or similar precondition failed.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The server is sealed.
    #[error("keyhaven is sealed")]
    Sealed,
    /// The server has not been initialized.
    #[error("keyhaven is not initialized")]
    NotInitialized,
    /// `sys/init` on an initialized server.
    #[error("keyhaven is already initialized")]
    AlreadyInitialized,
    /// Storage failed.
    #[error("storage error")]
    Storage(#[from] StorageError),
    /// Data read back from storage could not be decrypted or decoded.
    #[error("stored data is corrupt or was written under another key: {0}")]
    Corrupt(String),
    /// A cryptographic operation failed for a reason other than bad input.
    #[error("cryptographic failure")]
    Crypto,
    /// The version a KV read or patch addresses was deleted or destroyed: a 404 that, as
    /// in Vault, still carries what is known about the version (its metadata, never its
    /// value).
    #[error("the version was deleted or destroyed")]
    VersionGone(Box<serde_json::Map<String, serde_json::Value>>),
    /// A dependency is temporarily unavailable.
    #[error("{0}")]
    Unavailable(String),
}

impl EngineError {
    /// Shorthand for [`EngineError::InvalidRequest`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        EngineError::InvalidRequest(msg.into())
    }

    /// The stable code the API maps to an HTTP status.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            EngineError::PermissionDenied => ErrorCode::PermissionDenied,
            EngineError::NotFound(_) | EngineError::VersionGone(_) => ErrorCode::NotFound,
            EngineError::UnsupportedOperation => ErrorCode::UnsupportedOperation,
            EngineError::PreconditionFailed(_) => ErrorCode::PreconditionFailed,
            EngineError::Sealed => ErrorCode::Sealed,
            EngineError::NotInitialized => ErrorCode::NotInitialized,
            EngineError::AlreadyInitialized => ErrorCode::AlreadyInitialized,
            EngineError::Storage(StorageError::InvalidKey { .. }) => ErrorCode::InvalidRequest,
            EngineError::Storage(_) => ErrorCode::Unavailable,
            EngineError::Corrupt(_) | EngineError::Crypto => ErrorCode::Internal,
            EngineError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}
