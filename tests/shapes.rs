//! Every function shape and error type the attribute supports, against the loopback fault
//! server: methods on `&self` and `&mut self`, generic functions, by-value arguments cloned for
//! each attempt, and `Error`, `Box<dyn Error>`, `anyhow::Error`, a user's own error type (with
//! `Classify`, and a `thiserror` enum whose `#[error(transparent)]` hides the reqwest error).

mod support;

use std::time::Duration;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Class, Classify, Error, ErrorKind, RequestBuilderExt as _, resilient};

fn client() -> reqwest::Client {
    resilience_runtime::ClientSettings {
        connect_timeout: Duration::from_millis(100),
        ..Default::default()
    }
    .build()
    .unwrap()
}

/// What `flaky()` saw of a call that got through: three attempts (a reset and a 503 retried),
/// each stamped with the call's one request id and its own attempt number.
fn retried_and_stamped(server: &FaultServer) {
    let seen = server.requests();
    assert_eq!(seen.len(), 3, "a reset and a 503 retried");
    let id = seen[0].header("x-request-id").expect("stamped");
    for (n, r) in seen.iter().enumerate() {
        assert_eq!(r.header("x-request-id"), Some(id));
        assert_eq!(r.header("x-attempt"), Some((n + 1).to_string().as_str()));
    }
}

/// A flaky server: a reset, a 503, then 200 "ok".
async fn flaky() -> FaultServer {
    FaultServer::start(vec![Action::reset(), Action::status(503)]).await
}

struct Api {
    http: reqwest::Client,
    base: String,
    calls: u32,
}

