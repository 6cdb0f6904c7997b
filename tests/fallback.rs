//! Fallback through real sockets: called with the same arguments on a final failure, or only
//! on the kinds chosen (an open breaker, the deadline, the rate limit); other failures return
//! as they are.

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, resilient};
use tokio::time::Instant;

async fn cached(_c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(format!("cached {url}"))
}

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    fallback = cached
)]
async fn price(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn a_final_failure_calls_the_fallback_with_the_same_arguments() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let url = server.url("/price");
    assert_eq!(
        price(&c, url.clone()).await.unwrap(),
        format!("cached {url}")
    );
    assert_eq!(server.count(), 2, "both attempts ran first");
    // A success never calls it.
    let ok = FaultServer::start(Script::always(Action::ok().body("12"))).await;
    assert_eq!(price(&c, ok.url("/price")).await.unwrap(), "12");
}

/// `fallback_on` from `[defaults]`: applies to the function with a fallback (its own failure,
/// a 503, is not among the kinds: returned as it is; the deadline is: answered by the
/// fallback), and builds the one without.
#[resilient(
    config = "tests/policies/defaults_fallback_on.toml",
    timeout = "500ms",
    deadline = "500ms",
    max_attempts = 1,
    budget = false,
    fallback = cached
)]
async fn price_by_house_rule(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    config = "tests/policies/defaults_fallback_on.toml",
    timeout = "1s",
    max_attempts = 1,
    budget = false
)]
async fn no_fallback_under_the_house_rule(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// Under a policy of `fallback = false`, with a fallback of its own inline: `[defaults]`'s
/// `fallback_on` still holds (a 503 is not among its kinds).
#[resilient(
    config = "tests/policies/defaults_fallback_on.toml",
    policy = "no_fallback",
    timeout = "500ms",
    deadline = "500ms",
    max_attempts = 1,
    budget = false,
    fallback = cached
)]
async fn price_under_a_policy_without_fallback(
    c: &reqwest::Client,
    url: String,
) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn fallback_on_in_defaults_applies_where_there_is_a_fallback() {
    let c = reqwest::Client::new();
    let busy = FaultServer::start(Script::always(Action::status(503))).await;
    let e = price_by_house_rule(&c, busy.url("/price"))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "not a chosen kind: {e}");
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let url = stalled.url("/price");
    assert_eq!(
        price_by_house_rule(&c, url.clone()).await.unwrap(),
        format!("cached {url}")
    );
    let e = price_under_a_policy_without_fallback(&c, busy.url("/price"))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "the house rule kept: {e}");
    let ok = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(
        no_fallback_under_the_house_rule(&c, &ok.url("/"))
            .await
            .unwrap(),
        200
    );
}

async fn stale(_c: &reqwest::Client, _url: &str) -> Result<u16, Error> {
    Ok(299)
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(failure_rate = 0.5, min_calls = 1, window = 1, open_for = "1m", half_open_calls = 1),
    fallback = stale,
    fallback_on = [circuit_open]
)]
async fn only_when_open(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn only_the_chosen_kinds_call_it() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let url = server.url("/");
    // The function's own failure is not chosen: it returns as it is, and opens the breaker.
    let e = only_when_open(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Call);
    assert_eq!(e.http_status(), Some(503));
    // The open breaker is: the fallback answers, nothing is sent.
    assert_eq!(only_when_open(&c, &url).await.unwrap(), 299);
    assert_eq!(server.count(), 1);
}

#[resilient(
    timeout = "300ms",
    deadline = "500ms",
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    fallback = stale,
    fallback_on = [deadline, rate_limited],
    rate_limit(rate = 1, burst = 1, per = "1m")
)]
async fn within(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn the_deadline_and_the_rate_limit_call_it() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let t = Instant::now();
    // Attempts time out at 300 ms, then the deadline ends the second at 500 ms.
    assert_eq!(within(&c, &server.url("/")).await.unwrap(), 299);
    assert_eq!(t.elapsed(), Duration::from_millis(500));
    assert_eq!(server.count(), 2);
    // The limit has no permit for a minute: refused at once, the fallback answers.
    let t = Instant::now();
    assert_eq!(within(&c, &server.url("/")).await.unwrap(), 299);
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert_eq!(server.count(), 2);
}

struct Api {
    c: reqwest::Client,
}

impl Api {
    #[resilient(timeout = "1s", max_attempts = 1, fallback = Self::backup)]
    async fn get(&self, url: &str) -> Result<u16, Error> {
        Ok(self
            .c
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .status()
            .as_u16())
    }

    async fn backup(&self, _url: &str) -> Result<u16, Error> {
        Ok(298)
    }
}

#[tokio::test(start_paused = true)]
async fn a_method_falls_back_on_a_method() {
    let api = Api {
        c: reqwest::Client::new(),
    };
    let server = FaultServer::start(Script::always(Action::status(500))).await;
    assert_eq!(api.get(&server.url("/")).await.unwrap(), 298);
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker(
        failure_rate = 0.5,
        min_calls = 1,
        window = 1,
        open_for = "1m",
        half_open_calls = 1
    )
)]
async fn inventory(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Its failure is the nested call's: an open breaker, by `Error::kind()`.
#[resilient(
    timeout = "5s",
    max_attempts = 1,
    budget = false,
    method = GET,
    fallback = stale,
    fallback_on = [circuit_open]
)]
async fn stock_page(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    inventory(c, url).await
}

#[tokio::test(start_paused = true)]
async fn fallback_on_sees_the_kind_the_caller_sees_from_a_nested_call() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let url = server.url("/");
    inventory(&c, &url).await.unwrap_err(); // opens its breaker
    let e = inventory(&c, &url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    // The outer call returns that error: its kind is one fallback_on lists.
    assert_eq!(stock_page(&c, &url).await.unwrap(), 299);
}

