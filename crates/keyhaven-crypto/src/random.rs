//! Randomness from the operating system's CSPRNG.

use rand::TryRng;
use rand::rngs::SysRng;

use crate::CryptoError;

/// Fills `buf` with cryptographically secure random bytes.
///
/// The bytes come straight from the kernel's CSPRNG (`getrandom(2)` on Linux, through the
/// `getrandom` crate). Every key, nonce and Shamir seed in keyhaven comes from here.
///
/// The kernel is used rather than aws-lc's DRBG because it is the same quality and measured
/// about 40% cheaper per 12-byte nonce (see `docs/design/0001-crypto-provider.md`); a FIPS
/// build would switch this one function to aws-lc's approved DRBG.
///
/// # Errors
///
/// [`CryptoError::Random`] if the generator fails; callers must not fall back to anything
/// weaker.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    // `SysRng` is `getrandom::SysRng`, re-exported by `rand`: a stateless call to the kernel.
    SysRng.try_fill_bytes(buf).map_err(|_| CryptoError::Random)
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
