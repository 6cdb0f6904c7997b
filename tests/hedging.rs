//! Hedging through real sockets: a stalled first request, a hedge that answers, what the
//! server saw; the cap on hedges; hedges drawn from the retry budget; a keyed POST hedged with
//! its key.

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, metrics, resilient};
use tokio::time::Instant;

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    hedge(delay = "100ms")
)]
async fn lookup(c: &reqwest::Client, url: String) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_stalled_request_is_overtaken_by_its_hedge() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([Action::stall(), Action::ok()])).await;
    let t = Instant::now();
    assert_eq!(lookup(&c, server.url("/item")).await.unwrap(), 200);
    // The hedge went at 100 ms and was answered at once: the 2 s timeout never came.
    assert_eq!(t.elapsed(), Duration::from_millis(100));
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(100));
    assert_eq!(seen[0].header("x-attempt"), Some("1"));
    assert_eq!(seen[1].header("x-attempt"), Some("2"));
    // One call: the same request id and trace on both, a parent id of each one's own.
    assert_eq!(
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id")
    );
    let (p0, p1) = (
        seen[0].header("traceparent").unwrap(),
        seen[1].header("traceparent").unwrap(),
    );
    assert_eq!(p0[..35], p1[..35]);
    assert_ne!(p0, p1);
    assert_eq!(
        server.connections(),
        2,
        "the hedge on a connection of its own"
    );
    // A hedge is not a retry (no failure was retried): the call succeeded without one, as
    // `resilience_client_retries_total` and the calls' outcome agree.
    let m = metrics::policy("hedging::lookup").unwrap();
    assert_eq!((m.successful_with_retry, m.retries), (0, 0), "{m:?}");
    assert!(m.successful_without_retry >= 1, "{m:?}");
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    hedge(delay = "100ms")
)]
async fn lookup_after_a_wait(c: &reqwest::Client, url: String) -> Result<u16, Error> {
    // Something the runtime does not see, awaited before the request (a lock, a cache).
    tokio::time::sleep(Duration::from_millis(150)).await;
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// No hedge while the attempt has sent nothing the runtime saw; one once its request is seen
/// (it was off for the whole round: the stalled request ran to its 2 s timeout).
#[tokio::test(start_paused = true)]
async fn a_hedge_waits_for_the_request_to_be_seen_then_starts() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([Action::stall(), Action::ok()])).await;
    let t = Instant::now();
    assert_eq!(
        lookup_after_a_wait(&c, server.url("/item")).await.unwrap(),
        200
    );
    // The first request went at 150 ms, seen: the hedge started then (past its 100 ms delay),
    // waited its own 150 ms and was answered at once.
    assert_eq!(t.elapsed(), Duration::from_millis(300));
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(150));
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    hedge(delay = "100ms"),
    bulkhead(max_concurrent = 1)
)]
async fn lookup_in_one_slot(c: &reqwest::Client, url: String) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A call holds one bulkhead slot for its round: its hedge runs in it (two requests in flight
/// under a bulkhead of one), and another call finds no slot (README, `bulkhead`).
#[tokio::test(start_paused = true)]
async fn a_hedge_runs_in_its_calls_bulkhead_slot() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([
        Action::stall(),
        Action::ok().after(Duration::from_millis(200)),
        Action::ok(),
    ]))
    .await;
    let (first, second) = tokio::join!(lookup_in_one_slot(&c, server.url("/a")), async {
        // While the first call's hedge is in flight.
        tokio::time::sleep(Duration::from_millis(150)).await;
        lookup_in_one_slot(&c, server.url("/b")).await
    });
    assert_eq!(first.unwrap(), 200);
    assert_eq!(second.unwrap_err().kind(), ErrorKind::BulkheadFull);
    assert_eq!(server.count(), 2, "the stalled request and its hedge");
}

#[tokio::test(start_paused = true)]
async fn an_answer_before_the_delay_sends_no_hedge() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(60)),
    ))
    .await;
    assert_eq!(lookup(&c, server.url("/")).await.unwrap(), 200);
    assert_eq!(server.count(), 1);
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    hedge(delay = "100ms", max = 2)
)]
async fn capped(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn at_most_max_hedges_then_the_attempt_timeouts() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let t = Instant::now();
    let e = capped(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
    assert_eq!(e.attempts(), 3);
    // The first and two hedges (at 100 and 200 ms), no more; the last one's timeout ends it.
    assert_eq!(server.count(), 3);
    let seen = server.requests();
    assert_eq!(seen[2].at - seen[0].at, Duration::from_millis(200));
    assert_eq!(t.elapsed(), Duration::from_millis(1200));
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    budget = { ratio = 0.0, min_per_sec = 0 },
    hedge(delay = "100ms")
)]
async fn no_budget(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn hedges_draw_on_the_retry_budget() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([Action::stall(), Action::ok()])).await;
    let e = no_budget(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout);
    assert_eq!(server.count(), 1, "a spent budget sends no hedge");
    let m = metrics::policy("hedging::no_budget").unwrap();
    assert_eq!(m.rejected_budget, 1);
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    idempotency_key = auto,
    hedge(delay = "100ms")
)]
async fn charge(c: &reqwest::Client, url: &str, cents: u64) -> Result<u16, Error> {
    Ok(c.post(url)
        .body(format!("cents={cents}"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_keyed_post_is_hedged_with_its_key() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([Action::stall(), Action::ok()])).await;
    assert_eq!(charge(&c, &server.url("/pay"), 5).await.unwrap(), 200);
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].idempotency_key().is_some());
    assert_eq!(seen[0].idempotency_key(), seen[1].idempotency_key());
    assert_eq!(seen[1].body, b"cents=5");
}

