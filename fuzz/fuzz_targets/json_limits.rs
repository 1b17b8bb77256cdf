//! Request bodies are untrusted: the shape check never panics, and a body it lets
//! through parses into a tree that keeps within the limits it was checked against.
#![no_main]

use keyhaven_server::json_limits::{JsonLimits, WALK_ABOVE, check};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const LIMITS: JsonLimits = JsonLimits {
    max_array_elements: 4,
    max_object_entries: 4,
};

fn within(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.len() <= 4 && items.iter().all(within),
        Value::Object(map) => map.len() <= 4 && map.values().all(within),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    // Pad past the size below which bodies are not walked, keeping the JSON the same.
    let mut body = data.to_vec();
    body.resize(data.len().max(WALK_ABOVE + 1), b' ');
    if check(&body, LIMITS).is_ok()
        && let Ok(value) = serde_json::from_slice::<Value>(&body)
    {
        assert!(within(&value));
    }
});
