//! The effective policy of one function: every setting with the value it has and where it came
//! from. Built layer by layer (built-in < `[defaults]` < `[policies.NAME]` < inline) through one
//! setter per key, shared by the attribute and the file.

use std::time::Duration;

use proc_macro2::Span;

use resilience_spec::{defaults, rules};

use crate::diag::Diags;
use crate::value::{Located, Origin, Value, did_you_mean, parse_duration};

/// Keys a policy may set, in the file and inline.
pub const POLICY_KEYS: &[&str] = &[
    "method",
    "timeout",
    "deadline",
    "max_attempts",
    "backoff",
    "retry_on",
    "idempotency_key",
    "idempotent",
    "max_retry_after",
    "budget",
    "breaker",
    "bulkhead",
    "rate_limit",
    "concurrency_limit",
    "hedge",
    "fallback",
    "fallback_on",
    "client",
];

/// Keys only the attribute takes.
pub const INLINE_ONLY_KEYS: &[&str] = &["policy", "crate", "config"];

/// What a key of another retry library's (or a guess at one) is called here, written as the
/// attribute (`inline`) or the policy file takes it.
fn synonym(key: &str, inline: bool) -> Option<&'static str> {
    Some(match key {
        "retries" | "max_retries" | "retry" | "retry_count" | "retry_times" | "attempts" => {
            "use `max_attempts`, which counts the first attempt too: `max_retries = 2` is `max_attempts = 3`"
        }
        "timeout_ms" | "read_timeout" | "request_timeout" | "attempt_timeout" => {
            "use `timeout`, the limit of each attempt, with a unit: `timeout = \"500ms\"`"
        }
        "total_timeout" | "overall_timeout" | "max_elapsed" | "max_duration" => {
            "use `deadline`, the limit of the whole call: `deadline = \"10s\"`"
        }
        "circuit_breaker" | "circuit" => "use `breaker`",
        "concurrency" | "max_concurrency" | "max_in_flight" => {
            "use `bulkhead = { max_concurrent = … }`, or `concurrency_limit` for an adaptive one"
        }
        "hedging" | "hedged" => "use `hedge`",
        "fallback_fn" | "on_failure" => "use `fallback`",
        "idempotency" if inline => {
            "use `idempotency_key = auto` (a key on every attempt) or `idempotent` (a PUT or DELETE the server applies once)"
        }
        "idempotency" => {
            "use `idempotency_key = \"auto\"` (a key on every attempt) or `idempotent = true` (a PUT or DELETE the server applies once)"
        }
        "retry_on_status" | "retryable_statuses" | "retry_statuses" | "retry_if" if inline => {
            "use `retry_on = [connect, reset, timeout, 503]`"
        }
        "retry_on_status" | "retryable_statuses" | "retry_statuses" | "retry_if" => {
            "use `retry_on = [\"connect\", \"reset\", \"timeout\", 503]`"
        }
        "jitter" | "backoff_ms" | "delay" | "initial_delay" if inline => {
            "the waits between attempts go in `backoff(initial = \"100ms\", max = \"2s\", jitter = equal)`"
        }
        "jitter" | "backoff_ms" | "delay" | "initial_delay" => {
            "the waits between attempts go in `backoff = { initial = \"100ms\", max = \"2s\", jitter = \"equal\" }`"
        }
        "connect_timeout" | "pool_idle_timeout" | "tcp_keepalive" | "pool_max_idle_per_host" => {
            "a client's setting: in a `[clients.NAME]` section, named by the policy's `client`"
        }
        "max_concurrent" | "max_wait" => {
            "a bulkhead's (or a rate limit's `max_wait`): `bulkhead = { max_concurrent = 10, max_wait = \"0ms\" }`"
        }
        _ => return None,
    })
}

