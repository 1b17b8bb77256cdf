//! The admission policy as data: a mode per check, exempt namespaces and labels, and the
//! namespaces whose Secrets must come from keyhaven. Loaded from a TOML file; every
//! check has a default, so an empty file is the default policy.
//!
//! ```toml
//! [checks]
//! k8s-run-as-root = "enforce"      # enforce | warn | audit | off
//! k8s-secret-in-env = "warn"
//!
//! [exempt]
//! namespaces = ["monitoring"]
//! labels = { "admission.keyhaven.io/exempt" = "true" }
//!
//! [secrets]
//! keyhaven_namespaces = ["payments"]   # Secrets there are denied: use keyhaven
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// What a check does when it finds something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny the request (403) naming the check, the field and the fix.
    Enforce,
    /// Allow with an admission warning.
    Warn,
    /// Allow; recorded in the response's `auditAnnotations`.
    Audit,
    /// Not evaluated.
    Off,
}

impl Mode {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Audit => "audit",
            Mode::Off => "off",
        }
    }
}

/// The check id of a Secret created in a namespace listed in `keyhaven_namespaces`.
pub const KEYHAVEN_NAMESPACE_SECRET: &str = "k8s-secret-in-keyhaven-namespace";

/// The policy key of every secret-detection rule (`aws-access-key-id`, ...) found in a
/// workload; a rule's own id, if listed, takes precedence.
pub const SECRET_RULES: &str = "secret-rules";

/// The modes an empty policy file gives.
pub const DEFAULT_MODES: &[(&str, Mode)] = &[
    ("k8s-privileged", Mode::Enforce),
    ("k8s-host-network", Mode::Enforce),
    ("k8s-host-pid", Mode::Enforce),
    ("k8s-host-ipc", Mode::Enforce),
    ("k8s-host-path", Mode::Enforce),
    ("k8s-added-capabilities", Mode::Enforce),
    ("k8s-privilege-escalation", Mode::Enforce),
    ("k8s-configmap-credential", Mode::Enforce),
    (KEYHAVEN_NAMESPACE_SECRET, Mode::Enforce),
    ("k8s-env-literal-secret", Mode::Enforce),
    (SECRET_RULES, Mode::Enforce),
    ("k8s-run-as-root", Mode::Warn),
    ("k8s-writable-root-fs", Mode::Warn),
    ("k8s-no-resource-limits", Mode::Warn),
    ("k8s-secret-in-env", Mode::Audit),
    ("rbac-secrets-access", Mode::Warn),
    ("rbac-wildcard", Mode::Warn),
    ("rbac-cluster-wide-secrets", Mode::Warn),
    ("rbac-cluster-admin-binding", Mode::Warn),
    ("rbac-default-service-account", Mode::Warn),
    ("rbac-system-group-binding", Mode::Warn),
    // These need the whole cluster (bindings, NetworkPolicies), which one object is not.
    ("k8s-automount-sa-token", Mode::Off),
    ("k8s-no-network-policy", Mode::Off),
    // Every Secret the apiserver sees holds literal data: that is what it is for.
    ("k8s-secret-manifest", Mode::Off),
];

/// A policy error: the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("admission policy {path}: {message}")]
pub struct PolicyError {
    path: String,
    message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    #[serde(default)]
    checks: BTreeMap<String, Mode>,
    #[serde(default)]
    exempt: FileExempt,
    #[serde(default)]
    secrets: FileSecrets,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExempt {
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSecrets {
    #[serde(default)]
    keyhaven_namespaces: Vec<String>,
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    modes: BTreeMap<String, Mode>,
    /// Namespaces whose objects are allowed without checks (recorded).
    pub exempt_namespaces: Vec<String>,
    /// Objects carrying any of these labels (key = value) are allowed without checks.
    pub exempt_labels: BTreeMap<String, String>,
    /// Namespaces where Secrets are denied: their values belong in keyhaven.
    pub keyhaven_namespaces: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            modes: DEFAULT_MODES
                .iter()
                .map(|(k, m)| ((*k).to_owned(), *m))
                .collect(),
            exempt_namespaces: Vec::new(),
            exempt_labels: BTreeMap::new(),
            keyhaven_namespaces: Vec::new(),
        }
    }
}

impl Policy {
    /// Parse a policy file's text (`path` names it in errors). Unknown keys and unknown
    /// check ids are refused, so a typo cannot silently leave a check at its default.
    pub fn from_toml(path: &str, text: &str) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError {
            path: path.to_owned(),
            message,
        };
        let file: FilePolicy = toml::from_str(text).map_err(|e| err(e.message().to_owned()))?;
        let mut policy = Policy::default();
        for (id, mode) in file.checks {
            if !policy.modes.contains_key(&id) && !keyhaven_scan_rule_exists(&id) {
                return Err(err(format!(
                    "unknown check `{id}` in [checks] (known: {})",
                    policy.modes.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            policy.modes.insert(id, mode);
        }
        policy.exempt_namespaces = file.exempt.namespaces;
        policy.exempt_labels = file.exempt.labels;
        policy.keyhaven_namespaces = file.secrets.keyhaven_namespaces;
        Ok(policy)
    }

    /// The mode of check `id` (a secret rule falls back to [`SECRET_RULES`]).
    pub fn mode(&self, id: &str) -> Mode {
        self.modes
            .get(id)
            .or_else(|| self.modes.get(SECRET_RULES))
            .copied()
            .unwrap_or(Mode::Warn)
    }

    /// Every check with a mode, for `--help`-like listings and docs.
    pub fn modes(&self) -> impl Iterator<Item = (&str, Mode)> {
        self.modes.iter().map(|(k, m)| (k.as_str(), *m))
    }
}

/// Whether `id` is one of the built-in secret-detection rules.
fn keyhaven_scan_rule_exists(id: &str) -> bool {
    static IDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    IDS.get_or_init(|| {
        keyhaven_scan::rules::RuleSet::builtin()
            .map(|r| r.rules.iter().map(|r| r.spec.id.clone()).collect())
            .unwrap_or_default()
    })
    .iter()
    .any(|r| r == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_posture_check_has_a_default() {
        let p = Policy::default();
        for c in keyhaven_scan::posture::CHECKS {
            assert!(p.modes.contains_key(c.id), "{} has no default mode", c.id);
        }
    }

    #[test]
    fn file_overrides_and_refuses_typos() {
        let p = Policy::from_toml(
            "p.toml",
            "[checks]\nk8s-run-as-root = \"enforce\"\n[exempt]\nnamespaces = [\"ops\"]\n",
        )
        .unwrap();
        assert_eq!(p.mode("k8s-run-as-root"), Mode::Enforce);
        assert_eq!(p.mode("k8s-privileged"), Mode::Enforce);
        assert_eq!(p.exempt_namespaces, vec!["ops".to_owned()]);
        let e = Policy::from_toml("p.toml", "[checks]\nk8s-privilegd = \"enforce\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown check `k8s-privilegd`"), "{e}");
        let e = Policy::from_toml("p.toml", "[checks]\nk8s-privileged = \"deny\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("admission policy p.toml:"), "{e}");
        assert!(Policy::from_toml("p.toml", "[exempts]\n").is_err());
    }
}
