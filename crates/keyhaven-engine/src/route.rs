//! Declarative routes: what each path of a backend is, in one table.
//!
//! Every backend (the built-in `sys/` and `auth/token/` included) describes its paths as
//! a static slice of [`Route`]s, in the manner of OpenBao's `framework.Path` and
//! `PathsSpecial`. A route names its pattern, the operations it serves (and which of
//! them are pure), its fields with their types, and its properties: callable without a
//! token, root-protected (`sudo`), whether a write asks the backend if the object exists
//! (create versus update), and which captured segment names an object that may be reached
//! through an alias.
//!
//! The core matches a request against the mounted backend's table once
//! ([`match_route`]), takes authentication, `sudo` and purity from the match, checks the
//! fields' types ([`check_fields`]: a wrong type is a 400 naming the field, an unknown
//! field is Vault's warning) and hands the backend the matched route. Nothing else
//! decides what a path is; the OpenAPI document (`sys/internal/specs/openapi`) is
//! generated from the same tables.
//!
//! # Patterns
//!
//! Segments separated by `/`. A segment is a literal, `{name}` (one non-empty segment),
//! or, as the last segment only, `{name?}` (one segment or nothing), `{name*}` (the rest
//! of the path, possibly empty, slashes included) or `{name+}` (the rest, not empty). A
//! `list` request may end in one extra `/` (`keys/` lists `keys`).

use serde_json::{Map, Value};

use crate::error::EngineError;
use crate::params;
use crate::request::Operation;

/// How a field's value is read. Every type accepts its JSON form and, as Vault's
/// framework does, the string form clients such as `bao write k=v` send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A string.
    Str,
    /// A boolean (`true`, `"true"`, `"t"`, `"1"`, …).
    Bool,
    /// A signed integer.
    Int,
    /// A non-negative integer.
    Uint,
    /// A duration in whole seconds: an integer or a Go duration (`"1h30m"`, `"7d"`).
    Duration,
    /// A duration that may be negative (`"-1s"`).
    SignedDuration,
    /// A list of strings: an array, or one comma-separated string.
    StrList,
    /// A list of non-negative integers: an array, or one comma-separated string.
    UintList,
    /// A JSON object.
    Map,
    /// A map of strings: an object of strings, or `"k1=v1,k2=v2"`.
    StrMap,
    /// Anything; the handler reads it (e.g. `batch_input`, an array or a JSON string).
    Any,
}

impl FieldType {
    /// The OpenAPI schema type.
    pub const fn openapi_type(self) -> &'static str {
        match self {
            FieldType::Str => "string",
            FieldType::Bool => "boolean",
            FieldType::Int | FieldType::Uint => "integer",
            FieldType::Duration | FieldType::SignedDuration => "string",
            FieldType::StrList | FieldType::UintList => "array",
            FieldType::Map | FieldType::StrMap => "object",
            FieldType::Any => "string",
        }
    }

    /// Check `key`'s value (if any) in `data`, with the error a client sees.
    fn check(self, data: &Map<String, Value>, key: &str) -> Result<(), EngineError> {
        match self {
            FieldType::Str => params::string(data, key).map(drop),
            FieldType::Bool => params::boolean(data, key).map(drop),
            FieldType::Int => params::int(data, key).map(drop),
            FieldType::Uint => params::uint(data, key).map(drop),
            FieldType::Duration => params::duration_secs(data, key).map(drop),
            FieldType::SignedDuration => params::signed_duration_secs(data, key).map(drop),
            FieldType::StrList => params::string_list(data, key).map(drop),
            FieldType::UintList => params::uint_list(data, key).map(drop),
            FieldType::Map => params::object(data, key).map(drop),
            FieldType::StrMap => params::string_map(data, key).map(drop),
            FieldType::Any => Ok(()),
        }
    }
}

/// One field of a route.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The parameter's name.
    pub name: &'static str,
    /// Its type.
    pub kind: FieldType,
    /// Whether the operation needs it (documentation: as in Vault, handlers check).
    pub required: bool,
    /// The default, as shown in the OpenAPI document.
    pub default: Option<&'static str>,
    /// What it does.
    pub description: &'static str,
}

