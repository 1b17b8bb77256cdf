//! Requests into and responses out of the engine.

use serde_json::{Map, Value};
use std::fmt;

/// What a request does, in Vault's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// GET.
    Read,
    /// A write to a path that holds nothing yet.
    Create,
    /// POST or PUT.
    Update,
    /// PATCH (JSON merge).
    Patch,
    /// DELETE.
    Delete,
    /// LIST, or GET with `?list=true`.
    List,
}

impl Operation {
    /// Lower-case name, as used in policies and audit records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Patch => "patch",
            Operation::Delete => "delete",
            Operation::List => "list",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client token as presented, kept out of `Debug` output.
pub struct ClientToken(secrecy::SecretString);

impl ClientToken {
    /// Wrap a presented token.
    pub fn new(token: String) -> Self {
        ClientToken(secrecy::SecretString::from(token))
    }

    /// The token text, for hashing and lookup only.
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClientToken({})",
            keyhaven_types::token::Redacted(self.expose())
        )
    }
}

/// One API request, as the server hands it to [`crate::Core::handle`].
pub struct Request {
    /// Unique id, echoed in the response and in logs.
    pub id: String,
    /// The operation.
    pub operation: Operation,
    /// The path after `/v1/`, without a leading slash.
    pub path: String,
    /// The JSON body (for writes) merged with query parameters (for reads and lists).
    pub data: Map<String, Value>,
    /// The token from `X-Vault-Token` or `Authorization: Bearer`.
    pub token: Option<ClientToken>,
}

// Request data may hold secret values: print only their keys.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("operation", &self.operation)
            .field("path", &self.path)
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .field("token", &self.token)
            .finish()
    }
}

/// What a successful request returns. The server wraps it in Vault's envelope
/// (`request_id`, `lease_id`, `data`, `warnings`, …); a response with no data, no auth
/// and no warnings becomes `204 No Content`.
#[derive(Default)]
pub struct Response {
    /// The `data` object.
    pub data: Option<Map<String, Value>>,
    /// The `auth` object (logins, token creation).
    pub auth: Option<Map<String, Value>>,
    /// Human-readable warnings.
    pub warnings: Vec<String>,
    /// When set, these fields are also copied to the top level of the body (Vault does
    /// this for some `sys/` endpoints, e.g. `sys/mounts`).
    pub top_level: bool,
    /// An HTTP status other than the default (200, or 204 when empty). KV v2 uses it to
    /// answer a read of a deleted version with 404 *and* its metadata, as Vault does.
    pub status: Option<u16>,
    /// Set by auth methods on a successful login; the core mints a token from it and
    /// fills `auth`.
    pub login: Option<crate::auth::LoginGrant>,
}

impl Response {
    /// A response carrying `data`.
    pub fn data(data: Map<String, Value>) -> Self {
        Response {
            data: Some(data),
            ..Default::default()
        }
    }

    /// A response with nothing in it (`204`).
    pub fn no_content() -> Self {
        Response::default()
    }

    /// Whether the server should answer `204 No Content`.
    pub fn is_empty(&self) -> bool {
        self.data.is_none() && self.auth.is_none() && self.warnings.is_empty()
    }
}

// Response data may hold secret values: print only their keys.
impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field(
                "data_keys",
                &self.data.as_ref().map(|d| d.keys().collect::<Vec<_>>()),
            )
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("warnings", &self.warnings)
            .finish()
    }
}
