//! `sys/tools/hash` reads `input` with Go's base64 decoder's rules
//! (`sys_tools::decode_base64`): decoding never panics, an error names an offset inside
//! the input, and what decodes encodes back to something that decodes to the same bytes.
#![no_main]

use keyhaven_crypto::transit::Base64;
use keyhaven_engine::sys_tools::decode_base64;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match decode_base64(s) {
        Ok(bytes) => {
            assert!(bytes.len() <= s.len() / 4 * 3 + 3);
            let canonical = Base64::Standard.encode(&bytes);
            assert_eq!(decode_base64(&canonical), Ok(bytes));
        }
        Err(at) => assert!(at <= s.len()),
    }
});
