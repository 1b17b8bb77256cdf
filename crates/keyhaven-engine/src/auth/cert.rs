//! The `cert` auth method: clients log in with the TLS client certificate they present.
//!
//! Endpoints, relative to the mount (Vault/OpenBao's shapes):
//! - `certs/<name>` (read, write, delete) and `LIST certs`: a role. `certificate` is a
//!   PEM CA (or bundle) that must anchor the client's chain, or a non-CA leaf that the
//!   client's certificate must equal; `allowed_names`, `allowed_common_names`,
//!   `allowed_dns_sans`, `allowed_email_sans`, `allowed_uri_sans` and
//!   `allowed_organizational_units` constrain the client's certificate (globs with `*`);
//!   `display_name` and the token fields shape the token.
//! - `config` (read, write): `disable_binding`, `enable_identity_alias_metadata`,
//!   `ocsp_cache_size`, stored for compatibility.
//! - `login` (no token needed): `{name?}` → a token for the first role whose
//!   certificate anchors the presented chain and whose constraints the leaf meets.
//!
//! Invariants:
//! - the server only proves that the client holds the leaf's private key (the TLS
//!   handshake signature); the chain is verified here, at login, against each role's
//!   certificate, with the engine's clock, for client authentication (an extended key
//!   usage, when present, must allow it);
//! - a pinned leaf must be byte-for-byte the presented one and valid now;
//! - over plain HTTP there is no certificate and every login fails;
//! - OCSP, CRLs and required extensions are not supported: roles asking for them are
//!   refused rather than accepted with the check silently missing.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use keyhaven_storage::{MAX_LIST_PAGE, Store};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::common::{self, RoleMethod, TokenFields, load, save};
use crate::backend::{Backend, BackendContext, BackendRequest};
use crate::clock::Clock;
use crate::error::EngineError;
use crate::params;
use crate::request::Response;
use crate::route::{Field, Route};

const CONFIG_KEY: &str = "config";
const ROLE_PREFIX: &str = "cert/";
/// The largest certificate looked at, in bytes of DER.
pub const MAX_CERT_LEN: usize = 64 * 1024;
/// The most certificates of a presented chain looked at.
pub const MAX_CHAIN_LEN: usize = 16;
/// The most roles one login without `name` tries.
const MAX_ROLES_TRIED: usize = 1024;

const NO_CERT: &str = "no client certificate found";
const UNTRUSTED: &str = "invalid certificate or no client certificate supplied";
const NO_MATCH: &str =
    "no chain matching all constraints could be found for this login certificate";

/// Build a `cert` auth backend for a mount.
pub fn factory(ctx: BackendContext) -> Result<Arc<dyn Backend>, EngineError> {
    Ok(Arc::new(CertAuth {
        storage: ctx.storage,
        clock: ctx.clock,
    }))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Config {
    #[serde(default)]
    disable_binding: bool,
    #[serde(default)]
    enable_identity_alias_metadata: bool,
    #[serde(default)]
    ocsp_cache_size: u64,
}

const CONFIG_FIELDS: &[Field] = &[
    Field::bool(
        "disable_binding",
        "Do not check the certificate again at renewal.",
    ),
    Field::bool(
        "enable_identity_alias_metadata",
        "Copy the login metadata to the identity alias.",
    ),
    Field::uint("ocsp_cache_size", "Size of the OCSP cache (unused)."),
];

/// A role.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CertRole {
    /// PEM, as given.
    certificate: String,
    #[serde(default)]
    allowed_names: Vec<String>,
    #[serde(default)]
    allowed_common_names: Vec<String>,
    #[serde(default)]
    allowed_dns_sans: Vec<String>,
    #[serde(default)]
    allowed_email_sans: Vec<String>,
    #[serde(default)]
    allowed_uri_sans: Vec<String>,
    #[serde(default)]
    allowed_organizational_units: Vec<String>,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    token: TokenFields,
}

/// The constraint lists of a role, by parameter name.
const CONSTRAINTS: [&str; 6] = [
    "allowed_names",
    "allowed_common_names",
    "allowed_dns_sans",
    "allowed_email_sans",
    "allowed_uri_sans",
    "allowed_organizational_units",
];

