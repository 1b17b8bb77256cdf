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

    /// Run `sql` on a connection of its own, `{schema}` standing for the quoted schema.
    async fn execute(&self, sql: &str) {
        let sql = sql.replace("{schema}", &format!("\"{}\"", self.name));
        self.client().await.batch_execute(&sql).await.unwrap();
    }

    async fn drop_schema(self) {
        self.execute("DROP SCHEMA IF EXISTS {schema} CASCADE").await;
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
    schema
        .execute("INSERT INTO {schema}.schema_migrations (version) VALUES (99)")
        .await;
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

/// A replica of one schema for the election tests: its store (connections named after
/// it) and its handle on the leadership.
async fn replica(
    schema: &TestSchema,
    id: &str,
    ttl: std::time::Duration,
) -> (Arc<PgStore>, keyhaven_storage_sql::HaSession) {
    let mut options = schema.options();
    options.application_name = Some(format!("keyhaven/{id}"));
    let store = Arc::new(PgStore::connect(&schema.url, options).await.unwrap());
    let node = keyhaven_storage_sql::HaNode {
        id: id.to_owned(),
        api_address: format!("https://{id}:8200"),
        cluster_address: format!("https://{id}:8201"),
    };
    let session = keyhaven_storage_sql::HaSession::new(store.clone(), node, ttl);
    (store, session)
}

/// A write of `store`, retried past the errors of a connection its successor ended, until
/// it is answered by the fence or committed (at most 5 attempts).
async fn settled_put(store: &PgStore, key: &str) -> Result<(), StorageError> {
    let mut last = None;
    for _ in 0..5 {
        match store.put(key, b"v".to_vec()).await {
            Err(StorageError::Unavailable { .. }) => {
                last = Some(());
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
    panic!("the write stayed unavailable ({last:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_one_replica_leads_and_a_replaced_one_cannot_commit() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::new(&url);
    let ttl = std::time::Duration::from_secs(30);
    let (a, mut ha_a) = replica(&schema, "node-a", ttl).await;
    let (b, mut ha_b) = replica(&schema, "node-b", ttl).await;

    let term = ha_a
        .try_acquire()
        .await
        .unwrap()
        .expect("the first replica leads");
    assert_eq!(term, 1);
    assert_eq!(
        ha_b.try_acquire().await.unwrap(),
        None,
        "a live leadership is kept"
    );
    let leader = ha_b.leader().await.unwrap().unwrap();
    assert_eq!(
        (
            leader.holder.as_str(),
            leader.term,
            leader.api_address.as_str()
        ),
        ("node-a", 1, "https://node-a:8200")
    );
    a.put("before", b"v".to_vec()).await.unwrap();
    assert!(ha_a.renew(term).await.unwrap());
    // A standby that never led writes nothing through a fenced store: B's fence is off
    // until it wins, but A's writes are checked against term 1.

    // A stalls (its session stays open) past its TTL: simulated by expiring the row.
    schema
        .execute("UPDATE {schema}.ha_leader SET valid_until = now() - interval '1 second'")
        .await;
    let term_b = ha_b
        .try_acquire()
        .await
        .unwrap()
        .expect("an expired leadership is taken");
    assert_eq!(term_b, 2);

    // A's late write is refused, and nothing of it is committed.
    match settled_put(&a, "late").await {
        Err(StorageError::Fenced) => {}
        other => panic!("the replaced replica's write was not fenced: {other:?}"),
    }
    assert_eq!(b.get("late").await.unwrap(), None);
    assert!(
        !ha_a.renew(term).await.unwrap(),
        "the old leader learns it lost"
    );
    assert_eq!(a.fence().current_term(), None);
    // B writes under its term; A still cannot, even retried.
    b.put("after", b"v".to_vec()).await.unwrap();
    assert!(matches!(
        a.put("late2", b"v".to_vec()).await,
        Err(StorageError::Fenced)
    ));
    assert_eq!(b.get("late2").await.unwrap(), None);
    assert_eq!(b.get("before").await.unwrap(), Some(b"v".to_vec()));
    drop((a, b, ha_a, ha_b));
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_a_dead_leaders_session_frees_the_leadership_at_once_and_release_hands_over() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::new(&url);
    let ttl = std::time::Duration::from_secs(60);
    let (a, mut ha_a) = replica(&schema, "node-a", ttl).await;
    let (_b, mut ha_b) = replica(&schema, "node-b", ttl).await;
    let term = ha_a.try_acquire().await.unwrap().unwrap();
    // The process dies: the database ends its session (the one the row names).
    schema
        .execute("SELECT pg_terminate_backend(backend_pid) FROM {schema}.ha_leader")
        .await;
    let mut taken = None;
    for _ in 0..50 {
        taken = ha_b.try_acquire().await.unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        taken,
        Some(term + 1),
        "the TTL ({ttl:?}) was not waited for"
    );
    assert!(!ha_a.renew(term).await.unwrap());
    assert!(matches!(
        a.put("k", b"v".to_vec()).await,
        Err(StorageError::Fenced)
    ));

    // Release: the next poll of another replica takes over.
    ha_b.release(term + 1).await.unwrap();
    let (_c, mut ha_c) = replica(&schema, "node-c", ttl).await;
    assert_eq!(ha_c.try_acquire().await.unwrap(), Some(term + 2));
    drop((a, ha_a, ha_b, ha_c));
    schema.drop_schema().await;
}

/// A store whose sessions carry the schema's name, holding `a/1` = `v`.
async fn named_store(schema: &TestSchema) -> Arc<PgStore> {
    let mut options = schema.options();
    options.application_name = Some(format!("keyhaven/{}", schema.name));
    let store = Arc::new(PgStore::connect(&schema.url, options).await.unwrap());
    store.put("a/1", b"v".to_vec()).await.unwrap();
    store
}

/// `n` reads of `a/1` at once (as many pooled connections as the pool allows).
async fn read_at_once(
    store: &Arc<PgStore>,
    n: usize,
) -> Vec<Result<Option<Vec<u8>>, StorageError>> {
    let reads: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.get("a/1").await })
        })
        .collect();
    let mut got = Vec::new();
    for r in reads {
        got.push(r.await.unwrap());
    }
    got
}

/// End every session of [`named_store`]'s store; how many there were.
async fn end_sessions(db: &tokio_postgres::Client, schema: &TestSchema) -> usize {
    db.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        &[&format!("keyhaven/{}", schema.name)],
    )
    .await
    .unwrap()
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_calls_survive_the_database_ending_every_session() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::new(&url);
    let store = named_store(&schema).await;
    // Several pooled connections, all about to be ended.
    for r in read_at_once(&store, 8).await {
        assert_eq!(r.unwrap(), Some(b"v".to_vec()));
    }
    let db = schema.client().await;
    assert!(end_sessions(&db, &schema).await > 0);
    // Reads, writes and listings right afterwards are answered, not failed.
    assert_eq!(store.get("a/1").await.unwrap(), Some(b"v".to_vec()));
    store.put("a/2", b"w".to_vec()).await.unwrap();
    assert_eq!(
        store.list_page("a/", None, 100).await.unwrap(),
        vec!["1".to_owned(), "2".to_owned()]
    );
    drop(store);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_reads_survive_a_full_pool_of_ended_sessions() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::new(&url);
    let store = named_store(&schema).await;
    let db = schema.client().await;
    for round in 0..5 {
        // Every connection of the pool open at once, then all ended.
        for r in read_at_once(&store, 64).await {
            assert_eq!(r.unwrap(), Some(b"v".to_vec()));
        }
        end_sessions(&db, &schema).await;
        for got in read_at_once(&store, 4).await {
            assert!(matches!(got, Ok(Some(_))), "round {round}: {got:?}");
        }
    }
    drop(store);
    schema.drop_schema().await;
}

