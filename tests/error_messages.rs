//! What a failed call's error says: what happened, how many attempts ran, the key where the
//! request may have been carried out, and no secret of the URL.

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, ErrorKind, Inbound, resilient, with_inbound};

#[resilient(timeout = "1s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn pay(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A keyed call handed no time sends nothing: its error does not say the request may have
/// been carried out.
#[tokio::test(start_paused = true)]
async fn a_keyed_call_that_sent_nothing_does_not_say_it_may_have_been_carried_out() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let e = with_inbound(
        Inbound::NONE.time_left(Duration::ZERO),
        pay(&reqwest::Client::new(), &server.url("/charges")),
    )
    .await
    .unwrap_err();
    assert_eq!(server.count(), 0);
    assert_eq!(
        (e.kind(), e.attempts()),
        (ErrorKind::DeadlineExceeded, 0),
        "{e}"
    );
    assert!(!e.to_string().contains("may have been carried out"), "{e}");
    // It says no attempt ran, and names no failure that never happened (it said "deadline
    // exceeded (last failure: timeout)").
    assert!(
        e.to_string()
            .starts_with("deadline exceeded before any attempt"),
        "{e}"
    );
    assert!(!e.to_string().contains("last failure"), "{e}");
}

#[resilient(timeout = "1s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), budget = false, breaker = { name = "em_refused_before_any_attempt", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1h" })]
async fn refused_by_its_breaker(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    backoff(initial = "1ms", max = "1ms"),
    budget = false,
    bulkhead(max_concurrent = 1, max_wait = "0ms")
)]
async fn refused_by_its_bulkhead(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// Calls refused before any attempt, by an open breaker or a full bulkhead: the message says
/// no attempt ran; it once said "circuit breaker open (last failure: rejected)", a failure
/// that never happened, and no count.
#[tokio::test(start_paused = true)]
async fn a_call_refused_before_any_attempt_says_so() {
    let ok = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    // A breaker exists once a call used it.
    assert_eq!(
        refused_by_its_breaker(&c, &ok.url("/a")).await.unwrap(),
        200
    );
    resilience_runtime::breakers::force_open("em_refused_before_any_attempt").unwrap();
    let e = refused_by_its_breaker(&c, &ok.url("/a")).await.unwrap_err();
    assert_eq!(ok.count(), 1);
    assert_eq!((e.kind(), e.attempts()), (ErrorKind::CircuitOpen, 0), "{e}");
    assert!(e.is_rejected(), "{e}");
    assert_eq!(e.to_string(), "circuit breaker open before any attempt");

    // One call holds the bulkhead's one slot (its request stalls); the next is refused.
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let url = server.url("/b");
    let holder = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { refused_by_its_bulkhead(&c, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let e = refused_by_its_bulkhead(&c, &url).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.attempts()),
        (ErrorKind::BulkheadFull, 0),
        "{e}"
    );
    assert_eq!(e.to_string(), "bulkhead full before any attempt");
    assert_eq!(server.count(), 1);
    holder.abort();
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Stock {
    count: u32,
}

#[resilient(
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn stock(c: &reqwest::Client, url: &str) -> Result<Stock, Error> {
    Ok(c.get(url).send().await?.json::<Stock>().await?)
}

/// A body that decodes a 503's HTML without checking the status: the call retried it as a
/// 503, and its error says so (the status, not only "error decoding response body").
#[tokio::test(start_paused = true)]
async fn an_undecodable_error_answer_names_its_status() {
    let server = FaultServer::start(Script::always(
        Action::status(503).body("<html>down</html>"),
    ))
    .await;
    let e = stock(&reqwest::Client::new(), &server.url("/stock"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 3);
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert!(e.to_string().contains("503"), "{e}");
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The URL in the error (reqwest's "for url (…)") is redacted as the span's is: no token of
/// its query, no password.
#[tokio::test(start_paused = true)]
async fn the_errors_url_keeps_no_secret() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let url = server
        .url("/items?api_key=s3cret&page=2&X-Amz-Signature=5ig&sig=5ig2")
        .replace("http://", "http://user:pa55@");
    let e = lookup(&reqwest::Client::new(), &url).await.unwrap_err();
    let shown = format!("{e} {e:?}");
    for secret in ["s3cret", "pa55", "5ig"] {
        assert!(!shown.contains(secret), "{secret}: {shown}");
    }
    assert!(shown.contains("page=2"), "{shown}");
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false, idempotency_key = order_ref)]
async fn place(c: &reqwest::Client, url: &str, order_ref: &str) -> Result<u16, Error> {
    Ok(c.post(url).body("qty=1").send().await?.status().as_u16())
}

/// A key that is no header value is refused before anything is sent, and the error says why.
#[tokio::test(start_paused = true)]
async fn an_invalid_key_says_what_is_wrong_with_it() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let e = place(
        &reqwest::Client::new(),
        &server.url("/orders"),
        "commande\n1",
    )
    .await
    .unwrap_err();
    assert_eq!((e.attempts(), server.count()), (0, 0), "{e}");
    // The parameter it came from, and the value as the caller can search for it.
    assert!(
        e.to_string().contains(
            "idempotency key from `order_ref` (\"commande\\n1\") may hold only visible ASCII"
        ),
        "{e}"
    );
    // A long one shows its start.
    let long = "x".repeat(300);
    let e = place(&reqwest::Client::new(), &server.url("/orders"), &long)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "`order_ref` (\"{}…\") of 300 bytes",
            "x".repeat(40)
        )),
        "{e}"
    );
}

