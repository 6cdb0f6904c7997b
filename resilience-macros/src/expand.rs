//! Generates the wrapper. Parses nothing: takes the validated model.
//!
//! The signature is kept as written; only the body is replaced by a loop that drives a runtime
//! session, re-running the original body (with fresh clones of by-value arguments) per attempt.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned as _;

use resilience_policy::model::{BackoffKind, Jitter, KeyModel, Method, Settings};
use resilience_policy::validate::{RateStoreM, Shared};

pub(crate) struct Plan<'a> {
    pub func: &'a syn::ItemFn,
    pub settings: &'a Settings,
    pub method: Option<Method>,
    pub shared: &'a Shared,
    pub krate: TokenStream,
    pub policy_name: Option<String>,
    pub config_path: Option<String>,
}

/// `d` as a `::core::time::Duration` constant expression.
pub(crate) fn dur(d: Duration) -> TokenStream {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    quote!(::core::time::Duration::new(#secs, #nanos))
}

pub(crate) fn expand(plan: &Plan<'_>) -> TokenStream {
    let f = plan.func;
    let s = plan.settings;
    let k = &plan.krate;
    let p = quote!(#k::__private);
    let attrs = &f.attrs;
    let vis = &f.vis;
    let sig = &f.sig;
    let ident = &sig.ident;
    // Every request the body sends goes through the attempt's stamping, by type.
    let mut block = (*f.block).clone();
    crate::stamp::rewrite(&mut block, &p);
    let stmts = &block.stmts;
    let prelude = crate::stamp::prelude(&p);

    let method = match plan.method {
        None => quote!(#p::Method::Other),
        Some(m) => {
            let v = match m {
                Method::Get => quote!(Get),
                Method::Head => quote!(Head),
                Method::Options => quote!(Options),
                Method::Trace => quote!(Trace),
                Method::Put => quote!(Put),
                Method::Delete => quote!(Delete),
                Method::Post => quote!(Post),
                Method::Patch => quote!(Patch),
                _ => quote!(Other),
            };
            quote!(#p::Method::#v)
        }
    };
    let timeout = dur(s.timeout.value);
    let deadline = dur(s.deadline.value);
    let max_attempts = s.max_attempts.value;
    let max_retry_after = dur(s.max_retry_after.value);
    let b = &s.backoff;
    let kind = match b.kind.value {
        BackoffKind::Exponential => quote!(Exponential),
        BackoffKind::Constant => quote!(Constant),
    };
    let jitter = match b.jitter.value {
        Jitter::Full => quote!(Full),
        Jitter::Equal => quote!(Equal),
        Jitter::Decorrelated => quote!(Decorrelated),
        Jitter::None => quote!(None),
    };
    let (initial, max, mult) = (
        dur(b.initial.value),
        dur(b.max.value),
        b.multiplier_milli.value,
    );
    let retry = s.retry_parts();
    let (connect, reset, timeout_on, statuses) =
        (retry.connect, retry.reset, retry.timeout, retry.statuses);
    let key_source = match &s.idempotency_key.value {
        KeyModel::None => quote!(None),
        KeyModel::Auto => quote!(Auto),
        KeyModel::Param(_) => quote!(Param),
    };
    let idempotent = s.idempotent.value;

    let function = quote!(::core::concat!(
        ::core::module_path!(),
        "::",
        ::core::stringify!(#ident)
    ));
    // Inline only: the runtime names the policy after the function's full path.
    let name = match &plan.policy_name {
        Some(n) => quote!(#n),
        None => quote!(""),
    };
    let budget = match &plan.shared.budget {
        None => quote!(::core::option::Option::None),
        Some((n, m)) => {
            let (ratio, floor) = (m.ratio, m.min_per_sec);
            quote!(::core::option::Option::Some((#n, #p::BudgetSpec { ratio: #ratio, min_per_sec: #floor })))
        }
    };
    let breaker = match &plan.shared.breaker {
        None => quote!(::core::option::Option::None),
        Some((n, m)) => {
            let (rate, min_calls, window, half) =
                (m.failure_rate, m.min_calls, m.window, m.half_open_calls);
            let open_for = dur(m.open_for);
            let (window_for, slow, slow_rate) = (
                dur(m.window_for),
                dur(m.slow_call_duration),
                m.slow_call_rate,
            );
            quote!(::core::option::Option::Some((#n, #p::BreakerSpec {
                failure_rate: #rate, min_calls: #min_calls, window: #window, open_for: #open_for, half_open_calls: #half,
                window_for: #window_for, slow_call_duration: #slow, slow_call_rate: #slow_rate,
            })))
        }
    };
    let bulkhead = match &plan.shared.bulkhead {
        None => quote!(::core::option::Option::None),
        Some((n, m)) => {
            let (max_c, wait) = (m.max_concurrent, dur(m.max_wait));
            quote!(::core::option::Option::Some((#n, #p::BulkheadSpec { max_concurrent: #max_c, max_wait: #wait })))
        }
    };
    let rate_limit = match &plan.shared.rate_limit {
        None => quote!(::core::option::Option::None),
        Some((n, m)) => {
            let (rate, burst, per, wait) = (m.rate, m.burst, dur(m.per), dur(m.max_wait));
            let store = match m.store {
                RateStoreM::Local => quote!(Local),
                RateStoreM::Redis => quote!(Redis),
            };
            quote!(::core::option::Option::Some((#n, #p::RateLimitSpec {
                rate: #rate, per: #per, burst: #burst, max_wait: #wait, store: #p::RateLimitStore::#store,
            })))
        }
    };
    let concurrency = match &plan.shared.concurrency {
        None => quote!(::core::option::Option::None),
        Some((n, m)) => {
            let (initial, min, max, backoff) = (m.initial, m.min, m.max, m.backoff);
            let (latency, wait) = (dur(m.latency), dur(m.max_wait));
            quote!(::core::option::Option::Some((#n, #p::ConcurrencySpec {
                kind: #p::ConcurrencyKind::Aimd, initial: #initial, min: #min, max: #max,
                latency: #latency, backoff: #backoff, max_wait: #wait,
            })))
        }
    };

    let key_arg = match &s.idempotency_key.value {
        KeyModel::None => quote!(#p::KeyArg::None),
        KeyModel::Auto => quote!(#p::KeyArg::Auto),
        KeyModel::Param(path) => {
            let span = s.idempotency_key.origin.span_or(Span::call_site());
            let expr: TokenStream = path.parse().unwrap_or_default();
            let expr = respan(expr, span);
            quote_spanned!(span=> #p::key_from(&#expr))
        }
    };

    let hedged = s.hedge.value.is_some();
    let hedge = match &s.hedge.value {
        None => quote!(::core::option::Option::None),
        Some(h) => {
            let (delay, max_h) = (dur(h.delay.value), h.max.value);
            quote!(::core::option::Option::Some(#p::Hedge { delay: #delay, max: #max_h }))
        }
    };

    // Fresh clones of by-value arguments for each attempt (none when there is no retry), and
    // for each hedge.
    let mut clones = Vec::new();
    if max_attempts > 1 || hedged || s.fallback.is_some() {
        for input in &sig.inputs {
            if let syn::FnArg::Typed(pt) = input {
                if matches!(&*pt.ty, syn::Type::Reference(_)) {
                    continue;
                }
                if let syn::Pat::Ident(pi) = &*pt.pat {
                    if pi.by_ref.is_some() {
                        continue;
                    }
                    let id = &pi.ident;
                    let mutability = &pi.mutability;
                    let span = pt.span();
                    // A parameter under `#[cfg(…)]` exists only where its cfg holds: so does
                    // its clone.
                    let cfgs = pt
                        .attrs
                        .iter()
                        .filter(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr"));
                    clones.push(quote_spanned! {span=>
                        #(#cfgs)*
                        #[allow(clippy::redundant_clone)]
                        let #mutability #id = ::core::clone::Clone::clone(&#id);
                    });
                }
            }
        }
    }

    // A return edge typed with the declared return type, so `?` and `return` in the body
    // convert into it, and a type error points at the return type, not at the macro.
    let fake_return = match &sig.output {
        syn::ReturnType::Type(_, ty) => {
            let span = ty.span();
            quote_spanned! {span=>
                #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return, clippy::let_unit_value, clippy::empty_loop)]
                if false {
                    let __resilience_fake_return: #ty = loop {};
                    #p::must_return_result(&__resilience_fake_return);
                    return __resilience_fake_return;
                }
            }
        }
        syn::ReturnType::Default => quote!(),
    };

    // Without retries the loop never goes round again: no back edge, so the body may move its
    // by-value arguments (which are then not cloned and need not be `Clone`).
    let on_retry = if max_attempts > 1 {
        quote!(continue)
    } else {
        quote!({})
    };

    // A hedged policy runs the body more than once at a time: a fresh future (with its own
    // clones) for each attempt and hedge.
    let attempt = if hedged {
        quote! {
            let mut __resilience_result = __resilience_session
                .attempt_hedged(|| {
                    #(#clones)*
                    async move {
                        #prelude
                        #fake_return
                        #(#stmts)*
                    }
                })
        }
    } else {
        quote! {
            #(#clones)*
            let mut __resilience_result = __resilience_session
                .attempt(::core::pin::pin!(::core::option::Option::Some(async {
                    #prelude
                    #fake_return
                    #(#stmts)*
                })))
        }
    };

    // The fallback: the same arguments, typed with the function's own return type, so the
    // compiler checks the signature and points at `fallback = …`.
    let fallback_call = s.fallback.as_ref().map(|name| {
        let span = name.origin.span_or(Span::call_site());
        let path: TokenStream = respan(name.value.parse().unwrap_or_default(), span);
        let args = sig.inputs.iter().map(|input| match input {
            syn::FnArg::Receiver(r) => {
                let t = &r.self_token;
                quote!(#t)
            }
            syn::FnArg::Typed(pt) => match &*pt.pat {
                syn::Pat::Ident(pi) => {
                    let id = &pi.ident;
                    quote!(#id)
                }
                other => quote!(#other),
            },
        });
        let ret = match &sig.output {
            syn::ReturnType::Type(_, ty) => quote!(#ty),
            syn::ReturnType::Default => quote!(()),
        };
        quote_spanned! {span=>
            {
                let __resilience_fallback: #ret = #path(#(#args),*).await;
                __resilience_fallback
            }
        }
    });
    let mask = s.fallback_on.value.0;
    let on_start_error = match &fallback_call {
        Some(call) => quote! {
            if #p::fallback_applies(#mask, error.kind()) {
                return #call;
            }
        },
        None => quote!(),
    };
    let (note_replaced, finish) = match &fallback_call {
        Some(call) => (
            quote!(__resilience_replaced = ::core::option::Option::Some(error.kind());),
            quote! {
                if __resilience_result.is_err() {
                    let __resilience_kind = match __resilience_replaced {
                        ::core::option::Option::Some(kind) => kind,
                        ::core::option::Option::None => __resilience_session.final_kind(),
                    };
                    if #p::fallback_applies(#mask, __resilience_kind) {
                        ::core::mem::drop(__resilience_result);
                        return #call;
                    }
                }
            },
        ),
        None => (quote!(), quote!()),
    };
    let replaced_decl = if fallback_call.is_some() {
        quote!(let mut __resilience_replaced: ::core::option::Option<#p::ErrorKind> = ::core::option::Option::None;)
    } else {
        quote!()
    };

    // A bulkhead or concurrency-limit slot or a rate-limit permit may have to be waited for;
    // without any, the session is ready as begun.
    let admit = if plan.shared.bulkhead.is_some()
        || plan.shared.concurrency.is_some()
        || plan.shared.rate_limit.is_some()
    {
        quote! {
            if !__resilience_session.admitted() {
                if let ::core::result::Result::Err(error) = __resilience_session.admit().await {
                    #on_start_error
                    return ::core::result::Result::Err(::core::convert::From::from(error));
                }
            }
        }
    } else {
        quote!()
    };

    // An open breaker refuses the call before anything else is set up.
    let refused = if plan.shared.breaker.is_some() {
        quote! {
            if let ::core::option::Option::Some(error) = #p::Session::refused(&__RESILIENCE_POLICY, &__RESILIENCE_STATE) {
                #on_start_error
                return ::core::result::Result::Err(::core::convert::From::from(error));
            }
        }
    } else {
        quote!()
    };

    let track = plan.config_path.as_ref().map(|path| {
        quote!(
            const _: &str = ::core::include_str!(#path);
        )
    });

    quote! {
        #(#attrs)*
        #vis #sig {
            #track
            static __RESILIENCE_POLICY: #p::Policy = #p::Policy {
                function: #function,
                name: #name,
                method: #method,
                timeout: #timeout,
                deadline: #deadline,
                max_attempts: #max_attempts,
                backoff: #p::Backoff {
                    kind: #p::BackoffKind::#kind,
                    initial: #initial,
                    max: #max,
                    multiplier_milli: #mult,
                    jitter: #p::Jitter::#jitter,
                },
                retry_on: #p::RetryOn { connect: #connect, reset: #reset, timeout: #timeout_on, statuses: &[#(#statuses),*] },
                idempotency_key: #p::KeySource::#key_source,
                idempotent: #idempotent,
                max_retry_after: #max_retry_after,
                budget: #budget,
                breaker: #breaker,
                bulkhead: #bulkhead,
                rate_limit: #rate_limit,
                concurrency: #concurrency,
                hedge: #hedge,
                unseen: #p::Method::Other,
                locate: ::core::option::Option::Some(__resilience_locate),
            };
            fn __resilience_locate() -> &'static str {
                #p::function_path(::core::any::type_name_of_val(&__resilience_locate))
            }
            static __RESILIENCE_STATE: #p::PolicyState = #p::PolicyState::new();
            #refused
            let mut __resilience_session =
                #p::Session::begin(&__RESILIENCE_POLICY, &__RESILIENCE_STATE, #key_arg);
            if let ::core::option::Option::Some(error) = __resilience_session.take_refusal() {
                #on_start_error
                return ::core::result::Result::Err(::core::convert::From::from(error));
            }
            #admit
            #replaced_decl
            #[allow(clippy::let_and_return)]
            let __resilience_result = loop {
                #attempt
                .await;
                if let ::core::result::Result::Err(__resilience_error) = &mut __resilience_result {
                    let __resilience_class = {
                        #[allow(unused_imports)]
                        use #p::{ViaBoxed as _, ViaClassify as _, ViaNothing as _, ViaOwn as _, ViaStdError as _};
                        (&&&&&#p::Probe::new(__resilience_error, __resilience_session.attempts())).__resilience_class()
                    };
                    match __resilience_session.after_failure(__resilience_class) {
                        #p::Next::Retry => #on_retry,
                        #p::Next::Return => {}
                        #p::Next::Replace(error) => {
                            #note_replaced
                            __resilience_result = ::core::result::Result::Err(::core::convert::From::from(error));
                        }
                    }
                }
                break __resilience_result;
            };
            #finish
            __resilience_result
        }
    }
}

fn respan(ts: TokenStream, span: Span) -> TokenStream {
    ts.into_iter()
        .map(|mut tt| {
            tt.set_span(span);
            tt
        })
        .collect()
}
