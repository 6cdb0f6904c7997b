//! The source documents' two incidents, scaled to milliseconds, as runnable experiments shared
//! by the tour and the tests.
//!
//! 1. **The exhausted thread pool.** Service A has 200 request threads (here: a 200-permit
//!    semaphore around every request of a real HTTP server on 127.0.0.1). Its `/checkout` calls
//!    service B, which has become slow: 60 units per answer. Users arrive in waves of 100 every
//!    10 units and give up after 30. Without a policy, `/checkout` holds every thread while it
//!    waits on B, and A's `/home`, which never touches B, stops answering. With a 5-unit
//!    timeout alone, every thread is free again before the next wave and `/home` keeps
//!    answering; with a breaker and a bulkhead too, most checkouts do not even reach B.
//! 2. **The retry storm.** B is dead (every answer 503), or slow (every attempt times out),
//!    under steady load. Naive retries (3 attempts) triple the load on it; the retry budget
//!    holds it near 1.1×.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};
use tokio::sync::Semaphore;

/// One unit of the source document's time (a second there), in this experiment.
pub const UNIT: Duration = Duration::from_millis(10);

/// How service A calls service B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// A plain reqwest call: no timeout, no breaker, no bulkhead.
    None,
    /// `#[resilient]` with a 5-unit timeout and nothing else: the source document's own fix.
    TimeoutOnly,
    /// `#[resilient]` with a 5-unit timeout, a breaker and a 50-slot bulkhead.
    Policy,
}

/// What the thread-pool experiment measured.
#[derive(Debug, Clone, Copy)]
pub struct PoolReport {
    pub home_sent: usize,
    pub home_answered: usize,
    pub checkout_sent: usize,
    pub checkout_ok: usize,
    pub checkout_failed_fast: usize,
    /// Requests B received.
    pub b_requests: usize,
    /// The most of A's 200 threads still busy when a wave arrived, 10 units after the one
    /// before (from the second wave on): with a 5-unit timeout, none.
    pub busy_at_next_wave: usize,
}

impl PoolReport {
    /// The share of A's unrelated requests answered within the users' patience.
    pub fn home_share(&self) -> f64 {
        self.home_answered as f64 / self.home_sent.max(1) as f64
    }
}

