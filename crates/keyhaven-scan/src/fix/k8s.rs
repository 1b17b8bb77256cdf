//! Kubernetes manifests: literal Secrets and credentials in pod `env` values.
//!
//! A literal Secret becomes a SecretProviderClass of the keyhaven CSI provider (with
//! `secretObjects` when pods read it through `secretKeyRef` or `envFrom`, so the driver
//! syncs a Secret of the same name), and every workload of the file that uses it gets the
//! CSI volume: its `secret` volume is replaced, or one is added when it only read env
//! variables (the driver syncs only for mounted volumes). With `--target
//! external-secrets` it becomes a SecretStore and an ExternalSecret that recreate the
//! Secret, and the workloads stay as they are. A credential in an `env` value becomes a
//! `secretKeyRef` on a synced Secret named `<workload>-env`.
//!
//! All manifest files of a run are read together, so a workload in one file that uses a
//! Secret of another is found. Documents that change are written again from their parsed form (comments above them
//! are kept); the others keep every byte. Files with YAML anchors or aliases in a document
//! that would change, JSON manifests and files that do not parse are left alone.

use crate::Finding;
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use super::Target;
use super::plan::{Ctx, FileChange, Plan, Role, policy_name, segment};

/// Moved values at least this long must not appear in a rewritten file; shorter ones
/// (user names, ports) legitimately appear elsewhere.
const MIN_CHECKED_LEN: usize = 12;
/// The CSI driver's name.
const CSI_DRIVER: &str = "secrets-store.csi.k8s.io";
/// The server as pods in the cluster reach it (deploy/server).
const IN_CLUSTER_ADDRESS: &str = "https://keyhaven.keyhaven.svc:8200";

/// Whether a manifest holds a `kind: Secret` with literal `data` or `stringData`.
pub fn has_literal_secret(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    text.lines().any(|l| l.trim() == "kind: Secret")
        && text
            .lines()
            .any(|l| l.starts_with("data:") || l.starts_with("stringData:"))
}

/// One YAML document of the file.
struct Doc {
    /// Index of its file.
    file: usize,
    /// The 1-based lines of its body, `first..end`.
    lines: std::ops::Range<u64>,
    /// The separator line and comments before the body, kept as they are.
    head: String,
    /// The body as written.
    body: String,
    /// Parsed.
    value: Value,
    /// New documents that replace this one, when it changes.
    replaced: Option<Vec<Value>>,
    /// New documents after this one.
    appended: Vec<Value>,
    /// The value was changed in place.
    changed: bool,
}

fn split_docs(text: &str) -> Vec<(String, String)> {
    let mut docs: Vec<(String, String)> = Vec::new();
    let mut head = String::new();
    let mut body = String::new();
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        let sep = t == "---" || t.starts_with("--- ") || t.starts_with("---\t");
        if sep {
            if !head.is_empty() || !body.is_empty() {
                docs.push((std::mem::take(&mut head), std::mem::take(&mut body)));
            }
            head.push_str(line);
            continue;
        }
        if body.is_empty() && (t.is_empty() || t.trim_start().starts_with('#')) {
            head.push_str(line);
        } else {
            body.push_str(line);
        }
    }
    if !head.is_empty() || !body.is_empty() {
        docs.push((head, body));
    }
    docs
}

/// Whether a document uses anchors, aliases or merge keys.
fn has_anchors(body: &str) -> bool {
    body.lines().any(|l| {
        let t = l.trim_start();
        if t.starts_with('#') {
            return false;
        }
        if t.starts_with("<<:") {
            return true;
        }
        let mut prev = ' ';
        let mut quote: Option<char> = None;
        let mut chars = t.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if (c == '"' || c == '\'') && prev == ' ' => {
                    quote = Some(c);
                }
                None if c == '#' && prev == ' ' => return false,
                None if (c == '&' || c == '*')
                    && (prev == ' ' || prev == '[' || prev == ',' || prev == '-')
                    && chars.peek().is_some_and(|n| n.is_ascii_alphanumeric()) =>
                {
                    return true;
                }
                None => {}
            }
            prev = c;
        }
        false
    })
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn namespace_of(v: &Value) -> String {
    str_at(v, "/metadata/namespace")
        .unwrap_or("default")
        .to_owned()
}

