//! Exactly-once POSTs under faults: `#[resilient(idempotency_key = auto)]` on the client, the
//! idempotency layer on the server, and a fault proxy between them that breaks attempts before
//! the handler runs and after it ran (reset, close, stall, 503), and makes the handler slower
//! than the caller: slower than the attempt timeout (the client gives up and disconnects
//! mid-request), and slower than the proxy's own read timeout (it answers 504 and closes the
//! upstream connection while the handler runs). The handler's effects equal the number of
//! calls, exactly, with one server or two sharing Redis. Without the key, the client refuses
//! to resend and reports the failure instead of duplicating.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use resilience::orders::{order_service, order_service_with};
use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::server::{MemoryStore, RedisStore};
use resilience_runtime::{Error, ErrorKind, RequestBuilderExt as _, resilient};

#[resilient(
    timeout = "150ms", // ATTEMPT_MS
    deadline = "10s",
    max_attempts = 6,
    backoff(initial = "1ms", max = "5ms"),
    budget = false,
    idempotency_key = auto
)]
async fn place_order(http: &reqwest::Client, url: &str, item: String) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body(item)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(timeout = "150ms", max_attempts = 6, backoff(initial = "1ms", max = "5ms"), budget = false, retry_on = [connect])]
async fn place_order_without_key(
    http: &reqwest::Client,
    url: &str,
    item: String,
) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body(item)
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// One attempt's fate at the proxy.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Pass,
    ResetBefore,
    Unavailable,
    ResetAfter,
    CloseAfter,
    StallAfter,
    UnavailableAfter,
    /// The handler outlives the attempt timeout: the client disconnects mid-request.
    ClientGivesUp,
    /// The handler outlives the proxy's read timeout: 504 while it runs.
    ProxyTimesOut,
}

/// The attempt timeout of `place_order`.
const ATTEMPT_MS: u64 = 150;

impl Fault {
    /// How long the handler works on the request this fault lets through.
    fn work_ms(self) -> u64 {
        match self {
            Fault::ClientGivesUp => 2 * ATTEMPT_MS,
            Fault::ProxyTimesOut => ATTEMPT_MS / 2,
            _ => 0,
        }
    }
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        3 => Just(Fault::Pass),
        1 => Just(Fault::ResetBefore),
        1 => Just(Fault::Unavailable),
        2 => Just(Fault::ResetAfter),
        2 => Just(Fault::CloseAfter),
        1 => Just(Fault::StallAfter),
        2 => Just(Fault::UnavailableAfter),
        1 => Just(Fault::ClientGivesUp),
        1 => Just(Fault::ProxyTimesOut),
    ]
}

/// A plan of faults, one per request the proxy sees. After a slow-handler fault the next two
/// requests pass: the first meets the still-running handler (409, `Retry-After: 1`), the
/// second gets the replay; so together with at most 3 faults in a row (checked by each test),
/// every call succeeds within its 6 attempts.
fn plan() -> impl Strategy<Value = Vec<Fault>> {
    proptest::collection::vec(fault(), 0..24).prop_map(|mut plan| {
        let mut i = 0;
        while i < plan.len() {
            if plan[i].work_ms() > 0 {
                for f in plan.iter_mut().skip(i + 1).take(2) {
                    *f = Fault::Pass;
                }
                i += 3;
            } else {
                i += 1;
            }
        }
        plan
    })
}

fn action(fault: Fault, upstream: SocketAddr) -> Action {
    match fault {
        Fault::Pass => Action::forward(upstream),
        Fault::ResetBefore => Action::reset(),
        Fault::Unavailable => Action::status(503),
        Fault::ResetAfter => Action::forward_then(upstream, Action::reset()),
        Fault::CloseAfter => Action::forward_then(upstream, Action::close()),
        Fault::StallAfter => Action::forward_then(upstream, Action::stall()),
        Fault::UnavailableAfter => Action::forward_then(upstream, Action::status(503)),
        Fault::ClientGivesUp => Action::forward(upstream),
        Fault::ProxyTimesOut => {
            Action::forward_within(upstream, Duration::from_millis(ATTEMPT_MS / 4))
        }
    }
}