// One annotated function calling another: a hedged lookup whose body places an order through
// a nested keyed POST. Running the body again for a hedge starts the nested call afresh, with
// a new automatic key: to the server, a second order.
#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    idempotency_key = auto
)]
async fn place_order(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url).body("sku=1").send().await?.status().as_u16())
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    hedge(delay = "100ms")
)]
async fn order_then_look(c: &reqwest::Client, base: String) -> Result<u16, Error> {
    place_order(c, &format!("{base}/orders")).await?;
    Ok(c.get(format!("{base}/orders/1"))
        .send()
        .await?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_hedge_does_not_run_a_nested_post_again_under_a_new_key() {
    let c = reqwest::Client::new();
    // The POST stalls past the hedge delay.
    let server = FaultServer::start(Script::sequence([
        Action::ok().after(Duration::from_millis(300)),
        Action::ok(),
        Action::ok(),
    ]))
    .await;
    let base = server.url("");
    let base = base.trim_end_matches('/').to_owned();
    assert_eq!(order_then_look(&c, base).await.unwrap(), 200);
    let posts = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "one order, not one per hedge");
}

/// A helper that sends its POST without `.resilient()`: the runtime does not see it.
async fn record_view(c: &reqwest::Client, url: &str) -> Result<(), reqwest::Error> {
    c.post(url).body("viewed").send().await?;
    Ok(())
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    hedge(delay = "100ms")
)]
async fn view_then_look(c: &reqwest::Client, base: String) -> Result<u16, Error> {
    record_view(c, &format!("{base}/views")).await?;
    Ok(c.get(format!("{base}/item"))
        .send()
        .await?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_hedge_does_not_duplicate_a_request_the_runtime_did_not_see() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([
        Action::ok().after(Duration::from_millis(300)),
        Action::ok(),
        Action::ok(),
    ]))
    .await;
    let base = server.url("");
    let base = base.trim_end_matches('/').to_owned();
    assert_eq!(view_then_look(&c, base).await.unwrap(), 200);
    let posts = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "the unseen POST went out once");
}

// A hedged read that then orders through a nested keyed POST: when the hedge starts, only the
// read has gone out (a hedge is harmless then); once one of the two attempts starts the order,
// the other must not start it too, under a key of its own.
#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    hedge(delay = "100ms")
)]
async fn look_then_order(c: &reqwest::Client, base: String) -> Result<u16, Error> {
    c.get(format!("{base}/stock")).send().await?;
    place_order(c, &format!("{base}/orders")).await
}

#[tokio::test(start_paused = true)]
async fn once_one_attempt_starts_a_nested_post_the_others_stop() {
    let c = reqwest::Client::new();
    // The first GET answers at 150 ms, then orders (answered at 250 ms); the hedge's GET, sent
    // at 100 ms, answers at 160 ms and would order at once.
    let server = FaultServer::start(Script::sequence([
        Action::ok().after(Duration::from_millis(150)),
        Action::ok().after(Duration::from_millis(60)),
        Action::ok().after(Duration::from_millis(100)),
        Action::ok(),
    ]))
    .await;
    let base = server.url("");
    let base = base.trim_end_matches('/').to_owned();
    let t = Instant::now();
    assert_eq!(look_then_order(&c, base).await.unwrap(), 200);
    let seen = server.requests();
    let posts = seen.iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 1, "one order: {seen:?}");
    assert_eq!(seen.iter().filter(|r| r.method == "GET").count(), 2);
    // The first attempt's order, answered at 250 ms, is the call's answer.
    assert_eq!(t.elapsed(), Duration::from_millis(250));
    let m = metrics::policy("hedging::look_then_order").unwrap();
    assert_eq!(
        (
            m.successful_without_retry,
            m.successful_with_retry,
            m.retries
        ),
        (1, 0, 0),
        "a hedge is not a retry"
    );
}

/// A helper that records an audit entry, without `.resilient()`: the runtime does not see it.
async fn audit_unseen(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("looked up")
        .send()
        .await?
        .status()
        .as_u16())
}

/// The first attempt looks up; a later one (the hedge) takes another path through the body and
/// sends an unkeyed POST through a helper.
#[resilient(
    method = GET,
    timeout = "2s",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "1ms", max = "1ms"),
    budget = false,
    hedge(delay = "100ms")
)]
async fn lookup_or_audit(c: &reqwest::Client, lookup: &str, audit: &str) -> Result<u16, Error> {
    let n = resilience_runtime::current_attempt().map_or(1, |a| a.attempt);
    if n == 1 {
        Ok(c.get(lookup)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    } else {
        audit_unseen(c, audit).await
    }
}

/// The retry decision after a hedged round weighs every attempt of it: the hedge sent a
/// helper's POST (unseen; its connection reset after the server read it) and ended first, then
/// the first attempt got a 503. Taken on the first attempt's facts alone (a seen GET), the 503
/// was retried and the body sent the POST again.
#[tokio::test(start_paused = true)]
async fn the_decision_after_a_hedged_round_weighs_every_attempt_of_it() {
    let c = reqwest::Client::new();
    let lookup = FaultServer::start(Script::always(
        Action::status(503).after(Duration::from_millis(300)),
    ))
    .await;
    let audit = FaultServer::start(Script::always(Action::reset())).await;
    let e = lookup_or_audit(&c, &lookup.url("/stock"), &audit.url("/audit"))
        .await
        .unwrap_err();
    assert_eq!(audit.count(), 1, "the POST went out once: {e}");
    assert_eq!(lookup.count(), 1, "{e}");
    assert_eq!(e.attempts(), 2, "the first attempt and its hedge: {e}");
}

struct Catalog {
    http: reqwest::Client,
    base: String,
}

impl Catalog {
    /// The receiver's type written out (a service shared in an `Arc`): a shared reference,
    /// which two attempts may both hold.
    #[resilient(
        timeout = "2s",
        deadline = "5s",
        max_attempts = 1,
        hedge(delay = "100ms")
    )]
    async fn item(self: &std::sync::Arc<Self>, id: u32) -> Result<u16, Error> {
        Ok(self
            .http
            .get(format!("{}/{id}", self.base))
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
}

#[tokio::test(start_paused = true)]
async fn a_method_taking_self_as_a_typed_shared_reference_is_hedged() {
    let server = FaultServer::start(Script::sequence([Action::stall(), Action::ok()])).await;
    let catalog = std::sync::Arc::new(Catalog {
        http: reqwest::Client::new(),
        base: server.url("/item"),
    });
    let t = Instant::now();
    assert_eq!(catalog.item(7).await.unwrap(), 200);
    assert_eq!(t.elapsed(), Duration::from_millis(100));
    assert_eq!(server.count(), 2, "the stalled request and its hedge");
}

/// A helper of the service's own: a plain POST, unseen by the runtime.
async fn reserve(c: &reqwest::Client, url: &str) -> reqwest::Result<reqwest::Response> {
    c.post(url).body("hold").send().await
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "50ms")
)]
async fn stock_then_reserve(c: &reqwest::Client, stock: &str, hold: &str) -> Result<u16, Error> {
    c.get(stock).send().await?.error_for_status()?;
    Ok(reserve(c, hold).await?.status().as_u16())
}

