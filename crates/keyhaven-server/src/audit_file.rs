//! The `file` audit device: JSON lines in a hash chain, written by one writer thread, and
//! the verifier behind `keyhaven audit verify`.
//!
//! # Writing
//!
//! A regular file is written by the requests themselves, in **group commit**: a request
//! appends its record to a shared pending batch (under a short lock), then yields once to
//! the runtime so that the other requests ready to run on its worker add theirs (without
//! that, on a small machine nearly every batch would hold one request's records and every
//! request would pay a `write` of its own). If no write is in progress after that it
//! becomes the *leader*: it takes the whole batch, chains it, appends it with
//! one `write` (and, with `fsync = true`, `fdatasync`), publishes the outcome to every
//! record of the batch, and leads again while records are pending (at most
//! [`MAX_ROUNDS`] batches, then it hands over to a waiting request). The others wait for
//! their batch, at most the device's timeout, and get the batch's error if it failed. At
//! most [`QUEUE_CAPACITY`] records wait; beyond that a request fails at once. The leader
//! writes inside one poll, without `.await`, so a request that is cancelled or times out
//! never leaves a batch half-written or the device without a leader.
//!
//! The write is a plain `write` on the runtime thread: on a local file system it copies
//! into the page cache and returns in microseconds, and handing it to another thread
//! costs far more (two context switches per batch). `fdatasync`, which waits for the
//! disk, runs inside `tokio::task::block_in_place`. A regular file on a hung network file
//! system blocks the leader's worker thread only: the other workers keep serving, new
//! records queue behind the leader and their requests fail within the timeout.
//!
//! A FIFO or a character device may block without bound (a pipe nobody reads), so those
//! are written by a dedicated writer thread instead: requests hand records to a bounded
//! queue, and the thread writes everything waiting (up to [`MAX_BATCH`]) the same way and
//! acknowledges each sender.
//!
//! Either way a failed write is undone (`ftruncate` back to the last complete line) so
//! the file never keeps a partial record the writer knows about.
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
//! opening a file) or `"event":"close"` (at shutdown and before a SIGHUP reopen). The first
//! line of a new chain has the genesis `prev_hash` ([`GENESIS`]). When the server starts on
//! an existing file it continues that file's chain from its last line (a partial last line
//! left by a crash is cut off first, and the open record says how many bytes).
//!
//! # Rotation
//!
//! Rename the file, then send SIGHUP: the writer appends a close record to the renamed
//! file, opens the configured path again, and starts it with an open record whose
//! `prev_hash` is the hash of that close record and whose `seq` follows it. So each file is
//! a chain segment, and consecutive segments link. ([`verify_files`] checks the links;
//! [`verify`] of a single file reports the hash its first record links to, in
//! [`VerifyReport::continues_from`].) Copy-and-truncate rotation breaks the chain: don't.
//!
//! # What verification proves
//!
//! [`verify`] names the first line that was edited, removed, inserted or moved, and a file
//! cut in the middle of a line. A file whose last record is not a close record may have
//! lost records at its end (or is still being written): [`VerifyReport::closed`] says so
//! and the CLI fails on it unless told the file is live. The chain uses no secret, so
//! someone able to rewrite the whole file from some line on can rebuild it; the writer logs
//! the chain head (`seq` and hash) on the operational log at every close, which anchors
//! the file outside it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use keyhaven_engine::audit::AuditDevice;
use keyhaven_engine::{Clock as _, EngineError, SystemClock};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

/// Records waiting for the writer, at most.
pub const QUEUE_CAPACITY: usize = 8192;
/// Records written together by the writer thread, at most.
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

/// Tells a sender whether its record was written (or why not).
type Ack = oneshot::Sender<Result<(), String>>;

enum Msg {
    /// Records written together, in order.
    Records(Vec<Vec<u8>>, Ack),
    /// Look at the reopen flag.
    Wake,
    /// Write the close record and stop.
    Close(oneshot::Sender<()>),
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

/// The outcome of one batch, shared by the requests whose records it holds.
struct Batch {
    result: OnceLock<Result<(), String>>,
    done: Notify,
}

impl Batch {
    fn new() -> Arc<Batch> {
        Arc::new(Batch {
            result: OnceLock::new(),
            done: Notify::new(),
        })
    }
}

/// What the requests share, under a short lock.
struct GroupState {
    /// Records waiting for the next batch.
    pending: Vec<Vec<u8>>,
    /// The batch `pending` will be written as.
    batch: Arc<Batch>,
    /// Whether a leader is writing (or the device is closed).
    writing: bool,
    /// SIGHUP: reopen before the next batch.
    reopen: bool,
    /// Close after the pending records; refuse new ones.
    closed: bool,
}

/// Group commit on a regular file (see the module documentation).
struct Group {
    state: Mutex<GroupState>,
    /// Touched only by the leader, so never contended.
    writer: Mutex<Writer>,
    /// Notified once the close record is written.
    shut: Notify,
    /// Whether `fdatasync` (a wait for the disk) follows every batch.
    fsync: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code holding these locks panics; should one ever, the state is still consistent
    // (every change under the lock is a single assignment or push).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Group {
    fn new(writer: Writer) -> Group {
        Group {
            fsync: writer.fsync,
            state: Mutex::new(GroupState {
                pending: Vec::new(),
                batch: Batch::new(),
                writing: false,
                reopen: false,
                closed: false,
            }),
            writer: Mutex::new(writer),
            shut: Notify::new(),
        }
    }

