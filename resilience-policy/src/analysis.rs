//! One annotated function, analysed: its arguments parsed, the policy file read, the layers
//! applied (built-in < `[defaults]` < `[policies.NAME]` < inline), the method inferred and
//! every rule checked.

use std::path::Path;

use proc_macro2::{Span, TokenStream};
use quote::ToTokens as _;

use crate::attr::{Entry, parse_args};
use crate::config::{self, Config};
use crate::diag::Diags;
use crate::infer::infer_method;
use crate::model::{BackoffKind, KeyModel, Method, Set, Settings};
use crate::validate::{
    Shared, check_body_sets_no_key, check_declared_method, check_function, check_keyed_body_sends,
    check_policy, effective_method, resolve_shared,
};
use resilience_spec::packed::{Packed, PackedKey};

/// The effective policy of one function, with where each setting came from.
#[derive(Debug)]
pub struct Analysis {
    /// The method, declared or inferred (with where).
    pub method: Option<Set<Method>>,
    /// Every setting, with its origin.
    pub settings: Settings,
    /// The budget, breaker and bulkhead it uses.
    pub shared: Shared,
    /// The path of `resilience_runtime` in generated code.
    pub krate: TokenStream,
    /// The named policy, if any.
    pub policy_name: Option<String>,
    /// The policy file read, if any.
    pub config_path: Option<String>,
    /// The crate's `Cargo.toml`, when no `config` is written inline: its
    /// `[package.metadata.resilience] config` chooses the file (or would, once written), so
    /// the expansion tracks it as it tracks the file.
    pub manifest_path: Option<String>,
}