const ROLE_FIELDS: &[Field] = &[
    Field::str(
        "certificate",
        "PEM CA certificate(s) anchoring client chains, or a pinned client certificate.",
    )
    .required(),
    Field::str_list(
        "allowed_names",
        "Globs one of the common name, DNS or email SANs must match.",
    ),
    Field::str_list("allowed_common_names", "Globs the common name must match."),
    Field::str_list("allowed_dns_sans", "Globs a DNS SAN must match."),
    Field::str_list("allowed_email_sans", "Globs an email SAN must match."),
    Field::str_list("allowed_uri_sans", "Globs a URI SAN must match."),
    Field::str_list(
        "allowed_organizational_units",
        "Globs an organizational unit must match.",
    ),
    Field::str("display_name", "Display name of the tokens logins get."),
    Field::str_list("required_extensions", "Not supported: must be empty."),
    Field::str_list(
        "allowed_metadata_extensions",
        "Not supported: must be empty.",
    ),
    Field::bool("ocsp_enabled", "Not supported: must be false."),
];

const LOGIN_FIELDS: &[Field] = &[Field::str(
    "name",
    "The role to log in with (default: every role).",
)];

static ROUTES: [Route; 4] = common::role_method_routes_at(
    CONFIG_FIELDS,
    ("certs", "certs/{name}"),
    ROLE_FIELDS,
    LOGIN_FIELDS,
    "Exchange the TLS client certificate for a token.",
);

struct CertAuth {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

#[async_trait]
impl Backend for CertAuth {
    fn routes(&self) -> &'static [Route] {
        &ROUTES
    }

    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError> {
        common::handle_role_method(self, req).await
    }
}

/// Parse a PEM bundle of certificates into DER; every block must be a certificate.
fn parse_pem_certs(pem: &str) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .ok()?;
    if certs.is_empty() {
        return None;
    }
    for c in &certs {
        ClientIdentity::parse(c.as_ref()).ok()?;
    }
    Some(certs)
}

fn list_json(v: &[String]) -> Value {
    if v.is_empty() { Value::Null } else { json!(v) }
}

#[async_trait]
impl RoleMethod for CertAuth {
    const ROLES: (&'static str, &'static str) = ("certs", "certs/{name}");
    const ROLE_PREFIX: &'static str = ROLE_PREFIX;
    const LOWERCASE_NAMES: bool = true;

    fn storage(&self) -> &Arc<dyn Store> {
        &self.storage
    }

    async fn config_read(&self) -> Result<Response, EngineError> {
        let c = load::<Config>(&self.storage, CONFIG_KEY)
            .await?
            .unwrap_or_default();
        let mut out = Map::new();
        out.insert("disable_binding".into(), json!(c.disable_binding));
        out.insert(
            "enable_identity_alias_metadata".into(),
            json!(c.enable_identity_alias_metadata),
        );
        out.insert("ocsp_cache_size".into(), json!(c.ocsp_cache_size));
        Ok(Response::data(out))
    }

    async fn config_write(&self, data: &Map<String, Value>) -> Result<Response, EngineError> {
        let mut c = load::<Config>(&self.storage, CONFIG_KEY)
            .await?
            .unwrap_or_default();
        if let Some(v) = params::boolean(data, "disable_binding")? {
            c.disable_binding = v;
        }
        if let Some(v) = params::boolean(data, "enable_identity_alias_metadata")? {
            c.enable_identity_alias_metadata = v;
        }
        if let Some(v) = params::uint(data, "ocsp_cache_size")? {
            c.ocsp_cache_size = v;
        }
        save(&self.storage, CONFIG_KEY, &c).await?;
        Ok(Response::no_content())
    }

