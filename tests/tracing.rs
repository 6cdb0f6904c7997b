//! Every call leaves a span (function, policy, method, request id) and one event per attempt
//! (attempt, class, status, delay, decision, reason).
//!
//! Alone in its test binary: a thread-scoped subscriber can miss events whose callsites another
//! test thread hit first.

mod support;

use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

#[resilient(timeout = "1s", backoff(initial = "10ms", max = "10ms", jitter = none), budget = false)]
async fn traced(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn one_span_per_call_and_one_event_per_attempt() {
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, false);

    let server = FaultServer::start(vec![Action::reset(), Action::status(503)]).await;
    assert_eq!(
        traced(&reqwest::Client::new(), &server.url("/"))
            .await
            .unwrap(),
        "ok"
    );
    let request_id = server.requests()[0]
        .header("x-request-id")
        .unwrap()
        .to_owned();

    let out = buf.text();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("resilient{") && l.contains("resilience_runtime"))
        .collect();
    assert_eq!(lines.len(), 3, "one event per attempt:\n{out}");
    for l in &lines {
        assert!(l.contains("function=\"tracing::traced\""), "{l}");
        assert!(l.contains("method=\"GET\""), "{l}");
        assert!(l.contains(&format!("request_id={request_id}")), "{l}");
    }
    assert!(
        lines[0].contains("attempt=1")
            && lines[0].contains("class=\"reset\"")
            && lines[0].contains("decision=\"retry\"")
            && lines[0].contains("delay_ms=10"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("attempt=2")
            && lines[1].contains("class=\"status\"")
            && lines[1].contains("status=503"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("attempt=3") && lines[2].contains("attempt succeeded"),
        "{}",
        lines[2]
    );

    buf.0.lock().unwrap().clear();
    let down = FaultServer::start(Script::always(Action::status(404))).await;
    assert!(
        traced(&reqwest::Client::new(), &down.url("/"))
            .await
            .is_err()
    );
    let out = buf.text();
    assert!(
        out.contains("decision=\"give up\"") && out.contains("reason=\"permanent failure\""),
        "{out}"
    );

    // A call its caller stops waiting for says so, in its span, with the attempt it was in.
    buf.0.lock().unwrap().clear();
    let slow = FaultServer::start(Script::always(
        Action::ok().after(std::time::Duration::from_secs(5)),
    ))
    .await;
    let client = reqwest::Client::new();
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        traced(&client, &slow.url("/")),
    )
    .await;
    assert!(gave_up.is_err());
    let out = buf.text();
    let line = out
        .lines()
        .find(|l| l.contains("call cancelled: its caller stopped waiting"))
        .unwrap_or_else(|| panic!("no cancellation event:\n{out}"));
    assert!(
        line.contains("resilient{") && line.contains("attempt=1"),
        "{line}"
    );
    assert!(line.contains("resilience.outcome=\"cancelled\""), "{line}");

    // One its caller gives up on while it waits for a bulkhead slot says so in its span too
    // (it once logged outside any: no span is opened before the slot).
    buf.0.lock().unwrap().clear();
    let holder = tokio::spawn({
        let (client, url) = (client.clone(), slow.url("/held"));
        async move { queued(&client, &url).await }
    });
    for _ in 0..100 {
        if slow.count_path("/held") > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        queued(&client, &slow.url("/waiting")),
    )
    .await;
    assert!(gave_up.is_err());
    holder.abort();
    let out = buf.text();
    let line = out
        .lines()
        .find(|l| l.contains("call cancelled: its caller stopped waiting") && l.contains("queued"))
        .unwrap_or_else(|| panic!("no cancellation event in the call's span:\n{out}"));
    assert!(line.contains("resilient{"), "{line}");
    assert!(line.contains("resilience.outcome=\"cancelled\""), "{line}");
    assert_eq!(slow.count_path("/waiting"), 0, "it never had its slot");
}

