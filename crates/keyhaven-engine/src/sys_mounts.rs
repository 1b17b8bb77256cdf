//! What `sys/mounts`, `sys/auth` and `sys/internal/ui/mounts` do: enabling, listing,
//! tuning and disabling secret engines and auth methods ([`crate::sys`] routes to it).

use std::sync::Arc;

use keyhaven_storage::Store;
use serde_json::{Map, Value, json};

use crate::core::{Core, Unsealed};
use crate::error::{CryptoOp, EngineError};
use crate::mounts::{self, MountConfig, MountEntry, Mounted, Router, Table};
use crate::params;
use crate::request::{Operation, Request, Response};

impl Core {
    fn normalize(table: Table, path: &str) -> Result<String, EngineError> {
        match table {
            Table::Secrets => mounts::normalize_path(path),
            Table::Auth => mounts::normalize_auth_path(path),
        }
    }

    pub(crate) fn list_table(
        &self,
        inner: &Unsealed,
        table: Table,
    ) -> Result<Response, EngineError> {
        let router = inner.router(table).read().clone();
        let data: std::collections::BTreeMap<&str, _> = router
            .entries()
            .map(|e| (e.path.as_str(), e.to_api()))
            .collect();
        Response::wire(&data)
    }

    pub(crate) fn read_mount(
        &self,
        inner: &Unsealed,
        table: Table,
        path: &str,
    ) -> Result<Response, EngineError> {
        let path = Self::normalize(table, path)?;
        let router = inner.router(table).read().clone();
        let entry = router
            .entries()
            .find(|e| e.path == path)
            .ok_or_else(|| EngineError::NotFound(format!("no mount at {path:?}")))?;
        Response::wire(&entry.to_api())
    }

    pub(crate) fn ui_mount(&self, inner: &Unsealed, path: &str) -> Result<Response, EngineError> {
        let router = inner.secrets.read().clone();
        let (mounted, _) = router
            .route(path.trim_start_matches('/'))
            .ok_or_else(|| EngineError::NotFound(format!("no mount at path {path:?}")))?;
        let api = keyhaven_types::wire::MountEntry {
            path: Some(mounted.entry.path.clone()),
            ..mounted.entry.to_api()
        };
        Response::wire(&api)
    }