fn name_of(v: &Value) -> String {
    str_at(v, "/metadata/name").unwrap_or_default().to_owned()
}

/// Where a workload kind keeps its pod spec.
fn pod_spec_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some("/spec"),
        "CronJob" => Some("/spec/jobTemplate/spec/template/spec"),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template/spec"),
        _ => None,
    }
}

fn kind_of(v: &Value) -> &str {
    str_at(v, "/kind").unwrap_or_default()
}

fn service_account(spec: &Value) -> String {
    str_at(spec, "/serviceAccountName")
        .or_else(|| str_at(spec, "/serviceAccount"))
        .unwrap_or("default")
        .to_owned()
}

/// The containers of a pod spec (init containers included).
fn containers_mut(spec: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    if let Some(m) = spec.as_object_mut() {
        for (k, v) in m.iter_mut() {
            if (k == "containers" || k == "initContainers")
                && let Some(a) = v.as_array_mut()
            {
                out.extend(a.iter_mut());
            }
        }
    }
    out
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect()
}

/// How a workload uses one Secret.
#[derive(Default)]
struct Use {
    /// Containers that read it through `secretKeyRef` or `envFrom`.
    env_containers: BTreeSet<String>,
    /// Volumes of type `secret` that mount it.
    volumes: Vec<String>,
}

fn uses_of(spec: &Value, secret: &str) -> Use {
    let mut u = Use::default();
    for c in containers(spec) {
        let cname = str_at(c, "/name").unwrap_or_default().to_owned();
        let by_key = c
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|e| str_at(e, "/valueFrom/secretKeyRef/name") == Some(secret));
        let by_from = c
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|e| str_at(e, "/secretRef/name") == Some(secret));
        if by_key || by_from {
            u.env_containers.insert(cname);
        }
    }
    for v in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if str_at(v, "/secret/secretName") == Some(secret) {
            u.volumes
                .push(str_at(v, "/name").unwrap_or_default().to_owned());
        }
    }
    u
}

/// A literal Secret's values, decoded, or why it is left alone.
fn secret_values(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(data)) = v.get("data") {
        for (k, val) in data {
            let s = val
                .as_str()
                .ok_or_else(|| format!("data.{k} is not a string"))?;
            let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|_| format!("data.{k} is not valid base64"))?;
            let text =
                String::from_utf8(bytes).map_err(|_| format!("data.{k} is binary, not text"))?;
            out.insert(k.clone(), text);
        }
    }
    if let Some(Value::Object(data)) = v.get("stringData") {
        for (k, val) in data {
            let s = match val {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(format!("stringData.{k} is not a string")),
            };
            out.insert(k.clone(), s);
        }
    }
    Ok(out)
}

fn spc_objects(mount: &str, kv_path: &str, keys: &[(String, Option<String>)]) -> String {
    let mut s = String::new();
    for (k, perm) in keys {
        s.push_str(&format!(
            "- objectName: {}\n  secretPath: {mount}/data/{kv_path}\n  secretKey: {}\n",
            yaml_quote(k),
            yaml_quote(k)
        ));
        if let Some(p) = perm {
            s.push_str(&format!("  filePermission: \"{p}\"\n"));
        }
    }
    s
}

