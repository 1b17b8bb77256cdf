//! Kubernetes awareness: manifests are parsed (YAML multi-document or JSON), `kind: Secret`
//! objects with literal data are findings, base64 `data` and kubeconfig `*-data` values
//! are decoded (bounded) and rescanned, and literal sensitive env values are flagged.

use base64::Engine as _;
use serde_json::Value;

use crate::engine::Engine;
use crate::finding::{Category, Finding, Secret, fingerprint};
use crate::json::Json;
use crate::validate::is_placeholder;
use crate::{Severity, posture};

/// Largest manifest file that is parsed (bigger files are still scanned as text).
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;
/// Largest encoded value that is decoded.
const MAX_DECODE_INPUT: usize = 1024 * 1024;
/// Total decoded bytes per file.
const DECODE_BUDGET: usize = 8 * 1024 * 1024;

/// A parsed Kubernetes object kept for posture checks: a manifest's `Value`, or an
/// admission review's borrowed [`crate::json::Tree`].
#[derive(Debug, Clone)]
pub struct Object<V = Value> {
    /// File it came from.
    pub path: String,
    /// Line of the document start.
    pub line: u64,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (None when absent).
    pub namespace: Option<String>,
    /// The whole object.
    pub value: V,
    /// Commit, in history scans.
    pub commit: Option<String>,
}

/// What scanning one manifest file produced.
#[derive(Debug, Default)]
pub struct ManifestScan {
    /// Secret findings (Secret objects, decoded values, env literals).
    pub findings: Vec<Finding>,
    /// Objects relevant to posture checks.
    pub objects: Vec<Object>,
}

/// Whether a file should be parsed as a manifest.
pub fn looks_like_manifest(path: &str, data: &[u8]) -> bool {
    if data.len() > MAX_MANIFEST_BYTES {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    let ext = lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json");
    let head = data.get(..4096).unwrap_or(data);
    let has = |n: &[u8]| memchr::memmem::find(head, n).is_some();
    (ext && (has(b"apiVersion") || has(b"kind") || has(b"clusters")))
        || (has(b"apiVersion:") && has(b"kind:"))
        || lower.ends_with("kubeconfig")
        || lower.ends_with("/.kube/config")
}

/// Split YAML text into documents with their 1-based starting line.
fn split_docs(text: &str) -> Vec<(u64, &str)> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut offset = 0usize;
    for (line_no, line) in (1u64..).zip(text.split_inclusive('\n')) {
        let trimmed = line.trim_end();
        let is_sep = trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "...";
        if is_sep {
            if let Some(doc) = text.get(start..offset) {
                docs.push((start_line, doc));
            }
            start = offset + line.len();
            start_line = line_no + 1;
        }
        offset += line.len();
    }
    if let Some(doc) = text.get(start..) {
        docs.push((start_line, doc));
    }
    docs
}

fn line_of(doc: &str, doc_line: u64, needle: &str) -> u64 {
    match doc.find(needle) {
        Some(pos) => doc_line + doc.get(..pos).map_or(0, |p| p.matches('\n').count() as u64),
        None => doc_line,
    }
}

/// Line of `key` inside the mapping `field` (e.g. `data`) of a document: the first line
/// after the `field:` header (YAML, block style) or `"field"` (JSON) that starts with the
/// key (`key:`, `"key":`, `'key':`) and is indented deeper than the header. Falls back to
/// the header's line (flow style, `data: {a: b}`), then to `fallback`.
fn key_line(doc: &str, doc_line: u64, field: &str, key: &str, fallback: u64) -> u64 {
    let starts_with_key = |t: &str, k: &str| {
        for (open, close) in [("", ""), ("\"", "\""), ("'", "'")] {
            if let Some(rest) = t
                .strip_prefix(open)
                .and_then(|r| r.strip_prefix(k))
                .and_then(|r| r.strip_prefix(close))
                && rest.trim_start().starts_with(':')
            {
                return true;
            }
        }
        false
    };
    let mut header: Option<(usize, u64)> = None;
    for (n, line) in (doc_line..).zip(doc.lines()) {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match header {
            None => {
                if starts_with_key(trimmed, field) {
                    header = Some((indent, n));
                }
            }
            Some((h_indent, h_line)) => {
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                if indent <= h_indent {
                    // Left the block without finding the key; another `field:` may follow.
                    header = starts_with_key(trimmed, field).then_some((indent, n));
                    if header.is_none() {
                        return h_line;
                    }
                    continue;
                }
                if starts_with_key(trimmed, key) {
                    return n;
                }
            }
        }
    }
    header.map_or(fallback, |(_, l)| l)
}

