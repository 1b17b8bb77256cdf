//! AEAD and barrier throughput.
//!
//! Run: `cargo bench -p keyhaven-crypto --bench aead`. Settings are kept short (1 s warm-up,
//! 3 s measurement per case) because the reference machine has 2 shared cores; figures are
//! recorded in `docs/BENCHMARKS.md` next to `openssl speed` from the same sitting.
//!
//! Times are the benchmark thread's **CPU time** (read from `/proc/thread-self/schedstat`,
//! falling back to wall time elsewhere), the same divisor `openssl speed` uses, so that other
//! work on a shared machine does not inflate them. Throughput is in decimal units (GB/s =
//! 10^9 bytes/s) to compare directly with `openssl speed`'s 1000s of bytes per second.
//! Set `KEYHAVEN_BENCH_WALL=1` to measure wall-clock time instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Duration;

use std::time::Instant;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyhaven_crypto::{AeadAlgorithm, AeadKey, NONCE_LEN, SecretKey, barrier, fill_random};

/// CPU time of the calling thread, in nanoseconds, if the kernel exposes it.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Criterion measurement: thread CPU time, or wall time where that is unavailable or asked for.
struct CpuTime {
    wall: bool,
    origin: Instant,
}

impl CpuTime {
    fn new() -> Self {
        let wall = std::env::var_os("KEYHAVEN_BENCH_WALL").is_some() || thread_cpu_ns().is_none();
        Self {
            wall,
            origin: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        if self.wall {
            self.origin.elapsed().as_nanos() as u64
        } else {
            thread_cpu_ns().unwrap_or(0)
        }
    }
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = Duration;

    fn start(&self) -> u64 {
        self.now()
    }
    fn end(&self, start: u64) -> Duration {
        Duration::from_nanos(self.now().saturating_sub(start))
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WallTime.formatter()
    }
}

const SIZES: [(usize, &str); 3] = [(32, "32B"), (16 * 1024, "16KiB"), (1024 * 1024, "1MiB")];

fn aead(c: &mut Criterion<CpuTime>) {
    for (alg, name) in [
        (AeadAlgorithm::Aes256Gcm, "aes-256-gcm"),
        (AeadAlgorithm::ChaCha20Poly1305, "chacha20-poly1305"),
    ] {
        let key = AeadKey::new(alg, &SecretKey::generate().unwrap()).unwrap();
        let mut group = c.benchmark_group(name);
        for (len, label) in SIZES {
            let pt = vec![0x5a; len];
            let aad = b"transit/keys/bench";
            let sealed = key.seal(aad, &pt).unwrap();
            group.throughput(Throughput::BytesDecimal(len as u64));
            group.bench_with_input(BenchmarkId::new("seal", label), &pt, |b, pt| {
                b.iter(|| key.seal(black_box(aad), black_box(pt)).unwrap());
            });
            let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().unwrap();
            group.bench_with_input(BenchmarkId::new("open", label), &sealed, |b, sealed| {
                b.iter(|| key.open(black_box(aad), black_box(sealed)).unwrap());
            });
            let ct = sealed[NONCE_LEN..].to_vec();
            group.bench_with_input(BenchmarkId::new("open_with_nonce", label), &ct, |b, ct| {
                b.iter(|| {
                    key.open_with_nonce(&nonce, black_box(aad), black_box(ct))
                        .unwrap()
                });
            });
        }
        group.finish();
    }
}

fn barrier_entry(c: &mut Criterion<CpuTime>) {
    let key = AeadKey::new(AeadAlgorithm::Aes256Gcm, &SecretKey::generate().unwrap()).unwrap();
    let path = "logical/2f6c1a0e-0c1b-4c54-9f7e-3d1f6a1b2c3d/app/config";
    let value = [0x42u8; 100];
    let entry = barrier::seal(3, &key, path, &value).unwrap();
    let mut group = c.benchmark_group("barrier-aes-256-gcm");
    group.throughput(Throughput::BytesDecimal(value.len() as u64));
    group.bench_function("seal/100B", |b| {
        b.iter(|| barrier::seal(3, &key, black_box(path), black_box(&value)).unwrap());
    });
    group.bench_function("open/100B", |b| {
        b.iter(|| barrier::open(&key, black_box(path), black_box(&entry)).unwrap());
    });
    group.finish();
}

fn random(c: &mut Criterion<CpuTime>) {
    let mut nonce = [0u8; NONCE_LEN];
    c.bench_function("fill_random/12B", |b| {
        b.iter(|| fill_random(black_box(&mut nonce)).unwrap());
    });
}

fn config() -> Criterion<CpuTime> {
    Criterion::default()
        .with_measurement(CpuTime::new())
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = aead, barrier_entry, random
}
criterion_main!(benches);
