//! The Secrets Store CSI driver provider (`keyhaven csi-provider`): serves
//! `v1alpha1.CSIDriverProvider` on `<providers dir>/keyhaven.sock` and answers each
//! `Mount` with the files of the volume (the driver writes them).
//!
//! A mount logs in to the kubernetes auth method with the pod's own ServiceAccount token
//! (the `csi.storage.k8s.io/serviceAccount.tokens` entry for the configured audience) and
//! the SecretProviderClass's `roleName`, then reads every object with the keyhaven token it
//! got, so the server's policies decide per pod. Parameters and pod attributes only say
//! what to read and where to put it; a pod that overrides `roleName` can only log in as a
//! role that binds its own ServiceAccount. `vaultAddress` may point elsewhere only when
//! the operator allowed that address: otherwise a pod could send its token anywhere.
//!
//! Object versions are HMAC-SHA256 of the object's configuration and content under a key
//! of the provider ([`VersionKey`]): stable while the content is, opaque in
//! `SecretProviderClassPodStatus`, and no plain hash of a secret. With a per-process key
//! a restarted provider reports new versions for unchanged content; the driver then
//! rewrites the same files once, which is harmless. A configured key keeps them stable.

pub mod cache;
pub mod params;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine as _;
use keyhaven_client::{Client, ClientConfig, ClientError};
use prost::Message as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;

use crate::proto::csi::csi_driver_provider_server::{CsiDriverProvider, CsiDriverProviderServer};
use crate::proto::csi::{
    File, MountRequest, MountResponse, ObjectVersion, VersionRequest, VersionResponse,
};
use params::{Encoding, Method, MountSpec, ObjectSpec, ParamError, Part, Selector};

/// The provider's name: the `spec.provider` of a SecretProviderClass and the socket's stem.
pub const PROVIDER_NAME: &str = "keyhaven";
/// Where the driver looks for provider sockets, and ours in it.
pub const DEFAULT_SOCKET: &str = "/var/run/secrets-store-csi-providers/keyhaven.sock";
/// The driver's default `--max-call-recv-msg-size`.
pub const DEFAULT_MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// The audience of the token the CSIDriver requests for us (`tokenRequests`).
pub const DEFAULT_AUDIENCE: &str = "keyhaven";
/// The mount of the kubernetes auth method.
pub const DEFAULT_AUTH_MOUNT: &str = "kubernetes";
/// How many objects of one mount are read at the same time.
const READ_CONCURRENCY: usize = 16;
/// How many attempts a call gets when the server is unavailable.
const ATTEMPTS: u32 = 3;
/// The first backoff; doubled after each failed attempt.
const BACKOFF: Duration = Duration::from_millis(200);

/// The key of object versions. `Debug` shows nothing of it.
pub struct VersionKey(hmac::Key);

impl std::fmt::Debug for VersionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VersionKey([REDACTED])")
    }
}

impl VersionKey {
    /// A fresh random key for this process.
    pub fn random() -> Result<VersionKey, ProviderError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map(VersionKey)
            .map_err(|_| ProviderError::Random)
    }

    /// A key from at least 32 bytes of secret material (e.g. a file shared by every
    /// provider of a cluster, so versions survive restarts and agree across nodes).
    pub fn from_bytes(material: &[u8]) -> Result<VersionKey, ProviderError> {
        if material.len() < 32 {
            return Err(ProviderError::ShortKey(material.len()));
        }
        Ok(VersionKey(hmac::Key::new(hmac::HMAC_SHA256, material)))
    }

    /// The version of an object: HMAC of its configuration and its files.
    pub fn version(&self, config: &str, files: &[(String, Vec<u8>)]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"keyhaven-csi-object-version-1");
        ctx.update(&(config.len() as u64).to_be_bytes());
        ctx.update(config.as_bytes());
        ctx.update(&(files.len() as u64).to_be_bytes());
        for (name, content) in files {
            ctx.update(&(name.len() as u64).to_be_bytes());
            ctx.update(name.as_bytes());
            ctx.update(&(content.len() as u64).to_be_bytes());
            ctx.update(content);
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
    }
}

