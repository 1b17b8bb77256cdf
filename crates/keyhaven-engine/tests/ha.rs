//! High availability as the engine sees it: an unsealed replica is a standby until
//! promoted; a standby serves nothing and writes nothing; promotion loads the state
//! another replica wrote; demotion drops it; `sys/step-down` reaches the election.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_engine::ha::{HaControl, HaStatus, Role};
use keyhaven_engine::{
    ClientToken, Core, CoreOptions, EngineError, InitParams, ManualClock, Operation, Request,
    UnsealInput,
};
use keyhaven_storage::MemStore;
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

async fn replica(store: Arc<MemStore>, election: Arc<Election>) -> Arc<Core> {
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
        Err(EngineError::Unavailable(msg)) => assert!(msg.contains("standby"), "{msg}"),
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
        Err(EngineError::Unavailable(_))
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