impl Api {
    #[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
    async fn get_ref(&self, path: &str) -> Result<String, Error> {
        let url = format!("{}{path}", self.base);
        Ok(self
            .http
            .get(url)
            .resilient()
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    #[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
    async fn get_mut(&mut self, path: &str) -> Result<String, Error> {
        self.calls += 1;
        let url = format!("{}{path}", self.base);
        Ok(self
            .http
            .get(url)
            .resilient()
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn generic<T: std::str::FromStr>(http: &reqwest::Client, url: &str) -> Result<T, Error>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text = http
        .get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    text.parse::<T>().map_err(Error::call)
}

/// `body` is moved into the request on every attempt: each attempt gets its own clone.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn by_value(http: &reqwest::Client, url: String, body: Vec<u8>) -> Result<u16, Error> {
    Ok(http
        .post(url)
        .body(body)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn boxed(
    http: &reqwest::Client,
    url: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    Ok(http
        .get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn with_anyhow(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let resp = http.get(url).resilient().send().await.context("sending")?;
    Ok(resp.error_for_status()?.text().await?)
}

/// A user's own error type: absorbs the runtime's failures through `From`, and classifies
/// itself. It does not implement `std::error::Error` at all.
#[derive(Debug)]
enum GatewayError {
    Busy(u16),
    Declined,
    Runtime(Error),
}

impl From<Error> for GatewayError {
    fn from(e: Error) -> Self {
        GatewayError::Runtime(e)
    }
}

impl Classify for GatewayError {
    fn class(&self) -> Option<Class> {
        match self {
            GatewayError::Busy(s) => Some(Class::Status(*s)),
            GatewayError::Declined => Some(Class::Permanent),
            GatewayError::Runtime(_) => None,
        }
    }
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn own_error(http: &reqwest::Client, url: &str) -> Result<String, GatewayError> {
    let resp = http
        .get(url)
        .resilient()
        .send()
        .await
        .map_err(|e| GatewayError::Runtime(e.into()))?;
    match resp.status().as_u16() {
        200 => Ok(resp
            .text()
            .await
            .map_err(|e| GatewayError::Runtime(e.into()))?),
        402 => Err(GatewayError::Declined),
        s => Err(GatewayError::Busy(s)),
    }
}

/// A user's error that says nothing about itself: the runtime falls back to the status that
/// `.resilient()` recorded.
#[derive(Debug)]
struct Opaque;

impl From<Error> for Opaque {
    fn from(_: Error) -> Self {
        Opaque
    }
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn opaque_error(http: &reqwest::Client, url: &str) -> Result<(), Opaque> {
    let resp = http.get(url).resilient().send().await.map_err(|_| Opaque)?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(Opaque)
    }
}

#[tokio::test(start_paused = true)]
async fn methods_on_self() {
    let server = flaky().await;
    let mut api = Api {
        http: client(),
        base: server.url(""),
        calls: 0,
    };
    assert_eq!(api.get_ref("/a").await.unwrap(), "ok");
    assert_eq!(server.count(), 3);
    server.clear();
    assert_eq!(api.get_mut("/b").await.unwrap(), "ok");
    assert_eq!(api.calls, 3, "the body ran once per attempt");
    assert_eq!(server.count(), 3);
}

/// Two pages into `out`: what a failed attempt pushed stays for the next.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn two_pages(http: &reqwest::Client, base: &str, out: &mut Vec<String>) -> Result<(), Error> {
    for page in ["/1", "/2"] {
        let text = http
            .get(format!("{base}{page}"))
            .send()
            .await?
            .error_for_status()?;
        out.push(text.text().await?);
    }
    Ok(())
}

/// The same, its state rebuilt at the body's head, as the README advises.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn two_pages_afresh(
    http: &reqwest::Client,
    base: &str,
    out: &mut Vec<String>,
) -> Result<(), Error> {
    out.clear();
    for page in ["/1", "/2"] {
        let text = http
            .get(format!("{base}{page}"))
            .send()
            .await?
            .error_for_status()?;
        out.push(text.text().await?);
    }
    Ok(())
}

/// A `&mut` argument is not put back between attempts: the first page, pushed by the attempt
/// whose second page failed, is there twice, unless the body starts afresh.
#[tokio::test(start_paused = true)]
async fn a_mut_argument_keeps_what_a_failed_attempt_did() {
    let pages = || {
        resilience_fault_server::Script::dynamic(|seen| {
            if seen.path.ends_with("/2") && seen.index == 1 {
                Action::status(503)
            } else {
                Action::ok().body(seen.path.trim_start_matches('/'))
            }
        })
    };
    let server = FaultServer::start(pages()).await;
    let mut out = Vec::new();
    two_pages(&client(), &server.url(""), &mut out)
        .await
        .unwrap();
    assert_eq!(out, ["1", "1", "2"]);
    let server = FaultServer::start(pages()).await;
    let mut out = Vec::new();
    two_pages_afresh(&client(), &server.url(""), &mut out)
        .await
        .unwrap();
    assert_eq!(out, ["1", "2"]);
}

#[tokio::test(start_paused = true)]
async fn generic_functions() {
    let server = FaultServer::start(vec![Action::status(503), Action::ok().body("42")]).await;
    let n: u32 = generic(&client(), &server.url("/n")).await.unwrap();
    assert_eq!(n, 42);
    assert_eq!(server.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn by_value_arguments_are_cloned_per_attempt() {
    let server = flaky().await;
    let status = by_value(&client(), server.url("/orders"), b"amount=5".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.body == b"amount=5"),
        "every attempt sent the whole body"
    );
}

#[tokio::test(start_paused = true)]
async fn boxed_errors() {
    let server = flaky().await;
    assert_eq!(boxed(&client(), &server.url("/")).await.unwrap(), "ok");
    assert_eq!(server.count(), 3);

    let stalled =
        FaultServer::start(resilience_fault_server::Script::always(Action::stall())).await;
    let e = boxed(&client(), &stalled.url("/")).await.unwrap_err();
    let own = e
        .downcast_ref::<Error>()
        .expect("the runtime's timeout, boxed");
    assert_eq!(own.kind(), ErrorKind::AttemptTimeout);
    assert_eq!(own.attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn anyhow_errors() {
    let server = flaky().await;
    assert_eq!(
        with_anyhow(&client(), &server.url("/")).await.unwrap(),
        "ok"
    );
    assert_eq!(
        server.count(),
        3,
        "a reset inside anyhow context is still a reset"
    );

    let down =
        FaultServer::start(resilience_fault_server::Script::always(Action::status(404))).await;
    let e = with_anyhow(&client(), &down.url("/")).await.unwrap_err();
    assert_eq!(down.count(), 1, "404 is permanent");
    assert_eq!(
        e.downcast_ref::<reqwest::Error>()
            .and_then(|r| r.status())
            .map(|s| s.as_u16()),
        Some(404)
    );
}

#[tokio::test(start_paused = true)]
async fn own_error_type_with_classify() {
    let server = FaultServer::start(vec![Action::status(503), Action::status(503)]).await;
    assert_eq!(own_error(&client(), &server.url("/")).await.unwrap(), "ok");
    assert_eq!(server.count(), 3);

    let declined =
        FaultServer::start(resilience_fault_server::Script::always(Action::status(402))).await;
    assert!(matches!(
        own_error(&client(), &declined.url("/")).await,
        Err(GatewayError::Declined)
    ));
    assert_eq!(
        declined.count(),
        1,
        "classified permanent by the user: not retried"
    );

    let stalled =
        FaultServer::start(resilience_fault_server::Script::always(Action::stall())).await;
    match own_error(&client(), &stalled.url("/")).await {
        Err(GatewayError::Runtime(e)) => {
            assert_eq!(e.kind(), ErrorKind::AttemptTimeout);
            assert_eq!(e.attempts(), 3);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn opaque_error_uses_the_recorded_status() {
    let server = FaultServer::start(vec![Action::status(503), Action::status(502)]).await;
    assert!(opaque_error(&client(), &server.url("/")).await.is_ok());
    assert_eq!(server.count(), 3);
    let gone =
        FaultServer::start(resilience_fault_server::Script::always(Action::status(410))).await;
    assert!(opaque_error(&client(), &gone.url("/")).await.is_err());
    assert_eq!(gone.count(), 1);
}

/// The function's own (non-network) failure is permanent: one attempt, returned as is.
#[resilient(timeout = "1s", budget = false, method = GET)]
async fn logic_error(n: u32) -> Result<u32, Error> {
    if n == 0 {
        return Err(Error::call(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "zero",
        )));
    }
    Ok(n)
}

#[tokio::test]
async fn own_logic_errors_are_not_retried() {
    assert_eq!(logic_error(3).await.unwrap(), 3);
    let e = logic_error(0).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Call);
    assert_eq!(e.attempts(), 1);
    // The class the retry decision took: "the function's own logic" is permanent.
    assert_eq!(e.class(), Some(Class::Permanent));
}

/// An `io::Result` function whose own decoding fails with an `io::Error` of a network-sounding
/// kind (serde_json's end of input is `UnexpectedEof`; `read_exact` on a short body too): the
/// response arrived whole, so the failure is the function's, permanent, not a reset.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn decoded_as_io(c: &reqwest::Client, url: &str) -> std::io::Result<u64> {
    let body = c
        .get(url)
        .send()
        .await
        .map_err(std::io::Error::other)?
        .bytes()
        .await
        .map_err(std::io::Error::other)?;
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(value["id"].as_u64().unwrap_or_default())
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn read_header_as_io(c: &reqwest::Client, url: &str) -> std::io::Result<u64> {
    use std::io::Read as _;
    let body = c
        .get(url)
        .send()
        .await
        .map_err(std::io::Error::other)?
        .bytes()
        .await
        .map_err(std::io::Error::other)?;
    let mut header = [0u8; 8];
    (&body[..]).read_exact(&mut header)?;
    Ok(u64::from_be_bytes(header))
}

#[tokio::test(start_paused = true)]
async fn own_io_errors_of_a_network_kind_are_not_retried() {
    let truncated = FaultServer::start(resilience_fault_server::Script::always(
        Action::ok().body(r#"{"id":"#),
    ))
    .await;
    let e = decoded_as_io(&client(), &truncated.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    assert_eq!(truncated.count(), 1, "decoded once: {e}");
    let e = read_header_as_io(&client(), &truncated.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    assert_eq!(truncated.count(), 2, "read once: {e}");

    // A reset wrapped the same way is still retried: the payload is reqwest's error.
    let server = FaultServer::start(vec![Action::reset(), Action::ok().body(r#"{"id":7}"#)]).await;
    assert_eq!(decoded_as_io(&client(), &server.url("/")).await.unwrap(), 7);
    assert_eq!(server.count(), 2);
}

/// A body that returns its status as a number succeeded, whatever the status: an `Err` is a
/// failure, an `Ok` is not; with `.error_for_status()?` the same 503 is retried.
#[resilient(method = GET, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn status_of(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(method = GET, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn checked_status_of(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn only_an_err_is_a_failure() {
    let server = FaultServer::start(vec![Action::status(503), Action::ok()]).await;
    assert_eq!(status_of(&client(), &server.url("/")).await.unwrap(), 503);
    assert_eq!(server.count(), 1);
    let server = FaultServer::start(vec![Action::status(503), Action::ok()]).await;
    assert_eq!(
        checked_status_of(&client(), &server.url("/"))
            .await
            .unwrap(),
        200
    );
    assert_eq!(server.count(), 2);
}

/// Regression: with one attempt there is nothing to clone for, and a by-value argument that is
/// neither `Clone` nor `Copy` moves into the body as written.
struct Ticket(String);

#[resilient(timeout = "1s", max_attempts = 1, method = POST)]
async fn single_attempt_moves_its_argument(ticket: Ticket) -> Result<String, Error> {
    let Ticket(id) = ticket;
    Ok(id)
}

#[tokio::test]
async fn a_single_attempt_moves_non_clone_arguments() {
    assert_eq!(
        single_attempt_moves_its_argument(Ticket("t-1".into()))
            .await
            .unwrap(),
        "t-1"
    );
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn propagating(
    http: &reqwest::Client,
    url: &str,
    incoming_id: &str,
) -> Result<String, Error> {
    Ok(http
        .get(url)
        .header("x-request-id", incoming_id)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_propagated_request_id_and_trace_context_win() {
    let server = flaky().await;
    assert_eq!(
        propagating(&client(), &server.url("/"), "req-42")
            .await
            .unwrap(),
        "ok"
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.header("x-request-id"), Some("req-42"));
        assert_eq!(
            s.header("traceparent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
    }
    let attempts: Vec<&str> = seen
        .iter()
        .map(|s| s.header("x-attempt").unwrap())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
}

/// A client behind a trait, as services abstract their dependencies for tests.
trait Users {
    fn name(&self, id: u32) -> impl std::future::Future<Output = Result<String, Error>> + Send;
}

struct HttpUsers {
    http: reqwest::Client,
    base: String,
}

impl Users for HttpUsers {
    #[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
    async fn name(&self, id: u32) -> Result<String, Error> {
        let url = format!("{}/{id}", self.base);
        Ok(self
            .http
            .get(url)
            .resilient()
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

#[tokio::test(start_paused = true)]
async fn trait_impl_methods_and_spawned_calls() {
    let server = flaky().await;
    let users = std::sync::Arc::new(HttpUsers {
        http: client(),
        base: server.url("/users"),
    });
    // The generated future is Send: it can be spawned.
    let task = tokio::spawn({
        let users = users.clone();
        async move { users.name(7).await }
    });
    assert_eq!(task.await.unwrap().unwrap(), "ok");
    assert_eq!(server.count(), 3);
    assert!(server.requests().iter().all(|s| s.path == "/users/7"));
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), idempotency_key = key)]
async fn charge(c: &reqwest::Client, url: &str, key: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test]
async fn an_invalid_key_is_refused_before_anything_is_sent() {
    let server = FaultServer::start(vec![Action::ok()]).await;
    let c = client();
    let long = "k".repeat(256);
    // Empty, too long, a control character; and what servers answer 400 (this crate's
    // `IdempotencyLayer` among them), once sent as given: a space, a byte past ASCII, a
    // quoted string not closed or with a bare quote inside.
    let bad = [
        "",
        "line\nbreak",
        long.as_str(),
        "order 7",
        "commande-été",
        "\"order-7",
        "\"a\"b\"",
        "\"\"",
    ];
    for bad in bad {
        let err = charge(&c, &server.url("/charge"), bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Call, "{bad:?}: {err}");
        assert_eq!(err.attempts(), 0, "{bad:?}: no attempt ran");
    }
    assert!(server.requests().is_empty(), "nothing reached the server");
    // Counted, as calls that failed without a retry: a bad key is not a silent failure.
    let m = resilience_runtime::metrics::policy("shapes::charge").unwrap();
    assert_eq!(m.failed_without_retry, bad.len() as u64, "{m:?}");
    assert_eq!(m.cancelled, 0, "{m:?}");
    // Good keys go through, sent as given: bare, and quoted as the IETF draft writes it.
    for good in ["order-7", "\"order 7\"", "\"say \\\"hi\\\"\""] {
        assert_eq!(charge(&c, &server.url("/charge"), good).await.unwrap(), 200);
    }
    // 255 characters is the limit as the server counts them: a quoted string's inside, its
    // quotes and escapes not counted (it was refused with its quotes counted).
    let quoted_long = format!("\"{}\"", "k".repeat(255));
    let escaped_long = format!("\"{}\\\"\"", "k".repeat(254));
    for good in [&quoted_long, &escaped_long] {
        assert_eq!(charge(&c, &server.url("/charge"), good).await.unwrap(), 200);
    }
    let quoted_too_long = format!("\"{}\"", "k".repeat(256));
    let err = charge(&c, &server.url("/charge"), &quoted_too_long)
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 0, "{err}");
    let seen = server.requests();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0].header("idempotency-key"), Some("order-7"));
    assert_eq!(seen[1].header("idempotency-key"), Some("\"order 7\""));
}

#[resilient(
    timeout = "1s",
    backoff(initial = "1ms", max = "1ms"),
    idempotency_key = key,
    bulkhead = { name = "shapes_charge_slot", max_concurrent = 1 }
)]
async fn charge_in_bulkhead(c: &reqwest::Client, url: &str, key: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A call refused for its key is over before it is admitted: it takes no bulkhead slot.
#[tokio::test]
async fn a_call_refused_for_its_key_takes_no_bulkhead_slot() {
    let server = FaultServer::start(vec![Action::ok()]).await;
    let c = client();
    let err = charge_in_bulkhead(&c, &server.url("/charge"), "")
        .await
        .unwrap_err();
    assert_eq!((err.kind(), err.attempts()), (ErrorKind::Call, 0), "{err}");
    let slots = || resilience_runtime::metrics::bulkhead("shapes_charge_slot").expect("used");
    assert_eq!(
        (slots().admitted, slots().in_flight),
        (0, 0),
        "{:?}",
        slots()
    );
    assert!(server.requests().is_empty(), "nothing reached the server");
    charge_in_bulkhead(&c, &server.url("/charge"), "order-8")
        .await
        .unwrap();
    assert_eq!(
        (slots().admitted, slots().in_flight),
        (1, 0),
        "{:?}",
        slots()
    );
}

/// A store that is not reached through reqwest: the first query of each call is cut off.
#[derive(Debug)]
enum StoreError {
    ConnectionLost,
    // Carried, not inspected, by this test.
    Runtime(#[allow(dead_code)] Error),
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        StoreError::Runtime(e)
    }
}

impl Classify for StoreError {
    fn class(&self) -> Option<Class> {
        match self {
            StoreError::ConnectionLost => Some(Class::Reset),
            StoreError::Runtime(_) => None,
        }
    }
}

std::thread_local! {
    static QUERIES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A query whose first run in every two loses its connection.
fn query(declared: Option<resilience_runtime::Method>) -> Result<u32, StoreError> {
    if let Some(m) = declared {
        resilience_runtime::declare_sent(m);
    }
    let n = QUERIES.with(|q| {
        q.set(q.get() + 1);
        q.get()
    });
    if n % 2 == 1 {
        Err(StoreError::ConnectionLost)
    } else {
        Ok(n)
    }
}

#[resilient(method = GET, timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn read_row(declared: Option<resilience_runtime::Method>) -> Result<u32, StoreError> {
    query(declared)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_body_that_declares_what_it_sent_is_retried_as_that() {
    use resilience_runtime::Method;
    QUERIES.with(|q| q.set(0));
    // Nothing the runtime saw went out: the least safe method, not resent after a reset.
    let r = resilience_runtime::measure(read_row(None)).await;
    assert!(matches!(r.0, Err(StoreError::ConnectionLost)), "{:?}", r.0);
    assert_eq!(r.1.map(|c| c.attempts), Some(1));
    // Declared a read: resent, and the second query answers.
    QUERIES.with(|q| q.set(0));
    let r = resilience_runtime::measure(read_row(Some(Method::Get))).await;
    assert_eq!(r.0.unwrap(), 2);
    assert_eq!(r.1.map(|c| c.attempts), Some(2));
    // Declared a write without a key: never resent.
    QUERIES.with(|q| q.set(0));
    let r = resilience_runtime::measure(read_row(Some(Method::Post))).await;
    assert!(matches!(r.0, Err(StoreError::ConnectionLost)), "{:?}", r.0);
    assert_eq!(r.1.map(|c| c.attempts), Some(1));
}

/// A body that is not `Send` (an `Rc` held across an await): fine on a current-thread runtime.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn not_send_body(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    let seen = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let resp = http.get(url).resilient().send().await?;
    seen.set(seen.get() + 1);
    Ok(resp.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn a_body_that_is_not_send_is_retried_on_its_own_task() {
    let server = flaky().await;
    assert_eq!(
        not_send_body(&client(), &server.url("/x")).await.unwrap(),
        "ok"
    );
    assert_eq!(server.count(), 3);
}

/// An error type the way many services write theirs: `thiserror` with `#[error(transparent)]`,
/// whose `source()` skips the wrapped error and starts at that error's own cause.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Resilience(#[from] Error),
}

#[resilient(method = GET, timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn transparent(c: &reqwest::Client, url: &str) -> Result<String, ApiError> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn transparent_errors_are_classified_by_what_they_wrap() {
    let retries =
        || resilience_runtime::metrics::policy("shapes::transparent").map_or(0, |m| m.retries);
    // A reset, a 503, then 200: retried through both.
    let server = flaky().await;
    assert_eq!(
        transparent(&client(), &server.url("/")).await.unwrap(),
        "ok"
    );
    assert_eq!(server.count(), 3);
    // A connect timeout (never sent): retried to the last attempt.
    let hole = resilience_fault_server::Blackhole::new();
    let before = retries();
    let e = transparent(&client(), &hole.url("/")).await.unwrap_err();
    assert!(
        matches!(e, ApiError::Http(ref r) if r.is_connect()),
        "{e:?}"
    );
    assert_eq!(retries() - before, 2, "connect timeout: 3 attempts");
    assert_eq!(
        resilience_runtime::classify_error(&e),
        Some(Class::Connect),
        "{e:?}"
    );
    // A connection refused: the same.
    let url = format!("http://{}/", resilience_fault_server::refused_addr());
    let before = retries();
    let e = transparent(&client(), &url).await.unwrap_err();
    assert!(
        matches!(e, ApiError::Http(ref r) if r.is_connect()),
        "{e:?}"
    );
    assert_eq!(retries() - before, 2, "connection refused: 3 attempts");
    assert_eq!(
        resilience_runtime::classify_error(&e),
        Some(Class::Connect),
        "{e:?}"
    );
    // A 404: permanent, not retried.
    let gone =
        FaultServer::start(resilience_fault_server::Script::always(Action::status(404))).await;
    let before = retries();
    transparent(&client(), &gone.url("/")).await.unwrap_err();
    assert_eq!((retries() - before, gone.count()), (0, 1));
}

/// A user's error that implements `std::error::Error` and `Classify`, and leaves the runtime's
/// failures to the runtime (`None`): they are classified by the source chain, as documented.
#[derive(Debug, thiserror::Error)]
enum PaymentError {
    #[error("the card was declined")]
    Declined,
    #[error("payment gateway: {0}")]
    Runtime(#[from] Error),
}

impl Classify for PaymentError {
    fn class(&self) -> Option<Class> {
        match self {
            PaymentError::Declined => Some(Class::Permanent),
            PaymentError::Runtime(_) => None,
        }
    }
}

#[resilient(method = GET, timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn pay(http: &reqwest::Client, url: &str) -> Result<String, PaymentError> {
    let resp = http.get(url).send().await.map_err(Error::from)?;
    if resp.status().as_u16() == 402 {
        return Err(PaymentError::Declined);
    }
    Ok(resp.text().await.map_err(Error::from)?)
}

#[tokio::test(start_paused = true)]
async fn classify_none_falls_back_to_the_source_chain() {
    // Resets: retried to the last attempt.
    let reset = FaultServer::start(resilience_fault_server::Script::always(Action::reset())).await;
    let e = pay(&client(), &reset.url("/")).await.unwrap_err();
    assert!(matches!(e, PaymentError::Runtime(_)), "{e:?}");
    assert_eq!(reset.count(), 3);
    // Nothing listening: a connect failure, retried too.
    let url = format!("http://{}/", resilience_fault_server::refused_addr());
    let before = resilience_runtime::metrics::policy("shapes::pay").map_or(0, |m| m.retries);
    pay(&client(), &url).await.unwrap_err();
    let after = resilience_runtime::metrics::policy("shapes::pay").map_or(0, |m| m.retries);
    assert_eq!(after - before, 2);
    // The user's own verdict still comes first.
    let declined =
        FaultServer::start(resilience_fault_server::Script::always(Action::status(402))).await;
    assert!(matches!(
        pay(&client(), &declined.url("/")).await,
        Err(PaymentError::Declined)
    ));
    assert_eq!(declined.count(), 1);
}

/// reqwest's own one-off GET, as its documentation's first example writes it.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn free_get(url: &str) -> Result<String, Error> {
    Ok(reqwest::get(url).await?.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn reqwests_own_get_is_a_get_stamped_and_retried() {
    let server = flaky().await;
    assert_eq!(free_get(&server.url("/")).await.unwrap(), "ok");
    retried_and_stamped(&server);
}

/// A method whose name is reserved in the 2024 edition, so written raw (as `rand`'s `gen`).
struct Dice;

impl Dice {
    fn r#gen(&self) -> u32 {
        4
    }
}

/// Raw identifiers for the builder and its send: the same methods, stamped and retried; a
/// raw name of another method stays raw (`r#gen`, reserved).
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn raw_names(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    assert_eq!(Dice.r#gen(), 4);
    Ok(http
        .r#get(url)
        .r#send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_send_written_as_a_raw_identifier_is_stamped_and_retried() {
    let server = flaky().await;
    assert_eq!(raw_names(&client(), &server.url("/")).await.unwrap(), "ok");
    retried_and_stamped(&server);
}

/// A request raced against a shutdown signal in `tokio::select!`.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn raced(
    http: &reqwest::Client,
    url: &str,
    stop: &tokio::sync::Notify,
) -> Result<String, Error> {
    tokio::select! {
        res = http.get(url).send() => Ok(res?.error_for_status()?.text().await?),
        () = stop.notified() => Ok("stopped".to_owned()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_in_a_select_is_stamped_and_retried() {
    let server = flaky().await;
    let stop = tokio::sync::Notify::new();
    let got = raced(&reqwest::Client::new(), &server.url("/"), &stop).await;
    assert_eq!(got.unwrap(), "ok");
    retried_and_stamped(&server);
}

/// The same with a block for the request's handler and no comma after it, as `rustfmt` leaves
/// it, before an arm whose pattern is `()` (what a lint asks for in place of `_`): the block
/// ends the handler, as tokio reads it.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn raced_with_a_block(
    http: &reqwest::Client,
    url: &str,
    stop: &tokio::sync::Notify,
) -> Result<String, Error> {
    tokio::select! {
        res = http.get(url).send() => {
            Ok(res?.error_for_status()?.text().await?)
        }
        () = stop.notified() => Ok("stopped".to_owned()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_in_a_select_with_a_block_handler_is_stamped_and_retried() {
    let server = flaky().await;
    let stop = tokio::sync::Notify::new();
    let got = raced_with_a_block(&reqwest::Client::new(), &server.url("/"), &stop).await;
    assert_eq!(got.unwrap(), "ok");
    retried_and_stamped(&server);
}

/// A return type with `impl Trait` in it.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn bytes_of(http: &reqwest::Client, url: &str) -> Result<impl Iterator<Item = u8>, Error> {
    let body = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    Ok(Vec::from(body).into_iter())
}

#[tokio::test(start_paused = true)]
async fn a_return_type_with_impl_trait() {
    let server = flaky().await;
    let got: Vec<u8> = bytes_of(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap()
        .collect();
    assert_eq!(got, b"ok");
    assert_eq!(server.requests().len(), 3);
}

/// `#[tracing::instrument]` stacked on `#[resilient]`, outside it and inside it. Written above,
/// it expands first and wraps each attempt (the macro warns, `deprecated`, at it: allowed here,
/// where the attempts are what is checked).
#[allow(deprecated)]
#[tracing::instrument(skip(http), err)]
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn instrumented_outside(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
#[tracing::instrument(skip(http), err)]
async fn instrumented_inside(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn tracing_instrument_on_either_side() {
    let c = reqwest::Client::new();
    for inside in [false, true] {
        let server = flaky().await;
        let (logs, guard) = support::capture(tracing::Level::INFO, true);
        let got = if inside {
            instrumented_inside(&c, &server.url("/")).await
        } else {
            instrumented_outside(&c, &server.url("/")).await
        };
        drop(guard);
        assert_eq!(got.unwrap(), "ok", "instrument inside: {inside}");
        retried_and_stamped(&server);
        // Below `#[resilient]`, one span around the call; above it, one per attempt.
        let name = if inside {
            "instrumented_inside{"
        } else {
            "instrumented_outside{"
        };
        let opened = logs
            .text()
            .lines()
            // The span's own opening: its target is this crate.
            .filter(|l| l.ends_with(": shapes: new") && l.contains(name))
            .count();
        let attempts = server.requests().len();
        assert_eq!(
            opened,
            if inside { 1 } else { attempts },
            "instrument inside: {inside}:\n{}",
            logs.text()
        );
        // Its `err` event: for each failed attempt above, for a failed call (none here) below.
        let errors = logs
            .text()
            .lines()
            .filter(|l| l.contains(" ERROR ") && l.contains(name))
            .count();
        assert_eq!(
            errors,
            if inside { 0 } else { attempts - 1 },
            "instrument inside: {inside}:\n{}",
            logs.text()
        );
    }
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn through_a_closure(c: &reqwest::Client, base: &str) -> Result<String, Error> {
    let get = |path: &str| c.get(format!("{base}{path}")).send();
    Ok(get("/items").await?.error_for_status()?.text().await?)
}

/// A request sent from a closure the body defines is stamped and recorded like the body's
/// own: the reset and the 503 are retried, every attempt under the call's one request id.
#[tokio::test(start_paused = true)]
async fn a_request_sent_from_a_closure_in_the_body_is_stamped_and_retried() {
    let server = flaky().await;
    assert_eq!(
        through_a_closure(&client(), &server.url("")).await.unwrap(),
        "ok"
    );
    retried_and_stamped(&server);
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn quantity(c: &reqwest::Client, url: &str) -> Result<u32, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .json::<u32>()
        .await?)
}

/// A 200 whose body does not decode is the function's permanent failure, not a transient one:
/// asking again gets the same body.
#[tokio::test(start_paused = true)]
async fn a_body_that_does_not_decode_is_not_retried() {
    let server = FaultServer::start(resilience_fault_server::Script::always(
        Action::ok().body("twelve"),
    ))
    .await;
    let e = quantity(&client(), &server.url("/qty")).await.unwrap_err();
    assert_eq!(e.class(), Some(Class::Permanent), "{e}");
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(server.count(), 1);
}

/// A body that opens with an inner attribute (`#![allow(..)]`), as lint settings are written.
#[resilient(timeout = "1s", budget = false, method = GET)]
async fn with_inner_attribute(n: u32) -> Result<u32, Error> {
    #![allow(clippy::needless_return)]
    return Ok(n + 1);
}

#[tokio::test]
async fn a_body_with_an_inner_attribute_compiles_and_runs() {
    assert_eq!(with_inner_attribute(1).await.unwrap(), 2);
}

/// A by-value parameter declared `mut`, changed in the body, with retries: each attempt gets
/// its own clone to change (and the signature's `mut` raises no `unused_mut` warning, which a
/// crate under `#![deny(warnings)]` would refuse).
#[deny(unused_mut)]
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn appended(c: &reqwest::Client, mut url: String) -> Result<String, Error> {
    url.push_str("/items");
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn a_mut_by_value_parameter_is_changed_per_attempt() {
    let server = flaky().await;
    assert_eq!(appended(&client(), server.url("")).await.unwrap(), "ok");
    retried_and_stamped(&server);
    let paths: Vec<_> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        paths
            .iter()
            .all(|p| p.ends_with("/items") && !p.contains("/items/items")),
        "each attempt appends to its own clone: {paths:?}"
    );
}

/// A query builder of the service's own that borrows its arguments, executed in the body with
/// a temporary argument (`sqlx::query(q).bind(&x.to_string()).execute(&pool)` has this shape).
struct Query<'a>(&'a str);

impl<'a> Query<'a> {
    async fn execute(self, pool: &u32) -> Result<usize, Error> {
        Ok(self.0.len() + *pool as usize)
    }
}

#[resilient(timeout = "1s", budget = false, method = GET)]
async fn borrowed_temporary(n: u32, pool: &u32) -> Result<usize, Error> {
    Query(&n.to_string()).execute(pool).await
}

#[tokio::test]
async fn a_call_borrowing_a_temporary_in_the_body_compiles() {
    assert_eq!(borrowed_temporary(123, &1).await.unwrap(), 4);
}

#[resilient(idempotency_key = auto, timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn audit_and_order(c: &reqwest::Client, audit: &str, orders: &str) -> Result<u16, Error> {
    let (a, o) =
        tokio::try_join!(biased; c.post(audit).body("a").send(), c.post(orders).body("o").send())?;
    a.error_for_status()?;
    Ok(o.error_for_status()?.status().as_u16())
}

/// `try_join!(biased; …)`: the requests inside are stamped (the call's key on both) and the
/// 503 retried.
#[tokio::test(start_paused = true)]
async fn requests_in_a_biased_join_are_stamped() {
    let audit = FaultServer::start(resilience_fault_server::Script::always(Action::ok())).await;
    let orders = FaultServer::start(vec![Action::status(503)]).await;
    let got = audit_and_order(&client(), &audit.url("/a"), &orders.url("/o"))
        .await
        .unwrap();
    assert_eq!(got, 200);
    let key = orders.requests()[0]
        .idempotency_key()
        .expect("keyed")
        .to_owned();
    for r in audit.requests().iter().chain(orders.requests().iter()) {
        assert_eq!(r.idempotency_key(), Some(key.as_str()));
    }
}

/// A macro of the service's own that takes statements: the rewrite cannot read it.
macro_rules! logged {
    ($($t:tt)*) => {{ $($t)* }};
}

#[resilient(idempotency_key = auto, timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn audit_in_a_macro_then_order(
    c: &reqwest::Client,
    audit: &str,
    orders: &str,
) -> Result<u16, Error> {
    logged! {
        let placed = c.post(audit).body("audit").send().await?;
        let _ = placed.status();
    }
    Ok(c.post(orders)
        .body("o")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A POST sent inside a macro the rewrite cannot read goes out unseen and without the key,
/// beside a keyed order: the attempt is taken to have sent the least safe method unkeyed, so
/// the order's 503 is not retried (the body would send the audit POST again, unkeyed).
#[tokio::test(start_paused = true)]
async fn a_request_in_an_unreadable_macro_is_not_resent() {
    let audit = FaultServer::start(resilience_fault_server::Script::always(Action::ok())).await;
    let orders =
        FaultServer::start(resilience_fault_server::Script::always(Action::status(503))).await;
    let e = audit_in_a_macro_then_order(&client(), &audit.url("/audit"), &orders.url("/o"))
        .await
        .unwrap_err();
    assert_eq!(audit.count(), 1, "the unkeyed POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
}

#[resilient(idempotency_key = auto, timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn audit_in_a_local_macro_then_order(
    c: &reqwest::Client,
    audit: &str,
    orders: &str,
) -> Result<u16, Error> {
    macro_rules! audit {
        () => {
            c.post(audit).body("audit").send().await?
        };
    }
    audit!();
    Ok(c.post(orders)
        .body("o")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A `macro_rules!` the body defines sends where the body invokes it (`audit!()`, its input
/// empty): its POST goes out unseen and unkeyed, and the order's 503 is not retried.
#[tokio::test(start_paused = true)]
async fn a_request_in_a_macro_the_body_defines_is_not_resent() {
    let audit = FaultServer::start(resilience_fault_server::Script::always(Action::ok())).await;
    let orders =
        FaultServer::start(resilience_fault_server::Script::always(Action::status(503))).await;
    let e = audit_in_a_local_macro_then_order(
        &reqwest::Client::new(),
        &audit.url("/audit"),
        &orders.url("/o"),
    )
    .await
    .unwrap_err();
    assert_eq!(audit.count(), 1, "the unkeyed POST went out once: {e}");
    assert_eq!(e.attempts(), 1, "{e}");
}

/// A service's own macro writing its client functions: the return and parameter types arrive
/// as `$t:ty` fragments (an invisible group around each type).
macro_rules! client_fn {
    ($name:ident, $url:ty, $ret:ty) => {
        #[resilient(method = GET, timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false)]
        async fn $name(c: &reqwest::Client, url: $url) -> $ret {
            Ok(c.get(url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?)
        }
    };
}

client_fn!(by_macro, &str, Result<String, Error>);

#[tokio::test(start_paused = true)]
async fn a_function_written_by_a_macro_rules_macro_is_retried() {
    let server = flaky().await;
    assert_eq!(by_macro(&client(), &server.url("/m")).await.unwrap(), "ok");
    retried_and_stamped(&server);
}

/// The same macro naming each function's fallback: the name arrives as an `$fb:ident` of the
/// macro's caller.
macro_rules! client_fn_with_fallback {
    ($name:ident, $fb:ident) => {
        #[resilient(method = GET, timeout = "1s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), budget = false, fallback = $fb)]
        async fn $name(c: &reqwest::Client, url: &str) -> Result<String, Error> {
            Ok(c.get(url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?)
        }
    };
}

async fn cached_text(_c: &reqwest::Client, _url: &str) -> Result<String, Error> {
    Ok("cached".to_owned())
}

client_fn_with_fallback!(by_macro_with_fallback, cached_text);

#[tokio::test(start_paused = true)]
async fn a_fallback_named_by_a_macro_rules_macro_is_called() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    assert_eq!(
        by_macro_with_fallback(&client(), &server.url("/m"))
            .await
            .unwrap(),
        "cached"
    );
    assert_eq!(server.count_path("/m"), 2);
}

/// A function generic over its error type: the runtime cannot look into `E`.
#[resilient(method = GET, timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn generic_error<E: From<reqwest::Error> + From<Error>>(
    c: &reqwest::Client,
    url: &str,
) -> Result<String, E> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// The runtime cannot read `E`, but it saw how the attempt's request failed: a reset is
/// retried, as a 503 is.
#[tokio::test(start_paused = true)]
async fn a_generic_error_type_is_retried_by_what_the_runtime_saw() {
    let server = flaky().await;
    let got: Result<String, Error> = generic_error(&client(), &server.url("/g")).await;
    assert_eq!(got.unwrap(), "ok");
    retried_and_stamped(&server);
}

/// An error type that keeps nothing of the failure (`map_err` to a unit variant,
/// `Opaque` above, a `std::error::Error` here): retried by what the runtime saw of the
/// request.
#[resilient(method = GET, timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn opaque_std(c: &reqwest::Client, url: &str) -> Result<String, OpaqueStd> {
    let resp = c.get(url).send().await.map_err(|_| OpaqueStd)?;
    resp.error_for_status()
        .map_err(|_| OpaqueStd)?
        .text()
        .await
        .map_err(|_| OpaqueStd)
}

#[derive(Debug)]
struct OpaqueStd;

impl std::fmt::Display for OpaqueStd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream unavailable")
    }
}

impl std::error::Error for OpaqueStd {}

impl From<Error> for OpaqueStd {
    fn from(_: Error) -> Self {
        OpaqueStd
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_that_drops_its_source_is_retried_by_what_the_runtime_saw() {
    let server = flaky().await;
    assert_eq!(
        opaque_std(&client(), &server.url("/o")).await.unwrap(),
        "ok"
    );
    retried_and_stamped(&server);
}

/// A body that asks a quota endpoint first and handles its 429, then sends its own GET.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn with_quota_check(c: &reqwest::Client, quota: &str, url: &str) -> Result<u16, Error> {
    let limited = c.get(quota).send().await?.status().as_u16() == 429;
    let status = c
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16();
    Ok(if limited { status + 1000 } else { status })
}

/// The `Retry-After` of a response the body handled does not govern a later request of the
/// same attempt that failed without a response: the reset GET is retried after its backoff,
/// not given up on because a 429 earlier asked for 60 s (past `max_retry_after`).
#[tokio::test(start_paused = true)]
async fn an_earlier_responses_retry_after_does_not_govern_a_later_failure() {
    let quota = FaultServer::start(resilience_fault_server::Script::always(
        Action::status(429).retry_after(60),
    ))
    .await;
    let server = FaultServer::start(vec![Action::reset(), Action::reset(), Action::ok()]).await;
    let started = tokio::time::Instant::now();
    let got = with_quota_check(
        &reqwest::Client::new(),
        &quota.url("/quota"),
        &server.url("/"),
    )
    .await
    .unwrap();
    assert_eq!(got, 1200);
    assert_eq!(server.count(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// A lookup of its own, annotated, leaving retries to its caller.
#[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false)]
async fn lookup_once(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The quota check, then the lookup through a nested call.
#[resilient(timeout = "2s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn with_quota_check_then_nested(
    c: &reqwest::Client,
    quota: &str,
    url: &str,
) -> Result<u16, Error> {
    let limited = c.get(quota).send().await?.status().as_u16() == 429;
    let status = lookup_once(c, url).await?;
    Ok(if limited { status + 1000 } else { status })
}

/// A service's own error type, the runtime's error in a transparent variant.
#[derive(Debug, thiserror::Error)]
enum QuotaError {
    #[error(transparent)]
    Nested(#[from] Error),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// `with_quota_check_then_nested`, its error the service's own type.
#[resilient(timeout = "2s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn with_quota_check_then_nested_in_own_error(
    c: &reqwest::Client,
    quota: &str,
    url: &str,
) -> Result<u16, QuotaError> {
    let limited = c.get(quota).send().await?.status().as_u16() == 429;
    let status = lookup_once(c, url).await?;
    Ok(if limited { status + 1000 } else { status })
}

/// The quota check, then work the runtime does not see, declared (a database read), that
/// hangs past the attempt's timeout.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn with_quota_check_then_declared(
    c: &reqwest::Client,
    quota: &str,
    hangs: &std::sync::atomic::AtomicU32,
) -> Result<u16, Error> {
    let limited = c.get(quota).send().await?.status().as_u16() == 429;
    resilience_runtime::declare_sent(resilience_runtime::Method::Get);
    if hangs.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) > 0 {
        std::future::pending::<()>().await;
    }
    Ok(if limited { 1200 } else { 200 })
}

/// Nor does it govern a nested call that follows it, nor a declared send: a request that
/// follows a response the body handled has none of its own. The nested lookup's timeout (it
/// leaves retries to its caller) is retried; so is the attempt that hung after its declared
/// read. The 429's 60 s, past `max_retry_after`, ended both calls at once.
#[tokio::test(start_paused = true)]
async fn an_earlier_responses_retry_after_does_not_govern_a_later_nested_call_or_declared_send() {
    let quota = FaultServer::start(resilience_fault_server::Script::always(
        Action::status(429).retry_after(60),
    ))
    .await;
    let server = FaultServer::start(vec![Action::stall(), Action::ok()]).await;
    let got = with_quota_check_then_nested(
        &reqwest::Client::new(),
        &quota.url("/quota"),
        &server.url("/"),
    )
    .await
    .unwrap();
    assert_eq!((got, server.count()), (1200, 2));
    // Nor a nested call's 503, with no `Retry-After` of its own, or with a short one.
    for first in [
        Action::status(503),
        Action::status(503).retry_after(1),
        // The same status as the handled response's, without a `Retry-After` of its own.
        Action::status(429),
    ] {
        let server = FaultServer::start(vec![first, Action::ok()]).await;
        let started = tokio::time::Instant::now();
        let got = with_quota_check_then_nested(
            &reqwest::Client::new(),
            &quota.url("/quota"),
            &server.url("/"),
        )
        .await
        .unwrap();
        assert_eq!((got, server.count()), (1200, 2));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    // The nested call's 429, returned in a transparent variant of the service's own type.
    let server = FaultServer::start(vec![Action::status(429), Action::ok()]).await;
    let got = with_quota_check_then_nested_in_own_error(
        &reqwest::Client::new(),
        &quota.url("/quota"),
        &server.url("/"),
    )
    .await
    .unwrap();
    assert_eq!((got, server.count()), (1200, 2));

    let hangs = std::sync::atomic::AtomicU32::new(1);
    let got = with_quota_check_then_declared(&reqwest::Client::new(), &quota.url("/quota"), &hangs)
        .await
        .unwrap();
    assert_eq!(got, 1200);
}

/// Nor of a later request that stalls until the attempt's timeout: the timeout is retried,
/// and the error of a call that times out names no status (the 429 was not this request's).
#[tokio::test(start_paused = true)]
async fn an_earlier_responses_retry_after_does_not_govern_a_later_timeout() {
    let quota = FaultServer::start(resilience_fault_server::Script::always(
        Action::status(429).retry_after(60),
    ))
    .await;
    let server = FaultServer::start(vec![Action::stall(), Action::ok()]).await;
    let got = with_quota_check(
        &reqwest::Client::new(),
        &quota.url("/quota"),
        &server.url("/"),
    )
    .await
    .unwrap();
    assert_eq!((got, server.count()), (1200, 2));

    let stalled =
        FaultServer::start(resilience_fault_server::Script::always(Action::stall())).await;
    let e = with_quota_check(
        &reqwest::Client::new(),
        &quota.url("/quota"),
        &stalled.url("/"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{e}");
    assert_eq!(e.http_status(), None, "{e}");
    assert!(e.attempts() > 1, "{e}");
}

/// A GET wrapped in a timeout of the body's own, or in `Box::pin`: the call is handed the
/// client, but its request is the body's own `.send()`, stamped and seen. Retried as any GET
/// (it was once taken for a helper that sent unseen, and never retried).
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn wrapped_get(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    let sent = tokio::time::timeout(Duration::from_millis(500), c.get(url).send())
        .await
        .map_err(Error::call)??;
    let again = Box::pin(c.get(url).send()).await;
    drop(again);
    Ok(sent.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn a_send_wrapped_in_a_timeout_is_seen_and_retried() {
    let server = FaultServer::start(vec![
        Action::reset(),
        Action::status(503),
        Action::ok(),
        Action::ok().body("done"),
    ])
    .await;
    let got = wrapped_get(&reqwest::Client::new(), &server.url("/")).await;
    assert_eq!(got.unwrap(), "done");
    // A reset, then (503, ok), then (ok, ok): three attempts.
    assert_eq!(server.count(), 5);
}

/// A PUT declared `idempotent`, sent inside a macro the rewrite cannot read (`matches!` takes
/// a pattern): unseen, but the function says what it sends is applied at most once, so its 503
/// is retried, as the README says ("unless declared `idempotent`"); the same shape without it
/// is not run again.
#[resilient(
    idempotent = true,
    timeout = "1s",
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn replace_inside_a_macro(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    if matches!(c.put(url).body("v").send().await, Ok(ref r) if r.status() == 204) {
        Ok(204)
    } else {
        Err(Error::status(reqwest::StatusCode::SERVICE_UNAVAILABLE))
    }
}

#[resilient(method = GET, timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn read_inside_a_macro(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    if matches!(c.get(url).send().await, Ok(ref r) if r.status() == 204) {
        Ok(204)
    } else {
        Err(Error::status(reqwest::StatusCode::SERVICE_UNAVAILABLE))
    }
}

#[tokio::test(start_paused = true)]
async fn an_idempotent_put_inside_an_unreadable_macro_is_retried() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(vec![Action::status(503), Action::status(204)]).await;
    assert_eq!(
        replace_inside_a_macro(&c, &server.url("/")).await.unwrap(),
        204
    );
    assert_eq!(server.count(), 2);
    let server = FaultServer::start(vec![Action::status(503), Action::status(204)]).await;
    let e = read_inside_a_macro(&c, &server.url("/")).await.unwrap_err();
    assert_eq!((e.attempts(), server.count()), (1, 1), "{e}");
}

/// A macro of the service's own that only formats.
macro_rules! label {
    ($id:expr) => {
        format!("user-{}", $id)
    };
}

struct Profiles {
    http: reqwest::Client,
    id: u32,
}

impl Profiles {
    /// A macro handed `self` (not a client parameter) is not taken for one that sends: the GET
    /// is retried as any GET.
    #[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
    async fn profile(&self, url: &str) -> Result<String, Error> {
        let who = label!(self.id);
        Ok(self
            .http
            .get(url)
            .header("x-who", who)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

#[tokio::test(start_paused = true)]
async fn a_macro_handed_self_does_not_stop_retries() {
    let server = FaultServer::start(vec![Action::status(503), Action::ok().body("u")]).await;
    let users = Profiles {
        http: reqwest::Client::new(),
        id: 7,
    };
    assert_eq!(users.profile(&server.url("/")).await.unwrap(), "u");
    assert_eq!(server.count(), 2);
}

/// A macro of the service's own that counts a value.
macro_rules! tally {
    ($v:expr) => {
        let _ = $v;
    };
}

struct Tenants {
    http: reqwest::Client,
    client_id: String,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Tenants {
    /// A macro handed a field named like a client but holding an id (`self.client_id`), a
    /// permit taken through a value reached from `self` (`Arc::clone(&self.permits)
    /// .acquire_owned()`), and a task spawned on one (`Arc::clone(&self.permits).close()`
    /// style): none is a helper that may send, and the GET is retried as any.
    #[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
    async fn tenant(&self, url: &str) -> Result<String, Error> {
        tally!(self.client_id.clone());
        tokio::spawn(std::sync::Arc::clone(&self.permits).acquire_owned());
        let _permit = std::sync::Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("open");
        Ok(self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

#[tokio::test(start_paused = true)]
async fn a_field_named_like_a_client_or_a_permit_from_self_does_not_stop_retries() {
    let server = FaultServer::start(vec![Action::status(503), Action::ok().body("t")]).await;
    let tenants = Tenants {
        http: reqwest::Client::new(),
        client_id: "acme".into(),
        permits: std::sync::Arc::new(tokio::sync::Semaphore::new(4)),
    };
    assert_eq!(tenants.tenant(&server.url("/")).await.unwrap(), "t");
    assert_eq!(server.count(), 2);
}

/// A cache beside the client, with the two-argument `put` and `delete` such stores have.
#[derive(Default)]
struct Cache(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl Cache {
    fn put(&self, key: &str, value: String) {
        self.0.lock().unwrap().insert(key.to_owned(), value);
    }

    fn delete(&self, key: &str, _reason: &str) {
        self.0.lock().unwrap().remove(key);
    }
}

// A GET whose answer goes into a cache: `cache.put(url, text)` is not a PUT request, so the
// method inferred is GET (retried on a reset and a 503), and a declared `method = GET` is not
// refused as "safer than the body".
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn cached(http: &reqwest::Client, cache: &Cache, url: &str) -> Result<String, Error> {
    cache.delete(url, "refreshing");
    let text = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    cache.put(url, text.clone());
    Ok(text)
}

#[resilient(method = GET, timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn cached_declared(
    http: &reqwest::Client,
    cache: &Cache,
    url: &str,
) -> Result<String, Error> {
    let text = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    cache.put(url, text.clone());
    Ok(text)
}

#[tokio::test(start_paused = true)]
async fn a_cache_put_beside_a_get_is_not_a_put_request() {
    let cache = Cache::default();
    let server = flaky().await;
    let url = server.url("/rates");
    assert_eq!(cached(&client(), &cache, &url).await.unwrap(), "ok");
    retried_and_stamped(&server);
    let server = flaky().await;
    let url = server.url("/rates");
    assert_eq!(
        cached_declared(&client(), &cache, &url).await.unwrap(),
        "ok"
    );
    retried_and_stamped(&server);
    assert_eq!(cache.0.lock().unwrap().len(), 2);
}

struct Buffered {
    http: reqwest::Client,
    last: String,
}

impl Buffered {
    // `&mut self` returning a borrow of `self`, not retried: one attempt, no loop back. (A
    // retried one is refused at compile time: ui-tests/tests/ui/fail/mut_borrow_returned.rs.)
    #[resilient(timeout = "1s", max_attempts = 1)]
    async fn fetch(&mut self, url: &str) -> Result<&str, Error> {
        self.last = self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(&self.last)
    }
}

impl Buffered {
    // Retried, `&mut self`, returning a function type whose signature has a borrow of its
    // own: nothing of `self` is borrowed, and it compiles.
    #[allow(clippy::type_complexity)]
    #[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
    async fn matcher(&mut self, url: &str) -> Result<Box<dyn Fn(&str) -> bool + Send>, Error> {
        self.last = self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let last = self.last.clone();
        Ok(Box::new(move |s: &str| s == last))
    }
}

#[tokio::test(start_paused = true)]
async fn a_mut_self_method_returning_a_closure_is_retried() {
    let server = flaky().await;
    let mut b = Buffered {
        http: client(),
        last: String::new(),
    };
    let is_last = b.matcher(&server.url("/last")).await.unwrap();
    assert!(is_last("ok"));
    retried_and_stamped(&server);
}

#[tokio::test(start_paused = true)]
async fn a_mut_self_method_returns_a_borrow_of_self_when_not_retried() {
    let server = FaultServer::start(vec![Action::ok().body("last")]).await;
    let mut b = Buffered {
        http: client(),
        last: String::new(),
    };
    assert_eq!(b.fetch(&server.url("/last")).await.unwrap(), "last");
    assert_eq!(server.count(), 1);
    assert_eq!(b.last, "last");
}

// A send written as a path, the way some code bases write it: stamped like `.send()`.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn charge_by_path(http: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let rb = http.post(url).body("39000");
    let r = reqwest::RequestBuilder::send(rb).await?;
    Ok(r.error_for_status()?.status().as_u16())
}

#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn rates_by_path(url: &str) -> Result<String, Error> {
    Ok(reqwest::get::<&str>(url)
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn sends_written_as_paths_carry_the_key_and_are_retried() {
    let server = flaky().await;
    assert_eq!(
        charge_by_path(&client(), &server.url("/charges"))
            .await
            .unwrap(),
        200
    );
    retried_and_stamped(&server);
    let seen = server.requests();
    let key = seen[0]
        .idempotency_key()
        .expect("the key on the first attempt");
    assert!(seen.iter().all(|r| r.idempotency_key() == Some(key)));
    let server = flaky().await;
    assert_eq!(rates_by_path(&server.url("/rates")).await.unwrap(), "ok");
    retried_and_stamped(&server);
}

/// A service still on the reqwest before the runtime's: its builder is another crate's type, so
/// nothing stamps its request (no key, no ids) and the attempt, seen sending nothing, is not
/// retried. Not silently: the first such request is a `warn`, naming the type.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn on_an_older_reqwest(http: &reqwest012::Client, url: &str) -> anyhow::Result<u16> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_reqwest_of_another_version_is_said_once() {
    let (logs, _guard) = support::capture(tracing::Level::WARN, false);
    let server = FaultServer::start(vec![Action::status(503), Action::status(503)]).await;
    let http = reqwest012::Client::new();
    let e = on_an_older_reqwest(&http, &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 1, "not retried: {e}");
    assert_eq!(server.requests()[0].header("x-request-id"), None);
    let _ = on_an_older_reqwest(&http, &server.url("/")).await;
    let said = logs.text();
    assert_eq!(
        said.matches("another reqwest version's").count(),
        1,
        "{said}"
    );
    assert!(
        said.contains("reqwest::async_impl::request::RequestBuilder"),
        "{said}"
    );
}

/// `RequestBuilder::send` handed on as a function value: not a call the rewrite sees.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn sends_as_a_value(http: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let sent = futures::future::join_all([http.get(url)].map(reqwest::RequestBuilder::send)).await;
    let mut last = 0;
    for r in sent {
        last = r?.error_for_status()?.status().as_u16();
    }
    Ok(last)
}

/// The same written as a closure: stamped, seen, retried.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn sends_in_a_closure(http: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let sent = futures::future::join_all([http.get(url)].map(|rb| rb.send())).await;
    let mut last = 0;
    for r in sent {
        last = r?.error_for_status()?.status().as_u16();
    }
    Ok(last)
}

#[tokio::test(start_paused = true)]
async fn a_send_handed_on_as_a_value_is_unseen_and_a_closure_is_not() {
    let server = FaultServer::start(vec![Action::status(503)]).await;
    let e = sends_as_a_value(&client(), &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 1, "not retried: {e}");
    assert_eq!(server.requests()[0].header("x-request-id"), None);
    let server = FaultServer::start(vec![Action::status(503)]).await;
    assert_eq!(
        sends_in_a_closure(&client(), &server.url("/"))
            .await
            .unwrap(),
        200
    );
    assert_eq!(server.count(), 2);
    assert!(server.requests()[0].header("x-request-id").is_some());
}

std::thread_local! {
    static CHARGES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A keyed function whose body charges through a gRPC stub the runtime cannot see (declared a
/// POST, as the README asks), then posts its own request with the key: the declared POST
/// went out without the key, so the call is not run again on the 503 after it (the stub's
/// charge would be made twice), and its error names the key.
#[resilient(method = POST, timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn charge_then_record(http: &reqwest::Client, url: &str) -> Result<u16, Error> {
    CHARGES.with(|c| c.set(c.get() + 1));
    resilience_runtime::declare_sent(resilience_runtime::Method::Post);
    Ok(http
        .post(url)
        .body("entry")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_declared_post_in_a_keyed_function_is_never_resent() {
    CHARGES.with(|c| c.set(0));
    let server = FaultServer::start(Script::sequence([Action::status(503), Action::ok()])).await;
    let e = charge_then_record(&reqwest::Client::new(), &server.url("/ledger"))
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 1, "{e}");
    assert_eq!(CHARGES.with(|c| c.get()), 1, "the stub charged again");
    assert!(e.idempotency_key().is_some(), "{e}");
}

/// A PUT the body shows (not declared, so not `idempotent`), keyed: retried as a keyed POST
/// is (the decision table's row), after a reset and a 503, under one key.
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn replace_profile(http: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(http
        .put(url)
        .body("name=Kim")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_keyed_inferred_put_is_retried_as_a_keyed_post_under_one_key() {
    let server = FaultServer::start(Script::sequence([
        Action::reset(),
        Action::status(503),
        Action::ok(),
    ]))
    .await;
    assert_eq!(
        replace_profile(&reqwest::Client::new(), &server.url("/profile"))
            .await
            .unwrap(),
        200
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    let key = seen[0].idempotency_key().expect("keyed");
    assert!(seen.iter().all(|r| r.idempotency_key() == Some(key)));
}

/// A keyed POST retried on `connect` only: a 409 "still in progress" is still asked about
/// until the replay (asking runs nothing again, whatever `retry_on` lists).
#[resilient(timeout = "2s", deadline = "30s", retry_on = [connect], backoff(initial = "10ms", max = "10ms"), budget = false, idempotency_key = auto)]
async fn pay_connect_only(http: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(http
        .post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_keyed_post_retried_on_connect_only_still_asks_for_its_replay() {
    let server = FaultServer::start(Script::sequence([
        Action::status(409).retry_after(1),
        Action::status(409).retry_after(1),
        Action::ok(),
    ]))
    .await;
    assert_eq!(
        pay_connect_only(&reqwest::Client::new(), &server.url("/pay"))
            .await
            .unwrap(),
        200
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 3);
    let key = seen[0].idempotency_key().expect("keyed");
    assert!(seen.iter().all(|r| r.idempotency_key() == Some(key)));
}

/// A GET function that writes an audit row through a database query's `.execute(&pool)`
/// (another type's execute), then reads: its 503 is retried (such an execute keeps the rule
/// before it only: it is no unseen unsafe send).
#[resilient(timeout = "1s", backoff(initial = "1ms", max = "1ms"), budget = false)]
async fn audited_read(c: &reqwest::Client, url: &str, pool: &u32) -> Result<u16, Error> {
    Query("insert into audit values ('read')")
        .execute(pool)
        .await?;
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_database_execute_beside_a_read_leaves_its_retries() {
    let server = FaultServer::start(vec![Action::status(503)]).await;
    assert_eq!(
        audited_read(&reqwest::Client::new(), &server.url("/stock"), &1)
            .await
            .unwrap(),
        200
    );
    assert_eq!(server.count(), 2);
}

/// A charge's builder, made by a helper: the body's tokens do not show its POST.
fn charge_request(c: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    c.post(url).body("amount=100")
}

/// `.get(` on the caller's headers makes the inferred method a GET: the build does not see
/// the POST, and the function keeps its retries.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn charge_built_by_a_helper(
    c: &reqwest::Client,
    headers: &std::collections::HashMap<String, String>,
    url: &str,
) -> Result<u16, Error> {
    let _trace = headers.get("x-trace");
    Ok(charge_request(c, url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// "At run time that POST, stamped in the body, is seen and never resent unkeyed": a 503 to
/// the helper-built POST (with a plain client, and one of the settings) is not retried.
#[tokio::test(start_paused = true)]
async fn a_post_the_tokens_do_not_show_is_seen_at_run_time_and_sent_once() {
    for c in [reqwest::Client::new(), client()] {
        let server = FaultServer::start(Script::always(Action::status(503))).await;
        let e = charge_built_by_a_helper(&c, &Default::default(), &server.url("/charges"))
            .await
            .unwrap_err();
        assert_eq!(server.count(), 1, "{e}");
        assert_eq!(e.attempts(), 1, "{e}");
        assert_eq!(e.http_status(), Some(503), "{e}");
    }
}

/// A builder in braces, sent: stamped inside the braces (which stay), its GET seen and
/// retried.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn braced_builder(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    #[rustfmt::skip]
    let sent = { c.get(url) }.send().await?;
    Ok(sent.error_for_status()?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_builder_in_braces_is_stamped_and_retried() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = braced_builder(&reqwest::Client::new(), &server.url("/b"))
        .await
        .unwrap_err();
    assert_eq!((server.count(), e.attempts()), (3, 3), "{e}");
    assert!(
        server.requests()[0].header("x-request-id").is_some(),
        "stamped"
    );
}

/// A shared slice walked through a `mut` parameter (`ids = rest`): each attempt starts from
/// the slice handed in, not from where the failed one left it.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    backoff(initial = "1ms", max = "1ms"),
    budget = false
)]
async fn fetch_all(c: &reqwest::Client, base: &str, mut ids: &[u64]) -> Result<Vec<u16>, Error> {
    let mut out = Vec::new();
    while let [id, rest @ ..] = ids {
        out.push(
            c.get(format!("{base}/{id}"))
                .send()
                .await?
                .error_for_status()?
                .status()
                .as_u16(),
        );
        ids = rest;
    }
    Ok(out)
}

#[tokio::test(start_paused = true)]
async fn a_mut_shared_parameter_starts_each_attempt_as_handed_in() {
    // The third request fails once: the retry fetches all three again.
    let server = FaultServer::start(
        Script::sequence([Action::ok(), Action::ok(), Action::status(503)]).then(Action::ok()),
    )
    .await;
    let got = fetch_all(&reqwest::Client::new(), &server.url("/items"), &[1, 2, 3])
        .await
        .unwrap();
    assert_eq!(
        got,
        [200, 200, 200],
        "every id fetched by the attempt that succeeded"
    );
    assert_eq!(server.count(), 6);
}

/// The wire's shape of a user, a type of the body's own named as the signature's: the
/// signature's `Profile` is the module's.
#[derive(Debug, PartialEq)]
struct Profile {
    name: String,
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn profile(c: &reqwest::Client, url: &str) -> Result<Profile, Error> {
    struct Profile {
        body: String,
    }
    let wire = Profile {
        body: c.get(url).send().await?.text().await?,
    };
    Ok(crate::Profile { name: wire.body })
}

#[tokio::test(start_paused = true)]
async fn a_type_of_the_bodys_own_does_not_change_the_signatures() {
    let server = FaultServer::start(Script::always(Action::ok().body("ada"))).await;
    assert_eq!(
        profile(&reqwest::Client::new(), &server.url("/p"))
            .await
            .unwrap(),
        Profile { name: "ada".into() }
    );
}

/// Declared a GET, it sends the method its caller chose: a PUT here, not declared `idempotent`.
#[resilient(method = GET, timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms", jitter = none), budget = false)]
async fn fetch_with(c: &reqwest::Client, m: reqwest::Method, url: &str) -> Result<u16, Error> {
    Ok(c.request(m, url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// An undeclared PUT the runtime saw go out is not resent after a failure that may have
/// carried it out (a reset, a 503), whatever `retry_on` lists (the default lists both); a GET
/// of the same function is retried.
#[tokio::test(start_paused = true)]
async fn a_put_sent_where_a_get_was_declared_is_not_resent() {
    for action in [Action::reset(), Action::status(503)] {
        let server = FaultServer::start(Script::always(action)).await;
        let c = reqwest::Client::new();
        let e = fetch_with(&c, reqwest::Method::PUT, &server.url("/flags/7"))
            .await
            .unwrap_err();
        assert_eq!(server.count(), 1, "{e}");
        let e = fetch_with(&c, reqwest::Method::GET, &server.url("/flags/7"))
            .await
            .unwrap_err();
        assert_eq!(server.count(), 4, "the GET three times: {e}");
    }
}

fn authed(c: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    c.get(url).bearer_auth("t")
}

#[resilient(method = GET, timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms", jitter = none), budget = false)]
async fn read_through_a_bound_builder(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let rb = authed(c, url);
    Ok(rb.send().await?.error_for_status()?.status().as_u16())
}

#[resilient(timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms", jitter = none), budget = false)]
async fn read_through_a_bound_clone(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let c2 = std::sync::Arc::new(c.clone());
    Ok(c2
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(timeout = "1s", max_attempts = 3, backoff(initial = "1ms", max = "1ms", jitter = none), budget = false)]
async fn read_through_a_locked_client(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let shared = tokio::sync::Mutex::new(c.clone());
    let http = shared.lock().await.clone();
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Values a call handed the client made that are no helper's future keep the GET's retries:
/// a builder a function made (sent in the body), the client in an `Arc`, the client behind a
/// lock: each GET answered 503 goes three times.
#[tokio::test(start_paused = true)]
async fn values_made_of_the_client_keep_a_gets_retries() {
    let c = reqwest::Client::new();
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    read_through_a_bound_builder(&c, &server.url("/a"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 3);
    read_through_a_bound_clone(&c, &server.url("/b"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 6);
    read_through_a_locked_client(&c, &server.url("/c"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 9);
}
