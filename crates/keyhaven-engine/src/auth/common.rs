//! What the auth methods share: the token fields of a role,
//! role names, JSON records in the mount's storage, and refusing a login.

use std::sync::Arc;

use async_trait::async_trait;

use keyhaven_storage::Store;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::LoginGrant;
use super::validator::Rejection;
use crate::backend::BackendRequest;
use crate::error::EngineError;
use crate::params;
use crate::request::{Operation, Response};
use crate::route::{Field, Ops, Route};

/// The token parameters every role accepts (Vault's `tokenutil` fields we support),
/// including the deprecated aliases `policies`, `ttl`, `max_ttl` and `period`.
pub(crate) const TOKEN_FIELDS: &[Field] = &[
    Field::str_list("token_policies", "Policies of the tokens logins get."),
    Field::str_list("policies", "Deprecated: token_policies."),
    Field::duration("token_ttl", "TTL of the tokens logins get."),
    Field::duration("ttl", "Deprecated: token_ttl."),
    Field::duration("token_max_ttl", "Maximum TTL of the tokens logins get."),
    Field::duration("max_ttl", "Deprecated: token_max_ttl."),
    Field::duration(
        "token_period",
        "Period of the tokens logins get (periodic tokens).",
    ),
    Field::duration("period", "Deprecated: token_period."),
    Field::uint(
        "token_num_uses",
        "Uses of the tokens logins get (0: unlimited).",
    ),
    Field::bool("token_no_default_policy", "Leave out the default policy."),
    Field::str("token_type", "service or default-service."),
    Field::str_list(
        "token_bound_cidrs",
        "CIDR blocks the tokens work from (empty: anywhere).",
    ),
    Field::str_list("bound_cidrs", "Deprecated: token_bound_cidrs."),
    Field::duration(
        "token_explicit_max_ttl",
        "Not supported: must be 0 (a restriction is never dropped silently).",
    ),
];

/// The fields of a login.
pub(crate) const LOGIN_FIELDS: &[Field] = &[
    Field::str("role", "The role to log in with.").required(),
    Field::str("jwt", "The signed token to exchange.").required(),
];

/// The routes of a method with a config, named roles and a login (jwt, kubernetes),
/// given each one's own fields. None is declared pure: an auth method's reads are
/// recorded before they run, like its writes.
pub(crate) const fn role_method_routes(
    config: &'static [Field],
    role: &'static [Field],
) -> [Route; 4] {
    role_method_routes_at(
        config,
        ("role", "role/{name}"),
        role,
        LOGIN_FIELDS,
        "Exchange a signed token for a keyhaven token.",
    )
}

/// [`role_method_routes`] with the roles under other paths (`certs`, `certs/{name}`)
/// and another login: `roles` is the list path and the path of one role, which must
/// capture `name` and agree with [`RoleMethod::ROLES`].
pub(crate) const fn role_method_routes_at(
    config: &'static [Field],
    roles: (&'static str, &'static str),
    role: &'static [Field],
    login: &'static [Field],
    login_summary: &'static str,
) -> [Route; 4] {
    [
        Route::new("config", "The method's configuration.")
            .ops(Ops::READ)
            .ops(Ops::WRITE)
            .fields(config),
        Route::new(roles.0, "List the roles.").ops(Ops::LIST),
        Route::new(roles.1, "A role: who may log in, and the token they get.")
            .ops(Ops::READ)
            .ops(Ops::WRITE.and(Ops::DELETE))
            .fields(role)
            .shared_fields(TOKEN_FIELDS),
        Route::new("login", login_summary)
            .ops(Ops::WRITE)
            .fields(login)
            .unauthenticated(),
    ]
}

