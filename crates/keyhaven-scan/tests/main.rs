//! Integration tests of keyhaven-scan (one binary; see the modules).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(missing_docs)]

mod cli;
mod common;
mod corpus;
mod git_history;
mod pathological;
mod posture;
mod precision;
mod rules;
