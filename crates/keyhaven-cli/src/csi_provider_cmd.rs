//! `keyhaven csi-provider`: the Secrets Store CSI driver provider (see
//! `keyhaven_k8s::csi` and docs/kubernetes.md).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use keyhaven_k8s::csi::{self, Provider, ProviderConfig, VersionKey};
use serde::Deserialize;

/// Arguments of `keyhaven csi-provider`.
#[derive(Debug, clap::Args)]
pub struct CsiProviderArgs {
    /// The unix socket to serve on [default: /var/run/secrets-store-csi-providers/keyhaven.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The keyhaven server's address, e.g. https://keyhaven.keyhaven.svc:8200.
    #[arg(long, value_name = "URL")]
    pub address: Option<String>,
    /// A PEM file of CA certificates to trust for the server.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// A TOML configuration file (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// The server's address.
    address: Option<String>,
    /// The server's CA file.
    ca_cert: Option<PathBuf>,
    /// The socket.
    socket: Option<PathBuf>,
    /// Other servers a SecretProviderClass may name in `vaultAddress`.
    #[serde(default)]
    allowed_addresses: Vec<String>,
    /// The default token audience.
    audience: Option<String>,
    /// The default kubernetes auth mount.
    auth_mount: Option<String>,
    /// A file of at least 32 secret bytes keying object versions (mode 0600 or 0400).
    version_key_file: Option<PathBuf>,
    /// The largest mount response.
    max_response_bytes: Option<usize>,
    /// How many pod tokens are cached.
    max_cached_tokens: Option<usize>,
    /// Timeout of each call to the server, in seconds.
    request_timeout_seconds: Option<u64>,
    /// Log filter.
    log_level: Option<String>,
    /// `text` or `json`.
    log_format: Option<String>,
}

fn read_version_key(path: &Path) -> anyhow::Result<VersionKey> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the version key file {}", path.display()))?;
    // A Kubernetes Secret volume shows its files through symlinks with the mode set by
    // defaultMode; the target's mode is what counts.
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the version key file {} has mode {mode:o}: readable by others; make it 0600 or 0400 (defaultMode: 0400)",
            path.display()
        );
    }
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read the version key file {}", path.display()))?,
    );
    Ok(VersionKey::from_bytes(&bytes)?)
}

fn init_logging(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("invalid log filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Run `keyhaven csi-provider`.
pub fn run(args: CsiProviderArgs) -> anyhow::Result<ExitCode> {
    let file: FileConfig = match &args.config {
        None => FileConfig::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("invalid configuration {}", p.display()))?
        }
    };
    let json = match file.log_format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => bail!("log_format {other:?} is not text or json"),
    };
    let filter = std::env::var("KEYHAVEN_LOG")
        .ok()
        .or(file.log_level.clone())
        .unwrap_or_else(|| "info".to_owned());
    init_logging(&filter, json)?;

    let address = args
        .address
        .or(file.address)
        .context("no server address: give --address URL or `address` in the configuration file")?;
    let version_key = match &file.version_key_file {
        Some(p) => read_version_key(p)?,
        None => VersionKey::random()?,
    };
    let config = ProviderConfig {
        address,
        ca_cert: args.ca_cert.or(file.ca_cert),
        allowed_addresses: file.allowed_addresses,
        audience: file
            .audience
            .unwrap_or_else(|| csi::DEFAULT_AUDIENCE.to_owned()),
        auth_mount: file
            .auth_mount
            .unwrap_or_else(|| csi::DEFAULT_AUTH_MOUNT.to_owned()),
        version_key,
        max_response_bytes: file.max_response_bytes.unwrap_or(csi::DEFAULT_MAX_RESPONSE),
        max_cached_tokens: file.max_cached_tokens.unwrap_or(10_000),
        request_timeout: Duration::from_secs(file.request_timeout_seconds.unwrap_or(10)),
    };
    let socket = args
        .socket
        .or(file.socket)
        .unwrap_or_else(|| PathBuf::from(csi::DEFAULT_SOCKET));
    let provider = Arc::new(Provider::new(config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(csi::serve(
        provider,
        &socket,
        keyhaven_k8s::socket::shutdown_signal(),
    ))?;
    tracing::info!(target: "keyhaven::csi", "stopped");
    Ok(ExitCode::SUCCESS)
}
