//! The `kubernetes` and `jwt` auth methods through `Core`, with a test issuer whose keys
//! are made here: offline validation (PEM keys, inline JWKS, OIDC discovery through a
//! fake outbound), TokenReview semantics, and the forgeries every login must refuse.

mod issuer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use issuer::{Alg, Issuer, sa_claims};
use keyhaven_engine::auth::{Outbound, OutboundResponse};
use keyhaven_engine::{
    ClientToken, Clock, Core, CoreOptions, EngineError, ManualClock, Operation, Request, Response,
};
use keyhaven_storage::MemStore;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

const ISS: &str = "https://kubernetes.default.svc.cluster.local";

struct Env {
    core: Arc<Core>,
    clock: Arc<ManualClock>,
    root: String,
    issuer: Issuer,
}

impl Env {
    async fn new() -> Env {
        Self::with_outbound(None).await
    }

    async fn with_outbound(outbound: Option<Arc<dyn Outbound>>) -> Env {
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let core = Core::with_options(
            Arc::new(MemStore::new()),
            clock.clone(),
            CoreOptions {
                outbound,
                ..CoreOptions::default()
            },
        )
        .await
        .unwrap();
        let init = core.dev_setup(None).await.unwrap();
        let root = init.root_token.expose_secret().to_owned();
        Env {
            core,
            clock,
            root,
            issuer: Issuer::new(ISS),
        }
    }

    fn now(&self) -> i64 {
        self.clock.unix_seconds()
    }

    async fn call(
        &self,
        op: Operation,
        path: &str,
        data: Value,
        token: Option<&str>,
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
                remote_addr: None,
                client_certs: Vec::new(),
            })
            .await
    }

    /// A read with `token` from the address `from`.
    async fn read_from(
        &self,
        path: &str,
        token: &str,
        from: Option<&str>,
    ) -> Result<Response, EngineError> {
        self.core
            .handle(Request {
                id: "test".into(),
                operation: Operation::Read,
                path: path.into(),
                data: Map::new(),
                token: Some(ClientToken::new(token.to_owned())),
                remote_addr: from.map(|a| a.parse().unwrap()),
                client_certs: Vec::new(),
            })
            .await
    }

    async fn root(&self, op: Operation, path: &str, data: Value) -> Response {
        match self.call(op, path, data, Some(&self.root.clone())).await {
            Ok(r) => r,
            Err(e) => panic!("{op} {path}: {e}"),
        }
    }

    async fn login(
        &self,
        mount: &str,
        role: &str,
        jwt: &str,
    ) -> Result<Map<String, Value>, EngineError> {
        let resp = self
            .call(
                Operation::Update,
                &format!("auth/{mount}/login"),
                json!({"role": role, "jwt": jwt}),
                None,
            )
            .await?;
        Ok(resp.auth.expect("a login answers with auth"))
    }

    async fn denied(&self, mount: &str, role: &str, jwt: &str, case: &str) {
        match self.login(mount, role, jwt).await {
            Err(EngineError::PermissionDenied) => {}
            Err(other) => panic!("{case}: expected permission denied, got {other:?}"),
            Ok(_) => panic!("{case}: login was accepted"),
        }
    }

    /// Mount kubernetes auth, a policy, a secret, and the `app` role (bao-style strings).
    async fn kubernetes_with(&self, config: Value) {
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
            "sys/policies/acl/team-a-read",
            json!({"policy": "path \"secret/data/team-a/*\" {\n  capabilities = [\"read\"]\n}\n"}),
        )
        .await;
        self.root(
            Operation::Update,
            "secret/data/team-a/db",
            json!({"data": {"password": "team-a-pw"}}),
        )
        .await;
        self.root(
            Operation::Update,
            "secret/data/team-b/db",
            json!({"data": {"password": "team-b-pw"}}),
        )
        .await;
        let resp = self
            .root(
                Operation::Update,
                "auth/kubernetes/role/app",
                json!({
                    "bound_service_account_names": "app",
                    "bound_service_account_namespaces": "team-a",
                    "audience": "keyhaven",
                    "token_policies": "team-a-read",
                    "token_ttl": "5m",
                }),
            )
            .await;
        assert!(resp.warnings.is_empty(), "{:?}", resp.warnings);
    }

    fn token(&self, alg: Alg, ns: &str, sa: &str) -> String {
        self.issuer
            .sign(alg, &sa_claims(ISS, ns, sa, &["keyhaven"], self.now()))
    }
}

fn pem_config(issuer: &Issuer) -> Value {
    // As `bao write auth/kubernetes/config pem_keys=@keys.pem` sends it: one string.
    json!({
        "pem_keys": format!("{}{}", issuer.rsa_public_pem(), issuer.ec_public_pem()),
        "issuer": ISS,
    })
}