#[resilient(
    timeout = "10s",
    max_attempts = 1,
    bulkhead(max_concurrent = 1, max_wait = "5s")
)]
async fn queued(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.text().await?)
}

/// At info, the level a service's log usually keeps, a call retried and then answered shows
/// its end too ("attempt succeeded", attempt 2), while a call answered at once leaves nothing.
#[tokio::test(start_paused = true)]
async fn a_success_after_a_retry_is_logged_at_info() {
    let (buf, _guard) = support::capture(tracing::Level::INFO, false);
    let server = FaultServer::start(vec![Action::status(503), Action::ok(), Action::ok()]).await;
    let c = reqwest::Client::new();
    assert_eq!(traced(&c, &server.url("/")).await.unwrap(), "ok");
    let out = buf.text();
    let events: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("resilience_runtime"))
        .collect();
    assert_eq!(events.len(), 2, "the retry and the success:\n{out}");
    assert!(events[0].contains("decision=\"retry\""), "{}", events[0]);
    assert!(
        events[1].contains("INFO")
            && events[1].contains("attempt succeeded")
            && events[1].contains("attempt=2"),
        "{}",
        events[1]
    );
    buf.0.lock().unwrap().clear();
    assert_eq!(traced(&c, &server.url("/")).await.unwrap(), "ok");
    assert!(
        !buf.text().contains("attempt succeeded"),
        "a first attempt's success stays at debug:\n{}",
        buf.text()
    );
}

/// A keyed charge whose error type keeps only reqwest's error (`#[from] reqwest::Error`): the
/// error it returns cannot say how many attempts ran or with which key, so the event of the
/// call's end does.
#[derive(Debug)]
enum ChargeError {
    Http(reqwest::Error),
    Runtime(Error),
}

impl std::fmt::Display for ChargeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChargeError::Http(e) => write!(f, "gateway: {e}"),
            ChargeError::Runtime(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ChargeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChargeError::Http(e) => Some(e),
            ChargeError::Runtime(e) => Some(e),
        }
    }
}

impl From<reqwest::Error> for ChargeError {
    fn from(e: reqwest::Error) -> Self {
        ChargeError::Http(e)
    }
}

impl From<Error> for ChargeError {
    fn from(e: Error) -> Self {
        ChargeError::Runtime(e)
    }
}

