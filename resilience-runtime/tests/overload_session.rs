//! Overload protection as a call goes through it: many concurrent calls driven the way the
//! generated code drives a session, against a flaky downstream. Every call, attempt and refusal
//! is accounted for exactly once across the policy's counters and the shared state's own.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use resilience_runtime::__private::{KeyArg, Next, PolicyState, Session};
use resilience_runtime::breaker::BreakerSpec;
use resilience_runtime::budget::BudgetSpec;
use resilience_runtime::bulkhead::BulkheadSpec;
use resilience_runtime::{Backoff, BackoffKind, Class, Error, ErrorKind, Jitter, Policy, metrics};

const MAX_CONCURRENT: u32 = 4;

static POLICY: Policy = Policy {
    function: "overload_session::call",
    name: "overload-session",
    max_attempts: 3,
    backoff: Backoff {
        kind: BackoffKind::Constant,
        initial: Duration::ZERO,
        max: Duration::ZERO,
        multiplier_milli: 1000,
        jitter: Jitter::None,
    },
    budget: Some((
        "overload-session-budget",
        BudgetSpec {
            ratio: 0.2,
            min_per_sec: 5,
        },
    )),
    breaker: Some((
        "overload-session-breaker",
        BreakerSpec {
            failure_rate: 0.5,
            min_calls: 10,
            window: 20,
            open_for: Duration::from_millis(1),
            half_open_calls: 2,
            ..BreakerSpec::DEFAULT
        },
    )),
    bulkhead: Some((
        "overload-session-bulkhead",
        BulkheadSpec {
            max_concurrent: MAX_CONCURRENT,
            max_wait: Duration::ZERO,
        },
    )),
    ..Policy::DEFAULT
};

static STATE: PolicyState = PolicyState::new();

/// Calls started, all tasks together.
static STARTED: AtomicU64 = AtomicU64::new(0);

/// What the downstream saw: bodies run, and the most at once.
static RUNS: AtomicU64 = AtomicU64::new(0);
static INSIDE: AtomicU32 = AtomicU32::new(0);
static MAX_INSIDE: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
enum CallError {
    Runtime(Error),
    Unavailable,
}

impl From<Error> for CallError {
    fn from(e: Error) -> Self {
        CallError::Runtime(e)
    }
}

