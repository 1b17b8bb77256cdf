//! The `database/` secrets engine: credentials a database issues on demand (dynamic
//! roles, each behind a lease) or rotates on a schedule (static roles).
//!
//! Endpoints, relative to the mount (OpenBao's paths, fields and messages):
//! - `config/<name>` (read, write, delete; list `config`): a connection, its
//!   `allowed_roles` and root credentials; `reset/<name>`, `rotate-root/<name>`;
//! - `roles/<name>` (read, write, delete; list `roles`) and `creds/<name>` (read: a new
//!   user and password, with a lease);
//! - `static-roles/<name>` (read, write, delete; list `static-roles`),
//!   `static-creds/<name>` (read) and `rotate-role/<name>`.
//!
//! The engine holds no SQL driver: it speaks to databases through the
//! [`plugin::DatabasePlugins`] the server gives it.
//!
//! Invariants:
//! - the root password is never read back: `config` reads leave it out and redact the
//!   connection URL; issued and rotated passwords are returned once, to the caller that
//!   asked, and stored only behind the barrier (static roles);
//! - a configuration is stored only once its connection works (unless
//!   `verify_connection=false`);
//! - a lease's internal data holds what revocation needs (user, role, database,
//!   revocation statements), never a password;
//! - a new password is recorded behind the barrier before the database is asked to set
//!   it (rotate-root, static rotation), so a failure on either side never loses the
//!   password the database holds.

pub mod plugin;
pub mod statements;
pub mod username;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use keyhaven_storage::Store;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::backend::{Backend, BackendContext, BackendRequest, LeaseRef};
use crate::clock::{Clock, rfc3339};
use crate::error::EngineError;
use crate::params;
use crate::password_policy::PasswordPolicy;
use crate::request::{Operation, Response, SecretGrant};
use crate::route::{Field, FieldType, Ops, Route};
use plugin::{
    Connection, ConnectionConfig, DatabasePlugins, PasswordAuthentication, PluginError, SecretText,
};

/// The only plugin this build has.
pub const POSTGRESQL_PLUGIN: &str = "postgresql-database-plugin";
/// Default `max_open_connections`.
const DEFAULT_MAX_OPEN: u64 = 4;
/// The lease TTL when neither role nor mount sets one: the system default (32 days).
const SYSTEM_DEFAULT_TTL: u64 = 768 * 3600;
/// Seconds added to a lease's expiry in the database's own `VALID UNTIL`.
const EXPIRATION_BUFFER: u64 = 5;
/// Shortest `rotation_period`.
const MIN_ROTATION_PERIOD: u64 = 5;
/// Delay before a failed static rotation is tried again.
const ROTATION_RETRY: u64 = 10;
/// OpenBao's default password: 20 characters of letters, digits and `-`, at least one
/// of each kind.
const DEFAULT_PASSWORD_POLICY: &str = r#"length = 20
rule "charset" {
  charset = "abcdefghijklmnopqrstuvwxyz"
  min-chars = 1
}
rule "charset" {
  charset = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
  min-chars = 1
}
rule "charset" {
  charset = "0123456789"
  min-chars = 1
}
rule "charset" {
  charset = "-"
  min-chars = 1
}
"#;

const CONFIG_PREFIX: &str = "config/";
const ROLE_PREFIX: &str = "role/";
const STATIC_PREFIX: &str = "static-role/";
const ROOT_WAL_PREFIX: &str = "wal/rotate-root/";

/// Build a `database` secrets engine for a mount, without access to the stored password
/// policies (a `password_policy` then names one that does not exist).
pub fn factory(ctx: BackendContext) -> Result<Arc<dyn Backend>, EngineError> {
    factory_with(ctx, None)
}

/// Build a `database` secrets engine for a mount. `password_policies` is a read view of
/// the stored password policies (`sys/policies/password/*`).
pub(crate) fn factory_with(
    ctx: BackendContext,
    password_policies: Option<Arc<dyn Store>>,
) -> Result<Arc<dyn Backend>, EngineError> {
    Ok(Arc::new(DatabaseBackend {
        storage: ctx.storage,
        clock: ctx.clock,
        plugins: ctx.database,
        password_policies,
        connections: Mutex::new(HashMap::new()),
        rotation: tokio::sync::Mutex::new(()),
    }))
}

// ---------------------------------------------------------------------------------
// Stored records