/// The attempt sent a GET the runtime saw, then awaits a helper whose POST stalls: no hedge
/// starts beside it (the helper may be sending anything), so the POST goes out once.
#[tokio::test(start_paused = true)]
async fn no_hedge_starts_while_a_watched_helper_runs() {
    let c = reqwest::Client::new();
    let stock = FaultServer::start(Script::always(Action::ok())).await;
    let hold = FaultServer::start(Script::always(Action::stall())).await;
    let r = tokio::time::timeout(
        Duration::from_millis(300),
        stock_then_reserve(&c, &stock.url("/s"), &hold.url("/h")),
    )
    .await;
    assert!(r.is_err(), "the POST stalls");
    assert_eq!(hold.count(), 1, "one POST: no hedge beside the helper");
    assert_eq!(stock.count(), 1);
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    hedge(delay = "100ms"),
    breaker = { name = "hedged_inventory", failure_rate = 0.5, min_calls = 10, window = 20, open_for = "1m", half_open_calls = 1 },
)]
async fn guarded_lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A call already waiting when its breaker opens (other calls failed, or an operator forced it
/// open) sends no hedge to the dependency just declared down: the breaker stands in front of
/// every attempt, hedges included.
#[tokio::test(start_paused = true)]
async fn no_hedge_starts_once_the_breaker_is_open() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([
        Action::ok().after(Duration::from_millis(300)),
        Action::ok(),
    ]))
    .await;
    let url = server.url("/item");
    let call = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { guarded_lookup(&c, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    resilience_runtime::breakers::force_open("hedged_inventory").unwrap();
    // The first request answers at 300 ms; no hedge went at 100 ms.
    assert_eq!(call.await.unwrap().unwrap(), 200);
    assert_eq!(
        server.count(),
        1,
        "a hedge went to an open breaker's dependency"
    );
    resilience_runtime::breakers::reset("hedged_inventory").unwrap();
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false,
    idempotency_key = auto,
    hedge(delay = "200ms")
)]
async fn hedged_charge(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A payment gateway behind the idempotency layer that takes 2.5 s per charge: its URL, and
/// the charges it made.
async fn slow_gateway() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;
    use resilience_runtime::server::{IdempotencyLayer, MemoryStore};

    async fn gateway(State(charges): State<Arc<AtomicUsize>>) -> (axum::http::StatusCode, String) {
        let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        (axum::http::StatusCode::CREATED, format!("charge {n}"))
    }
    let charges = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/charges", axum::routing::post(gateway))
        .with_state(charges.clone())
        .layer(IdempotencyLayer::new(MemoryStore::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/charges", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, charges)
}

/// A hedged keyed charge behind the idempotency layer, with a gateway slower than the attempt:
/// the hedge is answered 409 "still in progress" while the first request's charge runs, then
/// the first attempt times out. The round's outcome is the 409, not the timeout: the call asks
/// for the replay of the one charge instead of giving up while the card is being charged.
#[tokio::test(start_paused = true)]
async fn a_hedge_told_still_in_progress_asks_for_the_replay_after_the_round() {
    let (url, charges) = slow_gateway().await;
    let (got, report) =
        resilience_runtime::measure(hedged_charge(&reqwest::Client::new(), &url)).await;
    assert_eq!(got.expect("the replay of the one charge"), "charge 1");
    assert_eq!(
        charges.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "charged once"
    );
    // The first request, its hedge (409), then at least one ask for the replay.
    assert!(report.expect("measured").attempts >= 3);
}

/// A gateway behind the idempotency layer whose handler takes 300 ms and answers `status` to
/// its first charge (its own failure: the layer keeps no 5xx, and gives the key back), 201
/// after: its URL, and the charges it ran.
async fn failing_gateway(status: u16) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;
    use resilience_runtime::server::{IdempotencyLayer, MemoryStore};

    let charges = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/charges",
            axum::routing::post(move |State(charges): State<Arc<AtomicUsize>>| async move {
                let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let code = if n == 1 { status } else { 201 };
                (
                    axum::http::StatusCode::from_u16(code).unwrap(),
                    format!("charge {n}"),
                )
            }),
        )
        .with_state(charges.clone())
        .layer(IdempotencyLayer::new(MemoryStore::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/charges", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, charges)
}

/// The hedge is answered 409 "still in progress" while the first request's handler runs; then
/// the handler answers its own 500 (or 503, 429): the server answered, the request is no
/// longer in progress, and the call (one attempt, 500 outside `retry_on`) ends with that
/// answer. Asking for "the replay" would run the handler again, since the layer keeps no 5xx.
#[tokio::test(start_paused = true)]
async fn a_handlers_own_failure_after_a_409_is_not_asked_for_again() {
    for status in [500, 503, 429] {
        let (url, charges) = failing_gateway(status).await;
        let e = hedged_charge(&reqwest::Client::new(), &url)
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), Some(status), "{e}");
        assert_eq!(
            charges.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{status}: the handler ran once: {e}"
        );
    }
}

