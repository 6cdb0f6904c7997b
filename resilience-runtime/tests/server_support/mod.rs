//! The idempotency rules, written once and run against every store: a real axum server on
//! 127.0.0.1, called with reqwest, with each handler counting its runs.

#![allow(dead_code)]

/// Every rule below as a `#[tokio::test]` of the file that names it: `$store` is an async fn
/// `(test name) -> Option<Store>` giving the store for that test (`None`: skip it, as when its
/// server is not there). One list, so that a new rule runs against every store.
#[allow(unused_macros)] // not every file that includes this module runs the rules
macro_rules! every_rule {
    ($store:ident) => {
        $crate::server_support::each_rule!(
            $store;
            replays_the_stored_response_without_running_the_handler,
            a_reused_key_with_another_body_is_422,
            a_key_belongs_to_one_method_and_path,
            a_repeat_while_the_first_runs_is_409,
            a_route_requiring_a_key_refuses_requests_without_one,
            malformed_keys_are_400,
            server_errors_release_the_key,
            client_errors_are_replayed,
            concurrent_requests_run_the_handler_once,
            responses_expire_after_the_ttl,
            durations_of_forever_are_kept_not_overflowed,
            a_handler_finishes_after_its_client_gave_up,
            a_handler_over_the_limit_is_cancelled_and_answered_500,
            a_panicking_handler_answers_500_and_frees_its_key,
            a_panic_is_stored_when_every_status_is,
            a_panic_in_the_services_call_is_the_handlers,
            a_response_over_the_stored_bound_is_not_kept_and_never_rerun,
            quoted_and_bare_keys_are_one_key,
            a_running_handler_keeps_its_claim_past_the_lease,
            an_abandoned_claim_expires_with_its_lease,
            oversized_bodies_are_413,
            the_store_holds_the_response,
            scoped_keys_never_cross_scopes,
            only_the_configured_methods_are_covered,
            a_keyed_put_or_delete_is_replayed_by_key,
            two_layers_stacked_on_a_route_run_the_handler_once,
            a_scoped_layer_inside_an_unscoped_one_refuses_rather_than_mix_callers,
            a_nested_routers_requests_are_told_apart_by_their_full_path,
            a_body_failing_after_a_kept_status_is_never_rerun,
            a_body_panicking_or_stuck_after_a_kept_status_is_never_rerun,
            claims_are_fenced_by_their_token,
        );
    };
}
#[allow(unused_imports)]
pub(crate) use every_rule;

/// One `#[tokio::test]` per rule named (see [`every_rule`]).
#[allow(unused_macros)]
macro_rules! each_rule {
    ($store:ident; $($rule:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $rule() {
            let Some(store) = $store(stringify!($rule)).await else { return };
            $crate::server_support::$rule(store).await;
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use each_rule;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse};
use axum::routing;
use reqwest::header::HeaderValue;
use resilience_runtime::server::{
    Claim, Fingerprint, IDEMPOTENT_REPLAYED, IdempotencyLayer, IdempotencyStore, InFlight, Record,
    record_key,
};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

pub type Store = Arc<dyn IdempotencyStore>;

/// How many times each handler started.
#[derive(Default)]
pub struct Runs {
    pub orders: AtomicUsize,
    pub slow: AtomicUsize,
    pub gated: AtomicUsize,
    pub flaky: AtomicUsize,
    pub reject: AtomicUsize,
    pub busy: AtomicUsize,
    pub forwarding: AtomicUsize,
    pub list: AtomicUsize,
    pub required: AtomicUsize,
    pub panicky: AtomicUsize,
    pub tenant_charges: AtomicUsize,
    pub streamed: AtomicUsize,
    pub streamed_panic: AtomicUsize,
    pub streamed_stuck: AtomicUsize,
    pub call_panics: AtomicUsize,
}

fn bump(counter: &AtomicUsize) -> usize {
    counter.fetch_add(1, Ordering::SeqCst) + 1
}

pub fn count(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}

#[derive(Clone)]
struct Shared {
    runs: Arc<Runs>,
    gate: Arc<Semaphore>,
}

async fn orders(State(s): State<Shared>, body: String) -> impl IntoResponse {
    let n = bump(&s.runs.orders);
    (
        StatusCode::CREATED,
        AppendHeaders([(SET_COOKIE, "a=1"), (SET_COOKIE, "b=2")]),
        [("x-order", n.to_string())],
        format!("order {n}: {body}"),
    )
}

async fn list(State(s): State<Shared>) -> String {
    format!("list {}", bump(&s.runs.list))
}

/// A service that counts a run, then panics in `call` itself, before any future.
#[derive(Clone)]
struct CallPanics(Arc<Runs>);

impl tower_service::Service<axum::extract::Request> for CallPanics {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: axum::extract::Request) -> Self::Future {
        bump(&self.0.call_panics);
        panic!("a synchronous layer's closure panicked");
    }
}

/// Sleeps for the `x-sleep-ms` request header (not part of the fingerprint).
async fn slow(State(s): State<Shared>, headers: HeaderMap) -> (StatusCode, String) {
    let n = bump(&s.runs.slow);
    let ms = headers
        .get("x-sleep-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    (StatusCode::CREATED, format!("slow {n}"))
}

/// Behind a layer inside `nest("/tenants/{tenant}", …)`: the layer sees `/charges`.
async fn tenant_charge(
    State(s): State<Shared>,
    Path(tenant): Path<String>,
    body: String,
) -> (StatusCode, String) {
    let n = bump(&s.runs.tenant_charges);
    (
        StatusCode::CREATED,
        format!("tenant {tenant}: charge {n}: {body}"),
    )
}

/// Answers 201, then its streamed body fails after the first chunk.
async fn streamed(State(s): State<Shared>) -> (StatusCode, axum::body::Body) {
    bump(&s.runs.streamed);
    (StatusCode::CREATED, axum::body::Body::new(CutShort(0)))
}

/// A body that yields one chunk, then an error (a cursor lost mid-stream).
struct CutShort(u8);

impl http_body::Body for CutShort {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        // From 0: a chunk, then an error; from 10: a chunk, then a panic; from 20: a chunk,
        // then nothing ever again (polled again, it stays where it is).
        if self.0 == 22 {
            return std::task::Poll::Pending;
        }
        self.0 += 1;
        std::task::Poll::Ready(match self.0 % 10 {
            1 => Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"receipt: ",
            )))),
            2 if self.0 > 20 => return std::task::Poll::Pending,
            2 if self.0 > 10 => panic!("the export's cursor panicked"),
            2 => Some(Err(std::io::Error::other("cursor lost"))),
            _ => None,
        })
    }
}

