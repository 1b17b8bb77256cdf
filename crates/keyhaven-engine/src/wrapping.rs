//! Response wrapping: a response kept in a single-use token's cubbyhole instead of being
//! answered, and `sys/wrapping/{wrap,unwrap,lookup,rewrap}`.
//!
//! A request that asks for wrapping (the server's `X-Vault-Wrap-TTL`, here a
//! [`WrapRequest`]) runs as usual; if it succeeds with something to answer, the core
//! mints a wrapping token (an orphan with only the built-in `response-wrapping` policy,
//! one use, the requested TTL as its TTL and hard limit), writes the response (Vault's
//! envelope, as a JSON string) at `response` in that token's cubbyhole, behind the
//! barrier like everything else, and answers `wrap_info` instead. Errors and empty
//! answers are not wrapped, as in Vault.
//!
//! Unwrapping spends the token's one use with a compare-and-swap on its entry
//! ([`crate::token::TokenStore::lookup`]): of two concurrent unwraps exactly one gets
//! the response, the other is told the token is not valid. The token is then revoked,
//! and revoking a token deletes its cubbyhole, so the response is gone. A token that
//! expires unused is swept the same way.
//!
//! The wrapping token may be given in the body (`token`, with the caller's own token in
//! `X-Vault-Token`) or as `X-Vault-Token` itself; `sys/wrapping/lookup` needs no other
//! token and spends no use.

use std::sync::Arc;

use keyhaven_types::wire::WrapInfo;
use serde_json::{Map, Value, json};

use crate::backend::BackendRequest;
use crate::clock::rfc3339;
use crate::core::{Core, Unsealed};
use crate::cubbyhole;
use crate::error::EngineError;
use crate::params;
use crate::policy::RESPONSE_WRAPPING;
use crate::request::{Operation, Request, Response};
use crate::token::TokenEntry;

/// The error for a wrapping token that is unknown, used, expired or not a wrapping
/// token: one message for all, as in Vault.
pub(crate) const INVALID_TOKEN: &str = "wrapping token is not valid or does not exist";

/// A request's ask to have its response wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapRequest {
    /// The wrapping token's TTL, in seconds (at least 1).
    pub ttl: u64,
}

impl WrapRequest {
    /// Parse an `X-Vault-Wrap-TTL` header: a number of seconds or a Go duration. `0`
    /// asks for no wrapping (`None`), as in Vault; a positive duration under a second
    /// is rounded up to one. The error is the message of a 400, and names the header.
    pub fn from_header(value: &str) -> Result<Option<WrapRequest>, String> {
        let fail = |why: &str| format!("error parsing X-Vault-Wrap-TTL header: {why}");
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        if value.starts_with('-') {
            return Err(fail("requested wrap ttl cannot be negative"));
        }
        let Some(secs) = params::parse_duration(value) else {
            let shown: String = value.chars().take(32).collect();
            return Err(fail(&format!("invalid duration {shown:?}")));
        };
        if secs > 0 {
            return Ok(Some(WrapRequest { ttl: secs }));
        }
        // Whole seconds only: "500ms" is not nothing.
        let nonzero = value.bytes().any(|b| (b'1'..=b'9').contains(&b));
        Ok(nonzero.then_some(WrapRequest { ttl: 1 }))
    }
}

/// Whether `entry` is a wrapping token.
fn is_wrapping(entry: &TokenEntry) -> bool {
    entry.policies == [RESPONSE_WRAPPING]
}

fn invalid() -> EngineError {
    EngineError::invalid(INVALID_TOKEN)
}

/// The envelope a wrapped response is kept as (and unwrapped from).
fn envelope(resp: &Response, request_id: &str) -> Result<Value, EngineError> {
    Ok(json!({
        "request_id": request_id,
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": resp.data_view()?,
        "wrap_info": Value::Null,
        "warnings": (!resp.warnings.is_empty()).then_some(&resp.warnings),
        "auth": resp.auth,
    }))
}

/// The response a stored envelope holds.
fn from_envelope(stored: &Map<String, Value>) -> Result<Response, EngineError> {
    let corrupt = || EngineError::Corrupt("a wrapped response is malformed".to_owned());
    let text = stored
        .get("response")
        .and_then(Value::as_str)
        .ok_or_else(corrupt)?;
    let mut envelope: Map<String, Value> = serde_json::from_str(text).map_err(|_| corrupt())?;
    let object = |v: Option<Value>| match v {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    };
    let warnings = match envelope.remove("warnings") {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|w| w.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Response {
        data: object(envelope.remove("data")),
        auth: object(envelope.remove("auth")),
        warnings,
        ..Response::default()
    })
}

