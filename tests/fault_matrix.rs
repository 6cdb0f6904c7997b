//! The fault matrix: every method/key column of the design's decision table against every
//! fault the loopback server can produce, asserting what the server saw: how many requests,
//! and the same `Idempotency-Key` (and `X-Request-Id`) on each.
//!
//! Every peer is a task on the test's current-thread runtime with a paused clock, so timeouts,
//! backoff and `Retry-After` take no wall time.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use resilience_fault_server::{Action, Blackhole, FaultServer, Script, Seen, refused_addr};
use resilience_runtime::{ClientSettings, Error, ErrorKind, RequestBuilderExt as _, resilient};

type Call = for<'a> fn(
    &'a reqwest::Client,
    &'a str,
) -> Pin<Box<dyn Future<Output = Result<u16, Error>> + 'a>>;

const POLICY_NOTE: &str = "timeout 1s, deadline 20s, 3 attempts, backoff 10ms..50ms, no budget";

// The bodies are written the way reqwest users write them, without `.resilient()`: every
// `.send()` in an annotated body is stamped by type.

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "50ms"),
    budget = false
)]
async fn get(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "50ms"),
    budget = false,
    idempotent
)]
async fn put_idempotent(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = c.put(url).body("v=1").send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, retry_on = [connect])]
async fn put_undeclared(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = c.put(url).body("v=1").send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, idempotency_key = auto)]
async fn post_keyed(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = c.post(url).body("amount=100").send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// The same with an explicit `.resilient()`, which stays valid.
#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, idempotency_key = auto)]
async fn post_keyed_explicit(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("amount=100")
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, retry_on = [connect])]
async fn post_unkeyed(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = c.post(url).body("amount=100").send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A helper outside the annotated body, handed the client, sending without `.resilient()`
/// through a client of its own built by hand: the runtime never sees its request.
async fn send_post_unstamped(_c: &reqwest::Client, url: &str) -> Result<reqwest::Response, Error> {
    Ok(by_hand().post(url).body("amount=100").send().await?)
}

async fn send_get_unstamped(_c: &reqwest::Client, url: &str) -> Result<reqwest::Response, Error> {
    Ok(by_hand().get(url).send().await?)
}

/// A client built by hand (not by `ClientSettings`), with the same connect timeout: it tells
/// the runtime nothing of its requests.
fn by_hand() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(100))
        .build()
        .unwrap()
}

/// The same helpers sending through the client they are handed: one of `ClientSettings`
/// tells the attempt of every request it completes, stamped or not (which makes a helper's
/// request seen no more than before: see the columns).
async fn send_post_through(c: &reqwest::Client, url: &str) -> Result<reqwest::Response, Error> {
    Ok(c.post(url).body("amount=100").send().await?)
}

async fn send_get_through(c: &reqwest::Client, url: &str) -> Result<reqwest::Response, Error> {
    Ok(c.get(url).send().await?)
}

#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, idempotency_key = auto, method = POST)]
async fn post_keyed_sent_through(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = send_post_through(c, url).await?;
    resilience_runtime::observe(&resp);
    Ok(resp.error_for_status()?.status().as_u16())
}

#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, method = GET)]
async fn get_sent_through(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = send_get_through(c, url).await?;
    resilience_runtime::observe(&resp);
    Ok(resp.error_for_status()?.status().as_u16())
}

