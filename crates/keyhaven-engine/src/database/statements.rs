//! Statements as operators write them, and the queries a plugin runs for them.
//!
//! A statements field (`creation_statements`, `revocation_statements`, …) is a list; a
//! single string is a list of one. Each entry is, as OpenBao's PostgreSQL plugin reads
//! it: base64 of the text or the text itself; then, when it holds the word `END` outside
//! quotes (a `DO $$ … END $$` block), one query run as it is; otherwise a JSON array of
//! queries, or queries separated by `;`. Unlike OpenBao, a `;` inside a quoted string or
//! a dollar-quoted body does not split.
//!
//! Templates: `{{name}}` and `{{username}}` (the user), `{{password}}`, `{{expiration}}`
//! are replaced in one pass, so a value is never itself read as a template.

use base64::Engine as _;
use serde_json::Value;

use crate::error::EngineError;

/// Longest statements text accepted in one field, in bytes.
pub const MAX_STATEMENTS_BYTES: usize = 64 * 1024;

/// Read a statements field: an array of strings, or one string. `None` when absent.
pub fn field(value: Option<&Value>, key: &str) -> Result<Option<Vec<String>>, EngineError> {
    let list = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) if s.trim().is_empty() => {}
                    Value::String(s) => out.push(s.clone()),
                    _ => {
                        return Err(EngineError::invalid(format!(
                            "{key} must be a list of strings"
                        )));
                    }
                }
            }
            out
        }
        Some(_) => {
            return Err(EngineError::invalid(format!(
                "{key} must be a string or a list of strings"
            )));
        }
    };
    if list.iter().map(String::len).sum::<usize>() > MAX_STATEMENTS_BYTES {
        return Err(EngineError::invalid(format!(
            "{key} is longer than {MAX_STATEMENTS_BYTES} bytes"
        )));
    }
    Ok(Some(list))
}

/// The queries to run for `entries`, in order.
pub fn queries(entries: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in entries {
        let text = decode_base64(entry);
        if is_multiline(&text) {
            let trimmed = text.trim();
            if !trimmed.is_empty() {
                out.push(trimmed.to_owned());
            }
            continue;
        }
        if text.trim_start().starts_with('[')
            && let Ok(list) = serde_json::from_str::<Vec<String>>(&text)
        {
            out.extend(
                list.iter()
                    .map(|q| q.trim())
                    .filter(|q| !q.is_empty())
                    .map(str::to_owned),
            );
            continue;
        }
        out.extend(split(&text));
    }
    out
}

/// The text of an entry given as standard base64 (as OpenBao accepts), or the entry.
fn decode_base64(entry: &str) -> String {
    let trimmed = entry.trim();
    if trimmed.is_empty() || trimmed.contains(char::is_whitespace) {
        return entry.to_owned();
    }
    match base64::engine::general_purpose::STANDARD.decode(trimmed) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => entry.to_owned(),
        },
        Err(_) => entry.to_owned(),
    }
}

/// Where the quoting state of SQL text stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote<'a> {
    None,
    Single,
    Double,
    /// Inside `$tag$ … $tag$` (the tag with its dollars).
    Dollar(&'a str),
}

/// Calls `on_byte(index, in_quotes)` for every byte of `sql`, tracking quotes; dollar
/// quotes (`$$ … $$`) count only when `dollar` is set.
fn scan(sql: &str, dollar: bool, mut on_byte: impl FnMut(usize, bool)) {
    let bytes = sql.as_bytes();
    let mut state = Quote::None;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match state {
            Quote::None => match b {
                b'\'' => {
                    state = Quote::Single;
                    on_byte(i, true);
                }
                b'"' => {
                    state = Quote::Double;
                    on_byte(i, true);
                }
                b'$' if dollar => match dollar_tag(sql, i) {
                    Some(tag) => {
                        for k in i..i + tag.len() {
                            on_byte(k, true);
                        }
                        i += tag.len();
                        state = Quote::Dollar(tag);
                        continue;
                    }
                    None => on_byte(i, false),
                },
                _ => on_byte(i, false),
            },
            Quote::Single | Quote::Double => {
                on_byte(i, true);
                let close = if state == Quote::Single { b'\'' } else { b'"' };
                if b == close {
                    state = Quote::None;
                }
            }
            Quote::Dollar(tag) => {
                if sql.get(i..).is_some_and(|rest| rest.starts_with(tag)) {
                    for k in i..i + tag.len() {
                        on_byte(k, true);
                    }
                    i += tag.len();
                    state = Quote::None;
                    continue;
                }
                on_byte(i, true);
            }
        }
        i += 1;
    }
}

/// The dollar-quote tag (`$$`, `$body$`) starting at byte `at`, if one does.
fn dollar_tag(sql: &str, at: usize) -> Option<&str> {
    let rest = sql.get(at + 1..)?;
    let end = rest.find('$')?;
    let inner = rest.get(..end)?;
    let ok = inner
        .chars()
        .enumerate()
        .all(|(k, c)| c == '_' || c.is_ascii_alphabetic() || (k > 0 && c.is_ascii_digit()));
    if ok { sql.get(at..at + end + 2) } else { None }
}

