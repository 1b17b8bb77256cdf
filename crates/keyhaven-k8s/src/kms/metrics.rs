//! The plugin's metrics: calls by method and gRPC code, latency histograms, seed cache hits
//! and misses, the backend's health. Served in Prometheus' text format on
//! `GET /metrics` of an optional loopback listener (`metrics_address` in the config).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0, 3.0,
];

/// The three methods of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    /// `Status`.
    Status,
    /// `Encrypt`.
    Encrypt,
    /// `Decrypt`.
    Decrypt,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Status => "Status",
            Method::Encrypt => "Encrypt",
            Method::Decrypt => "Decrypt",
        }
    }

    fn index(self) -> usize {
        match self {
            Method::Status => 0,
            Method::Encrypt => 1,
            Method::Decrypt => 2,
        }
    }
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters, updated by the service and read by the listener.
#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<(Method, &'static str), u64>>,
    latency: Mutex<[Histogram; 3]>,
    /// Decrypts answered from the seed cache.
    pub cache_hits: AtomicU64,
    /// Decrypts that had to ask keyhaven.
    pub cache_misses: AtomicU64,
    /// Requests to keyhaven that failed.
    pub backend_errors: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// What the rendering needs from the plugin's state.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Whether the last refresh succeeded and the key is usable.
    pub healthy: bool,
    /// The current key version, 0 when never seen.
    pub key_version: u32,
    /// Seeds held in the cache.
    pub cache_entries: usize,
    /// Whether the transit key may be deleted (`deletion_allowed`).
    pub deletion_allowed: bool,
}

impl Metrics {
    /// Records one call.
    pub fn record(&self, method: Method, code: tonic::Code, elapsed: Duration) {
        let code = code_name(code);
        {
            let mut calls = self
                .calls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *calls.entry((method, code)).or_default() += 1;
        }
        let secs = elapsed.as_secs_f64();
        let mut latency = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = latency.get_mut(method.index()) {
            h.count += 1;
            h.sum += secs;
            for (bound, n) in BUCKETS.iter().zip(h.buckets.iter_mut()) {
                if secs <= *bound {
                    *n += 1;
                }
            }
        }
    }

