//! The `/v1/` HTTP API: Vault-compatible JSON in and out.
//!
//! Handlers are thin: they turn HTTP into an engine [`Request`] (operation from the
//! method, token from `X-Vault-Token` or `Authorization: Bearer`, body and query into
//! `data`) and the engine's answer into Vault's envelope or `{"errors": [...]}`.
//! Neither headers nor bodies are ever logged.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{any, get};
use keyhaven_engine::{
    ClientToken, Core, EngineError, InitParams, LeaseDuration, Operation, RecoveryParams, Request,
    Response, SealStatus, UnsealInput, WrapRequest,
};
use keyhaven_types::ErrorCode;
use keyhaven_types::wire::Health;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use crate::body::{self, BodyError, BodyLimits, Gate, Reservation};
use crate::json_limits;
use crate::listener::ConnHandle;

/// Version reported by `sys/seal-status` and `sys/health`: the Vault-compatible API
/// version with keyhaven's own as build metadata (see
/// [`keyhaven_engine::REPORTED_VERSION`]).
pub const VERSION: &str = keyhaven_engine::REPORTED_VERSION;

/// Shared state of the HTTP layer.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub core: Arc<Core>,
    /// Storage type reported by `sys/seal-status`.
    pub storage_type: &'static str,
    /// `GET sys/metrics` answers without a token (`[telemetry]`
    /// `unauthenticated_metrics_access`).
    pub unauthenticated_metrics: bool,
    /// Request body limits and the memory budget all bodies share.
    pub body: BodyLimits,
}

/// Build the router of the `/v1/` API.
pub fn router(state: AppState) -> Router {
    // The endpoints the server answers itself refuse other namespaces here; `logical`
    // checks for itself (one fewer layer on the hot path).
    let fixed = Router::new()
        .route("/v1/sys/init", get(init_status).put(init).post(init))
        .route("/v1/sys/unseal", any(unseal))
        .route("/v1/sys/seal-status", get(seal_status))
        .route("/v1/sys/health", get(health).head(health))
        .route("/v1/sys/leader", get(leader).head(leader))
        .route_layer(axum::middleware::from_fn(
            |req: HttpRequest, next: axum::middleware::Next| async move {
                let request_id = new_request_id();
                let refused = refuse_wrapping_of_server_paths(&req, &request_id)
                    .or_else(|| refuse_namespace(req.headers(), &request_id));
                match refused {
                    Some(resp) => resp,
                    None => next.run(req).await,
                }
            },
        ));
    // No layer around the whole router: `logical` (every engine request) makes the
    // same checks itself, without a middleware's boxed future per request.
    fixed
        .route("/v1/sys/metrics", any(metrics))
        .route("/v1/{*path}", any(logical))
        .fallback(not_found)
        .with_state(state)
}

/// The engine's requests, served without the router: every `/v1/` path outside `sys/`
/// (the router's `/v1/{*path}` route, which `sys/` paths also reach when they are not
/// one of the fixed routes) by any method but `HEAD` (which axum answers without a
/// body). The router would call [`logical`] for each of them with the same state; this
/// saves its matching, its boxed services and futures and its extensions per request.
/// Only used when no layer wraps the router (high availability's forwarding does).
#[derive(Clone)]
pub(crate) struct Direct(AppState);

impl Direct {
    pub(crate) fn new(state: AppState) -> Direct {
        Direct(state)
    }

    /// Whether `req` is one of the requests this serves (see [`Direct`]).
    pub(crate) fn takes<B>(req: &axum::http::Request<B>) -> bool {
        let path = req.uri().path();
        path.len() > "/v1/".len()
            && path.starts_with("/v1/")
            && !path.starts_with("/v1/sys/")
            && req.method() != Method::HEAD
    }

    /// Answer `req`, which arrived on `conn`, as the router's `/v1/{*path}` route does
    /// (the connection is handed over here rather than in the request's extensions: an
    /// extension costs three allocations per request).
    pub(crate) fn call(
        &self,
        req: axum::http::Request<hyper::body::Incoming>,
        conn: ConnHandle,
    ) -> impl Future<Output = HttpResponse> + Send + 'static {
        serve_logical(self.0.clone(), req.map(Body::new), Some(conn))
    }
}

/// Header names looked up on every request, parsed once (a lookup by `&str` parses
/// and lower-cases the name each time).
static X_VAULT_TOKEN: HeaderName = HeaderName::from_static("x-vault-token");
static X_VAULT_NAMESPACE: HeaderName = HeaderName::from_static("x-vault-namespace");
static X_VAULT_WRAP_TTL: HeaderName = HeaderName::from_static("x-vault-wrap-ttl");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The paths this layer answers itself, before (or without) the engine.
const SERVER_PATHS: &[&str] = &[
    "/v1/sys/init",
    "/v1/sys/unseal",
    "/v1/sys/seal-status",
    "/v1/sys/health",
    "/v1/sys/leader",
];

/// A request for wrapping is honoured or refused, never ignored: the paths the server
/// answers itself (no token, often sealed) cannot wrap, so asking them to is a 400.
/// (OpenBao answers them unwrapped; `sys/init` would hand out the root token and the
/// unseal keys in clear.)
///
/// The refusal of `req`, if it asks for wrapping on one of these paths (with a trailing
/// slash too: the router sends that to the engine's handler, which asks here first).
fn refuse_wrapping_of_server_paths(req: &HttpRequest, request_id: &str) -> Option<HttpResponse> {
    let path = req.uri().path();
    if !path.starts_with("/v1/sys/") || !SERVER_PATHS.contains(&path.trim_end_matches('/')) {
        return None;
    }
    match wrap_request(req.headers()) {
        Ok(None) => None,
        Ok(Some(_)) => {
            let message = format!(
                "response wrapping is not available for {}: the server answers it \
                 itself; send the request without X-Vault-Wrap-TTL",
                path.trim_start_matches("/v1/")
            );
            Some(plain_error(StatusCode::BAD_REQUEST, &message, request_id))
        }
        Err(message) => Some(plain_error(StatusCode::BAD_REQUEST, &message, request_id)),
    }
}

