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
pub mod clock;
mod error;
pub mod kv;
pub mod params;
pub mod policy;
mod request;
pub mod route;
#[cfg(test)]
mod route_tests;
pub mod transit;

pub use backend::{Backend, BackendContext, BackendRequest, Limits};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{CryptoOp, EngineError};
pub use request::{BatchFailure, ClientToken, Operation, Request, Response};

mod barrier;
mod core;
mod cubbyhole;
mod mounts;
mod sys;
mod sys_mounts;
mod token;
mod wrapping;

pub use crate::barrier::KeyStatus;
pub use crate::core::{Core, CoreOptions, InitParams, InitResult, SealStatus, UnsealInput};
pub use crate::token::TokenEntry;
pub use crate::wrapping::WrapRequest;
