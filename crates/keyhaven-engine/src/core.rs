//! The core: seal state, init and unseal, and the request path.
//!
//! A request goes: sealed check → mount (longest prefix; `sys/` and `auth/token/` are
//! mounts too) → one match in that mount's route table ([`crate::route`]) → authenticate
//! unless the route is unauthenticated (a limited-use token spends a use) → create or
//! update (existence check) → authorize (ACL; `sudo` when the route says so; for an
//! alias, on the object's own path too) → audit the request (fail closed; a pure route's
//! request is audited with its response instead) → check the fields → handler on its
//! scoped storage → audit the response. A request that spent its token's final use
//! revokes the token's tree as it ends.

use std::sync::Arc;
use std::time::Instant;

use keyhaven_crypto::SecretKey;
use keyhaven_crypto::shamir::{self, Share};
use keyhaven_storage::{Condition, Op, ReadMostly, StorageError, Store, Transaction, TxOutcome};
use parking_lot::RwLock;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::audit::{AuditBroker, AuditMount};
use crate::auth::Outbound;
use crate::backend::{Backend, BackendRequest};
use crate::barrier::{self, Barrier, Keyring};
use crate::clock::Clock;
use crate::error::{CryptoOp, EngineError};
use crate::metrics::{InFlight, Metrics};
use crate::mounts::{self, Handler, MountConfig, MountEntry, Mounted, Router, Table};
use crate::policy::{Acl, PolicyStore};
use crate::request::{LeaseDuration, Operation, Request, Response};
use crate::route::{self, Route};
use crate::seal::{AutoSeal, SealSetup, SealedValue};
use crate::token::{self, TokenEntry, TokenStore};
use crate::wrapping::WrapRequest;

/// How often, at most, maintenance counts the stored tokens for `vault.token.count`.
const TOKEN_COUNT_EVERY_SECS: i64 = 600;

/// The persisted seal configuration (not secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SealConfig {
    #[serde(rename = "type")]
    kind: String,
    secret_shares: u8,
    secret_threshold: u8,
    /// Recovery shares under auto-unseal (0 under Shamir).
    #[serde(default, skip_serializing_if = "is_zero")]
    recovery_shares: u8,
    /// Recovery threshold under auto-unseal (0 under Shamir).
    #[serde(default, skip_serializing_if = "is_zero")]
    recovery_threshold: u8,
    cluster_name: String,
    cluster_id: String,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

impl SealConfig {
    fn is_auto(&self) -> bool {
        self.kind != SHAMIR
    }

    /// `(shares, threshold)` of the shares this seal takes: unseal key shares under
    /// Shamir, recovery shares under auto-unseal.
    fn share_counts(&self) -> (u8, u8) {
        if self.is_auto() {
            (self.recovery_shares, self.recovery_threshold)
        } else {
            (self.secret_shares, self.secret_threshold)
        }
    }
}

const SHAMIR: &str = "shamir";

/// How the configured seal relates to the seal storage was initialized with.
enum Mode {
    /// Unseal key shares.
    Shamir,
    /// Auto-unseal through this seal; shares are recovery shares.
    Auto(Arc<dyn AutoSeal>),
    /// Storage is Shamir, the config names an auto seal: `sys/unseal` with `migrate`.
    MigrateToAuto(Arc<dyn AutoSeal>),
    /// Storage is sealed by this (now disabled) seal: `sys/unseal` with `migrate` and
    /// recovery shares moves back to Shamir.
    MigrateToShamir(Arc<dyn AutoSeal>),
    /// The config cannot open this storage; says why.
    Mismatch(String),
}

/// What `sys/seal-status` reports: the wire body itself. The engine leaves
/// `storage_type` to the server, which knows its storage.
pub use keyhaven_types::wire::SealStatus;

/// The result of `sys/init`: shown once, never stored.
pub struct InitResult {
    /// Unseal key shares (none under auto-unseal).
    pub shares: Vec<Share>,
    /// Recovery key shares (auto-unseal only).
    pub recovery_shares: Vec<Share>,
    /// The initial root token.
    pub root_token: SecretString,
}

impl std::fmt::Debug for InitResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitResult")
            .field("shares", &self.shares.len())
            .field("recovery_shares", &self.recovery_shares.len())
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

/// Parameters of `sys/init` under auto-unseal.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryParams {
    /// Number of shares to split the recovery key into.
    pub recovery_shares: u8,
    /// Recovery shares needed to authorize an operation.
    pub recovery_threshold: u8,
}

/// A request to `sys/unseal`.
pub enum UnsealInput {
    /// One share, as hex or base64 text.
    Key(SecretString),
    /// One share of the *old* seal, for a pending seal migration (`migrate: true`).
    Migrate(SecretString),
    /// Forget the shares entered so far.
    Reset,
}

pub(crate) struct Unsealed {
    pub(crate) barrier: Arc<Barrier>,
    pub(crate) tokens: TokenStore,
    pub(crate) leases: Arc<crate::lease::LeaseStore>,
    pub(crate) policies: PolicyStore,
    /// Secret engines, routed from the path's root.
    pub(crate) secrets: ReadMostly<Arc<Router>>,
    /// Auth methods, routed under `auth/`.
    pub(crate) auth: ReadMostly<Arc<Router>>,
    /// Serialises changes to either mount table.
    pub(crate) mount_lock: tokio::sync::Mutex<()>,
}

impl Unsealed {
    pub(crate) fn router(&self, table: Table) -> &ReadMostly<Arc<Router>> {
        match table {
            Table::Secrets => &self.secrets,
            Table::Auth => &self.auth,
        }
    }
}

/// What the server plugs into the engine.
#[derive(Default, Clone)]
pub struct CoreOptions {
    /// Audit devices; with none, nothing is recorded.
    pub audit: Arc<AuditBroker>,
    /// Outbound HTTPS for auth methods (TokenReview, OIDC discovery).
    pub outbound: Option<Arc<dyn Outbound>>,
    /// Database drivers for the `database/` secrets engine.
    pub database: Option<Arc<dyn crate::database::plugin::DatabasePlugins>>,
    /// Bounds on what one request may ask of a backend.
    pub limits: crate::backend::Limits,
    /// Where the engine counts requests, latencies and tokens (`sys/metrics`).
    pub metrics: Arc<Metrics>,
    /// Answer the token-less `sys/rekey/*` (off by default, as in OpenBao 2.5+; the
    /// authenticated `sys/rotate/root/*` always answers).
    pub unauthenticated_rekey: bool,
    /// Answer the token-less `sys/generate-root/*` (off by default; the authenticated
    /// `sys/generate-root-token/*` always answers).
    pub unauthenticated_generate_root: bool,
    /// The API address this server is reached at, reported by `sys/ha-status`.
    pub api_address: String,
    /// How the server is configured to seal (`[seal]`).
    pub seal: SealSetup,
    /// High availability: unsealing makes this replica a standby, and the server's
    /// election promotes it ([`Core::promote`]). `None`: a single server, active once
    /// unsealed.
    pub ha: Option<Arc<dyn crate::ha::HaControl>>,
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
    /// High availability: unsealed but not active (the root key is in `standby_root`).
    Standby {
        config: SealConfig,
        /// The state read from storage to serve requests without effects, kept exact by
        /// the active's announcements ([`Core::load_replica`], [`Core::apply_changes`]);
        /// `None` while this replica forwards everything.
        replica: Option<Arc<Unsealed>>,
    },
}

/// The engine.
pub struct Core {
    raw: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) options: CoreOptions,
    state: ReadMostly<State>,
    /// Serialises init, unseal and seal (and a rekey's commit).
    pub(crate) op_lock: tokio::sync::Mutex<()>,
    /// Rekey and root-generation attempts in progress (see [`crate::recovery`]).
    pub(crate) recovery: parking_lot::Mutex<crate::recovery::Attempts>,
    /// Why the last auto-unseal attempt failed, for the log and `sys/seal-status`.
    last_seal_error: RwLock<Option<String>>,
    /// High availability: the root key while unsealed (standby or active), to build the
    /// active state at promotion and drop it at demotion.
    standby_root: parking_lot::Mutex<Option<SecretKey>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

/// The checks `sys/init` makes of share counts, named as the request names them.
fn check_share_counts(
    shares_name: &str,
    threshold_name: &str,
    n: u8,
    t: u8,
) -> Result<(), EngineError> {
    if n == 0 || t == 0 {
        return Err(EngineError::invalid(format!(
            "{shares_name} and {threshold_name} must be at least 1"
        )));
    }
    if t > n {
        return Err(EngineError::invalid(format!(
            "{threshold_name} cannot be larger than {shares_name}"
        )));
    }
    if n > 1 && t == 1 {
        return Err(EngineError::invalid(format!(
            "{threshold_name} must be greater than one for multiple shares"
        )));
    }
    Ok(())
}

