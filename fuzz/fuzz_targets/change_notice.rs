//! A standby reads the active's announcements from a PostgreSQL channel that any role
//! allowed to `NOTIFY` can write to: parsing a payload never panics, a list of changed
//! keys never holds a line break, and a barrier's origin (which names the channel an
//! acknowledgement is sent on) is only ever 16 lowercase hex digits. The active reads
//! standbys' acknowledgements from a channel just as open: the same holds of their ids.
#![no_main]

use keyhaven_storage_sql::{Notice, parse_ack, parse_notice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((id, n)) = parse_ack(payload) {
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert!(payload.starts_with(&format!("{id} ")));
        assert!(payload.ends_with(&n.to_string()));
    }
    match parse_notice(payload) {
        Some(Notice::Changed(keys)) => {
            assert!(payload.starts_with('k'));
            assert!(keys.iter().all(|k| !k.contains('\n')));
        }
        Some(Notice::Everything) => assert_eq!(payload, "*"),
        Some(Notice::Ping(_)) => panic!("a ping parsed from an announcement"),
        Some(Notice::Barrier { origin, n }) => {
            assert_eq!(origin.len(), 16);
            assert!(origin.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            assert!(payload.starts_with(&format!("b{origin} ")));
            assert!(payload.ends_with(&n.to_string()));
        }
        Some(_) | None => {}
    }
});
