//! [`PgStore`]: the PostgreSQL backend, for several keyhaven replicas over one database.
//!
//! - Keys are `BYTEA`, so the primary key orders them by bytes (no collation), the
//!   order `list_page` promises.
//! - Every write is a `SERIALIZABLE` transaction, retried on serialization failures
//!   and deadlocks. Conditions are read in the same transaction as the writes, so a
//!   create-only condition (`Absent`) cannot race with a concurrent create: one of the
//!   two transactions is aborted by PostgreSQL and retried, and then sees the other's
//!   key. A transaction whose condition fails is committed (it wrote nothing) rather
//!   than rolled back, so that PostgreSQL vouches for the consistency of what it read.
//! - A listing is one recursive query that probes the index once per child: a
//!   sub-folder with a million keys costs one probe.
//! - Migrations run at connect time in one transaction under an advisory lock, so
//!   replicas starting together apply them once.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};

use crate::pg_ha::Fence;
use keyhaven_storage::listing::{PageBuilder, Step, prefix_upper_bound};
use keyhaven_storage::{
    AnnounceRule, Condition, KeyWrite, Op, StorageError, Store, Transaction, TxOutcome,
    validate_key, validate_prefix,
};

/// Migration `i` takes the schema from version `i` to `i + 1`; `{schema}` is replaced
/// by the quoted schema name. Append only: never edit a released migration.
const MIGRATIONS: &[&str] = &[
    // 1: the key-value table.
    "CREATE TABLE {schema}.kv (
        key   BYTEA PRIMARY KEY,
        value BYTEA NOT NULL
    )",
    // 2: high availability, the one leadership row (see `pg_ha`). `term` grows by one at
    // every change of leader; writes of an active replica check it (fencing).
    "CREATE TABLE {schema}.ha_leader (
        id              SMALLINT PRIMARY KEY CHECK (id = 1),
        term            BIGINT NOT NULL,
        holder          TEXT NOT NULL,
        api_address     TEXT NOT NULL,
        cluster_address TEXT NOT NULL,
        backend_pid     INTEGER NOT NULL,
        backend_start   TIMESTAMPTZ NOT NULL,
        valid_until     TIMESTAMPTZ NOT NULL,
        acquired_at     TIMESTAMPTZ NOT NULL
    )",
    // 3: high availability, the replicas that echoed lately (`sys/ha-status`).
    "CREATE TABLE {schema}.ha_nodes (
        id              TEXT PRIMARY KEY,
        hostname        TEXT NOT NULL,
        api_address     TEXT NOT NULL,
        cluster_address TEXT NOT NULL,
        version         TEXT NOT NULL,
        last_echo       TIMESTAMPTZ NOT NULL
    )",
    // 4: high availability, standbys' read leases (see `pg_readers`).
    "CREATE TABLE {schema}.ha_readers (
        id          TEXT PRIMARY KEY,
        valid_until TIMESTAMPTZ NOT NULL,
        revoked     BOOLEAN NOT NULL
    )",
];

/// How a [`PgStore`] protects its connections to the database.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum PgTls {
    /// Plain TCP or a unix socket (libpq's `sslmode=disable`).
    #[default]
    Disable,
    /// TLS, with the server's certificate verified against the configuration's roots and
    /// its name against the host connected to (libpq's `sslmode=verify-full`).
    VerifyFull(Arc<rustls::ClientConfig>),
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PgTls::Disable => "Disable",
            PgTls::VerifyFull(_) => "VerifyFull",
        })
    }
}

/// Tuning and placement of a [`PgStore`]. Change single fields on a default value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PgOptions {
    /// The PostgreSQL schema that holds keyhaven's tables (default `keyhaven`); created
    /// if missing. Lower-case ASCII letters, digits and `_`, not starting with a digit,
    /// at most 63 bytes.
    pub schema: String,
    /// Most connections in the pool (default 16).
    pub pool_size: usize,
    /// How often a write is retried after a serialization failure or deadlock
    /// (default 64) before [`StorageError::Unavailable`] is returned.
    pub max_retries: u32,
    /// How long to wait for a pooled connection (default 10 s).
    pub acquire_timeout: Duration,
    /// TLS to the database (default: none).
    pub tls: PgTls,
    /// The `application_name` of every connection, replacing the connection string's.
    /// `None` (the default): the connection string's, or `keyhaven`. With high
    /// availability each replica names its connections `keyhaven/<node id>`, so that a
    /// replica taking over can end the sessions of a stalled predecessor.
    pub application_name: Option<String>,
    /// The password, replacing one in the connection string (`storage.password_file`).
    pub password: Option<secrecy::SecretString>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: "keyhaven".to_owned(),
            pool_size: 16,
            max_retries: 64,
            acquire_timeout: Duration::from_secs(10),
            tls: PgTls::Disable,
            application_name: None,
            password: None,
        }
    }
}