pub const BACKOFF_KEYS: &[&str] = &["kind", "initial", "max", "multiplier", "jitter"];
pub const BUDGET_KEYS: &[&str] = &["ratio", "min_per_sec"];
pub const BREAKER_KEYS: &[&str] = &[
    "failure_rate",
    "min_calls",
    "window",
    "open_for",
    "half_open_calls",
    "window_for",
    "slow_call_duration",
    "slow_call_rate",
];
pub const BULKHEAD_KEYS: &[&str] = &["max_concurrent", "max_wait"];
pub const CONCURRENCY_KEYS: &[&str] = &[
    "kind", "initial", "min", "max", "latency", "backoff", "max_wait",
];
pub const HEDGE_KEYS: &[&str] = &["delay", "max"];
pub const RATE_LIMIT_KEYS: &[&str] = &["rate", "per", "burst", "max_wait", "store"];
pub const CLIENT_KEYS: &[&str] = &[
    "connect_timeout",
    "pool_idle_timeout",
    "tcp_keepalive",
    "pool_max_idle_per_host",
];

/// The method model is the rule book's.
pub use resilience_spec::Method;

/// A value with its origin.
#[derive(Debug, Clone)]
pub struct Set<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Set<T> {
    fn builtin(value: T) -> Set<T> {
        Set {
            value,
            origin: Origin::Builtin,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffKind {
    Exponential,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    Full,
    Equal,
    Decorrelated,
    None,
}

impl Jitter {
    /// As packed for the runtime (and as the rules read it).
    pub fn packed(self) -> resilience_spec::packed::PackedJitter {
        use resilience_spec::packed::PackedJitter;
        match self {
            Jitter::Full => PackedJitter::Full,
            Jitter::Equal => PackedJitter::Equal,
            Jitter::Decorrelated => PackedJitter::Decorrelated,
            Jitter::None => PackedJitter::None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackoffModel {
    pub kind: Set<BackoffKind>,
    pub initial: Set<Duration>,
    pub max: Set<Duration>,
    pub multiplier_milli: Set<u32>,
    pub jitter: Set<Jitter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryItem {
    Connect,
    Reset,
    Timeout,
    Status(u16),
}

impl RetryItem {
    pub fn render(self) -> String {
        match self {
            RetryItem::Connect => "connect".into(),
            RetryItem::Reset => "reset".into(),
            RetryItem::Timeout => "timeout".into(),
            RetryItem::Status(s) => s.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyModel {
    None,
    Auto,
    /// A parameter, or a field path rooted at one (`order.id`).
    Param(String),
}

/// Hedging: another attempt after `delay` without an answer, at most `max` of them.
#[derive(Debug, Clone)]
pub struct HedgeModel {
    pub delay: Set<Duration>,
    pub max: Set<u32>,
}

/// A parameter, or a field of one, as `idempotency_key` names it in the file: `order_id`,
/// `order.id`, `self.order_id`, `pair.0`.
fn is_param_path(s: &str) -> bool {
    // A name, raw or not: a parameter `r#type` may be named `type` or `r#type`.
    let name = |p: &str| {
        syn::parse_str::<syn::Ident>(p).is_ok()
            || syn::parse_str::<syn::Ident>(&format!("r#{p}")).is_ok()
    };
    let mut parts = s.split('.');
    let root = parts.next().unwrap_or_default();
    (root == "self" || name(root))
        && parts.all(|p| name(p) || (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
}

/// A shared-state reference: off, the default, a named section, or an inline table.
#[derive(Debug, Clone)]
pub enum StateRef {
    Off,
    /// The per-policy default (budgets only).
    Default,
    Named(String),
    Inline(Vec<(String, Located)>),
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub method: Option<Set<Method>>,
    pub timeout: Set<Duration>,
    pub deadline: Set<Duration>,
    pub max_attempts: Set<u32>,
    pub backoff: BackoffModel,
    pub retry_on: Set<Vec<Set<RetryItem>>>,
    pub idempotency_key: Set<KeyModel>,
    pub idempotent: Set<bool>,
    pub max_retry_after: Set<Duration>,
    pub budget: Set<StateRef>,
    pub breaker: Set<StateRef>,
    pub bulkhead: Set<StateRef>,
    pub rate_limit: Set<StateRef>,
    pub concurrency_limit: Set<StateRef>,
    pub hedge: Set<Option<HedgeModel>>,
    /// The fallback function's path, as written.
    pub fallback: Option<Set<String>>,
    /// The `fallback_on` mask, with the names as written.
    pub fallback_on: Set<(u16, Vec<String>)>,
    pub client: Option<Set<String>>,
}

/// `retry_on` in the runtime's shape: (connect, reset, timeout, statuses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryParts {
    pub connect: bool,
    pub reset: bool,
    pub timeout: bool,
    pub statuses: Vec<u16>,
}

impl Settings {
    /// `retry_on` split the way the runtime's `RetryOn` holds it.
    pub fn retry_parts(&self) -> RetryParts {
        let has = |want: RetryItem| self.retry_on.value.iter().any(|i| i.value == want);
        RetryParts {
            connect: has(RetryItem::Connect),
            reset: has(RetryItem::Reset),
            timeout: has(RetryItem::Timeout),
            statuses: self
                .retry_on
                .value
                .iter()
                .filter_map(|i| match i.value {
                    RetryItem::Status(c) => Some(c),
                    _ => None,
                })
                .collect(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            method: None,
            timeout: Set::builtin(defaults::TIMEOUT),
            deadline: Set::builtin(defaults::DEADLINE),
            max_attempts: Set::builtin(defaults::MAX_ATTEMPTS),
            backoff: BackoffModel {
                kind: Set::builtin(BackoffKind::Exponential),
                initial: Set::builtin(defaults::BACKOFF_INITIAL),
                max: Set::builtin(defaults::BACKOFF_MAX),
                multiplier_milli: Set::builtin(defaults::BACKOFF_MULTIPLIER_MILLI),
                jitter: Set::builtin(Jitter::Equal),
            },
            retry_on: Set::builtin(
                [RetryItem::Connect, RetryItem::Reset, RetryItem::Timeout]
                    .into_iter()
                    .chain(
                        defaults::RETRY_STATUSES
                            .iter()
                            .map(|s| RetryItem::Status(*s)),
                    )
                    .map(Set::builtin)
                    .collect(),
            ),
            idempotency_key: Set::builtin(KeyModel::None),
            idempotent: Set::builtin(false),
            max_retry_after: Set::builtin(defaults::MAX_RETRY_AFTER),
            budget: Set::builtin(StateRef::Default),
            breaker: Set::builtin(StateRef::Off),
            bulkhead: Set::builtin(StateRef::Off),
            rate_limit: Set::builtin(StateRef::Off),
            concurrency_limit: Set::builtin(StateRef::Off),
            hedge: Set::builtin(None),
            fallback: None,
            fallback_on: Set::builtin((resilience_spec::fallback_on::ANY, vec!["any".to_owned()])),
            client: None,
        }
    }
}

/// Where to point an error about a value: its inline tokens, or `fallback` with the file
/// position written into the message.
pub fn at(v: &Located, fallback: Span) -> Span {
    v.origin.span_or(fallback)
}

/// The message prefix of a value that lives in a file.
pub fn file_prefix(origin: &Origin) -> String {
    match origin {
        Origin::File {
            file, line, col, ..
        } => format!("{file}:{line}:{col}: "),
        _ => String::new(),
    }
}

pub fn err(diags: &mut Diags, v: &Located, fallback: Span, msg: impl std::fmt::Display) {
    diags.push(at(v, fallback), format!("{}{msg}", file_prefix(&v.origin)));
}

pub fn duration(diags: &mut Diags, v: &Located, fallback: Span, key: &str) -> Option<Duration> {
    let parsed = match &v.value {
        Value::Str(s) => parse_duration(s),
        Value::IntSuffixed(n, unit) => parse_duration(&format!("{n}{unit}")),
        Value::FloatSuffixed(text) => parse_duration(text),
        Value::Int(n) => Err(format!(
            "`{key} = {n}` has no unit: write \"{n}ms\" or \"{n}s\""
        )),
        _ => Err(format!(
            "`{key}` takes a duration like \"250ms\", \"5s\" or \"1m\", not {}",
            v.describe()
        )),
    };
    parsed.map_err(|m| err(diags, v, fallback, m)).ok()
}

pub fn integer(diags: &mut Diags, v: &Located, fallback: Span, key: &str) -> Option<u64> {
    match &v.value {
        Value::Int(n) => Some(*n),
        Value::IntSuffixed(n, suffix) => {
            err(
                diags,
                v,
                fallback,
                format!(
                    "`{key}` takes a plain whole number: write `{n}`, without the `{suffix}` suffix"
                ),
            );
            None
        }
        _ => {
            err(
                diags,
                v,
                fallback,
                format!("`{key}` takes a whole number, not {}", v.describe()),
            );
            None
        }
    }
}

pub fn number(diags: &mut Diags, v: &Located, fallback: Span, key: &str) -> Option<f64> {
    match &v.value {
        Value::Int(n) => Some(*n as f64),
        Value::Float(x) if x.is_finite() => Some(*x),
        Value::Float(_) => {
            err(
                diags,
                v,
                fallback,
                format!("`{key}` is out of range: too large to be a number; write one such as 0.1"),
            );
            None
        }
        Value::IntSuffixed(n, suffix) => {
            err(
                diags,
                v,
                fallback,
                format!("`{key}` takes a plain number: write `{n}`, without the `{suffix}` suffix"),
            );
            None
        }
        Value::FloatSuffixed(text) => {
            err(
                diags,
                v,
                fallback,
                format!("`{key}` takes a plain number: write `{text}` without its suffix"),
            );
            None
        }
        _ => {
            err(
                diags,
                v,
                fallback,
                format!("`{key}` takes a number, not {}", v.describe()),
            );
            None
        }
    }
}

fn boolean(diags: &mut Diags, v: &Located, fallback: Span, key: &str) -> Option<bool> {
    match &v.value {
        Value::Bool(b) => Some(*b),
        _ => {
            err(
                diags,
                v,
                fallback,
                format!("`{key}` takes true or false, not {}", v.describe()),
            );
            None
        }
    }
}

/// Checks the keys of a table against the known ones, with "did you mean".
pub fn check_table_keys(
    diags: &mut Diags,
    table: &[(String, Located)],
    known: &[&str],
    what: &str,
    fallback: Span,
) {
    for (k, v) in table {
        if !known.contains(&k.as_str()) {
            let hint = did_you_mean(k, known)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            err(
                diags,
                v,
                fallback,
                format!(
                    "unknown {what} key `{k}`{hint} (known: {})",
                    known.join(", ")
                ),
            );
        }
    }
}

impl Settings {
    /// Applies one `key = value`. `fallback` is where errors about file values point.
    pub fn apply(&mut self, diags: &mut Diags, key: &str, v: &Located, fallback: Span) {
        let origin = v.origin.clone();
        match key {
            "method" => match v.as_text().and_then(Method::parse) {
                Some(m) => self.method = Some(Set { value: m, origin }),
                None => err(
                    diags,
                    v,
                    fallback,
                    format!(
                        "unknown method {}: use GET, HEAD, OPTIONS, PUT, DELETE, POST or PATCH",
                        v.render()
                    ),
                ),
            },
            "timeout" => {
                if let Some(d) = duration(diags, v, fallback, key) {
                    self.timeout = Set { value: d, origin };
                }
            }
            "deadline" => {
                if let Some(d) = duration(diags, v, fallback, key) {
                    self.deadline = Set { value: d, origin };
                }
            }
            "max_retry_after" => {
                if let Some(d) = duration(diags, v, fallback, key) {
                    self.max_retry_after = Set { value: d, origin };
                }
            }
            "max_attempts" => {
                if let Some(n) = integer(diags, v, fallback, key) {
                    // Checked as written: 5000000000 is said as such, not as `u32::MAX`.
                    match rules::max_attempts(n) {
                        Ok(()) => {
                            let value = u32::try_from(n).unwrap_or(u32::MAX);
                            self.max_attempts = Set { value, origin };
                        }
                        Err(b) => err(diags, v, fallback, b),
                    }
                }
            }
            // A claim about one endpoint's server, not a crate's: every PUT and DELETE written
            // later would be retried and hedged on it.
            // `false` says what every function already is: nothing claimed, accepted.
            "idempotent" if origin.is_from_defaults() && !matches!(v.value, Value::Bool(false)) => {
                err(
                    diags,
                    v,
                    fallback,
                    "`idempotent` in [defaults] would say every function's PUT or DELETE is applied at most once, functions written later included: say it of one function, inline or in its [policies.NAME]",
                );
            }
            "idempotent" => {
                if let Some(b) = boolean(diags, v, fallback, key) {
                    self.idempotent = Set { value: b, origin };
                }
            }
            "idempotency_key" => match &v.value {
                Value::Str(s) | Value::Word(s) if s == "auto" => {
                    self.idempotency_key = Set {
                        value: KeyModel::Auto,
                        origin,
                    };
                }
                Value::Str(s) | Value::Word(s) if s == "none" => {
                    self.idempotency_key = Set {
                        value: KeyModel::None,
                        origin,
                    };
                }
                Value::Word(s) if !s.contains("::") => {
                    self.idempotency_key = Set {
                        value: KeyModel::Param(s.clone()),
                        origin,
                    };
                }
                // In the file, a string: `idempotency_key = "order_id"` (or `"order.id"`), for
                // the functions of a policy that all take the key so.
                Value::Str(s) if !v.origin.is_inline() && is_param_path(s) => {
                    self.idempotency_key = Set {
                        value: KeyModel::Param(s.clone()),
                        origin,
                    };
                }
                Value::Str(s) if v.origin.is_inline() => err(
                    diags,
                    v,
                    fallback,
                    format!(
                        "idempotency_key takes `auto` or a parameter name without quotes: `idempotency_key = {s}`"
                    ),
                ),
                _ => err(
                    diags,
                    v,
                    fallback,
                    format!(
                        "idempotency_key takes \"auto\", \"none\" or the name of a parameter (\"order_id\", \"order.id\"), not {}",
                        v.render()
                    ),
                ),
            },
            "retry_on" => {
                let Value::List(items) = &v.value else {
                    return err(
                        diags,
                        v,
                        fallback,
                        "retry_on takes a list, like [connect, reset, timeout, 503]",
                    );
                };
                let mut out = Vec::new();
                for it in items {
                    let item = match &it.value {
                        Value::Str(s) | Value::Word(s) => match s.as_str() {
                            "connect" => Some(RetryItem::Connect),
                            "reset" => Some(RetryItem::Reset),
                            "timeout" => Some(RetryItem::Timeout),
                            "5xx" => {
                                err(
                                    diags,
                                    it,
                                    fallback,
                                    "list the 5xx statuses to retry one by one, like 502, 503, 504",
                                );
                                None
                            }
                            other => {
                                let hint = if let Ok(n) = other.parse::<u16>() {
                                    format!("; a status is a number: write {n}, without quotes")
                                } else {
                                    did_you_mean(other, &["connect", "reset", "timeout"])
                                        .map(|s| format!("; did you mean `{s}`?"))
                                        .unwrap_or_default()
                                };
                                err(
                                    diags,
                                    it,
                                    fallback,
                                    format!(
                                        "unknown failure class `{other}`{hint} (use connect, reset, timeout, or a status like 503)"
                                    ),
                                );
                                None
                            }
                        },
                        Value::Int(n) if (100..=599).contains(n) => {
                            Some(RetryItem::Status(*n as u16))
                        }
                        // `5xx` written inline is a number with a suffix.
                        Value::IntSuffixed(5, suffix) if suffix == "xx" => {
                            err(
                                diags,
                                it,
                                fallback,
                                "list the 5xx statuses to retry one by one, like 502, 503, 504",
                            );
                            None
                        }
                        _ => {
                            err(
                                diags,
                                it,
                                fallback,
                                format!(
                                    "{} is neither a failure class nor an HTTP status",
                                    it.render()
                                ),
                            );
                            None
                        }
                    };
                    if let Some(item) = item {
                        out.push(Set {
                            value: item,
                            origin: it.origin.clone(),
                        });
                    }
                }
                self.retry_on = Set { value: out, origin };
            }
            "backoff" => self.apply_backoff(diags, v, fallback),
            "hedge" => self.apply_hedge(diags, v, fallback),
            "fallback" => match &v.value {
                Value::Word(s) | Value::Str(s) if syn::parse_str::<syn::Path>(s).is_ok() => {
                    self.fallback = Some(Set {
                        value: s.clone(),
                        origin,
                    })
                }
                // No fallback here: nor the `fallback_on` a wider layer gave the one it named.
                // Not `[defaults]`'s, a house rule for every fallback (a narrower layer's own
                // fallback keeps to it).
                Value::Bool(false) => {
                    self.fallback = None;
                    if !self.fallback_on.origin.is_from_defaults() {
                        self.fallback_on = Settings::default().fallback_on;
                    }
                }
                _ => err(
                    diags,
                    v,
                    fallback,
                    format!(
                        "fallback takes the name (or path) of an async fn with the same parameters and return type, not {}",
                        v.render()
                    ),
                ),
            },
            "fallback_on" => {
                let items: Vec<Located> = match &v.value {
                    Value::List(items) => items.clone(),
                    Value::Word(_) | Value::Str(_) => vec![v.clone()],
                    _ => {
                        return err(
                            diags,
                            v,
                            fallback,
                            "fallback_on takes a list, like [circuit_open, deadline]",
                        );
                    }
                };
                let (mut mask, mut names) = (0u16, Vec::new());
                for it in &items {
                    match it.as_text().map(rules::fallback_kind) {
                        Some(Ok(bit)) => {
                            mask |= bit;
                            names.push(it.as_text().unwrap_or_default().to_owned());
                        }
                        Some(Err(b)) => err(diags, it, fallback, b),
                        None => err(
                            diags,
                            it,
                            fallback,
                            format!("{} is not a fallback_on kind", it.render()),
                        ),
                    }
                }
                self.fallback_on = Set {
                    value: (mask, names),
                    origin,
                };
            }
            "budget" | "breaker" | "bulkhead" | "rate_limit" | "concurrency_limit" => {
                let r = match &v.value {
                    Value::Bool(false) => Some(StateRef::Off),
                    Value::Bool(true) if key == "budget" => Some(StateRef::Default),
                    Value::Str(s) | Value::Word(s) if s == "off" || s == "none" => {
                        Some(StateRef::Off)
                    }
                    Value::Str(s) | Value::Word(s) => Some(StateRef::Named(s.clone())),
                    Value::Table(t) => Some(StateRef::Inline(t.clone())),
                    _ => {
                        err(
                            diags,
                            v,
                            fallback,
                            format!(
                                "`{key}` takes the name of a [{key}s.NAME] section, a table, or false"
                            ),
                        );
                        None
                    }
                };
                if let Some(r) = r {
                    let s = Set { value: r, origin };
                    match key {
                        "budget" => self.budget = s,
                        "breaker" => self.breaker = s,
                        "rate_limit" => self.rate_limit = s,
                        "concurrency_limit" => self.concurrency_limit = s,
                        _ => self.bulkhead = s,
                    }
                }
            }
            "client" => match v.as_text() {
                // `[defaults] client = "pg"` switched off for one function: none checked.
                None if matches!(v.value, Value::Bool(false)) => self.client = None,
                Some("off" | "none") => self.client = None,
                Some(name) => {
                    self.client = Some(Set {
                        value: name.to_owned(),
                        origin,
                    })
                }
                None => err(
                    diags,
                    v,
                    fallback,
                    "`client` takes the name of a [clients.NAME] section, or false (or \"off\")",
                ),
            },
            other => {
                let mut known: Vec<&str> = POLICY_KEYS.to_vec();
                if v.origin.is_inline() {
                    known.extend_from_slice(INLINE_ONLY_KEYS);
                }
                let hint = match (
                    synonym(other, v.origin.is_inline()),
                    did_you_mean(other, &known),
                ) {
                    (Some(s), _) => format!("; {s}"),
                    (None, Some(s)) => format!("; did you mean `{s}`?"),
                    (None, None) => format!(" (known: {})", known.join(", ")),
                };
                let msg = format!("unknown key `{other}`{hint}");
                if v.origin.is_inline() {
                    // About the whole `key = value`: at the entry (its key, on stable Rust),
                    // not at the value.
                    diags.push(fallback, msg);
                } else {
                    err(diags, v, fallback, msg);
                }
            }
        }
    }

    fn apply_hedge(&mut self, diags: &mut Diags, v: &Located, fallback: Span) {
        let table = match &v.value {
            Value::Bool(false) => {
                self.hedge = Set {
                    value: None,
                    origin: v.origin.clone(),
                };
                return;
            }
            Value::Table(t) => t,
            _ => {
                return err(
                    diags,
                    v,
                    fallback,
                    "hedge takes a table: { delay = \"50ms\", max = 1 }, or false",
                );
            }
        };
        check_table_keys(diags, table, HEDGE_KEYS, "hedge", fallback);
        // Over a wider layer's hedge, what this table leaves out is kept (as `backoff`'s).
        let (mut delay, mut max) = match &self.hedge.value {
            Some(h) => (Some(h.delay.clone()), h.max.clone()),
            None => (None, Set::builtin(defaults::HEDGE_MAX)),
        };
        for (k, item) in table {
            match k.as_str() {
                "delay" => {
                    if let Some(d) = duration(diags, item, fallback, "delay") {
                        delay = Some(Set {
                            value: d,
                            origin: item.origin.clone(),
                        });
                    }
                }
                "max" => {
                    if let Some(n) = integer(diags, item, fallback, "max") {
                        match rules::hedge_max(n) {
                            Ok(()) => {
                                max = Set {
                                    value: n as u32,
                                    origin: item.origin.clone(),
                                }
                            }
                            Err(b) => err(diags, item, fallback, b),
                        }
                    }
                }
                _ => {}
            }
        }
        match delay {
            Some(delay) => {
                self.hedge = Set {
                    value: Some(HedgeModel { delay, max }),
                    origin: v.origin.clone(),
                }
            }
            None if table.iter().any(|(k, _)| k == "delay") => {}
            // No hedge below to take it from.
            None => err(
                diags,
                v,
                fallback,
                "a hedge needs `delay`: how long an attempt runs without an answer before another starts\nhelp: e.g. hedge(delay = \"50ms\"), about the latency most calls stay under",
            ),
        }
    }

    fn apply_backoff(&mut self, diags: &mut Diags, v: &Located, fallback: Span) {
        let table = match &v.value {
            Value::Table(t) => t.clone(),
            Value::Str(s) | Value::Word(s) if s == "exponential" || s == "constant" => {
                vec![("kind".to_owned(), v.clone())]
            }
            _ => {
                return err(
                    diags,
                    v,
                    fallback,
                    "backoff takes a table: { kind = \"exponential\", initial = \"100ms\", max = \"2s\", multiplier = 2, jitter = \"full\" }",
                );
            }
        };
        check_table_keys(diags, &table, BACKOFF_KEYS, "backoff", fallback);
        for (k, item) in &table {
            let origin = item.origin.clone();
            match k.as_str() {
                "kind" => match item.as_text() {
                    Some("exponential") => {
                        self.backoff.kind = Set {
                            value: BackoffKind::Exponential,
                            origin,
                        }
                    }
                    Some("constant") => {
                        self.backoff.kind = Set {
                            value: BackoffKind::Constant,
                            origin,
                        }
                    }
                    _ => err(
                        diags,
                        item,
                        fallback,
                        "backoff kind is \"exponential\" or \"constant\"",
                    ),
                },
                "jitter" => {
                    let j = match item.as_text() {
                        Some("full") => Some(Jitter::Full),
                        Some("equal") => Some(Jitter::Equal),
                        Some("decorrelated") => Some(Jitter::Decorrelated),
                        Some("none") => Some(Jitter::None),
                        _ => None,
                    };
                    match j {
                        Some(j) => self.backoff.jitter = Set { value: j, origin },
                        None => err(
                            diags,
                            item,
                            fallback,
                            "jitter is \"full\", \"equal\", \"decorrelated\" or \"none\"",
                        ),
                    }
                }
                "initial" => {
                    if let Some(d) = duration(diags, item, fallback, "initial") {
                        self.backoff.initial = Set { value: d, origin };
                    }
                }
                "max" => {
                    if let Some(d) = duration(diags, item, fallback, "max") {
                        self.backoff.max = Set { value: d, origin };
                    }
                }
                "multiplier" => {
                    if let Some(x) = number(diags, item, fallback, "multiplier") {
                        match rules::backoff_multiplier(x) {
                            Ok(()) => {
                                self.backoff.multiplier_milli = Set {
                                    value: (x * 1000.0).round() as u32,
                                    origin,
                                }
                            }
                            Err(b) => err(diags, item, fallback, b),
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_param_path;

    #[test]
    fn a_key_parameter_path_as_the_file_writes_it() {
        for ok in ["order_id", "order.id", "self.order_id", "pair.0", "r#type"] {
            assert!(is_param_path(ok), "{ok}");
        }
        for bad in [
            "",
            "order.",
            ".id",
            "order-id",
            "a::b",
            "1st",
            "self.",
            "order.id()",
        ] {
            assert!(!is_param_path(bad), "{bad}");
        }
    }
}
