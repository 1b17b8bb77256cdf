//! The KV v2 engine, driven through `kv::factory` on a MemStore with a manual clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use keyhaven_engine::clock::rfc3339;
use keyhaven_engine::{
    Backend, BackendContext, Clock, EngineError, ManualClock, Operation, kv, route,
};
use keyhaven_storage::{MAX_LIST_PAGE, MemStore, StorageError, Store, Transaction, TxOutcome};
use serde_json::{Map, Value, json};

use Operation::{Create, Delete, List, Patch, Read, Update};

/// A store that counts calls and can make every transaction lose, or call itself
/// read-only as a standby's view does.
#[derive(Debug, Default)]
struct Probe {
    inner: MemStore,
    gets: AtomicUsize,
    lists: AtomicUsize,
    transactions: AtomicUsize,
    always_conflict: bool,
    read_only: bool,
}

#[async_trait]
impl Store for Probe {
    fn read_only(&self) -> bool {
        self.read_only
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list_page(prefix, after, limit).await
    }
    async fn transact(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        self.transactions.fetch_add(1, Ordering::SeqCst);
        if self.always_conflict {
            return Ok(TxOutcome::ConditionFailed { index: 0 });
        }
        self.inner.transact(tx).await
    }
}

/// A response as the client sees it: its status when not 200 or 204, its data and
/// warnings. `Debug` shows the data's keys only, as the engine's `Response` does.
struct Answer {
    status: Option<u16>,
    data: Option<Map<String, Value>>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field(
                "data_keys",
                &self.data.as_ref().map(|d| d.keys().collect::<Vec<_>>()),
            )
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl Answer {
    /// Whether the server answers 204 No Content.
    fn is_empty(&self) -> bool {
        self.status.is_none() && self.data.is_none() && self.warnings.is_empty()
    }
}

struct Kv {
    backend: Arc<dyn Backend>,
    store: Arc<Probe>,
    clock: ManualClock,
}

fn start() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789)
}

fn options() -> Map<String, Value> {
    obj(json!({"version": "2"}))
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => panic!("not an object: {other}"),
    }
}

fn mount_on(probe: Probe) -> Kv {
    let store = Arc::new(probe);
    let clock = ManualClock::new(start());
    let ctx = BackendContext {
        storage: store.clone(),
        clock: Arc::new(clock.clone()),
        options: options(),
        outbound: None,
        database: None,
        limits: Default::default(),
    };
    let backend = kv::factory(ctx).unwrap();
    Kv {
        backend,
        store,
        clock,
    }
}

fn mount() -> Kv {
    mount_on(Probe::default())
}