#[resilient(
    timeout = "1s",
    deadline = "1s",
    max_attempts = 1,
    budget = false,
    idempotency_key = auto,
    hedge(delay = "200ms")
)]
async fn hedged_charge_within(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The same round cut by the call's deadline: the call ends `DeadlineExceeded` (what
/// `fallback_on = [deadline]` and the caller look for), not the hedge's 409.
#[tokio::test(start_paused = true)]
async fn a_hedged_round_cut_by_the_deadline_ends_deadline_exceeded() {
    let (url, _) = slow_gateway().await;
    let e = hedged_charge_within(&reqwest::Client::new(), &url)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    assert_eq!(e.attempts(), 2, "the first request and its hedge: {e}");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 2,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    hedge(delay = "100ms")
)]
async fn hedged_twice(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A hedge is not a retry: a round whose first request and hedge both stall leaves the one
/// retry `max_attempts = 2` gives, with its own hedge.
#[tokio::test(start_paused = true)]
async fn a_stalled_hedged_round_leaves_the_retries_of_max_attempts() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([
        Action::stall(),
        Action::stall(),
        Action::ok(),
    ]))
    .await;
    let (got, report) = resilience_runtime::measure(hedged_twice(&c, &server.url("/"))).await;
    assert_eq!(got.expect("the retry after the stalled round"), 200);
    assert_eq!(server.count(), 3);
    assert_eq!(report.expect("measured").attempts, 3);
    let m = metrics::policy("hedging::hedged_twice").unwrap();
    assert_eq!((m.successful_with_retry, m.retries), (1, 1), "{m:?}");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    hedge(delay = "100ms")
)]
async fn hedged_health(c: &reqwest::Client, url: &str) -> Result<(), Error> {
    c.get(url).send().await?.error_for_status()?;
    Ok(())
}

/// A hedge answered 503 with `Retry-After: 2`, then the first request timed out: the retry
/// after the round waits the two seconds the server asked for, not the 10 ms backoff, counted
/// from that answer (not from the round's end at the first request's timeout).
#[tokio::test(start_paused = true)]
async fn a_retry_after_given_to_a_hedge_holds_for_the_round() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([
        Action::stall(),
        Action::status(503).retry_after(2),
        Action::ok(),
    ]))
    .await;
    hedged_health(&c, &server.url("/")).await.unwrap();
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    // The hedge was answered at 100 ms, the first request timed out at 1 s; the retry went
    // 2 s after the answer.
    assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(100));
    assert_eq!(seen[2].at - seen[0].at, Duration::from_millis(2100));
}

// The file's hedge is `{ delay = "100ms", max = 2 }`; inline, only the delay changes.
#[resilient(
    config = "tests/policies/precedence.toml",
    policy = "hedged",
    max_attempts = 1,
    hedge(delay = "50ms")
)]
async fn tightened(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A hedge table over a wider layer's keeps what it leaves out, as `backoff` does: the
/// file's `max = 2` holds under an inline `hedge(delay = "50ms")`.
#[tokio::test(start_paused = true)]
async fn an_inline_hedge_table_keeps_the_files_max() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let e = tightened(&c, &server.url("/")).await.unwrap_err();
    assert!(e.is_timeout(), "{e}");
    let seen = server.requests();
    assert_eq!(seen.len(), 3, "the first and two hedges");
    assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(50));
}

#[resilient(
    timeout = "1s",
    idempotency_key = key,
    hedge(delay = "100ms")
)]
async fn hedged_keyed_charge(c: &reqwest::Client, url: &str, key: &str) -> Result<String, Error> {
    Ok(c.post(url).send().await?.error_for_status()?.text().await?)
}

