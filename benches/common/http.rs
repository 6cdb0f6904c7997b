//! The HTTP contenders: one GET of `/` on the loopback server, read to the end.
//!
//! The same retry policy for all that retry: at most 3 attempts, zero delay between them
//! (the server's `Retry-After: 0` asks for no more), retried on 408, 429, 5xx and connection
//! failures. Every client is a `reqwest::Client` built the same way (no timeouts of its own,
//! so only `#[resilient]` has one: its per-attempt timeout and deadline, which it always has).

use std::time::Duration;

use backon::Retryable as _;
use bytes::Bytes;
use resilience_runtime::{RequestBuilderExt as _, resilient};
use tower::ServiceExt as _;

use super::micro::{ATTEMPTS, BACKON, TIMEOUT};

/// The contenders of the HTTP benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// reqwest alone: no retry, a 503 is a failed call.
    Bare,
    /// `tokio::time::timeout` around bare reqwest: the floor of any policy with a timeout.
    TimeoutBare,
    /// `#[resilient]` with the documented `.resilient()` (stamps X-Request-Id, traceparent,
    /// X-Attempt; records status and Retry-After); default budget.
    Resilient,
    /// The same without `.resilient()`: classification by the error's status only.
    ResilientUnstamped,
    /// `#[resilient]` with every layer: budget, breaker and bulkhead too.
    ResilientFull,
    /// `#[resilient]` with `budget = false`.
    ResilientNoBudget,
    /// reqwest-middleware 0.5 + reqwest-retry 0.9 (`ExponentialBackoff` bounded to zero).
    Middleware,
    /// backon 1.6 around the reqwest call.
    Backon,
    /// tokio-retry2 0.9 around the reqwest call.
    TokioRetry2,
    /// tower 0.5 `Retry` over `reqwest::Client` as a service, with a `TpsBudget`.
    TowerBudget,
}

impl Contender {
    pub fn label(self) -> &'static str {
        match self {
            Contender::Bare => "bare reqwest (no retry)",
            Contender::TimeoutBare => "`tokio::time::timeout(bare reqwest)`",
            Contender::Resilient => "`#[resilient]` (`.resilient()` stamping)",
            Contender::ResilientUnstamped => "`#[resilient]` without `.resilient()`",
            Contender::ResilientFull => "`#[resilient]` + breaker + bulkhead",
            Contender::ResilientNoBudget => "`#[resilient]`, `budget = false`",
            Contender::Middleware => "reqwest-middleware 0.5 + reqwest-retry 0.9",
            Contender::Backon => "backon 1.6",
            Contender::TokioRetry2 => "tokio-retry2 0.9",
            Contender::TowerBudget => "tower 0.5 retry + `TpsBudget`",
        }
    }
}

/// Everything a contender needs, built once.
#[derive(Debug)]
pub struct Clients {
    pub url: String,
    pub plain: reqwest::Client,
    pub middleware: reqwest_middleware::ClientWithMiddleware,
    pub tower: tower::retry::Retry<TowerBudgetPolicy, reqwest::Client>,
}

impl Clients {
    pub fn new(url: String) -> Clients {
        let plain = reqwest::Client::builder()
            .build()
            .expect("a reqwest client");
        let policy = reqwest_retry::policies::ExponentialBackoff::builder()
            .retry_bounds(Duration::ZERO, Duration::ZERO)
            .jitter(reqwest_retry::Jitter::None)
            .build_with_max_retries(ATTEMPTS - 1);
        let middleware = reqwest_middleware::ClientBuilder::new(plain.clone())
            .with(reqwest_retry::RetryTransientMiddleware::new_with_policy(
                policy,
            ))
            .build();
        let budget = std::sync::Arc::new(tower::retry::budget::TpsBudget::new(
            Duration::from_secs(10),
            10,
            0.1,
        ));
        let tower = tower::retry::Retry::new(
            TowerBudgetPolicy {
                attempts: 0,
                budget,
            },
            plain.clone(),
        );
        Clients {
            url,
            plain,
            middleware,
            tower,
        }
    }

    /// One call; `true` when it ended with a 2xx and its body.
    pub async fn call(&self, which: Contender) -> bool {
        let (c, url) = (&self.plain, self.url.as_str());
        match which {
            Contender::Bare => bare(c, url).await.is_ok(),
            Contender::TimeoutBare => {
                matches!(tokio::time::timeout(TIMEOUT, bare(c, url)).await, Ok(Ok(_)))
            }
            Contender::Resilient => resilient_get(c, url).await.is_ok(),
            Contender::ResilientUnstamped => resilient_unstamped(c, url).await.is_ok(),
            Contender::ResilientFull => resilient_full(c, url).await.is_ok(),
            Contender::ResilientNoBudget => resilient_no_budget(c, url).await.is_ok(),
            Contender::Middleware => middleware(&self.middleware, url).await.is_ok(),
            Contender::Backon => backon_get(c, url).await.is_ok(),
            Contender::TokioRetry2 => tokio_retry2_get(c, url).await.is_ok(),
            Contender::TowerBudget => tower_get(&self.tower, url).await.is_ok(),
        }
    }
}

