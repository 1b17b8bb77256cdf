//! The `kubernetes` auth method: pods log in with their ServiceAccount token.
//!
//! Endpoints, relative to the mount (Vault/OpenBao's shapes):
//! - `config` (read, write): how tokens are checked. Offline, against the cluster
//!   issuer's public keys given as `pem_keys`, as an inline `jwks`, or fetched from
//!   `oidc_discovery_url` (the RRSA/IRSA model); and/or online, through the Kubernetes
//!   TokenReview API at `kubernetes_host` (revocation-aware). With both, both must pass.
//! - `role/<name>` (read, write, delete) and `LIST role`: which service accounts
//!   (`bound_service_account_names`, `bound_service_account_namespaces`, globs with `*`)
//!   may log in, for which `audience`, and the token they get.
//! - `login` (no token needed): `{role, jwt}` → a token.
//!
//! Invariants:
//! - every refusal is the same `permission denied` to the caller; the reason goes to the
//!   log (target `keyhaven::auth`) and never includes the JWT;
//! - offline checks: RS256/ES256 signature with the algorithm pinned by the key, `exp`
//!   required, `exp`/`nbf`/`iat` against the engine's clock with a bounded leeway, `iss`
//!   when configured, `aud` when the role sets `audience`, and a `sub` of the form
//!   `system:serviceaccount:<namespace>:<name>` that agrees with the `kubernetes.io`
//!   claims;
//! - TokenReview: `authenticated` must be true, the user must be
//!   `system:serviceaccount:<namespace>:<name>` (the same as `sub` when the token was
//!   also checked offline), and the role's audience must be confirmed;
//! - `token_reviewer_jwt` is stored behind the barrier and never read back.
//!
//! Non-goal: the engine reads no files, so `disable_local_ca_jwt` is stored for
//! compatibility but the in-pod CA and token are never loaded implicitly; give
//! `kubernetes_ca_cert` and `token_reviewer_jwt` (or let each client's own JWT review
//! itself, as Vault does when no reviewer JWT is set).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use keyhaven_storage::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::common::{
    self, Failure, RoleMethod, TokenFields, finish_login, load, role_key, save, validate_role_name,
};
use super::validator::{
    self, DEFAULT_LEEWAY_SECS, Expectations, KeySet, Rejection, RemoteKeys, RemoteSource, SigAlg,
};
use super::{LoginGrant, Outbound};
use crate::backend::{Backend, BackendContext, BackendRequest};
use crate::clock::Clock;
use crate::error::EngineError;
use crate::params;
use crate::request::Response;
use crate::route::{Field, Route};

const CONFIG_KEY: &str = "config";
const SA_PREFIX: &str = "system:serviceaccount:";
const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// Build a `kubernetes` auth backend for a mount.
pub fn factory(ctx: BackendContext) -> Result<Arc<dyn Backend>, EngineError> {
    Ok(Arc::new(KubernetesAuth {
        storage: ctx.storage,
        clock: ctx.clock,
        outbound: ctx.outbound,
        parsed: parking_lot::Mutex::new(None),
        remote: RemoteKeys::default(),
    }))
}

/// The stored configuration.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Config {
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    pem_keys: Vec<String>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    oidc_discovery_url: String,
    #[serde(default)]
    oidc_discovery_ca_pem: String,
    #[serde(default)]
    kubernetes_host: String,
    #[serde(default)]
    kubernetes_ca_cert: String,
    /// Secret: stored behind the barrier, never returned.
    #[serde(default)]
    token_reviewer_jwt: String,
    #[serde(default)]
    disable_local_ca_jwt: bool,
    #[serde(default = "default_leeway")]
    clock_skew_leeway: u64,
}

fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECS
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("issuer", &self.issuer)
            .field("pem_keys", &self.pem_keys.len())
            .field("jwks", &self.jwks.is_some())
            .field("oidc_discovery_url", &self.oidc_discovery_url)
            .field("kubernetes_host", &self.kubernetes_host)
            .field(
                "token_reviewer_jwt_set",
                &!self.token_reviewer_jwt.is_empty(),
            )
            .finish_non_exhaustive()
    }
}

