//! A function's full path, written the same way by the runtime (from the compiler's type name
//! of an item nested in the function) and by `resilience list` (from the source): the module
//! the function is written in, then for a method the last segment of its impl's type (and
//! trait), without generic arguments or lifetimes, then its name.
//!
//! | function | path |
//! |---|---|
//! | `fn charge` in `shop::pg` | `shop::pg::charge` |
//! | `impl<'a> Client<'a> { fn charge }` in `shop::pg` | `shop::pg::Client::charge` |
//! | `impl Api for super::Svc { fn get }` in `shop::svc` | `shop::svc::<Svc as Api>::get` |
//! | `fn call` in the body of `async fn first` in `shop::tests` | `shop::tests::first::call` |
//! | `fn call` in the body of `impl Ledger { async fn get }` in `shop` | `shop::Ledger::get::call` |
//! | `fn get` in `mod m` in the body of `fn outer` in `shop` | `shop::outer::m::get` |

use std::borrow::Cow;

/// The path of a method: `module::Type::name`, or `module::<Type as Trait>::name` in a trait
/// impl. `self_ty` and `trait_` as written or as the compiler names them (`&'a m::Repo<T>`,
/// `m::Api<u8>`): only their last segment counts.
pub fn method_path(module: &str, self_ty: &str, trait_: Option<&str>, name: &str) -> String {
    match trait_ {
        Some(t) => format!(
            "{module}::<{} as {}>::{name}",
            short_type(self_ty),
            short_type(t)
        ),
        None => format!("{module}::{}::{name}", short_type(self_ty)),
    }
}

/// The function's path from `module_and_name` (`module_path!()` and its name) and `located`,
/// the path the compiler's type name gives (`m::Repo<_>::get`, `<m::Svc as m::Api>::get`).
pub fn from_type_name<'a>(module_and_name: &'a str, located: &'a str) -> Cow<'a, str> {
    // Raw identifiers (`mod r#async`, `fn r#match`): `module_path!()` and `stringify!` keep
    // the `r#`, the compiler's type names do not, nor does the path (`#` is in no other path).
    if module_and_name.contains("r#") {
        let plain = module_and_name.replace("r#", "");
        return Cow::Owned(from_type_name(&plain, located).into_owned());
    }
    let Some((module, name)) = module_and_name.rsplit_once("::") else {
        return located.into();
    };
    if located == module_and_name {
        return located.into();
    }
    let Some(mut owner) = located
        .strip_suffix(name)
        .and_then(|s| s.strip_suffix("::"))
    else {
        return located.into();
    };
    // A function declared in an `async` body (an `async fn`'s, a `#[tokio::test]`'s): the
    // function around it, not the body's closure, is its owner, so that two such functions
    // of one name in two tests have two paths.
    let mut in_async_body = false;
    while let Some(rest) = owner.strip_suffix("::{{closure}}") {
        owner = rest;
        in_async_body = true;
    }
    // ... an `async` method's (the body's closure says the owner is a function, not a type):
    // named after that method's own path (`m::Client::get::call`, `m::<Svc as Api>::get::call`),
    // so that two such helpers of one name in two impls of one module have two paths.
    if in_async_body
        && let Some((of, owner_name)) = owner.rsplit_once("::")
        && of != module
        && !owner_name.is_empty()
    {
        let method = format!("{module}::{owner_name}");
        return format!("{}::{name}", from_type_name(&method, owner)).into();
    }
    if owner == module {
        return module_and_name.into();
    }
    // A module declared in a function's body (`fn outer() { mod m { fn get } }`):
    // `module_path!()` leaves the function out (`shop::m`), the type name does not
    // (`shop::outer::m`, `shop::outer::{{closure}}::m` in an `async` body). The function's
    // name is kept, so that two such modules of one name in two functions have two paths.
    if let Some((_, last)) = module.rsplit_once("::")
        && owner.ends_with(&format!("::{last}"))
    {
        return format!("{}::{name}", owner.replace("::{{closure}}", "")).into();
    }
    // An impl written in another module than its type (and trait): the compiler names it
    // `module::<impl m::Client>` or `module::<impl m::Api for m::Svc>`.
    if let Some(imp) = owner
        .find("::<impl ")
        .and_then(|i| owner[i + 8..].strip_suffix('>'))
    {
        return match split_at_word(imp, " for ") {
            Some((tr, ty)) => method_path(module, ty, Some(tr), name),
            None => method_path(module, imp, None, name),
        }
        .into();
    }
    if let Some(inner) = owner.strip_prefix('<').and_then(|s| s.strip_suffix('>'))
        && let Some((ty, tr)) = split_as(inner)
    {
        return method_path(module, ty, Some(tr), name).into();
    }
    method_path(module, owner, None, name).into()
}

/// The compiler's type name of a function (`<app::stripe::Client<_> as app::Gw>::charge`)
/// without generic arguments: what tells apart two functions that [`from_type_name`] gives one
/// path (methods of `stripe::Client` and `adyen::Client` in one module), and not two impls of
/// one type at different generic arguments, which share theirs by design.
pub fn owner_identity(located: &str) -> String {
    let mut out = String::with_capacity(located.len());
    let mut prev = ' ';
    let mut depth = 0usize;
    for c in located.chars() {
        if depth > 0 {
            match c {
                '<' => depth += 1,
                '>' => depth -= 1,
                _ => {}
            }
            continue;
        }
        // Generic arguments follow a name; a qualified path's `<` does not.
        if c == '<' && (prev.is_alphanumeric() || prev == '_') {
            depth = 1;
            continue;
        }
        out.push(c);
        prev = c;
    }
    out
}

