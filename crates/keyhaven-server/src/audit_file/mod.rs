//! The `file` audit device, and the verifier behind `keyhaven audit verify`.
//!
//! The device appends each record the engine hands it as one JSON line to a file, a FIFO
//! or a character device. Every line carries the hash of the line before it, so the file
//! is a hash chain that [`verify()`] checks offline.
//!
//! # Writing a regular file
//!
//! [`FileDevice::start`] looks at the configured path. A directory is refused, and so is
//! a world-writable regular file. A regular file, or a path that does not exist yet
//! (created 0600, with missing directories created 0700), is opened right away, so a bad
//! path stops start-up.
//!
//! Such a file is written by the requests themselves, in **group commit** (design note
//! 0003): a request appends its records (a request and its response may come together,
//! and stay next to each other) to a shared pending batch under a short lock, then yields
//! once to the runtime so that the other requests ready on its worker add theirs (without
//! that, on a small machine nearly every batch would hold one request's records and every
//! request would pay a `write` of its own). If no write is in progress after that it
//! becomes the *leader*: it takes the whole batch, chains it, appends it with one `write`,
//! publishes the outcome to every request of the batch, and leads again while records are
//! pending (at most [`MAX_ROUNDS`] batches, then it wakes a waiting request to take over).
//! The others wait for their batch, at most the device's timeout, and get the batch's
//! error if it failed. At most [`QUEUE_CAPACITY`] records wait; beyond that a request
//! fails at once. The leader writes inside one poll, without `.await`, so a request that
//! is cancelled or times out never leaves a batch half-written or the device without a
//! leader.
//!
//! Without `fsync` the `write` runs on the runtime thread: on a local file system it
//! copies into the page cache and returns in microseconds, and handing it to another
//! thread costs far more (two context switches per batch). With `fsync = true` each batch is followed by `fdatasync`, and
//! on the multi-threaded runtime the whole append runs inside
//! `tokio::task::block_in_place`. A regular file on a hung network file system blocks the
//! leader's worker thread only: the other workers keep serving, new records queue behind
//! the leader and their requests fail within the timeout.
//!
//! A failed write is undone: the file is cut back (`ftruncate`) to its length before the
//! batch, so it never keeps a partial record the writer knows about. If that fails too,
//! the writer drops the file and opens it again before the next batch, which cuts the
//! partial line (see below).
//!
//! # Writing a FIFO or a character device
//!
//! These may block without bound (a pipe nobody reads), so they are written by a dedicated
//! writer thread. Requests hand their records to a bounded queue (a full queue fails the
//! request at once); the thread takes what is waiting, the records of at most
//! [`MAX_BATCH`] requests, writes them with one `write`, acknowledges each sender, and
//! each request waits for that at most the device's timeout. The thread opens the path
//! when the first records arrive (opening a FIFO waits for a reader), and again after a
//! failed write; until that succeeds, requests fail.
//!
//! # The chain
//!
//! Every line is the engine's record with two fields put in front:
//!
//! ```text
//! {"prev_hash":"sha256:<hex of SHA-256 over the previous line's exact bytes, without its newline>","seq":<n>, …record…}
//! ```
//!
//! `seq` counts records across files and restarts, without gaps. The writer adds records of
//! its own, `"type":"audit_file"` with `"event":"open"` (the first line it writes after
//! opening a file) or `"event":"close"` (at shutdown, when the device is dropped, and
//! before a SIGHUP reopen); both carry `time`, `reason` and `device`. The first line of a
//! new chain has the genesis `prev_hash` ([`GENESIS`]).
//!
//! When the writer opens an existing regular file it continues that file's chain from its
//! last line: it reads the file backwards to the last complete line, cuts off a partial
//! line after it (left by a crash or a failed write; the open record's
//! `repaired_tail_bytes` says how many bytes), and takes that line's hash and `seq`. A
//! file whose last line is not a record with `seq` is refused
//! ([`AuditFileError::Foreign`]).
//!
//! # Rotation
//!
//! Rename the file, then send SIGHUP: the writer appends a close record to the renamed
//! file, opens the configured path again, and starts it with an open record whose
//! `prev_hash` is the hash of that close record and whose `seq` follows it. So each file is
//! a chain segment, and consecutive segments link. ([`verify_files`] checks the links;
//! [`verify()`] of a single file reports the hash its first record links to, in
//! [`VerifyReport::continues_from`].) Copy-and-truncate rotation breaks the chain: don't.
//!
//! # What verification proves
//!
//! [`verify()`] names the first line that was edited, removed, inserted or moved, and a
//! file cut in the middle of a line. A file whose last record is not a close record may
//! have lost records at its end (or is still being written): [`VerifyReport::closed`] says
//! so and the CLI fails on it unless told the file is live. A file cut at its start back to
//! an open record still verifies, as a later segment of the chain: only
//! [`VerifyReport::continues_from`] and `first_seq` show the cut, and [`verify_files`]
//! catches it unless that file is the first one given. An open record that does not
//! follow a close record marks an unclean stop ([`VerifyReport::unclean_restarts`]). The
//! chain uses no secret, so someone able to rewrite the whole file from some line on can
//! rebuild it, and a change to the last line alone shows only in its hash
//! ([`VerifyReport::last_hash`]); the writer logs the chain head (`seq` and hash) on the
//! operational log at every close, which anchors the file outside it.