/// The SQL of one schema, built once.
struct Statements {
    get: String,
    select_many: String,
    upsert_many: String,
    delete_many: String,
    list: String,
    fence: String,
}

impl Statements {
    fn new(schema: &str) -> Self {
        let kv = format!("{schema}.kv");
        Statements {
            get: format!("SELECT value FROM {kv} WHERE key = $1"),
            select_many: format!("SELECT key, value FROM {kv} WHERE key = ANY($1::bytea[])"),
            upsert_many: format!(
                "INSERT INTO {kv} (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ),
            delete_many: format!("DELETE FROM {kv} WHERE key = ANY($1::bytea[])"),
            // A key-share lock: renewals (no-key updates) pass, a takeover (which locks
            // the row FOR UPDATE first) waits for every write in flight, and a write that
            // starts after a takeover sees the new term (or fails to serialize, and is
            // retried and then sees it).
            fence: format!("SELECT term FROM {schema}.ha_leader WHERE id = 1 FOR KEY SHARE"),
            // One index probe per child: from the first key of a child, the next probe
            // starts past it (`key || 0x00`) or, for a folder, past the whole folder
            // (`prefix || head || '0'`, '0' being '/' + 1). $1 lower bound, $2 upper
            // bound (exclusive), $3 length of the prefix + 1, $4 row limit.
            list: format!(
                "WITH RECURSIVE walk(k) AS (
                    (SELECT key FROM {kv} WHERE key >= $1::bytea AND key < $2::bytea
                     ORDER BY key LIMIT 1)
                  UNION ALL
                    SELECT (SELECT key FROM {kv}
                            WHERE key >= CASE
                                WHEN position('\\x2f'::bytea IN substring(walk.k FROM $3::int4)) > 0
                                THEN substring(walk.k FROM 1 FOR $3::int4 - 2
                                     + position('\\x2f'::bytea IN substring(walk.k FROM $3::int4)))
                                     || '\\x30'::bytea
                                ELSE walk.k || '\\x00'::bytea END
                              AND key < $2::bytea
                            ORDER BY key LIMIT 1)
                    FROM walk WHERE walk.k IS NOT NULL
                )
                SELECT k FROM walk WHERE k IS NOT NULL LIMIT $4::int8"
            ),
        }
    }
}

/// A [`Store`] in a PostgreSQL database.
///
/// Connect once per process with [`PgStore::connect`] and share it through an `Arc`.
/// Connections are plain TCP, unix sockets, or TLS with the server verified
/// ([`PgTls::VerifyFull`]).
pub struct PgStore {
    pub(crate) pool: Pool,
    sql: Statements,
    schema: String,
    max_retries: u32,
    pub(crate) fence: Arc<Fence>,
    /// How to open a connection outside the pool ([`PgStore::listen`]).
    pub(crate) pg_config: tokio_postgres::Config,
    pub(crate) tls: PgTls,
    /// The `LISTEN`/`NOTIFY` channel of this schema.
    pub(crate) channel: String,
    /// Which changes the active announces on [`Self::channel`] ([`PgStore::announce`]).
    announce: std::sync::OnceLock<AnnounceRule>,
    /// Standbys' read leases and the active's barriers.
    pub(crate) readers: crate::pg_readers::Readers,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .field("closed", &self.pool.is_closed())
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed, before mapping to [`StorageError`].
pub(crate) enum Failure {
    Pool(PoolError),
    Db(tokio_postgres::Error),
    /// The fence refused the write (high availability: not the active replica).
    Fenced,
    /// `COMMIT` failed: whether the transaction committed is unknown unless PostgreSQL
    /// said it rolled back.
    Commit(tokio_postgres::Error),
}

impl From<PoolError> for Failure {
    fn from(err: PoolError) -> Self {
        Failure::Pool(err)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(err: tokio_postgres::Error) -> Self {
        Failure::Db(err)
    }
}

impl Failure {
    fn code(&self) -> Option<&SqlState> {
        match self {
            Failure::Db(err) | Failure::Commit(err) | Failure::Pool(PoolError::Backend(err)) => {
                err.code()
            }
            Failure::Pool(_) | Failure::Fenced => None,
        }
    }

