//! The listener's resource limits against the real server process: idle connections
//! cannot exhaust its descriptors, stalled bodies cannot exhaust its memory, and under
//! many idle, slow and stalled clients a normal client is still served while the
//! server's resident memory and descriptors stay bounded. Loopback only; every loop is
//! bounded; memory is read from `/proc/<pid>/status`, never inferred from time.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestServer, call, call_status, init_unseal, raise_nofile, sqlite_config};

/// Add lines to the `[listener]` table of a test config.
fn with_listener(dir: &Path, lines: &str) -> std::path::PathBuf {
    let path = sqlite_config(dir);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "tls_disable = true",
        &format!("tls_disable = true\n{lines}"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Open a connection that sends nothing (or `None` if the kernel does not complete it).
fn idle_connection(addr: SocketAddr) -> Option<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
}

/// Log lines (JSON) whose message contains `needle`.
fn log_lines_with(server: &TestServer, needle: &str) -> usize {
    server
        .logs()
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["message"].as_str().map(|m| m.contains(needle)))
                .unwrap_or(false)
        })
        .count()
}

/// Issue 10, item 2: about 20k idle connections exhausted the server's descriptors;
/// it then logged `accept error: Too many open files` every second and health checks
/// timed out. Here the server gets a soft limit of 256 descriptors (its default
/// connection cap is then 192) and 400 idle connections.
#[test]
fn idle_connections_cannot_exhaust_the_listener() {
    raise_nofile(2048);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config_and_nofile(&sqlite_config(dir.path()), 256);
    let addr = server.socket_addr();
    let url = format!("{}/v1/sys/health", server.addr());
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Some(s) = idle_connection(addr) {
            idle.push(s);
        }
    }
    // Every health check is answered (501: not initialized) on a new connection.
    for i in 0..5 {
        assert_eq!(
            call_status(&url),
            Some(501),
            "health check {i} was not answered while {} idle connections were open; logs: {}",
            idle.len(),
            server
                .logs()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        server.open_descriptors() <= 256,
        "{}",
        server.open_descriptors()
    );
    // The cap was reached and said so, without a line per connection.
    let warnings = log_lines_with(&server, "connection limit reached");
    assert!((1..=3).contains(&warnings), "{warnings} warnings");
    assert_eq!(log_lines_with(&server, "accept failed"), 0);
    drop(idle);
}

/// Stream a body of `declared` bytes after `head`, sending at most `send` of them, then
/// hold the connection; stops early when the server closes it. Returns bytes sent.
fn stalled_body(addr: SocketAddr, head: &[u8], send: usize, hold: &AtomicBool) -> usize {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return 0;
    };
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    if s.write_all(head).is_err() {
        return 0;
    }
    let piece = vec![b'x'; 256 * 1024];
    let mut sent = 0;
    while sent + piece.len() <= send {
        if s.write_all(&piece).is_err() {
            return sent;
        }
        sent += piece.len();
    }
    // Stalled: keep the connection (bounded by the caller's flag and a deadline).
    let deadline = Instant::now() + Duration::from_secs(20);
    while hold.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    sent
}

fn large_put_head(path: &str, token: Option<&str>, length: usize) -> Vec<u8> {
    let token = token
        .map(|t| format!("X-Vault-Token: {t}\r\n"))
        .unwrap_or_default();
    format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{token}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{\"data\":{{\"v\":\""
    )
    .into_bytes()
}

/// Issue 10, item 3: 40 token-less connections each sending 31 MiB and stalling held
/// 1.3 GB. Now a body over `max_unauthenticated_request_size` (64 KiB) is refused
/// before it is read unless the token is valid, and the server stays small.
#[test]
fn stalled_large_bodies_cannot_exhaust_memory() {
    /// What the server may grow to: its own working set (about 20-30 MiB in a debug
    /// build) plus small per-connection buffers; each attacker's 31 MiB would be 1.2 GiB.
    const RSS_BOUND_KIB: u64 = 128 * 1024;
    raise_nofile(2048);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(&sqlite_config(dir.path()));
    let addr = server.socket_addr();
    let (_, root) = init_unseal(&server.addr(), 1, 1);
    let (s, b) = call(
        "POST",
        &format!("{}/v1/sys/mounts/kv2", server.addr()),
        Some(&root),
        Some(&json!({"type": "kv-v2"})),
    );
    assert_eq!(s, 204, "{b}");
    let hold = Arc::new(AtomicBool::new(true));
    let declared = 31 * 1024 * 1024;
    let attackers: Vec<_> = (0..40)
        .map(|i| {
            let hold = hold.clone();
            std::thread::spawn(move || {
                let head = large_put_head(&format!("/v1/kv2/data/a{i}"), None, declared);
                stalled_body(addr, &head, declared - 1024, &hold)
            })
        })
        .collect();
    // While they send and stall, watch the server's memory and serve a normal client.
    let mut peak = 0;
    for i in 0..20 {
        peak = peak.max(server.rss_kib());
        let (s, b) = call(
            "POST",
            &format!("{}/v1/kv2/data/normal{i}", server.addr()),
            Some(&root),
            Some(&json!({"data": {"n": i}})),
        );
        assert_eq!(s, 200, "{b}");
        std::thread::sleep(Duration::from_millis(50));
    }
    peak = peak.max(server.rss_kib());
    hold.store(false, Ordering::SeqCst);
    let sent: Vec<usize> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
    peak = peak.max(server.rss_kib());
    assert!(
        peak < RSS_BOUND_KIB,
        "server RSS reached {peak} KiB (bound {RSS_BOUND_KIB} KiB); attackers sent {sent:?}"
    );
    assert!(
        sent.iter().all(|&n| n < declared - 1024),
        "some attacker's whole body was read: {sent:?}"
    );
    eprintln!("peak RSS {peak} KiB; attackers sent {sent:?}");
}

