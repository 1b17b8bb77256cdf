//! High availability over one PostgreSQL database: leader election on the database clock
//! and write fencing (design note `docs/design/0017-postgresql-ha.md`).
//!
//! - One row, `ha_leader`, names the active replica: its node id, addresses, the
//!   database session that holds it (`backend_pid`, `backend_start`), `valid_until` on the
//!   database clock, and `term`, which grows by one at every change of leader.
//! - A replica may take the row when it has expired (the holder stopped renewing: paused,
//!   partitioned) or when the holder's session is gone (the process died: the database
//!   ended its session, so a killed active is replaced within one poll, not one TTL).
//!   Before a takeover it ends the sessions of the previous holder, whose connections are
//!   named `keyhaven/<node id>` (a paused process's open transactions would otherwise
//!   hold their locks).
//! - Every write of the active first takes a key-share lock on the row and checks the
//!   term it won ([`Fence`]). A takeover locks the row `FOR UPDATE`, so it waits for the
//!   writes in flight; a write that starts later sees the new term and is refused. A
//!   replica that lost the leadership therefore cannot commit a write, whatever its clock
//!   or its view of the world.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio_postgres::Client;

use crate::PgStore;
use keyhaven_storage::StorageError;

/// [`Fence::term`] of a store without high availability: writes are not checked.
pub(crate) const UNFENCED: i64 = 0;
/// [`Fence::term`] of a standby: every write is refused.
const STANDBY: i64 = -1;

/// How a [`PgStore`]'s writes are fenced: unchecked (no high availability), refused (a
/// standby), or checked against the term this replica won.
#[derive(Debug)]
pub struct Fence {
    term: AtomicI64,
    /// Woken when a write found the term changed: the replica lost the leadership.
    lost: tokio::sync::Notify,
}

impl Default for Fence {
    fn default() -> Self {
        Fence {
            term: AtomicI64::new(UNFENCED),
            lost: tokio::sync::Notify::new(),
        }
    }
}

impl Fence {
    pub(crate) fn term(&self) -> i64 {
        self.term.load(Ordering::Acquire)
    }

    /// Refuse every write (a standby, or a replica that lost the leadership).
    pub fn refuse_writes(&self) {
        self.term.store(STANDBY, Ordering::Release);
    }

    /// Accept writes made while `term` is the leadership's term.
    pub fn accept_term(&self, term: i64) {
        self.term.store(term.max(1), Ordering::Release);
    }

    /// The term writes are checked against, if they are.
    pub fn current_term(&self) -> Option<i64> {
        let term = self.term();
        (term > 0).then_some(term)
    }

    /// A write found the leadership changed.
    pub(crate) fn fenced_out(&self, term: i64) {
        if self
            .term
            .compare_exchange(term, STANDBY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::error!(
                target: "keyhaven::ha",
                term,
                "a write found that another replica took the leadership; writes are refused from now on"
            );
            self.lost.notify_waiters();
        }
    }

    /// Resolves when a write finds the leadership lost (after this call).
    pub async fn lost(&self) {
        self.lost.notified().await;
    }
}

/// This replica, as the leadership row records it.
#[derive(Debug, Clone)]
pub struct HaNode {
    /// A random id of this process (a restarted replica is a new node).
    pub id: String,
    /// Where clients reach it (`[ha] api_address`).
    pub api_address: String,
    /// Where other replicas forward to (`[ha] cluster_address`, or the API address).
    pub cluster_address: String,
}

/// The active replica, as the leadership row names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The node id of the holder.
    pub holder: String,
    /// The leadership's term.
    pub term: i64,
    /// Its API address.
    pub api_address: String,
    /// Its cluster address.
    pub cluster_address: String,
    /// When it became active, RFC 3339 (database clock).
    pub active_since: String,
}

/// A replica as it last echoed (`sys/ha-status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its node id.
    pub id: String,
    /// The machine it runs on.
    pub hostname: String,
    /// Its API address.
    pub api_address: String,
    /// Its cluster address.
    pub cluster_address: String,
    /// Its version.
    pub version: String,
    /// When it last echoed, RFC 3339 (database clock).
    pub last_echo: String,
}

/// Replicas that have not echoed for this long are not listed.
const NODE_LISTED_FOR_SECS: i64 = 60;
/// Replicas that have not echoed for this long are forgotten.
const NODE_KEPT_FOR_SECS: i64 = 3600;

