//! A standby reads the active's announcements from a PostgreSQL channel that any role
//! allowed to `NOTIFY` can write to: parsing a payload never panics, a list of changed
//! keys never holds a line break, and a ping is only this listener's own.
#![no_main]

use keyhaven_storage_sql::{Notice, parse_notice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(payload) = std::str::from_utf8(rest) else {
        return;
    };
    let token = u64::from(first);
    match parse_notice(payload, token) {
        Some(Notice::Changed(keys)) => {
            assert!(payload.starts_with('k'));
            assert!(keys.iter().all(|k| !k.contains('\n')));
        }
        Some(Notice::Ping(_)) => {
            assert!(payload.starts_with(&format!("#{token:016x}:")));
        }
        Some(Notice::Everything) => assert_eq!(payload, "*"),
        Some(_) | None => {}
    }
});
