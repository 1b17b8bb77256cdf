//! The `kubernetes` auth method through the server's real outbound HTTPS: an in-test
//! Kubernetes API server (rcgen CA, rustls, axum) that speaks TokenReview and OIDC
//! discovery, and the limits of the outbound client.

#[path = "../../keyhaven-engine/tests/kubernetes/issuer.rs"]
mod issuer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use issuer::{Alg, Issuer, sa_claims};
use keyhaven_engine::auth::Outbound;
use keyhaven_engine::{
    ClientToken, Clock, Core, CoreOptions, EngineError, ManualClock, Operation, Request,
};
use keyhaven_server::outbound::{HttpOutbound, MAX_RESPONSE_BYTES};
use keyhaven_storage::MemStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

const REVIEWER: &str = "reviewer.jwt.token";

/// What the fake API server saw: (Authorization header, request body).
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

#[derive(Clone)]
struct ApiState {
    base: String,
    jwks: Value,
    seen: Seen,
}

async fn token_review(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    st.seen.lock().unwrap().push((auth.clone(), body.clone()));
    if auth != format!("Bearer {REVIEWER}") {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"kind": "Status", "code": 403})),
        )
            .into_response();
    }
    let token = body["spec"]["token"].as_str().unwrap_or("");
    let audiences = body["spec"]["audiences"].clone();
    let (authenticated, username) = match token {
        "pod.app.valid" => (true, "system:serviceaccount:team-a:app"),
        "pod.app.other" => (true, "system:serviceaccount:team-a:other"),
        "pod.app.otherns" => (true, "system:serviceaccount:team-b:app"),
        _ => (false, ""),
    };
    let status = if authenticated {
        json!({
            "authenticated": true,
            "user": {"username": username, "uid": "sa-uid-1", "groups": ["system:serviceaccounts"]},
            "audiences": audiences,
        })
    } else {
        json!({"authenticated": false, "error": "token has been invalidated"})
    };
    (
        StatusCode::CREATED,
        Json(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status})),
    )
        .into_response()
}

