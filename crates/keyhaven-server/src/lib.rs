//! keyhaven's HTTP server and composition root.
//!
//! Builds storage, the engine and the `/v1/` router from a [`Config`], then serves it
//! over TLS (rustls) or, only in dev mode or with `tls_disable = true`, plain HTTP with a
//! loud warning. Protocol handling stays here; every decision about secrets is the
//! engine's.
#![forbid(unsafe_code)]

pub mod audit_file;
pub mod body;
pub mod config;
pub mod database_pg;
pub mod ha;
pub mod http;
pub mod json_limits;
mod listener;
pub mod outbound;
pub mod seal;
pub mod seal_config;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use keyhaven_engine::audit::{AuditBroker, AuditDevice};
use keyhaven_engine::{Clock, Core, CoreOptions, SystemClock};
use keyhaven_storage::{MemStore, Store};
use secrecy::SecretString;
use tokio::net::TcpListener;

pub use config::{
    Config, ConfigError, ListenerLimits, LogFormat, StorageConfig, TelemetryConfig, TlsConfig,
};
pub use seal_config::{SealKind, SealSettings};

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub mod internal {
    use std::path::Path;

    use crate::audit_file::{VerifyError, VerifyReport};

    /// Whether an `X-Keyhaven-Forwarded-For` value parses (address, time, HMAC).
    pub fn forwarded_for_parses(value: &str) -> bool {
        crate::ha::parse_forwarded_for(value).is_some()
    }

    /// The lines the file audit device writes for `records` (JSON objects), as a new chain.
    pub fn audit_chain(records: &[&[u8]]) -> Vec<u8> {
        crate::audit_file::new_chain(records)
    }

    /// [`crate::audit_file::verify`] of `bytes` as the whole file, reported as `path`.
    pub fn audit_verify_bytes(path: &Path, bytes: &[u8]) -> Result<VerifyReport, VerifyError> {
        crate::audit_file::verify_from(path, || Ok::<_, std::io::Error>(bytes))
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Storage could not be opened.
    #[error("cannot open storage: {0}")]
    Storage(#[source] keyhaven_storage::StorageError),
    /// The engine failed to start.
    #[error("cannot start the engine: {0}")]
    Engine(#[source] keyhaven_engine::EngineError),
    /// Binding or serving failed.
    #[error("listener error on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// Dev mode was asked to listen on a non-loopback address.
    #[error("dev mode listens on loopback only; {0} is not a loopback address")]
    DevNotLoopback(SocketAddr),
    /// An audit device could not start.
    #[error(transparent)]
    Audit(#[from] audit_file::AuditFileError),
}

/// Options of `keyhaven server --dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Root token id to use instead of a generated one.
    pub root_token_id: Option<SecretString>,
}

/// What dev mode created, to print for the operator.
pub struct DevCredentials {
    /// The single unseal key share, hex.
    pub unseal_key: SecretString,
    /// The root token.
    pub root_token: SecretString,
}

/// How often the server runs the engine's scheduled work (token expiry, key and static
/// credential rotation, scheduled deletion); OpenBao polls its rotation queue as often.
const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the lease scheduler looks for expired leases. A pass with nothing due reads
/// one short page of the expiry index.
const LEASE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A server bound to its address and ready to serve.
pub struct Server {
    listener: TcpListener,
    router: axum::Router,
    /// The engine's requests without the router ([`http::Direct`]); `None` when a
    /// layer wraps the router.
    direct: Option<http::Direct>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: listener::Limits,
    local_addr: SocketAddr,
    core: Arc<Core>,
    /// Closed (close record written) after the last request.
    audit_files: Vec<Arc<audit_file::FileDevice>>,
    /// Background work of the seal (token renewal), stopped at shutdown.
    seal_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// PostgreSQL: this server's hold on the database; serving stops if it is lost.
    storage_lock: Option<keyhaven_storage_sql::ExclusiveLock>,
    /// High availability: this replica's election.
    election: Option<Arc<ha::Election>>,
    /// High availability: answering requests without effects on a standby.
    standby_reads: Option<Arc<ha::StandbyReads>>,
}

impl Server {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests (for at most
    /// 30 s).
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        // Scheduled work (token expiry, key rotation, scheduled deletion) on a timer; the
        // engine decides with its own clock what is due.
        let core = self.core.clone();
        let maintenance = tokio::spawn(async move {
            let mut every = tokio::time::interval(MAINTENANCE_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = core.maintenance().await {
                    tracing::warn!(target: "keyhaven::server", error = %e, "maintenance failed");
                }
            }
        });
        let election = self
            .election
            .clone()
            .map(|e| tokio::spawn(e.run(self.core.clone())));
        let standby_reads = self
            .standby_reads
            .clone()
            .map(|r| tokio::spawn(r.run(self.core.clone())));
        let core = self.core.clone();
        let leases = tokio::spawn(async move {
            let mut every = tokio::time::interval(LEASE_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match core.expire_leases().await {
                    // A full pass: more may be due already.
                    Ok(pass)
                        if pass.revoked + pass.failed >= keyhaven_engine::lease::SWEEP_BATCH =>
                    {
                        every.reset_immediately();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(target: "keyhaven::server", error = %e, "lease expiry failed");
                    }
                }
            }
        });
        // Losing the database lock ends serving: another server may take the database.
        // The lock itself is held here until the last request is answered.
        let lock = self.storage_lock;
        let lock_lost = lock.as_ref().map(keyhaven_storage_sql::ExclusiveLock::lost);
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shutdown = {
            let lost = lost.clone();
            async move {
                match lock_lost {
                    Some(lock_lost) => {
                        tokio::select! {
                            () = shutdown => {}
                            () = lock_lost => lost.store(true, std::sync::atomic::Ordering::Release),
                        }
                    }
                    None => shutdown.await,
                }
            }
        };
        listener::serve(
            self.listener,
            self.tls,
            self.router,
            self.direct,
            self.limits,
            shutdown,
        )
        .await;
        if let Some(task) = election {
            task.abort();
        }
        if let Some(task) = standby_reads {
            task.abort();
        }
        if let Some(election) = &self.election {
            // Hand over at once rather than after the lock TTL.
            election.release(&self.core).await;
        }
        drop(lock);
        maintenance.abort();
        leases.abort();
        for task in &self.seal_tasks {
            task.abort();
        }
        for device in &self.audit_files {
            device.close().await;
        }
        if lost.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ServerError::Storage(
                keyhaven_storage::StorageError::unavailable(
                    "the database session holding this server's lock ended; stopped serving",
                ),
            ));
        }
        Ok(())
    }
}

/// The soft `RLIMIT_NOFILE`; `None` when unlimited or unknown.
fn descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Resolve the connection cap and say which limits are in force.
fn listener_limits(limits: &config::ListenerLimits) -> listener::Limits {
    let nofile = descriptor_limit();
    let max_connections = limits
        .max_connections
        .unwrap_or_else(|| config::default_max_connections(nofile));
    if let Some(n) = nofile
        && u64::try_from(max_connections).unwrap_or(u64::MAX)
            > n.saturating_sub(config::DESCRIPTOR_HEADROOM)
    {
        tracing::warn!(
            target: "keyhaven::server",
            max_connections,
            descriptor_limit = n,
            "listener.max_connections leaves fewer than {} of the process's descriptors for storage and audit files; raise the limit (ulimit -n) or lower max_connections",
            config::DESCRIPTOR_HEADROOM
        );
    }
    tracing::info!(
        target: "keyhaven::server",
        max_connections,
        http_read_header_timeout = ?limits.read_header_timeout,
        http_read_timeout = ?limits.read_timeout,
        http_idle_timeout = ?limits.idle_timeout,
        max_unauthenticated_request_size = limits.max_unauthenticated_request_size,
        max_request_body_memory = limits.max_request_body_memory,
        "listener limits"
    );
    listener::Limits {
        max_connections,
        read_header_timeout: limits.read_header_timeout,
        idle_timeout: limits.idle_timeout,
    }
}

/// Create `dir` and any missing parent for keyhaven's eyes only (0700), as the storage
/// and audit files need; existing directories keep their mode.
pub(crate) fn create_private_dirs(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Roots for `sslmode=verify-full`, from a PEM file.
fn pg_tls(ca_file: &std::path::Path) -> Result<keyhaven_storage_sql::PgTls, ServerError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let shown = ca_file.display();
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| ServerError::Tls(format!("storage.tls_ca_file {shown}: {e}")))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| ServerError::Tls(format!("storage.tls_ca_file {shown}: {e}")))?;
        roots.add(cert).map_err(|e| {
            ServerError::Tls(format!(
                "storage.tls_ca_file {shown}: unusable certificate: {e}"
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(ServerError::Tls(format!(
            "storage.tls_ca_file {shown}: no certificate in the file"
        )));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(keyhaven_storage_sql::PgTls::VerifyFull(Arc::new(config)))
}

/// `storage.password_file`: its first line (a Secret mounted as a file may or may not
/// end with a newline). Errors name the file, never its content.
fn read_password_file(path: &std::path::Path) -> Result<SecretString, ServerError> {
    let shown = path.display();
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| {
        ServerError::Config(ConfigError::Invalid(format!(
            "storage.password_file {shown}: {e}"
        )))
    })?);
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        ServerError::Config(ConfigError::Invalid(format!(
            "storage.password_file {shown}: not UTF-8 text"
        )))
    })?;
    let password = text.lines().next().unwrap_or("");
    if password.is_empty() {
        return Err(ServerError::Config(ConfigError::Invalid(format!(
            "storage.password_file {shown} is empty"
        ))));
    }
    Ok(SecretString::from(password.to_owned()))
}

