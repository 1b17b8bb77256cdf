//! Integration tests of the server crate (one binary; add modules here).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod database_pg;
mod http_query;
mod kubernetes_auth;
mod listener;
mod metrics_http;
