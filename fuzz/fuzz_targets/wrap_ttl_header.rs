//! `X-Vault-Wrap-TTL` arrives from the network on any request: parsing it never panics,
//! a wrap it asks for lasts at least a second and at most the duration bound, and a
//! refusal names the header without echoing more than a short prefix of the value.
#![no_main]

use keyhaven_engine::WrapRequest;
use keyhaven_engine::params::MAX_DURATION_SECS;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match WrapRequest::from_header(s) {
        Ok(Some(w)) => assert!((1..=MAX_DURATION_SECS).contains(&w.ttl)),
        Ok(None) => {}
        Err(message) => {
            assert!(message.contains("X-Vault-Wrap-TTL"));
            assert!(message.len() < 256);
        }
    }
});
