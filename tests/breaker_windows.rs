//! Breakers that see time and slowness, through real sockets: a slow-call rate opens the
//! breaker on answers that all succeed, slowly (and not on fast ones); a time-based window
//! forgets failures older than `window_for` (where a count window keeps them); calls dropped
//! by callers more impatient than the policy still count as slow; a throttling dependency
//! (429) does not open it.

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::breaker::BreakerState;
use resilience_runtime::{Error, ErrorKind, metrics, resilient};

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

#[resilient(
    timeout = "10s",
    deadline = "20s",
    max_attempts = 1,
    budget = false,
    breaker(
        name = "hung_behind_impatient_callers",
        failure_rate = 0.5,
        min_calls = 4,
        window = 4,
        open_for = "1m",
        half_open_calls = 1,
        slow_call_duration = "1s",
        slow_call_rate = 0.5
    ),
    concurrency_limit(
        name = "hung_behind_impatient_callers",
        initial = 8,
        min = 1,
        max = 8,
        latency = "1s"
    )
)]
async fn behind_impatient_callers(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A dependency that hangs, behind callers whose own timeout (2 s: an axum `TimeoutLayer`, a
/// `select!`) is shorter than the policy's (10 s): every call is dropped by its caller, none
/// ends. An attempt already slower than `slow_call_duration` (and the limit's `latency`) when
/// it is dropped is slow however it ends: the breaker opens and the limit comes down. They
/// once heard nothing, and every caller kept paying its 2 s.
#[tokio::test(start_paused = true)]
async fn calls_their_callers_gave_up_on_still_count_as_slow() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let url = server.url("/");
    // The control: callers giving up at 500 ms, before the threshold, say nothing.
    for _ in 0..4 {
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            behind_impatient_callers(&c, &url),
        )
        .await;
        assert!(r.is_err());
    }
    let b = metrics::breaker("hung_behind_impatient_callers").expect("used");
    assert_eq!(
        (b.state, b.window_calls),
        (BreakerState::Closed, 0),
        "{b:?}"
    );
    for _ in 0..4 {
        let r =
            tokio::time::timeout(Duration::from_secs(2), behind_impatient_callers(&c, &url)).await;
        assert!(r.is_err());
    }
    let b = metrics::breaker("hung_behind_impatient_callers").expect("used");
    assert_eq!(b.state, BreakerState::Open, "{b:?}");
    let limit = metrics::concurrency_limit("hung_behind_impatient_callers").expect("used");
    assert!(limit.decreases >= 1, "{limit:?}");
    // Open: the next call is refused at once, nothing sent.
    let sent = server.count();
    let e = behind_impatient_callers(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(server.count(), sent);
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        name = "slow_probe",
        failure_rate = 0.5,
        min_calls = 2,
        window = 2,
        open_for = "1s",
        half_open_calls = 1,
        slow_call_duration = "200ms"
    )
)]
async fn probed(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A half-open breaker's probe that succeeds slowly (300 ms against `slow_call_duration =
/// "200ms"`) says the dependency is not well yet: the call gets its answer, and the breaker
/// opens again, refusing the next call without a request.
#[tokio::test(start_paused = true)]
async fn a_slow_probe_opens_the_breaker_again() {
    let server = FaultServer::start(resilience_fault_server::Script::sequence([
        Action::status(503),
        Action::status(503),
        Action::ok().after(Duration::from_millis(300)),
    ]))
    .await;
    let c = reqwest::Client::new();
    let url = server.url("/");
    for _ in 0..2 {
        probed(&c, &url).await.unwrap_err();
    }
    let b = metrics::breaker("slow_probe").expect("used");
    assert_eq!(b.state, BreakerState::Open, "{b:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(probed(&c, &url).await.unwrap(), 200, "the probe's answer");
    let b = metrics::breaker("slow_probe").expect("used");
    assert_eq!(b.state, BreakerState::Open, "{b:?}");
    let e = probed(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(server.count(), 3);
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        failure_rate = 0.5,
        min_calls = 4,
        window = 4,
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn rated(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A dependency answering 429 is up and tells this client to slow down: its `Retry-After` is
/// the wait, and the breaker does not open on it (it would refuse every caller for `open_for`).
/// The control: the same number of 503s opens it.
#[tokio::test(start_paused = true)]
async fn a_throttling_dependency_does_not_open_the_breaker() {
    let c = reqwest::Client::new();
    let throttling = FaultServer::start(Script::always(Action::status(429).retry_after(1))).await;
    for _ in 0..8 {
        let e = rated(&c, &throttling.url("/")).await.unwrap_err();
        assert_ne!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    }
    assert_eq!(throttling.count(), 8, "every call reached the dependency");
    // Nor do answers the same request gets again whatever the dependency's health (a method it
    // does not implement, a captive portal): 501, 505, 511.
    for status in [501, 505, 511] {
        let refusing = FaultServer::start(Script::always(Action::status(status))).await;
        for _ in 0..4 {
            let e = rated(&c, &refusing.url("/")).await.unwrap_err();
            assert_ne!(e.kind(), ErrorKind::CircuitOpen, "{status}: {e}");
        }
        assert_eq!(refusing.count(), 4, "{status}");
    }
    let failing = FaultServer::start(Script::always(Action::status(503))).await;
    for _ in 0..4 {
        let e = rated(&c, &failing.url("/")).await.unwrap_err();
        assert_ne!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    }
    let e = rated(&c, &failing.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(failing.count(), 4);
}

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
async fn throttled_slowly(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A 429 is not a failure, but one answered after `slow_call_duration` is a slow call: a
/// dependency that throttles slowly is slow, and its breaker opens at the slow-call rate.
#[tokio::test(start_paused = true)]
async fn slow_throttling_answers_are_slow_calls() {
    let c = reqwest::Client::new();
    let slow = FaultServer::start(Script::always(
        Action::status(429).after(Duration::from_millis(300)),
    ))
    .await;
    for _ in 0..4 {
        let e = throttled_slowly(&c, &slow.url("/")).await.unwrap_err();
        assert_ne!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    }
    let e = throttled_slowly(&c, &slow.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(slow.count(), 4);
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        name = "permanent_failures",
        failure_rate = 0.5,
        min_calls = 4,
        window = 4,
        open_for = "1h",
        half_open_calls = 1
    )
)]
async fn decoded(c: &reqwest::Client, url: &str) -> Result<u32, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .json::<u32>()
        .await?)
}

/// Only transient failures count against the breaker: a dependency that answers 404, or a
/// body the function cannot decode, is up (the caller's request or its own code is at fault),
/// and refusing every caller for `open_for` would help no one. The control: 503s open it.
#[tokio::test(start_paused = true)]
async fn permanent_failures_do_not_open_the_breaker() {
    let c = reqwest::Client::new();
    let missing = FaultServer::start(Script::always(Action::status(404))).await;
    let garbled = FaultServer::start(Script::always(Action::ok().body("not a number"))).await;
    for _ in 0..8 {
        let e = decoded(&c, &missing.url("/")).await.unwrap_err();
        assert_ne!(e.kind(), ErrorKind::CircuitOpen, "{e}");
        let e = decoded(&c, &garbled.url("/")).await.unwrap_err();
        assert_ne!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    }
    assert_eq!((missing.count(), garbled.count()), (8, 8));
    assert_eq!(
        metrics::breaker("permanent_failures").unwrap().state,
        BreakerState::Closed
    );
    let failing = FaultServer::start(Script::always(Action::status(503))).await;
    for _ in 0..4 {
        decoded(&c, &failing.url("/")).await.unwrap_err();
    }
    let e = decoded(&c, &failing.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        name = "slow_rate_default",
        failure_rate = 0.5,
        min_calls = 4,
        window = 4,
        open_for = "1m",
        half_open_calls = 1,
        slow_call_duration = "200ms"
    )
)]
async fn slow_by_default(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// `slow_call_rate` left out is 1.0: three slow calls of the last four keep the breaker
/// closed; four of four open it.
#[tokio::test(start_paused = true)]
async fn the_slow_call_rate_defaults_to_every_call() {
    let c = reqwest::Client::new();
    let slow = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(300)),
    ))
    .await;
    let fast = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(slow_by_default(&c, &fast.url("/")).await.unwrap(), 200);
    for _ in 0..3 {
        assert_eq!(slow_by_default(&c, &slow.url("/")).await.unwrap(), 200);
    }
    assert_eq!(
        metrics::breaker("slow_rate_default").unwrap().state,
        BreakerState::Closed,
        "three slow of four"
    );
    assert_eq!(slow_by_default(&c, &slow.url("/")).await.unwrap(), 200);
    let e = slow_by_default(&c, &slow.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "four slow of four: {e}");
}

#[resilient(
    timeout = "5s",
    max_attempts = 1,
    budget = false,
    rate_limit(rate = 3, per = "1h"),
    breaker(
        failure_rate = 1.0,
        min_calls = 1,
        window = 1,
        open_for = "1s",
        half_open_calls = 1
    )
)]
async fn rate_limited_probe(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// While its one probe runs, a half-open breaker refuses the other calls before they start,
/// as an open one does: they send nothing, and spend no rate-limit permit (nor a bulkhead
/// slot, nor a deposit in the retry budget). Three permits an hour: the failure that opened
/// the breaker, the probe, and the call after it closed.
#[tokio::test(start_paused = true)]
async fn calls_refused_while_half_open_spend_no_permit() {
    let server = FaultServer::start(
        Script::sequence([
            Action::status(503),
            Action::ok().after(Duration::from_millis(500)),
        ])
        .then(Action::ok()),
    )
    .await;
    let c = reqwest::Client::new();
    let url = server.url("/");
    assert_eq!(
        rate_limited_probe(&c, &url).await.unwrap_err().kind(),
        ErrorKind::Call
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probe = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { rate_limited_probe(&c, &url).await }
    });
    server.wait_for(2).await;
    for _ in 0..5 {
        let e = rate_limited_probe(&c, &url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
        assert_eq!(e.attempts(), 0);
    }
    assert_eq!(probe.await.unwrap().unwrap(), 200);
    assert_eq!(
        rate_limited_probe(&c, &url).await.unwrap(),
        200,
        "the third permit is left"
    );
    assert_eq!(server.count(), 3);
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = { name = "bw_refused_budget", ratio = 0.5, min_per_sec = 0 },
    bulkhead = { name = "bw_refused_slots", max_concurrent = 5, max_wait = "1s" },
    breaker = { name = "bw_refused", failure_rate = 1.0, min_calls = 1, window = 1, open_for = "1h", half_open_calls = 1 }
)]
async fn refused_before_admission(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A call its open breaker refuses is refused before the bulkhead and the budget: it takes no
/// slot and deposits no first attempt (a deposit would let the next storm retry more).
#[tokio::test(start_paused = true)]
async fn a_call_the_breaker_refuses_takes_no_slot_and_deposits_nothing() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let c = reqwest::Client::new();
    let url = server.url("/");
    assert_eq!(
        refused_before_admission(&c, &url).await.unwrap_err().kind(),
        ErrorKind::Call
    );
    let slots = metrics::bulkhead("bw_refused_slots").unwrap();
    let budget = metrics::budget("bw_refused_budget").unwrap();
    for _ in 0..5 {
        let e = refused_before_admission(&c, &url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
        assert_eq!(e.attempts(), 0);
    }
    let after = metrics::bulkhead("bw_refused_slots").unwrap();
    assert_eq!(after.admitted, slots.admitted, "no slot taken");
    assert_eq!(after.in_flight, 0);
    let after_budget = metrics::budget("bw_refused_budget").unwrap();
    assert_eq!(after_budget.deposits, budget.deposits, "nothing deposited");
    assert_eq!(server.count(), 1);
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        failure_rate = 0.5,
        min_calls = 4,
        window = 4,
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn rated_mixed(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A 429 is neither a failure nor a success: two failures, then two 429s, leave two outcomes
/// in a window that needs four (counted as successes they would make four, half of them
/// failures, and open it); two more failures then do open it.
#[tokio::test(start_paused = true)]
async fn a_429_counts_neither_way_in_the_window() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([
        Action::status(503),
        Action::status(503),
        Action::status(429).retry_after(1),
        Action::status(429).retry_after(1),
        Action::status(503),
        Action::status(503),
    ]))
    .await;
    let url = server.url("/");
    for _ in 0..5 {
        let e = rated_mixed(&c, &url).await.unwrap_err();
        assert_ne!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    }
    assert_eq!(server.count(), 5, "the breaker stayed closed");
    assert!(rated_mixed(&c, &url).await.is_err());
    let e = rated_mixed(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(server.count(), 6);
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        name = "bw_answered_probe",
        failure_rate = 0.5,
        min_calls = 2,
        window = 2,
        open_for = "10s",
        half_open_calls = 2
    )
)]
async fn looked_up(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A half-open breaker's probes answered 404 (an endpoint whose traffic is mostly lookups of
/// what is not there) show the dependency up: the breaker closes. Counted neither way, it
/// stayed half-open for good, refusing all but two calls at a time. A probe answered 429
/// (slow down) is not taken for one that shows it up.
#[tokio::test(start_paused = true)]
async fn probes_the_dependency_answered_with_a_4xx_close_the_breaker() {
    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    for _ in 0..2 {
        looked_up(&c, &down.url("/")).await.unwrap_err();
    }
    let state = || metrics::breaker("bw_answered_probe").unwrap().state;
    assert_eq!(state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(11)).await;

    let throttling = FaultServer::start(Script::always(Action::status(429))).await;
    for _ in 0..3 {
        let e = looked_up(&c, &throttling.url("/")).await.unwrap_err();
        assert_eq!(e.http_status(), Some(429), "{e}");
    }
    assert_eq!(state(), BreakerState::HalfOpen, "429s close nothing");
    // Nor does a 5xx no breaker counts (a 501: the same answer to the same request).
    let unimplemented = FaultServer::start(Script::always(Action::status(501))).await;
    for _ in 0..3 {
        looked_up(&c, &unimplemented.url("/")).await.unwrap_err();
    }
    assert_eq!(state(), BreakerState::HalfOpen, "501s close nothing");

    let missing = FaultServer::start(Script::always(Action::status(404))).await;
    for _ in 0..2 {
        let e = looked_up(&c, &missing.url("/items/7")).await.unwrap_err();
        assert_eq!(e.http_status(), Some(404), "{e}");
    }
    assert_eq!(state(), BreakerState::Closed, "two probes answered: closed");
}

#[resilient(
    method = GET,
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "bw_dropped_probe", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "10s", half_open_calls = 1 },
)]
async fn probed_then_dropped(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A half-open breaker's probe whose caller stops waiting for it (its own timeout, a client
/// that disconnected) gives its place back: the next call is the probe, and closes the
/// breaker, instead of every call being refused while a probe nobody runs holds the place.
#[tokio::test(start_paused = true)]
async fn a_probe_dropped_by_its_caller_frees_its_place() {
    let c = reqwest::Client::new();
    let failing = FaultServer::start(Script::always(Action::status(503))).await;
    for _ in 0..2 {
        probed_then_dropped(&c, &failing.url("/"))
            .await
            .unwrap_err();
    }
    let state = || {
        resilience_runtime::breakers::state("bw_dropped_probe")
            .unwrap()
            .state
    };
    assert_eq!(state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        probed_then_dropped(&c, &stalled.url("/")),
    )
    .await;
    assert!(gave_up.is_err(), "the probe was still running");
    assert_eq!(stalled.count(), 1, "the probe went out");
    let ok = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(probed_then_dropped(&c, &ok.url("/")).await.unwrap(), 200);
    assert_eq!(state(), BreakerState::Closed);
}
