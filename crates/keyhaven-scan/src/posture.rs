//! Posture checks on Kubernetes manifests: RBAC least privilege, pod hardening and
//! namespace isolation. Each check has an id, a severity, a fix hint and the ids of the
//! matching kube-linter, checkov and kubescape checks.
//!
//! Built-in ClusterRoles (`cluster-admin`, `admin`, `edit`, `view`) are resolved
//! statically, and bindings are followed to every subject kind.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::Severity;
use crate::finding::{Category, Finding, fingerprint};
use crate::json::Json;
use crate::k8s::Object;

/// Kinds kept for posture checks.
pub const RELEVANT_KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "CronJob",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "NetworkPolicy",
    "Namespace",
];

/// A posture check.
#[derive(Debug)]
pub struct Check {
    /// Stable id.
    pub id: &'static str,
    /// What is wrong.
    pub title: &'static str,
    /// Severity.
    pub severity: Severity,
    /// How to fix it.
    pub fix: &'static str,
    /// Matching ids in other tools.
    pub refs: &'static [(&'static str, &'static str)],
}

/// Every posture check.
pub const CHECKS: &[Check] = &[
    Check {
        id: "k8s-privileged",
        title: "Container runs privileged",
        severity: Severity::Critical,
        fix: "remove securityContext.privileged or set it to false",
        refs: &[
            ("kube-linter", "privileged-container"),
            ("checkov", "CKV_K8S_16"),
            ("kubescape", "C-0057"),
        ],
    },
    Check {
        id: "k8s-privilege-escalation",
        title: "Container allows privilege escalation",
        severity: Severity::High,
        fix: "set securityContext.allowPrivilegeEscalation: false on every container",
        refs: &[
            ("kube-linter", "privilege-escalation-container"),
            ("checkov", "CKV_K8S_20"),
            ("kubescape", "C-0016"),
        ],
    },
    Check {
        id: "k8s-added-capabilities",
        title: "Container adds Linux capabilities",
        severity: Severity::High,
        fix: "drop ALL capabilities and add none (NET_BIND_SERVICE only if a low port is required)",
        refs: &[
            ("kube-linter", "drop-net-raw-capability"),
            ("checkov", "CKV_K8S_25"),
            ("kubescape", "C-0046"),
        ],
    },
    Check {
        id: "k8s-host-path",
        title: "Pod mounts a hostPath volume",
        severity: Severity::High,
        fix: "use emptyDir, a PersistentVolumeClaim or a CSI volume instead of hostPath",
        refs: &[
            ("kube-linter", "sensitive-host-mounts"),
            ("checkov", "CKV_K8S_27"),
            ("kubescape", "C-0048"),
        ],
    },
    Check {
        id: "k8s-host-network",
        title: "Pod shares the host network namespace",
        severity: Severity::High,
        fix: "remove hostNetwork: true",
        refs: &[
            ("kube-linter", "host-network"),
            ("checkov", "CKV_K8S_19"),
            ("kubescape", "C-0041"),
        ],
    },
    Check {
        id: "k8s-host-pid",
        title: "Pod shares the host PID namespace",
        severity: Severity::High,
        fix: "remove hostPID: true",
        refs: &[
            ("kube-linter", "host-pid"),
            ("checkov", "CKV_K8S_17"),
            ("kubescape", "C-0038"),
        ],
    },
    Check {
        id: "k8s-host-ipc",
        title: "Pod shares the host IPC namespace",
        severity: Severity::High,
        fix: "remove hostIPC: true",
        refs: &[
            ("kube-linter", "host-ipc"),
            ("checkov", "CKV_K8S_18"),
            ("kubescape", "C-0038"),
        ],
    },
    Check {
        id: "k8s-run-as-root",
        title: "Container may run as root",
        severity: Severity::Medium,
        fix: "set securityContext.runAsNonRoot: true and a non-zero runAsUser",
        refs: &[
            ("kube-linter", "run-as-non-root"),
            ("checkov", "CKV_K8S_23"),
            ("kubescape", "C-0013"),
        ],
    },
    Check {
        id: "k8s-writable-root-fs",
        title: "Container root filesystem is writable",
        severity: Severity::Low,
        fix: "set securityContext.readOnlyRootFilesystem: true and mount an emptyDir where the container must write",
        refs: &[
            ("kube-linter", "no-read-only-root-fs"),
            ("checkov", "CKV_K8S_22"),
            ("kubescape", "C-0017"),
        ],
    },
    Check {
        id: "k8s-automount-sa-token",
        title: "Service account token mounted although no RBAC binding needs it",
        severity: Severity::Low,
        fix: "set automountServiceAccountToken: false on the pod spec (or the ServiceAccount)",
        refs: &[
            ("kube-linter", "-"),
            ("checkov", "CKV_K8S_38"),
            ("kubescape", "C-0034"),
        ],
    },
    Check {
        id: "k8s-secret-in-env",
        title: "Secret consumed through environment variables",
        severity: Severity::Low,
        fix: "mount the Secret as a read-only volume (or a keyhaven CSI volume) instead of env/envFrom",
        refs: &[
            ("kube-linter", "read-secret-from-env-var"),
            ("checkov", "CKV_K8S_35"),
            ("kubescape", "C-0207"),
        ],
    },
    Check {
        id: "k8s-no-resource-limits",
        title: "Container has no CPU or memory limit",
        severity: Severity::Low,
        fix: "set resources.limits.cpu and resources.limits.memory",
        refs: &[
            ("kube-linter", "unset-memory-requirements"),
            ("checkov", "CKV_K8S_13"),
            ("kubescape", "C-0009"),
        ],
    },
    Check {
        id: "k8s-no-network-policy",
        title: "Namespace runs workloads without any NetworkPolicy",
        severity: Severity::Medium,
        fix: "add a default-deny NetworkPolicy to the namespace and allow only the flows needed",
        refs: &[
            ("kube-linter", "non-isolated-pod"),
            ("checkov", "CKV2_K8S_6"),
            ("kubescape", "C-0260"),
        ],
    },
    Check {
        id: "rbac-secrets-access",
        title: "Role can get, list or watch Secrets",
        severity: Severity::High,
        fix: "grant access to named Secrets only (resourceNames) or use a keyhaven role instead",
        refs: &[
            ("kube-linter", "access-to-secrets"),
            ("checkov", "CKV2_K8S_5"),
            ("kubescape", "C-0015"),
        ],
    },
    Check {
        id: "rbac-wildcard",
        title: "Role uses wildcard verbs or resources",
        severity: Severity::High,
        fix: "list the verbs, resources and API groups explicitly",
        refs: &[
            ("kube-linter", "wildcard-in-rules"),
            ("checkov", "CKV_K8S_49"),
            ("kubescape", "C-0187"),
        ],
    },
    Check {
        id: "rbac-cluster-wide-secrets",
        title: "Secret-reading or wildcard role bound cluster-wide",
        severity: Severity::Critical,
        fix: "bind with a namespaced RoleBinding, and narrow the role",
        refs: &[
            ("kube-linter", "access-to-secrets"),
            ("checkov", "CKV2_K8S_5"),
            ("kubescape", "C-0186"),
        ],
    },
    Check {
        id: "rbac-default-service-account",
        title: "Role bound to a default ServiceAccount",
        severity: Severity::Medium,
        fix: "create a dedicated ServiceAccount per workload and bind that",
        refs: &[
            ("kube-linter", "default-service-account"),
            ("checkov", "CKV_K8S_42"),
            ("kubescape", "C-0189"),
        ],
    },
    Check {
        id: "rbac-system-group-binding",
        title: "Role bound to system:authenticated, system:unauthenticated or system:anonymous",
        severity: Severity::Critical,
        fix: "bind to specific users, groups or ServiceAccounts",
        refs: &[
            ("kube-linter", "-"),
            ("checkov", "-"),
            ("kubescape", "C-0262"),
        ],
    },
    Check {
        id: "rbac-cluster-admin-binding",
        title: "Binding to cluster-admin",
        severity: Severity::High,
        fix: "bind a narrower role; keep cluster-admin for break-glass accounts outside manifests",
        refs: &[
            ("kube-linter", "cluster-admin-role-binding"),
            ("checkov", "-"),
            ("kubescape", "C-0035"),
        ],
    },
];

