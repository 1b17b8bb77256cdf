//! The mount table and the router.
//!
//! The table is stored behind the barrier at `core/mounts`. Each mount gets a random
//! UUID; its backend's storage is the barrier view scoped to `logical/<uuid>/`, so
//! disabling and re-enabling a path never exposes old data, and a backend cannot reach
//! another's.

use std::sync::Arc;

use keyhaven_storage::{ScopedStore, Store};
use keyhaven_types::wire;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backend::{Backend, BackendContext, Limits};
use crate::clock::Clock;
use crate::error::EngineError;
use crate::route::Route;

pub(crate) const MOUNTS_PATH: &str = "core/mounts";
const LOGICAL_PREFIX: &str = "logical/";

/// Paths that cannot be mounted over, and what owns them.
const RESERVED: &[&str] = &[
    "sys/",
    "auth/",
    "identity/",
    "cubbyhole/",
    "core/",
    "logical/",
];

/// Mount tuning (`config` in `sys/mounts`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountConfig {
    /// Default lease TTL in seconds (0 = system default).
    #[serde(default)]
    pub default_lease_ttl: u64,
    /// Maximum lease TTL in seconds (0 = system default).
    #[serde(default)]
    pub max_lease_ttl: u64,
    /// `unauth`: listed by the unauthenticated `sys/internal/ui/mounts`; `hidden` or
    /// empty: not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub listing_visibility: String,
    /// Top-level request data keys audit records keep in clear instead of hashing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_non_hmac_request_keys: Vec<String>,
    /// Top-level response data keys audit records keep in clear instead of hashing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_non_hmac_response_keys: Vec<String>,
}

/// One entry of the mount table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point with a trailing slash, e.g. `secret/`.
    pub path: String,
    /// Backend type, e.g. `kv`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Public identifier, e.g. `kv_1a2b3c4d`.
    pub accessor: String,
    /// Storage identity of the mount.
    pub uuid: String,
    /// Backend options, e.g. `{"version": "2"}`.
    #[serde(default)]
    pub options: Map<String, Value>,
    /// Tuning.
    #[serde(default)]
    pub config: MountConfig,
    /// Unix seconds when enabled.
    #[serde(default)]
    pub created: i64,
}

impl MountEntry {
    /// The shape Vault gives for one mount in `sys/mounts` and `sys/auth`. The built-in
    /// mounts have the keys OpenBao gives them: no `deprecation_status`, and their own
    /// `config` entries.
    pub fn to_api(&self) -> wire::MountEntry {
        let builtin = Builtin::of(&self.kind);
        wire::MountEntry {
            accessor: self.accessor.clone(),
            config: wire::MountConfig {
                default_lease_ttl: self.config.default_lease_ttl,
                force_no_cache: false,
                max_lease_ttl: self.config.max_lease_ttl,
                listing_visibility: (!self.config.listing_visibility.is_empty())
                    .then(|| self.config.listing_visibility.clone()),
                audit_non_hmac_request_keys: (!self.config.audit_non_hmac_request_keys.is_empty())
                    .then(|| self.config.audit_non_hmac_request_keys.clone()),
                audit_non_hmac_response_keys: (!self
                    .config
                    .audit_non_hmac_response_keys
                    .is_empty())
                .then(|| self.config.audit_non_hmac_response_keys.clone()),
                passthrough_request_headers: (builtin == Some(Builtin::System))
                    .then(|| vec!["Accept".to_owned()]),
                token_type: (builtin == Some(Builtin::Token)).then(|| "default-service".to_owned()),
            },
            deprecation_status: builtin.is_none().then(|| "supported".to_owned()),
            description: self.description.clone(),
            external_entropy_access: false,
            // A cubbyhole is per token, and tokens are local: OpenBao lists it local.
            local: builtin == Some(Builtin::Cubbyhole),
            options: (!self.options.is_empty()).then(|| self.options.clone()),
            path: None,
            plugin_version: String::new(),
            running_plugin_version: String::new(),
            running_sha256: String::new(),
            seal_wrap: builtin == Some(Builtin::System),
            kind: self.kind.clone(),
            uuid: self.uuid.clone(),
        }
    }
}

/// The mounts every server has, served by the core itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    /// `sys/`, in the secrets table.
    System,
    /// `auth/token/`, in the auth table.
    Token,
    /// `cubbyhole/`, in the secrets table: each token's private storage.
    Cubbyhole,
}

