//! Stand-alone `keyhaven scan` for benchmarks (`bench/scan.sh`); the product entry point
//! is `keyhaven scan` in the CLI crate.

use clap::Parser;

#[derive(Parser)]
#[command(name = "keyhaven-scan")]
struct Cmd {
    #[command(flatten)]
    args: keyhaven_scan::cli::ScanArgs,
}

fn main() -> std::process::ExitCode {
    keyhaven_scan::cli::run(Cmd::parse().args)
}
