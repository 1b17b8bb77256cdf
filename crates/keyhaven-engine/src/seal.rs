//! Auto-unseal: the root key sealed by a key that never leaves an HSM (PKCS#11) or another
//! KMS (transit), instead of by an unseal key split into Shamir shares.
//!
//! The engine knows only the [`AutoSeal`] trait; the server implements it (PKCS#11
//! through cryptoki, transit over HTTPS). Under auto-unseal the raw records of the seal
//! are:
//! - `core/seal-config`: the seal type and the *recovery* share counts (not secret);
//! - `core/root-key`: a [`SealedValue`] blob, the root key encrypted by the seal;
//! - `core/recovery-key`: a check value sealed with the recovery key (AEAD over a fixed
//!   text, AAD: the path). Recovery shares reconstruct the recovery key, which opens the
//!   check value and nothing else: recovery shares authorize, they never decrypt.
//!
//! A [`SealedValue`] names its seal type and the seal key's version, so a rotated HSM key
//! or transit key keeps old blobs readable: the seal looks the named version up.

use async_trait::async_trait;
use zeroize::Zeroizing;

/// What a seal returns: enough to find the key again and decrypt.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue {
    /// The seal type that made it (`pkcs11`, `transit`).
    pub seal_type: String,
    /// The seal key and its version, as the seal names them (e.g. a PKCS#11 key label
    /// and id, or a transit key name and version). Not secret.
    pub key_id: String,
    /// The IV (AES-GCM), empty when the mechanism has none.
    pub iv: Vec<u8>,
    /// The ciphertext (with its tag).
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedValue")
            .field("seal_type", &self.seal_type)
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Why a sealed-value blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed value is malformed: {0}")]
pub struct SealedValueError(&'static str);

const MAGIC: &[u8; 6] = b"KHSEAL";
const FORMAT: u8 = 1;
/// Largest ciphertext accepted (a sealed root key is tens of bytes; an RSA-4096 block 512).
const MAX_CIPHERTEXT: usize = 64 * 1024;

impl SealedValue {
    /// Encode: `KHSEAL` ‖ format(1) ‖ type_len(u8) ‖ type ‖ key_id_len(u16) ‖ key_id ‖
    /// iv_len(u8) ‖ iv ‖ ct_len(u32) ‖ ct. All lengths big-endian.
    pub fn encode(&self) -> Result<Vec<u8>, SealedValueError> {
        let type_len = u8::try_from(self.seal_type.len())
            .map_err(|_| SealedValueError("seal type too long"))?;
        let key_len =
            u16::try_from(self.key_id.len()).map_err(|_| SealedValueError("key id too long"))?;
        let iv_len = u8::try_from(self.iv.len()).map_err(|_| SealedValueError("IV too long"))?;
        if self.ciphertext.len() > MAX_CIPHERTEXT {
            return Err(SealedValueError("ciphertext too long"));
        }
        let ct_len = u32::try_from(self.ciphertext.len())
            .map_err(|_| SealedValueError("ciphertext too long"))?;
        let mut out = Vec::with_capacity(
            14 + self.seal_type.len() + self.key_id.len() + self.iv.len() + self.ciphertext.len(),
        );
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.push(type_len);
        out.extend_from_slice(self.seal_type.as_bytes());
        out.extend_from_slice(&key_len.to_be_bytes());
        out.extend_from_slice(self.key_id.as_bytes());
        out.push(iv_len);
        out.extend_from_slice(&self.iv);
        out.extend_from_slice(&ct_len.to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        Ok(out)
    }

    /// Parse a blob written by [`SealedValue::encode`]; refuses anything else, trailing
    /// bytes included.
    pub fn decode(bytes: &[u8]) -> Result<SealedValue, SealedValueError> {
        let mut r = bytes;
        let magic = take(&mut r, MAGIC.len()).ok_or(SealedValueError("truncated header"))?;
        if magic != MAGIC {
            return Err(SealedValueError("not a sealed value"));
        }
        let format = take(&mut r, 1).ok_or(SealedValueError("truncated header"))?;
        if format != [FORMAT] {
            return Err(SealedValueError("unknown format version"));
        }
        let type_len = usize::from(byte(&mut r)?);
        let seal_type =
            text(take(&mut r, type_len).ok_or(SealedValueError("truncated seal type"))?)?;
        if seal_type.is_empty() {
            return Err(SealedValueError("empty seal type"));
        }
        let key_len = take(&mut r, 2).ok_or(SealedValueError("truncated key id"))?;
        let key_len = usize::from(u16::from_be_bytes([
            key_len.first().copied().unwrap_or(0),
            key_len.get(1).copied().unwrap_or(0),
        ]));
        let key_id = text(take(&mut r, key_len).ok_or(SealedValueError("truncated key id"))?)?;
        let iv_len = usize::from(byte(&mut r)?);
        let iv = take(&mut r, iv_len)
            .ok_or(SealedValueError("truncated IV"))?
            .to_vec();
        let ct_len = take(&mut r, 4).ok_or(SealedValueError("truncated ciphertext length"))?;
        let mut len = [0u8; 4];
        len.copy_from_slice(ct_len);
        let ct_len = usize::try_from(u32::from_be_bytes(len))
            .map_err(|_| SealedValueError("ciphertext too long"))?;
        if ct_len > MAX_CIPHERTEXT {
            return Err(SealedValueError("ciphertext too long"));
        }
        if ct_len == 0 {
            return Err(SealedValueError("empty ciphertext"));
        }
        let ciphertext = take(&mut r, ct_len)
            .ok_or(SealedValueError("truncated ciphertext"))?
            .to_vec();
        if !r.is_empty() {
            return Err(SealedValueError("trailing bytes"));
        }
        Ok(SealedValue {
            seal_type,
            key_id,
            iv,
            ciphertext,
        })
    }
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Some(head)
}

fn byte(r: &mut &[u8]) -> Result<u8, SealedValueError> {
    take(r, 1)
        .and_then(|b| b.first().copied())
        .ok_or(SealedValueError("truncated"))
}

fn text(b: &[u8]) -> Result<String, SealedValueError> {
    let s = std::str::from_utf8(b).map_err(|_| SealedValueError("text field is not UTF-8"))?;
    if s.chars().any(char::is_control) {
        return Err(SealedValueError("text field has control characters"));
    }
    Ok(s.to_owned())
}

/// Why a seal could not encrypt or decrypt. The message names what is wrong (the
/// module, the token, the key, the remote server) and never carries key material.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SealError(pub String);

impl SealError {
    /// An error with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        SealError(reason.into())
    }
}

/// A seal that encrypts the root key with a key it never hands out.
#[async_trait]
pub trait AutoSeal: Send + Sync {
    /// The seal type as `sys/seal-status` reports it (`pkcs11`, `transit`).
    fn seal_type(&self) -> &'static str;
    /// Encrypt `plaintext`, bound to `aad`, with the seal's current key.
    async fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<SealedValue, SealError>;
    /// Decrypt a value this seal (of this type, with any key version it can still find)
    /// made.
    async fn decrypt(
        &self,
        value: &SealedValue,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError>;
}

/// How the server was configured to seal, compared by the core with what storage says.
#[derive(Clone, Default)]
pub enum SealSetup {
    /// Unseal key shares (the default).
    #[default]
    Shamir,
    /// Auto-unseal through this seal.
    Auto(std::sync::Arc<dyn AutoSeal>),
    /// The seal is configured with `disabled = true`: migrate from it back to Shamir
    /// (the seal is still needed once, to decrypt the root key).
    MigrateToShamir(std::sync::Arc<dyn AutoSeal>),
}

impl std::fmt::Debug for SealSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealSetup::Shamir => f.write_str("Shamir"),
            SealSetup::Auto(s) => write!(f, "Auto({})", s.seal_type()),
            SealSetup::MigrateToShamir(s) => write!(f, "MigrateToShamir({})", s.seal_type()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SealedValue {
        SealedValue {
            seal_type: "pkcs11".to_owned(),
            key_id: "label=kek;id=01".to_owned(),
            iv: vec![7; 12],
            ciphertext: vec![9; 48],
        }
    }

    #[test]
    fn a_sealed_value_round_trips_and_names_its_seal_and_key() {
        let v = sample();
        let bytes = v.encode().unwrap();
        assert_eq!(SealedValue::decode(&bytes).unwrap(), v);
        assert!(bytes.starts_with(b"KHSEAL\x01\x06pkcs11"));
    }

    #[test]
    fn malformed_blobs_are_refused_by_reason() {
        let bytes = sample().encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(SealedValue::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            SealedValue::decode(&trailing).unwrap_err(),
            SealedValueError("trailing bytes")
        );
        let mut other = bytes.clone();
        other[6] = 2;
        assert_eq!(
            SealedValue::decode(&other).unwrap_err(),
            SealedValueError("unknown format version")
        );
        assert!(SealedValue::decode(b"\x01\x00\x00").is_err());
    }

    #[test]
    fn debug_shows_no_ciphertext() {
        let shown = format!("{:?}", sample());
        assert!(shown.contains("pkcs11") && !shown.contains("9, 9"));
    }
}