#[resilient(method = POST, timeout = "1s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn order_then_track(c: &reqwest::Client, orders: &str, track: &str) -> Result<u16, Error> {
    c.post(orders)
        .body("qty=1")
        .send()
        .await?
        .error_for_status()?;
    Ok(c.get(track).send().await?.status().as_u16())
}

/// A keyed POST answered, then a GET that cannot connect: the call ends on the connect
/// failure, and its error names the key, since the POST was carried out.
#[tokio::test(start_paused = true)]
async fn a_keyed_post_carried_out_before_the_last_failure_is_named() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/track", resilience_fault_server::refused_addr());
    let e = order_then_track(&reqwest::Client::new(), &orders.url("/orders"), &refused)
        .await
        .unwrap_err();
    assert_eq!(orders.count(), 2, "{e}");
    assert!(e.to_string().contains("may have been carried out"), "{e}");
}

/// The same, the GET's host one the resolver says does not exist (a label longer than DNS
/// allows: refused without a query): a permanent failure, not retried, which sent nothing
/// itself; the POST before it was carried out, and the error says so with its key.
#[tokio::test(start_paused = true)]
async fn a_keyed_post_carried_out_before_a_host_that_does_not_exist_is_named() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let gone = format!("http://{}.example/track", "x".repeat(64));
    let e = order_then_track(&reqwest::Client::new(), &orders.url("/orders"), &gone)
        .await
        .unwrap_err();
    assert_eq!(e.class(), Some(resilience_runtime::Class::Permanent), "{e}");
    assert_eq!((e.attempts(), orders.count()), (1, 1), "{e}");
    assert!(e.to_string().contains("may have been carried out"), "{e}");
    assert!(e.idempotency_key().is_some(), "{e}");
}

#[resilient(timeout = "1s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn inner_charge(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url).body("amount=1").send().await?.status().as_u16())
}

#[resilient(timeout = "5s", method = POST, retry_on = [connect], max_attempts = 1, budget = false)]
async fn outer_checkout(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    inner_charge(c, url).await
}

/// A nested keyed POST that never connected: nothing reached a server, and the error (the
/// nested call's, with its key) does not say it may have been carried out.
#[tokio::test(start_paused = true)]
async fn a_nested_post_that_never_connected_is_not_said_carried_out() {
    let refused = format!("http://{}/charges", resilience_fault_server::refused_addr());
    let e = outer_checkout(&reqwest::Client::new(), &refused)
        .await
        .unwrap_err();
    assert!(e.idempotency_key().is_some(), "{e}");
    assert!(!e.to_string().contains("may have been carried out"), "{e}");
}

/// A redirect loop's error does not show the URL's token either.
#[tokio::test(start_paused = true)]
async fn a_redirect_loops_error_keeps_no_secret() {
    let server = FaultServer::start(Script::always(
        Action::status(307).header("location", "/orders?token=s3cret"),
    ))
    .await;
    let c = resilience_runtime::ClientSettings::DEFAULT.build().unwrap();
    let e = pay(&c, &server.url("/orders?token=s3cret"))
        .await
        .unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[resilient(timeout = "1s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn pay_boxed(
    c: &reqwest::Client,
    url: &str,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    Ok(c.post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// As the README says: a `reqwest::Error` the body returns boxed carries neither the attempts
/// nor the key (no runtime `Error` is in the box); the retries happened all the same.
#[tokio::test(start_paused = true)]
async fn a_boxed_reqwest_error_carries_no_runtime_facts() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = pay_boxed(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 2);
    assert!(e.downcast_ref::<Error>().is_none(), "{e:?}");
    assert!(e.downcast_ref::<reqwest::Error>().is_some(), "{e:?}");
}

#[resilient(method = POST, timeout = "1s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto,
    breaker = { name = "em_order_then_track", failure_rate = 1.0, min_calls = 1, window = 1, open_for = "1h", half_open_calls = 1 })]
async fn order_then_track_behind_a_breaker(
    c: &reqwest::Client,
    orders: &str,
    track: &str,
) -> Result<u16, Error> {
    c.post(orders)
        .body("qty=1")
        .send()
        .await?
        .error_for_status()?;
    Ok(c.get(track).send().await?.status().as_u16())
}

/// The same, the retry refused by the breaker the connect failure opened: the refusal names
/// the key and says the request may have been carried out, as the attempt's own error does.
#[tokio::test(start_paused = true)]
async fn a_breaker_refusal_after_a_keyed_post_was_carried_out_says_so() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/track", resilience_fault_server::refused_addr());
    let e = order_then_track_behind_a_breaker(
        &reqwest::Client::new(),
        &orders.url("/orders"),
        &refused,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.kind(), orders.count()),
        (ErrorKind::CircuitOpen, 1),
        "{e}"
    );
    assert!(e.to_string().contains("may have been carried out"), "{e}");
}

