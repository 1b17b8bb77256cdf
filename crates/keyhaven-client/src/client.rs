//! The HTTP client, its configuration and the low-level calls.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ClientError;

/// The header that carries the token, as Vault's clients send it.
pub const TOKEN_HEADER: &str = "X-Vault-Token";

/// Default request timeout, as Vault's CLI.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach the server.
pub struct ClientConfig {
    /// Base URL of the server, e.g. `https://127.0.0.1:8200`. A path after the host is
    /// kept as a prefix before `/v1/`.
    pub address: String,
    /// The token sent in `X-Vault-Token`, if any.
    pub token: Option<SecretString>,
    /// A PEM file of CA certificates to trust *instead of* the built-in roots.
    pub ca_cert: Option<PathBuf>,
    /// Accept any server certificate. This turns off the protection TLS gives against an
    /// attacker on the network; it exists for throw-away test setups only.
    pub dangerous_skip_tls_verify: bool,
    /// Timeout of each request, connection included.
    pub timeout: Duration,
}

impl ClientConfig {
    /// A configuration with the given address and every default: no token, built-in CA
    /// roots, certificate verification on, [`DEFAULT_TIMEOUT`].
    pub fn new(address: impl Into<String>) -> Self {
        ClientConfig {
            address: address.into(),
            token: None,
            ca_cert: None,
            dangerous_skip_tls_verify: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("ca_cert", &self.ca_cert)
            .field("dangerous_skip_tls_verify", &self.dangerous_skip_tls_verify)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A client of keyhaven's (Vault-compatible) HTTP API. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<HeaderValue>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish_non_exhaustive()
    }
}

/// The answer of a call, before the caller decides what it means.
struct Raw {
    status: StatusCode,
    body: Option<Value>,
}

/// What a 404 means for a call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NotFound {
    /// Nothing at the path: `Ok(None)` unless the body carries data or warnings (as a
    /// read of a deleted KV version does), as Vault's client does for reads and lists.
    IsEmpty,
    /// An error like any other.
    IsError,
}

