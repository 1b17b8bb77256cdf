//! The accept loop and the per-connection limits, one path for plain HTTP and TLS.
//!
//! Every accepted connection is registered with what it is doing ([`Activity`]): how
//! many requests are in flight, since when it has been idle, whether a request head has
//! started to arrive, whether a handler is reading a body. From that, each connection's
//! task enforces its own deadlines, and the accept loop chooses whom to shed:
//!
//! - a new connection must deliver its first request head (TLS handshake and HTTP/2
//!   preface included) within `read_header_timeout` of being accepted;
//! - a connection with no request in flight is closed after `idle_timeout`; a later
//!   HTTP/1 request head must be complete within `read_header_timeout` of its first
//!   byte (an HTTP/2 connection only has the idle timeout between requests);
//! - request bodies have their own deadline, enforced where they are read (`body`).
//!
//! The accept loop never stops accepting: a listener that stops leaves new clients,
//! health checks included, in the kernel's backlog until they time out. At
//! `max_connections` it accepts and then closes the connection that has been idle the
//! longest (no request in flight), or else the one whose request body has been arriving
//! the longest; only when every connection is busy in a handler is the new connection
//! closed instead. A client that opens a connection and sends its request at once is
//! therefore always served: slow and idle connections go first, and the timeouts reap
//! them anyway. Warnings about the cap and about failed accepts are rate-limited.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::http::Direct;

/// The limits one listener enforces on its connections.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Open connections; at the cap the accept loop sheds one for each new one.
    pub(crate) max_connections: usize,
    /// Deadline for a request head (and a new connection's first one).
    pub(crate) read_header_timeout: Duration,
    /// Deadline for a connection with no request in flight.
    pub(crate) idle_timeout: Duration,
}

/// Largest HTTP/1 request head, and hyper's per-connection read buffer (it also bounds
/// how much of a body hyper holds for one connection before a handler takes it).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest HTTP/2 header list (hyper's default, stated here because it is a limit).
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// HTTP/2 flow-control windows: request data a client may send that no handler has
/// taken yet, per stream and per connection.
const H2_WINDOW: u32 = 256 * 1024;
/// Concurrent HTTP/2 streams per connection (the RFC's recommended minimum).
const H2_MAX_STREAMS: u32 = 100;

/// How long the accept loop waits after an error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long the accept loop waits for shed connections to let go of their sockets.
const SHED_WAIT: Duration = Duration::from_millis(100);
/// At most one warning of each kind per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight before closing their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors that concern only the connection being accepted (the next accept may work).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The start of the HTTP/2 connection preface; anything else is HTTP/1.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// This many bytes of the HTTP/2 preface have been seen so far.
    Detecting(usize),
    Http1,
    Http2,
}

/// What one connection is doing.
#[derive(Debug)]
struct Activity {
    /// Requests whose handler is running (HTTP/2 may have several).
    in_flight: u32,
    /// Handlers reading a request body.
    reading_bodies: u32,
    /// Since when no request has been in flight (the accept time at first).
    idle_since: Instant,
    /// Since when a body has been read (while `reading_bodies > 0`).
    body_since: Instant,
    /// When the first byte of the next HTTP/1 request head arrived (the first
    /// request's too).
    head_started: Option<Instant>,
    /// Whether a request has arrived yet; until then the connection has
    /// `read_header_timeout` from its accept time.
    served_any: bool,
    protocol: Protocol,
}

/// Why a connection's deadline closes it.
#[derive(Debug, Clone, Copy)]
enum Expiry {
    Header,
    Idle,
}

/// One connection's shared state: written by its I/O and requests, read by its task and
/// by the accept loop.
#[derive(Debug)]
struct Conn {
    accepted: Instant,
    activity: Mutex<Activity>,
    /// The connection's task, woken to look at `shed` and `draining` ([`Signal`]).
    waker: Mutex<Option<Waker>>,
    /// Set by the accept loop (or shutdown) to make the task close the connection.
    shed: AtomicBool,
    /// Set at shutdown: the task lets the request in flight finish, then closes.
    draining: AtomicBool,
    /// The client's address (the TCP peer).
    peer: Option<std::net::IpAddr>,
    /// The certificate chain the TLS client presented, once its handshake is done.
    client_certs: OnceLock<ClientCerts>,
}

