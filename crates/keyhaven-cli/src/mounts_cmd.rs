//! `keyhaven auth …` and `keyhaven secrets …`: enable, list and disable auth methods
//! (`sys/auth`) and secrets engines (`sys/mounts`), with Vault's flags and output.

use std::collections::BTreeMap;
use std::process::ExitCode;

use keyhaven_client::{EnableMount, MountEntry};
use serde_json::json;

use crate::output;
use crate::remote::{self, ClientArgs, Failure, Format};

/// Arguments of `keyhaven auth`.
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AuthCommand {
    /// Enable an auth method, e.g. `kubernetes` or `jwt`.
    Enable(EnableArgs),
    /// List the enabled auth methods.
    List,
    /// Disable an auth method; the tokens it issued are revoked.
    Disable(DisableArgs),
}

/// Arguments of `keyhaven secrets`.
#[derive(Debug, clap::Args)]
pub struct SecretsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SecretsCommand {
    /// Enable a secrets engine, e.g. `kv-v2` or `transit`.
    #[command(disable_version_flag = true)]
    Enable(SecretsEnableArgs),
    /// List the enabled secrets engines.
    List,
    /// Disable a secrets engine; its data is deleted.
    Disable(DisableArgs),
}

#[derive(Debug, clap::Args)]
struct EnableArgs {
    /// Where to mount it [default: the type].
    #[arg(long, value_name = "PATH")]
    path: Option<String>,
    /// A human-readable description.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// The type.
    #[arg(value_name = "TYPE")]
    kind: String,
}

#[derive(Debug, clap::Args)]
struct SecretsEnableArgs {
    #[command(flatten)]
    common: EnableArgs,
    /// KV version (`kv` only): 1 or 2.
    #[arg(long, value_name = "N")]
    version: Option<u8>,
}

#[derive(Debug, clap::Args)]
struct DisableArgs {
    /// The mount path.
    #[arg(value_name = "PATH")]
    path: String,
}

/// Run `keyhaven auth …`.
pub fn run_auth(args: AuthArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        let client = args.client.client()?;
        match args.command {
            AuthCommand::Enable(a) => {
                let (path, request) = enable_request(&a)?;
                client
                    .enable_auth(&path, &request)
                    .await
                    .map_err(|e| Failure::remote(format!("enabling auth at {path}/"), e))?;
                output::line(&format!(
                    "Success! Enabled {} auth method at: {path}/",
                    request.kind
                ));
            }
            AuthCommand::List => {
                let table = client
                    .list_auth()
                    .await
                    .map_err(|e| Failure::remote("listing enabled auth methods", e))?;
                print_table(&table, format)?;
            }
            AuthCommand::Disable(a) => {
                let path = mount_path(&a.path)?;
                client
                    .disable_auth(&path)
                    .await
                    .map_err(|e| Failure::remote(format!("disabling auth at {path}/"), e))?;
                output::line(&format!(
                    "Success! Disabled the auth method (if it existed) at: {path}/"
                ));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Run `keyhaven secrets …`.
pub fn run_secrets(args: SecretsArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        let client = args.client.client()?;
        match args.command {
            SecretsCommand::Enable(a) => {
                let (path, mut request) = enable_request(&a.common)?;
                if let Some(v) = a.version {
                    request
                        .options
                        .insert("version".into(), json!(v.to_string()));
                }
                client
                    .enable_mount(&path, &request)
                    .await
                    .map_err(|e| Failure::remote(format!("enabling secrets at {path}/"), e))?;
                output::line(&format!(
                    "Success! Enabled the {} secrets engine at: {path}/",
                    request.kind
                ));
            }
            SecretsCommand::List => {
                let table = client
                    .list_mounts()
                    .await
                    .map_err(|e| Failure::remote("listing secrets engines", e))?;
                print_table(&table, format)?;
            }
            SecretsCommand::Disable(a) => {
                let path = mount_path(&a.path)?;
                client
                    .disable_mount(&path)
                    .await
                    .map_err(|e| Failure::remote(format!("disabling secrets at {path}/"), e))?;
                output::line(&format!(
                    "Success! Disabled the secrets engine (if it existed) at: {path}/"
                ));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A mount path without slashes around it; empty is refused.
fn mount_path(path: &str) -> Result<String, Failure> {
    let p = path.trim_matches('/');
    if p.is_empty() {
        return Err(Failure::local("missing mount PATH"));
    }
    Ok(p.to_owned())
}

fn enable_request(a: &EnableArgs) -> Result<(String, EnableMount), Failure> {
    let kind = a.kind.trim();
    if kind.is_empty() {
        return Err(Failure::local("missing TYPE"));
    }
    let path = mount_path(a.path.as_deref().unwrap_or(kind))?;
    let mut request = EnableMount::new(kind);
    request.description = a.description.clone().unwrap_or_default();
    Ok((path, request))
}

/// One mount in `-format=json` listings: the fields this command has always printed, in
/// its order (a subset of the API's [`MountEntry`]).
#[derive(serde::Serialize)]
struct JsonRow<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    description: &'a str,
    accessor: &'a str,
    uuid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<&'a serde_json::Map<String, serde_json::Value>>,
    config: &'a keyhaven_client::MountConfig,
    local: bool,
    seal_wrap: bool,
}

impl<'a> From<&'a MountEntry> for JsonRow<'a> {
    fn from(m: &'a MountEntry) -> Self {
        JsonRow {
            kind: &m.kind,
            description: &m.description,
            accessor: &m.accessor,
            uuid: &m.uuid,
            options: m.options.as_ref(),
            config: &m.config,
            local: m.local,
            seal_wrap: m.seal_wrap,
        }
    }
}

/// The mount table as Vault prints it: `Path`, `Type`, `Accessor`, `Description`.
fn print_table(table: &BTreeMap<String, MountEntry>, format: Format) -> Result<(), Failure> {
    match format {
        Format::Json => output::json(
            &table
                .iter()
                .map(|(path, m)| (path, JsonRow::from(m)))
                .collect::<BTreeMap<_, _>>(),
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = table
                .iter()
                .map(|(path, m)| {
                    vec![
                        path.clone(),
                        m.kind.clone(),
                        m.accessor.clone(),
                        if m.description.is_empty() {
                            "n/a".to_owned()
                        } else {
                            m.description.clone()
                        },
                    ]
                })
                .collect();
            output::line(&output::columns(
                &["Path", "Type", "Accessor", "Description"],
                &rows,
            ));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_defaults_to_the_type() {
        let a = EnableArgs {
            path: None,
            description: None,
            kind: "kubernetes".into(),
        };
        let (path, r) = enable_request(&a).unwrap();
        assert_eq!(path, "kubernetes");
        assert_eq!(r.kind, "kubernetes");
        let a = EnableArgs {
            path: Some("/k8s-a/".into()),
            description: Some("team a".into()),
            kind: "kubernetes".into(),
        };
        let (path, r) = enable_request(&a).unwrap();
        assert_eq!(path, "k8s-a");
        assert_eq!(r.description, "team a");
        assert!(mount_path("/").is_err());
    }
}
