//! Everything the server commands print: Vault-like key/value tables, JSON, success
//! lines, warnings and errors.
//!
//! Results go to stdout, errors and warnings to stderr. Error messages are built from
//! paths, statuses and the server's `errors` list only: never from a token, a request
//! body or a secret value.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "this module is the CLI's output: printing is its job"
)]

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};

use keyhaven_client::ClientError;
use serde::Serialize;
use serde_json::Value;

use crate::remote::Failure;

/// Print a value as pretty JSON.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| {
        Failure::Local(anyhow::Error::new(e).context("cannot encode the output as JSON"))
    })?;
    println!("{text}");
    Ok(())
}

/// Print a line on stdout.
pub fn line(text: &str) {
    println!("{text}");
}

/// Print a value as-is, with a newline only when stdout is a terminal (as Vault's
/// `-field`), so `$(keyhaven kv get --field …)` gets the exact value.
pub fn raw(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let result = if out.is_terminal() {
        writeln!(out, "{text}")
    } else {
        write!(out, "{text}")
    };
    result
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Local(anyhow::Error::new(e).context("cannot write the output")))
}

/// Print a prompt on stderr, without a newline.
pub fn prompt(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{text}");
    let _ = err.flush();
}

/// Print a warning on stderr.
pub fn warn(text: &str) {
    eprintln!("WARNING! {text}");
}

/// Print the server's warnings, if any.
pub fn warnings(list: &[String]) {
    if list.is_empty() {
        return;
    }
    let mut s = String::from("WARNING! The following warnings were returned from the server:\n");
    for w in list {
        let _ = writeln!(s, "\n  * {w}");
    }
    eprintln!("{s}");
}

/// Print a failure on stderr.
pub fn failure(f: &Failure) {
    match f {
        Failure::Local(e) => eprintln!("Error: {e:#}"),
        Failure::NotFound(message) => eprintln!("{message}"),
        Failure::Remote { context, error } => eprintln!("Error {context}: {}", describe(error)),
    }
}

/// A client error as Vault's CLI shows it: the status and each server message, or the
/// transport error with its causes.
pub fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Api {
            method,
            path,
            status,
            errors,
        } => {
            let mut s =
                format!("Error making API request.\n\nURL: {method} /v1/{path}\nCode: {status}.");
            if errors.is_empty() {
                s.push_str(" No error messages were returned.");
            } else {
                s.push_str(" Errors:\n");
                for e in errors {
                    let _ = write!(s, "\n* {e}");
                }
            }
            s
        }
        other => {
            let mut s = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let _ = write!(s, ": {cause}");
                source = cause.source();
            }
            s
        }
    }
}

/// A JSON value as Vault's tables show it (Go's formatting): strings bare, `null` as
/// `<nil>`, arrays as `[a b]`, objects as `map[k:v]`.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(value_text).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", map.get(k).map(value_text).unwrap_or_default()))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
    }
}

/// A two-column table with a `Key`/`Value` header, as Vault prints it.
pub fn table(rows: &[(String, String)]) -> String {
    columns(
        &["Key", "Value"],
        &rows
            .iter()
            .map(|(k, v)| vec![k.clone(), v.clone()])
            .collect::<Vec<_>>(),
    )
}

/// Columns separated by four spaces, each header underlined with dashes of its length.
pub fn columns(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let render = |cells: &[String]| -> String {
        let last = cells.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let width = widths.get(i).copied().unwrap_or(0);
                let _ = write!(line, "{cell:<width$}    ");
            }
        }
        line
    };
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let dashes: Vec<String> = headers
        .iter()
        .map(|h| "-".repeat(h.chars().count()))
        .collect();
    let mut out = vec![render(&header), render(&dashes)];
    out.extend(rows.iter().map(|r| render(r)));
    out.join("\n")
}

/// A section title as Vault prints it above a table: `==== Title ====`.
pub fn header(title: &str, width: usize) -> String {
    let pad = width.saturating_sub(title.chars().count() + 2).max(4) / 2;
    let bar = "=".repeat(pad);
    format!("{bar} {title} {bar}")
}

/// A titled table.
pub fn section(title: &str, rows: &[(String, String)]) -> String {
    let body = table(rows);
    let width = body.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    format!("{}\n{body}", header(title, width))
}

/// Read a secret: one line of stdin, trimmed. On a terminal, `label` is shown as the
/// prompt on stderr and echo is off while the line is typed. An empty line, or one that
/// cannot be read, is an error naming `what`.
pub fn read_secret(label: &str, what: &str) -> Result<secrecy::SecretString, Failure> {
    use secrecy::ExposeSecret as _;
    use std::io::BufRead as _;
    use zeroize::Zeroize as _;
    let stdin = std::io::stdin();
    let mut line = String::new();
    let read = if stdin.is_terminal() {
        prompt(&format!("{label} (will be hidden): "));
        let echo_off = EchoOff::new(&stdin);
        let read = stdin.lock().read_line(&mut line);
        drop(echo_off);
        prompt("\n");
        read
    } else {
        stdin.lock().read_line(&mut line)
    };
    let value = secrecy::SecretString::from(line.trim());
    line.zeroize();
    read.map_err(|e| {
        Failure::Local(anyhow::Error::new(e).context(format!("cannot read the {what} from stdin")))
    })?;
    if value.expose_secret().is_empty() {
        return Err(Failure::local(format!("no {what} given")));
    }
    Ok(value)
}

/// Terminal echo turned off until drop (no-op when the terminal cannot be configured).
struct EchoOff<'a> {
    stdin: &'a std::io::Stdin,
    saved: Option<rustix::termios::Termios>,
}

impl<'a> EchoOff<'a> {
    fn new(stdin: &'a std::io::Stdin) -> Self {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(stdin).ok();
        if let Some(orig) = &saved {
            let mut quiet = orig.clone();
            quiet.local_modes.remove(LocalModes::ECHO);
            if tcsetattr(stdin, OptionalActions::Now, &quiet).is_err() {
                return EchoOff { stdin, saved: None };
            }
        }
        EchoOff { stdin, saved }
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        if let Some(orig) = &self.saved {
            let _ =
                rustix::termios::tcsetattr(self.stdin, rustix::termios::OptionalActions::Now, orig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_look_like_vaults() {
        let t = table(&[
            ("password".into(), "M1".into()),
            ("user".into(), "u".into()),
        ]);
        assert_eq!(
            t,
            "Key         Value\n---         -----\npassword    M1\nuser        u"
        );
        let t = columns(&["Keys"], &[vec!["a".into()], vec!["b/".into()]]);
        assert_eq!(t, "Keys\n----\na\nb/");
    }

    #[test]
    fn values_are_formatted_like_go() {
        assert_eq!(value_text(&json!(null)), "<nil>");
        assert_eq!(value_text(&json!("s")), "s");
        assert_eq!(value_text(&json!([1, "a"])), "[1 a]");
        assert_eq!(
            value_text(&json!({"b": 1, "a": {"c": true}})),
            "map[a:map[c:true] b:1]"
        );
    }

    #[test]
    fn api_errors_are_described_without_bodies() {
        let e = ClientError::Api {
            method: "PUT",
            path: "kv/data/a".into(),
            status: 400,
            errors: vec!["bad cas".into()],
        };
        let d = describe(&e);
        assert!(
            d.contains("Code: 400") && d.contains("* bad cas") && d.contains("PUT /v1/kv/data/a"),
            "{d}"
        );
    }
}
