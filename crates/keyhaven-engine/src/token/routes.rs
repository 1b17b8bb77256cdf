//! The `auth/token/` mount: its route table ([`ROUTES`]) and one handler per endpoint
//! and operation, chosen by [`TokenStore::handle`] from the matched route. A handler reads the request's parameters, checks what the
//! caller may ask for, and shapes the answer.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::lifecycle::CreateParams;
use super::roles::{TokenRole, check_role_name, decide_policies};
use super::{SYSTEM_MAX_TTL, TokenEntry, TokenStore};
use crate::backend::BackendRequest;
use crate::error::EngineError;
use crate::params;
use crate::request::{Operation, Response};
use crate::route::{Field, FieldType, Ops, Route};

const CREATE_FIELDS: &[Field] = &[
    Field::str("id", "The token's value (root only)."),
    Field::str_list("policies", "Policies, within the caller's or the role's."),
    Field::new(
        "meta",
        FieldType::StrMap,
        "Metadata, shown by lookups; not secret.",
    ),
    Field::bool("no_parent", "Create an orphan (needs sudo)."),
    Field::bool("no_default_policy", "Leave out the default policy."),
    Field::bool("renewable", "Whether the token can be renewed.").default("true"),
    Field::duration("ttl", "Time to live."),
    Field::str("type", "service or default-service."),
    Field::duration(
        "explicit_max_ttl",
        "A maximum TTL that renewal never passes.",
    ),
    Field::str("display_name", "A name for humans."),
    Field::uint(
        "num_uses",
        "Uses before the token is revoked (0: unlimited).",
    ),
    Field::duration("period", "Make the token periodic (needs sudo)."),
    // `bao token create` always sends it (empty); identity entities are not implemented.
    Field::str(
        "entity_alias",
        "Accepted and ignored: there are no identity entities.",
    ),
];

const TOKEN: Field = Field::str("token", "The token.");
const ACCESSOR: Field = Field::str("accessor", "The token's accessor.");
const INCREMENT: Field = Field::duration("increment", "The TTL asked for.");

const ROLE_FIELDS: &[Field] = &[
    Field::str_list("allowed_policies", "Policies tokens of this role may have."),
    Field::str_list(
        "disallowed_policies",
        "Policies tokens of this role may not have.",
    ),
    Field::bool("orphan", "Tokens of this role are orphans."),
    Field::str("path_suffix", "Appended to the tokens' path."),
    Field::bool("renewable", "Whether the tokens can be renewed.").default("true"),
    Field::duration("period", "Deprecated: token_period."),
    Field::duration("token_period", "Make the tokens periodic."),
    Field::duration("explicit_max_ttl", "Deprecated: token_explicit_max_ttl."),
    Field::duration(
        "token_explicit_max_ttl",
        "A maximum TTL that renewal never passes.",
    ),
];

