//! The records KV v2 keeps in storage: the mount configuration and one metadata record
//! per secret. Version payloads are stored as bare JSON objects and have no record type.
//!
//! Records are JSON with short field names. Unknown fields are ignored and absent ones
//! take their defaults, so fields can be added without a migration.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::{rfc3339, write_rfc3339_unix_nanos};
use crate::error::EngineError;

/// Versions kept per key when neither the key nor the mount sets `max_versions`.
pub(super) const DEFAULT_MAX_VERSIONS: u32 = 10;

/// Mount-wide settings (`<mount>/config`).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub(super) struct MountConfig {
    /// Versions kept per key (0: the default of 10), unless the key sets its own.
    #[serde(default)]
    pub max_versions: u32,
    /// Every data write must carry `options.cas`.
    #[serde(default)]
    pub cas_required: bool,
    /// Every metadata write must carry `metadata_cas`.
    #[serde(default)]
    pub metadata_cas_required: bool,
    /// Seconds after which new versions are deleted; 0: unset; negative: disabled for
    /// every key, whatever the key's own setting.
    #[serde(default)]
    pub delete_version_after: i64,
}

impl MountConfig {
    pub(super) fn decode(raw: Option<&[u8]>) -> Result<Self, EngineError> {
        match raw {
            None => Ok(MountConfig::default()),
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|_| EngineError::Encode("a kv mount configuration")),
        }
    }

    pub(super) fn encode(&self) -> Result<Vec<u8>, EngineError> {
        serde_json::to_vec(self).map_err(|_| EngineError::Encode("a kv mount configuration"))
    }
}

/// Everything known about one secret path except its version payloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct KeyRecord {
    /// Random id naming this key's version payloads (`versions/<id>/<n>`). A key that is
    /// deleted and written again gets a new id.
    pub id: String,
    /// When the key was first written (Unix nanoseconds).
    #[serde(rename = "ct")]
    pub created_time: u64,
    /// Last data or metadata write (Unix nanoseconds).
    #[serde(rename = "ut")]
    pub updated_time: u64,
    /// Latest version number (0 when only metadata was written).
    #[serde(rename = "cv", default)]
    pub current_version: u64,
    /// As OpenBao reports it: 0 until versions were first pruned, then the oldest kept.
    #[serde(rename = "ov", default)]
    pub oldest_version: u64,
    /// Bumped by each metadata write (OpenBao's metadata check-and-set).
    #[serde(rename = "cmv", default)]
    pub current_metadata_version: u64,
    /// The key's own `max_versions` (0: the mount's).
    #[serde(rename = "mv", default)]
    pub max_versions: u32,
    /// The key's own `cas_required`.
    #[serde(rename = "cr", default, skip_serializing_if = "is_false")]
    pub cas_required: bool,
    /// The key's own `metadata_cas_required`.
    #[serde(rename = "mcr", default, skip_serializing_if = "is_false")]
    pub metadata_cas_required: bool,
    /// The key's own `delete_version_after`, in seconds (0: unset).
    #[serde(rename = "dva", default, skip_serializing_if = "is_zero")]
    pub delete_version_after: u64,
    /// User-provided, non-secret string pairs.
    #[serde(rename = "cm", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_metadata: BTreeMap<String, String>,
    /// Kept versions, ascending by number.
    #[serde(rename = "v", default)]
    pub versions: Vec<VersionInfo>,
}

/// One version's bookkeeping.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct VersionInfo {
    /// Version number, from 1.
    pub n: u64,
    /// Creation time (Unix nanoseconds).
    #[serde(rename = "ct")]
    pub created_time: u64,
    /// When the version is or was (soft-)deleted (Unix nanoseconds).
    #[serde(rename = "dt", default, skip_serializing_if = "Option::is_none")]
    pub deletion_time: Option<u64>,
    /// The payload was removed for good.
    #[serde(rename = "x", default, skip_serializing_if = "is_false")]
    pub destroyed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl VersionInfo {
    /// Whether reads treat this version as deleted at `now`.
    pub(super) fn is_deleted(&self, now: u64) -> bool {
        matches!(self.deletion_time, Some(t) if t <= now)
    }

    /// Whether the payload can be served at `now`.
    pub(super) fn is_live(&self, now: u64) -> bool {
        !self.destroyed && !self.is_deleted(now)
    }
}

