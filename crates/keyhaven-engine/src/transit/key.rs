//! A transit key: its stored record and its prepared, in-memory form.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyhaven_crypto::SecretBytes;
use keyhaven_crypto::transit::{Base64, KeyOptions, KeyType, VersionKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::{Zeroize, Zeroizing};

use crate::clock::rfc3339;
use crate::error::EngineError;

/// Where a key is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KeyState {
    /// Usable.
    #[default]
    Enabled,
    /// Refuses every cryptographic operation until enabled again.
    Disabled,
    /// Refuses every cryptographic operation; destroyed at `deletion_time` unless cancelled.
    PendingDeletion,
}

impl KeyState {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::PendingDeletion => "pending_deletion",
        }
    }
}

/// The key's settings: everything but the per-version material.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyConfig {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) derived: bool,
    #[serde(default)]
    pub(crate) convergent: bool,
    #[serde(default)]
    pub(crate) exportable: bool,
    #[serde(default)]
    pub(crate) allow_plaintext_backup: bool,
    #[serde(default)]
    pub(crate) deletion_allowed: bool,
    #[serde(default)]
    pub(crate) min_decryption_version: u32,
    #[serde(default)]
    pub(crate) min_encryption_version: u32,
    #[serde(default)]
    pub(crate) min_available_version: u32,
    pub(crate) latest_version: u32,
    /// Seconds; 0 = no automatic rotation.
    #[serde(default)]
    pub(crate) auto_rotate_period: u64,
    /// Key length in bytes of `hmac` keys; 0 for other types.
    #[serde(default)]
    pub(crate) key_size: usize,
    #[serde(default)]
    pub(crate) state: KeyState,
    /// Unix nanoseconds at which a pending deletion completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deletion_time: Option<u64>,
}

/// One stored version. The key bytes are base64 inside the barrier-encrypted record and are
/// zeroized when the record is dropped.
#[derive(Serialize, Deserialize)]
struct StoredVersion {
    /// Unix nanoseconds.
    created: u64,
    key: String,
    hmac_key: String,
}

impl Drop for StoredVersion {
    fn drop(&mut self) {
        self.key.zeroize();
        self.hmac_key.zeroize();
    }
}

/// The record stored at `keys/<name>`: one per key, every version inside.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    #[serde(flatten)]
    config: KeyConfig,
    versions: BTreeMap<u32, StoredVersion>,
}

/// One prepared version.
pub(crate) struct Version {
    /// Unix nanoseconds.
    pub(crate) created: u64,
    pub(crate) key: Arc<VersionKey>,
}

/// A key as the backend uses it: settings plus prepared versions, immutable once built (a
/// change builds a new one), shared through `Arc` by the cache.
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) kind: KeyType,
    pub(crate) config: KeyConfig,
    pub(crate) versions: BTreeMap<u32, Version>,
    /// The record exactly as stored, for the compare-and-swap of the next change. It holds
    /// key material and is zeroized on drop.
    pub(crate) stored: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("type", &self.kind)
            .field("latest_version", &self.config.latest_version)
            .finish_non_exhaustive()
    }
}

pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

fn corrupt(what: &str) -> EngineError {
    EngineError::Corrupt(format!("transit key record: {what}"))
}

impl Key {
    pub(crate) fn options(&self) -> KeyOptions {
        KeyOptions {
            derived: self.config.derived,
            convergent: self.config.convergent,
        }
    }

    /// Decode a stored record and prepare every version.
    pub(crate) fn decode(name: &str, bytes: Vec<u8>) -> Result<Self, EngineError> {
        let stored = Zeroizing::new(bytes);
        let rec: StoredKey = serde_json::from_slice(&stored).map_err(|_| corrupt("undecodable"))?;
        let kind = KeyType::parse(&rec.config.kind).ok_or_else(|| corrupt("unknown key type"))?;
        let options = KeyOptions {
            derived: rec.config.derived,
            convergent: rec.config.convergent,
        };
        let mut versions = BTreeMap::new();
        for (n, v) in &rec.versions {
            let key = Base64::Standard
                .decode(&v.key)
                .map_err(|_| corrupt("bad key encoding"))?;
            let hmac_key = Base64::Standard
                .decode(&v.hmac_key)
                .map_err(|_| corrupt("bad key encoding"))?;
            let prepared = VersionKey::from_parts(
                kind,
                options,
                SecretBytes::new(key),
                SecretBytes::new(hmac_key),
            )
            .map_err(|_| corrupt("key material rejected"))?;
            versions.insert(
                *n,
                Version {
                    created: v.created,
                    key: Arc::new(prepared),
                },
            );
        }
        Ok(Key {
            name: name.to_owned(),
            kind,
            config: rec.config.clone(),
            versions,
            stored,
        })
    }