mod chain;
mod group;
mod recover;
mod thread;
mod verify;
mod writer;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use keyhaven_engine::EngineError;
use keyhaven_engine::audit::AuditDevice;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use group::Group;
use thread::Msg;
use writer::{OpenError, Writer};

pub use verify::{ProblemKind, VerifyError, VerifyReport, verify, verify_files};

pub(crate) use chain::new_chain;
pub(crate) use verify::verify_from;

/// Records waiting for the writer, at most.
pub const QUEUE_CAPACITY: usize = 8192;
/// Requests whose records the writer thread writes together, at most.
pub const MAX_BATCH: usize = 1024;
/// Batches one leader writes before it hands over to a waiting request.
pub const MAX_ROUNDS: u32 = 4;
/// `prev_hash` of the first record of a chain.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
/// The `type` of the writer's own records.
pub const DEVICE_RECORD_TYPE: &str = "audit_file";

const TARGET: &str = "keyhaven::audit";

/// The settings of one file device (the validated `[[audit]]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDeviceConfig {
    /// Device name (`sys/audit` lists it as `<name>/`).
    pub name: String,
    /// Free text.
    pub description: String,
    /// The file.
    pub path: PathBuf,
    /// How long a request waits for its record to be written.
    pub timeout: Duration,
    /// `fdatasync` after each batch.
    pub fsync: bool,
}

/// Why a file device could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditFileError {
    /// The path names a directory.
    #[error("audit device {name}: {path} is a directory")]
    IsDirectory {
        /// Device.
        name: String,
        /// Path.
        path: PathBuf,
    },
    /// The existing file may be written by anyone.
    #[error("audit device {name}: {path} is world-writable; refusing to log to it (chmod o-w)")]
    WorldWritable {
        /// Device.
        name: String,
        /// Path.
        path: PathBuf,
    },
    /// The file cannot be opened or read.
    #[error("audit device {name}: cannot open {path}: {source}")]
    Open {
        /// Device.
        name: String,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but does not end with a record of this device.
    #[error("audit device {name}: {path} does not end with a keyhaven audit record; move it away")]
    Foreign {
        /// Device.
        name: String,
        /// Path.
        path: PathBuf,
    },
    /// The file's directory is missing and could not be created.
    #[error("audit device {name}: cannot create directory {dir} for {path}: {source}")]
    CreateDir {
        /// Device.
        name: String,
        /// The directory.
        dir: PathBuf,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread or the SIGHUP handler could not start.
    #[error("audit device {name}: cannot start the writer: {source}")]
    Start {
        /// Device.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How records reach the file.
enum Sink {
    /// A FIFO or device: the writer thread.
    Thread(mpsc::Sender<Msg>),
    /// A regular file: group commit by the requests.
    Group(Arc<Group>),
}

/// A running file device.
pub struct FileDevice {
    config: FileDeviceConfig,
    sink: Sink,
}

impl std::fmt::Debug for FileDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDevice")
            .field("name", &self.config.name)
            .field("path", &self.config.path)
            .finish_non_exhaustive()
    }
}

impl FileDevice {
    /// Check the path, start the writer thread and the SIGHUP handler. Must run inside a
    /// tokio runtime.
    ///
    /// A regular file is opened here, so a bad path fails start-up; other files (a FIFO, a
    /// character device) are opened by the writer, and until that succeeds requests fail.
    pub fn start(config: FileDeviceConfig) -> Result<Arc<FileDevice>, AuditFileError> {
        let name = config.name.clone();
        let regular = check_path(&config)?;
        let mut writer = Writer::new(name.clone(), config.path.clone(), config.fsync);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|source| AuditFileError::Start {
                name: name.clone(),
                source,
            })?;
        if regular {
            writer.open("start").map_err(|e| match e {
                OpenError::Io(source) => AuditFileError::Open {
                    name: name.clone(),
                    path: config.path.clone(),
                    source,
                },
                OpenError::Foreign => AuditFileError::Foreign {
                    name: name.clone(),
                    path: config.path.clone(),
                },
            })?;
            let group = Arc::new(Group::new(writer));
            let weak = Arc::downgrade(&group);
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let Some(group) = weak.upgrade() else { break };
                    group.request_reopen();
                }
            });
            return Ok(Arc::new(FileDevice {
                config,
                sink: Sink::Group(group),
            }));
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let reopen = writer.reopen.clone();
        std::thread::Builder::new()
            .name(format!("audit-{name}"))
            .spawn(move || writer.run(rx))
            .map_err(|source| AuditFileError::Start {
                name: name.clone(),
                source,
            })?;
        let wake = tx.downgrade();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reopen.store(true, Ordering::SeqCst);
                let Some(tx) = wake.upgrade() else { break };
                // A full queue means the writer is busy; it looks at the flag anyway.
                let _ = tx.try_send(Msg::Wake);
            }
        });
        Ok(Arc::new(FileDevice {
            config,
            sink: Sink::Thread(tx),
        }))
    }

    /// Write the close record and stop the writer; waits at most the device's timeout.
    pub async fn close(&self) {
        let tx = match &self.sink {
            Sink::Thread(tx) => tx,
            Sink::Group(group) => {
                if !group.close(self.config.timeout).await {
                    tracing::warn!(target: TARGET, device = %self.config.name, "audit file not closed: a write did not finish in time");
                }
                return;
            }
        };
        let (ack, done) = oneshot::channel();
        if tx.try_send(Msg::Close(ack)).is_ok() {
            let _ = tokio::time::timeout(self.config.timeout, done).await;
        } else {
            tracing::warn!(target: TARGET, device = %self.config.name, "audit file not closed: the writer is busy or gone");
        }
    }
}

