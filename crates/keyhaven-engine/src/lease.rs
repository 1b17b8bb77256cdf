//! Leases: the lifetime of a secret a backend issued (database credentials).
//!
//! A backend that returns a [`SecretGrant`] gets a lease registered for it here, bound to
//! the token that asked. A lease ends when it expires, when it is revoked (`sys/leases/*`),
//! or when its token is revoked; ending it asks the backend to revoke the secret
//! ([`crate::Backend::revoke_secret`]), and only a revocation that succeeded removes the
//! lease. A failed one is retried with backoff (`2^n × 10 s`, ±50 %); after
//! [`MAX_ATTEMPTS`] failures the lease is *irrevocable*: kept, listed by
//! `sys/leases?type=irrevocable`, retried once a day, and removed only by a revocation that
//! succeeds or by `revoke-force`.
//!
//! Storage, behind the barrier:
//! - `sys/expire/id/<lease id>`: the lease (its id is the request path, `/`, 24 random
//!   characters, so listing `sys/leases/lookup/<prefix>` is a listing of this tree);
//! - `sys/expire/at/<20-digit Unix time>.<escaped id>`: the expiry index, ordered by the
//!   time something is due (the expiry, or the next retry), as the token store's. The
//!   scheduler reads it from the start up to now and stops at the first entry not due,
//!   so its work is proportional to what expires, not to what exists;
//! - `sys/expire/token/<token hash>/<escaped id>`: the leases of each token;
//! - `sys/expire/irrevocable/<escaped id>`: the irrevocable leases.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt as _;
use keyhaven_storage::{Op, Store, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::backend::LeaseRef;
use crate::clock::Clock;
use crate::core::{Core, Unsealed};
use crate::error::EngineError;
use crate::mounts::MountConfig;
use crate::request::{LeaseGrant, Response, SecretGrant};
use crate::token::{SYSTEM_MAX_TTL, TokenEntry};

const ID_PREFIX: &str = "sys/expire/id/";
const AT_PREFIX: &str = "sys/expire/at/";
const TOKEN_PREFIX: &str = "sys/expire/token/";
const IRREVOCABLE_PREFIX: &str = "sys/expire/irrevocable/";

/// Failed revocations before a lease is marked irrevocable (Vault's value).
pub(crate) const MAX_ATTEMPTS: u32 = 6;
/// The base of the retry backoff, seconds: attempt `n` waits `2^n ×` this, ±50 %.
const RETRY_BASE_SECS: i64 = 10;
/// How often an irrevocable lease is tried again.
const IRREVOCABLE_RETRY_SECS: i64 = 24 * 3600;
/// The most of an error kept with an irrevocable lease (Vault's value).
const MAX_ERROR_CHARS: usize = 240;
/// The most leases one pass of the scheduler takes up.
pub const SWEEP_BATCH: usize = 1000;
/// Revocations one pass runs at once.
const CONCURRENCY: usize = 32;
/// The default cap on `sys/leases?type=irrevocable` (Vault's value).
const IRREVOCABLE_LIST_CAP: usize = 10_000;
/// Characters of the random part of a lease id.
const ID_RANDOM_CHARS: usize = 24;

/// A lease as stored.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct LeaseEntry {
    pub lease_id: String,
    /// The path of the request that created it, from the API root.
    pub path: String,
    /// The mount it was issued under (`database/`).
    pub mount: String,
    /// The storage hash of the token that created it.
    #[serde(default)]
    pub token: Option<String>,
    pub issue_time: i64,
    pub expire_time: i64,
    #[serde(default)]
    pub last_renewal: Option<i64>,
    /// Renewals never take it past this.
    pub max_expire: i64,
    /// The TTL it was issued with: a renewal without an increment asks for it again.
    pub ttl: u64,
    pub renewable: bool,
    /// The backend's own data ([`SecretGrant::internal`]).
    #[serde(default)]
    pub internal: Map<String, Value>,
    /// Failed revocation attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// When the next revocation attempt is due, after a failure.
    #[serde(default)]
    pub retry_at: Option<i64>,
    /// The last revocation error, when one failed.
    #[serde(default)]
    pub revoke_err: Option<String>,
    #[serde(default)]
    pub irrevocable: bool,
}

