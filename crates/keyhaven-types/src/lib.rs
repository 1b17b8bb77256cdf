//! Wire types of keyhaven's HTTP API.
//!
//! The API follows Vault/OpenBao's JSON shapes where the two overlap, so that existing
//! clients (the `bao` CLI, hvac, the Vault CSI provider) work unchanged. This crate holds
//! only data: the stable [`ErrorCode`]s the server maps to HTTP statuses, the error body,
//! the token format, and the response bodies the engine or server writes and the client
//! reads ([`wire`]). It does no I/O and depends on nothing but serde and serde_json (and
//! thiserror for its error types).
#![forbid(unsafe_code)]

mod error;
pub mod token;
pub mod wire;

pub use error::{ErrorBody, ErrorCode};