/// The fallback of `stock_level`: what the bulkhead holds while it runs.
async fn slots_in_use(_c: &reqwest::Client, _url: &str) -> Result<u32, Error> {
    Ok(resilience_runtime::metrics::bulkhead("fallback_slot")
        .expect("used")
        .in_flight)
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    bulkhead = { name = "fallback_slot", max_concurrent = 1, max_wait = "0ms" },
    fallback = slots_in_use
)]
async fn stock_level(c: &reqwest::Client, url: &str) -> Result<u32, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?
        .len() as u32)
}

/// The call is over when its fallback runs: its bulkhead slot is free (a fallback that calls
/// through the same bulkhead, or the next caller, is not refused for the slot the failed
/// call still held).
#[tokio::test(start_paused = true)]
async fn the_fallback_runs_after_the_call_gave_its_slot_back() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let held = stock_level(&reqwest::Client::new(), &server.url("/stock"))
        .await
        .unwrap();
    assert_eq!(held, 0, "slots held while the fallback ran");
}

/// The fallback of `stock_limited`: what its bulkhead holds while it runs.
async fn limited_slots_in_use(_c: &reqwest::Client, _url: &str) -> Result<u32, Error> {
    Ok(
        resilience_runtime::metrics::bulkhead("fallback_limited_slot")
            .expect("used")
            .in_flight,
    )
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    bulkhead = { name = "fallback_limited_slot", max_concurrent = 1, max_wait = "0ms" },
    rate_limit = { rate = 1, per = "1m", burst = 1 },
    fallback = limited_slots_in_use
)]
async fn stock_limited(c: &reqwest::Client, url: &str) -> Result<u32, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16()
        .into())
}

/// A call its rate limit refuses after it took its bulkhead slot gives the slot back before
/// its fallback runs (and before it returns): refused, it holds nothing.
#[tokio::test(start_paused = true)]
async fn a_call_refused_by_its_rate_limit_holds_no_slot_while_its_fallback_runs() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let url = server.url("/stock");
    assert_eq!(stock_limited(&c, &url).await.unwrap(), 200);
    // The second call in the minute: the rate limit refuses it, the fallback answers.
    let held = stock_limited(&c, &url).await.unwrap();
    assert_eq!(held, 0, "slots held while the fallback ran");
    assert_eq!(server.count(), 1);
}

async fn echo_error(_c: &reqwest::Client, error: &str) -> Result<String, Error> {
    Ok(format!("fallback for {error}"))
}

/// A parameter named `error` reaches the fallback as it was passed, also when the call is
/// refused before it starts (the generated code once bound the refusal to the same name).
#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker = { failure_rate = 0.5, min_calls = 1, window = 1, open_for = "1m", half_open_calls = 1 },
    fallback = echo_error
)]
async fn report(c: &reqwest::Client, error: &str) -> Result<String, Error> {
    Ok(c.get(error)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_parameter_named_error_reaches_the_fallback() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let url = server.url("/errors");
    // Fails (the fallback answers), and opens the breaker.
    assert_eq!(
        report(&c, &url).await.unwrap(),
        format!("fallback for {url}")
    );
    // Refused by the open breaker before it starts: the fallback gets the same argument.
    assert_eq!(
        report(&c, &url).await.unwrap(),
        format!("fallback for {url}")
    );
    assert_eq!(server.count(), 1);
}

/// The fallback of `tagged`: its parameters under `#[cfg]` as the function's.
async fn tagged_cached(
    _c: &reqwest::Client,
    url: String,
    #[cfg(any())] trace_id: String,
    #[cfg(test)] tag: String,
    #[cfg(unix)] region: &str,
) -> Result<String, Error> {
    Ok(format!("cached {url} {tag} {region}"))
}

/// Parameters under `#[cfg]`: one that never exists, two that do here.
#[resilient(timeout = "1s", max_attempts = 2, budget = false, fallback = tagged_cached)]
async fn tagged(
    c: &reqwest::Client,
    url: String,
    #[cfg(any())] trace_id: String,
    #[cfg(test)] tag: String,
    #[cfg(unix)] region: &str,
) -> Result<String, Error> {
    Ok(c.get(format!("{url}?tag={tag}&region={region}"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn the_fallback_gets_the_parameters_that_exist_under_their_cfg() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let url = server.url("/price");
    assert_eq!(
        tagged(&c, url.clone(), "t".into(), "eu").await.unwrap(),
        format!("cached {url} t eu")
    );
    assert_eq!(server.count(), 2, "both attempts ran first");
}

#[resilient(config = "tests/policies/precedence.toml", policy = "priced")]
async fn priced(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    config = "tests/policies/precedence.toml",
    policy = "priced",
    fallback = false
)]
async fn priced_strictly(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A policy's fallback (with its `fallback_on`) comes from the file; `fallback = false` inline
/// switches both off for one function, whose failure then returns as it is.
#[tokio::test(start_paused = true)]
async fn fallback_false_inline_switches_off_the_policys_fallback() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let url = server.url("/price");
    assert_eq!(
        priced(&c, url.clone()).await.unwrap(),
        format!("cached {url}")
    );
    let e = priced_strictly(&c, url).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.http_status()),
        (ErrorKind::Call, Some(503)),
        "{e}"
    );
    assert_eq!(server.count(), 4, "two attempts each (the file's defaults)");
}

async fn queued(_c: &reqwest::Client, _url: &str) -> Result<u16, Error> {
    Ok(202)
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit = { initial = 1, min = 1, max = 1, latency = "500ms" },
    fallback = queued,
    fallback_on = [bulkhead_full]
)]
async fn limited(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// `fallback_on = [bulkhead_full]` takes an adaptive concurrency limit's refusal too: the
/// second of two calls at a limit of one gets the fallback, without a request.
#[tokio::test(start_paused = true)]
async fn a_concurrency_limits_refusal_calls_the_bulkhead_full_fallback() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(200)),
    ))
    .await;
    let url = server.url("/");
    let (first, second) = tokio::join!(limited(&c, &url), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        limited(&c, &url).await
    });
    assert_eq!(first.unwrap(), 200);
    assert_eq!(second.unwrap(), 202, "the fallback's answer");
    assert_eq!(server.count(), 1);
}

