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
use crate::token::SYSTEM_MAX_TTL;

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
        let path = mounts::normalize_existing_path(path)?;
        let router = inner.router(table).read().clone();
        let entry = router
            .entries()
            .find(|e| e.path == path)
            .ok_or_else(|| EngineError::NotFound(format!("no mount at {path:?}")))?;
        Response::wire(&entry.to_api())
    }

    /// The token a user-interface listing authenticates with, looked up without spending
    /// a use; `None` without one. A token that is presented but unknown, expired or
    /// revoked is refused, as Vault refuses it.
    async fn ui_token(
        &self,
        inner: &Unsealed,
        req: &Request,
    ) -> Result<Option<Arc<crate::policy::Acl>>, EngineError> {
        let Some(token) = &req.token else {
            return Ok(None);
        };
        let entry = inner
            .tokens
            .lookup_accessor_or_token(None, Some(token.expose()))
            .await?
            .filter(|e| e.usable_from(req.remote_addr))
            .ok_or_else(denied)?;
        Ok(Some(inner.policies.acl_for(&entry.policies).await?))
    }

    /// `sys/internal/ui/mounts`: without a token, the mounts tuned with
    /// `listing_visibility=unauth` (type, description and options only); with one, every
    /// mount the token may use, in full.
    pub(crate) async fn ui_mounts(
        &self,
        inner: &Unsealed,
        req: &Request,
    ) -> Result<Response, EngineError> {
        let acl = self.ui_token(inner, req).await?;
        let mut data = Map::new();
        for (key, table, prefix) in [
            ("auth", Table::Auth, "auth/"),
            ("secret", Table::Secrets, ""),
        ] {
            let router = inner.router(table).read().clone();
            let mut listed = Map::new();
            for e in router.entries() {
                let value = match &acl {
                    Some(acl) => {
                        if !acl.has_mount_access(&format!("{prefix}{}", e.path)) {
                            continue;
                        }
                        serde_json::to_value(e.to_api())
                            .map_err(|_| EngineError::Encode("a mount entry"))?
                    }
                    None if e.config.listing_visibility == "unauth" => {
                        let api = e.to_api();
                        json!({
                            "description": api.description,
                            "options": api.options,
                            "type": api.kind,
                        })
                    }
                    None => continue,
                };
                listed.insert(e.path.clone(), value);
            }
            data.insert(key.to_owned(), Value::Object(listed));
        }
        Ok(Response::data(data))
    }

    /// `sys/internal/ui/mounts/<path>`: the mount serving `path` (a secret engine, or an
    /// auth method under `auth/`), if the token may use something under it. As in Vault,
    /// an unknown mount and one the token may not use get the same 403, so the answer
    /// does not reveal which mounts exist.
    pub(crate) async fn ui_mount(
        &self,
        inner: &Unsealed,
        path: &str,
        req: &Request,
    ) -> Result<Response, EngineError> {
        let acl = self.ui_token(inner, req).await?.ok_or_else(denied)?;
        let path = path.trim_start_matches('/');
        let (table, rel, prefix) = match path.strip_prefix("auth/") {
            Some(rest) => (Table::Auth, rest, "auth/"),
            None => (Table::Secrets, path, ""),
        };
        let router = inner.router(table).read().clone();
        let found = router
            .route(rel)
            .map(|(m, _)| m)
            .filter(|m| acl.has_mount_access(&format!("{prefix}{}", m.entry.path)));
        let Some(mounted) = found else {
            let shown = if path.ends_with('/') {
                path.to_owned()
            } else {
                format!("{path}/")
            };
            return Err(EngineError::Forbidden(format!(
                "preflight capability check returned 403, please ensure client's policies \
                 grant access to path {shown:?}"
            )));
        };
        let api = keyhaven_types::wire::MountEntry {
            path: Some(format!("{prefix}{}", mounted.entry.path)),
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
        // `config` holds the same settings tuning does; check them on a scratch entry.
        let mut scratch = MountEntry {
            path: String::new(),
            kind: kind.to_owned(),
            description: String::new(),
            accessor: String::new(),
            uuid: String::new(),
            options: Map::new(),
            config: MountConfig::default(),
            created: 0,
        };
        match d.get("config") {
            None | Some(Value::Null) => {}
            Some(Value::Object(c)) => {
                let mut c = c.clone();
                // The options inside `config` (as the Go client sends them) add to the
                // top-level ones.
                if let Some(Value::Object(o)) = c.remove("options") {
                    for (k, v) in o {
                        options.entry(k).or_insert(v);
                    }
                }
                c.remove("description");
                apply_tune(&mut scratch, table, &c)?;
            }
            Some(_) => {
                return Err(EngineError::invalid(
                    "invalid value for parameter \"config\": expected an object",
                ));
            }
        }
        let config = scratch.config;
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
            self.options.database.clone(),
            self.options.limits,
        )?;
        let mut all = current.to_vec();
        all.push(Mounted {
            entry: Arc::new(entry.clone()),
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
        let entries: Vec<&MountEntry> = mounted.iter().map(|m| m.entry.as_ref()).collect();
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
        // As in Vault, the mount's leases are revoked first; if a secret cannot be
        // revoked the mount stays, so nothing outlives what could revoke it.
        if table == Table::Secrets {
            self.revoke_mount_leases(inner, &entry.path)
                .await
                .map_err(|e| {
                    EngineError::invalid(format!(
                        "failed to revoke the mount's leases; the mount stays: {e}"
                    ))
                })?;
        }
        let remaining: Vec<Mounted> = current
            .to_vec()
            .into_iter()
            .filter(|m| m.entry.path != path)
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
        let path = mounts::normalize_existing_path(path)?;
        match req.operation {
            Operation::Read => {
                let router = inner.router(table).read().clone();
                let e = router
                    .entries()
                    .find(|e| e.path == path)
                    .ok_or_else(|| EngineError::NotFound(format!("no mount at {path:?}")))?;
                // As Vault: the TTLs in effect (0 means the system's), and the tuned
                // fields that are set.
                let effective = |v: u64| if v == 0 { SYSTEM_MAX_TTL } else { v };
                let mut data = Map::new();
                data.insert(
                    "default_lease_ttl".to_owned(),
                    json!(effective(e.config.default_lease_ttl)),
                );
                data.insert(
                    "max_lease_ttl".to_owned(),
                    json!(effective(e.config.max_lease_ttl)),
                );
                data.insert("force_no_cache".to_owned(), json!(false));
                data.insert("description".to_owned(), json!(e.description));
                if !e.options.is_empty() {
                    data.insert("options".to_owned(), Value::Object(e.options.clone()));
                }
                let api = e.to_api().config;
                for (key, value) in [
                    ("listing_visibility", json!(api.listing_visibility)),
                    (
                        "audit_non_hmac_request_keys",
                        json!(api.audit_non_hmac_request_keys),
                    ),
                    (
                        "audit_non_hmac_response_keys",
                        json!(api.audit_non_hmac_response_keys),
                    ),
                    (
                        "passthrough_request_headers",
                        json!(api.passthrough_request_headers),
                    ),
                    ("token_type", json!(api.token_type)),
                ] {
                    if !value.is_null() {
                        data.insert(key.to_owned(), value);
                    }
                }
                Ok(Response::data(data))
            }
            Operation::Create | Operation::Update => {
                let _guard = inner.mount_lock.lock().await;
                let current = inner.router(table).read().clone();
                let mut all = current.to_vec();
                let m = all
                    .iter_mut()
                    .find(|m| m.entry.path == path)
                    .ok_or_else(|| EngineError::NotFound(format!("no mount at {path:?}")))?;
                // Everything is checked before anything changes: a refused field leaves
                // the mount as it was.
                let mut entry = MountEntry::clone(&m.entry);
                apply_tune(&mut entry, table, &req.data)?;
                if entry == *m.entry {
                    return Ok(Response::no_content());
                }
                m.entry = Arc::new(entry);
                self.persist_table(inner, table, &all).await?;
                *inner.router(table).write() = Arc::new(Router::new(all));
                tracing::info!(target: "keyhaven::mounts", %path, "mount tuned");
                Ok(Response::no_content())
            }
            _ => Err(EngineError::UnsupportedOperation),
        }
    }
}

/// Settings a tune request may carry that keyhaven does not implement, and why each is
/// refused (a non-empty value is an error, never silently dropped).
const UNSUPPORTED_TUNING: &[(&str, &str)] = &[
    (
        "passthrough_request_headers",
        "keyhaven's engines read no request headers",
    ),
    (
        "allowed_response_headers",
        "keyhaven's engines set no response headers",
    ),
    ("plugin_version", "keyhaven's engines are built in"),
    (
        "user_lockout_config",
        "keyhaven has no user lockout settings",
    ),
    ("allowed_managed_keys", "keyhaven has no managed keys"),
    ("identity_token_key", "keyhaven has no identity tokens"),
    (
        "delegated_auth_accessors",
        "keyhaven does not delegate authentication",
    ),
];

/// Whether a tune value is empty: absent, null, `""`, `[]`, `{}` or `false`.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty() || a.iter().all(is_unset),
        Value::Object(o) => o.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(_) => false,
    }
}