/// The wrapping a request asks for with `X-Vault-Wrap-TTL` (and `X-Vault-Wrap-Format`).
/// The error is the message of a 400 and names the header.
fn wrap_request(headers: &HeaderMap) -> Result<Option<WrapRequest>, String> {
    let Some(ttl) = headers.get(&X_VAULT_WRAP_TTL) else {
        return Ok(None);
    };
    let ttl = ttl
        .to_str()
        .map_err(|_| "error parsing X-Vault-Wrap-TTL header: not a duration".to_owned())?;
    let wrap = WrapRequest::from_header(ttl)?;
    // Vault's JWT-format wrapping tokens are not issued: refuse rather than answer in
    // another format than the one asked for. Other values mean the default, as in Vault.
    if wrap.is_some()
        && headers
            .get("x-vault-wrap-format")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|f| f.trim().eq_ignore_ascii_case("jwt"))
    {
        return Err(
            "X-Vault-Wrap-Format \"jwt\" is not supported: wrapping tokens are issued in the \
             default format only"
                .to_owned(),
        );
    }
    Ok(wrap)
}

/// A random (version 4) UUID. Drawn from the thread's CSPRNG (seeded by the kernel), not
/// a system call per request: request ids need uniqueness, and this path runs for every
/// request.
pub(crate) fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes[..]);
    // Encoded into a buffer rather than through `Display` and the formatter.
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

fn json_response(
    status: StatusCode,
    body: &impl serde::Serialize,
    request_id: &str,
) -> HttpResponse {
    // Most answers fit: one allocation instead of growing from 128 bytes.
    let mut bytes = Vec::with_capacity(768);
    if serde_json::to_writer(&mut bytes, body).is_err() {
        bytes.clear();
        bytes.extend_from_slice(b"{}");
    }
    bytes_response(status, bytes, request_id)
}

/// A JSON answer whose body is already serialized.
fn bytes_response(status: StatusCode, bytes: Vec<u8>, request_id: &str) -> HttpResponse {
    // Built directly: `IntoResponse` for bytes would first set a content type that the
    // next line replaces.
    let mut resp = HttpResponse::new(Body::from(bytes));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.reserve(3);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

/// Turn an engine error into `{"errors": [...]}` with the status its code maps to.
fn error_response(err: &EngineError, request_id: &str) -> HttpResponse {
    let code = err.code();
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // A backend's `Failed` is a 500 whose reason is the caller's to read, as in Vault.
    let shown = code == ErrorCode::Sealed || matches!(err, EngineError::Failed(_));
    let message = if status.is_server_error() && !shown {
        tracing::error!(target: "keyhaven::http", request_id, error = %err, source = ?std::error::Error::source(err), "request failed");
        match code {
            ErrorCode::Unavailable => format!("service unavailable; request id {request_id}"),
            _ => format!("internal error; request id {request_id}"),
        }
    } else {
        err.to_string()
    };
    // Vault answers "nothing here" with an empty list rather than an empty string.
    let errors: Vec<String> = if message.is_empty() {
        Vec::new()
    } else {
        vec![message]
    };
    let mut resp = json_response(status, &json!({ "errors": errors }), request_id);
    if matches!(err, EngineError::NotActive) {
        resp.extensions_mut().insert(crate::ha::ServeElsewhere);
    }
    resp
}

pub(crate) fn plain_error(status: StatusCode, message: &str, request_id: &str) -> HttpResponse {
    json_response(status, &json!({ "errors": [message] }), request_id)
}

async fn not_found() -> HttpResponse {
    plain_error(StatusCode::NOT_FOUND, "unsupported path", &new_request_id())
}

/// Receive the body within the listener's limits and parse it as a JSON object (or
/// nothing). The body's share of the memory budget comes with it: keep it until the
/// request is answered.
async fn read_json_body<'s>(
    state: &'s AppState,
    conn: Option<&ConnHandle>,
    body: Body,
    gate: Gate<'_>,
    request_id: &str,
) -> Result<(Map<String, Value>, Option<Reservation<'s>>), HttpResponse> {
    let received = body::receive(body, &state.body, gate, conn)
        .await
        .map_err(|e| body_error(&state.core, &state.body, &e, request_id))?;
    json_limits::check(&received.bytes, state.body.json())
        .map_err(|e| plain_error(StatusCode::BAD_REQUEST, &e.to_string(), request_id))?;
    let map = parse_json_object(&received.bytes)
        .map_err(|message| plain_error(StatusCode::BAD_REQUEST, &message, request_id))?;
    Ok((map, received.reservation))
}

/// The answer to a body that was not received. The connection is closed after it: the
/// rest of the body is never read.
pub(crate) fn body_error(
    core: &Core,
    limits: &BodyLimits,
    err: &BodyError,
    request_id: &str,
) -> HttpResponse {
    let mut resp = match err {
        BodyError::TooLarge { limit } => plain_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is larger than the limit of {limit} bytes"),
            request_id,
        ),
        // A sealed server knows no token: say what every request is told.
        BodyError::NeedsToken { .. } if core.is_sealed() => {
            error_response(&EngineError::Sealed, request_id)
        }
        BodyError::NeedsToken { limit } => plain_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body is larger than {limit} bytes, the limit for requests without a valid token"
            ),
            request_id,
        ),
        BodyError::TimedOut => plain_error(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "request body was not received within {}s",
                limits.read_timeout().as_secs_f64()
            ),
            request_id,
        ),
        BodyError::Busy => {
            let mut resp = plain_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bodies are being received; retry later",
                request_id,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
        BodyError::Read => plain_error(
            StatusCode::BAD_REQUEST,
            "cannot read the request body",
            request_id,
        ),
    };
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Parse a body as a JSON object; empty or `null` is an empty object. The error is
/// the message of a 400.
fn parse_json_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err("request body must be a JSON object".to_owned()),
        // serde_json's message names line and column and the kind of error, never the input.
        Err(e) => Err(format!(
            "failed to parse JSON input: {}",
            e.classify_message()
        )),
    }
}

trait ClassifyMessage {
    fn classify_message(&self) -> String;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> String {
        let kind = match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        };
        format!("{kind} at line {} column {}", self.line(), self.column())
    }
}

pub(crate) fn token_from(headers: &HeaderMap) -> Option<ClientToken> {
    if let Some(v) = headers.get(&X_VAULT_TOKEN).and_then(|v| v.to_str().ok())
        && !v.is_empty()
    {
        return Some(ClientToken::new(v.to_owned()));
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| ClientToken::new(token.trim().to_owned()))
}

