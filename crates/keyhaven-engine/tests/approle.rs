//! The `approle` auth method through `Core`: roles, role ids, secret ids with their use
//! limits, lifetimes and address bindings, and the refusals each login owes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_engine::{
    ClientToken, Core, CoreOptions, EngineError, ManualClock, Operation, Request, Response,
};
use keyhaven_storage::MemStore;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

struct Env {
    core: Arc<Core>,
    clock: Arc<ManualClock>,
    root: String,
}

impl Env {
    async fn new() -> Env {
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let core = Core::with_options(
            Arc::new(MemStore::new()),
            clock.clone(),
            CoreOptions::default(),
        )
        .await
        .unwrap();
        let init = core.dev_setup(None).await.unwrap();
        let root = init.root_token.expose_secret().to_owned();
        let env = Env { core, clock, root };
        env.root_call(
            Operation::Update,
            "sys/auth/approle",
            json!({"type": "approle"}),
        )
        .await;
        env
    }

    async fn call(
        &self,
        op: Operation,
        path: &str,
        data: Value,
        token: Option<&str>,
        remote_addr: Option<IpAddr>,
    ) -> Result<Response, EngineError> {
        let data: Map<String, Value> = match data {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self.core
            .handle(Request {
                id: "test".into(),
                operation: op,
                path: path.into(),
                data,
                token: token.map(|t| ClientToken::new(t.to_owned())),
                remote_addr,
                client_certs: Vec::new(),
            })
            .await
    }

    async fn root_call(&self, op: Operation, path: &str, data: Value) -> Response {
        let root = self.root.clone();
        match self.call(op, path, data, Some(&root), None).await {
            Ok(r) => r,
            Err(e) => panic!("{op} {path}: {e}"),
        }
    }

    async fn data(&self, op: Operation, path: &str, body: Value) -> Map<String, Value> {
        self.root_call(op, path, body).await.data.expect("data")
    }

    async fn role_id(&self, role: &str) -> String {
        let d = self
            .data(
                Operation::Read,
                &format!("auth/approle/role/{role}/role-id"),
                json!({}),
            )
            .await;
        d["role_id"].as_str().unwrap().to_owned()
    }

    async fn secret_id(&self, role: &str, body: Value) -> (String, String) {
        let d = self
            .data(
                Operation::Update,
                &format!("auth/approle/role/{role}/secret-id"),
                body,
            )
            .await;
        (
            d["secret_id"].as_str().unwrap().to_owned(),
            d["secret_id_accessor"].as_str().unwrap().to_owned(),
        )
    }

    async fn login(
        &self,
        body: Value,
        from: Option<IpAddr>,
    ) -> Result<Map<String, Value>, EngineError> {
        let resp = self
            .call(Operation::Update, "auth/approle/login", body, None, from)
            .await?;
        Ok(resp.auth.expect("a login answers with auth"))
    }

    async fn lookup_self(&self, token: &str) -> Map<String, Value> {
        self.call(
            Operation::Read,
            "auth/token/lookup-self",
            json!({}),
            Some(token),
            None,
        )
        .await
        .unwrap()
        .data
        .unwrap()
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn refused(r: Result<Map<String, Value>, EngineError>) -> String {
    match r {
        Ok(auth) => panic!("login accepted: {:?}", auth.get("policies")),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn role_id_and_secret_id_log_in_with_the_roles_policies() {
    let env = Env::new().await;
    env.root_call(
        Operation::Update,
        "auth/approle/role/CI-Deploy",
        json!({"token_policies": ["deploy"], "token_ttl": "20m", "secret_id_ttl": "1h"}),
    )
    .await;
    let role = env
        .data(Operation::Read, "auth/approle/role/ci-deploy", json!({}))
        .await;
    assert_eq!(role["bind_secret_id"], json!(true));
    assert_eq!(role["token_policies"], json!(["deploy"]));
    assert_eq!(role["token_ttl"], json!(1200));
    assert_eq!(role["secret_id_ttl"], json!(3600));
    assert_eq!(role["secret_id_num_uses"], json!(0));
    let list = env
        .data(Operation::List, "auth/approle/role", json!({}))
        .await;
    assert_eq!(list["keys"], json!(["ci-deploy"]));

    let role_id = env.role_id("ci-deploy").await;
    assert_eq!(role_id.len(), 36, "a UUID: {role_id}");
    let (secret_id, accessor) = env
        .secret_id(
            "ci-deploy",
            json!({"metadata": "{\"pipeline\":\"nightly\"}"}),
        )
        .await;
    assert_ne!(secret_id, accessor);

    let auth = env
        .login(json!({"role_id": role_id, "secret_id": secret_id}), None)
        .await
        .unwrap();
    assert_eq!(auth["policies"], json!(["default", "deploy"]));
    assert_eq!(auth["lease_duration"], json!(1200));
    assert_eq!(auth["metadata"]["role_name"], json!("ci-deploy"));
    assert_eq!(auth["metadata"]["pipeline"], json!("nightly"));
    let token = auth["client_token"].as_str().unwrap().to_owned();
    let me = env.lookup_self(&token).await;
    assert_eq!(me["meta"]["role_name"], json!("ci-deploy"));

    // Every wrong part gets the same answer.
    let wrong = [
        json!({"role_id": role_id, "secret_id": "not-it"}),
        json!({"role_id": "not-a-role", "secret_id": secret_id}),
    ];
    for body in wrong {
        assert_eq!(
            refused(env.login(body, None).await),
            "invalid role or secret ID"
        );
    }
    assert_eq!(
        refused(env.login(json!({"role_id": role_id}), None).await),
        "missing secret_id"
    );
    assert_eq!(
        refused(
            env.login(json!({"role_id": role_id, "secret_id": null}), None)
                .await
        ),
        "missing secret_id"
    );
    assert_eq!(
        refused(env.login(json!({"secret_id": secret_id}), None).await),
        "missing role_id"
    );
}

#[tokio::test]
async fn secret_ids_run_out_of_uses_and_expire() {
    let env = Env::new().await;
    env.root_call(
        Operation::Update,
        "auth/approle/role/r",
        json!({"secret_id_num_uses": 2, "secret_id_ttl": "10m"}),
    )
    .await;
    let role_id = env.role_id("r").await;
    let (two_uses, _) = env.secret_id("r", json!({})).await;
    for _ in 0..2 {
        env.login(json!({"role_id": role_id, "secret_id": two_uses}), None)
            .await
            .unwrap();
    }
    assert_eq!(
        refused(
            env.login(json!({"role_id": role_id, "secret_id": two_uses}), None)
                .await
        ),
        "invalid role or secret ID"
    );
    // A secret id may lower the role's limits but not raise them.
    let err = env
        .call(
            Operation::Update,
            "auth/approle/role/r/secret-id",
            json!({"num_uses": 3}),
            Some(&env.root.clone()),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("num_uses"), "{err}");
    let err = env
        .call(
            Operation::Update,
            "auth/approle/role/r/secret-id",
            json!({"ttl": "2h"}),
            Some(&env.root.clone()),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ttl"), "{err}");

    let (short, accessor) = env.secret_id("r", json!({"ttl": "1m"})).await;
    let looked = env
        .data(
            Operation::Update,
            "auth/approle/role/r/secret-id-accessor/lookup",
            json!({"secret_id_accessor": accessor}),
        )
        .await;
    assert_eq!(looked["secret_id_ttl"], json!(60));
    assert_eq!(looked["secret_id_num_uses"], json!(2));
    env.clock.advance(Duration::from_secs(61));
    assert_eq!(
        refused(
            env.login(json!({"role_id": role_id, "secret_id": short}), None)
                .await
        ),
        "invalid role or secret ID"
    );
    // The expired one is gone from the list of accessors too.
    let listed = env
        .call(
            Operation::List,
            "auth/approle/role/r/secret-id",
            json!({}),
            Some(&env.root.clone()),
            None,
        )
        .await;
    assert!(
        listed.is_err() || !format!("{:?}", listed.unwrap().data).contains(&accessor),
        "an expired secret id is removed"
    );
}

#[tokio::test]
async fn address_bindings_are_enforced_at_login_and_on_the_token() {
    let env = Env::new().await;
    env.root_call(
        Operation::Update,
        "auth/approle/role/r",
        json!({"secret_id_bound_cidrs": ["10.0.0.0/8"], "token_bound_cidrs": ["10.1.0.0/16"]}),
    )
    .await;
    let role_id = env.role_id("r").await;
    let (secret_id, _) = env.secret_id("r", json!({})).await;
    let body = json!({"role_id": role_id, "secret_id": secret_id});
    let msg = refused(env.login(body.clone(), ip("192.168.1.1")).await);
    assert!(msg.contains("CIDR"), "{msg}");
    let msg = refused(env.login(body.clone(), None).await);
    assert!(msg.contains("CIDR"), "{msg}");
    let auth = env.login(body, ip("10.9.9.9")).await.unwrap();
    let token = auth["client_token"].as_str().unwrap();
    // The token carries the role's token_bound_cidrs: usable only from 10.1.0.0/16.
    let from = |addr: &'static str| {
        env.call(
            Operation::Read,
            "auth/token/lookup-self",
            json!({}),
            Some(token),
            ip(addr),
        )
    };
    assert!(from("10.1.2.3").await.is_ok());
    assert!(from("10.9.9.9").await.is_err());

    // A secret id's own blocks must lie within the role's.
    let err = env
        .call(
            Operation::Update,
            "auth/approle/role/r/secret-id",
            json!({"cidr_list": ["192.168.0.0/16"]}),
            Some(&env.root.clone()),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CIDR"), "{err}");
    let (narrow, _) = env
        .secret_id("r", json!({"cidr_list": ["10.5.0.0/16"]}))
        .await;
    let body = json!({"role_id": role_id, "secret_id": narrow});
    assert!(env.login(body.clone(), ip("10.9.9.9")).await.is_err());
    assert!(env.login(body, ip("10.5.1.1")).await.is_ok());
}

#[tokio::test]
async fn a_role_without_secret_ids_needs_an_address_binding() {
    let env = Env::new().await;
    let err = env
        .call(
            Operation::Update,
            "auth/approle/role/open",
            json!({"bind_secret_id": false}),
            Some(&env.root.clone()),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "at least one constraint should be enabled on the role"
    );
    env.root_call(
        Operation::Update,
        "auth/approle/role/open",
        json!({"bind_secret_id": false, "secret_id_bound_cidrs": ["127.0.0.1/32"]}),
    )
    .await;
    let role_id = env.role_id("open").await;
    // hvac sends `"secret_id": null` for such a role.
    let body = json!({"role_id": role_id, "secret_id": null});
    assert!(env.login(body.clone(), ip("127.0.0.1")).await.is_ok());
    assert!(env.login(body, ip("127.0.0.2")).await.is_err());
}

#[tokio::test]
async fn secret_ids_are_looked_up_and_destroyed_by_value_or_accessor() {
    let env = Env::new().await;
    env.root_call(Operation::Update, "auth/approle/role/r", json!({}))
        .await;
    let role_id = env.role_id("r").await;
    let (first, first_accessor) = env.secret_id("r", json!({})).await;
    let (second, second_accessor) = env.secret_id("r", json!({})).await;
    let mut listed: Vec<String> = serde_json::from_value(
        env.data(Operation::List, "auth/approle/role/r/secret-id", json!({}))
            .await["keys"]
            .clone(),
    )
    .unwrap();
    listed.sort();
    let mut expected = vec![first_accessor.clone(), second_accessor.clone()];
    expected.sort();
    assert_eq!(
        listed, expected,
        "the list names accessors, never secret ids"
    );

    let looked = env
        .data(
            Operation::Update,
            "auth/approle/role/r/secret-id/lookup",
            json!({"secret_id": first}),
        )
        .await;
    assert_eq!(looked["secret_id_accessor"], json!(first_accessor));
    assert!(looked.get("secret_id").is_none());

    env.root_call(
        Operation::Update,
        "auth/approle/role/r/secret-id-accessor/destroy",
        json!({"secret_id_accessor": first_accessor}),
    )
    .await;
    env.root_call(
        Operation::Update,
        "auth/approle/role/r/secret-id/destroy",
        json!({"secret_id": second}),
    )
    .await;
    for s in [first, second] {
        assert_eq!(
            refused(
                env.login(json!({"role_id": role_id, "secret_id": s}), None)
                    .await
            ),
            "invalid role or secret ID"
        );
    }
    // A custom secret id works once registered, and cannot be registered twice.
    env.root_call(
        Operation::Update,
        "auth/approle/role/r/custom-secret-id",
        json!({"secret_id": "chosen-by-the-operator-123"}),
    )
    .await;
    env.login(
        json!({"role_id": role_id, "secret_id": "chosen-by-the-operator-123"}),
        None,
    )
    .await
    .unwrap();
    assert!(
        env.call(
            Operation::Update,
            "auth/approle/role/r/custom-secret-id",
            json!({"secret_id": "chosen-by-the-operator-123"}),
            Some(&env.root.clone()),
            None,
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn role_ids_can_be_chosen_are_unique_and_go_with_their_role() {
    let env = Env::new().await;
    env.root_call(Operation::Update, "auth/approle/role/a", json!({}))
        .await;
    env.root_call(Operation::Update, "auth/approle/role/b", json!({}))
        .await;
    let old = env.role_id("a").await;
    env.root_call(
        Operation::Update,
        "auth/approle/role/a/role-id",
        json!({"role_id": "team-a-builds"}),
    )
    .await;
    assert_eq!(env.role_id("a").await, "team-a-builds");
    let err = env
        .call(
            Operation::Update,
            "auth/approle/role/b/role-id",
            json!({"role_id": "team-a-builds"}),
            Some(&env.root.clone()),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "role_id already in use");

    let (secret_id, _) = env.secret_id("a", json!({})).await;
    assert_eq!(
        refused(
            env.login(json!({"role_id": old, "secret_id": secret_id}), None)
                .await
        ),
        "invalid role or secret ID"
    );
    env.login(
        json!({"role_id": "team-a-builds", "secret_id": secret_id}),
        None,
    )
    .await
    .unwrap();

    // Deleting the role takes its role id and secret ids with it.
    env.root_call(Operation::Delete, "auth/approle/role/a", json!({}))
        .await;
    assert_eq!(
        refused(
            env.login(
                json!({"role_id": "team-a-builds", "secret_id": secret_id}),
                None
            )
            .await
        ),
        "invalid role or secret ID"
    );
    env.root_call(Operation::Update, "auth/approle/role/c", json!({}))
        .await;
    env.root_call(
        Operation::Update,
        "auth/approle/role/c/role-id",
        json!({"role_id": "team-a-builds"}),
    )
    .await;
}

#[tokio::test]
async fn tidy_removes_expired_secret_ids_and_keeps_live_ones() {
    let env = Env::new().await;
    env.root_call(
        Operation::Update,
        "auth/approle/role/r",
        json!({"secret_id_ttl": "10m"}),
    )
    .await;
    let role_id = env.role_id("r").await;
    let (_, old_accessor) = env.secret_id("r", json!({"ttl": "1m"})).await;
    let (live, live_accessor) = env.secret_id("r", json!({})).await;
    env.clock.advance(Duration::from_secs(61));
    let r = env
        .root_call(Operation::Update, "auth/approle/tidy/secret-id", json!({}))
        .await;
    assert!(r.accepted, "202, as Vault answers");
    assert!(
        r.warnings[0].contains("1 expired or orphaned"),
        "{:?}",
        r.warnings
    );
    let listed = env
        .data(Operation::List, "auth/approle/role/r/secret-id", json!({}))
        .await;
    assert_eq!(listed["keys"], json!([live_accessor]));
    assert_ne!(old_accessor, live_accessor);
    env.login(json!({"role_id": role_id, "secret_id": live}), None)
        .await
        .unwrap();
}
