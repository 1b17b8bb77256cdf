//! The token store (`auth/token/*`), logins (`auth/<mount>/login`) and
//! `sys/capabilities*`.
//!
//! Tokens leave these calls only as [`SecretString`]s inside [`TokenAuth`], whose `Debug`
//! redacts them. Lookups drop the `id` field of the answer (the token looked up), so a
//! lookup result can be printed or logged as it is.

use std::collections::BTreeMap;
use std::fmt;

use keyhaven_types::wire::TokenLookup;
use reqwest::Method;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::error::ClientError;
use crate::secret::{Secret, envelope_data, envelope_warnings};

/// The `auth` object of a login, token creation or renewal.
///
/// `Debug` never shows the token; [`TokenAuth::to_api`] includes it only when asked.
#[derive(Clone)]
#[non_exhaustive]
pub struct TokenAuth {
    /// The token (empty when the server did not return one, e.g. a renewal by accessor).
    pub client_token: SecretString,
    /// The token's accessor.
    pub accessor: String,
    /// All policies of the token.
    pub policies: Vec<String>,
    /// Policies attached to the token itself.
    pub token_policies: Vec<String>,
    /// Policies that come from an identity entity.
    pub identity_policies: Vec<String>,
    /// Metadata, e.g. `role` and `service_account_name` of a Kubernetes login.
    pub metadata: BTreeMap<String, String>,
    /// Seconds left to live (0: no expiry).
    pub lease_duration: u64,
    /// Whether the token can be renewed.
    pub renewable: bool,
    /// Whether the token has no parent.
    pub orphan: bool,
    /// Uses left (0: unlimited).
    pub num_uses: u64,
    /// Token type, e.g. `service`.
    pub token_type: String,
}

impl fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuth")
            .field("client_token", &"[REDACTED]")
            .field("accessor", &self.accessor)
            .field("policies", &self.policies)
            .field("token_policies", &self.token_policies)
            .field("identity_policies", &self.identity_policies)
            .field("metadata", &self.metadata)
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .field("orphan", &self.orphan)
            .field("num_uses", &self.num_uses)
            .field("token_type", &self.token_type)
            .finish()
    }
}

impl TokenAuth {
    /// The `auth` object in Vault's wire shape. The token is included only when
    /// `with_token` is set (the place whose purpose is to show it); otherwise the
    /// `client_token` field is absent.
    pub fn to_api(&self, with_token: bool) -> Value {
        let mut a = Map::new();
        if with_token {
            // The one explicit crossing from secret to plain value.
            a.insert(
                "client_token".into(),
                json!(self.client_token.expose_secret()),
            );
        }
        a.insert("accessor".into(), json!(self.accessor));
        a.insert("policies".into(), json!(self.policies));
        a.insert("token_policies".into(), json!(self.token_policies));
        a.insert("identity_policies".into(), json!(self.identity_policies));
        a.insert(
            "metadata".into(),
            if self.metadata.is_empty() {
                Value::Null
            } else {
                json!(self.metadata)
            },
        );
        a.insert("lease_duration".into(), json!(self.lease_duration));
        a.insert("renewable".into(), json!(self.renewable));
        a.insert("orphan".into(), json!(self.orphan));
        a.insert("num_uses".into(), json!(self.num_uses));
        a.insert("token_type".into(), json!(self.token_type));
        Value::Object(a)
    }
}

