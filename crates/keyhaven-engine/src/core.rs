//! The core: seal state, init and unseal, and the request path.
//!
//! A request goes: sealed check → authenticate (token store) → authorize (policy) →
//! audit → route by mount table → backend on its scoped storage. The policy and audit
//! steps are seams for now: only root tokens exist and there are no audit devices yet.

use std::sync::Arc;

use keyhaven_crypto::SecretKey;
use keyhaven_crypto::shamir::{self, Share};
use keyhaven_storage::{Condition, Op, Store, Transaction, TxOutcome};
use parking_lot::RwLock;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::barrier::{self, Barrier, Keyring};
use crate::clock::{Clock, rfc3339};
use crate::error::EngineError;
use crate::mounts::{self, MountConfig, MountEntry, Mounted, Router};
use crate::params;
use crate::request::{Operation, Request, Response};
use crate::token::{self, TokenEntry, TokenStore};

/// The persisted seal configuration (not secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SealConfig {
    #[serde(rename = "type")]
    kind: String,
    secret_shares: u8,
    secret_threshold: u8,
    cluster_name: String,
    cluster_id: String,
}

/// What `sys/seal-status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SealStatus {
    /// Seal type (`shamir`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether `sys/init` has run.
    pub initialized: bool,
    /// Whether the server is sealed.
    pub sealed: bool,
    /// Threshold.
    pub t: u8,
    /// Number of shares.
    pub n: u8,
    /// Shares entered so far.
    pub progress: u8,
    /// Identifies the current unseal attempt.
    pub nonce: String,
    /// Cluster name (empty before init).
    pub cluster_name: String,
    /// Cluster id (empty before init).
    pub cluster_id: String,
}

/// The result of `sys/init`: shown once, never stored.
pub struct InitResult {
    /// Unseal key shares.
    pub shares: Vec<Share>,
    /// The initial root token.
    pub root_token: SecretString,
}

impl std::fmt::Debug for InitResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitResult")
            .field("shares", &self.shares.len())
            .finish_non_exhaustive()
    }
}

/// Parameters of `sys/init`.
#[derive(Debug, Clone, Copy)]
pub struct InitParams {
    /// Number of shares to split the unseal key into.
    pub secret_shares: u8,
    /// Shares needed to unseal.
    pub secret_threshold: u8,
}

/// A request to `sys/unseal`.
pub enum UnsealInput {
    /// One share, as hex or base64 text.
    Key(SecretString),
    /// Forget the shares entered so far.
    Reset,
}

struct Unsealed {
    barrier: Arc<Barrier>,
    tokens: TokenStore,
    router: RwLock<Arc<Router>>,
    mount_lock: tokio::sync::Mutex<()>,
}

enum State {
    Uninitialized,
    Sealed {
        config: SealConfig,
        progress: Vec<Share>,
        nonce: String,
    },
    Unsealed {
        config: SealConfig,
        inner: Arc<Unsealed>,
    },
}

