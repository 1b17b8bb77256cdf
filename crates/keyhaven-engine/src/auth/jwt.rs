//! The `jwt` auth method (also mounted as `oidc`): log in with any OIDC-style JWT,
//! verified offline on the same validator as `kubernetes`.
//!
//! Endpoints, relative to the mount (Vault/OpenBao's shapes, `role_type` `jwt` only):
//! - `config` (read, write): exactly one key source, `jwt_validation_pubkeys` (PEM),
//!   `jwks_url` (+ `jwks_ca_pem`) or `oidc_discovery_url` (+ `oidc_discovery_ca_pem`);
//!   `bound_issuer`, `jwt_supported_algs` (a subset of RS256 and ES256), `default_role`.
//! - `role/<name>` (read, write, delete) and `LIST role`: `bound_audiences`,
//!   `bound_subject`, `bound_claims` (+ `bound_claims_type` `string` or `glob`),
//!   `user_claim` (required), `claim_mappings` (claim → token metadata key),
//!   `clock_skew_leeway` and the token fields.
//! - `login` (no token needed): `{role, jwt}` (`role` defaults to `default_role`).
//!
//! Invariants:
//! - the signature is checked with the algorithm its key pins, `exp` is required and all
//!   times come from the engine's clock;
//! - `iss` must equal `bound_issuer` when set, else the issuer named by the discovery
//!   document in discovery mode;
//! - with `bound_audiences`, `aud` must contain one of them; without, a token that has
//!   an `aud` is refused (Vault's rule), so a role never accepts tokens meant for others
//!   by accident;
//! - a role needs at least one of `bound_audiences`, `bound_subject` or `bound_claims`;
//! - every refusal is `permission denied`; the reason is logged without the token.

use std::collections::BTreeMap;
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
use crate::route::{Field, FieldType, Route};

const CONFIG_KEY: &str = "config";

