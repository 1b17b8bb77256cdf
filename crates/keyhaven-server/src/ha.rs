//! High availability: the election loop of one replica, and how a standby answers.
//!
//! - [`Election::run`] polls the leadership row ([`keyhaven_storage_sql::HaSession`]): a
//!   standby tries to take it, the active renews it. Winning promotes the engine (it loads
//!   its state from the database); losing it, failing to renew it for a whole TTL, a
//!   fenced write, `sys/step-down`, or a seal demote it.
//! - [`forward`] is the outermost layer of the router: on a standby every request but
//!   the few it answers itself (`sys/health`, `sys/leader`, `sys/seal-status`,
//!   `sys/unseal`, `sys/init`, `sys/seal`) is forwarded to the active, and its status,
//!   headers and body relayed. `X-Vault-No-Request-Forwarding` asks for a 307 to the
//!   active instead. A request forwarded once is never forwarded again.
//! - [`StandbyReads::run`] lets a standby answer requests without effects itself: it
//!   listens for the active's announcements of changes, loads the engine's replica
//!   state, takes a read lease, and applies each announcement in order, acknowledging
//!   the active's barriers. The active's writes return only when every standby holding
//!   a lease has applied them (or lost its lease), so a standby answers while its lease
//!   holds, with no round trip. Anything the engine cannot answer without a write
//!   ([`ServeElsewhere`]) is forwarded.
//!
//! See `docs/ha.md` and `docs/design/0017-postgresql-ha.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse as _, Response};
use keyhaven_engine::Core;
use keyhaven_engine::ha::{HaControl, HaStatus, Leader, Role};
use keyhaven_storage_sql::{HaNode, HaSession, LeaderInfo};
use parking_lot::RwLock;

/// How often a standby looks for a free leadership (and the active renews it, when the
/// TTL allows): a killed active is replaced within about this long.
const POLL: Duration = Duration::from_millis(500);
/// How long a replica that stepped down, or failed to become active, waits before
/// competing again (OpenBao: 10 s).
const STEP_DOWN_PAUSE: Duration = Duration::from_secs(10);
/// Marks a forwarded request; its value is the forwarding replica's node id.
pub(crate) const FORWARDED_BY: &str = "x-keyhaven-forwarded-by";
/// The client's address as a standby saw it: `<ip> <unix seconds> <hex HMAC>`, the HMAC
/// under [`Core::forwarding_key`] of the address, the time, the method and the path.
pub(crate) const FORWARDED_FOR: &str = "x-keyhaven-forwarded-for";
/// [`FORWARDED_FOR`], parsed once: it is looked up on every request.
static FORWARDED_FOR_NAME: axum::http::HeaderName =
    axum::http::HeaderName::from_static(FORWARDED_FOR);
/// How far the time in [`FORWARDED_FOR`] may be from the active's clock.
const FORWARDED_FOR_SKEW: u64 = 60;
/// Marks a standby's refusal of a forwarded request (it did not handle it).
const NOT_ACTIVE: &str = "x-keyhaven-not-active";
/// How long a standby holds a request while no replica is active (a fail-over takes
/// about one poll when the active died).
const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long a forwarded request may take at the active.
const MAX_FORWARD_WAIT: Duration = Duration::from_secs(90);

/// A standby stops answering requests itself this long before its read lease ends on
/// the database clock, by its own clock (started before the renewal was sent).
const LEASE_MARGIN: Duration = Duration::from_millis(250);
/// How often a standby renews its read lease.
const LEASE_RENEWAL: Duration = Duration::from_millis(500);
/// How long a standby waits for its first ping after taking a read lease.
const FIRST_PING_WAIT: Duration = Duration::from_secs(5);

/// Marks a response the engine did not give because this replica is a standby
/// ([`keyhaven_engine::EngineError::NotActive`]): the request is forwarded instead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeElsewhere;

/// A standby's answers to requests without effects (see the module documentation).
pub struct StandbyReads {
    store: Arc<keyhaven_storage_sql::PgStore>,
    /// The zero of [`Self::until`].
    base: Instant,
    /// Nanoseconds after [`Self::base`] until which this standby may answer requests
    /// itself (its read lease, less [`LEASE_MARGIN`]); 0 while it may not.
    until: AtomicU64,
    /// Which lease [`Self::until`] is about: bumped when this standby stops answering,
    /// so that a renewal of the lease before cannot extend it.
    lease: parking_lot::Mutex<u64>,
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for StandbyReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandbyReads")
            .field("fresh", &self.fresh())
            .finish_non_exhaustive()
    }
}