#[resilient(method = POST, timeout = "1s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), idempotency_key = auto,
    budget = { name = "em_order_then_track", ratio = 0.0, min_per_sec = 0 })]
async fn order_then_track_on_a_budget(
    c: &reqwest::Client,
    orders: &str,
    track: &str,
) -> Result<u16, Error> {
    c.post(orders)
        .body("qty=1")
        .send()
        .await?
        .error_for_status()?;
    Ok(c.get(track).send().await?.status().as_u16())
}

/// And a retry the exhausted budget refused (once the allowance for connect failures beside
/// it is spent): the same note.
#[tokio::test(start_paused = true)]
async fn a_budget_refusal_after_a_keyed_post_was_carried_out_says_so() {
    let orders = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/track", resilience_fault_server::refused_addr());
    let c = reqwest::Client::new();
    let mut refusal = None;
    for _ in 0..40 {
        let e = order_then_track_on_a_budget(&c, &orders.url("/orders"), &refused)
            .await
            .unwrap_err();
        if e.kind() == ErrorKind::BudgetExhausted {
            refusal = Some(e);
            break;
        }
    }
    let e = refusal.expect("the allowance ran out within 40 calls");
    assert_eq!(e.attempts(), 1, "{e}");
    assert!(e.to_string().contains("may have been carried out"), "{e}");
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn inner_quote(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(timeout = "5s", max_attempts = 1, budget = false)]
async fn outer_quote(c: &reqwest::Client, quote: &str, rates: &str) -> Result<u16, Error> {
    let quoted = inner_quote(c, quote).await;
    // A lookup of its own, answered 429 with a short Retry-After, not checked.
    let _ = c.get(rates).send().await?;
    quoted
}

/// A nested call's error keeps the `Retry-After` its own answer gave (120 s), not the one a
/// later request of the enclosing body got (1 s).
#[tokio::test(start_paused = true)]
async fn a_nested_calls_error_keeps_its_own_retry_after() {
    let quote = FaultServer::start(Script::always(Action::status(503).retry_after(120))).await;
    let rates = FaultServer::start(Script::always(Action::status(429).retry_after(1))).await;
    let e = outer_quote(&reqwest::Client::new(), &quote.url("/q"), &rates.url("/r"))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(120)), "{e}");
}

/// A nested call whose answer gave no `Retry-After` returns an error without one, whatever a
/// later request of the enclosing body was told.
#[tokio::test(start_paused = true)]
async fn a_nested_calls_error_takes_no_retry_after_of_another_request() {
    let lookup = FaultServer::start(Script::always(Action::status(503))).await;
    let rates = FaultServer::start(Script::always(Action::status(429).retry_after(1))).await;
    let e = outer_quote(&reqwest::Client::new(), &lookup.url("/l"), &rates.url("/r"))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(e.retry_after(), None, "{e}");
}

#[resilient(timeout = "100ms", max_attempts = 3, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false, idempotency_key = auto)]
async fn pay_quickly(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A keyed call whose first attempt timed out (the charge may have gone through) and whose
/// later attempts were refused before anything was done (429) says the request may have been
/// carried out, naming its key: the last attempt's failure alone said it was not, and a
/// caller telling the customer "payment failed" on that would repeat the incident.
#[tokio::test(start_paused = true)]
async fn a_keyed_call_says_an_earlier_attempt_may_have_been_carried_out() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.index == 0 {
            Action::stall()
        } else {
            Action::status(429)
        }
    }))
    .await;
    let e = pay_quickly(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!(
        (server.count(), e.attempts(), e.http_status()),
        (3, 3, Some(429)),
        "{e}"
    );
    // Its class is the last attempt's.
    assert_eq!(
        e.class(),
        Some(resilience_runtime::Class::Status(429)),
        "{e}"
    );
    let key = e.idempotency_key().expect("keyed").to_owned();
    assert!(
        e.to_string().contains(&format!(
            "[Idempotency-Key {key}: the request may have been carried out"
        )),
        "{e}"
    );
    // The control: refused every time, never carried out.
    let server = FaultServer::start(Script::always(Action::status(429))).await;
    let e = pay_quickly(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 3, "{e}");
    assert!(!e.to_string().contains("may have been carried out"), "{e}");
}

