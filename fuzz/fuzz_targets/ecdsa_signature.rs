//! ECDSA signatures arrive from the network (`transit/verify`): with any hash on either
//! curve, verifying arbitrary bytes as a signature (DER or `r ‖ s`) or as a public point
//! never panics and never succeeds; a signature keyhaven made verifies, and stops
//! verifying when the message changes.
#![no_main]

use std::sync::OnceLock;

use keyhaven_crypto::transit::{
    HashAlgorithm, KeyOptions, KeyType, Marshaling, RsaPadding, SignOptions, VersionKey,
    ecdsa_verify_digest,
};
use libfuzzer_sys::fuzz_target;

const HASHES: [HashAlgorithm; 8] = [
    HashAlgorithm::Sha1,
    HashAlgorithm::Sha2_224,
    HashAlgorithm::Sha2_256,
    HashAlgorithm::Sha2_384,
    HashAlgorithm::Sha2_512,
    HashAlgorithm::Sha3_256,
    HashAlgorithm::Sha3_384,
    HashAlgorithm::Sha3_512,
];

fn keys() -> &'static [VersionKey; 2] {
    static KEYS: OnceLock<[VersionKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [KeyType::EcdsaP256, KeyType::EcdsaP384]
            .map(|t| VersionKey::generate(t, KeyOptions::default(), 0).expect("a key"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let key = &keys()[usize::from(selector & 1)];
    let kind = if selector & 1 == 0 {
        KeyType::EcdsaP256
    } else {
        KeyType::EcdsaP384
    };
    let marshaling = if selector & 2 == 0 {
        Marshaling::Asn1
    } else {
        Marshaling::Jws
    };
    let hash = HASHES[usize::from(selector >> 2) % HASHES.len()];
    let opts = SignOptions {
        hash,
        prehashed: false,
        padding: RsaPadding::Pss,
        marshaling,
    };
    // Arbitrary bytes as a signature, under the real key, and as a public point.
    assert!(
        !key.verify(&opts, b"message", rest)
            .expect("an ECDSA key verifies")
    );
    let digest = hash.digest(b"message").expect("a supported hash");
    assert!(!ecdsa_verify_digest(kind, rest, &digest, rest, marshaling).expect("ECDSA"));
    // A real signature of the input verifies, and not for another message.
    let sig = key.sign(&opts, rest).expect("signing works");
    assert!(key.verify(&opts, rest, &sig).expect("verifies"));
    let mut other = rest.to_vec();
    other.push(0);
    assert!(!key.verify(&opts, &other, &sig).expect("verifies"));
});