/// A hedged call refused for its key is refused by its first attempt as an unhedged one is:
/// nothing sent, no attempt counted, no hedge, no retry; a good key goes through.
#[tokio::test(start_paused = true)]
async fn a_hedged_call_refused_for_its_key_sends_nothing() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let e = hedged_keyed_charge(&c, &server.url("/charge"), "")
        .await
        .unwrap_err();
    assert_eq!((e.kind(), e.attempts()), (ErrorKind::Call, 0), "{e}");
    assert_eq!(server.count(), 0, "nothing was sent");
    let m = metrics::policy("hedging::hedged_keyed_charge").expect("used");
    assert_eq!((m.failed_without_retry, m.retries), (1, 0), "{m:?}");
    hedged_keyed_charge(&c, &server.url("/charge"), "order-9")
        .await
        .unwrap();
    assert_eq!(server.count(), 1);
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms", max = 2),
    breaker = { name = "hedges_one_permit", failure_rate = 0.5, min_calls = 4, window = 4, open_for = "1h", half_open_calls = 1 }
)]
async fn hedged_under_a_breaker(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// "Hedges share the first attempt's breaker permit": a round of an attempt and its two hedges,
/// all timing out, is one call and one failure in the breaker's window, not three (three would
/// open a breaker of `min_calls = 4` after two such calls instead of four).
#[tokio::test(start_paused = true)]
async fn a_hedged_round_is_one_outcome_for_the_breaker() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let e = hedged_under_a_breaker(&c, &server.url("/"))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(server.count(), 3, "the attempt and two hedges");
    let b = metrics::breaker("hedges_one_permit").unwrap();
    assert_eq!((b.window_calls, b.window_failures), (1, 1), "{b:?}");
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms"),
    breaker = { name = "hedge_probe", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 }
)]
async fn hedged_probe(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// No hedge starts while the breaker is half-open and counting its probes: the probe is the
/// one request the breaker lets through, even when it is slower than the hedge's delay.
#[tokio::test(start_paused = true)]
async fn no_hedge_goes_beside_a_half_open_breakers_probe() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(vec![
        Action::status(503),
        Action::status(503),
        Action::ok().after(Duration::from_millis(300)),
    ])
    .await;
    for _ in 0..2 {
        hedged_probe(&c, &server.url("/")).await.unwrap_err();
    }
    let e = hedged_probe(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "opened: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(hedged_probe(&c, &server.url("/")).await.unwrap(), 200);
    assert_eq!(server.count(), 3, "the probe alone, no hedge beside it");
}

#[resilient(
    method = GET,
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "80ms"),
    concurrency_limit = { name = "hedged_adaptive", latency = "100ms", initial = 4, min = 1, max = 8 },
)]
async fn hedged_adaptive(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A hedge that answers 30 ms after it started (110 ms into the round, the first attempt
/// stalled) is a fast answer for an adaptive limit whose `latency` is 100 ms: the sample is
/// the answering attempt's, not the round's, and the limit is not lowered.
#[tokio::test(start_paused = true)]
async fn an_adaptive_limit_judges_a_hedge_by_its_own_latency() {
    let server = FaultServer::start(Script::sequence([
        Action::stall(),
        Action::ok().after(Duration::from_millis(30)),
    ]))
    .await;
    assert_eq!(
        hedged_adaptive(&reqwest::Client::new(), &server.url("/"))
            .await
            .unwrap(),
        200
    );
    assert_eq!(server.count(), 2);
    let limit = resilience_runtime::metrics::concurrency_limit("hedged_adaptive").unwrap();
    assert_eq!(limit.decreases, 0, "{limit:?}");
}

#[resilient(
    method = POST,
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    idempotency_key = auto,
    hedge(delay = "100ms", max = 2)
)]
async fn keyed_hedged_twice(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("charge")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Once an attempt of the round has an answer (the handler's own 500, which a server that
/// keeps no failure releases), no further hedge starts: a second hedge one `delay` later sent
/// the charge to the handler again under the same key, and the call answered 200.
#[tokio::test(start_paused = true)]
async fn no_hedge_starts_after_an_attempt_of_the_round_was_answered() {
    let server = FaultServer::start(
        Script::sequence([
            Action::status(500).after(Duration::from_millis(150)),
            Action::stall(),
        ])
        .then(Action::ok()),
    )
    .await;
    let r = keyed_hedged_twice(&reqwest::Client::new(), &server.url("/charges")).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(server.count(), 2, "the first attempt and one hedge: {r:?}");
}

#[resilient(
    method = POST,
    timeout = "1s",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    idempotency_key = auto,
    hedge(delay = "100ms")
)]
async fn keyed_hedged_retried(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("charge")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    hedge(delay = "100ms")
)]
async fn hedged_lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The round's answer is the handler's, not a sibling's timeout after it: an attempt answered
/// 500 (outside `retry_on`; a server that keeps no failure releases the key) while its hedge
/// hangs until its timeout. The call ends on the 500, not retried: deciding on the hedge's
/// timeout retried the charge, and the handler ran it again.
#[tokio::test(start_paused = true)]
async fn a_round_answered_by_the_handler_is_decided_on_that_answer_not_a_later_timeout() {
    let server = FaultServer::start(
        Script::sequence([
            Action::status(500).after(Duration::from_millis(150)),
            Action::stall(),
        ])
        .then(Action::ok()),
    )
    .await;
    let e = keyed_hedged_retried(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!(
        server.count(),
        2,
        "the attempt and its hedge, no retry: {e}"
    );
    assert_eq!(e.http_status(), Some(500), "{e}");
    assert!(!e.is_timeout(), "{e}");

    // A GET answered 404 while its hedge hangs: a 404, never retried.
    let server = FaultServer::start(
        Script::sequence([
            Action::status(404).after(Duration::from_millis(150)),
            Action::stall(),
        ])
        .then(Action::ok()),
    )
    .await;
    let e = hedged_lookup(&reqwest::Client::new(), &server.url("/items/7"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 2, "{e}");
    assert_eq!(e.http_status(), Some(404), "{e}");
}

/// A plain 409 (no `Retry-After`: the handler's own conflict, not "still in progress") ends a
/// keyed round, whatever `Retry-After` a sibling's 503 carried: the round's longest
/// `Retry-After` made it read as "still in progress", asked again until the deadline.
#[tokio::test(start_paused = true)]
async fn a_plain_409_is_no_in_progress_answer_for_a_siblings_retry_after() {
    let server = FaultServer::start(
        Script::sequence([
            Action::status(503)
                .retry_after(1)
                .after(Duration::from_millis(150)),
            Action::status(409).after(Duration::from_millis(200)),
        ])
        .then(Action::ok()),
    )
    .await;
    let e = keyed_hedged_retried(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(409), "{e}");
    assert_eq!(server.count(), 2, "the round only, not asked again: {e}");
}

#[resilient(
    method = POST,
    timeout = "3s",
    deadline = "10s",
    budget = false,
    idempotency_key = auto,
    hedge(delay = "200ms")
)]
async fn charge_unchecked(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    // The status as a number, unchecked: a 409 is an `Ok` to this body.
    Ok(c.post(url).body("39000").send().await?.status().as_u16())
}

