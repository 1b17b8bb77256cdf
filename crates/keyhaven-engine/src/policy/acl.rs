//! A compiled ACL: the union of a token's policies, and how a request is checked
//! against it.
//!
//! Evaluation follows Vault (`vault/policy/acl.go` in OpenBao):
//! 1. Rules with the same glob, from any of the token's policies, are merged: their
//!    capabilities are united, their parameter constraints merged, and a `deny` in any of
//!    them makes the merged rule deny everything.
//! 2. Exactly one merged rule applies to a request: an exact rule for the path; else, for
//!    `list`, an exact rule for the path without its trailing `/`; else the most specific
//!    glob; else, for `list` on `foo/`, the most specific glob for `foo`.
//! 3. Among globs the most specific wins: the later the first `+` or `*`, the better;
//!    then a rule without a trailing `*` beats one with it; then fewer `+` segments;
//!    then the longer glob; then the lexicographically greater glob.
//! 4. The operation needs its capability on that rule (`read`, `create`, `update`,
//!    `patch`, `delete`, `list`); root-protected paths (routes marked `sudo` in their backend's route
//!    table, [`crate::route::Route::sudo`]) need `sudo`
//!    too; `read`, `create`, `update` and `patch` must satisfy the rule's parameter
//!    constraints.
//! 5. Unlike Vault, a string parameter is judged as handlers read it, not only as sent:
//!    list parameters (`policies`) accept one comma-separated string and trim its parts,
//!    so `"p1, admin"` is denied by a rule denying `admin`, and allowed only if every
//!    part is (or the string is listed exactly as written).
//!
//! Compilation keeps exact globs in a hash map and trailing-`*` globs in a hash map
//! probed once per distinct prefix length (longest first), so a check costs a handful of
//! hash lookups however many rules there are; only `+` globs are scanned.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::parse::{Caps, Policy};
use crate::request::Operation;

/// The outcome of an authorization check, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Human-readable reason: the policy and rule that allowed or denied, or that nothing
    /// granted it. The wording is stable (`keyhaven policy explain` shows it).
    pub reason: String,
    /// The policy that allowed or denied, when one did.
    pub policy: Option<String>,
    /// The rule's path glob that decided, as written in the policy, when one matched.
    pub rule: Option<String>,
}

/// What [`Acl::verdict`] decided: denials come with their [`Decision`] (rare, so written
/// at once); an allowance borrows the names [`Acl::authorize_wrapped`] writes its reason
/// from.
enum Verdict<'a> {
    Allowed {
        policy: &'a str,
        rule: Option<&'a str>,
    },
    Denied(Decision),
}

impl Decision {
    fn allow(policy: &str, rule: Option<&str>, reason: String) -> Decision {
        Decision {
            allowed: true,
            reason,
            policy: Some(policy.to_owned()),
            rule: rule.map(str::to_owned),
        }
    }

    fn deny(policy: Option<&str>, rule: Option<&str>, reason: String) -> Decision {
        Decision {
            allowed: false,
            reason,
            policy: policy.map(str::to_owned),
            rule: rule.map(str::to_owned),
        }
    }
}

/// The merged permissions of one glob across a token's policies.
#[derive(Debug, Clone)]
struct Perms {
    /// The glob as written (with its trailing `*`).
    glob: Arc<str>,
    caps: Caps,
    /// Which policy granted which capabilities, in policy-name order.
    grants: Vec<(Caps, Arc<str>)>,
    /// The policy whose rule denies, when the merged rule denies.
    denied_by: Option<Arc<str>>,
    allowed: HashMap<String, Vec<Value>>,
    allowed_by: Option<Arc<str>>,
    /// Parameter → (denied values, the policy that denied it).
    denied: HashMap<String, (Vec<Value>, Arc<str>)>,
    /// Parameter → the policy that requires it.
    required: Vec<(String, Arc<str>)>,
    /// Wrapping TTL bounds in seconds (0: none), merged as Vault merges them: the
    /// smallest non-zero bound of the policies wins, for each.
    min_wrapping_ttl: u64,
    max_wrapping_ttl: u64,
}

