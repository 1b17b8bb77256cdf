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
//!
//! Revocation is atomic with respect to child creation: a token is first marked
//! `revoking` (it stops working at once), and only then are its children listed. A child
//! is created in a transaction conditioned on its parent's entry being exactly as read and
//! not marked, so a child either exists before the mark (and is listed and revoked) or is
//! refused. A crash between the mark and the end leaves marked entries, which the sweeper
//! finishes. The final use of a limited-use token marks it the same way, and the request
//! that spent it revokes the whole tree when it ends (as Vault does): children created
//! with a limited-use token never outlive its last use.
//!
//! Who may mint which policies (as in Vault): `root` only from a root token; without a
//! role, a child's policies are a subset of the caller's unless the caller has sudo on
//! the creating path; with a role, the requested set must lie within the role's
//! `allowed_policies`, or, if it has none, within the caller's policies, and never meets
//! `disallowed_policies`. An orphan role changes where the token hangs, not who may ask.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keyhaven_crypto::{HmacKey, fill_random};
use keyhaven_storage::{Op, Store, Transaction};
use keyhaven_types::token::{self, TokenKind};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::auth::LoginGrant;
use crate::clock::{Clock, rfc3339};
use crate::error::{CryptoOp, EngineError};
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
    /// Revocation has begun: the token no longer works, and no child may be created under
    /// it. On an entry returned by a lookup, it means that lookup spent the token's final
    /// use, and the tree is revoked when the request ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoking: bool,
}

impl TokenEntry {
    /// Whether the token carries the `root` policy.
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    fn expired(&self, now: i64) -> bool {
        self.expire_time.is_some_and(|t| t <= now)
    }

    /// Usable for a new request at `now`: neither expired nor being revoked.
    fn live(&self, now: i64) -> bool {
        !self.expired(now) && !self.revoking
    }

    fn ttl_left(&self, now: i64) -> u64 {
        ttl_from(now, self.expire_time)
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

/// Parameters of a new token. `policies` is the final set, already decided by
/// [`decide_policies`] (or by an auth method's role) and normalized.
#[derive(Debug, Clone, Default)]
struct CreateParams {
    policies: Vec<String>,
    ttl: u64,
    explicit_max_ttl: u64,
    period: u64,
    renewable: bool,
    num_uses: u64,
    display_name: String,
    meta: BTreeMap<String, String>,
    path: String,
}

impl CreateParams {
    /// Cap every duration at `max` (the mount's or the system's maximum TTL), as Vault
    /// does, with a warning for each value that was cut.
    fn cap_durations(&mut self, max: u64) -> Vec<String> {
        let mut warnings = Vec::new();
        for (name, value) in [
            ("ttl", &mut self.ttl),
            ("explicit_max_ttl", &mut self.explicit_max_ttl),
            ("period", &mut self.period),
        ] {
            if *value > max {
                warnings.push(format!(
                    "{name} of {} exceeded the effective max_ttl of {}; {name} value is \
                     capped accordingly",
                    params::format_duration(*value),
                    params::format_duration(max)
                ));
                *value = max;
            }
        }
        warnings
    }
}

/// The token store of an unsealed server.
pub struct TokenStore {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hasher: HmacKey,
    cache: RwLock<HashMap<[u8; 32], Arc<TokenEntry>>>,
    /// Bumped (under the cache's write lock) whenever a stored entry changes; a lookup
    /// keeps what it read from storage only if no change happened while it read, so the
    /// cache never brings back a revoked or outdated entry.
    epoch: AtomicU64,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").finish_non_exhaustive()
    }
}

/// Make a new random salt, for init.
pub(crate) fn new_salt() -> Result<Zeroizing<Vec<u8>>, EngineError> {
    let mut salt = Zeroizing::new(vec![0u8; 32]);
    fill_random(&mut salt).map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
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
        Err(EngineError::Crypto(CryptoOp::Random))
    } else {
        Ok(token)
    }
}

fn generate_accessor() -> Result<String, EngineError> {
    let mut bytes = [0u8; 18];
    fill_random(&mut bytes).map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
    Ok(hex::encode(bytes))
}

