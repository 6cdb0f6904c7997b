//! Examples, integration tests and benchmarks for the resilience workspace.
