//! Shamir split/combine through the public API.

use keyhaven_crypto::SecretKey;
use keyhaven_crypto::shamir::{self, ShamirError, Share};
use proptest::prelude::*;

fn secret() -> [u8; 32] {
    *SecretKey::generate().unwrap().expose_secret()
}

/// Parses a share from its encoded bytes (what an operator would paste back).
fn reparse(s: &Share) -> Share {
    Share::from_bytes(s.as_bytes().to_vec()).unwrap()
}

fn subset(shares: &[Share], idx: &[usize]) -> Vec<Share> {
    idx.iter().map(|&i| reparse(&shares[i])).collect()
}

/// All k-subsets of 0..n, in lexicographic order.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn go(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            go(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    go(0, n, k, &mut Vec::new(), &mut out);
    out
}

fn check_scheme(threshold: u8, n: u8) {
    let s = secret();
    let shares = shamir::split(&s, threshold, n).unwrap();
    assert_eq!(shares.len(), usize::from(n));
    for (i, sh) in shares.iter().enumerate() {
        assert_eq!(sh.as_bytes().len(), 33, "y ‖ x");
        assert_eq!(usize::from(sh.x()), i + 1);
        assert_eq!(*sh.as_bytes().last().unwrap(), sh.x());
    }
    let t = usize::from(threshold);
    let n = usize::from(n);
    // Every threshold-sized subset, and every larger one up to all shares.
    for k in t..=n {
        let sets = subsets(n, k);
        for idx in sets.iter().take(64) {
            let got = shamir::combine(&subset(&shares, idx)).unwrap();
            assert_eq!(got.expose_secret(), s, "t={t} n={n} subset {idx:?}");
            // Order does not matter.
            let mut rev = idx.clone();
            rev.reverse();
            let got = shamir::combine(&subset(&shares, &rev)).unwrap();
            assert_eq!(got.expose_secret(), s);
        }
    }
}

#[test]
fn one_of_one() {
    let s = secret();
    let shares = shamir::split(&s, 1, 1).unwrap();
    assert_eq!(shares.len(), 1);
    assert_eq!(
        &shares[0].as_bytes()[..32],
        &s,
        "t = 1: the share carries the secret"
    );
    assert_eq!(shares[0].x(), 1);
    assert_eq!(shamir::combine(&shares).unwrap().expose_secret(), s);
}

#[test]
fn threshold_one_of_three() {
    check_scheme(1, 3);
}

#[test]
fn two_of_three() {
    check_scheme(2, 3);
}

#[test]
fn three_of_five() {
    check_scheme(3, 5);
}

#[test]
fn five_of_five() {
    check_scheme(5, 5);
}

#[test]
fn two_hundred_fifty_five_shares() {
    let s = secret();
    for t in [2u8, 128, 255] {
        let shares = shamir::split(&s, t, 255).unwrap();
        assert_eq!(shares.len(), 255);
        let xs: std::collections::BTreeSet<u8> = shares.iter().map(Share::x).collect();
        assert_eq!(xs.len(), 255);
        // The last t shares, and all 255.
        let tail: Vec<usize> = (255 - usize::from(t)..255).collect();
        assert_eq!(
            shamir::combine(&subset(&shares, &tail))
                .unwrap()
                .expose_secret(),
            s
        );
        assert_eq!(shamir::combine(&shares).unwrap().expose_secret(), s);
    }
}

/// Below the threshold, combine returns *a* value without error, and it is not the secret.
/// (For a 32-byte secret the chance that it is equal by accident is 2^-256.) Callers must
/// verify the result; the engine does so with an AEAD tag.
#[test]
fn below_threshold_gives_wrong_secret_without_error() {
    let s = secret();
    let shares = shamir::split(&s, 3, 5).unwrap();
    for idx in subsets(5, 2).iter().chain(subsets(5, 1).iter()) {
        let got = shamir::combine(&subset(&shares, idx)).unwrap();
        assert_eq!(got.len(), 32);
        assert_ne!(got.expose_secret(), s, "subset {idx:?}");
    }
}

#[test]
fn shares_do_not_contain_the_secret() {
    let s = secret();
    for sh in shamir::split(&s, 2, 5).unwrap() {
        assert_ne!(&sh.as_bytes()[..32], &s);
    }
}

#[test]
fn duplicates_rejected() {
    let shares = shamir::split(&secret(), 2, 3).unwrap();
    let dup = vec![reparse(&shares[0]), reparse(&shares[0])];
    assert_eq!(
        shamir::combine(&dup).unwrap_err(),
        ShamirError::DuplicateShare
    );
    let dup3 = vec![
        reparse(&shares[0]),
        reparse(&shares[1]),
        reparse(&shares[0]),
    ];
    assert_eq!(
        shamir::combine(&dup3).unwrap_err(),
        ShamirError::DuplicateShare
    );
    // Same x, different y.
    let mut forged = shares[1].as_bytes().to_vec();
    *forged.last_mut().unwrap() = shares[0].x();
    let clash = vec![reparse(&shares[0]), Share::from_bytes(forged).unwrap()];
    assert_eq!(
        shamir::combine(&clash).unwrap_err(),
        ShamirError::DuplicateShare
    );
}

#[test]
fn malformed_rejected() {
    assert_eq!(
        Share::from_bytes(vec![]).unwrap_err(),
        ShamirError::Malformed
    );
    assert_eq!(
        Share::from_bytes(vec![1]).unwrap_err(),
        ShamirError::Malformed
    );
    let mut zero_x = vec![0xab; 33];
    zero_x[32] = 0;
    assert_eq!(
        Share::from_bytes(zero_x).unwrap_err(),
        ShamirError::Malformed
    );
}

#[test]
fn length_mismatch_rejected() {
    let a = shamir::split(&[1u8; 32], 2, 3).unwrap();
    let b = shamir::split(&[1u8; 16], 2, 3).unwrap();
    let mixed = vec![reparse(&a[0]), reparse(&b[1])];
    assert_eq!(
        shamir::combine(&mixed).unwrap_err(),
        ShamirError::LengthMismatch
    );
}

#[test]
fn invalid_parameters_rejected() {
    for (t, n) in [(0u8, 0u8), (0, 3), (2, 1), (4, 3), (255, 254)] {
        assert_eq!(
            shamir::split(b"secret", t, n).unwrap_err(),
            ShamirError::InvalidParameters {
                threshold: t,
                shares: n
            }
        );
    }
    assert_eq!(
        shamir::split(b"", 1, 1).unwrap_err(),
        ShamirError::EmptySecret
    );
    assert_eq!(shamir::combine(&[]).unwrap_err(), ShamirError::TooFewShares);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_threshold_subset_combines(
        secret in proptest::collection::vec(any::<u8>(), 1..48),
        n in 1u8..=12,
        t_seed in any::<u8>(),
        pick in any::<proptest::sample::Index>(),
    ) {
        let t = 1 + t_seed % n;
        let shares = shamir::split(&secret, t, n).unwrap();
        let all = subsets(usize::from(n), usize::from(t));
        let idx = pick.get(&all);
        let got = shamir::combine(&subset(&shares, idx)).unwrap();
        prop_assert_eq!(got.expose_secret(), secret.as_slice());
    }
}
