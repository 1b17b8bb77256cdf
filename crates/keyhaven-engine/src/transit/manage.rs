//! Key management: create, read, list, delete, config, rotate, trim, the lifecycle states,
//! aliases and the mount configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use keyhaven_crypto::CryptoError;
use keyhaven_crypto::transit::{KeyOptions, KeyType, VersionKey};
use keyhaven_storage::MAX_LIST_PAGE;
use serde_json::{Map, Value, json};

use super::key::{Key, KeyConfig, KeyState, Version};
use super::{CONFIG_KEY, Change, TransitBackend, alias_path, validate_name};
use crate::error::{CryptoOp, EngineError};
use crate::params;
use crate::request::Response;

/// Nanoseconds per day.
const DAY_NANOS: u64 = 86_400 * 1_000_000_000;

/// The shortest and longest pending-deletion window, in days (AWS and Alibaba Cloud: 7–30).
pub const PENDING_WINDOW_DAYS: std::ops::RangeInclusive<u64> = 7..=30;

/// Map a crypto error to the API: misuse and format problems are the caller's, with the
/// crate's public message; decryption failures are the one opaque message.
pub(crate) fn crypto_err(e: CryptoError) -> EngineError {
    match e {
        CryptoError::InvalidParameter { what } | CryptoError::Format { what } => {
            EngineError::invalid(what)
        }
        CryptoError::Decrypt(d) => EngineError::invalid(d.to_string()),
        CryptoError::KeyLength { .. } => EngineError::invalid(e.to_string()),
        CryptoError::Random => EngineError::Crypto(CryptoOp::Random),
        CryptoError::Seal => EngineError::Crypto(CryptoOp::Encrypt),
        _ => EngineError::Crypto(CryptoOp::Transit),
    }
}

pub(crate) fn decode_alias(raw: &[u8]) -> Result<String, EngineError> {
    let v: Value = serde_json::from_slice(raw)
        .map_err(|_| EngineError::Corrupt("transit alias record".to_owned()))?;
    v.get("key")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| EngineError::Corrupt("transit alias record".to_owned()))
}

pub(crate) fn decode_mount_config(raw: &[u8]) -> Result<bool, EngineError> {
    let v: Value = serde_json::from_slice(raw)
        .map_err(|_| EngineError::Corrupt("transit mount config".to_owned()))?;
    Ok(v.get("disable_upsert")
        .and_then(Value::as_bool)
        .unwrap_or(false))
}

fn not_found() -> EngineError {
    EngineError::NotFound(String::new())
}

fn key_response(key: &Key) -> Response {
    Response::data(key.to_api())
}

/// Generate version material for a key of `kind`.
pub(crate) fn new_version(
    kind: KeyType,
    options: KeyOptions,
    key_size: usize,
    now: u64,
) -> Result<Version, EngineError> {
    let key = VersionKey::generate(kind, options, key_size).map_err(crypto_err)?;
    Ok(Version {
        created: now,
        key: Arc::new(key),
    })
}

fn clone_versions(key: &Key) -> BTreeMap<u32, Version> {
    key.versions
        .iter()
        .map(|(n, v)| {
            (
                *n,
                Version {
                    created: v.created,
                    key: v.key.clone(),
                },
            )
        })
        .collect()
}

/// The settings of a key created by `keys/<name>` or by an encrypt upsert.
pub(crate) struct NewKey {
    pub(crate) kind: KeyType,
    pub(crate) derived: bool,
    pub(crate) convergent: bool,
    pub(crate) exportable: bool,
    pub(crate) allow_plaintext_backup: bool,
    pub(crate) auto_rotate_period: u64,
    pub(crate) key_size: usize,
}

