//! `keyhaven lease …`: look up, renew and revoke leases, with the `bao lease` commands'
//! requests and output.

use std::process::ExitCode;

use serde_json::{Map, Value, json};

use crate::generic_cmd::print_answer;
use crate::output;
use crate::remote::{self, ClientArgs, Failure};

/// Arguments of `keyhaven lease`.
#[derive(Debug, clap::Args)]
pub struct LeaseArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: LeaseCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LeaseCommand {
    /// Show a lease's issue and expiry times and its TTL.
    Lookup(IdArgs),
    /// Extend a lease.
    Renew(RenewArgs),
    /// Revoke a lease (its secret is revoked: a database user is dropped), or every lease
    /// under a prefix.
    Revoke(RevokeArgs),
}

#[derive(Debug, clap::Args)]
struct IdArgs {
    /// The lease id, e.g. `database/creds/readonly/2f6a614c…`.
    #[arg(value_name = "ID")]
    id: String,
}

#[derive(Debug, clap::Args)]
struct RenewArgs {
    /// The TTL asked for, from now (e.g. `1h`); the lease's maximum caps it. Default:
    /// the lease's original TTL.
    #[arg(long, value_name = "DURATION")]
    increment: Option<String>,
    /// The lease id.
    #[arg(value_name = "ID")]
    id: String,
}

#[derive(Debug, clap::Args)]
struct RevokeArgs {
    /// Treat ID as a prefix and revoke every lease under it.
    #[arg(long)]
    prefix: bool,
    /// With --prefix: remove the leases even where the secret cannot be revoked (the
    /// secret may then outlive its lease; clean it up by hand).
    #[arg(long, requires = "prefix")]
    force: bool,
    /// Revoke before answering; without it the server queues the revocations.
    #[arg(long)]
    sync: bool,
    /// The lease id, or the prefix with --prefix.
    #[arg(value_name = "ID")]
    id: String,
}

/// Run `keyhaven lease …`.
pub fn run(args: LeaseArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        let client = args.client.client()?;
        match args.command {
            LeaseCommand::Lookup(a) => {
                let id = lease_arg(&a.id)?;
                let answer = client
                    .write("sys/leases/lookup", Some(&json!({ "lease_id": id })))
                    .await
                    .map_err(|e| Failure::remote(format!("looking up lease {id}"), e))?
                    .unwrap_or(Value::Null);
                print_answer(answer, &[], None, format)?;
            }
            LeaseCommand::Renew(a) => {
                let id = lease_arg(&a.id)?;
                let mut body = Map::new();
                body.insert("lease_id".into(), json!(id));
                if let Some(inc) = a.increment {
                    body.insert("increment".into(), json!(inc));
                }
                let answer = client
                    .write("sys/leases/renew", Some(&Value::Object(body)))
                    .await
                    .map_err(|e| Failure::remote(format!("renewing lease {id}"), e))?
                    .unwrap_or(Value::Null);
                print_answer(answer, &[], None, format)?;
            }
            LeaseCommand::Revoke(a) => {
                let id = lease_arg(&a.id)?;
                let body = json!({ "sync": a.sync });
                let (path, body, done) = match (a.prefix, a.force) {
                    (true, true) => (
                        format!("sys/leases/revoke-force/{id}"),
                        None,
                        format!("Success! Force revoked any leases with prefix: {id}"),
                    ),
                    (true, false) => (
                        format!("sys/leases/revoke-prefix/{id}"),
                        Some(body),
                        format!("Success! Revoked any leases with prefix: {id}"),
                    ),
                    (false, _) => (
                        "sys/leases/revoke".to_owned(),
                        Some(json!({ "lease_id": id, "sync": a.sync })),
                        format!("Success! Revoked lease: {id}"),
                    ),
                };
                client
                    .write(&path, body.as_ref())
                    .await
                    .map_err(|e| Failure::remote(format!("revoking {id}"), e))?;
                if a.sync || a.force {
                    output::line(&done);
                } else {
                    output::line("All revocation operations queued successfully!");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A lease id or prefix as given, without surrounding slashes.
fn lease_arg(id: &str) -> Result<String, Failure> {
    let id = id.trim().trim_matches('/');
    if id.is_empty() {
        return Err(Failure::local("a lease id (or prefix) is required"));
    }
    Ok(id.to_owned())
}
