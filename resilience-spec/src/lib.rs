//! The rule book of `#[resilient]` policies: one place for the HTTP method model, the built-in
//! defaults, the bounds of every setting and every rule with its message.
//!
//! The macro checks a policy with these rules at compile time, pointing the message at the
//! user's tokens; the runtime checks a hand-built policy and every run-time override with the
//! same rules, so what the compiler refuses the runtime refuses with the same words. No
//! proc-macro dependencies: a small, plain crate.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

/// The HTTP method of a call, as far as retry safety is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `POST`
    Post,
    /// `PATCH`
    Patch,
    /// A method the rules do not know, or one the runtime could not see: the least safe.
    Other,
}

impl Method {
    /// The methods that can be written in a policy, by name.
    pub const NAMED: &'static [Method] = &[
        Method::Get,
        Method::Head,
        Method::Options,
        Method::Trace,
        Method::Put,
        Method::Delete,
        Method::Post,
        Method::Patch,
    ];

    /// Safe methods have no effect on the server: retried on any transient failure.
    pub const fn is_safe(self) -> bool {
        matches!(
            self,
            Method::Get | Method::Head | Method::Options | Method::Trace
        )
    }

    /// Methods HTTP defines as idempotent, which servers may or may not honour.
    pub const fn is_idempotent_by_spec(self) -> bool {
        self.is_safe() || matches!(self, Method::Put | Method::Delete)
    }

    /// Methods that may be retried after an ambiguous failure only with an `Idempotency-Key`.
    pub const fn needs_key(self) -> bool {
        matches!(self, Method::Post | Method::Patch | Method::Other)
    }

    /// How unsafe it is to resend: higher is less safe.
    pub const fn risk(self) -> u8 {
        if self.is_safe() {
            0
        } else if self.needs_key() {
            2
        } else {
            1
        }
    }

    /// The less safe of two methods (`self` on a tie).
    pub const fn least_safe(self, other: Method) -> Method {
        if other.risk() > self.risk() {
            other
        } else {
            self
        }
    }

    /// The method's name, upper case (`OTHER` for [`Method::Other`]).
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Other => "OTHER",
        }
    }

    /// A named method, case-insensitively; `None` for anything else.
    pub fn parse(s: &str) -> Option<Method> {
        Method::NAMED
            .iter()
            .copied()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a request may be sent again after it may have reached the server: safe methods
/// always, POST and PATCH only with a key, PUT and DELETE with a key or declared idempotent.
pub const fn may_resend(method: Method, keyed: bool, idempotent: bool) -> bool {
    if method.is_safe() {
        true
    } else if method.needs_key() {
        keyed
    } else {
        idempotent || keyed
    }
}

/// The failures a `fallback` may be called on (`fallback_on`), by name, each a bit of a mask.
pub mod fallback_on {
    /// `(name, bit, meaning)`.
    pub const KINDS: &[(&str, u16, &str)] = &[
        ("any", ANY, "every final failure"),
        (
            "call",
            CALL,
            "the function's own error after its last attempt",
        ),
        ("timeout", TIMEOUT, "the last attempt's timeout"),
        ("deadline", DEADLINE, "the call's deadline"),
        ("circuit_open", CIRCUIT_OPEN, "an open circuit breaker"),
        ("budget_exhausted", BUDGET_EXHAUSTED, "a spent retry budget"),
        (
            "bulkhead_full",
            BULKHEAD_FULL,
            "a full bulkhead, or a concurrency limit reached",
        ),
        ("rate_limited", RATE_LIMITED, "the rate limit"),
    ];
    /// The function's own error.
    pub const CALL: u16 = 1;
    /// An attempt timeout.
    pub const TIMEOUT: u16 = 1 << 1;
    /// The deadline.
    pub const DEADLINE: u16 = 1 << 2;
    /// An open breaker.
    pub const CIRCUIT_OPEN: u16 = 1 << 3;
    /// A spent budget.
    pub const BUDGET_EXHAUSTED: u16 = 1 << 4;
    /// A full bulkhead.
    pub const BULKHEAD_FULL: u16 = 1 << 5;
    /// The rate limit.
    pub const RATE_LIMITED: u16 = 1 << 6;
    /// Every final failure, including kinds added later.
    pub const ANY: u16 = u16::MAX;

    /// The bit of a name.
    pub fn parse(name: &str) -> Option<u16> {
        KINDS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, b, _)| *b)
    }
}

/// A non-negative TOML integer as its parser hands it over: the digits as written (`_`
/// separators, a leading `+`) and the base apart (`0x1F7`, `0o17`, `0b10`). `None` if negative
/// or beyond `u64`. One reading for the policy file at compile time and the override file at
/// run time.
pub fn toml_uint(digits: &str, radix: u32) -> Option<u64> {
    let digits = digits.replace('_', "");
    u64::from_str_radix(digits.trim_start_matches('+'), radix).ok()
}

/// The line and column (from 1) of a byte offset in a policy file's text, as an editor shows
/// them: columns count characters, not bytes, a leading byte order mark is not one, and an
/// offset past the end or inside a character is taken at the character's start.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let last = before.rsplit('\n').next().unwrap_or("");
    let last = if line == 1 {
        last.strip_prefix('\u{feff}').unwrap_or(last)
    } else {
        last
    };
    (line, last.chars().count() + 1)
}

/// A number written in a policy (`0.25`, `1e-3`, with `_` separators), parsed as `f64`, or
/// what is wrong with it, to follow the text as written: no number, a negative one, one too
/// large to be finite, or one too small to tell from 0 (`1e-400` is not 0, which would read as
/// "no retries bought"; a value under `f64`'s smallest normal number means nothing a policy
/// could count).
pub fn policy_float(text: &str) -> Result<f64, &'static str> {
    let text = text.replace('_', "");
    let x = text.parse::<f64>().map_err(|_| "is not a number")?;
    if x.is_nan() || x < 0.0 {
        return Err("is not a non-negative number");
    }
    if x.is_infinite() {
        return Err("is too large to be a number");
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or("");
    let written_zero = !mantissa.bytes().any(|b| matches!(b, b'1'..=b'9'));
    if written_zero || x >= f64::MIN_POSITIVE {
        Ok(x)
    } else {
        Err("is too small to tell from 0: write 0, or a larger number")
    }
}