    /// Append `records` (next to each other, in order); return once their batch is
    /// written, or why not.
    async fn write(&self, records: Vec<Vec<u8>>, timeout: Duration) -> Result<(), String> {
        let batch = {
            let mut st = lock(&self.state);
            if st.closed {
                return Err("closed".to_owned());
            }
            if st.pending.len().saturating_add(records.len()) > QUEUE_CAPACITY {
                return Err("queue full".to_owned());
            }
            st.pending.extend(records);
            st.batch.clone()
        };
        // Let the requests that are ready to run add their records to this batch first.
        // Nothing is claimed yet: if this request is dropped while it yields, its records
        // simply go with the next batch.
        tokio::task::yield_now().await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = batch.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = batch.result.get() {
                return result.clone();
            }
            if self.claim() {
                self.lead();
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!(
                    "not written within {}",
                    humantime::format_duration(timeout)
                ));
            }
        }
    }

    /// Become the leader if there is work and no leader.
    fn claim(&self) -> bool {
        let mut st = lock(&self.state);
        if !st.writing && (!st.pending.is_empty() || st.reopen) {
            st.writing = true;
            return true;
        }
        false
    }

    /// SIGHUP: reopen now if no write is in progress, else the leader does before it stops.
    fn request_reopen(&self) {
        let lead = {
            let mut st = lock(&self.state);
            if st.closed {
                return;
            }
            st.reopen = true;
            let lead = !st.writing;
            st.writing = true;
            lead
        };
        if lead {
            self.lead();
        }
    }

    /// Write the pending records and the close record; false if that did not happen within
    /// `timeout` (a write in progress hangs).
    async fn close(&self, timeout: Duration) -> bool {
        let shut = self.shut.notified();
        tokio::pin!(shut);
        shut.as_mut().enable();
        let lead = {
            let mut st = lock(&self.state);
            if st.closed {
                return true;
            }
            st.closed = true;
            let lead = !st.writing;
            st.writing = true;
            lead
        };
        if lead {
            self.lead();
            return true;
        }
        tokio::time::timeout(timeout, shut).await.is_ok()
    }

    /// Lead: write batches until none is pending (or [`MAX_ROUNDS`] were written), handle a
    /// reopen and a close. The caller has set `writing`. Runs without `.await`.
    fn lead(&self) {
        let mut writer = lock(&self.writer);
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut rounds = 0u32;
        loop {
            let (batch, reopen) = {
                let mut st = lock(&self.state);
                let more = !st.pending.is_empty() && (rounds < MAX_ROUNDS || st.closed);
                if !more && !st.reopen {
                    if st.closed {
                        // `writing` stays set: nobody leads after the close record.
                        drop(st);
                        writer.close("shutdown");
                        self.shut.notify_waiters();
                        return;
                    }
                    st.writing = false;
                    let next = (!st.pending.is_empty()).then(|| st.batch.clone());
                    drop(st);
                    // Records are waiting and their senders may be the only ones left to
                    // lead: wake one of them (a new request may lead first; either will).
                    if let Some(next) = next {
                        next.done.notify_one();
                    }
                    return;
                }
                std::mem::swap(&mut records, &mut st.pending);
                let batch = std::mem::replace(&mut st.batch, Batch::new());
                (batch, std::mem::take(&mut st.reopen))
            };
            rounds = rounds.saturating_add(1);
            if reopen {
                writer.close("reopen");
                if let Err(e) = writer.open("reopen") {
                    writer.report_open_error(&e);
                }
            }
            if !records.is_empty() {
                let result = if self.fsync && multi_thread() {
                    tokio::task::block_in_place(|| writer.append(records.iter().map(Vec::as_slice)))
                } else {
                    writer.append(records.iter().map(Vec::as_slice))
                };
                records.clear();
                let _ = batch.result.set(result);
            }
            // A batch emptied only by a reopen has no waiters; notifying is harmless.
            batch.done.notify_waiters();
        }
    }
}

impl Drop for Group {
    /// Dropped without [`Group::close`] (no request can be waiting then): write what is
    /// pending and the close record, as the writer thread does when its queue closes.
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if st.closed {
            return;
        }
        st.closed = true;
        let pending = std::mem::take(&mut st.pending);
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if !pending.is_empty() {
            let _ = writer.append(pending.iter().map(Vec::as_slice));
        }
        writer.close("stopped");
    }
}

