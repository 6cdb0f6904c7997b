//! The pipeline of one expansion, failing soft: on any error the user's function is emitted
//! unchanged, followed by every error found, so the rest of the crate and the IDE keep working.

use proc_macro2::TokenStream;

use crate::expand::{Plan, expand};

pub(crate) fn resilient(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            // A method declared in a trait, without a body.
            let e = match syn::parse2::<syn::TraitItemFn>(item.clone()) {
                Ok(t) if t.default.is_none() => syn::Error::new(
                    t.sig.ident.span(),
                    "#[resilient] needs the function's body, and a trait's declaration has none\n\
                     help: put #[resilient] on the method in each `impl` block instead",
                ),
                // A function the parser could not read (a syntax error in its body while it
                // is being written): the parser's own message, where it stopped, not a claim
                // that this is no function.
                _ if syn::parse2::<syn::Item>(item.clone()).is_err() => syn::Error::new(
                    e.span(),
                    format!("#[resilient] could not read this function: {e}"),
                ),
                _ => syn::Error::new(
                    e.span(),
                    "#[resilient] goes on an async fn returning a Result",
                ),
            };
            return fail_soft(item, e);
        }
    };
    // Written twice (once as `resilient`, once by its path, say): the second would expand on
    // the first's output, one retry loop inside the other under one function name.
    if let Some(again) = func.attrs.iter().find(|a| {
        a.path()
            .segments
            .last()
            .is_some_and(|s| s.ident == "resilient")
    }) {
        let e = syn::Error::new_spanned(
            again,
            "#[resilient] is given twice on this function: each would retry around the other\n\
             help: put every key in one attribute",
        );
        return fail_soft(item, e);
    }
    // Written twice, the macro imported under another name too (`use … resilient as retry;`):
    // the attribute above expanded first, and its output is this body.
    if holds_an_expansion(quote::ToTokens::to_token_stream(&func.block)) {
        let e = syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[resilient] is given twice on this function (once under another name): each would retry around the other\n\
             help: put every key in one attribute",
        );
        return fail_soft(item, e);
    }
    match build(args, &func) {
        Ok(ts) => ts,
        Err(e) => fail_soft(item, e),
    }
}

/// Whether `ts` holds what an expansion of this attribute writes (its state's name).
fn holds_an_expansion(ts: proc_macro2::TokenStream) -> bool {
    ts.into_iter().any(|t| match t {
        proc_macro2::TokenTree::Ident(i) => i == "__RESILIENCE_STATE",
        proc_macro2::TokenTree::Group(g) => holds_an_expansion(g.stream()),
        _ => false,
    })
}

fn fail_soft(item: TokenStream, e: syn::Error) -> TokenStream {
    let mut out = item;
    out.extend(e.into_compile_error());
    out
}

/// Analysis (in `resilience-policy`), then the generated code.
fn build(args: TokenStream, func: &syn::ItemFn) -> syn::Result<TokenStream> {
    let source_dir = proc_macro_source_dir();
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    let written = args.clone();
    let a = resilience_policy::analysis::analyze(
        args,
        func,
        manifest_dir.as_deref(),
        source_dir.as_deref(),
    )?;
    let mut packed = a.packed();
    // An inferred method less safe than GET: whether every request of it the body may send is
    // one the runtime sees (an attempt seen sending only its token GET then did not send it).
    packed.sends_seen = a.settings.method.is_none()
        && !packed.method.is_safe()
        && crate::stamp::sends_all_seen(&func.block, &crate::expand::client_names(&func.sig));
    let safe_method = packed.method.is_safe();
    let packed = packed.pack();
    let plan = Plan {
        packed,
        safe_method,
        func,
        settings: &a.settings,
        shared: &a.shared,
        krate: a.krate,
        config_path: a.config_path,
        manifest_path: a.manifest_path,
        key_tokens: match &a.settings.idempotency_key.value {
            resilience_policy::model::KeyModel::Param(path)
                if a.settings.idempotency_key.origin.is_inline() =>
            {
                key_as_written(written, path)
            }
            _ => None,
        },
    };
    Ok(expand(&plan))
}

/// The tokens of an inline `idempotency_key = order.id`, as written: each keeps its own span,
/// so the compiler's error about a field that does not exist (`order.idd`) points at the
/// field, not at the path's first word. `None` when they do not spell `path`.
fn key_as_written(args: TokenStream, path: &str) -> Option<TokenStream> {
    use proc_macro2::TokenTree;
    use syn::ext::IdentExt as _;
    let mut tokens = args.into_iter();
    while let Some(tt) = tokens.next() {
        let TokenTree::Ident(id) = &tt else { continue };
        if id != "idempotency_key" {
            continue;
        }
        match tokens.next() {
            Some(TokenTree::Punct(p)) if p.as_char() == '=' => {}
            _ => return None,
        }
        let value: TokenStream = tokens
            .by_ref()
            .take_while(|t| !matches!(t, TokenTree::Punct(p) if p.as_char() == ','))
            .collect();
        let spelled: String = value
            .clone()
            .into_iter()
            .map(|t| match t {
                TokenTree::Ident(i) => i.unraw().to_string(),
                t => t.to_string(),
            })
            .collect();
        return (spelled == path).then_some(value);
    }
    None
}

