//! The crate's error type.
//!
//! Messages name what is wrong and where (a frame number, a key reference); they never
//! carry key material or plaintext.

use std::fmt;

/// Why a key-encryption key could not wrap or unwrap a data key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    /// The server refused the token for this operation (HTTP 401/403).
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// The server could not be reached (connection, TLS, timeout).
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The wrapped data key does not open under this KEK: wrong key, or the wrapped key or
    /// the encryption context was changed.
    #[error(
        "the wrapped data key does not open (wrong key, or the key entry or the encryption context was changed)"
    )]
    Rejected,
    /// Any other failure (the key is disabled, does not exist, a malformed answer…).
    #[error("{0}")]
    Other(String),
}

/// What went wrong while encrypting, decrypting or rewrapping a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Reading the input or writing the output failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The header ended early.
    #[error("corrupt message: the header is truncated (while reading {0})")]
    TruncatedHeader(&'static str),
    /// The header or a frame is syntactically invalid.
    #[error("corrupt message: {0}")]
    Malformed(&'static str),
    /// The header names a format version this build does not read.
    #[error("unsupported envelope format version {0}")]
    UnsupportedVersion(u8),
    /// The header names an algorithm this build does not know.
    #[error("unsupported envelope algorithm 0x{0:04x}")]
    UnsupportedAlgorithm(u16),
    /// The data key does not match the header's key commitment.
    #[error(
        "corrupt message: the data key from {0} does not match the key commitment (the wrapped key was swapped or the message was crafted)"
    )]
    Commitment(String),
    /// The header MAC does not verify: the header was changed.
    #[error("corrupt message: the header MAC does not verify (the header was changed)")]
    HeaderMac,
    /// A frame did not authenticate.
    #[error(
        "corrupt message: frame {seq} does not authenticate (changed, moved from another position or message, or the final marker was changed)"
    )]
    FrameAuth {
        /// The frame's sequence number.
        seq: u32,
    },
    /// A frame is out of order (dropped, duplicated or reordered frames).
    #[error(
        "corrupt message: expected frame {expected}, found frame {found} (a frame was dropped, duplicated or reordered)"
    )]
    FrameOrder {
        /// The sequence number expected.
        expected: u32,
        /// The one found.
        found: u32,
    },
    /// The body ended before the final frame.
    #[error(
        "corrupt message: the body ends in or before frame {seq}, without a final frame (truncated)"
    )]
    Truncated {
        /// The frame being read.
        seq: u32,
    },
    /// Bytes follow the final frame.
    #[error("corrupt message: data follows the final frame")]
    TrailingData,
    /// The message has more frames than the format allows.
    #[error("the input is too large for one message (more than 2^32-2 frames)")]
    TooLarge,
    /// The encryption context given is not acceptable.
    #[error("invalid encryption context: {0}")]
    InvalidContext(&'static str),
    /// Options or arguments are not acceptable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No KEK was given to encrypt with.
    #[error("no key-encryption key given")]
    NoKek,
    /// A KEK failed while wrapping or rewrapping.
    #[error("{key}: {source}")]
    Kek {
        /// The KEK, e.g. `transit:transit/app`.
        key: String,
        /// What failed.
        #[source]
        source: KekError,
    },
    /// No wrapped data key could be opened; every attempt is listed.
    #[error("no wrapped data key could be opened: {}", Attempts(.0))]
    NoDataKey(Vec<(String, KekError)>),
    /// A cryptographic primitive failed (random number generator).
    #[error("cryptographic failure: {0}")]
    Crypto(#[from] keyhaven_crypto::CryptoError),
}

struct Attempts<'a>(&'a [(String, KekError)]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no key-encryption key that this message names is available");
        }
        for (i, (key, err)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{key}: {err}")?;
        }
        Ok(())
    }
}

/// The broad class of a failure, which the CLI maps to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The message is corrupt, tampered with, or not an envelope.
    Corrupt,
    /// The server refused the token.
    NotAuthorized,
    /// The server could not be reached.
    Unreachable,
    /// The server answered with another error.
    Server,
    /// A local problem: I/O, arguments, no usable key given.
    Local,
}

impl EnvelopeError {
    /// The class of this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            EnvelopeError::TruncatedHeader(_)
            | EnvelopeError::Malformed(_)
            | EnvelopeError::UnsupportedVersion(_)
            | EnvelopeError::UnsupportedAlgorithm(_)
            | EnvelopeError::Commitment(_)
            | EnvelopeError::HeaderMac
            | EnvelopeError::FrameAuth { .. }
            | EnvelopeError::FrameOrder { .. }
            | EnvelopeError::Truncated { .. }
            | EnvelopeError::TrailingData => ErrorClass::Corrupt,
            EnvelopeError::Kek { source, .. } => kek_class(source),
            EnvelopeError::NoDataKey(attempts) => {
                let classes: Vec<ErrorClass> = attempts.iter().map(|(_, e)| kek_class(e)).collect();
                [
                    ErrorClass::Corrupt,
                    ErrorClass::NotAuthorized,
                    ErrorClass::Server,
                    ErrorClass::Unreachable,
                ]
                .into_iter()
                .find(|c| classes.contains(c))
                .unwrap_or(ErrorClass::Local)
            }
            EnvelopeError::Io(_)
            | EnvelopeError::TooLarge
            | EnvelopeError::InvalidContext(_)
            | EnvelopeError::InvalidArgument(_)
            | EnvelopeError::NoKek
            | EnvelopeError::Crypto(_) => ErrorClass::Local,
        }
    }
}

fn kek_class(e: &KekError) -> ErrorClass {
    match e {
        KekError::NotAuthorized(_) => ErrorClass::NotAuthorized,
        KekError::Unreachable(_) => ErrorClass::Unreachable,
        KekError::Rejected => ErrorClass::Corrupt,
        KekError::Other(_) => ErrorClass::Server,
    }
}