/// Runs `calls` orders one after another through a proxy that applies `plan` to the n-th
/// request (alternating between the upstreams), then passes everything. Before forwarding,
/// the proxy sets `work_ms`, how long the handler the request reaches works.
async fn run(
    plan: Vec<Fault>,
    calls: usize,
    upstreams: Vec<SocketAddr>,
    runs: &AtomicUsize,
    work_ms: Arc<AtomicU64>,
) {
    let ups = upstreams.clone();
    let proxy = FaultServer::start(Script::dynamic(move |seen| {
        let up = ups[seen.index % ups.len()];
        let fault = plan.get(seen.index).copied().unwrap_or(Fault::Pass);
        work_ms.store(fault.work_ms(), Ordering::SeqCst);
        action(fault, up)
    }))
    .await;
    let http = reqwest::Client::builder()
        .retry(reqwest::retry::never())
        .build()
        .unwrap();
    let mut bodies = Vec::new();
    for i in 0..calls {
        let r = place_order(&http, &proxy.url("/orders"), format!("item-{i}")).await;
        let body = r.unwrap_or_else(|e| {
            panic!(
                "call {i} failed: {e}; proxy saw {:?}",
                proxy.requests().len()
            )
        });
        bodies.push(body);
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        calls,
        "handler runs; proxy saw {} requests",
        proxy.count()
    );
    // Each call got the answer of its own, single run.
    for (i, b) in bodies.iter().enumerate() {
        assert!(b.ends_with(&format!("for item-{i}")), "call {i} got {b:?}");
    }
    let distinct: std::collections::HashSet<&String> = bodies.iter().collect();
    assert_eq!(distinct.len(), calls);
    // Every request of one call carried the same key.
    let mut keys: Vec<String> = proxy
        .requests()
        .iter()
        .filter_map(|s| s.idempotency_key().map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), proxy.count(), "every attempt was keyed");
    keys.dedup();
    assert_eq!(keys.len(), calls, "one key per call, reused by its retries");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const CALLS: usize = 8;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn exactly_once_with_the_memory_store(plan in plan()) {
        // At most 3 faults in a row, so that every call succeeds within its 6 attempts.
        prop_assume!(plan.windows(4).all(|w| w.iter().any(|f| matches!(f, Fault::Pass))));
        runtime().block_on(async {
            let runs = Arc::new(AtomicUsize::new(0));
            let work = Arc::new(AtomicU64::new(0));
            let up = order_service_with(Some(Arc::new(MemoryStore::default())), runs.clone(), work.clone()).await;
            run(plan, CALLS, vec![up], &runs, work).await;
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn exactly_once_with_two_instances_sharing_redis(plan in plan()) {
        prop_assume!(plan.windows(4).all(|w| w.iter().any(|f| matches!(f, Fault::Pass))));
        runtime().block_on(async {
            let Some(url) = support::redis_url().await else { return };
            let prefix = format!("exactly-once:{}:", uuid_like());
            let runs = Arc::new(AtomicUsize::new(0));
            let a = RedisStore::connect(&url).await.unwrap().prefix(prefix.clone());
            let b = RedisStore::connect(&url).await.unwrap().prefix(prefix);
            let work = Arc::new(AtomicU64::new(0));
            let up_a = order_service_with(Some(Arc::new(a)), runs.clone(), work.clone()).await;
            let up_b = order_service_with(Some(Arc::new(b)), runs.clone(), work.clone()).await;
            run(plan, CALLS, vec![up_a, up_b], &runs, work).await;
        });
    }
}

fn uuid_like() -> String {
    format!(
        "{:032x}",
        (std::process::id() as u128) << 64
            | std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
    )
}

#[test]
fn without_the_key_the_client_reports_the_failure_instead_of_duplicating() {
    runtime().block_on(async {
        let runs = Arc::new(AtomicUsize::new(0));
        let up = order_service(Some(Arc::new(MemoryStore::default())), runs.clone()).await;
        // The order is created, then the answer is lost.
        let proxy = FaultServer::start(Script::dynamic(move |_| {
            Action::forward_then(up, Action::reset())
        }))
        .await;
        let http = reqwest::Client::new();
        let e = place_order_without_key(&http, &proxy.url("/orders"), "item-0".into())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Call);
        assert_eq!(
            e.attempts(),
            1,
            "no resend after the request may have arrived: {e}"
        );
        assert_eq!(e.class(), Some(resilience_runtime::Class::Reset));
        assert_eq!(proxy.count(), 1);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "done once, reported as failed: the caller must reconcile"
        );
    });
}