/// A replica's handle on the leadership: a database session of its own, whose backend
/// the leadership row records while this replica holds it.
pub struct HaSession {
    store: Arc<PgStore>,
    client: Option<deadpool_postgres::ClientWrapper>,
    node: HaNode,
    ttl: Duration,
}

impl std::fmt::Debug for HaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaSession")
            .field("node", &self.node.id)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// How long one statement of the election may take: less than the TTL, so that a
/// replica notices a lost leadership before another may take it.
fn statement_budget(ttl: Duration) -> Duration {
    (ttl * 2 / 3).max(Duration::from_millis(500))
}

fn db_fail(e: tokio_postgres::Error) -> StorageError {
    StorageError::unavailable(e)
}

/// An error and its causes, for the log (storage errors keep their cause as a source).
pub fn describe(e: &StorageError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl HaSession {
    /// A handle on the leadership of `store`'s schema for `node`; the leadership expires
    /// `ttl` after the holder's last renewal. Writes of `store` are not fenced until
    /// [`HaSession::try_acquire`] wins (a sealed or standby replica writes nothing but
    /// `sys/init`'s and a seal migration's conditional records); once this replica has
    /// held the leadership and lost or released it, they are refused.
    pub fn new(store: Arc<PgStore>, node: HaNode, ttl: Duration) -> HaSession {
        HaSession {
            store,
            client: None,
            node,
            ttl,
        }
    }

    /// This replica.
    pub fn node(&self) -> &HaNode {
        &self.node
    }

    /// The fence of this replica's writes.
    pub fn fence(&self) -> &Arc<Fence> {
        &self.store.fence
    }

    fn table(&self) -> String {
        format!("\"{}\".ha_leader", self.store.schema())
    }

    /// The session, connected if it is not (a new session when the old one ended).
    async fn client(&mut self) -> Result<&Client, StorageError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let object = self
                .store
                .pool
                .get()
                .await
                .map_err(|e| StorageError::unavailable(e.to_string()))?;
            self.client = Some(deadpool_postgres::Object::take(object));
        }
        self.client
            .as_deref()
            .ok_or_else(|| StorageError::unavailable("no database session"))
    }

    /// Run `f` on the session within the statement budget; a timeout drops the session
    /// (its statement may still be running) and is an error.
    async fn bounded<T>(
        &mut self,
        f: impl for<'c> FnOnce(
            &'c Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    ) -> Result<T, StorageError> {
        let budget = statement_budget(self.ttl);
        let client = self.client().await?;
        match tokio::time::timeout(budget, f(client)).await {
            Ok(result) => result.map_err(db_fail),
            Err(_) => {
                self.client = None;
                Err(StorageError::unavailable(format!(
                    "the database did not answer the leadership query within {budget:?}"
                )))
            }
        }
    }

    /// Try to become the active replica. `Some(term)` when this replica now holds the
    /// leadership: its store's writes are accepted under that term from now on.
    pub async fn try_acquire(&mut self) -> Result<Option<i64>, StorageError> {
        let table = self.table();
        let me = self.node.id.clone();
        // A look without locks first: most polls end here.
        let look = format!(
            "SELECT t.holder, (t.valid_until < now() OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
             WHERE a.pid = t.backend_pid AND a.backend_start = t.backend_start)) \
             FROM {table} t WHERE t.id = 1"
        );
        let row = self
            .bounded(move |c| Box::pin(async move { c.query_opt(&look, &[]).await }))
            .await?;
        let previous = match row {
            Some(row) => {
                let holder: String = row.try_get(0).map_err(db_fail)?;
                let free: bool = row.try_get(1).map_err(db_fail)?;
                if !free {
                    return Ok(None);
                }
                Some(holder)
            }
            None => None,
        };
        if let Some(old) = previous.filter(|old| *old != me) {
            // End the predecessor's sessions: a paused process's open transaction would
            // hold its lock on the row, and its connections must not write again.
            let name = format!("keyhaven/{old}");
            let ended = self
                .bounded(move |c| {
                    Box::pin(async move {
                        c.query(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = $1 AND datname = current_database()",
                            &[&name],
                        )
                        .await
                    })
                })
                .await;
            match ended {
                Ok(rows) if !rows.is_empty() => tracing::warn!(
                    target: "keyhaven::ha",
                    previous = %old,
                    sessions = rows.len(),
                    "ended the database sessions of the previous active replica"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    target: "keyhaven::ha",
                    previous = %old,
                    error = %e,
                    "could not end the previous active replica's database sessions; taking over waits for its transactions"
                ),
            }
        }
        let node = self.node.clone();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let take = format!(
            "SELECT t.term, (t.valid_until < now() OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
             WHERE a.pid = t.backend_pid AND a.backend_start = t.backend_start)) \
             FROM {table} t WHERE t.id = 1 FOR UPDATE"
        );
        let update = format!(
            "UPDATE {table} SET term = term + 1, holder = $1, api_address = $2, \
             cluster_address = $3, backend_pid = pg_backend_pid(), \
             backend_start = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()), \
             valid_until = now() + $4::int8 * interval '1 millisecond', acquired_at = now() \
             WHERE id = 1 RETURNING term"
        );
        let insert = format!(
            "INSERT INTO {table} (id, term, holder, api_address, cluster_address, backend_pid, \
             backend_start, valid_until, acquired_at) \
             SELECT 1, 1, $1, $2, $3, pg_backend_pid(), backend_start, \
             now() + $4::int8 * interval '1 millisecond', now() \
             FROM pg_stat_activity WHERE pid = pg_backend_pid() \
             ON CONFLICT (id) DO NOTHING RETURNING term"
        );
        let won = self
            .bounded(move |c| {
                Box::pin(async move {
                    c.batch_execute("BEGIN; SET LOCAL lock_timeout = '2s'")
                        .await?;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                        [&node.id, &node.api_address, &node.cluster_address, &ttl_ms];
                    let result = async {
                        let term = match c.query_opt(&take, &[]).await? {
                            None => c.query_opt(&insert, &params).await?,
                            Some(row) if row.try_get::<_, bool>(1)? => {
                                c.query_opt(&update, &params).await?
                            }
                            Some(_) => None,
                        };
                        term.map(|row| row.try_get::<_, i64>(0)).transpose()
                    }
                    .await;
                    match result {
                        Ok(term) => {
                            c.batch_execute("COMMIT").await?;
                            Ok(term)
                        }
                        Err(e) => {
                            let _ = c.batch_execute("ROLLBACK").await;
                            Err(e)
                        }
                    }
                })
            })
            .await;
        let term = match won {
            Ok(term) => term,
            Err(e) => {
                // The session's transaction state is unknown: start afresh next time.
                self.client = None;
                return Err(e);
            }
        };
        if let Some(term) = term {
            self.store.fence.accept_term(term);
            tracing::info!(target: "keyhaven::ha", term, node = %self.node.id, "acquired the leadership");
        }
        Ok(term)
    }

    /// Extend the leadership of `term` by the TTL. `Ok(false)`: it is lost (another
    /// replica holds it, or this session ended); writes are refused from now on.
    pub async fn renew(&mut self, term: i64) -> Result<bool, StorageError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            // The row names the session that ended: the leadership went with it.
            self.store.fence.refuse_writes();
            return Ok(false);
        }
        let table = self.table();
        let me = self.node.id.clone();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let renew = format!(
            "UPDATE {table} SET valid_until = now() + $3::int8 * interval '1 millisecond' \
             WHERE id = 1 AND term = $1 AND holder = $2 AND backend_pid = pg_backend_pid()"
        );
        let renewed = self
            .bounded(move |c| {
                Box::pin(async move { c.execute(&renew, &[&term, &me, &ttl_ms]).await })
            })
            .await?;
        if renewed == 0 {
            self.store.fence.refuse_writes();
        }
        Ok(renewed == 1)
    }

    /// Give up the leadership of `term` (step-down, seal, shutdown): it expires at once,
    /// so a standby takes it at its next poll. Writes are refused from now on.
    pub async fn release(&mut self, term: i64) -> Result<(), StorageError> {
        self.store.fence.refuse_writes();
        let table = self.table();
        let me = self.node.id.clone();
        let release = format!(
            "UPDATE {table} SET valid_until = now() - interval '1 second' \
             WHERE id = 1 AND term = $1 AND holder = $2"
        );
        self.bounded(move |c| Box::pin(async move { c.execute(&release, &[&term, &me]).await }))
            .await?;
        tracing::info!(target: "keyhaven::ha", term, "released the leadership");
        Ok(())
    }

    /// Say that this replica is alive (its row in `ha_nodes`), and forget replicas silent
    /// for an hour.
    pub async fn echo(&mut self, hostname: &str, version: &str) -> Result<(), StorageError> {
        let nodes = format!("\"{}\".ha_nodes", self.store.schema());
        let node = self.node.clone();
        let (hostname, version) = (hostname.to_owned(), version.to_owned());
        let upsert = format!(
            "INSERT INTO {nodes} (id, hostname, api_address, cluster_address, version, last_echo) \
             VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (id) DO UPDATE SET \
             hostname = EXCLUDED.hostname, api_address = EXCLUDED.api_address, \
             cluster_address = EXCLUDED.cluster_address, version = EXCLUDED.version, \
             last_echo = now()"
        );
        let forget =
            format!("DELETE FROM {nodes} WHERE last_echo < now() - $1::int8 * interval '1 second'");
        self.bounded(move |c| {
            Box::pin(async move {
                c.execute(
                    &upsert,
                    &[
                        &node.id,
                        &hostname,
                        &node.api_address,
                        &node.cluster_address,
                        &version,
                    ],
                )
                .await?;
                c.execute(&forget, &[&NODE_KEPT_FOR_SECS]).await
            })
        })
        .await
        .map(drop)
    }

    /// The replicas that echoed in the last minute, by API address.
    pub async fn nodes(&mut self) -> Result<Vec<NodeInfo>, StorageError> {
        let query = format!(
            "SELECT id, hostname, api_address, cluster_address, version, \
             to_char(last_echo AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM \"{}\".ha_nodes WHERE last_echo >= now() - $1::int8 * interval '1 second' \
             ORDER BY api_address, id",
            self.store.schema()
        );
        let rows = self
            .bounded(move |c| {
                Box::pin(async move { c.query(&query, &[&NODE_LISTED_FOR_SECS]).await })
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(NodeInfo {
                    id: row.try_get(0).map_err(db_fail)?,
                    hostname: row.try_get(1).map_err(db_fail)?,
                    api_address: row.try_get(2).map_err(db_fail)?,
                    cluster_address: row.try_get(3).map_err(db_fail)?,
                    version: row.try_get(4).map_err(db_fail)?,
                    last_echo: row.try_get(5).map_err(db_fail)?,
                })
            })
            .collect()
    }

    /// The active replica, if one holds a live leadership.
    pub async fn leader(&mut self) -> Result<Option<LeaderInfo>, StorageError> {
        let table = self.table();
        let query = format!(
            "SELECT t.holder, t.term, t.api_address, t.cluster_address, \
             to_char(t.acquired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM {table} t WHERE t.id = 1 AND t.valid_until >= now() AND EXISTS \
             (SELECT 1 FROM pg_stat_activity a WHERE a.pid = t.backend_pid \
              AND a.backend_start = t.backend_start)"
        );
        let row = self
            .bounded(move |c| Box::pin(async move { c.query_opt(&query, &[]).await }))
            .await?;
        row.map(|row| {
            Ok(LeaderInfo {
                holder: row.try_get(0).map_err(db_fail)?,
                term: row.try_get(1).map_err(db_fail)?,
                api_address: row.try_get(2).map_err(db_fail)?,
                cluster_address: row.try_get(3).map_err(db_fail)?,
                active_since: row.try_get(4).map_err(db_fail)?,
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_budget_is_below_the_ttl() {
        assert_eq!(
            statement_budget(Duration::from_secs(15)),
            Duration::from_secs(10)
        );
        assert_eq!(
            statement_budget(Duration::from_millis(600)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_fence_refuses_after_a_lost_term_only_once() {
        let fence = Fence::default();
        assert_eq!(fence.term(), UNFENCED);
        fence.accept_term(7);
        assert_eq!(fence.current_term(), Some(7));
        fence.fenced_out(6);
        assert_eq!(
            fence.current_term(),
            Some(7),
            "a stale term changes nothing"
        );
        fence.fenced_out(7);
        assert_eq!(fence.current_term(), None);
        assert_eq!(fence.term(), STANDBY);
    }
}