const CONFIG_FIELDS: &[Field] = &[
    Field::str(
        "issuer",
        "The iss claim of the cluster's ServiceAccount tokens.",
    ),
    Field::any("pem_keys", "PEM public keys of the cluster's issuer."),
    Field::any("jwks", "The issuer's JWKS document."),
    Field::str(
        "oidc_discovery_url",
        "The issuer's OIDC discovery URL (https).",
    ),
    Field::str(
        "oidc_discovery_ca_pem",
        "CA certificate for oidc_discovery_url.",
    ),
    Field::str(
        "kubernetes_host",
        "The API server, for TokenReview (https).",
    ),
    Field::str("kubernetes_ca_cert", "CA certificate of the API server."),
    Field::str("token_reviewer_jwt", "The token TokenReview calls present."),
    Field::bool(
        "disable_local_ca_jwt",
        "Do not read the pod's own token and CA.",
    ),
    Field::any(
        "clock_skew_leeway",
        "Allowed clock skew, in seconds or a duration.",
    ),
];

/// How tokens are checked offline.
enum LocalKeys {
    Static(Arc<KeySet>),
    Remote(RemoteSource),
}

/// A configuration with its keys parsed, cached by the stored bytes it came from.
struct Parsed {
    config: Config,
    local: Option<LocalKeys>,
}

impl Parsed {
    fn from_config(config: Config) -> Result<Parsed, EngineError> {
        let local = if !config.pem_keys.is_empty() {
            Some(LocalKeys::Static(Arc::new(KeySet::from_pem_keys(
                "pem_keys",
                &config.pem_keys,
            )?)))
        } else if let Some(jwks) = &config.jwks {
            Some(LocalKeys::Static(Arc::new(KeySet::from_jwks(jwks)?)))
        } else if !config.oidc_discovery_url.is_empty() {
            Some(LocalKeys::Remote(RemoteSource::Discovery {
                url: config.oidc_discovery_url.clone(),
                ca_pem: non_empty(&config.oidc_discovery_ca_pem),
            }))
        } else {
            None
        };
        Ok(Parsed { config, local })
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A role.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Role {
    #[serde(default)]
    bound_service_account_names: Vec<String>,
    #[serde(default)]
    bound_service_account_namespaces: Vec<String>,
    #[serde(default)]
    audience: String,
    #[serde(default)]
    alias_name_source: String,
    #[serde(default)]
    token: TokenFields,
}

const ROLE_FIELDS: &[Field] = &[
    Field::str_list(
        "bound_service_account_names",
        "Accepted ServiceAccount names.",
    )
    .required(),
    Field::str_list(
        "bound_service_account_namespaces",
        "Accepted ServiceAccount namespaces.",
    )
    .required(),
    Field::str("audience", "The aud tokens must carry."),
    Field::str(
        "alias_name_source",
        "serviceaccount_uid or serviceaccount_name.",
    ),
];

/// Who a token belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Identity {
    namespace: String,
    name: String,
    uid: String,
    secret_name: String,
}

struct KubernetesAuth {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    outbound: Option<Arc<dyn Outbound>>,
    parsed: parking_lot::Mutex<Option<(Vec<u8>, Arc<Parsed>)>>,
    remote: RemoteKeys,
}

static ROUTES: [Route; 4] = common::role_method_routes(CONFIG_FIELDS, ROLE_FIELDS);

#[async_trait]
impl Backend for KubernetesAuth {
    fn routes(&self) -> &'static [Route] {
        &ROUTES
    }

    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError> {
        common::handle_role_method(self, req).await
    }
}

#[async_trait]
impl RoleMethod for KubernetesAuth {
    fn storage(&self) -> &Arc<dyn Store> {
        &self.storage
    }

