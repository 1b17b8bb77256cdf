//! Receiving request bodies within the listener's limits.
//!
//! - A body larger than `max_unauthenticated_request_size` is read only after the
//!   request's token has been found valid ([`Core::token_is_valid`], which uses up
//!   nothing); with a declared length that happens before any of it is read, without
//!   one when that many bytes have arrived. sys/init and sys/unseal never take more.
//! - No body is larger than `max_request_size`.
//! - Waiting for memory and reading must be done within `read_timeout` of the handler
//!   starting.
//! - All bodies being received or handled hold a share of one budget,
//!   `max_request_body_memory`, counted in KiB: a declared length is reserved whole
//!   before the first byte is read; a body without one reserves as it grows (doubling).
//!   A request that cannot reserve before its deadline is refused as busy. The
//!   reservation is kept until the handler returns, so it also stands for the parsed
//!   form of the body.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use bytes::BytesMut;
use keyhaven_engine::Core;
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};
use tokio::time::{Instant, timeout_at};

use crate::json_limits::JsonLimits;
use crate::listener::ConnHandle;

/// The limits every request body is read within, and the shared memory budget.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    max_request_size: usize,
    max_unauthenticated: usize,
    read_timeout: Duration,
    /// Permits are KiB of body.
    budget: Arc<Semaphore>,
    /// The shape a JSON body may have.
    json: JsonLimits,
}

impl BodyLimits {
    /// Limits for bodies of at most `max_request_size` bytes, of which more than
    /// `max_unauthenticated` need a valid token, read within `read_timeout`, all of them
    /// together holding at most `memory` bytes.
    pub fn new(
        max_request_size: usize,
        max_unauthenticated: usize,
        read_timeout: Duration,
        memory: usize,
    ) -> Self {
        let permits = usize::try_from(kib(memory))
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        BodyLimits {
            max_request_size,
            max_unauthenticated: max_unauthenticated.min(max_request_size),
            read_timeout,
            budget: Arc::new(Semaphore::new(permits)),
            json: JsonLimits::default(),
        }
    }

    /// The same limits with `json` bounding the shape of JSON bodies (the default:
    /// [`JsonLimits::default`]).
    pub fn with_json(mut self, json: JsonLimits) -> Self {
        self.json = json;
        self
    }

    /// The body deadline.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The shape a JSON body may have.
    pub(crate) fn json(&self) -> JsonLimits {
        self.json
    }
}

/// KiB needed for `bytes`, rounded up.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Who may send a body larger than the unauthenticated limit.
pub(crate) enum Gate<'a> {
    /// Nobody (sys/init, sys/unseal).
    Unauthenticated,
    /// A request carrying a token this server cannot check (a standby forwarding it to
    /// the active, which checks it).
    Presented {
        /// Whether a token was presented.
        token: bool,
    },
    /// The holder of a valid token.
    Token {
        /// Asked whether the token is valid.
        core: &'a Core,
        /// The presented token, if any.
        token: Option<&'a str>,
    },
}

/// Why a body was not received.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Larger than this limit.
    TooLarge { limit: usize },
    /// Larger than this limit, which is what requests without a valid token may send.
    NeedsToken { limit: usize },
    /// Not received within the body deadline.
    TimedOut,
    /// No memory could be reserved for it within the body deadline.
    Busy,
    /// The client's stream failed (reset, malformed chunking).
    Read,
}

/// A body's share of the memory budget; returned when dropped.
#[derive(Debug)]
pub(crate) struct Reservation<'a> {
    budget: &'a Semaphore,
    permit: Option<SemaphorePermit<'a>>,
    kib: u32,
}

impl<'a> Reservation<'a> {
    fn new(budget: &'a Semaphore) -> Self {
        Reservation {
            budget,
            permit: None,
            kib: 0,
        }
    }

