//! High availability as the engine sees it: several replicas over one database, one of
//! them active. The server runs the election (`keyhaven-server`'s `ha` module) and tells
//! the engine when this replica becomes active ([`crate::Core::promote`]) or stops being
//! so ([`crate::Core::demote`]); the engine answers `sys/step-down`, `sys/leader` and
//! `sys/ha-status` through [`HaControl`].
//!
//! An unsealed replica that is not active is a *standby*: it holds the root key (checked
//! against the keyring when unsealed). Once the server listens for the active's
//! announcements it loads a *replica* of the state ([`crate::Core::load_replica`]) and
//! answers requests without effects itself; it drops what it cached of each change the
//! active announces ([`announces`], [`crate::Core::apply_changes`]). Everything else,
//! and everything while the replica is not loaded, the server forwards to the active.
//!
//! Consistency (see `docs/design/0018-standby-reads.md`): the active announces a change
//! in the transaction that makes it, so a standby hears of it only if it committed, and
//! in commit order; a standby answers only while it holds a read lease, and the active's
//! write returns only once every standby holding one has applied the change (or lost
//! its lease). A revocation, a policy change or a transit key change is therefore in
//! force on every replica when the call that made it returns.

/// What the engine asks of the server's election.
pub trait HaControl: Send + Sync {
    /// `sys/step-down`: give up the leadership (a standby takes over; this replica does
    /// not compete again for a while).
    fn step_down(&self);
    /// What this replica knows of the cluster.
    fn status(&self) -> HaStatus;
}

/// The cluster as one replica sees it.
#[derive(Debug, Clone, Default)]
pub struct HaStatus {
    /// This replica's API address.
    pub api_address: String,
    /// This replica's cluster address.
    pub cluster_address: String,
    /// Whether this replica is the active one.
    pub is_self: bool,
    /// The active replica, if one holds the leadership.
    pub leader: Option<Leader>,
    /// The replicas that echoed lately (read by the active only; empty elsewhere).
    pub nodes: Vec<Node>,
}

/// A replica, as `sys/ha-status` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The machine it runs on.
    pub hostname: String,
    /// Its API address.
    pub api_address: String,
    /// Its cluster address.
    pub cluster_address: String,
    /// Whether it is the active replica.
    pub active_node: bool,
    /// When it last echoed, RFC 3339.
    pub last_echo: String,
    /// Its version.
    pub version: String,
}

/// The active replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leader {
    /// Its API address (where standbys redirect clients).
    pub api_address: String,
    /// Its cluster address (where standbys forward requests).
    pub cluster_address: String,
    /// When it became active, RFC 3339.
    pub active_since: String,
}

/// A replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not initialized, or sealed.
    Sealed,
    /// Unsealed, not active: forwards requests.
    Standby,
    /// Unsealed and serving.
    Active,
}

/// The storage a standby's replica state reads through: every write is refused as
/// [`StorageError::Fenced`](keyhaven_storage::StorageError::Fenced), so a request that
/// turns out to need one is forwarded, whatever the database's fence says (a replica
/// that never led may still write `sys/init`'s records).
#[derive(Debug)]
pub(crate) struct ReadOnly(pub(crate) std::sync::Arc<dyn keyhaven_storage::Store>);

