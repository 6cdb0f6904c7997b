//! The deadline is never overshot, and a backoff that would cross it is not slept.

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, RequestBuilderExt as _, resilient};
use tokio::time::Instant;

#[resilient(timeout = "1s", deadline = "2500ms", max_attempts = 5, backoff(initial = "100ms", max = "100ms", jitter = none), budget = false)]
async fn slow(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_stalled_server_cannot_push_the_call_past_its_deadline() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let started = Instant::now();
    let e = slow(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    // 1 s attempt, 100 ms backoff, 1 s attempt, 100 ms backoff, then the 300 ms left.
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    assert_eq!(e.attempts(), 3);
    assert_eq!(server.count(), 3);
    assert!(took <= Duration::from_millis(2500), "overshot: {took:?}");
    assert!(
        took >= Duration::from_millis(2490),
        "gave up early: {took:?}"
    );
    assert_eq!(e.elapsed(), Some(took));
}

#[resilient(timeout = "1s", deadline = "2s", max_attempts = 3, backoff(initial = "1500ms", max = "1500ms", jitter = none), budget = false)]
async fn long_backoff(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_backoff_that_would_cross_the_deadline_is_not_slept() {
    let server = FaultServer::start(Script::always(
        Action::status(503).after(Duration::from_millis(600)),
    ))
    .await;
    let started = Instant::now();
    let e = long_backoff(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Call);
    assert_eq!(e.http_status(), Some(503));
    assert_eq!(server.count(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "slept in vain: {:?}",
        started.elapsed()
    );
}