/// The seal configuration `sys/init` stored, if storage was initialized.
async fn read_seal_config(raw: &dyn Store) -> Result<Option<SealConfig>, EngineError> {
    let Some(bytes) = raw.get(barrier::SEAL_CONFIG_PATH).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| EngineError::Corrupt("seal configuration is malformed".to_owned()))
}

/// The root key sealed by `seal`, as the stored blob.
async fn seal_with(seal: &dyn AutoSeal, root: &SecretKey) -> Result<Vec<u8>, EngineError> {
    let value = seal
        .encrypt(root.expose_secret(), barrier::ROOT_KEY_PATH.as_bytes())
        .await
        .map_err(|e| {
            EngineError::Unavailable(format!(
                "the {} seal cannot encrypt the root key: {e}",
                seal.seal_type()
            ))
        })?;
    value
        .encode()
        .map_err(|_| EngineError::Internal("the seal returned a value that cannot be stored"))
}

fn random_hex(n: usize) -> Result<String, EngineError> {
    let mut b = vec![0u8; n];
    keyhaven_crypto::fill_random(&mut b).map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
    Ok(hex::encode(b))
}

/// Decode an unseal share given as hex or base64.
pub(crate) fn decode_share_bytes(text: &str) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    use base64::Engine as _;
    let text = text.trim();
    Ok(Zeroizing::new(
        hex::decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
            .map_err(|_| {
                EngineError::invalid("invalid unseal key share: expected hex or base64")
            })?,
    ))
}

pub(crate) fn parse_share(bytes: &[u8]) -> Result<Share, EngineError> {
    Share::from_bytes(bytes.to_vec())
        .map_err(|e| EngineError::invalid(format!("invalid unseal key share: {e}")))
}

