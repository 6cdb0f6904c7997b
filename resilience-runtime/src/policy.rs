//! The policy: constant data, built by `#[resilient]` at compile time (or by hand, validated).

use std::time::Duration;

use resilience_spec::defaults;
use resilience_spec::packed::Packed;

use crate::breaker::BreakerSpec;
use crate::budget::BudgetSpec;
use crate::bulkhead::BulkheadSpec;
use crate::ratelimit::RateLimitSpec;

pub use resilience_spec::Method;

/// Maps an `http::Method`: the ones the rules know by name, else [`Method::Other`].
pub(crate) fn method_of(m: &http::Method) -> Method {
    match *m {
        http::Method::GET => Method::Get,
        http::Method::HEAD => Method::Head,
        http::Method::OPTIONS => Method::Options,
        http::Method::TRACE => Method::Trace,
        http::Method::PUT => Method::Put,
        http::Method::DELETE => Method::Delete,
        http::Method::POST => Method::Post,
        http::Method::PATCH => Method::Patch,
        _ => Method::Other,
    }
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackoffKind {
    /// `initial * multiplier^(n-1)`, capped at `max`.
    Exponential,
    /// Always `initial`.
    Constant,
}

/// How randomness is mixed into the delay, so that many clients do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Jitter {
    /// A uniform delay in `[0, d]`.
    Full,
    /// A uniform delay in `[d/2, d]`.
    Equal,
    /// A uniform delay in `[initial, previous * 3]`, capped at `max`.
    Decorrelated,
    /// Exactly `d`.
    None,
}

impl Backoff {
    /// The shortest wait before the first retry this backoff can draw
    /// ([`rules::shortest_first_backoff`](resilience_spec::rules::shortest_first_backoff)).
    pub(crate) fn shortest_first(&self) -> Duration {
        use resilience_spec::packed::PackedJitter;
        resilience_spec::rules::shortest_first_backoff(
            self.kind == BackoffKind::Constant,
            self.initial,
            self.max,
            match self.jitter {
                Jitter::Full => PackedJitter::Full,
                Jitter::Equal => PackedJitter::Equal,
                Jitter::Decorrelated => PackedJitter::Decorrelated,
                Jitter::None => PackedJitter::None,
            },
        )
    }
}

/// The delay schedule between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Exponential or constant.
    pub kind: BackoffKind,
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// Growth factor per attempt, in thousandths (2000 = ×2), so the policy stays `const`.
    pub multiplier_milli: u32,
    /// How randomness is mixed in.
    pub jitter: Jitter,
}

impl Backoff {
    /// Exponential 100 ms → 2 s, ×2, equal jitter: each wait between half its step and the
    /// step (50–100 ms, then 100–200 ms, …), so a retry never follows its failure at once.
    pub const DEFAULT: Backoff = Backoff {
        kind: BackoffKind::Exponential,
        initial: defaults::BACKOFF_INITIAL,
        max: defaults::BACKOFF_MAX,
        multiplier_milli: defaults::BACKOFF_MULTIPLIER_MILLI,
        jitter: Jitter::Equal,
    };
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT
    }
}

/// Which failures may be retried (subject to method safety).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// Failures where nothing was sent.
    pub connect: bool,
    /// A connection lost after the request was sent.
    pub reset: bool,
    /// No answer in time.
    pub timeout: bool,
    /// Transient statuses that may be retried (408, 429, 5xx: see
    /// [`is_transient_status`](crate::is_transient_status)).
    pub statuses: &'static [u16],
}

impl RetryOn {
    /// `[connect, reset, timeout, 408, 429, 502, 503, 504]`.
    pub const DEFAULT: RetryOn = RetryOn {
        connect: true,
        reset: true,
        timeout: true,
        statuses: resilience_spec::defaults::RETRY_STATUSES,
    };

    /// Nothing: no retry at all.
    pub const NONE: RetryOn = RetryOn {
        connect: false,
        reset: false,
        timeout: false,
        statuses: &[],
    };

    /// Whether this status is listed.
    pub fn allows_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }

    /// Whether it lists any failure after which the request may have arrived (anything but
    /// `connect`).
    pub fn ambiguous(&self) -> bool {
        self.reset || self.timeout || !self.statuses.is_empty()
    }
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn::DEFAULT
    }
}

/// Where the idempotency key of a call comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// No key: POST and PATCH are not retried after they may have reached the server.
    None,
    /// One random UUID per logical call, the same on every attempt.
    Auto,
    /// The value of a parameter of the function.
    Param,
}

