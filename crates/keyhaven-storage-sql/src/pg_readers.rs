//! High availability: standbys' read leases, and the barrier an active replica raises
//! after each change it announced (design note `docs/design/0018-standby-reads.md`).
//!
//! - A standby that answers requests itself holds a *read lease*: a row of `ha_readers`
//!   valid until a time on the database clock, renewed while it follows the active's
//!   announcements ([`PgStore::register_reader`], [`PgStore::renew_reader`]). Its own
//!   deadline is taken from its clock *before* each renewal was sent, less a margin, so
//!   it always stops answering before the database's deadline passes.
//! - After a write that announced changes commits, the active lists the standbys whose
//!   lease is valid and sends a *barrier* on the shared channel, in one transaction
//!   ([`Notice::Barrier`](crate::Notice::Barrier)). Each standby acknowledges it on the
//!   active's own channel once it has applied every notification before it. The write
//!   returns when every listed standby has acknowledged; one that has not within
//!   [`ACK_WAIT`] has its lease revoked (it cannot renew it, so it stops answering, and
//!   registers afresh), and the write returns once that lease has run out.
//! - A standby that registers after the listing is not waited for: it pings itself
//!   after registering and answers nothing until the ping is back, by which time every
//!   change committed before it registered has been applied.
//!
//! So a change is in force on every replica that answers requests when the write that
//! made it returns, and a read on a standby needs no round trip to prove it.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyhaven_storage::StorageError;
use tokio_postgres::SimpleQueryMessage;

use crate::postgres::{PgStore, fail};

/// How long a read lease lasts after a renewal, on the database clock.
pub const READ_LEASE_TTL: Duration = Duration::from_secs(2);
/// How long the active waits for standbys to acknowledge a barrier before revoking the
/// leases of those that have not.
pub const ACK_WAIT: Duration = Duration::from_millis(500);
/// Waited beyond a revoked lease's end, for the clocks' rates.
const EXPIRY_SLACK: Duration = Duration::from_millis(50);
/// Attempts at each statement of a barrier before the write reports an error.
const ATTEMPTS: u32 = 3;
/// At most this many readers' acknowledgements are remembered (the payloads come from
/// whoever may `NOTIFY`).
const MAX_ACKS: usize = 1024;

/// A random id of 16 lowercase hex digits (a reader id, a listener's own channel).
pub(crate) fn random_id() -> String {
    format!("{:016x}", RandomState::new().build_hasher().finish())
}

/// An acknowledgement's payload, `<reader id> <barrier number>`; `None` for anything
/// else. Payloads come from whoever can `NOTIFY` on the database.
pub fn parse_ack(payload: &str) -> Option<(&str, u64)> {
    let (id, n) = payload.split_once(' ')?;
    if !is_reader_id(id) || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id, n.parse().ok()?))
}

/// Whether `id` has the shape of a reader id: 16 lowercase hex digits.
pub(crate) fn is_reader_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The channel on which the active with reader id `origin` hears acknowledgements.
pub(crate) fn ack_channel(channel: &str, origin: &str) -> String {
    format!("{channel}_a{origin}")
}

/// A store's part in the read leases: its reader id (as a standby), and the barriers it
/// raises (as the active).
pub(crate) struct Readers {
    /// This process's reader id.
    pub(crate) id: String,
    next: AtomicU64,
    heard: Arc<Heard>,
    /// The connection listening for acknowledgements, once opened.
    link: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    register: String,
    renew: String,
    drop: String,
    revoke: String,
    /// The barrier's transaction, but for its number and the closing quote.
    barrier_prefix: String,
}

