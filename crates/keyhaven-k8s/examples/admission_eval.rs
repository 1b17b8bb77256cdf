//! The admission evaluator alone: judges the 20-container Deployment review of
//! `admission_load` in this process (no HTTP, no TLS) on THREADS threads for SECONDS and
//! prints reviews per CPU-second and the mean CPU time per review. Used to profile the
//! evaluator (`perf record -g`) and as the in-process peer of `bench/admission.sh`.
//!
//! `admission_eval [seconds] [threads] [--print]` (`--print` shows the response once)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhaven_k8s::admission::{Admission, Policy};

mod common;
use common::review_body;

fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    t as f64 / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let print = args.iter().any(|a| a == "--print");
    let nums: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let secs = nums.first().copied().unwrap_or(5);
    let threads = nums.get(1).copied().unwrap_or(1).max(1);
    let admission = Arc::new(Admission::new(Policy::default()).unwrap());
    let body = Arc::new(review_body());
    let first = admission.review(&body).unwrap();
    if print {
        println!(
            "{}",
            serde_json::to_string_pretty(&first.to_review()).unwrap()
        );
    }
    assert!(first.allowed);
    let cpu0 = cpu_secs();
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (admission, body) = (admission.clone(), body.clone());
            std::thread::spawn(move || {
                let mut k = 0u64;
                while Instant::now() < until {
                    let d = admission.review(&body).unwrap();
                    assert!(d.allowed);
                    k += 1;
                }
                k
            })
        })
        .collect();
    let n: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let cpu = cpu_secs() - cpu0;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "review: {} bytes; {threads} thread(s), {wall:.1} s: {n} reviews, {:.0}/s, CPU {cpu:.2} s -> {:.0} reviews per CPU-second, {:.1} us CPU per review",
        body.len(),
        n as f64 / wall,
        n as f64 / cpu.max(0.01),
        cpu * 1e6 / n.max(1) as f64
    );
}