impl Core {
    /// Wrap a successful response of a request to `path`: mint the wrapping token, keep
    /// the response in its cubbyhole, and answer `wrap_info`.
    pub(crate) async fn wrap_response(
        &self,
        inner: &Unsealed,
        path: &str,
        request_id: &str,
        resp: &Response,
        ttl: u64,
    ) -> Result<Response, EngineError> {
        let stored = envelope(resp, request_id)?;
        let wrapped_accessor = resp
            .auth
            .as_ref()
            .and_then(|a| a.get("accessor"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.store_wrapped(inner, path, &stored, ttl, wrapped_accessor)
            .await
    }

    async fn store_wrapped(
        &self,
        inner: &Unsealed,
        path: &str,
        stored: &Value,
        ttl: u64,
        wrapped_accessor: Option<String>,
    ) -> Result<Response, EngineError> {
        let store = inner
            .tokens
            .cubbyholes()
            .ok_or(EngineError::Internal("the cubbyhole mount is missing"))?;
        let text =
            serde_json::to_string(stored).map_err(|_| EngineError::Encode("a wrapped response"))?;
        let (token, entry) = inner.tokens.create_wrapping(ttl, path).await?;
        let mut cell = Map::new();
        cell.insert("response".to_owned(), Value::String(text));
        if let Err(e) = cubbyhole::write(
            store.as_ref(),
            &cubbyhole::folder(&entry),
            cubbyhole::RESPONSE_KEY,
            &cell,
        )
        .await
        {
            // The response was not kept: the token must not outlive it.
            let _ = inner.tokens.revoke_tree(&entry.hash).await;
            return Err(e);
        }
        Ok(Response {
            wrap_info: Some(WrapInfo {
                token,
                accessor: entry.accessor.clone(),
                ttl: entry.creation_ttl,
                creation_time: rfc3339(unix(entry.creation_time)),
                creation_path: entry.path.clone(),
                wrapped_accessor,
            }),
            ..Response::default()
        })
    }

    /// Spend the one use of the wrapping token `token` given in a body. `None`-like
    /// failures (unknown, used, expired, not a wrapping token, or spent by a concurrent
    /// request) are all [`INVALID_TOKEN`].
    async fn spend(&self, inner: &Unsealed, token: &str) -> Result<Arc<TokenEntry>, EngineError> {
        // Look first without spending: a limited-use token of another kind keeps its use.
        let peeked = inner.tokens.peek(token).await?.ok_or_else(invalid)?;
        if !is_wrapping(&peeked) {
            return Err(invalid());
        }
        let spent = inner.tokens.lookup(token).await?.ok_or_else(invalid)?;
        if !spent.revoking || spent.hash != peeked.hash {
            return Err(invalid());
        }
        Ok(spent)
    }

    /// The response kept in a spent wrapping token's cubbyhole.
    async fn wrapped_of(
        &self,
        inner: &Unsealed,
        entry: &TokenEntry,
    ) -> Result<Map<String, Value>, EngineError> {
        let store = inner
            .tokens
            .cubbyholes()
            .ok_or(EngineError::Internal("the cubbyhole mount is missing"))?;
        cubbyhole::read(
            store.as_ref(),
            &cubbyhole::folder(entry),
            cubbyhole::RESPONSE_KEY,
        )
        .await?
        .ok_or_else(invalid)
    }

    /// Revoke a wrapping token given in a body once its response was taken; if that
    /// fails, the token is already unusable (its use is spent) and the sweeper finishes.
    async fn retire(&self, inner: &Unsealed, entry: &TokenEntry) {
        if let Err(e) = inner.tokens.revoke_tree(&entry.hash).await {
            tracing::warn!(target: "keyhaven::wrapping", error = %e, "revoking a spent wrapping token failed; the sweeper will finish it");
        }
    }

    /// `sys/wrapping/{wrap,unwrap,lookup,rewrap}`.
    pub(crate) async fn handle_wrapping(
        &self,
        inner: &Arc<Unsealed>,
        br: &BackendRequest<'_>,
        entry: Option<&Arc<TokenEntry>>,
        req: &Request,
        wrap: Option<WrapRequest>,
    ) -> Result<Response, EngineError> {
        let body_token = params::string(&req.data, "token")?.filter(|t| !t.is_empty());
        match br.route.pattern {
            "wrapping/wrap" => {
                if wrap.is_none() {
                    return Err(EngineError::invalid(
                        "endpoint requires response wrapping to be used",
                    ));
                }
                Ok(Response::data(req.data.clone()))
            }
            "wrapping/lookup" => {
                let token = match body_token {
                    Some(t) => t,
                    None => req.token.as_ref().map(|t| t.expose()).unwrap_or_default(),
                };
                if token.is_empty() {
                    return Err(EngineError::invalid(
                        "error validating wrapping token: token is empty",
                    ));
                }
                let found = inner.tokens.peek(token).await?.ok_or_else(invalid)?;
                if !is_wrapping(&found) {
                    return Err(invalid());
                }
                let mut data = Map::new();
                data.insert("creation_path".to_owned(), json!(found.path));
                data.insert(
                    "creation_time".to_owned(),
                    json!(rfc3339(unix(found.creation_time))),
                );
                data.insert("creation_ttl".to_owned(), json!(found.creation_ttl));
                Ok(Response::data(data))
            }
            "wrapping/unwrap" => {
                let (wrapping, from_body) = match body_token {
                    Some(t) => (self.spend(inner, t).await?, true),
                    None => {
                        // The wrapping token is the caller's token: authenticating this
                        // request spent its use, and the request revokes it as it ends.
                        let e = entry.ok_or(EngineError::PermissionDenied)?;
                        if !is_wrapping(e) || !e.revoking {
                            return Err(invalid());
                        }
                        (e.clone(), false)
                    }
                };
                let stored = self.wrapped_of(inner, &wrapping).await;
                if from_body {
                    self.retire(inner, &wrapping).await;
                }
                from_envelope(&stored?)
            }
            "wrapping/rewrap" => {
                let token = body_token.ok_or_else(invalid)?;
                let old = self.spend(inner, token).await?;
                let stored = match self.wrapped_of(inner, &old).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.retire(inner, &old).await;
                        return Err(e);
                    }
                };
                let text = stored
                    .get("response")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        EngineError::Corrupt("a wrapped response is malformed".to_owned())
                    })?;
                let value: Value = serde_json::from_str(text).map_err(|_| {
                    EngineError::Corrupt("a wrapped response is malformed".to_owned())
                })?;
                let wrapped_accessor = value
                    .get("auth")
                    .and_then(|a| a.get("accessor"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let ttl = wrap.map_or(old.creation_ttl, |w| w.ttl);
                let resp = self
                    .store_wrapped(inner, &old.path, &value, ttl, wrapped_accessor)
                    .await;
                self.retire(inner, &old).await;
                resp
            }
            _ => Err(EngineError::UnsupportedOperation),
        }
    }
}

