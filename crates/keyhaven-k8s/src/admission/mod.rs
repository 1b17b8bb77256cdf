//! `keyhaven admission`: a ValidatingAdmissionWebhook that runs the checks of
//! `keyhaven scan` (the posture checks and the secret rules, the same code) on what is
//! about to be stored in the cluster, and the offline `admission review` of a file that
//! gives the same answer.
//!
//! A request is decoded with bounds ([`MAX_REVIEW_BYTES`], serde_json's nesting limit) and
//! refused with an error naming what is wrong; then its object is checked and each
//! finding handled as the [`Policy`] says: `enforce` denies (403, naming the check, the
//! field path and the fix), `warn` adds an admission warning (under 120 characters),
//! `audit` records it in `auditAnnotations`. A justified exception annotation
//! (`posture.keyhaven.io/allow-<check>`, with a reason of 20 characters or more) waives a
//! check and is recorded; an annotation without a reason waives nothing.
//!
//! What is checked: Pods (the `ephemeralcontainers` subresource too), every kind that
//! embeds a pod template, RBAC objects, ConfigMaps and Secrets. Other kinds, other
//! subresources, DELETE and CONNECT are allowed. On UPDATE, a finding the old object
//! already had is not enforced (it is warned about): an object admitted before a policy
//! change can still be scaled, relabelled or have its finalizers removed.
//!
//! Evaluation has no side effects: a `dryRun` request gets the same answer and changes
//! nothing.

mod decode;
pub mod policy;
pub mod server;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use keyhaven_scan::engine::{Engine, EngineOptions, Match, Scratch};
use keyhaven_scan::json::{Arena, Json, Tree};
use keyhaven_scan::k8s;
use keyhaven_scan::posture;
use serde::Serialize;
use serde_json::Value;

use decode::{GroupVersionKind, RequestIn};
pub use policy::{Mode, Policy};

/// Largest AdmissionReview accepted: the apiserver stores objects up to 3 MiB, and an
/// UPDATE carries the object twice.
pub const MAX_REVIEW_BYTES: usize = 7 * 1024 * 1024;

/// Admission warnings are kept under this many characters (the apiserver truncates long
/// ones; kubectl prints each on a line).
pub const MAX_WARNING_CHARS: usize = 119;

/// Largest value of one audit annotation.
const MAX_ANNOTATION_CHARS: usize = 2000;

/// The only AdmissionReview version served (registered as `admissionReviewVersions: [v1]`).
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a review could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Over [`MAX_REVIEW_BYTES`].
    #[error("the review is {0} bytes, over the limit of {MAX_REVIEW_BYTES} bytes")]
    TooLarge(usize),
    /// Not UTF-8 JSON (or YAML, for a plain manifest).
    #[error("the review is not valid JSON: {0}")]
    NotJson(String),
    /// Nested deeper than the parser allows.
    #[error("the review is nested too deeply (more than 128 levels)")]
    TooDeep,
    /// Not `admission.k8s.io/v1`.
    #[error("unsupported apiVersion `{0}`: only admission.k8s.io/v1 AdmissionReview is served")]
    ApiVersion(String),
    /// Not `kind: AdmissionReview`.
    #[error("unsupported kind `{0}`: expected AdmissionReview")]
    Kind(String),
    /// A field the apiserver always sends is missing or malformed.
    #[error("invalid AdmissionReview: {0}")]
    Invalid(&'static str),
    /// A plain manifest that cannot be parsed.
    #[error("the manifest cannot be parsed: {0}")]
    Manifest(String),
}

/// One finding and what the policy made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Check (or secret rule) id.
    pub check: String,
    /// Field path in the object.
    pub field: String,
    /// What is wrong (never a secret value).
    pub message: String,
    /// The check's title.
    pub title: String,
    /// How to fix it.
    pub fix: String,
    /// The mode applied.
    pub mode: Mode,
}

/// A decision on one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// `request.uid`, echoed.
    pub uid: String,
    /// Whether the request is allowed.
    pub allowed: bool,
    /// The HTTP-like status code on deny (403), or 400 for a request that cannot be judged.
    pub code: Option<u16>,
    /// The message on deny.
    pub message: Option<String>,
    /// Admission warnings.
    pub warnings: Vec<String>,
    /// Audit annotations.
    pub audit: BTreeMap<String, String>,
    /// The findings.
    pub hits: Vec<Hit>,
    /// Operation, kind, namespace, name (for logs).
    pub operation: String,
    /// The object's kind.
    pub kind: String,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name (`generateName*` when not yet named).
    pub name: String,
    /// Whether the request was a dry run.
    pub dry_run: bool,
    /// Why no check ran, when none did (exempt namespace, label, operation...).
    pub skipped: Option<String>,
}

