//! Barrier codec: round trips, binding to path and header, opacity of failures, golden vectors.

use std::collections::BTreeSet;

use keyhaven_crypto::barrier::{self, FORMAT_VERSION, HEADER_LEN, MIN_ENTRY_LEN};
use keyhaven_crypto::internal::barrier_seal_with_nonce;
use keyhaven_crypto::{AeadAlgorithm, AeadKey, CryptoError, DecryptError, SecretKey};

const ALGS: [AeadAlgorithm; 2] = [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::ChaCha20Poly1305];

fn key(alg: AeadAlgorithm, fill: u8) -> AeadKey {
    AeadKey::new(alg, &SecretKey::from_bytes([fill; 32])).unwrap()
}

#[test]
fn round_trip() {
    for alg in ALGS {
        let k = key(alg, 1);
        for len in [0usize, 1, 100, 4096, 70_000] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for term in [0u32, 1, 0xdead_beef, u32::MAX] {
                let e = barrier::seal(term, &k, "sys/keyring", &pt).unwrap();
                assert_eq!(e.len(), MIN_ENTRY_LEN + len);
                assert_eq!(e[0], FORMAT_VERSION);
                assert_eq!(barrier::peek_term(&e).unwrap(), term);
                assert_eq!(barrier::open(&k, "sys/keyring", &e).unwrap(), pt);
            }
        }
    }
}

#[test]
fn same_value_twice_gives_different_entries() {
    let k = key(AeadAlgorithm::Aes256Gcm, 1);
    let a = barrier::seal(1, &k, "p", b"v").unwrap();
    let b = barrier::seal(1, &k, "p", b"v").unwrap();
    assert_ne!(a, b);
}

/// Every way an entry can be wrong, collected; all must be `DecryptError` with one message.
#[test]
fn every_failure_is_the_same_opaque_error() {
    let mut messages = BTreeSet::new();
    let mut failures = 0usize;
    let mut check = |r: Result<Vec<u8>, DecryptError>| {
        let e = r.expect_err("must not open");
        assert_eq!(e, DecryptError);
        messages.insert((e.to_string(), format!("{e:?}")));
        failures += 1;
    };
    for alg in ALGS {
        let k = key(alg, 7);
        let path = "kv/data/app/db";
        let pt = [0x5au8; 100];
        let e = barrier::seal(42, &k, path, &pt).unwrap();

        // Wrong path, including near misses.
        for p in [
            "kv/data/app/db/",
            "kv/data/app/dB",
            "kv/data/app",
            "",
            "kv/data/app/db\0",
        ] {
            check(barrier::open(&k, p, &e));
        }
        // Wrong key, and a key of the other algorithm.
        check(barrier::open(&key(alg, 8), path, &e));
        let other = if alg == AeadAlgorithm::Aes256Gcm {
            AeadAlgorithm::ChaCha20Poly1305
        } else {
            AeadAlgorithm::Aes256Gcm
        };
        check(barrier::open(&key(other, 7), path, &e));
        // Relabelled term: header still parses, authentication fails.
        for term in [0u32, 41, 43, u32::MAX] {
            let mut r = e.clone();
            r[1..5].copy_from_slice(&term.to_be_bytes());
            assert_eq!(barrier::peek_term(&r).unwrap(), term);
            check(barrier::open(&k, path, &r));
        }
        // Unknown version.
        for v in [0u8, 2, 255] {
            let mut r = e.clone();
            r[0] = v;
            check(barrier::open(&k, path, &r));
        }
        // A flipped bit anywhere.
        for i in 0..e.len() {
            for bit in 0..8 {
                let mut r = e.clone();
                r[i] ^= 1 << bit;
                check(barrier::open(&k, path, &r));
            }
        }
        // Truncation at every length, and extension.
        for cut in 0..e.len() {
            check(barrier::open(&k, path, &e[..cut]));
        }
        let mut longer = e.clone();
        longer.push(0);
        check(barrier::open(&k, path, &longer));
        // Still opens untouched.
        assert_eq!(barrier::open(&k, path, &e).unwrap(), pt);
    }
    assert!(failures > 2 * 133 * 8);
    assert_eq!(
        messages.into_iter().collect::<Vec<_>>(),
        vec![("decryption failed".to_owned(), "DecryptError".to_owned())]
    );
}

#[test]
fn peek_term_rejects_short_and_unknown_versions() {
    for len in 0..HEADER_LEN {
        let short = vec![FORMAT_VERSION; len];
        assert!(matches!(
            barrier::peek_term(&short),
            Err(CryptoError::Format { .. })
        ));
    }
    for v in [0u8, 2, 0x80, 255] {
        assert_eq!(
            barrier::peek_term(&[v, 0, 0, 0, 1]),
            Err(CryptoError::UnsupportedVersion { version: v })
        );
    }
    // Only the header is read.
    assert_eq!(barrier::peek_term(&[1, 0, 0, 1, 0]), Ok(256));
}

