//! Password policies (`sys/policies/password/<name>`): how generated passwords look.
//!
//! A policy is OpenBao's HCL (or its JSON form):
//!
//! ```hcl
//! length = 20
//! rule "charset" {
//!   charset   = "abcdefghijklmnopqrstuvwxyz"
//!   min-chars = 1
//! }
//! rule "charset" {
//!   charset   = "0123456789"
//!   min-chars = 1
//! }
//! ```
//!
//! A password is `length` characters drawn uniformly from the union of every rule's
//! charset, redrawn until each rule has at least its `min-chars` characters: uniform over
//! the passwords the policy allows, as OpenBao's generator is. The policy text may also be
//! given base64-encoded, as OpenBao accepts it.
//!
//! Unlike OpenBao, keys the generator does not know (`min_chars` for `min-chars`, say) are
//! refused rather than ignored: an ignored constraint would silently weaken every password
//! the policy makes.

use base64::Engine as _;
use hcl_edit::Span as _;
use hcl_edit::structure::{Body, Structure};
use serde_json::{Map, Value};

use std::sync::Arc;

use keyhaven_storage::Store as _;

use crate::core::{Core, Unsealed};
use crate::error::{CryptoOp, EngineError};
use crate::policy::parse::{echo, expr_value, line_of};
use crate::request::{Operation, Request, Response};

/// The shortest password a policy may ask for (OpenBao's bound).
pub const MIN_LENGTH: usize = 4;
/// The longest password a policy may ask for (OpenBao's bound).
pub const MAX_LENGTH: usize = 100;
/// The error for a length out of bounds (OpenBao's words, without a prefix).
pub const LENGTH_ERROR: &str = "passwords must be between 4 and 100 characters";
/// Policies larger than this are refused.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Rules per policy, at most.
const MAX_RULES: usize = 64;
/// Candidates drawn per password before the policy is declared unsatisfiable.
const MAX_CANDIDATES: usize = 100_000;

/// One `rule "charset"`: at least `min_chars` characters from `charset`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CharsetRule {
    charset: Vec<char>,
    min_chars: usize,
}

/// A parsed, validated password policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    length: usize,
    rules: Vec<CharsetRule>,
    /// Every rule's characters, sorted and without repeats.
    charset: Vec<char>,
}