impl Perms {
    fn granting_policy(&self, cap: Caps) -> Option<&str> {
        self.grants
            .iter()
            .find(|(c, _)| c.contains(cap))
            .map(|(_, p)| p.as_ref())
    }
}

/// A `+` glob, pre-split.
#[derive(Debug, Clone)]
struct SegmentRule {
    /// Without the trailing `*`.
    body: Box<str>,
    /// `body` split at `/`.
    segments: Box<[Box<str>]>,
    is_prefix: bool,
    first_wildcard: usize,
    wildcards: usize,
    perms: usize,
}

impl SegmentRule {
    fn new(glob: &str, perms: usize) -> SegmentRule {
        let (body, is_prefix) = match glob.strip_suffix('*') {
            Some(b) => (b, true),
            None => (glob, false),
        };
        let segments: Box<[Box<str>]> = body.split('/').map(Box::from).collect();
        SegmentRule {
            body: body.into(),
            wildcards: segments.iter().filter(|s| s.as_ref() == "+").count(),
            segments,
            is_prefix,
            first_wildcard: glob.find('+').unwrap_or(glob.len()),
            perms,
        }
    }

    /// The literal start every matching path has: the segments before the first `+`
    /// (and before the last segment, which may match as a prefix), each with its `/`.
    fn literal_prefix(&self) -> String {
        let mut out = String::new();
        let last = self.segments.len().saturating_sub(1);
        for s in self.segments.iter().take(last) {
            if s.as_ref() == "+" {
                break;
            }
            out.push_str(s);
            out.push('/');
        }
        out
    }

    /// Vault's segment match: `+` takes one whole segment; the last segment of a prefix
    /// glob matches as a prefix. `have` is the number of segments of `path`.
    fn matches(&self, path: &str, have: usize) -> bool {
        let want = self.segments.len();
        if have < want || (!self.is_prefix && have != want) {
            return false;
        }
        let mut parts = path.split('/');
        for (i, glob) in self.segments.iter().enumerate() {
            let Some(part) = parts.next() else {
                return false;
            };
            let glob = glob.as_ref();
            let ok = glob == "+"
                || glob == part
                || (self.is_prefix && i + 1 == want && part.starts_with(glob));
            if !ok {
                return false;
            }
        }
        true
    }
}

/// How specific a glob match is; greater is more specific (Vault's order).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity<'a> {
    first_wildcard: usize,
    not_prefix: bool,
    fewer_wildcards: std::cmp::Reverse<usize>,
    len: usize,
    glob: &'a str,
}

/// The compiled union of a token's policies.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    root: bool,
    perms: Vec<Perms>,
    exact: HashMap<Box<str>, usize>,
    prefix: HashMap<Box<str>, usize>,
    /// Distinct lengths of the keys of `prefix`, longest first.
    prefix_lens: Vec<usize>,
    segment: Vec<SegmentRule>,
    /// Indexes into `segment` by each rule's literal prefix.
    segment_index: HashMap<Box<str>, Vec<usize>>,
    /// Distinct lengths of the keys of `segment_index`, longest first.
    segment_lens: Vec<usize>,
    policies: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Exact,
    Prefix,
    Segment,
}

impl Acl {
    /// The ACL of the `root` policy: everything is allowed.
    pub fn root() -> Acl {
        Acl {
            root: true,
            policies: vec!["root".to_owned()],
            ..Acl::default()
        }
    }

    /// Whether this is the `root` ACL.
    pub fn is_root(&self) -> bool {
        self.root
    }

    /// The names of the policies compiled in.
    pub fn policies(&self) -> &[String] {
        &self.policies
    }

