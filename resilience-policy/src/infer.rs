//! Infers the HTTP method from the function body's tokens: `.get(`, `.post(`, `Method::PUT`,
//! `.request(Method::PATCH, …)`. Scans raw tokens, so calls inside macros count too. The least
//! safe method found wins.

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};

use crate::model::Method;

#[derive(Debug, Clone)]
pub struct Inferred {
    pub method: Method,
    pub from: String,
    pub span: Span,
}

pub fn infer_method(body: TokenStream) -> Option<Inferred> {
    // A request whose method is a value (`c.request(m, url)`, `Request::new(method, url)`):
    // it may be any method, whatever else the body shows (a `.get(` of a header map's).
    if chosen_at_run_time(body.clone()) {
        return None;
    }
    visible_method(body)
}

/// The least safe method the body's tokens show, whether or not it also chooses one at run
/// time: what a declared method may not be safer than.
pub fn visible_method(body: TokenStream) -> Option<Inferred> {
    let mut best: Option<Inferred> = None;
    scan(body, &mut best);
    best
}

/// Whether `ts` makes a request whose method is not written as `Method::NAME`: a
/// `.request(…, url)` or `Request::new(…, url)` whose first argument is anything else (a
/// parameter, `Method::from_bytes(…)`, a function's answer), macros included.
pub fn chosen_at_run_time(ts: TokenStream) -> bool {
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    tokens.iter().enumerate().any(|(i, tt)| match tt {
        TokenTree::Group(g) => chosen_at_run_time(g.stream()),
        TokenTree::Ident(id) => {
            let after_dot =
                i > 0 && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '.');
            let id = syn::ext::IdentExt::unraw(id);
            let request = (id == "request" && after_dot)
                || (id == "new" && in_path_after(tokens.as_slice(), i, "Request"));
            request
                && matches!(tokens.get(i + 1), Some(TokenTree::Group(g))
                    if g.delimiter() == Delimiter::Parenthesis
                        && several_arguments(g.stream())
                        && !first_argument_names_a_method(g.stream())
                        && !first_argument_is_a_literal(g.stream()))
        }
        _ => false,
    })
}

/// Whether a call's first argument is a literal: `rpc.request("eth_call", params)` names no
/// HTTP method (reqwest's takes a `Method`, which no literal is).
fn first_argument_is_a_literal(args: TokenStream) -> bool {
    matches!(args.into_iter().next(), Some(TokenTree::Literal(_)))
}

/// Whether a call's first argument is a method written out: `Method::POST`,
/// `reqwest::Method::POST`, `http::Method::POST`.
fn first_argument_names_a_method(args: TokenStream) -> bool {
    let first: Vec<TokenTree> = args
        .into_iter()
        .take_while(|t| !matches!(t, TokenTree::Punct(p) if p.as_char() == ','))
        .collect();
    let n = first.len();
    n >= 4
        && method_path_at(&first, n - 4).is_some()
        && first[..n - 4].iter().all(|t| match t {
            TokenTree::Ident(_) => true,
            TokenTree::Punct(p) => p.as_char() == ':',
            _ => false,
        })
}

fn consider(best: &mut Option<Inferred>, found: Inferred) {
    if best
        .as_ref()
        .is_none_or(|b| found.method.risk() > b.method.risk())
    {
        *best = Some(found);
    }
}

fn scan(ts: TokenStream, best: &mut Option<Inferred>) {
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    for (i, tt) in tokens.iter().enumerate() {
        match tt {
            TokenTree::Group(g) => scan(g.stream(), best),
            TokenTree::Ident(_) => scan_one(&tokens, i, best),
            _ => {}
        }
    }
}

