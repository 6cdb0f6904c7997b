//! How `#[resilient]` reads a policy: the attribute's arguments, `resilience.toml`, the layers
//! between them, the method a body sends, and every compile-time rule (from the rule book,
//! `resilience-spec`) with the place it points at. Shared by the attribute macro and the
//! `resilience` command, so that both read a policy the same way.
//!
//! Not a stable API: the macro and the command are its users.

#![forbid(unsafe_code)]
// The items are documented where they are not self-explanatory; this crate's users are the
// workspace's own macro and command.
#![allow(missing_docs)]

pub mod analysis;
pub mod attr;
pub mod config;
pub mod diag;
pub mod infer;
pub mod model;
#[cfg(test)]
mod proptests;
pub mod validate;
pub mod value;