impl Field {
    /// A field of `kind`.
    pub const fn new(name: &'static str, kind: FieldType, description: &'static str) -> Field {
        Field {
            name,
            kind,
            required: false,
            default: None,
            description,
        }
    }

    /// A string field.
    pub const fn str(name: &'static str, description: &'static str) -> Field {
        Field::new(name, FieldType::Str, description)
    }

    /// A boolean field.
    pub const fn bool(name: &'static str, description: &'static str) -> Field {
        Field::new(name, FieldType::Bool, description)
    }

    /// A non-negative integer field.
    pub const fn uint(name: &'static str, description: &'static str) -> Field {
        Field::new(name, FieldType::Uint, description)
    }

    /// A signed integer field.
    pub const fn int(name: &'static str, description: &'static str) -> Field {
        Field::new(name, FieldType::Int, description)
    }

    /// A duration field.
    pub const fn duration(name: &'static str, description: &'static str) -> Field {
        Field::new(name, FieldType::Duration, description)
    }

    /// A list-of-strings field.
    pub const fn str_list(name: &'static str, description: &'static str) -> Field {
        Field::new(name, FieldType::StrList, description)
    }

    /// An object field.
    pub const fn map(name: &'static str, description: &'static str) -> Field {
        Field::new(name, FieldType::Map, description)
    }

    /// A field the handler reads itself.
    pub const fn any(name: &'static str, description: &'static str) -> Field {
        Field::new(name, FieldType::Any, description)
    }

    /// Mark the field required.
    pub const fn required(mut self) -> Field {
        self.required = true;
        self
    }

    /// Document a default.
    pub const fn default(mut self, value: &'static str) -> Field {
        self.default = Some(value);
        self
    }
}

/// A set of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ops(u8);

impl Ops {
    /// No operation.
    pub const NONE: Ops = Ops(0);
    /// `read`.
    pub const READ: Ops = Ops(1);
    /// `create` and `update` (a write; which one it is, the existence check decides).
    pub const WRITE: Ops = Ops(2 | 4);
    /// `patch`.
    pub const PATCH: Ops = Ops(8);
    /// `delete`.
    pub const DELETE: Ops = Ops(16);
    /// `list`.
    pub const LIST: Ops = Ops(32);

    const fn bit(op: Operation) -> u8 {
        match op {
            Operation::Read => 1,
            Operation::Create => 2,
            Operation::Update => 4,
            Operation::Patch => 8,
            Operation::Delete => 16,
            Operation::List => 32,
        }
    }

    /// The union.
    pub const fn and(self, other: Ops) -> Ops {
        Ops(self.0 | other.0)
    }

    /// Whether `op` is in the set.
    pub const fn contains(self, op: Operation) -> bool {
        self.0 & Self::bit(op) != 0
    }

    /// Every operation in the set, in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Operation> {
        [
            Operation::Read,
            Operation::Create,
            Operation::Update,
            Operation::Patch,
            Operation::Delete,
            Operation::List,
        ]
        .into_iter()
        .filter(move |op| self.contains(*op))
    }
}

/// One path of a backend.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The pattern, relative to the mount (see the module docs).
    pub pattern: &'static str,
    /// One line on what the path is.
    pub summary: &'static str,
    /// The operations served.
    pub ops: Ops,
    /// The operations among `ops` that have no effect: they change nothing, in storage
    /// or elsewhere, and issue nothing (no lease, no credential, no token). The core
    /// audits them together with their response (see [`crate::audit`]).
    pub pure: Ops,
    /// The operations among `ops` whose only possible effect is a storage write (a
    /// transit key created on first use): a standby, whose storage refuses writes, may
    /// answer them, and forwards them to the active when they need one
    /// ([`crate::ha`]). Pure operations qualify too.
    pub standby: Ops,
    /// The fields the path takes. Captured segments are fields too.
    pub fields: &'static [Field],
    /// More fields, shared by a family of routes (the token settings of every role).
    pub shared_fields: &'static [Field],
    /// Whether the path takes any field (no unknown-field warning).
    pub arbitrary_fields: bool,
    /// Callable without a token (a login).
    pub unauthenticated: bool,
    /// Root-protected: every operation also needs the `sudo` capability.
    pub sudo: bool,
    /// A write asks the backend whether the object exists, so that policies see a
    /// `create` or an `update` as Vault's do.
    pub existence_check: bool,
    /// The captured segment that names an object which may also be reached through an
    /// alias, and the operations for which it may: the core then authorizes the request
    /// on the object's own name too ([`crate::Backend::resolve_alias`]).
    pub alias_capture: Option<(&'static str, Ops)>,
}

