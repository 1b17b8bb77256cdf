//! KV version 1 through the core: mount types and options as OpenBao records them, plain
//! path semantics, the refresh interval, version tuning, policies and storage at rest.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_engine::{
    ClientToken, Core, EngineError, LeaseDuration, ManualClock, Operation, Request, Response,
};
use keyhaven_storage::{MemStore, Store};
use serde_json::{Map, Value, json};

use Operation::{Delete, List, Patch, Read, Update};

const ROOT: &str = "root-token-for-tests";

async fn dev_core() -> (Arc<Core>, Arc<MemStore>) {
    let store = Arc::new(MemStore::new());
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let core = Core::new(store.clone(), clock).await.unwrap();
    core.dev_setup(Some(ROOT)).await.unwrap();
    (core, store)
}

fn req(op: Operation, path: &str, data: Value, token: &str) -> Request {
    Request {
        id: "test".into(),
        operation: op,
        path: path.into(),
        data: data.as_object().cloned().unwrap_or_default(),
        token: Some(ClientToken::new(token.to_owned())),
        remote_addr: None,
        client_certs: Vec::new(),
    }
}

async fn call(
    core: &Core,
    op: Operation,
    path: &str,
    data: Value,
) -> Result<Response, EngineError> {
    core.handle(req(op, path, data, ROOT)).await
}

async fn ok(core: &Core, op: Operation, path: &str, data: Value) -> Response {
    call(core, op, path, data)
        .await
        .unwrap_or_else(|e| panic!("{op} {path}: {e}"))
}

async fn err(core: &Core, op: Operation, path: &str, data: Value) -> EngineError {
    match call(core, op, path, data).await {
        Ok(r) => panic!("{op} {path} succeeded: {r:?}"),
        Err(e) => e,
    }
}

fn data(resp: Response) -> Map<String, Value> {
    resp.data.expect("data")
}

#[tokio::test]
async fn kv_mounts_record_their_version_as_openbao_does() {
    let (core, _) = dev_core().await;
    ok(&core, Update, "sys/mounts/plain", json!({"type": "kv"})).await;
    ok(
        &core,
        Update,
        "sys/mounts/one",
        json!({"type": "kv", "options": {"version": "1"}}),
    )
    .await;
    ok(
        &core,
        Update,
        "sys/mounts/num",
        json!({"type": "kv", "options": {"version": 1}}),
    )
    .await;
    ok(&core, Update, "sys/mounts/legacy", json!({"type": "kv-v1"})).await;
    ok(
        &core,
        Update,
        "sys/mounts/two",
        json!({"type": "kv", "options": {"version": "2"}}),
    )
    .await;
    let e = err(
        &core,
        Update,
        "sys/mounts/three",
        json!({"type": "kv", "options": {"version": "3"}}),
    )
    .await;
    assert!(
        matches!(e, EngineError::InvalidRequest(_)) && e.to_string().contains("kv version"),
        "{e}"
    );

    let mounts = data(ok(&core, Read, "sys/mounts", json!({})).await);
    assert_eq!(mounts["plain/"]["options"], Value::Null);
    assert_eq!(mounts["one/"]["options"], json!({"version": "1"}));
    assert_eq!(mounts["num/"]["options"], json!({"version": "1"}));
    assert_eq!(mounts["legacy/"]["options"], json!({"version": "1"}));
    assert_eq!(mounts["two/"]["options"], json!({"version": "2"}));
    assert!(mounts.get("three/").is_none(), "nothing mounted");

    // What `bao kv` asks to learn the version: no options.version means version 1.
    let ui = data(ok(&core, Read, "sys/internal/ui/mounts/plain/app", json!({})).await);
    assert_eq!(
        (&ui["type"], &ui["options"], &ui["path"]),
        (&json!("kv"), &Value::Null, &json!("plain/"))
    );
    let ui = data(ok(&core, Read, "sys/internal/ui/mounts/one", json!({})).await);
    assert_eq!(ui["options"]["version"], "1");
}