// The internal data may name users: only the id is printed.
impl std::fmt::Debug for LeaseEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseEntry")
            .field("lease_id", &self.lease_id)
            .field("expire_time", &self.expire_time)
            .field("attempts", &self.attempts)
            .field("irrevocable", &self.irrevocable)
            .finish_non_exhaustive()
    }
}

impl LeaseEntry {
    /// When the scheduler must next look at it.
    fn due(&self) -> i64 {
        self.retry_at.unwrap_or(self.expire_time)
    }

    fn id_key(&self) -> String {
        format!("{ID_PREFIX}{}", self.lease_id)
    }

    fn at_key(&self) -> String {
        at_key(self.due(), &self.lease_id)
    }

    fn token_key(&self) -> Option<String> {
        self.token
            .as_ref()
            .map(|t| format!("{TOKEN_PREFIX}{t}/{}", escape(&self.lease_id)))
    }

    fn irrevocable_key(&self) -> String {
        format!("{IRREVOCABLE_PREFIX}{}", escape(&self.lease_id))
    }

    fn encode(&self) -> Result<Vec<u8>, EngineError> {
        serde_json::to_vec(self).map_err(|_| EngineError::Encode("lease"))
    }

    /// The operations that store it, moving its index entry from where `was` put it.
    fn store_ops(&self, was: Option<&LeaseEntry>) -> Result<Vec<Op>, EngineError> {
        let mut ops = Vec::with_capacity(5);
        if let Some(was) = was
            && was.at_key() != self.at_key()
        {
            ops.push(Op::Delete { key: was.at_key() });
        }
        ops.push(Op::Put {
            key: self.id_key(),
            value: self.encode()?,
        });
        ops.push(Op::Put {
            key: self.at_key(),
            value: Vec::new(),
        });
        if let Some(key) = self.token_key() {
            ops.push(Op::Put {
                key,
                value: Vec::new(),
            });
        }
        if self.irrevocable {
            ops.push(Op::Put {
                key: self.irrevocable_key(),
                value: Vec::new(),
            });
        }
        Ok(ops)
    }

    /// The operations that remove it and every index entry of it.
    fn delete_ops(&self) -> Vec<Op> {
        let mut ops = vec![
            Op::Delete { key: self.id_key() },
            Op::Delete { key: self.at_key() },
            Op::Delete {
                key: self.irrevocable_key(),
            },
        ];
        if let Some(key) = self.token_key() {
            ops.push(Op::Delete { key });
        }
        ops
    }
}

/// A lease id as one storage key segment: `%` and `/` escaped.
fn escape(id: &str) -> String {
    id.replace('%', "%25").replace('/', "%2F")
}

fn unescape(s: &str) -> String {
    s.replace("%2F", "/").replace("%25", "%")
}

fn at_key(at: i64, lease_id: &str) -> String {
    format!("{AT_PREFIX}{:020}.{}", at.max(0), escape(lease_id))
}

/// The time and lease id of an expiry index entry's name.
fn parse_at(name: &str) -> Option<(i64, String)> {
    let (at, id) = name.split_once('.')?;
    if at.len() != 20 || id.is_empty() {
        return None;
    }
    Some((at.parse().ok()?, unescape(id)))
}

/// How a lease id is checked before it is used as a storage key: a path of non-empty
/// segments, none of them `.` or `..`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && id
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        && !id.chars().any(char::is_control)
}