fn parse_docs(path: &str, text: &str) -> Vec<(u64, String, Value)> {
    let mut out = Vec::new();
    let trimmed = text.trim_start();
    let json_like = path.to_ascii_lowercase().ends_with(".json") || trimmed.starts_with('{');
    if let (true, Ok(v)) = (json_like, serde_json::from_str::<Value>(text)) {
        out.push((1, text.to_owned(), v));
        return out;
    }
    for (line, doc) in split_docs(text) {
        if doc.trim().is_empty() {
            continue;
        }
        if let Ok(v) = serde_saphyr::from_str::<Value>(doc) {
            out.push((line, doc.to_owned(), v));
        }
    }
    out
}

fn s<'a, V: Json>(v: &'a V, key: &str) -> Option<&'a str> {
    v.get(key).and_then(V::as_str)
}

fn meta<V: Json>(v: &V) -> (String, Option<String>) {
    let m = v.get("metadata");
    let name = m.and_then(|m| s(m, "name")).unwrap_or("").to_owned();
    let ns = m.and_then(|m| s(m, "namespace")).map(str::to_owned);
    (name, ns)
}

fn is_template(v: &str) -> bool {
    v.contains("{{") || v.contains("${") || v.contains("$(")
}

struct Ctx<'a> {
    engine: &'a Engine,
    path: &'a str,
    commit: Option<&'a str>,
    max_depth: usize,
    budget: usize,
    /// Keep a copy of each object posture checks apply to in `out.objects`.
    keep_objects: bool,
    out: ManifestScan,
}

/// Scan one manifest file's bytes.
pub fn scan_manifest(
    engine: &Engine,
    path: &str,
    data: &[u8],
    commit: Option<&str>,
    max_decode_depth: usize,
) -> ManifestScan {
    let Ok(text) = std::str::from_utf8(data) else {
        return ManifestScan::default();
    };
    if data.len() > MAX_MANIFEST_BYTES {
        return ManifestScan::default();
    }
    let mut ctx = Ctx {
        engine,
        path,
        commit,
        max_depth: max_decode_depth,
        budget: DECODE_BUDGET,
        keep_objects: true,
        out: ManifestScan::default(),
    };
    for (line, doc, value) in parse_docs(path, text) {
        if s(&value, "kind") == Some("List") {
            if let Some(items) = value.get("items").and_then(Value::as_array) {
                for item in items {
                    ctx.object(item, &doc, line);
                }
            }
        } else {
            ctx.object(&value, &doc, line);
        }
    }
    ctx.out
}

/// Scan one already parsed object as `scan_manifest` scans each object of a file: the
/// secret findings (Secret literals, ConfigMap credentials, env literals, kubeconfig
/// data) and, if posture checks apply to its kind, the object itself.
pub fn scan_object(
    engine: &Engine,
    path: &str,
    value: &Value,
    max_decode_depth: usize,
) -> ManifestScan {
    let mut ctx = Ctx {
        engine,
        path,
        commit: None,
        max_depth: max_decode_depth,
        budget: DECODE_BUDGET,
        keep_objects: true,
        out: ManifestScan::default(),
    };
    ctx.object(value, "", 1);
    ctx.out
}

/// The secret findings of [`scan_object`] alone, without the copy of the object it keeps
/// for posture checks (see [`parsed_object`]).
pub fn scan_object_secrets<V: Json>(
    engine: &Engine,
    path: &str,
    value: &V,
    max_decode_depth: usize,
) -> Vec<Finding> {
    let mut ctx = Ctx {
        engine,
        path,
        commit: None,
        max_depth: max_decode_depth,
        budget: DECODE_BUDGET,
        keep_objects: false,
        out: ManifestScan::default(),
    };
    ctx.object(value, "", 1);
    ctx.out.findings
}

/// The object [`scan_object`] keeps for posture checks, if posture checks apply to its
/// kind: then `value` is moved into it (and left `null`); otherwise it is left alone.
pub fn parsed_object<V: Json + Default>(path: &str, value: &mut V) -> Option<Object<V>> {
    let kind = s(value, "kind").filter(|k| posture::RELEVANT_KINDS.contains(k))?;
    let kind = kind.to_owned();
    let (name, namespace) = meta(value);
    Some(Object {
        path: path.to_owned(),
        line: 1,
        kind,
        name,
        namespace,
        value: std::mem::take(value),
        commit: None,
    })
}

