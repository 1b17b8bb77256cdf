//! Response wrapping and the cubbyhole through the whole core: single use, TTL against
//! the manual clock, concurrent unwraps, storage, and the cubbyhole's owner.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_engine::{
    ClientToken, Core, EngineError, InitParams, ManualClock, Operation, Request, Response,
    UnsealInput, WrapRequest,
};
use keyhaven_storage::{MemStore, Store};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

const MARKER: &str = "WRAPPED-5e1d-secret-value";

struct Env {
    core: Arc<Core>,
    store: Arc<MemStore>,
    clock: ManualClock,
    root: String,
}

fn request(op: Operation, path: &str, body: Value, token: Option<&str>) -> Request {
    let data: Map<String, Value> = match body {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Request {
        id: "req-1".to_owned(),
        operation: op,
        path: path.to_owned(),
        data,
        token: token.map(|t| ClientToken::new(t.to_owned())),
        remote_addr: None,
        client_certs: Vec::new(),
    }
}

impl Env {
    async fn new() -> Env {
        let store = Arc::new(MemStore::new());
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let core = Core::new(store.clone(), Arc::new(clock.clone()))
            .await
            .unwrap();
        let init = core
            .init(InitParams {
                secret_shares: 1,
                secret_threshold: 1,
            })
            .await
            .unwrap();
        core.unseal(UnsealInput::Key(SecretString::from(hex::encode(
            init.shares[0].as_bytes(),
        ))))
        .await
        .unwrap();
        let root = init.root_token.expose_secret().to_owned();
        let env = Env {
            core,
            store,
            clock,
            root,
        };
        env.call(
            Operation::Update,
            "sys/mounts/kv",
            json!({"type": "kv-v2"}),
            None,
        )
        .await
        .unwrap();
        env.call(
            Operation::Update,
            "kv/data/app",
            json!({"data": {"password": MARKER}}),
            None,
        )
        .await
        .unwrap();
        env
    }

    /// As root, unless `token` says otherwise.
    async fn call(
        &self,
        op: Operation,
        path: &str,
        body: Value,
        token: Option<&str>,
    ) -> Result<Response, EngineError> {
        let token = token.unwrap_or(&self.root);
        self.core.handle(request(op, path, body, Some(token))).await
    }

    async fn wrapped(
        &self,
        op: Operation,
        path: &str,
        body: Value,
        token: Option<&str>,
        ttl: u64,
    ) -> Result<Response, EngineError> {
        self.core
            .handle_wrapped(
                request(op, path, body, token.or(Some(&self.root))),
                Some(WrapRequest { ttl }),
            )
            .await
    }

    /// Wrap the KV read of `kv/data/app`; the wrapping token.
    async fn wrap_secret(&self, ttl: u64) -> String {
        let resp = self
            .wrapped(Operation::Read, "kv/data/app", json!({}), None, ttl)
            .await
            .unwrap();
        assert!(resp.data.is_none() && resp.auth.is_none(), "{resp:?}");
        resp.wrap_info.unwrap().token
    }

    async fn unwrap(&self, wrapping: &str) -> Result<Response, EngineError> {
        self.call(
            Operation::Update,
            "sys/wrapping/unwrap",
            json!({"token": wrapping}),
            None,
        )
        .await
    }

    /// A child token of root with the default policy.
    async fn child(&self) -> String {
        let auth = self
            .call(
                Operation::Update,
                "auth/token/create",
                json!({"policies": ["default"]}),
                None,
            )
            .await
            .unwrap()
            .auth
            .unwrap();
        auth["client_token"].as_str().unwrap().to_owned()
    }

    /// Every raw key and value in storage.
    async fn raw(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            for name in self.store.list_page(&dir, None, 1000).await.unwrap() {
                let full = format!("{dir}{name}");
                if name.ends_with('/') {
                    stack.push(full);
                } else {
                    let v = self.store.get(&full).await.unwrap().unwrap();
                    out.push((full, v));
                }
            }
        }
        out
    }
}

