//! `sys/auth`: enabling, listing and disabling auth methods.

use std::collections::BTreeMap;

use keyhaven_types::wire::MountEntry;
use reqwest::Method;
use serde_json::Value;

use crate::client::Client;
use crate::error::ClientError;
use crate::secret::envelope_data;
use crate::sys::EnableMount;

impl Client {
    /// `GET sys/auth`: every auth method by path (with trailing `/`), `token/` included.
    pub async fn list_auth(&self) -> Result<BTreeMap<String, MountEntry>, ClientError> {
        const PATH: &str = "sys/auth";
        let v = self
            .call_some(Method::GET, PATH, &[], None, "auth table")
            .await?;
        Self::decode("GET", PATH, envelope_data(v), "auth table")
    }

    /// `POST sys/auth/<path> {"type", …}`: enable an auth method (e.g. `kubernetes`).
    pub async fn enable_auth(&self, path: &str, request: &EnableMount) -> Result<(), ClientError> {
        let path = format!("sys/auth/{}", path.trim_matches('/'));
        let body = serde_json::to_value(request).unwrap_or(Value::Null);
        self.call_opt(Method::POST, &path, &body).await.map(drop)
    }

    /// `DELETE sys/auth/<path>`: disable an auth method and revoke its tokens.
    pub async fn disable_auth(&self, path: &str) -> Result<(), ClientError> {
        let path = format!("sys/auth/{}", path.trim_matches('/'));
        self.delete(&path, &[]).await.map(drop)
    }
}