    async fn role_read(&self, name: &str) -> Result<Response, EngineError> {
        let Some(role) = load::<CertRole>(&self.storage, &role_key(name)).await? else {
            return Err(EngineError::NotFound(String::new()));
        };
        let mut out = Map::new();
        out.insert("certificate".into(), json!(role.certificate));
        out.insert("allowed_names".into(), list_json(&role.allowed_names));
        out.insert(
            "allowed_common_names".into(),
            list_json(&role.allowed_common_names),
        );
        out.insert("allowed_dns_sans".into(), list_json(&role.allowed_dns_sans));
        out.insert(
            "allowed_email_sans".into(),
            list_json(&role.allowed_email_sans),
        );
        out.insert("allowed_uri_sans".into(), list_json(&role.allowed_uri_sans));
        out.insert(
            "allowed_organizational_units".into(),
            list_json(&role.allowed_organizational_units),
        );
        out.insert("allowed_metadata_extensions".into(), Value::Null);
        out.insert("required_extensions".into(), Value::Null);
        out.insert("display_name".into(), json!(role.display_name));
        out.insert("ocsp_ca_certificates".into(), json!(""));
        out.insert("ocsp_enabled".into(), json!(false));
        out.insert("ocsp_fail_open".into(), json!(false));
        out.insert("ocsp_query_all_servers".into(), json!(false));
        out.insert("ocsp_servers_override".into(), Value::Null);
        role.token.to_api_current(&mut out);
        Ok(Response::data(out))
    }

    async fn role_write(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        for key in ["required_extensions", "allowed_metadata_extensions"] {
            if params::string_list(data, key)?.is_some_and(|v| v.iter().any(|s| !s.is_empty())) {
                return Err(EngineError::invalid(format!("{key} is not supported")));
            }
        }
        if params::boolean(data, "ocsp_enabled")? == Some(true) {
            return Err(EngineError::invalid("ocsp_enabled is not supported"));
        }
        let key = role_key(name);
        let mut role = load::<CertRole>(&self.storage, &key)
            .await?
            .unwrap_or_default();
        if let Some(pem) = params::string(data, "certificate")? {
            role.certificate = pem.trim().to_owned();
            if !role.certificate.is_empty() {
                role.certificate.push('\n');
            }
        }
        if parse_pem_certs(&role.certificate).is_none() {
            return Err(EngineError::invalid("failed to parse certificate"));
        }
        for key in CONSTRAINTS {
            if let Some(v) = params::string_list(data, key)? {
                let v: Vec<String> = v.into_iter().filter(|s| !s.is_empty()).collect();
                match key {
                    "allowed_names" => role.allowed_names = v,
                    "allowed_common_names" => role.allowed_common_names = v,
                    "allowed_dns_sans" => role.allowed_dns_sans = v,
                    "allowed_email_sans" => role.allowed_email_sans = v,
                    "allowed_uri_sans" => role.allowed_uri_sans = v,
                    _ => role.allowed_organizational_units = v,
                }
            }
        }
        if let Some(v) = params::string(data, "display_name")? {
            role.display_name = v.to_owned();
        }
        if role.display_name.is_empty() {
            role.display_name = name.to_owned();
        }
        role.token.update(data)?;
        save(&self.storage, &key, &role).await?;
        Ok(Response::no_content())
    }

    async fn login(&self, req: &BackendRequest<'_>) -> Result<Response, EngineError> {
        let name = params::string(req.data, "name")?
            .unwrap_or("")
            .trim()
            .to_lowercase();
        let certs = req.client_certs;
        let Some(leaf) = certs.first() else {
            tracing::warn!(target: "keyhaven::auth", method = "cert", "login refused: no client certificate (is the listener TLS?)");
            return Err(EngineError::invalid(NO_CERT));
        };
        if certs.len() > MAX_CHAIN_LEN || certs.iter().any(|c| c.len() > MAX_CERT_LEN) {
            return Err(EngineError::invalid(UNTRUSTED));
        }
        let Ok(identity) = ClientIdentity::parse(leaf) else {
            return Err(EngineError::invalid(UNTRUSTED));
        };
        let names = if name.is_empty() {
            self.role_names().await?
        } else {
            vec![name]
        };
        let now = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut trusted_by_any = false;
        for role_name in &names {
            if common::validate_role_name(role_name).is_err() {
                continue;
            }
            let Some(role) = load::<CertRole>(&self.storage, &role_key(role_name)).await? else {
                continue;
            };
            if !role.anchors(certs, &identity, now) {
                continue;
            }
            trusted_by_any = true;
            if !role.constraints().matches(&identity) {
                continue;
            }
            let mut grant = role.token.grant();
            grant.display_name = format!("cert-{}", role.display_name);
            let m = &mut grant.metadata;
            m.insert("cert_name".into(), role_name.clone());
            m.insert("common_name".into(), identity.common_name.clone());
            m.insert("serial_number".into(), identity.serial.clone());
            m.insert("subject_key_id".into(), identity.subject_key_id.clone());
            m.insert("authority_key_id".into(), identity.authority_key_id.clone());
            return common::finish_login("cert", role_name, Ok(grant));
        }
        let why = if trusted_by_any { NO_MATCH } else { UNTRUSTED };
        tracing::warn!(target: "keyhaven::auth", method = "cert", common_name = %common::printable(&identity.common_name), reason = why, "login refused");
        Err(EngineError::invalid(why))
    }
}