/// A complete policy. Built as a `static` by `#[resilient]`; by hand, check it with
/// [`Policy::validate`].
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The annotated function's path, for tracing and metrics.
    pub function: &'static str,
    /// The named policy it uses, or the function name when inline only.
    pub name: &'static str,
    /// The method the function sends, declared or inferred.
    pub method: Method,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Total time for the call, attempts and backoff included.
    pub deadline: Duration,
    /// Attempts including the first, 1..=10.
    pub max_attempts: u32,
    /// The delays between attempts.
    pub backoff: Backoff,
    /// Which failures may be retried.
    pub retry_on: RetryOn,
    /// Where the idempotency key comes from.
    pub idempotency_key: KeySource,
    /// The author asserts the server applies a PUT/DELETE at most once.
    pub idempotent: bool,
    /// Cap on a server's `Retry-After`: longer asks end the call.
    pub max_retry_after: Duration,
    /// The retry budget shared under this name (`None`: no budget; an empty name: a budget of
    /// the function's own). Likewise an empty breaker or bulkhead name is private to the
    /// function.
    pub budget: Option<(&'static str, BudgetSpec)>,
    /// The circuit breaker, by name (`None`: none).
    pub breaker: Option<(&'static str, BreakerSpec)>,
    /// The bulkhead, by name (`None`: none).
    pub bulkhead: Option<(&'static str, BulkheadSpec)>,
    /// Hedging: another attempt alongside one that has not answered after a delay.
    pub hedge: Option<crate::hedge::Hedge>,
    /// The client-side rate limit, by name (`None`: none).
    pub rate_limit: Option<(&'static str, RateLimitSpec)>,
    /// The adaptive concurrency limit, by name (`None`: none); not with a bulkhead.
    pub concurrency: Option<(&'static str, crate::concurrency::ConcurrencySpec)>,
    /// The method an attempt is taken to have sent when the runtime saw none of its requests
    /// (a helper sent it without `.resilient()`). Generated code says [`Method::Other`], the
    /// least safe, so that such an attempt is not run again (a connect failure proves only
    /// that its own request was never sent); a hand-built policy may say `method` again.
    pub unseen: Method,
    /// Every request the body may send of a method less safe than GET is one the runtime sees
    /// when it goes out: generated code says so when the method is inferred and the body
    /// sends such requests only from `.send()` chains of its own, outside closures and `async`
    /// blocks, and awaits no helper handed the client. An attempt seen sending only safer
    /// requests (a token GET before the body's POST) is then judged by those: its POST was not
    /// sent. Otherwise (`false`) the policy's [`method`](Self::method) may have gone out unseen
    /// beside them, and an attempt that was not seen sending it is not run again unless that
    /// method may be resent unkeyed.
    pub sends_seen: bool,
    /// The connect timeout of the client the policy names (`client = "NAME"`), which the
    /// attempt timeout must exceed, so that a connect failure (certainly never sent) is not
    /// taken for a timeout after sending; `None`: no client named.
    pub connect_timeout: Option<Duration>,
    /// The annotated function's full path (impl type included), computed once on first use:
    /// the path itself, or the type name of a type nested in the function, named
    /// `__ResilienceHere` (what `#[resilient]` passes: `std::any::type_name::<__ResilienceHere>`);
    /// `None`: [`function`](Self::function) is used.
    pub locate: Option<fn() -> &'static str>,
}

pub use crate::invalid::InvalidPolicy;

/// The policy `packed` (what `#[resilient]` writes into a function, see `resilience_spec::packed`)
/// for `function`: how the CLI checks an override file against what the macro compiled.
#[doc(hidden)]
pub fn unpack_policy(
    function: &'static str,
    packed: &'static str,
) -> Result<Policy, resilience_spec::packed::Unpacked> {
    Packed::unpack(packed).map(|p| Policy::unpacked(function, p, None))
}

impl Policy {
    /// The policy `#[resilient]` packed for `function` (see [`PolicyState::compiled`]).
    ///
    /// [`PolicyState::compiled`]: crate::__private::PolicyState::compiled
    pub(crate) fn unpacked(
        function: &'static str,
        p: Packed<'static>,
        locate: Option<fn() -> &'static str>,
    ) -> Policy {
        use crate::concurrency::{ConcurrencyKind, ConcurrencySpec};
        use crate::hedge::Hedge;
        use crate::ratelimit::RateLimitStore;
        use resilience_spec::packed::{PackedJitter, PackedKey, RateStore};
        // The default list is the usual one: no copy of it per function.
        let statuses: &'static [u16] = if p.retry_statuses == defaults::RETRY_STATUSES {
            defaults::RETRY_STATUSES
        } else {
            // Once per function and process, on its first call.
            Box::leak(p.retry_statuses.into_boxed_slice())
        };
        Policy {
            function,
            name: p.name,
            method: p.method,
            timeout: p.timeout,
            deadline: p.deadline,
            max_attempts: p.max_attempts,
            backoff: Backoff {
                kind: if p.backoff_constant {
                    BackoffKind::Constant
                } else {
                    BackoffKind::Exponential
                },
                initial: p.backoff_initial,
                max: p.backoff_max,
                multiplier_milli: p.backoff_multiplier_milli,
                jitter: match p.jitter {
                    PackedJitter::Full => Jitter::Full,
                    PackedJitter::Equal => Jitter::Equal,
                    PackedJitter::Decorrelated => Jitter::Decorrelated,
                    PackedJitter::None => Jitter::None,
                },
            },
            retry_on: RetryOn {
                connect: p.retry_connect,
                reset: p.retry_reset,
                timeout: p.retry_timeout,
                statuses,
            },
            idempotency_key: match p.key {
                PackedKey::None => KeySource::None,
                PackedKey::Auto => KeySource::Auto,
                PackedKey::Param => KeySource::Param,
            },
            idempotent: p.idempotent,
            max_retry_after: p.max_retry_after,
            budget: p
                .budget
                .map(|(n, ratio, min_per_sec)| (n, BudgetSpec { ratio, min_per_sec })),
            breaker: p.breaker.map(|(n, b)| {
                (
                    n,
                    BreakerSpec {
                        failure_rate: b.failure_rate,
                        min_calls: b.min_calls,
                        window: b.window,
                        open_for: b.open_for,
                        half_open_calls: b.half_open_calls,
                        window_for: b.window_for,
                        slow_call_duration: b.slow_call_duration,
                        slow_call_rate: b.slow_call_rate,
                    },
                )
            }),
            bulkhead: p.bulkhead.map(|(n, max_concurrent, max_wait)| {
                (
                    n,
                    BulkheadSpec {
                        max_concurrent,
                        max_wait,
                    },
                )
            }),
            hedge: p.hedge.map(|(delay, max)| Hedge { delay, max }),
            rate_limit: p.rate_limit.map(|(n, r)| {
                (
                    n,
                    RateLimitSpec {
                        rate: r.rate,
                        per: r.per,
                        burst: r.burst,
                        max_wait: r.max_wait,
                        store: match r.store {
                            RateStore::Redis => RateLimitStore::Redis,
                            RateStore::Local => RateLimitStore::Local,
                        },
                    },
                )
            }),
            concurrency: p.concurrency.map(|(n, c)| {
                (
                    n,
                    ConcurrencySpec {
                        kind: ConcurrencyKind::Aimd,
                        initial: c.initial,
                        min: c.min,
                        max: c.max,
                        latency: c.latency,
                        backoff: c.backoff,
                        max_wait: c.max_wait,
                    },
                )
            }),
            unseen: p.unseen,
            sends_seen: p.sends_seen,
            connect_timeout: p.connect_timeout,
            locate,
        }
    }

    /// The built-in defaults of every key.
    pub const DEFAULT: Policy = Policy {
        function: "",
        name: "default",
        method: Method::Get,
        timeout: defaults::TIMEOUT,
        deadline: defaults::DEADLINE,
        max_attempts: defaults::MAX_ATTEMPTS,
        backoff: Backoff::DEFAULT,
        retry_on: RetryOn::DEFAULT,
        idempotency_key: KeySource::None,
        idempotent: false,
        max_retry_after: defaults::MAX_RETRY_AFTER,
        budget: Some(("", BudgetSpec::DEFAULT)),
        breaker: None,
        bulkhead: None,
        rate_limit: None,
        concurrency: None,
        hedge: None,
        unseen: Method::Get,
        sends_seen: false,
        connect_timeout: None,
        locate: None,
    };

    /// The checks the macro makes at compile time, from the same rule book
    /// ([`resilience_spec::rules`]) and with the same messages, for policies built at run time.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        use resilience_spec::rules;
        let bad = |b: resilience_spec::Broken| InvalidPolicy(b.to_string());
        rules::max_attempts(self.max_attempts).map_err(bad)?;
        rules::timeout_nonzero("timeout", self.timeout).map_err(bad)?;
        rules::timeout_nonzero("deadline", self.deadline).map_err(bad)?;
        rules::timeout_within_deadline(self.timeout, self.deadline, self.max_attempts)
            .map_err(bad)?;
        if let Some(c) = self.connect_timeout {
            rules::connect_within_timeout(c, self.timeout).map_err(bad)?;
        }
        // What a policy file or the attribute can say (a duration is at most u64::MAX
        // nanoseconds, about 584 years): beyond it, a deadline added to the clock, or a
        // backoff's jitter in nanoseconds, would not fit.
        for (name, d) in [
            ("timeout", self.timeout),
            ("deadline", self.deadline),
            ("max_retry_after", self.max_retry_after),
            ("backoff initial", self.backoff.initial),
            ("backoff max", self.backoff.max),
        ] {
            if d > Duration::from_nanos(u64::MAX) {
                return Err(InvalidPolicy(format!(
                    "{name} ({d:?}) is longer than a policy can say (about 584 years)"
                )));
            }
        }
        // A constant backoff waits `initial` every time: its `max` is never used.
        if self.backoff.kind != BackoffKind::Constant {
            rules::backoff_order(self.backoff.initial, self.backoff.max).map_err(bad)?;
        }
        rules::backoff_multiplier(f64::from(self.backoff.multiplier_milli) / 1000.0)
            .map_err(bad)?;
        rules::backoff_within_deadline(
            self.backoff.shortest_first(),
            self.max_attempts,
            self.deadline,
            None,
        )
        .map_err(bad)?;
        for s in self.retry_on.statuses {
            rules::retryable_status(*s).map_err(bad)?;
        }
        rules::idempotent_method(self.method, self.idempotent).map_err(bad)?;
        let keyed = !matches!(self.idempotency_key, KeySource::None);
        rules::safe_retry(
            self.method,
            keyed,
            self.idempotent,
            self.max_attempts,
            self.retry_on.ambiguous(),
        )
        .map_err(bad)?;
        if let Some((_, b)) = &self.budget {
            b.validate()?;
        }
        if let Some((_, b)) = &self.breaker {
            b.validate()?;
            rules::slow_call_within_timeout(b.slow_call_duration, self.timeout).map_err(bad)?;
        }
        if let Some((_, b)) = &self.bulkhead {
            b.validate()?;
        }
        if let Some(h) = &self.hedge {
            rules::hedge_max(u64::from(h.max)).map_err(bad)?;
            rules::hedge_safe(self.method, keyed, self.idempotent).map_err(bad)?;
            rules::hedge_within_timeout(h.delay, self.timeout).map_err(bad)?;
            rules::hedge_within_deadline(h.delay, h.max, self.deadline).map_err(bad)?;
        }
        if let Some((_, c)) = &self.concurrency {
            c.validate()?;
            if self.bulkhead.is_some() {
                return Err(bad(rules::concurrency_not_with_bulkhead()));
            }
            rules::concurrency_latency_within_timeout(c.latency, self.timeout, None)
                .map_err(bad)?;
            rules::concurrency_wait_within_deadline(c.max_wait, self.deadline, None)
                .map_err(bad)?;
        }
        if let Some((_, r)) = &self.rate_limit {
            r.validate()?;
            rules::rate_limit_wait_within_deadline(r.max_wait, self.deadline, None).map_err(bad)?;
        }
        Ok(())
    }

    /// True when the policy would retry an ambiguous failure of a non-idempotent request.
    pub fn unsafe_retry(&self) -> bool {
        let keyed = !matches!(self.idempotency_key, KeySource::None);
        self.retry_on.ambiguous()
            && !resilience_spec::may_resend(self.method, keyed, self.idempotent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Policy::DEFAULT.validate(), Ok(()));
    }

    #[test]
    fn hand_built_policies_are_checked_like_the_macro_checks_them() {
        let post = Policy {
            method: Method::Post,
            ..Policy::DEFAULT
        };
        assert!(
            post.validate()
                .unwrap_err()
                .0
                .contains("without an idempotency key")
        );
        let keyed = Policy {
            idempotency_key: KeySource::Auto,
            ..post
        };
        assert_eq!(keyed.validate(), Ok(()));
        let connect_only = Policy {
            retry_on: RetryOn {
                connect: true,
                ..RetryOn::NONE
            },
            ..post
        };
        assert_eq!(connect_only.validate(), Ok(()));
        let late = Policy {
            timeout: Duration::from_secs(60),
            ..Policy::DEFAULT
        };
        assert!(late.validate().is_err());
        let permanent = Policy {
            retry_on: RetryOn {
                statuses: &[404],
                ..RetryOn::DEFAULT
            },
            ..Policy::DEFAULT
        };
        assert!(permanent.validate().unwrap_err().0.contains("404"));
        let bad_breaker = Policy {
            breaker: Some((
                "b",
                BreakerSpec {
                    failure_rate: 2.0,
                    ..BreakerSpec::DEFAULT
                },
            )),
            ..Policy::DEFAULT
        };
        assert!(bad_breaker.validate().is_err());
        let bad_bulkhead = Policy {
            bulkhead: Some((
                "b",
                BulkheadSpec {
                    max_concurrent: 0,
                    max_wait: Duration::ZERO,
                },
            )),
            ..Policy::DEFAULT
        };
        assert!(bad_bulkhead.validate().is_err());
        let ten = Policy {
            max_attempts: 11,
            ..Policy::DEFAULT
        };
        assert!(ten.validate().is_err());
        // A deadline the clock cannot add (it panicked at the first call).
        let endless = Policy {
            deadline: Duration::MAX,
            ..Policy::DEFAULT
        };
        assert!(endless.validate().unwrap_err().0.contains("deadline"));
    }
}