/// What the identifier `tokens[i]` shows of a method, considered for `best`.
fn scan_one(tokens: &[TokenTree], i: usize, best: &mut Option<Inferred>) {
    let TokenTree::Ident(id) = &tokens[i] else {
        return;
    };
    // `c.r#post(u)` is `.post(`.
    let name = syn::ext::IdentExt::unraw(id).to_string();
    // `.post(`, `.post::<&str>(`
    let after_dot = i > 0 && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '.');
    let args = call_args(tokens, i);
    // reqwest's builders take one argument, the URL: a `.put(key, value)` is a cache's, a
    // `.get()` a cell's.
    let one_arg = args.is_some_and(|g| !g.stream().is_empty() && !several_arguments(g.stream()));
    let builder = |name: &str| match name {
        "get" => Some(Method::Get),
        "head" => Some(Method::Head),
        "post" => Some(Method::Post),
        "put" => Some(Method::Put),
        "patch" => Some(Method::Patch),
        "delete" => Some(Method::Delete),
        _ => None,
    };
    if after_dot
        && one_arg
        && let Some(method) = builder(&name)
    {
        consider(
            best,
            Inferred {
                method,
                from: format!(".{name}("),
                span: id.span(),
            },
        );
    }
    // `Client::post(&c, url)`: the builder called as a path, the client its first argument.
    if in_path_after(tokens, i, "Client")
        && args.is_some_and(|g| several_arguments(g.stream()))
        && let Some(method) = builder(&name)
    {
        consider(
            best,
            Inferred {
                method,
                from: format!("Client::{name}("),
                span: id.span(),
            },
        );
    }
    // `.request("POST".parse()?, url)`: a method written as a string.
    if after_dot
        && name == "request"
        && let Some(g) = args
        && let Some(TokenTree::Literal(lit)) = g.stream().into_iter().next()
        && let Some(method) = lit
            .to_string()
            .strip_prefix('"')
            .and_then(|l| l.strip_suffix('"'))
            .and_then(|l| Method::parse(&l.to_ascii_uppercase()))
    {
        consider(
            best,
            Inferred {
                method,
                from: format!(".request({lit}"),
                span: lit.span(),
            },
        );
    }
    // `reqwest::get(url)`: reqwest's own one-off GET.
    if is_reqwest_get(tokens, i) {
        consider(
            best,
            Inferred {
                method: Method::Get,
                from: "reqwest::get(".into(),
                span: id.span(),
            },
        );
    }
    // `Method::POST`
    if let Some((method, m)) = method_path_at(tokens, i) {
        consider(
            best,
            Inferred {
                method,
                from: format!("Method::{m}"),
                span: m.span(),
            },
        );
    }
}

/// The method of `Method::NAME` when `tokens[i]` is its `Method` (the name in capitals, as
/// the constants are written), with the name's token.
fn method_path_at(tokens: &[TokenTree], i: usize) -> Option<(Method, &proc_macro2::Ident)> {
    let punct = |k: usize| matches!(tokens.get(k), Some(TokenTree::Punct(p)) if p.as_char() == ':');
    if matches!(&tokens[i], TokenTree::Ident(id) if id == "Method")
        && punct(i + 1)
        && punct(i + 2)
        && let Some(TokenTree::Ident(m)) = tokens.get(i + 3)
        && m.to_string().chars().all(|c| c.is_ascii_uppercase())
    {
        Some((Method::parse(&m.to_string())?, m))
    } else {
        None
    }
}

/// Whether a call's argument tokens are plainly two arguments or more: a comma at the top
/// level, outside `<…>` (a turbofish's `::<A, B>`), followed by more tokens. When unsure
/// (`a < b, c`), one: a request method counted where there is none is the safe mistake.
fn several_arguments(args: TokenStream) -> bool {
    let mut angle = 0usize;
    let mut prev: Option<char> = None;
    let mut comma = false;
    for tt in args {
        if comma {
            return true;
        }
        match &tt {
            TokenTree::Punct(p) => {
                match p.as_char() {
                    '<' => angle += 1,
                    // Not the `>` of `->` or `=>`.
                    '>' if !matches!(prev, Some('-' | '=')) => angle = angle.saturating_sub(1),
                    ',' if angle == 0 => comma = true,
                    _ => {}
                }
                prev = Some(p.as_char());
            }
            _ => prev = None,
        }
    }
    false
}