    /// Compile named policies into one ACL. Give them in a stable order (the store sorts
    /// by name): it decides which policy a reason names when several grant the same thing.
    pub fn compile<'a>(policies: impl IntoIterator<Item = (&'a str, &'a Policy)>) -> Acl {
        let mut acl = Acl::default();
        let mut index: HashMap<(Kind, String), usize> = HashMap::new();
        for (name, policy) in policies {
            if name == "root" {
                return Acl::root();
            }
            acl.policies.push(name.to_owned());
            let name: Arc<str> = Arc::from(name);
            for rule in policy.rules() {
                let glob = rule.path.as_str();
                let has_segment = glob == "+" || glob.contains("/+") || glob.starts_with("+/");
                let (kind, key) = if has_segment {
                    (Kind::Segment, glob.to_owned())
                } else if let Some(p) = glob.strip_suffix('*') {
                    (Kind::Prefix, p.to_owned())
                } else {
                    (Kind::Exact, glob.to_owned())
                };
                let i = match index.get(&(kind, key.clone())) {
                    Some(i) => *i,
                    None => {
                        let i = acl.perms.len();
                        acl.perms.push(Perms {
                            glob: Arc::from(glob),
                            caps: Caps::NONE,
                            grants: Vec::new(),
                            denied_by: None,
                            allowed: HashMap::new(),
                            allowed_by: None,
                            denied: HashMap::new(),
                            required: Vec::new(),
                            min_wrapping_ttl: 0,
                            max_wrapping_ttl: 0,
                        });
                        index.insert((kind, key.clone()), i);
                        match kind {
                            Kind::Exact => {
                                acl.exact.insert(key.into_boxed_str(), i);
                            }
                            Kind::Prefix => {
                                acl.prefix.insert(key.into_boxed_str(), i);
                            }
                            Kind::Segment => {
                                acl.segment.push(SegmentRule::new(glob, i));
                            }
                        }
                        i
                    }
                };
                if let Some(p) = acl.perms.get_mut(i) {
                    merge(p, rule, &name);
                }
            }
        }
        let mut lens: Vec<usize> = acl.prefix.keys().map(|k| k.len()).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        acl.prefix_lens = lens;
        for (si, seg) in acl.segment.iter().enumerate() {
            acl.segment_index
                .entry(seg.literal_prefix().into_boxed_str())
                .or_default()
                .push(si);
        }
        let mut lens: Vec<usize> = acl.segment_index.keys().map(|k| k.len()).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        acl.segment_lens = lens;
        acl
    }

    /// The most specific glob rule for `path`, if any.
    fn non_exact(&self, path: &str) -> Option<&Perms> {
        let mut best: Option<(Specificity<'_>, usize)> = None;
        for &len in &self.prefix_lens {
            if let Some(p) = path.get(..len)
                && let Some(&i) = self.prefix.get(p)
            {
                if self.segment.is_empty() {
                    return self.perms.get(i);
                }
                best = Some((
                    Specificity {
                        first_wildcard: len,
                        not_prefix: false,
                        fewer_wildcards: std::cmp::Reverse(0),
                        len,
                        glob: p,
                    },
                    i,
                ));
                break;
            }
        }
        let have = path.split('/').count();
        for &len in &self.segment_lens {
            let Some(list) = path.get(..len).and_then(|p| self.segment_index.get(p)) else {
                continue;
            };
            for seg in list.iter().filter_map(|&si| self.segment.get(si)) {
                if !seg.matches(path, have) {
                    continue;
                }
                let spec = Specificity {
                    first_wildcard: seg.first_wildcard,
                    not_prefix: !seg.is_prefix,
                    fewer_wildcards: std::cmp::Reverse(seg.wildcards),
                    len: seg.body.len(),
                    glob: &seg.body,
                };
                if best.as_ref().is_none_or(|(b, _)| spec > *b) {
                    best = Some((spec, seg.perms));
                }
            }
        }
        best.and_then(|(_, i)| self.perms.get(i))
    }

    /// The rule that applies to `path` (Vault's lookup order; see the module docs).
    fn lookup(&self, path: &str, list: bool) -> Option<&Perms> {
        if let Some(&i) = self.exact.get(path) {
            return self.perms.get(i);
        }
        let trimmed = path.strip_suffix('/');
        if list
            && let Some(t) = trimmed
            && let Some(&i) = self.exact.get(t)
        {
            return self.perms.get(i);
        }
        if let Some(p) = self.non_exact(path) {
            return Some(p);
        }
        match trimmed {
            Some(t) if list => self.non_exact(t),
            _ => None,
        }
    }

    /// Decide whether `op` on `path` with `data` is allowed. `root_protected`: the
    /// path's route is marked `sudo` ([`crate::route::Route::sudo`]), so the rule must
    /// grant `sudo` as well; the route table is the only source of that mark.
    pub fn authorize(
        &self,
        op: Operation,
        path: &str,
        data: &Map<String, Value>,
        root_protected: bool,
    ) -> Decision {
        self.authorize_wrapped(op, path, data, root_protected, None)
    }

    /// [`Acl::authorize`] for a request that asks for its response to be wrapped with a
    /// TTL of `wrap_ttl` seconds (`None`: not wrapped), which a rule's
    /// `min_wrapping_ttl` / `max_wrapping_ttl` constrain.
    pub fn authorize_wrapped(
        &self,
        op: Operation,
        path: &str,
        data: &Map<String, Value>,
        root_protected: bool,
        wrap_ttl: Option<u64>,
    ) -> Decision {
        match self.verdict(op, path, data, root_protected, wrap_ttl) {
            Verdict::Allowed { policy, rule: None } => {
                Decision::allow(policy, None, format!("allowed by policy {policy:?}"))
            }
            Verdict::Allowed {
                policy,
                rule: Some(glob),
            } => Decision::allow(
                policy,
                Some(glob),
                format!("allowed by policy {policy:?}, rule path {glob:?} ({op})"),
            ),
            Verdict::Denied(decision) => decision,
        }
    }

    /// Whether [`Acl::authorize_wrapped`] allows the request: the same checks, without
    /// writing down the reason (the request path needs only the answer; an allowed
    /// request's reason would be three allocations and a `format!` per request).
    pub fn allows_wrapped(
        &self,
        op: Operation,
        path: &str,
        data: &Map<String, Value>,
        root_protected: bool,
        wrap_ttl: Option<u64>,
    ) -> bool {
        matches!(
            self.verdict(op, path, data, root_protected, wrap_ttl),
            Verdict::Allowed { .. }
        )
    }

    /// The decision on a request; an allowed one names what allowed it without copying.
    fn verdict(
        &self,
        op: Operation,
        path: &str,
        data: &Map<String, Value>,
        root_protected: bool,
        wrap_ttl: Option<u64>,
    ) -> Verdict<'_> {
        if self.root {
            return Verdict::Allowed {
                policy: "root",
                rule: None,
            };
        }
        let path = path.trim_start_matches('/');
        // A list is always of a folder: Vault's HTTP layer adds the trailing slash.
        let path: Cow<'_, str> = if op == Operation::List && !path.ends_with('/') {
            Cow::Owned(format!("{path}/"))
        } else {
            Cow::Borrowed(path)
        };
        let path = path.as_ref();
        let cap = op_cap(op);
        let Some(perms) = self.lookup(path, op == Operation::List) else {
            return Verdict::Denied(Decision::deny(
                None,
                None,
                format!("no policy grants {op} on {path:?}"),
            ));
        };
        let glob = perms.glob.as_ref();
        if perms.caps.contains(Caps::DENY) {
            let by = perms.denied_by.as_deref().unwrap_or_default();
            return Verdict::Denied(Decision::deny(
                Some(by),
                Some(glob),
                format!("denied by policy {by:?}, rule path {glob:?} (deny)"),
            ));
        }
        if !perms.caps.contains(cap) {
            let granted = perms.caps.names().join(", ");
            let granted = if granted.is_empty() {
                "nothing".to_owned()
            } else {
                granted
            };
            return Verdict::Denied(Decision::deny(
                None,
                Some(glob),
                format!(
                    "no policy grants {op} on {path:?} (the most specific rule path, \
                     {glob:?}, grants {granted})"
                ),
            ));
        }
        let policy = perms.granting_policy(cap).unwrap_or_default();
        if root_protected && !perms.caps.contains(Caps::SUDO) {
            return Verdict::Denied(Decision::deny(
                None,
                Some(glob),
                format!(
                    "{path:?} is root-protected and needs sudo, which rule path {glob:?} \
                     does not grant"
                ),
            ));
        }
        if let Some(d) = check_wrapping(perms, wrap_ttl) {
            return Verdict::Denied(d);
        }
        if matches!(
            op,
            Operation::Read | Operation::Create | Operation::Update | Operation::Patch
        ) && let Some(d) = check_parameters(perms, data)
        {
            return Verdict::Denied(d);
        }
        Verdict::Allowed {
            policy,
            rule: Some(glob),
        }
    }

    /// The capabilities this ACL grants on `path` (Vault's `sys/capabilities`): sorted
    /// names, `["root"]` for the root policy, `["deny"]` when nothing is granted.
    pub fn capabilities(&self, path: &str) -> Vec<String> {
        if self.root {
            return vec!["root".to_owned()];
        }
        let path = path.trim_start_matches('/');
        let caps = self.lookup(path, true).map(|p| p.caps).unwrap_or_default();
        if caps.is_empty() || caps.contains(Caps::DENY) {
            return vec!["deny".to_owned()];
        }
        caps.names().into_iter().map(str::to_owned).collect()
    }
}

