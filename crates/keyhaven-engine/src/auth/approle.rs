//! The `approle` auth method: machines without a Kubernetes identity (CI systems, External
//! Secrets, agents) log in with a role id and a secret id.
//!
//! Endpoints, relative to the mount (Vault/OpenBao's shapes and messages):
//! - `role` (list), `role/<name>` (read, write, delete): the role's constraints and the
//!   token fields of the tokens it gives;
//! - `role/<name>/role-id` (read, write): the role's identifier (a UUID unless set);
//! - `role/<name>/secret-id` (write: generate; list: accessors) and
//!   `role/<name>/custom-secret-id` (write: one the caller chose);
//! - `role/<name>/secret-id/lookup|destroy` and `role/<name>/secret-id-accessor/lookup|destroy`;
//! - `login` (no token needed): `{role_id, secret_id}` → a token.
//!
//! Invariants:
//! - a secret id is never stored, logged or returned after its creation: storage keeps an
//!   HMAC of it under a random per-mount key, and its accessor;
//! - role ids are found through the same HMAC, so a role id is not a storage key either;
//! - a secret id with a use limit is spent by a compare-and-swap of its record: two logins
//!   racing for its last use cannot both succeed;
//! - every refusal of a role id or secret id reads `invalid role or secret ID`, whichever
//!   part was wrong, so a caller cannot probe for role ids.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use keyhaven_crypto::{HmacKey, fill_random};
use keyhaven_storage::{Condition, MAX_LIST_PAGE, Op, Store, Transaction, TxOutcome};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::common::{self, TOKEN_FIELDS, TokenFields, load};
use crate::backend::{Backend, BackendContext, BackendRequest};
use crate::cidr::{self, Cidr};
use crate::clock::{Clock, rfc3339};
use crate::error::EngineError;
use crate::params;
use crate::request::{Operation, Response};
use crate::route::{Field, Ops, Route};

/// The message of every refused role id or secret id.
const INVALID_LOGIN: &str = "invalid role or secret ID";
/// Storage key of the per-mount HMAC key.
const SALT_KEY: &str = "salt";
/// Storage prefix of the roles.
const ROLE_PREFIX: &str = "role/";
/// Attempts at spending a use of a secret id before giving up on contention.
const SPEND_ATTEMPTS: usize = 16;

/// Build an `approle` auth backend for a mount.
pub fn factory(ctx: BackendContext) -> Result<Arc<dyn Backend>, EngineError> {
    Ok(Arc::new(AppRoleAuth {
        storage: ctx.storage,
        clock: ctx.clock,
        hasher: tokio::sync::OnceCell::new(),
    }))
}

/// A stored role.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Role {
    role_id: String,
    bind_secret_id: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    secret_id_bound_cidrs: Vec<Cidr>,
    #[serde(default)]
    secret_id_num_uses: u64,
    #[serde(default)]
    secret_id_ttl: u64,
    #[serde(default)]
    local_secret_ids: bool,
    #[serde(default)]
    token: TokenFields,
}

/// A stored secret id, found by the HMAC of its value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct SecretIdEntry {
    accessor: String,
    /// Seconds since the epoch.
    created: u64,
    /// Seconds since the epoch; 0: never expires.
    expires: u64,
    /// Uses left; 0: unlimited.
    num_uses: u64,
    /// The TTL it was created with, in seconds (0: none).
    ttl: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cidr_list: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    token_bound_cidrs: Vec<Cidr>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// An accessor's record: which secret id it names.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccessorEntry {
    hmac: String,
}

const ROLE_FIELDS: &[Field] = &[
    Field::str("role_name", "The role's name."),
    Field::bool(
        "bind_secret_id",
        "Require a secret id at login (default true).",
    ),
    Field::str_list(
        "secret_id_bound_cidrs",
        "CIDR blocks logins with a secret id may come from.",
    ),
    Field::str_list("bound_cidr_list", "Deprecated: secret_id_bound_cidrs."),
    Field::uint(
        "secret_id_num_uses",
        "Logins each secret id allows (0: unlimited).",
    ),
    Field::duration("secret_id_ttl", "Lifetime of secret ids (0: unlimited)."),
    Field::bool(
        "local_secret_ids",
        "Secret ids local to this cluster (set at creation only).",
    ),
    Field::str("role_id", "The role's identifier (a UUID unless given)."),
];

