//! Integration tests of the engine, on MemStore with a manual clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod core;
mod kubernetes;
mod kv;
mod policy;
mod token;
mod token_valid;
mod transit;
mod userpass_cert;
