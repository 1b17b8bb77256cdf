//! `metadata/<path>`: read, write, patch and delete a key's settings, and list keys.

use std::collections::BTreeMap;

use keyhaven_storage::{MAX_LIST_PAGE, Op};
use serde_json::{Map, Value};

use super::record::{KeyRecord, MountConfig, time_value};
use super::{
    KvBackend, MAX_ATTEMPTS, SecretPath, contention, not_found, validate_path, warnings_only,
};
use crate::error::EngineError;
use crate::params;
use crate::request::Response;

/// Fields of `metadata/<path>`.
const MAX_CUSTOM_METADATA_KEYS: usize = 64;
const MAX_CUSTOM_METADATA_KEY_LEN: usize = 128;
const MAX_CUSTOM_METADATA_VALUE_LEN: usize = 512;
const CUSTOM_METADATA_ERROR: &str = "custom_metadata validation failed";

/// The settings a metadata write or patch carries.
struct Settings {
    max_versions: Option<u32>,
    cas_required: Option<bool>,
    metadata_cas_required: Option<bool>,
    delete_version_after: Option<u64>,
    metadata_cas: Option<u64>,
}

impl Settings {
    fn parse(data: &Map<String, Value>) -> Result<Self, EngineError> {
        let max_versions = params::uint(data, "max_versions")?
            .map(|n| {
                u32::try_from(n).map_err(|_| {
                    EngineError::invalid("invalid value for parameter \"max_versions\": too large")
                })
            })
            .transpose()?;
        Ok(Settings {
            max_versions,
            cas_required: params::boolean(data, "cas_required")?,
            metadata_cas_required: params::boolean(data, "metadata_cas_required")?,
            delete_version_after: params::duration_secs(data, "delete_version_after")?,
            metadata_cas: params::uint(data, "metadata_cas")?,
        })
    }

    fn any(&self) -> bool {
        self.max_versions.is_some()
            || self.cas_required.is_some()
            || self.metadata_cas_required.is_some()
            || self.delete_version_after.is_some()
    }

    fn apply(&self, meta: &mut KeyRecord) {
        if let Some(v) = self.max_versions {
            meta.max_versions = v;
        }
        if let Some(v) = self.cas_required {
            meta.cas_required = v;
        }
        if let Some(v) = self.metadata_cas_required {
            meta.metadata_cas_required = v;
        }
        if let Some(v) = self.delete_version_after {
            meta.delete_version_after = v;
        }
    }

    /// Vault's warnings for turning off what the mount mandates.
    fn warnings(&self, config: &MountConfig) -> Vec<String> {
        let mut out = Vec::new();
        if self.cas_required == Some(false) && config.cas_required {
            out.push(
                "\"cas_required\" set to false, but is mandated by backend config. This value will be ignored."
                    .to_owned(),
            );
        }
        if self.metadata_cas_required == Some(false) && config.metadata_cas_required {
            out.push(
                "\"metadata_cas_required\" set to false, but is mandated by backend config. This value will be ignored."
                    .to_owned(),
            );
        }
        out
    }
}

