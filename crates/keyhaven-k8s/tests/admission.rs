//! `keyhaven admission`: AdmissionReview fixtures written as the apiserver sends them, the
//! enforce-by-default checks (each denied, each hardened twin allowed), exemptions, the
//! policy modes, and bad input.

use std::path::Path;

use keyhaven_k8s::admission::policy::DEFAULT_MODES;
use keyhaven_k8s::admission::{Admission, Decision, Mode, Policy, ReviewError};
use serde_json::{Value, json};

fn admission() -> Admission {
    Admission::new(Policy::default()).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/admission")
            .join(name),
    )
    .unwrap()
}

fn denied_checks(d: &Decision) -> Vec<String> {
    d.hits
        .iter()
        .filter(|h| h.mode == Mode::Enforce)
        .map(|h| h.check.clone())
        .collect()
}

/// The response as the apiserver reads it: same apiVersion/kind, the uid echoed, a 403
/// status with a message on deny.
fn check_shape(d: &Decision, request: &Value) {
    let r = d.to_review();
    // What the webhook writes on the wire is that document.
    let written: Value = serde_json::from_slice(&d.to_review_json()).unwrap();
    assert_eq!(written, r);
    assert_eq!(r["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(r["kind"], "AdmissionReview");
    assert_eq!(r["response"]["uid"], request["request"]["uid"]);
    assert_eq!(r["response"]["allowed"], d.allowed);
    if d.allowed {
        assert!(r["response"].get("status").is_none(), "{r}");
    } else {
        assert_eq!(r["response"]["status"]["code"], 403, "{r}");
        assert_eq!(r["response"]["status"]["reason"], "Forbidden");
        let msg = r["response"]["status"]["message"].as_str().unwrap();
        for h in d.hits.iter().filter(|h| h.mode == Mode::Enforce) {
            assert!(msg.contains(&format!("[{}] {}", h.check, h.field)), "{msg}");
            assert!(msg.contains(&format!("Fix: {}", h.fix)), "{msg}");
        }
    }
    for w in r["response"]["warnings"].as_array().into_iter().flatten() {
        assert!(w.as_str().unwrap().chars().count() < 120, "{w}");
    }
}

#[test]
fn fixtures_as_the_apiserver_sends_them() {
    let a = admission();
    // (fixture, allowed, checks that deny, a field path the message names)
    let cases: &[(&str, bool, &[&str], &str)] = &[
        (
            "create-deployment-privileged.json",
            false,
            &["k8s-privileged"],
            "spec.template.spec.containers[0].securityContext.privileged",
        ),
        ("create-deployment-hardened.json", true, &[], ""),
        // The old object was already privileged: scaling it is not blocked (warned).
        ("update-deployment-scale-existing.json", true, &[], ""),
        (
            "update-deployment-adds-host-pid.json",
            false,
            &["k8s-host-pid"],
            "spec.template.spec.hostPID",
        ),
        ("delete-pod-privileged.json", true, &[], ""),
        (
            "dry-run-create-pod-privileged.json",
            false,
            &["k8s-privileged"],
            "spec.containers[0].securityContext.privileged",
        ),
        ("create-pod-generate-name.json", true, &[], ""),
        (
            "ephemeral-containers-privileged.json",
            false,
            &["k8s-privileged", "k8s-privilege-escalation"],
            "spec.ephemeralContainers[0].securityContext.privileged",
        ),
        ("ephemeral-containers-hardened.json", true, &[], ""),
        ("update-pod-status-subresource.json", true, &[], ""),
    ];
    for (name, allowed, checks, field) in cases {
        let body = fixture(name);
        let request: Value = serde_json::from_slice(&body).unwrap();
        let d = a.review(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(d.allowed, *allowed, "{name}: {:?}", d.to_review());
        let mut got = denied_checks(&d);
        got.sort();
        let mut want: Vec<String> = checks.iter().map(|c| (*c).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "{name}");
        if !field.is_empty() {
            assert!(
                d.message.as_deref().unwrap().contains(field),
                "{name}: {:?}",
                d.message
            );
        }
        check_shape(&d, &request);
    }

    // The dry run decides exactly as the real request would.
    let dry = a
        .review(&fixture("dry-run-create-pod-privileged.json"))
        .unwrap();
    assert!(dry.dry_run);
    let mut real: Value =
        serde_json::from_slice(&fixture("dry-run-create-pod-privileged.json")).unwrap();
    real["request"]["dryRun"] = json!(false);
    let real = a.review(&serde_json::to_vec(&real).unwrap()).unwrap();
    assert_eq!(dry.message, real.message);

    // generateName without a name: the decision names the prefix.
    let g = a.review(&fixture("create-pod-generate-name.json")).unwrap();
    assert_eq!(g.name, "web-*");

    // An UPDATE that keeps a pre-existing violation warns about it instead.
    let s = a
        .review(&fixture("update-deployment-scale-existing.json"))
        .unwrap();
    assert!(
        s.warnings
            .iter()
            .any(|w| w.starts_with("[k8s-privileged] ")),
        "{:?}",
        s.warnings
    );
}

fn hardened_spec() -> Value {
    json!({
        "serviceAccountName": "web",
        "automountServiceAccountToken": false,
        "securityContext": {"runAsNonRoot": true, "runAsUser": 10001},
        "containers": [{
            "name": "web",
            "image": "registry.example.org/shop/web:2.1.0",
            "args": ["--listen=:8080"],
            "env": [{"name": "LOG_LEVEL", "value": "info"}],
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
            },
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}}
        }],
        "volumes": [{"name": "tmp", "emptyDir": {}}]
    })
}