/// Whether blocking calls may be moved off this worker (`block_in_place` needs the
/// multi-threaded runtime).
fn multi_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
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

/// The end of the chain: the hash of the last line and its `seq`.
#[derive(Clone, Copy)]
struct Head {
    hash: [u8; 32],
    seq: u64,
    genesis: bool,
}

impl Head {
    fn genesis() -> Head {
        Head {
            hash: [0; 32],
            seq: 0,
            genesis: true,
        }
    }

    /// Append the `prev_hash` text (`sha256:<hex>`) to `out`.
    fn put_prev_hash(&self, out: &mut Vec<u8>) {
        if self.genesis {
            out.extend_from_slice(GENESIS.as_bytes());
        } else {
            let mut hex = [0u8; 64];
            out.extend_from_slice(b"sha256:");
            if hex::encode_to_slice(self.hash, &mut hex).is_ok() {
                out.extend_from_slice(&hex);
            }
        }
    }

    /// Append `record` (a JSON object) as the next line to `out`; advance.
    fn append(&mut self, record: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let seq = self.seq.saturating_add(1);
        out.extend_from_slice(b"{\"prev_hash\":\"");
        self.put_prev_hash(out);
        out.extend_from_slice(b"\",\"seq\":");
        let _ = write!(out, "{seq}");
        let body = record.strip_prefix(b"{").unwrap_or(record);
        let body = body.trim_ascii_start();
        if body.first() != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(body);
        let line = out.get(start..).unwrap_or_default();
        self.hash = keyhaven_crypto::sha256(line);
        self.seq = seq;
        self.genesis = false;
        out.push(b'\n');
    }
}

enum OpenError {
    Io(std::io::Error),
    Foreign,
}

impl From<std::io::Error> for OpenError {
    fn from(e: std::io::Error) -> Self {
        OpenError::Io(e)
    }
}

struct Writer {
    name: String,
    path: PathBuf,
    fsync: bool,
    file: Option<File>,
    /// Whether `file` is a regular file (then `len` is its length and failed writes are
    /// undone).
    regular: bool,
    len: u64,
    head: Head,
    reopen: Arc<AtomicBool>,
    /// The lines of a batch (kept to reuse its allocation).
    buf: Vec<u8>,
}

fn now() -> String {
    keyhaven_engine::clock::rfc3339(SystemClock.now())
}