/// A hedge answered 409 "still in progress" (its sibling's request is the one being carried
/// out) does not win the round, even as an `Ok` of a body that does not check the status: the
/// attempt doing the work is not dropped, and its answer is the call's.
#[tokio::test(start_paused = true)]
async fn a_hedges_in_progress_answer_does_not_win_the_round() {
    let (url, charges) = slow_gateway().await;
    let r = charge_unchecked(&reqwest::Client::new(), &url).await;
    assert_eq!(r.unwrap(), 201);
    assert_eq!(charges.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[resilient(
    timeout = "1s",
    deadline = "1040ms",
    max_attempts = 1,
    budget = false,
    hedge(delay = "950ms"),
    breaker(
        failure_rate = 0.5,
        min_calls = 2,
        window = 2,
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn hedged_near_the_deadline(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// No hedge starts with less than a tenth of the attempt's time left, as no retry does: it
/// could only time out, and, the last of the round to end, its cut-short timeout hid the first
/// attempt's full one from the breaker (a hung dependency never opened it).
#[tokio::test(start_paused = true)]
async fn no_hedge_starts_with_less_than_a_tenth_left_and_the_breaker_sees_the_timeout() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let c = reqwest::Client::new();
    for _ in 0..2 {
        let e = hedged_near_the_deadline(&c, &server.url("/"))
            .await
            .unwrap_err();
        assert_eq!(e.attempts(), 1, "no hedge: {e}");
    }
    assert_eq!(server.count(), 2);
    let e = hedged_near_the_deadline(&c, &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 2,
    budget = false,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    hedge(delay = "100ms")
)]
async fn hedged_told_to_wait(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A `Retry-After` one attempt of the round was given holds for the retry after the round,
/// even when the last attempt to end got a status of its own without one.
#[tokio::test(start_paused = true)]
async fn a_retry_after_given_to_any_attempt_of_the_round_is_waited() {
    let server = FaultServer::start(
        Script::sequence([
            Action::status(503)
                .header("Retry-After", "2")
                .after(Duration::from_millis(150)),
            Action::status(503).after(Duration::from_millis(150)),
        ])
        .then(Action::ok()),
    )
    .await;
    let started = Instant::now();
    let r = hedged_told_to_wait(&reqwest::Client::new(), &server.url("/")).await;
    assert_eq!(r.unwrap(), 200);
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    let retried_at = seen[2].at - started;
    assert!(
        retried_at >= Duration::from_millis(2100),
        "retried {retried_at:?} after the start, before the 2 s asked"
    );
}

#[resilient(
    timeout = "1s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "600ms")
)]
async fn hedged_slow(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// An attempt that times out while a hedge of its round runs on is dropped at its timeout, its
/// connection closed then (as an attempt that is not hedged is), not held until the round ends.
#[tokio::test(start_paused = true)]
async fn an_attempt_timed_out_mid_round_lets_its_connection_go() {
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let closed: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let started = Instant::now();
    tokio::spawn({
        let closed = closed.clone();
        async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while sock.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                    closed.lock().unwrap().push(started.elapsed());
                });
            }
        }
    });
    let e = hedged_slow(&reqwest::Client::new(), &url)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 2, "{e}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let closed = closed.lock().unwrap().clone();
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(
        closed[0] < Duration::from_millis(1100),
        "the first attempt's connection closed at {:?}",
        closed[0]
    );
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms"),
    breaker = { name = "hedging_slow_calls", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "60s", slow_call_duration = "120ms", slow_call_rate = 0.5 }
)]
async fn hedged_under_a_slow_call_breaker(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A hedged round's answer is as slow as the attempt that gave it: a hedge answered in 30 ms,
/// 130 ms after the stalled first request went, is no slow call for a breaker watching
/// 120 ms (it was timed from the round's start, and hedging that hid a slow tail opened the
/// breaker on every caller).
#[tokio::test(start_paused = true)]
async fn a_breaker_judges_a_hedged_answer_by_its_own_latency() {
    use resilience_runtime::breaker::BreakerState;
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([
        Action::stall(),
        Action::ok().after(Duration::from_millis(30)),
        Action::stall(),
        Action::ok().after(Duration::from_millis(30)),
    ]))
    .await;
    for _ in 0..2 {
        let t = Instant::now();
        let url = server.url("/item");
        assert_eq!(
            hedged_under_a_slow_call_breaker(&c, &url).await.unwrap(),
            200
        );
        assert_eq!(t.elapsed(), Duration::from_millis(130));
    }
    let b = resilience_runtime::breakers::state("hedging_slow_calls").unwrap();
    assert_eq!(b.state, BreakerState::Closed, "{b:?}");
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms"),
    breaker = { name = "hedging_slow_refusals", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "60s", slow_call_duration = "150ms", slow_call_rate = 0.5 }
)]
async fn hedged_refusal_under_a_slow_call_breaker(
    c: &reqwest::Client,
    url: &str,
) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The same for a round that ends on its hedge's failure: the first request lost at 120 ms
/// (no answer: the hedge runs on), the hedge answered 404 in 80 ms, 180 ms after the round
/// began. The 404 is judged by its own 80 ms, no slow call for a breaker watching 150 ms, as a
/// hedge's success is (timed from the round's start, two such calls opened the breaker).
#[tokio::test(start_paused = true)]
async fn a_breaker_judges_a_hedges_failure_by_its_own_latency() {
    use resilience_runtime::breaker::BreakerState;
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.index % 2 == 0 {
            Action::reset().after(Duration::from_millis(120))
        } else {
            Action::status(404).after(Duration::from_millis(80))
        }
    }))
    .await;
    for _ in 0..2 {
        let t = Instant::now();
        let e = hedged_refusal_under_a_slow_call_breaker(&c, &server.url("/item"))
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), Some(404), "{e}");
        assert_eq!(t.elapsed(), Duration::from_millis(180));
    }
    assert_eq!(server.count(), 4);
    let b = resilience_runtime::breakers::state("hedging_slow_refusals").unwrap();
    assert_eq!(b.state, BreakerState::Closed, "{b:?}");
}

/// The handler's own 500 first, then the hedge's 409 "still in progress" read after it (the
/// hedge was answered while the handler ran, and is read once the 500 is in): the 409 is
/// stale, the handler answered, and the call ends on the 500. Asking for the replay sent the
/// charge a third time (the layer keeps no 5xx: the handler would run again).
#[tokio::test(start_paused = true)]
async fn a_409_read_after_the_handlers_own_answer_is_not_asked_for_again() {
    let server = FaultServer::start(
        Script::sequence([
            Action::status(500).after(Duration::from_millis(300)),
            Action::status(409)
                .retry_after(1)
                .after(Duration::from_millis(200)),
        ])
        .then(Action::ok()),
    )
    .await;
    let e = hedged_charge(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.http_status()), (2, Some(500)), "{e}");

    // Three attempts: the 409 first, then the handler's 500, then a hedge that hangs to its
    // timeout: the round ends on the 500, not on an ask after the timeout.
    let server = FaultServer::start(
        Script::sequence([
            Action::status(500).after(Duration::from_millis(250)),
            Action::status(409)
                .retry_after(1)
                .after(Duration::from_millis(120)),
            Action::stall(),
        ])
        .then(Action::ok()),
    )
    .await;
    let e = keyed_hedged_twice(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.http_status()), (3, Some(500)), "{e}");
}

/// The handler's 500 first, then a sibling's stale 409 while a third attempt still runs, then
/// that attempt's timeout: the stale 409 does not take the 500's place as the round's answer.
#[tokio::test(start_paused = true)]
async fn a_stale_409_between_the_handlers_answer_and_a_timeout_does_not_become_the_answer() {
    let server = FaultServer::start(
        Script::sequence([
            Action::status(500).after(Duration::from_millis(250)),
            Action::status(409)
                .retry_after(1)
                .after(Duration::from_millis(200)),
            Action::stall(),
        ])
        .then(Action::ok()),
    )
    .await;
    let e = keyed_hedged_twice(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.http_status()), (3, Some(500)), "{e}");
}

/// A round that asks for the replay of the charge still in progress (its first attempt timed
/// out after the hedge was told 409) sends no hedge beside the ask: an ask runs nothing again,
/// and a hedge beside it, drawn from the retry budget, only asked a second time.
#[tokio::test(start_paused = true)]
async fn no_hedge_is_sent_beside_an_ask_for_the_replay() {
    let server = FaultServer::start(
        Script::sequence([
            Action::stall(),
            Action::status(409).retry_after(1),
            Action::ok()
                .body("charged")
                .after(Duration::from_millis(300)),
        ])
        .then(Action::ok().body("hedged")),
    )
    .await;
    let got = hedged_charge(&reqwest::Client::new(), &server.url("/charges")).await;
    assert_eq!(got.unwrap(), "charged");
    assert_eq!(server.count(), 3, "the attempt, its hedge, one ask");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false,
    idempotency_key = auto,
    hedge(delay = "200ms")
)]
async fn charge_failing_on_5xx_only(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let r = c.post(url).body("39000").send().await?;
    if r.status().is_server_error() {
        r.error_for_status_ref()?;
    }
    Ok(r.status().as_u16())
}

