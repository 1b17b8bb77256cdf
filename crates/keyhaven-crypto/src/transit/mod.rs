//! The transit engine's cryptography: key types, per-version keys and the ciphertext codec.
//!
//! This is the crypto half of keyhaven's Vault-compatible transit engine; the engine crate
//! owns key policy (versions, rotation, states, storage). What lives here:
//!
//! * [`KeyType`]: the Vault key types keyhaven offers and what each supports;
//! * [`VersionKey`]: one version of a key, prepared once and reused across threads, with
//!   AEAD encryption (random or convergent nonces, HKDF-SHA256 derivation per context),
//!   RSA-OAEP, HMAC, and Ed25519 / ECDSA / RSA signatures (ECDSA with any hash on either
//!   curve, as Vault allows: [`ecdsa_verify_digest`]);
//! * [`codec`]: the `vault:v<N>:<base64>` envelope and strict base64.
//!
//! # Invariants
//!
//! * Ciphertext bodies are byte-compatible with OpenBao's: AEADs write
//!   `nonce(12) ‖ ciphertext ‖ tag(16)`; derived keys are HKDF-SHA256(key, salt = empty,
//!   info = context); convergent nonces are HMAC-SHA256(derived nonce key, plaintext)[..12]
//!   (OpenBao's convergent version 3).
//! * Every failure to authenticate a ciphertext is the one opaque [`crate::DecryptError`].
//! * Key bytes are zeroized on drop and never printed; `Debug` shows the type only.
//! * No I/O, no clock, no async.

pub mod codec;
mod ecdsa;
mod key;

pub use codec::Base64;
pub use ecdsa::verify_digest as ecdsa_verify_digest;
pub use key::{
    HMAC_KEY_LEN, HMAC_MAX_KEY_SIZE, HMAC_MIN_KEY_SIZE, HashAlgorithm, KeyOptions, KeyType,
    Marshaling, RsaPadding, SignOptions, VersionKey,
};