/// Look up a check by id.
pub fn check_by_id(id: &str) -> Option<&'static Check> {
    CHECKS.iter().find(|c| c.id == id)
}

/// The pod spec of a workload object, if any.
pub fn pod_spec<'a, V: Json>(kind: &str, v: &'a V) -> Option<&'a V> {
    match kind {
        "Pod" => v.get("spec"),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => at(v, &["spec", "template", "spec"]),
        "CronJob" => at(v, &["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// The field path of a workload kind's pod spec (`spec.template.spec` for a Deployment).
pub fn pod_spec_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some("spec"),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("spec.template.spec"),
        "CronJob" => Some("spec.jobTemplate.spec.template.spec"),
        _ => None,
    }
}

/// All containers of a pod spec with their path inside it (`containers[0]`).
pub fn containers_with_paths<V: Json>(spec: &V) -> impl Iterator<Item = (ContainerAt, &V)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .filter_map(|k| spec.get(k).and_then(V::as_array).map(|a| (k, a)))
        .flat_map(|(list, a)| {
            a.iter()
                .enumerate()
                .map(move |(index, c)| (ContainerAt { list, index }, c))
        })
}

/// Where a container is in its pod spec: its list and index, written `containers[3]`
/// (only when a finding needs the path: most containers have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerAt {
    /// `initContainers`, `containers` or `ephemeralContainers`.
    pub list: &'static str,
    /// The index in that list.
    pub index: usize,
}