#[tokio::test]
async fn version_1_stores_whole_objects_at_plain_paths() {
    let (core, _) = dev_core().await;
    ok(&core, Update, "sys/mounts/kv1", json!({"type": "kv"})).await;
    let secret = json!({"a": "b", "n": 1, "o": {"x": [1, 2]}, "nul": null});
    let written = ok(&core, Update, "kv1/foo", secret.clone()).await;
    assert!(written.is_empty(), "a write answers 204");
    let read = ok(&core, Read, "kv1/foo", json!({})).await;
    assert_eq!(read.lease_duration, Some(LeaseDuration::Seconds(2_764_800)));
    assert_eq!(Value::Object(data(read)), secret);

    // A write replaces the whole object.
    ok(&core, Update, "kv1/foo", json!({"only": "this"})).await;
    assert_eq!(
        Value::Object(data(ok(&core, Read, "kv1/foo", json!({})).await)),
        json!({"only": "this"})
    );

    ok(&core, Update, "kv1/dir/sub/x", json!({"k": "v"})).await;
    for prefix in ["kv1/", "kv1"] {
        let keys = data(ok(&core, List, prefix, json!({})).await);
        assert_eq!(keys["keys"], json!(["dir/", "foo"]), "{prefix}");
    }
    for prefix in ["kv1/dir", "kv1/dir/"] {
        let keys = data(ok(&core, List, prefix, json!({})).await);
        assert_eq!(keys["keys"], json!(["sub/"]), "{prefix}");
    }
    let e = err(&core, List, "kv1/none/", json!({})).await;
    assert!(
        matches!(&e, EngineError::NotFound(m) if m.is_empty()),
        "{e:?}"
    );

    // Vault's messages for what cannot be written; nothing is written.
    for (path, body, message) in [
        ("kv1/empty", json!({}), "missing data fields"),
        (
            "kv1/dir/",
            json!({"a": "b"}),
            "cannot write to a path ending in '/'",
        ),
        ("kv1", json!({"a": "b"}), "missing path"),
        ("kv1/a/../b", json!({"a": "b"}), "\"..\""),
    ] {
        let e = err(&core, Update, path, body).await;
        assert!(
            matches!(e, EngineError::InvalidRequest(_)) && e.to_string().contains(message),
            "{path}: {e}"
        );
    }
    let e = err(&core, Read, "kv1/empty", json!({})).await;
    assert!(
        matches!(&e, EngineError::NotFound(m) if m.is_empty()),
        "{e:?}"
    );

    // No versions: PATCH is not served.
    let e = err(&core, Patch, "kv1/foo", json!({"a": "c"})).await;
    assert!(matches!(e, EngineError::UnsupportedOperation), "{e:?}");

    // Delete is idempotent, the mount itself included.
    for _ in 0..2 {
        assert!(ok(&core, Delete, "kv1/foo", json!({})).await.is_empty());
    }
    ok(&core, Delete, "kv1/", json!({})).await;
    let e = err(&core, Read, "kv1/foo", json!({})).await;
    assert!(
        matches!(&e, EngineError::NotFound(m) if m.is_empty()),
        "{e:?}"
    );
    let keys = data(ok(&core, List, "kv1/", json!({})).await);
    assert_eq!(keys["keys"], json!(["dir/"]));

    // A read takes no parameters: Vault's warning names them.
    let read = ok(&core, Read, "kv1/dir/sub/x", json!({"foo": "bar"})).await;
    assert_eq!(
        read.warnings,
        vec!["Endpoint ignored these unrecognized parameters: [foo]".to_owned()]
    );
}

#[tokio::test]
async fn the_refresh_interval_is_the_ttl_field_or_the_mounts_default() {
    let (core, _) = dev_core().await;
    ok(&core, Update, "sys/mounts/kv1", json!({"type": "kv"})).await;
    ok(&core, Update, "kv1/t", json!({"a": "b", "ttl": "1h"})).await;
    ok(&core, Update, "kv1/d", json!({"a": "b"})).await;
    let ttl = |r: Response| r.lease_duration.map(LeaseDuration::seconds);
    assert_eq!(ttl(ok(&core, Read, "kv1/t", json!({})).await), Some(3600));
    assert_eq!(
        ttl(ok(&core, Read, "kv1/d", json!({})).await),
        Some(2_764_800)
    );
    ok(
        &core,
        Update,
        "sys/mounts/kv1/tune",
        json!({"default_lease_ttl": "10m"}),
    )
    .await;
    assert_eq!(ttl(ok(&core, Read, "kv1/d", json!({})).await), Some(600));
    assert_eq!(ttl(ok(&core, Read, "kv1/t", json!({})).await), Some(3600));
    // KV version 2 answers without one.
    ok(&core, Update, "secret/data/x", json!({"data": {"a": "b"}})).await;
    assert_eq!(ttl(ok(&core, Read, "secret/data/x", json!({})).await), None);
}

