//! Errors collected across the whole expansion and reported together.

use proc_macro2::Span;

#[derive(Debug, Default)]
pub struct Diags(Vec<syn::Error>);

impl Diags {
    pub fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        self.0.push(syn::Error::new(span, message));
    }

    /// Each error's message, in the order pushed.
    pub fn messages(self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// All errors folded into one, or `None`.
    pub fn into_error(self) -> Option<syn::Error> {
        let mut it = self.0.into_iter();
        let mut first = it.next()?;
        for e in it {
            first.combine(e);
        }
        Some(first)
    }
}