impl PasswordPolicy {
    /// Parse policy text (HCL, JSON, or either base64-encoded). The error names what is
    /// wrong and repeats at most a short excerpt of the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_text(&decode_text(text))
    }

    /// Parse policy text already decoded from base64 ([`decode_text`]).
    fn parse_text(text: &str) -> Result<Self, String> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(format!(
                "the policy is larger than {MAX_POLICY_BYTES} bytes"
            ));
        }
        let raw = if text.trim_start().starts_with('{') {
            raw_from_json(text)?
        } else {
            raw_from_hcl(text)?
        };
        Self::build(raw)
    }

    fn build(raw: RawPolicy) -> Result<Self, String> {
        let length = raw.length.ok_or("length must be > 0")?;
        if !(MIN_LENGTH..=MAX_LENGTH).contains(&length) {
            return Err(LENGTH_ERROR.to_owned());
        }
        if raw.rules.is_empty() {
            return Err("must specify at least one rule".to_owned());
        }
        if raw.rules.len() > MAX_RULES {
            return Err(format!("a policy holds at most {MAX_RULES} rules"));
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut charset = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let mut chars: Vec<char> = r.charset.chars().collect();
            if chars.is_empty() {
                return Err(format!("rule {}: charset is empty", i + 1));
            }
            if let Some(c) = chars
                .iter()
                .find(|c| c.is_control() || (c.is_whitespace() && **c != ' '))
            {
                return Err(format!(
                    "rule {}: non-printable character in charset (U+{:04X})",
                    i + 1,
                    u32::from(*c)
                ));
            }
            if r.min_chars > length {
                return Err(format!(
                    "rule {}: min-chars {} is more than the length {length}",
                    i + 1,
                    r.min_chars
                ));
            }
            charset.extend_from_slice(&chars);
            chars.sort_unstable();
            chars.dedup();
            rules.push(CharsetRule {
                charset: chars,
                min_chars: r.min_chars,
            });
        }
        charset.sort_unstable();
        charset.dedup();
        Ok(PasswordPolicy {
            length,
            rules,
            charset,
        })
    }

    /// The password length.
    pub fn length(&self) -> usize {
        self.length
    }

    /// Generate a password. Fails with a 400 naming the policy as unsatisfiable when no
    /// candidate met every rule within the bound.
    pub fn generate(&self) -> Result<zeroize::Zeroizing<String>, EngineError> {
        let n = self.charset.len() as u32;
        // Draws at or above `zone` would bias the modulo; they are drawn again.
        let zone = u32::MAX - (u32::MAX % n);
        let mut random = zeroize::Zeroizing::new(vec![0u8; self.length * 4 * 2]);
        let mut candidate = zeroize::Zeroizing::new(Vec::<char>::with_capacity(self.length));
        for _ in 0..MAX_CANDIDATES {
            candidate.clear();
            while candidate.len() < self.length {
                keyhaven_crypto::fill_random(&mut random)
                    .map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
                for chunk in random.chunks_exact(4) {
                    let Ok(bytes) = <[u8; 4]>::try_from(chunk) else {
                        continue;
                    };
                    let v = u32::from_le_bytes(bytes);
                    if v >= zone {
                        continue;
                    }
                    let Some(c) = self.charset.get((v % n) as usize) else {
                        continue;
                    };
                    candidate.push(*c);
                    if candidate.len() == self.length {
                        break;
                    }
                }
            }
            if self.rules.iter().all(|r| {
                candidate
                    .iter()
                    .filter(|c| r.charset.binary_search(c).is_ok())
                    .count()
                    >= r.min_chars
            }) {
                return Ok(zeroize::Zeroizing::new(candidate.iter().collect()));
            }
        }
        Err(EngineError::invalid(format!(
            "unable to generate a password from the policy in {MAX_CANDIDATES} attempts: are the rules impossible?"
        )))
    }
}

/// Policy text as given, or decoded when it came base64-encoded (as OpenBao accepts, and
/// keeps, it).
fn decode_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.trim().is_empty() || text.len() > MAX_POLICY_BYTES * 2 {
        return text.into();
    }
    match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
        Ok(bytes) => String::from_utf8(bytes).map_or(text.into(), Into::into),
        Err(_) => text.into(),
    }
}

/// The fields of a policy before validation.
#[derive(Default)]
struct RawPolicy {
    length: Option<usize>,
    rules: Vec<RawRule>,
}

struct RawRule {
    charset: String,
    min_chars: usize,
}

