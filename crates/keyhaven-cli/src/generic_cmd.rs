//! `keyhaven read|write|list|delete PATH`: any API path, as `vault read` and friends.
//!
//! Values given as `key=value` are sent as JSON strings, as Vault's CLI sends them (the
//! server coerces types); a key given twice becomes a list. Answers print their `data`
//! (and `auth`) as tables, or the whole envelope with `--format json`.
//!
//! The answer is printed as the server gave it, except that a token the caller already
//! holds (the one it authenticates with, or one it passed as `token=…`) is never echoed
//! back: `read auth/token/lookup-self` shows no `id`, `write auth/token/renew-self` no
//! `client_token`. A new token, as `write auth/token/create` returns, is shown.

use std::process::ExitCode;

use keyhaven_client::envelope_warnings;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;

use crate::args::{parse_data, parse_data_with};
use crate::output;
use crate::remote::{self, ClientArgs, Failure, Format};
use crate::token_cmd;

/// Arguments of `keyhaven read`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Print only this field of `data` (or of the token rows).
    #[arg(long, value_name = "FIELD")]
    field: Option<String>,
    /// The API path, e.g. `sys/mounts`.
    #[arg(value_name = "PATH")]
    path: String,
    /// Query parameters `key=value`.
    #[arg(value_name = "K=V")]
    params: Vec<String>,
}

/// Arguments of `keyhaven write`.
#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Write even without data (an empty body).
    #[arg(short = 'f', long)]
    force: bool,
    /// Print only this field of `data` (or of the token rows, e.g. `token`).
    #[arg(long, value_name = "FIELD")]
    field: Option<String>,
    /// The API path, e.g. `auth/token/create`.
    #[arg(value_name = "PATH")]
    path: String,
    /// Data as `key=value`; `key=@file` reads the value from a file, `key=-` from stdin. A
    /// single `-` reads a JSON object from stdin, `@file.json` from a file.
    #[arg(value_name = "K=V")]
    data: Vec<String>,
}

/// Arguments of `keyhaven list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The API path, e.g. `sys/policies/acl`.
    #[arg(value_name = "PATH")]
    path: String,
}

/// Arguments of `keyhaven delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The API path, e.g. `sys/policies/acl/app`.
    #[arg(value_name = "PATH")]
    path: String,
}

/// An API path as given, without leading or trailing slashes; empty is refused.
fn api_path(path: &str) -> Result<String, Failure> {
    let p = path.trim_matches('/');
    if p.is_empty() {
        return Err(Failure::local("missing PATH"));
    }
    Ok(p.to_owned())
}

