//! Differential tests against RustCrypto's `aes-gcm` (a dev-dependency only).

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use keyhaven_crypto::{AeadAlgorithm, AeadKey, SecretKey, barrier};
use proptest::collection::vec;
use proptest::prelude::*;

fn rustcrypto_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(key).unwrap();
    cipher
        .encrypt(&(*nonce).into(), Payload { msg: pt, aad })
        .unwrap()
}

fn rustcrypto_open(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let cipher = Aes256Gcm::new_from_slice(key).unwrap();
    cipher
        .decrypt(&(*nonce).into(), Payload { msg: ct, aad })
        .ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn aes_256_gcm_matches_rustcrypto(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 12]>(),
        aad in vec(any::<u8>(), 0..64),
        pt in vec(any::<u8>(), 0..600),
    ) {
        let ours = AeadKey::new(AeadAlgorithm::Aes256Gcm, &SecretKey::from_bytes(key)).unwrap();
        let expected = rustcrypto_seal(&key, &nonce, &aad, &pt);
        prop_assert_eq!(&ours.seal_with_nonce(&nonce, &aad, &pt).unwrap(), &expected);
        prop_assert_eq!(&ours.open_with_nonce(&nonce, &aad, &expected).unwrap(), &pt);

        // Random-nonce output is nonce ‖ ct ‖ tag and RustCrypto opens it.
        let sealed = ours.seal(&aad, &pt).unwrap();
        let n: [u8; 12] = sealed[..12].try_into().unwrap();
        prop_assert_eq!(rustcrypto_open(&key, &n, &aad, &sealed[12..]), Some(pt.clone()));
    }

    #[test]
    fn tampering_rejected_by_both(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 12]>(),
        pt in vec(any::<u8>(), 0..64),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let ours = AeadKey::new(AeadAlgorithm::Aes256Gcm, &SecretKey::from_bytes(key)).unwrap();
        let mut ct = ours.seal_with_nonce(&nonce, b"aad", &pt).unwrap();
        let i = flip.index(ct.len());
        ct[i] ^= 1 << bit;
        prop_assert!(ours.open_with_nonce(&nonce, b"aad", &ct).is_err());
        prop_assert!(rustcrypto_open(&key, &nonce, b"aad", &ct).is_none());
    }

    #[test]
    fn barrier_entry_is_aes_gcm_with_header_and_path_as_aad(
        key in any::<[u8; 32]>(),
        term in any::<u32>(),
        path in "[a-z0-9/_-]{0,40}",
        pt in vec(any::<u8>(), 0..300),
    ) {
        let k = AeadKey::new(AeadAlgorithm::Aes256Gcm, &SecretKey::from_bytes(key)).unwrap();
        let entry = barrier::seal(term, &k, &path, &pt).unwrap();
        let header = &entry[..barrier::HEADER_LEN];
        let nonce: [u8; 12] = entry[5..17].try_into().unwrap();
        let mut aad = header.to_vec();
        aad.extend_from_slice(path.as_bytes());
        prop_assert_eq!(rustcrypto_open(&key, &nonce, &aad, &entry[17..]), Some(pt));
    }
}
