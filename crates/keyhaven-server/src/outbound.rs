//! Outbound HTTPS for auth methods (Kubernetes TokenReview, OIDC discovery and JWKS),
//! the server's implementation of the engine's [`Outbound`] trait.
//!
//! Invariants:
//! - HTTPS only (rustls with aws-lc-rs); a per-call CA given as PEM replaces the system
//!   roots for that call, so a cluster CA never widens trust for other destinations;
//! - bounded: connect and whole-request timeouts, no redirects, no proxy from the
//!   environment, and a response body cap ([`MAX_RESPONSE_BYTES`]);
//! - request bodies and bearer tokens are never logged; errors name the URL and the
//!   failure class only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use keyhaven_engine::EngineError;
use keyhaven_engine::auth::{Outbound, OutboundResponse};
use serde_json::Value;

/// The largest response body read, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients kept for distinct CA bundles before the cache is emptied.
const MAX_CACHED_CLIENTS: usize = 16;

/// [`Outbound`] over reqwest.
///
/// Clients are built at first use: most servers never make an outbound call, and building
/// one loads the system's root certificates and the TLS stack (about a megabyte of code
/// and data resident for the life of the process).
pub struct HttpOutbound {
    system: OnceLock<reqwest::Client>,
    by_ca: Mutex<HashMap<String, reqwest::Client>>,
}

impl std::fmt::Debug for HttpOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOutbound").finish_non_exhaustive()
    }
}

fn unavailable(url: &str, what: &str) -> EngineError {
    EngineError::Unavailable(format!("outbound request to {url} failed: {what}"))
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("keyhaven/", env!("CARGO_PKG_VERSION")))
}

impl HttpOutbound {
    /// A client trusting the system roots (and a per-call CA when one is given). Nothing
    /// is built until the first call.
    pub fn new() -> HttpOutbound {
        HttpOutbound {
            system: OnceLock::new(),
            by_ca: Mutex::new(HashMap::new()),
        }
    }

    /// The client trusting the system roots, built at first use. A build failure is
    /// reported to the caller and retried on the next call.
    fn system(&self, url: &str) -> Result<reqwest::Client, EngineError> {
        if let Some(c) = self.system.get() {
            return Ok(c.clone());
        }
        let built = builder().build().map_err(|e| {
            tracing::warn!(target: "keyhaven::outbound", error = %e, "cannot build the HTTPS client");
            unavailable(url, "cannot build the HTTPS client")
        })?;
        Ok(self.system.get_or_init(|| built).clone())
    }

    fn client(&self, url: &str, ca_pem: Option<&str>) -> Result<reqwest::Client, EngineError> {
        let Some(pem) = ca_pem.filter(|p| !p.trim().is_empty()) else {
            return self.system(url);
        };
        if let Some(c) = self
            .by_ca
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pem)
        {
            return Ok(c.clone());
        }
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|_| unavailable(url, "the CA certificate is not valid PEM"))?;
        if certs.is_empty() {
            return Err(unavailable(url, "the CA bundle holds no certificate"));
        }
        let client = builder()
            .tls_certs_only(certs)
            .build()
            .map_err(|_| unavailable(url, "cannot build an HTTPS client for this CA"))?;
        let mut cache = self.by_ca.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_CLIENTS {
            cache.clear();
        }
        cache.insert(pem.to_owned(), client.clone());
        Ok(client)
    }

    async fn send(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<OutboundResponse, EngineError> {
        let mut resp = request.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect (or the TLS handshake failed)"
            } else if e.is_builder() {
                "invalid URL"
            } else {
                "transport error"
            };
            tracing::warn!(target: "keyhaven::outbound", %url, error = %e.without_url(), "outbound request failed");
            unavailable(url, what)
        })?;
        let status = resp.status().as_u16();
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(unavailable(url, "the response is too large"));
        }
        let mut body: Vec<u8> = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|_| unavailable(url, "the response body could not be read"))?
        {
            if body.len().saturating_add(chunk.len()) > MAX_RESPONSE_BYTES {
                return Err(unavailable(url, "the response is too large"));
            }
            body.extend_from_slice(&chunk);
        }
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        tracing::debug!(target: "keyhaven::outbound", %url, status, "outbound request");
        Ok(OutboundResponse { status, body })
    }
}

fn check_url(url: &str) -> Result<(), EngineError> {
    if url.starts_with("https://") {
        Ok(())
    } else {
        Err(unavailable(url, "only https:// URLs are allowed"))
    }
}

#[async_trait]
impl Outbound for HttpOutbound {
    async fn get_json(
        &self,
        url: &str,
        ca_pem: Option<&str>,
    ) -> Result<OutboundResponse, EngineError> {
        check_url(url)?;
        let client = self.client(url, ca_pem)?;
        self.send(url, client.get(url).header("Accept", "application/json"))
            .await
    }

    async fn post_json(
        &self,
        url: &str,
        ca_pem: Option<&str>,
        bearer: Option<&str>,
        body: &Value,
    ) -> Result<OutboundResponse, EngineError> {
        check_url(url)?;
        let client = self.client(url, ca_pem)?;
        let bytes = serde_json::to_vec(body)
            .map_err(|_| unavailable(url, "the request body cannot be encoded"))?;
        let mut request = client
            .post(url)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .body(bytes);
        if let Some(token) = bearer {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| unavailable(url, "the bearer token is not a valid header value"))?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        self.send(url, request).await
    }
}

impl Default for HttpOutbound {
    fn default() -> Self {
        HttpOutbound::new()
    }
}

/// Shared handle for [`keyhaven_engine::CoreOptions::outbound`]. If the HTTPS client
/// cannot be built when first needed, logins that need TokenReview or OIDC discovery fail
/// as unavailable, and say so.
pub fn shared() -> Arc<dyn Outbound> {
    Arc::new(HttpOutbound::new())
}
