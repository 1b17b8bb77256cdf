//! `keyhaven admission serve`: the webhook over TLS (rustls).
//!
//! - `POST /validate` takes an AdmissionReview and answers with its decision (the same as
//!   `keyhaven admission review`); a review that cannot be decoded gets 400 with the
//!   reason, so the apiserver applies the webhook's `failurePolicy`.
//! - `GET /healthz` answers `ok`; `GET /metrics` the counters in Prometheus' text format.
//! - The certificate and key files are read again when they change (polled every
//!   [`ServeOptions::reload_every`]); a pair that cannot be loaded is logged and the
//!   previous one kept.
//! - At most [`ServeOptions::max_connections`] connections are open; further ones are
//!   closed at once (and counted). A request head must arrive within the header timeout,
//!   a body within [`ServeOptions::request_timeout`], and a connection is closed
//!   gracefully after [`ServeOptions::max_connection_age`] (the apiserver reconnects).
//! - Every decision is counted and logged as one line (uid, operation, object, outcome,
//!   the checks that denied or warned); reviews are never logged, nor values.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::{Admission, Decision, MAX_REVIEW_BYTES, ReviewError};

/// How the webhook serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The certificate chain file (PEM).
    pub tls_cert: PathBuf,
    /// The private key file (PEM; refused if others can read it).
    pub tls_key: PathBuf,
    /// Open connections at most.
    pub max_connections: usize,
    /// Deadline for a request head.
    pub header_timeout: Duration,
    /// Deadline for reading a request body and answering it.
    pub request_timeout: Duration,
    /// A connection is closed gracefully after this long.
    pub max_connection_age: Duration,
    /// How often the certificate files are checked for changes.
    pub reload_every: Duration,
}

impl ServeOptions {
    /// Defaults for the given certificate files.
    pub fn new(tls_cert: PathBuf, tls_key: PathBuf) -> ServeOptions {
        ServeOptions {
            tls_cert,
            tls_key,
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            // Below the apiserver's default webhook timeout (10 s).
            request_timeout: Duration::from_secs(8),
            max_connection_age: Duration::from_secs(600),
            reload_every: Duration::from_secs(10),
        }
    }
}

/// A serving error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The certificate or key cannot be used.
    #[error("{0}")]
    Tls(String),
    /// The listener failed.
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 10] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0,
];

/// The webhook's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    decisions: Mutex<BTreeMap<(&'static str, String, bool), u64>>,
    findings: Mutex<BTreeMap<(String, &'static str), u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    latency: Mutex<([u64; BUCKETS.len()], u64, f64)>,
    refused_connections: AtomicU64,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Metrics {
    fn decision(&self, d: &Decision, elapsed: Duration) {
        let kind = if d.kind.is_empty() {
            "-"
        } else {
            d.kind.as_str()
        };
        *lock(&self.decisions)
            .entry((d.outcome(), kind.to_owned(), d.dry_run))
            .or_default() += 1;
        {
            let mut f = lock(&self.findings);
            for h in &d.hits {
                *f.entry((h.check.clone(), h.mode.as_str())).or_default() += 1;
            }
        }
        self.latency(elapsed);
    }

    fn latency(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut l = lock(&self.latency);
        for (b, bound) in l.0.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *b += 1;
            }
        }
        l.1 += 1;
        l.2 += secs;
    }

    fn error(&self, reason: &'static str) {
        *lock(&self.errors).entry(reason).or_default() += 1;
    }

    fn reload(&self, result: &'static str) {
        *lock(&self.reloads).entry(result).or_default() += 1;
    }

    /// The Prometheus text rendering.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP keyhaven_admission_decisions_total Admission decisions by outcome and kind.\n# TYPE keyhaven_admission_decisions_total counter\n");
        for ((outcome, kind, dry), n) in lock(&self.decisions).iter() {
            let _ = writeln!(
                out,
                "keyhaven_admission_decisions_total{{outcome=\"{outcome}\",kind=\"{}\",dry_run=\"{dry}\"}} {n}",
                label(kind)
            );
        }
        out.push_str("# HELP keyhaven_admission_findings_total Findings by check and the mode applied.\n# TYPE keyhaven_admission_findings_total counter\n");
        for ((check, mode), n) in lock(&self.findings).iter() {
            let _ = writeln!(
                out,
                "keyhaven_admission_findings_total{{check=\"{}\",mode=\"{mode}\"}} {n}",
                label(check)
            );
        }
        out.push_str("# HELP keyhaven_admission_review_errors_total Reviews refused as undecodable, by reason.\n# TYPE keyhaven_admission_review_errors_total counter\n");
        for (reason, n) in lock(&self.errors).iter() {
            let _ = writeln!(
                out,
                "keyhaven_admission_review_errors_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str("# HELP keyhaven_admission_review_duration_seconds Time to decide a review, body read included.\n# TYPE keyhaven_admission_review_duration_seconds histogram\n");
        {
            let l = lock(&self.latency);
            for (bound, n) in BUCKETS.iter().zip(l.0) {
                let _ = writeln!(
                    out,
                    "keyhaven_admission_review_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "keyhaven_admission_review_duration_seconds_bucket{{le=\"+Inf\"}} {}\nkeyhaven_admission_review_duration_seconds_sum {}\nkeyhaven_admission_review_duration_seconds_count {}",
                l.1, l.2, l.1
            );
        }
        let _ = writeln!(
            out,
            "# HELP keyhaven_admission_refused_connections_total Connections closed at the connection cap.\n# TYPE keyhaven_admission_refused_connections_total counter\nkeyhaven_admission_refused_connections_total {}",
            self.refused_connections.load(Ordering::Relaxed)
        );
        out.push_str("# HELP keyhaven_admission_certificate_reloads_total Certificate reloads by result.\n# TYPE keyhaven_admission_certificate_reloads_total counter\n");
        for (result, n) in lock(&self.reloads).iter() {
            let _ = writeln!(
                out,
                "keyhaven_admission_certificate_reloads_total{{result=\"{result}\"}} {n}"
            );
        }
        out
    }
}

fn label(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        .take(64)
        .collect()
}

fn error_reason(e: &ReviewError) -> &'static str {
    match e {
        ReviewError::TooLarge(_) => "too_large",
        ReviewError::NotJson(_) => "not_json",
        ReviewError::TooDeep => "too_deep",
        ReviewError::ApiVersion(_) => "api_version",
        ReviewError::Kind(_) => "kind",
        ReviewError::Invalid(_) => "invalid",
        ReviewError::Manifest(_) => "manifest",
    }
}

/// The certificate in use, replaced when its files change.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, FileStamp)>,
}

/// What identifies a version of the two files.
type FileStamp = [(Option<SystemTime>, u64, u64); 2];

fn stamp(path: &Path) -> (Option<SystemTime>, u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len(), m.ino()),
        Err(_) => (None, 0, 0),
    }
}