    /// Serialize settings and versions for storage.
    pub(crate) fn encode(
        config: &KeyConfig,
        versions: &BTreeMap<u32, Version>,
    ) -> Result<Zeroizing<Vec<u8>>, EngineError> {
        let rec = StoredKey {
            config: config.clone(),
            versions: versions
                .iter()
                .map(|(n, v)| {
                    (
                        *n,
                        StoredVersion {
                            created: v.created,
                            key: Base64::Standard.encode(v.key.expose_key()),
                            hmac_key: Base64::Standard.encode(v.key.expose_hmac_key()),
                        },
                    )
                })
                .collect(),
        };
        serde_json::to_vec(&rec)
            .map(Zeroizing::new)
            .map_err(|_| EngineError::Encode("a transit key record"))
    }

    /// The version `n`, if it exists and has not been trimmed.
    pub(crate) fn version(&self, n: u32) -> Option<&Arc<VersionKey>> {
        self.versions.get(&n).map(|v| &v.key)
    }

    /// The latest version's creation time, in unix nanoseconds.
    pub(crate) fn last_rotation(&self) -> u64 {
        self.versions
            .get(&self.config.latest_version)
            .map(|v| v.created)
            .unwrap_or(0)
    }

    /// The key as `GET keys/<name>` shows it (OpenBao's fields, then keyhaven's lifecycle
    /// fields `state` and `deletion_time`).
    pub(crate) fn to_api(&self) -> Map<String, Value> {
        let c = &self.config;
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("type".into(), json!(c.kind));
        m.insert("derived".into(), json!(c.derived));
        m.insert("deletion_allowed".into(), json!(c.deletion_allowed));
        m.insert(
            "min_available_version".into(),
            json!(c.min_available_version),
        );
        m.insert(
            "min_decryption_version".into(),
            json!(c.min_decryption_version),
        );
        m.insert(
            "min_encryption_version".into(),
            json!(c.min_encryption_version),
        );
        m.insert("latest_version".into(), json!(c.latest_version));
        m.insert("exportable".into(), json!(c.exportable));
        m.insert(
            "allow_plaintext_backup".into(),
            json!(c.allow_plaintext_backup),
        );
        m.insert(
            "supports_encryption".into(),
            json!(self.kind.supports_encryption()),
        );
        m.insert(
            "supports_decryption".into(),
            json!(self.kind.supports_decryption()),
        );
        m.insert(
            "supports_signing".into(),
            json!(self.kind.supports_signing()),
        );
        m.insert(
            "supports_derivation".into(),
            json!(self.kind.supports_derivation()),
        );
        m.insert("auto_rotate_period".into(), json!(c.auto_rotate_period));
        m.insert("imported_key".into(), json!(false));
        m.insert("soft_deleted".into(), json!(false));
        if c.key_size != 0 {
            m.insert("key_size".into(), json!(c.key_size));
        }
        if c.derived {
            m.insert("kdf".into(), json!("hkdf_sha256"));
            m.insert("convergent_encryption".into(), json!(c.convergent));
            if c.convergent {
                m.insert("convergent_encryption_version".into(), json!(3));
            }
        }
        let mut keys = Map::new();
        for (n, v) in &self.versions {
            let secs = v.created / 1_000_000_000;
            let entry = if self.kind.is_asymmetric() {
                let name = match self.kind {
                    KeyType::EcdsaP256 => "P-256",
                    KeyType::EcdsaP384 => "P-384",
                    other => other.name(),
                };
                json!({
                    "name": name,
                    "public_key": v.key.public_key().unwrap_or_default(),
                    "certificate_chain": "",
                    "creation_time": rfc3339(from_nanos(v.created)),
                })
            } else {
                json!(secs)
            };
            keys.insert(n.to_string(), entry);
        }
        m.insert("keys".into(), Value::Object(keys));
        m.insert("state".into(), json!(c.state.as_str()));
        if let Some(t) = c.deletion_time {
            m.insert("deletion_time".into(), json!(rfc3339(from_nanos(t))));
        }
        m
    }
}
