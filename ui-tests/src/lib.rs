//! Nothing here: the package holds `tests/ui.rs` and its cases (`tests/ui/pass`,
//! `tests/ui/fail`), the compile-time checks of `#[resilient]`.