/// The wire form of [`TokenAuth`]; its token becomes a secret at once.
#[derive(Deserialize)]
struct RawAuth {
    #[serde(default)]
    client_token: String,
    #[serde(default)]
    accessor: String,
    #[serde(default, deserialize_with = "null_as_default")]
    policies: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    token_policies: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    identity_policies: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    orphan: bool,
    #[serde(default)]
    num_uses: u64,
    #[serde(default)]
    token_type: String,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An answer that carries an `auth` object: a login, a token creation, a renewal.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthResponse {
    /// Request id, also in the server log.
    pub request_id: String,
    /// Warnings of the server.
    pub warnings: Vec<String>,
    /// The token and what it grants.
    pub auth: TokenAuth,
}

impl AuthResponse {
    /// The answer in Vault's envelope shape, with the token only when `with_token`.
    pub fn to_api(&self, with_token: bool) -> Value {
        json!({
            "request_id": self.request_id,
            "lease_id": "",
            "lease_duration": 0,
            "renewable": false,
            "data": null,
            "warnings": if self.warnings.is_empty() { Value::Null } else { json!(self.warnings) },
            "auth": self.auth.to_api(with_token),
        })
    }
}

/// Parameters of `auth/token/create` (Vault's names; empty fields are not sent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CreateToken {
    /// Policies; without any, a child token inherits its parent's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// Metadata.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Do not add the `default` policy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_default_policy: bool,
    /// Time to live, e.g. `1h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Hard limit of the lifetime, renewals included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explicit_max_ttl: Option<String>,
    /// Periodic token: each renewal extends it by this much.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Whether it can be renewed (server default: yes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewable: Option<bool>,
    /// Uses allowed (0: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_uses: Option<u64>,
    /// Display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// Where a new token hangs in the token tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenParent<'a> {
    /// A child of the calling token (`auth/token/create`).
    Caller,
    /// No parent (`auth/token/create-orphan`; needs sudo).
    Orphan,
    /// Through a token role (`auth/token/create/<role>`).
    Role(&'a str),
}

/// Which token an operation is about.
#[derive(Clone, Copy)]
pub enum TokenRef<'a> {
    /// The calling token (`…-self`).
    Caller,
    /// Another token, by value.
    Token(&'a SecretString),
    /// Another token, by accessor.
    Accessor(&'a str),
}

impl fmt::Debug for TokenRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRef::Caller => f.write_str("Caller"),
            TokenRef::Token(_) => f.write_str("Token([REDACTED])"),
            TokenRef::Accessor(a) => f.debug_tuple("Accessor").field(a).finish(),
        }
    }
}

impl TokenRef<'_> {
    /// The endpoint under `auth/token/` for `op` (`lookup`, `renew`, `revoke`) and the
    /// request body.
    fn endpoint(&self, op: &str) -> (String, Value) {
        match self {
            TokenRef::Caller => (format!("auth/token/{op}-self"), json!({})),
            TokenRef::Token(t) => (
                format!("auth/token/{op}"),
                json!({ "token": t.expose_secret() }),
            ),
            TokenRef::Accessor(a) => (
                format!("auth/token/{op}-accessor"),
                json!({ "accessor": a }),
            ),
        }
    }
}