impl Conn {
    fn new(now: Instant) -> Self {
        Conn {
            accepted: now,
            activity: Mutex::new(Activity {
                in_flight: 0,
                reading_bodies: 0,
                idle_since: now,
                body_since: now,
                head_started: None,
                served_any: false,
                protocol: Protocol::Detecting(0),
            }),
            waker: Mutex::new(None),
            shed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            peer: None,
            client_certs: OnceLock::new(),
        }
    }

    /// The state; a panic elsewhere while it was held leaves plain counters behind, so
    /// a poisoned lock is used as it is.
    fn activity(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shed(&self) {
        self.shed.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Shutdown: finish what is in flight, then close.
    fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Wake the task (after setting the flag it is to look at; see [`Signal`]).
    fn wake(&self) {
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn is_shed(&self) -> bool {
        self.shed.load(Ordering::SeqCst)
    }

    fn begin_request(self: &Arc<Self>) -> RequestGuard {
        let mut a = self.activity();
        a.in_flight = a.in_flight.saturating_add(1);
        a.served_any = true;
        a.head_started = None;
        RequestGuard(self.clone())
    }

    /// Bytes arrived from the client.
    fn on_read(&self, bytes: &[u8]) {
        let mut a = self.activity();
        if let Protocol::Detecting(seen) = a.protocol {
            let expected = H2_PREFACE_START.get(seen..).unwrap_or_default();
            let n = expected.len().min(bytes.len());
            a.protocol = if expected.get(..n) != bytes.get(..n) {
                Protocol::Http1
            } else if seen + n == H2_PREFACE_START.len() {
                Protocol::Http2
            } else {
                Protocol::Detecting(seen + n)
            };
        }
        // The connection's task needs no wake-up: its timer never fires later than
        // the header deadline this starts (see [`Conn::next_check`]).
        if a.in_flight == 0 && a.head_started.is_none() && a.protocol != Protocol::Http2 {
            a.head_started = Some(Instant::now());
        }
    }

    /// When this connection must be closed if nothing changes, and why; `None` while a
    /// request is in flight.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        let a = self.activity();
        if a.in_flight > 0 {
            None
        } else if !a.served_any {
            Some((self.accepted + limits.read_header_timeout, Expiry::Header))
        } else if let Some(started) = a.head_started {
            Some((started + limits.read_header_timeout, Expiry::Header))
        } else {
            Some((a.idle_since + limits.idle_timeout, Expiry::Idle))
        }
    }

    /// When the connection's task should look at its deadline next, at `now`, given
    /// the current `deadline`: at that deadline, but no later than the shorter of the
    /// two timeouts from now. Whatever happens after `now` (a request head starting,
    /// a request ending) sets a deadline at least that far away, so the task never
    /// looks too late, and requests need not wake it or move its timer: a busy
    /// connection's timer fires once per `min(read_header_timeout, idle_timeout)`.
    fn next_check(deadline: Option<(Instant, Expiry)>, now: Instant, limits: &Limits) -> Instant {
        let soonest = now + limits.read_header_timeout.min(limits.idle_timeout);
        deadline.map_or(soonest, |(at, _)| at.min(soonest))
    }
}

/// Counts a request in flight until dropped (when its handler's future completes or
/// is dropped with the connection).
struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut a = self.0.activity();
        a.in_flight = a.in_flight.saturating_sub(1);
        if a.in_flight == 0 {
            a.idle_since = Instant::now();
            a.head_started = None;
        }
    }
}

/// The connection a request arrived on, in the request's extensions (or handed to
/// [`Direct`](crate::http::Direct) with the request): the body reader marks the time it
/// spends reading (slow bodies are shed before busy handlers).
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle(Arc<Conn>);

impl ConnHandle {
    /// The client's address: the TCP peer (no forwarding header is trusted).
    pub(crate) fn peer(&self) -> Option<std::net::IpAddr> {
        self.0.peer
    }

    /// The certificate chain the TLS client presented (empty without TLS or without a
    /// client certificate).
    pub(crate) fn client_certs(&self) -> &[Vec<u8>] {
        self.0.client_certs.get().map_or(&[], |c| c.0.as_slice())
    }

    /// Count a body being read on this connection, since `now`, until the guard is
    /// dropped.
    pub(crate) fn reading_body(&self, now: Instant) -> BodyGuard<'_> {
        let mut a = self.0.activity();
        if a.reading_bodies == 0 {
            a.body_since = now;
        }
        a.reading_bodies = a.reading_bodies.saturating_add(1);
        BodyGuard(&self.0)
    }
}

