//! The contenders of the per-call benchmarks, each wrapping the same tiny body.
//!
//! Two bodies: [`body_ok`] always succeeds; [`body_flaky`] fails with a transient error on
//! every even call, so a contender that retries once sees "first attempt fails, second
//! succeeds" on every call. Every delay between attempts is zero, and every contender sleeps
//! it through `tokio::time::sleep(Duration::ZERO)` (the hand-written loops too), so the
//! fail-once figures compare the policies' own work, not their sleeps. Every timeout is 10s,
//! every retrying contender makes at most 3 attempts and retries only transient errors.
//!
//! The contenders are generated twice by `contenders!`, once per body, in modules [`ok`] and
//! [`flaky`], so that each one calls its body directly.

use std::cell::Cell;
use std::fmt;
use std::hint::black_box;
use std::time::Duration;

use resilience_runtime::{Class, Classify};

/// The per-attempt timeout of every contender that has one.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts, the first included, of every retrying contender.
pub const ATTEMPTS: u32 = 3;

/// The error of every contender (no allocation to build it).
#[derive(Debug)]
pub enum BenchError {
    /// What the flaky body returns: a connection reset, retried by everybody.
    Transient,
    /// An attempt ran out of time.
    Timeout,
    /// A circuit breaker refused the call.
    Rejected,
    /// What `#[resilient]` itself returns (timeout, deadline, open breaker, budget, bulkhead).
    Runtime(resilience_runtime::Error),
}