/// How the provider is set up.
#[derive(Debug)]
pub struct ProviderConfig {
    /// The server's address.
    pub address: String,
    /// A PEM file of CA certificates to trust for the server.
    pub ca_cert: Option<PathBuf>,
    /// Other addresses a SecretProviderClass may name in `vaultAddress`.
    pub allowed_addresses: Vec<String>,
    /// The token audience used when a SecretProviderClass names none.
    pub audience: String,
    /// The kubernetes auth mount used when a SecretProviderClass names none.
    pub auth_mount: String,
    /// The key of object versions.
    pub version_key: VersionKey,
    /// The largest response (the driver's receive limit).
    pub max_response_bytes: usize,
    /// How many pod tokens are cached.
    pub max_cached_tokens: usize,
    /// Timeout of each call to the server.
    pub request_timeout: Duration,
}

/// Why the provider cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// No randomness.
    #[error("the system random generator failed")]
    Random,
    /// The version key is too short.
    #[error("the object version key has {0} bytes; it needs at least 32")]
    ShortKey(usize),
    /// A client could not be built.
    #[error("server {address}: {source}")]
    Client {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] crate::socket::SocketError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// Why one mount failed. Each message says what to change; none holds a token or a
/// secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// The parameters are not acceptable.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// No token for the audience.
    #[error(
        "no ServiceAccount token for audience {audience:?} in the mount request (present: {present:?}); \
         add `tokenRequests: [{{audience: {audience}}}]` to the CSIDriver secrets-store.csi.k8s.io, \
         or set the SecretProviderClass parameter audience to the one it requests"
    )]
    NoToken {
        /// The audience looked for.
        audience: String,
        /// The audiences present.
        present: Vec<String>,
    },
    /// `vaultAddress` is not allowed.
    #[error(
        "vaultAddress {0:?} is not the provider's server nor in its allowed_addresses: the provider \
         does not send pod tokens to other servers; remove vaultAddress or have the operator allow it"
    )]
    AddressNotAllowed(String),
    /// `vaultCACertPath` names another file than the provider's CA.
    #[error(
        "vaultCACertPath {0:?} is not the provider's CA file (--ca-cert); the provider trusts only its \
         own CA; remove the parameter"
    )]
    CaNotAllowed(String),
    /// The login was refused.
    #[error("{0}")]
    LoginRefused(String),
    /// The pod's token may not read a path.
    #[error(
        "object {object:?}: permission denied reading {path} with role {role:?}: add a policy rule \
         allowing read on this path to the role's token_policies, or remove the object"
    )]
    Denied {
        /// The object.
        object: String,
        /// The path.
        path: String,
        /// The role.
        role: String,
    },
    /// Nothing at a path of a required object.
    #[error(
        "object {object:?}: nothing at {path}; write the secret, fix secretPath, or mark the object `optional: true`"
    )]
    NotFound {
        /// The object.
        object: String,
        /// The path.
        path: String,
    },
    /// The answer does not have what the object asks for.
    #[error("object {object:?}: {reason}")]
    Content {
        /// The object.
        object: String,
        /// What is missing or malformed (names keys, never values).
        reason: String,
    },
    /// The server could not be reached or failed.
    #[error("the keyhaven server is unavailable: {0}")]
    Unavailable(String),
    /// The files are over the receive limit.
    #[error(
        "the volume's files take {size} bytes, over the {limit}-byte limit of a mount response; \
         split the SecretProviderClass or raise the driver's --max-call-recv-msg-size and max_response_bytes"
    )]
    TooLarge {
        /// The response size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Any other answer of the server.
    #[error("{0}")]
    Server(String),
}

impl From<MountError> for tonic::Status {
    fn from(e: MountError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            MountError::Params(_)
            | MountError::AddressNotAllowed(_)
            | MountError::CaNotAllowed(_)
            | MountError::Content { .. } => tonic::Status::invalid_argument(msg),
            MountError::NoToken { .. } | MountError::LoginRefused(_) => {
                tonic::Status::unauthenticated(msg)
            }
            MountError::Denied { .. } => tonic::Status::permission_denied(msg),
            MountError::NotFound { .. } => tonic::Status::not_found(msg),
            MountError::Unavailable(_) => tonic::Status::unavailable(msg),
            MountError::TooLarge { .. } => tonic::Status::resource_exhausted(msg),
            MountError::Server(_) => tonic::Status::internal(msg),
        }
    }
}

