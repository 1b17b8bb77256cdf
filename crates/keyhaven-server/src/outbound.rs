//! Outbound HTTPS for auth methods (Kubernetes TokenReview, OIDC discovery and JWKS),
//! the server's implementation of the engine's [`Outbound`] trait.
//!
//! Invariants:
//! - HTTPS only (rustls with aws-lc-rs); a per-call CA given as PEM replaces the system
//!   roots for that call, so a cluster CA never widens trust for other destinations. As in
//!   Go's crypto/x509 (which Vault and OpenBao use), a server certificate that *is* one of
//!   the bundle's certificates is trusted too, within its validity and for the host
//!   dialled ([`BundleVerifier`]);
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
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
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
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unavailable(url, "the CA certificate is not valid PEM"))?;
        if certs.is_empty() {
            return Err(unavailable(url, "the CA bundle holds no certificate"));
        }
        let tls = bundle_tls_config(certs).map_err(|e| {
            tracing::warn!(target: "keyhaven::outbound", error = %e, "unusable CA bundle");
            unavailable(url, "cannot build an HTTPS client for this CA")
        })?;
        let client = builder()
            .tls_backend_preconfigured(tls)
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

/// A client for the transit seal: bounded like the others, trusting `ca_pem` (a PEM
/// bundle) instead of the system roots when given. Plain `http://` is allowed, as the
/// seal's address is the operator's choice (the server warns about it at start).
pub(crate) fn seal_client(ca_pem: Option<&str>) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("keyhaven/", env!("CARGO_PKG_VERSION")));
    let builder = match ca_pem {
        None => builder,
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "the CA certificate is not valid PEM".to_owned())?;
            if certs.is_empty() {
                return Err("the CA bundle holds no certificate".to_owned());
            }
            let tls = bundle_tls_config(certs).map_err(|e| format!("unusable CA bundle: {e}"))?;
            builder.tls_backend_preconfigured(tls)
        }
    };
    builder
        .build()
        .map_err(|_| "cannot build the HTTPS client".to_owned())
}

/// The TLS client configuration for a per-call CA bundle: [`BundleVerifier`] over it,
/// TLS 1.2 and 1.3, HTTP/2 or HTTP/1.1.
fn bundle_tls_config(
    certs: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err(rustls::Error::General(
            "no certificate of the bundle can be a trust anchor".to_owned(),
        ));
    }
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = BundleVerifier {
        chain,
        pinned: certs,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Trust in a CA bundle as Go's crypto/x509 grants it: a chain to one of the bundle's
/// certificates (WebPKI's rules), or a server certificate byte-identical to one of them.
/// The second covers API servers that present a single self-signed certificate marked as
/// a CA, which operators then give as `kubernetes_ca_cert`: WebPKI refuses a CA
/// certificate as an end entity, Go (so Vault and OpenBao) accepts it. A pinned certificate
/// must still be within its validity period and name the host dialled; the handshake
/// signature is checked against its key as for any other certificate.
#[derive(Debug)]
struct BundleVerifier {
    chain: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for BundleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chained = self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if chained.is_ok()
            || !self
                .pinned
                .iter()
                .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return chained;
        }
        verify_pinned(end_entity, server_name, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The checks a pinned server certificate still gets: validity period and host name.
fn verify_pinned(
    der: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    use x509_parser::prelude::{ASN1Time, FromDer as _, X509Certificate};
    let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let (rest, cert) = X509Certificate::from_der(der.as_ref()).map_err(|_| bad())?;
    if !rest.is_empty() {
        return Err(bad());
    }
    let at = i64::try_from(now.as_secs())
        .ok()
        .and_then(|secs| ASN1Time::from_timestamp(secs).ok())
        .ok_or_else(bad)?;
    let validity = cert.validity();
    if at < validity.not_before {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if at > validity.not_after {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    webpki::EndEntityCert::try_from(der)
        .map_err(|_| bad())?
        .verify_is_valid_for_subject_name(server_name)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
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