impl ContainerAt {
    /// An ephemeral (debug) container.
    pub fn ephemeral(&self) -> bool {
        self.list == "ephemeralContainers"
    }

    /// The container's field path under the pod spec's path `base` (`spec.containers[3]`).
    pub fn under(self, base: &str) -> impl std::fmt::Display + '_ {
        struct Under<'a>(&'a str, ContainerAt);
        impl std::fmt::Display for Under<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}.{}", self.0, self.1)
            }
        }
        Under(base, self)
    }
}

impl std::fmt::Display for ContainerAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.list, self.index)
    }
}

/// All containers of a pod spec (init, regular and ephemeral).
pub fn containers<V: Json>(spec: &V) -> impl Iterator<Item = &V> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .filter_map(|k| spec.get(k).and_then(V::as_array))
        .flatten()
}

fn str_list<V: Json>(v: Option<&V>) -> Vec<&str> {
    v.and_then(V::as_array)
        .map(|a| a.iter().filter_map(V::as_str).collect())
        .unwrap_or_default()
}

/// The value at a path of object keys: `Value::pointer` without its per-token
/// allocations (the keys here never need its `~` escapes).
fn at<'a, V: Json>(v: &'a V, keys: &[&str]) -> Option<&'a V> {
    keys.iter().try_fold(v, |v, k| v.get(k))
}

fn bool_at<V: Json>(v: &V, key: &str) -> Option<bool> {
    v.get(key).and_then(V::as_bool)
}

struct Out<'a> {
    findings: Vec<Finding>,
    exempted: Vec<Exempted>,
    _p: std::marker::PhantomData<&'a ()>,
}

/// A check that an object's justified exception annotation waived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exempted {
    /// The check id.
    pub check: &'static str,
    /// `Kind namespace/name` of the object.
    pub object: String,
    /// The field path the check would have named.
    pub field: String,
    /// The reason the annotation gives.
    pub reason: String,
}

/// What the posture checks found over a set of objects.
#[derive(Debug, Default)]
pub struct Checked {
    /// Findings (exceptions without a reason included, with a note).
    pub findings: Vec<Finding>,
    /// Findings waived by a justified exception annotation.
    pub exempted: Vec<Exempted>,
}

/// The annotation prefix of a justified exception: `posture.keyhaven.io/allow-<check id>`
/// on the object, with the reason as its value.
pub const EXCEPTION_ANNOTATION_PREFIX: &str = "posture.keyhaven.io/allow-";

