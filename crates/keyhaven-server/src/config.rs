//! Server configuration: a raw TOML layer that rejects unknown fields, validated into
//! [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default maximum request body: 32 MiB, as Vault.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 32 * 1024 * 1024;
/// Default of `listener.http_read_header_timeout`, as Vault.
pub const DEFAULT_READ_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `listener.http_read_timeout` (the request body deadline).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `listener.http_idle_timeout`: longer than the 90 s after which common
/// client pools (Go's, reqwest's) drop idle connections, so clients close first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default of `listener.max_unauthenticated_request_size`: 64 KiB.
pub const DEFAULT_MAX_UNAUTHENTICATED_REQUEST_SIZE: usize = 64 * 1024;
/// Default of `listener.max_request_body_memory`: 256 MiB (raised to
/// `max_request_size` when that is larger).
pub const DEFAULT_MAX_REQUEST_BODY_MEMORY: usize = 256 * 1024 * 1024;
/// Upper bound of `listener.max_connections`' default.
pub const DEFAULT_MAX_CONNECTIONS_CAP: usize = 4096;
/// Descriptors the default of `listener.max_connections` leaves for everything else
/// (storage, audit files, outbound connections).
pub const DESCRIPTOR_HEADROOM: u64 = 64;
/// Longest listener timeout accepted.
const MAX_LISTENER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest `listener.max_connections` accepted.
const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown or mistyped fields.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the field).
        message: String,
    },
    /// A value is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    version: Option<u32>,
    storage: RawStorage,
    listener: RawListener,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    audit: Vec<RawAudit>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    telemetry: RawTelemetry,
    #[serde(default)]
    seal: Option<crate::seal_config::RawSeal>,
    /// Do not lock the process's memory against swapping (OpenBao's top-level key).
    #[serde(default)]
    disable_mlock: bool,
    #[serde(default)]
    ha: Option<RawHa>,
}

/// The `[telemetry]` table: who may read `sys/metrics`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    #[serde(default)]
    unauthenticated_metrics_access: bool,
}

/// Telemetry settings (`[telemetry]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `unauthenticated_metrics_access`: `GET sys/metrics` answers without a token (and
    /// is then not audited), as Vault's listener option of that name. Off by default: a
    /// token with `read` on `sys/metrics` is needed.
    pub unauthenticated_metrics_access: bool,
}

/// The `[limits]` table: bounds on what one request may ask of the engine.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_batch_items: Option<usize>,
    #[serde(default)]
    max_batch_bytes: Option<usize>,
}

fn limits(raw: RawLimits) -> Result<keyhaven_engine::Limits, ConfigError> {
    let defaults = keyhaven_engine::Limits::default();
    let limits = keyhaven_engine::Limits {
        max_batch_items: raw.max_batch_items.unwrap_or(defaults.max_batch_items),
        max_batch_bytes: raw.max_batch_bytes.unwrap_or(defaults.max_batch_bytes),
    };
    if limits.max_batch_items == 0 {
        return Err(ConfigError::Invalid(
            "limits.max_batch_items must be at least 1".into(),
        ));
    }
    if limits.max_batch_bytes == 0 {
        return Err(ConfigError::Invalid(
            "limits.max_batch_bytes must be at least 1".into(),
        ));
    }
    Ok(limits)
}

/// One `[[audit]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// A duration such as `"5s"` or `"500ms"`.
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    fsync: Option<bool>,
}

/// Longest audit timeout accepted: a request never waits longer for its record.
const MAX_AUDIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn audit_devices(
    raw: Vec<RawAudit>,
) -> Result<Vec<crate::audit_file::FileDeviceConfig>, ConfigError> {
    let mut out: Vec<crate::audit_file::FileDeviceConfig> = Vec::with_capacity(raw.len());
    for (i, a) in raw.into_iter().enumerate() {
        let at = format!("audit[{i}]");
        if a.kind != "file" {
            return Err(ConfigError::Invalid(format!(
                "{at}.type {:?}: supported: \"file\"",
                a.kind
            )));
        }
        let name = a.name.unwrap_or_else(|| "file".to_owned());
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(ConfigError::Invalid(format!(
                "{at}.name {name:?}: use 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        if out.iter().any(|d| d.name == name) {
            return Err(ConfigError::Invalid(format!(
                "{at}.name {name:?}: another audit device has this name"
            )));
        }
        let path = a
            .path
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| ConfigError::Invalid(format!("{at}.path is required")))?;
        if path.as_os_str().to_string_lossy().ends_with('/') {
            return Err(ConfigError::Invalid(format!(
                "{at}.path {} names a directory",
                path.display()
            )));
        }
        let timeout = match a.timeout {
            None => keyhaven_engine::audit::DEFAULT_TIMEOUT,
            Some(t) => humantime::parse_duration(&t).map_err(|e| {
                ConfigError::Invalid(format!("{at}.timeout {t:?}: {e} (e.g. \"5s\")"))
            })?,
        };
        if timeout.is_zero() || timeout > MAX_AUDIT_TIMEOUT {
            return Err(ConfigError::Invalid(format!(
                "{at}.timeout must be more than 0 and at most {}s",
                MAX_AUDIT_TIMEOUT.as_secs()
            )));
        }
        out.push(crate::audit_file::FileDeviceConfig {
            name,
            description: a.description.unwrap_or_default(),
            path,
            timeout,
            fsync: a.fsync.unwrap_or(false),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: String,
    #[serde(default)]
    path: Option<PathBuf>,
    /// PostgreSQL: a libpq connection string (URL or key=value); the PG* environment
    /// variables when absent.
    #[serde(default)]
    connection_url: Option<String>,
    /// PostgreSQL: the schema holding keyhaven's tables.
    #[serde(default)]
    schema: Option<String>,
    /// PostgreSQL: most connections in the pool.
    #[serde(default)]
    max_connections: Option<u32>,
    /// PostgreSQL: PEM roots that verify the database's certificate (sslmode=verify-full).
    #[serde(default)]
    tls_ca_file: Option<PathBuf>,
    /// PostgreSQL: a file holding the password (a mounted Secret), read at start-up.
    #[serde(default)]
    password_file: Option<PathBuf>,
    /// MiB of stored values kept in memory for reads; 0 turns the cache off.
    #[serde(default)]
    cache_size_mb: Option<u32>,
}

impl std::fmt::Debug for RawStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `connection_url` may hold a password.
        f.debug_struct("RawStorage")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The `[ha]` table: several replicas over one PostgreSQL database.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHa {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    api_address: Option<String>,
    #[serde(default)]
    cluster_address: Option<String>,
    #[serde(default)]
    lock_ttl: Option<String>,
    #[serde(default)]
    tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    standby_reads: Option<bool>,
}

/// Default of `ha.lock_ttl`: OpenBao's lock TTL.
pub const DEFAULT_HA_LOCK_TTL: Duration = Duration::from_secs(15);

/// High availability (`[ha] enabled = true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// Where clients reach this replica (`ha.api_address`): the address standbys
    /// redirect to and `sys/leader` reports.
    pub api_address: String,
    /// Where other replicas forward requests to (`ha.cluster_address`; the API address
    /// when unset, forwarding then goes through the API listener).
    pub cluster_address: String,
    /// How long a leadership lasts without renewal (`ha.lock_ttl`, default 15 s): how
    /// long a paused or partitioned active keeps the others waiting.
    pub lock_ttl: Duration,
    /// Roots that other replicas' TLS certificates are checked against when forwarding
    /// (`ha.tls_ca_file`, PEM); the system's roots when unset.
    pub tls_ca_file: Option<PathBuf>,
    /// Whether standbys answer requests without effects themselves (`ha.standby_reads`,
    /// default true); when false they forward everything.
    pub standby_reads: bool,
}

/// An `http://` or `https://` URL with a host and nothing after the authority but `/`.
fn ha_address(key: &str, text: &str) -> Result<String, ConfigError> {
    let text = text.trim().trim_end_matches('/');
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "ha.{key} {text:?} must start with https:// (or http:// for a listener with \
                 tls_disable)"
            ))
        })?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace)
    {
        return Err(ConfigError::Invalid(format!(
            "ha.{key} {text:?} must be scheme://host:port, without a path"
        )));
    }
    Ok(text.to_owned())
}

