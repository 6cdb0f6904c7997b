//! The policy holds however the body is written: plain `.send()` without `.resilient()`,
//! `execute`, requests inside `join!`, and annotated functions calling each other.
//!
//! Every peer is a task on the test's current-thread runtime with a paused clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script, Seen};
use resilience_runtime::{ClientSettings, Error, ErrorKind, measure, resilient};
use tokio::time::Instant;

fn client() -> reqwest::Client {
    ClientSettings {
        connect_timeout: Duration::from_millis(100),
        ..ClientSettings::DEFAULT
    }
    .build()
    .unwrap()
}

fn trace_id(s: &Seen) -> &str {
    &s.header("traceparent").expect("traceparent")[3..35]
}

// --- Zero ceremony --------------------------------------------------------------------------

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn plain_get(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_without_resilient() {
    let server = FaultServer::start(vec![Action::status(503).retry_after(1), Action::ok()]).await;
    let started = Instant::now();
    plain_get(&client(), &server.url("/")).await.unwrap();
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(seen[1].header("x-attempt"), Some("2"));
    assert_eq!(
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id")
    );
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, idempotency_key = auto)]
async fn post_via_execute(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let req = c.post(url).body("amount=1").build()?;
    let resp = c.execute(req).await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn execute_is_stamped_and_recorded() {
    let server = FaultServer::start(vec![Action::status(503).retry_after(1), Action::ok()]).await;
    assert_eq!(
        post_via_execute(&client(), &server.url("/pay"))
            .await
            .unwrap(),
        200
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 2, "keyed: resent after the 503");
    let key = seen[0].idempotency_key().expect("key on attempt 1");
    assert_eq!(seen[1].idempotency_key(), Some(key));
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(1),
        "Retry-After recorded"
    );
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn two_at_once(c: &reqwest::Client, a: &str, b: &str) -> Result<(), Error> {
    let (x, y) = tokio::join!(c.get(a).send(), c.get(b).send());
    x?.error_for_status()?;
    y?.error_for_status()?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn requests_inside_join_are_stamped() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    two_at_once(&client(), &server.url("/a"), &server.url("/b"))
        .await
        .unwrap();
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.header("x-request-id").is_some()));
    assert_eq!(trace_id(&seen[0]), trace_id(&seen[1]));
}

/// Something else with a `.send()` of no arguments, which must keep its own meaning.
struct Envelope {
    sent: &'static AtomicU32,
}

impl Envelope {
    fn send(self) -> u32 {
        self.sent.fetch_add(1, Ordering::SeqCst) + 1
    }
}

static ENVELOPES: AtomicU32 = AtomicU32::new(0);

#[resilient(timeout = "1s", deadline = "10s", budget = false)]
async fn sends_other_things(c: &reqwest::Client, url: &str) -> Result<u32, Error> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
    tx.send(7).await.map_err(Error::call)?;
    let n = Envelope { sent: &ENVELOPES }.send();
    let got = rx.recv().await.unwrap_or_default();
    c.get(url).send().await?.error_for_status()?;
    Ok(got + n)
}

#[tokio::test(start_paused = true)]
async fn other_sends_are_left_as_written() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(
        sends_other_things(&client(), &server.url("/"))
            .await
            .unwrap(),
        8
    );
    assert_eq!(ENVELOPES.load(Ordering::SeqCst), 1);
    assert!(server.requests()[0].header("x-request-id").is_some());
}

// --- Nested calls ---------------------------------------------------------------------------

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn inner(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "5s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET)]
async fn outer(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner(c, url).await
}

#[tokio::test(start_paused = true)]
async fn nested_calls_retry_at_one_layer() {
    let server = FaultServer::start(Script::always(Action::reset())).await;
    let e = outer(&client(), &server.url("/dead")).await.unwrap_err();
    assert_eq!(
        server.count(),
        3,
        "3 attempts inside, none again around them: {e}"
    );
}

/// The body's own request first, then the nested call whose failure it returns.
#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn outer_after_its_own(c: &reqwest::Client, own: &str, url: &str) -> Result<String, Error> {
    let mine = c.get(own).send().await?.error_for_status()?.text().await?;
    Ok(mine + &inner(c, url).await?)
}

#[tokio::test(start_paused = true)]
async fn a_nested_failure_after_the_bodys_own_request_is_not_retried_again() {
    let own = FaultServer::start(Script::always(Action::ok().body("a"))).await;
    let server = FaultServer::start(Script::always(Action::reset())).await;
    let e = outer_after_its_own(&client(), &own.url("/"), &server.url("/dead"))
        .await
        .unwrap_err();
    assert_eq!(
        server.count(),
        3,
        "3 attempts inside, none again around them: {e}"
    );
    assert_eq!(own.count(), 1, "{e}");
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 1, budget = false)]
async fn inner_once(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "5s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET)]
async fn outer_retries(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner_once(c, url).await
}

#[tokio::test(start_paused = true)]
async fn an_inner_call_without_retries_leaves_them_to_the_outer_one() {
    let server = FaultServer::start(Script::always(Action::reset())).await;
    let e = outer_retries(&client(), &server.url("/dead"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 3, "{e}");
    assert_eq!(e.attempts(), 3);
}

/// An inner call whose policy does not retry the failure (503 not in its `retry_on`) did not
/// retry it: the outer call, whose policy does, retries it at its one layer.
#[resilient(timeout = "1s", deadline = "10s", retry_on = [connect, reset], budget = false)]
async fn inner_connect_only(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "5s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET)]
async fn outer_retrying_503(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner_connect_only(c, url).await
}

#[tokio::test(start_paused = true)]
async fn a_failure_the_inner_policy_does_not_retry_is_retried_by_the_outer_one() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = outer_retrying_503(&client(), &server.url("/busy"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.attempts()), (3, 3), "{e}");
    // Where the inner call retried it as far as its policy allows, the outer one does not.
    let server = FaultServer::start(Script::always(Action::reset())).await;
    let e = outer_retrying_503(&client(), &server.url("/dead"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 3, "{e}");
}

/// The inner call gives up on the first 503 (`max_attempts = 1`): its `Retry-After` is the
/// outer call's to wait out when it retries, or to end at once on when it is beyond its cap.
#[tokio::test(start_paused = true)]
async fn the_outer_call_waits_out_the_retry_after_its_inner_call_got() {
    let server = FaultServer::start(vec![Action::status(503).retry_after(2), Action::ok()]).await;
    let started = Instant::now();
    assert_eq!(
        outer_retries(&client(), &server.url("/busy"))
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(server.count(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "retried after {:?}, not the 2 s asked",
        started.elapsed()
    );
    // Beyond the outer call's cap (`max_retry_after`, 30 s by default): one request, at once.
    let busy = FaultServer::start(Script::always(Action::status(503).retry_after(120))).await;
    let started = Instant::now();
    let e = outer_retries(&client(), &busy.url("/busy"))
        .await
        .unwrap_err();
    assert_eq!(busy.count(), 1, "{e}");
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert!(started.elapsed() < Duration::from_secs(1), "{e}");
}

/// An inner call that would retry (3 attempts), whose first failure asks for longer than its
/// own cap (`max_retry_after = "1s"`), did not retry it: the outer call, whose cap is the
/// default 30 s, waits it out and retries, as around an inner call of one attempt.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_retry_after = "1s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn inner_short_cap(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "5s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET)]
async fn outer_around_short_cap(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner_short_cap(c, url).await
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_inner_calls_cap_is_the_outer_calls_to_wait_out() {
    let server = FaultServer::start(vec![Action::status(503).retry_after(2), Action::ok()]).await;
    let started = Instant::now();
    let got = outer_around_short_cap(&client(), &server.url("/busy")).await;
    assert_eq!(got.as_deref().ok(), Some("ok"), "{got:?}");
    assert_eq!(server.count(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "retried after {:?}, not the 2 s asked",
        started.elapsed()
    );
    // Beyond both caps: one request, at once.
    let busy = FaultServer::start(Script::always(Action::status(503).retry_after(120))).await;
    let e = outer_around_short_cap(&client(), &busy.url("/busy"))
        .await
        .unwrap_err();
    assert_eq!((busy.count(), e.http_status()), (1, Some(503)), "{e}");
}

/// An inner call that hedged (two requests, both answered 503 asking for 2 s, beyond its
/// 1 s cap) sent more than one request: the outer call does not run it again around it,
/// hedges and all.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_retry_after = "1s",
    hedge(delay = "50ms"),
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn inner_hedged_short_cap(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "5s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET)]
async fn outer_around_hedged(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner_hedged_short_cap(c, url).await
}

#[tokio::test(start_paused = true)]
async fn an_inner_call_that_hedged_is_not_run_again_for_a_retry_after_beyond_its_cap() {
    let server = FaultServer::start(Script::always(
        Action::status(503)
            .retry_after(2)
            .after(Duration::from_millis(100)),
    ))
    .await;
    let e = outer_around_hedged(&client(), &server.url("/busy"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 2, "the request and its hedge, once: {e}");
}

/// An inner call whose budget allows no retry: its first 503 ends it `BudgetExhausted`, and
/// the outer call, with no budget of its own, does not retry around it (the budget is there to
/// stop retries of a failing dependency).
#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = { name = "composition_spent_inside", ratio = 0.0, min_per_sec = 0 }
)]
async fn inner_spent_budget(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "5s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET)]
async fn outer_around_spent_budget(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner_spent_budget(c, url).await
}

#[tokio::test(start_paused = true)]
async fn an_inner_calls_spent_budget_ends_the_outer_calls_retries_too() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = outer_around_spent_budget(&client(), &server.url("/busy"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 1, "{e}");
    assert_eq!(e.kind(), ErrorKind::BudgetExhausted, "{e}");
}

#[resilient(
    timeout = "10s",
    deadline = "30s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn inner_patient(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    timeout = "500ms",
    deadline = "500ms",
    max_attempts = 1,
    budget = false
)]
async fn outer_in_a_hurry(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner_patient(c, url).await
}

#[resilient(
    timeout = "500ms",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    method = GET
)]
async fn outer_attempts_short(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner_patient(c, url).await
}

/// The inner call (3 attempts of its own) gets a 503 asking for a second, which does not fit
/// the 500 ms left of the outer attempt: it retried nothing, so the outer call, whose
/// deadline is 10 s, retries it (after the second asked), rather than giving up as if the
/// inner one had retried it already.
#[tokio::test(start_paused = true)]
async fn a_failure_the_inner_call_had_no_time_to_retry_is_the_outer_calls_to_retry() {
    let server = FaultServer::start(vec![Action::status(503).retry_after(1), Action::ok()]).await;
    let got = outer_attempts_short(&client(), &server.url("/busy")).await;
    assert_eq!(got.unwrap(), "ok");
    assert_eq!(server.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_inner_call_plans_within_the_outer_deadline() {
    // Stalled: the inner attempt gets the outer's 500 ms, not its own 10 s.
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let started = Instant::now();
    let e = outer_in_a_hurry(&client(), &server.url("/slow"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    assert!(
        started.elapsed() <= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.count(), 1);
    let left: u64 = server.requests()[0]
        .header("x-timeout-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(left <= 500, "the inner request carried {left} ms");

    // A Retry-After beyond the outer's time left ends the inner call at once.
    let server = FaultServer::start(Script::always(Action::status(503).retry_after(2))).await;
    let started = Instant::now();
    let e = outer_in_a_hurry(&client(), &server.url("/busy"))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "slept in vain: {:?}",
        started.elapsed()
    );
    assert_eq!(server.count(), 1);
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, idempotency_key = auto)]
async fn inner_charge(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = c
        .post(format!("{url}/charge"))
        .body("amount=1")
        .send()
        .await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

#[resilient(timeout = "5s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, idempotency_key = auto)]
async fn checkout(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    c.post(format!("{url}/order"))
        .body("cart=1")
        .send()
        .await?
        .error_for_status()?;
    inner_charge(c, url).await?;
    let resp = c.get(format!("{url}/receipt")).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_nested_call_joins_the_trace_and_keeps_its_own_key() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    checkout(&client(), &format!("http://{}", server.addr()))
        .await
        .unwrap();
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    let (order, charge, receipt) = (&seen[0], &seen[1], &seen[2]);
    assert_eq!(trace_id(order), trace_id(charge), "one trace");
    assert_eq!(trace_id(order), trace_id(receipt));
    assert_ne!(
        order.header("traceparent"),
        charge.header("traceparent"),
        "its own span id"
    );
    assert_eq!(order.header("x-request-id"), charge.header("x-request-id"));
    assert!(order.idempotency_key().is_some() && charge.idempotency_key().is_some());
    assert_ne!(
        order.idempotency_key(),
        charge.idempotency_key(),
        "a different POST, its own key"
    );
    assert_eq!(order.idempotency_key(), receipt.idempotency_key());
}

#[tokio::test(start_paused = true)]
async fn the_outer_call_does_not_rerun_a_nested_post_under_a_new_key() {
    // The charge succeeds, the receipt fails: running `checkout` again would charge again with
    // a fresh automatic key, which the server cannot recognise as a repeat.
    let server = FaultServer::start(Script::dynamic(|s| {
        if s.path == "/receipt" {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let e = checkout(&client(), &format!("http://{}", server.addr()))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(server.count_path("/charge"), 1, "charged once");
    assert_eq!(server.count_path("/receipt"), 1);
}

#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn charge_then_confirm(c: &reqwest::Client, shop: &str, confirm: &str) -> Result<u16, Error> {
    inner_charge(c, shop).await?;
    Ok(c.get(confirm).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_after_a_nested_post_does_not_rerun_it() {
    // The nested charge succeeds; the confirmation service refuses connections. The connect
    // failure proves only that the GET was never sent: running the outer body again would
    // charge again under a fresh automatic key.
    let shop = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/confirm", resilience_fault_server::refused_addr());
    let e = charge_then_confirm(&client(), &format!("http://{}", shop.addr()), &refused)
        .await
        .unwrap_err();
    assert_eq!(shop.count_path("/charge"), 1, "charged once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    budget = false,
    max_attempts = 1,
    breaker(
        failure_rate = 0.5,
        min_calls = 2,
        window = 2,
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn inner_guarded(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "5s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET)]
async fn outer_of_guarded(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner_guarded(c, url).await
}

#[tokio::test(start_paused = true)]
async fn a_nested_call_obeys_its_own_breaker() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = outer_of_guarded(&client(), &server.url("/"))
        .await
        .unwrap_err();
    // Two 503s open the inner breaker; the outer's third attempt is refused by it.
    assert_eq!(server.count(), 2, "{e}");
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
}

#[tokio::test(start_paused = true)]
async fn measure_reports_attempts_and_waits() {
    let server = FaultServer::start(vec![
        Action::status(503).retry_after(1),
        Action::reset(),
        Action::ok(),
    ])
    .await;
    let (out, report) = measure(plain_get(&client(), &server.url("/"))).await;
    out.unwrap();
    let r = report.expect("a report");
    assert_eq!(r.attempts, 3);
    assert!(r.succeeded);
    assert!(r.waited >= Duration::from_secs(1), "{r:?}");
    assert!(r.elapsed >= r.waited);
    assert_eq!(r.function, "composition::plain_get");

    // Nested: the outermost call is reported.
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let (_, report) = measure(outer(&client(), &server.url("/"))).await;
    assert_eq!(report.unwrap().function, "composition::outer");
    let (_, none) = measure(async { 1 }).await;
    assert_eq!(none, None);
}

#[resilient(timeout = "1s", budget = false, rate_limit = { rate = 1, per = "1m", burst = 1 })]
async fn once_a_minute(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.text().await?)
}

#[resilient(timeout = "5s", budget = false, bulkhead = { max_concurrent = 1 })]
async fn one_at_a_time(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.text().await?)
}

/// A call refused by its rate limit or its bulkhead is the call that finished last: reported
/// with no attempt, not the earlier call's report.
#[tokio::test(start_paused = true)]
async fn measure_reports_a_call_refused_by_a_limit() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let url = server.url("/");
    let (_, report) = measure(async {
        once_a_minute(&client(), &url).await.unwrap();
        once_a_minute(&client(), &url).await.unwrap_err();
    })
    .await;
    let r = report.expect("a report");
    assert_eq!((r.attempts, r.succeeded), (0, false), "{r:?}");

    let slow = FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(1)))).await;
    let url = slow.url("/");
    let c = client();
    let (held, (refused, report)) = tokio::join!(one_at_a_time(&c, &url), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        measure(one_at_a_time(&c, &url)).await
    });
    held.unwrap();
    refused.unwrap_err();
    let r = report.expect("a report of the refused call");
    assert_eq!(r.function, "composition::one_at_a_time");
    assert_eq!((r.attempts, r.succeeded), (0, false), "{r:?}");
}

#[resilient(timeout = "100ms", deadline = "100ms", max_attempts = 1, budget = false,
    bulkhead = { name = "composition_one_slot", max_concurrent = 1, max_wait = "1s" })]
async fn inner_in_a_slot(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.text().await?)
}

/// Holds the one slot of the same bulkhead for as long as its server takes.
#[resilient(timeout = "5s", deadline = "10s", max_attempts = 1, budget = false,
    bulkhead = { name = "composition_one_slot", max_concurrent = 1, max_wait = "1s" })]
async fn slot_holder(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.text().await?)
}

#[resilient(timeout = "5s", deadline = "20s", method = GET, budget = false,
    backoff(initial = "10ms", max = "10ms"),
    breaker = { name = "composition_outer_of_a_slot", failure_rate = 0.5, min_calls = 1, window = 1, open_for = "60s" })]
async fn outer_of_a_slot(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner_in_a_slot(c, url).await
}

/// A nested call refused a bulkhead slot for want of time (its deadline came before a slot
/// did) sent nothing: the enclosing call takes it for a refusal, not a timeout. It does not
/// retry it, and its breaker does not count it.
#[tokio::test(start_paused = true)]
async fn a_nested_call_refused_for_want_of_time_is_a_refusal_not_a_timeout() {
    let slow = FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(2)))).await;
    let url = slow.url("/");
    let c = client();
    let (held, outer) = tokio::join!(slot_holder(&c, &url), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        outer_of_a_slot(&c, &url).await
    });
    held.unwrap();
    let e = outer.unwrap_err();
    assert_eq!(e.attempts(), 1, "not retried: {e}");
    assert_eq!(slow.count(), 1, "only the holder's request went out");
    let breaker = resilience_runtime::breakers::state("composition_outer_of_a_slot").unwrap();
    assert_eq!(
        breaker.state,
        resilience_runtime::breaker::BreakerState::Closed,
        "{e}"
    );
}

#[resilient(timeout = "1s", max_attempts = 1, method = GET, budget = false,
    breaker = { name = "composition_pg", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "10s", half_open_calls = 1 },
    bulkhead = { name = "composition_pg_slots", max_concurrent = 1, max_wait = "1s" })]
async fn tokenize(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// Calls `tokenize` under the same breaker and bulkhead (one dependency, one breaker).
#[resilient(timeout = "2s", max_attempts = 1, method = GET, budget = false,
    breaker = { name = "composition_pg", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "10s", half_open_calls = 1 },
    bulkhead = { name = "composition_pg_slots", max_concurrent = 1, max_wait = "1s" })]
async fn charge_through(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    tokenize(c, url).await
}

/// A call nested in another under the same named breaker and bulkhead runs under the
/// enclosing call's probe and slot: a half-open breaker closes on the enclosing call's success
/// (it stayed half-open for ever, the nested call refused the probe its caller held), and the
/// nested call does not wait for the slot its caller holds.
#[tokio::test(start_paused = true)]
async fn a_nested_call_under_the_same_breaker_and_bulkhead_runs_under_its_callers_permits() {
    use resilience_runtime::breaker::BreakerState;
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let up = FaultServer::start(Script::always(Action::ok())).await;
    let c = client();
    // A free slot held by the caller: the nested call does not wait a second for it.
    let started = Instant::now();
    assert_eq!(charge_through(&c, &up.url("/")).await.unwrap(), "ok");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..2 {
        charge_through(&c, &down.url("/")).await.unwrap_err();
    }
    let state = || {
        resilience_runtime::breakers::state("composition_pg")
            .unwrap()
            .state
    };
    assert_eq!(state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_secs(11)).await;
    for i in 0..3 {
        let r = charge_through(&c, &up.url("/")).await;
        assert!(r.is_ok(), "call {i} after open_for: {r:?}");
    }
    assert_eq!(state(), BreakerState::Closed);
}

/// The same with a call of its own breaker and bulkhead in between: `checkout_screened` (pg) calls
/// `screen` (fraud), which calls `tokenize` (pg) again.
#[resilient(timeout = "2s", max_attempts = 1, method = GET, budget = false,
    breaker = { name = "composition_fraud", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "10s", half_open_calls = 1 },
    bulkhead = { name = "composition_fraud_slots", max_concurrent = 1, max_wait = "1s" })]
async fn screen(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    tokenize(c, url).await
}

#[resilient(timeout = "3s", max_attempts = 1, method = GET, budget = false,
    breaker = { name = "composition_pg", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "10s", half_open_calls = 1 },
    bulkhead = { name = "composition_pg_slots", max_concurrent = 1, max_wait = "1s" })]
async fn checkout_screened(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    screen(c, url).await
}

/// A call nested two levels down under its caller's caller's breaker and bulkhead, another
/// call's in between, runs under the outermost call's probe and slot as a direct one does (it
/// waited a second for the slot the outermost call held, then failed; a half-open breaker
/// stayed half-open).
#[tokio::test(start_paused = true)]
async fn a_call_nested_below_another_state_runs_under_its_outer_callers_permits() {
    use resilience_runtime::breaker::BreakerState;
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let up = FaultServer::start(Script::always(Action::ok())).await;
    let c = client();
    let started = Instant::now();
    assert_eq!(checkout_screened(&c, &up.url("/")).await.unwrap(), "ok");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..2 {
        checkout_screened(&c, &down.url("/")).await.unwrap_err();
    }
    let state = |name| resilience_runtime::breakers::state(name).unwrap().state;
    assert_eq!(state("composition_pg"), BreakerState::Open);
    tokio::time::sleep(Duration::from_secs(11)).await;
    for i in 0..3 {
        let r = checkout_screened(&c, &up.url("/")).await;
        assert!(r.is_ok(), "call {i} after open_for: {r:?}");
    }
    assert_eq!(state("composition_pg"), BreakerState::Closed);
}

#[resilient(timeout = "10s", max_attempts = 1, method = GET, budget = false,
    breaker = { name = "composition_late", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 })]
async fn late_lookup(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A long job under the same breaker, whose lookup comes once it is told to go.
#[resilient(timeout = "30s", max_attempts = 1, method = GET, budget = false,
    breaker = { name = "composition_late", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 })]
async fn long_job(
    c: &reqwest::Client,
    url: &str,
    go: &tokio::sync::Notify,
) -> Result<String, Error> {
    go.notified().await;
    late_lookup(c, url).await
}

/// A call nested in one admitted while the breaker was closed, made once the breaker has
/// opened and is half-open with its one probe running, is refused as any call is: it once
/// ran under the caller's stale permit, a second request to a dependency under trial,
/// counted nowhere.
#[tokio::test(start_paused = true)]
async fn a_nested_call_does_not_pass_a_half_open_breaker_its_caller_entered_closed() {
    use resilience_runtime::breaker::BreakerState;
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let stalled =
        FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(5)))).await;
    let up = FaultServer::start(Script::always(Action::ok())).await;
    let c = client();
    let go = tokio::sync::Notify::new();
    let state = || {
        resilience_runtime::breakers::state("composition_late")
            .unwrap()
            .state
    };
    let (up_url, stalled_url) = (up.url("/"), stalled.url("/"));
    let (job, probe) = tokio::join!(long_job(&c, &up_url, &go), async {
        // The job has begun, the breaker closed; other calls open it.
        tokio::time::sleep(Duration::from_millis(10)).await;
        for _ in 0..2 {
            late_lookup(&c, &down.url("/")).await.unwrap_err();
        }
        assert_eq!(state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Half-open: its one probe in flight, then the job's lookup.
        let probe = late_lookup(&c, &stalled_url);
        tokio::pin!(probe);
        tokio::select! {
            r = &mut probe => panic!("the probe ended early: {r:?}"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        assert_eq!(stalled.count(), 1, "the probe is in flight");
        go.notify_one();
        probe.await
    });
    let e = job.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(up.count(), 0, "nothing sent past the probe");
    assert_eq!(probe.unwrap(), "ok");
    assert_eq!(state(), BreakerState::Closed);
}

#[resilient(timeout = "10s", max_attempts = 3, method = GET, budget = false,
    backoff(kind = constant, initial = "1500ms", jitter = none),
    breaker = { name = "composition_late_retry", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 })]
