//! The `userpass` and `cert` auth methods through `Core`: users and passwords, roles and
//! client-certificate chains made here with rcgen, and the refusals each login owes.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_engine::{
    ClientToken, Core, CoreOptions, EngineError, ManualClock, Operation, Request, Response,
};
use keyhaven_storage::MemStore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
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
        Env { core, clock, root }
    }

    async fn call(
        &self,
        op: Operation,
        path: &str,
        data: Value,
        token: Option<&str>,
        client_certs: Vec<Vec<u8>>,
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
                client_certs,
            })
            .await
    }

    async fn root(&self, op: Operation, path: &str, data: Value) -> Response {
        let root = self.root.clone();
        match self.call(op, path, data, Some(&root), Vec::new()).await {
            Ok(r) => r,
            Err(e) => panic!("{op} {path}: {e}"),
        }
    }

    async fn enable(&self, kind: &str) {
        self.root(
            Operation::Update,
            &format!("sys/auth/{kind}"),
            json!({ "type": kind }),
        )
        .await;
    }

    async fn userpass_login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Map<String, Value>, EngineError> {
        let resp = self
            .call(
                Operation::Update,
                &format!("auth/userpass/login/{user}"),
                json!({ "password": password }),
                None,
                Vec::new(),
            )
            .await?;
        Ok(resp.auth.expect("a login answers with auth"))
    }

    async fn cert_login(
        &self,
        name: Option<&str>,
        chain: Vec<Vec<u8>>,
    ) -> Result<Map<String, Value>, EngineError> {
        let body = match name {
            Some(n) => json!({ "name": n }),
            None => json!({}),
        };
        let resp = self
            .call(Operation::Update, "auth/cert/login", body, None, chain)
            .await?;
        Ok(resp.auth.expect("a login answers with auth"))
    }

    /// Look a token up with itself: it works, and these are its policies.
    async fn policies_of(&self, token: &str) -> Vec<String> {
        let resp = self
            .call(
                Operation::Read,
                "auth/token/lookup-self",
                json!({}),
                Some(token),
                Vec::new(),
            )
            .await
            .unwrap();
        let data = resp.data.unwrap();
        serde_json::from_value(data["policies"].clone()).unwrap()
    }
}

fn message(e: &EngineError) -> String {
    e.to_string()
}

#[tokio::test]
async fn userpass_users_log_in_with_their_password_only() {
    let env = Env::new().await;
    env.enable("userpass").await;
    env.root(
        Operation::Update,
        "auth/userpass/users/Alice",
        json!({ "password": "pw-one", "token_policies": "app,ops" }),
    )
    .await;

    // Usernames are case-insensitive: Alice is stored as alice.
    let listed = env
        .root(Operation::List, "auth/userpass/users", json!({}))
        .await;
    assert_eq!(listed.data.unwrap()["keys"], json!(["alice"]));
    let read = env
        .root(Operation::Read, "auth/userpass/users/alice", json!({}))
        .await
        .data
        .unwrap();
    assert_eq!(read["token_policies"], json!(["app", "ops"]));
    assert!(read.get("password").is_none() && read.get("password_hash").is_none());
    assert_eq!(read["token_strictly_bind_ip"], json!(false));

    let auth = env.userpass_login("ALICE", "pw-one").await.unwrap();
    assert_eq!(auth["metadata"], json!({ "username": "alice" }));
    let token = auth["client_token"].as_str().unwrap().to_owned();
    assert_eq!(env.policies_of(&token).await, ["app", "default", "ops"]);

    // A wrong password and an unknown user: the same answer.
    let wrong = env.userpass_login("alice", "pw-two").await.unwrap_err();
    let unknown = env.userpass_login("nobody", "pw-one").await.unwrap_err();
    assert!(matches!(wrong, EngineError::InvalidRequest(_)), "{wrong:?}");
    assert_eq!(message(&wrong), "invalid username or password");
    assert_eq!(message(&unknown), message(&wrong));
    let invalid_name = env.userpass_login("a b", "pw-one").await.unwrap_err();
    assert_eq!(message(&invalid_name), message(&wrong));

    // A password change: the old one stops working.
    env.root(
        Operation::Update,
        "auth/userpass/users/alice/password",
        json!({ "password": "pw-two" }),
    )
    .await;
    assert!(env.userpass_login("alice", "pw-one").await.is_err());
    env.userpass_login("alice", "pw-two").await.unwrap();

    // A policy change keeps the password.
    env.root(
        Operation::Update,
        "auth/userpass/users/alice/policies",
        json!({ "token_policies": ["ops"] }),
    )
    .await;
    let auth = env.userpass_login("alice", "pw-two").await.unwrap();
    let token = auth["client_token"].as_str().unwrap().to_owned();
    assert_eq!(env.policies_of(&token).await, ["default", "ops"]);

    // Updating other fields keeps the password too.
    env.root(
        Operation::Update,
        "auth/userpass/users/alice",
        json!({ "token_ttl": "1h" }),
    )
    .await;
    let auth = env.userpass_login("alice", "pw-two").await.unwrap();
    assert_eq!(auth["lease_duration"], json!(3600));

    env.root(Operation::Delete, "auth/userpass/users/alice", json!({}))
        .await;
    assert!(env.userpass_login("alice", "pw-two").await.is_err());
    let gone = env
        .call(
            Operation::List,
            "auth/userpass/users",
            json!({}),
            Some(&env.root.clone()),
            Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(gone, EngineError::NotFound(_)), "{gone:?}");
}

