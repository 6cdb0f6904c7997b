//! The compile-time rules. Each is an error at the offending tokens with a note on how to fix it.

use std::time::Duration;

use proc_macro2::Span;
use quote::ToTokens as _;
use resilience_spec::packed::PackedBreaker;
use syn::spanned::Spanned as _;

use crate::config::Config;
use crate::diag::Diags;
use crate::infer::Inferred;
use crate::model::{
    BREAKER_KEYS, BUDGET_KEYS, BULKHEAD_KEYS, BackoffKind, CLIENT_KEYS, CONCURRENCY_KEYS, KeyModel,
    Method, RATE_LIMIT_KEYS, RetryItem, Set, Settings, StateRef, check_table_keys, duration, err,
    file_prefix, integer, number,
};
use crate::value::{Located, Origin, did_you_mean};

#[derive(Debug, Clone, Copy)]
pub struct BudgetM {
    pub ratio: f64,
    pub min_per_sec: u32,
}

#[derive(Debug, Clone)]
pub struct BreakerM {
    /// The settings, as the runtime is handed them.
    pub spec: PackedBreaker,
    /// Where `slow_call_duration` was set, for the message about the timeout.
    pub slow_at: Option<Located>,
}

#[derive(Debug, Clone, Copy)]
pub struct BulkheadM {
    pub max_concurrent: u32,
    pub max_wait: Duration,
}

/// Where a rate limit's state lives.
pub use resilience_spec::packed::RateStore as RateStoreM;

/// A rate limit: what the runtime is handed, as is.
pub use resilience_spec::packed::PackedRateLimit as RateLimitM;

/// An adaptive concurrency limit (AIMD, the one kind so far): what the runtime is handed, as is.
pub use resilience_spec::packed::PackedConcurrency as ConcurrencyM;

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
    pub rate_limit: Option<(String, RateLimitM)>,
    pub concurrency: Option<(String, ConcurrencyM)>,
    /// The connect timeout of the `client = "NAME"` named, which the attempt timeout must
    /// exceed (checked here, and again against a run-time override of the timeout).
    pub connect_timeout: Option<Duration>,
}

use resilience_spec::{defaults, rules};

/// Reads the settings of a budget/breaker/bulkhead/client table (defaults for missing keys).
pub fn read_budget(diags: &mut Diags, t: &[(String, Located)], fb: Span) -> BudgetM {
    check_table_keys(diags, t, BUDGET_KEYS, "budget", fb);
    let mut m = BudgetM {
        ratio: defaults::BUDGET_RATIO,
        min_per_sec: defaults::BUDGET_MIN_PER_SEC,
    };
    for (k, v) in t {
        match k.as_str() {
            "ratio" => match number(diags, v, fb, k).map(|x| (x, rules::budget_ratio(x))) {
                Some((x, Ok(()))) => m.ratio = x,
                Some((_, Err(b))) => err(diags, v, fb, b),
                None => {}
            },
            "min_per_sec" => {
                match integer(diags, v, fb, k).map(|n| (n, rules::budget_min_per_sec(n))) {
                    Some((n, Ok(()))) => m.min_per_sec = n as u32,
                    Some((_, Err(b))) => err(diags, v, fb, b),
                    None => {}
                }
            }
            _ => {}
        }
    }
    m
}

