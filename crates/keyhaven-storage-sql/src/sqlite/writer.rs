//! The single writer thread and its group commit.
//!
//! Every write request goes through one channel to one thread that owns the only
//! read-write connection. The thread takes every request queued at that moment (up to
//! `max_batch`), opens one `BEGIN IMMEDIATE` transaction, runs each request inside its
//! own `SAVEPOINT` (a failed condition or an error undoes that request alone), then
//! issues one `COMMIT`. With `synchronous=FULL` that is one WAL fsync for the whole
//! batch, so concurrent writers share the cost of durability. Replies are sent only
//! after the `COMMIT` returned: an acknowledged write is on disk. If the batch cannot
//! be committed, every request in it gets the error and nothing of it is applied.
//!
//! While one batch commits, new requests queue up and form the next batch, so batches
//! grow by themselves under load and stay at one request when idle (no added latency).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;

use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use keyhaven_storage::{Condition, Op, StorageError, Transaction, TxOutcome};

use super::cache::ReadCache;
use super::{ConnectionRole, ConnectionSettings, shared_sql_error, sql_error};

/// Reply channel of one request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

/// What callers ask the writer thread for.
pub(crate) enum Command {
    /// Apply a (validated) transaction.
    Write {
        tx: Transaction,
        reply: Reply<TxOutcome>,
    },
    /// Report the writer connection's settings.
    Settings { reply: Reply<ConnectionSettings> },
}

/// Counters of the group commit, shared with the store.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Batches committed.
    pub(crate) batches: AtomicU64,
    /// Write requests in those batches.
    pub(crate) requests: AtomicU64,
}

/// Run the writer loop until every sender is gone and the queue is drained.
pub(crate) fn run(
    conn: Connection,
    commands: Receiver<Command>,
    max_batch: usize,
    counters: Arc<Counters>,
    cache: Arc<ReadCache>,
) {
    let max_batch = max_batch.max(1);
    let mut batch: Vec<(Transaction, Reply<TxOutcome>)> = Vec::with_capacity(max_batch);
    // `recv` keeps returning queued commands after the last sender is dropped, so a
    // close finishes the queued work before the thread exits.
    while let Ok(first) = commands.recv() {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Write { tx, reply } => batch.push((tx, reply)),
                Command::Settings { reply } => {
                    // A closed reply channel means the caller went away; nothing to do.
                    let _ = reply.send(ConnectionSettings::read(&conn, ConnectionRole::Writer));
                }
            }
            if batch.len() >= max_batch {
                break;
            }
            next = commands.try_recv().ok();
        }
        commit_batch(&conn, &mut batch, &counters, &cache);
    }
    // Let SQLite refresh its planner statistics if they are stale (cheap when not).
    if let Err(err) = conn.execute_batch("PRAGMA optimize") {
        tracing::warn!(error = %err, "sqlite PRAGMA optimize failed at close");
    }
    tracing::debug!("sqlite writer thread stopped");
}

/// Apply and commit `batch`, answer every request, and leave `batch` empty.
///
/// Around the commit, the read cache forgets every key the batch writes (or tries to: a
/// failed batch is treated the same, as the cheap and safe choice) and keeps no read
/// until the commit returned; that is before any request is answered.
fn commit_batch(
    conn: &Connection,
    batch: &mut Vec<(Transaction, Reply<TxOutcome>)>,
    counters: &Counters,
    cache: &ReadCache,
) {
    if batch.is_empty() {
        return;
    }
    cache.committing(batch.iter().flat_map(|(tx, _)| tx.ops.iter().map(Op::key)));
    let result = apply_batch(conn, batch);
    cache.committed();
    match result {
        Ok(outcomes) => {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            let requests = u64::try_from(batch.len()).unwrap_or(u64::MAX);
            counters.requests.fetch_add(requests, Ordering::Relaxed);
            for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(err) => {
            if !conn.is_autocommit()
                && let Err(rollback) = conn.execute_batch("ROLLBACK")
            {
                tracing::error!(error = %rollback, "sqlite rollback of a failed batch failed");
            }
            tracing::warn!(error = %err, requests = batch.len(), "sqlite write batch failed");
            let err = Arc::new(err);
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(shared_sql_error(&err)));
            }
        }
    }
}