impl Builtin {
    fn of(kind: &str) -> Option<Builtin> {
        match kind {
            "system" => Some(Builtin::System),
            "token" => Some(Builtin::Token),
            "cubbyhole" => Some(Builtin::Cubbyhole),
            _ => None,
        }
    }

    /// The built-in mounts of `table`.
    pub(crate) fn of_table(table: Table) -> &'static [Builtin] {
        match table {
            Table::Secrets => &[Builtin::System, Builtin::Cubbyhole],
            Table::Auth => &[Builtin::Token],
        }
    }

    /// Whether `entry` is this built-in mount.
    pub(crate) fn is(self, entry: &MountEntry) -> bool {
        Builtin::of(&entry.kind) == Some(self)
    }

    /// A new entry for this mount, with its own uuid and accessor, as the first unseal
    /// records it.
    pub(crate) fn new_entry(self, now: i64) -> MountEntry {
        let (path, kind, description, accessor_prefix) = match self {
            Builtin::System => (
                "sys/",
                "system",
                "system endpoints used for control, policy and debugging",
                "system",
            ),
            Builtin::Token => ("token/", "token", "token based credentials", "auth_token"),
            Builtin::Cubbyhole => (
                "cubbyhole/",
                "cubbyhole",
                "per-token private secret storage",
                "cubbyhole",
            ),
        };
        let uuid = uuid::Uuid::new_v4();
        let simple = uuid.simple().to_string();
        MountEntry {
            path: path.to_owned(),
            kind: kind.to_owned(),
            description: description.to_owned(),
            accessor: format!("{accessor_prefix}_{}", simple.get(..8).unwrap_or_default()),
            uuid: uuid.to_string(),
            options: Map::new(),
            config: MountConfig::default(),
            created: now,
        }
    }
}

/// Normalise a user-given mount path: strip slashes at both ends, add one trailing slash,
/// refuse empty, `..` and reserved paths.
pub fn normalize_path(path: &str) -> Result<String, EngineError> {
    normalize_with(path, RESERVED)
}

/// Normalise an auth mount path (relative to `auth/`); `token/` is built in.
pub fn normalize_auth_path(path: &str) -> Result<String, EngineError> {
    normalize_with(path, &["token/"])
}

/// Normalise a path naming an existing mount (to read or tune it): the built-in ones
/// (`sys/`, `token/`) included.
pub fn normalize_existing_path(path: &str) -> Result<String, EngineError> {
    normalize_with(path, &[])
}

fn normalize_with(path: &str, reserved: &[&str]) -> Result<String, EngineError> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Err(EngineError::invalid("mount path must not be empty"));
    }
    if trimmed
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(EngineError::invalid(format!(
            "invalid mount path {path:?}: empty, '.' or '..' segment"
        )));
    }
    if trimmed.len() > 512
        || trimmed
            .chars()
            .any(|c| c.is_control() || c == '*' || c == '+')
    {
        return Err(EngineError::invalid(format!("invalid mount path {path:?}")));
    }
    let normalized = format!("{trimmed}/");
    if let Some(r) = reserved.iter().find(|r| normalized.starts_with(**r)) {
        return Err(EngineError::invalid(format!(
            "cannot mount under reserved path {r:?}"
        )));
    }
    Ok(normalized)
}

/// Normalise a type and options as `sys/mounts` accepts them, as OpenBao records them:
/// `kv-v2` is `kv` with version `"2"`, `kv-v1` is `kv` with version `"1"`, and `kv` keeps
/// the options it was given (no version is version 1), with a numeric version written as
/// a string. A version other than 1 or 2 is refused.
pub fn normalize_type(
    kind: &str,
    mut options: Map<String, Value>,
) -> Result<(String, Map<String, Value>), EngineError> {
    match kind {
        "kv-v2" | "kv-v1" => {
            let version = if kind == "kv-v2" { "2" } else { "1" };
            options.insert("version".to_owned(), Value::String(version.to_owned()));
            Ok(("kv".to_owned(), options))
        }
        "kv" => {
            crate::kv::version(&options)?;
            if let Some(Value::Number(n)) = options.get("version") {
                let text = n.to_string();
                options.insert("version".to_owned(), Value::String(text));
            }
            Ok(("kv".to_owned(), options))
        }
        "transit" => Ok(("transit".to_owned(), options)),
        "database" => Ok(("database".to_owned(), options)),
        other => Err(EngineError::invalid(format!(
            "unknown backend type {other:?}"
        ))),
    }
}