impl NewKey {
    pub(crate) fn parse(data: &Map<String, Value>) -> Result<Self, EngineError> {
        let type_name = params::string(data, "type")?.unwrap_or("aes256-gcm96");
        let kind = KeyType::parse(type_name)
            .ok_or_else(|| EngineError::invalid(format!("unknown key type {type_name:?}")))?;
        let derived = params::boolean(data, "derived")?.unwrap_or(false);
        let convergent = params::boolean(data, "convergent_encryption")?.unwrap_or(false);
        if convergent && !derived {
            return Err(EngineError::invalid(
                "convergent encryption requires derivation to be enabled",
            ));
        }
        if derived && !kind.supports_derivation() {
            return Err(EngineError::invalid(format!(
                "key derivation is not supported for key type {kind}"
            )));
        }
        let auto_rotate_period = params::duration_secs(data, "auto_rotate_period")?.unwrap_or(0);
        check_rotate_period(auto_rotate_period)?;
        let key_size = match params::uint(data, "key_size")? {
            None | Some(0) if kind == KeyType::Hmac => 32,
            None | Some(0) => 0,
            Some(n) if kind == KeyType::Hmac => usize::try_from(n).unwrap_or(usize::MAX),
            Some(_) => {
                return Err(EngineError::invalid(format!(
                    "key_size is not valid for algorithm {kind}"
                )));
            }
        };
        Ok(NewKey {
            kind,
            derived,
            convergent,
            exportable: params::boolean(data, "exportable")?.unwrap_or(false),
            allow_plaintext_backup: params::boolean(data, "allow_plaintext_backup")?
                .unwrap_or(false),
            auto_rotate_period,
            key_size,
        })
    }

    pub(crate) fn build(&self, now: u64) -> Result<Change, EngineError> {
        let options = KeyOptions {
            derived: self.derived,
            convergent: self.convergent,
        };
        let v1 = new_version(self.kind, options, self.key_size, now)?;
        let config = KeyConfig {
            kind: self.kind.name().to_owned(),
            derived: self.derived,
            convergent: self.convergent,
            exportable: self.exportable,
            allow_plaintext_backup: self.allow_plaintext_backup,
            deletion_allowed: false,
            min_decryption_version: 1,
            min_encryption_version: 0,
            min_available_version: 0,
            latest_version: 1,
            auto_rotate_period: self.auto_rotate_period,
            key_size: self.key_size,
            state: KeyState::Enabled,
            deletion_time: None,
        };
        Ok(Change::Put(config, BTreeMap::from([(1, v1)])))
    }
}

fn check_rotate_period(secs: u64) -> Result<(), EngineError> {
    if secs != 0 && secs < 3600 {
        return Err(EngineError::invalid(
            "auto rotate period must be 0 to disable or at least an hour",
        ));
    }
    Ok(())
}

/// The writes under `keys/<name>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyAction {
    Config,
    Rotate,
    Trim,
    Disable,
    Enable,
    ScheduleDeletion,
    CancelDeletion,
}

fn u32_param(data: &Map<String, Value>, key: &str) -> Result<Option<u32>, EngineError> {
    params::uint(data, key)?
        .map(|n| {
            u32::try_from(n).map_err(|_| {
                EngineError::invalid(format!("invalid value for parameter {key:?}: too large"))
            })
        })
        .transpose()
}