/// Is this an HTTP status that may be retried at all (408, 429, 5xx)? Not the 5xx that say
/// the request itself cannot be served, and would be answered the same again: 501 Not
/// Implemented, 505 HTTP Version Not Supported, 506 Variant Also Negotiates, 508 Loop
/// Detected, 510 Not Extended, 511 Network Authentication Required (a captive portal). They
/// are no sign of an unhealthy dependency either: a circuit breaker does not count them.
pub const fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599) && !matches!(status, 501 | 505 | 506 | 508 | 510 | 511)
}

pub mod packed;
pub mod paths;

/// The built-in defaults of every setting.
pub mod defaults {
    use std::time::Duration;

    /// Per-attempt timeout.
    pub const TIMEOUT: Duration = Duration::from_secs(10);
    /// Total time for the call.
    pub const DEADLINE: Duration = Duration::from_secs(30);
    /// Attempts including the first.
    pub const MAX_ATTEMPTS: u32 = 3;
    /// First backoff delay.
    pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
    /// Largest backoff delay.
    pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
    /// Backoff growth per attempt, in thousandths (2000 = ×2).
    pub const BACKOFF_MULTIPLIER_MILLI: u32 = 2000;
    /// Longest `Retry-After` honoured.
    pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
    /// Statuses retried by default, besides connect, reset and timeout failures.
    pub const RETRY_STATUSES: &[u16] = &[408, 429, 502, 503, 504];
    /// Retry budget: share of first attempts retries may add.
    pub const BUDGET_RATIO: f64 = 0.1;
    /// Retry budget: retries per second always allowed.
    pub const BUDGET_MIN_PER_SEC: u32 = 10;
    /// Breaker: failure share that opens it.
    pub const BREAKER_FAILURE_RATE: f64 = 0.5;
    /// Breaker: outcomes (attempts) seen before it may open.
    pub const BREAKER_MIN_CALLS: u32 = 10;
    /// Breaker: outcomes (attempts) in its window.
    pub const BREAKER_WINDOW: u32 = 20;
    /// Breaker: how long it stays open.
    pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);
    /// Breaker: a time-based window's length (zero: the window counts attempts).
    pub const BREAKER_WINDOW_FOR: Duration = Duration::ZERO;
    /// Breaker: a success at least this slow counts as slow (zero: slowness not watched).
    pub const BREAKER_SLOW_CALL_DURATION: Duration = Duration::ZERO;
    /// Breaker: the share of slow calls that opens it.
    pub const BREAKER_SLOW_CALL_RATE: f64 = 1.0;
    /// Breaker: probes let through when half open.
    pub const BREAKER_HALF_OPEN_CALLS: u32 = 3;
    /// Rate limit: the period `rate` is counted over.
    pub const RATE_LIMIT_PER: Duration = Duration::from_secs(1);
    /// Rate limit: how long a call may wait for a permit (zero: refuse at once).
    pub const RATE_LIMIT_MAX_WAIT: Duration = Duration::ZERO;
    /// Hedging: hedges at most, besides the first attempt.
    pub const HEDGE_MAX: u32 = 1;
    /// Adaptive concurrency limit: the limit it starts from.
    pub const CONCURRENCY_INITIAL: u32 = 16;
    /// Adaptive concurrency limit: the lowest it goes.
    pub const CONCURRENCY_MIN: u32 = 1;
    /// Adaptive concurrency limit: the highest it goes.
    pub const CONCURRENCY_MAX: u32 = 256;
    /// Adaptive concurrency limit: the factor the limit is multiplied by on overload.
    pub const CONCURRENCY_BACKOFF: f64 = 0.9;
    /// Adaptive concurrency limit: how long a call may wait for a slot (zero: refuse at once).
    pub const CONCURRENCY_MAX_WAIT: Duration = Duration::ZERO;
    /// Client: connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    /// Client: how long an idle pooled connection is kept: half of gunicorn's 2 s keep-alive,
    /// the lowest among common servers.
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
}

/// The bounds of every setting.
pub mod bounds {
    use std::ops::RangeInclusive;

    /// `max_attempts`.
    pub const MAX_ATTEMPTS: RangeInclusive<u32> = 1..=10;
    /// `budget.ratio`.
    pub const BUDGET_RATIO: RangeInclusive<f64> = 0.0..=1.0;
    /// `budget.min_per_sec`, largest.
    pub const BUDGET_MIN_PER_SEC_MAX: u32 = 1_000_000;
    /// `breaker.window`, `breaker.min_calls`, `breaker.half_open_calls`.
    pub const BREAKER_COUNT: RangeInclusive<u32> = 1..=1024;
    /// `bulkhead.max_concurrent`.
    pub const BULKHEAD_MAX_CONCURRENT: RangeInclusive<u32> = 1..=1_000_000;
    /// `rate_limit.rate` (permits per `per`) and `rate_limit.burst`.
    pub const RATE_LIMIT_COUNT: RangeInclusive<u64> = 1..=1_000_000;
    /// `rate_limit.per`.
    pub const RATE_LIMIT_PER: RangeInclusive<std::time::Duration> =
        std::time::Duration::from_millis(1)..=std::time::Duration::from_secs(24 * 3600);
    /// `hedge.max`: hedges besides the first attempt.
    pub const HEDGE_MAX: RangeInclusive<u32> = 1..=3;
    /// `concurrency_limit.initial`, `.min` and `.max`.
    pub const CONCURRENCY_LIMIT: RangeInclusive<u64> = 1..=1_000_000;
    /// `breaker.window_for`, a time-based window's length.
    pub const BREAKER_WINDOW_FOR: RangeInclusive<std::time::Duration> =
        std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600);
    /// `backoff.multiplier`.
    pub const BACKOFF_MULTIPLIER: RangeInclusive<f64> = 1.0..=100.0;
}

/// A broken rule: what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// What is wrong.
    pub what: String,
    /// How to fix it, when there is one obvious fix.
    pub help: Option<String>,
}

