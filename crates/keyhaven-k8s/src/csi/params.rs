//! The parameters of one mount: the driver's attributes JSON (SecretProviderClass
//! parameters overlaid with the pod's volume attributes and the `csi.storage.k8s.io/*`
//! keys), the node-publish secrets JSON and the default file permission, parsed into a
//! [`MountSpec`] whose every file path is valid.
//!
//! Nothing here grants anything: the parameters say *what* to read and *where* to put it;
//! who may read it is decided by the server from the pod's own ServiceAccount token.
//!
//! Errors never quote the attributes JSON (it carries the pod's token); they may quote the
//! `objects` YAML, which holds names and paths only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroize as _;

/// The attribute that carries the pod's ServiceAccount tokens (CSIDriver `tokenRequests`).
pub const TOKENS_ATTRIBUTE: &str = "csi.storage.k8s.io/serviceAccount.tokens";
/// The pod attributes kubelet adds with `podInfoOnMount` (informational, for logs only).
pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
/// The pod's namespace as kubelet reports it (informational, for logs only).
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// The pod's ServiceAccount as kubelet reports it (informational, for logs only).
pub const POD_SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";

/// At most this many objects in one SecretProviderClass.
pub const MAX_OBJECTS: usize = 1000;
/// The longest file name the driver writes (one path element).
pub const MAX_NAME: usize = 255;
/// The longest relative path the driver writes.
pub const MAX_PATH: usize = 4096;
/// The longest template.
pub const MAX_TEMPLATE: usize = 64 * 1024;

/// Why the parameters of a mount are not acceptable. The message names the parameter and
/// what to change; it never holds a token or a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// The attributes are not a JSON object of strings.
    #[error("the mount attributes are not a JSON object of strings (line {line}, column {column})")]
    Attributes {
        /// Where the JSON went wrong.
        line: usize,
        /// Where the JSON went wrong.
        column: usize,
    },
    /// The node-publish secrets are neither `null` nor a JSON object of strings.
    #[error("the node-publish secrets are neither null nor a JSON object of strings")]
    Secrets,
    /// The default permission is not a decimal mode of 0-511.
    #[error("the file permission {0:?} is not a JSON-encoded decimal mode from 0 to 511")]
    Permission(String),
    /// A required parameter is missing.
    #[error("the SecretProviderClass parameter {0} is required")]
    Missing(&'static str),
    /// A parameter has a value that is not allowed.
    #[error("parameter {name}: {reason}")]
    Invalid {
        /// The parameter.
        name: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The tokens attribute is not the JSON kubelet sends.
    #[error(
        "the {TOKENS_ATTRIBUTE} attribute is not a JSON object of audience to {{token, expirationTimestamp}}"
    )]
    Tokens,
    /// The `objects` YAML does not parse.
    #[error("parameter objects: not a YAML list of objects: {0}")]
    ObjectsYaml(String),
    /// An object is not acceptable.
    #[error("object {index} ({name:?}): {reason}")]
    Object {
        /// Its position in the list, from 0.
        index: usize,
        /// Its objectName.
        name: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

/// The pod's ServiceAccount tokens, by audience. `Debug` shows the audiences only.
#[derive(Default)]
pub struct Tokens(BTreeMap<String, SecretString>);

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Tokens {
    /// The token for `audience`.
    pub fn get(&self, audience: &str) -> Option<&SecretString> {
        self.0.get(audience)
    }

    /// The audiences present.
    pub fn audiences(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// What kubelet says about the pod. Not verified, so used for log lines only; the
/// identity that counts is the one the server verifies in the token.
#[derive(Debug, Default, Clone)]
pub struct PodInfo {
    /// `csi.storage.k8s.io/pod.namespace`.
    pub namespace: String,
    /// `csi.storage.k8s.io/pod.name`.
    pub name: String,
    /// `csi.storage.k8s.io/serviceAccount.name`.
    pub service_account: String,
}

/// A parsed mount.
#[derive(Debug)]
pub struct MountSpec {
    /// The role of the auth method to log in with (`roleName`).
    pub role: String,
    /// The server address the SecretProviderClass asks for (`vaultAddress`), if any.
    pub address: Option<String>,
    /// The mount of the kubernetes auth method (`vaultKubernetesMountPath` or
    /// `vaultAuthMountPath`, without `auth/`), if given.
    pub auth_mount: Option<String>,
    /// The token audience to use (`audience`), if given.
    pub audience: Option<String>,
    /// `vaultCACertPath`, if given.
    pub ca_cert_path: Option<String>,
    /// The objects, in order, with unique names and valid paths.
    pub objects: Vec<ObjectSpec>,
    /// The pod's tokens.
    pub tokens: Tokens,
    /// What kubelet says about the pod.
    pub pod: PodInfo,
}

/// How an object's file content is taken from the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The answer's `data` as JSON.
    Whole,
    /// One key of the data (for KV v2, of `data.data`).
    Key(String),
    /// Every key as its own file under the object's name.
    AllKeys,
    /// A template over the keys.
    Template(Template),
}

/// The HTTP method of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`, with `secretArgs` as the query.
    Get,
    /// `PUT`/`POST`, with `secretArgs` as the JSON body (e.g. to issue a certificate).
    Put,
}

/// How a value is stored on the server; the file gets the decoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As it is.
    Utf8,
    /// Standard base64.
    Base64,
    /// Hexadecimal.
    Hex,
}

