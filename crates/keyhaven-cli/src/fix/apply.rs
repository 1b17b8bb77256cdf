//! Carrying out a plan: keyhaven first (check-and-set, nothing overwritten), then the
//! files, each replaced atomically.

use std::io::Write as _;
use std::path::Path;

use keyhaven_client::Client;
use secrecy::ExposeSecret as _;
use serde_json::{Map, Value, json};

use crate::output;
use keyhaven_scan::fix::{Ctx, Plan, Role};

/// What to do at one KV path.
enum KvAction {
    /// The values are already there.
    Present,
    /// Write `data` with check-and-set `cas`.
    Write { cas: u64, data: Map<String, Value> },
}

/// Why applying stopped.
pub(crate) enum ApplyError {
    /// Something at a target differs: nothing was changed.
    Conflict(Vec<String>),
    /// A call failed; `files_changed` says whether any file had been replaced.
    Failed(String),
}

fn role_body(r: &Role) -> Value {
    json!({
        "bound_service_account_names": r.service_accounts,
        "bound_service_account_namespaces": r.namespaces,
        "audience": "keyhaven",
        "token_policies": r.policies,
        "token_ttl": "1h",
    })
}

/// Whether an existing role is the one we would write.
fn same_role(existing: &Value, r: &Role) -> bool {
    let list = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = match existing.get(k) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(s)) => s.split(',').map(|x| x.trim().to_owned()).collect(),
            _ => Vec::new(),
        };
        v.sort();
        v
    };
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    list("bound_service_account_names") == sorted(&r.service_accounts)
        && list("bound_service_account_namespaces") == sorted(&r.namespaces)
        && list("token_policies") == sorted(&r.policies)
}

/// Apply `plan`: returns the lines that say what was done.
pub(crate) async fn apply(
    client: &Client,
    ctx: &Ctx,
    plan: &Plan,
) -> Result<Vec<String>, ApplyError> {
    let fail = |what: String, e: keyhaven_client::ClientError| {
        ApplyError::Failed(format!("{what}: {}", output::describe(&e)))
    };
    let kv = client.kv2(&ctx.mount);
    let mut conflicts = Vec::new();
    let mut actions = Vec::new();
    // 1. Look at every target before changing anything.
    for (path, w) in &plan.kv {
        let current = kv
            .read(path, None)
            .await
            .map_err(|e| fail(format!("reading {}/data/{path}", ctx.mount), e))?;
        let (version, existing) = match current {
            None => (0, Map::new()),
            Some(s) => (
                s.data.metadata.as_ref().map_or(0, |m| m.version),
                s.data.data.unwrap_or_default(),
            ),
        };
        let mut merged = existing.clone();
        let mut missing = false;
        for (k, v) in &w.data {
            match existing.get(k) {
                Some(Value::String(s)) if s == v.expose_secret() => {}
                Some(_) => conflicts.push(format!(
                    "{}/data/{path}: key {k:?} already holds a different value (from {})",
                    ctx.mount,
                    w.sources.join(", ")
                )),
                None => {
                    missing = true;
                    merged.insert(k.clone(), Value::String(v.expose_secret().to_owned()));
                }
            }
        }
        actions.push((
            path,
            if missing {
                KvAction::Write {
                    cas: version,
                    data: merged,
                }
            } else {
                KvAction::Present
            },
        ));
    }
    let mut policy_writes = Vec::new();
    for (name, text) in &plan.policies {
        let api = format!("sys/policies/acl/{name}");
        let existing = client
            .read(&api, &[])
            .await
            .map_err(|e| fail(format!("reading {api}"), e))?;
        let current = existing
            .as_ref()
            .and_then(|v| {
                v.get("data")
                    .and_then(|d| d.get("policy"))
                    .or(v.get("policy"))
            })
            .and_then(Value::as_str)
            .map(str::to_owned);
        match current {
            None => policy_writes.push((api, text)),
            Some(t) if t.trim() == text.trim() => {}
            Some(_) => conflicts.push(format!(
                "policy {name} exists with other rules; remove it or rename it"
            )),
        }
    }
    let mut role_writes = Vec::new();
    let mut auth_enabled = true;
    if !plan.roles.is_empty() {
        let mounts = client
            .list_auth()
            .await
            .map_err(|e| fail("listing auth methods".to_owned(), e))?;
        if !mounts.contains_key("kubernetes/") {
            auth_enabled = false;
            conflicts.push(
                "auth/kubernetes is not enabled, so the roles cannot be written: `keyhaven auth enable kubernetes` and configure it first".to_owned(),
            );
        }
    }
    for r in plan.roles.iter().filter(|_| auth_enabled) {
        let api = format!("auth/kubernetes/role/{}", r.name);
        let existing = client.read(&api, &[]).await.map_err(|e| {
            fail(
                format!(
                    "reading {api} (is auth/kubernetes enabled? `keyhaven auth enable kubernetes`)"
                ),
                e,
            )
        })?;
        match existing.as_ref().and_then(|v| v.get("data")) {
            None => role_writes.push((api, role_body(r))),
            Some(d) if same_role(d, r) => {}
            Some(_) => conflicts.push(format!(
                "auth/kubernetes role {} exists with other bindings or policies",
                r.name
            )),
        }
    }
    for f in &plan.files {
        match std::fs::read_to_string(&f.path) {
            Ok(t) if t == f.before => {}
            _ => conflicts.push(format!("{} changed since it was scanned", f.display)),
        }
    }
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflict(conflicts));
    }
    // 2. keyhaven: values (check-and-set), policies, roles.
    let mut done = Vec::new();
    for (path, action) in actions {
        match action {
            KvAction::Present => done.push(format!(
                "{}/data/{path}: already holds these values",
                ctx.mount
            )),
            KvAction::Write { cas, data } => {
                let keys: Vec<&String> = data.keys().collect();
                let keys = keys
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                kv.write(path, &data, Some(cas)).await.map_err(|e| {
                    fail(
                        format!(
                            "writing {}/data/{path} (check-and-set {cas}); no file was changed",
                            ctx.mount
                        ),
                        e,
                    )
                })?;
                done.push(format!("wrote {}/data/{path} ({keys})", ctx.mount));
            }
        }
    }
    for (api, text) in policy_writes {
        client
            .write(&api, Some(&json!({ "policy": text })))
            .await
            .map_err(|e| fail(format!("writing {api}; no file was changed"), e))?;
        done.push(format!("wrote {api}"));
    }
    for (api, body) in role_writes {
        client
            .write(&api, Some(&body))
            .await
            .map_err(|e| fail(format!("writing {api}; no file was changed"), e))?;
        done.push(format!("wrote {api}"));
    }
    // 3. Files.
    for f in &plan.files {
        write_atomic(&f.path, &f.after)
            .map_err(|e| ApplyError::Failed(format!("replacing {}: {e}", f.display)))?;
        done.push(format!("rewrote {}", f.display));
    }
    Ok(done)
}

/// Replace `path` with `contents`: a temporary file beside it with the same permissions,
/// synced, then renamed over it.
pub(crate) fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.keyhaven-fix.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let perms = std::fs::metadata(path)?.permissions();
        f.set_permissions(perms)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            // Best effort: the rename is durable once the directory is synced.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_keep_the_mode_and_leave_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.env");
        std::fs::write(&p, "A=1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, "A=${A}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A=${A}\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