/// Apply the tune parameters in `d` to `entry`: the TTLs, `description`, `options`,
/// `listing_visibility`, the audit keys kept in clear and, on auth mounts, `token_type`.
/// A setting keyhaven does not implement is refused with a 400 that names it, before
/// anything changes.
pub(crate) fn apply_tune(
    entry: &mut MountEntry,
    table: Table,
    d: &Map<String, Value>,
) -> Result<(), EngineError> {
    for (key, why) in UNSUPPORTED_TUNING {
        if d.get(*key).is_some_and(|v| !is_unset(v)) {
            return Err(EngineError::invalid(format!(
                "{key} is not supported: {why}"
            )));
        }
    }
    if let Some(v) = params::string(d, "token_type")?.filter(|v| !v.is_empty()) {
        if table != Table::Auth {
            return Err(EngineError::invalid(
                "token_type can only be set on auth mounts",
            ));
        }
        match v {
            "default-service" | "service" | "default" => {}
            "batch" | "default-batch" => {
                return Err(EngineError::invalid(
                    "token_type: batch tokens are not supported; use \"service\"",
                ));
            }
            _ => {
                return Err(EngineError::invalid(format!(
                    "invalid value for parameter \"token_type\": {v:?} is not one of \
                     default-service, service"
                )));
            }
        }
    }
    let default_ttl = params::duration_secs(d, "default_lease_ttl")?;
    let max_ttl = params::duration_secs(d, "max_lease_ttl")?;
    let mut config = entry.config.clone();
    if let Some(v) = default_ttl {
        config.default_lease_ttl = v;
    }
    if let Some(v) = max_ttl {
        config.max_lease_ttl = v;
    }
    for (name, v) in [
        ("default_lease_ttl", config.default_lease_ttl),
        ("max_lease_ttl", config.max_lease_ttl),
    ] {
        if v > SYSTEM_MAX_TTL {
            return Err(EngineError::invalid(format!(
                "{name} cannot be greater than the system maximum of {SYSTEM_MAX_TTL}s"
            )));
        }
    }
    if config.max_lease_ttl != 0 && config.default_lease_ttl > config.max_lease_ttl {
        return Err(EngineError::invalid(
            "default_lease_ttl cannot be greater than max_lease_ttl",
        ));
    }
    if let Some(v) = params::string(d, "listing_visibility")? {
        match v {
            "" | "hidden" | "unauth" => config.listing_visibility = v.to_owned(),
            other => {
                return Err(EngineError::invalid(format!(
                    "invalid listing_visibility {other:?}: use \"unauth\", \"hidden\" or \"\""
                )));
            }
        }
    }
    for (key, slot) in [
        (
            "audit_non_hmac_request_keys",
            &mut config.audit_non_hmac_request_keys,
        ),
        (
            "audit_non_hmac_response_keys",
            &mut config.audit_non_hmac_response_keys,
        ),
    ] {
        if let Some(list) = params::string_list(d, key)? {
            let mut keys: Vec<String> = list
                .into_iter()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .collect();
            keys.sort();
            keys.dedup();
            *slot = keys;
        }
    }
    let mut options = entry.options.clone();
    match d.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, v) in o {
                if k == "version" && entry.kind == "kv" {
                    // Checked, never changed: the mount keeps the version it has.
                    kv_version_tune(&entry.options, o)?;
                    continue;
                }
                // Vault keeps option values as strings.
                let v = match v {
                    Value::String(s) => Value::String(s.clone()),
                    other => Value::String(other.to_string()),
                };
                options.insert(k.clone(), v);
            }
        }
        Some(_) => {
            return Err(EngineError::invalid(
                "invalid value for parameter \"options\": expected an object",
            ));
        }
    }
    if let Some(v) = params::string(d, "description")? {
        entry.description = v.to_owned();
    }
    entry.config = config;
    entry.options = options;
    Ok(())
}

/// The refusal of a user-interface listing's own token check: Vault's 403 "permission
/// denied", raised by the handler (the route is unauthenticated for the core, which
/// spends no use).
fn denied() -> EngineError {
    EngineError::Forbidden("permission denied".to_owned())
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
