//! The compile-time rules. Each is an error at the offending tokens with a note on how to fix it.

use std::time::Duration;

use proc_macro2::Span;
use syn::spanned::Spanned as _;

use crate::config::Config;
use crate::diag::Diags;
use crate::infer::Inferred;
use crate::model::{
    BREAKER_KEYS, BUDGET_KEYS, BULKHEAD_KEYS, CLIENT_KEYS, KeyModel, Method, RetryItem, Set,
    Settings, StateRef, check_table_keys, duration, err, file_prefix, integer, number,
};
use crate::value::{Located, Origin, did_you_mean};

#[derive(Debug, Clone, Copy)]
pub struct BudgetM {
    pub ratio: f64,
    pub min_per_sec: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerM {
    pub failure_rate: f64,
    pub min_calls: u32,
    pub window: u32,
    pub open_for: Duration,
    pub half_open_calls: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct BulkheadM {
    pub max_concurrent: u32,
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct ClientM {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub tcp_keepalive: Duration,
    pub pool_max_idle_per_host: u32,
}

/// Shared state, resolved to names and settings.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    pub budget: Option<(String, BudgetM)>,
    pub breaker: Option<(String, BreakerM)>,
    pub bulkhead: Option<(String, BulkheadM)>,
}

/// Is this an HTTP status that may be retried at all?
pub fn transient_status(s: u16) -> bool {
    matches!(s, 408 | 429 | 500..=599)
}

/// Reads the settings of a budget/breaker/bulkhead/client table (defaults for missing keys).
pub fn read_budget(diags: &mut Diags, t: &[(String, Located)], fb: Span) -> BudgetM {
    check_table_keys(diags, t, BUDGET_KEYS, "budget", fb);
    let mut m = BudgetM {
        ratio: 0.1,
        min_per_sec: 10,
    };
    for (k, v) in t {
        match k.as_str() {
            "ratio" => match number(diags, v, fb, k) {
                Some(x) if (0.0..=1.0).contains(&x) => m.ratio = x,
                Some(x) => err(
                    diags,
                    v,
                    fb,
                    format!("budget ratio {x} is outside 0..=1 (0.1 lets retries add 10%)"),
                ),
                None => {}
            },
            "min_per_sec" => match integer(diags, v, fb, k) {
                Some(n) if n <= 1_000_000 => m.min_per_sec = n as u32,
                Some(n) => err(diags, v, fb, format!("min_per_sec {n} is above 1000000")),
                None => {}
            },
            _ => {}
        }
    }
    m
}

pub fn read_breaker(diags: &mut Diags, t: &[(String, Located)], fb: Span) -> BreakerM {
    check_table_keys(diags, t, BREAKER_KEYS, "breaker", fb);
    let mut m = BreakerM {
        failure_rate: 0.5,
        min_calls: 10,
        window: 20,
        open_for: Duration::from_secs(30),
        half_open_calls: 3,
    };
    let mut min_calls_at = None;
    for (k, v) in t {
        match k.as_str() {
            "failure_rate" => match number(diags, v, fb, k) {
                Some(x) if x > 0.0 && x <= 1.0 => m.failure_rate = x,
                Some(x) => err(
                    diags,
                    v,
                    fb,
                    format!(
                        "failure_rate {x} is outside (0, 1]: 0.5 opens at half the calls failing"
                    ),
                ),
                None => {}
            },
            "min_calls" | "window" | "half_open_calls" => match integer(diags, v, fb, k) {
                Some(n) if (1..=1024).contains(&n) => {
                    let n = n as u32;
                    match k.as_str() {
                        "min_calls" => {
                            m.min_calls = n;
                            min_calls_at = Some(v.clone());
                        }
                        "window" => m.window = n,
                        _ => m.half_open_calls = n,
                    }
                }
                Some(n) => err(diags, v, fb, format!("{k} = {n} is outside 1..=1024")),
                None => {}
            },
            "open_for" => {
                if let Some(d) = duration(diags, v, fb, k) {
                    if d.is_zero() {
                        err(diags, v, fb, "open_for must be longer than zero");
                    } else {
                        m.open_for = d;
                    }
                }
            }
            _ => {}
        }
    }
    if m.min_calls > m.window {
        let at = min_calls_at.unwrap_or_else(|| {
            t.first().map(|(_, v)| v.clone()).unwrap_or(Located {
                value: crate::value::Value::Bool(true),
                origin: Origin::Builtin,
            })
        });
        err(
            diags,
            &at,
            fb,
            format!(
                "min_calls ({}) is larger than the window ({}): the breaker could never open",
                m.min_calls, m.window
            ),
        );
    }
    m
}

/// `at` is where the table is, for a missing `max_concurrent`.
pub fn read_bulkhead(
    diags: &mut Diags,
    t: &[(String, Located)],
    at: &Origin,
    fb: Span,
) -> BulkheadM {
    check_table_keys(diags, t, BULKHEAD_KEYS, "bulkhead", fb);
    let mut m = BulkheadM {
        max_concurrent: 0,
        max_wait: Duration::ZERO,
    };
    let mut seen_max = false;
    for (k, v) in t {
        match k.as_str() {
            "max_concurrent" => match integer(diags, v, fb, k) {
                Some(n) if (1..=1_000_000).contains(&n) => {
                    m.max_concurrent = n as u32;
                    seen_max = true;
                }
                Some(n) => err(
                    diags,
                    v,
                    fb,
                    format!("max_concurrent = {n} is outside 1..=1000000"),
                ),
                None => seen_max = true,
            },
            "max_wait" => {
                if let Some(d) = duration(diags, v, fb, k) {
                    m.max_wait = d;
                }
            }
            _ => {}
        }
    }
    if !seen_max {
        let at = Located {
            value: crate::value::Value::Bool(true),
            origin: at.clone(),
        };
        err(
            diags,
            &at,
            fb,
            "a bulkhead needs `max_concurrent`: how many calls may be in flight at once",
        );
    }
    m
}

pub fn read_client(
    diags: &mut Diags,
    t: &[(String, Located)],
    fb: Span,
) -> (ClientM, Option<Located>) {
    check_table_keys(diags, t, CLIENT_KEYS, "client", fb);
    let mut m = ClientM {
        connect_timeout: Duration::from_secs(3),
        pool_idle_timeout: Duration::from_secs(1), // ClientSettings::DEFAULT
        tcp_keepalive: Duration::from_secs(30),
        pool_max_idle_per_host: 32,
    };
    let mut connect_at = None;
    for (k, v) in t {
        match k.as_str() {
            "connect_timeout" | "pool_idle_timeout" | "tcp_keepalive" => {
                if let Some(d) = duration(diags, v, fb, k) {
                    if d.is_zero() {
                        err(diags, v, fb, format!("{k} must be longer than zero"));
                    }
                    match k.as_str() {
                        "connect_timeout" => {
                            m.connect_timeout = d;
                            connect_at = Some(v.clone());
                        }
                        "pool_idle_timeout" => m.pool_idle_timeout = d,
                        _ => m.tcp_keepalive = d,
                    }
                }
            }
            "pool_max_idle_per_host" => {
                if let Some(n) = integer(diags, v, fb, k) {
                    m.pool_max_idle_per_host = n.min(u64::from(u32::MAX)) as u32;
                }
            }
            _ => {}
        }
    }
    (m, connect_at)
}

fn fmt_d(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{d:?}")
    }
}

fn section_table<'c>(
    diags: &mut Diags,
    config: Option<&'c Config>,
    kind: &str,
    name: &str,
    origin: &Origin,
    fb: Span,
) -> Option<&'c crate::config::Table> {
    let found = config.and_then(|c| c.section(kind).get(name));
    if found.is_none() && !config.is_some_and(|c| c.unparsed) {
        let at = Located {
            value: crate::value::Value::Str(name.to_owned()),
            origin: origin.clone(),
        };
        let msg = match config {
            None => format!(
                "unknown {kind} `{name}`: there is no resilience.toml to define [{kind}s.{name}]"
            ),
            Some(c) => {
                let known: Vec<&str> = c.section(kind).keys().map(String::as_str).collect();
                let hint = did_you_mean(name, &known)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                format!(
                    "unknown {kind} `{name}`: {} has no [{kind}s.{name}]{hint}",
                    c.display
                )
            }
        };
        err(diags, &at, fb, msg);
    }
    found
}

