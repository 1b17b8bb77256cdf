//! The token store through the whole core: creation, TTLs against the manual clock,
//! renewal, the token tree, accessors, roles and limited-use tokens.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_engine::{
    ClientToken, Core, EngineError, InitParams, ManualClock, Operation, Request, UnsealInput,
};
use keyhaven_storage::MemStore;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

struct Env {
    core: Arc<Core>,
    clock: ManualClock,
    root: String,
}

async fn env() -> Env {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let core = Core::new(Arc::new(MemStore::new()), Arc::new(clock.clone()))
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
    let env = Env { core, clock, root };
    // A policy that lets ordinary tokens manage their own children.
    env.ok(
        Operation::Update,
        "sys/policies/acl/tokens",
        json!({"policy": "path \"auth/token/*\" { capabilities = [\"create\", \"read\", \"update\"] }\npath \"kv/*\" { capabilities = [\"read\", \"create\", \"update\"] }"}),
        &env.root.clone(),
    )
    .await;
    env.ok(
        Operation::Update,
        "sys/mounts/kv",
        json!({"type": "kv-v2"}),
        &env.root.clone(),
    )
    .await;
    env
}

impl Env {
    async fn call(
        &self,
        op: Operation,
        path: &str,
        body: Value,
        token: &str,
    ) -> Result<keyhaven_engine::Response, EngineError> {
        let data: Map<String, Value> = body.as_object().cloned().unwrap_or_default();
        self.core
            .handle(Request {
                id: "t".into(),
                operation: op,
                path: path.into(),
                data,
                token: Some(ClientToken::new(token.to_owned())),
            })
            .await
    }

    async fn ok(
        &self,
        op: Operation,
        path: &str,
        body: Value,
        token: &str,
    ) -> keyhaven_engine::Response {
        match self.call(op, path, body, token).await {
            Ok(r) => r,
            Err(e) => panic!("{op} {path}: {e}"),
        }
    }

    async fn create(&self, body: Value, parent: &str) -> (String, String) {
        let r = self
            .ok(Operation::Update, "auth/token/create", body, parent)
            .await;
        let auth = r.auth.expect("auth object");
        (
            auth["client_token"].as_str().unwrap().to_owned(),
            auth["accessor"].as_str().unwrap().to_owned(),
        )
    }

    async fn works(&self, token: &str) -> bool {
        self.call(Operation::Read, "auth/token/lookup-self", json!({}), token)
            .await
            .is_ok()
    }
}

#[tokio::test]
async fn tokens_carry_prefix_policies_and_ttl() {
    let e = env().await;
    let r = e.ok(Operation::Update, "auth/token/create", json!({"policies": ["tokens"], "ttl": "10m", "display_name": "ci", "meta": {"team": "a"}}), &e.root).await;
    let auth = r.auth.unwrap();
    let token = auth["client_token"].as_str().unwrap();
    assert!(token.starts_with("khs.") && keyhaven_types::token::parse(token).is_ok());
    assert_eq!(auth["policies"], json!(["default", "tokens"]));
    assert_eq!(auth["lease_duration"], 600);
    assert_eq!(auth["renewable"], true);
    let look = e
        .ok(Operation::Read, "auth/token/lookup-self", json!({}), token)
        .await
        .data
        .unwrap();
    assert_eq!(look["ttl"], 600);
    assert_eq!(look["display_name"], "token-ci");
    assert_eq!(look["meta"]["team"], "a");
    assert_eq!(look["orphan"], false);
    assert_eq!(look["id"], token);
}

