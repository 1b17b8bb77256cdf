//! The pool of read-only connections and the queries they run.
//!
//! In WAL mode readers never block the writer nor each other; each read statement (or,
//! for a listing, each read transaction) sees the latest commit at the time it starts,
//! so a read issued after a write was acknowledged sees that write.

use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use keyhaven_storage::StorageError;
use keyhaven_storage::listing::{PageBuilder, Step, prefix_upper_bound};

use super::sql_error;

/// Opens one read-only connection, configured.
pub(crate) type Opener = Box<dyn Fn() -> Result<Connection, StorageError> + Send + Sync>;

/// Up to `size` read-only connections; a semaphore hands them out. Connections are
/// opened when a read finds none idle (the pool starts with the one `open` made), so an
/// idle server keeps one connection, and its page cache, instead of `size`.
pub(crate) struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    size: usize,
    open: Opener,
}

impl ReaderPool {
    pub(crate) fn new(first: Connection, size: usize, open: Opener) -> Arc<Self> {
        let size = size.max(1);
        Arc::new(ReaderPool {
            idle: Mutex::new(vec![first]),
            permits: Arc::new(Semaphore::new(size)),
            size,
            open,
        })
    }

    /// Wait for a connection; `Closed` once the pool is closed.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<PooledReader, StorageError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Closed)?;
        // A permit guarantees an idle connection or room for a new one.
        let idle = self.idle.lock().pop();
        let conn = match idle {
            Some(conn) => conn,
            None if self.permits.is_closed() => return Err(StorageError::Closed),
            None => (self.open)()?,
        };
        Ok(PooledReader {
            conn: Some(conn),
            pool: Arc::clone(self),
            _permit: permit,
        })
    }

    /// Take every connection the pool may use, opening those not open yet (waiting
    /// for those in use), for inspecting them all.
    pub(crate) async fn acquire_all(
        self: &Arc<Self>,
    ) -> Result<(Vec<Connection>, OwnedSemaphorePermit), StorageError> {
        let count = u32::try_from(self.size).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(count)
            .await
            .map_err(|_| StorageError::Closed)?;
        let mut conns = std::mem::take(&mut *self.idle.lock());
        while conns.len() < self.size {
            match (self.open)() {
                Ok(conn) => conns.push(conn),
                Err(err) => {
                    self.restore(conns);
                    return Err(err);
                }
            }
        }
        Ok((conns, permit))
    }

    /// Give back connections taken with [`ReaderPool::acquire_all`].
    pub(crate) fn restore(&self, conns: Vec<Connection>) {
        if !self.permits.is_closed() {
            self.idle.lock().extend(conns);
        }
    }

    /// Refuse new reads and close idle connections; busy ones close when released.
    pub(crate) fn close(&self) {
        self.permits.close();
        self.idle.lock().clear();
    }

    /// Connections open and idle, for tests.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }
}

/// A connection borrowed from the pool; returned to it on drop.
pub(crate) struct PooledReader {
    conn: Option<Connection>,
    pool: Arc<ReaderPool>,
    _permit: OwnedSemaphorePermit,
}

impl PooledReader {
    pub(crate) fn conn(&self) -> Result<&Connection, StorageError> {
        self.conn.as_ref().ok_or(StorageError::Closed)
    }
}

impl Drop for PooledReader {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !self.pool.permits.is_closed()
        {
            self.pool.idle.lock().push(conn);
        }
    }
}

/// The value at `key`.
pub(crate) fn get(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
    conn.prepare_cached("SELECT value FROM kv WHERE key = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![key.as_bytes()], |row| row.get(0))
                .optional()
        })
        .map_err(sql_error)
}

/// One page of children, read in a single snapshot. Also returns how many rows were
/// read, so tests can check that sub-folders are skipped with one seek each.
pub(crate) fn list_page(
    conn: &Connection,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<String>, usize), StorageError> {
    let (mut page, mut lower) = PageBuilder::new(prefix, after, limit);
    if page.is_full() {
        return Ok((page.into_names(), 0));
    }
    let upper = prefix_upper_bound(prefix);
    // One read transaction so that every seek sees the same snapshot.
    let snapshot = conn.unchecked_transaction().map_err(sql_error)?;
    let mut stmt = match upper {
        Some(_) => {
            snapshot.prepare_cached("SELECT key FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
        }
        None => snapshot.prepare_cached("SELECT key FROM kv WHERE key >= ?1 ORDER BY key"),
    }
    .map_err(sql_error)?;
    let mut rows_read = 0usize;
    'seek: loop {
        let mut rows = match &upper {
            Some(upper) => stmt.query(params![lower.as_bytes(), upper]),
            None => stmt.query(params![lower.as_bytes()]),
        }
        .map_err(sql_error)?;
        while let Some(row) = rows.next().map_err(sql_error)? {
            rows_read += 1;
            let key = match row.get_ref(0).map_err(sql_error)? {
                ValueRef::Blob(bytes) => {
                    std::str::from_utf8(bytes).map_err(|_| StorageError::Corrupt {
                        detail: "a stored key is not UTF-8".to_owned(),
                    })?
                }
                _ => {
                    return Err(StorageError::Corrupt {
                        detail: "a stored key is not a BLOB".to_owned(),
                    });
                }
            };
            match page.push(key) {
                Step::Continue => {}
                Step::Seek(next) => {
                    lower = next;
                    continue 'seek;
                }
                Step::Done => break 'seek,
            }
        }
        break;
    }
    drop(stmt);
    snapshot.finish().map_err(sql_error)?;
    Ok((page.into_names(), rows_read))
}
