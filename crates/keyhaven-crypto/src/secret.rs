//! Secret byte containers that zeroize on drop and never print their contents.
//!
//! Both types keep their bytes on the heap, so moving the value moves a pointer and leaves no
//! stray copy of the key on the stack.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{CryptoError, fill_random};

/// Length in bytes of a [`SecretKey`] (256 bits).
pub const KEY_LEN: usize = 32;

/// A 256-bit symmetric key.
///
/// The bytes are zeroized on drop. `Debug` prints `SecretKey(…)` only. There is no `Clone`:
/// copies are explicit through [`SecretKey::try_clone`], and the raw bytes are reached only
/// through [`SecretKey::expose_secret`].
pub struct SecretKey(Box<[u8; KEY_LEN]>);

impl SecretKey {
    /// Generates a fresh key from the operating system's CSPRNG.
    ///
    /// # Errors
    ///
    /// [`CryptoError::Random`] if the random number generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Self(Box::new([0u8; KEY_LEN]));
        fill_random(&mut key.0[..])?;
        Ok(key)
    }

    /// Wraps a key given as an array.
    ///
    /// `[u8; 32]` is `Copy`, so the caller still holds its own copy after this call: the caller
    /// should treat it as moved and zeroize it (or use [`SecretKey::take`], which does so).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut bytes = bytes;
        Self::take(&mut bytes)
    }

    /// Copies the key out of `bytes` and zeroizes `bytes`.
    pub fn take(bytes: &mut [u8; KEY_LEN]) -> Self {
        let key = Self(Box::new(*bytes));
        bytes.zeroize();
        key
    }

    /// Copies a key from a slice, which must be exactly [`KEY_LEN`] bytes long.
    ///
    /// The caller remains responsible for zeroizing `bytes`.
    ///
    /// # Errors
    ///
    /// [`CryptoError::KeyLength`] if `bytes` is not 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::KeyLength {
                expected: KEY_LEN,
                got: bytes.len(),
            });
        }
        let mut key = Self(Box::new([0u8; KEY_LEN]));
        for (dst, src) in key.0.iter_mut().zip(bytes) {
            *dst = *src;
        }
        Ok(key)
    }

    /// The raw key bytes.
    ///
    /// This is the one explicit crossing from the secret type to plain bytes; every call site
    /// is a place to audit.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// An explicit copy of the key (the type deliberately does not implement `Clone`).
    pub fn try_clone(&self) -> Self {
        Self(Box::new(*self.0))
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for SecretKey {}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

/// A secret of variable length (for example, a recombined Shamir secret).
///
/// The bytes are zeroized on drop, including the vector's spare capacity. `Debug` prints
/// `SecretBytes(…)` only. There is no `Clone`.
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `v`.
    ///
    /// Only this allocation is zeroized later: copies the caller made earlier (or buffers a
    /// growing `Vec` left behind when it reallocated) are the caller's to clear.
    pub fn new(v: Vec<u8>) -> Self {
        Self(v)
    }

    /// The raw bytes; the one explicit crossing to plain bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        // `Vec::zeroize` clears the whole capacity, not only `len` bytes.
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_slice_checks_length() {
        assert_eq!(
            SecretKey::from_slice(&[0u8; 31]).unwrap_err(),
            CryptoError::KeyLength {
                expected: 32,
                got: 31
            }
        );
        assert!(SecretKey::from_slice(&[0u8; 33]).is_err());
        let k = SecretKey::from_slice(&[7u8; 32]).unwrap();
        assert_eq!(k.expose_secret(), &[7u8; 32]);
    }

    #[test]
    fn take_zeroizes_source() {
        let mut src = [9u8; 32];
        let k = SecretKey::take(&mut src);
        assert_eq!(src, [0u8; 32]);
        assert_eq!(k.expose_secret(), &[9u8; 32]);
    }

    #[test]
    fn generate_and_clone() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.try_clone().expose_secret(), a.expose_secret());
    }

    #[test]
    fn secret_bytes_accessors() {
        let s = SecretBytes::new(vec![1, 2, 3]);
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert_eq!(s.expose_secret(), &[1, 2, 3]);
        assert!(SecretBytes::new(Vec::new()).is_empty());
    }
}
