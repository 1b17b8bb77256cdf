//! The unix socket a gRPC service listens on: created mode 0600 with no window in which it
//! is more open (the file mode is the only access control), a stale socket left by a crash
//! replaced, a live one or any other kind of file refused, and the file removed again when
//! the service stops.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

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
    /// `tokio_stream::wrappers::UnixListenerStream`); the file stays until `self` drops.
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