/// Every path of the `auth/token/` mount.
pub(crate) static ROUTES: &[Route] = &[
    Route::new("create", "Create a child token.")
        .ops(Ops::WRITE)
        .fields(CREATE_FIELDS),
    Route::new("create-orphan", "Create an orphan token.")
        .ops(Ops::WRITE)
        .fields(CREATE_FIELDS)
        .sudo(),
    Route::new("create/{role_name}", "Create a token with a role.")
        .ops(Ops::WRITE)
        .fields(CREATE_FIELDS),
    Route::new("lookup", "Look up a token.")
        .pure(Ops::READ)
        .ops(Ops::WRITE)
        .fields(&[TOKEN]),
    Route::new("lookup-self", "Look up the calling token.")
        .pure(Ops::READ)
        .ops(Ops::WRITE)
        .fields(&[TOKEN]),
    Route::new("lookup-accessor", "Look up a token by accessor.")
        .ops(Ops::WRITE)
        .fields(&[ACCESSOR]),
    Route::new("renew", "Renew a token.")
        .ops(Ops::WRITE)
        .fields(&[TOKEN, INCREMENT]),
    Route::new("renew-self", "Renew the calling token.")
        .ops(Ops::WRITE)
        .fields(&[TOKEN, INCREMENT]),
    Route::new("renew-accessor", "Renew a token by accessor.")
        .ops(Ops::WRITE)
        .fields(&[ACCESSOR, INCREMENT]),
    Route::new("revoke", "Revoke a token and its children.")
        .ops(Ops::WRITE)
        .fields(&[TOKEN]),
    Route::new("revoke-self", "Revoke the calling token and its children.").ops(Ops::WRITE),
    Route::new("revoke-accessor", "Revoke a token by accessor.")
        .ops(Ops::WRITE)
        .fields(&[ACCESSOR]),
    Route::new(
        "revoke-orphan",
        "Revoke a token, making its children orphans.",
    )
    .ops(Ops::WRITE)
    .fields(&[TOKEN])
    .sudo(),
    Route::new("tidy", "Remove expired tokens now.").ops(Ops::WRITE),
    Route::new("roles", "List the token roles.").pure(Ops::LIST),
    Route::new("roles/{role_name}", "A token role.")
        .pure(Ops::READ)
        .ops(Ops::WRITE.and(Ops::DELETE))
        .fields(ROLE_FIELDS),
];

impl TokenStore {
    /// Serve a request matched to one of [`ROUTES`] for an authenticated caller.
    pub(crate) async fn handle(
        &self,
        req: &BackendRequest<'_>,
        caller: &Arc<TokenEntry>,
        caller_token: &str,
        sudo: bool,
    ) -> Result<Response, EngineError> {
        use Operation::{Create, Delete, List, Read, Update};
        let data = req.data;
        let role = req.capture("role_name");
        match (req.route.pattern, req.operation) {
            ("create", _) => self.handle_create(data, caller, sudo).await,
            ("create-orphan", _) => self.handle_create_orphan(data, caller, sudo).await,
            ("create/{role_name}", _) => {
                self.handle_create_with_role(role, data, caller, sudo).await
            }
            ("lookup-self", _) => self.handle_lookup_self(caller, caller_token).await,
            ("lookup", _) => self.handle_lookup(data).await,
            ("lookup-accessor", _) => self.handle_lookup_accessor(data).await,
            ("renew-self", _) => self.handle_renew_self(data, caller, caller_token).await,
            ("renew", _) => self.handle_renew(data).await,
            ("renew-accessor", _) => self.handle_renew_accessor(data).await,
            ("revoke-self", _) => self.handle_revoke_self(caller).await,
            ("revoke", _) => self.handle_revoke(data).await,
            ("revoke-accessor", _) => self.handle_revoke_accessor(data).await,
            ("revoke-orphan", _) => self.handle_revoke_orphan(data, sudo).await,
            ("tidy", _) => self.handle_tidy().await,
            ("roles", List) => self.handle_roles_list().await,
            ("roles/{role_name}", Read) => self.handle_role_read(role).await,
            ("roles/{role_name}", Create | Update) => self.handle_role_write(role, data).await,
            ("roles/{role_name}", Delete) => self.handle_role_delete(role).await,
            _ => Err(EngineError::UnsupportedOperation),
        }
    }

    /// `auth/token/create`: a child of the caller, or an orphan with `no_parent` (root or
    /// sudo).
    async fn handle_create(
        &self,
        data: &Map<String, Value>,
        caller: &Arc<TokenEntry>,
        sudo: bool,
    ) -> Result<Response, EngineError> {
        let orphan = params::boolean(data, "no_parent")?.unwrap_or(false);
        self.create_from_request(data, caller, sudo, orphan).await
    }

    /// `auth/token/create-orphan`: an orphan token (root or sudo).
    async fn handle_create_orphan(
        &self,
        data: &Map<String, Value>,
        caller: &Arc<TokenEntry>,
        sudo: bool,
    ) -> Result<Response, EngineError> {
        self.create_from_request(data, caller, sudo, true).await
    }