/// keyhaven has one namespace, the root: a request that names another (`X-Vault-Namespace`,
/// sent by clients configured for Vault Enterprise or OpenBao namespaces) is refused, never
/// answered from the root. Empty and `/` name the root.
fn refuse_namespace(headers: &HeaderMap, request_id: &str) -> Option<HttpResponse> {
    let value = headers.get(&X_VAULT_NAMESPACE)?;
    let ns = value.to_str().map(|v| v.trim().trim_matches('/'));
    if matches!(ns, Ok("")) {
        return None;
    }
    let message = match ns {
        Ok(ns) if ns.len() <= 128 && !ns.chars().any(char::is_control) => format!(
            "namespaces are not supported: keyhaven has only the root namespace, and this \
             request names namespace {ns:?} (X-Vault-Namespace); remove the header or the \
             client's namespace setting"
        ),
        _ => "namespaces are not supported: keyhaven has only the root namespace, and this \
              request sets X-Vault-Namespace; remove the header or the client's namespace \
              setting"
            .to_owned(),
    };
    Some(plain_error(StatusCode::BAD_REQUEST, &message, request_id))
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Query parameters that carry secrets, by the paths they apply to (`auth/token` and
/// below; wrapping tokens under `sys/wrapping`): in a URL they end up in proxy and access
/// logs, so only the body may carry them.
const SECRET_QUERY_PARAMETERS: &[(&str, &str)] =
    &[("auth/token", "token"), ("sys/wrapping", "token")];

/// Refuse a query that carries a secret (any method), or, when the query is read (GET,
/// LIST, DELETE), names a parameter twice: `?list=false&list=true` must not mean whatever
/// the copy the reader looks at says.
fn check_query(path: &str, method: &Method, query: &[(String, String)]) -> Result<(), String> {
    let path = path.trim_start_matches('/');
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    for (key, _) in query {
        if let Some((_, name)) = SECRET_QUERY_PARAMETERS
            .iter()
            .find(|(prefix, name)| under(prefix) && key.eq_ignore_ascii_case(name))
        {
            return Err(format!(
                "parameter \"{name}\" must not be sent in the query string, where proxies and \
                 access logs record it; send it in the request body (POST) instead"
            ));
        }
    }
    if matches!(method.as_str(), "GET" | "LIST" | "DELETE") {
        let mut seen = std::collections::HashSet::with_capacity(query.len());
        if let Some((key, _)) = query.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            return Err(format!("query parameter {key:?} is given more than once"));
        }
    }
    Ok(())
}

/// `/v1/<anything>` that the engine routes (including authenticated `sys/` paths).
async fn logical(State(state): State<AppState>, mut req: HttpRequest) -> HttpResponse {
    let conn = req.extensions_mut().remove::<ConnHandle>();
    serve_logical(state, req, conn).await
}

/// [`logical`], for a request that arrived on `conn` (if known).
async fn serve_logical(
    state: AppState,
    req: HttpRequest,
    conn: Option<ConnHandle>,
) -> HttpResponse {
    // Only the debug log line reads it.
    let started =
        tracing::enabled!(target: "keyhaven::http", tracing::Level::DEBUG).then(Instant::now);
    let request_id = new_request_id();
    if let Some(resp) = refuse_wrapping_of_server_paths(&req, &request_id) {
        return resp;
    }
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path()
        .strip_prefix("/v1/")
        .unwrap_or_default()
        .to_owned();
    let query = query_pairs(parts.uri.query());
    if let Err(message) = check_query(&path, &parts.method, &query) {
        return plain_error(StatusCode::BAD_REQUEST, &message, &request_id);
    }
    if let Some(resp) = refuse_namespace(&parts.headers, &request_id) {
        return resp;
    }
    // `?list=` is a boolean as Go's ParseBool reads it (hvac sends `list=True`); empty
    // is false, anything else that is not a boolean is refused rather than read as a GET.
    let list_flag = match query.iter().find(|(k, _)| k == "list") {
        None => false,
        Some((_, v)) if v.is_empty() => false,
        Some((_, v)) => match keyhaven_engine::params::parse_bool(v) {
            Some(b) => b,
            None => {
                return plain_error(
                    StatusCode::BAD_REQUEST,
                    "invalid value for query parameter \"list\": expected a boolean (true, false, 1, 0, t, f)",
                    &request_id,
                );
            }
        },
    };
    let operation = match parts.method.as_str() {
        "GET" if list_flag => Operation::List,
        "GET" => Operation::Read,
        "LIST" => Operation::List,
        "POST" | "PUT" => Operation::Update,
        "PATCH" => Operation::Patch,
        "DELETE" => Operation::Delete,
        _ => {
            return plain_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "unsupported method",
                &request_id,
            );
        }
    };
    let token = token_from(&parts.headers);
    let wrap = match wrap_request(&parts.headers) {
        Ok(w) => w,
        Err(message) => return plain_error(StatusCode::BAD_REQUEST, &message, &request_id),
    };
    // Larger bodies only for a valid token; the engine authenticates again (and uses up
    // a use) when it handles the request.
    let gate = Gate::Token {
        core: &state.core,
        token: token.as_ref().map(ClientToken::expose),
    };
    let (mut data, _body_memory) =
        match read_json_body(&state, conn.as_ref(), body, gate, &request_id).await {
            Ok(d) => d,
            Err(resp) => return resp,
        };
    if matches!(
        operation,
        Operation::Read | Operation::List | Operation::Delete
    ) {
        for (k, v) in query {
            if k != "list" {
                data.entry(k).or_insert(Value::String(v));
            }
        }
    }
    let client_certs = conn
        .as_ref()
        .map(|c| c.client_certs().to_vec())
        .unwrap_or_default();
    let request = Request {
        id: request_id.clone(),
        operation,
        path,
        data,
        token,
        remote_addr: crate::ha::client_addr(
            &state.core,
            &parts.headers,
            &parts.method,
            &parts.uri,
            conn.as_ref().and_then(ConnHandle::peer),
        ),
        client_certs,
    };
    let shape = WireShape::of(&request.path);
    let result = state.core.handle_encoded(request, wrap).await;
    let resp = match result {
        Ok(resp) => envelope(resp, shape, &request_id),
        // A deleted KV version: Vault's 404 that still carries the version's metadata.
        Err(EngineError::VersionGone(data)) => bytes_response(
            StatusCode::NOT_FOUND,
            Envelope {
                resp: &Response::data(*data),
                request_id: &request_id,
            }
            .to_vec(),
            &request_id,
        ),
        Err(err) => error_response(&err, &request_id),
    };
    tracing::debug!(
        target: "keyhaven::http",
        request_id,
        method = %parts.method,
        path = parts.uri.path(),
        status = resp.status().as_u16(),
        micros = started.map_or(0, |s| u64::try_from(s.elapsed().as_micros()).unwrap_or(u64::MAX)),
        "request"
    );
    resp
}

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `sys/metrics`: the engine's metrics as JSON or, with `format=prometheus` (or an
/// `Accept` header asking for OpenMetrics or Prometheus), in the Prometheus text format.
/// A token with `read` on `sys/metrics` is needed (and the read is audited) unless
/// `unauthenticated_metrics_access` is on. An unknown format is OpenBao's plain-text 400.
async fn metrics(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    if req.method() != Method::GET {
        // Not served: the engine says so as for any other path.
        return logical(State(state), req).await;
    }
    let request_id = new_request_id();
    if let Some(resp) = refuse_namespace(req.headers(), &request_id) {
        return resp;
    }
    let query = query_pairs(req.uri().query());
    if let Err(message) = check_query("sys/metrics", req.method(), &query) {
        return plain_error(StatusCode::BAD_REQUEST, &message, &request_id);
    }
    let format = query
        .iter()
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.clone())
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| metrics_format_from_accept(req.headers()).to_owned());
    let known = matches!(format.as_str(), "" | "prometheus");
    if state.unauthenticated_metrics {
        return match format.as_str() {
            "" => json_response(StatusCode::OK, &state.core.metrics_json(), &request_id),
            "prometheus" => prometheus_response(&state.core, &request_id),
            _ => unknown_metrics_format(&format, &request_id),
        };
    }
    let mut data = Map::new();
    if !format.is_empty() {
        data.insert("format".to_owned(), Value::String(format.clone()));
    }
    let request = Request {
        id: request_id.clone(),
        operation: Operation::Read,
        path: "sys/metrics".to_owned(),
        data,
        token: token_from(req.headers()),
        remote_addr: crate::ha::client_addr(
            &state.core,
            req.headers(),
            req.method(),
            req.uri(),
            req.extensions()
                .get::<ConnHandle>()
                .and_then(ConnHandle::peer),
        ),
        client_certs: Vec::new(),
    };
    match state.core.handle(request).await {
        Ok(_) if format == "prometheus" => prometheus_response(&state.core, &request_id),
        Ok(resp) => {
            let body = resp.data.map(Value::Object).unwrap_or(Value::Null);
            json_response(StatusCode::OK, &body, &request_id)
        }
        Err(err) if !known && err.code() == ErrorCode::InvalidRequest => {
            unknown_metrics_format(&format, &request_id)
        }
        Err(err) => error_response(&err, &request_id),
    }
}

