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
    env_on(Arc::new(MemStore::new())).await
}

/// A store whose writes take a little while, as a real disk's do: races between
/// concurrent requests get the windows they would have in production.
#[derive(Debug)]
struct SlowWrites(MemStore);

#[async_trait::async_trait]
impl keyhaven_storage::Store for SlowWrites {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, keyhaven_storage::StorageError> {
        self.0.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), keyhaven_storage::StorageError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.0.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), keyhaven_storage::StorageError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.0.delete(key).await
    }
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, keyhaven_storage::StorageError> {
        self.0.list_page(prefix, after, limit).await
    }
    async fn transact(
        &self,
        tx: keyhaven_storage::Transaction,
    ) -> Result<keyhaven_storage::TxOutcome, keyhaven_storage::StorageError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.0.transact(tx).await
    }
}

async fn env_on(store: Arc<dyn keyhaven_storage::Store>) -> Env {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let core = Core::new(store, Arc::new(clock.clone())).await.unwrap();
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
                remote_addr: None,
                client_certs: Vec::new(),
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
            remote_addr: None,
            client_certs: Vec::new(),
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

/// What one token-role case expects: the policies of the new token, or an error whose
/// text contains the given words.
enum Expect {
    Policies(&'static [&'static str]),
    Refused(&'static str),
}

#[tokio::test]
async fn token_roles_mint_only_what_vaults_rules_allow() {
    let e = env().await;
    let root = e.root.clone();
    // The reproduction: a policy that may only use the role, and roles of every
    // shape. None of them lets a non-root holder mint `root` or policies it lacks.
    e.ok(
        Operation::Update,
        "sys/policies/acl/ci",
        json!({"policy": "path \"auth/token/create/*\" { capabilities = [\"update\"] }"}),
        &root,
    )
    .await;
    e.ok(
        Operation::Update,
        "sys/policies/acl/minter",
        json!({"policy": "path \"auth/token/create\" { capabilities = [\"update\", \"sudo\"] }"}),
        &root,
    )
    .await;
    for (name, body) in [
        ("open", json!({})),
        ("orphan", json!({"orphan": true})),
        ("disallow", json!({"disallowed_policies": ["admin"]})),
        (
            "disallow-orphan",
            json!({"disallowed_policies": "admin", "orphan": true}),
        ),
        ("allow-app", json!({"allowed_policies": ["app"]})),
        (
            "allow-app-orphan",
            json!({"allowed_policies": "app", "orphan": true}),
        ),
        ("allow-root", json!({"allowed_policies": ["root"]})),
        (
            "allow-app-admin-disallow-admin",
            json!({"allowed_policies": ["app", "admin"], "disallowed_policies": ["admin"]}),
        ),
        ("no-default", json!({"disallowed_policies": ["default"]})),
    ] {
        e.ok(
            Operation::Update,
            &format!("auth/token/roles/{name}"),
            body,
            &root,
        )
        .await;
    }
    let ci = e.create(json!({"policies": ["ci"]}), &root).await.0;
    let ci_app = e.create(json!({"policies": ["ci", "app"]}), &root).await.0;
    let minter = e.create(json!({"policies": ["minter"]}), &root).await.0;

    use Expect::{Policies, Refused};
    let cases: Vec<(&str, &str, &str, Value, Expect)> = vec![
        // (caller, name, path, request, expected)
        (
            "ci",
            &ci,
            "create/open",
            json!({"policies": ["root"]}),
            Refused("root"),
        ),
        (
            "ci",
            &ci,
            "create/open",
            json!({"policies": ["admin"]}),
            Refused("subset"),
        ),
        (
            "ci",
            &ci,
            "create/open",
            json!({"policies": "ci,root"}),
            Refused("root"),
        ),
        (
            "ci",
            &ci,
            "create/open",
            json!({}),
            Policies(&["ci", "default"]),
        ),
        (
            "ci",
            &ci,
            "create/open",
            json!({"policies": ["ci"]}),
            Policies(&["ci", "default"]),
        ),
        (
            "ci",
            &ci,
            "create/orphan",
            json!({"policies": ["root"]}),
            Refused("root"),
        ),
        (
            "ci",
            &ci,
            "create/orphan",
            json!({"policies": ["admin"]}),
            Refused("subset"),
        ),
        (
            "ci",
            &ci,
            "create/orphan",
            json!({}),
            Policies(&["ci", "default"]),
        ),
        (
            "ci",
            &ci,
            "create/disallow",
            json!({"policies": ["root"]}),
            Refused("root"),
        ),
        (
            "ci",
            &ci,
            "create/disallow",
            json!({"policies": ["app"]}),
            Refused("subset"),
        ),
        (
            "ci",
            &ci,
            "create/disallow-orphan",
            json!({"policies": ["root"]}),
            Refused("root"),
        ),
        (
            "ci",
            &ci,
            "create/disallow-orphan",
            json!({"policies": ["app"]}),
            Refused("subset"),
        ),
        (
            "ci+app",
            &ci_app,
            "create/disallow",
            json!({"policies": ["app"]}),
            Policies(&["app", "default"]),
        ),
        (
            "ci+app",
            &ci_app,
            "create/disallow",
            json!({"policies": ["admin"]}),
            Refused("admin"),
        ),
        (
            "root",
            &root,
            "create/disallow",
            json!({"policies": ["admin"]}),
            Refused("disallowed"),
        ),
        (
            "root",
            &root,
            "create/disallow",
            json!({"policies": " admin"}),
            Refused("disallowed"),
        ),
        (
            "ci",
            &ci,
            "create/allow-app",
            json!({}),
            Policies(&["app", "default"]),
        ),
        (
            "ci",
            &ci,
            "create/allow-app",
            json!({"policies": ["app"]}),
            Policies(&["app", "default"]),
        ),
        (
            "ci",
            &ci,
            "create/allow-app",
            json!({"policies": ["admin"]}),
            Refused("not allowed"),
        ),
        (
            "ci",
            &ci,
            "create/allow-app",
            json!({"policies": ["root"]}),
            Refused("root"),
        ),
        (
            "ci",
            &ci,
            "create/allow-app-orphan",
            json!({"policies": ["root"]}),
            Refused("root"),
        ),
        (
            "ci",
            &ci,
            "create/allow-app-orphan",
            json!({}),
            Policies(&["app", "default"]),
        ),
        ("ci", &ci, "create/allow-root", json!({}), Refused("root")),
        (
            "root",
            &root,
            "create/allow-root",
            json!({}),
            Policies(&["root"]),
        ),
        (
            "ci",
            &ci,
            "create/allow-app-admin-disallow-admin",
            json!({}),
            Policies(&["app", "default"]),
        ),
        (
            "ci",
            &ci,
            "create/allow-app-admin-disallow-admin",
            json!({"policies": ["admin"]}),
            Refused("disallowed"),
        ),
        (
            "ci+app",
            &ci_app,
            "create/disallow",
            json!({}),
            Policies(&["app", "ci", "default"]),
        ),
        (
            "ci",
            &ci,
            "create/allow-app-admin-disallow-admin",
            json!({"policies": ["app"]}),
            Policies(&["app", "default"]),
        ),
        ("ci", &ci, "create/no-default", json!({}), Policies(&["ci"])),
        (
            "ci",
            &ci,
            "create/no-default",
            json!({"policies": ["default"]}),
            Refused("disallowed"),
        ),
        (
            "root",
            &root,
            "create/open",
            json!({"policies": ["admin"]}),
            Policies(&["admin", "default"]),
        ),
        (
            "root",
            &root,
            "create/open",
            json!({"policies": ["root"]}),
            Policies(&["root"]),
        ),
        (
            "minter",
            &minter,
            "create",
            json!({"policies": ["admin"]}),
            Policies(&["admin", "default"]),
        ),
        (
            "minter",
            &minter,
            "create",
            json!({"policies": ["root"]}),
            Refused("root"),
        ),
        (
            "minter",
            &minter,
            "create",
            json!({"policies": "admin, root"}),
            Refused("root"),
        ),
    ];
    for (who, token, path, body, expect) in cases {
        let full = format!("auth/token/{path}");
        let got = e.call(Operation::Update, &full, body.clone(), token).await;
        match (expect, got) {
            (Policies(want), Ok(r)) => {
                let auth = r.auth.expect("auth object");
                assert_eq!(auth["policies"], json!(want), "{who} {path} {body}");
                let t = auth["client_token"].as_str().unwrap();
                let look = e
                    .ok(
                        Operation::Update,
                        "auth/token/lookup",
                        json!({"token": t}),
                        &root,
                    )
                    .await
                    .data
                    .unwrap();
                assert_eq!(look["policies"], json!(want), "{who} {path} {body}");
            }
            (Policies(want), Err(err)) => {
                panic!("{who} {path} {body}: expected {want:?}, got error {err}")
            }
            (Refused(words), Ok(r)) => panic!(
                "{who} {path} {body}: expected a refusal ({words}), got {:?}",
                r.auth.map(|a| a["policies"].clone())
            ),
            (Refused(words), Err(err)) => {
                assert!(
                    matches!(err, EngineError::InvalidRequest(_)),
                    "{who} {path} {body}: {err}"
                );
                assert!(
                    err.to_string().contains(words),
                    "{who} {path} {body}: {err}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_a_parent_leaves_no_child_created_meanwhile() {
    let e = Arc::new(env_on(Arc::new(SlowWrites(MemStore::new()))).await);
    for trial in 0..10 {
        let (parent, _) = e.create(json!({"policies": ["tokens"]}), &e.root).await;
        let mut makers = Vec::new();
        for _ in 0..4 {
            let (e, parent) = (e.clone(), parent.clone());
            makers.push(tokio::spawn(async move {
                let mut made = Vec::new();
                for _ in 0..30 {
                    match e
                        .call(Operation::Update, "auth/token/create", json!({}), &parent)
                        .await
                    {
                        Ok(r) => {
                            made.push(r.auth.unwrap()["client_token"].as_str().unwrap().to_owned())
                        }
                        Err(_) => break,
                    }
                }
                made
            }));
        }
        tokio::task::yield_now().await;
        e.ok(
            Operation::Update,
            "auth/token/revoke",
            json!({"token": parent}),
            &e.root,
        )
        .await;
        let mut children = Vec::new();
        for m in makers {
            children.extend(m.await.unwrap());
        }
        for child in &children {
            assert!(
                !e.works(child).await,
                "trial {trial}: a child created while its parent was revoked survived ({} made)",
                children.len()
            );
        }
    }
}

#[tokio::test]
async fn the_final_use_of_a_limited_token_revokes_its_children() {
    let e = env().await;
    let (limited, _) = e
        .create(json!({"policies": ["tokens"], "num_uses": 1}), &e.root)
        .await;
    // The one use creates a child with no use limit, as in the report.
    let r = e
        .ok(Operation::Update, "auth/token/create", json!({}), &limited)
        .await;
    let child = r.auth.unwrap()["client_token"].as_str().unwrap().to_owned();
    assert!(!e.works(&limited).await, "the parent has no use left");
    assert!(
        !e.works(&child).await,
        "a child must not survive its parent's final use"
    );
    // A two-use token: the child made with the first use dies with the second.
    let (two, _) = e
        .create(json!({"policies": ["tokens"], "num_uses": 2}), &e.root)
        .await;
    let (child, _) = e.create(json!({}), &two).await;
    assert!(
        e.works(&child).await,
        "alive while its parent has uses left"
    );
    assert!(e.works(&two).await, "the second use");
    assert!(!e.works(&child).await, "revoked with the parent's last use");
    // An orphan made with sudo is not part of the tree, as in Vault.
    let (sudo_once, _) = e
        .create(json!({"policies": ["root"], "num_uses": 1}), &e.root)
        .await;
    let r = e
        .ok(
            Operation::Update,
            "auth/token/create-orphan",
            json!({"policies": ["tokens"]}),
            &sudo_once,
        )
        .await;
    let orphan = r.auth.unwrap()["client_token"].as_str().unwrap().to_owned();
    assert!(!e.works(&sudo_once).await);
    assert!(e.works(&orphan).await);
}

#[tokio::test]
async fn periodic_tokens_need_sudo_and_durations_are_bounded() {
    let e = env().await;
    let (t, _) = e.create(json!({"policies": ["tokens"]}), &e.root).await;
    // The report: an unbounded period from a token without sudo.
    let err = e
        .call(
            Operation::Update,
            "auth/token/create",
            json!({"period": "9223372036854775807"}),
            &t,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidRequest(_)), "{err}");
    let err = e
        .call(
            Operation::Update,
            "auth/token/create",
            json!({"period": "1h"}),
            &t,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sudo"), "{err}");
    // Root may: a period beyond the maximum TTL is capped, with a warning.
    for (field, value) in [
        ("period", json!("9223372036")),
        ("ttl", json!("100000h")),
        ("explicit_max_ttl", json!(9_000_000_000u64)),
    ] {
        let r = e
            .ok(
                Operation::Update,
                "auth/token/create",
                json!({"policies": ["tokens"], field: value}),
                &e.root,
            )
            .await;
        assert!(
            r.warnings.iter().any(|w| w.contains("capped")),
            "{field}: {:?}",
            r.warnings
        );
        let auth = r.auth.unwrap();
        assert_eq!(auth["lease_duration"], 32 * 24 * 3600, "{field}");
        assert!(
            e.works(auth["client_token"].as_str().unwrap()).await,
            "{field}"
        );
    }
    // Out of range entirely: refused, never wrapped.
    for value in [
        json!("9223372036854775807"),
        json!(u64::MAX),
        json!("2562048h"),
    ] {
        let err = e
            .call(
                Operation::Update,
                "auth/token/create",
                json!({"policies": ["tokens"], "ttl": value}),
                &e.root,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ttl"), "{value}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_is_not_brought_back_by_a_concurrent_lookup() {
    let e = Arc::new(env_on(Arc::new(SlowWrites(MemStore::new()))).await);
    for trial in 0..20 {
        let (t, _) = e.create(json!({"policies": ["tokens"]}), &e.root).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (e, t, stop) = (e.clone(), t.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                for _ in 0..200 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let _ = e.works(&t).await;
                }
            }));
        }
        tokio::task::yield_now().await;
        e.ok(
            Operation::Update,
            "auth/token/revoke",
            json!({"token": t}),
            &e.root,
        )
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            r.await.unwrap();
        }
        assert!(!e.works(&t).await, "trial {trial}: revoked token works");
    }
}

/// Every `auth/token/` endpoint answers by path and operation: the ones the other tests
/// do not reach, and the refusals of the dispatch itself.
#[tokio::test]
async fn each_token_endpoint_answers_by_path_and_operation() {
    let e = env().await;
    let (t, accessor) = e
        .create(json!({"policies": ["tokens"], "ttl": "1h"}), &e.root)
        .await;
    e.clock.advance(Duration::from_secs(600));
    let r = e
        .ok(
            Operation::Update,
            "auth/token/renew",
            json!({"token": t, "increment": "30m"}),
            &e.root,
        )
        .await;
    let auth = r.auth.unwrap();
    assert_eq!(auth["client_token"], json!(t));
    assert_eq!(auth["lease_duration"], 1800);
    let r = e
        .ok(
            Operation::Update,
            "auth/token/renew-accessor",
            json!({"accessor": accessor}),
            &e.root,
        )
        .await;
    let auth = r.auth.unwrap();
    assert!(auth.get("client_token").is_none(), "{auth:?}");
    assert_eq!(auth["accessor"], json!(accessor));

    // Roles: none yet, then one, then none again.
    let none = e
        .call(Operation::List, "auth/token/roles", json!({}), &e.root)
        .await;
    assert!(matches!(none, Err(EngineError::NotFound(_))), "{none:?}");
    e.ok(
        Operation::Update,
        "auth/token/roles/ci",
        json!({"allowed_policies": "tokens"}),
        &e.root,
    )
    .await;
    e.ok(Operation::Delete, "auth/token/roles/ci", json!({}), &e.root)
        .await;
    let gone = e
        .call(Operation::Read, "auth/token/roles/ci", json!({}), &e.root)
        .await;
    assert!(matches!(gone, Err(EngineError::NotFound(_))), "{gone:?}");
    let unknown = e
        .call(
            Operation::Update,
            "auth/token/create/ci",
            json!({}),
            &e.root,
        )
        .await;
    assert!(
        matches!(&unknown, Err(EngineError::InvalidRequest(m)) if m.contains("unknown role")),
        "{unknown:?}"
    );

    // A bad role name is refused by every operation the path has; an operation the path
    // lacks is unsupported, whatever the name.
    for op in [Operation::Read, Operation::Update, Operation::Delete] {
        let bad = e
            .call(op, "auth/token/roles/no:colons", json!({}), &e.root)
            .await;
        assert!(
            matches!(&bad, Err(EngineError::InvalidRequest(m)) if m == "invalid role name"),
            "{op}: {bad:?}"
        );
    }
    // Paths answer only their own operations (unsupported operation, as Vault answers);
    // a path no route has is not found.
    for (op, path) in [
        (Operation::List, "auth/token/roles/ci"),
        (Operation::List, "auth/token/roles/no:colons"),
        (Operation::Read, "auth/token/create"),
        (Operation::Read, "auth/token/revoke"),
        (Operation::Delete, "auth/token/lookup-self"),
        (Operation::Read, "auth/token/create/ci"),
    ] {
        let r = e.call(op, path, json!({}), &e.root).await;
        assert!(
            matches!(r, Err(EngineError::UnsupportedOperation)),
            "{op} {path}: {r:?}"
        );
    }
    let r = e
        .call(
            Operation::Update,
            "auth/token/nothing-here",
            json!({}),
            &e.root,
        )
        .await;
    assert!(matches!(r, Err(EngineError::NotFound(_))), "{r:?}");
}

/// `bao token create` sends every field it knows, empty ones included; none of them may
/// draw the unknown-field warning OpenBao does not give.
#[tokio::test]
async fn the_fields_bao_token_create_sends_draw_no_warning() {
    let e = env().await;
    let body = json!({
        "policies": ["default"], "ttl": "10m0s", "explicit_max_ttl": "0s", "period": "0s",
        "display_name": "", "num_uses": 0, "renewable": true, "type": "service",
        "entity_alias": ""
    });
    let r = e
        .call(Operation::Update, "auth/token/create", body, &e.root)
        .await
        .unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

/// A store that counts the entries read, to see how much work a sweep does.
#[derive(Debug)]
struct CountingReads {
    inner: MemStore,
    gets: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl keyhaven_storage::Store for CountingReads {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, keyhaven_storage::StorageError> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), keyhaven_storage::StorageError> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), keyhaven_storage::StorageError> {
        self.inner.delete(key).await
    }
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, keyhaven_storage::StorageError> {
        self.inner.list_page(prefix, after, limit).await
    }
    async fn transact(
        &self,
        tx: keyhaven_storage::Transaction,
    ) -> Result<keyhaven_storage::TxOutcome, keyhaven_storage::StorageError> {
        self.inner.transact(tx).await
    }
}

impl Env {
    async fn accessor_exists(&self, accessor: &str) -> bool {
        self.call(
            Operation::Update,
            "auth/token/lookup-accessor",
            json!({"accessor": accessor}),
            &self.root,
        )
        .await
        .is_ok()
    }
}

#[tokio::test]
async fn the_sweeper_reads_what_expires_not_every_token() {
    let store = Arc::new(CountingReads {
        inner: MemStore::new(),
        gets: Default::default(),
    });
    let e = env_on(store.clone()).await;
    let mut live = Vec::new();
    for _ in 0..150 {
        live.push(e.create(json!({"ttl": "2h"}), &e.root).await.1);
    }
    let (_, short) = e.create(json!({"ttl": "60s"}), &e.root).await;
    // The first maintenance also counts the tokens (names only).
    e.core.maintenance().await.unwrap();
    e.clock.advance(Duration::from_secs(61));
    let before = store.gets.load(std::sync::atomic::Ordering::Relaxed);
    e.core.maintenance().await.unwrap();
    let reads = store.gets.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        reads < 40,
        "a sweep with one token due read {reads} entries (150 live tokens)"
    );
    assert!(
        !e.accessor_exists(&short).await,
        "the expired token remains"
    );
    assert!(e.accessor_exists(&live[0]).await);
    assert!(e.accessor_exists(&live[149]).await);
    e.clock.advance(Duration::from_secs(2 * 3600));
    e.core.maintenance().await.unwrap();
    for a in [&live[0], &live[77], &live[149]] {
        assert!(!e.accessor_exists(a).await, "an expired token remains");
    }
}

#[tokio::test]
async fn a_renewed_token_outlives_its_first_expiry_and_is_swept_at_its_new_one() {
    let e = env().await;
    let (t, accessor) = e
        .create(json!({"ttl": "60s", "renewable": true}), &e.root)
        .await;
    e.clock.advance(Duration::from_secs(50));
    e.ok(
        Operation::Update,
        "auth/token/renew-self",
        json!({"increment": "1h"}),
        &t,
    )
    .await;
    e.clock.advance(Duration::from_secs(30));
    e.core.maintenance().await.unwrap();
    assert!(e.works(&t).await, "the sweeper revoked a renewed token");
    e.clock.advance(Duration::from_secs(3600));
    e.core.maintenance().await.unwrap();
    assert!(!e.works(&t).await);
    assert!(
        !e.accessor_exists(&accessor).await,
        "the renewed token was not swept at its new expiry"
    );
}

#[tokio::test]
async fn children_revoked_with_their_parent_leave_no_index_behind() {
    let store = Arc::new(MemStore::new());
    let e = env_on(store.clone()).await;
    let (parent, _) = e.create(json!({"ttl": "1h"}), &e.root).await;
    let (_, child) = e.create(json!({"ttl": "30m"}), &parent).await;
    e.ok(
        Operation::Update,
        "auth/token/revoke-self",
        json!({}),
        &parent,
    )
    .await;
    assert!(!e.accessor_exists(&child).await);
    use keyhaven_storage::Store as _;
    for prefix in ["core/token/expire/", "core/token/revoking/"] {
        let left = store.list_page(prefix, None, 100).await.unwrap();
        assert!(left.is_empty(), "{prefix}: {left:?}");
    }
}

#[tokio::test]
async fn an_installation_without_the_index_is_indexed_at_unseal() {
    use keyhaven_storage::Store as _;
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
    let share = hex::encode(init.shares[0].as_bytes());
    let unseal = |core: Arc<Core>, share: String| async move {
        core.unseal(UnsealInput::Key(SecretString::from(share)))
            .await
            .unwrap();
    };
    unseal(core.clone(), share.clone()).await;
    let e = Env {
        core: core.clone(),
        clock: clock.clone(),
        root: init.root_token.expose_secret().to_owned(),
    };
    let (_, short) = e.create(json!({"ttl": "60s"}), &e.root).await;
    let (_, long) = e.create(json!({"ttl": "2h"}), &e.root).await;
    // As an installation from before the index: no index entries, no marker.
    core.seal().await;
    for name in store
        .list_page("core/token/expire/", None, 100)
        .await
        .unwrap()
    {
        store
            .delete(&format!("core/token/expire/{name}"))
            .await
            .unwrap();
    }
    store.delete("core/token/expire-index").await.unwrap();
    unseal(core.clone(), share).await;
    assert_eq!(
        store
            .list_page("core/token/expire/", None, 100)
            .await
            .unwrap()
            .len(),
        2,
        "both tokens indexed at unseal"
    );
    assert!(
        store
            .get("core/token/expire-index")
            .await
            .unwrap()
            .is_some()
    );
    clock.advance(Duration::from_secs(61));
    core.maintenance().await.unwrap();
    assert!(!e.accessor_exists(&short).await);
    assert!(e.accessor_exists(&long).await);
}