impl Broken {
    fn new(what: impl Into<String>) -> Broken {
        Broken {
            what: what.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Broken {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)?;
        if let Some(h) = &self.help {
            write!(f, "\nhelp: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Broken {}

/// A duration as written in a policy: `250ms`, `1.5s`, `2m`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000) {
        format!("{}ns", d.as_nanos())
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}us", d.as_micros())
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses `"250ms"`, `"5s"`, `"1m"`, `"1h"`, `"1500us"`, `"1.5s"`: a number (decimals allowed)
/// and a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, rest) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "`{text}` is not a duration: write a number and a unit, like \"250ms\", \"1.5s\" or \"1m\""
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("`{text}` is too large"))?;
    // A decimal fraction: `1.5s`.
    let (frac, unit) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            if end == 0 {
                return Err(format!(
                    "`{text}` has a `.` without digits after it: write \"{n}.5s\" or \"{n}s\""
                ));
            }
            if end > 9 {
                return Err(format!(
                    "`{text}` has more decimals than a nanosecond holds"
                ));
            }
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let nanos_per: u64 = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => {
            let t = text.trim();
            return Err(format!("`{text}` has no unit: write \"{t}ms\" or \"{t}s\""));
        }
        // `1m30s`: one unit per duration.
        u if u.starts_with(|c: char| c.is_ascii_alphabetic())
            && u.contains(|c: char| c.is_ascii_digit()) =>
        {
            return Err(format!(
                "`{text}` has more than one unit: a duration is one number and one unit, like \"90s\" or \"1.5m\""
            ));
        }
        u => {
            return Err(format!(
                "`{u}` is not a duration unit: use ns, us, ms, s, m or h"
            ));
        }
    };
    let whole = n.checked_mul(nanos_per);
    let part = if frac.is_empty() {
        Some(0)
    } else {
        // frac has 1..=9 digits: frac / 10^len of a unit, in nanoseconds, rounded down.
        let digits: u64 = frac.parse().unwrap_or(0);
        let scale = 10u64.pow(frac.len() as u32);
        let nanos = u128::from(digits) * u128::from(nanos_per);
        // A part of a nanosecond is no time the clock can wait: `0.5ns` once read as 0 (a
        // `max_wait` of nothing), `1.5ns` as 1ns.
        if nanos % u128::from(scale) != 0 {
            return Err(format!(
                "`{text}` is not a whole number of nanoseconds: the clock counts no finer"
            ));
        }
        Some((nanos / u128::from(scale)) as u64)
    };
    whole
        .zip(part)
        .and_then(|(w, p)| w.checked_add(p))
        .map(Duration::from_nanos)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Every rule, each a function of the values it constrains.
pub mod rules {
    use super::*;

    fn within<T: PartialOrd + fmt::Display>(
        key: &str,
        v: T,
        range: &RangeInclusive<T>,
        hint: &str,
    ) -> Result<(), Broken> {
        if range.contains(&v) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "{key} = {v} is outside {}..={}{hint}",
                range.start(),
                range.end()
            )))
        }
    }

    /// `max_attempts` in 1..=10.
    /// Taken as written (`5000000000` is no `u32`, and is said as written, not cut down).
    pub fn max_attempts(n: impl Into<u64>) -> Result<(), Broken> {
        let (lo, hi) = bounds::MAX_ATTEMPTS.into_inner();
        within(
            "max_attempts",
            n.into(),
            &(u64::from(lo)..=u64::from(hi)),
            " (1 means no retry)",
        )
    }

    /// What an override may do to `max_attempts`: a function built with one attempt keeps it.
    /// The code generated for it runs its body once (the body may move its arguments, which
    /// are not cloned for another attempt), so more attempts could not be honoured.
    pub fn attempts_within_build(built: u32, wanted: u32) -> Result<(), Broken> {
        if built <= 1 && wanted > 1 {
            Err(Broken::new(format!(
                "max_attempts = {wanted}, but this function was built with max_attempts = 1: the code generated for it runs its body once"
            ))
            .help("set max_attempts in the code (or its resilience.toml) and rebuild; an override can change the attempts of a function built with retries"))
        } else {
            Ok(())
        }
    }

    /// A timeout longer than zero.
    pub fn timeout_nonzero(key: &str, d: Duration) -> Result<(), Broken> {
        if d.is_zero() {
            Err(Broken::new(format!("{key} must be longer than zero")))
        } else {
            Ok(())
        }
    }

    /// The attempt timeout fits in the deadline.
    pub fn timeout_within_deadline(
        timeout: Duration,
        deadline: Duration,
        max_attempts: u32,
    ) -> Result<(), Broken> {
        if timeout <= deadline {
            return Ok(());
        }
        Err(Broken::new(format!(
            "timeout ({}) is longer than the deadline ({}): the first attempt could never use its full timeout",
            fmt_duration(timeout),
            fmt_duration(deadline)
        ))
        .help(format!(
            "make the deadline at least the timeout, e.g. deadline = \"{}\"",
            fmt_duration(timeout.saturating_mul(max_attempts.max(1)))
        )))
    }

    /// Backoff `initial` not above `max`.
    pub fn backoff_order(initial: Duration, max: Duration) -> Result<(), Broken> {
        if initial <= max {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "backoff initial ({}) is longer than its max ({})",
                fmt_duration(initial),
                fmt_duration(max)
            )))
        }
    }

    /// Backoff multiplier in 1..=100.
    pub fn backoff_multiplier(x: f64) -> Result<(), Broken> {
        if bounds::BACKOFF_MULTIPLIER.contains(&x) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "backoff multiplier {x} is outside 1..=100"
            )))
        }
    }

    /// Only transient statuses may be retried.
    pub fn retryable_status(code: u16) -> Result<(), Broken> {
        if is_transient_status(code) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "status {code} is permanent: sending the same request again gets the same answer"
            ))
            .help("retry_on takes connect, reset, timeout, 408, 429 and 5xx statuses but 501, 505, 506, 508, 510 and 511"))
        }
    }

    /// `idempotent` cannot make a POST or PATCH safe.
    pub fn idempotent_method(method: Method, idempotent: bool) -> Result<(), Broken> {
        if idempotent && method.needs_key() {
            Err(Broken::new(format!(
                "`idempotent` is for PUT and DELETE: a {method} is resent only under an idempotency key, the same on every attempt, so that the server can tell a resend from a new request"
            ))
            .help(format!("use `idempotency_key = auto`: a server that replays by key answers a resend with its first answer, and a {method} the server applies at most once by itself (a \"like\" already given answers 200) may ignore the header")))
        } else {
            Ok(())
        }
    }

    /// A function whose method is neither declared nor inferred (`known` false) retries only
    /// failures where nothing was sent: whether resending is safe cannot be told, keyed or
    /// not. `ambiguous` as for [`safe_retry`].
    pub fn method_known(known: bool, max_attempts: u32, ambiguous: bool) -> Result<(), Broken> {
        if known || max_attempts <= 1 || !ambiguous {
            return Ok(());
        }
        Err(Broken::new(
            "cannot tell which HTTP method this function sends, so cannot tell whether retrying it is safe",
        )
        .help(
            "declare the least safe method it may ever send: `method = POST` if it can be a POST \
             (then also `idempotency_key = auto`, or `retry_on = [connect]`), `method = GET` only if it never \
             sends anything but GET or HEAD; at run time the method actually sent decides, least safe first",
        ))
    }

    /// The central rule: a request that is not safe to resend is not retried after a failure
    /// where it may have reached the server. `ambiguous` is whether `retry_on` lists any
    /// class but `connect`.
    pub fn safe_retry(
        method: Method,
        keyed: bool,
        idempotent: bool,
        max_attempts: u32,
        ambiguous: bool,
    ) -> Result<(), Broken> {
        if max_attempts <= 1 || !ambiguous || may_resend(method, keyed, idempotent) {
            return Ok(());
        }
        let mut help = String::from(
            "fix it with one of:\n  - `idempotency_key = auto` (and a server that replays by key)\n  - `retry_on = [connect]`: retry only failures where nothing was sent\n  - `max_attempts = 1`: no retry",
        );
        if !method.needs_key() {
            help.push_str(&format!(
                "\n  - `idempotent`: you assert the server applies this {method} at most once"
            ));
        }
        Err(Broken::new(format!(
            "this {method} could be retried after it may have reached the server, without an idempotency key: a retry could apply it twice"
        ))
        .help(help))
    }

    /// Budget ratio in 0..=1, counted in thousandths: 0, or at least 0.001 (a smaller one would
    /// count as 0, no retry bought, not what it says).
    pub fn budget_ratio(x: f64) -> Result<(), Broken> {
        within(
            "budget ratio",
            x,
            &bounds::BUDGET_RATIO,
            " (0.1 lets retries add 10%)",
        )?;
        if x > 0.0 && x < 0.001 {
            return Err(Broken::new(format!(
                "budget ratio {x} is under 0.001: the budget counts in thousandths of a retry per first attempt, and this would count as 0"
            ))
            .help("write 0 for no retries beyond `min_per_sec`, or 0.001 or more"));
        }
        Ok(())
    }

    /// Budget floor not above a million per second.
    pub fn budget_min_per_sec(n: u64) -> Result<(), Broken> {
        if n <= u64::from(bounds::BUDGET_MIN_PER_SEC_MAX) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "min_per_sec {n} is above {}",
                bounds::BUDGET_MIN_PER_SEC_MAX
            )))
        }
    }

    /// Breaker failure rate in (0, 1].
    pub fn breaker_failure_rate(x: f64) -> Result<(), Broken> {
        if x > 0.0 && x <= 1.0 {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "failure_rate {x} is outside (0, 1]: 0.5 opens at half the calls failing"
            )))
        }
    }

    /// Breaker `slow_call_rate` in (0, 1].
    pub fn breaker_slow_call_rate(x: f64) -> Result<(), Broken> {
        if x > 0.0 && x <= 1.0 {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "slow_call_rate {x} is outside (0, 1]: 0.5 opens at half the calls slow"
            )))
        }
    }

    /// Breaker `window_for` (a time-based window) in 1s..=1h.
    pub fn breaker_window_for(d: Duration) -> Result<(), Broken> {
        let r = &bounds::BREAKER_WINDOW_FOR;
        if r.contains(&d) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "window_for = {} is outside {}..={}",
                fmt_duration(d),
                fmt_duration(*r.start()),
                fmt_duration(*r.end())
            ))
            .help("a time-based window counts the calls of the last `window_for`, e.g. \"60s\""))
        }
    }

    /// A slow-call threshold shorter than the attempt timeout: an attempt is cut at its
    /// timeout, so a success could never be slower, and the breaker would never see one.
    pub fn slow_call_within_timeout(slow: Duration, timeout: Duration) -> Result<(), Broken> {
        if slow.is_zero() || slow < timeout {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "slow_call_duration ({}) is not shorter than the attempt timeout ({}): an attempt ends at its timeout, so no success could be that slow and the breaker would never see a slow call",
                fmt_duration(slow),
                fmt_duration(timeout)
            ))
            .help("make slow_call_duration shorter than timeout, e.g. half of it"))
        }
    }

    /// Breaker `window`, `min_calls`, `half_open_calls` in 1..=1024.
    pub fn breaker_count(key: &str, n: u64) -> Result<(), Broken> {
        let r = &bounds::BREAKER_COUNT;
        if n >= u64::from(*r.start()) && n <= u64::from(*r.end()) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "{key} = {n} is outside {}..={}",
                r.start(),
                r.end()
            )))
        }
    }

    /// Breaker `min_calls` not above its window.
    pub fn breaker_min_calls(min_calls: u32, window: u32) -> Result<(), Broken> {
        if min_calls <= window {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "min_calls ({min_calls}) is larger than the window ({window}): the breaker could never open"
            )))
        }
    }

    /// Bulkhead `max_concurrent` in 1..=1000000.
    pub fn bulkhead_max_concurrent(n: u64) -> Result<(), Broken> {
        let r = &bounds::BULKHEAD_MAX_CONCURRENT;
        if n >= u64::from(*r.start()) && n <= u64::from(*r.end()) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "max_concurrent = {n} is outside {}..={}",
                r.start(),
                r.end()
            )))
        }
    }

    /// Rate limit `rate` and `burst` in 1..=1000000.
    pub fn rate_limit_count(key: &str, n: u64) -> Result<(), Broken> {
        let r = &bounds::RATE_LIMIT_COUNT;
        if r.contains(&n) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "rate_limit {key} = {n} is outside {}..={}",
                r.start(),
                r.end()
            ))
            .help(if key == "burst" {
                "burst is how many calls may go at once after a quiet spell: 1 spaces every call evenly"
            } else {
                "rate is how many calls may start per `per` (default 1s), e.g. rate = 100"
            }))
        }
    }

    /// Rate limit `per` in 1ms..=24h.
    pub fn rate_limit_per(per: Duration) -> Result<(), Broken> {
        let r = &bounds::RATE_LIMIT_PER;
        if r.contains(&per) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "rate_limit per = {} is outside {}..={}",
                fmt_duration(per),
                fmt_duration(*r.start()),
                fmt_duration(*r.end())
            )))
        }
    }

    /// The shortest wait a backoff can draw before the first retry: its first step
    /// (`initial`; capped at `max` unless `constant`), less what its `jitter` may take off.
    pub fn shortest_first_backoff(
        constant: bool,
        initial: Duration,
        max: Duration,
        jitter: crate::packed::PackedJitter,
    ) -> Duration {
        use crate::packed::PackedJitter;
        let first = if constant { initial } else { initial.min(max) };
        match jitter {
            PackedJitter::Full => Duration::ZERO,
            PackedJitter::Equal => first / 2,
            PackedJitter::Decorrelated | PackedJitter::None => first,
        }
    }

    /// With retries (`max_attempts` above 1), a backoff whose shortest wait before the first
    /// retry (`first_wait`, [`shortest_first_backoff`]) is shorter than the deadline: else no
    /// retry could ever begin (the wait counts against the deadline, after a first attempt
    /// that took some of it), and the retries written are never made. `origins` says where
    /// the backoff and the deadline came from, for the message.
    pub fn backoff_within_deadline(
        first_wait: Duration,
        max_attempts: u32,
        deadline: Duration,
        origins: Option<(&str, &str)>,
    ) -> Result<(), Broken> {
        if max_attempts <= 1 || first_wait < deadline {
            return Ok(());
        }
        let (b, d) = match origins {
            Some((b, d)) => (format!(" ({b})"), format!(", {d}")),
            None => (String::new(), String::new()),
        };
        Err(Broken::new(format!(
            "the backoff{b} waits at least {} before a retry, not less than the deadline ({}{d}): no retry can begin before the deadline, so max_attempts = {max_attempts} is never used",
            fmt_duration(first_wait),
            fmt_duration(deadline)
        ))
        .help(format!(
            "a backoff well within the deadline, e.g. backoff initial = \"{}\", or max_attempts = 1 for no retry",
            fmt_duration(Duration::from_millis((deadline.as_millis() / 10) as u64))
        )))
    }

    /// A rate-limit wait shorter than the deadline, which it counts against: a call that may
    /// wait the whole deadline for a permit could be left no time to send. `origins` says
    /// where each value came from, for the message.
    pub fn rate_limit_wait_within_deadline(
        max_wait: Duration,
        deadline: Duration,
        origins: Option<(&str, &str)>,
    ) -> Result<(), Broken> {
        wait_within_deadline("rate_limit", "a permit", max_wait, deadline, origins)
    }

    /// Adaptive concurrency `initial`, `min` and `max` in 1..=1000000.
    pub fn concurrency_count(key: &str, n: u64) -> Result<(), Broken> {
        let r = &bounds::CONCURRENCY_LIMIT;
        if r.contains(&n) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "concurrency_limit {key} = {n} is outside {}..={}",
                r.start(),
                r.end()
            ))
            .help("the limit counts calls in flight at once: min is the fewest it goes down to, max the most it grows to"))
        }
    }

    /// Adaptive concurrency `min <= initial <= max`.
    pub fn concurrency_order(min: u32, initial: u32, max: u32) -> Result<(), Broken> {
        if min <= initial && initial <= max {
            return Ok(());
        }
        Err(Broken::new(format!(
            "concurrency_limit needs min <= initial <= max, not min = {min}, initial = {initial}, max = {max}: the limit starts at initial and moves between min and max"
        ))
        .help(format!(
            "e.g. min = {}, initial = {}, max = {}",
            min.min(initial).min(max),
            initial.clamp(min.min(max), min.max(max)),
            min.max(initial).max(max)
        )))
    }

    /// Adaptive concurrency `backoff` strictly between 0 and 1.
    pub fn concurrency_backoff(x: f64) -> Result<(), Broken> {
        if x > 0.0 && x < 1.0 {
            return Ok(());
        }
        Err(Broken::new(format!(
            "concurrency_limit backoff = {x} is not between 0 and 1 (both excluded): on overload the limit is multiplied by it, so 1 or more would never lower it and 0 would drop it to min at once"
        ))
        .help("0.9 lowers the limit by a tenth on each overload"))
    }

    /// An adaptive-concurrency latency threshold longer than zero and shorter than the attempt
    /// timeout: an attempt ends at its timeout, so no answer could be slower. `origins` says
    /// where each value came from, for the message.
    pub fn concurrency_latency_within_timeout(
        latency: Duration,
        timeout: Duration,
        origins: Option<(&str, &str)>,
    ) -> Result<(), Broken> {
        if latency.is_zero() {
            return Err(Broken::new(
                "concurrency_limit latency must be longer than zero: every answer would count as slow and the limit would only go down",
            )
            .help("the latency a healthy dependency stays under, e.g. its 99th percentile"));
        }
        if latency < timeout {
            return Ok(());
        }
        let (l, t) = match origins {
            Some((l, t)) => (format!(", {l}"), format!(", {t}")),
            None => (String::new(), String::new()),
        };
        Err(Broken::new(format!(
            "concurrency_limit latency ({}{l}) is not shorter than the attempt timeout ({}{t}): an attempt ends at its timeout, so no answer could be slower and only timeouts would lower the limit",
            fmt_duration(latency),
            fmt_duration(timeout)
        ))
        .help("make latency shorter than timeout: the latency a healthy dependency stays under"))
    }

    /// An adaptive-concurrency wait shorter than the deadline it counts against.
    pub fn concurrency_wait_within_deadline(
        max_wait: Duration,
        deadline: Duration,
        origins: Option<(&str, &str)>,
    ) -> Result<(), Broken> {
        wait_within_deadline("concurrency_limit", "a slot", max_wait, deadline, origins)
    }

    /// A wait for `what` (set by `setting`'s `max_wait`) shorter than the deadline it counts
    /// against.
    fn wait_within_deadline(
        setting: &str,
        what: &str,
        max_wait: Duration,
        deadline: Duration,
        origins: Option<(&str, &str)>,
    ) -> Result<(), Broken> {
        if max_wait < deadline {
            return Ok(());
        }
        let (w, d) = match origins {
            Some((w, d)) => (format!(", {w}"), format!(", {d}")),
            None => (String::new(), String::new()),
        };
        Err(Broken::new(format!(
            "{setting} max_wait ({}{w}) is not shorter than the deadline ({}{d}): the wait for {what} counts against the deadline, so a call could wait it all and never be sent",
            fmt_duration(max_wait),
            fmt_duration(deadline)
        ))
        .help(format!(
            "wait at most part of the deadline, e.g. max_wait = \"{}\", or max_wait = \"0ms\" to refuse at once",
            fmt_duration(Duration::from_millis((deadline.as_millis() / 4) as u64))
        )))
    }

    /// A fixed bulkhead and an adaptive concurrency limit both bound the calls in flight:
    /// a function has one or the other.
    pub fn concurrency_not_with_bulkhead() -> Broken {
        Broken::new(
            "bulkhead and concurrency_limit both bound the calls in flight, one with a fixed number, the other with a limit that follows the latency: with both, the smaller would decide and the other would only get in the way",
        )
        .help("keep one: `bulkhead` for a fixed bound, `concurrency_limit` (whose `max` caps it like max_concurrent) for one that adapts")
    }

    /// `hedge.max` in 1..=3.
    pub fn hedge_max(n: u64) -> Result<(), Broken> {
        let r = &bounds::HEDGE_MAX;
        if n >= u64::from(*r.start()) && n <= u64::from(*r.end()) {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "hedge max = {n} is outside {}..={}: each hedge is one more request in flight at once",
                r.start(),
                r.end()
            )))
        }
    }

    /// A hedge sends the request again while the first may still be running: only where a
    /// duplicate is harmless (safe methods, PUT/DELETE declared `idempotent`, keyed requests).
    pub fn hedge_safe(method: Method, keyed: bool, idempotent: bool) -> Result<(), Broken> {
        if may_resend(method, keyed, idempotent) {
            return Ok(());
        }
        let mut help = String::from(
            "fix it with one of:\n  - `idempotency_key = auto` (the server half answers a concurrent duplicate with 409, through a store every instance shares)\n  - `hedge = false`: no hedging",
        );
        if !method.needs_key() {
            help.push_str(&format!(
                "\n  - `idempotent`: you assert the server applies this {method} at most once"
            ));
        }
        Err(Broken::new(format!(
            "this {method} would be hedged without an idempotency key: a hedge sends it again while the first may still be applying it, so it could be applied twice"
        ))
        .help(help))
    }

    /// All hedges start before the deadline: `delay × max` shorter than it.
    pub fn hedge_within_deadline(
        delay: Duration,
        max: u32,
        deadline: Duration,
    ) -> Result<(), Broken> {
        if delay.is_zero() {
            return Err(Broken::new(
                "hedge delay must be longer than zero: a hedge sent at once doubles every request",
            )
            .help("hedge after the latency most calls stay under, e.g. its 95th percentile"));
        }
        if delay.saturating_mul(max) < deadline {
            return Ok(());
        }
        Err(Broken::new(format!(
            "hedge delay ({}) × max ({max}) is not shorter than the deadline ({}): the last hedge could never start",
            fmt_duration(delay),
            fmt_duration(deadline)
        ))
        .help("shorten the delay, hedge fewer times, or lengthen the deadline"))
    }

    /// A hedge delay shorter than the attempt timeout: a hedge starts beside an attempt still
    /// without an answer after `delay`, and one that ends at its timeout first is never
    /// hedged.
    pub fn hedge_within_timeout(delay: Duration, timeout: Duration) -> Result<(), Broken> {
        if delay < timeout {
            return Ok(());
        }
        Err(Broken::new(format!(
            "hedge delay ({}) is not shorter than the attempt timeout ({}): the attempt ends before its hedge could start",
            fmt_duration(delay),
            fmt_duration(timeout)
        ))
        .help("hedge after the latency most calls stay under, well inside the timeout"))
    }

    /// A `fallback_on` name is one of [`fallback_on::KINDS`].
    pub fn fallback_kind(name: &str) -> Result<u16, Broken> {
        fallback_on::parse(name).ok_or_else(|| {
            let names: Vec<&str> = fallback_on::KINDS.iter().map(|k| k.0).collect();
            Broken::new(format!("unknown fallback_on kind `{name}`"))
                .help(format!("fallback_on takes {}", names.join(", ")))
        })
    }

    /// A fallback is another function: calling the function itself on failure would start the
    /// failing call again, forever.
    ///
    /// A method (`method`: it takes `self`) is named by `Self::name` only: a bare `name` in
    /// its fallback is a function of the module (called with the receiver first), another
    /// function. A function without a receiver may be a free one, named by `name` or
    /// `self::name`, or an associated one, named by `Self::name`, which the macro cannot tell
    /// apart: all three are refused (an associated function falling back on the module's
    /// function of its name writes its path, `crate::…::name`). A path through `crate::` or
    /// `super::` may name it too, or a function of the same name in another module: not
    /// refused.
    pub fn fallback_not_itself(fallback: &str, function: &str, method: bool) -> Result<(), Broken> {
        let f = fallback.replace(' ', "");
        let bare = if method {
            f.strip_prefix("Self::")
        } else {
            Some(
                f.strip_prefix("Self::")
                    .or_else(|| f.strip_prefix("self::"))
                    .unwrap_or(&f),
            )
        };
        if bare == Some(function) {
            Err(Broken::new(format!(
                "fallback = {fallback} names this function itself: on failure it would call the failing call again"
            ))
            .help("name another async fn with the same parameters and return type"))
        } else {
            Ok(())
        }
    }

    /// A connect timeout shorter than the attempt timeout, so a connect failure is never
    /// mistaken for a read timeout.
    pub fn connect_within_timeout(connect: Duration, timeout: Duration) -> Result<(), Broken> {
        if connect < timeout {
            Ok(())
        } else {
            Err(Broken::new(format!(
                "connect_timeout ({}) is not shorter than the attempt timeout ({}): a connect timeout would then look like a read timeout, and a request that was never sent could not be retried safely",
                fmt_duration(connect),
                fmt_duration(timeout)
            )))
        }
    }
}

