//! Server configuration: a raw TOML layer that rejects unknown fields, validated into
//! [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default maximum request body: 32 MiB, as Vault.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 32 * 1024 * 1024;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: String,
    #[serde(default)]
    path: Option<PathBuf>,
    /// MiB of stored values kept in memory for reads; 0 turns the cache off.
    #[serde(default)]
    cache_size_mb: Option<u32>,
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
    max_request_size: Option<usize>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl StorageConfig {
    /// The name `sys/seal-status` reports.
    pub fn type_name(&self) -> &'static str {
        match self {
            StorageConfig::Sqlite { .. } => "sqlite",
            StorageConfig::Memory => "inmem",
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
    },
    /// Plain HTTP. Only for dev mode or an explicit `tls_disable = true`.
    Disabled,
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
    /// Listen address.
    pub address: SocketAddr,
    /// TLS.
    pub tls: TlsConfig,
    /// Maximum request body in bytes.
    pub max_request_size: usize,
    /// Log filter (tracing `EnvFilter` syntax).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Audit devices (`[[audit]]` tables); none by default.
    pub audit: Vec<crate::audit_file::FileDeviceConfig>,
    /// Bounds on what one request may ask of the engine (`[limits]`).
    pub limits: keyhaven_engine::Limits,
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
        let storage = match raw.storage.backend.as_str() {
            "sqlite" => StorageConfig::Sqlite {
                path: raw.storage.path.ok_or_else(|| {
                    ConfigError::Invalid("storage.path is required for the sqlite backend".into())
                })?,
                cache_bytes: cache_bytes(raw.storage.cache_size_mb)?,
            },
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown storage.backend {other:?}; supported: \"sqlite\""
                )));
            }
        };
        let address: SocketAddr = raw.listener.address.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "listener.address {:?} is not host:port",
                raw.listener.address
            ))
        })?;
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
            (false, Some(cert), Some(key)) => TlsConfig::Files { cert, key },
            (false, _, _) => {
                return Err(ConfigError::Invalid(
                    "listener needs tls_cert_file and tls_key_file, or tls_disable = true".into(),
                ));
            }
        };
        let max_request_size = raw
            .listener
            .max_request_size
            .unwrap_or(DEFAULT_MAX_REQUEST_SIZE);
        if max_request_size < 1024 {
            return Err(ConfigError::Invalid(
                "listener.max_request_size must be at least 1024 bytes".into(),
            ));
        }
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
        Ok(Config {
            storage,
            address,
            tls,
            max_request_size,
            log_level: raw.log.level.unwrap_or_else(|| "info".to_owned()),
            log_format,
            audit,
            limits,
        })
    }

    /// The configuration of `keyhaven server --dev`.
    pub fn dev(address: SocketAddr) -> Config {
        Config {
            storage: StorageConfig::Memory,
            address,
            tls: TlsConfig::Disabled,
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            audit: Vec::new(),
            limits: keyhaven_engine::Limits::default(),
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
    fn the_read_cache_is_sized_in_mib_and_can_be_turned_off() {
        let with = |line: &str| {
            Config::from_toml(&GOOD.replace("[listener]", &format!("{line}\n[listener]")))
        };
        let bytes = |c: Config| match c.storage {
            StorageConfig::Sqlite { cache_bytes, .. } => cache_bytes,
            StorageConfig::Memory => unreachable!(),
        };
        assert_eq!(bytes(with("cache_size_mb = 0").unwrap()), 0);
        assert_eq!(bytes(with("cache_size_mb = 256").unwrap()), 256 << 20);
        let err = with("cache_size_mb = 100000").unwrap_err().to_string();
        assert!(err.contains("storage.cache_size_mb 100000"), "{err}");
        let err = with("cache_size_mb = -1").unwrap_err().to_string();
        assert!(err.contains("cache_size_mb"), "{err}");
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
    fn bad_values_name_the_field() {
        let err = Config::from_toml(&GOOD.replace("sqlite", "etcd")).unwrap_err();
        assert!(err.to_string().contains("storage.backend"), "{err}");
        let err = Config::from_toml(&GOOD.replace("127.0.0.1:8200", "localhost")).unwrap_err();
        assert!(err.to_string().contains("listener.address"), "{err}");
    }
}