#[resilient(
    idempotency_key = auto,
    timeout = "1s",
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false
)]
async fn charge(c: &reqwest::Client, url: &str) -> Result<String, ChargeError> {
    Ok(c.post(url)
        .body("amount=10")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn the_calls_end_says_its_attempts_and_key_whatever_its_error_type() {
    let (buf, _guard) = support::capture(tracing::Level::WARN, false);

    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = charge(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert!(matches!(e, ChargeError::Http(_)), "{e}");
    let key = server.requests()[0]
        .header("idempotency-key")
        .unwrap()
        .to_owned();
    let out = buf.text();
    let line = out
        .lines()
        .find(|l| l.contains("attempt failed; giving up"))
        .unwrap_or_else(|| panic!("no event of the call's end:\n{out}"));
    assert!(line.contains("attempt=3"), "{line}");
    assert!(line.contains(&format!("idempotency_key={key}")), "{line}");
    // At warn the call's span is left out: the event names the function and policy itself.
    assert!(!line.contains("resilient{"), "{line}");
    assert!(line.contains("function=\"tracing::charge\""), "{line}");
    assert!(line.contains("policy=\"tracing::charge\""), "{line}");
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "tracing_dup", failure_rate = 0.5, min_calls = 4, window = 4, open_for = "1m", half_open_calls = 1 }
)]
async fn first_of_a_name(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "tracing_dup", failure_rate = 0.9, min_calls = 4, window = 4, open_for = "1m", half_open_calls = 1 }
)]
async fn second_of_a_name(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// Two functions naming one breaker with different inline settings share the first one's, and
/// the runtime says so when the second is first called.
#[tokio::test(start_paused = true)]
async fn shared_state_named_twice_with_other_settings_warns() {
    let (buf, _guard) = support::capture(tracing::Level::WARN, false);

    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    assert_eq!(first_of_a_name(&c, &server.url("/")).await.unwrap(), 200);
    assert!(!buf.text().contains("registered again"), "{}", buf.text());
    assert_eq!(second_of_a_name(&c, &server.url("/")).await.unwrap(), 200);
    let out = buf.text();
    let line = out
        .lines()
        .find(|l| l.contains("registered again with different settings"))
        .unwrap_or_else(|| panic!("no warning:\n{out}"));
    assert!(line.contains("name=\"tracing_dup\""), "{line}");
    assert!(line.contains("kind=\"breaker\""), "{line}");
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "tracing_refusing", failure_rate = 0.5, min_calls = 4, window = 4, open_for = "1m", half_open_calls = 1 }
)]
async fn refused_at_once(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A call its open breaker refuses before it starts opens no span: it leaves one warn event
/// with its function and policy.
#[tokio::test(start_paused = true)]
async fn a_call_refused_before_it_starts_leaves_a_warn_event_and_no_span() {
    // A span opened (and closed) around the refusal would print its own lines.
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, true);

    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    // Registered by a first call, then opened by hand.
    assert_eq!(refused_at_once(&c, &server.url("/")).await.unwrap(), 200);
    resilience_runtime::breakers::force_open("tracing_refusing").unwrap();
    let before = buf.text().len();
    let e = refused_at_once(&c, &server.url("/")).await.unwrap_err();
    assert!(e.is_rejected(), "{e}");
    let text = buf.text();
    let out = &text[before..];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one event, nothing else:\n{out}");
    let line = lines[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("circuit open: call rejected"), "{line}");
    assert!(
        line.contains("function=\"tracing::refused_at_once\""),
        "{line}"
    );
    assert!(
        line.contains("policy=\"tracing::refused_at_once\""),
        "{line}"
    );
    assert!(!line.contains("resilient{"), "no span: {line}");
    assert_eq!(server.count(), 1);
    resilience_runtime::breakers::reset("tracing_refusing").unwrap();
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    rate_limit = { name = "tracing_filtered_limit", rate = 1, per = "1h", burst = 1 }
)]
async fn limited_under_a_filter(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A filter that lets warn events through for the rate limit's module only (as
/// `RUST_LOG=error,resilience_runtime::ratelimit=warn` does) still gets its refusals: the
/// throttle asks whether the event is enabled where the event is, not elsewhere.
#[tokio::test(start_paused = true)]
async fn a_refusal_reaches_a_filter_naming_its_module() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let buf = support::Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(
            "error,resilience_runtime::ratelimit=warn",
        ))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    assert_eq!(
        limited_under_a_filter(&c, &server.url("/")).await.unwrap(),
        200
    );
    let e = limited_under_a_filter(&c, &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), resilience_runtime::ErrorKind::RateLimited, "{e}");
    let text = buf.text();
    assert!(
        text.lines()
            .any(|l| l.contains("call rejected")
                && l.contains("rate_limit=\"tracing_filtered_limit\"")),
        "the refusal's event:\n{text}"
    );
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "tracing_flooded", failure_rate = 0.5, min_calls = 4, window = 4, open_for = "1h", half_open_calls = 1 }
)]
async fn refused_in_a_flood(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A breaker open under many calls logs one warn event a second for the function, not one a
/// call (2,000 calls a second wrote 2,000 lines): the next event says how many it held back.
/// The metrics count every refusal.
#[tokio::test(start_paused = true)]
async fn refusals_in_a_flood_log_one_warn_event_a_second() {
    let (buf, _guard) = support::capture(tracing::Level::WARN, false);
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    assert_eq!(refused_in_a_flood(&c, &server.url("/")).await.unwrap(), 200);
    resilience_runtime::breakers::force_open("tracing_flooded").unwrap();
    let events = |buf: &support::Buf| {
        buf.text()
            .lines()
            .filter(|l| {
                l.contains("circuit open: call rejected")
                    && l.contains("tracing::refused_in_a_flood")
            })
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    for _ in 0..5 {
        assert!(refused_in_a_flood(&c, &server.url("/")).await.is_err());
    }
    let first = events(&buf);
    assert_eq!(first.len(), 1, "one event for five refusals: {first:?}");
    assert!(first[0].contains("suppressed=0"), "{}", first[0]);
    tokio::time::advance(std::time::Duration::from_millis(1001)).await;
    assert!(refused_in_a_flood(&c, &server.url("/")).await.is_err());
    let after = events(&buf);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after[1].contains("suppressed=4"),
        "the four held back: {}",
        after[1]
    );
    let m = resilience_runtime::metrics::policy("tracing::refused_in_a_flood").unwrap();
    assert_eq!(m.rejected_breaker, 6, "{m:?}");
    resilience_runtime::breakers::reset("tracing_flooded").unwrap();
}

#[resilient(
    timeout = "10s",
    max_attempts = 1,
    budget = false,
    bulkhead = { name = "tracing_one_slot", max_concurrent = 1 }
)]
async fn one_at_a_time(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    rate_limit = { name = "tracing_one_an_hour", rate = 1, per = "1h", burst = 1 }
)]
async fn once_an_hour(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(timeout = "1s", idempotency_key = key, max_attempts = 1, budget = false)]
async fn keyed_by(c: &reqwest::Client, url: &str, key: &str) -> Result<u16, Error> {
    Ok(c.post(url).send().await?.status().as_u16())
}