/// Resolves the budget/breaker/bulkhead/client references of the settings.
pub fn resolve_shared(
    diags: &mut Diags,
    s: &Settings,
    config: Option<&Config>,
    function_name: &str,
    fb: Span,
) -> Shared {
    let mut shared = Shared::default();
    // Inline tables define state private to the function unless they give `name`.
    let inline_name = |t: &[(String, Located)]| -> (String, Vec<(String, Located)>) {
        let mut name = function_name.to_owned();
        let mut rest = Vec::new();
        for (k, v) in t {
            if k == "name"
                && let Some(n) = v.as_text()
            {
                name = n.to_owned();
                continue;
            }
            rest.push((k.clone(), v.clone()));
        }
        (name, rest)
    };
    match &s.budget.value {
        StateRef::Off => {}
        StateRef::Default => {
            shared.budget = Some((
                String::new(),
                BudgetM {
                    ratio: 0.1,
                    min_per_sec: 10,
                },
            ))
        }
        StateRef::Named(n) => {
            if let Some(t) = section_table(diags, config, "budget", n, &s.budget.origin, fb) {
                shared.budget = Some((n.clone(), read_budget(diags, &t.entries, fb)));
            }
        }
        StateRef::Inline(t) => {
            let (n, rest) = inline_name(t);
            shared.budget = Some((n, read_budget(diags, &rest, fb)));
        }
    }
    match &s.breaker.value {
        StateRef::Off | StateRef::Default => {}
        StateRef::Named(n) => {
            if let Some(t) = section_table(diags, config, "breaker", n, &s.breaker.origin, fb) {
                shared.breaker = Some((n.clone(), read_breaker(diags, &t.entries, fb)));
            }
        }
        StateRef::Inline(t) => {
            let (n, rest) = inline_name(t);
            shared.breaker = Some((n, read_breaker(diags, &rest, fb)));
        }
    }
    match &s.bulkhead.value {
        StateRef::Off | StateRef::Default => {}
        StateRef::Named(n) => {
            if let Some(t) = section_table(diags, config, "bulkhead", n, &s.bulkhead.origin, fb) {
                shared.bulkhead =
                    Some((n.clone(), read_bulkhead(diags, &t.entries, &t.origin, fb)));
            }
        }
        StateRef::Inline(t) => {
            let (n, rest) = inline_name(t);
            shared.bulkhead = Some((n, read_bulkhead(diags, &rest, &s.bulkhead.origin, fb)));
        }
    }
    if let Some(c) = &s.client
        && let Some(t) = section_table(diags, config, "client", &c.value, &c.origin, fb)
    {
        let (m, connect_at) = read_client(diags, &t.entries, fb);
        if m.connect_timeout >= s.timeout.value {
            let at = connect_at.unwrap_or(Located {
                value: crate::value::Value::Bool(true),
                origin: c.origin.clone(),
            });
            // A file value has no tokens: point at the `client = "…"` that brings it in.
            err(
                diags,
                &at,
                c.origin.span_or(fb),
                format!(
                    "connect_timeout ({}) of client `{}` is not shorter than the attempt timeout ({}, {}): a connect \
                         timeout would then look like a read timeout, and a request that was never sent could not be retried safely",
                    fmt_d(m.connect_timeout),
                    c.value,
                    fmt_d(s.timeout.value),
                    s.timeout.origin
                ),
            );
        }
    }
    shared
}