impl Route {
    /// A route serving nothing yet.
    pub const fn new(pattern: &'static str, summary: &'static str) -> Route {
        Route {
            pattern,
            summary,
            ops: Ops::NONE,
            pure: Ops::NONE,
            standby: Ops::NONE,
            fields: &[],
            shared_fields: &[],
            arbitrary_fields: false,
            unauthenticated: false,
            sudo: false,
            existence_check: false,
            alias_capture: None,
        }
    }

    /// Serve `ops`, with effects.
    pub const fn ops(mut self, ops: Ops) -> Route {
        self.ops = self.ops.and(ops);
        self
    }

    /// Serve `ops`, which have no effects.
    pub const fn pure(mut self, ops: Ops) -> Route {
        self.ops = self.ops.and(ops);
        self.pure = self.pure.and(ops);
        self
    }

    /// `ops` may be answered by a standby (see [`Route::standby`]).
    pub const fn standby(mut self, ops: Ops) -> Route {
        self.standby = self.standby.and(ops);
        self
    }

    /// The fields.
    pub const fn fields(mut self, fields: &'static [Field]) -> Route {
        self.fields = fields;
        self
    }

    /// Fields shared with other routes, in addition to [`Route::fields`].
    pub const fn shared_fields(mut self, fields: &'static [Field]) -> Route {
        self.shared_fields = fields;
        self
    }

    /// Take any field.
    pub const fn arbitrary_fields(mut self) -> Route {
        self.arbitrary_fields = true;
        self
    }

    /// Callable without a token.
    pub const fn unauthenticated(mut self) -> Route {
        self.unauthenticated = true;
        self
    }

    /// Root-protected.
    pub const fn sudo(mut self) -> Route {
        self.sudo = true;
        self
    }

    /// Writes ask whether the object exists.
    pub const fn existence_check(mut self) -> Route {
        self.existence_check = true;
        self
    }

    /// `capture` names an object that aliases may reach, for `ops`.
    pub const fn alias_capture(mut self, capture: &'static str, ops: Ops) -> Route {
        self.alias_capture = Some((capture, ops));
        self
    }

    /// The capture naming an object that aliases may reach, for `op`.
    pub fn alias_capture_for(&self, op: Operation) -> Option<&'static str> {
        match self.alias_capture {
            Some((capture, ops)) if ops.contains(op) => Some(capture),
            _ => None,
        }
    }

    /// Whether `op` on this route has no effects.
    pub const fn is_pure(&self, op: Operation) -> bool {
        self.pure.contains(op)
    }

    /// Whether a standby may answer `op` on this route (see [`Route::standby`]).
    pub const fn on_standby(&self, op: Operation) -> bool {
        self.pure.contains(op) || self.standby.contains(op)
    }

    /// The field named `name`, if declared.
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.all_fields().find(|f| f.name == name)
    }

    /// Every field: the route's own, then the shared ones.
    pub fn all_fields(&self) -> impl Iterator<Item = &'static Field> {
        self.fields.iter().chain(self.shared_fields)
    }

    /// The names of the segments the pattern captures.
    pub fn captures(&self) -> impl Iterator<Item = &'static str> {
        self.pattern.split('/').filter_map(|s| {
            let inner = s.strip_prefix('{')?.strip_suffix('}')?;
            Some(inner.trim_end_matches(['?', '*', '+']))
        })
    }
}

/// The most segments a pattern captures.
const MAX_CAPTURES: usize = 4;

