//! Load driver for `keyhaven csi-provider` (bench/csi.sh runs it): calls `Mount` over the
//! provider's socket as the Secrets Store CSI driver does, with pod tokens signed by a test
//! issuer key that it installs into the server's `auth/kubernetes`.
//!
//! ```text
//! csi_load --address URL --token ROOT --socket PATH [--mounts N] [--identities N] [--concurrency N]
//! ```
//!
//! Phases (one JSON line each on stdout):
//! - `cold`: a fresh pod token per mount, so every mount logs in (10 objects);
//! - `cached`: the same pod token again and again (10 objects, cached keyhaven token);
//! - `throughput`: `--identities` distinct pods (tokens), `--concurrency` mounts in flight.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::disallowed_methods,
    missing_docs,
    reason = "a benchmark driver"
)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyhaven_client::{Client, ClientConfig};
use keyhaven_k8s::proto::csi::MountRequest;
use keyhaven_k8s::proto::csi::csi_driver_provider_client::CsiDriverProviderClient;
use secrecy::SecretString;
use serde_json::json;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

struct Signer {
    key: jsonwebtoken::EncodingKey,
    serial: std::sync::atomic::AtomicU64,
}

impl Signer {
    fn token(&self, pod: usize) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let n = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (ns, sa) = (format!("bench-{}", pod % 5), format!("sa-{pod}"));
        let claims = json!({
            "iss": ISSUER, "sub": format!("system:serviceaccount:{ns}:{sa}"), "aud": ["keyhaven"],
            "iat": now - 5, "nbf": now - 5, "exp": now + 3600, "jti": format!("bench-{n}"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u"}, "pod": {"name": format!("p-{pod}"), "uid": format!("pod-{pod}")}}
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &self.key,
        )
        .unwrap()
    }
}

fn request(token: &str, pod: usize) -> MountRequest {
    let objects: String = (0..10)
        .map(|i| {
            format!(
                "- {{objectName: s{i}, secretPath: secret/data/bench/s{i}, secretKey: value}}\n"
            )
        })
        .collect();
    let attrs = json!({
        "roleName": "bench",
        "objects": objects,
        "csi.storage.k8s.io/pod.name": format!("p-{pod}"),
        "csi.storage.k8s.io/pod.namespace": format!("bench-{}", pod % 5),
        "csi.storage.k8s.io/serviceAccount.name": format!("sa-{pod}"),
        "csi.storage.k8s.io/serviceAccount.tokens": json!({"keyhaven": {"token": token, "expirationTimestamp": ""}}).to_string(),
    });
    MountRequest {
        attributes: attrs.to_string(),
        secrets: "null".into(),
        target_path: "/tmp/x".into(),
        permission: "420".into(),
        current_object_version: Vec::new(),
    }
}

/// utime + stime of the processes, in seconds (clock ticks of 1/100 s).
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // Fields after the command name, which is in parentheses.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
        })
        .sum()
}

fn summary(phase: &str, mut lat: Vec<Duration>, wall: Duration) {
    lat.sort();
    let q = |p: f64| {
        lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1].as_secs_f64() * 1e3
    };
    println!(
        "{}",
        json!({"phase": phase, "mounts": lat.len(), "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": q(1.0), "wall_s": wall.as_secs_f64()})
    );
}

#[tokio::main]
async fn main() {
    let address = arg("--address").expect("--address");
    let root = arg("--token").expect("--token");
    let socket = arg("--socket").expect("--socket");
    let mounts: usize = arg("--mounts").map_or(500, |v| v.parse().unwrap());
    let identities: usize = arg("--identities").map_or(50, |v| v.parse().unwrap());
    let concurrency: usize = arg("--concurrency").map_or(8, |v| v.parse().unwrap());
    // The server's and the provider's process ids, whose CPU the throughput phase counts.
    let pids: Vec<u32> = arg("--pids").map_or_else(Vec::new, |v| {
        v.split(',').map(|p| p.parse().unwrap()).collect()
    });

    // Setup: the issuer key, a role for every bench pod, ten secrets.
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut cc = ClientConfig::new(address);
    cc.token = Some(SecretString::from(root));
    let admin = Client::new(cc).unwrap();
    let _ = admin
        .write("sys/auth/kubernetes", Some(&json!({"type": "kubernetes"})))
        .await;
    admin
        .write(
            "auth/kubernetes/config",
            Some(&json!({"pem_keys": [kp.public_key_pem()], "issuer": ISSUER})),
        )
        .await
        .unwrap();
    admin
        .write(
            "sys/policies/acl/bench",
            Some(&json!({"policy": "path \"secret/data/bench/*\" { capabilities = [\"read\"] }"})),
        )
        .await
        .unwrap();
    admin
        .write("auth/kubernetes/role/bench", Some(&json!({"bound_service_account_names": "sa-*", "bound_service_account_namespaces": "bench-*", "audience": "keyhaven", "token_policies": "bench", "token_ttl": "1h"})))
        .await
        .unwrap();
    for i in 0..10 {
        admin
            .write(
                &format!("secret/data/bench/s{i}"),
                Some(&json!({"data": {"value": format!("value-{i}-{}", "x".repeat(64))}})),
            )
            .await
            .unwrap();
    }
    let signer = Arc::new(Signer {
        key: jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        serial: Default::default(),
    });
    let channel = keyhaven_k8s::socket::connect(std::path::Path::new(&socket))
        .await
        .unwrap();
    let client = CsiDriverProviderClient::new(channel);

    // Warm-up (connections, first-touch).
    for _ in 0..20 {
        client
            .clone()
            .mount(request(&signer.token(0), 0))
            .await
            .unwrap();
    }

    let phase = |name: &'static str,
                 n: usize,
                 conc: usize,
                 token_for: Arc<dyn Fn(usize) -> (String, usize) + Send + Sync>| {
        let client = client.clone();
        async move {
            let start = Instant::now();
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..conc {
                let (client, next, token_for) = (client.clone(), next.clone(), token_for.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            return lat;
                        }
                        let (token, pod) = token_for(i);
                        let t = Instant::now();
                        let r = client
                            .clone()
                            .mount(request(&token, pod))
                            .await
                            .unwrap()
                            .into_inner();
                        lat.push(t.elapsed());
                        assert_eq!(r.files.len(), 10);
                    }
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.unwrap());
            }
            summary(name, lat, start.elapsed());
        }
    };

    // Cold: tokens signed ahead (signing is the kubelet's cost, not the provider's).
    let cold: Arc<Vec<String>> = Arc::new((0..mounts).map(|i| signer.token(1000 + i)).collect());
    let c = cold.clone();
    phase(
        "cold",
        mounts,
        1,
        Arc::new(move |i| (c[i].clone(), 1000 + i)),
    )
    .await;
    let one = signer.token(1);
    phase("cached", mounts, 1, Arc::new(move |_| (one.clone(), 1))).await;
    let pods: Arc<Vec<String>> = Arc::new((0..identities).map(|p| signer.token(p)).collect());
    let p = pods.clone();
    let before = cpu_seconds(&pids);
    let n = mounts * 4;
    phase(
        "throughput",
        n,
        concurrency,
        Arc::new(move |i| (p[i % p.len()].clone(), i % p.len())),
    )
    .await;
    let cpu = cpu_seconds(&pids) - before;
    println!(
        "{}",
        json!({"phase": "throughput-cpu", "identities": identities, "concurrency": concurrency, "mounts": n, "server_and_provider_cpu_s": cpu, "mounts_per_cpu_s": n as f64 / cpu})
    );
}