impl Core {
    /// A core over raw storage; reads the seal configuration to learn whether the
    /// storage was initialized. Starts sealed.
    pub async fn new(raw: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Arc<Core>, EngineError> {
        Self::with_options(raw, clock, CoreOptions::default()).await
    }

    /// Like [`Core::new`], with audit devices and outbound HTTPS.
    pub async fn with_options(
        raw: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        options: CoreOptions,
    ) -> Result<Arc<Core>, EngineError> {
        let state = match read_seal_config(raw.as_ref()).await? {
            None => State::Uninitialized,
            Some(config) => State::Sealed {
                config,
                progress: Vec::new(),
                nonce: String::new(),
            },
        };
        Ok(Arc::new(Core {
            raw,
            clock,
            options,
            state: ReadMostly::new(state),
            op_lock: tokio::sync::Mutex::new(()),
            recovery: parking_lot::Mutex::new(crate::recovery::Attempts::default()),
            last_seal_error: RwLock::new(None),
            standby_root: parking_lot::Mutex::new(None),
        }))
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Raw storage, outside the barrier (the seal's records).
    pub(crate) fn raw_store(&self) -> &Arc<dyn Store> {
        &self.raw
    }

    /// `(shares, threshold)` of the shares in force, once initialized: unseal key shares
    /// under Shamir, recovery shares under auto-unseal.
    pub(crate) fn seal_shares(&self) -> Option<(u8, u8)> {
        match &*self.state.read() {
            State::Uninitialized => None,
            State::Sealed { config, .. }
            | State::Unsealed { config, .. }
            | State::Standby { config, .. } => Some(config.share_counts()),
        }
    }

    /// Whether storage is sealed by an auto seal (shares are recovery shares).
    pub(crate) fn is_auto_sealed(&self) -> bool {
        match &*self.state.read() {
            State::Uninitialized => false,
            State::Sealed { config, .. }
            | State::Unsealed { config, .. }
            | State::Standby { config, .. } => config.is_auto(),
        }
    }

    /// The seal configuration record with new share counts, for a rekey's commit.
    pub(crate) fn rekeyed_seal_config(&self, n: u8, t: u8) -> Result<Vec<u8>, EngineError> {
        let state = self.state.read();
        let (State::Sealed { config, .. }
        | State::Unsealed { config, .. }
        | State::Standby { config, .. }) = &*state
        else {
            return Err(EngineError::NotInitialized);
        };
        let mut config = config.clone();
        if config.is_auto() {
            config.recovery_shares = n;
            config.recovery_threshold = t;
        } else {
            config.secret_shares = n;
            config.secret_threshold = t;
        }
        serde_json::to_vec(&config).map_err(|_| EngineError::Encode("the seal configuration"))
    }

    /// Record new share counts in memory after a rekey's commit.
    pub(crate) fn apply_seal_shares(&self, n: u8, t: u8) {
        if let State::Sealed { config, .. }
        | State::Unsealed { config, .. }
        | State::Standby { config, .. } = &mut *self.state.write()
        {
            if config.is_auto() {
                config.recovery_shares = n;
                config.recovery_threshold = t;
            } else {
                config.secret_shares = n;
                config.secret_threshold = t;
            }
        }
    }

    /// How the configured seal relates to `config` (what storage was initialized with).
    fn mode_of(&self, config: Option<&SealConfig>) -> Mode {
        let stored = config.map(|c| c.kind.as_str());
        match (&self.options.seal, stored) {
            (SealSetup::Shamir, None | Some(SHAMIR)) => Mode::Shamir,
            (SealSetup::MigrateToShamir(_), None | Some(SHAMIR)) => Mode::Shamir,
            (SealSetup::Auto(s), None) => Mode::Auto(s.clone()),
            (SealSetup::Auto(s), Some(SHAMIR)) => Mode::MigrateToAuto(s.clone()),
            (SealSetup::Auto(s), Some(kind)) if kind == s.seal_type() => Mode::Auto(s.clone()),
            (SealSetup::MigrateToShamir(s), Some(kind)) if kind == s.seal_type() => {
                Mode::MigrateToShamir(s.clone())
            }
            (SealSetup::Auto(s), Some(kind)) | (SealSetup::MigrateToShamir(s), Some(kind)) => {
                Mode::Mismatch(format!(
                    "storage is sealed by the {kind:?} seal but the configured seal is {:?}; \
                     migrating between two auto seals is not supported: migrate to Shamir first",
                    s.seal_type()
                ))
            }
            (SealSetup::Shamir, Some(kind)) => Mode::Mismatch(format!(
                "storage is sealed by the {kind:?} seal but the config has no [seal] of that \
                 type; configure it (with disabled = true to migrate back to Shamir)"
            )),
        }
    }

    fn mode(&self) -> Mode {
        match &*self.state.read() {
            State::Uninitialized => self.mode_of(None),
            State::Sealed { config, .. }
            | State::Unsealed { config, .. }
            | State::Standby { config, .. } => self.mode_of(Some(config)),
        }
    }

    /// The seal type `sys/init` must be called for: `shamir` or the auto seal's type.
    pub fn init_seal_type(&self) -> &'static str {
        match &self.options.seal {
            SealSetup::Auto(s) => s.seal_type(),
            SealSetup::Shamir | SealSetup::MigrateToShamir(_) => SHAMIR,
        }
    }

    /// Why the last auto-unseal attempt failed, if it did and the server is still sealed.
    pub fn seal_error(&self) -> Option<String> {
        if self.is_sealed() {
            self.last_seal_error.read().clone()
        } else {
            None
        }
    }

    /// Whether requests are refused because the server is sealed (or not initialized).
    pub fn is_sealed(&self) -> bool {
        !matches!(
            *self.state.read(),
            State::Unsealed { .. } | State::Standby { .. }
        )
    }

    /// This replica's role: sealed, standby (high availability only) or active.
    pub fn role(&self) -> crate::ha::Role {
        match &*self.state.read() {
            State::Unsealed { .. } => crate::ha::Role::Active,
            State::Standby { .. } => crate::ha::Role::Standby,
            State::Uninitialized | State::Sealed { .. } => crate::ha::Role::Sealed,
        }
    }

    /// High availability: another replica may have initialized the shared storage since
    /// this one started. If this one still thinks it uninitialized, read the seal
    /// configuration again.
    pub async fn refresh_initialized(&self) -> Result<(), EngineError> {
        if self.is_initialized() {
            return Ok(());
        }
        let _op = self.op_lock.lock().await;
        self.refresh_initialized_locked().await
    }

    async fn refresh_initialized_locked(&self) -> Result<(), EngineError> {
        if self.options.ha.is_none() || self.is_initialized() {
            return Ok(());
        }
        let Some(config) = read_seal_config(self.raw.as_ref()).await? else {
            return Ok(());
        };
        let mut state = self.state.write();
        if matches!(*state, State::Uninitialized) {
            *state = State::Sealed {
                config,
                progress: Vec::new(),
                nonce: String::new(),
            };
            tracing::info!(target: "keyhaven::seal", "another replica initialized the database: sealed");
        }
        Ok(())
    }

    /// High availability: the key that authenticates what a standby adds to the requests
    /// it forwards (the client's address), derived from the root key, which every
    /// unsealed replica holds. `None` while sealed, or without high availability.
    pub fn forwarding_key(&self) -> Option<keyhaven_crypto::HmacKey> {
        let root = self.standby_root.lock();
        let root = root.as_ref()?;
        let mut key = Zeroizing::new([0u8; 32]);
        keyhaven_crypto::hkdf_sha256(
            root.expose_secret(),
            b"keyhaven",
            b"keyhaven ha request forwarding v1",
            key.as_mut_slice(),
        )
        .ok()?;
        Some(keyhaven_crypto::HmacKey::new(key.as_slice()))
    }

    /// The election of a high-availability server, if this is one.
    pub fn ha(&self) -> Option<&Arc<dyn crate::ha::HaControl>> {
        self.options.ha.as_ref()
    }

    /// The unsealed state for `root_key`: active, or with high availability a standby
    /// (the key checked against the keyring, which only the active loads).
    async fn unsealed_state(
        &self,
        config: SealConfig,
        root_key: &SecretKey,
    ) -> Result<State, EngineError> {
        if self.options.ha.is_none() {
            let inner = self.open(root_key).await?;
            return Ok(State::Unsealed { config, inner });
        }
        Barrier::unseal(self.raw.clone(), root_key).await?.seal();
        *self.standby_root.lock() = Some(root_key.try_clone());
        Ok(State::Standby {
            config,
            replica: None,
        })
    }

    /// High availability: this standby won the leadership; load the keyring, tokens,
    /// policies and mounts from storage and serve. `Ok(false)` if it is not a standby
    /// (sealed meanwhile, or already active).
    pub async fn promote(&self) -> Result<bool, EngineError> {
        let _op = self.op_lock.lock().await;
        if !matches!(*self.state.read(), State::Standby { .. }) {
            return Ok(false);
        }
        let root = self.standby_root_key()?;
        let inner = self.open(&root).await?;
        let mut state = self.state.write();
        if let State::Standby { config, .. } = &*state {
            let config = config.clone();
            *state = State::Unsealed { config, inner };
            tracing::info!(target: "keyhaven::ha", "active: serving requests");
            Ok(true)
        } else {
            inner.barrier.seal();
            Ok(false)
        }
    }

    /// High availability: this replica is no longer active (lost or gave up the
    /// leadership). Its keyring, tokens and mounts are dropped; it stays unsealed as a
    /// standby. In-flight requests finish (their writes are fenced by storage).
    pub async fn demote(&self) {
        let _op = self.op_lock.lock().await;
        let mut state = self.state.write();
        if let State::Unsealed { config, inner } = &*state {
            inner.barrier.seal();
            self.options.audit.seal();
            let config = config.clone();
            *state = State::Standby {
                config,
                replica: None,
            };
            tracing::warn!(target: "keyhaven::ha", "standby: no longer active");
        }
    }

    /// High availability: load, on this standby, the state that lets it answer requests
    /// without effects itself (KV reads, transit encryption with a cached key, token
    /// look-ups): keyring, tokens, policies and mounts, as [`Core::promote`] does. Call
    /// it once the announcements of later changes are being received (the server's
    /// listener), then apply each with [`Core::apply_changes`]. `Ok(false)` if this
    /// replica is not a standby. A failure leaves it forwarding everything.
    pub async fn load_replica(&self) -> Result<bool, EngineError> {
        let _op = self.op_lock.lock().await;
        if !matches!(*self.state.read(), State::Standby { .. }) {
            return Ok(false);
        }
        let root = self.standby_root_key()?;
        // Nothing is written: a replica cannot load a state that the active has not
        // created yet, and a request that needs a write is forwarded.
        let raw: Arc<dyn Store> = Arc::new(crate::ha::ReadOnly(self.raw.clone()));
        let loaded = self.open_on(raw, &root).await;
        let mut state = self.state.write();
        let State::Standby { replica, .. } = &mut *state else {
            return Ok(false);
        };
        match loaded {
            Ok(inner) => {
                *replica = Some(inner);
                Ok(true)
            }
            Err(e) => {
                *replica = None;
                Err(e)
            }
        }
    }

    /// High availability: stop answering anything on this standby (the announcements
    /// stopped arriving); every request is forwarded until [`Core::load_replica`].
    pub fn drop_replica(&self) {
        if let State::Standby { replica, .. } = &mut *self.state.write() {
            *replica = None;
        }
    }

    /// High availability: whether this standby answers requests without effects itself.
    pub fn serves_reads(&self) -> bool {
        self.replica().is_some()
    }

    /// The root key a standby holds, to build its state from storage.
    fn standby_root_key(&self) -> Result<SecretKey, EngineError> {
        self.standby_root
            .lock()
            .as_ref()
            .map(SecretKey::try_clone)
            .ok_or(EngineError::Internal("a standby without its root key"))
    }

    /// A standby's replica state, if loaded.
    fn replica(&self) -> Option<Arc<Unsealed>> {
        match &*self.state.read() {
            State::Standby {
                replica: Some(inner),
                ..
            } => Some(inner.clone()),
            _ => None,
        }
    }

    /// High availability: the active committed changes to these storage keys (its
    /// announcement, see [`crate::ha::announces`]); drop what this standby cached of
    /// them before the next request is answered. A change this standby cannot apply
    /// piecemeal (a mount table, the keyring, a transit key) reloads its whole state.
    pub async fn apply_changes(&self, keys: &[String]) -> Result<(), EngineError> {
        let Some(replica) = self.replica() else {
            return Ok(());
        };
        let mut reload = false;
        for key in keys {
            match crate::ha::scope(key) {
                crate::ha::Scope::Token(hash) => {
                    if replica.tokens.forget_hex(hash).is_err() {
                        reload = true;
                    }
                }
                crate::ha::Scope::Policies => replica.policies.invalidate(),
                crate::ha::Scope::Everything => reload = true,
                crate::ha::Scope::Nothing => {}
            }
        }
        if reload {
            self.load_replica().await?;
        }
        Ok(())
    }

    /// High availability: whether this standby may answer `op` on `path` itself: its
    /// state is loaded and the route has no effects. The engine still refuses
    /// ([`EngineError::NotActive`]) when the request turns out to need a write (a
    /// limited-use token, a transit key to create).
    pub fn standby_serves(&self, op: Operation, path: &str) -> bool {
        let Some(replica) = self.replica() else {
            return false;
        };
        let Some((mounted, rel)) = Target::locate(&replica, path) else {
            return false;
        };
        let mut target = Target::new(&mounted, rel);
        let route = target.route_for(op);
        standby_answers(Some(&target), route, op)
    }

    /// Whether `sys/init` has run.
    pub fn is_initialized(&self) -> bool {
        !matches!(*self.state.read(), State::Uninitialized)
    }

    /// Whether `token` is a live token of this server: false while sealed, for an
    /// unknown, revoked or expired token, and when it cannot be looked up. Consumes no
    /// use of a limited-use token and authorizes nothing (`handle` still does both); the
    /// HTTP layer asks it before reading a large request body.
    pub async fn token_is_valid(&self, token: &str) -> bool {
        let Ok(inner) = self.unsealed() else {
            return false;
        };
        matches!(
            inner
                .tokens
                .lookup_accessor_or_token(None, Some(token))
                .await,
            Ok(Some(_))
        )
    }

    /// The seal status.
    pub fn seal_status(&self) -> SealStatus {
        let mode = self.mode();
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
            State::Unsealed { config, .. } | State::Standby { config, .. } => {
                (Some(config), false, 0, String::new())
            }
        };
        let kind = match config {
            Some(c) => c.kind.clone(),
            None => self.init_seal_type().to_owned(),
        };
        let recovery_seal = kind != SHAMIR;
        let (n, t) = config.map(SealConfig::share_counts).unwrap_or((0, 0));
        SealStatus {
            build_date: String::new(),
            cluster_id: config.map(|c| c.cluster_id.clone()).unwrap_or_default(),
            cluster_name: config.map(|c| c.cluster_name.clone()).unwrap_or_default(),
            initialized: config.is_some(),
            migration: sealed && matches!(mode, Mode::MigrateToAuto(_) | Mode::MigrateToShamir(_)),
            n,
            nonce,
            progress,
            recovery_seal,
            recovery_seal_type: recovery_seal.then(|| SHAMIR.to_owned()),
            sealed,
            storage_type: None,
            t,
            kind,
            version: crate::REPORTED_VERSION.to_owned(),
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
        if let SealSetup::Auto(seal) = &self.options.seal {
            return Err(EngineError::invalid(format!(
                "parameters secret_shares,secret_threshold not applicable to seal type {}",
                seal.seal_type()
            )));
        }
        check_share_counts("secret_shares", "secret_threshold", n, t)?;
        let _op = self.op_lock.lock().await;
        if self.is_initialized() {
            return Err(EngineError::AlreadyInitialized);
        }
        let unseal_key =
            SecretKey::generate().map_err(|_| EngineError::Crypto(CryptoOp::KeyGeneration))?;
        let root_key =
            SecretKey::generate().map_err(|_| EngineError::Crypto(CryptoOp::KeyGeneration))?;
        let shares = shamir::split(unseal_key.expose_secret(), t, n)
            .map_err(|e| EngineError::invalid(format!("cannot split the unseal key: {e}")))?;
        let config = SealConfig {
            kind: SHAMIR.to_owned(),
            secret_shares: n,
            secret_threshold: t,
            recovery_shares: 0,
            recovery_threshold: 0,
            cluster_name: format!("keyhaven-cluster-{}", random_hex(4)?),
            cluster_id: uuid::Uuid::new_v4().to_string(),
        };
        let records = vec![(
            barrier::ROOT_KEY_PATH.to_owned(),
            barrier::seal_root_key(&unseal_key, &root_key)?,
        )];
        let root_token = self
            .commit_init(config, &root_key, root_id, records, false)
            .await?;
        tracing::info!(target: "keyhaven::seal", shares = n, threshold = t, "initialized");
        Ok(InitResult {
            shares,
            recovery_shares: Vec::new(),
            root_token,
        })
    }

    /// `sys/init` under auto-unseal: the root key is sealed by the configured seal, a
    /// recovery key is split into `recovery_shares`, and the server unseals itself.
    pub async fn init_auto(&self, params: RecoveryParams) -> Result<InitResult, EngineError> {
        let SealSetup::Auto(seal) = &self.options.seal else {
            return Err(EngineError::invalid(
                "parameters recovery_shares,recovery_threshold not applicable to seal type shamir",
            ));
        };
        let (n, t) = (params.recovery_shares, params.recovery_threshold);
        check_share_counts("recovery_shares", "recovery_threshold", n, t)?;
        let _op = self.op_lock.lock().await;
        if self.is_initialized() {
            return Err(EngineError::AlreadyInitialized);
        }
        let root_key =
            SecretKey::generate().map_err(|_| EngineError::Crypto(CryptoOp::KeyGeneration))?;
        let recovery_key =
            SecretKey::generate().map_err(|_| EngineError::Crypto(CryptoOp::KeyGeneration))?;
        let recovery_shares = shamir::split(recovery_key.expose_secret(), t, n)
            .map_err(|e| EngineError::invalid(format!("cannot split the recovery key: {e}")))?;
        let sealed_root = seal_with(seal.as_ref(), &root_key).await?;
        let config = SealConfig {
            kind: seal.seal_type().to_owned(),
            secret_shares: 0,
            secret_threshold: 0,
            recovery_shares: n,
            recovery_threshold: t,
            cluster_name: format!("keyhaven-cluster-{}", random_hex(4)?),
            cluster_id: uuid::Uuid::new_v4().to_string(),
        };
        let records = vec![
            (barrier::ROOT_KEY_PATH.to_owned(), sealed_root),
            (
                barrier::RECOVERY_KEY_PATH.to_owned(),
                barrier::seal_recovery_check(&recovery_key)?,
            ),
        ];
        drop(recovery_key);
        let root_token = self
            .commit_init(config, &root_key, None, records, true)
            .await?;
        tracing::info!(target: "keyhaven::seal", seal = seal.seal_type(), recovery_shares = n, recovery_threshold = t, "initialized and unsealed by the seal");
        Ok(InitResult {
            shares: Vec::new(),
            recovery_shares,
            root_token,
        })
    }

    /// Write everything init creates in one raw transaction whose condition is "not
    /// initialized yet", so a crash or a concurrent init leaves either nothing or a whole
    /// install. `records` are the seal's own (the sealed root key, ...). With
    /// `unseal_after`, the server is unsealed with `root_key` right away (auto-unseal).
    async fn commit_init(
        &self,
        config: SealConfig,
        root_key: &SecretKey,
        root_id: Option<&str>,
        records: Vec<(String, Vec<u8>)>,
        unseal_after: bool,
    ) -> Result<SecretString, EngineError> {
        let now = self.clock.unix_seconds();
        let barrier = Barrier::new_for_init(self.raw.clone(), root_key, Keyring::generate(now)?)?;
        let salt = token::new_salt()?;
        let tokens = TokenStore::with_salt(
            Arc::new(keyhaven_storage::MemStore::new()),
            self.clock.clone(),
            &salt,
        );
        let root_token = match root_id {
            Some(id) => id.to_owned(),
            None => token::generate_token()?,
        };
        let token_entries = tokens.root_entry(&root_token, now)?;
        let (salt_key, salt_value) = token::salt_entry(&salt);
        let mounts_value = serde_json::to_vec(&Vec::<MountEntry>::new())
            .map_err(|_| EngineError::Encode("the mount table"))?;
        let mut staged = token_entries;
        staged.push((salt_key, salt_value));
        staged.push((mounts::MOUNTS_PATH.to_owned(), mounts_value));
        let mut ops = Vec::new();
        for (key, value) in staged {
            let value = barrier.encrypt_entry(&key, &value)?;
            ops.push(Op::Put { key, value });
        }
        for (key, value) in records {
            ops.push(Op::Put { key, value });
        }
        ops.push(Op::Put {
            key: barrier::KEYRING_PATH.to_owned(),
            value: barrier.sealed_keyring()?,
        });
        ops.push(Op::Put {
            key: barrier::SEAL_CONFIG_PATH.to_owned(),
            value: serde_json::to_vec(&config)
                .map_err(|_| EngineError::Encode("the seal configuration"))?,
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
        if unseal_after {
            *self.state.write() = self.unsealed_state(config, root_key).await?;
        } else {
            *self.state.write() = State::Sealed {
                config,
                progress: Vec::new(),
                nonce: String::new(),
            };
        }
        Ok(SecretString::from(root_token))
    }

    /// `sys/unseal`: take one share (or reset). Returns the status afterwards.
    ///
    /// Under auto-unseal the shares are recovery shares: at the threshold they must
    /// reconstruct the recovery key, and the seal then decrypts the root key (the shares
    /// alone cannot). With [`UnsealInput::Migrate`], the shares of the old seal complete
    /// a pending seal migration.
    pub async fn unseal(&self, input: UnsealInput) -> Result<SealStatus, EngineError> {
        let _op = self.op_lock.lock().await;
        let (key_text, migrate) = match input {
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
            UnsealInput::Key(k) => (k, false),
            UnsealInput::Migrate(k) => (k, true),
        };
        self.refresh_initialized_locked().await?;
        if !self.is_initialized() {
            return Err(EngineError::NotInitialized);
        }
        // Like Vault: the key must be hex or base64; an unsealed server then answers with
        // its status without looking further.
        let bytes = decode_share_bytes(secrecy::ExposeSecret::expose_secret(&key_text))?;
        if !self.is_sealed() {
            return Ok(self.seal_status());
        }
        let mode = self.mode();
        match (&mode, migrate) {
            (Mode::Mismatch(why), _) => {
                return Err(EngineError::invalid(format!("cannot unseal: {why}")));
            }
            (Mode::MigrateToAuto(_) | Mode::MigrateToShamir(_), false) => {
                return Err(EngineError::invalid(
                    "a seal migration is pending: unseal with migrate=true and the shares of \
                     the old seal (unseal keys, or recovery keys when leaving an auto seal)",
                ));
            }
            (Mode::Shamir | Mode::Auto(_), true) => {
                return Err(EngineError::invalid(
                    "migrate was given but no seal migration is pending",
                ));
            }
            _ => {}
        }
        let share = parse_share(&bytes)?;
        let (combined, threshold) = {
            let mut state = self.state.write();
            let (config, progress, nonce) = match &mut *state {
                State::Uninitialized => return Err(EngineError::NotInitialized),
                State::Unsealed { .. } | State::Standby { .. } => {
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
            let (_, threshold) = config.share_counts();
            if progress.len() < usize::from(threshold) {
                drop(state);
                return Ok(self.seal_status());
            }
            let combined = shamir::combine(progress);
            progress.clear();
            nonce.clear();
            (combined, threshold)
        };
        let what = match &mode {
            Mode::Shamir | Mode::MigrateToAuto(_) => "unseal key",
            _ => "recovery key",
        };
        let wrong = || {
            EngineError::invalid(format!(
                "unseal failed: the {threshold} shares provided do not reconstruct the {what}; progress was reset"
            ))
        };
        let key = combined.map_err(|_| wrong())?;
        let (root_key, new_config) = match &mode {
            Mode::Shamir => {
                let sealed_root = self.sealed_root_record().await?;
                let root = barrier::open_root_key(&key, &sealed_root)?.ok_or_else(wrong)?;
                (root, None)
            }
            Mode::Auto(seal) => {
                if !self.recovery_key_matches(&key).await? {
                    return Err(wrong());
                }
                (self.root_from_seal(seal.as_ref()).await?, None)
            }
            Mode::MigrateToAuto(seal) => {
                let (root, config) = self.migrate_to_auto(seal.as_ref(), &key).await?;
                match root {
                    Some(root) => (root, Some(config)),
                    None => return Err(wrong()),
                }
            }
            Mode::MigrateToShamir(seal) => {
                if !self.recovery_key_matches(&key).await? {
                    return Err(wrong());
                }
                let (root, config) = self.migrate_to_shamir(seal.as_ref(), &key).await?;
                (root, Some(config))
            }
            Mode::Mismatch(_) => return Err(EngineError::Internal("unseal under a seal mismatch")),
        };
        drop(key);
        let config = new_config.map_or_else(|| self.current_config(), Ok)?;
        let unsealed = self.unsealed_state(config, &root_key).await?;
        let mut state = self.state.write();
        if let State::Sealed { .. } = &*state {
            *state = unsealed;
        }
        drop(state);
        tracing::info!(target: "keyhaven::seal", "unsealed");
        Ok(self.seal_status())
    }

    async fn sealed_root_record(&self) -> Result<Vec<u8>, EngineError> {
        self.raw
            .get(barrier::ROOT_KEY_PATH)
            .await?
            .ok_or_else(|| EngineError::Corrupt("the sealed root key is missing".to_owned()))
    }

    /// Whether `candidate` is the recovery key (opens the stored check value).
    pub(crate) async fn recovery_key_matches(
        &self,
        candidate: &keyhaven_crypto::SecretBytes,
    ) -> Result<bool, EngineError> {
        let check = self
            .raw
            .get(barrier::RECOVERY_KEY_PATH)
            .await?
            .ok_or_else(|| EngineError::Corrupt("the recovery key check is missing".to_owned()))?;
        barrier::recovery_check_opens(candidate, &check)
    }

    /// The root key, decrypted by `seal` from the stored blob.
    async fn root_from_seal(&self, seal: &dyn AutoSeal) -> Result<SecretKey, EngineError> {
        let record = self.sealed_root_record().await?;
        let blob = SealedValue::decode(&record)
            .map_err(|e| EngineError::Corrupt(format!("the sealed root key: {e}")))?;
        if blob.seal_type != seal.seal_type() {
            return Err(EngineError::Corrupt(format!(
                "the root key is sealed by the {:?} seal, not by the configured {:?} seal",
                blob.seal_type,
                seal.seal_type()
            )));
        }
        let plain = seal
            .decrypt(&blob, barrier::ROOT_KEY_PATH.as_bytes())
            .await
            .map_err(|e| {
                EngineError::Unavailable(format!(
                    "the {} seal cannot decrypt the root key: {e}",
                    seal.seal_type()
                ))
            })?;
        SecretKey::from_slice(&plain).map_err(|_| {
            EngineError::Corrupt("the sealed root key has the wrong length".to_owned())
        })
    }

    /// Unseal through the configured auto seal. `Ok(false)` when there is nothing to do
    /// (not initialized, or not configured for auto-unseal); `Ok(true)` once unsealed;
    /// an error (also kept for [`Core::seal_error`]) says why the seal did not answer.
    pub async fn auto_unseal(&self) -> Result<bool, EngineError> {
        let seal = match self.mode() {
            Mode::Auto(seal) => seal,
            Mode::Mismatch(why) => {
                *self.last_seal_error.write() = Some(why.clone());
                return Err(EngineError::invalid(why));
            }
            _ => return Ok(false),
        };
        let _op = self.op_lock.lock().await;
        if !self.is_initialized() {
            return Ok(false);
        }
        if !self.is_sealed() {
            return Ok(true);
        }
        let opened = match (
            self.root_from_seal(seal.as_ref()).await,
            self.current_config(),
        ) {
            (Ok(root), Ok(config)) => self.unsealed_state(config, &root).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        match opened {
            Ok(unsealed) => {
                let mut state = self.state.write();
                if let State::Sealed { .. } = &*state {
                    *state = unsealed;
                }
                drop(state);
                *self.last_seal_error.write() = None;
                tracing::info!(target: "keyhaven::seal", seal = seal.seal_type(), "unsealed by the seal");
                Ok(true)
            }
            Err(e) => {
                *self.last_seal_error.write() = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Shamir → auto: the unseal key must open the root key; the root key is then sealed
    /// by `seal`, the unseal key becomes the recovery key (its shares are the recovery
    /// shares from now on, and they no longer open the root key), all in one transaction.
    async fn migrate_to_auto(
        &self,
        seal: &dyn AutoSeal,
        unseal_key: &keyhaven_crypto::SecretBytes,
    ) -> Result<(Option<SecretKey>, SealConfig), EngineError> {
        let old = self.sealed_root_record().await?;
        let config = self.current_config()?;
        let Some(root) = barrier::open_root_key(unseal_key, &old)? else {
            return Ok((None, config));
        };
        let recovery = SecretKey::from_slice(unseal_key.expose_secret())
            .map_err(|_| EngineError::Corrupt("the unseal key has the wrong length".to_owned()))?;
        let sealed_root = seal_with(seal, &root).await?;
        let new_config = SealConfig {
            kind: seal.seal_type().to_owned(),
            secret_shares: 0,
            secret_threshold: 0,
            recovery_shares: config.secret_shares,
            recovery_threshold: config.secret_threshold,
            ..config
        };
        let tx = Transaction {
            conditions: vec![Condition::Equals {
                key: barrier::ROOT_KEY_PATH.to_owned(),
                value: old,
            }],
            ops: vec![
                Op::Put {
                    key: barrier::ROOT_KEY_PATH.to_owned(),
                    value: sealed_root,
                },
                Op::Put {
                    key: barrier::RECOVERY_KEY_PATH.to_owned(),
                    value: barrier::seal_recovery_check(&recovery)?,
                },
                Op::Put {
                    key: barrier::SEAL_CONFIG_PATH.to_owned(),
                    value: serde_json::to_vec(&new_config)
                        .map_err(|_| EngineError::Encode("the seal configuration"))?,
                },
            ],
        };
        self.commit_migration(tx).await?;
        tracing::info!(target: "keyhaven::seal", to = seal.seal_type(), "seal migrated from shamir: the unseal key shares are now recovery shares");
        Ok((Some(root), new_config))
    }

    /// Auto → Shamir: with the recovery key checked, the seal decrypts the root key once
    /// more; the root key is then sealed under the recovery key, which becomes the unseal
    /// key (the recovery shares are the unseal shares from now on).
    async fn migrate_to_shamir(
        &self,
        seal: &dyn AutoSeal,
        recovery_key: &keyhaven_crypto::SecretBytes,
    ) -> Result<(SecretKey, SealConfig), EngineError> {
        let old = self.sealed_root_record().await?;
        let config = self.current_config()?;
        let root = self.root_from_seal(seal).await?;
        let unseal_key = SecretKey::from_slice(recovery_key.expose_secret()).map_err(|_| {
            EngineError::Corrupt("the recovery key has the wrong length".to_owned())
        })?;
        let new_config = SealConfig {
            kind: SHAMIR.to_owned(),
            secret_shares: config.recovery_shares,
            secret_threshold: config.recovery_threshold,
            recovery_shares: 0,
            recovery_threshold: 0,
            ..config
        };
        let tx = Transaction {
            conditions: vec![Condition::Equals {
                key: barrier::ROOT_KEY_PATH.to_owned(),
                value: old,
            }],
            ops: vec![
                Op::Put {
                    key: barrier::ROOT_KEY_PATH.to_owned(),
                    value: barrier::seal_root_key(&unseal_key, &root)?,
                },
                Op::Delete {
                    key: barrier::RECOVERY_KEY_PATH.to_owned(),
                },
                Op::Put {
                    key: barrier::SEAL_CONFIG_PATH.to_owned(),
                    value: serde_json::to_vec(&new_config)
                        .map_err(|_| EngineError::Encode("the seal configuration"))?,
                },
            ],
        };
        self.commit_migration(tx).await?;
        tracing::info!(target: "keyhaven::seal", from = seal.seal_type(), "seal migrated to shamir: the recovery shares are now unseal key shares");
        Ok((root, new_config))
    }

    async fn commit_migration(&self, tx: Transaction) -> Result<(), EngineError> {
        match self.raw.transact(tx).await? {
            TxOutcome::Committed => Ok(()),
            TxOutcome::ConditionFailed { .. } => Err(EngineError::invalid(
                "the sealed root key changed meanwhile (another server migrated?); nothing was written",
            )),
        }
    }

    fn current_config(&self) -> Result<SealConfig, EngineError> {
        match &*self.state.read() {
            State::Uninitialized => Err(EngineError::NotInitialized),
            State::Sealed { config, .. }
            | State::Unsealed { config, .. }
            | State::Standby { config, .. } => Ok(config.clone()),
        }
    }

    /// Build the unsealed state from the root key: keyring, token store, policies, mounts.
    async fn open(&self, root_key: &SecretKey) -> Result<Arc<Unsealed>, EngineError> {
        self.open_on(self.raw.clone(), root_key).await
    }

    /// [`Core::open`] over `raw` (a standby's replica: read-only).
    async fn open_on(
        &self,
        raw: Arc<dyn Store>,
        root_key: &SecretKey,
    ) -> Result<Arc<Unsealed>, EngineError> {
        let barrier = Arc::new(
            Barrier::unseal(raw, root_key)
                .await?
                .with_metrics(self.options.metrics.clone()),
        );
        let view: Arc<dyn Store> = barrier.clone();
        let tokens = TokenStore::load(view.clone(), self.clock.clone()).await?;
        let leases = Arc::new(crate::lease::LeaseStore::new(
            view.clone(),
            self.clock.clone(),
        ));
        tokens.set_leases(leases.clone());
        let policies = PolicyStore::load(view.clone()).await?;
        self.options.audit.unseal(view.clone()).await?;
        let secrets = self.load_table(Table::Secrets, &view).await?;
        let auth = self.load_table(Table::Auth, &view).await?;
        // Revoking a token destroys its cubbyhole.
        if let Some(store) = secrets.mounted().iter().find_map(|m| match &m.handler {
            Handler::Cubbyhole(store) => Some(store.clone()),
            _ => None,
        }) {
            tokens.set_cubbyholes(store);
        }
        Ok(Arc::new(Unsealed {
            barrier,
            tokens,
            leases,
            policies,
            secrets: ReadMostly::new(Arc::new(secrets)),
            auth: ReadMostly::new(Arc::new(auth)),
            mount_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// Load a mount table. Its built-in mounts (`sys/` and `cubbyhole/`, or
    /// `auth/token/`) are entries like any other; storage written before a built-in mount
    /// was recorded gets it,
    /// written back conditioned on the table being unchanged.
    async fn load_table(&self, table: Table, view: &Arc<dyn Store>) -> Result<Router, EngineError> {
        let raw = view.get(table.storage_key()).await?;
        let mut entries: Vec<MountEntry> = match &raw {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|_| EngineError::Corrupt("mount table is malformed".to_owned()))?,
            None => Vec::new(),
        };
        let missing: Vec<_> = mounts::Builtin::of_table(table)
            .iter()
            .filter(|b| !entries.iter().any(|e| b.is(e)))
            .collect();
        if !missing.is_empty() {
            for builtin in missing {
                entries.push(builtin.new_entry(self.clock.unix_seconds()));
            }
            let bytes =
                serde_json::to_vec(&entries).map_err(|_| EngineError::Encode("the mount table"))?;
            let condition = match raw {
                Some(value) => Condition::Equals {
                    key: table.storage_key().to_owned(),
                    value,
                },
                None => Condition::Absent {
                    key: table.storage_key().to_owned(),
                },
            };
            let tx = Transaction {
                conditions: vec![condition],
                ops: vec![Op::Put {
                    key: table.storage_key().to_owned(),
                    value: bytes,
                }],
            };
            if let TxOutcome::ConditionFailed { .. } = view.transact(tx).await? {
                // Another server recorded it first: use the table as it is now.
                return Box::pin(self.load_table(table, view)).await;
            }
        }
        let mut mounted = Vec::with_capacity(entries.len());
        for entry in entries {
            let handler = mounts::instantiate(
                table,
                &entry,
                view.clone(),
                self.clock.clone(),
                self.options.outbound.clone(),
                self.options.database.clone(),
                self.options.limits,
            )?;
            mounted.push(Mounted {
                entry: Arc::new(entry),
                handler,
                timers: Arc::default(),
            });
        }
        Ok(Router::new(mounted))
    }

    /// `sys/seal`: drop every key. In-flight requests finish; new ones get `Sealed`.
    pub async fn seal(&self) {
        let _op = self.op_lock.lock().await;
        self.seal_locked();
    }

    fn seal_locked(&self) {
        self.recovery.lock().clear();
        *self.standby_root.lock() = None;
        let mut state = self.state.write();
        let config = match &*state {
            State::Unsealed { config, inner } => {
                inner.barrier.seal();
                self.options.audit.seal();
                config.clone()
            }
            State::Standby { config, .. } => config.clone(),
            State::Uninitialized | State::Sealed { .. } => return,
        };
        *state = State::Sealed {
            config,
            progress: Vec::new(),
            nonce: String::new(),
        };
        tracing::info!(target: "keyhaven::seal", "sealed");
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
        let share = init
            .shares
            .first()
            .ok_or(EngineError::Internal("init made no unseal share"))?;
        let text = SecretString::from(hex::encode(share.as_bytes()));
        self.unseal(UnsealInput::Key(text)).await?;
        let inner = self.unsealed()?;
        let mut options = Map::new();
        options.insert("version".to_owned(), Value::String("2".to_owned()));
        self.enable_mount(
            &inner,
            Table::Secrets,
            "secret/",
            "kv",
            "key/value secret storage",
            options,
            MountConfig::default(),
        )
        .await?;
        Ok(init)
    }

    /// The state that answers requests, and whether it is a standby's (see
    /// [`Core::load_replica`]).
    fn serving(&self) -> Result<(Arc<Unsealed>, bool), EngineError> {
        match &*self.state.read() {
            State::Unsealed { inner, .. } => Ok((inner.clone(), false)),
            State::Standby {
                replica: Some(inner),
                ..
            } => Ok((inner.clone(), true)),
            State::Standby { replica: None, .. } => Err(EngineError::NotActive),
            _ => Err(EngineError::Sealed),
        }
    }

    pub(crate) fn unsealed(&self) -> Result<Arc<Unsealed>, EngineError> {
        match &*self.state.read() {
            State::Unsealed { inner, .. } => Ok(inner.clone()),
            State::Standby { .. } => Err(EngineError::NotActive),
            _ => Err(EngineError::Sealed),
        }
    }

    /// Periodic maintenance, driven by the server's timer and the engine's clock: delete
    /// expired tokens, then let every mounted backend run its scheduled work (key
    /// rotation, scheduled deletion). Does nothing while sealed.
    pub async fn maintenance(&self) -> Result<(), EngineError> {
        let Ok(inner) = self.unsealed() else {
            return Ok(());
        };
        if let Err(e) = self.rotate_keyring_if_due(&inner).await {
            tracing::warn!(target: "keyhaven::maintenance", error = %e, "automatic keyring rotation failed");
        }
        let removed = inner.tokens.sweep_expired().await?;
        // Counting reads every token's name: not on every tick.
        if let Some(count) = inner.tokens.count_if_due(TOKEN_COUNT_EVERY_SECS).await? {
            self.options.metrics.set_token_count(count);
            let (leases, irrevocable) = inner.leases.count().await?;
            self.options.metrics.set_lease_counts(leases, irrevocable);
        }
        if removed > 0 {
            tracing::info!(target: "keyhaven::tokens", removed, "expired tokens removed");
        }
        let secrets = inner.secrets.read().clone();
        let auth = inner.auth.read().clone();
        for m in secrets.mounted().iter().chain(auth.mounted()) {
            let Handler::Backend(backend) = &m.handler else {
                continue;
            };
            if let Err(e) = backend.tick().await {
                tracing::warn!(target: "keyhaven::maintenance", mount = %m.entry.path, error = %e, "scheduled work failed");
            }
        }
        Ok(())
    }

    /// Handle one API request: route, authenticate, authorize, audit, serve.
    pub async fn handle(&self, req: Request) -> Result<Response, EngineError> {
        self.handle_wrapped(req, None).await
    }

    /// Handle one API request whose response the client may want wrapped (`wrap`, from
    /// `X-Vault-Wrap-TTL`): a successful answer with content is then kept in a
    /// single-use wrapping token's cubbyhole and the client gets `wrap_info` instead
    /// ([`crate::wrapping`]).
    pub async fn handle_wrapped(
        &self,
        req: Request,
        wrap: Option<WrapRequest>,
    ) -> Result<Response, EngineError> {
        let mut resp = self.handle_encoded(req, wrap).await?;
        resp.decode_data()?;
        Ok(resp)
    }

    /// [`Core::handle_wrapped`] for the server's envelope writer: the response's `data`
    /// may come encoded ([`Response::encoded_data`]), to be copied into the answer as it
    /// is.
    pub async fn handle_encoded(
        &self,
        req: Request,
        wrap: Option<WrapRequest>,
    ) -> Result<Response, EngineError> {
        let metrics = &self.options.metrics;
        let mut timing = RequestTiming {
            metrics,
            started: Instant::now(),
            _in_flight: metrics.start(),
            login: false,
        };
        let (inner, standby) = self.serving()?;
        let mut req = req;
        // The mount is held here and borrowed by the target: an alias may change the
        // path inside it, never the mount.
        let (mounted, rel) = Target::locate(&inner, &req.path).unzip();
        let mut target = mounted
            .as_deref()
            .zip(rel)
            .map(|(mounted, rel)| Target::new(mounted, rel));
        // The route decides everything about the path: authentication, sudo, purity,
        // create-versus-update, alias resolution, fields.
        let route = target.as_mut().and_then(|t| t.route_for(req.operation));
        // A standby answers only what has no effects (and what the active alone knows
        // goes there too); refusing records nothing, the active records it.
        if standby && (wrap.is_some() || !standby_answers(target.as_ref(), route, req.operation)) {
            return Err(EngineError::NotActive);
        }
        timing.login = route.is_some_and(|r| r.unauthenticated);
        let audit = &self.options.audit;
        let auth_table = req.path.starts_with("auth/");
        let mount = mounted.as_deref().map(|m| AuditMount {
            entry: &m.entry,
            auth: auth_table,
        });
        let entry = if route.is_some_and(|r| r.unauthenticated) {
            None
        } else {
            match self.authenticate(&inner, &req).await {
                Ok(entry) => Some(entry),
                // A limited-use token: spending a use is a write.
                Err(err) if standby && is_fenced(&err) => return Err(EngineError::NotActive),
                Err(err) => {
                    audit.log_request(None, &req, mount, Some(&err)).await?;
                    if crate::wrapping::unwrap_with_stale_token(&req) {
                        return Err(crate::wrapping::stale_token_error());
                    }
                    return Err(err);
                }
            }
        };
        // Whether the token holds `sudo` on the path (root does everywhere); decided with
        // the ACL, so the ACL need not be kept.
        let sudo = match &entry {
            None => false,
            Some(entry) => {
                // As in Vault, a write to a path that holds nothing yet is a `create`: ask
                // the backend, so policies can grant create without update (and the
                // reverse).
                if req.operation == Operation::Update
                    && !entry.is_root()
                    && let (Some(t), Some(r)) = (&target, route)
                    && r.existence_check
                    && let Some(br) = t.request(&req)
                    && let Handler::Backend(backend) = &t.mounted.handler
                    && let Ok(false) = backend.exists(&br).await
                {
                    req.operation = Operation::Create;
                }
                let sudo_route = route.is_some_and(|r| r.sudo);
                let wrap_ttl = wrap.as_ref().map(|w| w.ttl);
                let allows = |acl: &Acl, path: &str| {
                    acl.allows_wrapped(req.operation, path, &req.data, sudo_route, wrap_ttl)
                };
                let root = entry.is_root();
                let (mut allowed, sudo) = inner
                    .policies
                    .with_acl(&entry.policies, |acl| {
                        let allowed = allows(acl, &req.path);
                        let sudo = allowed
                            && (root || acl.capabilities(&req.path).iter().any(|c| c == "sudo"));
                        (allowed, sudo)
                    })
                    .await?;
                // A path that reaches its object under another name (a transit alias) must
                // be allowed on the object's own path too; the backend then gets that path.
                if allowed
                    && let Some(t) = &mut target
                    && let Some(canonical) = t.canonical(&req).await?
                {
                    allowed = match req.path.strip_suffix(t.rel.as_str()) {
                        Some(mount) => {
                            let path = format!("{mount}{canonical}");
                            inner
                                .policies
                                .with_acl(&entry.policies, |acl| allows(acl, &path))
                                .await?
                        }
                        None => false,
                    };
                    t.rel = canonical;
                    t.route = None;
                }
                if !allowed {
                    let err = EngineError::PermissionDenied;
                    audit
                        .log_request(Some(entry), &req, mount, Some(&err))
                        .await?;
                    return Err(err);
                }
                sudo
            }
        };
        // A request without effects is recorded with its response, after it ran; the
        // response is released only if that succeeds (see `audit`). A path no route
        // serves runs nothing.
        // On a standby nothing has effects: its storage refuses writes (and a request
        // that needs one is forwarded before anything is recorded).
        let pure = match route {
            Some(r) => r.is_pure(req.operation) || (standby && r.on_standby(req.operation)),
            None => matches!(req.operation, Operation::Read | Operation::List),
        };
        if standby && !pure {
            // The existence check made it a create.
            return Err(EngineError::NotActive);
        }
        let received = audit.received();
        if !pure {
            audit
                .log_request(entry.as_deref(), &req, mount, None)
                .await?;
        }
        let dispatched = Instant::now();
        let mut result = self
            .dispatch(&inner, target.as_ref(), entry.as_ref(), sudo, &req, wrap)
            .await;
        if standby && result.as_ref().is_err_and(is_fenced) {
            // It needed a write after all (a transit key to create): nothing was
            // changed, and nothing is recorded here.
            return Err(EngineError::NotActive);
        }
        if let Some(t) = &target
            && let Some(timer) = t.mounted.timers.get(req.operation)
        {
            timer.since(dispatched);
        }
        if let Ok(resp) = &mut result
            && let Some(grant) = resp.login.take()
        {
            let untuned = MountConfig::default();
            let tuned = target
                .as_ref()
                .map_or(&untuned, |t| &t.mounted.entry.config);
            match Box::pin(inner.tokens.login(&grant, &req.path, tuned)).await {
                Ok(auth) => {
                    if let Some(t) = &target {
                        let mount = format!("auth/{}", t.mounted.entry.path);
                        metrics.token_created(&t.mounted.entry.kind, &mount, "service");
                    }
                    resp.auth = Some(auth);
                }
                Err(e) => result = Err(e),
            }
        } else if let (Ok(resp), Some(t)) = (&result, &target)
            && let Handler::Token = t.mounted.handler
            && let Some(auth) = &resp.auth
            && route.is_some_and(|r| r.pattern.starts_with("create"))
        {
            let kind = auth.get("token_type").and_then(Value::as_str).unwrap_or("");
            metrics.token_created("token", "auth/token/", kind);
        }
        // Wrapping: a successful answer with content goes to a wrapping token's
        // cubbyhole (a rewrap answers `wrap_info` itself).
        if let (Some(w), Ok(resp)) = (wrap, &result)
            && resp.wrap_info.is_none()
            && !resp.is_empty()
        {
            result = Box::pin(self.wrap_response(&inner, &req.path, &req.id, resp, w.ttl)).await;
        }
        // A request that spent its token's final use revokes the token's tree now, with
        // any child it created (as Vault does).
        if let Some(entry) = &entry {
            inner.tokens.finish_request(entry).await;
        }
        if pure {
            audit
                .log_exchange(entry.as_deref(), &req, mount, received, &result)
                .await?;
        } else {
            audit
                .log_response(entry.as_deref(), &req, mount, &result)
                .await?;
        }
        result
    }

    /// Match the route once more on the (possibly canonical) path, check the fields and
    /// call the handler; unknown fields become Vault's warning on a success.
    async fn dispatch(
        &self,
        inner: &Arc<Unsealed>,
        target: Option<&Target<'_>>,
        entry: Option<&Arc<TokenEntry>>,
        sudo: bool,
        req: &Request,
        wrap: Option<WrapRequest>,
    ) -> Result<Response, EngineError> {
        let Some(target) = target else {
            return Err(EngineError::NotFound(format!(
                "no handler for route {:?}: no mount at this path",
                req.path
            )));
        };
        let Some(mut br) = target.request(req) else {
            return Err(EngineError::NotFound("unsupported path".to_owned()));
        };
        br.display_name = entry.map_or("", |e| e.display_name.as_str());
        if !br.route.ops.contains(br.operation) {
            return Err(EngineError::UnsupportedOperation);
        }
        let warnings = route::check_fields(br.route, &req.data)?;
        let mut resp = match &target.mounted.handler {
            Handler::Backend(backend) => {
                let rel = br.path;
                let mut resp = backend.handle(br).await?;
                if let Some(grant) = resp.secret.take() {
                    let origin = crate::lease::LeaseOrigin {
                        path: &req.path,
                        mount: &target.mounted.entry,
                        backend,
                        rel,
                    };
                    resp.lease = Some(
                        Box::pin(self.register_lease(
                            inner,
                            origin,
                            entry.map(AsRef::as_ref),
                            grant,
                        ))
                        .await?,
                    );
                }
                resp
            }
            Handler::System if br.route.pattern.starts_with("wrapping/") => {
                Box::pin(self.handle_wrapping(inner, &br, entry, req, wrap)).await?
            }
            Handler::System => Box::pin(self.handle_sys(inner, &br, entry, req)).await?,
            Handler::Cubbyhole(store) => {
                let entry = entry.ok_or(EngineError::PermissionDenied)?;
                let resp = Box::pin(crate::cubbyhole::handle(store.as_ref(), entry, &br)).await?;
                // A write that raced the token's revocation must not leave data behind
                // the revocation's deletion.
                if matches!(br.operation, Operation::Create | Operation::Update)
                    && inner.tokens.is_revoked(entry).await?
                {
                    crate::core::delete_prefix(store.as_ref(), &crate::cubbyhole::folder(entry))
                        .await?;
                }
                resp
            }
            Handler::Token => {
                let entry = entry.ok_or(EngineError::PermissionDenied)?;
                let presented = req.token.as_ref().map(|t| t.expose()).unwrap_or_default();
                Box::pin(inner.tokens.handle(&br, entry, presented, sudo)).await?
            }
        };
        resp.warnings.extend(warnings);
        if resp.lease_duration == Some(LeaseDuration::MountDefault) {
            // Vault's system default lease TTL is its maximum, 32 days.
            let ttl = match target.mounted.entry.config.default_lease_ttl {
                0 => token::SYSTEM_MAX_TTL,
                ttl => ttl,
            };
            resp.lease_duration = Some(LeaseDuration::Seconds(
                i64::try_from(ttl).unwrap_or(i64::MAX),
            ));
        }
        Ok(resp)
    }

    /// The route `op` on `path` (from the API root) matches, if any.
    pub(crate) fn route_of(
        &self,
        inner: &Unsealed,
        op: Operation,
        path: &str,
    ) -> Option<&'static Route> {
        let (mounted, rel) = Target::locate(inner, path)?;
        route::match_route(mounted.handler.routes(), op, &rel).map(|m| m.route)
    }

    /// `sys/seal` from an API request.
    pub(crate) async fn seal_from_request(&self) {
        let _op = self.op_lock.lock().await;
        self.seal_locked();
    }

    async fn authenticate(
        &self,
        inner: &Unsealed,
        req: &Request,
    ) -> Result<Arc<TokenEntry>, EngineError> {
        let Some(token) = &req.token else {
            return Err(EngineError::PermissionDenied);
        };
        let entry = inner
            .tokens
            .lookup(token.expose())
            .await?
            .ok_or(EngineError::PermissionDenied)?;
        if !entry.usable_from(req.remote_addr) {
            return Err(EngineError::PermissionDenied);
        }
        Ok(entry)
    }
}

/// Whether a write was refused because this replica is not the active one.
fn is_fenced(err: &EngineError) -> bool {
    matches!(err, EngineError::Storage(StorageError::Fenced))
}

/// Whether a standby may answer `op` on `route` of `target`: the route allows it
/// ([`Route::on_standby`]) and it is not one of the `sys/` routes whose answer only the
/// active knows (rekey and root-generation progress, the cluster's members).
fn standby_answers(target: Option<&Target<'_>>, route: Option<&Route>, op: Operation) -> bool {
    let (Some(target), Some(route)) = (target, route) else {
        return false;
    };
    let active_only = matches!(target.mounted.handler, Handler::System)
        && ["rekey", "rotate/root", "generate-root", "ha-status"]
            .iter()
            .any(|p| route.pattern.starts_with(p));
    route.on_standby(op) && !active_only
}

/// Records a request's latency in `vault.core.handle_request` (or
/// `handle_login_request`) when dropped: on every return path, and when the request is
/// abandoned. Counts it in flight meanwhile.
struct RequestTiming<'a> {
    metrics: &'a Metrics,
    started: Instant,
    _in_flight: InFlight<'a>,
    login: bool,
}

impl Drop for RequestTiming<'_> {
    fn drop(&mut self) {
        let timer = if self.login {
            &self.metrics.handle_login_request
        } else {
            &self.metrics.handle_request
        };
        timer.since(self.started);
    }
}

/// The mount a request path reaches, and the path relative to it.
struct Target<'m> {
    mounted: &'m Mounted,
    rel: String,
    /// The route `rel` matched for an operation, once matched, and where its captures
    /// lie in `rel`: the same path and operation match the same route again, with the
    /// same captures.
    route: Option<(Operation, &'static Route, route::CaptureSpans)>,
}

/// The backend mounted where `path` (from the API root) leads, and the path inside its
/// mount.
pub(crate) fn backend_at(inner: &Unsealed, path: &str) -> Option<(Arc<dyn Backend>, String)> {
    let (mounted, rel) = Target::locate(inner, path)?;
    match &mounted.handler {
        Handler::Backend(b) => Some((b.clone(), rel)),
        _ => None,
    }
}

impl<'m> Target<'m> {
    /// The mount `path` (from the API root) reaches, and the path relative to it:
    /// `sys/…` and secret engines route from the root, auth methods (`auth/token/`
    /// included) under `auth/`. The mount table is read in place, not copied.
    fn locate(inner: &Unsealed, path: &str) -> Option<(Arc<Mounted>, String)> {
        let (table, path) = match path.strip_prefix("auth/") {
            Some(rest) => (&inner.auth, rest),
            None if path == "auth" => return None,
            None => (&inner.secrets, path),
        };
        let router = table.read();
        router
            .route(path)
            .map(|(m, rel)| (Arc::clone(m), rel.to_owned()))
    }

    fn new(mounted: &'m Mounted, rel: String) -> Self {
        Target {
            mounted,
            rel,
            route: None,
        }
    }

    /// The route `op` on the relative path matches, if any; remembered for [`Target::request`].
    fn route_for(&mut self, op: Operation) -> Option<&'static Route> {
        let m = route::match_route(self.mounted.handler.routes(), op, &self.rel)?;
        self.route = m
            .captures
            .spans(&self.rel)
            .map(|spans| (op, m.route, spans));
        Some(m.route)
    }

    /// The request as the mount's handler sees it, if a route matches.
    fn request<'a>(&'a self, req: &'a Request) -> Option<BackendRequest<'a>> {
        let kept = match self.route {
            Some((op, route, spans)) if op == req.operation => spans
                .captures(&self.rel)
                .map(|captures| route::Matched { route, captures }),
            _ => None,
        };
        let m = match kept {
            Some(m) => m,
            None => route::match_route(self.mounted.handler.routes(), req.operation, &self.rel)?,
        };
        Some(BackendRequest {
            operation: req.operation,
            path: &self.rel,
            route: m.route,
            captures: m.captures,
            data: &req.data,
            client_certs: &req.client_certs,
            remote_addr: req.remote_addr,
            display_name: "",
        })
    }

    /// The relative path with the object's own name, when the route resolves aliases and
    /// the captured name is one.
    async fn canonical(&self, req: &Request) -> Result<Option<String>, EngineError> {
        let Handler::Backend(backend) = &self.mounted.handler else {
            return Ok(None);
        };
        let Some(br) = self.request(req) else {
            return Ok(None);
        };
        let Some(capture) = br.route.alias_capture_for(req.operation) else {
            return Ok(None);
        };
        let Some(name) = br.captures.get(capture) else {
            return Ok(None);
        };
        let Some(real) = backend.resolve_alias(name).await? else {
            return Ok(None);
        };
        // `name` is a slice of `rel`: put the real name in its place.
        let start = (name.as_ptr() as usize).saturating_sub(self.rel.as_ptr() as usize);
        let end = start + name.len();
        match (self.rel.get(..start), self.rel.get(end..)) {
            (Some(before), Some(after)) => Ok(Some(format!("{before}{real}{after}"))),
            _ => Ok(None),
        }
    }
}

/// Every name directly under `prefix` (keys and `folder/`s), page by page.
pub(crate) async fn list_all(store: &dyn Store, prefix: &str) -> Result<Vec<String>, EngineError> {
    const PAGE: usize = keyhaven_storage::MAX_LIST_PAGE;
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_page(prefix, after.as_deref(), PAGE).await?;
        let last = page.len() < PAGE;
        after = page.last().cloned();
        names.extend(page);
        if last || after.is_none() {
            return Ok(names);
        }
    }
}

/// Delete every key under `prefix`, folder by folder.
pub(crate) async fn delete_prefix(store: &dyn Store, prefix: &str) -> Result<(), EngineError> {
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