// ---- Golden vectors: the barrier format must never change silently. ----

const GOLDEN_KEY: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
const GOLDEN_NONCE: [u8; 12] = [
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab,
];
const GOLDEN_TERM: u32 = 7;
const GOLDEN_PATH: &str = "kv/data/golden";
const GOLDEN_PLAINTEXT: &[u8] = b"keyhaven barrier golden vector";

/// Format version 1, AES-256-GCM. Checked in; never regenerate it to make a test pass.
const GOLDEN_AES_256_GCM_V1: &str = concat!(
    "01",
    "00000007",
    "a0a1a2a3a4a5a6a7a8a9aaab",
    "8d7d054524bd67d14207e6a17513a5ac50cb367cf6d22c4cea6b45f210d9",
    "10e242437a1226a0a5925efd465a001d",
);
/// Format version 1, ChaCha20-Poly1305.
const GOLDEN_CHACHA20_POLY1305_V1: &str = concat!(
    "01",
    "00000007",
    "a0a1a2a3a4a5a6a7a8a9aaab",
    "67ce01372c90a7c3806d92668e939889bd39bcd3270f0e83c2bdb8c51e10",
    "43c615d3df54fa30391d10f356bb3588",
);

fn golden(alg: AeadAlgorithm, expected_hex: &str) {
    let k = AeadKey::new(alg, &SecretKey::from_bytes(GOLDEN_KEY)).unwrap();
    let ours = barrier_seal_with_nonce(
        GOLDEN_TERM,
        &k,
        GOLDEN_PATH,
        &GOLDEN_NONCE,
        GOLDEN_PLAINTEXT,
    )
    .unwrap();
    assert_eq!(hex::encode(&ours), expected_hex);
    let checked_in = hex::decode(expected_hex).unwrap();
    assert_eq!(barrier::peek_term(&checked_in).unwrap(), GOLDEN_TERM);
    assert_eq!(
        barrier::open(&k, GOLDEN_PATH, &checked_in).unwrap(),
        GOLDEN_PLAINTEXT
    );
}

#[test]
fn golden_vector_aes_256_gcm() {
    golden(AeadAlgorithm::Aes256Gcm, GOLDEN_AES_256_GCM_V1);
}

#[test]
fn golden_vector_chacha20_poly1305() {
    golden(AeadAlgorithm::ChaCha20Poly1305, GOLDEN_CHACHA20_POLY1305_V1);
}

/// The AES golden vector recomputed from its definition with an independent implementation.
#[test]
fn golden_vector_aes_256_gcm_independent() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let header = [FORMAT_VERSION, 0, 0, 0, 7];
    let mut aad = header.to_vec();
    aad.extend_from_slice(GOLDEN_PATH.as_bytes());
    let ct = aes_gcm::Aes256Gcm::new_from_slice(&GOLDEN_KEY)
        .unwrap()
        .encrypt(
            &GOLDEN_NONCE.into(),
            Payload {
                msg: GOLDEN_PLAINTEXT,
                aad: &aad,
            },
        )
        .unwrap();
    let mut expected = header.to_vec();
    expected.extend_from_slice(&GOLDEN_NONCE);
    expected.extend_from_slice(&ct);
    assert_eq!(hex::encode(expected), GOLDEN_AES_256_GCM_V1);
}

/// The associated data is `header ‖ path` for every path length: short paths build it on
/// the stack, long ones (past 251 bytes) on the heap. Checked against the AEAD called
/// directly with that associated data.
#[test]
fn associated_data_is_header_and_path_at_every_length() {
    let nonce = [0x5a; 12];
    for alg in ALGS {
        let k = key(alg, 3);
        for len in [1usize, 200, 250, 251, 252, 253, 300, 2048] {
            let path = "p".repeat(len);
            let entry = barrier_seal_with_nonce(9, &k, &path, &nonce, b"value").unwrap();
            let mut aad = vec![FORMAT_VERSION, 0, 0, 0, 9];
            aad.extend_from_slice(path.as_bytes());
            let direct = k.seal_with_nonce(&nonce, &aad, b"value").unwrap();
            assert_eq!(
                entry[HEADER_LEN + nonce.len()..],
                direct[..],
                "path of {len} bytes"
            );
            assert_eq!(barrier::open(&k, &path, &entry).unwrap(), b"value");
            let other = format!("{}q", &path[1..]);
            assert_eq!(barrier::open(&k, &other, &entry), Err(DecryptError));
        }
    }
}