fn keys_of(m: &Map<String, Value>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

fn is_invalid(e: &EngineError) -> bool {
    matches!(e, EngineError::InvalidRequest(_))
}

impl Kv {
    async fn call(
        &self,
        operation: Operation,
        path: &str,
        body: Value,
    ) -> Result<Answer, EngineError> {
        let data = obj(body);
        match route::call(self.backend.as_ref(), operation, path, &data).await {
            Ok(r) => Ok(Answer {
                status: None,
                data: r.data,
                warnings: r.warnings,
            }),
            // What the server answers with 404 and the version's metadata.
            Err(EngineError::VersionGone(data)) => Ok(Answer {
                status: Some(404),
                data: Some(*data),
                warnings: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }

    async fn ok(&self, operation: Operation, path: &str, body: Value) -> Answer {
        match self.call(operation, path, body).await {
            Ok(r) => r,
            Err(e) => panic!("{operation} {path}: {e}"),
        }
    }

    async fn err(&self, operation: Operation, path: &str, body: Value) -> EngineError {
        match self.call(operation, path, body).await {
            Ok(r) => panic!("{operation} {path} succeeded: {r:?}"),
            Err(e) => e,
        }
    }

    /// A successful request's `data` (status 200).
    async fn data(&self, operation: Operation, path: &str, body: Value) -> Map<String, Value> {
        let r = self.ok(operation, path, body).await;
        assert_eq!(r.status, None, "{operation} {path}");
        r.data
            .unwrap_or_else(|| panic!("{operation} {path}: no data"))
    }

    async fn put(&self, path: &str, data: Value) -> Map<String, Value> {
        self.data(Update, &format!("data/{path}"), json!({"data": data}))
            .await
    }

    async fn get(&self, path: &str) -> Map<String, Value> {
        self.data(Read, &format!("data/{path}"), Value::Null).await
    }

    async fn meta(&self, path: &str) -> Map<String, Value> {
        self.data(Read, &format!("metadata/{path}"), Value::Null)
            .await
    }

    /// Everything in storage, by key.
    async fn dump(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut folders = vec![String::new()];
        while let Some(prefix) = folders.pop() {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .inner
                    .list_page(&prefix, after.as_deref(), 1000)
                    .await
                    .unwrap();
                for name in &page {
                    let full = format!("{prefix}{name}");
                    if name.ends_with('/') {
                        folders.push(full);
                    } else {
                        let value = self.store.inner.get(&full).await.unwrap().unwrap();
                        out.insert(full, value);
                    }
                }
                if page.len() < 1000 {
                    break;
                }
                after = page.last().cloned();
            }
        }
        out
    }

    fn now(&self) -> String {
        rfc3339(self.clock.now())
    }
}

fn version_numbers(meta: &Map<String, Value>) -> Vec<u64> {
    let mut v: Vec<u64> = meta["versions"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------- factory and routing

#[tokio::test]
async fn factory_builds_the_version_the_options_name() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start()));
    for (options, version) in [
        (json!({"version": "2"}), Some(2)),
        (json!({"version": 2}), Some(2)),
        (json!({"version": "1"}), Some(1)),
        (json!({"version": 1}), Some(1)),
        (json!({"version": ""}), Some(1)),
        (json!({}), Some(1)),
        (json!({"version": "3"}), None),
        (json!({"version": true}), None),
    ] {
        let ctx = BackendContext {
            storage: store.clone(),
            clock: clock.clone(),
            options: obj(options.clone()),
            outbound: None,
            database: None,
            limits: Default::default(),
        };
        match (kv::factory(ctx), version) {
            (Ok(backend), Some(v)) => {
                // Version 2 serves `data/…`; version 1 has one route, the path itself.
                let has_data = backend.routes().iter().any(|r| r.pattern == "data/{path*}");
                assert_eq!(has_data, v == 2, "{options}");
            }
            (Err(e), None) => {
                assert!(
                    is_invalid(&e) && e.to_string().contains("kv version"),
                    "{e}"
                );
            }
            (Ok(_), None) => panic!("{options} was accepted"),
            (Err(e), Some(_)) => panic!("{options} was refused: {e}"),
        }
    }
}

#[tokio::test]
async fn unknown_paths_and_operations_are_refused() {
    let kv = mount();
    assert!(matches!(
        kv.err(Read, "nope/x", Value::Null).await,
        EngineError::NotFound(_)
    ));
    assert!(matches!(
        kv.err(Read, "", Value::Null).await,
        EngineError::NotFound(_)
    ));
    assert!(matches!(
        kv.err(List, "data/x", Value::Null).await,
        EngineError::UnsupportedOperation
    ));
    assert!(matches!(
        kv.err(Delete, "config", Value::Null).await,
        EngineError::UnsupportedOperation
    ));
    assert!(matches!(
        kv.err(Read, "destroy/x", Value::Null).await,
        EngineError::UnsupportedOperation
    ));
    assert!(matches!(
        kv.err(Patch, "subkeys/x", Value::Null).await,
        EngineError::UnsupportedOperation
    ));
}

#[tokio::test]
async fn bad_paths_are_refused_and_nothing_is_written() {
    let kv = mount();
    let long = "x".repeat(kv::MAX_PATH_LEN + 1);
    for path in [
        "data/",
        "data/a//b",
        "data//a",
        "data/a/",
        "data/../x",
        "data/a/../b",
        &format!("data/{long}"),
    ] {
        let e = kv.err(Update, path, json!({"data": {"k": "v"}})).await;
        assert!(is_invalid(&e), "{path}: {e}");
    }
    for path in [
        "metadata/a//b",
        "delete/..",
        "subkeys/a//",
        "undelete/",
        "destroy/a/../b",
    ] {
        let op = if path.starts_with("subkeys") {
            Read
        } else {
            Update
        };
        let e = kv
            .err(op, path, json!({"versions": [1], "max_versions": 3}))
            .await;
        assert!(is_invalid(&e), "{path}: {e}");
    }
    assert!(is_invalid(&kv.err(List, "metadata/a//", Value::Null).await));
    assert!(kv.dump().await.is_empty());
    // The longest allowed path works.
    let longest = "y".repeat(kv::MAX_PATH_LEN);
    kv.put(&longest, json!({"k": "v"})).await;
    assert_eq!(kv.get(&longest).await["data"], json!({"k": "v"}));
}

// ---------------------------------------------------------------- data

#[tokio::test]
async fn write_and_read_have_vaults_shapes() {
    let kv = mount();
    let w = kv.put("app/db", json!({"foo": "bar", "zip": "zap"})).await;
    assert_eq!(
        keys_of(&w),
        [
            "created_time",
            "custom_metadata",
            "deletion_time",
            "destroyed",
            "version"
        ]
    );
    assert_eq!(w["created_time"], json!(kv.now()));
    assert_eq!(w["created_time"], json!("2027-01-15T08:00:00.123456789Z"));
    assert_eq!(w["custom_metadata"], Value::Null);
    assert_eq!(w["deletion_time"], json!(""));
    assert_eq!(w["destroyed"], json!(false));
    assert_eq!(w["version"], json!(1));

    let r = kv.get("app/db").await;
    assert_eq!(keys_of(&r), ["data", "metadata"]);
    assert_eq!(r["data"], json!({"foo": "bar", "zip": "zap"}));
    assert_eq!(Value::Object(w), r["metadata"]);
}

#[tokio::test]
async fn each_write_adds_a_version_and_old_versions_stay_readable() {
    let kv = mount();
    for i in 1..=3 {
        kv.clock.advance(Duration::from_secs(1));
        let w = kv.put("k", json!({"n": i})).await;
        assert_eq!(w["version"], json!(i));
    }
    assert_eq!(kv.get("k").await["data"], json!({"n": 3}));
    let v1 = kv.data(Read, "data/k", json!({"version": "1"})).await;
    assert_eq!(v1["data"], json!({"n": 1}));
    assert_eq!(v1["metadata"]["version"], json!(1));
    let v2 = kv.data(Read, "data/k", json!({"version": 2})).await;
    assert_eq!(v2["data"], json!({"n": 2}));
    // version 0 (and negative) means the latest, as in Vault.
    assert_eq!(
        kv.data(Read, "data/k", json!({"version": 0})).await["data"],
        json!({"n": 3})
    );
    assert!(matches!(
        kv.err(Read, "data/k", json!({"version": 9})).await,
        EngineError::NotFound(_)
    ));
    assert!(is_invalid(
        &kv.err(Read, "data/k", json!({"version": "two"})).await
    ));
    assert!(matches!(
        kv.err(Read, "data/never", Value::Null).await,
        EngineError::NotFound(_)
    ));
    // Create behaves as Update.
    let w = kv.data(Create, "data/k", json!({"data": {"n": 4}})).await;
    assert_eq!(w["version"], json!(4));
}

/// Without the metadata cache: on a standby (whose view of storage is read-only, and
/// which hears of no KV change), as on the active before a path's record is kept.
#[tokio::test]
async fn reads_cost_two_storage_gets() {
    let kv = mount_on(Probe {
        read_only: true,
        ..Probe::default()
    });
    kv.put("a", json!({"x": 1})).await;
    let before = kv.store.gets.load(Ordering::SeqCst);
    kv.get("a").await;
    assert_eq!(kv.store.gets.load(Ordering::SeqCst) - before, 2);
    let before = kv.store.gets.load(Ordering::SeqCst);
    kv.data(Read, "subkeys/a", Value::Null).await;
    assert_eq!(kv.store.gets.load(Ordering::SeqCst) - before, 2);
    let before = kv.store.gets.load(Ordering::SeqCst);
    kv.meta("a").await;
    assert_eq!(kv.store.gets.load(Ordering::SeqCst) - before, 1);
}

/// On the active, a path's decoded metadata record is kept once read, until a change
/// of the path: later reads cost the payload only, and every change is seen at once.
#[tokio::test]
async fn the_active_keeps_decoded_metadata_records_until_a_change() {
    let kv = mount();
    let gets = |kv: &Kv| kv.store.gets.load(Ordering::SeqCst);
    kv.put("a", json!({"x": 1})).await;
    let before = gets(&kv);
    assert_eq!(kv.get("a").await["data"], json!({"x": 1}));
    assert_eq!(
        gets(&kv) - before,
        2,
        "the first read after a write reads both"
    );
    let before = gets(&kv);
    assert_eq!(kv.get("a").await["data"], json!({"x": 1}));
    kv.data(Read, "subkeys/a", Value::Null).await;
    assert_eq!(gets(&kv) - before, 2, "later reads read the payload only");
    let before = gets(&kv);
    assert_eq!(kv.meta("a").await["current_version"], json!(1));
    assert_eq!(gets(&kv) - before, 0, "a metadata read reads nothing");
    // Every kind of change is seen by the next read.
    kv.put("a", json!({"x": 2})).await;
    assert_eq!(kv.get("a").await["data"], json!({"x": 2}));
    assert_eq!(kv.get("a").await["metadata"]["version"], json!(2));
    kv.ok(Update, "delete/a", json!({"versions": [2]})).await;
    assert_ne!(
        kv.meta("a").await["versions"]["2"]["deletion_time"],
        json!("")
    );
    kv.ok(Update, "undelete/a", json!({"versions": [2]})).await;
    assert_eq!(kv.get("a").await["data"], json!({"x": 2}));
    kv.ok(
        Update,
        "metadata/a",
        json!({"custom_metadata": {"team": "x"}}),
    )
    .await;
    assert_eq!(kv.meta("a").await["custom_metadata"], json!({"team": "x"}));
    kv.ok(Update, "destroy/a", json!({"versions": [1]})).await;
    assert_eq!(
        kv.meta("a").await["versions"]["1"]["destroyed"],
        json!(true)
    );
    kv.ok(Delete, "metadata/a", Value::Null).await;
    assert!(matches!(
        kv.err(Read, "data/a", Value::Null).await,
        EngineError::NotFound(_)
    ));
}

#[tokio::test]
async fn bad_write_input_is_refused_and_nothing_is_written() {
    let kv = mount();
    kv.put("k", json!({"secret": "s3cr3t-value"})).await;
    let before = kv.dump().await;
    let cases = [
        ("data/k", json!({})),
        ("data/k", json!({"data": null})),
        ("data/k", json!({"data": "s3cr3t-value"})),
        ("data/k", json!({"data": ["s3cr3t-value"]})),
        (
            "data/k",
            json!({"data": {"a": "s3cr3t-value"}, "options": "s3cr3t-value"}),
        ),
        (
            "data/k",
            json!({"data": {"a": "s3cr3t-value"}, "options": {"cas": "s3cr3t-value"}}),
        ),
        (
            "data/k",
            json!({"data": {"a": "s3cr3t-value"}, "options": {"cas": -1}}),
        ),
        (
            "data/k",
            json!({"data": {"a": "s3cr3t-value"}, "options": {"cas": [1]}}),
        ),
        ("data/new", json!({"options": {"cas": 0}})),
    ];
    for (path, body) in cases {
        for op in [Update, Create, Patch] {
            let e = kv.err(op, path, body.clone()).await;
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("s3cr3t"), "{shown}");
            if op == Patch && path == "data/new" {
                continue;
            }
            assert!(is_invalid(&e), "{op} {body}: {e}");
        }
    }
    assert_eq!(kv.dump().await, before);
    let e = kv.err(Update, "data/k", json!({"options": {}})).await;
    assert_eq!(e.to_string(), "no data provided");
    let e = kv
        .err(
            Update,
            "data/k",
            json!({"data": {}, "options": {"cas": "x"}}),
        )
        .await;
    assert_eq!(e.to_string(), "error parsing check-and-set parameter");
}

#[tokio::test]
async fn unknown_top_level_fields_are_ignored_with_a_warning() {
    let kv = mount();
    let r = kv
        .ok(
            Update,
            "data/k",
            json!({"data": {"a": 1}, "options": {}, "extra": 1, "zzz": true}),
        )
        .await;
    assert_eq!(r.data.as_ref().unwrap()["version"], json!(1));
    assert_eq!(
        r.warnings,
        ["Endpoint ignored these unrecognized parameters: [extra zzz]"]
    );
    let r = kv
        .ok(Update, "data/k", json!({"data": {"a": 2}, "options": {}}))
        .await;
    assert!(r.warnings.is_empty());
}

#[tokio::test]
async fn check_and_set() {
    let kv = mount();
    // cas 0: only when the key does not exist.
    let w = kv
        .data(
            Update,
            "data/c",
            json!({"data": {"v": 1}, "options": {"cas": 0}}),
        )
        .await;
    assert_eq!(w["version"], json!(1));
    let e = kv
        .err(
            Update,
            "data/c",
            json!({"data": {"v": 2}, "options": {"cas": 0}}),
        )
        .await;
    assert!(
        matches!(&e, EngineError::PreconditionFailed(m) if m == "check-and-set parameter did not match the current version")
    );
    // Matching cas, as a number and as a string.
    kv.data(
        Update,
        "data/c",
        json!({"data": {"v": 2}, "options": {"cas": 1}}),
    )
    .await;
    kv.data(
        Update,
        "data/c",
        json!({"data": {"v": 3}, "options": {"cas": "2"}}),
    )
    .await;
    // Stale cas.
    let before = kv.dump().await;
    let e = kv
        .err(
            Update,
            "data/c",
            json!({"data": {"v": 4}, "options": {"cas": 2}}),
        )
        .await;
    assert!(matches!(e, EngineError::PreconditionFailed(_)));
    let e = kv
        .err(
            Update,
            "data/c",
            json!({"data": {"v": 4}, "options": {"cas": 7}}),
        )
        .await;
    assert!(matches!(e, EngineError::PreconditionFailed(_)));
    assert_eq!(kv.dump().await, before);
    assert_eq!(kv.get("c").await["data"], json!({"v": 3}));
    // "options": {} and null options are fine without cas_required.
    kv.data(Update, "data/c", json!({"data": {"v": 4}, "options": null}))
        .await;
}

#[tokio::test]
async fn cas_required_on_the_mount() {
    let kv = mount();
    kv.ok(Update, "config", json!({"cas_required": "true"}))
        .await;
    let e = kv
        .err(Update, "data/m", json!({"data": {"v": 1}, "options": {}}))
        .await;
    assert!(is_invalid(&e));
    assert_eq!(
        e.to_string(),
        "check-and-set parameter required for this call"
    );
    assert!(kv.dump().await.keys().all(|k| k == "config"));
    kv.data(
        Update,
        "data/m",
        json!({"data": {"v": 1}, "options": {"cas": 0}}),
    )
    .await;
    let e = kv.err(Patch, "data/m", json!({"data": {"v": 2}})).await;
    assert_eq!(
        e.to_string(),
        "check-and-set parameter required for this call"
    );
    kv.data(
        Patch,
        "data/m",
        json!({"data": {"v": 2}, "options": {"cas": 1}}),
    )
    .await;
    // A key cannot opt out of what the mount mandates; it gets a warning.
    let r = kv
        .ok(Update, "metadata/m", json!({"cas_required": false}))
        .await;
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        kv.err(Update, "data/m", json!({"data": {}}))
            .await
            .to_string()
            .contains("required")
    );
}

