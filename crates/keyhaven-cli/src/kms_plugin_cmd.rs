//! `keyhaven kms-plugin`: the Kubernetes KMS v2 plugin, and `keyhaven kms-plugin check`,
//! its liveness probe. See docs/kms-plugin.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use keyhaven_k8s::kms::{self, RawConfig};
use keyhaven_k8s::proto::kms::key_management_service_client::KeyManagementServiceClient;
use keyhaven_k8s::proto::kms::{DecryptRequest, EncryptRequest, StatusRequest};

/// Arguments of `keyhaven kms-plugin`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct KmsPluginArgs {
    #[command(subcommand)]
    check: Option<KmsPluginCommand>,
    /// Unix socket to serve on (created 0600; a stale one is replaced).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// keyhaven's address, e.g. https://keyhaven.example:8200.
    #[arg(long, value_name = "URL")]
    address: Option<String>,
    /// The transit key, as MOUNT/NAME (e.g. transit/k8s-etcd).
    #[arg(long, value_name = "MOUNT/NAME")]
    key: Option<String>,
    /// File holding the token (re-read on every refresh).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["login_role", "jwt_file"])]
    token_file: Option<PathBuf>,
    /// Role to log in with at auth/<auth-mount>/login.
    #[arg(long, value_name = "ROLE", requires = "jwt_file")]
    login_role: Option<String>,
    /// File holding the JWT to log in with (re-read at every login).
    #[arg(long, value_name = "FILE", requires = "login_role")]
    jwt_file: Option<PathBuf>,
    /// Auth mount to log in at [default: kubernetes].
    #[arg(long, value_name = "MOUNT", requires = "login_role")]
    auth_mount: Option<String>,
    /// PEM file of the CA certificates to trust for keyhaven instead of the system's.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// TOML configuration file (unknown keys refused); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `keyhaven::kms=debug`.
    #[arg(
        long,
        value_name = "FILTER",
        env = "KEYHAVEN_LOG",
        default_value = "info"
    )]
    log_level: String,
}

#[derive(Debug, clap::Subcommand)]
enum KmsPluginCommand {
    /// Dial the plugin's socket and make a Status call (exit 0 when it answers as a KMS
    /// v2 plugin, 1 when not, 2 with --require-healthy when it reports a problem).
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The plugin's socket.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Exit 2 unless healthz is "ok" (for a readiness probe; a liveness probe should not
    /// use it: restarting the plugin during a keyhaven outage loses its seed cache).
    #[arg(long)]
    require_healthy: bool,
    /// Also wrap and unwrap a probe seed through keyhaven (Encrypt then Decrypt).
    #[arg(long)]
    round_trip: bool,
    /// Give up after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
}

/// Runs the command.
pub fn run(args: KmsPluginArgs) -> ExitCode {
    match args.check {
        Some(KmsPluginCommand::Check(check_args)) => check(&check_args),
        None => crate::exit_code(serve(args)),
    }
}

fn serve(args: KmsPluginArgs) -> anyhow::Result<ExitCode> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log_level).context("invalid log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    let file = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    let flags = RawConfig {
        socket: args.socket,
        address: args.address,
        key: args.key,
        ca_cert: args.ca_cert,
        token_file: args.token_file,
        login_role: args.login_role,
        jwt_file: args.jwt_file,
        auth_mount: args.auth_mount,
        ..RawConfig::default()
    };
    let config = file.overlay(flags).validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(kms::serve(config, keyhaven_k8s::socket::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// A fixed probe seed: not secret, 32 bytes as the apiserver's.
const PROBE: &[u8; 32] = b"keyhaven kms-plugin check probe.";

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the probe reports on the terminal"
)]
fn check(args: &CheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let outcome = runtime.block_on(async {
        tokio::time::timeout(timeout, async {
            let channel = keyhaven_k8s::socket::connect(&args.socket)
                .await
                .map_err(|e| format!("cannot dial {}: {e}", args.socket.display()))?;
            let mut client = KeyManagementServiceClient::new(channel);
            let status = client
                .status(StatusRequest {})
                .await
                .map_err(|e| format!("Status failed: {}: {}", e.code(), e.message()))?
                .into_inner();
            let mut round_trip = None;
            if args.round_trip {
                let result = async {
                    let enc = client
                        .encrypt(EncryptRequest {
                            plaintext: PROBE.to_vec(),
                            uid: "keyhaven-kms-plugin-check".into(),
                        })
                        .await
                        .map_err(|e| format!("Encrypt failed: {}: {}", e.code(), e.message()))?
                        .into_inner();
                    let dec = client
                        .decrypt(DecryptRequest {
                            ciphertext: enc.ciphertext,
                            uid: "keyhaven-kms-plugin-check".into(),
                            key_id: enc.key_id,
                            annotations: enc.annotations,
                        })
                        .await
                        .map_err(|e| format!("Decrypt failed: {}: {}", e.code(), e.message()))?
                        .into_inner();
                    if dec.plaintext.as_slice() == PROBE.as_slice() {
                        Ok(())
                    } else {
                        Err("Decrypt returned another seed than was encrypted".to_owned())
                    }
                }
                .await;
                round_trip = Some(result);
            }
            Ok::<_, String>((status, round_trip))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", args.timeout_ms)))
    });
    match outcome {
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
        Ok((status, round_trip)) => {
            println!(
                "version: {}\nhealthz: {}\nkey_id: {}",
                status.version, status.healthz, status.key_id
            );
            if status.version != kms::API_VERSION {
                eprintln!(
                    "Error: the socket answers version {:?}, not v2",
                    status.version
                );
                return ExitCode::from(1);
            }
            if let Some(result) = round_trip {
                match result {
                    Ok(()) => println!("round trip: ok"),
                    Err(e) => {
                        eprintln!("Error: round trip: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            if args.require_healthy && status.healthz != "ok" {
                eprintln!("Error: the plugin is not healthy: {}", status.healthz);
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
    }
}
