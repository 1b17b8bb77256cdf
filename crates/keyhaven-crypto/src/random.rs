//! Randomness from the operating system's CSPRNG.

use crate::CryptoError;

/// Fills `buf` with cryptographically secure random bytes.
///
/// The bytes come from aws-lc's DRBG, which is seeded and reseeded from the operating system
/// (`getrandom(2)` on Linux). Every key, nonce and Shamir coefficient in keyhaven comes from
/// here.
///
/// # Errors
///
/// [`CryptoError::Random`] if the generator fails; callers must not fall back to anything
/// weaker.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| CryptoError::Random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_differs() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        fill_random(&mut a).unwrap();
        fill_random(&mut b).unwrap();
        assert_ne!(a, [0u8; 32]);
        assert_ne!(a, b);
    }

    #[test]
    fn empty_buffer_is_fine() {
        fill_random(&mut []).unwrap();
    }
}
