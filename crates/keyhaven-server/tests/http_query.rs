//! The `/v1/` router in process (`Router` + `oneshot`): how the query string is read.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use keyhaven_engine::{Core, SystemClock};
use keyhaven_server::http::{AppState, router};
use keyhaven_storage::MemStore;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const ROOT: &str = "root-token-for-http-tests";

async fn app() -> axum::Router {
    let core = Core::new(Arc::new(MemStore::new()), Arc::new(SystemClock))
        .await
        .unwrap();
    core.dev_setup(Some(ROOT)).await.unwrap();
    router(AppState {
        core,
        storage_type: "inmem",
        unauthenticated_metrics: false,
        body: keyhaven_server::body::BodyLimits::new(
            32 << 20,
            64 * 1024,
            std::time::Duration::from_secs(30),
            256 << 20,
        ),
    })
}

async fn send(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-vault-token", ROOT);
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(serde_json::to_vec(&b).unwrap())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, json)
}

/// Regression (issue 10, item 11c): `?list=false&list=true` was served as a list, and any
/// parameter given twice was read as its first value, so what the request means depended
/// on which copy a proxy, a policy check or the handler looked at.
#[tokio::test]
async fn duplicate_query_parameters_accepted() {
    let app = app().await;
    let (s, _) = send(
        &app,
        "POST",
        "/v1/secret/data/app",
        Some(json!({"data": {"k": "v"}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for (method, uri, name) in [
        ("GET", "/v1/secret/metadata/?list=false&list=true", "list"),
        ("GET", "/v1/secret/metadata/?list=true&list=true", "list"),
        ("GET", "/v1/secret/data/app?version=1&version=2", "version"),
        ("LIST", "/v1/secret/metadata/?after=a&after=b", "after"),
        ("DELETE", "/v1/secret/data/app?x=1&x=2", "x"),
    ] {
        let (s, b) = send(&app, method, uri, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri}: {b}");
        assert_eq!(
            b["errors"],
            json!([format!("query parameter {name:?} is given more than once")]),
            "{method} {uri}"
        );
    }
    // One of each is fine.
    let (s, b) = send(&app, "GET", "/v1/secret/metadata/?list=true", None).await;
    assert_eq!((s, &b["data"]["keys"]), (StatusCode::OK, &json!(["app"])));
    let (s, _) = send(&app, "GET", "/v1/secret/data/app?version=1", None).await;
    assert_eq!(s, StatusCode::OK);
}

/// Regression (issue 10, item 11d): `auth/token/lookup?token=…` was served, so the token
/// ended up in proxy and access logs. A secret-bearing parameter in the query string is
/// refused, whatever the method; the body carries it.
#[tokio::test]
async fn token_in_query_string_accepted() {
    let app = app().await;
    for (method, uri) in [
        ("GET", format!("/v1/auth/token/lookup?token={ROOT}")),
        ("GET", format!("/v1/auth/token/lookup?%74oken={ROOT}")),
        ("POST", format!("/v1/auth/token/lookup?token={ROOT}")),
        ("POST", format!("/v1/auth/token/revoke?Token={ROOT}")),
        // Wrapping tokens are secrets too.
        ("GET", format!("/v1/sys/wrapping/lookup?token={ROOT}")),
        ("POST", format!("/v1/sys/wrapping/unwrap?token={ROOT}")),
    ] {
        let (s, b) = send(&app, method, &uri, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri}: {b}");
        let message = b["errors"][0].as_str().unwrap();
        assert!(
            message.contains("\"token\"") && message.contains("request body (POST)"),
            "{message}"
        );
        assert!(!message.contains(ROOT), "{message}");
    }
    // In the body it works, and the token is still valid (revoke was refused).
    let (s, b) = send(
        &app,
        "POST",
        "/v1/auth/token/lookup",
        Some(json!({"token": ROOT})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"]["policies"], json!(["root"]));
}

/// Regression (issue 10, item 7): one 27 MB request of a million `batch_input` items took
/// the server to 1.6 GB before any limit looked at it, because the whole body became a
/// JSON tree first. Now a large body's shape is checked before it is parsed, and the
/// answer names the limit and its config key.
#[tokio::test]
async fn a_million_item_batch_is_refused_before_it_is_parsed() {
    let app = app().await;
    let (s, _) = send(
        &app,
        "POST",
        "/v1/sys/mounts/transit",
        Some(json!({"type": "transit"})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let items: Vec<Value> = (0..1_000_000)
        .map(|_| json!({"plaintext": "aGk="}))
        .collect();
    let (s, b) = send(
        &app,
        "POST",
        "/v1/transit/encrypt/k",
        Some(json!({"batch_input": items})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(
        b["errors"],
        json!(["request body has an array of more than 10000 elements \
             (listener max_json_array_element_count)"])
    );
    // A batch within the limits is served.
    let items: Vec<Value> = (0..5_000).map(|_| json!({"plaintext": "aGk="})).collect();
    let (s, b) = send(
        &app,
        "POST",
        "/v1/transit/encrypt/k",
        Some(json!({"batch_input": items})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"]["batch_results"].as_array().unwrap().len(), 5_000);
}

/// hvac's `Client.list()` sends `?list=True`; Go's ParseBool spellings all list, an empty
/// value reads, and anything else is refused rather than read as a GET.
#[tokio::test]
async fn list_flag_parses_as_gos_parse_bool() {
    let app = app().await;
    let (s, _) = send(
        &app,
        "POST",
        "/v1/secret/data/a/b",
        Some(json!({"data": {"k": "v"}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for v in ["True", "TRUE", "true", "t", "T", "1"] {
        let (s, body) = send(
            &app,
            "GET",
            &format!("/v1/secret/metadata/a?list={v}"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "list={v}: {body}");
        assert_eq!(body["data"]["keys"], json!(["b"]), "list={v}");
    }
    for v in ["", "false", "False", "0"] {
        let (s, _) = send(
            &app,
            "GET",
            &format!("/v1/secret/metadata/a?list={v}"),
            None,
        )
        .await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "list={v} reads the metadata of a/"
        );
    }
    for v in ["tRuE", "yes", "2"] {
        let (s, body) = send(
            &app,
            "GET",
            &format!("/v1/secret/metadata/a?list={v}"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "list={v}");
        assert!(
            body["errors"][0].as_str().unwrap().contains("\"list\""),
            "{body}"
        );
    }
}

/// keyhaven has only the root namespace: a request naming another is refused on every
/// path, those the server answers itself included, never answered from the root.
#[tokio::test]
async fn a_namespace_header_is_refused_not_answered_from_the_root() {
    let app = app().await;
    for uri in [
        "/v1/secret/data/app",
        "/v1/sys/mounts",
        "/v1/sys/seal-status",
        "/v1/sys/health",
        "/v1/sys/init",
    ] {
        let req = Request::builder()
            .method("GET")
            .uri(uri)
            .header("x-vault-token", ROOT)
            .header("x-vault-namespace", "team-a")
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{uri}");
        let body: Value =
            serde_json::from_slice(&to_bytes(resp.into_body(), 1 << 20).await.unwrap()).unwrap();
        let msg = body["errors"][0].as_str().unwrap();
        assert!(
            msg.contains("namespace") && msg.contains("team-a"),
            "{uri}: {msg}"
        );
    }
    for root in ["", "/", "root/"] {
        let req = Request::builder()
            .method("GET")
            .uri("/v1/sys/mounts")
            .header("x-vault-token", ROOT)
            .header("x-vault-namespace", root)
            .body(Body::empty())
            .unwrap();
        let status = app.clone().oneshot(req).await.unwrap().status();
        let want = if root == "root/" {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        assert_eq!(status, want, "namespace {root:?}");
    }
}
