//! The rule book's boundary cases, through the runtime's own checks: each value is accepted
//! here exactly when the macro accepts it (the macro's `boundaries` test runs the same table).

use std::time::Duration;

use resilience_runtime::breaker::BreakerSpec;
use resilience_runtime::budget::BudgetSpec;
use resilience_runtime::bulkhead::BulkheadSpec;
use resilience_runtime::concurrency::{ConcurrencyKind, ConcurrencySpec};
use resilience_runtime::ratelimit::{RateLimitSpec, RateLimitStore};
use resilience_runtime::{Backoff, BackoffKind, Jitter, Policy};
use resilience_spec::cases;
use resilience_spec::packed::PackedJitter;

#[test]
fn the_runtime_agrees_with_the_rule_book() {
    for (n, ok) in cases::MAX_ATTEMPTS {
        let p = Policy {
            max_attempts: *n,
            ..Policy::DEFAULT
        };
        assert_eq!(p.validate().is_ok(), *ok, "max_attempts = {n}");
    }
    for (x, ok) in cases::BUDGET_RATIO {
        let b = BudgetSpec {
            ratio: *x,
            ..BudgetSpec::DEFAULT
        };
        assert_eq!(b.validate().is_ok(), *ok, "ratio = {x}");
    }
    for (n, ok) in cases::BUDGET_MIN_PER_SEC {
        let b = BudgetSpec {
            min_per_sec: u32::try_from(*n).unwrap(),
            ..BudgetSpec::DEFAULT
        };
        assert_eq!(b.validate().is_ok(), *ok, "min_per_sec = {n}");
    }
    for (n, ok) in cases::BULKHEAD_MAX_CONCURRENT {
        let b = BulkheadSpec {
            max_concurrent: u32::try_from(*n).unwrap(),
            max_wait: Duration::ZERO,
        };
        assert_eq!(b.validate().is_ok(), *ok, "max_concurrent = {n}");
    }
    for (n, ok) in cases::BREAKER_WINDOW {
        let b = BreakerSpec {
            window: u32::try_from(*n).unwrap(),
            min_calls: 1,
            ..BreakerSpec::DEFAULT
        };
        assert_eq!(b.validate().is_ok(), *ok, "window = {n}");
    }
    for (x, ok) in cases::BREAKER_FAILURE_RATE {
        let b = BreakerSpec {
            failure_rate: *x,
            ..BreakerSpec::DEFAULT
        };
        assert_eq!(b.validate().is_ok(), *ok, "failure_rate = {x}");
    }
    // A client's connect timeout must be shorter than the attempt timeout (10 s here).
    for (ms, ok) in [(9_999, true), (10_000, false), (20_000, false)] {
        let p = Policy {
            connect_timeout: Some(Duration::from_millis(ms)),
            ..Policy::DEFAULT
        };
        assert_eq!(p.validate().is_ok(), ok, "connect_timeout = {ms}ms");
    }
    for (x, ok) in cases::BACKOFF_MULTIPLIER {
        let p = Policy {
            backoff: Backoff {
                multiplier_milli: (x * 1000.0).round() as u32,
                ..Backoff::DEFAULT
            },
            ..Policy::DEFAULT
        };
        assert_eq!(p.validate().is_ok(), *ok, "multiplier = {x}");
    }
    for (ms, jitter, ok) in cases::CONSTANT_BACKOFF_MS {
        let p = Policy {
            backoff: Backoff {
                kind: BackoffKind::Constant,
                initial: Duration::from_millis(*ms),
                jitter: match jitter {
                    PackedJitter::Full => Jitter::Full,
                    PackedJitter::Equal => Jitter::Equal,
                    PackedJitter::Decorrelated => Jitter::Decorrelated,
                    PackedJitter::None => Jitter::None,
                },
                ..Backoff::DEFAULT
            },
            ..Policy::DEFAULT
        };
        assert_eq!(
            p.validate().is_ok(),
            *ok,
            "constant backoff initial = {ms}ms, jitter {jitter:?}"
        );
    }
    let rate = RateLimitSpec {
        rate: 10,
        per: Duration::from_secs(1),
        burst: 10,
        max_wait: Duration::ZERO,
        store: RateLimitStore::Local,
    };
    for (n, ok) in cases::RATE_LIMIT_RATE {
        let n32 = u32::try_from(*n).unwrap();
        let r = RateLimitSpec { rate: n32, ..rate };
        assert_eq!(r.validate().is_ok(), *ok, "rate = {n}");
        let r = RateLimitSpec { burst: n32, ..rate };
        assert_eq!(r.validate().is_ok(), *ok, "burst = {n}");
    }
    for (ms, ok) in cases::BREAKER_WINDOW_FOR_MS {
        let b = BreakerSpec {
            window_for: Duration::from_millis(*ms),
            ..BreakerSpec::DEFAULT
        };
        assert_eq!(b.validate().is_ok(), *ok, "window_for = {ms}ms");
    }
    for (x, ok) in cases::BREAKER_SLOW_CALL_RATE {
        let b = BreakerSpec {
            slow_call_duration: Duration::from_secs(1),
            slow_call_rate: *x,
            ..BreakerSpec::DEFAULT
        };
        assert_eq!(b.validate().is_ok(), *ok, "slow_call_rate = {x}");
    }
    for (n, ok) in cases::HEDGE_MAX {
        let p = Policy {
            hedge: Some(resilience_runtime::hedge::Hedge {
                delay: Duration::from_millis(10),
                max: u32::try_from(*n).unwrap(),
            }),
            ..Policy::DEFAULT
        };
        assert_eq!(p.validate().is_ok(), *ok, "hedge max = {n}");
    }
    for (ms, ok) in cases::HEDGE_DELAY_MS {
        let p = Policy {
            timeout: Policy::DEFAULT.deadline,
            hedge: Some(resilience_runtime::hedge::Hedge {
                delay: Duration::from_millis(*ms),
                max: 2,
            }),
            ..Policy::DEFAULT
        };
        assert_eq!(p.validate().is_ok(), *ok, "hedge delay = {ms}ms");
    }
    for (ms, ok) in cases::HEDGE_DELAY_UNDER_TIMEOUT_MS {
        let p = Policy {
            hedge: Some(resilience_runtime::hedge::Hedge {
                delay: Duration::from_millis(*ms),
                max: 1,
            }),
            ..Policy::DEFAULT
        };
        assert_eq!(
            p.validate().is_ok(),
            *ok,
            "hedge delay = {ms}ms under the timeout"
        );
    }
    for (ms, ok) in cases::RATE_LIMIT_MAX_WAIT_MS {
        let p = Policy {
            rate_limit: Some((
                "",
                RateLimitSpec {
                    max_wait: Duration::from_millis(*ms),
                    ..rate
                },
            )),
            ..Policy::DEFAULT
        };
        assert_eq!(p.validate().is_ok(), *ok, "max_wait = {ms}ms");
    }
    let adaptive = ConcurrencySpec {
        kind: ConcurrencyKind::Aimd,
        initial: 1,
        min: 1,
        max: 1,
        latency: Duration::from_secs(1),
        backoff: 0.9,
        max_wait: Duration::ZERO,
    };
    let with = |c: ConcurrencySpec| Policy {
        concurrency: Some(("", c)),
        ..Policy::DEFAULT
    };
    for (n, ok) in cases::CONCURRENCY_LIMIT {
        let c = ConcurrencySpec {
            max: u32::try_from(*n).unwrap(),
            ..adaptive
        };
        assert_eq!(with(c).validate().is_ok(), *ok, "max = {n}");
    }
    for (min, initial, max, ok) in cases::CONCURRENCY_ORDER {
        let c = ConcurrencySpec {
            min: *min,
            initial: *initial,
            max: *max,
            ..adaptive
        };
        assert_eq!(with(c).validate().is_ok(), *ok, "{min} {initial} {max}");
    }
    for (x, ok) in cases::CONCURRENCY_BACKOFF {
        let c = ConcurrencySpec {
            backoff: *x,
            ..adaptive
        };
        assert_eq!(with(c).validate().is_ok(), *ok, "backoff = {x}");
    }
    for (ms, ok) in cases::CONCURRENCY_LATENCY_MS {
        let c = ConcurrencySpec {
            latency: Duration::from_millis(*ms),
            ..adaptive
        };
        assert_eq!(with(c).validate().is_ok(), *ok, "latency = {ms}ms");
    }
    for (ms, ok) in cases::CONCURRENCY_MAX_WAIT_MS {
        let c = ConcurrencySpec {
            max_wait: Duration::from_millis(*ms),
            ..adaptive
        };
        assert_eq!(with(c).validate().is_ok(), *ok, "max_wait = {ms}ms");
    }
    let both = Policy {
        bulkhead: Some((
            "",
            BulkheadSpec {
                max_concurrent: 4,
                max_wait: Duration::ZERO,
            },
        )),
        ..with(adaptive)
    };
    assert!(both.validate().is_err());
}
