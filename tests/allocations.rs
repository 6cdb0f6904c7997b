//! The happy path allocates nothing per call: the policy is static data, shared state is
//! resolved once per function, and a call that succeeds first time touches no heap.
//!
//! `.ci/test` runs it twice: with every feature on (`opentelemetry`, `metrics`) and nothing
//! installed (no subscriber, no recorder), and with the features off.

#[cfg(feature = "metrics")]
mod support;

use resilience_fault_server::counting::{Counting, snapshot};
use resilience_runtime::{Error, resilient};

/// Counts per thread: only the thread that runs the calls counts, not the test harness's own,
/// which allocates now and then while it waits.
#[global_allocator]
static GLOBAL: Counting = Counting;

#[resilient(method = GET, timeout = "1s")]
async fn defaults(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

#[resilient(
    method = GET,
    timeout = "1s",
    breaker = { failure_rate = 0.5, min_calls = 10, window = 20, open_for = "1s", half_open_calls = 2 },
    bulkhead = { max_concurrent = 8 },
    rate_limit = { rate = 1000000, burst = 1000000, max_wait = "10ms" },
)]
async fn everything(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

#[resilient(
    method = GET,
    timeout = "1s",
    breaker = { failure_rate = 0.5, min_calls = 10, window = 20, open_for = "1s", half_open_calls = 2 },
    concurrency_limit = { initial = 8, max = 64, latency = "100ms", max_wait = "10ms" },
)]
async fn adaptive(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

/// A limit shared through Redis with no Redis given: each decision local (and, with the
/// `metrics` feature, counted as such).
#[resilient(
    method = GET,
    timeout = "1s",
    rate_limit = { rate = 1000000, burst = 1000000, store = "redis" },
)]
async fn shared_without_redis(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

/// A fallback, never called on the happy path: it costs the call nothing.
#[resilient(method = GET, timeout = "1s", fallback = cached)]
async fn with_fallback(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

async fn cached(_n: u64) -> Result<u64, Error> {
    Ok(0)
}

#[resilient(method = GET, timeout = "1s", hedge(delay = "50ms"))]
async fn hedged(n: u64) -> Result<u64, Error> {
    Ok(n + 1)
}

/// The heap allocations of this thread per call, over 1,000 calls of the function numbered `f`
/// (0 `defaults`, 1 `everything`, 2 `adaptive`, 3 `shared_without_redis`, 4 `with_fallback`,
/// else `hedged`), each checked to succeed.
async fn allocations_per_call(f: u8) -> f64 {
    let (before, _) = snapshot();
    for i in 0..1000u64 {
        let r = match f {
            0 => defaults(i).await,
            1 => everything(i).await,
            2 => adaptive(i).await,
            3 => shared_without_redis(i).await,
            4 => with_fallback(i).await,
            _ => hedged(i).await,
        };
        assert_eq!(r.unwrap(), i + 1);
    }
    (snapshot().0 - before) as f64 / 1000.0
}

#[test]
fn no_allocation_per_call_on_the_happy_path() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // The runtime is current-thread: every task of these calls runs on this thread.
    rt.block_on(async {
        // First calls register the shared state (one allocation each, once per process).
        assert_eq!(defaults(1).await.unwrap(), 2);
        assert_eq!(everything(1).await.unwrap(), 2);
        assert_eq!(adaptive(1).await.unwrap(), 2);
        assert_eq!(shared_without_redis(1).await.unwrap(), 2);
        assert_eq!(with_fallback(1).await.unwrap(), 2);
        assert_eq!(hedged(1).await.unwrap(), 2);
        for (name, f) in [
            ("defaults", 0),
            ("budget + breaker + bulkhead + rate limit", 1),
            ("budget + breaker + adaptive concurrency limit", 2),
            // Its local decisions told the recorder with a key built per call (a label's
            // `Vec`), even with none installed.
            ("a limit shared through Redis, decided locally", 3),
            ("a fallback, not called", 4),
            ("a hedge, not started", 5),
        ] {
            let per_call = allocations_per_call(f).await;
            assert_eq!(per_call, 0.0, "{name}: {per_call} allocations per call");
        }
    });
}

#[resilient(
    method = GET,
    timeout = "1s",
    max_attempts = 1,
    breaker = { failure_rate = 0.5, min_calls = 5, window = 5, open_for = "1h", half_open_calls = 1 },
)]
async fn failing() -> Result<u64, Error> {
    Err(Error::status(reqwest::StatusCode::SERVICE_UNAVAILABLE))
}