#[tokio::test]
async fn userpass_refuses_bad_writes_without_storing_them() {
    let env = Env::new().await;
    env.enable("userpass").await;
    let root = env.root.clone();
    let write = |path: &'static str, body: Value| {
        let env = &env;
        let root = root.clone();
        async move {
            env.call(Operation::Update, path, body, Some(&root), Vec::new())
                .await
        }
    };
    let err = write("auth/userpass/users/bob", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        message(&err),
        "must provide either password or password_hash"
    );
    let err = write(
        "auth/userpass/users/bob",
        json!({ "password": "x", "password_hash": "y" }),
    )
    .await
    .unwrap_err();
    assert_eq!(
        message(&err),
        "only one of password or password_hash may be provided"
    );
    let err = write(
        "auth/userpass/users/bob",
        json!({ "password_hash": "$argon2id$v=19$m=1,t=1,p=1$abc$def" }),
    )
    .await
    .unwrap_err();
    assert_eq!(message(&err), "password_hash is not a valid bcrypt hash");
    let err = write(
        "auth/userpass/users/bob",
        json!({ "password": "x", "token_policies": "root" }),
    )
    .await
    .unwrap_err();
    assert!(message(&err).contains("root policy"), "{err}");
    for (field, value, want) in [
        (
            "token_bound_cidrs",
            json!("10.0.0.0/99"),
            "invalid value for parameter \"token_bound_cidrs\": item 1 is the prefix length must be 0 to 32 (IPv4) or 0 to 128 (IPv6)",
        ),
        (
            "token_explicit_max_ttl",
            json!("1h"),
            "token_explicit_max_ttl is not supported",
        ),
    ] {
        let mut body = json!({ "password": "x" });
        body[field] = value;
        let err = write("auth/userpass/users/bob", body).await.unwrap_err();
        assert_eq!(message(&err), want);
    }
    // Empty ones (as hvac sends them) restrict nothing and are accepted.
    write(
        "auth/userpass/users/dora",
        json!({ "password": "x", "token_bound_cidrs": [], "token_explicit_max_ttl": 0 }),
    )
    .await
    .unwrap();
    let err = write(
        "auth/userpass/users/nobody/password",
        json!({ "password": "x" }),
    )
    .await
    .unwrap_err();
    assert_eq!(message(&err), "username does not exist");
    // Nothing was stored by any of these.
    let read = env
        .call(
            Operation::Read,
            "auth/userpass/users/bob",
            json!({}),
            Some(&root),
            Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(read, EngineError::NotFound(_)), "{read:?}");
    let err = env.userpass_login("bob", "").await.unwrap_err();
    assert_eq!(message(&err), "missing password");
}

