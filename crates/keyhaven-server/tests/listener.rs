//! The listener's limits through a real server on 127.0.0.1: connection cap and
//! shedding, header and idle timeouts, the body deadline, token-before-body, the body
//! memory budget, and bounded shutdown. Raw sockets, so the tests control exactly what
//! is sent and when; every wait is bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyhaven_server::{Config, DevOptions, ServerError, TlsConfig};
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// Longest any single wait in these tests may take.
const BOUND: Duration = Duration::from_secs(10);

struct Running {
    addr: SocketAddr,
    root: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// Stop the server and wait (bounded) for `serve` to return.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(BOUND, &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

/// A dev server (in memory, unsealed, KV v2 at `secret/`) with changed limits.
async fn start(tweak: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::dev("127.0.0.1:0".parse().unwrap());
    tweak(&mut config);
    let (server, creds) = keyhaven_server::build(
        &config,
        Some(DevOptions {
            root_token_id: None,
        }),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        root: creds.unwrap().root_token.expose_secret().to_owned(),
        stop: Some(stop),
        task,
    }
}

/// Read until the peer closes (or `BOUND` passes: then the test fails).
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + BOUND;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection was not closed; received so far: {}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(buf.get(..n).unwrap()),
        }
    }
}

/// Read one response whose body is JSON or empty (`Content-Length` framed).
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> (u16, String) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + BOUND;
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
                return (status, text);
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {text}");
        out.extend_from_slice(buf.get(..n).unwrap());
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(BOUND, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap()
}

/// One request on a new connection; the status and the whole response.
async fn request(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = connect(addr).await;
    s.write_all(raw).await.unwrap();
    read_response(&mut s).await
}

fn health() -> &'static [u8] {
    b"GET /v1/sys/health HTTP/1.1\r\nhost: t\r\n\r\n"
}