/// A body that fails on a 5xx only: the handler's 500 first, then the hedge's 409 "still in
/// progress" as the round's last, an `Ok(409)` of the body's: stale, not the call's success
/// (it ended the call as one while the charge had failed).
#[tokio::test(start_paused = true)]
async fn a_stale_409_read_last_is_not_the_calls_success() {
    let server = FaultServer::start(
        Script::sequence([
            Action::status(500).after(Duration::from_millis(300)),
            Action::status(409)
                .retry_after(1)
                .after(Duration::from_millis(200)),
        ])
        .then(Action::ok()),
    )
    .await;
    let e = charge_failing_on_5xx_only(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.http_status()), (2, Some(500)), "{e}");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false,
    idempotency_key = auto,
    hedge(delay = "100ms", max = 2)
)]
async fn charge_twice_hedged_failing_on_5xx_only(
    c: &reqwest::Client,
    url: &str,
) -> Result<u16, Error> {
    let r = c.post(url).body("39000").send().await?;
    if r.status().is_server_error() {
        r.error_for_status_ref()?;
    }
    Ok(r.status().as_u16())
}

/// The handler's 500, then a stale `Ok(409)` while a third attempt still runs, then that
/// attempt's timeout: the round ends on the 500 (the stale 409 once threw the kept answer away,
/// and the round ended on the timeout).
#[tokio::test(start_paused = true)]
async fn a_stale_ok_409_while_another_runs_keeps_the_handlers_answer() {
    let server = FaultServer::start(
        Script::sequence([
            Action::status(500).after(Duration::from_millis(300)),
            Action::status(409)
                .retry_after(1)
                .after(Duration::from_millis(250)),
            Action::stall(),
        ])
        .then(Action::ok()),
    )
    .await;
    let e =
        charge_twice_hedged_failing_on_5xx_only(&reqwest::Client::new(), &server.url("/charges"))
            .await
            .unwrap_err();
    assert_eq!((server.count(), e.http_status()), (3, Some(500)), "{e}");
}

#[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false)]
async fn busy_quota(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A keyed charge, then a nested quota check whose failure the body handles, then the
/// charge's status checked.
#[resilient(
    method = POST,
    timeout = "1s",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    idempotency_key = auto,
    hedge(delay = "300ms")
)]
async fn charge_then_quota(c: &reqwest::Client, charge: &str, quota: &str) -> Result<u16, Error> {
    let r = c.post(charge).body("charge").send().await?;
    let _busy = busy_quota(c, quota).await.is_err();
    Ok(r.error_for_status()?.status().as_u16())
}

/// A plain 409 (no `Retry-After`: the handler's own conflict) read before a nested call whose
/// 503 passed up a `Retry-After` is no "still in progress" in a hedged round: the nested
/// call's `Retry-After` is its failure's, not the 409's. The first attempt ends on the 409
/// while its hedge (started during the nested call) hangs to its timeout; the round ends on
/// the 409, and the charge is not asked for again (it was: the hedge's timeout after a
/// "still in progress" asks for the replay).
#[tokio::test(start_paused = true)]
async fn a_plain_409_is_no_in_progress_answer_for_a_nested_calls_retry_after() {
    let charge = FaultServer::start(
        Script::sequence([
            Action::status(409).after(Duration::from_millis(50)),
            Action::stall(),
        ])
        .then(Action::ok()),
    )
    .await;
    let quota = FaultServer::start(Script::always(
        Action::status(503)
            .retry_after(1)
            .after(Duration::from_millis(400)),
    ))
    .await;
    let e = charge_then_quota(
        &reqwest::Client::new(),
        &charge.url("/charges"),
        &quota.url("/quota"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.http_status(), Some(409), "{e}");
    assert_eq!(
        charge.count(),
        2,
        "the charge and its hedge, not asked again: {e}"
    );
}

/// A lookup of the service's own store (a database call the runtime does not see): the first
/// hangs, the others answer at once.
async fn store_lookup(calls: &std::sync::atomic::AtomicU32) {
    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

#[resilient(
    method = GET,
    timeout = "1s",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    hedge(delay = "300ms")
)]
async fn quota_then_store(
    c: &reqwest::Client,
    quota: &str,
    calls: &std::sync::atomic::AtomicU32,
) -> Result<u16, Error> {
    let r = c.get(quota).send().await?;
    resilience_runtime::declare_sent(resilience_runtime::Method::Get);
    store_lookup(calls).await;
    Ok(r.error_for_status()?.status().as_u16())
}

/// A hedged round that ends on the hedge's 429 (no `Retry-After`), returned after a lookup
/// in the service's store, once the first attempt (its quota answered 429 with `Retry-After:
/// 60`, then its store lookup hung) timed out: the first attempt's 60 s was its own
/// response's, not the hedge's 429's, and does not govern the retry (it ended the call at
/// once, 60 s being past `max_retry_after`).
#[tokio::test(start_paused = true)]
async fn a_round_ending_on_a_hedges_answer_takes_no_handled_retry_after_of_its_sibling() {
    let quota = FaultServer::start(
        Script::sequence([Action::status(429).retry_after(60), Action::status(429)])
            .then(Action::ok()),
    )
    .await;
    let calls = std::sync::atomic::AtomicU32::new(0);
    let started = Instant::now();
    let r = quota_then_store(&reqwest::Client::new(), &quota.url("/quota"), &calls).await;
    assert_eq!(r.unwrap(), 200);
    assert_eq!(quota.count(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 2,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    hedge(delay = "50ms")
)]
async fn hedged_then_asked_to_wait(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A round answered 503 `Retry-After: 3` at 60 ms while its hedge hangs to its timeout at
/// 2.05 s: the wait counts from the answer (the retry goes at about 3.06 s, within the 5 s
/// deadline), not from the round's end. Counted from the end, 3 s no longer fitted in the 2.95 s
/// left: the call gave up at once.
#[tokio::test(start_paused = true)]
async fn a_rounds_retry_after_counts_from_its_answer_not_the_rounds_end() {
    let server = FaultServer::start(
        Script::sequence([
            Action::unavailable(3).after(Duration::from_millis(60)),
            Action::stall(),
        ])
        .then(Action::ok()),
    )
    .await;
    let started = tokio::time::Instant::now();
    let got = hedged_then_asked_to_wait(&reqwest::Client::new(), &server.url("/items/7")).await;
    assert_eq!(got.unwrap(), 200);
    assert_eq!(server.count(), 3);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(3060) && took < Duration::from_millis(3200),
        "{took:?}"
    );
}

#[resilient(timeout = "2s", deadline = "10s", max_attempts = 1, budget = false)]
async fn inner_item(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    method = GET,
    timeout = "1s",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    hedge(delay = "100ms", max = 2)
)]
async fn item_through_a_nested_call(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    inner_item(c, url).await
}