impl Acl {
    /// Whether the token may use anything under the mount at `mount` (its path, with the
    /// trailing `/`): Vault's `hasMountAccess`, which `sys/internal/ui/mounts` asks before
    /// describing a mount. True when a rule applies to the mount path itself and grants
    /// something, or when any exact, prefix or `+` rule reaching below the mount grants a
    /// capability (a rule that denies grants nothing).
    pub fn has_mount_access(&self, mount: &str) -> bool {
        if self.root {
            return true;
        }
        let mount = mount.trim_start_matches('/');
        if self.capabilities(mount) != ["deny"] {
            return true;
        }
        let grants = |i: usize| {
            self.perms
                .get(i)
                .is_some_and(|p| !p.caps.is_empty() && !p.caps.contains(Caps::DENY))
        };
        let below = |glob: &str| glob.starts_with(mount);
        if self.exact.iter().any(|(g, &i)| below(g) && grants(i))
            || self.prefix.iter().any(|(g, &i)| below(g) && grants(i))
        {
            return true;
        }
        // A `+` rule reaches below the mount when the mount's segments match its first
        // segments (`+` takes any one).
        let want: Vec<&str> = mount.trim_end_matches('/').split('/').collect();
        self.segment.iter().any(|seg| {
            grants(seg.perms)
                && seg.segments.len() >= want.len()
                && want
                    .iter()
                    .zip(seg.segments.iter())
                    .enumerate()
                    .all(|(i, (m, g))| {
                        let g = g.as_ref();
                        g == "+"
                            || g == *m
                            || (seg.is_prefix && i + 1 == seg.segments.len() && m.starts_with(g))
                    })
        })
    }
}

