//! The raw AES-256-GCM of aws-lc-rs and ring on one core: the physical limit the envelope's
//! bulk path is measured against (bench/envelope.sh runs this next to the command line).
//!
//! Run: `cargo bench -p keyhaven-envelope --bench raw_aead`. Each case seals or opens
//! 1 GiB in place, in 64 KiB frames with a 67-byte AAD (the envelope's frame size and AAD
//! length), over an 8 MiB buffer: a seal pass and an open pass of the same frames take
//! turns, so every open verifies. The best of `ROUNDS` rounds is printed, in GB/s
//! (10^9 bytes/s) per second of the thread's CPU time (from `/proc/thread-self/schedstat`)
//! and per second of wall time.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout
)]

use std::time::{Duration, Instant};

const FRAME: usize = 64 << 10;
const BUF: usize = 8 << 20;
const TOTAL: usize = 1 << 30;
const ROUNDS: usize = 3;
const AAD: [u8; 67] = [0x5a; 67];

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

fn nonce(seq: usize) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&(seq as u64).to_be_bytes());
    n
}

/// A backend's in-place seal and open of one frame.
trait Backend {
    fn seal(&self, seq: usize, frame: &mut [u8]) -> [u8; 16];
    fn open(&self, seq: usize, frame: &mut [u8], tag: &[u8; 16]);
}

struct AwsLc(aws_lc_rs::aead::LessSafeKey);
struct Ring(ring::aead::LessSafeKey);

impl Backend for AwsLc {
    fn seal(&self, seq: usize, frame: &mut [u8]) -> [u8; 16] {
        use aws_lc_rs::aead::{Aad, Nonce};
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(seq)),
                Aad::from(&AAD),
                frame,
            )
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
    fn open(&self, seq: usize, frame: &mut [u8], tag: &[u8; 16]) {
        use aws_lc_rs::aead::{Aad, Nonce};
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(seq)),
                Aad::from(&AAD),
                tag,
                frame,
            )
            .expect("the frame verifies");
    }
}

impl Backend for Ring {
    fn seal(&self, seq: usize, frame: &mut [u8]) -> [u8; 16] {
        use ring::aead::{Aad, Nonce};
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(seq)),
                Aad::from(&AAD),
                frame,
            )
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
    fn open(&self, seq: usize, frame: &mut [u8], tag: &[u8; 16]) {
        use ring::aead::{Aad, Nonce, Tag};
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(seq)),
                Aad::from(&AAD),
                Tag::from(*tag),
                frame,
                0..,
            )
            .expect("the frame verifies");
    }
}

struct Figures {
    seal_cpu: Duration,
    seal_wall: Duration,
    open_cpu: Duration,
    open_wall: Duration,
}

/// One round: `TOTAL` bytes sealed and the same bytes opened, timed separately.
fn round(b: &dyn Backend, buf: &mut [u8], tags: &mut [[u8; 16]]) -> Figures {
    let mut f = Figures {
        seal_cpu: Duration::ZERO,
        seal_wall: Duration::ZERO,
        open_cpu: Duration::ZERO,
        open_wall: Duration::ZERO,
    };
    for pass in 0..TOTAL / BUF {
        let base = pass * (BUF / FRAME);
        let (c, w) = (thread_cpu(), Instant::now());
        for (i, (frame, tag)) in buf.chunks_mut(FRAME).zip(tags.iter_mut()).enumerate() {
            *tag = b.seal(base + i, frame);
        }
        f.seal_wall += w.elapsed();
        f.seal_cpu += thread_cpu().saturating_sub(c);
        let (c, w) = (thread_cpu(), Instant::now());
        for (i, (frame, tag)) in buf.chunks_mut(FRAME).zip(tags.iter()).enumerate() {
            b.open(base + i, frame, tag);
        }
        f.open_wall += w.elapsed();
        f.open_cpu += thread_cpu().saturating_sub(c);
    }
    std::hint::black_box(&buf);
    f
}

fn gbps(d: Duration) -> f64 {
    TOTAL as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let key = [7u8; 32];
    let aws = AwsLc(aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key).unwrap(),
    ));
    let ring = Ring(ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key).unwrap(),
    ));
    let mut buf: Vec<u8> = (0..BUF).map(|i| (i % 251) as u8).collect();
    let mut tags = vec![[0u8; 16]; BUF / FRAME];
    for (name, backend) in [
        ("aws-lc-rs", &aws as &dyn Backend),
        ("ring", &ring as &dyn Backend),
    ] {
        let rounds: Vec<Figures> = (0..ROUNDS)
            .map(|_| round(backend, &mut buf, &mut tags))
            .collect();
        let best = |get: fn(&Figures) -> Duration| rounds.iter().map(get).min().unwrap();
        for (op, cpu, wall) in [
            ("seal", best(|f| f.seal_cpu), best(|f| f.seal_wall)),
            ("open", best(|f| f.open_cpu), best(|f| f.open_wall)),
        ] {
            println!(
                "raw {name:<9} AES-256-GCM {op}  cpu {:6.2} GB/s  wall {:6.2} GB/s",
                gbps(cpu),
                gbps(wall)
            );
        }
    }
}