/// The method the policy is about, explicit or inferred.
/// A declared method may not be safer than one the body visibly sends: `method = GET` on a body
/// that calls `.post(` would switch the unsafe-retry rule off.
pub fn check_declared_method(
    diags: &mut Diags,
    s: &Settings,
    inferred: Option<&Inferred>,
    fb: Span,
) {
    if let (Some(declared), Some(found)) = (&s.method, inferred)
        && found.method.risk() > declared.value.risk()
    {
        diags.push(
            declared.origin.span_or(fb),
            format!(
                "{}method = {} ({}), but the body sends a {} (`{}`): the policy would treat it as safer than it is\n\
                 help: declare `method = {}`",
                file_prefix(&declared.origin),
                declared.value.name(),
                declared.origin,
                found.method.name(),
                found.from,
                found.method.name()
            ),
        );
    }
}

pub fn effective_method(s: &Settings, inferred: Option<&Inferred>) -> Option<Set<Method>> {
    s.method.clone().or_else(|| {
        inferred.map(|i| Set {
            value: i.method,
            origin: Origin::Inferred {
                from: i.from.clone(),
                span: i.span,
            },
        })
    })
}

/// Checks the policy itself. `fb` is where errors about file values point.
pub fn check_policy(diags: &mut Diags, s: &Settings, method: Option<&Set<Method>>, fb: Span) {
    let here = |o: &Origin| o.span_or(fb);
    if s.timeout.value.is_zero() {
        diags.push(
            here(&s.timeout.origin),
            format!(
                "{}timeout must be longer than zero",
                file_prefix(&s.timeout.origin)
            ),
        );
    }
    if s.timeout.value > s.deadline.value {
        let culprit = if s.timeout.origin.is_inline() || !s.deadline.origin.is_inline() {
            &s.timeout
        } else {
            &s.deadline
        };
        let origin = &culprit.origin;
        diags.push(
            here(origin),
            format!(
                "{}timeout ({}, {}) is longer than the deadline ({}, {}): the first attempt could never use its full timeout\n\
                 help: make the deadline at least the timeout, e.g. deadline = \"{}\"",
                file_prefix(origin),
                fmt_d(s.timeout.value),
                s.timeout.origin,
                fmt_d(s.deadline.value),
                s.deadline.origin,
                fmt_d(s.timeout.value * s.max_attempts.value.max(1))
            ),
        );
    }
    let b = &s.backoff;
    if b.initial.value > b.max.value {
        let origin = if b.initial.origin.is_inline() {
            &b.initial.origin
        } else {
            &b.max.origin
        };
        diags.push(
            here(origin),
            format!(
                "{}backoff initial ({}, {}) is longer than its max ({}, {})",
                file_prefix(origin),
                fmt_d(b.initial.value),
                b.initial.origin,
                fmt_d(b.max.value),
                b.max.origin
            ),
        );
    }
    for item in &s.retry_on.value {
        if let RetryItem::Status(code) = item.value
            && !transient_status(code)
        {
            diags.push(
                    here(&item.origin),
                    format!(
                        "{}status {code} is permanent: sending the same request again gets the same answer\n\
                         help: retry_on takes connect, reset, timeout, 408, 429 and 5xx statuses",
                        file_prefix(&item.origin)
                    ),
                );
        }
    }
    let retries = s.max_attempts.value > 1;
    let ambiguous: Vec<&Set<RetryItem>> = s
        .retry_on
        .value
        .iter()
        .filter(|i| i.value != RetryItem::Connect)
        .collect();
    let keyed = s.idempotency_key.value != KeyModel::None;
    match method {
        None if retries && !ambiguous.is_empty() => {
            diags.push(
                fb,
                "cannot tell which HTTP method this function sends, so cannot tell whether retrying it is safe\n\
                 help: add `method = GET` (or POST, PUT, …), or call `.get(`/`.post(`/… on the client in the body",
            );
        }
        None => {}
        Some(m) => {
            if s.idempotent.value && m.value.needs_key() {
                diags.push(
                    here(&s.idempotent.origin),
                    format!(
                        "{}`idempotent` does not make a {} safe to resend: a network failure cannot tell \"not received\" \
                         from \"done, answer lost\"\nhelp: use `idempotency_key = auto` and have the server replay by key",
                        file_prefix(&s.idempotent.origin),
                        m.value.name()
                    ),
                );
            }
            let may_resend =
                m.value.is_safe() || keyed || (!m.value.needs_key() && s.idempotent.value);
            if retries && !ambiguous.is_empty() && !may_resend {
                unsafe_retry(diags, s, m, &ambiguous, fb);
            }
        }
    }
}