/// The provider: clients per server, the token cache and the version key.
pub struct Provider {
    config: ProviderConfig,
    clients: Mutex<HashMap<String, Client>>,
    cache: cache::TokenCache,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn normalize(address: &str) -> String {
    address.trim().trim_end_matches('/').to_owned()
}

/// Seconds since the epoch, for comparing with a token's `exp`.
#[allow(
    clippy::disallowed_methods,
    reason = "the provider has no engine clock; only token expiry diagnostics and cache bounds read it"
)]
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The claims of a JWT, decoded without verification (for diagnostics and for
/// shortening the cache lifetime only; the server verifies the token).
fn unverified_claims(jwt: &SecretString) -> Option<Value> {
    let payload = jwt.expose_secret().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn retryable(e: &ClientError) -> bool {
    e.is_transport() || matches!(e.status(), Some(429 | 500 | 502 | 503 | 504))
}

/// Run `call` up to [`ATTEMPTS`] times while the server is unavailable, backing off.
async fn with_backoff<T, F, Fut>(idempotent: bool, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut delay = BACKOFF;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e)
                if attempt < ATTEMPTS
                    && (if idempotent {
                        retryable(&e)
                    } else {
                        // A write may have happened: retry only what was refused before.
                        matches!(e.status(), Some(429 | 503))
                    }) =>
            {
                tracing::debug!(target: "keyhaven::csi", error = %e, attempt, "retrying after a server error");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn server_error(e: ClientError) -> MountError {
    if retryable(&e) {
        MountError::Unavailable(e.to_string())
    } else {
        MountError::Server(e.to_string())
    }
}

/// The secret data of an answer: `data.data` for KV v2, else `data`.
fn kv_data(envelope: &Value) -> Option<&serde_json::Map<String, Value>> {
    let data = envelope.get("data")?;
    match (data.get("data"), data.get("metadata")) {
        (Some(Value::Object(inner)), Some(_)) => Some(inner),
        (Some(Value::Null), Some(_)) => None,
        _ => data.as_object(),
    }
}

fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

fn decode(encoding: Encoding, key: &str, raw: Vec<u8>) -> Result<Vec<u8>, String> {
    match encoding {
        Encoding::Utf8 => Ok(raw),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(raw.trim_ascii())
            .map_err(|_| {
                format!("the value of key {key:?} is not valid base64 (encoding: base64)")
            }),
        Encoding::Hex => hex::decode(raw.trim_ascii())
            .map_err(|_| format!("the value of key {key:?} is not valid hex (encoding: hex)")),
    }
}

/// The files of one object from the server's answer.
fn object_files(obj: &ObjectSpec, envelope: &Value) -> Result<Vec<(String, Vec<u8>)>, String> {
    let top = envelope.get("data").and_then(Value::as_object);
    let data = kv_data(envelope);
    let lookup = |key: &str| -> Option<&Value> {
        data.and_then(|d| d.get(key))
            .or_else(|| top.and_then(|t| t.get(key)))
    };
    match &obj.selector {
        Selector::Whole => {
            let whole = envelope.get("data").cloned().unwrap_or(Value::Null);
            Ok(vec![(obj.name.clone(), whole.to_string().into_bytes())])
        }
        Selector::Key(key) => {
            let v = lookup(key)
                .ok_or_else(|| format!("the secret at {} has no key {key:?}", obj.path))?;
            Ok(vec![(
                obj.name.clone(),
                decode(obj.encoding, key, value_bytes(v))?,
            )])
        }
        Selector::AllKeys => {
            let d = data.ok_or_else(|| format!("the answer for {} has no data", obj.path))?;
            let mut files = Vec::with_capacity(d.len());
            for (key, v) in d {
                let name = format!("{}/{key}", obj.name);
                params::check_file_path(&name).map_err(|e| {
                    format!("key {key:?} cannot be a file name ({e}); use secretKey or a template")
                })?;
                files.push((name, decode(obj.encoding, key, value_bytes(v))?));
            }
            Ok(files)
        }
        Selector::Template(t) => {
            let mut out = Vec::new();
            for part in &t.0 {
                match part {
                    Part::Text(s) => out.extend_from_slice(s.as_bytes()),
                    Part::Key(key) => {
                        let v = lookup(key).ok_or_else(|| {
                            format!("the template uses key {key:?}, which the secret at {} does not have", obj.path)
                        })?;
                        out.extend(value_bytes(v));
                    }
                }
            }
            Ok(vec![(obj.name.clone(), out)])
        }
    }
}

impl Provider {
    /// A provider; builds the client of the default server (reading the CA file).
    pub fn new(config: ProviderConfig) -> Result<Provider, ProviderError> {
        let cache =
            cache::TokenCache::new(config.max_cached_tokens).map_err(|_| ProviderError::Random)?;
        let provider = Provider {
            config,
            clients: Mutex::new(HashMap::new()),
            cache,
        };
        provider
            .client(&provider.config.address.clone())
            .map_err(|source| ProviderError::Client {
                address: provider.config.address.clone(),
                source,
            })?;
        Ok(provider)
    }

    fn client(&self, address: &str) -> Result<Client, ClientError> {
        let address = normalize(address);
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&address) {
            return Ok(c.clone());
        }
        let mut cc = ClientConfig::new(address.clone());
        cc.ca_cert = self.config.ca_cert.clone();
        cc.timeout = self.config.request_timeout;
        let c = Client::new(cc)?;
        clients.insert(address, c.clone());
        Ok(c)
    }

    /// The server a mount talks to: the provider's, or an allowed `vaultAddress`.
    fn server_for(&self, spec: &MountSpec) -> Result<Client, MountError> {
        let address = match &spec.address {
            None => normalize(&self.config.address),
            Some(a) => {
                let a = normalize(a);
                let allowed = a == normalize(&self.config.address)
                    || self
                        .config
                        .allowed_addresses
                        .iter()
                        .any(|x| normalize(x) == a);
                if !allowed {
                    return Err(MountError::AddressNotAllowed(a));
                }
                a
            }
        };
        if let Some(ca) = &spec.ca_cert_path
            && self.config.ca_cert.as_deref() != Some(Path::new(ca))
        {
            return Err(MountError::CaNotAllowed(ca.clone()));
        }
        self.client(&address)
            .map_err(|e| MountError::Server(e.to_string()))
    }

    /// Answer one `Mount`.
    pub async fn mount(&self, request: MountRequest) -> Result<MountResponse, MountError> {
        let spec = params::parse(&request.attributes, &request.secrets, &request.permission)?;
        let server = self.server_for(&spec)?;
        let audience = spec
            .audience
            .clone()
            .unwrap_or_else(|| self.config.audience.clone());
        let jwt = spec
            .tokens
            .get(&audience)
            .ok_or_else(|| MountError::NoToken {
                audience: audience.clone(),
                present: spec
                    .tokens
                    .audiences()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            })?;
        let mount = spec
            .auth_mount
            .clone()
            .unwrap_or_else(|| self.config.auth_mount.clone());
        let key = self
            .cache
            .key_of(jwt, &spec.role, &mount, server.address().as_str());

        let mut relogged = false;
        loop {
            let (token, cached) = self
                .cache
                .get_or_login(key, self.login(&server, &mount, &spec.role, &audience, jwt))
                .await?;
            let client = server
                .with_token(&token)
                .map_err(|e| MountError::Server(e.to_string()))?;
            match self.read_all(&client, &spec).await {
                // A cached token the server refuses may have been revoked: log in again once.
                Err(MountError::Denied { .. }) if cached && !relogged => {
                    self.cache.forget(key).await;
                    relogged = true;
                }
                Err(e) => return Err(e),
                Ok(response) => {
                    tracing::info!(
                        target: "keyhaven::csi",
                        pod_namespace = %spec.pod.namespace,
                        pod_name = %spec.pod.name,
                        role = %spec.role,
                        objects = spec.objects.len(),
                        files = response.files.len(),
                        cached_token = cached,
                        "mounted"
                    );
                    return Ok(response);
                }
            }
        }
    }

    async fn login(
        &self,
        server: &Client,
        mount: &str,
        role: &str,
        audience: &str,
        jwt: &SecretString,
    ) -> Result<(SecretString, Duration), MountError> {
        let answer = with_backoff(true, || server.login_kubernetes(mount, role, jwt)).await;
        let auth = match answer {
            Ok(a) => a.auth,
            Err(e)
                if e.status()
                    .is_some_and(|s| (400..500).contains(&s) && s != 429) =>
            {
                return Err(MountError::LoginRefused(diagnose(
                    jwt, mount, role, audience, &e,
                )));
            }
            Err(e) => return Err(server_error(e)),
        };
        let claims = unverified_claims(jwt);
        let jwt_left = claims
            .as_ref()
            .and_then(|c| c.get("exp"))
            .and_then(Value::as_i64)
            .map(|exp| u64::try_from(exp.saturating_sub(unix_now())).unwrap_or(0));
        let lease = (auth.lease_duration > 0).then_some(auth.lease_duration);
        let ttl = match (lease, jwt_left) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b.min(3600),
            (None, None) => 0,
        };
        Ok((
            auth.client_token,
            cache::usable_for(Duration::from_secs(ttl)),
        ))
    }

    async fn read_all(
        &self,
        client: &Client,
        spec: &MountSpec,
    ) -> Result<MountResponse, MountError> {
        use futures::StreamExt as _;
        // Objects are read concurrently, a bounded number at a time, in order.
        // (By index: a closure over `&ObjectSpec` trips a higher-ranked lifetime limit of
        // the Send check on the service's future.)
        let results: Vec<_> = futures::stream::iter(0..spec.objects.len())
            .map(|i| self.read_nth(client, spec, i))
            .buffered(READ_CONCURRENCY)
            .collect()
            .await;
        let mut response = MountResponse::default();
        for (obj, result) in spec.objects.iter().zip(results) {
            let files = result?;
            let version = match &files {
                Some(files) => self
                    .config
                    .version_key
                    .version(&obj.config_digest_input, files),
                None => self.config.version_key.version(
                    &obj.config_digest_input,
                    &[("\0absent".to_owned(), Vec::new())],
                ),
            };
            response.object_version.push(ObjectVersion {
                id: obj.name.clone(),
                version,
            });
            for (path, contents) in files.into_iter().flatten() {
                response.files.push(File {
                    path,
                    mode: i32::try_from(obj.mode).unwrap_or(0o644),
                    contents,
                });
            }
        }
        let size = response.encoded_len();
        if size > self.config.max_response_bytes {
            return Err(MountError::TooLarge {
                size,
                limit: self.config.max_response_bytes,
            });
        }
        Ok(response)
    }

    async fn read_nth(
        &self,
        client: &Client,
        spec: &MountSpec,
        i: usize,
    ) -> Result<Option<Vec<(String, Vec<u8>)>>, MountError> {
        match spec.objects.get(i) {
            Some(obj) => self.read_object(client, spec, obj).await,
            None => Ok(None),
        }
    }

    /// The files of one object, or `None` for an absent optional one.
    async fn read_object(
        &self,
        client: &Client,
        spec: &MountSpec,
        obj: &ObjectSpec,
    ) -> Result<Option<Vec<(String, Vec<u8>)>>, MountError> {
        let answer = match obj.method {
            Method::Get => {
                let query: Vec<(String, String)> = obj
                    .args
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                        )
                    })
                    .collect();
                let q: Vec<(&str, &str)> = query
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                with_backoff(true, || client.read(&obj.path, &q)).await
            }
            Method::Put => {
                let body = Value::Object(obj.args.clone());
                with_backoff(false, || client.write(&obj.path, Some(&body))).await
            }
        };
        let envelope = match answer {
            Ok(Some(v)) if kv_data(&v).is_some() || obj.selector == Selector::Whole => v,
            Ok(_) => {
                return if obj.optional {
                    Ok(None)
                } else {
                    Err(MountError::NotFound {
                        object: obj.name.clone(),
                        path: obj.path.clone(),
                    })
                };
            }
            Err(e) if e.status() == Some(403) => {
                return Err(MountError::Denied {
                    object: obj.name.clone(),
                    path: obj.path.clone(),
                    role: spec.role.clone(),
                });
            }
            Err(e) if e.is_not_found() && obj.optional => return Ok(None),
            Err(e) if e.is_not_found() => {
                return Err(MountError::NotFound {
                    object: obj.name.clone(),
                    path: obj.path.clone(),
                });
            }
            Err(e) => return Err(server_error(e)),
        };
        object_files(obj, &envelope)
            .map(Some)
            .map_err(|reason| MountError::Content {
                object: obj.name.clone(),
                reason,
            })
    }
}

