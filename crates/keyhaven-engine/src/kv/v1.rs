//! The KV version 1 secrets engine, compatible with Vault/OpenBao's `kv` mounted without
//! `options.version` (or with version `1`).
//!
//! One path per secret, relative to the mount: a write stores the request's whole JSON
//! object (any JSON values), a read returns it, a delete removes it, and a list returns
//! the names under a folder. There are no versions, no metadata and no check-and-set.
//! As in Vault, a `ttl` (or legacy `lease`) field of the stored object becomes the
//! response's `lease_duration`, a hint to clients of how often to read again; no lease is
//! created. Without one, the hint is the mount's default lease TTL.
//!
//! # Storage layout
//!
//! Inside the mount's own (barrier-encrypted, scoped) storage, the secret at `<path>` is
//! the JSON object at `kv/<path>`. Listing `<folder>/` lists `kv/<folder>/`.
//!
//! # Invariants
//!
//! - A secret path is non-empty, at most [`super::MAX_PATH_LEN`] bytes, has no empty or
//!   `..` segments and does not end in `/`.
//! - A write is one storage put of the whole object; a read one get. Nothing is kept in
//!   memory.
//! - Secret values never appear in errors, logs or `Debug` output.

use std::sync::Arc;

use async_trait::async_trait;
use keyhaven_storage::{MAX_LIST_PAGE, Store};
use serde_json::{Map, Value};

use super::{not_found, validate_path};
use crate::backend::{Backend, BackendRequest};
use crate::error::EngineError;
use crate::params;
use crate::request::{LeaseDuration, Operation, Response};
use crate::route::{Field, Ops, Route};

/// Storage prefix of the secrets.
const PREFIX: &str = "kv/";

/// Every path of a KV version 1 mount: one route, the secret's own path.
static ROUTES: &[Route] = &[Route::new(
    "{path*}",
    "A secret (KV version 1): its fields are the request's fields.",
)
.pure(Ops::READ.and(Ops::LIST))
.ops(Ops::WRITE.and(Ops::DELETE))
.fields(&[Field::any(
    "ttl",
    "Write: a refresh interval hint returned as lease_duration (no lease is created).",
)])
.arbitrary_fields()
.existence_check()];

/// One mounted KV version 1 engine.
pub(super) struct KvV1Backend {
    pub(super) storage: Arc<dyn Store>,
}

#[async_trait]
impl Backend for KvV1Backend {
    fn routes(&self) -> &'static [Route] {
        ROUTES
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<bool, EngineError> {
        let path = req.capture("path");
        if validate_path(path).is_err() {
            // Refused by the handler with a clear error.
            return Ok(true);
        }
        Ok(self.storage.get(&key(path)).await?.is_some())
    }

    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError> {
        let path = req.capture("path");
        match req.operation {
            Operation::Read => self.read(path, req.data).await,
            Operation::Create | Operation::Update => self.write(path, req.data).await,
            Operation::Delete => self.delete(path).await,
            Operation::List => self.list(path).await,
            Operation::Patch => Err(EngineError::UnsupportedOperation),
        }
    }
}

fn key(path: &str) -> String {
    format!("{PREFIX}{path}")
}

