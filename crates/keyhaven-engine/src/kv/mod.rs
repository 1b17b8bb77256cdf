//! The KV version 2 secrets engine, compatible with Vault/OpenBao's `kv-v2`.
//!
//! Endpoints, relative to the mount: `config`, `data/<path>`, `metadata/<path>` (and
//! `LIST metadata[/<prefix>]`), `delete/<path>`, `undelete/<path>`, `destroy/<path>` and
//! `subkeys/<path>`. Request parameters and response shapes follow OpenBao's
//! (`docs/api/secret/kv/kv-v2.mdx` and the live server).
//!
//! # Storage layout
//!
//! Inside the mount's own (barrier-encrypted, scoped) storage:
//!
//! | key | value |
//! |---|---|
//! | `config` | the mount configuration, JSON; absent means every default |
//! | `meta/<path>` | one metadata record per secret path, JSON with short field names: settings, custom metadata, counters and per-version bookkeeping (created/deletion time, destroyed) for every kept version |
//! | `versions/<id>/<n>` | the payload of version `n`: the secret's JSON object as written. `<id>` is a random id held in the metadata record, so payload keys stay short whatever the path |
//!
//! Listing `metadata/<prefix>` lists `meta/<prefix>/`, so folders come for free.
//!
//! # Invariants
//!
//! - A secret path is non-empty, at most [`MAX_PATH_LEN`] bytes, and has no empty or
//!   `..` segments.
//! - The metadata record is the single source of truth: a payload exists for exactly the
//!   kept, non-destroyed versions it lists.
//! - Every change is one storage [`Transaction`] conditioned on the metadata record (and
//!   on the mount configuration when it was consulted) being exactly as read. When the
//!   condition fails the change is recomputed from fresh state, check-and-set included,
//!   up to [`MAX_ATTEMPTS`] times. No in-process lock is taken, so several servers may
//!   share one store.
//! - A read is at most two storage gets: the metadata record, then one payload.
//! - Secret payloads never appear in errors, logs or `Debug` output.

mod config;
mod data;
mod json;
mod metadata;
mod record;
mod versions;

use std::sync::Arc;

use async_trait::async_trait;
use keyhaven_storage::{Condition, Op, Store, Transaction, TxOutcome};
use serde_json::{Map, Value};

use crate::backend::{Backend, BackendContext, BackendRequest};
use crate::clock::Clock;
use crate::error::EngineError;
use crate::request::{Operation, Response};

use record::{KeyRecord, MountConfig};

/// The longest secret path accepted, in bytes. It keeps every storage key well under the
/// storage limit, whatever prefix the mount's scoped view adds.
pub const MAX_PATH_LEN: usize = 1024;

/// How many times a change is recomputed after losing a race before giving up.
pub const MAX_ATTEMPTS: usize = 16;

const CONFIG_KEY: &str = "config";

/// Build a KV v2 backend for a mount. Refuses any `options.version` but `"2"`.
pub fn factory(ctx: BackendContext) -> Result<Arc<dyn Backend>, EngineError> {
    let supported = match ctx.options.get("version") {
        Some(Value::String(s)) => s.trim() == "2",
        Some(Value::Number(n)) => n.as_u64() == Some(2),
        _ => false,
    };
    if !supported {
        return Err(EngineError::invalid(
            "the kv engine supports version 2 only: mount it as \"kv-v2\" or with options version=2",
        ));
    }
    Ok(Arc::new(KvBackend {
        storage: ctx.storage,
        clock: ctx.clock,
        write_locks: (0..WRITE_STRIPES)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect(),
    }))
}

/// Number of in-process write lanes. Writes to one secret queue on one lane instead of
/// racing each other to the storage condition (which, with a durable commit of a few
/// milliseconds, would make most of them lose and retry); writes to different secrets
/// rarely share a lane. The storage condition still guards against other replicas.
const WRITE_STRIPES: usize = 256;

/// One mounted KV v2 engine.
struct KvBackend {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    write_locks: Vec<tokio::sync::Mutex<()>>,
}

impl KvBackend {
    /// The write lane of a secret path (`rest` of `data/…`, `metadata/…`, `delete/…`, …).
    fn lane(&self, secret: &str) -> Option<&tokio::sync::Mutex<()>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        secret.hash(&mut h);
        let n = self.write_locks.len();
        self.write_locks
            .get(usize::try_from(h.finish()).unwrap_or(0) % n.max(1))
    }
}