impl Writer {
    fn new(name: String, path: PathBuf, fsync: bool) -> Writer {
        Writer {
            name,
            path,
            fsync,
            file: None,
            regular: false,
            len: 0,
            head: Head::genesis(),
            reopen: Arc::new(AtomicBool::new(false)),
            buf: Vec::new(),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<(Vec<Vec<u8>>, Ack)> = Vec::new();
        loop {
            let Some(first) = rx.blocking_recv() else {
                self.close("stopped");
                return;
            };
            let mut closing = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Records(r, ack) => batch.push((r, ack)),
                    Msg::Wake => {}
                    Msg::Close(ack) => {
                        closing = Some(ack);
                        break;
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if self.reopen.swap(false, Ordering::SeqCst) {
                self.close("reopen");
                if let Err(e) = self.open("reopen") {
                    self.report_open_error(&e);
                }
            }
            if !batch.is_empty() {
                let result = self.append(
                    batch
                        .iter()
                        .flat_map(|(records, _)| records.iter().map(Vec::as_slice)),
                );
                for (_, ack) in batch.drain(..) {
                    // The sender may have given up (timeout); nothing to tell then.
                    let _ = ack.send(result.clone());
                }
            }
            if let Some(ack) = closing {
                self.close("shutdown");
                let _ = ack.send(());
                return;
            }
        }
    }

    fn report_open_error(&self, e: &OpenError) {
        match e {
            OpenError::Io(err) => {
                tracing::error!(target: TARGET, device = %self.name, path = %self.path.display(), error = %err, "cannot open the audit file");
            }
            OpenError::Foreign => {
                tracing::error!(target: TARGET, device = %self.name, path = %self.path.display(), "the audit file does not end with a keyhaven audit record");
            }
        }
    }

    /// Open the configured path and write the open record.
    fn open(&mut self, reason: &str) -> Result<(), OpenError> {
        self.file = None;
        let meta = std::fs::metadata(&self.path).ok();
        let regular = meta.as_ref().is_none_or(|m| m.file_type().is_file());
        let mut repaired = 0u64;
        let (mut file, len) = if regular {
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.path)?;
            let len = file.metadata()?.len();
            let (len, tail) = last_line(&mut file, len)?;
            if let Some((cut, line)) = tail {
                if cut > 0 {
                    file.set_len(len)?;
                    repaired = cut;
                }
                if let Some(line) = line {
                    let seq = line_seq(&line).ok_or(OpenError::Foreign)?;
                    self.head = Head {
                        hash: keyhaven_crypto::sha256(&line),
                        seq,
                        genesis: false,
                    };
                }
            }
            (file, len)
        } else {
            let file = OpenOptions::new().append(true).open(&self.path)?;
            let is_fifo = meta.is_some_and(|m| m.file_type().is_fifo());
            tracing::debug!(target: TARGET, device = %self.name, fifo = is_fifo, "audit path is not a regular file");
            (file, 0)
        };
        let mut rec = Map::new();
        rec.insert("time".to_owned(), json!(now()));
        rec.insert("type".to_owned(), json!(DEVICE_RECORD_TYPE));
        rec.insert("event".to_owned(), json!("open"));
        rec.insert("reason".to_owned(), json!(reason));
        rec.insert("device".to_owned(), json!(self.name));
        if repaired > 0 {
            rec.insert("repaired_tail_bytes".to_owned(), json!(repaired));
            tracing::warn!(target: TARGET, device = %self.name, bytes = repaired, "cut a partial record off the end of the audit file");
        }
        let record = serde_json::to_vec(&Value::Object(rec)).unwrap_or_default();
        let mut head = self.head;
        let mut buf = Vec::new();
        head.append(&record, &mut buf);
        file.write_all(&buf)?;
        file.flush()?;
        if self.fsync {
            file.sync_data()?;
        }
        self.head = head;
        self.regular = regular;
        self.len = len.saturating_add(u64::try_from(buf.len()).unwrap_or(u64::MAX));
        self.file = Some(file);
        tracing::info!(target: TARGET, device = %self.name, path = %self.path.display(), seq = self.head.seq, "audit file opened");
        Ok(())
    }

    /// Write the close record (best effort) and drop the file. Logs the chain head.
    fn close(&mut self, reason: &str) {
        if self.file.is_none() {
            return;
        }
        let mut rec = Map::new();
        rec.insert("time".to_owned(), json!(now()));
        rec.insert("type".to_owned(), json!(DEVICE_RECORD_TYPE));
        rec.insert("event".to_owned(), json!("close"));
        rec.insert("reason".to_owned(), json!(reason));
        rec.insert("device".to_owned(), json!(self.name));
        let record = serde_json::to_vec(&Value::Object(rec)).unwrap_or_default();
        if let Err(e) = self.append(std::iter::once(record.as_slice())) {
            tracing::error!(target: TARGET, device = %self.name, error = %e, "cannot write the close record");
        }
        tracing::info!(
            target: TARGET,
            device = %self.name,
            path = %self.path.display(),
            seq = self.head.seq,
            head = %format!("sha256:{}", hex::encode(self.head.hash)),
            "audit file closed; chain head"
        );
        self.file = None;
    }

    /// Append records as one write; on failure undo it and report why.
    fn append<'a>(&mut self, records: impl Iterator<Item = &'a [u8]>) -> Result<(), String> {
        if self.file.is_none() {
            // Opened lazily (a FIFO), or lost after an error: try again.
            if let Err(e) = self.open("retry") {
                self.report_open_error(&e);
                return Err(match e {
                    OpenError::Io(err) => format!("cannot open the file: {err}"),
                    OpenError::Foreign => "the file does not end with an audit record".to_owned(),
                });
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Err("no file".to_owned());
        };
        let mut head = self.head;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for r in records {
            head.append(r, &mut buf);
        }
        let written = file
            .write_all(&buf)
            .and_then(|()| file.flush())
            .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) });
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if buf.capacity() <= 1 << 20 {
            self.buf = buf;
        }
        match written {
            Ok(()) => {
                self.head = head;
                self.len = self.len.saturating_add(len);
                Ok(())
            }
            Err(e) => {
                // Undo a partial write so the chain stays whole; if that fails too, reopen
                // (which cuts the partial line) before the next batch.
                if !(self.regular && file.set_len(self.len).is_ok()) {
                    self.file = None;
                }
                Err(format!("write failed: {e}"))
            }
        }
    }
}