fn ha_config(raw: Option<RawHa>, backend: &str) -> Result<Option<HaConfig>, ConfigError> {
    ha_config_with(raw, backend, |name| {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    })
}

/// [`ha_config`] with the environment given: `KEYHAVEN_API_ADDRESS` and
/// `KEYHAVEN_CLUSTER_ADDRESS` override `ha.api_address` and `ha.cluster_address` (as
/// `VAULT_API_ADDR` and `VAULT_CLUSTER_ADDR` do), so that replicas sharing one file each
/// name themselves (a StatefulSet sets them from the pod's name).
fn ha_config_with(
    raw: Option<RawHa>,
    backend: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<HaConfig>, ConfigError> {
    let Some(mut raw) = raw.filter(|ha| ha.enabled) else {
        return Ok(None);
    };
    if backend != "postgresql" {
        return Err(ConfigError::Invalid(format!(
            "ha.enabled needs storage.backend = \"postgresql\" (the replicas share one \
             database); {backend:?} serves one server"
        )));
    }
    if let Some(v) = env("KEYHAVEN_API_ADDRESS") {
        raw.api_address = Some(v);
    }
    if let Some(v) = env("KEYHAVEN_CLUSTER_ADDRESS") {
        raw.cluster_address = Some(v);
    }
    let api_address = ha_address(
        "api_address",
        raw.api_address.as_deref().ok_or_else(|| {
            ConfigError::Invalid(
                "ha.api_address (or KEYHAVEN_API_ADDRESS) is required with ha.enabled: the \
                 address clients and the other replicas reach this one at (e.g. \
                 \"https://keyhaven-0.keyhaven:8200\")"
                    .into(),
            )
        })?,
    )?;
    let cluster_address = match raw.cluster_address.as_deref() {
        Some(text) => ha_address("cluster_address", text)?,
        None => api_address.clone(),
    };
    let lock_ttl = match raw.lock_ttl.as_deref() {
        None => DEFAULT_HA_LOCK_TTL,
        Some(text) => {
            let ttl = humantime::parse_duration(text).map_err(|e| {
                ConfigError::Invalid(format!("ha.lock_ttl {text:?}: {e} (e.g. \"15s\")"))
            })?;
            if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(300) {
                return Err(ConfigError::Invalid(
                    "ha.lock_ttl must be between 1s and 300s".into(),
                ));
            }
            ttl
        }
    };
    Ok(Some(HaConfig {
        api_address,
        cluster_address,
        lock_ttl,
        tls_ca_file: raw.tls_ca_file,
        standby_reads: raw.standby_reads.unwrap_or(true),
    }))
}

/// Default of `storage.max_connections` (PostgreSQL).
pub const DEFAULT_PG_CONNECTIONS: u32 = 16;
/// Largest `storage.max_connections` accepted.
const MAX_PG_CONNECTIONS: u32 = 1024;

/// A connection string from the PG* environment variables libpq reads (`PGHOST`,
/// `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`), for a
/// `storage.connection_url` left out.
fn pg_env_connection() -> Option<String> {
    let quote = |v: String| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = Vec::new();
    for (var, key) in [
        ("PGHOST", "host"),
        ("PGPORT", "port"),
        ("PGUSER", "user"),
        ("PGPASSWORD", "password"),
        ("PGDATABASE", "dbname"),
        ("PGSSLMODE", "sslmode"),
    ] {
        if let Ok(v) = std::env::var(var) {
            if key == "sslmode" {
                parts.push(format!("sslmode={v}"));
            } else {
                parts.push(format!("{key}={}", quote(v)));
            }
        }
    }
    parts
        .iter()
        .any(|p| p.starts_with("host="))
        .then(|| parts.join(" "))
}

fn postgres_storage(raw: RawStorage) -> Result<StorageConfig, ConfigError> {
    if raw.cache_size_mb.is_some() {
        return Err(ConfigError::Invalid(
            "storage.cache_size_mb is for the sqlite backend: the postgresql backend keeps no \
             read cache"
                .into(),
        ));
    }
    if raw.path.is_some() {
        return Err(ConfigError::Invalid(
            "storage.path is for the sqlite backend; postgresql takes connection_url".into(),
        ));
    }
    let url = match raw.connection_url {
        Some(url) => url,
        None => pg_env_connection().ok_or_else(|| {
            ConfigError::Invalid(
                "storage.connection_url is required for the postgresql backend (or set PGHOST \
                 and the other PG* environment variables)"
                    .into(),
            )
        })?,
    };
    let checked = keyhaven_storage_sql::check_connection_string(&url)
        .map_err(|e| ConfigError::Invalid(format!("storage.connection_url: {e}")))?;
    let verify = match checked.sslmode {
        Some(keyhaven_storage_sql::PgSslMode::VerifyFull) => true,
        Some(keyhaven_storage_sql::PgSslMode::Disable) => false,
        None if checked.local_only => false,
        None => {
            return Err(ConfigError::Invalid(
                "storage.connection_url names a database on another machine: add \
                 sslmode=verify-full (with storage.tls_ca_file), or sslmode=disable if the \
                 network is protected"
                    .into(),
            ));
        }
    };
    let tls_ca_file = match (verify, raw.tls_ca_file) {
        (true, None) => {
            return Err(ConfigError::Invalid(
                "storage.tls_ca_file is required with sslmode=verify-full".into(),
            ));
        }
        (false, Some(_)) => {
            return Err(ConfigError::Invalid(
                "storage.tls_ca_file is set but the connection does not use TLS: add \
                 sslmode=verify-full to storage.connection_url"
                    .into(),
            ));
        }
        (_, ca) => ca,
    };
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_PG_CONNECTIONS);
    if !(1..=MAX_PG_CONNECTIONS).contains(&max_connections) {
        return Err(ConfigError::Invalid(format!(
            "storage.max_connections {max_connections}: use 1 to {MAX_PG_CONNECTIONS}"
        )));
    }
    Ok(StorageConfig::Postgres {
        connection: secrecy::SecretString::from(checked.conninfo),
        schema: raw.schema.unwrap_or_else(|| "keyhaven".to_owned()),
        max_connections: max_connections as usize,
        tls_ca_file,
        password_file: raw.password_file,
    })
}