/// The message of a refused login: what the token says about itself (unverified: the
/// server refused it) and which setting to check.
fn diagnose(
    jwt: &SecretString,
    mount: &str,
    role: &str,
    audience: &str,
    e: &ClientError,
) -> String {
    let server_says = e.api_errors().join("; ");
    let Some(c) = unverified_claims(jwt) else {
        return format!(
            "login to auth/{mount} with role {role:?} was refused ({server_says}): the token for audience \
             {audience:?} is not a JWT; check the CSIDriver's tokenRequests"
        );
    };
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("?").to_owned();
    let k8s = c.get("kubernetes.io");
    let ns = s(k8s.and_then(|k| k.get("namespace")));
    let sa = s(k8s
        .and_then(|k| k.get("serviceaccount"))
        .and_then(|x| x.get("name")));
    let iss = s(c.get("iss"));
    let auds: Vec<String> = match c.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    if let Some(exp) = c.get("exp").and_then(Value::as_i64)
        && exp <= unix_now()
    {
        return format!(
            "login to auth/{mount} with role {role:?} was refused: the ServiceAccount token of {ns}/{sa} \
             expired {} s ago; kubelet renews it on republish (CSIDriver requiresRepublish: true); check the \
             node's clock",
            unix_now() - exp
        );
    }
    if !auds.iter().any(|a| a == audience) {
        return format!(
            "login to auth/{mount} with role {role:?} was refused: the token's audiences are {auds:?}, not \
             {audience:?}; make the CSIDriver tokenRequests audience, the SecretProviderClass audience and \
             the role's audience the same"
        );
    }
    format!(
        "login to auth/{mount} with role {role:?} was refused ({server_says}) for service account {ns}/{sa} \
         (issuer {iss:?}, audience {audience:?}): check that role {role:?} exists and binds \
         bound_service_account_names={sa}, bound_service_account_namespaces={ns} and audience={audience} \
         (keyhaven read auth/{mount}/role/{role}), and that auth/{mount}/config trusts issuer {iss:?} and \
         the cluster's signing keys (keyhaven read auth/{mount}/config)"
    )
}