/// Retried by every contender: 408, 429, 5xx, and failures to connect or to get an answer.
fn transient(e: &reqwest::Error) -> bool {
    match e.status() {
        Some(s) => s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429,
        None => e.is_connect() || e.is_timeout() || e.is_request(),
    }
}

pub async fn bare(c: &reqwest::Client, url: &str) -> Result<Bytes, reqwest::Error> {
    c.get(url).send().await?.error_for_status()?.bytes().await
}

#[resilient(
    timeout = "10s",
    deadline = "30s",
    max_attempts = 3,
    backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none)
)]
pub async fn resilient_get(
    c: &reqwest::Client,
    url: &str,
) -> Result<Bytes, resilience_runtime::Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?)
}

#[resilient(
    timeout = "10s",
    deadline = "30s",
    max_attempts = 3,
    backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none)
)]
pub async fn resilient_unstamped(
    c: &reqwest::Client,
    url: &str,
) -> Result<Bytes, resilience_runtime::Error> {
    Ok(c.get(url).send().await?.error_for_status()?.bytes().await?)
}

#[resilient(
    timeout = "10s",
    deadline = "30s",
    max_attempts = 3,
    backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none),
    breaker = { failure_rate = 0.5, min_calls = 10, window = 20, open_for = "30s", half_open_calls = 3 },
    bulkhead = { max_concurrent = 64, max_wait = "0ms" },
)]
pub async fn resilient_full(
    c: &reqwest::Client,
    url: &str,
) -> Result<Bytes, resilience_runtime::Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?)
}

#[resilient(
    timeout = "10s",
    deadline = "30s",
    max_attempts = 3,
    backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none),
    budget = false
)]
pub async fn resilient_no_budget(
    c: &reqwest::Client,
    url: &str,
) -> Result<Bytes, resilience_runtime::Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?)
}

pub async fn middleware(
    c: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
) -> Result<Bytes, reqwest_middleware::Error> {
    Ok(c.get(url).send().await?.error_for_status()?.bytes().await?)
}

pub async fn backon_get(c: &reqwest::Client, url: &str) -> Result<Bytes, reqwest::Error> {
    (|| bare(c, url)).retry(BACKON).when(transient).await
}

pub async fn tokio_retry2_get(c: &reqwest::Client, url: &str) -> Result<Bytes, reqwest::Error> {
    tokio_retry2::Retry::spawn(super::micro::tokio_retry2_strategy(), || async {
        bare(c, url).await.map_err(|e| {
            if transient(&e) {
                tokio_retry2::RetryError::transient(e)
            } else {
                tokio_retry2::RetryError::permanent(e)
            }
        })
    })
    .await
}

/// tower's retry policy with a budget, as tower's documentation builds it: a deposit per
/// logical call, a withdrawal per retry.
#[derive(Debug, Clone)]
pub struct TowerBudgetPolicy {
    attempts: u32,
    budget: std::sync::Arc<tower::retry::budget::TpsBudget>,
}

impl tower::retry::Policy<reqwest::Request, reqwest::Response, reqwest::Error>
    for TowerBudgetPolicy
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut reqwest::Request,
        result: &mut Result<reqwest::Response, reqwest::Error>,
    ) -> Option<Self::Future> {
        use tower::retry::budget::Budget as _;
        self.attempts += 1;
        if self.attempts == 1 {
            self.budget.deposit();
        }
        let retry = match result {
            Ok(r) => {
                let s = r.status();
                s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429
            }
            Err(e) => transient(e),
        };
        (retry && self.attempts < ATTEMPTS && self.budget.withdraw())
            .then(|| tokio::time::sleep(Duration::ZERO))
    }

    fn clone_request(&mut self, req: &reqwest::Request) -> Option<reqwest::Request> {
        req.try_clone()
    }
}

pub async fn tower_get(
    svc: &tower::retry::Retry<TowerBudgetPolicy, reqwest::Client>,
    url: &str,
) -> Result<Bytes, reqwest::Error> {
    let req = reqwest::Request::new(reqwest::Method::GET, url.parse().expect("a URL"));
    svc.clone()
        .oneshot(req)
        .await?
        .error_for_status()?
        .bytes()
        .await
}
