//! The idempotency layer over the in-memory store, through real sockets.

#![cfg(feature = "server")]

mod server_support;

use std::sync::Arc;
use std::time::Duration;

use resilience_runtime::server::{
    BoxFuture, Claim, IdempotencyLayer, IdempotencyStore, InFlight, MemoryStore, Record,
    StoreError, StoredResponse,
};
use server_support::{Store, count, fresh_key, post, serve};

fn store() -> Store {
    Arc::new(MemoryStore::default())
}

/// The store of one rule's test.
async fn store_for(_test: &str) -> Option<Store> {
    Some(store())
}

server_support::every_rule!(store_for);

/// Held by the tests that leave responses pending (kept in memory while their store cannot
/// take them): the pending count is the process's, and one test asserts on it.
static PENDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One call of the store trait.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Claim,
    Renew,
    Complete,
    Release,
    Get,
}

/// What a test store does with a call: what a remote store's connection can do to a command.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// The memory store's answer.
    Pass,
    /// Refused at once, not carried out (a connection refused, a store down).
    Fail,
    /// Never answered, not carried out (a frozen store).
    Hang,
    /// Carried out, its reply lost (an error).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    LoseReply,
    /// Carried out at once, answered after this long (a store slow to reply).
    AnswerAfter(Duration),
    /// Sent twice, the first reply lost (a Redis Cluster client retrying a command): the
    /// answer is the second's.
    Resent,
    /// Carried out after this long, in the background, whether or not its caller still waits
    /// (a command a cluster client sends again after a failover), and answered then. Claims
    /// only.
    LandAfter(Duration),
    /// Answered this without asking the store. Renewals only.
    Say(bool),
    /// Panics when polled, not carried out (a bug in the store).
    Panic,
}

/// A memory store whose calls go through `rule` (given the call and how many of its kind came
/// before it), and that can be switched off (`down`: every call refused, like a Redis lost and
/// back). Two over one memory store are two instances' connections to one Redis.
struct Faulty {
    inner: Arc<MemoryStore>,
    rule: Box<dyn Fn(Op, usize) -> Act + Send + Sync>,
    calls: [std::sync::atomic::AtomicUsize; 5],
    down: std::sync::atomic::AtomicBool,
}

impl Default for Faulty {
    /// Passes every call while it is not switched off.
    fn default() -> Faulty {
        Faulty::new(|_, _| Act::Pass)
    }
}

impl Faulty {
    fn new(rule: impl Fn(Op, usize) -> Act + Send + Sync + 'static) -> Faulty {
        Faulty::over(Arc::new(MemoryStore::default()), rule)
    }

    fn over(
        inner: Arc<MemoryStore>,
        rule: impl Fn(Op, usize) -> Act + Send + Sync + 'static,
    ) -> Faulty {
        Faulty {
            inner,
            rule: Box::new(rule),
            calls: Default::default(),
            down: Default::default(),
        }
    }

    /// Calls of this kind made so far.
    fn calls(&self, op: Op) -> usize {
        self.calls[op as usize].load(std::sync::atomic::Ordering::SeqCst)
    }

    fn act(&self, op: Op) -> Act {
        let n = self.calls[op as usize].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Act::Fail;
        }
        (self.rule)(op, n)
    }

    /// `go` (the memory store's call) as `act` says.
    fn run<'a, T: Send + 'a>(
        act: Act,
        go: impl Fn() -> BoxFuture<'a, Result<T, StoreError>> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        match act {
            Act::Pass => go(),
            Act::Fail => Box::pin(std::future::ready(Err(StoreError::new(
                "connection refused",
            )))),
            Act::Hang => Box::pin(std::future::pending()),
            Act::LoseReply => Box::pin(async move {
                let _carried_out = go().await;
                Err(StoreError::new("connection reset: reply lost"))
            }),
            Act::AnswerAfter(d) => Box::pin(async move {
                let answer = go().await;
                tokio::time::sleep(d).await;
                answer
            }),
            Act::Resent => Box::pin(async move {
                let _lost = go().await;
                go().await
            }),
            Act::Panic => Box::pin(async { panic!("the store's own bug") }),
            Act::LandAfter(_) | Act::Say(_) => panic!("{act:?}: not for this call"),
        }
    }
}

impl IdempotencyStore for Faulty {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        match self.act(Op::Claim) {
            Act::LandAfter(d) => {
                let (inner, key, claim) = (self.inner.clone(), key.to_owned(), *claim);
                let landed = tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    inner.claim(&key, &claim, lease).await
                });
                Box::pin(async move { landed.await.expect("the claim lands") })
            }
            act => Faulty::run(act, move || self.inner.claim(key, claim, lease)),
        }
    }
    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        match self.act(Op::Renew) {
            Act::Say(answer) => Box::pin(std::future::ready(Ok(answer))),
            act => Faulty::run(act, move || self.inner.renew(key, claim, lease)),
        }
    }
    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Faulty::run(self.act(Op::Complete), move || {
            self.inner.complete(key, claim, response, ttl)
        })
    }
    fn release<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Faulty::run(self.act(Op::Release), move || {
            self.inner.release(key, claim)
        })
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Faulty::run(self.act(Op::Get), move || self.inner.get(key))
    }
}

/// A store that is down: every call refused.
fn down_store() -> Faulty {
    Faulty::new(|_, _| Act::Fail)
}

/// A store that never answers, like a frozen Redis (`calls(Op::Claim)`: the claims it was
/// asked).
fn hanging_store() -> Faulty {
    Faulty::new(|_, _| Act::Hang)
}

#[tokio::test]
async fn a_store_that_is_down_refuses_keyed_requests_with_503() {
    let store: Store = Arc::new(down_store());
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let refused = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(count(&app.runs.orders), 0, "never run without a claim");
    // Requests without a key do not need the store.
    assert_eq!(post(&app.url("/orders"), None, "x").await.status, 201);
}

#[tokio::test]
async fn a_full_memory_store_keeps_running_claims_and_refuses_new_ones() {
    let store: Store = Arc::new(MemoryStore::new(1));
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let running = tokio::spawn({
        let url = app.url("/gated");
        async move { post(&url, Some(&fresh_key()), "x").await }
    });
    server_support::wait_until(|| count(&app.runs.gated) == 1).await;
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        503
    );
    app.gate.add_permits(1);
    assert_eq!(running.await.unwrap().status, 201);
    // Completed responses make room for new keys: the oldest goes.
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn a_store_that_hangs_is_answered_within_the_store_timeout_then_at_once() {
    let hanging = Arc::new(hanging_store());
    let store: Store = hanging.clone();
    let layer = IdempotencyLayer::new(store.clone())
        .store_timeout(Duration::from_millis(100))
        .store_down_for(Duration::from_millis(400));
    let app = serve(&store, layer).await;
    let claims = || hanging.calls(Op::Claim);

    let started = tokio::time::Instant::now();
    let first = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    assert_eq!(first.status, 503, "{first:?}");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "bounded by the store timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(claims(), 1);
    // Known to be down: answered without asking the store.
    let second = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("retry-after"), Some("1"));
    assert_eq!(claims(), 1, "not asked while known to be down");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        503
    );
    assert_eq!(claims(), 2, "asked again once the down time passed");
    assert_eq!(count(&app.runs.orders), 0);
}

/// A store taken as down for longer than a second says so in its 503's `Retry-After`: the
/// time left of it, in whole seconds rounded up, so that a client that obeys the header does
/// not spend its attempts on 503s the layer gives without asking the store.
#[tokio::test]
async fn the_503_of_a_store_taken_as_down_says_how_long_is_left() {
    let hanging = Arc::new(hanging_store());
    let store: Store = hanging.clone();
    let layer = IdempotencyLayer::new(store.clone())
        .store_timeout(Duration::from_millis(100))
        .store_down_for(Duration::from_secs(3));
    let app = serve(&store, layer).await;
    let first = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    assert_eq!(first.status, 503, "{first:?}");
    assert_eq!(first.header("retry-after"), Some("3"), "{first:?}");
    let second = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    assert_eq!(second.status, 503, "{second:?}");
    let left: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!((2..=3).contains(&left), "{second:?}");
    assert_eq!(
        hanging.calls(Op::Claim),
        1,
        "not asked while known to be down"
    );
    // A store that refuses at once is not taken as down: ask again at once.
    let down: Store = Arc::new(down_store());
    let app = serve(
        &down,
        IdempotencyLayer::new(down.clone()).store_down_for(Duration::from_secs(3)),
    )
    .await;
    let refused = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
}

/// The same with the layer's defaults: a store call is given 250 ms, and a store that did not
/// answer is not asked again for 1 s.
#[tokio::test]
async fn a_hanging_store_is_given_the_default_250_ms_then_left_alone_for_1_s() {
    let hanging = Arc::new(hanging_store());
    let store: Store = hanging.clone();
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let claims = || hanging.calls(Op::Claim);

    let started = tokio::time::Instant::now();
    let first = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    let took = started.elapsed();
    assert_eq!(first.status, 503, "{first:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert_eq!(claims(), 1);
    let down_since = tokio::time::Instant::now();
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        503
    );
    assert_eq!(claims(), 1, "not asked while known to be down");
    // Still within the second: not asked.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if down_since.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            post(&app.url("/orders"), Some(&fresh_key()), "x")
                .await
                .status,
            503
        );
        assert_eq!(claims(), 1, "not asked within the second");
    }
    tokio::time::sleep_until(down_since + Duration::from_millis(1100)).await;
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        503
    );
    assert_eq!(claims(), 2, "asked again once the second passed");
    assert_eq!(count(&app.runs.orders), 0);
}