    /// The token of `auth/token/create` and `create-orphan`, without a role.
    async fn create_from_request(
        &self,
        data: &Map<String, Value>,
        caller: &Arc<TokenEntry>,
        sudo: bool,
        orphan: bool,
    ) -> Result<Response, EngineError> {
        if orphan && !sudo {
            return Err(EngineError::invalid(
                "root or sudo privileges are required to create an orphan token",
            ));
        }
        let (mut p, requested) = self.params_from(data, "auth/token/create", sudo)?;
        p.policies = decide_policies(caller, requested.policies, requested.no_default, None, sudo)?;
        let warnings = p.cap_durations(SYSTEM_MAX_TTL);
        let parent = if orphan { None } else { Some(caller.as_ref()) };
        let (token, entry) = self.create(parent, p).await?;
        Ok(Response {
            auth: Some(self.auth_object(&token, &entry)),
            warnings,
            ..Default::default()
        })
    }

    /// `auth/token/create/<role>`: a token as the role shapes it.
    async fn handle_create_with_role(
        &self,
        role_name: &str,
        data: &Map<String, Value>,
        caller: &Arc<TokenEntry>,
        sudo: bool,
    ) -> Result<Response, EngineError> {
        let role = self
            .role(role_name)
            .await?
            .ok_or_else(|| EngineError::invalid(format!("unknown role {role_name:?}")))?;
        let (mut p, requested) =
            self.params_from(data, &format!("auth/token/create/{role_name}"), sudo)?;
        // The same checks whether or not the role makes orphans: an orphan role decides
        // where the token hangs in the tree, not which policies the caller may mint.
        p.policies = decide_policies(
            caller,
            requested.policies,
            requested.no_default,
            Some((role_name, &role)),
            sudo,
        )?;
        p.renewable = p.renewable && role.renewable;
        if role.period > 0 {
            p.period = role.period;
        }
        if role.explicit_max_ttl > 0 {
            p.explicit_max_ttl = if p.explicit_max_ttl == 0 {
                role.explicit_max_ttl
            } else {
                p.explicit_max_ttl.min(role.explicit_max_ttl)
            };
        }
        let warnings = p.cap_durations(SYSTEM_MAX_TTL);
        let parent = if role.orphan {
            None
        } else {
            Some(caller.as_ref())
        };
        let (token, entry) = self.create(parent, p).await?;
        Ok(Response {
            auth: Some(self.auth_object(&token, &entry)),
            warnings,
            ..Default::default()
        })
    }

    /// `auth/token/lookup-self`: the caller's own token.
    async fn handle_lookup_self(
        &self,
        caller: &Arc<TokenEntry>,
        caller_token: &str,
    ) -> Result<Response, EngineError> {
        let now = self.clock.unix_seconds();
        Response::wire(&caller.lookup(caller_token, now))
    }

    /// `auth/token/lookup`: a token given by value.
    async fn handle_lookup(&self, data: &Map<String, Value>) -> Result<Response, EngineError> {
        let now = self.clock.unix_seconds();
        let t = required(data, "token")?;
        // Vault answers an unknown, expired or revoked token with 403.
        let e = self
            .peek(t)
            .await?
            .ok_or_else(|| EngineError::Forbidden("bad token".to_owned()))?;
        Response::wire(&e.lookup(t, now))
    }

    /// `auth/token/lookup-accessor`: a token given by accessor.
    async fn handle_lookup_accessor(
        &self,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let now = self.clock.unix_seconds();
        let a = required(data, "accessor")?;
        let e = self
            .lookup_accessor(a)
            .await?
            .ok_or_else(|| EngineError::invalid("invalid accessor"))?;
        Response::wire(&e.lookup("", now))
    }