/// A YAML double-quoted string (JSON's escaping is valid YAML).
fn yaml_quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A SecretProviderClass for the keyhaven provider.
fn spc(
    name: &str,
    ns: &str,
    role: &str,
    objects: String,
    sync: Option<(&str, &[String])>,
) -> Value {
    let mut spec = json!({
        "provider": "keyhaven",
        "parameters": {
            "roleName": role,
            "objects": objects,
        }
    });
    if let (Some((ty, keys)), Some(m)) = (sync, spec.as_object_mut()) {
        let data: Vec<Value> = keys
            .iter()
            .map(|k| json!({"objectName": k, "key": k}))
            .collect();
        m.insert(
            "secretObjects".into(),
            json!([{"secretName": name, "type": ty, "data": data}]),
        );
    }
    json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// A SecretStore and an ExternalSecret that recreate Secret `name` from `kv_path`.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per target; a struct would only rename the arguments"
)]
fn external_secret(
    ctx: &Ctx,
    name: &str,
    ns: &str,
    role: &str,
    service_account: &str,
    kv_path: &str,
    keys: &[String],
    ty: &str,
) -> Vec<Value> {
    let store = format!("keyhaven-{name}");
    let data: Vec<Value> = keys
        .iter()
        .map(|k| json!({"secretKey": k, "remoteRef": {"key": kv_path, "property": k}}))
        .collect();
    vec![
        json!({
            "apiVersion": "external-secrets.io/v1",
            "kind": "SecretStore",
            "metadata": {"name": store, "namespace": ns},
            "spec": {"provider": {"vault": {
                "server": IN_CLUSTER_ADDRESS,
                "path": ctx.mount,
                "version": "v2",
                "auth": {"kubernetes": {
                    "mountPath": "kubernetes",
                    "role": role,
                    "serviceAccountRef": {"name": service_account, "audiences": ["keyhaven"]},
                }},
            }}},
        }),
        json!({
            "apiVersion": "external-secrets.io/v1",
            "kind": "ExternalSecret",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "refreshInterval": "1h",
                "secretStoreRef": {"name": store, "kind": "SecretStore"},
                "target": {"name": name, "creationPolicy": "Owner", "template": {"type": ty}},
                "data": data,
            },
        }),
    ]
}

fn csi_volume(volume: &str, class: &str) -> Value {
    json!({
        "name": volume,
        "csi": {
            "driver": CSI_DRIVER,
            "readOnly": true,
            "volumeAttributes": {"secretProviderClass": class},
        }
    })
}

/// Give the pod spec the CSI volume of `class`: `secret` volumes of `secret` become it;
/// without one, a volume is added and mounted read-only in `containers`.
fn give_csi_volume(
    spec: &mut Value,
    secret: &str,
    class: &str,
    containers: &BTreeSet<String>,
) -> bool {
    let mut replaced = false;
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols.iter_mut() {
            if str_at(v, "/secret/secretName") == Some(secret) {
                let name = str_at(v, "/name").unwrap_or_default().to_owned();
                *v = csi_volume(&name, class);
                replaced = true;
            }
        }
    }
    if replaced {
        return true;
    }
    let volume = volume_name(class);
    let already = spec
        .get("volumes")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|v| str_at(v, "/name") == Some(volume.as_str()))
        });
    if !already && let Some(m) = spec.as_object_mut() {
        let vols = m
            .entry("volumes")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(a) = vols.as_array_mut() {
            a.push(csi_volume(&volume, class));
        }
    }
    for c in containers_mut(spec) {
        let cname = str_at(c, "/name").unwrap_or_default().to_owned();
        if !containers.contains(&cname) {
            continue;
        }
        let Some(m) = c.as_object_mut() else { continue };
        let mounts = m
            .entry("volumeMounts")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(a) = mounts.as_array_mut()
            && !a
                .iter()
                .any(|x| str_at(x, "/name") == Some(volume.as_str()))
        {
            a.push(json!({
                "name": volume,
                "mountPath": format!("/mnt/keyhaven/{class}"),
                "readOnly": true,
            }));
        }
    }
    true
}

/// A volume name (a DNS label of at most 63 characters).
fn volume_name(class: &str) -> String {
    let mut n = format!("keyhaven-{}", segment(class).replace(['.', '_'], "-"));
    n.truncate(63);
    n.trim_end_matches('-').to_owned()
}

