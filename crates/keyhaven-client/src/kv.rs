//! The KV version 2 secrets engine.

use std::collections::BTreeMap;
use std::fmt;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::error::ClientError;
use crate::secret::{Secret, envelope_warnings};

/// A KV v2 mount seen through a [`Client`]: builds `<mount>/data/…`, `<mount>/metadata/…`
/// and the other endpoint paths, and decodes the answers.
#[derive(Debug, Clone)]
pub struct Kv2<'a> {
    client: &'a Client,
    mount: String,
}

/// The `data` of a KV v2 read: the secret (`null` when the version is deleted or
/// destroyed) and the version's metadata.
///
/// `Debug` shows the field names only, never the values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KvData {
    /// The key/value pairs, or `None` for a deleted or destroyed version.
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
    /// The version's metadata.
    #[serde(default)]
    pub metadata: Option<VersionMetadata>,
}

impl fmt::Debug for KvData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Option<Vec<&String>> = self.data.as_ref().map(|d| d.keys().collect());
        f.debug_struct("KvData")
            .field("keys", &keys)
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// The metadata of one version, as a data read or write returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VersionMetadata {
    /// When the version was written, RFC 3339.
    #[serde(default)]
    pub created_time: String,
    /// The key's custom metadata.
    #[serde(default)]
    pub custom_metadata: Option<BTreeMap<String, String>>,
    /// When it was (soft-)deleted, RFC 3339, or empty.
    #[serde(default)]
    pub deletion_time: String,
    /// Whether its data was destroyed.
    #[serde(default)]
    pub destroyed: bool,
    /// The version number.
    #[serde(default)]
    pub version: u64,
}

/// The state of one version in the key's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VersionState {
    /// When the version was written, RFC 3339.
    #[serde(default)]
    pub created_time: String,
    /// When it was (soft-)deleted, RFC 3339, or empty.
    #[serde(default)]
    pub deletion_time: String,
    /// Whether its data was destroyed.
    #[serde(default)]
    pub destroyed: bool,
}

/// A key's metadata (`GET <mount>/metadata/<path>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KvMetadata {
    /// Whether writes must carry `cas`.
    #[serde(default)]
    pub cas_required: bool,
    /// When the key was created, RFC 3339.
    #[serde(default)]
    pub created_time: String,
    /// The newest version.
    #[serde(default)]
    pub current_version: u64,
    /// Custom metadata.
    #[serde(default)]
    pub custom_metadata: Option<BTreeMap<String, String>>,
    /// How long versions live before they are deleted, e.g. `0s`.
    #[serde(default)]
    pub delete_version_after: String,
    /// Versions kept (0: the mount's setting).
    #[serde(default)]
    pub max_versions: u64,
    /// The oldest version kept.
    #[serde(default)]
    pub oldest_version: u64,
    /// When the metadata last changed, RFC 3339.
    #[serde(default)]
    pub updated_time: String,
    /// Each kept version, by number.
    #[serde(default)]
    pub versions: BTreeMap<String, VersionState>,
    /// Other fields the server sends (e.g. OpenBao's `current_metadata_version`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Changes to a key's metadata (`PUT <mount>/metadata/<path>`); unset fields are left
/// as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MetadataUpdate {
    /// Versions to keep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_versions: Option<u64>,
    /// Whether writes must carry `cas`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cas_required: Option<bool>,
    /// Duration after which versions are deleted, e.g. `3h` (`0s`: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_version_after: Option<String>,
    /// Custom metadata (replaces the whole map).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_metadata: Option<BTreeMap<String, String>>,
}

/// The `data` of a list: the keys, folders ending with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyList {
    /// Names under the prefix.
    #[serde(default)]
    pub keys: Vec<String>,
}

impl Client {
    /// The KV v2 engine mounted at `mount` (e.g. `secret`).
    pub fn kv2(&self, mount: &str) -> Kv2<'_> {
        Kv2 {
            client: self,
            mount: mount.trim_matches('/').to_owned(),
        }
    }
}