/// Which mount table an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// Secret engines (`sys/mounts`), routed from the API path's root.
    Secrets,
    /// Auth methods (`sys/auth`), routed under `auth/`.
    Auth,
}

pub(crate) const AUTH_PATH: &str = "core/auth";

impl Table {
    /// Storage key of the table.
    pub(crate) fn storage_key(self) -> &'static str {
        match self {
            Table::Secrets => MOUNTS_PATH,
            Table::Auth => AUTH_PATH,
        }
    }

    /// The storage prefix of a mount's data.
    pub(crate) fn storage_prefix(self, uuid: &str) -> String {
        match self {
            Table::Secrets => format!("{LOGICAL_PREFIX}{uuid}/"),
            Table::Auth => format!("auth/{uuid}/"),
        }
    }
}

/// Build the backend for an entry.
pub(crate) fn instantiate(
    table: Table,
    entry: &MountEntry,
    barrier: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    outbound: Option<Arc<dyn crate::auth::Outbound>>,
    database: Option<Arc<dyn crate::database::plugin::DatabasePlugins>>,
    limits: Limits,
) -> Result<Handler, EngineError> {
    match (table, Builtin::of(&entry.kind)) {
        (Table::Secrets, Some(Builtin::System)) => return Ok(Handler::System),
        (Table::Auth, Some(Builtin::Token)) => return Ok(Handler::Token),
        _ => {}
    }
    let storage: Arc<dyn Store> = Arc::new(ScopedStore::new(
        barrier.clone(),
        table.storage_prefix(&entry.uuid),
    )?);
    if (table, Builtin::of(&entry.kind)) == (Table::Secrets, Some(Builtin::Cubbyhole)) {
        return Ok(Handler::Cubbyhole(storage));
    }
    let ctx = BackendContext {
        storage,
        clock,
        options: entry.options.clone(),
        outbound,
        database,
        limits,
    };
    let backend = match (table, entry.kind.as_str()) {
        (Table::Secrets, "kv") => crate::kv::factory(ctx),
        (Table::Secrets, "transit") => crate::transit::factory(ctx),
        (Table::Secrets, "database") => {
            // The engine reads the password policies (`sys/policies/password/*`), and
            // nothing else outside its mount.
            let policies: Arc<dyn Store> = Arc::new(ScopedStore::new(
                barrier,
                crate::password_policy::STORAGE_PREFIX.to_owned(),
            )?);
            crate::database::factory_with(ctx, Some(policies))
        }
        (Table::Auth, "kubernetes") => crate::auth::kubernetes::factory(ctx),
        (Table::Auth, "jwt" | "oidc") => crate::auth::jwt::factory(ctx),
        (Table::Auth, "userpass") => crate::auth::userpass::factory(ctx),
        (Table::Auth, "approle") => crate::auth::approle::factory(ctx),
        (Table::Auth, "cert") => crate::auth::cert::factory(ctx),
        (_, other) => Err(EngineError::invalid(format!(
            "unknown backend type {other:?}"
        ))),
    }?;
    Ok(Handler::Backend(backend))
}

/// Normalise an auth method type as `sys/auth` accepts it.
pub fn normalize_auth_type(kind: &str) -> Result<String, EngineError> {
    match kind {
        "kubernetes" | "jwt" | "oidc" | "userpass" | "cert" | "approle" => Ok(kind.to_owned()),
        "token" => Err(EngineError::invalid(
            "the token auth method is built in and always mounted at auth/token/",
        )),
        other => Err(EngineError::invalid(format!(
            "unknown auth method type {other:?}"
        ))),
    }
}

/// A mounted backend in the router.
/// What serves a mount's routes.
#[derive(Clone)]
pub(crate) enum Handler {
    /// `sys/`: the core ([`crate::sys`]).
    System,
    /// `auth/token/`: the token store.
    Token,
    /// `cubbyhole/`: every token's private storage, under the token's storage hash
    /// ([`crate::cubbyhole`]).
    Cubbyhole(Arc<dyn Store>),
    /// A secret engine or auth method.
    Backend(Arc<dyn Backend>),
}

