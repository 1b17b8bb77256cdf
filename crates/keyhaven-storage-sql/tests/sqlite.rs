use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyhaven_storage::{Op, StorageError, Store, Transaction, TxOutcome, conformance};
use keyhaven_storage_sql::{ConnectionRole, SqliteOptions, SqliteStore};

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyhaven.db");
    (dir, path)
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default()).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms() {
    let (_dir, path) = temp_db();
    conformance::exercise(Arc::new(open(&path))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms_with_reads_on_the_blocking_pool() {
    let (_dir, path) = temp_db();
    let mut options = SqliteOptions::default();
    options.inline_point_reads = false;
    options.read_connections = 1;
    options.max_batch = 1;
    conformance::exercise(Arc::new(SqliteStore::open(&path, options).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_reopen() {
    let (_dir, path) = temp_db();
    {
        let store = open(&path);
        store.put("a", b"1".to_vec()).await.unwrap();
        store.put("b/c", vec![0, 255]).await.unwrap();
        store.put("gone", b"x".to_vec()).await.unwrap();
        store.delete("gone").await.unwrap();
        let tx = Transaction {
            conditions: vec![],
            ops: vec![Op::Put {
                key: "t".into(),
                value: Vec::new(),
            }],
        };
        assert_eq!(store.transact(tx).await.unwrap(), TxOutcome::Committed);
    }
    let store = open(&path);
    assert_eq!(store.get("a").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get("b/c").await.unwrap(), Some(vec![0, 255]));
    assert_eq!(store.get("gone").await.unwrap(), None);
    assert_eq!(store.get("t").await.unwrap(), Some(Vec::new()));
    assert_eq!(
        store.list_page("", None, 10).await.unwrap(),
        ["a", "b/", "t"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_connections_run_wal_and_synchronous_full() {
    let (_dir, path) = temp_db();
    let mut options = SqliteOptions::default();
    options.read_connections = 3;
    let store = SqliteStore::open(&path, options).unwrap();
    // Use the readers once so that they are warm, then inspect every connection.
    store.put("k", b"v".to_vec()).await.unwrap();
    assert_eq!(store.get("k").await.unwrap(), Some(b"v".to_vec()));
    let settings = store.connection_settings().await.unwrap();
    assert_eq!(settings.len(), 4, "{settings:?}");
    assert_eq!(settings[0].role, ConnectionRole::Writer);
    assert!(!settings[0].query_only);
    for s in &settings {
        assert_eq!(s.journal_mode, "wal", "{s:?}");
        assert_eq!(s.synchronous, 2, "synchronous=FULL on {s:?}");
        assert!(s.foreign_keys, "{s:?}");
        assert_eq!(s.busy_timeout_ms, 5000, "{s:?}");
        assert_eq!(
            s.schema_version,
            SqliteStore::SCHEMA_VERSION as i64,
            "{s:?}"
        );
    }
    for s in &settings[1..] {
        assert_eq!(s.role, ConnectionRole::Reader);
        assert!(s.query_only, "{s:?}");
    }
    // The pool still works after the inspection.
    assert_eq!(store.get("k").await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn refuses_a_schema_newer_than_the_code() {
    let (_dir, path) = temp_db();
    open(&path).close();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(StorageError::SchemaTooNew {
            found: 99,
            supported,
        }) => {
            assert_eq!(supported, SqliteStore::SCHEMA_VERSION);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let message = SqliteStore::open(&path, SqliteOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("99") && message.contains("newer"),
        "{message}"
    );
}

#[tokio::test]
async fn refuses_a_foreign_sqlite_database() {
    let (_dir, path) = temp_db();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE other (x)").unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(StorageError::Corrupt { detail }) => {
            assert!(detail.contains("not a keyhaven"), "{detail}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn refuses_a_file_that_is_not_sqlite() {
    let (_dir, path) = temp_db();
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(StorageError::Corrupt { .. }) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn files_are_owner_only() {
    let (_dir, path) = temp_db();
    let store = open(&path);
    store.put("k", b"v".to_vec()).await.unwrap();
    assert_eq!(mode(&path), 0o600);
    for suffix in ["-wal", "-shm"] {
        let file = companion(&path, suffix);
        assert!(file.exists(), "{} exists while open", file.display());
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[tokio::test]
async fn refuses_a_group_or_world_writable_file() {
    let (_dir, path) = temp_db();
    open(&path).close();
    for bad in [0o620, 0o602, 0o666] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
        match SqliteStore::open(&path, SqliteOptions::default()) {
            Err(StorageError::InsecurePermissions { mode, .. }) => assert_eq!(mode, bad),
            other => panic!("expected InsecurePermissions for {bad:o}, got {other:?}"),
        }
    }
    // Group-readable is allowed (with a warning).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    SqliteStore::open(&path, SqliteOptions::default())
        .unwrap()
        .close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_concurrent_writes_survive_reopen() {
    let (_dir, path) = temp_db();
    let store = Arc::new(open(&path));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for i in 0..10 {
                let key = format!("w/{t:02}/{i}");
                store.put(&key, key.clone().into_bytes()).await.unwrap();
            }
            let created = store
                .compare_and_swap(&format!("cas/{t:02}"), None, Some(vec![1]))
                .await;
            assert!(created.unwrap());
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    // 64 writers waiting on fsyncs share commits.
    let stats = store.write_stats();
    assert_eq!(stats.requests, 64 * 11, "{stats:?}");
    assert!(
        stats.batches < stats.requests,
        "no group commit happened: {stats:?}"
    );
    // Drop without an explicit close: Drop must finish and stop cleanly too.
    drop(Arc::try_unwrap(store).expect("sole owner"));
    let store = open(&path);
    for t in 0..64 {
        for i in 0..10 {
            let key = format!("w/{t:02}/{i}");
            assert_eq!(store.get(&key).await.unwrap(), Some(key.into_bytes()));
        }
        assert_eq!(
            store.get(&format!("cas/{t:02}")).await.unwrap(),
            Some(vec![1])
        );
    }
    assert_eq!(store.list_page("w/", None, 100).await.unwrap().len(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_finishes_queued_writes_then_refuses_calls() {
    let (_dir, path) = temp_db();
    let store = Arc::new(open(&path));
    // Queue writes, then close while they may still be in flight.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let store = Arc::clone(&store);
        tasks.spawn(async move { store.put(&format!("q/{i:02}"), vec![7]).await });
    }
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    tokio::task::yield_now().await;
    store.close();
    let mut i = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(()) => acknowledged.push(i),
            Err(StorageError::Closed) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
        i += 1;
    }
    assert_eq!(acknowledged.len() + refused, 32);
    assert!(matches!(store.get("q/00").await, Err(StorageError::Closed)));
    assert!(matches!(
        store.put("x", vec![]).await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        store.list_page("", None, 1).await,
        Err(StorageError::Closed)
    ));
    assert!(matches!(
        store.transact(Transaction::default()).await,
        Err(StorageError::Closed)
    ));
    store.close(); // idempotent
    drop(store);
    let reopened = open(&path);
    let names = reopened.list_page("q/", None, 100).await.unwrap();
    assert_eq!(
        names.len(),
        acknowledged.len(),
        "every acknowledged write, and only those"
    );
}

#[tokio::test]
async fn values_are_stored_verbatim_and_never_shown_by_debug() {
    // The store writes exactly the bytes it is given: a planted marker is found in
    // the file only as stored, and the key is stored as given (non-secret).
    let (_dir, path) = temp_db();
    let store = open(&path);
    store
        .put("planted", b"opaque-marker-4b1d".to_vec())
        .await
        .unwrap();
    store.close();
    let bytes = std::fs::read(&path).unwrap();
    let wal = std::fs::read(companion(&path, "-wal")).unwrap_or_default();
    let found = |hay: &[u8]| hay.windows(18).any(|w| w == b"opaque-marker-4b1d");
    assert!(
        found(&bytes) || found(&wal),
        "the value is stored verbatim (the barrier encrypts)"
    );
    let debug = format!("{store:?}");
    assert!(!debug.contains("opaque-marker"), "{debug}");
}

#[tokio::test]
async fn a_database_in_use_is_refused_until_closed() {
    let (_dir, path) = temp_db();
    let first = open(&path);
    first.put("k", b"v".to_vec()).await.unwrap();
    match SqliteStore::open(&path, SqliteOptions::default()) {
        Err(err @ StorageError::InUse { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains("in use by another keyhaven process"),
                "{text}"
            );
            assert!(text.contains("keyhaven.db"), "{text}");
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(
        first.get("k").await.unwrap().unwrap(),
        b"v",
        "first store unharmed"
    );
    assert_eq!(mode(&companion(&path, "-lock")), 0o600);
    first.close();
    let second = open(&path);
    assert_eq!(second.get("k").await.unwrap().unwrap(), b"v");
}

/// Point reads are served from the read cache; a read issued after a write was
/// acknowledged must see that write, even while other readers refill the cache with
/// values they read while the write was committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_reads_see_every_acknowledged_write() {
    let (_dir, path) = temp_db();
    let store = Arc::new(open(&path));
    let keys: Vec<String> = (0..4).map(|i| format!("hot/{i}")).collect();
    for key in &keys {
        store.put(key, 0u32.to_be_bytes().to_vec()).await.unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let value = |bytes: Vec<u8>| u32::from_be_bytes(bytes.try_into().unwrap());
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (store, keys, stop) = (Arc::clone(&store), keys.clone(), Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            // Values only grow: a reader never sees one go back.
            let mut seen = vec![0u32; keys.len()];
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, key) in keys.iter().enumerate() {
                    let v = value(store.get(key).await.unwrap().unwrap());
                    assert!(v >= seen[i], "{key} went back from {} to {v}", seen[i]);
                    seen[i] = v;
                    reads += 1;
                }
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    let mut writers = Vec::new();
    for key in keys.clone() {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            for n in 1..=200u32 {
                store.put(&key, n.to_be_bytes().to_vec()).await.unwrap();
                let got = value(store.get(&key).await.unwrap().unwrap());
                assert_eq!(got, n, "{key}: read after an acknowledged write");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    // Deletes are seen too.
    store.delete(&keys[0]).await.unwrap();
    assert_eq!(store.get(&keys[0]).await.unwrap(), None);
}
