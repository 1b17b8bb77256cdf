//! Arbitrary text as a transit envelope (`vault:v<N>:<base64>`): parsing must never panic,
//! accepted envelopes are canonical (re-encoding gives the input back), and no body that
//! was not sealed under the key decrypts.
#![no_main]

use keyhaven_crypto::transit::{Base64, KeyOptions, KeyType, VersionKey, codec};
use keyhaven_crypto::{CryptoError, DecryptError, SecretBytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Bare base64 of arbitrary bytes: round-trips in both alphabets.
    for b64 in [Base64::Standard, Base64::UrlNoPad] {
        let text = b64.encode(data);
        assert_eq!(text.len(), b64.encoded_len(data.len()));
        assert_eq!(b64.decode(&text).unwrap(), data);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for b64 in [Base64::Standard, Base64::UrlNoPad] {
        let _ = b64.decode(text);
        let Ok((version, body)) = codec::decode(text, b64) else {
            continue;
        };
        assert!(version >= 1);
        // Strict decoding: one accepted spelling per envelope, the one `encode` writes.
        assert_eq!(codec::encode(version, &body, b64), text);
        for kind in [
            KeyType::Aes256Gcm96,
            KeyType::ChaCha20Poly1305,
            KeyType::Aes128Gcm96,
        ] {
            let len = if kind == KeyType::Aes128Gcm96 { 16 } else { 32 };
            let key = VersionKey::from_parts(
                kind,
                KeyOptions::default(),
                SecretBytes::new(vec![0x4b; len]),
                SecretBytes::new(vec![0x4c; 32]),
            )
            .unwrap();
            assert_eq!(
                key.decrypt(b"", b"", &body).unwrap_err(),
                CryptoError::Decrypt(DecryptError)
            );
        }
    }
});