#[async_trait]
impl AuditDevice for FileDevice {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn kind(&self) -> &str {
        "file"
    }

    fn description(&self) -> &str {
        &self.config.description
    }

    fn options(&self) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert(
            "file_path".to_owned(),
            json!(self.config.path.display().to_string()),
        );
        o.insert(
            "timeout".to_owned(),
            json!(humantime::format_duration(self.config.timeout).to_string()),
        );
        o.insert("fsync".to_owned(), json!(self.config.fsync.to_string()));
        o
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    async fn write(&self, record: Vec<u8>) -> Result<(), EngineError> {
        self.write_records(vec![record]).await
    }

    async fn write_batch(&self, records: Vec<Vec<u8>>) -> Result<(), EngineError> {
        self.write_records(records).await
    }
}

impl FileDevice {
    /// Write `records` next to each other in one batch; return once they are written.
    async fn write_records(&self, records: Vec<Vec<u8>>) -> Result<(), EngineError> {
        let fail = |why: &str| {
            EngineError::Unavailable(format!("audit: file device {}: {why}", self.config.name))
        };
        let tx = match &self.sink {
            Sink::Thread(tx) => tx,
            Sink::Group(group) => {
                return group
                    .write(records, self.config.timeout)
                    .await
                    .map_err(|why| fail(&why));
            }
        };
        let (ack, done) = oneshot::channel();
        match tx.try_send(Msg::Records(records, ack)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(fail("queue full")),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(fail("writer stopped")),
        }
        match tokio::time::timeout(self.config.timeout, done).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(why))) => Err(fail(&why)),
            Ok(Err(_)) => Err(fail("writer stopped")),
            Err(_) => Err(fail(&format!(
                "not written within {}",
                humantime::format_duration(self.config.timeout)
            ))),
        }
    }
}

/// Refuse directories and world-writable regular files; tell whether the path is a regular
/// file (or does not exist yet, and will be one: then its missing directories are created,
/// mode 0700, as the file itself is created 0600).
fn check_path(config: &FileDeviceConfig) -> Result<bool, AuditFileError> {
    match std::fs::metadata(&config.path) {
        Ok(meta) => {
            let ft = meta.file_type();
            if ft.is_dir() {
                return Err(AuditFileError::IsDirectory {
                    name: config.name.clone(),
                    path: config.path.clone(),
                });
            }
            // Character devices (/dev/null, /dev/full) and FIFOs are writable by design;
            // the check protects a log file others could edit.
            if ft.is_file() && meta.permissions().mode() & 0o002 != 0 {
                return Err(AuditFileError::WorldWritable {
                    name: config.name.clone(),
                    path: config.path.clone(),
                });
            }
            Ok(ft.is_file())
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            create_parent(config)?;
            Ok(true)
        }
        Err(source) => Err(AuditFileError::Open {
            name: config.name.clone(),
            path: config.path.clone(),
            source,
        }),
    }
}

/// Create the missing directories above the file, each 0700.
fn create_parent(config: &FileDeviceConfig) -> Result<(), AuditFileError> {
    let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    crate::create_private_dirs(dir).map_err(|source| AuditFileError::CreateDir {
        name: config.name.clone(),
        dir: dir.to_owned(),
        path: config.path.clone(),
        source,
    })?;
    tracing::info!(target: TARGET, device = %config.name, dir = %dir.display(), "created the audit directory (mode 0700)");
    Ok(())
}

#[cfg(test)]
mod tests;