#[async_trait]
impl Backend for KvBackend {
    fn is_pure(&self, operation: Operation, _path: &str) -> bool {
        // Reads and lists of data, metadata, subkeys and config never write.
        matches!(operation, Operation::Read | Operation::List)
    }

    async fn exists(&self, path: &str) -> Result<Option<bool>, EngineError> {
        let secret = ["data/", "metadata/"]
            .iter()
            .find_map(|p| path.strip_prefix(p));
        match secret.map(SecretPath::parse) {
            Some(Ok(p)) => Ok(Some(self.storage.get(p.meta_key()).await?.is_some())),
            // Malformed paths are refused by the handler with a clear error.
            Some(Err(_)) | None => Ok(None),
        }
    }

    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError> {
        use Operation::{Create, Delete, List, Patch, Read, Update};

        let (endpoint, rest) = match req.path.split_once('/') {
            Some((endpoint, rest)) => (endpoint, Some(rest)),
            None => (req.path, None),
        };
        let op = req.operation;
        let data = req.data;
        // Serialise writes to one secret inside this process (see WRITE_STRIPES).
        let _lane = match (op, rest) {
            (Create | Update | Patch | Delete, Some(secret)) if endpoint != "config" => {
                match self.lane(secret) {
                    Some(lock) => Some(lock.lock().await),
                    None => None,
                }
            }
            _ => None,
        };
        match (endpoint, rest) {
            ("config", None) => match op {
                Read => self.config_read().await,
                Create | Update => self.config_write(data).await,
                _ => Err(EngineError::UnsupportedOperation),
            },
            ("metadata", rest) if op == List => self.metadata_list(rest.unwrap_or(""), data).await,
            ("data", Some(path)) => {
                let path = SecretPath::parse(path)?;
                match op {
                    Read => self.data_read(&path, data).await,
                    Create | Update => self.data_write(&path, data).await,
                    Patch => self.data_patch(&path, data).await,
                    Delete => self.data_delete(&path).await,
                    List => Err(EngineError::UnsupportedOperation),
                }
            }
            ("metadata", Some(path)) => {
                let path = SecretPath::parse(path)?;
                match op {
                    Read => self.metadata_read(&path).await,
                    Create | Update => self.metadata_write(&path, data).await,
                    Patch => self.metadata_patch(&path, data).await,
                    Delete => self.metadata_delete(&path).await,
                    List => Err(EngineError::UnsupportedOperation),
                }
            }
            ("delete" | "undelete" | "destroy", Some(path)) => {
                let path = SecretPath::parse(path)?;
                match (op, endpoint) {
                    (Create | Update, "delete") => self.versions_delete(&path, data).await,
                    (Create | Update, "undelete") => self.versions_undelete(&path, data).await,
                    (Create | Update, _) => self.versions_destroy(&path, data).await,
                    _ => Err(EngineError::UnsupportedOperation),
                }
            }
            ("subkeys", Some(path)) => {
                let path = SecretPath::parse(path)?;
                match op {
                    Read => self.subkeys_read(&path, data).await,
                    _ => Err(EngineError::UnsupportedOperation),
                }
            }
            _ => Err(EngineError::NotFound("unsupported path".to_owned())),
        }
    }
}

/// A validated secret path and the storage key of its metadata record.
pub(crate) struct SecretPath {
    meta_key: String,
}

impl SecretPath {
    fn parse(path: &str) -> Result<Self, EngineError> {
        validate_path(path)?;
        Ok(SecretPath {
            meta_key: format!("meta/{path}"),
        })
    }

    fn meta_key(&self) -> &str {
        &self.meta_key
    }
}