    /// The connection was dead before the statement ran (the database restarted, or
    /// ended the session): nothing was done, and another connection may succeed. A
    /// failed `COMMIT` is never one of these: the transaction may have committed.
    fn is_lost_connection(&self) -> bool {
        let err = match self {
            Failure::Db(err) | Failure::Pool(PoolError::Backend(err)) => err,
            Failure::Pool(_) | Failure::Fenced | Failure::Commit(_) => return false,
        };
        err.is_closed()
            || matches!(
                err.code(),
                Some(code) if *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
            )
    }

    fn is_retryable(&self) -> bool {
        matches!(
            self.code(),
            Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        )
    }

    fn into_storage(self) -> StorageError {
        if let Some(code) = self.code()
            && (*code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED)
        {
            let detail = format!("postgresql reports corruption (SQLSTATE {})", code.code());
            return StorageError::Corrupt { detail };
        }
        match self {
            Failure::Pool(PoolError::Closed) => StorageError::Closed,
            Failure::Pool(err) => StorageError::unavailable(err),
            Failure::Db(err) | Failure::Commit(err) => StorageError::unavailable(err),
            Failure::Fenced => StorageError::Fenced,
        }
    }
}

pub(crate) fn fail(err: impl Into<Failure>) -> StorageError {
    err.into().into_storage()
}

/// Check and quote a schema name.
fn quote_schema(schema: &str) -> Result<String, StorageError> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(StorageError::unavailable(format!(
            "invalid postgresql schema name {schema:?}: use lower-case letters, digits and _"
        )));
    }
    Ok(format!("\"{schema}\""))
}

/// libpq's `sslmode`, of the values keyhaven accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    /// `disable`: no TLS.
    Disable,
    /// `verify-full`: TLS, the certificate checked against trusted roots and the host name.
    VerifyFull,
}

/// A connection string as keyhaven uses it: its `sslmode` taken out (keyhaven applies
/// it, with its own TLS), what it asked for, and whether every host is on this machine.
pub struct PgConnectionString {
    /// The connection string without `sslmode`.
    pub conninfo: String,
    /// The `sslmode` it gave, if any.
    pub sslmode: Option<PgSslMode>,
    /// Every host is a unix socket or a loopback address.
    pub local_only: bool,
}

impl std::fmt::Debug for PgConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string may hold a password.
        f.debug_struct("PgConnectionString")
            .field("sslmode", &self.sslmode)
            .field("local_only", &self.local_only)
            .finish_non_exhaustive()
    }
}

/// Check a libpq-style connection string (URL or `key=value` form) for keyhaven. Errors
/// name what is wrong and never repeat the string (it may hold a password).
///
/// `sslmode` may only be `disable` or `verify-full`: `allow`, `prefer` and `require`
/// accept any certificate and `verify-ca` any host name, which let a machine in the
/// middle read every stored ciphertext and the database password.
pub fn check_connection_string(text: &str) -> Result<PgConnectionString, String> {
    let text = text.trim();
    let mut sslmode_value = None;
    let conninfo = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        match text.split_once('?') {
            None => text.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    match pair.split_once('=') {
                        Some(("sslmode", v)) => sslmode_value = Some(v.to_owned()),
                        _ => kept.push(pair),
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for word in text.split_whitespace() {
            match word.split_once('=') {
                Some(("sslmode", v)) => sslmode_value = Some(v.trim_matches('\'').to_owned()),
                _ => kept.push(word),
            }
        }
        if sslmode_value.is_some() {
            kept.join(" ")
        } else {
            text.to_owned()
        }
    };
    let sslmode = match sslmode_value.as_deref() {
        None => None,
        Some("disable") => Some(PgSslMode::Disable),
        Some("verify-full") => Some(PgSslMode::VerifyFull),
        Some(weak @ ("allow" | "prefer" | "require" | "verify-ca")) => {
            return Err(format!(
                "sslmode={weak} does not check whom it talks to; use sslmode=verify-full (with \
                 storage.tls_ca_file), or sslmode=disable for a database on this machine or a \
                 protected network"
            ));
        }
        Some(_) => {
            return Err("sslmode must be disable or verify-full".to_owned());
        }
    };
    let config: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("not a PostgreSQL connection string: {e}"))?;
    if config.get_hosts().is_empty() {
        return Err("the connection string names no host".to_owned());
    }
    let local_only = config.get_hosts().iter().all(|host| match host {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }) && config
        .get_hostaddrs()
        .iter()
        .all(std::net::IpAddr::is_loopback);
    Ok(PgConnectionString {
        conninfo,
        sslmode,
        local_only,
    })
}