impl StandbyReads {
    /// Standby reads over `store` (the store must announce the active's changes,
    /// [`keyhaven_storage_sql::PgStore::announce`]).
    pub fn new(store: Arc<keyhaven_storage_sql::PgStore>) -> StandbyReads {
        StandbyReads {
            store,
            base: Instant::now(),
            until: AtomicU64::new(0),
            lease: parking_lot::Mutex::new(0),
        }
    }

    /// Whether this standby may answer a request that arrived before this call itself:
    /// it holds a read lease, so every change acknowledged so far has been applied.
    fn fresh(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now < self.until.load(Ordering::Acquire)
    }

    /// Extend what [`Self::fresh`] allows to lease number `lease` of
    /// [`keyhaven_storage_sql::READ_LEASE_TTL`], renewed at `sent`, unless this standby
    /// stopped answering since.
    fn hold_until(&self, lease: u64, sent: Instant) {
        let end = sent + keyhaven_storage_sql::READ_LEASE_TTL - LEASE_MARGIN;
        let nanos =
            u64::try_from(end.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        let current = self.lease.lock();
        if *current == lease {
            self.until.fetch_max(nanos, Ordering::AcqRel);
        }
    }

    /// Stop answering requests until a new lease is held.
    fn stop_answering(&self) {
        let mut current = self.lease.lock();
        *current += 1;
        self.until.store(0, Ordering::Release);
    }

    /// Renew lease number `lease` every [`LEASE_RENEWAL`] after `renewed`, beside
    /// [`Self::follow`] (so a slow renewal never delays an acknowledgement), until it is
    /// revoked: then `revoked` is told.
    async fn renew(
        self: Arc<Self>,
        lease: u64,
        mut renewed: Instant,
        revoked: tokio::sync::oneshot::Sender<()>,
    ) {
        use keyhaven_storage_sql::READ_LEASE_TTL;
        loop {
            tokio::time::sleep_until((renewed + LEASE_RENEWAL).into()).await;
            let sent = Instant::now();
            renewed = sent;
            match tokio::time::timeout(LEASE_RENEWAL, self.store.renew_reader(READ_LEASE_TTL)).await
            {
                Ok(Ok(true)) => self.hold_until(lease, sent),
                Ok(Ok(false)) => {
                    let _ = revoked.send(());
                    return;
                }
                // The lease runs out by itself if this goes on.
                Ok(Err(e)) => {
                    tracing::debug!(target: "keyhaven::ha", error = %keyhaven_storage_sql::describe(&e), "standby reads: cannot renew the read lease");
                }
                Err(_) => {
                    tracing::debug!(target: "keyhaven::ha", "standby reads: renewing the read lease timed out");
                }
            }
        }
    }

    /// Keep the replica state of this standby exact while it is a standby; runs until
    /// the task is aborted.
    pub async fn run(self: Arc<Self>, core: Arc<Core>) {
        let mut last_error: Option<String> = None;
        loop {
            if core.role() != Role::Standby {
                tokio::time::sleep(POLL).await;
                continue;
            }
            let listener = match self.store.listen().await {
                Ok(listener) => listener,
                Err(e) => {
                    let text = keyhaven_storage_sql::describe(&e);
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(target: "keyhaven::ha", error = %text, "standby reads: cannot listen for the active's changes; forwarding every request");
                        last_error = Some(text);
                    }
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            // Listening first: whatever commits from now on is heard, and whatever
            // committed before is in what the replica loads.
            match core.load_replica().await {
                Ok(true) => {
                    last_error = None;
                    self.follow(&core, listener).await;
                    self.stop_answering();
                    if let Err(e) = self.store.drop_reader().await {
                        tracing::debug!(target: "keyhaven::ha", error = %keyhaven_storage_sql::describe(&e), "standby reads: cannot give up the read lease; it runs out by itself");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(target: "keyhaven::ha", error = %text, "standby reads: cannot load the state; forwarding every request");
                        last_error = Some(text);
                    }
                }
            }
            core.drop_replica();
            tokio::time::sleep(POLL).await;
        }
    }

    /// Apply one notice; `Some(n)` if it was this listener's ping `n`.
    async fn apply(
        core: &Core,
        listener: &keyhaven_storage_sql::Listener,
        notice: keyhaven_storage_sql::Notice,
    ) -> Result<Option<u64>, String> {
        use keyhaven_storage_sql::Notice;
        match notice {
            Notice::Changed(keys) => core.apply_changes(&keys).await.map_err(|e| e.to_string())?,
            Notice::Ping(n) => return Ok(Some(n)),
            // Every notice before the barrier has been applied: acknowledge it.
            Notice::Barrier { origin, n } => listener
                .ack(&origin, n)
                .await
                .map_err(|e| keyhaven_storage_sql::describe(&e))?,
            _ => {
                core.load_replica().await.map_err(|e| e.to_string())?;
            }
        }
        Ok(None)
    }

    /// Take a read lease, then apply the announcements, acknowledge the barriers and
    /// renew the lease until the listener, the lease or the standby role ends.
    async fn follow(self: &Arc<Self>, core: &Core, mut listener: keyhaven_storage_sql::Listener) {
        use keyhaven_storage_sql::READ_LEASE_TTL;
        let channel_lost = || {
            tracing::warn!(target: "keyhaven::ha", "standby reads: the database connection that carries changes ended; forwarding every request until it is back");
        };
        // The lease first, then a ping: the active waits for this standby from the
        // moment the lease is registered, and the ping brings in every change committed
        // before that.
        let lease = *self.lease.lock();
        let renewed = Instant::now();
        if let Err(e) = self.store.register_reader(READ_LEASE_TTL).await {
            tracing::warn!(target: "keyhaven::ha", error = %keyhaven_storage_sql::describe(&e), "standby reads: cannot take a read lease; forwarding every request");
            return;
        }
        if let Err(e) = listener.ping(1).await {
            tracing::warn!(target: "keyhaven::ha", error = %keyhaven_storage_sql::describe(&e), "standby reads: cannot reach the database; forwarding every request");
            return;
        }
        let first_ping = tokio::time::sleep(FIRST_PING_WAIT);
        tokio::pin!(first_ping);
        loop {
            let notice = tokio::select! {
                notice = listener.next() => notice,
                () = &mut first_ping => {
                    tracing::warn!(target: "keyhaven::ha", "standby reads: the database did not return a ping; forwarding every request");
                    return;
                }
            };
            let Some(notice) = notice else {
                channel_lost();
                return;
            };
            match Self::apply(core, &listener, notice).await {
                Ok(Some(1)) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(target: "keyhaven::ha", error = %e, "standby reads: cannot apply a change; forwarding every request");
                    return;
                }
            }
        }
        self.hold_until(lease, renewed);
        let (revoked, mut was_revoked) = tokio::sync::oneshot::channel();
        let _renewal = AbortOnDrop(tokio::spawn(self.clone().renew(lease, renewed, revoked)));
        tracing::info!(target: "keyhaven::ha", "standby reads: answering requests without effects on this standby");
        loop {
            tokio::select! {
                notice = listener.next() => {
                    let Some(notice) = notice else {
                        channel_lost();
                        return;
                    };
                    if let Err(e) = Self::apply(core, &listener, notice).await {
                        tracing::warn!(target: "keyhaven::ha", error = %e, "standby reads: cannot apply a change; forwarding every request");
                        return;
                    }
                    if !core.serves_reads() {
                        return;
                    }
                }
                _ = &mut was_revoked => {
                    tracing::warn!(target: "keyhaven::ha", "standby reads: the read lease was revoked by the active (a change was not acknowledged in time) or ran out; taking a new one");
                    return;
                }
                () = tokio::time::sleep(POLL) => {
                    if core.role() != Role::Standby || !core.serves_reads() {
                        return;
                    }
                }
            }
        }
    }
}

/// The operations a request with this method may be (`GET` reads or lists).
fn operations(method: &Method) -> &'static [keyhaven_engine::Operation] {
    use keyhaven_engine::Operation;
    match method.as_str() {
        "GET" => &[Operation::Read, Operation::List],
        "LIST" => &[Operation::List],
        "POST" | "PUT" => &[Operation::Update],
        _ => &[],
    }
}