impl Kv2<'_> {
    /// The mount path, without slashes around it.
    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// The API path of an endpoint (`data`, `metadata`, `delete`, …) for a secret path.
    pub fn path(&self, endpoint: &str, path: &str) -> String {
        let path = path.trim_matches('/');
        if path.is_empty() {
            format!("{}/{endpoint}", self.mount)
        } else {
            format!("{}/{endpoint}/{path}", self.mount)
        }
    }

    /// Read the latest version, or `version`. `None`: nothing at the path. A deleted or
    /// destroyed version comes back with `data: None` and its metadata.
    pub async fn read(
        &self,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<Secret<KvData>>, ClientError> {
        let api = self.path("data", path);
        let version = version.map(|v| v.to_string());
        let query: Vec<(&str, &str)> = version
            .as_deref()
            .map(|v| ("version", v))
            .into_iter()
            .collect();
        match self.client.read(&api, &query).await? {
            None => Ok(None),
            Some(v) => Client::decode("GET", &api, v, "kv secret").map(Some),
        }
    }

    /// Write a new version. `cas`: the version the write expects to replace (0: only if
    /// the key does not exist).
    pub async fn write(
        &self,
        path: &str,
        data: &Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<Secret<VersionMetadata>, ClientError> {
        let api = self.path("data", path);
        let body = data_body(data, cas);
        let v = self
            .client
            .call_some(Method::PUT, &api, &[], Some(&body), "kv version metadata")
            .await?;
        Client::decode("PUT", &api, v, "kv version metadata")
    }

    /// Merge `data` into the latest version, writing a new version.
    pub async fn patch(
        &self,
        path: &str,
        data: &Map<String, Value>,
        cas: Option<u64>,
    ) -> Result<Secret<VersionMetadata>, ClientError> {
        let api = self.path("data", path);
        let body = data_body(data, cas);
        let v = self
            .client
            .call_some(Method::PATCH, &api, &[], Some(&body), "kv version metadata")
            .await?;
        Client::decode("PATCH", &api, v, "kv version metadata")
    }

    /// Soft-delete the latest version. Returns the server's warnings.
    pub async fn delete_latest(&self, path: &str) -> Result<Vec<String>, ClientError> {
        let v = self.client.delete(&self.path("data", path), &[]).await?;
        Ok(envelope_warnings(v.as_ref()))
    }

    /// Soft-delete the given versions.
    pub async fn delete_versions(
        &self,
        path: &str,
        versions: &[u64],
    ) -> Result<Vec<String>, ClientError> {
        self.versions_call("delete", path, versions).await
    }

    /// Undo the soft-deletion of the given versions.
    pub async fn undelete(&self, path: &str, versions: &[u64]) -> Result<Vec<String>, ClientError> {
        self.versions_call("undelete", path, versions).await
    }

    /// Permanently remove the data of the given versions.
    pub async fn destroy(&self, path: &str, versions: &[u64]) -> Result<Vec<String>, ClientError> {
        self.versions_call("destroy", path, versions).await
    }

    async fn versions_call(
        &self,
        endpoint: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<Vec<String>, ClientError> {
        let body = json!({ "versions": versions });
        let v = self
            .client
            .write(&self.path(endpoint, path), Some(&body))
            .await?;
        Ok(envelope_warnings(v.as_ref()))
    }

    /// Read a key's metadata, or `None` when the key does not exist.
    pub async fn read_metadata(
        &self,
        path: &str,
    ) -> Result<Option<Secret<KvMetadata>>, ClientError> {
        let api = self.path("metadata", path);
        match self.client.read(&api, &[]).await? {
            None => Ok(None),
            Some(v) => Client::decode("GET", &api, v, "kv metadata").map(Some),
        }
    }

    /// Change a key's metadata (creating the key when it does not exist).
    pub async fn write_metadata(
        &self,
        path: &str,
        update: &MetadataUpdate,
    ) -> Result<Vec<String>, ClientError> {
        let body = serde_json::to_value(update).unwrap_or(Value::Null);
        let v = self
            .client
            .write(&self.path("metadata", path), Some(&body))
            .await?;
        Ok(envelope_warnings(v.as_ref()))
    }

    /// Delete a key: its metadata and every version.
    pub async fn delete_metadata(&self, path: &str) -> Result<Vec<String>, ClientError> {
        let v = self
            .client
            .delete(&self.path("metadata", path), &[])
            .await?;
        Ok(envelope_warnings(v.as_ref()))
    }

    /// List the keys under a prefix (`""` for the mount's root): at most `limit` names
    /// after `after`, when given. `None`: nothing there.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Option<Secret<KeyList>>, ClientError> {
        let api = self.path("metadata", prefix);
        let limit = limit.map(|l| l.to_string());
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(after) = after {
            query.push(("after", after));
        }
        if let Some(limit) = limit.as_deref() {
            query.push(("limit", limit));
        }
        match self.client.list(&api, &query).await? {
            None => Ok(None),
            Some(v) => Client::decode("GET", &api, v, "key list").map(Some),
        }
    }
}

/// `{"data": …, "options": {"cas": N}}`, as Vault's CLI sends it.
fn data_body(data: &Map<String, Value>, cas: Option<u64>) -> Value {
    let mut options = Map::new();
    if let Some(cas) = cas {
        options.insert("cas".to_owned(), json!(cas));
    }
    json!({ "data": data, "options": options })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientConfig;

    fn client() -> Client {
        Client::new(ClientConfig::new("http://127.0.0.1:8200")).unwrap()
    }

    #[test]
    fn endpoint_paths() {
        let c = client();
        let kv = c.kv2("/kv2/");
        assert_eq!(kv.mount(), "kv2");
        assert_eq!(kv.path("data", "app"), "kv2/data/app");
        assert_eq!(kv.path("metadata", "team/app/"), "kv2/metadata/team/app");
        assert_eq!(kv.path("metadata", ""), "kv2/metadata");
        assert_eq!(
            c.url(&kv.path("data", "a/b c"), &[("version", "3")])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8200/v1/kv2/data/a/b%20c?version=3"
        );
    }

    #[test]
    fn write_bodies_match_vaults_cli() {
        let mut data = Map::new();
        data.insert("password".into(), json!("M1"));
        assert_eq!(
            data_body(&data, None),
            json!({"data": {"password": "M1"}, "options": {}})
        );
        assert_eq!(
            data_body(&data, Some(2)),
            json!({"data": {"password": "M1"}, "options": {"cas": 2}})
        );
        let u = MetadataUpdate {
            max_versions: Some(5),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            json!({"max_versions": 5})
        );
    }

    #[test]
    fn kv_read_decodes_and_debug_hides_values() {
        let v = json!({"request_id":"r","lease_id":"","renewable":false,"lease_duration":0,
            "data":{"data":{"foo":"hunter2"},"metadata":{"created_time":"2026-01-01T00:00:00Z","custom_metadata":null,
            "deletion_time":"","destroyed":false,"version":1}},"wrap_info":null,"warnings":null,"auth":null});
        let s: Secret<KvData> = serde_json::from_value(v).unwrap();
        assert_eq!(s.data.data.as_ref().unwrap()["foo"], json!("hunter2"));
        assert_eq!(s.data.metadata.as_ref().unwrap().version, 1);
        let shown = format!("{s:?}");
        assert!(
            shown.contains("foo") && !shown.contains("hunter2"),
            "{shown}"
        );
        // A deleted version: data null.
        let s: Secret<KvData> =
            serde_json::from_value(json!({"data":{"data":null,"metadata":{"version":2,
            "deletion_time":"2026-01-01T00:00:00Z"}}}))
            .unwrap();
        assert!(s.data.data.is_none());
    }

    #[test]
    fn metadata_decodes_openbao_shape() {
        let v = json!({"data":{"cas_required":false,"created_time":"t","current_metadata_version":0,"current_version":2,
            "custom_metadata":null,"delete_version_after":"0s","max_versions":0,"metadata_cas_required":false,
            "oldest_version":0,"updated_time":"t","versions":{"1":{"created_time":"t","deletion_time":"","destroyed":false},
            "2":{"created_time":"t","deletion_time":"","destroyed":true}}}});
        let m: Secret<KvMetadata> = serde_json::from_value(v).unwrap();
        assert_eq!(m.data.current_version, 2);
        assert!(m.data.versions["2"].destroyed);
        assert!(m.data.extra.contains_key("metadata_cas_required"));
    }
}
