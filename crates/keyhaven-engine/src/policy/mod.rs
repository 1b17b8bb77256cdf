//! ACL policies: Vault's HCL policy language, deny by default, `deny` wins.
//!
//! (Being implemented: only the built-in `root` policy grants anything so far.)

use std::sync::Arc;

use keyhaven_storage::Store;
use serde_json::{Map, Value};

use crate::error::EngineError;
use crate::request::{Operation, Response};

/// The outcome of an authorization check, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Human-readable reason: the policy and rule that allowed or denied, or that nothing
    /// granted it.
    pub reason: String,
}

/// The compiled union of a token's policies.
#[derive(Debug, Clone)]
pub struct Acl {
    root: bool,
}

impl Acl {
    /// Decide whether `op` on `path` with `data` is allowed.
    pub fn authorize(&self, _op: Operation, _path: &str, _data: &Map<String, Value>) -> Decision {
        if self.root {
            Decision {
                allowed: true,
                reason: "allowed by the root policy".to_owned(),
            }
        } else {
            Decision {
                allowed: false,
                reason: "no policy grants this".to_owned(),
            }
        }
    }

    /// The capabilities this ACL grants on `path` (Vault's `sys/capabilities`).
    pub fn capabilities(&self, _path: &str) -> Vec<String> {
        if self.root {
            vec!["root".to_owned()]
        } else {
            vec!["deny".to_owned()]
        }
    }
}

/// Stored policies behind the barrier, with a cache of compiled ACLs.
pub struct PolicyStore {
    _storage: Arc<dyn Store>,
}

impl PolicyStore {
    /// Load the store of an unsealed barrier view (creating the `default` policy if missing).
    pub(crate) async fn load(storage: Arc<dyn Store>) -> Result<Self, EngineError> {
        Ok(PolicyStore { _storage: storage })
    }

    /// The ACL for a set of policy names.
    pub async fn acl_for(&self, policies: &[String]) -> Result<Arc<Acl>, EngineError> {
        Ok(Arc::new(Acl {
            root: policies.iter().any(|p| p == "root"),
        }))
    }

    /// Handle `sys/policy…` and `sys/policies/acl…` (`rest` is the path after `sys/`).
    pub async fn handle_sys(
        &self,
        _op: Operation,
        _rest: &str,
        _data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        Err(EngineError::UnsupportedOperation)
    }
}
