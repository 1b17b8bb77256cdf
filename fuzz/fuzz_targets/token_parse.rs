//! Presented tokens are untrusted: parsing never panics, and anything that parses
//! round-trips its prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(kind) = keyhaven_types::token::parse(s) {
            assert!(s.starts_with(kind.prefix()));
        }
        let _ = keyhaven_types::token::Redacted(s).to_string();
    }
});
