//! The barrier entry codec: how every value keyhaven writes to storage is encrypted.
//!
//! Layout (all lengths in bytes):
//!
//! ```text
//! FORMAT_VERSION (1, = 1) ‖ term (4, u32 big-endian) ‖ nonce (12) ‖ ciphertext (n) ‖ tag (16)
//! ```
//!
//! The AEAD's associated data is the 5 header bytes followed by the storage path (UTF-8).
//! So an entry cannot be copied to another path, nor relabelled with another keyring term or
//! format version: any of these makes [`open`] fail.
//!
//! The header is public: [`peek_term`] reads it without a key so the caller can pick the
//! keyring term's key. The algorithm is not encoded; it is a property of the term's key. The
//! nonce is random for every entry, so the same value written twice gives different entries.
//!
//! The exact bytes are pinned by a golden vector in the test suite. A change to the layout or
//! the AAD needs a new [`FORMAT_VERSION`], and entries of the old version must keep opening.

use crate::{AeadKey, CryptoError, DecryptError, NONCE_LEN, TAG_LEN, fill_nonce};

/// The format version this build writes (and the only one it reads).
pub const FORMAT_VERSION: u8 = 1;

/// Length of the header: version byte plus the big-endian term.
pub const HEADER_LEN: usize = 5;

/// Length of the shortest possible entry (empty plaintext).
pub const MIN_ENTRY_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// Overhead an entry adds to its plaintext.
pub const OVERHEAD: usize = MIN_ENTRY_LEN;

fn header(term: u32) -> [u8; HEADER_LEN] {
    let [a, b, c, d] = term.to_be_bytes();
    [FORMAT_VERSION, a, b, c, d]
}

/// Calls `f` with the associated data of an entry at `path`: `header ‖ path`. Built on the
/// stack when it fits in [`STACK_AAD_LEN`] bytes (nearly every storage path), else on the
/// heap.
fn with_aad<R>(header: &[u8; HEADER_LEN], path: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    let len = HEADER_LEN + path.len();
    let mut stack = [0u8; STACK_AAD_LEN];
    if let Some(aad) = stack.get_mut(..len)
        && let Some((head, rest)) = aad.split_first_chunk_mut::<HEADER_LEN>()
    {
        *head = *header;
        rest.copy_from_slice(path.as_bytes());
        return f(aad);
    }
    let mut aad = Vec::with_capacity(len);
    aad.extend_from_slice(header);
    aad.extend_from_slice(path.as_bytes());
    f(&aad)
}

/// The longest associated data [`with_aad`] builds on the stack.
const STACK_AAD_LEN: usize = 256;

/// Encrypts `plaintext` for storage at `path` under the keyring term `term`, whose key is
/// `key`.
///
/// # Errors
///
/// [`CryptoError::Random`] if no nonce could be drawn; [`CryptoError::Seal`] if the input is
/// too large for the algorithm.
pub fn seal(
    term: u32,
    key: &AeadKey,
    path: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_nonce(&mut nonce)?;
    seal_with_nonce(term, key, path, &nonce, plaintext)
}

/// [`seal`] with a caller-chosen nonce, for golden vectors and fuzzing only (re-exported from
/// the hidden `internal` module). Reusing a nonce under one key is catastrophic.
pub fn seal_with_nonce(
    term: u32,
    key: &AeadKey,
    path: &str,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let header = header(term);
    let mut out = vec![0u8; OVERHEAD + plaintext.len()];
    let (head, body) = out
        .split_first_chunk_mut::<HEADER_LEN>()
        .ok_or(CryptoError::Seal)?;
    *head = header;
    let (nonce_out, body) = body
        .split_first_chunk_mut::<NONCE_LEN>()
        .ok_or(CryptoError::Seal)?;
    *nonce_out = *nonce;
    with_aad(&header, path, |aad| {
        key.seal_into(nonce, aad, plaintext, body)
    })?;
    Ok(out)
}

/// Reads the keyring term from an entry's header without decrypting it.
///
/// Only the header is looked at; a header that parses says nothing about whether the rest
/// will authenticate.
///
/// # Errors
///
/// [`CryptoError::Format`] if `entry` is shorter than the header;
/// [`CryptoError::UnsupportedVersion`] if its version byte is not [`FORMAT_VERSION`].
pub fn peek_term(entry: &[u8]) -> Result<u32, CryptoError> {
    let (header, _) = entry
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(CryptoError::Format {
            what: "barrier entry shorter than its header",
        })?;
    let [version, a, b, c, d] = *header;
    if version != FORMAT_VERSION {
        return Err(CryptoError::UnsupportedVersion { version });
    }
    Ok(u32::from_be_bytes([a, b, c, d]))
}

/// Decrypts an entry stored at `path` with the key of the term its header names.
///
/// # Errors
///
/// [`DecryptError`] for every failure: truncated or malformed input, unknown version, wrong
/// key, wrong path, altered header or altered bytes anywhere.
pub fn open(key: &AeadKey, path: &str, entry: &[u8]) -> Result<Vec<u8>, DecryptError> {
    let (header, rest) = entry
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(DecryptError)?;
    if header.first() != Some(&FORMAT_VERSION) {
        return Err(DecryptError);
    }
    let (nonce, ciphertext_and_tag) = rest.split_first_chunk::<NONCE_LEN>().ok_or(DecryptError)?;
    with_aad(header, path, |aad| {
        key.open_with_nonce(nonce, aad, ciphertext_and_tag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AeadAlgorithm, SecretKey};

    fn key() -> AeadKey {
        AeadKey::new(AeadAlgorithm::Aes256Gcm, &SecretKey::from_bytes([1; 32])).unwrap()
    }

    #[test]
    fn layout() {
        let k = key();
        let e = seal(0x0102_0304, &k, "kv/data/a", b"hello").unwrap();
        assert_eq!(e.len(), OVERHEAD + 5);
        assert_eq!(e[..5], [1, 1, 2, 3, 4]);
        assert_eq!(peek_term(&e).unwrap(), 0x0102_0304);
        assert_eq!(open(&k, "kv/data/a", &e).unwrap(), b"hello");
    }

    #[test]
    fn peek_term_errors() {
        assert!(matches!(peek_term(&[]), Err(CryptoError::Format { .. })));
        assert!(matches!(
            peek_term(&[1, 0, 0, 0]),
            Err(CryptoError::Format { .. })
        ));
        assert_eq!(
            peek_term(&[2, 0, 0, 0, 1]),
            Err(CryptoError::UnsupportedVersion { version: 2 })
        );
        assert_eq!(peek_term(&[1, 0, 0, 0, 7]), Ok(7));
    }
}