impl Handler {
    /// The route table.
    pub(crate) fn routes(&self) -> &'static [Route] {
        match self {
            Handler::System => crate::sys::ROUTES,
            Handler::Token => crate::token::ROUTES,
            Handler::Cubbyhole(_) => crate::cubbyhole::ROUTES,
            Handler::Backend(b) => b.routes(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Mounted {
    /// Shared: every request's target holds it.
    pub entry: Arc<MountEntry>,
    pub handler: Handler,
    /// Request latencies of this mount (`vault.route.*`), kept while it is mounted.
    pub timers: Arc<crate::metrics::RouteTimers>,
}

/// Mounts by path, longest first, for prefix routing.
#[derive(Clone, Default)]
pub(crate) struct Router {
    /// Each mount shared: a request holds the one it reaches with one reference count
    /// instead of one per part.
    mounts: Vec<Arc<Mounted>>,
}

impl Router {
    pub(crate) fn new(mut mounts: Vec<Mounted>) -> Self {
        mounts.sort_by(|a, b| {
            b.entry
                .path
                .len()
                .cmp(&a.entry.path.len())
                .then(a.entry.path.cmp(&b.entry.path))
        });
        Router {
            mounts: mounts.into_iter().map(Arc::new).collect(),
        }
    }

    /// The mount that owns `path` and the path relative to it. `secret` and `secret/x`
    /// both route to `secret/`.
    pub(crate) fn route<'p>(&self, path: &'p str) -> Option<(&Arc<Mounted>, &'p str)> {
        self.mounts.iter().find_map(|m| {
            let mp = m.entry.path.as_str();
            if let Some(rest) = path.strip_prefix(mp) {
                Some((m, rest))
            } else if mp.strip_suffix('/') == Some(path) {
                Some((m, ""))
            } else {
                None
            }
        })
    }

    pub(crate) fn mounted(&self) -> &[Arc<Mounted>] {
        &self.mounts
    }

    /// The mounts as values, for building the next table.
    pub(crate) fn to_vec(&self) -> Vec<Mounted> {
        self.mounts.iter().map(|m| Mounted::clone(m)).collect()
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &MountEntry> {
        self.mounts.iter().map(|m| m.entry.as_ref())
    }

    /// Whether `path` would overlap an existing mount (one inside the other).
    pub(crate) fn conflict(&self, path: &str) -> Option<&str> {
        self.mounts
            .iter()
            .map(|m| m.entry.path.as_str())
            .find(|mp| path.starts_with(mp) || mp.starts_with(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_and_checked() {
        assert_eq!(normalize_path("/kv2/").unwrap(), "kv2/");
        assert_eq!(normalize_path("team/a").unwrap(), "team/a/");
        assert!(normalize_path("").is_err());
        assert!(normalize_path("a//b").is_err());
        assert!(normalize_path("a/../b").is_err());
        assert!(normalize_path("sys").is_err());
        assert!(normalize_path("auth/x").is_err());
    }

    #[test]
    fn kv_types_normalize_to_their_version_as_openbao_records_them() {
        let version = |kind: &str, options: Value| {
            let (k, o) = normalize_type(kind, options.as_object().cloned().unwrap()).unwrap();
            assert_eq!(k, "kv");
            o.get("version").cloned()
        };
        let s = |v: &str| Some(Value::String(v.into()));
        assert_eq!(version("kv-v2", serde_json::json!({})), s("2"));
        assert_eq!(
            version("kv-v2", serde_json::json!({"version": "1"})),
            s("2")
        );
        assert_eq!(version("kv-v1", serde_json::json!({})), s("1"));
        assert_eq!(version("kv", serde_json::json!({})), None);
        assert_eq!(version("kv", serde_json::json!({"version": 1})), s("1"));
        assert_eq!(version("kv", serde_json::json!({"version": "2"})), s("2"));
        assert_eq!(version("kv", serde_json::json!({"version": ""})), s(""));
        for bad in [
            serde_json::json!({"version": "3"}),
            serde_json::json!({"version": "abc"}),
        ] {
            let err = normalize_type("kv", bad.as_object().cloned().unwrap()).unwrap_err();
            assert!(err.to_string().contains("invalid kv version"), "{err}");
        }
        assert!(normalize_type("nope", Map::new()).is_err());
    }
}
