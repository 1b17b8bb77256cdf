//! The authorization matrix: every kind of bad credential against every kind of route is
//! refused with 403 `permission denied`, changes nothing, and is in the audit log.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{TestServer, call, init_unseal};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("keyhaven.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n[listener]\naddress = \"127.0.0.1:0\"\ntls_disable = true\n[log]\nformat = \"json\"\n[[audit]]\ntype = \"file\"\npath = \"{}\"\n",
            dir.join("kh.db").display(),
            dir.join("audit.log").display()
        ),
    )
    .unwrap();
    path
}

/// The routes probed: (method, path, body).
fn routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("GET", "sys/mounts", None),
        ("POST", "sys/mounts/evil", Some(json!({"type": "kv-v2"}))),
        ("DELETE", "sys/mounts/secret", None),
        (
            "POST",
            "sys/mounts/secret/tune",
            Some(json!({"max_lease_ttl": "1h"})),
        ),
        ("GET", "sys/auth", None),
        ("POST", "sys/auth/evil", Some(json!({"type": "jwt"}))),
        ("GET", "sys/policies/acl", None),
        (
            "PUT",
            "sys/policies/acl/evil",
            Some(json!({"policy": "path \"*\" { capabilities = [\"sudo\"] }"})),
        ),
        ("DELETE", "sys/policies/acl/team-a-ro", None),
        ("LIST", "sys/policies/password", None),
        (
            "PUT",
            "sys/policies/password/evil",
            Some(json!({"policy": "length = 8\nrule \"charset\" {\n charset = \"a\"\n}\n"})),
        ),
        ("GET", "sys/policies/password/strong", None),
        ("GET", "sys/policies/password/strong/generate", None),
        ("DELETE", "sys/policies/password/strong", None),
        ("GET", "sys/audit", None),
        ("POST", "sys/audit-hash/file", Some(json!({"input": "x"}))),
        ("PUT", "sys/rotate", None),
        ("GET", "sys/key-status", None),
        ("GET", "sys/internal/specs/openapi", None),
        ("PUT", "sys/seal", None),
        // Operator recovery (the token-less sys/rekey/* and sys/generate-root/* are
        // authorized by key shares, not tokens: not in this matrix).
        ("GET", "sys/rotate/root/init", None),
        (
            "PUT",
            "sys/rotate/root/init",
            Some(json!({"secret_shares": 1, "secret_threshold": 1})),
        ),
        ("DELETE", "sys/rotate/root/init", None),
        (
            "PUT",
            "sys/rotate/root/update",
            Some(json!({"key": "00", "nonce": "x"})),
        ),
        ("GET", "sys/rotate/root/verify", None),
        ("DELETE", "sys/rotate/root/verify", None),
        ("GET", "sys/rotate/root/backup", None),
        ("GET", "sys/rekey/backup", None),
        ("GET", "sys/generate-root-token/attempt", None),
        ("PUT", "sys/generate-root-token/attempt", Some(json!({}))),
        ("DELETE", "sys/generate-root-token/attempt", None),
        (
            "PUT",
            "sys/generate-root-token/update",
            Some(json!({"key": "00", "nonce": "x"})),
        ),
        ("PUT", "sys/rotate/keyring", None),
        ("GET", "sys/rotate/keyring/config", None),
        (
            "PUT",
            "sys/rotate/keyring/config",
            Some(json!({"enabled": false})),
        ),
        ("GET", "sys/host-info", None),
        ("GET", "sys/ha-status", None),
        ("PUT", "sys/step-down", None),
        ("GET", "secret/data/app", None),
        (
            "POST",
            "secret/data/app",
            Some(json!({"data": {"password": "overwritten"}})),
        ),
        (
            "PATCH",
            "secret/data/app",
            Some(json!({"data": {"x": "y"}})),
        ),
        ("DELETE", "secret/data/app", None),
        ("GET", "secret/metadata/app", None),
        ("DELETE", "secret/metadata/app", None),
        ("LIST", "secret/metadata", None),
        ("POST", "secret/destroy/app", Some(json!({"versions": [1]}))),
        (
            "POST",
            "auth/token/create",
            Some(json!({"policies": ["root"]})),
        ),
        ("POST", "auth/token/create-orphan", Some(json!({}))),
        (
            "POST",
            "auth/kubernetes/config",
            Some(json!({"pem_keys": ["x"]})),
        ),
        (
            "POST",
            "auth/kubernetes/role/evil",
            Some(json!({"token_policies": "root"})),
        ),
        ("GET", "kv1/app", None),
        ("POST", "kv1/app", Some(json!({"password": "overwritten"}))),
        ("DELETE", "kv1/app", None),
        ("LIST", "kv1", None),
        ("POST", "sys/tools/random", Some(json!({"bytes": 8}))),
        (
            "POST",
            "sys/tools/hash/sha2-256",
            Some(json!({"input": "aGk="})),
        ),
        ("GET", "sys/metrics?format=prometheus", None),
        ("GET", "sys/metrics", None),
        ("POST", "sys/wrapping/wrap", Some(json!({"k": "v"}))),
        (
            "POST",
            "sys/wrapping/unwrap",
            Some(json!({"token": "khs.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA000000"})),
        ),
        (
            "POST",
            "sys/wrapping/rewrap",
            Some(json!({"token": "khs.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA000000"})),
        ),
        ("GET", "cubbyhole/app", None),
        ("POST", "cubbyhole/app", Some(json!({"k": "v"}))),
        ("LIST", "cubbyhole", None),
        ("DELETE", "cubbyhole/app", None),
        (
            "POST",
            "auth/userpass/users/evil",
            Some(json!({"password": "x", "token_policies": "admin"})),
        ),
        ("GET", "auth/userpass/users/alice", None),
        ("LIST", "auth/userpass/users", None),
        ("DELETE", "auth/userpass/users/alice", None),
        (
            "POST",
            "auth/userpass/users/alice/password",
            Some(json!({"password": "taken-over"})),
        ),
        (
            "POST",
            "auth/userpass/users/alice/policies",
            Some(json!({"token_policies": "admin"})),
        ),
        (
            "POST",
            "auth/cert/certs/evil",
            Some(json!({"certificate": "x", "token_policies": "admin"})),
        ),
        ("GET", "auth/cert/certs/web", None),
        ("LIST", "auth/cert/certs", None),
        ("DELETE", "auth/cert/certs/web", None),
        ("GET", "auth/cert/config", None),
        (
            "POST",
            "auth/cert/config",
            Some(json!({"disable_binding": true})),
        ),
        (
            "POST",
            "auth/approle/role/evil",
            Some(json!({"token_policies": "admin"})),
        ),
        ("GET", "auth/approle/role/ci", None),
        ("LIST", "auth/approle/role", None),
        ("DELETE", "auth/approle/role/ci", None),
        ("GET", "auth/approle/role/ci/role-id", None),
        (
            "POST",
            "auth/approle/role/ci/role-id",
            Some(json!({"role_id": "taken-over"})),
        ),
        ("POST", "auth/approle/role/ci/secret-id", Some(json!({}))),
        ("LIST", "auth/approle/role/ci/secret-id", None),
        (
            "POST",
            "auth/approle/role/ci/custom-secret-id",
            Some(json!({"secret_id": "chosen-by-an-attacker"})),
        ),
        (
            "POST",
            "auth/approle/role/ci/secret-id/lookup",
            Some(json!({"secret_id": "x"})),
        ),
        (
            "POST",
            "auth/approle/role/ci/secret-id/destroy",
            Some(json!({"secret_id": "x"})),
        ),
        (
            "POST",
            "auth/approle/role/ci/secret-id-accessor/lookup",
            Some(json!({"secret_id_accessor": "x"})),
        ),
        (
            "POST",
            "auth/approle/role/ci/secret-id-accessor/destroy",
            Some(json!({"secret_id_accessor": "x"})),
        ),
        ("POST", "auth/approle/tidy/secret-id", Some(json!({}))),
        // Leases.
        (
            "PUT",
            "sys/leases/lookup",
            Some(json!({"lease_id": "database/creds/ro/x"})),
        ),
        ("LIST", "sys/leases/lookup/database/creds/", None),
        (
            "PUT",
            "sys/leases/renew",
            Some(json!({"lease_id": "database/creds/ro/x"})),
        ),
        (
            "PUT",
            "sys/renew",
            Some(json!({"lease_id": "database/creds/ro/x"})),
        ),
        (
            "PUT",
            "sys/leases/revoke",
            Some(json!({"lease_id": "database/creds/ro/x"})),
        ),
        ("PUT", "sys/leases/revoke/database/creds/ro/x", None),
        (
            "PUT",
            "sys/revoke",
            Some(json!({"lease_id": "database/creds/ro/x"})),
        ),
        ("PUT", "sys/leases/revoke-prefix/database", None),
        ("PUT", "sys/revoke-prefix/database", None),
        ("PUT", "sys/leases/revoke-force/database", None),
        ("PUT", "sys/revoke-force/database", None),
        ("PUT", "sys/leases/tidy", None),
        ("GET", "sys/leases?type=irrevocable", None),
        ("GET", "sys/leases/count?type=irrevocable", None),
        // The database secrets engine.
        (
            "POST",
            "database/config/evil",
            Some(
                json!({"plugin_name": "postgresql-database-plugin", "connection_url": "postgresql://127.0.0.1:1/x", "verify_connection": false, "allowed_roles": "*"}),
            ),
        ),
        ("GET", "database/config/pg", None),
        ("LIST", "database/config", None),
        ("DELETE", "database/config/pg", None),
        ("POST", "database/reset/pg", None),
        ("POST", "database/rotate-root/pg", None),
        (
            "POST",
            "database/roles/evil",
            Some(
                json!({"db_name": "pg", "creation_statements": "CREATE ROLE \"{{name}}\" SUPERUSER;"}),
            ),
        ),
        ("GET", "database/roles/ro", None),
        ("LIST", "database/roles", None),
        ("DELETE", "database/roles/ro", None),
        ("GET", "database/creds/ro", None),
        (
            "POST",
            "database/static-roles/evil",
            Some(json!({"db_name": "pg", "username": "postgres", "rotation_period": "1h"})),
        ),
        ("GET", "database/static-roles/app", None),
        ("LIST", "database/static-roles", None),
        ("DELETE", "database/static-roles/app", None),
        ("GET", "database/static-creds/app", None),
        ("POST", "database/rotate-role/app", None),
        ("GET", "nomount/anything", None),
    ]
}

