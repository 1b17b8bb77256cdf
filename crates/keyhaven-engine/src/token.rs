//! The token store (`auth/token/*`).
//!
//! Tokens are never stored: an entry is kept under the HMAC-SHA256 of the token, keyed by
//! a per-installation salt that lives behind the barrier (`core/token/salt`). A stolen
//! database therefore yields neither tokens nor a way to test guesses offline.
//!
//! Storage (all behind the barrier):
//! - `core/token/id/<hash>`: the entry;
//! - `core/token/accessor/<accessor>`: the hash, so accessors can look up and revoke;
//! - `core/token/parent/<parent hash>/<child hash>`: the token tree, so revoking a
//!   parent revokes its children;
//! - `core/token/role/<name>`: token roles.
//!
//! Expiry is checked on every lookup against the engine's clock, so an expired token stops
//! working at once; [`TokenStore::sweep_expired`] deletes expired entries later. A child's
//! expiry never exceeds its parent's, and revoking a parent revokes the whole subtree.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use keyhaven_crypto::{HmacKey, fill_random};
use keyhaven_storage::{Op, Store, Transaction};
use keyhaven_types::token::{self, TokenKind};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::auth::LoginGrant;
use crate::clock::{Clock, rfc3339};
use crate::error::EngineError;
use crate::params;
use crate::request::{Operation, Response};

const SALT_PATH: &str = "core/token/salt";
const ID_PREFIX: &str = "core/token/id/";
const ACCESSOR_PREFIX: &str = "core/token/accessor/";
const PARENT_PREFIX: &str = "core/token/parent/";
const ROLE_PREFIX: &str = "core/token/role/";

/// The longest any non-root token lives without renewal, and the default TTL: 32 days,
/// as Vault's `max_lease_ttl`.
pub const SYSTEM_MAX_TTL: u64 = 32 * 24 * 3600;

/// What the store keeps about a token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenEntry {
    /// Policies attached to the token.
    pub policies: Vec<String>,
    /// Public handle for lookup and revocation without the token.
    pub accessor: String,
    /// Human-readable name.
    pub display_name: String,
    /// Creation time, Unix seconds.
    pub creation_time: i64,
    /// Path that created it.
    pub path: String,
    /// TTL at creation (seconds, 0 = none).
    #[serde(default)]
    pub creation_ttl: u64,
    /// Absolute expiry (Unix seconds); `None` never expires (root tokens).
    #[serde(default)]
    pub expire_time: Option<i64>,
    /// Hard limit that renewal cannot pass (seconds from creation, 0 = none).
    #[serde(default)]
    pub explicit_max_ttl: u64,
    /// Renewal period for periodic tokens (0 = not periodic).
    #[serde(default)]
    pub period: u64,
    /// Whether renew is allowed.
    #[serde(default)]
    pub renewable: bool,
    /// Remaining uses (0 = unlimited).
    #[serde(default)]
    pub num_uses: u64,
    /// Hash (hex) of the parent token; `None` for orphans.
    #[serde(default)]
    pub parent: Option<String>,
    /// Metadata (not secret).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Last issue or renewal time, Unix seconds.
    #[serde(default)]
    pub issue_time: i64,
    /// Hash (hex) of this token, the storage identity.
    #[serde(default)]
    pub hash: String,
}

impl TokenEntry {
    /// Whether the token carries the `root` policy.
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    fn expired(&self, now: i64) -> bool {
        self.expire_time.is_some_and(|t| t <= now)
    }

    fn ttl_left(&self, now: i64) -> u64 {
        self.expire_time
            .map(|t| u64::try_from(t - now).unwrap_or(0))
            .unwrap_or(0)
    }

    fn lookup_data(&self, id: &str, now: i64) -> Map<String, Value> {
        let mut d = Map::new();
        d.insert("accessor".into(), json!(self.accessor));
        d.insert("creation_time".into(), json!(self.creation_time));
        d.insert("creation_ttl".into(), json!(self.creation_ttl));
        d.insert("display_name".into(), json!(self.display_name));
        d.insert("entity_id".into(), json!(""));
        d.insert(
            "expire_time".into(),
            self.expire_time
                .map(|t| json!(rfc3339(unix(t))))
                .unwrap_or(Value::Null),
        );
        d.insert("explicit_max_ttl".into(), json!(self.explicit_max_ttl));
        d.insert("id".into(), json!(id));
        d.insert("issue_time".into(), json!(rfc3339(unix(self.issue_time))));
        d.insert(
            "meta".into(),
            if self.meta.is_empty() {
                Value::Null
            } else {
                json!(self.meta)
            },
        );
        d.insert("num_uses".into(), json!(self.num_uses));
        d.insert("orphan".into(), json!(self.parent.is_none()));
        d.insert("path".into(), json!(self.path));
        d.insert("policies".into(), json!(self.policies));
        d.insert("renewable".into(), json!(self.renewable));
        d.insert("ttl".into(), json!(self.ttl_left(now)));
        d.insert("type".into(), json!("service"));
        if self.period > 0 {
            d.insert("period".into(), json!(self.period));
        }
        d
    }
}

