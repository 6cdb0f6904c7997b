//! Examples, integration tests and benchmarks for the resilience workspace.
//!
//! The library crate is `resilience-runtime`; this package holds what demonstrates and tests it:
//! the experiments shared by `cargo run --example tour` and the tests.

pub mod incidents;
pub mod orders;