#[resilient(method = POST, timeout = "1s", max_attempts = 1, budget = false, idempotency_key = reference)]
async fn reserve_under_its_own_key(
    c: &reqwest::Client,
    url: &str,
    reference: &str,
) -> Result<u16, Error> {
    Ok(c.post(url).body("sku=1").send().await?.status().as_u16())
}

#[resilient(timeout = "1s", max_attempts = 3, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false, idempotency_key = auto)]
async fn reserve_then_pay(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    reserve_under_its_own_key(c, &format!("{base}reserve"), "order-7").await?;
    Ok(c.post(format!("{base}pay"))
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(timeout = "1s", max_attempts = 3, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn checkout_unkeyed(c: &reqwest::Client, base: &str, reference: &str) -> Result<u16, Error> {
    reserve_under_its_own_key(c, &format!("{base}reserve"), reference).await?;
    Ok(c.get(format!("{base}receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(timeout = "1s", max_attempts = 3, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false, idempotency_key = reference)]
async fn checkout_keyed(c: &reqwest::Client, base: &str, reference: &str) -> Result<u16, Error> {
    reserve_under_its_own_key(c, &format!("{base}reserve"), reference).await?;
    Ok(c.get(format!("{base}receipt"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A nested POST under a key the body gives it (a parameter), then a GET answered 503: an
/// enclosing call without a key of its own does not run its body again (the nested POST went
/// out under a key that call cannot vouch for); given the same reference as its own key, it
/// retries around the nested POST as around a keyed request, the POST resent under its key.
#[tokio::test(start_paused = true)]
async fn an_unkeyed_call_around_a_nested_keyed_post_is_not_retried_until_keyed_itself() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/receipt" && seen.index == 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let base = server.url("/");
    let e = checkout_unkeyed(&reqwest::Client::new(), &base, "order-8")
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(server.count_path("/reserve"), 1);
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/receipt" && seen.index == 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let base = server.url("/");
    assert_eq!(
        checkout_keyed(&reqwest::Client::new(), &base, "order-9")
            .await
            .unwrap(),
        200
    );
    let reserves: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/reserve")
        .collect();
    assert_eq!(reserves.len(), 2);
    assert!(
        reserves
            .iter()
            .all(|r| r.idempotency_key() == Some("order-9")),
        "the nested POST resent under its key"
    );
}

/// What a nested call carried out under a key of its own is not said of the call's key: the
/// payment, refused (429) at every attempt, was never carried out under it.
#[tokio::test(start_paused = true)]
async fn a_nested_calls_request_under_its_own_key_is_not_said_of_the_calls_key() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/pay" {
            Action::status(429)
        } else {
            Action::ok()
        }
    }))
    .await;
    let e = reserve_then_pay(&reqwest::Client::new(), &server.url(""))
        .await
        .unwrap_err();
    assert_eq!((e.attempts(), server.count_path("/pay")), (3, 3), "{e}");
    assert!(!e.to_string().contains("may have been carried out"), "{e}");
}

#[resilient(
    method = GET,
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "em_refuses_nested", failure_rate = 1.0, min_calls = 1, window = 1, open_for = "1h", half_open_calls = 1 },
)]
async fn guarded_lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A quota check whose 429 the body handles, then a nested lookup behind its breaker.
#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false)]
async fn quota_then_guarded_lookup(
    c: &reqwest::Client,
    quota: &str,
    url: &str,
) -> Result<u16, Error> {
    let _limited = c.get(quota).send().await?.status().as_u16() == 429;
    guarded_lookup(c, url).await
}

#[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false)]
async fn nested_profile(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A token, then a nested call; the enclosing call's breaker opens on the nested call's 503.
#[resilient(
    method = GET,
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    breaker = { name = "em_token_then_nested", failure_rate = 1.0, min_calls = 1, window = 1, open_for = "1h", half_open_calls = 1 },
)]
async fn token_then_nested_profile(
    c: &reqwest::Client,
    token: &str,
    profile: &str,
) -> Result<String, Error> {
    let _t = c
        .get(token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    nested_profile(c, profile).await
}

/// The retry its breaker refused (it opened on the nested call's 503) ends with the status
/// that failed, not the 200 of the body's own token request before the nested call ("last
/// status 200" for a failure, which a caller relaying the status passed on).
#[tokio::test(start_paused = true)]
async fn a_refusal_after_a_nested_failure_names_that_failures_status() {
    let token = FaultServer::start(Script::always(Action::ok())).await;
    let profile = FaultServer::start(Script::always(Action::status(503))).await;
    let e = token_then_nested_profile(
        &reqwest::Client::new(),
        &token.url("/token"),
        &profile.url("/p"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert!(!e.to_string().contains("last status 200"), "{e}");
}

#[resilient(method = GET, timeout = "100ms", max_attempts = 1, budget = false)]
async fn nested_slow_profile(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A token, then a nested call that times out; the enclosing call's breaker opens on it.
#[resilient(
    method = GET,
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    breaker = { name = "em_token_then_slow_nested", failure_rate = 1.0, min_calls = 1, window = 1, open_for = "1h", half_open_calls = 1 },
)]
async fn token_then_slow_profile(
    c: &reqwest::Client,
    token: &str,
    profile: &str,
) -> Result<String, Error> {
    let _t = c
        .get(token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    nested_slow_profile(c, profile).await
}

/// The retry its breaker refused after the nested call timed out names no status: the 200
/// of the body's own token request is another request's, and the failure had no response.
#[tokio::test(start_paused = true)]
async fn a_refusal_after_a_nested_timeout_names_no_status_of_another_request() {
    let token = FaultServer::start(Script::always(Action::ok())).await;
    let profile = FaultServer::start(Script::always(Action::stall())).await;
    let e = token_then_slow_profile(
        &reqwest::Client::new(),
        &token.url("/token"),
        &profile.url("/p"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
    assert_eq!(e.http_status(), None, "{e}");
    assert!(!e.to_string().contains("last status"), "{e}");
}

/// A nested call its open breaker refused before it started carries no `Retry-After`: not the
/// 60 s of the 429 the enclosing body handled before it (its caller would wait a minute for
/// a breaker's refusal).
#[tokio::test(start_paused = true)]
async fn a_nested_breaker_refusal_carries_no_retry_after_of_the_enclosing_body() {
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let c = reqwest::Client::new();
    guarded_lookup(&c, &down.url("/")).await.unwrap_err();
    let quota = FaultServer::start(Script::always(Action::status(429).retry_after(60))).await;
    let e = quota_then_guarded_lookup(&c, &quota.url("/quota"), &down.url("/"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        (ErrorKind::CircuitOpen, None),
        "{e}"
    );
    assert_eq!(down.count(), 1, "{e}");
}

#[resilient(timeout = "200ms", deadline = "5s", max_attempts = 1, budget = false, idempotency_key = auto, hedge(delay = "100ms"))]
async fn pay_hedged(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The same within one hedged round: the first request times out (the charge may have gone
/// through) while its hedge runs on, and the hedge is then answered 429. The round is decided
/// on the 429, but the error still says the request may have been carried out, naming the key
/// (it once said nothing: only the round's last attempt counted).
#[tokio::test(start_paused = true)]
async fn a_hedged_round_says_a_timed_out_attempt_may_have_been_carried_out() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.index == 0 {
            Action::stall()
        } else {
            Action::status(429).after(Duration::from_millis(150))
        }
    }))
    .await;
    let e = pay_hedged(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.attempts()), (2, 2), "{e}");
    let key = e.idempotency_key().expect("keyed").to_owned();
    assert!(
        e.to_string().contains(&format!(
            "[Idempotency-Key {key}: the request may have been carried out"
        )),
        "{e}"
    );
}

#[resilient(method = POST, timeout = "1s", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn send_receipt(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("r")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(method = POST, timeout = "5s", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn charge_then_receipt(
    c: &reqwest::Client,
    charge: &str,
    receipt: &str,
) -> Result<u16, Error> {
    let s = c
        .post(charge)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16();
    send_receipt(c, receipt).await?;
    Ok(s)
}

#[resilient(
    timeout = "1s",
    max_attempts = 2,
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn rates(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(method = POST, timeout = "5s", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn quote_then_pay(c: &reqwest::Client, rates_url: &str, pay: &str) -> Result<u16, Error> {
    rates(c, rates_url).await?;
    Ok(c.post(pay).body("a=1").send().await?.status().as_u16())
}

#[resilient(method = POST, timeout = "1s", max_attempts = 1, budget = false)]
async fn hold_stock(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("sku=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "1ms", max = "1ms"),
    budget = { name = "em_spent_on_rates", ratio = 0.0, min_per_sec = 0 }
)]
async fn rates_on_a_spent_budget(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(method = POST, timeout = "5s", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn hold_then_pay(
    c: &reqwest::Client,
    stock: &str,
    rates: &str,
    pay: &str,
) -> Result<u16, Error> {
    if !stock.is_empty() {
        hold_stock(c, stock).await?;
    }
    if !rates.is_empty() {
        rates_on_a_spent_budget(c, rates).await?;
    }
    Ok(c.post(pay).body("a=1").send().await?.status().as_u16())
}

/// A nested call's failure before the call's own keyed charge, named with the charge's key:
/// not as possibly carried out, whether that call sent a POST of its own (answered 503: it
/// once counted as the charge's) or ended on a spent retry budget (an error the nested call
/// made after its last attempt, which the enclosing call once read as its own).
#[tokio::test(start_paused = true)]
async fn a_nested_failure_before_the_charge_says_the_charge_was_not_carried_out() {
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let pay = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let e = hold_then_pay(&c, &down.url("/stock"), "", &pay.url("/pay"))
        .await
        .unwrap_err();
    assert!(e.idempotency_key().is_some(), "{e}");
    assert!(!e.to_string().contains("may have been carried out"), "{e}");
    let e = hold_then_pay(&c, "", &down.url("/rates"), &pay.url("/pay"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BudgetExhausted, "{e}");
    assert!(e.idempotency_key().is_some(), "{e}");
    assert!(!e.to_string().contains("may have been carried out"), "{e}");
    assert_eq!(pay.count(), 0);
}

/// The README's "An error holds one key", pinned: a nested keyed call's error names that
/// call's key, and the enclosing call's, whose charge went through, apart; an unkeyed nested call's
/// failure before the enclosing call's own request is named with the enclosing call's key,
/// not as possibly carried out (nothing under it was sent; its 503 was the nested GET's).
#[tokio::test(start_paused = true)]
async fn an_error_holds_one_key() {
    let charges = FaultServer::start(Script::always(Action::ok())).await;
    let receipts = FaultServer::start(Script::always(Action::status(422))).await;
    let e = charge_then_receipt(
        &reqwest::Client::new(),
        &charges.url("/charges"),
        &receipts.url("/receipts"),
    )
    .await
    .unwrap_err();
    let charge_key = charges.requests()[0].idempotency_key().unwrap().to_owned();
    let receipt_key = receipts.requests()[0].idempotency_key().unwrap().to_owned();
    assert_eq!(e.idempotency_key(), Some(receipt_key.as_str()), "{e}");
    assert_ne!(charge_key, receipt_key);
    // The charge's key is not lost: the call around the receipt's names it.
    assert_eq!(
        e.enclosing_idempotency_key(),
        Some(charge_key.as_str()),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(&format!("enclosing call's Idempotency-Key {charge_key}")),
        "{e}"
    );

    let rates_server = FaultServer::start(Script::always(Action::status(503))).await;
    let pay = FaultServer::start(Script::always(Action::ok())).await;
    let e = quote_then_pay(
        &reqwest::Client::new(),
        &rates_server.url("/rates"),
        &pay.url("/pay"),
    )
    .await
    .unwrap_err();
    assert_eq!(pay.count(), 0);
    assert!(e.idempotency_key().is_some(), "{e}");
    assert!(!e.to_string().contains("may have been carried out"), "{e}");
    assert_eq!(e.attempts(), 2, "the nested call's two: {e}");
}

#[resilient(
    method = GET,
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    breaker = { name = "em_opens_on_503", failure_rate = 1.0, min_calls = 1, window = 1, open_for = "1h", half_open_calls = 1 },
)]
async fn opens_its_breaker(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The README's limit, pinned: a retry its breaker refused (it opened on the 503) ends
/// `CircuitOpen` with the 503's status but without its `Retry-After`.
#[tokio::test(start_paused = true)]
async fn a_breakers_refusal_after_a_retry_after_does_not_carry_it() {
    let server = FaultServer::start(Script::always(Action::status(503).retry_after(1))).await;
    let e = opens_its_breaker(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.http_status(), e.retry_after()),
        (ErrorKind::CircuitOpen, Some(503), None),
        "{e}"
    );
    assert_eq!(server.count(), 1);
}

#[resilient(timeout = "200ms", deadline = "5s", max_attempts = 1, budget = false, idempotency_key = auto, hedge(delay = "100ms"))]
async fn pay_hedged_then_wait(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let status = c.post(url).body("amount=1").send().await?.status();
    if status == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
        // Something else of the body's that hangs after the refusal.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    if status.is_client_error() || status.is_server_error() {
        return Err(Error::status(status));
    }
    Ok(status.as_u16())
}

#[resilient(timeout = "200ms", deadline = "5s", max_attempts = 2, backoff(initial = "10ms", max = "10ms", jitter = none), budget = false, idempotency_key = auto)]
async fn pay_then_wait(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let status = c.post(url).body("amount=1").send().await?.status();
    if status == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
        // Something else of the body's that hangs after the refusal.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    if status.is_client_error() || status.is_server_error() {
        return Err(Error::status(status));
    }
    Ok(status.as_u16())
}

/// The same without a hedge: each attempt's keyed POST refused with a 422 (answered, not
/// carried out), the attempt then timing out on something else. Nothing under the key was
/// carried out, by the last attempt or the one before, and the error does not say it may have
/// been (a timeout once said so whatever its attempt's keyed request got); a POST that timed
/// out in flight still does.
#[tokio::test(start_paused = true)]
async fn an_attempt_timing_out_after_its_keyed_post_was_refused_says_nothing_was_carried_out() {
    let server = FaultServer::start(Script::always(Action::status(422))).await;
    let e = pay_then_wait(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.attempts()), (2, 2), "{e}");
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
    assert!(!e.to_string().contains("may have been carried out"), "{e}");

    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let e = pay_then_wait(&reqwest::Client::new(), &stalled.url("/charges"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("may have been carried out"), "{e}");
}

#[resilient(method = POST, timeout = "1s", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn pay_then_track(c: &reqwest::Client, pay: &str, track: &str) -> Result<u16, Error> {
    let status = c.post(pay).body("amount=1").send().await?.status();
    // The refusal handled, the body goes on to something of its own that fails.
    c.get(track).send().await?.error_for_status()?;
    Ok(status.as_u16())
}

/// An attempt whose keyed POST was refused with a 4xx, then failed on a GET's 503: nothing
/// under the key was carried out, and the error does not say it may have been (the 503's class
/// once decided the key's note).
#[tokio::test(start_paused = true)]
async fn a_failure_after_the_keyed_post_was_refused_says_nothing_was_carried_out() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/charges" {
            Action::status(422)
        } else {
            Action::status(503)
        }
    }))
    .await;
    let e = pay_then_track(
        &reqwest::Client::new(),
        &server.url("/charges"),
        &server.url("/track"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert!(e.idempotency_key().is_some(), "{e}");
    assert!(!e.to_string().contains("may have been carried out"), "{e}");
}

#[resilient(method = POST, timeout = "1s", max_attempts = 1, budget = false, idempotency_key = order_id)]
async fn charge_order(c: &reqwest::Client, url: &str, order_id: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(method = POST, timeout = "5s", max_attempts = 1, budget = false, idempotency_key = order_id)]
async fn place_order(
    c: &reqwest::Client,
    charges: &str,
    track: &str,
    order_id: &str,
) -> Result<u16, Error> {
    let charged = charge_order(c, charges, order_id).await?;
    c.get(track).send().await?.error_for_status()?;
    Ok(charged)
}

/// A nested call given the call's own key (`place_order(order_id)` calling `charge_order`
/// keyed by `order_id` too) charges under that key: a failure of the call after it (a GET's
/// 503) says the key's request may have been carried out (it once said nothing: the nested
/// call's charge was not counted as the call's own).
#[tokio::test(start_paused = true)]
async fn a_charge_by_a_nested_call_under_the_same_key_is_the_calls_own() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/charges" {
            Action::status(201)
        } else {
            Action::status(503)
        }
    }))
    .await;
    let e = place_order(
        &reqwest::Client::new(),
        &server.url("/charges"),
        &server.url("/track"),
        "order-42",
    )
    .await
    .unwrap_err();
    assert_eq!(e.idempotency_key(), Some("order-42"), "{e}");
    assert!(e.to_string().contains("may have been carried out"), "{e}");
}