impl Client {
    fn auth_response(
        method: &'static str,
        path: &str,
        v: Value,
    ) -> Result<AuthResponse, ClientError> {
        let decode = || ClientError::Decode {
            method,
            path: path.to_owned(),
            status: 200,
            expected: "an auth object",
        };
        let request_id = v
            .get("request_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let warnings = envelope_warnings(Some(&v));
        let auth = match v {
            Value::Object(mut map) => map.remove("auth").ok_or_else(decode)?,
            _ => return Err(decode()),
        };
        if auth.is_null() {
            return Err(decode());
        }
        // The decoder's message is dropped: it may quote the token.
        let raw: RawAuth = serde_json::from_value(auth).map_err(|_| decode())?;
        Ok(AuthResponse {
            request_id,
            warnings,
            auth: TokenAuth {
                client_token: SecretString::from(raw.client_token),
                accessor: raw.accessor,
                policies: raw.policies,
                token_policies: raw.token_policies,
                identity_policies: raw.identity_policies,
                metadata: raw.metadata,
                lease_duration: raw.lease_duration,
                renewable: raw.renewable,
                orphan: raw.orphan,
                num_uses: raw.num_uses,
                token_type: raw.token_type,
            },
        })
    }

    /// `POST auth/<mount>/login` with `body`: the new token. No token of this client is
    /// needed. The body may carry credentials; it never enters an error.
    pub async fn login(&self, mount: &str, body: &Value) -> Result<AuthResponse, ClientError> {
        let path = format!("auth/{}/login", mount.trim_matches('/'));
        let v = self
            .call_some(Method::POST, &path, &[], Some(body), "an auth object")
            .await?;
        Self::auth_response("POST", &path, v)
    }

    /// `POST auth/<mount>/login {"role", "jwt"}`: log in with a Kubernetes
    /// ServiceAccount token.
    pub async fn login_kubernetes(
        &self,
        mount: &str,
        role: &str,
        jwt: &SecretString,
    ) -> Result<AuthResponse, ClientError> {
        let body = json!({ "role": role, "jwt": jwt.expose_secret() });
        self.login(mount, &body).await
    }

    /// `POST auth/token/create` (or `create-orphan`, `create/<role>`): a new token.
    pub async fn create_token(
        &self,
        parent: TokenParent<'_>,
        request: &CreateToken,
    ) -> Result<AuthResponse, ClientError> {
        let path = match parent {
            TokenParent::Caller => "auth/token/create".to_owned(),
            TokenParent::Orphan => "auth/token/create-orphan".to_owned(),
            TokenParent::Role(r) => format!("auth/token/create/{}", r.trim_matches('/')),
        };
        let body = serde_json::to_value(request).unwrap_or(Value::Null);
        let v = self
            .call_some(Method::POST, &path, &[], Some(&body), "an auth object")
            .await?;
        Self::auth_response("POST", &path, v)
    }

    /// `auth/token/lookup-self` (`GET`), `lookup` or `lookup-accessor` (`POST`): the
    /// token's properties, without its `id` (the token itself).
    pub async fn lookup_token(
        &self,
        which: TokenRef<'_>,
    ) -> Result<Secret<TokenLookup>, ClientError> {
        let (path, body) = which.endpoint("lookup");
        let (method, name, body) = match which {
            TokenRef::Caller => (Method::GET, "GET", None),
            _ => (Method::POST, "POST", Some(&body)),
        };
        let v = self
            .call_some(method, &path, &[], body, "token properties")
            .await?;
        let mut secret: Secret<TokenLookup> = Self::decode(name, &path, v, "token properties")?;
        secret.data.id = None;
        Ok(secret)
    }

    /// `auth/token/renew-self`, `renew` or `renew-accessor`, with an optional increment
    /// such as `1h`.
    pub async fn renew_token(
        &self,
        which: TokenRef<'_>,
        increment: Option<&str>,
    ) -> Result<AuthResponse, ClientError> {
        let (path, mut body) = which.endpoint("renew");
        if let (Some(inc), Value::Object(map)) = (increment, &mut body) {
            map.insert("increment".into(), json!(inc));
        }
        let v = self
            .call_some(Method::POST, &path, &[], Some(&body), "an auth object")
            .await?;
        Self::auth_response("POST", &path, v)
    }

    /// `auth/token/revoke-self`, `revoke` or `revoke-accessor`: revoke the token and
    /// its children. Revoking a token that does not exist succeeds.
    pub async fn revoke_token(&self, which: TokenRef<'_>) -> Result<(), ClientError> {
        let (path, body) = which.endpoint("revoke");
        self.call_opt(Method::POST, &path, &body).await.map(drop)
    }

    /// `auth/token/revoke-orphan`: revoke the token and make its children orphans
    /// (needs sudo).
    pub async fn revoke_token_orphan(&self, token: &SecretString) -> Result<(), ClientError> {
        let body = json!({ "token": token.expose_secret() });
        self.call_opt(Method::POST, "auth/token/revoke-orphan", &body)
            .await
            .map(drop)
    }

    /// `sys/capabilities-self` (`token` is `None`) or `sys/capabilities`: the
    /// capabilities the token has on `path`.
    pub async fn capabilities(
        &self,
        token: Option<&SecretString>,
        path: &str,
    ) -> Result<Vec<String>, ClientError> {
        let (api, body) = match token {
            None => ("sys/capabilities-self", json!({ "paths": [path] })),
            Some(t) => (
                "sys/capabilities",
                json!({ "token": t.expose_secret(), "paths": [path] }),
            ),
        };
        let v = self
            .call_some(Method::POST, api, &[], Some(&body), "capabilities")
            .await?;
        let data = envelope_data(v);
        let caps = data
            .get("capabilities")
            .or_else(|| data.get(path))
            .cloned()
            .ok_or(ClientError::Decode {
                method: "POST",
                path: api.to_owned(),
                status: 200,
                expected: "capabilities",
            })?;
        Self::decode("POST", api, caps, "capabilities")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_body() -> Value {
        json!({"request_id": "r1", "data": null, "warnings": ["w"], "auth": {
            "client_token": "kh.s3cr3tvalue", "accessor": "acc1", "policies": ["default", "p"],
            "token_policies": ["default", "p"], "identity_policies": null, "metadata": {"role": "app"},
            "lease_duration": 3600, "renewable": true, "orphan": false, "num_uses": 0,
            "token_type": "service", "entity_id": "", "mfa_requirement": null}})
    }

    #[test]
    fn auth_objects_decode_and_hide_the_token() {
        let r = Client::auth_response("POST", "auth/token/create", auth_body()).unwrap();
        assert_eq!(r.auth.client_token.expose_secret(), "kh.s3cr3tvalue");
        assert_eq!(r.auth.accessor, "acc1");
        assert_eq!(r.auth.policies, ["default", "p"]);
        assert!(r.auth.identity_policies.is_empty());
        assert_eq!(r.auth.metadata.get("role").map(String::as_str), Some("app"));
        assert_eq!(r.warnings, ["w"]);
        let shown = format!("{r:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let hidden = r.to_api(false).to_string();
        assert!(!hidden.contains("s3cr3t"), "{hidden}");
        assert!(r.to_api(true).to_string().contains("kh.s3cr3tvalue"));
    }

    #[test]
    fn an_answer_without_auth_is_a_decode_error_without_values() {
        let e = Client::auth_response("POST", "auth/k/login", json!({"data": {"x": "s3cr3t"}}))
            .unwrap_err();
        assert!(matches!(e, ClientError::Decode { .. }));
        let e = Client::auth_response(
            "POST",
            "auth/k/login",
            json!({"auth": {"client_token": 5, "note": "s3cr3t"}}),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"));
    }

    #[test]
    fn lookups_decode_from_openbao_and_hide_the_token() {
        let v = json!({"request_id": "r", "data": {"accessor": "acc", "creation_time": 1,
            "creation_ttl": 0, "display_name": "root", "entity_id": "", "expire_time": null,
            "explicit_max_ttl": 0, "id": "kh.s3cr3tvalue", "identity_policies": ["x"],
            "issue_time": "2026-01-01T00:00:00Z", "meta": null, "num_uses": 0, "orphan": true,
            "path": "auth/token/root", "policies": ["root"], "renewable": false, "ttl": 0,
            "type": "service"}});
        let s: Secret<TokenLookup> = serde_json::from_value(v).unwrap();
        assert_eq!((s.data.accessor.as_str(), s.data.orphan), ("acc", true));
        assert_eq!(s.data.id.as_deref(), Some("kh.s3cr3tvalue"));
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn token_refs_pick_endpoints_and_bodies() {
        let t = SecretString::from("kh.abc");
        assert_eq!(
            TokenRef::Caller.endpoint("renew"),
            ("auth/token/renew-self".into(), json!({}))
        );
        assert_eq!(
            TokenRef::Token(&t).endpoint("lookup"),
            ("auth/token/lookup".into(), json!({"token": "kh.abc"}))
        );
        assert_eq!(
            TokenRef::Accessor("a1").endpoint("revoke"),
            (
                "auth/token/revoke-accessor".into(),
                json!({"accessor": "a1"})
            )
        );
        assert!(!format!("{:?}", TokenRef::Token(&t)).contains("abc"));
    }

    #[test]
    fn create_requests_send_only_what_is_set() {
        let mut r = CreateToken::default();
        assert_eq!(serde_json::to_value(&r).unwrap(), json!({}));
        r.policies = vec!["p".into()];
        r.ttl = Some("1h".into());
        r.num_uses = Some(3);
        r.no_default_policy = true;
        r.meta.insert("team".into(), "a".into());
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"policies": ["p"], "ttl": "1h", "num_uses": 3, "no_default_policy": true, "meta": {"team": "a"}})
        );
    }
}
