//! The deadline travels: A → B → C on loopback, where B is an axum service behind
//! `ContextLayer`. A deadline set at A binds the calls B makes to C; a malformed, negative or
//! absurd header is ignored or clamped, never an error to the client.
//!
//! Every peer is a task on the test's current-thread runtime with a paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::server::{ContextLayer, IdempotencyLayer, MemoryStore};
use resilience_runtime::{Error, ErrorKind, Inbound, resilient, with_inbound};
use tokio::time::Instant;

/// What B saw of its own calls to C: the error kind (if any) and how long each took.
type Calls = Arc<Mutex<Vec<(Option<ErrorKind>, Duration)>>>;

#[resilient(
    timeout = "10s",
    deadline = "30s",
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn b_calls_c(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

async fn b_handler(
    State((c, url, calls)): State<(reqwest::Client, String, Calls)>,
) -> (StatusCode, String) {
    let started = Instant::now();
    let out = b_calls_c(&c, &url).await;
    calls
        .lock()
        .unwrap()
        .push((out.as_ref().err().map(Error::kind), started.elapsed()));
    match out {
        Ok(body) => (StatusCode::OK, body),
        Err(e) => (StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

/// Serves `app` on a free loopback port, in a task of the test's runtime: its address.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Starts B, forwarding to `c_url`, and returns its URL and what its calls saw.
async fn start_b(c_url: String) -> (String, Calls) {
    let calls = Calls::default();
    let app = Router::new()
        .route("/b", get(b_handler))
        .with_state((reqwest::Client::new(), c_url, calls.clone()))
        .layer(ContextLayer::new().max(Duration::from_secs(60)));
    let addr = serve(app).await;
    (format!("http://{addr}/b"), calls)
}

#[resilient(
    timeout = "300ms",
    deadline = "300ms",
    max_attempts = 1,
    budget = false
)]
async fn a_calls_b(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[tokio::test(start_paused = true)]
async fn a_deadline_set_at_a_binds_the_calls_of_c() {
    let c_server = FaultServer::start(Script::always(Action::stall())).await;
    let (b, b_calls) = start_b(c_server.url("/c")).await;
    let started = Instant::now();
    let e = a_calls_b(&reqwest::Client::new(), &b).await;
    assert!(started.elapsed() <= Duration::from_millis(300));
    // A gave up at its deadline (or got B's 504 at that instant).
    if let Err(e) = &e {
        assert!(e.is_timeout(), "{e}");
    }
    // Let B finish its own call.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = c_server.requests();
    assert_eq!(seen.len(), 1, "B did not retry past A's deadline");
    let left: u64 = seen[0].header("x-timeout-ms").unwrap().parse().unwrap();
    assert!(left <= 300 && left > 0, "C was told {left} ms");
    let calls = b_calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (kind, took) = calls[0];
    assert_eq!(
        kind,
        Some(ErrorKind::DeadlineExceeded),
        "B's call ends with A's deadline"
    );
    assert!(took <= Duration::from_millis(300), "B's call took {took:?}");
}

/// The request ids services use (a UUID, a gateway's prefixed id, the `Request-Id` header)
/// reach C as they came, on every attempt of B's call (a 503, then its retry), and name B's
/// call in what `current_attempt()` reports.
#[tokio::test(start_paused = true)]
async fn the_callers_request_id_reaches_c_as_it_came() {
    let c_server = FaultServer::start(Script::sequence([Action::status(503), Action::ok()])).await;
    let (b, _) = start_b(c_server.url("/c")).await;
    let http = reqwest::Client::new();
    let uuid = "550e8400-e29b-41d4-a716-446655440000";
    for (header, id) in [
        ("x-request-id", uuid),
        ("x-request-id", "req-7f3a:edge-2"),
        (
            "request-id",
            "|4bf92f3577b34da6a3ce929d0e0e4736.00f067aa0ba902b7.",
        ),
    ] {
        c_server.clear();
        let resp = http.get(&b).header(header, id).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{header}: {id}");
        let seen = c_server.requests();
        assert_eq!(seen.len(), 2, "the 503 and its retry");
        for r in &seen {
            assert_eq!(r.header("x-request-id"), Some(id), "{header}");
        }
    }
    // Without one, B's `ContextLayer` gives the request one: 32 hex digits, the same on both
    // attempts.
    c_server.clear(); // the script from its start: a 503, then 200
    http.get(&b).send().await.unwrap();
    let seen = c_server.requests();
    let drawn = seen[0].header("x-request-id").unwrap();
    assert_eq!(drawn.len(), 32);
    assert_eq!(seen[1].header("x-request-id"), Some(drawn));
}

#[tokio::test(start_paused = true)]
async fn bad_headers_are_ignored_or_clamped() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let (b, b_calls) = start_b(c_server.url("/c")).await;
    let http = reqwest::Client::new();
    for bad in ["-5", "garbage", "1.5", "", "99999999999999999999999999"] {
        let resp = http
            .get(&b)
            .header("x-timeout-ms", bad)
            .header("traceparent", "not-a-traceparent")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "x-timeout-ms: {bad:?}");
    }
    let seen = c_server.requests();
    assert_eq!(seen.len(), 5);
    for (s, bad) in seen.iter().zip(["-5", "garbage", "1.5", "", "clamped"]) {
        let left: u64 = s.header("x-timeout-ms").unwrap().parse().unwrap();
        if bad == "clamped" {
            // Clamped to the layer's 60 s, then bounded by B's own 10 s attempt timeout.
            assert!(left <= 10_000, "{left}");
        } else {
            // Ignored: B's own 10 s attempt timeout.
            assert!(left > 9_000 && left <= 10_000, "{bad:?}: {left}");
        }
        let tp = s.header("traceparent").unwrap();
        assert_eq!(tp.len(), 55, "a fresh trace");
        // A trace the call starts is marked sampled (README, Observability).
        assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
    }
    assert!(b_calls.lock().unwrap().iter().all(|(k, _)| k.is_none()));
}

/// "`grpc-timeout` is read too; with both, the shorter counts": B's call to C is told the
/// shorter of its caller's two headers, whichever it is, and a `grpc-timeout` alone.
#[tokio::test(start_paused = true)]
async fn grpc_timeout_is_read_and_the_shorter_header_counts() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let (b, _) = start_b(c_server.url("/c")).await;
    let http = reqwest::Client::new();
    let cases: [(&[(&str, &str)], u64); 3] = [
        (&[("x-timeout-ms", "5000"), ("grpc-timeout", "300m")], 300),
        (&[("x-timeout-ms", "400"), ("grpc-timeout", "2S")], 400),
        (&[("grpc-timeout", "700000u")], 700),
    ];
    for (headers, want) in cases {
        c_server.clear();
        let mut req = http.get(&b);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        assert_eq!(req.send().await.unwrap().status(), 200, "{headers:?}");
        let told: u64 = c_server.requests()[0]
            .header("x-timeout-ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            told <= want && told + 20 >= want,
            "{headers:?}: C was told {told} ms"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_trace_travels_through_b() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let (b, _) = start_b(c_server.url("/c")).await;
    let resp = reqwest::Client::new()
        .get(&b)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tp = c_server.requests()[0]
        .header("traceparent")
        .unwrap()
        .to_owned();
    assert_eq!(&tp[3..35], "0af7651916cd43dd8448eb211c80319c", "{tp}");
    assert_ne!(&tp[36..52], "b7ad6b7169203331", "B's own span");
    assert!(
        tp.ends_with("-00"),
        "the caller's sampling decision is kept: {tp}"
    );
}

/// B's handler behind `IdempotencyLayer` (which runs it in a task of its own, detached from the
/// connection) and `ContextLayer`: outside it (`.layer(idempotency).layer(context)`), or
/// inside it (`context_inside`: `.layer(context).layer(idempotency)`).
async fn start_b_keyed(c_url: String) -> (String, Calls) {
    start_b_keyed_in(c_url, false).await
}

async fn start_b_keyed_in(c_url: String, context_inside: bool) -> (String, Calls) {
    let calls = Calls::default();
    let idempotency = IdempotencyLayer::new(MemoryStore::default());
    let context = ContextLayer::new().max(Duration::from_secs(60));
    let app = Router::new()
        .route("/b", axum::routing::post(b_handler))
        .with_state((reqwest::Client::new(), c_url, calls.clone()));
    let app = if context_inside {
        app.layer(context).layer(idempotency)
    } else {
        app.layer(idempotency).layer(context)
    };
    let addr = serve(app).await;
    (format!("http://{addr}/b"), calls)
}

#[tokio::test(start_paused = true)]
async fn the_context_reaches_a_handler_behind_the_idempotency_layer() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let (b, _) = start_b_keyed(c_server.url("/c")).await;
    let resp = reqwest::Client::new()
        .post(&b)
        .header("idempotency-key", "order-7")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("x-request-id", "5eed")
        .header("x-timeout-ms", "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = c_server.requests();
    assert_eq!(seen.len(), 1);
    let tp = seen[0].header("traceparent").unwrap();
    assert_eq!(&tp[3..35], "0af7651916cd43dd8448eb211c80319c", "{tp}");
    assert_eq!(seen[0].header("x-request-id"), Some("5eed"), "as it came");
    // Not the caller's 2 s: a claimed handler runs on for the retry; B's own 10 s timeout.
    let left: u64 = seen[0].header("x-timeout-ms").unwrap().parse().unwrap();
    assert!(left > 9000 && left <= 10_000, "C was told {left} ms");
}

#[resilient(
    timeout = "100ms",
    deadline = "10s",
    idempotency_key = auto,
    max_attempts = 4,
    backoff(initial = "10ms", max = "10ms"),
    budget = false
)]
async fn a_posts_b(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.post(url).send().await?.error_for_status()?.text().await?)
}

