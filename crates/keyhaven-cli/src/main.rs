//! The `keyhaven` binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod server_cmd;

/// keyhaven: keys and secrets for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "keyhaven", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Server(server_cmd::ServerArgs),
    /// Find hardcoded secrets and risky Kubernetes manifests.
    Scan(keyhaven_scan::cli::ScanArgs),
}

#[allow(clippy::print_stderr, reason = "the binary reports fatal errors on stderr")]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => server_cmd::run(args),
        Command::Scan(args) => Ok(keyhaven_scan::cli::run(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}