/// So do calls refused by a full bulkhead, by the rate limit, and for an invalid key: a warn
/// event each, no span opened.
#[tokio::test(start_paused = true)]
async fn calls_refused_by_a_bulkhead_a_rate_limit_or_their_key_open_no_span() {
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, true);
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let (stalled_url, url) = (stalled.url("/"), server.url("/"));
    assert_eq!(once_an_hour(&c, &url).await.unwrap(), 200);
    let holder = one_at_a_time(&c, &stalled_url);
    tokio::pin!(holder);
    tokio::select! {
        r = &mut holder => panic!("the slot's holder ended: {r:?}"),
        () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
    }
    let refusals = [
        ("bulkhead", one_at_a_time(&c, &url).await.unwrap_err()),
        ("rate limit", once_an_hour(&c, &url).await.unwrap_err()),
        (
            "invalid key",
            keyed_by(&c, &url, "order 7").await.unwrap_err(),
        ),
    ];
    let text = buf.text();
    for (what, e) in &refusals {
        assert_eq!(e.attempts(), 0, "{what}: {e}");
    }
    // What the refusals logged (the holder's call logs nothing at warn).
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("tracing::one_at_a_time")
                || l.contains("tracing::once_an_hour")
                || l.contains("tracing::keyed_by")
        })
        .filter(|l| l.contains("WARN"))
        .collect();
    assert_eq!(refused.len(), 3, "one warn event each:\n{text}");
    for line in &refused {
        assert!(!line.contains("resilient{"), "no span: {line}");
    }
    // Each names its function and policy, and the bulkhead or limit that refused it.
    for (function, names) in [
        ("one_at_a_time", "bulkhead=\"tracing_one_slot\""),
        ("once_an_hour", "rate_limit=\"tracing_one_an_hour\""),
        ("keyed_by", "order 7"),
    ] {
        let line = refused
            .iter()
            .find(|l| l.contains(&format!("function=\"tracing::{function}\"")))
            .unwrap_or_else(|| panic!("no event naming {function}:\n{text}"));
        assert!(
            line.contains(&format!("policy=\"tracing::{function}\"")),
            "{line}"
        );
        assert!(line.contains(names), "{line}");
    }
    assert_eq!(
        server.count(),
        1,
        "only the first of the hour's calls went out"
    );
}

