//! The interface every secret engine and auth method implements.

use std::sync::Arc;

use async_trait::async_trait;
use keyhaven_storage::Store;
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::error::EngineError;
use crate::request::{Operation, Response};
use crate::route::{Captures, Route};

/// A mounted backend (KV v2, transit, an auth method, …). One instance exists per mount
/// while the server is unsealed; it is dropped on seal.
///
/// What each path *is* lives in the backend's route table ([`Backend::routes`]): the core
/// matches a request against it once, authenticates, authorizes and audits as the
/// matched route says, checks the fields' types, and then calls [`Backend::handle`] with
/// the route. The other methods are lookups the core makes only where the table asks for
/// them.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The backend's routes, in match order.
    fn routes(&self) -> &'static [Route];

    /// Handle one request matched to one of [`Backend::routes`]; the operation is one
    /// the route serves, and its declared fields have their declared types.
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError>;

    /// Whether the object a write on an `existence_check` route addresses exists, for
    /// telling a `create` from an `update` as Vault does. A path the handler will refuse
    /// may answer `true` (the write stays an update).
    async fn exists(&self, _req: &BackendRequest<'_>) -> Result<bool, EngineError> {
        Ok(true)
    }

    /// The object's own name when `name`, captured by a route's `alias_capture`, is an
    /// alias of it; `None` when `name` names the object itself or nothing.
    ///
    /// The core authorizes the request on the route with the object's own name too, with
    /// the same operation and data (a deny on either path denies), and then hands the
    /// backend that path, so the object the policy allowed is the object used even if the
    /// alias changes meanwhile. Policies on the alias's own path therefore keep working,
    /// and cannot widen access.
    async fn resolve_alias(&self, _name: &str) -> Result<Option<String>, EngineError> {
        Ok(None)
    }

    /// Revoke the secret of an expired or revoked lease (drop the database user). An
    /// error leaves the lease in place, to be retried with backoff; revoking a secret
    /// that is already gone must succeed. The default refuses: a backend that returns
    /// [`crate::SecretGrant`]s implements it.
    async fn revoke_secret(&self, _lease: &LeaseRef<'_>) -> Result<(), EngineError> {
        Err(EngineError::UnsupportedOperation)
    }

    /// Extend the secret of a lease to `expire_time` (Unix seconds), which the core
    /// already capped by the lease's maximum (run the renew statements). The default
    /// refuses.
    async fn renew_secret(
        &self,
        _lease: &LeaseRef<'_>,
        _expire_time: i64,
    ) -> Result<(), EngineError> {
        Err(EngineError::invalid("lease is not renewable"))
    }

    /// Scheduled work (automatic rotation, scheduled deletion), run periodically by the
    /// core; decisions use the engine's clock. The default does nothing.
    async fn tick(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// A request as a backend sees it.
pub struct BackendRequest<'a> {
    /// The operation.
    pub operation: Operation,
    /// The path relative to the mount point, without a leading slash (`""` for the mount
    /// itself).
    pub path: &'a str,
    /// The route the path matched.
    pub route: &'static Route,
    /// The segments the route's pattern captured from `path`.
    pub captures: Captures<'a>,
    /// Body and query parameters.
    pub data: &'a Map<String, Value>,
    /// The client's TLS certificate chain, leaf first, DER ([`crate::Request::client_certs`]).
    pub client_certs: &'a [Vec<u8>],
    /// The client's address (the TCP peer), when the transport has one
    /// ([`crate::Request::remote_addr`]).
    pub remote_addr: Option<std::net::IpAddr>,
    /// The requesting token's display name (`""` without a token), as Vault hands it to
    /// backends (database usernames start with it).
    pub display_name: &'a str,
}

impl<'a> BackendRequest<'a> {
    /// The captured segment `name` (`""` when the pattern has none or it was absent).
    pub fn capture(&self, name: &str) -> &'a str {
        self.captures.must(name)
    }
}

/// A lease as its backend sees it at renewal or revocation.
#[derive(Debug)]
pub struct LeaseRef<'a> {
    /// The lease id.
    pub lease_id: &'a str,
    /// The path relative to the mount of the request that created it (`creds/ro`).
    pub path: &'a str,
    /// What the backend stored with it ([`crate::SecretGrant::internal`]).
    pub internal: &'a Map<String, Value>,
    /// When it was issued, Unix seconds.
    pub issue_time: i64,
    /// When it expires now, Unix seconds.
    pub expire_time: i64,
}

/// What a backend is built from when its mount is loaded.
#[derive(Clone)]
pub struct BackendContext {
    /// The backend's own storage: a view through the barrier, scoped to the mount, that
    /// cannot reach outside it. Values written here are encrypted at rest.
    pub storage: Arc<dyn Store>,
    /// The engine's clock.
    pub clock: Arc<dyn Clock>,
    /// The mount's options (`options` in `sys/mounts`), e.g. `{"version": "2"}`.
    pub options: Map<String, Value>,
    /// Outbound HTTPS for auth methods that call other services (TokenReview, OIDC
    /// discovery); `None` when the server provides none.
    pub outbound: Option<Arc<dyn crate::auth::Outbound>>,
    /// Database drivers for the `database/` secrets engine; `None` when the server
    /// provides none.
    pub database: Option<Arc<dyn crate::database::plugin::DatabasePlugins>>,
    /// Bounds on what one request may ask of the backend.
    pub limits: Limits,
}

/// Bounds on what one request may ask of a backend (the server's `[limits]` table).
///
/// A request over a limit is refused with a 400 that names the limit and its config key,
/// before any of its items is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most items one `batch_input` may hold (transit encrypt, decrypt, rewrap, hmac,
    /// sign, verify).
    pub max_batch_items: usize,
    /// The most bytes one `batch_input` may hold: the field names and string values of its
    /// items, or, when the list arrives as one JSON string (`bao write batch_input=…`), the
    /// length of that string.
    pub max_batch_bytes: usize,
}

impl Limits {
    /// Default of [`Limits::max_batch_items`]: 10,000, the default of Vault's listener
    /// limit on the elements of one JSON array (`max_json_array_element_count`), so a batch
    /// that Vault accepts by default is accepted here too.
    pub const DEFAULT_MAX_BATCH_ITEMS: usize = 10_000;
    /// Default of [`Limits::max_batch_bytes`]: 16 MiB, half the default request body
    /// limit. A batch's results are about as large as its input, so the answer stays of
    /// the size of a request the listener accepts.
    pub const DEFAULT_MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_items: Self::DEFAULT_MAX_BATCH_ITEMS,
            max_batch_bytes: Self::DEFAULT_MAX_BATCH_BYTES,
        }
    }
}
