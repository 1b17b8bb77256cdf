//! `cargo bench -p keyhaven-engine --bench token_sweep`: the cost of token and lease
//! expiry on an idle server holding many live tokens and leases, in process, on the
//! in-memory store.
//!
//! Creates `KH_TOKENS` (default 100000) tokens with a 24 h TTL and `KH_LEASES` (default
//! 100000) leases of database credentials (24 h, on an in-memory database plugin), then
//! measures, each `KH_RUNS` times (default 10), median and maximum:
//! - `maintenance()` with nothing due (what the server's 5 s timer costs when idle), and
//!   the share of one core it takes at one run per 5 s;
//! - `expire_leases()` with nothing due (the server's 1 s lease timer), and its share;
//! - `maintenance()` with a short token due, `expire_leases()` with a short lease due;
//! - seal + unseal (unseal loads no token and no lease: the indexes are read lazily).
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

use async_trait::async_trait;
use keyhaven_engine::database::plugin::{
    Connection, ConnectionConfig, DatabasePlugins, PluginError, SecretText,
};
use keyhaven_engine::{
    ClientToken, Core, CoreOptions, InitParams, ManualClock, Operation, Request, UnsealInput,
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

/// A database plugin that accepts everything and keeps nothing.
struct NullDb;

#[async_trait]
impl DatabasePlugins for NullDb {
    async fn open(&self, _: &ConnectionConfig) -> Result<Arc<dyn Connection>, PluginError> {
        Ok(Arc::new(NullDb))
    }
}

#[async_trait]
impl Connection for NullDb {
    async fn verify(&self) -> Result<(), PluginError> {
        Ok(())
    }
    async fn create_user(
        &self,
        _: &[String],
        _: &str,
        _: &SecretText,
        _: &str,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    async fn revoke_user(&self, _: &[String], _: &str) -> Result<(), PluginError> {
        Ok(())
    }
    async fn renew_user(&self, _: &[String], _: &str, _: &str) -> Result<(), PluginError> {
        Ok(())
    }
    async fn set_password(&self, _: &[String], _: &str, _: &SecretText) -> Result<(), PluginError> {
        Ok(())
    }
    async fn close(&self) {}
}

async fn call(core: &Core, root: &str, op: Operation, path: &str, body: Value) {
    let data: Map<String, Value> = body.as_object().cloned().unwrap();
    core.handle(Request {
        id: "b".into(),
        operation: op,
        path: path.into(),
        data,
        token: Some(ClientToken::new(root.to_owned())),
        remote_addr: None,
        client_certs: Vec::new(),
    })
    .await
    .unwrap();
}

async fn create(core: &Core, root: &str, ttl: &str) {
    let body = json!({"ttl": ttl, "policies": ["default"]});
    call(core, root, Operation::Update, "auth/token/create", body).await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let tokens = env_usize("KH_TOKENS", 100_000);
    let leases = env_usize("KH_LEASES", 100_000);
    let runs = env_usize("KH_RUNS", 10).max(1);
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let options = CoreOptions {
        database: Some(Arc::new(NullDb)),
        ..CoreOptions::default()
    };
    let core = Core::with_options(Arc::new(MemStore::new()), Arc::new(clock.clone()), options)
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
    call(
        &core,
        &root,
        Operation::Update,
        "sys/mounts/database",
        json!({"type": "database"}),
    )
    .await;
    call(
        &core,
        &root,
        Operation::Update,
        "database/config/db",
        json!({"plugin_name": "postgresql-database-plugin", "connection_url": "postgresql://x", "allowed_roles": "*"}),
    )
    .await;
    for (role, ttl) in [("long", "24h"), ("short", "60s")] {
        call(
            &core,
            &root,
            Operation::Update,
            &format!("database/roles/{role}"),
            json!({"db_name": "db", "creation_statements": "CREATE ROLE x;", "default_ttl": ttl}),
        )
        .await;
    }
    let t0 = Instant::now();
    for _ in 0..leases {
        call(
            &core,
            &root,
            Operation::Read,
            "database/creds/long",
            json!({}),
        )
        .await;
    }
    let leased = t0.elapsed();
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
    let mut idle_leases = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let pass = core.expire_leases().await.unwrap();
        idle_leases.push(t0.elapsed());
        assert_eq!(pass.revoked, 0);
    }
    let mut due_lease = Vec::new();
    for _ in 0..runs {
        call(
            &core,
            &root,
            Operation::Read,
            "database/creds/short",
            json!({}),
        )
        .await;
        clock.advance(Duration::from_secs(61));
        let t0 = Instant::now();
        let pass = core.expire_leases().await.unwrap();
        due_lease.push(t0.elapsed());
        assert_eq!(pass.revoked, 1);
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
    let (lidle_med, lidle_max) = summary(idle_leases);
    let (ldue_med, ldue_max) = summary(due_lease);
    let (unseal_med, unseal_max) = summary(unseal);
    let share_of_core = idle_med.as_secs_f64() / 5.0 * 100.0;
    let lease_share = lidle_med.as_secs_f64() * 100.0;
    println!(
        "live tokens: {tokens} (created in {created:.2?}); live leases: {leases} (issued in {leased:.2?}); {runs} runs each"
    );
    println!("| measure | median | max |");
    println!("|---|---|---|");
    println!("| maintenance, nothing due | {idle_med:.2?} | {idle_max:.2?} |");
    println!("| maintenance, one token due | {due_med:.2?} | {due_max:.2?} |");
    println!("| lease pass, nothing due | {lidle_med:.2?} | {lidle_max:.2?} |");
    println!("| lease pass, one lease due | {ldue_med:.2?} | {ldue_max:.2?} |");
    println!("| first maintenance (also counts token and lease names) | {first:.2?} | |");
    println!("| seal + unseal | {unseal_med:.2?} | {unseal_max:.2?} |");
    println!("idle maintenance every 5 s: {share_of_core:.4} % of one core");
    println!("idle lease pass every 1 s: {lease_share:.4} % of one core");
}