/// One replica's part in the election, and what it knows of the cluster.
pub struct Election {
    node: HaNode,
    ttl: Duration,
    session: tokio::sync::Mutex<HaSession>,
    view: RwLock<View>,
    step_down: AtomicBool,
    wake: tokio::sync::Notify,
}

/// The election loop's clocks.
struct Timers {
    renew_every: Duration,
    last_renewed: Instant,
    next_renewal: Instant,
    compete_after: Instant,
    last_error: Option<String>,
}

#[derive(Default)]
struct View {
    /// The term this replica holds, while active.
    term: Option<i64>,
    /// The active replica, as last read.
    leader: Option<LeaderInfo>,
    /// The replicas that echoed lately, as the active last read them.
    nodes: Vec<keyhaven_storage_sql::NodeInfo>,
}

/// How often a replica echoes (and the active reads who did), in polls.
const ECHO_EVERY_POLLS: u32 = 4;

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("node", &self.node.id)
            .finish_non_exhaustive()
    }
}

impl HaControl for Election {
    fn step_down(&self) {
        self.step_down.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn status(&self) -> HaStatus {
        let view = self.view.read();
        HaStatus {
            api_address: self.node.api_address.clone(),
            cluster_address: self.node.cluster_address.clone(),
            is_self: view.term.is_some(),
            leader: view.leader.as_ref().map(|l| Leader {
                api_address: l.api_address.clone(),
                cluster_address: l.cluster_address.clone(),
                active_since: l.active_since.clone(),
            }),
            nodes: view
                .nodes
                .iter()
                .map(|n| keyhaven_engine::ha::Node {
                    hostname: n.hostname.clone(),
                    api_address: n.api_address.clone(),
                    cluster_address: n.cluster_address.clone(),
                    active_node: view.term.is_some() && n.id == self.node.id,
                    last_echo: n.last_echo.clone(),
                    version: n.version.clone(),
                })
                .collect(),
        }
    }
}

impl Election {
    /// The election of `node` over `session`.
    pub fn new(session: HaSession, ttl: Duration) -> Election {
        Election {
            node: session.node().clone(),
            ttl,
            session: tokio::sync::Mutex::new(session),
            view: RwLock::new(View::default()),
            step_down: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// This replica.
    pub fn node(&self) -> &HaNode {
        &self.node
    }

    /// The active replica, as last read (`None` when this replica is active or none is).
    pub fn leader(&self) -> Option<LeaderInfo> {
        let view = self.view.read();
        if view.term.is_some() {
            return None;
        }
        view.leader.clone()
    }

    /// Forget the term held and the leader last read (this replica was it).
    fn forget(&self) {
        let mut view = self.view.write();
        view.term = None;
        view.leader = None;
    }

    /// Give up the leadership if held (shutdown).
    pub async fn release(&self, core: &Core) {
        let term = self.view.read().term;
        self.forget();
        if let Some(term) = term {
            core.demote().await;
            if let Err(e) = self.session.lock().await.release(term).await {
                tracing::warn!(target: "keyhaven::ha", error = %keyhaven_storage_sql::describe(&e), "could not release the leadership; it expires after ha.lock_ttl");
            }
        }
    }

    /// The election loop; runs until the task is aborted.
    pub async fn run(self: Arc<Self>, core: Arc<Core>) {
        let fence = self.session.lock().await.fence().clone();
        let mut timers = Timers {
            renew_every: (self.ttl / 3).min(Duration::from_secs(1)).max(POLL),
            last_renewed: Instant::now(),
            next_renewal: Instant::now(),
            compete_after: Instant::now(),
            last_error: None,
        };
        let host = keyhaven_engine::hostname();
        let mut polls: u32 = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = self.wake.notified() => {}
                () = fence.lost() => {}
            }
            let mut session = self.session.lock().await;
            self.step(&core, &mut session, &fence, &mut timers).await;
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(ECHO_EVERY_POLLS) && core.role() != Role::Sealed {
                if let Err(e) = session.echo(&host, keyhaven_engine::REPORTED_VERSION).await {
                    tracing::debug!(target: "keyhaven::ha", error = %keyhaven_storage_sql::describe(&e), "cannot echo");
                }
                let nodes = if self.view.read().term.is_some() {
                    session.nodes().await.unwrap_or_default()
                } else {
                    Vec::new()
                };
                self.view.write().nodes = nodes;
            }
            if core.role() == Role::Standby && self.view.read().term.is_none() {
                // Where to forward to (also right after this replica lost the lead).
                let leader = session.leader().await.ok().flatten();
                self.view.write().leader = leader;
            }
        }
    }

