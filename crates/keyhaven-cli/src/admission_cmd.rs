//! `keyhaven admission`: the validating admission webhook (`serve`) and the offline
//! decision on a file (`review`); see `keyhaven_k8s::admission` and docs/admission.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use keyhaven_k8s::admission::server::{self, Certificates, ServeOptions, Webhook};
use keyhaven_k8s::admission::{Admission, Policy};

/// Arguments of `keyhaven admission`.
#[derive(Debug, clap::Args)]
pub struct AdmissionArgs {
    #[command(subcommand)]
    command: AdmissionCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AdmissionCommand {
    /// Serve the ValidatingAdmissionWebhook over TLS: POST /validate, GET /healthz, GET /metrics.
    Serve(ServeArgs),
    /// Print the AdmissionReview response for FILE, an AdmissionReview or a plain manifest
    /// (exit 0 allowed, 1 denied, 2 error).
    Review(ReviewArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The address to listen on, e.g. 0.0.0.0:8443.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The certificate chain (PEM); reloaded when the file changes.
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// The private key (PEM, not readable by others); reloaded when the file changes.
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
    /// The policy file (TOML); without it, the default policy.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Open connections at most.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,
    /// Seconds between checks of the certificate files for changes.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    reload_interval: u64,
    /// Log filter.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log_level: String,
    /// `text` or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: String,
    /// Worker threads.
    #[arg(long, value_name = "N", default_value_t = 2)]
    threads: usize,
}

#[derive(Debug, clap::Args)]
struct ReviewArgs {
    /// An AdmissionReview (JSON) or a manifest (YAML or JSON); `-` for stdin.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The policy file (TOML); without it, the default policy.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: AdmissionArgs) -> ExitCode {
    match args.command {
        AdmissionCommand::Serve(a) => crate::exit_code(serve(a)),
        AdmissionCommand::Review(a) => review(&a),
    }
}

fn load_policy(path: Option<&Path>) -> anyhow::Result<Policy> {
    let Some(path) = path else {
        return Ok(Policy::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the admission policy {}", path.display()))?;
    Ok(Policy::from_toml(&path.display().to_string(), &text)?)
}

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "review prints its decision and errors on the terminal"
)]
fn review(args: &ReviewArgs) -> ExitCode {
    let result = (|| -> anyhow::Result<Vec<serde_json::Value>> {
        let policy = load_policy(args.policy.as_deref())?;
        let admission = Admission::new(policy).context("cannot load the secret rules")?;
        let data = if args.file.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(
                    std::io::stdin(),
                    (keyhaven_k8s::admission::MAX_REVIEW_BYTES + 1) as u64,
                ),
                &mut buf,
            )
            .context("cannot read stdin")?;
            buf
        } else {
            let meta = std::fs::metadata(&args.file)
                .with_context(|| format!("cannot read {}", args.file.display()))?;
            if meta.len() > keyhaven_k8s::admission::MAX_REVIEW_BYTES as u64 {
                anyhow::bail!(
                    "{}: {}",
                    args.file.display(),
                    keyhaven_k8s::admission::ReviewError::TooLarge(
                        usize::try_from(meta.len()).unwrap_or(usize::MAX)
                    )
                );
            }
            std::fs::read(&args.file)
                .with_context(|| format!("cannot read {}", args.file.display()))?
        };
        let decisions = admission
            .review_file(&data)
            .with_context(|| args.file.display().to_string())?;
        let mut denied = false;
        let out: Vec<serde_json::Value> = decisions
            .iter()
            .map(|d| {
                denied |= !d.allowed;
                d.to_review()
            })
            .collect();
        if denied {
            anyhow::bail!(DeniedMarker(out));
        }
        Ok(out)
    })();
    let print = |reviews: &[serde_json::Value]| {
        for r in reviews {
            println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        }
    };
    match result {
        Ok(reviews) => {
            print(&reviews);
            ExitCode::SUCCESS
        }
        Err(e) => match e.downcast::<DeniedMarker>() {
            Ok(DeniedMarker(reviews)) => {
                print(&reviews);
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("Error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

/// Carries the responses of a denied review out of the closure.
#[derive(Debug)]
struct DeniedMarker(Vec<serde_json::Value>);

impl std::fmt::Display for DeniedMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("denied")
    }
}

impl std::error::Error for DeniedMarker {}

/// jemalloc's settings for the webhook (design note 0006): arenas enough for one per
/// worker thread and jemalloc's own per-thread cache size. A review allocates and frees
/// thousands of small objects (its decoded JSON); with the binary's compiled-in settings
/// (one arena, 32 cached objects per size class, for an idle server's memory) the worker
/// threads spend a third of the webhook's CPU flushing their caches into the one arena.
const WEBHOOK_MALLOC_CONF: &str = "narenas:4,tcache_nslots_small_max:200";

/// The variable jemalloc reads its settings from (with the symbol prefix of the build).
const MALLOC_CONF_VAR: &str = "_RJEM_MALLOC_CONF";

/// Replace this process with the same binary and arguments, with [`WEBHOOK_MALLOC_CONF`]
/// in the environment, unless the environment already sets [`MALLOC_CONF_VAR`] (an
/// operator's choice is kept as is). jemalloc reads its settings once, before `main`,
/// so they cannot be changed later in the process. `exec` keeps the process id, its open
/// files and its parent. Returns only when there is nothing to do, or when `exec` failed
/// (the error, to be logged; the webhook then runs with the compiled-in settings).
fn exec_with_webhook_allocator() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt as _;
    if std::env::var_os(MALLOC_CONF_VAR).is_some() {
        return None;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next()?;
    // The running executable itself, even if its path was replaced since it started.
    Some(
        std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env(MALLOC_CONF_VAR, WEBHOOK_MALLOC_CONF)
            .exec(),
    )
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let exec_error = exec_with_webhook_allocator();
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log_level).context("invalid log filter")?;
    // A line per decision: written in batches (see `log_batch`), not one `write` each.
    let (writer, _flush) = crate::log_batch::Batched::new(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let installed = match args.log_format.as_str() {
        "json" => builder.json().try_init(),
        "text" => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        other => anyhow::bail!("unknown log format `{other}` (text or json)"),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    if let Some(e) = exec_error {
        tracing::warn!(error = %e, "cannot restart with the webhook's allocator settings; running with the built-in ones (set {MALLOC_CONF_VAR}={WEBHOOK_MALLOC_CONF} to choose them)");
    }
    let policy = load_policy(args.policy.as_deref())?;
    let admission = Admission::new(policy).context("cannot load the secret rules")?;
    let certificates = Arc::new(Certificates::load(&args.tls_cert, &args.tls_key)?);
    let mut options = ServeOptions::new(args.tls_cert, args.tls_key);
    options.max_connections = args.max_connections.max(1);
    options.reload_every = std::time::Duration::from_secs(args.reload_interval.max(1));
    let webhook = Arc::new(Webhook::new(admission, options));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener
            .local_addr()
            .context("cannot read the listen address")?;
        tracing::info!(%addr, "admission webhook listening");
        server::serve(
            listener,
            webhook,
            certificates,
            keyhaven_k8s::socket::shutdown_signal(),
        )
        .await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