impl BenchError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BenchError::Transient | BenchError::Timeout)
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Transient => f.write_str("transient failure"),
            BenchError::Timeout => f.write_str("attempt timed out"),
            BenchError::Rejected => f.write_str("circuit open"),
            BenchError::Runtime(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<resilience_runtime::Error> for BenchError {
    fn from(e: resilience_runtime::Error) -> Self {
        BenchError::Runtime(e)
    }
}

impl Classify for BenchError {
    fn class(&self) -> Option<Class> {
        match self {
            BenchError::Transient => Some(Class::Reset),
            BenchError::Timeout => Some(Class::Timeout),
            BenchError::Rejected => Some(Class::Rejected),
            BenchError::Runtime(_) => None,
        }
    }
}

/// Whether a retry policy written against `E` should retry.
pub trait Transient {
    fn transient(&self) -> bool;
}

impl Transient for BenchError {
    fn transient(&self) -> bool {
        self.is_transient()
    }
}

impl Transient for tower::BoxError {
    fn transient(&self) -> bool {
        self.is::<tower::timeout::error::Elapsed>()
            || self
                .downcast_ref::<BenchError>()
                .is_some_and(BenchError::is_transient)
    }
}

pub type Res = Result<u64, BenchError>;

/// The happy body.
#[inline(never)]
pub fn body_ok() -> Res {
    Ok(black_box(1))
}

thread_local! {
    static FLIPS: Cell<u64> = const { Cell::new(0) };
}

/// Fails on even runs, succeeds on odd runs: with one retry, every call fails once.
#[inline(never)]
pub fn body_flaky() -> Res {
    // It sends nothing through reqwest: it says it read, so that `#[resilient]` may resend it
    // after the reset (a no-op for every other contender).
    resilience_runtime::declare_sent(resilience_runtime::Method::Get);
    FLIPS.with(|c| {
        let n = c.get();
        c.set(n + 1);
        if n % 2 == 0 {
            Err(BenchError::Transient)
        } else {
            Ok(black_box(n))
        }
    })
}

/// How many times [`body_flaky`] ran on this thread.
pub fn flaky_runs() -> u64 {
    FLIPS.with(Cell::get)
}

/// Tower's retry policy: `ATTEMPTS` attempts, zero delay, transient errors only.
#[derive(Debug, Clone, Copy)]
pub struct TowerAttempts(pub u32);

impl<Req: Clone, Resp, E: Transient> tower::retry::Policy<Req, Resp, E> for TowerAttempts {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Resp, E>) -> Option<Self::Future> {
        match result {
            Err(e) if self.0 > 1 && e.transient() => {
                self.0 -= 1;
                Some(tokio::time::sleep(Duration::ZERO))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// backon's policy: 2 retries (3 attempts), zero delay, no jitter.
pub const BACKON: backon::ConstantBuilder = backon::ConstantBuilder::new()
    .with_delay(Duration::ZERO)
    .with_max_times(ATTEMPTS as usize - 1);

/// tokio-retry2's policy: 2 retries (3 attempts), zero delay.
pub fn tokio_retry2_strategy() -> std::iter::Take<tokio_retry2::strategy::FixedInterval> {
    tokio_retry2::strategy::FixedInterval::new(Duration::ZERO).take(ATTEMPTS as usize - 1)
}

/// failsafe's breaker: opens after 5 consecutive failures, for 30s.
pub type FailsafeBreaker = failsafe::StateMachine<
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
    (),
>;

pub fn new_failsafe() -> FailsafeBreaker {
    failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            5,
            failsafe::backoff::constant(Duration::from_secs(30)),
        ))
        .build()
}

pub fn from_failsafe(e: failsafe::Error<BenchError>) -> BenchError {
    match e {
        failsafe::Error::Inner(e) => e,
        failsafe::Error::Rejected => BenchError::Rejected,
    }
}

macro_rules! contenders {
    ($m:ident, $body:path) => {
        #[allow(dead_code)]
        pub mod $m {
            use std::sync::LazyLock;
            use std::time::Duration;

            use backon::Retryable as _;
            use failsafe::futures::CircuitBreaker as _;
            use resilience_runtime::resilient;
            use tower::ServiceExt as _;

            use super::*;

            /// The body as a tower service (it runs when called, like any synchronous body).
            #[derive(Debug, Clone, Copy)]
            pub struct BodyService;

            impl tower::Service<()> for BodyService {
                type Response = u64;
                type Error = BenchError;
                type Future = std::future::Ready<Res>;

                fn poll_ready(
                    &mut self,
                    _cx: &mut std::task::Context<'_>,
                ) -> std::task::Poll<Result<(), BenchError>> {
                    std::task::Poll::Ready(Ok(()))
                }

                fn call(&mut self, _req: ()) -> Self::Future {
                    std::future::ready($body())
                }
            }

            /// The bare async fn.
            pub async fn bare() -> Res {
                $body()
            }

            /// A hand-written retry loop, no timeout.
            pub async fn hand_loop() -> Res {
                let mut attempt = 1;
                loop {
                    match $body() {
                        Err(e) if attempt < ATTEMPTS && e.is_transient() => {
                            attempt += 1;
                            tokio::time::sleep(Duration::ZERO).await;
                        }
                        r => return r,
                    }
                }
            }

            /// `tokio::time::timeout` around the bare fn: the floor of any policy with a timeout.
            pub async fn timeout_bare() -> Res {
                match tokio::time::timeout(TIMEOUT, bare()).await {
                    Ok(r) => r,
                    Err(_) => Err(BenchError::Timeout),
                }
            }

            /// A hand-written retry loop with `tokio::time::timeout` on every attempt.
            pub async fn hand_loop_timeout() -> Res {
                let mut attempt = 1;
                loop {
                    match timeout_bare().await {
                        Err(e) if attempt < ATTEMPTS && e.is_transient() => {
                            attempt += 1;
                            tokio::time::sleep(Duration::ZERO).await;
                        }
                        r => return r,
                    }
                }
            }

            #[resilient(method = GET, timeout = "10s", deadline = "30s", max_attempts = 1, budget = false)]
            pub async fn resilient_timeout() -> Result<u64, BenchError> {
                $body()
            }

            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 3, budget = false,
                backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none),
            )]
            pub async fn resilient_retry() -> Result<u64, BenchError> {
                $body()
            }

            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 3,
                backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none),
                budget = { ratio = 1.0, min_per_sec = 10 },
            )]
            pub async fn resilient_budget() -> Result<u64, BenchError> {
                $body()
            }

            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 3,
                backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none),
                budget = { ratio = 1.0, min_per_sec = 10 },
                breaker = { failure_rate = 0.9, min_calls = 10, window = 20, open_for = "30s", half_open_calls = 3 },
            )]
            pub async fn resilient_breaker() -> Result<u64, BenchError> {
                $body()
            }

            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 3,
                backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none),
                budget = { ratio = 1.0, min_per_sec = 10 },
                breaker = { failure_rate = 0.9, min_calls = 10, window = 20, open_for = "30s", half_open_calls = 3 },
                bulkhead = { max_concurrent = 64, max_wait = "0ms" },
            )]
            pub async fn resilient_bulkhead() -> Result<u64, BenchError> {
                $body()
            }

            // One pattern at a time over the timeout rung: each row's cost above
            // `resilient_timeout` is that pattern's own.

            /// A local rate limit that never makes a call wait (10^9 permits per second).
            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 1, budget = false,
                rate_limit = { rate = 1000000, per = "1ms", burst = 1000000 },
            )]
            pub async fn resilient_rate_limit() -> Result<u64, BenchError> {
                $body()
            }

            /// A hedge that never fires: the body answers before its delay.
            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 1, budget = false,
                hedge(delay = "5s"),
            )]
            pub async fn resilient_hedge() -> Result<u64, BenchError> {
                $body()
            }

            /// A fallback that is never needed.
            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 1, budget = false,
                fallback = fallback_value,
            )]
            pub async fn resilient_fallback() -> Result<u64, BenchError> {
                $body()
            }

            pub async fn fallback_value() -> Result<u64, BenchError> {
                Ok(0)
            }

            /// A breaker over a 10 s time window with a slow-call threshold.
            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 1, budget = false,
                breaker = { failure_rate = 0.9, min_calls = 10, window_for = "10s", open_for = "30s", half_open_calls = 3, slow_call_duration = "5s", slow_call_rate = 0.9 },
            )]
            pub async fn resilient_time_breaker() -> Result<u64, BenchError> {
                $body()
            }

            /// A breaker over the last 100 calls: a window longer than the breaker's word.
            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 1, budget = false,
                breaker = { failure_rate = 0.5, min_calls = 20, window = 100, open_for = "30s", half_open_calls = 3 },
            )]
            pub async fn resilient_long_breaker() -> Result<u64, BenchError> {
                $body()
            }

            /// A breaker over the last 100 calls that also watches slow calls (a clock read
            /// at each attempt's end).
            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 1, budget = false,
                breaker = { failure_rate = 0.5, min_calls = 20, window = 100, open_for = "30s", half_open_calls = 3, slow_call_duration = "5s", slow_call_rate = 0.9 },
            )]
            pub async fn resilient_slow_breaker() -> Result<u64, BenchError> {
                $body()
            }

            /// An adaptive concurrency limit that never refuses (in place of the bulkhead).
            #[resilient(
                method = GET, timeout = "10s", deadline = "30s", max_attempts = 1, budget = false,
                concurrency_limit = { kind = aimd, latency = "1s", initial = 64, max = 1024 },
            )]
            pub async fn resilient_concurrency() -> Result<u64, BenchError> {
                $body()
            }

            /// backon 1.6: `ConstantBuilder`, zero delay, 2 retries, transient errors only.
            pub async fn backon_retry() -> Res {
                (|| async { $body() })
                    .retry(BACKON)
                    .when(BenchError::is_transient)
                    .await
            }

            /// backon with `tokio::time::timeout` on every attempt.
            pub async fn backon_timeout() -> Res {
                (|| timeout_bare())
                    .retry(BACKON)
                    .when(BenchError::is_transient)
                    .await
            }

            static TOWER_RETRY: LazyLock<tower::retry::Retry<TowerAttempts, BodyService>> =
                LazyLock::new(|| tower::retry::Retry::new(TowerAttempts(ATTEMPTS), BodyService));

            static TOWER_RETRY_TIMEOUT: LazyLock<
                tower::retry::Retry<TowerAttempts, tower::timeout::Timeout<BodyService>>,
            > = LazyLock::new(|| {
                tower::ServiceBuilder::new()
                    .retry(TowerAttempts(ATTEMPTS))
                    .timeout(TIMEOUT)
                    .service(BodyService)
            });

            /// tower 0.5 `Retry` (the service is cloned per call, as `Retry::call` does itself).
            pub async fn tower_retry() -> Res {
                TOWER_RETRY.clone().oneshot(()).await
            }

            /// tower 0.5 `Retry` over `Timeout` (errors become `BoxError`).
            pub async fn tower_retry_timeout() -> Res {
                match TOWER_RETRY_TIMEOUT.clone().oneshot(()).await {
                    Ok(v) => Ok(v),
                    Err(e) => Err(match e.downcast::<BenchError>() {
                        Ok(e) => *e,
                        Err(_) => BenchError::Timeout,
                    }),
                }
            }

            /// tokio-retry2: `FixedInterval` of zero, 2 retries.
            pub async fn tokio_retry2() -> Res {
                tokio_retry2::Retry::spawn(tokio_retry2_strategy(), || async {
                    $body().map_err(|e| {
                        if e.is_transient() {
                            tokio_retry2::RetryError::transient(e)
                        } else {
                            tokio_retry2::RetryError::permanent(e)
                        }
                    })
                })
                .await
            }

            static FAILSAFE: LazyLock<FailsafeBreaker> = LazyLock::new(new_failsafe);
            static FAILSAFE_STACK: LazyLock<FailsafeBreaker> = LazyLock::new(new_failsafe);

            /// failsafe's breaker alone around the bare fn.
            pub async fn failsafe_breaker() -> Res {
                FAILSAFE.call(bare()).await.map_err(from_failsafe)
            }

            /// backon retry → failsafe breaker → timeout: the same layers as `resilient_breaker`
            /// minus the budget, assembled from the alternatives.
            pub async fn backon_failsafe_timeout() -> Res {
                (|| async { FAILSAFE_STACK.call(timeout_bare()).await.map_err(from_failsafe) })
                    .retry(BACKON)
                    .when(BenchError::is_transient)
                    .await
            }
        }
    };
}