    /// One round of the election.
    async fn step(
        &self,
        core: &Core,
        session: &mut HaSession,
        fence: &keyhaven_storage_sql::Fence,
        timers: &mut Timers,
    ) {
        let Timers {
            renew_every,
            last_renewed,
            next_renewal,
            compete_after,
            last_error,
        } = timers;
        let renew_every = *renew_every;
        {
            let held = self.view.read().term;
            match (core.role(), held) {
                (Role::Active, Some(term)) => {
                    if self.step_down.swap(false, Ordering::AcqRel) {
                        tracing::warn!(target: "keyhaven::ha", "sys/step-down: giving up the leadership");
                        self.forget();
                        core.demote().await;
                        if let Err(e) = session.release(term).await {
                            tracing::warn!(target: "keyhaven::ha", error = %keyhaven_storage_sql::describe(&e), "could not release the leadership; it expires after ha.lock_ttl");
                        }
                        *compete_after = Instant::now() + STEP_DOWN_PAUSE;
                        return;
                    }
                    if fence.current_term() != Some(term) {
                        // A write found another replica active.
                        self.forget();
                        core.demote().await;
                        return;
                    }
                    if Instant::now() < *next_renewal {
                        return;
                    }
                    match session.renew(term).await {
                        Ok(true) => {
                            *last_renewed = Instant::now();
                            *next_renewal = *last_renewed + renew_every;
                            *last_error = None;
                        }
                        Ok(false) => {
                            tracing::error!(target: "keyhaven::ha", term, "the leadership was lost (another replica holds it, or this replica's database session ended)");
                            self.forget();
                            core.demote().await;
                        }
                        Err(e) => {
                            tracing::warn!(target: "keyhaven::ha", error = %keyhaven_storage_sql::describe(&e), "cannot renew the leadership");
                            if last_renewed.elapsed() >= self.ttl {
                                // Another replica may hold it by now: stop serving.
                                tracing::error!(target: "keyhaven::ha", "no renewal for ha.lock_ttl: standing down");
                                fence.refuse_writes();
                                self.forget();
                                core.demote().await;
                            }
                        }
                    }
                }
                (Role::Active, None) => {
                    // Promoted without a term (cannot happen): never serve unfenced.
                    core.demote().await;
                }
                (role, Some(term)) => {
                    // Sealed (or demoted) while holding the leadership: hand it over.
                    self.forget();
                    if role == Role::Standby {
                        core.demote().await;
                    }
                    if let Err(e) = session.release(term).await {
                        tracing::warn!(target: "keyhaven::ha", error = %keyhaven_storage_sql::describe(&e), "could not release the leadership; it expires after ha.lock_ttl");
                    }
                }
                (Role::Standby, None) => {
                    self.step_down.store(false, Ordering::Release);
                    if Instant::now() >= *compete_after {
                        match session.try_acquire().await {
                            Ok(Some(term)) => {
                                self.view.write().term = Some(term);
                                match core.promote().await {
                                    Ok(true) => {
                                        *last_renewed = Instant::now();
                                        *next_renewal = *last_renewed + renew_every;
                                        // The row names this replica now (for sys/leader).
                                        let me = session.leader().await.ok().flatten();
                                        self.view.write().leader = me;
                                        return;
                                    }
                                    Ok(false) => {}
                                    Err(e) => {
                                        tracing::error!(target: "keyhaven::ha", error = %e, "won the leadership but cannot become active; handing it over");
                                        *compete_after = Instant::now() + STEP_DOWN_PAUSE;
                                    }
                                }
                                self.forget();
                                if let Err(e) = session.release(term).await {
                                    tracing::warn!(target: "keyhaven::ha", error = %keyhaven_storage_sql::describe(&e), "could not release the leadership");
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                let text = keyhaven_storage_sql::describe(&e);
                                if last_error.as_deref() != Some(text.as_str()) {
                                    tracing::warn!(target: "keyhaven::ha", error = %text, "cannot reach the leadership row");
                                    *last_error = Some(text);
                                }
                            }
                        }
                    }
                }
                (Role::Sealed, None) => {
                    self.step_down.store(false, Ordering::Release);
                    // Another replica may have initialized the database meanwhile.
                    if let Err(e) = core.refresh_initialized().await {
                        tracing::debug!(target: "keyhaven::ha", error = %e, "cannot read the seal configuration");
                    }
                }
            }
        }
    }
}

/// Paths a standby answers itself (`sys/seal` too, see [`seal_standby`]).
fn answered_locally(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "/v1/sys/health"
            | "/v1/sys/leader"
            | "/v1/sys/seal-status"
            | "/v1/sys/unseal"
            | "/v1/sys/init"
    )
}

fn is_seal(method: &Method, path: &str) -> bool {
    path.trim_end_matches('/') == "/v1/sys/seal" && matches!(*method, Method::PUT | Method::POST)
}

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1), and
/// `host`, which names this replica.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "x-keyhaven-forwarded-for"
            | "x-keyhaven-forwarded-by"
    )
}