#[tokio::test]
async fn an_expired_token_stops_working_at_once_and_the_sweeper_removes_it() {
    let e = env().await;
    let (t, accessor) = e
        .create(json!({"policies": ["tokens"], "ttl": "60s"}), &e.root)
        .await;
    assert!(e.works(&t).await);
    e.clock.advance(Duration::from_secs(59));
    assert!(e.works(&t).await);
    e.clock.advance(Duration::from_secs(1));
    assert!(
        !e.works(&t).await,
        "token must stop working when its TTL ends"
    );
    let r = e
        .ok(Operation::Update, "auth/token/tidy", json!({}), &e.root)
        .await;
    assert!(r.warnings[0].contains("removed 1"), "{:?}", r.warnings);
    let gone = e
        .call(
            Operation::Update,
            "auth/token/lookup-accessor",
            json!({"accessor": accessor}),
            &e.root,
        )
        .await;
    assert!(gone.is_err());
}

#[tokio::test]
async fn renewal_extends_within_explicit_max_ttl() {
    let e = env().await;
    let (t, _) = e
        .create(
            json!({"policies": ["tokens"], "ttl": "1h", "explicit_max_ttl": "90m"}),
            &e.root,
        )
        .await;
    e.clock.advance(Duration::from_secs(3000));
    let r = e
        .ok(
            Operation::Update,
            "auth/token/renew-self",
            json!({"increment": "1h"}),
            &t,
        )
        .await;
    assert_eq!(
        r.auth.unwrap()["lease_duration"],
        2400,
        "capped at creation + 90m"
    );
    e.clock.advance(Duration::from_secs(2400));
    assert!(!e.works(&t).await);
    let (nr, _) = e
        .create(json!({"policies": ["tokens"], "renewable": false}), &e.root)
        .await;
    let err = e
        .call(Operation::Update, "auth/token/renew-self", json!({}), &nr)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not renewable"), "{err}");
}

#[tokio::test]
async fn children_die_with_their_parent_and_never_outlive_it() {
    let e = env().await;
    let (parent, _) = e
        .create(json!({"policies": ["tokens"], "ttl": "1h"}), &e.root)
        .await;
    let r = e
        .ok(
            Operation::Update,
            "auth/token/create",
            json!({"ttl": "5h"}),
            &parent,
        )
        .await;
    let child = r.auth.unwrap()["client_token"].as_str().unwrap().to_owned();
    let look = e
        .ok(Operation::Read, "auth/token/lookup-self", json!({}), &child)
        .await
        .data
        .unwrap();
    assert_eq!(
        look["ttl"], 3600,
        "a child's expiry is capped by its parent's"
    );
    let grandchild = e.create(json!({}), &child).await.0;
    e.ok(
        Operation::Update,
        "auth/token/revoke",
        json!({"token": parent}),
        &e.root,
    )
    .await;
    for t in [&parent, &child, &grandchild] {
        assert!(!e.works(t).await);
    }
}

#[tokio::test]
async fn children_cannot_gain_policies_their_parent_lacks() {
    let e = env().await;
    let (parent, _) = e.create(json!({"policies": ["tokens"]}), &e.root).await;
    let err = e
        .call(
            Operation::Update,
            "auth/token/create",
            json!({"policies": ["admin"]}),
            &parent,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("subset"), "{err}");
    let err = e
        .call(
            Operation::Update,
            "auth/token/create",
            json!({"policies": ["root"]}),
            &parent,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidRequest(_)), "{err}");
    let err = e
        .call(
            Operation::Update,
            "auth/token/create-orphan",
            json!({}),
            &parent,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::InvalidRequest(_) | EngineError::PermissionDenied
        ),
        "{err}"
    );
}

#[tokio::test]
async fn revoke_orphan_keeps_children_and_accessors_work() {
    let e = env().await;
    let (parent, _) = e.create(json!({"policies": ["tokens"]}), &e.root).await;
    let (child, child_accessor) = e.create(json!({}), &parent).await;
    e.ok(
        Operation::Update,
        "auth/token/revoke-orphan",
        json!({"token": parent}),
        &e.root,
    )
    .await;
    assert!(!e.works(&parent).await);
    assert!(e.works(&child).await);
    let look = e
        .ok(
            Operation::Update,
            "auth/token/lookup-accessor",
            json!({"accessor": child_accessor}),
            &e.root,
        )
        .await
        .data
        .unwrap();
    assert_eq!(look["orphan"], true);
    assert_eq!(look["id"], "", "lookups by accessor never reveal the token");
    e.ok(
        Operation::Update,
        "auth/token/revoke-accessor",
        json!({"accessor": child_accessor}),
        &e.root,
    )
    .await;
    assert!(!e.works(&child).await);
}