#[tokio::test]
async fn cas_required_on_a_key() {
    let kv = mount();
    kv.put("k", json!({"v": 1})).await;
    kv.put("other", json!({"v": 1})).await;
    assert!(
        kv.ok(Update, "metadata/k", json!({"cas_required": true}))
            .await
            .is_empty()
    );
    assert!(kv.meta("k").await["cas_required"] == json!(true));
    let e = kv.err(Update, "data/k", json!({"data": {"v": 2}})).await;
    assert_eq!(
        e.to_string(),
        "check-and-set parameter required for this call"
    );
    kv.data(
        Update,
        "data/k",
        json!({"data": {"v": 2}, "options": {"cas": 1}}),
    )
    .await;
    // Other keys are unaffected.
    kv.put("other", json!({"v": 2})).await;
    // cas_required set on metadata before the first write.
    kv.ok(Update, "metadata/fresh", json!({"cas_required": "1"}))
        .await;
    assert!(is_invalid(
        &kv.err(Update, "data/fresh", json!({"data": {}})).await
    ));
    kv.data(
        Update,
        "data/fresh",
        json!({"data": {"a": 1}, "options": {"cas": 0}}),
    )
    .await;
}

#[tokio::test]
async fn patch_merges_onto_the_latest_version() {
    let kv = mount();
    kv.put(
        "p",
        json!({"user": "u", "pass": "p", "nested": {"a": 1, "b": 2}, "list": [1, 2]}),
    )
    .await;
    let w = kv
        .data(Patch, "data/p", json!({"data": {"pass": null, "new": "n", "nested": {"b": null, "c": 3}, "list": [3]}, "options": {}}))
        .await;
    assert_eq!(w["version"], json!(2));
    assert_eq!(
        keys_of(&w),
        [
            "created_time",
            "custom_metadata",
            "deletion_time",
            "destroyed",
            "version"
        ]
    );
    assert_eq!(
        kv.get("p").await["data"],
        json!({"user": "u", "new": "n", "nested": {"a": 1, "c": 3}, "list": [3]})
    );
    // The patched version is a new one; the old stays.
    assert_eq!(
        kv.data(Read, "data/p", json!({"version": 1})).await["data"]["pass"],
        json!("p")
    );
    // cas is honoured.
    let e = kv
        .err(
            Patch,
            "data/p",
            json!({"data": {"x": 1}, "options": {"cas": 1}}),
        )
        .await;
    assert!(matches!(e, EngineError::PreconditionFailed(_)));
    kv.data(
        Patch,
        "data/p",
        json!({"data": {"x": 1}, "options": {"cas": 2}}),
    )
    .await;
    // Nothing to patch.
    assert!(matches!(
        kv.err(Patch, "data/none", json!({"data": {"x": 1}})).await,
        EngineError::NotFound(_)
    ));
    assert_eq!(
        kv.err(Patch, "data/p", json!({})).await.to_string(),
        "no data provided"
    );
    // Latest version deleted: 404 with its metadata, nothing written.
    kv.ok(Delete, "data/p", Value::Null).await;
    let before = kv.dump().await;
    let r = kv.ok(Patch, "data/p", json!({"data": {"x": 2}})).await;
    assert_eq!(r.status, Some(404));
    let d = r.data.unwrap();
    assert_eq!(d["version"], json!(3));
    assert_eq!(d["deletion_time"], json!(kv.now()));
    assert_eq!(kv.dump().await, before);
}