fn unix_now(core: &Core) -> u64 {
    u64::try_from(core.clock().unix_seconds()).unwrap_or(0)
}

fn forwarded_for_message(ip: &str, at: &str, method: &str, path_and_query: &str) -> Vec<u8> {
    format!("{ip}\n{at}\n{method}\n{path_and_query}").into_bytes()
}

/// The [`FORWARDED_FOR`] value a standby sends for a client at `ip`.
fn forwarded_for(
    core: &Core,
    key: &keyhaven_crypto::HmacKey,
    ip: std::net::IpAddr,
    method: &str,
    path_and_query: &str,
) -> String {
    let ip = ip.to_string();
    let at = unix_now(core).to_string();
    let tag = key.sign(&forwarded_for_message(&ip, &at, method, path_and_query));
    format!("{ip} {at} {}", hex::encode(tag))
}

/// The parts of a [`FORWARDED_FOR`] value: address text, time text and the HMAC, or
/// `None` when it is not three space-separated fields with a 32-byte hex tag.
pub(crate) fn parse_forwarded_for(value: &str) -> Option<(&str, &str, Vec<u8>)> {
    let mut parts = value.split(' ');
    let (ip, at, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || tag.len() != 64 {
        return None;
    }
    Some((ip, at, hex::decode(tag).ok()?))
}

/// The client's address: what a standby vouched for in [`FORWARDED_FOR`] when its HMAC
/// and time check out, else the connection's peer. A header anyone else wrote is
/// ignored.
pub(crate) fn client_addr(
    core: &Core,
    headers: &HeaderMap,
    method: &Method,
    uri: &axum::http::Uri,
    peer: Option<std::net::IpAddr>,
) -> Option<std::net::IpAddr> {
    let Some(value) = headers
        .get(&FORWARDED_FOR_NAME)
        .and_then(|v| v.to_str().ok())
    else {
        return peer;
    };
    let vouched = (|| {
        let (ip, at, tag) = parse_forwarded_for(value)?;
        let when: u64 = at.parse().ok()?;
        if unix_now(core).abs_diff(when) > FORWARDED_FOR_SKEW {
            return None;
        }
        let key = core.forwarding_key()?;
        let path = uri
            .path_and_query()
            .map_or("/", axum::http::uri::PathAndQuery::as_str);
        key.verify(&forwarded_for_message(ip, at, method.as_str(), path), &tag)
            .then(|| ip.parse().ok())
            .flatten()
    })();
    if vouched.is_none() {
        tracing::debug!(target: "keyhaven::ha", ?peer, "ignored an X-Keyhaven-Forwarded-For header that does not check out");
    }
    vouched.or(peer)
}

/// A JSON error body as the API answers.
fn error(status: StatusCode, message: &str) -> Response {
    crate::http::plain_error(status, message, &crate::http::new_request_id())
}

/// How a standby reaches the active.
pub struct Forwarder {
    core: Arc<Core>,
    election: Arc<Election>,
    client: reqwest::Client,
    body: crate::body::BodyLimits,
    reads: Option<Arc<StandbyReads>>,
}

impl Forwarder {
    /// A forwarder trusting `roots` (PEM) for the active's certificate, or the system's.
    pub fn new(
        core: Arc<Core>,
        election: Arc<Election>,
        roots: Option<&[u8]>,
        body: crate::body::BodyLimits,
        reads: Option<Arc<StandbyReads>>,
    ) -> Result<Forwarder, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("keyhaven/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = roots {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("ha.tls_ca_file: {e}"))?;
            if certs.is_empty() {
                return Err("ha.tls_ca_file: no certificate in the file".to_owned());
            }
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the forwarding client: {e}"))?;
        Ok(Forwarder {
            core,
            election,
            client,
            body,
            reads,
        })
    }
}

/// The router's outermost layer: forward on a standby.
pub(crate) async fn forward(
    axum::extract::State(fw): axum::extract::State<Arc<Forwarder>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if fw.core.role() != Role::Standby || answered_locally(req.uri().path()) {
        return next.run(req).await;
    }
    if is_seal(req.method(), req.uri().path()) {
        let token = crate::http::token_from(req.headers());
        return seal_standby(&fw, token).await;
    }
    if req.headers().contains_key(FORWARDED_BY) {
        let mut resp = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is a standby but was forwarded a request as the active one; the \
             leadership is changing: retry",
        );
        resp.headers_mut()
            .insert(NOT_ACTIVE, HeaderValue::from_static("standby"));
        return resp;
    }
    let (mut parts, body) = req.into_parts();
    // Within the listener's limits and memory budget, as a body the active reads itself:
    // more than the unauthenticated size only with a token (which the active checks).
    let gate = crate::body::Gate::Presented {
        token: crate::http::token_from(&parts.headers).is_some(),
    };
    let conn = parts.extensions.get::<crate::listener::ConnHandle>();
    let (body, _reservation) = match crate::body::receive(body, &fw.body, gate, conn).await {
        Ok(received) => (received.bytes, received.reservation),
        Err(e) => {
            return crate::http::body_error(&fw.core, &fw.body, &e, &crate::http::new_request_id());
        }
    };
    // A request without effects, answered here while this standby holds a read lease
    // (every change acknowledged so far is applied); the engine refuses what needs a
    // write after all.
    if let Some(reads) = &fw.reads
        && reads.fresh()
        && let Some(path) = parts.uri.path().strip_prefix("/v1/")
        && operations(&parts.method)
            .iter()
            .any(|op| fw.core.standby_serves(*op, path))
    {
        // Kept for forwarding, should the engine not answer after all: the head, and of
        // the extensions only the connection (cloning them all costs more).
        let conn = parts
            .extensions
            .get::<crate::listener::ConnHandle>()
            .cloned();
        let (method, uri, headers) = (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        );
        let local = axum::extract::Request::from_parts(parts, Body::from(body.clone()));
        let resp = next.run(local).await;
        if resp.extensions().get::<ServeElsewhere>().is_none() {
            return resp;
        }
        parts = axum::extract::Request::new(()).into_parts().0;
        parts.method = method;
        parts.uri = uri;
        parts.headers = headers;
        if let Some(conn) = conn {
            parts.extensions.insert(conn);
        }
    }
    let Some(leader) = await_leader(&fw.election, None).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no active keyhaven replica found",
        );
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", axum::http::uri::PathAndQuery::as_str)
        .to_owned();
    if parts
        .headers
        .get("x-vault-no-request-forwarding")
        .is_some_and(|v| !v.is_empty())
    {
        let location = format!("{}{path_and_query}", leader.api_address);
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        if let Ok(value) = HeaderValue::from_str(&location) {
            resp.headers_mut()
                .insert(axum::http::header::LOCATION, value);
        }
        return resp;
    }
    let method = match reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) {
        Ok(m) => m,
        Err(_) => return error(StatusCode::METHOD_NOT_ALLOWED, "unsupported method"),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &parts.headers {
        if hop_by_hop(name) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(n, v);
        }
    }
    if let Ok(v) = reqwest::header::HeaderValue::from_str(&fw.election.node().id) {
        headers.insert(FORWARDED_BY, v);
    }
    let peer = parts
        .extensions
        .get::<crate::listener::ConnHandle>()
        .and_then(crate::listener::ConnHandle::peer);
    if let (Some(key), Some(ip)) = (fw.core.forwarding_key(), peer) {
        let value = forwarded_for(&fw.core, &key, ip, parts.method.as_str(), &path_and_query);
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
            headers.insert(FORWARDED_FOR, v);
        }
    }
    let mut leader = leader;
    loop {
        let url = format!("{}{path_and_query}", leader.cluster_address);
        let sent = fw
            .client
            .request(method.clone(), &url)
            .headers(headers.clone())
            .body(body.clone())
            .timeout(MAX_FORWARD_WAIT)
            .send()
            .await;
        match sent {
            // The replica it went to is no longer active and did not handle it: send it
            // to the one that is.
            Ok(upstream) if upstream.headers().contains_key(NOT_ACTIVE) => {
                match await_leader(&fw.election, Some(&leader.cluster_address)).await {
                    Some(next) => leader = next,
                    None => return relay(upstream, parts.method == Method::HEAD),
                }
            }
            Ok(upstream) => return relay(upstream, parts.method == Method::HEAD),
            // Not delivered (the active just died): safe to send again, to its successor.
            Err(e) if e.is_connect() => {
                tracing::debug!(target: "keyhaven::ha", active = %leader.cluster_address, error = %e.without_url(), "the active replica refused the connection; waiting for its successor");
                match await_leader(&fw.election, Some(&leader.cluster_address)).await {
                    Some(next) => leader = next,
                    None => {
                        return error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "this replica is a standby and cannot reach the active replica: retry",
                        );
                    }
                }
            }
            Err(e) => {
                tracing::warn!(target: "keyhaven::ha", active = %leader.cluster_address, error = %e.without_url(), "cannot forward to the active replica");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this replica is a standby and cannot reach the active replica: retry",
                );
            }
        }
    }
}