    pub(crate) async fn enable_from_request(
        &self,
        inner: &Arc<Unsealed>,
        table: Table,
        path: &str,
        req: &Request,
    ) -> Result<Response, EngineError> {
        let d = &req.data;
        let kind = params::string(d, "type")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EngineError::invalid("missing parameter \"type\""))?;
        let description = params::string(d, "description")?.unwrap_or_default();
        let mut options = match d.get("options") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(o)) => o.clone(),
            Some(_) => {
                return Err(EngineError::invalid(
                    "invalid value for parameter \"options\": expected an object",
                ));
            }
        };
        let mut config = MountConfig::default();
        match d.get("config") {
            None | Some(Value::Null) => {}
            Some(Value::Object(c)) => {
                config.default_lease_ttl =
                    params::duration_secs(c, "default_lease_ttl")?.unwrap_or(0);
                config.max_lease_ttl = params::duration_secs(c, "max_lease_ttl")?.unwrap_or(0);
                if let Some(Value::Object(o)) = c.get("options") {
                    for (k, v) in o {
                        options.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
            Some(_) => {
                return Err(EngineError::invalid(
                    "invalid value for parameter \"config\": expected an object",
                ));
            }
        }
        let (kind, options) = match table {
            Table::Secrets => mounts::normalize_type(kind, options)?,
            Table::Auth => (mounts::normalize_auth_type(kind)?, options),
        };
        self.enable_mount(inner, table, path, &kind, description, options, config)
            .await?;
        Ok(Response::no_content())
    }

    /// Add a mount and persist the table.
    #[allow(
        clippy::too_many_arguments,
        reason = "mirrors the fields of a mount entry"
    )]
    pub(crate) async fn enable_mount(
        &self,
        inner: &Arc<Unsealed>,
        table: Table,
        path: &str,
        kind: &str,
        description: &str,
        options: Map<String, Value>,
        config: MountConfig,
    ) -> Result<(), EngineError> {
        let path = Self::normalize(table, path)?;
        let _guard = inner.mount_lock.lock().await;
        let current = inner.router(table).read().clone();
        if let Some(existing) = current.conflict(&path) {
            return Err(EngineError::invalid(format!(
                "path is already in use at {existing}"
            )));
        }
        let mut accessor_bytes = [0u8; 4];
        keyhaven_crypto::fill_random(&mut accessor_bytes)
            .map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
        let prefix = if table == Table::Auth { "auth_" } else { "" };
        let entry = MountEntry {
            path,
            kind: kind.to_owned(),
            description: description.to_owned(),
            accessor: format!("{prefix}{kind}_{}", hex::encode(accessor_bytes)),
            uuid: uuid::Uuid::new_v4().to_string(),
            options,
            config,
            created: self.clock.unix_seconds(),
        };
        let view: Arc<dyn Store> = inner.barrier.clone();
        let handler = mounts::instantiate(
            table,
            &entry,
            view,
            self.clock.clone(),
            self.options.outbound.clone(),
            self.options.limits,
        )?;
        let mut all = current.mounted().to_vec();
        all.push(Mounted {
            entry: entry.clone(),
            handler,
            timers: Arc::default(),
        });
        self.persist_table(inner, table, &all).await?;
        *inner.router(table).write() = Arc::new(Router::new(all));
        tracing::info!(target: "keyhaven::mounts", path = %entry.path, kind = %entry.kind, auth = (table == Table::Auth), "mount enabled");
        Ok(())
    }

    async fn persist_table(
        &self,
        inner: &Unsealed,
        table: Table,
        mounted: &[Mounted],
    ) -> Result<(), EngineError> {
        let entries: Vec<&MountEntry> = mounted.iter().map(|m| &m.entry).collect();
        let bytes =
            serde_json::to_vec(&entries).map_err(|_| EngineError::Encode("the mount table"))?;
        inner.barrier.put(table.storage_key(), bytes).await?;
        Ok(())
    }

    pub(crate) async fn disable_mount(
        &self,
        inner: &Arc<Unsealed>,
        table: Table,
        path: &str,
    ) -> Result<Response, EngineError> {
        let path = Self::normalize(table, path)?;
        let _guard = inner.mount_lock.lock().await;
        let current = inner.router(table).read().clone();
        let Some(entry) = current.entries().find(|e| e.path == path).cloned() else {
            // Vault answers success when disabling a path that is not mounted.
            return Ok(Response::no_content());
        };
        let remaining: Vec<Mounted> = current
            .mounted()
            .iter()
            .filter(|m| m.entry.path != path)
            .cloned()
            .collect();
        self.persist_table(inner, table, &remaining).await?;
        *inner.router(table).write() = Arc::new(Router::new(remaining));
        let view: Arc<dyn Store> = inner.barrier.clone();
        crate::core::delete_prefix(view.as_ref(), &table.storage_prefix(&entry.uuid)).await?;
        tracing::info!(target: "keyhaven::mounts", path = %entry.path, "mount disabled and its data deleted");
        Ok(Response::no_content())
    }

    pub(crate) async fn tune_mount(
        &self,
        inner: &Arc<Unsealed>,
        table: Table,
        path: &str,
        req: &Request,
    ) -> Result<Response, EngineError> {
        let path = Self::normalize(table, path)?;
        match req.operation {
            Operation::Read => {
                let router = inner.router(table).read().clone();
                let e = router
                    .entries()
                    .find(|e| e.path == path)
                    .ok_or_else(|| EngineError::NotFound(format!("no mount at {path:?}")))?;
                let mut data = Map::new();
                data.insert(
                    "default_lease_ttl".to_owned(),
                    json!(e.config.default_lease_ttl),
                );
                data.insert("max_lease_ttl".to_owned(), json!(e.config.max_lease_ttl));
                data.insert("force_no_cache".to_owned(), json!(false));
                data.insert("description".to_owned(), json!(e.description));
                data.insert("options".to_owned(), Value::Object(e.options.clone()));
                Ok(Response::data(data))
            }
            Operation::Create | Operation::Update => {
                let d = &req.data;
                let _guard = inner.mount_lock.lock().await;
                let current = inner.router(table).read().clone();
                let mut all = current.mounted().to_vec();
                let m = all
                    .iter_mut()
                    .find(|m| m.entry.path == path)
                    .ok_or_else(|| EngineError::NotFound(format!("no mount at {path:?}")))?;
                if let Some(v) = params::duration_secs(d, "default_lease_ttl")? {
                    m.entry.config.default_lease_ttl = v;
                }
                if let Some(v) = params::duration_secs(d, "max_lease_ttl")? {
                    m.entry.config.max_lease_ttl = v;
                }
                if let Some(v) = params::string(d, "description")? {
                    m.entry.description = v.to_owned();
                }
                if let Some(Value::Object(o)) = d.get("options")
                    && o.contains_key("version")
                    && m.entry.kind == "kv"
                {
                    kv_version_tune(&m.entry.options, o)?;
                }
                self.persist_table(inner, table, &all).await?;
                *inner.router(table).write() = Arc::new(Router::new(all));
                Ok(Response::no_content())
            }
            _ => Err(EngineError::UnsupportedOperation),
        }
    }
}

/// A tune of a KV mount's `options.version`: the same version is accepted (nothing
/// changes); a version 2 mount cannot go back to version 1 (OpenBao's words); and a
/// version 1 mount is not upgraded in place. OpenBao rewrites every secret of the mount
/// into version 2's layout while the mount is unavailable; keyhaven refuses instead, so
/// that no secret can be lost or hidden by an upgrade that stops half-way. Copy the
/// secrets into a new `kv-v2` mount instead.
fn kv_version_tune(
    current: &Map<String, Value>,
    requested: &Map<String, Value>,
) -> Result<(), EngineError> {
    let from = crate::kv::version(current)?;
    let to = match requested.get("version") {
        Some(Value::String(s)) if s.trim() == "1" => 1,
        Some(Value::String(s)) if s.trim() == "2" => 2,
        Some(Value::Number(n)) if n.as_u64() == Some(1) => 1,
        Some(Value::Number(n)) if n.as_u64() == Some(2) => 2,
        // OpenBao ignores an empty version in a tune.
        Some(Value::String(s)) if s.trim().is_empty() => from,
        Some(other) => {
            let shown = match other {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            return Err(EngineError::invalid(format!(
                "invalid version provided: {shown}"
            )));
        }
        None => from,
    };
    match (from, to) {
        (2, 1) => Err(EngineError::invalid(
            "cannot downgrade mount from version 2",
        )),
        (1, 2) => Err(EngineError::invalid(
            "upgrading a KV version 1 mount to version 2 in place is not supported; \
             enable a new kv-v2 mount and copy the secrets into it",
        )),
        _ => Ok(()),
    }
}
