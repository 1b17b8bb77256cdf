//! The route tables are the one source of what a path is: these tests walk every route
//! of every mounted backend (the built-in `sys/` and `auth/token/` included) through the
//! core.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::audit::tests::{MemDevice, core_with, req};
use crate::route::Route;
use crate::{Core, EngineError, Operation};

/// A concrete path for a pattern: every capture filled, optional segments left out.
fn sample(pattern: &str) -> String {
    pattern
        .split('/')
        .filter(|seg| !seg.ends_with("?}"))
        .map(|seg| {
            if seg.ends_with("+}") || seg.ends_with("*}") {
                "walk/leaf"
            } else if seg.starts_with('{') {
                "walk"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn ok(core: &Core, op: Operation, path: &str, body: Value, token: &str) -> Value {
    let r = core
        .handle(req(op, path, body, Some(token)))
        .await
        .unwrap_or_else(|e| panic!("{op} {path}: {e}"));
    json!({"data": r.data, "auth": r.auth, "warnings": r.warnings})
}

/// A core with one mount of every backend, a token whose policy grants every capability
/// but `sudo` on every path, and every route: (full path, operation, route).
async fn walk() -> (
    Arc<Core>,
    Arc<MemDevice>,
    String,
    String,
    Vec<(String, Operation, &'static Route)>,
) {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    for (path, kind) in [
        ("sys/mounts/transit", "transit"),
        ("sys/mounts/kv1", "kv"),
        ("sys/auth/kubernetes", "kubernetes"),
        ("sys/auth/jwt", "jwt"),
        ("sys/auth/userpass", "userpass"),
        ("sys/auth/cert", "cert"),
        ("sys/auth/approle", "approle"),
    ] {
        ok(&core, Operation::Update, path, json!({"type": kind}), &root).await;
    }
    let everything =
        r#"path "*" { capabilities = ["create", "read", "update", "patch", "delete", "list"] }"#;
    ok(
        &core,
        Operation::Update,
        "sys/policies/acl/walker",
        json!({"policy": everything}),
        &root,
    )
    .await;
    let created = ok(
        &core,
        Operation::Update,
        "auth/token/create",
        json!({"policies": ["walker"], "no_default_policy": true}),
        &root,
    )
    .await;
    let walker = created["auth"]["client_token"].as_str().unwrap().to_owned();

    let inner = core.unsealed().unwrap();
    let secrets = inner.secrets.read().clone();
    let auth = inner.auth.read().clone();
    let mut routes = Vec::new();
    let mounts = secrets
        .mounted()
        .iter()
        .map(|m| (String::new(), m))
        .chain(auth.mounted().iter().map(|m| ("auth/".to_owned(), m)));
    let mut kinds = Vec::new();
    for (prefix, mounted) in mounts {
        kinds.push(mounted.entry.kind.clone());
        for route in mounted.handler.routes() {
            let path = format!("{prefix}{}{}", mounted.entry.path, sample(route.pattern));
            for op in route.ops.iter() {
                if op != Operation::Create {
                    routes.push((path.clone(), op, route));
                }
            }
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "approle",
            "cert",
            "cubbyhole",
            "jwt",
            "kubernetes",
            "kv",
            "kv",
            "system",
            "token",
            "transit",
            "userpass"
        ],
        "every backend is walked"
    );
    (core, dev, root, walker, routes)
}

#[tokio::test]
async fn every_route_takes_sudo_purity_and_authentication_from_its_table() {
    let (core, dev, root, walker, routes) = walk().await;
    let inner = core.unsealed().unwrap();
    let mut sudo_routes = 0;
    for (path, op, route) in &routes {
        let (path, op, route) = (path.as_str(), *op, *route);
        // The sample path reaches this very route.
        let found = core.route_of(&inner, op, path).unwrap();
        assert!(
            std::ptr::eq(found, route),
            "{op} {path} matched {}",
            found.pattern
        );

        // Sudo: the policy grants everything but sudo, so exactly the routes marked sudo
        // are refused, and for that reason.
        let explained = ok(
            &core,
            Operation::Update,
            "sys/policies/explain",
            json!({"token": walker, "path": path, "operation": op.as_str()}),
            &root,
        )
        .await;
        let allowed = explained["data"]["allowed"].as_bool().unwrap();
        assert_eq!(allowed, !route.sudo, "{op} {path}: {explained}");
        if route.sudo {
            sudo_routes += 1;
            let reason = explained["data"]["reason"].as_str().unwrap();
            assert!(reason.contains("root-protected"), "{op} {path}: {reason}");
        }

        // Authentication: without a token, only unauthenticated routes get past it.
        let anonymous = core.handle(req(op, path, json!({}), None)).await;
        let refused = matches!(anonymous, Err(EngineError::PermissionDenied));
        assert_eq!(
            refused, !route.unauthenticated,
            "{op} {path}: {anonymous:?}"
        );

        // Purity: only reads and lists can be pure; running one as root records the
        // request with its response in one hand-over, and an impure read records the
        // request first. (Writes are not run: they would seal, rotate, revoke…)
        assert!(
            !route.is_pure(Operation::Update)
                && !route.is_pure(Operation::Patch)
                && !route.is_pure(Operation::Delete),
            "{op} {path} declares a write pure"
        );
        if matches!(op, Operation::Read | Operation::List) {
            let before = dev.calls.lock().len();
            let _ = core.handle(req(op, path, json!({}), Some(&root))).await;
            let calls = dev.calls.lock()[before..].to_vec();
            let expected: &[usize] = if route.is_pure(op) { &[2] } else { &[1, 1] };
            assert_eq!(calls, expected, "{op} {path}");
        }
    }
    assert!(
        sudo_routes >= 6,
        "the sys/ and auth/token/ tables mark sudo routes"
    );
}

#[tokio::test]
async fn wrong_types_are_refused_naming_the_field_and_unknown_fields_warned_in_every_backend() {
    let (core, _dev, root, _walker, _routes) = walk().await;
    // One route of each backend, a body it accepts, and a field given the wrong type.
    let cases: &[(&str, Value, &str, Value)] = &[
        (
            "secret/data/app",
            json!({"data": {"a": "b"}}),
            "options",
            json!("cas=1"),
        ),
        (
            "secret/config",
            json!({"max_versions": 3}),
            "max_versions",
            json!("three"),
        ),
        (
            "transit/keys/k",
            json!({"type": "aes256-gcm96"}),
            "exportable",
            json!("perhaps"),
        ),
        (
            "transit/encrypt/k",
            json!({"plaintext": "aGk="}),
            "key_version",
            json!("latest"),
        ),
        (
            "auth/kubernetes/role/r",
            json!({"bound_service_account_names": ["a"], "bound_service_account_namespaces": ["b"], "audience": "x"}),
            "token_ttl",
            json!("soon"),
        ),
        (
            "auth/jwt/role/r",
            json!({"user_claim": "sub", "bound_audiences": ["x"]}),
            "token_num_uses",
            json!(-1),
        ),
        (
            "auth/userpass/users/u",
            json!({"password": "pw"}),
            "token_ttl",
            json!("soon"),
        ),
        (
            "auth/approle/role/r",
            json!({"bind_secret_id": true}),
            "secret_id_num_uses",
            json!("many"),
        ),
        (
            "auth/cert/config",
            json!({"disable_binding": true}),
            "ocsp_cache_size",
            json!("big"),
        ),
        (
            "auth/token/create",
            json!({"policies": ["default"]}),
            "num_uses",
            json!("many"),
        ),
        (
            "sys/policies/acl/p",
            json!({"policy": "path \"a\" { capabilities = [\"read\"] }"}),
            "policy",
            json!(7),
        ),
        (
            "sys/mounts/kv2",
            json!({"type": "kv-v2"}),
            "config",
            json!("none"),
        ),
    ];
    for (path, body, field, bad) in cases {
        let mut good = body.clone();
        good["bogus_field"] = json!(1);
        let answer = ok(&core, Operation::Update, path, good, &root).await;
        let warnings: Vec<String> = serde_json::from_value(answer["warnings"].clone()).unwrap();
        assert!(
            warnings.contains(
                &"Endpoint ignored these unrecognized parameters: [bogus_field]".to_owned()
            ),
            "{path}: {warnings:?}"
        );
        let mut wrong = body.clone();
        wrong[*field] = bad.clone();
        let err = core
            .handle(req(Operation::Update, path, wrong, Some(&root)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, EngineError::InvalidRequest(_)),
            "{path}: {err:?}"
        );
        assert!(
            err.to_string().contains(&format!("{field:?}")),
            "{path}: {err}"
        );
        let shown = bad.as_str().map_or_else(|| bad.to_string(), str::to_owned);
        assert!(
            !err.to_string().contains(&shown),
            "{path} echoes the value: {err}"
        );
    }
}

/// The captures of a matched route, taken again from where they lie in the path (as the
/// core does once it has routed a request), are what matching the whole table gives.
#[tokio::test]
async fn a_matched_routes_captures_are_taken_again_from_their_spans() {
    use crate::route::match_route;
    let (core, _dev, _root, _walker, _routes) = walk().await;
    let inner = core.unsealed().unwrap();
    let secrets = inner.secrets.read().clone();
    let auth = inner.auth.read().clone();
    let all_ops = [
        Operation::Read,
        Operation::Create,
        Operation::Update,
        Operation::Patch,
        Operation::Delete,
        Operation::List,
    ];
    let mut checked = 0;
    for mounted in secrets.mounted().iter().chain(auth.mounted()) {
        let table = mounted.handler.routes();
        for route in table {
            let path = sample(route.pattern);
            for rel in [
                path.clone(),
                format!("{path}/"),
                format!("{path}/x"),
                String::new(),
            ] {
                for op in all_ops {
                    let Some(m) = match_route(table, op, &rel) else {
                        continue;
                    };
                    // Taken again from spans, from the same path and from a copy.
                    let spans = m.captures.spans(&rel).expect("captures lie in the path");
                    let copy = rel.clone();
                    for path in [&rel, &copy] {
                        let again = spans.captures(path).expect("spans fit the path");
                        assert_eq!(
                            again.iter().collect::<Vec<_>>(),
                            m.captures.iter().collect::<Vec<_>>(),
                            "{op} {rel}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "{checked}");
}