#[tokio::test]
async fn a_store_lost_while_the_handler_runs_keeps_the_result_and_writes_it_when_back() {
    let _serial = PENDING.lock().await;
    let switch = Arc::new(Faulty::default());
    let store: Store = switch.clone();
    let layer = IdempotencyLayer::new(store.clone());
    let app = serve(&store, layer.clone()).await;
    let key = fresh_key();
    let url = app.url("/gated");
    let first = tokio::spawn({
        let (url, key) = (url.clone(), key.clone());
        async move { post(&url, Some(&key), "x").await }
    });
    server_support::wait_until(|| count(&app.runs.gated) == 1).await;
    switch.down.store(true, std::sync::atomic::Ordering::SeqCst);
    app.gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (201, "gated 1"));

    // The store is still down: this instance answers the repeat from the result it kept.
    let kept = post(&url, Some(&key), "x").await;
    assert_eq!(
        (kept.status, kept.replayed(), kept.body.as_str()),
        (201, true, "gated 1")
    );
    assert_eq!(post(&url, Some(&key), "y").await.status, 422);
    // A drain waits for the answer the store has not taken yet (a deploy would lose it).
    let drained = tokio::spawn(layer.drained());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!drained.is_finished(), "drained with an answer not written");

    // Back: the result is written, and the store itself replays it.
    switch
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("drained once the answer is written")
        .unwrap();
    let store_key =
        resilience_runtime::server::record_key(&reqwest::Method::POST, "/gated", &key, None);
    for _ in 0..200 {
        if matches!(
            switch.inner.get(&store_key).await,
            Ok(Some(Record::Completed(_)))
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Ok(Some(Record::Completed(stored))) = switch.inner.get(&store_key).await else {
        panic!("the response was not written once the store came back");
    };
    assert_eq!(stored.body, "gated 1");
    let later = post(&url, Some(&key), "x").await;
    assert_eq!(
        (later.status, later.replayed(), later.body.as_str()),
        (201, true, "gated 1")
    );
    assert_eq!(count(&app.runs.gated), 1, "never run twice");
}

/// A Prometheus recorder, to be installed for one test's thread.
#[cfg(feature = "metrics")]
fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_recommended_naming(true)
        .build_recorder()
}