#[resilient(
    timeout = "100ms",
    deadline = "10s",
    max_attempts = 2,
    backoff(initial = "1ms", max = "5ms"),
    idempotency_key = auto
)]
async fn charge(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A payment gateway behind the idempotency layer that takes 2.5 s to charge (a task on the
/// test's runtime): its `/charges` URL, and how many charges it made.
async fn slow_gateway() -> (String, Arc<AtomicUsize>) {
    use axum::extract::State;
    use resilience_runtime::server::IdempotencyLayer;

    let charges = Arc::new(AtomicUsize::new(0));
    async fn gateway(State(charges): State<Arc<AtomicUsize>>) -> (axum::http::StatusCode, String) {
        let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        (axum::http::StatusCode::CREATED, format!("charge {n}"))
    }
    let app = axum::Router::new()
        .route("/charges", axum::routing::post(gateway))
        .with_state(charges.clone())
        .layer(IdempotencyLayer::new(MemoryStore::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/charges", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, charges)
}

/// The incident of the source documents, with the contract kept: the gateway needs 2.5 s, the
/// shop's attempts 100 ms and two of them. The first attempt gives up while the card is being
/// charged; the second meets 409 (still running); the client keeps asking, within its deadline
/// and without counting those answers as attempts, until the replay of the one charge.
#[tokio::test(start_paused = true)]
async fn a_keyed_call_waits_for_a_slow_handler_past_its_attempts() {
    let (url, charges) = slow_gateway().await;

    let started = tokio::time::Instant::now();
    let (got, report) = resilience_runtime::measure(charge(&reqwest::Client::new(), &url)).await;
    assert_eq!(got.expect("the replay of the one charge"), "charge 1");
    assert_eq!(charges.load(Ordering::SeqCst), 1, "charged once");
    let report = report.expect("measured");
    assert!(report.attempts > 2, "{report:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[resilient(
    timeout = "100ms",
    deadline = "1s",
    max_attempts = 2,
    backoff(initial = "1ms", max = "5ms"),
    budget = false,
    idempotency_key = auto
)]
async fn pay(http: &reqwest::Client, url: &str) -> Result<(), Error> {
    http.post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// A keyed call that fails after its request may have been carried out says with which key:
/// the caller's one way to look the outcome up, or to ask for it again.
#[tokio::test(start_paused = true)]
async fn a_failed_keyed_call_names_its_key() {
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let e = pay(&reqwest::Client::new(), &stalled.url("/charges"))
        .await
        .unwrap_err();
    let sent = stalled.requests()[0]
        .header("idempotency-key")
        .unwrap()
        .to_owned();
    assert_eq!(e.idempotency_key(), Some(sent.as_str()));
    assert!(
        e.to_string().contains(&format!(
            "Idempotency-Key {sent}: the request may have been carried out"
        )),
        "{e}"
    );

    // Refusals the server answered before acting (404, a 429 throttle) were not carried out:
    // the key is there, the note is not.
    for status in [404, 429] {
        let refusing = FaultServer::start(Script::always(Action::status(status))).await;
        let e = pay(&reqwest::Client::new(), &refusing.url("/charges"))
            .await
            .unwrap_err();
        assert_eq!(e.http_status(), Some(status));
        assert!(e.idempotency_key().is_some());
        assert!(!e.to_string().contains("may have been carried out"), "{e}");
    }
}

/// A service's request builder that writes a key of its own, drawn afresh each time it runs.
fn charge_request(http: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let key = format!("drawn-{}", DRAWN.fetch_add(1, Ordering::SeqCst));
    charge_request_keyed(http, url, &key)
}

/// The same builder handed the key to write.
fn charge_request_keyed(http: &reqwest::Client, url: &str, key: &str) -> reqwest::RequestBuilder {
    http.post(url).header("Idempotency-Key", key).body("39000")
}

#[resilient(timeout = "1s", deadline = "5s", max_attempts = 3, backoff(initial = "1ms", max = "5ms"), budget = false, idempotency_key = auto, method = POST)]
async fn pay_through_a_builder(http: &reqwest::Client, url: &str) -> Result<(), Error> {
    charge_request(http, url).send().await?.error_for_status()?;
    Ok(())
}

#[resilient(timeout = "1s", deadline = "5s", max_attempts = 3, backoff(initial = "1ms", max = "5ms"), budget = false, idempotency_key = key, method = POST)]
async fn pay_through_a_keyed_builder(
    http: &reqwest::Client,
    url: &str,
    key: &str,
) -> Result<(), Error> {
    charge_request_keyed(http, url, key)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// A keyed call whose request arrives with a key of its own keeps that header (it is the
/// service's), but that key is the call's only when it is the same value: one drawn afresh on
/// each run of the body would make every retry a new charge, so the request counts as unkeyed
/// and is sent once. The same builder writing the call's own key is retried with it.
#[tokio::test(start_paused = true)]
async fn a_request_with_a_key_of_its_own_is_retried_only_when_it_is_the_calls() {
    let server = FaultServer::start(Script::always(Action::status(503))).await;
    let e = pay_through_a_builder(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 1, "not sent again under another key: {e}");
    assert!(
        server.requests()[0]
            .header("idempotency-key")
            .is_some_and(|k| k.starts_with("drawn-")),
        "the service's own header kept"
    );
    // Nor does the error send the caller looking for an outcome under the call's key, which
    // no server saw.
    assert_eq!(e.idempotency_key(), None, "{e}");
    assert!(!e.to_string().contains("Idempotency-Key"), "{e}");
    server.clear();
    let e =
        pay_through_a_keyed_builder(&reqwest::Client::new(), &server.url("/charges"), "order-7")
            .await
            .unwrap_err();
    let keys: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(keys, vec![Some("order-7".to_owned()); 3], "{e}");
    assert_eq!(e.idempotency_key(), Some("order-7"), "{e}");
}

#[resilient(timeout = "1s", deadline = "5s", max_attempts = 1, budget = false, idempotency_key = auto, method = POST, hedge(delay = "50ms"))]
async fn pay_hedged_through_a_builder(http: &reqwest::Client, url: &str) -> Result<(), Error> {
    charge_request(http, url).send().await?.error_for_status()?;
    Ok(())
}

/// The same in a hedged call, whose attempts each run in a context of their own: no hedge
/// goes out beside a request under a key of its own (it would be a second charge), and the
/// error names no key.
#[tokio::test(start_paused = true)]
async fn a_hedged_request_with_a_key_of_its_own_is_not_duplicated() {
    let server = FaultServer::start(Script::always(
        Action::status(503).after(Duration::from_millis(200)),
    ))
    .await;
    let e = pay_hedged_through_a_builder(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!(server.count(), 1, "no hedge: {e}");
    assert_eq!(e.idempotency_key(), None, "{e}");
}

/// The other ways a keyed call ends after its request may have been carried out: a lost
/// connection, a 5xx, a 409 "still in progress" until the deadline. Each message names the key.
#[tokio::test(start_paused = true)]
async fn every_failure_that_may_have_been_carried_out_names_the_key() {
    let cases: [(&str, Action); 3] = [
        ("reset", Action::reset()),
        ("503", Action::status(503)),
        ("409 in progress", Action::status(409).retry_after(1)),
    ];
    for (case, action) in cases {
        let server = FaultServer::start(Script::always(action)).await;
        let e = pay(&reqwest::Client::new(), &server.url("/charges"))
            .await
            .unwrap_err();
        let sent = server.requests()[0]
            .header("idempotency-key")
            .unwrap()
            .to_owned();
        assert_eq!(e.idempotency_key(), Some(sent.as_str()), "{case}: {e}");
        assert!(
            e.to_string().contains(&format!(
                "Idempotency-Key {sent}: the request may have been carried out"
            )),
            "{case}: {e}"
        );
    }
}

#[resilient(timeout = "100ms", deadline = "1s", max_attempts = 2, backoff(initial = "1ms", max = "5ms"), budget = false, idempotency_key = auto)]
async fn pay_anyhow(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    http.post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

#[resilient(timeout = "100ms", deadline = "1s", max_attempts = 2, backoff(initial = "1ms", max = "5ms"), budget = false, idempotency_key = auto)]
async fn pay_boxed(
    http: &reqwest::Client,
    url: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    http.post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

#[resilient(timeout = "100ms", deadline = "1s", max_attempts = 2, backoff(initial = "1ms", max = "5ms"), budget = false, idempotency_key = auto)]
async fn pay_io(http: &reqwest::Client, url: &str) -> std::io::Result<()> {
    http.post(url)
        .body("39000")
        .send()
        .await
        .map_err(std::io::Error::other)?;
    Ok(())
}

/// "Both travel in the runtime's `Error`, returned as it is, boxed, in `anyhow` or an
/// `io::Error`": an attempt timeout (the runtime's own failure) found in each with its
/// attempts and its key.
#[tokio::test(start_paused = true)]
async fn the_attempts_and_the_key_travel_boxed_in_anyhow_and_in_io_errors() {
    let stalled = FaultServer::start(Script::always(Action::stall())).await;
    let url = stalled.url("/charges");
    let c = reqwest::Client::new();
    let keys = |from: usize| -> Vec<String> {
        stalled.requests()[from..]
            .iter()
            .map(|r| r.header("idempotency-key").unwrap().to_owned())
            .collect()
    };
    let check = |what: &str, e: Option<&Error>, sent: &[String]| {
        let e = e.unwrap_or_else(|| panic!("{what}: no resilience_runtime::Error inside"));
        assert_eq!(e.kind(), ErrorKind::AttemptTimeout, "{what}: {e}");
        assert_eq!(e.attempts(), 2, "{what}: {e}");
        assert_eq!(sent.len(), 2, "{what}");
        assert_eq!(e.idempotency_key(), Some(sent[0].as_str()), "{what}: {e}");
        assert_eq!(sent[0], sent[1], "{what}: one key");
    };
    let e = pay_anyhow(&c, &url).await.unwrap_err();
    check("anyhow", e.downcast_ref::<Error>(), &keys(0));
    let e = pay_boxed(&c, &url).await.unwrap_err();
    check("boxed", e.downcast_ref::<Error>(), &keys(2));
    let e = pay_io(&c, &url).await.unwrap_err();
    check(
        "io::Error",
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()),
        &keys(4),
    );
}

#[resilient(
    timeout = "100ms",
    deadline = "1s",
    max_attempts = 2,
    backoff(initial = "1ms", max = "5ms"),
    budget = false,
    idempotency_key = auto
)]
async fn pay_for_receipt(http: &reqwest::Client, url: &str) -> Result<u64, Error> {
    let receipt: std::collections::HashMap<String, u64> = http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(receipt.get("id").copied().unwrap_or_default())
}

/// A keyed POST answered 200 whose body the function cannot read was carried out: its error
/// names the status and the key, though the failure is the function's own (not retried).
#[tokio::test(start_paused = true)]
async fn a_keyed_call_whose_answer_did_not_decode_names_its_key() {
    let server = FaultServer::start(Script::always(Action::ok().body("charged, not json"))).await;
    let e = pay_for_receipt(&reqwest::Client::new(), &server.url("/charges"))
        .await
        .unwrap_err();
    let sent = server.requests()[0]
        .header("idempotency-key")
        .unwrap()
        .to_owned();
    assert_eq!(server.count(), 1, "not retried: {e}");
    assert_eq!(e.http_status(), Some(200), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "(last status 200) [Idempotency-Key {sent}: the request may have been carried out"
        )),
        "{e}"
    );
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 4,
    backoff(initial = "1ms", max = "5ms"),
    budget = false,
    idempotency_key = auto
)]
async fn refund(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A server that keeps every answer (`replay_every_status`) replays a 503 its handler gave, marked
/// `Idempotent-Replayed: true`: every retry with the key would get the same 503, so the client
/// stops at the first replay instead of asking again up to `max_attempts`.
#[tokio::test(start_paused = true)]
async fn a_replayed_answer_is_not_asked_for_again() {
    use axum::extract::State;
    use resilience_runtime::server::{IdempotencyLayer, replay_every_status};

    let runs = Arc::new(AtomicUsize::new(0));
    async fn gateway(State(runs): State<Arc<AtomicUsize>>) -> axum::http::StatusCode {
        runs.fetch_add(1, Ordering::SeqCst);
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    }
    let app = axum::Router::new()
        .route("/refunds", axum::routing::post(gateway))
        .with_state(runs.clone())
        .layer(IdempotencyLayer::new(MemoryStore::default()).replayable(replay_every_status));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/refunds", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (got, report) = resilience_runtime::measure(refund(&reqwest::Client::new(), &url)).await;
    let e = got.unwrap_err();
    assert_eq!(e.http_status(), Some(503), "{e}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    // The first answer was the handler's (retried: a 503 may pass); the second its replay.
    let report = report.expect("measured");
    assert_eq!(report.attempts, 2, "{report:?}");
    assert_eq!(e.attempts(), 2, "{e}");
}

#[resilient(
    timeout = "1s",
    deadline = "1s",
    max_attempts = 2,
    backoff(initial = "100ms", max = "100ms", jitter = none),
    idempotency_key = auto
)]
async fn capture(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "1s",
    deadline = "1s",
    max_attempts = 2,
    backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none),
    idempotency_key = auto
)]
async fn capture_without_backoff(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("c")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A server (or a proxy) that answers "still in progress" with `Retry-After: 0` is asked again
/// at the policy's backoff, not back to back until the deadline: asking past `max_attempts`
/// keeps the backoff, and with no backoff at all (`capture_without_backoff`) the asks wait
/// at least 100 ms.
#[tokio::test(start_paused = true)]
async fn asking_for_a_replay_keeps_the_backoff() {
    for without_backoff in [false, true] {
        // 30 such answers, then a stall: back to back, the 30 go at once and the stall ends
        // the call at its deadline (a bound for the test, with the paused clock).
        let busy = FaultServer::start(
            Script::sequence((0..30).map(|_| Action::status(409).header("retry-after", "0")))
                .then(Action::stall()),
        )
        .await;
        let (c, url) = (reqwest::Client::new(), busy.url("/captures"));
        let e = if without_backoff {
            capture_without_backoff(&c, &url).await
        } else {
            capture(&c, &url).await
        }
        .unwrap_err();
        assert_eq!(e.http_status(), Some(409), "{e}");
        // One request, then one every 100 ms within the 1 s deadline.
        assert!(
            (9..=11).contains(&busy.count()),
            "without backoff {without_backoff}: {} requests in 1 s",
            busy.count()
        );
    }
}

#[resilient(
    timeout = "1s",
    deadline = "30s",
    max_attempts = 3,
    backoff(initial = "100ms", max = "2s", jitter = none),
    idempotency_key = auto
)]
async fn capture_at_length(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A server that is not this crate's layer answering every request 409 with `Retry-After: 0`
/// (a conflict it calls "try later") is asked again at a backoff that grows with each ask, up
/// to the backoff's `max`, not at its first step until the deadline (about 300 requests in the
/// 30 s deadline, outside `max_attempts` and the budget).
#[tokio::test(start_paused = true)]
async fn asking_for_a_replay_backs_off_with_each_ask() {
    let busy = FaultServer::start(
        Script::sequence((0..400).map(|_| Action::status(409).header("retry-after", "0")))
            .then(Action::stall()),
    )
    .await;
    let e = capture_at_length(&reqwest::Client::new(), &busy.url("/captures"))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(409), "{e}");
    // 100, 200, 400, 800 ms, 1.6 s, then every 2 s: about 19 in 30 s.
    assert!(
        (15..=22).contains(&busy.count()),
        "{} requests in 30 s",
        busy.count()
    );
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = false,
    idempotency_key = auto
)]
async fn settle(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The asks for a replay of a request still in progress count against `max_attempts` neither
/// then nor later: a 503, two 409 "still in progress", a 503 (the handler failed and gave the
/// key back), then the answer. Three attempts counted, five requests; the call succeeds.
#[tokio::test(start_paused = true)]
async fn asks_for_the_replay_leave_the_attempts_to_later_failures() {
    let server = FaultServer::start(Script::sequence([
        Action::status(503),
        Action::status(409).retry_after(1),
        Action::status(409).retry_after(1),
        Action::status(503),
        Action::ok().body("settled"),
    ]))
    .await;
    let (got, report) =
        resilience_runtime::measure(settle(&reqwest::Client::new(), &server.url("/settlements")))
            .await;
    assert_eq!(got.expect("the third counted attempt succeeds"), "settled");
    assert_eq!(server.count(), 5);
    assert_eq!(report.expect("measured").attempts, 5, "every request ran");
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 3,
    backoff(initial = "10ms", max = "10ms", jitter = none),
    budget = { name = "no_retries_left", ratio = 0.0, min_per_sec = 0 },
    idempotency_key = auto
)]
async fn settle_on_a_spent_budget(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Asking again for the replay is not a retry paid from the budget: with a budget that
/// allows no retry at all, a keyed call met by 409 "still in progress" still gets its answer,
/// and a 503 after it is refused the retry.
#[tokio::test(start_paused = true)]
async fn asks_for_the_replay_are_not_paid_from_the_budget() {
    let server = FaultServer::start(Script::sequence([
        Action::status(409).retry_after(1),
        Action::ok().body("settled"),
    ]))
    .await;
    let got = settle_on_a_spent_budget(&reqwest::Client::new(), &server.url("/settlements")).await;
    assert_eq!(got.expect("the replay"), "settled");
    let failing = FaultServer::start(Script::always(Action::status(503))).await;
    let e = settle_on_a_spent_budget(&reqwest::Client::new(), &failing.url("/settlements"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BudgetExhausted, "{e}");
    assert_eq!(failing.count(), 1);
}

/// A 409 whose `Retry-After` cannot be read (a word, a date with the wrong weekday) is still
/// the server's "this key is still being processed": the call asks again for the replay
/// instead of ending on the 409 with the first request's outcome unknown.
#[tokio::test(start_paused = true)]
async fn a_409_with_an_unreadable_retry_after_is_asked_again() {
    for unreadable in ["soon", "Sat, 09 Dec 2026 10:00:00 GMT"] {
        let server = FaultServer::start(Script::sequence([
            Action::status(409).header("Retry-After", unreadable),
            Action::ok().body("settled"),
        ]))
        .await;
        let got = settle(&reqwest::Client::new(), &server.url("/settlements")).await;
        assert_eq!(got.expect(unreadable), "settled", "{unreadable}");
        let requests = server.requests();
        assert_eq!(requests.len(), 2, "{unreadable}");
        assert_eq!(requests[0].idempotency_key(), requests[1].idempotency_key());
    }
}

#[resilient(
    timeout = "100ms",
    deadline = "10s",
    max_attempts = 2,
    backoff(initial = "1ms", max = "5ms"),
    budget = { name = "slow_gateway_spent", ratio = 0.0, min_per_sec = 0 },
    idempotency_key = auto
)]
async fn charge_on_a_spent_budget(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "100ms",
    deadline = "10s",
    max_attempts = 2,
    backoff(initial = "1ms", max = "5ms"),
    budget = false,
    breaker = { name = "slow_gateway_breaker", failure_rate = 1.0, min_calls = 1, window = 1, open_for = "30s", half_open_calls = 1 },
    idempotency_key = auto
)]
async fn charge_behind_a_breaker(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The slow gateway again, with the retry that would find the charge in progress refused: by
/// a spent budget, or by the breaker the first attempt's timeout opened. Only the asks after a
/// 409 go around those; the retry after a timeout is a retry like any other. The call fails,
/// and says so: one attempt, the key named as possibly carried out, the handle to ask for the
/// answer with once the budget or the breaker allows (README, "When a retry happens").
#[tokio::test(start_paused = true)]
async fn a_keyed_call_whose_retry_is_refused_names_the_key_the_charge_went_under() {
    let (url, charges) = slow_gateway().await;
    let http = reqwest::Client::new();

    let spent = charge_on_a_spent_budget(&http, &url).await.unwrap_err();
    let open = charge_behind_a_breaker(&http, &url).await.unwrap_err();
    for (e, kind) in [
        (&spent, ErrorKind::BudgetExhausted),
        (&open, ErrorKind::CircuitOpen),
    ] {
        assert_eq!(e.kind(), kind, "{e}");
        assert_eq!(e.attempts(), 1, "{e}");
        let key = e.idempotency_key().expect("the key named");
        assert!(e.to_string().contains(key), "{e}");
    }
    // Both charges go through, once each, after their calls failed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(charges.load(Ordering::SeqCst), 2);
}

#[resilient(
    timeout = "100ms",
    deadline = "10s",
    max_attempts = 2,
    backoff(initial = "1ms", max = "5ms"),
    budget = false,
    breaker = { name = "asks_breaker", failure_rate = 0.5, min_calls = 2, window = 2, open_for = "30s", half_open_calls = 1 },
    idempotency_key = auto
)]
async fn charge_asking_behind_a_breaker(
    http: &reqwest::Client,
    url: &str,
) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A call asking for the replay of its charge in progress (409) is not refused by a breaker
/// another call's timeout opened meanwhile: the ask sends nothing to run again, and the
/// answer is the one charge's. Refused, the call failed `CircuitOpen` while its charge went
/// through, and a caller trying again under a new key paid twice.
#[tokio::test(start_paused = true)]
async fn asks_for_the_replay_go_around_a_breaker_opened_meanwhile() {
    let (url, charges) = slow_gateway().await;
    let http = reqwest::Client::new();
    let (asking, opening) = tokio::join!(charge_asking_behind_a_breaker(&http, &url), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        charge_asking_behind_a_breaker(&http, &url).await
    });
    let opening = opening.unwrap_err();
    assert_eq!(
        opening.kind(),
        ErrorKind::CircuitOpen,
        "its retry refused: {opening}"
    );
    assert_eq!(asking.expect("the replay of the first charge"), "charge 1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(charges.load(Ordering::SeqCst), 2, "one charge per call");
}