async fn charge_declined(_c: &reqwest::Client, _url: &str, key: &str) -> Result<String, Error> {
    Ok(format!("declined {key:?}"))
}

#[resilient(
    timeout = "1s",
    idempotency_key = key,
    fallback = charge_declined,
    fallback_on = [call]
)]
async fn charge(c: &reqwest::Client, url: &str, key: &str) -> Result<String, Error> {
    Ok(c.post(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    timeout = "1s",
    idempotency_key = key,
    fallback = charge_declined,
    fallback_on = [timeout]
)]
async fn charge_timeout_only(c: &reqwest::Client, url: &str, key: &str) -> Result<String, Error> {
    Ok(c.post(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    idempotency_key = auto,
    fallback = pay_later,
)]
async fn pay(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url).send().await?.error_for_status()?.text().await?)
}

async fn pay_later(_c: &reqwest::Client, _url: &str) -> Result<String, Error> {
    Ok("queued for later".into())
}

/// A keyed charge that failed after it may have been carried out (its connection lost after
/// the gateway processed it, then a 503 to the retry under the same key) does not take its
/// fallback: "queued for later" would have the caller charge again. The call's error comes
/// back, naming the key. One refused before it was carried out (a 429, then a 400) does.
#[tokio::test(start_paused = true)]
async fn no_fallback_answers_for_a_charge_that_may_have_been_carried_out() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::sequence([
        Action::reset().after_processing(),
        Action::status(503),
    ]))
    .await;
    let e = pay(&c, &server.url("/charges")).await.unwrap_err();
    assert_eq!(server.effects(), 1);
    assert_eq!(e.attempts(), 2, "{e}");
    assert!(e.idempotency_key().is_some(), "{e}");

    let server =
        FaultServer::start(Script::sequence([Action::status(429), Action::status(400)])).await;
    assert_eq!(
        pay(&c, &server.url("/charges")).await.unwrap(),
        "queued for later"
    );
    assert_eq!(server.count(), 2);
}

/// A helper's charge, sent without `.resilient()`: the runtime does not see it.
async fn post_charge(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url).send().await?.error_for_status()?.text().await?)
}

/// Its method declared (as the compiler asks of a body whose helper sends), so the helper is
/// not watched.
#[resilient(method = POST, timeout = "1s", max_attempts = 1, budget = false, fallback = pay_later)]
async fn pay_through_a_helper(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    post_charge(c, url).await
}

/// The same, keyed: the helper's POST goes without the key.
#[resilient(
    method = POST,
    timeout = "1s",
    idempotency_key = auto,
    budget = false,
    backoff(initial = "10ms", max = "10ms"),
    fallback = pay_later
)]
async fn pay_keyed_through_a_helper(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    post_charge(c, url).await
}

/// The same, after a token the runtime sees: the helper's POST goes unseen beside it.
#[resilient(method = POST, timeout = "1s", max_attempts = 1, budget = false, fallback = pay_later)]
async fn pay_after_a_token(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    let _token = c.get(format!("{url}/token")).send().await?.text().await?;
    post_charge(c, url).await
}

/// A charge a helper sent unseen, that failed after the gateway may have carried it out (a
/// 503 from it, a connection lost after it processed the charge): no fallback answers for
/// it, whether the function's method is declared (its helpers then not watched) or not, and
/// whether or not a request the runtime saw went beside it. The retry decision already took
/// such an attempt to have sent the least safe method; the fallback now does too.
#[tokio::test(start_paused = true)]
async fn no_fallback_answers_for_a_charge_a_helper_sent_unseen() {
    let c = reqwest::Client::new();
    for action in [Action::status(503), Action::reset().after_processing()] {
        let server = FaultServer::start(Script::dynamic(move |seen| {
            if seen.path.ends_with("/token") {
                Action::ok()
            } else {
                action.clone()
            }
        }))
        .await;
        let url = server.url("/charges");
        let r = pay_through_a_helper(&c, &url).await;
        assert!(r.is_err(), "{r:?}");
        let r = pay_keyed_through_a_helper(&c, &url).await;
        assert!(r.is_err(), "{r:?}");
        let r = pay_after_a_token(&c, &url).await;
        assert!(r.is_err(), "{r:?}");
        // One charge each: none sent again.
        assert_eq!(server.count_path("/charges"), 3);
    }
}

/// A charge, keyed, with a short deadline (a 409 "still in progress" is asked again until it).
#[resilient(
    timeout = "1s",
    deadline = "3s",
    max_attempts = 1,
    budget = false,
    idempotency_key = auto,
    fallback = pay_later
)]
async fn pay_once(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url).send().await?.error_for_status()?.text().await?)
}

/// An order page (a GET) whose body makes a keyed charge, a call of its own.
#[resilient(method = GET, timeout = "5s", max_attempts = 1, budget = false, fallback = pay_later)]
async fn checkout(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    pay_once(c, url).await
}