impl KeyRecord {
    /// A record for a key that has never been written.
    pub(super) fn new(now: u64) -> Self {
        KeyRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            created_time: now,
            updated_time: now,
            current_version: 0,
            oldest_version: 0,
            current_metadata_version: 0,
            max_versions: 0,
            cas_required: false,
            metadata_cas_required: false,
            delete_version_after: 0,
            custom_metadata: BTreeMap::new(),
            versions: Vec::new(),
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        serde_json::from_slice(bytes)
            .map_err(|_| EngineError::Corrupt("kv key metadata".to_owned()))
    }

    pub(super) fn encode(&self) -> Result<Vec<u8>, EngineError> {
        serde_json::to_vec(self).map_err(|_| EngineError::Encode("a kv metadata record"))
    }

    pub(super) fn version(&self, n: u64) -> Option<&VersionInfo> {
        let i = self.versions.binary_search_by_key(&n, |v| v.n).ok()?;
        self.versions.get(i)
    }

    pub(super) fn version_mut(&mut self, n: u64) -> Option<&mut VersionInfo> {
        let i = self.versions.binary_search_by_key(&n, |v| v.n).ok()?;
        self.versions.get_mut(i)
    }

    /// Storage key of version `n`'s payload.
    pub(super) fn version_key(&self, n: u64) -> String {
        version_key(&self.id, n)
    }

    /// The `max_versions` in force: the key's, else the mount's, else 10.
    pub(super) fn effective_max_versions(&self, config: &MountConfig) -> u32 {
        if self.max_versions > 0 {
            self.max_versions
        } else if config.max_versions > 0 {
            config.max_versions
        } else {
            DEFAULT_MAX_VERSIONS
        }
    }

    /// When a version created (or undeleted) at `at` is to be deleted, if ever: the
    /// smaller non-zero `delete_version_after` of the key and the mount, unless the
    /// mount disables it.
    pub(super) fn deletion_time_for(&self, at: u64, config: &MountConfig) -> Option<u64> {
        let mount = config.delete_version_after;
        if mount < 0 {
            return None;
        }
        let mount = mount.unsigned_abs();
        let key = self.delete_version_after;
        let secs = match (key, mount) {
            (0, 0) => return None,
            (0, m) => m,
            (k, 0) => k,
            (k, m) => k.min(m),
        };
        Some(at.saturating_add(secs.saturating_mul(1_000_000_000)))
    }

    /// Append version `current + 1` created at `now` and drop the versions beyond the
    /// effective `max_versions`, the way OpenBao slides its window. Returns the new
    /// version and the storage keys of payloads to delete.
    pub(super) fn add_version(
        &mut self,
        now: u64,
        config: &MountConfig,
    ) -> (VersionInfo, Vec<String>) {
        let info = VersionInfo {
            n: self.current_version.saturating_add(1),
            created_time: now,
            deletion_time: self.deletion_time_for(now, config),
            destroyed: false,
        };
        self.current_version = info.n;
        self.versions.push(info);
        self.updated_time = now;

        let max = u64::from(self.effective_max_versions(config));
        let mut pruned = Vec::new();
        if self.current_version.saturating_sub(self.oldest_version) >= max {
            let last_dropped = self.current_version.saturating_sub(max);
            let keep_from = self.versions.partition_point(|v| v.n <= last_dropped);
            for v in self.versions.drain(..keep_from) {
                if !v.destroyed {
                    pruned.push(version_key(&self.id, v.n));
                }
            }
            self.oldest_version = last_dropped.saturating_add(1);
        }
        (info, pruned)
    }