    fn bytes(&self) -> usize {
        usize::try_from(self.kib)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024)
    }

    /// Hold at least `bytes`, waiting for the budget at most until `deadline`.
    async fn grow_to(&mut self, bytes: usize, deadline: Instant) -> Result<(), BodyError> {
        let want = kib(bytes);
        let Some(more) = want.checked_sub(self.kib).filter(|&m| m > 0) else {
            return Ok(());
        };
        // Queued waiters are handed released permits first, so taking free ones at once
        // passes no one.
        let permit = match self.budget.try_acquire_many(more) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(BodyError::Busy),
            Err(TryAcquireError::NoPermits) => timeout_at(deadline, self.budget.acquire_many(more))
                .await
                .map_err(|_| BodyError::Busy)?
                .map_err(|_| BodyError::Busy)?,
        };
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.kib = want;
        Ok(())
    }
}

/// A received body and its share of the memory budget.
pub(crate) struct Received<'a> {
    pub(crate) bytes: Bytes,
    pub(crate) reservation: Option<Reservation<'a>>,
}

/// Decides, once, whether a body may grow past the unauthenticated limit.
struct Admission<'a> {
    gate: Gate<'a>,
    /// The most this body may have now.
    allowed: usize,
    max: usize,
}

impl Admission<'_> {
    async fn admit(&mut self, total: usize, deadline: Instant) -> Result<(), BodyError> {
        if total <= self.allowed {
            return Ok(());
        }
        let small = self.allowed;
        match &self.gate {
            Gate::Unauthenticated => Err(BodyError::TooLarge { limit: small }),
            _ if total > self.max => Err(BodyError::TooLarge { limit: self.max }),
            Gate::Presented { token } => {
                if !token {
                    return Err(BodyError::NeedsToken { limit: small });
                }
                self.allowed = self.max;
                Ok(())
            }
            Gate::Token { core, token } => {
                let valid = match token {
                    Some(t) => timeout_at(deadline, core.token_is_valid(t))
                        .await
                        .map_err(|_| BodyError::TimedOut)?,
                    None => false,
                };
                if !valid {
                    return Err(BodyError::NeedsToken { limit: small });
                }
                self.allowed = self.max;
                Ok(())
            }
        }
    }
}

/// The body's next frame.
async fn next_frame(body: &mut Body) -> Option<Result<hyper::body::Frame<Bytes>, axum::Error>> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)).await
}