#[tokio::test]
async fn revoke_self_and_limited_use_tokens() {
    let e = env().await;
    let (t, _) = e.create(json!({"policies": ["tokens"]}), &e.root).await;
    e.ok(Operation::Update, "auth/token/revoke-self", json!({}), &t)
        .await;
    assert!(!e.works(&t).await);
    let (limited, _) = e
        .create(json!({"policies": ["tokens"], "num_uses": 2}), &e.root)
        .await;
    assert!(e.works(&limited).await);
    assert!(e.works(&limited).await);
    assert!(!e.works(&limited).await, "a two-use token works twice");
}

#[tokio::test]
async fn roles_grant_their_policies_and_period() {
    let e = env().await;
    e.ok(
        Operation::Update,
        "auth/token/roles/ci",
        json!({"allowed_policies": "tokens", "token_period": "1h", "orphan": true}),
        &e.root,
    )
    .await;
    let role = e
        .ok(Operation::Read, "auth/token/roles/ci", json!({}), &e.root)
        .await
        .data
        .unwrap();
    assert_eq!(role["token_period"], 3600);
    let r = e
        .ok(
            Operation::Update,
            "auth/token/create/ci",
            json!({}),
            &e.root,
        )
        .await;
    let auth = r.auth.unwrap();
    assert_eq!(auth["policies"], json!(["default", "tokens"]));
    assert_eq!(auth["orphan"], true);
    let t = auth["client_token"].as_str().unwrap().to_owned();
    // Periodic tokens renew to their period indefinitely.
    for _ in 0..3 {
        e.clock.advance(Duration::from_secs(3000));
        let r = e
            .ok(Operation::Update, "auth/token/renew-self", json!({}), &t)
            .await;
        assert_eq!(r.auth.unwrap()["lease_duration"], 3600);
    }
    let err = e
        .call(
            Operation::Update,
            "auth/token/create/ci",
            json!({"policies": ["other"]}),
            &e.root,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
    let list = e
        .ok(Operation::List, "auth/token/roles", json!({}), &e.root)
        .await
        .data
        .unwrap();
    assert_eq!(list["keys"], json!(["ci"]));
}

#[tokio::test]
async fn token_store_never_holds_tokens_in_clear() {
    let store = Arc::new(MemStore::new());
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let core = Core::new(store.clone(), Arc::new(clock)).await.unwrap();
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
    let root = init.root_token.expose_secret();
    let r = core
        .handle(Request {
            id: "t".into(),
            operation: Operation::Update,
            path: "auth/token/create".into(),
            data: Map::new(),
            token: Some(ClientToken::new(root.to_owned())),
        })
        .await
        .unwrap();
    let token = r.auth.unwrap()["client_token"].as_str().unwrap().to_owned();
    let dump = format!("{store:?}");
    drop(dump);
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for name in keyhaven_storage::Store::list_page(store.as_ref(), &dir, None, 1000)
            .await
            .unwrap()
        {
            let full = format!("{dir}{name}");
            if name.ends_with('/') {
                stack.push(full);
                continue;
            }
            assert!(!full.contains(&token) && !full.contains(root));
            let raw = keyhaven_storage::Store::get(store.as_ref(), &full)
                .await
                .unwrap()
                .unwrap();
            for needle in [token.as_bytes(), root.as_bytes()] {
                assert!(
                    !raw.windows(needle.len()).any(|w| w == needle),
                    "token in clear at {full}"
                );
            }
        }
    }
}