/// Whether a request's failed authentication is an unwrap with a wrapping token that is
/// no longer valid: Vault tells the caller so rather than "permission denied".
pub(crate) fn unwrap_with_stale_token(req: &Request) -> bool {
    req.path == "sys/wrapping/unwrap"
        && req.operation == Operation::Update
        && req.token.is_some()
        && req
            .data
            .get("token")
            .is_none_or(|t| t.as_str().is_none_or(str::is_empty))
}

pub(crate) fn stale_token_error() -> EngineError {
    invalid()
}

fn unix(t: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(t).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrap_ttl_header_is_parsed_like_vaults() {
        let ttl = |v: &str| WrapRequest::from_header(v).map(|w| w.map(|w| w.ttl));
        assert_eq!(ttl("60"), Ok(Some(60)));
        assert_eq!(ttl("60s"), Ok(Some(60)));
        assert_eq!(ttl("5m"), Ok(Some(300)));
        assert_eq!(ttl("1h30m"), Ok(Some(5400)));
        assert_eq!(ttl("0"), Ok(None));
        assert_eq!(ttl("0s"), Ok(None));
        assert_eq!(ttl("500ms"), Ok(Some(1)));
        assert_eq!(ttl(""), Ok(None));
        for bad in ["abc", "5 minutes", "1e3", "99999999999999999999"] {
            let err = ttl(bad).unwrap_err();
            assert!(err.contains("X-Vault-Wrap-TTL"), "{bad}: {err}");
        }
        let err = ttl("-5").unwrap_err();
        assert!(err.contains("cannot be negative"), "{err}");
        let long = "x".repeat(1000);
        assert!(
            ttl(&long).unwrap_err().len() < 120,
            "the value is echoed whole"
        );
    }
}