/// Receive `body` within `limits`; `conn` is told while it is being read.
pub(crate) async fn receive<'a>(
    mut body: Body,
    limits: &'a BodyLimits,
    gate: Gate<'_>,
    conn: Option<&ConnHandle>,
) -> Result<Received<'a>, BodyError> {
    let declared = body.size_hint().exact();
    if declared == Some(0) || body.is_end_stream() {
        return Ok(Received {
            bytes: Bytes::new(),
            reservation: None,
        });
    }
    let now = Instant::now();
    let _reading = conn.map(|c| c.reading_body(now));
    let deadline = now + limits.read_timeout;
    let mut admission = Admission {
        gate,
        allowed: limits.max_unauthenticated,
        max: limits.max_request_size,
    };
    let mut reservation = Reservation::new(&limits.budget);
    let mut buf = BytesMut::new();
    let declared = declared.map(|d| usize::try_from(d).unwrap_or(usize::MAX));
    if let Some(declared) = declared {
        // Everything is decided before the first byte is read.
        admission.admit(declared, deadline).await?;
        reservation.grow_to(declared, deadline).await?;
    }
    loop {
        let frame = match timeout_at(deadline, next_frame(&mut body)).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(BodyError::Read),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let total = buf.len().saturating_add(data.len());
        admission.admit(total, deadline).await?;
        if total > reservation.bytes() {
            let grown = total.max(reservation.bytes().saturating_mul(2));
            reservation
                .grow_to(grown.min(admission.allowed), deadline)
                .await?;
        }
        if buf.is_empty() && body.is_end_stream() {
            // The whole body came in one frame (a small request's usual way): kept as
            // it arrived, without a copy.
            return Ok(Received {
                bytes: data,
                reservation: Some(reservation),
            });
        }
        if buf.capacity() == 0 {
            buf.reserve(declared.unwrap_or(data.len()));
        }
        buf.extend_from_slice(&data);
    }
    Ok(Received {
        bytes: buf.freeze(),
        reservation: Some(reservation),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(memory: usize) -> BodyLimits {
        BodyLimits::new(64 * 1024, 4096, Duration::from_secs(30), memory)
    }

    #[tokio::test]
    async fn small_bodies_need_no_token_and_hold_their_size_until_dropped() {
        let l = limits(64 * 1024);
        let got = receive(
            Body::from(vec![b'x'; 3000]),
            &l,
            Gate::Unauthenticated,
            None,
        )
        .await
        .unwrap();
        assert_eq!(got.bytes.len(), 3000);
        assert_eq!(l.budget.available_permits(), 64 - 3);
        drop(got);
        assert_eq!(l.budget.available_permits(), 64);
    }

    #[tokio::test]
    async fn a_body_in_one_frame_is_kept_as_received_and_frames_are_joined_in_order() {
        let l = limits(64 * 1024);
        let sent = Bytes::from(vec![b'x'; 3000]);
        let one = receive(Body::from(sent.clone()), &l, Gate::Unauthenticated, None)
            .await
            .unwrap();
        assert_eq!(one.bytes, sent);
        assert_eq!(one.bytes.as_ptr(), sent.as_ptr(), "one frame is not copied");
        assert_eq!(l.budget.available_permits(), 64 - 3);
        // Several frames without a declared length: one buffer, in order.
        let chunks = futures::stream::iter(
            [&b"{\"a\":"[..], b"[1,", b"2]}"]
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        let joined = receive(Body::from_stream(chunks), &l, Gate::Unauthenticated, None)
            .await
            .unwrap();
        assert_eq!(&joined.bytes[..], b"{\"a\":[1,2]}");
        drop((one, joined));
        assert_eq!(l.budget.available_permits(), 64);
    }

    #[tokio::test]
    async fn unauthenticated_bodies_are_cut_at_their_limit() {
        let l = limits(64 * 1024);
        let err = receive(
            Body::from(vec![b'x'; 5000]),
            &l,
            Gate::Unauthenticated,
            None,
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(err, BodyError::TooLarge { limit: 4096 }),
            "{err:?}"
        );
        // Without a declared length too, and nothing stays reserved.
        let chunks = futures::stream::iter(
            (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1000]))),
        );
        let err = receive(Body::from_stream(chunks), &l, Gate::Unauthenticated, None)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, BodyError::TooLarge { limit: 4096 }),
            "{err:?}"
        );
        assert_eq!(l.budget.available_permits(), 64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_cannot_reserve_memory_is_refused_as_busy_at_its_deadline() {
        let l = limits(8 * 1024);
        let held = receive(
            Body::from(vec![b'x'; 4096]),
            &l,
            Gate::Unauthenticated,
            None,
        )
        .await
        .unwrap();
        let other = receive(
            Body::from(vec![b'x'; 4096]),
            &l,
            Gate::Unauthenticated,
            None,
        )
        .await
        .unwrap();
        let started = Instant::now();
        let err = receive(Body::from(vec![b'x'; 10]), &l, Gate::Unauthenticated, None)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, BodyError::Busy), "{err:?}");
        assert_eq!(started.elapsed(), l.read_timeout);
        drop((held, other));
        assert_eq!(l.budget.available_permits(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        use futures::StreamExt as _;
        let l = limits(64 * 1024);
        let stalled =
            futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{\"a\":"))])
                .chain(futures::stream::pending());
        let err = receive(Body::from_stream(stalled), &l, Gate::Unauthenticated, None)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, BodyError::TimedOut), "{err:?}");
        assert_eq!(l.budget.available_permits(), 64);
    }
}