/// A request head with a declared body length.
fn put_head(path: &str, token: Option<&str>, length: usize) -> Vec<u8> {
    let token = token
        .map(|t| format!("x-vault-token: {t}\r\n"))
        .unwrap_or_default();
    format!(
        "PUT {path} HTTP/1.1\r\nhost: t\r\n{token}content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
    .into_bytes()
}

/// A JSON KV v2 write of about `size` bytes.
fn kv_body(size: usize) -> Vec<u8> {
    format!(
        "{{\"data\":{{\"v\":\"{}\"}}}}",
        "x".repeat(size.saturating_sub(16))
    )
    .into_bytes()
}

async fn put(addr: SocketAddr, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut raw = put_head(path, token, body.len());
    raw.extend_from_slice(body);
    request(addr, &raw).await
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_its_connection_is_closed() {
    let server = start(|c| c.listener_limits.read_timeout = Duration::from_millis(500)).await;
    let mut s = connect(server.addr).await;
    s.write_all(&put_head("/v1/secret/data/a", Some(&server.root), 100))
        .await
        .unwrap();
    s.write_all(b"{\"data\":").await.unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#"{"errors":["request body was not received within 0.5s"]}"#),
        "{answer}"
    );
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    assert!(started.elapsed() >= Duration::from_millis(400));
    // Nothing was written.
    let (status, _) = request(
        server.addr,
        format!(
            "GET /v1/secret/data/a HTTP/1.1\r\nhost: t\r\nx-vault-token: {}\r\n\r\n",
            server.root
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn large_bodies_are_refused_before_they_are_read_unless_the_token_is_valid() {
    let server = start(|_| {}).await;
    let big = 200 * 1024;
    for token in [None, Some("khs.notavalidtokennotavalidtoken000000")] {
        // Only the head is sent: the answer must not wait for the body.
        let mut s = connect(server.addr).await;
        s.write_all(&put_head("/v1/secret/data/big", token, big))
            .await
            .unwrap();
        let (status, text) = read_response(&mut s).await;
        assert_eq!(status, 413, "{text}");
        assert!(
            text.contains("larger than 65536 bytes, the limit for requests without a valid token"),
            "{text}"
        );
    }
    // With the root token the same body is read and written.
    let (status, text) = put(
        server.addr,
        "/v1/secret/data/big",
        Some(&server.root),
        &kv_body(big),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // Small bodies need no token to be read (the engine then refuses them).
    let (status, _) = put(server.addr, "/v1/secret/data/small", None, &kv_body(1000)).await;
    assert_eq!(status, 403);
    // A sealed server answers large bodies as it answers everything else.
    let (status, _) = request(
        server.addr,
        format!(
            "PUT /v1/sys/seal HTTP/1.1\r\nhost: t\r\nx-vault-token: {}\r\ncontent-length: 0\r\n\r\n",
            server.root
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 204);
    let mut s = connect(server.addr).await;
    s.write_all(&put_head("/v1/secret/data/big", Some(&server.root), big))
        .await
        .unwrap();
    let (status, text) = read_response(&mut s).await;
    assert_eq!(status, 503, "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn chunked_bodies_without_a_token_stop_at_the_unauthenticated_limit() {
    let server = start(|_| {}).await;
    let s = connect(server.addr).await;
    let (mut reader, mut writer) = tokio::io::split(s);
    let sender = tokio::spawn(async move {
        let head =
            b"PUT /v1/secret/data/c HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n";
        let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
        let mut sent = 0usize;
        if writer.write_all(head).await.is_err() {
            return sent;
        }
        // Up to 4 MiB; the server stops reading long before.
        for _ in 0..256 {
            if writer.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            sent += 0x4000;
        }
        sent
    });
    let (status, text) = read_response(&mut reader).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("without a valid token"), "{text}");
    let sent = timeout(BOUND, sender).await.unwrap().unwrap();
    assert!(sent < 4 * 1024 * 1024, "the server read all {sent} bytes");
    server.shutdown().await;
}

#[tokio::test]
async fn limited_use_tokens_keep_their_uses_through_the_body_check() {
    let server = start(|_| {}).await;
    let policy = br#"{"policy":"path \"secret/*\" { capabilities = [\"create\", \"update\"] }"}"#;
    let (status, _) = put(
        server.addr,
        "/v1/sys/policies/acl/writer",
        Some(&server.root),
        policy,
    )
    .await;
    assert_eq!(status, 204);
    let (status, text) = put(
        server.addr,
        "/v1/auth/token/create",
        Some(&server.root),
        br#"{"policies":["writer"],"num_uses":2}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let token = v["auth"]["client_token"].as_str().unwrap().to_owned();
    // Two uses, two large writes: the body check before each used none.
    for i in 0..2 {
        let (status, text) = put(
            server.addr,
            &format!("/v1/secret/data/limited{i}"),
            Some(&token),
            &kv_body(100 * 1024),
        )
        .await;
        assert_eq!(status, 200, "write {i}: {text}");
    }
    // Used up: the token is gone.
    let (status, _) = put(
        server.addr,
        "/v1/secret/data/limited2",
        Some(&token),
        &kv_body(100),
    )
    .await;
    assert_eq!(status, 403);
    server.shutdown().await;
}

#[tokio::test]
async fn init_and_unseal_take_only_small_bodies_whatever_the_token() {
    let server = start(|_| {}).await;
    for path in ["/v1/sys/unseal", "/v1/sys/init"] {
        let mut s = connect(server.addr).await;
        s.write_all(&put_head(path, Some(&server.root), 100 * 1024))
            .await
            .unwrap();
        let (status, text) = read_response(&mut s).await;
        assert_eq!(status, 413, "{path}: {text}");
        assert!(
            text.contains("larger than the limit of 65536 bytes"),
            "{text}"
        );
    }
    // Small ones still work.
    let (status, text) = put(server.addr, "/v1/sys/unseal", None, br#"{"key":"00"}"#).await;
    assert_eq!(status, 200, "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn bodies_wait_for_their_share_of_the_memory_budget() {
    let server = start(|c| {
        c.max_request_size = 64 * 1024;
        c.listener_limits.max_request_body_memory = 64 * 1024;
        c.listener_limits.read_timeout = Duration::from_millis(800);
    })
    .await;
    // Holds most of the budget: declares 60 KiB, sends a little, stalls.
    let mut holder = connect(server.addr).await;
    holder
        .write_all(&put_head(
            "/v1/secret/data/holder",
            Some(&server.root),
            60 * 1024,
        ))
        .await
        .unwrap();
    holder.write_all(b"{\"data\":").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // This one does not fit beside it: it is read only once the holder's deadline has
    // freed the budget.
    let waiter = tokio::spawn({
        let (addr, root) = (server.addr, server.root.clone());
        async move {
            let answer = put(
                addr,
                "/v1/secret/data/waiter",
                Some(&root),
                &kv_body(8 * 1024),
            )
            .await;
            (answer, Instant::now())
        }
    });
    let holder_answer = read_to_close(&mut holder).await;
    let holder_done = Instant::now();
    assert!(holder_answer.starts_with("HTTP/1.1 408"), "{holder_answer}");
    let ((status, text), waiter_done) = timeout(BOUND, waiter).await.unwrap().unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(waiter_done >= holder_done - Duration::from_millis(50));
    server.shutdown().await;
}

#[tokio::test]
async fn slow_request_heads_are_cut_off_at_the_header_timeout() {
    let server =
        start(|c| c.listener_limits.read_header_timeout = Duration::from_millis(500)).await;
    // A new connection that sends nothing.
    let mut silent = connect(server.addr).await;
    // One that sends its head a byte at a time (slowloris).
    let mut slow = connect(server.addr).await;
    let started = Instant::now();
    let mut cut = false;
    for byte in
        b"GET /v1/sys/health HTTP/1.1\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rest = read_to_close(&mut slow).await;
    assert!(
        cut || rest.is_empty(),
        "a response to an incomplete head: {rest}"
    );
    assert!(started.elapsed() < BOUND);
    assert_eq!(read_to_close(&mut silent).await, "");
    // After a first request, a later head is due within the timeout of its first byte.
    let mut keep = connect(server.addr).await;
    keep.write_all(health()).await.unwrap();
    assert_eq!(read_response(&mut keep).await.0, 200);
    keep.write_all(b"GET /v1/sys/hea").await.unwrap();
    assert_eq!(read_to_close(&mut keep).await, "");
    server.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let server = start(|c| c.listener_limits.idle_timeout = Duration::from_millis(400)).await;
    let mut s = connect(server.addr).await;
    for _ in 0..3 {
        // Within the idle timeout the connection is kept.
        s.write_all(health()).await.unwrap();
        assert_eq!(read_response(&mut s).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle_from = Instant::now();
    assert_eq!(read_to_close(&mut s).await, "");
    assert!(idle_from.elapsed() >= Duration::from_millis(250));
    server.shutdown().await;
}

#[tokio::test]
async fn at_the_cap_the_longest_idle_connections_make_room_for_new_ones() {
    let server = start(|c| c.listener_limits.max_connections = Some(8)).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect(server.addr).await);
        // Accepted in this order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A client that sends its request at once is served, again and again.
    for _ in 0..3 {
        assert_eq!(request(server.addr, health()).await.0, 200);
    }
    // The first ones were closed to make room; the last ones are still open.
    for s in idle.iter_mut().take(12) {
        assert_eq!(read_to_close(s).await, "");
    }
    let mut last = idle.pop().unwrap();
    last.write_all(health()).await.unwrap();
    assert_eq!(read_response(&mut last).await.0, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn plain_http_shutdown_waits_for_requests_in_flight_and_is_bounded() {
    let server = start(|c| c.listener_limits.read_timeout = Duration::from_millis(600)).await;
    let mut idle = connect(server.addr).await;
    idle.write_all(health()).await.unwrap();
    assert_eq!(read_response(&mut idle).await.0, 200);
    let mut stalled = connect(server.addr).await;
    stalled
        .write_all(&put_head("/v1/secret/data/s", Some(&server.root), 100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.shutdown());
    // The idle connection closes at once; the stalled request gets its answer.
    assert_eq!(read_to_close(&mut idle).await, "");
    assert!(
        read_to_close(&mut stalled)
            .await
            .starts_with("HTTP/1.1 408")
    );
    timeout(BOUND, stopping).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let server = start(|_| {}).await;
    let head = format!(
        "GET /v1/sys/health HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let mut s = connect(server.addr).await;
    // The server may stop reading before all of it is sent.
    let _ = s.write_all(head.as_bytes()).await;
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Heads under the limit are fine.
    let head = format!(
        "GET /v1/sys/health HTTP/1.1\r\nhost: t\r\nx-big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    assert_eq!(request(server.addr, head.as_bytes()).await.0, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn http2_is_served_with_the_same_limits() {
    let server = start(|c| {
        c.listener_limits.read_header_timeout = Duration::from_millis(300);
        c.listener_limits.read_timeout = Duration::from_millis(500);
    })
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(BOUND)
        .build()
        .unwrap();
    let base = format!("http://{}", server.addr);
    for _ in 0..2 {
        let r = client
            .get(format!("{base}/v1/sys/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        // Longer than the header timeout: an idle HTTP/2 connection only has the idle
        // timeout.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let r = client
        .put(format!("{base}/v1/secret/data/h2"))
        .header("x-vault-token", &server.root)
        .body(kv_body(200 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .put(format!("{base}/v1/secret/data/h2"))
        .body(kv_body(200 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    server.shutdown().await;
}

fn tls_files(dir: &std::path::Path) -> (TlsConfig, rustls::pki_types::CertificateDer<'static>) {
    use std::os::unix::fs::PermissionsExt as _;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (
        TlsConfig::Files {
            cert: cert_path,
            key: key_path,
            client_certs: true,
        },
        rustls::pki_types::CertificateDer::from(cert.der().to_vec()),
    )
}

async fn tls_connect(
    addr: SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> impl AsyncRead + AsyncWrite + Unpin {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    timeout(BOUND, connector.connect(name, connect(addr).await))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn tls_connections_get_the_same_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, cert) = tls_files(dir.path());
    let server = start(|c| {
        c.tls = tls;
        c.listener_limits.max_connections = Some(4);
        c.listener_limits.read_header_timeout = Duration::from_millis(500);
        c.listener_limits.read_timeout = Duration::from_millis(500);
    })
    .await;
    // No handshake at all: cut off at the header timeout.
    let mut silent = connect(server.addr).await;
    assert_eq!(read_to_close(&mut silent).await, "");
    // At the cap, idle TLS connections make room for a new client.
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(connect(server.addr).await);
    }
    let mut s = tls_connect(server.addr, &cert).await;
    s.write_all(health()).await.unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    // A stalled body over TLS gets 408.
    s.write_all(&put_head("/v1/secret/data/t", Some(&server.root), 50))
        .await
        .unwrap();
    assert!(read_to_close(&mut s).await.starts_with("HTTP/1.1 408"));
    server.shutdown().await;
}
