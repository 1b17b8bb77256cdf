//! A KEK held by keyhaven transit (or Vault/OpenBao's), reached through the client.
//!
//! | operation | call |
//! |---|---|
//! | generate | `datakey/plaintext/<name>` `{bits: 256, associated_data}` |
//! | wrap | `encrypt/<name>` `{plaintext, associated_data}` |
//! | unwrap | `decrypt/<name>` `{ciphertext, associated_data}` |
//! | rewrap | `rewrap/<name>` `{ciphertext, associated_data}` |
//!
//! The wrapping is bound to the message's encryption context through the transit key's
//! associated data, so the key must be an AEAD type (`aes256-gcm96`, `chacha20-poly1305`).

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyhaven_client::{Client, ClientError};
use keyhaven_crypto::SecretKey;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::error::KekError;
use crate::format::{KekKind, WrappedKey};
use crate::kek::KekProvider;

/// A transit key `mount/name` on the server `client` talks to.
#[derive(Debug, Clone)]
pub struct TransitKek {
    client: Client,
    key_ref: String,
    mount: String,
    name: String,
}

impl TransitKek {
    /// The key `mount/name` (the mount may have several segments: `team/transit/app`).
    ///
    /// # Errors
    ///
    /// [`KekError::Other`] if `key_ref` is not `MOUNT/NAME` with non-empty parts.
    pub fn new(client: Client, key_ref: &str) -> Result<Self, KekError> {
        let trimmed = key_ref.trim_matches('/');
        let (mount, name) = trimmed
            .rsplit_once('/')
            .filter(|(m, n)| !m.is_empty() && !n.is_empty())
            .ok_or_else(|| {
                KekError::Other(format!(
                    "invalid key {key_ref:?}: expected MOUNT/NAME, e.g. transit/backup"
                ))
            })?;
        if trimmed
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(KekError::Other(format!(
                "invalid key {key_ref:?}: empty, . or .. path segment"
            )));
        }
        Ok(Self {
            client,
            key_ref: trimmed.to_owned(),
            mount: mount.to_owned(),
            name: name.to_owned(),
        })
    }

    async fn call(&self, op: &str, body: Value) -> Result<Value, KekError> {
        let path = format!("{}/{op}/{}", self.mount, self.name);
        let answer = self
            .client
            .write(&path, Some(&body))
            .await
            .map_err(classify)?;
        answer
            .and_then(|a| a.get("data").cloned())
            .ok_or_else(|| KekError::Other(format!("the answer of {path} has no data")))
    }

    fn entry(&self, data: &Value) -> Result<WrappedKey, KekError> {
        let ciphertext = data
            .get("ciphertext")
            .and_then(Value::as_str)
            .ok_or_else(|| KekError::Other("the server's answer has no ciphertext".into()))?;
        Ok(WrappedKey {
            kind: KekKind::Transit,
            key_ref: self.key_ref.clone(),
            version: ciphertext_version(ciphertext)?,
            ciphertext: ciphertext.as_bytes().to_vec(),
        })
    }
}

/// The version `N` of a `vault:vN:…` ciphertext.
fn ciphertext_version(ciphertext: &str) -> Result<u32, KekError> {
    ciphertext
        .strip_prefix("vault:v")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(v, _)| v.parse::<u32>().ok())
        .ok_or_else(|| KekError::Other("the server's ciphertext is not vault:vN:…".into()))
}

fn classify(e: ClientError) -> KekError {
    if e.is_transport() {
        return KekError::Unreachable(e.to_string());
    }
    match e.status() {
        Some(401 | 403) => KekError::NotAuthorized(e.to_string()),
        Some(400)
            if e.api_errors()
                .iter()
                .any(|m| m.contains("decryption failed")) =>
        {
            KekError::Rejected
        }
        _ => KekError::Other(e.to_string()),
    }
}

fn data_key(data: &Value) -> Result<SecretKey, KekError> {
    let encoded = data
        .get("plaintext")
        .and_then(Value::as_str)
        .ok_or_else(|| KekError::Other("the server's answer has no plaintext".into()))?;
    let bytes = Zeroizing::new(
        B64.decode(encoded)
            .map_err(|_| KekError::Other("the server's data key is not base64".into()))?,
    );
    SecretKey::from_slice(&bytes)
        .map_err(|_| KekError::Other("the server's data key is not 256 bits".into()))
}

#[async_trait]
impl KekProvider for TransitKek {
    fn kind(&self) -> KekKind {
        KekKind::Transit
    }

    fn key_ref(&self) -> &str {
        &self.key_ref
    }

    async fn generate(&self, aad: &[u8]) -> Result<(SecretKey, WrappedKey), KekError> {
        let data = self
            .call(
                "datakey/plaintext",
                json!({"bits": 256, "associated_data": B64.encode(aad)}),
            )
            .await?;
        Ok((data_key(&data)?, self.entry(&data)?))
    }

    async fn wrap(&self, dek: &SecretKey, aad: &[u8]) -> Result<WrappedKey, KekError> {
        let plaintext = Zeroizing::new(B64.encode(dek.expose_secret()));
        let data = self
            .call(
                "encrypt",
                json!({"plaintext": plaintext.as_str(), "associated_data": B64.encode(aad)}),
            )
            .await?;
        self.entry(&data)
    }

    async fn unwrap(&self, entry: &WrappedKey, aad: &[u8]) -> Result<SecretKey, KekError> {
        let ciphertext = std::str::from_utf8(&entry.ciphertext).map_err(|_| KekError::Rejected)?;
        let data = self
            .call(
                "decrypt",
                json!({"ciphertext": ciphertext, "associated_data": B64.encode(aad)}),
            )
            .await?;
        data_key(&data)
    }

    async fn rewrap(&self, entry: &WrappedKey, aad: &[u8]) -> Result<Option<WrappedKey>, KekError> {
        let ciphertext = std::str::from_utf8(&entry.ciphertext).map_err(|_| KekError::Rejected)?;
        let data = self
            .call(
                "rewrap",
                json!({"ciphertext": ciphertext, "associated_data": B64.encode(aad)}),
            )
            .await?;
        self.entry(&data).map(Some)
    }
}