fn workload(kind: &str, spec: Value) -> Value {
    let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": spec});
    let body = match kind {
        "Pod" => {
            return json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop"}, "spec": template["spec"]});
        }
        "CronJob" => {
            json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}})
        }
        "Job" => json!({"template": template}),
        _ => json!({"selector": {"matchLabels": {"app": "web"}}, "template": template}),
    };
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "web", "namespace": "shop"}, "spec": body})
}

fn create(object: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0f4a6c2e-7b1d-4e8a-9c3f-5d2b1a0e9f87",
            "kind": {"group": "", "version": "v1", "kind": object["kind"]},
            "resource": {"group": "", "version": "v1", "resource": "x"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "dev"},
            "object": object,
            "dryRun": false
        }
    }))
    .unwrap()
}

fn edit(f: impl Fn(&mut Value)) -> Value {
    let mut spec = hardened_spec();
    f(&mut spec);
    workload("Deployment", spec)
}

fn aws_key_id() -> String {
    // Assembled here so that scanning this repository does not flag the test file.
    format!("AKIA{}", "QYLPMN5HHHFPZAM2")
}

/// For every check that enforces by default: a manifest it denies, and the hardened
/// twin allowed. A new enforce-by-default check without a case here fails the test.
#[test]
fn every_enforced_check_denies_and_its_hardened_twin_passes() {
    let policy =
        Policy::from_toml("p.toml", "[secrets]\nkeyhaven_namespaces = [\"shop\"]\n").unwrap();
    let a = Admission::new(policy).unwrap();
    let c0 = "/containers/0";
    let risky: Vec<(&str, Value)> = vec![
        (
            "k8s-privileged",
            edit(|s| s.pointer_mut(c0).unwrap()["securityContext"]["privileged"] = json!(true)),
        ),
        ("k8s-host-network", edit(|s| s["hostNetwork"] = json!(true))),
        ("k8s-host-pid", edit(|s| s["hostPID"] = json!(true))),
        ("k8s-host-ipc", edit(|s| s["hostIPC"] = json!(true))),
        (
            "k8s-host-path",
            edit(|s| {
                s["volumes"][0] =
                    json!({"name": "tmp", "hostPath": {"path": "/var/run/docker.sock"}})
            }),
        ),
        (
            "k8s-added-capabilities",
            edit(|s| {
                s.pointer_mut(c0).unwrap()["securityContext"]["capabilities"]["add"] =
                    json!(["SYS_ADMIN"])
            }),
        ),
        (
            "k8s-privilege-escalation",
            edit(|s| {
                s.pointer_mut(c0).unwrap()["securityContext"]["allowPrivilegeEscalation"] =
                    json!(true)
            }),
        ),
        (
            "k8s-env-literal-secret",
            edit(|s| {
                s.pointer_mut(c0).unwrap()["env"] =
                    json!([{"name": "DB_PASSWORD", "value": "Qx7-pL2vR9w"}])
            }),
        ),
        (
            "secret-rules",
            edit(|s| {
                s.pointer_mut(c0).unwrap()["args"] =
                    json!([format!("--aws-key-id={}", aws_key_id())])
            }),
        ),
        (
            "k8s-configmap-credential",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "shop"}, "data": {"db_password": "Qx7-pL2vR9w"}}),
        ),
        (
            "k8s-secret-in-keyhaven-namespace",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"}, "stringData": {"password": "x"}}),
        ),
    ];
    let enforced: Vec<&str> = DEFAULT_MODES
        .iter()
        .filter(|(_, m)| *m == Mode::Enforce)
        .map(|(c, _)| *c)
        .collect();
    let mut covered: Vec<&str> = risky.iter().map(|(c, _)| *c).collect();
    covered.sort_unstable();
    let mut want = enforced.clone();
    want.sort_unstable();
    assert_eq!(covered, want, "every enforce-by-default check needs a case");

    for (check, object) in &risky {
        let body = create(object);
        let d = a.review(&body).unwrap();
        assert!(!d.allowed, "{check}: {:?}", d.to_review());
        let ids: Vec<String> = denied_checks(&d);
        let matched = if *check == "secret-rules" {
            ids.iter().any(|i| i == "aws-access-key-id")
        } else {
            ids.iter().any(|i| i == check)
        };
        assert!(matched, "{check} not in {ids:?}");
        check_shape(&d, &serde_json::from_slice(&body).unwrap());
        let message = d.message.clone().unwrap();
        assert!(
            !message.contains("Qx7-pL2vR9w") && !message.contains(&aws_key_id()),
            "a secret value in {message}"
        );
        assert!(!format!("{d:?}").contains("Qx7-pL2vR9w"));
    }

    // The hardened twins: every workload kind, a clean ConfigMap, a Secret elsewhere.
    let b = admission();
    for kind in [
        "Pod",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
    ] {
        let d = b.review(&create(&workload(kind, hardened_spec()))).unwrap();
        assert!(
            d.allowed && d.warnings.is_empty() && d.hits.is_empty(),
            "{kind}: {:?}",
            d.to_review()
        );
        let mut risky = hardened_spec();
        risky["hostNetwork"] = json!(true);
        let d = b.review(&create(&workload(kind, risky))).unwrap();
        assert_eq!(denied_checks(&d), vec!["k8s-host-network"], "{kind}");
    }
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "shop"}, "data": {"db_password_file": "/run/secrets/db", "log_level": "info"}});
    assert!(a.review(&create(&cm)).unwrap().allowed);
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "other"}, "stringData": {"password": "x"}});
    let mut req: Value = serde_json::from_slice(&create(&secret)).unwrap();
    req["request"]["namespace"] = json!("other");
    assert!(
        a.review(&serde_json::to_vec(&req).unwrap())
            .unwrap()
            .allowed
    );
}