/// Answers 201, then its streamed body panics after the first chunk.
async fn streamed_panic(State(s): State<Shared>) -> (StatusCode, axum::body::Body) {
    bump(&s.runs.streamed_panic);
    (StatusCode::CREATED, axum::body::Body::new(CutShort(10)))
}

/// Answers 201, then its streamed body never ends (an export slower than the layer's limit).
async fn streamed_stuck(State(s): State<Shared>) -> (StatusCode, axum::body::Body) {
    bump(&s.runs.streamed_stuck);
    (StatusCode::CREATED, axum::body::Body::new(CutShort(20)))
}

/// Runs until the test adds a permit to the gate.
async fn gated(State(s): State<Shared>) -> (StatusCode, String) {
    let n = bump(&s.runs.gated);
    s.gate.acquire().await.expect("gate open").forget();
    (StatusCode::CREATED, format!("gated {n}"))
}

/// 500 on its first run, 201 after.
async fn flaky(State(s): State<Shared>) -> (StatusCode, String) {
    match bump(&s.runs.flaky) {
        1 => (StatusCode::INTERNAL_SERVER_ERROR, "boom".into()),
        n => (StatusCode::CREATED, format!("flaky {n}")),
    }
}

async fn reject(State(s): State<Shared>) -> (StatusCode, String) {
    let n = bump(&s.runs.reject);
    (StatusCode::BAD_REQUEST, format!("rejected {n}"))
}

async fn busy(State(s): State<Shared>) -> (StatusCode, [(&'static str, &'static str); 1]) {
    bump(&s.runs.busy);
    (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")])
}

/// Passes on what a service further down answered: 409 "in progress, ask again later" (with
/// `Retry-After`) when the body says `later`, else a 409 of its own (a conflict, no
/// `Retry-After`).
async fn forwarding(State(s): State<Shared>, body: String) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    bump(&s.runs.forwarding);
    if body == "later" {
        (
            StatusCode::CONFLICT,
            [("retry-after", "1")],
            "in progress downstream",
        )
            .into_response()
    } else {
        (StatusCode::CONFLICT, "already shipped").into_response()
    }
}

/// Panics on its first run, 201 after.
async fn panicky(State(s): State<Shared>) -> (StatusCode, String) {
    let n = bump(&s.runs.panicky);
    if n == 1 {
        panic!("the handler's bug");
    }
    (StatusCode::CREATED, format!("panicky {n}"))
}

async fn required(State(s): State<Shared>) -> (StatusCode, String) {
    let n = bump(&s.runs.required);
    (StatusCode::CREATED, format!("required {n}"))
}

/// A running test server.
pub struct App {
    pub base: String,
    pub runs: Arc<Runs>,
    pub gate: Arc<Semaphore>,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The default layer over `store`: key optional.
pub fn layer(store: &Store) -> IdempotencyLayer {
    IdempotencyLayer::new(store.clone())
}

/// Serves every test route behind `layer`, and `/required` behind the same store with the key
/// required.
pub async fn serve(store: &Store, layer: IdempotencyLayer) -> App {
    let shared = Shared {
        runs: Arc::default(),
        gate: Arc::new(Semaphore::new(0)),
    };
    let optional = Router::new()
        .route(
            "/orders",
            routing::post(orders)
                .patch(orders)
                .put(orders)
                .delete(orders)
                .get(list),
        )
        // A second layer, requiring a key, stacked inside the router's on this route.
        .route(
            "/stacked",
            routing::post(orders)
                .route_layer(IdempotencyLayer::new(store.clone()).require_key(true)),
        )
        // A layer with a scope of its own, stacked inside the router's on this route.
        .route(
            "/stacked_scoped",
            routing::post(orders)
                .route_layer(IdempotencyLayer::new(store.clone()).scope(tenant_of)),
        )
        .route("/other", routing::post(orders))
        .route("/slow", routing::post(slow))
        .route("/gated", routing::post(gated))
        .route("/flaky", routing::post(flaky))
        .route("/reject", routing::post(reject))
        .route("/busy", routing::post(busy))
        .route("/forwarding", routing::post(forwarding))
        .route("/panicky", routing::post(panicky))
        .route("/streamed", routing::post(streamed))
        .route("/streamed_panic", routing::post(streamed_panic))
        .route("/streamed_stuck", routing::post(streamed_stuck))
        .layer(layer.clone());
    // The layer directly around a service whose `call` panics (a synchronous layer's closure),
    // not through a router, which would defer the call to its future's first poll.
    let optional = optional.route_service(
        "/call_panics",
        tower_layer::Layer::layer(&layer, CallPanics(shared.runs.clone())),
    );
    let tenants = Router::new()
        .route("/charges", routing::post(tenant_charge))
        .layer(layer);
    let strict = Router::new()
        .route("/required", routing::post(required))
        .route_layer(IdempotencyLayer::new(store.clone()).require_key(true));
    let app = optional
        .merge(strict)
        .nest("/tenants/{tenant}", tenants)
        .with_state(shared.clone());

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("server runs");
    });
    App {
        base: format!("http://{addr}"),
        runs: shared.runs,
        gate: shared.gate,
        task,
    }
}

/// What the client saw.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn replayed(&self) -> bool {
        self.headers.get(IDEMPOTENT_REPLAYED).map(|v| v.as_bytes()) == Some(b"true")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let res = req.send().await.expect("request answered");
    Reply {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.expect("body read"),
    }
}