/// The README's list of what keeps the fallback from answering, each a way a charge may have
/// been carried out: a POST that timed out, answered 409, redirected (303) to a page that then
/// failed, or made by a nested call that failed after it. Each failure comes back as the
/// call's error, the charge made once.
#[tokio::test(start_paused = true)]
async fn no_fallback_after_a_timeout_a_409_a_followed_redirect_or_a_nested_charge() {
    let c = reqwest::Client::new();
    let cases = [
        ("timed out", Action::stall()),
        ("409", Action::status(409)),
        ("409 in progress", Action::status(409).retry_after(1)),
        (
            "redirected",
            Action::status(303).header("location", "/receipt"),
        ),
    ];
    for (case, action) in cases {
        let server = FaultServer::start(Script::dynamic(move |seen| {
            if seen.path == "/receipt" {
                Action::status(503)
            } else {
                action.clone()
            }
        }))
        .await;
        let url = server.url("/charges");
        let r = pay_once(&c, &url).await;
        assert!(r.is_err(), "{case}: {r:?}");
        assert!(r.unwrap_err().idempotency_key().is_some(), "{case}");
        let charges = server.count_path("/charges");
        let r = checkout(&c, &url).await;
        assert!(r.is_err(), "{case}, nested: {r:?}");
        assert_eq!(
            server.count_path("/charges"),
            2 * charges,
            "{case}: each call's charges once"
        );
    }
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false, fallback = list_price_cached)]
async fn list_price(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

async fn list_price_cached(_c: &reqwest::Client, _url: &str) -> Result<String, Error> {
    Ok("cached".into())
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn stock_count(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    method = GET,
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn product_page(c: &reqwest::Client, prices: &str, stocks: &str) -> Result<String, Error> {
    let p = list_price(c, prices).await?;
    let s = stock_count(c, stocks).await?;
    Ok(format!("{p}{s}"))
}

/// A nested call its fallback answered (the prices service said 503, come back in 120 s) leaves
/// no `Retry-After` behind: the page's later failure (the stock service's lost connection) is
/// retried as a reset is, not ended at once as one asking to wait past `max_retry_after`.
#[tokio::test(start_paused = true)]
async fn a_nested_call_its_fallback_answered_leaves_no_retry_after_behind() {
    let c = reqwest::Client::new();
    let prices = FaultServer::start(Script::always(Action::status(503).retry_after(120))).await;
    let stocks =
        FaultServer::start(Script::sequence([Action::reset()]).then(Action::ok().body("5"))).await;
    assert_eq!(
        product_page(&c, &prices.url("/"), &stocks.url("/"))
            .await
            .unwrap(),
        "cached5"
    );
    assert_eq!(stocks.count(), 2);
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    idempotency_key = auto,
    fallback = charge_then_receipt_later,
)]
async fn charge_then_receipt(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    c.post(format!("{url}/charges"))
        .send()
        .await?
        .error_for_status()?;
    Ok(c.get(format!("{url}/receipt"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

async fn charge_then_receipt_later(_c: &reqwest::Client, _url: &str) -> Result<String, Error> {
    Ok("declined".into())
}

/// The charge went through (201), then the receipt's GET was answered 404: the call failed on
/// the GET, but its fallback's "declined" would hide a charge that was made. The error comes
/// back. A charge refused (402), then nothing else: the fallback answers.
#[tokio::test(start_paused = true)]
async fn no_fallback_answers_after_a_charge_that_went_through_before_a_later_failure() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path.ends_with("/charges") {
            Action::status(201)
        } else {
            Action::status(404)
        }
    }))
    .await;
    let e = charge_then_receipt(&c, &server.url("")).await.unwrap_err();
    assert_eq!(e.http_status(), Some(404), "{e}");

    let server = FaultServer::start(Script::always(Action::status(402))).await;
    assert_eq!(
        charge_then_receipt(&c, &server.url("")).await.unwrap(),
        "declined"
    );
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn audit(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(
    method = GET,
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn report_then_audit(c: &reqwest::Client, report: &str, log: &str) -> Result<String, Error> {
    let r = c.get(report).send().await?;
    audit(c, log).await?;
    Ok(r.error_for_status()?.text().await?)
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn strict_audit(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    method = GET,
    timeout = "5s",
    deadline = "20s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn report_then_two_audits(
    c: &reqwest::Client,
    report: &str,
    busy: &str,
    log: &str,
) -> Result<String, Error> {
    let r = c.get(report).send().await?;
    // An audit that fails (503, come back in 5 s), its failure handled.
    let _ = strict_audit(c, busy).await.map(|s| s == 200);
    audit(c, log).await?;
    Ok(r.error_for_status()?.text().await?)
}

/// The body's own 503 asked to come back in 120 s; a nested call that began after it (an
/// audit) does not take that away: the call ends at once on a `Retry-After` past its
/// `max_retry_after`, as without the audit, instead of retrying in 10 ms. Nor when a nested
/// call that failed with a `Retry-After` of its own (5 s) came between.
#[tokio::test(start_paused = true)]
async fn a_nested_call_leaves_the_bodys_own_retry_after_in_place() {
    let c = reqwest::Client::new();
    let report = FaultServer::start(Script::always(Action::status(503).retry_after(120))).await;
    let log = FaultServer::start(Script::always(Action::ok())).await;
    let e = report_then_audit(&c, &report.url("/"), &log.url("/"))
        .await
        .unwrap_err();
    assert_eq!(report.count(), 1, "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(120)), "{e}");

    report.clear();
    let busy = FaultServer::start(Script::always(Action::status(503).retry_after(5))).await;
    let e = report_then_two_audits(&c, &report.url("/"), &busy.url("/"), &log.url("/"))
        .await
        .unwrap_err();
    assert_eq!(report.count(), 1, "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(120)), "{e}");
}

/// A call refused for its key (before anything is sent) is a failure of kind `call`: the
/// fallback listed for it runs, with the same arguments; one listed for other kinds does not.
#[tokio::test]
async fn a_call_refused_for_its_key_takes_the_fallback_listed_for_its_kind() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let url = server.url("/charge");
    assert_eq!(charge(&c, &url, "").await.unwrap(), "declined \"\"");
    let e = charge_timeout_only(&c, &url, "").await.unwrap_err();
    assert_eq!((e.kind(), e.attempts()), (ErrorKind::Call, 0), "{e}");
    assert_eq!(server.count(), 0, "nothing was sent");
}

/// An error type of the service's own that keeps nothing of the runtime's error.
#[derive(Debug)]
enum QuoteError {
    Unavailable,
}

impl From<Error> for QuoteError {
    fn from(_: Error) -> Self {
        QuoteError::Unavailable
    }
}

impl From<reqwest::Error> for QuoteError {
    fn from(_: reqwest::Error) -> Self {
        QuoteError::Unavailable
    }
}

async fn last_quote(_c: &reqwest::Client, _url: &str) -> Result<u16, QuoteError> {
    Ok(299)
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    rate_limit = { rate = 1, per = "1m", burst = 1 },
    fallback = last_quote,
    fallback_on = [rate_limited]
)]
async fn quote(c: &reqwest::Client, url: &str) -> Result<u16, QuoteError> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A refusal reaches `fallback_on` by its kind also when the function's error type keeps
/// nothing of it: the rate limit's refusal takes the fallback listed for `rate_limited`.
#[tokio::test(start_paused = true)]
async fn a_refusal_takes_its_fallback_whatever_the_error_type_keeps() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let url = server.url("/quote");
    assert_eq!(quote(&c, &url).await.unwrap(), 200);
    assert_eq!(
        quote(&c, &url).await.unwrap(),
        299,
        "refused: the fallback's"
    );
    assert_eq!(server.count(), 1);
}

/// A fallback that is itself a resilient call, to a backup taking 800 ms to answer.
#[resilient(timeout = "1s", deadline = "2s", max_attempts = 1, budget = false)]
async fn from_backup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let backup = url.replace("/primary", "/backup");
    Ok(c.get(backup)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "300ms",
    deadline = "500ms",
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    fallback = from_backup,
    fallback_on = [deadline]
)]
async fn primary_then_backup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// "A `fallback` runs after, on its own time (it is called when the deadline ran out too); its
/// own `#[resilient]` calls have deadlines of their own": the primary spent its whole 500 ms,
/// and the fallback's call still gets its 2 s, not the nothing the primary had left.
#[tokio::test(start_paused = true)]
async fn a_fallback_that_calls_out_has_a_deadline_of_its_own() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/backup" {
            Action::status(203).after(Duration::from_millis(800))
        } else {
            Action::stall()
        }
    }))
    .await;
    let t = Instant::now();
    assert_eq!(
        primary_then_backup(&c, &server.url("/primary"))
            .await
            .unwrap(),
        203
    );
    assert_eq!(t.elapsed(), Duration::from_millis(1300));
    assert_eq!(server.count_path("/primary"), 2);
    assert_eq!(server.count_path("/backup"), 1);
}

