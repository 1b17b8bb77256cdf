//! Integration tests of the engine, on MemStore with a manual clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod approle;
mod auto_seal;
mod compat;
mod core;
mod database;
mod ha;
mod kubernetes;
mod kv;
mod kv1;
mod leases;
mod policy;
mod recovery;
mod telemetry;
mod token;
mod token_valid;
mod transit;
mod userpass_cert;
mod wrapping;