/// The requests the layer answered with `outcome`, summed over routes; `on` narrows to the
/// samples holding every label fragment given.
#[cfg(feature = "metrics")]
fn answered_on(
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    outcome: &str,
    on: &[&str],
) -> f64 {
    handle
        .render()
        .lines()
        .filter(|l| l.starts_with("resilience_idempotency_requests_total{"))
        .filter(|l| l.contains(&format!(r#"outcome="{outcome}""#)))
        .filter(|l| on.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// With the `metrics` feature, every answer of the layer reaches the service's recorder, and
/// the responses kept in memory while the store is down are a gauge.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn every_answer_is_counted_by_outcome() {
    let _serial = PENDING.lock().await;
    use server_support::{client, send};
    use std::sync::atomic::Ordering::SeqCst;

    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let value = |name: &str, labels: &str| {
        let text = handle.render();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{labels} ")))?;
        line.rsplit(' ').next()?.parse::<f64>().ok()
    };
    let answered_on = |outcome: &str, on: &[&str]| answered_on(&handle, outcome, on);
    let answered = |outcome: &str| answered_on(outcome, &[]);
    let pending = || value("resilience_idempotency_pending", "");

    let switch = Arc::new(Faulty::default());
    let store: Store = switch.clone();
    let layer = IdempotencyLayer::new(store.clone())
        .max_body(64)
        .max_stored_body(32)
        .handler_limit(Duration::from_secs(1));
    let app = serve(&store, layer).await;
    let at = |path: &str| app.url(path);
    let status = |reply: server_support::Reply| reply.status;

    assert_eq!(status(post(&at("/orders"), Some("k1"), "a").await), 201);
    assert_eq!(status(post(&at("/orders"), Some("k1"), "a").await), 201);
    assert_eq!(status(post(&at("/orders"), Some("k1"), "b").await), 422);
    assert_eq!(status(post(&at("/orders"), None, "a").await), 201);
    assert_eq!(status(post(&at("/orders"), Some("a b"), "a").await), 400);
    assert_eq!(status(post(&at("/required"), None, "a").await), 400);
    let long = "x".repeat(100);
    assert_eq!(status(post(&at("/orders"), Some("k2"), &long).await), 413);
    assert_eq!(status(post(&at("/flaky"), Some("k3"), "a").await), 500);
    assert_eq!(status(post(&at("/panicky"), Some("k4"), "a").await), 500);
    let slow = client()
        .post(at("/slow"))
        .header("idempotency-key", "k5")
        .header("x-sleep-ms", "30000")
        .body("a");
    assert_eq!(status(send(slow).await), 500);
    assert_eq!(
        status(post(&at("/orders"), Some("k6"), &long[..40]).await),
        201
    );
    let cut = client()
        .post(at("/streamed"))
        .header("idempotency-key", "k7")
        .body("a");
    let _ = cut.send().await; // 201, its body cut short
    let gated = tokio::spawn({
        let url = at("/gated");
        async move { post(&url, Some("k8"), "a").await }
    });
    server_support::wait_until(|| count(&app.runs.gated) == 1).await;
    assert_eq!(status(post(&at("/gated"), Some("k8"), "a").await), 409);
    app.gate.add_permits(1);
    assert_eq!(gated.await.unwrap().status, 201);

    // The store goes away: a new key is refused; a handler already running keeps its answer
    // in memory until the store is back.
    let running = tokio::spawn({
        let url = at("/gated");
        async move { post(&url, Some("k9"), "a").await }
    });
    server_support::wait_until(|| count(&app.runs.gated) == 2).await;
    switch.down.store(true, SeqCst);
    assert_eq!(status(post(&at("/orders"), Some("k10"), "a").await), 503);
    app.gate.add_permits(1);
    assert_eq!(running.await.unwrap().status, 201);
    assert_eq!(pending(), Some(1.0));
    assert_eq!(status(post(&at("/gated"), Some("k9"), "a").await), 201);
    switch.down.store(false, SeqCst);
    for _ in 0..500 {
        if pending() == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pending(), Some(0.0), "written once the store took it");

    for (outcome, n) in [
        ("handled", 3.0),  // k1, k8, k9
        ("replayed", 2.0), // k1, k9 from memory
        ("key_reused", 1.0),
        ("unprotected", 1.0),
        ("key_invalid", 1.0),
        ("key_missing", 1.0),
        ("body_too_large", 1.0),
        ("released", 1.0),
        ("handler_failed", 1.0),
        ("handler_timed_out", 1.0),
        ("response_not_kept", 1.0),
        ("response_failed", 1.0),
        ("in_progress", 1.0),
        ("store_unavailable", 1.0),
    ] {
        assert_eq!(
            answered(outcome),
            n,
            "outcome {outcome}:\n{}",
            handle.render()
        );
    }
    // By route: the router's template, a bounded label.
    assert_eq!(answered_on("handled", &[r#"http_route="/gated""#]), 2.0);
    assert_eq!(answered_on("handled", &[r#"http_route="/orders""#]), 1.0);
    assert_eq!(
        answered_on("key_missing", &[r#"http_route="/required""#]),
        1.0
    );
}

#[tokio::test]
async fn stored_response_bytes_stay_under_the_memory_stores_bound() {
    // Regression: 16 keyed responses of 16 MiB kept 310 MiB for the 24 h TTL. Scaled down:
    // a 64 KiB store, responses of 20 KiB each.
    let memory = Arc::new(MemoryStore::with_limits(100, 64 * 1024));
    let store: Store = memory.clone();
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let body = "x".repeat(20 * 1024);
    let keys: Vec<String> = (0..8).map(|_| fresh_key()).collect();
    for key in &keys {
        assert_eq!(
            post(&app.url("/orders"), Some(key), &body).await.status,
            201
        );
        assert!(memory.bytes() <= 64 * 1024, "{} bytes", memory.bytes());
    }
    assert!(
        memory.bytes() > 40 * 1024,
        "the newest are kept: {}",
        memory.bytes()
    );
    // The newest response is replayed; the oldest went to make room.
    assert!(
        post(&app.url("/orders"), Some(&keys[7]), &body)
            .await
            .replayed()
    );
    let oldest = post(&app.url("/orders"), Some(&keys[0]), &body).await;
    assert!(
        !oldest.replayed(),
        "evicted, so run again: {}",
        oldest.status
    );
}

#[tokio::test]
async fn problem_docs_type_and_link_the_applications_page() {
    let store = store();
    let layer = IdempotencyLayer::new(store.clone())
        .problem_docs("https://docs.example/idempotency")
        .unwrap();
    let app = serve(&store, layer).await;
    let key = fresh_key();
    assert_eq!(post(&app.url("/orders"), Some(&key), "a").await.status, 201);
    let reused = post(&app.url("/orders"), Some(&key), "b").await;
    assert_eq!(reused.status, 422);
    assert_eq!(
        reused.header("link"),
        Some(r#"<https://docs.example/idempotency>; rel="describedby""#)
    );
    assert!(
        reused
            .body
            .contains(r#""type":"https://docs.example/idempotency#key-reused""#),
        "{}",
        reused.body
    );
    let malformed = post(&app.url("/orders"), Some("\"unclosed"), "a").await;
    assert_eq!(malformed.status, 400);
    assert!(
        malformed.body.contains("#key-invalid"),
        "{}",
        malformed.body
    );
}

/// How a store's claim command (and with it its renewals or completions) misbehaves.
#[derive(Clone, Copy)]
enum ClaimingHow {
    /// The claim is written at once but answered late (a store slow to reply).
    SlowToAnswer,
    /// The claim command is sent twice, the first reply lost (what a Redis Cluster client
    /// does when it retries a command): the second finds the claim the first made.
    Retried,
    /// The first claim command is carried out 400 ms after it was sent, past the layer's store
    /// timeout (a Redis Cluster client sending it again after a failover); later ones at once.
    LandsLate,
    /// Every renewal finds the claim run out, and the claim that puts it back (the second
    /// claim made) is carried out 300 ms after it was sent.
    RunsOutReclaimsLate,
    /// Claims as the memory store does, but renewals are lost: a claim lasts its first lease.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    NoRenewal,
    /// Completions are sent twice, the first reply lost: the second finds the key completed.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    CompleteResent,
    /// The first completion panics (a store of the application's own with a bug); later ones
    /// are the memory store's.
    CompletePanics,
}

/// `min_retention` holds against the byte bound as against the key count: a store whose
/// responses (all too young to evict) leave no room for one more of the size last written
/// refuses a new key with 503 before its handler runs. Admitted, the handler ran and its
/// response, refused by the store, was kept by the layer and written back every second, past
/// the store's bound, one more per request.
#[tokio::test]
async fn a_store_full_of_young_responses_refuses_new_keys_before_running_them() {
    let memory =
        Arc::new(MemoryStore::with_limits(100, 64 * 1024).min_retention(Duration::from_secs(600)));
    let store: Store = memory.clone();
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let body = "x".repeat(20 * 1024);
    for _ in 0..3 {
        let r = post(&app.url("/orders"), Some(&fresh_key()), &body).await;
        assert_eq!(r.status, 201);
    }
    let refused = post(&app.url("/orders"), Some(&fresh_key()), &body).await;
    assert_eq!(refused.status, 503);
    assert_eq!(count(&app.runs.orders), 3, "the fourth was not run");
    // Asked to come back when the oldest response may go (about 600 s), not in a second: a
    // client told 1 s would meet the same refusal every second for ten minutes.
    let after: u64 = refused
        .header("retry-after")
        .expect("a Retry-After")
        .parse()
        .unwrap();
    assert!((590..=600).contains(&after), "Retry-After: {after}");

    // Its responses kept for 60 s only (a TTL under `min_retention`): room comes back when the
    // oldest expires, not after the 600 s the client would give up on at once.
    let memory =
        Arc::new(MemoryStore::with_limits(100, 64 * 1024).min_retention(Duration::from_secs(600)));
    let store: Store = memory.clone();
    let app = serve(
        &store,
        IdempotencyLayer::new(store.clone()).ttl(Duration::from_secs(60)),
    )
    .await;
    for _ in 0..3 {
        let r = post(&app.url("/orders"), Some(&fresh_key()), &body).await;
        assert_eq!(r.status, 201);
    }
    let refused = post(&app.url("/orders"), Some(&fresh_key()), &body).await;
    assert_eq!(refused.status, 503);
    let after: u64 = refused
        .header("retry-after")
        .expect("a Retry-After")
        .parse()
        .unwrap();
    assert!((50..=60).contains(&after), "Retry-After: {after}");
    assert!(memory.bytes() <= 64 * 1024, "{} bytes", memory.bytes());
    assert_eq!(memory.evicted(), 0);
}

/// A first write that timed out, then refused as larger than the store holds once the store
/// answers (a store of one's own whose bound is checked where the data lands): the write-back
/// stores the "processed once, not kept" answer in its place, as a first write refused so
/// does, instead of sending the whole response every second for the TTL with its claim
/// renewed (repeats through another instance meeting 409 for a day).
#[tokio::test(start_paused = true)]
async fn a_response_the_store_refuses_as_too_large_on_its_write_back_is_replaced() {
    use tower_service::Service as _;
    let memory = Arc::new(MemoryStore::with_limits(100, 2048));
    let store = Faulty::over(memory.clone(), |op, n| match (op, n) {
        (Op::Complete, 0) => Act::Hang,
        _ => Act::Pass,
    });
    async fn export() -> (axum::http::StatusCode, String) {
        (axum::http::StatusCode::CREATED, "x".repeat(4096))
    }
    let app = axum::Router::new()
        .route("/orders", axum::routing::post(export))
        .layer(IdempotencyLayer::new(Arc::new(store)));
    let key = fresh_key();
    let request = || {
        axum::http::Request::post("/orders")
            .header("idempotency-key", &key)
            .body(axum::body::Body::from("x"))
            .unwrap()
    };
    let first = app.clone().call(request()).await.unwrap();
    assert_eq!(first.status(), 201);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored_key =
        resilience_runtime::server::record_key(&axum::http::Method::POST, "/orders", &key, None);
    let Some(Record::Completed(kept)) = memory.get(&stored_key).await.unwrap() else {
        panic!("not written back within 2 s");
    };
    assert_eq!(kept.status, 500, "{kept:?}");
    let repeat = app.clone().call(request()).await.unwrap();
    assert_eq!(repeat.status(), 500);
}

/// A memory store whose claim command misbehaves as `how` says; the rest is the memory store's.
fn claiming(how: ClaimingHow) -> Faulty {
    Faulty::new(move |op, n| match (how, op) {
        (ClaimingHow::SlowToAnswer, Op::Claim) => Act::AnswerAfter(Duration::from_millis(200)),
        (ClaimingHow::Retried, Op::Claim) => Act::Resent,
        (ClaimingHow::LandsLate, Op::Claim) if n == 0 => Act::LandAfter(Duration::from_millis(400)),
        (ClaimingHow::RunsOutReclaimsLate, Op::Claim) if n == 1 => {
            Act::LandAfter(Duration::from_millis(300))
        }
        (ClaimingHow::RunsOutReclaimsLate, Op::Renew) => Act::Say(false),
        (ClaimingHow::NoRenewal, Op::Renew) => Act::Say(true),
        (ClaimingHow::CompleteResent, Op::Complete) => Act::Resent,
        (ClaimingHow::CompletePanics, Op::Complete) if n == 0 => Act::Panic,
        _ => Act::Pass,
    })
}

/// `POST /orders` (201, counting its runs) behind the layer over a `Claiming` store, called
/// as a service (no socket: the clock is paused), and its run count.
fn orders_over(how: ClaimingHow) -> (axum::Router, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::extract::State;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = Arc::new(AtomicUsize::new(0));
    async fn orders(State(runs): State<Arc<AtomicUsize>>) -> (axum::http::StatusCode, String) {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        (axum::http::StatusCode::CREATED, format!("order {n}"))
    }
    let app = axum::Router::new()
        .route("/orders", axum::routing::post(orders))
        .with_state(runs.clone())
        .layer(IdempotencyLayer::new(Arc::new(claiming(how))));
    (app, runs)
}

/// `POST path` with `key`.
fn keyed_post(path: &str, key: &str) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::post(path)
        .header("idempotency-key", key)
        .body(axum::body::Body::from("x"))
        .unwrap()
}

/// A request whose future is dropped (its client gave up, and hyper dropped it) while its claim
/// command is on its way: the claim was written, no handler will hold it. It is taken back, so
/// the client's retry runs the handler instead of meeting 409 for the whole lease (10 s).
#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_claiming_leaves_no_claim_behind() {
    use std::sync::atomic::Ordering;
    use tower_service::Service as _;

    let (app, runs) = orders_over(ClaimingHow::SlowToAnswer);
    let key = fresh_key();
    let request = || keyed_post("/orders", &key);
    // Dropped at 50 ms: its claim is written, its answer 150 ms away.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), app.clone().call(request())).await;
    assert!(gave_up.is_err(), "answered before the drop");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let retried = app.clone().call(request()).await.unwrap();
    assert_eq!(retried.status(), 201, "{:?}", retried.headers());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A claim that timed out (503) and was carried out only after the layer's first release found
/// nothing: taken back all the same, so the client's retry runs the handler instead of meeting
/// 409 for the whole lease (10 s).
#[tokio::test(start_paused = true)]
async fn a_claim_carried_out_after_its_withdrawal_is_taken_back() {
    use std::sync::atomic::Ordering;
    use tower_service::Service as _;

    let (app, runs) = orders_over(ClaimingHow::LandsLate);
    let key = fresh_key();
    let request = || keyed_post("/orders", &key);
    let refused = app.clone().call(request()).await.unwrap();
    assert_eq!(refused.status(), 503);
    // Past the store's second of rest after a timeout, and the late claim's landing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let retried = app.clone().call(request()).await.unwrap();
    assert_eq!(retried.status(), 201, "{:?}", retried.headers());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A handler that answers 500 (the key released) while its renewal is putting a run-out claim
/// back: the claim lands after the release, nobody's. Taken back, so the retry runs the
/// handler again instead of meeting 409 for the whole lease.
#[tokio::test(start_paused = true)]
async fn a_claim_put_back_after_its_handler_ended_is_taken_back() {
    use axum::extract::State;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_service::Service as _;

    let runs = Arc::new(AtomicUsize::new(0));
    async fn failing(State(runs): State<Arc<AtomicUsize>>) -> axum::http::StatusCode {
        runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    }
    let app = axum::Router::new()
        .route("/orders", axum::routing::post(failing))
        .with_state(runs.clone())
        .layer(
            IdempotencyLayer::new(Arc::new(claiming(ClaimingHow::RunsOutReclaimsLate)))
                .lease(Duration::from_secs(3)),
        );
    let key = fresh_key();
    let request = || keyed_post("/orders", &key);
    // Renewed at 1 s (the claim found run out, put back: lands at 1.3 s); answered at 1.2 s.
    let failed = app.clone().call(request()).await.unwrap();
    assert_eq!(failed.status(), 500);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let retried = app.clone().call(request()).await.unwrap();
    assert_eq!(retried.status(), 500, "{:?}", retried.headers());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// The claim found is the request's own (same token): it holds the key and runs the handler,
/// instead of answering itself 409 "in progress" and leaving a claim nobody holds for the
/// whole lease.
#[tokio::test]
async fn a_claim_found_by_a_retried_command_is_the_requests_own() {
    let store: Store = Arc::new(claiming(ClaimingHow::Retried));
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let key = fresh_key();
    let first = post(&app.url("/orders"), Some(&key), "x").await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (201, "order 1: x"),
        "{first:?}"
    );
    let again = post(&app.url("/orders"), Some(&key), "x").await;
    assert!(again.replayed(), "{again:?}");
    assert_eq!(count(&app.runs.orders), 1);
}

/// A 10,000-byte export answered 201 through a layer over a memory store bound to `max_bytes`:
/// what the store holds for its key once the first request is answered, and the status of a
/// repeat.
async fn an_export_over_a_store_of(max_bytes: usize) -> (Option<Record>, u16) {
    use resilience_runtime::server::record_key;
    use tower_service::Service as _;

    async fn export() -> (axum::http::StatusCode, String) {
        (axum::http::StatusCode::CREATED, "x".repeat(10_000))
    }
    let store = Arc::new(MemoryStore::with_limits(100, max_bytes));
    let app = axum::Router::new()
        .route("/exports", axum::routing::post(export))
        .layer(IdempotencyLayer::new(store.clone()));
    let key = fresh_key();
    let request = || {
        axum::http::Request::post("/exports")
            .header("idempotency-key", &key)
            .body(axum::body::Body::from("x"))
            .unwrap()
    };
    let first = app.clone().call(request()).await.unwrap();
    assert_eq!(first.status(), 201);
    let stored = store
        .get(&record_key(
            &axum::http::Method::POST,
            "/exports",
            &key,
            None,
        ))
        .await
        .unwrap();
    let again = app.clone().call(request()).await.unwrap();
    (stored, again.status().as_u16())
}

/// A response under the layer's `max_stored_body` but over the memory store's whole bound:
/// the store will never take it, so a "processed once, not kept" answer is stored in its
/// place at once (it was kept waiting in memory for the whole TTL, its claim renewed, another
/// instance meeting 409 all that time).
#[tokio::test]
async fn a_response_larger_than_the_store_holds_is_replaced_at_once() {
    match an_export_over_a_store_of(4096).await {
        (Some(Record::Completed(r)), 500) => {
            assert_eq!(r.status, 500, "{r:?}");
            assert!(!r.body.is_empty(), "the problem's text: {r:?}");
        }
        other => panic!("not completed: {other:?}"),
    }
}

/// A store bound so small that even the "processed once, not kept" answer is over it: a bare
/// 500 (no body, no headers) goes in its place, so a repeat is answered, not met with 409 for
/// the whole TTL while the response waits in memory for a store that will never take it.
#[tokio::test]
async fn a_store_too_small_for_the_not_kept_answer_gets_a_bare_one() {
    match an_export_over_a_store_of(200).await {
        (Some(Record::Completed(r)), 500) => {
            assert_eq!(r.status, 500, "{r:?}");
            assert!(r.body.is_empty(), "{r:?}");
        }
        other => panic!("not completed: {other:?}"),
    }
}

/// A slow handler (`POST /slow`: counts its run, works for `work`, answers 201 "run N"), for
/// the tests that put two instances of one service over one store, calling them as tower
/// services on a paused clock.
#[derive(Clone)]
struct Slow {
    runs: Arc<std::sync::atomic::AtomicUsize>,
    work: Duration,
}

impl Slow {
    fn new(work: Duration) -> Slow {
        Slow {
            runs: Arc::default(),
            work,
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// One instance of the service, behind `layer`.
    fn instance(&self, layer: IdempotencyLayer) -> axum::Router {
        async fn handle(
            axum::extract::State(s): axum::extract::State<Slow>,
        ) -> (axum::http::StatusCode, String) {
            let n = s.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            tokio::time::sleep(s.work).await;
            (axum::http::StatusCode::CREATED, format!("run {n}"))
        }
        axum::Router::new()
            .route("/slow", axum::routing::post(handle))
            .with_state(self.clone())
            .layer(layer)
    }

    /// `POST /slow` with `key`.
    fn request(key: &str) -> axum::http::Request<axum::body::Body> {
        axum::http::Request::post("/slow")
            .header("idempotency-key", key)
            .body(axum::body::Body::from("x"))
            .unwrap()
    }
}

/// A handler that outlives its claim (renewals lost, the lease run out) while a repeat takes
/// the key and runs it again: the first answer is not kept, and it is counted `claim_lost`,
/// not `handled`: the one sign that the handler ran twice. The same when the first answer is
/// too large to keep (`max_stored_body`): its "not kept" problem is not stored either, and it
/// is counted `claim_lost`, not `response_not_kept`.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn a_handler_whose_claim_was_taken_is_counted_claim_lost() {
    use tower_service::Service as _;

    for (max_stored_body, kept_as) in [(1 << 20, "handled"), (4, "response_not_kept")] {
        let recorder = recorder();
        let handle = recorder.handle();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let answered = |outcome: &str| answered_on(&handle, outcome, &[]);
        let slow = Slow::new(Duration::from_millis(300));
        // Two instances of the service over one store: the repeat reaches the other one (this
        // instance itself answers a repeat 409 while its handler runs).
        let store: Store = Arc::new(claiming(ClaimingHow::NoRenewal));
        let instance = || {
            slow.instance(
                IdempotencyLayer::new(store.clone())
                    .lease(Duration::from_millis(100))
                    .max_stored_body(max_stored_body),
            )
        };
        let (app, other) = (instance(), instance());
        let key = fresh_key();
        let request = || Slow::request(&key);
        let first = tokio::spawn(app.clone().call(request()));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let second = other.clone().call(request()).await.unwrap();
        let first = first.await.unwrap().unwrap();
        assert_eq!(
            (first.status().as_u16(), second.status().as_u16()),
            (201, 201)
        );
        assert_eq!(slow.runs(), 2, "the lease ran out: run twice");
        assert_eq!(
            answered("claim_lost"),
            1.0,
            "{kept_as}: {}",
            handle.render()
        );
        assert_eq!(
            answered(kept_as),
            1.0,
            "the second run's answer: {}",
            handle.render()
        );
    }
}

/// A claim that runs out while its handler runs (its store unreachable for longer than the
/// lease, as in a Redis failover): the instance running the handler answers repeats 409 all
/// along, and once the store is back the claim is put back, so a repeat through another
/// instance meets it too. The handler runs once.
#[tokio::test(start_paused = true)]
async fn a_claim_run_out_while_the_store_was_unreachable_is_held_and_put_back() {
    use std::sync::atomic::Ordering;
    use tower_service::Service as _;

    let slow = Slow::new(Duration::from_secs(1));
    let switch = Arc::new(Faulty::default());
    let store: Store = switch.clone();
    let instance =
        || slow.instance(IdempotencyLayer::new(store.clone()).lease(Duration::from_millis(100)));
    let (app, other) = (instance(), instance());
    let key = fresh_key();
    let request = || Slow::request(&key);
    let first = tokio::spawn(app.clone().call(request()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Unreachable for 300 ms: the 100 ms lease runs out, renewals fail.
    switch.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = app.clone().call(request()).await.unwrap();
    assert_eq!(during.status().as_u16(), 409, "this instance knows it runs");
    switch.down.store(false, Ordering::SeqCst);
    // The next renewal finds the claim gone and claims it again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let elsewhere = other.clone().call(request()).await.unwrap();
    assert_eq!(
        elsewhere.status().as_u16(),
        409,
        "the claim is back in the store"
    );
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status().as_u16(), 201);
    assert_eq!(slow.runs(), 1, "run once");
    // And the answer is kept: a repeat anywhere gets it.
    let later = other.clone().call(request()).await.unwrap();
    assert_eq!(later.status().as_u16(), 201);
    assert_eq!(slow.runs(), 1);
}

/// Only one instance loses the store (its own connection, a network rule) while its handler
/// runs and the other instances still reach it: the claim runs out with its lease, a repeat
/// through another instance runs the handler again (the window the README names). The first
/// instance answers from the response it kept; once it reaches the store again and finds the
/// key taken, it counts `claim_lost`, the one sign the handler ran twice, and from then on
/// answers what the store holds, as every instance does.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn one_instance_losing_the_store_is_counted_claim_lost_when_it_finds_the_key_taken() {
    let _serial = PENDING.lock().await;
    use std::sync::atomic::Ordering;
    use tower_service::Service as _;

    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let answered = |outcome: &str| answered_on(&handle, outcome, &[]);
    let slow = Slow::new(Duration::from_secs(1));
    let shared = Arc::new(MemoryStore::default());
    let connection = || Arc::new(Faulty::over(shared.clone(), |_, _| Act::Pass));
    let (mine, theirs) = (connection(), connection());
    let instance = |store: &Arc<Faulty>| {
        let store: Store = store.clone();
        slow.instance(IdempotencyLayer::new(store).lease(Duration::from_millis(100)))
    };
    let (app, other) = (instance(&mine), instance(&theirs));
    let key = fresh_key();
    let request = || Slow::request(&key);
    let body = |res: axum::http::Response<axum::body::Body>| async move {
        let status = res.status().as_u16();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    };

    let first = tokio::spawn(app.clone().call(request()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    mine.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Its lease ran out: the other instance, which reaches the store, runs the handler again.
    let second = tokio::spawn(other.clone().call(request()));
    let first = body(first.await.unwrap().unwrap()).await;
    assert_eq!(first, (201, "run 1".to_owned()));
    assert_eq!(
        body(app.clone().call(request()).await.unwrap()).await,
        (201, "run 1".to_owned()),
        "the first instance answers from what it kept while it cannot reach the store"
    );
    let second = body(second.await.unwrap().unwrap()).await;
    assert_eq!(second, (201, "run 2".to_owned()));
    assert_eq!(slow.runs(), 2, "the window: run twice");
    assert_eq!(answered("claim_lost"), 0.0, "not known yet");

    mine.down.store(false, Ordering::SeqCst);
    for _ in 0..100 {
        if answered("claim_lost") > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered("claim_lost"), 1.0, "{}", handle.render());
    assert_eq!(answered("handled"), 1.0, "the second run's answer only");
    assert_eq!(
        body(app.clone().call(request()).await.unwrap()).await,
        (201, "run 2".to_owned()),
        "back on the store, the first instance answers what it holds"
    );
}

/// A store client that sends a completion again after its reply was lost (a Redis Cluster
/// client does) finds the key completed by its own first command: that is the request's own
/// answer stored, counted `handled`, not `claim_lost`.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn a_completion_found_by_a_resent_command_is_the_requests_own() {
    use tower_service::Service as _;

    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (app, runs) = orders_over(ClaimingHow::CompleteResent);
    let key = fresh_key();
    let first = app.clone().call(keyed_post("/orders", &key)).await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let again = app.clone().call(keyed_post("/orders", &key)).await.unwrap();
    assert_eq!(again.status().as_u16(), 201);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        answered_on(&handle, "claim_lost", &[]),
        0.0,
        "{}",
        handle.render()
    );
    assert_eq!(
        answered_on(&handle, "handled", &[]),
        1.0,
        "{}",
        handle.render()
    );
    assert_eq!(
        answered_on(&handle, "replayed", &[]),
        1.0,
        "{}",
        handle.render()
    );
}

/// A body that yields a first chunk, then waits for the gate before its last one (a long
/// export whose reader must keep up).
struct Export {
    first: Option<bytes::Bytes>,
    gate: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    last: Option<bytes::Bytes>,
}

impl http_body::Body for Export {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(first))));
        }
        if self.last.is_none() {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.gate.as_mut().poll(cx));
        std::task::Poll::Ready(self.last.take().map(|d| Ok(http_body::Frame::data(d))))
    }
}

/// A keyed response larger than the layer keeps is streamed on to its caller past that bound,
/// not held whole until its end (a stream that waits for its reader would never end): the
/// caller reads its first chunk before the handler sends the rest. A repeat gets the stored
/// "processed once, not kept" 500.
#[tokio::test]
async fn a_response_past_the_kept_bound_streams_on_to_its_caller() {
    use axum::extract::State;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone)]
    struct S {
        runs: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Notify>,
    }
    async fn export(State(s): State<S>) -> (axum::http::StatusCode, axum::body::Body) {
        s.runs.fetch_add(1, Ordering::SeqCst);
        let gate = s.gate.clone();
        let body = Export {
            first: Some(bytes::Bytes::from(vec![b'a'; 64 * 1024])),
            gate: Box::pin(async move { gate.notified().await }),
            last: Some(bytes::Bytes::from_static(b"end")),
        };
        (axum::http::StatusCode::CREATED, axum::body::Body::new(body))
    }
    let s = S {
        runs: Arc::new(AtomicUsize::new(0)),
        gate: Arc::new(tokio::sync::Notify::new()),
    };
    let app = axum::Router::new()
        .route("/exports", axum::routing::post(export))
        .with_state(s.clone())
        .layer(
            IdempotencyLayer::new(store())
                .max_stored_body(16)
                .handler_limit(Duration::from_secs(10)),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/exports", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let key = fresh_key();
    let mut resp = tokio::time::timeout(
        Duration::from_secs(3),
        client
            .post(&url)
            .header("idempotency-key", &key)
            .body("x")
            .send(),
    )
    .await
    .expect("the head came before the body's end")
    .unwrap();
    assert_eq!(resp.status(), 201);
    let mut got = tokio::time::timeout(Duration::from_secs(3), resp.chunk())
        .await
        .expect("the first chunk came before the body's end")
        .unwrap()
        .unwrap()
        .len();
    s.gate.notify_one();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got += chunk.len();
    }
    assert_eq!(got, 64 * 1024 + 3);
    let again = post(&url, Some(&key), "x").await;
    assert_eq!((again.status, again.replayed()), (500, true), "{again:?}");
    assert!(again.body.contains("processed once"), "{}", again.body);
    assert_eq!(s.runs.load(Ordering::SeqCst), 1);
}

/// The shipped defaults, as the README states them, each by what it does: a claim nobody
/// renews lasts 10 s; a handler is cut at 60 s; an answer is replayed for 24 h; a request body
/// of 2 MiB is fingerprinted and one byte more refused; an answer of 1 MiB is kept and one byte
/// more replaced by a "not kept" problem; `MemoryStore` keeps 10,000 keys.
#[tokio::test(start_paused = true)]
async fn the_shipped_defaults_are_the_ones_the_readme_states() {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::{Instant, sleep};
    use tower_service::Service as _;

    // `POST /sized`: answers `x-len` bytes after `x-work-ms`, counting its runs.
    let runs = Arc::new(AtomicUsize::new(0));
    let app = |store: Store| {
        let runs = runs.clone();
        axum::Router::new()
            .route(
                "/sized",
                axum::routing::post(move |headers: axum::http::HeaderMap| {
                    let runs = runs.clone();
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let number = |name: &str| -> u64 {
                            headers
                                .get(name)
                                .and_then(|v| v.to_str().ok()?.parse().ok())
                                .unwrap_or(0)
                        };
                        sleep(Duration::from_millis(number("x-work-ms"))).await;
                        (
                            axum::http::StatusCode::CREATED,
                            vec![b'x'; number("x-len") as usize],
                        )
                    }
                }),
            )
            .layer(IdempotencyLayer::new(store))
    };
    let runs = || runs.load(Ordering::SeqCst);
    let request = |key: &str, body: usize, len: usize, work_ms: u64| {
        Request::post("/sized")
            .header("idempotency-key", key)
            .header("x-len", len.to_string())
            .header("x-work-ms", work_ms.to_string())
            .body(Body::from(vec![b'a'; body]))
            .unwrap()
    };
    let call = |mut svc: axum::Router, req: Request<Body>| async move {
        let res = svc.call(req).await.unwrap();
        let status = res.status().as_u16();
        let body = to_bytes(res.into_body(), 4 << 20).await.unwrap();
        (status, body)
    };
    const MIB: usize = 1 << 20;

    // Replayed for 24 h, not a second more.
    let one = app(Arc::new(MemoryStore::default()));
    let key = fresh_key();
    assert_eq!(call(one.clone(), request(&key, 1, 3, 0)).await.0, 201);
    sleep(Duration::from_secs(24 * 3600 - 1)).await;
    assert_eq!(call(one.clone(), request(&key, 1, 3, 0)).await.0, 201);
    assert_eq!(runs(), 1, "replayed within the TTL");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(call(one.clone(), request(&key, 1, 3, 0)).await.0, 201);
    assert_eq!(runs(), 2, "run again past the TTL");

    // A request body of 2 MiB is taken, one byte more refused.
    assert_eq!(
        call(one.clone(), request(&fresh_key(), 2 * MIB, 0, 0))
            .await
            .0,
        201
    );
    assert_eq!(
        call(one.clone(), request(&fresh_key(), 2 * MIB + 1, 0, 0))
            .await
            .0,
        413
    );

    // An answer of 1 MiB is kept; one byte more reaches its caller, and a problem is kept.
    for (len, replayed) in [(MIB, 201), (MIB + 1, 500)] {
        let key = fresh_key();
        let (status, body) = call(one.clone(), request(&key, 1, len, 0)).await;
        assert_eq!((status, body.len()), (201, len));
        assert_eq!(
            call(one.clone(), request(&key, 1, len, 0)).await.0,
            replayed,
            "{len}"
        );
    }

    // A handler is cut at 60 s.
    let started = Instant::now();
    let (status, _) = call(one.clone(), request(&fresh_key(), 1, 0, 61_000)).await;
    assert_eq!((status, started.elapsed()), (500, Duration::from_secs(60)));

    // A claim nobody renews lasts 10 s: seen from a second instance over the same store.
    let shared: Store = Arc::new(claiming(ClaimingHow::NoRenewal));
    let (first, second) = (app(shared.clone()), app(shared.clone()));
    let key = fresh_key();
    let before = runs();
    let running = tokio::spawn(call(first, request(&key, 1, 0, 30_000)));
    sleep(Duration::from_millis(9_900)).await;
    assert_eq!(call(second.clone(), request(&key, 1, 0, 0)).await.0, 409);
    sleep(Duration::from_millis(200)).await;
    assert_eq!(call(second.clone(), request(&key, 1, 0, 0)).await.0, 201);
    assert_eq!(runs() - before, 2, "the lease ran out at 10 s");
    running.abort();

    // `MemoryStore` keeps 10,000 keys: the first of 10,001 is evicted and runs again.
    let store: Store = Arc::new(MemoryStore::default());
    let many = app(store);
    let keys: Vec<String> = (0..10_001).map(|_| fresh_key()).collect();
    for key in &keys {
        assert_eq!(call(many.clone(), request(key, 1, 0, 0)).await.0, 201);
    }
    let before = runs();
    assert_eq!(call(many.clone(), request(&keys[1], 1, 0, 0)).await.0, 201);
    assert_eq!(runs(), before, "the second key is still kept");
    assert_eq!(call(many.clone(), request(&keys[0], 1, 0, 0)).await.0, 201);
    assert_eq!(runs(), before + 1, "the first was evicted");
}

/// `store_timeout` bounds the store calls after the handler too: a completion or a release the
/// store never answers holds the caller's answer 250 ms (the default), no longer. The kept
/// answer is replayed from memory; the released key's repeat is told "in progress" while the
/// claim the store still holds lasts its lease.
#[tokio::test(start_paused = true)]
async fn a_store_frozen_after_the_claim_holds_the_answer_only_the_store_timeout() {
    let _serial = PENDING.lock().await;
    use axum::body::Body;
    use axum::http::Request;
    use tokio::time::Instant;
    use tower_service::Service as _;

    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = {
        let runs = runs.clone();
        axum::Router::new()
            .route(
                "/charges",
                axum::routing::post(move |body: String| {
                    let runs = runs.clone();
                    async move {
                        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        match body.as_str() {
                            "fail" => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy"),
                            _ => (axum::http::StatusCode::CREATED, "charged"),
                        }
                    }
                }),
            )
            .layer(IdempotencyLayer::new(Arc::new(Faulty::new(
                |op, _| match op {
                    Op::Complete | Op::Release => Act::Hang,
                    _ => Act::Pass,
                },
            ))))
    };
    let call = |key: &str, body: &'static str| {
        let mut app = app.clone();
        let req = Request::post("/charges")
            .header("idempotency-key", key)
            .body(Body::from(body))
            .unwrap();
        async move {
            let started = Instant::now();
            let res = tokio::time::timeout(Duration::from_secs(5), app.call(req))
                .await
                .expect("answered")
                .unwrap();
            (res.status().as_u16(), started.elapsed())
        }
    };
    let store_timeout = IdempotencyLayer::DEFAULT_STORE_TIMEOUT;

    // Kept: the completion is given 250 ms, then the answer goes out, kept in memory.
    let key = fresh_key();
    assert_eq!(call(&key, "ok").await, (201, store_timeout));
    assert_eq!(call(&key, "ok").await, (201, Duration::ZERO), "from memory");

    // Not kept (a 503): the release is given 250 ms, then the answer goes out.
    let key = fresh_key();
    assert_eq!(call(&key, "fail").await, (503, store_timeout));
    assert_eq!(
        call(&key, "fail").await.0,
        409,
        "the claim the store still holds"
    );
    tokio::time::sleep(IdempotencyLayer::DEFAULT_LEASE).await;
    assert_eq!(
        call(&key, "fail").await.0,
        503,
        "run again once its lease ran out"
    );
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// The completion went through but its reply was lost: the answer is kept and written back;
/// the write-back finds the key completed, and its reads of the key get no answer at first.
/// It asks again until one does, and finds its own completion: counted `handled`, never
/// `claim_lost` (the handler ran once).
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn a_write_back_whose_reads_go_unanswered_asks_again_before_counting() {
    use tower_service::Service as _;

    let _serial = PENDING.lock().await;
    let recorder = recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let store = Arc::new(Faulty::new(|op, n| match op {
        Op::Complete if n == 0 => Act::LoseReply,
        Op::Get if n < 3 => Act::Fail,
        _ => Act::Pass,
    }));
    let slow = Slow::new(Duration::from_millis(10));
    let app = slow.instance(IdempotencyLayer::new(store.clone() as Store));
    let key = fresh_key();
    let first = app.clone().call(Slow::request(&key)).await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    for _ in 0..100 {
        if answered_on(&handle, "handled", &[]) + answered_on(&handle, "claim_lost", &[]) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answered_on(&handle, "claim_lost", &[]),
        0.0,
        "{}",
        handle.render()
    );
    assert_eq!(
        answered_on(&handle, "handled", &[]),
        1.0,
        "{}",
        handle.render()
    );
    assert!(store.calls(Op::Get) > 3);
    assert_eq!(slow.runs(), 1);
}

/// A service of the service's own, no router: answers 201 with a body and a trailer, and
/// counts its runs.
#[derive(Clone, Default)]
struct Plain {
    runs: Arc<std::sync::atomic::AtomicUsize>,
}

/// One data frame, then one trailer.
struct WithTrailer {
    data: Option<bytes::Bytes>,
    trailer: Option<axum::http::HeaderMap>,
}

impl http_body::Body for WithTrailer {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(d) => Some(http_body::Frame::data(d)),
            None => self.trailer.take().map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

impl tower_service::Service<axum::http::Request<axum::body::Body>> for Plain {
    type Response = axum::http::Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: axum::http::Request<axum::body::Body>) -> Self::Future {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut trailer = axum::http::HeaderMap::new();
        trailer.insert("x-checksum", axum::http::HeaderValue::from_static("abc"));
        let body = WithTrailer {
            data: Some(bytes::Bytes::from(format!("charge {n}"))),
            trailer: Some(trailer),
        };
        std::future::ready(Ok(axum::http::Response::builder()
            .status(201)
            .body(axum::body::Body::new(body))
            .unwrap()))
    }
}

/// What `axum::serve` needs of a service: its answers' bodies as axum's.
#[derive(Clone)]
struct Served<S>(S);

impl<S, B> tower_service::Service<axum::http::Request<axum::body::Body>> for Served<S>
where
    S: tower_service::Service<
            axum::http::Request<axum::body::Body>,
            Response = axum::http::Response<B>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = axum::http::Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<axum::body::Body>) -> Self::Future {
        let answer = self.0.call(req);
        Box::pin(async move { Ok(answer.await?.map(axum::body::Body::new)) })
    }
}

/// "`IdempotencyLayer` does that for any tower service": a plain service, no router, served
/// through a real socket: the handler runs once, the repeat is its replay; and the layer's
/// count of it has an empty `http_route` (there is no router's template).
#[tokio::test]
async fn a_plain_tower_service_is_covered_as_a_router_is() {
    use tower_layer::Layer as _;
    #[cfg(feature = "metrics")]
    let recorder = recorder();
    #[cfg(feature = "metrics")]
    let _guard = metrics::set_default_local_recorder(&recorder);
    let plain = Plain::default();
    let service = IdempotencyLayer::new(store()).layer(plain.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/charges", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            axum::ServiceExt::<axum::http::Request<axum::body::Body>>::into_make_service(Served(
                service,
            )),
        )
        .await
    });
    let key = fresh_key();
    let first = post(&url, Some(&key), "9.99").await;
    assert_eq!(
        (first.status, first.replayed(), first.body.as_str()),
        (201, false, "charge 1")
    );
    let again = post(&url, Some(&key), "9.99").await;
    assert_eq!(
        (again.status, again.replayed(), again.body.as_str()),
        (201, true, "charge 1")
    );
    assert_eq!(plain.runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    #[cfg(feature = "metrics")]
    {
        let handle = recorder.handle();
        assert_eq!(answered_on(&handle, "handled", &[r#"http_route="""#]), 1.0);
        assert_eq!(answered_on(&handle, "replayed", &[r#"http_route="""#]), 1.0);
    }
}

/// "HTTP trailers are dropped from every answer the layer keeps, and from its replays": the
/// same service called through the layer, its answers' frames read to their end.
#[tokio::test]
async fn trailers_are_dropped_from_a_kept_answer_and_its_replay() {
    use http_body_util::BodyExt as _;
    use tower_layer::Layer as _;
    use tower_service::Service as _;
    let plain = Plain::default();
    let mut service = IdempotencyLayer::new(store()).layer(plain.clone());
    let key = fresh_key();
    let request = || {
        axum::http::Request::post("/charges")
            .header("idempotency-key", key.as_str())
            .body(axum::body::Body::from("9.99"))
            .unwrap()
    };
    // The service alone sends its trailer.
    let alone = plain.clone().call(request()).await.unwrap();
    let collected = alone.into_body().collect().await.unwrap();
    assert!(
        collected.trailers().is_some(),
        "the control: a trailer is sent"
    );
    for (which, replayed) in [("kept", false), ("replay", true)] {
        let res = service.call(request()).await.unwrap();
        assert_eq!(
            res.headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true"),
            replayed,
            "{which}"
        );
        let collected = res.into_body().collect().await.unwrap();
        assert!(
            collected.trailers().is_none(),
            "{which}: {:?}",
            collected.trailers()
        );
        assert_eq!(collected.to_bytes(), "charge 2", "{which}");
    }
}

/// One chunk, then an error (a cursor lost mid-stream).
struct CutAfterOne(bool);

impl http_body::Body for CutAfterOne {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let sent = std::mem::replace(&mut self.0, true);
        std::task::Poll::Ready(Some(if sent {
            Err(std::io::Error::other("cursor lost"))
        } else {
            Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"receipt: ",
            )))
        }))
    }
}

/// "The body reaches the first caller as it is, cut short": a body that fails after its first
/// chunk, under a kept status, gives the caller that chunk, then the error, as it would
/// without the layer (read here frame by frame, from the service: over a socket, whether the
/// chunk is written before the connection is torn down is the server's own matter). The retry
/// gets the stored "processed once".
#[tokio::test]
async fn a_body_failing_after_a_kept_status_gives_its_caller_what_it_read() {
    use http_body_util::BodyExt as _;
    use tower_layer::Layer as _;
    use tower_service::Service as _;
    async fn receipt() -> (axum::http::StatusCode, axum::body::Body) {
        (
            axum::http::StatusCode::CREATED,
            axum::body::Body::new(CutAfterOne(false)),
        )
    }
    let router = axum::Router::new().route("/receipts", axum::routing::post(receipt));
    let mut service = IdempotencyLayer::new(store()).layer(router);
    let key = fresh_key();
    let request = || {
        axum::http::Request::post("/receipts")
            .header("idempotency-key", key.as_str())
            .body(axum::body::Body::from("x"))
            .unwrap()
    };
    let first = service.call(request()).await.unwrap();
    assert_eq!(first.status(), 201);
    let mut body = first.into_body();
    let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(chunk, "receipt: ");
    let cut = body.frame().await.unwrap();
    assert!(cut.is_err(), "then the cut");
    let again = service.call(request()).await.unwrap();
    assert_eq!(again.status(), 500);
    let text = again.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("processed once"),
        "{text:?}"
    );
}

/// A store that refuses every claim at once (its connection refused): each refused request's
/// claim is taken back in case its command ran, but not without bound: at most 64 such
/// withdrawals run at once in a layer, each trying every few seconds for half a minute, so
/// 300 refused requests do not send the down store ten thousand releases.
#[tokio::test(start_paused = true)]
async fn the_releases_sent_to_a_store_that_refuses_everything_are_bounded() {
    use tower_service::Service as _;
    let down = Arc::new(down_store());
    let store: Store = down.clone();
    let app = axum::Router::new()
        .route("/orders", axum::routing::post(|| async { "done" }))
        .layer(IdempotencyLayer::new(store));
    for _ in 0..300 {
        let refused = app
            .clone()
            .call(keyed_post("/orders", &fresh_key()))
            .await
            .unwrap();
        assert_eq!(refused.status(), 503);
    }
    assert_eq!(down.calls(Op::Claim), 300);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let releases = down.calls(Op::Release);
    // 64 at a time, about 17 each over their half minute (every second at most for the first
    // two, while a late claim may land, then every 4 s): 300 × 35 before.
    assert!(releases <= 64 * 18, "{releases} releases");
    assert!(releases >= 64, "each withdrawal ran: {releases}");
    // And once they ended, a later refusal is taken back again.
    let refused = app
        .clone()
        .call(keyed_post("/orders", &fresh_key()))
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(down.calls(Op::Release) > releases, "withdrawn again");
}

/// What this thread logs, at debug level and up, while the guard is held.
#[derive(Clone, Default)]
struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);

impl Buf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> (Buf, tracing::subscriber::DefaultGuard) {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

/// A renewal due while the handler's answer is being written (a store slow to answer the
/// completion it already carried out) finds the record completed by this very claim: the
/// handler is done, nothing was lost, and no "claim lost" warning says otherwise.
#[tokio::test(start_paused = true)]
async fn a_renewal_meeting_its_own_completed_record_warns_of_nothing() {
    use tower_service::Service as _;

    let (buf, _guard) = logs();
    let slow = Slow::new(Duration::from_millis(10));
    let store: Store = Arc::new(Faulty::new(|op, _| match op {
        Op::Complete => Act::AnswerAfter(Duration::from_millis(100)),
        _ => Act::Pass,
    }));
    let app = slow.instance(IdempotencyLayer::new(store.clone()).lease(Duration::from_millis(60)));
    let key = fresh_key();
    let first = app.clone().call(Slow::request(&key)).await.unwrap();
    assert_eq!(first.status(), 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = buf.text();
    assert!(!text.contains("claim lost"), "{text}");
    assert!(!text.contains("WARN"), "{text}");
    assert_eq!(slow.runs(), 1);
}

/// Renewals failing through a long outage (10 s, the lease 3 s) are tried again 100 ms after
/// the first failure, then less often, doubled up to a second: not ten times a second per
/// running handler. The first failure of the streak is told at warn, the others at debug, and
/// the renewal that works again says so at info.
#[tokio::test(start_paused = true)]
async fn renewals_failing_through_a_long_outage_back_off_and_warn_once() {
    use std::sync::atomic::Ordering;
    use tower_service::Service as _;

    let (buf, _guard) = logs();

    let slow = Slow::new(Duration::from_secs(30));
    let switch = Arc::new(Faulty::default());
    let store: Store = switch.clone();
    let app = slow.instance(IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(3)));
    let key = fresh_key();
    let first = tokio::spawn(app.clone().call(Slow::request(&key)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = switch.calls(Op::Renew);
    switch.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = switch.calls(Op::Renew) - before;
    switch.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.abort();
    // 100, 200, 400, 800 ms, then every second: about 14, where a try every 100 ms made 100.
    assert!(
        (8..=20).contains(&during),
        "{during} renewals in a 10 s outage"
    );
    let text = buf.text();
    let lines = |level: &str, what: &str| {
        text.lines()
            .filter(|l| l.contains(level) && l.contains(what))
            .count()
    };
    assert_eq!(lines("WARN", "idempotency claim not renewed"), 1, "{text}");
    assert!(
        lines("DEBUG", "idempotency claim not renewed") >= 5,
        "{text}"
    );
    assert_eq!(
        lines("INFO", "idempotency claim renewed again"),
        1,
        "{text}"
    );
}

/// An export whose body does the work (each chunk marks what it sent, as a bulk export or
/// import does), 32 chunks of 64 KiB, a millisecond apart: larger than the layer keeps.
struct Marking {
    marked: Arc<std::sync::atomic::AtomicUsize>,
    sent: usize,
    tick: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Marking {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.sent == 32 {
            return std::task::Poll::Ready(None);
        }
        let tick = self
            .tick
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        std::task::ready!(tick.as_mut().poll(cx));
        self.tick = None;
        self.sent += 1;
        self.marked
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from(
            vec![b'r'; 64 * 1024],
        )))))
    }
}

/// A keyed export larger than the layer keeps, whose caller reads its first chunk and goes:
/// the handler's body is read on to its end (it was stored as processed once, and a repeat
/// is told not to resend), not dropped with the connection; `drained` waits for it.
#[tokio::test(start_paused = true)]
async fn a_response_past_the_kept_bound_is_read_to_its_end_when_its_caller_goes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let marked = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store()).max_stored_body(64 * 1024);
    let export = {
        let marked = marked.clone();
        move || {
            let body = Marking {
                marked: marked.clone(),
                sent: 0,
                tick: None,
            };
            async move { (axum::http::StatusCode::CREATED, axum::body::Body::new(body)) }
        }
    };
    let app = axum::Router::new()
        .route("/exports", axum::routing::post(export))
        .layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/exports", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let key = fresh_key();
    let mut resp = reqwest::Client::new()
        .post(&url)
        .header("idempotency-key", &key)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    let at_drop = marked.load(Ordering::SeqCst);
    assert!(at_drop < 32, "the caller went before the body's end");
    tokio::time::timeout(Duration::from_secs(10), layer.drained())
        .await
        .expect("drained within the handler's limit");
    assert_eq!(marked.load(Ordering::SeqCst), 32, "{at_drop} at the drop");
    let again = post(&url, Some(&key), "x").await;
    assert_eq!((again.status, again.replayed()), (500, true), "{again:?}");
    assert!(again.body.contains("processed once"), "{}", again.body);
}