#[test]
fn exemption_needs_a_reason_and_is_recorded() {
    let a = admission();
    let mut object = edit(|s| s["hostNetwork"] = json!(true));
    object["metadata"]["annotations"] = json!({
        "posture.keyhaven.io/allow-k8s-host-network": "CNI agent: must program the node's network stack"
    });
    let d = a.review(&create(&object)).unwrap();
    assert!(d.allowed, "{:?}", d.to_review());
    let audit = &d.to_review()["response"]["auditAnnotations"]["exempted"];
    let audit = audit.as_str().unwrap();
    assert!(
        audit.contains("k8s-host-network@spec.template.spec.hostNetwork"),
        "{audit}"
    );
    assert!(audit.contains("CNI agent"), "{audit}");

    object["metadata"]["annotations"] =
        json!({"posture.keyhaven.io/allow-k8s-host-network": "needed"});
    let d = a.review(&create(&object)).unwrap();
    assert!(!d.allowed);
    assert!(
        d.message
            .unwrap()
            .contains("annotation posture.keyhaven.io/allow-k8s-host-network ignored")
    );

    // An exemption of a secret check works the same way.
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "shop"}, "data": {"db_password": "Qx7-pL2vR9w"}});
    cm["metadata"]["annotations"] = json!({"posture.keyhaven.io/allow-k8s-configmap-credential": "fixture data for the staging smoke test only"});
    let d = a.review(&create(&cm)).unwrap();
    assert!(d.allowed, "{:?}", d.to_review());
    assert!(d.audit["exempted"].contains("k8s-configmap-credential@data.db_password"));
}

