//! keyhaven-scan: finds hardcoded secrets and risky Kubernetes manifests (under construction).

pub mod cli {
    //! The `keyhaven scan` command line.

    /// Arguments of `keyhaven scan`.
    #[derive(Debug, clap::Args)]
    pub struct ScanArgs {
        /// Files or directories to scan.
        pub paths: Vec<std::path::PathBuf>,
    }

    /// Run a scan and return the process exit code.
    pub fn run(_args: ScanArgs) -> std::process::ExitCode {
        std::process::ExitCode::FAILURE
    }
}