impl TransitBackend {
    /// Every name directly under `prefix`.
    pub(crate) async fn list_names(&self, prefix: &str) -> Result<Vec<String>, EngineError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .storage
                .list_page(prefix, after.as_deref(), MAX_LIST_PAGE)
                .await?;
            let full = page.len() >= MAX_LIST_PAGE;
            after = page.last().cloned();
            out.extend(page.into_iter().filter(|n| !n.ends_with('/')));
            if !full || after.is_none() {
                return Ok(out);
            }
        }
    }

    pub(crate) async fn list_keys(&self) -> Result<Response, EngineError> {
        let names = self.list_names("keys/").await?;
        if names.is_empty() {
            return Err(not_found());
        }
        let mut m = Map::new();
        m.insert("keys".into(), json!(names));
        Ok(Response::data(m))
    }

    pub(crate) async fn read_key(&self, name: &str) -> Result<Response, EngineError> {
        match self.resolve(name).await? {
            (_, Some(key)) => Ok(key_response(&key)),
            (_, None) => Err(not_found()),
        }
    }

    pub(crate) async fn create_key(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        validate_name(name)?;
        let spec = NewKey::parse(data)?;
        if self.alias_target(name).await?.is_some() {
            return Err(EngineError::invalid(format!(
                "{name:?} is an alias; choose another key name"
            )));
        }
        let now = self.now_nanos();
        let mut existed = false;
        let key = self
            .modify(name, |current| match current {
                Some(_) => {
                    existed = true;
                    Ok(Change::Keep)
                }
                None => spec.build(now),
            })
            .await?
            .ok_or(EngineError::Internal(
                "a transit key created on request was not returned",
            ))?;
        let mut resp = key_response(&key);
        if existed {
            resp.warnings.push(format!("key {name} already existed"));
        }
        Ok(resp)
    }

    pub(crate) async fn delete_key(&self, name: &str) -> Result<Response, EngineError> {
        let (name, key) = self.resolve(name).await?;
        let Some(key) = key else {
            return Err(EngineError::invalid("could not delete key; not found"));
        };
        if !key.config.deletion_allowed {
            return Err(EngineError::invalid("deletion is not allowed for this key"));
        }
        self.modify(&name, |current| match current {
            Some(k) if k.config.deletion_allowed => Ok(Change::Delete),
            Some(_) => Err(EngineError::invalid("deletion is not allowed for this key")),
            None => Ok(Change::Keep),
        })
        .await?;
        self.drop_aliases_of(&name).await?;
        Ok(Response::no_content())
    }

    /// Remove every alias that points at `name`.
    async fn drop_aliases_of(&self, name: &str) -> Result<(), EngineError> {
        for alias in self.list_names("aliases/").await? {
            if let Some(raw) = self.storage.get(&alias_path(&alias)).await?
                && decode_alias(&raw)? == name
            {
                self.storage.delete(&alias_path(&alias)).await?;
                self.aliases.write().remove(&alias);
            }
        }
        Ok(())
    }

    /// Finish a pending deletion whose window has passed (scheduler).
    pub(crate) async fn destroy(&self, name: &str, now: u64) -> Result<(), EngineError> {
        self.modify(name, |current| match current {
            Some(k)
                if k.config.state == KeyState::PendingDeletion
                    && k.config.deletion_time.is_some_and(|t| now >= t) =>
            {
                Ok(Change::Delete)
            }
            _ => Ok(Change::Keep),
        })
        .await?;
        self.drop_aliases_of(name).await
    }

    /// Rotate `name` if its auto-rotation is due (scheduler).
    pub(crate) async fn rotate_if_due(&self, name: &str, now: u64) -> Result<(), EngineError> {
        self.modify(name, |current| match current {
            Some(k)
                if k.config.state == KeyState::Enabled
                    && k.config.auto_rotate_period > 0
                    && now
                        >= k.last_rotation().saturating_add(
                            k.config.auto_rotate_period.saturating_mul(1_000_000_000),
                        ) =>
            {
                rotated(k, now)
            }
            _ => Ok(Change::Keep),
        })
        .await?;
        Ok(())
    }

    /// One of the `keys/<name>/<action>` writes.
    pub(crate) async fn key_action(
        &self,
        name: &str,
        action: KeyAction,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let (name, existing) = self.resolve(name).await?;
        if existing.is_none() {
            return Err(EngineError::invalid(format!("key {name:?} not found")));
        }
        let now = self.now_nanos();
        let change: Box<KeyChange> = match action {
            KeyAction::Rotate => Box::new(move |k| {
                if k.config.state != KeyState::Enabled {
                    return Err(state_error(k));
                }
                rotated(k, now)
            }),
            KeyAction::Config => {
                let update = ConfigUpdate::parse(data)?;
                Box::new(move |k| update.apply(k))
            }
            KeyAction::Trim => {
                let min = u32_param(data, "min_available_version")?.ok_or_else(|| {
                    EngineError::invalid("missing parameter \"min_available_version\"")
                })?;
                Box::new(move |k| trimmed(k, min))
            }
            KeyAction::Disable => Box::new(|k| match k.config.state {
                KeyState::PendingDeletion => Err(EngineError::PreconditionFailed(
                    "key is pending deletion; cancel the deletion first".to_owned(),
                )),
                _ => with_state(k, KeyState::Disabled, None),
            }),
            KeyAction::Enable => Box::new(|k| match k.config.state {
                KeyState::PendingDeletion => Err(EngineError::PreconditionFailed(
                    "key is pending deletion; cancel the deletion first".to_owned(),
                )),
                _ => with_state(k, KeyState::Enabled, None),
            }),
            KeyAction::ScheduleDeletion => {
                let days = params::uint(data, "pending_window_days")?.unwrap_or(30);
                if !PENDING_WINDOW_DAYS.contains(&days) {
                    return Err(EngineError::invalid(
                        "pending_window_days must be between 7 and 30",
                    ));
                }
                Box::new(move |k| {
                    if !k.config.deletion_allowed {
                        return Err(EngineError::invalid("deletion is not allowed for this key"));
                    }
                    if k.config.state == KeyState::PendingDeletion {
                        return Err(EngineError::PreconditionFailed(
                            "key is already pending deletion".to_owned(),
                        ));
                    }
                    let at = now.saturating_add(days.saturating_mul(DAY_NANOS));
                    with_state(k, KeyState::PendingDeletion, Some(at))
                })
            }
            KeyAction::CancelDeletion => Box::new(|k| {
                if k.config.state != KeyState::PendingDeletion {
                    return Err(EngineError::PreconditionFailed(
                        "key is not pending deletion".to_owned(),
                    ));
                }
                with_state(k, KeyState::Disabled, None)
            }),
        };
        let mut change = change;
        let key = self
            .modify(&name, |current| match current {
                Some(k) => change(k),
                None => Err(EngineError::invalid(format!("key {name:?} not found"))),
            })
            .await?
            .ok_or_else(not_found)?;
        Ok(key_response(&key))
    }

    pub(crate) async fn list_aliases(&self) -> Result<Response, EngineError> {
        let names = self.list_names("aliases/").await?;
        if names.is_empty() {
            return Err(not_found());
        }
        let mut m = Map::new();
        m.insert("keys".into(), json!(names));
        Ok(Response::data(m))
    }

    pub(crate) async fn read_alias(&self, alias: &str) -> Result<Response, EngineError> {
        validate_name(alias)?;
        let target = self.alias_target(alias).await?.ok_or_else(not_found)?;
        let mut m = Map::new();
        m.insert("alias".into(), json!(alias));
        m.insert("key".into(), json!(target));
        Ok(Response::data(m))
    }

    pub(crate) async fn write_alias(
        &self,
        alias: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        validate_name(alias)?;
        let target = params::string(data, "key")?
            .ok_or_else(|| EngineError::invalid("missing parameter \"key\""))?;
        validate_name(target)?;
        let _guard = self.write_lock.lock().await;
        if self.load(alias).await?.is_some() {
            return Err(EngineError::invalid(format!(
                "a key named {alias:?} exists; an alias cannot shadow it"
            )));
        }
        if self.load(target).await?.is_none() {
            return Err(EngineError::invalid(format!(
                "key {target:?} not found (an alias must name a key, not another alias)"
            )));
        }
        let body = serde_json::to_vec(&json!({ "key": target }))
            .map_err(|_| EngineError::Encode("a transit alias record"))?;
        self.storage.put(&alias_path(alias), body).await?;
        self.aliases
            .write()
            .insert(alias.to_owned(), target.to_owned());
        Ok(Response::no_content())
    }

    pub(crate) async fn delete_alias(&self, alias: &str) -> Result<Response, EngineError> {
        validate_name(alias)?;
        let _guard = self.write_lock.lock().await;
        self.storage.delete(&alias_path(alias)).await?;
        self.aliases.write().remove(alias);
        Ok(Response::no_content())
    }

    pub(crate) async fn read_mount_config(&self) -> Result<Response, EngineError> {
        let mut m = Map::new();
        m.insert(
            "disable_upsert".into(),
            json!(self.upsert_disabled().await?),
        );
        Ok(Response::data(m))
    }

    pub(crate) async fn write_mount_config(
        &self,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let v = params::boolean(data, "disable_upsert")?.unwrap_or(false);
        let body = serde_json::to_vec(&json!({ "disable_upsert": v }))
            .map_err(|_| EngineError::Encode("the transit mount configuration"))?;
        self.storage.put(CONFIG_KEY, body).await?;
        *self.disable_upsert.write() = Some(v);
        self.read_mount_config().await
    }
}