/// The format an `Accept` header asks for, as Vault reads it: OpenMetrics text first,
/// or any header naming Prometheus.
fn metrics_format_from_accept(headers: &HeaderMap) -> &'static str {
    let mut accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let Some(first) = accept.next() else {
        return "";
    };
    if first.starts_with("application/openmetrics-text")
        || first.contains("prometheus")
        || accept.any(|v| v.contains("prometheus"))
    {
        "prometheus"
    } else {
        ""
    }
}

fn prometheus_response(core: &Core, request_id: &str) -> HttpResponse {
    let text = core.metrics().to_prometheus();
    let mut resp = (StatusCode::OK, text).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

/// OpenBao's answer to an unknown `format`: plain text, not JSON.
fn unknown_metrics_format(format: &str, request_id: &str) -> HttpResponse {
    let mut resp = (
        StatusCode::BAD_REQUEST,
        format!("metric response format {format:?} unknown"),
    )
        .into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

/// How a path's successful answers look on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireShape {
    /// Vault's envelope.
    Envelope,
    /// The envelope, with the data fields also at the top level: Vault's older `sys/`
    /// endpoints answer so, and clients read either.
    TopLevel,
    /// The data object alone, as the body (`sys/internal/specs/openapi`).
    Raw,
}

impl WireShape {
    fn of(path: &str) -> WireShape {
        let Some(rest) = path.strip_prefix("sys/") else {
            return WireShape::Envelope;
        };
        match rest {
            "internal/specs/openapi" => WireShape::Raw,
            // The token-less recovery endpoints answer with their status alone.
            _ if rest.starts_with("rekey/") && rest != "rekey/backup" => WireShape::Raw,
            _ if rest.starts_with("generate-root/") => WireShape::Raw,
            "ha-status" => WireShape::TopLevel,
            "mounts"
            | "auth"
            | "audit"
            | "key-status"
            | "policy"
            | "capabilities"
            | "capabilities-self"
            | "capabilities-accessor" => WireShape::TopLevel,
            _ if rest.starts_with("policy/") || rest.starts_with("audit-hash/") => {
                WireShape::TopLevel
            }
            _ => WireShape::Envelope,
        }
    }
}

/// Wrap an engine response in Vault's envelope.
fn envelope(mut resp: Response, shape: WireShape, request_id: &str) -> HttpResponse {
    // Only the envelope writer copies encoded data as it is.
    if !matches!(shape, WireShape::Envelope)
        && let Err(err) = resp.decode_data()
    {
        return error_response(&err, request_id);
    }
    if resp.is_empty() {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if let Ok(v) = HeaderValue::from_str(request_id) {
            r.headers_mut().insert(X_REQUEST_ID.clone(), v);
        }
        return r;
    }
    // A batch whose failed items fail the whole request (transit): 400 when an item was
    // the client's mistake, 500 when only internal faults failed items, or the status
    // the client asked for with `partial_failure_response_code`.
    let status = match resp.batch_failure {
        None if resp.accepted => StatusCode::ACCEPTED,
        None => StatusCode::OK,
        Some(f) if resp.wrap_info.is_none() => f
            .status_override
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(if f.internal {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::BAD_REQUEST
            }),
        Some(_) => StatusCode::OK,
    };
    // A wrapped answer is only the envelope with `wrap_info`, whatever the path.
    let shape = if resp.wrap_info.is_some() {
        WireShape::Envelope
    } else {
        shape
    };
    match shape {
        WireShape::Raw => {
            let body = resp.data.map(Value::Object).unwrap_or(Value::Null);
            return json_response(status, &body, request_id);
        }
        WireShape::TopLevel => {
            return json_response(status, &top_level_envelope(resp, request_id), request_id);
        }
        WireShape::Envelope => {}
    }
    bytes_response(
        status,
        Envelope {
            resp: &resp,
            request_id,
        }
        .to_vec(),
        request_id,
    )
}

/// Vault's envelope, serialized straight from the response without building a JSON
/// tree first (this runs for every answered request). Keys in sorted order, as a
/// `serde_json::Map` would write them.
struct Envelope<'a> {
    resp: &'a Response,
    request_id: &'a str,
}

