//! The `#[resilient(...)]` attribute. Use it through `resilience_runtime`, which re-exports it
//! and documents every key.
//!
//! Parse → model → validate → expand, each in its own module; this file only converts between
//! `proc_macro` and `proc_macro2`.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod client;
mod entry;
#[cfg(test)]
mod every_body;
mod expand;
mod stamp;

use proc_macro::TokenStream;

/// See `resilience_runtime::resilient` for the documentation of every key.
#[proc_macro_attribute]
pub fn resilient(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::resilient(args.into(), item.into()).into()
}

/// See `resilience_runtime::client!`.
#[proc_macro]
pub fn client(input: TokenStream) -> TokenStream {
    client::client(input.into()).into()
}