/// The policy says keyed, but a helper sends the request without `.resilient()`: it goes out
/// without the key, and the runtime must not resend it after it may have arrived.
#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, idempotency_key = auto, method = POST)]
async fn post_keyed_but_unstamped(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = send_post_unstamped(c, url).await?;
    resilience_runtime::observe(&resp);
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A method the macro cannot see: chosen at run time, here always POST.
fn chosen_method(url: &str) -> reqwest::Method {
    if url.is_empty() {
        reqwest::Method::GET
    } else {
        reqwest::Method::POST
    }
}

/// The method is chosen at run time and the policy declares GET: the POST that actually went
/// out decides.
#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, method = GET)]
async fn runtime_post_declared_get(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = c
        .request(chosen_method(url), url)
        .body("amount=100")
        .send()
        .await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A request made outside the body, its method chosen there: the body does not show it.
fn charge_request(c: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    c.request(chosen_method(url), url)
}

/// The same, with GET inferred from an unrelated `.get(` on a header map (the request made by
/// a function outside the body, where the method does not show).
#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "50ms"),
    budget = false
)]
async fn runtime_post_inferred_get(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-op", reqwest::header::HeaderValue::from_static("charge"));
    let _op = headers.get("x-op");
    let resp = charge_request(c, url).headers(headers).send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A GET sent by a helper without `.resilient()`: the runtime cannot see what went out, so it
/// treats it as the least safe method and never runs the body again after it may have sent
/// one: not even after a connect failure, which proves only that the failing request was
/// never sent (the helper may have sent a POST before it).
#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, method = GET)]
async fn get_unseen(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let resp = send_get_unstamped(c, url).await?;
    resilience_runtime::observe(&resp);
    Ok(resp.error_for_status()?.status().as_u16())
}

struct Column {
    name: &'static str,
    call: Call,
    keyed: bool,
    /// May this column resend after the request may have reached the server?
    resends: bool,
    /// Does the runtime see the column's request? One it does not see may follow another
    /// unseen one (a helper's POST): not even a connect failure is retried then.
    seen: bool,
}

fn columns() -> Vec<Column> {
    vec![
        Column {
            name: "GET",
            call: |c, u| Box::pin(get(c, u)),
            keyed: false,
            resends: true,
            seen: true,
        },
        Column {
            name: "PUT idempotent",
            call: |c, u| Box::pin(put_idempotent(c, u)),
            keyed: false,
            resends: true,
            seen: true,
        },
        Column {
            name: "PUT undeclared",
            call: |c, u| Box::pin(put_undeclared(c, u)),
            keyed: false,
            resends: false,
            seen: true,
        },
        Column {
            name: "POST keyed",
            call: |c, u| Box::pin(post_keyed(c, u)),
            keyed: true,
            resends: true,
            seen: true,
        },
        Column {
            name: "POST keyed, .resilient()",
            call: |c, u| Box::pin(post_keyed_explicit(c, u)),
            keyed: true,
            resends: true,
            seen: true,
        },
        Column {
            name: "POST unkeyed",
            call: |c, u| Box::pin(post_unkeyed(c, u)),
            keyed: false,
            resends: false,
            seen: true,
        },
        Column {
            name: "POST keyed, sent unstamped by a helper through a client built by hand",
            call: |c, u| Box::pin(post_keyed_but_unstamped(c, u)),
            keyed: false,
            resends: false,
            seen: false,
        },
        Column {
            name: "POST chosen at run time, GET declared",
            call: |c, u| Box::pin(runtime_post_declared_get(c, u)),
            keyed: false,
            resends: false,
            seen: true,
        },
        Column {
            name: "POST chosen at run time, GET inferred",
            call: |c, u| Box::pin(runtime_post_inferred_get(c, u)),
            keyed: false,
            resends: false,
            seen: true,
        },
        Column {
            name: "GET sent unstamped by a helper through a client built by hand",
            call: |c, u| Box::pin(get_unseen(c, u)),
            keyed: false,
            resends: false,
            seen: false,
        },
        // The same helpers through the settings' client, which reports their completions:
        // that makes nothing of them seen (the helper sent nothing the runtime stamped), so
        // they are judged as the ones above.
        Column {
            name: "POST keyed, sent unstamped by a helper through the settings' client",
            call: |c, u| Box::pin(post_keyed_sent_through(c, u)),
            keyed: false,
            resends: false,
            seen: false,
        },
        Column {
            name: "GET sent unstamped by a helper through the settings' client",
            call: |c, u| Box::pin(get_sent_through(c, u)),
            keyed: false,
            resends: false,
            seen: false,
        },
    ]
}

fn client() -> reqwest::Client {
    ClientSettings {
        connect_timeout: Duration::from_millis(100),
        ..ClientSettings::DEFAULT
    }
    .build()
    .unwrap()
}

/// What every request of one call must share, and what must differ.
fn assert_one_call(col: &str, seen: &[Seen], keyed: bool) {
    let ids: Vec<Option<&str>> = seen.iter().map(|s| s.header("x-request-id")).collect();
    let keys: Vec<Option<&str>> = seen.iter().map(|s| s.idempotency_key()).collect();
    let attempts: Vec<Option<&str>> = seen.iter().map(|s| s.header("x-attempt")).collect();
    if let Some(first) = seen.first() {
        if keyed {
            let k = first
                .idempotency_key()
                .unwrap_or_else(|| panic!("{col}: no Idempotency-Key"));
            assert_eq!(k.len(), 36, "{col}: key {k:?} is not a UUID");
            assert!(
                keys.iter().all(|x| *x == Some(k)),
                "{col}: keys differ across attempts: {keys:?}"
            );
        } else {
            assert!(
                keys.iter().all(Option::is_none),
                "{col}: unexpected Idempotency-Key: {keys:?}"
            );
        }
        if first.header("x-request-id").is_some() {
            assert!(
                ids.iter().all(|x| *x == ids[0]),
                "{col}: X-Request-Id differs: {ids:?}"
            );
            let want: Vec<String> = (1..=seen.len()).map(|n| n.to_string()).collect();
            let got: Vec<&str> = attempts.iter().map(|a| a.unwrap_or("-")).collect();
            assert_eq!(got, want, "{col}: attempt numbers");
            let tp: Vec<&str> = seen
                .iter()
                .map(|s| s.header("traceparent").unwrap())
                .collect();
            assert!(
                tp.iter().all(|t| t.len() == 55 && t[3..35] == tp[0][3..35]),
                "{col}: trace ids differ: {tp:?}"
            );
            let parents: std::collections::HashSet<&str> = tp.iter().map(|t| &t[36..52]).collect();
            assert_eq!(parents.len(), tp.len(), "{col}: parent ids repeat: {tp:?}");
        }
    }
}

/// Runs every column against a fresh server scripted with `action` for every request.
async fn against_server(
    action: impl Fn() -> Action + Copy + Send + Sync + 'static,
    expect: impl Fn(&Column) -> (usize, Result<u16, ErrorKind>),
) {
    let c = client();
    for col in columns() {
        let server = FaultServer::start(Script::dynamic(move |_| action())).await;
        let out = (col.call)(&c, &server.url("/op")).await;
        let seen = server.requests();
        let (want_seen, want_out) = expect(&col);
        assert_eq!(
            seen.len(),
            want_seen,
            "{}: requests seen ({POLICY_NOTE}); outcome {out:?}",
            col.name
        );
        match (&out, want_out) {
            (Ok(s), Ok(w)) => assert_eq!(*s, w, "{}", col.name),
            (Err(e), Err(kind)) => {
                assert_eq!(e.kind(), kind, "{}: {e}", col.name);
                assert_eq!(
                    e.attempts() as usize,
                    want_seen.max(1),
                    "{}: attempts in the error: {e}",
                    col.name
                );
            }
            _ => panic!("{}: got {out:?}, expected {want_out:?}", col.name),
        }
        assert_one_call(col.name, &seen, col.keyed);
    }
}

#[tokio::test(start_paused = true)]
async fn refused_is_retried_for_every_method_the_runtime_sees() {
    let c = client();
    let url = format!("http://{}/op", refused_addr());
    for col in columns() {
        let e = (col.call)(&c, &url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Call, "{}: {e}", col.name);
        assert_eq!(
            e.class(),
            Some(resilience_runtime::Class::Connect),
            "{}: {e}",
            col.name
        );
        assert_eq!(
            e.attempts(),
            if col.seen { 3 } else { 1 },
            "{}: never sent, so safe to resend, when the runtime saw the request: {e}",
            col.name
        );
    }
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_is_retried_for_every_method_the_runtime_sees() {
    let hole = Blackhole::new();
    let c = client();
    for col in columns() {
        let e = (col.call)(&c, &hole.url("/op")).await.unwrap_err();
        assert_eq!(
            e.class(),
            Some(resilience_runtime::Class::Connect),
            "{}: {e}",
            col.name
        );
        assert_eq!(
            e.attempts(),
            if col.seen { 3 } else { 1 },
            "{}: {e}",
            col.name
        );
    }
}

/// The known limit, shown: a client without a connect timeout (`reqwest::Client::new()`). A
/// connect that stalls ends as the attempt's timeout, which cannot tell "never sent" from
/// "sent": the methods that may not go out twice are not retried after it, and each attempt
/// waits its whole timeout (against the 100 ms connect failure above, retried for all).
#[tokio::test(start_paused = true)]
async fn a_stalled_connect_without_a_connect_timeout_ends_as_the_attempts_timeout() {
    let hole = Blackhole::new();
    let c = reqwest::Client::new();
    // Not the columns whose helper sends unseen (through a client of its own, with a connect
    // timeout): the runtime never sees their connect.
    for col in columns().into_iter().filter(|c| c.seen) {
        let t = tokio::time::Instant::now();
        let e = (col.call)(&c, &hole.url("/op")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{}: {e}", col.name);
        let attempts = if col.resends { 3 } else { 1 };
        assert_eq!(e.attempts(), attempts, "{}: {e}", col.name);
        assert!(
            t.elapsed() >= Duration::from_secs(u64::from(attempts)),
            "{}: each attempt waited its whole 1 s timeout ({:?})",
            col.name,
            t.elapsed()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn reset_after_the_request_was_read() {
    against_server(Action::reset, |col| {
        if col.resends {
            (3, Err(ErrorKind::Call))
        } else {
            (1, Err(ErrorKind::Call))
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn close_before_answering() {
    against_server(Action::close, |col| {
        if col.resends {
            (3, Err(ErrorKind::Call))
        } else {
            (1, Err(ErrorKind::Call))
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn stall_ends_in_attempt_timeouts() {
    against_server(Action::stall, |col| {
        if col.resends {
            (3, Err(ErrorKind::AttemptTimeout))
        } else {
            (1, Err(ErrorKind::AttemptTimeout))
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn status_503() {
    against_server(
        || Action::status(503),
        |col| {
            if col.resends {
                (3, Err(ErrorKind::Call))
            } else {
                (1, Err(ErrorKind::Call))
            }
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn status_429_with_retry_after_waits_at_least_that_long() {
    let started = tokio::time::Instant::now();
    against_server(
        || Action::status(429).retry_after(2),
        |col| {
            if col.resends {
                (3, Err(ErrorKind::Call))
            } else {
                (1, Err(ErrorKind::Call))
            }
        },
    )
    .await;
    // Three resending columns, two waits of 2 s each.
    assert!(
        started.elapsed() >= Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
}

/// The statuses a request answered so is refused for (the server read it and said no): sent
/// once, whatever the method.
#[tokio::test(start_paused = true)]
async fn permanent_statuses_are_never_retried() {
    for status in [400, 401, 403, 404, 405, 409, 410, 413, 422, 501, 505] {
        against_server(
            move || Action::status(status),
            |_| (1, Err(ErrorKind::Call)),
        )
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn transient_failures_then_success() {
    let c = client();
    for col in columns().into_iter().filter(|c| c.resends) {
        let server =
            FaultServer::start(vec![Action::reset(), Action::status(503), Action::ok()]).await;
        let out = (col.call)(&c, &server.url("/op")).await;
        assert_eq!(out.unwrap(), 200, "{}", col.name);
        assert_eq!(server.count(), 3, "{}", col.name);
        assert_one_call(col.name, &server.requests(), col.keyed);
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_http_date() {
    let c = client();
    let at = std::time::SystemTime::now() + Duration::from_secs(3);
    let server =
        FaultServer::start(vec![Action::status(503).retry_after_date(at), Action::ok()]).await;
    let started = tokio::time::Instant::now();
    assert_eq!(get(&c, &server.url("/op")).await.unwrap(), 200);
    // The date is in wall-clock seconds: at least 1 s remains after header rounding.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.count(), 2);
}

/// Forms outside the grammar, read on the safe side: a fraction waits the second above it, a
/// list a proxy merged from repeated fields its longest (not the backoff alone, which with
/// jitter may be as little as half its step).
#[tokio::test(start_paused = true)]
async fn retry_after_as_a_fraction_or_a_merged_list_is_waited() {
    let c = client();
    for (value, at_least) in [("1.5", 2), ("2, 3", 3)] {
        let server = FaultServer::start(vec![
            Action::status(503).header("Retry-After", value),
            Action::ok(),
        ])
        .await;
        let started = tokio::time::Instant::now();
        assert_eq!(get(&c, &server.url("/op")).await.unwrap(), 200);
        assert!(
            started.elapsed() >= Duration::from_secs(at_least),
            "{value}: {:?}",
            started.elapsed()
        );
        assert_eq!(server.count(), 2);
    }
}

/// Any other value is ignored: a word, a negative number, a date past, a date malformed, an
/// empty field. The retry comes after the backoff alone (at most its 50 ms `max` here), and
/// the call succeeds.
#[tokio::test(start_paused = true)]
async fn retry_after_values_outside_the_grammar_are_ignored() {
    let c = client();
    let past = "Sun, 06 Nov 1994 08:49:37 GMT";
    for value in ["soon", "-5", past, "Sun, 99 Foo 2026 99:99:99 GMT", ""] {
        let server = FaultServer::start(vec![
            Action::status(503).header("Retry-After", value),
            Action::ok(),
        ])
        .await;
        let started = tokio::time::Instant::now();
        assert_eq!(get(&c, &server.url("/op")).await.unwrap(), 200, "{value:?}");
        assert!(
            started.elapsed() <= Duration::from_millis(50),
            "{value:?}: {:?}",
            started.elapsed()
        );
        assert_eq!(server.count(), 2, "{value:?}");
    }
}

/// The same fields unmerged, as they arrive when no proxy joined them: their longest too. And
/// a longest beyond the cap ends the call at once, as a single such field does.
#[tokio::test(start_paused = true)]
async fn repeated_retry_after_fields_are_read_as_their_longest() {
    let c = client();
    let server = FaultServer::start(vec![
        Action::status(503).retry_after(1).retry_after(5),
        Action::ok(),
    ])
    .await;
    let started = tokio::time::Instant::now();
    assert_eq!(get(&c, &server.url("/op")).await.unwrap(), 200);
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let capped = FaultServer::start(vec![
        Action::status(503).retry_after(5).retry_after(120),
        Action::ok(),
    ])
    .await;
    let started = tokio::time::Instant::now();
    let e = get(&c, &capped.url("/op")).await.unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(capped.count(), 1);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_cap_ends_the_call_at_once() {
    let c = client();
    let server = FaultServer::start(vec![Action::status(503).retry_after(120)]).await;
    let started = tokio::time::Instant::now();
    let e = get(&c, &server.url("/op")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Call);
    assert_eq!(e.http_status(), Some(503));
    assert_eq!(server.count(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "slept in vain: {:?}",
        started.elapsed()
    );
    // The error says when the dependency takes the request again, for the caller to pass on.
    assert_eq!(e.retry_after(), Some(Duration::from_secs(120)), "{e}");
    assert!(
        e.to_string()
            .contains("(last status 503, Retry-After 120s)"),
        "{e}"
    );
}

// --- The same promises in the shapes services write -----------------------------------------
//
// A client struct's methods (`&self`, `&mut self`), errors of the service's own (anyhow, an enum
// that hides the cause behind `map_err`), a generic function: the runtime reads what was sent,
// not what the error type can tell, so a POST that went out without the key is sent once, and
// a keyed one is resent with its key.

/// The service's own error, which drops reqwest's cause (what a gateway client often does).
#[derive(Debug)]
enum PayError {
    Upstream,
    Runtime(Error),
}

impl From<Error> for PayError {
    fn from(e: Error) -> Self {
        PayError::Runtime(e)
    }
}

impl std::fmt::Display for PayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayError::Upstream => f.write_str("upstream failed"),
            PayError::Runtime(e) => std::fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for PayError {}

struct Gateway {
    http: reqwest::Client,
    charges: u32,
}

impl Gateway {
    #[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, retry_on = [connect])]
    async fn charge_anyhow(&self, url: &str) -> anyhow::Result<u16> {
        let resp = self.http.post(url).body("amount=100").send().await?;
        Ok(resp.error_for_status()?.status().as_u16())
    }

    /// The method chosen at run time, GET declared, every failure class retried: only what
    /// went out (a POST, unkeyed) stops the retry.
    #[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, method = GET)]
    async fn charge_opaque(&mut self, url: &str) -> Result<u16, PayError> {
        self.charges += 1;
        let resp = self
            .http
            .request(chosen_method(url), url)
            .body("amount=100")
            .send()
            .await
            .map_err(|_| PayError::Upstream)?;
        if !resp.status().is_success() {
            return Err(PayError::Upstream);
        }
        Ok(resp.status().as_u16())
    }

    #[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, idempotency_key = auto)]
    async fn charge_keyed(&self, url: &str) -> Result<u16, PayError> {
        let resp = self
            .http
            .post(url)
            .body("amount=100")
            .send()
            .await
            .map_err(|_| PayError::Upstream)?;
        if !resp.status().is_success() {
            return Err(PayError::Upstream);
        }
        Ok(resp.status().as_u16())
    }
}

/// A generic function, the error boxed.
#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, method = GET)]
async fn charge_generic<U: reqwest::IntoUrl + Clone + AsRef<str>>(
    c: &reqwest::Client,
    url: U,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let method = chosen_method(url.as_ref());
    let resp = c.request(method, url).body("amount=100").send().await?;
    Ok(resp.error_for_status()?.status().as_u16())
}

/// A fault, named, and how the server answers every request with it.
type Fault = (&'static str, fn() -> Action);

#[tokio::test(start_paused = true)]
async fn an_unkeyed_post_is_sent_once_and_a_keyed_one_resent_in_every_shape() {
    let faults: [Fault; 4] = [
        ("reset", Action::reset),
        ("close", Action::close),
        ("stall", Action::stall),
        ("503", || Action::status(503)),
    ];
    let mut gw = Gateway {
        http: client(),
        charges: 0,
    };
    for (fault, action) in faults {
        let server = FaultServer::start(Script::dynamic(move |_| action())).await;
        let url = server.url("/charges");
        assert!(gw.charge_anyhow(&url).await.is_err(), "{fault}");
        assert_eq!(server.count(), 1, "&self, anyhow, {fault}: sent once");
        server.clear();
        assert!(gw.charge_opaque(&url).await.is_err(), "{fault}");
        assert_eq!(
            server.count(),
            1,
            "&mut self, opaque error, {fault}: sent once"
        );
        server.clear();
        assert!(
            charge_generic(&gw.http, url.as_str()).await.is_err(),
            "{fault}"
        );
        assert_eq!(
            server.count(),
            1,
            "generic, boxed error, {fault}: sent once"
        );
        server.clear();
        assert!(gw.charge_keyed(&url).await.is_err(), "{fault}");
        let seen = server.requests();
        assert_eq!(seen.len(), 3, "keyed, {fault}: every attempt sent");
        assert_one_call("keyed, opaque error, &self", &seen, true);
    }
    assert_eq!(gw.charges, 4, "one attempt of charge_opaque per fault");
}

#[resilient(
    timeout = "1s",
    deadline = "20s",
    backoff(initial = "10ms", max = "50ms"),
    budget = false
)]
async fn get_text(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, idempotency_key = auto)]
async fn post_keyed_text(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url)
        .body("amount=100")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The method chosen at run time (a POST), GET declared, every class retried: only what went
/// out stops the retry.
#[resilient(timeout = "1s", deadline = "20s", backoff(initial = "10ms", max = "50ms"), budget = false, method = GET)]
async fn runtime_post_text(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.request(chosen_method(url), url)
        .body("amount=100")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// An answer whose body the connection cuts short (`Content-Length: 100`, two bytes, then the
/// server closes): the request was answered and the answer lost, a reset. A GET is sent again,
/// a keyed POST with its key; an unkeyed POST is not (it was carried out).
#[tokio::test(start_paused = true)]
async fn an_answer_cut_short_mid_body_is_a_reset() {
    let cut = || {
        Action::ok()
            .header("content-length", "100")
            .header("connection", "close")
    };
    let c = client();
    let server = FaultServer::start(Script::dynamic(move |_| cut())).await;
    let url = server.url("/op");
    let e = get_text(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(resilience_runtime::Class::Reset), "{e}");
    assert_eq!((e.attempts(), server.count()), (3, 3), "GET: {e}");
    // No answer to tell: the status line came, the answer did not (the README's rule).
    assert_eq!(e.http_status(), None, "{e}");
    server.clear();
    let e = post_keyed_text(&c, &url).await.unwrap_err();
    assert_eq!(e.attempts(), 3, "keyed POST: {e}");
    assert_one_call("keyed POST, cut short", &server.requests(), true);
    server.clear();
    let e = runtime_post_text(&c, &url).await.unwrap_err();
    assert_eq!((e.attempts(), server.count()), (1, 1), "unkeyed POST: {e}");
    // A body that arrived whole but does not decode stays the function's own failure, not
    // retried (`exactly_once.rs`, `a_keyed_call_whose_answer_did_not_decode_names_its_key`).
}

/// The same cut short 200 carrying `Retry-After: 120` (a "poll again later" of its own, not a
/// throttle): the reset is retried on its backoff, neither held for two minutes nor, the
/// value beyond `max_retry_after`, given up on at once. `Retry-After` is read on an error
/// status only.
#[tokio::test(start_paused = true)]
async fn a_success_cut_short_is_retried_whatever_its_retry_after() {
    let server = FaultServer::start(Script::dynamic(|_| {
        Action::ok()
            .header("content-length", "100")
            .header("connection", "close")
            .retry_after(120)
    }))
    .await;
    let started = tokio::time::Instant::now();
    let e = get_text(&client(), &server.url("/op")).await.unwrap_err();
    assert_eq!(e.class(), Some(resilience_runtime::Class::Reset), "{e}");
    assert_eq!((e.attempts(), server.count()), (3, 3), "{e}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// An answer whose status line is not HTTP (a broken proxy, a crashed server's garbage): the
/// request reached something that answered, and the answer is lost: a reset. A GET is sent
/// again, a keyed POST with its key; an unkeyed POST is not.
#[tokio::test(start_paused = true)]
async fn a_malformed_answer_is_a_reset() {
    let garbage = || Action::raw("HTTP/1.1 abc\r\n\r\n");
    let c = client();
    let server = FaultServer::start(Script::dynamic(move |_| garbage())).await;
    let url = server.url("/op");
    let e = get_text(&c, &url).await.unwrap_err();
    assert_eq!(e.class(), Some(resilience_runtime::Class::Reset), "{e}");
    assert_eq!((e.attempts(), server.count()), (3, 3), "GET: {e}");
    // No answer to tell: the status line came, the answer did not (the README's rule).
    assert_eq!(e.http_status(), None, "{e}");
    server.clear();
    let e = post_keyed_text(&c, &url).await.unwrap_err();
    assert_eq!(e.attempts(), 3, "keyed POST: {e}");
    assert_one_call("keyed POST, malformed answer", &server.requests(), true);
    server.clear();
    let e = runtime_post_text(&c, &url).await.unwrap_err();
    assert_eq!((e.attempts(), server.count()), (1, 1), "unkeyed POST: {e}");
}

// --- Requests a helper sends by hand ----------------------------------------------------------
//
// `stamp_request` on a request sent with `Client::execute` in a helper, and `.resilient()` on
// a builder handed to another task: the runtime stamps both, and counts what it cannot see the
// outcome of as possibly sent.

/// A helper that sends the POST by hand: built, stamped, executed.
async fn post_by_hand(c: &reqwest::Client, url: &str) -> Result<u16, reqwest::Error> {
    let mut req = c.post(url).body("amount=100").build()?;
    resilience_runtime::stamp_request(&mut req);
    Ok(c.execute(req).await?.error_for_status()?.status().as_u16())
}

#[resilient(
    method = POST,
    timeout = "1s",
    deadline = "20s",
    retry_on = [connect],
    backoff(initial = "10ms", max = "50ms"),
    budget = false
)]
async fn order_then_read(c: &reqwest::Client, post_url: &str, get_url: &str) -> Result<u16, Error> {
    post_by_hand(c, post_url).await?;
    Ok(c.get(get_url).send().await?.status().as_u16())
}

#[resilient(
    method = POST,
    timeout = "1s",
    deadline = "20s",
    retry_on = [connect],
    backoff(initial = "10ms", max = "50ms"),
    budget = false
)]
async fn order_by_hand(c: &reqwest::Client, post_url: &str) -> Result<u16, Error> {
    Ok(post_by_hand(c, post_url).await?)
}

/// "A connect failure proves only that its own request was never sent": the helper's POST,
/// stamped by hand, was answered; the body's GET is then refused. Running the body again would
/// send the POST again, unkeyed: it is not. Nor after the POST's redirect to a refusing host.
#[tokio::test(start_paused = true)]
async fn a_post_stamped_by_hand_counts_as_sent() {
    let c = ClientSettings::DEFAULT.build().unwrap();
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let refused = format!("http://{}/x", refused_addr());
    let e = order_then_read(&c, &server.url("/orders"), &refused)
        .await
        .unwrap_err();
    assert_eq!(server.count(), 1, "the unkeyed POST went out again: {e}");
    assert_eq!(e.attempts(), 1, "{e}");

    let redirecting = FaultServer::start(Script::always(
        Action::status(303).header("location", format!("http://{}/orders/1", refused_addr())),
    ))
    .await;
    let e = order_by_hand(&c, &redirecting.url("/orders"))
        .await
        .unwrap_err();
    assert_eq!(
        redirecting.count(),
        1,
        "the unkeyed POST went out again: {e}"
    );
}

#[resilient(
    timeout = "2s",
    deadline = "20s",
    idempotency_key = auto,
    backoff(initial = "10ms", max = "50ms"),
    budget = false
)]
async fn pay_and_audit(c: &reqwest::Client, audit: &str, pay: &str) -> Result<u16, Error> {
    // Handed to tasks: a helper's `.resilient()` POST, and a one-off `reqwest::get`.
    let posted = tokio::spawn(c.post(audit).body("a").resilient().send());
    let got = tokio::spawn(reqwest::get(format!("{audit}/get")));
    let _ = (posted.await, got.await);
    Ok(c.post(pay)
        .body("p")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A `.resilient()` send (or a `reqwest::get`) handed to another task is stamped where it is
/// made, as a `.send()` is: it carries the call's key, and, since its outcome never reaches
/// the attempt, counts as possibly sent: the call's 503 is not retried by running the body
/// again (which would send the audit POST again). Stamped only when first polled, in the task,
/// it went without the key and uncounted, and was sent again on each retry.
#[tokio::test]
async fn a_resilient_send_handed_to_a_task_is_stamped_where_it_is_made() {
    let c = reqwest::Client::new();
    let audit = FaultServer::start(Script::always(Action::ok())).await;
    let pay = FaultServer::start(vec![Action::status(503), Action::ok()]).await;
    let got = pay_and_audit(&c, &audit.url("/audit"), &pay.url("/pay")).await;
    let seen = audit.requests();
    let posts: Vec<_> = seen.iter().filter(|r| r.method == "POST").collect();
    assert!(!posts.is_empty());
    for r in &seen {
        assert!(
            r.idempotency_key().is_some(),
            "{} {} unkeyed",
            r.method,
            r.path
        );
    }
    // Keyed everywhere, the POST may be sent again with the same key: the call retries.
    assert_eq!(got.unwrap(), 200);
    let keys: std::collections::BTreeSet<_> =
        seen.iter().filter_map(|r| r.idempotency_key()).collect();
    assert_eq!(keys.len(), 1, "one key for the call: {keys:?}");
}

#[resilient(
    timeout = "2s",
    deadline = "10s",
    backoff(initial = "1ms", max = "1ms", jitter = none),
    budget = false
)]
async fn read_timed(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

#[resilient(method = POST, timeout = "2s", retry_on = [connect], budget = false)]
async fn read_timed_post(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url)
        .body("charge")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A client's own read timeout (reqwest's `read_timeout`, shorter than the policy's) is the
/// class `timeout`, as the attempt's own is: a GET retries it; an unkeyed POST, which may have
/// been carried out, is not resent.
#[tokio::test(start_paused = true)]
async fn reqwests_own_read_timeout_is_a_timeout() {
    let server = FaultServer::start(Script::always(Action::stall())).await;
    let c = reqwest::Client::builder()
        .read_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let e = read_timed(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(e.class(), Some(resilience_runtime::Class::Timeout), "{e}");
    assert_eq!(e.attempts(), 3, "{e}");
    assert_eq!(server.count(), 3);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "each attempt ended at the read timeout: {:?}",
        started.elapsed()
    );
    server.clear();
    let e = read_timed_post(&c, &server.url("/")).await.unwrap_err();
    assert_eq!(e.class(), Some(resilience_runtime::Class::Timeout), "{e}");
    assert_eq!(server.count(), 1, "not resent: {e}");
}

/// The decision table's "transient status" row through a real server, for its other
/// statuses: 408 and 504 are retried where the column resends, as 503 is.
#[tokio::test(start_paused = true)]
async fn status_408_and_504_as_503() {
    let expect = |col: &Column| {
        if col.resends {
            (3, Err(ErrorKind::Call))
        } else {
            (1, Err(ErrorKind::Call))
        }
    };
    against_server(|| Action::status(408), expect).await;
    against_server(|| Action::status(504), expect).await;
}

/// A 500 is not in the default `retry_on`: never retried, whatever the column.
#[tokio::test(start_paused = true)]
async fn status_500_is_not_retried_by_default() {
    against_server(|| Action::status(500), |_| (1, Err(ErrorKind::Call))).await;
}