pub(crate) fn proc_macro_source_dir() -> Option<std::path::PathBuf> {
    // Only meaningful inside a real macro invocation; unit tests run outside one.
    if !proc_macro::is_available() {
        return None;
    }
    proc_macro::Span::call_site()
        .local_file()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
}

/// The rule book's boundary cases, through the whole macro: each value is accepted here exactly
/// when the runtime accepts it (`resilience-runtime/tests/rule_book.rs` runs the same table).
#[cfg(test)]
mod boundaries {
    use quote::quote;
    use resilience_spec::cases;

    fn accepted(args: proc_macro2::TokenStream) -> bool {
        let item = quote! {
            async fn f(c: &reqwest::Client) -> Result<u16, Error> {
                Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
            }
        };
        !super::resilient(args, item)
            .to_string()
            .contains("compile_error")
    }

    /// What the macro says of `args` on the plain function of [`accepted`].
    fn said(args: proc_macro2::TokenStream) -> String {
        let item = quote! {
            async fn f(c: &reqwest::Client) -> Result<u16, Error> {
                Ok(c.get("http://127.0.0.1:1/").send().await?.status().as_u16())
            }
        };
        super::resilient(args, item).to_string()
    }

    /// `Cargo.toml` is read by the compiler through the expansion, so that choosing another
    /// policy file in `[package.metadata.resilience] config` rebuilds the crate (cargo does not
    /// watch its metadata); a `config` written inline does not depend on it.
    #[test]
    fn the_expansion_tracks_the_manifest_that_may_name_the_policy_file() {
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let tracked = format!("include_str ! ({:?})", manifest.display().to_string());
        let out = said(quote!(timeout = "1s"));
        assert!(out.contains(&tracked), "{tracked} not in {out}");
        let file = std::env::temp_dir().join(format!("track-{}.toml", std::process::id()));
        std::fs::write(&file, "[defaults]\ntimeout = \"2s\"\n").unwrap();
        let path = file.display().to_string();
        let out = said(quote!(config = #path));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(out.matches("include_str !").count(), 1, "{out}");
        assert!(out.contains(&format!("include_str ! ({path:?})")), "{out}");
    }

    #[test]
    fn a_quoted_status_in_retry_on_is_told_to_lose_its_quotes() {
        let out = said(quote!(retry_on = [connect, "503"]));
        assert!(
            out.contains(
                "unknown failure class `503`; a status is a number: write 503, without quotes"
            ),
            "{out}"
        );
        let out = said(quote!(retry_on = [conect]));
        assert!(out.contains("did you mean `connect`?"), "{out}");
    }

    fn lit_f(x: f64) -> proc_macro2::Literal {
        proc_macro2::Literal::f64_unsuffixed(x)
    }

    #[test]
    fn the_macro_agrees_with_the_rule_book() {
        for (n, ok) in cases::MAX_ATTEMPTS {
            let n = proc_macro2::Literal::u32_unsuffixed(*n);
            assert_eq!(
                accepted(quote!(max_attempts = #n)),
                *ok,
                "max_attempts = {n}"
            );
        }
        for (x, ok) in cases::BUDGET_RATIO {
            let v = lit_f(*x);
            assert_eq!(accepted(quote!(budget(ratio = #v))), *ok, "ratio = {x}");
        }
        for (n, ok) in cases::BUDGET_MIN_PER_SEC {
            let v = proc_macro2::Literal::u64_unsuffixed(*n);
            assert_eq!(
                accepted(quote!(budget(min_per_sec = #v))),
                *ok,
                "min_per_sec = {n}"
            );
        }
        for (n, ok) in cases::BULKHEAD_MAX_CONCURRENT {
            let v = proc_macro2::Literal::u64_unsuffixed(*n);
            assert_eq!(
                accepted(quote!(bulkhead(max_concurrent = #v))),
                *ok,
                "max_concurrent = {n}"
            );
        }
        for (n, ok) in cases::BREAKER_WINDOW {
            let v = proc_macro2::Literal::u64_unsuffixed(*n);
            assert_eq!(
                accepted(quote!(breaker(window = #v, min_calls = 1))),
                *ok,
                "window = {n}"
            );
        }
        for (x, ok) in cases::BREAKER_FAILURE_RATE {
            let v = lit_f(*x);
            assert_eq!(
                accepted(quote!(breaker(failure_rate = #v))),
                *ok,
                "failure_rate = {x}"
            );
        }
        for (x, ok) in cases::BACKOFF_MULTIPLIER {
            let v = lit_f(*x);
            assert_eq!(
                accepted(quote!(backoff(multiplier = #v))),
                *ok,
                "multiplier = {x}"
            );
        }
        for (n, ok) in cases::RATE_LIMIT_RATE {
            let v = proc_macro2::Literal::u64_unsuffixed(*n);
            assert_eq!(accepted(quote!(rate_limit(rate = #v))), *ok, "rate = {n}");
            assert_eq!(
                accepted(quote!(rate_limit(rate = 1, burst = #v))),
                *ok,
                "burst = {n}"
            );
        }
        for (n, ok) in cases::CONCURRENCY_LIMIT {
            let v = proc_macro2::Literal::u64_unsuffixed(*n);
            assert_eq!(
                accepted(quote!(concurrency_limit(latency = "1s", min = 1, initial = 1, max = #v))),
                *ok,
                "max = {n}"
            );
        }
        for (min, initial, max, ok) in cases::CONCURRENCY_ORDER {
            let (a, b, c) = (
                proc_macro2::Literal::u32_unsuffixed(*min),
                proc_macro2::Literal::u32_unsuffixed(*initial),
                proc_macro2::Literal::u32_unsuffixed(*max),
            );
            assert_eq!(
                accepted(
                    quote!(concurrency_limit(latency = "1s", min = #a, initial = #b, max = #c))
                ),
                *ok,
                "min = {min}, initial = {initial}, max = {max}"
            );
        }
        for (x, ok) in cases::CONCURRENCY_BACKOFF {
            let v = lit_f(*x);
            assert_eq!(
                accepted(quote!(concurrency_limit(latency = "1s", backoff = #v))),
                *ok,
                "backoff = {x}"
            );
        }
        for (ms, ok) in cases::CONCURRENCY_LATENCY_MS {
            let d = format!("{ms}ms");
            assert_eq!(
                accepted(quote!(concurrency_limit(latency = #d))),
                *ok,
                "latency = {d}"
            );
        }
        for (ms, ok) in cases::CONCURRENCY_MAX_WAIT_MS {
            let d = format!("{ms}ms");
            assert_eq!(
                accepted(quote!(concurrency_limit(latency = "1s", max_wait = #d))),
                *ok,
                "max_wait = {d}"
            );
        }
        assert!(!accepted(quote!(
            bulkhead(max_concurrent = 4),
            concurrency_limit(latency = "1s")
        )));
        for (ms, ok) in cases::BREAKER_WINDOW_FOR_MS {
            let d = format!("{ms}ms");
            assert_eq!(
                accepted(quote!(breaker(window_for = #d))),
                *ok,
                "window_for = {d}"
            );
        }
        for (x, ok) in cases::BREAKER_SLOW_CALL_RATE {
            let v = lit_f(*x);
            assert_eq!(
                accepted(quote!(breaker(slow_call_duration = "1s", slow_call_rate = #v))),
                *ok,
                "slow_call_rate = {x}"
            );
        }
        for (n, ok) in cases::HEDGE_MAX {
            let v = proc_macro2::Literal::u64_unsuffixed(*n);
            assert_eq!(
                accepted(quote!(hedge(delay = "10ms", max = #v))),
                *ok,
                "hedge max = {n}"
            );
        }
        for (ms, ok) in cases::HEDGE_DELAY_MS {
            let d = format!("{ms}ms");
            assert_eq!(
                accepted(quote!(timeout = "30s", hedge(delay = #d, max = 2))),
                *ok,
                "hedge delay = {d}"
            );
        }
        for (ms, ok) in cases::HEDGE_DELAY_UNDER_TIMEOUT_MS {
            let d = format!("{ms}ms");
            assert_eq!(
                accepted(quote!(hedge(delay = #d))),
                *ok,
                "hedge delay = {d} under the default timeout"
            );
        }
        for (ms, ok) in cases::RATE_LIMIT_MAX_WAIT_MS {
            let w = format!("{ms}ms");
            assert_eq!(
                accepted(quote!(rate_limit(rate = 10, max_wait = #w))),
                *ok,
                "max_wait = {w}"
            );
        }
        for (ms, jitter, ok) in cases::CONSTANT_BACKOFF_MS {
            let d = format!("{ms}ms");
            let j = format!("{jitter:?}").to_lowercase();
            assert_eq!(
                accepted(quote!(backoff(kind = "constant", initial = #d, jitter = #j))),
                *ok,
                "constant backoff initial = {d}, jitter = {j}"
            );
        }
    }
}