/// The segments a matched path captured, by name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Captures<'p> {
    items: [(&'static str, &'p str); MAX_CAPTURES],
    len: usize,
}

impl<'p> Captures<'p> {
    fn push(&mut self, name: &'static str, value: &'p str) -> bool {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = (name, value);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The segment captured as `name`; `None` when the pattern has no such capture or an
    /// optional segment was absent.
    pub fn get(&self, name: &str) -> Option<&'p str> {
        self.items
            .get(..self.len)?
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// Like [`Captures::get`], for a capture the pattern always has (`""` otherwise).
    pub fn must(&self, name: &str) -> &'p str {
        self.get(name).unwrap_or("")
    }

    /// Every capture, in pattern order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'p str)> + '_ {
        self.items.iter().take(self.len).copied()
    }
}

impl Captures<'_> {
    /// Where the captures lie in `path`, the path they were taken from, to take them
    /// again from an equal path without matching it ([`CaptureSpans::captures`]).
    /// `None` if one does not lie in `path`.
    pub fn spans(&self, path: &str) -> Option<CaptureSpans> {
        let base = path.as_ptr().addr();
        let mut spans = CaptureSpans::default();
        for (slot, (name, value)) in spans.items.iter_mut().zip(self.iter()) {
            // Every empty capture is alike; others are sub-slices of the path.
            let start = if value.is_empty() {
                0
            } else {
                value.as_ptr().addr().checked_sub(base)?
            };
            let end = start.checked_add(value.len())?;
            if path.get(start..end) != Some(value) {
                return None;
            }
            *slot = (name, start, end);
        }
        spans.len = self.len;
        Some(spans)
    }
}

/// Where a match's captures lie in its path, by byte offsets ([`Captures::spans`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureSpans {
    items: [(&'static str, usize, usize); MAX_CAPTURES],
    len: usize,
}

impl CaptureSpans {
    /// The captures of `path`, equal to the path the spans were taken from; `None` if
    /// a span does not fit it.
    pub fn captures<'p>(&self, path: &'p str) -> Option<Captures<'p>> {
        let mut caps = Captures::default();
        for &(name, start, end) in self.items.get(..self.len)? {
            if !caps.push(name, path.get(start..end)?) {
                return None;
            }
        }
        Some(caps)
    }
}

/// Match `path` (relative to the mount) against one pattern.
fn match_pattern<'p>(pattern: &'static str, path: &'p str, list: bool) -> Option<Captures<'p>> {
    // `pattern` "" matches the mount itself.
    if pattern.is_empty() {
        return (path.is_empty() || (list && path == "/")).then(Captures::default);
    }
    // A first segment that is literal must begin the path: most routes of a table fail
    // here, before anything is set up (as the loop below would fail on that segment).
    // Its first byte alone rules out most of them without searching the pattern for '/'.
    let lead = pattern.as_bytes().first();
    if lead != Some(&b'{') && path.as_bytes().first() != lead {
        return None;
    }
    let first = pattern.split_once('/').map_or(pattern, |(first, _)| first);
    if !first.starts_with('{') && !path.starts_with(first) {
        return None;
    }
    let mut caps = Captures::default();
    let mut rest = path;
    let mut segments = pattern.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if let Some((name, non_empty)) = inner
                .strip_suffix('*')
                .map(|n| (n, false))
                .or_else(|| inner.strip_suffix('+').map(|n| (n, true)))
            {
                // The rest, up to literal segments that may follow (`{path+}/tune`).
                let suffix: Vec<&str> = segments.collect();
                let value = if suffix.is_empty() {
                    rest
                } else {
                    if suffix.iter().any(|s| s.starts_with('{')) {
                        return None;
                    }
                    let tail = format!("/{}", suffix.join("/"));
                    rest.strip_suffix(tail.as_str())?
                };
                if (non_empty && value.is_empty()) || !caps.push(name, value) {
                    return None;
                }
                return Some(caps);
            }
            let (name, optional) = match inner.strip_suffix('?') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            let (value, after) = match rest.split_once('/') {
                Some((v, a)) => (v, Some(a)),
                None => (rest, None),
            };
            if value.is_empty() {
                // An absent optional last segment ("hash" or "hash/" for `hash/{alg?}`).
                if optional && last && after.is_none_or(str::is_empty) {
                    return Some(caps);
                }
                return None;
            }
            if !caps.push(name, value) {
                return None;
            }
            match after {
                Some(a) => rest = a,
                None => {
                    // The path ended: only optional segments may remain.
                    return segments
                        .all(|s| s.ends_with("?}") || s.ends_with("*}"))
                        .then_some(caps);
                }
            }
            if last {
                return (rest.is_empty() && list).then_some(caps);
            }
        } else {
            let after = rest.strip_prefix(seg)?;
            if after.is_empty() {
                return segments
                    .all(|s| s.ends_with("?}") || s.ends_with("*}"))
                    .then_some(caps);
            }
            rest = after.strip_prefix('/')?;
            if last {
                // A trailing slash after the last literal: only for lists.
                return (rest.is_empty() && list).then_some(caps);
            }
        }
    }
    None
}