#[tokio::test(start_paused = true)]
async fn a_keyed_handler_outlives_its_callers_attempt_and_the_retry_gets_its_answer() {
    for context_inside in [false, true] {
        a_keyed_handler_outlives_its_callers_attempt(context_inside).await;
    }
}

async fn a_keyed_handler_outlives_its_callers_attempt(context_inside: bool) {
    // C answers after 300 ms; A gives each attempt 100 ms. B's handler, claimed under A's key,
    // is not held to A's attempt: its call to C finishes, and A's retry gets the replay.
    let c_server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(300)),
    ))
    .await;
    let (b, b_calls) = start_b_keyed_in(c_server.url("/c"), context_inside).await;
    let got = a_posts_b(&reqwest::Client::new(), &b).await;
    assert_eq!(got.unwrap(), "ok", "context inside: {context_inside}");
    assert_eq!(c_server.requests().len(), 1, "C was called once");
    let calls = b_calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "B's handler ran once");
    assert_eq!(calls[0].0, None, "and its call to C succeeded");
}

/// B answers at once and does its call to C in a task it spawns, handing its context on:
/// the deadline A set binds that call too (C is told what is left of A's 2 s, not B's own
/// 10 s attempt timeout).
async fn b_spawning_handler(
    State((c, url, calls)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    use resilience_runtime::{current_inbound, with_inbound};
    tokio::spawn(with_inbound(current_inbound(), async move {
        let started = Instant::now();
        let out = b_calls_c(&c, &url).await;
        calls
            .lock()
            .unwrap()
            .push((out.as_ref().err().map(Error::kind), started.elapsed()));
    }));
    StatusCode::ACCEPTED
}

#[tokio::test(start_paused = true)]
async fn a_handler_hands_its_context_to_the_task_it_spawns() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let calls = Calls::default();
    let app = Router::new()
        .route("/b", get(b_spawning_handler))
        .with_state((reqwest::Client::new(), c_server.url("/c"), calls.clone()))
        .layer(ContextLayer::new());
    let b = format!("http://{}/b", serve(app).await);

    let resp = reqwest::Client::new()
        .get(&b)
        .header("x-timeout-ms", "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = c_server.requests();
    assert_eq!(seen.len(), 1);
    let left: u64 = seen[0].header("x-timeout-ms").unwrap().parse().unwrap();
    assert!(left > 0 && left <= 2000, "C was told {left} ms");
    assert_eq!(calls.lock().unwrap().len(), 1);
}

/// The caller's `tracestate` goes on to C with B's `traceparent` in the caller's trace, on
/// every attempt (several header lines combined into one list); a malformed `traceparent`
/// takes its `tracestate` with it.
#[tokio::test(start_paused = true)]
async fn the_callers_tracestate_reaches_c_with_its_trace() {
    let c_server = FaultServer::start(Script::sequence([Action::status(503), Action::ok()])).await;
    let (b, _) = start_b(c_server.url("/c")).await;
    let http = reqwest::Client::new();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = http
        .get(&b)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .header("tracestate", "rojo=00f067aa0ba902b7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = c_server.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(&r.header("traceparent").unwrap()[3..35], trace);
        assert_eq!(
            r.header("tracestate"),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }

    c_server.clear();
    let resp = http
        .get(&b)
        .header("traceparent", "garbage")
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for r in c_server.requests() {
        assert_eq!(r.header("tracestate"), None);
    }

    // Read as W3C's list: a key twice keeps its first, a member not of the list's form
    // drops it all; the trace joined all the same.
    for (sent, on) in [
        (
            "congo=t61rcWkgMzE,congo=BleGNlZWRzIHRo",
            Some("congo=t61rcWkgMzE"),
        ),
        ("congo=t61rcWkgMzE,Rojo=1", None),
    ] {
        c_server.clear();
        let resp = http
            .get(&b)
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .header("tracestate", sent)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        for r in c_server.requests() {
            assert_eq!(&r.header("traceparent").unwrap()[3..35], trace);
            assert_eq!(r.header("tracestate"), on, "{sent}");
        }
    }
}

#[resilient(timeout = "5s", deadline = "20s", max_attempts = 1, budget = false)]
async fn made_then_sent_later(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    // Made now, sent 3 s later (a request queued behind others, a `buffered(n)` of many).
    let later = c.get(url).send();
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(later.await?.status().as_u16())
}

/// "Each attempt sends its time left as `X-Timeout-Ms`": the time left as the request goes out,
/// not as it was made: a request made at the attempt's start and sent 3 s into its 5 s tells
/// the server about 2 s, not 5.
#[tokio::test(start_paused = true)]
async fn a_request_sent_late_tells_the_time_left_when_it_goes() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(
        made_then_sent_later(&reqwest::Client::new(), &server.url("/late"))
            .await
            .unwrap(),
        200
    );
    let left: u64 = server.requests()[0]
        .header("x-timeout-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1_900..=2_000).contains(&left), "told {left} ms");
}

#[resilient(timeout = "5s", deadline = "20s", max_attempts = 1, budget = false)]
async fn made_then_sent_from_a_task(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    // Made now, sent from a task of its own 3 s later.
    let later = c.get(url).send();
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        later.await
    });
    Ok(task.await.expect("the task ran")?.status().as_u16())
}

/// The same sent from a task of its own, outside the attempt's polls: the time left as it
/// goes (about 2 s), not the 5 s it was stamped with.
#[tokio::test(start_paused = true)]
async fn a_request_sent_late_from_a_task_tells_the_time_left_when_it_goes() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(
        made_then_sent_from_a_task(&reqwest::Client::new(), &server.url("/late"))
            .await
            .unwrap(),
        200
    );
    let left: u64 = server.requests()[0]
        .header("x-timeout-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1_900..=2_000).contains(&left), "told {left} ms");
}

#[resilient(timeout = "10s", max_attempts = 1, budget = false)]
async fn lookup_with_its_own_timeout(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url)
        .timeout(Duration::from_millis(300))
        .send()
        .await?
        .status()
        .as_u16())
}

/// A request with its own timeout shorter than the attempt's tells the server that: its
/// caller stops waiting at 300 ms (it was told 10 s, and a server planning within them
/// worked on for a caller long gone).
#[tokio::test(start_paused = true)]
async fn a_requests_own_shorter_timeout_is_the_time_it_tells() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    assert_eq!(
        lookup_with_its_own_timeout(&reqwest::Client::new(), &server.url("/"))
            .await
            .unwrap(),
        200
    );
    let left: u64 = server.requests()[0]
        .header("x-timeout-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(left, 300, "told {left} ms");
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn quick_lookup(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn page_with_a_hurried_part(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    // The lookup is worth 50 ms of the page's second, no more.
    with_inbound(
        Inbound::NONE.time_left(Duration::from_millis(50)),
        quick_lookup(c, url),
    )
    .await
}

/// `with_inbound` inside a body binds the call it wraps, nested in the attempt: the nearer of
/// the two deadlines (it was ignored for the attempt's, and the server told 1 s).
#[tokio::test(start_paused = true)]
async fn with_inbound_inside_a_body_binds_the_call_it_wraps() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    assert_eq!(
        page_with_a_hurried_part(&c, &server.url("/lookup"))
            .await
            .unwrap(),
        200
    );
    let left: u64 = server.requests()[0]
        .header("x-timeout-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(left <= 50, "told {left} ms");

    // Under a caller's trace: the part stays in it, and takes its `tracestate` on (the
    // part's `Inbound::NONE` once dropped it: the request carried the trace, not its state).
    let caller = Inbound::NONE
        .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .tracestate("congo=t61rcWkgMzE");
    assert_eq!(
        with_inbound(caller, page_with_a_hurried_part(&c, &server.url("/lookup")))
            .await
            .unwrap(),
        200
    );
    let r = &server.requests()[1];
    assert!(
        r.header("traceparent")
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{r:?}"
    );
    assert_eq!(r.header("tracestate"), Some("congo=t61rcWkgMzE"), "{r:?}");
}

#[resilient(timeout = "10s", max_attempts = 1, budget = false)]
async fn forwards_by_hand(c: &reqwest::Client, url: &str, told: &str) -> Result<u16, Error> {
    // A service forwarding its caller's time by hand, without `ContextLayer`.
    Ok(c.get(url)
        .header("x-timeout-ms", told)
        .send()
        .await?
        .status()
        .as_u16())
}

/// An `X-Timeout-Ms` the request carries by hand is sent when it is the shorter: the server
/// is never told it has longer than either the caller or the attempt allows.
#[tokio::test(start_paused = true)]
async fn a_shorter_timeout_set_by_hand_is_kept() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    let url = server.url("/hand");
    // Read as the server reads it: a list's shortest element; `+100` is no number to it.
    for told in ["50", "30, 5000", "999999", "soon", "+100"] {
        assert_eq!(forwards_by_hand(&c, &url, told).await.unwrap(), 200);
    }
    let sent: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.header("x-timeout-ms").unwrap().to_owned())
        .collect();
    assert_eq!(sent[0], "50", "the shorter, set by hand");
    assert_eq!(
        sent[1], "30, 5000",
        "a list whose shortest is shorter, as it was"
    );
    for s in &sent[2..] {
        let ms: u64 = s.parse().unwrap_or_else(|_| panic!("sent {s:?}"));
        assert!((9_900..=10_000).contains(&ms), "the attempt's time: {ms}");
    }
}