async fn retrying_lookup(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "10s", max_attempts = 1, method = GET, budget = false,
    breaker = { name = "composition_late_retry", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 })]
async fn one_shot_lookup(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "30s", max_attempts = 1, method = GET, budget = false,
    breaker = { name = "composition_late_retry", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 })]
async fn long_job_retrying(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    retrying_lookup(c, url).await
}

/// The same when the nested call began while the breaker was closed and retries after it has
/// opened and gone half-open: its retry is refused as any call is (it was decided once, as the
/// nested call began, and its retry went to the dependency under trial).
#[tokio::test(start_paused = true)]
async fn a_nested_calls_retry_does_not_pass_a_half_open_breaker_either() {
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let stalled =
        FaultServer::start(Script::always(Action::ok().after(Duration::from_secs(5)))).await;
    let flaky = FaultServer::start(Script::always(Action::status(503))).await;
    let c = client();
    let (flaky_url, stalled_url) = (flaky.url("/"), stalled.url("/"));
    let (job, probe) = tokio::join!(long_job_retrying(&c, &flaky_url), async {
        // The nested call's first attempt has failed; it waits 1.5 s to retry. Other calls
        // open the breaker, and at 1.1 s its probe goes out and stalls.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(flaky.count(), 1);
        for _ in 0..2 {
            one_shot_lookup(&c, &down.url("/")).await.unwrap_err();
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        one_shot_lookup(&c, &stalled_url).await
    });
    let e = job.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(
        flaky.count(),
        1,
        "the retry was not sent past the probe: {e}"
    );
    assert_eq!(probe.unwrap(), "ok");
}

#[resilient(timeout = "1s", max_attempts = 1, method = GET, budget = false,
    concurrency_limit(name = "composition_one_at_a_time", initial = 1, min = 1, max = 1, latency = "500ms"))]
async fn lookup_limited(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "2s", max_attempts = 1, method = GET, budget = false,
    concurrency_limit(name = "composition_one_at_a_time", initial = 1, min = 1, max = 1, latency = "500ms"))]
async fn page_limited(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    lookup_limited(c, url).await
}

/// So does a call nested under the same adaptive concurrency limit at its limit: it was
/// refused the slot its caller held.
#[tokio::test(start_paused = true)]
async fn a_nested_call_under_the_same_concurrency_limit_runs_in_its_callers_slot() {
    let up = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(page_limited(&client(), &up.url("/")).await.unwrap(), "ok");
    assert_eq!(up.count(), 1);
}

// --- Return types -----------------------------------------------------------------------------

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn io_status(c: &reqwest::Client, url: &str) -> std::io::Result<u16> {
    let resp = c.get(url).send().await.map_err(std::io::Error::other)?;
    Ok(resp.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn io_result_functions_retry_and_report() {
    let server = FaultServer::start(vec![Action::reset(), Action::ok()]).await;
    assert_eq!(io_status(&client(), &server.url("/")).await.unwrap(), 200);
    assert_eq!(
        server.count(),
        2,
        "the reset inside the io::Error was classified"
    );

    let server = FaultServer::start(Script::always(Action::stall())).await;
    let e = io_status(&client(), &server.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<Error>()).unwrap();
    assert_eq!(inner.kind(), ErrorKind::AttemptTimeout);
    assert_eq!(inner.attempts(), 3);
    assert_eq!(server.count(), 3);
}

type R<T> = Result<T, Error>;

#[resilient(
    timeout = "1.5s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn aliased(c: &reqwest::Client, url: &str) -> R<u16> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn an_aliased_result_and_a_fractional_timeout() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let started = Instant::now();
    let e = aliased(&client(), &server.url("/")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout);
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(1500));
    assert!(started.elapsed() >= Duration::from_millis(4500));
}

#[resilient(timeout = "5s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET)]
async fn checkout_impatient(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    // The body gives up on the nested charge itself: it is dropped mid-request.
    let _ = tokio::time::timeout(Duration::from_millis(100), inner_charge(c, url)).await;
    let resp = c.get(format!("{url}/receipt")).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_nested_post_cancelled_mid_request_is_not_rerun_either() {
    let server = FaultServer::start(Script::dynamic(|s| match s.path.as_str() {
        "/charge" => Action::stall(),
        _ => Action::status(503),
    }))
    .await;
    let e = checkout_impatient(&client(), &format!("http://{}", server.addr()))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(server.count_path("/charge"), 1, "the charge went out once");
}

/// Two requests in one body: an unkeyed POST that is answered, then a GET to a dependency that
/// refuses connections. Retrying on `connect` is safe for the GET, never sent; running the
/// body again would send the POST a second time.
#[resilient(method = POST, retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn order_then_lookup(c: &reqwest::Client, orders: &str, stock: &str) -> Result<u16, Error> {
    c.post(orders)
        .body("qty=1")
        .send()
        .await?
        .error_for_status()?;
    Ok(c.get(stock).send().await?.status().as_u16())
}

#[resilient(method = POST, retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn order_then_lookup_via_execute(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<u16, Error> {
    let order = c.post(orders).body("qty=1").build()?;
    c.execute(order).await?.error_for_status()?;
    let lookup = c.get(stock).build()?;
    Ok(c.execute(lookup).await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_after_an_answered_post_does_not_resend_the_post() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/", resilience_fault_server::refused_addr());
    let e = order_then_lookup(&client(), &orders.url("/orders"), &refused)
        .await
        .unwrap_err();
    assert_eq!(orders.count(), 1, "the POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");

    orders.clear();
    let e = order_then_lookup_via_execute(&client(), &orders.url("/orders"), &refused)
        .await
        .unwrap_err();
    assert_eq!(orders.count(), 1, "the POST went out once: {e}");

    // Where the POST itself never got through, the connect failure is retried: nothing was sent.
    let e = order_then_lookup(&client(), &refused, &refused)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 3, "{e}");
}

/// A helper that sends its POST without `.resilient()`: the runtime does not see it.
async fn place_order_unseen(c: &reqwest::Client, url: &str) -> Result<(), Error> {
    c.post(url).body("qty=1").send().await?.error_for_status()?;
    Ok(())
}

/// The method declared is the least safe the function may send, the helper's POST included.
#[resilient(method = POST, retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn order_via_helper_then_lookup(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<u16, Error> {
    place_order_unseen(c, orders).await?;
    Ok(c.get(stock).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_after_an_unseen_post_does_not_resend_it() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/", resilience_fault_server::refused_addr());
    let e = order_via_helper_then_lookup(&client(), &orders.url("/orders"), &refused)
        .await
        .unwrap_err();
    // The runtime saw only the GET, never sent; the declared POST may have gone out unseen.
    assert_eq!(orders.count(), 1, "the POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
}

/// A keyed charge that fetches its token first, in the body: every POST of the body is sent
/// where the runtime sees it, so an attempt seen sending only the token GET did not send the
/// charge. The token server's 503 is retried, and the charge goes out once, keyed.
#[resilient(
    idempotency_key = auto,
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn charge_after_token(c: &reqwest::Client, token: &str, pg: &str) -> Result<String, Error> {
    let t = c
        .get(token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(c.post(pg)
        .bearer_auth(t)
        .body("amount=10")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Unkeyed, retrying connect failures only: a stock lookup that cannot connect, before the
/// order, is retried (nothing was sent, the order least of all).
#[resilient(retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn lookup_then_order(c: &reqwest::Client, stock: &str, orders: &str) -> Result<u16, Error> {
    c.get(stock).send().await?.error_for_status()?;
    Ok(c.post(orders).body("qty=1").send().await?.status().as_u16())
}

/// An order a spawned task builds on its own (unseen, unkeyed), then the body's lookup that
/// cannot connect: the order is not proven seen, and the connect failure does not run the
/// body again.
#[resilient(retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn order_in_task_then_lookup(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<u16, Error> {
    let (http, orders) = (c.clone(), orders.to_owned());
    tokio::spawn(async move { http.post(orders).body("qty=1").send().await })
        .await
        .expect("the task ran")?
        .error_for_status()?;
    Ok(c.get(stock).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_failure_before_the_bodys_own_post_is_retried() {
    let token = FaultServer::start(vec![Action::status(503), Action::ok().body("t0k")]).await;
    let pg = FaultServer::start(Script::always(Action::ok())).await;
    charge_after_token(&client(), &token.url("/token"), &pg.url("/charges"))
        .await
        .unwrap();
    assert_eq!((token.count(), pg.count()), (2, 1));
    assert!(pg.requests()[0].header("idempotency-key").is_some());

    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/", resilience_fault_server::refused_addr());
    let e = lookup_then_order(&client(), &refused, &orders.url("/orders"))
        .await
        .unwrap_err();
    assert_eq!((e.attempts(), orders.count()), (3, 0), "{e}");

    // Where the POST may have gone out unseen, the lookup's connect failure is not retried.
    orders.clear();
    let e = order_in_task_then_lookup(&client(), &orders.url("/orders"), &refused)
        .await
        .unwrap_err();
    assert_eq!((e.attempts(), orders.count()), (1, 1), "{e}");
}

/// A helper that looks the stock up, also without `.resilient()`.
async fn lookup_unseen(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// Both requests sent by helpers, the method declared GET (what the author thought the
/// function does): the runtime sees nothing go out.
#[resilient(method = GET, max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn order_then_lookup_all_unseen(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<u16, Error> {
    place_order_unseen(c, orders).await?;
    lookup_unseen(c, stock).await
}

/// The shape of a wrapped API client: every request sent by helpers, none seen. The
/// lookup's connect failure proves only that the lookup was never sent; the unkeyed POST
/// before it was answered, and running the body again would send it again.
#[tokio::test(start_paused = true)]
async fn a_connect_failure_after_unseen_requests_does_not_rerun_them() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/", resilience_fault_server::refused_addr());
    let e = order_then_lookup_all_unseen(&client(), &orders.url("/orders"), &refused)
        .await
        .unwrap_err();
    assert_eq!(orders.count(), 1, "the POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(e.class(), Some(resilience_runtime::Class::Connect), "{e}");
}

/// An unkeyed POST the body stops waiting for (its own timeout on a best-effort audit), then a
/// GET to a dependency that refuses connections: the POST went out, its answer never came.
#[resilient(retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn audit_then_lookup(c: &reqwest::Client, audit: &str, stock: &str) -> Result<u16, Error> {
    let _ = tokio::time::timeout(
        Duration::from_millis(50),
        c.post(audit).body("event=view").send(),
    )
    .await;
    Ok(c.get(stock).send().await?.status().as_u16())
}

/// The same with `execute`.
#[resilient(retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn audit_then_lookup_via_execute(
    c: &reqwest::Client,
    audit: &str,
    stock: &str,
) -> Result<u16, Error> {
    let event = c.post(audit).body("event=view").build()?;
    let _ = tokio::time::timeout(Duration::from_millis(50), c.execute(event)).await;
    Ok(c.get(stock).send().await?.status().as_u16())
}

/// An unkeyed POST and a GET sent together with `try_join!`: the GET's connect failure drops
/// the POST in flight.
#[resilient(retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn order_and_stock(c: &reqwest::Client, orders: &str, stock: &str) -> Result<u16, Error> {
    let (order, stock) =
        tokio::try_join!(c.post(orders).body("qty=1").send(), c.get(stock).send())?;
    order.error_for_status()?;
    Ok(stock.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_after_a_post_given_up_on_does_not_resend_it() {
    let audit = FaultServer::start(Script::always(Action::stall())).await;
    let refused = format!("http://{}/", resilience_fault_server::refused_addr());
    let e = audit_then_lookup(&client(), &audit.url("/audit"), &refused)
        .await
        .unwrap_err();
    assert_eq!(audit.count(), 1, "the POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");

    audit.clear();
    let e = audit_then_lookup_via_execute(&client(), &audit.url("/audit"), &refused)
        .await
        .unwrap_err();
    assert_eq!(audit.count(), 1, "the POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");

    // The GET's connect times out after the POST arrived; try_join! drops the POST.
    let orders = FaultServer::start(Script::always(Action::stall())).await;
    let hole = resilience_fault_server::Blackhole::new();
    let e = order_and_stock(&client(), &orders.url("/orders"), &hole.url("/stock"))
        .await
        .unwrap_err();
    assert_eq!(orders.count(), 1, "the POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
}

#[resilient(
    timeout = "10s",
    deadline = "30s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn inner_slow_to_give_up(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// An outer attempt timeout shorter than the inner call's: each outer attempt gives the inner
/// call one request's time.
#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET)]
async fn outer_with_a_short_timeout(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    inner_slow_to_give_up(c, url).await
}

async fn cached_page(_c: &reqwest::Client, _url: &str) -> Result<String, Error> {
    Ok("cached".into())
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET, fallback = cached_page, fallback_on = [timeout])]
async fn outer_with_a_short_timeout_and_fallback(
    c: &reqwest::Client,
    url: &str,
) -> Result<String, Error> {
    inner_slow_to_give_up(c, url).await
}

#[tokio::test(start_paused = true)]
async fn an_outer_attempt_timeout_around_a_nested_call_is_retried_and_told_apart() {
    // The inner call never retried: its one request ran out of the outer attempt's 1 s, which
    // is the outer attempt's timeout, retried by the outer call.
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let e = outer_with_a_short_timeout(&client(), &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 3, "one request per outer attempt: {e}");
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
    assert_eq!(e.attempts(), 3, "{e}");

    // `fallback_on = [timeout]` sees the outer attempt's timeout.
    let r = outer_with_a_short_timeout_and_fallback(&client(), &server.url("/")).await;
    assert_eq!(r.unwrap(), "cached");
}

#[resilient(
    timeout = "300ms",
    deadline = "10s",
    backoff(initial = "75ms", max = "150ms", jitter = none),
    budget = false
)]
async fn recs_against_a_hang(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.text().await?)
}

/// The README's shape: an inner call that retries within each outer attempt's second.
#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, method = GET)]
async fn page_of_recs(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    recs_against_a_hang(c, url).await
}

/// "One it retried, then had no time to retry again, is not": an inner call that retried
/// twice, whose third attempt the outer attempt's time cut (both end at the same instant),
/// gave up after retrying: the outer call does not run it all again. 3 requests, not 9.
#[tokio::test(start_paused = true)]
async fn a_nested_call_that_retried_then_ran_out_of_the_outer_attempts_time_is_not_retried() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let e = page_of_recs(&client(), &server.url("/")).await.unwrap_err();
    assert_eq!(
        server.count(),
        3,
        "the inner call's three requests only: {e}"
    );
    assert_eq!(e.attempts(), 3, "the inner call's attempts: {e}");
    assert!(e.is_timeout(), "{e}");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn recommendations(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// An optional nested call whose failure the body swallows, then a request of the body's own.
#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn page(c: &reqwest::Client, recs: &str, user: &str) -> Result<String, Error> {
    let recs = recommendations(c, recs).await.unwrap_or_default();
    let user = c.get(user).send().await?.error_for_status()?.text().await?;
    Ok(format!("{user}{recs}"))
}

#[tokio::test(start_paused = true)]
async fn a_swallowed_nested_failure_does_not_stop_the_retry_of_the_bodys_own() {
    let recs = FaultServer::start(Script::always(Action::reset())).await;
    let users = FaultServer::start(vec![Action::reset(), Action::ok().body("u")]).await;
    let r = page(&client(), &recs.url("/"), &users.url("/")).await;
    assert_eq!(
        r.unwrap(),
        "u",
        "the user GET, reset once, is retried by the only layer that can"
    );
    assert_eq!(
        recs.count(),
        3 * 2,
        "the inner call's 3 attempts per outer attempt"
    );
}

/// The same with the body's own request made through another annotated call that leaves
/// retries to its caller (`max_attempts = 1`).
#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    method = GET
)]
async fn page_through_a_helper(
    c: &reqwest::Client,
    recs: &str,
    user: &str,
) -> Result<String, Error> {
    let recs = recommendations(c, recs).await.unwrap_or_default();
    let user = inner_once(c, user).await?;
    Ok(format!("{user}{recs}"))
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn notify_once(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    idempotency_key = auto,
    timeout = "1s",
    deadline = "30s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn charge_then_notify_once(
    c: &reqwest::Client,
    pay: &str,
    notify: &str,
) -> Result<u16, Error> {
    let answer = c.post(pay).body("9.99").send().await?;
    let _ = notify_once(c, notify).await;
    Ok(answer.error_for_status()?.status().as_u16())
}

/// A keyed POST answered a plain 409 (the handler's conflict, no `Retry-After`), then a
/// nested call that failed on a 503 with `Retry-After`, handled: the call ends on the 409.
/// The nested call's `Retry-After` made it read as "still in progress", asked again with
/// the key until the deadline.
#[tokio::test(start_paused = true)]
async fn a_nested_calls_retry_after_does_not_make_a_plain_409_in_progress() {
    let pay = FaultServer::start(Script::always(Action::status(409))).await;
    let notify = FaultServer::start(Script::always(Action::status(503).retry_after(5))).await;
    let e = charge_then_notify_once(&client(), &pay.url("/pay"), &notify.url("/notify"))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(409), "{e}");
    assert_eq!(pay.count(), 1, "not asked again: {e}");
}

/// A service's own client (its `.send()` is not reqwest's): a lookup through it.
struct Users {
    http: reqwest::Client,
}

struct UserRequest(reqwest::RequestBuilder);

impl Users {
    fn get(&self, url: &str) -> UserRequest {
        UserRequest(self.http.get(url))
    }
}

impl UserRequest {
    async fn send(self) -> reqwest::Result<reqwest::Response> {
        self.0.send().await
    }
}

#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn page_through_a_service_client(
    c: &reqwest::Client,
    users: &Users,
    recs: &str,
    user: &str,
) -> Result<String, Error> {
    let recs = recommendations(c, recs).await.unwrap_or_default();
    let user = users
        .get(user)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(format!("{user}{recs}"))
}

/// The body went on after the nested call's failure through a send of another type than
/// reqwest's: a failure of that send is a later one, retried (it was taken for the nested
/// call's, which the outer call does not retry again).
#[tokio::test(start_paused = true)]
async fn a_swallowed_nested_failure_does_not_stop_the_retry_of_a_send_through_another_client() {
    let recs = FaultServer::start(Script::always(Action::reset())).await;
    let users = FaultServer::start(vec![Action::reset(), Action::ok().body("u")]).await;
    let service = Users { http: client() };
    let r =
        page_through_a_service_client(&client(), &service, &recs.url("/"), &users.url("/")).await;
    assert_eq!(r.unwrap(), "u", "the lookup, reset once, is retried");
    assert_eq!(users.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_swallowed_nested_failure_does_not_stop_the_retry_of_a_later_nested_call() {
    let recs = FaultServer::start(Script::always(Action::reset())).await;
    let users = FaultServer::start(vec![Action::reset(), Action::ok().body("u")]).await;
    let r = page_through_a_helper(&client(), &recs.url("/"), &users.url("/")).await;
    assert_eq!(
        r.unwrap(),
        "u",
        "the user GET, reset once in a call that does not retry, is retried around it"
    );
    assert_eq!(users.count(), 2);
}

/// A nested call's failure swallowed, then slow work of the body's own (a database read, a
/// cache) that outlasts the attempt: the attempt's timeout is a later failure, retried.
#[resilient(
    timeout = "500ms",
    deadline = "20s",
    max_attempts = 2,
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    method = GET
)]
async fn page_then_slow_work(c: &reqwest::Client, recs: &str) -> Result<String, Error> {
    let recs = recommendations(c, recs).await.unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(recs)
}

#[tokio::test(start_paused = true)]
async fn a_swallowed_nested_failure_does_not_stop_the_retry_of_the_attempts_timeout() {
    let recs = FaultServer::start(Script::always(Action::status(503))).await;
    let e = page_then_slow_work(&client(), &recs.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
    assert_eq!(e.attempts(), 2, "the timeout is retried: {e}");
    assert_eq!(
        recs.count(),
        3 * 2,
        "the inner call's 3 attempts per outer attempt"
    );
}

/// A nested call's failure swallowed, then a timeout of the body's own (a database read
/// given the attempt's time left) that ends in the same instant as the attempt: the attempt's
/// own timeout, retried; the nested call gave up long before, its failure handled.
#[resilient(
    timeout = "500ms",
    deadline = "20s",
    max_attempts = 2,
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    method = GET
)]
async fn page_then_a_timed_read(c: &reqwest::Client, recs: &str) -> Result<String, Error> {
    let recs = recommendations(c, recs).await.unwrap_or_default();
    let left = resilience_runtime::current_attempt().unwrap().time_left;
    // The read hangs: its own timeout, the attempt's time left, ends it.
    match tokio::time::timeout(left, std::future::pending::<()>()).await {
        Ok(()) => Ok(recs),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "db read").into()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_swallowed_nested_failure_does_not_stop_the_retry_of_a_timeout_of_the_bodys_own() {
    let recs = FaultServer::start(Script::always(Action::status(503))).await;
    let e = page_then_a_timed_read(&client(), &recs.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 2, "the timeout is retried: {e}");
    assert_eq!(
        recs.count(),
        3 * 2,
        "the inner call's 3 attempts per outer attempt"
    );
}

#[resilient(
    timeout = "1s",
    max_attempts = 3,
    budget = false,
    backoff(initial = "10ms", max = "10ms"),
    breaker(
        failure_rate = 0.5,
        min_calls = 1,
        window = 1,
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn opens_its_breaker_mid_call(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn attempts_counts_the_attempts_that_ran_when_the_breaker_opens_mid_call() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = opens_its_breaker_mid_call(&client(), &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(server.count(), 1);
    assert_eq!(
        e.attempts(),
        1,
        "one attempt ran, the second was refused: {e}"
    );
    // Refused before it starts: none ran (`Error::attempts`: "0: none was allowed to start"),
    // and the call's report says the same.
    let (e, report) = measure(opens_its_breaker_mid_call(&client(), &server.url("/"))).await;
    let e = e.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(e.attempts(), 0, "{e}");
    assert_eq!(report.expect("reported").attempts, 0);
    assert!(e.is_rejected(), "{e}");
}

#[resilient(
    timeout = "1s",
    max_attempts = 3,
    budget = false,
    idempotency_key = auto,
    backoff(initial = "10ms", max = "10ms"),
    breaker(
        failure_rate = 0.5,
        min_calls = 1,
        window = 1,
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn charge_opening_its_breaker(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A keyed POST whose attempt timed out (it may have charged), then refused by the breaker
/// that attempt opened: not "rejected" (something was sent), and the message names the key
/// and the timeout, as after any attempt that may have been carried out. It once said
/// `is_rejected()` and "(last failure: rejected)", no key: a caller trusting it would charge
/// again under another key.
#[tokio::test(start_paused = true)]
async fn a_breaker_opened_mid_call_does_not_hide_an_attempt_that_may_have_charged() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let e = charge_opening_its_breaker(&client(), &server.url("/charges"))
        .await
        .unwrap_err();
    let sent = server.requests()[0]
        .header("idempotency-key")
        .unwrap()
        .to_owned();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!((e.attempts(), server.count()), (1, 1), "{e}");
    assert!(!e.is_rejected(), "{e}");
    assert_eq!(e.class(), Some(resilience_runtime::Class::Timeout), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "[Idempotency-Key {sent}: the request may have been carried out"
        )),
        "{e}"
    );
}

/// An audit POST sent from a task the body spawns, then the order: the spawned request is
/// stamped where the body made it, so it carries the call's key like the order.
#[resilient(idempotency_key = auto, max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn order_with_spawned_audit(
    c: &reqwest::Client,
    audit: &str,
    orders: &str,
) -> Result<u16, Error> {
    let sent = tokio::spawn(c.post(audit).body("audit").send());
    let status = c
        .post(orders)
        .body("order")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16();
    let _ = sent.await;
    Ok(status)
}

#[tokio::test(start_paused = true)]
async fn a_request_sent_from_a_spawned_task_carries_the_calls_key() {
    let audit = FaultServer::start(Script::always(Action::ok())).await;
    let orders = FaultServer::start(vec![Action::status(503), Action::ok()]).await;
    let got = order_with_spawned_audit(&client(), &audit.url("/audit"), &orders.url("/orders"))
        .await
        .unwrap();
    assert_eq!(got, 200);
    let key = orders.requests()[0]
        .idempotency_key()
        .expect("keyed")
        .to_owned();
    let audits = audit.requests();
    assert_eq!(audits.len(), 2, "the body ran twice");
    for a in &audits {
        assert_eq!(
            a.idempotency_key(),
            Some(key.as_str()),
            "the spawned POST is keyed"
        );
    }
}

/// Unkeyed: an audit POST sent from a spawned task, then a GET that cannot connect. The
/// attempt never learns the POST's outcome: it may have been carried out, so the connect
/// failure is not retried (the POST would go out again).
#[resilient(method = POST, retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn spawned_audit_then_lookup(
    c: &reqwest::Client,
    audit: &str,
    stock: &str,
) -> Result<u16, Error> {
    let sent = tokio::spawn(c.post(audit).body("audit").send());
    let _ = sent.await;
    Ok(c.get(stock).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_request_sent_from_a_spawned_task_is_not_resent_unkeyed() {
    let audit = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/", resilience_fault_server::refused_addr());
    let e = spawned_audit_then_lookup(&client(), &audit.url("/audit"), &refused)
        .await
        .unwrap_err();
    assert_eq!(audit.count(), 1, "the POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
}

/// A client wrapper of the service's own (a middleware stack): its `execute` takes a
/// `reqwest::Request` but returns its own error type, so the runtime stamps the request and
/// never sees the outcome.
struct Middleware(reqwest::Client);

#[derive(Debug)]
struct MiddlewareError(#[allow(dead_code)] reqwest::Error);

impl std::fmt::Display for MiddlewareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("middleware failed")
    }
}

impl std::error::Error for MiddlewareError {}

impl From<MiddlewareError> for Error {
    fn from(e: MiddlewareError) -> Error {
        Error::call(e)
    }
}

impl Middleware {
    async fn execute(&self, req: reqwest::Request) -> Result<reqwest::Response, MiddlewareError> {
        self.0.execute(req).await.map_err(MiddlewareError)
    }
}

#[resilient(method = POST, retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn order_via_middleware_then_lookup(
    c: &reqwest::Client,
    mw: &Middleware,
    orders: &str,
    stock: &str,
) -> Result<u16, Error> {
    mw.execute(c.post(orders).body("qty=1").build()?).await?;
    Ok(c.get(stock).send().await?.status().as_u16())
}

/// The POST went through the wrapper (answered 200, outcome unseen), then the lookup could not
/// connect: running the body again would send the POST again.
#[tokio::test(start_paused = true)]
async fn a_post_through_a_wrapper_client_is_not_resent_after_a_connect_failure() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/", resilience_fault_server::refused_addr());
    let e = order_via_middleware_then_lookup(
        &client(),
        &Middleware(client()),
        &orders.url("/orders"),
        &refused,
    )
    .await
    .unwrap_err();
    assert_eq!(orders.count(), 1, "the POST went out once: {e}");
    assert!(
        orders.requests()[0].header("x-request-id").is_some(),
        "stamped"
    );
    assert_eq!(e.attempts(), 1, "{e}");
}

