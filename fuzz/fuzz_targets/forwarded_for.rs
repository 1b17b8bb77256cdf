//! `X-Keyhaven-Forwarded-For` arrives from the network on any request (a standby's
//! forwarded request carries it; a client may forge one): parsing it never panics, and
//! a value that parses has exactly three fields and a 32-byte tag.
#![no_main]

use keyhaven_server::internal::forwarded_for_parses;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if forwarded_for_parses(s) {
        let fields: Vec<&str> = s.split(' ').collect();
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[2].len(), 64);
    }
});
