//! ACL policies: Vault's HCL policy language, deny by default, `deny` wins.
//!
//! - [`Policy::parse`] turns policy text (HCL, or Vault's JSON form) into a validated
//!   policy; what it accepts is described in its module.
//! - [`Acl`] is the compiled union of a token's policies and answers
//!   [`Acl::authorize`] (with a [`Decision`] that names the deciding policy and rule) and
//!   [`Acl::capabilities`]. Evaluation rules and the list of root-protected (`sudo`) paths
//!   are documented with it.
//! - [`PolicyStore`] keeps policies behind the barrier at `core/policy/<name>`, serves
//!   `sys/policy` and `sys/policies/acl`, and caches compiled ACLs by policy set.
//!
//! Invariants:
//! - the `root` policy is built in: it allows everything, is never stored, and cannot be
//!   written or deleted; it is listed by `sys/policy`;
//! - the `default` policy exists from the first unseal and cannot be deleted (it can be
//!   edited, as in Vault);
//! - the `response-wrapping` policy of wrapping tokens is built in like `root`: never
//!   stored, readable, and it can be neither written nor deleted;
//! - a policy change takes effect on the next request: the store drops every cached ACL
//!   when a policy is written or deleted, and an ACL compiled while a change was under
//!   way is used once but not cached.
//!
//! Limits: the cache lives in this process; with several replicas over one database,
//! another replica's policy write is seen here only after [`PolicyStore::invalidate`] is
//! called (by the future cross-replica invalidation) or the server restarts.

mod acl;
pub(crate) mod parse;

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use keyhaven_storage::{ReadMostly, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use acl::{Acl, Decision};
pub use parse::{Caps, MAX_POLICY_BYTES, Policy, PolicyParseError, Rule};

use crate::error::EngineError;
use crate::request::{Operation, Response};

/// Where policies live in the barrier view.
pub(crate) const PREFIX: &str = "core/policy/";

/// The most compiled ACLs kept; past it the cache starts over.
const MAX_CACHED_ACLS: usize = 4096;

/// The longest policy name accepted.
const MAX_NAME_LEN: usize = 128;

/// The built-in `default` policy, written at the first unseal (Vault's rules, less the
/// paths of features keyhaven does not have: identity, OIDC provider).
pub const DEFAULT_POLICY: &str = r#"# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up its resultant ACL from all policies
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}

# Allow clients (such as the CLI) to find the mount of a path
path "sys/internal/ui/mounts" {
    capabilities = ["read"]
}
path "sys/internal/ui/mounts/*" {
    capabilities = ["read"]
}

# Allow a token to renew and look up a lease whose id it knows
path "sys/leases/renew" {
    capabilities = ["update"]
}
path "sys/leases/lookup" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow response wrapping of arbitrary values, and unwrapping
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}

# Allow general purpose tools
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}
"#;

/// The name of the built-in policy of wrapping tokens.
pub const RESPONSE_WRAPPING: &str = "response-wrapping";

/// The built-in policy of wrapping tokens (Vault's): read the wrapped response, unwrap,
/// revoke itself.
pub const RESPONSE_WRAPPING_POLICY: &str = r#"
path "cubbyhole/response" {
    capabilities = ["create", "read"]
}

path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}

path "auth/token/revoke-self" {
    capabilities = ["update"]
}
"#;

/// What is stored at `core/policy/<name>`.
#[derive(Serialize, Deserialize)]
struct StoredPolicy {
    name: String,
    policy: String,
}

/// Policies read for one compilation, by name (`None`: not stored).
type Loaded = Vec<(String, Option<Arc<Policy>>)>;

#[derive(Default)]
struct Cache {
    /// Bumped by every policy write or delete.
    generation: u64,
    /// Parsed policies by name; `None` for a name with no stored policy.
    policies: HashMap<String, Option<Arc<Policy>>>,
    /// Compiled ACLs by policy list, as callers give it and sorted.
    acls: HashMap<Vec<String>, Arc<Acl>>,
}

/// Stored policies behind the barrier, with a cache of compiled ACLs.
pub struct PolicyStore {
    storage: Arc<dyn Store>,
    cache: ReadMostly<Cache>,
    /// Serialises writes and deletes.
    write_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore").finish_non_exhaustive()
    }
}