/// Boundary cases every checker of the workspace must agree on: (setting, value, accepted).
/// The macro's and the runtime's tests both run through this table.
#[doc(hidden)]
pub mod cases {
    /// `(max_attempts, accepted)`.
    pub const MAX_ATTEMPTS: &[(u32, bool)] = &[(0, false), (1, true), (10, true), (11, false)];
    /// `(budget ratio, accepted)`.
    pub const BUDGET_RATIO: &[(f64, bool)] = &[
        (0.0, true),
        (0.1, true),
        (1.0, true),
        (1.01, false),
        (10.0, false),
    ];
    /// `(budget min_per_sec, accepted)`.
    pub const BUDGET_MIN_PER_SEC: &[(u64, bool)] =
        &[(0, true), (1_000_000, true), (1_000_001, false)];
    /// `(bulkhead max_concurrent, accepted)`.
    pub const BULKHEAD_MAX_CONCURRENT: &[(u64, bool)] = &[
        (0, false),
        (1, true),
        (1_000_000, true),
        (1_000_001, false),
        (1 << 20, false),
    ];
    /// `(breaker window, accepted)`.
    pub const BREAKER_WINDOW: &[(u64, bool)] =
        &[(0, false), (1, true), (1024, true), (1025, false)];
    /// `(breaker failure_rate, accepted)`.
    pub const BREAKER_FAILURE_RATE: &[(f64, bool)] =
        &[(0.0, false), (0.01, true), (1.0, true), (1.5, false)];
    /// `(rate_limit rate, accepted)`; `burst` has the same bounds.
    pub const RATE_LIMIT_RATE: &[(u64, bool)] =
        &[(0, false), (1, true), (1_000_000, true), (1_000_001, false)];
    /// `(rate_limit max_wait in ms, accepted)` under the default 30 s deadline.
    pub const RATE_LIMIT_MAX_WAIT_MS: &[(u64, bool)] =
        &[(0, true), (29_999, true), (30_000, false), (60_000, false)];
    /// `(hedge max, accepted)`.
    pub const HEDGE_MAX: &[(u64, bool)] = &[(0, false), (1, true), (3, true), (4, false)];
    /// `(hedge delay in ms with max = 2, accepted)` under the default 30 s deadline and a
    /// timeout as long (the deadline's rule).
    pub const HEDGE_DELAY_MS: &[(u64, bool)] =
        &[(0, false), (1, true), (14_999, true), (15_000, false)];
    /// `(hedge delay in ms, accepted)` under the default 10 s timeout (the timeout's rule).
    pub const HEDGE_DELAY_UNDER_TIMEOUT_MS: &[(u64, bool)] =
        &[(1, true), (9_999, true), (10_000, false), (20_000, false)];
    /// `(breaker window_for in ms, accepted)`.
    pub const BREAKER_WINDOW_FOR_MS: &[(u64, bool)] = &[
        (999, false),
        (1000, true),
        (3_600_000, true),
        (3_600_001, false),
    ];
    /// `(breaker slow_call_rate, accepted)`.
    pub const BREAKER_SLOW_CALL_RATE: &[(f64, bool)] =
        &[(0.0, false), (0.01, true), (1.0, true), (1.5, false)];
    /// `(concurrency_limit initial, min or max, accepted)`.
    pub const CONCURRENCY_LIMIT: &[(u64, bool)] =
        &[(0, false), (1, true), (1_000_000, true), (1_000_001, false)];
    /// `(min, initial, max, accepted)` of a concurrency_limit.
    pub const CONCURRENCY_ORDER: &[(u32, u32, u32, bool)] = &[
        (1, 1, 1, true),
        (1, 16, 256, true),
        (4, 2, 8, false),
        (1, 300, 256, false),
        (8, 8, 4, false),
    ];
    /// `(concurrency_limit backoff, accepted)`.
    pub const CONCURRENCY_BACKOFF: &[(f64, bool)] = &[
        (0.0, false),
        (0.01, true),
        (0.9, true),
        (0.99, true),
        (1.0, false),
        (1.5, false),
    ];
    /// `(concurrency_limit latency in ms, accepted)` under the default 10 s timeout.
    pub const CONCURRENCY_LATENCY_MS: &[(u64, bool)] =
        &[(0, false), (1, true), (9_999, true), (10_000, false)];
    /// `(concurrency_limit max_wait in ms, accepted)` under the default 30 s deadline.
    pub const CONCURRENCY_MAX_WAIT_MS: &[(u64, bool)] =
        &[(0, true), (29_999, true), (30_000, false)];
    /// `(constant backoff initial in ms, jitter, accepted)` under the default 30 s deadline
    /// and 3 attempts.
    pub const CONSTANT_BACKOFF_MS: &[(u64, crate::packed::PackedJitter, bool)] = {
        use crate::packed::PackedJitter::{Decorrelated, Equal, Full, None};
        &[
            (29_999, None, true),
            (30_000, None, false),
            (30_000, Decorrelated, false),
            (59_999, Equal, true),
            (60_000, Equal, false),
            (3_600_000, Full, true),
        ]
    };
    /// `(backoff multiplier, accepted)`.
    pub const BACKOFF_MULTIPLIER: &[(f64, bool)] =
        &[(0.5, false), (1.0, true), (100.0, true), (100.5, false)];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written back as it can be read again, to the nanosecond: a change below a microsecond
    /// is not shown as no change.
    #[test]
    fn durations_are_written_exactly_in_their_largest_unit() {
        for (d, text) in [
            (Duration::from_nanos(1_500), "1500ns"),
            (Duration::from_micros(2), "2us"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1_500), "1500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(5_400), "90m"),
            (Duration::from_secs(3_600), "1h"),
            (Duration::ZERO, "0ms"),
        ] {
            assert_eq!(fmt_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
        assert!(
            parse_duration("1.5")
                .unwrap_err()
                .contains("write \"1.5ms\" or \"1.5s\"")
        );
    }

    /// A part of a nanosecond is refused, not rounded away (`0.5ns` read as no time at all);
    /// a fraction that is a whole number of nanoseconds is read.
    #[test]
    fn a_duration_finer_than_a_nanosecond_is_refused() {
        for bad in ["0.5ns", "1.5ns", "0.0000000001s", "0.1us5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("1.5us"), Ok(Duration::from_nanos(1500)));
        assert_eq!(parse_duration("0.000000001s"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse_duration("2.25s"), Ok(Duration::from_millis(2250)));
    }

    /// Columns count characters as an editor does; a byte order mark is none of them.
    #[test]
    fn a_place_is_counted_in_characters() {
        let text = "\u{feff}a = 1\n\"été\" = { ratio = 1e-400 }\n";
        assert_eq!(line_col(text, text.find("a =").unwrap()), (1, 1));
        assert_eq!(line_col(text, text.find("1e-400").unwrap()), (2, 19));
        // Inside `é`, or past the end: no panic.
        let inside = text.find('é').unwrap() + 1;
        assert_eq!(line_col(text, inside), (2, 2));
        assert_eq!(line_col(text, usize::MAX), (3, 1));
    }

    /// A number too small for `f64` is refused, not read as 0 (a budget ratio `1e-400` meant
    /// "no retries bought"); a zero written as one is 0.
    #[test]
    fn a_number_too_small_to_be_one_is_refused() {
        for bad in [
            "1e-400",
            "0.000_1e-320",
            "5E-324",
            "inf",
            "nan",
            "-0.5",
            "1e400",
        ] {
            assert!(policy_float(bad).is_err(), "{bad}");
        }
        assert_eq!(
            policy_float("1e-400"),
            Err("is too small to tell from 0: write 0, or a larger number")
        );
        assert_eq!(policy_float("0.0"), Ok(0.0));
        assert_eq!(policy_float("0e-400"), Ok(0.0));
        assert_eq!(policy_float("1_000.5"), Ok(1000.5));
        assert_eq!(policy_float("1e-3"), Ok(0.001));
    }

    #[test]
    fn the_rules_agree_with_their_cases() {
        for (n, ok) in cases::MAX_ATTEMPTS {
            assert_eq!(rules::max_attempts(*n).is_ok(), *ok, "{n}");
        }
        for (x, ok) in cases::BUDGET_RATIO {
            assert_eq!(rules::budget_ratio(*x).is_ok(), *ok, "{x}");
        }
        for (n, ok) in cases::BUDGET_MIN_PER_SEC {
            assert_eq!(rules::budget_min_per_sec(*n).is_ok(), *ok, "{n}");
        }
        for (n, ok) in cases::BULKHEAD_MAX_CONCURRENT {
            assert_eq!(rules::bulkhead_max_concurrent(*n).is_ok(), *ok, "{n}");
        }
        for (n, ok) in cases::BREAKER_WINDOW {
            assert_eq!(rules::breaker_count("window", *n).is_ok(), *ok, "{n}");
        }
        for (x, ok) in cases::BREAKER_FAILURE_RATE {
            assert_eq!(rules::breaker_failure_rate(*x).is_ok(), *ok, "{x}");
        }
        for (x, ok) in cases::BACKOFF_MULTIPLIER {
            assert_eq!(rules::backoff_multiplier(*x).is_ok(), *ok, "{x}");
        }
        for (n, ok) in cases::RATE_LIMIT_RATE {
            assert_eq!(rules::rate_limit_count("rate", *n).is_ok(), *ok, "{n}");
            assert_eq!(rules::rate_limit_count("burst", *n).is_ok(), *ok, "{n}");
        }
        for (ms, ok) in cases::BREAKER_WINDOW_FOR_MS {
            let d = Duration::from_millis(*ms);
            assert_eq!(rules::breaker_window_for(d).is_ok(), *ok, "{ms}");
        }
        for (x, ok) in cases::BREAKER_SLOW_CALL_RATE {
            assert_eq!(rules::breaker_slow_call_rate(*x).is_ok(), *ok, "{x}");
        }
        for (n, ok) in cases::HEDGE_MAX {
            assert_eq!(rules::hedge_max(*n).is_ok(), *ok, "{n}");
        }
        for (ms, ok) in cases::HEDGE_DELAY_MS {
            let d = Duration::from_millis(*ms);
            assert_eq!(
                rules::hedge_within_deadline(d, 2, defaults::DEADLINE).is_ok(),
                *ok,
                "{ms}"
            );
        }
        for (ms, ok) in cases::HEDGE_DELAY_UNDER_TIMEOUT_MS {
            let d = Duration::from_millis(*ms);
            assert_eq!(
                rules::hedge_within_timeout(d, defaults::TIMEOUT).is_ok(),
                *ok,
                "{ms}"
            );
        }
        for (n, ok) in cases::CONCURRENCY_LIMIT {
            assert_eq!(rules::concurrency_count("max", *n).is_ok(), *ok, "{n}");
        }
        for (min, initial, max, ok) in cases::CONCURRENCY_ORDER {
            assert_eq!(
                rules::concurrency_order(*min, *initial, *max).is_ok(),
                *ok,
                "{min} {initial} {max}"
            );
        }
        for (x, ok) in cases::CONCURRENCY_BACKOFF {
            assert_eq!(rules::concurrency_backoff(*x).is_ok(), *ok, "{x}");
        }
        for (ms, ok) in cases::CONCURRENCY_LATENCY_MS {
            let d = Duration::from_millis(*ms);
            assert_eq!(
                rules::concurrency_latency_within_timeout(d, defaults::TIMEOUT, None).is_ok(),
                *ok,
                "{ms}"
            );
        }
        for (ms, ok) in cases::CONCURRENCY_MAX_WAIT_MS {
            let d = Duration::from_millis(*ms);
            assert_eq!(
                rules::concurrency_wait_within_deadline(d, defaults::DEADLINE, None).is_ok(),
                *ok,
                "{ms}"
            );
        }
        assert!(rules::hedge_safe(Method::Post, false, false).is_err());
        assert!(rules::hedge_safe(Method::Put, false, true).is_ok());
        for (ms, ok) in cases::RATE_LIMIT_MAX_WAIT_MS {
            let w = Duration::from_millis(*ms);
            assert_eq!(
                rules::rate_limit_wait_within_deadline(w, defaults::DEADLINE, None).is_ok(),
                *ok,
                "{ms}"
            );
        }
        for (ms, jitter, ok) in cases::CONSTANT_BACKOFF_MS {
            let d = Duration::from_millis(*ms);
            let first = rules::shortest_first_backoff(true, d, defaults::BACKOFF_MAX, *jitter);
            assert_eq!(
                rules::backoff_within_deadline(
                    first,
                    defaults::MAX_ATTEMPTS,
                    defaults::DEADLINE,
                    None
                )
                .is_ok(),
                *ok,
                "{ms} {jitter:?}"
            );
        }
        assert!(
            rules::backoff_within_deadline(defaults::DEADLINE, 1, defaults::DEADLINE, None).is_ok()
        );
    }

    #[test]
    fn methods() {
        assert_eq!(Method::parse("post"), Some(Method::Post));
        assert_eq!(Method::parse("OTHER"), None);
        assert_eq!(Method::Get.least_safe(Method::Put), Method::Put);
        assert!(!may_resend(Method::Post, false, true));
        assert!(may_resend(Method::Put, false, true));
        assert!(rules::safe_retry(Method::Post, false, false, 3, true).is_err());
        assert!(rules::safe_retry(Method::Post, false, false, 3, false).is_ok());
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "90s");
        assert_eq!(fmt_duration(Duration::from_secs(120)), "2m");
    }
}