#[tokio::test]
async fn versions_beyond_max_versions_are_pruned() {
    let kv = mount();
    for i in 1..=12 {
        kv.put("m", json!({"i": i})).await;
    }
    let meta = kv.meta("m").await;
    assert_eq!(version_numbers(&meta), (3..=12).collect::<Vec<_>>());
    assert_eq!(meta["oldest_version"], json!(3));
    assert_eq!(meta["current_version"], json!(12));
    let payloads = kv
        .dump()
        .await
        .keys()
        .filter(|k| k.starts_with("versions/"))
        .count();
    assert_eq!(payloads, 10);
    assert!(matches!(
        kv.err(Read, "data/m", json!({"version": 2})).await,
        EngineError::NotFound(_)
    ));
    assert_eq!(
        kv.data(Read, "data/m", json!({"version": 3})).await["data"],
        json!({"i": 3})
    );

    // The key's own max_versions wins; lowering it prunes on the next write.
    kv.ok(Update, "metadata/m", json!({"max_versions": "3"}))
        .await;
    assert_eq!(version_numbers(&kv.meta("m").await).len(), 10);
    kv.put("m", json!({"i": 13})).await;
    let meta = kv.meta("m").await;
    assert_eq!(version_numbers(&meta), vec![11, 12, 13]);
    assert_eq!(meta["oldest_version"], json!(11));
    assert_eq!(meta["max_versions"], json!(3));
    let payloads = kv
        .dump()
        .await
        .keys()
        .filter(|k| k.starts_with("versions/"))
        .count();
    assert_eq!(payloads, 3);

    // The mount's applies to keys without their own.
    kv.ok(Update, "config", json!({"max_versions": 2})).await;
    for i in 1..=5 {
        kv.put("n", json!({"i": i})).await;
    }
    assert_eq!(version_numbers(&kv.meta("n").await), vec![4, 5]);
    // ... but not to keys with their own.
    kv.put("m", json!({"i": 14})).await;
    assert_eq!(version_numbers(&kv.meta("m").await), vec![12, 13, 14]);
}

// ---------------------------------------------------------------- delete, undelete, destroy

#[tokio::test]
async fn delete_undelete_destroy_interplay() {
    let kv = mount();
    kv.put("d", json!({"v": 1})).await;
    kv.put("d", json!({"v": 2})).await;
    kv.put("d", json!({"v": 3})).await;

    // Soft-delete the latest.
    kv.clock.advance(Duration::from_secs(5));
    let deleted_at = kv.now();
    assert!(kv.ok(Delete, "data/d", Value::Null).await.is_empty());
    let r = kv.ok(Read, "data/d", Value::Null).await;
    assert_eq!(r.status, Some(404));
    let d = r.data.unwrap();
    assert_eq!(keys_of(&d), ["data", "metadata"]);
    assert_eq!(d["data"], Value::Null);
    assert_eq!(d["metadata"]["deletion_time"], json!(deleted_at));
    assert_eq!(d["metadata"]["destroyed"], json!(false));
    assert_eq!(d["metadata"]["version"], json!(3));
    // Deleting again changes nothing.
    kv.clock.advance(Duration::from_secs(5));
    let before = kv.dump().await;
    kv.ok(Delete, "data/d", Value::Null).await;
    assert_eq!(kv.dump().await, before);
    // Older versions are still there.
    assert_eq!(
        kv.data(Read, "data/d", json!({"version": 2})).await["data"],
        json!({"v": 2})
    );

    // Undelete (versions as strings, as `bao kv undelete` sends them).
    assert!(
        kv.ok(Update, "undelete/d", json!({"versions": ["3"]}))
            .await
            .is_empty()
    );
    let r = kv.get("d").await;
    assert_eq!(r["data"], json!({"v": 3}));
    assert_eq!(r["metadata"]["deletion_time"], json!(""));

    // Delete versions 1 and 2 by number.
    kv.ok(Update, "delete/d", json!({"versions": [1, 2, 99]}))
        .await;
    for v in [1, 2] {
        assert_eq!(
            kv.ok(Read, "data/d", json!({"version": v})).await.status,
            Some(404)
        );
    }

    // Destroy version 1: payload gone for good; undelete cannot bring it back.
    kv.ok(Create, "destroy/d", json!({"versions": "1"})).await;
    let r = kv.ok(Read, "data/d", json!({"version": 1})).await;
    assert_eq!(r.status, Some(404));
    let d = r.data.unwrap();
    assert_eq!(d["data"], Value::Null);
    assert_eq!(d["metadata"]["destroyed"], json!(true));
    kv.ok(Update, "undelete/d", json!({"versions": [1, 2]}))
        .await;
    assert_eq!(
        kv.ok(Read, "data/d", json!({"version": 1})).await.status,
        Some(404)
    );
    assert_eq!(
        kv.data(Read, "data/d", json!({"version": 2})).await["data"],
        json!({"v": 2})
    );
    let meta = kv.meta("d").await;
    assert_eq!(meta["versions"]["1"]["destroyed"], json!(true));
    assert_eq!(meta["versions"]["2"]["destroyed"], json!(false));
    assert_eq!(meta["versions"]["2"]["deletion_time"], json!(""));
    let payloads = kv
        .dump()
        .await
        .keys()
        .filter(|k| k.starts_with("versions/"))
        .count();
    assert_eq!(payloads, 2);

    // Destroying the latest: reads 404 with destroyed true; a deleted then destroyed
    // version keeps its deletion time.
    kv.ok(Update, "delete/d", json!({"versions": [3]})).await;
    kv.ok(Update, "destroy/d", json!({"versions": [3]})).await;
    let r = kv.ok(Read, "data/d", Value::Null).await;
    assert_eq!(r.status, Some(404));
    let d = r.data.unwrap();
    assert_eq!(d["metadata"]["destroyed"], json!(true));
    assert_ne!(d["metadata"]["deletion_time"], json!(""));
    // Patch cannot work on a destroyed latest version.
    assert_eq!(
        kv.ok(Patch, "data/d", json!({"data": {"a": 1}}))
            .await
            .status,
        Some(404)
    );
    // A new write works as usual.
    assert_eq!(kv.put("d", json!({"v": 4})).await["version"], json!(4));

    // Unknown keys: 204, nothing written.
    let before = kv.dump().await;
    for path in ["delete/none", "undelete/none", "destroy/none"] {
        assert!(
            kv.ok(Update, path, json!({"versions": [1]}))
                .await
                .is_empty()
        );
    }
    assert!(kv.ok(Delete, "data/none", Value::Null).await.is_empty());
    assert_eq!(kv.dump().await, before);
}