/// POSTs `body` to `url` with `key`.
pub async fn post(url: &str, key: Option<&str>, body: &str) -> Reply {
    let mut req = client().post(url).body(body.to_owned());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    send(req).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub fn fresh_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ---------------------------------------------------------------------------------------------
// The rules.

pub async fn replays_the_stored_response_without_running_the_handler(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    let first = post(&app.url("/orders"), Some(&key), "2 apples").await;
    assert_eq!(first.status, 201);
    assert_eq!(first.body, "order 1: 2 apples");
    assert!(!first.replayed());
    assert_eq!(count(&app.runs.orders), 1);

    for _ in 0..3 {
        let again = post(&app.url("/orders"), Some(&key), "2 apples").await;
        assert_eq!(again.status, 201);
        assert_eq!(again.body, "order 1: 2 apples");
        assert_eq!(again.header("x-order"), Some("1"));
        let cookies: Vec<_> = again.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(again.replayed(), "{again:?}");
    }
    assert_eq!(count(&app.runs.orders), 1, "the handler ran once");

    // Another key is another operation.
    let other = post(&app.url("/orders"), Some(&fresh_key()), "2 apples").await;
    assert_eq!(other.body, "order 2: 2 apples");
    assert!(!other.replayed());
}

pub async fn a_reused_key_with_another_body_is_422(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    assert_eq!(
        post(&app.url("/orders"), Some(&key), "2 apples")
            .await
            .status,
        201
    );

    let reused = post(&app.url("/orders"), Some(&key), "3 apples").await;
    assert_eq!(reused.status, 422, "{reused:?}");
    assert_eq!(
        reused.header("content-type"),
        Some("application/problem+json")
    );
    assert!(reused.body.contains("different request"), "{}", reused.body);

    let other_query = post(&app.url("/orders?coupon=1"), Some(&key), "2 apples").await;
    assert_eq!(other_query.status, 422);
    assert_eq!(count(&app.runs.orders), 1);
}

pub async fn a_key_belongs_to_one_method_and_path(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    assert_eq!(
        post(&app.url("/orders"), Some(&key), "x").await.body,
        "order 1: x"
    );
    assert_eq!(
        post(&app.url("/other"), Some(&key), "x").await.body,
        "order 2: x"
    );
    let patch = send(
        client()
            .patch(app.url("/orders"))
            .header("idempotency-key", &key)
            .body("x"),
    )
    .await;
    assert_eq!(patch.body, "order 3: x");
    assert!(!patch.replayed());
    let patch_again = send(
        client()
            .patch(app.url("/orders"))
            .header("idempotency-key", &key)
            .body("x"),
    )
    .await;
    assert!(patch_again.replayed());
    assert_eq!(count(&app.runs.orders), 3);
}

pub async fn a_repeat_while_the_first_runs_is_409(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    let url = app.url("/gated");
    let first = tokio::spawn({
        let (url, key) = (url.clone(), key.clone());
        async move { post(&url, Some(&key), "x").await }
    });
    wait_until(|| count(&app.runs.gated) == 1).await;

    let busy = post(&url, Some(&key), "x").await;
    assert_eq!(busy.status, 409, "{busy:?}");
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert!(busy.body.contains("still being processed"), "{}", busy.body);
    // A different body is a reused key even while the first runs.
    assert_eq!(post(&url, Some(&key), "y").await.status, 422);

    app.gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.replayed()), (201, false));
    let replay = post(&url, Some(&key), "x").await;
    assert_eq!((replay.status, replay.replayed()), (201, true));
    assert_eq!(replay.body, "gated 1");
    assert_eq!(count(&app.runs.gated), 1);
}

pub async fn a_route_requiring_a_key_refuses_requests_without_one(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let missing = post(&app.url("/required"), None, "x").await;
    assert_eq!(missing.status, 400, "{missing:?}");
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );
    assert!(missing.body.contains("Idempotency-Key"), "{}", missing.body);
    assert_eq!(count(&app.runs.required), 0);

    let key = fresh_key();
    assert_eq!(
        post(&app.url("/required"), Some(&key), "x").await.status,
        201
    );
    assert!(
        post(&app.url("/required"), Some(&key), "x")
            .await
            .replayed()
    );
    assert_eq!(count(&app.runs.required), 1);

    // Where the key is optional, a request without one runs every time, unprotected.
    for n in 1..=2 {
        let unkeyed = post(&app.url("/orders"), None, "x").await;
        assert_eq!(unkeyed.body, format!("order {n}: x"));
        assert!(!unkeyed.replayed());
    }
    // Methods the layer does not cover pass through, key or not.
    for n in 1..=2 {
        let get = send(
            client()
                .get(app.url("/orders"))
                .header("idempotency-key", &key),
        )
        .await;
        assert_eq!(get.body, format!("list {n}"));
    }
}

pub async fn malformed_keys_are_400(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let url = app.url("/orders");
    let bad: Vec<(&str, HeaderValue)> = vec![
        ("empty", HeaderValue::from_static("")),
        ("space", HeaderValue::from_static("a b")),
        ("tab", HeaderValue::from_static("a\tb")),
        (
            "non-ASCII",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        ),
        (
            "256 bytes",
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        ),
        ("unclosed quote", HeaderValue::from_static("\"abc")),
        ("bad escape", HeaderValue::from_static("\"a\\x\"")),
        ("empty string", HeaderValue::from_static("\"\"")),
        ("not a string", HeaderValue::from_static("\"a\", \"b\"")),
    ];
    for (what, value) in bad {
        let reply = send(
            client()
                .post(&url)
                .header("idempotency-key", value)
                .body("x"),
        )
        .await;
        assert_eq!(reply.status, 400, "{what}: {reply:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json"),
            "{what}"
        );
        assert!(
            reply.body.contains("Idempotency-Key header"),
            "{}",
            reply.body
        );
    }
    let twice = send(
        client()
            .post(&url)
            .header("idempotency-key", "a")
            .header("idempotency-key", "b")
            .body("x"),
    )
    .await;
    assert_eq!(twice.status, 400, "{twice:?}");
    assert!(twice.body.contains("more than once"), "{}", twice.body);
    assert_eq!(count(&app.runs.orders), 0);

    let longest = format!("{}{}", fresh_key(), "k".repeat(255 - 36));
    assert_eq!(post(&url, Some(&longest), "x").await.status, 201);
    assert!(post(&url, Some(&longest), "x").await.replayed());
}