fn random_suffix() -> Result<String, EngineError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(ID_RANDOM_CHARS);
    let mut buf = [0u8; 64];
    while out.len() < ID_RANDOM_CHARS {
        keyhaven_crypto::fill_random(&mut buf)
            .map_err(|_| EngineError::Crypto(crate::error::CryptoOp::Random))?;
        // Rejection sampling: 248 = 4 × 62, so every character is equally likely.
        for b in buf {
            if b < 248
                && out.len() < ID_RANDOM_CHARS
                && let Some(&c) = ALPHABET.get(usize::from(b % 62))
            {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

/// The wait before retry `attempt` (1-based): `2^attempt × 10 s`, ±50 %.
fn backoff(attempt: u32) -> i64 {
    let base = RETRY_BASE_SECS.saturating_mul(1_i64 << attempt.min(20));
    let mut b = [0u8; 2];
    let jitter = match keyhaven_crypto::fill_random(&mut b) {
        Ok(()) => i64::from(u16::from_le_bytes(b)),
        Err(_) => 32_768,
    };
    // base × (0.5 + jitter / 65536)
    base / 2 + base.saturating_mul(jitter) / 65_536
}

fn truncate_error(e: &str) -> String {
    e.chars().take(MAX_ERROR_CHARS).collect()
}

/// Whether retrying cannot help (Vault's unrecoverable errors): the backend refuses the
/// operation or the request outright.
fn unrecoverable(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::UnsupportedOperation | EngineError::InvalidRequest(_)
    )
}

/// What the scheduler did in one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryPass {
    /// Leases revoked.
    pub revoked: usize,
    /// Revocations that failed and will be retried.
    pub failed: usize,
    /// Leases that became irrevocable.
    pub irrevocable: usize,
}

/// The leases of one unsealed server.
pub(crate) struct LeaseStore {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Leases whose revocation is running, so two passes never revoke one twice at once.
    busy: parking_lot::Mutex<HashSet<String>>,
}

impl LeaseStore {
    pub(crate) fn new(storage: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        LeaseStore {
            storage,
            clock,
            busy: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    async fn get(&self, lease_id: &str) -> Result<Option<LeaseEntry>, EngineError> {
        if !valid_id(lease_id) {
            return Ok(None);
        }
        match self.storage.get(&format!("{ID_PREFIX}{lease_id}")).await? {
            Some(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).map_err(|_| {
                    EngineError::Corrupt(format!("lease {lease_id}"))
                })?))
            }
            None => Ok(None),
        }
    }

    async fn write(&self, entry: &LeaseEntry, was: Option<&LeaseEntry>) -> Result<(), EngineError> {
        let ops = entry.store_ops(was)?;
        let _ = self
            .storage
            .transact(Transaction {
                conditions: Vec::new(),
                ops,
            })
            .await?;
        Ok(())
    }

    async fn remove(&self, entry: &LeaseEntry) -> Result<(), EngineError> {
        let _ = self
            .storage
            .transact(Transaction {
                conditions: Vec::new(),
                ops: entry.delete_ops(),
            })
            .await?;
        Ok(())
    }

    /// Every name under `prefix`.
    async fn list_all(&self, prefix: &str) -> Result<Vec<String>, EngineError> {
        crate::core::list_all(self.storage.as_ref(), prefix).await
    }

    /// Every lease id under `prefix` (a folder of the id tree, ending in `/`, or `""`).
    async fn ids_under(&self, prefix: &str) -> Result<Vec<String>, EngineError> {
        let mut ids = Vec::new();
        let mut folders = vec![prefix.to_owned()];
        while let Some(folder) = folders.pop() {
            for name in self.list_all(&format!("{ID_PREFIX}{folder}")).await? {
                if name.ends_with('/') {
                    folders.push(format!("{folder}{name}"));
                } else {
                    ids.push(format!("{folder}{name}"));
                }
            }
        }
        Ok(ids)
    }

    /// How many leases there are, and how many of them are irrevocable.
    pub(crate) async fn count(&self) -> Result<(usize, usize), EngineError> {
        let leases = self.list_all(AT_PREFIX).await?.len();
        let irrevocable = self.list_all(IRREVOCABLE_PREFIX).await?.len();
        Ok((leases, irrevocable))
    }

    /// Make every lease of a token due now: called when the token is revoked, so the
    /// scheduler revokes them at its next pass.
    pub(crate) async fn expire_token_leases(&self, token_hash: &str) -> Result<(), EngineError> {
        let now = self.clock.unix_seconds();
        let prefix = format!("{TOKEN_PREFIX}{token_hash}/");
        for name in self.list_all(&prefix).await? {
            let id = unescape(&name);
            match self.get(&id).await? {
                Some(entry) if entry.due() > now && !entry.irrevocable => {
                    let mut e = entry.clone();
                    e.expire_time = now;
                    e.retry_at = None;
                    self.write(&e, Some(&entry)).await?;
                }
                Some(_) => {}
                None => self.storage.delete(&format!("{prefix}{name}")).await?,
            }
        }
        Ok(())
    }
}

/// Where a secret was issued: the request's path, its mount, the backend and the path
/// inside the mount.
pub(crate) struct LeaseOrigin<'a> {
    pub path: &'a str,
    pub mount: &'a crate::mounts::MountEntry,
    pub backend: &'a Arc<dyn crate::Backend>,
    pub rel: &'a str,
}

