//! Manifest parsing and scanning (secrets, decoding, posture) of arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = keyhaven_scan::internal::scan_manifest_bytes(data);
});