/// A change to an existing key, as `keys/<name>/<action>` computes it.
type KeyChange = dyn FnMut(&Key) -> Result<Change, EngineError> + Send;

/// The error a cryptographic or rotation request gets from a key that is not enabled.
pub(crate) fn state_error(k: &Key) -> EngineError {
    match k.config.state {
        KeyState::Enabled => {
            EngineError::Internal("an enabled transit key was refused as not enabled")
        }
        KeyState::Disabled => {
            EngineError::PreconditionFailed(format!("key {:?} is disabled", k.name))
        }
        KeyState::PendingDeletion => EngineError::PreconditionFailed(format!(
            "key {:?} is pending deletion (scheduled for {})",
            k.name,
            crate::clock::rfc3339(super::key::from_nanos(k.config.deletion_time.unwrap_or(0)))
        )),
    }
}

fn with_state(k: &Key, state: KeyState, deletion_time: Option<u64>) -> Result<Change, EngineError> {
    if k.config.state == state && k.config.deletion_time == deletion_time {
        return Ok(Change::Keep);
    }
    let mut config = k.config.clone();
    config.state = state;
    config.deletion_time = deletion_time;
    Ok(Change::Put(config, clone_versions(k)))
}

fn rotated(k: &Key, now: u64) -> Result<Change, EngineError> {
    let next = k
        .config
        .latest_version
        .checked_add(1)
        .ok_or_else(|| EngineError::invalid("key has reached its maximum version"))?;
    let mut versions = clone_versions(k);
    versions.insert(
        next,
        new_version(k.kind, k.options(), k.config.key_size, now)?,
    );
    let mut config = k.config.clone();
    config.latest_version = next;
    if config.min_decryption_version == 0 {
        config.min_decryption_version = 1;
    }
    Ok(Change::Put(config, versions))
}