/// Find the last line of a regular file. Returns the length to keep (without a partial
/// last line) and, when the file is not empty, how many bytes of a partial line follow
/// that length and the last complete line (without its newline).
#[allow(clippy::type_complexity, reason = "private helper")]
fn last_line(file: &mut File, len: u64) -> std::io::Result<(u64, Option<(u64, Option<Vec<u8>>)>)> {
    if len == 0 {
        return Ok((0, None));
    }
    const CHUNK: u64 = 64 * 1024;
    // Walk backwards collecting bytes until two newlines (or the start) bound the last
    // complete line.
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    let mut newlines: Vec<u64> = Vec::new(); // absolute offsets of '\n', descending
    while pos > 0 && newlines.len() < 2 {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(pos - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            if *b == b'\n' {
                newlines.push(start + u64::try_from(i).unwrap_or(0));
                if newlines.len() == 2 {
                    break;
                }
            }
        }
        chunk.extend_from_slice(&tail);
        tail = chunk;
        pos = start;
    }
    let base = pos; // offset of tail[0]
    let Some(&last_nl) = newlines.first() else {
        // No newline at all: the whole file is one partial line.
        return Ok((0, Some((len, None))));
    };
    let keep = last_nl + 1;
    let cut = len - keep;
    let line_start = newlines.get(1).map_or(0, |p| p + 1);
    let from = usize::try_from(line_start.saturating_sub(base)).unwrap_or(0);
    let to = usize::try_from(last_nl.saturating_sub(base)).unwrap_or(0);
    let line = tail.get(from..to).map(<[u8]>::to_vec);
    Ok((keep, Some((cut, line))))
}

/// The `seq` of one of our lines.
fn line_seq(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<LineHead>(line).ok().map(|h| h.seq)
}

#[derive(Deserialize)]
struct LineHead {
    prev_hash: String,
    seq: u64,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    event: Option<String>,
}

impl LineHead {
    fn is_device_event(&self, event: &str) -> bool {
        self.kind.as_deref() == Some(DEVICE_RECORD_TYPE) && self.event.as_deref() == Some(event)
    }
}

// ---------------------------------------------------------------------------------------
// Verification

/// What a verified file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The file.
    pub path: PathBuf,
    /// Lines (records) in the file.
    pub lines: u64,
    /// `seq` of the first record.
    pub first_seq: u64,
    /// `seq` of the last record.
    pub last_seq: u64,
    /// `prev_hash` of the first record when it is not [`GENESIS`]: the hash of the last
    /// record of the previous file of the chain.
    pub continues_from: Option<String>,
    /// Hash of the last line: compare it with the head the server logged.
    pub last_hash: String,
    /// Whether the last record is a close record. If not, records may be missing at the
    /// end (or the file is still being written, or the server stopped uncleanly).
    pub closed: bool,
    /// Lines where the writer reopened the file after an unclean stop (no close record
    /// before): records written just before may have been lost.
    pub unclean_restarts: Vec<u64>,
}

/// What is wrong at a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// Not a JSON record of this device.
    Malformed,
    /// The last line is incomplete: the file was cut inside a record.
    Truncated,
    /// The line was changed after it was written.
    Edited,
    /// Records are missing before this line.
    Missing,
    /// A record that does not belong there.
    Inserted,
    /// Records are out of order.
    Reordered,
    /// Two files do not link.
    BrokenLink,
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProblemKind::Malformed => "malformed record",
            ProblemKind::Truncated => "truncated record",
            ProblemKind::Edited => "edited record",
            ProblemKind::Missing => "missing records",
            ProblemKind::Inserted => "inserted record",
            ProblemKind::Reordered => "reordered records",
            ProblemKind::BrokenLink => "broken link between files",
        })
    }
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The chain is broken.
    #[error("{path}: line {line}: {kind}: {detail}")]
    Broken {
        /// File.
        path: PathBuf,
        /// First bad line (1-based).
        line: u64,
        /// What is wrong.
        kind: ProblemKind,
        /// Explanation.
        detail: String,
    },
}

impl VerifyError {
    /// The line and kind, for a broken chain.
    pub fn problem(&self) -> Option<(u64, ProblemKind)> {
        match self {
            VerifyError::Broken { line, kind, .. } => Some((*line, *kind)),
            VerifyError::Io { .. } => None,
        }
    }
}

fn hash_text(line: &[u8]) -> String {
    format!("sha256:{}", hex::encode(keyhaven_crypto::sha256(line)))
}

/// Read lines with their 1-based number; the bool says whether the line ended with `\n`.
fn lines(
    path: &Path,
) -> Result<impl Iterator<Item = std::io::Result<(u64, Vec<u8>, bool)>>, VerifyError> {
    let file = File::open(path).map_err(|source| VerifyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut n = 0u64;
    Ok(std::iter::from_fn(move || {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                n += 1;
                let complete = buf.last() == Some(&b'\n');
                if complete {
                    buf.pop();
                }
                Some(Ok((n, buf, complete)))
            }
            Err(e) => Some(Err(e)),
        }
    }))
}

/// Where `seq` occurs after line `after`, if anywhere (used only to explain a failure).
fn find_seq(path: &Path, seq: u64, after: u64) -> Option<u64> {
    let iter = lines(path).ok()?;
    for item in iter {
        let (n, line, _) = item.ok()?;
        if n > after && line_seq(&line) == Some(seq) {
            return Some(n);
        }
    }
    None
}

