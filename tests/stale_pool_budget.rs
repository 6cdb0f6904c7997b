//! The retry budget against a burst of never-processed failures: a whole pool of keep-alive
//! connections found closed at once is retried, while a retry storm against a dead downstream
//! stays bounded. Both measured in one test file, against real sockets.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{ClientSettings, Error, RequestBuilderExt as _, resilient};

/// The default budget (10% of first attempts + 10 per second), the default retry classes.
#[resilient(
    timeout = "2s",
    max_attempts = 3,
    backoff(initial = "1ms", max = "5ms")
)]
async fn fetch(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

const POOL: usize = 24;

#[tokio::test]
async fn a_pool_of_stale_connections_is_retried_without_exhausting_the_budget() {
    // Regression: 24 pooled connections going stale at once, default budget: a good part of
    // the calls failed with BudgetExhausted, though none of the requests had been processed.
    //
    // The server answers the first request of each connection (slowly, so that the first
    // round opens POOL connections), and closes the connection on any later request without
    // answering: a keep-alive socket the server had already dropped.
    let seen_connections: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let server = FaultServer::start(Script::dynamic({
        let seen = seen_connections.clone();
        move |s| {
            if seen.lock().unwrap().insert(s.connection) {
                Action::ok().after(Duration::from_millis(50))
            } else {
                Action::close()
            }
        }
    }))
    .await;
    let http = ClientSettings::DEFAULT.build().unwrap();
    let url = server.url("/");
    let round = async || {
        let calls: Vec<_> = (0..POOL)
            .map(|_| {
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move { fetch(&http, &url).await })
            })
            .collect();
        let mut failed = Vec::new();
        for call in calls {
            if let Err(e) = call.await.unwrap() {
                failed.push(e.to_string());
            }
        }
        failed
    };
    assert_eq!(round().await, Vec::<String>::new(), "first round");
    assert_eq!(server.count(), POOL, "one connection per call");
    // Every pooled connection is stale now.
    let failed = round().await;
    assert!(
        failed.is_empty(),
        "{} of {POOL} failed: {failed:?}",
        failed.len()
    );
    let requests_per_call = server.count() as f64 / (2 * POOL) as f64;
    eprintln!(
        "stale pool: {} requests for {} calls ({requests_per_call:.2} per call)",
        server.count(),
        2 * POOL
    );
    assert_eq!(
        server.count(),
        3 * POOL,
        "one retry per stale socket, no more"
    );
}

#[tokio::test]
async fn the_retry_storm_stays_bounded() {
    // The tour's storm: every answer 503 under a steady 200 calls per second, 3 attempts,
    // the default budget. A 503 is an answer, so the never-processed allowance is not drawn.
    let r = resilience::incidents::retry_storm(true, 300, 200).await;
    eprintln!(
        "retry storm: {} requests for {} calls ({:.2} per call)",
        r.requests,
        r.calls,
        r.amplification()
    );
    assert!(
        r.amplification() <= 1.2,
        "{:.2} requests per call",
        r.amplification()
    );
}