    async fn config_read(&self) -> Result<Response, EngineError> {
        let Some(parsed) = self.load_parsed().await? else {
            return Err(EngineError::NotFound(String::new()));
        };
        let c = &parsed.config;
        let mut out = Map::new();
        out.insert("issuer".into(), json!(c.issuer));
        out.insert("pem_keys".into(), json!(c.pem_keys));
        out.insert("jwks".into(), c.jwks.clone().unwrap_or(Value::Null));
        out.insert("oidc_discovery_url".into(), json!(c.oidc_discovery_url));
        out.insert(
            "oidc_discovery_ca_pem".into(),
            json!(c.oidc_discovery_ca_pem),
        );
        out.insert("kubernetes_host".into(), json!(c.kubernetes_host));
        out.insert("kubernetes_ca_cert".into(), json!(c.kubernetes_ca_cert));
        out.insert(
            "token_reviewer_jwt_set".into(),
            json!(!c.token_reviewer_jwt.is_empty()),
        );
        out.insert("disable_local_ca_jwt".into(), json!(c.disable_local_ca_jwt));
        out.insert("clock_skew_leeway".into(), json!(c.clock_skew_leeway));
        Ok(Response::data(out))
    }

    /// A config write replaces the whole configuration, as Vault's does.
    async fn config_write(&self, data: &Map<String, Value>) -> Result<Response, EngineError> {
        let jwks = match data.get("jwks") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(
                serde_json::from_str::<Value>(s)
                    .map_err(|_| EngineError::invalid("jwks must be a JSON Web Key Set"))?,
            ),
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(EngineError::invalid("jwks must be a JSON Web Key Set")),
        };
        let config = Config {
            issuer: params::string(data, "issuer")?
                .unwrap_or("")
                .trim()
                .to_owned(),
            pem_keys: common::pem_list(data, "pem_keys")?.unwrap_or_default(),
            jwks,
            oidc_discovery_url: common::https_url(data, "oidc_discovery_url")?,
            oidc_discovery_ca_pem: common::ca_pem(data, "oidc_discovery_ca_pem")?,
            kubernetes_host: common::https_url(data, "kubernetes_host")?,
            kubernetes_ca_cert: common::ca_pem(data, "kubernetes_ca_cert")?,
            token_reviewer_jwt: params::string(data, "token_reviewer_jwt")?
                .unwrap_or("")
                .trim()
                .to_owned(),
            disable_local_ca_jwt: params::boolean(data, "disable_local_ca_jwt")?.unwrap_or(false),
            clock_skew_leeway: common::leeway(data)?.unwrap_or(DEFAULT_LEEWAY_SECS),
        };
        let local_sources = [
            !config.pem_keys.is_empty(),
            config.jwks.is_some(),
            !config.oidc_discovery_url.is_empty(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if local_sources > 1 {
            return Err(EngineError::invalid(
                "set only one of pem_keys, jwks and oidc_discovery_url",
            ));
        }
        if local_sources == 0 && config.kubernetes_host.is_empty() {
            return Err(EngineError::invalid(
                "one of pem_keys, jwks, oidc_discovery_url or kubernetes_host is required",
            ));
        }
        if config.kubernetes_host.is_empty()
            && (!config.token_reviewer_jwt.is_empty() || !config.kubernetes_ca_cert.is_empty())
        {
            return Err(EngineError::invalid(
                "token_reviewer_jwt and kubernetes_ca_cert need kubernetes_host",
            ));
        }
        if config.token_reviewer_jwt.len() > validator::MAX_JWT_LEN {
            return Err(EngineError::invalid("token_reviewer_jwt is too long"));
        }
        if !config.oidc_discovery_ca_pem.is_empty() && config.oidc_discovery_url.is_empty() {
            return Err(EngineError::invalid(
                "oidc_discovery_ca_pem needs oidc_discovery_url",
            ));
        }
        // Parse now so that a bad key is refused at write time, not at the first login.
        Parsed::from_config(config.clone())?;
        save(&self.storage, CONFIG_KEY, &config).await?;
        Ok(Response::no_content())
    }

    async fn role_read(&self, name: &str) -> Result<Response, EngineError> {
        let Some(role) = load::<Role>(&self.storage, &role_key(name)).await? else {
            return Err(EngineError::NotFound(String::new()));
        };
        let mut out = Map::new();
        out.insert(
            "bound_service_account_names".into(),
            json!(role.bound_service_account_names),
        );
        out.insert(
            "bound_service_account_namespaces".into(),
            json!(role.bound_service_account_namespaces),
        );
        out.insert("audience".into(), json!(role.audience));
        out.insert("alias_name_source".into(), json!(role.alias_name_source));
        role.token.to_api(&mut out);
        Ok(Response::data(out))
    }

    /// Create, or update the fields given (Vault's semantics).
    async fn role_write(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let key = role_key(name);
        let mut role = load::<Role>(&self.storage, &key)
            .await?
            .unwrap_or_else(|| Role {
                alias_name_source: "serviceaccount_uid".into(),
                ..Role::default()
            });
        if let Some(v) = params::string_list(data, "bound_service_account_names")? {
            role.bound_service_account_names = v;
        }
        if let Some(v) = params::string_list(data, "bound_service_account_namespaces")? {
            role.bound_service_account_namespaces = v;
        }
        if let Some(v) = params::string(data, "audience")? {
            role.audience = v.trim().to_owned();
        }
        if let Some(v) = params::string(data, "alias_name_source")? {
            match v {
                "" | "serviceaccount_uid" => role.alias_name_source = "serviceaccount_uid".into(),
                "serviceaccount_name" => role.alias_name_source = v.to_owned(),
                _ => {
                    return Err(EngineError::invalid(
                        "alias_name_source must be \"serviceaccount_uid\" or \"serviceaccount_name\"",
                    ));
                }
            }
        }
        role.token.update(data)?;
        if role.bound_service_account_names.is_empty() {
            return Err(EngineError::invalid(
                "bound_service_account_names must be set",
            ));
        }
        if role.bound_service_account_namespaces.is_empty() {
            return Err(EngineError::invalid(
                "bound_service_account_namespaces must be set",
            ));
        }
        let all = |l: &[String]| l.iter().any(|p| p == "*");
        if all(&role.bound_service_account_names) && all(&role.bound_service_account_namespaces) {
            return Err(EngineError::invalid(
                "bound_service_account_names and bound_service_account_namespaces cannot both be \"*\"",
            ));
        }
        save(&self.storage, &key, &role).await?;
        let mut resp = Response::no_content();
        if role.audience.is_empty() {
            resp.warnings.push(
                "this role has no audience: tokens issued for any audience will be accepted; set \"audience\""
                    .to_owned(),
            );
        }
        Ok(resp)
    }

    async fn login(&self, req: &BackendRequest<'_>) -> Result<Response, EngineError> {
        let data = req.data;
        let (role, jwt) = common::login_params(data, None)?;
        let result = KubernetesAuth::login(self, &role, &jwt).await;
        finish_login("kubernetes", &role, result)
    }
}

impl KubernetesAuth {
    async fn load_parsed(&self) -> Result<Option<Arc<Parsed>>, EngineError> {
        let Some(bytes) = self.storage.get(CONFIG_KEY).await? else {
            return Ok(None);
        };
        if let Some((cached_bytes, parsed)) = &*self.parsed.lock()
            && *cached_bytes == bytes
        {
            return Ok(Some(parsed.clone()));
        }
        let config: Config = serde_json::from_slice(&bytes)
            .map_err(|_| EngineError::Corrupt("kubernetes auth config".into()))?;
        let parsed = Arc::new(Parsed::from_config(config)?);
        *self.parsed.lock() = Some((bytes, parsed.clone()));
        Ok(Some(parsed))
    }

