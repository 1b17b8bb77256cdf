//! `k=v` arguments as Vault's CLI reads them, shared by `write`, `kv put` and `kv patch`.

use std::collections::BTreeMap;
use std::io::Read as _;

use serde_json::{Map, Value};

use crate::remote::Failure;

/// Parse `k=v` arguments as Vault's CLI does (see [`parse_data_with`]), reading stdin
/// for `-`.
pub(crate) fn parse_data(args: &[String]) -> Result<Map<String, Value>, Failure> {
    parse_data_with(args, &mut || {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::Local(anyhow::Error::new(e).context("cannot read stdin")))?;
        Ok(s)
    })
}

/// Parse `k=v` arguments: values are strings; `k=@file` reads a file, `k=-` reads stdin
/// (once); a lone `-` is a JSON object on stdin and `@file` a JSON file. A key given
/// twice becomes a list of strings. An argument that is not `k=v` is reported by its
/// length only, as it may be a secret typed in the wrong place.
pub(crate) fn parse_data_with(
    args: &[String],
    stdin: &mut dyn FnMut() -> Result<String, Failure>,
) -> Result<Map<String, Value>, Failure> {
    let mut stdin_used = false;
    let mut read_stdin = |what: &str| -> Result<String, Failure> {
        if stdin_used {
            return Err(Failure::local(format!(
                "stdin can be read only once ({what})"
            )));
        }
        stdin_used = true;
        stdin()
    };
    let read_file = |path: &str| -> Result<String, Failure> {
        std::fs::read_to_string(path).map_err(|e| {
            Failure::Local(anyhow::Error::new(e).context(format!("cannot read {path}")))
        })
    };
    let mut out = Map::new();
    for arg in args {
        if arg == "-" || (arg.starts_with('@') && !arg.contains('=')) {
            let text = if arg == "-" {
                read_stdin("-")?
            } else {
                read_file(arg.get(1..).unwrap_or_default())?
            };
            let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&text) else {
                return Err(Failure::local(format!("{arg}: expected a JSON object")));
            };
            out.extend(map);
            continue;
        }
        let Some((key, value)) = arg.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(Failure::local(format!(
                "invalid key/value pair of {} characters: expected key=value",
                arg.chars().count()
            )));
        };
        let value = if value == "-" {
            read_stdin(key)?
        } else if let Some(path) = value.strip_prefix('@') {
            read_file(path)?
        } else {
            value.to_owned()
        };
        match out.get_mut(key) {
            None => {
                out.insert(key.to_owned(), Value::String(value));
            }
            Some(Value::Array(items)) => items.push(Value::String(value)),
            Some(previous) => {
                let first = previous.take();
                *previous = Value::Array(vec![first, Value::String(value)]);
            }
        }
    }
    Ok(out)
}

/// `key=value` flag values (`--metadata`, `--param`) into a map of strings: no files, no
/// stdin. A value that is not `key=value` is reported by its length only.
pub(crate) fn parse_pairs(
    pairs: &[String],
    flag: &str,
) -> Result<BTreeMap<String, String>, Failure> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                Failure::local(format!(
                    "invalid {flag} value of {} characters: expected key=value",
                    pair.chars().count()
                ))
            })?;
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}