impl Envelope<'_> {
    /// The envelope as JSON (`{}` in the unreachable case that a value fails to
    /// serialize, as [`json_response`] answers).
    fn to_vec(&self) -> Vec<u8> {
        // Most answers fit: one allocation instead of growing from 128 bytes.
        let mut out = Vec::with_capacity(768);
        if self.write(&mut out).is_err() {
            out.clear();
            out.extend_from_slice(b"{}");
        }
        out
    }

    /// The fixed keys are written as bytes (they need no escaping); the values go
    /// through serde_json.
    fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let resp = self.resp;
        // As in Vault, a wrapped answer has no request id of its own in the body.
        let request_id = if resp.wrap_info.is_some() {
            ""
        } else {
            self.request_id
        };
        out.extend_from_slice(b"{\"auth\":");
        serde_json::to_writer(&mut *out, &resp.auth)?;
        out.extend_from_slice(b",\"data\":");
        match (&resp.data, &resp.encoded_data) {
            (None, Some(encoded)) => out.extend_from_slice(encoded.as_bytes()),
            (data, _) => serde_json::to_writer(&mut *out, data)?,
        }
        out.extend_from_slice(b",\"lease_duration\":");
        match &resp.lease {
            Some(lease) => {
                serde_json::to_writer(&mut *out, &lease.duration)?;
                out.extend_from_slice(b",\"lease_id\":");
                serde_json::to_writer(&mut *out, &lease.lease_id)?;
                out.extend_from_slice(if lease.renewable {
                    b",\"renewable\":true"
                } else {
                    b",\"renewable\":false"
                });
            }
            None => {
                serde_json::to_writer(
                    &mut *out,
                    &resp.lease_duration.map_or(0, LeaseDuration::seconds),
                )?;
                out.extend_from_slice(b",\"lease_id\":\"\",\"renewable\":false");
            }
        }
        out.extend_from_slice(b",\"request_id\":");
        serde_json::to_writer(&mut *out, request_id)?;
        out.extend_from_slice(b",\"warnings\":");
        if resp.warnings.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            serde_json::to_writer(&mut *out, &resp.warnings)?;
        }
        out.extend_from_slice(b",\"wrap_info\":");
        serde_json::to_writer(&mut *out, &resp.wrap_info)?;
        out.push(b'}');
        Ok(())
    }
}

/// The envelope of a response whose data fields are also copied to the top level
/// (some `sys/` endpoints); the envelope's own fields win over data fields of the same
/// name.
fn top_level_envelope(resp: Response, request_id: &str) -> Value {
    built_envelope(resp, request_id, true)
}

/// Vault's envelope as a JSON tree; with `top_level`, the data fields are copied to the
/// top level too.
fn built_envelope(resp: Response, request_id: &str, top_level: bool) -> Value {
    let mut body = Map::new();
    if top_level && let Some(data) = &resp.data {
        for (k, v) in data {
            body.insert(k.clone(), v.clone());
        }
    }
    let request_id = if resp.wrap_info.is_some() {
        ""
    } else {
        request_id
    };
    body.insert("request_id".into(), Value::String(request_id.to_owned()));
    let (lease_id, renewable, duration) = match &resp.lease {
        Some(l) => (l.lease_id.clone(), l.renewable, json!(l.duration)),
        None => (
            String::new(),
            false,
            json!(resp.lease_duration.map_or(0, LeaseDuration::seconds)),
        ),
    };
    body.insert("lease_id".into(), Value::String(lease_id));
    body.insert("renewable".into(), Value::Bool(renewable));
    body.insert("lease_duration".into(), duration);
    body.insert(
        "data".into(),
        resp.data.map(Value::Object).unwrap_or(Value::Null),
    );
    body.insert(
        "wrap_info".into(),
        resp.wrap_info
            .as_ref()
            .and_then(|w| serde_json::to_value(w).ok())
            .unwrap_or(Value::Null),
    );
    body.insert(
        "warnings".into(),
        if resp.warnings.is_empty() {
            Value::Null
        } else {
            json!(resp.warnings)
        },
    );
    body.insert(
        "auth".into(),
        resp.auth.map(Value::Object).unwrap_or(Value::Null),
    );
    Value::Object(body)
}

/// The seal status as the server reports it: the engine's, with the storage type.
fn seal_status_body(s: SealStatus, storage_type: &str) -> SealStatus {
    SealStatus {
        storage_type: Some(storage_type.to_owned()),
        version: VERSION.to_owned(),
        ..s
    }
}

async fn seal_status(State(state): State<AppState>) -> HttpResponse {
    let s = state.core.seal_status();
    json_response(
        StatusCode::OK,
        &seal_status_body(s, state.storage_type),
        &new_request_id(),
    )
}

async fn init_status(State(state): State<AppState>) -> HttpResponse {
    json_response(
        StatusCode::OK,
        &json!({ "initialized": state.core.is_initialized() }),
        &new_request_id(),
    )
}

fn u8_param(data: &Map<String, Value>, key: &str) -> Result<Option<u8>, EngineError> {
    match keyhaven_engine::params::uint(data, key)? {
        None => Ok(None),
        Some(n) => u8::try_from(n)
            .map(Some)
            .map_err(|_| EngineError::invalid(format!("{key} must be between 1 and 255"))),
    }
}

