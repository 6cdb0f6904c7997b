//! Requests sent through `reqwest-middleware`'s `ClientWithMiddleware` (feature
//! `reqwest-middleware`): its builder's `.send()` and its `execute(request)` are stamped and
//! recorded as reqwest's own are, through the client's middleware stack and with the builder's
//! extensions.
//!
//! Every peer is a task on the test's current-thread runtime with a paused clock.

use std::time::Duration;

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use resilience_fault_server::{Action, FaultServer, Script, refused_addr};
use resilience_runtime::{ClientSettings, resilient};

/// The tenant an extension names, written into a header by the middleware below.
#[derive(Clone)]
struct Tenant(&'static str);

/// A middleware of the service's own: writes the request's `Tenant` extension into a header.
struct TenantHeader;

#[async_trait::async_trait]
impl Middleware for TenantHeader {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if let Some(Tenant(t)) = extensions.get::<Tenant>() {
            req.headers_mut().insert("x-tenant", t.parse().unwrap());
        }
        next.run(req, extensions).await
    }
}

fn client() -> ClientWithMiddleware {
    let plain = ClientSettings {
        connect_timeout: Duration::from_millis(100),
        ..ClientSettings::DEFAULT
    }
    .build()
    .unwrap();
    ClientBuilder::new(plain).with(TenantHeader).build()
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn stock(c: &ClientWithMiddleware, url: &str) -> Result<String, reqwest_middleware::Error> {
    let resp = c.get(url).with_extension(Tenant("acme")).send().await?;
    Ok(resp.error_for_status()?.text().await?)
}

/// A GET reset, then answered: retried, each attempt stamped and sent through the middleware
/// with the builder's extension.
#[tokio::test(start_paused = true)]
async fn a_get_through_middleware_is_stamped_and_retried() {
    let server = FaultServer::start(Script::sequence([
        Action::reset(),
        Action::status(503),
        Action::ok().body("12"),
    ]))
    .await;
    assert_eq!(stock(&client(), &server.url("/stock")).await.unwrap(), "12");
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    let attempts: Vec<_> = seen.iter().map(|s| s.header("x-attempt")).collect();
    assert_eq!(attempts, [Some("1"), Some("2"), Some("3")]);
    for s in &seen {
        assert_eq!(
            s.header("x-tenant"),
            Some("acme"),
            "the extension went through"
        );
        assert!(s.header("traceparent").is_some());
        assert!(s.header("x-request-id").is_some());
    }
    assert_eq!(
        seen[0].header("x-request-id"),
        seen[2].header("x-request-id")
    );
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false,
    idempotency_key = auto
)]
async fn charge(c: &ClientWithMiddleware, url: &str) -> anyhow::Result<u16> {
    let resp = c.post(url).body("amount=100").send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A keyed POST reset after it arrived: sent again with the same key.
#[tokio::test(start_paused = true)]
async fn a_keyed_post_through_middleware_carries_its_key_on_every_attempt() {
    let server = FaultServer::start(Script::sequence([Action::reset(), Action::ok()])).await;
    assert_eq!(
        charge(&client(), &server.url("/charges")).await.unwrap(),
        200
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    let key = seen[0]
        .idempotency_key()
        .expect("the key on the first attempt");
    assert_eq!(seen[1].idempotency_key(), Some(key));
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, retry_on = [connect])]
async fn place(c: &ClientWithMiddleware, url: &str) -> Result<u16, reqwest_middleware::Error> {
    let resp = c.post(url).body("order").send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// An unkeyed POST reset: never sent again. One that could not connect: retried, as
/// `retry_on = [connect]` asks (it never left).
#[tokio::test(start_paused = true)]
async fn an_unkeyed_post_through_middleware_is_not_resent() {
    let server = FaultServer::start(Script::always(Action::reset())).await;
    place(&client(), &server.url("/orders")).await.unwrap_err();
    assert_eq!(server.count(), 1, "the POST went out again");
    let refused = format!("http://{}/orders", refused_addr());
    let (res, report) = resilience_runtime::measure(place(&client(), &refused)).await;
    res.unwrap_err();
    let report = report.expect("a report");
    assert_eq!(report.attempts, 3, "{report:?}");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn stock_by_request(c: &ClientWithMiddleware, url: &str) -> anyhow::Result<String> {
    let req = c.get(url).build()?;
    let resp = c.execute(req).await?;
    Ok(resp.error_for_status()?.text().await?)
}

/// `execute(request)` on the middleware client: stamped, its 503 and `Retry-After` recorded
/// (the retry waits what the server asked, not the 10 ms backoff).
#[tokio::test(start_paused = true)]
async fn execute_through_middleware_is_stamped_and_recorded() {
    let server = FaultServer::start(Script::sequence([
        Action::unavailable(2),
        Action::ok().body("7"),
    ]))
    .await;
    let (res, report) =
        resilience_runtime::measure(stock_by_request(&client(), &server.url("/stock"))).await;
    assert_eq!(res.unwrap(), "7");
    let report = report.expect("a report");
    assert!(report.waited >= Duration::from_secs(2), "{report:?}");
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("x-attempt"), Some("2"));
}

/// A GET that stalls: each attempt timed out and retried; the runtime's error travels as the
/// middleware error, with its attempts.
#[tokio::test(start_paused = true)]
async fn the_runtimes_error_travels_as_a_middleware_error() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let e = stock(&client(), &server.url("/stock")).await.unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &e else {
        panic!("not the runtime's error: {e}");
    };
    let own = inner
        .downcast_ref::<resilience_runtime::Error>()
        .expect("the runtime's error");
    assert_eq!(
        own.kind(),
        resilience_runtime::ErrorKind::AttemptTimeout,
        "{own}"
    );
    assert_eq!(own.attempts(), 3, "{own}");
    assert_eq!(server.count(), 3);
}

/// A middleware that waits before it passes the request on (a client-side rate limiter, say).
struct Waits(Duration);

#[async_trait::async_trait]
impl Middleware for Waits {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        tokio::time::sleep(self.0).await;
        next.run(req, extensions).await
    }
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 1)]
async fn stock_behind_a_wait(
    c: &ClientWithMiddleware,
    url: &str,
) -> Result<String, reqwest_middleware::Error> {
    let resp = c.get(url).send().await?;
    Ok(resp.error_for_status()?.text().await?)
}

