//! Shamir secret sharing over GF(256), used to split the unseal key.
//!
//! The arithmetic is `vsss-rs`'s `Gf256` (constant time: no log/exp lookup tables). Each byte
//! of the secret is the constant term of its own random polynomial of degree `threshold - 1`;
//! share `x` holds the polynomial values at `x`.
//!
//! Share encoding follows Vault: `y-bytes ‖ x`, where `x` is one byte in `1..=255`. A share of
//! a 32-byte secret is therefore 33 bytes. This build hands out `x = 1, 2, …, shares`; any
//! distinct non-zero `x` values combine.
//!
//! With `threshold == 1` every share carries the secret itself (still as `secret ‖ x`); the
//! polynomial is constant, so any number of such shares combine to it. (Vault instead returns
//! the bare key when asked for a single share; this crate keeps one layout.)
//!
//! **Combining fewer shares than the threshold is not an error**: the mathematics produces a
//! uniformly random-looking value, and nothing in a share records the threshold. Callers must
//! check the result — the engine does, by opening a value sealed under the recombined key.
//!
//! Memory hygiene: shares and recombined secrets zeroize on drop, and so do the intermediate
//! buffers this module owns. The polynomial coefficients inside `vsss-rs`, and the state of
//! the seeded generator used for them, are dropped without being zeroized.

use std::fmt;

use rand::SeedableRng;
use rand::rngs::StdRng;
use vsss_rs::Gf256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{SecretBytes, fill_random};

/// Why a Shamir split or combine was refused.
///
/// No variant carries share bytes or secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShamirError {
    /// `threshold` and `shares` do not satisfy `1 <= threshold <= shares <= 255`.
    #[error("invalid parameters: need 1 <= threshold ({threshold}) <= shares ({shares}) <= 255")]
    InvalidParameters {
        /// The requested threshold.
        threshold: u8,
        /// The requested number of shares.
        shares: u8,
    },
    /// The secret to split is empty.
    #[error("the secret to split is empty")]
    EmptySecret,
    /// A share is too short (needs at least one y byte and the x byte) or has `x == 0`.
    #[error("malformed share")]
    Malformed,
    /// The shares given to combine have different lengths.
    #[error("shares have different lengths")]
    LengthMismatch,
    /// Two shares given to combine have the same x coordinate.
    #[error("duplicate share")]
    DuplicateShare,
    /// No share was given to combine.
    #[error("too few shares")]
    TooFewShares,
    /// The random number generator failed while splitting.
    #[error("the random number generator failed")]
    Random,
    /// The secret-sharing arithmetic reported an error it should not have.
    #[error("secret sharing failed")]
    Backend,
}

fn from_vsss(e: vsss_rs::Error) -> ShamirError {
    match e {
        vsss_rs::Error::SharingDuplicateIdentifier => ShamirError::DuplicateShare,
        vsss_rs::Error::SharingInvalidIdentifier | vsss_rs::Error::InvalidShare => {
            ShamirError::Malformed
        }
        _ => ShamirError::Backend,
    }
}

/// One Shamir share, encoded `y-bytes ‖ x`.
///
/// Zeroized on drop; `Debug` shows the (public) x coordinate only; no `Clone`.
pub struct Share(Vec<u8>);

impl Share {
    /// Parses an encoded share (`y-bytes ‖ x`), taking ownership of the buffer.
    ///
    /// # Errors
    ///
    /// [`ShamirError::Malformed`] if `bytes` is shorter than 2 bytes or its last byte (x) is 0.
    /// The rejected buffer is zeroized.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, ShamirError> {
        let mut bytes = bytes;
        match bytes.last() {
            Some(&x) if x != 0 && bytes.len() >= 2 => Ok(Self(bytes)),
            _ => {
                bytes.zeroize();
                Err(ShamirError::Malformed)
            }
        }
    }

    /// The encoded share, `y-bytes ‖ x`: the explicit crossing to plain bytes (for handing the
    /// share to its holder).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The share's x coordinate (`1..=255`).
    pub fn x(&self) -> u8 {
        // Construction guarantees a non-empty buffer.
        self.0.last().copied().unwrap_or(0)
    }

    fn y(&self) -> &[u8] {
        self.0.split_last().map_or(&[], |(_, y)| y)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for Share {}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x())
            .finish_non_exhaustive()
    }
}