/// Routes an under-privileged token may still use (its own token, its own capabilities).
fn allowed_for_default_policy(path: &str) -> bool {
    path.starts_with("auth/token/lookup-self")
        || path.starts_with("sys/capabilities-self")
        || path.starts_with("sys/tools/hash")
        || path.starts_with("cubbyhole")
        || path == "sys/wrapping/wrap"
        || path == "sys/wrapping/unwrap"
        // The default policy lets a token renew and look up a lease whose id it knows.
        || path == "sys/leases/renew"
        || path == "sys/leases/lookup"
}

struct Jwk {
    private_pem: String,
    public_pem: String,
}

fn keypair() -> Jwk {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    Jwk {
        private_pem: kp.serialize_pem(),
        public_pem: kp.public_key_pem(),
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "the test issuer signs with real time, which the server checks against"
)]
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(ns: &str, sa: &str, aud: &str, exp_offset: i64) -> Value {
    let now = now() as i64;
    json!({
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "aud": [aud],
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + exp_offset,
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": {"name": sa, "uid": "0f6c1f5e-7d43-4a8e-9d61-2f1b4c7a9e10"},
            "pod": {"name": "app-7d9f", "uid": "4b8f2a1c-3e5d-4c6b-8a9f-1d2e3f4a5b6c"}
        }
    })
}