fn raw_from_hcl(text: &str) -> Result<RawPolicy, String> {
    let body: Body = hcl_edit::parser::parse_body(text).map_err(|e| {
        let loc = e.location();
        format!(
            "unable to decode: HCL syntax error at line {}, column {}: {}",
            loc.line(),
            loc.column(),
            e.message()
        )
    })?;
    let mut raw = RawPolicy::default();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                let line = line_of(text, attr.key.span());
                let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
                match attr.key.as_str() {
                    "length" => {
                        let v =
                            expr_value(&attr.value, line).map_err(|e| e.message().to_owned())?;
                        raw.length = Some(length_of(&v).map_err(|e| format!("{e}{at}"))?);
                    }
                    other => {
                        return Err(format!(
                            "unknown key {}{at}: a policy holds `length` and `rule \"charset\" {{ … }}` blocks",
                            echo(other)
                        ));
                    }
                }
            }
            Structure::Block(block) => {
                let line = line_of(text, block.ident.span());
                let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
                if block.ident.as_str() != "rule" {
                    return Err(format!(
                        "unknown block {}{at}: a policy holds `length` and `rule \"charset\" {{ … }}` blocks",
                        echo(block.ident.as_str())
                    ));
                }
                let [label] = block.labels.as_slice() else {
                    return Err(format!(
                        "a rule block takes exactly one label, its type{at}"
                    ));
                };
                let mut fields = Map::new();
                for inner in block.body.iter() {
                    match inner {
                        Structure::Attribute(a) => {
                            let l = line_of(text, a.key.span());
                            let v = expr_value(&a.value, l).map_err(|e| e.message().to_owned())?;
                            fields.insert(a.key.as_str().to_owned(), v);
                        }
                        Structure::Block(b) => {
                            return Err(format!(
                                "unexpected block {} in a rule{at} (write `key = value`)",
                                echo(b.ident.as_str())
                            ));
                        }
                    }
                }
                raw.rules
                    .push(rule_of(label.as_str(), &fields).map_err(|e| format!("{e}{at}"))?);
            }
        }
    }
    Ok(raw)
}

fn raw_from_json(text: &str) -> Result<RawPolicy, String> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| format!("unable to decode: invalid JSON: {e}"))?;
    let Value::Object(root) = root else {
        return Err("unable to decode: the policy must be a JSON object".to_owned());
    };
    let mut raw = RawPolicy::default();
    for (key, value) in &root {
        match key.as_str() {
            "length" => raw.length = Some(length_of(value)?),
            "rule" => {
                // HCL's JSON form: `rule` is an object of type → body (or a list of
                // bodies), or a list of such objects.
                let groups: Vec<&Map<String, Value>> = match value {
                    Value::Object(m) => vec![m],
                    Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_object().ok_or("`rule` entries must be objects"))
                        .collect::<Result<_, _>>()?,
                    _ => return Err("`rule` must be an object or a list of objects".to_owned()),
                };
                for group in groups {
                    for (kind, body) in group {
                        let bodies: Vec<&Value> = match body {
                            Value::Array(items) => items.iter().collect(),
                            other => vec![other],
                        };
                        for body in bodies {
                            let fields = body.as_object().ok_or_else(|| {
                                format!("rule {}: its body must be an object", echo(kind))
                            })?;
                            raw.rules.push(rule_of(kind, fields)?);
                        }
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown key {}: a policy holds `length` and `rule`",
                    echo(other)
                ));
            }
        }
    }
    Ok(raw)
}

fn length_of(v: &Value) -> Result<usize, String> {
    match v.as_u64() {
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        None if v.as_i64().is_some() => Err("length must be > 0".to_owned()),
        None => Err("length must be a whole number".to_owned()),
    }
}

fn rule_of(kind: &str, fields: &Map<String, Value>) -> Result<RawRule, String> {
    if kind != "charset" {
        return Err(format!(
            "unable to parse rules: unrecognized rule type {}",
            echo(kind)
        ));
    }
    let mut charset = None;
    let mut min_chars = 0usize;
    for (key, value) in fields {
        match key.as_str() {
            "charset" => {
                charset = Some(value.as_str().ok_or("charset must be a string")?.to_owned());
            }
            "min-chars" => {
                min_chars = value
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or("min-chars must be a whole number, 0 or more")?;
            }
            other => {
                return Err(format!(
                    "unknown key {} in a charset rule (it takes `charset` and `min-chars`)",
                    echo(other)
                ));
            }
        }
    }
    let charset = charset.ok_or("a charset rule needs `charset`")?;
    Ok(RawRule { charset, min_chars })
}

/// Where password policies live in the barrier view.
pub(crate) const STORAGE_PREFIX: &str = "core/password_policy/";