/// What [`open_storage`] opened.
struct Opened {
    store: Arc<dyn Store>,
    /// A single PostgreSQL server's hold on the database.
    lock: Option<keyhaven_storage_sql::ExclusiveLock>,
    /// High availability: the PostgreSQL store, for the election.
    pg: Option<Arc<keyhaven_storage_sql::PgStore>>,
}

/// Open the configured storage; for PostgreSQL without high availability, also take the
/// database for this server alone (a second server on the same schema is refused). With
/// high availability, the connections carry `node_id` in their application name.
async fn open_storage(config: &Config, node_id: &str) -> Result<Opened, ServerError> {
    match &config.storage {
        StorageConfig::Postgres {
            connection,
            schema,
            max_connections,
            tls_ca_file,
            password_file,
        } => {
            use secrecy::ExposeSecret as _;
            let mut options = keyhaven_storage_sql::PgOptions::default();
            if let Some(path) = password_file {
                options.password = Some(read_password_file(path)?);
            }
            if config.ha.is_some() {
                options.application_name = Some(format!("keyhaven/{node_id}"));
            }
            options.schema.clone_from(schema);
            options.pool_size = *max_connections;
            if let Some(ca) = tls_ca_file {
                options.tls = pg_tls(ca)?;
            }
            let store = keyhaven_storage_sql::PgStore::connect(connection.expose_secret(), options)
                .await
                .map_err(ServerError::Storage)?;
            if config.ha.is_some() {
                let store = Arc::new(store);
                return Ok(Opened {
                    store: store.clone(),
                    lock: None,
                    pg: Some(store),
                });
            }
            let lock = store.hold_exclusive().await.map_err(ServerError::Storage)?;
            Ok(Opened {
                store: Arc::new(store),
                lock: Some(lock),
                pg: None,
            })
        }
        other => Ok(Opened {
            store: open_local_storage(other)?,
            lock: None,
            pg: None,
        }),
    }
}