#[tokio::test]
async fn version_lists_are_required_and_checked() {
    let kv = mount();
    kv.put("v", json!({"a": 1})).await;
    let before = kv.dump().await;
    for path in ["delete/v", "undelete/v", "destroy/v"] {
        for body in [
            json!({}),
            json!({"versions": []}),
            json!({"versions": null}),
            json!({"versions": ""}),
        ] {
            let e = kv.err(Update, path, body).await;
            assert_eq!(e.to_string(), "no version number provided", "{path}");
        }
        for body in [
            json!({"versions": ["one"]}),
            json!({"versions": [-1]}),
            json!({"versions": {"a": 1}}),
            json!({"versions": [true]}),
        ] {
            let e = kv.err(Update, path, body.clone()).await;
            assert!(
                is_invalid(&e) && e.to_string().contains("versions"),
                "{path} {body}: {e}"
            );
        }
    }
    assert_eq!(kv.dump().await, before);
}

// ---------------------------------------------------------------- delete_version_after

#[tokio::test]
async fn delete_version_after_follows_the_clock() {
    let kv = mount();
    kv.ok(Update, "config", json!({"delete_version_after": "1m"}))
        .await;
    assert_eq!(
        kv.data(Read, "config", Value::Null).await["delete_version_after"],
        json!("1m0s")
    );
    let w = kv.put("t", json!({"a": 1})).await;
    let expected = rfc3339(kv.clock.now() + Duration::from_secs(60));
    assert_eq!(w["deletion_time"], json!(expected));
    kv.clock.advance(Duration::from_secs(59));
    assert_eq!(kv.get("t").await["data"], json!({"a": 1}));
    kv.clock.advance(Duration::from_secs(1));
    let r = kv.ok(Read, "data/t", Value::Null).await;
    assert_eq!(r.status, Some(404));
    assert_eq!(
        r.data.unwrap()["metadata"]["deletion_time"],
        json!(expected)
    );
    // Subkeys too.
    assert_eq!(
        kv.ok(Read, "subkeys/t", Value::Null).await.status,
        Some(404)
    );

    // Undelete re-arms it from now.
    kv.ok(Update, "undelete/t", json!({"versions": [1]})).await;
    let r = kv.get("t").await;
    assert_eq!(
        r["metadata"]["deletion_time"],
        json!(rfc3339(kv.clock.now() + Duration::from_secs(60)))
    );

    // The key's value applies when smaller; the mount's caps it otherwise.
    kv.ok(Update, "metadata/t", json!({"delete_version_after": "30s"}))
        .await;
    assert_eq!(kv.meta("t").await["delete_version_after"], json!("30s"));
    let w = kv.put("t", json!({"a": 2})).await;
    assert_eq!(
        w["deletion_time"],
        json!(rfc3339(kv.clock.now() + Duration::from_secs(30)))
    );
    kv.ok(Update, "metadata/t", json!({"delete_version_after": 7200}))
        .await;
    let w = kv.put("t", json!({"a": 3})).await;
    assert_eq!(
        w["deletion_time"],
        json!(rfc3339(kv.clock.now() + Duration::from_secs(60)))
    );
    assert_eq!(kv.meta("t").await["delete_version_after"], json!("2h0m0s"));

    // Cleared on the mount: the key's value alone.
    kv.ok(Update, "config", json!({"delete_version_after": "0s"}))
        .await;
    let w = kv.put("t", json!({"a": 4})).await;
    assert_eq!(
        w["deletion_time"],
        json!(rfc3339(kv.clock.now() + Duration::from_secs(7200)))
    );

    // Disabled on the mount: never, whatever the key says.
    kv.ok(Update, "config", json!({"delete_version_after": "-1s"}))
        .await;
    assert_eq!(
        kv.data(Read, "config", Value::Null).await["delete_version_after"],
        json!("-1s")
    );
    let w = kv.put("t", json!({"a": 5})).await;
    assert_eq!(w["deletion_time"], json!(""));
    kv.clock.advance(Duration::from_secs(86_400 * 365));
    assert_eq!(kv.get("t").await["data"], json!({"a": 5}));

    // A version deleted ahead of schedule by data delete.
    kv.ok(Update, "config", json!({"delete_version_after": "1h"}))
        .await;
    kv.put("u", json!({"a": 1})).await;
    kv.ok(Delete, "data/u", Value::Null).await;
    let r = kv.ok(Read, "data/u", Value::Null).await;
    assert_eq!(r.status, Some(404));
    assert_eq!(
        r.data.unwrap()["metadata"]["deletion_time"],
        json!(kv.now())
    );
}

// ---------------------------------------------------------------- config

#[tokio::test]
async fn config_reads_defaults_and_updates() {
    let kv = mount();
    let c = kv.data(Read, "config", Value::Null).await;
    assert_eq!(
        c,
        obj(
            json!({"cas_required": false, "delete_version_after": "0s", "max_versions": 0, "metadata_cas_required": false})
        )
    );
    // No fields: nothing written.
    assert!(kv.ok(Update, "config", json!({})).await.is_empty());
    assert!(kv.dump().await.is_empty());
    kv.ok(
        Create,
        "config",
        json!({"max_versions": "7", "cas_required": true}),
    )
    .await;
    kv.ok(Update, "config", json!({"delete_version_after": "768h"}))
        .await;
    let c = kv.data(Read, "config", Value::Null).await;
    assert_eq!(
        c,
        obj(
            json!({"cas_required": true, "delete_version_after": "768h0m0s", "max_versions": 7, "metadata_cas_required": false})
        )
    );
    // Wrong types: refused, named, nothing written.
    let before = kv.dump().await;
    for (body, name) in [
        (json!({"max_versions": "lots"}), "max_versions"),
        (json!({"max_versions": -1}), "max_versions"),
        (json!({"max_versions": 5_000_000_000u64}), "max_versions"),
        (json!({"cas_required": "maybe"}), "cas_required"),
        (
            json!({"delete_version_after": "5 parsecs"}),
            "delete_version_after",
        ),
        (
            json!({"cas_required": false, "delete_version_after": [1]}),
            "delete_version_after",
        ),
    ] {
        let e = kv.err(Update, "config", body).await;
        assert!(is_invalid(&e) && e.to_string().contains(name), "{e}");
    }
    assert_eq!(kv.dump().await, before);
    let r = kv
        .ok(Update, "config", json!({"max_versions": 3, "bogus": 1}))
        .await;
    assert_eq!(
        r.warnings,
        ["Endpoint ignored these unrecognized parameters: [bogus]"]
    );
}

// ---------------------------------------------------------------- metadata

