//! High availability as the engine sees it: an unsealed replica is a standby until
//! promoted; a standby serves nothing and writes nothing until its replica state is
//! loaded, then answers requests without effects and follows the changes announced to
//! it; promotion loads the state another replica wrote; demotion drops it;
//! `sys/step-down` reaches the election.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_engine::ha::{HaControl, HaStatus, Role};
use keyhaven_engine::{
    ClientToken, Core, CoreOptions, EngineError, InitParams, ManualClock, Operation, Request,
    UnsealInput,
};
use keyhaven_storage::{KeyWrite, MemStore, Op, StorageError, Store, Transaction, TxOutcome};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, json};

#[derive(Default)]
struct Election {
    step_downs: AtomicUsize,
}

impl HaControl for Election {
    fn step_down(&self) {
        self.step_downs.fetch_add(1, Ordering::SeqCst);
    }
    fn status(&self) -> HaStatus {
        HaStatus::default()
    }
}

async fn replica(store: Arc<dyn keyhaven_storage::Store>, election: Arc<Election>) -> Arc<Core> {
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    Core::with_options(
        store,
        clock,
        CoreOptions {
            ha: Some(election),
            ..CoreOptions::default()
        },
    )
    .await
    .unwrap()
}

fn request(op: Operation, path: &str, token: &str) -> Request {
    Request {
        id: "ha".into(),
        operation: op,
        path: path.into(),
        data: Map::new(),
        token: Some(ClientToken::new(token.to_owned())),
        remote_addr: None,
        client_certs: Vec::new(),
    }
}

#[tokio::test]
async fn replicas_are_standbys_until_promoted_and_standbys_write_nothing() {
    let store = Arc::new(MemStore::new());
    let election = Arc::new(Election::default());
    let a = replica(store.clone(), election.clone()).await;
    // B starts before the database is initialized (through A).
    let b = replica(store.clone(), election.clone()).await;
    assert!(!b.is_initialized());
    let init = a
        .init(InitParams {
            secret_shares: 1,
            secret_threshold: 1,
        })
        .await
        .unwrap();
    let share = || UnsealInput::Key(SecretString::from(hex::encode(init.shares[0].as_bytes())));
    let root = init.root_token.expose_secret().to_owned();
    assert_eq!(a.role(), Role::Sealed);
    a.unseal(share()).await.unwrap();
    assert_eq!(a.role(), Role::Standby);
    assert!(!a.is_sealed(), "a standby is unsealed");
    // B learns of the initialization when it is unsealed.
    b.unseal(share()).await.unwrap();
    assert_eq!(b.role(), Role::Standby);

    // A standby serves nothing, and its scheduled work writes nothing.
    let before = store.keys();
    match a
        .handle(request(Operation::Read, "sys/mounts", &root))
        .await
    {
        Err(EngineError::NotActive) => {}
        other => panic!("a standby answered: {:?}", other.map(|r| r.data)),
    }
    a.maintenance().await.unwrap();
    a.expire_leases().await.unwrap();
    assert_eq!(store.keys(), before);
    assert!(
        a.forwarding_key().is_some(),
        "an unsealed standby can vouch"
    );

    // A is promoted and writes; B, promoted after A is demoted, sees it.
    assert!(a.promote().await.unwrap());
    assert_eq!(a.role(), Role::Active);
    let mut mount = request(Operation::Update, "sys/mounts/secret", &root);
    mount.data = json!({"type": "kv-v2"}).as_object().unwrap().clone();
    a.handle(mount).await.unwrap();
    a.demote().await;
    assert_eq!(a.role(), Role::Standby);
    assert!(matches!(
        a.handle(request(Operation::Read, "sys/mounts", &root))
            .await,
        Err(EngineError::NotActive)
    ));
    assert!(b.promote().await.unwrap());
    let mounts = b
        .handle(request(Operation::Read, "sys/mounts", &root))
        .await
        .unwrap();
    assert!(
        mounts.data.unwrap().contains_key("secret/"),
        "the new active loaded the mount the old one made"
    );
    assert!(
        !b.promote().await.unwrap(),
        "promoting an active is a no-op"
    );

    // sys/step-down (sudo) reaches the election.
    b.handle(request(Operation::Update, "sys/step-down", &root))
        .await
        .unwrap();
    assert_eq!(election.step_downs.load(Ordering::SeqCst), 1);

    // A sealed replica forgets its root key: no promotion, no vouching.
    a.seal().await;
    assert_eq!(a.role(), Role::Sealed);
    assert!(a.forwarding_key().is_none());
    assert!(!a.promote().await.unwrap());
}

/// A store that records what the active would announce (as the PostgreSQL store does in
/// its transactions), for the test to hand to the standby.
#[derive(Debug)]
struct Announcing {
    inner: MemStore,
    announced: parking_lot::Mutex<Vec<String>>,
}

impl Announcing {
    /// Every key with its value.
    async fn snapshot(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut all = Vec::new();
        for key in self.inner.keys() {
            let value = self.inner.get(&key).await.unwrap();
            all.push((key, value));
        }
        all
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.announced.lock())
    }
}

