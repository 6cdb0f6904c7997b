//! Parses the attribute's arguments into located values. Generates nothing.
//!
//! Grammar: `key = value, flag, table(key = value, ...)`, where a value is a string, an integer
//! (optionally with a unit suffix: `250ms`), a float, a bool, a word or path, a `[list]`, or a
//! `{ key = value }` table.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt as _;
use syn::parse::{ParseStream, Parser as _};
use syn::{Ident, Token, braced, bracketed, parenthesized};

use crate::value::{Located, Origin, Value};

/// One `key = value` of the attribute.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: Ident,
    pub value: Located,
    /// The whole `key = value`, to point at.
    pub span: Span,
}

pub fn parse_args(tokens: TokenStream) -> syn::Result<Vec<Entry>> {
    let parser = |input: ParseStream<'_>| {
        let mut out = Vec::new();
        while !input.is_empty() {
            out.push(parse_entry(input)?);
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(out)
    };
    parser.parse2(tokens)
}

fn parse_entry(input: ParseStream<'_>) -> syn::Result<Entry> {
    let key = Ident::parse_any(input)
        .map_err(|e| syn::Error::new(e.span(), "expected a policy key, like `timeout = \"2s\"`"))?;
    let start = key.span();
    let value = if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        parse_value(input)?
    } else if input.peek(syn::token::Paren) {
        let content;
        let paren = parenthesized!(content in input);
        Located {
            value: Value::Table(parse_table_body(&content)?),
            origin: Origin::Inline(paren.span.join()),
        }
    } else if !input.is_empty() && !input.peek(Token![,]) {
        return Err(syn::Error::new(
            input.span(),
            format!("expected `=` after `{key}`, like `{key} = …`"),
        ));
    } else {
        // A bare flag: `idempotent`.
        Located {
            value: Value::Bool(true),
            origin: Origin::Inline(key.span()),
        }
    };
    let span = match &value.origin {
        Origin::Inline(s) => start.join(*s).unwrap_or(start),
        _ => start,
    };
    Ok(Entry { key, value, span })
}