#[async_trait::async_trait]
impl keyhaven_storage::Store for ReadOnly {
    fn read_only(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, keyhaven_storage::StorageError> {
        self.0.get(key).await
    }

    async fn put(&self, _: &str, _: Vec<u8>) -> Result<(), keyhaven_storage::StorageError> {
        Err(keyhaven_storage::StorageError::Fenced)
    }

    async fn delete(&self, _: &str) -> Result<(), keyhaven_storage::StorageError> {
        Err(keyhaven_storage::StorageError::Fenced)
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, keyhaven_storage::StorageError> {
        self.0.list_page(prefix, after, limit).await
    }

    async fn transact(
        &self,
        _: keyhaven_storage::Transaction,
    ) -> Result<keyhaven_storage::TxOutcome, keyhaven_storage::StorageError> {
        Err(keyhaven_storage::StorageError::Fenced)
    }
}

/// Which committed changes the active announces to standbys: those of keys whose value
/// a standby caches. Token entries when replaced or deleted (a new token was never
/// cached), policies, mount tables, the keyring and everything else under `core/`
/// except the token indexes; transit keys, aliases and mount configuration. Not
/// announced: KV data and metadata, leases, auth methods' data (a standby only answers
/// reads of it, straight from storage), database roles, cubbyholes.
pub fn announces(key: &str, write: keyhaven_storage::KeyWrite) -> bool {
    if key.starts_with(crate::token::ID_PREFIX) {
        return !matches!(write, keyhaven_storage::KeyWrite::Put { replaced: false });
    }
    !matches!(scope(key), Scope::Nothing)
}

/// What a standby drops when `key` changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    /// One token's cached entry (the hex hash).
    Token(&'a str),
    /// The cached policies and compiled ACLs.
    Policies,
    /// The whole state: it is loaded again.
    Everything,
    /// Nothing is cached of it.
    Nothing,
}

pub(crate) fn scope(key: &str) -> Scope<'_> {
    if let Some(hash) = key.strip_prefix(crate::token::ID_PREFIX) {
        return Scope::Token(hash);
    }
    if key.starts_with("core/token/") {
        // Accessors, parents, roles and the expiry and revocation indexes are read
        // from storage every time.
        return Scope::Nothing;
    }
    if key.starts_with(crate::policy::PREFIX) {
        return Scope::Policies;
    }
    if key.starts_with("core/") {
        return Scope::Everything;
    }
    if let Some(rest) = key.strip_prefix("logical/") {
        let inner = rest.split_once('/').map_or("", |(_, inner)| inner);
        // Transit caches its keys, aliases and configuration (`transit::key_path`,
        // `alias_path`, `CONFIG_KEY`); a KV mount's `config` is read every time, but
        // announcing it costs little.
        return if inner.starts_with("keys/") || inner.starts_with("aliases/") || inner == "config" {
            Scope::Everything
        } else {
            Scope::Nothing
        };
    }
    if key.starts_with("auth/") || key.starts_with("sys/") {
        return Scope::Nothing;
    }
    // Unknown: be safe.
    Scope::Everything
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhaven_storage::KeyWrite;

    #[test]
    fn token_entries_are_announced_unless_new() {
        let key = format!("{}{}", crate::token::ID_PREFIX, "ab12");
        assert!(!announces(&key, KeyWrite::Put { replaced: false }));
        assert!(announces(&key, KeyWrite::Put { replaced: true }));
        assert!(announces(&key, KeyWrite::Delete));
        assert_eq!(scope(&key), Scope::Token("ab12"));
        assert!(!announces("core/token/accessor/x", KeyWrite::Delete));
        assert!(!announces("core/token/expire/1/x", KeyWrite::Delete));
    }

    #[test]
    fn cached_state_is_announced() {
        let put = KeyWrite::Put { replaced: false };
        let policy = format!("{}{}", crate::policy::PREFIX, "dev");
        assert!(announces(&policy, put));
        assert_eq!(scope(&policy), Scope::Policies);
        for key in [
            crate::mounts::MOUNTS_PATH,
            crate::mounts::AUTH_PATH,
            "core/keyring",
            "core/audit/file/salt",
            "logical/0d7e/keys/payments",
            "logical/0d7e/aliases/pay",
            "logical/0d7e/config",
            "elsewhere/x",
        ] {
            assert!(announces(key, put), "{key}");
            assert_eq!(scope(key), Scope::Everything, "{key}");
        }
    }

    #[test]
    fn uncached_data_is_not_announced() {
        for key in [
            "logical/0d7e/versions/abc/3",
            "logical/0d7e/meta/app/db",
            "logical/0d7e/kv/app/db",
            "logical/0d7e/config/db",
            "logical/0d7e/role/app",
            "auth/77aa/role/web",
            "sys/expire/id/database/creds/app/x",
        ] {
            assert!(!announces(key, KeyWrite::Delete), "{key}");
        }
    }
}
