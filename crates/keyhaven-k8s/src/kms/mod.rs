//! The Kubernetes KMS v2 plugin (`keyhaven kms-plugin`): the kube-apiserver asks it to wrap
//! and unwrap the 32-byte seeds it derives its data keys from; the plugin does so with a
//! keyhaven transit key, over the HTTP API.
//!
//! Invariants:
//! - `Status` does no I/O: a background refresher reads the transit key every
//!   `refresh_interval` and `Status` answers from that state. A failed refresh changes
//!   the health, never the `key_id`: only a successful read of a newer (or re-created)
//!   key version does ([`envelope`] describes the id).
//! - `Encrypt` wraps with the version `Status` names (`key_version` is sent), so the
//!   `key_id` it returns always equals `Status`'s.
//! - Seeds wrapped or unwrapped are kept in a bounded, zeroizing in-memory cache keyed by
//!   ciphertext ([`cache`]), so `Decrypt` of anything seen keeps working while keyhaven is
//!   down or sealed; the cache honours `min_decryption_version` as last read.
//! - No seed, token or JWT appears in a log line, error or `Debug` output.
//! - The socket is mode 0600 in a directory no other user can write to.

pub mod cache;
pub mod config;
pub mod envelope;
pub mod metrics;
pub mod plugin;

use std::future::Future;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::proto::kms::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use crate::proto::kms::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, StatusRequest, StatusResponse,
};
use crate::socket::{self, SocketError};
pub use config::{Config, RawConfig};
use metrics::Method;
pub use plugin::{Auth, Plugin, Settings};

/// How long calls in flight may take to finish once the plugin is asked to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The version `Status` reports.
pub const API_VERSION: &str = "v2";

/// Why the plugin could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The configuration is not usable.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The socket's directory is writable by other users.
    #[error(
        "socket directory {0} is writable by other users, who could replace the socket: make it 0700 or 0755 (owned by the plugin's user)"
    )]
    SocketDir(std::path::PathBuf),
    /// The keyhaven client could not be built (address, CA file).
    #[error("cannot set up the keyhaven client: {0}")]
    Client(#[from] keyhaven_client::ClientError),
    /// The metrics listener could not be bound.
    #[error("cannot listen for metrics on {address}: {source}")]
    Metrics {
        /// The address.
        address: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The gRPC front of a [`Plugin`].
#[derive(Debug, Clone)]
pub struct Service {
    plugin: Arc<Plugin>,
}

impl Service {
    /// A service answering from `plugin`.
    pub fn new(plugin: Arc<Plugin>) -> Service {
        Service { plugin }
    }

    fn done<T>(&self, method: Method, started: Instant, result: &Result<T, Status>) {
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.plugin.metrics.record(method, code, started.elapsed());
        if let Err(status) = result {
            tracing::debug!(
                target: "keyhaven::kms",
                ?method,
                code = ?status.code(),
                message = %status.message(),
                "call failed"
            );
        }
    }
}

#[tonic::async_trait]
impl KeyManagementService for Service {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let started = Instant::now();
        let (healthz, key_id) = self.plugin.status();
        let result = Ok(StatusResponse {
            version: API_VERSION.to_owned(),
            healthz,
            key_id,
        });
        self.done(Method::Status, started, &result);
        result.map(Response::new)
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = self
            .plugin
            .decrypt(&request.ciphertext, &request.key_id)
            .await
            .map(|seed| DecryptResponse {
                // The response buffer leaves our hands here; the cache's copy is zeroized.
                plaintext: seed.to_vec(),
            });
        self.done(Method::Decrypt, started, &result);
        result.map(Response::new)
    }

    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        let started = Instant::now();
        let mut request = request.into_inner();
        let plaintext = zeroize::Zeroizing::new(std::mem::take(&mut request.plaintext));
        let result = self
            .plugin
            .encrypt(&plaintext)
            .await
            .map(|(ciphertext, key_id)| EncryptResponse {
                ciphertext,
                key_id,
                annotations: [(
                    plugin::KEY_ANNOTATION.to_owned(),
                    self.plugin.key_path().as_bytes().to_vec(),
                )]
                .into_iter()
                .collect(),
            });
        self.done(Method::Encrypt, started, &result);
        result.map(Response::new)
    }
}

/// Refuses a socket directory that other users may write to (unless sticky, like /tmp):
/// they could unlink the socket and put their own in its place.
fn check_socket_dir(socket: &Path) -> Result<(), KmsError> {
    let Some(dir) = socket.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(dir) else {
        // Missing: socket::bind creates it 0700.
        return Ok(());
    };
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(KmsError::SocketDir(dir.to_owned()));
    }
    Ok(())
}

/// Warns when the token or JWT file can be read by other users than its owner.
fn warn_if_readable_by_others(auth: &Auth) {
    let path = match auth {
        Auth::TokenFile(p) => p,
        Auth::Login { jwt_file, .. } => jwt_file,
    };
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            target: "keyhaven::kms",
            file = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the credentials file is readable by other users than its owner; make it 0600"
        );
    }
}

/// Runs the plugin until `shutdown` resolves: binds the socket (0600, a stale one
/// replaced), reads the key once, then serves while the refresher runs.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), KmsError> {
    check_socket_dir(&config.socket)?;
    warn_if_readable_by_others(&config.settings.auth);
    let plugin = Arc::new(Plugin::new(config.settings.clone())?);
    let metrics_listener = match config.metrics_address {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| KmsError::Metrics { address, source })?,
        ),
        None => None,
    };
    let mut bound = socket::bind(&config.socket).await?;
    let Some(listener) = bound.take_listener() else {
        return Err(KmsError::Config {
            reason: "the socket listener was already taken".to_owned(),
        });
    };
    plugin.refresh().await;
    let refresher = tokio::spawn(plugin.clone().run_refresher());
    let metrics_task = metrics_listener.map(|l| {
        let p = plugin.clone();
        tokio::spawn(metrics::serve(l, move || p.metrics.render(&p.snapshot())))
    });
    tracing::info!(
        target: "keyhaven::kms",
        socket = %config.socket.display(),
        address = %config.settings.address,
        key = %format!("{}/{}", config.settings.mount, config.settings.key),
        metrics = ?config.metrics_address,
        "KMS v2 plugin serving"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = socket::Limits::default();
    let server = limits
        .server()
        .add_service(KeyManagementServiceServer::from_arc(Arc::new(
            Service::new(plugin.clone()),
        )))
        .serve_with_incoming_shutdown(socket::incoming(listener, limits), async {
            let _ = stopped.await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = shutdown => {
            // The apiserver keeps its connection open: give calls in flight a bounded
            // grace, then stop anyway.
            let _ = stop.send(());
            tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.unwrap_or(Ok(()))
        }
    };
    refresher.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    plugin.cache.clear();
    drop(bound);
    tracing::info!(target: "keyhaven::kms", "KMS v2 plugin stopped");
    result.map_err(KmsError::from)
}