#[async_trait::async_trait]
impl Store for Announcing {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        let tx = Transaction {
            conditions: Vec::new(),
            ops: vec![Op::Put {
                key: key.to_owned(),
                value,
            }],
        };
        self.transact(tx).await.map(|_| ())
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let tx = Transaction {
            conditions: Vec::new(),
            ops: vec![Op::Delete {
                key: key.to_owned(),
            }],
        };
        self.transact(tx).await.map(|_| ())
    }
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        self.inner.list_page(prefix, after, limit).await
    }
    async fn transact(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        let mut keys = Vec::new();
        for op in &tx.ops {
            let (key, deleted) = match op {
                Op::Put { key, .. } => (key, false),
                Op::Delete { key } => (key, true),
            };
            let write = KeyWrite::of(&tx.conditions, key, deleted);
            if keyhaven_engine::ha::announces(key, write) {
                keys.push(key.clone());
            }
        }
        let outcome = self.inner.transact(tx).await?;
        if outcome == TxOutcome::Committed {
            self.announced.lock().extend(keys);
        }
        Ok(outcome)
    }
}

#[tokio::test]
async fn a_standby_answers_reads_from_its_replica_writes_nothing_and_follows_announced_changes() {
    let store = Arc::new(Announcing {
        inner: MemStore::new(),
        announced: parking_lot::Mutex::new(Vec::new()),
    });
    let election = Arc::new(Election::default());
    let a = replica(store.clone(), election.clone()).await;
    let b = replica(store.clone(), election.clone()).await;
    let init = a
        .init(InitParams {
            secret_shares: 1,
            secret_threshold: 1,
        })
        .await
        .unwrap();
    let share = || UnsealInput::Key(SecretString::from(hex::encode(init.shares[0].as_bytes())));
    let root = init.root_token.expose_secret().to_owned();
    a.unseal(share()).await.unwrap();
    b.unseal(share()).await.unwrap();
    assert!(a.promote().await.unwrap());
    let write = |path: &str, body: serde_json::Value, token: &str| {
        let mut req = request(Operation::Update, path, token);
        req.data = body.as_object().unwrap().clone();
        req
    };
    a.handle(write(
        "sys/policies/acl/reader",
        json!({"policy": "path \"secret/data/*\" { capabilities = [\"read\"] }"}),
        &root,
    ))
    .await
    .unwrap();
    a.handle(write("sys/mounts/secret", json!({"type": "kv-v2"}), &root))
        .await
        .unwrap();
    a.handle(write("secret/data/app", json!({"data": {"v": "1"}}), &root))
        .await
        .unwrap();
    let created = a
        .handle(write(
            "auth/token/create",
            json!({"policies": ["reader"]}),
            &root,
        ))
        .await
        .unwrap();
    let token = created.auth.unwrap()["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    store.take();

    // Loaded, the standby answers reads (and caches the token and the policy) ...
    assert!(!b.serves_reads());
    assert!(b.load_replica().await.unwrap());
    assert!(b.serves_reads());
    assert!(b.standby_serves(Operation::Read, "secret/data/app"));
    assert!(!b.standby_serves(Operation::Update, "secret/data/app"));
    assert!(!b.standby_serves(Operation::Read, "sys/ha-status"));
    let read = b
        .handle(request(Operation::Read, "secret/data/app", &token))
        .await
        .unwrap();
    assert_eq!(read.data.unwrap()["data"]["v"], "1");
    // ... and refuses anything with effects, writing nothing.
    let before = store.snapshot().await;
    for req in [
        write("secret/data/app", json!({"data": {"v": "2"}}), &root),
        write("auth/token/create", json!({}), &root),
        request(Operation::Read, "sys/ha-status", &root),
    ] {
        let path = req.path.clone();
        match b.handle(req).await {
            Err(EngineError::NotActive) => {}
            other => panic!("{path}: a standby answered {:?}", other.map(|r| r.data)),
        }
    }
    assert!(store.snapshot().await == before, "a standby wrote");
    let used_once = a
        .handle(write(
            "auth/token/create",
            json!({"policies": ["reader"], "num_uses": 1}),
            &root,
        ))
        .await
        .unwrap()
        .auth
        .unwrap()["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(store.take().is_empty(), "a new token is not announced");
    let before = store.snapshot().await;
    // Spending a use is a write: the standby leaves it to the active.
    assert!(matches!(
        b.handle(request(Operation::Read, "secret/data/app", &used_once))
            .await,
        Err(EngineError::NotActive)
    ));
    assert!(store.snapshot().await == before, "a standby wrote");

    // A revocation on the active: the standby still holds the cached entry until the
    // announcement is applied, then refuses the token.
    a.handle(write("auth/token/revoke", json!({"token": token}), &root))
        .await
        .unwrap();
    assert!(
        b.handle(request(Operation::Read, "secret/data/app", &token))
            .await
            .is_ok(),
        "the cache answers until the change is applied (hence the announcements)"
    );
    let changed = store.take();
    assert!(!changed.is_empty());
    b.apply_changes(&changed).await.unwrap();
    assert!(matches!(
        b.handle(request(Operation::Read, "secret/data/app", &token))
            .await,
        Err(EngineError::PermissionDenied)
    ));

    // A mount disabled on the active: the standby reloads and no longer routes to it.
    let mut disable = request(Operation::Delete, "sys/mounts/secret", &root);
    disable.data = Map::new();
    a.handle(disable).await.unwrap();
    b.apply_changes(&store.take()).await.unwrap();
    assert!(!b.standby_serves(Operation::Read, "secret/data/app"));

    // Dropped, it forwards everything; promoted, it is active with fresh state.
    b.drop_replica();
    assert!(!b.serves_reads());
    a.demote().await;
    assert!(b.promote().await.unwrap());
    assert!(!b.serves_reads());
    assert!(
        b.handle(request(Operation::Read, "sys/mounts", &root))
            .await
            .is_ok()
    );
}