impl Decision {
    fn new(uid: String, operation: String, dry_run: bool) -> Decision {
        Decision {
            uid,
            allowed: true,
            code: None,
            message: None,
            warnings: Vec::new(),
            audit: BTreeMap::new(),
            hits: Vec::new(),
            operation,
            kind: String::new(),
            namespace: String::new(),
            name: String::new(),
            dry_run,
            skipped: None,
        }
    }

    /// The AdmissionReview response object.
    pub fn to_review(&self) -> Value {
        serde_json::to_value(self.review_out()).unwrap_or(Value::Null)
    }

    /// The AdmissionReview response, encoded (what the webhook answers): the same
    /// document as [`Decision::to_review`], written without building a `Value` first.
    pub fn to_review_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.review_out()).unwrap_or_default()
    }

    fn review_out(&self) -> ReviewOut<'_> {
        ReviewOut {
            api_version: API_VERSION,
            kind: "AdmissionReview",
            response: ResponseOut {
                allowed: self.allowed,
                audit_annotations: (!self.audit.is_empty()).then_some(&self.audit),
                status: self
                    .code
                    .zip(self.message.as_deref())
                    .map(|(code, message)| StatusOut {
                        code,
                        message,
                        reason: if code == 403 {
                            "Forbidden"
                        } else {
                            "BadRequest"
                        },
                    }),
                uid: &self.uid,
                warnings: (!self.warnings.is_empty()).then_some(&self.warnings),
            },
        }
    }

    /// `allowed`, `denied` or `error` (a request that could not be judged).
    pub fn outcome(&self) -> &'static str {
        match (self.allowed, self.code) {
            (true, _) => "allowed",
            (false, Some(403)) => "denied",
            (false, _) => "error",
        }
    }
}

/// The AdmissionReview a decision answers (fields in `Value`'s key order).
#[derive(Serialize)]
struct ReviewOut<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    allowed: bool,
    #[serde(rename = "auditAnnotations", skip_serializing_if = "Option::is_none")]
    audit_annotations: Option<&'a BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut<'a>>,
    uid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a Vec<String>>,
}

#[derive(Serialize)]
struct StatusOut<'a> {
    code: u16,
    message: &'a str,
    reason: &'static str,
}

/// The evaluator: the scanner's rules and the policy.
pub struct Admission {
    engine: Engine,
    policy: Policy,
    /// Tells this evaluator's per-thread scratch from another evaluator's (the scratch
    /// holds copies of this engine's regexes).
    id: u64,
}

/// Source of [`Admission::id`].
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The scanner's buffers and regex copies of the evaluator that last ran on this
    /// thread (webhook reviews run on the blocking pool's long-lived threads): a scratch per
    /// review would start with cold regex caches and take them from a shared pool.
    static SCRATCH: RefCell<(u64, Scratch)> = RefCell::new((u64::MAX, Scratch::default()));
    /// Where this thread's reviews are decoded (see [`Arena`]), emptied after each.
    static ARENA: RefCell<Arena> = RefCell::new(Arena::new());
}

/// An arena that grew past this (a review of several MiB) is dropped after its review
/// instead of being kept for the next.
const ARENA_KEPT_BYTES: usize = 1024 * 1024;

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Kinds whose pods are checked.
fn is_workload(kind: &str) -> bool {
    posture::pod_spec_path(kind).is_some()
}

