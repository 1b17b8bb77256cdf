//! Policy text (Vault's HCL, or its JSON form) → a validated [`Policy`].
//!
//! What is accepted, per `path "<glob>" { … }` block:
//! - `capabilities`: a list of `create`, `read`, `update`, `patch`, `delete`, `list`,
//!   `sudo`, `deny`, and OpenBao's `scan` (accepted and reported by `sys/capabilities`; no
//!   keyhaven operation needs it yet, so it grants nothing today);
//! - `policy`: Vault's old shorthand (`deny`, `read`, `write`, `sudo`);
//! - `allowed_parameters` / `denied_parameters`: an object of parameter name → list of
//!   values (an empty list means any value; `"*"` names every parameter);
//! - `required_parameters`: a list of parameter names;
//! - `min_wrapping_ttl` / `max_wrapping_ttl`: a request on the path must ask for its
//!   response to be wrapped, with a TTL within the bounds (seconds or a Go duration; the
//!   maximum may not be below the minimum);
//! - `comment`: ignored.
//!
//! Vault keys keyhaven does not implement (`mfa_methods`, `pagination_limit`,
//! `expiration`, `control_group`,
//! `list_scan_response_keys_filter_path`) are refused rather than ignored, so that a
//! policy never silently grants more than its author meant (an ignored `expiration` would
//! keep granting). Templated paths (`{{identity.…}}`) are refused for the same reason.
//! A top-level `name` attribute is accepted and ignored, as Vault does.
//!
//! Globs: a trailing `*` matches any suffix; a `+` segment matches exactly one path
//! segment. A `*` anywhere but at the end, or `+*`, is refused.

use std::collections::HashMap;
use std::ops::Range;

use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Body, Structure};
use serde_json::{Map, Number, Value};

/// Policies larger than this are refused.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// How much of a caller-supplied string an error message repeats.
const MAX_ECHO: usize = 96;

/// Why a policy text was refused. The message names the offending key, capability or
/// path, and the line when the text is HCL; it never repeats more than a short excerpt of
/// the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to parse policy: {message}")]
pub struct PolicyParseError {
    message: String,
    line: Option<usize>,
}

impl PolicyParseError {
    fn new(message: impl Into<String>, line: Option<usize>) -> Self {
        let mut message = message.into();
        if let Some(l) = line {
            message.push_str(&format!(" (line {l})"));
        }
        PolicyParseError { message, line }
    }

    /// What is wrong, with the line when known.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The one-based line of the problem, for HCL input.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
}

/// A set of capabilities, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Caps(u16);

impl Caps {
    /// Nothing.
    pub const NONE: Caps = Caps(0);
    /// `deny`: refuses everything on the path, whatever else is granted there.
    pub const DENY: Caps = Caps(1);
    /// `create`.
    pub const CREATE: Caps = Caps(1 << 1);
    /// `read`.
    pub const READ: Caps = Caps(1 << 2);
    /// `update`.
    pub const UPDATE: Caps = Caps(1 << 3);
    /// `delete`.
    pub const DELETE: Caps = Caps(1 << 4);
    /// `list`.
    pub const LIST: Caps = Caps(1 << 5);
    /// `sudo`: needed in addition on root-protected paths.
    pub const SUDO: Caps = Caps(1 << 6);
    /// `patch`.
    pub const PATCH: Caps = Caps(1 << 7);
    /// `scan` (OpenBao): accepted and reported; no operation needs it yet.
    pub const SCAN: Caps = Caps(1 << 8);