/// "Its calls plan within the layer's limit on the handler": with `handler_limit(2s)`, shorter
/// than B's own 10 s timeout, C is told at most 2 s, on either side of the `ContextLayer`, or
/// without one.
#[tokio::test(start_paused = true)]
async fn a_claimed_handlers_calls_plan_within_the_layers_limit() {
    for (context_inside, no_context) in [(false, false), (true, false), (false, true)] {
        let c_server = FaultServer::start(Script::always(Action::ok())).await;
        let idempotency =
            IdempotencyLayer::new(MemoryStore::default()).handler_limit(Duration::from_secs(2));
        let context = ContextLayer::new().max(Duration::from_secs(60));
        let app = Router::new()
            .route("/b", axum::routing::post(b_handler))
            .with_state((reqwest::Client::new(), c_server.url("/c"), Calls::default()));
        let app = if no_context {
            app.layer(idempotency)
        } else if context_inside {
            app.layer(context).layer(idempotency)
        } else {
            app.layer(idempotency).layer(context)
        };
        let addr = serve(app).await;
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/b"))
            .header("idempotency-key", "order-8")
            .header("x-timeout-ms", "30000")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "context inside: {context_inside}");
        let left: u64 = c_server.requests()[0]
            .header("x-timeout-ms")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            left > 1900 && left <= 2000,
            "context inside: {context_inside}, none: {no_context}: C was told {left} ms"
        );
    }
}

#[resilient(timeout = "100ms", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn b_charges_c(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

async fn b_charging(
    State((c, url, _)): State<(reqwest::Client, String, Calls)>,
) -> (StatusCode, String) {
    // Two charges of one function (each timing out: both are made).
    let first = b_charges_c(&c, &url).await;
    let second = b_charges_c(&c, &url).await;
    match (first, second) {
        (Ok(_), Ok(_)) => (StatusCode::OK, "charged".into()),
        (Err(e), _) | (_, Err(e)) => (StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

/// B, whose handler charges C twice; its `IdempotencyLayer` derives call keys as `service`
/// (or not, `None`), with a `ContextLayer` outside it or none.
async fn start_charging_b(c_url: String, service: Option<&str>, context: bool) -> String {
    let layer = IdempotencyLayer::new(MemoryStore::default());
    let layer = match service {
        Some(s) => layer.derive_call_keys(s),
        None => layer,
    };
    let app = Router::new()
        .route("/b", axum::routing::post(b_charging))
        .with_state((reqwest::Client::new(), c_url, Calls::default()))
        .layer(layer);
    let app = if context {
        app.layer(ContextLayer::new())
    } else {
        app
    };
    let addr = serve(app).await;
    format!("http://{addr}/b")
}

/// A keyed request to B whose handler charges C (`idempotency_key = auto`): C is slower than
/// B's call, so B answers 504, which its `IdempotencyLayer` does not keep, and A's retry runs
/// the handler again. With `derive_call_keys`, its charges go out under the keys they had the
/// first time (derived from the service, the request's key and body, the function and the
/// call's order in the handler), so C applies each once; another request's key, another
/// body, another service give other keys; without it, every run draws fresh ones.
#[tokio::test(start_paused = true)]
async fn a_handler_run_again_sends_its_keyed_calls_under_the_same_keys() {
    for context in [false, true] {
        let c_server = FaultServer::start(Script::always(
            Action::ok().after(Duration::from_millis(300)),
        ))
        .await;
        let b = start_charging_b(c_server.url("/c"), Some("shop"), context).await;
        let a = reqwest::Client::new();
        let send = |key: &'static str| a.post(&b).header("idempotency-key", key).send();
        let keys_seen = |from: usize| -> Vec<String> {
            c_server.requests()[from..]
                .iter()
                .map(|r| r.idempotency_key().expect("keyed").to_owned())
                .collect()
        };
        assert_eq!(send("order-9").await.unwrap().status(), 504);
        let first = keys_seen(0);
        assert_eq!(first.len(), 2, "{first:?}");
        assert_ne!(first[0], first[1], "two charges, two keys");
        assert_eq!(send("order-9").await.unwrap().status(), 504);
        let again = keys_seen(2);
        assert_eq!(again, first, "context layer: {context}");
        // Another request: other keys.
        assert_eq!(send("order-10").await.unwrap().status(), 504);
        let other = keys_seen(4);
        assert!(
            other.iter().all(|k| !first.contains(k)),
            "context layer: {context}: {other:?} {first:?}"
        );
        // The first key again with another body (a new request, once the key was given
        // back): other keys.
        let resp = a
            .post(&b)
            .header("idempotency-key", "order-9")
            .body("qty=2")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 504);
        let rebodied = keys_seen(6);
        assert!(rebodied.iter().all(|k| !first.contains(k)), "{rebodied:?}");
        // Another service (its own name), sent the same request: other keys.
        let other_b = start_charging_b(c_server.url("/c"), Some("billing"), context).await;
        let resp = a
            .post(&other_b)
            .header("idempotency-key", "order-9")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 504);
        let elsewhere = keys_seen(8);
        assert!(
            elsewhere.iter().all(|k| !first.contains(k)),
            "{elsewhere:?}"
        );
    }
    // Off by default: each run draws fresh keys.
    let c_server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(300)),
    ))
    .await;
    let b = start_charging_b(c_server.url("/c"), None, false).await;
    let a = reqwest::Client::new();
    for _ in 0..2 {
        let resp = a
            .post(&b)
            .header("idempotency-key", "order-9")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 504);
    }
    let keys: std::collections::HashSet<String> = c_server
        .requests()
        .iter()
        .map(|r| r.idempotency_key().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 4, "fresh keys each run");
}

#[resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn checkout_in_a_hurry(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    // The charge is worth 200 ms of the checkout's second.
    with_inbound(
        Inbound::NONE.time_left(Duration::from_millis(200)),
        b_charges_c(c, url),
    )
    .await
}

async fn b_checking_out(
    State((c, url, _)): State<(reqwest::Client, String, Calls)>,
) -> (StatusCode, String) {
    match checkout_in_a_hurry(&c, &url).await {
        Ok(_) => (StatusCode::OK, "charged".into()),
        Err(e) => (StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

/// A part of a handler's call given its own time (`with_inbound(Inbound::NONE.time_left(d),
/// charge)` in the body, as the README shows) is still under the handler's request: run
/// again, the handler sends the charge under the key derived the first time (the part's
/// `Inbound::NONE` once dropped the parent, and each run drew a fresh key: two charges).
#[tokio::test(start_paused = true)]
async fn a_part_given_its_own_time_keeps_the_handlers_derived_key() {
    let c_server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(300)),
    ))
    .await;
    let app = Router::new()
        .route("/b", axum::routing::post(b_checking_out))
        .with_state((reqwest::Client::new(), c_server.url("/c"), Calls::default()))
        .layer(IdempotencyLayer::new(MemoryStore::default()).derive_call_keys("shop"))
        .layer(ContextLayer::new());
    let addr = serve(app).await;
    let a = reqwest::Client::new();
    for _ in 0..2 {
        let resp = a
            .post(format!("http://{addr}/b"))
            .header("idempotency-key", "order-11")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 504);
    }
    let keys: Vec<String> = c_server
        .requests()
        .iter()
        .map(|r| r.idempotency_key().expect("keyed").to_owned())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], keys[1], "the same charge, the same key");
}