#[test]
fn policy_modes_namespaces_and_labels() {
    // Defaults: hardening gaps warn (allowed, short warnings), secret env vars audit.
    let a = admission();
    let object = edit(|s| {
        let c = s.pointer_mut("/containers/0").unwrap();
        c["securityContext"] = json!({"allowPrivilegeEscalation": false});
        c["resources"] = json!({});
        c["env"] =
            json!([{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}]);
        s["securityContext"] = json!({});
    });
    let d = a.review(&create(&object)).unwrap();
    assert!(d.allowed, "{:?}", d.to_review());
    let warned: Vec<&str> = d
        .hits
        .iter()
        .filter(|h| h.mode == Mode::Warn)
        .map(|h| h.check.as_str())
        .collect();
    for c in [
        "k8s-run-as-root",
        "k8s-writable-root-fs",
        "k8s-no-resource-limits",
    ] {
        assert!(warned.contains(&c), "{c} not warned: {warned:?}");
    }
    assert_eq!(d.warnings.len(), 3, "{:?}", d.warnings);
    assert!(d.warnings.iter().all(|w| w.chars().count() < 120));
    assert!(d.audit["audited"].contains("k8s-secret-in-env@spec.template.spec.containers[0].env"));
    assert!(d.audit["warned"].contains("k8s-run-as-root@"));

    // The same object under a stricter policy is denied; under `off`, nothing is said.
    let strict = Policy::from_toml(
        "p.toml",
        "[checks]\nk8s-run-as-root = \"enforce\"\nk8s-writable-root-fs = \"off\"\n",
    )
    .unwrap();
    let d = Admission::new(strict)
        .unwrap()
        .review(&create(&object))
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(denied_checks(&d), vec!["k8s-run-as-root"]);
    assert!(!d.hits.iter().any(|h| h.check == "k8s-writable-root-fs"));

    // Exempt namespace and label: allowed without checks, recorded.
    let exempt = Policy::from_toml("p.toml", "[exempt]\nnamespaces = [\"shop\"]\n").unwrap();
    let privileged = edit(|s| {
        s.pointer_mut("/containers/0").unwrap()["securityContext"]["privileged"] = json!(true)
    });
    let d = Admission::new(exempt)
        .unwrap()
        .review(&create(&privileged))
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.audit["exempted"], "namespace shop is exempt");
    let exempt = Policy::from_toml(
        "p.toml",
        "[exempt]\nlabels = { \"admission.keyhaven.io/exempt\" = \"true\" }\n",
    )
    .unwrap();
    let mut labelled = privileged.clone();
    labelled["metadata"]["labels"] = json!({"admission.keyhaven.io/exempt": "true"});
    let e = Admission::new(exempt).unwrap();
    assert!(e.review(&create(&labelled)).unwrap().allowed);
    assert!(!e.review(&create(&privileged)).unwrap().allowed);

    // RBAC: a binding of cluster-admin is warned about; unknown kinds are allowed.
    let crb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "ci-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"}]});
    let d = a.review(&create(&crb)).unwrap();
    assert!(d.allowed);
    assert!(
        d.warnings
            .iter()
            .any(|w| w.starts_with("[rbac-cluster-admin-binding] roleRef.name")),
        "{:?}",
        d.warnings
    );
    let unknown = json!({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "shop"}, "spec": {"privileged": true}});
    let d = a.review(&create(&unknown)).unwrap();
    assert!(d.allowed && d.hits.is_empty());
}

