use serde::{Deserialize, Serialize};

/// A stable, machine-readable error class. The server maps each one to exactly one HTTP
/// status (see [`ErrorCode::http_status`]); the match there has no catch-all arm so that
/// adding a code forces a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed or its parameters are invalid.
    InvalidRequest,
    /// The caller is not authenticated or not allowed to do this.
    PermissionDenied,
    /// Nothing exists at the path.
    NotFound,
    /// The path exists but does not support the operation.
    UnsupportedOperation,
    /// A check-and-set or other precondition failed.
    PreconditionFailed,
    /// The request body is larger than the listener allows.
    PayloadTooLarge,
    /// The server is sealed.
    Sealed,
    /// The server has not been initialized.
    NotInitialized,
    /// The server is already initialized.
    AlreadyInitialized,
    /// Too many requests or a resource limit was reached.
    RateLimited,
    /// A dependency (storage, audit) is unavailable; retrying later may work.
    Unavailable,
    /// An internal error; details are in the server log under the request id.
    Internal,
}

impl ErrorCode {
    /// The HTTP status Vault/OpenBao would give for this class of error.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::UnsupportedOperation => 405,
            // Vault answers a failed check-and-set with 400, and clients rely on it.
            ErrorCode::PreconditionFailed => 400,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Sealed => 503,
            ErrorCode::NotInitialized => 400,
            ErrorCode::AlreadyInitialized => 400,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// The error body every failed request gets: `{"errors": ["…"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable messages; never contain secret values.
    pub errors: Vec<String>,
}