/// State of a body that logs when it is dropped: a connection's guard, a lease, a span of its
/// own.
struct LogsOnDrop;

impl Drop for LogsOnDrop {
    fn drop(&mut self) {
        tracing::info!("the body's state dropped");
    }
}

#[resilient(timeout = "10s", max_attempts = 1, budget = false)]
async fn given_up_on(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let _guard = LogsOnDrop;
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A call its caller stops waiting for (its own timeout) while the body waits on a stalled
/// server: the body's state is dropped inside the attempt, so what it logs as it unwinds is in
/// the call's and the attempt's spans, not loose.
#[tokio::test(start_paused = true)]
async fn a_body_its_caller_gives_up_on_is_dropped_inside_its_attempt() {
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, false);

    let server = FaultServer::start(Script::always(Action::stall())).await;
    let c = reqwest::Client::new();
    let given_up = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        given_up_on(&c, &server.url("/")),
    )
    .await;
    assert!(
        given_up.is_err(),
        "the caller's timeout ends it: {given_up:?}"
    );
    let out = buf.text();
    let line = out
        .lines()
        .find(|l| l.contains("the body's state dropped"))
        .unwrap_or_else(|| panic!("the body's state was dropped:\n{out}"));
    assert!(
        line.contains("resilient{") && line.contains("attempt{"),
        "inside the call's and the attempt's spans: {line}"
    );
}

#[resilient(
    timeout = "300ms",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms")
)]
async fn hedged_given_up_on(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let _guard = LogsOnDrop;
    Ok(c.get(url).send().await?.status().as_u16())
}

/// The same under a hedge: each attempt of the round is dropped at its timeout, or with the
/// call, inside its own span.
#[tokio::test(start_paused = true)]
async fn a_hedged_attempts_body_is_dropped_inside_its_attempt() {
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, false);
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let c = reqwest::Client::new();
    // The first attempt times out at 300 ms; the caller gives up on the hedge at 350 ms.
    let given_up = tokio::time::timeout(
        std::time::Duration::from_millis(350),
        hedged_given_up_on(&c, &server.url("/")),
    )
    .await;
    assert!(given_up.is_err(), "{given_up:?}");
    let out = buf.text();
    let dropped: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("the body's state dropped"))
        .collect();
    assert_eq!(dropped.len(), 2, "both attempts' state dropped:\n{out}");
    for line in dropped {
        assert!(
            line.contains("resilient{") && line.contains("attempt{"),
            "inside the call's and the attempt's spans: {line}"
        );
    }
}