#[tokio::test]
async fn metadata_read_has_openbaos_shape() {
    let kv = mount();
    let t1 = kv.now();
    kv.put("s", json!({"a": 1})).await;
    kv.clock.advance(Duration::from_secs(3));
    let t2 = kv.now();
    kv.put("s", json!({"a": 2})).await;
    let m = kv.meta("s").await;
    assert_eq!(
        keys_of(&m),
        [
            "cas_required",
            "created_time",
            "current_metadata_version",
            "current_version",
            "custom_metadata",
            "delete_version_after",
            "max_versions",
            "metadata_cas_required",
            "oldest_version",
            "updated_time",
            "versions"
        ]
    );
    assert_eq!(m["cas_required"], json!(false));
    assert_eq!(m["created_time"], json!(t1));
    assert_eq!(m["updated_time"], json!(t2));
    assert_eq!(m["current_metadata_version"], json!(0));
    assert_eq!(m["current_version"], json!(2));
    assert_eq!(m["custom_metadata"], Value::Null);
    assert_eq!(m["delete_version_after"], json!("0s"));
    assert_eq!(m["max_versions"], json!(0));
    assert_eq!(m["oldest_version"], json!(0));
    assert_eq!(
        m["versions"],
        json!({
            "1": {"created_time": t1, "deletion_time": "", "destroyed": false},
            "2": {"created_time": t2, "deletion_time": "", "destroyed": false}
        })
    );
    assert!(matches!(
        kv.err(Read, "metadata/none", Value::Null).await,
        EngineError::NotFound(_)
    ));
}

#[tokio::test]
async fn metadata_write_and_patch() {
    let kv = mount();
    // Writing metadata first creates the key without versions.
    kv.ok(
        Update,
        "metadata/k",
        json!({"max_versions": 5, "custom_metadata": {"owner": "team-a", "n": 1}}),
    )
    .await;
    let m = kv.meta("k").await;
    assert_eq!(m["current_version"], json!(0));
    assert_eq!(m["current_metadata_version"], json!(1));
    assert_eq!(m["versions"], json!({}));
    assert_eq!(m["custom_metadata"], json!({"owner": "team-a", "n": "1"}));
    assert!(matches!(
        kv.err(Read, "data/k", Value::Null).await,
        EngineError::NotFound(_)
    ));
    // Data writes and reads show the custom metadata.
    let w = kv.put("k", json!({"a": 1})).await;
    assert_eq!(w["custom_metadata"], json!({"owner": "team-a", "n": "1"}));
    assert_eq!(
        kv.get("k").await["metadata"]["custom_metadata"],
        json!({"owner": "team-a", "n": "1"})
    );
    // A write replaces custom_metadata and leaves unmentioned settings alone.
    kv.clock.advance(Duration::from_secs(1));
    kv.ok(
        Update,
        "metadata/k",
        json!({"custom_metadata": {"env": "prod"}, "delete_version_after": "1h"}),
    )
    .await;
    let m = kv.meta("k").await;
    assert_eq!(m["custom_metadata"], json!({"env": "prod"}));
    assert_eq!(m["max_versions"], json!(5));
    assert_eq!(m["delete_version_after"], json!("1h0m0s"));
    assert_eq!(m["updated_time"], json!(kv.now()));
    assert_eq!(m["current_metadata_version"], json!(2));
    // Patch merges custom_metadata; null removes an entry.
    kv.ok(
        Patch,
        "metadata/k",
        json!({"custom_metadata": {"env": null, "tier": "1"}, "cas_required": true}),
    )
    .await;
    let m = kv.meta("k").await;
    assert_eq!(m["custom_metadata"], json!({"tier": "1"}));
    assert_eq!(m["cas_required"], json!(true));
    assert_eq!(m["max_versions"], json!(5));
    kv.ok(
        Patch,
        "metadata/k",
        json!({"custom_metadata": {"tier": null}}),
    )
    .await;
    assert_eq!(kv.meta("k").await["custom_metadata"], Value::Null);
    // Patch needs an existing key.
    assert!(matches!(
        kv.err(Patch, "metadata/none", json!({"max_versions": 1}))
            .await,
        EngineError::NotFound(_)
    ));
    // No settings: 204, nothing written.
    let before = kv.dump().await;
    assert!(kv.ok(Update, "metadata/other", json!({})).await.is_empty());
    assert!(kv.ok(Patch, "metadata/k", json!({})).await.is_empty());
    assert_eq!(kv.dump().await, before);
    // Wrong types: refused, named.
    for (body, name) in [
        (json!({"max_versions": "five"}), "max_versions"),
        (json!({"cas_required": "perhaps"}), "cas_required"),
        (
            json!({"delete_version_after": "-5s"}),
            "delete_version_after",
        ),
        (json!({"custom_metadata": ["a"]}), "custom_metadata"),
        (
            json!({"custom_metadata": {"a": {"b": "c"}}}),
            "custom_metadata",
        ),
        (
            json!({"metadata_cas": "x", "max_versions": 1}),
            "metadata_cas",
        ),
    ] {
        for op in [Update, Patch] {
            let e = kv.err(op, "metadata/k", body.clone()).await;
            assert!(
                is_invalid(&e) && e.to_string().contains(name),
                "{op} {body}: {e}"
            );
        }
    }
    assert_eq!(kv.dump().await, before);
}

#[tokio::test]
async fn custom_metadata_limits() {
    let kv = mount();
    kv.put("c", json!({"a": 1})).await;
    let before = kv.dump().await;
    let many: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let long_key = "k".repeat(129);
    let long_value = "hidden-value-".repeat(40);
    for cm in [
        Value::Object(many),
        json!({ long_key.clone(): "v" }),
        json!({"k": long_value.clone()}),
        json!({"": "v"}),
        json!({"k": ""}),
        json!({"k": "line\nbreak"}),
    ] {
        for op in [Update, Patch] {
            let e = kv
                .err(op, "metadata/c", json!({"custom_metadata": cm.clone()}))
                .await;
            assert!(is_invalid(&e), "{e}");
            let text = e.to_string();
            assert!(
                text.starts_with("custom_metadata validation failed"),
                "{text}"
            );
            assert!(!text.contains("hidden-value"), "{text}");
        }
    }
    assert_eq!(kv.dump().await, before);
    // At the limits: accepted.
    let full: Map<String, Value> = (0..64).map(|i| (format!("k{i}"), json!("v"))).collect();
    kv.ok(Update, "metadata/c", json!({"custom_metadata": full}))
        .await;
    kv.ok(
        Update,
        "metadata/c",
        json!({"custom_metadata": { "k".repeat(128): "v".repeat(512) }}),
    )
    .await;
    // A patch may not push the merged map past 64 keys.
    let full: Map<String, Value> = (0..64).map(|i| (format!("k{i}"), json!("v"))).collect();
    kv.ok(Update, "metadata/c", json!({"custom_metadata": full}))
        .await;
    let before = kv.dump().await;
    assert!(is_invalid(
        &kv.err(
            Patch,
            "metadata/c",
            json!({"custom_metadata": {"extra": "v"}})
        )
        .await
    ));
    assert_eq!(kv.dump().await, before);
    kv.ok(
        Patch,
        "metadata/c",
        json!({"custom_metadata": {"k0": null, "extra": "v"}}),
    )
    .await;
}

#[tokio::test]
async fn metadata_check_and_set() {
    let kv = mount();
    let e = kv
        .err(
            Update,
            "metadata/m",
            json!({"max_versions": 1, "metadata_cas": 3}),
        )
        .await;
    assert!(matches!(e, EngineError::PreconditionFailed(_)), "{e}");
    kv.ok(
        Update,
        "metadata/m",
        json!({"max_versions": 1, "metadata_cas": 0, "metadata_cas_required": true}),
    )
    .await;
    let e = kv
        .err(Update, "metadata/m", json!({"max_versions": 2}))
        .await;
    assert_eq!(
        e.to_string(),
        "metadata check-and-set parameter required for this call"
    );
    let e = kv
        .err(
            Patch,
            "metadata/m",
            json!({"max_versions": 2, "metadata_cas": 0}),
        )
        .await;
    assert!(matches!(e, EngineError::PreconditionFailed(_)), "{e}");
    kv.ok(
        Patch,
        "metadata/m",
        json!({"max_versions": 2, "metadata_cas": 1}),
    )
    .await;
    let m = kv.meta("m").await;
    assert_eq!(
        (
            m["max_versions"].clone(),
            m["current_metadata_version"].clone()
        ),
        (json!(2), json!(2))
    );
    // Data writes do not need it and do not bump it.
    kv.put("m", json!({"a": 1})).await;
    assert_eq!(kv.meta("m").await["current_metadata_version"], json!(2));
}