fn invalid(r: Result<Response, EngineError>) -> String {
    match r {
        Err(EngineError::InvalidRequest(m)) => m,
        other => panic!("expected a 400: {other:?}"),
    }
}

#[tokio::test]
async fn a_wrapped_response_unwraps_once_and_only_once() {
    let env = Env::new().await;
    let wrapping = env.wrap_secret(60).await;
    // lookup spends no use, and needs no other token.
    for _ in 0..2 {
        let look = env
            .core
            .handle(request(
                Operation::Update,
                "sys/wrapping/lookup",
                json!({"token": wrapping}),
                None,
            ))
            .await
            .unwrap();
        let d = look.data.unwrap();
        assert_eq!(d["creation_path"], "kv/data/app");
        assert_eq!(d["creation_ttl"], 60);
    }
    // The wrapping token: an orphan with only the response-wrapping policy, one use.
    let info = env
        .call(
            Operation::Update,
            "auth/token/lookup",
            json!({"token": wrapping}),
            None,
        )
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(info["policies"], json!(["response-wrapping"]));
    assert_eq!(info["num_uses"], 1);
    assert_eq!(info["orphan"], true);
    assert_eq!(info["explicit_max_ttl"], 60);
    assert_eq!(info["renewable"], false);

    let out = env.unwrap(&wrapping).await.unwrap();
    assert_eq!(out.data.unwrap()["data"]["password"], MARKER);
    let again = invalid(env.unwrap(&wrapping).await);
    assert_eq!(again, "wrapping token is not valid or does not exist");
    let look = env
        .core
        .handle(request(
            Operation::Update,
            "sys/wrapping/lookup",
            json!({"token": wrapping}),
            None,
        ))
        .await;
    assert_eq!(
        invalid(look),
        "wrapping token is not valid or does not exist"
    );
    // Nothing of it is left in storage: no token, no cubbyhole.
    let raw = env.raw().await;
    let tokens_before = raw.len();
    let w2 = env.wrap_secret(60).await;
    assert!(env.raw().await.len() > tokens_before);
    env.unwrap(&w2).await.unwrap();
    assert_eq!(env.raw().await.len(), tokens_before, "unwrap left entries");
}