async fn init(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    let request_id = new_request_id();
    let (parts, body) = req.into_parts();
    let (data, _body_memory) = match read_json_body(
        &state,
        parts.extensions.get::<ConnHandle>(),
        body,
        Gate::Unauthenticated,
        &request_id,
    )
    .await
    {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    for unsupported in ["pgp_keys", "root_token_pgp_key", "recovery_pgp_keys"] {
        if data
            .get(unsupported)
            .is_some_and(|v| !v.is_null() && v != &json!([]) && v != &json!(""))
        {
            return plain_error(
                StatusCode::BAD_REQUEST,
                &format!("{unsupported} is not supported"),
                &request_id,
            );
        }
    }
    // As OpenBao: each seal takes its own family of parameters and refuses the other.
    let seal_type = state.core.init_seal_type();
    let auto = seal_type != "shamir";
    // Clients send the other family's fields as zeros (the bao CLI does): only a value
    // is refused.
    let given = |k: &str| {
        data.get(k)
            .is_some_and(|v| !v.is_null() && v != &json!(0) && v != &json!(""))
    };
    let wrong_family: Vec<&str> = if auto {
        ["secret_shares", "secret_threshold"]
    } else {
        ["recovery_shares", "recovery_threshold"]
    }
    .into_iter()
    .filter(|k| given(k))
    .collect();
    if !wrong_family.is_empty() {
        return plain_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "parameters {} not applicable to seal type {seal_type}",
                wrong_family.join(",")
            ),
            &request_id,
        );
    }
    let result = if auto {
        let params = (|| -> Result<RecoveryParams, EngineError> {
            Ok(RecoveryParams {
                recovery_shares: u8_param(&data, "recovery_shares")?
                    .ok_or_else(|| EngineError::invalid("missing parameter \"recovery_shares\""))?,
                recovery_threshold: u8_param(&data, "recovery_threshold")?.ok_or_else(|| {
                    EngineError::invalid("missing parameter \"recovery_threshold\"")
                })?,
            })
        })();
        match params {
            Ok(p) => state.core.init_auto(p).await,
            Err(e) => return error_response(&e, &request_id),
        }
    } else {
        let params = (|| -> Result<InitParams, EngineError> {
            Ok(InitParams {
                secret_shares: u8_param(&data, "secret_shares")?
                    .ok_or_else(|| EngineError::invalid("missing parameter \"secret_shares\""))?,
                secret_threshold: u8_param(&data, "secret_threshold")?.ok_or_else(|| {
                    EngineError::invalid("missing parameter \"secret_threshold\"")
                })?,
            })
        })();
        match params {
            Ok(p) => state.core.init(p).await,
            Err(e) => return error_response(&e, &request_id),
        }
    };
    match result {
        Ok(result) => {
            use base64::Engine as _;
            let lists = |shares: &[keyhaven_crypto::shamir::Share]| {
                let hex: Vec<String> = shares.iter().map(|s| hex::encode(s.as_bytes())).collect();
                let b64: Vec<String> = shares
                    .iter()
                    .map(|s| base64::engine::general_purpose::STANDARD.encode(s.as_bytes()))
                    .collect();
                (hex, b64)
            };
            let (hex_keys, b64_keys) = lists(&result.shares);
            let mut body = json!({
                "keys": hex_keys,
                "keys_base64": b64_keys,
                "root_token": result.root_token.expose_secret(),
            });
            if auto && let Some(map) = body.as_object_mut() {
                let (hex_rec, b64_rec) = lists(&result.recovery_shares);
                map.insert("recovery_keys".into(), json!(hex_rec));
                map.insert("recovery_keys_base64".into(), json!(b64_rec));
            }
            json_response(StatusCode::OK, &body, &request_id)
        }
        Err(e) => error_response(&e, &request_id),
    }
}

async fn unseal(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    let request_id = new_request_id();
    if !matches!(*req.method(), Method::PUT | Method::POST) {
        return plain_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "unsupported method",
            &request_id,
        );
    }
    let (parts, body) = req.into_parts();
    let (data, _body_memory) = match read_json_body(
        &state,
        parts.extensions.get::<ConnHandle>(),
        body,
        Gate::Unauthenticated,
        &request_id,
    )
    .await
    {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let migrate = match keyhaven_engine::params::boolean(&data, "migrate") {
        Ok(m) => m.unwrap_or(false),
        Err(e) => return error_response(&e, &request_id),
    };
    let input = match (
        keyhaven_engine::params::boolean(&data, "reset"),
        keyhaven_engine::params::string(&data, "key"),
    ) {
        (Err(e), _) | (_, Err(e)) => return error_response(&e, &request_id),
        (Ok(Some(true)), _) => UnsealInput::Reset,
        (_, Ok(Some(k))) if !k.is_empty() && migrate => {
            UnsealInput::Migrate(SecretString::from(k.to_owned()))
        }
        (_, Ok(Some(k))) if !k.is_empty() => UnsealInput::Key(SecretString::from(k.to_owned())),
        _ => {
            return plain_error(
                StatusCode::BAD_REQUEST,
                "missing parameter \"key\" (or \"reset\": true)",
                &request_id,
            );
        }
    };
    match state.core.unseal(input).await {
        Ok(s) => json_response(
            StatusCode::OK,
            &seal_status_body(s, state.storage_type),
            &request_id,
        ),
        Err(e) => error_response(&e, &request_id),
    }
}

/// `sys/leader`: whether high availability is on, and where the active replica is.
async fn leader(State(state): State<AppState>) -> HttpResponse {
    let request_id = new_request_id();
    let Some(ha) = state.core.ha() else {
        return json_response(
            StatusCode::OK,
            &json!({
                "ha_enabled": false,
                "is_self": false,
                "active_time": "0001-01-01T00:00:00Z",
                "leader_address": "",
                "leader_cluster_address": "",
                "performance_standby": false,
                "performance_standby_last_remote_wal": 0,
            }),
            &request_id,
        );
    };
    if state.core.is_sealed() {
        return error_response(&EngineError::Sealed, &request_id);
    }
    let status = ha.status();
    let (leader_address, leader_cluster_address, active_time) = if status.is_self {
        (
            status.api_address.clone(),
            status.cluster_address.clone(),
            status
                .leader
                .map(|l| l.active_since)
                .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_owned()),
        )
    } else {
        match status.leader {
            Some(l) => (
                l.api_address,
                l.cluster_address,
                "0001-01-01T00:00:00Z".to_owned(),
            ),
            None => (
                String::new(),
                String::new(),
                "0001-01-01T00:00:00Z".to_owned(),
            ),
        }
    };
    json_response(
        StatusCode::OK,
        &json!({
            "ha_enabled": true,
            "is_self": status.is_self,
            "active_time": active_time,
            "leader_address": leader_address,
            "leader_cluster_address": leader_cluster_address,
            "performance_standby": false,
            "performance_standby_last_remote_wal": 0,
        }),
        &request_id,
    )
}