/// Verify one file: the first line that breaks the chain, or what the file holds.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    let broken = |line: u64, kind: ProblemKind, detail: String| VerifyError::Broken {
        path: path.to_owned(),
        line,
        kind,
        detail,
    };
    let mut report = VerifyReport {
        path: path.to_owned(),
        lines: 0,
        first_seq: 0,
        last_seq: 0,
        continues_from: None,
        last_hash: GENESIS.to_owned(),
        closed: false,
        unclean_restarts: Vec::new(),
    };
    let mut prev: Option<(String, u64, bool)> = None; // hash, seq, was a close record
    for item in lines(path)? {
        let (n, line, complete) = item.map_err(|source| VerifyError::Io {
            path: path.to_owned(),
            source,
        })?;
        if !complete {
            return Err(broken(
                n,
                ProblemKind::Truncated,
                "the last line is incomplete: the file was cut inside this record".to_owned(),
            ));
        }
        let Ok(head) = serde_json::from_slice::<LineHead>(&line) else {
            return Err(broken(
                n,
                ProblemKind::Malformed,
                "not a JSON audit record with prev_hash and seq: the line was edited or does not belong".to_owned(),
            ));
        };
        let hash = hash_text(&line);
        match &prev {
            None => {
                if !head.is_device_event("open") {
                    return Err(broken(
                        n,
                        ProblemKind::Missing,
                        "the file does not start with the writer's open record: lines before this one were removed".to_owned(),
                    ));
                }
                if head.prev_hash != GENESIS {
                    report.continues_from = Some(head.prev_hash.clone());
                }
                report.first_seq = head.seq;
            }
            Some((prev_hash, prev_seq, prev_closed)) => {
                let expected = prev_seq.saturating_add(1);
                if head.seq > expected {
                    return Err(match find_seq(path, expected, n) {
                        Some(at) => broken(
                            n,
                            ProblemKind::Reordered,
                            format!(
                                "this line holds record {} but record {expected} comes later, at line {at}",
                                head.seq
                            ),
                        ),
                        None => broken(
                            n,
                            ProblemKind::Missing,
                            format!(
                                "records {expected}..{} are missing before this line (deleted)",
                                head.seq - 1
                            ),
                        ),
                    });
                }
                if head.seq < expected {
                    return Err(broken(
                        n,
                        ProblemKind::Inserted,
                        format!(
                            "this line holds record {} where record {expected} belongs: it was inserted, copied or moved here",
                            head.seq
                        ),
                    ));
                }
                if head.prev_hash != *prev_hash {
                    return Err(broken(
                        n - 1,
                        ProblemKind::Edited,
                        format!(
                            "its hash no longer matches the prev_hash recorded in line {n}: line {} (or the link in line {n}) was changed",
                            n - 1
                        ),
                    ));
                }
                if *prev_closed && !head.is_device_event("open") {
                    return Err(broken(
                        n,
                        ProblemKind::Inserted,
                        "a record after a close record that is not an open record".to_owned(),
                    ));
                }
                if head.is_device_event("open") && !*prev_closed {
                    report.unclean_restarts.push(n);
                }
            }
        }
        report.lines = n;
        report.last_seq = head.seq;
        report.last_hash.clone_from(&hash);
        prev = Some((hash, head.seq, head.is_device_event("close")));
    }
    let Some((_, _, closed)) = prev else {
        return Err(broken(
            1,
            ProblemKind::Missing,
            "the file is empty: every record was removed".to_owned(),
        ));
    };
    report.closed = closed;
    Ok(report)
}

