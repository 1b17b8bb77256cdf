//! The crate's error types.
//!
//! [`CryptoError`] reports misuse and environment failures; its messages carry only public
//! facts (lengths, parameter names, format versions). [`DecryptError`] is deliberately opaque.

use std::fmt;

use crate::shamir::ShamirError;

/// Why a cryptographic operation other than decryption could not run.
///
/// No variant carries key material, plaintext or anything derived from them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A key had the wrong length.
    #[error("wrong key length: expected {expected} bytes, got {got}")]
    KeyLength {
        /// The length the operation requires.
        expected: usize,
        /// The length that was given.
        got: usize,
    },
    /// The system's random number generator failed.
    #[error("the random number generator failed")]
    Random,
    /// A parameter is outside the range the operation supports.
    #[error("invalid parameter: {what}")]
    InvalidParameter {
        /// Which parameter.
        what: &'static str,
    },
    /// Encoded input is malformed (for example, too short to hold a header).
    #[error("malformed input: {what}")]
    Format {
        /// What is wrong with it.
        what: &'static str,
    },
    /// Encoded input carries a format version this build does not know.
    #[error("unsupported format version {version}")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// Encryption failed (for example, the input exceeds the algorithm's limit).
    #[error("encryption failed")]
    Seal,
    /// Decryption or authentication failed; see [`DecryptError`].
    #[error(transparent)]
    Decrypt(#[from] DecryptError),
    /// Shamir split or combine failed.
    #[error("secret sharing: {0}")]
    Shamir(#[from] ShamirError),
}

/// Decryption failed.
///
/// This error is intentionally uninformative: it is the same value whether the key was wrong,
/// the tag did not verify, the input was truncated or malformed, or the associated data (for
/// the barrier: the storage path or header) did not match. Telling these apart would give an
/// attacker an oracle. Its `Display` is exactly `decryption failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecryptError;

impl fmt::Display for DecryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("decryption failed")
    }
}

impl std::error::Error for DecryptError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decrypt_error_message_is_fixed() {
        assert_eq!(DecryptError.to_string(), "decryption failed");
        assert_eq!(
            CryptoError::from(DecryptError).to_string(),
            "decryption failed"
        );
    }

    #[test]
    fn messages_name_public_facts_only() {
        let e = CryptoError::KeyLength {
            expected: 32,
            got: 16,
        };
        assert_eq!(e.to_string(), "wrong key length: expected 32 bytes, got 16");
        assert_eq!(
            CryptoError::UnsupportedVersion { version: 9 }.to_string(),
            "unsupported format version 9"
        );
    }
}