impl Certificates {
    /// Load the pair (refusing a key file others can read).
    pub fn load(cert: &Path, key: &Path) -> Result<Certificates, ServeError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let stamps = [stamp(cert), stamp(key)];
        let certified = load_pair(cert, key, &provider)?;
        Ok(Certificates {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new((Arc::new(certified), stamps)),
        })
    }

    /// Reload if either file changed. `Ok(true)` when a new pair is in use.
    pub fn reload_if_changed(&self) -> Result<bool, ServeError> {
        let stamps = [stamp(&self.cert), stamp(&self.key)];
        if self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            == stamps
        {
            return Ok(false);
        }
        let loaded = load_pair(&self.cert, &self.key, &self.provider);
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        // Remember the stamps either way: a broken pair is reported once, not every poll.
        current.1 = stamps;
        current.0 = Arc::new(loaded?);
        Ok(true)
    }

    fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, ServeError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .clone(),
        )
    }
}

fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ServeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let tls = ServeError::Tls;
    let meta = std::fs::metadata(key).map_err(|e| {
        tls(format!(
            "cannot read private key file {}: {e}",
            key.display()
        ))
    })?;
    // A Secret volume with an fsGroup gives the group read access (0440): only a key
    // that others can read is refused.
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(tls(format!(
            "private key file {} is readable by others (mode {mode:o}); make it 0600, 0440 or 0400 (defaultMode: 0400)",
            key.display()
        )));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| {
            tls(format!(
                "cannot read certificate file {}: {e}",
                cert.display()
            ))
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| tls(format!("invalid certificate in {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(tls(format!("no certificate found in {}", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        tls(format!(
            "cannot read private key file {}: {e}",
            key.display()
        ))
    })?;
    CertifiedKey::from_der(certs, key_der, provider).map_err(|e| {
        tls(format!(
            "certificate and key do not form a usable pair: {e}"
        ))
    })
}

/// The webhook: the evaluator, its metrics and options.
#[derive(Debug)]
pub struct Webhook {
    admission: Admission,
    /// The counters.
    pub metrics: Metrics,
    options: ServeOptions,
}

impl Webhook {
    /// A webhook judging with `admission`.
    pub fn new(admission: Admission, options: ServeOptions) -> Webhook {
        Webhook {
            admission,
            metrics: Metrics::default(),
            options,
        }
    }

