//! `sys/` endpoints: seal state, init, unseal, keyring, health and mounts.

use std::collections::BTreeMap;
use std::fmt;

use keyhaven_types::wire::{Health, MountEntry, SealStatus};
use reqwest::Method;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::error::ClientError;
use crate::secret::{Secret, envelope_data};

/// Parameters of `sys/init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InitRequest {
    /// Number of unseal key shares.
    pub secret_shares: u8,
    /// Shares needed to unseal.
    pub secret_threshold: u8,
}

/// What `sys/init` returns, once: the unseal key shares and the initial root token.
pub struct InitResponse {
    /// Unseal key shares, hex.
    pub keys: Vec<SecretString>,
    /// The same shares, base64.
    pub keys_base64: Vec<SecretString>,
    /// The initial root token.
    pub root_token: SecretString,
}

impl fmt::Debug for InitResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitResponse")
            .field("keys", &format_args!("[{} REDACTED]", self.keys.len()))
            .field(
                "keys_base64",
                &format_args!("[{} REDACTED]", self.keys_base64.len()),
            )
            .field("root_token", &"[REDACTED]")
            .finish()
    }
}

/// The wire form of [`InitResponse`]; turned into secrets at once.
#[derive(Deserialize)]
struct RawInit {
    keys: Vec<String>,
    #[serde(default)]
    keys_base64: Vec<String>,
    root_token: String,
}

/// `sys/key-status`: the keyring's current term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyStatus {
    /// The current key term (1 after init; +1 per rotation).
    pub term: u64,
    /// When the term was installed, RFC 3339.
    #[serde(default)]
    pub install_time: String,
    /// Encryptions done with this term (when the server counts them).
    #[serde(default)]
    pub encryptions: u64,
}

/// A request to enable a mount (`POST sys/mounts/<path>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnableMount {
    /// Engine type, e.g. `kv-v2` or `transit`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Engine options.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub options: Map<String, Value>,
    /// Mount configuration (`default_lease_ttl`, `max_lease_ttl`).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub config: Map<String, Value>,
}

impl EnableMount {
    /// A mount of this type with no description, options or configuration.
    pub fn new(kind: impl Into<String>) -> Self {
        EnableMount {
            kind: kind.into(),
            description: String::new(),
            options: Map::new(),
            config: Map::new(),
        }
    }
}

/// The answer of the mount preflight, `sys/internal/ui/mounts/<path>`: which mount holds
/// a path and, for KV, its version. Vault's CLI asks it before every `kv` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MountPreflight {
    /// The mount path, with its trailing `/` (e.g. `secret/`).
    pub path: String,
    /// Engine type.
    pub kind: String,
    /// `options.version` for KV mounts (1 when absent, as Vault reads it).
    pub kv_version: u32,
}

impl Client {
    /// `GET sys/seal-status` (no token needed).
    pub async fn seal_status(&self) -> Result<SealStatus, ClientError> {
        const PATH: &str = "sys/seal-status";
        let v = self
            .call_some(Method::GET, PATH, &[], None, "seal status")
            .await?;
        Self::decode("GET", PATH, v, "seal status")
    }

    /// `GET sys/init`: whether the server is initialized.
    pub async fn init_status(&self) -> Result<bool, ClientError> {
        const PATH: &str = "sys/init";
        let v = self
            .call_some(Method::GET, PATH, &[], None, "init status")
            .await?;
        v.get("initialized")
            .and_then(Value::as_bool)
            .ok_or(ClientError::Decode {
                method: "GET",
                path: PATH.to_owned(),
                status: 200,
                expected: "init status",
            })
    }