#[tokio::test]
async fn metadata_delete_removes_everything() {
    let kv = mount();
    kv.ok(Update, "config", json!({"max_versions": 4})).await;
    kv.put("gone", json!({"a": 1})).await;
    kv.put("gone", json!({"a": 2})).await;
    kv.ok(Update, "destroy/gone", json!({"versions": [1]}))
        .await;
    kv.put("gone/child", json!({"a": 1})).await;
    kv.put("kept", json!({"a": 1})).await;
    let before = kv.dump().await;
    assert!(kv.ok(Delete, "metadata/gone", Value::Null).await.is_empty());
    assert!(matches!(
        kv.err(Read, "metadata/gone", Value::Null).await,
        EngineError::NotFound(_)
    ));
    assert!(matches!(
        kv.err(Read, "data/gone", Value::Null).await,
        EngineError::NotFound(_)
    ));
    let after = kv.dump().await;
    assert_eq!(
        before.len() - after.len(),
        2,
        "{:?}",
        after.keys().collect::<Vec<_>>()
    );
    assert_eq!(kv.get("gone/child").await["data"], json!({"a": 1}));
    assert_eq!(kv.get("kept").await["data"], json!({"a": 1}));
    // Deleting again is a no-op; writing again starts from version 1.
    assert!(kv.ok(Delete, "metadata/gone", Value::Null).await.is_empty());
    assert_eq!(kv.put("gone", json!({"b": 1})).await["version"], json!(1));
    kv.ok(Delete, "metadata/gone", Value::Null).await;
    kv.ok(Delete, "metadata/gone/child", Value::Null).await;
    kv.ok(Delete, "metadata/kept", Value::Null).await;
    assert_eq!(kv.dump().await.keys().collect::<Vec<_>>(), ["config"]);
}

// ---------------------------------------------------------------- list

#[tokio::test]
async fn list_children_and_folders() {
    let kv = mount();
    assert!(matches!(
        kv.err(List, "metadata", Value::Null).await,
        EngineError::NotFound(_)
    ));
    for p in ["app", "app/db", "app/web/tls", "other", "z/deep/er/still"] {
        kv.put(p, json!({"a": 1})).await;
    }
    for root in ["metadata", "metadata/"] {
        let d = kv.data(List, root, Value::Null).await;
        assert_eq!(d["keys"], json!(["app", "app/", "other", "z/"]), "{root}");
    }
    for p in ["metadata/app", "metadata/app/"] {
        assert_eq!(
            kv.data(List, p, Value::Null).await["keys"],
            json!(["db", "web/"])
        );
    }
    assert_eq!(
        kv.data(List, "metadata/z/deep", Value::Null).await["keys"],
        json!(["er/"])
    );
    assert!(matches!(
        kv.err(List, "metadata/other", Value::Null).await,
        EngineError::NotFound(_)
    ));
    assert!(matches!(
        kv.err(List, "metadata/nope/", Value::Null).await,
        EngineError::NotFound(_)
    ));
    // Metadata-only keys are listed; deleted ones are not.
    kv.ok(Update, "metadata/app/meta-only", json!({"max_versions": 1}))
        .await;
    kv.ok(Delete, "metadata/app/db", Value::Null).await;
    assert_eq!(
        kv.data(List, "metadata/app", Value::Null).await["keys"],
        json!(["meta-only", "web/"])
    );
    // Soft-deleted and destroyed keys are still listed, as in Vault.
    kv.ok(Delete, "data/other", Value::Null).await;
    assert!(
        kv.data(List, "metadata", Value::Null).await["keys"]
            .as_array()
            .unwrap()
            .contains(&json!("other"))
    );
}