/// The fallback of `stock_level_limited`: what its concurrency limit holds while it runs.
async fn limited_in_flight(_c: &reqwest::Client, _url: &str) -> Result<u32, Error> {
    Ok(
        resilience_runtime::metrics::concurrency_limit("fallback_concurrency")
            .expect("used")
            .in_flight,
    )
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    concurrency_limit = { name = "fallback_concurrency", latency = "500ms", initial = 1, min = 1, max = 1 },
    fallback = limited_in_flight
)]
async fn stock_level_limited(c: &reqwest::Client, url: &str) -> Result<u32, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?
        .len() as u32)
}

/// The same for an adaptive concurrency limit's slot: given back before the fallback runs,
/// so a fallback calling a backup through the same limit is not refused for it.
#[tokio::test(start_paused = true)]
async fn the_fallback_runs_after_the_call_gave_its_concurrency_slot_back() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let held = stock_level_limited(&reqwest::Client::new(), &server.url("/stock"))
        .await
        .unwrap();
    assert_eq!(held, 0, "concurrency slots held while the fallback ran");
    assert_eq!(server.count(), 1);
}

/// A backup that is itself `#[resilient]`.
#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn backup_price(c: &reqwest::Client, url: String) -> Result<String, Error> {
    let backup = url.replace("/primary", "/backup");
    Ok(c.get(backup)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    fallback = backup_price
)]
async fn primary_price(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// `measure` reports the call measured, not its fallback's own `#[resilient]` call, which
/// ends after it: the primary's two failed attempts, though the fallback answered.
#[tokio::test(start_paused = true)]
async fn measure_reports_the_call_not_its_fallback() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path.starts_with("/primary") {
            Action::status(503)
        } else {
            Action::ok().body("backup")
        }
    }))
    .await;
    let c = reqwest::Client::new();
    let (out, report) =
        resilience_runtime::measure(primary_price(&c, server.url("/primary"))).await;
    assert_eq!(out.unwrap(), "backup");
    let report = report.expect("reported");
    assert!(report.function.ends_with("::primary_price"), "{report:?}");
    assert_eq!(report.attempts, 2, "{report:?}");
    assert!(
        !report.succeeded,
        "the call failed; its fallback answered: {report:?}"
    );
}

/// A backup whose own `#[resilient]` call answers, then waits for ever.
async fn backup_then_stall(c: &reqwest::Client, url: String) -> Result<String, Error> {
    let price = backup_price(c, url).await?;
    std::future::pending::<()>().await;
    Ok(price)
}

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    fallback = backup_then_stall
)]
async fn primary_then_stalled_backup(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// The same when the caller gives up while the fallback runs (after the fallback's own call
/// ended): still the call measured.
#[tokio::test(start_paused = true)]
async fn measure_reports_the_call_when_its_fallback_is_given_up_on() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path.starts_with("/primary") {
            Action::status(503)
        } else {
            Action::ok().body("backup")
        }
    }))
    .await;
    let c = reqwest::Client::new();
    let (out, report) = resilience_runtime::measure(tokio::time::timeout(
        std::time::Duration::from_secs(5),
        primary_then_stalled_backup(&c, server.url("/primary")),
    ))
    .await;
    assert!(out.is_err(), "given up on");
    assert_eq!(server.count(), 3, "two attempts, then the backup's call");
    let report = report.expect("reported");
    assert!(
        report.function.ends_with("::primary_then_stalled_backup"),
        "{report:?}"
    );
    assert_eq!(report.attempts, 2, "{report:?}");
}