async fn discovery(State(st): State<ApiState>) -> Json<Value> {
    Json(json!({
        "issuer": st.base,
        "jwks_uri": format!("{}/openid/v1/jwks", st.base),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
}

async fn jwks(State(st): State<ApiState>) -> Json<Value> {
    Json(st.jwks.clone())
}

async fn big() -> String {
    format!("\"{}\"", "x".repeat(MAX_RESPONSE_BYTES + 10))
}

/// An HTTPS server on 127.0.0.1 with a certificate from a fresh CA.
struct FakeApiServer {
    base: String,
    ca_pem: String,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the fake API server's certificate is made.
enum ServerCert {
    /// A leaf for 127.0.0.1 issued by a fresh CA; `ca_pem` is the CA.
    FromCa,
    /// One self-signed certificate marked as a CA, for the given names and validity, that
    /// the server presents itself (as some clusters' API servers do); `ca_pem` is it.
    SelfSignedCa {
        names: &'static [&'static str],
        expired: bool,
    },
}

async fn start_api_server(jwks_doc: Value) -> FakeApiServer {
    start_api_server_with(jwks_doc, ServerCert::FromCa).await
}

fn ca_params(names: &[&str]) -> rcgen::CertificateParams {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test cluster CA");
    params
}

async fn start_api_server_with(jwks_doc: Value, cert: ServerCert) -> FakeApiServer {
    let (leaf_der, leaf_key, ca_pem) = match cert {
        ServerCert::FromCa => {
            let ca = rcgen::CertifiedIssuer::self_signed(
                ca_params(&[]),
                rcgen::KeyPair::generate().unwrap(),
            )
            .unwrap();
            let leaf_key = rcgen::KeyPair::generate().unwrap();
            let leaf_params =
                rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                    .unwrap();
            let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
            (leaf.der().to_vec(), leaf_key, ca.pem())
        }
        ServerCert::SelfSignedCa { names, expired } => {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = ca_params(names);
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = params.self_signed(&key).unwrap();
            (cert.der().to_vec(), key, cert.pem())
        }
    };

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let base = format!("https://127.0.0.1:{}", addr.port());
    let seen: Seen = Arc::default();
    let state = ApiState {
        base: base.clone(),
        jwks: jwks_doc,
        seen: seen.clone(),
    };
    let app = axum::Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/openid/v1/jwks", get(jwks))
        .route(
            "/redirect",
            get(|| async { Redirect::temporary("/openid/v1/jwks") }),
        )
        .route("/big", get(big))
        .with_state(state);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    FakeApiServer {
        base,
        ca_pem,
        seen,
        task,
    }
}

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
        let outbound: Arc<dyn Outbound> = Arc::new(HttpOutbound::new());
        let core = Core::with_options(
            Arc::new(MemStore::new()),
            clock.clone(),
            CoreOptions {
                outbound: Some(outbound),
                ..CoreOptions::default()
            },
        )
        .await
        .unwrap();
        let root = core
            .dev_setup(None)
            .await
            .unwrap()
            .root_token
            .expose_secret()
            .to_owned();
        Env { core, clock, root }
    }

    async fn call(
        &self,
        op: Operation,
        path: &str,
        data: Value,
        token: Option<&str>,
    ) -> Result<keyhaven_engine::Response, EngineError> {
        let data: Map<String, Value> = data.as_object().cloned().unwrap_or_default();
        self.core
            .handle(Request {
                id: "t".into(),
                operation: op,
                path: path.into(),
                data,
                token: token.map(|t| ClientToken::new(t.to_owned())),
                remote_addr: None,
                client_certs: Vec::new(),
            })
            .await
    }

    async fn root(&self, op: Operation, path: &str, data: Value) {
        let root = self.root.clone();
        if let Err(e) = self.call(op, path, data, Some(&root)).await {
            panic!("{op} {path}: {e}");
        }
    }

    async fn setup(&self, config: Value) {
        self.root(
            Operation::Update,
            "sys/auth/kubernetes",
            json!({"type": "kubernetes"}),
        )
        .await;
        self.root(Operation::Update, "auth/kubernetes/config", config)
            .await;
        self.root(
            Operation::Update,
            "auth/kubernetes/role/app",
            json!({
                "bound_service_account_names": "app",
                "bound_service_account_namespaces": "team-a",
                "audience": "keyhaven",
                "token_policies": "default",
                "token_ttl": "5m",
            }),
        )
        .await;
    }

    async fn login(&self, jwt: &str) -> Result<Map<String, Value>, EngineError> {
        let resp = self
            .call(
                Operation::Update,
                "auth/kubernetes/login",
                json!({"role": "app", "jwt": jwt}),
                None,
            )
            .await?;
        Ok(resp.auth.unwrap())
    }
}

#[tokio::test]
async fn token_review_over_https_with_the_cluster_ca() {
    let api = start_api_server(json!({"keys": []})).await;
    let env = Env::new().await;
    env.setup(json!({
        "kubernetes_host": api.base,
        "kubernetes_ca_cert": api.ca_pem,
        "token_reviewer_jwt": REVIEWER,
    }))
    .await;

    let auth = env.login("pod.app.valid").await.unwrap();
    assert_eq!(auth["metadata"]["service_account_namespace"], "team-a");
    assert_eq!(auth["metadata"]["service_account_uid"], "sa-uid-1");
    {
        let seen = api.seen.lock().unwrap();
        let (authz, body) = seen.last().unwrap();
        assert_eq!(authz, &format!("Bearer {REVIEWER}"));
        assert_eq!(body["kind"], "TokenReview");
        assert_eq!(body["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(body["spec"]["token"], "pod.app.valid");
        assert_eq!(body["spec"]["audiences"], json!(["keyhaven"]));
    }
    for (jwt, case) in [
        ("pod.app.revoked", "not authenticated (revoked)"),
        ("pod.app.other", "another service account"),
        ("pod.app.otherns", "another namespace"),
    ] {
        let r = env.login(jwt).await;
        assert!(
            matches!(r, Err(EngineError::PermissionDenied)),
            "{case}: {r:?}"
        );
    }
}

/// Some API servers present one self-signed certificate marked as a CA, and that
/// certificate is what operators give as `kubernetes_ca_cert`. OpenBao (Go's crypto/x509)
/// trusts a server certificate that is itself in the configured bundle; WebPKI alone would
/// refuse a CA certificate as an end entity. The pin is exact: the same certificate, within
/// its validity, for the host dialled.
#[tokio::test]
async fn a_self_signed_ca_certificate_of_the_api_server_is_trusted_as_given() {
    let api = start_api_server_with(
        json!({"keys": []}),
        ServerCert::SelfSignedCa {
            names: &["127.0.0.1", "localhost"],
            expired: false,
        },
    )
    .await;
    let env = Env::new().await;
    env.setup(json!({
        "kubernetes_host": api.base,
        "kubernetes_ca_cert": api.ca_pem,
        "token_reviewer_jwt": REVIEWER,
    }))
    .await;
    let auth = env.login("pod.app.valid").await.unwrap();
    assert_eq!(auth["metadata"]["service_account_name"], "app");
    assert_eq!(api.seen.lock().unwrap().len(), 1);

    // Another self-signed CA certificate with the same subject and names is not the pin.
    let impostor = start_api_server_with(
        json!({"keys": []}),
        ServerCert::SelfSignedCa {
            names: &["127.0.0.1", "localhost"],
            expired: false,
        },
    )
    .await;
    // A pinned certificate for other names, or out of its validity period, is refused.
    let wrong_name = start_api_server_with(
        json!({"keys": []}),
        ServerCert::SelfSignedCa {
            names: &["kubernetes.example"],
            expired: false,
        },
    )
    .await;
    let expired = start_api_server_with(
        json!({"keys": []}),
        ServerCert::SelfSignedCa {
            names: &["127.0.0.1"],
            expired: true,
        },
    )
    .await;
    for (case, host, ca) in [
        ("another certificate", &impostor.base, &api.ca_pem),
        ("other names", &wrong_name.base, &wrong_name.ca_pem),
        ("expired", &expired.base, &expired.ca_pem),
    ] {
        env.root(
            Operation::Update,
            "auth/kubernetes/config",
            json!({"kubernetes_host": host, "kubernetes_ca_cert": ca, "token_reviewer_jwt": REVIEWER}),
        )
        .await;
        let r = env.login("pod.app.valid").await;
        assert!(
            matches!(r, Err(EngineError::Unavailable(_))),
            "{case}: {r:?}"
        );
    }
    for server in [&impostor, &wrong_name, &expired] {
        assert!(
            server.seen.lock().unwrap().is_empty(),
            "no request may reach an untrusted server"
        );
    }
}

#[tokio::test]
async fn token_review_without_the_cluster_ca_is_not_trusted() {
    let api = start_api_server(json!({"keys": []})).await;
    let env = Env::new().await;
    env.setup(json!({"kubernetes_host": api.base, "token_reviewer_jwt": REVIEWER}))
        .await;
    let r = env.login("pod.app.valid").await;
    assert!(matches!(r, Err(EngineError::Unavailable(_))), "{r:?}");
    assert!(
        api.seen.lock().unwrap().is_empty(),
        "no request may reach an untrusted server"
    );

    // With another CA than the server's, the same.
    let other = start_api_server(json!({"keys": []})).await;
    env.root(
        Operation::Update,
        "auth/kubernetes/config",
        json!({"kubernetes_host": api.base, "kubernetes_ca_cert": other.ca_pem, "token_reviewer_jwt": REVIEWER}),
    )
    .await;
    let r = env.login("pod.app.valid").await;
    assert!(matches!(r, Err(EngineError::Unavailable(_))), "{r:?}");

    // A reviewer credential the API server refuses is an operator error.
    env.root(
        Operation::Update,
        "auth/kubernetes/config",
        json!({"kubernetes_host": api.base, "kubernetes_ca_cert": api.ca_pem, "token_reviewer_jwt": "wrong.reviewer.jwt"}),
    )
    .await;
    let r = env.login("pod.app.valid").await;
    assert!(matches!(r, Err(EngineError::Unavailable(_))), "{r:?}");
}

#[tokio::test]
async fn oidc_discovery_over_https() {
    let issuer = Issuer::new("unused");
    let api = start_api_server(issuer.jwks()).await;
    let env = Env::new().await;
    env.setup(json!({"oidc_discovery_url": api.base, "oidc_discovery_ca_pem": api.ca_pem}))
        .await;
    for alg in [Alg::Rs256, Alg::Es256] {
        let claims = sa_claims(
            &api.base,
            "team-a",
            "app",
            &["keyhaven"],
            env.clock.unix_seconds(),
        );
        let auth = env.login(&issuer.sign(alg, &claims)).await.unwrap();
        assert_eq!(auth["metadata"]["service_account_name"], "app");
    }
    let wrong_iss = sa_claims(
        "https://elsewhere",
        "team-a",
        "app",
        &["keyhaven"],
        env.clock.unix_seconds(),
    );
    let r = env.login(&issuer.sign(Alg::Rs256, &wrong_iss)).await;
    assert!(matches!(r, Err(EngineError::PermissionDenied)), "{r:?}");
}

#[tokio::test]
async fn outbound_is_https_only_bounded_and_follows_no_redirects() {
    let api = start_api_server(json!({"keys": []})).await;
    let out = HttpOutbound::new();
    let ca = Some(api.ca_pem.as_str());
    let ok = out
        .get_json(&format!("{}/openid/v1/jwks", api.base), ca)
        .await
        .unwrap();
    assert_eq!((ok.status, ok.body.clone()), (200, json!({"keys": []})));
    let redirect = out
        .get_json(&format!("{}/redirect", api.base), ca)
        .await
        .unwrap();
    assert_eq!(redirect.status, 307, "redirects are returned, not followed");
    let big = out.get_json(&format!("{}/big", api.base), ca).await;
    assert!(matches!(big, Err(EngineError::Unavailable(_))), "{big:?}");
    let plain = out
        .get_json(&api.base.replace("https://", "http://"), ca)
        .await;
    assert!(
        matches!(plain, Err(EngineError::Unavailable(_))),
        "{plain:?}"
    );
    let bad_ca = out.get_json(&api.base, Some("not a certificate")).await;
    assert!(
        matches!(bad_ca, Err(EngineError::Unavailable(_))),
        "{bad_ca:?}"
    );
    // Errors never carry the bearer token.
    let err = out
        .post_json(
            "https://127.0.0.1:1/x",
            ca,
            Some("secret-bearer-value"),
            &json!({"spec": {"token": "secret-body"}}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("secret-bearer-value") && !err.contains("secret-body"),
        "{err}"
    );
}