#[tokio::test]
async fn userpass_accepts_imported_bcrypt_hashes() {
    let env = Env::new().await;
    env.enable("userpass").await;
    let hash = bcrypt::hash_with_salt("imported-pw", 5, [3u8; 16])
        .unwrap()
        .to_string();
    env.root(
        Operation::Update,
        "auth/userpass/users/carol",
        json!({ "password_hash": hash }),
    )
    .await;
    env.userpass_login("carol", "imported-pw").await.unwrap();
    assert!(env.userpass_login("carol", "imported-pX").await.is_err());
    let low = bcrypt::hash_with_salt("x", 4, [3u8; 16])
        .unwrap()
        .to_string();
    let err = env
        .call(
            Operation::Update,
            "auth/userpass/users/carol",
            json!({ "password_hash": low }),
            Some(&env.root.clone()),
            Vec::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        message(&err),
        "bcrypt cost of 4 is too low, want 5 at minimum"
    );
    // The refused write left the imported hash in place.
    env.userpass_login("carol", "imported-pw").await.unwrap();
}

/// A CA and certificates it issues.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate: DER of the leaf.
    fn client(&self, cn: &str, dns: &[&str], ou: Option<&str>) -> Vec<u8> {
        self.client_until(cn, dns, ou, None)
    }

    /// A client certificate valid until `until` (rcgen's default: 4096).
    fn client_until(
        &self,
        cn: &str,
        dns: &[&str],
        ou: Option<&str>,
        until: Option<(i32, u8, u8)>,
    ) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(ou) = ou {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, ou);
        }
        params.subject_alt_names.push(SanType::Rfc822Name(
            format!("{cn}@example.com").try_into().unwrap(),
        ));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some((y, m, d)) = until {
            params.not_before = rcgen::date_time_ymd(y - 1, m, d);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        params.signed_by(&key, &self.issuer).unwrap().der().to_vec()
    }
}

#[tokio::test]
async fn cert_logins_need_a_chain_the_role_anchors_and_its_constraints() {
    let env = Env::new().await;
    env.enable("cert").await;
    let ca = Ca::new("Team CA");
    let other = Ca::new("Other CA");
    env.root(
        Operation::Update,
        "auth/cert/certs/Web",
        json!({
            "certificate": ca.pem,
            "token_policies": "web",
            "allowed_common_names": "*.example.com",
            "allowed_organizational_units": "platform",
        }),
    )
    .await;
    let read = env
        .root(Operation::Read, "auth/cert/certs/web", json!({}))
        .await
        .data
        .unwrap();
    assert_eq!(read["display_name"], json!("web"));
    assert_eq!(read["allowed_common_names"], json!(["*.example.com"]));
    assert_eq!(read["allowed_dns_sans"], Value::Null);
    assert_eq!(read["token_policies"], json!(["web"]));

    let good = ca.client("app.example.com", &["app.example.com"], Some("platform"));
    let auth = env.cert_login(None, vec![good.clone()]).await.unwrap();
    assert_eq!(auth["metadata"]["cert_name"], json!("web"));
    assert_eq!(auth["metadata"]["common_name"], json!("app.example.com"));
    let token = auth["client_token"].as_str().unwrap().to_owned();
    assert_eq!(env.policies_of(&token).await, ["default", "web"]);
    env.cert_login(Some("web"), vec![good.clone()])
        .await
        .unwrap();

    // Another CA's certificate with the same names: not anchored.
    let foreign = other.client("app.example.com", &[], Some("platform"));
    let err = env.cert_login(None, vec![foreign]).await.unwrap_err();
    assert_eq!(
        message(&err),
        "invalid certificate or no client certificate supplied"
    );
    // Anchored, but the subject does not meet the constraints.
    for (cn, ou) in [
        ("app.example.org", "platform"),
        ("app.example.com", "sales"),
    ] {
        let leaf = ca.client(cn, &[], Some(ou));
        let err = env.cert_login(None, vec![leaf]).await.unwrap_err();
        assert_eq!(
            message(&err),
            "no chain matching all constraints could be found for this login certificate",
            "{cn} {ou}"
        );
    }
    // No certificate (plain HTTP, or none presented).
    let err = env.cert_login(None, Vec::new()).await.unwrap_err();
    assert_eq!(message(&err), "no client certificate found");
    // Garbage instead of a certificate.
    let err = env
        .cert_login(None, vec![b"not a certificate".to_vec()])
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidRequest(_)), "{err:?}");
    // A role named that does not exist.
    let err = env
        .cert_login(Some("nope"), vec![good.clone()])
        .await
        .unwrap_err();
    assert_eq!(
        message(&err),
        "invalid certificate or no client certificate supplied"
    );
    // Expired by the engine's clock.
    let expired = ca.client_until("app.example.com", &[], Some("platform"), Some((2001, 1, 1)));
    let err = env
        .cert_login(None, vec![expired.clone()])
        .await
        .unwrap_err();
    assert_eq!(
        message(&err),
        "invalid certificate or no client certificate supplied"
    );
    // A chain is judged at the engine's time: move the clock into the validity period.
}