/// See [`ConnHandle::reading_body`].
#[derive(Debug)]
pub(crate) struct BodyGuard<'a>(&'a Conn);

impl Drop for BodyGuard<'_> {
    fn drop(&mut self) {
        let mut a = self.0.activity();
        a.reading_bodies = a.reading_bodies.saturating_sub(1);
    }
}

/// The connection's I/O, reporting arriving bytes to its [`Conn`].
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && let Some(new) = buf.filled().get(before..)
            && !new.is_empty()
        {
            this.conn.on_read(new);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service: counts requests in flight and hands
/// each request its [`ConnHandle`].
#[derive(Clone)]
struct ConnService {
    router: axum::Router,
    /// The engine's requests without the router, when nothing wraps it.
    direct: Option<Direct>,
    conn: Arc<Conn>,
}

/// The certificate chain a TLS client presented, leaf first, DER. Only the client's
/// possession of the leaf's key was checked ([`crate::tls::PossessionVerifier`]); every
/// request of the connection reaches it through its [`ConnHandle`].
#[derive(Debug, Default)]
struct ClientCerts(Vec<Vec<u8>>);

type ServiceFuture = Pin<
    Box<dyn Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send>,
>;

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = ServiceFuture;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        let guard = self.conn.begin_request();
        let conn = ConnHandle(self.conn.clone());
        if let Some(direct) = &self.direct
            && Direct::takes(&req)
        {
            // The handler's future (several KiB) is made inside the box when first
            // polled, instead of being made here and copied into it.
            let direct = direct.clone();
            return Box::pin(async move {
                let response = direct.call(req, conn).await;
                drop(guard);
                Ok(response)
            });
        }
        req.extensions_mut().insert(conn);
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(req).await;
            drop(guard);
            response
        })
    }
}

/// Whom to close when a connection is accepted at the cap.
enum Admission {
    /// Under the cap.
    Admitted,
    /// At the cap; this connection was shed to make room.
    Shed,
    /// At the cap and every connection is busy in a handler: the new one is refused.
    Full,
}

/// The open connections of one listener.
#[derive(Default)]
struct Registry {
    /// Connections that count against the cap (shed ones are removed at once).
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Connection tasks still running (shed ones included): the descriptors held.
    tasks: AtomicUsize,
    /// Woken when the last task ends (the drain waits for it).
    tasks_done: Notify,
    /// Woken whenever a task ends (the accept loop waits for shed ones).
    task_ended: Notify,
}

impl Registry {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Register `conn`, shedding another one first when at `max`.
    fn admit(&self, id: u64, conn: &Arc<Conn>, max: usize) -> Admission {
        let mut conns = self.conns();
        let mut admission = Admission::Admitted;
        if conns.len() >= max {
            match Self::victim(&conns, true) {
                Some(victim) => {
                    if let Some(v) = conns.remove(&victim) {
                        v.shed();
                    }
                    admission = Admission::Shed;
                }
                None => return Admission::Full,
            }
        }
        conns.insert(id, conn.clone());
        admission
    }

    /// Close the longest-idle connection, if any is idle (to free a descriptor).
    fn shed_one_idle(&self) -> bool {
        let mut conns = self.conns();
        match Self::victim(&conns, false).and_then(|id| conns.remove(&id)) {
            Some(v) => {
                v.shed();
                true
            }
            None => false,
        }
    }

    /// The connection to close to make room: the one idle the longest (no request in
    /// flight: keep-alive idle, or not yet done sending its request head; idle since
    /// its last response or its accept); else, with `readers`, the one whose request
    /// body has been arriving the longest. A slow head gains nothing over a silent
    /// connection, and a client that sends its request as soon as it connects is the
    /// last to go.
    fn victim(conns: &HashMap<u64, Arc<Conn>>, readers: bool) -> Option<u64> {
        let mut idle: Option<(Instant, u64)> = None;
        let mut reading: Option<(Instant, u64)> = None;
        let older = |best: &Option<(Instant, u64)>, at: Instant| best.is_none_or(|(b, _)| at < b);
        for (&id, conn) in conns {
            let a = conn.activity();
            if a.in_flight == 0 {
                if older(&idle, a.idle_since) {
                    idle = Some((a.idle_since, id));
                }
            } else if readers && a.reading_bodies > 0 && older(&reading, a.body_since) {
                reading = Some((a.body_since, id));
            }
        }
        idle.or(reading).map(|(_, id)| id)
    }

