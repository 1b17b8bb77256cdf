use std::sync::Arc;

use keyhaven_storage::{
    Condition, MemStore, Op, ScopedStore, StorageError, Store, Transaction, TxOutcome, conformance,
};

/// Keys outside the scope `app/`, chosen to sort right next to it.
const OUTSIDE: [&str; 9] = [
    "x",
    "b",
    "app",
    "app.x",
    "app0",
    "apo/x",
    "ap/p/x",
    "../x",
    "a/../../b",
];

async fn noisy_inner() -> Arc<MemStore> {
    let inner = Arc::new(MemStore::new());
    for key in OUTSIDE {
        inner
            .put(key, format!("outside:{key}").into_bytes())
            .await
            .unwrap();
    }
    inner
}

async fn assert_outside_untouched(inner: &MemStore, scope: &str) {
    for key in OUTSIDE {
        let value = inner.get(key).await.unwrap();
        assert_eq!(
            value,
            Some(format!("outside:{key}").into_bytes()),
            "outside key {key:?}"
        );
    }
    for key in inner.keys() {
        assert!(
            OUTSIDE.contains(&key.as_str()) || key == "app/sibling" || key.starts_with(scope),
            "key {key:?} was written outside the scope {scope:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scoped_store_conforms_beside_other_data() {
    let inner = noisy_inner().await;
    let scoped = ScopedStore::new(inner.clone(), "app/").unwrap();
    conformance::exercise(Arc::new(scoped)).await;
    assert_outside_untouched(&inner, "app/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nested_scoped_store_conforms() {
    let inner = noisy_inner().await;
    inner.put("app/sibling", b"s".to_vec()).await.unwrap();
    let outer = ScopedStore::new(inner.clone(), "app/").unwrap();
    let nested = outer.scope("kv/v2/").unwrap();
    assert_eq!(nested.prefix(), "app/kv/v2/");
    conformance::exercise(Arc::new(nested)).await;
    assert_eq!(inner.get("app/sibling").await.unwrap(), Some(b"s".to_vec()));
    assert_outside_untouched(&inner, "app/kv/v2/").await;
}

#[tokio::test]
async fn odd_keys_stay_inside_the_scope() {
    let inner = noisy_inner().await;
    let scoped = ScopedStore::new(inner.clone(), "app/").unwrap();
    let odd = [
        "../x",
        "a/../../b",
        "..",
        "./x",
        "x",
        "b",
        "app0",
        "..//x",
        "%2e%2e/x",
    ];
    for key in odd {
        // Reads see only the scope's own (absent) keys, never the outside ones.
        assert_eq!(scoped.get(key).await.unwrap(), None, "get {key:?} leaked");
        scoped.put(key, b"inside".to_vec()).await.unwrap();
        assert_eq!(scoped.get(key).await.unwrap(), Some(b"inside".to_vec()));
        assert_eq!(
            inner.get(&format!("app/{key}")).await.unwrap(),
            Some(b"inside".to_vec())
        );
    }
    // Conditions and ops of transactions, and CAS, are confined too.
    let outcome = scoped
        .transact(Transaction {
            conditions: vec![Condition::Equals {
                key: "../x".into(),
                value: b"outside:x".to_vec(),
            }],
            ops: vec![Op::Delete { key: "../x".into() }],
        })
        .await
        .unwrap();
    assert_eq!(
        outcome,
        TxOutcome::ConditionFailed { index: 0 },
        "condition read outside"
    );
    let outcome = scoped
        .transact(Transaction {
            conditions: vec![Condition::Absent { key: "app0".into() }],
            ops: vec![
                Op::Delete {
                    key: "a/../../b".into(),
                },
                Op::Delete { key: "b".into() },
            ],
        })
        .await
        .unwrap();
    assert_eq!(outcome, TxOutcome::ConditionFailed { index: 0 });
    assert!(
        !scoped
            .compare_and_swap("x", Some(b"outside:x"), None)
            .await
            .unwrap()
    );
    scoped.delete("a/../../b").await.unwrap();
    scoped.delete("b").await.unwrap();
    assert_outside_untouched(&inner, "app/").await;

    // Listing never shows outside names.
    let root = scoped.list_page("", None, 100).await.unwrap();
    for name in &root {
        assert!(!name.starts_with("outside"), "{name}");
    }
    assert!(!root.contains(&"app".to_owned()) && !root.contains(&"0".to_owned()));
    assert_eq!(
        scoped.list_page("../", None, 100).await.unwrap(),
        ["/", "x"]
    );
    assert_eq!(
        scoped.list_page("a/../../", None, 100).await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn relative_keys_follow_the_key_rules() {
    let inner = noisy_inner().await;
    let scoped = ScopedStore::new(inner.clone(), "app/").unwrap();
    // "app/" + "/x" would be a valid full key, but "/x" is not a valid key.
    for key in ["/x", "", "/", "a\0"] {
        let invalid =
            |r: Result<_, StorageError>| matches!(r, Err(StorageError::InvalidKey { .. }));
        assert!(invalid(scoped.get(key).await.map(|_| ())), "get {key:?}");
        assert!(invalid(scoped.put(key, b"v".to_vec()).await), "put {key:?}");
        assert!(invalid(scoped.delete(key).await), "delete {key:?}");
        assert!(
            invalid(scoped.compare_and_swap(key, None, None).await.map(|_| ())),
            "{key:?}"
        );
        let tx = Transaction {
            conditions: vec![Condition::Absent { key: key.into() }],
            ops: vec![],
        };
        assert!(
            invalid(scoped.transact(tx).await.map(|_| ())),
            "transact {key:?}"
        );
        if !key.is_empty() {
            assert!(
                invalid(scoped.list_page(key, None, 10).await.map(|_| ())),
                "list {key:?}"
            );
        }
    }
    assert_outside_untouched(&inner, "app/").await;
}

#[test]
fn debug_shows_prefix_not_values() {
    let inner = Arc::new(MemStore::new());
    let scoped = ScopedStore::new(inner, "app/").unwrap();
    assert_eq!(
        format!("{scoped:?}"),
        r#"ScopedStore { prefix: "app/", inner: MemStore { keys: 0 } }"#
    );
}