/// How often the session holding an [`ExclusiveLock`] is checked.
const LOCK_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// A schema held by this process alone ([`PgStore::hold_exclusive`]); released when
/// dropped.
#[derive(Debug)]
pub struct ExclusiveLock {
    lost: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ExclusiveLock {
    /// A future that resolves once the session holding the lock has ended (the lock is
    /// gone); it does not hold the lock.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }
}

impl Drop for ExclusiveLock {
    fn drop(&mut self) {
        // Ends the session, which releases the lock.
        self.task.abort();
    }
}

/// A stable advisory-lock id for migrating `schema` (FNV-1a of the name).
fn migration_lock_id(schema: &str) -> i64 {
    lock_id(b"keyhaven-migrate:", schema)
}

/// A stable advisory-lock id held by the one server using `schema`.
fn exclusive_lock_id(schema: &str) -> i64 {
    lock_id(b"keyhaven-active:", schema)
}

fn lock_id(purpose: &[u8], schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in purpose.iter().chain(schema.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

impl PgStore {
    /// The schema version this build creates, migrates to and accepts at most.
    pub const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;

    /// Connect to PostgreSQL with a libpq-style connection string
    /// (`host=… user=… dbname=…` or `postgresql://…`), create the schema if needed and
    /// apply pending migrations. Fails if the server cannot be reached, or with
    /// [`StorageError::SchemaTooNew`] if a newer keyhaven migrated the schema.
    pub async fn connect(config: &str, options: PgOptions) -> Result<PgStore, StorageError> {
        let schema = quote_schema(&options.schema)?;
        let mut pg_config: tokio_postgres::Config = config.parse().map_err(fail)?;
        match &options.application_name {
            Some(name) => {
                pg_config.application_name(name);
            }
            None if pg_config.get_application_name().is_none() => {
                pg_config.application_name("keyhaven");
            }
            None => {}
        }
        if let Some(password) = &options.password {
            pg_config.password(secrecy::ExposeSecret::expose_secret(password).as_bytes());
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        pg_config.ssl_mode(match &options.tls {
            PgTls::Disable => tokio_postgres::config::SslMode::Disable,
            PgTls::VerifyFull(_) => tokio_postgres::config::SslMode::Require,
        });
        let manager = match &options.tls {
            PgTls::Disable => Manager::from_config(pg_config.clone(), NoTls, manager_config),
            PgTls::VerifyFull(client) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**client).clone());
                Manager::from_config(pg_config.clone(), tls, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.acquire_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(StorageError::unavailable)?;
        let channel = format!(
            "keyhaven_{:016x}",
            lock_id(b"keyhaven changes", &options.schema).cast_unsigned()
        );
        let store = PgStore {
            pool,
            sql: Statements::new(&schema),
            schema: options.schema.clone(),
            max_retries: options.max_retries,
            fence: Arc::new(Fence::default()),
            pg_config,
            tls: options.tls.clone(),
            readers: crate::pg_readers::Readers::new(&schema, &channel),
            channel,
            announce: std::sync::OnceLock::new(),
        };
        store.migrate(&schema).await?;
        Ok(store)
    }

    /// Hold this schema for this process alone, until the returned lock is dropped or its
    /// session ends: a PostgreSQL session-level advisory lock on a connection taken out of
    /// the pool. A second holder is refused at once. [`ExclusiveLock::lost`] resolves if
    /// the session ends (the database restarted, the connection dropped): the lock is gone
    /// then, and the caller must stop writing.
    pub async fn hold_exclusive(&self) -> Result<ExclusiveLock, StorageError> {
        let object = self.pool.get().await.map_err(fail)?;
        let client = deadpool_postgres::Object::take(object);
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&exclusive_lock_id(&self.schema)],
            )
            .await
            .map_err(fail)?;
        let held: bool = row.try_get(0).map_err(fail)?;
        if !held {
            return Err(StorageError::unavailable(format!(
                "another keyhaven server is active on this database (schema {:?}): run one \
                 server per database",
                self.schema
            )));
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOCK_CHECK_INTERVAL).await;
                let alive = !client.is_closed()
                    && tokio::time::timeout(LOCK_CHECK_INTERVAL, client.simple_query("SELECT 1"))
                        .await
                        .is_ok_and(|r| r.is_ok());
                if !alive {
                    tracing::error!(
                        target: "keyhaven::storage",
                        "the database session holding this server's lock ended"
                    );
                    let _ = tx.send(true);
                    return;
                }
            }
        });
        Ok(ExclusiveLock { lost: rx, task })
    }

    /// High availability: announce the changes `rule` selects on this schema's channel,
    /// in the transaction that makes them, so that standbys ([`PgStore::listen`]) drop
    /// what they cached. Only fenced writes (of an active replica) announce. Set once;
    /// later calls are ignored.
    pub fn announce(&self, rule: AnnounceRule) {
        let _ = self.announce.set(rule);
    }

    /// How this store's writes are fenced (high availability).
    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    /// The PostgreSQL schema this store uses.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Close the pool: connections close once returned, and later calls return
    /// [`StorageError::Closed`]. Calls in flight finish.
    pub fn close(&self) {
        self.pool.close();
    }

    async fn migrate(&self, schema: &str) -> Result<(), StorageError> {
        let mut client = self.pool.get().await.map_err(fail)?;
        let tx = client.transaction().await.map_err(fail)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&migration_lock_id(&self.schema)],
        )
        .await
        .map_err(fail)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version    BIGINT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(fail)?;
        let row = tx
            .query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
                &[],
            )
            .await
            .map_err(fail)?;
        let version: i64 = row.try_get(0).map_err(fail)?;
        let version = u64::try_from(version).map_err(|_| StorageError::Corrupt {
            detail: format!("negative schema version {version}"),
        })?;
        if version > Self::SCHEMA_VERSION {
            return Err(StorageError::SchemaTooNew {
                found: version,
                supported: Self::SCHEMA_VERSION,
            });
        }
        let pending = usize::try_from(version).unwrap_or(usize::MAX);
        for (from, migration) in MIGRATIONS.iter().enumerate().skip(pending) {
            tx.batch_execute(&migration.replace("{schema}", schema))
                .await
                .map_err(fail)?;
            let to = i64::try_from(from + 1).unwrap_or(i64::MAX);
            tx.execute(
                &format!("INSERT INTO {schema}.schema_migrations (version) VALUES ($1)"),
                &[&to],
            )
            .await
            .map_err(fail)?;
            tracing::info!(from, to, "applied postgresql schema migration");
        }
        tx.commit().await.map_err(fail)
    }

    /// One attempt at `tx` in a SERIALIZABLE transaction; whether it announced changes
    /// with its outcome.
    async fn transact_once(&self, tx: &Transaction) -> Result<(TxOutcome, bool), Failure> {
        let term = self.fence.term();
        if term < 0 {
            // A standby: it writes nothing.
            return Err(Failure::Fenced);
        }
        let mut client = self.pool.get().await?;
        let db = client
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()
            .await?;
        if term != crate::pg_ha::UNFENCED {
            // The first statement, so the transaction's snapshot is taken with the lock.
            let stmt = db.prepare_cached(&self.sql.fence).await?;
            let current: Option<i64> = match db.query_opt(&stmt, &[]).await? {
                Some(row) => Some(row.try_get(0)?),
                None => None,
            };
            if current != Some(term) {
                drop(db);
                self.fence.fenced_out(term);
                return Err(Failure::Fenced);
            }
        }
        if !tx.conditions.is_empty() {
            let keys: Vec<&[u8]> = tx.conditions.iter().map(|c| c.key().as_bytes()).collect();
            let stmt = db.prepare_cached(&self.sql.select_many).await?;
            let mut current: HashMap<Vec<u8>, Vec<u8>> = HashMap::with_capacity(keys.len());
            for row in db.query(&stmt, &[&keys]).await? {
                current.insert(row.try_get(0)?, row.try_get(1)?);
            }
            let failed = tx.conditions.iter().position(|condition| match condition {
                Condition::Absent { key } => current.contains_key(key.as_bytes()),
                Condition::Equals { key, value } => current.get(key.as_bytes()) != Some(value),
            });
            if let Some(index) = failed {
                // Commit the read-only transaction so that a serialization failure
                // (the read was not consistent) surfaces and the attempt is retried.
                db.commit().await.map_err(Failure::Commit)?;
                return Ok((TxOutcome::ConditionFailed { index }, false));
            }
        }
        // Ops apply in order, so each key ends with its last op.
        let mut last: BTreeMap<&str, Option<&Vec<u8>>> = BTreeMap::new();
        for op in &tx.ops {
            match op {
                Op::Put { key, value } => last.insert(key, Some(value)),
                Op::Delete { key } => last.insert(key, None),
            };
        }
        let mut announced = false;
        if term != crate::pg_ha::UNFENCED
            && let Some(rule) = self.announce.get()
            && let Some(payload) = announcement(*rule, &tx.conditions, &last)
        {
            // Delivered to the standbys when (and only if) this transaction commits, in
            // commit order.
            let stmt = db.prepare_cached("SELECT pg_notify($1, $2)").await?;
            db.execute(&stmt, &[&self.channel, &payload]).await?;
            announced = true;
        }
        let (mut put_keys, mut put_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for (key, value) in last {
            match value {
                Some(value) => {
                    put_keys.push(key.as_bytes());
                    put_values.push(value.as_slice());
                }
                None => deletes.push(key.as_bytes()),
            }
        }
        if !deletes.is_empty() {
            let stmt = db.prepare_cached(&self.sql.delete_many).await?;
            db.execute(&stmt, &[&deletes]).await?;
        }
        if !put_keys.is_empty() {
            let stmt = db.prepare_cached(&self.sql.upsert_many).await?;
            db.execute(&stmt, &[&put_keys, &put_values]).await?;
        }
        db.commit().await.map_err(Failure::Commit)?;
        Ok((TxOutcome::Committed, announced))
    }

    async fn write(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        let mut attempt = 0u32;
        loop {
            match self.transact_once(&tx).await {
                Ok((outcome, announced)) => {
                    if announced {
                        // Not acknowledged until every standby answering requests has
                        // applied it (`pg_readers`).
                        self.settle().await?;
                    }
                    return Ok(outcome);
                }
                Err(failure) if failure.is_retryable() && attempt < self.max_retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(failure)
                    if failure.is_lost_connection() && attempt < LOST_CONNECTION_RETRIES =>
                {
                    attempt += 1;
                    drop_idle(&self.pool);
                }
                Err(failure) => return Err(failure.into_storage()),
            }
        }
    }
}

