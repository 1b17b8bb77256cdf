//! Envelope throughput against the raw AEAD of the crypto backend.
//!
//! Run: `cargo bench -p keyhaven-envelope --bench envelope`. Each case processes 64 MiB
//! in memory (no disk): the raw aws-lc-rs AES-256-GCM seal and open in place over 64 KiB
//! chunks (the physical limit of one core), then `Encryptor::encrypt` into `io::sink()`
//! and `Decryptor::decrypt` of a prepared message, with 1 and 2 threads. Times are wall
//! clock (the 2-thread cases cannot be measured in one thread's CPU time), so a loaded
//! machine lowers every figure; record the load average with them in docs/BENCHMARKS.md.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keyhaven_crypto::SecretKey;
use keyhaven_envelope::{Decryptor, EncryptionContext, Encryptor, LocalKek, Options};

const SIZE: usize = 64 << 20;
const CHUNK: usize = 64 << 10;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let mut g = c.benchmark_group("envelope_64MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));

    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut buf = data.clone();
    let mut tags = Vec::with_capacity(SIZE / CHUNK);
    g.bench_function("raw_aws_lc_rs_seal_in_place", |b| {
        b.iter(|| {
            tags.clear();
            for (i, chunk) in buf.chunks_mut(CHUNK).enumerate() {
                let mut n = [0u8; 12];
                n[8..].copy_from_slice(&(i as u32).to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(&b"aad"[..]),
                        chunk,
                    )
                    .unwrap();
                tags.push(tag);
            }
            black_box(&buf);
        })
    });
    // Sealed chunks with their tags, to open.
    let sealed: Vec<Vec<u8>> = data
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, chunk)| {
            let mut n = [0u8; 12];
            n[8..].copy_from_slice(&(i as u32).to_be_bytes());
            let mut v = chunk.to_vec();
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(&b"aad"[..]),
                &mut v,
            )
            .unwrap();
            v
        })
        .collect();
    let mut work: Vec<Vec<u8>> = sealed.clone();
    g.bench_function("raw_aws_lc_rs_open_in_place", |b| {
        b.iter_batched_ref(
            || (),
            |()| {
                for (i, (w, s)) in work.iter_mut().zip(&sealed).enumerate() {
                    w.copy_from_slice(s);
                    let mut n = [0u8; 12];
                    n[8..].copy_from_slice(&(i as u32).to_be_bytes());
                    let p = key
                        .open_in_place(Nonce::assume_unique_for_key(n), Aad::from(&b"aad"[..]), w)
                        .unwrap();
                    black_box(p);
                }
            },
            criterion::BatchSize::PerIteration,
        )
    });

    let kek = LocalKek::new(&SecretKey::from_bytes([9; 32])).unwrap();
    for threads in [1usize, 2] {
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
                        block_on(Encryptor::new(&[&kek], EncryptionContext::new(), opts)).unwrap();
                    enc.encrypt(&data[..], std::io::sink()).unwrap()
                })
            },
        );
        let enc = block_on(Encryptor::new(&[&kek], EncryptionContext::new(), opts)).unwrap();
        let mut message = Vec::with_capacity(SIZE + SIZE / 1000 + 4096);
        enc.encrypt(&data[..], &mut message).unwrap();
        g.bench_with_input(
            BenchmarkId::new("envelope_decrypt", threads),
            &threads,
            |b, _| {
                b.iter(|| {
                    let mut input = &message[..];
                    let dec = block_on(Decryptor::open(&mut input, &[&kek], opts)).unwrap();
                    dec.decrypt(input, std::io::sink()).unwrap()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