    fn shed_all(&self) {
        for (_, conn) in self.conns().drain() {
            conn.shed();
        }
    }

    /// Shutdown: every connection finishes what is in flight and closes.
    fn drain_all(&self) {
        for conn in self.conns().values() {
            conn.drain();
        }
    }

    /// Wait (at most `bound`) until fewer than `max` connection tasks hold descriptors.
    async fn wait_below(&self, max: usize, bound: Duration) {
        let until = Instant::now() + bound;
        loop {
            let ended = self.task_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.tasks.load(Ordering::SeqCst) < max {
                return;
            }
            if tokio::time::timeout_at(until, ended).await.is_err() {
                return;
            }
        }
    }

    /// Resolves when no connection task is left.
    async fn all_done(&self) {
        while self.tasks.load(Ordering::SeqCst) > 0 {
            self.tasks_done.notified().await;
        }
    }
}

/// Unregisters a connection when its task ends, however it ends.
struct TaskGuard {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.registry.conns().remove(&self.id);
        let before = self.registry.tasks.fetch_sub(1, Ordering::SeqCst);
        self.registry.task_ended.notify_waiters();
        if before == 1 {
            // One waiter (the drain); `notify_one` keeps the wakeup if it is not yet
            // waiting.
            self.registry.tasks_done.notify_one();
        }
    }
}

/// Lets one warning through per interval and counts the others.
struct Throttle {
    next: Option<Instant>,
    count: u64,
}

impl Throttle {
    const fn new() -> Self {
        Throttle {
            next: None,
            count: 0,
        }
    }

    /// Count an occurrence; `Some(n)` when it is time to warn about the `n` since the
    /// last warning (this one included).
    fn hit(&mut self, now: Instant) -> Option<u64> {
        self.count = self.count.saturating_add(1);
        if self.next.is_some_and(|next| now < next) {
            return None;
        }
        self.next = Some(now + WARN_EVERY);
        Some(std::mem::take(&mut self.count))
    }
}

/// The HTTP/1 and HTTP/2 settings every connection gets.
fn http_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The connection task owns every timeout (hyper's would also cut idle
        // keep-alive connections at the header timeout).
        .header_read_timeout(None)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .initial_stream_window_size(H2_WINDOW)
        .initial_connection_window_size(H2_WINDOW)
        .max_concurrent_streams(H2_MAX_STREAMS);
    builder
}

/// Accept connections until `shutdown`, serving HTTP/1.1 and HTTP/2 (over TLS when
/// `tls` is set) within `limits`; then stop accepting, close idle connections and wait
/// (at most [`DRAIN_TIMEOUT`]) for the requests in flight to be answered.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    direct: Option<Direct>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let registry = Arc::new(Registry::default());
    let builder = Arc::new(http_builder());
    let max = limits.max_connections.max(1);
    let mut next_id: u64 = 0;
    let (mut shed_warning, mut full_warning, mut accept_warning) =
        (Throttle::new(), Throttle::new(), Throttle::new());
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors or memory: free a descriptor if an idle
                    // connection holds one, and do not spin.
                    let freed = registry.shed_one_idle();
                    if let Some(occurrences) = accept_warning.hit(Instant::now()) {
                        tracing::warn!(target: "keyhaven::http", error = %e, occurrences, closed_idle = freed, "accept failed");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let now = Instant::now();
        let conn = Arc::new(Conn {
            peer: Some(peer.ip()),
            ..Conn::new(now)
        });
        next_id = next_id.wrapping_add(1);
        let at_cap = match registry.admit(next_id, &conn, max) {
            Admission::Admitted => false,
            Admission::Shed => {
                if let Some(occurrences) = shed_warning.hit(now) {
                    tracing::warn!(target: "keyhaven::http", max_connections = max, occurrences, "connection limit reached; closed the longest-idle (or slowest) connections to make room");
                }
                true
            }
            Admission::Full => {
                if let Some(occurrences) = full_warning.hit(now) {
                    tracing::warn!(target: "keyhaven::http", max_connections = max, occurrences, "connection limit reached and every connection is busy; closed new connections");
                }
                drop(stream);
                continue;
            }
        };
        // A shed connection's task drops its socket when it next runs; wait for that
        // (briefly), so that descriptors stay at the cap instead of growing with a burst
        // of accepts.
        registry.wait_below(max, SHED_WAIT).await;
        registry.tasks.fetch_add(1, Ordering::SeqCst);
        let guard = TaskGuard {
            registry: registry.clone(),
            id: next_id,
        };
        let task = ConnTask {
            conn,
            builder: builder.clone(),
            router: router.clone(),
            direct: direct.clone(),
            limits: limits.clone(),
            peer,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _guard = guard;
            task.run(stream, tls).await;
        });
        if at_cap {
            // Let the new connection read what its client sent before the next accept
            // can shed it: otherwise a burst of accepts (up to the runtime's budget per
            // turn, 128) could close connections that were never looked at.
            tokio::task::yield_now().await;
        }
    }
    drop(listener);
    // Accepted connections are all registered (before their task is spawned), and no
    // more are accepted.
    registry.drain_all();
    if tokio::time::timeout(DRAIN_TIMEOUT, registry.all_done())
        .await
        .is_err()
    {
        tracing::warn!(
            target: "keyhaven::http",
            timeout_secs = DRAIN_TIMEOUT.as_secs(),
            "requests still in flight at shutdown were cut off"
        );
        registry.shed_all();
        let _ = tokio::time::timeout(Duration::from_secs(1), registry.all_done()).await;
    }
}

