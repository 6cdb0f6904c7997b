//! State the user did not name is private to its function: two modules with a function of
//! the same name, two impls with a method of the same name. And the deadline counts every wait.

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, metrics, resilient};
use tokio::time::Instant;

mod users {
    use super::*;

    #[resilient(
        timeout = "1s",
        max_attempts = 1,
        budget = false,
        breaker(
            failure_rate = 0.5,
            min_calls = 2,
            window = 2,
            open_for = "1m",
            half_open_calls = 1
        )
    )]
    pub async fn get(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
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
        bulkhead(max_concurrent = 1)
    )]
    pub async fn fetch(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
}

mod orders {
    use super::*;

    #[resilient(
        timeout = "1s",
        max_attempts = 1,
        budget = false,
        breaker(
            failure_rate = 0.5,
            min_calls = 2,
            window = 2,
            open_for = "1m",
            half_open_calls = 1
        )
    )]
    pub async fn get(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
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
        bulkhead(max_concurrent = 1)
    )]
    pub async fn fetch(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
}

#[tokio::test(start_paused = true)]
async fn a_breaker_without_a_name_belongs_to_its_function() {
    let c = reqwest::Client::new();
    let sick = FaultServer::start(Script::always(Action::status(503))).await;
    let healthy = FaultServer::start(Script::always(Action::ok())).await;
    for _ in 0..2 {
        users::get(&c, &sick.url("/")).await.unwrap_err();
    }
    let e = users::get(&c, &sick.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    for _ in 0..5 {
        assert_eq!(orders::get(&c, &healthy.url("/")).await.unwrap(), 200);
    }
    // Both listed, each under its own path.
    assert!(metrics::breaker("isolation::users::get").unwrap().opened >= 1);
    assert_eq!(
        metrics::breaker("isolation::orders::get").unwrap().opened,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_without_a_name_belongs_to_its_function() {
    let c = reqwest::Client::new();
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let healthy = FaultServer::start(Script::always(Action::ok())).await;
    let holder = {
        let (c, url) = (c.clone(), stalled.url("/"));
        tokio::spawn(async move { users::fetch(&c, &url).await })
    };
    // Let the holder take its slot and send.
    assert!(
        stalled.wait_for(1).await >= 1,
        "the first request reached the server"
    );
    let e = users::fetch(&c, &healthy.url("/")).await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::BulkheadFull,
        "users::fetch holds its one slot"
    );
    for _ in 0..5 {
        assert_eq!(orders::fetch(&c, &healthy.url("/")).await.unwrap(), 200);
    }
    holder.await.unwrap().unwrap_err();
}

struct Primary;
struct Fallback;

impl Primary {
    #[resilient(timeout = "1s", max_attempts = 1)]
    async fn lookup(&self, c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
}

impl Fallback {
    #[resilient(timeout = "1s", max_attempts = 1)]
    async fn lookup(&self, c: &reqwest::Client, url: &str) -> Result<u16, Error> {
        Ok(c.get(url)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
}

#[tokio::test(start_paused = true)]
async fn methods_of_the_same_name_keep_their_own_metrics() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    Primary.lookup(&c, &server.url("/")).await.unwrap();
    Primary.lookup(&c, &server.url("/")).await.unwrap();
    Fallback.lookup(&c, &server.url("/")).await.unwrap();
    let p = metrics::policy("isolation::Primary::lookup").expect("Primary's own entry");
    let f = metrics::policy("isolation::Fallback::lookup").expect("Fallback's own entry");
    assert_eq!(p.successful_without_retry, 2);
    assert_eq!(f.successful_without_retry, 1);
    // Their default budgets are their own too: listed under each path.
    assert!(metrics::budget("isolation::Primary::lookup").is_some());
    assert!(metrics::budget("isolation::Fallback::lookup").is_some());
}

#[resilient(
    timeout = "200ms",
    deadline = "200ms",
    max_attempts = 1,
    budget = false,
    bulkhead(name = "isolation-narrow", max_concurrent = 1, max_wait = "1s")
)]
async fn narrow(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Holds the same named bulkhead's one slot for up to 5 s.
#[resilient(
    timeout = "5s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    bulkhead(name = "isolation-narrow", max_concurrent = 1, max_wait = "1s")
)]
async fn narrow_holder(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn the_wait_for_a_bulkhead_slot_counts_against_the_deadline() {
    let c = reqwest::Client::new();
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let healthy = FaultServer::start(Script::always(Action::ok())).await;
    let holder = {
        let (c, url) = (c.clone(), stalled.url("/"));
        tokio::spawn(async move { narrow_holder(&c, &url).await })
    };
    assert!(
        stalled.wait_for(1).await >= 1,
        "the first request reached the server"
    );
    let started = Instant::now();
    let e = narrow(&c, &healthy.url("/")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    assert!(took <= Duration::from_millis(200), "overshot: {took:?}");
    assert_eq!(e.attempts(), 0);
    // Refused before any attempt ran: nothing was sent.
    assert!(e.is_rejected(), "{e}");
    assert_eq!(healthy.count(), 0);
    holder.await.unwrap().unwrap_err();
}

/// A parameter under `#[cfg]` is cloned per attempt only where it exists.
#[resilient(timeout = "1s", budget = false)]
async fn with_cfg_param(
    c: &reqwest::Client,
    url: String,
    #[cfg(any())] trace_id: String,
    #[cfg(test)] tag: String,
) -> Result<u16, Error> {
    Ok(c.get(format!("{url}?tag={tag}"))
        .send()
        .await?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_cfg_parameter_compiles_and_retries() {
    let server = FaultServer::start(vec![Action::reset(), Action::ok()]).await;
    let c = reqwest::Client::new();
    assert_eq!(
        with_cfg_param(&c, server.url("/"), "t".into())
            .await
            .unwrap(),
        200
    );
    assert_eq!(server.count(), 2);
}

/// A retried function whose bulkhead is full.
#[resilient(
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "1ms", max = "1ms"),
    bulkhead(max_concurrent = 1, max_wait = "0ms")
)]
async fn crowded(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A call its full bulkhead refuses ends there, counted once: no attempt runs, nothing is
/// retried, and the function's counters have it as refused by its bulkhead, not also as a
/// failed call.
#[tokio::test(start_paused = true)]
async fn a_call_refused_by_its_bulkhead_runs_no_attempt_and_is_counted_once() {
    let c = reqwest::Client::new();
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let healthy = FaultServer::start(Script::always(Action::ok())).await;
    let holder = {
        let (c, url) = (c.clone(), stalled.url("/"));
        tokio::spawn(async move { crowded(&c, &url).await })
    };
    assert!(
        stalled.wait_for(1).await >= 1,
        "the holder's request was sent"
    );
    let e = crowded(&c, &healthy.url("/")).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.attempts()),
        (ErrorKind::BulkheadFull, 0),
        "{e}"
    );
    assert_eq!(healthy.count(), 0, "the refused call sent nothing");
    let m = metrics::policy("isolation::crowded").expect("used");
    assert_eq!(
        (
            m.rejected_bulkhead,
            m.failed_without_retry,
            m.failed_with_retry,
            m.retries
        ),
        (1, 0, 0, 0),
        "{m:?}"
    );
    holder.abort();
}

/// One slot of an adaptive concurrency limit that stays at one, waited for up to 500 ms.
#[resilient(
    timeout = "1s",
    deadline = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit(initial = 1, min = 1, max = 1, latency = "500ms", max_wait = "500ms")
)]
async fn one_limited_slot(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The wait for a concurrency-limit slot counts against the deadline, as a bulkhead's does:
/// 200 ms waited, the attempt gets the 800 ms left, and the call ends 1 s after it began.
#[tokio::test(start_paused = true)]
async fn the_wait_for_a_concurrency_limit_slot_counts_against_the_deadline() {
    let c = reqwest::Client::new();
    let slow = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(200)),
    ))
    .await;
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let holder = {
        let (c, url) = (c.clone(), slow.url("/"));
        tokio::spawn(async move { one_limited_slot(&c, &url).await })
    };
    assert!(slow.wait_for(1).await >= 1, "the holder's request arrived");
    let started = Instant::now();
    let e = one_limited_slot(&c, &stalled.url("/")).await.unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(started.elapsed(), Duration::from_secs(1), "{e}");
    assert_eq!(stalled.count(), 1);
    assert_eq!(holder.await.unwrap().unwrap(), 200);
}

