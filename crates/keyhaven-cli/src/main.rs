//! The `keyhaven` binary.
fn main() {}
