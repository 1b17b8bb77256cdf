//! Load driver for `keyhaven kms-plugin` (run by `bench/kms-plugin.sh`): many concurrent
//! callers on the plugin's socket, as apiservers would be, for each of Status, Encrypt and
//! Decrypt; prints p50/p99 latency, calls per second and calls per CPU-second of the
//! plugin and server processes (from /proc/<pid>/stat).
//!
//! `kms_load <socket> <callers> <seconds> <plugin pid> <server pid>`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhaven_k8s::proto::kms::key_management_service_client::KeyManagementServiceClient;
use keyhaven_k8s::proto::kms::{DecryptRequest, EncryptRequest, StatusRequest};

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime), counted from the state field as 3.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Status,
    Encrypt,
    Decrypt,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(
        args.len() == 6,
        "usage: kms_load <socket> <callers> <seconds> <plugin pid> <server pid>"
    );
    let socket = PathBuf::from(&args[1]);
    let callers: usize = args[2].parse().unwrap();
    let seconds: u64 = args[3].parse().unwrap();
    let plugin_pid: u32 = args[4].parse().unwrap();
    let server_pid: u32 = args[5].parse().unwrap();
    let ticks_per_sec = 100.0; // USER_HZ on Linux

    let channel = keyhaven_k8s::socket::connect(&socket).await.unwrap();
    let mut client = KeyManagementServiceClient::new(channel.clone());
    let status = client.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.healthz, "ok", "the plugin is not healthy");
    // A pool of ciphertexts to decrypt.
    let mut pool = Vec::new();
    for i in 0..64u8 {
        let r = client
            .encrypt(EncryptRequest {
                plaintext: vec![i; 32],
                uid: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        pool.push((r.ciphertext, r.key_id));
    }
    let pool = Arc::new(pool);

    println!("callers={callers} seconds={seconds} per operation");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "op", "calls", "p50_us", "p99_us", "calls/s", "calls/cpu_s"
    );
    for op in [Op::Status, Op::Encrypt, Op::Decrypt] {
        let (p0, s0) = (cpu_ticks(plugin_pid), cpu_ticks(server_pid));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for c in 0..callers {
            let mut client = KeyManagementServiceClient::new(channel.clone());
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut n = c;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match op {
                        Op::Status => {
                            client.status(StatusRequest {}).await.unwrap();
                        }
                        Op::Encrypt => {
                            client
                                .encrypt(EncryptRequest {
                                    plaintext: vec![7; 32],
                                    uid: String::new(),
                                })
                                .await
                                .unwrap();
                        }
                        Op::Decrypt => {
                            let (ct, id) = &pool[n % pool.len()];
                            client
                                .decrypt(DecryptRequest {
                                    ciphertext: ct.clone(),
                                    uid: String::new(),
                                    key_id: id.clone(),
                                    annotations: Default::default(),
                                })
                                .await
                                .unwrap();
                        }
                    }
                    lat.push(t.elapsed());
                    n += 1;
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(plugin_pid) - p0 + cpu_ticks(server_pid) - s0) as f64 / ticks_per_sec;
        all.sort();
        let name = match op {
            Op::Status => "Status",
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
        };
        println!(
            "{:<8} {:>10} {:>10.1} {:>10.1} {:>12.0} {:>14.0}",
            name,
            all.len(),
            pct(&all, 0.5).as_secs_f64() * 1e6,
            pct(&all, 0.99).as_secs_f64() * 1e6,
            all.len() as f64 / wall,
            if cpu > 0.0 {
                all.len() as f64 / cpu
            } else {
                f64::NAN
            },
        );
    }
}
