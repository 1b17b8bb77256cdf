//! Auth methods: what a successful login grants, and the outbound calls some methods
//! need (Kubernetes TokenReview, OIDC discovery), which the server provides so that the
//! engine itself knows no HTTP.

pub mod approle;
pub mod cert;
mod common;
pub mod jwt;
pub mod kubernetes;
pub mod password;
pub mod userpass;
pub mod validator;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::EngineError;

/// What an auth method grants after verifying a login. The core turns it into a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginGrant {
    /// Policies of the new token (`default` is added unless `no_default_policy`).
    pub policies: Vec<String>,
    /// Leave out the `default` policy.
    pub no_default_policy: bool,
    /// TTL in seconds (0: the mount/system default).
    pub ttl: u64,
    /// Maximum TTL in seconds (0: the mount/system maximum).
    pub max_ttl: u64,
    /// Period in seconds for periodic tokens (0: not periodic).
    pub period: u64,
    /// Display name, e.g. `kubernetes-team-a-app`.
    pub display_name: String,
    /// Metadata shown by lookups and in `auth.metadata` (never secret).
    pub metadata: BTreeMap<String, String>,
    /// Whether the token can be renewed.
    pub renewable: bool,
    /// Number of uses (0: unlimited).
    pub num_uses: u64,
    /// Blocks the token works from (empty: anywhere).
    pub bound_cidrs: Vec<crate::cidr::Cidr>,
}

/// An HTTP response from an outbound call.
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    /// Status code.
    pub status: u16,
    /// Parsed JSON body (Null if empty or not JSON).
    pub body: Value,
}

/// Outbound HTTPS calls that auth methods need (provided by the server).
#[async_trait]
pub trait Outbound: Send + Sync + 'static {
    /// GET `url` (JSON), trusting `ca_pem` if given, else the system roots.
    async fn get_json(
        &self,
        url: &str,
        ca_pem: Option<&str>,
    ) -> Result<OutboundResponse, EngineError>;
    /// POST `body` as JSON to `url` with an optional bearer token.
    async fn post_json(
        &self,
        url: &str,
        ca_pem: Option<&str>,
        bearer: Option<&str>,
        body: &Value,
    ) -> Result<OutboundResponse, EngineError>;
}