/// The acknowledgements heard: the highest barrier number of each reader.
#[derive(Default)]
struct Heard {
    acks: parking_lot::Mutex<HashMap<String, u64>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Heard {
    /// Record an acknowledgement's payload, `<reader id> <barrier number>`.
    fn record(&self, payload: &str) {
        let Some((id, n)) = parse_ack(payload) else {
            return;
        };
        {
            let mut acks = self.acks.lock();
            if acks.len() >= MAX_ACKS && !acks.contains_key(id) {
                acks.clear();
            }
            let last = acks.entry(id.to_owned()).or_default();
            *last = (*last).max(n);
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn acknowledged(&self, id: &str, n: u64) -> bool {
        self.acks.lock().get(id).is_some_and(|&a| a >= n)
    }

    /// Wait until every reader in `ids` acknowledged barrier `n`.
    async fn all(&self, ids: &[String], n: u64) {
        let mut changed = self.changed.subscribe();
        while !ids.iter().all(|id| self.acknowledged(id, n)) {
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Readers {
    /// The read-lease statements over `table` (quoted), and barriers on `channel`.
    pub(crate) fn new(schema: &str, channel: &str) -> Readers {
        let id = random_id();
        let table = format!("{schema}.ha_readers");
        Readers {
            register: format!(
                "INSERT INTO {table} (id, valid_until, revoked) \
                 VALUES ($1, clock_timestamp() + make_interval(secs => $2), false) \
                 ON CONFLICT (id) DO UPDATE SET valid_until = EXCLUDED.valid_until, revoked = false"
            ),
            // Only a lease still in force is extended: one that ran out was not waited
            // for meanwhile, so its holder must register afresh (and ping) first.
            renew: format!(
                "UPDATE {table} SET valid_until = clock_timestamp() + make_interval(secs => $2) \
                 WHERE id = $1 AND NOT revoked AND valid_until > clock_timestamp()"
            ),
            drop: format!(
                "DELETE FROM {table} WHERE id = $1 OR valid_until < clock_timestamp() - interval '1 hour'"
            ),
            revoke: format!(
                "UPDATE {table} SET revoked = true WHERE id = ANY($1) \
                 RETURNING greatest(0, extract(epoch FROM valid_until - clock_timestamp()))::float8"
            ),
            // Listed first, so every standby listed is listening before the barrier is
            // committed; a barrier need not wait for the disk.
            barrier_prefix: format!(
                "BEGIN; SET LOCAL synchronous_commit = off; \
                 SELECT id FROM {table} WHERE valid_until > clock_timestamp() AND NOT revoked \
                 AND id <> '{id}'; \
                 SELECT pg_notify('{channel}', 'b{id} "
            ),
            id,
            next: AtomicU64::new(0),
            heard: Arc::new(Heard::default()),
            link: tokio::sync::Mutex::new(None),
        }
    }
}

impl PgStore {
    /// Take (or take again, after it was revoked) this replica's read lease for `ttl`.
    pub async fn register_reader(&self, ttl: Duration) -> Result<(), StorageError> {
        let client = self.pool.get().await.map_err(fail)?;
        client
            .execute(
                &self.readers.register,
                &[&self.readers.id, &ttl.as_secs_f64()],
            )
            .await
            .map_err(fail)?;
        Ok(())
    }

    /// Extend this replica's read lease to `ttl` from now; false if it was revoked,
    /// dropped or has run out (register again).
    pub async fn renew_reader(&self, ttl: Duration) -> Result<bool, StorageError> {
        let client = self.pool.get().await.map_err(fail)?;
        let rows = client
            .execute(&self.readers.renew, &[&self.readers.id, &ttl.as_secs_f64()])
            .await
            .map_err(fail)?;
        Ok(rows == 1)
    }

    /// Give up this replica's read lease (and forget leases long run out).
    pub async fn drop_reader(&self) -> Result<(), StorageError> {
        let client = self.pool.get().await.map_err(fail)?;
        client
            .execute(&self.readers.drop, &[&self.readers.id])
            .await
            .map_err(fail)?;
        Ok(())
    }

    /// After a write that announced changes committed: return once every standby holding
    /// a read lease has applied them, or has lost its lease (see the module
    /// documentation). An error means the write committed but that could not be made
    /// sure of.
    pub(crate) async fn settle(&self) -> Result<(), StorageError> {
        let readers = &self.readers;
        let linked = match self.ack_link().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(target: "keyhaven::ha", error = %crate::describe(&e), "cannot listen for standbys' acknowledgements; revoking their read leases instead");
                false
            }
        };
        let n = readers.next.fetch_add(1, Ordering::Relaxed) + 1;
        let listed = self.raise_barrier(n).await?;
        if listed.is_empty()
            || (linked
                && tokio::time::timeout(ACK_WAIT, readers.heard.all(&listed, n))
                    .await
                    .is_ok())
        {
            return Ok(());
        }
        let missing: Vec<String> = listed
            .into_iter()
            .filter(|id| !readers.heard.acknowledged(id, n))
            .collect();
        let left = self.revoke_readers(&missing).await?;
        tracing::warn!(
            target: "keyhaven::ha",
            standbys = missing.len(),
            wait_ms = left.as_millis() as u64,
            "standbys did not acknowledge a change in time: their read leases are revoked, and the change returns when they have run out"
        );
        tokio::time::sleep(left + EXPIRY_SLACK).await;
        Ok(())
    }

    /// Open the connection that hears acknowledgements, unless it is open.
    async fn ack_link(&self) -> Result<(), StorageError> {
        let readers = &self.readers;
        let mut link = readers.link.lock().await;
        if link.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        *link = None;
        let heard = readers.heard.clone();
        let client = self
            .connect_outside_pool(move |_, payload| {
                heard.record(payload);
                true
            })
            .await?;
        client
            .batch_execute(&format!(
                "LISTEN \"{}\"",
                ack_channel(&self.channel, &readers.id)
            ))
            .await
            .map_err(fail)?;
        *link = Some(client);
        Ok(())
    }

    /// List the standbys holding a read lease and send them barrier `n`.
    async fn raise_barrier(&self, n: u64) -> Result<Vec<String>, StorageError> {
        let sql = &format!("{}{n}'); COMMIT", self.readers.barrier_prefix);
        self.retried(|client| {
            Box::pin(async move {
                let messages = client.simple_query(sql).await.map_err(fail)?;
                Ok(messages
                    .iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(row)
                            if row.columns().first().is_some_and(|c| c.name() == "id") =>
                        {
                            row.get(0).map(str::to_owned)
                        }
                        _ => None,
                    })
                    .collect())
            })
        })
        .await
    }

    /// Revoke the read leases of `ids`; how long until the last of them runs out.
    async fn revoke_readers(&self, ids: &[String]) -> Result<Duration, StorageError> {
        let revoke = &self.readers.revoke;
        let left = self
            .retried(|client| {
                Box::pin(async move {
                    let mut left = 0f64;
                    for row in client.query(revoke, &[&ids]).await.map_err(fail)? {
                        left = left.max(row.try_get::<_, f64>(0).map_err(fail)?);
                    }
                    Ok(left)
                })
            })
            .await?;
        // Never longer than a lease (a clock jump on the database is not waited out),
        // and a whole lease if the answer makes no sense.
        let ttl = READ_LEASE_TTL.as_secs_f64();
        let left = if left.is_finite() {
            left.clamp(0.0, ttl)
        } else {
            ttl
        };
        Ok(Duration::from_secs_f64(left))
    }

    /// `f` on a pooled connection, tried up to [`ATTEMPTS`] times: a barrier's
    /// statements may run twice, and the write they follow has already committed.
    async fn retried<'a, T>(
        &self,
        f: impl Fn(
            deadpool_postgres::Object,
        ) -> Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'a>>,
    ) -> Result<T, StorageError> {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let result = match self.pool.get().await {
                Ok(client) => f(client).await,
                Err(e) => Err(fail(e)),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(e) => last = Some(e),
            }
        }
        Err(unsettled(last))
    }
}