#[tokio::test]
async fn the_wrapping_token_as_the_clients_token_unwraps_once() {
    let env = Env::new().await;
    let wrapping = env.wrap_secret(60).await;
    let out = env
        .call(
            Operation::Update,
            "sys/wrapping/unwrap",
            json!({}),
            Some(&wrapping),
        )
        .await
        .unwrap();
    assert_eq!(out.data.unwrap()["data"]["password"], MARKER);
    let again = env
        .call(
            Operation::Update,
            "sys/wrapping/unwrap",
            json!({}),
            Some(&wrapping),
        )
        .await;
    assert_eq!(
        invalid(again),
        "wrapping token is not valid or does not exist"
    );
    // A wrapping token can do nothing else: its policy allows unwrap and its cubbyhole.
    let w2 = env.wrap_secret(60).await;
    let denied = env
        .call(Operation::Read, "kv/data/app", json!({}), Some(&w2))
        .await;
    assert!(
        matches!(denied, Err(EngineError::PermissionDenied)),
        "{denied:?}"
    );
    // ...and that attempt spent its only use.
    assert_eq!(
        invalid(env.unwrap(&w2).await),
        "wrapping token is not valid or does not exist"
    );
    // A token that is not a wrapping token is not unwrapped, and keeps its uses.
    let limited = env
        .call(
            Operation::Update,
            "auth/token/create",
            json!({"policies": ["default"], "num_uses": 2}),
            None,
        )
        .await
        .unwrap()
        .auth
        .unwrap()["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    invalid(env.unwrap(&limited).await);
    let info = env
        .call(
            Operation::Update,
            "auth/token/lookup",
            json!({"token": limited}),
            None,
        )
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(info["num_uses"], 2);
}

#[tokio::test]
async fn a_wrapping_token_expires_with_its_ttl_and_the_sweeper_removes_it() {
    let env = Env::new().await;
    let base = env.raw().await.len();
    let wrapping = env.wrap_secret(30).await;
    env.clock.advance(Duration::from_secs(29));
    let look = env
        .core
        .handle(request(
            Operation::Update,
            "sys/wrapping/lookup",
            json!({"token": wrapping}),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(look.data.unwrap()["creation_ttl"], 30);
    env.clock.advance(Duration::from_secs(1));
    assert_eq!(
        invalid(env.unwrap(&wrapping).await),
        "wrapping token is not valid or does not exist"
    );
    env.core.maintenance().await.unwrap();
    assert_eq!(
        env.raw().await.len(),
        base,
        "the expired wrapping token left data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_unwraps_exactly_one_gets_the_response() {
    let env = Arc::new(Env::new().await);
    for by_header in [false, true] {
        let wrapping = env.wrap_secret(60).await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let env = env.clone();
            let wrapping = wrapping.clone();
            tasks.push(tokio::spawn(async move {
                if by_header {
                    env.call(
                        Operation::Update,
                        "sys/wrapping/unwrap",
                        json!({}),
                        Some(&wrapping),
                    )
                    .await
                } else {
                    env.unwrap(&wrapping).await
                }
            }));
        }
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => {
                    assert_eq!(r.data.unwrap()["data"]["password"], MARKER);
                    winners += 1;
                }
                Err(EngineError::InvalidRequest(m) | EngineError::NotFound(m)) => {
                    assert!(m.contains("not valid"), "{m}");
                }
                Err(EngineError::PermissionDenied) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(winners, 1, "by header: {by_header}");
    }
}

#[tokio::test]
async fn wrap_lookup_and_rewrap_move_the_response_to_a_new_token() {
    let env = Env::new().await;
    let no_header = env
        .call(
            Operation::Update,
            "sys/wrapping/wrap",
            json!({"k": "v"}),
            None,
        )
        .await;
    assert_eq!(
        invalid(no_header),
        "endpoint requires response wrapping to be used"
    );
    let first = env
        .wrapped(
            Operation::Update,
            "sys/wrapping/wrap",
            json!({"k": MARKER}),
            None,
            120,
        )
        .await
        .unwrap()
        .wrap_info
        .unwrap();
    assert_eq!(first.creation_path, "sys/wrapping/wrap");
    assert_eq!(first.ttl, 120);
    let second = env
        .call(
            Operation::Update,
            "sys/wrapping/rewrap",
            json!({"token": first.token}),
            None,
        )
        .await
        .unwrap()
        .wrap_info
        .unwrap();
    assert_ne!(second.token, first.token);
    assert_eq!(second.creation_path, "sys/wrapping/wrap");
    assert_eq!(second.ttl, 120, "rewrap keeps the TTL unless asked");
    invalid(env.unwrap(&first.token).await);
    // Rewrap with a new TTL.
    let third = env
        .wrapped(
            Operation::Update,
            "sys/wrapping/rewrap",
            json!({"token": second.token}),
            None,
            45,
        )
        .await
        .unwrap()
        .wrap_info
        .unwrap();
    assert_eq!(third.ttl, 45);
    let out = env.unwrap(&third.token).await.unwrap();
    assert_eq!(
        out.data.unwrap(),
        json!({"k": MARKER}).as_object().unwrap().clone()
    );
}

#[tokio::test]
async fn a_wrapped_token_creation_unwraps_to_a_working_token() {
    let env = Env::new().await;
    let resp = env
        .wrapped(
            Operation::Update,
            "auth/token/create",
            json!({"policies": ["default"]}),
            None,
            60,
        )
        .await
        .unwrap();
    assert!(resp.auth.is_none());
    let info = resp.wrap_info.unwrap();
    let auth = env.unwrap(&info.token).await.unwrap().auth.unwrap();
    assert_eq!(info.wrapped_accessor.as_deref(), auth["accessor"].as_str());
    let token = auth["client_token"].as_str().unwrap();
    env.call(
        Operation::Read,
        "auth/token/lookup-self",
        json!({}),
        Some(token),
    )
    .await
    .unwrap();
    // Errors and empty answers are not wrapped.
    let missing = env
        .wrapped(Operation::Read, "kv/data/nothing", json!({}), None, 60)
        .await;
    assert!(
        matches!(missing, Err(EngineError::NotFound(_))),
        "{missing:?}"
    );
    let empty = env
        .wrapped(Operation::Delete, "kv/data/app", json!({}), None, 60)
        .await
        .unwrap();
    assert!(empty.is_empty() && empty.wrap_info.is_none());
}

#[tokio::test]
async fn storage_never_holds_a_wrapped_secret_or_a_wrapping_token_in_clear() {
    let env = Env::new().await;
    let wrapping = env.wrap_secret(60).await;
    let raw = env.raw().await;
    let cubbyholes = raw.iter().filter(|(k, _)| k.ends_with("/response")).count();
    assert_eq!(cubbyholes, 1, "the wrapped response is stored");
    for (key, value) in &raw {
        for needle in [MARKER.as_bytes(), wrapping.as_bytes()] {
            assert!(
                !value.windows(needle.len()).any(|w| w == needle),
                "plaintext at {key}"
            );
        }
        assert!(!key.contains(&wrapping), "token in a key name: {key}");
    }
}

#[tokio::test]
async fn a_cubbyhole_is_its_tokens_alone_and_dies_with_it() {
    let env = Env::new().await;
    let b = env.child().await;
    let base = env.raw().await.len();
    let a = env.child().await;
    env.call(
        Operation::Update,
        "cubbyhole/app/db",
        json!({"password": MARKER}),
        Some(&a),
    )
    .await
    .unwrap();
    let got = env
        .call(Operation::Read, "cubbyhole/app/db", json!({}), Some(&a))
        .await
        .unwrap();
    assert_eq!(got.data.unwrap()["password"], MARKER);
    let keys = env
        .call(Operation::List, "cubbyhole/", json!({}), Some(&a))
        .await
        .unwrap();
    assert_eq!(keys.data.unwrap()["keys"], json!(["app/"]));
    // Neither another token nor root sees it.
    for other in [Some(b.as_str()), None] {
        let r = env
            .call(Operation::Read, "cubbyhole/app/db", json!({}), other)
            .await;
        assert!(matches!(r, Err(EngineError::NotFound(_))), "{r:?}");
        let l = env
            .call(Operation::List, "cubbyhole/", json!({}), other)
            .await;
        assert!(matches!(l, Err(EngineError::NotFound(_))), "{l:?}");
    }
    // Bad input.
    for (path, body, why) in [
        ("cubbyhole/empty", json!({}), "missing data fields"),
        ("cubbyhole/dir/", json!({"a": 1}), "ending in '/'"),
        ("cubbyhole/a/../b", json!({"a": 1}), "segment"),
    ] {
        let m = invalid(env.call(Operation::Update, path, body, Some(&a)).await);
        assert!(m.contains(why), "{path}: {m}");
    }
    // Revoking the token deletes its cubbyhole.
    assert!(env.raw().await.len() > base);
    env.call(
        Operation::Update,
        "auth/token/revoke",
        json!({"token": a}),
        None,
    )
    .await
    .unwrap();
    let after = env.raw().await;
    assert!(
        !after
            .iter()
            .any(|(_, v)| v.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())),
    );
    assert_eq!(
        after.len(),
        base,
        "the token, its accessor, its place in the tree and its cubbyhole are gone"
    );
}