impl PolicyStore {
    /// Load the store of an unsealed barrier view (creating the `default` policy if missing).
    pub(crate) async fn load(storage: Arc<dyn Store>) -> Result<Self, EngineError> {
        let key = format!("{PREFIX}default");
        if storage.get(&key).await?.is_none() {
            let bytes = encode("default", DEFAULT_POLICY)?;
            // Another replica may be doing the same: only the first write counts.
            storage.compare_and_swap(&key, None, Some(bytes)).await?;
        }
        Ok(PolicyStore {
            storage,
            cache: ReadMostly::new(Cache::default()),
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// `decide` applied to the ACL for a set of policy names ([`PolicyStore::acl_for`]).
    /// An ACL compiled already is borrowed under the cache's read lock (a lock of this
    /// thread's shard) instead of cloned: every request decides, and a reference count
    /// every request changes is a cache line all CPUs fight over.
    pub async fn with_acl<R>(
        &self,
        policies: &[String],
        decide: impl FnOnce(&Acl) -> R,
    ) -> Result<R, EngineError> {
        {
            let cache = self.cache.read();
            if let Some(acl) = cache.acls.get(policies) {
                return Ok(decide(acl));
            }
        }
        let acl = self.acl_for(policies).await?;
        Ok(decide(&acl))
    }

    /// The ACL for a set of policy names. Names with no stored policy grant nothing;
    /// `root` among them gives the root ACL.
    pub async fn acl_for(&self, policies: &[String]) -> Result<Arc<Acl>, EngineError> {
        if let Some(acl) = self.cache.read().acls.get(policies) {
            return Ok(acl.clone());
        }
        let mut names: Vec<String> = policies.to_vec();
        names.sort_unstable();
        names.dedup();
        let generation = {
            let cache = self.cache.read();
            if let Some(acl) = cache.acls.get(&names).cloned() {
                drop(cache);
                self.remember(policies, None, acl.clone(), None);
                return Ok(acl);
            }
            cache.generation
        };
        let acl = if names.iter().any(|n| n == "root") {
            Arc::new(Acl::root())
        } else {
            let mut loaded: Loaded = Vec::with_capacity(names.len());
            for name in &names {
                let cached = self.cache.read().policies.get(name).cloned();
                let policy = match cached {
                    Some(p) => p,
                    None => self.fetch(name).await?.map(|(_, p)| Arc::new(p)),
                };
                loaded.push((name.clone(), policy));
            }
            let acl = Acl::compile(
                loaded
                    .iter()
                    .filter_map(|(n, p)| p.as_deref().map(|p| (n.as_str(), p))),
            );
            let acl = Arc::new(acl);
            self.remember(
                policies,
                Some(names),
                acl.clone(),
                Some((generation, loaded)),
            );
            return Ok(acl);
        };
        self.remember(policies, Some(names), acl.clone(), None);
        Ok(acl)
    }

    /// Cache a compiled ACL under the caller's list and the sorted one, unless a policy
    /// changed since `loaded` was read.
    fn remember(
        &self,
        given: &[String],
        sorted: Option<Vec<String>>,
        acl: Arc<Acl>,
        loaded: Option<(u64, Loaded)>,
    ) {
        let mut cache = self.cache.write();
        if let Some((generation, loaded)) = loaded {
            if cache.generation != generation {
                return;
            }
            for (name, policy) in loaded {
                cache.policies.insert(name, policy);
            }
        }
        if cache.acls.len() >= MAX_CACHED_ACLS {
            cache.acls.clear();
        }
        if let Some(sorted) = sorted {
            cache.acls.insert(sorted, acl.clone());
        }
        cache.acls.insert(given.to_vec(), acl);
    }

    /// Drop every cached policy and ACL (after a change made elsewhere).
    pub fn invalidate(&self) {
        let mut cache = self.cache.write();
        cache.generation = cache.generation.wrapping_add(1);
        cache.policies.clear();
        cache.acls.clear();
    }

    /// The stored text and parsed form of policy `name`.
    async fn fetch(&self, name: &str) -> Result<Option<(String, Policy)>, EngineError> {
        if name == RESPONSE_WRAPPING {
            let policy = Policy::parse(RESPONSE_WRAPPING_POLICY)
                .map_err(|_| EngineError::Internal("the response-wrapping policy"))?;
            return Ok(Some((RESPONSE_WRAPPING_POLICY.to_owned(), policy)));
        }
        let Some(bytes) = self.storage.get(&format!("{PREFIX}{name}")).await? else {
            return Ok(None);
        };
        let stored: StoredPolicy = serde_json::from_slice(&bytes)
            .map_err(|_| EngineError::Corrupt(format!("policy {name:?} is malformed")))?;
        let policy = Policy::parse(&stored.policy)
            .map_err(|e| EngineError::Corrupt(format!("stored policy {name:?}: {e}")))?;
        Ok(Some((stored.policy, policy)))
    }

    /// The names of the stored policies, sorted.
    pub async fn list(&self) -> Result<Vec<String>, EngineError> {
        const PAGE: usize = 1000;
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .storage
                .list_page(PREFIX, after.as_deref(), PAGE)
                .await?;
            out.extend(page.iter().filter(|n| !n.ends_with('/')).cloned());
            if page.len() < PAGE {
                break;
            }
            after = page.last().cloned();
        }
        Ok(out)
    }

    /// The text of policy `name` (`""` for `root`), if it exists.
    pub async fn read(&self, name: &str) -> Result<Option<String>, EngineError> {
        if name == "root" {
            return Ok(Some(String::new()));
        }
        Ok(self.fetch(name).await?.map(|(text, _)| text))
    }

    /// Create or replace policy `name` (already normalised) with `text`.
    pub async fn write(&self, name: &str, text: &str) -> Result<(), EngineError> {
        if name == "root" || name == RESPONSE_WRAPPING {
            return Err(EngineError::invalid(format!(
                "cannot update {name:?} policy"
            )));
        }
        Policy::parse(text).map_err(|e| EngineError::invalid(e.to_string()))?;
        let bytes = encode(name, text)?;
        let _w = self.write_lock.lock().await;
        self.storage.put(&format!("{PREFIX}{name}"), bytes).await?;
        self.invalidate();
        tracing::info!(target: "keyhaven::policy", policy = name, "policy written");
        Ok(())
    }

    /// Delete policy `name` (already normalised); deleting a missing policy succeeds.
    pub async fn delete(&self, name: &str) -> Result<(), EngineError> {
        match name {
            "root" => return Err(EngineError::invalid("cannot delete \"root\" policy")),
            "default" => return Err(EngineError::invalid("cannot delete default policy")),
            RESPONSE_WRAPPING => {
                return Err(EngineError::invalid(
                    "cannot delete \"response-wrapping\" policy",
                ));
            }
            _ => {}
        }
        let _w = self.write_lock.lock().await;
        self.storage.delete(&format!("{PREFIX}{name}")).await?;
        self.invalidate();
        tracing::info!(target: "keyhaven::policy", policy = name, "policy deleted");
        Ok(())
    }

    pub(crate) async fn list_response(&self, legacy: bool) -> Result<Response, EngineError> {
        let mut keys = self.list().await?;
        keys.push("root".to_owned());
        let keys = Value::from(keys);
        let mut data = Map::new();
        if legacy {
            data.insert("policies".to_owned(), keys.clone());
        }
        data.insert("keys".to_owned(), keys);
        Ok(Response::data(data))
    }

    pub(crate) async fn one(
        &self,
        op: Operation,
        raw_name: &str,
        data: &Map<String, Value>,
        legacy: bool,
    ) -> Result<Response, EngineError> {
        let name = normalize_name(raw_name)?;
        let text_key = if legacy { "rules" } else { "policy" };
        match op {
            Operation::Read => {
                let Some(text) = self.read(&name).await? else {
                    return Err(EngineError::NotFound(String::new()));
                };
                let mut out = Map::new();
                out.insert("name".to_owned(), Value::String(name));
                out.insert(text_key.to_owned(), Value::String(text));
                Ok(Response::data(out))
            }
            Operation::Create | Operation::Update => {
                let mut warnings = Vec::new();
                if name != raw_name {
                    warnings.push(format!("policy name was converted to {name}"));
                }
                let mut text = crate::params::string(data, "policy")?.unwrap_or_default();
                if text.is_empty() && legacy {
                    text = crate::params::string(data, "rules")?.unwrap_or_default();
                    if !text.is_empty() {
                        warnings.push("'rules' is deprecated, please use 'policy' instead".into());
                    }
                }
                if text.is_empty() {
                    return Err(EngineError::invalid(
                        "'policy' parameter not supplied or empty",
                    ));
                }
                // Vault accepts the policy base64-encoded.
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                let text = decoded.as_deref().unwrap_or(text);
                self.write(&name, text).await?;
                Ok(Response {
                    warnings,
                    ..Default::default()
                })
            }
            Operation::Delete => {
                self.delete(&name).await?;
                Ok(Response::no_content())
            }
            Operation::Patch | Operation::List => Err(EngineError::UnsupportedOperation),
        }
    }
}

fn encode(name: &str, text: &str) -> Result<Vec<u8>, EngineError> {
    serde_json::to_vec(&StoredPolicy {
        name: name.to_owned(),
        policy: text.to_owned(),
    })
    .map_err(|_| EngineError::Encode("a policy"))
}

/// Lower-case and check a policy name: 1–128 of `a-z 0-9 - _ . @`.
pub fn normalize_name(raw: &str) -> Result<String, EngineError> {
    let name = raw.trim().to_lowercase();
    if name.is_empty() {
        return Err(EngineError::invalid(
            "policy name must be provided in the URL",
        ));
    }
    let ok = name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.@".contains(&b));
    if !ok {
        return Err(EngineError::invalid(format!(
            "invalid policy name {}: use 1 to {MAX_NAME_LEN} of a-z, 0-9, '-', '_', '.', '@'",
            parse::echo(raw)
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests;