/// A server shut down gracefully right after a caller gave up on a slow keyed handler: the
/// shutdown waits for connections, and that caller's is closed, so the handler still runs;
/// `drained` waits for it, so the process does not cut it mid-effect (its claim would then
/// run out and a retry run the handler again).
#[tokio::test(start_paused = true)]
async fn drained_waits_for_a_handler_whose_caller_gave_up() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let finished = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store());
    let charge = {
        let finished = finished.clone();
        move || {
            let finished = finished.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                (axum::http::StatusCode::CREATED, "charged")
            }
        }
    };
    let app = axum::Router::new()
        .route("/charges", axum::routing::post(charge))
        .layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/charges", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap()
    });
    let gave_up = reqwest::Client::new()
        .post(&url)
        .header("idempotency-key", fresh_key())
        .body("x")
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .unwrap_err();
    assert!(gave_up.is_timeout(), "{gave_up}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("the server stops at once: no connection is left")
        .unwrap();
    assert_eq!(finished.load(Ordering::SeqCst), 0, "the handler still runs");
    tokio::time::timeout(Duration::from_secs(10), layer.drained())
        .await
        .expect("drained once the handler ends");
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}

/// What `drained` keeps is in the store: the process started again over the store it had (one
/// that outlives the process) replays the answer to the retry of the caller that gave up; over
/// a store of its own (a `MemoryStore`, gone with the process) it runs the handler again, as
/// the README's "A kept answer the store loses is a handler run again" says.
#[tokio::test(start_paused = true)]
async fn after_a_restart_only_a_store_that_outlived_the_process_replays() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = Arc::new(AtomicUsize::new(0));
    let serve = |store: Store| {
        let runs = runs.clone();
        async move {
            let layer = IdempotencyLayer::new(store);
            let charge = move || {
                let runs = runs.clone();
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    (axum::http::StatusCode::CREATED, format!("charge {n}"))
                }
            };
            let app = axum::Router::new()
                .route("/charges", axum::routing::post(charge))
                .layer(layer.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/charges", listener.local_addr().unwrap());
            let server = tokio::spawn(async move { axum::serve(listener, app).await });
            (url, layer, server)
        }
    };
    let post = |url: String, key: String, timeout: Duration| async move {
        reqwest::Client::new()
            .post(url)
            .header("idempotency-key", key)
            .body("x")
            .timeout(timeout)
            .send()
            .await
    };
    let kept = store();
    let key = fresh_key();
    let (url, layer, server) = serve(kept.clone()).await;
    let gave_up = post(url, key.clone(), Duration::from_millis(100)).await;
    assert!(gave_up.unwrap_err().is_timeout());
    tokio::time::timeout(Duration::from_secs(10), layer.drained())
        .await
        .expect("drained once the handler ends");
    server.abort();
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let (url, _, _) = serve(kept).await;
    let replay = post(url, key.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.text().await.unwrap(), "charge 1");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "replayed from the store it had"
    );

    let (url, _, _) = serve(store()).await;
    let again = post(url, key, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.text().await.unwrap(), "charge 2");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "a store that lost the answer runs it again"
    );
}