fn is_rbac(kind: &str) -> bool {
    matches!(
        kind,
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding"
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Classify a serde_json error.
fn json_error(e: &serde_json::Error) -> ReviewError {
    let text = e.to_string();
    if text.contains("recursion limit") {
        ReviewError::TooDeep
    } else {
        ReviewError::NotJson(text)
    }
}

impl Admission {
    /// An evaluator with the built-in secret rules.
    pub fn new(policy: Policy) -> Result<Admission, keyhaven_scan::Error> {
        let rules = keyhaven_scan::rules::RuleSet::builtin()?;
        Ok(Admission {
            engine: Engine::new(rules, EngineOptions::default()),
            policy,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Decode and judge an AdmissionReview as the apiserver sends it.
    pub fn review(&self, body: &[u8]) -> Result<Decision, ReviewError> {
        if body.len() > MAX_REVIEW_BYTES {
            return Err(ReviewError::TooLarge(body.len()));
        }
        ARENA.with(|cell| match cell.try_borrow_mut() {
            Ok(mut arena) => {
                let decision = self.decode_and_judge(body, &arena);
                if arena.allocated_bytes() > ARENA_KEPT_BYTES {
                    *arena = Arena::new();
                } else {
                    arena.reset();
                }
                decision
            }
            Err(_) => self.decode_and_judge(body, &Arena::new()),
        })
    }

    fn decode_and_judge(&self, body: &[u8], arena: &Arena) -> Result<Decision, ReviewError> {
        let review = decode::review(body, arena).map_err(|e| json_error(&e))?;
        if review.kind != "AdmissionReview" {
            return Err(ReviewError::Kind(truncate(&review.kind, 64)));
        }
        if review.api_version != API_VERSION {
            return Err(ReviewError::ApiVersion(truncate(&review.api_version, 64)));
        }
        let request = review.request.ok_or(ReviewError::Invalid("no request"))?;
        if request.uid.is_empty() {
            return Err(ReviewError::Invalid("request.uid is missing"));
        }
        Ok(self.judge(request))
    }

    /// `keyhaven admission review FILE`: an AdmissionReview (JSON), or a plain manifest
    /// (YAML or JSON, one or more documents, each judged as a CREATE).
    pub fn review_file(&self, data: &[u8]) -> Result<Vec<Decision>, ReviewError> {
        if data.len() > MAX_REVIEW_BYTES {
            return Err(ReviewError::TooLarge(data.len()));
        }
        let text = std::str::from_utf8(data)
            .map_err(|_| ReviewError::Manifest("the file is not UTF-8 text".to_owned()))?;
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            let v: Value = serde_json::from_str(text).map_err(|e| json_error(&e))?;
            if v.get("kind").and_then(Value::as_str) == Some("AdmissionReview") {
                return self.review(data).map(|d| vec![d]);
            }
            return Ok(self.manifest_objects(&[v]));
        }
        let mut docs = Vec::new();
        for doc in split_yaml(text) {
            if doc.lines().all(|l| {
                let l = l.trim();
                l.is_empty() || l.starts_with('#')
            }) {
                continue;
            }
            let v: Value = serde_saphyr::from_str(doc).map_err(|e| {
                let msg = e.to_string();
                ReviewError::Manifest(truncate(msg.lines().next().unwrap_or(""), 300))
            })?;
            if v.get("kind").and_then(Value::as_str) == Some("AdmissionReview") {
                let bytes = serde_json::to_vec(&v).map_err(|e| json_error(&e))?;
                return self.review(&bytes).map(|d| vec![d]);
            }
            docs.push(v);
        }
        if docs.is_empty() {
            return Err(ReviewError::Manifest("no document in the file".to_owned()));
        }
        Ok(self.manifest_objects(&docs))
    }

    fn manifest_objects(&self, docs: &[Value]) -> Vec<Decision> {
        let arena = Arena::new();
        let mut objects: Vec<&Value> = Vec::new();
        for v in docs {
            if v.get("kind").and_then(Value::as_str) == Some("List") {
                if let Some(Value::Array(items)) = v.get("items") {
                    objects.extend(items);
                }
            } else {
                objects.push(v);
            }
        }
        objects
            .into_iter()
            .map(|object| {
                let kind = object
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                self.judge(RequestIn {
                    uid: String::new(),
                    kind: GroupVersionKind { kind },
                    sub_resource: None,
                    name: None,
                    namespace: None,
                    operation: "CREATE".to_owned(),
                    object: Some(Tree::from_value(object, &arena)),
                    old_object: None,
                    dry_run: None,
                })
            })
            .collect()
    }

    fn judge(&self, req: RequestIn<'_>) -> Decision {
        let mut d = Decision::new(req.uid, req.operation, req.dry_run.unwrap_or(false));
        d.kind = req.kind.kind;
        let sub = req.sub_resource.unwrap_or_default();
        if !matches!(d.operation.as_str(), "CREATE" | "UPDATE") {
            d.skipped = Some(format!("operation {} is not checked", d.operation));
            return d;
        }
        if !sub.is_empty() && sub != "ephemeralcontainers" {
            d.skipped = Some(format!("subresource {sub} is not checked"));
            return d;
        }
        let Some(object) = req.object else {
            d.allowed = false;
            d.code = Some(400);
            d.message = Some(format!(
                "invalid AdmissionReview: request.object is missing on {}",
                d.operation
            ));
            return d;
        };
        if let Some(k) = object.get("kind").and_then(Tree::as_str) {
            k.clone_into(&mut d.kind);
        }
        let meta = object.get("metadata");
        let meta_str = |k: &str| meta.and_then(|m| m.get(k)).and_then(Tree::as_str);
        d.namespace = meta_str("namespace")
            .map(str::to_owned)
            .or(req.namespace)
            .unwrap_or_default();
        d.name = meta_str("name")
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .or(req.name.filter(|n| !n.is_empty()))
            .or_else(|| meta_str("generateName").map(|g| format!("{g}*")))
            .unwrap_or_default();

        if self.policy.exempt_namespaces.contains(&d.namespace) {
            let why = format!("namespace {} is exempt", d.namespace);
            d.audit.insert("exempted".to_owned(), why.clone());
            d.skipped = Some(why);
            return d;
        }
        if let Some(labels) = meta.and_then(|m| m.get("labels")) {
            for (k, v) in &self.policy.exempt_labels {
                if labels.get(k).and_then(Tree::as_str) == Some(v.as_str()) {
                    let why = format!("label {k}={v} is exempt");
                    d.audit.insert("exempted".to_owned(), why.clone());
                    d.skipped = Some(why);
                    return d;
                }
            }
        }

        let (mut hits, exempted) = self.findings(&d.kind, &d.namespace, &d.name, object);
        // The old object only turns an enforced finding that was already there into a
        // warning: without one it is not judged (most updates).
        let enforced = hits.iter().any(|h| h.mode == Mode::Enforce);
        if let (true, true, Some(old)) = (d.operation == "UPDATE", enforced, req.old_object) {
            let (old_hits, _) = self.findings(&d.kind, &d.namespace, &d.name, old);
            let before: BTreeSet<(&str, &str)> = old_hits
                .iter()
                .map(|h| (h.check.as_str(), h.field.as_str()))
                .collect();
            for h in &mut hits {
                if h.mode == Mode::Enforce && before.contains(&(h.check.as_str(), h.field.as_str()))
                {
                    h.mode = Mode::Warn;
                    h.title.push_str(" (already so before this update)");
                }
            }
        }
        self.decide(&mut d, hits, exempted);
        d
    }

    fn decide(&self, d: &mut Decision, hits: Vec<Hit>, exempted: Vec<(String, String, String)>) {
        let object = if d.namespace.is_empty() {
            format!("{} {}", d.kind, d.name)
        } else {
            format!("{} {}/{}", d.kind, d.namespace, d.name)
        };
        let list = |mode: Mode| -> Vec<&Hit> { hits.iter().filter(|h| h.mode == mode).collect() };
        let denied = list(Mode::Enforce);
        if !denied.is_empty() {
            let mut msg = format!(
                "keyhaven admission denied {object}: {} check{} failed",
                denied.len(),
                if denied.len() == 1 { "" } else { "s" }
            );
            for (i, h) in denied.iter().enumerate() {
                let _ = write!(
                    msg,
                    "; ({}) [{}] {}: {}. Fix: {}",
                    i + 1,
                    h.check,
                    h.field,
                    h.message,
                    h.fix
                );
            }
            d.allowed = false;
            d.code = Some(403);
            d.message = Some(msg);
        }
        for h in list(Mode::Warn) {
            let w = format!("[{}] {}: {}", h.check, h.field, h.title);
            let w = truncate(&w, MAX_WARNING_CHARS);
            if !d.warnings.contains(&w) {
                d.warnings.push(w);
            }
        }
        let mut annotate = |key: &str, items: Vec<String>| {
            if !items.is_empty() {
                d.audit.insert(
                    key.to_owned(),
                    truncate(&items.join(", "), MAX_ANNOTATION_CHARS),
                );
            }
        };
        let at = |hs: Vec<&Hit>| -> Vec<String> {
            hs.iter()
                .map(|h| format!("{}@{}", h.check, h.field))
                .collect()
        };
        annotate("denied", at(denied));
        annotate("warned", at(list(Mode::Warn)));
        annotate("audited", at(list(Mode::Audit)));
        annotate(
            "exempted",
            exempted
                .into_iter()
                .map(|(check, field, reason)| format!("{check}@{field}: {reason}"))
                .collect(),
        );
        d.hits = hits;
    }

    /// Every finding on `object` with the policy's mode (off ones dropped), and the
    /// findings justified exceptions waived: (check, field, reason).
    #[allow(clippy::type_complexity, reason = "a private helper's pair")]
    fn findings(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        object: Tree<'_>,
    ) -> (Vec<Hit>, Vec<(String, String, String)>) {
        let mut hits = Vec::new();
        let mut exempted = Vec::new();
        if kind == "Secret" {
            if self
                .policy
                .keyhaven_namespaces
                .iter()
                .any(|n| n == namespace)
            {
                self.push(
                    &object,
                    &mut hits,
                    &mut exempted,
                    Found {
                        check: policy::KEYHAVEN_NAMESPACE_SECRET,
                        field: "metadata.namespace".to_owned(),
                        message: format!(
                            "namespace {namespace} keeps its secrets in keyhaven, not in Secrets"
                        ),
                        title: "Secret in a namespace whose secrets must come from keyhaven"
                            .to_owned(),
                        fix: "store the values in keyhaven and mount them with the keyhaven CSI provider (SecretProviderClass)".to_owned(),
                        waivable: true,
                    },
                );
            }
            return (hits, exempted);
        }
        let workload = is_workload(kind);
        if !(workload || is_rbac(kind) || kind == "ConfigMap") {
            return (hits, exempted);
        }

        // The scanner's object pass: env literals, ConfigMap credentials.
        let scanned = k8s::scan_object_secrets(&self.engine, "admission", &object, 2);
        let mut secret_fields = BTreeSet::new();
        for f in scanned {
            let field = f.field.unwrap_or_default();
            secret_fields.insert(field.clone());
            self.push(
                &object,
                &mut hits,
                &mut exempted,
                Found {
                    check: &f.rule_id,
                    field,
                    message: f.message,
                    title: f.description,
                    fix: f.fix.unwrap_or_default(),
                    waivable: true,
                },
            );
        }
        if kind == "ConfigMap" {
            return (hits, exempted);
        }

        // The posture checks, on this one object as the scanner parses it (moved, not
        // copied, into the scanner's `Object`).
        let mut parsed = None;
        let mut loose = object;
        if let Some(mut o) = k8s::parsed_object("admission", &mut loose) {
            if o.namespace.is_none() && !namespace.is_empty() {
                o.namespace = Some(namespace.to_owned());
            }
            if o.name.is_empty() {
                name.clone_into(&mut o.name);
            }
            parsed = Some(o);
        }
        let object: &Tree<'_> = parsed.as_ref().map_or(&loose, |o| &o.value);
        let checked = posture::check_objects(parsed.as_slice());
        for f in checked.findings {
            self.push(
                object,
                &mut hits,
                &mut exempted,
                Found {
                    check: &f.rule_id,
                    field: f.field.unwrap_or_default(),
                    message: f.message,
                    title: f.description,
                    fix: f.fix.unwrap_or_default(),
                    waivable: false,
                },
            );
        }
        for e in checked.exempted {
            exempted.push((e.check.to_owned(), e.field, e.reason));
        }

        // The secret rules over every string of the object, with its field path: one
        // pass over all the strings, each judged as if scanned alone.
        let mut leaves = Leaves::new();
        leaves.collect(object, &secret_fields);
        let scanned = SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut slot) => {
                if slot.0 != self.id {
                    *slot = (self.id, Scratch::per_thread());
                }
                self.engine.scan_segments_with(
                    &leaves.text,
                    &leaves.segments,
                    "admission",
                    None,
                    &mut slot.1,
                )
            }
            Err(_) => self.engine.scan_segments_with(
                &leaves.text,
                &leaves.segments,
                "admission",
                None,
                &mut Scratch::default(),
            ),
        });
        let matches = leaves.per_string(scanned);
        let fields = Leaves::fields(
            object,
            &secret_fields,
            &matches.iter().map(|(i, _)| *i).collect(),
        );
        for (i, m) in matches {
            let (Some(rule), Some(field)) = (self.engine.rules.rules.get(m.rule), fields.get(&i))
            else {
                continue;
            };
            self.push(
                object,
                &mut hits,
                &mut exempted,
                Found {
                    check: &rule.spec.id,
                    field: field.to_owned(),
                    message: format!("{} in {field}", rule.spec.description),
                    title: rule.spec.description.clone(),
                    fix: "remove the credential, rotate it, and load it at run time from keyhaven (CSI volume) or a Secret".to_owned(),
                    waivable: true,
                },
            );
        }
        (hits, exempted)
    }

    /// Record one finding on `object` with the policy's mode: dropped if off, waived by a
    /// justified exception annotation (posture findings come with theirs applied), kept
    /// once per (check, field).
    fn push(
        &self,
        object: &Tree<'_>,
        hits: &mut Vec<Hit>,
        exempted: &mut Vec<(String, String, String)>,
        found: Found<'_>,
    ) {
        let Found {
            check,
            field,
            mut message,
            title,
            fix,
            waivable,
        } = found;
        let mode = self.policy.mode(check);
        if mode == Mode::Off {
            return;
        }
        match posture::exception(object, check).filter(|_| waivable) {
            Some(Ok(reason)) => {
                exempted.push((check.to_owned(), field, reason));
                return;
            }
            Some(Err(note)) => message.push_str(&note),
            None => {}
        }
        if hits.iter().any(|h| h.check == check && h.field == field) {
            return;
        }
        hits.push(Hit {
            check: check.to_owned(),
            field,
            message,
            title,
            fix,
            mode,
        });
    }
}

/// One finding before the policy is applied.
struct Found<'a> {
    check: &'a str,
    field: String,
    message: String,
    title: String,
    fix: String,
    /// Whether an exception annotation may waive it here (posture findings come with
    /// theirs already applied).
    waivable: bool,
}

