//! High availability as the engine sees it: several replicas over one database, one of
//! them active. The server runs the election (`keyhaven-server`'s `ha` module) and tells
//! the engine when this replica becomes active ([`crate::Core::promote`]) or stops being
//! so ([`crate::Core::demote`]); the engine answers `sys/step-down`, `sys/leader` and
//! `sys/ha-status` through [`HaControl`].
//!
//! An unsealed replica that is not active is a *standby*: it holds the root key (checked
//! against the keyring when unsealed) but no keyring, tokens, policies or mounts, and
//! handles no request itself; the server forwards them to the active.

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
