//! Durations arrive from the network (`ttl`, `period`, `increment`, `auto_rotate_period`,
//! …): parsing never panics, never yields more than the bound that keeps timestamp
//! arithmetic from overflowing, and what it yields formats back to the same value.
#![no_main]

use keyhaven_engine::params::{
    MAX_DURATION_SECS, duration_secs, format_duration, parse_duration, signed_duration_secs,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(secs) = parse_duration(s) {
        assert!(secs <= MAX_DURATION_SECS);
        assert_eq!(parse_duration(&format_duration(secs)), Some(secs));
    }
    let mut fields = Map::new();
    fields.insert("d".to_owned(), Value::String(s.to_owned()));
    if let Ok(value) = serde_json::from_str::<Value>(s) {
        fields.insert("j".to_owned(), value);
    }
    for key in ["d", "j"] {
        if let Ok(Some(secs)) = duration_secs(&fields, key) {
            assert!(secs <= MAX_DURATION_SECS);
        }
        if let Ok(Some(secs)) = signed_duration_secs(&fields, key) {
            assert!(secs.unsigned_abs() <= MAX_DURATION_SECS);
        }
    }
});