/// What a method does on [`role_method_routes`] (jwt, kubernetes) or
/// [`role_method_routes_at`] (cert).
#[async_trait]
pub(crate) trait RoleMethod: Send + Sync {
    /// The list path and the path of one role, as given to the route table.
    const ROLES: (&'static str, &'static str) = ("role", "role/{name}");
    /// The storage prefix of the roles.
    const ROLE_PREFIX: &'static str = "role/";
    /// Whether role names are lowercased (Vault's cert method does).
    const LOWERCASE_NAMES: bool = false;
    /// The method's storage.
    fn storage(&self) -> &Arc<dyn Store>;
    /// `config`, read.
    async fn config_read(&self) -> Result<Response, EngineError>;
    /// `config`, write.
    async fn config_write(&self, data: &Map<String, Value>) -> Result<Response, EngineError>;
    /// `role/<name>`, read (the name is valid).
    async fn role_read(&self, name: &str) -> Result<Response, EngineError>;
    /// `role/<name>`, write (the name is valid).
    async fn role_write(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError>;
    /// `login`.
    async fn login(&self, req: &BackendRequest<'_>) -> Result<Response, EngineError>;
}

/// Serve a request matched to one of [`role_method_routes`].
pub(crate) async fn handle_role_method<M: RoleMethod>(
    method: &M,
    req: BackendRequest<'_>,
) -> Result<Response, EngineError> {
    use Operation::{Create, Delete, List, Read, Update};
    let (roles, role) = M::ROLES;
    match (req.route.pattern, req.operation) {
        ("config", Read) => method.config_read().await,
        ("config", Create | Update) => method.config_write(req.data).await,
        (p, List) if p == roles => list_under(method.storage(), M::ROLE_PREFIX).await,
        ("login", Create | Update) => method.login(&req).await,
        (p, op) if p == role => {
            let name = if M::LOWERCASE_NAMES {
                req.capture("name").to_lowercase()
            } else {
                req.capture("name").to_owned()
            };
            let name = name.as_str();
            validate_role_name(name)?;
            match op {
                Read => method.role_read(name).await,
                Create | Update => method.role_write(name, req.data).await,
                Delete => {
                    let key = format!("{}{name}", M::ROLE_PREFIX);
                    method.storage().delete(&key).await?;
                    Ok(Response::no_content())
                }
                _ => Err(EngineError::UnsupportedOperation),
            }
        }
        _ => Err(EngineError::UnsupportedOperation),
    }
}

/// The token a role's logins get.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct TokenFields {
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub ttl: u64,
    #[serde(default)]
    pub max_ttl: u64,
    #[serde(default)]
    pub period: u64,
    #[serde(default)]
    pub num_uses: u64,
    #[serde(default)]
    pub no_default_policy: bool,
    /// Blocks the tokens work from (empty: anywhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_cidrs: Vec<crate::cidr::Cidr>,
}

impl TokenFields {
    /// Apply the token parameters present in `data`.
    pub(crate) fn update(&mut self, data: &Map<String, Value>) -> Result<(), EngineError> {
        // Restrictions this server cannot enforce are refused, not stored and ignored.
        if params::duration_secs(data, "token_explicit_max_ttl")?.is_some_and(|v| v > 0) {
            return Err(EngineError::invalid(
                "token_explicit_max_ttl is not supported",
            ));
        }
        let policies = match params::string_list(data, "token_policies")? {
            Some(p) => Some(p),
            None => params::string_list(data, "policies")?,
        };
        if let Some(policies) = policies {
            let mut out: Vec<String> = Vec::with_capacity(policies.len());
            for p in policies {
                let p = p.trim().to_ascii_lowercase();
                if p.is_empty() || out.contains(&p) {
                    continue;
                }
                if p == "root" {
                    return Err(EngineError::invalid(
                        "auth methods cannot grant the root policy",
                    ));
                }
                out.push(p);
            }
            self.policies = out;
        }
        let pick = |a: &str, b: &str| -> Result<Option<u64>, EngineError> {
            match params::duration_secs(data, a)? {
                Some(v) => Ok(Some(v)),
                None => params::duration_secs(data, b),
            }
        };
        if let Some(v) = pick("token_ttl", "ttl")? {
            self.ttl = v;
        }
        if let Some(v) = pick("token_max_ttl", "max_ttl")? {
            self.max_ttl = v;
        }
        if let Some(v) = pick("token_period", "period")? {
            self.period = v;
        }
        if let Some(v) = params::uint(data, "token_num_uses")? {
            self.num_uses = v;
        }
        if let Some(v) = params::boolean(data, "token_no_default_policy")? {
            self.no_default_policy = v;
        }
        let cidrs = match params::string_list(data, "token_bound_cidrs")? {
            Some(c) => Some(("token_bound_cidrs", c)),
            None => params::string_list(data, "bound_cidrs")?.map(|c| ("bound_cidrs", c)),
        };
        if let Some((param, list)) = cidrs {
            self.bound_cidrs = crate::cidr::parse_list(param, &list)?;
        }
        match params::string(data, "token_type")? {
            None | Some("" | "default" | "service") => {}
            Some(_) => {
                return Err(EngineError::invalid(
                    "token_type must be \"service\" or \"default\"",
                ));
            }
        }
        if self.max_ttl > 0 && self.ttl > self.max_ttl {
            return Err(EngineError::invalid(
                "token_ttl cannot be greater than token_max_ttl",
            ));
        }
        Ok(())
    }

