//! A standby reads the active's announcements from a PostgreSQL channel that any role
//! allowed to `NOTIFY` can write to: parsing a payload never panics, a list of changed
//! keys never holds a line break.
#![no_main]

use keyhaven_storage_sql::{Notice, parse_notice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = std::str::from_utf8(data) else {
        return;
    };
    match parse_notice(payload) {
        Some(Notice::Changed(keys)) => {
            assert!(payload.starts_with('k'));
            assert!(keys.iter().all(|k| !k.contains('\n')));
        }
        Some(Notice::Everything) => assert_eq!(payload, "*"),
        Some(Notice::Ping(_)) => panic!("a ping parsed from an announcement"),
        Some(_) | None => {}
    }
});
