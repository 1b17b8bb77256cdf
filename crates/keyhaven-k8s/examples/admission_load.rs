//! Load driver for `keyhaven admission serve` (run by `bench/admission.sh`): CONNECTIONS
//! keep-alive TLS connections each posting a 20-container Deployment review to /validate
//! one after another for SECONDS; prints p50/p99 latency, decisions per second and per
//! CPU-second of the webhook process (from /proc/<pid>/stat). Then, as the peer of the
//! same run, the same review judged in this process without HTTP or TLS.
//!
//! `admission_load <addr> <ca.pem> <connections> <seconds> <webhook pid>`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhaven_k8s::admission::{Admission, Policy};
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

mod common;
use common::review_body;

fn ticks(stat: &str) -> u64 {
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // USER_HZ is 100 on Linux.
    ticks(&stat) as f64 / 100.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn connection(
    addr: String,
    config: Arc<rustls::ClientConfig>,
    request: Arc<Vec<u8>>,
    until: Instant,
) -> Vec<Duration> {
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let mut latencies = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < until {
        let t = Instant::now();
        tls.write_all(&request).await.unwrap();
        let mut have = 0usize;
        loop {
            let n = tls.read(&mut buf[have..]).await.unwrap();
            assert!(n > 0, "connection closed");
            have += n;
            let head_end = buf[..have].windows(4).position(|w| w == b"\r\n\r\n");
            if let Some(end) = head_end {
                let head = std::str::from_utf8(&buf[..end]).unwrap();
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if have >= end + 4 + len {
                    assert!(
                        std::str::from_utf8(&buf[end + 4..end + 4 + len])
                            .unwrap()
                            .contains("\"allowed\":true")
                    );
                    break;
                }
            }
        }
        latencies.push(t.elapsed());
    }
    latencies
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(
        args.len() == 6,
        "usage: admission_load <addr> <ca.pem> <connections> <seconds> <webhook pid>"
    );
    let (addr, ca, conns, secs, pid) = (&args[1], &args[2], &args[3], &args[4], &args[5]);
    let conns: usize = conns.parse().unwrap();
    let secs: u64 = secs.parse().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let body = review_body();
    let mut request = format!(
        "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let request = Arc::new(request);

    // Warm up (connections, caches), then measure.
    let warm = Instant::now() + Duration::from_secs(1);
    let _ = connection(addr.clone(), config.clone(), request.clone(), warm).await;
    let cpu0 = cpu_secs(pid);
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            tokio::spawn(connection(
                addr.clone(),
                config.clone(),
                request.clone(),
                until,
            ))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu0;
    all.sort();
    let n = all.len() as f64;
    println!(
        "review: {} bytes, 20 containers; {conns} keep-alive TLS connections, {secs} s",
        body.len()
    );
    println!(
        "webhook over TLS: {} decisions, {:.0}/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms; webhook CPU {:.2} s -> {:.0} decisions per CPU-second",
        all.len(),
        n / wall,
        pct(&all, 0.50).as_secs_f64() * 1e3,
        pct(&all, 0.99).as_secs_f64() * 1e3,
        pct(&all, 0.999).as_secs_f64() * 1e3,
        cpu,
        if cpu > 0.0 { n / cpu } else { f64::NAN }
    );

    // Peer: the same decision in this process, no HTTP, no TLS.
    let admission = Admission::new(Policy::default()).unwrap();
    let self_cpu0 = cpu_secs("self");
    let t = Instant::now();
    let mut k = 0u64;
    while t.elapsed() < Duration::from_secs(secs) {
        let d = admission.review(&body).unwrap();
        assert!(d.allowed);
        k += 1;
    }
    let self_cpu = cpu_secs("self") - self_cpu0;
    let inproc = k as f64 / self_cpu.max(0.01);
    println!(
        "in-process evaluator (peer): {k} decisions, {inproc:.0} per CPU-second; webhook/evaluator ratio {:.2}",
        if cpu > 0.0 {
            (n / cpu) / inproc
        } else {
            f64::NAN
        }
    );
}