/// A store of the application's own that panics as it stores the handler's answer: a store
/// that failed (the answer kept and written back, the repeat replayed), not a handler task
/// that died, whose claim was then given back and the repeat run the handler again.
#[tokio::test(start_paused = true)]
async fn a_store_that_panics_storing_the_answer_does_not_run_the_handler_again() {
    use std::sync::atomic::Ordering;
    use tower_service::Service as _;

    let _serial = PENDING.lock().await;
    let (app, runs) = orders_over(ClaimingHow::CompletePanics);
    let key = fresh_key();
    let first = app.clone().call(keyed_post("/orders", &key)).await.unwrap();
    assert_eq!(first.status(), 201, "{:?}", first.headers());
    let again = app.clone().call(keyed_post("/orders", &key)).await.unwrap();
    assert_eq!(again.status(), 201, "{:?}", again.headers());
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A store of the application's own that panics as it claims a key: a store that failed (503,
/// nothing run, the key left free), not a process that died; the repeat, once the store
/// behaves, runs the handler once, and the next is its replay.
#[tokio::test(start_paused = true)]
async fn a_store_that_panics_claiming_counts_as_failed() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_service::Service as _;

    let runs = Arc::new(AtomicUsize::new(0));
    async fn orders(
        axum::extract::State(runs): axum::extract::State<Arc<AtomicUsize>>,
    ) -> (axum::http::StatusCode, String) {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        (axum::http::StatusCode::CREATED, format!("order {n}"))
    }
    let store = Faulty::new(|op, n| {
        if op == Op::Claim && n == 0 {
            Act::Panic
        } else {
            Act::Pass
        }
    });
    let mut app = axum::Router::new()
        .route("/orders", axum::routing::post(orders))
        .with_state(runs.clone())
        .layer(IdempotencyLayer::new(Arc::new(store)));
    let key = fresh_key();
    let mut statuses = Vec::new();
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let r = app.call(keyed_post("/orders", &key)).await.unwrap();
        statuses.push(r.status().as_u16());
        replayed.push(r.headers().contains_key("idempotent-replayed"));
    }
    assert_eq!(statuses, [503, 201, 201]);
    assert_eq!(replayed, [false, false, true]);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Held by a handler cut at the layer's limit: panics as it is dropped (a guard asserting it
