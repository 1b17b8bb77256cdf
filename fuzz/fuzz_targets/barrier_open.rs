//! Arbitrary bytes as a barrier entry: `peek_term` and `open` must never panic, and nothing
//! that was not sealed under the key may open.
#![no_main]

use keyhaven_crypto::{AeadAlgorithm, AeadKey, SecretKey, barrier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte picks the path length, the rest is the entry.
    let Some((&path_len, rest)) = data.split_first() else {
        return;
    };
    let path_len = usize::from(path_len % 32).min(rest.len());
    let (path, entry) = rest.split_at(path_len);
    let path = String::from_utf8_lossy(path);

    let _ = barrier::peek_term(entry);
    for alg in [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::ChaCha20Poly1305] {
        let key = AeadKey::new(alg, &SecretKey::from_bytes([0x4b; 32])).unwrap();
        // A forgery would need the key; random input must fail.
        assert!(barrier::open(&key, &path, entry).is_err());
        // Sealing the input and opening it again must round-trip.
        let sealed = barrier::seal(7, &key, &path, entry).unwrap();
        assert_eq!(barrier::peek_term(&sealed).unwrap(), 7);
        assert_eq!(barrier::open(&key, &path, &sealed).unwrap(), entry);
    }
});