impl KvV1Backend {
    async fn read(&self, path: &str, query: &Map<String, Value>) -> Result<Response, EngineError> {
        if path.is_empty() || path.ends_with('/') || validate_path(path).is_err() {
            return Err(not_found());
        }
        let bytes = self.storage.get(&key(path)).await?.ok_or_else(not_found)?;
        let secret: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|_| EngineError::Corrupt("kv secret".to_owned()))?;
        let lease_duration = refresh_interval(&secret);
        let mut resp = Response::data(secret);
        resp.lease_duration = Some(lease_duration);
        // A read takes no parameters: say so, as Vault does, for any that came along.
        if !query.is_empty() {
            let names: Vec<&str> = query.keys().map(String::as_str).collect();
            resp.warnings.push(format!(
                "Endpoint ignored these unrecognized parameters: [{}]",
                names.join(" ")
            ));
        }
        Ok(resp)
    }

    async fn write(&self, path: &str, data: &Map<String, Value>) -> Result<Response, EngineError> {
        if path.is_empty() {
            return Err(EngineError::invalid("missing path"));
        }
        if path.ends_with('/') {
            return Err(EngineError::invalid("cannot write to a path ending in '/'"));
        }
        validate_path(path)?;
        if data.is_empty() {
            return Err(EngineError::invalid("missing data fields"));
        }
        let bytes = serde_json::to_vec(data).map_err(|_| EngineError::Encode("the kv secret"))?;
        self.storage.put(&key(path), bytes).await?;
        Ok(Response::no_content())
    }

    async fn delete(&self, path: &str) -> Result<Response, EngineError> {
        // Vault answers success for a path that holds nothing, the mount itself included.
        if path.is_empty() || path.ends_with('/') {
            return Ok(Response::no_content());
        }
        validate_path(path)?;
        self.storage.delete(&key(path)).await?;
        Ok(Response::no_content())
    }

    async fn list(&self, prefix: &str) -> Result<Response, EngineError> {
        let folder = prefix.strip_suffix('/').unwrap_or(prefix);
        let storage_prefix = if folder.is_empty() {
            PREFIX.to_owned()
        } else {
            validate_path(folder)?;
            format!("{PREFIX}{folder}/")
        };
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut page = self
                .storage
                .list_page(&storage_prefix, cursor.as_deref(), MAX_LIST_PAGE)
                .await?;
            let last_page = page.len() < MAX_LIST_PAGE;
            match page.last() {
                Some(last) => cursor = Some(last.clone()),
                None => break,
            }
            keys.append(&mut page);
            if last_page {
                break;
            }
        }
        if keys.is_empty() {
            return Err(not_found());
        }
        let mut out = Map::with_capacity(1);
        out.insert(
            "keys".to_owned(),
            Value::Array(keys.into_iter().map(Value::String).collect()),
        );
        Ok(Response::data(out))
    }
}

/// The `lease_duration` of a read: the secret's `ttl` field (or, without one, its legacy
/// `lease` field) when it parses as a duration, else the mount's default lease TTL. As in
/// Vault, a field that does not parse falls back to the default, an empty one is zero,
/// and a negative one is returned as it is.
fn refresh_interval(secret: &Map<String, Value>) -> LeaseDuration {
    let field = if secret.contains_key("ttl") {
        "ttl"
    } else if secret.contains_key("lease") {
        "lease"
    } else {
        return LeaseDuration::MountDefault;
    };
    match secret.get(field) {
        Some(Value::String(s)) if s.trim().is_empty() => LeaseDuration::Seconds(0),
        _ => match params::signed_duration_secs(secret, field) {
            Ok(Some(secs)) => LeaseDuration::Seconds(secs),
            Ok(None) | Err(_) => LeaseDuration::MountDefault,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn the_refresh_interval_follows_vaults_rules() {
        assert_eq!(
            refresh_interval(&obj(json!({"a": "b"}))),
            LeaseDuration::MountDefault
        );
        assert_eq!(
            refresh_interval(&obj(json!({"ttl": "1h"}))),
            LeaseDuration::Seconds(3600)
        );
        assert_eq!(
            refresh_interval(&obj(json!({"ttl": 30}))),
            LeaseDuration::Seconds(30)
        );
        assert_eq!(
            refresh_interval(&obj(json!({"lease": "2h"}))),
            LeaseDuration::Seconds(7200)
        );
        // `ttl` wins over `lease`, even when it does not parse.
        assert_eq!(
            refresh_interval(&obj(json!({"ttl": "10m", "lease": "1m"}))),
            LeaseDuration::Seconds(600)
        );
        assert_eq!(
            refresh_interval(&obj(json!({"ttl": "bogus", "lease": "1m"}))),
            LeaseDuration::MountDefault
        );
        assert_eq!(
            refresh_interval(&obj(json!({"ttl": "-5s"}))),
            LeaseDuration::Seconds(-5)
        );
        assert_eq!(
            refresh_interval(&obj(json!({"ttl": ""}))),
            LeaseDuration::Seconds(0)
        );
    }
}
