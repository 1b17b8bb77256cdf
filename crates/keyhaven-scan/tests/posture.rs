//! Posture: a hardened deployment passes every check; each risky manifest triggers its
//! check.

use crate::common::run;

fn findings(dir: &std::path::Path) -> Vec<(String, String)> {
    let (_, out, err) = run(
        &[
            dir.to_str().unwrap(),
            "--format",
            "json",
            "--fail-on",
            "never",
        ],
        b"",
    );
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_owned(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn scan_yaml(yaml: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    findings(dir.path()).into_iter().map(|(r, _)| r).collect()
}

const HARDENED: &str = include_str!("data/posture/hardened.yaml");

#[test]
fn hardened_deployment_passes_every_check() {
    let f = scan_yaml(HARDENED);
    assert!(f.is_empty(), "{f:?}");
}

/// Apply `edit` to the hardened manifest and expect exactly the `expected` check.
fn expect(edit: &dyn Fn(&str) -> String, expected: &str) {
    let yaml = edit(HARDENED);
    assert_ne!(yaml, HARDENED, "edit for {expected} changed nothing");
    let f = scan_yaml(&yaml);
    assert!(f.contains(&expected.to_owned()), "{expected} not in {f:?}");
}

fn container_sc(extra: &str) -> impl Fn(&str) -> String + '_ {
    move |y: &str| {
        y.replace(
            "            readOnlyRootFilesystem: true\n",
            &format!("            readOnlyRootFilesystem: true\n{extra}"),
        )
    }
}

#[test]
fn each_risky_pod_setting_triggers_its_check() {
    expect(
        &container_sc("            privileged: true\n"),
        "k8s-privileged",
    );
    expect(
        &|y: &str| {
            y.replace(
                "allowPrivilegeEscalation: false",
                "allowPrivilegeEscalation: true",
            )
        },
        "k8s-privilege-escalation",
    );
    expect(
        &|y: &str| y.replace("drop: [ALL]", "drop: [ALL]\n              add: [SYS_ADMIN]"),
        "k8s-added-capabilities",
    );
    expect(
        &|y: &str| {
            y.replace(
                "          secret:\n            secretName: api-db",
                "          hostPath:\n            path: /var/run/docker.sock",
            )
        },
        "k8s-host-path",
    );
    for (field, id) in [
        ("hostNetwork", "k8s-host-network"),
        ("hostPID", "k8s-host-pid"),
        ("hostIPC", "k8s-host-ipc"),
    ] {
        expect(
            &|y: &str| {
                y.replace(
                    "      serviceAccountName: api\n",
                    &format!("      serviceAccountName: api\n      {field}: true\n"),
                )
            },
            id,
        );
    }
    expect(
        &|y: &str| {
            y.replace(
                "runAsNonRoot: true\n        runAsUser: 10001",
                "runAsUser: 0",
            )
        },
        "k8s-run-as-root",
    );
    expect(
        &|y: &str| y.replace("runAsNonRoot: true\n        runAsUser: 10001\n", ""),
        "k8s-run-as-root",
    );
    expect(
        &|y: &str| {
            y.replace(
                "      serviceAccountName: api\n",
                "      serviceAccountName: worker\n",
            )
        },
        "k8s-automount-sa-token",
    );
    expect(
        &|y: &str| {
            y.replace("            - name: LOG_LEVEL\n              value: info", "            - name: DB_PASSWORD\n              valueFrom:\n                secretKeyRef: {name: api-db, key: password}")
        },
        "k8s-secret-in-env",
    );
    expect(
        &|y: &str| y.replace("            limits: {cpu: 500m, memory: 256Mi}\n", ""),
        "k8s-no-resource-limits",
    );
    expect(
        &|y: &str| y.replace("kind: NetworkPolicy", "kind: NetworkPolicyX"),
        "k8s-no-network-policy",
    );
    expect(
        &|y: &str| {
            y.replace(
                "            - name: LOG_LEVEL\n              value: info",
                "            - name: DB_PASSWORD\n              value: Qx7-pL2vR9w",
            )
        },
        "k8s-env-literal-secret",
    );
}

#[test]
fn each_risky_rbac_object_triggers_its_check() {
    expect(
        &|y: &str| {
            y.replace(
                "    resourceNames: [\"api-tls\"]\n    verbs: [\"get\"]",
                "    verbs: [\"get\", \"list\"]",
            )
        },
        "rbac-secrets-access",
    );
    expect(
        &|y: &str| y.replace("resources: [\"configmaps\"]", "resources: [\"*\"]"),
        "rbac-wildcard",
    );
    expect(
        &|y: &str| {
            y.replace(
                "    name: api\n    namespace: shop\n---",
                "    name: default\n    namespace: shop\n---",
            )
        },
        "rbac-default-service-account",
    );
    let cluster_wide = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: secret-reader\nrules:\n  - apiGroups: [\"\"]\n    resources: [\"secrets\"]\n    verbs: [\"get\", \"watch\", \"list\"]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: read-secrets-global\nsubjects:\n  - kind: Group\n    name: manager\n    apiGroup: rbac.authorization.k8s.io\nroleRef:\n  kind: ClusterRole\n  name: secret-reader\n  apiGroup: rbac.authorization.k8s.io\n";
    let f = scan_yaml(cluster_wide);
    assert!(f.contains(&"rbac-cluster-wide-secrets".to_owned()), "{f:?}");
    assert!(f.contains(&"rbac-secrets-access".to_owned()), "{f:?}");
    // Built-in ClusterRoles are resolved without their manifests.
    let admin = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: everyone-admin\nsubjects:\n  - kind: Group\n    name: system:authenticated\n  - kind: User\n    name: alice\nroleRef:\n  kind: ClusterRole\n  name: cluster-admin\n";
    let f = scan_yaml(admin);
    for id in [
        "rbac-cluster-admin-binding",
        "rbac-system-group-binding",
        "rbac-cluster-wide-secrets",
    ] {
        assert!(f.contains(&id.to_owned()), "{id} not in {f:?}");
    }
    let edit = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: anon\n  namespace: shop\nsubjects:\n  - kind: User\n    name: system:anonymous\nroleRef:\n  kind: ClusterRole\n  name: view\n";
    assert_eq!(
        scan_yaml(edit),
        vec!["rbac-system-group-binding".to_owned()]
    );
}

#[test]
fn secret_manifests_and_decoding() {
    let tok = crate::common::Fake::new(21).credential("github");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("token={tok}\n"));
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gh\n  namespace: ci\ntype: Opaque\ndata:\n  config: {b64}\n"
    );
    let f = scan_yaml(&yaml);
    assert!(f.contains(&"k8s-secret-manifest".to_owned()), "{f:?}");
    assert!(
        f.contains(&"github-token".to_owned()),
        "decoded value not rescanned: {f:?}"
    );
    // A templated Secret is not a finding.
    let tmpl = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gh\nstringData:\n  token: \"{{ .Values.token }}\"\n";
    assert!(scan_yaml(tmpl).is_empty());
}

