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

// The attempt's timer is armed only when the body first waits; its time limit still counts
// from the attempt's start, and it still fires when the body uses up the task's budget.

#[resilient(method = GET, timeout = "100ms", deadline = "10s", max_attempts = 1, budget = false)]
async fn busy_before_waiting() -> Result<u64, Error> {
    // Runs for 150 ms before it first waits (the clock moved by hand), then never answers.
    tokio::time::advance(Duration::from_millis(150)).await;
    std::future::pending::<()>().await;
    Ok(1)
}

#[tokio::test(start_paused = true)]
async fn the_attempt_limit_counts_from_the_attempt_start_not_from_its_first_wait() {
    let started = Instant::now();
    let e = busy_before_waiting().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
    assert_eq!(e.attempts(), 1);
    // Timed out as soon as the body first waited, 50 ms past its limit: not 100 ms after.
    assert_eq!(started.elapsed(), Duration::from_millis(150));
}

#[resilient(method = GET, timeout = "50ms", deadline = "10s", max_attempts = 1, budget = false)]
async fn spends_its_budget() -> Result<u64, Error> {
    // Always ready to go on, and yields only when the task's cooperative budget runs out.
    loop {
        tokio::task::coop::consume_budget().await;
    }
}

#[tokio::test]
async fn a_body_that_uses_up_the_task_budget_still_times_out() {
    let r = tokio::time::timeout(Duration::from_secs(10), spends_its_budget())
        .await
        .expect("the attempt's 50 ms limit should have ended the call");
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
}

/// The same body under a hedge: the round's timers are polled outside the budget too.
#[resilient(method = GET, timeout = "50ms", deadline = "10s", max_attempts = 1, budget = false, hedge(delay = "10ms"))]
async fn spends_its_budget_hedged() -> Result<u64, Error> {
    loop {
        tokio::task::coop::consume_budget().await;
    }
}

#[tokio::test]
async fn a_hedged_body_that_uses_up_the_task_budget_still_times_out() {
    let r = tokio::time::timeout(Duration::from_secs(10), spends_its_budget_hedged())
        .await
        .expect("the attempt's 50 ms limit should have ended the call");
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
}

// The backoff is waited out by the next attempt itself, before its body is first polled: the
// body of a retry starts once the delay has passed, and not at all when the caller gave up
// during the delay.

static STARTS: std::sync::Mutex<Vec<Instant>> = std::sync::Mutex::new(Vec::new());

