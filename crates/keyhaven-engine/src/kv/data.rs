//! `data/<path>` (read, write, patch, soft-delete of the latest version) and
//! `subkeys/<path>`.

use std::sync::Arc;

use keyhaven_storage::{Condition, Op};
use serde_json::{Map, Value};

use super::json::{merge_patch, strip_values};
use super::record::{KeyRecord, MountConfig, VERSION_METADATA_LEN, VersionInfo};
use super::{KvBackend, MAX_ATTEMPTS, SecretPath, contention, not_found};
use crate::error::EngineError;
use crate::params;
use crate::request::{EncodedData, Response};

/// Fields of `data/<path>`.
const CAS_MISMATCH: &str = "check-and-set parameter did not match the current version";
const CAS_REQUIRED: &str = "check-and-set parameter required for this call";

/// The `data` object of a write or patch. Its values are secret: errors never show them.
fn payload(data: &Map<String, Value>) -> Result<&Map<String, Value>, EngineError> {
    match data.get("data") {
        None | Some(Value::Null) => Err(EngineError::invalid("no data provided")),
        Some(Value::Object(obj)) => Ok(obj),
        Some(_) => Err(EngineError::invalid(
            "invalid value for parameter \"data\": expected an object",
        )),
    }
}

/// `options.cas`, accepted as a number or a decimal string.
fn cas_option(data: &Map<String, Value>) -> Result<Option<u64>, EngineError> {
    let Some(options) = params::object(data, "options")? else {
        return Ok(None);
    };
    let parse_error = || EngineError::invalid("error parsing check-and-set parameter");
    match options.get("cas") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "checked whole and in range"
            )]
            (None, Some(f)) if f.fract() == 0.0 && f >= 0.0 && f < 2f64.powi(53) => {
                Ok(Some(f as u64))
            }
            _ => Err(parse_error()),
        },
        Some(Value::String(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| parse_error()),
        Some(_) => Err(parse_error()),
    }
}

/// Check-and-set: a given `cas` must equal the current version (0 for a key never
/// written); without one, the write is refused when the key or the mount requires it.
fn check_cas(
    cas: Option<u64>,
    config: &MountConfig,
    meta: Option<&KeyRecord>,
) -> Result<(), EngineError> {
    let current = meta.map_or(0, |m| m.current_version);
    match cas {
        Some(cas) if cas != current => {
            Err(EngineError::PreconditionFailed(CAS_MISMATCH.to_owned()))
        }
        Some(_) => Ok(()),
        None if config.cas_required || meta.is_some_and(|m| m.cas_required) => {
            Err(EngineError::invalid(CAS_REQUIRED))
        }
        None => Ok(()),
    }
}

/// The version a read asks for: `version` if positive, else the latest.
fn requested_version(data: &Map<String, Value>, meta: &KeyRecord) -> Result<u64, EngineError> {
    Ok(match params::int(data, "version")? {
        Some(v) if v > 0 => v.unsigned_abs(),
        _ => meta.current_version,
    })
}

impl KvBackend {
    /// `{data, metadata}` of one version. The payload is served as it is stored: the
    /// barrier authenticated it, and it is what [`KvBackend::data_write`] or a patch
    /// wrote, `serde_json`'s encoding of an object, which is what decoding and encoding
    /// it again would give.
    pub(super) async fn data_read(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let (meta, version) = self.readable_version(path, data, "data").await?;
        let payload = self.payload_bytes(&meta, version.n).await?;
        if payload.first() != Some(&b'{') || payload.last() != Some(&b'}') {
            return Err(EngineError::Corrupt("kv version data".to_owned()));
        }
        let mut out = Vec::with_capacity(
            payload.len() + VERSION_METADATA_LEN + "{\"data\":,\"metadata\":}".len(),
        );
        out.extend_from_slice(b"{\"data\":");
        out.extend_from_slice(&payload);
        out.extend_from_slice(b",\"metadata\":");
        meta.write_version_metadata(&version, &mut out)?;
        out.push(b'}');
        EncodedData::new(out)
            .map(Response::encoded)
            .ok_or(EngineError::Internal("a kv read is not a JSON object"))
    }

    pub(super) async fn subkeys_read(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let depth = params::int(data, "depth")?.unwrap_or(0);
        let (meta, version) = self.readable_version(path, data, "subkeys").await?;
        let mut payload = self.load_payload(&meta, version.n).await?;
        strip_values(&mut payload, depth);
        let mut out = Map::with_capacity(2);
        out.insert(
            "metadata".to_owned(),
            Value::Object(meta.version_metadata(&version)?),
        );
        out.insert("subkeys".to_owned(), Value::Object(payload));
        Ok(Response::data(out))
    }