/// `A as B` at the outer level of angle brackets.
fn split_as(inner: &str) -> Option<(&str, &str)> {
    split_at_word(inner, " as ")
}

/// `inner` cut at `word` (` as `, ` for `) at the outer level of angle brackets.
fn split_at_word<'a>(inner: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let mut depth = 0usize;
    for (i, c) in inner.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            ' ' if depth == 0 && inner[i..].starts_with(word) => {
                return Some((&inner[..i], &inner[i + word.len()..]));
            }
            _ => {}
        }
    }
    None
}

/// The last segment of a type's path, without generic arguments, references or lifetimes.
fn short_type(ty: &str) -> String {
    let mut plain = String::with_capacity(ty.len());
    let mut depth = 0usize;
    for c in ty.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let tail = plain.rsplit("::").next().unwrap_or("");
    let word = tail.split_whitespace().last().unwrap_or("");
    word.trim_start_matches(['&', '*']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_identity_drops_generic_arguments_only() {
        assert_eq!(
            owner_identity("<app::stripe::Client<_, u8> as app::Gw<Vec<u8>>>::charge"),
            "<app::stripe::Client as app::Gw>::charge"
        );
        assert_eq!(
            owner_identity("app::Repo<'_>::get"),
            owner_identity("app::Repo<_>::get")
        );
        assert_ne!(
            owner_identity("<app::stripe::Client as app::Gw>::charge"),
            owner_identity("<app::adyen::Client as app::Gw>::charge")
        );
    }

    #[test]
    fn the_runtime_and_the_source_give_one_path() {
        // What the compiler's type names give (generic arguments as `_`, lifetimes as `'_`).
        let cases = [
            ("shop::pg::charge", "shop::pg::charge", "shop::pg::charge"),
            (
                "shop::pg::charge",
                "shop::pg::Client::charge",
                "shop::pg::Client::charge",
            ),
            (
                "shop::pg::charge",
                "shop::pg::Client<'_>::charge",
                "shop::pg::Client::charge",
            ),
            (
                "shop::repo::fetch",
                "shop::model::Repo<_, _>::fetch",
                "shop::repo::Repo::fetch",
            ),
            (
                "shop::svc::get",
                "<shop::model::Svc<_> as shop::api::Api<u8>>::get",
                "shop::svc::<Svc as Api>::get",
            ),
            (
                "shop::svc::get",
                "<&shop::model::Svc as shop::api::Api>::get",
                "shop::svc::<Svc as Api>::get",
            ),
            // An impl in another module than its type (and trait).
            (
                "shop::client::charge",
                "shop::client::<impl shop::model::Client>::charge",
                "shop::client::Client::charge",
            ),
            (
                "shop::client::charge",
                "shop::client::<impl shop::model::Client<_>>::charge",
                "shop::client::Client::charge",
            ),
            (
                "shop::svc::get",
                "shop::svc::<impl shop::api::Api<u8> for shop::model::Svc<_>>::get",
                "shop::svc::<Svc as Api>::get",
            ),
            // A function inside a function: the outer one's name where a type would be.
            ("shop::inner", "shop::outer::inner", "shop::outer::inner"),
            // A module inside a function: the function's name kept.
            ("shop::m::get", "shop::outer::m::get", "shop::outer::m::get"),
            (
                "shop::m::get",
                "shop::outer::{{closure}}::m::get",
                "shop::outer::m::get",
            ),
            // … in an `async` body (an `async fn`'s, a `#[tokio::test]`'s).
            (
                "shop::inner",
                "shop::outer::{{closure}}::inner",
                "shop::outer::inner",
            ),
            (
                "shop::inner",
                "shop::outer::{{closure}}::{{closure}}::inner",
                "shop::outer::inner",
            ),
            // ... in an `async` method's body: the method's own path first.
            (
                "shop::call",
                "shop::Client::get::{{closure}}::call",
                "shop::Client::get::call",
            ),
            (
                "shop::call",
                "<shop::model::Svc as shop::api::Api>::get::{{closure}}::call",
                "shop::<Svc as Api>::get::call",
            ),
            (
                "shop::svc::call",
                "shop::svc::<impl shop::model::Client>::get::{{closure}}::call",
                "shop::svc::Client::get::call",
            ),
            // Raw identifiers: `module_path!()` and `stringify!` keep `r#`, type names do not.
            (
                "shop::r#async::r#match",
                "shop::async::<impl shop::Client>::match",
                "shop::async::Client::match",
            ),
            (
                "shop::r#async::r#type",
                "shop::async::type",
                "shop::async::type",
            ),
            // A blanket impl: the type parameter is `_`.
            (
                "shop::charge",
                "<_ as shop::Api>::charge",
                "shop::<_ as Api>::charge",
            ),
        ];
        for (module_and_name, located, want) in cases {
            assert_eq!(from_type_name(module_and_name, located), want, "{located}");
        }
        // What `resilience list` reads from the source (token strings, spaced).
        assert_eq!(
            method_path("shop::pg", "Client < 'a >", None, "charge"),
            "shop::pg::Client::charge"
        );
        assert_eq!(
            method_path("shop::pg", "& 'a super :: Client < T >", None, "charge"),
            "shop::pg::Client::charge"
        );
        assert_eq!(
            method_path(
                "shop::svc",
                "Svc",
                Some("crate :: api :: Api < u8 >"),
                "get"
            ),
            "shop::svc::<Svc as Api>::get"
        );
    }
}
