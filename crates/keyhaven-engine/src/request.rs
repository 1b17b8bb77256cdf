//! Requests into and responses out of the engine.

use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

use crate::error::EngineError;

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
    /// The address the request came from (the TCP peer), for tokens bound to CIDRs and
    /// for audit records; `None` for requests made in-process.
    pub remote_addr: Option<std::net::IpAddr>,
    /// The certificate chain the client presented in the TLS handshake, leaf first, DER
    /// (empty without TLS or without a client certificate). The server checked only that
    /// the client holds the leaf's private key; what the chain is worth, the `cert` auth
    /// method decides.
    pub client_certs: Vec<Vec<u8>>,
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
            .field("remote_addr", &self.remote_addr)
            .field("client_certs", &self.client_certs.len())
            .finish()
    }
}

/// What a successful request returns: data, a token grant (`auth`, or a login the core
/// turns into one), warnings, or nothing. The server alone turns it into HTTP: Vault's
/// envelope (`request_id`, `lease_id`, `data`, `warnings`, …), or `204 No Content` for
/// a response with no data, no auth and no warnings. A failure is an
/// [`crate::EngineError`], whose code decides the status.
#[derive(Default)]
pub struct Response {
    /// The `data` object.
    pub data: Option<Map<String, Value>>,
    /// The `data` object already encoded, in place of [`Response::data`] (never both): a
    /// KV read serves its stored payload as it was written instead of decoding it into
    /// a `Map` the server would encode again. Only the server's envelope writer takes
    /// it as it is ([`crate::Core::handle_encoded`]); every other caller of the core
    /// gets [`Response::data`].
    pub encoded_data: Option<EncodedData>,
    /// The `auth` object (token creation).
    pub auth: Option<Map<String, Value>>,
    /// Human-readable warnings.
    pub warnings: Vec<String>,
    /// Set by auth methods on a successful login; the core mints a token from it and
    /// fills `auth`.
    pub login: Option<crate::auth::LoginGrant>,
    /// Set when items of a batch failed and the batch as a whole counts as failed
    /// (transit encrypt, decrypt, rewrap): `data` still holds every item's result.
    pub batch_failure: Option<BatchFailure>,
    /// The envelope's `lease_duration` for a secret returned without a lease (KV version
    /// 1's refresh interval); `None` is 0.
    pub lease_duration: Option<LeaseDuration>,
    /// Set when the response was wrapped: the client gets this instead of the response,
    /// which waits in the wrapping token's cubbyhole ([`crate::wrapping`]).
    pub wrap_info: Option<keyhaven_types::wire::WrapInfo>,
    /// Set by a backend that returns a secret with a lifetime (database credentials): the
    /// core registers a lease for it, bound to the requesting token, and fills
    /// [`Response::lease`].
    pub secret: Option<SecretGrant>,
    /// The lease the core registered for [`Response::secret`]: the envelope's
    /// `lease_id`, `lease_duration` and `renewable`.
    pub lease: Option<LeaseGrant>,
    /// The work was accepted and goes on after the answer (an asynchronous lease
    /// revocation): `202 Accepted`, as Vault answers.
    pub accepted: bool,
}

/// A secret with a lifetime, as a backend returns it: the core turns it into a lease.
pub struct SecretGrant {
    /// The TTL the backend asks for, in seconds; 0 means the mount's default lease TTL.
    pub ttl: u64,
    /// The most the lease may live from its issue, across renewals, in seconds; 0 means
    /// the mount's maximum lease TTL. The mount's maximum caps it either way.
    pub max_ttl: u64,
    /// Whether the lease may be renewed ([`crate::backend::Backend::renew_secret`]).
    pub renewable: bool,
    /// What the backend needs to renew or revoke the secret later (a user name, the
    /// role, the statements): stored with the lease behind the barrier, handed back to
    /// the backend, never returned to a client. Keep secret values out of it.
    pub internal: Map<String, Value>,
}

/// A lease registered for a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease id: the request path, `/`, and 24 random characters.
    pub lease_id: String,
    /// Seconds until it expires.
    pub duration: u64,
    /// Whether it may be renewed.
    pub renewable: bool,
}