fn open_local_storage(storage: &StorageConfig) -> Result<Arc<dyn Store>, ServerError> {
    match storage {
        StorageConfig::Memory => Ok(Arc::new(MemStore::new())),
        StorageConfig::Postgres { .. } => Err(ServerError::Storage(
            keyhaven_storage::StorageError::unavailable("postgresql is opened asynchronously"),
        )),
        StorageConfig::Sqlite { path, cache_bytes } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dirs(dir).map_err(|e| {
                    ServerError::Storage(keyhaven_storage::StorageError::Unavailable {
                        source: Box::new(e),
                    })
                })?;
            }
            let mut options = keyhaven_storage_sql::SqliteOptions::default();
            options.read_cache_bytes = *cache_bytes;
            let store = keyhaven_storage_sql::SqliteStore::open(path, options)
                .map_err(ServerError::Storage)?;
            Ok(Arc::new(store))
        }
    }
}

/// Build storage, engine and listener. With `dev`, initialize and unseal in memory and
/// mount KV v2 at `secret/`.
pub async fn build(
    config: &Config,
    dev: Option<DevOptions>,
) -> Result<(Server, Option<DevCredentials>), ServerError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if dev.is_some() && !config.address.ip().is_loopback() {
        return Err(ServerError::DevNotLoopback(config.address));
    }
    let node_id = uuid::Uuid::new_v4().to_string();
    let Opened {
        store: storage,
        lock: storage_lock,
        pg,
    } = open_storage(config, &node_id).await?;
    let (election, standby_reads) = match (&config.ha, pg) {
        (Some(ha), Some(pg)) => {
            let node = keyhaven_storage_sql::HaNode {
                id: node_id.clone(),
                api_address: ha.api_address.clone(),
                cluster_address: ha.cluster_address.clone(),
            };
            tracing::info!(target: "keyhaven::ha", node = %node_id, api_address = %ha.api_address, "high availability: this replica is a standby until it wins the leadership");
            // The active announces what standbys cache; they listen if they serve reads.
            pg.announce(keyhaven_engine::ha::announces);
            let reads = ha
                .standby_reads
                .then(|| Arc::new(ha::StandbyReads::new(pg.clone())));
            let session = keyhaven_storage_sql::HaSession::new(pg, node, ha.lock_ttl);
            (
                Some(Arc::new(ha::Election::new(session, ha.lock_ttl))),
                reads,
            )
        }
        _ => (None, None),
    };
    let mut audit_files = Vec::with_capacity(config.audit.len());
    for device in &config.audit {
        audit_files.push(audit_file::FileDevice::start(device.clone())?);
    }
    let devices: Vec<Arc<dyn AuditDevice>> = audit_files
        .iter()
        .map(|d| Arc::clone(d) as Arc<dyn AuditDevice>)
        .collect();
    let audit = Arc::new(AuditBroker::new(devices).with_clock(clock.clone()));
    let listener =
        TcpListener::bind(config.address)
            .await
            .map_err(|source| ServerError::Listen {
                address: config.address,
                source,
            })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            address: config.address,
            source,
        })?;
    let scheme = match config.tls {
        TlsConfig::Disabled => "http",
        TlsConfig::Files { .. } => "https",
    };
    let (seal, seal_tasks) = if dev.is_some() {
        (keyhaven_engine::seal::SealSetup::Shamir, Vec::new())
    } else {
        seal::setup(&config.seal)
    };
    let core = Core::with_options(
        storage,
        clock,
        CoreOptions {
            audit,
            outbound: Some(outbound::shared()),
            database: Some(database_pg::shared()),
            limits: config.limits,
            metrics: Arc::default(),
            unauthenticated_rekey: config.unauthenticated_rekey,
            unauthenticated_generate_root: config.unauthenticated_generate_root,
            api_address: config.ha.as_ref().map_or_else(
                || format!("{scheme}://{local_addr}"),
                |ha| ha.api_address.clone(),
            ),
            seal,
            ha: election
                .clone()
                .map(|e| e as Arc<dyn keyhaven_engine::ha::HaControl>),
        },
    )
    .await
    .map_err(ServerError::Engine)?;
    if core.is_initialized() {
        let status = core.seal_status();
        if status.migration {
            tracing::warn!(target: "keyhaven::seal", from = %status.kind, to = config.seal.type_name(), "a seal migration is pending: unseal with migrate=true and the shares of the old seal");
        }
        // Auto-unseal in the background (the listener answers, sealed, meanwhile); the
        // loop ends at once when there is nothing to do.
        tokio::spawn(seal::auto_unseal_loop(core.clone()));
    }
    let creds = match &dev {
        Some(opts) => {
            use secrecy::ExposeSecret;
            let id = opts
                .root_token_id
                .as_ref()
                .map(|s| s.expose_secret().to_owned());
            let init = core
                .dev_setup(id.as_deref())
                .await
                .map_err(ServerError::Engine)?;
            let share = init
                .shares
                .first()
                .map(|s| hex::encode(s.as_bytes()))
                .unwrap_or_default();
            Some(DevCredentials {
                unseal_key: SecretString::from(share),
                root_token: init.root_token,
            })
        }
        None => None,
    };
    let tls = match &config.tls {
        TlsConfig::Disabled => None,
        TlsConfig::Files {
            cert,
            key,
            client_certs,
        } => Some(tls::acceptor(cert, key, *client_certs)?),
    };
    let body_limits = body::BodyLimits::new(
        config.max_request_size,
        config.listener_limits.max_unauthenticated_request_size,
        config.listener_limits.read_timeout,
        config.listener_limits.max_request_body_memory,
    )
    .with_json(config.listener_limits.json);
    let state = http::AppState {
        core: core.clone(),
        storage_type: config.storage.type_name(),
        unauthenticated_metrics: config.telemetry.unauthenticated_metrics_access,
        body: body_limits.clone(),
    };
    let mut direct = Some(http::Direct::new(state.clone()));
    let mut router = http::router(state);
    if let (Some(election), Some(ha)) = (&election, &config.ha) {
        let roots = match &ha.tls_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ServerError::Tls(format!("ha.tls_ca_file {}: {e}", path.display()))
            })?),
            None => None,
        };
        let forwarder = ha::Forwarder::new(
            core.clone(),
            election.clone(),
            roots.as_deref(),
            body_limits,
            standby_reads.clone(),
        )
        .map_err(ServerError::Tls)?;
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(forwarder),
            ha::forward,
        ));
        // Every request goes through the forwarding layer.
        direct = None;
    }
    let limits = listener_limits(&config.listener_limits);
    Ok((
        Server {
            listener,
            router,
            direct,
            tls,
            limits,
            local_addr,
            core,
            audit_files,
            seal_tasks,
            storage_lock,
            election,
            standby_reads,
        },
        creds,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn missing_storage_directories_are_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::dev("127.0.0.1:0".parse().unwrap());
        config.storage = StorageConfig::Sqlite {
            path: tmp.path().join("a/b/keyhaven.db"),
            cache_bytes: 0,
        };
        let store = open_local_storage(&config.storage).unwrap();
        drop(store);
        for dir in ["a", "a/b"] {
            let mode = std::fs::metadata(tmp.path().join(dir))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{dir}: {mode:o}");
        }
    }
}
