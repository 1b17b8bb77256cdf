//! The KMS v2 plugin's parsers of what the apiserver sends back: a Decrypt ciphertext
//! (`KH`, a format byte, `vault:v<N>:<base64>`), a `key_id`, annotation keys.
#![no_main]

use keyhaven_k8s::kms::envelope::{self, KeyId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (selector, rest) = match data.split_first() {
        Some((s, r)) => (*s, r),
        None => return,
    };
    match selector % 3 {
        0 => {
            if let Ok(env) = envelope::parse(rest) {
                // An accepted ciphertext is exactly what encode makes of its transit part.
                assert!(env.version >= 1);
                assert_eq!(envelope::encode(env.transit).unwrap(), rest);
                assert!(rest.len() <= envelope::MAX_CIPHERTEXT);
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(id) = KeyId::parse(text)
            {
                // What parses, re-encoded, parses to the same identity.
                assert_eq!(KeyId::parse(&id.encode()).unwrap(), id);
                assert!(id.version >= 1);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = envelope::is_fqdn(text);
                let _ = envelope::check_annotations([(text, rest)]);
            }
        }
    }
});