/// Whole numbers back to integers: the parser hands every number over as a float, and
/// `8080.0` is not a valid port. A number written with a leading zero (`defaultMode:
/// 0400`) is octal to Kubernetes (YAML 1.1) and is read again as such.
fn integers(v: &mut Value, body: &str) {
    fn whole(n: &serde_json::Number) -> Option<i64> {
        if let Some(i) = n.as_i64() {
            return Some(i);
        }
        let f = n.as_f64()?;
        #[allow(
            clippy::cast_possible_truncation,
            reason = "checked to be whole and in range"
        )]
        (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
    }
    match v {
        Value::Array(a) => a.iter_mut().for_each(|x| integers(x, body)),
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if let Value::Number(n) = x {
                    if let Some(i) = whole(n) {
                        let written_octal = i > 0
                            && body.lines().any(|l| {
                                l.trim_start()
                                    .trim_start_matches("- ")
                                    .strip_prefix(k.as_str())
                                    .and_then(|t| t.strip_prefix(':'))
                                    .is_some_and(|t| t.trim() == format!("0{i}"))
                            });
                        *x = match written_octal {
                            true => i64::from_str_radix(&i.to_string(), 8)
                                .map_or_else(|_| Value::from(i), Value::from),
                            false => Value::from(i),
                        };
                    }
                } else {
                    integers(x, body);
                }
            }
        }
        _ => {}
    }
}

/// A volume's `defaultMode` as a file permission.
fn file_mode(v: &Value) -> Option<u32> {
    let mode = u32::try_from(v.as_u64()?).ok()?;
    (mode <= 0o777).then_some(mode)
}

/// An `env` entry holding a literal credential.
struct EnvLiteral {
    container: String,
    name: String,
    value: String,
}

fn is_placeholder(v: &str) -> bool {
    v.is_empty() || v.contains("{{") || v.contains("${") || v.contains("$(")
}

fn env_literals(spec: &Value, found: &BTreeSet<Vec<u8>>) -> Vec<EnvLiteral> {
    let mut out = Vec::new();
    for c in containers(spec) {
        let cname = str_at(c, "/name").unwrap_or_default();
        for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
            let (Some(name), Some(value)) = (str_at(e, "/name"), str_at(e, "/value")) else {
                continue;
            };
            if is_placeholder(value) {
                continue;
            }
            if crate::k8s::sensitive_env_name(name) || found.contains(value.as_bytes()) {
                out.push(EnvLiteral {
                    container: cname.to_owned(),
                    name: name.to_owned(),
                    value: value.to_owned(),
                });
            }
        }
    }
    out
}

fn emit(values: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let s = serde_saphyr::to_string(v).map_err(|e| e.to_string())?;
        out.push_str(&s);
        if !s.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// A manifest file to fix.
pub struct Manifest<'a> {
    /// The file.
    pub path: std::path::PathBuf,
    /// As shown to the user.
    pub display: String,
    /// Its text.
    pub text: String,
    /// The secret findings in it.
    pub findings: Vec<&'a Finding>,
}

