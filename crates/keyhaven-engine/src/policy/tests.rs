//! Unit tests of parsing and evaluation.