/// `X-Timeout-Ms` is the time left as the request enters the middleware stack: behind a
/// middleware that waits 300 ms, the server is told the whole second the attempt had then,
/// though 700 ms are left when the request arrives (the README says so).
#[tokio::test(start_paused = true)]
async fn the_time_left_is_told_as_the_request_enters_the_middleware_stack() {
    let server = FaultServer::start(Script::always(Action::ok().body("12"))).await;
    let plain = reqwest::Client::new();
    let c = ClientBuilder::new(plain)
        .with(Waits(Duration::from_millis(300)))
        .build();
    assert_eq!(
        stock_behind_a_wait(&c, &server.url("/stock"))
            .await
            .unwrap(),
        "12"
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-timeout-ms"), Some("1000"));
}

/// A middleware of the service's own that sends a request again once when it is answered 503
/// (as a retry middleware does), the clone carrying the call's key.
struct ResendOn503;

#[async_trait::async_trait]
impl Middleware for ResendOn503 {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let again = req.try_clone();
        let first = next.clone().run(req, extensions).await?;
        match again {
            Some(again) if first.status() == 503 => next.run(again, extensions).await,
            _ => Ok(first),
        }
    }
}

#[resilient(method = POST, timeout = "1s", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn charge_then_track(
    c: &ClientWithMiddleware,
    charges: &str,
    track: &str,
) -> anyhow::Result<u16> {
    let status = c.post(charges).body("amount=1").send().await?.status();
    // Its failures as the runtime's error, which the call writes its key and attempts into.
    c.get(track)
        .send()
        .await
        .map_err(resilience_runtime::Error::call)?
        .error_for_status()
        .map_err(resilience_runtime::Error::call)?;
    Ok(status.as_u16())
}

/// A keyed POST the middleware sent twice (503, then a 422 the body sees): the first may have
/// been carried out under the key, and the attempt's later failure (a GET's 503) says so (it
/// once said nothing: the resend's completion was not counted as the call's own request).
#[tokio::test(start_paused = true)]
async fn a_keyed_post_a_middleware_sent_again_may_have_been_carried_out() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/charges" && seen.index == 0 {
            Action::status(503)
        } else if seen.path == "/charges" {
            Action::status(422)
        } else {
            Action::status(503)
        }
    }))
    .await;
    let plain = ClientSettings {
        connect_timeout: Duration::from_millis(100),
        ..ClientSettings::DEFAULT
    }
    .build()
    .unwrap();
    let c = ClientBuilder::new(plain).with(ResendOn503).build();
    let e = charge_then_track(&c, &server.url("/charges"), &server.url("/track"))
        .await
        .unwrap_err();
    assert_eq!(server.count_path("/charges"), 2, "{e}");
    let e = e
        .downcast_ref::<resilience_runtime::Error>()
        .expect("the runtime's error");
    assert!(e.to_string().contains("may have been carried out"), "{e}");
}