impl Ctx<'_> {
    #[allow(clippy::too_many_arguments, reason = "a finding has many fields")]
    fn finding(
        &self,
        rule_id: &str,
        description: &str,
        severity: Severity,
        line: u64,
        message: String,
        fix: &str,
        references: Vec<(&'static str, &'static str)>,
        field: String,
        secret: Vec<u8>,
    ) -> Finding {
        Finding {
            rule_id: rule_id.to_owned(),
            description: description.to_owned(),
            severity,
            category: Category::Secret,
            path: self.path.to_owned(),
            line,
            column: 1,
            commit: self.commit.map(str::to_owned),
            message,
            fix: Some(fix.to_owned()),
            references,
            decoded_from: None,
            field: Some(field),
            fingerprint: fingerprint(rule_id, self.path, &secret),
            secret: Some(Secret::new(secret)),
        }
    }

    fn object<V: Json>(&mut self, v: &V, doc: &str, doc_line: u64) {
        let Some(kind) = s(v, "kind") else { return };
        let (name, namespace) = meta(v);
        match kind {
            "Secret" => self.secret_object(v, doc, doc_line, &name, namespace.as_deref()),
            "Config" if v.get("users").is_some() || v.get("clusters").is_some() => {
                self.kubeconfig(v, doc, doc_line);
            }
            _ => {}
        }
        if kind == "ConfigMap" {
            self.config_map(v, doc, doc_line, &name, namespace.as_deref());
        }
        if let Some(spec) = posture::pod_spec(kind, v) {
            self.env_literals(spec, doc, doc_line, kind, &name);
        }
        if self.keep_objects && posture::RELEVANT_KINDS.contains(&kind) {
            self.out.objects.push(Object {
                path: self.path.to_owned(),
                line: doc_line,
                kind: kind.to_owned(),
                name,
                namespace,
                value: v.to_value(),
                commit: self.commit.map(str::to_owned),
            });
        }
    }

    fn secret_object<V: Json>(
        &mut self,
        v: &V,
        doc: &str,
        doc_line: u64,
        name: &str,
        ns: Option<&str>,
    ) {
        let mut literal: Vec<(String, String, String)> = Vec::new();
        for field in ["data", "stringData"] {
            if let Some(map) = v.get(field).and_then(V::entries) {
                for (k, val) in map {
                    let text = match val.as_str() {
                        Some(t) => t.to_owned(),
                        None if val.is_null() => continue,
                        None => val.to_text(),
                    };
                    if text.trim().is_empty()
                        || is_template(&text)
                        || is_placeholder(text.as_bytes())
                    {
                        continue;
                    }
                    literal.push((field.to_owned(), k.to_owned(), text));
                }
            }
        }
        if literal.is_empty() {
            return;
        }
        let object_line = line_of(doc, doc_line, "kind: Secret");
        let who = format!(
            "{}{}",
            ns.map(|n| format!("{n}/")).unwrap_or_default(),
            name
        );
        for (field, k, val) in literal {
            // One finding per value, at the value's own line.
            let line = key_line(doc, doc_line, &field, &k, object_line);
            let f = self.finding(
                "k8s-secret-manifest",
                "Kubernetes Secret with literal data committed",
                Severity::High,
                line,
                format!("Secret {who} has a literal value for {field}.{k}"),
                "keep Secret values out of the repository: use a keyhaven reference, SealedSecret or ExternalSecret",
                Vec::new(),
                format!("{field}.{k}"),
                format!("{field}.{k}={val}").into_bytes(),
            );
            self.out.findings.push(f);
            if field == "data" {
                self.decode_rescan(val.as_bytes(), &format!("data.{k}"), line, 1);
            }
        }
    }

    fn kubeconfig<V: Json>(&mut self, v: &V, doc: &str, doc_line: u64) {
        for section in ["users", "clusters"] {
            let Some(items) = v.get(section).and_then(V::as_array) else {
                continue;
            };
            for item in items {
                let inner = item.get("user").or_else(|| item.get("cluster"));
                let Some(map) = inner.and_then(V::entries) else {
                    continue;
                };
                for (k, val) in map {
                    if let (true, Some(text)) = (k.ends_with("-data"), val.as_str()) {
                        let line = line_of(doc, doc_line, &format!("{k}:"));
                        self.decode_rescan(text.as_bytes(), k, line, 1);
                    }
                }
            }
        }
    }

    fn decode_rescan(&mut self, encoded: &[u8], origin: &str, line: u64, depth: usize) {
        if depth > self.max_depth || encoded.len() > MAX_DECODE_INPUT || self.budget == 0 {
            return;
        }
        let cleaned: Vec<u8> = encoded
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
            .collect();
        let Ok(decoded) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(&cleaned) else {
            return;
        };
        self.budget = self.budget.saturating_sub(decoded.len());
        for m in self.engine.scan_bytes(&decoded, self.path, self.commit) {
            let Some(rule) = self.engine.rules.rules.get(m.rule) else {
                continue;
            };
            let id = rule.spec.id.clone();
            self.out.findings.push(Finding {
                rule_id: id.clone(),
                description: rule.spec.description.clone(),
                severity: rule.spec.severity,
                category: Category::Secret,
                path: self.path.to_owned(),
                line,
                column: 1,
                commit: self.commit.map(str::to_owned),
                message: format!("{} in base64-decoded {origin}", rule.spec.description),
                fix: Some("remove the credential, rotate it, and load it at run time".to_owned()),
                references: Vec::new(),
                decoded_from: Some(origin.to_owned()),
                field: Some(origin.to_owned()),
                fingerprint: fingerprint(&id, self.path, &m.secret),
                secret: Some(Secret::new(m.secret)),
            });
        }
        // Nested encodings (bounded by depth and budget).
        let t = decoded.trim_ascii();
        if t.len() >= 16
            && t.iter().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r')
            })
        {
            self.decode_rescan(t, origin, line, depth + 1);
        }
    }

    /// A ConfigMap value that a secret rule matches, or a credential-named key with a
    /// literal value: credentials belong in a Secret (or keyhaven), not a ConfigMap.
    fn config_map<V: Json>(
        &mut self,
        v: &V,
        doc: &str,
        doc_line: u64,
        name: &str,
        ns: Option<&str>,
    ) {
        let Some(data) = v.get("data").and_then(V::entries) else {
            return;
        };
        let object = format!("{}{name}", ns.map(|n| format!("{n}/")).unwrap_or_default());
        for (key, value) in data {
            let Some(text) = value.as_str() else { continue };
            let matched = self
                .engine
                .scan_bytes(text.as_bytes(), self.path, self.commit)
                .into_iter()
                .next();
            let (what, secret) = match matched {
                Some(m) => {
                    let Some(rule) = self.engine.rules.rules.get(m.rule) else {
                        continue;
                    };
                    (rule.spec.description.clone(), m.secret)
                }
                None if sensitive_env_name(key) && literal_secret_value(text) => (
                    "a credential-named key with a literal value".to_owned(),
                    text.as_bytes().to_vec(),
                ),
                None => continue,
            };
            let line = line_of(doc, doc_line, &format!("{key}:"));
            let f = self.finding(
                "k8s-configmap-credential",
                "ConfigMap holds a credential",
                Severity::High,
                line,
                format!("ConfigMap {object} key {key} holds {what}"),
                "move the value into keyhaven (mounted with the keyhaven CSI provider) or a Secret, and reference it",
                vec![("kubescape", "C-0012")],
                format!("data.{key}"),
                secret,
            );
            self.out.findings.push(f);
        }
    }

    fn env_literals<V: Json>(&mut self, spec: &V, doc: &str, doc_line: u64, kind: &str, obj: &str) {
        let base = posture::pod_spec_path(kind).unwrap_or("spec");
        for (cpath, c) in posture::containers_with_paths(spec) {
            let cname = s(c, "name").unwrap_or("");
            let Some(env) = c.get("env").and_then(V::as_array) else {
                continue;
            };
            for (i, e) in env.iter().enumerate() {
                let (Some(name), Some(value)) = (s(e, "name"), s(e, "value")) else {
                    continue;
                };
                if !sensitive_env_name(name) || !literal_secret_value(value) {
                    continue;
                }
                let line = line_of(doc, doc_line, &format!("name: {name}"));
                let f = self.finding(
                    "k8s-env-literal-secret",
                    "Sensitive environment variable with a literal value",
                    Severity::High,
                    line,
                    format!("{kind} {obj} container {cname} sets {name} to a literal value"),
                    "reference a Secret through a mounted volume (or a keyhaven CSI volume) instead of a literal value",
                    vec![("kube-linter", "env-var-secret"), ("kubescape", "C-0012"), ("polaris", "sensitiveContainerEnvVar")],
                    format!("{base}.{cpath}.env[{i}].value"),
                    value.as_bytes().to_vec(),
                );
                self.out.findings.push(f);
            }
        }
    }
}

