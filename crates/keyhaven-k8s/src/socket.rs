//! The unix socket a gRPC service listens on: created mode 0600 with no window in which it
//! is more open (the file mode is the only access control), a stale socket left by a crash
//! replaced, a live one or any other kind of file refused, and the file removed again when
//! the service stops.
//!
//! Serving ([`incoming`], [`Limits`]): at most `max_connections` connections at a time; a
//! connection that sends nothing within `first_byte_timeout` of being accepted, or nothing
//! for `idle_timeout` later, is closed (gRPC clients reconnect), so stalled clients cannot
//! hold every slot; each call must finish within `request_timeout`.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process answers on the socket.
    #[error("socket {0} is in use by another running process; stop it or choose another --socket")]
    InUse(PathBuf),
    /// The path exists and is not a socket; it is never removed.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The socket ended up with other permissions than 0600.
    #[error("socket {path} has mode {mode:o}, not 600; refusing to serve on it")]
    Mode {
        /// The socket.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A filesystem or socket operation failed.
    #[error("socket {path}: {op}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: io::Error,
    },
}

/// A listening socket whose file is removed when this is dropped.
#[derive(Debug)]
pub struct BoundSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl BoundSocket {
    /// The listener, taken once to serve on (e.g. through
    /// [`incoming`]); the file stays until `self` drops.
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Best effort: the next start replaces a stale socket anyway.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a unix socket at `path` with mode 0600, creating a missing parent directory with
/// mode 0700. Must be called inside a tokio runtime.
pub async fn bind(path: &Path) -> Result<BoundSocket, SocketError> {
    let io_err = |op, source| SocketError::Io {
        path: path.to_owned(),
        op,
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io_err("create the parent directory", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(SocketError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(|e| io_err("remove the stale socket", e))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect the path", e)),
    }
    // The socket file takes its mode from the umask at bind time: narrow it for the bind so
    // the socket is never reachable by others, then restore it.
    let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(previous);
    let listener = bound.map_err(|e| io_err("bind", e))?;
    let socket = BoundSocket {
        listener: Some(listener),
        path: path.to_owned(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("set the mode", e))?;
    let mode = std::fs::metadata(path)
        .map_err(|e| io_err("inspect the socket", e))?
        .permissions()
        .mode()
        & 0o777;
    if mode != 0o600 {
        return Err(SocketError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(socket)
}

/// The limits a served socket enforces on its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a new connection may stay silent before it is closed.
    pub first_byte_timeout: Duration,
    /// How long an established connection may stay silent before it is closed.
    pub idle_timeout: Duration,
    /// How long one call (its request body included) may take.
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// 64 connections (one apiserver or CSI driver needs a few); 10 s to the first byte;
    /// 5 minutes idle (the apiserver polls `Status` every 10–60 s); 30 s per call.
    fn default() -> Self {
        Limits {
            max_connections: 64,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// A gRPC server builder with the per-call timeout.
    pub fn server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder().timeout(self.request_timeout)
    }
}

/// The connections of `listener`, at most `limits.max_connections` open at once, each
/// closed when its client stays silent too long (see [`Limits`]).
pub fn incoming(
    listener: UnixListener,
    limits: Limits,
) -> impl futures::Stream<Item = io::Result<Guarded>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    futures::stream::unfold((listener, slots), move |(listener, slots)| async move {
        let permit = Arc::clone(&slots).acquire_owned().await.ok()?;
        let next = listener
            .accept()
            .await
            .map(|(stream, _)| Guarded::new(stream, permit, limits));
        Some((next, (listener, slots)))
    })
}

/// A served connection: holds its slot until dropped, and fails its reads once the client
/// has been silent past its deadline.
#[derive(Debug)]
pub struct Guarded {
    stream: UnixStream,
    _slot: OwnedSemaphorePermit,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
}

impl Guarded {
    fn new(stream: UnixStream, slot: OwnedSemaphorePermit, limits: Limits) -> Guarded {
        Guarded {
            stream,
            _slot: slot,
            deadline: Box::pin(tokio::time::sleep(limits.first_byte_timeout)),
            idle: limits.idle_timeout,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = <UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// A gRPC channel to a unix socket, as the kube-apiserver and the CSI driver dial it
/// (plaintext HTTP/2, authority `localhost`).
pub async fn connect(path: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(format!("unix://{}", path.display()))?
        .connect()
        .await
}

/// Resolves when the process is asked to stop (SIGTERM or SIGINT).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still stops on the default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stalled clients (connected, silent) hold a slot only until their deadline: with
    /// every slot taken by them, a real client is still served soon after.
    #[tokio::test]
    async fn stalled_clients_cannot_hold_every_connection_slot() {
        use futures::StreamExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let mut bound = bind(&path).await.unwrap();
        let limits = Limits {
            max_connections: 2,
            first_byte_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_secs(1),
        };
        let mut conns = Box::pin(incoming(bound.take_listener().unwrap(), limits));
        // The server side: echo one byte back on every connection, until it fails.
        let server = tokio::spawn(async move {
            while let Some(Ok(mut conn)) = conns.next().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    while let Ok(1) = conn.read(&mut b).await {
                        if conn.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let _stalled_a = UnixStream::connect(&path).await.unwrap();
        let _stalled_b = UnixStream::connect(&path).await.unwrap();
        let started = std::time::Instant::now();
        let mut real = UnixStream::connect(&path).await.unwrap();
        real.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), real.read_exact(&mut b))
            .await
            .expect("served once the stalled clients timed out")
            .unwrap();
        assert_eq!(&b, b"x");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "a slot was free early"
        );
        // An active client keeps its connection past the idle timeout.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            real.write_all(b"y").await.unwrap();
            real.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"y");
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_socket_is_created_0600_replaces_a_stale_one_and_refuses_a_live_one_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/plugin.sock");
        let mut first = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);

        // A live socket is not taken over.
        let err = bind(&path).await.unwrap_err();
        assert!(matches!(err, SocketError::InUse(_)), "{err}");

        // A crashed process leaves the file behind: it is replaced.
        drop(first.take_listener());
        std::mem::forget(first);
        assert!(path.exists());
        let again = bind(&path).await.unwrap();
        drop(again);
        assert!(!path.exists(), "the socket file is removed when dropped");

        // Anything that is not a socket is left alone.
        std::fs::write(&path, b"precious").unwrap();
        let err = bind(&path).await.unwrap_err();
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }
}
