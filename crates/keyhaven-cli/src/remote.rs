//! What every command that talks to a server shares: connection options, the output
//! format, the failure type and its exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use keyhaven_client::{Client, ClientConfig, ClientError, DEFAULT_TIMEOUT};
use secrecy::{ExposeSecret as _, SecretString};

use crate::{output, token_file};

/// Default server address, as Vault's.
pub const DEFAULT_ADDRESS: &str = "https://127.0.0.1:8200";

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Key/value tables, as Vault's CLI prints them.
    Table,
    /// The JSON the server answered.
    Json,
}

/// Connection and output options of the commands that talk to a server. They are
/// accepted anywhere after the command group (`keyhaven kv --address … get …` or
/// `keyhaven kv get … --address …`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Server address [env: KEYHAVEN_ADDR, then VAULT_ADDR] [default: https://127.0.0.1:8200].
    #[arg(long, global = true, value_name = "URL")]
    pub address: Option<String>,
    /// Token [env: KEYHAVEN_TOKEN, then VAULT_TOKEN, then the file `keyhaven login`
    /// stores].
    #[arg(long, global = true, value_name = "TOKEN", value_parser = parse_secret)]
    pub token: Option<SecretString>,
    /// PEM file of the CA certificates to trust instead of the system's
    /// [env: KEYHAVEN_CACERT, then VAULT_CACERT].
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Do not verify the server's certificate. Dangerous: anyone on the network path can
    /// read and change the traffic, tokens and secrets included
    /// [env: KEYHAVEN_SKIP_VERIFY, then VAULT_SKIP_VERIFY].
    #[arg(long, global = true)]
    pub tls_skip_verify: bool,
    /// Output format [env: KEYHAVEN_FORMAT, then VAULT_FORMAT].
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,
}

fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// The first of the environment variables that is set and not empty.
fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
}

fn env_bool(names: &[&str]) -> Result<bool, Failure> {
    match env_first(names) {
        None => Ok(false),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "t" | "yes" | "on" => Ok(true),
            "0" | "false" | "f" | "no" | "off" => Ok(false),
            _ => Err(Failure::local(format!(
                "invalid boolean in {}: expected true or false",
                names.join("/")
            ))),
        },
    }
}

impl ClientArgs {
    /// The output format: the flag, else `KEYHAVEN_FORMAT`/`VAULT_FORMAT`, else table.
    pub fn format(&self) -> Result<Format, Failure> {
        if let Some(f) = self.format {
            return Ok(f);
        }
        match env_first(&["KEYHAVEN_FORMAT", "VAULT_FORMAT"]).map(|v| v.trim().to_ascii_lowercase())
        {
            None => Ok(Format::Table),
            Some(v) if v == "table" => Ok(Format::Table),
            Some(v) if v == "json" => Ok(Format::Json),
            Some(_) => Err(Failure::local(
                "invalid output format in KEYHAVEN_FORMAT/VAULT_FORMAT: expected json or table",
            )),
        }
    }

    /// The client these options describe. Flags win over `KEYHAVEN_*` variables, which
    /// win over `VAULT_*` ones; the token falls back to the token file `keyhaven login`
    /// stores.
    pub fn client(&self) -> Result<Client, Failure> {
        self.client_with_token(self.token()?)
    }

    /// The token these options name: `--token`, else `KEYHAVEN_TOKEN`, else
    /// `VAULT_TOKEN`, else the token file. An empty `--token` means "no token", as an
    /// unset variable does.
    pub fn token(&self) -> Result<Option<SecretString>, Failure> {
        match self.token.clone().filter(|t| !t.expose_secret().is_empty()) {
            Some(t) => Ok(Some(t)),
            None => match env_first(&["KEYHAVEN_TOKEN", "VAULT_TOKEN"]) {
                Some(t) => Ok(Some(SecretString::from(t))),
                None => token_file::read(),
            },
        }
    }

    /// Whether a token is set by flag or environment (and so wins over the token file).
    pub fn token_overrides_file(&self) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| !t.expose_secret().is_empty())
            || env_first(&["KEYHAVEN_TOKEN", "VAULT_TOKEN"]).is_some()
    }

    /// The client these options describe, with `token` instead of the one they name.
    pub fn client_with_token(&self, token: Option<SecretString>) -> Result<Client, Failure> {
        let address = self
            .address
            .clone()
            .or_else(|| env_first(&["KEYHAVEN_ADDR", "VAULT_ADDR"]))
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned());
        let ca_cert = self
            .ca_cert
            .clone()
            .or_else(|| env_first(&["KEYHAVEN_CACERT", "VAULT_CACERT"]).map(PathBuf::from));
        let skip_verify =
            self.tls_skip_verify || env_bool(&["KEYHAVEN_SKIP_VERIFY", "VAULT_SKIP_VERIFY"])?;
        if skip_verify {
            output::warn(
                "TLS certificate verification is disabled: anyone on the network path can read and change this traffic, the token included.",
            );
        }
        let config = ClientConfig {
            address,
            token,
            ca_cert,
            dangerous_skip_tls_verify: skip_verify,
            timeout: DEFAULT_TIMEOUT,
        };
        Client::new(config).map_err(|e| Failure::Local(anyhow::Error::new(e)))
    }
}

/// Why a command failed, which decides its exit code.
#[derive(Debug)]
pub enum Failure {
    /// A local or usage error: exit 1.
    Local(anyhow::Error),
    /// The server answered with an error or could not be reached: exit 2. The context
    /// says what was being done.
    Remote {
        /// What was being done, e.g. "reading kv2/data/app".
        context: String,
        /// The client's error.
        error: ClientError,
    },
    /// Nothing at the path (or the server is sealed, for `status`): exit 2.
    NotFound(String),
}

impl Failure {
    /// A local error with this message.
    pub fn local(message: impl Into<String>) -> Self {
        Failure::Local(anyhow::Error::msg(message.into()))
    }

    /// A failed call.
    pub fn remote(context: impl Into<String>, error: ClientError) -> Self {
        Failure::Remote {
            context: context.into(),
            error,
        }
    }

    /// The exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Local(_) => 1,
            Failure::Remote { .. } | Failure::NotFound(_) => 2,
        }
    }
}

/// Run a command's future on a small runtime, print its failure if any, and turn the
/// outcome into the exit code.
pub fn block_on<F>(fut: F) -> ExitCode
where
    F: std::future::Future<Output = Result<ExitCode, Failure>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::failure(&Failure::Local(
                anyhow::Error::new(e).context("cannot start the async runtime"),
            ));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(fut) {
        Ok(code) => code,
        Err(failure) => {
            output::failure(&failure);
            ExitCode::from(failure.exit_code())
        }
    }
}