/// The strings of an object worth scanning, back to back, each distinct string once.
struct Leaves<'t> {
    /// The distinct strings, each followed by a newline (never scanned: see
    /// [`Engine::scan_segments_with`]).
    text: Vec<u8>,
    /// Each distinct string's (start, end) in `text`.
    segments: Vec<(usize, usize)>,
    /// For every string gathered, in walk order, the segment that holds its bytes. The
    /// secret rules judge each string alone, so a string equal to an earlier one (an env
    /// value or a mount path repeated in every container) is scanned once and its
    /// matches are reported for each of its field paths.
    strings: Vec<usize>,
    /// The segment of each distinct string (a randomly seeded hash: the strings are the
    /// request's).
    seen: foldhash::HashMap<&'t str, usize>,
}

impl<'t> Leaves<'t> {
    /// Empty, with room for the strings of a typical workload (a few KB of text).
    fn new() -> Leaves<'t> {
        Leaves {
            text: Vec::with_capacity(4096),
            segments: Vec::with_capacity(256),
            strings: Vec::with_capacity(256),
            seen: foldhash::HashMap::with_capacity_and_hasher(256, Default::default()),
        }
    }

    /// Gather the strings of `object` of 8 bytes or more, except those at a field path in
    /// `skip` (field paths are only built when there is one to skip).
    fn collect(&mut self, object: &'t Tree<'_>, skip: &BTreeSet<String>) {
        let paths = !skip.is_empty();
        walk_object_strings(object, paths, &mut |s, path| {
            if !(paths && skip.contains(path)) {
                let next = self.segments.len();
                let segment = *self.seen.entry(s).or_insert(next);
                if segment == next {
                    let start = self.text.len();
                    self.text.extend_from_slice(s.as_bytes());
                    self.segments.push((start, self.text.len()));
                    self.text.push(b'\n');
                }
                self.strings.push(segment);
            }
            true
        });
    }

    /// The scan's matches, (segment, match) in segment order, as (string number, match):
    /// a segment's matches once for every string it holds, in string order.
    fn per_string(&self, mut matches: Vec<(usize, Match)>) -> Vec<(usize, Match)> {
        if matches.is_empty() || self.strings.len() == self.segments.len() {
            // Every string its own segment, numbered alike.
            return matches;
        }
        matches.sort_by_key(|&(segment, _)| segment);
        let mut out = Vec::with_capacity(matches.len());
        for (n, &segment) in self.strings.iter().enumerate() {
            let from = matches.partition_point(|&(s, _)| s < segment);
            let same = matches.get(from..).unwrap_or_default();
            for (_, m) in same.iter().take_while(|&&(s, _)| s == segment) {
                out.push((n, m.clone()));
            }
        }
        out
    }

    /// The field paths of the strings numbered `wanted` (in [`Leaves::collect`]'s order,
    /// with the same `skip`), in one walk: only strings a rule matched need one.
    fn fields(
        object: &Tree<'_>,
        skip: &BTreeSet<String>,
        wanted: &BTreeSet<usize>,
    ) -> BTreeMap<usize, String> {
        let mut found = BTreeMap::new();
        let Some(&last) = wanted.last() else {
            return found;
        };
        let mut n = 0usize;
        walk_object_strings(object, true, &mut |_, path| {
            if skip.contains(path) {
                return true;
            }
            if wanted.contains(&n) {
                found.insert(n, path.to_owned());
            }
            n += 1;
            n <= last
        });
        found
    }
}

