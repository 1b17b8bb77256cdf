//! `keyhaven-ceiling`: the practical ceiling for keyhaven's HTTP path.
//!
//! A bare axum + hyper + tokio server that answers the two routes of bench/ceiling.sh
//! with fixed bodies:
//!
//! - `GET /v1/secret/data/bench`: a KV v2 read of a small secret;
//! - `POST /v1/transit/encrypt/bench`: a transit encrypt of 32 bytes (the request body
//!   is read, not parsed).
//!
//! Both check one header, `X-Vault-Token`, against a fixed value ([`TOKEN`], the root
//! token the benchmark gives its dev servers) and answer 403 otherwise. The bodies in
//! `bodies/` were captured from `keyhaven server --dev`, and the response headers are
//! keyhaven's (`content-type`, `cache-control`, `x-request-id`), so both servers write
//! the same bytes. Everything keyhaven does beyond that (token lookup, policy, storage,
//! crypto, JSON, request ids, per-connection limits) is absent: what is left is the cost
//! of accepting, TLS, HTTP parsing, routing and writing that any server on this stack
//! pays.
//!
//! The stack is configured as keyhaven's server is: jemalloc as the global allocator, a
//! multi-threaded tokio runtime with the default worker count, hyper-util's HTTP/1 +
//! HTTP/2 connection builder with the same settings, one task per connection calling
//! the axum router per request, and, with `--tls-cert`/`--tls-key`, rustls with the
//! aws-lc-rs provider, the safe default protocol versions, no client authentication and
//! ALPN `h2`, `http/1.1` (keyhaven-cli's `server_cmd.rs`, keyhaven-server's
//! `listener.rs` and `tls.rs`). Connections are kept alive until the client closes them.
//!
//! Usage: `keyhaven-ceiling [--listen 127.0.0.1:18300] [--tls-cert FILE --tls-key FILE]`.
//! It listens on loopback addresses only, and stops on SIGTERM or SIGINT.

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// keyhaven's allocator, with the options that the root `.cargo/config.toml` compiles in.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type BoxError = Box<dyn Error + Send + Sync>;

/// The only token accepted: what bench/ceiling.sh passes as its dev servers' root token.
const TOKEN: &[u8] = b"root";
/// A KV v2 read of `{"user": "bench", "password": <32 characters>}`, from keyhaven.
const KV_READ: &[u8] = include_bytes!("../bodies/kv_read.json");
/// A transit encrypt of 32 bytes with an aes256-gcm96 key, from keyhaven.
const TRANSIT_ENCRYPT: &[u8] = include_bytes!("../bodies/transit_encrypt.json");
/// Vault's answer to a missing or unknown token.
const PERMISSION_DENIED: &[u8] = br#"{"errors":["permission denied"]}"#;
/// A request id of the length of keyhaven's (a UUID).
const REQUEST_ID: &str = "00000000-0000-4000-8000-000000000000";
/// Largest request body read (keyhaven's default `max_request_size` is larger; the
/// benchmark sends about 60 bytes).
const MAX_BODY: usize = 1024 * 1024;

/// keyhaven-server's `listener.rs` settings.
const MAX_HEADER_BYTES: usize = 64 * 1024;
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
const H2_WINDOW: u32 = 256 * 1024;
const H2_MAX_STREAMS: u32 = 100;
/// How long the accept loop waits after an error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyhaven-ceiling: {e}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    listen: SocketAddr,
    tls: Option<(PathBuf, PathBuf)>,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut listen: SocketAddr = "127.0.0.1:18300".parse()?;
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg:?} needs a value"));
        match arg.to_str() {
            Some("--listen") => {
                listen = value()?
                    .to_str()
                    .ok_or("--listen: not UTF-8")?
                    .parse()
                    .map_err(|e| format!("--listen: {e}"))?;
            }
            Some("--tls-cert") => cert = Some(PathBuf::from(value()?)),
            Some("--tls-key") => key = Some(PathBuf::from(value()?)),
            _ => {
                return Err(format!(
                    "unknown argument {arg:?}; usage: keyhaven-ceiling [--listen ADDR] \
                     [--tls-cert FILE --tls-key FILE]"
                )
                .into());
            }
        }
    }
    if !listen.ip().is_loopback() {
        return Err(format!("{listen} is not a loopback address").into());
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    Ok(Args { listen, tls })
}

fn run() -> Result<(), BoxError> {
    let args = parse_args()?;
    let tls = match &args.tls {
        Some((cert, key)) => Some(acceptor(cert, key)?),
        None => None,
    };
    // keyhaven-cli's `server_cmd.rs`: default worker count (one per CPU), all drivers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("listening on {scheme}://{}", listener.local_addr()?);
        tokio::select! {
            () = serve(listener, tls, router()) => {}
            () = shutdown_signal() => {}
        }
        Ok::<(), BoxError>(())
    })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn router() -> axum::Router {
    axum::Router::new()
        .route("/v1/secret/data/bench", get(kv_read))
        .route("/v1/transit/encrypt/bench", post(transit_encrypt))
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("x-vault-token")
        .is_some_and(|v| v.as_bytes() == TOKEN)
}

async fn kv_read(headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return fixed(StatusCode::FORBIDDEN, PERMISSION_DENIED);
    }
    fixed(StatusCode::OK, KV_READ)
}

async fn transit_encrypt(request: Request) -> Response {
    if !authorized(request.headers()) {
        return fixed(StatusCode::FORBIDDEN, PERMISSION_DENIED);
    }
    // The body is read (a server must, to answer and keep the connection), not parsed.
    match axum::body::to_bytes(request.into_body(), MAX_BODY).await {
        Ok(_) => fixed(StatusCode::OK, TRANSIT_ENCRYPT),
        Err(_) => fixed(
            StatusCode::BAD_REQUEST,
            br#"{"errors":["cannot read the request body"]}"#,
        ),
    }
}

/// A fixed answer with keyhaven's response headers.
fn fixed(status: StatusCode, body: &'static [u8]) -> Response {
    let mut response = Response::new(Body::from(Bytes::from_static(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_static(REQUEST_ID),
    );
    response
}

/// keyhaven-server's `tls.rs` configuration.
fn acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, BoxError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// keyhaven-server's `listener.rs` HTTP settings.
fn http_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
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

/// Accept connections for ever, one task per connection.
async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, router: axum::Router) {
    let builder = Arc::new(http_builder());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
                if !matches!(
                    e.kind(),
                    ConnectionAborted | ConnectionRefused | ConnectionReset
                ) {
                    eprintln!("keyhaven-ceiling: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        let (builder, router, tls) = (builder.clone(), router.clone(), tls.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                router.clone().oneshot(request)
            });
            // Errors end one connection (a client that went away); nothing to report.
            let _ = match tls {
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Err(_) => return,
                },
            };
        });
    }
}