#[resilient(
    method = GET,
    timeout = "5s",
    max_attempts = 1,
    budget = false,
    bulkhead = { name = "given_back", max_concurrent = 1, max_wait = "0ms" },
)]
async fn one_slot(c: &reqwest::Client, url: &str, panic: bool) -> Result<u16, Error> {
    let status = c.get(url).send().await?.status().as_u16();
    if panic {
        panic!("the body panicked after its request");
    }
    Ok(status)
}

#[resilient(
    method = GET,
    timeout = "5s",
    max_attempts = 1,
    budget = false,
    concurrency_limit = { name = "given_back", latency = "1s", initial = 1, min = 1, max = 1 },
)]
async fn one_limited(c: &reqwest::Client, url: &str, panic: bool) -> Result<u16, Error> {
    let status = c.get(url).send().await?.status().as_u16();
    if panic {
        panic!("the body panicked after its request");
    }
    Ok(status)
}

/// A bulkhead's or a concurrency limit's only slot is given back when its call's caller stops
/// waiting (a timeout of its own) and when the body panics: the next call gets it, and the
/// gauges read none in flight.
#[tokio::test(start_paused = true)]
async fn a_slot_is_given_back_when_the_caller_gives_up_or_the_body_panics() {
    let c = reqwest::Client::new();
    let slow = FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(2)))).await;
    let fast = FaultServer::start(Script::always(Action::ok())).await;
    // Given up on by its caller while it holds the slot.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        one_slot(&c, &slow.url("/"), false),
    )
    .await;
    assert!(gave_up.is_err());
    assert_eq!(one_slot(&c, &fast.url("/"), false).await.unwrap(), 200);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        one_limited(&c, &slow.url("/"), false),
    )
    .await;
    assert!(gave_up.is_err());
    assert_eq!(one_limited(&c, &fast.url("/"), false).await.unwrap(), 200);
    // Unwound by a panic while it holds the slot.
    let (c2, url) = (c.clone(), fast.url("/"));
    let panicked = tokio::spawn(async move { one_slot(&c2, &url, true).await }).await;
    assert!(panicked.unwrap_err().is_panic());
    assert_eq!(one_slot(&c, &fast.url("/"), false).await.unwrap(), 200);
    let (c2, url) = (c.clone(), fast.url("/"));
    let panicked = tokio::spawn(async move { one_limited(&c2, &url, true).await }).await;
    assert!(panicked.unwrap_err().is_panic());
    assert_eq!(one_limited(&c, &fast.url("/"), false).await.unwrap(), 200);
    let bulkhead = resilience_runtime::metrics::bulkhead("given_back").unwrap();
    assert_eq!(bulkhead.in_flight, 0, "{bulkhead:?}");
    let limit = resilience_runtime::metrics::concurrency_limit("given_back").unwrap();
    assert_eq!(limit.in_flight, 0, "{limit:?}");
}