#[resilient(method = GET, timeout = "1s", max_attempts = 1, budget = false)]
async fn stock_level(c: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(c.get(url).send().await?.error_for_status()?.text().await?)
}

/// A keyed charge that checks the stock (a nested call) before it reads the charge's answer.
#[resilient(timeout = "1s", deadline = "10s", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn charge_then_stock(
    http: &reqwest::Client,
    url: &str,
    stock: &str,
) -> Result<String, Error> {
    let r = http.post(url).body("39000").send().await?;
    let _level = stock_level(http, stock).await?;
    Ok(r.error_for_status()?.text().await?)
}

/// A 409 "still in progress" the body reads after a nested call (the stock check between the
/// charge and its answer) is still asked for again: the `Retry-After` of the body's own 409,
/// kept apart once the body went on, is that 409's (the call ended on it as a plain 409).
#[tokio::test(start_paused = true)]
async fn a_409_in_progress_read_after_a_nested_call_is_asked_for_again() {
    let server = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/stock" {
            Action::ok().body("12")
        } else if seen.index == 0 {
            Action::status(409).retry_after(1)
        } else {
            Action::ok().body("charged")
        }
    }))
    .await;
    let got = charge_then_stock(
        &reqwest::Client::new(),
        &server.url("/charges"),
        &server.url("/stock"),
    )
    .await;
    assert_eq!(got.expect("the replay"), "charged");
    assert_eq!(server.count_path("/charges"), 2);
}

