//! Arbitrary bytes as a sealed root-key blob (`core/root-key` under auto-unseal):
//! `SealedValue::decode` must never panic, and whatever it accepts must encode back to
//! the same bytes.
#![no_main]

use keyhaven_engine::seal::SealedValue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = SealedValue::decode(data) {
        assert_eq!(value.encode().unwrap(), data);
    }
});