    async fn login(&self, role_name: &str, jwt: &str) -> Result<LoginGrant, Failure> {
        if validate_role_name(role_name).is_err() {
            return Err(Rejection::UnknownRole.into());
        }
        let Some(role) = load::<Role>(&self.storage, &role_key(role_name)).await? else {
            return Err(Rejection::UnknownRole.into());
        };
        let Some(parsed) = self.load_parsed().await? else {
            return Err(
                EngineError::invalid("the kubernetes auth method is not configured").into(),
            );
        };
        let config = &parsed.config;
        if jwt.len() > validator::MAX_JWT_LEN {
            return Err(Rejection::TooLong.into());
        }
        if jwt.split('.').count() != 3 {
            return Err(Rejection::Malformed.into());
        }
        let audiences = (!role.audience.is_empty()).then(|| vec![role.audience.clone()]);

        let mut identity: Option<Identity> = None;
        if let Some(local) = &parsed.local {
            let header = validator::peek_header(jwt)?;
            let (keys, discovered_issuer) = match local {
                LocalKeys::Static(keys) => (keys.clone(), None),
                LocalKeys::Remote(source) => {
                    let now = self.clock.unix_seconds();
                    let r = self
                        .remote
                        .get(self.outbound.as_ref(), source, now, &header)
                        .await?;
                    (r.keys, r.issuer)
                }
            };
            let verified = keys.verify(jwt, &SigAlg::ALL)?;
            let issuer = non_empty(&config.issuer).or(discovered_issuer);
            validator::check_claims(
                &verified.claims,
                &Expectations {
                    now: self.clock.unix_seconds(),
                    leeway: config.clock_skew_leeway,
                    issuer: issuer.as_deref(),
                    audiences: audiences.as_deref(),
                },
            )?;
            let id = identity_from_claims(&verified.claims)?;
            check_bindings(&role, &id)?;
            identity = Some(id);
        }
        if !config.kubernetes_host.is_empty() {
            let reviewed = self.token_review(config, jwt, &role).await?;
            if let Some(id) = &identity
                && (id.namespace != reviewed.namespace || id.name != reviewed.name)
            {
                return Err(Rejection::ReviewUserMismatch.into());
            }
            check_bindings(&role, &reviewed)?;
            identity = Some(match identity {
                Some(mut id) => {
                    if id.uid.is_empty() {
                        id.uid = reviewed.uid;
                    }
                    id
                }
                None => reviewed,
            });
        }
        let Some(id) = identity else {
            return Err(
                EngineError::invalid("the kubernetes auth method is not configured").into(),
            );
        };
        let mut grant = role.token.grant();
        grant.display_name = format!("kubernetes-{}-{}", id.namespace, id.name);
        grant.metadata.insert("role".into(), role_name.to_owned());
        grant
            .metadata
            .insert("service_account_name".into(), id.name.clone());
        grant
            .metadata
            .insert("service_account_namespace".into(), id.namespace.clone());
        grant
            .metadata
            .insert("service_account_secret_name".into(), id.secret_name.clone());
        grant
            .metadata
            .insert("service_account_uid".into(), id.uid.clone());
        Ok(grant)
    }