/// Build a `jwt` (or `oidc`) auth backend for a mount.
pub fn factory(ctx: BackendContext) -> Result<Arc<dyn Backend>, EngineError> {
    Ok(Arc::new(JwtAuth {
        storage: ctx.storage,
        clock: ctx.clock,
        outbound: ctx.outbound,
        parsed: parking_lot::Mutex::new(None),
        remote: RemoteKeys::default(),
    }))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Config {
    #[serde(default)]
    jwt_validation_pubkeys: Vec<String>,
    #[serde(default)]
    jwks_url: String,
    #[serde(default)]
    jwks_ca_pem: String,
    #[serde(default)]
    oidc_discovery_url: String,
    #[serde(default)]
    oidc_discovery_ca_pem: String,
    #[serde(default)]
    bound_issuer: String,
    #[serde(default)]
    jwt_supported_algs: Vec<String>,
    #[serde(default)]
    default_role: String,
}

const CONFIG_FIELDS: &[Field] = &[
    Field::any(
        "jwt_validation_pubkeys",
        "PEM public keys that sign tokens.",
    ),
    Field::str("jwks_url", "Where the signing keys are published (https)."),
    Field::str("jwks_ca_pem", "CA certificate for jwks_url."),
    Field::str(
        "oidc_discovery_url",
        "The issuer's OIDC discovery URL (https).",
    ),
    Field::str(
        "oidc_discovery_ca_pem",
        "CA certificate for oidc_discovery_url.",
    ),
    Field::str("bound_issuer", "The iss claim tokens must carry."),
    Field::str_list("jwt_supported_algs", "Accepted signature algorithms."),
    Field::str("default_role", "The role of a login that names none."),
];

enum Keys {
    Static(Arc<KeySet>),
    Remote(RemoteSource),
}

struct Parsed {
    config: Config,
    keys: Keys,
    algs: Vec<SigAlg>,
}

impl Parsed {
    fn from_config(config: Config) -> Result<Parsed, EngineError> {
        let keys = if !config.jwt_validation_pubkeys.is_empty() {
            Keys::Static(Arc::new(KeySet::from_pem_keys(
                "jwt_validation_pubkeys",
                &config.jwt_validation_pubkeys,
            )?))
        } else if !config.jwks_url.is_empty() {
            Keys::Remote(RemoteSource::Jwks {
                url: config.jwks_url.clone(),
                ca_pem: (!config.jwks_ca_pem.is_empty()).then(|| config.jwks_ca_pem.clone()),
            })
        } else if !config.oidc_discovery_url.is_empty() {
            Keys::Remote(RemoteSource::Discovery {
                url: config.oidc_discovery_url.clone(),
                ca_pem: (!config.oidc_discovery_ca_pem.is_empty())
                    .then(|| config.oidc_discovery_ca_pem.clone()),
            })
        } else {
            return Err(EngineError::invalid(
                "exactly one of jwt_validation_pubkeys, jwks_url and oidc_discovery_url is required",
            ));
        };
        let algs = if config.jwt_supported_algs.is_empty() {
            SigAlg::ALL.to_vec()
        } else {
            config
                .jwt_supported_algs
                .iter()
                .map(|a| {
                    SigAlg::parse(a).ok_or_else(|| {
                        EngineError::invalid(format!(
                            "unsupported signing algorithm {a:?}: use RS256 or ES256"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Parsed { config, keys, algs })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Role {
    #[serde(default)]
    bound_audiences: Vec<String>,
    #[serde(default)]
    bound_subject: String,
    #[serde(default)]
    bound_claims: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    bound_claims_glob: bool,
    #[serde(default)]
    user_claim: String,
    #[serde(default)]
    claim_mappings: BTreeMap<String, String>,
    #[serde(default = "default_leeway")]
    clock_skew_leeway: u64,
    #[serde(default)]
    token: TokenFields,
}

fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECS
}

const ROLE_FIELDS: &[Field] = &[
    Field::str("role_type", "jwt (the only type).").default("jwt"),
    Field::str_list("bound_audiences", "Accepted aud values."),
    Field::str("bound_subject", "The sub claim tokens must carry."),
    Field::any(
        "bound_claims",
        "Claims tokens must carry: names to a value or a list.",
    ),
    Field::str("bound_claims_type", "string or glob.").default("string"),
    Field::str("user_claim", "The claim that names the user.").required(),
    Field::new(
        "claim_mappings",
        FieldType::StrMap,
        "Claims copied into token metadata.",
    ),
    Field::any(
        "clock_skew_leeway",
        "Allowed clock skew, in seconds or a duration.",
    ),
];

struct JwtAuth {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    outbound: Option<Arc<dyn Outbound>>,
    parsed: parking_lot::Mutex<Option<(Vec<u8>, Arc<Parsed>)>>,
    remote: RemoteKeys,
}

static ROUTES: [Route; 4] = common::role_method_routes(CONFIG_FIELDS, ROLE_FIELDS);

#[async_trait]
impl Backend for JwtAuth {
    fn routes(&self) -> &'static [Route] {
        &ROUTES
    }

    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError> {
        common::handle_role_method(self, req).await
    }
}

#[async_trait]
impl RoleMethod for JwtAuth {
    fn storage(&self) -> &Arc<dyn Store> {
        &self.storage
    }

    async fn config_read(&self) -> Result<Response, EngineError> {
        let Some(parsed) = self.load_parsed().await? else {
            return Err(EngineError::NotFound(String::new()));
        };
        let c = &parsed.config;
        let mut out = Map::new();
        out.insert(
            "jwt_validation_pubkeys".into(),
            json!(c.jwt_validation_pubkeys),
        );
        out.insert("jwks_url".into(), json!(c.jwks_url));
        out.insert("jwks_ca_pem".into(), json!(c.jwks_ca_pem));
        out.insert("oidc_discovery_url".into(), json!(c.oidc_discovery_url));
        out.insert(
            "oidc_discovery_ca_pem".into(),
            json!(c.oidc_discovery_ca_pem),
        );
        out.insert("bound_issuer".into(), json!(c.bound_issuer));
        out.insert("jwt_supported_algs".into(), json!(c.jwt_supported_algs));
        out.insert("default_role".into(), json!(c.default_role));
        Ok(Response::data(out))
    }

    async fn config_write(&self, data: &Map<String, Value>) -> Result<Response, EngineError> {
        let config = Config {
            jwt_validation_pubkeys: common::pem_list(data, "jwt_validation_pubkeys")?
                .unwrap_or_default(),
            jwks_url: common::https_url(data, "jwks_url")?,
            jwks_ca_pem: common::ca_pem(data, "jwks_ca_pem")?,
            oidc_discovery_url: common::https_url(data, "oidc_discovery_url")?,
            oidc_discovery_ca_pem: common::ca_pem(data, "oidc_discovery_ca_pem")?,
            bound_issuer: params::string(data, "bound_issuer")?
                .unwrap_or("")
                .trim()
                .to_owned(),
            jwt_supported_algs: params::string_list(data, "jwt_supported_algs")?
                .unwrap_or_default(),
            default_role: params::string(data, "default_role")?
                .unwrap_or("")
                .trim()
                .to_owned(),
        };
        let sources = [
            !config.jwt_validation_pubkeys.is_empty(),
            !config.jwks_url.is_empty(),
            !config.oidc_discovery_url.is_empty(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources != 1 {
            return Err(EngineError::invalid(
                "exactly one of jwt_validation_pubkeys, jwks_url and oidc_discovery_url is required",
            ));
        }
        if !config.jwks_ca_pem.is_empty() && config.jwks_url.is_empty() {
            return Err(EngineError::invalid("jwks_ca_pem needs jwks_url"));
        }
        if !config.oidc_discovery_ca_pem.is_empty() && config.oidc_discovery_url.is_empty() {
            return Err(EngineError::invalid(
                "oidc_discovery_ca_pem needs oidc_discovery_url",
            ));
        }
        if !config.default_role.is_empty() {
            validate_role_name(&config.default_role)?;
        }
        Parsed::from_config(config.clone())?;
        save(&self.storage, CONFIG_KEY, &config).await?;
        Ok(Response::no_content())
    }

    async fn role_read(&self, name: &str) -> Result<Response, EngineError> {
        let Some(role) = load::<Role>(&self.storage, &role_key(name)).await? else {
            return Err(EngineError::NotFound(String::new()));
        };
        let mut out = Map::new();
        out.insert("role_type".into(), json!("jwt"));
        out.insert("bound_audiences".into(), json!(role.bound_audiences));
        out.insert("bound_subject".into(), json!(role.bound_subject));
        out.insert(
            "bound_claims".into(),
            if role.bound_claims.is_empty() {
                Value::Null
            } else {
                json!(role.bound_claims)
            },
        );
        out.insert(
            "bound_claims_type".into(),
            json!(if role.bound_claims_glob {
                "glob"
            } else {
                "string"
            }),
        );
        out.insert("user_claim".into(), json!(role.user_claim));
        out.insert(
            "claim_mappings".into(),
            if role.claim_mappings.is_empty() {
                Value::Null
            } else {
                json!(role.claim_mappings)
            },
        );
        out.insert("clock_skew_leeway".into(), json!(role.clock_skew_leeway));
        role.token.to_api(&mut out);
        Ok(Response::data(out))
    }

    async fn role_write(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let key = role_key(name);
        let mut role = load::<Role>(&self.storage, &key)
            .await?
            .unwrap_or_else(|| Role {
                clock_skew_leeway: DEFAULT_LEEWAY_SECS,
                ..Role::default()
            });
        match params::string(data, "role_type")? {
            None | Some("" | "jwt") => {}
            Some(_) => {
                return Err(EngineError::invalid("only role_type \"jwt\" is supported"));
            }
        }
        if let Some(v) = params::string_list(data, "bound_audiences")? {
            role.bound_audiences = v;
        }
        if let Some(v) = params::string(data, "bound_subject")? {
            role.bound_subject = v.trim().to_owned();
        }
        if let Some(v) = parse_bound_claims(data)? {
            role.bound_claims = v;
        }
        match params::string(data, "bound_claims_type")? {
            None | Some("") => {}
            Some("string") => role.bound_claims_glob = false,
            Some("glob") => role.bound_claims_glob = true,
            Some(_) => {
                return Err(EngineError::invalid(
                    "bound_claims_type must be \"string\" or \"glob\"",
                ));
            }
        }
        if let Some(v) = params::string(data, "user_claim")? {
            role.user_claim = v.trim().to_owned();
        }
        if let Some(v) = params::string_map(data, "claim_mappings")? {
            let mut targets: Vec<&String> = v.values().collect();
            targets.sort();
            targets.dedup();
            if targets.len() != v.len() {
                return Err(EngineError::invalid(
                    "claim_mappings must map each claim to a different metadata key",
                ));
            }
            if v.values().any(|t| t == "role") {
                return Err(EngineError::invalid(
                    "claim_mappings cannot target the reserved metadata key \"role\"",
                ));
            }
            role.claim_mappings = v;
        }
        if let Some(v) = common::leeway(data)? {
            role.clock_skew_leeway = v;
        }
        role.token.update(data)?;
        if role.user_claim.is_empty() {
            return Err(EngineError::invalid("user_claim is required"));
        }
        if role.bound_audiences.is_empty()
            && role.bound_subject.is_empty()
            && role.bound_claims.is_empty()
        {
            return Err(EngineError::invalid(
                "a role needs at least one of bound_audiences, bound_subject and bound_claims",
            ));
        }
        save(&self.storage, &key, &role).await?;
        Ok(Response::no_content())
    }

    async fn login(&self, req: &BackendRequest<'_>) -> Result<Response, EngineError> {
        let data = req.data;
        let parsed = self.load_parsed().await?;
        let default_role = parsed.as_ref().map(|p| p.config.default_role.as_str());
        let (role, jwt) = common::login_params(data, default_role)?;
        let result = match parsed {
            Some(parsed) => JwtAuth::login(self, &parsed, &role, &jwt).await,
            None => Err(Failure::Error(EngineError::invalid(
                "the jwt auth method is not configured",
            ))),
        };
        finish_login("jwt", &role, result)
    }
}

/// A claim as the strings it matches: a scalar is one string, a list of scalars many.
fn claim_strings(value: &Value) -> Option<Vec<String>> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        Value::Array(items) => items.iter().map(scalar).collect(),
        v => scalar(v).map(|s| vec![s]),
    }
}

fn parse_bound_claims(
    data: &Map<String, Value>,
) -> Result<Option<BTreeMap<String, Vec<String>>>, EngineError> {
    let bad = || EngineError::invalid("bound_claims must be an object of claim names to values");
    let obj = match data.get("bound_claims") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(Some(BTreeMap::new())),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => o,
            _ => return Err(bad()),
        },
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(bad()),
    };
    obj.iter()
        .map(|(k, v)| {
            let values = claim_strings(v).filter(|l| !l.is_empty()).ok_or_else(bad)?;
            Ok((k.clone(), values))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

impl JwtAuth {
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
            .map_err(|_| EngineError::Corrupt("jwt auth config".into()))?;
        let parsed = Arc::new(Parsed::from_config(config)?);
        *self.parsed.lock() = Some((bytes, parsed.clone()));
        Ok(Some(parsed))
    }

    async fn login(
        &self,
        parsed: &Parsed,
        role_name: &str,
        jwt: &str,
    ) -> Result<LoginGrant, Failure> {
        if validate_role_name(role_name).is_err() {
            return Err(Rejection::UnknownRole.into());
        }
        let Some(role) = load::<Role>(&self.storage, &role_key(role_name)).await? else {
            return Err(Rejection::UnknownRole.into());
        };
        let header = validator::peek_header(jwt)?;
        let (keys, discovered_issuer) = match &parsed.keys {
            Keys::Static(keys) => (keys.clone(), None),
            Keys::Remote(source) => {
                let r = self
                    .remote
                    .get(
                        self.outbound.as_ref(),
                        source,
                        self.clock.unix_seconds(),
                        &header,
                    )
                    .await?;
                (r.keys, r.issuer)
            }
        };
        let verified = keys.verify(jwt, &parsed.algs)?;
        let claims = &verified.claims;
        let issuer = (!parsed.config.bound_issuer.is_empty())
            .then(|| parsed.config.bound_issuer.clone())
            .or(discovered_issuer);
        validator::check_claims(
            claims,
            &Expectations {
                now: self.clock.unix_seconds(),
                leeway: role.clock_skew_leeway,
                issuer: issuer.as_deref(),
                audiences: (!role.bound_audiences.is_empty())
                    .then_some(role.bound_audiences.as_slice()),
            },
        )?;
        if role.bound_audiences.is_empty() && !validator::audiences(claims)?.is_empty() {
            return Err(Rejection::UnexpectedAudience.into());
        }
        if !role.bound_subject.is_empty()
            && claims.get("sub").and_then(Value::as_str) != Some(role.bound_subject.as_str())
        {
            return Err(Rejection::SubjectNotBound.into());
        }
        for (name, wanted) in &role.bound_claims {
            let have = validator::claim(claims, name)
                .and_then(claim_strings)
                .ok_or(Rejection::ClaimNotBound)?;
            let matches = have.iter().any(|h| {
                wanted.iter().any(|w| {
                    if role.bound_claims_glob {
                        validator::glob_match(w, h)
                    } else {
                        w == h
                    }
                })
            });
            if !matches {
                return Err(Rejection::ClaimNotBound.into());
            }
        }
        let user = validator::claim(claims, &role.user_claim)
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|u| !u.is_empty())
            .ok_or(Rejection::MissingUserClaim)?;
        let mut grant = role.token.grant();
        let shown: String = user
            .chars()
            .take(100)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        grant.display_name = format!("jwt-{shown}");
        grant.metadata.insert("role".into(), role_name.to_owned());
        for (claim_name, target) in &role.claim_mappings {
            if let Some(v) = validator::claim(claims, claim_name) {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                grant.metadata.insert(target.clone(), text);
            }
        }
        Ok(grant)
    }
}
