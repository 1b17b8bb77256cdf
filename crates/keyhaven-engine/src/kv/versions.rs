//! `delete/<path>`, `undelete/<path>` and `destroy/<path>`: act on listed versions.

use keyhaven_storage::Op;
use serde_json::{Map, Value};

use super::{KvBackend, MAX_ATTEMPTS, SecretPath, contention};
use crate::error::EngineError;
use crate::params;
use crate::request::Response;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Delete,
    Undelete,
    Destroy,
}

/// The `versions` parameter: required and non-empty.
fn version_list(data: &Map<String, Value>) -> Result<Vec<u64>, EngineError> {
    match params::uint_list(data, "versions")? {
        Some(list) if !list.is_empty() => Ok(list),
        _ => Err(EngineError::invalid("no version number provided")),
    }
}

impl KvBackend {
    pub(super) async fn versions_delete(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        self.act_on_versions(path, data, Action::Delete).await
    }

    pub(super) async fn versions_undelete(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        self.act_on_versions(path, data, Action::Undelete).await
    }

    pub(super) async fn versions_destroy(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        self.act_on_versions(path, data, Action::Destroy).await
    }

    /// Apply `action` to each listed version that exists; unknown versions and an
    /// unknown key are not errors (Vault answers 204 too). Destroyed versions stay
    /// destroyed.
    async fn act_on_versions(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
        action: Action,
    ) -> Result<Response, EngineError> {
        let versions = version_list(data)?;
        for _ in 0..MAX_ATTEMPTS {
            // Undelete re-applies delete_version_after, which may come from the mount.
            let snap = self.snapshot(path, action == Action::Undelete).await?;
            let Some(mut meta) = snap.meta else {
                return Ok(Response::no_content());
            };
            let now = self.now();
            let mut changed = false;
            let mut ops = Vec::new();
            for &n in &versions {
                let undeleted_deletion = meta.deletion_time_for(now, &snap.config);
                let payload_key = meta.version_key(n);
                let Some(v) = meta.version_mut(n) else {
                    continue;
                };
                if v.destroyed {
                    continue;
                }
                match action {
                    Action::Delete if !v.is_deleted(now) => {
                        v.deletion_time = Some(now);
                        changed = true;
                    }
                    Action::Delete => {}
                    Action::Undelete => {
                        changed |= v.deletion_time != undeleted_deletion;
                        v.deletion_time = undeleted_deletion;
                    }
                    Action::Destroy => {
                        v.destroyed = true;
                        ops.push(Op::Delete { key: payload_key });
                        changed = true;
                    }
                }
            }
            if !changed {
                return Ok(Response::no_content());
            }
            ops.push(Op::Put {
                key: path.meta_key().to_owned(),
                value: meta.encode()?,
            });
            if self.commit(snap.conditions, ops).await? {
                return Ok(Response::no_content());
            }
        }
        Err(contention())
    }
}