/// was disarmed).
struct Armed;

impl Drop for Armed {
    fn drop(&mut self) {
        panic!("dropped while armed");
    }
}

/// What a handler cut at the layer's limit holds panics as it is dropped (a guard asserting
/// it was disarmed): still the handler cut at the limit, kept as such, never run again.
#[tokio::test(start_paused = true)]
async fn a_handler_whose_drop_panics_at_the_limit_is_not_run_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_service::Service as _;

    let runs = Arc::new(AtomicUsize::new(0));
    let charge = {
        let runs = runs.clone();
        move || {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _armed = Armed;
                tokio::time::sleep(Duration::from_secs(10)).await;
                std::mem::forget(_armed);
                axum::http::StatusCode::CREATED
            }
        }
    };
    let app = axum::Router::new()
        .route("/orders", axum::routing::post(charge))
        .layer(IdempotencyLayer::new(store()).handler_limit(Duration::from_millis(100)));
    let key = fresh_key();
    let first = app.clone().call(keyed_post("/orders", &key)).await.unwrap();
    assert_eq!(first.status(), 500);
    let body = axum::body::to_bytes(first.into_body(), 1 << 16)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("did not finish within"),
        "{body:?}"
    );
    let again = app.clone().call(keyed_post("/orders", &key)).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A body past the kept bound that then waits for something that never comes (a long poll, a
/// stream of events): once its caller goes, it is read for at most the handler's limit, and
/// `drained` does not wait on it for ever.
#[tokio::test(start_paused = true)]
async fn a_body_past_the_kept_bound_that_waits_is_let_go_after_its_caller() {
    let waits = || async {
        let body = TwoFrames {
            first: Some(bytes::Bytes::from(vec![b'w'; 64 * 1024 + 1])),
            rest: Box::pin(std::future::pending()),
        };
        (axum::http::StatusCode::CREATED, axum::body::Body::new(body))
    };
    let layer = IdempotencyLayer::new(store())
        .max_stored_body(64 * 1024)
        .handler_limit(Duration::from_secs(1));
    let app = axum::Router::new()
        .route("/events", axum::routing::post(waits))
        .layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut resp = reqwest::Client::new()
        .post(&url)
        .header("idempotency-key", fresh_key())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    tokio::time::timeout(Duration::from_secs(5), layer.drained())
        .await
        .expect("let go within the handler's limit after the caller went");
}

/// A body of one frame, then one that comes when `rest` is ready (or never).
struct TwoFrames {
    first: Option<bytes::Bytes>,
    rest: std::pin::Pin<Box<dyn std::future::Future<Output = bytes::Bytes> + Send>>,
}

impl http_body::Body for TwoFrames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(first))));
        }
        self.rest
            .as_mut()
            .poll(cx)
            .map(|d| Some(Ok(http_body::Frame::data(d))))
    }
}

