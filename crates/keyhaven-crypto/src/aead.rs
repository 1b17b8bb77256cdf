//! Authenticated encryption with prepared, reusable keys.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

use crate::{CryptoError, DecryptError, SecretKey, fill_nonce};

/// Nonce length in bytes (96 bits) for both supported algorithms.
pub const NONCE_LEN: usize = 12;

/// Authentication tag length in bytes (128 bits) for both supported algorithms.
pub const TAG_LEN: usize = 16;

/// The AEAD algorithms keyhaven supports, both with 256-bit keys, 96-bit nonces and 128-bit
/// tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeadAlgorithm {
    /// AES-256 in Galois/Counter Mode.
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 8439).
    ChaCha20Poly1305,
}

impl AeadAlgorithm {
    fn provider(self) -> &'static aws_lc_rs::aead::Algorithm {
        match self {
            AeadAlgorithm::Aes256Gcm => &AES_256_GCM,
            AeadAlgorithm::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        }
    }
}

/// A prepared AEAD key (expanded key schedule), reusable across threads.
///
/// Prepare it once per key and share it (`AeadKey` is `Send + Sync`); sealing does not mutate
/// it apart from a relaxed counter. The key schedule lives inside aws-lc, which cleanses it
/// when the key is dropped. `Debug` shows the algorithm only.
pub struct AeadKey {
    alg: AeadAlgorithm,
    key: LessSafeKey,
    seals: AtomicU64,
}

impl AeadKey {
    /// Prepares `key` for `alg`.
    ///
    /// # Errors
    ///
    /// [`CryptoError::InvalidParameter`] if the provider rejects the key (it does not for
    /// 32-byte keys and the supported algorithms).
    pub fn new(alg: AeadAlgorithm, key: &SecretKey) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(alg.provider(), key.expose_secret()).map_err(|_| {
            CryptoError::InvalidParameter {
                what: "aead key rejected by provider",
            }
        })?;
        Ok(Self {
            alg,
            key: LessSafeKey::new(unbound),
            seals: AtomicU64::new(0),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> AeadAlgorithm {
        self.alg
    }

    /// How many messages this prepared key has sealed since it was created.
    ///
    /// With random 96-bit nonces a key must stay well below 2^32 seals; the engine uses this
    /// figure (plus its own persisted count) to schedule rotation.
    pub fn seal_count(&self) -> u64 {
        self.seals.load(Ordering::Relaxed)
    }

    /// Encrypts `plaintext` under a fresh random 96-bit nonce, authenticating `aad` too.
    ///
    /// Returns `nonce ‖ ciphertext ‖ tag` (`plaintext.len() + 28` bytes).
    ///
    /// # Errors
    ///
    /// [`CryptoError::Random`] if no nonce could be drawn; [`CryptoError::Seal`] if the input
    /// exceeds the algorithm's limits.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; NONCE_LEN + plaintext.len() + TAG_LEN];
        let (nonce, body) = out
            .split_first_chunk_mut::<NONCE_LEN>()
            .ok_or(CryptoError::Seal)?;
        fill_nonce(nonce)?;
        self.seal_into(nonce, aad, plaintext, body)?;
        Ok(out)
    }

    /// Encrypts with a caller-supplied nonce and returns `ciphertext ‖ tag`.
    ///
    /// The caller must guarantee that `nonce` is never reused with this key: a repeated nonce
    /// breaks both confidentiality and authenticity. Prefer [`AeadKey::seal`].
    ///
    /// # Errors
    ///
    /// [`CryptoError::Seal`] if the input exceeds the algorithm's limits.
    pub fn seal_with_nonce(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; plaintext.len() + TAG_LEN];
        self.seal_into(nonce, aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Decrypts `nonce ‖ ciphertext ‖ tag` as produced by [`AeadKey::seal`].
    ///
    /// # Errors
    ///
    /// [`DecryptError`] for every failure, including input shorter than a nonce plus a tag.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let (nonce, rest) = sealed
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(DecryptError)?;
        self.open_with_nonce(nonce, aad, rest)
    }

    /// Decrypts `ciphertext ‖ tag` under a caller-supplied nonce.
    ///
    /// # Errors
    ///
    /// [`DecryptError`] for every failure, including input shorter than a tag.
    pub fn open_with_nonce(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<Vec<u8>, DecryptError> {
        let ct_len = ciphertext_and_tag
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(DecryptError)?;
        let (ciphertext, tag) = ciphertext_and_tag
            .split_at_checked(ct_len)
            .ok_or(DecryptError)?;
        let mut out = vec![0u8; ct_len];
        // Out of place: decrypts straight into the result, no copy of the ciphertext first.
        match self.key.open_separate_gather(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            ciphertext,
            tag,
            &mut out,
        ) {
            Ok(()) => Ok(out),
            Err(_) => {
                // The buffer may hold unauthenticated plaintext (e.g. right key, wrong AAD).
                out.zeroize();
                Err(DecryptError)
            }
        }
    }

    /// Encrypts `in_out` in place under a caller-supplied nonce and returns the tag.
    ///
    /// For bulk paths (the streaming envelope) that reuse their buffers: no allocation and
    /// no copy. The caller must guarantee that `nonce` is never reused with this key.
    ///
    /// # Errors
    ///
    /// [`CryptoError::Seal`] if the input exceeds the algorithm's limits.
    pub fn seal_in_place_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                in_out,
            )
            .map_err(|_| CryptoError::Seal)?;
        self.seals.fetch_add(1, Ordering::Relaxed);
        let mut out = [0u8; TAG_LEN];
        for (dst, src) in out.iter_mut().zip(tag.as_ref()) {
            *dst = *src;
        }
        Ok(out)
    }