/// One connection's task.
struct ConnTask {
    conn: Arc<Conn>,
    builder: Arc<Builder<TokioExecutor>>,
    router: axum::Router,
    direct: Option<Direct>,
    limits: Limits,
    peer: SocketAddr,
}

/// What [`Signal`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signalled {
    Shed,
    Draining,
}

/// Resolves when the connection is shed, or when it starts draining (unless
/// `draining_seen`). The connection's task polls it each time it runs, beside the
/// connection itself: a poll is two atomic loads, and the task's waker is stored in the
/// [`Conn`] again only when it is not the one stored already.
struct Signal<'a> {
    conn: &'a Conn,
    draining_seen: bool,
    registered: Option<Waker>,
}

impl<'a> Signal<'a> {
    fn new(conn: &'a Conn, draining_seen: bool) -> Self {
        Signal {
            conn,
            draining_seen,
            registered: None,
        }
    }

    fn check(&self) -> Option<Signalled> {
        if self.conn.is_shed() {
            Some(Signalled::Shed)
        } else if !self.draining_seen && self.conn.is_draining() {
            Some(Signalled::Draining)
        } else {
            None
        }
    }
}

impl Future for Signal<'_> {
    type Output = Signalled;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Signalled> {
        let this = self.get_mut();
        if let Some(seen) = this.check() {
            return Poll::Ready(seen);
        }
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            *this
                .conn
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
            this.registered = Some(waker);
            // A flag set before the waker was stored found no waker: look again.
            if let Some(seen) = this.check() {
                return Poll::Ready(seen);
            }
        }
        Poll::Pending
    }
}