impl CertAuth {
    /// The role names, in storage order, at most [`MAX_ROLES_TRIED`].
    async fn role_names(&self) -> Result<Vec<String>, EngineError> {
        let mut names: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        while names.len() < MAX_ROLES_TRIED {
            let page = self
                .storage
                .list_page(ROLE_PREFIX, after.as_deref(), MAX_LIST_PAGE)
                .await?;
            let last = page.len() < MAX_LIST_PAGE;
            after = page.last().cloned();
            names.extend(page);
            if last || after.is_none() {
                break;
            }
        }
        names.truncate(MAX_ROLES_TRIED);
        Ok(names)
    }
}

fn role_key(name: &str) -> String {
    format!("{ROLE_PREFIX}{name}")
}

impl CertRole {
    /// Whether this role's certificate anchors the presented chain at `now`.
    fn anchors(&self, chain: &[Vec<u8>], leaf: &ClientIdentity, now: std::time::Duration) -> bool {
        let Some(trusted) = parse_pem_certs(&self.certificate) else {
            return false;
        };
        let Some((first, _)) = trusted.split_first() else {
            return false;
        };
        let Some(presented) = chain.first() else {
            return false;
        };
        let first_is_ca = ClientIdentity::parse(first.as_ref()).is_ok_and(|c| c.is_ca);
        if !first_is_ca {
            // A pinned client certificate: the very same bytes, valid now.
            let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            return keyhaven_crypto::ct_eq(first.as_ref(), presented)
                && leaf.not_before <= secs
                && secs <= leaf.not_after;
        }
        let anchors: Vec<_> = trusted
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect();
        let leaf_der = CertificateDer::from(presented.as_slice());
        let Ok(ee) = webpki::EndEntityCert::try_from(&leaf_der) else {
            return false;
        };
        let intermediates: Vec<CertificateDer<'_>> = chain
            .iter()
            .skip(1)
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(now),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
    }

    fn constraints(&self) -> Constraints<'_> {
        Constraints {
            names: &self.allowed_names,
            common_names: &self.allowed_common_names,
            dns_sans: &self.allowed_dns_sans,
            email_sans: &self.allowed_email_sans,
            uri_sans: &self.allowed_uri_sans,
            organizational_units: &self.allowed_organizational_units,
        }
    }
}

/// What a client certificate says about its holder, as the constraints look at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject's first common name (empty if none).
    pub common_name: String,
    /// The subject's organizational units.
    pub organizational_units: Vec<String>,
    /// DNS names of the subject alternative names.
    pub dns_sans: Vec<String>,
    /// Email addresses of the subject alternative names.
    pub email_sans: Vec<String>,
    /// URIs of the subject alternative names.
    pub uri_sans: Vec<String>,
    /// The serial number, in decimal.
    pub serial: String,
    /// The subject key identifier, `aa:bb:…` (empty if none).
    pub subject_key_id: String,
    /// The authority key identifier, `aa:bb:…` (empty if none).
    pub authority_key_id: String,
    /// Start of validity, in Unix seconds.
    pub not_before: i64,
    /// End of validity, in Unix seconds.
    pub not_after: i64,
    /// Whether basic constraints say `CA:true`.
    pub is_ca: bool,
}

/// A certificate that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCertificate;