fn op_cap(op: Operation) -> Caps {
    match op {
        Operation::Read => Caps::READ,
        Operation::Create => Caps::CREATE,
        Operation::Update => Caps::UPDATE,
        Operation::Patch => Caps::PATCH,
        Operation::Delete => Caps::DELETE,
        Operation::List => Caps::LIST,
    }
}

/// Merge one policy's rule into the permissions of its glob (Vault's `NewACL`).
fn merge(p: &mut Perms, rule: &super::parse::Rule, policy: &Arc<str>) {
    if p.caps.contains(Caps::DENY) {
        return;
    }
    if rule.caps.contains(Caps::DENY) {
        p.caps = Caps::DENY;
        p.denied_by = Some(policy.clone());
        p.grants.clear();
        p.allowed.clear();
        p.denied.clear();
        p.required.clear();
        return;
    }
    p.caps = p.caps.union(rule.caps);
    if !rule.caps.is_empty() {
        p.grants.push((rule.caps, policy.clone()));
    }
    for (k, v) in &rule.allowed_parameters {
        if p.allowed_by.is_none() {
            p.allowed_by = Some(policy.clone());
        }
        match p.allowed.get_mut(k) {
            // An empty list (any value) absorbs every other.
            Some(existing) if existing.is_empty() => {}
            Some(existing) if v.is_empty() => existing.clear(),
            Some(existing) => existing.extend(v.iter().cloned()),
            None => {
                p.allowed.insert(k.clone(), v.clone());
            }
        }
    }
    for (k, v) in &rule.denied_parameters {
        match p.denied.get_mut(k) {
            Some((existing, _)) if existing.is_empty() => {}
            Some((existing, _)) if v.is_empty() => existing.clear(),
            Some((existing, _)) => existing.extend(v.iter().cloned()),
            None => {
                p.denied.insert(k.clone(), (v.clone(), policy.clone()));
            }
        }
    }
    for r in &rule.required_parameters {
        if !p.required.iter().any(|(x, _)| x == r) {
            p.required.push((r.clone(), policy.clone()));
        }
    }
    for (merged, bound) in [
        (&mut p.min_wrapping_ttl, rule.min_wrapping_ttl),
        (&mut p.max_wrapping_ttl, rule.max_wrapping_ttl),
    ] {
        if bound > 0 && (*merged == 0 || bound < *merged) {
            *merged = bound;
        }
    }
}