/// The nested call's failure kept, the body's own request made, then the failure returned:
/// the error is the nested call's, already retried as far as its policy allowed.
#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn page_needing_recs(c: &reqwest::Client, recs: &str, user: &str) -> Result<String, Error> {
    let recs = recommendations(c, recs).await;
    let user = c.get(user).send().await?.error_for_status()?.text().await?;
    Ok(format!("{user}{}", recs?))
}

#[tokio::test(start_paused = true)]
async fn a_nested_failure_returned_after_the_bodys_own_request_is_not_retried_again() {
    let recs = FaultServer::start(Script::always(Action::reset())).await;
    let users = FaultServer::start(Script::always(Action::ok().body("u"))).await;
    let e = page_needing_recs(&client(), &recs.url("/"), &users.url("/"))
        .await
        .unwrap_err();
    assert_eq!(
        recs.count(),
        3,
        "3 attempts inside, none again around them: {e}"
    );
    assert_eq!(users.count(), 1, "{e}");
}

/// The same through a service's own error type, the runtime's error inside it.
#[derive(Debug, thiserror::Error)]
enum PageError {
    #[error("upstream: {0}")]
    Upstream(#[from] Error),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
}

#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn page_needing_recs_typed(
    c: &reqwest::Client,
    recs: &str,
    user: &str,
) -> Result<String, PageError> {
    let recs = recommendations(c, recs).await;
    let user = c.get(user).send().await?.error_for_status()?.text().await?;
    Ok(format!("{user}{}", recs?))
}

#[tokio::test(start_paused = true)]
async fn a_nested_failure_returned_later_in_a_services_own_error_is_not_retried_again() {
    let recs = FaultServer::start(Script::always(Action::reset())).await;
    let users = FaultServer::start(Script::always(Action::ok().body("u"))).await;
    let e = page_needing_recs_typed(&client(), &recs.url("/"), &users.url("/"))
        .await
        .unwrap_err();
    assert_eq!(
        recs.count(),
        3,
        "3 attempts inside, none again around them: {e}"
    );
    assert_eq!(users.count(), 1, "{e}");
}

/// The same with the runtime's error in an `#[error(transparent)]` variant, as the README
/// recommends for a service's own error type: its `source()` skips the runtime's error (to
/// that error's cause), which the enclosing call once never found, retrying the nested
/// call's failure again around it (9 requests to the dead dependency, not 3).
#[derive(Debug, thiserror::Error)]
enum PageErrorTransparent {
    #[error(transparent)]
    Upstream(#[from] Error),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn page_needing_recs_transparent(
    c: &reqwest::Client,
    recs: &str,
    user: &str,
) -> Result<String, PageErrorTransparent> {
    let recs = recommendations(c, recs).await;
    let user = c.get(user).send().await?.error_for_status()?.text().await?;
    Ok(format!("{user}{}", recs?))
}

#[tokio::test(start_paused = true)]
async fn a_nested_failure_returned_later_through_a_transparent_variant_is_not_retried_again() {
    let recs = FaultServer::start(Script::always(Action::reset())).await;
    let users = FaultServer::start(Script::always(Action::ok().body("u"))).await;
    let e = page_needing_recs_transparent(&client(), &recs.url("/"), &users.url("/"))
        .await
        .unwrap_err();
    assert!(matches!(e, PageErrorTransparent::Upstream(_)), "{e:?}");
    assert_eq!(
        recs.count(),
        3,
        "3 attempts inside, none again around them: {e}"
    );
    assert_eq!(users.count(), 1, "{e}");
}

#[resilient(
    method = POST,
    timeout = "1s",
    max_attempts = 1,
    breaker(
        failure_rate = 0.5,
        min_calls = 1,
        window = 1,
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn notify_merchant(c: &reqwest::Client, url: &str) -> Result<(), Error> {
    c.post(url).body("paid").send().await?.error_for_status()?;
    Ok(())
}

/// A service's own error type as users write it, the runtime's error in a transparent variant.
#[derive(Debug, thiserror::Error)]
enum CheckoutError {
    #[error(transparent)]
    Resilience(#[from] Error),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

#[resilient(idempotency_key = auto, timeout = "1s", max_attempts = 3)]
async fn checkout_then_notify(
    c: &reqwest::Client,
    charges: &str,
    notify: &str,
) -> Result<u16, CheckoutError> {
    let status = c
        .post(charges)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .status();
    notify_merchant(c, notify).await?;
    Ok(status.as_u16())
}

/// The same with a hedge (each attempt in a context of its own), never started here.
#[resilient(
    idempotency_key = auto,
    timeout = "1s",
    max_attempts = 3,
    hedge(delay = "500ms")
)]
async fn checkout_hedged_then_notify(
    c: &reqwest::Client,
    charges: &str,
    notify: &str,
) -> Result<u16, CheckoutError> {
    let status = c
        .post(charges)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .status();
    notify_merchant(c, notify).await?;
    Ok(status.as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 4,
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn stock_on_hand(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// The same, the refusal beside a nested call that retried three times before it failed (its
/// errors' records, gone, make way for the refusal's).
#[resilient(idempotency_key = auto, timeout = "1s", max_attempts = 3)]
async fn checkout_then_notify_and_stock(
    c: &reqwest::Client,
    charges: &str,
    notify: &str,
    stock: &str,
) -> Result<u16, CheckoutError> {
    let status = c
        .post(charges)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .status();
    let (notified, _stock) = tokio::join!(notify_merchant(c, notify), stock_on_hand(c, stock));
    notified?;
    Ok(status.as_u16())
}

/// The same, the type holding the runtime's error without being an error type at all.
#[derive(Debug)]
enum PlainCheckoutError {
    #[allow(dead_code)]
    Resilience(Error),
    #[allow(dead_code)]
    Http(reqwest::Error),
}

impl From<Error> for PlainCheckoutError {
    fn from(e: Error) -> Self {
        PlainCheckoutError::Resilience(e)
    }
}

impl From<reqwest::Error> for PlainCheckoutError {
    fn from(e: reqwest::Error) -> Self {
        PlainCheckoutError::Http(e)
    }
}

#[resilient(idempotency_key = auto, timeout = "1s", max_attempts = 3)]
async fn checkout_then_notify_plain(
    c: &reqwest::Client,
    charges: &str,
    notify: &str,
) -> Result<u16, PlainCheckoutError> {
    let status = c
        .post(charges)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .status();
    notify_merchant(c, notify).await?;
    Ok(status.as_u16())
}

/// A nested call refused by its open breaker after the enclosing call's keyed POST was
/// charged, returned inside the service's own error type: the error the caller gets says one
/// attempt ran, names the charge's key and that it may have been carried out, and is not
/// "rejected". It once said 0 attempts, no key, `is_rejected()` ("nothing was sent"): a
/// caller trusting it would charge again under a new key.
#[tokio::test(start_paused = true)]
async fn a_nested_refusal_inside_a_services_own_error_names_the_charge() {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/notify" || seen.path == "/stock" {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let c = client();
    // The merchant's endpoint fails once: the nested call's breaker opens.
    let first = checkout_then_notify(&c, &shop.url("/charges"), &shop.url("/notify"))
        .await
        .unwrap_err();
    assert_eq!(shop.count_path("/charges"), 1, "{first}");
    // The nested call's own failure, inside the same type: the charge's key named too.
    let CheckoutError::Resilience(inner) = &first else {
        panic!("the nested call's failure, inside: {first:?}");
    };
    assert_eq!(
        inner.idempotency_key(),
        shop.requests()[0].idempotency_key(),
        "{inner}"
    );
    assert!(inner.idempotency_key().is_some(), "{inner}");
    let e = checkout_then_notify(&c, &shop.url("/charges"), &shop.url("/notify"))
        .await
        .unwrap_err();
    assert_eq!(
        (shop.count_path("/charges"), shop.count_path("/notify")),
        (2, 1),
        "{e}"
    );
    let CheckoutError::Resilience(inner) = &e else {
        panic!("the refusal, inside: {e:?}");
    };
    assert_eq!(inner.kind(), ErrorKind::CircuitOpen, "{inner}");
    let charged = shop.requests()[2]
        .idempotency_key()
        .expect("the charge was keyed")
        .to_owned();
    assert_eq!(inner.attempts(), 1, "{inner}");
    assert!(!inner.is_rejected(), "something was sent: {inner}");
    assert_eq!(inner.idempotency_key(), Some(charged.as_str()), "{inner}");
    assert!(
        inner.to_string().contains(&charged)
            && inner.to_string().contains("may have been carried out"),
        "{inner}"
    );

    let e = checkout_hedged_then_notify(&c, &shop.url("/charges"), &shop.url("/notify"))
        .await
        .unwrap_err();
    let CheckoutError::Resilience(inner) = &e else {
        panic!("the refusal, inside: {e:?}");
    };
    let charged = shop.requests()[3]
        .idempotency_key()
        .expect("the charge was keyed")
        .to_owned();
    assert_eq!(
        (
            inner.attempts(),
            inner.is_rejected(),
            inner.idempotency_key()
        ),
        (1, false, Some(charged.as_str())),
        "hedged: {inner}"
    );

    let e = checkout_then_notify_and_stock(
        &c,
        &shop.url("/charges"),
        &shop.url("/notify"),
        &shop.url("/stock"),
    )
    .await
    .unwrap_err();
    assert_eq!(shop.count_path("/stock"), 4, "{e}");
    let CheckoutError::Resilience(inner) = &e else {
        panic!("the refusal, inside: {e:?}");
    };
    assert_eq!(
        (
            inner.attempts(),
            inner.is_rejected(),
            inner.idempotency_key()
        ),
        (1, false, shop.requests()[4].idempotency_key()),
        "beside a retried call: {inner}"
    );

    let e = checkout_then_notify_plain(&c, &shop.url("/charges"), &shop.url("/notify"))
        .await
        .unwrap_err();
    let PlainCheckoutError::Resilience(inner) = &e else {
        panic!("the refusal, inside: {e:?}");
    };
    let charged = shop.requests()[9]
        .idempotency_key()
        .expect("the charge was keyed")
        .to_owned();
    assert_eq!(
        (
            inner.attempts(),
            inner.is_rejected(),
            inner.idempotency_key()
        ),
        (1, false, Some(charged.as_str())),
        "{inner}"
    );
}

/// The same shapes in a service's client: the nested call a method of `self`, its failure
/// returned later, boxed or in `anyhow` (both carry the runtime's `Error` with its mark).
struct Pages {
    http: reqwest::Client,
}

impl Pages {
    #[resilient(
        timeout = "1s",
        deadline = "10s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn recs(&self, url: &str) -> Result<String, Error> {
        Ok(self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    #[resilient(
        timeout = "5s",
        deadline = "20s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn page_anyhow(&self, recs: &str, user: &str) -> anyhow::Result<String> {
        let recs = self.recs(recs).await;
        let user = self
            .http
            .get(user)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(format!("{user}{}", recs?))
    }

    #[resilient(
        timeout = "5s",
        deadline = "20s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn page_boxed(
        &self,
        recs: &str,
        user: &str,
    ) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let recs = self.recs(recs).await;
        let user = self
            .http
            .get(user)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(format!("{user}{}", recs?))
    }

    #[resilient(
        timeout = "5s",
        deadline = "20s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn page_eyre(&self, recs: &str, user: &str) -> eyre::Result<String> {
        let recs = self.recs(recs).await;
        let user = self
            .http
            .get(user)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(format!("{user}{}", recs?))
    }
}

/// "3 requests against a dead dependency, not 9", through `self.recs(..).await`, the failure
/// returned after the body's own request, in `anyhow`, `eyre` and boxed.
#[tokio::test(start_paused = true)]
async fn a_nested_method_of_self_is_retried_at_one_layer_in_anyhow_eyre_and_boxed() {
    let pages = Pages { http: client() };
    let users = FaultServer::start(Script::always(Action::ok().body("u"))).await;
    let recs = FaultServer::start(Script::always(Action::reset())).await;
    let e = pages
        .page_anyhow(&recs.url("/"), &users.url("/"))
        .await
        .unwrap_err();
    assert_eq!(
        recs.count(),
        3,
        "anyhow: 3 attempts inside, none around: {e}"
    );
    assert_eq!(users.count(), 1, "{e}");
    recs.clear();
    let e = pages
        .page_boxed(&recs.url("/"), &users.url("/"))
        .await
        .unwrap_err();
    assert_eq!(
        recs.count(),
        3,
        "boxed: 3 attempts inside, none around: {e}"
    );
    assert_eq!(users.count(), 2, "{e}");
    recs.clear();
    let e = pages
        .page_eyre(&recs.url("/"), &users.url("/"))
        .await
        .unwrap_err();
    assert_eq!(recs.count(), 3, "eyre: 3 attempts inside, none around: {e}");
    assert_eq!(users.count(), 3, "{e}");
    let own = e.downcast_ref::<Error>().expect("the runtime's error");
    assert_eq!(own.attempts(), 3, "{own}");
}

#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn page_wrapped_in_anyhow(
    c: &reqwest::Client,
    recs: &str,
    user: &str,
) -> anyhow::Result<String> {
    let recs = recommendations(c, recs).await.map_err(PageError::Upstream);
    let user = c.get(user).send().await?.error_for_status()?.text().await?;
    Ok(format!("{user}{}", recs?))
}

#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn page_wrapped_in_a_box(
    c: &reqwest::Client,
    recs: &str,
    user: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let recs = recommendations(c, recs).await.map_err(PageError::Upstream);
    let user = c.get(user).send().await?.error_for_status()?.text().await?;
    Ok(format!("{user}{}", recs?))
}

#[resilient(
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn page_wrapped_in_io(
    c: &reqwest::Client,
    recs: &str,
    user: &str,
) -> std::io::Result<String> {
    let recs = recommendations(c, recs)
        .await
        .map_err(|e| std::io::Error::other(PageError::Upstream(e)));
    let user = async { c.get(user).send().await?.error_for_status()?.text().await }
        .await
        .map_err(std::io::Error::other)?;
    Ok(format!("{user}{}", recs?))
}

/// The nested call's error wrapped in the service's own type (`map_err(PageError::Upstream)`,
/// the README's `#[from]` wrapper), then returned later in `anyhow` or a box: found in the
/// report's chain, as it is when the service's type is returned itself. Only the report's
/// outermost error was looked at: 9 requests to the dead dependency, not 3.
#[tokio::test(start_paused = true)]
async fn a_nested_failure_wrapped_then_boxed_or_in_anyhow_is_not_retried_again() {
    let recs = FaultServer::start(Script::always(Action::reset())).await;
    let users = FaultServer::start(Script::always(Action::ok().body("u"))).await;
    let e = page_wrapped_in_anyhow(&client(), &recs.url("/"), &users.url("/"))
        .await
        .unwrap_err();
    assert_eq!(
        recs.count(),
        3,
        "anyhow: 3 attempts inside, none around: {e}"
    );
    assert_eq!(users.count(), 1, "{e}");
    recs.clear();
    let e = page_wrapped_in_a_box(&client(), &recs.url("/"), &users.url("/"))
        .await
        .unwrap_err();
    assert_eq!(
        recs.count(),
        3,
        "boxed: 3 attempts inside, none around: {e}"
    );
    assert_eq!(users.count(), 2, "{e}");
    recs.clear();
    let e = page_wrapped_in_io(&client(), &recs.url("/"), &users.url("/"))
        .await
        .unwrap_err();
    assert_eq!(recs.count(), 3, "io: 3 attempts inside, none around: {e}");
    assert_eq!(users.count(), 3, "{e}");
}

// --- Helpers handed the client --------------------------------------------------------------

/// A helper of the service's own: its POST goes out unseen (not rewritten, no key).
async fn create_order(c: &reqwest::Client, url: &str) -> reqwest::Result<reqwest::Response> {
    c.post(url).body("order").send().await
}

/// The method inferred from the body's own `.get(`; the helper's POST unseen beside it.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_then_stock(c: &reqwest::Client, orders: &str, stock: &str) -> Result<String, Error> {
    create_order(c, orders).await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Calls `$f(client, orders, stock)` against an orders server that answers and a stock server
/// that answers 503: the call fails, and the order was placed once. Its error and the stock
/// server, for more checks.
/// Through a plain `reqwest::Client` first (it reports nothing to the attempt: the rewrite's
/// own rules alone keep the POST from going again), then the settings' client (which reports
/// each request it completes); the second's error and stock server returned.
macro_rules! placed_once {
    ($f:ident) => {{
        let mut placed = None;
        for (plain, c) in [(true, reqwest::Client::new()), (false, client())] {
            let orders = FaultServer::start(Script::always(Action::ok())).await;
            let stock = FaultServer::start(Script::always(Action::status(503))).await;
            let e = $f(&c, &orders.url("/orders"), &stock.url("/stock"))
                .await
                .unwrap_err();
            assert_eq!(
                orders.count(),
                1,
                "{} (plain client: {plain}): the order placed once: {e}",
                stringify!($f)
            );
            if !plain {
                placed = Some((e, stock));
            }
        }
        placed.unwrap()
    }};
}

/// The body's GET answered 503 after the helper's POST went out: running the body again
/// would send the POST again, unkeyed. Not retried.
#[tokio::test(start_paused = true)]
async fn a_helpers_unseen_post_beside_the_bodys_get_is_not_resent() {
    let (e, stock) = placed_once!(order_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
}

/// The same helper adapted on its way to the `.await`, or handed to `try_join!` beside the
/// body's GET: watched all the same.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_instrumented_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use tracing::Instrument as _;
    create_order(c, orders)
        .instrument(tracing::info_span!("order"))
        .await?
        .error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_joined_with_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let (order, stock) = tokio::try_join!(create_order(c, orders), c.get(stock).send())?;
    order.error_for_status()?;
    Ok(stock.error_for_status()?.text().await?)
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_beside_a_block_of_gets(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let (order, stock) = tokio::try_join!(create_order(c, orders), async {
        c.get(stock).send().await?.error_for_status()
    })?;
    order.error_for_status()?;
    Ok(stock.text().await?)
}

/// A helper joined with a branch that sends while the helper runs (an `async` block's GET,
/// stamped after the helper's first poll): that GET is the branch's, not the helper's, so
/// the helper's POST still counts as unseen and the body is not run again after the GET's 503
/// (it was: any send seen in the attempt while the helper ran made it look seen, and the
/// order went out twice, unkeyed). A client built by hand: no completion is reported.
#[tokio::test(start_paused = true)]
async fn a_helper_is_not_seen_by_what_a_join_beside_it_sends() {
    let orders = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(50)),
    ))
    .await;
    let stock = FaultServer::start(Script::always(Action::status(503))).await;
    let e = order_beside_a_block_of_gets(
        &reqwest::Client::new(),
        &orders.url("/orders"),
        &stock.url("/stock"),
    )
    .await
    .unwrap_err();
    assert_eq!(orders.count(), 1, "the order placed once: {e}");
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_helper_adapted_or_joined_is_watched_too() {
    placed_once!(order_instrumented_then_stock);
    placed_once!(order_joined_with_stock);
}

