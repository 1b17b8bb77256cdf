//! Key-encryption-key providers: the trait, and a local key read from a key file.

use std::fmt;
use std::path::Path;

use async_trait::async_trait;
use keyhaven_crypto::{AeadAlgorithm, AeadKey, HmacKey, KEY_LEN, NONCE_LEN, SecretKey};
use zeroize::Zeroizing;

use crate::error::KekError;
use crate::format::{KekKind, WrappedKey};

/// A key-encryption key: wraps a message's data key on encryption, unwraps it on
/// decryption, and may rewrap it under its newest version.
///
/// `aad` is the associated data every wrapping is bound to (the algorithm and the
/// encryption context, [`crate::format::wrap_aad`]).
#[async_trait]
pub trait KekProvider: Send + Sync {
    /// The kind of KEK, as written in the header.
    fn kind(&self) -> KekKind;

    /// The KEK's address-independent name, as written in the header.
    fn key_ref(&self) -> &str;

    /// `kind:key_ref`, for messages.
    fn label(&self) -> String {
        format!("{}:{}", self.kind().as_str(), self.key_ref())
    }

    /// Whether this provider can try to open `entry`.
    fn matches(&self, entry: &WrappedKey) -> bool {
        entry.kind == self.kind() && entry.key_ref == self.key_ref()
    }

    /// A fresh data key and its wrapping. The default draws the key locally and wraps it;
    /// the transit provider asks the server for one (`datakey/plaintext`).
    async fn generate(&self, aad: &[u8]) -> Result<(SecretKey, WrappedKey), KekError> {
        let dek = SecretKey::generate().map_err(|e| KekError::Other(e.to_string()))?;
        let wrapped = self.wrap(&dek, aad).await?;
        Ok((dek, wrapped))
    }

    /// Wraps `dek`.
    async fn wrap(&self, dek: &SecretKey, aad: &[u8]) -> Result<WrappedKey, KekError>;

    /// Unwraps `entry`, which [`KekProvider::matches`].
    async fn unwrap(&self, entry: &WrappedKey, aad: &[u8]) -> Result<SecretKey, KekError>;

    /// Rewraps `entry` under the KEK's newest version without revealing the data key, or
    /// `None` if the provider cannot (the caller then unwraps and wraps).
    async fn rewrap(
        &self,
        _entry: &WrappedKey,
        _aad: &[u8],
    ) -> Result<Option<WrappedKey>, KekError> {
        Ok(None)
    }
}

/// A local 256-bit KEK, for tests and air-gapped recovery.
///
/// The key file holds the key as 64 hexadecimal characters (surrounding whitespace is
/// ignored). The key is named in headers by its key id: the first 16 bytes, in hex, of
/// HMAC-SHA256(key, "keyhaven-envelope/v1 local key id"). A data key is wrapped as
/// `nonce (12) ‖ AES-256-GCM(KEK, nonce, data key, aad) ‖ tag (16)` under a random nonce.
pub struct LocalKek {
    key: AeadKey,
    id: String,
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LocalKek {
    /// The KEK with this key.
    pub fn new(key: &SecretKey) -> Result<Self, KekError> {
        let tag = HmacKey::new(key.expose_secret()).sign(b"keyhaven-envelope/v1 local key id");
        let id = hex::encode(tag.get(..16).unwrap_or(&tag[..]));
        let key = AeadKey::new(AeadAlgorithm::Aes256Gcm, key)
            .map_err(|e| KekError::Other(e.to_string()))?;
        Ok(Self { key, id })
    }

    /// Reads a key file (64 hex characters).
    pub fn from_file(path: &Path) -> Result<Self, KekError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            KekError::Other(format!("cannot read the key file {}: {e}", path.display()))
        })?);
        Self::from_hex(text.trim()).map_err(|_| {
            KekError::Other(format!(
                "the key file {} does not hold a 256-bit key as 64 hexadecimal characters",
                path.display()
            ))
        })
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, KekError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text, &mut bytes[..])
            .map_err(|_| KekError::Other("not a 256-bit hex key".into()))?;
        Self::new(&SecretKey::take(&mut bytes))
    }

    /// A new random key as the text of a key file.
    pub fn generate_file_text() -> Result<Zeroizing<String>, KekError> {
        let key = SecretKey::generate().map_err(|e| KekError::Other(e.to_string()))?;
        Ok(Zeroizing::new(format!(
            "{}\n",
            hex::encode(key.expose_secret())
        )))
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Wraps with a caller-chosen nonce (golden vectors only).
    #[doc(hidden)]
    pub fn wrap_with_nonce(
        &self,
        dek: &SecretKey,
        aad: &[u8],
        nonce: &[u8; NONCE_LEN],
    ) -> Result<WrappedKey, KekError> {
        let mut ciphertext = nonce.to_vec();
        ciphertext.extend_from_slice(
            &self
                .key
                .seal_with_nonce(nonce, aad, dek.expose_secret())
                .map_err(|e| KekError::Other(e.to_string()))?,
        );
        Ok(self.entry(ciphertext))
    }

    fn entry(&self, ciphertext: Vec<u8>) -> WrappedKey {
        WrappedKey {
            kind: KekKind::Local,
            key_ref: self.id.clone(),
            version: 1,
            ciphertext,
        }
    }
}

#[async_trait]
impl KekProvider for LocalKek {
    fn kind(&self) -> KekKind {
        KekKind::Local
    }

    fn key_ref(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, dek: &SecretKey, aad: &[u8]) -> Result<WrappedKey, KekError> {
        let sealed = self
            .key
            .seal(aad, dek.expose_secret())
            .map_err(|e| KekError::Other(e.to_string()))?;
        Ok(self.entry(sealed))
    }

    async fn unwrap(&self, entry: &WrappedKey, aad: &[u8]) -> Result<SecretKey, KekError> {
        if entry.version != 1 {
            return Err(KekError::Rejected);
        }
        let plain = Zeroizing::new(
            self.key
                .open(aad, &entry.ciphertext)
                .map_err(|_| KekError::Rejected)?,
        );
        SecretKey::from_slice(&plain).map_err(|_| KekError::Rejected)
    }
}
