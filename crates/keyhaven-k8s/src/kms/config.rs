//! The plugin's configuration: a TOML file (unknown fields refused) and flags, flags
//! winning, validated into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::KmsError;
use super::plugin::{Auth, Settings};

/// Default `refresh_interval_ms`: the apiserver polls `Status` every 60 s, so a rotation
/// shows in the first poll that follows it by more than this.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);
/// Default `request_timeout_ms`: under the apiserver's default 3 s call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(2500);
/// Default `cache_size`: seeds (about 100 bytes each with the ciphertext).
pub const DEFAULT_CACHE: usize = 10_000;

/// The file's (and the flags') settings before validation. Every field is optional: a
/// flag fills what the file leaves out.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Unix socket to serve on (`--socket`).
    pub socket: Option<PathBuf>,
    /// keyhaven's URL (`--address`).
    pub address: Option<String>,
    /// `MOUNT/NAME` of the transit key (`--key`).
    pub key: Option<String>,
    /// CA certificates for keyhaven's TLS (`--ca-cert`).
    pub ca_cert: Option<PathBuf>,
    /// Token file (`--token-file`).
    pub token_file: Option<PathBuf>,
    /// Role to log in with (`--login-role`).
    pub login_role: Option<String>,
    /// JWT file to log in with (`--jwt-file`).
    pub jwt_file: Option<PathBuf>,
    /// Auth mount to log in at (`--auth-mount`, default `kubernetes`).
    pub auth_mount: Option<String>,
    /// How often to re-read the key and renew the session, in milliseconds.
    pub refresh_interval_ms: Option<u64>,
    /// Timeout of each request to keyhaven, in milliseconds.
    pub request_timeout_ms: Option<u64>,
    /// Seeds kept in memory (0: none; the plugin then cannot decrypt during an outage).
    pub cache_size: Option<usize>,
    /// Loopback address for `GET /metrics` (off when absent).
    pub metrics_address: Option<SocketAddr>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The socket.
    pub socket: PathBuf,
    /// What the plugin talks to and how.
    pub settings: Settings,
    /// The metrics listener, if any.
    pub metrics_address: Option<SocketAddr>,
}

fn invalid(reason: impl Into<String>) -> KmsError {
    KmsError::Config {
        reason: reason.into(),
    }
}