    /// Ask the API server whether the token is (still) valid and whose it is.
    async fn token_review(
        &self,
        config: &Config,
        jwt: &str,
        role: &Role,
    ) -> Result<Identity, Failure> {
        let outbound = self.outbound.as_ref().ok_or_else(|| {
            EngineError::Unavailable("outbound HTTPS is not available for TokenReview".into())
        })?;
        let url = format!(
            "{}{TOKEN_REVIEW_PATH}",
            config.kubernetes_host.trim_end_matches('/')
        );
        let mut spec = Map::new();
        spec.insert("token".into(), json!(jwt));
        if !role.audience.is_empty() {
            spec.insert("audiences".into(), json!([role.audience]));
        }
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": spec,
        });
        let self_review = config.token_reviewer_jwt.is_empty();
        let bearer = if self_review {
            jwt
        } else {
            config.token_reviewer_jwt.as_str()
        };
        let ca = non_empty(&config.kubernetes_ca_cert);
        let resp = outbound
            .post_json(&url, ca.as_deref(), Some(bearer), &body)
            .await?;
        match resp.status {
            200 | 201 => {}
            401 | 403 if self_review => return Err(Rejection::ReviewUnauthorized.into()),
            401 | 403 => {
                return Err(EngineError::Unavailable(format!(
                    "TokenReview refused the reviewer credentials (HTTP {}); check token_reviewer_jwt and its system:auth-delegator binding",
                    resp.status
                ))
                .into());
            }
            other => {
                return Err(EngineError::Unavailable(format!(
                    "TokenReview failed with HTTP {other}"
                ))
                .into());
            }
        }
        let status = resp.body.get("status").and_then(Value::as_object);
        let Some(status) = status else {
            return Err(
                EngineError::Unavailable("TokenReview answered without a status".into()).into(),
            );
        };
        if status.get("authenticated").and_then(Value::as_bool) != Some(true) {
            return Err(Rejection::ReviewNotAuthenticated.into());
        }
        let user = status.get("user").and_then(Value::as_object);
        let username = user
            .and_then(|u| u.get("username"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let (namespace, name) =
            parse_service_account(username).ok_or(Rejection::ReviewUserMismatch)?;
        if !role.audience.is_empty() {
            let confirmed = status
                .get("audiences")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(role.audience.as_str())));
            if !confirmed {
                return Err(Rejection::ReviewAudience.into());
            }
        }
        let uid = user
            .and_then(|u| u.get("uid"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        Ok(Identity {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid,
            secret_name: String::new(),
        })
    }
}

fn check_bindings(role: &Role, id: &Identity) -> Result<(), Rejection> {
    if !role
        .bound_service_account_namespaces
        .iter()
        .any(|p| validator::glob_match(p, &id.namespace))
    {
        return Err(Rejection::NamespaceNotBound);
    }
    if !role
        .bound_service_account_names
        .iter()
        .any(|p| validator::glob_match(p, &id.name))
    {
        return Err(Rejection::ServiceAccountNotBound);
    }
    Ok(())
}

/// `system:serviceaccount:<namespace>:<name>` → `(namespace, name)`, both valid
/// Kubernetes names (DNS labels and subdomains).
fn parse_service_account(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix(SA_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    let label = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    (label(namespace, 63) && !namespace.contains('.') && label(name, 253))
        .then_some((namespace, name))
}

fn str_claim<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    name: &'static str,
) -> Result<Option<&'a str>, Rejection> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Rejection::InvalidClaim(name)),
    }
}