/// The shortest reason an exception must give.
pub const MIN_EXCEPTION_REASON: usize = 20;

/// The reason of a justified exception to check `id` on `object`: `Ok(reason)` if the
/// object carries one, `Err(note)` if the annotation is there without a real reason.
///
/// The same annotation waives a check in `keyhaven scan` and in `keyhaven admission`.
pub fn exception<V: Json>(object: &V, id: &str) -> Option<Result<String, String>> {
    let key = format!("{EXCEPTION_ANNOTATION_PREFIX}{id}");
    let reason = object
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(&key))?;
    let reason = reason.as_str().map(str::trim).unwrap_or("");
    if reason.chars().count() >= MIN_EXCEPTION_REASON {
        Some(Ok(reason.to_owned()))
    } else {
        Some(Err(format!(
            " (annotation {key} ignored: its value must say why, in at least {MIN_EXCEPTION_REASON} characters)"
        )))
    }
}

impl Out<'_> {
    fn push<V: Json>(
        &mut self,
        id: &str,
        obj: &Object<V>,
        detail: &str,
        field: String,
        mut message: String,
    ) {
        let Some(c) = check_by_id(id) else { return };
        match exception(&obj.value, id) {
            Some(Ok(reason)) => {
                self.exempted.push(Exempted {
                    check: c.id,
                    object: format!(
                        "{} {}{}",
                        obj.kind,
                        obj.namespace
                            .as_deref()
                            .map(|n| format!("{n}/"))
                            .unwrap_or_default(),
                        obj.name
                    ),
                    field,
                    reason,
                });
                return;
            }
            Some(Err(note)) => message.push_str(&note),
            None => {}
        }
        let identity = format!(
            "{}/{}/{}/{}",
            obj.kind,
            obj.namespace.as_deref().unwrap_or(""),
            obj.name,
            detail
        );
        self.findings.push(Finding {
            rule_id: c.id.to_owned(),
            description: c.title.to_owned(),
            severity: c.severity,
            category: Category::Posture,
            path: obj.path.clone(),
            line: obj.line,
            column: 1,
            commit: obj.commit.clone(),
            message,
            fix: Some(c.fix.to_owned()),
            references: c.refs.to_vec(),
            decoded_from: None,
            field: Some(field),
            secret: None,
            fingerprint: fingerprint(c.id, &obj.path, identity.as_bytes()),
        });
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct RoleRisk {
    secrets: bool,
    wildcard: bool,
    cluster_admin: bool,
}

fn rules_risk<V: Json>(rules: Option<&V>) -> RoleRisk {
    let mut r = RoleRisk::default();
    for rule in rules.and_then(V::as_array).into_iter().flatten() {
        let groups = str_list(rule.get("apiGroups"));
        let resources = str_list(rule.get("resources"));
        let verbs = str_list(rule.get("verbs"));
        let named = !str_list(rule.get("resourceNames")).is_empty();
        let core = groups.is_empty() || groups.iter().any(|g| g.is_empty() || *g == "*");
        let secret_res = resources.iter().any(|x| *x == "secrets" || *x == "*");
        let read = verbs
            .iter()
            .any(|v| matches!(*v, "get" | "list" | "watch" | "*"));
        // `get` on named Secrets is the least-privilege form; list/watch ignore names.
        let broad_read = verbs.iter().any(|v| matches!(*v, "list" | "watch" | "*")) || !named;
        if core && secret_res && read && broad_read {
            r.secrets = true;
        }
        if verbs.contains(&"*") || resources.contains(&"*") {
            r.wildcard = true;
        }
        if verbs.contains(&"*") && resources.contains(&"*") && groups.contains(&"*") {
            r.cluster_admin = true;
        }
    }
    r
}

fn builtin_cluster_role(name: &str) -> Option<RoleRisk> {
    match name {
        "cluster-admin" => Some(RoleRisk {
            secrets: true,
            wildcard: true,
            cluster_admin: true,
        }),
        "admin" | "edit" => Some(RoleRisk {
            secrets: true,
            wildcard: false,
            cluster_admin: false,
        }),
        "view" => Some(RoleRisk::default()),
        _ => None,
    }
}

fn describe_subjects<V: Json>(subjects: &[&V]) -> String {
    subjects
        .iter()
        .map(|s| {
            let kind = s.get("kind").and_then(V::as_str).unwrap_or("?");
            let name = s.get("name").and_then(V::as_str).unwrap_or("?");
            match s.get("namespace").and_then(V::as_str) {
                Some(ns) => format!("{kind} {ns}/{name}"),
                None => format!("{kind} {name}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Run every posture check over the objects of one scan.
pub fn check(objects: &[Object]) -> Vec<Finding> {
    check_objects(objects).findings
}

/// Run every posture check over `objects`, keeping the findings that justified
/// exceptions waived apart.
pub fn check_objects<V: Json>(objects: &[Object<V>]) -> Checked {
    let mut out = Out {
        findings: Vec::new(),
        exempted: Vec::new(),
        _p: std::marker::PhantomData,
    };
    let mut roles: HashMap<(String, String), RoleRisk> = HashMap::new();
    let mut cluster_roles: HashMap<String, RoleRisk> = HashMap::new();
    // ServiceAccounts that some binding grants permissions to: (namespace, name).
    let mut bound_sas: BTreeSet<(String, String)> = BTreeSet::new();
    // Namespace → (first workload, has NetworkPolicy).
    let mut namespaces: BTreeMap<String, (Option<&Object<V>>, bool)> = BTreeMap::new();

    for obj in objects {
        let ns = obj
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        match obj.kind.as_str() {
            "Role" | "ClusterRole" => {
                let risk = rules_risk(obj.value.get("rules"));
                if risk.secrets {
                    out.push(
                        "rbac-secrets-access",
                        obj,
                        "",
                        "rules".to_owned(),
                        format!("{} {} can read Secrets", obj.kind, obj.name),
                    );
                }
                if risk.wildcard {
                    out.push(
                        "rbac-wildcard",
                        obj,
                        "",
                        "rules".to_owned(),
                        format!("{} {} uses `*` in verbs or resources", obj.kind, obj.name),
                    );
                }
                if obj.kind == "Role" {
                    roles.insert((ns, obj.name.clone()), risk);
                } else {
                    cluster_roles.insert(obj.name.clone(), risk);
                }
            }
            "NetworkPolicy" => {
                namespaces.entry(ns).or_insert((None, false)).1 = true;
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                for s in obj
                    .value
                    .get("subjects")
                    .and_then(V::as_array)
                    .into_iter()
                    .flatten()
                {
                    if s.get("kind").and_then(V::as_str) == Some("ServiceAccount") {
                        let sns = s.get("namespace").and_then(V::as_str).unwrap_or(&ns);
                        let name = s.get("name").and_then(V::as_str).unwrap_or("");
                        bound_sas.insert((sns.to_owned(), name.to_owned()));
                    }
                }
            }
            _ => {
                if let Some(_spec) = pod_spec(&obj.kind, &obj.value) {
                    let e = namespaces.entry(ns).or_insert((None, false));
                    if e.0.is_none() {
                        e.0 = Some(obj);
                    }
                }
            }
        }
    }

    for obj in objects {
        let ns = obj
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        match obj.kind.as_str() {
            "RoleBinding" | "ClusterRoleBinding" => {
                bindings(&mut out, obj, &ns, &roles, &cluster_roles);
            }
            kind => {
                if let Some(spec) = pod_spec(kind, &obj.value) {
                    pod_checks(&mut out, obj, spec, &ns, &bound_sas);
                }
            }
        }
    }

    for (ns, (workload, has_policy)) in &namespaces {
        if let (Some(w), false) = (workload, has_policy) {
            out.push("k8s-no-network-policy", w, ns, "metadata.namespace".to_owned(), format!(
                "namespace {ns} has workloads ({} {} first) but no NetworkPolicy in the scanned manifests",
                w.kind, w.name));
        }
    }
    Checked {
        findings: out.findings,
        exempted: out.exempted,
    }
}

fn bindings<V: Json>(
    out: &mut Out<'_>,
    obj: &Object<V>,
    ns: &str,
    roles: &HashMap<(String, String), RoleRisk>,
    cluster_roles: &HashMap<String, RoleRisk>,
) {
    let role_kind = obj
        .value
        .get("roleRef")
        .and_then(|r| r.get("kind"))
        .and_then(V::as_str)
        .unwrap_or("");
    let role_name = obj
        .value
        .get("roleRef")
        .and_then(|r| r.get("name"))
        .and_then(V::as_str)
        .unwrap_or("");
    let risk = if role_kind == "ClusterRole" {
        cluster_roles
            .get(role_name)
            .copied()
            .or_else(|| builtin_cluster_role(role_name))
    } else {
        roles.get(&(ns.to_owned(), role_name.to_owned())).copied()
    }
    .unwrap_or_default();
    let subjects: Vec<&V> = obj
        .value
        .get("subjects")
        .and_then(V::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let who = describe_subjects(&subjects);
    let cluster_wide = obj.kind == "ClusterRoleBinding";
    if cluster_wide && (risk.secrets || risk.wildcard) {
        out.push("rbac-cluster-wide-secrets", obj, "", "roleRef".to_owned(), format!(
            "ClusterRoleBinding {} grants {role_kind} {role_name} (reads Secrets or uses wildcards) cluster-wide to {who}",
            obj.name));
    }
    if role_kind == "ClusterRole" && (role_name == "cluster-admin" || risk.cluster_admin) {
        out.push(
            "rbac-cluster-admin-binding",
            obj,
            "",
            "roleRef.name".to_owned(),
            format!("{} {} binds {role_name} to {who}", obj.kind, obj.name),
        );
    }
    for (i, s) in subjects.iter().enumerate() {
        let field = format!("subjects[{i}]");
        let kind = s.get("kind").and_then(V::as_str).unwrap_or("");
        let name = s.get("name").and_then(V::as_str).unwrap_or("");
        if kind == "ServiceAccount" && name == "default" {
            out.push(
                "rbac-default-service-account",
                obj,
                name,
                field.clone(),
                format!(
                    "{} {} binds {role_kind} {role_name} to the default ServiceAccount",
                    obj.kind, obj.name
                ),
            );
        }
        if matches!(
            name,
            "system:authenticated" | "system:unauthenticated" | "system:anonymous"
        ) && matches!(kind, "Group" | "User")
        {
            out.push(
                "rbac-system-group-binding",
                obj,
                name,
                field.clone(),
                format!(
                    "{} {} binds {role_kind} {role_name} to {kind} {name}",
                    obj.kind, obj.name
                ),
            );
        }
    }
}

fn pod_checks<V: Json>(
    out: &mut Out<'_>,
    obj: &Object<V>,
    spec: &V,
    ns: &str,
    bound_sas: &BTreeSet<(String, String)>,
) {
    let label = format!("{} {}", obj.kind, obj.name);
    let base = pod_spec_path(&obj.kind).unwrap_or("spec");
    for (field, id) in [
        ("hostNetwork", "k8s-host-network"),
        ("hostPID", "k8s-host-pid"),
        ("hostIPC", "k8s-host-ipc"),
    ] {
        if spec.get(field).and_then(V::as_bool) == Some(true) {
            out.push(
                id,
                obj,
                "",
                format!("{base}.{field}"),
                format!("{label} sets {field}: true"),
            );
        }
    }
    for (i, vol) in spec
        .get("volumes")
        .and_then(V::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(hp) = vol.get("hostPath") {
            let p = hp.get("path").and_then(V::as_str).unwrap_or("?");
            let vname = vol.get("name").and_then(V::as_str).unwrap_or("");
            out.push(
                "k8s-host-path",
                obj,
                vname,
                format!("{base}.volumes[{i}].hostPath"),
                format!("{label} mounts hostPath {p}"),
            );
        }
    }
    let sa = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(V::as_str)
        .unwrap_or("default");
    let needs_token = bound_sas.contains(&(ns.to_owned(), sa.to_owned()));
    if spec
        .get("automountServiceAccountToken")
        .and_then(V::as_bool)
        != Some(false)
        && !needs_token
    {
        out.push("k8s-automount-sa-token", obj, "", format!("{base}.automountServiceAccountToken"), format!(
            "{label} mounts the token of ServiceAccount {sa}, which no scanned binding grants anything"));
    }
    let pod_sc = spec.get("securityContext");
    let pod_non_root = pod_sc.and_then(|s| bool_at(s, "runAsNonRoot"));
    let pod_user = pod_sc.and_then(|s| s.get("runAsUser")).and_then(V::as_i64);
    for (place, c) in containers_with_paths(spec) {
        let cname = c.get("name").and_then(V::as_str).unwrap_or("?");
        // Written into a finding's field path only when there is a finding.
        let cpath = place.under(base);
        let sc = c.get("securityContext");
        let sc_bool = |p: &str| sc.and_then(|s| bool_at(s, p));
        if sc_bool("privileged") == Some(true) {
            out.push(
                "k8s-privileged",
                obj,
                cname,
                format!("{cpath}.securityContext.privileged"),
                format!("{label} container {cname} is privileged"),
            );
        }
        if sc_bool("allowPrivilegeEscalation") != Some(false) {
            out.push(
                "k8s-privilege-escalation",
                obj,
                cname,
                format!("{cpath}.securityContext.allowPrivilegeEscalation"),
                format!("{label} container {cname} does not set allowPrivilegeEscalation: false"),
            );
        }
        // NET_BIND_SERVICE is the one capability the restricted Pod Security Standard
        // lets a container add.
        let added: Vec<&str> = str_list(sc.and_then(|s| at(s, &["capabilities", "add"])))
            .into_iter()
            .filter(|c| !c.eq_ignore_ascii_case("NET_BIND_SERVICE"))
            .collect();
        if !added.is_empty() {
            out.push(
                "k8s-added-capabilities",
                obj,
                cname,
                format!("{cpath}.securityContext.capabilities.add"),
                format!(
                    "{label} container {cname} adds capabilities {}",
                    added.join(", ")
                ),
            );
        }
        let user = sc
            .and_then(|s| s.get("runAsUser"))
            .and_then(V::as_i64)
            .or(pod_user);
        let non_root = sc_bool("runAsNonRoot").or(pod_non_root);
        if user == Some(0) || (non_root != Some(true) && user.is_none_or(|u| u == 0)) {
            out.push("k8s-run-as-root", obj, cname, format!("{cpath}.securityContext.runAsNonRoot"), format!(
                "{label} container {cname} may run as root (runAsNonRoot not true, no non-zero runAsUser)"));
        }
        // Ephemeral (debug) containers cannot set a read-only root or limits.
        let ephemeral = place.ephemeral();
        if !ephemeral && sc_bool("readOnlyRootFilesystem") != Some(true) {
            out.push(
                "k8s-writable-root-fs",
                obj,
                cname,
                format!("{cpath}.securityContext.readOnlyRootFilesystem"),
                format!("{label} container {cname} does not set readOnlyRootFilesystem: true"),
            );
        }
        let env_secret = c
            .get("env")
            .and_then(V::as_array)
            .into_iter()
            .flatten()
            .any(|e| at(e, &["valueFrom", "secretKeyRef"]).is_some())
            || c.get("envFrom")
                .and_then(V::as_array)
                .into_iter()
                .flatten()
                .any(|e| e.get("secretRef").is_some());
        if env_secret {
            out.push(
                "k8s-secret-in-env",
                obj,
                cname,
                format!("{cpath}.env"),
                format!("{label} container {cname} reads a Secret into environment variables"),
            );
        }
        let limits = at(c, &["resources", "limits"]);
        if !ephemeral
            && (limits.and_then(|l| l.get("memory")).is_none()
                || limits.and_then(|l| l.get("cpu")).is_none())
        {
            out.push(
                "k8s-no-resource-limits",
                obj,
                cname,
                format!("{cpath}.resources.limits"),
                format!("{label} container {cname} lacks a CPU or memory limit"),
            );
        }
    }
}