/// Plan the fix of the manifest files together: a workload in one file that uses a Secret
/// of another is found.
pub fn fix(ctx: &Ctx, target: Target, plan: &mut Plan, manifests: &[Manifest<'_>]) {
    let mut docs = Vec::new();
    let mut files: Vec<&Manifest<'_>> = Vec::new();
    'files: for m in manifests {
        let display = m.display.as_str();
        if m.text.trim_start().starts_with('{') || display.to_ascii_lowercase().ends_with(".json") {
            plan.notes.push(format!(
                "{display}: left alone: JSON manifests are not rewritten; convert it to YAML or move the values by hand"
            ));
            continue;
        }
        let mut file_docs = Vec::new();
        let mut line = 1u64;
        for (head, body) in split_docs(&m.text) {
            let count = |t: &str| t.split_inclusive('\n').count() as u64;
            let first = line + count(&head);
            line = first + count(&body);
            let lines = first..line;
            let value = if body.trim().is_empty() {
                Value::Null
            } else {
                match serde_saphyr::from_str::<Value>(&body) {
                    Ok(mut v) => {
                        integers(&mut v, &body);
                        v
                    }
                    Err(_) => {
                        plan.notes.push(format!(
                            "{display}: left alone: a document does not parse as YAML"
                        ));
                        continue 'files;
                    }
                }
            };
            file_docs.push(Doc {
                file: files.len(),
                lines,
                head,
                body,
                value,
                replaced: None,
                appended: Vec::new(),
                changed: false,
            });
        }
        docs.extend(file_docs);
        files.push(m);
    }
    let findings: Vec<&Finding> = files
        .iter()
        .flat_map(|m| m.findings.iter().copied())
        .collect();
    let display_of = |i: usize| files.get(i).map(|m| m.display.clone()).unwrap_or_default();
    let found: BTreeSet<Vec<u8>> = findings
        .iter()
        .filter_map(|f| f.secret.as_ref().map(|s| s.expose().to_vec()))
        .collect();
    let mut moved: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut sub = Plan::default();

    // Literal Secrets.
    let secret_docs: Vec<usize> = docs
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            kind_of(&d.value) == "Secret"
                && (d
                    .value
                    .get("data")
                    .is_some_and(|v| v.as_object().is_some_and(|m| !m.is_empty()))
                    || d.value
                        .get("stringData")
                        .is_some_and(|v| v.as_object().is_some_and(|m| !m.is_empty())))
        })
        .map(|(i, _)| i)
        .collect();
    for si in secret_docs {
        let Some(doc) = docs.get(si) else { continue };
        let name = name_of(&doc.value);
        let ns = namespace_of(&doc.value);
        let ty = str_at(&doc.value, "/type").unwrap_or("Opaque").to_owned();
        let display = display_of(doc.file);
        let what = format!("{display}: Secret {ns}/{name}");
        if name.is_empty() {
            plan.notes
                .push(format!("{what}: left alone: it has no name"));
            continue;
        }
        if ty == "kubernetes.io/service-account-token" || ty == "bootstrap.kubernetes.io/token" {
            plan.notes.push(format!(
                "{what}: left alone: a {ty} Secret is made by Kubernetes itself; delete it and rotate the token"
            ));
            continue;
        }
        if has_anchors(&doc.body) {
            plan.notes.push(format!(
                "{what}: left alone: it uses YAML anchors or aliases; expand them and run again"
            ));
            continue;
        }
        let values = match secret_values(&doc.value) {
            Ok(v) => v,
            Err(why) => {
                plan.notes.push(format!("{what}: left alone: {why}"));
                continue;
            }
        };
        // Workloads in the same namespace that use it.
        let mut consumers = Vec::new();
        let mut blocked = false;
        for (wi, w) in docs.iter().enumerate() {
            let Some(ptr) = pod_spec_pointer(kind_of(&w.value)) else {
                continue;
            };
            if namespace_of(&w.value) != ns {
                continue;
            }
            let Some(spec) = w.value.pointer(ptr) else {
                continue;
            };
            let u = uses_of(spec, &name);
            if u.env_containers.is_empty() && u.volumes.is_empty() {
                continue;
            }
            if has_anchors(&w.body) {
                plan.notes.push(format!(
                    "{what}: left alone: {} {} uses YAML anchors or aliases; expand them and run again",
                    kind_of(&w.value),
                    name_of(&w.value)
                ));
                blocked = true;
                break;
            }
            consumers.push((wi, ptr, service_account(spec), u));
        }
        if blocked {
            continue;
        }
        let kv_path = ctx.kv_path(&ns, &name);
        let mut ok = true;
        for (k, v) in &values {
            if let Err(e) = sub.add_kv(&kv_path, k, v, &format!("{display} (Secret {ns}/{name})")) {
                plan.notes.push(format!("{e}; left alone"));
                ok = false;
            }
        }
        if !ok {
            sub.kv.remove(&kv_path);
            continue;
        }
        let keys: Vec<String> = values.keys().cloned().collect();
        let role = format!("{}-{}", segment(&ns), segment(&name));
        let policy = policy_name(&ns, &name);
        let sas: BTreeSet<String> = consumers.iter().map(|c| c.2.clone()).collect();
        let env_used = consumers.iter().any(|c| !c.3.env_containers.is_empty());
        // File permissions of the secret volumes carry over to the objects.
        let mode = consumers.iter().find_map(|(wi, ptr, _, u)| {
            let doc = docs.get(*wi)?;
            let spec = doc.value.pointer(ptr)?;
            spec.get("volumes")?.as_array()?.iter().find_map(|v| {
                u.volumes
                    .contains(&str_at(v, "/name")?.to_owned())
                    .then(|| file_mode(v.pointer("/secret/defaultMode")?))
                    .flatten()
            })
        });
        match target {
            Target::Csi => {
                let objects = spc_objects(
                    &ctx.mount,
                    &kv_path,
                    &keys
                        .iter()
                        .map(|k| (k.clone(), mode.map(|m| format!("{m:04o}"))))
                        .collect::<Vec<_>>(),
                );
                let sync =
                    (env_used || consumers.is_empty()).then_some((ty.as_str(), keys.as_slice()));
                if let Some(d) = docs.get_mut(si) {
                    d.replaced = Some(vec![spc(&name, &ns, &role, objects, sync)]);
                }
                for (wi, ptr, _, u) in &consumers {
                    if let Some(spec) = docs.get_mut(*wi).and_then(|d| d.value.pointer_mut(ptr)) {
                        give_csi_volume(spec, &name, &name, &u.env_containers);
                    }
                    if let Some(d) = docs.get_mut(*wi) {
                        d.changed = true;
                    }
                }
            }
            Target::ExternalSecrets => {
                let sa = match sas.iter().next() {
                    Some(sa) if sas.len() == 1 => sa.clone(),
                    Some(_) => {
                        plan.notes.push(format!(
                            "{what}: its workloads run as several ServiceAccounts; the SecretStore logs in as the first, {} (the role binds all of them)",
                            sas.iter().next().cloned().unwrap_or_default()
                        ));
                        sas.iter().next().cloned().unwrap_or_default()
                    }
                    None => "default".to_owned(),
                };
                if let Some(d) = docs.get_mut(si) {
                    d.replaced = Some(external_secret(
                        ctx, &name, &ns, &role, &sa, &kv_path, &keys, &ty,
                    ));
                }
            }
        }
        sub.add_policy(&policy, &ctx.mount, std::slice::from_ref(&kv_path));
        let mut bound: Vec<String> = sas.into_iter().collect();
        if bound.is_empty() && target == Target::ExternalSecrets {
            bound.push("default".to_owned());
        }
        if bound.is_empty() {
            plan.notes.push(format!(
                "{what}: no scanned workload uses it, so no auth/kubernetes role {role} is written; create it for the ServiceAccounts that mount the SecretProviderClass (policy {policy})"
            ));
        } else {
            sub.roles.push(Role {
                name: role,
                service_accounts: bound,
                namespaces: vec![ns.clone()],
                policies: vec![policy],
            });
        }
        for v in values.values() {
            moved.insert(v.as_bytes().to_vec());
        }
        sub.leaked.push((
            what.clone(),
            format!("{} value(s) of Secret {ns}/{name}", values.len()),
        ));
    }

    // Credentials in env values.
    let workload_docs: Vec<usize> = docs
        .iter()
        .enumerate()
        .filter(|(_, d)| pod_spec_pointer(kind_of(&d.value)).is_some())
        .map(|(i, _)| i)
        .collect();
    for wi in workload_docs {
        let Some(doc) = docs.get(wi) else { continue };
        let Some(ptr) = pod_spec_pointer(kind_of(&doc.value)) else {
            continue;
        };
        let Some(spec) = doc.value.pointer(ptr) else {
            continue;
        };
        let literals = env_literals(spec, &found);
        if literals.is_empty() {
            continue;
        }
        let wname = name_of(&doc.value);
        let ns = namespace_of(&doc.value);
        let display = display_of(doc.file);
        let what = format!("{display}: {} {ns}/{wname}", kind_of(&doc.value));
        if has_anchors(&doc.body) {
            plan.notes.push(format!(
                "{what}: left alone: it uses YAML anchors or aliases; expand them and run again"
            ));
            continue;
        }
        let class = format!("{wname}-env");
        let kv_path = ctx.kv_path(&ns, &class);
        let sa = service_account(spec);
        let mut keys = BTreeSet::new();
        let mut taken = Vec::new();
        for l in &literals {
            match sub.add_kv(
                &kv_path,
                &l.name,
                &l.value,
                &format!("{what} env {}", l.name),
            ) {
                Ok(()) => {
                    keys.insert(l.name.clone());
                    taken.push(l);
                }
                Err(e) => plan.notes.push(format!("{e}; left alone")),
            }
        }
        if taken.is_empty() {
            continue;
        }
        let containers_used: BTreeSet<String> = taken.iter().map(|l| l.container.clone()).collect();
        let keys: Vec<String> = keys.into_iter().collect();
        let role = format!("{}-{}", segment(&ns), segment(&class));
        let policy = policy_name(&ns, &class);
        if let Some(spec) = docs.get_mut(wi).and_then(|d| d.value.pointer_mut(ptr)) {
            for c in containers_mut(spec) {
                let cname = str_at(c, "/name").unwrap_or_default().to_owned();
                for e in c
                    .get_mut("env")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    let name = str_at(e, "/name").unwrap_or_default().to_owned();
                    if taken.iter().any(|l| {
                        l.container == cname
                            && l.name == name
                            && str_at(e, "/value") == Some(l.value.as_str())
                    }) {
                        *e = json!({"name": name, "valueFrom": {"secretKeyRef": {"name": class, "key": name}}});
                    }
                }
            }
            if target == Target::Csi {
                give_csi_volume(spec, "", &class, &containers_used);
            }
        }
        if let Some(d) = docs.get_mut(wi) {
            d.changed = true;
            match target {
                Target::Csi => d.appended.push(spc(
                    &class,
                    &ns,
                    &role,
                    spc_objects(
                        &ctx.mount,
                        &kv_path,
                        &keys.iter().map(|k| (k.clone(), None)).collect::<Vec<_>>(),
                    ),
                    Some(("Opaque", keys.as_slice())),
                )),
                Target::ExternalSecrets => d.appended.extend(external_secret(
                    ctx, &class, &ns, &role, &sa, &kv_path, &keys, "Opaque",
                )),
            }
        }
        sub.add_policy(&policy, &ctx.mount, std::slice::from_ref(&kv_path));
        sub.roles.push(Role {
            name: role,
            service_accounts: vec![sa],
            namespaces: vec![ns.clone()],
            policies: vec![policy],
        });
        for l in &taken {
            moved.insert(l.value.as_bytes().to_vec());
            sub.leaked.push((
                format!("{what} env {}", l.name),
                "a credential in an env value".into(),
            ));
        }
    }

    for f in &findings {
        // A finding inside a replaced Secret is gone with it.
        let replaced = docs.iter().any(|d| {
            d.replaced.is_some()
                && d.lines.contains(&f.line)
                && files.get(d.file).is_some_and(|m| m.display == f.path)
        });
        if let (Some(s), false) = (&f.secret, replaced)
            && !moved.iter().any(|m| contains(m, s.expose()))
        {
            plan.notes.push(format!(
                "{}:{}: {} left alone: not in a Secret or an env value; move it by hand",
                f.path, f.line, f.description
            ));
        }
    }
    if sub.kv.is_empty() {
        return;
    }
    // Write the files again: changed documents from their values, the others as they were.
    let mut changes = Vec::new();
    for (fi, m) in files.iter().enumerate() {
        let file_docs: Vec<&Doc> = docs.iter().filter(|d| d.file == fi).collect();
        if !file_docs
            .iter()
            .any(|d| d.changed || d.replaced.is_some() || !d.appended.is_empty())
        {
            continue;
        }
        let display = m.display.as_str();
        let after = match write_file(&file_docs) {
            Ok(a) => a,
            Err(e) => {
                plan.notes.push(format!(
                    "{display}: cannot write YAML ({e}); no manifest was changed"
                ));
                return;
            }
        };
        // The result must parse, and hold no value that moved.
        if serde_saphyr::from_multiple::<Value>(&after).is_err() {
            plan.notes.push(format!(
                "{display}: the rewritten file would not parse; no manifest was changed"
            ));
            return;
        }
        if moved
            .iter()
            .any(|v| v.len() >= MIN_CHECKED_LEN && contains(after.as_bytes(), v))
        {
            plan.notes.push(format!(
                "{display}: a moved value appears elsewhere in the file too; no manifest was changed, move it by hand"
            ));
            return;
        }
        changes.push(FileChange {
            path: m.path.clone(),
            display: m.display.clone(),
            before: m.text.clone(),
            after,
        });
    }
    for (path_, w) in sub.kv {
        for (k, v) in w.data {
            use secrecy::ExposeSecret as _;
            for src in &w.sources {
                if let Err(e) = plan.add_kv(&path_, &k, v.expose_secret(), src) {
                    plan.notes.push(e);
                }
            }
        }
    }
    plan.policies.extend(sub.policies);
    for r in sub.roles {
        if !plan.roles.contains(&r) {
            plan.roles.push(r);
        }
    }
    plan.leaked.extend(sub.leaked);
    plan.files.extend(changes);
}

