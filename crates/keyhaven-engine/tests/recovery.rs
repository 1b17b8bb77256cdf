//! Operator recovery: rekey (`sys/rotate/root/*`, `sys/rekey/*`), root generation
//! (`sys/generate-root-token/*`, `sys/generate-root/*`) and automatic keyring rotation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use keyhaven_engine::{
    ClientToken, Core, CoreOptions, EngineError, InitParams, ManualClock, Operation, Request,
    UnsealInput,
};
use keyhaven_storage::{MemStore, StorageError, Store, Transaction, TxOutcome};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

/// MemStore whose transactions fail while `fail` is set: a crash at the commit.
#[derive(Debug, Default)]
struct FlakyStore {
    inner: MemStore,
    fail: AtomicBool,
}

#[async_trait]
impl Store for FlakyStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
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
        self.inner.list_page(prefix, after, limit).await
    }
    async fn transact(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable {
                source: "injected failure at commit".into(),
            });
        }
        self.inner.transact(tx).await
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ))
}

fn req(op: Operation, path: &str, data: Value, token: Option<&str>) -> Request {
    let data: Map<String, Value> = match data {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Request {
        id: "test".into(),
        operation: op,
        path: path.into(),
        data,
        token: token.map(|t| ClientToken::new(t.to_owned())),
        remote_addr: None,
        client_certs: Vec::new(),
    }
}

async fn call(core: &Core, op: Operation, path: &str, body: Value, token: Option<&str>) -> Value {
    let resp = core
        .handle(req(op, path, body, token))
        .await
        .unwrap_or_else(|e| panic!("{op} {path}: {e}"));
    Value::Object(resp.data.unwrap_or_default())
}

async fn fails(core: &Core, op: Operation, path: &str, body: Value, token: Option<&str>) -> String {
    match core.handle(req(op, path, body, token)).await {
        Ok(r) => panic!("{op} {path} succeeded: {:?}", r.data),
        Err(e) => e.to_string(),
    }
}

/// Init with `n`/`t`, unseal; the shares as base64 and the root token.
async fn setup(core: &Core, n: u8, t: u8) -> (Vec<String>, String) {
    let init = core
        .init(InitParams {
            secret_shares: n,
            secret_threshold: t,
        })
        .await
        .unwrap();
    let shares: Vec<String> = init
        .shares
        .iter()
        .map(|s| base64::engine::general_purpose::STANDARD.encode(s.as_bytes()))
        .collect();
    for s in shares.iter().take(usize::from(t)) {
        core.unseal(UnsealInput::Key(SecretString::from(s.clone())))
            .await
            .unwrap();
    }
    (shares, init.root_token.expose_secret().to_owned())
}

/// Unseal a sealed core with `shares`; the error of the last one, if any.
async fn unseal_with(core: &Core, shares: &[String]) -> Result<(), EngineError> {
    core.unseal(UnsealInput::Reset).await.unwrap();
    for s in shares {
        core.unseal(UnsealInput::Key(SecretString::from(s.clone())))
            .await?;
    }
    if core.is_sealed() {
        return Err(EngineError::Sealed);
    }
    Ok(())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn rekey_replaces_the_shares_and_the_old_ones_stop_opening() {
    let store = Arc::new(MemStore::new());
    let core = Core::new(store.clone(), clock()).await.unwrap();
    let (old, root) = setup(&core, 3, 2).await;
    let root = Some(root.as_str());
    use Operation::{Delete, Read, Update};

    let status = call(&core, Read, "sys/rotate/root/init", json!({}), root).await;
    assert_eq!(status["started"], false);
    assert_eq!(status["required"], 2);
    for (body, why) in [
        (
            json!({"secret_shares": 3, "secret_threshold": 1}),
            "greater than one",
        ),
        (
            json!({"secret_shares": 2, "secret_threshold": 3}),
            "larger than shares",
        ),
        (
            json!({"secret_shares": 0, "secret_threshold": 0}),
            "at least one",
        ),
        (
            json!({"secret_shares": 300, "secret_threshold": 2}),
            "less than 256",
        ),
        (
            json!({"secret_shares": 3, "secret_threshold": 2, "pgp_keys": ["a", "b", "c"]}),
            "PGP",
        ),
        (
            json!({"secret_shares": 3, "secret_threshold": 2, "backup": true}),
            "backup is not supported",
        ),
    ] {
        let e = fails(&core, Update, "sys/rotate/root/init", body.clone(), root).await;
        assert!(e.contains(why), "{body}: {e}");
    }
    let started = call(
        &core,
        Update,
        "sys/rotate/root/init",
        json!({"secret_shares": 5, "secret_threshold": 3}),
        root,
    )
    .await;
    let nonce = started["nonce"].as_str().unwrap().to_owned();
    assert_eq!(
        (started["t"].clone(), started["n"].clone()),
        (json!(3), json!(5))
    );
    let again = fails(
        &core,
        Update,
        "sys/rotate/root/init",
        json!({"secret_shares": 1, "secret_threshold": 1}),
        root,
    )
    .await;
    assert_eq!(again, "rotation already in progress");
    let e = fails(
        &core,
        Update,
        "sys/rotate/root/update",
        json!({"key": old[0], "nonce": "wrong"}),
        root,
    )
    .await;
    assert!(e.contains("incorrect nonce") && e.contains(&nonce), "{e}");
    let e = fails(
        &core,
        Update,
        "sys/rotate/root/update",
        json!({"key": "zz", "nonce": nonce}),
        root,
    )
    .await;
    assert_eq!(e, "'key' must be a valid hex or base64 string");
    let one = call(
        &core,
        Update,
        "sys/rotate/root/update",
        json!({"key": old[0], "nonce": nonce}),
        root,
    )
    .await;
    assert_eq!(one["progress"], 1);
    let e = fails(
        &core,
        Update,
        "sys/rotate/root/update",
        json!({"key": old[0], "nonce": nonce}),
        root,
    )
    .await;
    assert!(e.contains("already been provided"), "{e}");
    assert!(!e.contains(&old[0]), "the error echoes the share");
    let done = call(
        &core,
        Update,
        "sys/rotate/root/update",
        json!({"key": old[2], "nonce": nonce}),
        root,
    )
    .await;
    assert_eq!(done["complete"], true);
    let new = strings(&done["keys_base64"]);
    assert_eq!(new.len(), 5);
    assert_eq!(strings(&done["keys"]).len(), 5);
    let status = core.seal_status();
    assert_eq!((status.n, status.t), (5, 3));
    assert_eq!(
        call(&core, Read, "sys/rotate/root/init", json!({}), root).await["started"],
        false
    );

    // Old shares no longer open; the new ones do, also after a restart.
    core.seal().await;
    // (Three old shares: the new threshold; they rebuild the old key, which no longer
    // opens the root key.)
    let e = unseal_with(&core, &old).await.unwrap_err().to_string();
    assert!(e.contains("do not reconstruct"), "{e}");
    assert!(
        unseal_with(&core, &new[1..3]).await.is_err(),
        "2 of 3 unsealed"
    );
    unseal_with(&core, &new[2..5]).await.unwrap();
    let restarted = Core::new(store.clone(), clock()).await.unwrap();
    assert_eq!(
        (restarted.seal_status().n, restarted.seal_status().t),
        (5, 3)
    );
    assert!(unseal_with(&restarted, &old).await.is_err());
    unseal_with(&restarted, &new[..3]).await.unwrap();

    // Cancel: an attempt and its shares are dropped.
    call(
        &core,
        Update,
        "sys/rotate/root/init",
        json!({"secret_shares": 1, "secret_threshold": 1}),
        root,
    )
    .await;
    core.handle(req(Delete, "sys/rotate/root/init", json!({}), root))
        .await
        .unwrap();
    let e = fails(
        &core,
        Update,
        "sys/rotate/root/update",
        json!({"key": new[0], "nonce": nonce}),
        root,
    )
    .await;
    assert_eq!(e, "no rotation in progress");
}

#[tokio::test]
async fn a_rekey_that_fails_at_its_commit_leaves_the_old_shares_working() {
    let store = Arc::new(FlakyStore::default());
    let core = Core::new(store.clone(), clock()).await.unwrap();
    let (old, root) = setup(&core, 1, 1).await;
    let root = Some(root.as_str());
    let started = call(
        &core,
        Operation::Update,
        "sys/rotate/root/init",
        json!({"secret_shares": 3, "secret_threshold": 2}),
        root,
    )
    .await;
    let nonce = started["nonce"].as_str().unwrap().to_owned();
    store.fail.store(true, Ordering::SeqCst);
    let e = core
        .handle(req(
            Operation::Update,
            "sys/rotate/root/update",
            json!({"key": old[0], "nonce": nonce}),
            root,
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::Storage(_)), "{e}");
    store.fail.store(false, Ordering::SeqCst);
    assert_eq!((core.seal_status().n, core.seal_status().t), (1, 1));

    // Nothing was written: the old share still opens, here and after a restart.
    core.seal().await;
    unseal_with(&core, &old).await.unwrap();
    let restarted = Core::new(store.clone(), clock()).await.unwrap();
    assert_eq!(
        (restarted.seal_status().n, restarted.seal_status().t),
        (1, 1)
    );
    unseal_with(&restarted, &old).await.unwrap();
}

#[tokio::test]
async fn with_verification_the_new_shares_count_only_once_entered_back() {
    let store = Arc::new(MemStore::new());
    let core = Core::new(store.clone(), clock()).await.unwrap();
    let (old, root) = setup(&core, 1, 1).await;
    let root = Some(root.as_str());
    use Operation::{Delete, Read, Update};
    let started = call(
        &core,
        Update,
        "sys/rotate/root/init",
        json!({"secret_shares": 3, "secret_threshold": 2, "require_verification": true}),
        root,
    )
    .await;
    assert_eq!(started["verification_required"], true);
    let nonce = started["nonce"].as_str().unwrap().to_owned();
    let issued = call(
        &core,
        Update,
        "sys/rotate/root/update",
        json!({"key": old[0], "nonce": nonce}),
        root,
    )
    .await;
    assert_eq!(issued["complete"], true);
    let new = strings(&issued["keys_base64"]);
    let vnonce = issued["verification_nonce"].as_str().unwrap().to_owned();
    assert_ne!(vnonce, nonce);
    // Not in force yet: the seal configuration and a restarted server still use the old.
    assert_eq!((core.seal_status().n, core.seal_status().t), (1, 1));
    let restarted = Core::new(store.clone(), clock()).await.unwrap();
    unseal_with(&restarted, &old).await.unwrap();

    let v = call(&core, Read, "sys/rotate/root/verify", json!({}), root).await;
    assert_eq!(
        (v["started"].clone(), v["nonce"].clone()),
        (json!(true), json!(vnonce))
    );
    let e = fails(
        &core,
        Update,
        "sys/rotate/root/verify",
        json!({"key": new[0], "nonce": "wrong"}),
        root,
    )
    .await;
    assert!(e.contains("incorrect nonce"), "{e}");
    // A share of the old key does not verify the new one: progress resets, new nonce.
    call(
        &core,
        Update,
        "sys/rotate/root/verify",
        json!({"key": new[0], "nonce": vnonce}),
        root,
    )
    .await;
    let other = Core::new(Arc::new(MemStore::new()), clock()).await.unwrap();
    let (foreign, _) = setup(&other, 3, 2).await;
    let e = fails(
        &core,
        Update,
        "sys/rotate/root/verify",
        json!({"key": foreign[1], "nonce": vnonce}),
        root,
    )
    .await;
    assert!(e.contains("do not reconstruct the new unseal key"), "{e}");
    // Restarting the verification also gives a new nonce.
    let restarted_v = call(&core, Delete, "sys/rotate/root/verify", json!({}), root).await;
    let vnonce = restarted_v["nonce"].as_str().unwrap().to_owned();
    assert_eq!(restarted_v["progress"], 0);
    for s in &new[1..3] {
        call(
            &core,
            Update,
            "sys/rotate/root/verify",
            json!({"key": s, "nonce": vnonce}),
            root,
        )
        .await;
    }
    assert_eq!((core.seal_status().n, core.seal_status().t), (3, 2));
    core.seal().await;
    assert!(unseal_with(&core, &old).await.is_err());
    unseal_with(&core, &new[..2]).await.unwrap();
}

#[tokio::test]
async fn generate_root_gives_a_working_root_token_only_through_the_otp() {
    let core = Core::new(Arc::new(MemStore::new()), clock()).await.unwrap();
    let (shares, root) = setup(&core, 3, 2).await;
    let root = Some(root.as_str());
    use Operation::{Delete, Read, Update};
    let status = call(
        &core,
        Read,
        "sys/generate-root-token/attempt",
        json!({}),
        root,
    )
    .await;
    assert_eq!(status["otp_length"], 40);
    assert_eq!(status["started"], false);
    let e = fails(
        &core,
        Update,
        "sys/generate-root-token/attempt",
        json!({"otp": "short"}),
        root,
    )
    .await;
    assert_eq!(e, "OTP string has incorrect length");
    let e = fails(
        &core,
        Update,
        "sys/generate-root-token/attempt",
        json!({"pgp_key": "mQENBF..."}),
        root,
    )
    .await;
    assert!(e.contains("PGP"), "{e}");
    // Without an OTP, the server makes one and shows it once.
    let started = call(
        &core,
        Update,
        "sys/generate-root-token/attempt",
        json!({}),
        root,
    )
    .await;
    let otp = started["otp"].as_str().unwrap().to_owned();
    assert_eq!(otp.len(), 40);
    let nonce = started["nonce"].as_str().unwrap().to_owned();
    let status = call(
        &core,
        Read,
        "sys/generate-root-token/attempt",
        json!({}),
        root,
    )
    .await;
    assert_eq!(status["otp"], "", "the OTP is shown only once");
    let e = fails(
        &core,
        Update,
        "sys/generate-root-token/attempt",
        json!({}),
        root,
    )
    .await;
    assert!(e.contains("already in progress"), "{e}");
    let e = fails(
        &core,
        Update,
        "sys/generate-root-token/update",
        json!({"key": shares[0]}),
        root,
    )
    .await;
    assert_eq!(e, "nonce is required");
    let one = call(
        &core,
        Update,
        "sys/generate-root-token/update",
        json!({"key": shares[0], "nonce": nonce}),
        root,
    )
    .await;
    assert_eq!(
        (one["progress"].clone(), one["complete"].clone()),
        (json!(1), json!(false))
    );
    let done = call(
        &core,
        Update,
        "sys/generate-root-token/update",
        json!({"key": shares[2], "nonce": nonce}),
        root,
    )
    .await;
    assert_eq!(done["complete"], true);
    let encoded = done["encoded_token"].as_str().unwrap();
    assert!(done.get("token").is_none() && !encoded.starts_with("khs."));
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded)
        .unwrap();
    let token: String = bytes
        .iter()
        .zip(otp.bytes())
        .map(|(a, b)| char::from(a ^ b))
        .collect();
    assert!(token.starts_with("khs."), "{token}");
    let me = call(
        &core,
        Read,
        "auth/token/lookup-self",
        json!({}),
        Some(&token),
    )
    .await;
    assert_eq!(me["policies"], json!(["root"]));
    // A root-only (sudo) path works with it.
    core.handle(req(Update, "sys/rotate/keyring", json!({}), Some(&token)))
        .await
        .unwrap();

    // Shares of another install: refused, progress reset, no token.
    let other = Core::new(Arc::new(MemStore::new()), clock()).await.unwrap();
    let (foreign, _) = setup(&other, 3, 2).await;
    let started = call(
        &core,
        Update,
        "sys/generate-root-token/attempt",
        json!({"otp": otp}),
        root,
    )
    .await;
    let nonce = started["nonce"].as_str().unwrap().to_owned();
    for s in &foreign[..1] {
        call(
            &core,
            Update,
            "sys/generate-root-token/update",
            json!({"key": s, "nonce": nonce}),
            root,
        )
        .await;
    }
    let e = fails(
        &core,
        Update,
        "sys/generate-root-token/update",
        json!({"key": foreign[1], "nonce": nonce}),
        root,
    )
    .await;
    assert!(e.contains("do not reconstruct"), "{e}");
    core.handle(req(
        Delete,
        "sys/generate-root-token/attempt",
        json!({}),
        root,
    ))
    .await
    .unwrap();
    let e = fails(
        &core,
        Update,
        "sys/generate-root-token/update",
        json!({"key": shares[0], "nonce": nonce}),
        root,
    )
    .await;
    assert_eq!(e, "no root generation in progress");
    // Sealing drops an attempt in progress.
    call(
        &core,
        Update,
        "sys/generate-root-token/attempt",
        json!({}),
        root,
    )
    .await;
    core.seal().await;
    unseal_with(&core, &shares[..2]).await.unwrap();
    let status = call(
        &core,
        Read,
        "sys/generate-root-token/attempt",
        json!({}),
        root,
    )
    .await;
    assert_eq!(status["started"], false);
}

#[tokio::test]
async fn the_token_less_endpoints_answer_only_where_enabled() {
    let off = Core::new(Arc::new(MemStore::new()), clock()).await.unwrap();
    setup(&off, 1, 1).await;
    for path in ["sys/rekey/init", "sys/generate-root/attempt"] {
        let e = off
            .handle(req(Operation::Read, path, json!({}), None))
            .await
            .unwrap_err();
        assert!(
            matches!(e, EngineError::UnsupportedOperation),
            "{path}: {e}"
        );
    }
    let on = Core::with_options(
        Arc::new(MemStore::new()),
        clock(),
        CoreOptions {
            unauthenticated_rekey: true,
            unauthenticated_generate_root: true,
            ..CoreOptions::default()
        },
    )
    .await
    .unwrap();
    let (shares, _) = setup(&on, 1, 1).await;
    let status = call(&on, Operation::Read, "sys/rekey/init", json!({}), None).await;
    assert_eq!(status["started"], false);
    assert_eq!(status["pgp_fingerprints"], Value::Null);
    let otp = "a".repeat(40);
    let started = call(
        &on,
        Operation::Update,
        "sys/generate-root/attempt",
        json!({"otp": otp}),
        None,
    )
    .await;
    assert_eq!(started["otp"], "", "a given OTP is not echoed");
    let done = call(
        &on,
        Operation::Update,
        "sys/generate-root/update",
        json!({"key": shares[0], "nonce": started["nonce"]}),
        None,
    )
    .await;
    assert_eq!(done["encoded_root_token"], done["encoded_token"]);
    // Sealed: like every other request, refused.
    on.seal().await;
    let e = on
        .handle(req(Operation::Read, "sys/rekey/init", json!({}), None))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::Sealed), "{e}");
}

