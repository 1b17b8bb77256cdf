//! [`SqliteStore`]: the embedded default backend.

mod cache;
mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::oneshot;

use keyhaven_storage::{
    Op, StorageError, Store, Transaction, TxOutcome, validate_key, validate_prefix,
};

use cache::{Lookup, ReadCache};
use read::ReaderPool;
use writer::Command;

/// Tuning of a [`SqliteStore`]. `SqliteOptions::default()` suits a keyhaven server;
/// change single fields on a default value.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Most read-only connections in the pool (default 4, at least 1); one is opened
    /// with the store, the others when concurrent reads need them. WAL readers run in
    /// parallel with each other and with the writer; more connections than cores
    /// mainly help when reads wait on disk.
    pub read_connections: usize,
    /// How long a connection waits for a lock held by another process before failing
    /// with [`StorageError::Unavailable`] (default 5 s). Within one process the writer
    /// thread never contends with itself, and WAL readers take no blocking locks.
    pub busy_timeout: Duration,
    /// Most write requests committed together by one group commit (default 256, at
    /// least 1). Larger batches amortise the fsync over more writers; the cap bounds
    /// the latency of the last request in a batch.
    pub max_batch: usize,
    /// Run `get` on the calling task instead of handing it to tokio's blocking pool
    /// (default `true`). A point read from the page cache takes a few microseconds,
    /// less than the hand-off to another thread; see `docs/BENCHMARKS.md`. Listings
    /// always run on the blocking pool because they can read thousands of rows.
    pub inline_point_reads: bool,
    /// Bytes of stored values (ciphertext) kept in memory for point reads (default
    /// 32 MiB; 0 turns the cache off). The cache is exact: the store holds the
    /// database exclusively and forgets every key a commit wrote before the commit is
    /// acknowledged. See `docs/design/0005-sqlite-read-cache.md`.
    pub read_cache_bytes: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            max_batch: 256,
            inline_point_reads: true,
            read_cache_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Which connection a [`ConnectionSettings`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionRole {
    /// The writer thread's read-write connection.
    Writer,
    /// A pooled read-only connection.
    Reader,
}

/// The settings a live connection actually runs with, as SQLite reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionSettings {
    /// Which connection.
    pub role: ConnectionRole,
    /// `PRAGMA journal_mode` (expected: `wal`).
    pub journal_mode: String,
    /// `PRAGMA synchronous` (expected: 2, FULL).
    pub synchronous: i64,
    /// `PRAGMA foreign_keys`.
    pub foreign_keys: bool,
    /// `PRAGMA busy_timeout`, in milliseconds.
    pub busy_timeout_ms: i64,
    /// `PRAGMA query_only`.
    pub query_only: bool,
    /// `PRAGMA user_version`: the schema version.
    pub schema_version: i64,
}

impl ConnectionSettings {
    fn read(conn: &Connection, role: ConnectionRole) -> Result<Self, StorageError> {
        let text = |name: &str| -> Result<String, StorageError> {
            conn.pragma_query_value(None, name, |row| row.get(0))
                .map_err(sql_error)
        };
        let int = |name: &str| -> Result<i64, StorageError> {
            conn.pragma_query_value(None, name, |row| row.get(0))
                .map_err(sql_error)
        };
        Ok(ConnectionSettings {
            role,
            journal_mode: text("journal_mode")?,
            synchronous: int("synchronous")?,
            foreign_keys: int("foreign_keys")? != 0,
            busy_timeout_ms: int("busy_timeout")?,
            query_only: int("query_only")? != 0,
            schema_version: int("user_version")?,
        })
    }
}

/// A [`Store`] in one SQLite database file.
///
/// Open it once per process with [`SqliteStore::open`] and share it through an `Arc`.
/// Writes go to a dedicated writer thread that group-commits them (see the
/// `writer` module docs); reads use a pool of read-only connections.
///
/// [`SqliteStore::close`] (or dropping the store) finishes the queued writes, stops
/// the writer thread and closes every connection; calls after that return
/// [`StorageError::Closed`]. A write whose caller stopped waiting (its future was
/// dropped) may still be applied, as with any database.
pub struct SqliteStore {
    path: PathBuf,
    commands: RwLock<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<ReaderPool>,
    inline_point_reads: bool,
    counters: Arc<writer::Counters>,
    cache: Arc<ReadCache>,
    /// Held (flock, exclusive) until [`SqliteStore::close`]: one process per database.
    lock: Mutex<Option<std::fs::File>>,
}