    /// `PUT sys/init`: initialize; the shares and root token are returned only once.
    pub async fn init(&self, request: &InitRequest) -> Result<InitResponse, ClientError> {
        const PATH: &str = "sys/init";
        let body = json!({ "secret_shares": request.secret_shares, "secret_threshold": request.secret_threshold });
        let v = self
            .call_some(Method::PUT, PATH, &[], Some(&body), "init keys")
            .await?;
        let raw: RawInit = Self::decode("PUT", PATH, v, "init keys")?;
        Ok(InitResponse {
            keys: raw.keys.into_iter().map(SecretString::from).collect(),
            keys_base64: raw
                .keys_base64
                .into_iter()
                .map(SecretString::from)
                .collect(),
            root_token: SecretString::from(raw.root_token),
        })
    }

    /// `PUT sys/unseal {"key": …}`: enter one unseal key share.
    pub async fn unseal(&self, key: &SecretString) -> Result<SealStatus, ClientError> {
        let body = json!({ "key": key.expose_secret() });
        self.unseal_with(&body).await
    }

    /// `PUT sys/unseal {"reset": true}`: forget the shares entered so far.
    pub async fn unseal_reset(&self) -> Result<SealStatus, ClientError> {
        self.unseal_with(&json!({ "reset": true })).await
    }

    async fn unseal_with(&self, body: &Value) -> Result<SealStatus, ClientError> {
        const PATH: &str = "sys/unseal";
        let v = self
            .call_some(Method::PUT, PATH, &[], Some(body), "seal status")
            .await?;
        Self::decode("PUT", PATH, v, "seal status")
    }

    /// `PUT sys/seal`.
    pub async fn seal(&self) -> Result<(), ClientError> {
        self.write("sys/seal", None).await.map(drop)
    }

    /// `PUT sys/rotate`: add a keyring term.
    pub async fn rotate(&self) -> Result<(), ClientError> {
        self.write("sys/rotate", None).await.map(drop)
    }

    /// `GET sys/key-status`.
    pub async fn key_status(&self) -> Result<KeyStatus, ClientError> {
        const PATH: &str = "sys/key-status";
        let v = self
            .call_some(Method::GET, PATH, &[], None, "key status")
            .await?;
        Self::decode("GET", PATH, envelope_data(v), "key status")
    }

    /// `GET sys/health`. Sealed (503), uninitialized (501) and standby (429, 472, 473)
    /// answers are not errors: the status comes back with the body.
    pub async fn health(&self) -> Result<(u16, Health), ClientError> {
        const PATH: &str = "sys/health";
        let (status, body) = self
            .call_with_statuses(Method::GET, PATH, &[], &[429, 472, 473, 501, 503])
            .await?;
        let body = body.ok_or(ClientError::Decode {
            method: "GET",
            path: PATH.to_owned(),
            status,
            expected: "health status",
        })?;
        let health = serde_json::from_value(body).map_err(|_| ClientError::Decode {
            method: "GET",
            path: PATH.to_owned(),
            status,
            expected: "health status",
        })?;
        Ok((status, health))
    }

    /// `GET sys/mounts`: every mount by path (with trailing `/`).
    pub async fn list_mounts(&self) -> Result<BTreeMap<String, MountEntry>, ClientError> {
        const PATH: &str = "sys/mounts";
        let v = self
            .call_some(Method::GET, PATH, &[], None, "mount table")
            .await?;
        Self::decode("GET", PATH, envelope_data(v), "mount table")
    }

    /// `POST sys/mounts/<path>`: enable a secrets engine.
    pub async fn enable_mount(&self, path: &str, request: &EnableMount) -> Result<(), ClientError> {
        let path = format!("sys/mounts/{}", path.trim_matches('/'));
        let body = serde_json::to_value(request).unwrap_or(Value::Null);
        self.write(&path, Some(&body)).await.map(drop)
    }

    /// `DELETE sys/mounts/<path>`: disable a mount and delete its data.
    pub async fn disable_mount(&self, path: &str) -> Result<(), ClientError> {
        let path = format!("sys/mounts/{}", path.trim_matches('/'));
        self.delete(&path, &[]).await.map(drop)
    }