/// Run `keyhaven read`.
pub fn run_read(args: ReadArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        let path = api_path(&args.path)?;
        let query = parse_data_with(&args.params, &mut || {
            Err(Failure::local("read takes no input from stdin"))
        })?;
        let query: Vec<(String, String)> = query
            .into_iter()
            .map(|(k, v)| (k, output::value_text(&v)))
            .collect();
        let query: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let known = args.client.token()?;
        let client = args.client.client_with_token(known.clone())?;
        let answer = client
            .read(&path, &query)
            .await
            .map_err(|e| Failure::remote(format!("reading {path}"), e))?
            .ok_or_else(|| Failure::NotFound(format!("No value found at {path}")))?;
        print_answer(
            answer,
            &known_tokens(known.as_ref(), None),
            args.field.as_deref(),
            format,
        )?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Run `keyhaven write`.
pub fn run_write(args: WriteArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        let path = api_path(&args.path)?;
        let data = parse_data(&args.data)?;
        if data.is_empty() && !args.force {
            return Err(Failure::local(
                "Must supply data or use -f (--force) to write with an empty body",
            ));
        }
        let known = args.client.token()?;
        let client = args.client.client_with_token(known.clone())?;
        let body = (!data.is_empty()).then(|| Value::Object(data.clone()));
        let answer = client
            .write(&path, body.as_ref())
            .await
            .map_err(|e| Failure::remote(format!("writing data to {path}"), e))?;
        let passed = data.get("token").and_then(Value::as_str);
        match answer.filter(has_content) {
            None => output::line(&format!("Success! Data written to: {path}")),
            Some(answer) => print_answer(
                answer,
                &known_tokens(known.as_ref(), passed),
                args.field.as_deref(),
                format,
            )?,
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Run `keyhaven list`.
pub fn run_list(args: ListArgs) -> ExitCode {
    remote::block_on(async move {
        let format = args.client.format()?;
        let path = api_path(&args.path)?;
        let client = args.client.client()?;
        let answer = client
            .list(&path, &[])
            .await
            .map_err(|e| Failure::remote(format!("listing {path}"), e))?;
        let keys: Vec<String> = answer
            .as_ref()
            .and_then(|a| a.get("data"))
            .and_then(|d| d.get("keys"))
            .and_then(Value::as_array)
            .map(|a| a.iter().map(output::value_text).collect())
            .unwrap_or_default();
        if let Some(a) = &answer {
            output::warnings(&envelope_warnings(Some(a)));
        }
        if keys.is_empty() {
            return Err(Failure::NotFound(format!("No value found at {path}")));
        }
        match format {
            Format::Json => output::json(&keys)?,
            Format::Table => {
                let rows: Vec<Vec<String>> = keys.into_iter().map(|k| vec![k]).collect();
                output::line(&output::columns(&["Keys"], &rows));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Run `keyhaven delete`.
pub fn run_delete(args: DeleteArgs) -> ExitCode {
    remote::block_on(async move {
        let path = api_path(&args.path)?;
        let client = args.client.client()?;
        let answer = client
            .delete(&path, &[])
            .await
            .map_err(|e| Failure::remote(format!("deleting {path}"), e))?;
        if let Some(a) = &answer {
            output::warnings(&envelope_warnings(Some(a)));
        }
        output::line(&format!("Success! Data deleted (if it existed) at: {path}"));
        Ok(ExitCode::SUCCESS)
    })
}

/// The tokens an answer must not echo: the caller's and one passed as `token=…`.
fn known_tokens(caller: Option<&SecretString>, passed: Option<&str>) -> Vec<String> {
    caller
        .map(|t| t.expose_secret().to_owned())
        .into_iter()
        .chain(passed.map(str::to_owned))
        .filter(|t| !t.is_empty())
        .collect()
}

/// Remove every object field whose value is one of `known` (tokens the caller holds).
fn drop_known(value: &mut Value, known: &[String]) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !matches!(v, Value::String(s) if known.iter().any(|k| k == s)));
            for v in map.values_mut() {
                drop_known(v, known);
            }
        }
        Value::Array(items) => {
            for v in items {
                drop_known(v, known);
            }
        }
        _ => {}
    }
}

fn has_content(answer: &Value) -> bool {
    ["data", "auth", "warnings"]
        .iter()
        .any(|k| answer.get(*k).is_some_and(|v| !v.is_null()))
}

/// Print an answer: its lease, `data` and `auth` rows, one field, or the JSON.
pub(crate) fn print_answer(
    mut answer: Value,
    known: &[String],
    field: Option<&str>,
    format: Format,
) -> Result<(), Failure> {
    drop_known(&mut answer, known);
    output::warnings(&envelope_warnings(Some(&answer)));
    let mut rows: Vec<(String, String)> = Vec::new();
    let lease = answer
        .get("lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if lease > 0 {
        if let Some(id) = answer
            .get("lease_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            rows.push(("lease_id".into(), id.to_owned()));
        }
        rows.push(("lease_duration".into(), token_cmd::human_duration(lease)));
        rows.push((
            "lease_renewable".into(),
            answer
                .get("renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
        ));
    }
    if let Some(Value::Object(data)) = answer.get("data") {
        rows.extend(data.iter().map(|(k, v)| (k.clone(), output::value_text(v))));
    }
    if let Some(auth) = answer.get("auth").filter(|a| a.is_object()) {
        rows.extend(token_cmd::auth_rows(auth));
    }
    if let Some(field) = field {
        let json_value = answer
            .get("data")
            .and_then(|d| d.get(field))
            .cloned()
            .or_else(|| {
                rows.iter()
                    .find(|(k, _)| k == field)
                    .map(|(_, v)| Value::String(v.clone()))
            })
            .ok_or_else(|| Failure::local(format!("Field \"{field}\" not present in secret")))?;
        return match format {
            Format::Json => output::json(&json_value),
            Format::Table => output::raw(&output::value_text(&json_value)),
        };
    }
    match format {
        Format::Json => output::json(&answer),
        Format::Table if rows.is_empty() => {
            output::line("Success! The server returned no data.");
            Ok(())
        }
        Format::Table => {
            output::line(&output::table(&rows));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pairs_are_strings_and_repeated_keys_lists() {
        let mut stdin = || Ok("from-stdin".to_owned());
        let m = parse_data_with(
            &args(&["policies=a", "policies=b", "ttl=1h", "x=-"]),
            &mut stdin,
        )
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"policies": ["a", "b"], "ttl": "1h", "x": "from-stdin"})
        );
        let mut stdin = || Ok("v".to_owned());
        assert!(parse_data_with(&args(&["a=-", "b=-"]), &mut stdin).is_err());
        assert!(
            parse_data_with(&[], &mut stdin).unwrap().is_empty(),
            "empty is allowed (write -f)"
        );
    }

    #[test]
    fn bad_pairs_are_not_echoed() {
        let mut stdin = || Ok(String::new());
        let Err(Failure::Local(e)) = parse_data_with(&args(&["hunter2"]), &mut stdin) else {
            panic!()
        };
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn known_tokens_are_dropped_everywhere() {
        let mut v = json!({"data": {"id": "kh.caller", "accessor": "a"},
            "auth": {"client_token": "kh.passed", "accessor": "b"}, "list": [{"t": "kh.caller"}]});
        drop_known(
            &mut v,
            &known_tokens(Some(&SecretString::from("kh.caller")), Some("kh.passed")),
        );
        assert!(!v.to_string().contains("kh."), "{v}");
        assert_eq!(v["data"]["accessor"], "a");
    }
}