/// Vault's limits on `custom_metadata`: at most 64 keys; keys 1..=128 bytes, values
/// 1..=512 bytes, both printable. Keys are named in errors (they are not secret);
/// values never are.
fn validate_custom_metadata<'a>(
    entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), EngineError> {
    let count = entries.len();
    if count > MAX_CUSTOM_METADATA_KEYS {
        return Err(EngineError::invalid(format!(
            "{CUSTOM_METADATA_ERROR}: payload must contain at most {MAX_CUSTOM_METADATA_KEYS} keys, provided {count}"
        )));
    }
    let mut errors = Vec::new();
    for (key, value) in entries {
        let shown: String = key
            .chars()
            .take(MAX_CUSTOM_METADATA_KEY_LEN)
            .filter(|c| !c.is_control())
            .collect();
        if key.is_empty() || key.len() > MAX_CUSTOM_METADATA_KEY_LEN {
            errors.push(format!(
                "length of key {shown:?} is {} but must be 0 < len(key) <= {MAX_CUSTOM_METADATA_KEY_LEN}",
                key.len()
            ));
        }
        if value.is_empty() || value.len() > MAX_CUSTOM_METADATA_VALUE_LEN {
            errors.push(format!(
                "length of value for key {shown:?} is {} but must be 0 < len(value) <= {MAX_CUSTOM_METADATA_VALUE_LEN}",
                value.len()
            ));
        }
        if key.chars().any(char::is_control) {
            errors.push(format!("key {shown:?} contains unprintable characters"));
        }
        if value.chars().any(char::is_control) {
            errors.push(format!(
                "value for key {shown:?} contains unprintable characters"
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(EngineError::invalid(format!(
            "{CUSTOM_METADATA_ERROR}: {}",
            errors.join("; ")
        )))
    }
}

/// OpenBao's metadata check-and-set.
fn check_metadata_cas(
    settings: &Settings,
    config: &MountConfig,
    meta: Option<&KeyRecord>,
) -> Result<(), EngineError> {
    let required = config.metadata_cas_required || meta.is_some_and(|m| m.metadata_cas_required);
    match (settings.metadata_cas, meta) {
        (None, _) if required => Err(EngineError::invalid(
            "metadata check-and-set parameter required for this call",
        )),
        (None, _) => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(_), None) => Err(EngineError::PreconditionFailed(
            "metadata_cas must be 0 when creating new metadata".to_owned(),
        )),
        (Some(cas), Some(m)) if cas != m.current_metadata_version => {
            Err(EngineError::PreconditionFailed(
                "metadata check-and-set parameter does not match the current version".to_owned(),
            ))
        }
        (Some(_), Some(_)) => Ok(()),
    }
}

impl KvBackend {
    pub(super) async fn metadata_read(&self, path: &SecretPath) -> Result<Response, EngineError> {
        let meta = self.load_meta(path).await?.ok_or_else(not_found)?;
        let mut versions = Map::with_capacity(meta.versions.len());
        for v in &meta.versions {
            let mut entry = Map::with_capacity(3);
            entry.insert("created_time".to_owned(), time_value(v.created_time));
            entry.insert(
                "deletion_time".to_owned(),
                v.deletion_time
                    .map_or_else(|| Value::String(String::new()), time_value),
            );
            entry.insert("destroyed".to_owned(), Value::Bool(v.destroyed));
            versions.insert(v.n.to_string(), Value::Object(entry));
        }
        let mut out = Map::with_capacity(11);
        out.insert("cas_required".to_owned(), Value::Bool(meta.cas_required));
        out.insert("created_time".to_owned(), time_value(meta.created_time));
        out.insert(
            "current_metadata_version".to_owned(),
            Value::from(meta.current_metadata_version),
        );
        out.insert(
            "current_version".to_owned(),
            Value::from(meta.current_version),
        );
        out.insert("custom_metadata".to_owned(), meta.custom_metadata_value());
        out.insert(
            "delete_version_after".to_owned(),
            Value::String(params::format_duration(meta.delete_version_after)),
        );
        out.insert("max_versions".to_owned(), Value::from(meta.max_versions));
        out.insert(
            "metadata_cas_required".to_owned(),
            Value::Bool(meta.metadata_cas_required),
        );
        out.insert(
            "oldest_version".to_owned(),
            Value::from(meta.oldest_version),
        );
        out.insert("updated_time".to_owned(), time_value(meta.updated_time));
        out.insert("versions".to_owned(), Value::Object(versions));
        Ok(Response::data(out))
    }

    pub(super) async fn metadata_write(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let settings = Settings::parse(data)?;
        let custom = params::string_map(data, "custom_metadata")?;
        if !settings.any() && custom.is_none() {
            return Ok(Response::no_content());
        }
        if let Some(custom) = &custom {
            validate_custom_metadata(custom.iter())?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot(path, true).await?;
            check_metadata_cas(&settings, &snap.config, snap.meta.as_ref())?;
            let now = self.now();
            let mut meta = match snap.meta {
                Some(mut meta) => {
                    meta.current_metadata_version = meta.current_metadata_version.saturating_add(1);
                    meta.updated_time = now;
                    meta
                }
                None => {
                    let mut meta = KeyRecord::new(now);
                    meta.current_metadata_version = 1;
                    meta
                }
            };
            settings.apply(&mut meta);
            if let Some(custom) = &custom {
                meta.custom_metadata.clone_from(custom);
            }
            let ops = vec![Op::Put {
                key: path.meta_key().to_owned(),
                value: meta.encode()?,
            }];
            if self.commit(snap.conditions, ops).await? {
                return Ok(warnings_only(settings.warnings(&snap.config)));
            }
        }
        Err(contention())
    }

    pub(super) async fn metadata_patch(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let settings = Settings::parse(data)?;
        let custom = params::nullable_string_map(data, "custom_metadata")?;
        if !settings.any() && custom.is_none() {
            return Ok(Response::no_content());
        }
        if let Some(custom) = &custom {
            let set: BTreeMap<&String, &String> = custom
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
                .collect();
            validate_custom_metadata(set.into_iter())?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot(path, true).await?;
            let mut meta = snap.meta.ok_or_else(not_found)?;
            check_metadata_cas(&settings, &snap.config, Some(&meta))?;
            settings.apply(&mut meta);
            if let Some(custom) = &custom {
                for (key, value) in custom {
                    match value {
                        Some(value) => {
                            meta.custom_metadata.insert(key.clone(), value.clone());
                        }
                        None => {
                            meta.custom_metadata.remove(key);
                        }
                    }
                }
                validate_custom_metadata(meta.custom_metadata.iter())?;
            }
            meta.current_metadata_version = meta.current_metadata_version.saturating_add(1);
            meta.updated_time = self.now();
            let ops = vec![Op::Put {
                key: path.meta_key().to_owned(),
                value: meta.encode()?,
            }];
            if self.commit(snap.conditions, ops).await? {
                return Ok(warnings_only(settings.warnings(&snap.config)));
            }
        }
        Err(contention())
    }

    pub(super) async fn metadata_delete(&self, path: &SecretPath) -> Result<Response, EngineError> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot(path, false).await?;
            let Some(meta) = snap.meta else {
                return Ok(Response::no_content());
            };
            let mut ops: Vec<Op> = meta
                .payload_keys()
                .into_iter()
                .map(|key| Op::Delete { key })
                .collect();
            ops.push(Op::Delete {
                key: path.meta_key().to_owned(),
            });
            if self.commit(snap.conditions, ops).await? {
                return Ok(Response::no_content());
            }
        }
        Err(contention())
    }

    /// `LIST metadata[/<prefix>]` with OpenBao's `after` and `limit` (default: all).
    pub(super) async fn metadata_list(
        &self,
        prefix: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let folder = prefix.strip_suffix('/').unwrap_or(prefix);
        let storage_prefix = if folder.is_empty() {
            "meta/".to_owned()
        } else {
            validate_path(folder)?;
            format!("meta/{folder}/")
        };
        let mut cursor = params::string(data, "after")?
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        let limit = match params::int(data, "limit")? {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
            _ => usize::MAX,
        };
        let mut keys: Vec<String> = Vec::new();
        while keys.len() < limit {
            let want = (limit - keys.len()).min(MAX_LIST_PAGE);
            let mut page = self
                .storage
                .list_page(&storage_prefix, cursor.as_deref(), want)
                .await?;
            let last_page = page.len() < want;
            page.truncate(want);
            match page.last() {
                Some(last) => cursor = Some(last.clone()),
                None => break,
            }
            keys.append(&mut page);
            if last_page {
                break;
            }
        }
        if keys.is_empty() {
            return Err(not_found());
        }
        let mut out = Map::with_capacity(1);
        out.insert(
            "keys".to_owned(),
            Value::Array(keys.into_iter().map(Value::String).collect()),
        );
        Ok(Response::data(out))
    }
}