    /// `auth/token/renew-self`: the caller's own token.
    async fn handle_renew_self(
        &self,
        data: &Map<String, Value>,
        caller: &Arc<TokenEntry>,
        caller_token: &str,
    ) -> Result<Response, EngineError> {
        let e = self
            .renew(caller, params::duration_secs(data, "increment")?)
            .await?;
        Ok(Response {
            auth: Some(self.auth_object(caller_token, &e)),
            ..Default::default()
        })
    }

    /// `auth/token/renew`: a token given by value.
    async fn handle_renew(&self, data: &Map<String, Value>) -> Result<Response, EngineError> {
        let t = required(data, "token")?;
        let e = self
            .peek(t)
            .await?
            .ok_or_else(|| EngineError::invalid("token not found"))?;
        let e = self
            .renew(&e, params::duration_secs(data, "increment")?)
            .await?;
        Ok(Response {
            auth: Some(self.auth_object(t, &e)),
            ..Default::default()
        })
    }

    /// `auth/token/renew-accessor`: a token given by accessor; the answer leaves out the
    /// token.
    async fn handle_renew_accessor(
        &self,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let a = required(data, "accessor")?;
        let e = self
            .lookup_accessor(a)
            .await?
            .ok_or_else(|| EngineError::invalid("invalid accessor"))?;
        let e = self
            .renew(&e, params::duration_secs(data, "increment")?)
            .await?;
        let mut auth = self.auth_object("", &e);
        auth.remove("client_token");
        Ok(Response {
            auth: Some(auth),
            ..Default::default()
        })
    }

    /// `auth/token/revoke-self`: the caller's token and its subtree.
    async fn handle_revoke_self(&self, caller: &Arc<TokenEntry>) -> Result<Response, EngineError> {
        self.revoke_tree(&caller.hash).await?;
        Ok(Response::no_content())
    }

    /// `auth/token/revoke`: a token given by value, and its subtree.
    async fn handle_revoke(&self, data: &Map<String, Value>) -> Result<Response, EngineError> {
        let t = required(data, "token")?;
        if let Some(e) = self.peek(t).await? {
            self.revoke_tree(&e.hash).await?;
        }
        Ok(Response::no_content())
    }

    /// `auth/token/revoke-accessor`: a token given by accessor, and its subtree.
    async fn handle_revoke_accessor(
        &self,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let a = required(data, "accessor")?;
        if let Some((_, e)) = self.by_accessor(a).await? {
            self.revoke_tree(&e.hash).await?;
        }
        Ok(Response::no_content())
    }

    /// `auth/token/revoke-orphan` (root or sudo): a token given by value; its children
    /// become orphans.
    async fn handle_revoke_orphan(
        &self,
        data: &Map<String, Value>,
        sudo: bool,
    ) -> Result<Response, EngineError> {
        if !sudo {
            return Err(EngineError::PermissionDenied);
        }
        let t = required(data, "token")?;
        if let Some(e) = self.peek(t).await? {
            self.revoke_orphan(&e).await?;
        }
        Ok(Response::no_content())
    }

    /// `auth/token/tidy`: remove expired tokens now, and repair the expiry index.
    async fn handle_tidy(&self) -> Result<Response, EngineError> {
        let n = self.tidy().await?;
        Ok(Response {
            warnings: vec![format!("removed {n} expired tokens")],
            ..Default::default()
        })
    }

    /// `LIST auth/token/roles`.
    async fn handle_roles_list(&self) -> Result<Response, EngineError> {
        let names = self.role_names().await?;
        if names.is_empty() {
            return Err(EngineError::NotFound(String::new()));
        }
        let mut d = Map::new();
        d.insert("keys".into(), json!(names));
        Ok(Response::data(d))
    }