/// Vault's wrapping bounds; `None` when they pass. `wrap_ttl`: the TTL the request asks
/// its response to be wrapped with, if any.
fn check_wrapping(p: &Perms, wrap_ttl: Option<u64>) -> Option<Decision> {
    let (min, max) = (p.min_wrapping_ttl, p.max_wrapping_ttl);
    if min == 0 && max == 0 {
        return None;
    }
    let glob = p.glob.as_ref();
    let why = match wrap_ttl {
        _ if min != 0 && max != 0 && max < min => format!(
            "the merged wrapping bounds are contradictory (max_wrapping_ttl {max}s < \
             min_wrapping_ttl {min}s)"
        ),
        None => "the response must be wrapped (X-Vault-Wrap-TTL)".to_owned(),
        Some(ttl) if max != 0 && ttl > max => {
            format!("the wrapping TTL {ttl}s is above max_wrapping_ttl {max}s")
        }
        Some(ttl) if ttl < min => {
            format!("the wrapping TTL {ttl}s is below min_wrapping_ttl {min}s")
        }
        Some(_) => return None,
    };
    Some(Decision::deny(
        None,
        Some(glob),
        format!("denied by rule path {glob:?}: {why}"),
    ))
}

/// Vault's parameter checks; `None` when they pass.
fn check_parameters(p: &Perms, data: &Map<String, Value>) -> Option<Decision> {
    let glob = p.glob.as_ref();
    for (param, by) in &p.required {
        if !data.keys().any(|k| k.eq_ignore_ascii_case(param)) {
            return Some(Decision::deny(
                Some(by),
                Some(glob),
                format!(
                    "denied by policy {by:?}, rule path {glob:?}: missing required \
                     parameter {param:?}"
                ),
            ));
        }
    }
    if data.is_empty() {
        return None;
    }
    if !p.denied.is_empty() {
        let all = p.denied.get("*");
        for (key, value) in data {
            let lower = lowercase(key);
            let hit = match (all, p.denied.get(lower.as_ref())) {
                (Some((_, by)), _) => Some(by),
                (None, Some((list, by))) if value_denied(value, list) => Some(by),
                _ => None,
            };
            if let Some(by) = hit {
                return Some(Decision::deny(
                    Some(by),
                    Some(glob),
                    format!(
                        "denied by policy {by:?}, rule path {glob:?}: parameter {key:?} \
                         is denied"
                    ),
                ));
            }
        }
    }
    if p.allowed.is_empty() {
        return None;
    }
    let allow_all = p.allowed.contains_key("*");
    if allow_all && p.allowed.len() == 1 {
        return None;
    }
    let by = p.allowed_by.as_deref().unwrap_or_default();
    for (key, value) in data {
        let lower = lowercase(key);
        let verdict = match p.allowed.get(lower.as_ref()) {
            None if allow_all => None,
            None => Some("is not allowed"),
            Some(list) if !value_allowed(value, list) => Some("has a value that is not allowed"),
            Some(_) => None,
        };
        if let Some(why) = verdict {
            return Some(Decision::deny(
                Some(by),
                Some(glob),
                format!("denied by policy {by:?}, rule path {glob:?}: parameter {key:?} {why}"),
            ));
        }
    }
    None
}

fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) || !s.is_ascii() {
        Cow::Owned(s.to_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Vault's `GlobbedStringsMatch`: `*x`, `x*` and `*x*` match suffix, prefix, substring.
pub(super) fn glob_match(pattern: &str, value: &str) -> bool {
    if pattern.len() < 2 {
        return pattern == value;
    }
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(rest), Some(_)) => rest
            .strip_suffix('*')
            .is_some_and(|mid| value.contains(mid)),
        (Some(suffix), None) => value.ends_with(suffix),
        (None, Some(prefix)) => value.starts_with(prefix),
        (None, None) => pattern == value,
    }
}

fn value_matches(value: &Value, list: &[Value]) -> bool {
    list.iter().any(|el| match (el, value) {
        (Value::String(p), Value::String(v)) => glob_match(p, v),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => el == value,
    })
}

/// The parts a string becomes in a handler that reads it as a list
/// (`params::string_list`): split at commas, trimmed, empty parts dropped.
fn list_parts(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

fn str_matches(s: &str, list: &[Value]) -> bool {
    list.iter()
        .any(|el| matches!(el, Value::String(p) if glob_match(p, s)))
}

/// Whether a string is read the same whole and as a list (no comma, no padding).
fn is_plain(s: &str) -> bool {
    !s.contains(',') && s.trim() == s
}

/// One value (a scalar, or one element of a list value) against an allowed list. A
/// string that a handler would split or trim passes only if every part is allowed, or if
/// it is listed exactly as written (a glob never admits a comma-separated value whole).
fn one_allowed(value: &Value, list: &[Value]) -> bool {
    match value {
        Value::String(s) if !is_plain(s) => {
            let exact = list
                .iter()
                .any(|el| matches!(el, Value::String(p) if p == s));
            let mut parts = list_parts(s).peekable();
            exact || (parts.peek().is_some() && parts.all(|p| str_matches(p, list)))
        }
        other => value_matches(other, list),
    }
}

/// One value against a denied list: a string is denied if it matches whole, trimmed, or
/// in any of its comma-separated parts.
fn one_denied(value: &Value, list: &[Value]) -> bool {
    value_matches(value, list)
        || matches!(value, Value::String(s) if !is_plain(s)
            && (str_matches(s.trim(), list) || list_parts(s).any(|p| str_matches(p, list))))
}

/// Allowed when the list is empty, the value is listed, or (for a list value) each of
/// its elements is. Strings are judged as the handler will read them (see
/// [`one_allowed`]): `policies = "team-a, root"` is the list `["team-a", "root"]`.
fn value_allowed(value: &Value, list: &[Value]) -> bool {
    list.is_empty()
        || one_allowed(value, list)
        || matches!(value, Value::Array(items)
            if !items.is_empty() && items.iter().all(|i| one_allowed(i, list)))
}

/// Denied when the list is empty, the value is listed, or (for a list value) any of its
/// elements is. Strings are judged whole and as the handler will read them (see
/// [`one_denied`]): `policies = "p1, admin"` is denied by a rule that denies `admin`.
fn value_denied(value: &Value, list: &[Value]) -> bool {
    list.is_empty()
        || one_denied(value, list)
        || matches!(value, Value::Array(items) if items.iter().any(|i| one_denied(i, list)))
}