#[resilient(
    timeout = "50ms",
    deadline = "50ms",
    max_attempts = 1,
    breaker = { name = "incident-b", failure_rate = 0.5, min_calls = 20, window = 40, open_for = "200ms", half_open_calls = 3 },
    bulkhead = { name = "incident-b", max_concurrent = 50 },
)]
async fn call_b_guarded(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(timeout = "50ms", deadline = "50ms", max_attempts = 1, budget = false)]
async fn call_b_with_a_timeout(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

async fn call_b(guard: Guard, http: &reqwest::Client, url: &str) -> Result<String, String> {
    match guard {
        Guard::None => {
            let r = async { http.get(url).send().await?.error_for_status()?.text().await }.await;
            r.map_err(|e| e.to_string())
        }
        Guard::TimeoutOnly => call_b_with_a_timeout(http, url)
            .await
            .map_err(|e| e.to_string()),
        Guard::Policy => call_b_guarded(http, url).await.map_err(|e| e.to_string()),
    }
}

struct ServiceA {
    pool: Arc<Semaphore>,
    guard: Guard,
    http: reqwest::Client,
    b_url: String,
}

async fn handle(
    a: Arc<ServiceA>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    // A request thread runs the request to the end even when the user has hung up (hyper
    // drops this future then; the spawned work goes on holding its thread).
    let work = tokio::spawn(async move {
        let _thread = a.pool.acquire().await.expect("the pool is never closed");
        match path.as_str() {
            "/home" => (200, "home".to_owned()),
            "/checkout" => match call_b(a.guard, &a.http, &a.b_url).await {
                Ok(b) => (200, b),
                Err(e) => (503, e),
            },
            _ => (404, String::new()),
        }
    });
    let (status, body) = work.await.unwrap_or((500, String::new()));
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    Ok(resp)
}

async fn serve_a(a: Arc<ServiceA>) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let a = a.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(a.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// Runs the thread-pool incident: `waves` waves of 100 users, 10 units apart. The first two
/// waves all go to `/checkout`; later waves send half their users to `/home`.
pub async fn thread_pool(guard: Guard, waves: usize) -> PoolReport {
    let b = FaultServer::start(Script::always(Action::ok().body("paid").after(UNIT * 60))).await;
    let pool = Arc::new(Semaphore::new(200));
    let a = Arc::new(ServiceA {
        pool: pool.clone(),
        guard,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .retry(reqwest::retry::never())
            .build()
            .expect("client"),
        b_url: b.url("/pay"),
    });
    let (addr, server) = serve_a(a).await;
    let users = reqwest::Client::builder()
        .timeout(UNIT * 30) // users give up after 30 units and press refresh
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let home_answered = Arc::new(AtomicUsize::new(0));
    let checkout_ok = Arc::new(AtomicUsize::new(0));
    let checkout_fast = Arc::new(AtomicUsize::new(0));
    let (mut home_sent, mut checkout_sent) = (0, 0);
    let mut busy_at_next_wave = 0;
    let mut tasks = Vec::new();
    for wave in 0..waves {
        if wave > 0 {
            busy_at_next_wave = busy_at_next_wave.max(200 - pool.available_permits());
        }
        for user in 0..100 {
            let home = wave >= 2 && user % 2 == 0;
            let path = if home { "/home" } else { "/checkout" };
            if home {
                home_sent += 1;
            } else {
                checkout_sent += 1;
            }
            let (users, url) = (users.clone(), format!("http://{addr}{path}"));
            let (h, ok, fast) = (
                home_answered.clone(),
                checkout_ok.clone(),
                checkout_fast.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let r = users.get(url).send().await;
                if let Ok(resp) = r {
                    match (home, resp.status().as_u16()) {
                        (true, 200) => {
                            h.fetch_add(1, Ordering::Relaxed);
                        }
                        (false, 200) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        (false, _) if started.elapsed() < UNIT * 10 => {
                            fast.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }));
        }
        tokio::time::sleep(UNIT * 10).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    server.abort();
    PoolReport {
        home_sent,
        home_answered: home_answered.load(Ordering::Relaxed),
        checkout_sent,
        checkout_ok: checkout_ok.load(Ordering::Relaxed),
        checkout_failed_fast: checkout_fast.load(Ordering::Relaxed),
        b_requests: b.count(),
        busy_at_next_wave,
    }
}

/// What the retry-storm experiment measured.
#[derive(Debug, Clone, Copy)]
pub struct StormReport {
    pub calls: usize,
    pub requests: usize,
}

impl StormReport {
    /// Requests the downstream received per call.
    pub fn amplification(&self) -> f64 {
        self.requests as f64 / self.calls.max(1) as f64
    }
}

#[resilient(
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "1ms", max = "2ms"),
    budget = false
)]
async fn naive(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "2ms"), budget = { name = "storm", ratio = 0.1, min_per_sec = 10 })]
async fn budgeted(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(method = GET, timeout = "50ms", max_attempts = 3, backoff(initial = "1ms", max = "2ms"), budget = false)]
async fn naive_on_a_slow_dependency(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(method = GET, timeout = "50ms", max_attempts = 3, backoff(initial = "1ms", max = "2ms"), budget = { name = "storm-slow", ratio = 0.1, min_per_sec = 10 })]
async fn budgeted_on_a_slow_dependency(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Runs `calls` calls at a steady `per_sec` against a downstream that answers every request
/// with 503, with naive retries or with the retry budget.
pub async fn retry_storm(with_budget: bool, calls: usize, per_sec: u32) -> StormReport {
    storm(with_budget, false, calls, per_sec).await
}

/// [`retry_storm`] against a downstream that has become slow instead: it answers after a
/// second, every attempt times out at 50 ms, and a retry sends the same request again to a
/// service already too slow (the source document: "the dependency gets twice the requests").
pub async fn retry_storm_on_a_slow_dependency(
    with_budget: bool,
    calls: usize,
    per_sec: u32,
) -> StormReport {
    storm(with_budget, true, calls, per_sec).await
}

async fn storm(with_budget: bool, slow: bool, calls: usize, per_sec: u32) -> StormReport {
    let action = if slow {
        Action::ok().after(Duration::from_secs(1))
    } else {
        Action::status(503)
    };
    let downstream = FaultServer::start(Script::always(action)).await;
    let http = reqwest::Client::builder()
        .retry(reqwest::retry::never())
        .build()
        .expect("client");
    let url = downstream.url("/inventory");
    let gap = Duration::from_secs(1) / per_sec;
    let mut tasks = Vec::new();
    for _ in 0..calls {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let _ = match (slow, with_budget) {
                (false, true) => budgeted(&http, &url).await,
                (false, false) => naive(&http, &url).await,
                (true, true) => budgeted_on_a_slow_dependency(&http, &url).await,
                (true, false) => naive_on_a_slow_dependency(&http, &url).await,
            };
        }));
        tokio::time::sleep(gap).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    StormReport {
        calls,
        requests: downstream.count(),
    }
}
