//! The plugin's core: its session with keyhaven (token file or login), the cached state a
//! background refresher keeps (key versions, `key_id`, health), and the three operations
//! as plain async functions the gRPC service calls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyhaven_client::{Client, ClientConfig, ClientError};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use tonic::{Code, Status};
use zeroize::Zeroizing;

use super::cache::SeedCache;
use super::envelope::{self, KeyId, MAX_PLAINTEXT};
use super::metrics::{Metrics, Snapshot};

/// The annotation `Encrypt` adds: which transit key wrapped the seed (not secret).
pub const KEY_ANNOTATION: &str = "transit-key.kms.keyhaven.io";

/// How the plugin authenticates to keyhaven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// A token read from a file, read again on every refresh (so a rotated file is picked
    /// up without a restart).
    TokenFile(PathBuf),
    /// `auth/<mount>/login` with a role and a (projected ServiceAccount) JWT read from a
    /// file; the login is repeated before the token expires, or when it is refused.
    Login {
        /// The auth mount, e.g. `kubernetes` or `jwt`.
        mount: String,
        /// The role.
        role: String,
        /// The JWT file, read again at every login.
        jwt_file: PathBuf,
    },
}

/// Validated settings of one plugin instance.
#[derive(Debug, Clone)]
pub struct Settings {
    /// keyhaven's address.
    pub address: String,
    /// CA certificates to trust for it, instead of the system's.
    pub ca_cert: Option<PathBuf>,
    /// The transit mount, e.g. `transit`.
    pub mount: String,
    /// The transit key's name.
    pub key: String,
    /// How to authenticate.
    pub auth: Auth,
    /// How often the key and the session are refreshed.
    pub refresh_interval: Duration,
    /// Timeout of each request to keyhaven (under the apiserver's 3 s default).
    pub request_timeout: Duration,
    /// How many seeds the in-memory cache holds.
    pub cache_size: usize,
}

/// Why the plugin is not healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Not reached yet: the plugin has just started.
    Starting,
    /// No HTTP answer.
    Unreachable,
    /// keyhaven answered 503: sealed, or standing by.
    Sealed,
    /// The token was refused, or the login failed.
    Denied,
    /// The token or JWT file cannot be read.
    Credentials,
    /// The transit key does not exist.
    KeyMissing,
    /// The transit key exists but cannot encrypt (disabled, pending deletion, wrong type).
    KeyUnusable,
    /// Any other failure.
    Other,
}

impl Problem {
    fn code(self) -> Code {
        match self {
            Problem::Starting | Problem::Unreachable | Problem::Sealed | Problem::Other => {
                Code::Unavailable
            }
            Problem::Denied | Problem::Credentials => Code::PermissionDenied,
            Problem::KeyMissing | Problem::KeyUnusable => Code::FailedPrecondition,
        }
    }
}

/// What the last refresh learned about the transit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The latest version: new seeds are wrapped with it.
    pub latest: u32,
    /// Creation time (Unix seconds) of every version still present.
    pub created: BTreeMap<u32, u64>,
    /// Versions below this are refused for decryption by the server.
    pub min_decryption: u32,
    /// The `key_id` of `latest`.
    pub key_id: String,
    /// Whether the key may be deleted (`deletion_allowed`).
    pub deletion_allowed: bool,
    /// Why the key cannot encrypt, if it cannot.
    pub unusable: Option<String>,
}

impl KeyInfo {
    /// Reads `GET <mount>/keys/<name>`'s `data`.
    fn from_data(key: &str, data: &Value) -> Result<KeyInfo, String> {
        let latest = data
            .get("latest_version")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v >= 1)
            .ok_or("the key read has no latest_version")?;
        let mut created = BTreeMap::new();
        if let Some(keys) = data.get("keys").and_then(Value::as_object) {
            for (version, at) in keys {
                let (Ok(version), Some(at)) = (version.parse::<u32>(), at.as_u64()) else {
                    continue;
                };
                created.insert(version, at);
            }
        }
        let at = *created
            .get(&latest)
            .ok_or("the key read lists no creation time for the latest version")?;
        let min_decryption = data
            .get("min_decryption_version")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(1);
        let state = data
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("enabled");
        let encrypts = data
            .get("supports_encryption")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let unusable = if !encrypts {
            Some(format!("transit key {key} cannot encrypt (wrong key type)"))
        } else if state != "enabled" {
            Some(format!("transit key {key} is {state}"))
        } else {
            None
        };
        Ok(KeyInfo {
            latest,
            created,
            min_decryption,
            key_id: KeyId {
                key: key.to_owned(),
                version: latest,
                created: at,
            }
            .encode(),
            deletion_allowed: data
                .get("deletion_allowed")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            unusable,
        })
    }
}

