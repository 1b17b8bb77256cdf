//! Vault's response envelope.

use serde_json::Value;

/// Vault's response envelope with `data` typed: the wire type the server writes
/// ([`keyhaven_types::wire::Envelope`]).
pub type Secret<T> = keyhaven_types::wire::Envelope<T>;

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
