//! PostgreSQL tests: run when `KEYHAVEN_TEST_PG` is set (a connection string, or `1`
//! for `host=127.0.0.1 user=postgres dbname=postgres`), each in a fresh schema that is
//! dropped afterwards. With the variable set, an unreachable server fails the tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use keyhaven_storage::{StorageError, Store, conformance};
use keyhaven_storage_sql::{PgOptions, PgStore};

const DEFAULT_URL: &str = "host=127.0.0.1 user=postgres dbname=postgres";

// Saying that the tests were skipped is the point of this message.
#[allow(clippy::print_stderr)]
fn pg_url() -> Option<String> {
    match std::env::var("KEYHAVEN_TEST_PG") {
        Ok(v) if v == "1" => Some(DEFAULT_URL.to_owned()),
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("KEYHAVEN_TEST_PG is not set: PostgreSQL tests not run");
            None
        }
    }
}

/// A unique schema name for one test, dropped when the guard is dropped.
struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    fn new(url: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        use std::hash::{BuildHasher, Hasher};
        let salt = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            % 1_000_000;
        let name = format!(
            "kh_test_{}_{}_{salt}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        TestSchema {
            url: url.to_owned(),
            name,
        }
    }

    fn options(&self) -> PgOptions {
        let mut options = PgOptions::default();
        options.schema = self.name.clone();
        options
    }

    async fn connect(&self) -> PgStore {
        PgStore::connect(&self.url, self.options())
            .await
            .unwrap_or_else(|e| panic!("KEYHAVEN_TEST_PG is set but connecting failed: {e:?}"))
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("KEYHAVEN_TEST_PG is set but the server is unreachable");
        tokio::spawn(connection);
        client
    }

    async fn drop_schema(self) {
        let client = self.client().await;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_store_conforms() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::new(&url);
    let store = schema.connect().await;
    conformance::exercise(Arc::new(store)).await;
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_data_survives_reconnect_and_close_refuses() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::new(&url);
    let store = schema.connect().await;
    store.put("a/b", b"1".to_vec()).await.unwrap();
    store.close();
    assert!(matches!(store.get("a/b").await, Err(StorageError::Closed)));
    assert!(matches!(
        store.put("x", vec![]).await,
        Err(StorageError::Closed)
    ));
    let again = schema.connect().await;
    assert_eq!(again.get("a/b").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(again.list_page("", None, 10).await.unwrap(), ["a/"]);
    drop(again);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_refuses_a_schema_newer_than_the_code() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::new(&url);
    schema.connect().await.close();
    let client = schema.client().await;
    client
        .batch_execute(&format!(
            "INSERT INTO \"{}\".schema_migrations (version) VALUES (99)",
            schema.name
        ))
        .await
        .unwrap();
    match PgStore::connect(&url, schema.options()).await {
        Err(StorageError::SchemaTooNew {
            found: 99,
            supported,
        }) => {
            assert_eq!(supported, PgStore::SCHEMA_VERSION);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_replicas_starting_together_migrate_once() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::new(&url);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (url, options) = (url.clone(), schema.options());
        tasks.spawn(async move { PgStore::connect(&url, options).await.map(|_| ()) });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
    let client = schema.client().await;
    let row = client
        .query_one(
            &format!("SELECT count(*) FROM \"{}\".schema_migrations", schema.name),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), PgStore::SCHEMA_VERSION as i64);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_unreachable_server_is_an_error() {
    if pg_url().is_none() {
        return;
    }
    // A port nothing listens on: connecting must fail, not hang or pass.
    let result = PgStore::connect("host=127.0.0.1 port=1 user=postgres connect_timeout=2", {
        let mut options = PgOptions::default();
        options.acquire_timeout = std::time::Duration::from_secs(5);
        options
    })
    .await;
    assert!(
        matches!(result, Err(StorageError::Unavailable { .. })),
        "{result:?}"
    );
}
