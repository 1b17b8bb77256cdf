//! `Core::token_is_valid`: the HTTP layer's check before it reads a large body. It must
//! answer like authentication would, and use up nothing.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_engine::{
    ClientToken, Core, EngineError, InitParams, ManualClock, Operation, Request, Response,
    UnsealInput,
};
use keyhaven_storage::MemStore;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

async fn call(core: &Core, path: &str, body: Value, token: &str) -> Result<Response, EngineError> {
    core.handle(Request {
        id: "t".into(),
        operation: Operation::Update,
        path: path.into(),
        data: body.as_object().cloned().unwrap_or_default(),
        token: Some(ClientToken::new(token.to_owned())),
        remote_addr: None,
        client_certs: Vec::new(),
    })
    .await
}

async fn create(core: &Core, body: Value, parent: &str) -> String {
    let auth = call(core, "auth/token/create", body, parent)
        .await
        .unwrap()
        .auth
        .unwrap();
    auth["client_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn token_is_valid_answers_like_authentication_and_uses_nothing() {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let core = Core::new(Arc::new(MemStore::new()), Arc::new(clock.clone()))
        .await
        .unwrap();
    assert!(!core.token_is_valid("khs.anything").await, "uninitialized");
    let init = core
        .init(InitParams {
            secret_shares: 1,
            secret_threshold: 1,
        })
        .await
        .unwrap();
    let root = init.root_token.expose_secret().to_owned();
    assert!(!core.token_is_valid(&root).await, "sealed");
    let key = SecretString::from(hex::encode(init.shares[0].as_bytes()));
    core.unseal(UnsealInput::Key(key)).await.unwrap();
    assert!(core.token_is_valid(&root).await);
    for unknown in [
        "",
        "khs.notatokennotatokennotatoken0000000",
        "root",
        &"x".repeat(600),
    ] {
        assert!(!core.token_is_valid(unknown).await, "{unknown:?}");
    }

    // A two-use token stays valid however often it is checked, and still has both uses.
    let limited = create(&core, json!({"num_uses": 2}), &root).await;
    for _ in 0..5 {
        assert!(core.token_is_valid(&limited).await);
    }
    for use_ in 0..2 {
        call(&core, "auth/token/lookup-self", json!({}), &limited)
            .await
            .unwrap_or_else(|e| panic!("use {use_}: {e}"));
    }
    assert!(!core.token_is_valid(&limited).await, "used up");

    let short = create(&core, json!({"ttl": "1m"}), &root).await;
    assert!(core.token_is_valid(&short).await);
    clock.advance(Duration::from_secs(61));
    assert!(!core.token_is_valid(&short).await, "expired");

    let revoked = create(&core, json!({}), &root).await;
    call(&core, "auth/token/revoke-self", json!({}), &revoked)
        .await
        .unwrap();
    assert!(!core.token_is_valid(&revoked).await, "revoked");

    core.seal().await;
    assert!(!core.token_is_valid(&root).await, "sealed again");
}
