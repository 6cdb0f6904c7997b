//! Generates the wrapper. Parses nothing: takes the validated model.
//!
//! The signature is kept as written; only the body is replaced by a loop that drives a runtime
//! session, re-running the original body (with fresh clones of by-value arguments) per attempt.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens as _, quote, quote_spanned};
use syn::spanned::Spanned as _;

use resilience_policy::model::{KeyModel, Settings};
use resilience_policy::validate::Shared;

/// A `fallback` call is written once per combination of the parameters under `#[cfg]`.
use resilience_policy::validate::MAX_GATED_FALLBACK_ARGS;

pub(crate) struct Plan<'a> {
    pub func: &'a syn::ItemFn,
    pub settings: &'a Settings,
    pub shared: &'a Shared,
    pub krate: TokenStream,
    pub config_path: Option<String>,
    /// `Cargo.toml`, when it may name the policy file (`Analysis::manifest_path`).
    pub manifest_path: Option<String>,
    /// The policy's values, packed (`Analysis::packed`).
    pub packed: String,
    /// The method, declared or inferred, is safe (GET, HEAD, OPTIONS).
    pub safe_method: bool,
    /// An inline `idempotency_key` path's tokens as written (`entry::key_as_written`).
    pub key_tokens: Option<TokenStream>,
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
    // Inner attributes of the body (`#![allow(..)]`) stay inner: at the head of the generated
    // body, not before the signature, where they are not allowed.
    let (inner_attrs, attrs): (Vec<_>, Vec<_>) = f
        .attrs
        .iter()
        .partition(|a| matches!(a.style, syn::AttrStyle::Inner(_)));
    let vis = &f.vis;
    let sig = &f.sig;
    // `#[tracing::instrument]` written above this attribute expanded first: the body is its
    // span around the original one, so each attempt would open that span and fire its `err`
    // and `ret` events. Said, as a warning (the `deprecated` lint, the one a macro can raise
    // on stable) at that attribute.
    let instrument_above = instrumented_by(&f.block).map(|span| {
        quote_spanned! {span=>
            #[deprecated(
                note = "#[tracing::instrument] written above #[resilient] wraps each attempt, not the call: its span opens, and its `err` and `ret` events fire, once per attempt. Write it below #[resilient] for one span per call"
            )]
            #[allow(non_upper_case_globals)]
            const instrument_above_resilient: () = ();
            let () = instrument_above_resilient;
        }
    });
    // A rate limit shared through Redis, in a runtime built without Redis: a warning at the
    // setting (see `__private::SHARED_RATE_LIMIT`).
    let shared_rate_limit = plan
        .shared
        .rate_limit
        .as_ref()
        .filter(|(_, m)| m.store == resilience_policy::validate::RateStoreM::Redis)
        .map(|_| {
            let span = s.rate_limit.origin.span_or(Span::call_site());
            quote_spanned! {span=> let () = #p::SHARED_RATE_LIMIT; }
        });
    let ident = &sig.ident;
    // Every request the body sends goes through the attempt's stamping, by type.
    let mut block = (*f.block).clone();
    // Where the method is inferred from the body's own requests, a helper it awaits, handed
    // the client, may send another (a POST beside the body's GET) unseen: such helpers are
    // wrapped, and one seen sending nothing makes its attempt count as the least safe,
    // unkeyed. So in a keyed function too: the key is on the requests the runtime stamps, not
    // on a helper's POST sent without `.resilient()`, which each retry (or ask for the
    // replay) would send again. A declared `method` is the least safe the body sends, helpers
    // included (a keyed charge whose helper fetches a token declares it to keep its retries
    // and its asks); `idempotent` on a PUT or DELETE says the call as a whole may run again.
    // Neither a method from the file's `[defaults]` (every function's, no author's word on
    // this one's helpers) nor `idempotent` on a function whose method is safe (it says
    // nothing of a helper's POST beside a GET) stops the watch.
    let keyed = !matches!(s.idempotency_key.value, KeyModel::None);
    let declared = s
        .method
        .as_ref()
        .is_some_and(|m| !m.origin.is_from_defaults());
    let idempotent = s.idempotent.value && !plan.safe_method;
    let watch = !declared && !idempotent;
    let clients = watch.then(|| client_names(sig));
    let found = crate::stamp::rewrite(&mut block, &p, clients.as_deref());
    // A request sent where the rewrite cannot reach (a macro it cannot read, a helper whose
    // future it cannot watch) goes unseen and unkeyed: every attempt says it may have sent the
    // least safe method, so none is run again after it may have reached the server (unless the
    // function is declared `idempotent`).
    if found.unreadable_sends || found.unwatched_helpers {
        // A function declared `idempotent` (a PUT or DELETE the server applies at most once)
        // says so of what it sends: its attempts may run again after a reset or a connect
        // failure, as its seen requests may.
        let method = if idempotent {
            quote!(Put)
        } else {
            quote!(Other)
        };
        block
            .stmts
            .insert(0, syn::parse_quote!(#k::declare_sent(#k::Method::#method);));
    }
    let stmts = &block.stmts;
    let prelude = crate::stamp::prelude(&p);

    // The policy, packed into one string the runtime unpacks on the first call: one literal is
    // far cheaper for the compiler to check, function by function, than the same values
    // written out as a struct expression.
    let packed = &plan.packed;
    let max_attempts = s.max_attempts.value;

    let function = quote!(::core::concat!(
        ::core::module_path!(),
        "::",
        ::core::stringify!(#ident)
    ));

    let key_arg = match &s.idempotency_key.value {
        KeyModel::None => quote!(#p::KeyArg::None),
        KeyModel::Auto => quote!(#p::KeyArg::Auto),
        KeyModel::Param(path) => {
            let span = s.idempotency_key.origin.span_or(Span::call_site());
            let expr = match &plan.key_tokens {
                Some(written) => written.clone(),
                // A path from the file: each segment a keyword is written raw (`r#type`).
                None => {
                    let raw: Vec<String> = path
                        .split('.')
                        .map(|seg| match syn::parse_str::<syn::Ident>(seg) {
                            Err(_)
                                if !["self", "Self", "crate", "super", "_"].contains(&seg)
                                    && seg.starts_with(|c: char| c.is_alphabetic() || c == '_') =>
                            {
                                format!("r#{seg}")
                            }
                            _ => seg.to_owned(),
                        })
                        .collect();
                    respan(raw.join(".").parse().unwrap_or_default(), span)
                }
            };
            quote_spanned!(span=> #p::key_from(&#expr, #path))
        }
    };

    let hedged = s.hedge.value.is_some();
    // The body runs again after a failure: a retry, or (keyed, whatever `max_attempts`) an ask
    // for the replay of a request another attempt or caller still has in progress (409).
    let runs_again = max_attempts > 1 || keyed;

    // Fresh clones of by-value arguments for each attempt (none when there is no retry), and
    // for each hedge.
    let cloned = runs_again || hedged || s.fallback.is_some();
    let mut clones = Vec::new();
    // A hedged attempt's closure owns a clone of each by-value argument, made for the attempt,
    // from which each of its futures clones its own: holding the argument by shared reference
    // across the round, the closure (and the call's future) would be `Send` only if the
    // argument were `Sync`.
    let mut owned = Vec::new();
    // An attempt's body (not hedged) reads the arguments from an `async` block beside them:
    // one it only reads, it would capture by shared reference, and its future would be `Send`
    // only if the argument were `Sync` (a `&mut self` whose type holds a `Box<dyn Trait +
    // Send>`, a by-value `Cell`), where the function's own future needs `Send` only. A
    // mutable borrow of each at the block's head makes the block hold it by unique reference,
    // `Send` when the argument is: by-value arguments (their clones, or a rebinding) and
    // `&mut` ones (a reborrow). It also reads them, so a by-value key parameter the body does
    // not use warns of nothing.
    let mut touch = Vec::new();
    let mut rebind = Vec::new();
    // The signature as written, but for `mut` on by-value parameters that are cloned: each
    // attempt changes its own clone, so the parameter itself is never changed, and would
    // warn `unused_mut` (an error under `#![deny(warnings)]`).
    let mut out_sig = sig.clone();
    for (input, out) in sig.inputs.iter().zip(out_sig.inputs.iter_mut()) {
        match input {
            syn::FnArg::Receiver(r) => {
                let unique = match &r.kind {
                    syn::ReceiverKind::Reference(_, _, m) => m.is_some(),
                    syn::ReceiverKind::Typed(_, ty) => matches!(
                        resilience_policy::validate::peel(ty),
                        syn::Type::Reference(t) if t.mutability.is_some()
                    ),
                    _ => false,
                };
                if unique {
                    touch.push(quote!(let _ = &mut *self;));
                }
            }
            syn::FnArg::Typed(pt) => {
                let syn::Pat::Ident(pi) = &*pt.pat else {
                    continue;
                };
                if pi.by_ref.is_some() {
                    continue;
                }
                let id = &pi.ident;
                // A parameter under `#[cfg(…)]` exists only where its cfg holds: so do its
                // clone, its rebinding and its borrow.
                let cfgs: Vec<_> = pt
                    .attrs
                    .iter()
                    .filter(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr"))
                    .collect();
                match resilience_policy::validate::peel(&pt.ty) {
                    syn::Type::Reference(r) if r.mutability.is_some() => {
                        touch.push(quote!(#(#cfgs)* let _ = &mut *#id;));
                        // A body that moves the reference (`execute(conn)`, a generic
                        // `W: Write` handed `buf`) moves it out of the parameter: each attempt
                        // moves a reborrow of its own instead, as an unannotated body moves
                        // the parameter once.
                        if runs_again || s.fallback.is_some() {
                            // `mut out: &mut [u8]` (a `Write` on the slice, `out = &mut
                            // out[n..]`) stays a mutable binding; the parameter itself is then
                            // never changed.
                            let mutability = pi.mutability;
                            if mutability.is_some()
                                && let syn::FnArg::Typed(out) = out
                            {
                                out.attrs.push(syn::parse_quote!(#[allow(unused_mut)]));
                            }
                            rebind.push(quote!(
                                #(#cfgs)*
                                #[allow(unused_mut)]
                                let #mutability #id = &mut *#id;
                            ));
                        }
                    }
                    // `mut ids: &[u64]` (`ids = rest;` as the body walks it): a copy of the
                    // reference for each attempt, so that a retry starts from what was handed
                    // in, not from where the failed attempt left it.
                    syn::Type::Reference(_) => {
                        if (runs_again || s.fallback.is_some()) && pi.mutability.is_some() {
                            if let syn::FnArg::Typed(out) = out {
                                out.attrs.push(syn::parse_quote!(#[allow(unused_mut)]));
                            }
                            rebind.push(quote!(
                                #(#cfgs)*
                                #[allow(unused_mut)]
                                let mut #id = #id;
                            ));
                        }
                    }
                    _ => {
                        touch.push(quote!(#(#cfgs)* let _ = &mut #id;));
                        if cloned {
                            if pi.mutability.is_some()
                                && let syn::FnArg::Typed(out) = out
                            {
                                out.attrs.push(syn::parse_quote!(#[allow(unused_mut)]));
                            }
                            let span = pt.span();
                            clones.push(quote_spanned! {span=>
                                #(#cfgs)*
                                #[allow(clippy::redundant_clone, unused_mut)]
                                let mut #id = ::core::clone::Clone::clone(&#id);
                            });
                            owned.push(quote_spanned! {span=>
                                #(#cfgs)*
                                #[allow(clippy::redundant_clone)]
                                let #id = ::core::clone::Clone::clone(&#id);
                            });
                        } else if pi.mutability.is_none() {
                            rebind.push(quote!(
                                #(#cfgs)*
                                #[allow(unused_mut)]
                                let mut #id = #id;
                            ));
                        }
                    }
                }
            }
        }
    }

    // A return edge typed with the declared return type, so `?` and `return` in the body
    // convert into it, and a type error points at the return type, not at the macro. The
    // call on it checks that type, where it is written: a `Result` whose error type the
    // runtime's own errors convert into, so that a `Result<T, reqwest::Error>` is told so in
    // words, there (and a type aliasing no `Result` at all, the runtime's path included).
    let fake_return = match &sig.output {
        // `impl Trait` may not name a variable's type: the body's type then comes from the
        // function's own return, where the loop's result goes.
        syn::ReturnType::Type(_, ty) if contains_impl(ty) => quote!(),
        syn::ReturnType::Type(_, ty) => {
            let span = ty.span();
            let private = respan(p.clone(), span);
            quote_spanned! {span=>
                #[allow(unreachable_code, clippy::needless_return)]
                if false {
                    return #private::must_return_result::<#ty>();
                }
            }
        }
        syn::ReturnType::Default => quote!(),
    };

    // Without retries or asks the loop never goes round again: no back edge, so the body may
    // move its by-value arguments (which are then not cloned and need not be `Clone`).
    let after = if runs_again {
        quote! {
            if __resilience_session.failed(__resilience_class, &mut __resilience_result) {
                continue;
            }
        }
    } else {
        quote!(let _ = __resilience_session.failed(__resilience_class, &mut __resilience_result);)
    };

    // A hedged policy runs the body more than once at a time: a fresh future (with its own
    // clones) for each attempt and hedge.
    let attempt = if hedged {
        quote! {
            let mut __resilience_result = {
                #(#owned)*
                __resilience_session.attempt_hedged(move || {
                    #(#clones)*
                    async move {
                        #prelude
                        #fake_return
                        // In a block of their own: an item or a `use` of the body (a `struct
                        // User` of the wire's shape) does not change what the signature's
                        // return type names, checked above.
                        { #(#stmts)* }
                    }
                })
            }
        }
    } else {
        quote! {
            #(#clones)*
            #(#rebind)*
            let mut __resilience_result = __resilience_session
                .attempt(::core::pin::pin!(::core::option::Option::Some(async {
                    #(#touch)*
                    #prelude
                    #fake_return
                    { #(#stmts)* }
                })))
        }
    };

    // The fallback: the same arguments, typed with the function's own return type, so the
    // compiler checks the signature and points at `fallback = …`.
    // The fallback's scope, made where the call ends (`FallbackScope`), read where the fallback
    // is called: one identifier, of one hygiene, at both (the fallback's name may come from a
    // `macro_rules!` caller, whose tokens cannot see a local of the expansion's own).
    let scope = syn::Ident::new("__resilience_scope", Span::call_site());
    let fallback_call = s.fallback.as_ref().map(|name| {
        // An `impl Trait` return type, or more than `MAX_GATED_FALLBACK_ARGS` parameters
        // under `#[cfg]`, was refused by the analysis (`check_fallback`), as `resilience
        // check` refuses them.
        let span = name.origin.span_or(Span::call_site());
        let path: TokenStream = respan(name.value.parse().unwrap_or_default(), span);
        // Each argument, with the `cfg` predicates of its parameter (none for most).
        let args: Vec<(TokenStream, Vec<TokenStream>)> = sig
            .inputs
            .iter()
            .map(|input| match input {
                syn::FnArg::Receiver(r) => {
                    let t = &r.self_token;
                    (quote!(#t), Vec::new())
                }
                syn::FnArg::Typed(pt) => {
                    let arg = match &*pt.pat {
                        syn::Pat::Ident(pi) => {
                            let id = &pi.ident;
                            quote!(#id)
                        }
                        other => quote!(#other),
                    };
                    let cfgs = pt
                        .attrs
                        .iter()
                        .filter(|a| a.path().is_ident("cfg"))
                        .filter_map(|a| a.meta.require_list().ok())
                        .map(|l| l.tokens.clone())
                        .collect();
                    (arg, cfgs)
                }
            })
            .collect();
        let ret = match &sig.output {
            syn::ReturnType::Type(_, ty) => quote!(#ty),
            syn::ReturnType::Default => quote!(()),
        };
        // An argument list cannot hold `#[cfg]`: one call per combination of the gated
        // parameters, each under the cfg that says which of them exist (one call, ungated,
        // when none is).
        let gated: Vec<usize> = (0..args.len()).filter(|&i| !args[i].1.is_empty()).collect();
        debug_assert!(gated.len() <= MAX_GATED_FALLBACK_ARGS);
        let calls = (0..1usize << gated.len()).map(|combo| {
            let present = |i: usize| {
                gated
                    .iter()
                    .position(|&g| g == i)
                    .is_none_or(|bit| combo & (1 << bit) != 0)
            };
            let passed = (0..args.len()).filter(|&i| present(i)).map(|i| &args[i].0);
            let conditions = gated.iter().map(|&i| {
                let preds = &args[i].1;
                if present(i) {
                    quote!(all(#(#preds),*))
                } else {
                    quote!(not(all(#(#preds),*)))
                }
            });
            let cfg = if gated.is_empty() {
                quote!()
            } else {
                quote!(#[cfg(all(#(#conditions),*))])
            };
            quote_spanned! {span=>
                #cfg
                // Begun with a token of the name's span: a mismatched return type points at
                // `fallback = name`, not at the attribute.
                let __resilience_fallback: #ret = <#p::FallbackScope>::run(#scope, #path(#(#passed),*)).await;
            }
        });
        // The failed call's report (for `measure`) outlives the fallback's own calls: put
        // back when the guard drops, after the fallback's answer, or as it is given up on.
        quote_spanned! {span=>
            {
                let __resilience_report = #p::report_kept();
                #(#calls)*
                __resilience_fallback
            }
        }
    });
    let mask = s.fallback_on.value.0;
    // A key the body of an enclosing call may give it (a parameter, a field): the same at
    // each run of that call (see `fallback_applies_refused`).
    let given_key = matches!(s.idempotency_key.value, KeyModel::Param(_));
    let on_start_error = match &fallback_call {
        Some(call) => quote! {
            if #p::fallback_applies_refused(#mask, __resilience_refusal.kind(), &__RESILIENCE_STATE, #given_key) {
                // Its calls take their places under the refused call's (`derive_call_keys`).
                let #scope = #p::FallbackScope::refused();
                return #call;
            }
        },
        None => quote!(),
    };
    // The runtime's own limit that ended the call, or the function's own error: whether the
    // fallback applies.
    let finish = match &fallback_call {
        Some(call) => quote! {
            let __resilience_kind = match &mut __resilience_result {
                ::core::result::Result::Err(__resilience_error) => {
                    #[allow(unused_imports)]
                    use #p::{ViaBoxed as _, ViaClassify as _, ViaNothing as _, ViaOwn as _, ViaStdError as _};
                    ::core::option::Option::Some((&&&&&#p::Probe::new(__resilience_error, &__resilience_session)).__resilience_kind())
                }
                ::core::result::Result::Ok(_) => ::core::option::Option::None,
            };
            if let ::core::option::Option::Some(__resilience_kind) = __resilience_kind {
                if #p::fallback_applies_after(&__resilience_session, #mask, __resilience_session.final_kind(__resilience_kind), &__RESILIENCE_STATE) {
                    ::core::mem::drop(__resilience_result);
                    // Its calls take their places under the failed call's (`derive_call_keys`).
                    let #scope = #p::FallbackScope::after(&__resilience_session);
                    let __resilience_attempts_ran = __resilience_session.attempts();
                    // The call is over: its bulkhead or concurrency slot is free for others
                    // (the fallback's own calls among them) while the fallback runs.
                    ::core::mem::drop(__resilience_session);
                    let mut __resilience_fell = #call;
                    // Failed too: the runtime's error it returned counts the call's attempts.
                    if let ::core::result::Result::Err(__resilience_error) = &mut __resilience_fell {
                        #[allow(unused_imports)]
                        use #p::{FellBoxed as _, FellOther as _, FellOwn as _};
                        (&&&#p::FallbackFailed::new(__resilience_error, __resilience_attempts_ran)).__resilience_ran();
                    }
                    return __resilience_fell;
                }
            }
        },
        None => quote!(),
    };

    // A bulkhead or concurrency-limit slot or a rate-limit permit may have to be waited for;
    // without any, the session is ready as begun.
    let admit = if plan.shared.bulkhead.is_some()
        || plan.shared.concurrency.is_some()
        || plan.shared.rate_limit.is_some()
    {
        // A slot free now is taken without the admission's future.
        let now = (plan.shared.bulkhead.is_some() || plan.shared.concurrency.is_some())
            .then(|| quote!(&&!__resilience_session.admit_now()));
        // Refused (a full bulkhead, the rate limit, no time left), the call's first attempt
        // returns the refusal, through the loop's own return.
        quote! {
            if !__resilience_session.admitted() #now {
                __resilience_session.admit_or_refuse().await;
            }
        }
    } else {
        quote!()
    };

    // An open breaker refuses the call before anything else is set up.
    let refused = if plan.shared.breaker.is_some() {
        quote! {
            if let ::core::option::Option::Some(__resilience_refusal) = #p::Session::refused_compiled(&__RESILIENCE_STATE) {
                #on_start_error
                return ::core::result::Result::Err(#p::HoldsRuntimeErrors::from_runtime(__resilience_refusal));
            }
        }
    } else {
        quote!()
    };

    // The compiler tracks what `include_str!` reads: an edit of the policy file, or of the
    // `[package.metadata.resilience] config` that chooses it, rebuilds the function. Read
    // into an inert attribute's value: cheaper to check than a `const` item per function, and
    // not a `doc`, whose text rustdoc would read as Markdown (an indented block in the file, a
    // doctest of every function).
    let tracked: Vec<_> = plan.config_path.iter().chain(&plan.manifest_path).collect();
    let track = (!tracked.is_empty())
        .then(|| quote!(#[must_use = ::core::concat!(#(::core::include_str!(#tracked)),*)]));

    let retry_loop = quote! {
        loop {
            #attempt
            .await;
            if let ::core::result::Result::Err(__resilience_error) = &mut __resilience_result {
                let __resilience_class = {
                    #[allow(unused_imports)]
                    use #p::{ViaBoxed as _, ViaClassify as _, ViaNothing as _, ViaOwn as _, ViaStdError as _};
                    (&&&&&#p::Probe::new(__resilience_error, &__resilience_session)).__resilience_class()
                };
                #after
            }
            break __resilience_result;
        }
    };
    // Without a fallback the loop is the function's value: its `break` writes the result
    // where the function returns it, one move of it fewer than through a variable.
    let tail = match &fallback_call {
        Some(_) => quote! {
            let mut __resilience_result = #retry_loop;
            #finish
            __resilience_result
        },
        None => retry_loop,
    };

    quote! {
        #(#attrs)*
        #vis #out_sig {
            #(#inner_attrs)*
            #instrument_above
            #shared_rate_limit
            // Its type name is the function's path, impl type included (`function_path`).
            #track
            struct __ResilienceHere;
            static __RESILIENCE_STATE: #p::PolicyState =
                #p::PolicyState::compiled(#function, #packed, ::core::any::type_name::<__ResilienceHere>);
            #refused
            // A call refused at its start (an invalid key) or by its admission is refused by
            // its first attempt, through the loop's own return: no return path of its own.
            let mut __resilience_session =
                #p::Session::begin_compiled(&__RESILIENCE_STATE, #key_arg);
            #admit
            #tail
        }
    }
}

/// The names through which a body holds a client: `self`, and the parameters (by name) whose
/// type is a `…Client` (`&reqwest::Client`, `Arc<Client>`, `ClientWithMiddleware`, a
/// service's `PaymentsClient`; not a `ClientId`).
pub(crate) fn client_names(sig: &syn::Signature) -> Vec<String> {
    // The type parameters bound to a client (`C: AsRef<Client>`, or in the `where` clause:
    // `C: Deref<Target = Client>`): a parameter of such a type is one as `impl AsRef<Client>`
    // is.
    let mut generic: Vec<String> = sig
        .generics
        .type_params()
        .filter(|t| names_a_client(t.bounds.to_token_stream()))
        .map(|t| t.ident.to_string())
        .collect();
    if let Some(w) = &sig.generics.where_clause {
        for p in &w.predicates {
            if let syn::WherePredicate::Type(t) = p
                && let syn::Type::Path(ty) = &t.bounded_ty
                && let Some(ident) = ty.path.get_ident()
                && names_a_client(t.bounds.to_token_stream())
            {
                generic.push(ident.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for input in &sig.inputs {
        match input {
            syn::FnArg::Receiver(_) => out.push("self".to_owned()),
            syn::FnArg::Typed(pt) => {
                if let syn::Pat::Ident(pi) = &*pt.pat
                    && (names_a_client(pt.ty.to_token_stream()) || is_one_of(&pt.ty, &generic))
                {
                    out.push(pi.ident.to_string());
                }
            }
        }
    }
    out
}

/// Whether `ty` is one of the type parameters `params`, through references and shared
/// pointers (`C`, `&C`, `&mut C`, `Arc<C>`); not a type that only mentions it
/// (`PhantomData<C>`, `&[C::Id]`).
fn is_one_of(ty: &syn::Type, params: &[String]) -> bool {
    match ty {
        syn::Type::Reference(r) => is_one_of(&r.elem, params),
        syn::Type::Paren(p) => is_one_of(&p.elem, params),
        syn::Type::Path(p) if p.qself.is_none() => {
            if let Some(i) = p.path.get_ident() {
                return params.iter().any(|c| i == c);
            }
            let Some(last) = p.path.segments.last() else {
                return false;
            };
            ["Arc", "Rc", "Box"].iter().any(|w| last.ident == w)
                && matches!(&last.arguments, syn::PathArguments::AngleBracketed(a)
                    if a.args.len() == 1
                        && matches!(&a.args[0], syn::GenericArgument::Type(t) if is_one_of(t, params)))
        }
        _ => false,
    }
}

fn names_a_client(ts: TokenStream) -> bool {
    ts.into_iter().any(|tt| match tt {
        // `Client`, `PaymentsClient`, `ClientWithMiddleware`; not `ClientId`.
        proc_macro2::TokenTree::Ident(i) => {
            let name = i.to_string();
            name.ends_with("Client") || name == "ClientWithMiddleware"
        }
        proc_macro2::TokenTree::Group(g) => names_a_client(g.stream()),
        _ => false,
    })
}

/// The span of the `#[tracing::instrument]` that already wrapped `block` (its first statement
/// binds `__tracing_attr_span`), if one did.
fn instrumented_by(block: &syn::Block) -> Option<Span> {
    block.stmts.iter().find_map(|st| match st {
        syn::Stmt::Local(l) => match &l.pat {
            syn::Pat::Ident(pi) if pi.ident == "__tracing_attr_span" => Some(pi.ident.span()),
            _ => None,
        },
        _ => None,
    })
}

/// Whether `ty` holds an `impl Trait` anywhere (`Result<impl Iterator<Item = u8>, E>`).
fn contains_impl(ty: &syn::Type) -> bool {
    ty.to_token_stream().into_iter().any(|tt| tt_has_impl(&tt))
}

fn tt_has_impl(tt: &proc_macro2::TokenTree) -> bool {
    match tt {
        proc_macro2::TokenTree::Ident(i) => i == "impl",
        proc_macro2::TokenTree::Group(g) => g.stream().into_iter().any(|t| tt_has_impl(&t)),
        _ => false,
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