/// Counters of a [`SqliteStore`]'s group commit, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteStats {
    /// Transactions committed by the writer thread (one fsync each).
    pub batches: u64,
    /// Write requests (put, delete, transact) those transactions carried; divided by
    /// `batches`, the mean group-commit size.
    pub requests: u64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("closed", &self.commands.read().is_none())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// The schema version this build creates, migrates to and accepts at most.
    pub const SCHEMA_VERSION: u64 = schema::SCHEMA_VERSION;

    /// Open (or create) the database at `path`, apply pending migrations and start the
    /// writer thread.
    ///
    /// A new file is created with mode 0600, and its `-wal`/`-shm` companions get the
    /// same mode. An existing file that its group or others can write is refused
    /// ([`StorageError::InsecurePermissions`]); one they can read is opened with a
    /// warning (values are ciphertext, keys are not secret, but there is no reason to
    /// share them). A database whose schema is newer than this build is refused
    /// ([`StorageError::SchemaTooNew`]); a SQLite file that is not a keyhaven
    /// database is refused as [`StorageError::Corrupt`].
    ///
    /// This blocks (file I/O, migrations): call it at start-up, or from
    /// `spawn_blocking`.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StorageError> {
        files::prepare(path)?;
        let lock = files::lock(path)?;
        let mut writer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_error)?;
        configure(&writer, &options, false)?;
        let journal_mode: String = writer
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .map_err(sql_error)?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::unavailable(format!(
                "sqlite refused WAL mode (journal_mode is {journal_mode})"
            )));
        }
        schema::migrate(&mut writer)?;
        // The WAL and shared-memory files exist once a transaction ran.
        files::restrict_companions(path)?;

        let reader_path = path.to_owned();
        let reader_options = options.clone();
        let open_reader: read::Opener = Box::new(move || {
            let reader = Connection::open_with_flags(
                &reader_path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sql_error)?;
            configure(&reader, &reader_options, true)?;
            Ok(reader)
        });
        // One reader now: it proves the file can be read; the others open on demand.
        let first_reader = open_reader()?;
        let readers = ReaderPool::new(first_reader, options.read_connections, open_reader);

        let (sender, receiver) = mpsc::channel();
        let max_batch = options.max_batch;
        let counters = Arc::new(writer::Counters::default());
        let thread_counters = Arc::clone(&counters);
        let cache = Arc::new(ReadCache::new(options.read_cache_bytes));
        let thread_cache = Arc::clone(&cache);
        let handle = std::thread::Builder::new()
            .name("keyhaven-sqlite-writer".to_owned())
            .spawn(move || writer::run(writer, receiver, max_batch, thread_counters, thread_cache))
            .map_err(StorageError::unavailable)?;
        tracing::info!(path = %path.display(), "opened sqlite store");
        Ok(SqliteStore {
            path: path.to_owned(),
            commands: RwLock::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            readers,
            inline_point_reads: options.inline_point_reads,
            counters,
            cache,
            lock: Mutex::new(Some(lock)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many batches and write requests the writer thread has committed.
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            batches: self
                .counters
                .batches
                .load(std::sync::atomic::Ordering::Relaxed),
            requests: self
                .counters
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Finish the queued writes, stop the writer thread, close every connection and
    /// release the database for other processes. Idempotent. Blocks until the writer
    /// thread has exited (at most one batch).
    pub fn close(&self) {
        // Dropping the only sender lets the writer drain the queue and exit.
        drop(self.commands.write().take());
        self.readers.close();
        let handle = self.writer.lock().take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("sqlite writer thread panicked");
        }
        // Nothing writes any more; a read still running on a borrowed connection
        // cannot change the database.
        drop(self.lock.lock().take());
    }

    /// The settings of every live connection (the writer first), as SQLite reports
    /// them; for health checks and tests.
    pub async fn connection_settings(&self) -> Result<Vec<ConnectionSettings>, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Settings { reply })?;
        let mut all = vec![answer.await.map_err(|_| writer_stopped())??];
        let (conns, permit) = self.readers.acquire_all().await?;
        let readers: Result<Vec<_>, _> = conns
            .iter()
            .map(|c| ConnectionSettings::read(c, ConnectionRole::Reader))
            .collect();
        self.readers.restore(conns);
        drop(permit);
        all.extend(readers?);
        Ok(all)
    }

    fn send(&self, command: Command) -> Result<(), StorageError> {
        let commands = self.commands.read();
        let sender = commands.as_ref().ok_or(StorageError::Closed)?;
        sender.send(command).map_err(|_| writer_stopped())
    }

    async fn write(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Write { tx, reply })?;
        answer.await.map_err(|_| writer_stopped())?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_stopped() -> StorageError {
    StorageError::unavailable("the sqlite writer thread has stopped")
}