    /// `GET sys/mounts/<path>/tune`.
    pub async fn read_mount_tune(
        &self,
        path: &str,
    ) -> Result<Secret<Map<String, Value>>, ClientError> {
        let path = format!("sys/mounts/{}/tune", path.trim_matches('/'));
        let v = self
            .call_some(Method::GET, &path, &[], None, "mount configuration")
            .await?;
        Self::decode("GET", &path, v, "mount configuration")
    }

    /// `POST sys/mounts/<path>/tune`.
    pub async fn tune_mount(
        &self,
        path: &str,
        settings: &Map<String, Value>,
    ) -> Result<(), ClientError> {
        let path = format!("sys/mounts/{}/tune", path.trim_matches('/'));
        self.write(&path, Some(&Value::Object(settings.clone())))
            .await
            .map(drop)
    }

    /// `GET sys/internal/ui/mounts/<path>`: the mount that holds `path` and its KV
    /// version, or `None` when the server answers 404 (servers before the preflight
    /// existed). keyhaven, like OpenBao, answers an unknown mount with 403, as it answers
    /// a mount the token may not use: that is an error with status 403.
    pub async fn mount_preflight(&self, path: &str) -> Result<Option<MountPreflight>, ClientError> {
        let api_path = format!("sys/internal/ui/mounts/{}", path.trim_matches('/'));
        let Some(v) = self.read(&api_path, &[]).await? else {
            return Ok(None);
        };
        let raw: MountEntry = Self::decode("GET", &api_path, envelope_data(v), "mount preflight")?;
        let kv_version = raw
            .options
            .as_ref()
            .and_then(|o| o.get("version"))
            .and_then(|v| match v {
                Value::String(s) => s.trim().parse::<u32>().ok(),
                Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
                _ => None,
            })
            .unwrap_or(1);
        Ok(Some(MountPreflight {
            path: raw.path.unwrap_or_default(),
            kind: raw.kind,
            kv_version,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_status_decodes_openbao_shape() {
        let v = json!({"type":"shamir","initialized":true,"sealed":false,"t":1,"n":1,"progress":0,"nonce":"",
            "recovery_seal":false,"version":"2.7.2","commit_date":"2026-10-26T20:32:27Z","migration":false,
            "cluster_name":"vault-cluster-ddecccf8","cluster_id":"97d540a8","storage_type":"inmem"});
        let s: SealStatus = serde_json::from_value(v).unwrap();
        assert!(s.initialized && !s.sealed);
        assert_eq!((s.t, s.n, s.progress), (1, 1, 0));
        assert_eq!(s.storage_type.as_deref(), Some("inmem"));
        // An unseal answer while sealed has fewer fields.
        let s: SealStatus = serde_json::from_value(
            json!({"sealed":true,"initialized":true,"t":3,"n":5,"progress":2}),
        )
        .unwrap();
        assert_eq!(s.progress, 2);
    }

    #[test]
    fn init_response_debug_hides_secrets() {
        let r = InitResponse {
            keys: vec![SecretString::from("aa11")],
            keys_base64: vec![SecretString::from("qhE=")],
            root_token: SecretString::from("kh.rootsecret"),
        };
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("aa11") && !shown.contains("qhE=") && !shown.contains("rootsecret"),
            "{shown}"
        );
    }

    #[test]
    fn mounts_decode_from_envelope_data() {
        let v = json!({"request_id":"r","data":{"secret/":{"type":"kv","description":"d","accessor":"kv_1","options":{"version":"2"}},
            "sys/":{"type":"system","accessor":"system_0"}}, "secret/": {"type":"kv"}});
        let m: BTreeMap<String, MountEntry> = serde_json::from_value(envelope_data(v)).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            m["secret/"].options.as_ref().unwrap()["version"],
            json!("2")
        );
    }

    #[test]
    fn enable_mount_body() {
        let mut r = EnableMount::new("kv-v2");
        assert_eq!(serde_json::to_value(&r).unwrap(), json!({"type": "kv-v2"}));
        r.description = "team".into();
        r.options.insert("version".into(), json!("2"));
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"type": "kv-v2", "description": "team", "options": {"version": "2"}})
        );
    }
}