/// The same helper's future kept in a variable and polled later: joined with the body's GET,
/// awaited after an adapter, raced against a timer. Watched where the future is made.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_kept_then_joined(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let order = create_order(c, orders);
    let level = c.get(stock).send();
    let (order, level) = tokio::try_join!(order, level)?;
    order.error_for_status()?;
    Ok(level.error_for_status()?.text().await?)
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_kept_then_awaited(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use tracing::Instrument as _;
    let order = create_order(c, orders).instrument(tracing::info_span!("order"));
    order.await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_raced_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    tokio::select! {
        r = create_order(c, orders) => { r?.error_for_status()?; }
        _ = tokio::time::sleep(Duration::from_secs(1)) => return Ok("no order".to_owned()),
    }
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Raced with `futures::select!`, whose arms must be `FusedFuture`: watched under `.fuse()`.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_raced_fused_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::FutureExt as _;
    futures::select! {
        r = create_order(c, orders).fuse() => { r?.error_for_status()?; }
        _ = tokio::time::sleep(Duration::from_secs(1)).fuse() => return Ok("no order".to_owned()),
    }
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Kept, then awaited under a timeout of the body's own.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_kept_then_timed(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let order = create_order(c, orders);
    if let Ok(placed) = tokio::time::timeout(Duration::from_secs(1), order).await {
        placed?.error_for_status()?;
    }
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_helpers_future_kept_or_raced_is_watched_too() {
    placed_once!(order_kept_then_timed);
    placed_once!(order_raced_fused_then_stock);
    placed_once!(order_kept_then_joined);
    placed_once!(order_kept_then_awaited);
    placed_once!(order_raced_then_stock);
}

/// A helper of the service's own handed what the body's own GET answered.
async fn create_order_at(
    c: &reqwest::Client,
    url: &str,
    level: u16,
) -> reqwest::Result<reqwest::Response> {
    c.post(url).body(level.to_string()).send().await
}

/// The helper's arguments hold a send, awaited there (it ended before the helper started): the
/// helper is watched all the same.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_at_stock_level(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    create_order_at(c, orders, c.get(stock).send().await?.status().as_u16())
        .await?
        .error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_helper_handed_an_awaited_send_is_watched() {
    placed_once!(order_at_stock_level);
}

/// A macro of the service's own that places the order: its expansion sends a POST the body's
/// tokens do not show.
macro_rules! place {
    ($c:expr, $url:expr) => {
        $c.post($url).body("order").send()
    };
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_by_macro_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    place!(c, orders).await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Its POST goes out unseen and unkeyed beside the body's GET: the 503 of the GET is not
/// retried, and the order is placed once.
#[tokio::test(start_paused = true)]
async fn a_post_sent_by_a_macro_of_ones_own_is_not_resent() {
    placed_once!(order_by_macro_then_stock);
}

/// The same macro handed a client held in a struct (`self.http`), and a macro whose input is
/// no list of expressions (`place_to!(c => url)`): their POSTs once went out unseen (a macro
/// mentioning `self` was taken to send nothing, and one not read as a list was searched for a
/// written `.send(` only), and the GET's 503 was retried, placing the order three times.
macro_rules! place_to {
    ($c:expr => $url:expr) => {
        $c.post($url).body("order").send()
    };
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_by_arrow_macro_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    place_to!(c => orders).await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

struct Storefront {
    http: reqwest::Client,
}

impl Storefront {
    #[resilient(
        timeout = "2s",
        deadline = "20s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn order_then_stock(&self, orders: &str, stock: &str) -> Result<String, Error> {
        place!(self.http, orders).await?.error_for_status()?;
        Ok(self
            .http
            .get(stock)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

async fn shop_order_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    Storefront { http: c.clone() }
        .order_then_stock(orders, stock)
        .await
}

#[tokio::test(start_paused = true)]
async fn a_post_sent_by_a_macro_handed_a_field_or_read_whole_is_not_resent() {
    placed_once!(order_by_arrow_macro_then_stock);
    placed_once!(shop_order_then_stock);
}

/// A helper under an adapter the rewrite does not list (an extension trait of the service's
/// own, `futures`' `.then`), and one reached through a value a call made (`OrderApi::new(c)
/// .place(url)`): each watched whole where it is awaited. They once went neither watched nor
/// counted unseen, and the GET's 503 ran the body again: the order placed three times.
trait Within: std::future::Future + Sized {
    fn within(self, d: Duration) -> tokio::time::Timeout<Self> {
        tokio::time::timeout(d, self)
    }
}

impl<F: std::future::Future> Within for F {}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_within_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let _ = create_order(c, orders)
        .within(Duration::from_millis(500))
        .await;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_then_chained_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::FutureExt as _;
    create_order(c, orders)
        .then(|r| async move { r })
        .await?
        .error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

struct OrderApi<'a> {
    http: &'a reqwest::Client,
}

impl<'a> OrderApi<'a> {
    fn new(http: &'a reqwest::Client) -> OrderApi<'a> {
        OrderApi { http }
    }

    async fn place(&self, url: &str) -> reqwest::Result<reqwest::Response> {
        self.http.post(url).body("order").send().await
    }
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_through_an_api_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    OrderApi::new(c).place(orders).await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_spawned_within_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    tokio::spawn(
        create_order_owned(c.clone(), orders.to_owned()).within(Duration::from_millis(500)),
    );
    // The order's task has run by the time the GET is answered.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Helpers reached through `self`, under an unlisted adapter or through a value a method of
/// `self` or a call handed `self`'s client made: watched whole too.
struct Counter {
    http: reqwest::Client,
}

impl Counter {
    async fn place(&self, url: &str) -> reqwest::Result<reqwest::Response> {
        self.http.post(url).body("order").send().await
    }

    fn orders(&self) -> OrderApi<'_> {
        OrderApi::new(&self.http)
    }

    #[resilient(
        timeout = "2s",
        deadline = "20s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn place_within_then_stock(&self, orders: &str, stock: &str) -> Result<String, Error> {
        let _ = self.place(orders).within(Duration::from_millis(500)).await;
        Ok(self
            .http
            .get(stock)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    #[resilient(
        timeout = "2s",
        deadline = "20s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn place_through_orders_then_stock(
        &self,
        orders: &str,
        stock: &str,
    ) -> Result<String, Error> {
        self.orders().place(orders).await?.error_for_status()?;
        Ok(self
            .http
            .get(stock)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    #[resilient(
        timeout = "2s",
        deadline = "20s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn place_through_an_api_then_stock(
        &self,
        orders: &str,
        stock: &str,
    ) -> Result<String, Error> {
        OrderApi::new(&self.http)
            .place(orders)
            .await?
            .error_for_status()?;
        Ok(self
            .http
            .get(stock)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

async fn counter_within(c: &reqwest::Client, orders: &str, stock: &str) -> Result<String, Error> {
    Counter { http: c.clone() }
        .place_within_then_stock(orders, stock)
        .await
}

async fn counter_orders(c: &reqwest::Client, orders: &str, stock: &str) -> Result<String, Error> {
    Counter { http: c.clone() }
        .place_through_orders_then_stock(orders, stock)
        .await
}

async fn counter_api(c: &reqwest::Client, orders: &str, stock: &str) -> Result<String, Error> {
    Counter { http: c.clone() }
        .place_through_an_api_then_stock(orders, stock)
        .await
}

#[tokio::test(start_paused = true)]
async fn a_helper_reached_through_self_under_an_adapter_or_a_value_is_watched() {
    placed_once!(counter_within);
    placed_once!(counter_orders);
    placed_once!(counter_api);
}

#[tokio::test(start_paused = true)]
async fn a_helper_under_an_unlisted_adapter_or_reached_through_a_value_is_watched() {
    placed_once!(order_within_then_stock);
    placed_once!(order_then_chained_then_stock);
    placed_once!(order_through_an_api_then_stock);
    // Spawned under the adapter: counted unseen.
    placed_once!(order_spawned_within_then_stock);
}

/// The helper's futures made in a closure and collected for a `join_all`, beside the body's
/// GET: the rewrite cannot wrap each where it is polled, so the attempt is taken to have sent
/// the least safe method.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn orders_joined_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let futs: Vec<_> = [orders].iter().map(|u| create_order(c, u)).collect();
    for placed in futures::future::join_all(futs).await {
        placed?.error_for_status()?;
    }
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The same pushed into a `FuturesUnordered` and drained.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn orders_unordered_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::StreamExt as _;
    let mut set = futures::stream::FuturesUnordered::new();
    set.push(create_order(c, orders));
    while let Some(placed) = set.next().await {
        placed?.error_for_status()?;
    }
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The same kept in a binding with its type written, awaited later.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_typed_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::FutureExt as _;
    let order: futures::future::BoxFuture<'_, reqwest::Result<reqwest::Response>> =
        create_order(c, orders).boxed();
    order.await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The helper's future kept pinned and raced in a loop through `.as_mut()`, as a pinned box
/// or as the `BoxFuture` a helper returns: the rewrite watches it where it is made and the
/// body compiles as written.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_pinned_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let mut order = Box::pin(create_order(c, orders));
    let placed = loop {
        tokio::select! {
            r = order.as_mut() => break r,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    };
    placed?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

fn create_order_boxed<'a>(
    c: &'a reqwest::Client,
    url: &'a str,
) -> futures::future::BoxFuture<'a, reqwest::Result<reqwest::Response>> {
    Box::pin(create_order(c, url))
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_boxed_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let mut order = create_order_boxed(c, orders);
    let placed = loop {
        tokio::select! {
            r = order.as_mut() => break r,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    };
    placed?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The same pinned on the stack with `std::pin::pin!` and raced through `&mut`.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_stack_pinned_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let mut order = std::pin::pin!(create_order(c, orders));
    let placed = loop {
        tokio::select! {
            r = &mut order => break r,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    };
    placed?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_kept_helper_raced_through_as_mut_is_watched() {
    let (e, stock) = placed_once!(order_pinned_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_boxed_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_stack_pinned_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
}

/// The same kept, then awaited in a task of its own (outside the attempt).
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_spawned_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let order = create_order_owned(c.clone(), orders.to_owned());
    let placed = tokio::spawn(order).await.expect("the task ran");
    placed?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

async fn create_order_owned(c: reqwest::Client, url: String) -> reqwest::Result<reqwest::Response> {
    create_order(&c, &url).await
}

/// The same spawned from a `select!` arm's handler, and from a future `join!` polls beside
/// the body's GET.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_spawned_in_select_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let mut tasks = tokio::task::JoinSet::new();
    tokio::select! {
        biased;
        _ = std::future::ready(()) => {
            tasks.spawn(create_order_owned(c.clone(), orders.to_owned()));
        }
    }
    while let Some(placed) = tasks.join_next().await {
        placed.expect("the task ran")?.error_for_status()?;
    }
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_spawned_in_join_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let mut tasks = tokio::task::JoinSet::new();
    let ((), stock) = tokio::join!(
        async {
            tasks.spawn(create_order_owned(c.clone(), orders.to_owned()));
        },
        c.get(stock).send(),
    );
    while let Some(placed) = tasks.join_next().await {
        placed.expect("the task ran")?.error_for_status()?;
    }
    Ok(stock?.error_for_status()?.text().await?)
}

/// Each places the order once, unkeyed: the GET's 503 is not retried.
#[tokio::test(start_paused = true)]
async fn helpers_collected_or_typed_are_not_resent() {
    let (e, stock) = placed_once!(orders_joined_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(orders_unordered_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_typed_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_spawned_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_spawned_in_select_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_spawned_in_join_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
}

/// Builders made in a closure and sent in the body are seen: a GET's 503 is retried.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn prices_from_builders(c: &reqwest::Client, urls: &[String]) -> Result<String, Error> {
    let mut out = String::new();
    for rb in urls.iter().map(|u| c.get(u)) {
        out += &rb.send().await?.error_for_status()?.text().await?;
    }
    Ok(out)
}

#[tokio::test(start_paused = true)]
async fn builders_made_in_a_closure_keep_the_retry() {
    let price = FaultServer::start(vec![Action::status(503), Action::ok().body("9")]).await;
    let got = prices_from_builders(&client(), &[price.url("/p")]).await;
    assert_eq!(got.unwrap(), "9");
    assert_eq!(price.count(), 2);
}

/// The same helper made visible (`.resilient()` stamps it, with the call's identities): the
/// runtime sees a POST, and a GET's 503 after it is not retried either; a GET helper is.
async fn stock_level(c: &reqwest::Client, url: &str) -> reqwest::Result<reqwest::Response> {
    use resilience_runtime::RequestBuilderExt as _;
    c.get(url).resilient().send().await
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn stock_then_price(c: &reqwest::Client, stock: &str, price: &str) -> Result<String, Error> {
    stock_level(c, stock).await?.error_for_status()?;
    Ok(c.get(price)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_helper_the_runtime_sees_keeps_the_retry() {
    let stock = FaultServer::start(Script::always(Action::ok())).await;
    let price = FaultServer::start(vec![Action::status(503), Action::ok().body("9")]).await;
    let got = stock_then_price(&client(), &stock.url("/s"), &price.url("/p")).await;
    assert_eq!(got.unwrap(), "9");
    assert_eq!((stock.count(), price.count()), (2, 2));
}

/// A keyed function's helper whose POST is written with `.resilient()`: seen, and carrying the
/// call's key, the same on every attempt, so the server can keep it to one, and the retry
/// stays.
async fn place_order(c: &reqwest::Client, url: &str) -> reqwest::Result<reqwest::Response> {
    use resilience_runtime::RequestBuilderExt as _;
    c.post(url).body("order").resilient().send().await
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    idempotency_key = auto
)]
async fn keyed_order_then_receipt(
    c: &reqwest::Client,
    orders: &str,
    receipt: &str,
) -> Result<String, Error> {
    place_order(c, orders).await?.error_for_status()?;
    Ok(c.get(receipt)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_keyed_functions_helper_post_carries_the_calls_key() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let receipt = FaultServer::start(vec![Action::status(503), Action::ok().body("r")]).await;
    let got = keyed_order_then_receipt(&client(), &orders.url("/o"), &receipt.url("/r")).await;
    assert_eq!(got.unwrap(), "r");
    let keys: Vec<_> = orders
        .requests()
        .iter()
        .map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 2, "the order sent on each of the two attempts");
    assert!(
        keys[0].is_some(),
        "the helper's POST carries the key: {keys:?}"
    );
    assert_eq!(keys[0], keys[1], "the same key on both attempts");
    // The body's own GET carries it too.
    assert_eq!(
        receipt.requests()[0].header("idempotency-key"),
        keys[0].as_deref()
    );
}

/// A service whose orders go through a method of its own and through a client it holds in a
/// field, each sending its POST without `.resilient()` (unseen, unkeyed); the annotated method
/// then reads the stock with a GET of its own.
struct Shop {
    http: reqwest::Client,
    payments: PaymentsClient,
}

struct PaymentsClient {
    http: reqwest::Client,
}

impl PaymentsClient {
    async fn charge(&self, url: &str) -> reqwest::Result<reqwest::Response> {
        self.http.post(url).body("9.99").send().await
    }
}

impl Shop {
    async fn place(&self, url: &str) -> reqwest::Result<reqwest::Response> {
        self.http.post(url).body("order").send().await
    }

    #[resilient(
        timeout = "2s",
        deadline = "20s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn place_then_stock(&self, orders: &str, stock: &str) -> Result<String, Error> {
        self.place(orders).await?.error_for_status()?;
        Ok(self
            .http
            .get(stock)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    #[resilient(
        timeout = "2s",
        deadline = "20s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn charge_then_stock(&self, charges: &str, stock: &str) -> Result<String, Error> {
        self.payments.charge(charges).await?.error_for_status()?;
        Ok(self
            .http
            .get(stock)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

/// The README's `self.place(order).await` and `self.payments.charge(o).await`: helpers of
/// `self` and of its fields are watched; seen sending nothing, their attempt counts as having
/// sent an unkeyed POST, so the GET's 503 after them runs nothing again.
#[tokio::test(start_paused = true)]
async fn helpers_of_self_and_of_its_fields_are_watched() {
    let shop = Shop {
        http: client(),
        payments: PaymentsClient { http: client() },
    };
    let posts = FaultServer::start(Script::always(Action::ok())).await;
    let stock = FaultServer::start(Script::always(Action::status(503))).await;
    let e = shop
        .place_then_stock(&posts.url("/orders"), &stock.url("/s"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.attempts(), posts.count(), stock.count()),
        (1, 1, 1),
        "{e}"
    );
    let e = shop
        .charge_then_stock(&posts.url("/charges"), &stock.url("/s"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.attempts(), posts.count(), stock.count()),
        (1, 2, 2),
        "{e}"
    );
}

/// A method of the service's own that sends nothing the runtime sees (here, a token from a
/// cache): the method inferred, it is taken for an unseen send; declared, the declaration
/// says what the body sends, helpers included, and the retry stays.
struct PricedApi {
    http: reqwest::Client,
    token: String,
}

impl PricedApi {
    async fn token(&self) -> String {
        tokio::task::yield_now().await;
        self.token.clone()
    }

    #[resilient(
        timeout = "2s",
        deadline = "20s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn price_inferred(&self, url: &str) -> Result<String, Error> {
        let t = self.token().await;
        Ok(self
            .http
            .get(url)
            .bearer_auth(t)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Keyed, its method declared (the helper fetches a token, nothing unsafe): a 409 "still
    /// in progress" is asked again until the replay.
    #[resilient(timeout = "2s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, idempotency_key = auto, method = POST)]
    async fn charge(&self, url: &str) -> Result<String, Error> {
        let t = self.token().await;
        Ok(self
            .http
            .post(url)
            .bearer_auth(t)
            .body("9")
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Keyed, the method inferred: the helper is watched as in an unkeyed function, since the
    /// key goes only on the requests the runtime stamps. Seen sending nothing, it may have sent
    /// a POST without the key: no ask for the replay runs the body again.
    #[resilient(timeout = "2s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false, idempotency_key = auto)]
    async fn charge_inferred(&self, url: &str) -> Result<String, Error> {
        let t = self.token().await;
        Ok(self
            .http
            .post(url)
            .bearer_auth(t)
            .body("9")
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    #[resilient(method = GET, timeout = "2s", deadline = "20s", backoff(initial = "10ms", max = "10ms"), budget = false)]
    async fn price_declared(&self, url: &str) -> Result<String, Error> {
        let t = self.token().await;
        Ok(self
            .http
            .get(url)
            .bearer_auth(t)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

#[tokio::test(start_paused = true)]
async fn a_helper_seen_sending_nothing_counts_as_unseen_unless_the_method_is_declared() {
    let api = PricedApi {
        http: client(),
        token: "t".into(),
    };
    let price = FaultServer::start(vec![Action::status(503), Action::ok().body("9")]).await;
    let e = api.price_inferred(&price.url("/p")).await.unwrap_err();
    assert_eq!((e.attempts(), price.count()), (1, 1), "{e}");
    price.clear();
    assert_eq!(api.price_declared(&price.url("/p")).await.unwrap(), "9");
    assert_eq!(price.count(), 2);
    // Keyed, the same helper ends the wait for the replay (it may have sent a POST without
    // the key), and the error names the key to look the outcome up with; declared, it does not.
    let charges = FaultServer::start(vec![
        Action::status(409).retry_after(1),
        Action::ok().body("charged"),
    ])
    .await;
    let e = api.charge_inferred(&charges.url("/c")).await.unwrap_err();
    assert_eq!((e.attempts(), charges.count()), (1, 1), "{e}");
    assert!(e.idempotency_key().is_some(), "{e}");
    charges.clear();
    assert_eq!(api.charge(&charges.url("/c")).await.unwrap(), "charged");
    assert_eq!(charges.count(), 2);
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    idempotency_key = auto
)]
async fn keyed_order_then_pay(
    c: &reqwest::Client,
    orders: &str,
    pay: &str,
) -> Result<String, Error> {
    create_order(c, orders).await?.error_for_status()?;
    Ok(c.post(pay)
        .body("9.99")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A keyed function whose helper sends its POST without `.resilient()` (unseen, without the
/// key) before the body's own keyed POST: the key does not cover the helper's order, so the
/// 503 of the payment does not run the body again (which would place the order twice).
#[tokio::test(start_paused = true)]
async fn a_keyed_functions_unseen_helper_post_is_not_resent() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let pay = FaultServer::start(Script::always(Action::status(503))).await;
    let e = keyed_order_then_pay(&client(), &orders.url("/orders"), &pay.url("/pay"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.attempts(), orders.count(), pay.count()),
        (1, 1, 1),
        "{e}"
    );
    assert!(
        e.idempotency_key().is_some(),
        "the payment went with the key: {e}"
    );
}

/// A service's own client whose builder has a `.send()` of its own (the inner reqwest send is
/// in code the attribute does not rewrite): what it sends goes unseen and without the key.
struct Orders {
    http: reqwest::Client,
}

struct OrderRequest(reqwest::RequestBuilder);

impl Orders {
    fn post(&self, url: &str) -> OrderRequest {
        OrderRequest(self.http.post(url).body("sku=42"))
    }
}

impl OrderRequest {
    async fn send(self) -> reqwest::Result<reqwest::Response> {
        self.0.send().await
    }
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, retry_on = [connect])]
async fn order_through_own_builder(
    orders: &Orders,
    c: &reqwest::Client,
    order: &str,
    stock: &str,
) -> Result<u16, Error> {
    orders.post(order).send().await?.error_for_status()?;
    Ok(c.get(stock).send().await?.status().as_u16())
}

/// `orders.post(u).send()` reads like a POST sent in the body, but its `.send()` is not
/// reqwest's: the runtime cannot see it go out. When the stock lookup after it cannot connect,
/// running the body again would place the order again, unkeyed: it is not retried.
#[tokio::test(start_paused = true)]
async fn a_post_sent_through_another_builder_is_not_sent_again() {
    let shop = FaultServer::start(Script::always(Action::ok())).await;
    let orders = Orders { http: client() };
    let refused = format!("http://{}/stock", resilience_fault_server::refused_addr());
    let e = order_through_own_builder(&orders, &client(), &shop.url("/orders"), &refused)
        .await
        .unwrap_err();
    assert_eq!(shop.count_path("/orders"), 1, "ordered once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, idempotency_key = auto)]
async fn pay_then_ledger(
    c: &reqwest::Client,
    ledger: &Orders,
    pay: &str,
    entry: &str,
) -> Result<(), Error> {
    c.post(pay)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?;
    ledger.post(entry).send().await?.error_for_status()?;
    Ok(())
}

/// A keyed function whose POST went with the key, beside another builder's POST (an SDK's own
/// client, not the settings'): that one went unseen and without the key. The key covers the
/// payment, not the ledger entry: its 503 does not run the body again (a second entry).
#[tokio::test(start_paused = true)]
async fn a_keyed_functions_post_through_another_builder_is_not_sent_again() {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/ledger" && seen.index == 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let ledger = Orders {
        http: reqwest::Client::new(),
    };
    let e = pay_then_ledger(&client(), &ledger, &shop.url("/pay"), &shop.url("/ledger"))
        .await
        .unwrap_err();
    assert_eq!(
        (
            shop.count_path("/pay"),
            shop.count_path("/ledger"),
            e.attempts()
        ),
        (1, 1, 1),
        "{e}"
    );
}

/// A mail SDK's own client: `send_email()` builds a request its own `.send()` posts.
struct Mail {
    http: reqwest::Client,
    url: String,
}

struct EmailRequest(reqwest::RequestBuilder);

impl Mail {
    fn send_email(&self) -> EmailRequest {
        EmailRequest(self.http.post(&self.url).body("to=a@b"))
    }
}

impl EmailRequest {
    async fn send(self) -> reqwest::Result<reqwest::Response> {
        self.0.send().await
    }
}

/// A shop whose mail endpoint never answers, and the mail SDK pointed at it.
async fn shop_with_a_stalled_mail() -> (FaultServer, Mail) {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/mail" {
            Action::stall()
        } else {
            Action::ok()
        }
    }))
    .await;
    let mail = Mail {
        http: reqwest::Client::new(),
        url: shop.url("/mail"),
    };
    (shop, mail)
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn notify_shipped(c: &reqwest::Client, mail: &Mail, order: &str) -> Result<u16, Error> {
    c.get(order).send().await?.error_for_status()?;
    Ok(mail.send_email().send().await?.status().as_u16())
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, retry_on = [connect])]
async fn order_then_hook(
    orders: &Orders,
    c: &reqwest::Client,
    order: &str,
    hook: &str,
) -> Result<u16, Error> {
    orders.post(order).send().await?.error_for_status()?;
    Ok(c.post(hook).body("x").send().await?.status().as_u16())
}

/// A send of another type whose receiver shows no safe method (an SDK's `send_email()`, a
/// service client's `orders.post(u)`) may have sent anything, without the key, whatever the
/// function's method: a GET function whose mail SDK timed out does not send the mail again
/// with its retry, and a POST function whose own POST could not connect after such an order
/// does not place the order again (it once did both: the unseen send was taken for no less
/// safe than the function's method, or the request seen beside it).
#[tokio::test(start_paused = true)]
async fn a_send_of_another_type_is_never_sent_again_whatever_the_functions_method() {
    let (shop, mail) = shop_with_a_stalled_mail().await;
    let e = notify_shipped(&client(), &mail, &shop.url("/orders/7"))
        .await
        .unwrap_err();
    assert_eq!(shop.count_path("/mail"), 1, "mailed once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");

    let orders = Orders { http: client() };
    let refused = format!("http://{}/hook", resilience_fault_server::refused_addr());
    let e = order_then_hook(&orders, &client(), &shop.url("/orders"), &refused)
        .await
        .unwrap_err();
    assert_eq!(shop.count_path("/orders"), 1, "ordered once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
}

/// A secrets SDK's own builder: its chain starts with a read (`get_secret_value()`).
struct Secrets {
    http: reqwest::Client,
    url: String,
}

struct SecretRequest(reqwest::RequestBuilder);

impl Secrets {
    fn get_secret_value(&self) -> SecretRequest {
        SecretRequest(self.http.get(&self.url))
    }
}

impl SecretRequest {
    fn secret_id(self, id: &str) -> SecretRequest {
        SecretRequest(self.0.header("x-secret-id", id))
    }
    async fn send(self) -> reqwest::Result<reqwest::Response> {
        self.0.send().await
    }
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, idempotency_key = auto)]
async fn pay_with_a_secret(
    secrets: &Secrets,
    c: &reqwest::Client,
    pay: &str,
) -> Result<u16, Error> {
    let secret = secrets
        .get_secret_value()
        .secret_id("pg")
        .send()
        .await?
        .text()
        .await?;
    Ok(c.post(pay)
        .header("x-secret", secret)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// An SDK's read beside the keyed POST (its chain starts `get_secret_value()`, not `.get(`)
/// takes nothing from it: the payment's 503 is retried with its key.
#[tokio::test(start_paused = true)]
async fn an_sdks_read_beside_a_keyed_post_leaves_its_retries() {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/pay" && seen.index == 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let secrets = Secrets {
        http: reqwest::Client::new(),
        url: shop.url("/secret"),
    };
    let got = pay_with_a_secret(&secrets, &client(), &shop.url("/pay")).await;
    assert_eq!(got.unwrap(), 200);
    let pays: Vec<_> = shop
        .requests()
        .into_iter()
        .filter(|s| s.path == "/pay")
        .collect();
    assert_eq!(pays.len(), 2);
    assert_eq!(pays[0].idempotency_key(), pays[1].idempotency_key());
}

/// A token service's own client, its builder with a `.send()` of its own (a GET).
struct Tokens {
    http: reqwest::Client,
}

struct TokenRequest(reqwest::RequestBuilder);

impl Tokens {
    fn get(&self, url: &str) -> TokenRequest {
        TokenRequest(self.http.get(url))
    }
}

impl TokenRequest {
    async fn send(self) -> reqwest::Result<reqwest::Response> {
        self.0.send().await
    }
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, idempotency_key = auto)]
async fn pay_with_a_token(
    tokens: &Tokens,
    c: &reqwest::Client,
    token: &str,
    pay: &str,
) -> Result<u16, Error> {
    let token = tokens.get(token).send().await?.text().await?;
    Ok(c.post(pay)
        .header("x-token", token)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A send of another type beside the body's own keyed POST takes nothing from it: the POST
/// was seen going out with its key, so its 503 is retried with the key, as without the token
/// service's client.
#[tokio::test(start_paused = true)]
async fn a_send_of_another_type_beside_a_seen_keyed_post_leaves_its_retries() {
    let token = FaultServer::start(Script::always(Action::ok().body("t-1"))).await;
    let pay = FaultServer::start(vec![Action::status(503)]).await;
    let tokens = Tokens { http: client() };
    let got = pay_with_a_token(&tokens, &client(), &token.url("/token"), &pay.url("/pay")).await;
    assert_eq!(got.unwrap(), 200);
    let seen = pay.requests();
    assert_eq!(seen.len(), 2, "the 503 retried");
    assert!(seen[0].idempotency_key().is_some());
    assert_eq!(seen[0].idempotency_key(), seen[1].idempotency_key());
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        failure_rate = 0.5,
        min_calls = 1,
        window = 1,
        open_for = "1h",
        half_open_calls = 1
    )
)]
async fn cache_lookup(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// An optional lookup through an annotated call the body hands the client to, then the body's
/// own GET.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn page_with_a_cache(c: &reqwest::Client, cache: &str, main: &str) -> Result<String, Error> {
    let cached = cache_lookup(c, cache).await.unwrap_or_default();
    let body = c.get(main).send().await?.error_for_status()?.text().await?;
    Ok(format!("{body}{cached}"))
}

/// A nested call its open breaker refuses before it starts was still seen by the attempt: it
/// sent nothing behind the runtime's back, so the body's own GET, answered 503, is retried
/// (taken for an unseen request of the least safe method, it was not).
#[tokio::test(start_paused = true)]
async fn a_nested_call_refused_by_its_open_breaker_is_seen_by_the_attempt() {
    let cache = FaultServer::start(Script::always(Action::status(503))).await;
    let c = client();
    assert!(cache_lookup(&c, &cache.url("/")).await.is_err());
    let main = FaultServer::start(vec![Action::status(503), Action::ok().body("page")]).await;
    let r = page_with_a_cache(&c, &cache.url("/"), &main.url("/")).await;
    assert_eq!(r.unwrap(), "page");
    assert_eq!(main.count(), 2, "the 503 retried");
    assert_eq!(cache.count(), 1, "the open breaker sent nothing more");
}

/// A payment service's client: its charge is a `#[resilient]` method of its own.
struct Payments {
    c: reqwest::Client,
}

impl Payments {
    #[resilient(timeout = "5s", deadline = "10s", max_attempts = 1, budget = false, idempotency_key = auto)]
    async fn charge(&self, url: &str) -> Result<u16, Error> {
        let resp = self
            .c
            .post(format!("{url}/charge"))
            .body("amount=1")
            .send()
            .await?;
        Ok(resp.error_for_status()?.status().as_u16())
    }
}

#[resilient(timeout = "5s", max_attempts = 1, budget = false)]
async fn charge_then_receipt(c: &reqwest::Client, pay: &Payments, url: &str) -> Result<u16, Error> {
    pay.charge(url).await?;
    Ok(c.get(format!("{url}/receipt"))
        .send()
        .await?
        .status()
        .as_u16())
}

#[resilient(timeout = "5s", deadline = "20s", method = GET, backoff(initial = "10ms", max = "10ms"), budget = false)]
async fn order_page(c: &reqwest::Client, pay: &Payments, url: &str) -> Result<u16, Error> {
    // The body gives up on the middle call itself: it is dropped with its receipt in flight.
    let _ =
        tokio::time::timeout(Duration::from_millis(100), charge_then_receipt(c, pay, url)).await;
    let resp = c.get(format!("{url}/status")).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// Two levels down: `order_page` → `charge_then_receipt` → `Payments::charge` (a POST under
/// an automatic key). The charge is answered, the receipt stalls, and the page's body gives up
/// on the middle call, cancelling it, then fails on a 503 of its own: what the middle call sent
/// (the POST, under a key a rerun would draw afresh) still reaches the page, which does not
/// run its body again.
#[tokio::test(start_paused = true)]
async fn a_post_two_levels_down_is_not_rerun_when_the_middle_call_is_cancelled() {
    let server = FaultServer::start(Script::dynamic(|s| match s.path.as_str() {
        "/receipt" => Action::stall(),
        "/status" => Action::status(503),
        _ => Action::ok(),
    }))
    .await;
    let pay = Payments { c: client() };
    let e = order_page(&client(), &pay, &format!("http://{}", server.addr()))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(server.count_path("/charge"), 1, "the charge went out once");
    assert_eq!(e.attempts(), 1, "{e}");
}

#[resilient(timeout = "5s", max_attempts = 1, budget = false)]
async fn quote_then_charge(c: &reqwest::Client, pay: &Payments, url: &str) -> Result<u16, Error> {
    let _ = c.get(format!("{url}/quote")).send().await?;
    pay.charge(url).await
}

#[resilient(timeout = "2s", deadline = "10s", method = GET, hedge(delay = "200ms"), backoff(initial = "10ms", max = "10ms"), budget = false)]
async fn hedged_order_page(c: &reqwest::Client, pay: &Payments, url: &str) -> Result<u16, Error> {
    quote_then_charge(c, pay, url).await
}

/// A hedge beside an attempt whose nested call's own nested call is a POST in flight: the
/// hedge would send it again under a new key. None starts; and when the attempt times out,
/// the charge it cancelled is not sent again by a retry either.
#[tokio::test(start_paused = true)]
async fn no_hedge_or_retry_beside_a_post_two_levels_down() {
    let server = FaultServer::start(Script::dynamic(|s| match s.path.as_str() {
        "/charge" => Action::stall(),
        _ => Action::ok(),
    }))
    .await;
    let pay = Payments { c: client() };
    let e = hedged_order_page(&client(), &pay, &format!("http://{}", server.addr()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
    assert_eq!(server.count_path("/charge"), 1, "the charge went out once");
}

/// A helper of the service's own, not annotated: its POST goes out without `.resilient()`,
/// unseen by the runtime.
async fn post_order_by_hand(c: &reqwest::Client, url: &str) -> Result<(), reqwest::Error> {
    c.post(format!("{url}/orders")).body("qty=1").send().await?;
    Ok(())
}

#[resilient(timeout = "5s", max_attempts = 1, budget = false)]
async fn order_with_helper(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    post_order_by_hand(c, url).await?;
    Ok(c.get(format!("{url}/receipt"))
        .send()
        .await?
        .status()
        .as_u16())
}

#[resilient(timeout = "5s", deadline = "20s", method = GET, backoff(initial = "10ms", max = "10ms"), budget = false)]
async fn order_then_status(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    order_with_helper(c, url).await?;
    let resp = c.get(format!("{url}/status")).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A nested call whose helper sent a request the runtime did not see (its POST, beside the
/// nested call's own GET) tells the enclosing call so: the enclosing call, failing later on a
/// 503 of its own, does not run its body again and resend the helper's POST.
#[tokio::test(start_paused = true)]
async fn a_nested_calls_unseen_helper_post_is_not_rerun_by_the_enclosing_call() {
    let server = FaultServer::start(Script::dynamic(|s| match s.path.as_str() {
        "/status" => Action::status(503),
        _ => Action::ok(),
    }))
    .await;
    let e = order_then_status(&client(), &format!("http://{}", server.addr()))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(server.count_path("/orders"), 1, "the order went out once");
}

#[resilient(
    idempotent,
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn lookup_or_create(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    // `idempotent` on a function whose requests seen are GETs: its helper's POST is watched
    // all the same (the flag speaks of a PUT or DELETE the server applies at most once).
    post_order_by_hand(c, url).await?;
    let resp = c.get(format!("{url}/status")).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn idempotent_on_a_get_does_not_stop_watching_a_helpers_post() {
    let server = FaultServer::start(Script::dynamic(|s| match s.path.as_str() {
        "/status" => Action::status(503),
        _ => Action::ok(),
    }))
    .await;
    let e = lookup_or_create(&client(), &format!("http://{}", server.addr()))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(server.count_path("/orders"), 1, "the order went out once");
}

/// `[defaults] method = "GET"` in the policy file: every function's method, yet no
/// declaration of what its helpers send.
#[resilient(
    config = "tests/policies/defaults_method.toml",
    timeout = "5s",
    deadline = "20s",
    budget = false
)]
async fn order_under_file_method(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    post_order_by_hand(c, url).await?;
    let resp = c.get(format!("{url}/status")).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_method_in_the_files_defaults_does_not_stop_watching_a_helpers_post() {
    let server = FaultServer::start(Script::dynamic(|s| match s.path.as_str() {
        "/status" => Action::status(503),
        _ => Action::ok(),
    }))
    .await;
    let e = order_under_file_method(&client(), &format!("http://{}", server.addr()))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(server.count_path("/orders"), 1, "the order went out once");
}

#[resilient(timeout = "5s", max_attempts = 1, budget = false)]
async fn user_name(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(format!("{url}/user")).send().await?.text().await?)
}

#[resilient(timeout = "5s", max_attempts = 1, budget = false)]
async fn profile(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    // An awaited call handed the client: watched as a helper while it runs (it is itself
    // `#[resilient]`, and sends a GET the runtime sees).
    let name = user_name(c, url).await?;
    c.get(format!("{url}/avatar")).send().await?;
    Ok(name)
}

#[resilient(timeout = "5s", deadline = "20s", method = GET, backoff(initial = "10ms", max = "10ms"), budget = false)]
async fn profile_page(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    profile(c, url).await?;
    let resp = c.get(format!("{url}/status")).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A nested call whose helper was running when it was polled, and then turned out to send a
/// GET the runtime saw: the enclosing call retries its own 503 (what a nested call might
/// still send while a helper runs is not taken for what it sent).
#[tokio::test(start_paused = true)]
async fn a_nested_calls_running_helper_that_sent_a_get_leaves_the_retry() {
    let status = std::sync::Arc::new(AtomicU32::new(0));
    let seen = status.clone();
    let server = FaultServer::start(Script::dynamic(move |s| match s.path.as_str() {
        "/status" if seen.fetch_add(1, Ordering::SeqCst) == 0 => Action::status(503),
        "/user" => Action::ok().after(Duration::from_millis(50)),
        _ => Action::ok(),
    }))
    .await;
    let got = profile_page(&client(), &format!("http://{}", server.addr())).await;
    assert_eq!(got.unwrap(), 200);
    assert_eq!(server.count_path("/status"), 2, "the 503 retried");
}

#[resilient(timeout = "5s", deadline = "20s", method = GET, hedge(delay = "200ms"), budget = false)]
async fn hedged_profile(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    profile(c, url).await
}

/// The same beside a hedge: a nested call's helper running (a GET) does not stop the hedge.
#[tokio::test(start_paused = true)]
async fn a_nested_calls_running_helper_does_not_stop_the_hedge() {
    let first = std::sync::Arc::new(AtomicU32::new(0));
    let n = first.clone();
    let server = FaultServer::start(Script::dynamic(move |s| match s.path.as_str() {
        "/user" if n.fetch_add(1, Ordering::SeqCst) == 0 => {
            Action::ok().after(Duration::from_secs(1))
        }
        _ => Action::ok(),
    }))
    .await;
    hedged_profile(&client(), &format!("http://{}", server.addr()))
        .await
        .unwrap();
    assert_eq!(server.count_path("/user"), 2, "hedged");
}

/// A helper of the service's own: its POST goes out unseen, then it waits for a receipt.
async fn post_then_wait(c: &reqwest::Client, url: &str) -> Result<(), reqwest::Error> {
    c.post(format!("{url}/orders")).body("qty=1").send().await?;
    c.get(format!("{url}/receipt")).send().await?;
    Ok(())
}

#[resilient(timeout = "5s", max_attempts = 1, budget = false)]
async fn order_via_slow_helper(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    post_then_wait(c, url).await?;
    Ok(c.get(format!("{url}/done")).send().await?.status().as_u16())
}

#[resilient(timeout = "5s", deadline = "20s", method = GET, backoff(initial = "10ms", max = "10ms"), budget = false)]
async fn impatient_order_page(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let _ = tokio::time::timeout(Duration::from_millis(100), order_via_slow_helper(c, url)).await;
    let resp = c.get(format!("{url}/status")).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A nested call given up on while its helper runs (the helper's POST sent unseen, its receipt
/// awaited): what the helper may have sent reaches the enclosing attempt when the nested call
/// is dropped, and the enclosing call does not run its body again after its own 503.
#[tokio::test(start_paused = true)]
async fn a_nested_call_given_up_on_while_its_helper_runs_is_not_rerun() {
    let server = FaultServer::start(Script::dynamic(|s| match s.path.as_str() {
        "/receipt" => Action::stall(),
        "/status" => Action::status(503),
        _ => Action::ok(),
    }))
    .await;
    let e = impatient_order_page(&client(), &format!("http://{}", server.addr()))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(server.count_path("/orders"), 1, "the order went out once");
}

/// A helper that sends nothing (a token from a cache).
async fn cached_token(_c: &reqwest::Client) -> Result<String, Error> {
    Ok("t".to_owned())
}

#[resilient(config = "tests/policies/named_method.toml", policy = "reads")]
async fn status_with_token(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let _token = cached_token(c).await?;
    let resp = c.get(format!("{url}/status")).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A method declared in the named policy the function chooses is a declaration, as an inline
/// one is: a helper seen sending nothing does not cost the retry.
#[tokio::test(start_paused = true)]
async fn a_method_in_the_named_policy_keeps_the_retry_beside_a_quiet_helper() {
    let first = std::sync::Arc::new(AtomicU32::new(0));
    let n = first.clone();
    let server = FaultServer::start(Script::dynamic(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let got = status_with_token(&client(), &format!("http://{}", server.addr())).await;
    assert_eq!(got.unwrap(), 200);
    assert_eq!(server.count(), 2);
}

// --- An SDK holding a client built by `ClientSettings` ----------------------------------------

/// A payment SDK as a service writes one: a type of its own (not a `…Client`), holding the
/// client it was given, sending its POST with plain `.send()`.
struct PaymentsSdk {
    http: reqwest::Client,
    url: String,
}

/// A server answering `/receipt` 503 (the failure after the charge), what `route` gives for a
/// request where it gives one, and 200 otherwise; with its base URL.
async fn failing_receipt(
    route: impl Fn(&Seen) -> Option<Action> + Send + Sync + 'static,
) -> (FaultServer, String) {
    let server = FaultServer::start(Script::dynamic(move |seen| {
        if seen.path == "/receipt" {
            return Action::status(503);
        }
        route(seen).unwrap_or_else(Action::ok)
    }))
    .await;
    let base = format!("http://{}", server.addr());
    (server, base)
}

/// The SDK sending through a client of the settings to `path` of the server at `base`.
fn sdk_at(base: &str, path: &str) -> PaymentsSdk {
    PaymentsSdk {
        http: client(),
        url: format!("{base}{path}"),
    }
}

impl PaymentsSdk {
    async fn charge(&self, cents: u64) -> Result<u16, reqwest::Error> {
        Ok(self
            .http
            .post(&self.url)
            .body(cents.to_string())
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, retry_on = ["connect", "reset", "timeout", 503], backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn sdk_checkout(c: &reqwest::Client, pay: &PaymentsSdk, base: String) -> Result<u16, Error> {
    c.get(format!("{base}/token"))
        .send()
        .await?
        .error_for_status()?;
    pay.charge(1250).await?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The SDK's POST is not the body's: the macro cannot see it, and the method it infers is the
/// body's own GETs. A client built by `ClientSettings` tells the attempt of every request it
/// completes: the unkeyed POST counts, and the 503 after it is not retried (the charge was
/// sent twice, once per attempt).
#[tokio::test(start_paused = true)]
async fn an_sdks_post_through_a_client_of_the_settings_is_not_sent_again() {
    let (server, base) = failing_receipt(|_| None).await;
    let pay = sdk_at(&base, "/charge");
    let e = sdk_checkout(&client(), &pay, base).await.unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(server.count_path("/charge"), 1, "charged once");
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn keyed_charge(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("1250")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The body's own keyed POST, through the same client: stamped, so its completion is not
/// taken for an unkeyed request, and the 503 is retried with the key.
#[tokio::test(start_paused = true)]
async fn a_stamped_keyed_post_through_a_client_of_the_settings_is_still_retried() {
    let server = FaultServer::start(vec![Action::status(503), Action::ok()]).await;
    assert_eq!(
        keyed_charge(&client(), &server.url("/charge"))
            .await
            .unwrap(),
        200
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header("idempotency-key"),
        seen[1].header("idempotency-key")
    );
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, retry_on = ["connect", "reset", "timeout", 503], backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn redirected_then_checkout(pay: &PaymentsSdk, base: String) -> Result<u16, Error> {
    // A one-off GET whose redirect is followed by a client that reports no completion.
    reqwest::get(format!("{base}/old"))
        .await?
        .error_for_status()?;
    pay.charge(1250).await?;
    Ok(reqwest::get(format!("{base}/receipt"))
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A redirect followed by another client (`reqwest::get`'s) leaves nothing that the SDK's
/// POST, reported by the client of the settings, could be taken for: it is still seen, and
/// the 503 after it is not retried.
#[tokio::test(start_paused = true)]
async fn an_sdks_post_after_a_redirect_elsewhere_is_still_seen() {
    let (server, base) = failing_receipt(|seen| match seen.path.as_str() {
        "/old" => Some(Action::status(301).header("location", "/new")),
        _ => None,
    })
    .await;
    let pay = sdk_at(&base, "/charge");
    let e = redirected_then_checkout(&pay, base).await.unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(server.count_path("/charge"), 1, "charged once");
}

/// A keyed POST the server sends on with a 307 (the same POST, with its key, to another URL)
/// is the stamped request at its new URL too: its 503 there is retried with the key.
#[tokio::test(start_paused = true)]
async fn a_keyed_post_sent_on_by_a_307_is_still_retried_with_its_key() {
    let server = FaultServer::start(Script::dynamic(|seen| match seen.path.as_str() {
        "/charge" => Action::status(307).header("location", "/v2/charge"),
        _ if seen.index == 1 => Action::status(503),
        _ => Action::ok(),
    }))
    .await;
    let url = format!("http://{}/charge", server.addr());
    assert_eq!(keyed_charge(&client(), &url).await.unwrap(), 200);
    let seen = server.requests();
    assert_eq!(seen.len(), 4, "two attempts, each redirected once");
    let keys: Vec<_> = seen.iter().map(|s| s.idempotency_key()).collect();
    assert!(
        keys.iter().all(|k| k.is_some() && *k == keys[0]),
        "{keys:?}"
    );
}

/// A helper handed the settings' client that reads a price through it, then charges through a
/// client of its own built by hand (as an SDK that builds its own does): the reported GET does
/// not make the helper one that was seen sending, so the charge it may have sent unseen keeps
/// the 503 after it from running the body again.
async fn price_then_charge_elsewhere(c: &reqwest::Client, base: &str) -> Result<(), Error> {
    c.get(format!("{base}/price")).send().await?;
    reqwest::Client::new()
        .post(format!("{base}/charge"))
        .body("1250")
        .send()
        .await?;
    Ok(())
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, retry_on = ["connect", "reset", "timeout", 503], backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn checkout_with_a_helper(c: &reqwest::Client, base: String) -> Result<u16, Error> {
    price_then_charge_elsewhere(c, &base).await?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_helpers_get_reported_by_the_settings_client_does_not_make_its_other_sends_seen() {
    let (server, base) = failing_receipt(|_| None).await;
    let e = checkout_with_a_helper(&client(), base).await.unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(server.count_path("/charge"), 1, "charged once");
}

/// One endpoint for everything (GraphQL): the body's own keyed POST and the SDK's unkeyed
/// mutation go to the same URL. The stamped POST's completion is taken for it, once; the
/// mutation's is not, so it counts as an unkeyed POST and the 503 after it is not retried.
#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn graphql_checkout(
    c: &reqwest::Client,
    sdk: &PaymentsSdk,
    base: String,
) -> Result<u16, Error> {
    c.post(format!("{base}/graphql"))
        .body("query { cart }")
        .send()
        .await?
        .error_for_status()?;
    sdk.charge(1250).await?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn an_sdks_post_to_the_same_endpoint_as_a_stamped_one_is_still_seen() {
    let (server, base) = failing_receipt(|_| None).await;
    let sdk = sdk_at(&base, "/graphql");
    let e = graphql_checkout(&client(), &sdk, base).await.unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(
        server.count_path("/graphql"),
        2,
        "the query and the mutation, once each"
    );
}

/// The same with the query built and stamped by hand in a helper (as the README advises for a
/// request a helper builds), then sent with `execute` in the body: it was stamped twice, its
/// URL expected twice, and the one left over was taken for the SDK's mutation, whose 503
/// after it was retried: the charge sent three times.
fn stamped_query(c: &reqwest::Client, url: &str) -> reqwest::Request {
    let mut r = c.post(url).body("query { cart }").build().unwrap();
    resilience_runtime::stamp_request(&mut r);
    r
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn graphql_checkout_stamped_by_hand(
    c: &reqwest::Client,
    sdk: &PaymentsSdk,
    base: String,
) -> Result<u16, Error> {
    c.execute(stamped_query(c, &format!("{base}/graphql")))
        .await?
        .error_for_status()?;
    sdk.charge(1250).await?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The same with a request id of the service's own on the request (the stamping keeps it).
fn stamped_query_with_an_id(c: &reqwest::Client, url: &str) -> reqwest::Request {
    let mut r = c
        .post(url)
        .header("x-request-id", "req-42")
        .body("query { cart }")
        .build()
        .unwrap();
    resilience_runtime::stamp_request(&mut r);
    r
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn graphql_checkout_stamped_with_an_id(
    c: &reqwest::Client,
    sdk: &PaymentsSdk,
    base: String,
) -> Result<u16, Error> {
    c.execute(stamped_query_with_an_id(c, &format!("{base}/graphql")))
        .await?
        .error_for_status()?;
    sdk.charge(1250).await?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_request_stamped_by_hand_then_executed_is_expected_once() {
    let (server, base) = failing_receipt(|_| None).await;
    let sdk = sdk_at(&base, "/graphql");
    let e = graphql_checkout_stamped_by_hand(&client(), &sdk, base)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(
        server.count_path("/graphql"),
        2,
        "the query and the mutation, once each"
    );
    let (server, base) = failing_receipt(|_| None).await;
    let sdk = sdk_at(&base, "/graphql");
    let e = graphql_checkout_stamped_with_an_id(&client(), &sdk, base)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(
        server.count_path("/graphql"),
        2,
        "with a request id of its own"
    );
}

/// An unkeyed POST sent with `execute` in the body, whose connection is refused: it never
/// went out, and is retried as a `.send()` is (it was counted as sent from its stamping on).
#[resilient(timeout = "1s", deadline = "20s", retry_on = [connect], backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn post_by_execute(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let req = c.post(url).body("amount=100").build()?;
    Ok(c.execute(req).await?.error_for_status()?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_refused_post_sent_with_execute_is_retried() {
    let url = format!("http://{}/op", resilience_fault_server::refused_addr());
    for c in [reqwest::Client::new(), client()] {
        let e = post_by_execute(&c, &url).await.unwrap_err();
        assert_eq!(e.class(), Some(resilience_runtime::Class::Connect), "{e}");
        assert_eq!(e.attempts(), 3, "{e}");
    }
}

/// A wrapper of the service's own whose `execute` takes reqwest's builder, beside an audit
/// POST spawned from the body: the wrapper's future, polled, once took back the spawned
/// POST's count as possibly sent (a count it never made), and the refused lookup ran the body
/// again, auditing twice. It also warned of "another reqwest version".
struct AuditedApi;

impl AuditedApi {
    async fn execute(&self, rb: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
        rb.send().await
    }
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, retry_on = [connect], backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn audited_lookup(
    c: &reqwest::Client,
    api: &AuditedApi,
    audit: String,
    dead: String,
) -> Result<u16, Error> {
    tokio::spawn(c.post(audit).body("a").send());
    Ok(api.execute(c.get(dead)).await?.status().as_u16())
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, retry_on = [connect], backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn audited_lookup_by_execute(
    c: &reqwest::Client,
    api: &AuditedApi,
    audit: String,
    dead: String,
) -> Result<u16, Error> {
    let post = c.post(audit).body("a").build()?;
    tokio::spawn(c.execute(post));
    Ok(api.execute(c.get(dead)).await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_wrappers_execute_does_not_take_back_a_spawned_posts_count() {
    let audit = FaultServer::start(Script::always(Action::ok())).await;
    let dead = format!("http://{}/lookup", resilience_fault_server::refused_addr());
    let e = audited_lookup(
        &reqwest::Client::new(),
        &AuditedApi,
        audit.url("/audit"),
        dead,
    )
    .await
    .unwrap_err();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((e.attempts(), audit.count()), (1, 1), "{e}");
    // The audit sent with `execute` in a spawned task: its count is its own future's to take
    // back, not the wrapper's.
    let audit = FaultServer::start(Script::always(Action::ok())).await;
    let dead = format!("http://{}/lookup", resilience_fault_server::refused_addr());
    let e = audited_lookup_by_execute(
        &reqwest::Client::new(),
        &AuditedApi,
        audit.url("/audit"),
        dead,
    )
    .await
    .unwrap_err();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((e.attempts(), audit.count()), (1, 1), "{e}");
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn lookup_through_the_wrapper(
    c: &reqwest::Client,
    api: &AuditedApi,
    base: String,
) -> Result<u16, Error> {
    c.get(format!("{base}/user"))
        .send()
        .await?
        .error_for_status()?;
    Ok(api
        .execute(c.get(format!("{base}/orders")))
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, retry_on = [connect], backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn post_through_the_wrapper(
    c: &reqwest::Client,
    api: &AuditedApi,
    audit: String,
    dead: String,
) -> Result<u16, Error> {
    api.execute(c.post(audit).body("a"))
        .await?
        .error_for_status()?;
    Ok(c.get(dead)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A wrapper's `execute` handed a read (`api.execute(c.get(u))`): it sends a GET the runtime
/// does not stamp, which may go again, and the call keeps its retries (its 503 is retried: it
/// once counted as the least safe send, and the GET function lost its retries and fallback).
/// Handed a POST, it still counts as one: the call is not run again after it, not even for a
/// connect failure after it.
#[tokio::test(start_paused = true)]
async fn a_wrappers_execute_of_a_read_leaves_the_retries() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/orders" && seen.index <= 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let base = server.url("").trim_end_matches('/').to_owned();
    assert_eq!(
        lookup_through_the_wrapper(&reqwest::Client::new(), &AuditedApi, base.clone())
            .await
            .unwrap(),
        200
    );
    assert_eq!(server.count_path("/orders"), 2);
    let audit = FaultServer::start(Script::always(Action::ok())).await;
    let dead = format!("http://{}/orders", resilience_fault_server::refused_addr());
    let e = post_through_the_wrapper(
        &reqwest::Client::new(),
        &AuditedApi,
        audit.url("/audit"),
        dead,
    )
    .await
    .unwrap_err();
    assert_eq!((e.attempts(), audit.count()), (1, 1), "{e}");
}

/// Six keyed POSTs in flight at once, to six URLs: each completion is taken for its own
/// stamped request (the first version kept four URLs, and took the others' for unkeyed
/// POSTs), so the 503 of one is retried with the key.
#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn six_items(c: &reqwest::Client, base: String) -> Result<u16, Error> {
    let post = |i: u32| c.post(format!("{base}/items/{i}")).body("1").send();
    let (a, b, d, e, f, g) = tokio::join!(post(1), post(2), post(3), post(4), post(5), post(6));
    for r in [a, b, d, e, f, g] {
        r?.error_for_status()?;
    }
    Ok(200)
}

#[tokio::test(start_paused = true)]
async fn six_keyed_posts_in_flight_are_each_their_own() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/items/6" && seen.index < 6 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    assert_eq!(
        six_items(&client(), format!("http://{}", server.addr()))
            .await
            .unwrap(),
        200
    );
    assert_eq!(server.count(), 12, "two attempts of six");
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, retry_on = ["connect", "reset", "timeout", 503], backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn normalised_then_checkout(
    c: &reqwest::Client,
    pay: &PaymentsSdk,
    base: String,
) -> Result<u16, Error> {
    // A GET the server sends on with a 308 (a trailing slash normalised) to the URL the SDK
    // then POSTs to.
    c.get(format!("{base}/orders/"))
        .send()
        .await?
        .error_for_status()?;
    pay.charge(1250).await?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A 307 or 308 sends an unsafe stamped request on as the same request; a GET's does not
/// leave an expected POST at its target for the SDK's POST there to be taken for.
#[tokio::test(start_paused = true)]
async fn a_gets_308_leaves_nothing_an_sdks_post_could_be_taken_for() {
    let (server, base) = failing_receipt(|seen| match seen.path.as_str() {
        "/orders/" => Some(Action::status(308).header("location", "/orders")),
        _ => None,
    })
    .await;
    let pay = sdk_at(&base, "/orders");
    let e = normalised_then_checkout(&client(), &pay, base)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    let posts = server
        .requests()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts, 1, "charged once");
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, method = POST, retry_on = ["connect"], backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn charge_then_notify(
    c: &reqwest::Client,
    pay: &PaymentsSdk,
    notify: &PaymentsSdk,
    base: String,
) -> Result<u16, Error> {
    c.get(format!("{base}/token"))
        .send()
        .await?
        .error_for_status()?;
    // Sent through the SDK's own client, built by hand: unseen.
    pay.charge(1250).await?;
    // Through the settings' client, to a host that refuses: never sent.
    notify.charge(0).await?;
    Ok(200)
}

/// A POST the settings' client reports as never connected is not taken for the function's
/// POST having been seen: the charge the other SDK sent unseen keeps the connect failure from
/// running the body again (`method = POST` declared for it).
#[tokio::test(start_paused = true)]
async fn an_unstamped_post_that_never_connected_hides_no_unseen_charge() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let base = format!("http://{}", server.addr());
    let pay = PaymentsSdk {
        http: reqwest::Client::new(),
        url: format!("{base}/charge"),
    };
    let notify = sdk_at(
        &format!("http://{}", resilience_fault_server::refused_addr()),
        "/notify",
    );
    let e = charge_then_notify(&client(), &pay, &notify, base)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(server.count_path("/charge"), 1, "charged once");
}

/// An SDK that looks a customer up, then creates one.
struct CustomersSdk {
    http: reqwest::Client,
    base: String,
}

impl CustomersSdk {
    async fn create(&self) -> Result<(), reqwest::Error> {
        let base = &self.base;
        self.http.get(format!("{base}/v1/customers")).send().await?;
        self.http
            .post(format!("{base}/v1/customers/"))
            .body("name=kim")
            .send()
            .await?;
        Ok(())
    }
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn charge_then_create_customer(
    c: &reqwest::Client,
    sdk: &CustomersSdk,
    base: String,
) -> Result<u16, Error> {
    // Answered 307 without a `Location`: not followed, the body goes on.
    c.post(format!("{base}/v1/charges"))
        .body("1250")
        .send()
        .await?;
    sdk.create().await?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A stamped POST's 307 whose redirect is never followed leaves nothing for a later redirect
/// (the SDK's GET sent on by a 308) to take for a stamped POST at its target: the SDK's POST
/// there is still seen, and the 503 after it is not retried.
#[tokio::test(start_paused = true)]
async fn a_307_not_followed_leaves_nothing_for_a_later_redirect() {
    let (server, base) = failing_receipt(|seen| match seen.path.as_str() {
        "/v1/charges" => Some(Action::status(307)),
        "/v1/customers" => Some(Action::status(308).header("location", "/v1/customers/")),
        _ => None,
    })
    .await;
    let sdk = CustomersSdk {
        http: client(),
        base: base.clone(),
    };
    let e = charge_then_create_customer(&client(), &sdk, base)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    let created = server
        .requests()
        .iter()
        .filter(|s| s.method == "POST" && s.path == "/v1/customers/")
        .count();
    assert_eq!(created, 1, "the customer created once");
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn upload_then_register(
    c: &reqwest::Client,
    sdk: &PaymentsSdk,
    base: String,
) -> Result<u16, Error> {
    // A multipart upload: reqwest cannot copy its body, so the settings' client never reports
    // its completion.
    let form = reqwest::multipart::Form::new().text("name", "receipt.pdf");
    c.post(format!("{base}/v1/files"))
        .multipart(form)
        .send()
        .await?
        .error_for_status()?;
    // The SDK's own POST to the same URL, unstamped.
    sdk.charge(1).await?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A stamped request whose completion is never reported (a multipart body) leaves nothing an
/// SDK's POST to the same URL could be taken for: that POST is seen, and the 503 after it is
/// not retried.
#[tokio::test(start_paused = true)]
async fn a_multipart_upload_leaves_nothing_an_sdks_post_could_be_taken_for() {
    let (server, base) = failing_receipt(|_| None).await;
    let sdk = sdk_at(&base, "/v1/files");
    let e = upload_then_register(&client(), &sdk, base)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(
        server.count_path("/v1/files"),
        2,
        "the upload and the SDK's POST, once each"
    );
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn query_by_hand_then_mutate(
    plain: &reqwest::Client,
    sdk: &PaymentsSdk,
    base: String,
) -> Result<u16, Error> {
    // Stamped, through a client built by hand, which reports no completion.
    plain
        .post(format!("{base}/graphql"))
        .body("query { cart }")
        .send()
        .await?
        .error_for_status()?;
    // Gave up on at once: dropped in flight.
    let _ = tokio::time::timeout(
        Duration::from_millis(1),
        plain
            .post(format!("{base}/graphql"))
            .body("query { slow }")
            .send(),
    )
    .await;
    sdk.charge(1250).await?;
    Ok(plain
        .get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Stamped requests whose completion no client reports (sent through a client built by hand,
/// or dropped in flight) are expected no longer once they end: the SDK's unstamped POST to the
/// same endpoint, through the settings' client, is seen, and the 503 after it is not retried.
#[tokio::test(start_paused = true)]
async fn stamped_requests_no_client_reported_leave_nothing_behind() {
    let (server, base) = failing_receipt(|seen| match seen.path.as_str() {
        "/graphql" if seen.body == b"query { slow }" => Some(Action::stall()),
        _ => None,
    })
    .await;
    let sdk = sdk_at(&base, "/graphql");
    let e = query_by_hand_then_mutate(&reqwest::Client::new(), &sdk, base)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    let mutations = server
        .requests()
        .iter()
        .filter(|s| s.path == "/graphql" && s.body == b"1250")
        .count();
    assert_eq!(mutations, 1, "the SDK's mutation sent once");
}

#[resilient(timeout = "5s", deadline = "20s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn moved_then_sdk(
    c: &reqwest::Client,
    sdk: &PaymentsSdk,
    base: String,
) -> Result<u16, Error> {
    // Sent on by a 308 to a URL that stalls; given up on there.
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        c.post(format!("{base}/v1/charges")).body("1").send(),
    )
    .await;
    // Built, never polled.
    let unsent = c.post(format!("{base}/v1/refunds")).body("1").send();
    drop(unsent);
    sdk.charge(1250).await?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A stamped request sent on by a 308 and dropped at its target takes back the target's
/// expectation (not its first URL's, already taken by its 308), and one built and never polled
/// expects nothing: the SDK's unstamped POST to either URL is seen, and the 503 is not retried.
#[tokio::test(start_paused = true)]
async fn a_redirected_or_unsent_stamped_post_leaves_nothing_behind() {
    for target in ["/v2/charges", "/v1/refunds"] {
        let (server, base) = failing_receipt(|seen| match seen.path.as_str() {
            "/v1/charges" => Some(Action::status(308).header("location", "/v2/charges")),
            "/v2/charges" if seen.body == b"1" => Some(Action::stall()),
            _ => None,
        })
        .await;
        let sdk = sdk_at(&base, target);
        let e = moved_then_sdk(&client(), &sdk, base).await.unwrap_err();
        assert_eq!(e.attempts(), 1, "{target}: {e}");
        let sdk_posts = server
            .requests()
            .iter()
            .filter(|s| s.path == target && s.body == b"1250")
            .count();
        assert_eq!(sdk_posts, 1, "{target}: the SDK's POST sent once");
    }
}

#[resilient(timeout = "5s", deadline = "20s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn overlapping(
    plain: &reqwest::Client,
    sdk: &PaymentsSdk,
    base: String,
) -> Result<u16, Error> {
    let query = plain
        .post(format!("{base}/graphql"))
        .body("query { slow }")
        .send();
    let (q, m) = tokio::join!(query, sdk.charge(1250));
    q?;
    m?;
    Ok(plain
        .get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A stamped POST through a client built by hand still in flight when the SDK's unstamped POST
/// to the same endpoint completes through the settings' client: the SDK's completion is taken
/// for the stamped one's then, and when the stamped one ends with nothing to take back, it
/// counts as the unkeyed request it was; the 503 is not retried.
#[tokio::test(start_paused = true)]
async fn an_sdks_post_overlapping_a_stamped_one_is_counted_when_that_one_ends() {
    let (server, base) = failing_receipt(|seen| match seen.path.as_str() {
        "/graphql" if seen.body == b"query { slow }" => {
            Some(Action::ok().after(Duration::from_millis(100)))
        }
        _ => None,
    })
    .await;
    let sdk = sdk_at(&base, "/graphql");
    let e = overlapping(&reqwest::Client::new(), &sdk, base)
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    let mutations = server
        .requests()
        .iter()
        .filter(|s| s.body == b"1250")
        .count();
    assert_eq!(mutations, 1, "the SDK's mutation sent once");
}

#[resilient(timeout = "5s", deadline = "20s", max_attempts = 3, method = PUT, idempotent, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn put_beside_an_sdk(
    c: &reqwest::Client,
    sdk: &PaymentsSdk,
    base: String,
) -> Result<u16, Error> {
    let put = c.put(format!("{base}/v1/carts/7")).body("items").send();
    let (p, m) = tokio::join!(put, sdk.charge(1250));
    p?.error_for_status()?;
    m?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// An SDK's POST to the URL of a stamped PUT in flight is not taken for the PUT (completions
/// are expected by URL and method): it counts as an unkeyed POST, and the 503 after it is not
/// retried, though the function's PUT is `idempotent`.
#[tokio::test(start_paused = true)]
async fn an_sdks_post_is_not_taken_for_a_stamped_put_at_its_url() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        match (seen.method.as_str(), seen.path.as_str()) {
            ("PUT", _) => Action::ok().after(Duration::from_millis(100)),
            (_, "/receipt") => Action::status(503),
            _ => Action::ok(),
        }
    }))
    .await;
    let base = format!("http://{}", server.addr());
    let sdk = sdk_at(&base, "/v1/carts/7");
    let e = put_beside_an_sdk(&client(), &sdk, base).await.unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    let posts = server
        .requests()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts, 1, "the SDK's POST sent once");
}

// --- A nested call refused before it starts sends nothing -----------------------------------

#[resilient(method = POST, idempotency_key = auto, timeout = "1s", max_attempts = 1, budget = false, rate_limit(rate = 1, per = "1h", burst = 1))]
async fn notify_rate_limited(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 2,
    budget = false,
    backoff(initial = "10ms", max = "10ms")
)]
async fn page_after_limited_notify(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    let _ = notify_rate_limited(c, &format!("{base}notify")).await;
    Ok(c.get(format!("{base}page"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A nested keyed POST its rate limit refuses at once sent nothing: the enclosing GET's 503
/// is retried as if the nested call had not been made (it was taken for a POST that may have
/// been carried out, and the page was not retried).
#[tokio::test(start_paused = true)]
async fn a_nested_call_its_rate_limit_refused_leaves_the_retry() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/page" && seen.index == 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let c = client();
    // Spends the one permit of the hour.
    assert_eq!(
        notify_rate_limited(&c, &server.url("notify"))
            .await
            .unwrap(),
        200
    );
    let got = page_after_limited_notify(&c, &server.url("")).await;
    assert_eq!(got.unwrap(), 200);
    assert_eq!(
        (server.count_path("/notify"), server.count_path("/page")),
        (1, 2)
    );
}

#[resilient(method = POST, idempotency_key = auto, timeout = "5s", deadline = "5s", max_attempts = 1, budget = false, bulkhead(max_concurrent = 1, max_wait = "50ms"))]
async fn notify_one_at_a_time(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 2,
    budget = false,
    backoff(initial = "10ms", max = "10ms")
)]
async fn page_after_full_notify(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    let _ = notify_one_at_a_time(c, &format!("{base}notify")).await;
    Ok(c.get(format!("{base}page"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The same for a nested call that waited for a bulkhead slot and was refused it: it sent
/// nothing, and the page's 503 is retried.
#[tokio::test(start_paused = true)]
async fn a_nested_call_refused_a_slot_after_its_wait_leaves_the_retry() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/notify" {
            Action::stall()
        } else if seen.index == 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let c = client();
    // Holds the one slot: its POST stalls.
    let holder = tokio::spawn({
        let (c, url) = (c.clone(), server.url("notify"));
        async move { notify_one_at_a_time(&c, &url).await }
    });
    while server.count_path("/notify") == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let got = page_after_full_notify(&c, &server.url("")).await;
    assert_eq!(got.unwrap(), 200);
    assert_eq!(
        (server.count_path("/notify"), server.count_path("/page")),
        (1, 2)
    );
    holder.abort();
}

// --- A client under another name; a helper in a task of its own ----------------------------

/// A reservation service's helper, on whatever client it is handed (here a plain one, which
/// reports nothing to the runtime).
async fn reserve(c: &reqwest::Client, url: &str) -> reqwest::Result<reqwest::Response> {
    c.post(url).body("sku=42").send().await
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn price_reserving_in_a_task(
    c: &reqwest::Client,
    reservations: &str,
    prices: &str,
) -> Result<u16, Error> {
    let (c2, url) = (c.clone(), reservations.to_owned());
    tokio::spawn(async move {
        if let Err(e) = reserve(&c2, &url).await {
            tracing::warn!(%e, "reservation failed");
        }
    });
    Ok(c.get(prices)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A helper's POST awaited in a task the body spawned runs outside the attempt, unseen (the
/// watch of a helper there sees nothing): the price's 503 does not run the body again, which
/// would reserve twice.
#[tokio::test(start_paused = true)]
async fn a_helper_awaited_in_a_spawned_task_is_not_run_again() {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/prices" && seen.index <= 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let plain = reqwest::Client::new();
    let e = price_reserving_in_a_task(&plain, &shop.url("/reservations"), &shop.url("/prices"))
        .await
        .unwrap_err();
    // Let the spawned reservation land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        (shop.count_path("/reservations"), e.attempts()),
        (1, 1),
        "{e}"
    );
}

struct Store {
    http: reqwest::Client,
}

impl Store {
    async fn reserve(&self, url: &str) -> reqwest::Result<reqwest::Response> {
        self.http.post(url).body("sku=42").send().await
    }

    #[resilient(
        timeout = "1s",
        deadline = "10s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn reserve_then_price_as_this(&self, r: &str, p: &str) -> Result<u16, Error> {
        let this = self;
        this.reserve(r).await?.error_for_status()?;
        Ok(self
            .http
            .get(p)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }

    #[resilient(
        timeout = "1s",
        deadline = "10s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn reserve_then_price_with_its_client(&self, r: &str, p: &str) -> Result<u16, Error> {
        let http = &self.http;
        reserve(http, r).await?.error_for_status()?;
        Ok(self
            .http
            .get(p)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
}

/// `self` and its client under another name (`let this = self;`, `let http = &self.http;`):
/// the helper handed them is watched as it is handed `self`; seen sending nothing, its
/// attempt counts as having sent an unkeyed POST, and the price's 503 reserves nothing twice.
#[tokio::test(start_paused = true)]
async fn a_helper_handed_the_client_under_another_name_is_watched() {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/prices" {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let store = Store {
        http: reqwest::Client::new(),
    };
    let e = store
        .reserve_then_price_as_this(&shop.url("/reservations"), &shop.url("/prices"))
        .await
        .unwrap_err();
    assert_eq!(
        (shop.count_path("/reservations"), e.attempts()),
        (1, 1),
        "{e}"
    );
    let e = store
        .reserve_then_price_with_its_client(&shop.url("/reservations"), &shop.url("/prices"))
        .await
        .unwrap_err();
    assert_eq!(
        (shop.count_path("/reservations"), e.attempts()),
        (2, 1),
        "{e}"
    );
}

#[resilient(timeout = "1s", max_attempts = 1)]
async fn session_token(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.text().await?)
}

#[resilient(timeout = "5s", max_attempts = 1)]
async fn profile_with_token(c: &reqwest::Client, auth: &str, url: &str) -> Result<String, Error> {
    let token = session_token(c, auth).await?;
    Ok(c.get(url).bearer_auth(token).send().await?.text().await?)
}

/// `measure` around a call its caller stops waiting for reports that call, failed with the
/// attempt it began, not the nested call that finished inside it before (it once reported the
/// token's success as if it were the profile's).
#[tokio::test(start_paused = true)]
async fn measure_reports_a_cancelled_call_not_the_one_nested_in_it() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/token" {
            Action::ok().body("t")
        } else {
            Action::ok().after(Duration::from_secs(3))
        }
    }))
    .await;
    let c = reqwest::Client::new();
    let (gave_up, report) = measure(tokio::time::timeout(
        Duration::from_millis(500),
        profile_with_token(&c, &server.url("/token"), &server.url("/me")),
    ))
    .await;
    assert!(gave_up.is_err());
    let report = report.expect("reported");
    assert_eq!(
        (report.function, report.succeeded, report.attempts),
        ("composition::profile_with_token", false, 1),
        "{report:?}"
    );
}

/// `measure` around a `select!` reports the branch that won, not the one dropped after it.
#[tokio::test(start_paused = true)]
async fn measure_reports_the_branch_of_a_select_that_won() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/token" {
            Action::ok().body("t")
        } else {
            Action::ok().after(Duration::from_secs(3))
        }
    }))
    .await;
    let c = reqwest::Client::new();
    let (fast, slow) = (server.url("/token"), server.url("/slow"));
    let (won, report) = measure(async {
        tokio::select! {
            t = session_token(&c, &fast) => t,
            p = session_token(&c, &slow) => p,
        }
    })
    .await;
    assert_eq!(won.unwrap(), "t");
    let report = report.expect("reported");
    assert!(report.succeeded, "{report:?}");
}

/// A service whose client sits one level down (`self.inner.http`, shared behind an `Arc`).
struct Warehouse {
    inner: std::sync::Arc<WarehouseInner>,
}

struct WarehouseInner {
    http: reqwest::Client,
}

/// A macro of the service's own that places an order with the client it is handed.
macro_rules! place_with {
    ($http:expr, $url:expr) => {
        $http.post($url).body("sku=42").send().await?
    };
}

impl Warehouse {
    fn client(&self) -> &reqwest::Client {
        &self.inner.http
    }

    #[resilient(
        timeout = "1s",
        deadline = "10s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn reserve_then_price_through_inner(&self, r: &str, p: &str) -> Result<u16, Error> {
        let http = &self.inner.http;
        reserve(http, r).await?.error_for_status()?;
        Ok(http
            .get(p)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }

    #[resilient(
        timeout = "1s",
        deadline = "10s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn reserve_then_price_through_a_getter(&self, r: &str, p: &str) -> Result<u16, Error> {
        let http = self.client();
        reserve(http, r).await?.error_for_status()?;
        Ok(http
            .get(p)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }

    #[resilient(
        timeout = "1s",
        deadline = "10s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn reserve_in_a_macro_through_a_getter(&self, r: &str, p: &str) -> Result<u16, Error> {
        place_with!(self.client(), r).error_for_status()?;
        Ok(self
            .inner
            .http
            .get(p)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }

    #[resilient(
        timeout = "1s",
        deadline = "10s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn reserve_in_a_macro_through_inner(&self, r: &str, p: &str) -> Result<u16, Error> {
        place_with!(self.inner.http, r).error_for_status()?;
        Ok(self
            .inner
            .http
            .get(p)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
}

/// The client one level down (`let http = &self.inner.http;`, `self.client()`,
/// `place_with!(self.inner.http, …)`) is the client as much as `self.http` is: the helper or the
/// macro handed it is watched, and the price's 503 reserves nothing twice.
#[tokio::test(start_paused = true)]
async fn a_client_one_field_down_is_watched() {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/prices" {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let store = Warehouse {
        inner: std::sync::Arc::new(WarehouseInner {
            http: reqwest::Client::new(),
        }),
    };
    let (r, p) = (shop.url("/reservations"), shop.url("/prices"));
    let e = store
        .reserve_then_price_through_inner(&r, &p)
        .await
        .unwrap_err();
    assert_eq!(
        (shop.count_path("/reservations"), e.attempts()),
        (1, 1),
        "{e}"
    );
    let e = store
        .reserve_then_price_through_a_getter(&r, &p)
        .await
        .unwrap_err();
    assert_eq!(
        (shop.count_path("/reservations"), e.attempts()),
        (2, 1),
        "{e}"
    );
    let e = store
        .reserve_in_a_macro_through_inner(&r, &p)
        .await
        .unwrap_err();
    assert_eq!(
        (shop.count_path("/reservations"), e.attempts()),
        (3, 1),
        "{e}"
    );
    let e = store
        .reserve_in_a_macro_through_a_getter(&r, &p)
        .await
        .unwrap_err();
    assert_eq!(
        (shop.count_path("/reservations"), e.attempts()),
        (4, 1),
        "{e}"
    );
}

/// A macro of the service's own that pauses for what it is handed.
macro_rules! pause {
    ($d:expr) => {
        tokio::time::sleep($d).await
    };
}

/// A poller whose settings sit under a field named for a client: a value read from them is no
/// client.
struct Poller {
    http: reqwest::Client,
    client: PollSettings,
}

struct PollSettings {
    poll_interval: Duration,
}

impl Poller {
    #[resilient(
        timeout = "1s",
        deadline = "10s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn status_after_a_paused_macro(&self, u: &str) -> Result<u16, Error> {
        pause!(self.client.poll_interval);
        Ok(self
            .http
            .get(u)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }

    #[resilient(
        timeout = "1s",
        deadline = "10s",
        backoff(initial = "10ms", max = "10ms"),
        budget = false
    )]
    async fn status_after_a_pause(&self, u: &str) -> Result<u16, Error> {
        let pause = self.client.poll_interval;
        tokio::time::sleep(pause).await;
        Ok(self
            .http
            .get(u)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }
}

/// A value read from under a field named for a client (`self.client.poll_interval`) is not
/// taken for the client: the pause awaited with it is no helper, and the GET's 503 is retried.
#[tokio::test(start_paused = true)]
async fn a_value_under_a_field_named_for_a_client_is_no_client() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let poller = Poller {
        http: reqwest::Client::new(),
        client: PollSettings {
            poll_interval: Duration::from_millis(5),
        },
    };
    let e = poller
        .status_after_a_pause(&server.url("/status"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.attempts()), (3, 3), "{e}");
    let e = poller
        .status_after_a_paused_macro(&server.url("/status"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.attempts()), (6, 3), "in a macro: {e}");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn reserve_in_a_local_macro_then_price(
    c: &reqwest::Client,
    r: &str,
    p: &str,
) -> Result<u16, Error> {
    macro_rules! reserve_it {
        () => {
            reserve(c, r).await?.error_for_status()?
        };
    }
    reserve_it!();
    Ok(c.get(p).send().await?.error_for_status()?.status().as_u16())
}

/// A `macro_rules!` the body defines whose rules await a helper handed the client: what the
/// helper sends goes unseen, and the price's 503 reserves nothing twice.
#[tokio::test(start_paused = true)]
async fn a_helper_awaited_in_a_macro_the_body_defines_is_not_resent() {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/prices" {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let e = reserve_in_a_local_macro_then_price(
        &reqwest::Client::new(),
        &shop.url("/reservations"),
        &shop.url("/prices"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (shop.count_path("/reservations"), e.attempts()),
        (1, 1),
        "{e}"
    );
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn reserve_then_price_generic<C: AsRef<reqwest::Client>>(
    c: &C,
    r: &str,
    p: &str,
) -> Result<u16, Error> {
    reserve(c.as_ref(), r).await?.error_for_status()?;
    Ok(c.as_ref()
        .get(p)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn reserve_then_price_where<C>(c: C, r: &str, p: &str) -> Result<u16, Error>
where
    C: std::ops::Deref<Target = reqwest::Client> + Clone,
{
    reserve(&c, r).await?.error_for_status()?;
    Ok(c.get(p).send().await?.error_for_status()?.status().as_u16())
}

/// A client parameter of a generic type whose bound names the client (`C: AsRef<Client>`,
/// or in a `where` clause) is watched as `impl AsRef<Client>` is.
#[tokio::test(start_paused = true)]
async fn a_client_of_a_generic_type_is_watched() {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/prices" {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let (r, p) = (shop.url("/reservations"), shop.url("/prices"));
    let c = std::sync::Arc::new(reqwest::Client::new());
    let e = reserve_then_price_generic(&c, &r, &p).await.unwrap_err();
    assert_eq!(
        (shop.count_path("/reservations"), e.attempts()),
        (1, 1),
        "{e}"
    );
    let e = reserve_then_price_where(c.clone(), &r, &p)
        .await
        .unwrap_err();
    assert_eq!(
        (shop.count_path("/reservations"), e.attempts()),
        (2, 1),
        "{e}"
    );
}

#[resilient(
    idempotency_key = auto,
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_executed_as_a_path(c: &reqwest::Client, u: &str) -> Result<u16, Error> {
    let req = c.post(u).body("sku=42").build()?;
    Ok(reqwest::Client::execute(c, req)
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// `Client::execute(&c, req)`, the method written as a path, is stamped as `c.execute(req)`
/// is: every attempt carries the key.
#[tokio::test(start_paused = true)]
async fn an_execute_written_as_a_path_is_stamped() {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.index == 0 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let plain = reqwest::Client::new();
    assert_eq!(
        order_executed_as_a_path(&plain, &shop.url("/orders"))
            .await
            .unwrap(),
        200
    );
    let keys: Vec<_> = shop
        .requests()
        .iter()
        .map(|r| r.idempotency_key().map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys[0].is_some() && keys[0] == keys[1], "{keys:?}");
}

/// A notifier on a client of its own (not handed one: the enclosing body sees a call, no
/// helper of its client).
#[resilient(method = POST, idempotency_key = auto, timeout = "5s", deadline = "5s", max_attempts = 1, budget = false, bulkhead(max_concurrent = 1, max_wait = "1s"))]
async fn notify_waiting_for_a_slot(url: &str) -> Result<u16, Error> {
    static NOTIFIER: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(client);
    Ok(NOTIFIER.post(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "2s",
    deadline = "5s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms")
)]
async fn page_hedged_around_a_notify(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    let notify = format!("{base}notify");
    let (page, notified) = tokio::join!(
        c.get(format!("{base}page")).send(),
        notify_waiting_for_a_slot(&notify)
    );
    notified?;
    Ok(page?.error_for_status()?.status().as_u16())
}

/// A nested POST waiting for its slot may still send: no hedge of the enclosing GET starts
/// beside it (the hedge's own run of the body would post again, under a new key, once both
/// got a slot), and once it is admitted and sends, none does.
#[tokio::test(start_paused = true)]
async fn no_hedge_starts_beside_a_nested_call_waiting_for_its_slot() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/slow" {
            Action::ok().after(Duration::from_millis(150))
        } else if seen.path == "/page" {
            Action::ok().after(Duration::from_millis(300))
        } else {
            Action::ok()
        }
    }))
    .await;
    let c = client();
    let holder = tokio::spawn({
        let url = server.url("slow");
        async move { notify_waiting_for_a_slot(&url).await }
    });
    while server.count_path("/slow") == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let got = page_hedged_around_a_notify(&c, &server.url("")).await;
    assert_eq!(got.unwrap(), 200);
    assert_eq!(
        (server.count_path("/notify"), server.count_path("/page")),
        (1, 1),
        "no hedge"
    );
    holder.await.unwrap().unwrap();
}

#[resilient(
    timeout = "2s",
    deadline = "10s",
    max_attempts = 2,
    budget = false,
    backoff(initial = "10ms", max = "10ms")
)]
async fn page_after_giving_up_on_a_notify(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    let notify = format!("{base}notify");
    // Not worth waiting for: given up on after 50 ms, while it still waits for its slot.
    let _ = tokio::time::timeout(
        Duration::from_millis(50),
        notify_waiting_for_a_slot(&notify),
    )
    .await;
    Ok(c.get(format!("{base}page"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A nested call dropped while it waited for its slot sent nothing: the enclosing GET's 503
/// is retried.
#[tokio::test(start_paused = true)]
async fn a_nested_call_dropped_while_it_waited_leaves_the_retry() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/slow" {
            Action::stall()
        } else if seen.path == "/page" && seen.index == 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let c = client();
    let holder = tokio::spawn({
        let url = server.url("slow");
        async move { notify_waiting_for_a_slot(&url).await }
    });
    while server.count_path("/slow") == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let got = page_after_giving_up_on_a_notify(&c, &server.url("")).await;
    assert_eq!(got.unwrap(), 200);
    assert_eq!(
        (server.count_path("/notify"), server.count_path("/page")),
        (0, 2)
    );
    holder.abort();
}

#[resilient(method = POST, idempotency_key = auto, timeout = "5s", deadline = "5s", max_attempts = 1, budget = false, concurrency_limit(initial = 1, min = 1, max = 1, latency = "1s", max_wait = "0ms"))]
async fn notify_under_a_concurrency_limit(url: &str) -> Result<u16, Error> {
    static NOTIFIER: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(client);
    Ok(NOTIFIER.post(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 2,
    budget = false,
    backoff(initial = "10ms", max = "10ms")
)]
async fn page_after_a_limited_notify_call(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    let _ = notify_under_a_concurrency_limit(&format!("{base}notify")).await;
    Ok(c.get(format!("{base}page"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The same for a nested call its concurrency limit refused (its one slot held): it sent
/// nothing, and the page's 503 is retried.
#[tokio::test(start_paused = true)]
async fn a_nested_call_its_concurrency_limit_refused_leaves_the_retry() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/notify" {
            Action::stall()
        } else if seen.path == "/page" && seen.index == 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let c = client();
    let holder = tokio::spawn({
        let url = server.url("notify");
        async move { notify_under_a_concurrency_limit(&url).await }
    });
    while server.count_path("/notify") == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let got = page_after_a_limited_notify_call(&c, &server.url("")).await;
    assert_eq!(got.unwrap(), 200);
    assert_eq!(
        (server.count_path("/notify"), server.count_path("/page")),
        (1, 2)
    );
    holder.abort();
}

/// A keyed token function that answers from its cache, sending nothing.
#[resilient(timeout = "1s", idempotency_key = auto, budget = false)]
async fn token_from_cache(c: &reqwest::Client, url: &str, cached: bool) -> Result<String, Error> {
    if cached {
        return Ok("cached-token".to_owned());
    }
    Ok(c.post(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn user_with_token(c: &reqwest::Client, token: &str, user: &str) -> Result<String, Error> {
    let t = token_from_cache(c, token, true).await?;
    Ok(c.get(user)
        .bearer_auth(t)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The README's word on it: a nested keyed call counts as sent from its admission, even when
/// it ends having sent nothing (its cache answered): the GET after it is not retried on its
/// 503, as after a POST that may have been carried out. (Not taken back: a limit, pinned here.)
#[tokio::test(start_paused = true)]
async fn a_nested_keyed_call_that_sent_nothing_still_counts_as_sent() {
    let server = FaultServer::start(Script::sequence([Action::status(503), Action::ok()])).await;
    let e = user_with_token(&client(), &server.url("/token"), &server.url("/user"))
        .await
        .unwrap_err();
    assert_eq!((e.attempts(), server.count_path("/user")), (1, 1), "{e}");
    assert_eq!(server.count_path("/token"), 0);
}

async fn mail_later(_c: &reqwest::Client, _mail: &Mail, _order: &str) -> Result<u16, Error> {
    Ok(0)
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 1, budget = false, fallback = mail_later)]
async fn notify_or_later(c: &reqwest::Client, mail: &Mail, order: &str) -> Result<u16, Error> {
    let sent = mail.send_email().send().await?.status().as_u16();
    c.get(order).send().await?.error_for_status()?;
    Ok(sent)
}

async fn order_later(_orders: &Orders, _c: &reqwest::Client, _order: &str) -> Result<u16, Error> {
    Ok(0)
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 1, budget = false, fallback = order_later)]
async fn order_or_later(orders: &Orders, c: &reqwest::Client, order: &str) -> Result<u16, Error> {
    let placed = orders
        .post(order)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16();
    let _ = c;
    Ok(placed)
}

/// Another type's unsafe send may have been carried out, and no fallback answers for it: a
/// mail SDK's send that timed out before anything the runtime saw (the attempt stamped
/// nothing), and a service client's order answered 503 (every `.send()` of the body a chain
/// written in it, which once counted as seen).
#[tokio::test(start_paused = true)]
async fn no_fallback_after_another_types_unsafe_send() {
    let shop = FaultServer::start(Script::dynamic(|seen| match seen.path.as_str() {
        "/mail" => Action::stall(),
        "/orders" => Action::status(503),
        _ => Action::ok(),
    }))
    .await;
    let mail = Mail {
        http: reqwest::Client::new(),
        url: shop.url("/mail"),
    };
    let r = notify_or_later(&client(), &mail, &shop.url("/orders/7")).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(shop.count_path("/mail"), 1);
    let orders = Orders { http: client() };
    let r = order_or_later(&orders, &client(), &shop.url("/orders")).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(shop.count_path("/orders"), 1);
}

/// `idempotent` on a GET says nothing of another type's unsafe send beside it.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    idempotent
)]
async fn idempotent_notify(c: &reqwest::Client, mail: &Mail, order: &str) -> Result<u16, Error> {
    c.get(order).send().await?.error_for_status()?;
    Ok(mail.send_email().send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn idempotent_on_a_get_does_not_resend_another_types_unsafe_send() {
    let (shop, mail) = shop_with_a_stalled_mail().await;
    let e = idempotent_notify(&client(), &mail, &shop.url("/orders/7"))
        .await
        .unwrap_err();
    assert_eq!((shop.count_path("/mail"), e.attempts()), (1, 1), "{e}");
}

/// The query stamped by hand in a helper that then waits (a token, a signature) before the
/// body executes it: meanwhile another call on this thread stamps and executes a request of
/// its own by hand.
async fn stamped_query_then_waits(
    c: &reqwest::Client,
    url: &str,
    go: &tokio::sync::Notify,
) -> reqwest::Request {
    let q = stamped_query(c, url);
    go.notified().await;
    q
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 3, method = POST, idempotency_key = auto, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn graphql_checkout_stamped_before_a_wait(
    c: &reqwest::Client,
    sdk: &PaymentsSdk,
    base: String,
    go: &tokio::sync::Notify,
) -> Result<u16, Error> {
    let q = stamped_query_then_waits(c, &format!("{base}/graphql"), go).await;
    c.execute(q).await?.error_for_status()?;
    sdk.charge(1250).await?;
    Ok(c.get(format!("{base}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(timeout = "1s", max_attempts = 1, method = POST, budget = false)]
async fn another_stamped_by_hand(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let mut r = c.post(url).body("other").build()?;
    resilience_runtime::stamp_request(&mut r);
    Ok(c.execute(r).await?.status().as_u16())
}

/// The hand-stamped record is the attempt's, not the thread's: another call stamping and
/// executing by hand on the same thread while the helper waits left the query unrecognised,
/// stamped and expected twice, and the leftover expectation was taken for the SDK's unkeyed
/// charge, sent again with the retry after the receipt's 503.
#[tokio::test(start_paused = true)]
async fn a_request_stamped_by_hand_before_a_wait_is_expected_once() {
    let (server, base) = failing_receipt(|_| None).await;
    let sdk = sdk_at(&base, "/graphql");
    let go = tokio::sync::Notify::new();
    let c = client();
    let checkout = graphql_checkout_stamped_before_a_wait(&c, &sdk, base.clone(), &go);
    let other = async {
        // Runs while the helper waits, on the same thread.
        tokio::task::yield_now().await;
        another_stamped_by_hand(&c, &format!("{base}/other"))
            .await
            .unwrap();
        go.notify_one();
    };
    let (e, ()) = tokio::join!(checkout, other);
    let e = e.unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(
        server.count_path("/graphql"),
        2,
        "the query and the mutation, once each"
    );
}

async fn saved_later(_c: &reqwest::Client, _mail: &Mail, _doc: &str) -> Result<u16, Error> {
    Ok(0)
}

/// An `idempotent` PUT says all it sends may go again, another type's sends included: after
/// the mail SDK's send and its own PUT's 503 it is retried, and with one attempt its fallback
/// answers (the README's exemption). Without `idempotent` (below) neither.
#[resilient(method = PUT, idempotent, timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false)]
async fn save_and_mail(c: &reqwest::Client, mail: &Mail, doc: &str) -> Result<u16, Error> {
    mail.send_email().send().await?;
    Ok(c.put(doc)
        .body("v2")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(method = PUT, idempotent, timeout = "1s", deadline = "10s", max_attempts = 1, budget = false, fallback = saved_later)]
async fn save_and_mail_or_later(c: &reqwest::Client, mail: &Mail, doc: &str) -> Result<u16, Error> {
    mail.send_email().send().await?;
    Ok(c.put(doc)
        .body("v2")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(method = PUT, timeout = "1s", deadline = "10s", max_attempts = 1, budget = false, fallback = saved_later)]
async fn save_and_mail_not_idempotent(
    c: &reqwest::Client,
    mail: &Mail,
    doc: &str,
) -> Result<u16, Error> {
    mail.send_email().send().await?;
    Ok(c.put(doc)
        .body("v2")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn an_idempotent_put_keeps_its_retries_and_fallback_beside_another_types_send() {
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/docs/1" && seen.index <= 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let mail = Mail {
        http: reqwest::Client::new(),
        url: shop.url("/mail"),
    };
    assert_eq!(
        save_and_mail(&client(), &mail, &shop.url("/docs/1"))
            .await
            .unwrap(),
        200
    );
    assert_eq!(shop.count_path("/docs/1"), 2);
    let down = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/docs/1" {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let mail = Mail {
        http: reqwest::Client::new(),
        url: down.url("/mail"),
    };
    assert_eq!(
        save_and_mail_or_later(&client(), &mail, &down.url("/docs/1"))
            .await
            .unwrap(),
        0,
        "the fallback answered"
    );
    let r = save_and_mail_not_idempotent(&client(), &mail, &down.url("/docs/1")).await;
    assert!(
        r.is_err(),
        "no fallback after the mail, unless idempotent: {r:?}"
    );
}

#[resilient(timeout = "2s", deadline = "10s", method = GET, hedge(delay = "100ms"), backoff(initial = "10ms", max = "10ms"), budget = false)]
async fn hedged_notify(c: &reqwest::Client, mail: &Mail, order: &str) -> Result<u16, Error> {
    c.get(order).send().await?.error_for_status()?;
    Ok(mail.send_email().send().await?.status().as_u16())
}

/// No hedge starts beside another type's unsafe send in flight (the README's rule): the mail
/// SDK's send stalls past the hedge's delay, and the body is not run again beside it (the
/// mail would go out twice).
#[tokio::test(start_paused = true)]
async fn no_hedge_beside_another_types_unsafe_send() {
    let (shop, mail) = shop_with_a_stalled_mail().await;
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        hedged_notify(&client(), &mail, &shop.url("/orders/7")),
    )
    .await;
    assert!(r.is_err(), "the mail stalls: {r:?}");
    assert_eq!(shop.count_path("/mail"), 1, "the mail went out again");
    assert_eq!(
        shop.count_path("/orders/7"),
        1,
        "a hedge ran the body again"
    );
    // The control: its own GET stalling, the same function hedges it.
    let (slow, mail) = shop_with_a_stalled_mail().await;
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        hedged_notify(&client(), &mail, &slow.url("/mail")),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(slow.count_path("/mail"), 2, "the stalled GET was hedged");
}

/// An audit POST the body waits for a little, then leaves to finish in a task of its own (the
/// `.send()` future polled in the attempt, then spawned), then a read that cannot connect.
#[resilient(retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn audit_in_background_then_read(
    c: &reqwest::Client,
    audit: &str,
    read: &str,
) -> Result<u16, Error> {
    let mut sending = c.post(audit).body("who=42").send();
    if tokio::time::timeout(Duration::from_millis(10), &mut sending)
        .await
        .is_err()
    {
        tokio::spawn(sending);
    }
    Ok(c.get(read).send().await?.status().as_u16())
}

/// The same through `execute`.
#[resilient(retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn audit_executed_in_background_then_read(
    c: &reqwest::Client,
    audit: &str,
    read: &str,
) -> Result<u16, Error> {
    let req = c.post(audit).body("who=42").build()?;
    let mut sending = c.execute(req);
    if tokio::time::timeout(Duration::from_millis(10), &mut sending)
        .await
        .is_err()
    {
        tokio::spawn(sending);
    }
    Ok(c.get(read).send().await?.status().as_u16())
}

/// A request polled in the attempt, then handed to another task before its outcome, may
/// reach the server after the attempt ends: the read's connect failure proves nothing of it,
/// and the unkeyed POST is not sent again (it was, once per attempt: its outcome, settled in
/// the other task, never came back to the attempt that made it).
#[tokio::test(start_paused = true)]
async fn a_send_polled_in_the_attempt_then_spawned_counts_as_possibly_sent() {
    let audit = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(200)),
    ))
    .await;
    let refused = format!("http://{}/", resilience_fault_server::refused_addr());
    let e = audit_in_background_then_read(&client(), &audit.url("/audit"), &refused)
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(audit.count(), 1, "the audit POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(e.class(), Some(resilience_runtime::Class::Connect), "{e}");

    audit.clear();
    let e = audit_executed_in_background_then_read(&client(), &audit.url("/audit"), &refused)
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(audit.count(), 1, "the audit POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
}

/// A keyed charge whose audit POST is built in the body and sent from a task it spawns (the
/// client parameter cannot move into a `'static` task, the builder can): the task's `.send()`
/// shows no method, and runs outside the attempt, unstamped and unseen.
#[resilient(
    idempotency_key = auto,
    timeout = "2s",
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn charge_with_spawned_audit(
    c: &reqwest::Client,
    audit: &str,
    pay: &str,
) -> Result<u16, Error> {
    let rb = c.post(audit).body("charge=42");
    tokio::spawn(async move {
        let _ = rb.send().await;
    });
    Ok(c.post(pay)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The same through `execute`, with a clone of the client moved into the task.
#[resilient(
    idempotency_key = auto,
    timeout = "2s",
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn charge_with_spawned_executed_audit(
    c: &reqwest::Client,
    audit: &str,
    pay: &str,
) -> Result<u16, Error> {
    let (c2, req) = (c.clone(), c.post(audit).body("charge=42").build()?);
    tokio::spawn(async move {
        let _ = c2.execute(req).await;
    });
    Ok(c.post(pay)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Runs `charge` (handed a client, an audit URL and a payment URL) against an audit server and
/// a payment server that answers 503, then 200; returns its error once its spawned tasks had
/// time to send, with how many requests each server got.
async fn charge_beside_an_audit<F, Fut>(charge: F) -> (Error, usize, usize)
where
    F: FnOnce(reqwest::Client, String, String) -> Fut,
    Fut: std::future::Future<Output = Result<u16, Error>>,
{
    let audit = FaultServer::start(Script::always(Action::ok())).await;
    let pay = FaultServer::start(vec![Action::status(503), Action::ok()]).await;
    let e = charge(client(), audit.url("/audit"), pay.url("/charges"))
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_millis(100)).await;
    (e, audit.count(), pay.count())
}

/// A request a spawned task sends from a builder the body made may have gone out unkeyed: the
/// charge's 503 is not retried (a retry spawned the audit POST again, without a key).
#[tokio::test(start_paused = true)]
async fn a_builder_moved_into_a_spawned_task_is_an_unseen_send() {
    let (e, audits, charges) =
        charge_beside_an_audit(
            |c, a, p| async move { charge_with_spawned_audit(&c, &a, &p).await },
        )
        .await;
    assert_eq!((audits, charges), (1, 1), "{e}");
    assert_eq!(e.http_status(), Some(503), "{e}");

    let (e, audits, charges) = charge_beside_an_audit(|c, a, p| async move {
        charge_with_spawned_executed_audit(&c, &a, &p).await
    })
    .await;
    assert_eq!((audits, charges), (1, 1), "{e}");
}

/// A pool of the service's own whose `execute` runs a closure (not a client's).
struct WorkPool;

impl WorkPool {
    fn execute<F: FnOnce()>(&self, f: F) {
        f();
    }
}

/// A GET whose body spawns harmless work: a GET builder it made (moved into the task), and a
/// pool's `execute` of a closure. Neither is an unseen send that may need a key.
#[resilient(timeout = "2s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn read_beside_background_work(
    c: &reqwest::Client,
    url: &str,
    warm: &str,
) -> Result<u16, Error> {
    // The name held another value first, and the builder grows under it.
    let rb = warm.to_uppercase().to_lowercase();
    let rb = c.get(rb);
    let rb = rb.header("x-warm", "1");
    tokio::spawn(async move {
        let _ = rb.send().await;
    });
    let pool = std::sync::Arc::new(WorkPool);
    tokio::spawn(async move { pool.execute(move || {}) });
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The spawned-task rule does not take a GET builder bound in the body, nor a pool's
/// `execute`, for an unseen send: the read's reset is retried.
#[tokio::test(start_paused = true)]
async fn a_spawned_get_builder_or_a_pools_execute_does_not_stop_the_retry() {
    let warm = FaultServer::start(Script::always(Action::ok())).await;
    let server = FaultServer::start(vec![Action::reset(), Action::ok()]).await;
    let got = read_beside_background_work(&client(), &server.url("/"), &warm.url("/warm"))
        .await
        .unwrap();
    assert_eq!((got, server.count()), (200, 2));
}

/// A receipt keyed by the order's reference, which may not be a valid key.
#[resilient(idempotency_key = reference, timeout = "1s", max_attempts = 1)]
async fn send_receipt(c: &reqwest::Client, url: &str, reference: &str) -> Result<u16, Error> {
    Ok(c.post(url).body("receipt").send().await?.status().as_u16())
}

#[resilient(idempotency_key = auto, timeout = "1s", max_attempts = 3)]
async fn checkout_then_receipt(
    c: &reqwest::Client,
    charges: &str,
    receipts: &str,
    reference: &str,
) -> Result<u16, CheckoutError> {
    let status = c
        .post(charges)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .status();
    send_receipt(c, receipts, reference).await?;
    Ok(status.as_u16())
}

/// A nested call refused at its start for an invalid key, after the enclosing call's keyed
/// POST was charged, inside the service's own error type: the error names the charge's key and
/// the attempt that ran, as for a nested breaker's refusal (it said 0 attempts and no key).
#[tokio::test(start_paused = true)]
async fn a_nested_invalid_key_inside_a_services_own_error_names_the_charge() {
    let shop = FaultServer::start(Script::always(Action::ok())).await;
    let e = checkout_then_receipt(
        &client(),
        &shop.url("/charges"),
        &shop.url("/receipts"),
        "order\n7",
    )
    .await
    .unwrap_err();
    assert_eq!(
        (shop.count_path("/charges"), shop.count_path("/receipts")),
        (1, 0),
        "{e:?}"
    );
    let CheckoutError::Resilience(inner) = &e else {
        panic!("the refusal, inside: {e:?}");
    };
    let charged = shop.requests()[0]
        .idempotency_key()
        .expect("the charge was keyed")
        .to_owned();
    assert_eq!(inner.attempts(), 1, "{inner}");
    assert_eq!(inner.idempotency_key(), Some(charged.as_str()), "{inner}");
}

/// A keyed charge whose audit POST runs in a task bound to a name, the name then bound again
/// to the task's handle.
#[resilient(
    idempotency_key = auto,
    timeout = "2s",
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn charge_after_a_rebound_task(
    c: &reqwest::Client,
    audit: &str,
    pay: &str,
) -> Result<u16, Error> {
    let (c2, audit) = (c.clone(), audit.to_owned());
    let task = async move { c2.post(audit).body("who=42").send().await };
    let task = tokio::spawn(task);
    drop(task);
    Ok(c.post(pay)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A keyed charge whose audit POST builder is moved into a task, its name then bound again to
/// the charge's own builder.
#[resilient(
    idempotency_key = auto,
    timeout = "2s",
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn charge_after_a_rebound_builder(
    c: &reqwest::Client,
    audit: &str,
    pay: &str,
) -> Result<u16, Error> {
    let rb = c.post(audit).body("who=42");
    tokio::spawn(async move {
        let _ = rb.send().await;
    });
    let rb = c.get(pay);
    let _ = rb;
    Ok(c.post(pay)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A name bound again after it named a spawned POST (to a task's handle, to another builder)
/// does not hide that POST: the charge's 503 is not retried, and the audit went out once.
#[tokio::test(start_paused = true)]
async fn a_name_bound_again_does_not_hide_a_spawned_post() {
    let (e, audits, charges) =
        charge_beside_an_audit(
            |c, a, p| async move { charge_after_a_rebound_task(&c, &a, &p).await },
        )
        .await;
    assert_eq!((audits, charges), (1, 1), "{e}");

    let (e, audits, charges) = charge_beside_an_audit(|c, a, p| async move {
        charge_after_a_rebound_builder(&c, &a, &p).await
    })
    .await;
    assert_eq!((audits, charges), (1, 1), "{e}");
}

type Pending = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<reqwest::Response, reqwest::Error>> + Send>,
>;

/// Leaves a future to finish in a task of its own, out of the annotated body's sight.
fn in_background<F>(f: F)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    tokio::spawn(f);
}

/// An audit POST left to finish in the background, then the token request its caller made
/// and handed over, then a read that cannot connect.
#[resilient(retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn audit_then_callers_token_then_read(
    c: &reqwest::Client,
    audit: &str,
    token: &std::sync::Mutex<Option<Pending>>,
    read: &str,
) -> Result<u16, Error> {
    let mut sending = c.post(audit).body("who=42").send();
    if tokio::time::timeout(Duration::from_millis(10), &mut sending)
        .await
        .is_err()
    {
        in_background(sending);
    }
    let pending = token.lock().unwrap().take();
    if let Some(pending) = pending {
        pending.await?;
    }
    Ok(c.get(read).send().await?.status().as_u16())
}

/// Makes the token request and hands it to the nested call, which waits for it.
#[resilient(method = GET, max_attempts = 1, budget = false)]
async fn token_handed_to_nested(
    c: &reqwest::Client,
    audit: &str,
    token: &str,
    read: &str,
) -> Result<u16, Error> {
    let pending: Pending = Box::pin(c.get(token).send());
    let slot = std::sync::Mutex::new(Some(pending));
    audit_then_callers_token_then_read(c, audit, &slot, read).await
}

/// The same through `execute`: the audit (left to another task at once) and the token
/// request.
#[resilient(retry_on = [connect], max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn audit_executed_then_callers_token_then_read(
    c: &reqwest::Client,
    audit: &str,
    token: &std::sync::Mutex<Option<Pending>>,
    read: &str,
) -> Result<u16, Error> {
    let req = c.post(audit).body("who=42").build()?;
    in_background(c.execute(req));
    let pending = token.lock().unwrap().take();
    if let Some(pending) = pending {
        pending.await?;
    }
    Ok(c.get(read).send().await?.status().as_u16())
}

#[resilient(method = GET, max_attempts = 1, budget = false)]
async fn token_executed_and_handed_to_nested(
    c: &reqwest::Client,
    audit: &str,
    token: &str,
    read: &str,
) -> Result<u16, Error> {
    let req = c.get(token).build()?;
    let pending: Pending = Box::pin(c.execute(req));
    let slot = std::sync::Mutex::new(Some(pending));
    audit_executed_then_callers_token_then_read(c, audit, &slot, read).await
}

/// A request made in the enclosing attempt and ending in the nested call's does not take
/// back the nested attempt's count of its own requests not ended there: the nested call's
/// audit POST, left to finish in another task, still counts as possibly sent, and the read's
/// connect failure does not send it again (it went out with every retry).
#[tokio::test(start_paused = true)]
async fn a_request_ending_in_another_attempt_leaves_that_attempts_count_alone() {
    let audit = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(200)),
    ))
    .await;
    let token = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/", resilience_fault_server::refused_addr());
    let e = token_handed_to_nested(
        &client(),
        &audit.url("/audit"),
        &token.url("/token"),
        &refused,
    )
    .await
    .unwrap_err();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(audit.count(), 1, "the audit POST went out once: {e}");
    assert_eq!(token.count(), 1, "{e}");
    assert_eq!(e.class(), Some(resilience_runtime::Class::Connect), "{e}");

    audit.clear();
    token.clear();
    let e = token_executed_and_handed_to_nested(
        &client(),
        &audit.url("/audit"),
        &token.url("/token"),
        &refused,
    )
    .await
    .unwrap_err();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(audit.count(), 1, "the audit POST went out once: {e}");
    assert_eq!(token.count(), 1, "{e}");
}

/// The helper's future chosen by an `if` (boxed), then awaited.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_chosen_by_if_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::FutureExt as _;
    let rush = orders.ends_with("/orders");
    let order = if rush {
        create_order(c, orders).boxed()
    } else {
        create_order(c, stock).boxed()
    };
    order.await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Chosen by a `match` (one helper, two arguments: one future type), awaited where chosen.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_chosen_by_match_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    match orders.len() % 2 {
        0 => create_order(c, orders),
        _ => create_order(c, orders),
    }
    .await?
    .error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Made in a block whose value is the helper's future, kept, then awaited.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_from_a_block_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let order = {
        let url = orders.trim();
        create_order(c, url)
    };
    order.await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A helper's future chosen by an `if` or a `match`, or made in a block, is watched as one
/// written alone: its unseen POST is not sent again by a retry of the GET's 503 (it was, once
/// per attempt, with a plain client).
#[tokio::test(start_paused = true)]
async fn a_helper_chosen_by_if_or_match_is_watched() {
    let (e, stock) = placed_once!(order_chosen_by_if_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_chosen_by_match_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_from_a_block_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
}

/// The helper's future chosen by an `if` under `.fuse()`, pinned and raced in `futures::select!`:
/// still a `FusedFuture` once watched (each branch's helper is wrapped under its own `.fuse()`).
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_chosen_fused_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::FutureExt as _;
    let rush = orders.ends_with("/orders");
    let order = if rush {
        create_order(c, orders).fuse()
    } else {
        create_order(c, stock).fuse()
    };
    futures::pin_mut!(order);
    let mut late = Box::pin(tokio::time::sleep(Duration::from_secs(5)).fuse());
    let placed = futures::select! {
        r = order => r,
        _ = late => return Ok(String::new()),
    };
    placed?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The stock lookup, a call of its own (its GET seen, stamped).
#[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false)]
async fn stock_of(c: &reqwest::Client, url: &str) -> Result<reqwest::Response, Error> {
    Ok(c.get(url).send().await?)
}

/// A block that hands an order to a task of its own, then makes the stock lookup's future:
/// the task's POST is unseen, whatever the lookup (a nested call, its GET seen) sends.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_spawned_in_a_block_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let lookup = {
        tokio::spawn(create_order_owned(c.clone(), orders.to_owned()));
        stock_of(c, stock)
    };
    let answer = lookup.await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    answer.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A task of its own that awaits the helper's future chosen by an `if`.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_chosen_in_a_task_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::FutureExt as _;
    let (c2, o) = (c.clone(), orders.to_owned());
    let rush = o.ends_with("/orders");
    let task = tokio::spawn(async move {
        (if rush {
            create_order(&c2, &o).boxed()
        } else {
            create_order(&c2, "http://127.0.0.1:9/").boxed()
        })
        .await
    });
    task.await.expect("the task ran")?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Chosen by a `match` between a cached answer and the helper's future, made one type with
/// `left_future`/`right_future`: compiles as written, and counts as a helper that sent unseen.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_or_cached_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::FutureExt as _;
    let cached: Option<reqwest::Response> = None;
    let order = match cached {
        Some(r) => futures::future::ready(Ok(r)).left_future(),
        None => create_order(c, orders).right_future(),
    };
    order.await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A block that hands an order to a task, then makes the lookup's future, boxed.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_spawned_in_a_boxed_block_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::FutureExt as _;
    let lookup = {
        tokio::spawn(create_order_owned(c.clone(), orders.to_owned()));
        stock_of(c, stock)
    }
    .boxed();
    let answer = lookup.await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    answer.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Watching a helper chosen by an `if` keeps what its adapters promise (`FusedFuture`), and
/// what a block holds besides the helper's future is still read: a task it spawns counts as
/// an unseen send (the order was placed once per attempt).
#[tokio::test(start_paused = true)]
async fn a_helper_chosen_under_fuse_or_beside_a_spawn_is_watched() {
    let (e, stock) = placed_once!(order_chosen_fused_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_spawned_in_a_block_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_chosen_in_a_task_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_or_cached_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_spawned_in_a_boxed_block_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
}

/// A token fetched by the helper's future, chosen by an `if let` whose other branch returns
/// early; then the stock, the body's own GET.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn token_or_nothing_then_stock(
    c: &reqwest::Client,
    token: Option<&str>,
    stock: &str,
) -> Result<String, Error> {
    let lookup = if let Some(url) = token {
        stock_of(c, url)
    } else {
        return Ok(String::new());
    };
    lookup.await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The token's future or a finished one (`Fuse::terminated()`), raced in `futures::select!`;
/// then the stock.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn token_raced_then_stock(
    c: &reqwest::Client,
    token: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::FutureExt as _;
    let go = !token.is_empty();
    let mut lookup = if go {
        stock_of(c, token).boxed().fuse()
    } else {
        futures::future::Fuse::terminated()
    };
    let mut late = Box::pin(tokio::time::sleep(Duration::from_secs(5)).fuse());
    futures::select! {
        r = lookup => r?.error_for_status()?,
        _ = late => return Ok(String::new()),
    };
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A nested call's GET chosen by an `if` keeps the retries of the body's GET after it (the
/// runtime sees what the nested call sends): a branch that returns early, or a finished
/// future beside it (`Fuse::terminated()` in `futures::select!`, which compiles as written:
/// the watched future is still a `FusedFuture`), does not make it an unwatched send of the
/// least safe method.
#[tokio::test(start_paused = true)]
async fn a_helper_chosen_beside_a_return_or_a_finished_future_keeps_its_retries() {
    for (c, attempts) in [(client(), 3u32), (reqwest::Client::new(), 3)] {
        let token = FaultServer::start(Script::always(Action::ok())).await;
        let stock = FaultServer::start(Script::always(Action::status(503))).await;
        let e = token_or_nothing_then_stock(&c, Some(&token.url("/t")), &stock.url("/stock"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.attempts(), stock.count()),
            (attempts, attempts as usize),
            "{e}"
        );
        stock.clear();
        let e = token_raced_then_stock(&c, &token.url("/t"), &stock.url("/stock"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.attempts(), stock.count()),
            (attempts, attempts as usize),
            "{e}"
        );
    }
    let stock = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(
        token_or_nothing_then_stock(&client(), None, &stock.url("/stock"))
            .await
            .unwrap(),
        ""
    );
}

/// A helper's future made in a block of one expression, kept under `.boxed()`: the watch
/// leaves no braces around its argument (`unused_braces` at the user's code, an error under
/// `deny(warnings)`, which this file's lints in CI are).
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_in_braces_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    use futures::FutureExt as _;
    #[rustfmt::skip]
    let order = { create_order(c, orders) }.boxed();
    order.await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The same in parentheses, awaited where it is written.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_in_parenthesized_braces_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    #[rustfmt::skip]
    let placed = ({ create_order(c, orders) }).await?;
    placed.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_helper_made_in_braces_is_watched_without_them() {
    let (e, stock) = placed_once!(order_in_parenthesized_braces_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
    let (e, stock) = placed_once!(order_in_braces_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
}

/// The order's URL read under a lock, in braces so that the guard goes at the block's end
/// (edition 2024), before the `.await`: the watch goes inside the braces, and the body's future
/// stays `Send` (a guard held across the `.await` would not be).
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_from_locked_config_then_stock(
    c: &reqwest::Client,
    orders: &std::sync::Mutex<String>,
    stock: &str,
) -> Result<String, Error> {
    #[rustfmt::skip]
    let placed = { create_order_owned(c.clone(), orders.lock().unwrap().clone()) }.await?;
    placed.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_helper_in_braces_drops_the_blocks_temporaries_before_its_await() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let stock = FaultServer::start(Script::always(Action::status(503))).await;
    let config = std::sync::Arc::new(std::sync::Mutex::new(orders.url("/orders")));
    let (c, url) = (reqwest::Client::new(), stock.url("/stock"));
    // Spawned: the call's future must be `Send`.
    let e =
        tokio::spawn(async move { order_from_locked_config_then_stock(&c, &config, &url).await })
            .await
            .unwrap()
            .unwrap_err();
    assert_eq!((orders.count(), e.attempts()), (1, 1), "{e}");
}

/// A helper that is an `unsafe fn` (its caller vouches for something), its future made in an
/// `unsafe` block.
///
/// # Safety
///
/// None needed: it stands for a helper with a precondition of its own.
unsafe fn place_unchecked<'a>(
    c: &'a reqwest::Client,
    url: &'a str,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + 'a {
    create_order(c, url)
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_unchecked_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    // SAFETY: `place_unchecked` has no precondition here.
    let placed = unsafe { place_unchecked(c, orders) }.await?;
    placed.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// An `unsafe fn` helper's future, made in an `unsafe` block, is watched as any helper's: its
/// unseen POST is not sent again by a retry of the GET's 503 (it was, once per attempt).
#[tokio::test(start_paused = true)]
async fn a_helper_made_in_an_unsafe_block_is_watched() {
    let (e, stock) = placed_once!(order_unchecked_then_stock);
    assert_eq!((e.attempts(), stock.count()), (1, 1), "{e}");
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn switch_flag_on(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.put(url)
        .body("on")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// `idempotent` on a GET (it says the function's own reads may go again, which they may
/// anyway) around a nested unkeyed PUT that is not `idempotent`.
#[resilient(
    method = GET,
    idempotent = true,
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "1ms", max = "1ms", jitter = none),
    budget = false
)]
async fn read_after_switching(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    switch_flag_on(c, url).await
}

/// `idempotent` speaks for what a PUT or DELETE sends, not for what goes beside a GET: the
/// nested unkeyed PUT answered 503 (it may have been carried out) is not sent again by
/// retries of the GET around it. It went out three times.
#[tokio::test(start_paused = true)]
async fn idempotent_on_a_get_does_not_resend_a_nested_unkeyed_put() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = read_after_switching(&client(), &server.url("/flags/7"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 1, "{e}");
    assert_eq!(e.http_status(), Some(503), "{e}");
}

/// A helper's future bound to a name, then polled through an adapter of the service's own
/// (`.within(d)`), not one the rewrite follows.
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_bound_then_within_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let order = create_order(c, orders);
    let _ = order.within(Duration::from_millis(500)).await;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A service's wrapper of the client bound to a name first (`let api = OrderApi::new(c)`).
#[resilient(
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_through_a_bound_api_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let api = OrderApi::new(c);
    api.place(orders).await?.error_for_status()?;
    Ok(c.get(stock)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A keyed charge that first fires a hook (its POST unkeyed, in a task a closure makes, called
/// where it is spawned): the charge's 503 may be retried under its key, the hook may not.
#[resilient(
    idempotency_key = auto,
    timeout = "2s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn order_spawned_by_a_closure_then_stock(
    c: &reqwest::Client,
    orders: &str,
    stock: &str,
) -> Result<String, Error> {
    let fire = |u: String| {
        let c = c.clone();
        async move {
            let _ = c.post(u).body("order").send().await;
        }
    };
    tokio::spawn(fire(orders.to_owned())).await.unwrap();
    Ok(c.post(stock)
        .body("charge")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Shapes whose POST went unwatched and uncounted: a helper's future bound to a name and
/// polled through an adapter the rewrite does not follow, a wrapper of the client bound to a
/// name first, a closure making a sending task called where it is spawned. The GET's 503 ran
/// the body again: the order placed three times. Each now counts as sent unseen: not resent.
#[tokio::test(start_paused = true)]
async fn a_post_behind_a_bound_future_polled_through_an_unlisted_adapter_is_not_resent() {
    placed_once!(order_bound_then_within_then_stock);
}

#[tokio::test(start_paused = true)]
async fn a_post_behind_a_bound_wrapper_of_the_client_is_not_resent() {
    placed_once!(order_through_a_bound_api_then_stock);
}

#[tokio::test(start_paused = true)]
async fn a_post_in_a_task_a_closure_makes_where_it_is_spawned_is_not_resent() {
    placed_once!(order_spawned_by_a_closure_then_stock);
}
