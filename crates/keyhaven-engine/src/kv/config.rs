//! `config`: the mount-wide defaults.

use keyhaven_storage::{Condition, Op};
use serde_json::{Map, Value};

use super::record::MountConfig;
use super::{CONFIG_KEY, KvBackend, MAX_ATTEMPTS, contention};
use crate::error::EngineError;
use crate::params;
use crate::request::Response;

impl KvBackend {
    pub(super) async fn config_read(&self) -> Result<Response, EngineError> {
        let raw = self.storage.get(CONFIG_KEY).await?;
        let config = MountConfig::decode(raw.as_deref())?;
        let mut out = Map::with_capacity(4);
        out.insert("cas_required".to_owned(), Value::Bool(config.cas_required));
        out.insert(
            "delete_version_after".to_owned(),
            Value::String(params::format_signed_duration(config.delete_version_after)),
        );
        out.insert("max_versions".to_owned(), Value::from(config.max_versions));
        out.insert(
            "metadata_cas_required".to_owned(),
            Value::Bool(config.metadata_cas_required),
        );
        Ok(Response::data(out))
    }

    /// Update the given settings. A negative `delete_version_after` disables it for
    /// every key; zero clears it.
    pub(super) async fn config_write(
        &self,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let max_versions = params::uint(data, "max_versions")?
            .map(|n| {
                u32::try_from(n).map_err(|_| {
                    EngineError::invalid("invalid value for parameter \"max_versions\": too large")
                })
            })
            .transpose()?;
        let cas_required = params::boolean(data, "cas_required")?;
        let metadata_cas_required = params::boolean(data, "metadata_cas_required")?;
        let delete_version_after = params::signed_duration_secs(data, "delete_version_after")?;
        if max_versions.is_none()
            && cas_required.is_none()
            && metadata_cas_required.is_none()
            && delete_version_after.is_none()
        {
            return Ok(Response::no_content());
        }
        for _ in 0..MAX_ATTEMPTS {
            let raw = self.storage.get(CONFIG_KEY).await?;
            let mut config = MountConfig::decode(raw.as_deref())?;
            if let Some(v) = max_versions {
                config.max_versions = v;
            }
            if let Some(v) = cas_required {
                config.cas_required = v;
            }
            if let Some(v) = metadata_cas_required {
                config.metadata_cas_required = v;
            }
            if let Some(v) = delete_version_after {
                config.delete_version_after = if v < 0 { -1 } else { v };
            }
            let condition = match raw {
                Some(value) => Condition::Equals {
                    key: CONFIG_KEY.to_owned(),
                    value,
                },
                None => Condition::Absent {
                    key: CONFIG_KEY.to_owned(),
                },
            };
            let ops = vec![Op::Put {
                key: CONFIG_KEY.to_owned(),
                value: config.encode()?,
            }];
            if self.commit(vec![condition], ops).await? {
                return Ok(Response::no_content());
            }
        }
        Err(contention())
    }
}