fn unsettled(cause: Option<StorageError>) -> StorageError {
    let cause = cause.map_or_else(String::new, |e| format!(": {}", crate::describe(&e)));
    StorageError::unavailable(format!(
        "the change was committed, but the standbys could not be made to apply it before \
         answering again{cause}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_ids_are_sixteen_lowercase_hex_digits() {
        let readers = Readers::new("\"s\"", "keyhaven_0");
        assert!(is_reader_id(&readers.id), "{}", readers.id);
        for bad in [
            "",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789ABCDEF",
            "0123456789abcde\"",
        ] {
            assert!(!is_reader_id(bad), "{bad}");
        }
        assert_eq!(ack_channel("keyhaven_0", "ab"), "keyhaven_0_aab");
    }

    #[test]
    fn acknowledgements_keep_the_highest_barrier_of_each_reader() {
        let heard = Heard::default();
        heard.record("0123456789abcdef 4");
        heard.record("0123456789abcdef 2");
        heard.record("0123456789abcdef x");
        heard.record("not-a-reader 9");
        assert!(heard.acknowledged("0123456789abcdef", 4));
        assert!(!heard.acknowledged("0123456789abcdef", 5));
        assert!(!heard.acknowledged("not-a-reader", 1));
    }

    #[tokio::test]
    async fn a_barrier_waits_for_every_listed_reader() {
        let heard = Arc::new(Heard::default());
        let ids = vec!["000000000000000a".to_owned(), "000000000000000b".to_owned()];
        let waiting = tokio::spawn({
            let (heard, ids) = (heard.clone(), ids.clone());
            async move { heard.all(&ids, 3).await }
        });
        heard.record("000000000000000a 3");
        heard.record("000000000000000b 2");
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        heard.record("000000000000000b 3");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the barrier was acknowledged by all")
            .unwrap();
    }
}