/// What a kept answer's body held panics as it is dropped at the layer's limit: the handler
/// answered, so the repeat gets the stored "processed once" problem, never a second run.
#[tokio::test(start_paused = true)]
async fn a_body_whose_drop_panics_at_the_limit_is_not_run_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_service::Service as _;

    let runs = Arc::new(AtomicUsize::new(0));
    let charge = {
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
            let armed = Armed;
            let body = TwoFrames {
                first: Some(bytes::Bytes::from_static(b"{")),
                rest: Box::pin(async move {
                    let _armed = armed;
                    std::future::pending::<()>().await;
                    bytes::Bytes::from_static(b"never")
                }),
            };
            async move { (axum::http::StatusCode::CREATED, axum::body::Body::new(body)) }
        }
    };
    let app = axum::Router::new()
        .route("/orders", axum::routing::post(charge))
        .layer(IdempotencyLayer::new(store()).handler_limit(Duration::from_millis(100)));
    let key = fresh_key();
    let first = app.clone().call(keyed_post("/orders", &key)).await.unwrap();
    assert_eq!(first.status(), 201);
    let again = app.clone().call(keyed_post("/orders", &key)).await.unwrap();
    assert_eq!(again.status(), 500);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let body = axum::body::to_bytes(again.into_body(), 1 << 16)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("processed once"),
        "{body:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A body limit of the service's own (tower-http's) outside the idempotency layer: a keyed
