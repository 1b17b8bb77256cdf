//! Hashing, HMAC, HKDF and constant-time comparison.

use std::fmt;

use aws_lc_rs::{digest, hkdf, hmac};
use subtle::ConstantTimeEq;

use crate::CryptoError;

/// Length in bytes of a SHA-256 digest and of an HMAC-SHA256 tag.
pub const SHA256_LEN: usize = 32;

/// Largest HKDF-SHA256 output RFC 5869 allows: 255 blocks of 32 bytes.
const HKDF_SHA256_MAX_OUT: usize = 255 * SHA256_LEN;

fn to_array(bytes: &[u8]) -> [u8; SHA256_LEN] {
    // Both callers pass a SHA-256-sized output; copying element-wise keeps this panic-free.
    let mut out = [0u8; SHA256_LEN];
    for (dst, src) in out.iter_mut().zip(bytes) {
        *dst = *src;
    }
    out
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; SHA256_LEN] {
    to_array(digest::digest(&digest::SHA256, data).as_ref())
}

/// Compares two byte strings in time that depends only on their lengths.
///
/// Lengths are treated as public: slices of different lengths compare unequal at once.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

struct OkmLen(usize);

impl hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` from `ikm`, then expand with `info` to fill
/// `out`.
///
/// An empty `salt` means the RFC's default salt (32 zero bytes). `out` may be at most
/// 8160 bytes. The caller owns `out` and must zeroize it if it holds key material.
///
/// # Errors
///
/// [`CryptoError::InvalidParameter`] if `out` is longer than 8160 bytes.
pub fn hkdf_sha256(
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    const TOO_LONG: CryptoError = CryptoError::InvalidParameter {
        what: "hkdf output longer than 8160 bytes",
    };
    if out.len() > HKDF_SHA256_MAX_OUT {
        return Err(TOO_LONG);
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    prk.expand(&info, OkmLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| TOO_LONG)
}

/// A prepared HMAC-SHA256 key.
///
/// The key bytes are copied into aws-lc, which cleanses them when the key is dropped. `Debug`
/// prints `HmacKey(…)` only.
pub struct HmacKey(hmac::Key);

impl HmacKey {
    /// Prepares `key` (any length; RFC 2104 hashes keys longer than the block size).
    pub fn new(key: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// The HMAC-SHA256 tag of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; SHA256_LEN] {
        to_array(hmac::sign(&self.0, msg).as_ref())
    }

    /// Whether `tag` is the HMAC-SHA256 tag of `msg`, compared in constant time.
    ///
    /// A tag of the wrong length is simply rejected.
    pub fn verify(&self, msg: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.0, msg, tag).is_ok()
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_rfc4231_case_2() {
        let k = HmacKey::new(b"Jefe");
        let tag = k.sign(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(k.verify(b"what do ya want for nothing?", &tag));
        assert!(!k.verify(b"what do ya want for nothing!", &tag));
        assert!(!k.verify(b"what do ya want for nothing?", &tag[..31]));
        assert!(!k.verify(b"what do ya want for nothing?", &[]));
    }

    #[test]
    fn hkdf_rfc5869_case_1() {
        let ikm = [0x0b; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let mut okm = [0u8; 42];
        hkdf_sha256(&ikm, &salt, &info, &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn hkdf_length_limits() {
        let mut max = vec![0u8; 8160];
        hkdf_sha256(b"ikm", b"", b"", &mut max).unwrap();
        let mut over = vec![0u8; 8161];
        assert!(matches!(
            hkdf_sha256(b"ikm", b"", b"", &mut over),
            Err(CryptoError::InvalidParameter { .. })
        ));
        hkdf_sha256(b"ikm", b"", b"", &mut []).unwrap();
    }

    #[test]
    fn ct_eq_semantics() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
