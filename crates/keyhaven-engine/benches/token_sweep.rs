//! `cargo bench -p keyhaven-engine --bench token_sweep`: the cost of token expiry on an
//! idle server holding many live tokens, in process, on the in-memory store.
//!
//! Creates `KH_TOKENS` (default 100000) tokens with a 24 h TTL and one with 60 s, then
//! measures, each `KH_RUNS` times (default 10), median and maximum:
//! - `maintenance()` with nothing due (what the server's 30 s timer costs when idle), and
//!   the share of one core it takes at one run per 30 s;
//! - `maintenance()` with the short token due;
//! - seal + unseal (unseal loads no token: the expiry index is read lazily).
//!
//! Run it on a quiet machine; it prints one table.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use keyhaven_engine::{
    ClientToken, Core, InitParams, ManualClock, Operation, Request, UnsealInput,
};
use keyhaven_storage::MemStore;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn summary(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

async fn create(core: &Core, root: &str, ttl: &str) {
    let data: Map<String, Value> = json!({"ttl": ttl, "policies": ["default"]})
        .as_object()
        .cloned()
        .unwrap();
    core.handle(Request {
        id: "b".into(),
        operation: Operation::Update,
        path: "auth/token/create".into(),
        data,
        token: Some(ClientToken::new(root.to_owned())),
        remote_addr: None,
        client_certs: Vec::new(),
    })
    .await
    .unwrap();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tokens = env_usize("KH_TOKENS", 100_000);
    let runs = env_usize("KH_RUNS", 10).max(1);
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let core = Core::new(Arc::new(MemStore::new()), Arc::new(clock.clone()))
        .await
        .unwrap();
    let init = core
        .init(InitParams {
            secret_shares: 1,
            secret_threshold: 1,
        })
        .await
        .unwrap();
    let share = hex::encode(init.shares[0].as_bytes());
    core.unseal(UnsealInput::Key(SecretString::from(share.clone())))
        .await
        .unwrap();
    let root = init.root_token.expose_secret().to_owned();
    let t0 = Instant::now();
    for _ in 0..tokens {
        create(&core, &root, "24h").await;
    }
    let created = t0.elapsed();
    // The first run also counts the tokens' names (every 10 minutes of engine time).
    let t0 = Instant::now();
    core.maintenance().await.unwrap();
    let first = t0.elapsed();

    let mut idle = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        core.maintenance().await.unwrap();
        idle.push(t0.elapsed());
    }
    let mut due = Vec::new();
    for _ in 0..runs {
        create(&core, &root, "60s").await;
        clock.advance(Duration::from_secs(61));
        let t0 = Instant::now();
        core.maintenance().await.unwrap();
        due.push(t0.elapsed());
    }
    let mut unseal = Vec::new();
    for _ in 0..runs {
        core.seal().await;
        let t0 = Instant::now();
        core.unseal(UnsealInput::Key(SecretString::from(share.clone())))
            .await
            .unwrap();
        unseal.push(t0.elapsed());
    }
    let (idle_med, idle_max) = summary(idle);
    let (due_med, due_max) = summary(due);
    let (unseal_med, unseal_max) = summary(unseal);
    let share_of_core = idle_med.as_secs_f64() / 30.0 * 100.0;
    println!("live tokens: {tokens} (created in {created:.2?}); {runs} runs each");
    println!("| measure | median | max |");
    println!("|---|---|---|");
    println!("| maintenance, nothing due | {idle_med:.2?} | {idle_max:.2?} |");
    println!("| maintenance, one token due | {due_med:.2?} | {due_max:.2?} |");
    println!("| first maintenance (also counts token names) | {first:.2?} | |");
    println!("| seal + unseal | {unseal_med:.2?} | {unseal_max:.2?} |");
    println!("idle maintenance every 30 s: {share_of_core:.4} % of one core");
}