impl ConnTask {
    async fn run(mut self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        match tls {
            None => self.serve(stream).await,
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                tokio::pin!(handshake);
                // The handshake is part of the first request head's deadline.
                let deadline = self.conn.accepted + self.limits.read_header_timeout;
                let tls = tokio::select! {
                    done = &mut handshake => match done {
                        Ok(tls) => tls,
                        Err(e) => {
                            tracing::debug!(target: "keyhaven::http", peer = %self.peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        tracing::debug!(target: "keyhaven::http", peer = %self.peer, "TLS handshake timed out");
                        return;
                    }
                    // Shed, or shutting down: no request was received yet.
                    _ = Signal::new(&self.conn, false) => return,
                };
                if let Some(chain) = tls.get_ref().1.peer_certificates() {
                    let _ = self
                        .conn
                        .client_certs
                        .set(ClientCerts(chain.iter().map(|c| c.to_vec()).collect()));
                }
                self.serve(tls).await;
            }
        }
    }

    async fn serve<S>(&mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(Tracked {
            inner: stream,
            conn: self.conn.clone(),
        });
        let service = ConnService {
            router: self.router.clone(),
            direct: self.direct.clone(),
            conn: self.conn.clone(),
        };
        let http = self.builder.serve_connection(io, service);
        tokio::pin!(http);
        let mut draining = self.conn.is_draining();
        if draining {
            http.as_mut().graceful_shutdown();
        }
        // One timer for the connection's life, not one per request: it is moved only
        // when it fires (see `Conn::next_check`).
        let now = Instant::now();
        let check = tokio::time::sleep_until(Conn::next_check(
            self.conn.deadline(&self.limits),
            now,
            &self.limits,
        ));
        tokio::pin!(check);
        loop {
            tokio::select! {
                done = http.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(target: "keyhaven::http", peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                signalled = Signal::new(&self.conn, draining) => {
                    if signalled == Signalled::Draining {
                        draining = true;
                        http.as_mut().graceful_shutdown();
                    }
                }
                () = check.as_mut() => {
                    let now = Instant::now();
                    let deadline = self.conn.deadline(&self.limits);
                    if let Some((at, why)) = deadline
                        && at <= now
                    {
                        tracing::debug!(target: "keyhaven::http", peer = %self.peer, reason = ?why, "connection timed out");
                        return;
                    }
                    check.as_mut().reset(Conn::next_check(deadline, now, &self.limits));
                }
            }
            if self.conn.is_shed() {
                tracing::debug!(target: "keyhaven::http", peer = %self.peer, "connection shed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_per_connection_accept_errors_are_retried_at_once() {
        use std::io::{Error, ErrorKind};
        assert!(is_connection_error(&Error::from(
            ErrorKind::ConnectionAborted
        )));
        assert!(is_connection_error(&Error::from(
            ErrorKind::ConnectionReset
        )));
        // EMFILE: the process is out of descriptors.
        assert!(!is_connection_error(&Error::from_raw_os_error(24)));
        assert!(!is_connection_error(&Error::from(ErrorKind::OutOfMemory)));
    }

    #[tokio::test(start_paused = true)]
    async fn warnings_are_let_through_once_per_interval_with_a_count() {
        let mut t = Throttle::new();
        let start = Instant::now();
        assert_eq!(t.hit(start), Some(1));
        for _ in 0..99 {
            assert_eq!(t.hit(start + Duration::from_secs(1)), None);
        }
        assert_eq!(t.hit(start + WARN_EVERY), Some(100));
        assert_eq!(t.hit(start + WARN_EVERY), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_preface_tells_http2_from_http1_across_reads() {
        let conn = Conn::new(Instant::now());
        conn.on_read(b"PRI * HT");
        assert_eq!(conn.activity().protocol, Protocol::Detecting(8));
        conn.on_read(b"TP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(conn.activity().protocol, Protocol::Http2);
        let conn = Conn::new(Instant::now());
        conn.on_read(b"PUT /v1/sys/unseal HTTP/1.1\r\n");
        assert_eq!(conn.activity().protocol, Protocol::Http1);
        let conn = Conn::new(Instant::now());
        conn.on_read(b"P");
        conn.on_read(b"OST / HTTP/1.1\r\n");
        assert_eq!(conn.activity().protocol, Protocol::Http1);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_what_the_connection_does() {
        let limits = Limits {
            max_connections: 4,
            read_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        };
        let t0 = Instant::now();
        let conn = Arc::new(Conn::new(t0));
        // New: the first request head is due from the accept time, bytes or not.
        assert!(
            matches!(conn.deadline(&limits), Some((at, Expiry::Header)) if at == t0 + limits.read_header_timeout)
        );
        conn.on_read(b"GET / HT");
        assert!(
            matches!(conn.deadline(&limits), Some((at, Expiry::Header)) if at == t0 + limits.read_header_timeout)
        );
        // In flight: no connection deadline (the body has its own).
        let request = conn.begin_request();
        assert!(conn.deadline(&limits).is_none());
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(request);
        let t1 = Instant::now();
        assert!(
            matches!(conn.deadline(&limits), Some((at, Expiry::Idle)) if at == t1 + limits.idle_timeout)
        );
        // The next HTTP/1 head is due from its first byte.
        tokio::time::advance(Duration::from_secs(30)).await;
        conn.on_read(b"G");
        let t2 = Instant::now();
        assert!(
            matches!(conn.deadline(&limits), Some((at, Expiry::Header)) if at == t2 + limits.read_header_timeout)
        );
    }

    /// The connection's timer is moved only when it fires: wherever it is set, it must
    /// fire no later than any deadline the connection can reach before then.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_check_never_comes_after_a_deadline() {
        let limits = Limits {
            max_connections: 4,
            read_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        };
        let soonest = limits.read_header_timeout;
        let conn = Arc::new(Conn::new(Instant::now()));
        let mut checks = 0;
        // A keep-alive client: a request every 7 s, each taking 1 s; its heads arrive
        // without the task being woken.
        let mut check = Conn::next_check(conn.deadline(&limits), Instant::now(), &limits);
        for round in 0..40 {
            tokio::time::advance(Duration::from_secs(6)).await;
            conn.on_read(b"GET / HTTP/1.1\r\n");
            let (due, _) = conn.deadline(&limits).expect("a head is due");
            assert!(
                check <= due,
                "round {round}: the check comes after the head deadline"
            );
            let request = conn.begin_request();
            tokio::time::advance(Duration::from_secs(1)).await;
            drop(request);
            let (due, _) = conn.deadline(&limits).expect("idle");
            assert!(
                check <= due,
                "round {round}: the check comes after the idle deadline"
            );
            // The task looks when its timer fires, and sets it again.
            let now = Instant::now();
            if check <= now {
                checks += 1;
                check = Conn::next_check(conn.deadline(&limits), now, &limits);
                assert!(check > now && check <= now + soonest);
            }
        }
        assert!(
            (15..=30).contains(&checks),
            "about one check per {soonest:?} over 280 s, not one per request: {checks}"
        );
        // A silent connection: the check lands on its deadline exactly.
        let silent = Arc::new(Conn::new(Instant::now()));
        let now = Instant::now();
        let (due, _) = silent.deadline(&limits).expect("the first head is due");
        assert_eq!(
            Conn::next_check(silent.deadline(&limits), now, &limits),
            due
        );
        // In flight: no connection deadline, the check comes back after the shorter timeout.
        let _request = silent.begin_request();
        assert_eq!(
            Conn::next_check(silent.deadline(&limits), now, &limits),
            now + soonest
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_idle_connection_is_shed_first_then_the_slowest_body() {
        let registry = Registry::default();
        let make = || Arc::new(Conn::new(Instant::now()));
        let tick = || tokio::time::advance(Duration::from_secs(1));
        let busy = make();
        let _busy_request = busy.begin_request();
        assert!(matches!(registry.admit(1, &busy, 4), Admission::Admitted));
        tick().await;
        let reader = make();
        let _reader_request = reader.begin_request();
        let reader_handle = ConnHandle(reader.clone());
        let _reading = reader_handle.reading_body(Instant::now());
        assert!(matches!(registry.admit(2, &reader, 4), Admission::Admitted));
        tick().await;
        // A slow head is as idle as a silent connection of the same age.
        let heading = make();
        heading.on_read(b"GET /v1/sys/health HTTP/1.1\r\n");
        assert!(matches!(
            registry.admit(3, &heading, 4),
            Admission::Admitted
        ));
        tick().await;
        let keep_alive = make();
        drop(keep_alive.begin_request());
        assert!(matches!(
            registry.admit(4, &keep_alive, 4),
            Admission::Admitted
        ));
        tick().await;
        let silent = make();
        assert!(matches!(registry.admit(5, &silent, 4), Admission::Shed));
        assert!(heading.is_shed() && !keep_alive.is_shed());
        tick().await;
        // The keep-alive connection has been idle since its response, before `silent`
        // was accepted.
        let next = make();
        let _next_request = next.begin_request();
        assert!(matches!(registry.admit(6, &next, 4), Admission::Shed));
        assert!(keep_alive.is_shed() && !silent.is_shed());
        let last = make();
        let _last_request = last.begin_request();
        assert!(matches!(registry.admit(7, &last, 4), Admission::Shed));
        assert!(silent.is_shed());
        // No idle connection left: the body reader goes, never a busy handler.
        let after = make();
        let _after_request = after.begin_request();
        assert!(matches!(registry.admit(8, &after, 4), Admission::Shed));
        assert!(reader.is_shed() && !busy.is_shed());
        // Everyone busy in a handler: the new connection is refused.
        assert!(matches!(registry.admit(9, &make(), 4), Admission::Full));
        assert_eq!(registry.conns().len(), 4);
        // Out of descriptors, only idle connections are shed.
        assert!(!registry.shed_one_idle());
    }
}
