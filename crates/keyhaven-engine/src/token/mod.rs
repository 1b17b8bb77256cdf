//! Tokens: the store every request is authenticated against, the tokens it mints (for
//! `auth/token/create*` and for auth method logins), and the `auth/token/` endpoints.
//!
//! Tokens are never stored: an entry is kept under the HMAC-SHA256 of the token, keyed by
//! a per-installation salt that lives behind the barrier (`core/token/salt`). A stolen
//! database therefore yields neither tokens nor a way to test guesses offline. Only
//! service tokens are issued, and a caller cannot choose a token's id (only a dev
//! server's root token can have a given one).
//!
//! Storage (all behind the barrier):
//! - `core/token/salt`: the salt;
//! - `core/token/id/<hash>`: the entry;
//! - `core/token/accessor/<accessor>`: the hash, so accessors can look up and revoke;
//! - `core/token/parent/<parent hash>/<child hash>`: the token tree, so revoking a
//!   parent revokes its children;
//! - `core/token/role/<name>`: token roles;
//! - `core/token/expire/<expiry, 20 digits>.<hash>`: the expiry index, ordered by time,
//!   one empty entry per token with an expiry, written in the same transaction as the
//!   entry (a renewal adds the new time; a stale time is dropped when the sweeper
//!   reaches it);
//! - `core/token/revoking/<hash>`: tokens whose revocation has begun, written with the
//!   mark and deleted with the entry;
//! - `core/token/expire-index`: present once every entry is in the index (installations
//!   from before the index are indexed once, at their first unseal).
//!
//! Entries are cached in memory, except limited-use entries and entries being revoked.
//! A write drops the entry from the cache, and a lookup that read storage while a write
//! happened keeps what it read out of the cache, so the cache never brings back a revoked
//! or outdated entry. A token in keyhaven's format with a bad checksum is refused without
//! a lookup.
//!
//! Expiry is checked on every lookup against the engine's clock, so an expired token stops
//! working at once; [`TokenStore::sweep_expired`] (periodic maintenance) deletes expired
//! entries later and finishes interrupted revocations. It reads the expiry index up to
//! the present and the revocations begun, so its work is proportional to what expires,
//! not to how many tokens exist. `auth/token/tidy` ([`TokenStore::tidy`]) walks every
//! entry instead, and restores index entries that are missing.
//! A child's expiry never exceeds its parent's, at creation or renewal. Revoking a token
//! revokes its whole subtree, except through `revoke-orphan`, which needs root or sudo
//! and leaves the children as orphans.
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
//! Who may mint which policies (as in Vault): `root` only from a root token, never from
//! an auth method; without a role, a child's policies are a subset of the caller's (and
//! `default`) unless the caller has sudo on the creating path; with a role, the requested
//! set must lie within the role's `allowed_policies`, or, if it has none, within the
//! caller's policies, and never meets `disallowed_policies` (policies the request did not
//! name are left out instead). An orphan role changes where the token hangs, not who may
//! ask.
//!
//! Durations: a `ttl`, `explicit_max_ttl` or `period` beyond the maximum TTL (32 days, or
//! an auth mount's lower `max_lease_ttl` for its logins) is capped, with a warning on
//! `auth/token/create*`. A `period` in the request needs root or sudo, and so does an
//! orphan unless a role makes it one.

mod lifecycle;
mod roles;
mod routes;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use keyhaven_crypto::HmacKey;
use keyhaven_storage::{ReadMostly, Store};
use keyhaven_types::wire::TokenLookup;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, rfc3339};
use crate::error::EngineError;

pub(crate) use lifecycle::generate_token;
pub(crate) use routes::ROUTES;
pub(crate) use store::{new_salt, salt_entry};

const SALT_PATH: &str = "core/token/salt";
pub(crate) const ID_PREFIX: &str = "core/token/id/";
const ACCESSOR_PREFIX: &str = "core/token/accessor/";
const PARENT_PREFIX: &str = "core/token/parent/";
const ROLE_PREFIX: &str = "core/token/role/";
const EXPIRE_PREFIX: &str = "core/token/expire/";
const REVOKING_PREFIX: &str = "core/token/revoking/";
const INDEX_MARKER: &str = "core/token/expire-index";

/// The expiry index's key for a token expiring at `expiry` (Unix seconds).
fn expire_key(expiry: i64, hash_hex: &str) -> String {
    format!("{EXPIRE_PREFIX}{:020}.{hash_hex}", expiry.max(0))
}