/// One attempt, keyed: its own failures are not retried, but a 409 "still in progress" (the
/// caller of a job queue calling again while the first call's handler runs) is asked again
/// for the replay, as with any `max_attempts`.
#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false,
    idempotency_key = auto
)]
async fn settle_once(http: &reqwest::Client, url: String) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn one_attempt_still_asks_for_the_replay_of_a_request_in_progress() {
    let server = FaultServer::start(Script::sequence([
        Action::status(409).retry_after(1),
        Action::status(409).retry_after(1),
        Action::ok().body("settled"),
    ]))
    .await;
    let got = settle_once(&reqwest::Client::new(), server.url("/settlements")).await;
    assert_eq!(got.expect("the replay"), "settled");
    assert_eq!(server.count(), 3);
    // Asking again ran nothing again: no retry counted, the call succeeded without one.
    let m = resilience_runtime::metrics::policy("exactly_once::settle_once").unwrap();
    assert_eq!(
        (
            m.successful_without_retry,
            m.successful_with_retry,
            m.retries
        ),
        (1, 0, 0),
        "{m:?}"
    );
    let keys: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.idempotency_key().unwrap().to_owned())
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "one key: {keys:?}");
    // Its own failure is not retried: one request, and the call is counted as failed, not as
    // cancelled.
    let failing = FaultServer::start(Script::always(Action::status(503))).await;
    let e = settle_once(&reqwest::Client::new(), failing.url("/settlements"))
        .await
        .unwrap_err();
    assert_eq!((e.attempts(), failing.count()), (1, 1), "{e}");
    let m = resilience_runtime::metrics::policy("exactly_once::settle_once").unwrap();
    assert_eq!(m.cancelled, 0, "{m:?}");
    assert_eq!(m.failed_without_retry, 1, "{m:?}");
}