fn valid_accessor(a: &str) -> bool {
    a.len() == 36 && a.bytes().all(|b| b.is_ascii_hexdigit())
}

fn corrupt() -> EngineError {
    EngineError::Corrupt("token entry is malformed".to_owned())
}

/// Trim, drop empty names, sort and deduplicate; add `default` when asked, unless `root`
/// is present (a root token carries nothing else).
fn normalize_policies(mut policies: Vec<String>, add_default: bool) -> Vec<String> {
    policies.retain(|p| !p.trim().is_empty());
    for p in &mut policies {
        *p = p.trim().to_owned();
    }
    if policies.iter().any(|p| p == "root") {
        return vec!["root".to_owned()];
    }
    if add_default {
        policies.push("default".to_owned());
    }
    policies.sort();
    policies.dedup();
    policies
}

/// The policies of `set` that `within` lacks; a root holder lacks nothing.
fn not_within<'a>(set: &'a [String], within: &[String]) -> Vec<&'a str> {
    if within.iter().any(|p| p == "root") {
        return Vec::new();
    }
    set.iter()
        .filter(|p| !within.contains(p))
        .map(String::as_str)
        .collect()
}

/// What a token created by `caller` may carry: Vault's rules for `auth/token/create*`
/// (`role` is `None`) and `auth/token/create/<role>`. `requested` is the `policies`
/// parameter as given; `sudo` is whether the caller has sudo on the creating path.
fn decide_policies(
    caller: &TokenEntry,
    requested: Vec<String>,
    no_default_policy: bool,
    role: Option<(&str, &TokenRole)>,
    sudo: bool,
) -> Result<Vec<String>, EngineError> {
    let requested = normalize_policies(requested, false);
    let decided = match role {
        None => {
            if requested.is_empty() {
                // A child created without policies inherits its parent's.
                normalize_policies(caller.policies.clone(), !no_default_policy)
            } else {
                let wanted = normalize_policies(requested, !no_default_policy);
                let mut held = caller.policies.clone();
                held.push("default".to_owned());
                let outside = not_within(&wanted, &held);
                if !sudo && !outside.is_empty() {
                    return Err(EngineError::invalid(format!(
                        "child policies must be a subset of the parent's policies; not held: {}",
                        outside.join(", ")
                    )));
                }
                wanted
            }
        }
        Some((name, role)) => {
            let add_default =
                !no_default_policy && !role.disallowed_policies.iter().any(|p| p == "default");
            let wanted =
                (!requested.is_empty()).then(|| normalize_policies(requested, add_default));
            let asked = wanted.is_some();
            let mut decided = if role.allowed_policies.is_empty() {
                let held = normalize_policies(caller.policies.clone(), add_default);
                match wanted {
                    None => held,
                    Some(wanted) => {
                        let outside = not_within(&wanted, &held);
                        if !outside.is_empty() {
                            return Err(EngineError::invalid(format!(
                                "child policies must be a subset of the caller's policies when \
                                 role {name:?} has no allowed_policies; not held: {}",
                                outside.join(", ")
                            )));
                        }
                        wanted
                    }
                }
            } else {
                let allowed = normalize_policies(role.allowed_policies.clone(), add_default);
                match wanted {
                    None => allowed,
                    Some(wanted) => {
                        let outside: Vec<&str> = wanted
                            .iter()
                            .filter(|p| !allowed.contains(p))
                            .map(String::as_str)
                            .collect();
                        if !outside.is_empty() {
                            return Err(EngineError::invalid(format!(
                                "token policies {outside:?} are not allowed by role {name:?}: \
                                 they must be a subset of its allowed_policies {allowed:?}"
                            )));
                        }
                        wanted
                    }
                }
            };
            let disallowed = normalize_policies(role.disallowed_policies.clone(), false);
            if asked {
                if let Some(bad) = decided.iter().find(|p| disallowed.contains(p)) {
                    return Err(EngineError::invalid(format!(
                        "token policy {bad:?} is disallowed by role {name:?}"
                    )));
                }
            } else {
                // Policies the request did not name (inherited from the caller or the
                // role's allowed set) are left out rather than refused.
                decided.retain(|p| !disallowed.contains(p));
            }
            decided
        }
    };
    if decided.iter().any(|p| p == "root") && !caller.is_root() {
        return Err(EngineError::invalid(
            "root tokens may only be created by a root token",
        ));
    }
    if decided.is_empty() {
        return Err(EngineError::invalid("token must have at least one policy"));
    }
    Ok(decided)
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
            epoch: AtomicU64::new(0),
        }
    }

    /// Drop a changed entry from the cache, and keep lookups that read it before the
    /// change from putting the old one back. Call after the storage write.
    fn forget(&self, hash: &[u8; 32]) {
        let mut cache = self.cache.write();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        cache.remove(hash);
    }

    fn forget_hex(&self, hash_hex: &str) -> Result<(), EngineError> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hash_hex, &mut hash).map_err(|_| corrupt())?;
        self.forget(&hash);
        Ok(())
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
        if !entry.live(self.clock.unix_seconds()) {
            return Ok(None);
        }
        if entry.num_uses > 0 {
            return self.use_once(&hash).await;
        }
        Ok(Some(entry))
    }

    /// The stored entry (live or not), through the cache.
    async fn entry_by_hash(&self, hash: &[u8; 32]) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        if let Some(hit) = self.cache.read().get(hash) {
            return Ok(Some(hit.clone()));
        }
        let seen = self.epoch.load(Ordering::Acquire);
        let Some(bytes) = self.storage.get(&Self::id_key(&hex::encode(hash))).await? else {
            return Ok(None);
        };
        let entry: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
        let entry = Arc::new(entry);
        // Limited-use entries change on every use, and marked ones are on their way out.
        if entry.num_uses == 0 && !entry.revoking {
            let mut cache = self.cache.write();
            if self.epoch.load(Ordering::Acquire) == seen {
                if cache.len() >= 100_000 {
                    cache.clear();
                }
                cache.insert(*hash, entry.clone());
            }
        }
        Ok(Some(entry))
    }

    /// Read, change and compare-and-swap an entry until no concurrent change interferes.
    /// `change` returns `Ok(false)` to leave the entry as it is. Returns the entry as
    /// written (or as found, if left alone); `None` if there is no entry.
    async fn update_entry(
        &self,
        hash_hex: &str,
        mut change: impl FnMut(&mut TokenEntry) -> Result<bool, EngineError>,
    ) -> Result<Option<TokenEntry>, EngineError> {
        let key = Self::id_key(hash_hex);
        for _ in 0..16 {
            let Some(bytes) = self.storage.get(&key).await? else {
                return Ok(None);
            };
            let mut entry: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
            if !change(&mut entry)? {
                return Ok(Some(entry));
            }
            let new = serde_json::to_vec(&entry).map_err(|_| corrupt())?;
            if self
                .storage
                .compare_and_swap(&key, Some(&bytes), Some(new))
                .await?
            {
                self.forget_hex(hash_hex)?;
                return Ok(Some(entry));
            }
        }
        Err(EngineError::Unavailable(
            "too much contention on a token entry".to_owned(),
        ))
    }

    /// Spend one use of a limited-use token. The final use marks the token `revoking`
    /// (no later request can use it), and the returned entry carries the mark so the
    /// request that spent it revokes the tree when it ends
    /// ([`TokenStore::finish_request`]).
    async fn use_once(&self, hash: &[u8; 32]) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        let now = self.clock.unix_seconds();
        let mut spent = false;
        let entry = self
            .update_entry(&hex::encode(hash), |e| {
                spent = false;
                if !e.live(now) || e.num_uses == 0 {
                    return Ok(false);
                }
                e.num_uses -= 1;
                if e.num_uses == 0 {
                    e.revoking = true;
                }
                spent = true;
                Ok(true)
            })
            .await?;
        Ok(entry.filter(|_| spent).map(|mut e| {
            // Report the use count as it was before this use, as Vault does.
            e.num_uses += 1;
            Arc::new(e)
        }))
    }

    /// What the core calls when a request ends: if the request spent the token's final
    /// use, revoke the token and its children now. A failure leaves the token marked
    /// (unusable); the sweeper finishes the revocation.
    pub(crate) async fn finish_request(&self, entry: &TokenEntry) {
        if entry.revoking
            && let Err(e) = self.revoke_tree(&entry.hash).await
        {
            tracing::warn!(target: "keyhaven::tokens", error = %e, "revoking a used-up token failed; the sweeper will finish it");
        }
    }

    /// Look up by accessor (no use is consumed).
    pub async fn lookup_accessor(
        &self,
        accessor: &str,
    ) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        let Some((_, entry)) = self.by_accessor(accessor).await? else {
            return Ok(None);
        };
        Ok(Some(entry).filter(|e| e.live(self.clock.unix_seconds())))
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
    /// `mount_max_ttl` is the auth mount's `max_lease_ttl` (0: the system maximum).
    pub(crate) async fn login(
        &self,
        grant: &LoginGrant,
        path: &str,
        mount_max_ttl: u64,
    ) -> Result<Map<String, Value>, EngineError> {
        let policies = normalize_policies(grant.policies.clone(), !grant.no_default_policy);
        if policies.is_empty() {
            return Err(EngineError::invalid("token must have at least one policy"));
        }
        if policies.iter().any(|p| p == "root") {
            return Err(EngineError::invalid(
                "auth methods cannot create root tokens",
            ));
        }
        let mut params = CreateParams {
            policies,
            ttl: grant.ttl,
            explicit_max_ttl: grant.max_ttl,
            period: grant.period,
            renewable: grant.renewable,
            num_uses: grant.num_uses,
            display_name: grant.display_name.clone(),
            meta: grant.metadata.clone(),
            path: path.to_owned(),
        };
        params.cap_durations(effective_max_ttl(mount_max_ttl));
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

    /// Create a token under `parent` (or an orphan when `parent` is `None`) with the
    /// policies and durations of `p`, already decided and capped. A child is written only
    /// if its parent's stored entry is still exactly as read and not being revoked, so
    /// it cannot slip past a concurrent revocation of the parent.
    async fn create(
        &self,
        parent: Option<&TokenEntry>,
        p: CreateParams,
    ) -> Result<(String, TokenEntry), EngineError> {
        let now = self.clock.unix_seconds();
        let is_root = p.policies.iter().any(|x| x == "root");
        // TTL: period wins for periodic tokens; otherwise ttl or the system default, capped
        // by explicit_max_ttl. Root tokens created without a TTL never expire.
        let mut ttl = if p.period > 0 { p.period } else { p.ttl };
        let unbounded_root = is_root && ttl == 0 && p.explicit_max_ttl == 0;
        if !unbounded_root {
            if ttl == 0 {
                ttl = SYSTEM_MAX_TTL;
            }
            if p.explicit_max_ttl > 0 {
                ttl = ttl.min(p.explicit_max_ttl);
            }
        }
        let own_expiry = if unbounded_root {
            None
        } else {
            Some(add_secs(now, ttl)?)
        };
        let token = generate_token()?;
        let hash = hex::encode(self.hash(&token));
        let display_name = if p.display_name.is_empty() {
            "token".to_owned()
        } else if p.path.starts_with("auth/token/") {
            format!("token-{}", p.display_name)
        } else {
            p.display_name
        };
        let mut entry = TokenEntry {
            policies: p.policies,
            accessor: generate_accessor()?,
            display_name,
            creation_time: now,
            path: p.path,
            creation_ttl: 0,
            expire_time: own_expiry,
            explicit_max_ttl: p.explicit_max_ttl,
            period: p.period,
            renewable: false,
            num_uses: p.num_uses,
            parent: parent.map(|e| e.hash.clone()),
            meta: p.meta,
            issue_time: now,
            hash: hash.clone(),
            revoking: false,
        };
        let accessor_op = Op::Put {
            key: format!("{ACCESSOR_PREFIX}{}", entry.accessor),
            value: hash.clone().into_bytes(),
        };
        let Some(parent) = parent else {
            entry.creation_ttl = ttl_from(now, entry.expire_time);
            entry.renewable = p.renewable && entry.expire_time.is_some();
            let ops = vec![
                Op::Put {
                    key: Self::id_key(&hash),
                    value: serde_json::to_vec(&entry).map_err(|_| corrupt())?,
                },
                accessor_op,
            ];
            // Unconditional: it commits or fails with an error.
            let _ = self
                .storage
                .transact(Transaction {
                    conditions: Vec::new(),
                    ops,
                })
                .await?;
            return Ok((token, entry));
        };
        let parent_key = Self::id_key(&parent.hash);
        for _ in 0..16 {
            let Some(parent_bytes) = self.storage.get(&parent_key).await? else {
                return Err(EngineError::PermissionDenied);
            };
            let stored: TokenEntry =
                serde_json::from_slice(&parent_bytes).map_err(|_| corrupt())?;
            // A parent being revoked takes no new children, except in the request that
            // spent its final use: that request revokes the tree, children included,
            // when it ends.
            if stored.expired(now) || (stored.revoking && !parent.revoking) {
                return Err(EngineError::PermissionDenied);
            }
            // A child never outlives its parent.
            entry.expire_time = match (own_expiry, stored.expire_time) {
                (Some(own), Some(theirs)) => Some(own.min(theirs)),
                (None, theirs) => theirs,
                (own, None) => own,
            };
            entry.creation_ttl = ttl_from(now, entry.expire_time);
            entry.renewable = p.renewable && entry.expire_time.is_some();
            let tx = Transaction {
                conditions: vec![keyhaven_storage::Condition::Equals {
                    key: parent_key.clone(),
                    value: parent_bytes,
                }],
                ops: vec![
                    Op::Put {
                        key: Self::id_key(&hash),
                        value: serde_json::to_vec(&entry).map_err(|_| corrupt())?,
                    },
                    accessor_op.clone(),
                    Op::Put {
                        key: format!("{PARENT_PREFIX}{}/{hash}", parent.hash),
                        value: Vec::new(),
                    },
                ],
            };
            if self.storage.transact(tx).await? == keyhaven_storage::TxOutcome::Committed {
                return Ok((token, entry));
            }
        }
        Err(EngineError::Unavailable(
            "token creation conflicted with changes to its parent".to_owned(),
        ))
    }

    /// Mark a token `revoking`: it stops working at once and takes no new children.
    async fn mark_revoking(&self, hash_hex: &str) -> Result<(), EngineError> {
        self.update_entry(hash_hex, |e| {
            if e.revoking {
                return Ok(false);
            }
            e.revoking = true;
            Ok(true)
        })
        .await?;
        Ok(())
    }

    /// Every child of a token, one page of the tree index at a time.
    async fn children(&self, hash_hex: &str) -> Result<Vec<String>, EngineError> {
        let prefix = format!("{PARENT_PREFIX}{hash_hex}/");
        let mut children = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .storage
                .list_page(&prefix, after.as_deref(), 1000)
                .await?;
            children.extend(page.iter().map(|c| c.trim_end_matches('/').to_owned()));
            if page.len() < 1000 {
                return Ok(children);
            }
            after = page.last().cloned();
        }
    }

    /// Revoke a token and every descendant. Each token is marked before its children are
    /// listed, so a child created concurrently is either listed or refused; entries are
    /// deleted children first.
    pub(crate) async fn revoke_tree(&self, hash_hex: &str) -> Result<(), EngineError> {
        let mut stack = vec![hash_hex.to_owned()];
        let mut order = Vec::new();
        while let Some(h) = stack.pop() {
            self.mark_revoking(&h).await?;
            stack.extend(self.children(&h).await?);
            order.push(h);
        }
        for h in order.iter().rev() {
            self.revoke_one(h).await?;
        }
        Ok(())
    }

    async fn revoke_one(&self, hash_hex: &str) -> Result<(), EngineError> {
        let key = Self::id_key(hash_hex);
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
        // Unconditional: it commits or fails with an error.
        let _ = self
            .storage
            .transact(Transaction {
                conditions: Vec::new(),
                ops,
            })
            .await?;
        self.forget_hex(hash_hex)
    }

    /// Revoke only this token; its children become orphans.
    async fn revoke_orphan(&self, entry: &TokenEntry) -> Result<(), EngineError> {
        // Marked first, so no child appears after the listing below.
        self.mark_revoking(&entry.hash).await?;
        let prefix = format!("{PARENT_PREFIX}{}/", entry.hash);
        for child in self.children(&entry.hash).await? {
            self.update_entry(&child, |c| {
                let was_child = c.parent.is_some();
                c.parent = None;
                Ok(was_child)
            })
            .await?;
            self.storage.delete(&format!("{prefix}{child}")).await?;
        }
        self.revoke_one(&entry.hash).await
    }

    /// Renew: extend the TTL by `increment` (or the token's period / original TTL), within
    /// explicit_max_ttl, the system maximum and the parent's expiry. Conditioned on the
    /// entry as read, so a renewal never undoes a concurrent revocation.
    async fn renew(
        &self,
        entry: &TokenEntry,
        increment: Option<u64>,
    ) -> Result<TokenEntry, EngineError> {
        if !entry.renewable || entry.expire_time.is_none() {
            return Err(EngineError::invalid("token is not renewable"));
        }
        let now = self.clock.unix_seconds();
        let mut parent_expiry = None;
        if let Some(parent_hash) = &entry.parent {
            let mut h = [0u8; 32];
            hex::decode_to_slice(parent_hash, &mut h).map_err(|_| corrupt())?;
            match self.entry_by_hash(&h).await? {
                Some(p) if p.live(now) => parent_expiry = p.expire_time,
                _ => return Err(EngineError::invalid("token's parent was revoked")),
            }
        }
        let renewed = self
            .update_entry(&entry.hash, |e| {
                if !e.live(now) {
                    return Err(EngineError::invalid("token was revoked"));
                }
                let mut ttl = if e.period > 0 {
                    e.period
                } else {
                    increment.filter(|i| *i > 0).unwrap_or(e.creation_ttl)
                };
                if e.period == 0 {
                    ttl = ttl.min(SYSTEM_MAX_TTL);
                }
                let mut exp = add_secs(now, ttl)?;
                if e.explicit_max_ttl > 0 {
                    exp = exp.min(add_secs(e.creation_time, e.explicit_max_ttl)?);
                }
                if e.period == 0 {
                    exp = exp.min(add_secs(e.creation_time, SYSTEM_MAX_TTL)?);
                }
                if let Some(pexp) = parent_expiry {
                    exp = exp.min(pexp);
                }
                e.expire_time = Some(exp.max(now));
                e.issue_time = now;
                Ok(true)
            })
            .await?;
        renewed.ok_or_else(|| EngineError::invalid("token was revoked"))
    }

    /// Delete expired tokens (and their subtrees), and finish revocations that were
    /// interrupted. Returns how many trees were removed.
    pub async fn sweep_expired(&self) -> Result<usize, EngineError> {
        let now = self.clock.unix_seconds();
        let mut after: Option<String> = None;
        let mut due = Vec::new();
        loop {
            let page = self
                .storage
                .list_page(ID_PREFIX, after.as_deref(), 1000)
                .await?;
            for h in &page {
                if let Some(bytes) = self.storage.get(&Self::id_key(h)).await? {
                    let e: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
                    if !e.live(now) {
                        due.push(h.clone());
                    }
                }
            }
            if page.len() < 1000 {
                break;
            }
            after = page.last().cloned();
        }
        for h in &due {
            self.revoke_tree(h).await?;
        }
        Ok(due.len())
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
                let (mut p, requested) = self.params_from(data, "auth/token/create", sudo)?;
                p.policies =
                    decide_policies(caller, requested.policies, requested.no_default, None, sudo)?;
                let warnings = p.cap_durations(SYSTEM_MAX_TTL);
                let parent = if orphan { None } else { Some(caller.as_ref()) };
                let (token, entry) = self.create(parent, p).await?;
                Ok(Response {
                    auth: Some(self.auth_object(&token, &entry)),
                    warnings,
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
                    return self.create_with_role(role, data, caller, sudo).await;
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
        Ok(e.filter(|e| e.live(self.clock.unix_seconds())))
    }

    /// The creation parameters of a request, and the policies it asks for (decided
    /// later, with the role if there is one). A `period` needs root or sudo, as in Vault:
    /// a periodic token can be renewed forever.
    fn params_from(
        &self,
        data: &Map<String, Value>,
        path: &str,
        sudo: bool,
    ) -> Result<(CreateParams, RequestedPolicies), EngineError> {
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
        let period = params::duration_secs(data, "period")?.unwrap_or(0);
        if period > 0 && !sudo {
            return Err(EngineError::invalid(
                "root or sudo privileges are required to create a periodic token",
            ));
        }
        let requested = RequestedPolicies {
            policies: params::string_list(data, "policies")?.unwrap_or_default(),
            no_default: params::boolean(data, "no_default_policy")?.unwrap_or(false),
        };
        let p = CreateParams {
            policies: Vec::new(),
            ttl: params::duration_secs(data, "ttl")?.unwrap_or(0),
            explicit_max_ttl: params::duration_secs(data, "explicit_max_ttl")?.unwrap_or(0),
            period,
            renewable: params::boolean(data, "renewable")?.unwrap_or(true),
            num_uses: params::uint(data, "num_uses")?.unwrap_or(0),
            display_name: params::string(data, "display_name")?
                .unwrap_or_default()
                .to_owned(),
            meta: params::string_map(data, "meta")?.unwrap_or_default(),
            path: path.to_owned(),
        };
        Ok((p, requested))
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
        sudo: bool,
    ) -> Result<Response, EngineError> {
        let bytes = self
            .storage
            .get(&format!("{ROLE_PREFIX}{role_name}"))
            .await?
            .ok_or_else(|| EngineError::invalid(format!("unknown role {role_name:?}")))?;
        let role: TokenRole = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
        let (mut p, requested) =
            self.params_from(data, &format!("auth/token/create/{role_name}"), sudo)?;
        // The same checks whether or not the role makes orphans: an orphan role decides
        // where the token hangs in the tree, not which policies the caller may mint.
        p.policies = decide_policies(
            caller,
            requested.policies,
            requested.no_default,
            Some((role_name, &role)),
            sudo,
        )?;
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
        let warnings = p.cap_durations(SYSTEM_MAX_TTL);
        let parent = if role.orphan {
            None
        } else {
            Some(caller.as_ref())
        };
        let (token, entry) = self.create(parent, p).await?;
        Ok(Response {
            auth: Some(self.auth_object(&token, &entry)),
            warnings,
            ..Default::default()
        })
    }
}

/// The `policies` and `no_default_policy` parameters of a creation request.
struct RequestedPolicies {
    policies: Vec<String>,
    no_default: bool,
}

/// `at + secs`, refusing what a timestamp cannot hold.
fn add_secs(at: i64, secs: u64) -> Result<i64, EngineError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| at.checked_add(s))
        .ok_or_else(|| EngineError::invalid("duration is out of range"))
}

/// Seconds from `now` to `expiry` (0 for none or past).
fn ttl_from(now: i64, expiry: Option<i64>) -> u64 {
    expiry
        .and_then(|e| e.checked_sub(now))
        .and_then(|d| u64::try_from(d).ok())
        .unwrap_or(0)
}

/// A mount's `max_lease_ttl` within the system maximum (0: the system maximum).
fn effective_max_ttl(mount_max_ttl: u64) -> u64 {
    if mount_max_ttl == 0 {
        SYSTEM_MAX_TTL
    } else {
        mount_max_ttl.min(SYSTEM_MAX_TTL)
    }
}

fn required<'a>(data: &'a Map<String, Value>, key: &str) -> Result<&'a str, EngineError> {
    params::string(data, key)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EngineError::invalid(format!("missing parameter {key:?}")))
}