pub fn read_breaker(diags: &mut Diags, t: &[(String, Located)], fb: Span) -> BreakerM {
    check_table_keys(diags, t, BREAKER_KEYS, "breaker", fb);
    let mut m = BreakerM {
        spec: PackedBreaker {
            failure_rate: defaults::BREAKER_FAILURE_RATE,
            min_calls: defaults::BREAKER_MIN_CALLS,
            window: defaults::BREAKER_WINDOW,
            open_for: defaults::BREAKER_OPEN_FOR,
            half_open_calls: defaults::BREAKER_HALF_OPEN_CALLS,
            window_for: defaults::BREAKER_WINDOW_FOR,
            slow_call_duration: defaults::BREAKER_SLOW_CALL_DURATION,
            slow_call_rate: defaults::BREAKER_SLOW_CALL_RATE,
        },
        slow_at: None,
    };
    let (mut min_calls_at, mut window_at, mut rate_at) = (None, None, None);
    for (k, v) in t {
        match k.as_str() {
            "failure_rate" => {
                match number(diags, v, fb, k).map(|x| (x, rules::breaker_failure_rate(x))) {
                    Some((x, Ok(()))) => m.spec.failure_rate = x,
                    Some((_, Err(b))) => err(diags, v, fb, b),
                    None => {}
                }
            }
            "min_calls" | "window" | "half_open_calls" => match integer(diags, v, fb, k) {
                Some(n) if rules::breaker_count(k, n).is_ok() => {
                    let n = n as u32;
                    match k.as_str() {
                        "min_calls" => {
                            m.spec.min_calls = n;
                            min_calls_at = Some(v.clone());
                        }
                        "window" => {
                            m.spec.window = n;
                            window_at = Some(v.clone());
                        }
                        _ => m.spec.half_open_calls = n,
                    }
                }
                Some(n) => err(diags, v, fb, rules::breaker_count(k, n).unwrap_err()),
                None => {}
            },
            "slow_call_rate" => {
                match number(diags, v, fb, k).map(|x| (x, rules::breaker_slow_call_rate(x))) {
                    Some((x, Ok(()))) => {
                        m.spec.slow_call_rate = x;
                        rate_at = Some(v.clone());
                    }
                    Some((_, Err(b))) => err(diags, v, fb, b),
                    None => {}
                }
            }
            "window_for" => {
                if let Some(d) = duration(diags, v, fb, k) {
                    match rules::breaker_window_for(d) {
                        Ok(()) => m.spec.window_for = d,
                        Err(b) => err(diags, v, fb, b),
                    }
                }
            }
            "slow_call_duration" => {
                if let Some(d) = duration(diags, v, fb, k) {
                    if d.is_zero() {
                        err(diags, v, fb, "slow_call_duration must be longer than zero");
                    } else {
                        m.spec.slow_call_duration = d;
                        m.slow_at = Some(v.clone());
                    }
                }
            }
            "open_for" => {
                if let Some(d) = duration(diags, v, fb, k) {
                    if d.is_zero() {
                        err(diags, v, fb, "open_for must be longer than zero");
                    } else {
                        m.spec.open_for = d;
                    }
                }
            }
            _ => {}
        }
    }
    // Slowness is watched only with a duration to call slow: a rate alone would be ignored.
    if let Some(at) = &rate_at
        && m.slow_at.is_none()
    {
        err(
            diags,
            at,
            fb,
            "slow_call_rate is set, but no slow_call_duration says what a slow call is: the rate would be ignored\nhelp: add slow_call_duration (shorter than the timeout), or remove slow_call_rate",
        );
    }
    if !m.spec.window_for.is_zero() {
        // A time-based window holds however many calls the time brings: a `window` written
        // beside it would be silently ignored.
        if let Some(at) = &window_at {
            err(
                diags,
                at,
                fb,
                "a breaker takes `window` (calls) or `window_for` (a time), not both: this `window` would be ignored",
            );
        }
    } else if let Err(broken) = rules::breaker_min_calls(m.spec.min_calls, m.spec.window) {
        // At `min_calls` when written, else at the `window` written below its default.
        let at = min_calls_at.clone().or(window_at).unwrap_or_else(|| {
            t.first().map(|(_, v)| v.clone()).unwrap_or(Located {
                value: crate::value::Value::Bool(true),
                origin: Origin::Builtin,
            })
        });
        let mut broken = broken;
        if min_calls_at.is_none() {
            broken.help = Some(format!(
                "min_calls is {} by default: write `min_calls` at most the window",
                defaults::BREAKER_MIN_CALLS
            ));
        }
        err(diags, &at, fb, broken);
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
                Some(n) if rules::bulkhead_max_concurrent(n).is_ok() => {
                    m.max_concurrent = n as u32;
                    seen_max = true;
                }
                Some(n) => err(diags, v, fb, rules::bulkhead_max_concurrent(n).unwrap_err()),
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

/// `at` is where the table is, for a missing `rate`. Also returns where `max_wait` was set.
pub fn read_rate_limit(
    diags: &mut Diags,
    t: &[(String, Located)],
    at: &Origin,
    fb: Span,
) -> (RateLimitM, Option<Located>) {
    check_table_keys(diags, t, RATE_LIMIT_KEYS, "rate_limit", fb);
    let mut m = RateLimitM {
        rate: 0,
        per: defaults::RATE_LIMIT_PER,
        burst: 0,
        max_wait: defaults::RATE_LIMIT_MAX_WAIT,
        store: RateStoreM::Local,
    };
    let (mut seen_rate, mut wait_at) = (false, None);
    for (k, v) in t {
        match k.as_str() {
            "rate" | "burst" => match integer(diags, v, fb, k) {
                Some(n) => match rules::rate_limit_count(k, n) {
                    Ok(()) if k == "rate" => {
                        m.rate = n as u32;
                        seen_rate = true;
                    }
                    Ok(()) => m.burst = n as u32,
                    Err(b) => {
                        seen_rate |= k == "rate";
                        err(diags, v, fb, b)
                    }
                },
                None => seen_rate |= k == "rate",
            },
            "per" => {
                if let Some(d) = duration(diags, v, fb, k) {
                    match rules::rate_limit_per(d) {
                        Ok(()) => m.per = d,
                        Err(b) => err(diags, v, fb, b),
                    }
                }
            }
            "max_wait" => {
                if let Some(d) = duration(diags, v, fb, k) {
                    m.max_wait = d;
                    wait_at = Some(v.clone());
                }
            }
            "store" => match v.as_text() {
                Some("local") => m.store = RateStoreM::Local,
                Some("redis") => m.store = RateStoreM::Redis,
                _ => err(
                    diags,
                    v,
                    fb,
                    format!(
                        "rate_limit store is \"local\" (each instance its own limit) or \"redis\" (one limit shared by every instance), not {}",
                        v.render()
                    ),
                ),
            },
            _ => {}
        }
    }
    if !seen_rate {
        let at = Located {
            value: crate::value::Value::Bool(true),
            origin: at.clone(),
        };
        err(
            diags,
            &at,
            fb,
            "a rate_limit needs `rate`: how many calls may start per `per` (default 1s)\nhelp: e.g. rate_limit(rate = 100, burst = 10)",
        );
    }
    if m.burst == 0 {
        m.burst = m.rate.max(1);
    }
    (m, wait_at)
}

/// Where a concurrency limit's `latency` and `max_wait` were set, for the checks against the
/// timeout and the deadline.
pub struct ConcurrencyAt {
    pub latency: Option<Located>,
    pub max_wait: Option<Located>,
}

/// `at` is where the table is, for a missing `latency` and for min/initial/max out of order.
pub fn read_concurrency(
    diags: &mut Diags,
    t: &[(String, Located)],
    at: &Origin,
    fb: Span,
) -> (ConcurrencyM, ConcurrencyAt) {
    check_table_keys(diags, t, CONCURRENCY_KEYS, "concurrency_limit", fb);
    let mut m = ConcurrencyM {
        initial: defaults::CONCURRENCY_INITIAL,
        min: defaults::CONCURRENCY_MIN,
        max: defaults::CONCURRENCY_MAX,
        latency: Duration::ZERO,
        backoff: defaults::CONCURRENCY_BACKOFF,
        max_wait: defaults::CONCURRENCY_MAX_WAIT,
    };
    let mut found = ConcurrencyAt {
        latency: None,
        max_wait: None,
    };
    let (mut counts_ok, mut seen_latency) = (true, false);
    let table = Located {
        value: crate::value::Value::Bool(true),
        origin: at.clone(),
    };
    for (k, v) in t {
        match k.as_str() {
            "kind" => match v.as_text() {
                Some("aimd") => {}
                _ => err(
                    diags,
                    v,
                    fb,
                    format!(
                        "concurrency_limit kind is \"aimd\" (additive increase on fast answers, multiplicative decrease on overload), not {}",
                        v.render()
                    ),
                ),
            },
            "initial" | "min" | "max" => match integer(diags, v, fb, k) {
                Some(n) => match rules::concurrency_count(k, n) {
                    Ok(()) => {
                        let n = n as u32;
                        match k.as_str() {
                            "initial" => m.initial = n,
                            "min" => m.min = n,
                            _ => m.max = n,
                        }
                    }
                    Err(b) => {
                        counts_ok = false;
                        err(diags, v, fb, b)
                    }
                },
                None => counts_ok = false,
            },
            "latency" => {
                seen_latency = true;
                if let Some(d) = duration(diags, v, fb, k) {
                    m.latency = d;
                    found.latency = Some(v.clone());
                }
            }
            "backoff" => {
                if let Some(x) = number(diags, v, fb, k) {
                    match rules::concurrency_backoff(x) {
                        Ok(()) => m.backoff = x,
                        Err(b) => err(diags, v, fb, b),
                    }
                }
            }
            "max_wait" => {
                if let Some(d) = duration(diags, v, fb, k) {
                    m.max_wait = d;
                    found.max_wait = Some(v.clone());
                }
            }
            _ => {}
        }
    }
    if !seen_latency {
        err(
            diags,
            &table,
            fb,
            "a concurrency_limit needs `latency`: an answer at least this slow counts as overload and lowers the limit\nhelp: the latency a healthy dependency stays under, e.g. concurrency_limit(latency = \"200ms\")",
        );
    }
    if counts_ok && let Err(b) = rules::concurrency_order(m.min, m.initial, m.max) {
        err(diags, &table, fb, b);
    }
    (m, found)
}

pub fn read_client(
    diags: &mut Diags,
    t: &[(String, Located)],
    fb: Span,
) -> (ClientM, Option<Located>) {
    check_table_keys(diags, t, CLIENT_KEYS, "client", fb);
    let mut m = ClientM {
        connect_timeout: defaults::CONNECT_TIMEOUT,
        pool_idle_timeout: defaults::POOL_IDLE_TIMEOUT,
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
                        _ => {
                            // The system takes whole seconds (a fraction is dropped: `500ms`
                            // would be 0) up to Linux's 32767; a value it refuses leaves the
                            // socket on its 2-hour default, with a warning in a log at most.
                            // (Zero, refused above, is whole seconds.)
                            let why = if d.subsec_nanos() == 0 && d <= Duration::from_secs(32_767) {
                                None
                            } else if d < Duration::from_secs(1) || d >= Duration::from_secs(32_768)
                            {
                                Some("the system would refuse it and keep its 2-hour default")
                            } else {
                                Some("the fraction of a second would be dropped")
                            };
                            if let Some(why) = why {
                                err(
                                    diags,
                                    v,
                                    fb,
                                    format!(
                                        "tcp_keepalive is set in whole seconds, from 1s to 32767s (Linux's limit): {}: {why}",
                                        fmt_d(d)
                                    ),
                                );
                            }
                            m.tcp_keepalive = d;
                        }
                    }
                }
            }
            "pool_max_idle_per_host" => {
                if let Some(n) = integer(diags, v, fb, k) {
                    match u32::try_from(n) {
                        Ok(n) => m.pool_max_idle_per_host = n,
                        Err(_) => err(
                            diags,
                            v,
                            fb,
                            format!("pool_max_idle_per_host must be at most {}", u32::MAX),
                        ),
                    }
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

/// Resolves the budget/breaker/bulkhead/client references of the settings, and checks the
/// rules between those sections and the settings (a breaker's slow call within the timeout, a
/// client's connect timeout shorter than it, a wait within the deadline).
pub fn resolve_shared(
    diags: &mut Diags,
    s: &Settings,
    config: Option<&Config>,
    fb: Span,
) -> Shared {
    resolve_shared_with(diags, s, config, fb, true)
}

/// Reads the sections the settings name, without the rules between them and the settings:
/// for a policy only part of what its functions run (`[defaults]`, a policy a function uses
/// and completes inline), where those rules are the compiler's to check, function by
/// function, with what each adds.
pub fn read_shared_sections(diags: &mut Diags, s: &Settings, config: Option<&Config>, fb: Span) {
    resolve_shared_with(diags, s, config, fb, false);
}

fn resolve_shared_with(
    diags: &mut Diags,
    s: &Settings,
    config: Option<&Config>,
    fb: Span,
    cross: bool,
) -> Shared {
    let mut shared = Shared::default();
    // Inline tables define state private to the function unless they give `name`: the empty
    // name tells the runtime to keep it in the function's own static, shared with nobody.
    let inline_name = |t: &[(String, Located)]| -> (String, Vec<(String, Located)>) {
        let mut name = String::new();
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
    if let Some((name, b)) = &shared.breaker
        && cross
        && let Err(broken) =
            rules::slow_call_within_timeout(b.spec.slow_call_duration, s.timeout.value)
    {
        let at = blame(
            b.slow_at.clone().unwrap_or(Located {
                value: crate::value::Value::Bool(true),
                origin: s.breaker.origin.clone(),
            }),
            &s.timeout.origin,
        );
        let mut what = format!(
            "{} (breaker {}: slow_call_duration from {}, timeout from {})",
            broken.what,
            if name.is_empty() {
                "inline"
            } else {
                name.as_str()
            },
            at.origin,
            s.timeout.origin
        );
        if let Some(h) = broken.help {
            what.push_str(&format!("\nhelp: {h}"));
        }
        err(diags, &at, s.breaker.origin.span_or(fb), what);
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
    let rate = match &s.rate_limit.value {
        StateRef::Off | StateRef::Default => None,
        StateRef::Named(n) => {
            section_table(diags, config, "rate_limit", n, &s.rate_limit.origin, fb)
                .map(|t| (n.clone(), read_rate_limit(diags, &t.entries, &t.origin, fb)))
        }
        StateRef::Inline(t) => {
            let (n, rest) = inline_name(t);
            Some((n, read_rate_limit(diags, &rest, &s.rate_limit.origin, fb)))
        }
    };
    if let Some((n, (m, wait_at))) = rate {
        let wait_origin = wait_at
            .as_ref()
            .map_or_else(|| "built-in default".to_owned(), |w| w.origin.to_string());
        if cross
            && let Err(broken) = rules::rate_limit_wait_within_deadline(
                m.max_wait,
                s.deadline.value,
                Some((&wait_origin, &s.deadline.origin.to_string())),
            )
        {
            let at = wait_at.unwrap_or(Located {
                value: crate::value::Value::Bool(true),
                origin: s.rate_limit.origin.clone(),
            });
            let at = blame(at, &s.deadline.origin);
            err(diags, &at, s.rate_limit.origin.span_or(fb), broken);
        }
        shared.rate_limit = Some((n, m));
    }
    let concurrency = match &s.concurrency_limit.value {
        StateRef::Off | StateRef::Default => None,
        StateRef::Named(n) => section_table(
            diags,
            config,
            "concurrency_limit",
            n,
            &s.concurrency_limit.origin,
            fb,
        )
        .map(|t| {
            (
                n.clone(),
                read_concurrency(diags, &t.entries, &t.origin, fb),
            )
        }),
        StateRef::Inline(t) => {
            let (n, rest) = inline_name(t);
            Some((
                n,
                read_concurrency(diags, &rest, &s.concurrency_limit.origin, fb),
            ))
        }
    };
    if let Some((n, (m, found))) = concurrency {
        let here = Located {
            value: crate::value::Value::Bool(true),
            origin: s.concurrency_limit.origin.clone(),
        };
        let span = s.concurrency_limit.origin.span_or(fb);
        if cross && shared.bulkhead.is_some() {
            let mut b = rules::concurrency_not_with_bulkhead();
            b.what = format!(
                "{} (bulkhead from {}, concurrency_limit from {})",
                b.what, s.bulkhead.origin, s.concurrency_limit.origin
            );
            err(diags, &here, span, b);
        }
        if let Some(l) = &found.latency
            && cross
            && let Err(broken) = rules::concurrency_latency_within_timeout(
                m.latency,
                s.timeout.value,
                Some((&l.origin.to_string(), &s.timeout.origin.to_string())),
            )
        {
            err(diags, &blame(l.clone(), &s.timeout.origin), span, broken);
        }
        let wait_origin = found
            .max_wait
            .as_ref()
            .map_or_else(|| "built-in default".to_owned(), |w| w.origin.to_string());
        if cross
            && let Err(broken) = rules::concurrency_wait_within_deadline(
                m.max_wait,
                s.deadline.value,
                Some((&wait_origin, &s.deadline.origin.to_string())),
            )
        {
            err(
                diags,
                &blame(
                    found.max_wait.clone().unwrap_or_else(|| here.clone()),
                    &s.deadline.origin,
                ),
                span,
                broken,
            );
        }
        shared.concurrency = Some((n, m));
    }
    if let Some(c) = &s.client
        && let Some(t) = section_table(diags, config, "client", &c.value, &c.origin, fb)
    {
        let (m, connect_at) = read_client(diags, &t.entries, fb);
        shared.connect_timeout = Some(m.connect_timeout);
        if cross && m.connect_timeout >= s.timeout.value {
            // Not set in the section: the default's, not the `client = "…"` line's.
            let connect_origin = match &connect_at {
                Some(at) => at.origin.to_string(),
                None => format!("the default: [clients.{}] sets none", c.value),
            };
            let connect = connect_at.unwrap_or(Located {
                value: crate::value::Value::Bool(true),
                origin: c.origin.clone(),
            });
            let at = blame(connect, &s.timeout.origin);
            // A file value has no tokens: point at the `client = "…"` that brings it in.
            err(
                diags,
                &at,
                c.origin.span_or(fb),
                format!(
                    "connect_timeout ({}, {connect_origin}) of client `{}` is not shorter than the attempt timeout ({}, {}): a connect \
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

/// Where a rule between two settings is told: at `here` (the setting it is read at), unless
/// that comes from a file and the other (`other`) is written inline: the user's own token is
/// what they can change at once (`deadline = "150ms"` against a file's `max_wait`).
fn blame(here: Located, other: &Origin) -> Located {
    if !here.origin.is_inline() && other.is_inline() {
        Located {
            value: crate::value::Value::Bool(true),
            origin: other.clone(),
        }
    } else {
        here
    }
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
                declared.value.as_str(),
                declared.origin,
                found.method.as_str(),
                found.from,
                found.method.as_str()
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
    // A constant backoff waits `initial` every time: its `max` is never used.
    if b.initial.value > b.max.value && b.kind.value != BackoffKind::Constant {
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
    // A backoff no retry can begin within the deadline after: the retries written are never
    // made. At the backoff written in the attribute, else the deadline or the retries there;
    // else at the first of them a file set (its place named in the message).
    let first_wait = rules::shortest_first_backoff(
        b.kind.value == BackoffKind::Constant,
        b.initial.value,
        b.max.value,
        b.jitter.value.packed(),
    );
    if let Err(broken) = rules::backoff_within_deadline(
        first_wait,
        s.max_attempts.value,
        s.deadline.value,
        Some((
            &b.initial.origin.to_string(),
            &s.deadline.origin.to_string(),
        )),
    ) {
        let origins = [
            &b.initial.origin,
            &b.jitter.origin,
            &b.kind.origin,
            &s.deadline.origin,
            &s.max_attempts.origin,
        ];
        let origin = origins
            .into_iter()
            .find(|o| o.is_inline())
            .or_else(|| {
                origins
                    .into_iter()
                    .find(|o| matches!(o, Origin::File { .. }))
            })
            .unwrap_or(&b.initial.origin);
        diags.push(here(origin), format!("{}{broken}", file_prefix(origin)));
    }
    for item in &s.retry_on.value {
        if let RetryItem::Status(code) = item.value
            && let Err(broken) = rules::retryable_status(code)
        {
            diags.push(
                here(&item.origin),
                format!("{}{broken}", file_prefix(&item.origin)),
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
        None => {
            if let Err(broken) =
                rules::method_known(false, s.max_attempts.value, !ambiguous.is_empty())
            {
                // At the retry written in the attribute, which makes it a question; at the
                // function when the retry comes from the defaults or a file.
                let at = [&s.max_attempts.origin, &s.retry_on.origin]
                    .into_iter()
                    .find(|o| o.is_inline())
                    .map_or(fb, |o| o.span_or(fb));
                diags.push(at, broken.to_string());
            }
        }
        Some(m) => {
            if let Err(broken) = rules::idempotent_method(m.value, s.idempotent.value) {
                diags.push(
                    here(&s.idempotent.origin),
                    format!("{}{broken}", file_prefix(&s.idempotent.origin)),
                );
            }
            let may_resend = resilience_spec::may_resend(m.value, keyed, s.idempotent.value);
            if retries && !ambiguous.is_empty() && !may_resend {
                unsafe_retry(diags, s, m, &ambiguous, fb);
            }
        }
    }
}

/// Hedging: only where a duplicate is harmless, and every hedge within the deadline.
pub fn check_hedge(diags: &mut Diags, s: &Settings, method: Option<&Set<Method>>, fb: Span) {
    let Some(h) = &s.hedge.value else {
        return;
    };
    let at = s.hedge.origin.span_or(fb);
    let prefix = file_prefix(&s.hedge.origin);
    let keyed = s.idempotency_key.value != KeyModel::None;
    match method {
        None => diags.push(
            at,
            format!(
                "{prefix}cannot tell which HTTP method this function sends, so cannot tell whether hedging it is safe\n\
                 help: declare the least safe method it may send, e.g. `method = GET`"
            ),
        ),
        Some(m) => {
            if let Err(broken) = rules::hedge_safe(m.value, keyed, s.idempotent.value) {
                let mut what = format!(
                    "{prefix}{}\n  - hedge ({})\n  - method = {} ({})\n  - idempotency_key: none ({})",
                    broken.what,
                    s.hedge.origin,
                    m.value.as_str(),
                    m.origin,
                    s.idempotency_key.origin
                );
                if !m.value.needs_key() {
                    what.push_str(&format!(
                        "\n  - idempotent = false ({})",
                        s.idempotent.origin
                    ));
                }
                if let Some(help) = broken.help {
                    what.push_str(&format!("\nhelp: {help}"));
                }
                diags.push(at, what);
            }
        }
    }
    if let Err(broken) = rules::hedge_within_timeout(h.delay.value, s.timeout.value) {
        let mut what = format!(
            "{}{}\n  - delay = {} ({})\n  - timeout = {} ({})",
            file_prefix(&h.delay.origin),
            broken.what,
            fmt_d(h.delay.value),
            h.delay.origin,
            fmt_d(s.timeout.value),
            s.timeout.origin
        );
        if let Some(help) = broken.help {
            what.push_str(&format!("\nhelp: {help}"));
        }
        diags.push(h.delay.origin.span_or(at), what);
    }
    if let Err(broken) = rules::hedge_within_deadline(h.delay.value, h.max.value, s.deadline.value)
    {
        let mut what = format!(
            "{}{}\n  - delay = {} ({})\n  - max = {} ({})\n  - deadline = {} ({})",
            file_prefix(&h.delay.origin),
            broken.what,
            fmt_d(h.delay.value),
            h.delay.origin,
            h.max.value,
            h.max.origin,
            fmt_d(s.deadline.value),
            s.deadline.origin
        );
        if let Some(help) = broken.help {
            what.push_str(&format!("\nhelp: {help}"));
        }
        diags.push(h.delay.origin.span_or(at), what);
    }
}

/// A fallback names another function; `fallback_on` needs one. Its signature is checked by
/// the compiler in the expansion, the error pointing at `fallback = …`.
pub fn check_fallback(diags: &mut Diags, f: &syn::ItemFn, s: &Settings, fb: Span) {
    match &s.fallback {
        None => {
            // A house rule in `[defaults]` (`fallback_on = ["circuit_open"]`) is for the
            // functions that have a fallback: the others have nothing to call, and are fine.
            if !matches!(s.fallback_on.origin, Origin::Builtin)
                && !s.fallback_on.origin.is_from_defaults()
            {
                diags.push(
                    s.fallback_on.origin.span_or(fb),
                    format!(
                        "{}fallback_on = [{}] ({}), but there is no fallback to call\nhelp: add `fallback = NAME`, an async fn with the same parameters and return type",
                        file_prefix(&s.fallback_on.origin),
                        s.fallback_on.value.1.join(", "),
                        s.fallback_on.origin
                    ),
                );
            }
        }
        Some(name) => {
            for input in &f.sig.inputs {
                if let syn::FnArg::Typed(pt) = input
                    && !matches!(&*pt.pat, syn::Pat::Ident(pi) if pi.by_ref.is_none())
                {
                    diags.push(
                        pt.pat.span(),
                        "a function with a fallback needs a plain name for each parameter, to pass it on to the fallback\nhelp: bind it to a name and destructure it in the body",
                    );
                }
            }
            let method = f.sig.receiver().is_some();
            if let Err(b) =
                rules::fallback_not_itself(&name.value, &f.sig.ident.to_string(), method)
            {
                diags.push(
                    name.origin.span_or(fb),
                    format!("{}{b}", file_prefix(&name.origin)),
                );
            }
            // Two functions returning `impl Trait` return two different types.
            if let syn::ReturnType::Type(_, ty) = &f.sig.output
                && ty
                    .to_token_stream()
                    .into_iter()
                    .any(|tt| token_has_impl(&tt))
            {
                diags.push(
                    ty.span(),
                    "`fallback` needs a return type the fallback can return too; an `impl Trait` in it is a type of this function's own: name the type, or box it (`Box<dyn Trait>`)",
                );
            }
            // An argument list cannot hold `#[cfg]`: the call is written once for each
            // combination of the gated parameters.
            let gated = f
                .sig
                .inputs
                .iter()
                .filter(|input| {
                    matches!(input, syn::FnArg::Typed(pt) if pt.attrs.iter().any(|a| a.path().is_ident("cfg")))
                })
                .count();
            if gated > MAX_GATED_FALLBACK_ARGS {
                diags.push(
                    name.origin.span_or(fb),
                    format!(
                        "`fallback` with more than {MAX_GATED_FALLBACK_ARGS} parameters under `#[cfg]`: the call is written once for each combination of them; gather the gated ones in one struct"
                    ),
                );
            }
        }
    }
}

/// The most parameters under `#[cfg]` a function with a fallback may have: its call to the
/// fallback is written once for each combination of them (2⁴ calls).
pub const MAX_GATED_FALLBACK_ARGS: usize = 4;

fn token_has_impl(tt: &proc_macro2::TokenTree) -> bool {
    match tt {
        proc_macro2::TokenTree::Ident(i) => i == "impl",
        proc_macro2::TokenTree::Group(g) => g.stream().into_iter().any(|t| token_has_impl(&t)),
        _ => false,
    }
}

fn unsafe_retry(
    diags: &mut Diags,
    s: &Settings,
    m: &Set<Method>,
    ambiguous: &[&Set<RetryItem>],
    fb: Span,
) {
    let name = m.value.as_str();
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

/// A type as written, without the invisible group a `macro_rules!` fragment (`$t:ty`) arrives
/// in, or parentheses.
pub fn peel(ty: &syn::Type) -> &syn::Type {
    match ty {
        syn::Type::Group(g) => peel(&g.elem),
        syn::Type::Paren(p) => peel(&p.elem),
        other => other,
    }
}

/// `&self`, or `self: &Self` (any shared reference): what two hedged attempts may both hold.
fn shared_self(kind: &syn::ReceiverKind) -> bool {
    match kind {
        syn::ReceiverKind::Reference(_, _, mutability) => mutability.is_none(),
        syn::ReceiverKind::Typed(_, ty) => {
            matches!(peel(ty), syn::Type::Reference(r) if r.mutability.is_none())
        }
        _ => false,
    }
}

/// The function itself: async, returns a Result, parameters usable on a retry.
pub fn check_function(diags: &mut Diags, f: &syn::ItemFn, s: &Settings) {
    if f.sig.asyncness.is_none() {
        if rewritten_by_async_trait(f) {
            diags.push(
                f.sig.fn_token.span,
                "#[resilient] sees this method after #[async_trait] turned it into a plain fn returning a boxed future\n\
                 help: drop #[async_trait] (traits take `async fn` natively since Rust 1.75), or put #[resilient] on an \
                 inherent `async fn` and call it from the trait method",
            );
        } else {
            diags.push(
                f.sig.fn_token.span,
                "#[resilient] goes on an `async fn`: the attempts are awaited with timeouts",
            );
        }
    }
    match &f.sig.output {
        syn::ReturnType::Default => diags.push(
            f.sig.ident.span(),
            "#[resilient] needs a function returning `Result<T, E>`, so failures can be retried and reported",
        ),
        syn::ReturnType::Type(_, ty) => {
            // Any path may name a Result (`io::Result<T>`, `type R<T> = Result<T, Error>`): the
            // expansion checks it with the compiler. Only what clearly is not one is refused.
            let not_a_result = match peel(ty) {
                syn::Type::Path(p) => p.qself.is_none()
                    && p.path.segments.last().is_some_and(|seg| {
                        matches!(
                            seg.ident.to_string().as_str(),
                            "bool" | "char" | "str" | "String" | "Option" | "Vec" | "Box" | "u8" | "u16"
                                | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64"
                                | "i128" | "isize" | "f32" | "f64"
                        )
                    }),
                // A macro may expand to a Result: the compiler checks it.
                syn::Type::Macro(_) => false,
                _ => true,
            };
            if not_a_result {
                diags.push(ty.span(), "#[resilient] needs a function returning `Result<T, E>` (or an alias of one)");
            }
        }
    }
    // A keyed function runs its body again to ask for the replay of a request still in
    // progress (409), even with `max_attempts = 1`.
    let retried = s.max_attempts.value > 1 || !matches!(s.idempotency_key.value, KeyModel::None);
    let hedged = s.hedge.value.is_some();
    for input in &f.sig.inputs {
        match input {
            syn::FnArg::Receiver(r) if retried && matches!(r.kind, syn::ReceiverKind::Value) => diags.push(
                r.self_token.span,
                "a retried or keyed method cannot take `self` by value: each attempt (a retry, or an ask for the replay of a keyed request still in progress) needs it again\nhelp: take `&self`, or set max_attempts = 1 without an idempotency key",
            ),
            syn::FnArg::Receiver(r)
                if retried
                    && matches!(&r.kind, syn::ReceiverKind::Typed(_, ty) if !matches!(peel(ty), syn::Type::Reference(_))) =>
            {
                let ty = match &r.kind {
                    syn::ReceiverKind::Typed(_, ty) => ty.to_token_stream().to_string().replace(' ', ""),
                    _ => String::new(),
                };
                diags.push(
                    r.self_token.span,
                    format!(
                        "a retried or keyed method cannot take `self: {ty}` by value: each attempt (a retry, or an ask \
                         for the replay of a keyed request still in progress) runs the body again and needs `self` again, \
                         which the body may move\n\
                         help: take `self: &{ty}` or `&self`, or set max_attempts = 1 without an idempotency key"
                    ),
                )
            }
            // Each attempt and hedge gets its own clone of a by-value parameter, by its name.
            // (A fallback's arguments are checked with the fallback.)
            syn::FnArg::Typed(pt)
                if (retried || hedged)
                    && !matches!(&*pt.pat, syn::Pat::Ident(_) | syn::Pat::Wild(_))
                    && !matches!(peel(&pt.ty), syn::Type::Reference(_)) =>
            {
                diags.push(
                    pt.pat.span(),
                    "a retried, keyed or hedged function needs a plain name for a by-value parameter, to clone it for each attempt\n\
                     help: bind it to a name and destructure it in the body",
                );
            }
            _ => {}
        }
    }
    if s.hedge.value.is_some() {
        for input in &f.sig.inputs {
            let span = match input {
                syn::FnArg::Receiver(r) if !shared_self(&r.kind) => {
                    Some((r.self_token.span, "`self`".to_owned()))
                }
                syn::FnArg::Typed(pt) => match peel(&pt.ty) {
                    syn::Type::Reference(r) if r.mutability.is_some() => {
                        Some((pt.pat.span(), format!("`{}`", pt.pat.to_token_stream())))
                    }
                    _ => None,
                },
                _ => None,
            };
            if let Some((span, what)) = span {
                diags.push(
                    span,
                    format!(
                        "a hedged function runs its body twice at once, so it cannot take {what} by `&mut` or by value: two attempts would need it at the same time\n\
                         help: take `&self` (or a shared reference) and keep mutable state behind a lock, or drop `hedge`"
                    ),
                );
            }
        }
    }
    // With a fallback, retried or not: it is called with the arguments again after the body,
    // which still borrows what it returned a borrow of.
    if retried || s.fallback.is_some() {
        check_mut_borrow_returned(diags, f, retried);
    }
    if let KeyModel::Param(path) = &s.idempotency_key.value {
        let root = path.split('.').next().unwrap_or_default();
        let root = root.strip_prefix("r#").unwrap_or(root);
        let params: Vec<String> = f
            .sig
            .inputs
            .iter()
            .filter_map(|i| match i {
                // `r#type` is named `type` (the key's path is read so too).
                syn::FnArg::Typed(pt) => match &*pt.pat {
                    syn::Pat::Ident(pi) => Some(syn::ext::IdentExt::unraw(&pi.ident).to_string()),
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
                    "{}idempotency_key names `{root}`, which is not a parameter of `{}`{hint}\nhelp: use `auto` for a fresh key per call, or the name of a parameter holding the key",
                    file_prefix(&s.idempotency_key.origin),
                    f.sig.ident
                ),
            );
        }
    }
}

/// A retried function returning a borrow of what it takes by `&mut` (`&mut self` returning
/// `&str`): each attempt reborrows it, and the compiler (without Polonius) cannot see that a
/// failed attempt's borrow ends before the next one starts, so the expansion would fail with
/// an error about closures or coroutines. Said here instead, at the parameter.
fn check_mut_borrow_returned(diags: &mut Diags, f: &syn::ItemFn, retried: bool) {
    let syn::ReturnType::Type(_, out) = &f.sig.output else {
        return;
    };
    let (named, elided) = lifetimes_in(out.to_token_stream());
    if named.is_empty() && !elided {
        return;
    }
    // Who an elided lifetime in the return type borrows from: `self` when it is a
    // reference, else the one reference parameter.
    let self_ref = f.sig.inputs.iter().any(|i| match i {
        syn::FnArg::Receiver(r) => match &r.kind {
            syn::ReceiverKind::Reference(..) => true,
            syn::ReceiverKind::Typed(_, ty) => matches!(peel(ty), syn::Type::Reference(_)),
            _ => false,
        },
        syn::FnArg::Typed(_) => false,
    });
    let refs = f
        .sig
        .inputs
        .iter()
        .filter(|i| matches!(i, syn::FnArg::Typed(pt) if matches!(peel(&pt.ty), syn::Type::Reference(_))))
        .count();
    for input in &f.sig.inputs {
        let (span, what, lifetime, elided_here) = match input {
            syn::FnArg::Receiver(r) => {
                let lt = match &r.kind {
                    syn::ReceiverKind::Reference(_, lt, Some(_)) => Some(lt.clone()),
                    syn::ReceiverKind::Typed(_, ty) => match peel(ty) {
                        syn::Type::Reference(r) if r.mutability.is_some() => {
                            Some(r.lifetime.clone())
                        }
                        _ => None,
                    },
                    _ => None,
                };
                let Some(lt) = lt else { continue };
                (r.self_token.span, "`&mut self`".to_owned(), lt, self_ref)
            }
            syn::FnArg::Typed(pt) => match peel(&pt.ty) {
                syn::Type::Reference(r) if r.mutability.is_some() => (
                    pt.pat.span(),
                    format!("`{}` (taken by `&mut`)", pt.pat.to_token_stream()),
                    r.lifetime.clone(),
                    !self_ref && refs == 1,
                ),
                _ => continue,
            },
        };
        // A named lifetime the return type names, or an elided one that elision gives this
        // parameter (`&'a mut self` returning `&str` borrows `'a`).
        let borrowed = lifetime
            .as_ref()
            .is_some_and(|lt| lt.ident != "_" && named.contains(&lt.ident.to_string()))
            || (elided && elided_here);
        if borrowed {
            let message = if retried {
                format!(
                    "a retried or keyed function cannot return a borrow of {what}: each attempt borrows it again, and the compiler cannot see that a failed attempt's borrow ended before the next one\n\
                     help: return an owned value (`String`, `.to_owned()`), take it by `&` and keep mutable state behind a lock, or set max_attempts = 1 without an idempotency key"
                )
            } else {
                format!(
                    "a function with a fallback cannot return a borrow of {what}: the fallback is called with it again after the body, and the compiler cannot see that the body's failed borrow ended\n\
                     help: return an owned value (`String`, `.to_owned()`), take it by `&` and keep mutable state behind a lock, or drop `fallback`"
                )
            };
            diags.push(span, message);
        }
    }
}

/// The lifetimes a type names (`'a`), and whether it has an elided one (`&T`, `'_`). Not
/// those of a function type's own signature (`fn(&str)`, `dyn Fn(&str) -> &str`), which
/// borrow nothing of the function's parameters.
fn lifetimes_in(ts: proc_macro2::TokenStream) -> (Vec<String>, bool) {
    use proc_macro2::{Delimiter, TokenTree};
    let (mut named, mut elided) = (Vec::new(), false);
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    // Inside a function type's signature: its arguments, then its `-> Ret` up to the next
    // `,` `+` or `>` at this level.
    let mut skip_ret = false;
    let mut angle = 0usize;
    for (i, tt) in tokens.iter().enumerate() {
        if let TokenTree::Ident(id) = tt
            && matches!(id.to_string().as_str(), "fn" | "Fn" | "FnMut" | "FnOnce")
        {
            if let Some(TokenTree::Group(g)) = tokens.get(i + 1)
                && g.delimiter() == Delimiter::Parenthesis
            {
                skip_ret = true;
                angle = 0;
            }
            continue;
        }
        if skip_ret {
            match tt {
                TokenTree::Group(g) if g.delimiter() == Delimiter::Parenthesis && angle == 0 => {
                    continue;
                }
                TokenTree::Punct(p) if p.as_char() == '<' => angle += 1,
                TokenTree::Punct(p) if p.as_char() == '>' && angle > 0 => angle -= 1,
                TokenTree::Punct(p)
                    if angle == 0
                        && (matches!(p.as_char(), ',' | '+')
                            || (p.as_char() == '>'
                                && !matches!(tokens.get(i.wrapping_sub(1)), Some(TokenTree::Punct(q)) if q.as_char() == '-'))) =>
                {
                    skip_ret = false;
                }
                _ => {}
            }
            if skip_ret {
                continue;
            }
        }
        match tt {
            TokenTree::Group(g) => {
                let (n, e) = lifetimes_in(g.stream());
                named.extend(n);
                elided |= e;
            }
            TokenTree::Punct(p) if p.as_char() == '\'' => {
                if let Some(TokenTree::Ident(id)) = tokens.get(i + 1) {
                    if id == "_" {
                        elided = true;
                    } else if id != "static" {
                        named.push(id.to_string());
                    }
                }
            }
            // `&T`, not `&'a T`.
            TokenTree::Punct(p)
                if p.as_char() == '&'
                    && !matches!(tokens.get(i + 1), Some(TokenTree::Punct(q)) if q.as_char() == '\'') =>
            {
                elided = true;
            }
            _ => {}
        }
    }
    (named, elided)
}

/// A key is stamped on the requests the body sends: a keyed policy on a body that shows no
/// request would send none of its requests with the key.
pub fn check_keyed_body_sends(diags: &mut Diags, f: &syn::ItemFn, s: &Settings) {
    if s.idempotency_key.value == KeyModel::None || s.method.is_some() {
        return;
    }
    if crate::infer::shows_a_request(f.block.to_token_stream()) {
        return;
    }
    let span = f
        .block
        .stmts
        .first()
        .map(|st| st.span())
        .unwrap_or_else(|| f.block.brace_token.span.join());
    diags.push(
        span,
        format!(
            "idempotency_key = {} ({}), but this body sends no request: the key goes on the requests sent here\n\
             help: send the request in this body (`.send()` on a reqwest RequestBuilder is stamped), or have the \
             helper return the RequestBuilder and call `.send()` here; if a helper must send it, call `.resilient()` \
             on the builder in the helper and declare the method here (`method = POST`)",
            match &s.idempotency_key.value {
                KeyModel::Param(p) => p.as_str(),
                _ => "auto",
            },
            s.idempotency_key.origin
        ),
    );
}

/// A keyed policy on a body that writes its own `Idempotency-Key` header: the runtime keeps the
/// body's header (a gateway forwarding the key it was sent), so a key drawn in the body
/// (`Uuid::new_v4()`) would change on every attempt and each retry be a new request to the
/// server. One key, from one place: refused, pointing at the header's name.
pub fn check_body_sets_no_key(diags: &mut Diags, f: &syn::ItemFn, s: &Settings) {
    if s.idempotency_key.value == KeyModel::None {
        return;
    }
    let Some(span) = key_header_in(f.block.to_token_stream()) else {
        return;
    };
    diags.push(
        span,
        format!(
            "this body sets its own Idempotency-Key header, and idempotency_key = {} ({}) gives the call one: \
             the body's would be sent, and a key made in the body (a fresh UUID) changes on every attempt, \
             so each retry is a new request to the server\n\
             help: give the key you hold as a parameter (`idempotency_key = key`, the same on every attempt) \
             and remove the header, or remove `idempotency_key` and keep the header (then a POST is retried \
             only on `connect`)",
            match &s.idempotency_key.value {
                KeyModel::Param(p) => p.as_str(),
                _ => "auto",
            },
            s.idempotency_key.origin
        ),
    );
}

/// Where `ts` writes the `Idempotency-Key` header: the string (any case, also a byte string),
/// a constant named `IDEMPOTENCY_KEY`, or a name made of the string
/// (`HeaderName::from_static("idempotency-key")`) as the first argument of `.header(…)`,
/// `.insert(…)` or `.append(…)` (not a read of the header, `headers().get("Idempotency-Key")`).
fn key_header_in(ts: proc_macro2::TokenStream) -> Option<proc_macro2::Span> {
    use proc_macro2::TokenTree;
    fn literal_names_key(l: &proc_macro2::Literal) -> bool {
        let text = l.to_string();
        let text = text.strip_prefix('b').unwrap_or(&text);
        text.trim_matches('"')
            .eq_ignore_ascii_case("idempotency-key")
    }
    let names_key = |t: &TokenTree| match t {
        TokenTree::Ident(c) => (c == "IDEMPOTENCY_KEY").then(|| c.span()),
        TokenTree::Literal(l) => literal_names_key(l).then(|| l.span()),
        // `HeaderName::from_static("idempotency-key")`, `from_bytes(b"…")`: its one argument.
        TokenTree::Group(g) => {
            let inner: Vec<TokenTree> = g.stream().into_iter().collect();
            match inner.as_slice() {
                [TokenTree::Literal(l)] if literal_names_key(l) => Some(l.span()),
                _ => None,
            }
        }
        _ => None,
    };
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    tokens.iter().enumerate().find_map(|(i, tt)| {
        let TokenTree::Group(g) = tt else {
            return None;
        };
        let writes = i > 0
            && matches!(&tokens[i - 1], TokenTree::Ident(m) if m == "header" || m == "insert" || m == "append");
        // The first argument: the name as written (a literal, a constant) or a path to it
        // (`http::header::IDEMPOTENCY_KEY`, its last segment).
        let first: Vec<TokenTree> = g
            .stream()
            .into_iter()
            .take_while(|t| !matches!(t, TokenTree::Punct(p) if p.as_char() == ','))
            .collect();
        writes
            .then(|| first.first().and_then(names_key).or_else(|| first.last().and_then(names_key)))
            .flatten()
            .or_else(|| key_header_in(g.stream()))
    })
}

/// The shape `#[async_trait]` leaves: a plain fn returning `Pin<Box<dyn Future … + 'async_trait>>`.
fn rewritten_by_async_trait(f: &syn::ItemFn) -> bool {
    match &f.sig.output {
        syn::ReturnType::Type(_, ty) => {
            let t = ty.to_token_stream().to_string();
            t.contains("Future") && t.contains("async_trait")
        }
        syn::ReturnType::Default => false,
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::lifetimes_in;

    #[test]
    fn the_lifetimes_a_return_type_borrows() {
        let l = |ts| lifetimes_in(ts);
        assert_eq!(l(quote!(Result<&str, Error>)), (vec![], true));
        assert_eq!(
            l(quote!(Result<&'a str, Error>)),
            (vec!["a".to_owned()], false)
        );
        assert_eq!(l(quote!(Result<Cow<'_, str>, Error>)), (vec![], true));
        assert_eq!(l(quote!(Result<&'static str, Error>)), (vec![], false));
        assert_eq!(l(quote!(Result<String, Error>)), (vec![], false));
        // A function type's own signature borrows nothing of the parameters.
        assert_eq!(
            l(quote!(Result<Box<dyn Fn(&str) -> &str + Send>, Error>)),
            (vec![], false)
        );
        assert_eq!(
            l(quote!(Result<fn(&[u8]) -> Vec<&u8>, Error>)),
            (vec![], false)
        );
        assert_eq!(
            l(quote!(Result<(Box<dyn FnMut(&str)>, &str), Error>)),
            (vec![], true)
        );
        assert_eq!(
            l(quote!(Result<Box<dyn Fn(&str) -> bool + 'a>, Error>)),
            (vec!["a".to_owned()], false)
        );
    }
}