fn unix(t: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(t).unwrap_or(0))
}

/// A token role (`auth/token/roles/<name>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct TokenRole {
    allowed_policies: Vec<String>,
    disallowed_policies: Vec<String>,
    orphan: bool,
    renewable: bool,
    period: u64,
    explicit_max_ttl: u64,
    path_suffix: String,
}

/// Parameters of a new token.
#[derive(Debug, Clone, Default)]
struct CreateParams {
    policies: Vec<String>,
    no_default_policy: bool,
    ttl: u64,
    explicit_max_ttl: u64,
    period: u64,
    renewable: bool,
    num_uses: u64,
    display_name: String,
    meta: BTreeMap<String, String>,
    path: String,
}

/// The token store of an unsealed server.
pub struct TokenStore {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hasher: HmacKey,
    cache: RwLock<HashMap<[u8; 32], Arc<TokenEntry>>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").finish_non_exhaustive()
    }
}

/// Make a new random salt, for init.
pub(crate) fn new_salt() -> Result<Zeroizing<Vec<u8>>, EngineError> {
    let mut salt = Zeroizing::new(vec![0u8; 32]);
    fill_random(&mut salt).map_err(|_| EngineError::Crypto)?;
    Ok(salt)
}

/// Storage key and value of the salt, for init.
pub(crate) fn salt_entry(salt: &[u8]) -> (String, Vec<u8>) {
    (SALT_PATH.to_owned(), salt.to_vec())
}

/// Generate a fresh service token string.
pub(crate) fn generate_token() -> Result<String, EngineError> {
    let mut failed = false;
    let token = token::generate(TokenKind::Service, |buf| {
        if fill_random(buf).is_err() {
            failed = true;
        }
    });
    if failed {
        Err(EngineError::Crypto)
    } else {
        Ok(token)
    }
}

fn generate_accessor() -> Result<String, EngineError> {
    let mut bytes = [0u8; 18];
    fill_random(&mut bytes).map_err(|_| EngineError::Crypto)?;
    Ok(hex::encode(bytes))
}

fn valid_accessor(a: &str) -> bool {
    a.len() == 36 && a.bytes().all(|b| b.is_ascii_hexdigit())
}

fn corrupt() -> EngineError {
    EngineError::Corrupt("token entry is malformed".to_owned())
}

/// Sort, deduplicate and add `default` unless asked not to; `root` stands alone.
fn normalize_policies(mut policies: Vec<String>, no_default: bool) -> Vec<String> {
    policies.retain(|p| !p.trim().is_empty());
    for p in &mut policies {
        *p = p.trim().to_owned();
    }
    if !no_default && !policies.iter().any(|p| p == "root") {
        policies.push("default".to_owned());
    }
    policies.sort();
    policies.dedup();
    policies
}