/// The cached state `Status` answers from.
#[derive(Debug, Clone)]
pub struct State {
    /// The key as last seen; kept through failures.
    pub key: Option<KeyInfo>,
    /// `None` when healthy, else why not and a message for `healthz`.
    pub problem: Option<(Problem, String)>,
}

/// The session: a client carrying the current token.
#[derive(Default)]
struct Session {
    client: Option<Client>,
    token: Option<SecretString>,
    /// When to log in again (login mode).
    renew_at: Option<Instant>,
    /// The server refused the token: log in (or re-read the file) before the next call.
    refused: bool,
}

/// One running plugin. Cheap to share behind an `Arc`.
pub struct Plugin {
    settings: Settings,
    key_path: String,
    base: Client,
    session: tokio::sync::Mutex<Session>,
    current: RwLock<Option<Client>>,
    state: RwLock<State>,
    wake: tokio::sync::Notify,
    /// Seeds seen, by ciphertext.
    pub cache: SeedCache,
    /// Counters.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("address", &self.settings.address)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// A client error as (problem, message). Messages name the call and the server's answer,
/// never a token or a body.
fn classify(address: &str, e: &ClientError) -> (Problem, String) {
    if e.is_transport() {
        return (
            Problem::Unreachable,
            format!("keyhaven at {address} is unreachable: {e}"),
        );
    }
    match e.status() {
        Some(503) => (
            Problem::Sealed,
            format!("keyhaven is sealed or not active: {e}"),
        ),
        Some(401 | 403) => (
            Problem::Denied,
            format!("keyhaven refused the plugin's token: {e}"),
        ),
        Some(404) => (Problem::KeyMissing, format!("not found: {e}")),
        _ => (Problem::Other, e.to_string()),
    }
}

impl Plugin {
    /// A plugin with these settings; nothing is contacted until [`Plugin::refresh`].
    pub fn new(settings: Settings) -> Result<Plugin, ClientError> {
        let mut config = ClientConfig::new(settings.address.clone());
        config.ca_cert = settings.ca_cert.clone();
        config.timeout = settings.request_timeout;
        let base = Client::new(config)?;
        let key_path = format!("{}/{}", settings.mount, settings.key);
        Ok(Plugin {
            cache: SeedCache::new(settings.cache_size),
            key_path,
            base,
            settings,
            session: tokio::sync::Mutex::new(Session::default()),
            current: RwLock::new(None),
            state: RwLock::new(State {
                key: None,
                problem: Some((
                    Problem::Starting,
                    "starting: keyhaven not reached yet".to_owned(),
                )),
            }),
            wake: tokio::sync::Notify::new(),
            metrics: Metrics::default(),
        })
    }

    /// `<mount>/<name>` of the transit key.
    pub fn key_path(&self) -> &str {
        &self.key_path
    }

    /// The cached state.
    pub fn state(&self) -> State {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `Status`: `(healthz, key_id)` from the cached state, without any I/O.
    pub fn status(&self) -> (String, String) {
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key_id = state
            .key
            .as_ref()
            .map(|k| k.key_id.clone())
            .unwrap_or_default();
        let healthz = match (&state.problem, &state.key) {
            (Some((_, reason)), _) => reason.clone(),
            (None, Some(k)) if k.unusable.is_some() => k.unusable.clone().unwrap_or_default(),
            (None, _) => "ok".to_owned(),
        };
        (healthz, key_id)
    }

    /// What the metrics need.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.state();
        Snapshot {
            healthy: state.problem.is_none()
                && state.key.as_ref().is_some_and(|k| k.unusable.is_none()),
            key_version: state.key.as_ref().map_or(0, |k| k.latest),
            cache_entries: self.cache.len(),
            deletion_allowed: state.key.as_ref().is_some_and(|k| k.deletion_allowed),
        }
    }

    /// Ask the refresher to run now (after a failed call).
    fn wake(&self) {
        self.wake.notify_one();
    }

