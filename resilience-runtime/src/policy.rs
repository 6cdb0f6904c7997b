//! The policy: constant data, built by `#[resilient]` at compile time (or by hand, validated).

use std::time::Duration;

use crate::breaker::BreakerSpec;
use crate::budget::BudgetSpec;
use crate::bulkhead::BulkheadSpec;

/// The HTTP method of a call, as far as retry safety is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Method {
    Get,
    Head,
    Options,
    Trace,
    Put,
    Delete,
    Post,
    Patch,
    /// A method the runtime does not know: treated as the least safe.
    Other,
}

impl Method {
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

    /// How unsafe it is to resend: higher is less safe. Used to keep the least safe method seen.
    pub const fn risk(self) -> u8 {
        match self {
            Method::Get | Method::Head | Method::Options | Method::Trace => 0,
            Method::Put | Method::Delete => 1,
            Method::Post | Method::Patch | Method::Other => 2,
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

    /// Maps an `http::Method`.
    pub fn from_http(m: &http::Method) -> Method {
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
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffKind {
    /// `initial * multiplier^(n-1)`, capped at `max`.
    Exponential,
    /// Always `initial`.
    Constant,
}

/// How randomness is mixed into the delay, so that many clients do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The delay schedule between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub kind: BackoffKind,
    pub initial: Duration,
    pub max: Duration,
    /// Growth factor per attempt, in thousandths (2000 = ×2), so the policy stays `const`.
    pub multiplier_milli: u32,
    pub jitter: Jitter,
}

impl Backoff {
    /// Exponential 100 ms → 2 s, ×2, full jitter.
    pub const DEFAULT: Backoff = Backoff {
        kind: BackoffKind::Exponential,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
        multiplier_milli: 2000,
        jitter: Jitter::Full,
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
    pub connect: bool,
    pub reset: bool,
    pub timeout: bool,
    /// Transient statuses that may be retried (408, 429, 5xx).
    pub statuses: &'static [u16],
}

impl RetryOn {
    /// `[connect, reset, timeout, 408, 429, 502, 503, 504]`.
    pub const DEFAULT: RetryOn = RetryOn {
        connect: true,
        reset: true,
        timeout: true,
        statuses: &[408, 429, 502, 503, 504],
    };

    /// Nothing: no retry at all.
    pub const NONE: RetryOn = RetryOn {
        connect: false,
        reset: false,
        timeout: false,
        statuses: &[],
    };

    pub fn allows_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn::DEFAULT
    }
}

/// Where the idempotency key of a call comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub method: Method,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Total time for the call, attempts and backoff included.
    pub deadline: Duration,
    /// Attempts including the first, 1..=10.
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub retry_on: RetryOn,
    pub idempotency_key: KeySource,
    /// The author asserts the server applies a PUT/DELETE at most once.
    pub idempotent: bool,
    /// Cap on a server's `Retry-After`: longer asks end the call.
    pub max_retry_after: Duration,
    /// The retry budget shared under this name (`None`: no budget; an empty name: a budget of
    /// the function's own). Likewise an empty breaker or bulkhead name is private to the
    /// function.
    pub budget: Option<(&'static str, BudgetSpec)>,
    pub breaker: Option<(&'static str, BreakerSpec)>,
    pub bulkhead: Option<(&'static str, BulkheadSpec)>,
    /// The method an attempt is taken to have sent when the runtime saw none of its requests
    /// (a helper sent it without `.resilient()`). Generated code says [`Method::Other`], the
    /// least safe, so that such an attempt is resent only after a failure where nothing was
    /// sent; a hand-built policy may say `method` again.
    pub unseen: Method,
    /// The annotated function's full path (impl type included), computed once on first use;
    /// `None`: [`function`](Self::function) is used.
    pub locate: Option<fn() -> &'static str>,
}

/// Why a hand-built policy is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPolicy(pub String);

impl std::fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid resilience policy: {}", self.0)
    }
}

impl std::error::Error for InvalidPolicy {}

impl Policy {
    /// The built-in defaults of every key.
    pub const DEFAULT: Policy = Policy {
        function: "",
        name: "default",
        method: Method::Get,
        timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(30),
        max_attempts: 3,
        backoff: Backoff::DEFAULT,
        retry_on: RetryOn::DEFAULT,
        idempotency_key: KeySource::None,
        idempotent: false,
        max_retry_after: Duration::from_secs(30),
        budget: Some(("", BudgetSpec::DEFAULT)),
        breaker: None,
        bulkhead: None,
        unseen: Method::Get,
        locate: None,
    };

    /// The same checks the macro makes at compile time, for policies built at run time.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        let bad = |m: String| Err(InvalidPolicy(m));
        if !(1..=10).contains(&self.max_attempts) {
            return bad(format!(
                "max_attempts = {} is outside 1..=10",
                self.max_attempts
            ));
        }
        if self.timeout.is_zero() || self.deadline.is_zero() {
            return bad("timeout and deadline must be greater than zero".into());
        }
        if self.timeout > self.deadline {
            return bad(format!(
                "timeout ({:?}) is longer than the deadline ({:?})",
                self.timeout, self.deadline
            ));
        }
        if self.backoff.initial > self.backoff.max {
            return bad(format!(
                "backoff initial ({:?}) is longer than its max ({:?})",
                self.backoff.initial, self.backoff.max
            ));
        }
        if self.backoff.multiplier_milli < 1000 {
            return bad("backoff multiplier must be at least 1".into());
        }
        if let Some(s) = self
            .retry_on
            .statuses
            .iter()
            .find(|s| !crate::classify::is_transient_status(**s))
        {
            return bad(format!("status {s} is permanent and must not be retried"));
        }
        if self.max_attempts > 1 && self.unsafe_retry() {
            return bad(format!(
                "a {} without an idempotency key (and not declared idempotent) would be retried after it may have reached the server",
                self.method
            ));
        }
        if let Some((_, b)) = &self.budget {
            b.validate()?;
        }
        if let Some((_, b)) = &self.breaker {
            b.validate()?;
        }
        if let Some((_, b)) = &self.bulkhead {
            b.validate()?;
        }
        if self.idempotent && self.method.needs_key() {
            return bad(format!(
                "`idempotent` does not make a {} safe to resend: give it an idempotency key",
                self.method
            ));
        }
        Ok(())
    }

    /// True when the policy would retry an ambiguous failure of a non-idempotent request.
    pub fn unsafe_retry(&self) -> bool {
        let ambiguous =
            self.retry_on.reset || self.retry_on.timeout || !self.retry_on.statuses.is_empty();
        let keyed = !matches!(self.idempotency_key, KeySource::None);
        ambiguous && !crate::decision::may_resend(self.method, keyed, self.idempotent)
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
    }
}
