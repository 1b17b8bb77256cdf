//! The `cubbyhole/` mount: every token's private key/value storage.
//!
//! A token reaches only its own cubbyhole, whoever it is (a root token cannot read
//! another token's). The cubbyhole is the folder named by the token's storage hash (the
//! keyed HMAC the token store already files the token under, which does not reveal the
//! token) in the mount's barrier view, so everything in it is encrypted like any other
//! entry. Revoking the token, or its expiry, deletes the folder
//! ([`crate::token::TokenStore`]); nothing is shared and nothing outlives the token.
//!
//! Response wrapping rests on it: a wrapped response is kept at `response` in the
//! wrapping token's cubbyhole ([`crate::wrapping`]).

use keyhaven_storage::Store;
use serde_json::{Map, Value};

use crate::backend::BackendRequest;
use crate::error::EngineError;
use crate::request::{Operation, Response};
use crate::route::{Ops, Route};
use crate::token::TokenEntry;

/// The one route: any path below the mount.
pub(crate) static ROUTES: &[Route] = &[Route::new(
    "{path*}",
    "Read, write, list or delete a secret in the calling token's cubbyhole.",
)
.pure(Ops::READ.and(Ops::LIST))
.ops(Ops::WRITE.and(Ops::DELETE))
.arbitrary_fields()];

/// Where a wrapped response is kept in its wrapping token's cubbyhole.
pub(crate) const RESPONSE_KEY: &str = "response";

/// Vault's warning for reading a wrapped response without `sys/wrapping/unwrap`.
const RESPONSE_READ_WARNING: &str = "Reading from 'cubbyhole/response' is deprecated. Please use sys/wrapping/unwrap to unwrap responses, as it provides additional security checks and other benefits.";

/// The storage folder of `entry`'s cubbyhole.
pub(crate) fn folder(entry: &TokenEntry) -> String {
    format!("{}/", entry.hash)
}

/// Refuse paths that are not plain relative names.
fn check_path(path: &str) -> Result<(), EngineError> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if !trimmed.is_empty()
        && trimmed
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(EngineError::invalid(
            "invalid cubbyhole path: empty, '.' or '..' segment",
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(EngineError::invalid(
            "invalid cubbyhole path: control character",
        ));
    }
    Ok(())
}

/// Serve a request of `entry` on its own cubbyhole.
pub(crate) async fn handle(
    store: &dyn Store,
    entry: &TokenEntry,
    br: &BackendRequest<'_>,
) -> Result<Response, EngineError> {
    let path = br.captures.get("path").unwrap_or_default();
    check_path(path)?;
    let folder = folder(entry);
    match br.operation {
        Operation::Read => {
            if path.is_empty() {
                return Err(EngineError::invalid("missing path"));
            }
            let Some(data) = read(store, &folder, path).await? else {
                return Err(EngineError::NotFound(String::new()));
            };
            let mut resp = Response::data(data);
            if path == RESPONSE_KEY && entry.policies == [crate::policy::RESPONSE_WRAPPING] {
                resp.warnings.push(RESPONSE_READ_WARNING.to_owned());
            }
            Ok(resp)
        }
        Operation::List => {
            let dir = match path.trim_end_matches('/') {
                "" => folder,
                p => format!("{folder}{p}/"),
            };
            let keys = crate::core::list_all(store, &dir).await?;
            if keys.is_empty() {
                return Err(EngineError::NotFound(String::new()));
            }
            let mut data = Map::new();
            data.insert("keys".to_owned(), Value::from(keys));
            Ok(Response::data(data))
        }
        Operation::Create | Operation::Update => {
            if path.is_empty() {
                return Err(EngineError::invalid("missing path"));
            }
            if path.ends_with('/') {
                return Err(EngineError::invalid("cannot write to a path ending in '/'"));
            }
            if br.data.is_empty() {
                return Err(EngineError::invalid("missing data fields"));
            }
            write(store, &folder, path, br.data).await?;
            Ok(Response::no_content())
        }
        Operation::Delete => {
            if path.is_empty() {
                return Err(EngineError::invalid("missing path"));
            }
            store.delete(&format!("{folder}{path}")).await?;
            Ok(Response::no_content())
        }
        Operation::Patch => Err(EngineError::UnsupportedOperation),
    }
}

/// The object at `path` in the cubbyhole `folder`.
pub(crate) async fn read(
    store: &dyn Store,
    folder: &str,
    path: &str,
) -> Result<Option<Map<String, Value>>, EngineError> {
    let Some(bytes) = store.get(&format!("{folder}{path}")).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| EngineError::Corrupt("a cubbyhole entry is malformed".to_owned()))
}

/// Store `data` at `path` in the cubbyhole `folder`.
pub(crate) async fn write(
    store: &dyn Store,
    folder: &str,
    path: &str,
    data: &Map<String, Value>,
) -> Result<(), EngineError> {
    let bytes = serde_json::to_vec(data).map_err(|_| EngineError::Encode("a cubbyhole entry"))?;
    store.put(&format!("{folder}{path}"), bytes).await?;
    Ok(())
}