const SENSITIVE_WORDS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "PASS",
    "PWD",
    "SECRET",
    "TOKEN",
    "APIKEY",
    "CREDENTIAL",
    "CREDENTIALS",
    "PASSPHRASE",
    "PRIVATEKEY",
];
const KEY_QUALIFIERS: &[&str] = &[
    "API",
    "ACCESS",
    "PRIVATE",
    "SECRET",
    "SIGNING",
    "ENCRYPTION",
    "MASTER",
];
const EXEMPT_SUFFIXES: &[&str] = &[
    "FILE", "PATH", "DIR", "FILENAME", "NAME", "USER", "USERNAME", "HOST", "PORT", "TTL",
    "TIMEOUT", "EXPIRY", "EXPIRES", "LENGTH", "ENABLED", "MODE", "TYPE", "HEADER", "REF", "ID",
    "URL", "ENDPOINT", "REGION", "FORMAT", "VERSION", "SIZE", "COUNT",
];

/// Whether an env var name designates a credential (and is not a pointer to one).
pub fn sensitive_env_name(name: &str) -> bool {
    // Words compared case-insensitively in place (every env var of every admission review
    // comes through here: no upper-case copy, no word list).
    let among = |list: &[&str], w: &str| list.iter().any(|l| l.eq_ignore_ascii_case(w));
    let (mut prev, mut last, mut sensitive) = (None, None, false);
    for w in name.split(['_', '-', '.']).filter(|w| !w.is_empty()) {
        sensitive = sensitive
            || among(SENSITIVE_WORDS, w)
            || (w.eq_ignore_ascii_case("KEY") && prev.is_some_and(|p| among(KEY_QUALIFIERS, p)));
        prev = Some(w);
        last = Some(w);
    }
    sensitive && !last.is_some_and(|l| among(EXEMPT_SUFFIXES, l))
}