/// The TTL a mount grants by default and at most, seconds.
fn mount_ttls(config: &MountConfig) -> (u64, u64) {
    let max = match config.max_lease_ttl {
        0 => SYSTEM_MAX_TTL,
        m => m.min(SYSTEM_MAX_TTL),
    };
    let default = match config.default_lease_ttl {
        0 => max,
        d => d.min(max),
    };
    (default, max)
}

fn secs(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn time_value(t: Option<i64>) -> Value {
    match t {
        Some(t) => Value::String(crate::clock::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(t).unwrap_or(0)),
        )),
        None => Value::Null,
    }
}

impl Core {
    /// Register a lease for the secret a backend returned, bound to `token`. If the lease
    /// cannot be stored, the secret is revoked at once: nothing is issued that nothing
    /// would revoke.
    pub(crate) async fn register_lease(
        &self,
        inner: &Arc<Unsealed>,
        origin: LeaseOrigin<'_>,
        token: Option<&TokenEntry>,
        grant: SecretGrant,
    ) -> Result<LeaseGrant, EngineError> {
        let LeaseOrigin {
            path,
            mount,
            backend,
            rel,
        } = origin;
        let config = &mount.config;
        let mount = mount.path.as_str();
        let now = self.clock.unix_seconds();
        let (default_ttl, mount_max) = mount_ttls(config);
        let max_ttl = match grant.max_ttl {
            0 => mount_max,
            m => m.min(mount_max),
        };
        let ttl = match grant.ttl {
            0 => default_ttl,
            t => t,
        }
        .min(max_ttl);
        let mut max_expire = now.saturating_add(secs(max_ttl));
        // A lease never outlives its token.
        if let Some(exp) = token.and_then(|t| t.expire_time) {
            max_expire = max_expire.min(exp);
        }
        let expire_time = now.saturating_add(secs(ttl)).min(max_expire);
        let entry = LeaseEntry {
            lease_id: format!("{}/{}", path.trim_end_matches('/'), random_suffix()?),
            path: path.to_owned(),
            mount: mount.to_owned(),
            token: token.map(|t| t.hash.clone()),
            issue_time: now,
            expire_time,
            last_renewal: None,
            max_expire,
            ttl,
            renewable: grant.renewable,
            internal: grant.internal,
            attempts: 0,
            retry_at: None,
            revoke_err: None,
            irrevocable: false,
        };
        if let Err(e) = inner.leases.write(&entry, None).await {
            let lease = lease_ref(&entry, rel);
            if let Err(re) = backend.revoke_secret(&lease).await {
                tracing::error!(target: "keyhaven::leases", error = %re, "a secret whose lease could not be stored could not be revoked either");
            }
            return Err(e);
        }
        Ok(LeaseGrant {
            lease_id: entry.lease_id,
            duration: u64::try_from(expire_time - now).unwrap_or(0),
            renewable: entry.renewable,
        })
    }

    /// The backend that issued a lease, and the lease's path inside its mount.
    fn lease_backend(
        inner: &Unsealed,
        entry: &LeaseEntry,
    ) -> Result<(Arc<dyn crate::Backend>, String), EngineError> {
        crate::core::backend_at(inner, &entry.path).ok_or_else(|| {
            EngineError::Unavailable(format!(
                "no secret engine is mounted at {:?} any more",
                entry.mount
            ))
        })
    }

    /// Revoke one lease's secret and remove it. With `force`, the lease is removed even if
    /// the backend fails (or is gone).
    async fn revoke_entry(
        &self,
        inner: &Unsealed,
        entry: &LeaseEntry,
        force: bool,
    ) -> Result<(), EngineError> {
        let attempt = match Self::lease_backend(inner, entry) {
            Ok((backend, rel)) => backend.revoke_secret(&lease_ref(entry, &rel)).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(()) => {}
            Err(e) if force => {
                tracing::warn!(target: "keyhaven::leases", lease_id = %entry.lease_id, error = %e, "lease removed by revoke-force although its secret could not be revoked");
            }
            Err(e) => return Err(e),
        }
        inner.leases.remove(entry).await?;
        self.options.metrics.lease_revoked();
        Ok(())
    }

