//! Tests of the envelope library: round trips, tampering, key commitment, golden vectors,
//! the data-key cache, regular files read at their offsets, and bounded memory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

mod asyncio;
mod cache;
mod files;
mod memory;
mod roundtrip;
mod tamper;
mod vectors;