    /// Storage keys of every payload this key still has.
    pub(super) fn payload_keys(&self) -> Vec<String> {
        self.versions
            .iter()
            .filter(|v| !v.destroyed)
            .map(|v| version_key(&self.id, v.n))
            .collect()
    }

    /// `custom_metadata` as Vault shows it: `null` (`None`) when empty.
    fn shown_custom_metadata(&self) -> Option<&BTreeMap<String, String>> {
        (!self.custom_metadata.is_empty()).then_some(&self.custom_metadata)
    }

    /// [`KeyRecord::shown_custom_metadata`] as a JSON value.
    pub(super) fn custom_metadata_value(&self) -> Value {
        self.shown_custom_metadata().map_or(Value::Null, |m| {
            Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        })
    }

    /// The per-version metadata of data reads, writes and subkeys.
    pub(super) fn version_metadata(
        &self,
        v: &VersionInfo,
    ) -> Result<Map<String, Value>, EngineError> {
        let mut out = Vec::with_capacity(VERSION_METADATA_LEN);
        self.write_version_metadata(v, &mut out)?;
        serde_json::from_slice(&out).map_err(|_| EngineError::Encode("kv version metadata"))
    }

    /// [`KeyRecord::version_metadata`] as JSON, appended to `out`: what `serde_json`
    /// writes for that object (keys in sorted order, compact), without building it. A
    /// data read answers with it on every request.
    pub(super) fn write_version_metadata(
        &self,
        v: &VersionInfo,
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        let encode = |_| EngineError::Encode("kv version metadata");
        // RFC 3339 times hold only digits, `-`, `:`, `.`, `T` and `Z`: nothing to escape.
        let time = |out: &mut Vec<u8>, nanos: u64| {
            out.push(b'"');
            write_rfc3339_unix_nanos(nanos, out);
            out.push(b'"');
        };
        out.extend_from_slice(b"{\"created_time\":");
        time(out, v.created_time);
        out.extend_from_slice(b",\"custom_metadata\":");
        serde_json::to_writer(&mut *out, &self.shown_custom_metadata()).map_err(encode)?;
        out.extend_from_slice(b",\"deletion_time\":");
        match v.deletion_time {
            Some(nanos) => time(out, nanos),
            None => out.extend_from_slice(b"\"\""),
        }
        out.extend_from_slice(if v.destroyed {
            b",\"destroyed\":true,\"version\":"
        } else {
            b",\"destroyed\":false,\"version\":"
        });
        serde_json::to_writer(&mut *out, &v.n).map_err(encode)?;
        out.push(b'}');
        Ok(())
    }
}

/// Bytes of a version's metadata without custom metadata (the time stamps are 30 each).
pub(super) const VERSION_METADATA_LEN: usize = 160;

/// Storage key of a version payload.
pub(super) fn version_key(id: &str, n: u64) -> String {
    // Every read builds one: without the formatter.
    let mut key = String::with_capacity("versions//".len() + id.len() + 20);
    key.push_str("versions/");
    key.push_str(id);
    key.push('/');
    key.push_str(itoa::Buffer::new().format(n));
    key
}