    /// Names and bits, in alphabetical order (the order `sys/capabilities` reports).
    const NAMED: [(&'static str, Caps); 9] = [
        ("create", Caps::CREATE),
        ("delete", Caps::DELETE),
        ("deny", Caps::DENY),
        ("list", Caps::LIST),
        ("patch", Caps::PATCH),
        ("read", Caps::READ),
        ("scan", Caps::SCAN),
        ("sudo", Caps::SUDO),
        ("update", Caps::UPDATE),
    ];

    /// The capability called `name`.
    pub fn from_name(name: &str) -> Option<Caps> {
        Caps::NAMED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Caps) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union.
    pub const fn union(self, other: Caps) -> Caps {
        Caps(self.0 | other.0)
    }

    /// The names of the set bits, alphabetically.
    pub fn names(self) -> Vec<&'static str> {
        Caps::NAMED
            .iter()
            .filter(|(_, c)| self.contains(*c))
            .map(|(n, _)| *n)
            .collect()
    }
}

/// One `path` block, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The glob as written, without a leading `/` (e.g. `secret/data/team-a/*`).
    pub path: String,
    /// Granted capabilities (just [`Caps::DENY`] when the rule denies).
    pub caps: Caps,
    /// Lower-cased parameter name → allowed values (empty: any value).
    pub allowed_parameters: HashMap<String, Vec<Value>>,
    /// Lower-cased parameter name → denied values (empty: any value).
    pub denied_parameters: HashMap<String, Vec<Value>>,
    /// Parameters a request must carry.
    pub required_parameters: Vec<String>,
    /// The shortest wrapping TTL a request must ask for, in seconds (0: no bound).
    pub min_wrapping_ttl: u64,
    /// The longest wrapping TTL a request may ask for, in seconds (0: no bound).
    pub max_wrapping_ttl: u64,
    /// Where the block starts, for HCL input.
    pub line: Option<usize>,
}

/// A parsed and validated policy. Only [`Policy::parse`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// Parse policy text: HCL, or JSON when the text starts with `{`.
    pub fn parse(text: &str) -> Result<Policy, PolicyParseError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyParseError::new(
                format!("policy is larger than {MAX_POLICY_BYTES} bytes"),
                None,
            ));
        }
        let raw = if text.trim_start().starts_with('{') {
            json_rules(text)?
        } else {
            hcl_rules(text)?
        };
        let rules = raw
            .into_iter()
            .map(build_rule)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { rules })
    }

    /// The rules, in the order written.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// A `path` block before validation: its glob, line and keys.
struct RawRule {
    path: String,
    line: Option<usize>,
    entries: Vec<(String, Option<usize>, Value)>,
}

/// Shorten a caller-supplied string for an error message.
pub(crate) fn echo(s: &str) -> String {
    if s.len() <= MAX_ECHO {
        return format!("{s:?}");
    }
    let mut end = MAX_ECHO;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", s.get(..end).unwrap_or_default())
}

pub(crate) fn line_of(text: &str, span: Option<Range<usize>>) -> Option<usize> {
    let start = span?.start;
    let before = text.get(..start)?;
    Some(before.bytes().filter(|b| *b == b'\n').count() + 1)
}

fn hcl_rules(text: &str) -> Result<Vec<RawRule>, PolicyParseError> {
    let body: Body = hcl_edit::parser::parse_body(text).map_err(|e| {
        let loc = e.location();
        PolicyParseError::new(
            format!(
                "HCL syntax error at column {}: {}",
                loc.column(),
                e.message()
            ),
            Some(loc.line()),
        )
    })?;
    let mut out = Vec::new();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                let key = attr.key.as_str();
                let line = line_of(text, attr.key.span());
                if key == "name" {
                    continue;
                }
                return Err(PolicyParseError::new(
                    format!(
                        "unknown key {}: a policy holds only `path \"…\" {{ … }}` blocks",
                        echo(key)
                    ),
                    line,
                ));
            }
            Structure::Block(block) => {
                let line = line_of(text, block.ident.span());
                let ident = block.ident.as_str();
                if ident != "path" {
                    return Err(PolicyParseError::new(
                        format!(
                            "unknown block {}: a policy holds only `path \"…\" {{ … }}` blocks",
                            echo(ident)
                        ),
                        line,
                    ));
                }
                let [label] = block.labels.as_slice() else {
                    return Err(PolicyParseError::new(
                        "a path block takes exactly one label, the path glob",
                        line,
                    ));
                };
                let path = label.as_str().to_owned();
                let mut entries = Vec::new();
                for inner in block.body.iter() {
                    match inner {
                        Structure::Attribute(a) => {
                            let l = line_of(text, a.key.span());
                            let v = expr_value(&a.value, l)?;
                            entries.push((a.key.as_str().to_owned(), l, v));
                        }
                        Structure::Block(b) => {
                            let l = line_of(text, b.ident.span());
                            return Err(PolicyParseError::new(
                                format!(
                                    "path {}: unexpected block {} (write `key = value`)",
                                    echo(&path),
                                    echo(b.ident.as_str())
                                ),
                                l,
                            ));
                        }
                    }
                }
                out.push(RawRule {
                    path,
                    line,
                    entries,
                });
            }
        }
    }
    Ok(out)
}