/// The expiry and hash of an expiry index name (the part after the prefix).
fn parse_expire_name(name: &str) -> Option<(i64, &str)> {
    let (time, hash) = name.split_once('.')?;
    if time.len() != 20 || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((time.parse().ok()?, hash))
}

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
    /// Blocks the token works from (empty: anywhere): a request from elsewhere is
    /// refused as if the token were unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_cidrs: Vec<crate::cidr::Cidr>,
}

impl TokenEntry {
    /// Whether a request from `from` may use the token: always when it is not bound to
    /// CIDR blocks; otherwise only from an address inside one (a request whose address
    /// is unknown may not).
    pub fn usable_from(&self, from: Option<std::net::IpAddr>) -> bool {
        self.bound_cidrs.is_empty()
            || from.is_some_and(|ip| self.bound_cidrs.iter().any(|c| c.contains(ip)))
    }

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

    /// What a lookup shows of the token `id` (empty for a lookup by accessor).
    fn lookup(&self, id: &str, now: i64) -> TokenLookup {
        TokenLookup {
            accessor: self.accessor.clone(),
            creation_time: self.creation_time,
            creation_ttl: self.creation_ttl,
            display_name: self.display_name.clone(),
            entity_id: String::new(),
            expire_time: self.expire_time.map(|t| rfc3339(unix(t))),
            explicit_max_ttl: self.explicit_max_ttl,
            id: Some(id.to_owned()),
            issue_time: rfc3339(unix(self.issue_time)),
            meta: (!self.meta.is_empty()).then(|| self.meta.clone()),
            num_uses: self.num_uses,
            orphan: self.parent.is_none(),
            path: self.path.clone(),
            period: (self.period > 0).then_some(self.period),
            policies: self.policies.clone(),
            renewable: self.renewable,
            ttl: self.ttl_left(now),
            kind: "service".to_owned(),
        }
    }
}

fn unix(t: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(t).unwrap_or(0))
}

/// Hashes the token cache's keys, HMAC-SHA256 tags under the store's secret key, by
/// their first eight bytes. The tags are uniformly distributed and no client can choose
/// one (it would need the key), so the keyed SipHash that guards maps of client-chosen
/// keys against collisions adds nothing here but its cost on every request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TagHasher;

impl std::hash::BuildHasher for TagHasher {
    type Hasher = TagHash;

    fn build_hasher(&self) -> TagHash {
        TagHash(0)
    }
}

/// The [`TagHasher`]'s state: the first eight bytes written.
#[derive(Debug)]
pub(crate) struct TagHash(u64);

impl std::hash::Hasher for TagHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // An array's length comes through `write_usize`, its bytes here.
        if let Some(head) = bytes.first_chunk::<8>() {
            self.0 ^= u64::from_le_bytes(*head);
        }
    }

    fn write_usize(&mut self, _len: usize) {}
}

/// The token store of an unsealed server.
pub struct TokenStore {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hasher: HmacKey,
    cache: ReadMostly<HashMap<[u8; 32], Arc<TokenEntry>, TagHasher>>,
    /// Bumped (under the cache's write lock) whenever a stored entry changes; a lookup
    /// keeps what it read from storage only if no change happened while it read, so the
    /// cache never brings back a revoked or outdated entry.
    epoch: AtomicU64,
    /// The cubbyhole mount's storage: a token's cubbyhole is the folder named by its
    /// storage hash, deleted when the token is revoked or expires.
    cubbyholes: std::sync::OnceLock<Arc<dyn Store>>,
    /// The leases: a revoked token's leases are made due, for the scheduler to revoke.
    leases: std::sync::OnceLock<Arc<crate::lease::LeaseStore>>,
    /// When the stored tokens were last counted (engine clock), for `vault.token.count`.
    counted_at: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").finish_non_exhaustive()
    }
}

fn corrupt() -> EngineError {
    EngineError::Corrupt("token entry is malformed".to_owned())
}

/// Seconds from `now` to `expiry` (0 for none or past).
fn ttl_from(now: i64, expiry: Option<i64>) -> u64 {
    expiry
        .and_then(|e| e.checked_sub(now))
        .and_then(|d| u64::try_from(d).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::TagHasher;

    #[test]
    fn a_cache_key_hashes_to_its_first_eight_bytes() {
        // A hash that ignored the tag would put every token in one bucket chain.
        let mut tag = [0u8; 32];
        for (i, b) in tag.iter_mut().enumerate() {
            *b = u8::try_from(i * 7 + 3).unwrap();
        }
        let head = u64::from_le_bytes(tag[..8].try_into().unwrap());
        assert_eq!(TagHasher.hash_one(tag), head);
        assert_ne!(
            TagHasher.hash_one([0xA5u8; 32]),
            TagHasher.hash_one([0x5Au8; 32])
        );
    }
}