    /// Refreshes forever: every `refresh_interval`, or sooner when a call failed.
    pub async fn run_refresher(self: Arc<Self>) {
        loop {
            self.refresh().await;
            tokio::select! {
                () = tokio::time::sleep(self.settings.refresh_interval) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// One refresh: renew the session if needed, read the key, update the state.
    pub async fn refresh(&self) {
        let client = match self.ensure_session().await {
            Ok(c) => c,
            Err((problem, reason)) => return self.set_problem(problem, reason),
        };
        let path = format!("{}/keys/{}", self.settings.mount, self.settings.key);
        match client.read(&path, &[]).await {
            Ok(Some(v)) => {
                let data = v.get("data").unwrap_or(&Value::Null);
                match KeyInfo::from_data(&self.key_path, data) {
                    Ok(info) => self.set_key(info),
                    Err(reason) => self.set_problem(
                        Problem::Other,
                        format!("unexpected answer for {path}: {reason}"),
                    ),
                }
            }
            Ok(None) => self.set_problem(
                Problem::KeyMissing,
                format!("transit key {} does not exist", self.key_path),
            ),
            Err(e) => {
                self.metrics
                    .backend_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (problem, reason) = classify(&self.settings.address, &e);
                if problem == Problem::Denied {
                    self.session.lock().await.refused = true;
                }
                self.set_problem(problem, reason);
            }
        }
    }

    /// The client with a valid token: re-reads the token file, or logs in when there is
    /// no token yet, the token nears expiry, or the server refused it.
    async fn ensure_session(&self) -> Result<Client, (Problem, String)> {
        let mut session = self.session.lock().await;
        let token = match &self.settings.auth {
            Auth::TokenFile(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    (
                        Problem::Credentials,
                        format!("cannot read the token file {}: {e}", path.display()),
                    )
                })?;
                let text = Zeroizing::new(text);
                let token = text.trim();
                if token.is_empty() {
                    return Err((
                        Problem::Credentials,
                        format!("the token file {} is empty", path.display()),
                    ));
                }
                let same = session
                    .token
                    .as_ref()
                    .is_some_and(|t| t.expose_secret() == token);
                if same && session.client.is_some() {
                    session.refused = false;
                    return session
                        .client
                        .clone()
                        .ok_or_else(|| (Problem::Other, "no session".to_owned()));
                }
                SecretString::from(token.to_owned())
            }
            Auth::Login {
                mount,
                role,
                jwt_file,
            } => {
                let due = session.renew_at.is_some_and(|at| Instant::now() >= at);
                if session.client.is_some() && !due && !session.refused {
                    return session
                        .client
                        .clone()
                        .ok_or_else(|| (Problem::Other, "no session".to_owned()));
                }
                let jwt = tokio::fs::read_to_string(jwt_file).await.map_err(|e| {
                    (
                        Problem::Credentials,
                        format!("cannot read the JWT file {}: {e}", jwt_file.display()),
                    )
                })?;
                let jwt = Zeroizing::new(jwt);
                let body = json!({ "role": role, "jwt": jwt.trim() });
                let auth = self.base.login(mount, &body).await.map_err(|e| {
                    let (problem, reason) = classify(&self.settings.address, &e);
                    let problem = if problem == Problem::KeyMissing {
                        Problem::Denied
                    } else {
                        problem
                    };
                    (
                        problem,
                        format!("login at auth/{mount} as role {role} failed: {reason}"),
                    )
                })?;
                let ttl = auth.auth.lease_duration;
                session.renew_at = (ttl > 0).then(|| {
                    // Log in again after two thirds of the lifetime.
                    Instant::now() + Duration::from_secs(ttl.saturating_mul(2) / 3)
                });
                tracing::info!(
                    target: "keyhaven::kms",
                    mount = %mount,
                    role = %role,
                    ttl_seconds = ttl,
                    "logged in to keyhaven"
                );
                auth.auth.client_token
            }
        };
        let client = self
            .base
            .with_token(&token)
            .map_err(|e| (Problem::Credentials, format!("unusable token: {e}")))?;
        session.client = Some(client.clone());
        session.token = Some(token);
        session.refused = false;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(client.clone());
        Ok(client)
    }

    fn set_key(&self, info: KeyInfo) {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = state.key.take();
        match &previous {
            Some(p) if p.key_id == info.key_id => {}
            Some(p) => tracing::info!(
                target: "keyhaven::kms",
                old_key_id = %p.key_id,
                key_id = %info.key_id,
                "the transit key changed (rotated, or re-created): new seeds use the new key_id"
            ),
            None => tracing::info!(
                target: "keyhaven::kms",
                key_id = %info.key_id,
                "transit key read"
            ),
        }
        if previous
            .as_ref()
            .is_none_or(|p| p.min_decryption < info.min_decryption)
        {
            let purged = self.cache.purge_below(info.min_decryption);
            if purged > 0 {
                tracing::info!(
                    target: "keyhaven::kms",
                    min_decryption_version = info.min_decryption,
                    purged,
                    "dropped cached seeds of versions the server no longer decrypts"
                );
            }
        }
        if info.deletion_allowed && !previous.as_ref().is_some_and(|p| p.deletion_allowed) {
            tracing::warn!(
                target: "keyhaven::kms",
                key = %self.key_path,
                "deletion_allowed is set on the transit key: deleting it makes every Secret encrypted with it unreadable"
            );
        }
        if previous.as_ref().map(|p| &p.unusable) != Some(&info.unusable)
            && let Some(why) = &info.unusable
        {
            tracing::warn!(target: "keyhaven::kms", reason = %why, "KMS plugin unhealthy");
        }
        if let Some((problem, reason)) = &state.problem
            && *problem != Problem::Starting
        {
            tracing::info!(
                target: "keyhaven::kms",
                was = %reason,
                key_id = %info.key_id,
                "keyhaven reachable again: KMS plugin healthy"
            );
        }
        state.problem = None;
        state.key = Some(info);
    }

    fn set_problem(&self, problem: Problem, reason: String) {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = state.problem.as_ref().is_none_or(|(p, _)| *p != problem);
        if changed {
            tracing::warn!(
                target: "keyhaven::kms",
                reason = %reason,
                key_id = %state.key.as_ref().map(|k| k.key_id.as_str()).unwrap_or(""),
                "KMS plugin unhealthy; Status keeps the last key_id, seen ciphertexts still decrypt"
            );
        }
        state.problem = Some((problem, reason));
    }

    fn client(&self) -> Option<Client> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A failed call to keyhaven: a gRPC status with a clear message; wakes the refresher.
    async fn call_failed(&self, what: &str, e: &ClientError) -> Status {
        self.metrics
            .backend_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (problem, reason) = classify(&self.settings.address, e);
        if problem == Problem::Denied {
            self.session.lock().await.refused = true;
        }
        if matches!(
            problem,
            Problem::Unreachable | Problem::Sealed | Problem::Denied
        ) {
            self.set_problem(problem, reason.clone());
        }
        self.wake();
        let code = match problem {
            // 400: the server refused this ciphertext (too old, tampered, wrong key).
            Problem::Other if e.status() == Some(400) => Code::FailedPrecondition,
            other => other.code(),
        };
        Status::new(code, format!("{what}: {reason}"))
    }

    /// `Encrypt`: wraps `plaintext` with the current key version; returns the ciphertext
    /// and the `key_id` (equal to the one `Status` reports).
    pub async fn encrypt(&self, plaintext: &[u8]) -> Result<(Vec<u8>, String), Status> {
        if plaintext.is_empty() {
            return Err(Status::invalid_argument("plaintext is empty"));
        }
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(Status::invalid_argument(format!(
                "plaintext is {} bytes; at most {MAX_PLAINTEXT} are accepted (the apiserver sends 32-byte seeds)",
                plaintext.len()
            )));
        }
        let state = self.state();
        let Some(key) = state.key else {
            let (problem, reason) = state
                .problem
                .unwrap_or((Problem::Starting, "starting".to_owned()));
            return Err(Status::new(
                problem.code(),
                format!("no key_id yet: {reason}"),
            ));
        };
        if let Some(why) = &key.unusable {
            return Err(Status::failed_precondition(why.clone()));
        }
        let Some(client) = self.client() else {
            return Err(Status::unavailable("no session with keyhaven yet"));
        };
        let encoded = Zeroizing::new(B64.encode(plaintext));
        let body = json!({ "plaintext": encoded.as_str(), "key_version": key.latest });
        let path = format!("{}/encrypt/{}", self.settings.mount, self.settings.key);
        let answer = match client.write(&path, Some(&body)).await {
            Ok(v) => v,
            Err(e) => return Err(self.call_failed("transit encrypt failed", &e).await),
        };
        drop(body);
        let transit = answer
            .as_ref()
            .and_then(|v| v.pointer("/data/ciphertext"))
            .and_then(Value::as_str)
            .ok_or_else(|| Status::internal("transit encrypt answered without a ciphertext"))?;
        let ciphertext = envelope::encode(transit).map_err(|e| {
            Status::internal(format!("transit encrypt's ciphertext is unusable: {e}"))
        })?;
        let version = envelope::parse(&ciphertext)
            .map(|e| e.version)
            .map_err(|e| {
                Status::internal(format!("transit encrypt's ciphertext is unusable: {e}"))
            })?;
        if version != key.latest {
            self.wake();
            return Err(Status::unavailable(format!(
                "transit encrypted with version {version}, not the current {}: the key is changing; retry",
                key.latest
            )));
        }
        self.cache.insert(&ciphertext, version, plaintext);
        Ok((ciphertext, key.key_id))
    }

