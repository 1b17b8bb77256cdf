//! Integration tests of keyhaven-storage: the conformance suite on [`MemStore`] and
//! [`ScopedStore`], and the confinement of scoped views.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod mem;
mod scoped;