#[tokio::test]
async fn keyring_rotation_config_is_kept_and_honoured() {
    let clock = clock();
    let store = Arc::new(MemStore::new());
    let core = Core::new(store.clone(), clock.clone()).await.unwrap();
    let (shares, root) = setup(&core, 1, 1).await;
    let root = Some(root.as_str());
    use Operation::{Read, Update};
    let c = call(&core, Read, "sys/rotate/keyring/config", json!({}), root).await;
    assert_eq!(
        c,
        json!({"enabled": true, "interval": 0, "max_operations": 3_865_470_566_u64})
    );
    let e = fails(
        &core,
        Update,
        "sys/rotate/keyring/config",
        json!({"interval": "1h"}),
        root,
    )
    .await;
    assert_eq!(e, "interval must be greater or equal to 24h0m0s");
    let e = fails(
        &core,
        Update,
        "sys/rotate/keyring/config",
        json!({"max_operations": 10}),
        root,
    )
    .await;
    assert!(e.contains("[1000000,3865470566]"), "{e}");
    call(
        &core,
        Update,
        "sys/rotate/keyring/config",
        json!({"interval": "48h", "enabled": false}),
        root,
    )
    .await;
    let term = |core: Arc<Core>| async move {
        call(&core, Read, "sys/key-status", json!({}), root).await["term"].clone()
    };
    // Disabled: nothing happens however old the term.
    clock.advance(Duration::from_secs(72 * 3600));
    core.maintenance().await.unwrap();
    assert_eq!(term(core.clone()).await, 1);
    call(
        &core,
        Update,
        "sys/rotate/keyring/config",
        json!({"enabled": true}),
        root,
    )
    .await;
    core.maintenance().await.unwrap();
    assert_eq!(term(core.clone()).await, 2);
    core.maintenance().await.unwrap();
    assert_eq!(term(core.clone()).await, 2, "the new term is not due yet");
    // Kept across a restart.
    let restarted = Core::new(store, clock.clone()).await.unwrap();
    unseal_with(&restarted, &shares).await.unwrap();
    let c = call(
        &restarted,
        Read,
        "sys/rotate/keyring/config",
        json!({}),
        root,
    )
    .await;
    assert_eq!(
        c,
        json!({"enabled": true, "interval": "48h0m0s", "max_operations": 3_865_470_566_u64})
    );
    // `operator rotate` calls sys/rotate/keyring.
    restarted
        .handle(req(Update, "sys/rotate/keyring", json!({}), root))
        .await
        .unwrap();
    assert_eq!(term(restarted).await, 3);
}