#[resilient(method = GET, timeout = "1s", deadline = "10s", max_attempts = 3, backoff(initial = "1s", max = "1s", jitter = none), budget = false)]
async fn backs_off(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    STARTS.lock().unwrap().push(Instant::now());
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn a_retry_starts_after_its_backoff_and_never_when_the_caller_gave_up_during_it() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let c = reqwest::Client::new();
    let url = server.url("/");

    // The caller gives up 500 ms into the 1 s backoff after the first 503.
    let gave_up = tokio::time::timeout(Duration::from_millis(500), backs_off(&c, &url)).await;
    assert!(gave_up.is_err(), "the call should still be backing off");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        server.count(),
        1,
        "a retry was sent after the caller gave up"
    );
    assert_eq!(STARTS.lock().unwrap().len(), 1, "a retry's body ran");

    // Awaited to the end: three attempts, each body starting a full backoff after the last.
    STARTS.lock().unwrap().clear();
    let started = Instant::now();
    let e = backs_off(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Call, "{e}");
    assert_eq!(e.attempts(), 3);
    assert_eq!(server.count(), 4);
    let starts = STARTS.lock().unwrap().clone();
    assert_eq!(starts.len(), 3);
    for pair in starts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_secs(1) && gap < Duration::from_millis(1100),
            "a retry's body started {gap:?} after the previous one"
        );
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    backoff(initial = "1ms", max = "1ms"),
    breaker = { name = "out_of_time", failure_rate = 0.5, min_calls = 1, window = 4, open_for = "1h", half_open_calls = 1 },
    concurrency_limit = { name = "out_of_time", latency = "500ms", initial = 8, min = 1 },
)]
async fn guarded(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    bulkhead(max_concurrent = 1)
)]
async fn one_slot(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    concurrency_limit = { name = "no_time_for_a_slot", latency = "500ms", initial = 1, min = 1, max = 1 },
)]
async fn one_adaptive_slot(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A call handed no time at all while the bulkhead (or adaptive limit) is full ends
/// `DeadlineExceeded`, as it would with a slot free, not `BulkheadFull`: counted as the limit's
/// refusal, it would have an operator raise a limit the call could not have used.
#[tokio::test(start_paused = true)]
async fn a_call_with_no_time_left_is_no_refusal_of_a_full_bulkhead() {
    use resilience_runtime::{Inbound, with_inbound};
    let server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(500)),
    ))
    .await;
    let c = reqwest::Client::new();
    let url = server.url("/");
    let no_time = || Inbound::NONE.time_left(Duration::ZERO);
    let (held, refused) = tokio::join!(one_slot(&c, &url), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        with_inbound(no_time(), one_slot(&c, &url)).await
    });
    assert_eq!(held.unwrap(), 200);
    let e = refused.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    let m = resilience_runtime::metrics::policy("deadline::one_slot").unwrap();
    assert_eq!((m.rejected_bulkhead, m.failed_without_retry), (0, 1));
    // With the slot free, none is taken for it either.
    let e = with_inbound(no_time(), one_slot(&c, &url))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    let slots = resilience_runtime::metrics::bulkhead("deadline::one_slot").unwrap();
    assert_eq!(slots.admitted, 1, "{slots:?}");

    let (held, refused) = tokio::join!(one_adaptive_slot(&c, &url), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        with_inbound(no_time(), one_adaptive_slot(&c, &url)).await
    });
    assert_eq!(held.unwrap(), 200);
    let e = refused.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
}