    fn validate(&self, body: &[u8], started: Instant) -> Response<Full<Bytes>> {
        match self.admission.review(body) {
            Ok(d) => {
                let elapsed = started.elapsed();
                self.metrics.decision(&d, elapsed);
                log_decision(&d, elapsed);
                let body = d.to_review_json();
                response(StatusCode::OK, "application/json", body)
            }
            Err(e) => {
                self.metrics.error(error_reason(&e));
                self.metrics.latency(started.elapsed());
                tracing::warn!(reason = error_reason(&e), "admission review refused: {e}");
                response(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("{e}\n").into_bytes(),
                )
            }
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => response(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            (&Method::GET, "/metrics") => response(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render().into_bytes(),
            ),
            (&Method::POST, "/validate") => {
                let limited = Limited::new(req.into_body(), MAX_REVIEW_BYTES);
                let body =
                    match tokio::time::timeout(self.options.request_timeout, limited.collect())
                        .await
                    {
                        Err(_) => {
                            self.metrics.error("body_timeout");
                            return response(
                                StatusCode::REQUEST_TIMEOUT,
                                "text/plain",
                                b"the review body did not arrive in time\n".to_vec(),
                            );
                        }
                        Ok(Err(e)) => {
                            let too_large = e
                                .downcast_ref::<http_body_util::LengthLimitError>()
                                .is_some();
                            self.metrics
                                .error(if too_large { "too_large" } else { "body" });
                            let msg = if too_large {
                                format!(
                                    "the review is over the limit of {MAX_REVIEW_BYTES} bytes\n"
                                )
                            } else {
                                "the review body could not be read\n".to_owned()
                            };
                            let code = if too_large {
                                StatusCode::PAYLOAD_TOO_LARGE
                            } else {
                                StatusCode::BAD_REQUEST
                            };
                            return response(code, "text/plain", msg.into_bytes());
                        }
                        Ok(Ok(b)) => b.to_bytes(),
                    };
                if body.len() > 256 * 1024 {
                    // A large object takes milliseconds to judge: off the reactor.
                    let this = self.clone();
                    tokio::task::spawn_blocking(move || this.validate(&body, started))
                        .await
                        .unwrap_or_else(|_| {
                            response(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "text/plain",
                                b"the review could not be judged\n".to_vec(),
                            )
                        })
                } else {
                    self.validate(&body, started)
                }
            }
            (_, "/validate" | "/healthz" | "/metrics") => response(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"method not allowed\n".to_vec(),
            ),
            _ => response(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}

fn response(code: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn log_decision(d: &Decision, elapsed: Duration) {
    let checks = |mode: super::Mode| -> String {
        d.hits
            .iter()
            .filter(|h| h.mode == mode)
            .map(|h| h.check.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    tracing::info!(
        uid = %d.uid,
        operation = %d.operation,
        kind = %d.kind,
        namespace = %d.namespace,
        name = %d.name,
        dry_run = d.dry_run,
        outcome = d.outcome(),
        denied = %checks(super::Mode::Enforce),
        warned = %checks(super::Mode::Warn),
        skipped = d.skipped.as_deref().unwrap_or(""),
        micros = elapsed.as_micros() as u64,
        "admission decision"
    );
}

/// Serve the webhook on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    webhook: Arc<Webhook>,
    certificates: Arc<Certificates>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let acceptor = certificates.acceptor()?;
    let options = webhook.options.clone();
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let reloader = {
        let certificates = certificates.clone();
        let webhook = webhook.clone();
        let every = options.reload_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match certificates.reload_if_changed() {
                    Ok(false) => {}
                    Ok(true) => {
                        webhook.metrics.reload("ok");
                        tracing::info!("certificate reloaded");
                    }
                    Err(e) => {
                        webhook.metrics.reload("error");
                        tracing::warn!(
                            "certificate not reloaded, the previous one stays in use: {e}"
                        );
                    }
                }
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            webhook
                .metrics
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        let options = options.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(tls)) =
                tokio::time::timeout(options.header_timeout, acceptor.accept(tcp)).await
            else {
                return;
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(options.header_timeout)
                .keep_alive(true)
                .max_buf_size(64 * 1024);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(100);
            let service = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, std::convert::Infallible>(webhook.handle(req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let age = tokio::time::sleep(options.max_connection_age);
            tokio::pin!(age);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = &mut age => {}
                _ = stop.changed() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(options.request_timeout, conn).await;
        });
    }
    let _ = stop_tx.send(true);
    reloader.abort();
    // Let requests in flight finish (bounded).
    let total = u32::try_from(options.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(options.request_timeout, slots.acquire_many(total)).await;
    Ok(())
}