/// The payload announcing what `tx` changes, if `rule` selects any of it: `k` and the
/// keys, one per line, or `*` (everything) when they do not fit PostgreSQL's 8000 bytes.
fn announcement(
    rule: AnnounceRule,
    conditions: &[Condition],
    last: &BTreeMap<&str, Option<&Vec<u8>>>,
) -> Option<String> {
    let mut payload = String::new();
    for (key, value) in last {
        if rule(key, KeyWrite::of(conditions, key, value.is_none())) {
            payload.push(if payload.is_empty() { 'k' } else { '\n' });
            payload.push_str(key);
        }
    }
    if payload.len() > crate::pg_changes::MAX_PAYLOAD {
        return Some("*".to_owned());
    }
    (!payload.is_empty()).then_some(payload)
}

/// How often a call is sent again on another connection when the first was found dead
/// (after a database restart every pooled connection is).
const LOST_CONNECTION_RETRIES: u32 = 4;

/// Close every idle connection of `pool`, after one was found dead. A dead connection
/// nearly always means the server ended them all (a restart, a fail-over, an operator
/// ending sessions), and a pooled connection is only known dead once its end has been
/// read: under load, several retries in a row could each take one that is not yet
/// known. The retry then opens a new connection. Connections in use are not touched:
/// their calls find out and retry for themselves.
fn drop_idle(pool: &Pool) {
    pool.retain(|_, _| false);
}