/// Verify files that form one chain, oldest first: each file, and that each file starts
/// where the previous one ended.
pub fn verify_files(paths: &[PathBuf]) -> Result<Vec<VerifyReport>, VerifyError> {
    let mut reports: Vec<VerifyReport> = Vec::with_capacity(paths.len());
    for path in paths {
        let report = verify(path)?;
        if let Some(before) = reports.last() {
            let links = report.continues_from.as_deref() == Some(before.last_hash.as_str())
                && report.first_seq == before.last_seq.saturating_add(1);
            if !links {
                return Err(VerifyError::Broken {
                    path: path.clone(),
                    line: 1,
                    kind: ProblemKind::BrokenLink,
                    detail: format!(
                        "this file does not continue {} (which ends with record {}, {}): records between the files are missing, or a file was edited, truncated or is out of order",
                        before.path.display(),
                        before.last_seq,
                        before.last_hash
                    ),
                });
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_chain(path: &Path, records: &[&str], close: bool) {
        let mut head = Head::genesis();
        let mut out = Vec::new();
        head.append(
            br#"{"type":"audit_file","event":"open","reason":"start"}"#,
            &mut out,
        );
        for r in records {
            head.append(r.as_bytes(), &mut out);
        }
        if close {
            head.append(
                br#"{"type":"audit_file","event":"close","reason":"shutdown"}"#,
                &mut out,
            );
        }
        std::fs::write(path, out).unwrap();
    }

    fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        f(&mut lines);
        let mut out = lines.join("\n");
        out.push('\n');
        std::fs::write(path, out).unwrap();
    }

    const RECS: [&str; 4] = [
        r#"{"type":"request","request":{"path":"a"}}"#,
        r#"{"type":"response","request":{"path":"a"}}"#,
        r#"{"type":"request","request":{"path":"b"}}"#,
        r#"{"type":"response","request":{"path":"b"}}"#,
    ];

    #[test]
    fn a_clean_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        write_chain(&p, &RECS, true);
        let r = verify(&p).unwrap();
        assert_eq!(
            (r.lines, r.first_seq, r.last_seq, r.closed),
            (6, 1, 6, true)
        );
        assert_eq!(r.continues_from, None);
        let first = std::fs::read_to_string(&p).unwrap();
        assert!(first.starts_with(&format!("{{\"prev_hash\":\"{GENESIS}\",\"seq\":1,")));
    }

    #[test]
    fn tampering_is_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        // lines: 1 open, 2..5 records, 6 close
        write_chain(&p, &RECS, true);
        rewrite(&p, |l| l[2] = l[2].replace("\"a\"", "\"x\""));
        assert_eq!(
            verify(&p).unwrap_err().problem(),
            Some((3, ProblemKind::Edited))
        );

        write_chain(&p, &RECS, true);
        rewrite(&p, |l| {
            l.remove(2);
        });
        assert_eq!(
            verify(&p).unwrap_err().problem(),
            Some((3, ProblemKind::Missing))
        );

        write_chain(&p, &RECS, true);
        rewrite(&p, |l| l.swap(2, 3));
        assert_eq!(
            verify(&p).unwrap_err().problem(),
            Some((3, ProblemKind::Reordered))
        );

        write_chain(&p, &RECS, true);
        rewrite(&p, |l| {
            let copy = l[1].clone();
            l.insert(3, copy);
        });
        assert_eq!(
            verify(&p).unwrap_err().problem(),
            Some((4, ProblemKind::Inserted))
        );

        write_chain(&p, &RECS, true);
        rewrite(&p, |l| {
            l.remove(0);
        });
        assert_eq!(
            verify(&p).unwrap_err().problem(),
            Some((1, ProblemKind::Missing))
        );

        write_chain(&p, &RECS, true);
        let len = std::fs::metadata(&p).unwrap().len();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        assert_eq!(
            verify(&p).unwrap_err().problem(),
            Some((6, ProblemKind::Truncated))
        );

        write_chain(&p, &RECS, true);
        rewrite(&p, |l| {
            l.truncate(4);
        });
        assert!(!verify(&p).unwrap().closed);
    }

    #[test]
    fn the_writer_continues_an_existing_file_and_repairs_a_partial_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        write_chain(&p, &RECS, false);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"prev_hash\":\"sha256:ab").unwrap();
        drop(f);
        let mut w = Writer::new("file".into(), p.clone(), false);
        assert!(w.open("start").is_ok());
        w.append([RECS[0].as_bytes()].into_iter()).unwrap();
        w.close("shutdown");
        let r = verify(&p).unwrap();
        assert!(r.closed);
        assert_eq!(r.last_seq, 8);
        assert_eq!(r.unclean_restarts, vec![6]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"repaired_tail_bytes\":23"), "{text}");
    }

    #[test]
    fn a_new_file_is_created_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.log");
        let mut w = Writer::new("file".into(), p.clone(), false);
        assert!(w.open("start").is_ok());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rotation_links_segments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut w = Writer::new("file".into(), p.clone(), true);
        assert!(w.open("start").is_ok());
        w.append(RECS.iter().map(|r| r.as_bytes())).unwrap();
        let old = dir.path().join("a.log.1");
        std::fs::rename(&p, &old).unwrap();
        w.close("reopen");
        assert!(w.open("reopen").is_ok());
        w.append([RECS[0].as_bytes()].into_iter()).unwrap();
        w.close("shutdown");
        let reports = verify_files(&[old.clone(), p.clone()]).unwrap();
        assert_eq!(reports[1].first_seq, reports[0].last_seq + 1);
        assert!(verify_files(&[p.clone(), old.clone()]).is_err());
        // Removing the close record of the old file breaks the link.
        rewrite(&old, |l| {
            l.pop();
        });
        let err = verify_files(&[old, p]).unwrap_err();
        assert_eq!(err.problem(), Some((1, ProblemKind::BrokenLink)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_share_batches_and_the_chain_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let device = FileDevice::start(FileDeviceConfig {
            name: "file".into(),
            description: String::new(),
            path: p.clone(),
            timeout: Duration::from_secs(5),
            fsync: false,
        })
        .unwrap();
        let Sink::Group(group) = &device.sink else {
            panic!("a regular file is written in group commit");
        };
        let group = group.clone();
        let mut tasks = Vec::new();
        for t in 0..16 {
            let device = device.clone();
            let group = group.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..200 {
                    let rec = format!(r#"{{"type":"request","task":{t},"i":{i}}}"#);
                    if t % 2 == 1 {
                        // A request and its response, handed over together.
                        let resp = format!(r#"{{"type":"response","task":{t},"i":{i}}}"#);
                        device
                            .write_batch(vec![rec.into_bytes(), resp.into_bytes()])
                            .await
                            .unwrap();
                    } else {
                        device.write(rec.into_bytes()).await.unwrap();
                    }
                    if t == 0 && i == 100 {
                        group.request_reopen();
                    }
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        device.close().await;
        let r = verify(&p).unwrap();
        assert!(r.closed);
        // open, 1600 single records and 1600 pairs, close, open (reopen), close
        assert_eq!(r.lines, 4804);
        // Every pair is written as two neighbouring lines, request first.
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut pairs = 0;
        for (k, line) in lines.iter().enumerate() {
            if line["type"] == "response" {
                let before = &lines[k - 1];
                assert_eq!(before["type"], "request", "line {k}");
                assert_eq!((&before["task"], &before["i"]), (&line["task"], &line["i"]));
                pairs += 1;
            }
        }
        assert_eq!(pairs, 1600);
        assert!(matches!(
            device.write(b"{}".to_vec()).await,
            Err(EngineError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_device_dropped_without_close_still_closes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let device = FileDevice::start(FileDeviceConfig {
            name: "file".into(),
            description: String::new(),
            path: p.clone(),
            timeout: Duration::from_secs(1),
            fsync: true,
        })
        .unwrap();
        device.write(RECS[0].as_bytes().to_vec()).await.unwrap();
        drop(device);
        let r = verify(&p).unwrap();
        assert!(r.closed);
        assert_eq!(r.lines, 3);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_its_writers_and_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let device = FileDevice::start(FileDeviceConfig {
            name: "file".into(),
            description: String::new(),
            path: p.clone(),
            timeout: Duration::from_secs(1),
            fsync: false,
        })
        .unwrap();
        device.write(RECS[0].as_bytes().to_vec()).await.unwrap();
        let before = std::fs::read(&p).unwrap();
        // Swap the open file for one that refuses writes.
        let Sink::Group(group) = &device.sink else {
            panic!("a regular file is written in group commit");
        };
        lock(&group.writer).file = Some(File::open(&p).unwrap());
        assert!(device.write(RECS[1].as_bytes().to_vec()).await.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), before);
        // The next batch reopens the file and continues the chain.
        device.write(RECS[2].as_bytes().to_vec()).await.unwrap();
        device.close().await;
        let r = verify(&p).unwrap();
        assert!(r.closed);
        assert!(
            !std::fs::read_to_string(&p)
                .unwrap()
                .contains("\"response\"")
        );
    }

    /// Regression (issue 10, item 11e): a missing audit directory stopped start-up with a
    /// bare "No such file or directory". It is created, 0700, like the file's own 0600; a
    /// directory that cannot be created is named in the error.
    #[tokio::test]
    async fn missing_audit_directory_stops_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("logs/keyhaven/audit.log");
        let device = FileDevice::start(FileDeviceConfig {
            name: "file".into(),
            description: String::new(),
            path: p.clone(),
            timeout: Duration::from_secs(1),
            fsync: false,
        })
        .unwrap();
        device.write(RECS[0].as_bytes().to_vec()).await.unwrap();
        device.close().await;
        assert!(verify(&p).unwrap().closed);
        for d in ["logs", "logs/keyhaven"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{d}: {mode:o}");
        }
        // A parent that cannot be a directory: the error says which.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").unwrap();
        let err = FileDevice::start(FileDeviceConfig {
            name: "file".into(),
            description: String::new(),
            path: blocker.join("sub/audit.log"),
            timeout: Duration::from_secs(1),
            fsync: false,
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!(
                "cannot create directory {}",
                blocker.join("sub").display()
            )),
            "{err}"
        );
    }

    #[test]
    fn directories_and_world_writable_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = |path: PathBuf| FileDeviceConfig {
            name: "file".into(),
            description: String::new(),
            path,
            timeout: Duration::from_secs(1),
            fsync: false,
        };
        assert!(matches!(
            check_path(&config(dir.path().to_owned())),
            Err(AuditFileError::IsDirectory { .. })
        ));
        let p = dir.path().join("ww.log");
        std::fs::write(&p, b"").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            check_path(&config(p)),
            Err(AuditFileError::WorldWritable { .. })
        ));
        assert!(check_path(&config("/dev/full".into())).is_ok());
    }
}