contenders!(ok, body_ok);
contenders!(flaky, body_flaky);

/// Every contender: `for_each_contender!(m)` expands `m!(name, function, cases)` once per contender;
/// `cases` is `both` or `no_fault_only` (a contender that does not retry has no fail-once case).
macro_rules! for_each_contender {
    ($m:ident) => {
        $m!("bare", bare, no_fault_only);
        $m!("hand_loop", hand_loop, both);
        $m!("timeout_bare", timeout_bare, no_fault_only);
        $m!("hand_loop_timeout", hand_loop_timeout, both);
        $m!("resilient_timeout", resilient_timeout, no_fault_only);
        $m!("resilient_retry", resilient_retry, both);
        $m!("resilient_budget", resilient_budget, both);
        $m!("resilient_breaker", resilient_breaker, both);
        $m!("resilient_bulkhead", resilient_bulkhead, both);
        $m!("resilient_rate_limit", resilient_rate_limit, no_fault_only);
        $m!("resilient_hedge", resilient_hedge, no_fault_only);
        $m!("resilient_fallback", resilient_fallback, no_fault_only);
        $m!(
            "resilient_time_breaker",
            resilient_time_breaker,
            no_fault_only
        );
        $m!(
            "resilient_long_breaker",
            resilient_long_breaker,
            no_fault_only
        );
        $m!(
            "resilient_slow_breaker",
            resilient_slow_breaker,
            no_fault_only
        );
        $m!(
            "resilient_concurrency",
            resilient_concurrency,
            no_fault_only
        );
        $m!("backon", backon_retry, both);
        $m!("backon_timeout", backon_timeout, both);
        $m!("tower_retry", tower_retry, both);
        $m!("tower_retry_timeout", tower_retry_timeout, both);
        $m!("tokio_retry2", tokio_retry2, both);
        $m!("failsafe", failsafe_breaker, no_fault_only);
        $m!("backon_failsafe_timeout", backon_failsafe_timeout, both);
    };
}

