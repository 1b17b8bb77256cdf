//! Password policy text (HCL, JSON or base64 of either) → `PasswordPolicy::parse` →
//! `generate`.
//!
//! Must hold: parsing never panics, whatever the input; errors stay short; a policy that
//! parses has a length within OpenBao's bounds, and a password it generates has that
//! length (or generation reports the policy as unsatisfiable).
#![no_main]

use keyhaven_engine::password_policy::{MAX_LENGTH, MIN_LENGTH, PasswordPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match PasswordPolicy::parse(text) {
        Ok(p) => p,
        Err(e) => {
            assert!(e.len() < 1024, "error message too long");
            return;
        }
    };
    assert!((MIN_LENGTH..=MAX_LENGTH).contains(&policy.length()));
    if let Ok(pw) = policy.generate() {
        assert_eq!(pw.chars().count(), policy.length());
    }
});