/// Unix nanoseconds of a time (0 before the epoch).
pub(super) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A time as Vault prints it (RFC 3339 with nanoseconds).
pub(super) fn time_value(nanos: u64) -> Value {
    Value::String(rfc3339(UNIX_EPOCH + Duration::from_nanos(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_name_the_id_and_the_decimal_version() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            9_999_999_999_999_999_999,
            10_000_000_000_000_000_000,
            u64::MAX,
        ] {
            assert_eq!(version_key("ab12", n), format!("versions/ab12/{n}"));
        }
    }

    fn record_with(n: u64, config: &MountConfig) -> KeyRecord {
        let mut r = KeyRecord::new(1);
        for i in 0..n {
            let _ = r.add_version(i + 1, config);
        }
        r
    }

    #[test]
    fn window_slides_like_openbao() {
        let config = MountConfig::default();
        let r = record_with(9, &config);
        assert_eq!((r.oldest_version, r.versions.len()), (0, 9));
        let r = record_with(10, &config);
        assert_eq!((r.oldest_version, r.versions.len()), (1, 10));
        let mut r = record_with(12, &config);
        assert_eq!((r.oldest_version, r.versions.len()), (3, 10));
        assert_eq!(r.versions.first().map(|v| v.n), Some(3));
        r.max_versions = 3;
        let (_, pruned) = r.add_version(100, &config);
        assert_eq!(pruned.len(), 8);
        assert_eq!(
            r.versions.iter().map(|v| v.n).collect::<Vec<_>>(),
            vec![11, 12, 13]
        );
        assert_eq!(r.oldest_version, 11);
    }

    #[test]
    fn delete_version_after_takes_the_smaller_non_zero_value() {
        let mut r = KeyRecord::new(0);
        let s = 1_000_000_000;
        let mut c = MountConfig::default();
        assert_eq!(r.deletion_time_for(0, &c), None);
        c.delete_version_after = 60;
        assert_eq!(r.deletion_time_for(0, &c), Some(60 * s));
        r.delete_version_after = 30;
        assert_eq!(r.deletion_time_for(0, &c), Some(30 * s));
        r.delete_version_after = 90;
        assert_eq!(r.deletion_time_for(0, &c), Some(60 * s));
        c.delete_version_after = 0;
        assert_eq!(r.deletion_time_for(0, &c), Some(90 * s));
        c.delete_version_after = -1;
        assert_eq!(r.deletion_time_for(0, &c), None);
    }

    /// The metadata as the JSON tree it stood for before it was written as bytes.
    fn metadata_tree(r: &KeyRecord, v: &VersionInfo) -> Value {
        let custom = if r.custom_metadata.is_empty() {
            Value::Null
        } else {
            serde_json::to_value(&r.custom_metadata).unwrap()
        };
        serde_json::json!({
            "created_time": time_value(v.created_time),
            "custom_metadata": custom,
            "deletion_time": v.deletion_time.map_or_else(|| Value::String(String::new()), time_value),
            "destroyed": v.destroyed,
            "version": v.n,
        })
    }

    #[test]
    fn version_metadata_bytes_are_what_serde_json_writes_for_the_tree() {
        let mut r = record_with(3, &MountConfig::default());
        let cases = [
            VersionInfo {
                n: 1,
                created_time: 0,
                deletion_time: None,
                destroyed: false,
            },
            VersionInfo {
                n: 2,
                created_time: 1_764_936_000_123_456_789,
                deletion_time: Some(1_764_936_060_000_000_001),
                destroyed: false,
            },
            VersionInfo {
                n: u64::MAX,
                created_time: 1,
                deletion_time: Some(2),
                destroyed: true,
            },
        ];
        for custom in [
            BTreeMap::new(),
            BTreeMap::from([
                ("owner".to_owned(), "team \"a\"\n\u{1}é".to_owned()),
                ("a\\b".to_owned(), String::new()),
            ]),
        ] {
            r.custom_metadata = custom;
            for v in &cases {
                let mut out = Vec::new();
                r.write_version_metadata(v, &mut out).unwrap();
                let expected = serde_json::to_vec(&metadata_tree(&r, v)).unwrap();
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
                assert_eq!(
                    Value::Object(r.version_metadata(v).unwrap()),
                    metadata_tree(&r, v)
                );
            }
        }
    }

    #[test]
    fn records_round_trip_compactly() {
        let r = record_with(2, &MountConfig::default());
        let bytes = r.encode().unwrap();
        let back = KeyRecord::decode(&bytes).unwrap();
        assert_eq!(back.current_version, 2);
        assert_eq!(back.id, r.id);
        assert!(bytes.len() < 200, "{}", bytes.len());
    }
}
