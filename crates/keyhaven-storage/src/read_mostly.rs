//! A lock for what every request reads and little writes: the engine's state, its mount
//! tables and caches, the stores' in-process maps.

use std::fmt;
use std::sync::PoisonError;

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

/// A reader-writer lock whose readers lock only their thread's part of it, each part on
/// its own cache line. With one lock word (`parking_lot::RwLock`), every read writes
/// that word twice, and requests on different CPUs pass its cache line back and forth.
/// A write locks every part: slower, and rare here (a seal, a mount change, a cache
/// fill). A panic while it was held leaves the value as it was written (no poisoning,
/// as with `parking_lot`).
pub struct ReadMostly<T>(ShardedLock<T>);

impl<T> ReadMostly<T> {
    /// A lock holding `value`.
    pub fn new(value: T) -> Self {
        ReadMostly(ShardedLock::new(value))
    }

    /// Shared: locks the calling thread's shard only.
    pub fn read(&self) -> ShardedLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Exclusive: locks every shard.
    pub fn write(&self) -> ShardedLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Default> Default for ReadMostly<T> {
    fn default() -> Self {
        ReadMostly::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for ReadMostly<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.read(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_seen_by_readers_on_every_thread() {
        let lock = ReadMostly::new(0u64);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        *lock.write() += 1;
                    }
                });
            }
        });
        let seen: Vec<u64> = std::thread::scope(|scope| {
            let readers: Vec<_> = (0..12).map(|_| scope.spawn(|| *lock.read())).collect();
            readers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(seen.iter().all(|&v| v == 4000), "{seen:?}");
    }

    #[test]
    fn a_panic_while_writing_leaves_the_value_readable() {
        let lock = ReadMostly::new(vec![1]);
        let _ = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut v = lock.write();
                    v.push(2);
                    panic!("while holding the lock");
                })
                .join()
        });
        assert_eq!(*lock.read(), vec![1, 2]);
        lock.write().push(3);
        assert_eq!(*lock.read(), vec![1, 2, 3]);
    }
}
