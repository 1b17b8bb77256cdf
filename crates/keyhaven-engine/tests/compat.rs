//! What real clients rely on beyond the basics: the user-interface mount listings and
//! their use counting, tuning that is kept (or refused, never dropped), tokens bound to
//! CIDR blocks, and Vault's statuses for bad tokens. (Tokens bound to CIDR blocks are tested with the
//! logins that make them, in `kubernetes.rs`.)

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_engine::{ClientToken, Core, EngineError, ManualClock, Operation, Request, Response};
use keyhaven_storage::MemStore;
use serde_json::{Map, Value, json};

use Operation::{Read, Update};

struct Env {
    core: Arc<Core>,
    root: String,
}

impl Env {
    async fn new() -> Env {
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let core = Core::new(Arc::new(MemStore::new()), clock).await.unwrap();
        let init = core.dev_setup(Some("root-for-compat-tests")).await.unwrap();
        let root = secrecy::ExposeSecret::expose_secret(&init.root_token).to_owned();
        Env { core, root }
    }

    async fn call(
        &self,
        op: Operation,
        path: &str,
        body: Value,
        token: Option<&str>,
    ) -> Result<Response, EngineError> {
        let data: Map<String, Value> = match body {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self.core
            .handle(Request {
                id: "compat".into(),
                operation: op,
                path: path.into(),
                data,
                token: token.map(|t| ClientToken::new(t.to_owned())),
                remote_addr: None,
                client_certs: Vec::new(),
            })
            .await
    }

    async fn root(&self, op: Operation, path: &str, body: Value) -> Response {
        self.call(op, path, body, Some(&self.root.clone()))
            .await
            .unwrap_or_else(|e| panic!("{op} {path}: {e}"))
    }

    /// A token with `policy` (HCL) and the given uses (0: unlimited).
    async fn token(&self, policy: &str, uses: u64) -> String {
        self.root(Update, "sys/policies/acl/p", json!({ "policy": policy }))
            .await;
        let r = self
            .root(
                Update,
                "auth/token/create",
                json!({"policies": ["p"], "num_uses": uses}),
            )
            .await;
        r.auth.unwrap()["client_token"].as_str().unwrap().to_owned()
    }
}

fn data(r: &Response) -> Value {
    Value::Object(r.data.clone().unwrap_or_default())
}

#[tokio::test]
async fn the_mount_preflight_spends_no_use_and_answers_403_for_unknown_or_forbidden_mounts() {
    let env = Env::new().await;
    let t = env
        .token(
            r#"path "secret/data/team/*" { capabilities = ["read"] }"#,
            1,
        )
        .await;
    // What `bao kv get` does with a one-use token: the preflight, then the read.
    let pre = env
        .call(
            Read,
            "sys/internal/ui/mounts/secret/team/x",
            json!({}),
            Some(&t),
        )
        .await
        .unwrap();
    let d = data(&pre);
    assert_eq!(d["path"], "secret/");
    assert_eq!(d["type"], "kv");
    assert_eq!(d["options"]["version"], "2");
    env.root(Update, "secret/data/team/x", json!({"data": {"k": "v"}}))
        .await;
    let read = env
        .call(Read, "secret/data/team/x", json!({}), Some(&t))
        .await
        .unwrap();
    assert_eq!(data(&read)["data"]["k"], "v");
    // That read was the token's one use.
    let spent = env
        .call(Read, "secret/data/team/x", json!({}), Some(&t))
        .await;
    assert!(
        matches!(spent, Err(EngineError::PermissionDenied)),
        "{spent:?}"
    );

    let t = env
        .token(
            r#"path "secret/data/team/*" { capabilities = ["read"] }"#,
            0,
        )
        .await;
    for path in ["transit", "nomount/x"] {
        let err = env
            .call(
                Read,
                &format!("sys/internal/ui/mounts/{path}"),
                json!({}),
                Some(&t),
            )
            .await
            .unwrap_err();
        let shown = format!("{}/", path);
        assert!(
            matches!(&err, EngineError::Forbidden(m) if m.contains("preflight capability check returned 403") && m.contains(&shown)),
            "{path}: {err:?}"
        );
    }
    let none = env
        .call(Read, "sys/internal/ui/mounts/secret", json!({}), None)
        .await;
    assert!(
        matches!(&none, Err(e) if e.to_string() == "permission denied" && e.code().http_status() == 403),
        "{none:?}"
    );
    let bogus = env
        .call(Read, "sys/internal/ui/mounts", json!({}), Some("bogus"))
        .await;
    assert!(
        matches!(&bogus, Err(e) if e.to_string() == "permission denied" && e.code().http_status() == 403),
        "{bogus:?}"
    );
    // Auth methods are found under auth/.
    let tok = env
        .root(Read, "sys/internal/ui/mounts/auth/token/x", json!({}))
        .await;
    assert_eq!(data(&tok)["path"], "auth/token/");
    assert_eq!(data(&tok)["type"], "token");
}

#[tokio::test]
async fn the_unauthenticated_listing_shows_only_mounts_tuned_unauth_and_a_token_sees_its_own() {
    let env = Env::new().await;
    env.root(Update, "sys/mounts/transit", json!({"type": "transit"}))
        .await;
    let anon = env
        .call(Read, "sys/internal/ui/mounts", json!({}), None)
        .await
        .unwrap();
    assert_eq!(data(&anon), json!({"auth": {}, "secret": {}}));
    env.root(
        Update,
        "sys/mounts/secret/tune",
        json!({"listing_visibility": "unauth"}),
    )
    .await;
    let anon = env
        .call(Read, "sys/internal/ui/mounts", json!({}), None)
        .await
        .unwrap();
    assert_eq!(
        data(&anon),
        json!({"auth": {}, "secret": {"secret/": {
            "description": "key/value secret storage",
            "options": {"version": "2"},
            "type": "kv"
        }}})
    );
    let t = env
        .token(r#"path "secret/data/*" { capabilities = ["read"] }"#, 1)
        .await;
    let mine = env
        .call(Read, "sys/internal/ui/mounts", json!({}), Some(&t))
        .await
        .unwrap();
    let d = data(&mine);
    let secrets = d["secret"].as_object().unwrap();
    // As OpenBao: the mounts it has a rule below (the default policy reaches sys/).
    assert!(
        secrets.contains_key("secret/") && secrets.contains_key("sys/"),
        "{d}"
    );
    assert!(
        !secrets.contains_key("transit/"),
        "only what the token may use: {d}"
    );
    assert!(d["secret"]["secret/"]["accessor"].is_string(), "in full");
    // The default policy reaches auth/token/ (lookup-self and friends).
    assert!(d["auth"]["token/"].is_object(), "{d}");
    // The listing spent nothing: the token's one use is still there.
    env.call(Read, "auth/token/lookup-self", json!({}), Some(&t))
        .await
        .unwrap();
}

#[tokio::test]
async fn tuning_is_kept_read_back_and_refused_whole_when_unsupported() {
    let env = Env::new().await;
    env.root(
        Update,
        "sys/mounts/secret/tune",
        json!({
            "options": {"max_versions": "7"},
            "listing_visibility": "unauth",
            "audit_non_hmac_request_keys": ["a"],
            "audit_non_hmac_response_keys": "b",
            "default_lease_ttl": "1h",
            "max_lease_ttl": "2h",
            "description": "hello"
        }),
    )
    .await;
    let tune = data(&env.root(Read, "sys/mounts/secret/tune", json!({})).await);
    assert_eq!(
        tune["options"],
        json!({"max_versions": "7", "version": "2"})
    );
    assert_eq!(tune["listing_visibility"], "unauth");
    assert_eq!(tune["audit_non_hmac_request_keys"], json!(["a"]));
    assert_eq!(tune["audit_non_hmac_response_keys"], json!(["b"]));
    assert_eq!(tune["default_lease_ttl"], 3600);
    assert_eq!(tune["max_lease_ttl"], 7200);
    assert_eq!(tune["description"], "hello");
    let listed = data(&env.root(Read, "sys/mounts", json!({})).await);
    assert_eq!(listed["secret/"]["config"]["listing_visibility"], "unauth");

    for (field, value) in [
        ("passthrough_request_headers", json!(["X-Foo"])),
        ("allowed_response_headers", json!("X-Bar")),
        ("plugin_version", json!("v1.0.0")),
        ("listing_visibility", json!("public")),
        ("token_type", json!("service")),
    ] {
        let err = env
            .call(
                Update,
                "sys/mounts/secret/tune",
                json!({"description": "changed", field: value}),
                Some(&env.root.clone()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EngineError::InvalidRequest(m) if m.contains(field)),
            "{field}: {err:?}"
        );
    }
    let err = env
        .call(
            Update,
            "sys/mounts/secret/tune",
            json!({"options": {"version": "1"}}),
            Some(&env.root.clone()),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot downgrade"), "{err}");
    let tune = data(&env.root(Read, "sys/mounts/secret/tune", json!({})).await);
    assert_eq!(
        tune["description"], "hello",
        "a refused tune changes nothing"
    );
    let err = env
        .call(
            Update,
            "sys/mounts/secret/tune",
            json!({"default_lease_ttl": "3h"}),
            Some(&env.root.clone()),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_lease_ttl"), "{err}");

    // `bao auth tune` sends sys/mounts/auth/<path>/tune.
    env.root(
        Update,
        "sys/mounts/auth/token/tune",
        json!({"default_lease_ttl": "30m", "listing_visibility": "unauth"}),
    )
    .await;
    let auth = data(&env.root(Read, "sys/auth/token/tune", json!({})).await);
    assert_eq!(auth["default_lease_ttl"], 1800);
    assert_eq!(auth["listing_visibility"], "unauth");
    assert_eq!(auth["token_type"], "default-service");
    let via_mounts = data(
        &env.root(Read, "sys/mounts/auth/token/tune", json!({}))
            .await,
    );
    assert_eq!(via_mounts["default_lease_ttl"], 1800);
    let err = env
        .call(
            Update,
            "sys/auth/token/tune",
            json!({"token_type": "batch"}),
            Some(&env.root.clone()),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("batch"), "{err}");
}

#[tokio::test]
async fn a_revoked_or_unknown_token_looks_up_as_403_bad_token() {
    let env = Env::new().await;
    let t = env
        .token(r#"path "x/*" { capabilities = ["read"] }"#, 0)
        .await;
    env.root(Update, "auth/token/revoke", json!({ "token": t }))
        .await;
    for token in [t.as_str(), "khs.not-a-token"] {
        let err = env
            .call(
                Update,
                "auth/token/lookup",
                json!({ "token": token }),
                Some(&env.root.clone()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EngineError::Forbidden(m) if m == "bad token"),
            "{err:?}"
        );
        assert_eq!(err.code().http_status(), 403);
    }
}