pub async fn server_errors_release_the_key(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    let url = app.url("/flaky");
    let failed = post(&url, Some(&key), "x").await;
    assert_eq!((failed.status, failed.replayed()), (500, false));
    let retried = post(&url, Some(&key), "x").await;
    assert_eq!((retried.status, retried.replayed()), (201, false));
    assert_eq!(retried.body, "flaky 2");
    let replay = post(&url, Some(&key), "x").await;
    assert_eq!((replay.status, replay.replayed()), (201, true));
    assert_eq!(replay.body, "flaky 2");
    assert_eq!(count(&app.runs.flaky), 2);

    // 429 says "not done, try again" too.
    for _ in 0..2 {
        let throttled = post(&app.url("/busy"), Some(&key), "x").await;
        assert_eq!((throttled.status, throttled.replayed()), (429, false));
    }
    assert_eq!(count(&app.runs.busy), 2);

    // So does a 409 with Retry-After a handler passes on from further down: kept, every repeat
    // would get it and the operation would never run. A 409 of the handler's own is kept.
    let later = fresh_key();
    for _ in 0..2 {
        let passed_on = post(&app.url("/forwarding"), Some(&later), "later").await;
        assert_eq!((passed_on.status, passed_on.replayed()), (409, false));
    }
    assert_eq!(count(&app.runs.forwarding), 2);
    let conflict = fresh_key();
    let first = post(&app.url("/forwarding"), Some(&conflict), "now").await;
    let again = post(&app.url("/forwarding"), Some(&conflict), "now").await;
    assert_eq!(
        (first.status, again.status, again.replayed()),
        (409, 409, true)
    );
    assert_eq!(count(&app.runs.forwarding), 3);
}

pub async fn client_errors_are_replayed(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    let first = post(&app.url("/reject"), Some(&key), "x").await;
    assert_eq!((first.status, first.replayed()), (400, false));
    let again = post(&app.url("/reject"), Some(&key), "x").await;
    assert_eq!((again.status, again.replayed()), (400, true));
    assert_eq!(again.body, "rejected 1");
    assert_eq!(count(&app.runs.reject), 1);
}

pub async fn concurrent_requests_run_the_handler_once(store: Store) {
    const N: usize = 16;
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    let url = app.url("/slow");
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..N {
        let req = client
            .post(&url)
            .header("idempotency-key", &key)
            .header("x-sleep-ms", "300")
            .body("x");
        tasks.spawn(send(req));
    }
    let replies = tasks.join_all().await;
    assert_eq!(count(&app.runs.slow), 1, "the handler ran once");
    let ran: Vec<_> = replies
        .iter()
        .filter(|r| r.status == 201 && !r.replayed())
        .collect();
    assert_eq!(ran.len(), 1, "{replies:?}");
    for r in &replies {
        assert!(
            r.status == 409 || (r.status == 201 && r.body == "slow 1"),
            "{r:?}"
        );
    }
}

pub async fn responses_expire_after_the_ttl(store: Store) {
    let app = serve(&store, layer(&store).ttl(Duration::from_millis(500))).await;
    let key = fresh_key();
    let url = app.url("/orders");
    assert_eq!(post(&url, Some(&key), "x").await.body, "order 1: x");
    assert!(post(&url, Some(&key), "x").await.replayed());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = post(&url, Some(&key), "x").await;
    assert_eq!(
        (later.body.as_str(), later.replayed()),
        ("order 2: x", false)
    );
}

/// "Keep forever" written the natural way (`Duration::MAX` for the TTL, the lease, the handler
/// limit, the store's down time): the response is stored and replayed, the handler runs once.
/// (An `Instant + Duration` overflow once panicked after the handler ran, which gave the key
/// back and let the retry run it again; Redis refuses an expiry beyond its range.)
pub async fn durations_of_forever_are_kept_not_overflowed(store: Store) {
    let layer = layer(&store)
        .ttl(Duration::MAX)
        .lease(Duration::MAX)
        .handler_limit(Duration::MAX)
        .store_down_for(Duration::MAX);
    let app = serve(&store, layer).await;
    let key = fresh_key();
    let url = app.url("/orders");
    let first = post(&url, Some(&key), "x").await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (201, "order 1: x"),
        "{first:?}"
    );
    let again = post(&url, Some(&key), "x").await;
    assert_eq!(
        (again.status, again.body.as_str(), again.replayed()),
        (201, "order 1: x", true),
        "{again:?}"
    );
    assert_eq!(count(&app.runs.orders), 1);
}