#[resilient(method = PUT, timeout = "1s", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn put_then_track(c: &reqwest::Client, doc: &str, track: &str) -> Result<u16, Error> {
    let status = c.put(doc).body("v=2").send().await?.status();
    c.get(track).send().await?.error_for_status()?;
    Ok(status.as_u16())
}

/// A keyed PUT answered 200, then a GET's 503: the PUT under the key was carried out, and the
/// error says it may have been (a PUT needs no key, and was once not counted as the call's own
/// request under it).
#[tokio::test(start_paused = true)]
async fn a_keyed_put_carried_out_is_the_calls_own() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/docs/1" {
            Action::ok()
        } else {
            Action::status(503)
        }
    }))
    .await;
    let e = put_then_track(
        &reqwest::Client::new(),
        &server.url("/docs/1"),
        &server.url("/track"),
    )
    .await
    .unwrap_err();
    assert!(e.idempotency_key().is_some(), "{e}");
    assert!(e.to_string().contains("may have been carried out"), "{e}");
}

#[resilient(
    method = POST,
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    idempotency_key = auto,
    breaker = { name = "em_refused_then_tracked", failure_rate = 0.5, min_calls = 1, window = 1, open_for = "1h", half_open_calls = 1 },
)]
async fn pay_then_track_behind_a_breaker(
    c: &reqwest::Client,
    pay: &str,
    track: &str,
) -> Result<u16, Error> {
    let status = c.post(pay).body("amount=1").send().await?.status();
    c.get(track).send().await?.error_for_status()?;
    Ok(status.as_u16())
}

