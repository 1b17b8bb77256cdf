//! End-to-end tests of the keyhaven binary.