fn validate_path(path: &str) -> Result<(), EngineError> {
    if path.is_empty() {
        return Err(EngineError::invalid("missing path"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(EngineError::invalid(format!(
            "path is longer than {MAX_PATH_LEN} bytes"
        )));
    }
    if path.contains('\0') {
        return Err(EngineError::invalid("path contains a NUL byte"));
    }
    for segment in path.split('/') {
        if segment.is_empty() {
            return Err(EngineError::invalid("path has an empty segment"));
        }
        if segment == ".." {
            return Err(EngineError::invalid("path has a \"..\" segment"));
        }
    }
    Ok(())
}

/// What a change was computed from: the records as read and the conditions that make
/// the commit fail if either changed since.
struct Snapshot {
    config: MountConfig,
    meta: Option<KeyRecord>,
    conditions: Vec<Condition>,
}

/// The shared error after [`MAX_ATTEMPTS`] lost races.
fn contention() -> EngineError {
    EngineError::Unavailable("too much contention on this key; retry later".to_owned())
}

/// The 404 Vault gives for a path with nothing in it (an empty `errors` list).
fn not_found() -> EngineError {
    EngineError::NotFound(String::new())
}

impl KvBackend {
    fn now(&self) -> u64 {
        record::unix_nanos(self.clock.now())
    }

    /// Read the metadata record of `path`, and the mount configuration when `with_config`.
    async fn snapshot(
        &self,
        path: &SecretPath,
        with_config: bool,
    ) -> Result<Snapshot, EngineError> {
        let meta_key = path.meta_key();
        let (config_raw, meta_raw) = if with_config {
            let (config, meta) =
                tokio::join!(self.storage.get(CONFIG_KEY), self.storage.get(meta_key));
            (Some(config?), meta?)
        } else {
            (None, self.storage.get(meta_key).await?)
        };
        let mut conditions = Vec::with_capacity(2);
        let meta = match meta_raw {
            Some(bytes) => {
                let meta = KeyRecord::decode(&bytes)?;
                conditions.push(Condition::Equals {
                    key: meta_key.to_owned(),
                    value: bytes,
                });
                Some(meta)
            }
            None => {
                conditions.push(Condition::Absent {
                    key: meta_key.to_owned(),
                });
                None
            }
        };
        let config = match config_raw {
            None => MountConfig::default(),
            Some(raw) => {
                let config = MountConfig::decode(raw.as_deref())?;
                conditions.push(match raw {
                    Some(value) => Condition::Equals {
                        key: CONFIG_KEY.to_owned(),
                        value,
                    },
                    None => Condition::Absent {
                        key: CONFIG_KEY.to_owned(),
                    },
                });
                config
            }
        };
        Ok(Snapshot {
            config,
            meta,
            conditions,
        })
    }

    /// Read only the metadata record of `path`.
    async fn load_meta(&self, path: &SecretPath) -> Result<Option<KeyRecord>, EngineError> {
        match self.storage.get(path.meta_key()).await? {
            Some(bytes) => KeyRecord::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Apply `ops` if nothing in `conditions` changed. `Ok(false)`: lost a race, recompute.
    async fn commit(&self, conditions: Vec<Condition>, ops: Vec<Op>) -> Result<bool, EngineError> {
        match self
            .storage
            .transact(Transaction { conditions, ops })
            .await?
        {
            TxOutcome::Committed => Ok(true),
            TxOutcome::ConditionFailed { .. } => {
                tokio::task::yield_now().await;
                Ok(false)
            }
        }
    }

    /// Fetch and decode the payload of version `n`.
    async fn load_payload(
        &self,
        meta: &KeyRecord,
        n: u64,
    ) -> Result<Map<String, Value>, EngineError> {
        let bytes = self
            .storage
            .get(&meta.version_key(n))
            .await?
            .ok_or_else(|| EngineError::Corrupt("kv version data is missing".to_owned()))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| EngineError::Corrupt("kv version data".to_owned()))
    }
}

/// A response with `data` and an HTTP status other than the default.
fn with_status(data: Map<String, Value>, status: u16) -> Response {
    Response {
        data: Some(data),
        status: Some(status),
        ..Default::default()
    }
}

/// A response that is empty apart from `warnings` (204 when there are none).
fn warnings_only(warnings: Vec<String>) -> Response {
    Response {
        warnings,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated() {
        for bad in ["", "a//b", "/a", "a/", "..", "a/../b", "a\0b"] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a/b/c", "a.b", "./x", "a..b"] {
            assert!(validate_path(good).is_ok(), "{good:?}");
        }
        assert!(validate_path(&"x".repeat(MAX_PATH_LEN)).is_ok());
        assert!(validate_path(&"x".repeat(MAX_PATH_LEN + 1)).is_err());
    }
}
