//! `sys/metrics` on the wire (Router + `oneshot`): formats, content types, who may read,
//! and KV version 1's `lease_duration` in the envelope.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use keyhaven_engine::{Core, SystemClock};
use keyhaven_server::http::{AppState, router};
use keyhaven_storage::MemStore;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const ROOT: &str = "root-token-for-metrics-tests";

async fn app(unauthenticated_metrics: bool) -> axum::Router {
    let core = Core::new(Arc::new(MemStore::new()), Arc::new(SystemClock))
        .await
        .unwrap();
    core.dev_setup(Some(ROOT)).await.unwrap();
    router(AppState {
        core,
        storage_type: "inmem",
        unauthenticated_metrics,
        body: keyhaven_server::body::BodyLimits::new(
            32 << 20,
            64 * 1024,
            std::time::Duration::from_secs(30),
            256 << 20,
        ),
    })
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
}

async fn send(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    accept: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("x-vault-token", t);
    }
    if let Some(a) = accept {
        req = req.header(header::ACCEPT, a);
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(serde_json::to_vec(&b).unwrap()));
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    Answer {
        status,
        content_type,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

#[tokio::test]
async fn metrics_need_a_token_by_default_and_come_in_two_formats() {
    let app = app(false).await;
    let denied = send(
        &app,
        "GET",
        "/v1/sys/metrics?format=prometheus",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        serde_json::from_str::<Value>(&denied.body).unwrap(),
        json!({"errors": ["permission denied"]})
    );

    let prom = send(
        &app,
        "GET",
        "/v1/sys/metrics?format=prometheus",
        Some(ROOT),
        None,
        None,
    )
    .await;
    assert_eq!(prom.status, StatusCode::OK);
    assert_eq!(prom.content_type, PROMETHEUS);
    assert!(
        prom.body
            .contains("# TYPE vault_core_unsealed gauge\nvault_core_unsealed 1\n"),
        "{}",
        prom.body
    );
    assert!(
        prom.body.contains("vault_core_handle_request_count "),
        "{}",
        prom.body
    );
    assert!(!prom.body.contains(ROOT));
    // Every line is a comment or `name[{labels}] value`.
    for line in prom.body.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
    }

    // The Accept header of a Prometheus scraper selects the text format too.
    let scraped = send(
        &app,
        "GET",
        "/v1/sys/metrics",
        Some(ROOT),
        Some("application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        None,
    )
    .await;
    assert_eq!(scraped.content_type, PROMETHEUS);

    let json = send(&app, "GET", "/v1/sys/metrics", Some(ROOT), None, None).await;
    assert_eq!(json.status, StatusCode::OK);
    assert_eq!(json.content_type, "application/json");
    let v: Value = serde_json::from_str(&json.body).unwrap();
    assert!(v["Gauges"].is_array() && v["Counters"].is_array(), "{v}");
    assert!(
        v.get("request_id").is_none(),
        "the dump itself, not an envelope"
    );

    let unknown = send(
        &app,
        "GET",
        "/v1/sys/metrics?format=xml",
        Some(ROOT),
        None,
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.content_type, "text/plain");
    assert_eq!(unknown.body, "metric response format \"xml\" unknown");

    let post = send(
        &app,
        "POST",
        "/v1/sys/metrics",
        Some(ROOT),
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn unauthenticated_metrics_access_needs_no_token() {
    let app = app(true).await;
    let prom = send(
        &app,
        "GET",
        "/v1/sys/metrics?format=prometheus",
        None,
        None,
        None,
    )
    .await;
    assert_eq!(prom.status, StatusCode::OK);
    assert_eq!(prom.content_type, PROMETHEUS);
    let json = send(&app, "GET", "/v1/sys/metrics", None, None, None).await;
    assert_eq!(json.status, StatusCode::OK);
    let unknown = send(&app, "GET", "/v1/sys/metrics?format=xml", None, None, None).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.body, "metric response format \"xml\" unknown");
    // Only sys/metrics: everything else still needs a token.
    let other = send(&app, "GET", "/v1/sys/mounts", None, None, None).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_kv_version_1_read_carries_its_refresh_interval() {
    let app = app(false).await;
    let enabled = send(
        &app,
        "POST",
        "/v1/sys/mounts/kv1",
        Some(ROOT),
        None,
        Some(json!({"type": "kv"})),
    )
    .await;
    assert_eq!(enabled.status, StatusCode::NO_CONTENT);
    for (path, body) in [
        ("/v1/kv1/plain", json!({"a": "b"})),
        ("/v1/kv1/hinted", json!({"a": "b", "ttl": "1h"})),
    ] {
        let w = send(&app, "POST", path, Some(ROOT), None, Some(body)).await;
        assert_eq!(w.status, StatusCode::NO_CONTENT);
    }
    for (path, ttl) in [("/v1/kv1/plain", 2_764_800), ("/v1/kv1/hinted", 3600)] {
        let r = send(&app, "GET", path, Some(ROOT), None, None).await;
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["lease_duration"], ttl, "{v}");
        assert_eq!(
            (&v["lease_id"], &v["renewable"]),
            (&json!(""), &json!(false))
        );
        assert_eq!(v["data"]["a"], "b");
    }
    let missing = send(&app, "GET", "/v1/kv1/none", Some(ROOT), None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body, r#"{"errors":[]}"#);
}
