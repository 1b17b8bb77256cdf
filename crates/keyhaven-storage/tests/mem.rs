use std::sync::Arc;

use keyhaven_storage::{MemStore, Store, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mem_store_conforms() {
    conformance::exercise(Arc::new(MemStore::new())).await;
}

#[tokio::test]
async fn mem_store_starts_empty_and_counts() {
    let store = MemStore::new();
    assert!(store.is_empty());
    store.put("a", b"1".to_vec()).await.unwrap();
    store.put("b/c", b"2".to_vec()).await.unwrap();
    assert_eq!(store.len(), 2);
    assert_eq!(store.keys(), ["a", "b/c"]);
}
