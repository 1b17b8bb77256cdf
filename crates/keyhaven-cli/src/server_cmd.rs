//! `keyhaven server`: run the server.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use keyhaven_server::{Config, DevOptions, LogFormat, TlsConfig};
use secrecy::{ExposeSecret, SecretString};

/// Arguments of `keyhaven server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Path to the TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Development mode: in memory, unsealed, root token printed, loopback only, plain HTTP.
    #[arg(long)]
    pub dev: bool,
    /// Dev mode listen address (loopback only).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8200",
        requires = "dev"
    )]
    pub dev_listen_address: SocketAddr,
    /// Dev mode root token id instead of a generated one.
    #[arg(
        long,
        value_name = "TOKEN",
        requires = "dev",
        env = "KEYHAVEN_DEV_ROOT_TOKEN_ID",
        hide_env_values = true
    )]
    pub dev_root_token_id: Option<String>,
    /// Log filter, e.g. `info` or `keyhaven=debug` (overrides the config file).
    #[arg(long, value_name = "FILTER", env = "KEYHAVEN_LOG")]
    pub log_level: Option<String>,
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    // tokio-postgres logs every statement it runs at debug level; those of the database
    // engine carry passwords (`ALTER ROLE … PASSWORD '…'`). Capped whatever the filter.
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .context("invalid log filter")?
        .add_directive(
            "tokio_postgres=info"
                .parse()
                .context("invalid built-in log directive")?,
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!(target: "keyhaven::server", "shutdown requested; finishing in-flight requests");
}

/// Keep key material out of core dumps: no core file, and the process is not dumpable
/// (which also blocks ptrace attach by other unprivileged processes).
fn harden_process() {
    #[cfg(target_os = "linux")]
    {
        let no_core = rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Core, no_core) {
            tracing::warn!(target: "keyhaven::server", error = %e, "cannot disable core dumps");
        }
        if let Err(e) =
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        {
            tracing::warn!(target: "keyhaven::server", error = %e, "cannot mark the process non-dumpable");
        }
    }
}

/// The smallest `RLIMIT_MEMLOCK` the server starts with when it locks its memory and
/// lacks `CAP_IPC_LOCK`.
const MIN_MEMLOCK_BYTES: u64 = 256 * 1024 * 1024;

/// Lock the process's pages in memory so key material is never written to swap. Pages
/// are locked as they are first touched (`MCL_ONFAULT`), so reserved but unused memory
/// (thread stacks, allocator arenas) costs nothing. A limit too low for it is a start-up
/// error that says what to change.
fn lock_memory(disable_mlock: bool) -> anyhow::Result<()> {
    if disable_mlock {
        tracing::info!(target: "keyhaven::server", "memory locking is disabled (disable_mlock): key material may be swapped to disk");
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        use rustix::mm::{MlockAllFlags, mlockall};
        let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
        let shown = limit.map_or_else(|| "unlimited".to_owned(), |b| format!("{b} bytes"));
        let advice = "Raise it (systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited; \
                      or grant CAP_IPC_LOCK), or set disable_mlock = true in the config to run \
                      without locked memory";
        // With every future page locked, an allocation past the limit fails later and
        // anywhere: refuse a limit too low for the server now instead (CAP_IPC_LOCK
        // lifts the limit).
        let has_ipc_lock = rustix::thread::capabilities(None).is_ok_and(|c| {
            c.effective
                .contains(rustix::thread::CapabilitySet::IPC_LOCK)
        });
        if let Some(bytes) = limit
            && bytes < MIN_MEMLOCK_BYTES
            && !has_ipc_lock
        {
            bail!(
                "RLIMIT_MEMLOCK is {shown}, too low to lock the server's memory against \
                 swapping (at least {} MiB is needed). {advice}",
                MIN_MEMLOCK_BYTES / (1024 * 1024)
            );
        }
        let flags = MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT;
        if let Err(e) = mlockall(flags) {
            bail!("cannot lock memory against swapping ({e}); RLIMIT_MEMLOCK is {shown}. {advice}");
        }
        tracing::info!(target: "keyhaven::server", "memory locked against swapping");
    }
    Ok(())
}

/// Run `keyhaven server`.
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let (mut config, dev) = match (&args.config, args.dev) {
        (_, true) => (
            Config::dev(args.dev_listen_address),
            Some(DevOptions {
                root_token_id: args.dev_root_token_id.clone().map(SecretString::from),
            }),
        ),
        (Some(path), false) => (Config::from_file(path)?, None),
        (None, false) => {
            bail!("keyhaven server needs --config FILE, or --dev for a development server")
        }
    };
    if let Some(level) = &args.log_level {
        config.log_level = level.clone();
    }
    init_logging(&config.log_level, config.log_format)?;
    harden_process();
    lock_memory(config.disable_mlock)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let (server, creds) = keyhaven_server::build(&config, dev).await?;
        let addr = server.local_addr();
        let scheme = if server.is_tls() { "https" } else { "http" };
        if let Some(creds) = creds {
            print_dev_banner(scheme, addr, &creds)?;
        }
        if config.tls == TlsConfig::Disabled {
            tracing::warn!(
                target: "keyhaven::server",
                "TLS IS DISABLED: tokens and secrets cross the network in clear text. Use this only for development or behind a TLS-terminating proxy on the same host."
            );
        }
        tracing::info!(target: "keyhaven::server", address = %addr, scheme, storage = config.storage.type_name(), version = keyhaven_server::http::VERSION, "listening");
        server.serve(shutdown_signal()).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[allow(
    clippy::print_stdout,
    reason = "dev mode prints its credentials for the operator, as Vault does"
)]
fn print_dev_banner(
    scheme: &str,
    addr: SocketAddr,
    creds: &keyhaven_server::DevCredentials,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "WARNING! dev mode is enabled! In this mode, keyhaven runs entirely in memory,\n\
         serves plain HTTP on loopback and starts unsealed with a single unseal key.\n\
         Everything is lost when it stops. Never use dev mode in production.\n\n\
         You may need to set the following environment variables:\n\n    \
         $ export KEYHAVEN_ADDR='{scheme}://{addr}'\n    $ export VAULT_ADDR='{scheme}://{addr}'\n\n\
         The unseal key and root token are displayed below in case you want to\n\
         seal/unseal or re-authenticate.\n\n\
         Api Address: {scheme}://{addr}\n\
         Unseal Key: {}\n\
         Root Token: {}\n",
        creds.unseal_key.expose_secret(),
        creds.root_token.expose_secret(),
    )?;
    out.flush()?;
    Ok(())
}
