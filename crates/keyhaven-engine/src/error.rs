//! The engine's error type and its mapping to stable API codes.

use keyhaven_storage::StorageError;
use keyhaven_types::ErrorCode;

/// Why the engine refused or failed a request.
///
/// Messages are shown to API callers: they name what is wrong and never contain secret
/// values (keys, tokens, secret data, plaintexts).
///
/// Faults of the server itself ([`Crypto`](Self::Crypto), [`Encode`](Self::Encode),
/// [`Internal`](Self::Internal), [`Corrupt`](Self::Corrupt)) map to
/// [`ErrorCode::Internal`]: the server answers them with a generic message and a request
/// id, and logs the message, which names the fault. The first three carry only fixed
/// text, never anything from the request or a secret, so they may still reach a caller
/// (as the `error` of a transit batch item) and audit records keep them in clear.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The request is malformed or a parameter is invalid.
    #[error("{0}")]
    InvalidRequest(String),
    /// Missing, unknown or insufficient credentials.
    #[error("permission denied")]
    PermissionDenied,
    /// Refused as [`PermissionDenied`](Self::PermissionDenied) is (403), with Vault's own
    /// message for the case (`bad token`, a preflight check).
    #[error("{0}")]
    Forbidden(String),
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
    /// A cryptographic operation failed for a reason other than bad input (the random
    /// number generator, key generation, encryption).
    #[error("cryptographic failure: {0}")]
    Crypto(CryptoOp),
    /// A value could not be encoded for storage; names what was being encoded.
    #[error("could not encode {0} for storage")]
    Encode(&'static str),
    /// An internal invariant was broken; names which.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The version a KV read or patch addresses was deleted or destroyed: a 404 that, as
    /// in Vault, still carries what is known about the version (its metadata, never its
    /// value).
    #[error("the version was deleted or destroyed")]
    VersionGone(Box<serde_json::Map<String, serde_json::Value>>),
    /// The backend could not do what was asked, for a reason the caller may read (a
    /// database refused a statement, a role is not allowed on its connection). Vault
    /// answers these with 500 and the message, and clients show it.
    #[error("{0}")]
    Failed(String),
    /// A dependency is temporarily unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// High availability: this replica is a standby and cannot answer this request
    /// itself (it has effects, or the standby's state is not loaded); the server
    /// forwards it to the active replica.
    #[error("this replica is a standby: the active replica serves this request")]
    NotActive,
}

/// The cryptographic operation behind an [`EngineError::Crypto`].
///
/// The operation only: which key or input was involved stays out, and failures of a
/// decryption are not reported here (they are the caller's, and opaque).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoOp {
    /// Drawing bytes from the system's random number generator.
    Random,
    /// Generating a key.
    KeyGeneration,
    /// Preparing a key for use with an AEAD.
    KeySetup,
    /// Encrypting (sealing) a value.
    Encrypt,
    /// A transit key operation, for a failure the crypto crate reports in no other way.
    Transit,
}

impl std::fmt::Display for CryptoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CryptoOp::Random => "random number generator",
            CryptoOp::KeyGeneration => "key generation",
            CryptoOp::KeySetup => "AEAD key setup",
            CryptoOp::Encrypt => "encryption",
            CryptoOp::Transit => "transit key operation",
        })
    }
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
            EngineError::PermissionDenied | EngineError::Forbidden(_) => {
                ErrorCode::PermissionDenied
            }
            EngineError::NotFound(_) | EngineError::VersionGone(_) => ErrorCode::NotFound,
            EngineError::UnsupportedOperation => ErrorCode::UnsupportedOperation,
            EngineError::PreconditionFailed(_) => ErrorCode::PreconditionFailed,
            EngineError::Sealed => ErrorCode::Sealed,
            EngineError::NotInitialized => ErrorCode::NotInitialized,
            EngineError::AlreadyInitialized => ErrorCode::AlreadyInitialized,
            EngineError::Storage(StorageError::InvalidKey { .. }) => ErrorCode::InvalidRequest,
            EngineError::Storage(_) => ErrorCode::Unavailable,
            EngineError::Corrupt(_)
            | EngineError::Crypto(_)
            | EngineError::Encode(_)
            | EngineError::Internal(_)
            | EngineError::Failed(_) => ErrorCode::Internal,
            EngineError::Unavailable(_) | EngineError::NotActive => ErrorCode::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_faults_map_to_internal_and_name_the_fault() {
        let cases = [
            (
                EngineError::Crypto(CryptoOp::Random),
                "cryptographic failure: random number generator",
            ),
            (
                EngineError::Crypto(CryptoOp::KeyGeneration),
                "cryptographic failure: key generation",
            ),
            (
                EngineError::Crypto(CryptoOp::KeySetup),
                "cryptographic failure: AEAD key setup",
            ),
            (
                EngineError::Crypto(CryptoOp::Encrypt),
                "cryptographic failure: encryption",
            ),
            (
                EngineError::Crypto(CryptoOp::Transit),
                "cryptographic failure: transit key operation",
            ),
            (
                EngineError::Encode("the mount table"),
                "could not encode the mount table for storage",
            ),
            (
                EngineError::Internal("init made no unseal share"),
                "internal error: init made no unseal share",
            ),
        ];
        for (err, text) in cases {
            assert_eq!(err.code(), ErrorCode::Internal, "{err:?}");
            assert_eq!(err.to_string(), text);
        }
    }
}
