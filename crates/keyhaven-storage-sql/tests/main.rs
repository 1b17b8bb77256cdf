//! Integration tests of keyhaven-storage-sql: the storage conformance suite and the
//! SQLite-specific guarantees (durability across reopen, pragmas, migrations, file
//! modes, shutdown).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

/// With `KEYHAVEN_TEST_PG` set, PostgreSQL tests are expected: refuse to pass quietly
/// when they were not compiled.
#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_tests_need_the_postgres_feature() {
    assert!(
        std::env::var_os("KEYHAVEN_TEST_PG").is_none(),
        "KEYHAVEN_TEST_PG is set, but the tests were built without the `postgres` feature: \
         run `cargo test -p keyhaven-storage-sql --features postgres`"
    );
}