/// How a contender appears in the tables.
pub fn label(name: &str) -> &'static str {
    match name {
        "bare" => "bare async fn",
        "hand_loop" => "hand-written retry loop",
        "timeout_bare" => "`tokio::time::timeout(bare)`",
        "hand_loop_timeout" => "hand-written loop, `timeout` per attempt",
        "resilient_timeout" => "`#[resilient]` timeout (`max_attempts = 1, budget = false`)",
        "resilient_retry" => "`#[resilient]` + retry (`max_attempts = 3`)",
        "resilient_budget" => "`#[resilient]` + budget",
        "resilient_breaker" => "`#[resilient]` + breaker",
        "resilient_bulkhead" => "`#[resilient]` + bulkhead",
        "resilient_rate_limit" => "`#[resilient]` timeout + local rate limit (never waits)",
        "resilient_hedge" => "`#[resilient]` timeout + hedge (never fires)",
        "resilient_fallback" => "`#[resilient]` timeout + fallback (never needed)",
        "resilient_time_breaker" => "`#[resilient]` timeout + time-window, slow-call breaker",
        "resilient_long_breaker" => "`#[resilient]` timeout + breaker over the last 100 calls",
        "resilient_slow_breaker" => {
            "`#[resilient]` timeout + slow-call breaker over the last 100 calls"
        }
        "resilient_concurrency" => "`#[resilient]` timeout + adaptive concurrency limit",
        "backon" => "backon 1.6 retry",
        "backon_timeout" => "backon retry + `timeout` per attempt",
        "tower_retry" => "tower 0.5 `Retry`",
        "tower_retry_timeout" => "tower `Retry` + `Timeout`",
        "tokio_retry2" => "tokio-retry2 0.9",
        "failsafe" => "failsafe 1.3 breaker",
        "backon_failsafe_timeout" => "backon + failsafe breaker + `timeout`",
        _ => "?",
    }
}