impl RawConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<RawConfig, KmsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| invalid(format!("{}: {}", path.display(), e.message())))
    }

    /// `self` with every field `over` sets replaced. An authentication method in `over`
    /// (a token file, or a login) replaces the one in `self` whole.
    pub fn overlay(mut self, over: RawConfig) -> RawConfig {
        if over.token_file.is_some() {
            self.login_role = None;
            self.jwt_file = None;
            self.auth_mount = None;
        }
        if over.login_role.is_some() || over.jwt_file.is_some() {
            self.token_file = None;
        }
        RawConfig {
            socket: over.socket.or(self.socket),
            address: over.address.or(self.address),
            key: over.key.or(self.key),
            ca_cert: over.ca_cert.or(self.ca_cert),
            token_file: over.token_file.or(self.token_file),
            login_role: over.login_role.or(self.login_role),
            jwt_file: over.jwt_file.or(self.jwt_file),
            auth_mount: over.auth_mount.or(self.auth_mount),
            refresh_interval_ms: over.refresh_interval_ms.or(self.refresh_interval_ms),
            request_timeout_ms: over.request_timeout_ms.or(self.request_timeout_ms),
            cache_size: over.cache_size.or(self.cache_size),
            metrics_address: over.metrics_address.or(self.metrics_address),
        }
    }

    /// Validates into a [`Config`].
    pub fn validate(self) -> Result<Config, KmsError> {
        let socket = self
            .socket
            .ok_or_else(|| invalid("--socket (or socket in the config file) is required"))?;
        let address = self
            .address
            .ok_or_else(|| invalid("--address (or address in the config file) is required"))?;
        let key = self
            .key
            .ok_or_else(|| invalid("--key MOUNT/NAME (or key in the config file) is required"))?;
        let (mount, name) = key
            .trim_matches('/')
            .rsplit_once('/')
            .filter(|(m, n)| !m.is_empty() && !n.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "--key {key:?} is not MOUNT/NAME, e.g. transit/k8s-etcd"
                ))
            })?;
        if key.contains(':') {
            return Err(invalid(format!("--key {key:?} must not contain ':'")));
        }
        let auth = match (self.token_file, self.login_role, self.jwt_file) {
            (Some(file), None, None) => {
                if self.auth_mount.is_some() {
                    return Err(invalid(
                        "--auth-mount goes with --login-role, not --token-file",
                    ));
                }
                Auth::TokenFile(file)
            }
            (None, Some(role), Some(jwt_file)) => Auth::Login {
                mount: self
                    .auth_mount
                    .unwrap_or_else(|| "kubernetes".to_owned())
                    .trim_matches('/')
                    .to_owned(),
                role,
                jwt_file,
            },
            (None, Some(_), None) => return Err(invalid("--login-role needs --jwt-file")),
            (None, None, Some(_)) => return Err(invalid("--jwt-file needs --login-role")),
            (None, None, None) => {
                return Err(invalid(
                    "give --token-file FILE, or --login-role ROLE with --jwt-file FILE",
                ));
            }
            (Some(_), _, _) => {
                return Err(invalid(
                    "--token-file and --login-role/--jwt-file exclude each other",
                ));
            }
        };
        let refresh = Duration::from_millis(
            self.refresh_interval_ms
                .unwrap_or(DEFAULT_REFRESH.as_millis() as u64),
        );
        if refresh < Duration::from_millis(50) || refresh > Duration::from_secs(50) {
            return Err(invalid(
                "refresh_interval_ms must be between 50 and 50000 (the apiserver polls every 60 s)",
            ));
        }
        let timeout = Duration::from_millis(
            self.request_timeout_ms
                .unwrap_or(DEFAULT_TIMEOUT.as_millis() as u64),
        );
        if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(60) {
            return Err(invalid("request_timeout_ms must be between 10 and 60000"));
        }
        if let Some(addr) = &self.metrics_address
            && !super::metrics::is_loopback(addr)
        {
            return Err(invalid(format!(
                "metrics_address {addr} is not a loopback address"
            )));
        }
        Ok(Config {
            socket,
            settings: Settings {
                address,
                ca_cert: self.ca_cert,
                mount: mount.to_owned(),
                key: name.to_owned(),
                auth,
                refresh_interval: refresh,
                request_timeout: timeout,
                cache_size: self.cache_size.unwrap_or(DEFAULT_CACHE),
            },
            metrics_address: self.metrics_address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> RawConfig {
        RawConfig {
            socket: Some("/run/kms.sock".into()),
            address: Some("https://k:8200".into()),
            key: Some("transit/k8s".into()),
            token_file: Some("/etc/token".into()),
            ..RawConfig::default()
        }
    }

    #[test]
    fn unknown_fields_are_refused_and_flags_override_the_file() {
        let err = toml::from_str::<RawConfig>("cache_sise = 3\n").unwrap_err();
        assert!(
            err.message().contains("unknown field `cache_sise`"),
            "{err}"
        );
        let file: RawConfig =
            toml::from_str("key = \"transit/old\"\ncache_size = 7\nrefresh_interval_ms = 200\n")
                .unwrap();
        let config = file.overlay(flags()).validate().unwrap();
        assert_eq!(config.settings.key, "k8s");
        assert_eq!(config.settings.mount, "transit");
        assert_eq!(config.settings.cache_size, 7);
        assert_eq!(config.settings.refresh_interval, Duration::from_millis(200));

        // A login given by flags replaces the file's token file, and the other way round.
        let file: RawConfig = toml::from_str("token_file = \"/etc/token\"\n").unwrap();
        let mut login = flags();
        login.token_file = None;
        login.login_role = Some("kms".into());
        login.jwt_file = Some("/var/run/jwt".into());
        let config = file.overlay(login).validate().unwrap();
        assert!(matches!(config.settings.auth, Auth::Login { .. }));
        let file: RawConfig = toml::from_str("login_role = \"kms\"\njwt_file = \"/j\"\n").unwrap();
        let config = file.overlay(flags()).validate().unwrap();
        assert_eq!(config.settings.auth, Auth::TokenFile("/etc/token".into()));
    }

    #[test]
    fn bad_combinations_are_refused_with_the_reason() {
        let mut both = flags();
        both.login_role = Some("r".into());
        assert!(
            both.validate()
                .unwrap_err()
                .to_string()
                .contains("exclude each other")
        );
        let mut login = flags();
        login.token_file = None;
        login.login_role = Some("r".into());
        assert!(
            login
                .clone()
                .validate()
                .unwrap_err()
                .to_string()
                .contains("needs --jwt-file")
        );
        login.jwt_file = Some("/var/run/secrets/token".into());
        let config = login.validate().unwrap();
        assert!(
            matches!(config.settings.auth, Auth::Login { ref mount, .. } if mount == "kubernetes")
        );
        let mut key = flags();
        key.key = Some("k8s".into());
        assert!(
            key.validate()
                .unwrap_err()
                .to_string()
                .contains("not MOUNT/NAME")
        );
        let mut metrics = flags();
        metrics.metrics_address = Some("0.0.0.0:9464".parse().unwrap());
        assert!(
            metrics
                .validate()
                .unwrap_err()
                .to_string()
                .contains("not a loopback")
        );
    }
}