/// Whether `sql` holds the word `END` outside single and double quotes (a dollar-quoted
/// body counts: `DO $$ BEGIN … END $$`): a block to run as it is.
pub fn is_multiline(sql: &str) -> bool {
    let mut bare = Vec::with_capacity(sql.len());
    scan(sql, false, |i, quoted| {
        let b = sql.as_bytes().get(i).copied().unwrap_or(b' ');
        bare.push(if quoted { b' ' } else { b.to_ascii_uppercase() });
    });
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    bare.windows(3).enumerate().any(|(i, w)| {
        w == b"END"
            && (i == 0 || bare.get(i - 1).is_some_and(|b| !word(*b)))
            && bare.get(i + 3).is_none_or(|b| !word(*b))
    })
}

/// `sql` split on `;` outside quotes, each part trimmed, empty parts dropped.
pub fn split(sql: &str) -> Vec<String> {
    let mut cuts = Vec::new();
    scan(sql, true, |i, quoted| {
        if !quoted && sql.as_bytes().get(i) == Some(&b';') {
            cuts.push(i);
        }
    });
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain(std::iter::once(sql.len())) {
        if let Some(part) = sql.get(start..cut) {
            let part = part.trim();
            if !part.is_empty() {
                out.push(part.to_owned());
            }
        }
        start = cut + 1;
    }
    out
}

/// `template` with each `{{key}}` of `values` replaced by its value, in one pass.
pub fn substitute(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        let found = values.iter().find_map(|(k, v)| {
            let tail = after
                .strip_prefix("{{")?
                .strip_prefix(*k)?
                .strip_prefix("}}")?;
            Some((*v, tail))
        });
        match found {
            Some((value, tail)) => {
                out.push_str(value);
                rest = tail;
            }
            None => {
                out.push('{');
                rest = after.get(1..).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(entries: &[&str]) -> Vec<String> {
        queries(&entries.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn entries_split_on_semicolons_outside_quotes() {
        assert_eq!(
            q(&[
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'; GRANT SELECT ON t TO \"{{name}}\";"
            ]),
            vec![
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'",
                "GRANT SELECT ON t TO \"{{name}}\""
            ]
        );
        assert_eq!(
            q(&["SELECT 'a;b'; SELECT \"x;y\"", "  ;  ", "SELECT 1"]),
            vec!["SELECT 'a;b'", "SELECT \"x;y\"", "SELECT 1"]
        );
        assert_eq!(
            q(&[
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql; SELECT 2"
            ]),
            vec![
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
                "SELECT 2"
            ]
        );
    }

    #[test]
    fn blocks_with_end_run_as_they_are() {
        let block = "DO $$ BEGIN IF NOT EXISTS (SELECT 1) THEN CREATE ROLE x; END IF; END $$;";
        assert!(is_multiline(block));
        assert_eq!(q(&[block]), vec![block]);
        // END inside quotes or as part of a word does not count.
        assert!(!is_multiline("SELECT 'END'; SELECT \"END\""));
        assert!(!is_multiline("SELECT legend, ending FROM t"));
        assert!(is_multiline("begin; select 1; end"));
    }

    #[test]
    fn base64_and_json_arrays_are_accepted() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("SELECT 1; SELECT 2");
        assert_eq!(q(&[&b64]), vec!["SELECT 1", "SELECT 2"]);
        assert_eq!(
            q(&["[\"SELECT 1; SELECT 2\", \"SELECT 3\"]"]),
            vec!["SELECT 1; SELECT 2", "SELECT 3"]
        );
        let b64_json = base64::engine::general_purpose::STANDARD.encode("[\"SELECT 4\"]");
        assert_eq!(q(&[&b64_json]), vec!["SELECT 4"]);
    }

    #[test]
    fn field_takes_a_string_or_a_list() {
        let one = serde_json::json!("GRANT SELECT, INSERT ON t TO x");
        assert_eq!(
            field(Some(&one), "s").unwrap().unwrap(),
            vec!["GRANT SELECT, INSERT ON t TO x"]
        );
        let list = serde_json::json!(["a", "", "b"]);
        assert_eq!(field(Some(&list), "s").unwrap().unwrap(), vec!["a", "b"]);
        assert_eq!(field(None, "s").unwrap(), None);
        let err = field(Some(&serde_json::json!([1])), "creation_statements").unwrap_err();
        assert!(err.to_string().contains("creation_statements"), "{err}");
    }

    #[test]
    fn substitution_is_one_pass() {
        let out = substitute(
            "CREATE ROLE \"{{name}}\" PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' {{other}}",
            &[("name", "u"), ("password", "{{name}}"), ("expiration", "e")],
        );
        assert_eq!(
            out,
            "CREATE ROLE \"u\" PASSWORD '{{name}}' VALID UNTIL 'e' {{other}}"
        );
        assert_eq!(substitute("{{", &[]), "{{");
        assert_eq!(substitute("a{{{name}}", &[("name", "b")]), "a{b");
    }
}