    /// One pass of the expiry scheduler: revoke what is due (expired, or due a retry),
    /// up to [`SWEEP_BATCH`] leases, [`CONCURRENCY`] at a time. Reads the expiry index
    /// only up to now.
    pub async fn expire_leases(&self) -> Result<ExpiryPass, EngineError> {
        let Ok(inner) = self.unsealed() else {
            return Ok(ExpiryPass::default());
        };
        let store = &inner.leases;
        let now = self.clock.unix_seconds();
        let mut due = Vec::new();
        const PAGE: usize = 64;
        let mut after: Option<String> = None;
        'pages: loop {
            let page = store
                .storage
                .list_page(AT_PREFIX, after.as_deref(), PAGE)
                .await?;
            for name in &page {
                let Some((at, id)) = parse_at(name) else {
                    tracing::warn!(target: "keyhaven::leases", "malformed lease index entry skipped");
                    continue;
                };
                if at > now || due.len() >= SWEEP_BATCH {
                    break 'pages;
                }
                due.push((format!("{AT_PREFIX}{name}"), id));
            }
            if page.len() < PAGE {
                break;
            }
            after = page.last().cloned();
        }
        if due.is_empty() {
            return Ok(ExpiryPass::default());
        }
        let results: Vec<Result<Outcome, EngineError>> = futures::stream::iter(due)
            .map(|(index_key, id)| {
                let inner = inner.clone();
                async move { self.expire_one(&inner, &index_key, &id, now).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut pass = ExpiryPass::default();
        for r in results {
            match r? {
                Outcome::Revoked => pass.revoked += 1,
                Outcome::Retry => pass.failed += 1,
                Outcome::Irrevocable => {
                    pass.failed += 1;
                    pass.irrevocable += 1;
                }
                Outcome::Nothing => {}
            }
        }
        if pass.irrevocable > 0 {
            let count = store.list_all(IRREVOCABLE_PREFIX).await?.len();
            self.options.metrics.set_irrevocable_leases(count);
        }
        Ok(pass)
    }

    async fn expire_one(
        &self,
        inner: &Unsealed,
        index_key: &str,
        id: &str,
        now: i64,
    ) -> Result<Outcome, EngineError> {
        let store = &inner.leases;
        let Some(_busy) = Busy::take(store, id) else {
            return Ok(Outcome::Nothing);
        };
        let Some(entry) = store.get(id).await? else {
            store.storage.delete(index_key).await?;
            return Ok(Outcome::Nothing);
        };
        if entry.at_key() != index_key {
            // Renewed or rescheduled since this entry was written: its current time is
            // (or, after an interrupted write, is now) indexed.
            store.storage.put(&entry.at_key(), Vec::new()).await?;
            store.storage.delete(index_key).await?;
            return Ok(Outcome::Nothing);
        }
        match self.revoke_entry(inner, &entry, false).await {
            Ok(()) => {
                tracing::info!(target: "keyhaven::leases", lease_id = %entry.lease_id, "expired lease revoked");
                Ok(Outcome::Revoked)
            }
            Err(e) => {
                self.options.metrics.lease_revoke_failed();
                let mut next = entry.clone();
                next.attempts = entry.attempts.saturating_add(1);
                next.revoke_err = Some(truncate_error(&e.to_string()));
                let outcome = if next.irrevocable {
                    next.retry_at = Some(now.saturating_add(IRREVOCABLE_RETRY_SECS));
                    Outcome::Retry
                } else if next.attempts >= MAX_ATTEMPTS || unrecoverable(&e) {
                    next.irrevocable = true;
                    next.retry_at = Some(now.saturating_add(IRREVOCABLE_RETRY_SECS));
                    tracing::error!(target: "keyhaven::leases", lease_id = %entry.lease_id, attempts = next.attempts, error = %e, "lease is irrevocable: revoke it by hand, or with revoke-force once its secret is gone");
                    Outcome::Irrevocable
                } else {
                    let wait = backoff(next.attempts);
                    next.retry_at = Some(now.saturating_add(wait));
                    tracing::warn!(target: "keyhaven::leases", lease_id = %entry.lease_id, attempt = next.attempts, retry_in_secs = wait, error = %e, "lease revocation failed; will retry");
                    Outcome::Retry
                };
                store.write(&next, Some(&entry)).await?;
                Ok(outcome)
            }
        }
    }

    /// `sys/leases/lookup`.
    pub(crate) async fn lease_lookup(
        &self,
        inner: &Unsealed,
        lease_id: &str,
    ) -> Result<Response, EngineError> {
        let lease_id = lease_id.trim();
        if lease_id.is_empty() {
            return Err(EngineError::invalid("missing lease id"));
        }
        let entry = inner
            .leases
            .get(lease_id)
            .await?
            .ok_or_else(|| EngineError::invalid("invalid lease"))?;
        let now = self.clock.unix_seconds();
        let mut data = Map::new();
        data.insert("id".into(), json!(entry.lease_id));
        data.insert("issue_time".into(), time_value(Some(entry.issue_time)));
        data.insert("expire_time".into(), time_value(Some(entry.expire_time)));
        data.insert("last_renewal".into(), time_value(entry.last_renewal));
        data.insert(
            "renewable".into(),
            json!(entry.renewable && !entry.irrevocable && entry.expire_time > now),
        );
        data.insert("ttl".into(), json!((entry.expire_time - now).max(0)));
        if let Some(err) = entry.revoke_err.as_ref().filter(|_| entry.irrevocable) {
            data.insert("revoke_error".into(), json!(err));
        }
        Ok(Response::data(data))
    }

    /// `LIST sys/leases/lookup/<prefix>`.
    pub(crate) async fn lease_list(
        &self,
        inner: &Unsealed,
        prefix: &str,
    ) -> Result<Response, EngineError> {
        let mut prefix = prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        if !prefix.is_empty() && !valid_id(prefix.trim_end_matches('/')) {
            return Err(EngineError::invalid("invalid lease prefix"));
        }
        let keys = inner
            .leases
            .list_all(&format!("{ID_PREFIX}{prefix}"))
            .await?;
        if keys.is_empty() {
            return Err(EngineError::NotFound(String::new()));
        }
        let mut data = Map::new();
        data.insert("keys".into(), json!(keys));
        Ok(Response::data(data))
    }

    /// `sys/leases/renew`: extend a lease by `increment` seconds from now (0: its original
    /// TTL), within its maximum and its token's life.
    pub(crate) async fn lease_renew(
        &self,
        inner: &Unsealed,
        lease_id: &str,
        increment: u64,
    ) -> Result<Response, EngineError> {
        let lease_id = lease_id.trim();
        if lease_id.is_empty() {
            return Err(EngineError::invalid("lease id must be specified"));
        }
        if lease_id.starts_with("auth/") {
            return Err(EngineError::invalid(
                "tokens cannot be renewed through this endpoint",
            ));
        }
        let store = &inner.leases;
        let _busy = Busy::take(store, lease_id)
            .ok_or_else(|| EngineError::invalid("lease is being revoked"))?;
        let entry = store
            .get(lease_id)
            .await?
            .ok_or_else(|| EngineError::invalid("lease not found"))?;
        let now = self.clock.unix_seconds();
        if entry.irrevocable {
            return Err(EngineError::invalid(
                "lease is expired and has failed previous revocation attempts",
            ));
        }
        if entry.expire_time <= now {
            return Err(EngineError::invalid("lease expired"));
        }
        if !entry.renewable {
            return Err(EngineError::invalid("lease is not renewable"));
        }
        let asked = match increment {
            0 => entry.ttl,
            i => i,
        };
        let mut warnings = Vec::new();
        let mut expire_time = now.saturating_add(secs(asked));
        if expire_time > entry.max_expire {
            expire_time = entry.max_expire;
            warnings.push(format!(
                "TTL of \"{}\" exceeded the effective max_ttl of \"{}\"; TTL value is capped accordingly",
                crate::params::format_duration(asked),
                crate::params::format_duration(u64::try_from(entry.max_expire - now).unwrap_or(0)),
            ));
        }
        let (backend, rel) = Self::lease_backend(inner, &entry)?;
        let mut lease = lease_ref(&entry, &rel);
        lease.expire_time = expire_time;
        backend.renew_secret(&lease, expire_time).await?;
        let mut next = entry.clone();
        next.expire_time = expire_time;
        next.last_renewal = Some(now);
        store.write(&next, Some(&entry)).await?;
        Ok(Response {
            lease: Some(LeaseGrant {
                lease_id: next.lease_id,
                duration: u64::try_from(expire_time - now).unwrap_or(0),
                renewable: true,
            }),
            warnings,
            ..Response::default()
        })
    }

    /// `sys/leases/revoke`: revoke one lease now (`sync`), or make it due now and let the
    /// scheduler revoke it (`202`). A lease that does not exist is already revoked.
    pub(crate) async fn lease_revoke(
        &self,
        inner: &Unsealed,
        lease_id: &str,
        sync: bool,
    ) -> Result<Response, EngineError> {
        let lease_id = lease_id.trim();
        if lease_id.is_empty() {
            return Err(EngineError::invalid("lease id must be specified"));
        }
        let store = &inner.leases;
        let Some(_busy) = Busy::take(store, lease_id) else {
            return Ok(accepted(sync));
        };
        let Some(entry) = store.get(lease_id).await? else {
            return Ok(accepted(sync));
        };
        if sync {
            self.revoke_entry(inner, &entry, false)
                .await
                .map_err(|e| EngineError::invalid(format!("failed to revoke lease: {e}")))?;
        } else {
            make_due(store, &entry, self.clock.unix_seconds()).await?;
        }
        Ok(accepted(sync))
    }

    /// `sys/leases/revoke-prefix` and `revoke-force`: every lease under `prefix`.
    pub(crate) async fn lease_revoke_prefix(
        &self,
        inner: &Unsealed,
        prefix: &str,
        sync: bool,
        force: bool,
    ) -> Result<Response, EngineError> {
        let mut prefix = prefix.trim().trim_start_matches('/').to_owned();
        if prefix.is_empty() || !valid_id(prefix.trim_end_matches('/')) {
            return Err(EngineError::invalid("invalid prefix"));
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let store = &inner.leases;
        let ids = store.ids_under(&prefix).await?;
        let now = self.clock.unix_seconds();
        let results: Vec<Result<(), EngineError>> = futures::stream::iter(ids)
            .map(|id| async move {
                let Some(_busy) = Busy::take(store, &id) else {
                    return Ok(());
                };
                let Some(entry) = store.get(&id).await? else {
                    return Ok(());
                };
                if sync || force {
                    self.revoke_entry(inner, &entry, force).await
                } else {
                    make_due(store, &entry, now).await
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let total = results.len();
        let failed: Vec<EngineError> = results.into_iter().filter_map(Result::err).collect();
        if let Some(first) = failed.first() {
            return Err(EngineError::invalid(format!(
                "failed to revoke {} of {total} leases under {prefix:?}: {first}",
                failed.len()
            )));
        }
        Ok(accepted(sync || force))
    }

    /// Revoke every lease of a mount (before it is disabled); refuses if a secret could
    /// not be revoked, so no secret outlives what could revoke it.
    pub(crate) async fn revoke_mount_leases(
        &self,
        inner: &Unsealed,
        mount_path: &str,
    ) -> Result<(), EngineError> {
        self.lease_revoke_prefix(inner, mount_path, true, false)
            .await
            .map(|_| ())
    }

    /// `sys/leases/tidy`: restore missing index entries, drop index entries of leases
    /// that are gone, and make due the leases whose token no longer exists.
    pub(crate) async fn lease_tidy(&self, inner: &Unsealed) -> Result<Response, EngineError> {
        let store = &inner.leases;
        let now = self.clock.unix_seconds();
        let mut fixed = 0usize;
        for id in store.ids_under("").await? {
            let Some(entry) = store.get(&id).await? else {
                continue;
            };
            let orphaned = match &entry.token {
                Some(hash) => !inner.tokens.exists_hash(hash).await?,
                None => false,
            };
            if orphaned && entry.due() > now && !entry.irrevocable {
                make_due(store, &entry, now).await?;
                fixed += 1;
            } else if store.storage.get(&entry.at_key()).await?.is_none() {
                store.write(&entry, None).await?;
                fixed += 1;
            }
        }
        for name in store.list_all(AT_PREFIX).await? {
            let stale = match parse_at(&name) {
                Some((_, id)) => store
                    .get(&id)
                    .await?
                    .is_none_or(|e| e.at_key() != format!("{AT_PREFIX}{name}")),
                None => true,
            };
            if stale {
                store.storage.delete(&format!("{AT_PREFIX}{name}")).await?;
                fixed += 1;
            }
        }
        Ok(Response {
            warnings: vec![format!(
                "Tidy operation completed: {fixed} lease index entries repaired."
            )],
            accepted: true,
            ..Response::default()
        })
    }

    /// `sys/leases?type=irrevocable` and `sys/leases/count?type=irrevocable`.
    pub(crate) async fn irrevocable_leases(
        &self,
        inner: &Unsealed,
        kind: &str,
        limit: &str,
        count_only: bool,
    ) -> Result<Response, EngineError> {
        if kind != "irrevocable" {
            return Err(EngineError::invalid("type must be set to \"irrevocable\""));
        }
        let cap = match limit.trim() {
            "" => IRREVOCABLE_LIST_CAP,
            "none" => usize::MAX,
            n => n.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                EngineError::invalid("limit must be a positive number or \"none\"")
            })?,
        };
        let store = &inner.leases;
        let names = store.list_all(IRREVOCABLE_PREFIX).await?;
        let mut data = Map::new();
        if count_only {
            let mut per_mount: Map<String, Value> = Map::new();
            for name in &names {
                if let Some(e) = store.get(&unescape(name)).await? {
                    let n = per_mount.get(&e.mount).and_then(Value::as_u64).unwrap_or(0);
                    per_mount.insert(e.mount.clone(), json!(n + 1));
                }
            }
            data.insert("lease_count".into(), json!(names.len()));
            data.insert("counts".into(), Value::Object(per_mount));
            return Ok(Response::data(data));
        }
        let mut leases = Vec::new();
        for name in names.iter().take(cap) {
            if let Some(e) = store.get(&unescape(name)).await? {
                leases.push(json!({
                    "lease_id": e.lease_id,
                    "mount_id": e.mount,
                    "expire_time": time_value(Some(e.expire_time)),
                    "error": e.revoke_err.unwrap_or_default(),
                }));
            }
        }
        let mut resp = Response::default();
        if names.len() > cap {
            resp.warnings.push(format!(
                "showing {cap} of {} irrevocable leases; use limit=none to list all",
                names.len()
            ));
        }
        data.insert("lease_count".into(), json!(names.len()));
        data.insert("leases".into(), json!(leases));
        resp.data = Some(data);
        Ok(resp)
    }
}

enum Outcome {
    Revoked,
    Retry,
    Irrevocable,
    Nothing,
}

fn accepted(sync: bool) -> Response {
    Response {
        accepted: !sync,
        ..Response::default()
    }
}

/// Make a lease due now (an asynchronous revocation): the scheduler takes it next.
async fn make_due(store: &LeaseStore, entry: &LeaseEntry, now: i64) -> Result<(), EngineError> {
    let mut next = entry.clone();
    next.expire_time = next.expire_time.min(now);
    next.retry_at = None;
    store.write(&next, Some(entry)).await
}

fn lease_ref<'a>(entry: &'a LeaseEntry, rel: &'a str) -> LeaseRef<'a> {
    LeaseRef {
        lease_id: &entry.lease_id,
        path: rel,
        internal: &entry.internal,
        issue_time: entry.issue_time,
        expire_time: entry.expire_time,
    }
}

/// A lease taken up by one revocation or renewal; released when dropped.
struct Busy<'a> {
    store: &'a LeaseStore,
    id: String,
}

impl<'a> Busy<'a> {
    fn take(store: &'a LeaseStore, id: &str) -> Option<Busy<'a>> {
        store.busy.lock().insert(id.to_owned()).then(|| Busy {
            store,
            id: id.to_owned(),
        })
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.store.busy.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_round_trip_and_sort_by_time() {
        let id = "database/creds/r%o/AbC";
        let k1 = at_key(9, id);
        let k2 = at_key(10, "a/b");
        assert!(k1 < k2, "earlier times sort first");
        let name = k1.strip_prefix(AT_PREFIX).unwrap();
        assert!(!name.contains('/'), "one segment: {name}");
        assert_eq!(parse_at(name), Some((9, id.to_owned())));
        assert_eq!(parse_at("12.x"), None);
        assert_eq!(parse_at("00000000000000000012."), None);
    }

    #[test]
    fn lease_ids_are_24_base62_characters() {
        let a = random_suffix().unwrap();
        let b = random_suffix().unwrap();
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn backoff_doubles_within_half_either_side() {
        for attempt in 1..=5u32 {
            let base = 10 * (1i64 << attempt);
            for _ in 0..50 {
                let w = backoff(attempt);
                assert!(w >= base / 2 && w < base * 3 / 2, "attempt {attempt}: {w}");
            }
        }
    }

    #[test]
    fn ids_that_would_escape_their_tree_are_refused() {
        assert!(valid_id("database/creds/ro/abc"));
        for bad in ["", "a//b", "../x", "a/./b", "a/", "/a", "a\nb"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