/// `sys/health`: Vault's status codes (200 active, 501 uninitialized, 503 sealed) and
/// query flags to override them.
async fn health(State(state): State<AppState>, req: HttpRequest) -> HttpResponse {
    let request_id = new_request_id();
    let query = query_pairs(req.uri().query());
    let code = |name: &str, default: u16| -> u16 {
        query
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u16>().ok())
            .filter(|c| (100..=999).contains(c))
            .unwrap_or(default)
    };
    let s = state.core.seal_status();
    let standby = state.core.role() == keyhaven_engine::ha::Role::Standby;
    let status = if !s.initialized {
        code("uninitcode", 501)
    } else if s.sealed {
        code("sealedcode", 503)
    } else if standby
        && !query
            .iter()
            .any(|(k, v)| k == "standbyok" && matches!(v.as_str(), "" | "true" | "1"))
    {
        code("standbycode", 429)
    } else {
        code("activecode", 200)
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if req.method() == Method::HEAD {
        return status.into_response();
    }
    let now = state.core.clock().unix_seconds();
    let body = Health {
        cluster_id: s.cluster_id,
        cluster_name: s.cluster_name,
        initialized: s.initialized,
        performance_standby: false,
        replication_dr_mode: "disabled".to_owned(),
        replication_performance_mode: "disabled".to_owned(),
        sealed: s.sealed,
        server_time_utc: now,
        standby,
        version: VERSION.to_owned(),
    };
    json_response(status, &body, &request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_path_takes_only_what_the_router_gives_logical() {
        let req = |method: &str, path: &str| {
            axum::http::Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap()
        };
        for (method, path) in [
            ("GET", "/v1/secret/data/bench"),
            ("POST", "/v1/transit/encrypt/bench"),
            ("LIST", "/v1/secret/metadata/"),
            ("DELETE", "/v1/auth/token/revoke-self"),
            ("PUT", "/v1/auth/kubernetes/login?x=1"),
            ("GET", "/v1/secret/../sys/init"),
        ] {
            assert!(Direct::takes(&req(method, path)), "{method} {path}");
        }
        for (method, path) in [
            // The fixed routes, and every other `sys/` path with them.
            ("GET", "/v1/sys/health"),
            ("PUT", "/v1/sys/unseal"),
            ("GET", "/v1/sys/metrics"),
            ("GET", "/v1/sys/mounts"),
            ("POST", "/v1/sys/wrapping/unwrap"),
            // axum answers HEAD without a body.
            ("HEAD", "/v1/secret/data/bench"),
            // Not the engine's.
            ("GET", "/v1/"),
            ("GET", "/v2/secret/data/bench"),
            ("GET", "/ui/"),
        ] {
            assert!(!Direct::takes(&req(method, path)), "{method} {path}");
        }
    }

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        let ids: Vec<String> = (0..1000).map(|_| new_request_id()).collect();
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(parsed.hyphenated().to_string(), *id);
        }
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    /// The envelope written straight from the response is byte for byte the one the
    /// JSON-tree builder writes (which top-level responses still use).
    #[test]
    fn a_failed_batch_gets_its_status_from_the_typed_outcome() {
        use keyhaven_engine::BatchFailure;
        let with = |failure: Option<BatchFailure>| {
            let mut resp = Response::data(Map::new());
            resp.batch_failure = failure;
            envelope(resp, WireShape::Envelope, "id-1").status()
        };
        assert_eq!(with(None), StatusCode::OK);
        let client = BatchFailure {
            internal: false,
            status_override: None,
        };
        assert_eq!(with(Some(client)), StatusCode::BAD_REQUEST);
        let internal = BatchFailure {
            internal: true,
            status_override: None,
        };
        assert_eq!(with(Some(internal)), StatusCode::INTERNAL_SERVER_ERROR);
        let asked = BatchFailure {
            internal: false,
            status_override: Some(207),
        };
        assert_eq!(with(Some(asked)).as_u16(), 207);
        // Even an otherwise empty answer is not a 204 when the batch failed.
        let empty = Response {
            batch_failure: Some(client),
            ..Default::default()
        };
        assert_eq!(
            envelope(empty, WireShape::Envelope, "id-1").status(),
            StatusCode::BAD_REQUEST
        );
    }

    /// hashicorp/go-version's patterns (`VersionRegexpRaw`, `SemverRegexpRaw`), which
    /// terraform-provider-vault parses the server version with (`NewVersion`,
    /// `NewSemver`) before comparing it with the Vault releases that gate its features.
    const GO_VERSION_RE: &str = concat!(
        r"v?([0-9]+(\.[0-9]+)*?)",
        r"(-([0-9]+[0-9A-Za-z\-~]*(\.[0-9A-Za-z\-~]+)*)|(-?([A-Za-z\-~]+[0-9A-Za-z\-~]*(\.[0-9A-Za-z\-~]+)*)))?",
        r"(\+([0-9A-Za-z\-~]+(\.[0-9A-Za-z\-~]+)*))?",
        r"?"
    );
    const GO_SEMVER_RE: &str = concat!(
        r"v?([0-9]+(\.[0-9]+)*?)",
        r"(-([0-9]+[0-9A-Za-z\-~]*(\.[0-9A-Za-z\-~]+)*)|(-([A-Za-z\-~]+[0-9A-Za-z\-~]*(\.[0-9A-Za-z\-~]+)*)))?",
        r"(\+([0-9A-Za-z\-~]+(\.[0-9A-Za-z\-~]+)*))?",
        r"?"
    );

    /// What go-version makes of a version string: its numeric segments, prerelease and
    /// metadata; `None` where it reports "Malformed version".
    fn go_version(pattern: &str, v: &str) -> Option<(Vec<u64>, String, String)> {
        let re = regex::Regex::new(&format!("^{pattern}$")).unwrap();
        let c = re.captures(v)?;
        let segments = c
            .get(1)?
            .as_str()
            .split('.')
            .map(|s| s.parse::<u64>().ok())
            .collect::<Option<Vec<u64>>>()?;
        let pre = c
            .get(7)
            .or_else(|| c.get(4))
            .map_or("", |m| m.as_str())
            .to_owned();
        let meta = c.get(10).map_or("", |m| m.as_str()).to_owned();
        Some((segments, pre, meta))
    }

    #[test]
    fn the_reported_version_parses_as_the_vault_api_version_it_implements() {
        // The patterns behave as go-version's do on its own examples.
        assert!(go_version(GO_VERSION_RE, "1.2.3-beta+foo").is_some());
        assert!(go_version(GO_VERSION_RE, "1.2.3beta").is_some());
        assert!(go_version(GO_SEMVER_RE, "1.2.3beta").is_none());
        assert!(go_version(GO_VERSION_RE, "0.1.0 keyhaven").is_none());
        for pattern in [GO_VERSION_RE, GO_SEMVER_RE] {
            let (segments, pre, meta) = go_version(pattern, VERSION).unwrap();
            // No prerelease: a prerelease sorts below the release, and the provider would
            // take the server for an older Vault.
            assert_eq!(pre, "", "{VERSION}");
            assert_eq!(
                segments,
                keyhaven_engine::API_COMPAT_VERSION
                    .split('.')
                    .map(|s| s.parse::<u64>().unwrap())
                    .collect::<Vec<_>>()
            );
            // Newer than every Vault 1.x release the provider gates features on.
            assert!(segments >= vec![2, 0, 0], "{segments:?}");
            assert_eq!(meta, concat!("keyhaven.", env!("CARGO_PKG_VERSION")));
        }
    }

    #[test]
    fn legacy_sys_paths_answer_at_the_top_level_too() {
        for path in [
            "sys/mounts",
            "sys/auth",
            "sys/policy",
            "sys/policy/a",
            "sys/audit",
            "sys/key-status",
            "sys/capabilities-self",
            "sys/audit-hash/file",
        ] {
            assert_eq!(WireShape::of(path), WireShape::TopLevel, "{path}");
        }
        for path in [
            "sys/policies/acl/a",
            "sys/mounts/kv",
            "secret/data/policy",
            "sys/rotate",
        ] {
            assert_eq!(WireShape::of(path), WireShape::Envelope, "{path}");
        }
        assert_eq!(WireShape::of("sys/internal/specs/openapi"), WireShape::Raw);
        for path in [
            "sys/rekey/init",
            "sys/rekey/update",
            "sys/rekey/verify",
            "sys/generate-root/attempt",
            "sys/generate-root/update",
        ] {
            assert_eq!(WireShape::of(path), WireShape::Raw, "{path}");
        }
        assert_eq!(WireShape::of("sys/ha-status"), WireShape::TopLevel);
        for path in [
            "sys/rekey/backup",
            "sys/rotate/root/init",
            "sys/generate-root-token/attempt",
            "sys/host-info",
        ] {
            assert_eq!(WireShape::of(path), WireShape::Envelope, "{path}");
        }
    }

    #[test]
    fn the_streamed_envelope_equals_the_built_one() {
        let cases: Vec<fn() -> Response> = vec![
            || {
                Response::data(
                    json!({"data": {"k": "v\"q"}, "metadata": {"version": 3}})
                        .as_object()
                        .unwrap()
                        .clone(),
                )
            },
            // A KV read's data, encoded by the engine: copied as it is.
            || Response {
                encoded_data: keyhaven_engine::EncodedData::new(
                    br#"{"data":{"a":[1,2.5,null],"k":"v\"q\u0001"},"metadata":{"version":3}}"#
                        .to_vec(),
                ),
                warnings: vec!["unknown field".into()],
                ..Default::default()
            },
            || Response {
                warnings: vec!["one".into(), "two".into()],
                ..Response::data(Map::new())
            },
            || Response {
                lease: Some(keyhaven_engine::LeaseGrant {
                    lease_id: "database/creds/r/abc".into(),
                    duration: 3600,
                    renewable: true,
                }),
                ..Response::data(json!({"username": "u"}).as_object().unwrap().clone())
            },
            || Response {
                lease: Some(keyhaven_engine::LeaseGrant {
                    lease_id: String::new(),
                    duration: 0,
                    renewable: false,
                }),
                ..Default::default()
            },
            || Response {
                lease_duration: Some(LeaseDuration::Seconds(-5)),
                ..Response::data(Map::new())
            },
            || Response {
                auth: Some(
                    json!({"client_token": "t", "policies": ["a"]})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
                ..Default::default()
            },
            || Response {
                warnings: vec!["only a warning".into()],
                ..Default::default()
            },
            || Response {
                wrap_info: Some(keyhaven_types::wire::WrapInfo {
                    token: "khs.wrapping".into(),
                    accessor: "a1".into(),
                    ttl: 60,
                    creation_time: "2026-01-01T00:00:00Z".into(),
                    creation_path: "secret/data/x".into(),
                    wrapped_accessor: Some("a2".into()),
                }),
                ..Default::default()
            },
        ];
        for make in cases {
            for request_id in ["id-1", "needs \"escaping\" \\ \u{1}"] {
                let streamed = Envelope {
                    resp: &make(),
                    request_id,
                }
                .to_vec();
                let mut decoded = make();
                decoded.decode_data().unwrap();
                assert!(decoded.encoded_data.is_none());
                let built =
                    serde_json::to_vec(&built_envelope(decoded, request_id, false)).unwrap();
                assert_eq!(
                    String::from_utf8(streamed).unwrap(),
                    String::from_utf8(built).unwrap()
                );
            }
        }
    }

    /// The streamed envelope has exactly the fields of the shared envelope type the
    /// client reads, and reads back into it without loss.
    #[test]
    fn the_streamed_envelope_is_the_shared_wire_type() {
        use keyhaven_types::wire;
        let responses = [
            Response::data(json!({"k": "v"}).as_object().unwrap().clone()),
            Response {
                warnings: vec!["w".into()],
                auth: Some(json!({"client_token": "t"}).as_object().unwrap().clone()),
                ..Default::default()
            },
            Response::default(),
        ];
        for resp in &responses {
            let streamed = Envelope {
                resp,
                request_id: "id-2",
            }
            .to_vec();
            let read: wire::Envelope<Value> = serde_json::from_slice(&streamed).unwrap();
            assert_eq!(read.request_id, "id-2");
            assert_eq!(
                serde_json::to_value(&read).unwrap(),
                serde_json::from_slice::<Value>(&streamed).unwrap()
            );
        }
    }
}