/// Default of `storage.cache_size_mb`.
pub const DEFAULT_CACHE_SIZE_MB: u32 = 32;
/// Largest `storage.cache_size_mb` accepted (64 GiB).
const MAX_CACHE_SIZE_MB: u32 = 64 * 1024;

fn cache_bytes(mb: Option<u32>) -> Result<usize, ConfigError> {
    let mb = mb.unwrap_or(DEFAULT_CACHE_SIZE_MB);
    if mb > MAX_CACHE_SIZE_MB {
        return Err(ConfigError::Invalid(format!(
            "storage.cache_size_mb {mb} is larger than {MAX_CACHE_SIZE_MB}"
        )));
    }
    usize::try_from(u64::from(mb) * 1024 * 1024).map_err(|_| {
        ConfigError::Invalid(format!(
            "storage.cache_size_mb {mb} does not fit this platform"
        ))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: String,
    #[serde(default)]
    tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    tls_key_file: Option<PathBuf>,
    #[serde(default)]
    tls_disable: bool,
    #[serde(default)]
    tls_disable_client_certs: bool,
    #[serde(default)]
    max_request_size: Option<usize>,
    /// Durations such as `"10s"`.
    #[serde(default)]
    http_read_header_timeout: Option<String>,
    #[serde(default)]
    http_read_timeout: Option<String>,
    #[serde(default)]
    http_idle_timeout: Option<String>,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_unauthenticated_request_size: Option<usize>,
    #[serde(default)]
    max_request_body_memory: Option<usize>,
    #[serde(default)]
    max_json_array_element_count: Option<usize>,
    #[serde(default)]
    max_json_object_entry_count: Option<usize>,
    /// OpenBao's listener option: `false` answers the token-less `sys/rekey/*`.
    #[serde(default)]
    disable_unauthed_rekey_endpoints: Option<bool>,
    /// OpenBao's listener option: `false` answers the token-less `sys/generate-root/*`.
    #[serde(default)]
    disable_unauthed_generate_root_endpoints: Option<bool>,
}

/// A listener timeout: a duration such as `"10s"`, more than zero (a timeout cannot be
/// turned off) and at most an hour.
fn listener_timeout(
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let parsed = humantime::parse_duration(text).map_err(|e| {
        ConfigError::Invalid(format!("listener.{key} {text:?}: {e} (e.g. \"10s\")"))
    })?;
    if parsed.is_zero() || parsed > MAX_LISTENER_TIMEOUT {
        return Err(ConfigError::Invalid(format!(
            "listener.{key} must be more than 0 and at most {}s",
            MAX_LISTENER_TIMEOUT.as_secs()
        )));
    }
    Ok(parsed)
}

/// The resource limits of the `[listener]` table, validated against each other.
fn listener_limits(
    raw: &RawListener,
    max_request_size: usize,
) -> Result<ListenerLimits, ConfigError> {
    let max_connections = match raw.max_connections {
        None => None,
        Some(n) if (1..=MAX_CONNECTIONS_LIMIT).contains(&n) => Some(n),
        Some(n) => {
            return Err(ConfigError::Invalid(format!(
                "listener.max_connections {n}: use 1 to {MAX_CONNECTIONS_LIMIT}"
            )));
        }
    };
    let max_unauthenticated_request_size = match raw.max_unauthenticated_request_size {
        // The default never exceeds a smaller max_request_size.
        None => DEFAULT_MAX_UNAUTHENTICATED_REQUEST_SIZE.min(max_request_size),
        Some(n) if n < 1024 => {
            return Err(ConfigError::Invalid(
                "listener.max_unauthenticated_request_size must be at least 1024 bytes".into(),
            ));
        }
        Some(n) if n > max_request_size => {
            return Err(ConfigError::Invalid(format!(
                "listener.max_unauthenticated_request_size {n} is larger than \
                 listener.max_request_size {max_request_size}"
            )));
        }
        Some(n) => n,
    };
    let max_request_body_memory = match raw.max_request_body_memory {
        // The default always admits one body of the largest size.
        None => DEFAULT_MAX_REQUEST_BODY_MEMORY.max(max_request_size),
        Some(n) if n < max_request_size => {
            return Err(ConfigError::Invalid(format!(
                "listener.max_request_body_memory {n} is smaller than \
                 listener.max_request_size {max_request_size}: such a body could never be read"
            )));
        }
        Some(n) => n,
    };
    let json_count = |key: &str, value: Option<usize>, default: usize| match value {
        None => Ok(default),
        Some(0) => Err(ConfigError::Invalid(format!(
            "listener.{key} must be at least 1"
        ))),
        Some(n) => Ok(n),
    };
    let defaults = crate::json_limits::JsonLimits::default();
    let json = crate::json_limits::JsonLimits {
        max_array_elements: json_count(
            "max_json_array_element_count",
            raw.max_json_array_element_count,
            defaults.max_array_elements,
        )?,
        max_object_entries: json_count(
            "max_json_object_entry_count",
            raw.max_json_object_entry_count,
            defaults.max_object_entries,
        )?,
    };
    Ok(ListenerLimits {
        max_connections,
        json,
        read_header_timeout: listener_timeout(
            "http_read_header_timeout",
            raw.http_read_header_timeout.as_deref(),
            DEFAULT_READ_HEADER_TIMEOUT,
        )?,
        read_timeout: listener_timeout(
            "http_read_timeout",
            raw.http_read_timeout.as_deref(),
            DEFAULT_READ_TIMEOUT,
        )?,
        idle_timeout: listener_timeout(
            "http_idle_timeout",
            raw.http_idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        )?,
        max_unauthenticated_request_size,
        max_request_body_memory,
    })
}

/// The default of `listener.max_connections` for a soft `RLIMIT_NOFILE` of `nofile`
/// (`None`: unlimited or unknown): `min(4096, nofile - 64)`, leaving 64 descriptors for
/// storage, audit files and outbound connections; half the limit when it is under 128.
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    let cap = DEFAULT_MAX_CONNECTIONS_CAP as u64;
    let n = match nofile {
        None => cap,
        Some(n) if n < 2 * DESCRIPTOR_HEADROOM => (n / 2).max(1),
        Some(n) => (n - DESCRIPTOR_HEADROOM).min(cap),
    };
    usize::try_from(n).unwrap_or(DEFAULT_MAX_CONNECTIONS_CAP)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

/// Where data lives.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// Embedded SQLite database file.
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// Bytes of stored values (ciphertext) cached in memory for reads; 0: none.
        cache_bytes: usize,
    },
    /// In memory; only dev mode uses it.
    Memory,
    /// A PostgreSQL database, used by this server alone.
    Postgres {
        /// The connection string, without `sslmode` (may hold a password).
        connection: secrecy::SecretString,
        /// The schema holding keyhaven's tables.
        schema: String,
        /// Most connections in the pool.
        max_connections: usize,
        /// PEM roots for `sslmode=verify-full`; `None`: no TLS.
        tls_ca_file: Option<PathBuf>,
        /// A file holding the password (replaces one in the connection string).
        password_file: Option<PathBuf>,
    },
}

