//! `sys/tools/random`, `sys/tools/hash` and `sys/metrics` through the core.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_engine::metrics::{MetricKind, SampleValue, Snapshot};
use keyhaven_engine::{ClientToken, Core, EngineError, ManualClock, Operation, Request, Response};
use keyhaven_storage::MemStore;
use serde_json::{Value, json};

use Operation::{Read, Update};

const ROOT: &str = "root-token-for-telemetry-tests";

async fn dev_core() -> Arc<Core> {
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let core = Core::new(Arc::new(MemStore::new()), clock).await.unwrap();
    core.dev_setup(Some(ROOT)).await.unwrap();
    core
}

fn req(op: Operation, path: &str, data: Value, token: Option<&str>) -> Request {
    Request {
        id: "test".into(),
        operation: op,
        path: path.into(),
        data: data.as_object().cloned().unwrap_or_default(),
        token: token.map(|t| ClientToken::new(t.to_owned())),
        remote_addr: None,
        client_certs: Vec::new(),
    }
}

async fn ok(core: &Core, op: Operation, path: &str, data: Value) -> Response {
    core.handle(req(op, path, data, Some(ROOT)))
        .await
        .unwrap_or_else(|e| panic!("{op} {path}: {e}"))
}

async fn token_with(core: &Core, policy: &str) -> String {
    ok(
        core,
        Update,
        "sys/policies/acl/p",
        json!({ "policy": policy }),
    )
    .await;
    let created = ok(
        core,
        Update,
        "auth/token/create",
        json!({"policies": ["p"], "no_default_policy": true}),
    )
    .await;
    created.auth.unwrap()["client_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn tools_answer_with_a_token_allowed_on_their_path() {
    let core = dev_core().await;
    let random = ok(&core, Update, "sys/tools/random", json!({})).await;
    let bytes = random.data.unwrap()["random_bytes"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(bytes.len(), 44, "32 bytes in base64");
    let hex = ok(
        &core,
        Update,
        "sys/tools/random/platform/16",
        json!({"format": "hex"}),
    )
    .await;
    assert_eq!(
        hex.data.unwrap()["random_bytes"].as_str().unwrap().len(),
        32
    );
    let hash = ok(
        &core,
        Update,
        "sys/tools/hash/sha2-256",
        json!({"input": "aGVsbG8="}),
    )
    .await;
    assert_eq!(
        hash.data.unwrap()["sum"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );

    // No token, or a token without the path: refused before anything runs.
    let e = core
        .handle(req(Update, "sys/tools/random", json!({}), None))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::PermissionDenied), "{e:?}");
    let token = token_with(
        &core,
        r#"path "sys/tools/hash" { capabilities = ["update"] }"#,
    )
    .await;
    let hashed = core
        .handle(req(
            Update,
            "sys/tools/hash",
            json!({"input": ""}),
            Some(&token),
        ))
        .await
        .unwrap();
    assert!(hashed.data.is_some());
    let e = core
        .handle(req(Update, "sys/tools/random", json!({}), Some(&token)))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::PermissionDenied), "{e:?}");

    let e = core
        .handle(req(Read, "sys/tools/random", json!({}), Some(ROOT)))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::UnsupportedOperation), "{e:?}");
}

fn family<'a>(s: &'a Snapshot, name: &str) -> Option<&'a keyhaven_engine::metrics::Family> {
    s.families.iter().find(|f| f.name == name)
}

fn number(s: &Snapshot, name: &str) -> f64 {
    match family(s, name)
        .unwrap_or_else(|| panic!("no {name}"))
        .samples[0]
        .value
    {
        SampleValue::Number(v) => v,
        SampleValue::Summary { .. } => panic!("{name} is a summary"),
    }
}

fn count(s: &Snapshot, name: &str) -> u64 {
    match family(s, name).map(|f| f.samples[0].value) {
        Some(SampleValue::Summary { count, .. }) => count,
        Some(SampleValue::Number(_)) => panic!("{name} is not a summary"),
        None => 0,
    }
}