/// A request matched to a route.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'p> {
    /// The route.
    pub route: &'static Route,
    /// Its captured segments.
    pub captures: Captures<'p>,
}

/// Find the route of `path` in `table`: the first route whose pattern matches. A route
/// that matches but does not serve `op` still matches (the core answers "unsupported
/// operation"), unless a later route matches and serves it.
pub fn match_route<'p>(
    table: &'static [Route],
    op: Operation,
    path: &'p str,
) -> Option<Matched<'p>> {
    let list = op == Operation::List;
    let mut first = None;
    for route in table {
        if let Some(captures) = match_pattern(route.pattern, path, list) {
            let m = Matched { route, captures };
            if route.ops.contains(op)
                || (op == Operation::Create && route.ops.contains(Operation::Update))
            {
                return Some(m);
            }
            first.get_or_insert(m);
        }
    }
    first
}

/// Check the request's fields against the route: every declared field of the wrong type
/// is refused with a 400 naming it (its value is never echoed); fields the route does not
/// know give Vault's warning, returned here.
pub fn check_fields(route: &Route, data: &Map<String, Value>) -> Result<Vec<String>, EngineError> {
    let mut unknown: Vec<&str> = Vec::new();
    for key in data.keys() {
        match route.field(key) {
            Some(field) => field.kind.check(data, key)?,
            None if route.arbitrary_fields || route.captures().any(|c| c == key) => {}
            None => unknown.push(key),
        }
    }
    if unknown.is_empty() {
        Ok(Vec::new())
    } else {
        Ok(vec![format!(
            "Endpoint ignored these unrecognized parameters: [{}]",
            unknown.join(" ")
        )])
    }
}

