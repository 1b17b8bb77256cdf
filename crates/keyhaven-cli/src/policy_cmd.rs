//! `keyhaven policy …`: write, read, list and delete ACL policies with Vault's output, and
//! `explain`, which says which policy and rule allow or deny an operation for a token.
//!
//! `explain --token T` explains T; the request itself is made with the caller's token
//! from `KEYHAVEN_TOKEN`/`VAULT_TOKEN` or the file `keyhaven login` stores (with T when
//! there is none). Without `--token` or `--accessor`, it explains the caller's token.

use std::io::Read as _;
use std::process::ExitCode;

use keyhaven_client::envelope_warnings;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Map, Value, json};

use crate::args::parse_pairs;
use crate::output;
use crate::remote::{self, ClientArgs, Failure, Format};

/// Arguments of `keyhaven policy`.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
    /// Create or replace a policy from a file (`-`: stdin).
    Write(WriteArgs),
    /// Print a policy's text.
    Read(NameArgs),
    /// List the policies.
    List,
    /// Delete a policy.
    Delete(NameArgs),
    /// Say which policy and rule allow or deny OPERATION on PATH for a token.
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
struct WriteArgs {
    /// The policy's name.
    name: String,
    /// The HCL (or JSON) file; `-` reads stdin.
    #[arg(value_name = "FILE")]
    file: String,
}

#[derive(Debug, clap::Args)]
struct NameArgs {
    /// The policy's name.
    name: String,
}

#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// The API path, e.g. `secret/data/team-a/app`. It is evaluated as written: a
    /// transit alias is not resolved (a request through an alias must also be allowed
    /// on the key's own path; explain that path too).
    path: String,
    /// The operation.
    #[arg(
        default_value = "read",
        value_parser = ["read", "create", "update", "write", "patch", "delete", "list"]
    )]
    operation: String,
    /// Explain the token with this accessor instead of a token.
    #[arg(long, value_name = "ACCESSOR")]
    accessor: Option<String>,
    /// A request parameter `key=value`, checked against the rule's parameter
    /// constraints; repeat for several.
    #[arg(long = "param", value_name = "K=V")]
    params: Vec<String>,
}

/// Run `keyhaven policy …`.
pub fn run(args: PolicyArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        match args.command {
            PolicyCommand::Write(a) => write(&args.client, a).await,
            PolicyCommand::Read(a) => read(&args.client, a, format).await,
            PolicyCommand::List => list(&args.client, format).await,
            PolicyCommand::Delete(a) => delete(&args.client, a).await,
            PolicyCommand::Explain(a) => explain(&args.client, a, format).await,
        }
    })
}

/// A policy name as a single URL segment.
fn name_arg(name: &str) -> Result<String, Failure> {
    let n = name.trim();
    if n.is_empty() || n.contains('/') {
        return Err(Failure::local(
            "a policy name is one path segment: a-z, 0-9, '-', '_', '.', '@'",
        ));
    }
    Ok(n.to_owned())
}

/// The policy text from a file or stdin.
fn policy_text(file: &str) -> Result<String, Failure> {
    let mut text = String::new();
    let result = if file == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    result.map_err(|e| {
        Failure::Local(anyhow::Error::new(e).context(format!("cannot read the policy from {file}")))
    })?;
    if text.trim().is_empty() {
        return Err(Failure::local("the policy is empty"));
    }
    Ok(text)
}

async fn write(client: &ClientArgs, a: WriteArgs) -> Result<ExitCode, Failure> {
    let name = name_arg(&a.name)?;
    let text = policy_text(&a.file)?;
    let path = format!("sys/policies/acl/{name}");
    let answer = client
        .client()?
        .write(&path, Some(&json!({ "policy": text })))
        .await
        .map_err(|e| Failure::remote(format!("uploading policy {name}"), e))?;
    output::warnings(&envelope_warnings(answer.as_ref()));
    output::line(&format!("Success! Uploaded policy: {name}"));
    Ok(ExitCode::SUCCESS)
}