fn hex_colons(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl ClientIdentity {
    /// Parse one DER certificate (at most [`MAX_CERT_LEN`] bytes, nothing after it).
    pub fn parse(der: &[u8]) -> Result<ClientIdentity, BadCertificate> {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        if der.len() > MAX_CERT_LEN {
            return Err(BadCertificate);
        }
        let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| BadCertificate)?;
        if !rest.is_empty() {
            return Err(BadCertificate);
        }
        let subject = cert.subject();
        let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            a.as_str().map(str::to_owned).unwrap_or_default()
        };
        let mut id = ClientIdentity {
            common_name: subject
                .iter_common_name()
                .next()
                .map(text)
                .unwrap_or_default(),
            organizational_units: subject.iter_organizational_unit().map(text).collect(),
            serial: cert.serial.to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            ..ClientIdentity::default()
        };
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(s) => id.dns_sans.push((*s).to_owned()),
                            GeneralName::RFC822Name(s) => id.email_sans.push((*s).to_owned()),
                            GeneralName::URI(s) => id.uri_sans.push((*s).to_owned()),
                            _ => {}
                        }
                    }
                }
                ParsedExtension::SubjectKeyIdentifier(k) => id.subject_key_id = hex_colons(k.0),
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    if let Some(k) = &a.key_identifier {
                        id.authority_key_id = hex_colons(k.0);
                    }
                }
                _ => {}
            }
        }
        Ok(id)
    }
}

/// A role's subject constraints: each non-empty list needs one of its globs to match.
#[derive(Debug, Clone, Copy)]
pub struct Constraints<'a> {
    /// Globs matched against the common name, DNS SANs and email SANs.
    pub names: &'a [String],
    /// Globs matched against the common name.
    pub common_names: &'a [String],
    /// Globs matched against the DNS SANs.
    pub dns_sans: &'a [String],
    /// Globs matched against the email SANs.
    pub email_sans: &'a [String],
    /// Globs matched against the URI SANs.
    pub uri_sans: &'a [String],
    /// Globs matched against the organizational units.
    pub organizational_units: &'a [String],
}

impl Constraints<'_> {
    /// Whether `id` meets every constraint.
    pub fn matches(&self, id: &ClientIdentity) -> bool {
        let any = |globs: &[String], values: &mut dyn Iterator<Item = &str>| {
            let values: Vec<&str> = values.collect();
            globs.is_empty() || globs.iter().any(|g| values.iter().any(|v| glob(g, v)))
        };
        let cn = std::iter::once(id.common_name.as_str());
        any(
            self.names,
            &mut cn
                .clone()
                .chain(id.dns_sans.iter().map(String::as_str))
                .chain(id.email_sans.iter().map(String::as_str)),
        ) && any(self.common_names, &mut cn.clone())
            && any(self.dns_sans, &mut id.dns_sans.iter().map(String::as_str))
            && any(
                self.email_sans,
                &mut id.email_sans.iter().map(String::as_str),
            )
            && any(self.uri_sans, &mut id.uri_sans.iter().map(String::as_str))
            && any(
                self.organizational_units,
                &mut id.organizational_units.iter().map(String::as_str),
            )
    }
}

/// Vault's glob: `*` matches any run of characters (none included); nothing else is
/// special. A pattern of `*` alone matches everything.
pub fn glob(pattern: &str, subject: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == subject;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    let Some(mut rest) = subject.strip_prefix(first) else {
        return false;
    };
    let middle = parts.get(1..parts.len().saturating_sub(1)).unwrap_or(&[]);
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = rest.get(i + part.len()..).unwrap_or(""),
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_as_vault() {
        assert!(glob("*", ""));
        assert!(glob("*", "anything.at.all"));
        assert!(glob("*.example.com", "web.example.com"));
        assert!(glob("*.example.com", "a.b.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("web-*-prod", "web-1-prod"));
        assert!(!glob("web-*-prod", "web-1-dev"));
        assert!(glob("a*b*c", "abc"));
        assert!(!glob("a*b*c", "acb"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(ClientIdentity::parse(b""), Err(BadCertificate));
        assert_eq!(
            ClientIdentity::parse(b"\x30\x03\x02\x01\x01"),
            Err(BadCertificate)
        );
        assert!(parse_pem_certs("garbage").is_none());
    }
}
