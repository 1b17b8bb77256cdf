//! ECDSA on P-256 and P-384 with any hash, as Vault allows (`sha2-384` on P-256, `sha2-256`
//! on P-384, SHA-1, SHA-3, …).
//!
//! aws-lc-rs signs each curve with its own hash only (P-256 with SHA2-256, P-384 with
//! SHA2-384); those pairs stay on it ([`super::key`]). Every other pair signs and verifies
//! a digest here, with RustCrypto's constant-time implementations, as Go's `crypto/ecdsa`
//! does (and so Vault and OpenBao): the digest is read as a big-endian integer of the
//! curve's size, truncated to its leftmost bytes when longer and zero-extended on the left
//! when shorter. Nonces are RFC 6979 deterministic.

use p256::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
use p256::pkcs8::DecodePrivateKey as _;

use super::key::{KeyType, Marshaling};
use crate::CryptoError;

const SIGN_FAILED: CryptoError = CryptoError::InvalidParameter {
    what: "signing failed",
};

/// The digest as the curve reads it: at least as long as its field, zero-extended on the
/// left (the same integer); longer digests are truncated by the signer and verifier.
fn curve_input(digest: &[u8], field_len: usize) -> Vec<u8> {
    let mut out = vec![0u8; field_len.saturating_sub(digest.len())];
    out.extend_from_slice(digest);
    out
}

macro_rules! per_curve {
    ($kind:expr, $curve:ident => $body:block) => {
        match $kind {
            KeyType::EcdsaP256 => {
                use p256 as $curve;
                $body
            }
            KeyType::EcdsaP384 => {
                use p384 as $curve;
                $body
            }
            _ => Err(CryptoError::InvalidParameter {
                what: "not an ECDSA key type",
            }),
        }
    };
}

/// Signs `digest` with the PKCS#8 private key `pkcs8` of curve `kind`.
pub(super) fn sign_digest(
    kind: KeyType,
    pkcs8: &[u8],
    digest: &[u8],
    marshaling: Marshaling,
) -> Result<Vec<u8>, CryptoError> {
    per_curve!(kind, curve => {
        let key = curve::ecdsa::SigningKey::from_pkcs8_der(pkcs8).map_err(|_| SIGN_FAILED)?;
        let input = curve_input(digest, curve::FieldBytes::default().len());
        let sig: curve::ecdsa::Signature = key.sign_prehash(&input).map_err(|_| SIGN_FAILED)?;
        Ok(match marshaling {
            Marshaling::Asn1 => sig.to_der().as_bytes().to_vec(),
            Marshaling::Jws => sig.to_bytes().to_vec(),
        })
    })
}

/// Whether `sig` (DER for asn1, `r ‖ s` for jws) signs `digest` under the uncompressed
/// public point `public` of curve `kind`. Anything malformed is simply `false`.
///
/// # Errors
///
/// [`CryptoError::InvalidParameter`] if `kind` is not an ECDSA type.
pub fn verify_digest(
    kind: KeyType,
    public: &[u8],
    digest: &[u8],
    sig: &[u8],
    marshaling: Marshaling,
) -> Result<bool, CryptoError> {
    per_curve!(kind, curve => {
        let Ok(key) = curve::ecdsa::VerifyingKey::from_sec1_bytes(public) else {
            return Ok(false);
        };
        let parsed = match marshaling {
            Marshaling::Asn1 => curve::ecdsa::Signature::from_der(sig),
            Marshaling::Jws => curve::ecdsa::Signature::from_slice(sig),
        };
        let Ok(sig) = parsed else {
            return Ok(false);
        };
        let input = curve_input(digest, curve::FieldBytes::default().len());
        Ok(key.verify_prehash(&input, &sig).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::curve_input;

    #[test]
    fn short_digests_are_zero_extended_and_long_ones_left_for_truncation() {
        assert_eq!(curve_input(&[1, 2], 4), vec![0, 0, 1, 2]);
        assert_eq!(curve_input(&[1, 2, 3, 4], 4), vec![1, 2, 3, 4]);
        assert_eq!(curve_input(&[1, 2, 3, 4, 5], 4), vec![1, 2, 3, 4, 5]);
    }
}
