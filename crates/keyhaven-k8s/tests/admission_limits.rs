//! The webhook's listener under clients that stall: silent TCP connections and a
//! TLS client that stops half-way through its request head take every connection slot,
//! yet a real review is answered once the header timeout has closed them, and a client
//! beyond the cap is turned away instead of queueing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhaven_k8s::admission::server::{Certificates, ServeOptions, Webhook, serve};
use keyhaven_k8s::admission::{Admission, Policy};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

struct Tls {
    connector: tokio_rustls::TlsConnector,
}

impl Tls {
    fn new(ca_der: rustls_pki_types::CertificateDer<'static>) -> Tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        self.connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// One review over a fresh connection; the status line of the answer.
    async fn review(&self, addr: std::net::SocketAddr, body: &[u8]) -> std::io::Result<String> {
        let mut tls = self.connect(addr).await?;
        let head = format!(
            "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer);
        Ok(text.lines().next().unwrap_or("").to_owned())
    }
}

/// Whether the server closed `stream` within `within` (a read returns end of stream or
/// an error).
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_cannot_keep_a_review_from_being_answered() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut options = ServeOptions::new(cert_file.clone(), key_file.clone());
    options.max_connections = 3;
    options.header_timeout = Duration::from_millis(400);
    options.request_timeout = Duration::from_secs(2);
    let webhook = Arc::new(Webhook::new(
        Admission::new(Policy::default()).unwrap(),
        options,
    ));
    let certificates = Arc::new(Certificates::load(&cert_file, &key_file).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, webhook, certificates, async move {
        let _ = stop_rx.await;
    }));
    let tls = Tls::new(cert.der().clone());
    let body = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/admission/create-deployment-hardened.json"),
    )
    .unwrap();
    assert_eq!(
        tls.review(addr, &body).await.unwrap(),
        "HTTP/1.1 200 OK",
        "the webhook does not answer at all"
    );

    // Every slot taken: two silent TCP connections and one TLS client that sends half a
    // request head and stops.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut slow = tls.connect(addr).await.unwrap();
    slow.write_all(b"POST /validate HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // One more is turned away, not queued behind them (queued, it would be answered
    // once they time out).
    let beyond = tls.review(addr, &body).await;
    assert!(
        beyond.is_err() || beyond.as_deref().is_ok_and(str::is_empty),
        "a client beyond the connection cap was served: {beyond:?}"
    );

    // The header timeout closes the stalled ones, and reviews are answered again.
    for s in &mut silent {
        assert!(
            closed_by_server(s, Duration::from_secs(3)).await,
            "a silent connection was kept open"
        );
    }
    let mut buf = [0u8; 256];
    let slow_end = tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buf)).await;
    assert!(
        matches!(slow_end, Ok(Ok(_) | Err(_))),
        "a client stalled in its request head was kept open"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tls.review(addr, &body).await {
            Ok(status) if status == "HTTP/1.1 200 OK" => break,
            other => assert!(
                Instant::now() < deadline,
                "no review answered after the stalled clients timed out: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the webhook did not stop")
        .unwrap()
        .unwrap();
}