/// chunked body past it (no `Content-Length` for it to refuse up front) is a 413, as the
/// layer's own limit answers, not a 400 "could not be read"; the handler does not run, and
/// the key stays free for the request made smaller.
#[tokio::test]
async fn a_body_limit_outside_the_layer_answers_413() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let store: Store = Arc::new(MemoryStore::default());
    let app = axum::Router::new()
        .route(
            "/orders",
            axum::routing::post(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { (axum::http::StatusCode::CREATED, "placed") }
            }),
        )
        .layer(IdempotencyLayer::new(store))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(16));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let chunked = |key: &str, chunks: &[&str]| {
        let mut req = format!(
            "POST /orders HTTP/1.1\r\nhost: {addr}\r\nidempotency-key: \"{key}\"\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        for chunk in chunks {
            req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
        }
        req.push_str("0\r\n\r\n");
        async move {
            let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            sock.write_all(req.as_bytes()).await.unwrap();
            let mut reply = Vec::new();
            sock.read_to_end(&mut reply).await.unwrap();
            String::from_utf8_lossy(&reply).into_owned()
        }
    };
    let key = fresh_key();
    let reply = chunked(&key, &["x".repeat(10).as_str(), "x".repeat(10).as_str()]).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let reply = chunked(&key, &["x".repeat(10).as_str()]).await;
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A page of an export marked as sent, downstream: an annotated call made from the response
/// body, as it is read.
#[resilience_runtime::resilient(timeout = "1s", max_attempts = 1, budget = false)]
async fn mark_page_sent(c: &reqwest::Client, url: &str) -> Result<u16, resilience_runtime::Error> {
    Ok(c.get(url)
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// An export of 6 pages of 32 bytes, each 300 ms after the last and marked sent downstream
/// before it goes.
struct MarkingPages {
    left: usize,
    client: reqwest::Client,
    url: String,
    marked: Arc<std::sync::atomic::AtomicUsize>,
    next: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl http_body::Body for MarkingPages {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        if self.next.is_none() {
            let (c, url, marked) = (self.client.clone(), self.url.clone(), self.marked.clone());
            self.next = Some(Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if mark_page_sent(&c, &url).await.is_ok() {
                    marked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }));
        }
        std::task::ready!(self.next.as_mut().unwrap().as_mut().poll(cx));
        self.next = None;
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from(
            vec![b'p'; 32],
        )))))
    }
}

/// A keyed export larger than the layer keeps streams on past `handler_limit` while its
/// caller reads, and the annotated calls its body makes go on with it: they are not given the
/// handler's deadline, which passed. They were refused at admission once it had, nothing sent,
/// and the export went out with half its pages unmarked.
#[tokio::test(start_paused = true)]
async fn a_streamed_exports_calls_are_not_held_to_the_handlers_limit() {
    use resilience_fault_server::{Action, FaultServer, Script};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let downstream = FaultServer::start(Script::always(Action::ok())).await;
    let marked = Arc::new(AtomicUsize::new(0));
    let export = {
        let (marked, url) = (marked.clone(), downstream.url("/sent"));
        move || {
            let body = MarkingPages {
                left: 6,
                client: reqwest::Client::new(),
                url: url.clone(),
                marked: marked.clone(),
                next: None,
            };
            async move { (axum::http::StatusCode::OK, axum::body::Body::new(body)) }
        }
    };
    let app = axum::Router::new()
        .route("/exports", axum::routing::post(export))
        .layer(
            IdempotencyLayer::new(store())
                .max_stored_body(16)
                .handler_limit(Duration::from_secs(1)),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/exports", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let body = reqwest::Client::new()
        .post(&url)
        .header("idempotency-key", fresh_key())
        .body("x")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 6 * 32);
    assert_eq!(
        (marked.load(Ordering::SeqCst), downstream.count()),
        (6, 6),
        "every page marked sent"
    );
}