/// The gRPC front of a [`Provider`].
#[derive(Debug, Clone)]
pub struct Service(pub Arc<Provider>);

#[tonic::async_trait]
impl CsiDriverProvider for Service {
    async fn version(
        &self,
        _request: tonic::Request<VersionRequest>,
    ) -> Result<tonic::Response<VersionResponse>, tonic::Status> {
        Ok(tonic::Response::new(VersionResponse {
            version: "v1alpha1".to_owned(),
            runtime_name: PROVIDER_NAME.to_owned(),
            runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn mount(
        &self,
        request: tonic::Request<MountRequest>,
    ) -> Result<tonic::Response<MountResponse>, tonic::Status> {
        match self.0.mount(request.into_inner()).await {
            Ok(r) => Ok(tonic::Response::new(r)),
            Err(e) => {
                tracing::warn!(target: "keyhaven::csi", error = %e, "mount failed");
                Err(e.into())
            }
        }
    }
}

/// Serve `provider` on the unix socket `path` (mode 0600) until `shutdown` resolves.
pub async fn serve(
    provider: Arc<Provider>,
    path: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ProviderError> {
    let mut socket = crate::socket::bind(path).await?;
    let listener = socket.take_listener().ok_or(ProviderError::Random)?;
    tracing::info!(target: "keyhaven::csi", socket = %path.display(), "serving the CSI provider API");
    let limit = provider.config.max_response_bytes.max(DEFAULT_MAX_RESPONSE);
    let service = CsiDriverProviderServer::new(Service(provider))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let limits = crate::socket::Limits::default();
    limits
        .server()
        .add_service(service)
        .serve_with_incoming_shutdown(crate::socket::incoming(listener, limits), shutdown)
        .await
        .map_err(ProviderError::Serve)?;
    drop(socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            method: "GET",
            path: "secret/data/x".into(),
            status,
            errors: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_are_retried_with_backoff_and_writes_only_when_refused() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let r: Result<(), _> = with_backoff(true, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(api(503)) }
        })
        .await;
        assert_eq!(r.unwrap_err().status(), Some(503));
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);
        assert_eq!(
            start.elapsed(),
            BACKOFF + BACKOFF * 2,
            "200 ms, then 400 ms"
        );

        // Recovers on the second attempt.
        let calls = AtomicU32::new(0);
        let r = with_backoff(true, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { if n == 0 { Err(api(502)) } else { Ok(7) } }
        })
        .await;
        assert_eq!(r.unwrap(), 7);

        // A refusal is final; a write that may have happened (500) is not repeated.
        for (idempotent, status) in [(true, 403), (true, 404), (false, 500)] {
            let calls = AtomicU32::new(0);
            let _: Result<(), _> = with_backoff(idempotent, || {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { Err(api(status)) }
            })
            .await;
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{status}");
        }
        let calls = AtomicU32::new(0);
        let _: Result<(), _> = with_backoff(false, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(api(503)) }
        })
        .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            ATTEMPTS,
            "a sealed server refused the write"
        );
    }

    #[test]
    fn versions_are_keyed_stable_and_bound_to_content_and_config() {
        let key = VersionKey::from_bytes(&[7u8; 32]).unwrap();
        let files = vec![("a".to_owned(), b"secret".to_vec())];
        let v = key.version("cfg", &files);
        assert_eq!(v, key.version("cfg", &files), "stable");
        assert_eq!(v.len(), 43, "base64url of 32 bytes");
        assert_ne!(v, key.version("cfg2", &files), "bound to the configuration");
        assert_ne!(
            v,
            key.version("cfg", &[("a".to_owned(), b"secreT".to_vec())])
        );
        assert_ne!(
            v,
            key.version("cfg", &[("b".to_owned(), b"secret".to_vec())])
        );
        let other = VersionKey::from_bytes(&[8u8; 32]).unwrap();
        assert_ne!(
            v,
            other.version("cfg", &files),
            "keyed: another key, another version"
        );
        let random = VersionKey::random().unwrap();
        assert_ne!(v, random.version("cfg", &files));
        assert!(matches!(
            VersionKey::from_bytes(&[0u8; 31]),
            Err(ProviderError::ShortKey(31))
        ));
        assert!(!format!("{key:?}").contains('7'));
    }

    #[test]
    fn kv2_answers_are_unwrapped_and_keys_found() {
        let obj = |selector: Selector| ObjectSpec {
            name: "f".into(),
            path: "secret/data/app".into(),
            selector,
            method: Method::Get,
            args: serde_json::Map::new(),
            mode: 0o644,
            encoding: Encoding::Utf8,
            optional: false,
            config_digest_input: String::new(),
        };
        let kv2 = serde_json::json!({"data": {"data": {"user": "u", "n": 5}, "metadata": {"version": 1}}});
        let files = object_files(&obj(Selector::AllKeys), &kv2).unwrap();
        assert_eq!(
            files,
            [
                ("f/n".to_owned(), b"5".to_vec()),
                ("f/user".to_owned(), b"u".to_vec())
            ]
        );
        let kv1 = serde_json::json!({"data": {"user": "u"}});
        let files = object_files(&obj(Selector::Key("user".into())), &kv1).unwrap();
        assert_eq!(files, [("f".to_owned(), b"u".to_vec())]);
        let err = object_files(&obj(Selector::Key("nope".into())), &kv2).unwrap_err();
        assert!(err.contains("no key \"nope\""), "{err}");
        let bad_name = serde_json::json!({"data": {"../x": "v"}});
        assert!(object_files(&obj(Selector::AllKeys), &bad_name).is_err());
        let deleted =
            serde_json::json!({"data": {"data": null, "metadata": {"deletion_time": "x"}}});
        assert!(kv_data(&deleted).is_none());
    }
}
