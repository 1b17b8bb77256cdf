"""Validate every Kubernetes object in the given YAML files against the published schemas
of each Kubernetes version named in KUBERNETES_VERSIONS (strict: unknown fields fail).

Kinds without a published schema are skipped with a note on stdout: custom resources
(SecretProviderClass, ExternalSecret, SecretStore) and configuration files that are not API objects
(EncryptionConfiguration, read by the kube-apiserver from disk). Exit status 1 if any
object fails, with one line per failure on stderr."""

import os
import sys

import kubernetes_validate
import yaml

NO_SCHEMA = {
    ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass"): "a CRD of the Secrets Store CSI driver",
    ("apiserver.config.k8s.io/v1", "EncryptionConfiguration"): "a kube-apiserver file, not an API object",
    ("external-secrets.io/v1", "ExternalSecret"): "a CRD of the External Secrets Operator",
    ("external-secrets.io/v1", "SecretStore"): "a CRD of the External Secrets Operator",
}

versions = os.environ.get("KUBERNETES_VERSIONS", "1.37.0").split()
failures = 0
checked = 0
for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        print(f"FAIL {path}: no objects", file=sys.stderr)
        failures += 1
    for doc in docs:
        api, kind = doc.get("apiVersion"), doc.get("kind")
        name = (doc.get("metadata") or {}).get("name", "?")
        what = f"{path}: {kind}/{name}"
        if (api, kind) in NO_SCHEMA:
            print(f"SKIP {what}: no published schema ({NO_SCHEMA[(api, kind)]})")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                checked += 1
            except kubernetes_validate.SchemaNotFoundError:
                print(f"FAIL {what}: no schema for {api} {kind} in Kubernetes {version}", file=sys.stderr)
                failures += 1
            except kubernetes_validate.ValidationError as e:
                print(f"FAIL {what} (Kubernetes {version}): {e.message} at {list(e.path)}", file=sys.stderr)
                failures += 1
print(f"validated {checked} object-version pairs, {failures} failure(s)")
sys.exit(1 if failures else 0)