/// The service account a verified token names, cross-checked with the `kubernetes.io`
/// claim block (projected tokens) or the legacy `kubernetes.io/serviceaccount/*` claims
/// (secret-based tokens) when present.
fn identity_from_claims(claims: &Map<String, Value>) -> Result<Identity, Rejection> {
    let sub = str_claim(claims, "sub", "sub")?.ok_or(Rejection::MissingClaim("sub"))?;
    let (namespace, name) = parse_service_account(sub).ok_or(Rejection::NotServiceAccount)?;
    let mut id = Identity {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ..Identity::default()
    };
    let same = |v: Option<&str>, want: &str, claim: &'static str| match v {
        Some(v) if v != want => Err(Rejection::ClaimMismatch(claim)),
        _ => Ok(()),
    };
    match claims.get("kubernetes.io") {
        None | Some(Value::Null) => {}
        Some(Value::Object(k8s)) => {
            same(
                str_claim(k8s, "namespace", "kubernetes.io.namespace")?,
                namespace,
                "kubernetes.io.namespace",
            )?;
            match k8s.get("serviceaccount") {
                None | Some(Value::Null) => {}
                Some(Value::Object(sa)) => {
                    let sa_name = str_claim(sa, "name", "kubernetes.io.serviceaccount.name")?;
                    if sa_name != Some(name) {
                        return Err(Rejection::ClaimMismatch(
                            "kubernetes.io.serviceaccount.name",
                        ));
                    }
                    if let Some(uid) = str_claim(sa, "uid", "kubernetes.io.serviceaccount.uid")? {
                        uid.clone_into(&mut id.uid);
                    }
                }
                Some(_) => return Err(Rejection::InvalidClaim("kubernetes.io.serviceaccount")),
            }
            match k8s.get("secret") {
                None | Some(Value::Null) => {}
                Some(Value::Object(secret)) => {
                    if let Some(s) = str_claim(secret, "name", "kubernetes.io.secret.name")? {
                        s.clone_into(&mut id.secret_name);
                    }
                }
                Some(_) => return Err(Rejection::InvalidClaim("kubernetes.io.secret")),
            }
        }
        Some(_) => return Err(Rejection::InvalidClaim("kubernetes.io")),
    }
    same(
        str_claim(
            claims,
            "kubernetes.io/serviceaccount/namespace",
            "kubernetes.io/serviceaccount/namespace",
        )?,
        namespace,
        "kubernetes.io/serviceaccount/namespace",
    )?;
    same(
        str_claim(
            claims,
            "kubernetes.io/serviceaccount/service-account.name",
            "kubernetes.io/serviceaccount/service-account.name",
        )?,
        name,
        "kubernetes.io/serviceaccount/service-account.name",
    )?;
    if id.uid.is_empty()
        && let Some(uid) = str_claim(
            claims,
            "kubernetes.io/serviceaccount/service-account.uid",
            "kubernetes.io/serviceaccount/service-account.uid",
        )?
    {
        uid.clone_into(&mut id.uid);
    }
    if id.secret_name.is_empty()
        && let Some(s) = str_claim(
            claims,
            "kubernetes.io/serviceaccount/secret.name",
            "kubernetes.io/serviceaccount/secret.name",
        )?
    {
        s.clone_into(&mut id.secret_name);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_subjects() {
        assert_eq!(
            parse_service_account("system:serviceaccount:team-a:app"),
            Some(("team-a", "app"))
        );
        assert_eq!(parse_service_account("system:serviceaccount:team-a"), None);
        assert_eq!(parse_service_account("system:serviceaccount::app"), None);
        assert_eq!(parse_service_account("system:serviceaccount:a:b:c"), None);
        assert_eq!(parse_service_account("system:serviceaccount:A:b"), None);
        assert_eq!(parse_service_account("system:node:n1"), None);
        assert_eq!(parse_service_account("system:serviceaccount:a:*"), None);
    }

    #[test]
    fn claim_block_must_agree_with_the_subject() {
        let claims = |v: Value| -> Map<String, Value> { serde_json::from_value(v).unwrap() };
        let ok = claims(json!({
            "sub": "system:serviceaccount:team-a:app",
            "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "app", "uid": "u-1"}}
        }));
        let id = identity_from_claims(&ok).unwrap();
        assert_eq!((id.namespace.as_str(), id.uid.as_str()), ("team-a", "u-1"));
        let bad_ns = claims(json!({
            "sub": "system:serviceaccount:team-a:app",
            "kubernetes.io": {"namespace": "team-b"}
        }));
        assert_eq!(
            identity_from_claims(&bad_ns),
            Err(Rejection::ClaimMismatch("kubernetes.io.namespace"))
        );
        let bad_sa = claims(json!({
            "sub": "system:serviceaccount:team-a:app",
            "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "other"}}
        }));
        assert!(identity_from_claims(&bad_sa).is_err());
        let legacy = claims(json!({
            "sub": "system:serviceaccount:team-a:app",
            "kubernetes.io/serviceaccount/namespace": "team-a",
            "kubernetes.io/serviceaccount/secret.name": "app-token-x",
            "kubernetes.io/serviceaccount/service-account.uid": "u-2"
        }));
        let id = identity_from_claims(&legacy).unwrap();
        assert_eq!(
            (id.secret_name.as_str(), id.uid.as_str()),
            ("app-token-x", "u-2")
        );
    }
}
