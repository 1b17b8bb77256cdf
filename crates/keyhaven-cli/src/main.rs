//! The `keyhaven` binary.
//!
//! Exit codes of the commands that talk to a server (`operator`, `status`, `kv`) follow
//! Vault's CLI: 0 on success, 1 on a local or usage error, 2 when the server answered
//! with an error, could not be reached, or had nothing at the path (`status`: 0
//! unsealed, 2 sealed, 1 error). `scan` keeps its own convention, in which 1 means
//! "findings", so its usage errors keep clap's exit code 2.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's allocator: after a burst of writes, glibc's free lists
/// made every later request slower (a KV read took 1.5–2× the CPU), jemalloc's do not.
/// Tuned in `.cargo/config.toml`; see docs/design/0006-allocator.md.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod admission_cmd;
mod args;
mod audit_cmd;
mod csi_provider_cmd;
mod envelope_cmd;
mod fix;
mod generic_cmd;
mod kms_plugin_cmd;
mod kv_cmd;
mod lease_cmd;
mod log_batch;
mod login_cmd;
mod mounts_cmd;
mod operator_cmd;
mod output;
mod policy_cmd;
mod remote;
mod server_cmd;
mod status_cmd;
mod token_cmd;
mod token_file;
mod transit_cmd;

/// keyhaven: keys and secrets for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "keyhaven", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `keyhaven server` alone: see [`server_only`].
#[derive(Debug, Parser)]
#[command(name = "keyhaven-server", version, about = "Run the server", long_about = None)]
struct ServerCli {
    #[command(flatten)]
    args: server_cmd::ServerArgs,
}

/// `keyhaven scan`: the scanner's options and those of `--fix`.
#[derive(Debug, clap::Args)]
struct ScanCmd {
    #[command(flatten)]
    scan: keyhaven_scan::cli::ScanArgs,
    #[command(flatten)]
    fix: fix::FixArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Server(server_cmd::ServerArgs),
    /// Find hardcoded secrets and risky Kubernetes manifests; with --fix, move them into
    /// keyhaven.
    Scan(ScanCmd),
    /// Initialize, unseal, seal and rotate the server's keys.
    Operator(operator_cmd::OperatorArgs),
    /// Show the seal status of the server (exit 0 unsealed, 2 sealed, 1 error).
    Status(status_cmd::StatusArgs),
    /// Read and write secrets of a KV version 2 mount.
    Kv(kv_cmd::KvArgs),
    /// List audit devices and verify audit files.
    Audit(audit_cmd::AuditArgs),
    /// Authenticate and store the token for the other commands.
    Login(login_cmd::LoginArgs),
    /// Create, look up, renew and revoke tokens.
    Token(token_cmd::TokenArgs),
    /// Enable, list and disable auth methods.
    Auth(mounts_cmd::AuthArgs),
    /// Enable, list and disable secrets engines.
    Secrets(mounts_cmd::SecretsArgs),
    /// Read any API path.
    Read(generic_cmd::ReadArgs),
    /// Write `key=value` data to any API path.
    Write(generic_cmd::WriteArgs),
    /// List the keys under any API path.
    List(generic_cmd::ListArgs),
    /// Delete any API path.
    Delete(generic_cmd::DeleteArgs),
    /// Look up, renew and revoke leases (database credentials).
    Lease(lease_cmd::LeaseArgs),
    /// Write, read, list and delete ACL policies, and explain decisions.
    Policy(policy_cmd::PolicyArgs),
    /// Manage transit keys; encrypt, decrypt, sign, verify and HMAC with them.
    Transit(transit_cmd::TransitArgs),
    /// Serve the Kubernetes KMS v2 API on a unix socket with a transit key; `check` probes it.
    KmsPlugin(kms_plugin_cmd::KmsPluginArgs),
    /// Serve the Secrets Store CSI driver provider API on a unix socket.
    CsiProvider(csi_provider_cmd::CsiProviderArgs),
    /// Encrypt and decrypt files and streams offline with data keys wrapped by transit
    /// keys (exit codes: 3 corrupt, 4 not authorized, 5 server unreachable).
    Envelope(envelope_cmd::EnvelopeArgs),
    /// The validating admission webhook (`serve`) and its offline decision on a file
    /// (`review`: exit 0 allowed, 1 denied, 2 error).
    Admission(admission_cmd::AdmissionArgs),
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "server") {
        return server_only();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let result = match cli.command {
        Command::Server(args) => server_cmd::run(args),
        Command::Scan(args) if args.fix.fix => Ok(fix::run(&args.scan, &args.fix)),
        Command::Scan(args) => Ok(keyhaven_scan::cli::run(args.scan)),
        Command::Operator(args) => return operator_cmd::run(args),
        Command::Status(args) => return status_cmd::run(args),
        Command::Kv(args) => return kv_cmd::run(args),
        Command::Audit(args) => return audit_cmd::run(args),
        Command::Login(args) => return login_cmd::run(args),
        Command::Token(args) => return token_cmd::run(args),
        Command::Auth(args) => return mounts_cmd::run_auth(args),
        Command::Secrets(args) => return mounts_cmd::run_secrets(args),
        Command::Read(args) => return generic_cmd::run_read(args),
        Command::Write(args) => return generic_cmd::run_write(args),
        Command::List(args) => return generic_cmd::run_list(args),
        Command::Delete(args) => return generic_cmd::run_delete(args),
        Command::Lease(args) => return lease_cmd::run(args),
        Command::Policy(args) => return policy_cmd::run(args),
        Command::Transit(args) => return transit_cmd::run(args),
        Command::KmsPlugin(args) => return kms_plugin_cmd::run(args),
        Command::CsiProvider(args) => csi_provider_cmd::run(args),
        Command::Envelope(args) => return envelope_cmd::run(args),
        Command::Admission(args) => return admission_cmd::run(args),
    };
    exit_code(result)
}