/// A read, sent again on another connection while the one it got was found dead (at
/// most [`LOST_CONNECTION_RETRIES`] times): a read has no effect to repeat.
async fn reading<T, F, Fut>(pool: &Pool, mut once: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut attempt = 0;
    loop {
        match once().await {
            Err(failure) if failure.is_lost_connection() && attempt < LOST_CONNECTION_RETRIES => {
                attempt += 1;
                drop_idle(pool);
            }
            other => return other.map_err(Failure::into_storage),
        }
    }
}

/// Exponential backoff with jitter: up to 1 ms × 2^attempt, capped at 50 ms.
fn backoff(attempt: u32) -> Duration {
    let ceiling_us = (1000u64 << attempt.min(6)).min(50_000);
    let jitter = RandomState::new().build_hasher().finish();
    Duration::from_micros(ceiling_us / 2 + jitter % (ceiling_us / 2 + 1))
}

#[async_trait]
impl Store for PgStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        validate_key(key)?;
        reading(&self.pool, || async {
            let client = self.pool.get().await?;
            let stmt = client.prepare_cached(&self.sql.get).await?;
            let row = client.query_opt(&stmt, &[&key.as_bytes()]).await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        validate_key(key)?;
        let op = Op::Put {
            key: key.to_owned(),
            value,
        };
        self.write(Transaction {
            conditions: vec![],
            ops: vec![op],
        })
        .await
        .map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        let op = Op::Delete {
            key: key.to_owned(),
        };
        self.write(Transaction {
            conditions: vec![],
            ops: vec![op],
        })
        .await
        .map(|_| ())
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        validate_prefix(prefix)?;
        let (mut page, lower) = PageBuilder::new(prefix, after, limit);
        if page.is_full() {
            return Ok(page.into_names());
        }
        // UTF-8 never contains 0xff, so [0xff] is above every key of the root.
        let upper = prefix_upper_bound(prefix).unwrap_or_else(|| vec![0xff]);
        let start = i32::try_from(prefix.len() + 1).map_err(StorageError::unavailable)?;
        // One more row than names: the key equal to the prefix yields no name.
        let rows = i64::try_from(limit.min(keyhaven_storage::MAX_LIST_PAGE) + 1)
            .map_err(StorageError::unavailable)?;
        let found = reading(&self.pool, || async {
            let client = self.pool.get().await?;
            let stmt = client.prepare_cached(&self.sql.list).await?;
            Ok(client
                .query(&stmt, &[&lower.as_bytes(), &upper, &start, &rows])
                .await?)
        })
        .await?;
        for row in found {
            let key: &[u8] = row.try_get(0).map_err(fail)?;
            let key = std::str::from_utf8(key).map_err(|_| StorageError::Corrupt {
                detail: "a stored key is not UTF-8".to_owned(),
            })?;
            // The query already skipped past each folder; the builder names the rows.
            if page.push(key) == Step::Done {
                break;
            }
        }
        Ok(page.into_names())
    }

    async fn transact(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        for condition in &tx.conditions {
            validate_key(condition.key())?;
        }
        for op in &tx.ops {
            validate_key(op.key())?;
        }
        self.write(tx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert_eq!(quote_schema("keyhaven").unwrap(), "\"keyhaven\"");
        assert_eq!(quote_schema("kh_test_12").unwrap(), "\"kh_test_12\"");
        for bad in [
            "",
            "Keyhaven",
            "a-b",
            "1abc",
            "a\"b",
            "a;drop",
            &"x".repeat(64),
        ] {
            assert!(quote_schema(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..100 {
            let delay = backoff(attempt);
            assert!(delay <= Duration::from_millis(50), "{delay:?}");
            assert!(delay >= Duration::from_micros(500), "{delay:?}");
        }
    }

    #[test]
    fn lock_ids_differ_by_schema() {
        assert_ne!(migration_lock_id("a"), migration_lock_id("b"));
        assert_eq!(migration_lock_id("a"), migration_lock_id("a"));
    }
}