    /// Add the token fields to a role's read response, as Vault shows them.
    pub(crate) fn to_api(&self, out: &mut Map<String, Value>) {
        out.insert("token_policies".into(), json!(self.policies));
        out.insert("policies".into(), json!(self.policies));
        out.insert("token_ttl".into(), json!(self.ttl));
        out.insert("ttl".into(), json!(self.ttl));
        out.insert("token_max_ttl".into(), json!(self.max_ttl));
        out.insert("max_ttl".into(), json!(self.max_ttl));
        out.insert("token_period".into(), json!(self.period));
        out.insert("period".into(), json!(self.period));
        out.insert("token_num_uses".into(), json!(self.num_uses));
        out.insert(
            "token_no_default_policy".into(),
            json!(self.no_default_policy),
        );
        out.insert("token_type".into(), json!("default"));
        out.insert("token_explicit_max_ttl".into(), json!(0));
        out.insert("token_bound_cidrs".into(), json!(self.bound_cidrs));
    }

    /// Add the token fields as the methods built into Vault (userpass, cert) show them:
    /// the current names only.
    pub(crate) fn to_api_current(&self, out: &mut Map<String, Value>) {
        out.insert("token_bound_cidrs".into(), json!([]));
        out.insert("token_explicit_max_ttl".into(), json!(0));
        out.insert("token_max_ttl".into(), json!(self.max_ttl));
        out.insert(
            "token_no_default_policy".into(),
            json!(self.no_default_policy),
        );
        out.insert("token_num_uses".into(), json!(self.num_uses));
        out.insert("token_period".into(), json!(self.period));
        out.insert("token_policies".into(), json!(self.policies));
        out.insert("token_strictly_bind_ip".into(), json!(false));
        out.insert("token_ttl".into(), json!(self.ttl));
        out.insert("token_type".into(), json!("default"));
    }

    /// The grant of a successful login, before metadata and display name.
    pub(crate) fn grant(&self) -> LoginGrant {
        LoginGrant {
            policies: self.policies.clone(),
            no_default_policy: self.no_default_policy,
            ttl: self.ttl,
            max_ttl: self.max_ttl,
            period: self.period,
            renewable: true,
            num_uses: self.num_uses,
            bound_cidrs: self.bound_cidrs.clone(),
            ..LoginGrant::default()
        }
    }
}

/// Refuse role names that are empty, too long, or have characters other than
/// letters, digits, `_`, `-`, `.` and `@`.
pub(crate) fn validate_role_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid(
            "invalid role name: use 1 to 128 letters, digits, '_', '-', '.' or '@'",
        ))
    }
}

/// Storage key of a role.
pub(crate) fn role_key(name: &str) -> String {
    format!("role/{name}")
}

/// Read a JSON record.
pub(crate) async fn load<T: DeserializeOwned>(
    store: &Arc<dyn Store>,
    key: &str,
) -> Result<Option<T>, EngineError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| EngineError::Corrupt(format!("auth record {key:?} cannot be decoded"))),
    }
}

/// Write a JSON record.
pub(crate) async fn save<T: Serialize>(
    store: &Arc<dyn Store>,
    key: &str,
    value: &T,
) -> Result<(), EngineError> {
    let bytes =
        serde_json::to_vec(value).map_err(|_| EngineError::Encode("an auth method record"))?;
    store.put(key, bytes).await?;
    Ok(())
}

/// The names stored under `prefix` (`role/`, `user/`), or a 404 when there are none.
pub(crate) async fn list_under(
    store: &Arc<dyn Store>,
    prefix: &str,
) -> Result<Response, EngineError> {
    let keys = crate::core::list_all(store.as_ref(), prefix).await?;
    if keys.is_empty() {
        return Err(EngineError::NotFound(String::new()));
    }
    let mut out = Map::new();
    out.insert(
        "keys".into(),
        Value::Array(keys.into_iter().map(Value::String).collect()),
    );
    Ok(Response::data(out))
}