#[test]
fn kubeconfig_key_data_is_decoded() {
    let mut fake = crate::common::Fake::new(22);
    let pem = format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}-----END EC PRIVATE KEY-----\n",
        fake.credential("pem-body")
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1\nusers:\n- name: u\n  user:\n    client-key-data: {b64}\ncontexts: []\n"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kubeconfig"), cfg).unwrap();
    let f = findings(dir.path());
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].0 == "kubeconfig-client-key" || f[0].0 == "private-key",
        "{f:?}"
    );
}

#[test]
fn a_justified_exception_suppresses_only_its_own_check_on_its_own_object() {
    let host_path = |y: &str| {
        y.replace(
            "          secret:\n            secretName: api-db",
            "          hostPath:\n            path: /var/run/secrets-store-csi-providers",
        )
    };
    let annotate = |y: &str, key: &str, reason: &str| {
        y.replacen(
            "kind: Deployment\nmetadata:\n  name: api\n",
            &format!(
                "kind: Deployment\nmetadata:\n  name: api\n  annotations:\n    {key}: {reason:?}\n"
            ),
            1,
        )
    };
    let risky = host_path(HARDENED);
    assert!(scan_yaml(&risky).contains(&"k8s-host-path".to_owned()));
    // With a reason: gone, and nothing else is hidden.
    let excepted = annotate(
        &risky,
        "posture.keyhaven.io/allow-k8s-host-path",
        "the CSI driver finds provider sockets only in this host directory",
    );
    assert!(
        scan_yaml(&excepted).is_empty(),
        "{:?}",
        scan_yaml(&excepted)
    );
    let both = excepted.replace(
        "allowPrivilegeEscalation: false",
        "allowPrivilegeEscalation: true",
    );
    assert_eq!(scan_yaml(&both), ["k8s-privilege-escalation"]);
    // An exception for another check does not cover this one.
    let other = annotate(
        &risky,
        "posture.keyhaven.io/allow-k8s-host-network",
        "the CSI driver finds provider sockets only in this host directory",
    );
    assert_eq!(scan_yaml(&other), ["k8s-host-path"]);
    // An exception without a reason is ignored, and the finding says so.
    let lazy = annotate(&risky, "posture.keyhaven.io/allow-k8s-host-path", "ok");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), &lazy).unwrap();
    let f = findings(dir.path());
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].1.contains("must say why"), "{f:?}");
}
