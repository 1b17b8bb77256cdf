//! Vault's response envelope.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The envelope of a logical response: `{"request_id", "lease_id", "renewable",
/// "lease_duration", "data", "wrap_info", "warnings", "auth"}`, with `data` typed.
///
/// `Debug` delegates to `T`'s; types that carry secret values write theirs by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Secret<T> {
    /// Request id, also in the server log.
    #[serde(default)]
    pub request_id: String,
    /// Lease id, empty when there is no lease.
    #[serde(default)]
    pub lease_id: String,
    /// Whether the lease is renewable.
    #[serde(default)]
    pub renewable: bool,
    /// Lease duration in seconds.
    #[serde(default)]
    pub lease_duration: u64,
    /// The payload.
    pub data: T,
    /// Response wrapping information (unused by keyhaven).
    #[serde(default)]
    pub wrap_info: Option<Value>,
    /// Warnings of the server.
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
    /// Authentication information, for logins.
    #[serde(default)]
    pub auth: Option<Value>,
}

impl<T> Secret<T> {
    /// The warnings, or an empty slice.
    pub fn warnings(&self) -> &[String] {
        self.warnings.as_deref().unwrap_or_default()
    }
}

/// The `data` of an envelope; a body without envelope (some `sys/` answers) as it is.
pub(crate) fn envelope_data(v: Value) -> Value {
    match v {
        Value::Object(mut map) if map.contains_key("request_id") && map.contains_key("data") => {
            map.remove("data").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// The `warnings` of a Vault response envelope, if it has any.
pub fn envelope_warnings(v: Option<&Value>) -> Vec<String> {
    v.and_then(|v| v.get("warnings"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_is_taken_from_the_envelope() {
        assert_eq!(
            envelope_data(json!({"request_id": "r", "data": {"a": 1}})),
            json!({"a": 1})
        );
        assert_eq!(
            envelope_data(json!({"initialized": true})),
            json!({"initialized": true})
        );
        assert_eq!(
            envelope_warnings(Some(&json!({"warnings": ["w"]}))),
            vec!["w".to_owned()]
        );
        assert!(envelope_warnings(None).is_empty());
    }
}