/// One retry a second, shared, and a breaker that opens after two failures.
#[resilient(
    timeout = "2s",
    max_attempts = 2,
    backoff(kind = constant, initial = "100ms", max = "100ms", jitter = none),
    budget = { name = "give_back", ratio = 0.0, min_per_sec = 1 },
    breaker = { name = "give_back", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1h", half_open_calls = 1 },
)]
async fn behind_a_breaker(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The same budget, another breaker.
#[resilient(
    timeout = "2s",
    max_attempts = 2,
    backoff(kind = constant, initial = "1ms", max = "1ms", jitter = none),
    budget = { name = "give_back", ratio = 0.0, min_per_sec = 1 },
)]
async fn beside_it(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A retry the budget granted but the breaker then refused (it opened during the backoff) was
/// never made: its token goes back, and another call retries on it in the same second. And a
/// call its caller gives up on during the backoff gives its retry back too.
#[tokio::test(start_paused = true)]
async fn a_retry_never_made_gives_its_budget_back() {
    let http = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let once = FaultServer::start(vec![Action::status(503), Action::ok()]).await;

    // A fails, takes the second's only retry, and waits 100 ms; B's failure meanwhile opens
    // the breaker (two failures of two), which refuses A's retry.
    let a = tokio::spawn({
        let (http, url) = (http.clone(), down.url("/a"));
        async move { behind_a_breaker(&http, &url).await }
    });
    assert_eq!(down.wait_for(1).await, 1);
    let b = tokio::spawn({
        let (http, url) = (http.clone(), down.url("/b"));
        async move { behind_a_breaker(&http, &url).await }
    });
    let a = a.await.unwrap().unwrap_err();
    assert_eq!(a.kind(), resilience_runtime::ErrorKind::CircuitOpen, "{a}");
    assert_eq!(a.attempts(), 1, "{a}");
    let _ = b.await.unwrap();
    assert_eq!(down.count(), 2, "A once, B once: the retry was never sent");
    let snapshot = resilience_runtime::metrics::budget("give_back").unwrap();
    assert_eq!(snapshot.withdrawals, 0, "{snapshot:?}");
    assert_eq!(snapshot.available, 1, "{snapshot:?}");
    // No failure was retried: A's retry was refused, B's never granted.
    let m = resilience_runtime::metrics::policy("stale_pool_budget::behind_a_breaker").unwrap();
    assert_eq!(m.retries, 0, "{m:?}");
    assert_eq!(
        (m.failed_without_retry, m.failed_with_retry),
        (2, 0),
        "{m:?}"
    );
    // Still the same second: C retries on the retry A gave back.
    assert_eq!(beside_it(&http, &once.url("/c")).await.unwrap(), "ok");
    assert_eq!(once.count(), 2);

    // The next second: D takes its retry, and its caller gives up during the backoff.
    tokio::time::advance(Duration::from_secs(1)).await;
    let d = tokio::time::timeout(
        Duration::from_millis(50),
        with_a_long_backoff(&http, &down.url("/d")),
    )
    .await;
    assert!(d.is_err(), "given up during the backoff");
    assert_eq!(
        resilience_runtime::metrics::budget("give_back")
            .unwrap()
            .available,
        1,
        "D's retry is back"
    );
    let m = resilience_runtime::metrics::policy("stale_pool_budget::with_a_long_backoff").unwrap();
    assert_eq!((m.retries, m.cancelled), (0, 1), "{m:?}");
}

/// The same budget, no breaker, a long backoff.
#[resilient(
    timeout = "2s",
    max_attempts = 2,
    backoff(kind = constant, initial = "500ms", max = "500ms", jitter = none),
    budget = { name = "give_back", ratio = 0.0, min_per_sec = 1 },
)]
async fn with_a_long_backoff(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A budget of its own (one retry a second), a backoff that fits well inside the deadline.
#[resilient(
    timeout = "500ms",
    deadline = "1s",
    max_attempts = 2,
    backoff(kind = constant, initial = "300ms", max = "300ms", jitter = none),
    budget = { name = "deadline_first", ratio = 0.0, min_per_sec = 1 },
)]
async fn woken_past_its_deadline(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The third way a retry is never made: the deadline came first (here the clock jumps past it
/// during the backoff, as a blocked runtime thread would wake the call late). Its token goes
/// back to the budget, and the call ends with its one attempt counted.
#[tokio::test(start_paused = true)]
async fn a_retry_the_deadline_overtook_gives_its_budget_back() {
    let http = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let call = tokio::spawn({
        let (http, url) = (http.clone(), down.url("/late"));
        async move { woken_past_its_deadline(&http, &url).await }
    });
    // Busy, so the paused clock does not move on its own, until the retry is taken.
    let budget = || resilience_runtime::metrics::budget("deadline_first").unwrap();
    let mut taken = false;
    for _ in 0..100_000 {
        if resilience_runtime::metrics::budget("deadline_first").is_some_and(|b| b.withdrawals == 1)
        {
            taken = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(taken, "the retry was decided: {:?}", budget());
    assert_eq!(budget().available, 0, "{:?}", budget());
    tokio::time::advance(Duration::from_secs(2)).await;
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(
        e.kind(),
        resilience_runtime::ErrorKind::DeadlineExceeded,
        "{e}"
    );
    assert_eq!(e.attempts(), 1, "{e}");
    // What the one attempt got, as its error says.
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(
        e.class(),
        Some(resilience_runtime::Class::Status(503)),
        "{e}"
    );
    assert_eq!(down.count(), 1, "the retry was never sent");
    let b = budget();
    assert_eq!((b.withdrawals, b.available), (0, 1), "{b:?}");
    let m =
        resilience_runtime::metrics::policy("stale_pool_budget::woken_past_its_deadline").unwrap();
    assert_eq!(m.retries, 0, "{m:?}");
    assert_eq!(
        (m.failed_without_retry, m.failed_with_retry),
        (1, 0),
        "{m:?}"
    );
}

/// As `woken_past_its_deadline`, under a budget of its own.
#[resilient(
    timeout = "500ms",
    deadline = "1s",
    max_attempts = 2,
    backoff(kind = constant, initial = "300ms", max = "300ms", jitter = none),
    budget = { name = "woken_late", ratio = 0.0, min_per_sec = 1 },
)]
async fn woken_just_before_its_deadline(
    http: &reqwest::Client,
    url: &str,
) -> Result<String, Error> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A retry woken late, with 20 ms left of its deadline (under a tenth of its 500 ms timeout):
/// not sent, as the decision would not have begun it then (it could only time out); its token
/// goes back. It went out with 20 ms to live.
#[tokio::test(start_paused = true)]
async fn a_retry_woken_with_under_a_tenth_of_its_timeout_left_is_not_sent() {
    let http = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let started = tokio::time::Instant::now();
    let call = tokio::spawn({
        let (http, url) = (http.clone(), down.url("/late"));
        async move { woken_just_before_its_deadline(&http, &url).await }
    });
    let budget = || resilience_runtime::metrics::budget("woken_late").unwrap();
    let mut taken = false;
    for _ in 0..100_000 {
        if resilience_runtime::metrics::budget("woken_late").is_some_and(|b| b.withdrawals == 1) {
            taken = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(taken, "the retry was decided: {:?}", budget());
    // The backoff (300 ms) ends at 980 ms, not at 300 ms.
    tokio::time::advance(Duration::from_millis(980) - started.elapsed()).await;
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(
        (e.kind(), e.attempts()),
        (resilience_runtime::ErrorKind::DeadlineExceeded, 1),
        "{e}"
    );
    assert_eq!(down.count(), 1, "the retry was not sent");
    let b = budget();
    assert_eq!((b.withdrawals, b.available), (0, 1), "{b:?}");
}
