//! The token store.
//!
//! Tokens are never stored: an entry is kept under the HMAC-SHA256 of the token, keyed by
//! a per-installation salt that lives behind the barrier (`core/token/salt`). A stolen
//! database therefore yields neither tokens nor a way to test guesses offline without the
//! barrier keys.
//!
//! Only root tokens exist so far; the full token store (children, TTLs, accessors,
//! revocation) extends this type.

use std::collections::HashMap;
use std::sync::Arc;

use keyhaven_crypto::{HmacKey, fill_random};
use keyhaven_storage::Store;
use keyhaven_types::token::{self, TokenKind};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::EngineError;

const SALT_PATH: &str = "core/token/salt";
const ID_PREFIX: &str = "core/token/id/";

/// What the store keeps about a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Policies attached to the token.
    pub policies: Vec<String>,
    /// Public handle for lookup and revocation without the token.
    pub accessor: String,
    /// Human-readable name.
    pub display_name: String,
    /// Creation time, Unix seconds.
    pub creation_time: i64,
    /// Path that created it.
    pub path: String,
}

impl TokenEntry {
    /// Whether the token carries the `root` policy.
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }
}

/// The token store of an unsealed server.
pub struct TokenStore {
    storage: Arc<dyn Store>,
    hasher: HmacKey,
    cache: RwLock<HashMap<[u8; 32], Arc<TokenEntry>>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").finish_non_exhaustive()
    }
}

/// Make a new random salt, for init.
pub(crate) fn new_salt() -> Result<Zeroizing<Vec<u8>>, EngineError> {
    let mut salt = Zeroizing::new(vec![0u8; 32]);
    fill_random(&mut salt).map_err(|_| EngineError::Crypto)?;
    Ok(salt)
}

/// Storage key and value of the salt, for init.
pub(crate) fn salt_entry(salt: &[u8]) -> (String, Vec<u8>) {
    (SALT_PATH.to_owned(), salt.to_vec())
}

/// Generate a fresh service token string.
pub(crate) fn generate_token() -> Result<String, EngineError> {
    let mut failed = false;
    let token = token::generate(TokenKind::Service, |buf| {
        if fill_random(buf).is_err() {
            failed = true;
        }
    });
    if failed {
        Err(EngineError::Crypto)
    } else {
        Ok(token)
    }
}

fn generate_accessor() -> Result<String, EngineError> {
    let mut bytes = [0u8; 18];
    fill_random(&mut bytes).map_err(|_| EngineError::Crypto)?;
    Ok(hex::encode(bytes))
}

impl TokenStore {
    /// Load the store of an unsealed barrier view.
    pub(crate) async fn load(storage: Arc<dyn Store>) -> Result<Self, EngineError> {
        let salt = Zeroizing::new(
            storage
                .get(SALT_PATH)
                .await?
                .ok_or_else(|| EngineError::Corrupt("the token salt is missing".to_owned()))?,
        );
        Ok(Self::with_salt(storage, &salt))
    }

    pub(crate) fn with_salt(storage: Arc<dyn Store>, salt: &[u8]) -> Self {
        TokenStore {
            storage,
            hasher: HmacKey::new(salt),
            cache: RwLock::new(HashMap::new()),
        }
    }

    fn key_for(&self, hash: &[u8; 32]) -> String {
        format!("{ID_PREFIX}{}", hex::encode(hash))
    }

    /// The storage entry (key, value) for a new root token `id`, for init; nothing is written.
    pub(crate) fn root_entry(
        &self,
        id: &str,
        now_unix: i64,
    ) -> Result<(String, Vec<u8>), EngineError> {
        let entry = TokenEntry {
            policies: vec!["root".to_owned()],
            accessor: generate_accessor()?,
            display_name: "root".to_owned(),
            creation_time: now_unix,
            path: "auth/token/root".to_owned(),
        };
        let value = serde_json::to_vec(&entry).map_err(|_| EngineError::Crypto)?;
        Ok((self.key_for(&self.hasher.sign(id.as_bytes())), value))
    }

    /// Look up a presented token; `None` if it is unknown.
    pub async fn lookup(&self, token: &str) -> Result<Option<Arc<TokenEntry>>, EngineError> {
        // Keyhaven-format tokens with a bad checksum are refused without a lookup.
        if matches!(
            token::parse(token),
            Err(token::TokenFormatError::BadChecksum | token::TokenFormatError::Malformed)
        ) {
            return Ok(None);
        }
        let hash = self.hasher.sign(token.as_bytes());
        if let Some(hit) = self.cache.read().get(&hash) {
            return Ok(Some(hit.clone()));
        }
        let Some(bytes) = self.storage.get(&self.key_for(&hash)).await? else {
            return Ok(None);
        };
        let entry: TokenEntry = serde_json::from_slice(&bytes)
            .map_err(|_| EngineError::Corrupt("token entry is malformed".to_owned()))?;
        let entry = Arc::new(entry);
        let mut cache = self.cache.write();
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(hash, entry.clone());
        Ok(Some(entry))
    }
}
