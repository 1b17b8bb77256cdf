//! The interface every secret engine and auth method implements.

use std::sync::Arc;

use async_trait::async_trait;
use keyhaven_storage::Store;
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::error::EngineError;
use crate::request::{Operation, Response};

/// A mounted backend (KV v2, transit, …). One instance exists per mount while the server
/// is unsealed; it is dropped on seal.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Handle one request routed to this mount.
    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError>;

    /// Whether `path` (relative to the mount) may be called without a token, such as an
    /// auth method's `login`.
    fn is_unauthenticated(&self, _path: &str) -> bool {
        false
    }

    /// Whether `operation` on `path` only reads: it changes nothing, in storage or
    /// elsewhere, and issues nothing (no lease, no credential). The core then audits the
    /// request together with its response after it ran, one audit write instead of two,
    /// and withholds the response unless that write succeeds (see [`crate::audit`]).
    /// The default is `false`: a backend opts in for the routes it knows to be free of
    /// effects. A read that creates something (a dynamic credential) must answer `false`.
    fn is_pure(&self, _operation: Operation, _path: &str) -> bool {
        false
    }

    /// The path `operation` on `path` really addresses, when `path` reaches its object
    /// under another name (a transit key through one of its aliases): the same route with
    /// the object's own name. `None` when `path` names the object itself, names nothing
    /// the backend resolves, or the route does not resolve names.
    ///
    /// The core authorizes the request on this path too, with the same operation and
    /// data (a deny on either path denies), and then hands the backend this path, so the
    /// object the policy allowed is the object used even if the alias changes meanwhile.
    /// Policies on the alias's own path therefore keep working, and cannot widen access.
    async fn canonical_path(
        &self,
        _operation: Operation,
        _path: &str,
    ) -> Result<Option<String>, EngineError> {
        Ok(None)
    }

    /// Whether something exists at `path`, for telling a `create` from an `update` as
    /// Vault does. `None`: the backend does not distinguish (writes stay updates).
    async fn exists(&self, _path: &str) -> Result<Option<bool>, EngineError> {
        Ok(None)
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
    /// Body and query parameters.
    pub data: &'a Map<String, Value>,
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