/// An HCL literal as JSON; anything computed (variables, templates, calls) is refused.
pub(crate) fn expr_value(
    expr: &Expression,
    line: Option<usize>,
) -> Result<Value, PolicyParseError> {
    Ok(match expr {
        Expression::Null(_) => Value::Null,
        Expression::Bool(b) => Value::Bool(*b.value()),
        Expression::Number(n) => {
            let n = n.value();
            if let Some(i) = n.as_i64() {
                Value::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                Value::Number(u.into())
            } else {
                n.as_f64()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Expression::String(s) => Value::String(s.value().clone()),
        Expression::Array(items) => Value::Array(
            items
                .iter()
                .map(|e| expr_value(e, line))
                .collect::<Result<_, _>>()?,
        ),
        Expression::Object(obj) => {
            let mut map = Map::new();
            for (k, v) in obj.iter() {
                let key = match k {
                    ObjectKey::Ident(i) => i.as_str().to_owned(),
                    ObjectKey::Expression(Expression::String(s)) => s.value().clone(),
                    ObjectKey::Expression(_) => {
                        return Err(PolicyParseError::new(
                            "object keys must be names or literal strings",
                            line,
                        ));
                    }
                };
                map.insert(key, expr_value(v.expr(), line)?);
            }
            Value::Object(map)
        }
        Expression::StringTemplate(_) | Expression::HeredocTemplate(_) => {
            return Err(PolicyParseError::new(
                "string templates (`${…}`, heredocs) are not supported in policies",
                line,
            ));
        }
        _ => {
            return Err(PolicyParseError::new(
                "only literal strings, numbers, booleans, lists and objects are allowed",
                line,
            ));
        }
    })
}

fn json_rules(text: &str) -> Result<Vec<RawRule>, PolicyParseError> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| PolicyParseError::new(format!("invalid JSON: {e}"), None))?;
    let Value::Object(root) = root else {
        return Err(PolicyParseError::new("a JSON policy is an object", None));
    };
    let mut out = Vec::new();
    for (key, value) in root {
        match key.as_str() {
            "name" => {}
            "path" => {
                // `{"path": {"glob": {…}}}`, or a list of such objects.
                let groups = match value {
                    Value::Object(m) => vec![m],
                    Value::Array(items) => items
                        .into_iter()
                        .map(|i| match i {
                            Value::Object(m) => Ok(m),
                            _ => Err(PolicyParseError::new(
                                "\"path\" must map globs to objects",
                                None,
                            )),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(PolicyParseError::new(
                            "\"path\" must map globs to objects",
                            None,
                        ));
                    }
                };
                for group in groups {
                    for (path, body) in group {
                        let Value::Object(body) = body else {
                            return Err(PolicyParseError::new(
                                format!("path {}: the rule must be an object", echo(&path)),
                                None,
                            ));
                        };
                        out.push(RawRule {
                            path,
                            line: None,
                            entries: body.into_iter().map(|(k, v)| (k, None, v)).collect(),
                        });
                    }
                }
            }
            other => {
                return Err(PolicyParseError::new(
                    format!(
                        "unknown key {}: a policy holds only \"path\" rules",
                        echo(other)
                    ),
                    None,
                ));
            }
        }
    }
    Ok(out)
}

const UNSUPPORTED_KEYS: [&str; 5] = [
    "mfa_methods",
    "pagination_limit",
    "expiration",
    "control_group",
    "list_scan_response_keys_filter_path",
];

fn validate_glob(path: &str, line: Option<usize>) -> Result<String, PolicyParseError> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let err = |why: &str| {
        Err(PolicyParseError::new(
            format!("path {}: {why}", echo(path)),
            line,
        ))
    };
    if p.is_empty() {
        return err("the path is empty");
    }
    if p.len() > keyhaven_storage::MAX_KEY_LEN {
        return err("the path is too long");
    }
    if p.contains("{{") {
        return err("templated policy paths are not supported");
    }
    if p.contains("+*") {
        return err("invalid use of wildcards ('+*' is forbidden)");
    }
    if p.trim_end_matches('*').contains('*') || p.ends_with("**") {
        return err("'*' is only allowed once, at the end of the path");
    }
    Ok(p.to_owned())
}