/// One validated object.
#[derive(Debug, Clone)]
pub struct ObjectSpec {
    /// `objectName`: the file (or, with `allKeys`, directory) name.
    pub name: String,
    /// `secretPath`: the API path, relative to `/v1/`.
    pub path: String,
    /// What goes into the file.
    pub selector: Selector,
    /// `method`.
    pub method: Method,
    /// `secretArgs`.
    pub args: serde_json::Map<String, Value>,
    /// The file mode, 0-0o777.
    pub mode: u32,
    /// `encoding`.
    pub encoding: Encoding,
    /// `optional`: an absent secret is no error.
    pub optional: bool,
    /// A canonical description of the object's configuration, bound into its version.
    pub config_digest_input: String,
}

/// A `{{ key }}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<Part>);

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// The value of a key.
    Key(String),
}

impl Template {
    /// Parse `text`: literal text with `{{ key }}` (or `{{ .key }}`) placeholders.
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.len() > MAX_TEMPLATE {
            return Err(format!("the template is over {MAX_TEMPLATE} bytes"));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let (before, after) = rest.split_at(start);
            if !before.is_empty() {
                parts.push(Part::Text(before.to_owned()));
            }
            let after = after.get(2..).unwrap_or_default();
            let Some(end) = after.find("}}") else {
                return Err("a {{ has no closing }}".to_owned());
            };
            let (inner, tail) = after.split_at(end);
            let key = inner.trim();
            let key = key.strip_prefix('.').unwrap_or(key);
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(format!(
                    "{{{{{inner}}}}} is not a key reference: use {{{{ name }}}} with letters, digits, _, - or ."
                ));
            }
            parts.push(Part::Key(key.to_owned()));
            rest = tail.get(2..).unwrap_or_default();
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template(parts))
    }
}

/// An object as written in the `objects` YAML (vault-csi-provider's names, plus
/// keyhaven's `allKeys`, `template` and `optional`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawObject {
    object_name: Option<String>,
    secret_path: Option<String>,
    #[serde(default)]
    secret_key: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    secret_args: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    file_permission: Option<Value>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    all_keys: Option<bool>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    optional: Option<bool>,
}

/// The token entry kubelet sends per audience.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawToken {
    token: String,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "the JWT's own exp bounds the cache; kept for the wire shape"
    )]
    expiration_timestamp: Option<String>,
}

/// Parse a mount request's `attributes`, `secrets` and `permission`.
pub fn parse(attributes: &str, secrets: &str, permission: &str) -> Result<MountSpec, ParamError> {
    let mut attrs: HashMap<String, String> =
        serde_json::from_str(attributes).map_err(|e| ParamError::Attributes {
            line: e.line(),
            column: e.column(),
        })?;
    let mut secrets: HashMap<String, String> = match secrets.trim() {
        "" | "null" => HashMap::new(),
        s => serde_json::from_str::<Option<HashMap<String, String>>>(s)
            .map_err(|_| ParamError::Secrets)?
            .unwrap_or_default(),
    };
    let spec = parse_maps(&attrs, &secrets, permission);
    // The maps held copies of the pod's token: wipe them (the spec keeps its own, secret).
    for v in attrs.values_mut().chain(secrets.values_mut()) {
        v.zeroize();
    }
    spec
}