    /// `Decrypt`: the seed of a ciphertext `Encrypt` returned, from the cache or keyhaven.
    pub async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_id: &str,
    ) -> Result<Zeroizing<Vec<u8>>, Status> {
        let env = envelope::parse(ciphertext).map_err(|e| {
            Status::invalid_argument(format!("ciphertext is not one this plugin made: {e}"))
        })?;
        let id = KeyId::parse(key_id)
            .map_err(|e| Status::invalid_argument(format!("key_id {key_id:?} is unknown: {e}")))?;
        if id.key != self.key_path {
            return Err(Status::invalid_argument(format!(
                "key_id {key_id:?} names transit key {}; this plugin serves {}",
                id.key, self.key_path
            )));
        }
        if id.version != env.version {
            return Err(Status::invalid_argument(format!(
                "key_id {key_id:?} names version {}, the ciphertext version {}",
                id.version, env.version
            )));
        }
        let state = self.state();
        if let Some(key) = &state.key {
            if let Some(created) = key.created.get(&id.version)
                && *created != id.created
            {
                return Err(Status::failed_precondition(format!(
                    "key_id {key_id:?}: transit key {} version {} was created at {created}, not {}: the key was deleted and created again, and this data cannot be decrypted",
                    self.key_path, id.version, id.created
                )));
            }
            if env.version < key.min_decryption {
                return Err(Status::failed_precondition(format!(
                    "ciphertext of transit key version {} is below min_decryption_version {}: {}",
                    env.version,
                    key.min_decryption,
                    "ciphertext or signature version is disallowed by policy (too old)"
                )));
            }
        }
        if let Some(seed) = self.cache.get(ciphertext) {
            self.metrics
                .cache_hits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(seed);
        }
        self.metrics
            .cache_misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(client) = self.client() else {
            let reason = state
                .problem
                .map_or_else(|| "no session".to_owned(), |(_, r)| r);
            return Err(Status::unavailable(format!(
                "this ciphertext is not in the plugin's cache and keyhaven cannot be asked: {reason}"
            )));
        };
        let path = format!("{}/decrypt/{}", self.settings.mount, self.settings.key);
        let body = json!({ "ciphertext": env.transit });
        let answer = match client.write(&path, Some(&body)).await {
            Ok(v) => v,
            Err(e) => {
                let status = self.call_failed("transit decrypt failed", &e).await;
                if status.code() == Code::Unavailable || status.code() == Code::PermissionDenied {
                    return Err(Status::new(
                        status.code(),
                        format!(
                            "this ciphertext is not in the plugin's cache (not seen since the plugin started) and keyhaven cannot decrypt it now: {}",
                            status.message()
                        ),
                    ));
                }
                return Err(status);
            }
        };
        let mut answer = answer.unwrap_or(Value::Null);
        let encoded = match answer.pointer_mut("/data/plaintext") {
            Some(Value::String(s)) => Zeroizing::new(std::mem::take(s)),
            _ => {
                return Err(Status::internal(
                    "transit decrypt answered without a plaintext",
                ));
            }
        };
        drop(answer);
        let seed = B64
            .decode(encoded.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| Status::internal("transit decrypt's plaintext is not base64"))?;
        self.cache.insert(ciphertext, env.version, &seed);
        Ok(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_read_gives_the_key_id_of_the_latest_version() {
        let data = json!({
            "latest_version": 2, "keys": {"1": 100, "2": 200}, "min_decryption_version": 1,
            "deletion_allowed": false, "supports_encryption": true, "state": "enabled"
        });
        let info = KeyInfo::from_data("transit/k", &data).unwrap();
        assert_eq!(info.key_id, "kh1:transit/k:2:200");
        assert_eq!(info.min_decryption, 1);
        assert!(info.unusable.is_none());

        let disabled = json!({"latest_version": 1, "keys": {"1": 5}, "state": "disabled"});
        let info = KeyInfo::from_data("transit/k", &disabled).unwrap();
        assert_eq!(
            info.unusable.as_deref(),
            Some("transit key transit/k is disabled")
        );

        assert!(
            KeyInfo::from_data("transit/k", &json!({"latest_version": 3, "keys": {"1": 5}}))
                .is_err()
        );
        assert!(KeyInfo::from_data("transit/k", &json!({})).is_err());
    }
}