    /// The text exposition.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::new();
        out.push_str("# HELP keyhaven_kms_calls_total KMS v2 calls by method and gRPC code.\n");
        out.push_str("# TYPE keyhaven_kms_calls_total counter\n");
        {
            let calls = self
                .calls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((method, code), n) in calls.iter() {
                let _ = writeln!(
                    out,
                    "keyhaven_kms_calls_total{{method=\"{}\",code=\"{code}\"}} {n}",
                    method.name()
                );
            }
        }
        out.push_str("# HELP keyhaven_kms_call_duration_seconds Time to answer a KMS v2 call.\n");
        out.push_str("# TYPE keyhaven_kms_call_duration_seconds histogram\n");
        {
            let latency = self
                .latency
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for method in [Method::Status, Method::Encrypt, Method::Decrypt] {
                let Some(h) = latency.get(method.index()) else {
                    continue;
                };
                let m = method.name();
                for (bound, n) in BUCKETS.iter().zip(h.buckets.iter()) {
                    let _ = writeln!(
                        out,
                        "keyhaven_kms_call_duration_seconds_bucket{{method=\"{m}\",le=\"{bound}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    out,
                    "keyhaven_kms_call_duration_seconds_bucket{{method=\"{m}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "keyhaven_kms_call_duration_seconds_sum{{method=\"{m}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "keyhaven_kms_call_duration_seconds_count{{method=\"{m}\"}} {}",
                    h.count
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "keyhaven_kms_seed_cache_hits_total",
            "Decrypts answered from the seed cache.",
            "counter",
            self.cache_hits.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "keyhaven_kms_seed_cache_misses_total",
            "Decrypts that needed keyhaven.",
            "counter",
            self.cache_misses.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "keyhaven_kms_seed_cache_entries",
            "Seeds held in memory.",
            "gauge",
            snap.cache_entries as u64,
        );
        gauge(
            &mut out,
            "keyhaven_kms_backend_errors_total",
            "Requests to keyhaven that failed.",
            "counter",
            self.backend_errors.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "keyhaven_kms_healthy",
            "1 when keyhaven answered the last refresh and the key is usable.",
            "gauge",
            u64::from(snap.healthy),
        );
        gauge(
            &mut out,
            "keyhaven_kms_key_version",
            "The transit key version new seeds are wrapped with (0: never seen).",
            "gauge",
            u64::from(snap.key_version),
        );
        gauge(
            &mut out,
            "keyhaven_kms_key_deletion_allowed",
            "1 when the transit key's deletion_allowed is set: deleting it loses every Secret.",
            "gauge",
            u64::from(snap.deletion_allowed),
        );
        out
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Limits of the metrics listener: scrapers are few and their answers small.
#[derive(Debug, Clone, Copy)]
pub struct ScrapeLimits {
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long one exchange (the request, then the answer) may take in all.
    pub deadline: Duration,
}

impl Default for ScrapeLimits {
    /// 8 connections (a Prometheus or two, and a person with curl); 5 s per exchange.
    fn default() -> Self {
        ScrapeLimits {
            max_connections: 8,
            deadline: Duration::from_secs(5),
        }
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped, within the default
/// [`ScrapeLimits`]. Each connection gets one answer and is closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
) {
    serve_limited(listener, render, ScrapeLimits::default()).await;
}

/// [`serve`] within `limits`: at most `max_connections` at once, and a connection that
/// has not sent its request and taken its answer within `deadline` is dropped, so silent
/// or slow clients cannot keep the metrics from the scrapers that read them.
pub async fn serve_limited(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
    limits: ScrapeLimits,
) {
    let render = std::sync::Arc::new(render);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(slot) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Ok((mut stream, _)) = listener.accept().await else {
            drop(slot);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(limits.deadline, async {
                let mut buf = vec![0u8; 4096];
                let mut len = 0usize;
                while let Some(free) = buf.get_mut(len..) {
                    if free.is_empty() {
                        break;
                    }
                    match stream.read(free).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                    if buf
                        .get(..len)
                        .is_some_and(|b| b.windows(4).any(|w| w == b"\r\n\r\n"))
                    {
                        break;
                    }
                }
                let head = buf.get(..len).unwrap_or_default();
                let (status, body) = if head.starts_with(b"GET /metrics ") {
                    ("200 OK", render())
                } else {
                    ("404 Not Found", "not found; try GET /metrics\n".to_owned())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            })
            .await;
        });
    }
}

/// Whether `addr` is a loopback address (the only kind the listener accepts).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_latency_and_cache_counters_are_rendered() {
        let m = Metrics::default();
        m.record(Method::Decrypt, tonic::Code::Ok, Duration::from_micros(30));
        m.record(
            Method::Decrypt,
            tonic::Code::Unavailable,
            Duration::from_millis(2),
        );
        m.cache_hits.fetch_add(3, Ordering::Relaxed);
        let text = m.render(&Snapshot {
            healthy: true,
            key_version: 4,
            cache_entries: 2,
            deletion_allowed: false,
        });
        assert!(text.contains("keyhaven_kms_calls_total{method=\"Decrypt\",code=\"OK\"} 1"));
        assert!(
            text.contains("keyhaven_kms_calls_total{method=\"Decrypt\",code=\"Unavailable\"} 1")
        );
        assert!(text.contains(
            "keyhaven_kms_call_duration_seconds_bucket{method=\"Decrypt\",le=\"0.00005\"} 1"
        ));
        assert!(text.contains("keyhaven_kms_call_duration_seconds_count{method=\"Decrypt\"} 2"));
        assert!(text.contains("keyhaven_kms_seed_cache_hits_total 3"));
        assert!(text.contains("keyhaven_kms_key_version 4"));
        assert!(text.contains("keyhaven_kms_healthy 1"));
    }

    /// Silent clients holding every slot are dropped at the deadline, and a scraper that
    /// waited in the backlog is answered after them.
    #[tokio::test]
    async fn silent_clients_cannot_keep_the_metrics_from_a_scraper() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ScrapeLimits {
            max_connections: 2,
            deadline: Duration::from_millis(300),
        };
        let server = tokio::spawn(serve_limited(listener, || "up 1\n".to_owned(), limits));
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut scraper = tokio::net::TcpStream::connect(addr).await.unwrap();
        scraper
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), scraper.read_to_string(&mut answer))
            .await
            .expect("the scraper is answered once the silent clients are dropped")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("up 1\n"), "{answer}");
        // The silent clients were closed by the server, not left open.
        for mut s in silent {
            let mut rest = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
                .await
                .expect("closed by the server")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
        server.abort();
    }
}