impl TokenStore {
    /// Load the store of an unsealed barrier view.
    pub(crate) async fn load(
        storage: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, EngineError> {
        let salt = Zeroizing::new(
            storage
                .get(SALT_PATH)
                .await?
                .ok_or_else(|| EngineError::Corrupt("the token salt is missing".to_owned()))?,
        );
        Ok(Self::with_salt(storage, clock, &salt))
    }

    pub(crate) fn with_salt(storage: Arc<dyn Store>, clock: Arc<dyn Clock>, salt: &[u8]) -> Self {
        TokenStore {
            storage,
            clock,
            hasher: HmacKey::new(salt),
            cache: RwLock::new(HashMap::new()),
        }
    }

    fn hash(&self, token: &str) -> [u8; 32] {
        self.hasher.sign(token.as_bytes())
    }

    fn id_key(hash_hex: &str) -> String {
        format!("{ID_PREFIX}{hash_hex}")
    }

    /// The storage entry (key, value) for a new root token `id`, for init; nothing is written.
    pub(crate) fn root_entry(
        &self,
        id: &str,
        now_unix: i64,
    ) -> Result<Vec<(String, Vec<u8>)>, EngineError> {
        let hash = hex::encode(self.hash(id));
        let entry = TokenEntry {
            policies: vec!["root".to_owned()],
            accessor: generate_accessor()?,
            display_name: "root".to_owned(),
            creation_time: now_unix,
            path: "auth/token/root".to_owned(),
            issue_time: now_unix,
            hash: hash.clone(),
            ..Default::default()
        };
        let value = serde_json::to_vec(&entry).map_err(|_| corrupt())?;
        Ok(vec![
            (Self::id_key(&hash), value),
            (
                format!("{ACCESSOR_PREFIX}{}", entry.accessor),
                hash.into_bytes(),
            ),
        ])
    }

    /// Look up a presented token; `None` if unknown, revoked or expired. Uses up one use
    /// of a limited-use token.
    pub async fn lookup(&self, token: &str) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        // Keyhaven-format tokens with a bad checksum are refused without a lookup.
        if matches!(
            token::parse(token),
            Err(token::TokenFormatError::BadChecksum | token::TokenFormatError::Malformed)
        ) || token.is_empty()
            || token.len() > 512
        {
            return Ok(None);
        }
        let hash = self.hash(token);
        let entry = self.entry_by_hash(&hash).await?;
        let Some(entry) = entry else { return Ok(None) };
        let now = self.clock.unix_seconds();
        if entry.expired(now) {
            self.cache.write().remove(&hash);
            return Ok(None);
        }
        if entry.num_uses > 0 {
            return self.use_once(&hash, entry).await;
        }
        Ok(Some(entry))
    }