fn trimmed(k: &Key, min: u32) -> Result<Change, EngineError> {
    let c = &k.config;
    if min == 0 {
        return Err(EngineError::invalid(
            "minimum available version should be positive",
        ));
    }
    if min > c.min_decryption_version {
        return Err(EngineError::invalid(
            "minimum available version should not be greater than minimum decryption version",
        ));
    }
    if c.min_encryption_version > 0 && min > c.min_encryption_version {
        return Err(EngineError::invalid(
            "minimum available version should not be greater than minimum encryption version",
        ));
    }
    if min < c.min_available_version {
        return Err(EngineError::invalid(
            "minimum available version should not be less than the current minimum available version",
        ));
    }
    let mut config = c.clone();
    config.min_available_version = min;
    let versions = clone_versions(k)
        .into_iter()
        .filter(|(n, _)| *n >= min)
        .collect();
    Ok(Change::Put(config, versions))
}

/// A parsed `keys/<name>/config` request.
struct ConfigUpdate {
    min_decryption_version: Option<u32>,
    min_encryption_version: Option<u32>,
    deletion_allowed: Option<bool>,
    exportable: Option<bool>,
    allow_plaintext_backup: Option<bool>,
    auto_rotate_period: Option<u64>,
}

impl ConfigUpdate {
    fn parse(data: &Map<String, Value>) -> Result<Self, EngineError> {
        let auto_rotate_period = params::duration_secs(data, "auto_rotate_period")?;
        if let Some(p) = auto_rotate_period {
            check_rotate_period(p)?;
        }
        Ok(ConfigUpdate {
            min_decryption_version: u32_param(data, "min_decryption_version")?,
            min_encryption_version: u32_param(data, "min_encryption_version")?,
            deletion_allowed: params::boolean(data, "deletion_allowed")?,
            exportable: params::boolean(data, "exportable")?,
            allow_plaintext_backup: params::boolean(data, "allow_plaintext_backup")?,
            auto_rotate_period,
        })
    }

    fn apply(&self, k: &Key) -> Result<Change, EngineError> {
        let mut c = k.config.clone();
        if let Some(v) = self.min_decryption_version {
            let v = v.max(1);
            if v > c.latest_version {
                return Err(EngineError::invalid(format!(
                    "cannot set min decryption version of {v}, latest key version is {}",
                    c.latest_version
                )));
            }
            if v < c.min_available_version {
                return Err(EngineError::invalid(format!(
                    "cannot set min decryption version of {v} below the min available version {}",
                    c.min_available_version
                )));
            }
            c.min_decryption_version = v;
        }
        if let Some(v) = self.min_encryption_version {
            if v > c.latest_version {
                return Err(EngineError::invalid(format!(
                    "cannot set min encryption version of {v}, latest key version is {}",
                    c.latest_version
                )));
            }
            c.min_encryption_version = v;
        }
        if c.min_encryption_version > 0 && c.min_encryption_version < c.min_decryption_version {
            return Err(EngineError::invalid(
                "min encryption version should not be less than min decryption version",
            ));
        }
        if let Some(v) = self.deletion_allowed {
            c.deletion_allowed = v;
        }
        if let Some(v) = self.exportable {
            if c.exportable && !v {
                return Err(EngineError::invalid(
                    "cannot disable exportability after it has been enabled",
                ));
            }
            c.exportable = v;
        }
        if let Some(v) = self.allow_plaintext_backup {
            if c.allow_plaintext_backup && !v {
                return Err(EngineError::invalid(
                    "cannot disable plaintext backup after it has been enabled",
                ));
            }
            c.allow_plaintext_backup = v;
        }
        if let Some(v) = self.auto_rotate_period {
            c.auto_rotate_period = v;
        }
        Ok(Change::Put(c, clone_versions(k)))
    }
}