#[test]
fn bad_input_is_refused_cleanly() {
    let a = admission();
    assert!(matches!(
        a.review(b"not json at all"),
        Err(ReviewError::NotJson(_))
    ));
    assert!(matches!(a.review(b""), Err(ReviewError::NotJson(_))));
    assert!(matches!(
        a.review(&[0xff, 0xfe, b'{']),
        Err(ReviewError::NotJson(_))
    ));

    // Wrong apiVersion, kind, a missing request or uid.
    let mut v: Value = serde_json::from_slice(&fixture("create-deployment-hardened.json")).unwrap();
    v["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let e = a.review(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(e, ReviewError::ApiVersion(_)));
    assert!(e.to_string().contains("admission.k8s.io/v1beta1"), "{e}");
    v["apiVersion"] = json!("admission.k8s.io/v1");
    v["kind"] = json!("Pod");
    assert!(matches!(
        a.review(&serde_json::to_vec(&v).unwrap()),
        Err(ReviewError::Kind(_))
    ));
    v["kind"] = json!("AdmissionReview");
    v["request"]["uid"] = json!("");
    assert!(matches!(
        a.review(&serde_json::to_vec(&v).unwrap()),
        Err(ReviewError::Invalid(_))
    ));
    v["request"]["uid"] = json!(7);
    assert!(matches!(
        a.review(&serde_json::to_vec(&v).unwrap()),
        Err(ReviewError::NotJson(_))
    ));

    // Deep nesting, inside the object and as the whole body.
    // (An unknown field is skipped without recursion, however deep.)
    let deep = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert!(a.review(deep.as_bytes()).is_err());
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(a.review(deep.as_bytes()).is_err());
    assert!(a.review_file(deep.as_bytes()).is_err());
    let mut v: Value = serde_json::from_slice(&fixture("create-deployment-hardened.json")).unwrap();
    v["request"]["object"] = json!("PLACEHOLDER");
    let text = serde_json::to_string(&v).unwrap().replace(
        "\"PLACEHOLDER\"",
        &format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000)),
    );
    assert!(matches!(
        a.review(text.as_bytes()),
        Err(ReviewError::TooDeep)
    ));
    let deep_yaml = format!(
        "{}x: 1\n",
        (0..3000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect::<String>()
    );
    assert!(a.review_file(deep_yaml.as_bytes()).is_err());
    let flow_yaml = format!("a: {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
    assert!(a.review_file(flow_yaml.as_bytes()).is_err());

    // An object at the apiserver's 3 MiB limit is judged; a body beyond the limit is not.
    let big = "x".repeat(3 * 1024 * 1024);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big", "namespace": "shop"}, "data": {"blob": big}});
    let d = a.review(&create(&cm)).unwrap();
    assert!(d.allowed);
    let huge = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big", "namespace": "shop"}, "data": {"blob": "x".repeat(8 * 1024 * 1024)}});
    let e = a.review(&create(&huge)).unwrap_err();
    assert!(matches!(e, ReviewError::TooLarge(_)), "{e}");
    assert!(a.review_file(&create(&huge)).is_err());

    // A review without an object on CREATE is answered with an error status, not a panic.
    let mut v: Value = serde_json::from_slice(&fixture("create-deployment-hardened.json")).unwrap();
    v["request"]["object"] = Value::Null;
    let d = a.review(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.to_review()["response"]["status"]["code"], 400);
}

#[test]
fn a_plain_manifest_is_judged_as_a_create() {
    let a = admission();
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: shop\ndata:\n  log_level: info\n---\n# comment only\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: shop\nspec:\n  hostPID: true\n  containers:\n    - name: c\n      image: busybox\n";
    let ds = a.review_file(yaml.as_bytes()).unwrap();
    assert_eq!(ds.len(), 2);
    assert!(ds[0].allowed);
    assert!(!ds[1].allowed);
    assert!(denied_checks(&ds[1]).contains(&"k8s-host-pid".to_owned()));
    // An AdmissionReview file gives the same decision as the webhook's decoder.
    let body = fixture("create-deployment-privileged.json");
    let from_file = a.review_file(&body).unwrap();
    assert_eq!(from_file.len(), 1);
    assert_eq!(
        from_file[0].to_review(),
        a.review(&body).unwrap().to_review()
    );
    assert!(a.review_file(b"").is_err());
    assert!(a.review_file(b"key: [unclosed\n").is_err());
}

/// An UPDATE is judged on its new object: a violation it brings is denied, one the old
/// object had already is only warned about, and a clean object is allowed whatever the old
/// one held.
#[test]
fn an_update_is_judged_against_its_old_object() {
    let a = admission();
    let update = |object: &Value, old: &Value| {
        let mut review: Value = serde_json::from_slice(&create(object)).unwrap();
        review["request"]["operation"] = json!("UPDATE");
        review["request"]["oldObject"] = old.clone();
        a.review(&serde_json::to_vec(&review).unwrap()).unwrap()
    };
    let clean = edit(|_| {});
    let privileged = edit(|s| s["containers"][0]["securityContext"]["privileged"] = json!(true));
    let both = edit(|s| {
        s["containers"][0]["securityContext"]["privileged"] = json!(true);
        s["hostNetwork"] = json!(true);
    });
    let secret = edit(|s| {
        s["containers"][0]["args"] = json!([format!("--aws-key-id={}", aws_key_id())]);
    });

    // Brought by this update: denied.
    let d = update(&privileged, &clean);
    assert_eq!(denied_checks(&d), ["k8s-privileged"]);
    // Already there: a warning, the rest denied as before.
    let d = update(&both, &privileged);
    assert_eq!(denied_checks(&d), ["k8s-host-network"]);
    let kept = d.hits.iter().find(|h| h.check == "k8s-privileged").unwrap();
    assert_eq!(kept.mode, Mode::Warn);
    assert!(
        kept.title.ends_with("(already so before this update)"),
        "{}",
        kept.title
    );
    assert!(
        d.warnings
            .iter()
            .any(|w| w.starts_with("[k8s-privileged] ")),
        "{:?}",
        d.warnings
    );
    let d = update(&secret, &secret);
    assert!(d.allowed, "{:?}", d.message);
    assert!(
        d.warnings
            .iter()
            .any(|w| w.starts_with("[aws-access-key-id] ")),
        "{:?}",
        d.warnings
    );
    // A clean object is allowed, without warnings, whatever the old one held.
    for old in [&clean, &privileged, &both, &secret] {
        let d = update(&clean, old);
        assert!(d.allowed && d.warnings.is_empty(), "{:?}", d.to_review());
    }
}

/// A string repeated in several containers is scanned once, and what a rule finds in it is
/// reported at every field path that holds it, in field order, beside the findings of
/// the strings around it.
#[test]
fn a_secret_repeated_in_several_strings_is_reported_at_each() {
    let a = admission();
    let key = aws_key_id();
    let arg = format!("--upstream-key={key}");
    let object = edit(|s| {
        let first = s["containers"][0].clone();
        s["containers"][0]["args"] = json!(["--listen=:8080", arg.clone()]);
        for (name, args) in [
            ("sidecar", json!([arg.clone(), "--log-format=json"])),
            ("clean", json!(["--listen=:8080", "--log-format=json"])),
            (
                "last",
                json!(["--log-format=json", arg.clone(), arg.clone()]),
            ),
        ] {
            let mut c = first.clone();
            c["name"] = json!(name);
            c["args"] = args;
            s["containers"].as_array_mut().unwrap().push(c);
        }
    });
    let d = a.review(&create(&object)).unwrap();
    let found: Vec<(&str, &str)> = d
        .hits
        .iter()
        .filter(|h| !h.check.starts_with("k8s-") && !h.check.starts_with("rbac-"))
        .map(|h| (h.check.as_str(), h.field.as_str()))
        .collect();
    let at = |c: usize, i: usize| format!("spec.template.spec.containers[{c}].args[{i}]");
    let (c0, c1, c3a, c3b) = (at(0, 1), at(1, 0), at(3, 1), at(3, 2));
    assert_eq!(
        found,
        [
            ("aws-access-key-id", c0.as_str()),
            ("aws-access-key-id", c1.as_str()),
            ("aws-access-key-id", c3a.as_str()),
            ("aws-access-key-id", c3b.as_str()),
        ]
    );
    assert!(!d.allowed);
    let message = d.message.unwrap();
    for field in [&c0, &c1, &c3a, &c3b] {
        assert!(message.contains(field.as_str()), "{message}");
    }
    assert!(
        !message.contains(&key),
        "the secret is not echoed: {message}"
    );
}

/// The secret rules run over all the strings of an object in one pass, each string judged
/// alone: a secret planted in one string is reported at that string's field path, and two
/// strings that read as a secret only when joined are no finding.
#[test]
fn secret_rules_judge_each_string_alone() {
    let a = admission();
    let secret_hits = |object: &Value| -> Vec<(String, String)> {
        let d = a.review(&create(object)).unwrap();
        d.hits
            .iter()
            .filter(|h| !h.check.starts_with("k8s-") && !h.check.starts_with("rbac-"))
            .map(|h| (h.check.clone(), h.field.clone()))
            .collect()
    };
    let with_args = |args: Value| {
        edit(|s| {
            let mut sidecar = s["containers"][0].clone();
            sidecar["name"] = json!("sidecar");
            sidecar["args"] = args.clone();
            s["containers"].as_array_mut().unwrap().push(sidecar);
        })
    };
    let key = aws_key_id();
    let password = format!("--db-pass{}=", "word");

    // Planted in one string, among others.
    let planted = with_args(json!([
        "--listen=:8080",
        format!("--upstream-key={key}"),
        "--log-format=json"
    ]));
    assert_eq!(
        secret_hits(&planted),
        vec![(
            "aws-access-key-id".to_owned(),
            "spec.template.spec.containers[1].args[1]".to_owned()
        )]
    );
    let joined = with_args(json!([
        "--listen=:8080",
        format!("{password}Tr0ub4dor&3xk!Q7")
    ]));
    assert_eq!(
        secret_hits(&joined),
        vec![(
            "generic-password".to_owned(),
            "spec.template.spec.containers[1].args[1]".to_owned()
        )]
    );

    // The same values split over two strings.
    let (head, tail) = key.split_at(10);
    for args in [
        json!([
            "--listen=:8080",
            format!("--upstream-key={head}"),
            format!("{tail}QQ")
        ]),
        json!(["--listen=:8080", password.clone(), "Tr0ub4dor&3xk!Q7"]),
        json!([
            "--listen=:8080",
            format!("{password}\n"),
            "Tr0ub4dor&3xk!Q7"
        ]),
    ] {
        let split = with_args(args.clone());
        assert_eq!(
            secret_hits(&split),
            Vec::<(String, String)>::new(),
            "{args}"
        );
    }
}