    async fn entry_by_hash(&self, hash: &[u8; 32]) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        if let Some(hit) = self.cache.read().get(hash) {
            return Ok(Some(hit.clone()));
        }
        let Some(bytes) = self.storage.get(&Self::id_key(&hex::encode(hash))).await? else {
            return Ok(None);
        };
        let entry: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
        let entry = Arc::new(entry);
        if entry.num_uses == 0 {
            let mut cache = self.cache.write();
            if cache.len() >= 100_000 {
                cache.clear();
            }
            cache.insert(*hash, entry.clone());
        }
        Ok(Some(entry))
    }

    /// Decrement the use count atomically; revoke at zero.
    async fn use_once(
        &self,
        hash: &[u8; 32],
        _seen: Arc<TokenEntry>,
    ) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        let key = Self::id_key(&hex::encode(hash));
        for _ in 0..16 {
            let Some(bytes) = self.storage.get(&key).await? else {
                return Ok(None);
            };
            let mut entry: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
            if entry.num_uses == 0 {
                return Ok(None);
            }
            entry.num_uses -= 1;
            let last_use = entry.num_uses == 0;
            let new = serde_json::to_vec(&entry).map_err(|_| corrupt())?;
            let swapped = if last_use {
                // The final use: delete the token (and its accessor) as it is used.
                let tx = Transaction {
                    conditions: vec![keyhaven_storage::Condition::Equals {
                        key: key.clone(),
                        value: bytes,
                    }],
                    ops: vec![
                        Op::Delete { key: key.clone() },
                        Op::Delete {
                            key: format!("{ACCESSOR_PREFIX}{}", entry.accessor),
                        },
                    ],
                };
                self.storage.transact(tx).await? == keyhaven_storage::TxOutcome::Committed
            } else {
                self.storage
                    .compare_and_swap(&key, Some(&bytes), Some(new))
                    .await?
            };
            if swapped {
                // Report the use count as it was before this use, as Vault does.
                entry.num_uses += 1;
                return Ok(Some(Arc::new(entry)));
            }
        }
        Err(EngineError::Unavailable(
            "too much contention on a limited-use token".to_owned(),
        ))
    }

    /// Look up by accessor (no use is consumed).
    pub async fn lookup_accessor(
        &self,
        accessor: &str,
    ) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        let Some((hash, entry)) = self.by_accessor(accessor).await? else {
            return Ok(None);
        };
        if entry.expired(self.clock.unix_seconds()) {
            self.cache.write().remove(&hash);
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// Look up a token by accessor or by value without consuming a use.
    pub(crate) async fn lookup_accessor_or_token(
        &self,
        accessor: Option<&str>,
        token: Option<&str>,
    ) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        match (accessor, token) {
            (Some(a), _) => self.lookup_accessor(a).await,
            (None, Some(t)) => self.peek(t).await,
            (None, None) => Ok(None),
        }
    }

    async fn by_accessor(
        &self,
        accessor: &str,
    ) -> Result<Option<([u8; 32], Arc<TokenEntry>)>, EngineError> {
        if !valid_accessor(accessor) {
            return Ok(None);
        }
        let Some(h) = self
            .storage
            .get(&format!("{ACCESSOR_PREFIX}{accessor}"))
            .await?
        else {
            return Ok(None);
        };
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&h, &mut hash).map_err(|_| corrupt())?;
        Ok(self.entry_by_hash(&hash).await?.map(|e| (hash, e)))
    }

    /// Mint a token for a successful login and return Vault's `auth` object.
    pub(crate) async fn login(
        &self,
        grant: &LoginGrant,
        path: &str,
    ) -> Result<Map<String, Value>, EngineError> {
        let params = CreateParams {
            policies: grant.policies.clone(),
            no_default_policy: grant.no_default_policy,
            ttl: grant.ttl,
            explicit_max_ttl: grant.max_ttl,
            period: grant.period,
            renewable: grant.renewable,
            num_uses: grant.num_uses,
            display_name: grant.display_name.clone(),
            meta: grant.metadata.clone(),
            path: path.to_owned(),
        };
        let (token, entry) = self.create(None, params).await?;
        Ok(self.auth_object(&token, &entry))
    }

    fn auth_object(&self, token: &str, e: &TokenEntry) -> Map<String, Value> {
        let now = self.clock.unix_seconds();
        let mut a = Map::new();
        a.insert("client_token".into(), json!(token));
        a.insert("accessor".into(), json!(e.accessor));
        a.insert("policies".into(), json!(e.policies));
        a.insert("token_policies".into(), json!(e.policies));
        a.insert(
            "metadata".into(),
            if e.meta.is_empty() {
                Value::Null
            } else {
                json!(e.meta)
            },
        );
        a.insert("lease_duration".into(), json!(e.ttl_left(now)));
        a.insert("renewable".into(), json!(e.renewable));
        a.insert("entity_id".into(), json!(""));
        a.insert("token_type".into(), json!("service"));
        a.insert("orphan".into(), json!(e.parent.is_none()));
        a.insert("mfa_requirement".into(), Value::Null);
        a.insert("num_uses".into(), json!(e.num_uses));
        a
    }

    /// Create a token under `parent` (or an orphan when `parent` is `None`).
    async fn create(
        &self,
        parent: Option<&TokenEntry>,
        p: CreateParams,
    ) -> Result<(String, TokenEntry), EngineError> {
        let now = self.clock.unix_seconds();
        // As in Vault, a child created without policies inherits its parent's.
        let requested = match (p.policies.is_empty(), parent) {
            (true, Some(parent)) => parent.policies.clone(),
            _ => p.policies,
        };
        let policies = normalize_policies(requested, p.no_default_policy);
        if policies.is_empty() {
            return Err(EngineError::invalid("token must have at least one policy"));
        }
        let is_root = policies.iter().any(|x| x == "root");
        if let Some(parent) = parent
            && !parent.is_root()
        {
            if is_root {
                return Err(EngineError::invalid(
                    "root tokens may only be created by a root token",
                ));
            }
            let outside: Vec<&str> = policies
                .iter()
                .filter(|x| x.as_str() != "default" && !parent.policies.contains(x))
                .map(String::as_str)
                .collect();
            if !outside.is_empty() {
                return Err(EngineError::invalid(format!(
                    "child policies must be a subset of the parent's policies; not held: {}",
                    outside.join(", ")
                )));
            }
        }
        // TTL: period wins for periodic tokens; otherwise ttl or the system default, capped
        // by explicit_max_ttl and the system maximum. Root tokens created without a TTL
        // never expire.
        let mut ttl = if p.period > 0 { p.period } else { p.ttl };
        let unbounded_root = is_root && ttl == 0 && p.explicit_max_ttl == 0;
        if !unbounded_root {
            if ttl == 0 {
                ttl = SYSTEM_MAX_TTL;
            }
            if p.explicit_max_ttl > 0 {
                ttl = ttl.min(p.explicit_max_ttl);
            }
            if p.period == 0 {
                ttl = ttl.min(SYSTEM_MAX_TTL);
            }
        }
        let mut expire_time = if unbounded_root {
            None
        } else {
            Some(now + i64::try_from(ttl).unwrap_or(i64::MAX / 2))
        };
        // A child never outlives its parent.
        if let (Some(parent), Some(exp)) = (parent, expire_time)
            && let Some(pexp) = parent.expire_time
            && pexp < exp
        {
            expire_time = Some(pexp);
        }
        if let (Some(parent), None) = (parent, expire_time)
            && parent.expire_time.is_some()
        {
            expire_time = parent.expire_time;
        }
        let token = generate_token()?;
        let hash = hex::encode(self.hash(&token));
        let display_name = if p.display_name.is_empty() {
            "token".to_owned()
        } else if p.path.starts_with("auth/token/") {
            format!("token-{}", p.display_name)
        } else {
            p.display_name
        };
        let entry = TokenEntry {
            policies,
            accessor: generate_accessor()?,
            display_name,
            creation_time: now,
            path: p.path,
            creation_ttl: expire_time
                .map(|e| u64::try_from(e - now).unwrap_or(0))
                .unwrap_or(0),
            expire_time,
            explicit_max_ttl: p.explicit_max_ttl,
            period: p.period,
            renewable: p.renewable && expire_time.is_some(),
            num_uses: p.num_uses,
            parent: parent.map(|e| e.hash.clone()),
            meta: p.meta,
            issue_time: now,
            hash: hash.clone(),
        };
        let mut ops = vec![
            Op::Put {
                key: Self::id_key(&hash),
                value: serde_json::to_vec(&entry).map_err(|_| corrupt())?,
            },
            Op::Put {
                key: format!("{ACCESSOR_PREFIX}{}", entry.accessor),
                value: hash.clone().into_bytes(),
            },
        ];
        if let Some(parent) = parent {
            ops.push(Op::Put {
                key: format!("{PARENT_PREFIX}{}/{hash}", parent.hash),
                value: Vec::new(),
            });
        }
        match self
            .storage
            .transact(Transaction {
                conditions: Vec::new(),
                ops,
            })
            .await?
        {
            keyhaven_storage::TxOutcome::Committed => Ok((token, entry)),
            keyhaven_storage::TxOutcome::ConditionFailed { .. } => Err(EngineError::Unavailable(
                "token creation conflicted".to_owned(),
            )),
        }
    }

    /// Revoke a token and every descendant.
    async fn revoke_tree(&self, hash_hex: &str) -> Result<(), EngineError> {
        let mut stack = vec![hash_hex.to_owned()];
        let mut order = Vec::new();
        while let Some(h) = stack.pop() {
            let prefix = format!("{PARENT_PREFIX}{h}/");
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .storage
                    .list_page(&prefix, after.as_deref(), 1000)
                    .await?;
                for child in &page {
                    stack.push(child.trim_end_matches('/').to_owned());
                }
                if page.len() < 1000 {
                    break;
                }
                after = page.last().cloned();
            }
            order.push(h);
        }
        // Children first, so a crash mid-way never leaves a live child of a dead parent.
        for h in order.iter().rev() {
            self.revoke_one(h).await?;
        }
        Ok(())
    }

    async fn revoke_one(&self, hash_hex: &str) -> Result<(), EngineError> {
        let key = Self::id_key(hash_hex);
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hash_hex, &mut hash).map_err(|_| corrupt())?;
        self.cache.write().remove(&hash);
        let Some(bytes) = self.storage.get(&key).await? else {
            return Ok(());
        };
        let entry: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
        let mut ops = vec![
            Op::Delete { key },
            Op::Delete {
                key: format!("{ACCESSOR_PREFIX}{}", entry.accessor),
            },
        ];
        if let Some(parent) = &entry.parent {
            ops.push(Op::Delete {
                key: format!("{PARENT_PREFIX}{parent}/{hash_hex}"),
            });
        }
        let _ = self
            .storage
            .transact(Transaction {
                conditions: Vec::new(),
                ops,
            })
            .await?;
        Ok(())
    }

    /// Revoke only this token; its children become orphans.
    async fn revoke_orphan(&self, entry: &TokenEntry) -> Result<(), EngineError> {
        let prefix = format!("{PARENT_PREFIX}{}/", entry.hash);
        loop {
            let page = self.storage.list_page(&prefix, None, 1000).await?;
            if page.is_empty() {
                break;
            }
            for child in &page {
                let child_key = Self::id_key(child);
                if let Some(bytes) = self.storage.get(&child_key).await? {
                    let mut c: TokenEntry =
                        serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
                    c.parent = None;
                    self.storage
                        .put(&child_key, serde_json::to_vec(&c).map_err(|_| corrupt())?)
                        .await?;
                    let mut h = [0u8; 32];
                    if hex::decode_to_slice(child, &mut h).is_ok() {
                        self.cache.write().remove(&h);
                    }
                }
                self.storage.delete(&format!("{prefix}{child}")).await?;
            }
        }
        self.revoke_one(&entry.hash).await
    }

    /// Renew: extend the TTL by `increment` (or the token's period / original TTL), within
    /// explicit_max_ttl, the system maximum and the parent's expiry.
    async fn renew(
        &self,
        entry: &TokenEntry,
        increment: Option<u64>,
    ) -> Result<TokenEntry, EngineError> {
        if !entry.renewable || entry.expire_time.is_none() {
            return Err(EngineError::invalid("token is not renewable"));
        }
        let now = self.clock.unix_seconds();
        let mut ttl = if entry.period > 0 {
            entry.period
        } else {
            increment.filter(|i| *i > 0).unwrap_or(entry.creation_ttl)
        };
        if entry.period == 0 {
            ttl = ttl.min(SYSTEM_MAX_TTL);
        }
        let mut exp = now + i64::try_from(ttl).unwrap_or(0);
        if entry.explicit_max_ttl > 0 {
            exp = exp.min(entry.creation_time + i64::try_from(entry.explicit_max_ttl).unwrap_or(0));
        }
        if entry.period == 0 {
            exp = exp.min(entry.creation_time + i64::try_from(SYSTEM_MAX_TTL).unwrap_or(0));
        }
        if let Some(parent_hash) = &entry.parent {
            let mut h = [0u8; 32];
            hex::decode_to_slice(parent_hash, &mut h).map_err(|_| corrupt())?;
            match self.entry_by_hash(&h).await? {
                Some(p) => {
                    if let Some(pexp) = p.expire_time {
                        exp = exp.min(pexp);
                    }
                }
                None => return Err(EngineError::invalid("token's parent was revoked")),
            }
        }
        let mut renewed = entry.clone();
        renewed.expire_time = Some(exp.max(now));
        renewed.issue_time = now;
        let key = Self::id_key(&entry.hash);
        self.storage
            .put(&key, serde_json::to_vec(&renewed).map_err(|_| corrupt())?)
            .await?;
        let mut h = [0u8; 32];
        hex::decode_to_slice(&entry.hash, &mut h).map_err(|_| corrupt())?;
        self.cache.write().remove(&h);
        Ok(renewed)
    }

    /// Delete expired tokens (and their subtrees). Returns how many were removed.
    pub async fn sweep_expired(&self) -> Result<usize, EngineError> {
        let now = self.clock.unix_seconds();
        let mut removed = 0;
        let mut after: Option<String> = None;
        let mut expired = Vec::new();
        loop {
            let page = self
                .storage
                .list_page(ID_PREFIX, after.as_deref(), 1000)
                .await?;
            for h in &page {
                if let Some(bytes) = self.storage.get(&Self::id_key(h)).await? {
                    let e: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
                    if e.expired(now) {
                        expired.push(h.clone());
                    }
                }
            }
            if page.len() < 1000 {
                break;
            }
            after = page.last().cloned();
        }
        for h in expired {
            self.revoke_tree(&h).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Handle `auth/token/<rest>` for an authenticated caller.
    pub(crate) async fn handle(
        &self,
        op: Operation,
        rest: &str,
        data: &Map<String, Value>,
        caller: &Arc<TokenEntry>,
        caller_token: &str,
        sudo: bool,
    ) -> Result<Response, EngineError> {
        let now = self.clock.unix_seconds();
        let write = matches!(op, Operation::Create | Operation::Update);
        match rest {
            "create" | "create-orphan" if write => {
                let orphan =
                    rest == "create-orphan" || params::boolean(data, "no_parent")?.unwrap_or(false);
                if orphan && !sudo {
                    return Err(EngineError::invalid(
                        "root or sudo privileges are required to create an orphan token",
                    ));
                }
                let p = self.params_from(data, "auth/token/create")?;
                let parent = if orphan { None } else { Some(caller.as_ref()) };
                let (token, entry) = self.create(parent, p).await?;
                Ok(Response {
                    auth: Some(self.auth_object(&token, &entry)),
                    ..Default::default()
                })
            }
            "lookup-self" if matches!(op, Operation::Read | Operation::Update) => {
                Ok(Response::data(caller.lookup_data(caller_token, now)))
            }
            "lookup" if matches!(op, Operation::Read | Operation::Update) => {
                let t = required(data, "token")?;
                let e = self
                    .peek(t)
                    .await?
                    .ok_or_else(|| EngineError::invalid("bad token"))?;
                Ok(Response::data(e.lookup_data(t, now)))
            }
            "lookup-accessor" if write => {
                let a = required(data, "accessor")?;
                let e = self
                    .lookup_accessor(a)
                    .await?
                    .ok_or_else(|| EngineError::invalid("invalid accessor"))?;
                Ok(Response::data(e.lookup_data("", now)))
            }
            "renew-self" if write => {
                let e = self
                    .renew(caller, params::duration_secs(data, "increment")?)
                    .await?;
                Ok(Response {
                    auth: Some(self.auth_object(caller_token, &e)),
                    ..Default::default()
                })
            }
            "renew" if write => {
                let t = required(data, "token")?;
                let e = self
                    .peek(t)
                    .await?
                    .ok_or_else(|| EngineError::invalid("bad token"))?;
                let e = self
                    .renew(&e, params::duration_secs(data, "increment")?)
                    .await?;
                Ok(Response {
                    auth: Some(self.auth_object(t, &e)),
                    ..Default::default()
                })
            }
            "renew-accessor" if write => {
                let a = required(data, "accessor")?;
                let e = self
                    .lookup_accessor(a)
                    .await?
                    .ok_or_else(|| EngineError::invalid("invalid accessor"))?;
                let e = self
                    .renew(&e, params::duration_secs(data, "increment")?)
                    .await?;
                let mut auth = self.auth_object("", &e);
                auth.remove("client_token");
                Ok(Response {
                    auth: Some(auth),
                    ..Default::default()
                })
            }
            "revoke-self" if write => {
                self.revoke_tree(&caller.hash).await?;
                Ok(Response::no_content())
            }
            "revoke" if write => {
                let t = required(data, "token")?;
                if let Some(e) = self.peek(t).await? {
                    self.revoke_tree(&e.hash).await?;
                }
                Ok(Response::no_content())
            }
            "revoke-accessor" if write => {
                let a = required(data, "accessor")?;
                if let Some((_, e)) = self.by_accessor(a).await? {
                    self.revoke_tree(&e.hash).await?;
                }
                Ok(Response::no_content())
            }
            "revoke-orphan" if write => {
                if !sudo {
                    return Err(EngineError::PermissionDenied);
                }
                let t = required(data, "token")?;
                if let Some(e) = self.peek(t).await? {
                    self.revoke_orphan(&e).await?;
                }
                Ok(Response::no_content())
            }
            "tidy" if write => {
                let n = self.sweep_expired().await?;
                Ok(Response {
                    warnings: vec![format!("removed {n} expired tokens")],
                    ..Default::default()
                })
            }
            "roles" | "roles/" if op == Operation::List => {
                let names = self
                    .storage
                    .list_page(ROLE_PREFIX, None, keyhaven_storage::MAX_LIST_PAGE)
                    .await?;
                if names.is_empty() {
                    return Err(EngineError::NotFound(String::new()));
                }
                let mut d = Map::new();
                d.insert("keys".into(), json!(names));
                Ok(Response::data(d))
            }
            _ => {
                if let Some(name) = rest.strip_prefix("roles/") {
                    return self.handle_role(op, name, data).await;
                }
                if let Some(role) = rest.strip_prefix("create/")
                    && write
                {
                    return self.create_with_role(role, data, caller).await;
                }
                Err(EngineError::NotFound(format!(
                    "no handler for route \"auth/token/{rest}\""
                )))
            }
        }
    }

    /// Look up without consuming a use (for lookup/renew/revoke by value).
    async fn peek(&self, token: &str) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        if token.is_empty() || token.len() > 512 {
            return Ok(None);
        }
        let e = self.entry_by_hash(&self.hash(token)).await?;
        Ok(e.filter(|e| !e.expired(self.clock.unix_seconds())))
    }

    fn params_from(
        &self,
        data: &Map<String, Value>,
        path: &str,
    ) -> Result<CreateParams, EngineError> {
        if let Some(t) = params::string(data, "type")?
            && !t.is_empty()
            && t != "service"
            && t != "default"
        {
            return Err(EngineError::invalid(format!(
                "token type {t:?} is not supported; use \"service\""
            )));
        }
        if params::string(data, "id")?.is_some_and(|s| !s.is_empty()) {
            return Err(EngineError::invalid("custom token ids are not supported"));
        }
        Ok(CreateParams {
            policies: params::string_list(data, "policies")?.unwrap_or_default(),
            no_default_policy: params::boolean(data, "no_default_policy")?.unwrap_or(false),
            ttl: params::duration_secs(data, "ttl")?.unwrap_or(0),
            explicit_max_ttl: params::duration_secs(data, "explicit_max_ttl")?.unwrap_or(0),
            period: params::duration_secs(data, "period")?.unwrap_or(0),
            renewable: params::boolean(data, "renewable")?.unwrap_or(true),
            num_uses: params::uint(data, "num_uses")?.unwrap_or(0),
            display_name: params::string(data, "display_name")?
                .unwrap_or_default()
                .to_owned(),
            meta: params::string_map(data, "meta")?.unwrap_or_default(),
            path: path.to_owned(),
        })
    }

    async fn handle_role(
        &self,
        op: Operation,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        if name.is_empty()
            || name.len() > 128
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(EngineError::invalid("invalid role name"));
        }
        let key = format!("{ROLE_PREFIX}{name}");
        match op {
            Operation::Read => {
                let bytes = self
                    .storage
                    .get(&key)
                    .await?
                    .ok_or_else(|| EngineError::NotFound(String::new()))?;
                let r: TokenRole = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
                let mut d = Map::new();
                d.insert("name".into(), json!(name));
                d.insert("allowed_policies".into(), json!(r.allowed_policies));
                d.insert("disallowed_policies".into(), json!(r.disallowed_policies));
                d.insert("orphan".into(), json!(r.orphan));
                d.insert("renewable".into(), json!(r.renewable));
                d.insert("token_period".into(), json!(r.period));
                d.insert("token_explicit_max_ttl".into(), json!(r.explicit_max_ttl));
                d.insert("path_suffix".into(), json!(r.path_suffix));
                Ok(Response::data(d))
            }
            Operation::Create | Operation::Update => {
                let role = TokenRole {
                    allowed_policies: params::string_list(data, "allowed_policies")?
                        .unwrap_or_default(),
                    disallowed_policies: params::string_list(data, "disallowed_policies")?
                        .unwrap_or_default(),
                    orphan: params::boolean(data, "orphan")?.unwrap_or(false),
                    renewable: params::boolean(data, "renewable")?.unwrap_or(true),
                    period: params::duration_secs(data, "token_period")?
                        .or(params::duration_secs(data, "period")?)
                        .unwrap_or(0),
                    explicit_max_ttl: params::duration_secs(data, "token_explicit_max_ttl")?
                        .or(params::duration_secs(data, "explicit_max_ttl")?)
                        .unwrap_or(0),
                    path_suffix: params::string(data, "path_suffix")?
                        .unwrap_or_default()
                        .to_owned(),
                };
                self.storage
                    .put(&key, serde_json::to_vec(&role).map_err(|_| corrupt())?)
                    .await?;
                Ok(Response::no_content())
            }
            Operation::Delete => {
                self.storage.delete(&key).await?;
                Ok(Response::no_content())
            }
            _ => Err(EngineError::UnsupportedOperation),
        }
    }

    async fn create_with_role(
        &self,
        role_name: &str,
        data: &Map<String, Value>,
        caller: &Arc<TokenEntry>,
    ) -> Result<Response, EngineError> {
        let bytes = self
            .storage
            .get(&format!("{ROLE_PREFIX}{role_name}"))
            .await?
            .ok_or_else(|| EngineError::invalid(format!("unknown role {role_name:?}")))?;
        let role: TokenRole = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
        let mut p = self.params_from(data, &format!("auth/token/create/{role_name}"))?;
        let requested = if p.policies.is_empty() {
            role.allowed_policies.clone()
        } else {
            p.policies.clone()
        };
        if let Some(bad) = requested
            .iter()
            .find(|x| role.disallowed_policies.contains(x))
        {
            return Err(EngineError::invalid(format!(
                "policy {bad:?} is disallowed by the role"
            )));
        }
        if !role.allowed_policies.is_empty()
            && let Some(bad) = requested
                .iter()
                .find(|x| x.as_str() != "default" && !role.allowed_policies.contains(x))
        {
            return Err(EngineError::invalid(format!(
                "policy {bad:?} is not allowed by the role"
            )));
        }
        p.policies = requested;
        p.renewable = p.renewable && role.renewable;
        if role.period > 0 {
            p.period = role.period;
        }
        if role.explicit_max_ttl > 0 {
            p.explicit_max_ttl = if p.explicit_max_ttl == 0 {
                role.explicit_max_ttl
            } else {
                p.explicit_max_ttl.min(role.explicit_max_ttl)
            };
        }
        // A role's policies are granted by the role, not inherited from the caller.
        let parent = if role.orphan {
            None
        } else {
            Some(caller.as_ref())
        };
        let (token, entry) = if parent.is_some_and(|c| !c.is_root()) {
            let mut privileged = caller.as_ref().clone();
            privileged.policies.extend(p.policies.iter().cloned());
            self.create(Some(&privileged), p).await?
        } else {
            self.create(parent, p).await?
        };
        Ok(Response {
            auth: Some(self.auth_object(&token, &entry)),
            ..Default::default()
        })
    }
}

fn required<'a>(data: &'a Map<String, Value>, key: &str) -> Result<&'a str, EngineError> {
    params::string(data, key)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EngineError::invalid(format!("missing parameter {key:?}")))
}
