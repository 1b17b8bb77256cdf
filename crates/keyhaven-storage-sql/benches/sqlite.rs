//! SQLite store benchmarks: point reads (inline and on the blocking pool) and durable
//! puts at concurrency 1 and 32 (group commit). Run with
//! `cargo bench -p keyhaven-storage-sql --bench sqlite`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhaven_storage::{Op, Store, Transaction, TxOutcome};
use keyhaven_storage_sql::{SqliteOptions, SqliteStore};
use tokio::runtime::Runtime;

const KEYS: usize = 10_000;
const VALUE_LEN: usize = 128;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store on the real disk (not tmpfs: fsync must cost what it costs in production).
fn store(rt: &Runtime, dir: &tempfile::TempDir, inline: bool) -> Arc<SqliteStore> {
    let mut options = SqliteOptions::default();
    options.inline_point_reads = inline;
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db"), options).unwrap());
    rt.block_on(async {
        let ops = (0..KEYS)
            .map(|i| Op::Put {
                key: format!("bench/k{i:06}"),
                value: vec![0xa5; VALUE_LEN],
            })
            .collect();
        let tx = Transaction {
            conditions: vec![],
            ops,
        };
        assert_eq!(store.transact(tx).await.unwrap(), TxOutcome::Committed);
    });
    store
}

fn bench_dir() -> tempfile::TempDir {
    // CARGO_TARGET_DIR (or ./target) is on the build disk; /tmp may be tmpfs elsewhere.
    let base = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), Into::into);
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in::<std::path::PathBuf>(base).unwrap()
}

fn point_get(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("sqlite/get");
    group.throughput(Throughput::Elements(1));
    for (name, inline) in [("inline", true), ("spawn_blocking", false)] {
        let dir = bench_dir();
        let store = store(&rt, &dir, inline);
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 7919) % KEYS;
                let key = format!("bench/k{i:06}");
                black_box(rt.block_on(store.get(&key)).unwrap().unwrap());
            });
        });
        store.close();
    }
    group.finish();
}

fn put(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("sqlite/put");
    for concurrency in [1u64, 32] {
        let dir = bench_dir();
        let store = store(&rt, &dir, true);
        let counter = Arc::new(AtomicU64::new(0));
        group.throughput(Throughput::Elements(concurrency));
        group.bench_function(format!("concurrency_{concurrency}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..concurrency {
                        let store = Arc::clone(&store);
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        tasks.spawn(async move {
                            store
                                .put(&format!("bench/w{n:09}"), vec![0x5a; VALUE_LEN])
                                .await
                        });
                    }
                    while let Some(done) = tasks.join_next().await {
                        done.unwrap().unwrap();
                    }
                });
            });
        });
        store.close();
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = point_get, put
}
criterion_main!(benches);
