//! The `userpass` auth method: people log in with a username and a password.
//!
//! Endpoints, relative to the mount (Vault/OpenBao's shapes):
//! - `users/<username>` (read, write, delete) and `LIST users`: a user's password (or an
//!   imported bcrypt `password_hash`) and the token fields of the tokens they get;
//! - `users/<username>/password` (write): change the password;
//! - `users/<username>/policies` (write): change `token_policies`;
//! - `login/<username>` (no token needed): `{password}` → a token.
//!
//! Invariants:
//! - usernames are lowercased, as Vault does, so `Alice` and `alice` are one user;
//! - a password is never stored, logged or returned: only its argon2id hash (parameters
//!   in SECURITY.md), computed off the async workers within process-wide bounds
//!   ([`super::password`]);
//! - a wrong password and an unknown user get the same `invalid username or password`,
//!   after the same argon2id work.

use std::sync::Arc;

use async_trait::async_trait;
use keyhaven_storage::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::{self, TOKEN_FIELDS, TokenFields, load, save};
use super::password::{self, Password, PasswordHash};
use crate::backend::{Backend, BackendContext, BackendRequest};
use crate::error::EngineError;
use crate::params;
use crate::request::{Operation, Response};
use crate::route::{Field, Ops, Route};

/// Storage prefix of the users.
const USER_PREFIX: &str = "user/";
/// The message of every refused login.
const INVALID_LOGIN: &str = "invalid username or password";

/// Build a `userpass` auth backend for a mount.
pub fn factory(ctx: BackendContext) -> Result<Arc<dyn Backend>, EngineError> {
    Ok(Arc::new(UserpassAuth {
        storage: ctx.storage,
    }))
}

/// A stored user.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    password: PasswordHash,
    #[serde(default)]
    token: TokenFields,
}

const PASSWORD_FIELDS: &[Field] = &[
    Field::str("password", "The user's password."),
    Field::str(
        "password_hash",
        "A bcrypt hash of the password, instead of the password.",
    ),
];

const USER_FIELDS: &[Field] = &[
    Field::str("username", "The user's name (lowercased)."),
    Field::str("password", "The user's password."),
    Field::str(
        "password_hash",
        "A bcrypt hash of the password, instead of the password.",
    ),
];

const POLICIES_FIELDS: &[Field] = &[
    Field::str("username", "The user's name (lowercased)."),
    Field::str_list("token_policies", "Policies of the tokens logins get."),
    Field::str_list("policies", "Deprecated: token_policies."),
];

const LOGIN_FIELDS: &[Field] = &[
    Field::str("username", "The user's name.").required(),
    Field::str("password", "The user's password.").required(),
];

static ROUTES: [Route; 5] = [
    Route::new("users", "List the users.").ops(Ops::LIST),
    Route::new(
        "users/{username}",
        "A user: their password and the token they get.",
    )
    .ops(Ops::READ)
    .ops(Ops::WRITE.and(Ops::DELETE))
    .fields(USER_FIELDS)
    .shared_fields(TOKEN_FIELDS)
    .existence_check(),
    Route::new("users/{username}/password", "Change a user's password.")
        .ops(Ops::WRITE)
        .fields(PASSWORD_FIELDS),
    Route::new("users/{username}/policies", "Change a user's policies.")
        .ops(Ops::WRITE)
        .fields(POLICIES_FIELDS),
    Route::new(
        "login/{username}",
        "Exchange a username and password for a token.",
    )
    .ops(Ops::WRITE)
    .fields(LOGIN_FIELDS)
    .unauthenticated(),
];

struct UserpassAuth {
    storage: Arc<dyn Store>,
}

/// A username as stored: lowercased, and of Vault's name characters.
fn username(raw: &str) -> Result<String, EngineError> {
    let name = raw.to_lowercase();
    common::validate_role_name(&name).map_err(|_| {
        EngineError::invalid("invalid username: use 1 to 128 letters, digits, '_', '-', '.' or '@'")
    })?;
    Ok(name)
}

fn user_key(name: &str) -> String {
    format!("{USER_PREFIX}{name}")
}

/// The new password hash from `password` or `password_hash` (exactly one).
async fn new_hash(data: &Map<String, Value>) -> Result<PasswordHash, EngineError> {
    let password = params::string(data, "password")?.filter(|p| !p.is_empty());
    let imported = params::string(data, "password_hash")?.filter(|p| !p.is_empty());
    match (password, imported) {
        (Some(_), Some(_)) => Err(EngineError::invalid(
            "only one of password or password_hash may be provided",
        )),
        (Some(p), None) => password::hash(Password::new(p)?).await,
        (None, Some(h)) => PasswordHash::import_bcrypt(h),
        (None, None) => Err(EngineError::invalid(
            "must provide either password or password_hash",
        )),
    }
}