fn sign_es256(key: &Jwk, claims: &Value) -> String {
    let k = jsonwebtoken::EncodingKey::from_ec_pem(key.private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        claims,
        &k,
    )
    .unwrap()
}

fn unsigned(alg: &str, claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(json!({"alg": alg, "typ": "JWT"}).to_string()),
        b64.encode(claims.to_string())
    )
}

fn hs256_with_public_key(key: &Jwk, claims: &Value) -> String {
    let k = jsonwebtoken::EncodingKey::from_secret(key.public_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &k,
    )
    .unwrap()
}

fn audit_records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn every_bad_credential_is_refused_on_every_route_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(&config(dir.path()));
    let addr = server.addr();
    let (_, root) = init_unseal(&addr, 1, 1);
    let v1 = |p: &str| format!("{addr}/v1/{p}");
    let ok = |method: &str, path: &str, body: Value| {
        let (s, b) = call(method, &v1(path), Some(&root), Some(&body));
        assert!(s == 200 || s == 204, "{method} {path}: {s} {b}");
        b
    };

    ok("POST", "sys/mounts/secret", json!({"type": "kv-v2"}));
    ok(
        "POST",
        "secret/data/app",
        json!({"data": {"password": "original"}}),
    );
    ok("POST", "sys/mounts/kv1", json!({"type": "kv"}));
    ok(
        "PUT",
        "sys/policies/password/strong",
        json!({"policy": "length = 16\nrule \"charset\" {\n charset = \"abcdefghijklmnopqrstuvwxyz0123456789\"\n}\n"}),
    );
    ok("POST", "kv1/app", json!({"password": "original-v1"}));
    ok(
        "PUT",
        "sys/policies/acl/team-a-ro",
        json!({"policy": "path \"secret/data/team-a/*\" { capabilities = [\"read\"] }"}),
    );
    ok(
        "PUT",
        "sys/policies/acl/minter",
        json!({"policy": "path \"auth/token/create\" { capabilities = [\"update\"] }\npath \"secret/*\" { capabilities = [\"read\", \"update\", \"delete\", \"list\", \"patch\"] }"}),
    );

    // People: a userpass user; machines with client certificates: a cert role.
    ok("POST", "sys/auth/userpass", json!({"type": "userpass"}));
    ok(
        "POST",
        "auth/userpass/users/alice",
        json!({"password": "alice-Pa55", "token_policies": "team-a-ro"}),
    );
    ok("POST", "sys/auth/cert", json!({"type": "cert"}));
    // A database engine whose connection is never opened (no login reaches it).
    ok("POST", "sys/mounts/database", json!({"type": "database"}));
    ok(
        "POST",
        "database/config/pg",
        json!({"plugin_name": "postgresql-database-plugin", "connection_url": "postgresql://127.0.0.1:1/none", "verify_connection": false, "allowed_roles": "*"}),
    );
    ok(
        "POST",
        "database/roles/ro",
        json!({"db_name": "pg", "creation_statements": "CREATE ROLE \"{{name}}\";"}),
    );
    ok("POST", "sys/auth/approle", json!({"type": "approle"}));
    ok(
        "POST",
        "auth/approle/role/ci",
        json!({"token_policies": "team-a-ro"}),
    );
    let client_ca = rcgen::generate_simple_self_signed(vec!["client-ca".to_owned()]).unwrap();
    ok(
        "POST",
        "auth/cert/certs/web",
        json!({"certificate": client_ca.cert.pem(), "token_policies": "team-a-ro"}),
    );
    let (s, b) = call(
        "POST",
        &v1("auth/userpass/login/alice"),
        None,
        Some(&json!({"password": "wrong"})),
    );
    assert_eq!(s, 400, "a wrong password: {b}");
    assert_eq!(b["errors"], json!(["invalid username or password"]));
    let (s, b) = call(
        "POST",
        &v1("auth/userpass/login/alice"),
        None,
        Some(&json!({"password": "alice-Pa55"})),
    );
    assert_eq!(s, 200, "valid login refused: {b}");
    let user_token = b["auth"]["client_token"].as_str().unwrap().to_owned();

    // Workload identity: a test issuer with an ECDSA key, a role bound to team-a/app.
    let issuer = keypair();
    ok("POST", "sys/auth/kubernetes", json!({"type": "kubernetes"}));
    ok(
        "POST",
        "auth/kubernetes/config",
        json!({"pem_keys": [issuer.public_pem.clone()], "issuer": ISSUER}),
    );
    ok(
        "POST",
        "auth/kubernetes/role/app",
        json!({"bound_service_account_names": "app", "bound_service_account_namespaces": "team-a", "audience": "keyhaven", "token_policies": "team-a-ro", "token_ttl": "5m"}),
    );
    // The control: a correct pod token logs in.
    let good = sign_es256(&issuer, &claims("team-a", "app", "keyhaven", 600));
    let (s, b) = call(
        "POST",
        &v1("auth/kubernetes/login"),
        None,
        Some(&json!({"role": "app", "jwt": good})),
    );
    assert_eq!(s, 200, "valid login refused: {b}");
    let pod_token = b["auth"]["client_token"].as_str().unwrap().to_owned();
    assert_eq!(b["auth"]["metadata"]["service_account_namespace"], "team-a");

    // Credentials that must not work.
    let create = |body: Value, token: &str| {
        let (s, b) = call("POST", &v1("auth/token/create"), Some(token), Some(&body));
        assert_eq!(s, 200, "{b}");
        b["auth"]["client_token"].as_str().unwrap().to_owned()
    };
    let expired = create(json!({"policies": ["minter"], "ttl": "1s"}), &root);
    let revoked = create(json!({"policies": ["minter"]}), &root);
    ok("POST", "auth/token/revoke", json!({"token": revoked}));
    let parent = create(json!({"policies": ["minter"]}), &root);
    let orphaned_child = create(json!({"policies": ["minter"]}), &parent);
    ok("POST", "auth/token/revoke", json!({"token": parent}));
    let under = create(json!({"policies": ["team-a-ro"]}), &root);
    std::thread::sleep(Duration::from_millis(1500)); // the 1 s token expires (bounded wait)

    let mut tokens: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        (
            "unknown",
            Some("khs.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA000000".to_owned()),
        ),
        ("garbage", Some("not-a-token".to_owned())),
        ("expired", Some(expired)),
        ("revoked", Some(revoked)),
        ("revoked parent", Some(orphaned_child)),
        ("under-privileged", Some(under.clone())),
        ("pod token (team-a-ro)", Some(pod_token.clone())),
        ("userpass token (team-a-ro)", Some(user_token.clone())),
    ];
    let before = audit_records(dir.path()).len();
    let mut attempts = 0;
    for (label, token) in tokens.drain(..) {
        for (method, path, body) in routes() {
            let limited = label.starts_with("under")
                || label.starts_with("pod")
                || label.starts_with("userpass");
            if limited && allowed_for_default_policy(path) {
                continue;
            }
            let (s, b) = call(method, &v1(path), token.as_deref(), body.as_ref());
            if path == "nomount/anything" && limited {
                // A valid token on an unmounted path: still no access (policy denies first).
                assert_eq!(s, 403, "{label}: {method} {path}: {b}");
            } else {
                assert_eq!(s, 403, "{label}: {method} {path}: {b}");
            }
            assert_eq!(
                b["errors"],
                json!(["permission denied"]),
                "{label}: {method} {path}"
            );
            attempts += 1;
        }
    }

    // Forged and mismatched workload tokens at login.
    let wrong_key = keypair();
    let forged = [
        (
            "alg=none",
            unsigned("none", &claims("team-a", "app", "keyhaven", 600)),
        ),
        (
            "wrong key",
            sign_es256(&wrong_key, &claims("team-a", "app", "keyhaven", 600)),
        ),
        (
            "HS256 keyed with the public key",
            hs256_with_public_key(&issuer, &claims("team-a", "app", "keyhaven", 600)),
        ),
        (
            "expired",
            sign_es256(&issuer, &claims("team-a", "app", "keyhaven", -120)),
        ),
        (
            "wrong audience",
            sign_es256(&issuer, &claims("team-a", "app", "vault", 600)),
        ),
        (
            "wrong namespace",
            sign_es256(&issuer, &claims("team-b", "app", "keyhaven", 600)),
        ),
        (
            "wrong service account",
            sign_es256(&issuer, &claims("team-a", "other", "keyhaven", 600)),
        ),
        ("garbage", "eyJhbGciOiJFUzI1NiJ9.e30.AAAA".to_owned()),
    ];
    for (label, jwt) in &forged {
        let (s, b) = call(
            "POST",
            &v1("auth/kubernetes/login"),
            None,
            Some(&json!({"role": "app", "jwt": jwt})),
        );
        assert_eq!(s, 403, "{label}: {b}");
        assert_eq!(b["errors"], json!(["permission denied"]), "{label}");
        assert!(b["auth"].is_null(), "{label}: a token was issued");
        attempts += 1;
    }

    // Nothing changed.
    let (s, b) = call("GET", &v1("secret/data/app"), Some(&root), None);
    assert_eq!(
        (s, b["data"]["data"]["password"].as_str()),
        (200, Some("original"))
    );
    assert_eq!(b["data"]["metadata"]["version"], 1);
    let (s, b) = call("GET", &v1("kv1/app"), Some(&root), None);
    assert_eq!(
        (s, b["data"]["password"].as_str()),
        (200, Some("original-v1"))
    );
    let (_, mounts) = call("GET", &v1("sys/mounts"), Some(&root), None);
    assert!(mounts["data"].get("evil/").is_none());
    let (_, status) = call("GET", &v1("sys/seal-status"), None, None);
    assert_eq!(status["sealed"], false);
    let (s, _) = call("GET", &v1("sys/policies/acl/evil"), Some(&root), None);
    assert_eq!(s, 404);
    let (s, b) = call(
        "POST",
        &v1("auth/userpass/login/alice"),
        None,
        Some(&json!({"password": "alice-Pa55"})),
    );
    assert_eq!(s, 200, "alice's password was changed: {b}");
    assert_eq!(b["auth"]["token_policies"], json!(["default", "team-a-ro"]));
    let (s, _) = call("GET", &v1("auth/userpass/users/evil"), Some(&root), None);
    assert_eq!(s, 404);
    let (s, _) = call("GET", &v1("auth/cert/certs/web"), Some(&root), None);
    assert_eq!(s, 200);

    // Every attempt is in the audit log, as a request record carrying the denial.
    let records = audit_records(dir.path());
    // Refused tokens are denied at the request record; refused logins (which need no
    // token) in the response record of the same request id.
    let denied: std::collections::HashSet<String> = records[before..]
        .iter()
        .filter(|r| {
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("permission denied"))
        })
        .filter_map(|r| r["request"]["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        denied.len(),
        attempts,
        "every refused attempt has exactly one audited request id"
    );
    // And the log holds no token or JWT in clear.
    let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    for secret in [
        root.as_str(),
        under.as_str(),
        pod_token.as_str(),
        good.as_str(),
        "original",
        "original-v1",
        user_token.as_str(),
        "alice-Pa55",
        "taken-over",
    ] {
        assert!(!text.contains(secret), "audit log holds a secret in clear");
    }
}
