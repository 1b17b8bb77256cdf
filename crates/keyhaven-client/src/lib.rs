//! A typed async client of keyhaven's HTTP API.
//!
//! The API is Vault/OpenBao's where the two overlap, so this client also talks to those
//! servers for the endpoints it covers. It offers:
//!
//! - low-level calls ([`Client::read`], [`Client::write`], [`Client::patch`],
//!   [`Client::delete`], [`Client::list`]) that take an API path relative to `/v1/` and
//!   return Vault's response envelope as JSON;
//! - typed calls for `sys/` (seal status, init, unseal, seal, keyring rotation, health,
//!   mounts, auth methods, the mount preflight), for the KV version 2 engine ([`Kv2`]),
//!   and for the token store, logins and capabilities ([`Client::create_token`],
//!   [`Client::login`], [`Client::capabilities`]).
//!
//! # Invariants
//!
//! - The token travels only in the `X-Vault-Token` header, marked sensitive. It never
//!   appears in a `Debug` output, an error or a log line, and neither do request bodies
//!   or secret values of responses ([`ClientError::Decode`] drops the decoder's message
//!   because it may quote them).
//! - A 404 on a read or list means "nothing there" (`Ok(None)`), as in Vault's client;
//!   on any other call it is an error.
//! - Certificate verification is on unless [`ClientConfig::dangerous_skip_tls_verify`]
//!   is set, which logs a warning. A CA file given in [`ClientConfig::ca_cert`] replaces
//!   the built-in roots.
//!
//! Non-goals: caching, retries, token renewal.
#![forbid(unsafe_code)]

mod auth_mounts;
mod client;
mod error;
mod kv;
mod secret;
mod sys;
mod token;

pub use client::{Client, ClientConfig, DEFAULT_TIMEOUT, TOKEN_HEADER};
pub use error::ClientError;
pub use keyhaven_types::wire::{Health, MountConfig, MountEntry, SealStatus, TokenLookup};
pub use kv::{KeyList, Kv2, KvData, KvMetadata, MetadataUpdate, VersionMetadata, VersionState};
pub use reqwest::Url;
pub use secret::{Secret, envelope_warnings};
pub use sys::{EnableMount, InitRequest, InitResponse, KeyStatus, MountPreflight};
pub use token::{AuthResponse, CreateToken, TokenAuth, TokenParent, TokenRef};
