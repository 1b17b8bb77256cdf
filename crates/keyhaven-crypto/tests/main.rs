//! keyhaven-crypto integration tests: one binary, one module per area.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod barrier;
mod cross_check;
mod no_leak;
mod shamir;
mod transit;
mod wycheproof_aead;
mod wycheproof_ecdsa;
mod wycheproof_hkdf;