/// A call handed no time at all (a caller's `X-Timeout-Ms: 0`, or a request that waited in the
/// server's queue until its time was gone) sends nothing: it ends `DeadlineExceeded` with no
/// attempt, and neither the breaker nor the concurrency limit hears of it. Counted as the
/// dependency's failure, a caller could open a healthy dependency's breaker (or bring its
/// limit down to `min`) by sending that header.
#[tokio::test(start_paused = true)]
async fn a_call_with_no_time_left_is_no_failure_of_the_dependency() {
    use resilience_runtime::{Inbound, with_inbound};
    let server = FaultServer::start(Script::always(Action::ok().body("fine"))).await;
    let c = reqwest::Client::new();
    for _ in 0..5 {
        let e = with_inbound(
            Inbound::NONE.time_left(Duration::ZERO),
            guarded(&c, &server.url("/")),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
        assert_eq!(e.attempts(), 0, "{e}");
    }
    assert_eq!(server.count(), 0);
    let breaker = resilience_runtime::metrics::breaker("out_of_time").expect("used");
    assert_eq!(
        breaker.state,
        resilience_runtime::breaker::BreakerState::Closed,
        "{breaker:?}"
    );
    assert_eq!(breaker.window_calls, 0, "{breaker:?}");
    let limit = resilience_runtime::metrics::concurrency_limit("out_of_time").expect("used");
    assert_eq!(limit.decreases, 0, "{limit:?}");
    // The dependency is called as usual.
    assert_eq!(guarded(&c, &server.url("/")).await.unwrap(), "fine");
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    breaker = { name = "nearly_out_of_time", failure_rate = 0.5, min_calls = 1, window = 4, open_for = "1h", half_open_calls = 1 },
    concurrency_limit = { name = "nearly_out_of_time", latency = "500ms", initial = 8, min = 1 },
)]
async fn guarded_briefly(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A call handed a millisecond (a caller's `X-Timeout-Ms: 1`: the header this library's own
/// client never sends below 1) times out against a healthy dependency that answers in 5 ms:
/// its attempt was cut short by the caller's deadline, which says nothing of the dependency.
/// Counted as its failure, one header value would open the breaker for an hour and bring the
/// concurrency limit down.
#[tokio::test(start_paused = true)]
async fn a_call_with_a_millisecond_left_is_no_failure_of_the_dependency() {
    use resilience_runtime::{Inbound, with_inbound};
    let server = FaultServer::start(Script::always(
        Action::ok().body("fine").after(Duration::from_millis(5)),
    ))
    .await;
    let c = reqwest::Client::new();
    for _ in 0..5 {
        let e = with_inbound(
            Inbound::NONE.time_left(Duration::from_millis(1)),
            guarded_briefly(&c, &server.url("/")),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
        assert_eq!(e.attempts(), 1, "{e}");
    }
    let breaker = resilience_runtime::metrics::breaker("nearly_out_of_time").expect("used");
    assert_eq!(
        breaker.state,
        resilience_runtime::breaker::BreakerState::Closed,
        "{breaker:?}"
    );
    let limit = resilience_runtime::metrics::concurrency_limit("nearly_out_of_time").expect("used");
    assert_eq!(limit.decreases, 0, "{limit:?}");
    // The dependency is called as usual.
    assert_eq!(guarded_briefly(&c, &server.url("/")).await.unwrap(), "fine");
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    breaker = { name = "told_out_of_time", failure_rate = 0.5, min_calls = 1, window = 4, open_for = "1h", half_open_calls = 1 },
    concurrency_limit = { name = "told_out_of_time", latency = "500ms", initial = 8, min = 1 },
)]
async fn guarded_downstream(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    breaker = { name = "overloaded_in_a_hurry", failure_rate = 0.5, min_calls = 1, window = 4, open_for = "1h", half_open_calls = 1 },
)]
async fn guarded_overloaded(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    timeout = "10s",
    deadline = "30s",
    max_attempts = 1,
    breaker = { name = "own_timeout_in_a_hurry", failure_rate = 0.5, min_calls = 1, window = 4, open_for = "1h", half_open_calls = 1 },
)]
async fn guarded_by_its_own_timeout(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .timeout(Duration::from_millis(300))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// An attempt cut to 800 ms of its 10 s by a caller, whose body's own request timeout (300 ms)
/// fires against a hung dependency: the dependency hung for the whole of the time the body
/// gave it, and the breaker counts it (only the runtime's timeout of a cut attempt says nothing).
#[tokio::test(start_paused = true)]
async fn a_bodys_own_timeout_in_a_cut_attempt_counts_for_the_breaker() {
    use resilience_runtime::{Inbound, with_inbound};
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let c = reqwest::Client::new();
    let e = with_inbound(
        Inbound::NONE.time_left(Duration::from_millis(800)),
        guarded_by_its_own_timeout(&c, &server.url("/")),
    )
    .await
    .unwrap_err();
    assert_ne!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    let breaker = resilience_runtime::metrics::breaker("own_timeout_in_a_hurry").expect("used");
    assert_eq!(
        breaker.state,
        resilience_runtime::breaker::BreakerState::Open,
        "{breaker:?}"
    );
}

/// A dependency that honours the deadline it is handed (a service of this library behind
/// `ContextLayer`) answers a call cut to 50 ms of its 1 s timeout with a prompt 504 ("I ran out
/// of the time you gave me"): as the timeout it would otherwise have been, it says nothing of
/// the dependency, and a caller's short `X-Timeout-Ms` does not open the breaker or lower the
/// limit. A 503 in the same hurry is the dependency's own answer, and counts.
#[tokio::test(start_paused = true)]
async fn a_prompt_504_to_a_call_cut_short_is_no_failure_of_the_dependency() {
    use resilience_runtime::{Inbound, with_inbound};
    let honours = |busy: u16| {
        Script::dynamic(move |seen| {
            let left: u64 = seen
                .header("x-timeout-ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX);
            if left < 100 {
                Action::status(busy)
            } else {
                Action::ok().body("fine")
            }
        })
    };
    let server = FaultServer::start(honours(504)).await;
    let c = reqwest::Client::new();
    for _ in 0..5 {
        let e = with_inbound(
            Inbound::NONE.time_left(Duration::from_millis(50)),
            guarded_downstream(&c, &server.url("/")),
        )
        .await
        .unwrap_err();
        assert_eq!(e.http_status(), Some(504), "{e}");
    }
    let breaker = resilience_runtime::metrics::breaker("told_out_of_time").expect("used");
    assert_eq!(
        breaker.state,
        resilience_runtime::breaker::BreakerState::Closed,
        "{breaker:?}"
    );
    let limit = resilience_runtime::metrics::concurrency_limit("told_out_of_time").expect("used");
    assert_eq!(limit.decreases, 0, "{limit:?}");
    assert_eq!(
        guarded_downstream(&c, &server.url("/")).await.unwrap(),
        "fine"
    );

    let server = FaultServer::start(honours(503)).await;
    let _ = with_inbound(
        Inbound::NONE.time_left(Duration::from_millis(50)),
        guarded_overloaded(&c, &server.url("/")),
    )
    .await
    .unwrap_err();
    let breaker = resilience_runtime::metrics::breaker("overloaded_in_a_hurry").expect("used");
    assert_eq!(
        breaker.state,
        resilience_runtime::breaker::BreakerState::Open,
        "{breaker:?}"
    );
}

#[resilient(
    timeout = "10s",
    deadline = "30s",
    max_attempts = 1,
    breaker = { name = "hung_behind_deadlines", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1h", half_open_calls = 1 },
)]
async fn guarded_hung(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// Callers that pass on a deadline of 3 s (a service behind `ContextLayer`) to a dependency
/// that hangs: each attempt is cut to 3 s of its 10, long enough to say the dependency did not
/// answer, so the breaker opens (only limits cut under a tenth of the timeout say nothing).
#[tokio::test(start_paused = true)]
async fn a_hung_dependency_behind_callers_deadlines_opens_the_breaker() {
    use resilience_runtime::{Inbound, with_inbound};
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let c = reqwest::Client::new();
    for _ in 0..2 {
        let e = with_inbound(
            Inbound::NONE.time_left(Duration::from_secs(3)),
            guarded_hung(&c, &server.url("/")),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    }
    let breaker = resilience_runtime::metrics::breaker("hung_behind_deadlines").expect("used");
    assert_eq!(
        breaker.state,
        resilience_runtime::breaker::BreakerState::Open,
        "{breaker:?}"
    );
}

#[resilient(timeout = "1s", deadline = "1080ms", max_attempts = 3, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn nearly_spent(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A retry that would begin with less than a tenth of its `timeout` left (here 70 ms of a
/// 1 s timeout) is not sent: it could only time out. The call ends on the failure that
/// happened, the first attempt's timeout, after one request.
#[tokio::test(start_paused = true)]
async fn a_retry_with_under_a_tenth_of_its_timeout_left_is_not_sent() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let e = nearly_spent(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
    assert_eq!((e.attempts(), server.count()), (1, 1));

    // With a tenth left, it is.
    let server = FaultServer::start(Script::sequence([Action::stall(), Action::ok()])).await;
    let answered = enough_left(&reqwest::Client::new(), &server.url("/")).await;
    assert!(answered.is_ok(), "{answered:?}");
    assert_eq!(server.count(), 2);
}

#[resilient(timeout = "1s", deadline = "1110ms", max_attempts = 3, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn enough_left(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "10s", deadline = "30s", max_attempts = 3, backoff(initial = "100ms", max = "100ms", jitter = none), budget = false)]
async fn handed_little(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// The tenth is of the time one attempt could be given at the call's start: a call handed
/// 800 ms by its caller (`X-Timeout-Ms`, an enclosing call) with a 10 s `timeout` still
/// retries a 503 answered at once, with 700 ms left (a tenth of 10 s would refuse it).
#[tokio::test(start_paused = true)]
async fn a_call_handed_less_than_its_timeout_measures_the_tenth_against_what_it_had() {
    use resilience_runtime::{Inbound, with_inbound};
    let server = FaultServer::start(Script::sequence([
        Action::status(503),
        Action::ok().body("fine"),
    ]))
    .await;
    let got = with_inbound(
        Inbound::NONE.time_left(Duration::from_millis(800)),
        handed_little(&reqwest::Client::new(), &server.url("/")),
    )
    .await;
    assert_eq!(got.unwrap(), "fine");
    assert_eq!(server.count(), 2);
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    breaker = { name = "cut_by_outer_attempts", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1h", half_open_calls = 1 },
)]
async fn guarded_inner(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// An outer call whose attempts last 50 ms, a twentieth of the inner call's timeout.
#[resilient(timeout = "50ms", deadline = "10s", max_attempts = 1, budget = false)]
async fn hurried_outer(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    guarded_inner(c, url).await
}

/// The same rule for "an outer attempt ending": a nested call whose attempt an outer call's
/// 50 ms attempt cut short (under a tenth of its own 1 s timeout) says nothing of the
/// dependency, and its breaker stays closed; the same dependency hanging through the inner
/// call's own timeout opens it (the control).
#[tokio::test(start_paused = true)]
async fn a_nested_attempt_cut_short_by_its_outer_attempt_does_not_open_its_breaker() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::stall())).await;
    for _ in 0..4 {
        let e = hurried_outer(&c, &server.url("/")).await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
    }
    assert_eq!(server.count(), 4, "every inner attempt was sent");
    let state = || {
        resilience_runtime::metrics::breaker("cut_by_outer_attempts")
            .expect("used")
            .state
    };
    assert_eq!(state(), resilience_runtime::breaker::BreakerState::Closed);
    for _ in 0..2 {
        let e = guarded_inner(&c, &server.url("/")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
    }
    assert_eq!(state(), resilience_runtime::breaker::BreakerState::Open);
}

#[resilient(
    method = POST,
    timeout = "1s",
    deadline = "1030ms",
    max_attempts = 3,
    backoff(initial = "1ms", max = "1ms", jitter = none),
    budget = false,
    idempotency_key = auto
)]
async fn keyed_near_its_deadline(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url)
        .body("order")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// "No retry begins with less than a tenth of its `timeout` left … asking again for a keyed
/// replay is exempt": answered "still in progress" (409) at 870 ms of a 1,030 ms deadline, the
/// ask waits its floor of 100 ms and would begin with 60 ms left (under a tenth of the 1 s
/// timeout); it is still made, and gets the replay.
#[tokio::test(start_paused = true)]
async fn asking_again_for_a_keyed_replay_is_exempt_from_the_tenth_left_rule() {
    let server = FaultServer::start(vec![
        Action::status(409)
            .header("Retry-After", "0")
            .after(Duration::from_millis(870)),
        Action::ok().body("placed"),
    ])
    .await;
    let started = Instant::now();
    let r = keyed_near_its_deadline(&reqwest::Client::new(), &server.url("/orders")).await;
    assert_eq!(r.unwrap(), "placed");
    assert_eq!(server.count(), 2);
    assert!(started.elapsed() < Duration::from_millis(1030));
    let keys: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.idempotency_key().map(str::to_owned))
        .collect();
    assert!(keys[0].is_some() && keys[0] == keys[1], "{keys:?}");
}