/// The text of the stored policy `name`, from a view scoped to [`STORAGE_PREFIX`].
pub(crate) async fn stored_text(
    policies: &Arc<dyn keyhaven_storage::Store>,
    name: &str,
) -> Result<Option<String>, EngineError> {
    let Some(bytes) = policies.get(name).await? else {
        return Ok(None);
    };
    let stored: StoredPolicy = serde_json::from_slice(&bytes).map_err(|_| {
        EngineError::Corrupt(format!("password policy {} is malformed", echo(name)))
    })?;
    Ok(Some(stored.policy))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredPolicy {
    policy: String,
}

impl Core {
    /// `LIST sys/policies/password`.
    pub(crate) async fn list_password_policies(
        &self,
        inner: &Arc<Unsealed>,
    ) -> Result<Response, EngineError> {
        const PAGE: usize = 1000;
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = inner
                .barrier
                .list_page(STORAGE_PREFIX, after.as_deref(), PAGE)
                .await?;
            keys.extend(page.iter().filter(|k| !k.ends_with('/')).cloned());
            if page.len() < PAGE {
                break;
            }
            after = page.last().cloned();
        }
        if keys.is_empty() {
            return Err(EngineError::NotFound(String::new()));
        }
        let mut data = Map::new();
        data.insert("keys".to_owned(), Value::from(keys));
        Ok(Response::data(data))
    }

    /// `sys/policies/password/<name>` (read, write, delete) and its `generate`.
    pub(crate) async fn password_policy(
        &self,
        inner: &Arc<Unsealed>,
        op: Operation,
        name: &str,
        generate: bool,
        req: &Request,
    ) -> Result<Response, EngineError> {
        if name.is_empty() {
            return Err(EngineError::invalid("missing policy name"));
        }
        let key = format!("{STORAGE_PREFIX}{name}");
        let stored = || async {
            let Some(bytes) = inner.barrier.get(&key).await? else {
                return Ok(None);
            };
            let stored: StoredPolicy = serde_json::from_slice(&bytes).map_err(|_| {
                EngineError::Corrupt(format!("password policy {} is malformed", echo(name)))
            })?;
            Ok::<_, EngineError>(Some(stored.policy))
        };
        if generate {
            let Some(text) = stored().await? else {
                return Err(EngineError::NotFound("policy does not exist".to_owned()));
            };
            let policy = PasswordPolicy::parse(&text).map_err(|_| {
                EngineError::Corrupt(format!(
                    "stored password policy {} does not parse",
                    echo(name)
                ))
            })?;
            let password = policy.generate()?;
            let mut data = Map::new();
            data.insert("password".to_owned(), Value::String(password.to_string()));
            return Ok(Response::data(data));
        }
        match op {
            Operation::Read => {
                let Some(text) = stored().await? else {
                    return Err(EngineError::NotFound(String::new()));
                };
                let mut data = Map::new();
                data.insert("policy".to_owned(), Value::String(text));
                Ok(Response::data(data))
            }
            Operation::Create | Operation::Update => {
                let raw = crate::params::string(&req.data, "policy")?.unwrap_or_default();
                if raw.is_empty() {
                    return Err(EngineError::invalid("missing policy"));
                }
                let text = decode_text(raw).into_owned();
                let policy = PasswordPolicy::parse_text(&text).map_err(|e| {
                    if e == LENGTH_ERROR {
                        EngineError::invalid(e)
                    } else {
                        EngineError::invalid(format!("invalid password policy: {e}"))
                    }
                })?;
                // A policy no password satisfies is refused now rather than at first use.
                policy.generate()?;
                let bytes = serde_json::to_vec(&StoredPolicy { policy: text })
                    .map_err(|_| EngineError::Encode("a password policy"))?;
                inner.barrier.put(&key, bytes).await?;
                tracing::info!(target: "keyhaven::policy", password_policy = name, "password policy written");
                Ok(Response::no_content())
            }
            Operation::Delete => {
                inner.barrier.delete(&key).await?;
                tracing::info!(target: "keyhaven::policy", password_policy = name, "password policy deleted");
                Ok(Response::no_content())
            }
            _ => Err(EngineError::UnsupportedOperation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALNUM: &str = r#"
length = 24
rule "charset" {
  charset = "abcdefghijklmnopqrstuvwxyz"
  min-chars = 2
}
rule "charset" {
  charset = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
  min-chars = 2
}
rule "charset" {
  charset = "0123456789"
  min-chars = 3
}
rule "charset" {
  charset = "!@#$"
  min-chars = 1
}
"#;

    #[test]
    fn generated_passwords_meet_every_rule() {
        let p = PasswordPolicy::parse(ALNUM).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let pw = p.generate().unwrap();
            assert_eq!(pw.chars().count(), 24);
            assert!(pw.chars().filter(char::is_ascii_lowercase).count() >= 2);
            assert!(pw.chars().filter(char::is_ascii_uppercase).count() >= 2);
            assert!(pw.chars().filter(char::is_ascii_digit).count() >= 3);
            assert!(pw.chars().filter(|c| "!@#$".contains(*c)).count() >= 1);
            assert!(
                pw.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!@#$".contains(c))
            );
            seen.insert(pw.to_string());
        }
        assert_eq!(seen.len(), 200, "passwords repeat");
    }

    #[test]
    fn json_and_base64_forms_parse_to_the_same_policy() {
        let hcl = PasswordPolicy::parse(ALNUM).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(ALNUM);
        assert_eq!(PasswordPolicy::parse(&b64).unwrap(), hcl);
        let json = r#"{"length": 24, "rule": [
            {"charset": {"charset": "abcdefghijklmnopqrstuvwxyz", "min-chars": 2}},
            {"charset": {"charset": "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "min-chars": 2}},
            {"charset": [{"charset": "0123456789", "min-chars": 3}, {"charset": "!@#$", "min-chars": 1}]}
        ]}"#;
        assert_eq!(PasswordPolicy::parse(json).unwrap(), hcl);
    }

    #[test]
    fn bad_policies_name_what_is_wrong() {
        let cases = [
            (
                "length = 3\nrule \"charset\" { charset = \"ab\" }",
                "between 4 and 100",
            ),
            (
                "length = 101\nrule \"charset\" { charset = \"ab\" }",
                "between 4 and 100",
            ),
            (
                "rule \"charset\" { charset = \"ab\" }",
                "length must be > 0",
            ),
            ("length = 8", "at least one rule"),
            (
                "length = 8\nrule \"charset\" {\n charset = \"ab\"\n min_chars = 2\n}",
                "min_chars",
            ),
            (
                "length = 8\nrule \"regex\" { charset = \"ab\" }",
                "unrecognized rule type",
            ),
            (
                "length = 8\nrule \"charset\" { charset = \"\" }",
                "charset is empty",
            ),
            (
                "length = 8\nrule \"charset\" { charset = \"a\\tb\" }",
                "non-printable",
            ),
            (
                "length = 8\nrule \"charset\" {\n charset = \"ab\"\n min-chars = 9\n}",
                "more than the length",
            ),
            (
                "length = \"eight\"\nrule \"charset\" { charset = \"ab\" }",
                "whole number",
            ),
            ("length = 8\nrule \"charset\" {", "unable to decode"),
            ("{\"length\": 8, \"rules\": []}", "unknown key"),
        ];
        for (text, want) in cases {
            let err = PasswordPolicy::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn an_impossible_policy_is_reported_not_looped_on() {
        // Two disjoint charsets each needing 3 of only 4 characters.
        let p = PasswordPolicy::parse(
            "length = 4\nrule \"charset\" {\n charset = \"ab\"\n min-chars = 3\n}\nrule \"charset\" {\n charset = \"cd\"\n min-chars = 3\n}",
        )
        .unwrap();
        let err = p.generate().unwrap_err();
        assert!(err.to_string().contains("impossible"), "{err}");
    }
}