/// Run every request of the batch in its own savepoint inside one transaction, then
/// commit. `Err` means the whole batch is lost.
fn apply_batch(
    conn: &Connection,
    batch: &[(Transaction, Reply<TxOutcome>)],
) -> rusqlite::Result<Vec<Result<TxOutcome, StorageError>>> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for (tx, _) in batch {
        conn.execute_batch("SAVEPOINT request")?;
        match apply(conn, tx) {
            Ok(TxOutcome::Committed) => {
                conn.execute_batch("RELEASE request")?;
                outcomes.push(Ok(TxOutcome::Committed));
            }
            Ok(failed) => {
                conn.execute_batch("ROLLBACK TO request; RELEASE request")?;
                outcomes.push(Ok(failed));
            }
            Err(err) => {
                if conn.is_autocommit() {
                    // SQLite rolled back the whole transaction (I/O error, disk full…):
                    // the earlier requests of the batch are gone too.
                    return Err(err);
                }
                conn.execute_batch("ROLLBACK TO request; RELEASE request")?;
                outcomes.push(Err(sql_error(err)));
            }
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(outcomes)
}

/// Check every condition, then apply every op in order, on the open transaction.
fn apply(conn: &Connection, tx: &Transaction) -> rusqlite::Result<TxOutcome> {
    for (index, condition) in tx.conditions.iter().enumerate() {
        let holds = match condition {
            Condition::Absent { key } => !conn
                .prepare_cached("SELECT 1 FROM kv WHERE key = ?1")?
                .exists(params![key.as_bytes()])?,
            Condition::Equals { key, value } => conn
                .prepare_cached("SELECT 1 FROM kv WHERE key = ?1 AND value = ?2")?
                .exists(params![key.as_bytes(), value])?,
        };
        if !holds {
            return Ok(TxOutcome::ConditionFailed { index });
        }
    }
    for op in &tx.ops {
        match op {
            Op::Put { key, value } => {
                conn.prepare_cached(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![key.as_bytes(), value])?;
            }
            Op::Delete { key } => {
                conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                    .execute(params![key.as_bytes()])?;
            }
        }
    }
    Ok(TxOutcome::Committed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &[u8]) -> Op {
        Op::Put {
            key: key.to_owned(),
            value: value.to_vec(),
        }
    }

    fn pending(tx: Transaction) -> (Transaction, Reply<TxOutcome>) {
        let (reply, _answer) = oneshot::channel();
        (tx, reply)
    }

    #[test]
    fn a_failed_request_is_undone_alone_and_the_batch_commits_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let batch = vec![
            pending(Transaction {
                conditions: vec![],
                ops: vec![put("a", b"1")],
            }),
            pending(Transaction {
                // Holds: sees the first request's write, made earlier in the batch.
                conditions: vec![Condition::Equals {
                    key: "a".into(),
                    value: b"1".to_vec(),
                }],
                ops: vec![put("b", b"2")],
            }),
            pending(Transaction {
                conditions: vec![
                    Condition::Equals {
                        key: "b".into(),
                        value: b"2".to_vec(),
                    },
                    Condition::Absent { key: "a".into() },
                ],
                ops: vec![put("c", b"never"), Op::Delete { key: "a".into() }],
            }),
            pending(Transaction {
                conditions: vec![],
                ops: vec![put("d", b"4")],
            }),
        ];
        let outcomes: Vec<TxOutcome> = apply_batch(&conn, &batch)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            outcomes,
            [
                TxOutcome::Committed,
                TxOutcome::Committed,
                TxOutcome::ConditionFailed { index: 1 },
                TxOutcome::Committed
            ]
        );
        assert!(conn.is_autocommit(), "the batch transaction is closed");
        let keys: Vec<Vec<u8>> = conn
            .prepare("SELECT key FROM kv ORDER BY key")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec(), b"d".to_vec()]);
    }

    #[test]
    fn commit_batch_answers_every_request_and_counts() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        let counters = Counters::default();
        let mut answers = Vec::new();
        let mut batch = Vec::new();
        for i in 0..3 {
            let (reply, answer) = oneshot::channel();
            let ops = vec![put(&format!("k{i}"), b"v")];
            batch.push((
                Transaction {
                    conditions: vec![],
                    ops,
                },
                reply,
            ));
            answers.push(answer);
        }
        commit_batch(&conn, &mut batch, &counters, &ReadCache::new(0));
        assert!(batch.is_empty());
        for mut answer in answers {
            assert_eq!(answer.try_recv().unwrap().unwrap(), TxOutcome::Committed);
        }
        assert_eq!(counters.batches.load(Ordering::Relaxed), 1);
        assert_eq!(counters.requests.load(Ordering::Relaxed), 3);
    }
}
