//! Usernames of dynamic credentials.
//!
//! Without a `username_template` the name is OpenBao's PostgreSQL default,
//! `v-<display name, 8>-<role, 8>-<20 random>-<unix seconds>`, cut to 63 characters.
//! A `username_template` may use a subset of OpenBao's Go templates: text, and actions
//! `{{ VALUE | FILTER | … }}` where VALUE is `.DisplayName`, `.RoleName`, `random N`,
//! `unix_time`, `unix_time_millis` or `uuid`, and a FILTER is `truncate N`, `lowercase`,
//! `uppercase` or `replace "old" "new"`. Anything else is refused when the
//! configuration is written, naming what is not supported.

use crate::error::EngineError;

/// PostgreSQL's identifier limit (`NAMEDATALEN - 1`).
pub const MAX_USERNAME: usize = 63;
/// Longest template accepted.
pub const MAX_TEMPLATE: usize = 1024;
/// Largest `random N` and `truncate N`.
const MAX_N: usize = 128;

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// What a username is made from.
pub struct Inputs<'a> {
    /// The requesting token's display name.
    pub display_name: &'a str,
    /// The role's name.
    pub role_name: &'a str,
    /// Unix time in milliseconds.
    pub unix_millis: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    DisplayName,
    RoleName,
    Random(usize),
    UnixTime,
    UnixTimeMillis,
    Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Filter {
    Truncate(usize),
    Lowercase,
    Uppercase,
    Replace(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Action(Value, Vec<Filter>),
}

/// A parsed username template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

fn bad(what: impl std::fmt::Display) -> EngineError {
    EngineError::invalid(format!("unable to parse username_template: {what}"))
}

/// Split an action into words, keeping `"quoted strings"` whole (without quotes).
fn words(action: &str) -> Result<Vec<(String, bool)>, EngineError> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '|' {
            chars.next();
            out.push(("|".to_owned(), false));
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(e) => s.push(e),
                        None => return Err(bad("unterminated string")),
                    },
                    Some(ch) => s.push(ch),
                    None => return Err(bad("unterminated string")),
                }
            }
            out.push((s, true));
        } else {
            let mut s = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == '|' || ch == '"' {
                    break;
                }
                s.push(ch);
                chars.next();
            }
            out.push((s, false));
        }
    }
    Ok(out)
}

fn number(word: Option<&(String, bool)>, func: &str) -> Result<usize, EngineError> {
    match word {
        Some((w, false)) => match w.parse::<usize>() {
            Ok(n) if n <= MAX_N => Ok(n),
            _ => Err(bad(format!("{func} takes a number from 0 to {MAX_N}"))),
        },
        _ => Err(bad(format!("{func} takes a number"))),
    }
}

impl Template {
    /// Parse a template; the error names what is not supported.
    pub fn parse(text: &str) -> Result<Template, EngineError> {
        if text.len() > MAX_TEMPLATE {
            return Err(bad(format!("longer than {MAX_TEMPLATE} bytes")));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let (lit, after) = rest.split_at(open);
            if !lit.is_empty() {
                parts.push(Part::Text(lit.to_owned()));
            }
            let body = after.get(2..).unwrap_or("");
            let close = body.find("}}").ok_or_else(|| bad("unclosed action"))?;
            let action = body.get(..close).unwrap_or("");
            rest = body.get(close + 2..).unwrap_or("");
            parts.push(Self::action(action)?);
        }
        if rest.contains("}}") {
            return Err(bad("unexpected \"}}\""));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template(parts))
    }

    fn action(action: &str) -> Result<Part, EngineError> {
        let words = words(action.trim_matches('-'))?;
        let mut commands = words.split(|(w, q)| w == "|" && !q);
        let first = commands.next().unwrap_or(&[]);
        let value = match first {
            [(w, false)] if w == ".DisplayName" => Value::DisplayName,
            [(w, false)] if w == ".RoleName" => Value::RoleName,
            [(w, false)] if w == "unix_time" => Value::UnixTime,
            [(w, false)] if w == "unix_time_millis" => Value::UnixTimeMillis,
            [(w, false)] if w == "uuid" => Value::Uuid,
            [(w, false), n] if w == "random" => Value::Random(number(Some(n), "random")?),
            [] => return Err(bad("empty action")),
            [(w, _), ..] => return Err(bad(format!("unsupported value {w:?}"))),
        };
        let mut filters = Vec::new();
        for command in commands {
            filters.push(match command {
                [(w, false), n] if w == "truncate" => {
                    Filter::Truncate(number(Some(n), "truncate")?)
                }
                [(w, false)] if w == "lowercase" => Filter::Lowercase,
                [(w, false)] if w == "uppercase" => Filter::Uppercase,
                [(w, false), (a, true), (b, true)] if w == "replace" => {
                    Filter::Replace(a.clone(), b.clone())
                }
                [] => return Err(bad("empty pipeline stage")),
                [(w, _), ..] => return Err(bad(format!("unsupported function {w:?}"))),
            });
        }
        Ok(Part::Action(value, filters))
    }