    /// The record and the version a read asks for, if its payload can be served; a
    /// deleted or destroyed version gives `{<field>: null, metadata}` with status 404,
    /// as Vault does.
    async fn readable_version(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
        field: &str,
    ) -> Result<(Arc<KeyRecord>, VersionInfo), EngineError> {
        let meta = self.load_meta(path).await?.ok_or_else(not_found)?;
        let n = requested_version(data, &meta)?;
        let version = *meta.version(n).ok_or_else(not_found)?;
        if !version.is_live(self.now()) {
            let mut out = Map::with_capacity(2);
            out.insert(
                "metadata".to_owned(),
                Value::Object(meta.version_metadata(&version)?),
            );
            out.insert(field.to_owned(), Value::Null);
            return Err(EngineError::VersionGone(Box::new(out)));
        }
        Ok((meta, version))
    }

    pub(super) async fn data_write(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let payload = payload(data)?;
        let cas = cas_option(data)?;
        let bytes = serde_json::to_vec(payload)
            .map_err(|_| EngineError::invalid("invalid value for parameter \"data\""))?;
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot(path, true).await?;
            check_cas(cas, &snap.config, snap.meta.as_ref())?;
            let now = self.now();
            let meta = snap.meta.unwrap_or_else(|| KeyRecord::new(now));
            if let Some(response) = self
                .commit_new_version(
                    path,
                    meta,
                    &snap.config,
                    now,
                    bytes.clone(),
                    snap.conditions,
                )
                .await?
            {
                return Ok(response);
            }
        }
        Err(contention())
    }

    pub(super) async fn data_patch(
        &self,
        path: &SecretPath,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let patch = payload(data)?;
        let cas = cas_option(data)?;
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot(path, true).await?;
            let meta = snap.meta.ok_or_else(not_found)?;
            check_cas(cas, &snap.config, Some(&meta))?;
            let now = self.now();
            let current = meta.current_version;
            let latest = meta.version(current).ok_or_else(not_found)?;
            if !latest.is_live(now) {
                return Err(EngineError::VersionGone(Box::new(
                    meta.version_metadata(latest)?,
                )));
            }
            let mut merged = self.load_payload(&meta, current).await?;
            merge_patch(&mut merged, patch);
            let bytes = serde_json::to_vec(&merged)
                .map_err(|_| EngineError::invalid("invalid value for parameter \"data\""))?;
            drop(merged);
            if let Some(response) = self
                .commit_new_version(path, meta, &snap.config, now, bytes, snap.conditions)
                .await?
            {
                return Ok(response);
            }
        }
        Err(contention())
    }

    /// Add a version holding `bytes`, prune beyond `max_versions`, and commit it all at
    /// once. `None`: lost a race.
    #[allow(
        clippy::too_many_arguments,
        reason = "one private helper of two handlers"
    )]
    async fn commit_new_version(
        &self,
        path: &SecretPath,
        mut meta: KeyRecord,
        config: &MountConfig,
        now: u64,
        bytes: Vec<u8>,
        conditions: Vec<Condition>,
    ) -> Result<Option<Response>, EngineError> {
        let (version, pruned) = meta.add_version(now, config);
        let mut ops = Vec::with_capacity(2 + pruned.len());
        ops.push(Op::Put {
            key: meta.version_key(version.n),
            value: bytes,
        });
        ops.extend(pruned.into_iter().map(|key| Op::Delete { key }));
        ops.push(Op::Put {
            key: path.meta_key().to_owned(),
            value: meta.encode()?,
        });
        if !self.commit(conditions, ops).await? {
            return Ok(None);
        }
        Ok(Some(Response::data(meta.version_metadata(&version)?)))
    }

    pub(super) async fn data_delete(&self, path: &SecretPath) -> Result<Response, EngineError> {
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot(path, false).await?;
            let Some(mut meta) = snap.meta else {
                return Ok(Response::no_content());
            };
            let now = self.now();
            let current = meta.current_version;
            match meta.version_mut(current) {
                Some(latest) if latest.is_live(now) => latest.deletion_time = Some(now),
                _ => return Ok(Response::no_content()),
            }
            let ops = vec![Op::Put {
                key: path.meta_key().to_owned(),
                value: meta.encode()?,
            }];
            if self.commit(snap.conditions, ops).await? {
                return Ok(Response::no_content());
            }
        }
        Err(contention())
    }
}
