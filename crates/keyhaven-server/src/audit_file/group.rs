//! Group commit on a regular file.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::writer::Writer;
use super::{MAX_ROUNDS, QUEUE_CAPACITY};

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

/// Group commit on a regular file (see the `audit_file` module documentation).
pub(super) struct Group {
    state: Mutex<GroupState>,
    /// Touched only by the leader, so never contended.
    pub(super) writer: Mutex<Writer>,
    /// Notified once the close record is written.
    shut: Notify,
    /// Whether `fdatasync` (a wait for the disk) follows every batch.
    fsync: bool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code holding these locks panics; should one ever, the state is still consistent
    // (every change under the lock is a single assignment or push).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Group {
    pub(super) fn new(writer: Writer) -> Group {
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
    pub(super) async fn write(
        &self,
        records: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(), String> {
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
    pub(super) fn request_reopen(&self) {
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
    pub(super) async fn close(&self, timeout: Duration) -> bool {
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
