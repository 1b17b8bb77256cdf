//! Wire types of keyhaven's HTTP API.
//!
//! The API follows Vault/OpenBao's JSON shapes where the two overlap, so that existing
//! clients (the `bao` CLI, hvac, the Vault CSI provider) work unchanged. This crate holds
//! only data: the stable [`ErrorCode`]s the server maps to HTTP statuses, the error body,
//! and the token format. It does no I/O.
#![forbid(unsafe_code)]

mod error;
pub mod token;

pub use error::{ErrorBody, ErrorCode};