/// A call whose attempts fail with a 503 when `rng` says so, as the macro would expand it.
async fn call(rng: &mut fastrand::Rng, fail_percent: u8) -> Result<(), CallError> {
    let mut session = Session::start(&POLICY, &STATE, KeyArg::None).await?;
    loop {
        let fail = rng.u8(..100) < fail_percent;
        let mut r = session
            .attempt(std::pin::pin!(Some(async {
                RUNS.fetch_add(1, Ordering::SeqCst);
                let n = INSIDE.fetch_add(1, Ordering::SeqCst) + 1;
                MAX_INSIDE.fetch_max(n, Ordering::SeqCst);
                tokio::task::yield_now().await;
                INSIDE.fetch_sub(1, Ordering::SeqCst);
                if fail {
                    Err(CallError::Unavailable)
                } else {
                    Ok(())
                }
            })))
            .await;
        if let Err(e) = &mut r {
            let class = match e {
                CallError::Unavailable => Some(Class::Status(503)),
                CallError::Runtime(_) => None,
            };
            match session.after_failure(class) {
                Next::Retry => continue,
                Next::Return => {}
                Next::Replace(err) => r = Err(CallError::from(err)),
            }
        }
        break r;
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u64,
    failed: u64,
    bulkhead_full: u64,
    circuit_open: u64,
    budget_exhausted: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_attempt_and_refusal_is_counted_once() {
    const TASKS: u64 = 8;
    const CALLS: u64 = 1_000;
    assert_eq!(metrics::policy("overload-session"), None, "not called yet");
    let mut tasks = Vec::new();
    for seed in 0..TASKS {
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut t = Tally::default();
            for _ in 0..CALLS {
                // Alternate phases of health and sickness, so the breaker opens and closes
                // again, and the budget has retries to refuse.
                let sick = (STARTED.fetch_add(1, Ordering::SeqCst) / 500) % 2 == 1;
                match call(&mut rng, if sick { 90 } else { 0 }).await {
                    Ok(()) => t.ok += 1,
                    Err(CallError::Unavailable) => t.failed += 1,
                    Err(CallError::Runtime(e)) => match e.kind() {
                        ErrorKind::BulkheadFull => t.bulkhead_full += 1,
                        ErrorKind::CircuitOpen => {
                            t.circuit_open += 1;
                            t.failed += 1;
                            // As a caller that fails fast does something else for a while,
                            // so that the phases outlast `open_for`.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        ErrorKind::BudgetExhausted => {
                            t.budget_exhausted += 1;
                            t.failed += 1;
                        }
                        other => panic!("unexpected {other:?}: {e}"),
                    },
                }
            }
            t
        }));
    }
    let mut t = Tally::default();
    for task in tasks {
        let x = task.await.unwrap();
        t.ok += x.ok;
        t.failed += x.failed;
        t.bulkhead_full += x.bulkhead_full;
        t.circuit_open += x.circuit_open;
        t.budget_exhausted += x.budget_exhausted;
    }
    let calls = TASKS * CALLS;
    assert_eq!(t.ok + t.failed + t.bulkhead_full, calls);

    let m = metrics::policy("overload-session").expect("registered by the first call");
    let breaker = metrics::breaker("overload-session-breaker").unwrap();
    let budget = metrics::budget("overload-session-budget").unwrap();
    let bulkhead = metrics::bulkhead("overload-session-bulkhead").unwrap();

    // Outcomes.
    assert_eq!(m.successful_without_retry + m.successful_with_retry, t.ok);
    assert_eq!(m.failed_without_retry + m.failed_with_retry, t.failed);
    // Refusals, each counted by the policy and by the shared state itself.
    assert_eq!(m.rejected_bulkhead, t.bulkhead_full);
    assert_eq!(bulkhead.rejected, t.bulkhead_full);
    assert_eq!(bulkhead.admitted, calls - t.bulkhead_full);
    assert_eq!(m.rejected_breaker, t.circuit_open);
    assert_eq!(breaker.rejected, t.circuit_open);
    assert_eq!(m.rejected_budget, t.budget_exhausted);
    assert_eq!(budget.refused, t.budget_exhausted);
    // Retries: each granted by the budget, each one more attempt, counted when made. A retry
    // the breaker then refused was not made, and gave its token back (unless its second or
    // bucket had passed): the budget counts at least the retries made and at most those
    // decided (made, or refused by the breaker).
    assert_eq!(budget.deposits, calls - t.bulkhead_full);
    assert!(budget.withdrawals >= m.retries, "{budget:?} {m:?}");
    assert!(
        budget.withdrawals <= m.retries + m.rejected_breaker,
        "{budget:?} {m:?}"
    );
    // Every run is a first attempt or a retry made; the first attempts that did not run are
    // among those the breaker refused.
    let runs = RUNS.load(Ordering::SeqCst);
    assert!(
        runs <= budget.deposits + m.retries,
        "{runs} {budget:?} {m:?}"
    );
    assert!(
        runs + m.rejected_breaker >= budget.deposits + m.retries,
        "{runs} {budget:?} {m:?}"
    );
    // And the bulkhead held.
    assert!(MAX_INSIDE.load(Ordering::SeqCst) <= MAX_CONCURRENT);
    assert_eq!(bulkhead.in_flight, 0);
    // The run exercised what it claims to.
    assert!(breaker.opened > 0 && breaker.closed > 0, "{breaker:?}");
    assert!(
        t.circuit_open > 0 && m.retries > 0 && m.successful_with_retry > 0,
        "{m:?}"
    );

    assert!(
        metrics::all()
            .iter()
            .any(|(n, s)| *n == "overload_session::call" && *s == m)
    );
    assert!(
        metrics::breakers()
            .iter()
            .any(|(n, _)| *n == "overload-session-breaker")
    );
}