/// The same when the GET's 503 opened the breaker and the breaker refused the retry: the
/// error made then, from the attempt before it, says nothing was carried out either (it once
/// did, the refusal reading only that attempt's class).
#[tokio::test(start_paused = true)]
async fn a_breakers_refusal_after_a_refused_keyed_post_says_nothing_was_carried_out() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/charges" {
            Action::status(422)
        } else {
            Action::status(503)
        }
    }))
    .await;
    let e = pay_then_track_behind_a_breaker(
        &reqwest::Client::new(),
        &server.url("/charges"),
        &server.url("/track"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.kind(), e.attempts(), e.http_status()),
        (ErrorKind::CircuitOpen, 1, Some(503)),
        "{e}"
    );
    assert!(e.idempotency_key().is_some(), "{e}");
    assert!(!e.to_string().contains("may have been carried out"), "{e}");
}

/// The control of the hedged round above: the first request refused with a 422 (answered,
/// not carried out) and its attempt then timing out on something else, the hedge answered 429:
/// nothing under the key was carried out, and the error does not say it may have been.
#[tokio::test(start_paused = true)]
async fn a_hedged_round_whose_requests_were_refused_says_nothing_was_carried_out() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.index == 0 {
            Action::status(422)
        } else {
            Action::status(429).after(Duration::from_millis(150))
        }
    }))
    .await;
    let e = pay_hedged_then_wait(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.attempts()), (2, 2), "{e}");
    assert!(!e.to_string().contains("may have been carried out"), "{e}");
}