/// The engine.
pub struct Core {
    raw: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    state: RwLock<State>,
    /// Serialises init, unseal and seal.
    op_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

fn random_hex(n: usize) -> Result<String, EngineError> {
    let mut b = vec![0u8; n];
    keyhaven_crypto::fill_random(&mut b).map_err(|_| EngineError::Crypto)?;
    Ok(hex::encode(b))
}

/// Decode an unseal share given as hex or base64.
fn decode_share(text: &str) -> Result<Share, EngineError> {
    use base64::Engine as _;
    let text = text.trim();
    let bytes = Zeroizing::new(
        hex::decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
            .map_err(|_| {
                EngineError::invalid("invalid unseal key share: expected hex or base64")
            })?,
    );
    Share::from_bytes(bytes.to_vec())
        .map_err(|e| EngineError::invalid(format!("invalid unseal key share: {e}")))
}

impl Core {
    /// A core over raw storage; reads the seal configuration to learn whether the
    /// storage was initialized. Starts sealed.
    pub async fn new(raw: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Arc<Core>, EngineError> {
        let state = match raw.get(barrier::SEAL_CONFIG_PATH).await? {
            None => State::Uninitialized,
            Some(bytes) => {
                let config: SealConfig = serde_json::from_slice(&bytes).map_err(|_| {
                    EngineError::Corrupt("seal configuration is malformed".to_owned())
                })?;
                State::Sealed {
                    config,
                    progress: Vec::new(),
                    nonce: String::new(),
                }
            }
        };
        Ok(Arc::new(Core {
            raw,
            clock,
            state: RwLock::new(state),
            op_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Whether requests are refused because the server is sealed (or not initialized).
    pub fn is_sealed(&self) -> bool {
        !matches!(*self.state.read(), State::Unsealed { .. })
    }

    /// Whether `sys/init` has run.
    pub fn is_initialized(&self) -> bool {
        !matches!(*self.state.read(), State::Uninitialized)
    }

    /// The seal status.
    pub fn seal_status(&self) -> SealStatus {
        let state = self.state.read();
        let (config, sealed, progress, nonce) = match &*state {
            State::Uninitialized => (None, true, 0, String::new()),
            State::Sealed {
                config,
                progress,
                nonce,
            } => (
                Some(config),
                true,
                u8::try_from(progress.len()).unwrap_or(u8::MAX),
                nonce.clone(),
            ),
            State::Unsealed { config, .. } => (Some(config), false, 0, String::new()),
        };
        SealStatus {
            kind: "shamir".to_owned(),
            initialized: config.is_some(),
            sealed,
            t: config.map(|c| c.secret_threshold).unwrap_or(0),
            n: config.map(|c| c.secret_shares).unwrap_or(0),
            progress,
            nonce,
            cluster_name: config.map(|c| c.cluster_name.clone()).unwrap_or_default(),
            cluster_id: config.map(|c| c.cluster_id.clone()).unwrap_or_default(),
        }
    }

    /// `sys/init`: create the root key and keyring, split the unseal key, create the
    /// first root token. Everything is written in one transaction; the server stays
    /// sealed afterwards.
    pub async fn init(&self, params: InitParams) -> Result<InitResult, EngineError> {
        self.init_with_root_id(params, None).await
    }

    async fn init_with_root_id(
        &self,
        params: InitParams,
        root_id: Option<&str>,
    ) -> Result<InitResult, EngineError> {
        let (n, t) = (params.secret_shares, params.secret_threshold);
        if n == 0 || t == 0 {
            return Err(EngineError::invalid(
                "secret_shares and secret_threshold must be at least 1",
            ));
        }
        if t > n {
            return Err(EngineError::invalid(
                "secret_threshold cannot be larger than secret_shares",
            ));
        }
        if n > 1 && t == 1 {
            return Err(EngineError::invalid(
                "secret_threshold must be greater than one for multiple shares",
            ));
        }
        let _op = self.op_lock.lock().await;
        if self.is_initialized() {
            return Err(EngineError::AlreadyInitialized);
        }
        let now = self.clock.unix_seconds();
        let unseal_key = SecretKey::generate().map_err(|_| EngineError::Crypto)?;
        let root_key = SecretKey::generate().map_err(|_| EngineError::Crypto)?;
        let shares = shamir::split(unseal_key.expose_secret(), t, n)
            .map_err(|e| EngineError::invalid(format!("cannot split the unseal key: {e}")))?;
        let barrier = Barrier::new_for_init(self.raw.clone(), &root_key, Keyring::generate(now)?)?;

        let config = SealConfig {
            kind: "shamir".to_owned(),
            secret_shares: n,
            secret_threshold: t,
            cluster_name: format!("keyhaven-cluster-{}", random_hex(4)?),
            cluster_id: uuid::Uuid::new_v4().to_string(),
        };
        let salt = token::new_salt()?;
        let tokens = TokenStore::with_salt(Arc::new(keyhaven_storage::MemStore::new()), &salt);
        let root_token = match root_id {
            Some(id) => id.to_owned(),
            None => token::generate_token()?,
        };
        let (token_key, token_value) = tokens.root_entry(&root_token, now)?;
        let (salt_key, salt_value) = token::salt_entry(&salt);
        let mounts_value =
            serde_json::to_vec(&Vec::<MountEntry>::new()).map_err(|_| EngineError::Crypto)?;

        // Everything init writes is one raw transaction whose condition is "not initialized
        // yet", so a crash or a concurrent init leaves either nothing or a whole install.
        let staged = [
            (salt_key, salt_value),
            (token_key, token_value),
            (mounts::MOUNTS_PATH.to_owned(), mounts_value),
        ];
        let mut ops = Vec::new();
        for (key, value) in staged {
            let value = barrier.encrypt_entry(&key, &value)?;
            ops.push(Op::Put { key, value });
        }
        ops.push(Op::Put {
            key: barrier::ROOT_KEY_PATH.to_owned(),
            value: barrier::seal_root_key(&unseal_key, &root_key)?,
        });
        ops.push(Op::Put {
            key: barrier::KEYRING_PATH.to_owned(),
            value: barrier.sealed_keyring()?,
        });
        ops.push(Op::Put {
            key: barrier::SEAL_CONFIG_PATH.to_owned(),
            value: serde_json::to_vec(&config).map_err(|_| EngineError::Crypto)?,
        });
        barrier.seal();
        let tx = Transaction {
            conditions: vec![Condition::Absent {
                key: barrier::SEAL_CONFIG_PATH.to_owned(),
            }],
            ops,
        };
        match self.raw.transact(tx).await? {
            TxOutcome::Committed => {}
            TxOutcome::ConditionFailed { .. } => return Err(EngineError::AlreadyInitialized),
        }
        *self.state.write() = State::Sealed {
            config,
            progress: Vec::new(),
            nonce: String::new(),
        };
        tracing::info!(target: "keyhaven::seal", shares = n, threshold = t, "initialized");
        Ok(InitResult {
            shares,
            root_token: SecretString::from(root_token),
        })
    }

    /// `sys/unseal`: take one share (or reset). Returns the status afterwards.
    pub async fn unseal(&self, input: UnsealInput) -> Result<SealStatus, EngineError> {
        let _op = self.op_lock.lock().await;
        let key_text = match input {
            UnsealInput::Reset => {
                if let State::Sealed {
                    progress, nonce, ..
                } = &mut *self.state.write()
                {
                    progress.clear();
                    nonce.clear();
                }
                return Ok(self.seal_status());
            }
            UnsealInput::Key(k) => k,
        };
        if !self.is_initialized() {
            return Err(EngineError::NotInitialized);
        }
        let share = decode_share(secrecy::ExposeSecret::expose_secret(&key_text))?;
        let (combined, threshold) = {
            let mut state = self.state.write();
            let (config, progress, nonce) = match &mut *state {
                State::Uninitialized => return Err(EngineError::NotInitialized),
                State::Unsealed { .. } => {
                    drop(state);
                    return Ok(self.seal_status());
                }
                State::Sealed {
                    config,
                    progress,
                    nonce,
                } => (config, progress, nonce),
            };
            if let Some(first) = progress.first()
                && first.as_bytes().len() != share.as_bytes().len()
            {
                return Err(EngineError::invalid(
                    "unseal key share has a different length than the shares already provided",
                ));
            }
            if progress.iter().any(|s| s.x() == share.x()) {
                return Err(EngineError::invalid(
                    "this unseal key share was already provided",
                ));
            }
            if nonce.is_empty() {
                *nonce = uuid::Uuid::new_v4().to_string();
            }
            progress.push(share);
            if progress.len() < usize::from(config.secret_threshold) {
                drop(state);
                return Ok(self.seal_status());
            }
            let combined = shamir::combine(progress);
            progress.clear();
            nonce.clear();
            (combined, config.secret_threshold)
        };
        let wrong = || {
            EngineError::invalid(format!(
                "unseal failed: the {threshold} shares provided do not reconstruct the unseal key; progress was reset"
            ))
        };
        let unseal_key = combined.map_err(|_| wrong())?;
        let sealed_root = self
            .raw
            .get(barrier::ROOT_KEY_PATH)
            .await?
            .ok_or_else(|| EngineError::Corrupt("the sealed root key is missing".to_owned()))?;
        let root_key = barrier::open_root_key(&unseal_key, &sealed_root)?.ok_or_else(wrong)?;
        let inner = self.open(&root_key).await?;
        let mut state = self.state.write();
        if let State::Sealed { config, .. } = &*state {
            let config = config.clone();
            *state = State::Unsealed { config, inner };
        }
        drop(state);
        tracing::info!(target: "keyhaven::seal", "unsealed");
        Ok(self.seal_status())
    }

    /// Build the unsealed state from the root key: keyring, token store, mounts.
    async fn open(&self, root_key: &SecretKey) -> Result<Arc<Unsealed>, EngineError> {
        let barrier = Arc::new(Barrier::unseal(self.raw.clone(), root_key).await?);
        let view: Arc<dyn Store> = barrier.clone();
        let tokens = TokenStore::load(view.clone()).await?;
        let table: Vec<MountEntry> = match view.get(mounts::MOUNTS_PATH).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|_| EngineError::Corrupt("mount table is malformed".to_owned()))?,
            None => Vec::new(),
        };
        let mut mounted = Vec::with_capacity(table.len());
        for entry in table {
            let backend = mounts::instantiate(&entry, view.clone(), self.clock.clone())?;
            mounted.push(Mounted { entry, backend });
        }
        Ok(Arc::new(Unsealed {
            barrier,
            tokens,
            router: RwLock::new(Arc::new(Router::new(mounted))),
            mount_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// `sys/seal`: drop every key. In-flight requests finish; new ones get `Sealed`.
    pub async fn seal(&self) {
        let _op = self.op_lock.lock().await;
        self.seal_locked();
    }

    fn seal_locked(&self) {
        let mut state = self.state.write();
        if let State::Unsealed { config, inner } = &*state {
            inner.barrier.seal();
            let config = config.clone();
            *state = State::Sealed {
                config,
                progress: Vec::new(),
                nonce: String::new(),
            };
            tracing::info!(target: "keyhaven::seal", "sealed");
        }
    }

    /// Dev mode: initialize with one share, unseal, mount KV v2 at `secret/`. Returns the
    /// unseal key share and the root token (`root_token_id` if given).
    pub async fn dev_setup(&self, root_token_id: Option<&str>) -> Result<InitResult, EngineError> {
        let init = self
            .init_with_root_id(
                InitParams {
                    secret_shares: 1,
                    secret_threshold: 1,
                },
                root_token_id,
            )
            .await?;
        let share = init.shares.first().ok_or(EngineError::Crypto)?;
        let text = SecretString::from(hex::encode(share.as_bytes()));
        self.unseal(UnsealInput::Key(text)).await?;
        let inner = self.unsealed()?;
        let mut options = Map::new();
        options.insert("version".to_owned(), Value::String("2".to_owned()));
        self.enable_mount(
            &inner,
            "secret/",
            "kv",
            "key/value secret storage",
            options,
            MountConfig::default(),
        )
        .await?;
        Ok(init)
    }

    fn unsealed(&self) -> Result<Arc<Unsealed>, EngineError> {
        match &*self.state.read() {
            State::Unsealed { inner, .. } => Ok(inner.clone()),
            _ => Err(EngineError::Sealed),
        }
    }

    /// Handle one authenticated API request.
    pub async fn handle(&self, req: Request) -> Result<Response, EngineError> {
        let inner = self.unsealed()?;
        let identity = self.authenticate(&inner, &req).await?;
        authorize(&identity, &req)?;
        if let Some(rest) = req.path.strip_prefix("sys/") {
            return self.handle_sys(&inner, rest, &req).await;
        }
        let router = inner.router.read().clone();
        let Some((mounted, rel)) = router.route(&req.path) else {
            return Err(EngineError::NotFound(format!(
                "no handler for route {:?}: no mount at this path",
                req.path
            )));
        };
        mounted
            .backend
            .handle(crate::backend::BackendRequest {
                operation: req.operation,
                path: rel,
                data: &req.data,
            })
            .await
    }

    async fn authenticate(
        &self,
        inner: &Unsealed,
        req: &Request,
    ) -> Result<Arc<TokenEntry>, EngineError> {
        let Some(token) = &req.token else {
            return Err(EngineError::PermissionDenied);
        };
        inner
            .tokens
            .lookup(token.expose())
            .await?
            .ok_or(EngineError::PermissionDenied)
    }

    async fn handle_sys(
        &self,
        inner: &Arc<Unsealed>,
        rest: &str,
        req: &Request,
    ) -> Result<Response, EngineError> {
        let op = req.operation;
        let is_write = matches!(op, Operation::Create | Operation::Update);
        match rest {
            "mounts" if op == Operation::Read => Ok(self.list_mounts(inner)),
            "seal" if is_write => {
                let _op = self.op_lock.lock().await;
                self.seal_locked();
                Ok(Response::no_content())
            }
            "rotate" if is_write => {
                let status = inner.barrier.rotate(self.clock.unix_seconds()).await?;
                tracing::info!(target: "keyhaven::seal", term = status.term, "keyring rotated");
                Ok(Response::no_content())
            }
            "key-status" if op == Operation::Read => {
                let s = inner.barrier.key_status()?;
                let mut data = Map::new();
                data.insert("term".to_owned(), json!(s.term));
                data.insert(
                    "install_time".to_owned(),
                    json!(rfc3339(unix_to_time(s.installed_unix))),
                );
                data.insert("encryptions".to_owned(), json!(s.encryptions));
                Ok(Response {
                    data: Some(data),
                    top_level: true,
                    ..Default::default()
                })
            }
            "internal/ui/mounts" if op == Operation::Read => Ok(self.list_mounts(inner)),
            _ => {
                if let Some(path) = rest.strip_prefix("internal/ui/mounts/") {
                    if op != Operation::Read {
                        return Err(EngineError::UnsupportedOperation);
                    }
                    return self.ui_mount(inner, path);
                }
                if let Some(path) = rest.strip_prefix("mounts/") {
                    if let Some(mount) = path.strip_suffix("/tune") {
                        return self.tune_mount(inner, mount, req).await;
                    }
                    return match op {
                        Operation::Create | Operation::Update => {
                            self.enable_from_request(inner, path, req).await
                        }
                        Operation::Delete => self.disable_mount(inner, path).await,
                        Operation::Read => self.read_mount(inner, path),
                        _ => Err(EngineError::UnsupportedOperation),
                    };
                }
                Err(EngineError::NotFound(format!(
                    "no handler for route \"sys/{rest}\""
                )))
            }
        }
    }

    fn list_mounts(&self, inner: &Unsealed) -> Response {
        let router = inner.router.read().clone();
        let mut data = Map::new();
        let sys = mounts::sys_entry();
        data.insert(sys.path.clone(), sys.to_api());
        for e in router.entries() {
            data.insert(e.path.clone(), e.to_api());
        }
        Response {
            data: Some(data),
            top_level: true,
            ..Default::default()
        }
    }

    fn read_mount(&self, inner: &Unsealed, path: &str) -> Result<Response, EngineError> {
        let path = mounts::normalize_path(path)?;
        let router = inner.router.read().clone();
        let entry = router
            .entries()
            .find(|e| e.path == path)
            .ok_or_else(|| EngineError::NotFound(format!("no mount at {path:?}")))?;
        match entry.to_api() {
            Value::Object(map) => Ok(Response::data(map)),
            _ => Err(EngineError::Crypto),
        }
    }

    fn ui_mount(&self, inner: &Unsealed, path: &str) -> Result<Response, EngineError> {
        let router = inner.router.read().clone();
        let (mounted, _) = router
            .route(path.trim_start_matches('/'))
            .ok_or_else(|| EngineError::NotFound(format!("no mount at path {path:?}")))?;
        let mut api = match mounted.entry.to_api() {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        api.insert("path".to_owned(), Value::String(mounted.entry.path.clone()));
        Ok(Response::data(api))
    }

    async fn enable_from_request(
        &self,
        inner: &Arc<Unsealed>,
        path: &str,
        req: &Request,
    ) -> Result<Response, EngineError> {
        let d = &req.data;
        let kind = params::string(d, "type")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EngineError::invalid("missing parameter \"type\""))?;
        let description = params::string(d, "description")?.unwrap_or_default();
        let mut options = match d.get("options") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(o)) => o.clone(),
            Some(_) => {
                return Err(EngineError::invalid(
                    "invalid value for parameter \"options\": expected an object",
                ));
            }
        };
        let mut config = MountConfig::default();
        match d.get("config") {
            None | Some(Value::Null) => {}
            Some(Value::Object(c)) => {
                config.default_lease_ttl =
                    params::duration_secs(c, "default_lease_ttl")?.unwrap_or(0);
                config.max_lease_ttl = params::duration_secs(c, "max_lease_ttl")?.unwrap_or(0);
                if let Some(Value::Object(o)) = c.get("options") {
                    for (k, v) in o {
                        options.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
            Some(_) => {
                return Err(EngineError::invalid(
                    "invalid value for parameter \"config\": expected an object",
                ));
            }
        }
        let (kind, options) = mounts::normalize_type(kind, options)?;
        self.enable_mount(inner, path, &kind, description, options, config)
            .await?;
        Ok(Response::no_content())
    }

    async fn enable_mount(
        &self,
        inner: &Arc<Unsealed>,
        path: &str,
        kind: &str,
        description: &str,
        options: Map<String, Value>,
        config: MountConfig,
    ) -> Result<(), EngineError> {
        let path = mounts::normalize_path(path)?;
        let _guard = inner.mount_lock.lock().await;
        let current = inner.router.read().clone();
        if let Some(existing) = current.conflict(&path) {
            return Err(EngineError::invalid(format!(
                "path is already in use at {existing}"
            )));
        }
        let uuid = uuid::Uuid::new_v4().to_string();
        let entry = MountEntry {
            path,
            kind: kind.to_owned(),
            description: description.to_owned(),
            accessor: format!("{kind}_{}", random_hex(4)?),
            uuid,
            options,
            config,
            created: self.clock.unix_seconds(),
        };
        let view: Arc<dyn Store> = inner.barrier.clone();
        let backend = mounts::instantiate(&entry, view, self.clock.clone())?;
        let mut all: Vec<Mounted> = current.mounted().to_vec();
        all.push(Mounted {
            entry: entry.clone(),
            backend,
        });
        self.persist_table(inner, &all).await?;
        *inner.router.write() = Arc::new(Router::new(all));
        tracing::info!(target: "keyhaven::mounts", path = %entry.path, kind = %entry.kind, "mount enabled");
        Ok(())
    }

    async fn persist_table(
        &self,
        inner: &Unsealed,
        mounted: &[Mounted],
    ) -> Result<(), EngineError> {
        let table: Vec<&MountEntry> = mounted.iter().map(|m| &m.entry).collect();
        let bytes = serde_json::to_vec(&table).map_err(|_| EngineError::Crypto)?;
        inner.barrier.put(mounts::MOUNTS_PATH, bytes).await?;
        Ok(())
    }

    async fn disable_mount(
        &self,
        inner: &Arc<Unsealed>,
        path: &str,
    ) -> Result<Response, EngineError> {
        let path = mounts::normalize_path(path)?;
        let _guard = inner.mount_lock.lock().await;
        let current = inner.router.read().clone();
        let Some(entry) = current.entries().find(|e| e.path == path).cloned() else {
            // Vault answers success when disabling a path that is not mounted.
            return Ok(Response::no_content());
        };
        let remaining: Vec<Mounted> = current
            .mounted()
            .iter()
            .filter(|m| m.entry.path != path)
            .cloned()
            .collect();
        self.persist_table(inner, &remaining).await?;
        *inner.router.write() = Arc::new(Router::new(remaining));
        let view: Arc<dyn Store> = inner.barrier.clone();
        delete_prefix(view.as_ref(), &mounts::storage_prefix(&entry.uuid)).await?;
        tracing::info!(target: "keyhaven::mounts", path = %entry.path, "mount disabled and its data deleted");
        Ok(Response::no_content())
    }

    async fn tune_mount(
        &self,
        inner: &Arc<Unsealed>,
        path: &str,
        req: &Request,
    ) -> Result<Response, EngineError> {
        let path = mounts::normalize_path(path)?;
        match req.operation {
            Operation::Read => {
                let router = inner.router.read().clone();
                let e = router
                    .entries()
                    .find(|e| e.path == path)
                    .ok_or_else(|| EngineError::NotFound(format!("no mount at {path:?}")))?;
                let mut data = Map::new();
                data.insert(
                    "default_lease_ttl".to_owned(),
                    json!(e.config.default_lease_ttl),
                );
                data.insert("max_lease_ttl".to_owned(), json!(e.config.max_lease_ttl));
                data.insert("force_no_cache".to_owned(), json!(false));
                data.insert("description".to_owned(), json!(e.description));
                data.insert("options".to_owned(), Value::Object(e.options.clone()));
                Ok(Response::data(data))
            }
            Operation::Create | Operation::Update => {
                let d = &req.data;
                let _guard = inner.mount_lock.lock().await;
                let current = inner.router.read().clone();
                let mut all: Vec<Mounted> = current.mounted().to_vec();
                let m = all
                    .iter_mut()
                    .find(|m| m.entry.path == path)
                    .ok_or_else(|| EngineError::NotFound(format!("no mount at {path:?}")))?;
                if let Some(v) = params::duration_secs(d, "default_lease_ttl")? {
                    m.entry.config.default_lease_ttl = v;
                }
                if let Some(v) = params::duration_secs(d, "max_lease_ttl")? {
                    m.entry.config.max_lease_ttl = v;
                }
                if let Some(v) = params::string(d, "description")? {
                    m.entry.description = v.to_owned();
                }
                if let Some(Value::Object(o)) = d.get("options")
                    && let Some(v) = o.get("version")
                {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    if m.entry.kind == "kv" && v != "2" {
                        return Err(EngineError::invalid(
                            "cannot change the KV version of this mount",
                        ));
                    }
                }
                self.persist_table(inner, &all).await?;
                *inner.router.write() = Arc::new(Router::new(all));
                Ok(Response::no_content())
            }
            _ => Err(EngineError::UnsupportedOperation),
        }
    }
}

fn unix_to_time(secs: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Delete every key under `prefix`, folder by folder.
async fn delete_prefix(store: &dyn Store, prefix: &str) -> Result<(), EngineError> {
    const PAGE: usize = 1000;
    let mut stack = vec![prefix.to_owned()];
    while let Some(dir) = stack.pop() {
        let mut after: Option<String> = None;
        loop {
            let page = store.list_page(&dir, after.as_deref(), PAGE).await?;
            for name in &page {
                let full = format!("{dir}{name}");
                if name.ends_with('/') {
                    stack.push(full);
                } else {
                    store.delete(&full).await?;
                }
            }
            if page.len() < PAGE {
                break;
            }
            after = page.last().cloned();
        }
    }
    Ok(())
}

/// Decide whether the identity may do this. Only root tokens exist for now; the policy
/// engine replaces this function.
fn authorize(identity: &TokenEntry, _req: &Request) -> Result<(), EngineError> {
    if identity.is_root() {
        Ok(())
    } else {
        Err(EngineError::PermissionDenied)
    }
}