/// A middleware of the service's own that reports each request it passed on to an audit
/// service, after the answer, with its own plain client, and fails the request when the audit
/// cannot be reached (`?` on reqwest's error: `reqwest_middleware::Error::Reqwest`).
struct Audit(String);

#[async_trait::async_trait]
impl Middleware for Audit {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let res = next.run(req, extensions).await?;
        reqwest::Client::new()
            .post(&self.0)
            .body("sent")
            .send()
            .await?;
        Ok(res)
    }
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, retry_on = [connect])]
async fn place_by_request(
    c: &ClientWithMiddleware,
    url: &str,
) -> Result<u16, reqwest_middleware::Error> {
    let req = c.post(url).body("order").build()?;
    Ok(c.execute(req).await?.error_for_status()?.status().as_u16())
}

#[resilient(timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, retry_on = [connect])]
async fn upload(c: &ClientWithMiddleware, url: &str) -> Result<u16, reqwest_middleware::Error> {
    let form = reqwest::multipart::Form::new().text("receipt", "r-1");
    let resp = c.post(url).multipart(form).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// An unkeyed POST the server carried out, then the middleware's own audit call could not
/// connect: the connect failure the send returns is the audit's, not the POST's. The POST is
/// not sent again (it was, under `retry_on = [connect]`, read as never sent), over a client
/// that reports its completions (`ClientSettings`) and over a plain one alike.
#[tokio::test(start_paused = true)]
async fn a_connect_failure_of_a_middlewares_own_call_is_not_taken_for_the_posts() {
    let audit = format!("http://{}/audit", refused_addr());
    let observed = ClientSettings {
        connect_timeout: Duration::from_millis(100),
        ..ClientSettings::DEFAULT
    }
    .build()
    .unwrap();
    for inner in [observed, reqwest::Client::new()] {
        let c = ClientBuilder::new(inner).with(Audit(audit.clone())).build();
        let server = FaultServer::start(Script::always(Action::ok())).await;
        let e = place(&c, &server.url("/orders")).await.unwrap_err();
        assert!(
            matches!(&e, reqwest_middleware::Error::Reqwest(r) if r.is_connect()),
            "{e}"
        );
        assert_eq!(server.count(), 1, "the POST went out again");
        // The same through `execute(request)`.
        place_by_request(&c, &server.url("/orders"))
            .await
            .unwrap_err();
        assert_eq!(server.count(), 2, "the POST went out again");
        // And a body reqwest cannot copy (a multipart form), whose completion is expected
        // nowhere: not known to have been reported.
        upload(&c, &server.url("/receipts")).await.unwrap_err();
        assert_eq!(server.count(), 3, "the upload went out again");
    }
}

/// A helper outside the annotated body that sends through the middleware client, as the
/// README says to write one: builds its `Request`, stamps it, then `execute`s it.
async fn charge_helper(
    c: &ClientWithMiddleware,
    url: &str,
) -> reqwest_middleware::Result<reqwest::Response> {
    let mut req = c.post(url).body("amount=1").build()?;
    resilience_runtime::stamp_request(&mut req);
    c.execute(req).await
}

#[resilient(method = POST, timeout = "1s", deadline = "10s", backoff(initial = "10ms", max = "10ms"), budget = false, idempotency_key = auto)]
async fn charge_through_helper(
    c: &ClientWithMiddleware,
    url: &str,
) -> Result<u16, reqwest_middleware::Error> {
    Ok(charge_helper(c, url)
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The helper's request carries the call's key on every attempt: reset once, it is sent
/// again under the same key (the server's replay makes it one charge).
#[tokio::test(start_paused = true)]
async fn a_helpers_stamped_request_through_middleware_carries_the_key_on_every_attempt() {
    let server = FaultServer::start(Script::sequence([Action::reset(), Action::ok()])).await;
    assert_eq!(
        charge_through_helper(&client(), &server.url("/charges"))
            .await
            .unwrap(),
        200
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    let key = seen[0]
        .idempotency_key()
        .expect("the key on the first attempt");
    assert_eq!(seen[1].idempotency_key(), Some(key));
    assert_eq!(seen[1].header("x-tenant"), None);
}