/// POSTs to `/slow` (sleeping `sleep_ms`) with `key` until the answer is not 409, for up to 5 s.
pub async fn post_slow_until_done(url: &str, key: &str, sleep_ms: u64) -> Reply {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send(
            client()
                .post(url)
                .header("idempotency-key", key)
                .header("x-sleep-ms", sleep_ms.to_string())
                .body("x"),
        )
        .await;
        if reply.status != 409 || tokio::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn a_handler_finishes_after_its_client_gave_up(store: Store) {
    // Regression: the client's disconnect made hyper drop the request future, the layer
    // released the claim, and the retry ran the handler a second time.
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    let url = app.url("/slow");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(&url)
        .header("idempotency-key", &key)
        .header("x-sleep-ms", "400")
        .body("x")
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    assert_eq!(count(&app.runs.slow), 1);

    // While the handler runs, a repeat is 409; after, it is the replay of that one run.
    let busy = post(&url, Some(&key), "x").await;
    assert_eq!(busy.status, 409, "{busy:?}");
    let retried = post_slow_until_done(&url, &key, 0).await;
    assert_eq!(
        (retried.status, retried.replayed(), retried.body.as_str()),
        (201, true, "slow 1"),
        "{retried:?}"
    );
    assert_eq!(count(&app.runs.slow), 1, "the handler ran once");
}

pub async fn a_handler_over_the_limit_is_cancelled_and_answered_500(store: Store) {
    let app = serve(
        &store,
        layer(&store).handler_limit(Duration::from_millis(150)),
    )
    .await;
    let key = fresh_key();
    let url = app.url("/slow");
    let started = tokio::time::Instant::now();
    let cut = send(
        client()
            .post(&url)
            .header("idempotency-key", &key)
            .header("x-sleep-ms", "60000")
            .body("x"),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(cut.status, 500, "{cut:?}");
    assert_eq!(cut.header("content-type"), Some("application/problem+json"));
    assert!(cut.body.contains("150 ms"), "{}", cut.body);
    // Cut mid-effect: whatever the layer keeps, the 500 is stored and a retry gets it; the
    // handler never runs again.
    let again = send(
        client()
            .post(&url)
            .header("idempotency-key", &key)
            .body("x"),
    )
    .await;
    assert_eq!((again.status, again.replayed()), (500, true), "{again:?}");
    assert!(again.body.contains("look the result up"), "{}", again.body);
    assert_eq!(count(&app.runs.slow), 1);
}

pub async fn a_panicking_handler_answers_500_and_frees_its_key(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    let url = app.url("/panicky");
    let failed = post(&url, Some(&key), "x").await;
    assert_eq!(failed.status, 500, "{failed:?}");
    assert_eq!(
        failed.header("content-type"),
        Some("application/problem+json")
    );
    assert!(failed.body.contains("handler failed"), "{}", failed.body);
    // Never stuck until the lease ends (10 s): the very next request runs the handler.
    let retried = post(&url, Some(&key), "x").await;
    assert_eq!(
        (retried.status, retried.replayed(), retried.body.as_str()),
        (201, false, "panicky 2")
    );
    assert!(post(&url, Some(&key), "x").await.replayed());
    assert_eq!(count(&app.runs.panicky), 2);
}

pub async fn a_panic_is_stored_when_every_status_is(store: Store) {
    let app = serve(
        &store,
        layer(&store).replayable(resilience_runtime::server::replay_every_status),
    )
    .await;
    let key = fresh_key();
    let url = app.url("/panicky");
    assert_eq!(post(&url, Some(&key), "x").await.status, 500);
    let again = post(&url, Some(&key), "x").await;
    assert_eq!((again.status, again.replayed()), (500, true), "{again:?}");
    assert_eq!(count(&app.runs.panicky), 1);
}

pub async fn a_panic_in_the_services_call_is_the_handlers(store: Store) {
    let app = serve(
        &store,
        layer(&store).replayable(resilience_runtime::server::replay_every_status),
    )
    .await;
    let key = fresh_key();
    let url = app.url("/call_panics");
    let failed = post(&url, Some(&key), "x").await;
    assert_eq!(failed.status, 500, "{failed:?}");
    assert!(failed.body.contains("handler failed"), "{}", failed.body);
    let again = post(&url, Some(&key), "x").await;
    assert_eq!((again.status, again.replayed()), (500, true), "{again:?}");
    assert_eq!(count(&app.runs.call_panics), 1);
}

pub async fn a_response_over_the_stored_bound_is_not_kept_and_never_rerun(store: Store) {
    let app = serve(&store, layer(&store).max_stored_body(16)).await;
    let key = fresh_key();
    let url = app.url("/orders");
    let body = "a rather long order body";
    let first = post(&url, Some(&key), body).await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (201, "order 1: a rather long order body")
    );
    let again = post(&url, Some(&key), body).await;
    assert_eq!((again.status, again.replayed()), (500, true), "{again:?}");
    assert!(again.body.contains("processed once"), "{}", again.body);
    assert_eq!(count(&app.runs.orders), 1);
    // Within the bound, the response itself is kept.
    let small = fresh_key();
    assert_eq!(post(&url, Some(&small), "x").await.status, 201);
    assert_eq!(post(&url, Some(&small), "x").await.body, "order 2: x");
}

pub async fn quoted_and_bare_keys_are_one_key(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    let url = app.url("/orders");
    let quoted = format!("\"{key}\"");
    let first = post(&url, Some(&quoted), "x").await;
    assert_eq!((first.status, first.replayed()), (201, false));
    let bare = post(&url, Some(&key), "x").await;
    assert_eq!(
        (bare.status, bare.replayed(), bare.body.as_str()),
        (201, true, "order 1: x")
    );
    // Escapes are decoded: `"a\"b"` is the key `a"b`.
    let escaped = post(&url, Some(r#""k\"q""#), "x").await;
    assert_eq!(escaped.status, 201);
    assert!(post(&url, Some(r#""k\"q""#), "x").await.replayed());
    // A quoted key may hold a space.
    let spaced = format!("\"{key} two\"");
    assert!(!post(&url, Some(&spaced), "x").await.replayed());
    assert!(post(&url, Some(&spaced), "x").await.replayed());
    assert_eq!(count(&app.runs.orders), 3);
}

pub async fn a_running_handler_keeps_its_claim_past_the_lease(store: Store) {
    let app = serve(&store, layer(&store).lease(Duration::from_millis(500))).await;
    let key = fresh_key();
    let url = app.url("/slow");
    let first = tokio::spawn({
        let (url, key) = (url.clone(), key.clone());
        async move {
            send(
                client()
                    .post(&url)
                    .header("idempotency-key", &key)
                    .header("x-sleep-ms", "2000")
                    .body("x"),
            )
            .await
        }
    });
    wait_until(|| count(&app.runs.slow) == 1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // more than two leases
    let busy = post(&url, Some(&key), "x").await;
    assert_eq!(busy.status, 409, "the claim was renewed: {busy:?}");
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (201, "slow 1"));
    assert!(post(&url, Some(&key), "x").await.replayed());
    assert_eq!(count(&app.runs.slow), 1);
}

pub async fn an_abandoned_claim_expires_with_its_lease(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    // An instance claimed the key and died: nobody renews or releases the claim.
    let orphan = InFlight {
        token: 7,
        fingerprint: Fingerprint::of(None, b"x"),
    };
    let store_key = record_key(&reqwest::Method::POST, "/orders", &key, None);
    let claimed = store
        .claim(&store_key, &orphan, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(claimed, Claim::Acquired);

    assert_eq!(post(&app.url("/orders"), Some(&key), "x").await.status, 409);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = post(&app.url("/orders"), Some(&key), "x").await;
    assert_eq!((later.status, later.body.as_str()), (201, "order 1: x"));
}

pub async fn oversized_bodies_are_413(store: Store) {
    let app = serve(&store, layer(&store).max_body(16)).await;
    let url = app.url("/orders");
    let key = fresh_key();
    let big = post(&url, Some(&key), &"x".repeat(17)).await;
    assert_eq!(big.status, 413, "{big:?}");
    assert!(big.body.contains("16 bytes"), "{}", big.body);
    // Without a Content-Length: a chunked body is cut off at the limit all the same.
    let head = raw_chunked(&app, &fresh_key(), &["x".repeat(10), "x".repeat(10)]).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(count(&app.runs.orders), 0);
    // The key stays free: the client's request made smaller, under the same key, runs.
    assert_eq!(post(&url, Some(&key), &"x".repeat(16)).await.status, 201);
    assert_eq!(count(&app.runs.orders), 1);
}

pub async fn the_store_holds_the_response(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    post(&app.url("/orders"), Some(&key), "x").await;
    let store_key = record_key(&reqwest::Method::POST, "/orders", &key, None);
    let Some(Record::Completed(stored)) = store.get(&store_key).await.unwrap() else {
        panic!("no completed record under {store_key}");
    };
    assert_eq!(stored.status, 201);
    assert_eq!(&stored.body[..], b"order 1: x");
    assert_eq!(stored.fingerprint, Fingerprint::of(None, b"x"));
    assert_eq!(stored.headers["x-order"], "1");
    assert!(stored.headers.get("content-length").is_none());
}

/// The caller a request names in `X-Tenant`, the tests' `scope`.
fn tenant_of(p: &axum::http::request::Parts) -> Option<String> {
    p.headers
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub async fn scoped_keys_never_cross_scopes(store: Store) {
    let app = serve(&store, layer(&store).scope(tenant_of)).await;
    let key = fresh_key();
    let as_tenant = |t: &'static str| {
        client()
            .post(app.url("/orders"))
            .header("idempotency-key", &key)
            .header("x-tenant", t)
            .body("x")
    };
    assert_eq!(send(as_tenant("a")).await.body, "order 1: x");
    let other = send(as_tenant("b")).await;
    assert_eq!(
        (other.body.as_str(), other.replayed()),
        ("order 2: x", false)
    );
    let again = send(as_tenant("a")).await;
    assert_eq!(
        (again.body.as_str(), again.replayed()),
        ("order 1: x", true)
    );
    assert_eq!(count(&app.runs.orders), 2);
    // A keyed request the scope finds no caller in (auth inside the layer, an anonymous
    // route) is refused, not put in one namespace every such request shares: two callers
    // without a tenant, one key, were once answered each other's orders.
    for _ in 0..2 {
        let anonymous = send(
            client()
                .post(app.url("/orders"))
                .header("idempotency-key", &key)
                .body("x"),
        )
        .await;
        assert_eq!(anonymous.status, 400, "{}", anonymous.body);
        assert!(
            anonymous.body.contains("scopes idempotency keys by caller"),
            "{}",
            anonymous.body
        );
    }
    assert_eq!(count(&app.runs.orders), 2);
}

pub async fn only_the_configured_methods_are_covered(store: Store) {
    let app = serve(&store, layer(&store).methods([reqwest::Method::PATCH])).await;
    let key = fresh_key();
    for n in 1..=2 {
        let unprotected = post(&app.url("/orders"), Some(&key), "x").await;
        assert_eq!(
            (unprotected.replayed(), unprotected.body),
            (false, format!("order {n}: x"))
        );
    }
    for _ in 0..2 {
        let patch = send(
            client()
                .patch(app.url("/orders"))
                .header("idempotency-key", &key)
                .body("x"),
        )
        .await;
        assert_eq!(patch.body, "order 3: x");
    }
    assert_eq!(count(&app.runs.orders), 3);
}

/// A keyed client resends or hedges a keyed PUT or DELETE on the strength of its key: the
/// layer covers them when they carry one, whatever its methods; without a key they pass.
pub async fn a_keyed_put_or_delete_is_replayed_by_key(store: Store) {
    let app = serve(&store, layer(&store).methods([reqwest::Method::PATCH])).await;
    let key = fresh_key();
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let key = format!("{key}-{method}");
        let first = send(
            client()
                .request(method.clone(), app.url("/orders"))
                .header("idempotency-key", &key)
                .body("x"),
        )
        .await;
        let again = send(
            client()
                .request(method.clone(), app.url("/orders"))
                .header("idempotency-key", &key)
                .body("x"),
        )
        .await;
        assert_eq!(
            (first.replayed(), again.replayed()),
            (false, true),
            "{method}"
        );
        assert_eq!(first.body, again.body, "{method}");
    }
    assert_eq!(count(&app.runs.orders), 2);
    for _ in 0..2 {
        send(client().put(app.url("/orders")).body("x")).await;
        send(client().delete(app.url("/orders")).body("x")).await;
    }
    assert_eq!(
        count(&app.runs.orders),
        6,
        "an unkeyed PUT or DELETE runs every time"
    );
}

/// An unscoped layer around the router and one scoped by tenant on a route: repeats are
/// answered from the outer layer's record, before the inner one sees them, so a second tenant
/// sending the first one's key was replayed the first one's answer. The inner layer refuses
/// (500, `scope-conflict`), running nothing; under an outer layer scoped the same way it
/// passes, and the tenants are told apart.
pub async fn a_scoped_layer_inside_an_unscoped_one_refuses_rather_than_mix_callers(store: Store) {
    for outer_scoped in [false, true] {
        let outer = if outer_scoped {
            layer(&store).scope(tenant_of)
        } else {
            layer(&store)
        };
        let app = serve(&store, outer).await;
        let key = fresh_key();
        let as_tenant = |t: &'static str| {
            client()
                .post(app.url("/stacked_scoped"))
                .header("idempotency-key", &key)
                .header("x-tenant", t)
                .body("x")
        };
        let a = send(as_tenant("a")).await;
        let b = send(as_tenant("b")).await;
        if outer_scoped {
            assert_eq!((a.status, a.body.as_str()), (201, "order 1: x"));
            assert_eq!(
                (b.status, b.body.as_str(), b.replayed()),
                (201, "order 2: x", false)
            );
            let again = send(as_tenant("a")).await;
            assert_eq!(
                (again.body.as_str(), again.replayed()),
                ("order 1: x", true)
            );
            assert_eq!(count(&app.runs.orders), 2);
        } else {
            for r in [&a, &b] {
                assert_eq!(r.status, 500, "{}", r.body);
                assert!(
                    r.body.contains("does not scope them the same way"),
                    "{}",
                    r.body
                );
            }
            assert_eq!(count(&app.runs.orders), 0);
        }
        // A request naming no tenant: refused by whichever layer finds it has none (the
        // outer scoped one, 400), or as the conflict (500, which the outer layer does not
        // keep for the key); either way the handler does not run.
        let key = fresh_key();
        for _ in 0..2 {
            let anonymous = send(
                client()
                    .post(app.url("/stacked_scoped"))
                    .header("idempotency-key", &key)
                    .body("x"),
            )
            .await;
            let expected = if outer_scoped { 400 } else { 500 };
            assert_eq!(anonymous.status, expected, "{}", anonymous.body);
            assert!(!anonymous.replayed(), "{}", anonymous.body);
        }
        assert_eq!(count(&app.runs.orders), if outer_scoped { 2 } else { 0 });
    }
}

/// An optional layer around the router and one requiring a key on a route: the inner one
/// passes what the outer one claimed (it once answered it 409 for ever), and still refuses a
/// request without a key.
pub async fn two_layers_stacked_on_a_route_run_the_handler_once(store: Store) {
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    let first = post(&app.url("/stacked"), Some(&key), "x").await;
    assert_eq!(
        (first.status, first.replayed()),
        (201, false),
        "{}",
        first.body
    );
    let again = post(&app.url("/stacked"), Some(&key), "x").await;
    assert_eq!(
        (again.status, again.replayed()),
        (201, true),
        "{}",
        again.body
    );
    assert_eq!(count(&app.runs.orders), 1);
    let keyless = post(&app.url("/stacked"), None, "x").await;
    assert_eq!(keyless.status, 400, "{}", keyless.body);
    assert_eq!(count(&app.runs.orders), 1);
}

pub async fn a_nested_routers_requests_are_told_apart_by_their_full_path(store: Store) {
    // The layer sits in a router nested under `/tenants/{tenant}`, which strips the prefix
    // from the URI it sees: `/charges` for every tenant. Two tenants sending the same key (an
    // order number) are two operations, and neither may receive the other's response.
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    for (n, tenant) in [(1, "a"), (2, "b")] {
        let first = post(
            &app.url(&format!("/tenants/{tenant}/charges")),
            Some(&key),
            "10 EUR",
        )
        .await;
        assert_eq!(
            (first.status, first.body.as_str(), first.replayed()),
            (
                201,
                format!("tenant {tenant}: charge {n}: 10 EUR").as_str(),
                false
            )
        );
    }
    let again = post(&app.url("/tenants/a/charges"), Some(&key), "10 EUR").await;
    assert_eq!(
        (again.body.as_str(), again.replayed()),
        ("tenant a: charge 1: 10 EUR", true)
    );
    assert_eq!(count(&app.runs.tenant_charges), 2);
    // Stored under the full path, where `record_key` finds it to inspect or purge.
    let stored = store
        .get(&record_key(
            &reqwest::Method::POST,
            "/tenants/b/charges",
            &key,
            None,
        ))
        .await
        .expect("store answers");
    assert!(
        matches!(stored, Some(Record::Completed(ref r)) if &r.body[..] == b"tenant b: charge 2: 10 EUR"),
        "{stored:?}"
    );
}

pub async fn a_body_failing_after_a_kept_status_is_never_rerun(store: Store) {
    // The handler answered 201 (its effect happened), then its streamed body failed: the first
    // caller sees the cut, and its retry must not run the handler again.
    let app = serve(&store, layer(&store)).await;
    let key = fresh_key();
    let first = client()
        .post(app.url("/streamed"))
        .header("idempotency-key", &key)
        .body("x")
        .send()
        .await;
    match first {
        Ok(res) => {
            assert_eq!(res.status(), 201);
            assert!(res.text().await.is_err(), "the body was cut short");
        }
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
    }
    for _ in 0..2 {
        let again = post(&app.url("/streamed"), Some(&key), "x").await;
        assert_eq!(again.status, 500, "{again:?}");
        assert!(again.replayed(), "{again:?}");
        assert!(again.body.contains("processed once"), "{}", again.body);
        assert!(again.body.contains("answered 201"), "{}", again.body);
    }
    assert_eq!(count(&app.runs.streamed), 1);
}

/// The same promise when the body panics while it streams, or streams past the layer's limit
/// on the handler: the effect happened with the 201, so the retry gets the stored 500
/// "processed once", never a second run (both were taken for a handler failure and released).
pub async fn a_body_panicking_or_stuck_after_a_kept_status_is_never_rerun(store: Store) {
    let app = serve(
        &store,
        layer(&store).handler_limit(Duration::from_millis(300)),
    )
    .await;
    for (path, runs) in [
        ("/streamed_panic", &app.runs.streamed_panic),
        ("/streamed_stuck", &app.runs.streamed_stuck),
    ] {
        let key = fresh_key();
        let first = client()
            .post(app.url(path))
            .header("idempotency-key", &key)
            .body("x")
            .send()
            .await;
        if let Ok(res) = first {
            assert_eq!(res.status(), 201, "{path}");
            let text = res.text().await;
            assert!(text.is_err(), "{path}: the body was cut short: {text:?}");
        }
        let again = post(&app.url(path), Some(&key), "x").await;
        assert_eq!(again.status, 500, "{path}: {again:?}");
        assert!(again.replayed(), "{path}: {again:?}");
        assert!(
            again.body.contains("processed once"),
            "{path}: {}",
            again.body
        );
        assert_eq!(count(runs), 1, "{path}");
    }
}

/// Polls `cond` every 5 ms for up to 5 s.
pub async fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not met within 5s");
}

/// POSTs `chunks` to `/orders` with chunked transfer encoding over a raw socket; returns the
/// response head.
async fn raw_chunked(app: &App, key: &str, chunks: &[String]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = app.base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST /orders HTTP/1.1\r\nhost: {addr}\r\nidempotency-key: {key}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    for chunk in chunks {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    sock.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply);
    reply.split("\r\n\r\n").next().unwrap().to_owned()
}

/// Two instances of the service sharing one store: `keys` keys, each sent first to one
/// instance (alternating), run once and replayed by both; the same key with another body is
/// 422 on either; a key still running on one instance is 409 on the other, then replayed.
pub async fn instances_run_each_key_once(a: &App, b: &App, keys: usize) {
    for i in 0..keys {
        let key = fresh_key();
        let body = format!("item {i}");
        // Alternate which instance sees the key first.
        let (first, second) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let ran = post(&first.url("/orders"), Some(&key), &body).await;
        assert_eq!((ran.status, ran.replayed()), (201, false));
        for app in [second, first, second] {
            let replay = post(&app.url("/orders"), Some(&key), &body).await;
            assert_eq!(
                (replay.status, replay.replayed()),
                (201, true),
                "{replay:?}"
            );
            assert_eq!(replay.body, ran.body);
        }
        let other = post(&second.url("/orders"), Some(&key), "other").await;
        assert_eq!(other.status, 422);
    }
    assert_eq!(count(&a.runs.orders) + count(&b.runs.orders), keys);
    assert_eq!(count(&a.runs.orders), keys / 2);

    // A key still running on one instance is busy (409) on the other.
    let key = fresh_key();
    let running = tokio::spawn({
        let (url, key) = (a.url("/gated"), key.clone());
        async move { post(&url, Some(&key), "x").await }
    });
    wait_until(|| count(&a.runs.gated) == 1).await;
    assert_eq!(post(&b.url("/gated"), Some(&key), "x").await.status, 409);
    a.gate.add_permits(1);
    assert_eq!(running.await.unwrap().status, 201);
    assert!(post(&b.url("/gated"), Some(&key), "x").await.replayed());
    assert_eq!(count(&b.runs.gated), 0);
}

/// Two instances sharing one store: for each of `keys` keys, 16 requests at once spread over
/// both run the handler once; every other answer is its replay or a 409.
pub async fn concurrent_requests_across_instances_run_once(apps: &[App; 2], keys: usize) {
    let client = client();
    for _ in 0..keys {
        let key = fresh_key();
        let before = count(&apps[0].runs.slow) + count(&apps[1].runs.slow);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let req = client
                .post(apps[i % 2].url("/slow"))
                .header("idempotency-key", &key)
                .header("x-sleep-ms", "300")
                .body("x");
            tasks.spawn(send(req));
        }
        let replies = tasks.join_all().await;
        let runs = count(&apps[0].runs.slow) + count(&apps[1].runs.slow) - before;
        assert_eq!(runs, 1, "{replies:?}");
        let ran = replies
            .iter()
            .filter(|r| r.status == 201 && !r.replayed())
            .count();
        assert_eq!(ran, 1, "{replies:?}");
        assert!(
            replies.iter().all(|r| r.status == 201 || r.status == 409),
            "{replies:?}"
        );
    }
}

/// The store's own contract, below the layer: only the request whose claim holds a key can
/// renew, complete or release it. A claim whose lease ran out while its handler ran (its
/// renewals lost) and whose key another request then claimed can neither renew nor complete
/// nor release it: the other request's claim, then its response, stay. A completion of a key
/// left empty (the lease ran out, nobody claimed it since) is kept.
pub async fn claims_are_fenced_by_their_token(store: Store) {
    use axum::body::Bytes;
    let key = format!("fence:{}", fresh_key());
    let fingerprint = Fingerprint::of(None, b"amount=1");
    let first = InFlight {
        token: 1,
        fingerprint,
    };
    let second = InFlight {
        token: 2,
        fingerprint,
    };
    let response = |claim: &InFlight, status: u16| resilience_runtime::server::StoredResponse {
        token: claim.token,
        fingerprint,
        status: StatusCode::from_u16(status).unwrap(),
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"charged"),
    };
    let ttl = Duration::from_secs(60);
    let lease = Duration::from_millis(200);
    assert!(matches!(
        store.claim(&key, &first, lease).await.unwrap(),
        Claim::Acquired
    ));
    assert!(store.renew(&key, &first, lease).await.unwrap(), "its own");
    // The first claim's lease runs out; another request claims the key.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.get(&key).await.unwrap(), None, "the lease ran out");
    assert!(matches!(
        store
            .claim(&key, &second, Duration::from_secs(10))
            .await
            .unwrap(),
        Claim::Acquired
    ));
    // The first request, late: each of its writes is refused, and changes nothing.
    assert!(!store.renew(&key, &first, lease).await.unwrap(), "renew");
    assert!(
        !store
            .complete(&key, &first, &response(&first, 201), ttl)
            .await
            .unwrap(),
        "complete"
    );
    assert!(!store.release(&key, &first).await.unwrap(), "release");
    assert_eq!(
        store.get(&key).await.unwrap(),
        Some(Record::InFlight(second)),
        "the second claim holds"
    );
    // The second request completes; the first still cannot overwrite or remove its answer.
    assert!(
        store
            .complete(&key, &second, &response(&second, 201), ttl)
            .await
            .unwrap()
    );
    assert!(
        !store
            .complete(&key, &first, &response(&first, 500), ttl)
            .await
            .unwrap()
    );
    assert!(!store.release(&key, &first).await.unwrap());
    assert!(!store.release(&key, &second).await.unwrap(), "completed");
    assert_eq!(
        store.get(&key).await.unwrap(),
        Some(Record::Completed(response(&second, 201)))
    );
    // A claim whose lease ran out with nobody claiming the key since completes it.
    let key = format!("fence-empty:{}", fresh_key());
    assert!(matches!(
        store.claim(&key, &first, lease).await.unwrap(),
        Claim::Acquired
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store
            .complete(&key, &first, &response(&first, 201), ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(&key).await.unwrap(),
        Some(Record::Completed(response(&first, 201)))
    );
}