/// [`walk_strings`] from the root of `object`.
fn walk_object_strings<'t>(
    object: &'t Tree<'_>,
    paths: bool,
    f: &mut dyn FnMut(&'t str, &str) -> bool,
) -> bool {
    walk_strings(object, &mut String::new(), paths, 0, false, f)
}

/// Call `f` with each string of `v` of 8 bytes or more and (when `paths`) its field path,
/// in member order, until it returns false. Server-maintained metadata (managed fields,
/// kubectl's copy of the last applied object) is skipped: it repeats the object.
/// `root_metadata` says `v` is the object's `metadata`.
fn walk_strings<'t>(
    v: &'t Tree<'_>,
    path: &mut String,
    paths: bool,
    depth: usize,
    root_metadata: bool,
    f: &mut dyn FnMut(&'t str, &str) -> bool,
) -> bool {
    if depth > 64 {
        return true;
    }
    match v {
        Tree::String(s) if s.len() >= 8 => f(s, path),
        Tree::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                if paths {
                    push_index(path, i);
                }
                let more = walk_strings(item, path, paths, depth + 1, false, f);
                path.truncate(len);
                if !more {
                    return false;
                }
            }
            true
        }
        Tree::Object(entries) => {
            for &(k, ref item) in *entries {
                if (root_metadata && k == "managedFields")
                    || k == "kubectl.kubernetes.io/last-applied-configuration"
                {
                    continue;
                }
                let len = path.len();
                if paths {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                let more = walk_strings(
                    item,
                    path,
                    paths,
                    depth + 1,
                    depth == 0 && k == "metadata",
                    f,
                );
                path.truncate(len);
                if !more {
                    return false;
                }
            }
            true
        }
        _ => true,
    }
}