#[resilient(method = GET, timeout = "1s", deadline = "1s", max_attempts = 1, budget = false, bulkhead(max_concurrent = 1, max_wait = "1s"))]
async fn one_slot_waiting(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A wait for a bulkhead slot ends with a tenth of the timeout left for the first attempt: a
/// slot freed at 950 ms of a 1 s deadline comes too late, and the call ends `DeadlineExceeded`
/// at 900 ms with nothing sent (it once sent a request with 50 ms to live).
#[tokio::test(start_paused = true)]
async fn a_slot_that_would_leave_no_time_to_send_is_not_waited_for() {
    let c = reqwest::Client::new();
    let slow = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(950)),
    ))
    .await;
    let fast = FaultServer::start(Script::always(Action::ok())).await;
    let holder = tokio::spawn({
        let (c, url) = (c.clone(), slow.url("/"));
        async move { one_slot_waiting(&c, &url).await }
    });
    while slow.count() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t = Instant::now();
    let e = one_slot_waiting(&c, &fast.url("/")).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.attempts(), fast.count()),
        (ErrorKind::DeadlineExceeded, 0, 0),
        "{e}"
    );
    assert!(
        t.elapsed() <= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(holder.await.unwrap().unwrap(), 200);
}

#[resilient(
    method = GET,
    timeout = "1s",
    deadline = "1s",
    max_attempts = 1,
    budget = false,
    bulkhead(name = "late_grant", max_concurrent = 1, max_wait = "1s"),
    rate_limit(name = "late_grant", rate = 1, per = "1h", max_wait = "0ms")
)]
async fn late_grant(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// The same wait, its slot handed over after the wait's end but before the waiting call ran
/// again (a busy executor): refused all the same, `DeadlineExceeded` with nothing sent, the
/// slot given back and the rate limit not passed by (it once admitted the call, past its
/// rate limit, to send with 50 ms to live).
#[tokio::test(start_paused = true)]
async fn a_slot_handed_over_after_the_wait_ended_is_not_taken() {
    use std::future::Future as _;
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let url = server.url("/");
    // Takes the slot and the hour's one permit, and holds the slot while its request stalls.
    let mut holder = Box::pin(late_grant(&c, &url));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while server.count() == 0 {
        assert!(holder.as_mut().poll(&mut cx).is_pending());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t = Instant::now();
    let mut late = Box::pin(late_grant(&c, &url));
    assert!(
        late.as_mut().poll(&mut cx).is_pending(),
        "queued for the slot"
    );
    tokio::time::sleep_until(t + Duration::from_millis(950)).await;
    // The slot goes to the queued call, whose wait ended at 900 ms.
    drop(holder);
    let e = late.await.unwrap_err();
    assert_eq!(
        (e.kind(), e.attempts(), server.count()),
        (ErrorKind::DeadlineExceeded, 0, 1),
        "{e}"
    );
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    budget = { name = "out_of_time_budget", ratio = 0.5, min_per_sec = 0 },
)]
async fn budgeted(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A call handed no time at all earns no retry for the others on its budget: it sends
/// nothing (a flood of `X-Timeout-Ms: 0` requests once paid into a budget that calls to a dead
/// dependency then spent). One sent as usual does.
#[tokio::test(start_paused = true)]
async fn a_call_with_no_time_left_pays_nothing_into_the_budget() {
    use resilience_runtime::{Inbound, with_inbound};
    let server = FaultServer::start(Script::always(Action::ok().body("fine"))).await;
    let c = reqwest::Client::new();
    for _ in 0..5 {
        let e = with_inbound(
            Inbound::NONE.time_left(Duration::ZERO),
            budgeted(&c, &server.url("/")),
        )
        .await
        .unwrap_err();
        assert_eq!(e.attempts(), 0, "{e}");
    }
    let deposits =
        || resilience_runtime::metrics::budget("out_of_time_budget").map_or(0, |b| b.deposits);
    assert_eq!(deposits(), 0);
    assert_eq!(budgeted(&c, &server.url("/")).await.unwrap(), "fine");
    assert_eq!(deposits(), 1);
}
