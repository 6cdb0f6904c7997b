//! The pipeline of one expansion, failing soft: on any error the user's function is emitted
//! unchanged, followed by every error found, so the rest of the crate and the IDE keep working.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens as _;

use crate::attr::{Entry, parse_args};
use crate::config::{self, Config};
use crate::diag::Diags;
use crate::expand::{Plan, expand};
use crate::infer::infer_method;
use crate::model::Settings;
use crate::validate::{
    check_declared_method, check_function, check_keyed_body_sends, check_policy, effective_method,
    resolve_shared,
};

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
                _ => syn::Error::new(
                    e.span(),
                    "#[resilient] goes on an async fn returning a Result",
                ),
            };
            return fail_soft(item, e);
        }
    };
    match build(args, &func) {
        Ok(ts) => ts,
        Err(e) => fail_soft(item, e),
    }
}

fn fail_soft(item: TokenStream, e: syn::Error) -> TokenStream {
    let mut out = item;
    out.extend(e.into_compile_error());
    out
}

/// Everything up to the generated code; every error is collected before giving up.
fn build(args: TokenStream, func: &syn::ItemFn) -> syn::Result<TokenStream> {
    let entries = parse_args(args)?;
    let mut diags = Diags::default();
    let fn_span = func.sig.ident.span();

    // Inline-only keys, and duplicates.
    let mut policy: Option<(String, Span)> = None;
    let mut krate: Option<TokenStream> = None;
    let mut config_rel: Option<(String, Span)> = None;
    let mut inline: Vec<&Entry> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for e in &entries {
        let key = e.key.to_string();
        let key = key.trim_start_matches("r#").to_owned();
        if seen.contains(&key) {
            diags.push(e.key.span(), format!("`{key}` is given twice"));
            continue;
        }
        seen.push(key.clone());
        match key.as_str() {
            "policy" => match e.value.as_text() {
                Some(n) => policy = Some((n.to_owned(), e.span)),
                None => diags.push(e.span, "`policy` takes the name of a [policies.NAME] section: policy = \"payments\""),
            },
            "crate" => match e.value.as_text().map(syn::parse_str::<syn::Path>) {
                Some(Ok(path)) => krate = Some(path.into_token_stream()),
                _ => diags.push(e.value.origin.span_or(e.span), "`crate` takes a path: crate = \"::my_crate::resilience\""),
            },
            "config" => match &e.value.value {
                crate::value::Value::Str(s) => config_rel = Some((s.clone(), e.span)),
                _ => diags.push(e.span, "`config` takes a path to a policy file, relative to Cargo.toml: config = \"../resilience.toml\""),
            },
            _ => inline.push(e),
        }
    }
    let fallback = policy
        .as_ref()
        .map(|p| p.1)
        .or(config_rel.as_ref().map(|c| c.1))
        .unwrap_or(fn_span);

    // The policy file.
    let source_dir = proc_macro_source_dir();
    let config: Option<std::rc::Rc<Config>> = match config::locate(
        config_rel.as_ref().map(|c| c.0.as_str()),
        source_dir.as_deref(),
    ) {
        Ok(Some((path, display))) => match config::load(&path, &display) {
            Ok(c) => Some(c),
            Err(m) => {
                diags.push(fallback, m);
                None
            }
        },
        Ok(None) => None,
        Err(m) => {
            diags.push(config_rel.as_ref().map_or(fallback, |c| c.1), m);
            None
        }
    };
    if let Some(c) = &config {
        for m in &c.errors {
            diags.push(fallback, m);
        }
    }

    // Layers: built-in < [defaults] < [policies.NAME] < inline.
    let mut settings = Settings::default();
    if let Some(d) = config.as_ref().and_then(|c| c.defaults.as_ref()) {
        for (k, v) in &d.entries {
            settings.apply(&mut diags, k, v, fallback);
        }
    }
    if let Some((name, span)) = &policy {
        match config.as_ref().map(|c| (c, c.policies.get(name))) {
            Some((_, Some(t))) => {
                for (k, v) in &t.entries {
                    settings.apply(&mut diags, k, v, fallback);
                }
            }
            Some((c, None)) if c.unparsed => {}
            Some((c, None)) => {
                let known: Vec<&str> = c.policies.keys().map(String::as_str).collect();
                let hint = crate::value::did_you_mean(name, &known)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                diags.push(*span, format!("unknown policy `{name}`: {} has no [policies.{name}]{hint}", c.display));
            }
            None => diags.push(
                *span,
                format!("unknown policy `{name}`: no resilience.toml beside Cargo.toml defines [policies.{name}]"),
            ),
        }
    }
    for e in &inline {
        let key = e.key.to_string();
        settings.apply(&mut diags, key.trim_start_matches("r#"), &e.value, e.span);
    }

    let inferred = infer_method(func.block.to_token_stream());
    let method = effective_method(&settings, inferred.as_ref());
    check_declared_method(&mut diags, &settings, inferred.as_ref(), fallback);
    check_function(&mut diags, func, &settings);
    check_policy(&mut diags, &settings, method.as_ref(), fallback);
    check_keyed_body_sends(&mut diags, func, &settings);
    let shared = resolve_shared(&mut diags, &settings, config.as_deref(), fallback);

    if let Some(e) = diags.into_error() {
        return Err(e);
    }
    let krate = krate.unwrap_or_else(|| quote::quote!(::resilience_runtime));
    let plan = Plan {
        func,
        settings: &settings,
        method: method.map(|m| m.value),
        shared: &shared,
        krate,
        policy_name: policy.map(|p| p.0),
        config_path: config.as_ref().map(|c| c.path.display().to_string()),
    };
    Ok(expand(&plan))
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
    }
}