fn write_file(docs: &[&Doc]) -> Result<String, String> {
    let mut after = String::new();
    for d in docs {
        after.push_str(&d.head);
        let body = match (&d.replaced, d.changed) {
            (Some(values), _) => emit(values)?,
            (None, true) => emit(std::slice::from_ref(&d.value))?,
            (None, false) => d.body.clone(),
        };
        after.push_str(&body);
        if !d.appended.is_empty() {
            if !after.ends_with('\n') {
                after.push('\n');
            }
            after.push_str("---\n");
            after.push_str(&emit(&d.appended)?);
        }
    }
    Ok(after)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_integers_and_modes_are_octal_as_kubernetes_reads_them() {
        let body = "spec:\n  port: 8080\n  ratio: 0.5\n  defaultMode: 0400\n";
        let mut v: Value = serde_saphyr::from_str(body).unwrap();
        integers(&mut v, body);
        assert_eq!(
            emit(&[v.clone()]).unwrap(),
            "spec:\n  defaultMode: 256\n  port: 8080\n  ratio: 0.5\n"
        );
        assert_eq!(file_mode(&v["spec"]["defaultMode"]), Some(0o400));
        assert_eq!(file_mode(&json!(420)), Some(0o644));
    }

    #[test]
    fn documents_split_with_their_comments() {
        let docs = split_docs("---\n# Source: a.yaml\nkind: A\n---\nkind: B\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].0, "---\n# Source: a.yaml\n");
        assert_eq!(docs[0].1, "kind: A\n");
        assert_eq!(docs[1].1, "kind: B\n");
    }

    #[test]
    fn anchors_and_aliases_are_seen_but_not_in_strings_or_comments() {
        assert!(has_anchors("a: &x 1\nb: *x\n"));
        assert!(has_anchors("<<: *base\n"));
        assert!(!has_anchors("a: \"p&ss*word\"\nb: x # &y\nc: a&b\n"));
    }
}
