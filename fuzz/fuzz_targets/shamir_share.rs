//! Arbitrary bytes as Shamir shares: `Share::from_bytes` and `combine` must never panic, and
//! `split` followed by `combine` must round-trip.
#![no_main]

use keyhaven_crypto::shamir::{self, Share};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Input: a sequence of (length byte, share bytes) records.
    let mut shares = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (share, tail) = tail.split_at(len);
        if let Ok(s) = Share::from_bytes(share.to_vec()) {
            assert_eq!(s.as_bytes(), share);
            shares.push(s);
        }
        rest = tail;
    }
    let _ = shamir::combine(&shares);

    // Use the input as a secret too.
    if let Some((&params, secret)) = data.split_first() {
        if secret.is_empty() || secret.len() > 64 {
            return;
        }
        let n = params % 8 + 1;
        let t = (params >> 3) % n + 1;
        let shares = shamir::split(secret, t, n).unwrap();
        let subset = &shares[usize::from(n - t)..];
        assert_eq!(shamir::combine(subset).unwrap().expose_secret(), secret);
    }
});