#[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false)]
async fn backup_within(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    let backup = url.replace("/primary", "/backup");
    Ok(c.get(backup)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "1s",
    deadline = "1s",
    max_attempts = 1,
    budget = false,
    fallback = backup_within,
    fallback_on = [deadline]
)]
async fn primary_within(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// Calls `primary_within` in an attempt of 300 ms.
#[resilient(method = GET, timeout = "300ms", max_attempts = 1, budget = false)]
async fn outer_of_a_fallback(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    primary_within(c, url).await
}

/// A fallback's own calls have deadlines of their own, within what bounds the failed call from
/// outside: when an enclosing attempt's end cut the call, its fallback has no time left there,
/// and its call ends `DeadlineExceeded` with nothing sent.
#[tokio::test(start_paused = true)]
async fn a_fallback_for_a_deadline_an_enclosing_attempt_cut_sends_nothing() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path.starts_with("/primary") {
            Action::stall()
        } else {
            Action::ok().body("backup")
        }
    }))
    .await;
    let c = reqwest::Client::new();
    let e = outer_of_a_fallback(&c, &server.url("/primary"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::DeadlineExceeded | ErrorKind::AttemptTimeout
        ),
        "{e}"
    );
    assert_eq!(server.count_path("/backup"), 0, "{e}");
    // Called on its own, the same call's fallback has its own time, and answers.
    let alone = primary_within(&c, &server.url("/primary")).await;
    assert_eq!(alone.unwrap(), "backup");
}

#[resilient(
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "1ms", max = "1ms", jitter = none),
    budget = { ratio = 0.0, min_per_sec = 0 },
    fallback = stale,
    fallback_on = [budget_exhausted]
)]
async fn no_retries_to_spend(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// `fallback_on = [budget_exhausted]`: a retry the budget refuses calls the fallback.
#[tokio::test(start_paused = true)]
async fn a_retry_the_budget_refuses_calls_a_budget_exhausted_fallback() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let r = no_retries_to_spend(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap();
    assert_eq!(r, 299, "the fallback's answer");
    assert_eq!(server.count(), 1, "the retry was refused, not made");
}

#[resilient(method = POST, idempotency_key = auto, timeout = "1s", max_attempts = 1, budget = false, rate_limit(rate = 1, per = "1h", burst = 1))]
async fn notify_once_an_hour(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url).send().await?.status().as_u16())
}