impl PartialEq for StorageConfig {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret as _;
        match (self, other) {
            (
                StorageConfig::Sqlite { path, cache_bytes },
                StorageConfig::Sqlite {
                    path: p,
                    cache_bytes: c,
                },
            ) => path == p && cache_bytes == c,
            (StorageConfig::Memory, StorageConfig::Memory) => true,
            (
                StorageConfig::Postgres {
                    connection,
                    schema,
                    max_connections,
                    tls_ca_file,
                    password_file,
                },
                StorageConfig::Postgres {
                    connection: c,
                    schema: s,
                    max_connections: m,
                    tls_ca_file: t,
                    password_file: p,
                },
            ) => {
                connection.expose_secret() == c.expose_secret()
                    && schema == s
                    && max_connections == m
                    && tls_ca_file == t
                    && password_file == p
            }
            _ => false,
        }
    }
}

impl Eq for StorageConfig {}

impl StorageConfig {
    /// The name `sys/seal-status` reports.
    pub fn type_name(&self) -> &'static str {
        match self {
            StorageConfig::Sqlite { .. } => "sqlite",
            StorageConfig::Memory => "inmem",
            StorageConfig::Postgres { .. } => "postgresql",
        }
    }
}

/// How the listener serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsConfig {
    /// TLS with this certificate chain and key (PEM files).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key; must not be readable by group or others.
        key: PathBuf,
        /// Ask clients for a certificate (for the `cert` auth method); on unless
        /// `tls_disable_client_certs = true`.
        client_certs: bool,
    },
    /// Plain HTTP. Only for dev mode or an explicit `tls_disable = true`.
    Disabled,
}

/// Limits that keep unauthenticated clients from exhausting descriptors or memory
/// (`[listener]` keys; SECURITY.md lists them with their defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerLimits {
    /// `max_connections`: open client connections; at the cap a new connection makes
    /// the longest-idle one close. `None`: derived at start from the soft
    /// `RLIMIT_NOFILE` ([`default_max_connections`]).
    pub max_connections: Option<usize>,
    /// `http_read_header_timeout`: a new connection's first request head (TLS handshake
    /// included), and any later HTTP/1 request head from its first byte.
    pub read_header_timeout: Duration,
    /// `http_read_timeout`: receiving a request body, waiting for memory included.
    pub read_timeout: Duration,
    /// `http_idle_timeout`: a connection with no request in flight.
    pub idle_timeout: Duration,
    /// `max_unauthenticated_request_size`: bodies larger than this are read only after
    /// the request's token has been found valid (sys/init and sys/unseal never take
    /// more).
    pub max_unauthenticated_request_size: usize,
    /// `max_request_body_memory`: bytes all request bodies being received or handled
    /// may hold together.
    pub max_request_body_memory: usize,
    /// `max_json_array_element_count`, `max_json_object_entry_count`: the shape a JSON
    /// body may have before it is parsed into a tree.
    pub json: crate::json_limits::JsonLimits,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: None,
            read_header_timeout: DEFAULT_READ_HEADER_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_unauthenticated_request_size: DEFAULT_MAX_UNAUTHENTICATED_REQUEST_SIZE,
            max_request_body_memory: DEFAULT_MAX_REQUEST_BODY_MEMORY,
            json: crate::json_limits::JsonLimits::default(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Storage.
    pub storage: StorageConfig,
    /// High availability (`[ha]`), PostgreSQL only; `None`: a single server.
    pub ha: Option<HaConfig>,
    /// Listen address.
    pub address: SocketAddr,
    /// TLS.
    pub tls: TlsConfig,
    /// Maximum request body in bytes.
    pub max_request_size: usize,
    /// Connection, timeout and body-memory limits of the listener.
    pub listener_limits: ListenerLimits,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Audit devices (`[[audit]]` tables); none by default.
    pub audit: Vec<crate::audit_file::FileDeviceConfig>,
    /// Bounds on what one request may ask of the engine (`[limits]`).
    pub limits: keyhaven_engine::Limits,
    /// Who may read `sys/metrics` (`[telemetry]`).
    pub telemetry: TelemetryConfig,
    /// Answer the token-less `sys/rekey/*` (`listener.disable_unauthed_rekey_endpoints
    /// = false`); off by default, as in OpenBao 2.5+.
    pub unauthenticated_rekey: bool,
    /// Answer the token-less `sys/generate-root/*`
    /// (`listener.disable_unauthed_generate_root_endpoints = false`); off by default.
    pub unauthenticated_generate_root: bool,
    /// How the root key is sealed (`[seal]`); Shamir shares by default.
    pub seal: crate::seal_config::SealSettings,
    /// `disable_mlock = true`: do not lock memory against swapping. Off by default for a
    /// config file; dev mode does not lock (as OpenBao's).
    pub disable_mlock: bool,
}