#[async_trait]
impl Backend for UserpassAuth {
    fn routes(&self) -> &'static [Route] {
        &ROUTES
    }

    async fn exists(&self, req: &BackendRequest<'_>) -> Result<bool, EngineError> {
        match username(req.capture("username")) {
            Ok(name) => Ok(self.storage.get(&user_key(&name)).await?.is_some()),
            Err(_) => Ok(true),
        }
    }

    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError> {
        use Operation::{Create, Delete, List, Read, Update};
        let op = req.operation;
        match req.route.pattern {
            "users" if op == List => common::list_under(&self.storage, USER_PREFIX).await,
            "login/{username}" => self.login(req.capture("username"), req.data).await,
            pattern => {
                let name = username(req.capture("username"))?;
                match (pattern, op) {
                    ("users/{username}", Read) => self.read(&name).await,
                    ("users/{username}", Create | Update) => self.write(&name, req.data).await,
                    ("users/{username}", Delete) => {
                        self.storage.delete(&user_key(&name)).await?;
                        Ok(Response::no_content())
                    }
                    ("users/{username}/password", Create | Update) => {
                        let mut user = self.existing(&name).await?;
                        user.password = new_hash(req.data).await?;
                        save(&self.storage, &user_key(&name), &user).await?;
                        Ok(Response::no_content())
                    }
                    ("users/{username}/policies", Create | Update) => {
                        let mut user = self.existing(&name).await?;
                        let mut only = Map::new();
                        for key in ["token_policies", "policies"] {
                            if let Some(v) = req.data.get(key) {
                                only.insert(key.to_owned(), v.clone());
                            }
                        }
                        user.token.update(&only)?;
                        save(&self.storage, &user_key(&name), &user).await?;
                        Ok(Response::no_content())
                    }
                    _ => Err(EngineError::UnsupportedOperation),
                }
            }
        }
    }
}

impl UserpassAuth {
    async fn existing(&self, name: &str) -> Result<User, EngineError> {
        load::<User>(&self.storage, &user_key(name))
            .await?
            .ok_or_else(|| EngineError::invalid("username does not exist"))
    }

    async fn read(&self, name: &str) -> Result<Response, EngineError> {
        let Some(user) = load::<User>(&self.storage, &user_key(name)).await? else {
            return Err(EngineError::NotFound(String::new()));
        };
        let mut out = Map::new();
        user.token.to_api_current(&mut out);
        Ok(Response::data(out))
    }

    /// Create, or update the fields given; a new user needs a password.
    async fn write(&self, name: &str, data: &Map<String, Value>) -> Result<Response, EngineError> {
        let key = user_key(name);
        let existing = load::<User>(&self.storage, &key).await?;
        let mut token = existing
            .as_ref()
            .map(|u| u.token.clone())
            .unwrap_or_default();
        token.update(data)?;
        let gives_password = ["password", "password_hash"].iter().any(|k| {
            params::string(data, k)
                .ok()
                .flatten()
                .is_some_and(|v| !v.is_empty())
        });
        let password = match existing {
            Some(user) if !gives_password => user.password,
            _ => new_hash(data).await?,
        };
        save(&self.storage, &key, &User { password, token }).await?;
        Ok(Response::no_content())
    }

    async fn login(&self, raw: &str, data: &Map<String, Value>) -> Result<Response, EngineError> {
        let password = params::string(data, "password")?
            .filter(|p| !p.is_empty())
            .ok_or_else(|| EngineError::invalid("missing password"))?;
        let password = Password::new(password)?;
        let name = raw.to_lowercase();
        // An invalid name is an unknown user: the same work, the same answer.
        let user = match common::validate_role_name(&name) {
            Ok(()) => load::<User>(&self.storage, &user_key(&name)).await?,
            Err(_) => None,
        };
        let stored = user.as_ref().map(|u| u.password.clone());
        let matched = password::verify(password, stored).await?;
        let Some(user) = user.filter(|_| matched) else {
            tracing::warn!(target: "keyhaven::auth", method = "userpass", user = %common::printable(&name), "login refused");
            return Err(EngineError::invalid(INVALID_LOGIN));
        };
        let mut grant = user.token.grant();
        grant.display_name = format!("userpass-{name}");
        grant.metadata.insert("username".into(), name.clone());
        common::finish_login("userpass", &name, Ok(grant))
    }
}