/// Append `[i]` to `path` (what `write!(path, "[{i}]")` writes, without the formatting
/// machinery: this runs for every array element of every review).
fn push_index(path: &mut String, i: usize) {
    let mut digits = [0u8; 20];
    let mut n = i;
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    path.push('[');
    for &d in digits.get(at..).unwrap_or_default() {
        path.push(char::from(d));
    }
    path.push(']');
}

/// Split YAML text into documents at `---` lines.
fn split_yaml(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut offset = 0usize;
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") || t == "..." {
            if let Some(doc) = text.get(start..offset) {
                docs.push(doc);
            }
            start = offset + line.len();
        }
        offset += line.len();
    }
    if let Some(doc) = text.get(start..) {
        docs.push(doc);
    }
    docs
}

/// Entry point for the fuzz target: decode and judge arbitrary bytes as a review and as a
/// review file; a decision must have the response shape the apiserver needs.
#[doc(hidden)]
#[allow(
    clippy::panic,
    reason = "a broken invariant is what the fuzzer looks for"
)]
pub fn fuzz_review(data: &[u8]) -> bool {
    static ADMISSION: std::sync::OnceLock<Option<Admission>> = std::sync::OnceLock::new();
    let Some(admission) = ADMISSION.get_or_init(|| Admission::new(Policy::default()).ok()) else {
        return false;
    };
    let check = |d: &Decision| {
        let r = d.to_review();
        if r.pointer("/response/uid") != Some(&Value::String(d.uid.clone())) {
            panic!("uid not echoed");
        }
        if serde_json::from_slice::<Value>(&d.to_review_json())
            .ok()
            .as_ref()
            != Some(&r)
        {
            panic!("the encoded response is not the response");
        }
        if !d.allowed && (d.code.is_none() || d.message.is_none()) {
            panic!("a denial without a status");
        }
        if d.warnings
            .iter()
            .any(|w| w.chars().count() > MAX_WARNING_CHARS)
        {
            panic!("a warning over the limit");
        }
    };
    let reviewed = admission.review(data).inspect(check).is_ok();
    let filed = match admission.review_file(data) {
        Ok(ds) => {
            ds.iter().for_each(check);
            true
        }
        Err(_) => false,
    };
    reviewed || filed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_are_gathered_in_order_and_their_paths_found_afterwards() {
        let text = r#"{
            "kind": "Pod",
            "metadata": {"name": "short", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "a copy of the object",
                "team": "payments-and-billing"},
                "managedFields": [{"manager": "kubectl-client-side-apply"}]},
            "spec": {"containers": [
                {"name": "app", "image": "registry.example/app:1", "env": [
                    {"name": "A", "value": "first long value"},
                    {"name": "B", "value": "second long value"}]}],
                "managedFields": "kept: only the root metadata's are skipped"}
        }"#;
        let arena = Arena::new();
        let tree = Tree::parse(text, &arena).unwrap();
        let gathered = |skip: &BTreeSet<String>| {
            let mut leaves = Leaves::new();
            leaves.collect(&tree, skip);
            let strings: Vec<String> = leaves
                .segments
                .iter()
                .map(|&(a, b)| String::from_utf8(leaves.text[a..b].to_vec()).unwrap())
                .collect();
            let all = (0..strings.len()).collect();
            let fields: Vec<String> = Leaves::fields(&tree, skip, &all).into_values().collect();
            (strings, fields)
        };
        let (strings, fields) = gathered(&BTreeSet::new());
        assert_eq!(
            strings,
            [
                "payments-and-billing",
                "first long value",
                "second long value",
                "registry.example/app:1",
                "kept: only the root metadata's are skipped",
            ]
        );
        assert_eq!(
            fields,
            [
                "metadata.annotations.team",
                "spec.containers[0].env[0].value",
                "spec.containers[0].env[1].value",
                "spec.containers[0].image",
                "spec.managedFields",
            ]
        );
        // A skipped path takes its string out, and the numbering with it.
        let skip = BTreeSet::from(["spec.containers[0].env[0].value".to_owned()]);
        let (strings, fields) = gathered(&skip);
        assert_eq!(strings.len(), 4);
        assert_eq!(strings[1], "second long value");
        assert_eq!(fields[1], "spec.containers[0].env[1].value");
        // Members come in key order (`env` before `image`); only wanted paths return.
        let some = Leaves::fields(&tree, &BTreeSet::new(), &BTreeSet::from([1, 3]));
        assert_eq!(
            some.into_iter().collect::<Vec<_>>(),
            [
                (1, "spec.containers[0].env[0].value".to_owned()),
                (3, "spec.containers[0].image".to_owned())
            ]
        );
    }

    #[test]
    fn equal_strings_share_one_segment_and_its_matches() {
        let text = r#"{"a": ["same long text", "other long text", "same long text"],
                       "b": "same long text"}"#;
        let arena = Arena::new();
        let tree = Tree::parse(text, &arena).unwrap();
        let mut leaves = Leaves::new();
        leaves.collect(&tree, &BTreeSet::new());
        assert_eq!(leaves.text, b"same long text\nother long text\n");
        assert_eq!(leaves.segments.len(), 2);
        assert_eq!(leaves.strings, [0, 1, 0, 0]);
        // A segment's matches, once per string it holds, in string order.
        let m = |rule| Match {
            rule,
            offset: 0,
            line: 1,
            column: 1,
            secret: Vec::new(),
        };
        let per_string: Vec<(usize, usize)> = leaves
            .per_string(vec![(0, m(7)), (0, m(8)), (1, m(9))])
            .into_iter()
            .map(|(n, m)| (n, m.rule))
            .collect();
        assert_eq!(
            per_string,
            [(0, 7), (0, 8), (1, 9), (2, 7), (2, 8), (3, 7), (3, 8)]
        );
    }

    #[test]
    fn a_large_review_does_not_leave_its_arena_behind() {
        let admission = Admission::new(Policy::default()).unwrap();
        let review = |data: Value| {
            serde_json::to_vec(&json!({
                "apiVersion": API_VERSION, "kind": "AdmissionReview",
                "request": {"uid": "u", "operation": "CREATE", "kind": {"kind": "ConfigMap"},
                    "object": {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "m", "namespace": "ns"}, "data": data}}}))
            .unwrap()
        };
        let held = || ARENA.with(|a| a.borrow().allocated_bytes());
        // Reviews run one after another on this thread, each in the thread's arena.
        let small = review(json!({"greeting": "hello"}));
        assert!(admission.review(&small).unwrap().allowed);
        let kept = held();
        assert!(kept > 0 && kept <= ARENA_KEPT_BYTES, "{kept}");
        let data: serde_json::Map<String, Value> = (0..40_000)
            .map(|i| {
                (
                    format!("key-{i}"),
                    Value::String(format!("value number {i}")),
                )
            })
            .collect();
        let large = review(Value::Object(data));
        assert!(large.len() > ARENA_KEPT_BYTES);
        assert!(admission.review(&large).unwrap().allowed);
        assert!(held() <= ARENA_KEPT_BYTES, "{} bytes kept", held());
        // And the next review decodes as before.
        assert!(admission.review(&small).unwrap().allowed);
    }

    #[test]
    fn push_index_writes_what_format_writes() {
        for i in [0usize, 7, 10, 99, 100, 12345, usize::MAX] {
            let mut path = "spec.containers".to_owned();
            push_index(&mut path, i);
            assert_eq!(path, format!("spec.containers[{i}]"));
        }
    }
}
