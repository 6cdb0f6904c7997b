//! Breakers that see time and slowness, through real sockets: a slow-call rate opens the
//! breaker on answers that all succeed, slowly (and not on fast ones); a time-based window
//! forgets failures older than `window_for` (where a count window keeps them).

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, resilient};

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        failure_rate = 0.5,
        min_calls = 4,
        window = 4,
        open_for = "1m",
        half_open_calls = 1,
        slow_call_duration = "200ms",
        slow_call_rate = 0.5
    )
)]
async fn watched(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn slow_successes_open_the_breaker() {
    let c = reqwest::Client::new();
    // The control first: answers in 100 ms are not slow; eight calls, the breaker stays closed.
    let fast = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(100)),
    ))
    .await;
    for _ in 0..8 {
        assert_eq!(watched(&c, &fast.url("/")).await.unwrap(), 200);
    }
    // 300 ms answers: every call succeeds, and each is slow. Two slow in the last four is
    // half: open.
    let slow = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(300)),
    ))
    .await;
    assert_eq!(watched(&c, &slow.url("/")).await.unwrap(), 200);
    assert_eq!(watched(&c, &slow.url("/")).await.unwrap(), 200);
    let e = watched(&c, &slow.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(slow.count(), 2, "the open breaker sent nothing");
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        failure_rate = 0.5,
        min_calls = 3,
        window_for = "10s",
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn by_time(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        failure_rate = 0.5,
        min_calls = 3,
        window = 20,
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn by_count(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_failures() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let url = server.url("/");
    for time_based in [true, false] {
        let c = &c;
        let call = |url: &str| {
            let url = url.to_owned();
            async move {
                if time_based {
                    by_time(c, &url).await
                } else {
                    by_count(c, &url).await
                }
            }
        };
        let mut kinds = Vec::new();
        for i in 0..5 {
            if i == 2 {
                // Two failures, then a quiet 11 s.
                tokio::time::sleep(Duration::from_secs(11)).await;
            }
            kinds.push(call(&url).await.unwrap_err().kind());
        }
        kinds.push(call(&url).await.unwrap_err().kind());
        let opened_at = kinds.iter().position(|k| *k == ErrorKind::CircuitOpen);
        if time_based {
            // The first two left the window: it takes three fresh failures.
            assert_eq!(opened_at, Some(5), "{kinds:?}");
        } else {
            // The count window still holds them: the third failure opens it.
            assert_eq!(opened_at, Some(3), "{kinds:?}");
        }
    }
}