/// A body built again on each attempt, the way services write it: a `HashMap` serialized
/// (its order is the map's own, new each time), or a multipart form (a new boundary each
/// time). Its first attempt times out while the handler runs; the retry is the same request
/// to the layer, so it waits for the replay instead of being refused as a reused key.
#[resilient(
    timeout = "200ms",
    deadline = "5s",
    backoff(initial = "50ms", max = "50ms", jitter = none),
    budget = false,
    idempotency_key = auto
)]
async fn order_from_a_map(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    let order: std::collections::HashMap<&str, u32> = [
        ("apples", 1),
        ("pears", 2),
        ("plums", 3),
        ("figs", 4),
        ("kiwis", 5),
        ("limes", 6),
        ("dates", 7),
        ("grapes", 8),
    ]
    .into_iter()
    .collect();
    Ok(http
        .post(url)
        .json(&order)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "200ms",
    deadline = "5s",
    backoff(initial = "50ms", max = "50ms", jitter = none),
    budget = false,
    idempotency_key = auto
)]
async fn order_with_an_upload(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    let form = reqwest::multipart::Form::new()
        .text("note", "leave at the door")
        .part(
            "receipt",
            reqwest::multipart::Part::bytes(b"%PDF-1.7".to_vec()),
        );
    Ok(http
        .post(url)
        .multipart(form)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[tokio::test(start_paused = true)]
async fn a_body_built_again_on_each_attempt_is_the_same_request_to_the_layer() {
    for with_upload in [false, true] {
        let runs = Arc::new(AtomicUsize::new(0));
        let work = Arc::new(AtomicU64::new(500));
        let addr =
            order_service_with(Some(Arc::new(MemoryStore::default())), runs.clone(), work).await;
        let url = format!("http://{addr}/orders");
        let http = reqwest::Client::new();
        let got = if with_upload {
            order_with_an_upload(&http, &url).await
        } else {
            order_from_a_map(&http, &url).await
        };
        let body = got.unwrap_or_else(|e| panic!("upload {with_upload}: {e}"));
        assert!(body.starts_with("order #1 for "), "{body}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "upload {with_upload}");
    }
}

#[resilient(timeout = "2s", max_attempts = 3, backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn order_with_a_nonce(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    // Drawn in the body, so different on every attempt: what the reference says not to do.
    static NONCE: AtomicU64 = AtomicU64::new(0);
    let nonce = NONCE.fetch_add(1, Ordering::SeqCst);
    Ok(http
        .post(url)
        .body(format!("1 pear, nonce {nonce}"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A keyed request must be the same on every attempt: a retry whose body differs is answered
/// 422 by a server that replays by key (the key reused for another request), and the call
/// ends with that 422, naming the key, though the first attempt was carried out (the handler
/// ran once).
#[tokio::test]
async fn a_keyed_retry_whose_body_differs_ends_with_the_servers_422() {
    let runs = Arc::new(AtomicUsize::new(0));
    let up = order_service(Some(Arc::new(MemoryStore::default())), runs.clone()).await;
    // The first attempt reaches the handler, its answer lost; the retry reaches the layer.
    let proxy = FaultServer::start(Script::dynamic(move |seen| {
        if seen.index == 0 {
            Action::forward_then(up, Action::reset())
        } else {
            Action::forward(up)
        }
    }))
    .await;
    let e = order_with_a_nonce(&reqwest::Client::new(), &proxy.url("/orders"))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(422), "{e}");
    assert_eq!((e.attempts(), proxy.count()), (2, 2), "{e}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the order was placed once");
    assert!(e.idempotency_key().is_some(), "{e}");
}

#[resilient(timeout = "1s", max_attempts = 1, idempotency_key = auto)]
async fn two_charges_in_one_call(
    http: &reqwest::Client,
    url: &str,
    second: &'static str,
) -> Result<(u16, u16), Error> {
    let first = http.post(url).body("100").send().await?.status().as_u16();
    let again = http.post(url).body(second).send().await?.status().as_u16();
    Ok((first, again))
}

/// The README's limit, as it says: two POSTs to the same path in one keyed call carry one key,
/// and a server that scopes the key by method and path takes the second for a repeat of the
/// first: its answer replayed when the body is the same (the handler does not run twice),
/// 422 when it differs.
#[tokio::test(start_paused = true)]
async fn two_posts_to_one_path_in_a_keyed_call_share_its_key() {
    use axum::extract::State;
    use resilience_runtime::server::IdempotencyLayer;

    let charges = Arc::new(AtomicUsize::new(0));
    async fn gateway(State(charges): State<Arc<AtomicUsize>>) -> axum::http::StatusCode {
        charges.fetch_add(1, Ordering::SeqCst);
        axum::http::StatusCode::CREATED
    }
    let app = axum::Router::new()
        .route("/charges", axum::routing::post(gateway))
        .with_state(charges.clone())
        .layer(IdempotencyLayer::new(MemoryStore::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/charges", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();

    assert_eq!(
        two_charges_in_one_call(&http, &url, "100").await.unwrap(),
        (201, 201)
    );
    assert_eq!(
        charges.load(Ordering::SeqCst),
        1,
        "the second was the first's replay"
    );
    assert_eq!(
        two_charges_in_one_call(&http, &url, "250").await.unwrap(),
        (201, 422)
    );
    assert_eq!(
        charges.load(Ordering::SeqCst),
        2,
        "one more call, one more charge"
    );
}

#[resilient(
    method = POST,
    idempotency_key = auto,
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false
)]
async fn reserve_then_pay(c: &reqwest::Client, inventory: &str, pay: &str) -> Result<u16, Error> {
    c.get(inventory).send().await?.error_for_status()?;
    Ok(c.post(pay)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A keyed call's GET answered 409 with `Retry-After` (a lock service's "locked, try in 1 s")
/// is a plain conflict: the call ends on it, one request, as its `max_attempts = 1` says. It
/// was taken for "this key is still being processed" and asked again until the deadline (9
/// GETs), past `max_attempts`, the budget and the breaker, none of which bound such asks.
#[tokio::test(start_paused = true)]
async fn a_409_to_a_keyed_calls_read_is_a_plain_conflict() {
    let inventory = FaultServer::start(Script::always(Action::status(409).retry_after(1))).await;
    let pay = FaultServer::start(Script::always(Action::ok())).await;
    let e = reserve_then_pay(&reqwest::Client::new(), &inventory.url("/"), &pay.url("/"))
        .await
        .unwrap_err();
    assert_eq!(inventory.count(), 1, "{e}");
    assert_eq!(pay.count(), 0);
    assert_eq!((e.http_status(), e.attempts()), (Some(409), 1), "{e}");
}

#[resilient(
    method = POST,
    idempotency_key = auto,
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false
)]
async fn pay_then_reserve(c: &reqwest::Client, inventory: &str, pay: &str) -> Result<u16, Error> {
    c.post(pay).body("39000").send().await?.error_for_status()?;
    Ok(c.get(inventory)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The same after the call's keyed POST went through: the GET's 409 is still a plain
/// conflict, not the POST's "still in progress".
#[tokio::test(start_paused = true)]
async fn a_409_to_a_keyed_calls_read_after_its_post_is_a_plain_conflict() {
    let inventory = FaultServer::start(Script::always(Action::status(409).retry_after(1))).await;
    let pay = FaultServer::start(Script::always(Action::ok())).await;
    let e = pay_then_reserve(&reqwest::Client::new(), &inventory.url("/"), &pay.url("/"))
        .await
        .unwrap_err();
    assert_eq!((inventory.count(), pay.count()), (1, 1), "{e}");
    assert_eq!((e.http_status(), e.attempts()), (Some(409), 1), "{e}");
    // The wait the lock service asked for stays the caller's to read.
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)), "{e}");
}

#[resilient(
    method = POST,
    idempotency_key = auto,
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    budget = false
)]
async fn pay_then_reserve_by_execute(
    c: &reqwest::Client,
    inventory: &str,
    pay: &str,
) -> Result<u16, Error> {
    c.post(pay).body("39000").send().await?.error_for_status()?;
    let reserve = c.get(inventory).build()?;
    Ok(c.execute(reserve)
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// The same read handed to `client.execute`.
#[tokio::test(start_paused = true)]
async fn a_409_to_a_keyed_calls_executed_read_is_a_plain_conflict() {
    let inventory = FaultServer::start(Script::always(Action::status(409).retry_after(1))).await;
    let pay = FaultServer::start(Script::always(Action::ok())).await;
    let e =
        pay_then_reserve_by_execute(&reqwest::Client::new(), &inventory.url("/"), &pay.url("/"))
            .await
            .unwrap_err();
    assert_eq!((inventory.count(), pay.count()), (1, 1), "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)), "{e}");
}

#[resilient(
    method = POST,
    idempotency_key = auto,
    timeout = "1s",
    deadline = "10m",
    max_attempts = 3,
    budget = false
)]
async fn charge_asked_to_wait_long(c: &reqwest::Client, pay: &str) -> Result<u16, Error> {
    Ok(c.post(pay)
        .body("39000")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// A keyed charge answered "still in progress" with a `Retry-After` above `max_retry_after`
/// (120 s of 30 s) ends at once, as any such answer does, within its 10-minute deadline: not
/// asked again later, nor sooner than the server asked. Its error names the wait and the key.
#[tokio::test(start_paused = true)]
async fn an_in_progress_answer_asking_past_max_retry_after_ends_the_call() {
    let pay = FaultServer::start(Script::always(Action::status(409).retry_after(120))).await;
    let started = tokio::time::Instant::now();
    let e = charge_asked_to_wait_long(&reqwest::Client::new(), &pay.url("/charges"))
        .await
        .unwrap_err();
    assert_eq!(pay.count(), 1, "{e}");
    assert!(started.elapsed() < Duration::from_secs(1), "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(120)), "{e}");
    assert!(e.idempotency_key().is_some(), "{e}");
}