#[resilient(
    timeout = "5s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "tracing_half_open", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 }
)]
async fn half_opening(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A call refused by a half-open breaker whose probe is taken is refused before it starts, as
/// one an open breaker refuses: no span, a warn event naming the function and the breaker.
#[tokio::test(start_paused = true)]
async fn a_half_open_breakers_refusal_opens_no_span_and_is_logged() {
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, true);

    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    for _ in 0..2 {
        half_opening(&c, &down.url("/")).await.unwrap_err();
    }
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    let probe = tokio::spawn({
        let (c, url) = (c.clone(), stalled.url("/"));
        async move { half_opening(&c, &url).await }
    });
    assert_eq!(stalled.wait_for(1).await, 1, "the probe reached the server");
    let before = buf.text().len();
    let refused = half_opening(&c, &down.url("/")).await.unwrap_err();
    assert!(refused.is_rejected(), "{refused}");
    let text = buf.text();
    let out = &text[before..];
    let opened: Vec<&str> = out.lines().filter(|l| l.ends_with(": new")).collect();
    assert!(opened.is_empty(), "no span:\n{out}");
    let refusal = out
        .lines()
        .find(|l| l.contains("circuit open: call rejected"))
        .unwrap_or_else(|| panic!("the refusal is logged:\n{out}"));
    assert!(refusal.contains("WARN"), "{refusal}");
    assert!(
        refusal.contains(r#"function="tracing::half_opening""#),
        "{refusal}"
    );
    assert!(
        refusal.contains(r#"breaker="tracing_half_open""#),
        "{refusal}"
    );
    assert_eq!(down.count(), 2, "nothing sent");
    probe.abort();
}

async fn from_cache(_c: &reqwest::Client, _url: &str) -> Result<u16, Error> {
    Ok(299)
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false, fallback = from_cache)]
async fn with_a_fallback(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A call answered by its fallback says so in an event naming the function and its policy
/// (the call's span has ended when the fallback runs, so the event must carry them).
#[tokio::test(start_paused = true)]
async fn a_fallback_called_is_logged_with_its_function() {
    let (buf, _guard) = support::capture(tracing::Level::INFO, false);
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    assert_eq!(
        with_a_fallback(&reqwest::Client::new(), &down.url("/"))
            .await
            .unwrap(),
        299
    );
    let text = buf.text();
    let called = text
        .lines()
        .find(|l| l.contains("calling its fallback"))
        .unwrap_or_else(|| panic!("logged:\n{text}"));
    assert!(
        called.contains(r#"function="tracing::with_a_fallback""#),
        "{called}"
    );
    assert!(called.contains("kind=Call"), "{called}");
}

#[resilient(
    timeout = "30s",
    deadline = "60s",
    max_attempts = 1,
    budget = false,
    bulkhead = { name = "tracing_race_slots", max_concurrent = 1, max_wait = "50s" },
    breaker = { name = "tracing_race", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 }
)]
async fn raced_for_the_probe(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "30s",
    max_attempts = 1,
    budget = false,
    bulkhead = { name = "tracing_race_slots", max_concurrent = 1, max_wait = "50s" }
)]
async fn holding_the_slot(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(
    timeout = "30s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "tracing_race", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1s", half_open_calls = 1 }
)]
async fn taking_the_probe(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// The one refusal after admission: a call that found the half-open breaker's probe free,
/// waited for a bulkhead slot, and lost the probe to another call meanwhile is refused at its
/// first attempt: it has a `resilient` span and no attempt, sends nothing, and fails
/// `CircuitOpen` with no attempt.
#[tokio::test(start_paused = true)]
async fn a_call_that_lost_the_probe_while_admitted_is_refused_with_a_span_and_no_attempt() {
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, true);

    let c = reqwest::Client::new();
    let down = FaultServer::start(Script::always(Action::status(503))).await;
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    for _ in 0..2 {
        raced_for_the_probe(&c, &down.url("/")).await.unwrap_err();
    }
    tokio::time::advance(std::time::Duration::from_secs(2)).await;

    let holder = tokio::spawn({
        let (c, url) = (c.clone(), stalled.url("/held"));
        async move { holding_the_slot(&c, &url).await }
    });
    assert_eq!(
        stalled.wait_for(1).await,
        1,
        "the slot's holder is in flight"
    );
    let waiting = tokio::spawn({
        let (c, url) = (c.clone(), down.url("/raced"));
        async move { raced_for_the_probe(&c, &url).await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished(), "waits for the slot");
    let before = buf.text().len();
    let prober = tokio::spawn({
        let (c, url) = (c.clone(), stalled.url("/probe"));
        async move { taking_the_probe(&c, &url).await }
    });
    assert_eq!(stalled.wait_for(2).await, 2, "the probe is in flight");
    holder.abort();
    let refused = waiting.await.unwrap().unwrap_err();
    assert_eq!(
        refused.kind(),
        resilience_runtime::ErrorKind::CircuitOpen,
        "{refused}"
    );
    assert_eq!(refused.attempts(), 0, "{refused}");
    assert_eq!(down.count_path("/raced"), 0, "nothing sent");

    let text = buf.text();
    let out = &text[before..];
    let spans: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with(": new") && l.contains("raced_for_the_probe"))
        .collect();
    assert_eq!(
        spans.iter().filter(|l| !l.contains("attempt{")).count(),
        1,
        "one call span:\n{out}"
    );
    assert!(
        spans.iter().all(|l| !l.contains("attempt{")),
        "no attempt span:\n{out}"
    );
    // Its warn event names its function and policy itself (a log kept at warn leaves the
    // call's span out) and the breaker.
    let refusal = out
        .lines()
        .find(|l| l.contains("WARN") && l.contains("circuit open: call rejected"))
        .unwrap_or_else(|| panic!("no warn event for the refusal:\n{out}"));
    for field in [
        "function=\"tracing::raced_for_the_probe\"",
        "policy=\"tracing::raced_for_the_probe\"",
        "breaker=\"tracing_race\"",
    ] {
        let (_, event) = refusal.split_once("circuit open: call rejected").unwrap();
        assert!(event.contains(field), "{field}: {refusal}");
    }
    prober.abort();
}

#[resilient(
    timeout = "1s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    breaker = { name = "tracing_refused_retry", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1m", half_open_calls = 1 }
)]
async fn refused_retry(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A retry its breaker refuses (opened by the attempts before it): the call's last event names
/// the last attempt that ran, its class and its status, not a "rejected" attempt without one.
#[tokio::test(start_paused = true)]
async fn a_retry_the_breaker_refused_ends_on_the_attempt_that_ran() {
    let (buf, _guard) = support::capture(tracing::Level::INFO, false);
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = refused_retry(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), resilience_runtime::ErrorKind::CircuitOpen, "{e}");
    assert_eq!((e.attempts(), e.http_status()), (2, Some(503)), "{e}");
    assert_eq!(server.count(), 2);
    let text = buf.text();
    let last = text
        .lines()
        .rfind(|l| l.contains("giving up"))
        .unwrap_or_else(|| panic!("a last event:\n{text}"));
    assert!(
        last.contains("attempt=2")
            && last.contains("status=503")
            && last.contains(r#"class="status""#),
        "{last}"
    );
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn inner_lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(timeout = "2s", method = GET, max_attempts = 1, budget = false)]
async fn outer_page(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    inner_lookup(c, url).await
}

/// The call span's `depth`: 0 for an outermost call, 1 for one nested in it.
#[tokio::test(start_paused = true)]
async fn the_call_span_says_its_depth() {
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, true);
    let server = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(
        outer_page(&reqwest::Client::new(), &server.url("/"))
            .await
            .unwrap(),
        200
    );
    let text = buf.text();
    let span_of = |f: &str| {
        text.lines()
            .find(|l| l.ends_with(": new") && l.contains(&format!("function=\"tracing::{f}\"")))
            .unwrap_or_else(|| panic!("{f}'s span:\n{text}"))
            .to_owned()
    };
    assert!(span_of("outer_page").contains("depth=0"), "{text}");
    assert!(span_of("inner_lookup").contains("depth=1"), "{text}");
}