fn string_list(
    path: &str,
    key: &str,
    value: Value,
    line: Option<usize>,
) -> Result<Vec<String>, PolicyParseError> {
    let bad = || {
        PolicyParseError::new(
            format!("path {}: {key} must be a list of strings", echo(path)),
            line,
        )
    };
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect(),
        // HCL1 and Vault's decoder take a lone string where a list is expected.
        Value::String(s) => Ok(vec![s]),
        _ => Err(bad()),
    }
}

fn parameter_map(
    path: &str,
    key: &str,
    value: Value,
    line: Option<usize>,
) -> Result<HashMap<String, Vec<Value>>, PolicyParseError> {
    let Value::Object(m) = value else {
        return Err(PolicyParseError::new(
            format!(
                "path {}: {key} must be an object of parameter name to list of values",
                echo(path)
            ),
            line,
        ));
    };
    let mut out = HashMap::with_capacity(m.len());
    for (name, values) in m {
        let values = match values {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            other => vec![other],
        };
        out.entry(name.to_lowercase())
            .or_insert_with(Vec::new)
            .extend(values);
    }
    Ok(out)
}

fn build_rule(raw: RawRule) -> Result<Rule, PolicyParseError> {
    let path = validate_glob(&raw.path, raw.line)?;
    let mut caps = Caps::NONE;
    let mut allowed = HashMap::new();
    let mut denied = HashMap::new();
    let mut required = Vec::new();
    let (mut min_wrap, mut max_wrap) = (0u64, 0u64);
    let mut seen: Vec<&str> = Vec::new();
    let mut entries = raw.entries;
    // Validate every key first, so the error names the first bad one in order.
    for (key, line, _) in &entries {
        let line = line.or(raw.line);
        if seen.contains(&key.as_str()) {
            return Err(PolicyParseError::new(
                format!("path {}: duplicate key {}", echo(&raw.path), echo(key)),
                line,
            ));
        }
        match key.as_str() {
            "capabilities"
            | "policy"
            | "allowed_parameters"
            | "denied_parameters"
            | "required_parameters"
            | "min_wrapping_ttl"
            | "max_wrapping_ttl"
            | "comment" => {}
            k if UNSUPPORTED_KEYS.contains(&k) => {
                return Err(PolicyParseError::new(
                    format!(
                        "path {}: {} is not supported by keyhaven",
                        echo(&raw.path),
                        echo(k)
                    ),
                    line,
                ));
            }
            k => {
                return Err(PolicyParseError::new(
                    format!(
                        "path {}: unknown key {}; expected capabilities, \
                         allowed_parameters, denied_parameters, required_parameters, \
                         min_wrapping_ttl or max_wrapping_ttl",
                        echo(&raw.path),
                        echo(k)
                    ),
                    line,
                ));
            }
        }
        seen.push(key.as_str());
    }
    for (key, line, value) in entries.drain(..) {
        let line = line.or(raw.line);
        match key.as_str() {
            "capabilities" => {
                for name in string_list(&raw.path, "capabilities", value, line)? {
                    let cap = Caps::from_name(&name).ok_or_else(|| {
                        PolicyParseError::new(
                            format!(
                                "path {}: invalid capability {}",
                                echo(&raw.path),
                                echo(&name)
                            ),
                            line,
                        )
                    })?;
                    caps = caps.union(cap);
                }
            }
            "policy" => {
                let Value::String(old) = value else {
                    return Err(PolicyParseError::new(
                        format!("path {}: policy must be a string", echo(&raw.path)),
                        line,
                    ));
                };
                let add = match old.as_str() {
                    "deny" => Caps::DENY,
                    "read" => Caps::READ.union(Caps::LIST),
                    "write" => Caps::CREATE
                        .union(Caps::READ)
                        .union(Caps::UPDATE)
                        .union(Caps::DELETE)
                        .union(Caps::LIST),
                    "sudo" => Caps::CREATE
                        .union(Caps::READ)
                        .union(Caps::UPDATE)
                        .union(Caps::DELETE)
                        .union(Caps::LIST)
                        .union(Caps::SUDO),
                    other => {
                        return Err(PolicyParseError::new(
                            format!("path {}: invalid policy {}", echo(&raw.path), echo(other)),
                            line,
                        ));
                    }
                };
                caps = caps.union(add);
            }
            "allowed_parameters" => {
                allowed = parameter_map(&raw.path, "allowed_parameters", value, line)?;
            }
            "denied_parameters" => {
                denied = parameter_map(&raw.path, "denied_parameters", value, line)?;
            }
            "required_parameters" => {
                required = string_list(&raw.path, "required_parameters", value, line)?
                    .into_iter()
                    .map(|s| s.to_lowercase())
                    .collect();
            }
            "min_wrapping_ttl" => min_wrap = wrapping_ttl(&raw.path, &key, &value, line)?,
            "max_wrapping_ttl" => max_wrap = wrapping_ttl(&raw.path, &key, &value, line)?,
            _ => {}
        }
    }
    if min_wrap != 0 && max_wrap != 0 && max_wrap < min_wrap {
        return Err(PolicyParseError::new(
            format!(
                "path {}: max_wrapping_ttl cannot be less than min_wrapping_ttl",
                echo(&raw.path)
            ),
            // OpenBao's message has no line.
            None,
        ));
    }
    if caps.contains(Caps::DENY) {
        // `deny` overrides everything in the rule, parameters included.
        return Ok(Rule {
            path,
            caps: Caps::DENY,
            allowed_parameters: HashMap::new(),
            denied_parameters: HashMap::new(),
            required_parameters: Vec::new(),
            min_wrapping_ttl: 0,
            max_wrapping_ttl: 0,
            line: raw.line,
        });
    }
    Ok(Rule {
        path,
        caps,
        allowed_parameters: allowed,
        denied_parameters: denied,
        required_parameters: required,
        min_wrapping_ttl: min_wrap,
        max_wrapping_ttl: max_wrap,
        line: raw.line,
    })
}

/// A wrapping TTL bound: whole seconds as a number, or a duration string (`90s`, `5m`).
fn wrapping_ttl(
    path: &str,
    key: &str,
    value: &Value,
    line: Option<usize>,
) -> Result<u64, PolicyParseError> {
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => crate::params::parse_duration(s),
        _ => None,
    };
    parsed.ok_or_else(|| {
        PolicyParseError::new(
            format!(
                "path {}: {key} must be a duration (seconds, or e.g. \"90s\")",
                echo(path)
            ),
            line,
        )
    })
}