#[tokio::test]
async fn pod_token_logs_in_and_gets_exactly_its_policy() {
    let env = Env::new().await;
    env.kubernetes_with(pem_config(&env.issuer)).await;

    let listed = env.root(Operation::Read, "sys/auth", json!({})).await;
    let listed = listed.data.unwrap();
    assert_eq!(listed["kubernetes/"]["type"], "kubernetes", "{listed:?}");

    for alg in [Alg::Rs256, Alg::Es256] {
        let auth = env
            .login("kubernetes", "app", &env.token(alg, "team-a", "app"))
            .await
            .unwrap();
        let token = auth["client_token"].as_str().unwrap().to_owned();
        assert_eq!(auth["lease_duration"], 300);
        let policies: Vec<&str> = auth["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(policies, ["default", "team-a-read"]);
        let meta = &auth["metadata"];
        assert_eq!(meta["role"], "app");
        assert_eq!(meta["service_account_name"], "app");
        assert_eq!(meta["service_account_namespace"], "team-a");
        assert_eq!(meta["service_account_uid"], "uid-team-a-app");
        assert_eq!(meta["service_account_secret_name"], "");

        let lookup = env
            .call(
                Operation::Read,
                "auth/token/lookup-self",
                json!({}),
                Some(&token),
            )
            .await
            .unwrap();
        assert_eq!(
            lookup.data.unwrap()["display_name"],
            "kubernetes-team-a-app"
        );
        let read = env
            .call(
                Operation::Read,
                "secret/data/team-a/db",
                json!({}),
                Some(&token),
            )
            .await
            .unwrap();
        assert_eq!(read.data.unwrap()["data"]["password"], "team-a-pw");
        let other = env
            .call(
                Operation::Read,
                "secret/data/team-b/db",
                json!({}),
                Some(&token),
            )
            .await;
        assert!(
            matches!(other, Err(EngineError::PermissionDenied)),
            "{other:?}"
        );
        let write = env
            .call(
                Operation::Update,
                "secret/data/team-a/db",
                json!({"data": {"password": "x"}}),
                Some(&token),
            )
            .await;
        assert!(
            matches!(write, Err(EngineError::PermissionDenied)),
            "{write:?}"
        );
    }

    // The token dies with its TTL, on the engine's clock.
    let auth = env
        .login("kubernetes", "app", &env.token(Alg::Rs256, "team-a", "app"))
        .await
        .unwrap();
    let token = auth["client_token"].as_str().unwrap().to_owned();
    env.clock.advance(Duration::from_secs(301));
    let expired = env
        .call(
            Operation::Read,
            "secret/data/team-a/db",
            json!({}),
            Some(&token),
        )
        .await;
    assert!(
        matches!(expired, Err(EngineError::PermissionDenied)),
        "{expired:?}"
    );
}

#[tokio::test]
async fn forged_expired_and_misbound_tokens_are_refused() {
    let env = Env::new().await;
    env.kubernetes_with(pem_config(&env.issuer)).await;
    let now = env.now();
    let good = sa_claims(ISS, "team-a", "app", &["keyhaven"], now);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let i = &env.issuer;

    env.denied(
        "kubernetes",
        "app",
        &Issuer::unsigned(&good, ""),
        "alg none, empty signature",
    )
    .await;
    env.denied(
        "kubernetes",
        "app",
        &Issuer::unsigned(&good, "c2ln"),
        "alg none, junk signature",
    )
    .await;
    env.denied(
        "kubernetes",
        "app",
        &Issuer::hs256(&i.rsa_public_pem_bytes(), Some(issuer::RSA_KID), &good),
        "HS256 keyed with the RSA public key",
    )
    .await;
    env.denied(
        "kubernetes",
        "app",
        &Issuer::hs256(i.ec_public_pem().as_bytes(), None, &good),
        "HS256 keyed with the EC public key, no kid",
    )
    .await;
    let stranger = Issuer::new(ISS);
    env.denied(
        "kubernetes",
        "app",
        &stranger.sign(Alg::Rs256, &good),
        "RS256 with another key",
    )
    .await;
    env.denied(
        "kubernetes",
        "app",
        &stranger.sign(Alg::Es256, &good),
        "ES256 with another key",
    )
    .await;
    // An RSA signature presented as ES256 (the key pins the algorithm).
    let rsa_as_es = i.sign_with_header(Alg::Rs256, &json!({"alg": "ES256", "kid": "ec-1"}), &good);
    env.denied(
        "kubernetes",
        "app",
        &rsa_as_es,
        "RS256 signature labelled ES256",
    )
    .await;
    // A valid signature over other claims, with the payload swapped (escalation).
    let valid = i.sign(Alg::Rs256, &good);
    let forged_payload = {
        let other = base64_url(
            &with(&|c| c["sub"] = json!("system:serviceaccount:team-b:app")).to_string(),
        );
        let parts: Vec<&str> = valid.split('.').collect();
        format!("{}.{}.{}", parts[0], other, parts[2])
    };
    env.denied(
        "kubernetes",
        "app",
        &forged_payload,
        "payload swapped under a valid signature",
    )
    .await;

    let expired = i.sign(Alg::Rs256, &with(&|c| c["exp"] = json!(now - 61)));
    env.denied("kubernetes", "app", &expired, "expired beyond the leeway")
        .await;
    let just_expired = i.sign(Alg::Rs256, &with(&|c| c["exp"] = json!(now - 30)));
    env.login("kubernetes", "app", &just_expired)
        .await
        .expect("expired within the leeway");
    let no_exp = i.sign(
        Alg::Rs256,
        &with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
    );
    env.denied("kubernetes", "app", &no_exp, "no exp").await;
    let future = i.sign(
        Alg::Rs256,
        &with(&|c| {
            c["nbf"] = json!(now + 3600);
            c["iat"] = json!(now + 3600);
            c["exp"] = json!(now + 7200);
        }),
    );
    env.denied("kubernetes", "app", &future, "nbf in the future")
        .await;
    let slightly_early = i.sign(Alg::Rs256, &with(&|c| c["nbf"] = json!(now + 30)));
    env.login("kubernetes", "app", &slightly_early)
        .await
        .expect("nbf within the leeway");

    let wrong_aud = i.sign(
        Alg::Rs256,
        &with(&|c| c["aud"] = json!(["sts.amazonaws.com"])),
    );
    env.denied("kubernetes", "app", &wrong_aud, "wrong audience")
        .await;
    let no_aud = i.sign(
        Alg::Rs256,
        &with(&|c| {
            c.as_object_mut().unwrap().remove("aud");
        }),
    );
    env.denied("kubernetes", "app", &no_aud, "missing audience")
        .await;
    let wrong_iss = i.sign(
        Alg::Rs256,
        &with(&|c| c["iss"] = json!("https://evil.example")),
    );
    env.denied("kubernetes", "app", &wrong_iss, "wrong issuer")
        .await;

    env.denied(
        "kubernetes",
        "app",
        &env.token(Alg::Rs256, "team-b", "app"),
        "wrong namespace",
    )
    .await;
    env.denied(
        "kubernetes",
        "app",
        &env.token(Alg::Es256, "team-a", "other"),
        "wrong service account",
    )
    .await;
    let node = i.sign(
        Alg::Rs256,
        &with(&|c| c["sub"] = json!("system:node:node-1")),
    );
    env.denied(
        "kubernetes",
        "app",
        &node,
        "subject is not a service account",
    )
    .await;
    let mismatch = i.sign(
        Alg::Rs256,
        &with(&|c| c["kubernetes.io"]["namespace"] = json!("team-b")),
    );
    env.denied(
        "kubernetes",
        "app",
        &mismatch,
        "kubernetes.io namespace disagrees with sub",
    )
    .await;
    let sa_mismatch = i.sign(
        Alg::Rs256,
        &with(&|c| c["kubernetes.io"]["serviceaccount"]["name"] = json!("admin")),
    );
    env.denied(
        "kubernetes",
        "app",
        &sa_mismatch,
        "kubernetes.io serviceaccount disagrees with sub",
    )
    .await;
    let crit = i.sign_with_header(Alg::Rs256, &json!({"alg": "RS256", "crit": ["exp"]}), &good);
    env.denied("kubernetes", "app", &crit, "crit header").await;

    for garbage in [
        "garbage",
        "a.b.c",
        "..",
        "e30.e30.e30",
        "eyJhbGciOiJSUzI1NiJ9.%%%.xx",
    ] {
        env.denied("kubernetes", "app", garbage, "garbage JWT")
            .await;
    }
    env.denied("kubernetes", "app", &"a".repeat(40_000), "oversized JWT")
        .await;
    env.denied(
        "kubernetes",
        "nope",
        &env.token(Alg::Rs256, "team-a", "app"),
        "unknown role",
    )
    .await;
    env.denied(
        "kubernetes",
        "../app",
        &env.token(Alg::Rs256, "team-a", "app"),
        "bad role name",
    )
    .await;

    // The good token still works after all of that, and expires with the clock.
    let token = env.token(Alg::Es256, "team-a", "app");
    env.login("kubernetes", "app", &token).await.unwrap();
    env.clock.advance(Duration::from_secs(3600 + 61));
    env.denied("kubernetes", "app", &token, "expired after the clock moved")
        .await;

    // Missing parameters are a bad request, not a refusal.
    let missing = env
        .call(
            Operation::Update,
            "auth/kubernetes/login",
            json!({"role": "app"}),
            None,
        )
        .await;
    assert!(
        matches!(missing, Err(EngineError::InvalidRequest(_))),
        "{missing:?}"
    );
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn inline_jwks_globs_and_role_management() {
    let env = Env::new().await;
    // jwks as a JSON string (as `jwks=@jwks.json` sends it), no issuer check.
    env.kubernetes_with(json!({"jwks": env.issuer.jwks().to_string()}))
        .await;
    env.login("kubernetes", "app", &env.token(Alg::Es256, "team-a", "app"))
        .await
        .unwrap();
    env.login("kubernetes", "app", &env.token(Alg::Rs256, "team-a", "app"))
        .await
        .unwrap();
    // A kid that names the other key: no key of that algorithm has it.
    let lying = env.issuer.sign_with_header(
        Alg::Es256,
        &json!({"alg": "ES256", "kid": issuer::RSA_KID}),
        &sa_claims(ISS, "team-a", "app", &["keyhaven"], env.now()),
    );
    env.denied("kubernetes", "app", &lying, "kid of another key")
        .await;

    let resp = env
        .root(
            Operation::Update,
            "auth/kubernetes/role/wild",
            json!({
                "bound_service_account_names": ["app", "worker-*"],
                "bound_service_account_namespaces": "team-*",
                "token_policies": ["team-a-read"],
                "token_max_ttl": "1h",
                "bogus": "1",
            }),
        )
        .await;
    assert!(
        resp.warnings.iter().any(|w| w.contains("bogus")),
        "{:?}",
        resp.warnings
    );
    assert!(
        resp.warnings.iter().any(|w| w.contains("no audience")),
        "{:?}",
        resp.warnings
    );
    for (ns, sa) in [("team-b", "app"), ("team-x", "worker-3")] {
        let claims = sa_claims(ISS, ns, sa, &["anything"], env.now());
        env.login("kubernetes", "wild", &env.issuer.sign(Alg::Rs256, &claims))
            .await
            .unwrap();
    }
    let prod = sa_claims(ISS, "prod", "app", &["anything"], env.now());
    env.denied(
        "kubernetes",
        "wild",
        &env.issuer.sign(Alg::Rs256, &prod),
        "namespace outside the glob",
    )
    .await;

    let role = env
        .root(Operation::Read, "auth/kubernetes/role/wild", json!({}))
        .await;
    let role = role.data.unwrap();
    assert_eq!(
        role["bound_service_account_names"],
        json!(["app", "worker-*"])
    );
    assert_eq!(role["token_max_ttl"], 3600);
    assert_eq!(role["alias_name_source"], "serviceaccount_uid");
    let list = env
        .root(Operation::List, "auth/kubernetes/role", json!({}))
        .await;
    assert_eq!(list.data.unwrap()["keys"], json!(["app", "wild"]));

    // Refused role shapes.
    for (body, why) in [
        (
            json!({"bound_service_account_names": "*", "bound_service_account_namespaces": "*"}),
            "both wildcards",
        ),
        (
            json!({"bound_service_account_names": "a", "bound_service_account_namespaces": "b", "token_policies": "root"}),
            "root policy",
        ),
        (json!({"bound_service_account_names": "a"}), "no namespaces"),
        (
            json!({"bound_service_account_names": "a", "bound_service_account_namespaces": "b", "token_ttl": "2h", "token_max_ttl": "1h"}),
            "ttl above max",
        ),
        (
            json!({"bound_service_account_names": "a", "bound_service_account_namespaces": "b", "alias_name_source": "x"}),
            "alias source",
        ),
    ] {
        let r = env
            .call(
                Operation::Update,
                "auth/kubernetes/role/bad",
                body,
                Some(&env.root.clone()),
            )
            .await;
        assert!(
            matches!(r, Err(EngineError::InvalidRequest(_))),
            "{why}: {r:?}"
        );
    }
    env.root(Operation::Delete, "auth/kubernetes/role/wild", json!({}))
        .await;
    env.denied(
        "kubernetes",
        "wild",
        &env.issuer.sign(Alg::Rs256, &prod),
        "deleted role",
    )
    .await;

    // Refused configurations.
    for (body, why) in [
        (json!({}), "no key source"),
        (json!({"pem_keys": "not a pem"}), "junk PEM"),
        (
            json!({"pem_keys": env.issuer.rsa_public_pem(), "jwks": env.issuer.jwks()}),
            "two sources",
        ),
        (
            json!({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
            "HMAC-only JWKS",
        ),
        (
            json!({"oidc_discovery_url": "http://insecure.example"}),
            "http discovery",
        ),
        (json!({"kubernetes_host": "http://10.0.0.1"}), "http host"),
        (
            json!({"pem_keys": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
            "private key",
        ),
    ] {
        let r = env
            .call(
                Operation::Update,
                "auth/kubernetes/config",
                body,
                Some(&env.root.clone()),
            )
            .await;
        assert!(
            matches!(r, Err(EngineError::InvalidRequest(_))),
            "{why}: {r:?}"
        );
    }
}

#[tokio::test]
async fn config_read_hides_the_reviewer_jwt() {
    let env = Env::new().await;
    env.root(
        Operation::Update,
        "sys/auth/kubernetes",
        json!({"type": "kubernetes"}),
    )
    .await;
    let reviewer = "eyJhbGciOiJSUzI1NiJ9.cmV2aWV3ZXItc2VjcmV0.c2ln";
    env.root(
        Operation::Update,
        "auth/kubernetes/config",
        json!({
            "kubernetes_host": "https://10.96.0.1:443",
            "token_reviewer_jwt": reviewer,
            "pem_keys": [env.issuer.rsa_public_pem()],
            "disable_local_ca_jwt": "true",
        }),
    )
    .await;
    let data = env
        .root(Operation::Read, "auth/kubernetes/config", json!({}))
        .await
        .data
        .unwrap();
    let text = serde_json::to_string(&data).unwrap();
    assert!(!text.contains("cmV2aWV3ZXItc2VjcmV0"), "{text}");
    assert_eq!(data["token_reviewer_jwt_set"], true);
    assert_eq!(data["kubernetes_host"], "https://10.96.0.1:443");
    assert_eq!(data["disable_local_ca_jwt"], true);
    assert_eq!(data["pem_keys"].as_array().unwrap().len(), 1);
}

/// An issuer and API server in memory: serves OIDC discovery and the JWKS, and answers
/// TokenReview with what the test sets.
#[derive(Default)]
struct FakeCluster {
    jwks: Mutex<Value>,
    gets: AtomicUsize,
    review: Mutex<Option<(u16, Value)>>,
    posts: Mutex<Vec<(String, Option<String>, Value)>>,
}

#[async_trait]
impl Outbound for FakeCluster {
    async fn get_json(
        &self,
        url: &str,
        _ca: Option<&str>,
    ) -> Result<OutboundResponse, EngineError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let body = match url {
            "https://issuer.test/.well-known/openid-configuration" => json!({
                "issuer": "https://issuer.test",
                "jwks_uri": "https://issuer.test/openid/v1/jwks",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }),
            "https://issuer.test/openid/v1/jwks" => self.jwks.lock().unwrap().clone(),
            _ => {
                return Ok(OutboundResponse {
                    status: 404,
                    body: Value::Null,
                });
            }
        };
        Ok(OutboundResponse { status: 200, body })
    }

    async fn post_json(
        &self,
        url: &str,
        _ca: Option<&str>,
        bearer: Option<&str>,
        body: &Value,
    ) -> Result<OutboundResponse, EngineError> {
        self.posts
            .lock()
            .unwrap()
            .push((url.to_owned(), bearer.map(str::to_owned), body.clone()));
        let (status, body) = self
            .review
            .lock()
            .unwrap()
            .clone()
            .unwrap_or((500, Value::Null));
        Ok(OutboundResponse { status, body })
    }
}

#[tokio::test]
async fn oidc_discovery_keys_are_cached_and_refreshed_for_unknown_kids() {
    let cluster = Arc::new(FakeCluster::default());
    let env = Env::with_outbound(Some(cluster.clone())).await;
    *cluster.jwks.lock().unwrap() = json!({"keys": [env.issuer.rsa_jwk()]});
    env.kubernetes_with(json!({"oidc_discovery_url": "https://issuer.test"}))
        .await;
    let claims = |env: &Env| {
        sa_claims(
            "https://issuer.test",
            "team-a",
            "app",
            &["keyhaven"],
            env.now(),
        )
    };

    env.login(
        "kubernetes",
        "app",
        &env.issuer.sign(Alg::Rs256, &claims(&env)),
    )
    .await
    .unwrap();
    assert_eq!(cluster.gets.load(Ordering::SeqCst), 2, "discovery + JWKS");
    env.login(
        "kubernetes",
        "app",
        &env.issuer.sign(Alg::Rs256, &claims(&env)),
    )
    .await
    .unwrap();
    assert_eq!(
        cluster.gets.load(Ordering::SeqCst),
        2,
        "served from the cache"
    );
    // The discovery document's issuer is enforced when none is configured.
    let other_iss = sa_claims(ISS, "team-a", "app", &["keyhaven"], env.now());
    env.denied(
        "kubernetes",
        "app",
        &env.issuer.sign(Alg::Rs256, &other_iss),
        "issuer differs from discovery",
    )
    .await;

    // Key rotation: the issuer starts signing with a new key.
    *cluster.jwks.lock().unwrap() = env.issuer.jwks();
    env.denied(
        "kubernetes",
        "app",
        &env.issuer.sign(Alg::Es256, &claims(&env)),
        "unknown kid, refresh rate-limited",
    )
    .await;
    assert_eq!(cluster.gets.load(Ordering::SeqCst), 2);
    env.clock.advance(Duration::from_secs(31));
    env.login(
        "kubernetes",
        "app",
        &env.issuer.sign(Alg::Es256, &claims(&env)),
    )
    .await
    .unwrap();
    assert_eq!(
        cluster.gets.load(Ordering::SeqCst),
        4,
        "unknown kid forced a refresh"
    );
    // A token naming a kid that never exists cannot make us hammer the issuer.
    for _ in 0..5 {
        let bogus = env.issuer.sign_with_header(
            Alg::Rs256,
            &json!({"alg": "RS256", "kid": "nope"}),
            &claims(&env),
        );
        env.denied("kubernetes", "app", &bogus, "unknown kid").await;
    }
    assert_eq!(cluster.gets.load(Ordering::SeqCst), 4);
    // After the TTL the keys are fetched again; when that fails the old keys stay in use.
    env.clock.advance(Duration::from_secs(601));
    *cluster.jwks.lock().unwrap() = json!({"keys": []});
    env.login(
        "kubernetes",
        "app",
        &env.issuer.sign(Alg::Rs256, &claims(&env)),
    )
    .await
    .unwrap();
    assert_eq!(cluster.gets.load(Ordering::SeqCst), 6);
}

fn review(authenticated: bool, username: &str, audiences: &[&str]) -> (u16, Value) {
    (
        201,
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "status": {
                "authenticated": authenticated,
                "user": {
                    "username": username,
                    "uid": "uid-from-review",
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                    "extra": {"authentication.kubernetes.io/pod-name": ["app-1"]},
                },
                "audiences": audiences,
            },
        }),
    )
}

#[tokio::test]
async fn token_review_decides_and_uses_the_reviewer_jwt() {
    let cluster = Arc::new(FakeCluster::default());
    let env = Env::with_outbound(Some(cluster.clone())).await;
    env.kubernetes_with(json!({
        "kubernetes_host": "https://api.cluster.test:6443/",
        "token_reviewer_jwt": "reviewer.jwt.value",
    }))
    .await;
    // In TokenReview-only mode the token is opaque to us: the review decides.
    let jwt = "opaque.pod.token";
    *cluster.review.lock().unwrap() = Some(review(
        true,
        "system:serviceaccount:team-a:app",
        &["keyhaven"],
    ));
    let auth = env.login("kubernetes", "app", jwt).await.unwrap();
    assert_eq!(auth["metadata"]["service_account_uid"], "uid-from-review");
    {
        let posts = cluster.posts.lock().unwrap();
        let (url, bearer, body) = posts.last().unwrap();
        assert_eq!(
            url,
            "https://api.cluster.test:6443/apis/authentication.k8s.io/v1/tokenreviews"
        );
        assert_eq!(bearer.as_deref(), Some("reviewer.jwt.value"));
        assert_eq!(body["kind"], "TokenReview");
        assert_eq!(body["spec"]["token"], jwt);
        assert_eq!(body["spec"]["audiences"], json!(["keyhaven"]));
    }
    for (status, case) in [
        (review(false, "", &[]), "revoked: not authenticated"),
        (
            review(true, "system:serviceaccount:team-b:app", &["keyhaven"]),
            "other namespace",
        ),
        (
            review(true, "system:serviceaccount:team-a:admin", &["keyhaven"]),
            "other account",
        ),
        (
            review(true, "alice", &["keyhaven"]),
            "not a service account",
        ),
        (
            review(true, "system:serviceaccount:team-a:app", &["other"]),
            "audience not confirmed",
        ),
    ] {
        *cluster.review.lock().unwrap() = Some(status);
        env.denied("kubernetes", "app", jwt, case).await;
    }
    // Reviewer credentials refused: an operator problem, not the caller's.
    *cluster.review.lock().unwrap() = Some((403, json!({"kind": "Status"})));
    let r = env.login("kubernetes", "app", jwt).await;
    assert!(matches!(r, Err(EngineError::Unavailable(_))), "{r:?}");
}

#[tokio::test]
async fn offline_and_token_review_together_must_agree() {
    let cluster = Arc::new(FakeCluster::default());
    let env = Env::with_outbound(Some(cluster.clone())).await;
    let mut config = pem_config(&env.issuer);
    config["kubernetes_host"] = json!("https://api.cluster.test");
    env.kubernetes_with(config).await;
    let jwt = env.token(Alg::Rs256, "team-a", "app");
    *cluster.review.lock().unwrap() = Some(review(
        true,
        "system:serviceaccount:team-a:app",
        &["keyhaven"],
    ));
    env.login("kubernetes", "app", &jwt).await.unwrap();
    // No reviewer JWT configured: the client's own token reviews itself.
    assert_eq!(
        cluster.posts.lock().unwrap().last().unwrap().1.as_deref(),
        Some(jwt.as_str())
    );
    // Revoked although the signature is fine.
    *cluster.review.lock().unwrap() = Some(review(false, "", &[]));
    env.denied(
        "kubernetes",
        "app",
        &jwt,
        "revoked token with a valid signature",
    )
    .await;
    *cluster.review.lock().unwrap() = Some((401, json!({})));
    env.denied("kubernetes", "app", &jwt, "self-review refused")
        .await;
    // A forged token never reaches the API server.
    let before = cluster.posts.lock().unwrap().len();
    env.denied(
        "kubernetes",
        "app",
        &Issuer::unsigned(&json!({}), ""),
        "alg none",
    )
    .await;
    assert_eq!(cluster.posts.lock().unwrap().len(), before);
}

#[tokio::test]
async fn jwt_method_binds_audiences_subjects_and_claims() {
    let env = Env::new().await;
    env.root(Operation::Update, "sys/auth/jwt", json!({"type": "jwt"}))
        .await;
    env.root(
        Operation::Update,
        "auth/jwt/config",
        json!({
            "jwt_validation_pubkeys": env.issuer.ec_public_pem(),
            "bound_issuer": ISS,
            "jwt_supported_algs": "ES256",
            "default_role": "ci",
        }),
    )
    .await;
    env.root(
        Operation::Update,
        "auth/jwt/role/ci",
        json!({
            "role_type": "jwt",
            "bound_audiences": "keyhaven",
            "user_claim": "sub",
            "bound_claims_type": "glob",
            "bound_claims": {"/kubernetes.io/namespace": ["team-*"]},
            "claim_mappings": {"/kubernetes.io/namespace": "namespace"},
            "token_policies": "default",
            "token_ttl": "10m",
        }),
    )
    .await;
    let claims = |ns: &str, aud: &[&str]| sa_claims(ISS, ns, "app", aud, env.now());
    let auth = env
        .login(
            "jwt",
            "ci",
            &env.issuer
                .sign(Alg::Es256, &claims("team-a", &["keyhaven"])),
        )
        .await
        .unwrap();
    assert_eq!(auth["metadata"]["role"], "ci");
    assert_eq!(auth["metadata"]["namespace"], "team-a");
    assert_eq!(auth["lease_duration"], 600);
    // default_role applies when no role is given.
    let resp = env
        .call(
            Operation::Update,
            "auth/jwt/login",
            json!({"jwt": env.issuer.sign(Alg::Es256, &claims("team-b", &["keyhaven"]))}),
            None,
        )
        .await
        .unwrap();
    assert!(resp.auth.is_some());

    env.denied(
        "jwt",
        "ci",
        &env.issuer.sign(Alg::Es256, &claims("prod", &["keyhaven"])),
        "bound claim",
    )
    .await;
    env.denied(
        "jwt",
        "ci",
        &env.issuer.sign(Alg::Es256, &claims("team-a", &["other"])),
        "audience",
    )
    .await;
    env.denied(
        "jwt",
        "ci",
        &env.issuer
            .sign(Alg::Rs256, &claims("team-a", &["keyhaven"])),
        "RS256 not allowed",
    )
    .await;
    env.denied(
        "jwt",
        "ci",
        &Issuer::hs256(
            env.issuer.ec_public_pem().as_bytes(),
            None,
            &claims("team-a", &["keyhaven"]),
        ),
        "HS256 with the public key",
    )
    .await;

    // bound_subject, and a role without audiences refuses tokens that carry one.
    env.root(
        Operation::Update,
        "auth/jwt/role/one",
        json!({"user_claim": "sub", "bound_subject": "system:serviceaccount:team-a:app"}),
    )
    .await;
    env.denied(
        "jwt",
        "one",
        &env.issuer
            .sign(Alg::Es256, &claims("team-a", &["keyhaven"])),
        "unexpected aud",
    )
    .await;
    let mut no_aud = claims("team-a", &[]);
    no_aud.as_object_mut().unwrap().remove("aud");
    env.login("jwt", "one", &env.issuer.sign(Alg::Es256, &no_aud))
        .await
        .unwrap();
    let mut other_sub = no_aud.clone();
    other_sub["sub"] = json!("system:serviceaccount:team-a:admin");
    env.denied(
        "jwt",
        "one",
        &env.issuer.sign(Alg::Es256, &other_sub),
        "bound subject",
    )
    .await;

    for (body, why) in [
        (json!({"bound_audiences": "x"}), "no user_claim"),
        (json!({"user_claim": "sub"}), "no bound constraint"),
        (
            json!({"user_claim": "sub", "bound_audiences": "x", "role_type": "oidc"}),
            "oidc role",
        ),
        (
            json!({"user_claim": "sub", "bound_audiences": "x", "claim_mappings": {"a": "role"}}),
            "reserved mapping",
        ),
    ] {
        let r = env
            .call(
                Operation::Update,
                "auth/jwt/role/bad",
                body,
                Some(&env.root.clone()),
            )
            .await;
        assert!(
            matches!(r, Err(EngineError::InvalidRequest(_))),
            "{why}: {r:?}"
        );
    }
    let r = env
        .call(
            Operation::Update,
            "auth/jwt/config",
            json!({"jwt_validation_pubkeys": env.issuer.ec_public_pem(), "jwt_supported_algs": "HS256"}),
            Some(&env.root.clone()),
        )
        .await;
    assert!(
        matches!(r, Err(EngineError::InvalidRequest(_))),
        "HS256 allowed: {r:?}"
    );

    // The oidc type is the same method.
    env.root(Operation::Update, "sys/auth/oidc", json!({"type": "oidc"}))
        .await;
    env.root(
        Operation::Update,
        "auth/oidc/config",
        json!({"jwks_url": "https://issuer.test/keys"}),
    )
    .await;
}

#[test]
fn the_validator_refuses_each_forgery_for_the_right_reason() {
    use keyhaven_engine::auth::validator::{Expectations, KeySet, Rejection, SigAlg, check_claims};
    let i = Issuer::new(ISS);
    let keys = KeySet::from_pem_keys("pem_keys", &[i.rsa_public_pem(), i.ec_public_pem()]).unwrap();
    assert_eq!(keys.len(), 2);
    let now = 1_800_000_000;
    let good = sa_claims(ISS, "team-a", "app", &["keyhaven"], now);
    let all = &SigAlg::ALL;
    for alg in [Alg::Rs256, Alg::Es256] {
        let v = keys.verify(&i.sign(alg, &good), all).unwrap();
        let aud = vec!["keyhaven".to_owned()];
        let expect = Expectations {
            now,
            leeway: 60,
            issuer: Some(ISS),
            audiences: Some(&aud),
        };
        check_claims(&v.claims, &expect).unwrap();
    }
    let reason = |jwt: &str| keys.verify(jwt, all).unwrap_err();
    assert_eq!(
        reason(&Issuer::unsigned(&good, "c2ln")),
        Rejection::UnsupportedAlgorithm
    );
    assert_eq!(reason(&Issuer::unsigned(&good, "")), Rejection::Malformed);
    assert_eq!(
        reason(&Issuer::hs256(
            &i.rsa_public_pem_bytes(),
            Some(issuer::RSA_KID),
            &good
        )),
        Rejection::UnsupportedAlgorithm
    );
    let stranger = Issuer::new(ISS);
    assert_eq!(
        reason(&stranger.sign(Alg::Rs256, &good)),
        Rejection::BadSignature
    );
    assert_eq!(
        reason(&stranger.sign(Alg::Es256, &good)),
        Rejection::BadSignature
    );
    let rsa_as_es = i.sign_with_header(Alg::Rs256, &json!({"alg": "ES256"}), &good);
    assert_eq!(reason(&rsa_as_es), Rejection::BadSignature);
    assert_eq!(reason("garbage"), Rejection::Malformed);
    // Only ES256 allowed: an RS256 token is refused before any key is tried.
    assert_eq!(
        keys.verify(&i.sign(Alg::Rs256, &good), &[SigAlg::Es256])
            .unwrap_err(),
        Rejection::UnsupportedAlgorithm
    );
    // JWKS: encryption keys, HMAC keys, private keys and other curves are not used.
    let mut private = i.rsa_jwk();
    private["d"] = json!("AAAA");
    let mut enc = i.ec_jwk();
    enc["use"] = json!("enc");
    let junk = json!({"keys": [private, enc, {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}, {"kty": "AKP", "alg": "ML-DSA-44"}]});
    assert!(KeySet::from_jwks(&junk).is_err());
    let set = KeySet::from_jwks(&i.jwks()).unwrap();
    assert_eq!(set.len(), 2);
    set.verify(&i.sign(Alg::Es256, &good), all).unwrap();
}

#[tokio::test]
async fn tokens_of_a_role_bound_to_cidr_blocks_work_only_from_inside_them() {
    let env = Env::new().await;
    env.kubernetes_with(pem_config(&env.issuer)).await;
    env.root(
        Operation::Update,
        "sys/policies/acl/creator",
        json!({"policy": "path \"auth/token/create\" { capabilities = [\"update\"] }"}),
    )
    .await;
    env.root(
        Operation::Update,
        "auth/kubernetes/role/app",
        json!({
            "token_bound_cidrs": "10.0.0.0/8, 2001:db8::/32",
            "token_policies": "team-a-read,creator"
        }),
    )
    .await;
    let role = env
        .root(Operation::Read, "auth/kubernetes/role/app", json!({}))
        .await;
    assert_eq!(
        role.data.unwrap()["token_bound_cidrs"],
        json!(["10.0.0.0/8", "2001:db8::/32"])
    );
    let auth = env
        .login("kubernetes", "app", &env.token(Alg::Es256, "team-a", "app"))
        .await
        .unwrap();
    let token = auth["client_token"].as_str().unwrap().to_owned();
    let path = "secret/data/team-a/db";
    for inside in ["10.1.2.3", "::ffff:10.9.9.9", "2001:db8:5::1"] {
        let r = env.read_from(path, &token, Some(inside)).await;
        assert!(r.is_ok(), "{inside}: {r:?}");
    }
    for outside in [Some("192.0.2.1"), Some("2001:db9::1"), None] {
        let r = env.read_from(path, &token, outside).await;
        assert!(
            matches!(r, Err(EngineError::PermissionDenied)),
            "{outside:?}: {r:?}"
        );
    }
    // A child it creates stays within the blocks.
    let child = env
        .core
        .handle(Request {
            id: "test".into(),
            operation: Operation::Update,
            path: "auth/token/create".into(),
            data: Map::new(),
            token: Some(ClientToken::new(token.clone())),
            remote_addr: Some("10.0.0.1".parse().unwrap()),
            client_certs: Vec::new(),
        })
        .await
        .unwrap();
    let child = child.auth.unwrap()["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = env
        .read_from("auth/token/lookup-self", &child, Some("192.0.2.1"))
        .await;
    assert!(matches!(r, Err(EngineError::PermissionDenied)), "{r:?}");
    let r = env
        .read_from("auth/token/lookup-self", &child, Some("10.0.0.2"))
        .await;
    assert!(r.is_ok(), "{r:?}");
    let err = env
        .call(
            Operation::Update,
            "auth/kubernetes/role/app",
            json!({"token_bound_cidrs": ["10.0.0.0/33"]}),
            Some(&env.root.clone()),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("token_bound_cidrs"), "{err}");
}

#[tokio::test]
async fn a_role_without_a_ttl_gets_the_auth_mounts_tuned_default() {
    let env = Env::new().await;
    env.kubernetes_with(pem_config(&env.issuer)).await;
    env.root(
        Operation::Update,
        "auth/kubernetes/role/app",
        json!({"token_ttl": 0}),
    )
    .await;
    env.root(
        Operation::Update,
        "sys/mounts/auth/kubernetes/tune",
        json!({"default_lease_ttl": "10m", "max_lease_ttl": "20m"}),
    )
    .await;
    let auth = env
        .login("kubernetes", "app", &env.token(Alg::Es256, "team-a", "app"))
        .await
        .unwrap();
    assert_eq!(auth["lease_duration"], 600);
}