fn unsafe_retry(
    diags: &mut Diags,
    s: &Settings,
    m: &Set<Method>,
    ambiguous: &[&Set<RetryItem>],
    fb: Span,
) {
    let name = m.value.name();
    let classes: Vec<String> = ambiguous.iter().map(|i| i.value.render()).collect();
    let mut msg = format!(
        "this {name} could be retried after it may have reached the server, without an idempotency key: \
         a retry could apply it twice\n"
    );
    msg.push_str(&format!("  - method = {name} ({})\n", m.origin));
    let retry_origin = ambiguous
        .first()
        .map(|i| &i.origin)
        .unwrap_or(&s.retry_on.origin);
    msg.push_str(&format!(
        "  - retry_on includes {} ({}): failures after which the request may have arrived\n",
        classes.join(", "),
        match (&s.retry_on.origin, retry_origin) {
            (Origin::Builtin, _) => "built-in default".to_owned(),
            (o, _) => o.to_string(),
        }
    ));
    msg.push_str(&format!(
        "  - max_attempts = {} ({})\n",
        s.max_attempts.value, s.max_attempts.origin
    ));
    msg.push_str(&format!(
        "  - idempotency_key: none ({})\n",
        s.idempotency_key.origin
    ));
    if !m.value.needs_key() {
        msg.push_str(&format!(
            "  - idempotent = false ({})\n",
            s.idempotent.origin
        ));
    }
    msg.push_str("help: fix it with one of:\n");
    msg.push_str("  - `idempotency_key = auto` (and a server that replays by key)\n");
    msg.push_str("  - `retry_on = [connect]`: retry only failures where nothing was sent\n");
    msg.push_str("  - `max_attempts = 1`: no retry");
    if !m.value.needs_key() {
        msg.push_str(&format!(
            "\n  - `idempotent`: you assert the server applies this {name} at most once"
        ));
    }
    // Point at the setting the user wrote that makes it unsafe; else at the inferred method.
    let span = [&s.retry_on.origin, &s.max_attempts.origin, &m.origin]
        .into_iter()
        .find(|o| !matches!(o, Origin::Builtin | Origin::File { .. }))
        .map(|o| o.span_or(fb))
        .unwrap_or(fb);
    diags.push(span, msg);
}