const ROLE_ID_FIELDS: &[Field] = &[
    Field::str("role_name", "The role's name."),
    Field::str("role_id", "The role's new identifier.").required(),
];

const SECRET_ID_FIELDS: &[Field] = &[
    Field::str("role_name", "The role's name."),
    Field::str(
        "metadata",
        "JSON object of string values, shown in the token's metadata (not secret).",
    ),
    Field::str_list(
        "cidr_list",
        "CIDR blocks logins with this secret id may come from.",
    ),
    Field::str_list(
        "token_bound_cidrs",
        "CIDR blocks the tokens of its logins work from.",
    ),
    Field::uint("num_uses", "Logins this secret id allows (0: the role's)."),
    Field::duration("ttl", "Lifetime of this secret id (0: the role's)."),
];

const CUSTOM_SECRET_ID_FIELDS: &[Field] = &[
    Field::str("role_name", "The role's name."),
    Field::str("secret_id", "The secret id to register.").required(),
    Field::str(
        "metadata",
        "JSON object of string values, shown in the token's metadata (not secret).",
    ),
    Field::str_list(
        "cidr_list",
        "CIDR blocks logins with this secret id may come from.",
    ),
    Field::str_list(
        "token_bound_cidrs",
        "CIDR blocks the tokens of its logins work from.",
    ),
    Field::uint("num_uses", "Logins this secret id allows (0: the role's)."),
    Field::duration("ttl", "Lifetime of this secret id (0: the role's)."),
];

const BY_SECRET_ID_FIELDS: &[Field] = &[
    Field::str("role_name", "The role's name."),
    Field::str("secret_id", "The secret id.").required(),
];

const BY_ACCESSOR_FIELDS: &[Field] = &[
    Field::str("role_name", "The role's name."),
    Field::str("secret_id_accessor", "The secret id's accessor.").required(),
];

const LOGIN_FIELDS: &[Field] = &[
    Field::str("role_id", "The role's identifier.").required(),
    Field::str("secret_id", "A secret id of the role (when it binds one)."),
];

static ROUTES: [Route; 11] = [
    Route::new("role", "List the roles.").ops(Ops::LIST),
    Route::new(
        "role/{role_name}",
        "A role: its constraints and the tokens it gives.",
    )
    .ops(Ops::READ)
    .ops(Ops::WRITE.and(Ops::DELETE))
    .fields(ROLE_FIELDS)
    .shared_fields(TOKEN_FIELDS)
    .existence_check(),
    Route::new("role/{role_name}/role-id", "The role's identifier.")
        .ops(Ops::READ)
        .ops(Ops::WRITE)
        .fields(ROLE_ID_FIELDS),
    Route::new(
        "role/{role_name}/secret-id",
        "Generate a secret id for the role; list their accessors.",
    )
    .ops(Ops::WRITE)
    .ops(Ops::LIST)
    .fields(SECRET_ID_FIELDS),
    Route::new(
        "role/{role_name}/custom-secret-id",
        "Register a secret id the caller chose.",
    )
    .ops(Ops::WRITE)
    .fields(CUSTOM_SECRET_ID_FIELDS),
    Route::new(
        "role/{role_name}/secret-id/lookup",
        "The properties of a secret id.",
    )
    .ops(Ops::WRITE)
    .fields(BY_SECRET_ID_FIELDS),
    Route::new("role/{role_name}/secret-id/destroy", "Destroy a secret id.")
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(BY_SECRET_ID_FIELDS),
    Route::new(
        "role/{role_name}/secret-id-accessor/lookup",
        "The properties of a secret id, by its accessor.",
    )
    .ops(Ops::WRITE)
    .fields(BY_ACCESSOR_FIELDS),
    Route::new(
        "role/{role_name}/secret-id-accessor/destroy",
        "Destroy a secret id, by its accessor.",
    )
    .ops(Ops::WRITE.and(Ops::DELETE))
    .fields(BY_ACCESSOR_FIELDS),
    Route::new(
        "tidy/secret-id",
        "Delete expired secret ids and accessors whose secret id is gone.",
    )
    .ops(Ops::WRITE),
    Route::new("login", "Exchange a role id and a secret id for a token.")
        .ops(Ops::WRITE)
        .fields(LOGIN_FIELDS)
        .unauthenticated(),
];

