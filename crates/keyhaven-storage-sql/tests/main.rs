//! Integration tests of keyhaven-storage-sql: the storage conformance suite and the
//! SQLite-specific guarantees (durability across reopen, pragmas, migrations, file
//! modes, shutdown).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod sqlite;