/// A call its open breaker refuses touches no heap either: its error holds its kind and class
/// inline, and nothing else (no attempt ran, nothing was sent).
#[test]
fn no_allocation_for_a_call_an_open_breaker_refuses() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        // Five failures open the breaker.
        for _ in 0..5 {
            assert_eq!(
                failing().await.unwrap_err().kind(),
                resilience_runtime::ErrorKind::Call
            );
        }
        let (before, _) = snapshot();
        for _ in 0..1000 {
            let e = failing().await.unwrap_err();
            assert_eq!(e.kind(), resilience_runtime::ErrorKind::CircuitOpen);
            assert_eq!(e.attempts(), 0);
            assert!(e.is_rejected());
        }
        let per_call = (snapshot().0 - before) as f64 / 1000.0;
        assert_eq!(per_call, 0.0, "{per_call} allocations per refused call");
    });
}

/// The environment variable that makes [`global_recorder_child`] run.
#[cfg(feature = "metrics")]
const GLOBAL_CHILD: &str = "RESILIENCE_ALLOCATIONS_GLOBAL_CHILD";

/// With a Prometheus recorder installed as the process's global one, a call asks it for no
/// handle once its thread keeps them: what is left is the recorder's own (its histograms
/// take a block of 64 values at a time: two histograms, one value each per call). Asking the
/// recorder for every handle on every call made six allocations a call. In a child process:
/// a recorder can be made global once, and the tests above measure the runtime without one.
#[cfg(feature = "metrics")]
#[test]
fn with_a_global_recorder_a_call_allocates_only_the_recorders_own_storage() {
    support::run_in_child("global_recorder_child", GLOBAL_CHILD);
}

#[cfg(feature = "metrics")]
#[test]
#[ignore = "the child process of with_a_global_recorder_a_call_allocates_only_the_recorders_own_storage"]
fn global_recorder_child() {
    if std::env::var_os(GLOBAL_CHILD).is_none() {
        return;
    }
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    resilience_runtime::telemetry::describe_metrics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        // The first calls register the metrics and keep their handles.
        assert_eq!(defaults(1).await.unwrap(), 2);
        assert_eq!(everything(1).await.unwrap(), 2);
        for (name, f) in [
            ("defaults", 0),
            ("budget + breaker + bulkhead + rate limit", 1),
        ] {
            let per_call = allocations_per_call(f).await;
            assert!(
                per_call <= 0.05,
                "{name}: {per_call} allocations per call with a global recorder"
            );
        }
    });
    let text = prometheus.render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("resilience_client_calls")
                && l.contains(r#"function="allocations::everything""#)
                && l.ends_with(" 1001")),
        "every call counted: {text}"
    );
}

/// Stamps `req` (cleared of the last stamping's headers, keeping the map's room) in this
/// call's attempt; the heap allocations the stamping made.
#[resilient(method = GET, timeout = "1s", max_attempts = 1)]
async fn stamped(req: &mut reqwest::Request) -> Result<u64, Error> {
    req.headers_mut().clear();
    let (before, _) = snapshot();
    resilience_runtime::stamp_request(req);
    let allocations = snapshot().0 - before;
    assert!(req.headers().contains_key("traceparent"), "not stamped");
    Ok(allocations as u64)
}

/// The same for a keyed POST: its key is one more generated value, in the same allocation.
#[resilient(method = POST, timeout = "1s", idempotency_key = "auto", max_attempts = 1)]
async fn stamped_with_a_key(req: &mut reqwest::Request) -> Result<u64, Error> {
    req.headers_mut().clear();
    let (before, _) = snapshot();
    resilience_runtime::stamp_request(req);
    let allocations = snapshot().0 - before;
    assert!(req.headers().contains_key("idempotency-key"), "no key");
    Ok(allocations as u64)
}

/// Stamping a request writes every generated value (request id, `traceparent`, the time left,
/// an automatic key) into one buffer on the stack and makes each header value a slice of one
/// copy of it: two heap allocations (the copy, and its shared handle when it is first
/// sliced), however many values, as the README's Cost section says.
#[test]
fn stamping_a_request_costs_two_allocations() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let url: reqwest::Url = "http://127.0.0.1:9/charge".parse().unwrap();
        let mut get = reqwest::Request::new(reqwest::Method::GET, url.clone());
        let mut post = reqwest::Request::new(reqwest::Method::POST, url);
        // The first stamping of each grows its header map.
        stamped(&mut get).await.unwrap();
        stamped_with_a_key(&mut post).await.unwrap();
        for _ in 0..100 {
            let n = stamped(&mut get).await.unwrap();
            assert!(n <= 2, "{n} allocations to stamp a GET");
            let n = stamped_with_a_key(&mut post).await.unwrap();
            assert!(n <= 2, "{n} allocations to stamp a keyed POST");
        }
    });
}
