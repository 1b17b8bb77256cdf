//! Envelope throughput against the raw AEAD of the crypto backend.
//!
//! Run: `cargo bench -p keyhaven-envelope --bench envelope`. Each case processes 64 MiB
//! in memory (no disk): the raw aws-lc-rs AES-256-GCM seal in place and open (out of
//! place) over 64 KiB chunks, the physical limit of one core; then `Encryptor::encrypt`
//! of a slice into `io::sink()` and `Decryptor::decrypt` of a prepared message.
//!
//! Two groups. `cpu_1thread` divides by the benchmark thread's **CPU time** (read from
//! `/proc/thread-self/schedstat`, as the crypto bench does), so other load on a shared
//! machine does not lower it; with `threads: 1` the envelope runs entirely on that thread.
//! `wall` uses wall-clock time, the only fair divisor for 1 against 2 threads; a loaded
//! machine lowers it, so record the load average with the figures in docs/BENCHMARKS.md.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use keyhaven_crypto::SecretKey;
use keyhaven_envelope::{Decryptor, EncryptionContext, Encryptor, LocalKek, Options};

const SIZE: usize = 64 << 20;
const CHUNK: usize = 64 << 10;

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

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn nonce(i: usize) -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&(i as u32).to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

struct Fixture {
    data: Vec<u8>,
    key: LessSafeKey,
    sealed: Vec<(Vec<u8>, Vec<u8>)>,
    kek: LocalKek,
}

fn fixture() -> Fixture {
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let sealed = data
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, chunk)| {
            let mut v = chunk.to_vec();
            let tag = key
                .seal_in_place_separate_tag(nonce(i), Aad::from(&b"aad"[..]), &mut v)
                .unwrap();
            (v, tag.as_ref().to_vec())
        })
        .collect();
    let kek = LocalKek::new(&SecretKey::from_bytes([9; 32])).unwrap();
    Fixture {
        data,
        key,
        sealed,
        kek,
    }
}

fn configure<M: Measurement>(g: &mut BenchmarkGroup<'_, M>) {
    g.throughput(Throughput::BytesDecimal(SIZE as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
}

fn raw<M: Measurement>(g: &mut BenchmarkGroup<'_, M>, f: &Fixture) {
    let mut buf = f.data.clone();
    g.bench_function("raw_aws_lc_rs_seal", |b| {
        b.iter(|| {
            for (i, chunk) in buf.chunks_mut(CHUNK).enumerate() {
                let tag = f
                    .key
                    .seal_in_place_separate_tag(nonce(i), Aad::from(&b"aad"[..]), chunk)
                    .unwrap();
                let _ = std::hint::black_box(tag);
            }
        })
    });
    let mut out = vec![0u8; CHUNK];
    g.bench_function("raw_aws_lc_rs_open", |b| {
        b.iter(|| {
            for (i, (ct, tag)) in f.sealed.iter().enumerate() {
                f.key
                    .open_separate_gather(nonce(i), Aad::from(&b"aad"[..]), ct, tag, &mut out)
                    .unwrap();
                std::hint::black_box(&out);
            }
        })
    });
}

fn envelope<M: Measurement>(g: &mut BenchmarkGroup<'_, M>, f: &Fixture, threads: usize) {
    let opts = Options {
        threads,
        ..Options::default()
    };
    g.bench_with_input(
        BenchmarkId::new("envelope_encrypt", threads),
        &threads,
        |b, _| {
            b.iter(|| {
                let enc =
                    block_on(Encryptor::new(&[&f.kek], EncryptionContext::new(), opts)).unwrap();
                enc.encrypt(&f.data[..], std::io::sink()).unwrap()
            })
        },
    );
    let enc = block_on(Encryptor::new(&[&f.kek], EncryptionContext::new(), opts)).unwrap();
    let mut message = Vec::with_capacity(SIZE + SIZE / 1000 + 4096);
    enc.encrypt(&f.data[..], &mut message).unwrap();
    g.bench_with_input(
        BenchmarkId::new("envelope_decrypt", threads),
        &threads,
        |b, _| {
            b.iter(|| {
                let mut input = &message[..];
                let dec = block_on(Decryptor::open(&mut input, &[&f.kek], opts)).unwrap();
                dec.decrypt(input, std::io::sink()).unwrap()
            })
        },
    );
}

fn cpu(c: &mut Criterion<CpuTime>) {
    let f = fixture();
    let mut g = c.benchmark_group("cpu_1thread");
    configure(&mut g);
    raw(&mut g, &f);
    envelope(&mut g, &f, 1);
    g.finish();
}

fn wall(c: &mut Criterion) {
    let f = fixture();
    let mut g = c.benchmark_group("wall");
    configure(&mut g);
    raw(&mut g, &f);
    envelope(&mut g, &f, 1);
    envelope(&mut g, &f, 2);
    g.finish();
}

criterion_group! {
    name = cpu_benches;
    config = Criterion::default().with_measurement(CpuTime::new());
    targets = cpu
}
criterion_group!(wall_benches, wall);
criterion_main!(cpu_benches, wall_benches);
