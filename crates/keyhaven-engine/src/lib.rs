//! keyhaven's core: seal and unseal, the barrier, the keyring, the mount table and router,
//! and the secret backends.
//!
//! The engine knows no HTTP, gRPC or SQL driver. It runs whole on a
//! [`keyhaven_storage::MemStore`] with a [`clock::ManualClock`], which is how its tests
//! run. The server crate translates HTTP to [`Request`] and back.
//!
//! Invariants:
//! - every value a backend stores passes through the barrier, which encrypts it with the
//!   active keyring term and binds it to its storage path;
//! - key material lives in zeroizing types and is dropped on seal;
//! - a backend sees only its own scoped storage and cannot reach outside it.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod backend;
pub mod cidr;
pub mod clock;
pub mod database;
mod error;
pub mod ha;
pub mod kv;
pub mod lease;
pub mod metrics;
pub mod params;
pub mod password_policy;
pub mod policy;
mod request;
pub mod route;
#[cfg(test)]
mod route_tests;
pub mod transit;

pub use backend::{Backend, BackendContext, BackendRequest, LeaseRef, Limits};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{CryptoOp, EngineError};
pub use request::{
    BatchFailure, ClientToken, EncodedData, LeaseDuration, LeaseGrant, Operation, Request,
    Response, SecretGrant,
};

mod barrier;
mod core;
mod cubbyhole;
mod host_info;
mod mounts;
mod recovery;
pub mod seal;
mod sys;
mod sys_mounts;
pub mod sys_tools;
mod token;
mod wrapping;

pub use crate::barrier::KeyStatus;
pub use crate::core::{
    Core, CoreOptions, InitParams, InitResult, RecoveryParams, SealStatus, UnsealInput,
};
pub use crate::host_info::hostname;
pub use crate::token::TokenEntry;

/// The Vault-compatible API version keyhaven implements: the OpenBao release whose
/// answers its wire behaviour is checked against.
#[macro_export]
#[doc(hidden)]
macro_rules! api_compat_version {
    () => {
        "2.7.2"
    };
}

/// The Vault-compatible API version keyhaven implements (see [`REPORTED_VERSION`]).
pub const API_COMPAT_VERSION: &str = api_compat_version!();

/// The version `sys/seal-status`, `sys/health` and `sys/ha-status` report: the
/// Vault-compatible API version, with keyhaven's own version as semantic-versioning
/// build metadata (`2.7.2+keyhaven.0.1.0`). Clients that gate features on the server
/// version (terraform-provider-vault, through hashicorp/go-version) compare the API
/// version and ignore the metadata; people read both.
pub const REPORTED_VERSION: &str = concat!(
    api_compat_version!(),
    "+keyhaven.",
    env!("CARGO_PKG_VERSION")
);
pub use crate::wrapping::WrapRequest;