fn parse_table_body(input: ParseStream<'_>) -> syn::Result<Vec<(String, Located)>> {
    let mut out: Vec<(String, Located)> = Vec::new();
    while !input.is_empty() {
        let e = parse_entry(input)?;
        let key = e.key.unraw().to_string();
        if out.iter().any(|(k, _)| *k == key) {
            return Err(syn::Error::new(
                e.key.span(),
                format!("`{key}` is given twice"),
            ));
        }
        out.push((
            key,
            Located {
                origin: Origin::Inline(e.span),
                ..e.value
            },
        ));
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(out)
}

fn parse_value(input: ParseStream<'_>) -> syn::Result<Located> {
    let located = |value, span| {
        Ok(Located {
            value,
            origin: Origin::Inline(span),
        })
    };
    if input.peek(syn::token::Bracket) {
        let content;
        let b = bracketed!(content in input);
        let mut items = Vec::new();
        while !content.is_empty() {
            items.push(parse_value(&content)?);
            if content.is_empty() {
                break;
            }
            content.parse::<Token![,]>()?;
        }
        return located(Value::List(items), b.span.join());
    }
    if input.peek(syn::token::Brace) {
        let content;
        let b = braced!(content in input);
        return located(Value::Table(parse_table_body(&content)?), b.span.join());
    }
    if input.peek(syn::Lit) {
        let lit: syn::Lit = input.parse()?;
        let span = lit.span();
        // A negative number can arrive as one literal token.
        let negative = match &lit {
            syn::Lit::Int(i) => i.base10_digits().starts_with('-'),
            syn::Lit::Float(f) => f.base10_digits().starts_with('-'),
            _ => false,
        };
        if negative {
            return Err(syn::Error::new(
                span,
                "negative values are not allowed here",
            ));
        }
        return match lit {
            syn::Lit::Str(s) => located(Value::Str(s.value()), span),
            syn::Lit::Int(i) => {
                let n: u64 = i.base10_parse()?;
                if i.suffix().is_empty() {
                    located(Value::Int(n), span)
                } else {
                    located(Value::IntSuffixed(n, i.suffix().to_owned()), span)
                }
            }
            syn::Lit::Float(f) if !f.suffix().is_empty() => located(
                Value::FloatSuffixed(format!("{}{}", f.base10_digits(), f.suffix())),
                span,
            ),
            // Too large is said where the key is known (`number`); too small is said here.
            syn::Lit::Float(f) => match resilience_spec::policy_float(f.base10_digits()) {
                Ok(x) => located(Value::Float(x), span),
                Err(_) if f.base10_parse::<f64>()?.is_infinite() => {
                    located(Value::Float(f64::INFINITY), span)
                }
                Err(why) => Err(syn::Error::new(
                    span,
                    format!("{} {why}", f.base10_digits()),
                )),
            },
            syn::Lit::Bool(b) => located(Value::Bool(b.value), span),
            other => Err(syn::Error::new(
                other.span(),
                "expected a string, a number or a boolean",
            )),
        };
    }
    if input.peek(Token![-]) {
        let minus: Token![-] = input.parse()?;
        return Err(syn::Error::new(
            minus.span,
            "negative values are not allowed here",
        ));
    }
    // A word, a path (`::a::b`) or a field path (`order.id`).
    let mut text = String::new();
    let first = input.span();
    let mut last;
    if input.peek(Token![::]) {
        input.parse::<Token![::]>()?;
        text.push_str("::");
    }
    loop {
        let id = Ident::parse_any(input).map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected a value: a string, a number, a word, a [list] or a { table }",
            )
        })?;
        last = id.span();
        text.push_str(&id.unraw().to_string());
        if input.peek(Token![::]) {
            input.parse::<Token![::]>()?;
            text.push_str("::");
        } else if input.peek(Token![.]) && !input.peek(Token![..]) {
            input.parse::<Token![.]>()?;
            text.push('.');
            // A tuple field (`order.ids.0`), or several (`pair.0.1` arrives as one float).
            if input.peek(syn::LitInt) || input.peek(syn::LitFloat) {
                let lit: syn::Lit = input.parse()?;
                let digits = match &lit {
                    syn::Lit::Int(i) if i.suffix().is_empty() => i.base10_digits().to_owned(),
                    syn::Lit::Float(f) if f.suffix().is_empty() => f.base10_digits().to_owned(),
                    _ => String::new(),
                };
                let valid = !digits.is_empty()
                    && digits
                        .split('.')
                        .all(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
                if !valid {
                    return Err(syn::Error::new(
                        lit.span(),
                        "expected a field: a name, or a tuple field's index like `.0`",
                    ));
                }
                last = lit.span();
                text.push_str(&digits);
                if input.peek(Token![.]) && !input.peek(Token![..]) {
                    input.parse::<Token![.]>()?;
                    text.push('.');
                    continue;
                }
                break;
            }
        } else {
            break;
        }
    }
    located(Value::Word(text), first.join(last).unwrap_or(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(ts: TokenStream) -> Vec<(String, String)> {
        parse_args(ts)
            .unwrap()
            .into_iter()
            .map(|e| (e.key.to_string(), e.value.render()))
            .collect()
    }

    #[test]
    fn every_value_shape() {
        let got = parse(quote! {
            timeout = "2s", deadline = 5s, max_attempts = 3, method = POST, idempotent,
            retry_on = [connect, 503], backoff(kind = constant, initial = "10ms"),
            budget = { ratio = 0.2 }, crate = ::my::reexport, idempotency_key = order.id
        });
        // Tuple fields in a key's path.
        assert_eq!(
            parse(quote!(idempotency_key = order.ids.0))[0].1,
            "order.ids.0"
        );
        assert_eq!(parse(quote!(idempotency_key = pair.0.1))[0].1, "pair.0.1");
        let want = [
            ("timeout", "\"2s\""),
            ("deadline", "5s"),
            ("max_attempts", "3"),
            ("method", "POST"),
            ("idempotent", "true"),
            ("retry_on", "[connect, 503]"),
            ("backoff", "{ kind = constant, initial = \"10ms\" }"),
            ("budget", "{ ratio = 0.2 }"),
            ("crate", "::my::reexport"),
            ("idempotency_key", "order.id"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn negative_literal_tokens_are_refused_clearly() {
        let int = proc_macro2::Literal::i64_unsuffixed(-1);
        let float = proc_macro2::Literal::f64_unsuffixed(-0.5);
        for ts in [quote!(max_attempts = #int), quote!(budget(ratio = #float))] {
            let e = parse_args(ts).unwrap_err();
            assert_eq!(e.to_string(), "negative values are not allowed here");
        }
    }

    /// `ratio = 1e-400` is no 0 written otherwise: refused at its literal, not read as "no
    /// retries bought"; `0e-400` is a zero.
    #[test]
    fn a_number_too_small_to_tell_from_zero_is_refused() {
        let e = parse_args(quote!(budget(ratio = 1e-400))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "1e-400 is too small to tell from 0: write 0, or a larger number"
        );
        assert!(parse_args(quote!(budget(ratio = 0e-400))).is_ok());
        assert!(parse_args(quote!(budget(ratio = 1e-3))).is_ok());
    }

    #[test]
    fn errors_do_not_panic() {
        for ts in [
            quote!(= 3),
            quote!(timeout = ),
            quote!(a = -1),
            quote!(a = [1,, 2]),
            quote!(a b),
            quote!(timeout "1s"),
            quote!(backoff(initial = "1ms", initial = "2ms")),
            quote!(budget = { ratio = 0.1, ratio = 0.2 }),
            quote!(max_attempts = 99999999999999999999999),
        ] {
            assert!(parse_args(ts).is_err());
        }
    }
}
