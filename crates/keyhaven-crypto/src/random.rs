//! Randomness from the operating system's CSPRNG.

use rand::TryRng;
use rand::rngs::SysRng;

use crate::CryptoError;

/// Fills `buf` with cryptographically secure random bytes.
///
/// The bytes come straight from the kernel's CSPRNG (`getrandom(2)` on Linux, through the
/// `getrandom` crate). Every key and Shamir seed in keyhaven comes from here; nonces come
/// from the same source through a per-thread buffer ([`fill_nonce`]).
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

/// Bytes of kernel randomness read at a time for nonces: one system call per 341 nonces
/// of 12 bytes.
const NONCE_POOL: usize = 4096;

/// A thread's unread nonce bytes: `bytes[used..]`.
struct NoncePool {
    bytes: Box<[u8; NONCE_POOL]>,
    used: usize,
}

thread_local! {
    static NONCES: std::cell::RefCell<NoncePool> = std::cell::RefCell::new(NoncePool {
        bytes: Box::new([0; NONCE_POOL]),
        used: NONCE_POOL,
    });
}

/// Fills `nonce` with random bytes for a nonce: a public value that must never repeat
/// under one key (AES-GCM's 96-bit random nonces, the barrier's and transit's).
///
/// The bytes are the kernel's, as [`fill_random`]'s, read [`NONCE_POOL`] bytes at a time
/// into a buffer of the calling thread and handed out once each, in order: a
/// `getrandom(2)` call cost about two thirds of sealing a small value (see
/// `docs/design/0001-crypto-provider.md`). Only nonces come from the buffer. A nonce is
/// written next to its ciphertext, so the bytes waiting there are no secret worth
/// guarding; keys and seeds are drawn with [`fill_random`], so no future key material ever
/// waits in memory.
///
/// A process that forked would draw its parent's unread bytes in the child. keyhaven
/// never forks without executing another program at once.
///
/// # Errors
///
/// [`CryptoError::Random`] if the generator fails; nothing weaker is used instead.
pub fn fill_nonce(nonce: &mut [u8]) -> Result<(), CryptoError> {
    if nonce.len() > NONCE_POOL / 8 {
        return fill_random(nonce);
    }
    NONCES.with(|pool| {
        let mut pool = pool.borrow_mut();
        if NONCE_POOL - pool.used < nonce.len() {
            fill_random(&mut pool.bytes[..])?;
            pool.used = 0;
        }
        let start = pool.used;
        let end = start + nonce.len();
        let fresh = pool.bytes.get(start..end).ok_or(CryptoError::Random)?;
        nonce.copy_from_slice(fresh);
        pool.used = end;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_never_handed_out_twice() {
        // Over several refills of the pool, every 12-byte nonce differs, and a nonce
        // longer than the pool allows for comes straight from the kernel.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(3 * NONCE_POOL / 12) {
            let mut n = [0u8; 12];
            fill_nonce(&mut n).unwrap();
            assert!(seen.insert(n), "a nonce repeated");
        }
        let mut long = [0u8; NONCE_POOL];
        fill_nonce(&mut long).unwrap();
        assert_ne!(long, [0u8; NONCE_POOL]);
        // Another thread has its own pool: no byte run is shared.
        let other: Vec<[u8; 12]> = std::thread::spawn(|| {
            (0..100)
                .map(|_| {
                    let mut n = [0u8; 12];
                    fill_nonce(&mut n).unwrap();
                    n
                })
                .collect()
        })
        .join()
        .unwrap();
        assert!(other.iter().all(|n| !seen.contains(n)));
    }

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