/// Splits `secret` into `shares` shares, any `threshold` of which recombine it.
///
/// Requires `1 <= threshold <= shares` (and `shares <= 255`, which `u8` enforces) and a
/// non-empty secret. Shares get `x = 1..=shares`.
///
/// # Errors
///
/// [`ShamirError::InvalidParameters`], [`ShamirError::EmptySecret`], or
/// [`ShamirError::Random`] if the random number generator fails.
pub fn split(secret: &[u8], threshold: u8, shares: u8) -> Result<Vec<Share>, ShamirError> {
    if threshold == 0 || shares < threshold {
        return Err(ShamirError::InvalidParameters { threshold, shares });
    }
    if secret.is_empty() {
        return Err(ShamirError::EmptySecret);
    }
    if threshold == 1 {
        // vsss-rs refuses t = 1. The degree-0 polynomial is the secret itself.
        return Ok((1..=shares)
            .map(|x| {
                let mut v = Vec::with_capacity(secret.len() + 1);
                v.extend_from_slice(secret);
                v.push(x);
                Share(v)
            })
            .collect());
    }

    let mut seed = Zeroizing::new([0u8; 32]);
    fill_random(&mut seed[..]).map_err(|_| ShamirError::Random)?;
    let mut rng = StdRng::from_seed(*seed);
    let mut raw = Gf256::split_bytes(
        usize::from(threshold),
        usize::from(shares),
        secret,
        &mut rng,
    )
    .map_err(from_vsss)?;

    // vsss-rs encodes `x ‖ y`; re-encode as `y ‖ x`.
    let out = raw
        .iter()
        .map(|v| match v.split_first() {
            Some((&x, y)) if x != 0 && !y.is_empty() => {
                let mut s = Vec::with_capacity(v.len());
                s.extend_from_slice(y);
                s.push(x);
                Ok(Share(s))
            }
            _ => Err(ShamirError::Backend),
        })
        .collect::<Result<Vec<_>, _>>();
    raw.iter_mut().for_each(Zeroize::zeroize);
    let out = out?;
    if out.len() != usize::from(shares) {
        return Err(ShamirError::Backend);
    }
    Ok(out)
}

/// Recombines a secret from shares.
///
/// Shares must have equal lengths and distinct x coordinates. One share alone yields its
/// y-bytes (the secret when the threshold was 1).
///
/// **Fewer shares than the threshold give a wrong secret, not an error**: verify the result.
///
/// # Errors
///
/// [`ShamirError::TooFewShares`] for an empty slice, [`ShamirError::LengthMismatch`],
/// [`ShamirError::DuplicateShare`].
pub fn combine(shares: &[Share]) -> Result<SecretBytes, ShamirError> {
    let first = shares.first().ok_or(ShamirError::TooFewShares)?;
    let len = first.0.len();
    if shares.iter().any(|s| s.0.len() != len) {
        return Err(ShamirError::LengthMismatch);
    }
    let mut seen = [false; 256];
    for s in shares {
        match seen.get_mut(usize::from(s.x())) {
            Some(slot) if !*slot => *slot = true,
            _ => return Err(ShamirError::DuplicateShare),
        }
    }
    if shares.len() == 1 {
        return Ok(SecretBytes::new(first.y().to_vec()));
    }

    let mut raw: Vec<Vec<u8>> = shares
        .iter()
        .map(|s| {
            let mut v = Vec::with_capacity(len);
            v.push(s.x());
            v.extend_from_slice(s.y());
            v
        })
        .collect();
    let secret = Gf256::combine_bytes(&raw).map_err(from_vsss);
    raw.iter_mut().for_each(Zeroize::zeroize);
    secret.map(SecretBytes::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_parsing() {
        assert_eq!(
            Share::from_bytes(vec![]).unwrap_err(),
            ShamirError::Malformed
        );
        assert_eq!(
            Share::from_bytes(vec![5]).unwrap_err(),
            ShamirError::Malformed
        );
        assert_eq!(
            Share::from_bytes(vec![5, 0]).unwrap_err(),
            ShamirError::Malformed
        );
        let s = Share::from_bytes(vec![5, 6, 7]).unwrap();
        assert_eq!(s.x(), 7);
        assert_eq!(s.y(), &[5, 6]);
        assert_eq!(s.as_bytes(), &[5, 6, 7]);
    }

    #[test]
    fn parameters() {
        assert_eq!(
            split(b"s", 0, 1).unwrap_err(),
            ShamirError::InvalidParameters {
                threshold: 0,
                shares: 1
            }
        );
        assert!(matches!(
            split(b"s", 3, 2),
            Err(ShamirError::InvalidParameters { .. })
        ));
        assert_eq!(split(b"", 2, 3).unwrap_err(), ShamirError::EmptySecret);
        assert_eq!(combine(&[]).unwrap_err(), ShamirError::TooFewShares);
    }

    #[test]
    fn layout_is_y_then_x() {
        let shares = split(&[0xaa; 32], 2, 3).unwrap();
        for (i, s) in shares.iter().enumerate() {
            assert_eq!(s.as_bytes().len(), 33);
            assert_eq!(usize::from(s.x()), i + 1);
        }
    }
}