struct AppRoleAuth {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The per-mount HMAC key, loaded (or made) on first use.
    hasher: tokio::sync::OnceCell<HmacKey>,
}

/// A role name as stored: lowercased, and of Vault's name characters.
fn role_name(raw: &str) -> Result<String, EngineError> {
    let name = raw.to_lowercase();
    common::validate_role_name(&name)?;
    Ok(name)
}

fn role_key(name: &str) -> String {
    format!("{ROLE_PREFIX}{name}")
}

fn role_id_key(hmac: &str) -> String {
    format!("role_id/{hmac}")
}

fn secret_id_key(role: &str, hmac: &str) -> String {
    format!("secret_id/{role}/{hmac}")
}

fn accessor_prefix(role: &str) -> String {
    format!("accessor/{role}/")
}

fn accessor_key(role: &str, accessor: &str) -> String {
    format!("accessor/{role}/{accessor}")
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn time_text(s: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(s))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    serde_json::to_vec(value).map_err(|_| EngineError::Encode("an approle record"))
}

/// `metadata` of a secret id: a JSON object of strings, given as a JSON string (as the
/// Vault API documents it) or as an object (as some clients send it).
fn parse_metadata(data: &Map<String, Value>) -> Result<BTreeMap<String, String>, EngineError> {
    let object = match data.get("metadata") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(BTreeMap::new()),
        Some(Value::String(s)) => serde_json::from_str::<Map<String, Value>>(s)
            .map_err(|_| EngineError::invalid("metadata must be a JSON object of string values"))?,
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(EngineError::invalid(
                "metadata must be a JSON object of string values",
            ));
        }
    };
    let mut out = BTreeMap::new();
    for (k, v) in object {
        let Value::String(v) = v else {
            return Err(EngineError::invalid(
                "metadata must be a JSON object of string values",
            ));
        };
        if k == "role_name" {
            return Err(EngineError::invalid(
                "metadata may not set \"role_name\": it names the role",
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

fn cidr_param(data: &Map<String, Value>, key: &str) -> Result<Option<Vec<Cidr>>, EngineError> {
    match params::string_list(data, key)? {
        Some(list) => Ok(Some(cidr::parse_list(key, &list)?)),
        None => Ok(None),
    }
}

/// Whether every block of `inner` lies inside a block of `outer`.
fn within(inner: &[Cidr], outer: &[Cidr]) -> bool {
    inner.iter().all(|i| {
        outer
            .iter()
            .any(|o| o.contains(i.network()) && o.prefix_len() <= i.prefix_len())
    })
}

fn allowed_from(blocks: &[Cidr], addr: Option<IpAddr>) -> bool {
    blocks.is_empty() || addr.is_some_and(|a| blocks.iter().any(|b| b.contains(a)))
}

#[async_trait]
impl Backend for AppRoleAuth {
    fn routes(&self) -> &'static [Route] {
        &ROUTES
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<bool, EngineError> {
        match role_name(req.capture("role_name")) {
            Ok(name) => Ok(self.storage.get(&role_key(&name)).await?.is_some()),
            Err(_) => Ok(true),
        }
    }

    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError> {
        use Operation::{Create, Delete, List, Read, Update};
        let op = req.operation;
        match req.route.pattern {
            "role" if op == List => common::list_under(&self.storage, ROLE_PREFIX).await,
            "login" => self.login(req.data, req.remote_addr).await,
            "tidy/secret-id" => {
                let removed = self.tidy().await?;
                Ok(Response {
                    warnings: vec![format!(
                        "Tidy operation completed: {removed} expired or orphaned secret id entries removed."
                    )],
                    accepted: true,
                    ..Response::default()
                })
            }
            pattern => {
                let name = role_name(req.capture("role_name"))?;
                match (pattern, op) {
                    ("role/{role_name}", Read) => self.read_role(&name).await,
                    ("role/{role_name}", Create | Update) => self.write_role(&name, req.data).await,
                    ("role/{role_name}", Delete) => self.delete_role(&name).await,
                    ("role/{role_name}/role-id", Read) => {
                        let role = self.role(&name).await?;
                        Ok(Response::data(map(json!({ "role_id": role.role_id }))))
                    }
                    ("role/{role_name}/role-id", Create | Update) => {
                        self.set_role_id(&name, req.data).await
                    }
                    ("role/{role_name}/secret-id", List) => {
                        let _ = self.role(&name).await?;
                        common::list_under(&self.storage, &accessor_prefix(&name)).await
                    }
                    ("role/{role_name}/secret-id", Create | Update) => {
                        let mut raw_id = [0u8; 16];
                        fill_random(&mut raw_id)
                            .map_err(|_| EngineError::Crypto(crate::error::CryptoOp::Random))?;
                        let secret_id = uuid::Builder::from_random_bytes(raw_id)
                            .into_uuid()
                            .to_string();
                        self.new_secret_id(&name, secret_id, req.data).await
                    }
                    ("role/{role_name}/custom-secret-id", Create | Update) => {
                        let secret_id = params::string(req.data, "secret_id")?
                            .filter(|s| !s.is_empty())
                            .ok_or_else(|| EngineError::invalid("missing secret_id"))?
                            .to_owned();
                        self.new_secret_id(&name, secret_id, req.data).await
                    }
                    ("role/{role_name}/secret-id/lookup", Create | Update) => {
                        let hmac = self.hmac(secret_id_param(req.data)?).await?;
                        self.lookup(&name, &hmac).await
                    }
                    ("role/{role_name}/secret-id/destroy", Create | Update | Delete) => {
                        let hmac = self.hmac(secret_id_param(req.data)?).await?;
                        self.destroy(&name, &hmac).await
                    }
                    ("role/{role_name}/secret-id-accessor/lookup", Create | Update) => {
                        let hmac = self.by_accessor(&name, req.data).await?;
                        self.lookup(&name, &hmac).await
                    }
                    ("role/{role_name}/secret-id-accessor/destroy", Create | Update | Delete) => {
                        let hmac = self.by_accessor(&name, req.data).await?;
                        self.destroy(&name, &hmac).await
                    }
                    _ => Err(EngineError::UnsupportedOperation),
                }
            }
        }
    }
}

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn secret_id_param(data: &Map<String, Value>) -> Result<&str, EngineError> {
    params::string(data, "secret_id")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EngineError::invalid("missing secret_id"))
}

impl AppRoleAuth {
    /// The per-mount HMAC key: made at random on first use and kept behind the barrier.
    async fn hasher(&self) -> Result<&HmacKey, EngineError> {
        self.hasher
            .get_or_try_init(|| async {
                if let Some(salt) = self.storage.get(SALT_KEY).await? {
                    return Ok(HmacKey::new(&salt));
                }
                let mut salt = vec![0u8; 32];
                fill_random(&mut salt)
                    .map_err(|_| EngineError::Crypto(crate::error::CryptoOp::Random))?;
                // Two first uses may race: the one that lands is the key of both.
                self.storage
                    .compare_and_swap(SALT_KEY, None, Some(salt))
                    .await?;
                let salt =
                    self.storage.get(SALT_KEY).await?.ok_or_else(|| {
                        EngineError::Corrupt("approle salt is missing".to_owned())
                    })?;
                Ok(HmacKey::new(&salt))
            })
            .await
    }

    async fn hmac(&self, value: &str) -> Result<String, EngineError> {
        Ok(hex::encode(self.hasher().await?.sign(value.as_bytes())))
    }

    async fn role(&self, name: &str) -> Result<Role, EngineError> {
        load::<Role>(&self.storage, &role_key(name))
            .await?
            .ok_or_else(|| EngineError::invalid(format!("role \"{name}\" does not exist")))
    }

    async fn read_role(&self, name: &str) -> Result<Response, EngineError> {
        let Some(role) = load::<Role>(&self.storage, &role_key(name)).await? else {
            return Err(EngineError::NotFound(String::new()));
        };
        let mut out = Map::new();
        role.token.to_api_current(&mut out);
        out.insert("token_bound_cidrs".into(), json!(role.token.bound_cidrs));
        out.insert("bind_secret_id".into(), json!(role.bind_secret_id));
        // OpenBao shows an unset list as null here (and token_bound_cidrs as []).
        out.insert(
            "secret_id_bound_cidrs".into(),
            if role.secret_id_bound_cidrs.is_empty() {
                Value::Null
            } else {
                json!(role.secret_id_bound_cidrs)
            },
        );
        out.insert("secret_id_num_uses".into(), json!(role.secret_id_num_uses));
        out.insert("secret_id_ttl".into(), json!(role.secret_id_ttl));
        out.insert("local_secret_ids".into(), json!(role.local_secret_ids));
        Ok(Response::data(out))
    }

    /// Create a role, or update the fields given.
    async fn write_role(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let key = role_key(name);
        let existing = load::<Role>(&self.storage, &key).await?;
        let creating = existing.is_none();
        let mut role = match existing {
            Some(role) => role,
            None => Role {
                role_id: String::new(),
                bind_secret_id: true,
                secret_id_bound_cidrs: Vec::new(),
                secret_id_num_uses: 0,
                secret_id_ttl: 0,
                local_secret_ids: false,
                token: TokenFields::default(),
            },
        };
        let old_role_id = role.role_id.clone();
        role.token.update(data)?;
        if let Some(v) = params::boolean(data, "bind_secret_id")? {
            role.bind_secret_id = v;
        }
        let cidrs = match cidr_param(data, "secret_id_bound_cidrs")? {
            Some(c) => Some(c),
            None => cidr_param(data, "bound_cidr_list")?,
        };
        if let Some(c) = cidrs {
            role.secret_id_bound_cidrs = c;
        }
        if let Some(v) = params::uint(data, "secret_id_num_uses")? {
            role.secret_id_num_uses = v;
        }
        if let Some(v) = params::duration_secs(data, "secret_id_ttl")? {
            role.secret_id_ttl = v;
        }
        if let Some(v) = params::boolean(data, "local_secret_ids")? {
            if !creating && v != role.local_secret_ids {
                return Err(EngineError::invalid(
                    "local_secret_ids can only be modified during role creation",
                ));
            }
            role.local_secret_ids = v;
        }
        if let Some(id) = params::string(data, "role_id")?.filter(|s| !s.is_empty()) {
            role.role_id = id.to_owned();
        }
        if role.role_id.is_empty() {
            role.role_id = uuid::Uuid::new_v4().to_string();
        }
        if !role.bind_secret_id
            && role.secret_id_bound_cidrs.is_empty()
            && role.token.bound_cidrs.is_empty()
        {
            return Err(EngineError::invalid(
                "at least one constraint should be enabled on the role",
            ));
        }
        self.store_role(name, &role, &old_role_id).await?;
        Ok(Response::no_content())
    }

    /// Write `role`, moving its role id index from `old_role_id` when it changed; refuse a
    /// role id another role has.
    async fn store_role(
        &self,
        name: &str,
        role: &Role,
        old_role_id: &str,
    ) -> Result<(), EngineError> {
        let new_index = role_id_key(&self.hmac(&role.role_id).await?);
        let mut conditions = Vec::new();
        let mut ops = vec![Op::Put {
            key: role_key(name),
            value: encode(role)?,
        }];
        if old_role_id != role.role_id {
            if let Some(owner) = self.storage.get(&new_index).await?
                && owner != name.as_bytes()
            {
                return Err(EngineError::invalid("role_id already in use"));
            }
            conditions.push(Condition::Absent {
                key: new_index.clone(),
            });
            ops.push(Op::Put {
                key: new_index,
                value: name.as_bytes().to_vec(),
            });
            if !old_role_id.is_empty() {
                ops.push(Op::Delete {
                    key: role_id_key(&self.hmac(old_role_id).await?),
                });
            }
        }
        match self
            .storage
            .transact(Transaction { conditions, ops })
            .await?
        {
            TxOutcome::Committed => Ok(()),
            TxOutcome::ConditionFailed { .. } => {
                Err(EngineError::invalid("role_id already in use"))
            }
        }
    }

    async fn set_role_id(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let mut role = self.role(name).await?;
        let id = params::string(data, "role_id")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EngineError::invalid("missing role_id"))?;
        let old = std::mem::replace(&mut role.role_id, id.to_owned());
        self.store_role(name, &role, &old).await?;
        Ok(Response::no_content())
    }

    /// Delete a role with its role id index, secret ids and accessors.
    async fn delete_role(&self, name: &str) -> Result<Response, EngineError> {
        let Some(role) = load::<Role>(&self.storage, &role_key(name)).await? else {
            return Ok(Response::no_content());
        };
        for prefix in [format!("secret_id/{name}/"), accessor_prefix(name)] {
            loop {
                let page = self.storage.list_page(&prefix, None, MAX_LIST_PAGE).await?;
                if page.is_empty() {
                    break;
                }
                let ops = page
                    .iter()
                    .map(|key| Op::Delete {
                        key: format!("{prefix}{key}"),
                    })
                    .collect();
                // Without conditions a transaction always commits.
                let _: TxOutcome = self
                    .storage
                    .transact(Transaction {
                        conditions: Vec::new(),
                        ops,
                    })
                    .await?;
            }
        }
        let index = role_id_key(&self.hmac(&role.role_id).await?);
        let _: TxOutcome = self
            .storage
            .transact(Transaction {
                conditions: Vec::new(),
                ops: vec![
                    Op::Delete { key: index },
                    Op::Delete {
                        key: role_key(name),
                    },
                ],
            })
            .await?;
        Ok(Response::no_content())
    }

    /// Register `secret_id` for the role with the options in `data`.
    async fn new_secret_id(
        &self,
        name: &str,
        secret_id: String,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let role = self.role(name).await?;
        if !role.bind_secret_id {
            return Err(EngineError::invalid(
                "bind_secret_id is not set on the role",
            ));
        }
        let metadata = parse_metadata(data)?;
        let cidr_list = cidr_param(data, "cidr_list")?.unwrap_or_default();
        if !role.secret_id_bound_cidrs.is_empty()
            && !within(&cidr_list, &role.secret_id_bound_cidrs)
        {
            return Err(EngineError::invalid(
                "failed to verify the CIDR restrictions set on the secret ID: cidr_list must be within the role's secret_id_bound_cidrs",
            ));
        }
        let token_bound_cidrs = cidr_param(data, "token_bound_cidrs")?.unwrap_or_default();
        if !role.token.bound_cidrs.is_empty()
            && !within(&token_bound_cidrs, &role.token.bound_cidrs)
        {
            return Err(EngineError::invalid(
                "failed to verify the CIDR restrictions set on the secret ID: token_bound_cidrs must be within the role's token_bound_cidrs",
            ));
        }
        let num_uses = match params::uint(data, "num_uses")? {
            None | Some(0) => role.secret_id_num_uses,
            Some(n) if role.secret_id_num_uses == 0 || n <= role.secret_id_num_uses => n,
            Some(_) => {
                return Err(EngineError::invalid(
                    "num_uses cannot be higher than the role's secret_id_num_uses",
                ));
            }
        };
        let ttl = match params::duration_secs(data, "ttl")? {
            None | Some(0) => role.secret_id_ttl,
            Some(t) if role.secret_id_ttl == 0 || t <= role.secret_id_ttl => t,
            Some(_) => {
                return Err(EngineError::invalid(
                    "ttl cannot be longer than the role's secret_id_ttl",
                ));
            }
        };
        let now = secs(self.clock.now());
        let entry = SecretIdEntry {
            accessor: uuid::Uuid::new_v4().to_string(),
            created: now,
            expires: if ttl > 0 { now.saturating_add(ttl) } else { 0 },
            num_uses,
            ttl,
            cidr_list: if cidr_list.is_empty() {
                role.secret_id_bound_cidrs.clone()
            } else {
                cidr_list
            },
            token_bound_cidrs,
            metadata,
        };
        let hmac = self.hmac(&secret_id).await?;
        let key = secret_id_key(name, &hmac);
        let outcome = self
            .storage
            .transact(Transaction {
                conditions: vec![Condition::Absent { key: key.clone() }],
                ops: vec![
                    Op::Put {
                        key,
                        value: encode(&entry)?,
                    },
                    Op::Put {
                        key: accessor_key(name, &entry.accessor),
                        value: encode(&AccessorEntry { hmac })?,
                    },
                ],
            })
            .await?;
        if outcome != TxOutcome::Committed {
            return Err(EngineError::invalid("secret_id is already registered"));
        }
        Ok(Response::data(map(json!({
            "secret_id": secret_id,
            "secret_id_accessor": entry.accessor,
            "secret_id_ttl": entry.ttl,
            "secret_id_num_uses": entry.num_uses,
        }))))
    }

    async fn by_accessor(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<String, EngineError> {
        let accessor = params::string(data, "secret_id_accessor")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EngineError::invalid("missing secret_id_accessor"))?;
        match load::<AccessorEntry>(&self.storage, &accessor_key(name, accessor)).await? {
            Some(entry) => Ok(entry.hmac),
            None => Err(EngineError::invalid(format!(
                "failed to find accessor entry for secret_id_accessor: {:?}",
                common::printable(accessor)
            ))),
        }
    }

    /// Delete every expired secret id (with its accessor) and every accessor whose
    /// secret id is gone. Returns how many entries went.
    async fn tidy(&self) -> Result<usize, EngineError> {
        let mut removed = 0;
        for role in crate::core::list_all(self.storage.as_ref(), "secret_id/").await? {
            let role = role.trim_end_matches('/');
            // Accessors first: one written after this listing is not looked at, so a
            // secret id created meanwhile keeps its accessor.
            let accessors =
                crate::core::list_all(self.storage.as_ref(), &accessor_prefix(role)).await?;
            let mut live_accessors = std::collections::HashSet::new();
            for hmac in
                crate::core::list_all(self.storage.as_ref(), &format!("secret_id/{role}/")).await?
            {
                match self.live_entry(role, &hmac).await? {
                    Some((_, entry)) => {
                        live_accessors.insert(entry.accessor);
                    }
                    None => removed += 1,
                }
            }
            for accessor in accessors {
                let key = accessor_key(role, &accessor);
                // Expired secret ids took their accessors with them above.
                if !live_accessors.contains(&accessor) && self.storage.get(&key).await?.is_some() {
                    self.storage.delete(&key).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// A live entry, or `None` (an expired one is deleted on the way).
    async fn live_entry(
        &self,
        name: &str,
        hmac: &str,
    ) -> Result<Option<(Vec<u8>, SecretIdEntry)>, EngineError> {
        let key = secret_id_key(name, hmac);
        let Some(bytes) = self.storage.get(&key).await? else {
            return Ok(None);
        };
        let entry: SecretIdEntry = serde_json::from_slice(&bytes)
            .map_err(|_| EngineError::Corrupt("approle secret id record".to_owned()))?;
        if entry.expires != 0 && secs(self.clock.now()) >= entry.expires {
            self.remove(name, hmac, &entry.accessor, Some(bytes))
                .await?;
            return Ok(None);
        }
        Ok(Some((bytes, entry)))
    }

    /// Remove a secret id and its accessor, if it still holds `expected` (when given).
    async fn remove(
        &self,
        name: &str,
        hmac: &str,
        accessor: &str,
        expected: Option<Vec<u8>>,
    ) -> Result<bool, EngineError> {
        let key = secret_id_key(name, hmac);
        let conditions = match expected {
            Some(value) => vec![Condition::Equals {
                key: key.clone(),
                value,
            }],
            None => Vec::new(),
        };
        let outcome = self
            .storage
            .transact(Transaction {
                conditions,
                ops: vec![
                    Op::Delete { key },
                    Op::Delete {
                        key: accessor_key(name, accessor),
                    },
                ],
            })
            .await?;
        Ok(outcome == TxOutcome::Committed)
    }

    async fn lookup(&self, name: &str, hmac: &str) -> Result<Response, EngineError> {
        let _ = self.role(name).await?;
        let Some((_, entry)) = self.live_entry(name, hmac).await? else {
            return Ok(Response::no_content());
        };
        let out = map(json!({
            "cidr_list": entry.cidr_list,
            "creation_time": time_text(entry.created),
            "expiration_time": if entry.expires == 0 { "0001-01-01T00:00:00Z".to_owned() } else { time_text(entry.expires) },
            "last_updated_time": time_text(entry.created),
            "metadata": entry.metadata,
            "secret_id_accessor": entry.accessor,
            "secret_id_num_uses": entry.num_uses,
            "secret_id_ttl": entry.ttl,
            "token_bound_cidrs": entry.token_bound_cidrs,
        }));
        Ok(Response::data(out))
    }

    async fn destroy(&self, name: &str, hmac: &str) -> Result<Response, EngineError> {
        let _ = self.role(name).await?;
        if let Some(bytes) = self.storage.get(&secret_id_key(name, hmac)).await? {
            let entry: SecretIdEntry = serde_json::from_slice(&bytes)
                .map_err(|_| EngineError::Corrupt("approle secret id record".to_owned()))?;
            self.remove(name, hmac, &entry.accessor, None).await?;
        }
        Ok(Response::no_content())
    }

    async fn login(
        &self,
        data: &Map<String, Value>,
        remote: Option<IpAddr>,
    ) -> Result<Response, EngineError> {
        let role_id = params::string(data, "role_id")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EngineError::invalid("missing role_id"))?;
        let refuse = |why: &str| {
            tracing::warn!(target: "keyhaven::auth", method = "approle", reason = why, "login refused");
            EngineError::invalid(INVALID_LOGIN)
        };
        let index = role_id_key(&self.hmac(role_id).await?);
        let Some(name) = self.storage.get(&index).await? else {
            return Err(refuse("unknown role id"));
        };
        let name = String::from_utf8(name)
            .map_err(|_| EngineError::Corrupt("approle role id index".to_owned()))?;
        let Some(role) = load::<Role>(&self.storage, &role_key(&name)).await? else {
            return Err(refuse("unknown role id"));
        };
        // The index may lag a role id change by nothing: both are written together.
        if !keyhaven_crypto::ct_eq(role.role_id.as_bytes(), role_id.as_bytes()) {
            return Err(refuse("unknown role id"));
        }
        let mut token_cidrs = role.token.bound_cidrs.clone();
        let mut metadata = BTreeMap::new();
        if role.bind_secret_id {
            let secret_id = params::string(data, "secret_id")?
                .filter(|s| !s.is_empty())
                .ok_or_else(|| EngineError::invalid("missing secret_id"))?;
            let hmac = self.hmac(secret_id).await?;
            let entry = self
                .spend(&name, &hmac)
                .await?
                .ok_or_else(|| refuse("unknown or expired secret id"))?;
            if !allowed_from(&entry.cidr_list, remote) {
                return Err(EngineError::invalid(
                    "source address unauthorized through CIDR restrictions on the secret ID",
                ));
            }
            if !entry.token_bound_cidrs.is_empty() {
                token_cidrs = entry.token_bound_cidrs;
            }
            metadata = entry.metadata;
        } else if !allowed_from(&role.secret_id_bound_cidrs, remote) {
            return Err(EngineError::invalid(
                "source address unauthorized through CIDR restrictions on the role",
            ));
        }
        let mut grant = role.token.grant();
        grant.bound_cidrs = token_cidrs;
        grant.display_name = "approle".to_owned();
        grant.metadata = metadata;
        grant.metadata.insert("role_name".into(), name.clone());
        common::finish_login("approle", &name, Ok(grant))
    }

    /// Take one use of a secret id: its entry as it was, or `None` when it does not exist,
    /// expired or was used up. The last use deletes it.
    async fn spend(&self, name: &str, hmac: &str) -> Result<Option<SecretIdEntry>, EngineError> {
        for _ in 0..SPEND_ATTEMPTS {
            let Some((bytes, entry)) = self.live_entry(name, hmac).await? else {
                return Ok(None);
            };
            let spent = match entry.num_uses {
                0 => return Ok(Some(entry)),
                1 => {
                    self.remove(name, hmac, &entry.accessor, Some(bytes))
                        .await?
                }
                n => {
                    let mut next = entry.clone();
                    next.num_uses = n - 1;
                    self.storage
                        .compare_and_swap(
                            &secret_id_key(name, hmac),
                            Some(&bytes),
                            Some(encode(&next)?),
                        )
                        .await?
                }
            };
            if spent {
                return Ok(Some(entry));
            }
            tokio::task::yield_now().await;
        }
        Err(EngineError::Unavailable(
            "the secret id is in use by too many logins at once; retry".to_owned(),
        ))
    }
}