/// Per-connection settings. `synchronous=FULL` makes each COMMIT fsync the WAL, so an
/// acknowledged write survives power loss.
fn configure(
    conn: &Connection,
    options: &SqliteOptions,
    read_only: bool,
) -> Result<(), StorageError> {
    conn.busy_timeout(options.busy_timeout).map_err(sql_error)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql_error)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sql_error)?;
    conn.pragma_update(None, "trusted_schema", "OFF")
        .map_err(sql_error)?;
    if read_only {
        conn.pragma_update(None, "query_only", "ON")
            .map_err(sql_error)?;
    } else {
        // After a checkpoint, shrink a WAL that a large transaction grew beyond 64 MiB.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(sql_error)?;
    }
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

/// Map a SQLite error: corruption to [`StorageError::Corrupt`], anything else to
/// [`StorageError::Unavailable`]. SQLite messages name tables and constraints, never
/// bound parameters, so no value can leak through them.
pub(crate) fn sql_error(err: rusqlite::Error) -> StorageError {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StorageError::Corrupt {
            detail: err.to_string(),
        },
        _ => StorageError::unavailable(err),
    }
}

/// [`sql_error`] for an error shared by every request of a failed batch.
pub(crate) fn shared_sql_error(err: &Arc<rusqlite::Error>) -> StorageError {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StorageError::Corrupt {
            detail: err.to_string(),
        },
        _ => StorageError::unavailable(Arc::clone(err)),
    }
}

fn validate_tx(tx: &Transaction) -> Result<(), StorageError> {
    for condition in &tx.conditions {
        validate_key(condition.key())?;
    }
    for op in &tx.ops {
        validate_key(op.key())?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn get_ready(&self, key: &str) -> Option<Result<Option<Vec<u8>>, StorageError>> {
        if let Err(e) = validate_key(key) {
            return Some(Err(e));
        }
        match self.cache.get(key) {
            Lookup::Hit(value) => Some(Ok(Some(value))),
            Lookup::Miss(_) => None,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        validate_key(key)?;
        let ticket = match self.cache.get(key) {
            Lookup::Hit(value) => return Ok(Some(value)),
            Lookup::Miss(ticket) => ticket,
        };
        let reader = self.readers.acquire().await?;
        let value = if self.inline_point_reads {
            read::get(reader.conn()?, key)?
        } else {
            let owned = key.to_owned();
            tokio::task::spawn_blocking(move || read::get(reader.conn()?, &owned))
                .await
                .map_err(StorageError::unavailable)??
        };
        if let Some(value) = &value {
            self.cache.fill(key, value, ticket);
        }
        Ok(value)
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        validate_key(key)?;
        let tx = Transaction {
            conditions: vec![],
            ops: vec![Op::Put {
                key: key.to_owned(),
                value,
            }],
        };
        self.write(tx).await.map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        let tx = Transaction {
            conditions: vec![],
            ops: vec![Op::Delete {
                key: key.to_owned(),
            }],
        };
        self.write(tx).await.map(|_| ())
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        validate_prefix(prefix)?;
        let reader = self.readers.acquire().await?;
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            read::list_page(reader.conn()?, &prefix, after.as_deref(), limit)
                .map(|(names, _)| names)
        })
        .await
        .map_err(StorageError::unavailable)?
    }

    async fn transact(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        validate_tx(&tx)?;
        self.write(tx).await
    }
}

mod files {
    //! Creation and permission checks of the database files.

    use std::path::{Path, PathBuf};

    use keyhaven_storage::StorageError;