impl Client {
    /// Build a client. Reads the CA file if one is given.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let base = parse_address(&config.address)?;
        let token = match &config.token {
            None => None,
            Some(t) => {
                let mut v = HeaderValue::from_str(t.expose_secret())
                    .map_err(|_| ClientError::InvalidToken)?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("keyhaven-client/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path).map_err(|source| ClientError::CaCertRead {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ClientError::CaCertParse {
                    path: path.clone(),
                    source,
                }
            })?;
            if certs.is_empty() {
                return Err(ClientError::CaCertEmpty { path: path.clone() });
            }
            builder = builder.tls_certs_only(certs);
        }
        if config.dangerous_skip_tls_verify {
            tracing::warn!(
                target: "keyhaven::client",
                address = %base,
                "TLS certificate verification is OFF: anyone on the network path can read and change this traffic"
            );
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(ClientError::Build)?;
        Ok(Client { http, base, token })
    }

    /// The same client with another token (e.g. the root token `sys/init` returned).
    pub fn with_token(&self, token: &SecretString) -> Result<Self, ClientError> {
        let mut v =
            HeaderValue::from_str(token.expose_secret()).map_err(|_| ClientError::InvalidToken)?;
        v.set_sensitive(true);
        Ok(Client {
            http: self.http.clone(),
            base: self.base.clone(),
            token: Some(v),
        })
    }

    /// The server address this client talks to.
    pub fn address(&self) -> &Url {
        &self.base
    }

    /// Whether a token is set.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The full URL of an API path (relative to `/v1/`) with a query.
    ///
    /// Each `/`-separated segment of `path` is percent-encoded on its own, so a segment
    /// cannot smuggle a query or fragment; `.` and `..` segments are refused. A trailing
    /// `/` is kept.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, ClientError> {
        build_url(&self.base, path, query)
    }

    /// `GET /v1/<path>`: the response envelope, or `None` when nothing is there (404).
    pub async fn read(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<Value>, ClientError> {
        self.call(Method::GET, path, query, None, NotFound::IsEmpty)
            .await
    }

    /// `GET /v1/<path>?list=true`: the response envelope (`data.keys`), or `None` when
    /// there is nothing to list (404).
    pub async fn list(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<Value>, ClientError> {
        let mut q = Vec::with_capacity(query.len() + 1);
        q.push(("list", "true"));
        q.extend(query.iter().filter(|(k, _)| *k != "list").copied());
        self.call(Method::GET, path, &q, None, NotFound::IsEmpty)
            .await
    }

    /// `PUT /v1/<path>` with a JSON body (`None` sends `null`, as `bao write -f`): the
    /// response envelope, or `None` on 204.
    pub async fn write(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, ClientError> {
        self.call(
            Method::PUT,
            path,
            &[],
            Some(body.unwrap_or(&Value::Null)),
            NotFound::IsError,
        )
        .await
    }

    /// `PATCH /v1/<path>` with a JSON merge patch: the response envelope, or `None` on 204.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Option<Value>, ClientError> {
        self.call(Method::PATCH, path, &[], Some(body), NotFound::IsError)
            .await
    }

    /// `DELETE /v1/<path>`: the response envelope, or `None` on 204.
    pub async fn delete(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<Value>, ClientError> {
        self.call(Method::DELETE, path, query, None, NotFound::IsError)
            .await
    }

    /// Decode an envelope (or top-level body) into `T`.
    pub(crate) fn decode<T: DeserializeOwned>(
        method: &'static str,
        path: &str,
        value: Value,
        expected: &'static str,
    ) -> Result<T, ClientError> {
        // The decoder's message is dropped on purpose: it may quote response values.
        serde_json::from_value(value).map_err(|_| ClientError::Decode {
            method,
            path: path.to_owned(),
            status: 200,
            expected,
        })
    }

    /// A call whose answer must have a body.
    pub(crate) async fn call_some(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        expected: &'static str,
    ) -> Result<Value, ClientError> {
        let name = method_name(&method);
        self.call(method, path, query, body, NotFound::IsError)
            .await?
            .ok_or_else(|| ClientError::Decode {
                method: name,
                path: path.to_owned(),
                status: 204,
                expected,
            })
    }

    /// A call whose answer may be empty (204); 404 is an error.
    pub(crate) async fn call_opt(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<Option<Value>, ClientError> {
        self.call(method, path, &[], Some(body), NotFound::IsError)
            .await
    }

    /// Send a request and accept any of `ok_statuses` besides 2xx as a success (e.g.
    /// `sys/health` answers 503 when sealed). Returns the status and the body.
    pub(crate) async fn call_with_statuses(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        ok_statuses: &[u16],
    ) -> Result<(u16, Option<Value>), ClientError> {
        let name = method_name(&method);
        let raw = self.send(method, path, query, None).await?;
        let status = raw.status.as_u16();
        if raw.status.is_success() || ok_statuses.contains(&status) {
            Ok((status, raw.body))
        } else {
            Err(api_error(name, path, status, raw.body))
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        not_found: NotFound,
    ) -> Result<Option<Value>, ClientError> {
        let name = method_name(&method);
        let raw = self.send(method, path, query, body).await?;
        let status = raw.status.as_u16();
        if raw.status.is_success() {
            return Ok(raw.body);
        }
        if raw.status == StatusCode::NOT_FOUND && not_found == NotFound::IsEmpty {
            return Ok(raw.body.filter(has_data_or_warnings));
        }
        Err(api_error(name, path, status, raw.body))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Raw, ClientError> {
        let name = method_name(&method);
        let url = self.url(path, query)?;
        let is_patch = method == Method::PATCH;
        let mut req = self.http.request(method, url);
        if let Some(token) = &self.token {
            req = req.header(TOKEN_HEADER, token.clone());
        }
        if let Some(body) = body {
            // The body is serialized here; it never enters an error.
            let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec());
            let content_type = if is_patch {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            req = req.header(CONTENT_TYPE, content_type).body(bytes);
        }
        let transport = |source: reqwest::Error| ClientError::Transport {
            method: name,
            path: path.to_owned(),
            source,
        };
        let resp = req.send().await.map_err(|e| transport(e.without_url()))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| transport(e.without_url()))?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => Some(v),
                Err(_) if !status.is_success() => None,
                Err(_) => {
                    return Err(ClientError::Decode {
                        method: name,
                        path: path.to_owned(),
                        status: status.as_u16(),
                        expected: "a JSON body",
                    });
                }
            }
        };
        Ok(Raw { status, body })
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "REQUEST",
    }
}

fn has_data_or_warnings(body: &Value) -> bool {
    let present = |key: &str| match body.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    present("data") || present("warnings")
}

/// The error for a non-success answer: the `errors` list of a Vault error body, if any.
pub(crate) fn api_error(
    method: &'static str,
    path: &str,
    status: u16,
    body: Option<Value>,
) -> ClientError {
    let errors = body
        .and_then(|b| serde_json::from_value::<keyhaven_types::ErrorBody>(b).ok())
        .map(|b| b.errors)
        .unwrap_or_default();
    ClientError::Api {
        method,
        path: path.to_owned(),
        status,
        errors,
    }
}

fn parse_address(address: &str) -> Result<Url, ClientError> {
    let invalid = |reason| ClientError::InvalidAddress {
        address: address.to_owned(),
        reason,
    };
    let url = Url::parse(address.trim()).map_err(|_| invalid("not an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the address are not supported"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("the address must not have a query or fragment"));
    }
    Ok(url)
}

fn build_url(base: &Url, path: &str, query: &[(&str, &str)]) -> Result<Url, ClientError> {
    let invalid = |reason| ClientError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return Err(invalid("empty path"));
    }
    let segments: Vec<&str> = rel.split('/').collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(invalid("\".\" and \"..\" segments are not allowed"));
    }
    let mut url = base.clone();
    {
        let mut parts = url
            .path_segments_mut()
            .map_err(|()| invalid("the address cannot have a path"))?;
        parts.pop_if_empty().push("v1").extend(segments);
    }
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base(s: &str) -> Url {
        parse_address(s).unwrap()
    }

    #[test]
    fn urls_are_built_under_v1() {
        let b = base("http://127.0.0.1:8200");
        assert_eq!(
            build_url(&b, "sys/seal-status", &[]).unwrap().as_str(),
            "http://127.0.0.1:8200/v1/sys/seal-status"
        );
        assert_eq!(
            build_url(&b, "/secret/data/a/b", &[]).unwrap().as_str(),
            "http://127.0.0.1:8200/v1/secret/data/a/b"
        );
        let b = base("https://vault.example:8200/");
        assert_eq!(
            build_url(&b, "kv/metadata/", &[("list", "true")])
                .unwrap()
                .as_str(),
            "https://vault.example:8200/v1/kv/metadata/?list=true"
        );
    }

    #[test]
    fn a_path_prefix_in_the_address_is_kept() {
        let b = base("https://proxy.example/keyhaven/");
        assert_eq!(
            build_url(&b, "sys/health", &[]).unwrap().as_str(),
            "https://proxy.example/keyhaven/v1/sys/health"
        );
        let b = base("https://proxy.example/keyhaven");
        assert_eq!(
            build_url(&b, "sys/health", &[]).unwrap().as_str(),
            "https://proxy.example/keyhaven/v1/sys/health"
        );
    }

    #[test]
    fn segments_and_queries_are_encoded() {
        let b = base("http://h:1");
        let u = build_url(&b, "kv/data/a b/c?d#e", &[("version", "2"), ("x", "a&b=c")]).unwrap();
        assert_eq!(u.path(), "/v1/kv/data/a%20b/c%3Fd%23e");
        assert_eq!(u.query(), Some("version=2&x=a%26b%3Dc"));
    }

    #[test]
    fn bad_paths_and_addresses_are_refused() {
        let b = base("http://h:1");
        for bad in ["", "/", "kv/../sys/seal", "kv/./a", ".."] {
            assert!(
                matches!(
                    build_url(&b, bad, &[]),
                    Err(ClientError::InvalidPath { .. })
                ),
                "{bad:?}"
            );
        }
        for bad in [
            "127.0.0.1:8200",
            "ftp://h",
            "http://",
            "http://u:p@h",
            "http://h?x=1",
            "not a url",
        ] {
            assert!(
                matches!(parse_address(bad), Err(ClientError::InvalidAddress { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn error_bodies_are_decoded() {
        let e = api_error(
            "PUT",
            "secret/data/a",
            400,
            Some(json!({"errors": ["check-and-set parameter did not match the current version"]})),
        );
        match &e {
            ClientError::Api { status, errors, .. } => {
                assert_eq!(*status, 400);
                assert_eq!(
                    errors,
                    &["check-and-set parameter did not match the current version"]
                );
            }
            other => panic!("{other:?}"),
        }
        // A body that is not Vault's error shape gives an empty list, not its text.
        let e = api_error("GET", "x", 502, Some(json!({"message": "secret-ish"})));
        assert!(e.api_errors().is_empty());
        assert!(!e.to_string().contains("secret-ish"));
        let e = api_error("GET", "x", 500, None);
        assert_eq!(e.to_string(), "GET x: HTTP 500");
    }

    #[test]
    fn not_found_bodies_with_data_are_kept() {
        assert!(!has_data_or_warnings(&json!({"errors": []})));
        assert!(!has_data_or_warnings(
            &json!({"data": null, "warnings": null})
        ));
        assert!(has_data_or_warnings(
            &json!({"data": {"metadata": {"version": 2}}})
        ));
        assert!(has_data_or_warnings(&json!({"warnings": ["w"]})));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let mut config = ClientConfig::new("http://127.0.0.1:1");
        config.token = Some(SecretString::from("kh.s3cr3t-token-value"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let client = Client::new(config).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_without_echo() {
        let mut config = ClientConfig::new("http://127.0.0.1:1");
        config.token = Some(SecretString::from("bad\ntoken-xyz"));
        let err = Client::new(config).unwrap_err();
        assert!(matches!(err, ClientError::InvalidToken));
        assert!(!err.to_string().contains("token-xyz"));
    }

    #[test]
    fn a_missing_ca_file_is_reported() {
        let mut config = ClientConfig::new("https://127.0.0.1:1");
        config.ca_cert = Some(PathBuf::from("/nonexistent/ca.pem"));
        assert!(matches!(
            Client::new(config),
            Err(ClientError::CaCertRead { .. })
        ));
    }
}