/// The rule of these tests: announce keys under `cached/`, a replaced entry only when
/// the transaction required its old value.
fn cached_only(key: &str, write: keyhaven_storage::KeyWrite) -> bool {
    key.starts_with("cached/")
        && !matches!(write, keyhaven_storage::KeyWrite::Put { replaced: false } if key.starts_with("cached/new/"))
}

/// The next notice, or a failure after 5 s.
async fn next_notice(
    listener: &mut keyhaven_storage_sql::Listener,
) -> keyhaven_storage_sql::Notice {
    tokio::time::timeout(std::time::Duration::from_secs(5), listener.next())
        .await
        .expect("no notice within 5 s")
        .expect("the listener's connection ended")
}

/// The number of a barrier notice.
fn barrier_number(notice: keyhaven_storage_sql::Notice) -> u64 {
    match notice {
        keyhaven_storage_sql::Notice::Barrier { origin, n } => {
            assert_eq!(origin.len(), 16);
            n
        }
        other => panic!("not a barrier: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_an_announced_write_returns_once_every_reader_applied_it_or_lost_its_lease() {
    use keyhaven_storage_sql::{ACK_WAIT, Notice, READ_LEASE_TTL};
    use std::time::{Duration, Instant};
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::new(&url);
    let ttl = Duration::from_secs(30);
    // Named apart from the other tests' replicas, whose connections they end.
    let (active, mut ha) = replica(&schema, "reader-a", ttl).await;
    let (standby, _) = replica(&schema, "reader-b", ttl).await;
    active.announce(cached_only);
    ha.try_acquire().await.unwrap().expect("leads");

    // Without readers, a write waits for nobody; writes that announce nothing never do.
    let started = Instant::now();
    active.put("cached/a", b"0".to_vec()).await.unwrap();
    active.put("kv/a", b"0".to_vec()).await.unwrap();
    assert!(started.elapsed() < ACK_WAIT, "{:?}", started.elapsed());

    // A reader that acknowledges: the write returns when it has, and its lease stands.
    let mut listener = standby.listen().await.unwrap();
    standby.register_reader(READ_LEASE_TTL).await.unwrap();
    let write = tokio::spawn({
        let active = active.clone();
        async move { active.put("cached/a", b"1".to_vec()).await }
    });
    assert_eq!(
        next_notice(&mut listener).await,
        Notice::Changed(vec!["cached/a".to_owned()])
    );
    let Notice::Barrier { origin, n } = next_notice(&mut listener).await else {
        panic!("no barrier after the change");
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !write.is_finished(),
        "the write returned before the reader acknowledged"
    );
    let acked = Instant::now();
    listener.ack(&origin, n).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .expect("the write returned")
        .unwrap()
        .unwrap();
    assert!(acked.elapsed() < ACK_WAIT, "{:?}", acked.elapsed());
    assert!(standby.renew_reader(READ_LEASE_TTL).await.unwrap());

    // A reader that does not acknowledge: its lease is revoked, and the write returns
    // only once the lease has run out on the database clock.
    let renewed = Instant::now();
    assert!(standby.renew_reader(READ_LEASE_TTL).await.unwrap());
    active.put("cached/a", b"2".to_vec()).await.unwrap();
    assert!(
        renewed.elapsed() >= READ_LEASE_TTL,
        "the write returned {:?} after the lease was renewed",
        renewed.elapsed()
    );
    assert!(
        !standby.renew_reader(READ_LEASE_TTL).await.unwrap(),
        "the lease was not revoked"
    );
    // A revoked reader is not waited for again; a new lease is.
    let started = Instant::now();
    active.put("cached/a", b"3".to_vec()).await.unwrap();
    assert!(started.elapsed() < ACK_WAIT, "{:?}", started.elapsed());
    standby.register_reader(READ_LEASE_TTL).await.unwrap();
    assert!(standby.renew_reader(READ_LEASE_TTL).await.unwrap());
    // A lease that ran out cannot be renewed (it was not waited for meanwhile).
    schema
        .execute(
            "UPDATE {schema}.ha_readers SET valid_until = clock_timestamp() - interval '1 second'",
        )
        .await;
    assert!(
        !standby.renew_reader(READ_LEASE_TTL).await.unwrap(),
        "an expired lease was renewed"
    );
    standby.register_reader(READ_LEASE_TTL).await.unwrap();
    // A lease given up is not waited for.
    standby.drop_reader().await.unwrap();
    let started = Instant::now();
    active.put("cached/a", b"4".to_vec()).await.unwrap();
    assert!(started.elapsed() < ACK_WAIT, "{:?}", started.elapsed());
    drop((active, standby, ha, listener));
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_the_active_announces_committed_changes_in_order_before_a_later_ping() {
    use keyhaven_storage::{Condition, Op, Transaction};
    use keyhaven_storage_sql::Notice;
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::new(&url);
    let ttl = std::time::Duration::from_secs(30);
    let (active, mut ha) = replica(&schema, "node-a", ttl).await;
    let (standby, _) = replica(&schema, "node-b", ttl).await;
    active.announce(cached_only);
    ha.try_acquire().await.unwrap().expect("leads");
    let mut listener = standby.listen().await.unwrap();

    // Changes the rule selects, in commit order, each in its own notice; the rest, and
    // a transaction whose condition failed, announce nothing.
    active.put("cached/a", b"1".to_vec()).await.unwrap();
    active.put("kv/x", b"1".to_vec()).await.unwrap();
    active.put("cached/new/t", b"1".to_vec()).await.unwrap();
    let failed = active
        .transact(Transaction {
            conditions: vec![Condition::Absent {
                key: "cached/a".to_owned(),
            }],
            ops: vec![Op::Put {
                key: "cached/b".to_owned(),
                value: b"2".to_vec(),
            }],
        })
        .await
        .unwrap();
    assert!(matches!(
        failed,
        keyhaven_storage::TxOutcome::ConditionFailed { .. }
    ));
    let committed = active
        .transact(Transaction {
            conditions: vec![Condition::Equals {
                key: "cached/new/t".to_owned(),
                value: b"1".to_vec(),
            }],
            ops: vec![
                Op::Put {
                    key: "cached/new/t".to_owned(),
                    value: b"2".to_vec(),
                },
                Op::Delete {
                    key: "cached/a".to_owned(),
                },
                Op::Put {
                    key: "kv/y".to_owned(),
                    value: b"2".to_vec(),
                },
            ],
        })
        .await
        .unwrap();
    assert_eq!(committed, keyhaven_storage::TxOutcome::Committed);
    listener.ping(1).await.unwrap();
    // Each announced write is followed by a barrier, numbered in order.
    assert_eq!(
        next_notice(&mut listener).await,
        Notice::Changed(vec!["cached/a".to_owned()])
    );
    assert_eq!(barrier_number(next_notice(&mut listener).await), 1);
    assert_eq!(
        next_notice(&mut listener).await,
        Notice::Changed(vec!["cached/a".to_owned(), "cached/new/t".to_owned()])
    );
    assert_eq!(barrier_number(next_notice(&mut listener).await), 2);
    assert_eq!(next_notice(&mut listener).await, Notice::Ping(1));

    // Too many keys for one notification: "everything".
    let ops = (0..400)
        .map(|i| Op::Put {
            key: format!("cached/many/{i:040}"),
            value: Vec::new(),
        })
        .collect();
    let committed = active
        .transact(Transaction {
            conditions: Vec::new(),
            ops,
        })
        .await
        .unwrap();
    assert_eq!(committed, keyhaven_storage::TxOutcome::Committed);
    assert_eq!(next_notice(&mut listener).await, Notice::Everything);
    assert_eq!(barrier_number(next_notice(&mut listener).await), 3);

    // A standby's own writes are refused and announce nothing; another listener's
    // pings are not this one's.
    let other = standby.listen().await.unwrap();
    other.ping(7).await.unwrap();
    listener.ping(2).await.unwrap();
    assert_eq!(next_notice(&mut listener).await, Notice::Ping(2));

    // Without high availability (no fence), nothing is announced.
    let plain = schema.connect().await;
    plain.announce(cached_only);
    plain.put("cached/c", b"1".to_vec()).await.unwrap();
    listener.ping(3).await.unwrap();
    assert_eq!(next_notice(&mut listener).await, Notice::Ping(3));

    // The connection ends: the listener says so.
    schema
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'keyhaven/node-b' AND (query LIKE 'NOTIFY %' OR query LIKE '%LISTEN%')",
        )
        .await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while listener.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the listener did not report its end");
    drop((other, active, standby, plain));
    schema.drop_schema().await;
}