impl Config {
    /// Read and validate a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        if let Some(v) = raw.version
            && v != 1
        {
            return Err(ConfigError::Invalid(format!(
                "unsupported config version {v}; this server reads version 1"
            )));
        }
        let ha = ha_config(raw.ha, &raw.storage.backend)?;
        if raw.storage.backend != "postgresql"
            && (raw.storage.connection_url.is_some()
                || raw.storage.schema.is_some()
                || raw.storage.max_connections.is_some()
                || raw.storage.tls_ca_file.is_some()
                || raw.storage.password_file.is_some())
        {
            return Err(ConfigError::Invalid(format!(
                "storage.connection_url, schema, max_connections, tls_ca_file and password_file are for the \
                 postgresql backend, not {:?}",
                raw.storage.backend
            )));
        }
        let backend = raw.storage.backend.clone();
        let storage = match backend.as_str() {
            "postgresql" => postgres_storage(raw.storage)?,
            "sqlite" => StorageConfig::Sqlite {
                path: raw.storage.path.ok_or_else(|| {
                    ConfigError::Invalid("storage.path is required for the sqlite backend".into())
                })?,
                cache_bytes: cache_bytes(raw.storage.cache_size_mb)?,
            },
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown storage.backend {other:?}; supported: \"sqlite\", \"postgresql\""
                )));
            }
        };
        let address: SocketAddr = raw.listener.address.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "listener.address {:?} is not host:port",
                raw.listener.address
            ))
        })?;
        let max_request_size = raw
            .listener
            .max_request_size
            .unwrap_or(DEFAULT_MAX_REQUEST_SIZE);
        if max_request_size < 1024 {
            return Err(ConfigError::Invalid(
                "listener.max_request_size must be at least 1024 bytes".into(),
            ));
        }
        let listener_limits = listener_limits(&raw.listener, max_request_size)?;
        let unauthenticated_rekey = raw.listener.disable_unauthed_rekey_endpoints == Some(false);
        let unauthenticated_generate_root =
            raw.listener.disable_unauthed_generate_root_endpoints == Some(false);
        let tls = match (
            raw.listener.tls_disable,
            raw.listener.tls_cert_file,
            raw.listener.tls_key_file,
        ) {
            (true, None, None) => TlsConfig::Disabled,
            (true, _, _) => {
                return Err(ConfigError::Invalid(
                    "listener.tls_disable = true cannot be combined with tls_cert_file/tls_key_file".into(),
                ));
            }
            (false, Some(cert), Some(key)) => TlsConfig::Files {
                cert,
                key,
                client_certs: !raw.listener.tls_disable_client_certs,
            },
            (false, _, _) => {
                return Err(ConfigError::Invalid(
                    "listener needs tls_cert_file and tls_key_file, or tls_disable = true".into(),
                ));
            }
        };
        let log_format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "log.format {other:?}: use \"text\" or \"json\""
                )));
            }
        };
        let audit = audit_devices(raw.audit)?;
        let limits = limits(raw.limits)?;
        let seal = crate::seal_config::seal_settings(raw.seal)?;
        Ok(Config {
            seal,
            ha,
            disable_mlock: raw.disable_mlock,
            storage,
            address,
            tls,
            max_request_size,
            listener_limits,
            log_level: raw.log.level.unwrap_or_else(|| "info".to_owned()),
            log_format,
            audit,
            limits,
            telemetry: TelemetryConfig {
                unauthenticated_metrics_access: raw.telemetry.unauthenticated_metrics_access,
            },
            unauthenticated_rekey,
            unauthenticated_generate_root,
        })
    }

    /// The configuration of `keyhaven server --dev`.
    pub fn dev(address: SocketAddr) -> Config {
        Config {
            storage: StorageConfig::Memory,
            ha: None,
            address,
            tls: TlsConfig::Disabled,
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            listener_limits: ListenerLimits::default(),
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            audit: Vec::new(),
            limits: keyhaven_engine::Limits::default(),
            // As OpenBao's dev server: metrics without a token (on loopback only).
            telemetry: TelemetryConfig {
                unauthenticated_metrics_access: true,
            },
            unauthenticated_rekey: false,
            unauthenticated_generate_root: false,
            seal: crate::seal_config::SealSettings::default(),
            disable_mlock: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[storage]
backend = "sqlite"
path = "/var/lib/keyhaven/keyhaven.db"
[listener]
address = "127.0.0.1:8200"
tls_cert_file = "/etc/keyhaven/tls.crt"
tls_key_file = "/etc/keyhaven/tls.key"
"#;

    #[test]
    fn the_token_less_recovery_endpoints_are_off_unless_enabled() {
        let c = Config::from_toml(GOOD).unwrap();
        assert!(!c.unauthenticated_rekey && !c.unauthenticated_generate_root);
        let on = GOOD.replace(
            "[listener]\n",
            "[listener]\ndisable_unauthed_rekey_endpoints = false\ndisable_unauthed_generate_root_endpoints = false\n",
        );
        let c = Config::from_toml(&on).unwrap();
        assert!(c.unauthenticated_rekey && c.unauthenticated_generate_root);
        let off = GOOD.replace(
            "[listener]\n",
            "[listener]\ndisable_unauthed_rekey_endpoints = true\n",
        );
        assert!(!Config::from_toml(&off).unwrap().unauthenticated_rekey);
    }

    #[test]
    fn the_documented_example_parses() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(
            c.storage,
            StorageConfig::Sqlite {
                path: "/var/lib/keyhaven/keyhaven.db".into(),
                cache_bytes: 32 * 1024 * 1024,
            }
        );
        assert!(matches!(c.tls, TlsConfig::Files { .. }));
        assert_eq!(c.max_request_size, DEFAULT_MAX_REQUEST_SIZE);
    }

    #[test]
    fn high_availability_needs_postgresql_and_an_api_address() {
        let with = |ha: &str| {
            Config::from_toml(&format!(
                "[storage]\nbackend = \"postgresql\"\nconnection_url = \"host=127.0.0.1\"\n\
                 [listener]\naddress = \"127.0.0.1:1\"\ntls_disable = true\n[ha]\n{ha}\n"
            ))
        };
        let c = with("enabled = true\napi_address = \"https://kh-0.kh:8200/\"").unwrap();
        assert_eq!(
            c.ha,
            Some(HaConfig {
                api_address: "https://kh-0.kh:8200".to_owned(),
                cluster_address: "https://kh-0.kh:8200".to_owned(),
                lock_ttl: DEFAULT_HA_LOCK_TTL,
                tls_ca_file: None,
                standby_reads: true,
            })
        );
        let c = with("enabled = true\napi_address = \"https://a:8200\"\nstandby_reads = false");
        assert!(!c.unwrap().ha.unwrap().standby_reads);
        let c = with(
            "enabled = true\napi_address = \"https://a:8200\"\ncluster_address = \"https://a:8201\"\n\
             lock_ttl = \"3s\"\ntls_ca_file = \"/etc/ca.pem\"",
        )
        .unwrap();
        let ha = c.ha.unwrap();
        assert_eq!(ha.cluster_address, "https://a:8201");
        assert_eq!(ha.lock_ttl, Duration::from_secs(3));
        assert_eq!(ha.tls_ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(with("enabled = false").unwrap().ha, None);
        // The environment names each replica of a shared file.
        let raw: RawConfig = toml::from_str(
            "[storage]\nbackend = \"postgresql\"\n[listener]\naddress = \"0.0.0.0:8200\"\n\
             [ha]\nenabled = true\napi_address = \"https://file:8200\"\n",
        )
        .unwrap();
        let ha = ha_config_with(raw.ha, "postgresql", |name| match name {
            "KEYHAVEN_API_ADDRESS" => Some("https://kh-1.kh-internal:8200".to_owned()),
            _ => None,
        })
        .unwrap()
        .unwrap();
        assert_eq!(ha.api_address, "https://kh-1.kh-internal:8200");
        assert_eq!(ha.cluster_address, "https://kh-1.kh-internal:8200");
        let raw: RawConfig = toml::from_str(
            "[storage]\nbackend = \"postgresql\"\n[listener]\naddress = \"0.0.0.0:8200\"\n\
             [ha]\nenabled = true\n",
        )
        .unwrap();
        let ha = ha_config_with(raw.ha, "postgresql", |name| match name {
            "KEYHAVEN_API_ADDRESS" => Some("https://a:8200".to_owned()),
            "KEYHAVEN_CLUSTER_ADDRESS" => Some("https://a:8201".to_owned()),
            _ => None,
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            (ha.api_address.as_str(), ha.cluster_address.as_str()),
            ("https://a:8200", "https://a:8201")
        );
        for (ha, wanted) in [
            (
                "enabled = true",
                "ha.api_address (or KEYHAVEN_API_ADDRESS) is required",
            ),
            (
                "enabled = true\napi_address = \"kh-0:8200\"",
                "must start with https://",
            ),
            (
                "enabled = true\napi_address = \"https://kh-0:8200/v1\"",
                "without a path",
            ),
            (
                "enabled = true\napi_address = \"https://a:1\"\nlock_ttl = \"100ms\"",
                "between 1s and 300s",
            ),
            (
                "enabled = true\napi_address = \"https://a:1\"\nlock_ttl = \"soon\"",
                "ha.lock_ttl \"soon\"",
            ),
            ("enabled = true\nleader = true", "unknown field `leader`"),
        ] {
            let err = with(ha).unwrap_err().to_string();
            assert!(err.contains(wanted), "{ha}: {err}");
        }
    }

    #[test]
    fn postgresql_connections_verify_the_server_or_stay_on_this_machine() {
        let with = |storage: &str| {
            Config::from_toml(&format!(
                "[storage]\nbackend = \"postgresql\"\n{storage}\n[listener]\naddress = \"127.0.0.1:1\"\ntls_disable = true\n"
            ))
        };
        // Local without sslmode: plain; sslmode taken out of what the driver sees.
        let c =
            with("connection_url = \"host=127.0.0.1 user=kh password='p w' dbname=kh\"").unwrap();
        let StorageConfig::Postgres {
            connection,
            schema,
            max_connections,
            tls_ca_file,
            ..
        } = &c.storage
        else {
            panic!("{:?}", c.storage)
        };
        use secrecy::ExposeSecret as _;
        assert_eq!(
            connection.expose_secret(),
            "host=127.0.0.1 user=kh password='p w' dbname=kh"
        );
        assert_eq!(
            (schema.as_str(), *max_connections, tls_ca_file),
            ("keyhaven", 16, &None)
        );
        assert_eq!(c.storage.type_name(), "postgresql");
        assert!(
            !format!("{c:?}").contains("p w"),
            "the password is in Debug output"
        );
        let c = with(
            "connection_url = \"postgresql://kh@db.example.com/kh?sslmode=verify-full&connect_timeout=5\"\ntls_ca_file = \"/etc/ca.pem\"\nschema = \"kh2\"\nmax_connections = 4",
        )
        .unwrap();
        let StorageConfig::Postgres {
            connection,
            schema,
            max_connections,
            tls_ca_file,
            ..
        } = &c.storage
        else {
            panic!()
        };
        assert_eq!(
            connection.expose_secret(),
            "postgresql://kh@db.example.com/kh?connect_timeout=5"
        );
        assert_eq!(schema, "kh2");
        assert_eq!(*max_connections, 4);
        assert_eq!(tls_ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        for (storage, want) in [
            (
                "connection_url = \"host=db.example.com\"",
                "another machine",
            ),
            (
                "connection_url = \"host=db.example.com sslmode=prefer\"",
                "sslmode=prefer does not check",
            ),
            (
                "connection_url = \"host=localhost sslmode=verify-ca\"",
                "sslmode=verify-ca does not check",
            ),
            (
                "connection_url = \"host=localhost sslmode=bogus\"",
                "disable or verify-full",
            ),
            (
                "connection_url = \"host=localhost sslmode=verify-full\"",
                "tls_ca_file is required",
            ),
            (
                "connection_url = \"host=localhost\"\ntls_ca_file = \"/ca.pem\"",
                "does not use TLS",
            ),
            (
                "connection_url = \"host=localhost\"\nmax_connections = 0",
                "max_connections",
            ),
            (
                "connection_url = \"host=localhost\"\ncache_size_mb = 8",
                "no read cache",
            ),
            (
                "connection_url = \"host=localhost port=notaport\"",
                "not a PostgreSQL connection string",
            ),
        ] {
            let err = with(storage).unwrap_err().to_string();
            assert!(err.contains(want), "{storage}: {err}");
        }
        let err = Config::from_toml(&GOOD.replace(
            "[listener]",
            "connection_url = \"host=localhost\"\n[listener]",
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("for the postgresql backend"),
            "{err}"
        );
        let err = Config::from_toml(&format!(
            "{GOOD}\n[ha]\nenabled = true\napi_address = \"https://kh-0:8200\"\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("ha.enabled needs storage.backend"),
            "{err}"
        );
    }

    #[test]
    fn the_read_cache_is_sized_in_mib_and_can_be_turned_off() {
        let with = |line: &str| {
            Config::from_toml(&GOOD.replace("[listener]", &format!("{line}\n[listener]")))
        };
        let bytes = |c: Config| match c.storage {
            StorageConfig::Sqlite { cache_bytes, .. } => cache_bytes,
            _ => unreachable!(),
        };
        assert_eq!(bytes(with("cache_size_mb = 0").unwrap()), 0);
        assert_eq!(bytes(with("cache_size_mb = 256").unwrap()), 256 << 20);
        let err = with("cache_size_mb = 100000").unwrap_err().to_string();
        assert!(err.contains("storage.cache_size_mb 100000"), "{err}");
        let err = with("cache_size_mb = -1").unwrap_err().to_string();
        assert!(err.contains("cache_size_mb"), "{err}");
    }

    #[test]
    fn metrics_need_a_token_unless_the_telemetry_table_says_otherwise() {
        let c = Config::from_toml(GOOD).unwrap();
        assert!(!c.telemetry.unauthenticated_metrics_access);
        let open = format!("{GOOD}\n[telemetry]\nunauthenticated_metrics_access = true\n");
        assert!(
            Config::from_toml(&open)
                .unwrap()
                .telemetry
                .unauthenticated_metrics_access
        );
        let typo = format!("{GOOD}\n[telemetry]\nunauthenticated_metric_access = true\n");
        let err = Config::from_toml(&typo).unwrap_err().to_string();
        assert!(err.contains("unauthenticated_metric_access"), "{err}");
        // Dev mode answers without a token, as OpenBao's dev server does.
        let dev = Config::dev("127.0.0.1:0".parse().unwrap());
        assert!(dev.telemetry.unauthenticated_metrics_access);
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let err = Config::from_toml(&GOOD.replace("[listener]", "[listener]\ntls_disabel = true"))
            .unwrap_err();
        assert!(err.to_string().contains("tls_disabel"), "{err}");
        let err = Config::from_toml(&format!("colour = 1\n{GOOD}")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn the_listener_asks_for_client_certificates_unless_told_not_to() {
        let asks =
            |c: &Config| matches!(c.tls, TlsConfig::Files { client_certs, .. } if client_certs);
        assert!(asks(&Config::from_toml(GOOD).unwrap()));
        let off = GOOD.replace("[listener]", "[listener]\ntls_disable_client_certs = true");
        let c = Config::from_toml(&off).unwrap();
        assert!(matches!(
            c.tls,
            TlsConfig::Files {
                client_certs: false,
                ..
            }
        ));
    }

    #[test]
    fn tls_must_be_configured_or_explicitly_disabled() {
        let no_tls = GOOD.replace("tls_cert_file = \"/etc/keyhaven/tls.crt\"\n", "");
        assert!(Config::from_toml(&no_tls).is_err());
        let plain = "[storage]\nbackend = \"sqlite\"\npath = \"x.db\"\n[listener]\naddress = \"127.0.0.1:1\"\ntls_disable = true\n";
        assert_eq!(Config::from_toml(plain).unwrap().tls, TlsConfig::Disabled);
    }

    #[test]
    fn audit_tables_are_validated() {
        let with = |t: &str| Config::from_toml(&format!("{GOOD}\n[[audit]]\n{t}\n"));
        let c = with("type = \"file\"\npath = \"/var/log/keyhaven/audit.log\"").unwrap();
        assert_eq!(c.audit.len(), 1);
        assert_eq!(c.audit[0].name, "file");
        assert_eq!(c.audit[0].timeout, std::time::Duration::from_secs(5));
        assert!(!c.audit[0].fsync);
        let c = with("type = \"file\"\nname = \"a\"\npath = \"x.log\"\ntimeout = \"250ms\"\nfsync = true\ndescription = \"d\"").unwrap();
        assert_eq!(c.audit[0].timeout, std::time::Duration::from_millis(250));
        assert!(c.audit[0].fsync);
        for (bad, field) in [
            ("type = \"syslog\"\npath = \"x\"", "audit[0].type"),
            ("type = \"file\"", "audit[0].path"),
            (
                "type = \"file\"\npath = \"x\"\nname = \"a/b\"",
                "audit[0].name",
            ),
            (
                "type = \"file\"\npath = \"x\"\ntimeout = \"soon\"",
                "audit[0].timeout",
            ),
            (
                "type = \"file\"\npath = \"x\"\ntimeout = \"0s\"",
                "audit[0].timeout",
            ),
            (
                "type = \"file\"\npath = \"x\"\nfile_path = \"y\"",
                "file_path",
            ),
        ] {
            let err = with(bad).unwrap_err();
            assert!(err.to_string().contains(field), "{bad}: {err}");
        }
        let two = format!(
            "{GOOD}\n[[audit]]\ntype = \"file\"\npath = \"a\"\n[[audit]]\ntype = \"file\"\npath = \"b\"\n"
        );
        assert!(
            Config::from_toml(&two)
                .unwrap_err()
                .to_string()
                .contains("another audit device")
        );
    }

    #[test]
    fn batch_limits_have_defaults_and_are_validated() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.limits.max_batch_items, 10_000);
        assert_eq!(c.limits.max_batch_bytes, 16 * 1024 * 1024);
        let with = |t: &str| Config::from_toml(&format!("{GOOD}\n[limits]\n{t}\n"));
        let c = with("max_batch_items = 100\nmax_batch_bytes = 4096").unwrap();
        assert_eq!(
            c.limits,
            keyhaven_engine::Limits {
                max_batch_items: 100,
                max_batch_bytes: 4096
            }
        );
        for (bad, field) in [
            ("max_batch_items = 0", "limits.max_batch_items"),
            ("max_batch_bytes = 0", "limits.max_batch_bytes"),
            ("max_batch_items = -1", "max_batch_items"),
            ("max_batch_itmes = 5", "max_batch_itmes"),
        ] {
            let err = with(bad).unwrap_err();
            assert!(err.to_string().contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn listener_limits_have_safe_defaults() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(
            c.listener_limits,
            ListenerLimits {
                max_connections: None,
                read_header_timeout: Duration::from_secs(10),
                read_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(120),
                max_unauthenticated_request_size: 64 * 1024,
                max_request_body_memory: 256 * 1024 * 1024,
                json: crate::json_limits::JsonLimits {
                    max_array_elements: 10_000,
                    max_object_entries: 10_000,
                },
            }
        );
        assert_eq!(c.listener_limits, ListenerLimits::default());
        assert_eq!(
            Config::dev("127.0.0.1:1".parse().unwrap()).listener_limits,
            c.listener_limits
        );
    }

    #[test]
    fn listener_limits_are_read_and_checked_against_each_other() {
        let with = |lines: &str| {
            Config::from_toml(&GOOD.replace("[listener]", &format!("[listener]\n{lines}")))
        };
        let c = with(
            "max_connections = 100\nhttp_read_header_timeout = \"500ms\"\nhttp_read_timeout = \"1m\"\nhttp_idle_timeout = \"5m\"\nmax_unauthenticated_request_size = 2048\nmax_request_body_memory = 1073741824\nmax_json_array_element_count = 50\nmax_json_object_entry_count = 60",
        )
        .unwrap();
        assert_eq!(
            c.listener_limits,
            ListenerLimits {
                max_connections: Some(100),
                read_header_timeout: Duration::from_millis(500),
                read_timeout: Duration::from_secs(60),
                idle_timeout: Duration::from_secs(300),
                max_unauthenticated_request_size: 2048,
                max_request_body_memory: 1 << 30,
                json: crate::json_limits::JsonLimits {
                    max_array_elements: 50,
                    max_object_entries: 60,
                },
            }
        );
        // Defaults follow a smaller or larger max_request_size.
        let c = with("max_request_size = 4096").unwrap();
        assert_eq!(c.listener_limits.max_unauthenticated_request_size, 4096);
        let c = with("max_request_size = 536870912").unwrap();
        assert_eq!(c.listener_limits.max_request_body_memory, 512 << 20);
        for (bad, says) in [
            (
                "http_read_timeout = \"0s\"",
                "listener.http_read_timeout must be more than 0",
            ),
            ("http_idle_timeout = \"0\"", "listener.http_idle_timeout"),
            (
                "http_read_header_timeout = \"-1s\"",
                "listener.http_read_header_timeout",
            ),
            (
                "http_read_header_timeout = \"10\"",
                "listener.http_read_header_timeout",
            ),
            (
                "http_read_header_timeout = \"soon\"",
                "listener.http_read_header_timeout",
            ),
            ("http_read_timeout = \"2h\"", "at most 3600s"),
            ("http_read_timeout = 30", "http_read_timeout"),
            ("max_connections = 0", "listener.max_connections 0"),
            ("max_connections = 2000000", "listener.max_connections"),
            ("max_connections = -5", "max_connections"),
            ("max_unauthenticated_request_size = 100", "at least 1024"),
            (
                "max_request_size = 4096\nmax_unauthenticated_request_size = 8192",
                "larger than listener.max_request_size 4096",
            ),
            (
                "max_request_body_memory = 1048576",
                "smaller than listener.max_request_size",
            ),
            ("http_header_timeout = \"1s\"", "http_header_timeout"),
            (
                "max_json_array_element_count = 0",
                "listener.max_json_array_element_count must be at least 1",
            ),
            (
                "max_json_object_entry_count = 0",
                "listener.max_json_object_entry_count must be at least 1",
            ),
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_connection_cap_leaves_descriptors_for_everything_else() {
        assert_eq!(default_max_connections(None), 4096);
        assert_eq!(default_max_connections(Some(1 << 20)), 4096);
        assert_eq!(default_max_connections(Some(4160)), 4096);
        assert_eq!(default_max_connections(Some(1024)), 960);
        assert_eq!(default_max_connections(Some(256)), 192);
        assert_eq!(default_max_connections(Some(128)), 64);
        // Tiny limits: half of them, never zero.
        assert_eq!(default_max_connections(Some(100)), 50);
        assert_eq!(default_max_connections(Some(1)), 1);
        assert_eq!(default_max_connections(Some(0)), 1);
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = Config::from_toml(&GOOD.replace("sqlite", "etcd")).unwrap_err();
        assert!(err.to_string().contains("storage.backend"), "{err}");
        let err = Config::from_toml(&GOOD.replace("127.0.0.1:8200", "localhost")).unwrap_err();
        assert!(err.to_string().contains("listener.address"), "{err}");
    }
}