/// How many places in `ts` show a method less safe than GET, as [`infer_method`] reads them
/// (`.post(`, `.delete(`, `Method::PATCH`), macros included.
pub fn unsafe_evidence(ts: TokenStream) -> usize {
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    let mut n = 0;
    for (i, tt) in tokens.iter().enumerate() {
        match tt {
            TokenTree::Group(g) => n += unsafe_evidence(g.stream()),
            TokenTree::Ident(_) => {
                let mut one = None;
                scan_one(&tokens, i, &mut one);
                n += usize::from(one.is_some_and(|f| !f.method.is_safe()));
            }
            _ => {}
        }
    }
    n
}

/// The parenthesized arguments of a call of the identifier `tokens[i]`: `(` next, or after a
/// turbofish (`post::<&str>(…)`).
fn call_args(tokens: &[TokenTree], i: usize) -> Option<&proc_macro2::Group> {
    fn paren(t: Option<&TokenTree>) -> Option<&proc_macro2::Group> {
        match t {
            Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis => Some(g),
            _ => None,
        }
    }
    if let Some(g) = paren(tokens.get(i + 1)) {
        return Some(g);
    }
    let punct =
        |k: usize, c: char| matches!(tokens.get(k), Some(TokenTree::Punct(p)) if p.as_char() == c);
    if !(punct(i + 1, ':') && punct(i + 2, ':') && punct(i + 3, '<')) {
        return None;
    }
    let mut depth = 0usize;
    for (k, t) in tokens.iter().enumerate().skip(i + 3) {
        match t {
            TokenTree::Punct(p) if p.as_char() == '<' => depth += 1,
            TokenTree::Punct(p) if p.as_char() == '>' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return paren(tokens.get(k + 1));
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether `tokens[i]` is the `get` of `reqwest::get(` (or `reqwest::get::<&str>(`).
fn is_reqwest_get(tokens: &[TokenTree], i: usize) -> bool {
    matches!(&tokens[i], TokenTree::Ident(id) if id == "get")
        && called(tokens, i)
        && in_path_after(tokens, i, "reqwest")
}

/// Whether `tokens[i]` is the `send` of `RequestBuilder::send(` (`reqwest::RequestBuilder::
/// send(rb)`, a send written as a path).
fn is_path_send(tokens: &[TokenTree], i: usize) -> bool {
    matches!(&tokens[i], TokenTree::Ident(id) if id == "send")
        && called(tokens, i)
        && in_path_after(tokens, i, "RequestBuilder")
}

/// Whether `tokens[i]` is the `execute` of `Client::execute(` (`reqwest::Client::execute(&c,
/// req)`, an execute written as a path).
fn is_path_execute(tokens: &[TokenTree], i: usize) -> bool {
    matches!(&tokens[i], TokenTree::Ident(id) if id == "execute")
        && (in_path_after(tokens, i, "Client") || in_path_after(tokens, i, "ClientWithMiddleware"))
        // Two arguments, the client and the request (not a database client's
        // `Client::execute(&c, query, params)`).
        && matches!(tokens.get(i + 1), Some(TokenTree::Group(g))
            if g.delimiter() == Delimiter::Parenthesis
                && g.stream().into_iter().filter(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')).count() == 1)
}

/// Whether `tokens[i - 3..i]` is `segment ::`.
fn in_path_after(tokens: &[TokenTree], i: usize, segment: &str) -> bool {
    i >= 3
        && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == ':')
        && matches!(&tokens[i - 2], TokenTree::Punct(p) if p.as_char() == ':')
        && matches!(&tokens[i - 3], TokenTree::Ident(id) if id == segment)
}

/// Whether the identifier `tokens[i]` is called: `(` next, or a turbofish `::<…>` then `(`.
fn called(tokens: &[TokenTree], i: usize) -> bool {
    call_args(tokens, i).is_some()
}

/// Whether the body's tokens show any request being sent, macros included: `.send(`,
/// `.execute(`, `.resilient(`, `reqwest::get(`.
pub fn shows_a_request(ts: TokenStream) -> bool {
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    tokens.iter().enumerate().any(|(i, tt)| match tt {
        TokenTree::Group(g) => shows_a_request(g.stream()),
        TokenTree::Ident(id) => {
            let after_dot =
                i > 0 && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '.');
            let call = matches!(tokens.get(i + 1), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis);
            (after_dot && call && matches!(id.to_string().as_str(), "send" | "execute" | "resilient"))
                || is_reqwest_get(&tokens, i)
                || is_path_send(&tokens, i)
                || is_path_execute(&tokens, i)
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn m(ts: TokenStream) -> Option<Method> {
        infer_method(ts).map(|i| i.method)
    }

    #[test]
    fn an_execute_written_as_a_path_shows_a_request() {
        assert!(shows_a_request(quote!({
            reqwest::Client::execute(&c, req).await
        })));
        assert!(!shows_a_request(quote!({
            tokio_postgres::Client::execute(&c, "UPDATE t SET a = $1", &[&a]).await
        })));
    }

    #[test]
    fn counts_the_places_that_show_an_unsafe_method() {
        assert_eq!(
            unsafe_evidence(quote!({
                c.get(a).send().await;
                c.head(b).send().await
            })),
            0
        );
        assert_eq!(
            unsafe_evidence(quote!({
                c.post(a).send().await;
                c.request(Method::DELETE, b);
                join!(c.patch(x), c.get(y));
                let m = Method::GET;
            })),
            3
        );
    }

    /// A POST written with a turbofish, as a path call on the client, or with its method as
    /// a string, beside a header map's `.get(`: the POST, not a GET (once the GET, and the
    /// default retries compiled).
    #[test]
    fn finds_a_post_however_it_is_written() {
        for ts in [
            quote!({
                let t = h.get("x");
                c.post::<&str>(u).send().await
            }),
            quote!({
                let t = h.get("x");
                reqwest::Client::post(&c, u).send().await
            }),
            quote!({
                let t = h.get("x");
                Client::post(c, u).send().await
            }),
            quote!({
                let t = h.get("x");
                c.request("POST".parse().unwrap(), u).send().await
            }),
            quote!({
                let t = h.get("x");
                c.request("post".parse()?, u).send().await
            }),
        ] {
            assert_eq!(m(ts.clone()), Some(Method::Post), "{ts}");
        }
        // A JSON-RPC client's `request("eth_call", …)` names no HTTP method.
        assert_eq!(
            m(quote!({
                let t = h.get("x");
                rpc.request("eth_call", p).await
            })),
            Some(Method::Get)
        );
        assert_eq!(
            m(quote!({ c.get::<&str>(u).send().await })),
            Some(Method::Get)
        );
    }

    #[test]
    fn finds_builder_calls_and_constants() {
        assert_eq!(m(quote!({ c.get(url).send().await })), Some(Method::Get));
        assert_eq!(
            m(quote!({ c.post(url).json(&x).send().await })),
            Some(Method::Post)
        );
        assert_eq!(
            m(quote!({ c.request(reqwest::Method::PATCH, url) })),
            Some(Method::Patch)
        );
        assert_eq!(
            m(quote!({
                let m = Method::DELETE;
            })),
            Some(Method::Delete)
        );
        assert_eq!(
            m(quote!({ format!("{}", c.put(u).send().await) })),
            Some(Method::Put)
        );
        assert_eq!(
            m(quote!({ reqwest::get(url).await?.text().await })),
            Some(Method::Get)
        );
        assert_eq!(m(quote!({ other::get(url) })), None);
        assert_eq!(
            m(quote!({ reqwest::get::<&str>(url).await })),
            Some(Method::Get)
        );
        // Two arguments: not reqwest's builder (an LRU cache's `put`, a store's `delete`).
        assert_eq!(m(quote!({ cache.put(key, value) })), None);
        assert_eq!(m(quote!({ store.delete(ns, id).await })), None);
        // Awaited at once, one argument: a typed API client's own `post` (an HTTP POST the
        // runtime does not see) as much as a store's; counted, the safe mistake.
        assert_eq!(m(quote!({ api.post(order).await? })), Some(Method::Post));
        // One argument, however it is written.
        assert_eq!(m(quote!({ c.post(url,).send() })), Some(Method::Post));
        assert_eq!(
            m(quote!({ c.post(make::<A, B>(x)).send() })),
            Some(Method::Post)
        );
        assert_eq!(m(quote!({ cache.put(a < b, c) })), Some(Method::Put));
        assert_eq!(m(quote!({ x + 1 })), None);
    }

    #[test]
    fn least_safe_wins() {
        assert_eq!(
            m(quote!({
                c.get(a);
                c.post(b);
                c.put(c)
            })),
            Some(Method::Post)
        );
        assert_eq!(
            m(quote!({
                map.get(&k);
                c.delete(u)
            })),
            Some(Method::Delete)
        );
    }

    #[test]
    fn requests_are_seen_in_tokens() {
        assert!(shows_a_request(quote!({ c.get(u).send().await })));
        assert!(shows_a_request(quote!({
            helper(c.get(u).resilient()).await
        })));
        assert!(shows_a_request(quote!({ m!(c.execute(r)) })));
        assert!(shows_a_request(quote!({ ::reqwest::get(u).await })));
        assert!(shows_a_request(quote!({ reqwest::get::<&str>(u).await })));
        assert!(shows_a_request(quote!({
            reqwest::RequestBuilder::send(c.post(u)).await
        })));
        assert!(!shows_a_request(quote!({ Sender::send(tx, v) })));
        assert!(!shows_a_request(quote!({
            charge_via_helper(&c, order).await
        })));
        assert!(!shows_a_request(quote!({
            let send = 1;
            send
        })));
    }

    #[test]
    fn ignores_lookalikes() {
        assert_eq!(
            m(quote!({
                let post = 1;
                get(x);
                self.post
            })),
            None
        );
        assert_eq!(m(quote!({ Method::from_bytes(b) })), None);
    }

    /// A method chosen at run time may be any: what else the body shows (a header map's
    /// `.get(`, even a `.post(`) does not tell it.
    #[test]
    fn a_method_given_as_a_value_is_not_inferred() {
        assert_eq!(
            m(quote!({
                let _op = headers.get("x-op");
                c.request(m, url).send().await
            })),
            None
        );
        assert_eq!(
            m(quote!({
                c.request(Method::from_bytes(b"PURGE").unwrap(), url).send()
            })),
            None
        );
        assert_eq!(
            m(quote!({ c.execute(reqwest::Request::new(method, url)) })),
            None
        );
        assert_eq!(
            m(quote!({
                c.post(u);
                c.request(chosen(u), u).send()
            })),
            None
        );
        // Written out, it is read.
        assert_eq!(
            m(quote!({ c.request(reqwest::Method::PATCH, url).send() })),
            Some(Method::Patch)
        );
        assert_eq!(
            m(quote!({ c.execute(Request::new(Method::PUT, url)) })),
            Some(Method::Put)
        );
        // Nor is a `.get()` of none (a `OnceLock`'s).
        assert_eq!(
            m(quote!({
                TOKEN.get();
                send(c).await
            })),
            None
        );
        // Nor a `.request(` whose first argument is a literal (a JSON-RPC client's).
        assert_eq!(
            m(quote!({
                rpc.request("eth_call", params);
                c.get(u).send()
            })),
            Some(Method::Get)
        );
        // A `.request(` of one argument is not reqwest's.
        assert_eq!(
            m(quote!({
                pool.request(id);
                c.get(u).send()
            })),
            Some(Method::Get)
        );
    }
}