#[resilient(
    method = GET,
    timeout = "5s",
    max_attempts = 1,
    budget = false,
    bulkhead = { name = "waited_for", max_concurrent = 1, max_wait = "3s" },
)]
async fn one_slot_waited_for(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(
    method = GET,
    timeout = "5s",
    max_attempts = 1,
    budget = false,
    concurrency_limit = { name = "waited_for", latency = "1s", initial = 1, min = 1, max = 1, max_wait = "3s" },
)]
async fn one_limited_waited_for(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// The same with a wait for the slot (`max_wait`, a queue): a call given up on while it waits
/// for the slot leaves the queue, and one given up on while it holds the slot gives it back;
/// the next call gets it at once, and the gauges read none in flight.
#[tokio::test(start_paused = true)]
async fn a_waited_for_slot_is_given_back_by_callers_that_give_up() {
    let c = reqwest::Client::new();
    let slow = FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(2)))).await;
    let fast = FaultServer::start(Script::always(Action::ok())).await;
    for limited in [false, true] {
        let call = |url: String| {
            let c = c.clone();
            async move {
                if limited {
                    one_limited_waited_for(&c, &url).await
                } else {
                    one_slot_waited_for(&c, &url).await
                }
            }
        };
        // One holds the slot, one waits for it; both callers give up at 100 ms.
        let holder = tokio::time::timeout(Duration::from_millis(100), call(slow.url("/")));
        let waiter = tokio::time::timeout(Duration::from_millis(100), call(fast.url("/")));
        let (held, waited) = tokio::join!(holder, waiter);
        assert!(held.is_err() && waited.is_err(), "{limited}");
        let t = Instant::now();
        assert_eq!(call(fast.url("/")).await.unwrap(), 200, "{limited}");
        assert_eq!(t.elapsed(), Duration::ZERO, "{limited}: no wait");
    }
    assert_eq!(fast.count(), 2, "the waiters sent nothing");
    let bulkhead = resilience_runtime::metrics::bulkhead("waited_for").unwrap();
    assert_eq!(bulkhead.in_flight, 0, "{bulkhead:?}");
    let limit = resilience_runtime::metrics::concurrency_limit("waited_for").unwrap();
    assert_eq!(limit.in_flight, 0, "{limit:?}");
}