/// The function itself: async, returns a Result, parameters usable on a retry.
pub fn check_function(diags: &mut Diags, f: &syn::ItemFn, s: &Settings) {
    if f.sig.asyncness.is_none() {
        diags.push(
            f.sig.fn_token.span,
            "#[resilient] goes on an `async fn`: the attempts are awaited with timeouts",
        );
    }
    match &f.sig.output {
        syn::ReturnType::Default => diags.push(
            f.sig.ident.span(),
            "#[resilient] needs a function returning `Result<T, E>`, so failures can be retried and reported",
        ),
        syn::ReturnType::Type(_, ty) => {
            let ok = matches!(&**ty, syn::Type::Path(p) if p.path.segments.last().is_some_and(|seg| seg.ident.to_string().ends_with("Result")));
            if !ok {
                diags.push(ty.span(), "#[resilient] needs a function returning `Result<T, E>`");
            }
        }
    }
    if s.max_attempts.value > 1 {
        for input in &f.sig.inputs {
            match input {
                syn::FnArg::Receiver(r) if matches!(r.kind, syn::ReceiverKind::Value) => diags.push(
                    r.self_token.span,
                    "a retried method cannot take `self` by value: each attempt needs it again\nhelp: take `&self`, or set max_attempts = 1",
                ),
                syn::FnArg::Typed(pt)
                    if !matches!(&*pt.pat, syn::Pat::Ident(_) | syn::Pat::Wild(_))
                        && !matches!(&*pt.ty, syn::Type::Reference(_)) =>
                {
                    diags.push(
                        pt.pat.span(),
                        "a retried function needs a plain name for a by-value parameter, to clone it for each attempt\n\
                         help: bind it to a name and destructure it in the body",
                    );
                }
                _ => {}
            }
        }
    }
    if let KeyModel::Param(path) = &s.idempotency_key.value {
        let root = path.split('.').next().unwrap_or_default();
        let params: Vec<String> = f
            .sig
            .inputs
            .iter()
            .filter_map(|i| match i {
                syn::FnArg::Typed(pt) => match &*pt.pat {
                    syn::Pat::Ident(pi) => Some(pi.ident.to_string()),
                    _ => None,
                },
                syn::FnArg::Receiver(_) => Some("self".to_owned()),
            })
            .collect();
        if !params.iter().any(|p| p == root) {
            let hint = did_you_mean(root, &params.iter().map(String::as_str).collect::<Vec<_>>())
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            diags.push(
                s.idempotency_key.origin.span_or(f.sig.ident.span()),
                format!(
                    "idempotency_key names `{root}`, which is not a parameter of `{}`{hint}\nhelp: use `auto` for a fresh key per call, or the name of a parameter holding the key",
                    f.sig.ident
                ),
            );
        }
    }
}
