//! The transit seal: the root key is encrypted by a transit key of another keyhaven, or
//! of an OpenBao or Vault server (`POST <mount>/encrypt/<key>`, `<mount>/decrypt/<key>`).
//!
//! The blob keeps the remote ciphertext (`vault:v<N>:…`) whole and names the key and its
//! version, so a rotated transit key keeps old blobs readable (the remote server decrypts
//! every version above its `min_decryption_version`). The token is renewed in the
//! background at half its TTL while it is renewable. A remote server that is sealed or
//! stopped is reported with its answer, and the caller retries.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use keyhaven_engine::seal::{AutoSeal, SealError, SealedValue};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::seal_config::TransitSettings;

/// Largest response body read from the transit server.
const MAX_BODY: usize = 64 * 1024;
/// Shortest and longest wait between token renewals.
const MIN_RENEW: Duration = Duration::from_secs(1);
const MAX_RENEW: Duration = Duration::from_secs(3600);

/// The transit seal.
pub struct TransitSeal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TransitSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitSeal")
            .field("address", &self.inner.settings.address)
            .field("key_name", &self.inner.settings.key_name)
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: TransitSettings,
    client: Result<reqwest::Client, String>,
}

impl TransitSeal {
    /// A seal over `settings`. A CA file that cannot be read is reported at each use.
    pub fn new(settings: TransitSettings) -> Self {
        let client = match &settings.tls_ca_cert {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(pem) => crate::outbound::seal_client(Some(&pem)),
                Err(e) => Err(format!(
                    "cannot read seal.tls_ca_cert {}: {e}",
                    path.display()
                )),
            },
            None => crate::outbound::seal_client(None),
        };
        TransitSeal {
            inner: Arc::new(Inner { settings, client }),
        }
    }

    /// Renew the token at half its TTL for as long as the returned task runs (the server
    /// aborts it at shutdown). A token that is not renewable, or has no TTL, is left
    /// alone.
    pub fn spawn_token_renewal(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                let wait = match inner.call("GET", "auth/token/lookup-self", None).await {
                    Ok(v) => {
                        let ttl = v.pointer("/data/ttl").and_then(Value::as_u64).unwrap_or(0);
                        let renewable = v
                            .pointer("/data/renewable")
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                        if !renewable || ttl == 0 {
                            tracing::info!(target: "keyhaven::seal", "the transit seal's token is not renewable or has no TTL; not renewing it");
                            return;
                        }
                        Duration::from_secs(ttl / 2).clamp(MIN_RENEW, MAX_RENEW)
                    }
                    Err(e) => {
                        tracing::warn!(target: "keyhaven::seal", error = %e, "cannot look up the transit seal's token; retrying");
                        Duration::from_secs(10)
                    }
                };
                tokio::time::sleep(wait).await;
                match inner
                    .call("POST", "auth/token/renew-self", Some(json!({})))
                    .await
                {
                    Ok(v) => {
                        let ttl = v
                            .pointer("/auth/lease_duration")
                            .and_then(Value::as_u64)
                            .unwrap_or(0);
                        tracing::info!(target: "keyhaven::seal", ttl, "renewed the transit seal's token");
                    }
                    Err(e) => {
                        tracing::warn!(target: "keyhaven::seal", error = %e, "cannot renew the transit seal's token");
                    }
                }
            }
        })
    }
}

impl Inner {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, SealError> {
        let s = &self.settings;
        let client = self
            .client
            .as_ref()
            .map_err(|e| SealError::new(e.clone()))?;
        let url = format!("{}/v1/{path}", s.address);
        let mut rb = match method {
            "GET" => client.get(&url),
            _ => client.post(&url),
        };
        rb = rb.header("X-Vault-Token", s.token.expose_secret());
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let mut resp = rb.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "transport error"
            };
            SealError::new(format!("the transit server at {} {what}", s.address))
        })?;
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|_| {
            SealError::new(format!(
                "the transit server at {} broke off its answer",
                s.address
            ))
        })? {
            if bytes.len().saturating_add(chunk.len()) > MAX_BODY {
                return Err(SealError::new(format!(
                    "the transit server at {} answered too much",
                    s.address
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let errors = body
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|e| e.chars().take(200).collect::<String>())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            return Err(SealError::new(format!(
                "the transit server at {} answered {} to {path}: {errors}",
                s.address,
                status.as_u16()
            )));
        }
        Ok(body)
    }
}

/// The key version of a `vault:v<N>:` ciphertext.
fn version_of(ciphertext: &str) -> Option<u64> {
    let rest = ciphertext.strip_prefix("vault:v")?;
    let (n, _) = rest.split_once(':')?;
    n.parse().ok()
}

#[async_trait]
impl AutoSeal for TransitSeal {
    fn seal_type(&self) -> &'static str {
        "transit"
    }

    async fn encrypt(&self, plaintext: &[u8], _aad: &[u8]) -> Result<SealedValue, SealError> {
        let s = &self.inner.settings;
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(plaintext));
        let body = json!({ "plaintext": encoded.as_str() });
        let answer = self
            .inner
            .call(
                "POST",
                &format!("{}/encrypt/{}", s.mount_path, s.key_name),
                Some(body),
            )
            .await?;
        let ciphertext = answer
            .pointer("/data/ciphertext")
            .and_then(Value::as_str)
            .ok_or_else(|| SealError::new("the transit server's answer has no ciphertext"))?;
        let version = version_of(ciphertext).ok_or_else(|| {
            SealError::new("the transit server's ciphertext is not of the form vault:v<N>:…")
        })?;
        Ok(SealedValue {
            seal_type: "transit".to_owned(),
            key_id: format!("{}/{}:v{version}", s.mount_path, s.key_name),
            iv: Vec::new(),
            ciphertext: ciphertext.as_bytes().to_vec(),
        })
    }

    async fn decrypt(
        &self,
        value: &SealedValue,
        _aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let s = &self.inner.settings;
        let ciphertext = std::str::from_utf8(&value.ciphertext)
            .map_err(|_| SealError::new("the sealed value is not a transit ciphertext"))?;
        // The key the blob names, so a moved configuration still reads old blobs.
        let (mount, key) = value
            .key_id
            .rsplit_once(':')
            .and_then(|(path, _)| path.rsplit_once('/'))
            .unwrap_or((s.mount_path.as_str(), s.key_name.as_str()));
        let answer = self
            .inner
            .call(
                "POST",
                &format!("{mount}/decrypt/{key}"),
                Some(json!({ "ciphertext": ciphertext })),
            )
            .await?;
        let encoded = Zeroizing::new(
            answer
                .pointer("/data/plaintext")
                .and_then(Value::as_str)
                .ok_or_else(|| SealError::new("the transit server's answer has no plaintext"))?
                .to_owned(),
        );
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| SealError::new("the transit server's plaintext is not base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn the_key_version_is_read_from_the_ciphertext() {
        assert_eq!(version_of("vault:v3:abc"), Some(3));
        assert_eq!(version_of("vault:vx:abc"), None);
        assert_eq!(version_of("abc"), None);
    }

    #[test]
    fn debug_shows_no_token() {
        let seal = TransitSeal::new(TransitSettings {
            address: "http://127.0.0.1:1".into(),
            token: SecretString::from("s.secret-token"),
            mount_path: "transit".into(),
            key_name: "unseal".into(),
            tls_ca_cert: None,
        });
        assert!(!format!("{seal:?}").contains("secret-token"));
    }
}