async fn b_charging_in_a_part(
    State((c, url, _)): State<(reqwest::Client, String, Calls)>,
) -> (StatusCode, String) {
    // The handler gives its charge 200 ms of its own, in place (awaited, not spawned).
    let part = Inbound::NONE.time_left(Duration::from_millis(200));
    match with_inbound(part, b_charges_c(&c, &url)).await {
        Ok(_) => (StatusCode::OK, "charged".into()),
        Err(e) => (StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

async fn b_charging_in_the_current_context(
    State((c, url, _)): State<(reqwest::Client, String, Calls)>,
) -> (StatusCode, String) {
    let part = resilience_runtime::current_inbound().time_left(Duration::from_millis(200));
    match with_inbound(part, b_charges_c(&c, &url)).await {
        Ok(_) => (StatusCode::OK, "charged".into()),
        Err(e) => (StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

/// The same part given its time by the handler itself, awaited where it is (not in a spawned
/// task): still under the handler's request, its charge keeps the derived key when the
/// handler runs again (`with_inbound` dropped the parent outside an attempt: two charges).
#[tokio::test(start_paused = true)]
async fn a_part_the_handler_gives_its_own_time_keeps_the_derived_key() {
    for in_the_current_context in [false, true] {
        let c_server = FaultServer::start(Script::always(
            Action::ok().after(Duration::from_millis(300)),
        ))
        .await;
        let app = Router::new();
        let app = if in_the_current_context {
            app.route("/b", axum::routing::post(b_charging_in_the_current_context))
        } else {
            app.route("/b", axum::routing::post(b_charging_in_a_part))
        };
        let app = app
            .with_state((reqwest::Client::new(), c_server.url("/c"), Calls::default()))
            .layer(IdempotencyLayer::new(MemoryStore::default()).derive_call_keys("shop"))
            .layer(ContextLayer::new());
        let addr = serve(app).await;
        let a = reqwest::Client::new();
        for _ in 0..2 {
            let resp = a
                .post(format!("http://{addr}/b"))
                .header("idempotency-key", "order-12")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 504);
        }
        let keys: Vec<String> = c_server
            .requests()
            .iter()
            .map(|r| r.idempotency_key().expect("keyed").to_owned())
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(
            keys[0], keys[1],
            "the same charge, the same key (current context: {in_the_current_context})"
        );
    }
}

/// The fault server of the retried enclosing calls: request 1, the first page, answers 503;
/// each charge takes 300 ms.
fn page_fails_once() -> Script {
    Script::dynamic(|seen| {
        if seen.path == "/page" && seen.index == 1 {
            Action::status(503)
        } else if seen.path == "/c" {
            Action::ok().after(Duration::from_millis(300))
        } else {
            Action::ok()
        }
    })
}

/// The charges at `/c` after the first (made before the handler ran): two, one per run, under
/// one key.
fn assert_one_charge_two_runs_one_key(server: &FaultServer) {
    let charges: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.path == "/c")
        .skip(1)
        .map(|r| r.idempotency_key().expect("keyed").to_owned())
        .collect();
    assert_eq!(charges.len(), 2, "{charges:?}");
    assert_eq!(charges[0], charges[1], "the same charge, the same key");
}

/// A handler at `/b` under an `IdempotencyLayer` that derives its calls' keys, served.
async fn serve_deriving(
    handler: axum::routing::MethodRouter<(reqwest::Client, String, Calls)>,
    base: &str,
) -> std::net::SocketAddr {
    let app = Router::new()
        .route("/b", handler)
        .with_state((reqwest::Client::new(), base.to_owned(), Calls::default()))
        .layer(IdempotencyLayer::new(MemoryStore::default()).derive_call_keys("shop"))
        .layer(ContextLayer::new());
    serve(app).await
}

/// Sends the handler at `addr` the same keyed request twice, `between` apart: each run ends in
/// a 504, never kept, so the second runs the handler again.
async fn run_twice(addr: std::net::SocketAddr, key: &str, between: Duration) {
    let a = reqwest::Client::new();
    let send = || {
        a.post(format!("http://{addr}/b"))
            .header("idempotency-key", key)
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 504);
    tokio::time::sleep(between).await;
    assert_eq!(send().await.unwrap().status(), 504);
}

/// The keys the charges at `/c` went out under, by body; the first `skip` charges (made
/// before the handler ran, to spend a permit or make a breaker known) left out.
fn keys_by_body(
    server: &FaultServer,
    skip: usize,
) -> std::collections::HashMap<String, std::collections::HashSet<String>> {
    let mut keys: std::collections::HashMap<String, std::collections::HashSet<String>> =
        std::collections::HashMap::new();
    for r in server
        .requests()
        .iter()
        .filter(|r| r.path == "/c")
        .skip(skip)
    {
        keys.entry(String::from_utf8_lossy(&r.body).into_owned())
            .or_default()
            .insert(r.idempotency_key().expect("keyed").to_owned());
    }
    keys
}

#[resilient(method = POST, idempotency_key = auto, timeout = "100ms", max_attempts = 1, budget = false, rate_limit(name = "propagation_items", rate = 1, per = "1s", burst = 1, max_wait = "0ms"))]
async fn charge_item(c: &reqwest::Client, url: &str, item: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body(item.to_owned())
        .send()
        .await?
        .status()
        .as_u16())
}

async fn b_charging_two_items(
    State((c, base, _)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    let url = format!("{base}c");
    let _ = charge_item(&c, &url, "item=a").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = charge_item(&c, &url, "item=b").await;
    StatusCode::GATEWAY_TIMEOUT
}

/// A handler charging two items in turn, the first refused by its rate limit in one run only:
/// each item goes out under the same key in both runs (a refused call keeps its place in the
/// handler's order: the second item does not take the first's).
#[tokio::test(start_paused = true)]
async fn a_refused_call_keeps_its_place_for_the_calls_after_it() {
    let c_server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(300)),
    ))
    .await;
    let base = c_server.url("");
    let addr = serve_deriving(axum::routing::post(b_charging_two_items), &base).await;
    let c = reqwest::Client::new();
    // Spends the second's permit: item a is refused in the first run.
    let _ = charge_item(&c, &format!("{base}c"), "item=spent").await;
    run_twice(addr, "order-14", Duration::from_secs(2)).await;
    let keys = keys_by_body(&c_server, 1);
    assert_eq!(keys.get("item=b").map(|k| k.len()), Some(1), "{keys:?}");
    assert!(
        keys.get("item=a")
            .is_some_and(|a| a.is_disjoint(&keys["item=b"])),
        "{keys:?}"
    );
}

#[resilient(method = POST, idempotency_key = auto, timeout = "100ms", max_attempts = 1, budget = false, breaker(name = "propagation_item_breaker", failure_rate = 0.5, min_calls = 10, window = 10, open_for = "1m"))]
async fn charge_item_behind_a_breaker(
    c: &reqwest::Client,
    url: &str,
    item: &str,
) -> Result<u16, Error> {
    Ok(c.post(url)
        .body(item.to_owned())
        .send()
        .await?
        .status()
        .as_u16())
}

async fn b_charging_two_items_behind_a_breaker(
    State((c, base, _)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    let url = format!("{base}c");
    let _ = charge_item_behind_a_breaker(&c, &url, "item=a").await;
    // Closed again between the two (an operator's `reset`, say).
    resilience_runtime::breakers::reset("propagation_item_breaker").unwrap();
    let _ = charge_item_behind_a_breaker(&c, &url, "item=b").await;
    StatusCode::GATEWAY_TIMEOUT
}

/// The same for a call its open breaker refused: it keeps its place, and the call after it
/// goes out under the same key in a run where nothing was refused.
#[tokio::test(start_paused = true)]
async fn a_call_its_breaker_refused_keeps_its_place_for_the_calls_after_it() {
    let c_server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(300)),
    ))
    .await;
    let base = c_server.url("");
    let addr = serve_deriving(
        axum::routing::post(b_charging_two_items_behind_a_breaker),
        &base,
    )
    .await;
    // Known once used; then held open for the first run's first charge.
    let c = reqwest::Client::new();
    let _ = charge_item_behind_a_breaker(&c, &format!("{base}c"), "item=first").await;
    resilience_runtime::breakers::force_open("propagation_item_breaker").unwrap();
    run_twice(addr, "order-16", Duration::from_secs(0)).await;
    let keys = keys_by_body(&c_server, 1);
    assert_eq!(
        (
            keys.get("item=a").map(|k| k.len()),
            keys.get("item=b").map(|k| k.len())
        ),
        (Some(1), Some(1)),
        "{keys:?}"
    );
    assert!(keys["item=a"].is_disjoint(&keys["item=b"]), "{keys:?}");
}