/// A stored connection configuration.
#[derive(Clone, Serialize, Deserialize)]
struct DbConfig {
    plugin_name: String,
    #[serde(default)]
    plugin_version: String,
    verify_connection: bool,
    #[serde(default)]
    allowed_roles: Vec<String>,
    #[serde(default)]
    root_rotation_statements: Vec<String>,
    #[serde(default)]
    password_policy: String,
    connection_url: SecretText,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: SecretText,
    #[serde(default)]
    disable_escaping: bool,
    max_open_connections: u64,
    #[serde(default)]
    max_idle_connections: i64,
    #[serde(default)]
    max_connection_lifetime: u64,
    #[serde(default)]
    username_template: String,
    #[serde(default)]
    password_authentication: String,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("plugin_name", &self.plugin_name)
            .field("allowed_roles", &self.allowed_roles)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A dynamic role.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Role {
    db_name: String,
    #[serde(default)]
    creation_statements: Vec<String>,
    #[serde(default)]
    revocation_statements: Vec<String>,
    #[serde(default)]
    renew_statements: Vec<String>,
    #[serde(default)]
    rollback_statements: Vec<String>,
    #[serde(default)]
    default_ttl: u64,
    #[serde(default)]
    max_ttl: u64,
    #[serde(default)]
    credential_config: Map<String, Value>,
}

/// A static role: an existing database user whose password this engine rotates.
#[derive(Clone, Serialize, Deserialize)]
struct StaticRole {
    db_name: String,
    username: String,
    rotation_period: u64,
    #[serde(default)]
    rotation_statements: Vec<String>,
    #[serde(default)]
    credential_config: Map<String, Value>,
    /// The password the database holds.
    password: SecretText,
    /// A password being set: recorded before the database is asked, kept until it
    /// answers, and tried again as it is if the answer was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending_password: Option<SecretText>,
    /// Unix seconds of the last successful rotation.
    last_rotation: u64,
    /// Unix seconds the next rotation is due.
    next_rotation: u64,
}

/// A rotate-root in progress: the password the root user is being given.
#[derive(Serialize, Deserialize)]
struct RootWal {
    new_password: SecretText,
}

// ---------------------------------------------------------------------------------
// Routes

const NAME: Field = Field::str("name", "The object's name.");
const STATEMENTS: FieldType = FieldType::Any;

const CONFIG_FIELDS: &[Field] = &[
    NAME,
    Field::str(
        "plugin_name",
        "The database plugin (postgresql-database-plugin).",
    ),
    Field::str("plugin_version", "The plugin's version (builtin: empty)."),
    Field::bool(
        "verify_connection",
        "Connect before storing the configuration.",
    )
    .default("true"),
    Field::str_list(
        "allowed_roles",
        "Roles (globs) that may use this connection.",
    ),
    Field::new(
        "root_rotation_statements",
        STATEMENTS,
        "Statements that set the root user's password.",
    ),
    Field::str(
        "password_policy",
        "Password policy for generated passwords.",
    ),
    Field::str(
        "connection_url",
        "Connection string; may hold {{username}} and {{password}}.",
    ),
    Field::str("username", "The root user."),
    Field::str("password", "The root user's password (never read back)."),
    Field::bool(
        "disable_escaping",
        "Put credentials into the URL without escaping.",
    ),
    Field::int("max_open_connections", "The most open connections.").default("4"),
    Field::int("max_idle_connections", "The most idle connections."),
    Field::duration("max_connection_lifetime", "How long a connection may live."),
    Field::str("username_template", "Template of dynamic usernames."),
    Field::str(
        "password_authentication",
        "password or scram-sha-256 (hash passwords before they reach the database).",
    )
    .default("password"),
];

const ROLE_FIELDS: &[Field] = &[
    NAME,
    Field::str("db_name", "The configured database to use.").required(),
    Field::new(
        "creation_statements",
        STATEMENTS,
        "Statements that create the user.",
    ),
    Field::new(
        "revocation_statements",
        STATEMENTS,
        "Statements that remove the user.",
    ),
    Field::new(
        "renew_statements",
        STATEMENTS,
        "Statements that extend the user.",
    ),
    Field::new("rollback_statements", STATEMENTS, "Ignored by PostgreSQL."),
    Field::duration("default_ttl", "Default lease TTL."),
    Field::duration("max_ttl", "Maximum lease TTL."),
    Field::str("credential_type", "password (the only type supported)."),
    Field::map(
        "credential_config",
        "Credential settings (password_policy).",
    ),
];

const STATIC_ROLE_FIELDS: &[Field] = &[
    NAME,
    Field::str("db_name", "The configured database to use.").required(),
    Field::str("username", "The existing database user.").required(),
    Field::duration("rotation_period", "Seconds between rotations (at least 5)."),
    Field::str("rotation_schedule", "Not supported: use rotation_period."),
    Field::duration("rotation_window", "Not supported."),
    Field::new(
        "rotation_statements",
        STATEMENTS,
        "Statements that set the password.",
    ),
    Field::str("credential_type", "password (the only type supported)."),
    Field::map(
        "credential_config",
        "Credential settings (password_policy).",
    ),
];

const NAME_ONLY: &[Field] = &[NAME];

static ROUTES: [Route; 11] = [
    Route::new("config", "List the connections.").pure(Ops::LIST),
    Route::new("config/{name}", "A database connection.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(CONFIG_FIELDS)
        .existence_check(),
    Route::new("reset/{name}", "Close and reopen a connection.")
        .ops(Ops::WRITE)
        .fields(NAME_ONLY),
    Route::new("rotate-root/{name}", "Rotate the root user's password.")
        .ops(Ops::WRITE)
        .fields(NAME_ONLY),
    Route::new("roles", "List the dynamic roles.").pure(Ops::LIST),
    Route::new("roles/{name}", "A dynamic role.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(ROLE_FIELDS)
        .existence_check(),
    Route::new("creds/{name}", "Issue credentials of a dynamic role.")
        .ops(Ops::READ)
        .fields(NAME_ONLY),
    Route::new("static-roles", "List the static roles.").pure(Ops::LIST),
    Route::new("static-roles/{name}", "A static role.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(STATIC_ROLE_FIELDS)
        .existence_check(),
    Route::new(
        "static-creds/{name}",
        "The current credentials of a static role.",
    )
    .pure(Ops::READ)
    .fields(NAME_ONLY),
    Route::new("rotate-role/{name}", "Rotate a static role's password now.")
        .ops(Ops::WRITE)
        .fields(NAME_ONLY),
];

// ---------------------------------------------------------------------------------
// Helpers

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    serde_json::to_vec(value).map_err(|_| EngineError::Encode("a database record"))
}

async fn load<T: serde::de::DeserializeOwned>(
    store: &Arc<dyn Store>,
    key: &str,
) -> Result<Option<T>, EngineError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| {
            EngineError::Corrupt(format!("database record {key:?} cannot be decoded"))
        }),
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A name as a path segment may hold it.
fn check_name(name: &str) -> Result<(), EngineError> {
    if name.is_empty() {
        return Err(EngineError::invalid("missing name"));
    }
    if name.len() > 256 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(EngineError::invalid(format!("invalid name {name:?}")));
    }
    Ok(())
}

/// `pattern` with `*` matching any run of characters (OpenBao's go-glob).
pub fn glob_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    for middle in parts.iter().skip(1).take(parts.len().saturating_sub(2)) {
        match rest.find(middle) {
            Some(i) => rest = rest.get(i + middle.len()..).unwrap_or(""),
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn allowed(config: &DbConfig, role: &str) -> bool {
    config.allowed_roles.iter().any(|p| glob_match(p, role))
}

/// `{{expiration}}` as OpenBao writes it (Go's `2006-01-02 15:04:05-0700`), UTC.
pub fn expiration_text(unix: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]+0000");
    t.format(&fmt).unwrap_or_default()
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The connection URL as read back: a password in it replaced by `xxxxx`.
fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (auth, host) = match rest.rfind('@') {
            Some(at) => (rest.get(..at).unwrap_or(""), rest.get(at..).unwrap_or("")),
            None => return url.to_owned(),
        };
        return match auth.split_once(':') {
            Some((user, pass)) if pass != "{{password}}" && !pass.is_empty() => {
                format!("{scheme}://{user}:xxxxx{host}")
            }
            _ => url.to_owned(),
        };
    }
    url.split_whitespace()
        .map(|w| match w.split_once('=') {
            Some(("password", v)) if v != "{{password}}" => "password=xxxxx".to_owned(),
            _ => w.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the URL holds a literal password (not the `{{password}}` template).
fn has_literal_password(url: &str) -> bool {
    redact_url(url) != url
}

fn plugin_failure(e: PluginError) -> EngineError {
    EngineError::Failed(e.message)
}

// ---------------------------------------------------------------------------------
// The backend

struct DatabaseBackend {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    plugins: Option<Arc<dyn DatabasePlugins>>,
    password_policies: Option<Arc<dyn Store>>,
    /// Open connections by configuration name.
    connections: Mutex<HashMap<String, Arc<dyn Connection>>>,
    /// One static rotation at a time.
    rotation: tokio::sync::Mutex<()>,
}

#[async_trait]
impl Backend for DatabaseBackend {
    fn routes(&self) -> &'static [Route] {
        &ROUTES
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<bool, EngineError> {
        let name = req.capture("name");
        let key = match req.route.pattern {
            "config/{name}" => format!("{CONFIG_PREFIX}{name}"),
            "roles/{name}" => format!("{ROLE_PREFIX}{name}"),
            "static-roles/{name}" => format!("{STATIC_PREFIX}{name}"),
            _ => return Ok(true),
        };
        if check_name(name).is_err() {
            return Ok(true);
        }
        Ok(self.storage.get(&key).await?.is_some())
    }

    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError> {
        use Operation::{Create, Delete, List, Read, Update};
        let op = req.operation;
        match (req.route.pattern, op) {
            ("config", List) => self.list(CONFIG_PREFIX).await,
            ("roles", List) => self.list(ROLE_PREFIX).await,
            ("static-roles", List) => self.list(STATIC_PREFIX).await,
            (pattern, _) => {
                let name = req.capture("name");
                check_name(name)?;
                match (pattern, op) {
                    ("config/{name}", Read) => self.read_config(name).await,
                    ("config/{name}", Create | Update) => {
                        self.write_config(name, req.data, op == Create).await
                    }
                    ("config/{name}", Delete) => self.delete_config(name).await,
                    ("reset/{name}", Create | Update) => self.reset(name).await,
                    ("rotate-root/{name}", Create | Update) => self.rotate_root(name).await,
                    ("roles/{name}", Read) => self.read_role(name).await,
                    ("roles/{name}", Create | Update) => self.write_role(name, req.data).await,
                    ("roles/{name}", Delete) => {
                        self.storage.delete(&format!("{ROLE_PREFIX}{name}")).await?;
                        Ok(Response::no_content())
                    }
                    ("creds/{name}", Read) => self.creds(name, req.display_name).await,
                    ("static-roles/{name}", Read) => self.read_static_role(name).await,
                    ("static-roles/{name}", Create | Update) => {
                        self.write_static_role(name, req.data).await
                    }
                    ("static-roles/{name}", Delete) => {
                        self.storage
                            .delete(&format!("{STATIC_PREFIX}{name}"))
                            .await?;
                        Ok(Response::no_content())
                    }
                    ("static-creds/{name}", Read) => self.static_creds(name).await,
                    ("rotate-role/{name}", Create | Update) => {
                        let _guard = self.rotation.lock().await;
                        let role = self.static_role(name).await?;
                        self.rotate_static(name, role).await?;
                        Ok(Response::no_content())
                    }
                    _ => Err(EngineError::UnsupportedOperation),
                }
            }
        }
    }

    async fn revoke_secret(&self, lease: &LeaseRef<'_>) -> Result<(), EngineError> {
        let internal = lease.internal;
        let text = |k: &str| internal.get(k).and_then(Value::as_str).unwrap_or("");
        let username = text("username");
        if username.is_empty() {
            return Err(EngineError::Corrupt(format!(
                "lease {} has no username",
                lease.lease_id
            )));
        }
        // The role as it is now, if it still exists; otherwise what the lease recorded.
        let role: Option<Role> =
            load(&self.storage, &format!("{ROLE_PREFIX}{}", text("role"))).await?;
        let (db_name, statements) = match role {
            Some(r) => (r.db_name, r.revocation_statements),
            None => (
                text("db_name").to_owned(),
                internal
                    .get("revocation_statements")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
        };
        let (_, conn) = self.connection(&db_name).await?;
        conn.revoke_user(&statements, username)
            .await
            .map_err(plugin_failure)?;
        tracing::info!(target: "keyhaven::database", db = %db_name, lease = %lease.lease_id, "database user revoked");
        Ok(())
    }

    async fn renew_secret(
        &self,
        lease: &LeaseRef<'_>,
        expire_time: i64,
    ) -> Result<(), EngineError> {
        let internal = lease.internal;
        let text = |k: &str| internal.get(k).and_then(Value::as_str).unwrap_or("");
        let role_name = text("role");
        let Some(role) = load::<Role>(&self.storage, &format!("{ROLE_PREFIX}{role_name}")).await?
        else {
            return Err(EngineError::invalid(format!(
                "error during renew: could not find role with name {role_name:?}"
            )));
        };
        let (_, conn) = self.connection(&role.db_name).await?;
        conn.renew_user(
            &role.renew_statements,
            text("username"),
            &expiration_text(
                u64::try_from(expire_time)
                    .unwrap_or(0)
                    .saturating_add(EXPIRATION_BUFFER),
            ),
        )
        .await
        .map_err(plugin_failure)
    }

    async fn tick(&self) -> Result<(), EngineError> {
        let _guard = self.rotation.lock().await;
        let now = self.now();
        let mut failures = 0usize;
        for name in self.keys(STATIC_PREFIX).await? {
            let Some(role) =
                load::<StaticRole>(&self.storage, &format!("{STATIC_PREFIX}{name}")).await?
            else {
                continue;
            };
            if role.next_rotation > now {
                continue;
            }
            if let Err(e) = self.rotate_static(&name, role).await {
                failures += 1;
                tracing::warn!(target: "keyhaven::database", role = %name, error = %e, "static rotation failed; retrying in 10 s");
            }
        }
        if failures > 0 {
            return Err(EngineError::Unavailable(format!(
                "{failures} static role rotation(s) failed"
            )));
        }
        Ok(())
    }
}

impl DatabaseBackend {
    fn now(&self) -> u64 {
        self.clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, EngineError> {
        let mut keys = crate::core::list_all(self.storage.as_ref(), prefix).await?;
        keys.retain(|k| !k.ends_with('/'));
        Ok(keys)
    }

    async fn list(&self, prefix: &str) -> Result<Response, EngineError> {
        let keys = self.keys(prefix).await?;
        if keys.is_empty() {
            return Err(EngineError::NotFound(String::new()));
        }
        Ok(Response::data(object(json!({ "keys": keys }))))
    }

    // ---- connections

    fn plugins(&self) -> Result<&Arc<dyn DatabasePlugins>, EngineError> {
        self.plugins.as_ref().ok_or_else(|| {
            EngineError::Unavailable("this server has no database plugins".to_owned())
        })
    }

    fn connection_config(config: &DbConfig) -> ConnectionConfig {
        let fill = |s: &str| {
            if config.disable_escaping {
                s.to_owned()
            } else {
                escape(s)
            }
        };
        let url = statements::substitute(
            config.connection_url.expose(),
            &[
                ("username", &fill(&config.username)),
                ("password", &fill(config.password.expose())),
            ],
        );
        ConnectionConfig {
            plugin_name: config.plugin_name.clone(),
            url: SecretText::new(url),
            max_open_connections: usize::try_from(config.max_open_connections.max(1))
                .unwrap_or(usize::MAX),
            max_connection_lifetime: config.max_connection_lifetime,
            password_authentication: if config.password_authentication == "scram-sha-256" {
                PasswordAuthentication::ScramSha256
            } else {
                PasswordAuthentication::Password
            },
        }
    }

    async fn config(&self, name: &str) -> Result<Option<DbConfig>, EngineError> {
        load(&self.storage, &format!("{CONFIG_PREFIX}{name}")).await
    }

    /// The stored configuration `name` and its open connection.
    async fn connection(&self, name: &str) -> Result<(DbConfig, Arc<dyn Connection>), EngineError> {
        let Some(config) = self.config(name).await? else {
            return Err(EngineError::Failed(format!(
                "failed to find entry for connection with name: \"{name}\""
            )));
        };
        if let Some(conn) = self.connections.lock().get(name).cloned() {
            return Ok((config, conn));
        }
        let conn = self
            .plugins()?
            .open(&Self::connection_config(&config))
            .await
            .map_err(plugin_failure)?;
        let conn = self
            .connections
            .lock()
            .entry(name.to_owned())
            .or_insert(conn)
            .clone();
        Ok((config, conn))
    }

    async fn drop_connection(&self, name: &str) {
        let old = self.connections.lock().remove(name);
        if let Some(old) = old {
            old.close().await;
        }
    }

    // ---- passwords

    async fn password(&self, policy_name: &str) -> Result<SecretText, EngineError> {
        let policy = if policy_name.is_empty() {
            PasswordPolicy::parse(DEFAULT_PASSWORD_POLICY)
                .map_err(|_| EngineError::Internal("the default password policy does not parse"))?
        } else {
            let store = self.password_policies.as_ref().ok_or_else(|| {
                EngineError::invalid(format!("password policy {policy_name:?} does not exist"))
            })?;
            let text = crate::password_policy::stored_text(store, policy_name)
                .await?
                .ok_or_else(|| {
                    EngineError::invalid(format!("password policy {policy_name:?} does not exist"))
                })?;
            PasswordPolicy::parse(&text).map_err(|_| {
                EngineError::Corrupt(format!(
                    "stored password policy {policy_name:?} does not parse"
                ))
            })?
        };
        let password = policy.generate()?;
        Ok(SecretText::new(password.to_string()))
    }

    fn role_policy<'a>(credential_config: &'a Map<String, Value>, config: &'a DbConfig) -> &'a str {
        credential_config
            .get("password_policy")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(&config.password_policy)
    }

    // ---- config

    async fn read_config(&self, name: &str) -> Result<Response, EngineError> {
        let Some(c) = self.config(name).await? else {
            return Err(EngineError::NotFound(String::new()));
        };
        let mut details = object(json!({
            "connection_url": redact_url(c.connection_url.expose()),
            "username": c.username,
            "max_open_connections": c.max_open_connections,
            "max_idle_connections": c.max_idle_connections,
            "max_connection_lifetime": params::format_duration(c.max_connection_lifetime),
            "disable_escaping": c.disable_escaping,
            "password_authentication": if c.password_authentication.is_empty() { "password" } else { c.password_authentication.as_str() },
        }));
        if !c.username_template.is_empty() {
            details.insert(
                "username_template".into(),
                Value::String(c.username_template.clone()),
            );
        }
        Ok(Response::data(object(json!({
            "allowed_roles": c.allowed_roles,
            "connection_details": details,
            "password_policy": c.password_policy,
            "plugin_name": c.plugin_name,
            "plugin_version": c.plugin_version,
            "root_credentials_rotate_statements": c.root_rotation_statements,
            "verify_connection": c.verify_connection,
        }))))
    }

    async fn write_config(
        &self,
        name: &str,
        data: &Map<String, Value>,
        create: bool,
    ) -> Result<Response, EngineError> {
        let existing = if create {
            None
        } else {
            self.config(name).await?
        };
        let str_of = |k: &str| -> Result<Option<String>, EngineError> {
            Ok(params::string(data, k)?.map(str::to_owned))
        };
        let plugin_name = match (str_of("plugin_name")?, &existing) {
            (Some(p), _) if !p.is_empty() => p,
            (_, Some(e)) => e.plugin_name.clone(),
            _ => return Err(EngineError::invalid("empty plugin name")),
        };
        if plugin_name != POSTGRESQL_PLUGIN {
            return Err(EngineError::invalid(format!(
                "unsupported plugin_name {plugin_name:?}: this server has {POSTGRESQL_PLUGIN}"
            )));
        }
        let mut c = existing.unwrap_or_else(|| DbConfig {
            plugin_name: plugin_name.clone(),
            plugin_version: String::new(),
            verify_connection: true,
            allowed_roles: Vec::new(),
            root_rotation_statements: Vec::new(),
            password_policy: String::new(),
            connection_url: SecretText::default(),
            username: String::new(),
            password: SecretText::default(),
            disable_escaping: false,
            max_open_connections: DEFAULT_MAX_OPEN,
            max_idle_connections: 0,
            max_connection_lifetime: 0,
            username_template: String::new(),
            password_authentication: "password".to_owned(),
        });
        c.plugin_name = plugin_name;
        if let Some(v) = str_of("plugin_version")? {
            if !v.is_empty() && v != "builtin" && !v.starts_with("v") {
                return Err(EngineError::invalid(format!(
                    "invalid plugin_version {v:?}"
                )));
            }
            // Builtin versions are recorded as "".
            c.plugin_version = String::new();
        }
        if let Some(v) = params::boolean(data, "verify_connection")? {
            c.verify_connection = v;
        }
        if let Some(v) = params::string_list(data, "allowed_roles")? {
            c.allowed_roles = v;
        }
        if let Some(v) = statements::field(
            data.get("root_rotation_statements"),
            "root_rotation_statements",
        )? {
            c.root_rotation_statements = v;
        }
        if let Some(v) = str_of("password_policy")? {
            c.password_policy = v;
        }
        if let Some(v) = str_of("connection_url")? {
            c.connection_url = SecretText::new(v);
        }
        if let Some(v) = str_of("username")? {
            c.username = v;
        }
        if let Some(v) = str_of("password")? {
            c.password = SecretText::new(v);
        }
        if let Some(v) = params::boolean(data, "disable_escaping")? {
            c.disable_escaping = v;
        }
        if let Some(v) = params::int(data, "max_open_connections")? {
            c.max_open_connections = if v <= 0 {
                DEFAULT_MAX_OPEN
            } else {
                v.unsigned_abs()
            };
        }
        if let Some(v) = params::int(data, "max_idle_connections")? {
            c.max_idle_connections = v;
        }
        if let Some(v) = params::duration_secs(data, "max_connection_lifetime")? {
            c.max_connection_lifetime = v;
        }
        if let Some(v) = str_of("username_template")? {
            if !v.is_empty() {
                username::Template::parse(&v)?;
            }
            c.username_template = v;
        }
        if let Some(v) = str_of("password_authentication")? {
            match v.as_str() {
                "" | "password" => c.password_authentication = "password".to_owned(),
                "scram-sha-256" => c.password_authentication = v,
                other => {
                    return Err(EngineError::invalid(format!(
                        "password_authentication must be \"password\" or \"scram-sha-256\", not {other:?}"
                    )));
                }
            }
        }
        if c.connection_url.is_empty() {
            return Err(EngineError::invalid(
                "error creating database object: connection_url cannot be empty",
            ));
        }
        if !c.password_policy.is_empty() {
            // Refuse a policy that does not exist now rather than at first use.
            self.password(&c.password_policy).await?;
        }
        let conn = self
            .plugins()?
            .open(&Self::connection_config(&c))
            .await
            .map_err(|e| EngineError::invalid(format!("error creating database object: {e}")))?;
        if c.verify_connection
            && let Err(e) = conn.verify().await
        {
            conn.close().await;
            return Err(EngineError::invalid(format!(
                "error creating database object: {e}"
            )));
        }
        self.storage
            .put(&format!("{CONFIG_PREFIX}{name}"), encode(&c)?)
            .await?;
        let old = self.connections.lock().insert(name.to_owned(), conn);
        if let Some(old) = old {
            old.close().await;
        }
        tracing::info!(target: "keyhaven::database", db = %name, "database connection configured");
        let mut resp = Response::no_content();
        if has_literal_password(c.connection_url.expose()) {
            resp.warnings.push(
                "Password found in connection_url, use a templated url to enable root rotation and prevent read access to password information.".to_owned(),
            );
        }
        Ok(resp)
    }

    async fn delete_config(&self, name: &str) -> Result<Response, EngineError> {
        self.storage
            .delete(&format!("{CONFIG_PREFIX}{name}"))
            .await?;
        self.drop_connection(name).await;
        Ok(Response::no_content())
    }

    async fn reset(&self, name: &str) -> Result<Response, EngineError> {
        self.drop_connection(name).await;
        let (_, conn) = self.connection(name).await?;
        conn.verify().await.map_err(plugin_failure)?;
        Ok(Response::no_content())
    }

    async fn rotate_root(&self, name: &str) -> Result<Response, EngineError> {
        let (mut config, conn) = self.connection(name).await?;
        if config.username.is_empty() || config.password.is_empty() {
            return Err(EngineError::Failed(
                "unable to rotate root credentials: no username or password in the configuration"
                    .to_owned(),
            ));
        }
        let wal_key = format!("{ROOT_WAL_PREFIX}{name}");
        // A rotation whose answer was lost is finished with the password it recorded.
        let new_password = match load::<RootWal>(&self.storage, &wal_key).await? {
            Some(wal) => wal.new_password,
            None => {
                let p = self.password(&config.password_policy).await?;
                self.storage
                    .put(
                        &wal_key,
                        encode(&RootWal {
                            new_password: p.clone(),
                        })?,
                    )
                    .await?;
                p
            }
        };
        conn.set_password(
            &config.root_rotation_statements,
            &config.username,
            &new_password,
        )
        .await
        .map_err(plugin_failure)?;
        config.password = new_password;
        self.storage
            .put(&format!("{CONFIG_PREFIX}{name}"), encode(&config)?)
            .await?;
        self.storage.delete(&wal_key).await?;
        self.drop_connection(name).await;
        tracing::info!(target: "keyhaven::database", db = %name, "root credentials rotated");
        Ok(Response::no_content())
    }

    // ---- dynamic roles

    async fn read_role(&self, name: &str) -> Result<Response, EngineError> {
        let Some(r) = load::<Role>(&self.storage, &format!("{ROLE_PREFIX}{name}")).await? else {
            return Err(EngineError::NotFound(String::new()));
        };
        Ok(Response::data(object(json!({
            "db_name": r.db_name,
            "creation_statements": r.creation_statements,
            "revocation_statements": r.revocation_statements,
            "renew_statements": r.renew_statements,
            "rollback_statements": r.rollback_statements,
            "default_ttl": r.default_ttl,
            "max_ttl": r.max_ttl,
            "credential_type": "password",
            "credential_config": r.credential_config,
        }))))
    }

    fn check_credential_type(data: &Map<String, Value>) -> Result<(), EngineError> {
        match params::string(data, "credential_type")? {
            None | Some("" | "password") => Ok(()),
            Some(other) => Err(EngineError::invalid(format!(
                "unsupported credential_type {other:?}: only \"password\" is supported"
            ))),
        }
    }

    async fn write_role(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        if self
            .storage
            .get(&format!("{STATIC_PREFIX}{name}"))
            .await?
            .is_some()
        {
            return Err(EngineError::invalid(
                "Role and Static Role names must be unique",
            ));
        }
        Self::check_credential_type(data)?;
        let mut role = load::<Role>(&self.storage, &format!("{ROLE_PREFIX}{name}"))
            .await?
            .unwrap_or_default();
        if let Some(db) = params::string(data, "db_name")?.filter(|d| !d.is_empty()) {
            role.db_name = db.to_owned();
        }
        if role.db_name.is_empty() {
            return Err(EngineError::invalid("database name is required"));
        }
        for (key, slot) in [
            ("creation_statements", &mut role.creation_statements),
            ("revocation_statements", &mut role.revocation_statements),
            ("renew_statements", &mut role.renew_statements),
            ("rollback_statements", &mut role.rollback_statements),
        ] {
            if let Some(v) = statements::field(data.get(key), key)? {
                *slot = v;
            }
        }
        if role.creation_statements.is_empty() {
            return Err(EngineError::invalid(
                "creation_statements is required: empty creation statements",
            ));
        }
        if let Some(v) = params::duration_secs(data, "default_ttl")? {
            role.default_ttl = v;
        }
        if let Some(v) = params::duration_secs(data, "max_ttl")? {
            role.max_ttl = v;
        }
        if role.max_ttl > 0 && role.default_ttl > role.max_ttl {
            return Err(EngineError::invalid("ttl cannot be greater than max_ttl"));
        }
        if let Some(v) = params::object(data, "credential_config")? {
            role.credential_config = v.clone();
        }
        self.storage
            .put(&format!("{ROLE_PREFIX}{name}"), encode(&role)?)
            .await?;
        Ok(Response::no_content())
    }

    async fn creds(&self, name: &str, display_name: &str) -> Result<Response, EngineError> {
        let Some(role) = load::<Role>(&self.storage, &format!("{ROLE_PREFIX}{name}")).await? else {
            return Err(EngineError::invalid(format!("unknown role: {name}")));
        };
        let (config, conn) = self.connection(&role.db_name).await?;
        if !allowed(&config, name) {
            return Err(EngineError::Failed(format!(
                "\"{name}\" is not an allowed role"
            )));
        }
        let now = self.now();
        let mut ttl = if role.default_ttl > 0 {
            role.default_ttl
        } else {
            SYSTEM_DEFAULT_TTL
        };
        if role.max_ttl > 0 {
            ttl = ttl.min(role.max_ttl);
        }
        let template = if config.username_template.is_empty() {
            None
        } else {
            Some(username::Template::parse(&config.username_template)?)
        };
        let unix_millis = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let user = username::generate(
            template.as_ref(),
            &username::Inputs {
                display_name,
                role_name: name,
                unix_millis,
            },
        )?;
        let password = self
            .password(Self::role_policy(&role.credential_config, &config))
            .await?;
        let expiration = expiration_text(now.saturating_add(ttl).saturating_add(EXPIRATION_BUFFER));
        conn.create_user(&role.creation_statements, &user, &password, &expiration)
            .await
            .map_err(plugin_failure)?;
        tracing::info!(target: "keyhaven::database", db = %role.db_name, role = %name, "database user created");
        let mut resp = Response::data(object(json!({
            "username": user,
            "password": password.expose(),
        })));
        resp.secret = Some(SecretGrant {
            ttl: role.default_ttl,
            max_ttl: role.max_ttl,
            renewable: true,
            internal: object(json!({
                "username": user,
                "role": name,
                "db_name": role.db_name,
                "revocation_statements": role.revocation_statements,
            })),
        });
        Ok(resp)
    }

    // ---- static roles

    async fn static_role(&self, name: &str) -> Result<StaticRole, EngineError> {
        load::<StaticRole>(&self.storage, &format!("{STATIC_PREFIX}{name}"))
            .await?
            .ok_or_else(|| EngineError::invalid(format!("unknown role: {name}")))
    }

    async fn read_static_role(&self, name: &str) -> Result<Response, EngineError> {
        let Some(r) = load::<StaticRole>(&self.storage, &format!("{STATIC_PREFIX}{name}")).await?
        else {
            return Err(EngineError::NotFound(String::new()));
        };
        Ok(Response::data(object(json!({
            "db_name": r.db_name,
            "username": r.username,
            "rotation_period": r.rotation_period,
            "rotation_statements": r.rotation_statements,
            "last_vault_rotation": rfc3339(UNIX_EPOCH + Duration::from_secs(r.last_rotation)),
            "credential_type": "password",
            "credential_config": r.credential_config,
        }))))
    }

    async fn write_static_role(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        if self
            .storage
            .get(&format!("{ROLE_PREFIX}{name}"))
            .await?
            .is_some()
        {
            return Err(EngineError::invalid(
                "Role and Static Role names must be unique",
            ));
        }
        Self::check_credential_type(data)?;
        if params::string(data, "rotation_schedule")?.is_some_and(|s| !s.is_empty()) {
            return Err(EngineError::invalid(
                "rotation_schedule is not supported: use rotation_period",
            ));
        }
        if params::duration_secs(data, "rotation_window")?.is_some_and(|w| w > 0) {
            return Err(EngineError::invalid(
                "rotation_window is not supported: use rotation_period",
            ));
        }
        let _guard = self.rotation.lock().await;
        let existing = load::<StaticRole>(&self.storage, &format!("{STATIC_PREFIX}{name}")).await?;
        let username = params::string(data, "username")?.filter(|u| !u.is_empty());
        let mut role = match existing {
            Some(r) => {
                if username.is_some_and(|u| u != r.username) {
                    return Err(EngineError::invalid(
                        "cannot update static account username",
                    ));
                }
                r
            }
            None => {
                let Some(username) = username else {
                    return Err(EngineError::invalid(
                        "username is a required field to create a static account",
                    ));
                };
                let Some(db_name) = params::string(data, "db_name")?.filter(|d| !d.is_empty())
                else {
                    return Err(EngineError::invalid("database name is a required field"));
                };
                if params::duration_secs(data, "rotation_period")?.is_none() {
                    return Err(EngineError::invalid(
                        "rotation_period is required to create static accounts",
                    ));
                }
                StaticRole {
                    db_name: db_name.to_owned(),
                    username: username.to_owned(),
                    rotation_period: 0,
                    rotation_statements: Vec::new(),
                    credential_config: Map::new(),
                    password: SecretText::default(),
                    pending_password: None,
                    last_rotation: 0,
                    next_rotation: 0,
                }
            }
        };
        let is_new = role.last_rotation == 0;
        if let Some(db) = params::string(data, "db_name")?.filter(|d| !d.is_empty()) {
            role.db_name = db.to_owned();
        }
        if let Some(p) = params::duration_secs(data, "rotation_period")? {
            if p < MIN_ROTATION_PERIOD {
                return Err(EngineError::invalid(format!(
                    "rotation_period must be {MIN_ROTATION_PERIOD} seconds or more"
                )));
            }
            role.rotation_period = p;
            if !is_new {
                role.next_rotation = role.last_rotation.saturating_add(p);
            }
        }
        if let Some(v) = statements::field(data.get("rotation_statements"), "rotation_statements")?
        {
            role.rotation_statements = v;
        }
        if let Some(v) = params::object(data, "credential_config")? {
            role.credential_config = v.clone();
        }
        let Some(config) = self.config(&role.db_name).await? else {
            return Err(EngineError::invalid(format!(
                "could not find database connection {:?}",
                role.db_name
            )));
        };
        if !allowed(&config, name) {
            return Err(EngineError::invalid(format!(
                "\"{name}\" is not an allowed role"
            )));
        }
        if is_new {
            // The engine must know the password: set one now. Nothing is stored if the
            // database refuses.
            let password = self
                .password(Self::role_policy(&role.credential_config, &config))
                .await?;
            let (_, conn) = self.connection(&role.db_name).await?;
            conn.set_password(&role.rotation_statements, &role.username, &password)
                .await
                .map_err(|e| EngineError::invalid(format!("error setting credentials: {e}")))?;
            let now = self.now();
            role.password = password;
            role.last_rotation = now;
            role.next_rotation = now.saturating_add(role.rotation_period);
        }
        self.storage
            .put(&format!("{STATIC_PREFIX}{name}"), encode(&role)?)
            .await?;
        Ok(Response::no_content())
    }

    /// Give the static role a new password: recorded first, then set in the database,
    /// then made current. On failure the role is due again in 10 seconds.
    async fn rotate_static(&self, name: &str, mut role: StaticRole) -> Result<(), EngineError> {
        let key = format!("{STATIC_PREFIX}{name}");
        let now = self.now();
        let outcome = async {
            let (config, conn) = self.connection(&role.db_name).await?;
            let password = match role.pending_password.clone() {
                Some(p) => p,
                None => {
                    let p = self
                        .password(Self::role_policy(&role.credential_config, &config))
                        .await?;
                    role.pending_password = Some(p.clone());
                    self.storage.put(&key, encode(&role)?).await?;
                    p
                }
            };
            conn.set_password(&role.rotation_statements, &role.username, &password)
                .await
                .map_err(plugin_failure)?;
            Ok::<_, EngineError>(password)
        }
        .await;
        match outcome {
            Ok(password) => {
                role.password = password;
                role.pending_password = None;
                role.last_rotation = now;
                role.next_rotation = now.saturating_add(role.rotation_period);
                self.storage.put(&key, encode(&role)?).await?;
                tracing::info!(target: "keyhaven::database", role = %name, "static role rotated");
                Ok(())
            }
            Err(e) => {
                role.next_rotation = now.saturating_add(ROTATION_RETRY);
                self.storage.put(&key, encode(&role)?).await?;
                Err(e)
            }
        }
    }

    async fn static_creds(&self, name: &str) -> Result<Response, EngineError> {
        let role = self.static_role(name).await?;
        let Some(config) = self.config(&role.db_name).await? else {
            return Err(EngineError::Failed(format!(
                "failed to find entry for connection with name: \"{}\"",
                role.db_name
            )));
        };
        if !allowed(&config, name) {
            return Err(EngineError::Failed(format!(
                "\"{name}\" is not an allowed role"
            )));
        }
        let now = self.now();
        Ok(Response::data(object(json!({
            "username": role.username,
            "password": role.password.expose(),
            "last_vault_rotation": rfc3339(UNIX_EPOCH + Duration::from_secs(role.last_rotation)),
            "rotation_period": role.rotation_period,
            "ttl": role.next_rotation.saturating_sub(now),
        }))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_roles_are_globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("ro", "ro"));
        assert!(!glob_match("ro", "rw"));
        assert!(glob_match("app-*", "app-reader"));
        assert!(!glob_match("app-*", "xapp-reader"));
        assert!(glob_match("*-reader", "app-reader"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn urls_are_redacted_on_read() {
        assert_eq!(
            redact_url("postgresql://{{username}}:{{password}}@localhost:5432/db"),
            "postgresql://{{username}}:{{password}}@localhost:5432/db"
        );
        assert_eq!(
            redact_url("postgresql://root:s3cret@localhost:5432/db"),
            "postgresql://root:xxxxx@localhost:5432/db"
        );
        assert_eq!(
            redact_url("host=localhost user=root password=s3cret dbname=x"),
            "host=localhost user=root password=xxxxx dbname=x"
        );
        assert!(has_literal_password("postgres://u:p@h/db"));
        assert!(!has_literal_password(
            "postgres://{{username}}:{{password}}@h/db"
        ));
    }

    #[test]
    fn expiration_uses_openbao_layout() {
        assert_eq!(expiration_text(1_700_000_000), "2023-11-14 22:13:20+0000");
    }

    #[test]
    fn credentials_are_escaped_into_urls() {
        assert_eq!(escape("p@ss:w/rd?"), "p%40ss%3Aw%2Frd%3F");
        assert_eq!(escape("Ab-_.~9"), "Ab-_.~9");
    }

    #[test]
    fn default_password_policy_gives_openbao_passwords() {
        let policy = PasswordPolicy::parse(DEFAULT_PASSWORD_POLICY).unwrap();
        for _ in 0..50 {
            let p = policy.generate().unwrap();
            assert_eq!(p.len(), 20);
            assert!(p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            assert!(p.chars().any(|c| c.is_ascii_lowercase()));
            assert!(p.chars().any(|c| c.is_ascii_uppercase()));
            assert!(p.chars().any(|c| c.is_ascii_digit()));
            assert!(p.contains('-'));
        }
    }

    #[test]
    fn config_debug_hides_secrets() {
        let c = DbConfig {
            plugin_name: POSTGRESQL_PLUGIN.to_owned(),
            plugin_version: String::new(),
            verify_connection: true,
            allowed_roles: vec![],
            root_rotation_statements: vec![],
            password_policy: String::new(),
            connection_url: SecretText::new("postgres://u:hunter2@h/db".to_owned()),
            username: "u".to_owned(),
            password: SecretText::new("hunter2".to_owned()),
            disable_escaping: false,
            max_open_connections: 4,
            max_idle_connections: 0,
            max_connection_lifetime: 0,
            username_template: String::new(),
            password_authentication: String::new(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", DatabaseBackend::connection_config(&c)).contains("hunter2"));
    }
}