#[tokio::test]
async fn cert_validity_follows_the_engines_clock() {
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(946_684_800 + 86_400), // 2000-01-02
    ));
    let core = Core::with_options(
        Arc::new(MemStore::new()),
        clock.clone(),
        CoreOptions::default(),
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
    let env = Env { core, clock, root };
    env.enable("cert").await;
    let ca = Ca::new("CA");
    env.root(
        Operation::Update,
        "auth/cert/certs/r",
        json!({ "certificate": ca.pem }),
    )
    .await;
    // Valid from 2000-01-01 to 2001-01-01: good on 2000-01-02, refused a year on.
    let leaf = ca.client_until("c", &[], None, Some((2001, 1, 1)));
    env.cert_login(None, vec![leaf.clone()]).await.unwrap();
    env.clock.advance(Duration::from_secs(366 * 86_400));
    let err = env.cert_login(None, vec![leaf]).await.unwrap_err();
    assert_eq!(
        message(&err),
        "invalid certificate or no client certificate supplied"
    );
}

#[tokio::test]
async fn cert_roles_can_pin_one_client_certificate() {
    let env = Env::new().await;
    env.enable("cert").await;
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["pinned.example.com".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "pinned.example.com");
    let pinned = params.self_signed(&key).unwrap();
    env.root(
        Operation::Update,
        "auth/cert/certs/pinned",
        json!({ "certificate": pinned.pem(), "token_policies": "p" }),
    )
    .await;
    let auth = env
        .cert_login(None, vec![pinned.der().to_vec()])
        .await
        .unwrap();
    let token = auth["client_token"].as_str().unwrap().to_owned();
    assert_eq!(env.policies_of(&token).await, ["default", "p"]);
    // Another self-signed certificate with the same names is not the pinned one.
    let key2 = KeyPair::generate().unwrap();
    let lookalike = params.self_signed(&key2).unwrap();
    let err = env
        .cert_login(None, vec![lookalike.der().to_vec()])
        .await
        .unwrap_err();
    assert_eq!(
        message(&err),
        "invalid certificate or no client certificate supplied"
    );
}

#[tokio::test]
async fn cert_role_writes_refuse_what_cannot_be_checked() {
    let env = Env::new().await;
    env.enable("cert").await;
    let root = env.root.clone();
    let ca = Ca::new("CA");
    for (body, want) in [
        (json!({}), "failed to parse certificate"),
        (
            json!({ "certificate": "garbage" }),
            "failed to parse certificate",
        ),
        (
            json!({ "certificate": ca.pem, "required_extensions": "1.2.3:*" }),
            "required_extensions is not supported",
        ),
        (
            json!({ "certificate": ca.pem, "ocsp_enabled": true }),
            "ocsp_enabled is not supported",
        ),
    ] {
        let err = env
            .call(
                Operation::Update,
                "auth/cert/certs/r",
                body,
                Some(&root),
                Vec::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(message(&err), want);
    }
    let err = env
        .call(
            Operation::Read,
            "auth/cert/certs/r",
            json!({}),
            Some(&root),
            Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::NotFound(_)), "{err:?}");
    let config = env
        .root(Operation::Read, "auth/cert/config", json!({}))
        .await
        .data
        .unwrap();
    assert_eq!(
        config,
        json!({"disable_binding": false, "enable_identity_alias_metadata": false, "ocsp_cache_size": 0})
            .as_object()
            .unwrap()
            .clone()
    );
}