/// A round whose attempts' only request is a nested call's: the handler's 404 to the first
/// (at 150 ms) is an answer, as a request of the body's own would be. No more hedges start,
/// and the round is decided on it when the hedge hangs to its timeout: a 404, not retried. The
/// nested call's response was never the attempt's own: the round took the attempt for
/// unanswered, hedged again, decided on the hedge's timeout and retried the 404.
#[tokio::test(start_paused = true)]
async fn a_nested_calls_answer_ends_the_hedging_and_decides_the_round() {
    let server = FaultServer::start(
        Script::sequence([
            Action::status(404).after(Duration::from_millis(150)),
            Action::stall(),
        ])
        .then(Action::ok()),
    )
    .await;
    let e = item_through_a_nested_call(&reqwest::Client::new(), &server.url("/items/7"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 2, "the attempt and one hedge: {e}");
    assert_eq!(e.http_status(), Some(404), "{e}");
    assert!(!e.is_timeout(), "{e}");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms"),
    breaker = { name = "hedging_cut_short_sibling", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1m" }
)]
async fn hedged_inside_a_short_attempt(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(method = GET, timeout = "150ms", max_attempts = 1, budget = false)]
async fn short_attempt_around(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    hedged_inside_a_short_attempt(c, url).await
}

/// A hedged call handed 150 ms by the attempt around it: its first attempt has 150 ms (over a
/// tenth of its 1 s timeout: a timeout then says the dependency hangs), its hedge at 100 ms the
/// 50 ms left (under that tenth). Both time out at the end; the hedge, the last to end, is
/// cut short, but the round is not: the breaker counts it, and opens on a hung dependency. It
/// took the round for cut short, and never opened.
#[tokio::test(start_paused = true)]
async fn a_cut_short_hedge_does_not_hide_the_first_attempts_timeout_from_the_breaker() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let c = reqwest::Client::new();
    for _ in 0..2 {
        let e = short_attempt_around(&c, &server.url("/"))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "{e}");
    }
    assert_eq!(server.count(), 4, "each round: the attempt and its hedge");
    let e = hedged_inside_a_short_attempt(&c, &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms"),
    breaker = { name = "hedging_fast_answer_slow_sibling", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "60s", slow_call_duration = "150ms", slow_call_rate = 0.5 },
    concurrency_limit = { name = "hedging_fast_answer_slow_sibling", initial = 4, min = 1, max = 8, latency = "150ms" }
)]
async fn answered_fast_beside_a_hang(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A round that ends on an earlier answer after a sibling hung: the first request hangs to its
/// timeout (1 s), the hedge is answered 404 in 30 ms (at 130 ms). The 404 is judged by its own
/// 30 ms, no slow call for a breaker watching 150 ms, nor a slow answer for the adaptive limit:
/// judged at the round's end, two such calls opened the breaker and lowered the limit.
#[tokio::test(start_paused = true)]
async fn an_answer_is_judged_by_its_own_latency_not_its_rounds_end() {
    use resilience_runtime::breaker::BreakerState;
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.index % 2 == 0 {
            Action::stall()
        } else {
            Action::status(404).after(Duration::from_millis(30))
        }
    }))
    .await;
    for _ in 0..2 {
        let t = Instant::now();
        let e = answered_fast_beside_a_hang(&c, &server.url("/item"))
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), Some(404), "{e}");
        assert_eq!(
            t.elapsed(),
            Duration::from_secs(1),
            "the round waited for the hang"
        );
    }
    assert_eq!(server.count(), 4);
    let b = resilience_runtime::breakers::state("hedging_fast_answer_slow_sibling").unwrap();
    assert_eq!(b.state, BreakerState::Closed, "{b:?}");
    let limit =
        resilience_runtime::metrics::concurrency_limit("hedging_fast_answer_slow_sibling").unwrap();
    assert_eq!(limit.decreases, 0, "{limit:?}");
}

#[resilient(
    timeout = "2s",
    deadline = "2100ms",
    max_attempts = 2,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    hedge(delay = "50ms")
)]
async fn hedged_with_no_room_after(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The same round with 50 ms of the deadline left at its end (2.05 s of 2.1 s): the wait the
/// answer asked for is over, but what is left is under a tenth of the timeout, so the call
/// ends on the answer, a 503, with no retry decided. Deciding as of the answer's time, it
/// decided a retry, took it from the budget, and ended `DeadlineExceeded` when it woke.
#[tokio::test(start_paused = true)]
async fn a_round_decided_on_an_earlier_answer_measures_the_time_left_now() {
    let server = FaultServer::start(
        Script::sequence([
            Action::unavailable(1).after(Duration::from_millis(60)),
            Action::stall(),
        ])
        .then(Action::ok()),
    )
    .await;
    let e = hedged_with_no_room_after(&reqwest::Client::new(), &server.url("/items/7"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 2, "{e}");
    assert_eq!(
        (e.kind(), e.http_status()),
        (ErrorKind::Call, Some(503)),
        "{e}"
    );
    let m = metrics::policy("hedging::hedged_with_no_room_after").unwrap();
    assert_eq!(m.retries, 0, "{m:?}");
}