/// The active replica (other than at `not`), waiting up to [`LEADER_WAIT`] while the
/// leadership changes hands.
async fn await_leader(election: &Election, not: Option<&str>) -> Option<LeaderInfo> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(leader) = election
            .leader()
            .filter(|l| not != Some(l.cluster_address.as_str()))
        {
            return Some(leader);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The active's answer, as this replica's: status, end-to-end headers, and the body as
/// it arrives.
fn relay(upstream: reqwest::Response, head: bool) -> Response {
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for (name, value) in upstream.headers() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) && !hop_by_hop(&n)
        {
            headers.append(n, v);
        }
    }
    let body = if head {
        Body::empty()
    } else {
        let stream = futures::stream::unfold(Some(upstream), |state| async move {
            let mut upstream = state?;
            match upstream.chunk().await {
                Ok(Some(chunk)) => Some((Ok::<_, std::io::Error>(chunk), Some(upstream))),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e.without_url())), None)),
            }
        });
        Body::from_stream(stream)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// `sys/seal` on a standby seals this replica: the active checks the token (root, or
/// `sudo` and `update` on `sys/seal`), as if the call were its own.
async fn seal_standby(fw: &Forwarder, token: Option<keyhaven_engine::ClientToken>) -> Response {
    let Some(leader) = fw.election.leader() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no active keyhaven replica found to check the token",
        );
    };
    let Some(token) = token else {
        return error(StatusCode::FORBIDDEN, "permission denied");
    };
    let Ok(token) = reqwest::header::HeaderValue::from_str(token.expose()) else {
        return error(StatusCode::FORBIDDEN, "permission denied");
    };
    let url = format!("{}/v1/sys/capabilities-self", leader.cluster_address);
    let sent = fw
        .client
        .post(&url)
        .header("x-vault-token", token)
        .header(FORWARDED_BY, fw.election.node().id.as_str())
        .json(&serde_json::json!({ "paths": ["sys/seal"] }))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let caps: Vec<String> = match sent {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| {
                v.pointer("/data/capabilities")
                    .or_else(|| v.pointer("/capabilities"))
                    .cloned()
            })
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
        Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => Vec::new(),
        Ok(_) | Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this replica is a standby and cannot reach the active replica to check the token",
            );
        }
    };
    let allowed = caps.iter().any(|c| c == "root")
        || (caps.iter().any(|c| c == "sudo") && caps.iter().any(|c| c == "update"));
    if !allowed {
        return error(StatusCode::FORBIDDEN, "permission denied");
    }
    fw.core.seal().await;
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_answers_status_and_seal_calls_itself() {
        for path in [
            "/v1/sys/health",
            "/v1/sys/leader",
            "/v1/sys/seal-status",
            "/v1/sys/unseal",
            "/v1/sys/init",
            "/v1/sys/health/",
        ] {
            assert!(answered_locally(path), "{path}");
        }
        assert!(is_seal(&Method::PUT, "/v1/sys/seal"));
        assert!(is_seal(&Method::POST, "/v1/sys/seal/"));
        assert!(!is_seal(&Method::GET, "/v1/sys/seal"));
        for path in [
            "/v1/secret/data/a",
            "/v1/sys/step-down",
            "/v1/sys/mounts",
            "/v1/sys/sealx",
            "/v1/auth/token/lookup-self",
        ] {
            assert!(!answered_locally(path), "{path}");
        }
    }

    #[test]
    fn forwarded_for_values_have_three_fields_and_a_full_tag() {
        let tag = "0f".repeat(32);
        let value = format!("10.1.2.3 1700000000 {tag}");
        let (ip, at, bytes) = parse_forwarded_for(&value).unwrap();
        assert_eq!((ip, at, bytes.len()), ("10.1.2.3", "1700000000", 32));
        for bad in [
            String::new(),
            "10.1.2.3".to_owned(),
            "10.1.2.3 1700000000".to_owned(),
            format!("10.1.2.3 1700000000 {}", "0f".repeat(31)),
            format!("10.1.2.3 1700000000 {tag} extra"),
            format!("10.1.2.3 1700000000 {}", "zz".repeat(32)),
        ] {
            assert!(parse_forwarded_for(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn connection_headers_are_not_forwarded() {
        for name in [
            "connection",
            "host",
            "transfer-encoding",
            "content-length",
            "te",
        ] {
            assert!(hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "x-vault-token",
            "content-type",
            "x-vault-wrap-ttl",
            "x-vault-request",
        ] {
            assert!(!hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }
}