#[resilient(method = POST, idempotency_key = auto, timeout = "100ms", max_attempts = 1, budget = false, rate_limit(rate = 1, per = "1s", burst = 1, max_wait = "0ms"))]
async fn charge_limited(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url).body("amount=1").send().await?.status().as_u16())
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 2, budget = false, backoff(initial = "1s", max = "1s", jitter = none))]
async fn page_after_a_limited_charge(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    let _ = charge_limited(c, &format!("{base}c")).await;
    Ok(c.get(format!("{base}page"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

async fn b_paging(State((c, base, _)): State<(reqwest::Client, String, Calls)>) -> StatusCode {
    let _ = page_after_a_limited_charge(&c, &base).await;
    // Never kept: a repeat runs the handler again.
    StatusCode::GATEWAY_TIMEOUT
}

/// A nested keyed call its rate limit refused sent nothing; made again by its enclosing call's
/// retry, it is the same call in the same place (the retry counts its calls afresh):
/// the charge goes out under the key the same charge has in a run where it was admitted at
/// once (it took the next place, a key no other run would send it under: charged twice).
#[tokio::test(start_paused = true)]
async fn a_nested_call_made_again_by_its_enclosing_calls_retry_keeps_its_derived_key() {
    let c_server = FaultServer::start(page_fails_once()).await;
    let base = c_server.url("");
    let addr = serve_deriving(axum::routing::post(b_paging), &base).await;
    let c = reqwest::Client::new();
    // Spends the second's permit (request 0, its own key).
    let _ = charge_limited(&c, &format!("{base}c")).await;
    // Run 1: the charge refused (request 1 is the page, 503), retried a second later.
    // Run 2, once the permit is back: the charge admitted at once.
    run_twice(addr, "order-13", Duration::from_secs(2)).await;
    assert_one_charge_two_runs_one_key(&c_server);
}

/// [`charge_limited`] with a limit of its own (a test beside it spends that one's permits).
#[resilient(method = POST, idempotency_key = auto, timeout = "100ms", max_attempts = 1, budget = false, rate_limit(rate = 1, per = "1s", burst = 1, max_wait = "0ms"))]
async fn charge_limited_deeper(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url).body("amount=1").send().await?.status().as_u16())
}

#[resilient(method = GET, timeout = "500ms", max_attempts = 1, budget = false)]
async fn charge_through_a_helper_call(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    let _ = charge_limited_deeper(c, &format!("{base}c")).await;
    Ok(200)
}

#[resilient(timeout = "1s", deadline = "10s", max_attempts = 2, budget = false, backoff(initial = "1s", max = "1s", jitter = none))]
async fn page_after_a_deeper_charge(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    charge_through_a_helper_call(c, base).await?;
    Ok(c.get(format!("{base}page"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

async fn b_paging_deeper(
    State((c, base, _)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    let _ = page_after_a_deeper_charge(&c, &base).await;
    StatusCode::GATEWAY_TIMEOUT
}

/// The same two levels down: the charge's place is counted in the helper call's attempt, under
/// the helper call's place, counted in the retried attempt afresh.
#[tokio::test(start_paused = true)]
async fn a_charge_two_calls_down_keeps_its_derived_key_across_a_retry() {
    let c_server = FaultServer::start(page_fails_once()).await;
    let base = c_server.url("");
    let addr = serve_deriving(axum::routing::post(b_paging_deeper), &base).await;
    let c = reqwest::Client::new();
    // Spends the second's permit.
    let _ = charge_limited_deeper(&c, &format!("{base}c")).await;
    run_twice(addr, "order-15", Duration::from_secs(2)).await;
    assert_one_charge_two_runs_one_key(&c_server);
}

#[resilient(method = POST, idempotency_key = auto, timeout = "1s", max_attempts = 1, budget = false)]
async fn charge_an_item(c: &reqwest::Client, url: &str, item: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body(item.to_owned())
        .send()
        .await?
        .status()
        .as_u16())
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 2,
    budget = false,
    backoff(initial = "10ms", max = "10ms")
)]
async fn price_then_charge(c: &reqwest::Client, base: &str, item: &str) -> Result<u16, Error> {
    c.get(format!("{base}price"))
        .send()
        .await?
        .error_for_status()?;
    charge_an_item(c, &format!("{base}c"), item).await
}

async fn b_checking_out_items(
    State((c, base, _)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    for item in ["item=a", "item=b"] {
        let _ = price_then_charge(&c, &base, item).await;
    }
    StatusCode::OK
}

/// A loop of checkouts: the second's price fails once and its call retries. Its charge takes
/// a place of its own, not the first item's (each checkout has its place: a version that
/// tagged places with the address of the context the second checkout, made in the same place,
/// reused gave its retry the first item's place, and its charge went out under the first
/// item's key, answered the first item's charge).
#[tokio::test(start_paused = true)]
async fn a_retry_gives_back_no_place_of_a_call_before_it() {
    let c_server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/price" && seen.index == 2 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let base = c_server.url("");
    let addr = serve_deriving(axum::routing::post(b_checking_out_items), &base).await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/b"))
        .header("idempotency-key", "order-17")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let charges: Vec<(String, String)> = c_server
        .requests()
        .iter()
        .filter(|r| r.path == "/c")
        .map(|r| {
            (
                String::from_utf8_lossy(&r.body).into_owned(),
                r.idempotency_key().expect("keyed").to_owned(),
            )
        })
        .collect();
    assert_eq!(charges.len(), 2, "{charges:?}");
    assert_ne!(
        charges[0].1, charges[1].1,
        "two items, two keys: {charges:?}"
    );
    assert_eq!(c_server.count_path("/price"), 3, "the second price retried");
}

#[resilient(method = POST, idempotency_key = auto, timeout = "100ms", max_attempts = 1, budget = false, breaker(name = "propagation_fee_breaker", failure_rate = 0.5, min_calls = 10, window = 10, open_for = "1m"))]
async fn charge_behind_its_breaker(
    c: &reqwest::Client,
    url: &str,
    item: &str,
) -> Result<u16, Error> {
    Ok(c.post(url)
        .body(item.to_owned())
        .send()
        .await?
        .status()
        .as_u16())
}

/// A retry its budget refuses never begins.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 2,
    budget(ratio = 0, min_per_sec = 0),
    backoff(initial = "10ms", max = "10ms")
)]
async fn page_after_an_item(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    let _ = charge_behind_its_breaker(c, &format!("{base}c"), "item=a").await;
    Ok(c.get(format!("{base}page"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

async fn b_paging_then_charging_a_fee(
    State((c, base, _)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    let _ = page_after_an_item(&c, &base).await;
    // Closed again before the fee (an operator's `reset`, say).
    resilience_runtime::breakers::reset("propagation_fee_breaker").unwrap();
    let _ = charge_behind_its_breaker(&c, &format!("{base}c"), "item=fee").await;
    StatusCode::GATEWAY_TIMEOUT
}

/// The enclosing call's retry is decided but refused by its budget: it never begins, and the
/// place its refused charge took (its breaker open) is not the handler's next charge's, the fee
/// (a version that freed it at the decision gave it to the fee, whose key the item then had in
/// a run without the refusal: the item answered the fee's charge).
#[tokio::test(start_paused = true)]
async fn a_retry_that_never_begins_gives_no_place_back() {
    let c_server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/page" && seen.index == 1 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let base = c_server.url("");
    let addr = serve_deriving(axum::routing::post(b_paging_then_charging_a_fee), &base).await;
    // Known once used; held open for the first run's item.
    let c = reqwest::Client::new();
    let _ = charge_behind_its_breaker(&c, &format!("{base}c"), "item=first").await;
    resilience_runtime::breakers::force_open("propagation_fee_breaker").unwrap();
    run_twice(addr, "order-18", Duration::from_secs(2)).await;
    let keys = keys_by_body(&c_server, 1);
    assert_eq!(keys.get("item=fee").map(|k| k.len()), Some(1), "{keys:?}");
    assert!(
        keys.get("item=a")
            .is_some_and(|a| a.is_disjoint(&keys["item=fee"])),
        "{keys:?}"
    );
}

#[resilient(method = POST, idempotency_key = auto, timeout = "100ms", max_attempts = 1, budget = false, breaker(name = "propagation_skipped_breaker", failure_rate = 0.5, min_calls = 10, window = 10, open_for = "1m"))]
async fn charge_skipped_on_retry(c: &reqwest::Client, url: &str, item: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body(item.to_owned())
        .send()
        .await?
        .status()
        .as_u16())
}

/// Prices first, charges, then reads the page: the retry's price fails, so the retry ends
/// before the charge it made in the failed attempt.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 2,
    budget = false,
    backoff(initial = "10ms", max = "10ms")
)]
async fn price_charge_then_page(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    c.get(format!("{base}price"))
        .send()
        .await?
        .error_for_status()?;
    let _ = charge_skipped_on_retry(c, &format!("{base}c"), "item=a").await;
    Ok(c.get(format!("{base}page"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

async fn b_checking_out_then_charging_a_fee(
    State((c, base, _)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    let _ = price_charge_then_page(&c, &base).await;
    resilience_runtime::breakers::reset("propagation_skipped_breaker").unwrap();
    let _ = charge_skipped_on_retry(&c, &format!("{base}c"), "item=fee").await;
    StatusCode::GATEWAY_TIMEOUT
}

/// The enclosing call's retry begins and ends before the charge its failed attempt made (its
/// price fails): the handler's next charge of the same function, the fee, does not take that
/// charge's place (a version that freed it as the retry began gave it to the fee: the key the
/// item had in a run without the refusal, the item's charge answered for the fee).
#[tokio::test(start_paused = true)]
async fn a_retry_that_ends_before_its_nested_call_gives_no_place_back() {
    let c_server = FaultServer::start(Script::dynamic(|seen| {
        // The first item (0); run 1: price (1), page 503 (2), price 503 (3), fee (4).
        if (seen.path == "/page" && seen.index == 2) || (seen.path == "/price" && seen.index == 3) {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let base = c_server.url("");
    let addr = serve_deriving(
        axum::routing::post(b_checking_out_then_charging_a_fee),
        &base,
    )
    .await;
    // Known once used; held open for the first run's item.
    let c = reqwest::Client::new();
    let _ = charge_skipped_on_retry(&c, &format!("{base}c"), "item=first").await;
    resilience_runtime::breakers::force_open("propagation_skipped_breaker").unwrap();
    run_twice(addr, "order-19", Duration::from_secs(2)).await;
    let keys = keys_by_body(&c_server, 1);
    assert_eq!(keys.get("item=fee").map(|k| k.len()), Some(1), "{keys:?}");
    assert!(
        keys.get("item=a")
            .is_some_and(|a| a.is_disjoint(&keys["item=fee"])),
        "{keys:?}"
    );
}

#[resilient(method = POST, idempotency_key = auto, timeout = "100ms", max_attempts = 1, budget = false, rate_limit(rate = 1, per = "100ms", burst = 1, max_wait = "0ms"))]
async fn charge_beside_a_hedge(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url).body("amount=1").send().await?.status().as_u16())
}

/// Charges, then reads a slow quote: hedged while the quote is slow (its charge sent nothing).
#[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false, hedge(delay = "150ms"))]
async fn charge_then_quote(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    let _ = charge_beside_a_hedge(c, &format!("{base}c")).await;
    Ok(c.get(format!("{base}quote"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

async fn b_quoting(State((c, base, _)): State<(reqwest::Client, String, Calls)>) -> StatusCode {
    let _ = charge_then_quote(&c, &base).await;
    StatusCode::GATEWAY_TIMEOUT
}

/// A nested keyed call its rate limit refused, made again by the hedge of its enclosing call
/// (which sent nothing else the hedge could repeat), is the same call in the same place: the
/// hedge sends it under the key the first attempt sends it under in a run where it was admitted
/// at once (it took the next place: a key no other run sends it under, a second charge).
#[tokio::test(start_paused = true)]
async fn a_nested_call_made_again_by_a_hedge_keeps_its_derived_key() {
    let c_server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/quote" && seen.index == 1 {
            Action::ok().after(Duration::from_millis(400))
        } else {
            Action::ok()
        }
    }))
    .await;
    let base = c_server.url("");
    let addr = serve_deriving(axum::routing::post(b_quoting), &base).await;
    let a = reqwest::Client::new();
    let send = || {
        a.post(format!("http://{addr}/b"))
            .header("idempotency-key", "order-20")
            .send()
    };
    // Spends the permit (request 0): run 1's first attempt is refused its charge, and its
    // quote (request 1) is slow; the hedge, 150 ms in, finds the permit back.
    let c = reqwest::Client::new();
    let _ = charge_beside_a_hedge(&c, &format!("{base}c")).await;
    assert_eq!(send().await.unwrap().status(), 504);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Run 2: the charge admitted at once, the quote fast: no hedge.
    assert_eq!(send().await.unwrap().status(), 504);
    assert_one_charge_two_runs_one_key(&c_server);
    assert_eq!(c_server.count_path("/quote"), 3, "run 1 hedged its quote");
}

#[resilient(method = POST, idempotency_key = auto, timeout = "1s", max_attempts = 1, budget = false)]
async fn post_charge(c: &reqwest::Client, url: &str, item: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body(item.to_owned())
        .send()
        .await?
        .status()
        .as_u16())
}

/// The fallback of the primary charges: the backup provider, charged with [`post_charge`].
async fn via_backup(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    post_charge(c, &format!("{base}c"), "item=backup").await
}

#[resilient(method = POST, idempotency_key = auto, timeout = "1s", max_attempts = 1, budget = false, breaker(name = "propagation_primary_breaker", failure_rate = 0.5, min_calls = 10, window = 10, open_for = "1m"), fallback = via_backup, fallback_on = [circuit_open])]
async fn charge_primary(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    Ok(c.post(format!("{base}primary"))
        .body("item=primary")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

async fn b_charging_with_a_backup(
    State((c, base, _)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    let _ = charge_primary(&c, &base).await;
    let _ = post_charge(&c, &format!("{base}c"), "item=fee").await;
    StatusCode::GATEWAY_TIMEOUT
}

/// Sends the handler at `addr` the same keyed request twice: first with `breaker` open (as
/// the caller left it), then closed again.
async fn run_refused_then_admitted(addr: std::net::SocketAddr, key: &str, breaker: &str) {
    let a = reqwest::Client::new();
    let send = || {
        a.post(format!("http://{addr}/b"))
            .header("idempotency-key", key)
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 504);
    resilience_runtime::breakers::reset(breaker).unwrap();
    assert_eq!(send().await.unwrap().status(), 504);
}

/// The fee went out under one key in both runs, and the backup charge under none of it.
fn assert_backup_apart_from_the_fee(server: &FaultServer) {
    let keys = keys_by_body(server, 0);
    assert_eq!(keys.get("item=fee").map(|k| k.len()), Some(1), "{keys:?}");
    assert!(
        keys.get("item=backup")
            .is_some_and(|b| b.is_disjoint(&keys["item=fee"])),
        "{keys:?}"
    );
}

/// A call its breaker refused falls back to a function that charges with the same function
/// the handler then charges its fee with: the fallback's charge takes a place under the
/// refused call's, not the fee's (it took the fee's place: the fee went out under a key no
/// run without the fallback sends it under, charged twice, and the backup charge under the
/// fee's key of the other run, answered the fee's charge).
#[tokio::test(start_paused = true)]
async fn a_fallbacks_calls_take_no_place_of_the_calls_after_it() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let base = c_server.url("");
    let addr = serve_deriving(axum::routing::post(b_charging_with_a_backup), &base).await;
    // Known once used (the primary's path: no charge); held open for the first run.
    let c = reqwest::Client::new();
    let _ = charge_primary(&c, &base).await;
    resilience_runtime::breakers::force_open("propagation_primary_breaker").unwrap();
    run_refused_then_admitted(addr, "order-21", "propagation_primary_breaker").await;
    assert_backup_apart_from_the_fee(&c_server);
    assert_eq!(c_server.count_path("/primary"), 2, "run 2 sent the primary");
}

/// A quote from the primary provider; the backup charges instead when it fails (a keyed POST
/// answered 5xx may have been carried out: no fallback after it).
#[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false, fallback = via_backup_after_a_failure, fallback_on = [call])]
async fn charge_primary_or_fail(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    Ok(c.get(format!("{base}primary"))
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

async fn via_backup_after_a_failure(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    post_charge(c, &format!("{base}c"), "item=backup").await
}

async fn b_charging_with_a_backup_after_a_failure(
    State((c, base, _)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    let _ = charge_primary_or_fail(&c, &base).await;
    let _ = post_charge(&c, &format!("{base}c"), "item=fee").await;
    StatusCode::GATEWAY_TIMEOUT
}

/// The same for a fallback after the call failed (its primary answered 503 in one run only).
#[tokio::test(start_paused = true)]
async fn a_fallbacks_calls_after_a_failure_take_no_place_of_the_calls_after_it() {
    let c_server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/primary" && seen.index == 0 {
            Action::status(503)
        } else {
            Action::ok()
        }
    }))
    .await;
    let base = c_server.url("");
    let addr = serve_deriving(
        axum::routing::post(b_charging_with_a_backup_after_a_failure),
        &base,
    )
    .await;
    run_twice(addr, "order-22", Duration::from_secs(1)).await;
    assert_backup_apart_from_the_fee(&c_server);
}

#[resilient(method = POST, idempotency_key = auto, timeout = "1s", max_attempts = 1, budget = false, breaker(name = "propagation_nested_primary_breaker", failure_rate = 0.5, min_calls = 10, window = 10, open_for = "1m"), fallback = via_backup, fallback_on = [circuit_open])]
async fn charge_primary_nested(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    Ok(c.post(format!("{base}primary"))
        .body("item=primary")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// Checks out: the primary charge (its fallback, the backup, when its breaker is open), then
/// the fee, in one attempt.
#[resilient(method = GET, timeout = "2s", max_attempts = 1, budget = false)]
async fn check_out_with_a_backup(c: &reqwest::Client, base: &str) -> Result<u16, Error> {
    let _ = charge_primary_nested(c, base).await;
    post_charge(c, &format!("{base}c"), "item=fee").await
}

async fn b_checking_out_with_a_backup(
    State((c, base, _)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    let _ = check_out_with_a_backup(&c, &base).await;
    StatusCode::GATEWAY_TIMEOUT
}

/// The same inside another call's attempt: the fallback's charge takes its place under the
/// refused call's, not the fee's, which the attempt makes after it.
#[tokio::test(start_paused = true)]
async fn a_fallbacks_calls_in_an_attempt_take_no_place_of_the_calls_after_it() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let base = c_server.url("");
    let addr = serve_deriving(axum::routing::post(b_checking_out_with_a_backup), &base).await;
    let c = reqwest::Client::new();
    let _ = charge_primary_nested(&c, &base).await;
    resilience_runtime::breakers::force_open("propagation_nested_primary_breaker").unwrap();
    run_refused_then_admitted(addr, "order-23", "propagation_nested_primary_breaker").await;
    assert_backup_apart_from_the_fee(&c_server);
}

#[resilient(timeout = "5s", deadline = "20s", max_attempts = 1, budget = false)]
async fn executed_later(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    // Built and handed to `execute` now, awaited 3 s later.
    let later = c.execute(c.get(url).build()?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(later.await?.status().as_u16())
}

#[resilient(timeout = "5s", deadline = "20s", max_attempts = 1, budget = false)]
async fn redirected_late(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.get(url).send().await?.status().as_u16())
}

/// What the README says of the two cases the time left is not refreshed in: a request handed
/// to `client.execute` tells the time left as it was handed over (5 s here, though it goes
/// out 3 s later), and a redirect's next hop carries its first request's value (reqwest
/// copies the headers).
#[tokio::test(start_paused = true)]
async fn execute_and_a_redirects_next_hop_tell_the_time_left_as_first_stamped() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    assert_eq!(executed_later(&c, &server.url("/x")).await.unwrap(), 200);
    let told: u64 = server.requests()[0]
        .header("x-timeout-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!((4_900..=5_000).contains(&told), "told {told} ms");

    let target = FaultServer::start(Script::always(Action::ok())).await;
    let redirect = FaultServer::start(Script::always(
        Action::status(302)
            .header("Location", target.url("/next"))
            .after(Duration::from_secs(3)),
    ))
    .await;
    assert_eq!(
        redirected_late(&c, &redirect.url("/first")).await.unwrap(),
        200
    );
    let next: u64 = target.requests()[0]
        .header("x-timeout-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (4_900..=5_000).contains(&next),
        "the next hop told {next} ms"
    );
}

/// B answers with a body streamed after its handler's future ended: outside `ContextLayer`'s
/// scope, the call made while streaming gets the caller's context only when handed it with
/// `with_inbound(current_inbound(), …)`, as the README says.
async fn b_streaming(
    State((c, url, _calls)): State<(reqwest::Client, String, Calls)>,
    headers: axum::http::HeaderMap,
) -> axum::body::Body {
    use resilience_runtime::{current_inbound, with_inbound};
    let handed = headers.contains_key("x-hand-on");
    let inbound = current_inbound();
    let stream = futures::stream::once(async move {
        let out = if handed {
            with_inbound(inbound, b_calls_c(&c, &url)).await
        } else {
            b_calls_c(&c, &url).await
        };
        Ok::<_, std::convert::Infallible>(out.unwrap_or_default())
    });
    axum::body::Body::from_stream(stream)
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_gets_the_context_when_handed_it() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let app = Router::new()
        .route("/b", get(b_streaming))
        .with_state((reqwest::Client::new(), c_server.url("/c"), Calls::default()))
        .layer(ContextLayer::new().max(Duration::from_secs(60)));
    let addr = serve(app).await;
    let http = reqwest::Client::new();
    for hand_on in [true, false] {
        let mut req = http
            .get(format!("http://{addr}/b"))
            .header("x-timeout-ms", "2000");
        if hand_on {
            req = req.header("x-hand-on", "1");
        }
        assert_eq!(req.send().await.unwrap().text().await.unwrap(), "ok");
    }
    let told: Vec<u64> = c_server
        .requests()
        .iter()
        .map(|r| r.header("x-timeout-ms").unwrap().parse().unwrap())
        .collect();
    assert!(
        told[0] <= 2000,
        "handed on: the caller's 2 s, told {}",
        told[0]
    );
    assert!(
        told[1] > 9000,
        "not handed on: B's own 10 s, told {}",
        told[1]
    );
}

/// Two `ContextLayer`s, one on the app and one on a nested router, with a middleware between
/// them that takes 1 s: the inner one keeps the outer one's deadline (counted from when the
/// request arrived), not 1.5 s from its own later start.
#[tokio::test(start_paused = true)]
async fn a_second_context_layer_keeps_the_first_ones_deadline() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let inner = Router::new()
        .route("/b", get(b_handler))
        .with_state((reqwest::Client::new(), c_server.url("/c"), Calls::default()))
        .layer(ContextLayer::new());
    let app = Router::new()
        .nest("/api", inner)
        .layer(axum::middleware::from_fn(
            |req: axum::extract::Request, next: axum::middleware::Next| async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                next.run(req).await
            },
        ))
        .layer(ContextLayer::new());
    let addr = serve(app).await;
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/api/b"))
        .header("x-timeout-ms", "1500")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let told: u64 = c_server.requests()[0]
        .header("x-timeout-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(told <= 500, "C was told {told} ms");
}

async fn b_charging_in_a_task(
    State((c, url, _)): State<(reqwest::Client, String, Calls)>,
) -> (StatusCode, String) {
    let task = tokio::spawn(resilience_runtime::with_inbound(
        resilience_runtime::current_inbound(),
        async move { b_charges_c(&c, &url).await },
    ));
    match task.await.unwrap() {
        Ok(_) => (StatusCode::OK, "charged".into()),
        Err(e) => (StatusCode::GATEWAY_TIMEOUT, e.to_string()),
    }
}

/// A call in a task the handler hands its context to draws a fresh key each run, even with
/// `derive_call_keys`: its place among the handler's calls is not the same from run to run.
#[tokio::test(start_paused = true)]
async fn a_task_handed_the_context_draws_fresh_keys() {
    let c_server = FaultServer::start(Script::always(
        Action::ok().after(Duration::from_millis(300)),
    ))
    .await;
    let app = Router::new()
        .route("/b", axum::routing::post(b_charging_in_a_task))
        .with_state((reqwest::Client::new(), c_server.url("/c"), Calls::default()))
        .layer(IdempotencyLayer::new(MemoryStore::default()).derive_call_keys("shop"));
    let addr = serve(app).await;
    let a = reqwest::Client::new();
    for _ in 0..2 {
        let resp = a
            .post(format!("http://{addr}/b"))
            .header("idempotency-key", "order-11")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 504);
    }
    let keys: Vec<String> = c_server
        .requests()
        .iter()
        .map(|r| r.idempotency_key().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
}

/// B answers at once and audits after its answer, in a task handed its trace and request id
/// but not the caller's deadline (`without_deadline`): the audit runs past the caller's 200 ms
/// within its own policy's time, and keeps the caller's request id.
async fn b_auditing_later(
    State((c, url, calls)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    use resilience_runtime::{current_inbound, with_inbound};
    tokio::spawn(with_inbound(
        current_inbound().without_deadline(),
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let out = b_calls_c(&c, &url).await;
            calls
                .lock()
                .unwrap()
                .push((out.as_ref().err().map(Error::kind), Duration::ZERO));
        },
    ));
    StatusCode::ACCEPTED
}

#[tokio::test(start_paused = true)]
async fn a_task_handed_the_context_without_its_deadline_runs_past_it() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let calls = Calls::default();
    let app = Router::new()
        .route("/b", get(b_auditing_later))
        .with_state((reqwest::Client::new(), c_server.url("/c"), calls.clone()))
        .layer(ContextLayer::new());
    let b = format!("http://{}/b", serve(app).await);
    let resp = reqwest::Client::new()
        .get(&b)
        .header("x-timeout-ms", "200")
        .header("x-request-id", "req-77")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.lock().unwrap().clone()[0].0, None, "the audit ran");
    let seen = c_server.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-request-id"), Some("req-77"));
    let told: u64 = seen[0].header("x-timeout-ms").unwrap().parse().unwrap();
    assert!(told > 200, "C was told {told} ms: its own policy's time");
}

async fn b_calls_c_twice(State((c, url, _)): State<(reqwest::Client, String, Calls)>) -> String {
    let _ = b_calls_c(&c, &url).await;
    let _ = b_calls_c(&c, &url).await;
    // What the handler would write in its own log lines.
    resilience_runtime::current_inbound()
        .get_request_id()
        .unwrap_or_default()
}

/// A request that came without a request id gets one from the `ContextLayer`: the handler's
/// two calls to C carry the same `X-Request-Id`, and another request's calls another.
#[tokio::test(start_paused = true)]
async fn a_request_without_an_id_gets_one_for_all_its_calls() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let app = Router::new()
        .route("/b", get(b_calls_c_twice))
        .with_state((reqwest::Client::new(), c_server.url("/c"), Calls::default()))
        .layer(ContextLayer::new());
    let b = format!("http://{}/b", serve(app).await);
    let a = reqwest::Client::new();
    let mut told = Vec::new();
    for _ in 0..2 {
        let resp = a.get(&b).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        told.push(resp.text().await.unwrap());
    }
    let ids: Vec<String> = c_server
        .requests()
        .iter()
        .map(|r| r.header("x-request-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[0], ids[1], "one request, one id");
    assert_eq!(ids[2], ids[3]);
    assert_ne!(ids[0], ids[2], "another request, another id");
    // The handler reads the id its calls send (`get_request_id`), for its own log lines.
    assert_eq!(
        (told[0].as_str(), told[1].as_str()),
        (ids[0].as_str(), ids[2].as_str())
    );
}

/// Two `ContextLayer`s, one on the app and one on a nested router, and a request without a
/// request id: a call made by a middleware between them and the handler's call carry the one
/// id the outer layer gave the request.
#[tokio::test(start_paused = true)]
async fn nested_context_layers_give_a_request_one_id() {
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let c_url = c_server.url("/c");
    let inner = Router::new()
        .route("/b", get(b_handler))
        .with_state((reqwest::Client::new(), c_url.clone(), Calls::default()))
        .layer(ContextLayer::new());
    let app = Router::new()
        .nest("/api", inner)
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let c_url = c_url.clone();
                async move {
                    let _ = b_calls_c(&reqwest::Client::new(), &c_url).await;
                    next.run(req).await
                }
            },
        ))
        .layer(ContextLayer::new());
    let addr = serve(app).await;
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/api/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = c_server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id")
    );
}

/// Two `ContextLayer`s with a layer between them that calls the service inside it as it is
/// called (`map_future`, a hand-written tower layer's way), not from its future, in a tower
/// stack of its own: the inner `ContextLayer` is called there, and still finds the outer one's
/// id (it drew a second one, and the handler's call carried another id than the layer's own
/// call after it).
#[tokio::test]
async fn a_layer_calling_inward_at_once_keeps_the_requests_one_id() {
    use tower::{ServiceBuilder, ServiceExt as _};
    let c_server = FaultServer::start(Script::always(Action::ok())).await;
    let c_url = c_server.url("/c");
    let (handler_url, layer_url) = (c_url.clone(), c_url.clone());
    let service = ServiceBuilder::new()
        .layer(ContextLayer::new())
        .layer(tower::util::MapFutureLayer::new(move |fut| {
            let c_url = layer_url.clone();
            async move {
                let out = fut.await;
                let _ = b_calls_c(&reqwest::Client::new(), &c_url).await;
                out
            }
        }))
        .layer(ContextLayer::new())
        .service_fn(move |_req: axum::http::Request<String>| {
            let url = handler_url.clone();
            async move {
                let _ = b_calls_c(&reqwest::Client::new(), &url).await;
                Ok::<_, std::convert::Infallible>(axum::http::Response::new(String::new()))
            }
        });
    let req = axum::http::Request::get("/b").body(String::new()).unwrap();
    service.oneshot(req).await.unwrap();
    let seen = c_server.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].header("x-request-id").is_some());
    assert_eq!(
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id")
    );
}

#[resilient(
    timeout = "30s",
    deadline = "40s",
    max_attempts = 1,
    budget = false,
    idempotency_key = auto
)]
async fn charge_the_gateway(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    Ok(c.post(url)
        .body("amount=39000")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A shop's handler: charges, and answers 502 when the charge fails.
async fn shop_charges(State((c, url, _)): State<(reqwest::Client, String, Calls)>) -> StatusCode {
    match charge_the_gateway(&c, &url).await {
        Ok(_) => StatusCode::CREATED,
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}

/// "Cut mid-effect (a gateway slow to answer a charge it made), it must not run again for
/// the key": the handler's charge plans within the layer's 2 s limit, so it is the charge that
/// the limit cuts, and the handler answers 502 at once, a moment before the layer would cut
/// it. That 502 is kept as the limit's own cut is: the retry with the key gets it again, and
/// the gateway is not charged twice (the 502 was released, and the retry charged again under
/// a fresh key).
#[tokio::test(start_paused = true)]
async fn a_handler_whose_call_the_layers_limit_cut_is_not_run_again() {
    let gateway = FaultServer::start(Script::always(Action::stall())).await;
    let app = Router::new()
        .route("/orders", axum::routing::post(shop_charges))
        .with_state((
            reqwest::Client::new(),
            gateway.url("/charges"),
            Calls::default(),
        ))
        .layer(IdempotencyLayer::new(MemoryStore::default()).handler_limit(Duration::from_secs(2)));
    let addr = serve(app).await;
    let order = || {
        reqwest::Client::new()
            .post(format!("http://{addr}/orders"))
            .header("idempotency-key", "order-9")
            .send()
    };
    let first = order().await.unwrap();
    assert_eq!(first.status(), 502);
    let again = order().await.unwrap();
    assert_eq!(again.status(), 502);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(gateway.count(), 1, "charged once");
}

/// A shop's handler as often written: the charge's failure is a bug to it.
async fn shop_charges_or_panics(
    State((c, url, _)): State<(reqwest::Client, String, Calls)>,
) -> StatusCode {
    charge_the_gateway(&c, &url)
        .await
        .expect("the gateway charges");
    StatusCode::CREATED
}

/// The same cut, the handler panicking on it (`.expect(..)` on the charge): the panic comes a
/// moment before the layer's limit, and the layer's 500 is kept as the handler's 502 is (a
/// panic in a handler is otherwise given back, and the retry ran the charge again).
#[tokio::test(start_paused = true)]
async fn a_handler_that_panics_on_a_call_the_layers_limit_cut_is_not_run_again() {
    let gateway = FaultServer::start(Script::always(Action::stall())).await;
    let app = Router::new()
        .route("/orders", axum::routing::post(shop_charges_or_panics))
        .with_state((
            reqwest::Client::new(),
            gateway.url("/charges"),
            Calls::default(),
        ))
        .layer(IdempotencyLayer::new(MemoryStore::default()).handler_limit(Duration::from_secs(2)));
    let addr = serve(app).await;
    let order = || {
        reqwest::Client::new()
            .post(format!("http://{addr}/orders"))
            .header("idempotency-key", "order-10")
            .send()
    };
    let first = order().await.unwrap();
    assert_eq!(first.status(), 500);
    let again = order().await.unwrap();
    assert_eq!(again.status(), 500);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(gateway.count(), 1, "charged once");
}

/// Serves a tower service of one's own (not an axum router) over HTTP/1 on a loopback port.
async fn serve_tower<S, B, E>(svc: S) -> std::net::SocketAddr
where
    S: tower::Service<
            axum::http::Request<axum::body::Body>,
            Response = axum::http::Response<B>,
            Error = E,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    use tower::ServiceExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let svc = svc
                .clone()
                .map_request(|r: axum::http::Request<hyper::body::Incoming>| {
                    r.map(axum::body::Body::new)
                });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(tcp),
                hyper_util::service::TowerToHyperService::new(svc),
            ));
        }
    });
    addr
}

/// A tower service of its own that returns an error (no response) before any limit: the
/// first caller's connection ends with it, the key is given back, and the retry runs the
/// service again (README: "handler returns `Err`"); a response it then gives is kept.
#[tokio::test(start_paused = true)]
async fn a_service_that_returns_an_error_gives_the_key_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::Layer;
    let runs = Arc::new(AtomicUsize::new(0));
    let svc = tower::service_fn({
        let runs = runs.clone();
        move |_req: axum::http::Request<axum::body::Body>| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    return Err(std::io::Error::other("ledger unreachable"));
                }
                Ok(axum::http::Response::new(axum::body::Body::from("charged")))
            }
        }
    });
    let svc = IdempotencyLayer::new(MemoryStore::default()).layer(svc);
    let addr = serve_tower(svc).await;
    let order = || {
        reqwest::Client::new()
            .post(format!("http://{addr}/orders"))
            .header("idempotency-key", "order-12")
            .send()
    };
    assert!(
        order().await.is_err(),
        "the service's error ends the connection"
    );
    let again = order().await.unwrap();
    assert_eq!(again.status(), 200, "run again: the key was given back");
    assert!(again.headers().get("idempotent-replayed").is_none());
    let replayed = order().await.unwrap();
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// The same cut in a tower service of its own (not an axum router) that returns the charge's
/// failure as its error: the first caller's connection ends with it, and the key is kept, the
/// retry answered 500 from the store without the charge.
#[tokio::test(start_paused = true)]
async fn a_service_that_fails_on_a_call_the_layers_limit_cut_is_not_run_again() {
    use tower::Layer;
    let gateway = FaultServer::start(Script::always(Action::stall())).await;
    let (c, url) = (reqwest::Client::new(), gateway.url("/charges"));
    let svc = tower::service_fn(move |_req: axum::http::Request<axum::body::Body>| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            charge_the_gateway(&c, &url).await?;
            Ok::<_, Error>(axum::http::Response::new(axum::body::Body::from("charged")))
        }
    });
    let svc = IdempotencyLayer::new(MemoryStore::default())
        .handler_limit(Duration::from_secs(2))
        .layer(svc);
    let addr = serve_tower(svc).await;
    let order = || {
        reqwest::Client::new()
            .post(format!("http://{addr}/orders"))
            .header("idempotency-key", "order-11")
            .send()
    };
    assert!(
        order().await.is_err(),
        "the service's error ends the connection"
    );
    let again = order().await.unwrap();
    assert_eq!(again.status(), 500);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(gateway.count(), 1, "charged once");
}

#[resilient(method = POST, timeout = "10s", deadline = "20s", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn stamped_by_hand_then_executed(c: &reqwest::Client, url: &str) -> Result<u16, Error> {
    let mut req = c.post(url).body("x").build()?;
    resilience_runtime::stamp_request(&mut req);
    // Built and stamped now, handed to `execute` 3 s later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(c.execute(req).await?.status().as_u16())
}

/// A request stamped by hand (`stamp_request`), handed to `execute` 3 s later, tells the time
/// left as it is handed over (7 s of its 10 s), as any request handed to `execute` does: it
/// told the 10 s left at its stamping.
#[tokio::test(start_paused = true)]
async fn a_request_stamped_by_hand_tells_the_time_left_as_it_is_handed_to_execute() {
    let server = FaultServer::start(Script::always(Action::ok())).await;
    let c = reqwest::Client::new();
    assert_eq!(
        stamped_by_hand_then_executed(&c, &server.url("/x"))
            .await
            .unwrap(),
        200
    );
    let told: u64 = server.requests()[0]
        .header("x-timeout-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!((6_900..=7_000).contains(&told), "told {told} ms");
}