async fn list_all(kv: &Kv, path: &str, limit: usize) -> (Vec<String>, usize) {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    let mut calls = 0;
    loop {
        let mut body = json!({"limit": limit.to_string()});
        if let Some(a) = &after {
            body["after"] = json!(a);
        }
        calls += 1;
        match kv.call(List, path, body).await {
            Ok(r) => {
                let keys: Vec<String> =
                    serde_json::from_value(r.data.unwrap()["keys"].clone()).unwrap();
                assert!(keys.len() <= limit);
                after = keys.last().cloned();
                let done = keys.len() < limit;
                all.extend(keys);
                if done {
                    break;
                }
            }
            Err(EngineError::NotFound(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    (all, calls)
}

#[tokio::test]
async fn list_paginates_with_after_and_limit() {
    let kv = mount();
    let mut expected = BTreeSet::new();
    for i in 0..1_200 {
        let name = format!("key-{i:05}");
        kv.put(&format!("many/{name}"), json!({"i": i})).await;
        expected.insert(name);
    }
    for i in 0..30 {
        let folder = format!("folder-{i:03}");
        kv.put(&format!("many/{folder}/leaf"), json!({"i": i}))
            .await;
        expected.insert(format!("{folder}/"));
    }
    let expected: Vec<String> = expected.into_iter().collect();

    // Default: everything, in byte order.
    let d = kv.data(List, "metadata/many/", Value::Null).await;
    let keys: Vec<String> = serde_json::from_value(d["keys"].clone()).unwrap();
    assert_eq!(keys, expected);

    // limit 0 or negative: everything.
    for limit in [json!(0), json!(-1), json!("0")] {
        let d = kv
            .data(List, "metadata/many", json!({"limit": limit}))
            .await;
        assert_eq!(d["keys"].as_array().unwrap().len(), 1_230);
    }

    // Paging by various limits reassembles the whole list.
    for limit in [1, 7, 100, 499, 1_229, 1_230, 5_000] {
        let (all, calls) = list_all(&kv, "metadata/many", limit).await;
        assert_eq!(all, expected, "limit {limit}");
        assert!(calls <= 1_230 / limit + 2);
    }

    // after: strictly after, need not exist.
    let d = kv
        .data(
            List,
            "metadata/many",
            json!({"after": "key-01195", "limit": 3}),
        )
        .await;
    assert_eq!(d["keys"], json!(["key-01196", "key-01197", "key-01198"]));
    let d = kv
        .data(List, "metadata/many", json!({"after": "key-01198x"}))
        .await;
    assert_eq!(d["keys"], json!(["key-01199"]));
    let d = kv
        .data(
            List,
            "metadata/many",
            json!({"after": "folder-028/", "limit": 2}),
        )
        .await;
    assert_eq!(d["keys"], json!(["folder-029/", "key-00000"]));
    assert!(matches!(
        kv.err(List, "metadata/many", json!({"after": "zzz"})).await,
        EngineError::NotFound(_)
    ));
    // Wrong types are refused.
    assert!(is_invalid(
        &kv.err(List, "metadata/many", json!({"limit": "ten"})).await
    ));
    assert!(is_invalid(
        &kv.err(List, "metadata/many", json!({"after": 5})).await
    ));
}

#[tokio::test]
async fn list_spans_several_storage_pages() {
    let kv = mount();
    let total = MAX_LIST_PAGE + 50;
    // Listing reads names only, so placeholder records are enough here.
    for i in 0..total {
        kv.store
            .inner
            .put(&format!("meta/big/k{i:06}"), b"{}".to_vec())
            .await
            .unwrap();
    }
    let before = kv.store.lists.load(Ordering::SeqCst);
    let d = kv.data(List, "metadata/big", Value::Null).await;
    let keys = d["keys"].as_array().unwrap();
    assert_eq!(keys.len(), total);
    assert_eq!(keys[MAX_LIST_PAGE], json!(format!("k{MAX_LIST_PAGE:06}")));
    assert_eq!(kv.store.lists.load(Ordering::SeqCst) - before, 2);
    let d = kv
        .data(
            List,
            "metadata/big",
            json!({"after": "k000010", "limit": MAX_LIST_PAGE + 5}),
        )
        .await;
    let keys = d["keys"].as_array().unwrap();
    assert_eq!(keys.len(), MAX_LIST_PAGE + 5);
    assert_eq!(keys[0], json!("k000011"));
    assert_eq!(
        keys.last().unwrap(),
        &json!(format!("k{:06}", MAX_LIST_PAGE + 15))
    );
}

// ---------------------------------------------------------------- subkeys

#[tokio::test]
async fn subkeys_show_structure_without_values() {
    let kv = mount();
    kv.put(
        "s",
        json!({"foo": "abc", "bar": {"baz": "def", "deep": {"x": 1}}, "empty": {}, "list": [1]}),
    )
    .await;
    kv.put("s", json!({"only": "v2"})).await;
    let d = kv.data(Read, "subkeys/s", json!({"version": 1})).await;
    assert_eq!(keys_of(&d), ["metadata", "subkeys"]);
    assert_eq!(
        d["subkeys"],
        json!({"foo": null, "bar": {"baz": null, "deep": {"x": null}}, "empty": null, "list": null})
    );
    assert_eq!(d["metadata"]["version"], json!(1));
    let d = kv
        .data(Read, "subkeys/s", json!({"version": "1", "depth": "1"}))
        .await;
    assert_eq!(
        d["subkeys"],
        json!({"foo": null, "bar": null, "empty": null, "list": null})
    );
    let d = kv
        .data(Read, "subkeys/s", json!({"version": 1, "depth": 2}))
        .await;
    assert_eq!(d["subkeys"]["bar"], json!({"baz": null, "deep": null}));
    assert_eq!(
        kv.data(Read, "subkeys/s", Value::Null).await["subkeys"],
        json!({"only": null})
    );
    assert!(is_invalid(
        &kv.err(Read, "subkeys/s", json!({"depth": "deep"})).await
    ));
    assert!(matches!(
        kv.err(Read, "subkeys/none", Value::Null).await,
        EngineError::NotFound(_)
    ));
    assert!(matches!(
        kv.err(Read, "subkeys/s", json!({"version": 7})).await,
        EngineError::NotFound(_)
    ));
    kv.ok(Delete, "data/s", Value::Null).await;
    let r = kv.ok(Read, "subkeys/s", Value::Null).await;
    assert_eq!(r.status, Some(404));
    let d = r.data.unwrap();
    assert_eq!(d["subkeys"], Value::Null);
    assert_eq!(d["metadata"]["version"], json!(2));
}

// ---------------------------------------------------------------- concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_writers_lose_no_update() {
    let kv = Arc::new(mount());
    kv.ok(Update, "config", json!({"max_versions": 1000})).await;
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..20u64 {
                loop {
                    let current = match kv.call(Read, "metadata/hot", Value::Null).await {
                        Ok(r) => r.data.unwrap()["current_version"].as_u64().unwrap(),
                        Err(EngineError::NotFound(_)) => 0,
                        Err(e) => panic!("{e}"),
                    };
                    let body = json!({"data": {"t": t, "i": i}, "options": {"cas": current}});
                    match kv.call(Update, "data/hot", body).await {
                        Ok(r) => {
                            let v = r.data.unwrap()["version"].as_u64().unwrap();
                            assert_eq!(v, current + 1);
                            mine.push(v);
                            break;
                        }
                        Err(EngineError::PreconditionFailed(_)) => tokio::task::yield_now().await,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            mine
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.extend(task.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=320).collect::<Vec<_>>());
    let meta = kv.meta("hot").await;
    assert_eq!(meta["current_version"], json!(320));
    assert_eq!(version_numbers(&meta), (1..=320).collect::<Vec<_>>());
    let mut seen = BTreeSet::new();
    for v in 1..=320 {
        let d = kv.data(Read, "data/hot", json!({"version": v})).await;
        let t = d["data"]["t"].as_u64().unwrap();
        let i = d["data"]["i"].as_u64().unwrap();
        assert!(seen.insert((t, i)), "({t}, {i}) written twice");
    }
    assert_eq!(seen.len(), 320);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_blind_writers_each_get_their_own_version() {
    let kv = Arc::new(mount());
    kv.ok(Update, "config", json!({"max_versions": 1000})).await;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..25u64 {
                let r = kv
                    .ok(Update, "data/blind", json!({"data": {"t": t, "i": i}}))
                    .await;
                mine.push(r.data.unwrap()["version"].as_u64().unwrap());
                let _ = kv.ok(Patch, "data/blind", json!({"data": {"p": t}})).await;
            }
            mine
        }));
    }
    let mut versions = BTreeSet::new();
    for task in tasks {
        for v in task.await.unwrap() {
            assert!(versions.insert(v));
        }
    }
    assert_eq!(versions.len(), 200);
    assert_eq!(kv.meta("blind").await["current_version"], json!(400));
}

#[tokio::test]
async fn endless_contention_gives_up_after_bounded_attempts() {
    let kv = mount_on(Probe {
        always_conflict: true,
        ..Default::default()
    });
    let e = kv.err(Update, "data/x", json!({"data": {"a": 1}})).await;
    assert!(
        matches!(&e, EngineError::Unavailable(m) if m.contains("contention")),
        "{e}"
    );
    assert_eq!(
        kv.store.transactions.load(Ordering::SeqCst),
        kv::MAX_ATTEMPTS
    );
    assert!(kv.dump().await.is_empty());
}

// ---------------------------------------------------------------- secrecy

#[tokio::test]
async fn secret_values_stay_out_of_debug_output_and_storage_keys() {
    let kv = mount();
    let w = kv
        .ok(
            Update,
            "data/x",
            json!({"data": {"password": "hunter2-do-not-show"}}),
        )
        .await;
    assert!(!format!("{w:?}").contains("hunter2"));
    let r = kv.ok(Read, "data/x", Value::Null).await;
    assert!(!format!("{r:?}").contains("hunter2"));
    assert!(kv.dump().await.keys().all(|k| !k.contains("hunter2")));
    // A corrupt payload is reported without its content.
    let key = kv
        .dump()
        .await
        .keys()
        .find(|k| k.starts_with("versions/"))
        .cloned()
        .unwrap();
    kv.store
        .inner
        .put(&key, b"hunter2-do-not-show".to_vec())
        .await
        .unwrap();
    let e = kv.err(Read, "data/x", Value::Null).await;
    assert!(matches!(e, EngineError::Corrupt(_)));
    assert!(!format!("{e} {e:?}").contains("hunter2"));
}