async fn page_from_the_cache(_c: &reqwest::Client, _base: String) -> Result<String, Error> {
    Ok("cached page".into())
}

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    budget = false,
    backoff(initial = "10ms", max = "10ms"),
    fallback = page_from_the_cache
)]
async fn page_after_a_refused_notify(c: &reqwest::Client, base: String) -> Result<String, Error> {
    let _ = notify_once_an_hour(c, &format!("{base}notify")).await;
    Ok(c.get(format!("{base}page"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A nested keyed POST its rate limit refused sent nothing: the enclosing GET's final failure
/// is answered by its fallback (it was refused as if the POST may have been carried out).
#[tokio::test(start_paused = true)]
async fn a_nested_call_its_limit_refused_leaves_the_fallback() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/page" {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    // Spends the hour's permit.
    assert_eq!(
        notify_once_an_hour(&c, &server.url("notify"))
            .await
            .unwrap(),
        200
    );
    let got = page_after_a_refused_notify(&c, server.url("")).await;
    assert_eq!(got.unwrap(), "cached page");
    assert_eq!(
        (server.count_path("/notify"), server.count_path("/page")),
        (1, 2)
    );
}

/// The helper's charge, the call handed less time than its `timeout` (a caller's
/// `X-Timeout-Ms`, an enclosing attempt's end): its attempt ends `DeadlineExceeded`, the call
/// at once. No fallback answers for the charge either (the deadline's end once decided the
/// call before the unseen charge was counted).
#[tokio::test(start_paused = true)]
async fn no_fallback_for_a_helpers_unseen_charge_cut_by_the_deadline() {
    use resilience_runtime::{Inbound, with_inbound};
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let url = server.url("/charges");
    let r = with_inbound(
        Inbound::NONE.time_left(Duration::from_millis(800)),
        pay_through_a_helper(&c, &url),
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    assert_eq!(server.count_path("/charges"), 1);
}

/// A POST built into a variable before the token GET that fails: the runtime cannot tell it
/// was not sent (it would be seen only when it goes out), so no fallback answers in its place
/// (the README's fallback row).
#[resilient(timeout = "1s", max_attempts = 1, budget = false, fallback = pay_later)]
async fn pay_built_first(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    let charge = c.post(url).body("39000");
    let token = c
        .get(format!("{url}/token"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(charge
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn no_fallback_after_a_failure_before_a_post_built_into_a_variable() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path.ends_with("/token") {
            Action::status(404)
        } else {
            Action::ok()
        }
    }))
    .await;
    let r = pay_built_first(&reqwest::Client::new(), &server.url("/charges")).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        server.count_path("/charges"),
        0,
        "the charge was never sent"
    );
}

async fn queue_payment(_c: &reqwest::Client, _base: &str, _order: &str) -> Result<u16, Error> {
    Ok(0)
}

/// A charge keyed by the order, whose fallback queues the payment for later.
#[resilient(
    method = POST,
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    idempotency_key = order,
    fallback = queue_payment
)]
async fn charge_order(c: &reqwest::Client, base: &str, order: &str) -> Result<u16, Error> {
    Ok(c.post(format!("{base}charges"))
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// An order keyed by its id too: charges, then reads the receipt.
#[resilient(
    timeout = "1s",
    max_attempts = 2,
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    idempotency_key = order
)]
async fn place_order(c: &reqwest::Client, base: &str, order: &str) -> Result<u16, Error> {
    charge_order(c, base, order).await?;
    Ok(c.get(format!("{base}receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The charge is made (201) and the receipt answers 503: the order's retry runs the charge
/// again under the same key, and a proxy refuses it (429). Its fallback ("paid later") must not
/// answer: the charge under that key was carried out in the first attempt, and the caller
/// would queue a second payment. It once did, and the order succeeded.
#[tokio::test(start_paused = true)]
async fn a_nested_keyed_calls_fallback_does_not_answer_after_an_earlier_run_charged() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        match (seen.path.as_str(), seen.index) {
            ("/charges", 0) => Action::status(201),
            ("/charges", _) => Action::status(429),
            ("/receipt", 1) => Action::status(503),
            _ => Action::ok(),
        }
    }))
    .await;
    let r = place_order(&reqwest::Client::new(), &server.url("/"), "order-12").await;
    assert!(r.is_err(), "the fallback answered for a charge made: {r:?}");
    assert_eq!(server.count_path("/charges"), 2);
    // Alone, the same refusal is answered by the fallback: nothing was carried out.
    let alone = FaultServer::start(Script::always(Action::status(429))).await;
    assert_eq!(
        charge_order(&reqwest::Client::new(), &alone.url("/"), "order-13")
            .await
            .unwrap(),
        0
    );
}

/// A charge keyed by the order behind a breaker that one failure opens, whose fallback queues
/// the payment for later.
#[resilient(
    method = POST,
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    idempotency_key = order,
    breaker(failure_rate = 0.5, min_calls = 1, window = 1, open_for = "1m", half_open_calls = 1),
    fallback = queue_payment
)]
async fn charge_guarded(c: &reqwest::Client, base: &str, order: &str) -> Result<u16, Error> {
    Ok(c.post(format!("{base}charges"))
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    idempotency_key = order
)]
async fn place_guarded(c: &reqwest::Client, base: &str, order: &str) -> Result<u16, Error> {
    charge_guarded(c, base, order).await?;
    Ok(c.get(format!("{base}receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The charge is answered 503 (it may have been carried out): its fallback is withheld, and
/// the 503 opens its breaker. The order's retry runs the charge again under the same key, and
/// the open breaker refuses it before it begins: its fallback must not answer there either
/// (it did: the order then succeeded, a payment queued for an order that may be charged).
#[tokio::test(start_paused = true)]
async fn a_nested_keyed_calls_fallback_does_not_answer_its_breakers_refusal_after_a_charge() {
    let server = FaultServer::start(Script::dynamic(|seen| match seen.path.as_str() {
        "/charges" => Action::status(503),
        _ => Action::ok(),
    }))
    .await;
    let r = place_guarded(&reqwest::Client::new(), &server.url("/"), "order-21").await;
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::CircuitOpen),
        "the fallback answered the refusal for a charge that may be made: {r:?}"
    );
    assert_eq!(server.count_path("/charges"), 1);
    // Alone, the same refusal is answered by the fallback: nothing was carried out.
    assert_eq!(
        charge_guarded(&reqwest::Client::new(), &server.url("/"), "order-22")
            .await
            .unwrap(),
        0
    );
}

/// A charge keyed by the order in a bulkhead of one slot, whose fallback queues the payment.
#[resilient(
    method = POST,
    timeout = "2s",
    max_attempts = 1,
    budget = false,
    idempotency_key = order,
    bulkhead(max_concurrent = 1),
    fallback = queue_payment
)]
async fn charge_in_slot(c: &reqwest::Client, base: &str, order: &str) -> Result<u16, Error> {
    Ok(c.post(format!("{base}charges"))
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Keyed by the order, hedged: safe to run again beside the first attempt, whose charge is
/// under the same key.
#[resilient(
    method = POST,
    timeout = "5s",
    max_attempts = 1,
    budget = false,
    idempotency_key = order,
    hedge(delay = "100ms")
)]
async fn place_hedged(c: &reqwest::Client, base: &str, order: &str) -> Result<u16, Error> {
    charge_in_slot(c, base, order).await
}

/// The first attempt's charge is in flight (the gateway answers in 500 ms) when the hedge
/// starts; the hedge's charge is refused its slot (the first holds it). Its fallback must not
/// answer for the round ("queued" while the charge goes through): it did, and won the round.
#[tokio::test(start_paused = true)]
async fn a_hedges_nested_fallback_does_not_answer_while_the_first_attempts_charge_runs() {
    let server = FaultServer::start(Script::always(
        Action::status(201).after(Duration::from_millis(500)),
    ))
    .await;
    let r = place_hedged(&reqwest::Client::new(), &server.url("/"), "order-31").await;
    assert_eq!(
        r.as_ref().ok(),
        Some(&201),
        "the charge's own answer, not the fallback's: {r:?}"
    );
    assert_eq!(server.count_path("/charges"), 1);
    // The hedge ran: its charge was refused the slot the first one held.
    let slots = resilience_runtime::metrics::bulkhead("fallback::charge_in_slot").unwrap();
    assert_eq!(slots.rejected, 1, "{slots:?}");
}

/// The order one level further out: the charge's fallback is kept from answering there too.
#[resilient(timeout = "1s", max_attempts = 1, budget = false, idempotency_key = order)]
async fn checkout_order(c: &reqwest::Client, base: &str, order: &str) -> Result<u16, Error> {
    c.get(format!("{base}cart"))
        .send()
        .await?
        .error_for_status()?;
    charge_order(c, base, order).await
}

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    idempotency_key = order
)]
async fn place_order_deeper(c: &reqwest::Client, base: &str, order: &str) -> Result<u16, Error> {
    checkout_order(c, base, order).await?;
    Ok(c.get(format!("{base}receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn two_levels_down_the_fallback_does_not_answer_after_an_earlier_run_charged() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        match (seen.path.as_str(), seen.index) {
            ("/charges", 1) => Action::status(201),
            ("/charges", _) => Action::status(429),
            ("/receipt", 2) => Action::status(503),
            _ => Action::ok(),
        }
    }))
    .await;
    let r = place_order_deeper(&reqwest::Client::new(), &server.url("/"), "order-14").await;
    assert!(r.is_err(), "the fallback answered for a charge made: {r:?}");
    assert_eq!(server.count_path("/charges"), 2);
}