    /// Create `path` owner-only if missing; refuse it if others may write it.
    #[cfg(unix)]
    pub(super) fn prepare(path: &Path) -> Result<(), StorageError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(StorageError::unavailable(err)),
        }
        let meta = std::fs::metadata(path).map_err(StorageError::unavailable)?;
        if !meta.is_file() {
            return Err(StorageError::unavailable(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            )));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(StorageError::InsecurePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        if mode & 0o044 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "the storage file is readable by group or others; chmod 600 is recommended"
            );
        }
        Ok(())
    }

    #[cfg(not(unix))]
    pub(super) fn prepare(_path: &Path) -> Result<(), StorageError> {
        Ok(())
    }

    /// Take the exclusive lock that makes this process the database's only user: an
    /// advisory `flock` on the empty companion file `<path>-lock`, released by the
    /// kernel when the process exits, however it exits.
    ///
    /// A separate file, because closing any descriptor of the database file itself
    /// would drop the POSIX locks SQLite holds on it. The lock keeps a second server
    /// from writing behind this one's in-memory state (the read cache, cached keys,
    /// mount tables), which would make it serve stale data.
    pub(super) fn lock(path: &Path) -> Result<std::fs::File, StorageError> {
        let mut lock_path: PathBuf = path.to_owned();
        lock_path.as_mut_os_string().push("-lock");
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&lock_path)
            .map_err(StorageError::unavailable)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::InUse {
                path: path.to_owned(),
            }),
            Err(std::fs::TryLockError::Error(err)) => Err(StorageError::unavailable(err)),
        }
    }

    /// SQLite gives `-wal` and `-shm` the mode of the database file; make sure of it,
    /// since these hold recent writes too.
    #[cfg(unix)]
    pub(super) fn restrict_companions(path: &Path) -> Result<(), StorageError> {
        use std::os::unix::fs::PermissionsExt;

        for suffix in ["-wal", "-shm"] {
            let mut companion: PathBuf = path.to_owned();
            companion.as_mut_os_string().push(suffix);
            let Ok(meta) = std::fs::metadata(&companion) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&companion, std::fs::Permissions::from_mode(0o600))
                    .map_err(StorageError::unavailable)?;
            }
        }
        Ok(())
    }

    #[cfg(not(unix))]
    pub(super) fn restrict_companions(_path: &Path) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_temp() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("kv.db"), SqliteOptions::default()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn list_skips_folders_with_one_seek() {
        let (_dir, store) = open_temp();
        let mut ops = Vec::new();
        for i in 0..5000 {
            ops.push(Op::Put {
                key: format!("p/big/{i:05}"),
                value: vec![1],
            });
            ops.push(Op::Put {
                key: format!("p/other/{i:05}"),
                value: vec![1],
            });
        }
        ops.push(Op::Put {
            key: "p/leaf".into(),
            value: vec![1],
        });
        let tx = Transaction {
            conditions: vec![],
            ops,
        };
        assert_eq!(store.transact(tx).await.unwrap(), TxOutcome::Committed);
        let reader = store.readers.acquire().await.unwrap();
        let (names, rows) = read::list_page(reader.conn().unwrap(), "p/", None, 100).unwrap();
        assert_eq!(names, ["big/", "leaf", "other/"]);
        assert_eq!(rows, 3, "one row per child, not one per key");
        let (names, rows) = read::list_page(reader.conn().unwrap(), "p/", Some("big/"), 1).unwrap();
        assert_eq!(names, ["leaf"]);
        assert_eq!(rows, 1);
    }

    #[tokio::test]
    async fn readers_open_on_demand_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions {
            read_connections: 3,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(&dir.path().join("kv.db"), options).unwrap();
        assert_eq!(store.readers.idle_count(), 1, "one reader at open");
        store.put("k", b"v".to_vec()).await.unwrap();
        let held: Vec<_> = [
            store.readers.acquire().await.unwrap(),
            store.readers.acquire().await.unwrap(),
            store.readers.acquire().await.unwrap(),
        ]
        .into_iter()
        .collect();
        for reader in &held {
            assert_eq!(
                read::get(reader.conn().unwrap(), "k").unwrap().unwrap(),
                b"v"
            );
        }
        // A fourth waits for one of the three instead of opening another.
        let fourth = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            store.readers.acquire(),
        )
        .await;
        assert!(fourth.is_err(), "the pool is limited to three connections");
        drop(held);
        assert_eq!(store.readers.idle_count(), 3);
    }

    #[tokio::test]
    async fn list_query_uses_the_primary_key_range() {
        let (_dir, store) = open_temp();
        let reader = store.readers.acquire().await.unwrap();
        let conn = reader.conn().unwrap();
        let mut plan = String::new();
        conn.prepare(
            "EXPLAIN QUERY PLAN SELECT key FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key",
        )
        .unwrap()
        .query_map(params_two(), |row| row.get::<_, String>(3))
        .unwrap()
        .for_each(|detail| plan.push_str(&detail.unwrap()));
        assert!(
            plan.contains("SEARCH kv USING PRIMARY KEY (key>? AND key<?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    fn params_two() -> [&'static [u8]; 2] {
        [b"a", b"b"]
    }

    #[test]
    fn sql_errors_map_to_storage_errors() {
        let corrupt = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some("database disk image is malformed".into()),
        );
        assert!(matches!(sql_error(corrupt), StorageError::Corrupt { .. }));
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(matches!(sql_error(busy), StorageError::Unavailable { .. }));
    }
}