/// The exit code of a command that reports failures as an error: the error on stderr
/// and 1.
#[allow(
    clippy::print_stderr,
    reason = "the binary reports fatal errors on stderr"
)]
fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Run `keyhaven server`, parsing only its own arguments. Building the parser of every
/// subcommand touches code the server never runs again, and each first touch of the
/// executable's code adds a page-cache folio to the resident set of a long-lived process.
fn server_only() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let bin = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "keyhaven".to_owned());
    let parsed = ServerCli::command()
        .bin_name(format!("{bin} server"))
        .try_get_matches_from(std::env::args_os().skip(1))
        .and_then(|m| ServerCli::from_arg_matches(&m));
    let args = match parsed {
        Ok(cli) => cli.args,
        Err(e) => return usage_error(&e),
    };
    exit_code(server_cmd::run(args))
}

/// Print a parse error (or the help/version clap was asked for) and pick the exit code:
/// 1 for usage errors, as Vault's CLI, except under `scan`, whose 1 means "findings".
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    // Printing can only fail when the output is closed; nothing is left to report to.
    let _ = e.print();
    let clap_code = u8::try_from(e.exit_code()).unwrap_or(1);
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::from(clap_code),
        _ if std::env::args_os()
            .nth(1)
            .is_some_and(|a| a == "scan" || a == "admission") =>
        {
            ExitCode::from(clap_code)
        }
        _ => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
        super::ServerCli::command().debug_assert();
    }

    /// `keyhaven server …` goes through its own parser; it must take exactly what the
    /// full command line takes, with the same results and the same refusals.
    #[test]
    fn the_server_parser_matches_the_full_command_line() {
        use clap::Parser as _;
        let cases: &[&[&str]] = &[
            &[],
            &["--dev"],
            &["--dev", "--dev-listen-address", "127.0.0.1:9"],
            &["--dev", "--dev-root-token-id", "t", "--log-level", "debug"],
            &["-c", "x.toml"],
            &["--config", "x.toml", "--log-level=warn"],
            &["--config", "x.toml", "--dev"],
            &["--dev-listen-address", "127.0.0.1:9"],
            &["--bogus"],
            &["--dev", "extra"],
        ];
        for case in cases {
            let full = super::Cli::try_parse_from(["keyhaven", "server"].iter().chain(*case))
                .map(|c| match c.command {
                    super::Command::Server(a) => format!("{a:?}"),
                    other => panic!("{other:?}"),
                })
                .map_err(|e| e.kind());
            let alone = super::ServerCli::try_parse_from(["server"].iter().chain(*case))
                .map(|c| format!("{:?}", c.args))
                .map_err(|e| e.kind());
            assert_eq!(full, alone, "{case:?}");
        }
        let help = super::ServerCli::command()
            .bin_name("keyhaven server")
            .render_help()
            .to_string();
        assert!(help.contains("Usage: keyhaven server [OPTIONS]"), "{help}");
    }
}
