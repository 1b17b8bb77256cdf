//! The KV secrets engine: version 2, compatible with Vault/OpenBao's `kv-v2`, described
//! here, and version 1 ([`v1`]: one plain path per secret), which a `kv` mount without
//! `options.version` gets.
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
//! - A read is at most two storage gets: the metadata record, then one payload. On the
//!   active replica the decoded metadata record is kept for later reads ([`cache`]).
//! - Secret payloads never appear in errors, logs or `Debug` output.

mod cache;
mod config;
mod data;
mod json;
mod metadata;
mod record;
mod v1;
mod versions;

use std::sync::Arc;

use async_trait::async_trait;
use keyhaven_storage::{Condition, Op, Store, Transaction, TxOutcome, get_ready_or_wait};
use serde_json::{Map, Value};

use crate::backend::{Backend, BackendContext, BackendRequest};
use crate::clock::Clock;
use crate::error::EngineError;
use crate::request::{Operation, Response};
use crate::route::{Field, FieldType, Ops, Route};

use record::{KeyRecord, MountConfig};

/// The longest secret path accepted, in bytes. It keeps every storage key well under the
/// storage limit, whatever prefix the mount's scoped view adds.
pub const MAX_PATH_LEN: usize = 1024;

/// How many times a change is recomputed after losing a race before giving up.
pub const MAX_ATTEMPTS: usize = 16;

const CONFIG_KEY: &str = "config";

/// Which KV version a mount's options select: none, `""` or `"1"` is version 1 (as in
/// Vault, a `kv` mount without a version is version 1), `"2"` version 2.
pub fn version(options: &Map<String, Value>) -> Result<u8, EngineError> {
    match options.get("version") {
        None | Some(Value::Null) => Ok(1),
        Some(Value::String(s)) => match s.trim() {
            "" | "1" => Ok(1),
            "2" => Ok(2),
            _ => Err(invalid_version()),
        },
        Some(Value::Number(n)) => match n.as_u64() {
            Some(1) => Ok(1),
            Some(2) => Ok(2),
            _ => Err(invalid_version()),
        },
        Some(_) => Err(invalid_version()),
    }
}

fn invalid_version() -> EngineError {
    EngineError::invalid("invalid kv version in options: use \"1\" or \"2\"")
}