fn parse_maps(
    attrs: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
    permission: &str,
) -> Result<MountSpec, ParamError> {
    let default_mode = parse_permission(permission)?;
    let get = |k: &str| attrs.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());

    let role = get("roleName")
        .ok_or(ParamError::Missing("roleName"))?
        .to_owned();
    let auth_mount = match (get("vaultKubernetesMountPath"), get("vaultAuthMountPath")) {
        (Some(_), Some(_)) => {
            return Err(ParamError::Invalid {
                name: "vaultAuthMountPath",
                reason: "set either vaultKubernetesMountPath or vaultAuthMountPath, not both"
                    .to_owned(),
            });
        }
        (Some(m), None) | (None, Some(m)) => Some(clean_mount(m)?),
        (None, None) => None,
    };
    if get("vaultSkipTLSVerify").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(ParamError::Invalid {
            name: "vaultSkipTLSVerify",
            reason: "certificate verification cannot be turned off from a SecretProviderClass; \
                     give the provider the server's CA with --ca-cert"
                .to_owned(),
        });
    }
    for name in [
        "vaultCADirectory",
        "vaultTLSServerName",
        "vaultTLSClientCertPath",
        "vaultTLSClientKeyPath",
        "vaultNamespace",
    ] {
        if get(name).is_some() {
            return Err(ParamError::Invalid {
                name: static_name(name),
                reason: "not supported by keyhaven: TLS settings are the provider's own \
                         (--ca-cert, config file); remove the parameter"
                    .to_owned(),
            });
        }
    }

    let tokens_json = get(TOKENS_ATTRIBUTE).or_else(|| {
        secrets
            .get(TOKENS_ATTRIBUTE)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    });
    let tokens = match tokens_json {
        None => Tokens::default(),
        Some(j) => {
            let raw: BTreeMap<String, RawToken> =
                serde_json::from_str(j).map_err(|_| ParamError::Tokens)?;
            Tokens(
                raw.into_iter()
                    .map(|(aud, t)| (aud, SecretString::from(t.token)))
                    .collect(),
            )
        }
    };

    let objects_yaml = get("objects").ok_or(ParamError::Missing("objects"))?;
    let objects = parse_objects(objects_yaml, default_mode)?;

    Ok(MountSpec {
        role,
        address: get("vaultAddress").map(str::to_owned),
        auth_mount,
        audience: get("audience").map(str::to_owned),
        ca_cert_path: get("vaultCACertPath").map(str::to_owned),
        objects,
        tokens,
        pod: PodInfo {
            namespace: get(POD_NAMESPACE).unwrap_or_default().to_owned(),
            name: get(POD_NAME).unwrap_or_default().to_owned(),
            service_account: get(POD_SERVICE_ACCOUNT).unwrap_or_default().to_owned(),
        },
    })
}

fn static_name(name: &str) -> &'static str {
    match name {
        "vaultCADirectory" => "vaultCADirectory",
        "vaultTLSServerName" => "vaultTLSServerName",
        "vaultTLSClientCertPath" => "vaultTLSClientCertPath",
        "vaultTLSClientKeyPath" => "vaultTLSClientKeyPath",
        _ => "vaultNamespace",
    }
}

fn clean_mount(m: &str) -> Result<String, ParamError> {
    let m = m.trim_matches('/');
    let m = m.strip_prefix("auth/").unwrap_or(m).trim_matches('/');
    if m.is_empty() || m.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(ParamError::Invalid {
            name: "vaultAuthMountPath",
            reason: format!("{m:?} is not a mount path such as kubernetes"),
        });
    }
    Ok(m.to_owned())
}

/// The driver's `permission`: a JSON-encoded decimal mode such as `"420"`.
pub fn parse_permission(permission: &str) -> Result<u32, ParamError> {
    let p = permission.trim();
    if p.is_empty() {
        return Ok(0o644);
    }
    let p = p.trim_matches('"');
    match p.parse::<u32>() {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(ParamError::Permission(p.chars().take(16).collect())),
    }
}

