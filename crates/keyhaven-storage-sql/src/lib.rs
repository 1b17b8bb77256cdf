//! SQL implementations of keyhaven's [`Store`](keyhaven_storage::Store) trait.
//!
//! [`SqliteStore`] is the embedded default: one database file in WAL mode with
//! `synchronous=FULL`, one writer thread that group-commits concurrent writes, and a
//! small pool of read-only connections.
//!
//! `PgStore` (cargo feature `postgres`, on by default) is the HA backend: several keyhaven replicas
//! over one PostgreSQL database, with serializable transactions.
//!
//! Invariants:
//! - an acknowledged write (put, delete, committed transaction) has been fsynced;
//! - a read that starts after a write was acknowledged sees that write;
//! - the schema is versioned; a database written by a newer keyhaven is refused, never
//!   opened and possibly damaged;
//! - the database files are created owner-only (0600), and a file that others can
//!   write is refused;
//! - values are opaque: they never reach error messages, logs or `Debug` output.
//!
//! Non-goals: sharing one SQLite file between several keyhaven processes (it works,
//! serialised by SQLite's locks, but is neither tuned nor tested), replication (use the
//! PostgreSQL backend for HA), and encryption at rest (values arrive encrypted by the
//! barrier).
#![forbid(unsafe_code)]

#[cfg(feature = "postgres")]
mod pg_changes;
#[cfg(feature = "postgres")]
mod pg_ha;
#[cfg(feature = "postgres")]
mod pg_readers;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

#[cfg(feature = "postgres")]
pub use pg_changes::{Listener, Notice, parse_notice};
#[cfg(feature = "postgres")]
pub use pg_ha::{Fence, HaNode, HaSession, LeaderInfo, NodeInfo, describe};
#[cfg(feature = "postgres")]
pub use pg_readers::{ACK_WAIT, READ_LEASE_TTL, parse_ack};
#[cfg(feature = "postgres")]
pub use postgres::{
    ExclusiveLock, PgConnectionString, PgOptions, PgSslMode, PgStore, PgTls,
    check_connection_string,
};
pub use sqlite::{ConnectionRole, ConnectionSettings, SqliteOptions, SqliteStore, WriteStats};