/// Why a login did not produce a grant: a refusal (shown as `permission denied`) or an
/// error the caller may see (bad request, unavailable issuer, storage).
#[derive(Debug)]
pub(crate) enum Failure {
    Denied(Rejection),
    Error(EngineError),
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure::Error(e)
    }
}

impl From<Rejection> for Failure {
    fn from(r: Rejection) -> Self {
        Failure::Denied(r)
    }
}

/// Turn a login failure into the caller's error, logging the reason of a refusal. The
/// role name is the caller's input: only a bounded, printable prefix is logged.
pub(crate) fn finish_login(
    method: &'static str,
    role: &str,
    result: Result<LoginGrant, Failure>,
) -> Result<Response, EngineError> {
    match result {
        Ok(grant) => {
            tracing::info!(target: "keyhaven::auth", method, role = %printable(role), "login accepted");
            Ok(Response {
                login: Some(grant),
                ..Response::default()
            })
        }
        Err(Failure::Denied(reason)) => {
            tracing::warn!(target: "keyhaven::auth", method, role = %printable(role), %reason, "login refused");
            Err(EngineError::PermissionDenied)
        }
        Err(Failure::Error(e)) => {
            tracing::warn!(target: "keyhaven::auth", method, role = %printable(role), error = %e, "login failed");
            Err(e)
        }
    }
}

/// A bounded, printable prefix of a caller's input, for logs.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The `role` and `jwt` parameters of a login.
pub(crate) fn login_params(
    data: &Map<String, Value>,
    default_role: Option<&str>,
) -> Result<(String, String), EngineError> {
    let role = params::string(data, "role")?
        .filter(|r| !r.is_empty())
        .or(default_role.filter(|r| !r.is_empty()))
        .ok_or_else(|| EngineError::invalid("missing role"))?
        .to_owned();
    let jwt = params::string(data, "jwt")?
        .filter(|j| !j.is_empty())
        .ok_or_else(|| EngineError::invalid("missing jwt"))?
        .to_owned();
    Ok((role, jwt))
}

/// A list of PEM texts from a parameter given as a JSON list or as one string (as
/// `pem_keys=@file` sends it); each entry may hold several PEM blocks.
pub(crate) fn pem_list(
    data: &Map<String, Value>,
    key: &str,
) -> Result<Option<Vec<String>>, EngineError> {
    let entries = match data.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    EngineError::invalid(format!("{key} must be a list of PEM strings"))
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(EngineError::invalid(format!(
                "{key} must be a list of PEM strings"
            )));
        }
    };
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let blocks = super::validator::pem_blocks(entry)
            .ok_or_else(|| EngineError::invalid(format!("{key}[{i}] is not PEM-encoded")))?;
        out.extend(blocks.into_iter().map(|(_, b)| b.to_owned()));
    }
    Ok(Some(out))
}

/// An optional `https://` URL parameter.
pub(crate) fn https_url(data: &Map<String, Value>, key: &str) -> Result<String, EngineError> {
    let url = params::string(data, key)?.unwrap_or("").trim().to_owned();
    if !url.is_empty() && !super::validator::is_https_url(&url) {
        return Err(EngineError::invalid(format!(
            "{key} must be an https:// URL"
        )));
    }
    Ok(url)
}

/// An optional PEM CA bundle parameter.
pub(crate) fn ca_pem(data: &Map<String, Value>, key: &str) -> Result<String, EngineError> {
    let pem = params::string(data, key)?.unwrap_or("").trim().to_owned();
    if pem.is_empty() {
        return Ok(pem);
    }
    match super::validator::pem_blocks(&pem) {
        Some(blocks) if !blocks.is_empty() && blocks.iter().all(|(l, _)| *l == "CERTIFICATE") => {
            Ok(pem)
        }
        _ => Err(EngineError::invalid(format!(
            "{key} must hold PEM-encoded certificates"
        ))),
    }
}

/// The `clock_skew_leeway` parameter (seconds, at most
/// [`super::validator::MAX_LEEWAY_SECS`]).
pub(crate) fn leeway(data: &Map<String, Value>) -> Result<Option<u64>, EngineError> {
    match params::duration_secs(data, "clock_skew_leeway")? {
        Some(v) if v > super::validator::MAX_LEEWAY_SECS => Err(EngineError::invalid(format!(
            "clock_skew_leeway may be at most {}s",
            super::validator::MAX_LEEWAY_SECS
        ))),
        other => Ok(other),
    }
}
