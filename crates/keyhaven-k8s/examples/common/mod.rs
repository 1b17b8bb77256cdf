//! The review the admission examples send: shared by the load driver and the in-process
//! evaluator benchmark so both judge the same bytes.

use serde_json::json;

/// A CREATE review of a Deployment with 20 hardened containers.
pub fn review_body() -> Vec<u8> {
    let containers: Vec<_> = (0..20)
        .map(|i| {
            json!({
                "name": format!("c{i}"),
                "image": format!("registry.example.org/shop/component-{i}:1.{i}.0"),
                "args": ["--listen=:8080", format!("--shard={i}"), "--log-format=json"],
                "ports": [{"name": "http", "containerPort": 8080 + i, "protocol": "TCP"}],
                "env": [
                    {"name": "LOG_LEVEL", "value": "info"},
                    {"name": "DB_PASSWORD_FILE", "value": "/run/secrets/db/password"},
                    {"name": "REGION", "value": "eu-west-1"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true,
                    "runAsUser": 10001,
                    "capabilities": {"drop": ["ALL"]}
                },
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "db", "mountPath": "/run/secrets/db", "readOnly": true}]
            })
        })
        .collect();
    let object = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "namespace": "shop", "labels": {"app": "shop", "team": "payments"},
                     "annotations": {"deployment.kubernetes.io/revision": "7"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {
                    "serviceAccountName": "shop",
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": containers,
                    "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "db", "secret": {"secretName": "db", "defaultMode": 256}}]
                }
            }
        }
    });
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "name": "shop",
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:ci:deployer", "groups": ["system:authenticated"]},
            "object": object,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}