#[resilient(
    timeout = "2s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms"),
    breaker = { name = "tracing_events", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1m", half_open_calls = 1 }
)]
async fn hedged_and_guarded(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The events beside each attempt's, at the levels the README gives: a hedge started (info),
/// a breaker that opens (warn).
#[tokio::test(start_paused = true)]
async fn a_hedge_and_a_breaker_opening_are_told_at_their_levels() {
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, false);
    let server = FaultServer::start(Script::always(
        Action::status(503).after(std::time::Duration::from_millis(300)),
    ))
    .await;
    let c = reqwest::Client::new();
    for _ in 0..2 {
        hedged_and_guarded(&c, &server.url("/")).await.unwrap_err();
    }
    let text = buf.text();
    let line = |what: &str| {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what}:\n{text}"))
            .to_owned()
    };
    assert!(line("no answer yet: hedging").contains(" INFO "), "{text}");
    let opened = line("circuit breaker state changed");
    assert!(
        opened.contains(" WARN ") && opened.contains(r#"to="open""#),
        "{opened}"
    );
}

#[resilient(
    timeout = "2s",
    max_attempts = 1,
    budget = false,
    hedge(delay = "100ms")
)]
async fn hedged_lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// An attempt a hedge overtook leaves no attempt event (it is on its span only): one event,
/// the hedge's success.
#[tokio::test(start_paused = true)]
async fn an_overtaken_attempt_leaves_no_event() {
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, false);
    let server = FaultServer::start(Script::sequence([Action::stall(), Action::ok()])).await;
    assert_eq!(
        hedged_lookup(&reqwest::Client::new(), &server.url("/"))
            .await
            .unwrap(),
        200
    );
    assert_eq!(server.count(), 2);
    let text = buf.text();
    let events = text
        .lines()
        .filter(|l| l.contains("attempt succeeded") || l.contains("attempt failed"))
        .count();
    assert_eq!(events, 1, "{text}");
}