#[tokio::test]
async fn versions_are_not_changed_in_place_and_no_secret_is_lost() {
    let (core, _) = dev_core().await;
    ok(&core, Update, "sys/mounts/kv1", json!({"type": "kv"})).await;
    ok(&core, Update, "kv1/keep", json!({"a": "b"})).await;
    let e = err(
        &core,
        Update,
        "sys/mounts/kv1/tune",
        json!({"options": {"version": "2"}}),
    )
    .await;
    assert!(
        matches!(e, EngineError::InvalidRequest(_)) && e.to_string().contains("not supported"),
        "{e}"
    );
    assert_eq!(
        data(ok(&core, Read, "kv1/keep", json!({})).await)["a"],
        "b",
        "the secret is still served by version 1"
    );
    let mounts = data(ok(&core, Read, "sys/mounts", json!({})).await);
    assert_eq!(mounts["kv1/"]["options"], Value::Null);
    // The same version is accepted; going back from 2 is OpenBao's refusal.
    ok(
        &core,
        Update,
        "sys/mounts/kv1/tune",
        json!({"options": {"version": "1"}}),
    )
    .await;
    let e = err(
        &core,
        Update,
        "sys/mounts/secret/tune",
        json!({"options": {"version": "1"}}),
    )
    .await;
    assert_eq!(e.to_string(), "cannot downgrade mount from version 2");
    let e = err(
        &core,
        Update,
        "sys/mounts/secret/tune",
        json!({"options": {"version": "7"}}),
    )
    .await;
    assert_eq!(e.to_string(), "invalid version provided: 7");
}

#[tokio::test]
async fn policies_see_create_and_update_on_version_1_paths() {
    let (core, _) = dev_core().await;
    ok(&core, Update, "sys/mounts/kv1", json!({"type": "kv"})).await;
    ok(&core, Update, "kv1/existing", json!({"v": "1"})).await;
    ok(
        &core,
        Update,
        "sys/policies/acl/creator",
        json!({"policy": r#"path "kv1/*" { capabilities = ["create", "read", "list"] }"#}),
    )
    .await;
    let token = data_auth(
        ok(
            &core,
            Update,
            "auth/token/create",
            json!({"policies": ["creator"]}),
        )
        .await,
    );
    let as_creator = |op, path: &str, body: Value| core.handle(req(op, path, body, &token));
    as_creator(Update, "kv1/new", json!({"v": "1"}))
        .await
        .unwrap();
    let e = as_creator(Update, "kv1/existing", json!({"v": "2"}))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::PermissionDenied), "{e:?}");
    let read = as_creator(Read, "kv1/existing", json!({})).await.unwrap();
    assert_eq!(read.data.unwrap()["v"], "1", "the overwrite was refused");
}

fn data_auth(resp: Response) -> String {
    resp.auth.expect("auth")["client_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every key in `store`, walking folders.
async fn all_keys(store: &MemStore) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        for name in store.list_page(&dir, None, usize::MAX).await.unwrap() {
            let full = format!("{dir}{name}");
            if name.ends_with('/') {
                stack.push(full);
            } else {
                out.push(full);
            }
        }
    }
    out
}

#[tokio::test]
async fn version_1_secrets_are_encrypted_at_rest() {
    let (core, store) = dev_core().await;
    ok(&core, Update, "sys/mounts/kv1", json!({"type": "kv"})).await;
    let marker = "plaintext-marker-4f1d9c";
    ok(&core, Update, "kv1/app/db", json!({"password": marker})).await;
    let keys = all_keys(&store).await;
    assert!(keys.iter().any(|k| k.ends_with("kv/app/db")), "{keys:?}");
    for key in keys {
        let value = store.get(&key).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&value);
        assert!(
            !text.contains(marker),
            "{key} holds the secret in plaintext"
        );
        assert!(
            !text.contains("password"),
            "{key} holds the field name in plaintext"
        );
    }
}