    /// Decrypts `ciphertext ‖ tag` in place under a caller-supplied nonce; on success the
    /// plaintext is the first returned number of bytes of `in_out`.
    ///
    /// On failure `in_out` is zeroized (it may hold unauthenticated plaintext).
    ///
    /// # Errors
    ///
    /// [`DecryptError`] for every failure, including input shorter than a tag.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<usize, DecryptError> {
        let result = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), in_out)
            .map(|plain| plain.len());
        match result {
            Ok(len) => Ok(len),
            Err(_) => {
                in_out.zeroize();
                Err(DecryptError)
            }
        }
    }

    /// Writes `ciphertext ‖ tag` of `plaintext` into `out`, which must be exactly
    /// `plaintext.len() + TAG_LEN` bytes.
    ///
    /// Out of place: the plaintext is read once and never copied into the output buffer, so
    /// a failure leaves no plaintext behind. Callers allocate `out` zeroed (`vec![0; n]`),
    /// which for large sizes maps fresh pages instead of writing them twice.
    pub(crate) fn seal_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        if out.len() != plaintext.len().saturating_add(TAG_LEN) {
            return Err(CryptoError::Seal);
        }
        let (ciphertext, tag) = out
            .split_at_mut_checked(plaintext.len())
            .ok_or(CryptoError::Seal)?;
        self.key
            .seal_out_of_place_scatter(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                plaintext,
                ciphertext,
                &[],
                tag,
            )
            .map_err(|_| CryptoError::Seal)?;
        self.seals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey")
            .field("algorithm", &self.alg)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(alg: AeadAlgorithm) -> AeadKey {
        AeadKey::new(alg, &SecretKey::from_bytes([0x42; 32])).unwrap()
    }

    const ALGS: [AeadAlgorithm; 2] = [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::ChaCha20Poly1305];

    #[test]
    fn send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AeadKey>();
    }

    #[test]
    fn round_trip_and_layout() {
        for alg in ALGS {
            let k = key(alg);
            assert_eq!(k.algorithm(), alg);
            for len in [0usize, 1, 15, 16, 17, 1000] {
                let pt = vec![0xa5; len];
                let sealed = k.seal(b"aad", &pt).unwrap();
                assert_eq!(sealed.len(), NONCE_LEN + len + TAG_LEN);
                assert_eq!(k.open(b"aad", &sealed).unwrap(), pt);
                let nonce: [u8; 12] = sealed[..12].try_into().unwrap();
                assert_eq!(
                    k.seal_with_nonce(&nonce, b"aad", &pt).unwrap(),
                    sealed[12..]
                );
                assert_eq!(
                    k.open_with_nonce(&nonce, b"aad", &sealed[12..]).unwrap(),
                    pt
                );
            }
            assert_eq!(k.seal_count(), 12);
        }
    }

    #[test]
    fn in_place_matches_the_allocating_calls() {
        for alg in ALGS {
            let k = key(alg);
            let nonce = [3u8; 12];
            for len in [0usize, 1, 17, 1000] {
                let pt = vec![0x5a; len];
                let mut buf = pt.clone();
                let tag = k.seal_in_place_detached(&nonce, b"aad", &mut buf).unwrap();
                buf.extend_from_slice(&tag);
                assert_eq!(buf, k.seal_with_nonce(&nonce, b"aad", &pt).unwrap());
                let mut opened = buf.clone();
                let n = k.open_in_place(&nonce, b"aad", &mut opened).unwrap();
                assert_eq!(&opened[..n], &pt[..]);
                let mut wrong = buf.clone();
                assert_eq!(
                    k.open_in_place(&nonce, b"other", &mut wrong),
                    Err(DecryptError)
                );
                assert!(wrong.iter().all(|b| *b == 0));
                assert_eq!(
                    k.open_in_place(&nonce, b"", &mut [0u8; 15]),
                    Err(DecryptError)
                );
            }
        }
    }

    #[test]
    fn nonces_differ() {
        let k = key(AeadAlgorithm::Aes256Gcm);
        let a = k.seal(b"", b"same").unwrap();
        let b = k.seal(b"", b"same").unwrap();
        assert_ne!(a[..12], b[..12]);
        assert_ne!(a, b);
    }

    #[test]
    fn failures_are_opaque() {
        for alg in ALGS {
            let k = key(alg);
            let other = AeadKey::new(alg, &SecretKey::from_bytes([0x43; 32])).unwrap();
            let sealed = k.seal(b"aad", b"secret").unwrap();
            assert_eq!(k.open(b"other", &sealed), Err(DecryptError));
            assert_eq!(other.open(b"aad", &sealed), Err(DecryptError));
            for cut in 0..sealed.len() {
                assert_eq!(k.open(b"aad", &sealed[..cut]), Err(DecryptError));
            }
            let nonce = [0u8; 12];
            assert_eq!(
                k.open_with_nonce(&nonce, b"", &[0u8; 15]),
                Err(DecryptError)
            );
        }
    }
}