#[resilient(timeout = "2s", max_attempts = 1, budget = false)]
async fn panicking(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let status = c.get(url).send().await?.status().as_u16();
    if status == 200 {
        panic!("a bug in the body");
    }
    Ok(status)
}

/// A panic that unwound a call is told at error level, naming its function.
#[tokio::test(start_paused = true)]
async fn a_panic_that_unwound_a_call_is_told_at_error() {
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, false);
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let url = server.url("/");
    let joined = tokio::spawn(async move { panicking(&reqwest::Client::new(), &url).await }).await;
    assert!(joined.unwrap_err().is_panic());
    let text = buf.text();
    let line = text
        .lines()
        .find(|l| l.contains("a panic unwound it"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(" ERROR ") && line.contains("panicking"),
        "{line}"
    );
}

#[resilient(
    timeout = "1s",
    max_attempts = 1,
    budget = false,
    breaker = { name = "tracing_by_hand", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "1m", half_open_calls = 1 }
)]
async fn guarded(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// A breaker forced open or closed, or reset, by hand is told at warn, naming it.
#[tokio::test(start_paused = true)]
async fn a_breaker_forced_or_reset_by_hand_is_told_at_warn() {
    use resilience_runtime::breakers;
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, false);
    let server = FaultServer::start(Script::always(Action::ok())).await;
    guarded(&reqwest::Client::new(), &server.url("/"))
        .await
        .unwrap();
    breakers::force_open("tracing_by_hand").unwrap();
    breakers::force_closed("tracing_by_hand").unwrap();
    breakers::reset("tracing_by_hand").unwrap();
    let text = buf.text();
    for what in [
        "forced open by hand",
        "forced closed by hand",
        "reset by hand",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what}:\n{text}"));
        assert!(
            line.contains(" WARN ") && line.contains("tracing_by_hand"),
            "{line}"
        );
    }
}

/// A malformed `X-Timeout-Ms` of many comma-separated elements is told once, with a count and
/// the value's first 64 bytes, not once per element with the whole field each time.
#[tokio::test(start_paused = true)]
async fn a_bad_timeout_field_is_told_once() {
    use resilience_runtime::server::ContextLayer;
    let (buf, _guard) = support::capture(tracing::Level::DEBUG, false);
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(ContextLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let bad = vec!["soon"; 200].join(",");
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .header("x-timeout-ms", &bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = buf.text();
    let told: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("inbound timeout ignored"))
        .collect();
    assert_eq!(told.len(), 1, "{text}");
    assert!(told[0].contains("ignored=200"), "{}", told[0]);
    assert!(told[0].len() < 400, "{}", told[0]);
}