#[tokio::test]
async fn requests_are_counted_by_class_mount_and_operation() {
    let core = dev_core().await;
    let before = core.metrics();
    ok(&core, Update, "sys/mounts/kv1", json!({"type": "kv"})).await;
    ok(
        &core,
        Update,
        "kv1/a",
        json!({"password": "hunter2-secret"}),
    )
    .await;
    ok(&core, Update, "kv1/b", json!({"k": "v"})).await;
    ok(&core, Read, "kv1/a", json!({})).await;
    ok(&core, Update, "secret/data/x", json!({"data": {"k": "v"}})).await;
    let _ = core
        .handle(req(Read, "kv1/a", json!({}), Some("not-a-token")))
        .await
        .unwrap_err();
    let after = core.metrics();

    assert_eq!(
        count(&after, "vault.core.handle_request") - count(&before, "vault.core.handle_request"),
        6
    );
    assert_eq!(count(&after, "vault.core.handle_login_request"), 0);
    // The refused read never reached the mount.
    assert_eq!(count(&after, "vault.route.update.kv1/"), 2);
    assert_eq!(count(&after, "vault.route.read.kv1/"), 1);
    assert_eq!(count(&after, "vault.route.update.secret/"), 1);
    assert_eq!(count(&after, "vault.route.update.sys/"), 1);
    assert!(count(&after, "vault.barrier.get") > count(&before, "vault.barrier.get"));
    assert!(
        count(&after, "vault.barrier.put") > 0,
        "kv v1 writes are puts"
    );
    assert!(
        count(&after, "vault.barrier.transaction") > 0,
        "kv v2 writes transact"
    );
    assert_eq!(number(&after, "vault.core.in_flight_requests"), 0.0);
    assert_eq!(number(&after, "vault.core.unsealed"), 1.0);
    assert_eq!(number(&after, "vault.core.active"), 1.0);
    assert!(
        family(&after, "vault.expire.num_leases").is_none(),
        "unknown until maintenance counted"
    );
    let mounts = family(&after, "vault.core.mount_table.num_entries").unwrap();
    assert_eq!(mounts.kind, MetricKind::Gauge);
    let logical = mounts
        .samples
        .iter()
        .find(|s| s.labels.contains(&("type", "logical".to_owned())))
        .unwrap();
    assert_eq!(
        logical.value,
        SampleValue::Number(4.0),
        "sys/, cubbyhole/, secret/, kv1/"
    );

    // Metrics carry neither secrets nor tokens nor request paths.
    let text = after.to_prometheus();
    for leak in ["hunter2-secret", ROOT, "not-a-token", "kv1/a"] {
        assert!(!text.contains(leak), "{leak} in the exposition");
    }
    assert!(
        text.contains("# TYPE vault_core_handle_request summary\n"),
        "{text}"
    );
    assert!(text.contains("vault_route_update_kv1__count 2\n"), "{text}");
    assert!(text.contains("vault_core_unsealed 1\n"), "{text}");
}

#[tokio::test]
async fn tokens_issued_and_live_are_counted() {
    let core = dev_core().await;
    assert!(
        family(&core.metrics(), "vault.token.count").is_none(),
        "unknown until maintenance counted"
    );
    ok(
        &core,
        Update,
        "auth/token/create",
        json!({"policies": ["default"]}),
    )
    .await;
    ok(&core, Update, "auth/token/create", json!({"ttl": "1h"})).await;
    core.maintenance().await.unwrap();
    let s = core.metrics();
    assert_eq!(
        number(&s, "vault.token.count"),
        3.0,
        "root and two children"
    );
    assert_eq!(number(&s, "vault.expire.num_leases"), 0.0);
    assert_eq!(number(&s, "vault.expire.num_irrevocable_leases"), 0.0);
    let created = family(&s, "vault.token.creation").unwrap();
    assert_eq!(created.samples.len(), 1);
    assert_eq!(
        created.samples[0].labels,
        vec![
            ("auth_method", "token".to_owned()),
            ("mount_point", "auth/token/".to_owned()),
            ("token_type", "service".to_owned()),
        ]
    );
    assert_eq!(created.samples[0].value, SampleValue::Number(2.0));
}