fn literal_secret_value(v: &str) -> bool {
    let t = v.trim();
    t.len() >= 4
        && !is_template(t)
        && !is_placeholder(t.as_bytes())
        && !t.chars().all(|c| c.is_ascii_digit())
        && !matches!(
            t.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "none" | "null"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        // What the upper-cased word list gave, for names of every shape.
        let by_words = |name: &str| {
            let upper = name.to_ascii_uppercase();
            let words: Vec<&str> = upper
                .split(['_', '-', '.'])
                .filter(|w| !w.is_empty())
                .collect();
            !words.last().is_some_and(|l| EXEMPT_SUFFIXES.contains(l))
                && words.iter().enumerate().any(|(i, w)| {
                    SENSITIVE_WORDS.contains(w)
                        || (*w == "KEY"
                            && i > 0
                            && words.get(i - 1).is_some_and(|p| KEY_QUALIFIERS.contains(p)))
                })
        };
        for name in [
            "",
            "_",
            "key",
            "KEY",
            "api_key",
            "Api-Key.file",
            "api__key",
            "_api_key_",
            "private.key",
            "db_password",
            "Db_Password_File",
            "PASSWORD_URL_x",
            "token",
            "my-secret-ref",
            "secret_key",
            "SIGNING__KEY",
            "pässword",
            "PASSWÖRD",
            "pass.",
            "access_key_id",
            "KEY_API",
            "x_PWD",
            "secrets_dir",
            "TOKEN_PATH",
        ] {
            assert_eq!(sensitive_env_name(name), by_words(name), "{name:?}");
        }
        assert!(sensitive_env_name("DB_PASSWORD"));
        assert!(sensitive_env_name("AWS_SECRET_ACCESS_KEY"));
        assert!(sensitive_env_name("API_KEY"));
        assert!(!sensitive_env_name("DB_PASSWORD_FILE"));
        assert!(!sensitive_env_name("SECRETS_DIR"));
        assert!(!sensitive_env_name("TOKEN_PATH"));
        assert!(!sensitive_env_name("SORT_KEY"));
        assert!(!sensitive_env_name("LOG_LEVEL"));
    }

    #[test]
    fn docs_split_with_lines() {
        let docs = split_docs("a: 1\n---\nb: 2\nc: 3\n---\nd: 4\n");
        let lines: Vec<u64> = docs.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![1, 3, 6]);
    }
}