/// One request on a new connection; an error instead of a panic when it fails.
fn try_call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut rb = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    if let Some(t) = token {
        rb = rb.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let resp = rb.send().map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().map_err(|e| format!("{e:?}"))?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Counts of what the attackers did, for the failure message.
#[derive(Default)]
struct Attack {
    idle_connects: AtomicU64,
    slow_connects: AtomicU64,
    body_connects: AtomicU64,
}

/// How long attackers wait before reconnecting once cut off. The idle and slow ones
/// then open a few hundred connections a second: a silent connection lives about
/// `max_connections` / that rate (here some 300 ms) before it is the longest idle.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// A connection that sends nothing, reopened whenever the server closes it.
async fn idle_attacker(addr: SocketAddr, stop: Arc<AtomicBool>, attack: Arc<Attack>) {
    use tokio::io::AsyncReadExt as _;
    while !stop.load(Ordering::SeqCst) {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            attack.idle_connects.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 64];
            // Until the server closes it or the test ends.
            while !stop.load(Ordering::SeqCst) {
                let read = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
                if let Ok(Ok(0) | Err(_)) = read {
                    break;
                }
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// Sends a request head one header line every 200 ms and never finishes it
/// (slowloris); reconnects when cut off.
async fn slow_header_attacker(addr: SocketAddr, stop: Arc<AtomicBool>, attack: Arc<Attack>) {
    use tokio::io::AsyncWriteExt as _;
    while !stop.load(Ordering::SeqCst) {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            attack.slow_connects.fetch_add(1, Ordering::Relaxed);
            let mut ok = s
                .write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .await
                .is_ok();
            while ok && !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                ok = s.write_all(b"X-Slow: a\r\n").await.is_ok();
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// Declares a body of `declared` bytes, sends `send` of them and stalls; starts over
/// when the server answers and closes.
async fn stalled_body_attacker(
    addr: SocketAddr,
    head: Vec<u8>,
    send: usize,
    stop: Arc<AtomicBool>,
    attack: Arc<Attack>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let piece = vec![b'x'; 256 * 1024];
    while !stop.load(Ordering::SeqCst) {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            attack.body_connects.fetch_add(1, Ordering::Relaxed);
            let (mut r, mut w) = s.into_split();
            let mut sent = 0;
            let mut ok = w.write_all(&head).await.is_ok();
            while ok && sent + piece.len() <= send && !stop.load(Ordering::SeqCst) {
                ok = tokio::time::timeout(Duration::from_secs(1), w.write_all(&piece))
                    .await
                    .is_ok_and(|r| r.is_ok());
                sent += piece.len();
            }
            // Stalled until the server answers (and closes) or the test ends.
            let mut buf = [0u8; 1024];
            while ok && !stop.load(Ordering::SeqCst) {
                let read = tokio::time::timeout(Duration::from_millis(200), r.read(&mut buf)).await;
                if let Ok(Ok(0) | Err(_)) = read {
                    break;
                }
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// Several hundred idle connections, slowloris header senders, token-less 31 MiB bodies
/// and authenticated stalled bodies, all reconnecting when cut off, against a server
/// capped at 128 connections; meanwhile a normal client opens a new connection for each
/// of its requests (health, a small write, a read) and every one must succeed. The
/// server's RSS must stay under `RSS_BOUND_KIB` and its descriptors under the cap plus
/// headroom.
#[test]
fn the_listener_stays_within_its_bounds_under_idle_slow_and_stalled_clients() {
    const MAX_CONNECTIONS: usize = 128;
    const BODY_MEMORY: usize = 64 * 1024 * 1024;
    /// The body budget (64 MiB) plus the server's own working set and per-connection
    /// buffers (128 connections of at most 64 KiB of read buffer each) with room to
    /// spare; without the limits the bodies alone would hold well over 600 MiB.
    const RSS_BOUND_KIB: u64 = 160 * 1024;
    assert!(
        raise_nofile(4096) >= 1024,
        "too few descriptors for this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = with_listener(
        dir.path(),
        &format!(
            "max_connections = {MAX_CONNECTIONS}\nhttp_read_header_timeout = \"2s\"\nhttp_read_timeout = \"3s\"\nhttp_idle_timeout = \"30s\"\nmax_request_body_memory = {BODY_MEMORY}"
        ),
    );
    let server = TestServer::with_config(&config);
    let base = server.addr();
    let addr = server.socket_addr();
    let (_, root) = init_unseal(&base, 1, 1);
    let (s, b) = call(
        "POST",
        &format!("{base}/v1/sys/mounts/kv2"),
        Some(&root),
        Some(&json!({"type": "kv-v2"})),
    );
    assert_eq!(s, 204, "{b}");
    let idle_rss = server.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let attack = Arc::new(Attack::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..300 {
        tasks.push(runtime.spawn(idle_attacker(addr, stop.clone(), attack.clone())));
    }
    for _ in 0..100 {
        tasks.push(runtime.spawn(slow_header_attacker(addr, stop.clone(), attack.clone())));
    }
    let unauthenticated = 31 * 1024 * 1024;
    for i in 0..20 {
        let head = large_put_head(&format!("/v1/kv2/data/u{i}"), None, unauthenticated);
        tasks.push(runtime.spawn(stalled_body_attacker(
            addr,
            head,
            unauthenticated - 1024,
            stop.clone(),
            attack.clone(),
        )));
    }
    // Token holders may use the body budget: three 16 MiB bodies fit beside the normal
    // client's small ones.
    let authenticated = 16 * 1024 * 1024;
    for i in 0..3 {
        let head = large_put_head(&format!("/v1/kv2/data/t{i}"), Some(&root), authenticated);
        tasks.push(runtime.spawn(stalled_body_attacker(
            addr,
            head,
            authenticated - 1024,
            stop.clone(),
            attack.clone(),
        )));
    }

    // The server's memory and descriptors, sampled until the attack ends.
    let peaks = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let sampler = {
        let (peaks, stop) = (peaks.clone(), stop.clone());
        let pid = server.pid();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let rss = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                        .unwrap_or(0);
                    peaks.0.fetch_max(rss, Ordering::SeqCst);
                }
                if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    peaks.1.fetch_max(fds.count() as u64, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Let the attack build up past the cap, then the normal client.
    std::thread::sleep(Duration::from_millis(500));
    let mut failures = Vec::new();
    for i in 0..25 {
        let health = try_call("GET", &format!("{base}/v1/sys/health"), None, None);
        if !matches!(health, Ok((200, _))) {
            failures.push(format!("health {i}: {health:?}"));
        }
        let write = try_call(
            "POST",
            &format!("{base}/v1/kv2/data/normal{i}"),
            Some(&root),
            Some(&json!({"data": {"n": i}})),
        );
        if !matches!(write, Ok((200, _))) {
            failures.push(format!("write {i}: {write:?}"));
        }
        let read = try_call(
            "GET",
            &format!("{base}/v1/kv2/data/normal{i}"),
            Some(&root),
            None,
        );
        if !matches!(&read, Ok((200, b)) if b["data"]["data"]["n"] == i) {
            failures.push(format!("read {i}: {read:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    runtime.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));

    let (peak_rss, peak_fds) = (
        peaks.0.load(Ordering::SeqCst),
        peaks.1.load(Ordering::SeqCst),
    );
    let attempts = format!(
        "idle connects {}, slow-header connects {}, body connects {}",
        attack.idle_connects.load(Ordering::Relaxed),
        attack.slow_connects.load(Ordering::Relaxed),
        attack.body_connects.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "the normal client failed: {failures:#?}\n{attempts}"
    );
    assert!(
        peak_rss < RSS_BOUND_KIB,
        "server RSS reached {peak_rss} KiB (idle: {idle_rss} KiB, bound {RSS_BOUND_KIB} KiB); {attempts}"
    );
    // The cap holds: connections plus storage, log and runtime descriptors.
    assert!(
        peak_fds <= MAX_CONNECTIONS as u64 + 64,
        "server had {peak_fds} descriptors open; {attempts}"
    );
    assert!(log_lines_with(&server, "connection limit reached") <= 4);
    assert_eq!(log_lines_with(&server, "accept failed"), 0);
    eprintln!(
        "peak RSS {peak_rss} KiB (idle {idle_rss} KiB), peak descriptors {peak_fds}; {attempts}"
    );
}