    /// A username from this template.
    pub fn render(&self, inputs: &Inputs<'_>) -> Result<String, EngineError> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(value, filters) => {
                    let mut v = match value {
                        Value::DisplayName => inputs.display_name.to_owned(),
                        Value::RoleName => inputs.role_name.to_owned(),
                        Value::Random(n) => random(*n)?,
                        Value::UnixTime => (inputs.unix_millis / 1000).to_string(),
                        Value::UnixTimeMillis => inputs.unix_millis.to_string(),
                        Value::Uuid => uuid::Uuid::new_v4().to_string(),
                    };
                    for f in filters {
                        v = match f {
                            Filter::Truncate(n) => truncate(&v, *n).to_owned(),
                            Filter::Lowercase => v.to_lowercase(),
                            Filter::Uppercase => v.to_uppercase(),
                            Filter::Replace(a, b) if !a.is_empty() => v.replace(a.as_str(), b),
                            Filter::Replace(..) => v,
                        };
                    }
                    out.push_str(&v);
                }
            }
        }
        Ok(out)
    }
}

/// The first `n` characters of `s`.
fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

/// `n` random alphanumeric characters.
pub fn random(n: usize) -> Result<String, EngineError> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        keyhaven_crypto::fill_random(&mut buf)
            .map_err(|_| EngineError::Crypto(crate::error::CryptoOp::Random))?;
        // 62 * 4 = 248: bytes at or above it are dropped so every character is as likely.
        for b in buf {
            if out.len() == n {
                break;
            }
            if let Some(c) = (b < 248)
                .then(|| ALPHANUMERIC.get(usize::from(b) % ALPHANUMERIC.len()))
                .flatten()
            {
                out.push(char::from(*c));
            }
        }
    }
    Ok(out)
}

/// A username for `inputs`: from `template`, or OpenBao's default. Longer than
/// PostgreSQL's 63 characters is refused (PostgreSQL would cut it silently).
pub fn generate(template: Option<&Template>, inputs: &Inputs<'_>) -> Result<String, EngineError> {
    let name = match template {
        Some(t) => t.render(inputs)?,
        None => {
            let full = format!(
                "v-{}-{}-{}-{}",
                truncate(inputs.display_name, 8),
                truncate(inputs.role_name, 8),
                random(20)?,
                inputs.unix_millis / 1000
            );
            truncate(&full, MAX_USERNAME).to_owned()
        }
    };
    if name.is_empty() {
        return Err(EngineError::invalid(
            "the username template gave an empty name",
        ));
    }
    if name.len() > MAX_USERNAME {
        return Err(EngineError::invalid(format!(
            "the username template gave a name of {} bytes; PostgreSQL allows {MAX_USERNAME}",
            name.len()
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(display: &'a str, role: &'a str) -> Inputs<'a> {
        Inputs {
            display_name: display,
            role_name: role,
            unix_millis: 1_700_000_000_123,
        }
    }

    #[test]
    fn default_matches_openbao_shape() {
        let name = generate(None, &inputs("token", "readonly-role")).unwrap();
        let rest = name.strip_prefix("v-token-readonly-").expect(&name);
        let (random, time) = rest.split_once('-').expect(&name);
        assert_eq!(random.len(), 20, "{name}");
        assert!(random.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
        assert_eq!(time, "1700000000");
        // Two names differ in their random part.
        assert_ne!(
            name,
            generate(None, &inputs("token", "readonly-role")).unwrap()
        );
    }

    #[test]
    fn default_keeps_eight_characters_of_each_name() {
        let name = generate(None, &inputs("aaaaaaaaaaaa", "bbbbbbbbbbbb")).unwrap();
        // v- + 8 + - + 8 + - + 20 + - + 10 = 51: under the limit, nothing is cut.
        assert_eq!(name.len(), 51, "{name}");
        assert!(name.starts_with("v-aaaaaaaa-bbbbbbbb-"));
        let random_part = &name[20..40];
        assert!(random_part.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn custom_templates_render() {
        let t = Template::parse(
            "app_{{.RoleName | truncate 4 | uppercase}}_{{ random 6 }}_{{unix_time}}",
        )
        .unwrap();
        let name = generate(Some(&t), &inputs("token", "reader")).unwrap();
        assert!(name.starts_with("app_READ_"), "{name}");
        assert!(name.ends_with("_1700000000"), "{name}");
        assert_eq!(name.len(), "app_READ_".len() + 6 + 1 + 10);
        let t = Template::parse("{{.DisplayName | replace \"-\" \"_\" | lowercase}}").unwrap();
        assert_eq!(
            generate(Some(&t), &inputs("Ci-Bot", "r")).unwrap(),
            "ci_bot"
        );
    }

    #[test]
    fn unsupported_templates_are_refused_by_name() {
        for (text, needle) in [
            ("{{ .Secret }}", "\".Secret\""),
            ("{{ .RoleName | sha256 }}", "\"sha256\""),
            ("{{ random x }}", "random takes a number"),
            ("{{ .RoleName", "unclosed"),
            ("{{}}", "empty action"),
            ("{{ .RoleName | truncate 999 }}", "truncate"),
        ] {
            let err = Template::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn too_long_names_are_refused() {
        let t = Template::parse("{{random 64}}").unwrap();
        let err = generate(Some(&t), &inputs("t", "r")).unwrap_err();
        assert!(err.to_string().contains("63"), "{err}");
    }
}