/// The `lease_duration` of a response that carries no lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDuration {
    /// The mount's default lease TTL (the system default of 32 days when the mount sets
    /// none); the core fills it in.
    MountDefault,
    /// This many seconds (Vault returns a negative one as it is).
    Seconds(i64),
}

impl LeaseDuration {
    /// The seconds, once the core has resolved [`LeaseDuration::MountDefault`] (0 before).
    pub fn seconds(self) -> i64 {
        match self {
            LeaseDuration::MountDefault => 0,
            LeaseDuration::Seconds(s) => s,
        }
    }
}

/// Items of a batch failed. Vault answers such a batch with an error status and the
/// per-item results; the server picks the status from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchFailure {
    /// Only internal faults failed items (no item was the client's mistake): 500 rather
    /// than 400.
    pub internal: bool,
    /// The status the client asked for when some items succeeded
    /// (`partial_failure_response_code`).
    pub status_override: Option<u16>,
}

impl Response {
    /// A response carrying `data`.
    pub fn data(data: Map<String, Value>) -> Self {
        Response {
            data: Some(data),
            ..Default::default()
        }
    }

    /// A response carrying a wire body (a struct of [`keyhaven_types::wire`]) as its
    /// data.
    pub(crate) fn wire(body: &impl serde::Serialize) -> Result<Self, EngineError> {
        match serde_json::to_value(body) {
            Ok(Value::Object(data)) => Ok(Response::data(data)),
            _ => Err(EngineError::Internal("a wire body is not a JSON object")),
        }
    }

    /// A response with nothing in it (`204`).
    pub fn no_content() -> Self {
        Response::default()
    }

    /// A response carrying an encoded `data` object.
    pub(crate) fn encoded(data: EncodedData) -> Self {
        Response {
            encoded_data: Some(data),
            ..Default::default()
        }
    }

    /// The `data` object, decoded if it came encoded.
    pub fn data_view(&self) -> Result<Option<Cow<'_, Map<String, Value>>>, EngineError> {
        match (&self.data, &self.encoded_data) {
            (Some(data), _) => Ok(Some(Cow::Borrowed(data))),
            (None, Some(encoded)) => encoded.decode().map(|d| Some(Cow::Owned(d))),
            (None, None) => Ok(None),
        }
    }

    /// Decode an encoded `data` object into [`Response::data`].
    pub fn decode_data(&mut self) -> Result<(), EngineError> {
        if let Some(encoded) = self.encoded_data.take() {
            self.data = Some(encoded.decode()?);
        }
        Ok(())
    }

    /// Whether the server should answer `204 No Content`.
    pub fn is_empty(&self) -> bool {
        self.data.is_none()
            && self.encoded_data.is_none()
            && self.auth.is_none()
            && self.wrap_info.is_none()
            && self.warnings.is_empty()
            && self.batch_failure.is_none()
            && self.lease.is_none()
            && !self.accepted
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
            .field("encoded_data", &self.encoded_data)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("warnings", &self.warnings)
            .field("wrap_info", &self.wrap_info)
            .field("secret", &self.secret.as_ref().map(|_| "<lease pending>"))
            .field("lease", &self.lease)
            .finish()
    }
}

/// A `data` object encoded as compact JSON, as `serde_json` writes a `Map` (keys in
/// sorted order, no white space): the server copies it into the envelope unchanged, so
/// the answer is byte for byte what encoding the decoded object would give.
pub struct EncodedData(Vec<u8>);

impl EncodedData {
    /// Wrap bytes that hold one JSON object in `serde_json`'s compact form. The caller
    /// vouches for that (a KV read builds them from its own stored payload, which the
    /// barrier authenticated); only the outer braces are checked here (`None` without
    /// them).
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (bytes.first() == Some(&b'{') && bytes.last() == Some(&b'}')).then_some(EncodedData(bytes))
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The object it encodes.
    pub fn decode(&self) -> Result<Map<String, Value>, EngineError> {
        serde_json::from_slice(&self.0)
            .map_err(|_| EngineError::Internal("encoded data is not a JSON object"))
    }
}

// The bytes hold secret values: print only their length.
impl fmt::Debug for EncodedData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncodedData({} bytes)", self.0.len())
    }
}
