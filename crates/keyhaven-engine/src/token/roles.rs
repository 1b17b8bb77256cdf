//! Token roles and the rules for which policies a new token may carry.

use serde::{Deserialize, Serialize};

use super::{ROLE_PREFIX, TokenEntry, TokenStore, corrupt};
use crate::error::EngineError;

/// A token role (`auth/token/roles/<name>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct TokenRole {
    pub(super) allowed_policies: Vec<String>,
    pub(super) disallowed_policies: Vec<String>,
    pub(super) orphan: bool,
    pub(super) renewable: bool,
    pub(super) period: u64,
    pub(super) explicit_max_ttl: u64,
    pub(super) path_suffix: String,
}

/// Refuse a name a role cannot have (when it is read, written or deleted).
pub(super) fn check_role_name(name: &str) -> Result<(), EngineError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(EngineError::invalid("invalid role name"));
    }
    Ok(())
}

impl TokenStore {
    /// The role stored under `name`, if any.
    pub(super) async fn role(&self, name: &str) -> Result<Option<TokenRole>, EngineError> {
        let Some(bytes) = self.storage.get(&format!("{ROLE_PREFIX}{name}")).await? else {
            return Ok(None);
        };
        let role: TokenRole = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
        Ok(Some(role))
    }

    /// Store `role` under `name`, replacing any role of that name.
    pub(super) async fn put_role(&self, name: &str, role: &TokenRole) -> Result<(), EngineError> {
        self.storage
            .put(
                &format!("{ROLE_PREFIX}{name}"),
                serde_json::to_vec(role).map_err(|_| EngineError::Encode("a token role"))?,
            )
            .await?;
        Ok(())
    }

    /// Delete the role `name`, if there is one.
    pub(super) async fn delete_role(&self, name: &str) -> Result<(), EngineError> {
        self.storage.delete(&format!("{ROLE_PREFIX}{name}")).await?;
        Ok(())
    }

    /// The names of the stored roles (one storage page).
    pub(super) async fn role_names(&self) -> Result<Vec<String>, EngineError> {
        Ok(self
            .storage
            .list_page(ROLE_PREFIX, None, keyhaven_storage::MAX_LIST_PAGE)
            .await?)
    }
}

/// Trim, drop empty names, sort and deduplicate; add `default` when asked, unless `root`
/// is present (a root token carries nothing else).
pub(super) fn normalize_policies(mut policies: Vec<String>, add_default: bool) -> Vec<String> {
    policies.retain(|p| !p.trim().is_empty());
    for p in &mut policies {
        *p = p.trim().to_owned();
    }
    if policies.iter().any(|p| p == "root") {
        return vec!["root".to_owned()];
    }
    if add_default {
        policies.push("default".to_owned());
    }
    policies.sort();
    policies.dedup();
    policies
}

/// The policies of `set` that `within` lacks; a root holder lacks nothing.
fn not_within<'a>(set: &'a [String], within: &[String]) -> Vec<&'a str> {
    if within.iter().any(|p| p == "root") {
        return Vec::new();
    }
    set.iter()
        .filter(|p| !within.contains(p))
        .map(String::as_str)
        .collect()
}

/// What a token created by `caller` may carry: Vault's rules for `auth/token/create*`
/// (`role` is `None`) and `auth/token/create/<role>`. `requested` is the `policies`
/// parameter as given; `sudo` is whether the caller has sudo on the creating path.
pub(super) fn decide_policies(
    caller: &TokenEntry,
    requested: Vec<String>,
    no_default_policy: bool,
    role: Option<(&str, &TokenRole)>,
    sudo: bool,
) -> Result<Vec<String>, EngineError> {
    let requested = normalize_policies(requested, false);
    let decided = match role {
        None => {
            if requested.is_empty() {
                // A child created without policies inherits its parent's.
                normalize_policies(caller.policies.clone(), !no_default_policy)
            } else {
                let wanted = normalize_policies(requested, !no_default_policy);
                let mut held = caller.policies.clone();
                held.push("default".to_owned());
                let outside = not_within(&wanted, &held);
                if !sudo && !outside.is_empty() {
                    return Err(EngineError::invalid(format!(
                        "child policies must be a subset of the parent's policies; not held: {}",
                        outside.join(", ")
                    )));
                }
                wanted
            }
        }
        Some((name, role)) => {
            let add_default =
                !no_default_policy && !role.disallowed_policies.iter().any(|p| p == "default");
            let wanted =
                (!requested.is_empty()).then(|| normalize_policies(requested, add_default));
            let asked = wanted.is_some();
            let mut decided = if role.allowed_policies.is_empty() {
                let held = normalize_policies(caller.policies.clone(), add_default);
                match wanted {
                    None => held,
                    Some(wanted) => {
                        let outside = not_within(&wanted, &held);
                        if !outside.is_empty() {
                            return Err(EngineError::invalid(format!(
                                "child policies must be a subset of the caller's policies when \
                                 role {name:?} has no allowed_policies; not held: {}",
                                outside.join(", ")
                            )));
                        }
                        wanted
                    }
                }
            } else {
                let allowed = normalize_policies(role.allowed_policies.clone(), add_default);
                match wanted {
                    None => allowed,
                    Some(wanted) => {
                        let outside: Vec<&str> = wanted
                            .iter()
                            .filter(|p| !allowed.contains(p))
                            .map(String::as_str)
                            .collect();
                        if !outside.is_empty() {
                            return Err(EngineError::invalid(format!(
                                "token policies {outside:?} are not allowed by role {name:?}: \
                                 they must be a subset of its allowed_policies {allowed:?}"
                            )));
                        }
                        wanted
                    }
                }
            };
            let disallowed = normalize_policies(role.disallowed_policies.clone(), false);
            if asked {
                if let Some(bad) = decided.iter().find(|p| disallowed.contains(p)) {
                    return Err(EngineError::invalid(format!(
                        "token policy {bad:?} is disallowed by role {name:?}"
                    )));
                }
            } else {
                // Policies the request did not name (inherited from the caller or the
                // role's allowed set) are left out rather than refused.
                decided.retain(|p| !disallowed.contains(p));
            }
            decided
        }
    };
    if decided.iter().any(|p| p == "root") && !caller.is_root() {
        return Err(EngineError::invalid(
            "root tokens may only be created by a root token",
        ));
    }
    if decided.is_empty() {
        return Err(EngineError::invalid("token must have at least one policy"));
    }
    Ok(decided)
}