/// Build the KV backend of a mount: version 1 or 2, as its options say ([`version`]).
pub fn factory(ctx: BackendContext) -> Result<Arc<dyn Backend>, EngineError> {
    if version(&ctx.options)? == 1 {
        return Ok(Arc::new(v1::KvV1Backend {
            storage: ctx.storage,
        }));
    }
    Ok(Arc::new(KvBackend {
        meta_cache: (!ctx.storage.read_only()).then(cache::MetaCache::default),
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
    /// Decoded metadata records, for reads; `None` on a standby ([`cache`]).
    meta_cache: Option<cache::MetaCache>,
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

const CONFIG_FIELDS: &[Field] = &[
    Field::uint(
        "max_versions",
        "Versions kept per secret (0: the default, 10).",
    )
    .default("0"),
    Field::bool("cas_required", "Every write must carry check-and-set."),
    Field::bool(
        "metadata_cas_required",
        "Every metadata write must carry metadata check-and-set.",
    ),
    Field::new(
        "delete_version_after",
        FieldType::SignedDuration,
        "Delete versions this long after they are written (0: never).",
    ),
];

const METADATA_FIELDS: &[Field] = &[
    Field::uint(
        "max_versions",
        "Versions kept of this secret (0: the mount's).",
    ),
    Field::bool(
        "cas_required",
        "Every write of this secret must carry check-and-set.",
    ),
    Field::bool(
        "metadata_cas_required",
        "Every metadata write of this secret must carry metadata check-and-set.",
    ),
    Field::new(
        "delete_version_after",
        FieldType::SignedDuration,
        "Delete versions this long after they are written.",
    ),
    // Object values may be null in a patch (removing the entry): the handler reads it.
    Field::any("custom_metadata", "Up to 64 string pairs, not secret."),
    Field::uint(
        "metadata_cas",
        "The metadata version a metadata write expects.",
    ),
    Field::str("after", "List: only names after this one."),
    Field::int("limit", "List: at most this many names."),
];

/// Every path of a KV v2 mount.
static ROUTES: &[Route] = &[
    Route::new("config", "The mount's settings.")
        .pure(Ops::READ)
        .ops(Ops::WRITE)
        .fields(CONFIG_FIELDS),
    Route::new("data/{path*}", "A secret's versions.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::PATCH).and(Ops::DELETE))
        .fields(&[
            // The handler reads `data` itself, to refuse a missing one in its own words.
            Field::any("data", "The secret's fields (write, patch).").required(),
            Field::map("options", "Options of a write, such as cas."),
            Field::int(
                "version",
                "Read: the version to read (default: the latest).",
            ),
        ])
        .existence_check(),
    Route::new(
        "metadata/{path*}",
        "A secret's metadata and settings; list secrets.",
    )
    .pure(Ops::READ.and(Ops::LIST))
    .ops(Ops::WRITE.and(Ops::PATCH).and(Ops::DELETE))
    .fields(METADATA_FIELDS)
    .existence_check(),
    Route::new("delete/{path*}", "Soft-delete versions.")
        .ops(Ops::WRITE)
        .fields(&[Field::new("versions", FieldType::UintList, "The versions.")]),
    Route::new("undelete/{path*}", "Restore soft-deleted versions.")
        .ops(Ops::WRITE)
        .fields(&[Field::new("versions", FieldType::UintList, "The versions.")]),
    Route::new("destroy/{path*}", "Destroy versions for good.")
        .ops(Ops::WRITE)
        .fields(&[Field::new("versions", FieldType::UintList, "The versions.")]),
    Route::new(
        "subkeys/{path*}",
        "A secret's structure without its values.",
    )
    .pure(Ops::READ)
    .fields(&[
        Field::int("version", "The version (default: the latest)."),
        Field::int("depth", "How deep to descend (0: all the way).").default("0"),
    ]),
];

#[async_trait]
impl Backend for KvBackend {
    fn routes(&self) -> &'static [Route] {
        ROUTES
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<bool, EngineError> {
        match SecretPath::parse(req.capture("path")) {
            Ok(p) => Ok(self.storage.get(p.meta_key()).await?.is_some()),
            // Malformed paths are refused by the handler with a clear error.
            Err(_) => Ok(true),
        }
    }

    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError> {
        use Operation::{Create, Delete, List, Patch, Read, Update};

        let op = req.operation;
        let data = req.data;
        let endpoint = req.route.pattern;
        if (endpoint, op) == ("config", Read) {
            return self.config_read().await;
        }
        if endpoint == "config" {
            return self.config_write(data).await;
        }
        let rest = req.capture("path");
        if (endpoint, op) == ("metadata/{path*}", List) {
            return self.metadata_list(rest, data).await;
        }
        let path = SecretPath::parse(rest)?;
        // Serialise writes to one secret inside this process (see WRITE_STRIPES).
        let _lane = match op {
            Create | Update | Patch | Delete => match self.lane(rest) {
                Some(lock) => Some(lock.lock().await),
                None => None,
            },
            Read | List => None,
        };
        match (endpoint, op) {
            ("data/{path*}", Read) => self.data_read(&path, data).await,
            ("data/{path*}", Create | Update) => self.data_write(&path, data).await,
            ("data/{path*}", Patch) => self.data_patch(&path, data).await,
            ("data/{path*}", Delete) => self.data_delete(&path).await,
            ("metadata/{path*}", Read) => self.metadata_read(&path).await,
            ("metadata/{path*}", Create | Update) => self.metadata_write(&path, data).await,
            ("metadata/{path*}", Patch) => self.metadata_patch(&path, data).await,
            ("metadata/{path*}", Delete) => self.metadata_delete(&path).await,
            ("delete/{path*}", _) => self.versions_delete(&path, data).await,
            ("undelete/{path*}", _) => self.versions_undelete(&path, data).await,
            ("destroy/{path*}", _) => self.versions_destroy(&path, data).await,
            ("subkeys/{path*}", _) => self.subkeys_read(&path, data).await,
            _ => Err(EngineError::UnsupportedOperation),
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
        // Every request on a secret builds one: no formatting machinery.
        let mut meta_key = String::with_capacity("meta/".len() + path.len());
        meta_key.push_str("meta/");
        meta_key.push_str(path);
        Ok(SecretPath { meta_key })
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
    async fn load_meta(&self, path: &SecretPath) -> Result<Option<Arc<KeyRecord>>, EngineError> {
        let key = path.meta_key();
        let ticket = match &self.meta_cache {
            Some(cache) => match cache.get(key) {
                Some(hit) => return Ok(Some(hit)),
                None => cache.ticket(),
            },
            None => None,
        };
        let Some(bytes) = get_ready_or_wait(&*self.storage, key).await? else {
            return Ok(None);
        };
        let record = Arc::new(KeyRecord::decode(&bytes)?);
        if let (Some(cache), Some(ticket)) = (&self.meta_cache, ticket) {
            cache.fill(key, &record, bytes.len(), ticket);
        }
        Ok(Some(record))
    }

    /// Apply `ops` if nothing in `conditions` changed. `Ok(false)`: lost a race, recompute.
    async fn commit(&self, conditions: Vec<Condition>, ops: Vec<Op>) -> Result<bool, EngineError> {
        // Until the transaction has ended, reads keep nothing they decode.
        let _writing = self.meta_cache.as_ref().map(|c| c.writing(&ops));
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
        serde_json::from_slice(&self.payload_bytes(meta, n).await?)
            .map_err(|_| EngineError::Corrupt("kv version data".to_owned()))
    }

    /// Fetch the payload of version `n`, as stored (a JSON object).
    async fn payload_bytes(&self, meta: &KeyRecord, n: u64) -> Result<Vec<u8>, EngineError> {
        get_ready_or_wait(&*self.storage, &meta.version_key(n))
            .await?
            .ok_or_else(|| EngineError::Corrupt("kv version data is missing".to_owned()))
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