/// `filePermission`: an octal string (`"0600"`, `"600"`, `"0o600"`) or a YAML integer
/// read as its octal digits (`0600`, `600`).
fn parse_file_permission(v: &Value) -> Result<u32, String> {
    let text = match v {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        // A YAML parser may read an unquoted `0640` as the number 640.
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| (0.0..=777.0).contains(&f) && f.fract() == 0.0) =>
        {
            format!("{}", n.as_f64().unwrap_or_default())
        }
        other => {
            return Err(format!(
                "filePermission must be an octal mode such as \"0600\", not {other}"
            ));
        }
    };
    let digits = text
        .strip_prefix("0o")
        .or_else(|| text.strip_prefix("0O"))
        .unwrap_or(&text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "filePermission {text:?} is not an octal mode from 0000 to 0777; write it quoted, e.g. \"0600\""
        )),
    }
}

/// Check a relative file path the way the driver does: not absolute, no `..` or `.`
/// element, no empty element, equal to its cleaned form, within the name and path limits.
pub fn check_file_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the file name is empty".to_owned());
    }
    if path.len() > MAX_PATH {
        return Err(format!("the file path is over {MAX_PATH} bytes"));
    }
    if path.starts_with('/') {
        return Err("the file path must be relative, not start with /".to_owned());
    }
    if path.contains('\0') || path.contains('\\') {
        return Err("the file path contains a NUL or backslash".to_owned());
    }
    for element in path.split('/') {
        match element {
            "" => return Err("the file path has an empty element (// or a trailing /)".to_owned()),
            "." | ".." => {
                return Err(format!(
                    "the file path has a {element:?} element; use a plain relative name"
                ));
            }
            e if e.len() > MAX_NAME => {
                return Err(format!("a file name is over {MAX_NAME} bytes"));
            }
            e if e.starts_with("..") => {
                return Err(
                    "a file name must not start with .. (the driver's own entries)".to_owned(),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parse and validate the `objects` YAML.
pub fn parse_objects(yaml: &str, default_mode: u32) -> Result<Vec<ObjectSpec>, ParamError> {
    let raw: Option<Vec<RawObject>> =
        serde_saphyr::from_str(yaml).map_err(|e| ParamError::ObjectsYaml(short(&e.to_string())))?;
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        return Err(ParamError::Invalid {
            name: "objects",
            reason: "the list is empty; name at least one object".to_owned(),
        });
    }
    if raw.len() > MAX_OBJECTS {
        return Err(ParamError::Invalid {
            name: "objects",
            reason: format!("{} objects, more than {MAX_OBJECTS}", raw.len()),
        });
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (index, r) in raw.into_iter().enumerate() {
        let name = r.object_name.clone().unwrap_or_default();
        let err = |reason: String| ParamError::Object {
            index,
            name: name.chars().take(MAX_NAME).collect(),
            reason,
        };
        let obj = validate_object(r, default_mode).map_err(err)?;
        if !seen.insert(obj.name.clone()) {
            return Err(ParamError::Object {
                index,
                name: obj.name,
                reason: "duplicate objectName: each object needs its own file name".to_owned(),
            });
        }
        out.push(obj);
    }
    // A file may not also be a directory of another object (`a` and `a/b`).
    for a in &seen {
        let prefix = format!("{a}/");
        if let Some(b) = seen
            .range(prefix.clone()..)
            .next()
            .filter(|b| b.starts_with(&prefix))
        {
            return Err(ParamError::Invalid {
                name: "objects",
                reason: format!("objectName {a:?} is both a file and the directory of {b:?}"),
            });
        }
    }
    Ok(out)
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(300).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn validate_object(r: RawObject, default_mode: u32) -> Result<ObjectSpec, String> {
    let name = r
        .object_name
        .filter(|n| !n.is_empty())
        .ok_or("objectName is required")?;
    check_file_path(&name)?;
    let path = r
        .secret_path
        .map(|p| p.trim().trim_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .ok_or("secretPath is required, e.g. secret/data/app")?;
    let path = path.strip_prefix("v1/").map(str::to_owned).unwrap_or(path);
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!("secretPath {path:?} has an empty, . or .. element"));
    }
    if path.contains(['?', '#']) {
        return Err(format!(
            "secretPath {path:?} contains ? or #; put query arguments in secretArgs"
        ));
    }
    let method = match r.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("" | "GET") => Method::Get,
        Some("PUT" | "POST") => Method::Put,
        Some(other) => return Err(format!("method {other:?} is not GET, PUT or POST")),
    };
    let encoding = match r
        .encoding
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("" | "utf-8" | "utf8") => Encoding::Utf8,
        Some("base64") => Encoding::Base64,
        Some("hex") => Encoding::Hex,
        Some(other) => return Err(format!("encoding {other:?} is not utf-8, base64 or hex")),
    };
    let mode = match &r.file_permission {
        None | Some(Value::Null) => default_mode,
        Some(v) => parse_file_permission(v)?,
    };
    let key = r.secret_key.filter(|k| !k.is_empty());
    let all_keys = r.all_keys.unwrap_or(false);
    let selector = match (key, all_keys, r.template) {
        (None, false, None) => Selector::Whole,
        (Some(k), false, None) => Selector::Key(k),
        (None, true, None) => Selector::AllKeys,
        (None, false, Some(t)) => Selector::Template(Template::parse(&t)?),
        _ => return Err("use only one of secretKey, allKeys and template".to_owned()),
    };
    if matches!(selector, Selector::Template(_) | Selector::Whole) && encoding != Encoding::Utf8 {
        return Err("encoding applies to one key (secretKey) or allKeys only".to_owned());
    }
    let args = r.secret_args.unwrap_or_default();
    // Everything that shapes the file, in a canonical form; bound into the version so a
    // changed configuration is a new version even when the content is the same.
    let config_digest_input = serde_json::json!({
        "name": name,
        "path": path,
        "selector": format!("{selector:?}"),
        "method": format!("{method:?}"),
        "args": args,
        "mode": mode,
        "encoding": format!("{encoding:?}"),
    })
    .to_string();
    Ok(ObjectSpec {
        name,
        path,
        selector,
        method,
        args,
        mode,
        encoding,
        optional: r.optional.unwrap_or(false),
        config_digest_input,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(objects: &str) -> String {
        json!({
            "roleName": "app",
            "objects": objects,
            "csi.storage.k8s.io/pod.namespace": "team-a",
            TOKENS_ATTRIBUTE: json!({"keyhaven": {"token": "eyJ.x.y", "expirationTimestamp": "2030-01-01T00:00:00Z"}}).to_string(),
        })
        .to_string()
    }

    #[test]
    fn vault_style_objects_parse_with_modes_and_defaults() {
        let yaml = r#"
- objectName: db-password
  secretPath: secret/data/db
  secretKey: password
  filePermission: "0600"
- objectName: cert
  secretPath: pki/issue/web
  method: PUT
  secretArgs:
    common_name: web.example.com
- objectName: creds
  secretPath: /v1/secret/data/app/
  allKeys: true
  optional: true
- objectName: dsn
  secretPath: secret/data/db
  template: "postgres://{{ .username }}:{{password}}@db/app"
- objectName: blob
  secretPath: secret/data/b
  secretKey: b
  encoding: base64
  filePermission: 0640
"#;
        let spec = parse(&attrs(yaml), "null", "\"420\"").unwrap();
        assert_eq!(spec.role, "app");
        assert_eq!(spec.tokens.audiences(), ["keyhaven"]);
        assert!(
            !format!("{spec:?}").contains("eyJ.x.y"),
            "Debug shows no token"
        );
        let o = &spec.objects;
        assert_eq!(o[0].mode, 0o600);
        assert_eq!(o[0].selector, Selector::Key("password".into()));
        assert_eq!(o[1].method, Method::Put);
        assert_eq!(o[1].mode, 420);
        assert_eq!(o[1].args["common_name"], "web.example.com");
        assert_eq!(o[2].path, "secret/data/app");
        assert!(o[2].optional);
        assert_eq!(o[2].selector, Selector::AllKeys);
        assert_eq!(
            o[3].selector,
            Selector::Template(Template(vec![
                Part::Text("postgres://".into()),
                Part::Key("username".into()),
                Part::Text(":".into()),
                Part::Key("password".into()),
                Part::Text("@db/app".into()),
            ]))
        );
        assert_eq!(o[4].encoding, Encoding::Base64);
        assert_eq!(o[4].mode, 0o640, "an unquoted 0640 is read as octal digits");
    }

    #[test]
    fn bad_input_gets_clear_errors() {
        let bad = |yaml: &str| parse(&attrs(yaml), "{}", "420").unwrap_err().to_string();
        assert!(bad("- objectName: [").contains("not a YAML list"));
        assert!(bad("objectName: x").contains("not a YAML list"));
        let dup = "- {objectName: a, secretPath: s/a}\n- {objectName: a, secretPath: s/b}";
        assert!(bad(dup).contains("duplicate objectName"), "{}", bad(dup));
        for name in [
            "../x",
            "/etc/passwd",
            "a/../b",
            "a//b",
            "./a",
            "a/",
            "..data",
        ] {
            let e = bad(&format!("- {{objectName: {name:?}, secretPath: s/a}}"));
            assert!(e.contains("file"), "{name}: {e}");
        }
        assert!(bad("- {objectName: a, secretPath: s/a, secretkey: x}").contains("unknown field"));
        assert!(bad("- {objectName: a, secretPath: s/a, method: DELETE}").contains("method"));
        assert!(
            bad("- {objectName: a, secretPath: s/a, filePermission: \"0999\"}").contains("octal")
        );
        assert!(bad("- {objectName: a, secretPath: s/a, template: \"{{ x\"}").contains("closing"));
        assert!(
            bad("- {objectName: a, secretPath: s/a, secretKey: k, allKeys: true}")
                .contains("only one")
        );
        assert!(bad("- {objectName: a, secretPath: s/../a}").contains("element"));
        assert!(bad("- {objectName: a}").contains("secretPath is required"));
        assert!(bad("[]").contains("empty"));
        assert!(
            bad("- {objectName: a, secretPath: s/a}\n- {objectName: a/b, secretPath: s/b}")
                .contains("both a file")
        );
    }

    #[test]
    fn null_and_empty_secrets_are_accepted_and_garbage_refused() {
        let a = attrs("- {objectName: a, secretPath: s/a}");
        for s in ["", "null", "{}", "{\"x\": \"y\"}"] {
            parse(&a, s, "420").unwrap();
        }
        assert_eq!(parse(&a, "[1]", "420").unwrap_err(), ParamError::Secrets);
        assert!(matches!(
            parse("{\"roleName\": 1}", "null", "420").unwrap_err(),
            ParamError::Attributes { .. }
        ));
        assert!(matches!(
            parse(&a, "null", "\"999\"").unwrap_err(),
            ParamError::Permission(_)
        ));
    }

    #[test]
    fn errors_never_quote_the_token() {
        let marker = "eyJ-marker-token-value";
        let mut v: serde_json::Map<String, Value> =
            serde_json::from_str(&attrs("- {objectName: a, secretPath: s/a}")).unwrap();
        v.insert(
            TOKENS_ATTRIBUTE.into(),
            json!({"keyhaven": {"token": [marker]}}).to_string().into(),
        );
        let e = parse(&Value::Object(v.clone()).to_string(), "null", "420").unwrap_err();
        assert!(!e.to_string().contains(marker), "{e}");
        v.insert("roleName".into(), json!([marker]));
        let e = parse(&Value::Object(v).to_string(), "null", "420").unwrap_err();
        assert!(!e.to_string().contains(marker), "{e}");
    }

    #[test]
    fn the_token_may_come_in_the_secrets_field() {
        let mut v: serde_json::Map<String, Value> =
            serde_json::from_str(&attrs("- {objectName: a, secretPath: s/a}")).unwrap();
        let t = v.remove(TOKENS_ATTRIBUTE).unwrap();
        let secrets = json!({ TOKENS_ATTRIBUTE: t }).to_string();
        let spec = parse(&Value::Object(v).to_string(), &secrets, "420").unwrap();
        assert_eq!(spec.tokens.audiences(), ["keyhaven"]);
    }
}