    /// `GET auth/token/roles/<name>`.
    async fn handle_role_read(&self, name: &str) -> Result<Response, EngineError> {
        check_role_name(name)?;
        let r = self
            .role(name)
            .await?
            .ok_or_else(|| EngineError::NotFound(String::new()))?;
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        d.insert("allowed_policies".into(), json!(r.allowed_policies));
        d.insert("disallowed_policies".into(), json!(r.disallowed_policies));
        d.insert("orphan".into(), json!(r.orphan));
        d.insert("renewable".into(), json!(r.renewable));
        d.insert("token_period".into(), json!(r.period));
        d.insert("token_explicit_max_ttl".into(), json!(r.explicit_max_ttl));
        d.insert("path_suffix".into(), json!(r.path_suffix));
        Ok(Response::data(d))
    }

    /// `POST auth/token/roles/<name>`: create or replace the role.
    async fn handle_role_write(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        check_role_name(name)?;
        let role = TokenRole {
            allowed_policies: params::string_list(data, "allowed_policies")?.unwrap_or_default(),
            disallowed_policies: params::string_list(data, "disallowed_policies")?
                .unwrap_or_default(),
            orphan: params::boolean(data, "orphan")?.unwrap_or(false),
            renewable: params::boolean(data, "renewable")?.unwrap_or(true),
            period: params::duration_secs(data, "token_period")?
                .or(params::duration_secs(data, "period")?)
                .unwrap_or(0),
            explicit_max_ttl: params::duration_secs(data, "token_explicit_max_ttl")?
                .or(params::duration_secs(data, "explicit_max_ttl")?)
                .unwrap_or(0),
            path_suffix: params::string(data, "path_suffix")?
                .unwrap_or_default()
                .to_owned(),
        };
        self.put_role(name, &role).await?;
        Ok(Response::no_content())
    }

    /// `DELETE auth/token/roles/<name>`.
    async fn handle_role_delete(&self, name: &str) -> Result<Response, EngineError> {
        check_role_name(name)?;
        self.delete_role(name).await?;
        Ok(Response::no_content())
    }

    /// The creation parameters of a request, and the policies it asks for (decided
    /// later, with the role if there is one). A `period` needs root or sudo, as in Vault:
    /// a periodic token can be renewed forever.
    fn params_from(
        &self,
        data: &Map<String, Value>,
        path: &str,
        sudo: bool,
    ) -> Result<(CreateParams, RequestedPolicies), EngineError> {
        if let Some(t) = params::string(data, "type")?
            && !t.is_empty()
            && t != "service"
            && t != "default"
        {
            return Err(EngineError::invalid(format!(
                "token type {t:?} is not supported; use \"service\""
            )));
        }
        if params::string(data, "id")?.is_some_and(|s| !s.is_empty()) {
            return Err(EngineError::invalid("custom token ids are not supported"));
        }
        let period = params::duration_secs(data, "period")?.unwrap_or(0);
        if period > 0 && !sudo {
            return Err(EngineError::invalid(
                "root or sudo privileges are required to create a periodic token",
            ));
        }
        let requested = RequestedPolicies {
            policies: params::string_list(data, "policies")?.unwrap_or_default(),
            no_default: params::boolean(data, "no_default_policy")?.unwrap_or(false),
        };
        let p = CreateParams {
            policies: Vec::new(),
            ttl: params::duration_secs(data, "ttl")?.unwrap_or(0),
            explicit_max_ttl: params::duration_secs(data, "explicit_max_ttl")?.unwrap_or(0),
            period,
            renewable: params::boolean(data, "renewable")?.unwrap_or(true),
            num_uses: params::uint(data, "num_uses")?.unwrap_or(0),
            display_name: params::string(data, "display_name")?
                .unwrap_or_default()
                .to_owned(),
            meta: params::string_map(data, "meta")?.unwrap_or_default(),
            path: path.to_owned(),
            bound_cidrs: Vec::new(),
        };
        Ok((p, requested))
    }
}

/// The `policies` and `no_default_policy` parameters of a creation request.
struct RequestedPolicies {
    policies: Vec<String>,
    no_default: bool,
}

fn required<'a>(data: &'a Map<String, Value>, key: &str) -> Result<&'a str, EngineError> {
    params::string(data, key)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EngineError::invalid(format!("missing parameter {key:?}")))
}