#[tokio::test]
async fn ha_status_and_host_info_describe_this_server() {
    let core = Core::with_options(
        Arc::new(MemStore::new()),
        clock(),
        CoreOptions {
            api_address: "http://127.0.0.1:8200".to_owned(),
            ..CoreOptions::default()
        },
    )
    .await
    .unwrap();
    let (_, root) = setup(&core, 1, 1).await;
    let ha = call(
        &core,
        Operation::Read,
        "sys/ha-status",
        json!({}),
        Some(&root),
    )
    .await;
    let nodes = ha["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["active_node"], true);
    assert_eq!(nodes[0]["api_address"], "http://127.0.0.1:8200");
    assert_eq!(nodes[0]["version"], keyhaven_engine::REPORTED_VERSION);
    let info = call(
        &core,
        Operation::Read,
        "sys/host-info",
        json!({}),
        Some(&root),
    )
    .await;
    for key in ["cpu", "cpu_times", "disk", "host", "memory", "timestamp"] {
        assert!(info.get(key).is_some(), "{key}: {info}");
    }
    if cfg!(target_os = "linux") {
        assert!(info["memory"]["total"].as_u64().unwrap() > 0);
        assert!(!info["cpu"].as_array().unwrap().is_empty());
        assert!(!info["host"]["hostname"].as_str().unwrap().is_empty());
    }
}