/// Everything the macro knows about one annotated function before it generates code: every
/// error is collected before giving up. `source_dir` is the directory of the file the function
/// is in, and `manifest_dir` the crate's (where `resilience.toml` is looked for).
pub fn analyze(
    args: TokenStream,
    func: &syn::ItemFn,
    manifest_dir: Option<&Path>,
    source_dir: Option<&Path>,
) -> syn::Result<Analysis> {
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
                // A path to a module: no generic arguments (`a::b<T>` cannot prefix an item).
                Some(Ok(path)) if path.segments.iter().all(|s| s.arguments.is_none()) => {
                    krate = Some(path.into_token_stream())
                }
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
    let config: Option<std::rc::Rc<Config>> = match config::locate(
        config_rel.as_ref().map(|c| c.0.as_str()),
        manifest_dir,
        source_dir,
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
    // A body that chooses its method at run time (`c.request(m, url)`) is not declared by a
    // file-wide `[defaults] method`: that one is about the crate's functions at large, and
    // this one may send any method.
    if inferred.is_none()
        && let Some(m) = &settings.method
        && m.origin.is_from_defaults()
        && crate::infer::chosen_at_run_time(func.block.to_token_stream())
    {
        diags.push(
            fallback,
            format!(
                "{}method = {} comes from [defaults], but this function chooses its method at run time (`.request(m, url)`, `Request::new(m, url)`): declare the least safe method it may send, inline or in its [policies.NAME]",
                crate::model::file_prefix(&m.origin),
                m.value.as_str()
            ),
        );
    }
    let method = effective_method(&settings, inferred.as_ref());
    // Against what the body shows even where it also chooses a method at run time (a `.post(`
    // beside a `.request(m, url)` under `method = GET`).
    let visible = crate::infer::visible_method(func.block.to_token_stream());
    check_declared_method(&mut diags, &settings, visible.as_ref(), fallback);
    check_function(&mut diags, func, &settings);
    check_policy(&mut diags, &settings, method.as_ref(), fallback);
    crate::validate::check_hedge(&mut diags, &settings, method.as_ref(), fallback);
    crate::validate::check_fallback(&mut diags, func, &settings, fallback);
    check_keyed_body_sends(&mut diags, func, &settings);
    check_body_sets_no_key(&mut diags, func, &settings);
    let shared = resolve_shared(&mut diags, &settings, config.as_deref(), fallback);

    if let Some(e) = diags.into_error() {
        return Err(e);
    }
    Ok(Analysis {
        method,
        settings,
        shared,
        krate: krate.unwrap_or_else(|| quote::quote!(::resilience_runtime)),
        policy_name: policy.map(|p| p.0),
        config_path: config.as_ref().map(|c| c.path.display().to_string()),
        manifest_path: config_rel
            .is_none()
            .then(|| manifest_dir.map(|d| d.join("Cargo.toml")))
            .flatten()
            .filter(|m| m.is_file())
            .map(|m| m.display().to_string()),
    })
}

/// Every section of a policy file read as a function using it would read it (its keys and
/// values, the rules between them, the sections it names), whether or not a function of the
/// crate uses it: what `resilience check` says of the file itself. A section no function uses
/// is never read by the compiler, so a misspelled key or a bad value there would otherwise go
/// unnoticed until a function starts using it. The rules between keys (timeout within the
/// deadline, an unsafe retry) are checked for the policies in no `used` function's
/// `policy = "…"`, as a function using one alone would get it, a policy that declares no
/// method as a GET's (what its functions send is theirs to say); a used policy, and
/// `[defaults]`, have them checked with what each function adds inline, by the compiler. Each
/// message starts with the file position, or with the file and the section where the rule
/// has none; each is given once.
pub fn check_file(config: &Config, used: &[&str]) -> Vec<String> {
    use crate::validate::{
        read_breaker, read_budget, read_bulkhead, read_client, read_concurrency, read_rate_limit,
    };
    let fb = Span::call_site();
    let mut out: Vec<String> = config.errors.clone();
    let mut add = |section: &str, diags: Diags| {
        for m in diags.messages() {
            let m = if m.starts_with(&config.display) {
                m
            } else {
                format!("{}: [{section}]: {m}", config.display)
            };
            if !out.contains(&m) {
                out.push(m);
            }
        }
    };
    let check = |s: &Settings, diags: &mut Diags, alone: bool| {
        if alone {
            let get = Set {
                value: Method::Get,
                origin: crate::value::Origin::Builtin,
            };
            let method = s.method.clone().unwrap_or(get);
            check_policy(diags, s, Some(&method), fb);
            crate::validate::check_hedge(diags, s, Some(&method), fb);
            resolve_shared(diags, s, Some(config), fb);
        } else {
            crate::validate::read_shared_sections(diags, s, Some(config), fb);
        }
    };
    let mut diags = Diags::default();
    let mut base = Settings::default();
    if let Some(d) = &config.defaults {
        for (k, v) in &d.entries {
            base.apply(&mut diags, k, v, fb);
        }
    }
    check(&base, &mut diags, false);
    add("defaults", diags);
    for (name, t) in &config.policies {
        let mut diags = Diags::default();
        let mut s = base.clone();
        for (k, v) in &t.entries {
            s.apply(&mut diags, k, v, fb);
        }
        check(&s, &mut diags, !used.contains(&name.as_str()));
        add(&format!("policies.{name}"), diags);
    }
    let states: [(&str, &std::collections::BTreeMap<String, config::Table>); 6] = [
        ("breakers", &config.breakers),
        ("budgets", &config.budgets),
        ("bulkheads", &config.bulkheads),
        ("rate_limits", &config.rate_limits),
        ("concurrency_limits", &config.concurrency_limits),
        ("clients", &config.clients),
    ];
    for (kind, tables) in states {
        for (name, t) in tables {
            let mut diags = Diags::default();
            let e = &t.entries;
            match kind {
                "breakers" => {
                    read_breaker(&mut diags, e, fb);
                }
                "budgets" => {
                    read_budget(&mut diags, e, fb);
                }
                "bulkheads" => {
                    read_bulkhead(&mut diags, e, &t.origin, fb);
                }
                "rate_limits" => {
                    read_rate_limit(&mut diags, e, &t.origin, fb);
                }
                "concurrency_limits" => {
                    read_concurrency(&mut diags, e, &t.origin, fb);
                }
                _ => {
                    read_client(&mut diags, e, fb);
                }
            }
            add(&format!("{kind}.{name}"), diags);
        }
    }
    out
}

impl Analysis {
    /// The policy's values as the runtime is handed them (`resilience_spec::packed`): what
    /// the macro writes into the function as one string, and what the CLI checks an override
    /// file against.
    pub fn packed(&self) -> Packed<'_> {
        let s = &self.settings;
        let b = &s.backoff;
        let retry = s.retry_parts();
        Packed {
            name: self.policy_name.as_deref().unwrap_or(""),
            // A method the policy does not name counts as the least safe.
            method: self.method.as_ref().map_or(Method::Other, |m| m.value),
            timeout: s.timeout.value,
            deadline: s.deadline.value,
            max_attempts: s.max_attempts.value,
            backoff_constant: b.kind.value == BackoffKind::Constant,
            backoff_initial: b.initial.value,
            backoff_max: b.max.value,
            backoff_multiplier_milli: b.multiplier_milli.value,
            jitter: b.jitter.value.packed(),
            retry_connect: retry.connect,
            retry_reset: retry.reset,
            retry_timeout: retry.timeout,
            retry_statuses: retry.statuses,
            key: match &s.idempotency_key.value {
                KeyModel::None => PackedKey::None,
                KeyModel::Auto => PackedKey::Auto,
                KeyModel::Param(_) => PackedKey::Param,
            },
            idempotent: s.idempotent.value,
            max_retry_after: s.max_retry_after.value,
            budget: self
                .shared
                .budget
                .as_ref()
                .map(|(n, m)| (n.as_str(), m.ratio, m.min_per_sec)),
            breaker: self
                .shared
                .breaker
                .as_ref()
                .map(|(n, m)| (n.as_str(), m.spec)),
            bulkhead: self
                .shared
                .bulkhead
                .as_ref()
                .map(|(n, m)| (n.as_str(), m.max_concurrent, m.max_wait)),
            rate_limit: self
                .shared
                .rate_limit
                .as_ref()
                .map(|(n, m)| (n.as_str(), *m)),
            concurrency: self
                .shared
                .concurrency
                .as_ref()
                .map(|(n, m)| (n.as_str(), *m)),
            hedge: s.hedge.value.as_ref().map(|h| (h.delay.value, h.max.value)),
            unseen: Method::Other,
            // The macro proves it from the body (`resilience-macros`' `sends_all_seen`).
            sends_seen: false,
            connect_timeout: self.shared.connect_timeout,
        }
    }
}
