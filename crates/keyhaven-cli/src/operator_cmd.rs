//! `keyhaven operator …`: init, unseal, seal, rotate and key-status.

use std::process::ExitCode;

use keyhaven_client::InitRequest;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;

use crate::output;
use crate::remote::{self, ClientArgs, Failure, Format};
use crate::status_cmd::print_seal_status;

/// Arguments of `keyhaven operator`.
#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: OperatorCommand,
}

#[derive(Debug, clap::Subcommand)]
enum OperatorCommand {
    /// Initialize the server: create the root key and split the unseal key into shares.
    /// The shares and the initial root token are shown once.
    Init(InitArgs),
    /// Enter one unseal key share (read from stdin when KEY is omitted).
    Unseal(UnsealArgs),
    /// Seal the server: every key is dropped from memory.
    Seal,
    /// Add a new keyring term; new data is encrypted with it, old terms stay readable.
    Rotate,
    /// Show the keyring's current term.
    KeyStatus,
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Number of unseal key shares.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..))]
    key_shares: u8,
    /// Shares needed to unseal.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    key_threshold: u8,
    /// Only tell whether the server is initialized (exit 0 yes, 2 no, 1 error).
    #[arg(long, conflicts_with_all = ["key_shares", "key_threshold"])]
    status: bool,
}

#[derive(Debug, clap::Args)]
struct UnsealArgs {
    /// The unseal key share (hex or base64). Omit it to read it from stdin, without echo
    /// when stdin is a terminal; a key on the command line stays in the shell history.
    #[arg(value_name = "KEY", value_parser = parse_secret)]
    key: Option<SecretString>,
    /// Forget the shares entered so far.
    #[arg(long, conflicts_with = "key")]
    reset: bool,
}

fn parse_secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

/// Run `keyhaven operator …`.
pub fn run(args: OperatorArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        match args.command {
            OperatorCommand::Init(init) => run_init(&args.client, &init, format).await,
            OperatorCommand::Unseal(unseal) => run_unseal(&args.client, unseal, format).await,
            OperatorCommand::Seal => {
                let client = args.client.client()?;
                client
                    .seal()
                    .await
                    .map_err(|e| Failure::remote("sealing", e))?;
                output::line("Success! keyhaven is sealed.");
                Ok(ExitCode::SUCCESS)
            }
            OperatorCommand::Rotate => {
                let client = args.client.client()?;
                client
                    .rotate()
                    .await
                    .map_err(|e| Failure::remote("rotating the keyring", e))?;
                let status = client
                    .key_status()
                    .await
                    .map_err(|e| Failure::remote("reading the key status", e))?;
                match format {
                    Format::Json => output::json(&status)?,
                    Format::Table => {
                        output::line("Success! Rotated key\n");
                        output::line(&key_status_table(&status));
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            OperatorCommand::KeyStatus => {
                let client = args.client.client()?;
                let status = client
                    .key_status()
                    .await
                    .map_err(|e| Failure::remote("reading the key status", e))?;
                match format {
                    Format::Json => output::json(&status)?,
                    Format::Table => output::line(&key_status_table(&status)),
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn key_status_table(s: &keyhaven_client::KeyStatus) -> String {
    output::table(&[
        ("Key Term".into(), s.term.to_string()),
        ("Install Time".into(), s.install_time.clone()),
        ("Encryption Count".into(), s.encryptions.to_string()),
    ])
}

async fn run_init(args: &ClientArgs, init: &InitArgs, format: Format) -> Result<ExitCode, Failure> {
    let client = args.client()?;
    if init.status {
        let initialized = client.init_status().await.map_err(|e| {
            Failure::Local(anyhow::anyhow!(
                "Error checking init status: {}",
                output::describe(&e)
            ))
        })?;
        return if initialized {
            output::line("keyhaven is initialized");
            Ok(ExitCode::SUCCESS)
        } else {
            output::line("keyhaven is not initialized");
            Ok(ExitCode::from(2))
        };
    }
    if init.key_threshold > init.key_shares {
        return Err(Failure::local(
            "--key-threshold must not be greater than --key-shares",
        ));
    }
    let request = InitRequest {
        secret_shares: init.key_shares,
        secret_threshold: init.key_threshold,
    };
    let resp = client
        .init(&request)
        .await
        .map_err(|e| Failure::remote("initializing", e))?;
    // Showing the shares and the root token once is this command's purpose.
    match format {
        Format::Json => {
            let b64: Vec<&str> = resp.keys_base64.iter().map(|k| k.expose_secret()).collect();
            let hex: Vec<&str> = resp.keys.iter().map(|k| k.expose_secret()).collect();
            output::json(&json!({
                "unseal_keys_b64": b64,
                "unseal_keys_hex": hex,
                "unseal_shares": init.key_shares,
                "unseal_threshold": init.key_threshold,
                "recovery_keys_b64": [],
                "recovery_keys_hex": [],
                "recovery_keys_shares": 0,
                "recovery_keys_threshold": 0,
                "root_token": resp.root_token.expose_secret(),
            }))?;
        }
        Format::Table => {
            let shown = if resp.keys_base64.len() == resp.keys.len() {
                &resp.keys_base64
            } else {
                &resp.keys
            };
            let mut text = String::new();
            for (i, key) in shown.iter().enumerate() {
                text.push_str(&format!("Unseal Key {}: {}\n", i + 1, key.expose_secret()));
            }
            text.push_str(&format!(
                "\nInitial Root Token: {}\n\n",
                resp.root_token.expose_secret()
            ));
            text.push_str(&format!(
                "keyhaven initialized with {} key shares and a key threshold of {}. Please securely\n\
                 distribute the key shares printed above. When the server is re-sealed or\n\
                 restarted, at least {} of these keys are needed to unseal it before it can\n\
                 start serving requests.\n\n\
                 keyhaven does not store the generated root key. Without at least {} keys to\n\
                 reconstruct the root key, keyhaven will remain permanently sealed!",
                init.key_shares, init.key_threshold, init.key_threshold, init.key_threshold
            ));
            output::line(&text);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_unseal(
    args: &ClientArgs,
    unseal: UnsealArgs,
    format: Format,
) -> Result<ExitCode, Failure> {
    let client = args.client()?;
    let status = if unseal.reset {
        client
            .unseal_reset()
            .await
            .map_err(|e| Failure::remote("resetting the unseal process", e))?
    } else {
        let key = match unseal.key {
            Some(k) => k,
            None => output::read_secret("Unseal Key", "unseal key")?,
        };
        if key.expose_secret().is_empty() {
            return Err(Failure::local("no unseal key given"));
        }
        client
            .unseal(&key)
            .await
            .map_err(|e| Failure::remote("unsealing", e))?
    };
    print_seal_status(&status, None, format)?;
    Ok(ExitCode::SUCCESS)
}
