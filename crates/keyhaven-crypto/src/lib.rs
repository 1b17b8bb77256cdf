//! keyhaven's cryptographic core.
//!
//! # Purpose
//!
//! Every cryptographic operation keyhaven performs on data at rest goes through this crate:
//!
//! * authenticated encryption (AES-256-GCM and ChaCha20-Poly1305) with prepared, reusable keys
//!   ([`AeadKey`]);
//! * key derivation ([`hkdf_sha256`]), message authentication ([`HmacKey`]), hashing
//!   ([`sha256`]) and constant-time comparison ([`ct_eq`]);
//! * key and secret types that zeroize on drop and never print their bytes ([`SecretKey`],
//!   [`SecretBytes`]);
//! * the barrier entry codec that wraps every value written to storage ([`barrier`]);
//! * Shamir secret sharing of the unseal key ([`shamir`]).
//!
//! The primitives come from one provider, `aws-lc-rs` (see `docs/design/0001-crypto-provider.md`).
//! Shamir arithmetic comes from `vsss-rs` (constant-time GF(256)).
//!
//! # Non-goals
//!
//! * No I/O, no async, no logging, no clock: callers own storage, time and scheduling. Functions
//!   here are CPU-bound; callers on an async runtime run large inputs on a blocking thread.
//! * No key management policy: which key is current, when to rotate, and how many times a key
//!   has been used are the engine's decisions ([`AeadKey::seal_count`] gives it the figure).
//! * No serde on secret-bearing types: ciphertexts have explicit byte codecs instead.
//! * No choice of provider at run time and no FIPS mode yet.
//!
//! # Invariants
//!
//! * `unsafe` code is forbidden in this crate.
//! * Secret-bearing types do not implement `Clone`, `Debug` (except a hand-written, redacting
//!   one), `Display` or `Serialize`; they zeroize their bytes on drop. Crossing from a secret to
//!   plain bytes is always spelled `expose_secret`.
//! * Every authentication failure is the single opaque [`DecryptError`]: a wrong key, a bad tag,
//!   truncated input, a wrong nonce or mismatched associated data cannot be told apart.
//! * Buffers that held plaintext are zeroized when an operation fails half way.
//! * Random nonces are 96 bits drawn from the operating system's CSPRNG. With random nonces a
//!   key must not seal more than 2^32 messages (NIST SP 800-38D §8.3); callers rotate well
//!   before that.
//! * The barrier format is versioned and covered by a golden test vector; changing the bytes it
//!   produces is a breaking change that needs a new format version.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod aead;
pub mod barrier;
mod error;
mod hash;
mod random;
mod secret;
pub mod shamir;
pub mod transit;

pub use aead::{AeadAlgorithm, AeadKey, NONCE_LEN, TAG_LEN};
pub use error::{CryptoError, DecryptError};
pub use hash::{HmacKey, SHA256_LEN, ct_eq, hkdf_sha256, sha256};
pub use random::{fill_nonce, fill_random};
pub use secret::{KEY_LEN, SecretBytes, SecretKey};

/// Internals exposed for fuzzing and golden-vector tests only.
///
/// Nothing in here is part of the supported API; it may change in any release. Production code
/// must not call it: its functions take caller-chosen nonces.
#[doc(hidden)]
pub mod internal {
    pub use crate::barrier::seal_with_nonce as barrier_seal_with_nonce;
}