async fn read(client: &ClientArgs, a: NameArgs, format: Format) -> Result<ExitCode, Failure> {
    let name = name_arg(&a.name)?;
    let path = format!("sys/policies/acl/{name}");
    let answer = client
        .client()?
        .read(&path, &[])
        .await
        .map_err(|e| Failure::remote(format!("reading policy {name}"), e))?
        .ok_or_else(|| Failure::NotFound(format!("No policy named: {name}")))?;
    let data = answer.get("data").cloned().unwrap_or(Value::Null);
    match format {
        Format::Json => output::json(&data)?,
        Format::Table => {
            let text = data.get("policy").and_then(Value::as_str).unwrap_or("");
            output::line(text.trim_end_matches('\n'));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(client: &ClientArgs, format: Format) -> Result<ExitCode, Failure> {
    let answer = client
        .client()?
        .list("sys/policies/acl", &[])
        .await
        .map_err(|e| Failure::remote("listing policies", e))?;
    let names: Vec<String> = answer
        .as_ref()
        .and_then(|a| a.get("data"))
        .and_then(|d| d.get("keys"))
        .and_then(Value::as_array)
        .map(|a| a.iter().map(output::value_text).collect())
        .unwrap_or_default();
    match format {
        Format::Json => output::json(&names)?,
        Format::Table => {
            for n in &names {
                output::line(n);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn delete(client: &ClientArgs, a: NameArgs) -> Result<ExitCode, Failure> {
    let name = name_arg(&a.name)?;
    let path = format!("sys/policies/acl/{name}");
    client
        .client()?
        .delete(&path, &[])
        .await
        .map_err(|e| Failure::remote(format!("deleting policy {name}"), e))?;
    output::line(&format!("Success! Deleted policy: {name}"));
    Ok(ExitCode::SUCCESS)
}

/// The caller's token for `explain`: the environment or the token file, not `--token`
/// (which names the token to explain).
fn caller_token() -> Result<Option<SecretString>, Failure> {
    let env = ["KEYHAVEN_TOKEN", "VAULT_TOKEN"]
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()));
    match env {
        Some(t) => Ok(Some(SecretString::from(t))),
        None => crate::token_file::read(),
    }
}

/// `key=value` parameters, as strings.
fn parse_params(pairs: &[String]) -> Result<Map<String, Value>, Failure> {
    Ok(parse_pairs(pairs, "--param")?
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect())
}

/// The body of `sys/policies/explain`.
fn explain_body(
    subject: Option<&SecretString>,
    accessor: Option<&str>,
    path: &str,
    operation: &str,
    params: Map<String, Value>,
) -> Value {
    let mut body = Map::new();
    match (subject, accessor) {
        (_, Some(a)) => {
            body.insert("accessor".into(), Value::String(a.to_owned()));
        }
        (Some(t), None) => {
            body.insert("token".into(), Value::String(t.expose_secret().to_owned()));
        }
        (None, None) => {}
    }
    body.insert(
        "path".into(),
        Value::String(path.trim_start_matches('/').to_owned()),
    );
    body.insert("operation".into(), Value::String(operation.to_owned()));
    if !params.is_empty() {
        body.insert("parameters".into(), Value::Object(params));
    }
    Value::Object(body)
}

/// The rows `explain` prints, in a fixed order.
fn explain_rows(data: &Value) -> Vec<(String, String)> {
    let text = |k: &str| match data.get(k) {
        None | Some(Value::Null) => "n/a".to_owned(),
        Some(v) => output::value_text(v),
    };
    [
        "allowed",
        "reason",
        "policy",
        "rule",
        "policies",
        "path",
        "operation",
    ]
    .iter()
    .filter(|k| !matches!(**k, "policies" | "path" | "operation") || data.get(**k).is_some())
    .map(|k| ((*k).to_owned(), text(k)))
    .collect()
}

async fn explain(client: &ClientArgs, a: ExplainArgs, format: Format) -> Result<ExitCode, Failure> {
    let subject = client
        .token
        .clone()
        .filter(|t| !t.expose_secret().is_empty());
    let caller = match caller_token()? {
        Some(t) => Some(t),
        None => subject.clone(),
    };
    let subject = match (&subject, &a.accessor) {
        (None, None) => caller.clone(),
        _ => subject,
    };
    if subject.is_none() && a.accessor.is_none() {
        return Err(Failure::local(
            "no token to explain: pass --token T or --accessor A, or log in",
        ));
    }
    let params = parse_params(&a.params)?;
    let body = explain_body(
        subject.as_ref(),
        a.accessor.as_deref(),
        &a.path,
        &a.operation,
        params,
    );
    let answer = client
        .client_with_token(caller)?
        .write("sys/policies/explain", Some(&body))
        .await
        .map_err(|e| Failure::remote("writing data to sys/policies/explain", e))?
        .ok_or_else(|| Failure::local("the server answered sys/policies/explain with nothing"))?;
    let data = answer.get("data").cloned().unwrap_or(Value::Null);
    output::warnings(&envelope_warnings(Some(&answer)));
    match format {
        Format::Json => output::json(&data)?,
        Format::Table => output::line(&output::table(&explain_rows(&data))),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_segment() {
        assert_eq!(name_arg(" team-a ").unwrap(), "team-a");
        assert!(name_arg("a/b").is_err());
        assert!(name_arg("").is_err());
    }

    #[test]
    fn explain_sends_the_subject_path_and_operation() {
        let t = SecretString::from("khs.subject".to_owned());
        let mut params = Map::new();
        params.insert("ttl".into(), json!("1h"));
        let body = explain_body(Some(&t), None, "/secret/data/a", "update", params);
        assert_eq!(
            body,
            json!({"token": "khs.subject", "path": "secret/data/a", "operation": "update",
                   "parameters": {"ttl": "1h"}})
        );
        let body = explain_body(Some(&t), Some("acc"), "p", "read", Map::new());
        assert_eq!(
            body,
            json!({"accessor": "acc", "path": "p", "operation": "read"})
        );
    }

    #[test]
    fn explain_rows_are_stable() {
        let rows = explain_rows(&json!({
            "allowed": false,
            "reason": "no policy grants read on \"x\"",
            "policy": null,
            "policies": ["default"],
        }));
        let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["allowed", "reason", "policy", "rule", "policies"]);
        assert_eq!(rows[0].1, "false");
        assert_eq!(rows[2].1, "n/a");
    }

    #[test]
    fn bad_params_are_not_echoed() {
        let Err(Failure::Local(e)) = parse_params(&["hunter2".into()]) else {
            panic!()
        };
        assert!(!e.to_string().contains("hunter2"));
    }
}