#[tokio::test]
async fn sys_metrics_needs_read_on_its_path_and_knows_two_formats() {
    let core = dev_core().await;
    let json = ok(&core, Read, "sys/metrics", json!({}))
        .await
        .data
        .unwrap();
    assert_eq!(json["Timestamp"], "2027-01-15 08:00:00 +0000 UTC");
    let gauges = json["Gauges"].as_array().unwrap();
    assert!(
        gauges
            .iter()
            .any(|g| g["Name"] == "vault.core.unsealed" && g["Value"] == 1.0),
        "{gauges:?}"
    );
    assert!(
        json["Samples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["Name"] == "vault.core.handle_request")
    );
    // Prometheus: the server writes the text; the engine authorizes and audits.
    let prom = ok(&core, Read, "sys/metrics", json!({"format": "prometheus"})).await;
    assert!(prom.is_empty());
    let e = core
        .handle(req(
            Read,
            "sys/metrics",
            json!({"format": "xml"}),
            Some(ROOT),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "metric response format \"xml\" unknown");

    let e = core
        .handle(req(Read, "sys/metrics", json!({}), None))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::PermissionDenied), "{e:?}");
    let token = token_with(&core, r#"path "sys/metrics" { capabilities = ["read"] }"#).await;
    core.handle(req(Read, "sys/metrics", json!({}), Some(&token)))
        .await
        .unwrap();
    let other = token_with(&core, r#"path "secret/*" { capabilities = ["read"] }"#).await;
    let e = core
        .handle(req(Read, "sys/metrics", json!({}), Some(&other)))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::PermissionDenied), "{e:?}");
}

#[tokio::test]
async fn a_sealed_server_reports_itself_sealed() {
    let core = dev_core().await;
    ok(&core, Read, "secret/config", json!({})).await;
    core.seal().await;
    let s = core.metrics();
    assert_eq!(number(&s, "vault.core.unsealed"), 0.0);
    assert_eq!(number(&s, "vault.core.active"), 0.0);
    assert!(family(&s, "vault.route.read.secret/").is_none());
    assert!(
        count(&s, "vault.core.handle_request") >= 1,
        "totals survive the seal"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_the_tools_metrics_and_kv_version_1() {
    let core = dev_core().await;
    ok(&core, Update, "sys/mounts/kv1", json!({"type": "kv"})).await;
    let doc = ok(&core, Read, "sys/internal/specs/openapi", json!({}))
        .await
        .data
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let methods = |path: &str| {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is missing"));
        ["get", "post", "delete", "patch"]
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect::<Vec<_>>()
    };
    for path in [
        "/sys/tools/random",
        "/sys/tools/random/{source}",
        "/sys/tools/random/{urlbytes}",
        "/sys/tools/random/{source}/{urlbytes}",
        "/sys/tools/hash",
        "/sys/tools/hash/{urlalgorithm}",
    ] {
        assert_eq!(methods(path), ["post"], "{path}");
    }
    assert_eq!(methods("/sys/metrics"), ["get"]);
    assert_eq!(methods("/kv1/{path}"), ["get", "post", "delete"]);
    // Each variant names only the segments it has.
    let params = |path: &str| -> Vec<String> {
        paths[path]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(params("/sys/tools/hash").is_empty());
    assert_eq!(params("/sys/tools/random/{urlbytes}"), ["urlbytes"]);
    assert_eq!(
        params("/sys/tools/random/{source}/{urlbytes}"),
        ["source", "urlbytes"]
    );
}