/// Serve `operation` on `path` (relative to the mount) with `backend`'s own route table,
/// as the core does once a request is authorized: match the route, refuse an operation
/// it does not serve, check the fields, call the handler, and add Vault's warning for
/// unknown fields to a success. A route without an existence check sees writes as
/// `update`. Encoded data comes back decoded, as [`crate::Core::handle`] gives it.
pub async fn call(
    backend: &dyn crate::Backend,
    operation: Operation,
    path: &str,
    data: &Map<String, Value>,
) -> Result<crate::Response, EngineError> {
    let m = match_route(backend.routes(), operation, path)
        .ok_or_else(|| EngineError::NotFound("unsupported path".to_owned()))?;
    if !m.route.ops.contains(operation) {
        return Err(EngineError::UnsupportedOperation);
    }
    let warnings = check_fields(m.route, data)?;
    let mut resp = backend
        .handle(crate::BackendRequest {
            operation,
            path,
            route: m.route,
            captures: m.captures,
            data,
            client_certs: &[],
            remote_addr: None,
            display_name: "",
        })
        .await?;
    resp.decode_data()?;
    resp.warnings.extend(warnings);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(pattern: &'static str, path: &str, list: bool) -> Option<Vec<(String, String)>> {
        match_pattern(pattern, path, list).map(|c| {
            c.iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect()
        })
    }

    fn caps(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn literals_and_single_segments() {
        assert_eq!(m("config", "config", false), caps(&[]));
        assert_eq!(m("config", "config/", false), None);
        assert_eq!(m("config", "configs", false), None);
        assert_eq!(m("keys", "keys/", true), caps(&[]));
        assert_eq!(m("keys/{name}", "keys/a", false), caps(&[("name", "a")]));
        assert_eq!(m("keys/{name}", "keys/", false), None);
        assert_eq!(m("keys/{name}", "keys/a/b", false), None);
        assert_eq!(
            m("keys/{name}/rotate", "keys/a/rotate", false),
            caps(&[("name", "a")])
        );
        assert_eq!(m("keys/{name}/rotate", "keys/a", false), None);
        assert_eq!(m("", "", false), caps(&[]));
        assert_eq!(m("", "x", false), None);
    }

    #[test]
    fn optional_and_rest_segments() {
        assert_eq!(m("hash/{alg?}", "hash", false), caps(&[]));
        assert_eq!(m("hash/{alg?}", "hash/", false), caps(&[]));
        assert_eq!(
            m("hash/{alg?}", "hash/sha2-256", false),
            caps(&[("alg", "sha2-256")])
        );
        assert_eq!(
            m("random/{a?}/{b?}", "random/all/32", false),
            caps(&[("a", "all"), ("b", "32")])
        );
        assert_eq!(m("random/{a?}/{b?}", "random", false), caps(&[]));
        assert_eq!(
            m("data/{path+}", "data/a/b", false),
            caps(&[("path", "a/b")])
        );
        assert_eq!(m("data/{path+}", "data/", false), None);
        assert_eq!(m("data/{path+}", "data", false), None);
        assert_eq!(m("metadata/{path*}", "metadata", true), caps(&[]));
        assert_eq!(
            m("metadata/{path*}", "metadata/", true),
            caps(&[("path", "")])
        );
        assert_eq!(
            m("metadata/{path*}", "metadata/a/", true),
            caps(&[("path", "a/")])
        );
        assert_eq!(
            m("mounts/{path+}/tune", "mounts/a/b/tune", false),
            caps(&[("path", "a/b")])
        );
        assert_eq!(m("mounts/{path+}/tune", "mounts/tune", false), None);
        assert_eq!(m("mounts/{path+}/tune", "mounts/a/b", false), None);
    }

    static TABLE: &[Route] = &[
        Route::new("keys", "").pure(Ops::LIST),
        Route::new("keys/{name}", "")
            .pure(Ops::READ)
            .ops(Ops::WRITE.and(Ops::DELETE))
            .fields(&[Field::bool("exportable", ""), Field::str("type", "")]),
    ];

    #[test]
    fn routes_match_once_and_report_unserved_operations() {
        let r = match_route(TABLE, Operation::List, "keys/").unwrap();
        assert_eq!(r.route.pattern, "keys");
        let r = match_route(TABLE, Operation::Patch, "keys/k").unwrap();
        assert_eq!(r.route.pattern, "keys/{name}");
        assert!(!r.route.ops.contains(Operation::Patch));
        assert!(match_route(TABLE, Operation::Read, "nope").is_none());
    }

    #[test]
    fn fields_are_typed_and_unknown_ones_warned_about() {
        let route = &TABLE[1];
        let ok = json!({"exportable": "true", "type": "aes256-gcm96"});
        assert!(
            check_fields(route, ok.as_object().unwrap())
                .unwrap()
                .is_empty()
        );
        let bad = json!({"exportable": "maybe-secret"});
        let err = check_fields(route, bad.as_object().unwrap()).unwrap_err();
        assert!(err.to_string().contains("\"exportable\""), "{err}");
        assert!(!err.to_string().contains("maybe-secret"), "{err}");
        let extra = json!({"bogus": 1, "name": "k", "zzz": true});
        assert_eq!(
            check_fields(route, extra.as_object().unwrap()).unwrap(),
            vec!["Endpoint ignored these unrecognized parameters: [bogus zzz]".to_owned()]
        );
    }
}