/// A nested call whose request was never sent (a URL reqwest refuses to build), after the
/// outer body's own GET was answered 200: its error says no status (the 200 is another
/// request's), not "last status 200".
#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn em_nested_never_sent(c: &reqwest::Client) -> Result<u16, Error> {
    Ok(c.get("http://[not a url").send().await?.status().as_u16())
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false, method = GET)]
async fn em_outer_after_a_200(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    c.get(url).send().await?.error_for_status()?;
    em_nested_never_sent(c).await
}

#[tokio::test(start_paused = true)]
async fn a_nested_calls_unsent_failure_names_no_status_of_another_request() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let e = em_outer_after_a_200(&reqwest::Client::new(), &server.url("/token"))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), None, "{e}");
    assert!(!e.to_string().contains("last status"), "{e}");
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false, idempotency_key = order, bulkhead(max_concurrent = 1, max_wait = "0ms"))]
async fn mail_receipt_once(c: &reqwest::Client, url: &str, order: &str) -> Result<u16, Error> {
    Ok(c.post(format!("{url}/receipts"))
        .body(order.to_owned())
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(timeout = "2s", max_attempts = 1, budget = false, idempotency_key = order)]
async fn charge_then_mail_receipt(
    c: &reqwest::Client,
    url: &str,
    order: &str,
) -> Result<u16, Error> {
    c.post(format!("{url}/charges"))
        .body("39000")
        .send()
        .await?
        .error_for_status()?;
    mail_receipt_once(c, url, order).await
}

/// A keyed charge answered 201, then a nested call under the same key refused before any
/// attempt (its bulkhead full): the call's error is that refusal, and it names the key and
/// says the request may have been carried out: the charge was. It said nothing of it (the
/// refusal's own class, "rejected", read alone).
#[tokio::test(start_paused = true)]
async fn a_nested_refusal_under_the_same_key_after_a_charge_says_it_may_have_been_carried_out() {
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let shop = FaultServer::start(Script::always(Action::status(201))).await;
    let c = reqwest::Client::new();
    let holder = tokio::spawn({
        let (c, url) = (c.clone(), stalled.url(""));
        async move { mail_receipt_once(&c, &url, "order-41").await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let e = charge_then_mail_receipt(&c, &shop.url(""), "order-42")
        .await
        .unwrap_err();
    assert_eq!(shop.count(), 1, "the charge only: {e}");
    assert_eq!(e.kind(), ErrorKind::BulkheadFull, "{e}");
    assert_eq!(e.idempotency_key(), Some("order-42"), "{e}");
    assert!(
        e.to_string()
            .contains("[Idempotency-Key order-42: the request may have been carried out"),
        "{e}"
    );
    holder.abort();
}
