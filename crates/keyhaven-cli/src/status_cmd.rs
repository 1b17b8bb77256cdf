//! `keyhaven status`: the seal status, with Vault's exit codes (0 unsealed, 2 sealed,
//! 1 error).

use std::process::ExitCode;

use keyhaven_client::{Client, SealStatus};
use serde_json::Value;

use crate::output;
use crate::remote::{self, ClientArgs, Failure, Format};

/// Arguments of `keyhaven status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// Run `keyhaven status`.
pub fn run(args: StatusArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        let client = args.client.client()?;
        let status = match client.seal_status().await {
            Ok(s) => s,
            // Vault's `status` exits 1 on any error: 2 means "sealed".
            Err(e) => {
                return Err(Failure::Local(anyhow::anyhow!(
                    "Error checking seal status: {}",
                    output::describe(&e)
                )));
            }
        };
        let ha_enabled = ha_enabled(&client).await;
        print_seal_status(&status, ha_enabled, format)?;
        Ok(if status.sealed {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        })
    })
}

/// `ha_enabled` of `sys/leader`, when the server answers it.
async fn ha_enabled(client: &Client) -> Option<bool> {
    let v = client.read("sys/leader", &[]).await.ok()??;
    v.get("ha_enabled").and_then(Value::as_bool)
}

/// Print a seal status as `status` and `operator unseal` do.
pub fn print_seal_status(
    s: &SealStatus,
    ha_enabled: Option<bool>,
    format: Format,
) -> Result<(), Failure> {
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(s).map_err(|e| {
                Failure::Local(anyhow::Error::new(e).context("cannot encode the seal status"))
            })?;
            if let (Some(ha), Value::Object(map)) = (ha_enabled, &mut v) {
                map.insert("ha_enabled".to_owned(), Value::Bool(ha));
            }
            output::json(&v)
        }
        Format::Table => {
            let mut rows: Vec<(String, String)> = vec![
                ("Seal Type".into(), s.kind.clone()),
                ("Initialized".into(), s.initialized.to_string()),
                ("Sealed".into(), s.sealed.to_string()),
                ("Total Shares".into(), s.n.to_string()),
                ("Threshold".into(), s.t.to_string()),
            ];
            if s.sealed {
                rows.push(("Unseal Progress".into(), format!("{}/{}", s.progress, s.t)));
                rows.push((
                    "Unseal Nonce".into(),
                    if s.nonce.is_empty() {
                        "n/a".into()
                    } else {
                        s.nonce.clone()
                    },
                ));
            }
            rows.push(("Version".into(), s.version.clone()));
            if let Some(st) = &s.storage_type {
                rows.push(("Storage Type".into(), st.clone()));
            }
            if !s.cluster_name.is_empty() {
                rows.push(("Cluster Name".into(), s.cluster_name.clone()));
            }
            if !s.cluster_id.is_empty() {
                rows.push(("Cluster ID".into(), s.cluster_id.clone()));
            }
            if let Some(ha) = ha_enabled {
                rows.push(("HA Enabled".into(), ha.to_string()));
            }
            output::line(&output::table(&rows));
            Ok(())
        }
    }
}