async fn profile_from_cache(_c: &reqwest::Client, _base: &str, _id: &str) -> Result<u16, Error> {
    Ok(0)
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false, idempotency_key = id, fallback = profile_from_cache)]
async fn lookup_profile(c: &reqwest::Client, base: &str, id: &str) -> Result<u16, Error> {
    Ok(c.get(format!("{base}profile"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    idempotency_key = id
)]
async fn update_profile(c: &reqwest::Client, base: &str, id: &str) -> Result<u16, Error> {
    c.put(format!("{base}settings"))
        .body("lang=ko")
        .send()
        .await?
        .error_for_status()?;
    lookup_profile(c, base, id).await
}

/// A keyed PUT answered 503 and retried (a PUT needs no key: nothing that needs one was carried
/// out), then a nested lookup given the key fails: its fallback still answers.
#[tokio::test(start_paused = true)]
async fn a_keyed_puts_failure_leaves_a_nested_calls_fallback() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        match (seen.path.as_str(), seen.index) {
            ("/settings", 0) => Action::status(503),
            ("/profile", _) => Action::status(503),
            _ => Action::ok(),
        }
    }))
    .await;
    assert_eq!(
        update_profile(&reqwest::Client::new(), &server.url("/"), "user-3")
            .await
            .unwrap(),
        0
    );
    assert_eq!(server.count_path("/settings"), 2);
}

/// An error type that keeps the runtime's error but is no `std::error::Error`.
#[derive(Debug)]
enum PageError {
    Runtime(#[allow(dead_code)] Error),
}

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        PageError::Runtime(e)
    }
}

#[resilient(
    method = GET,
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "fallback_opaque_gateway", failure_rate = 1.0, min_calls = 1, window = 1, open_for = "1h", half_open_calls = 1 },
)]
async fn opaque_gateway(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

async fn stale_page(_c: &reqwest::Client, _url: &str) -> Result<u16, PageError> {
    Ok(299)
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false, fallback = stale_page, fallback_on = [circuit_open])]
async fn page_on_open(c: &reqwest::Client, url: &str) -> Result<u16, PageError> {
    Ok(opaque_gateway(c, url).await?)
}

#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false, fallback = stale_page, fallback_on = [call])]
async fn page_on_call(c: &reqwest::Client, url: &str) -> Result<u16, PageError> {
    Ok(opaque_gateway(c, url).await?)
}

/// Known limits: through an error type that is no `std::error::Error`, a nested call's open
/// breaker is `call` to `fallback_on` (the runtime cannot read inside the type).
#[tokio::test(start_paused = true)]
async fn a_nested_refusal_in_an_opaque_error_type_is_call_to_fallback_on() {
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let c = reqwest::Client::new();
    opaque_gateway(&c, &down.url("/")).await.unwrap_err();
    assert!(matches!(
        page_on_open(&c, &down.url("/")).await,
        Err(PageError::Runtime(e)) if e.kind() == ErrorKind::CircuitOpen
    ));
    assert_eq!(page_on_call(&c, &down.url("/")).await.unwrap(), 299);
    assert_eq!(down.count(), 1);
}

/// A fallback that fails too: a cache with nothing in it, and one annotated itself whose
/// breaker is open (refused before any attempt of its own).
async fn cache_empty(_c: &reqwest::Client, _url: String) -> Result<String, Error> {
    Err(Error::call(std::io::Error::other("cache empty")))
}

#[resilient(
    timeout = "1s",
    max_attempts = 3,
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    fallback = cache_empty
)]
async fn price_or_empty_cache(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "fallback_mirror_refused", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1h" }
)]
async fn mirror_price(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.get(format!("{url}/mirror"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "1s",
    max_attempts = 3,
    budget = false,
    backoff(kind = "constant", initial = "10ms", max = "10ms", jitter = "none"),
    fallback = mirror_price
)]
async fn price_or_mirror(c: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// The fallback's own error comes back, and says the failed call's attempts ran: it once said
/// 0 attempts, and a fallback refused by its open breaker `is_rejected()`, "nothing sent",
/// after the call's three requests went out.
#[tokio::test(start_paused = true)]
async fn a_fallback_that_fails_too_returns_its_error_counting_the_calls_attempts() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = price_or_empty_cache(&c, server.url("/price"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 3);
    assert_eq!((e.kind(), e.attempts()), (ErrorKind::Call, 3), "{e}");
    assert_eq!(
        e.to_string(),
        "3 attempts failed, then its fallback: call failed: cache empty"
    );

    // The mirror's breaker exists once a call used it; then it is held open.
    let ok = FaultServer::start(Script::always(Action::ok().body("12"))).await;
    assert_eq!(mirror_price(&c, ok.url("")).await.unwrap(), "12");
    resilience_runtime::breakers::force_open("fallback_mirror_refused").unwrap();
    let e = price_or_mirror(&c, server.url("/price")).await.unwrap_err();
    assert_eq!(server.count(), 6);
    assert_eq!((e.kind(), e.attempts()), (ErrorKind::CircuitOpen, 3), "{e}");
    assert!(!e.is_rejected(), "three requests went out: {e}");
    assert_eq!(
        e.to_string(),
        "3 attempts failed, then its fallback: circuit breaker open before any attempt"
    );
}
