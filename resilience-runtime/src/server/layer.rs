//! The tower layer: validate the key, claim it, run the handler once, detached from the
//! connection, then store and replay.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, request};
use http_body::Body;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::body::ResponseBody;
use super::record::{Fingerprint, InFlight, Record, StoredResponse};
use super::served::{Served, Tally};
use super::store::{BoxFuture, Claim, IdempotencyStore, StoreError};

type BoxError = Box<dyn StdError + Send + Sync>;
type ScopeFn = Arc<dyn Fn(&request::Parts) -> Option<String> + Send + Sync>;

pub use crate::http::IDEMPOTENT_REPLAYED;

/// The store key of a request: `"{method} {path} {key}"` (the full path the client sent), then
/// `" {scope}"` when the layer has a [scope](IdempotencyLayer::scope).
///
/// Unambiguous: methods and paths contain no space, and the key is written with `%` as `%25`
/// and a space as `%20` (a quoted key may hold spaces), so everything after the third space is
/// the scope. Useful to inspect or purge an entry by hand.
pub fn record_key(method: &Method, path: &str, key: &str, scope: Option<&str>) -> String {
    let mut out = String::with_capacity(
        method.as_str().len() + path.len() + key.len() + scope.map_or(0, |s| s.len() + 1) + 2,
    );
    out.push_str(method.as_str());
    out.push(' ');
    out.push_str(path);
    out.push(' ');
    for c in key.chars() {
        match c {
            '%' => out.push_str("%25"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    if let Some(scope) = scope {
        out.push(' ');
        out.push_str(scope);
    }
    out
}

/// Which handler answers are kept and replayed by default; the others release the key, so
/// that a retry runs the handler again.
///
/// Kept: everything but 5xx, 408 and 429 (and, whatever this function says, a 409 with
/// `Retry-After`: "in progress elsewhere", passed on from further down). Those say "not done,
/// try again": a server
/// failure whose effects a correct handler rolled back, a timeout, a throttle. Replaying them
/// would turn a transient failure into a permanent one for that key. Everything else, 4xx
/// included, is the answer to that request and is replayed as it was.
///
/// **The danger**: a handler that answers 5xx *after* its effect happened (the card was
/// charged, then writing the receipt failed) breaks that assumption, and a retry with the same
/// key runs the effect again. Either make such handlers roll back before answering 5xx, or keep
/// every answer with [`replay_every_status`].
pub fn default_replayable(status: StatusCode) -> bool {
    !(status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS)
}

/// Keeps and replays every answer, 5xx included: for handlers that may fail after their effect
/// happened. A transient failure then stays the answer for that key until the TTL; the client
/// needs a new key (a new operation) to try again.
pub fn replay_every_status(_: StatusCode) -> bool {
    true
}

#[derive(Clone)]
struct Config {
    store: Arc<dyn IdempotencyStore>,
    header: HeaderName,
    ttl: Duration,
    lease: Duration,
    require_key: bool,
    methods: Vec<Method>,
    max_body: usize,
    max_stored_body: usize,
    replayable: fn(StatusCode) -> bool,
    scope: Option<ScopeFn>,
    handler_limit: Duration,
    store_timeout: Duration,
    store_down_for: Duration,
    problem_docs: Option<Arc<str>>,
    detached: bool,
    /// The service's name its handlers' derived call keys are made in (`derive_call_keys`).
    derive_keys: Option<Arc<str>>,
    state: Arc<State>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("header", &self.header)
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .field("require_key", &self.require_key)
            .field("methods", &self.methods)
            .field("max_body", &self.max_body)
            .field("max_stored_body", &self.max_stored_body)
            .field("handler_limit", &self.handler_limit)
            .field("store_timeout", &self.store_timeout)
            .field("store_down_for", &self.store_down_for)
            .field("problem_docs", &self.problem_docs)
            .field("scoped", &self.scope.is_some())
            .field("derive_call_keys", &self.derive_keys)
            .finish_non_exhaustive()
    }
}

/// What the layer knows beyond one request: whether the store is known to be down, the
/// responses it could not store yet, and the keys whose handlers run here now.
#[derive(Default)]
struct State {
    /// Until when each part of the store ([`IdempotencyStore::part`]) is taken as down
    /// (grown to the highest part marked).
    down_until: Mutex<Vec<Option<Instant>>>,
    pending: Mutex<HashMap<Arc<str>, StoredResponse>>,
    /// The keys (and claims) whose handlers this layer runs now: a repeat is answered
    /// 409 from here whatever the store says, so that a claim the store lost (its lease ran
    /// out while the store was unreachable, evicted, a failover) never lets a repeat through
    /// this instance run the handler a second time. Removed by the claim that put it, not by
    /// another request's of the same key ending late.
    running: Mutex<HashMap<Arc<str>, InFlight>>,
    /// The withdrawals of claims this layer runs now (at most [`MAX_WITHDRAWING`]).
    withdrawing: std::sync::atomic::AtomicUsize,
    /// What the layer still does for requests whose callers may be gone (see [`Busy`]).
    busy: std::sync::atomic::AtomicUsize,
    /// Told when `busy` falls to zero.
    idle: tokio::sync::Notify,
}

/// One piece of work the layer does for a request whose caller may be gone, counted while it
/// lives: a handler in its task of its own, a response body streamed on past the kept bound,
/// an answer waiting for the store. [`IdempotencyLayer::drained`] waits for none to be left.
struct Busy(Arc<State>);

impl Busy {
    fn new(state: &Arc<State>) -> Busy {
        state.busy.fetch_add(1, Ordering::SeqCst);
        Busy(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// `work`, counted as [`Busy`] from now until it ends or is dropped.
fn counted<F: Future>(state: &Arc<State>, work: F) -> impl Future<Output = F::Output> + use<F> {
    let busy = Busy::new(state);
    async move {
        let out = work.await;
        drop(busy);
        out
    }
}

/// What [`State::local`] found.
enum Local {
    /// An answer this instance keeps because the store could not take it yet.
    Kept(StoredResponse),
    /// A handler of the key runs here now, for a request with this fingerprint.
    Running(Fingerprint),
    /// Neither: the store decides.
    Unknown,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one map or option operation: poison is harmless.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// How long the store's part `part` is still taken as down, if it is.
    fn down_for(&self, part: usize, now: Instant) -> Option<Duration> {
        lock(&self.down_until)
            .get(part)
            .copied()
            .flatten()
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    fn mark_down(&self, part: usize, for_: Duration) {
        let mut down = lock(&self.down_until);
        let part = part.min(super::STORE_PARTS - 1);
        if down.len() <= part {
            down.resize(part + 1, None);
        }
        down[part] = Some(super::after(Instant::now(), for_));
    }

    fn pending(&self, key: &str) -> Option<StoredResponse> {
        lock(&self.pending).get(key).cloned()
    }

    fn keep(&self, key: Arc<str>, stored: StoredResponse) {
        if lock(&self.pending).insert(key, stored).is_none() {
            super::served::pending(1);
        }
    }

    fn running(&self, key: &str) -> Option<Fingerprint> {
        lock(&self.running).get(key).map(|c| c.fingerprint)
    }

    /// What this instance knows of `key` without asking the store: an answer it keeps for the
    /// store, or a handler of it running here. A handler that ends keeps its answer (when the
    /// store could not take it) before it stops counting as running, so the answer is looked
    /// for again once no handler is found: a repeat arriving as a handler ends (on another
    /// worker thread) is replayed, not sent on to a store that may be down.
    fn local(&self, key: &str) -> Local {
        if let Some(stored) = self.pending(key) {
            return Local::Kept(stored);
        }
        #[cfg(test)]
        tests::between_the_looks(self, key);
        if let Some(fingerprint) = self.running(key) {
            return Local::Running(fingerprint);
        }
        match self.pending(key) {
            Some(stored) => Local::Kept(stored),
            None => Local::Unknown,
        }
    }

    fn forget(&self, key: &str) {
        if lock(&self.pending).remove(key).is_some() {
            super::served::pending(-1);
        }
    }
}

/// The server half of the idempotency contract, as a [`tower_layer::Layer`].
///
/// For the covered methods (POST and PATCH unless [`methods`](Self::methods) says otherwise), a
/// request with an `Idempotency-Key` runs the handler at most once per (key, method, path); a
/// repeat gets the stored answer. See the [module documentation](super) for every rule.
///
/// ```
/// use std::time::Duration;
/// use resilience_runtime::server::{IdempotencyLayer, MemoryStore};
///
/// let layer = IdempotencyLayer::new(MemoryStore::default())
///     .ttl(Duration::from_secs(6 * 3600))
///     .handler_limit(Duration::from_secs(30))
///     .require_key(true);
/// // axum: Router::new().route("/charges", post(charge)).layer(layer)
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

impl IdempotencyLayer {
    /// How long a response is replayed by default: 24 hours.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
    /// How long a claim outlives a vanished handler by default: 10 seconds.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
    /// The largest request body buffered for fingerprinting by default: 2 MiB.
    pub const DEFAULT_MAX_BODY: usize = 2 * 1024 * 1024;
    /// The largest response body stored for replay by default: 1 MiB.
    pub const DEFAULT_MAX_STORED_BODY: usize = 1024 * 1024;
    /// How long a handler may run by default before the layer cancels it: 60 seconds.
    pub const DEFAULT_HANDLER_LIMIT: Duration = Duration::from_secs(60);
    /// How long one store call may take by default: 250 ms.
    pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);
    /// How long a failed store is taken as down by default (answered 503 without asking it): 1 s.
    pub const DEFAULT_STORE_DOWN_FOR: Duration = Duration::from_secs(1);
    /// The longest key accepted, in bytes (after decoding a quoted key).
    pub const MAX_KEY_LEN: usize = 255;

    /// A layer keeping claims and responses in `store`, with the defaults: 24 h TTL, 10 s lease,
    /// key optional, POST and PATCH covered, `Idempotency-Key` header, 2 MiB request body limit,
    /// 1 MiB stored response limit, 60 s handler limit, 250 ms per store call.
    pub fn new(store: impl IdempotencyStore + 'static) -> IdempotencyLayer {
        IdempotencyLayer {
            config: Arc::new(Config {
                store: Arc::new(Unwinding(store)),
                header: crate::http::IDEMPOTENCY_KEY,
                ttl: Self::DEFAULT_TTL,
                lease: Self::DEFAULT_LEASE,
                require_key: false,
                methods: vec![Method::POST, Method::PATCH],
                max_body: Self::DEFAULT_MAX_BODY,
                max_stored_body: Self::DEFAULT_MAX_STORED_BODY,
                replayable: default_replayable,
                scope: None,
                handler_limit: Self::DEFAULT_HANDLER_LIMIT,
                store_timeout: Self::DEFAULT_STORE_TIMEOUT,
                store_down_for: Self::DEFAULT_STORE_DOWN_FOR,
                problem_docs: None,
                detached: true,
                derive_keys: None,
                state: Arc::default(),
            }),
        }
    }

    /// Waits until the layer has nothing left to do for requests already taken: no handler
    /// running in its task (a handler runs on after its caller is gone), no response body
    /// streamed on past [`max_stored_body`](Self::max_stored_body), no answer waiting for the
    /// store to take it. A server's graceful shutdown waits for its connections, not for these
    /// (a caller that gave up has closed its connection): await this after it, before the
    /// process exits, so that a retry of a request whose caller gave up finds its answer
    /// instead of running the handler again once the claim's lease runs out. An answer waits
    /// as long as the store is down: bound the wait.
    ///
    /// ```no_run
    /// # async fn f(listener: tokio::net::TcpListener, app: axum::Router,
    /// #     layer: resilience_runtime::server::IdempotencyLayer,
    /// #     signal: impl std::future::Future<Output = ()> + Send + 'static) {
    /// use std::time::Duration;
    /// axum::serve(listener, app).with_graceful_shutdown(signal).await.unwrap();
    /// let _ = tokio::time::timeout(Duration::from_secs(30), layer.drained()).await;
    /// # }
    /// ```
    pub fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let state = self.config.state.clone();
        async move {
            loop {
                let idle = state.idle.notified();
                let mut idle = std::pin::pin!(idle);
                idle.as_mut().enable();
                if state.busy.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        }
    }

    /// How long a completed response is replayed. `Duration::MAX` keeps it for good (as every
    /// duration of the layer, it is taken as at most about 100 years).
    ///
    /// # Panics
    /// If `ttl` is under a millisecond.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        assert!(ttl >= Duration::from_millis(1), "idempotency TTL under 1ms");
        self.config_mut().ttl = ttl.min(super::FOREVER);
        self
    }

    /// How long a claim lasts without renewal. While the handler runs, the layer renews the claim
    /// every third of the lease; if the instance dies mid-handler, the key frees up at most this
    /// long after.
    ///
    /// # Panics
    /// If `lease` is under a millisecond.
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(
            lease >= Duration::from_millis(1),
            "idempotency lease under 1ms"
        );
        self.config_mut().lease = lease.min(super::FOREVER);
        self
    }

    /// Gives the handler's `#[resilient]` calls with `idempotency_key = auto` keys derived from
    /// the request instead of fresh ones: from `service` (this service's own name, the same on
    /// every instance and version), the request's record key (scope, method, path, key) and
    /// its body's fingerprint, the function's path and the call's place: its order among that
    /// function's calls in the handler, or in the attempt of the `#[resilient]` call it is made
    /// in, under that call's place (a call made again by that call's retry or hedge is the
    /// same call, with the same key; a fallback's calls take theirs under the failed call's).
    /// A handler run again for the same request (its 5xx or 504 not
    /// kept and the key given back; an instance killed mid-handler, its lease run out) then
    /// sends its keyed calls under the keys it sent them with the first time, and a service
    /// called that replays by key applies each once.
    ///
    /// Only for a handler whose keyed calls follow from the request alone: the same calls, in
    /// the same order, with the same bodies, each run (no fresh id, timestamp or rate in a
    /// body: a service that fingerprints bodies answers the second run 422, and one that does
    /// not replays the first run's answer to it). Calls in a task the handler hands its
    /// context to (`with_inbound(current_inbound(), …)`) or spawns draw fresh keys. A function
    /// moved or renamed, or a compiler whose `type_name` writes its path otherwise, derives
    /// other keys: change them between deploys, not within one a retry may straddle. Off by
    /// default.
    pub fn derive_call_keys(mut self, service: impl Into<String>) -> Self {
        self.config_mut().derive_keys = Some(Arc::from(service.into()));
        self
    }

    /// The longest a claimed key's handler may run, reading of its response body included, up
    /// to what is kept of it (`max_stored_body`): the rest of a larger body streams on to the
    /// client past this limit, and is not stored (the `#[resilient]` calls it makes keep their
    /// own deadlines, not this limit).
    /// The handler runs detached from the connection, so the client going away does not stop
    /// it; this limit does. At the limit the layer drops the handler's future (cancelling it at
    /// its current `.await`) and answers 500 `handler-timed-out` in its place, stored whatever
    /// [`replayable`](Self::replayable) says: the handler was cut mid-effect, and a retry with
    /// the key gets the 500, never a second run. The handler's `#[resilient]` calls plan
    /// within this limit, so one still waiting at it (its own timeout and deadline longer) is
    /// cut a moment before the handler would be: the handler's answer to that (a 502), given
    /// once the limit's time has run out, is stored the same way, whatever `replayable` says
    /// (but a 409 with `Retry-After`). Default: 60 s.
    ///
    /// # Panics
    /// If `limit` is under a millisecond.
    pub fn handler_limit(mut self, limit: Duration) -> Self {
        assert!(
            limit >= Duration::from_millis(1),
            "idempotency handler limit under 1ms"
        );
        self.config_mut().handler_limit = limit.min(super::FOREVER);
        self
    }

    /// The longest one store call may take (claim, renew, complete, release). A call that takes
    /// longer counts as a store failure. Default: 250 ms.
    ///
    /// # Panics
    /// If `timeout` is under a millisecond.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            timeout >= Duration::from_millis(1),
            "idempotency store timeout under 1ms"
        );
        self.config_mut().store_timeout = timeout.min(super::FOREVER);
        self
    }

    /// After a claim that got no answer within the [store timeout](Self::store_timeout), how
    /// long the store is taken as down: keyed requests get 503 at once, without a store call
    /// (in a store of parts that fail apart, a Redis Cluster, only the keys of the part that
    /// did not answer: [`IdempotencyStore::part`]). Default: 1 s (that 503's `Retry-After` says how much of it is left, in whole seconds). Zero asks the
    /// store every time.
    pub fn store_down_for(mut self, for_: Duration) -> Self {
        self.config_mut().store_down_for = for_.min(super::FOREVER);
        self
    }

    /// Whether a covered request without a key is refused with 400 (`true`) or passed through
    /// to the handler without protection (`false`, the default). To require it on some routes
    /// only, apply a second layer with `true` to those routes only (axum: `route_layer` on a
    /// router holding those routes, or on their method routers): stacked inside another
    /// layer, it passes what that one claimed, and refuses what comes without a key.
    pub fn require_key(mut self, require: bool) -> Self {
        self.config_mut().require_key = require;
        self
    }

    /// The methods the layer covers; other methods pass through untouched. Default: POST, PATCH.
    ///
    /// A PUT or DELETE that carries a key is covered whatever this says: a keyed client (a
    /// `#[resilient]` function with `idempotency_key`) resends or hedges it on the strength of
    /// its key, so the handler must not run twice for it. Without a key it passes through,
    /// neither required nor counted as unprotected. A keyed POST or PATCH of a method left out
    /// passes through too, to a layer stacked inside this one on its route (with a store or
    /// a `scope` of its own), or to its handler unprotected: list every method a keyed client
    /// sends to the routes this layer alone guards.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config_mut().methods = methods.into_iter().collect();
        self
    }

    /// The header holding the key. Default: `Idempotency-Key`.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config_mut().header = name;
        self
    }

    /// The largest request body buffered (to fingerprint it); a larger keyed request gets 413.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config_mut().max_body = bytes;
        self
    }

    /// The largest response body stored for replay. A larger response reaches the first caller
    /// in full, streamed on once the layer has read past this bound, and the layer stores in its place a 500 `response-not-kept` problem saying the
    /// operation ran once and its response was not kept: a repeat never runs the handler again,
    /// and learns to look the result up another way. Default: 1 MiB.
    pub fn max_stored_body(mut self, bytes: usize) -> Self {
        self.config_mut().max_stored_body = bytes;
        self
    }

    /// Which statuses are stored and replayed. Default: [`default_replayable`] (all but 5xx,
    /// 408, 429); [`replay_every_status`] keeps everything. An answer given once the
    /// [`handler_limit`](Self::handler_limit)'s time has run out is stored whatever this
    /// says. Read the danger written on [`default_replayable`] before choosing.
    pub fn replayable(mut self, keep: fn(StatusCode) -> bool) -> Self {
        self.config_mut().replayable = keep;
        self
    }

    /// Scopes keys, e.g. per tenant or per authenticated user, so that one client can never
    /// receive a response stored for another by sending the same key. The function sees the
    /// request head (headers, extensions set by earlier layers) and returns the scope. A keyed
    /// request it returns `None` for is refused, 400 (`scope-missing`), the handler not run:
    /// not put in a namespace every such request would share (auth applied inside this layer,
    /// as axum's `route_layer` does, finds no principal yet; an anonymous route). Return a
    /// constant for callers meant to share one.
    pub fn scope(
        mut self,
        scope: impl Fn(&request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config_mut().scope = Some(Arc::new(scope));
        self
    }

    /// Where the application documents its idempotency errors. Without it, error answers are
    /// RFC 9457 problems with `"type": "about:blank"` and the status phrase as `title`. With it,
    /// the `type` is this URI plus a fragment naming the problem (`#key-missing`, `#key-invalid`,
    /// `#key-reused`, `#in-progress`, `#store-unavailable`, …), the `title` says what went
    /// wrong, and a `Link: <uri>; rel="describedby"` header points at the page, as the IETF
    /// idempotency-key draft shows.
    ///
    /// Returns an error if `uri` cannot be sent in a `Link` header.
    pub fn problem_docs(mut self, uri: &str) -> Result<Self, http::header::InvalidHeaderValue> {
        HeaderValue::from_str(&format!("<{uri}>; rel=\"describedby\""))?;
        self.config_mut().problem_docs = Some(uri.into());
        Ok(self)
    }

    /// Runs the handler inside the request future instead of a task of its own, so that a
    /// dropped connection cancels it. Only for measuring what detaching costs.
    #[doc(hidden)]
    pub fn __attached_for_benchmarks(mut self) -> Self {
        self.config_mut().detached = false;
        self
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> IdempotencyService<S> {
        IdempotencyService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`IdempotencyLayer`].
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The instance that was polled ready serves this request; keep a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();

        let covered = config.methods.contains(req.method())
            || (matches!(*req.method(), Method::PUT | Method::DELETE)
                && req.headers().contains_key(&config.header));
        if !covered {
            return passthrough(inner.call(req));
        }
        // A layer outside this one claimed the request already (two layers stacked on one
        // route): it replays and stores; this one would find that claim and answer 409 forever.
        // Its record is the one repeats are answered from, before they reach this layer: with
        // a scope here that names another caller than the outer layer's (the outer one has
        // none), one caller could be replayed another's answer. Refused, as a misconfiguration,
        // not passed.
        if let Some(outer) = req.extensions().get::<super::context_layer::Claimed>() {
            let Some(scope_of) = config.scope.as_ref() else {
                return passthrough(inner.call(req));
            };
            let outer = outer.scope.clone();
            let (parts, body) = req.into_parts();
            let here = scope_of(&parts);
            if here.is_some() && here.as_deref() == outer.as_deref() {
                return passthrough(inner.call(Request::from_parts(parts, body)));
            }
            // A request this layer finds no caller in is refused as a conflict too, not with
            // its own 400: the outer layer would keep a 4xx for the key.
            let tally = Tally::of(&parts.extensions);
            tracing::error!(
                path = full_path(&parts.uri, &parts.extensions),
                "an IdempotencyLayer with a scope is inside one that claimed the request without that scope: repeats are answered from the outer layer's record, which does not tell these callers apart; give the outer layer the same scope"
            );
            tally.count(Served::ScopeConflict);
            return answer(problem(
                &config,
                SCOPE_CONFLICT,
                "This route's idempotency layer scopes keys by caller, and the layer around it, which stores and replays this request, does not scope them the same way: one caller could be answered another's response. It was not run.",
            ));
        }
        let tally = Tally::of(req.extensions());
        let key = match key_of(req.headers(), &config.header) {
            Ok(Some(key)) => key.into_owned(),
            Ok(None) if config.require_key => {
                tally.count(Served::KeyMissing);
                return answer(problem(
                    &config,
                    KEY_MISSING,
                    &format!(
                        "{} {} requires an {} header: a unique value per operation, the same on every retry of it.",
                        req.method(),
                        full_path(req.uri(), req.extensions()),
                        display(&config.header),
                    ),
                ));
            }
            Ok(None) => {
                tally.count(Served::Unprotected);
                return passthrough(inner.call(req));
            }
            Err(why) => {
                tally.count(Served::KeyInvalid);
                return answer(problem(
                    &config,
                    KEY_INVALID,
                    &format!("The {} header {why}.", display(&config.header)),
                ));
            }
        };
        Box::pin(run(config, inner, req, key, tally))
    }
}

fn passthrough<F, B, E>(fut: F) -> BoxFuture<'static, Result<Response<ResponseBody<B>>, E>>
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
{
    Box::pin(async move { Ok(fut.await?.map(ResponseBody::inner)) })
}

fn answer<B: Send + 'static, E: Send + 'static>(
    res: Response<ResponseBody<B>>,
) -> BoxFuture<'static, Result<Response<ResponseBody<B>>, E>> {
    Box::pin(std::future::ready(Ok(res)))
}

/// The key, if there is exactly one valid one; `Err` says what is wrong with it.
///
/// The IETF draft makes the header a Structured Field string (`"abc"`); payment APIs send the
/// bare value (`abc`). Both are the same key: a value that starts with `"` is parsed as an
/// RFC 9651 item that must be a string (escapes decoded, parameters ignored); any other value
/// is taken as it is, and must be visible ASCII.
fn key_of<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<Cow<'h, str>>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("appears more than once; send exactly one".into());
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err("is empty; send 1 to 255 visible ASCII characters, e.g. a UUID".into());
    }
    let key = if bytes[0] == b'"' {
        let item = sfv::Parser::new(bytes).parse_item().map_err(|e| {
            format!(
                "is not a valid Structured Field string ({e}); send a quoted string such as \"8e03978e-40d5-43e8-bc93-6894a57f9324\", or the bare value"
            )
        })?;
        match item.bare_item.as_string() {
            Some(s) => Cow::Owned(s.as_str().to_owned()),
            None => {
                return Err(
                    "starts with a quote but is not a Structured Field string; close the quotes and end the value there".into(),
                );
            }
        }
    } else {
        if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(
                "may only hold visible ASCII characters (no spaces or control bytes) unless it is a quoted string".into(),
            );
        }
        Cow::Borrowed(value.to_str().map_err(|_| "is not ASCII".to_owned())?)
    };
    if key.is_empty() {
        return Err("is an empty string; send 1 to 255 characters, e.g. a UUID".into());
    }
    if key.len() > IdempotencyLayer::MAX_KEY_LEN {
        return Err(format!(
            "is {} bytes long; the limit is {}",
            key.len(),
            IdempotencyLayer::MAX_KEY_LEN
        ));
    }
    Ok(Some(key))
}

/// The request's path as its client sent it. Inside an axum router nested under a prefix
/// (`Router::nest("/tenants/{tenant}", …)`) the URI a layer sees has the prefix stripped, so that
/// every tenant's `/charges` would be one path; axum keeps the original in `OriginalUri`.
fn full_path<'a>(uri: &'a http::Uri, extensions: &'a http::Extensions) -> &'a str {
    match extensions.get::<axum::extract::OriginalUri>() {
        Some(original) => original.0.path(),
        None => uri.path(),
    }
}

fn display(header: &HeaderName) -> &str {
    if header == crate::http::IDEMPOTENCY_KEY {
        "Idempotency-Key"
    } else {
        header.as_str()
    }
}

async fn run<S, ReqBody, ResBody>(
    config: Arc<Config>,
    inner: S,
    req: Request<ReqBody>,
    key: String,
    tally: Tally,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    // Keys scoped by caller: a request the scope finds no caller in (no principal where auth
    // runs inside this layer, an anonymous route) is refused, not put in one namespace shared
    // by every such request, where a guessed key would replay another's answer.
    let scope = config.scope.as_ref().and_then(|f| f(&parts));
    if config.scope.is_some() && scope.is_none() {
        tally.count(Served::ScopeMissing);
        return Ok(problem(&config, SCOPE_MISSING, SCOPE_MISSING_DETAIL));
    }
    let too_large = || {
        tally.count(Served::BodyTooLarge);
        problem(
            &config,
            BODY_TOO_LARGE,
            &format!(
                "Requests with an idempotency key are buffered to be fingerprinted; the limit is {} bytes.",
                config.max_body
            ),
        )
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_body as u64) {
        return Ok(too_large());
    }
    let body = match Limited::new(body, config.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Ok(too_large()),
        // A limit of the service's own outside this layer (tower-http's `RequestBodyLimit`),
        // its error inside the body's: too large all the same, by that limit.
        Err(e) if over_a_limit(&*e) => {
            tally.count(Served::BodyTooLarge);
            return Ok(problem(
                &config,
                BODY_TOO_LARGE,
                "The request body is larger than the service accepts.",
            ));
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not read a keyed request body");
            tally.count(Served::BodyUnreadable);
            return Ok(problem(
                &config,
                BODY_UNREADABLE,
                "The request body could not be read to the end.",
            ));
        }
    };

    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let fingerprint = Fingerprint::of_request(parts.uri.query(), content_type, &body);
    let path = full_path(&parts.uri, &parts.extensions);
    let store_key: Arc<str> = record_key(&parts.method, path, &key, scope.as_deref()).into();
    let reused = || {
        tally.count(Served::KeyReused);
        problem(
            &config,
            KEY_REUSED,
            &format!(
                "This key was already used for a different request (body or query string) to {} {}; use a new key for a new operation.",
                parts.method, path
            ),
        )
    };

    match config.state.local(&store_key) {
        // A response this instance holds because the store could not take it yet.
        Local::Kept(stored) => {
            if stored.fingerprint != fingerprint {
                return Ok(reused());
            }
            tally.count(Served::Replayed);
            return Ok(replay(stored));
        }
        // A handler of this key runs here now: still in progress, whatever the store says.
        Local::Running(running) => {
            if running != fingerprint {
                return Ok(reused());
            }
            tally.count(Served::InProgress);
            return Ok(in_progress(&config));
        }
        Local::Unknown => {}
    }
    let part = config.store.part(&store_key);
    if let Some(left) = config.state.down_for(part, Instant::now()) {
        tally.count(Served::StoreUnavailable);
        return Ok(unavailable(&config, left));
    }

    let claim = InFlight {
        token: uuid::Uuid::new_v4().as_u128(),
        fingerprint,
    };
    // Dropped while the claim command is on its way (the client gave up and hyper dropped this
    // future), the claim may be written with no handler to hold it: taken back then, or every
    // retry would meet 409 for the whole lease.
    let unanswered = Unanswered(Some(Claimed::of(&config, store_key.clone(), claim)));
    let claimed = tokio::time::timeout(
        config.store_timeout,
        config.store.claim(&store_key, &claim, config.lease),
    )
    .await;
    unanswered.answered();
    match claimed {
        Ok(Ok(Claim::Acquired)) => {}
        // Our own claim: a store client that sent the claim command again after a lost reply
        // (a Redis Cluster client retries for up to a second) finds the claim it made.
        Ok(Ok(Claim::Existing(Record::InFlight(c)))) if c.token == claim.token => {}
        Ok(Ok(Claim::Existing(record))) if *record.fingerprint() != fingerprint => {
            return Ok(reused());
        }
        Ok(Ok(Claim::Existing(Record::InFlight(_)))) => {
            tally.count(Served::InProgress);
            return Ok(in_progress(&config));
        }
        Ok(Ok(Claim::Existing(Record::Completed(stored)))) => {
            tracing::debug!(key = %store_key, status = %stored.status, "idempotent replay");
            tally.count(Served::Replayed);
            return Ok(replay(stored));
        }
        failed => {
            // Asked again after the store is no longer taken as down, or when a store full
            // for a while (its responses too young to evict) says it will have room: at once,
            // after another failure that marked nothing.
            let (error, again) = match failed {
                Ok(Err(e)) => {
                    let again = e.room_after().unwrap_or_default();
                    (e, again)
                }
                _ => {
                    // A store that fails fast (full, refusing) is answered fast anyway; one
                    // that does not answer in time is taken as down for a while.
                    config.state.mark_down(part, config.store_down_for);
                    let e = StoreError::new(format!(
                        "no answer within the store timeout of {:?}",
                        config.store_timeout
                    ));
                    (e, config.store_down_for)
                }
            };
            tracing::warn!(key = %store_key, error = %error, "idempotency claim failed; refusing the request");
            // The claim command may still run when the store wakes up: take it back, so that
            // the retry this 503 invites is not met by a claim nobody holds.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                spawn_withdraw(&rt, Claimed::of(&config, store_key, claim));
            }
            tally.count(Served::StoreUnavailable);
            return Ok(unavailable(&config, again));
        }
    }

    // The handler runs on past its caller's attempt, up to the layer's limit: the calls it
    // makes plan within that limit (here, and in a `ContextLayer` inside this layer).
    let until = Some(super::after(Instant::now(), config.handler_limit));
    let parent = config.derive_keys.as_deref().map(|service| {
        crate::context::ParentKey::new(service, &store_key, claim.fingerprint.as_bytes())
    });
    let mut parts = parts;
    parts.extensions.insert(super::context_layer::Claimed {
        until,
        parent: parent.clone(),
        scope: scope.map(Into::into),
    });
    let req = Request::from_parts(parts, ReqBody::from(body));
    let job = handle(config.clone(), inner, req, store_key, claim, tally.clone());
    let rt = match tokio::runtime::Handle::try_current() {
        Ok(rt) if config.detached => rt,
        // Outside a tokio runtime there is nothing to detach onto: run it here.
        _ => return carry_context(job, until, parent).await,
    };
    // Detached: dropping this future (the client went away, a proxy gave up) leaves the
    // handler running to its end, and its response is stored for the retry.
    let job = counted(&config.state, job);
    match rt.spawn(carry_context(job, until, parent)).await {
        Ok(res) => res,
        // Only when the runtime shuts down under it.
        Err(e) => {
            tracing::warn!(error = %e, "idempotent handler task did not finish");
            tally.count(Served::HandlerFailed);
            Ok(problem(
                &config,
                HANDLER_FAILED,
                "The handler did not finish; retry later with the same key.",
            ))
        }
    }
}

/// `job`, to run in a task of its own with what it would have had in the request's own task:
/// the current tracing span (and OpenTelemetry context), so that the handler's spans and the
/// traces of its outbound calls stay under the request's; and the trace and request id of a
/// [`ContextLayer`](super::ContextLayer) outside this layer, which the handler's
/// `#[resilient]` calls join.
///
/// Not the caller's deadline: it is the time its attempt still waits, and a claimed handler
/// runs on past it so that the retry gets its answer (a gateway slower than the shop's
/// attempt timeout must still finish the charge). The handler's calls plan within the layer's
/// own limit on the handler instead, with or without a `ContextLayer`; and `parent`, with
/// `derive_call_keys`, is what their `idempotency_key = auto` keys derive from.
fn carry_context<F: Future + Send>(
    job: F,
    until: Option<Instant>,
    parent: Option<Arc<crate::context::ParentKey>>,
) -> impl Future<Output = F::Output> + Send {
    use tracing::Instrument as _;
    let mut inbound = crate::context::INBOUND
        .try_with(crate::Inbound::clone)
        .unwrap_or_default();
    inbound.deadline = until;
    inbound.parent_key = parent;
    crate::context::inbound_in_use();
    let job = job.instrument(tracing::Span::current());
    #[cfg(feature = "opentelemetry")]
    let job = opentelemetry::context::FutureExt::with_current_context(job);
    crate::context::INBOUND.scope(inbound, job)
}

/// Whether the time the handler's calls were given (the layer's limit, which they plan
/// within: see `run`) has run out: a call of it may have been cut mid-effect by that deadline,
/// and whatever the handler makes of that failure (an answer, a panic, an error) must not run
/// it again for the key. False outside a claimed handler's task.
fn cut_at_limit() -> bool {
    crate::context::INBOUND
        .try_with(|i| i.deadline)
        .ok()
        .flatten()
        .is_some_and(|d| Instant::now() >= d)
}

/// Runs the claimed request's handler to its end (or to the hard limit), then stores or
/// releases. Runs in a task of its own, so no connection can cancel it.
async fn handle<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    req: Request<ReqBody>,
    key: Arc<str>,
    claim: InFlight,
    tally: Tally,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let guard = ClaimGuard::new(&config, key, claim);
    let keep = config.replayable;
    // The handler and its response body share the layer's limit on the handler.
    let limit_at = super::after(Instant::now(), config.handler_limit);
    // A panic in `call` itself (a synchronous layer inside this one, `MapRequestLayer`'s
    // closure) is the handler's, as one while its future is polled.
    let answered = match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(req))) {
        // A panic of what the handler held as it is dropped (cut at the limit): the handler
        // is still the one cut at the limit, kept as such.
        Ok(called) => until_caught(limit_at, called, &guard.key, "idempotent handler").await,
        Err(panic) => Ok(Err(panic)),
    };
    let res = match answered {
        Ok(Ok(Ok(res))) => res,
        Ok(Ok(Err(e))) => {
            // Failed once the time its calls were given had run out: kept as a handler's
            // answer then is (below); the first caller gets the service's error.
            if cut_at_limit() {
                tracing::error!(key = %guard.key, "idempotent handler failed after the layer's limit cut its calls");
                let res = Stored::problem(&config, claim, HANDLER_FAILED, CUT_DETAIL);
                let _ = guard
                    .finish_with::<ResBody>(&config, res, &tally, Served::HandlerFailed, true)
                    .await;
                return Err(e);
            }
            tally.count(Served::Released);
            guard.release().await;
            return Err(e);
        }
        Ok(Err(panic)) => {
            tracing::error!(key = %guard.key, panic = panic_message(&*panic), "idempotent handler panicked");
            let cut = cut_at_limit();
            let res = Stored::problem(
                &config,
                claim,
                HANDLER_FAILED,
                if cut {
                    CUT_DETAIL
                } else {
                    "The handler failed while processing this request."
                },
            );
            // A panic on a call the limit cut (`charge(..).await.expect(..)`): as the
            // handler's answer to that failure is, kept whatever the layer keeps.
            let keep = cut || (config.replayable)(res.status);
            return Ok(guard
                .finish_with(&config, res, &tally, Served::HandlerFailed, keep)
                .await);
        }
        Err(_) => {
            tracing::error!(key = %guard.key, limit = ?config.handler_limit, "idempotent handler cancelled at the layer's limit");
            let res = Stored::problem(
                &config,
                claim,
                HANDLER_TIMED_OUT,
                &format!(
                    "The handler did not finish within the server's limit of {} ms and was cancelled; what it had done by then is unknown. Do not resend it: look the result up instead.",
                    config.handler_limit.as_millis()
                ),
            );
            // Cut mid-effect (a charge made, its receipt not yet written): whatever the
            // layer keeps, a repeat must not run the handler again.
            return Ok(guard
                .finish_with(&config, res, &tally, Served::HandlerTimedOut, true)
                .await);
        }
    };
    // A 409 with `Retry-After` says "in progress elsewhere, ask again later" (the answer of
    // an idempotency layer further down, passed on by a handler that forwards the key): kept,
    // every repeat would get it for the TTL and the operation would never run.
    let try_later = res.status() == StatusCode::CONFLICT && res.headers().contains_key(RETRY_AFTER);
    // Answered once the time its calls were given had run out (the layer's limit, which they
    // plan within: see `run`): a call of it may have been cut mid-effect by that deadline (a
    // gateway slow to answer a charge it made), and the handler's answer to that failure (a
    // 502, a 504) comes just before the limit would cut it. Kept as the limit's own cut is,
    // whatever the layer keeps: a repeat must not run the handler again.
    if (!keep(res.status()) && !cut_at_limit()) || try_later {
        tally.count(Served::Released);
        guard.release().await;
        return Ok(res.map(ResponseBody::inner));
    }
    // The handler answered a status it stands by: its effect happened. From here on, whatever
    // becomes of the body (an error, a panic while it streams, the limit reached), a repeat
    // must not run the handler again.
    let (parts, body) = res.into_parts();
    let max = config.max_stored_body;
    // What was read stays here whatever ends the reading (an error, a panic, the limit): the
    // first caller gets it, cut short, as it would without the layer.
    let mut read = ReadSoFar::default();
    // A panic of the body's drop (cut at the limit) caught too: the handler answered, and a
    // repeat must not run it again.
    let reading = read_up_to(Box::pin(body), max, &mut read);
    let collected = until_caught(limit_at, reading, &guard.key, "idempotent response body").await;
    let failed: BoxError = match collected {
        Ok(Ok(Ok(None))) => {
            return Ok(kept(&config, guard, &tally, claim, parts, read.take()).await);
        }
        Ok(Ok(Ok(Some(rest)))) => {
            let prefix = read.take();
            // Larger than the layer keeps: a problem stored in its place, and the caller gets
            // what was read, then the rest as the handler streams it (a long export is not
            // held whole in memory).
            tracing::warn!(key = %guard.key, limit = max, "idempotent response too large to keep; storing a problem in its place");
            let problem = Stored::problem(
                &config,
                claim,
                RESPONSE_NOT_KEPT,
                &format!(
                    "The request was processed once; its response was larger than the {max} bytes the server keeps for replay. Do not resend it: look the result up instead."
                ),
            );
            let key = guard.key.clone();
            guard
                .complete_counted(&config, problem, &tally, Served::ResponseNotKept)
                .await;
            let body = match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    // The rest is read by a task of its own, which reads on to its end when the
                    // caller is gone (its connection dropped, or this task's answer dropped
                    // before it came): the handler's work may be in its body (an export that
                    // marks what it sent), and it was stored as processed once.
                    let (tx, rx) = tokio::sync::mpsc::channel(PUMPED_FRAMES);
                    let hint = rest.size_hint();
                    // The calls its body makes are not held to the handler's limit, which
                    // this reading outlasts while the caller reads (they were refused once it
                    // passed, nothing sent): they keep their own deadlines; their keys derive
                    // as the handler's do.
                    let parent = crate::context::INBOUND
                        .try_with(|i| i.parent_key.clone())
                        .ok()
                        .flatten();
                    let pumped = pump(rest, tx, key, config.handler_limit);
                    rt.spawn(carry_context(counted(&config.state, pumped), None, parent));
                    ResponseBody::pumped(prefix, rx, hint)
                }
                Err(_) => ResponseBody::prefixed(prefix, rest),
            };
            return Ok(Response::from_parts(parts, body));
        }
        Ok(Ok(Err(e))) => e,
        Ok(Err(panic)) => format!("the response body panicked: {}", panic_message(&*panic)).into(),
        Err(_) => format!(
            "the response body did not end within the server's limit of {} ms",
            config.handler_limit.as_millis()
        )
        .into(),
    };
    tracing::error!(key = %guard.key, status = %parts.status, error = %failed, "idempotent response body failed; storing a problem in its place");
    let stored = Stored::problem(
        &config,
        claim,
        RESPONSE_FAILED,
        &format!(
            "The request was processed once (the handler answered {}), but its response body failed before its end and was not kept. Do not resend it: look the result up instead.",
            parts.status.as_u16()
        ),
    );
    guard
        .complete_counted(&config, stored, &tally, Served::ResponseFailed)
        .await;
    Ok(Response::from_parts(
        parts,
        ResponseBody::failed(read.take(), failed),
    ))
}

/// What the layer has read of a response body.
#[derive(Default)]
struct ReadSoFar {
    /// The first chunk, while it is the only one (the usual whole body), kept without a copy.
    first: Option<Bytes>,
    /// Every chunk, once there were two.
    joined: bytes::BytesMut,
}

impl ReadSoFar {
    fn push(&mut self, data: Bytes) {
        match self.first.take() {
            None if self.joined.is_empty() => self.first = Some(data),
            held => {
                if let Some(held) = held {
                    self.joined.extend_from_slice(&held);
                }
                self.joined.extend_from_slice(&data);
            }
        }
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(self.joined.len(), Bytes::len)
    }

    fn take(&mut self) -> Bytes {
        self.first
            .take()
            .unwrap_or_else(|| std::mem::take(&mut self.joined).freeze())
    }
}

/// Reads `body` into `read` to its end (`None`), or until that holds more than `max` bytes
/// (the rest unread). Trailers are not kept. The body's error is converted at once: its own
/// type need not be `Send`.
async fn read_up_to<B>(
    mut body: Pin<Box<B>>,
    max: usize,
    read: &mut ReadSoFar,
) -> Result<Option<Pin<Box<B>>>, BoxError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Into::into)?.into_data() else {
            continue;
        };
        read.push(data);
        if read.len() > max {
            return Ok(Some(body));
        }
    }
    Ok(None)
}

/// `fut` until `at`, a panic while it is polled its output's `Err`, and dropped where a panic
/// of its drop (what it held, cut at `at`) is caught and logged, as `what`'s of `key`, instead
/// of killing the task that still has to store or release the claim.
async fn until_caught<F: Future>(
    at: Instant,
    fut: F,
    key: &str,
    what: &str,
) -> Result<Result<F::Output, Box<dyn Any + Send>>, tokio::time::error::Elapsed> {
    let mut timed = std::pin::pin!(Some(tokio::time::timeout_at(
        at,
        CatchUnwind { inner: fut }
    )));
    let out = timed.as_mut().as_pin_mut().expect("just set").await;
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| timed.set(None))) {
        tracing::error!(
            key,
            panic = panic_message(&*panic),
            "{what} panicked as it was dropped"
        );
    }
    out
}

/// The frames a pumped body reads ahead of its caller.
const PUMPED_FRAMES: usize = 4;

/// Reads the rest of a response body too large to keep, handing its frames to the caller while
/// it reads them (`tx`), and on to its end without them once it is gone, for up to `limit`
/// (the layer's limit on a handler) from then. An error or a panic of the body ends it,
/// passed on.
async fn pump<B>(
    mut body: Pin<Box<B>>,
    tx: tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, BoxError>>,
    key: Arc<str>,
    limit: Duration,
) where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut tx = Some(tx);
    // When the caller went, and so when the reading stops at the latest.
    let mut until = None;
    loop {
        // The body's error made a `BoxError` as it comes: the task holds no `B::Error`.
        let frame = CatchUnwind {
            inner: async { Some(body.frame().await?.map_err(Into::into)) },
        };
        let next = match (&tx, until) {
            // Read at the caller's pace, however long it takes, until it goes (a body that
            // waits is not waited on to find that out).
            (Some(to), _) => tokio::select! {
                next = frame => Some(next),
                () = to.closed() => None,
            },
            (None, Some(until)) => match tokio::time::timeout_at(until, frame).await {
                Ok(next) => Some(next),
                Err(_) => {
                    tracing::error!(key = %key, limit = ?limit, "idempotent response body cut at the layer's limit after its caller went");
                    break;
                }
            },
            (None, None) => unreachable!("the limit is set as the caller goes"),
        };
        let Some(next) = next else {
            tx = None;
            until = Some(super::after(Instant::now(), limit));
            continue;
        };
        let frame = match next {
            Ok(Some(Ok(frame))) => Ok(frame),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => break,
            Err(panic) => {
                Err(format!("the response body panicked: {}", panic_message(&*panic)).into())
            }
        };
        let failed = frame.is_err();
        if let Some(to) = &tx
            && to.send(frame).await.is_err()
        {
            // The caller is gone: the body is read on, to its end.
            tx = None;
            until = Some(super::after(Instant::now(), limit));
        }
        if failed {
            break;
        }
    }
}

/// A kept status whose body was read to its end, within the bound the layer keeps: stored and
/// answered.
async fn kept<ResBody>(
    config: &Arc<Config>,
    guard: ClaimGuard,
    tally: &Tally,
    claim: InFlight,
    parts: http::response::Parts,
    body: Bytes,
) -> Response<ResponseBody<ResBody>> {
    let stored = StoredResponse {
        token: claim.token,
        fingerprint: claim.fingerprint,
        status: parts.status,
        headers: storable(&parts.headers),
        body: body.clone(),
    };
    guard
        .complete_counted(config, stored, tally, Served::Handled)
        .await;
    Response::from_parts(parts, ResponseBody::full(body))
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// The store the layer is given, its panics turned into errors: a store of the application's
/// own that panics (an `unwrap` on what it read) is a store that failed, not a handler task
/// that died, whose claim would then be given back after the handler ran (and the retry run
/// it again). A completion that panicked is kept and written back, as one that failed.
struct Unwinding<S>(S);

impl<S> Unwinding<S> {
    fn guard<'a, T: Send + 'a>(
        call: impl FnOnce() -> BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let panicked = |panic: Box<dyn Any + Send>| {
            StoreError::new(format!("the store panicked: {}", panic_message(&*panic)))
        };
        match std::panic::catch_unwind(AssertUnwindSafe(call)) {
            Ok(future) => Box::pin(async move {
                CatchUnwind { inner: future }
                    .await
                    .unwrap_or_else(|panic| Err(panicked(panic)))
            }),
            Err(panic) => Box::pin(std::future::ready(Err(panicked(panic)))),
        }
    }
}

impl<S: IdempotencyStore> IdempotencyStore for Unwinding<S> {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Self::guard(|| self.0.claim(key, claim, lease))
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Self::guard(|| self.0.renew(key, claim, lease))
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Self::guard(|| self.0.complete(key, claim, response, ttl))
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Self::guard(|| self.0.release(key, claim))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Self::guard(|| self.0.get(key))
    }

    /// A store's own `part` that panics, or names a part beyond the last, is one part: the
    /// last.
    fn part(&self, key: &str) -> usize {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.0.part(key)))
            .map_or(super::STORE_PARTS - 1, |p| p.min(super::STORE_PARTS - 1))
    }
}

pin_project! {
    /// Turns a panic while polling `inner` into `Err(payload)`.
    struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn replay<B>(stored: StoredResponse) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::full(stored.body));
    *res.status_mut() = stored.status;
    *res.headers_mut() = stored.headers;
    res.headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    res
}

/// 409: a request with this key is still being processed.
fn in_progress<B>(config: &Config) -> Response<ResponseBody<B>> {
    ask_again_later(
        config,
        IN_PROGRESS,
        "A request with this idempotency key is still being processed; retry later to receive its response.",
    )
}

/// The store cannot be reached, and is taken as down for `left` more: `Retry-After` says when
/// a retry can find it again (whole seconds, rounded up; at least 1).
fn unavailable<B>(config: &Config, left: Duration) -> Response<ResponseBody<B>> {
    let mut res = ask_again_later(
        config,
        STORE_UNAVAILABLE,
        "The request was not processed; retry later with the same key.",
    );
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    if secs > 1 {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

/// A problem the client may ask again about with the same key, after `Retry-After: 1`.
fn ask_again_later<B>(config: &Config, kind: Problem, detail: &str) -> Response<ResponseBody<B>> {
    let mut res = problem(config, kind, detail);
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// The headers worth replaying: not those of one connection (the hop-by-hop ones, and any the
/// response's `Connection` names), nor the length (recomputed), nor the `Date` of that answer
/// (the server dates each answer it sends).
fn storable(headers: &HeaderMap) -> HeaderMap {
    const SKIP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "idempotent-replayed",
        "date",
    ];
    let named = |name: &HeaderName| {
        headers.get_all(http::header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
            })
        })
    };
    let mut out = HeaderMap::with_capacity(headers.keys_len());
    for (name, value) in headers {
        if !SKIP.contains(&name.as_str()) && !named(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// One kind of error answer of the layer.
#[derive(Clone, Copy)]
struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
}

const KEY_MISSING: Problem = Problem {
    status: StatusCode::BAD_REQUEST,
    slug: "key-missing",
    title: "Idempotency-Key is missing",
};
const KEY_INVALID: Problem = Problem {
    status: StatusCode::BAD_REQUEST,
    slug: "key-invalid",
    title: "Idempotency-Key is malformed",
};
const SCOPE_MISSING: Problem = Problem {
    status: StatusCode::BAD_REQUEST,
    slug: "scope-missing",
    title: "Idempotency-Key cannot be scoped to a caller",
};
const CUT_DETAIL: &str = "The handler failed after the server's limit cut what it was doing; what it had done by then is unknown. Do not resend it: look the result up instead.";
const SCOPE_MISSING_DETAIL: &str = "This service scopes idempotency keys by caller, and this request names none (is authentication applied before the idempotency layer?). It was not run.";
const SCOPE_CONFLICT: Problem = Problem {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    slug: "scope-conflict",
    title: "Idempotency-Key scopes of stacked layers differ",
};
const BODY_TOO_LARGE: Problem = Problem {
    status: StatusCode::PAYLOAD_TOO_LARGE,
    slug: "body-too-large",
    title: "Request body too large to fingerprint",
};
const BODY_UNREADABLE: Problem = Problem {
    status: StatusCode::BAD_REQUEST,
    slug: "body-unreadable",
    title: "Request body unreadable",
};
const KEY_REUSED: Problem = Problem {
    status: StatusCode::UNPROCESSABLE_ENTITY,
    slug: "key-reused",
    title: "Idempotency-Key is already used",
};
const IN_PROGRESS: Problem = Problem {
    status: StatusCode::CONFLICT,
    slug: "in-progress",
    title: "A request with this Idempotency-Key is outstanding",
};
const STORE_UNAVAILABLE: Problem = Problem {
    status: StatusCode::SERVICE_UNAVAILABLE,
    slug: "store-unavailable",
    title: "Idempotency store unavailable",
};
const HANDLER_FAILED: Problem = Problem {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    slug: "handler-failed",
    title: "The handler failed",
};
const HANDLER_TIMED_OUT: Problem = Problem {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    slug: "handler-timed-out",
    title: "The handler exceeded the server's time limit",
};
const RESPONSE_NOT_KEPT: Problem = Problem {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    slug: "response-not-kept",
    title: "The response was too large to keep for replay",
};

const RESPONSE_FAILED: Problem = Problem {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    slug: "response-failed",
    title: "The response failed after the request was processed",
};

/// An RFC 9457 problem: status, headers, JSON body.
fn problem_parts(config: &Config, p: Problem, detail: &str) -> (HeaderMap, Bytes) {
    let (ty, title): (Cow<str>, &str) = match &config.problem_docs {
        Some(docs) => (format!("{docs}#{}", p.slug).into(), p.title),
        None => (
            "about:blank".into(),
            p.status.canonical_reason().unwrap_or(p.title),
        ),
    };
    let body = format!(
        r#"{{"type":"{}","title":"{}","status":{},"detail":"{}"}}"#,
        json_escape(&ty),
        json_escape(title),
        p.status.as_u16(),
        json_escape(detail)
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(docs) = &config.problem_docs
        && let Ok(link) = HeaderValue::from_str(&format!("<{docs}>; rel=\"describedby\""))
    {
        headers.insert(LINK, link);
    }
    (headers, Bytes::from(body))
}

fn problem<B>(config: &Config, p: Problem, detail: &str) -> Response<ResponseBody<B>> {
    let (headers, body) = problem_parts(config, p, detail);
    let mut res = Response::new(ResponseBody::full(body));
    *res.status_mut() = p.status;
    *res.headers_mut() = headers;
    res
}

/// A problem the layer answers in the handler's place (panic, limit, response too large).
struct Stored;

/// Whether a body's error is, or is caused by, a body limit's (`http_body_util::Limited`'s,
/// which tower-http's `RequestBodyLimit` uses).
fn over_a_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    // Bounded: a chain of sources ends, and no body error is this deep.
    for _ in 0..8 {
        let Some(e) = cur else { return false };
        if e.is::<LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// What goes in the place of `stored`, a response the store refused as larger than it ever
/// holds: a problem saying it was processed once and not kept; in the place of a problem, the
/// same bare (no headers, no body: the least a repeat can be answered with, for a store bound
/// below even the problem); `None` for a bare answer (the store keeps nothing at all).
fn stand_in(config: &Config, claim: InFlight, stored: &StoredResponse) -> Option<StoredResponse> {
    if stored.headers.is_empty() && stored.body.is_empty() {
        return None;
    }
    let problem = Stored::problem(
        config,
        claim,
        RESPONSE_NOT_KEPT,
        "The request was processed once; its response was larger than the store keeps for replay. Do not resend it: look the result up instead.",
    );
    if stored.status == problem.status
        && stored.headers.get(http::header::CONTENT_TYPE)
            == problem.headers.get(http::header::CONTENT_TYPE)
    {
        let mut bare = problem;
        bare.headers = HeaderMap::new();
        bare.body = Bytes::new();
        Some(bare)
    } else {
        Some(problem)
    }
}

impl Stored {
    fn problem(config: &Config, claim: InFlight, p: Problem, detail: &str) -> StoredResponse {
        let (headers, body) = problem_parts(config, p, detail);
        StoredResponse {
            token: claim.token,
            fingerprint: claim.fingerprint,
            status: p.status,
            headers,
            body,
        }
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Owns a claim while the handler runs: renews its lease in the background, and releases it if
/// the handler ends without a response to store (or the task is dropped with the runtime).
struct ClaimGuard {
    store: Arc<dyn IdempotencyStore>,
    state: Arc<State>,
    key: Arc<str>,
    claim: InFlight,
    store_timeout: Duration,
    renewal: Option<Renewal>,
    armed: bool,
}

struct Renewal {
    task: tokio::task::AbortHandle,
    done: Arc<AtomicBool>,
}

impl Renewal {
    fn stop(self) {
        self.done.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

impl ClaimGuard {
    fn new(config: &Config, key: Arc<str>, claim: InFlight) -> ClaimGuard {
        lock(&config.state.running).insert(key.clone(), claim);
        let renewal = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let done = Arc::new(AtomicBool::new(false));
            let task = rt.spawn(renew(Claimed::of(config, key.clone(), claim), done.clone()));
            Renewal {
                task: task.abort_handle(),
                done,
            }
        });
        ClaimGuard {
            store: config.store.clone(),
            state: config.state.clone(),
            key,
            claim,
            store_timeout: config.store_timeout,
            renewal,
            armed: true,
        }
    }

    fn stop_renewal(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.stop();
        }
    }

    /// Stores `res` if `keep`, else releases the key; answers `res`. Counts `outcome`, or
    /// `claim_lost` when storing found the claim another request's.
    async fn finish_with<B>(
        self,
        config: &Arc<Config>,
        res: StoredResponse,
        tally: &Tally,
        outcome: Served,
        keep: bool,
    ) -> Response<ResponseBody<B>> {
        let answer = Response::new(ResponseBody::full(res.body.clone()));
        let (mut parts, body) = answer.into_parts();
        parts.status = res.status;
        parts.headers = res.headers.clone();
        if keep {
            self.complete_counted(config, res, tally, outcome).await;
        } else {
            self.release().await;
            tally.count(outcome);
        }
        Response::from_parts(parts, body)
    }

    /// Stores the response in place of the claim, and counts `outcome`, or `claim_lost` when
    /// the claim was no longer this request's (another request took the key: the handler may
    /// have run twice). If the store fails, keeps the response and the claim, answers repeats
    /// from memory, writes it when the store is back, and counts then, once it knows which.
    async fn complete_counted(
        mut self,
        config: &Arc<Config>,
        stored: StoredResponse,
        tally: &Tally,
        outcome: Served,
    ) {
        let mut stored = stored;
        let mut done = self.complete_once(config, &stored).await;
        // Larger than the store ever holds: kept waiting for it, it would never be written
        // (and the claim renewed for the whole TTL). A smaller answer goes in its place.
        while let Ok(Err(e)) = &done
            && e.is_too_large()
        {
            match stand_in(config, self.claim, &stored) {
                Some(smaller) => {
                    tracing::warn!(key = %self.key, error = %e, "idempotent response too large for the store; storing a smaller answer in its place");
                    stored = smaller;
                    done = self.complete_once(config, &stored).await;
                }
                // Not even a bare one: nothing can be kept. The claim is left to lapse at its
                // lease (repeats meet 409 until then, then run the handler again): said at
                // error level.
                None => {
                    tracing::error!(key = %self.key, error = %e, "the store keeps no response at all, not even an empty one: a repeat after the claim's lease runs the handler again");
                    tally.count(outcome);
                    self.stop_renewal();
                    self.armed = false;
                    return;
                }
            }
        }
        match done {
            Ok(Ok(true)) => tally.count(outcome),
            Ok(Ok(false)) => {
                // Not known to be its own (no answer to the read counts as not): the alarm.
                if stored_already(&*self.store, &self.key, &stored, self.store_timeout).await
                    == Some(true)
                {
                    tally.count(outcome);
                } else {
                    tracing::warn!(
                        key = %self.key,
                        "idempotent response not stored: the claim expired and another request took the key (is the lease shorter than the handler?)"
                    );
                    tally.count(Served::ClaimLost);
                }
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", self.store_timeout),
                };
                tracing::warn!(key = %self.key, error = %error, "idempotent response not stored yet; keeping it and the claim until the store is back");
                config.state.keep(self.key.clone(), stored.clone());
                let renewal = self.renewal.take();
                let write = write_back(
                    config.clone(),
                    self.key.clone(),
                    self.claim,
                    stored,
                    renewal,
                    (tally.clone(), outcome),
                );
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(counted(&config.state, write));
                    }
                    // Nothing to write it back with: counted now.
                    Err(_) => tally.count(outcome),
                }
            }
        }
        self.stop_renewal();
        self.armed = false;
    }

    /// One write of `stored` as the claim's answer, within the store's time.
    async fn complete_once(
        &self,
        config: &Config,
        stored: &StoredResponse,
    ) -> Result<Result<bool, StoreError>, tokio::time::error::Elapsed> {
        tokio::time::timeout(
            self.store_timeout,
            self.store
                .complete(&self.key, &self.claim, stored, config.ttl),
        )
        .await
    }

    /// Gives the key back, so that a repeat runs the handler again.
    async fn release(mut self) {
        self.stop_renewal();
        let released = tokio::time::timeout(
            self.store_timeout,
            self.store.release(&self.key, &self.claim),
        )
        .await;
        if !matches!(released, Ok(Ok(_))) {
            tracing::warn!(key = %self.key, "idempotency claim not released; it will expire with its lease");
        }
        self.armed = false;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.stop_renewal();
        // The handler is over (answered, stored or kept, released, or dropped). Its own entry
        // only: a request of the same key may have claimed it since (this one's released).
        let mut running = lock(&self.state.running);
        if running
            .get(&self.key)
            .is_some_and(|c| c.token == self.claim.token)
        {
            running.remove(&self.key);
        }
        drop(running);
        if !self.armed {
            return;
        }
        // Dropped mid-handler: the runtime dropped the handler's task, or a store's own future
        // panicked while the guard held the claim. Bounded as every store call is.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, key, claim) = (self.store.clone(), self.key.clone(), self.claim);
            let limit = self.store_timeout;
            rt.spawn(async move {
                match tokio::time::timeout(limit, store.release(&key, &claim)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(key = %key, error = %e, "idempotency claim not released; it will expire with its lease");
                    }
                    Err(_) => {
                        tracing::warn!(key = %key, "idempotency claim not released in time; it will expire with its lease");
                    }
                }
            });
        }
    }
}

/// Writes a response the store could not take, retrying with backoff until it does or the TTL
/// has passed; the claim keeps being renewed meanwhile, and this instance answers repeats from
/// memory. Counts the request's `outcome` once written, or `claim_lost` when the key was found
/// taken by another request (its claim ran out while this instance could not reach the store,
/// and a repeat through another instance ran the handler again).
fn write_back(
    config: Arc<Config>,
    key: Arc<str>,
    claim: InFlight,
    stored: StoredResponse,
    renewal: Option<Renewal>,
    (tally, outcome): (Tally, Served),
) -> impl Future<Output = ()> + Send {
    // Forgotten however this task ends: written, given up on, or dropped with its runtime,
    // never polled included (spawned on a runtime shutting down, or with none to spawn on):
    // the process-wide pending count must not keep it.
    let forget = Forget(config.state.clone(), key.clone());
    write_back_kept(
        config,
        key,
        claim,
        stored,
        renewal,
        (tally, outcome),
        forget,
    )
}

async fn write_back_kept(
    config: Arc<Config>,
    key: Arc<str>,
    claim: InFlight,
    mut stored: StoredResponse,
    renewal: Option<Renewal>,
    (tally, outcome): (Tally, Served),
    _forget: Forget,
) {
    let give_up = super::after(Instant::now(), config.ttl);
    let mut delay = Duration::from_millis(20);
    let since = Instant::now();
    let counted = loop {
        tokio::time::sleep(delay).await;
        let cap = if since.elapsed() < WRITE_BACK_QUICK_FOR {
            RENEW_RETRY
        } else {
            RENEW_RETRY_MAX
        };
        delay = (delay * 2).min(cap);
        let done = tokio::time::timeout(
            config.store_timeout,
            config.store.complete(&key, &claim, &stored, config.ttl),
        )
        .await;
        match done {
            Ok(Ok(true)) => {
                tracing::info!(key = %key, "idempotent response stored after the store came back");
                break outcome;
            }
            Ok(Ok(false)) => {
                // The claim is gone and the key taken: by the completion this loop sent
                // earlier (a command that timed out but ran), or by another request after the
                // lease ran out.
                match stored_already(&*config.store, &key, &stored, config.store_timeout).await {
                    Some(true) => break outcome,
                    // No answer to the read: asked again on the next round, within the TTL.
                    None if Instant::now() < give_up => continue,
                    None => break outcome,
                    Some(false) => {}
                }
                tracing::warn!(
                    key = %key,
                    "idempotent response not stored: its claim ran out while the store could not be reached, and another request took the key (the handler may have run twice)"
                );
                break Served::ClaimLost;
            }
            // Larger than the store ever holds (a store of one's own, refusing it now that it
            // answers): written in a smaller answer's place, as a first write refused so is,
            // not asked again for the whole TTL with its claim renewed.
            Ok(Err(e)) if e.is_too_large() => match stand_in(&config, claim, &stored) {
                Some(smaller) => {
                    tracing::warn!(key = %key, error = %e, "idempotent response too large for the store; storing a smaller answer in its place");
                    stored = smaller;
                    config.state.keep(key.clone(), stored.clone());
                    delay = Duration::from_millis(20);
                }
                None => {
                    tracing::error!(key = %key, error = %e, "the store keeps no response at all, not even an empty one: a repeat after the claim's lease runs the handler again");
                    break outcome;
                }
            },
            _ if Instant::now() >= give_up => {
                tracing::warn!(key = %key, "idempotent response never stored: the store stayed down for the whole TTL");
                break outcome;
            }
            _ => {}
        }
    };
    tally.count(counted);
    if let Some(renewal) = renewal {
        renewal.stop();
    }
}

/// Forgets a kept response when dropped.
struct Forget(Arc<State>, Arc<str>);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.forget(&self.1);
    }
}

/// Whether the key already holds `stored`, completed by this request's own claim: a completion
/// carried out although its reply was lost (a store client resending the command, a command
/// that timed out and ran). Anything else (another request's claim or answer, however alike,
/// nothing) is not; `None` when the store did not answer the read.
async fn stored_already(
    store: &dyn IdempotencyStore,
    key: &str,
    stored: &StoredResponse,
    store_timeout: Duration,
) -> Option<bool> {
    match tokio::time::timeout(store_timeout, store.get(key)).await {
        Ok(Ok(found)) => Some(matches!(
            found,
            Some(Record::Completed(found)) if found.token == stored.token && found == *stored
        )),
        _ => None,
    }
}

/// A claim command on its way: if dropped before its answer came, the claim is withdrawn
/// (a no-op when it was never written: only the claim's own token releases it).
struct Unanswered(Option<Claimed>);

/// A claim this instance sent, with what it takes to take it back.
struct Claimed {
    store: Arc<dyn IdempotencyStore>,
    key: Arc<str>,
    claim: InFlight,
    lease: Duration,
    store_timeout: Duration,
    state: Arc<State>,
}

impl Claimed {
    fn of(config: &Config, key: Arc<str>, claim: InFlight) -> Claimed {
        Claimed {
            store: config.store.clone(),
            key,
            claim,
            lease: config.lease,
            store_timeout: config.store_timeout,
            state: config.state.clone(),
        }
    }
}

impl Unanswered {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(claimed) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            tracing::debug!(key = %claimed.key, "dropped while claiming a key: claim withdrawn");
            spawn_withdraw(&rt, claimed);
        }
    }
}

/// The most withdrawals a layer runs at once: a store that refuses every claim (down, its
/// connection refused) would otherwise be sent the releases of every keyed request refused
/// for it, each tried again for half a minute. Past the bound a claim is left to its lease
/// (10 s by default), which takes it back as surely, later.
const MAX_WITHDRAWING: usize = 64;

fn spawn_withdraw(rt: &tokio::runtime::Handle, claimed: Claimed) {
    use std::sync::atomic::Ordering;
    let state = claimed.state.clone();
    if state.withdrawing.fetch_add(1, Ordering::AcqRel) >= MAX_WITHDRAWING {
        state.withdrawing.fetch_sub(1, Ordering::AcqRel);
        tracing::debug!(key = %claimed.key, "{MAX_WITHDRAWING} claims being taken back already: this one is left to its lease");
        return;
    }
    struct Running(Arc<State>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.withdrawing.fetch_sub(1, Ordering::AcqRel);
        }
    }
    rt.spawn(async move {
        let _running = Running(state);
        withdraw(claimed).await;
    });
}

/// Takes back a claim whose command failed or timed out: it may still run once the store
/// answers again. Retries for a while, since the store may still be frozen; a release that
/// found no claim is tried again until [`RESEND_HORIZON`] has passed, since the claim command
/// may still land after it (a Redis Cluster client sends it again after a failover).
async fn withdraw(c: Claimed) {
    let started = Instant::now();
    let give_up = super::after(started, c.lease.max(Duration::from_secs(30)));
    let settled = super::after(started, RESEND_HORIZON);
    let mut delay = Duration::from_millis(20);
    loop {
        let done = tokio::time::timeout(
            c.lease.max(c.store_timeout),
            c.store.release(&c.key, &c.claim),
        )
        .await;
        let now = Instant::now();
        match done {
            Ok(Ok(true)) => return,
            Ok(Ok(false)) if now >= settled => return,
            _ if now >= give_up => return,
            _ => {}
        }
        tokio::time::sleep(delay).await;
        // Every second while a late claim may still land; then, a store still refusing, less
        // often.
        let most = if now < settled { 1 } else { 4 };
        delay = (delay * 2).min(Duration::from_secs(most));
    }
}

/// How long after a claim command was given up on it may still be carried out: a Redis Cluster
/// client sends a command again for up to a second after a failover; twice that, for margin.
const RESEND_HORIZON: Duration = Duration::from_secs(2);

async fn renew(claimed: Claimed, done: Arc<AtomicBool>) {
    let Claimed {
        store,
        key,
        claim,
        lease,
        store_timeout,
        state,
    } = claimed;
    let every = (lease / 3).max(Duration::from_millis(1));
    // A renewal (or a claim made again) that failed is tried again soon, not a third of the
    // lease later: the claim may have run out, or the store come back without it (a Redis
    // restarted without persistence), and until this instance claims the key again another
    // may run the handler.
    // While the store keeps failing, less and less often (a long outage is not asked ten times
    // a second per running handler): 100 ms, doubled up to a second, never more than `every`;
    // a streak of failures is logged at warn once, then at debug, and its end at info.
    let mut retry = RENEW_RETRY.min(every);
    let mut next = super::after(Instant::now(), every);
    let mut lost_told = false;
    let mut failing = false;
    loop {
        tokio::time::sleep_until(next).await;
        let failed = match tokio::time::timeout(store_timeout, store.renew(&key, &claim, lease))
            .await
        {
            Ok(Ok(true)) => false,
            Ok(Ok(false)) => {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                // The claim ran out while the store could not be reached (or was evicted, or
                // lost in a failover): put it back, unless another request took the key
                // meanwhile. This instance answers repeats 409 all along.
                // The handler may end (its answer releasing the key) while the claim is on its
                // way, and this task be stopped mid-claim: the claim is then nobody's, and is
                // taken back, as a request's claim given up on is.
                let unanswered = Unanswered(Some(Claimed {
                    store: store.clone(),
                    key: key.clone(),
                    claim,
                    lease,
                    store_timeout,
                    state: state.clone(),
                }));
                let again =
                    tokio::time::timeout(store_timeout, store.claim(&key, &claim, lease)).await;
                if !done.load(Ordering::Relaxed) {
                    unanswered.answered();
                } else {
                    return;
                }
                match again {
                    Ok(Ok(Claim::Acquired)) => {
                        tracing::warn!(key = %key, "idempotency claim had run out while the handler runs; claimed again");
                        false
                    }
                    Ok(Ok(Claim::Existing(Record::InFlight(c)))) if c.token == claim.token => false,
                    // This claim's own answer, written while the renewal was on its way (the
                    // store had not yet said so to the completion): the handler is done.
                    Ok(Ok(Claim::Existing(Record::Completed(r)))) if r.token == claim.token => {
                        return;
                    }
                    // Another request's record: told once, and asked again at the usual pace
                    // (a claim a Cluster client resent after a failover is taken back within
                    // seconds, and the key is then this handler's to claim again).
                    Ok(Ok(_)) => {
                        if !lost_told {
                            lost_told = true;
                            tracing::warn!(key = %key, "idempotency claim lost while the handler runs; a repeat may have run it again");
                        }
                        false
                    }
                    Ok(Err(e)) => {
                        renewal_failed(
                            failing,
                            &key,
                            Some(&e),
                            "idempotency claim ran out and could not be claimed again yet",
                        );
                        true
                    }
                    Err(_) => {
                        renewal_failed(
                            failing,
                            &key,
                            None,
                            "idempotency claim ran out and could not be claimed again yet: store timeout",
                        );
                        true
                    }
                }
            }
            Ok(Err(e)) => {
                renewal_failed(failing, &key, Some(&e), "idempotency claim not renewed");
                true
            }
            Err(_) => {
                renewal_failed(
                    failing,
                    &key,
                    None,
                    "idempotency claim not renewed: store timeout",
                );
                true
            }
        };
        let wait = if failed {
            let now = retry;
            retry = (retry * 2).min(RENEW_RETRY_MAX).min(every);
            failing = true;
            now
        } else {
            if failing {
                tracing::info!(key = %key, "idempotency claim renewed again");
            }
            retry = RENEW_RETRY.min(every);
            failing = false;
            every
        };
        next = super::after(Instant::now(), wait);
    }
}

/// A renewal that failed, told at warn for the first of a streak of failures, at debug for
/// the others (a long outage is not a warning ten times a second per running handler).
fn renewal_failed(
    failing: bool,
    key: &str,
    error: Option<&dyn std::fmt::Display>,
    what: &'static str,
) {
    let error = error.map(tracing::field::display);
    if failing {
        tracing::debug!(key, error, "{what}");
    } else {
        tracing::warn!(key, error, "{what}");
    }
}

/// How soon a renewal that failed is tried again, and the longest a kept response waits
/// between two tries at writing it back in an outage's first seconds: the window another
/// instance has, once the store is back, to run a handler whose claim the store lost.
pub(crate) const RENEW_RETRY: Duration = Duration::from_millis(100);

/// The longest wait between two tries (a renewal, a write-back) in a long outage.
const RENEW_RETRY_MAX: Duration = Duration::from_secs(1);

/// How long into an outage the write-back keeps trying every 100 ms before it slows down.
const WRITE_BACK_QUICK_FOR: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A step of another thread, run between two of `State::local`'s looks.
    type Step = fn(&State, &str);

    thread_local! {
        /// What happens on another thread between `State::local`'s first look at the kept
        /// answers and its look at the running handlers, in the test that sets it.
        static BETWEEN: Cell<Option<Step>> = const { Cell::new(None) };
    }

    pub(super) fn between_the_looks(state: &State, key: &str) {
        if let Some(f) = BETWEEN.with(Cell::take) {
            f(state, key);
        }
    }

    fn stored(fingerprint: Fingerprint) -> StoredResponse {
        StoredResponse {
            token: 7,
            fingerprint,
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"charged"),
        }
    }

    /// A response kept for a store that could not take it is forgotten with its write-back's
    /// future, even one never polled (spawned on a runtime shutting down, or made with no
    /// runtime to spawn it on): it stayed in memory, and in the pending gauge, for good.
    #[test]
    fn a_kept_response_is_forgotten_with_a_write_back_never_polled() {
        let layer = IdempotencyLayer::new(Arc::new(super::super::MemoryStore::default()));
        let config = layer.config.clone();
        let key: Arc<str> = "POST /exports k".into();
        let fingerprint = Fingerprint::of_request(None, None, b"{}");
        let claim = InFlight {
            token: 1,
            fingerprint,
        };
        let stored = Stored::problem(&config, claim, HANDLER_FAILED, "kept");
        config.state.keep(key.clone(), stored.clone());
        assert!(matches!(config.state.local(&key), Local::Kept(_)));
        let write = write_back(
            config.clone(),
            key.clone(),
            claim,
            stored,
            None,
            (Tally::default(), Served::Handled),
        );
        drop(write);
        assert!(matches!(config.state.local(&key), Local::Unknown));
    }

    /// A request's handler that ends after another request of its key claimed it (this one
    /// answered a 5xx and released; a repeat claimed meanwhile) leaves the other's entry among
    /// the running: a repeat through this instance is still answered "in progress" from here
    /// should the store lose that claim.
    #[test]
    fn a_handler_ending_late_leaves_the_next_claims_entry() {
        let layer = IdempotencyLayer::new(Arc::new(super::super::MemoryStore::default()));
        let config = layer.config.clone();
        let key: Arc<str> = "POST /charges k".into();
        let fingerprint = Fingerprint::of_request(None, None, b"{}");
        let mut first = ClaimGuard::new(
            &config,
            key.clone(),
            InFlight {
                token: 1,
                fingerprint,
            },
        );
        first.armed = false;
        let second = ClaimGuard::new(
            &config,
            key.clone(),
            InFlight {
                token: 2,
                fingerprint,
            },
        );
        drop(first);
        assert!(matches!(config.state.local(&key), Local::Running(f) if f == fingerprint));
        let mut second = second;
        second.armed = false;
        drop(second);
        assert!(matches!(config.state.local(&key), Local::Unknown));
    }

    /// A repeat that looks for a kept answer just before the handler of its key ends (keeping
    /// its answer, the store being down, then no longer running) is replayed that answer:
    /// not answered "in progress", nor sent on to the store.
    #[test]
    fn a_repeat_as_its_handler_ends_is_replayed() {
        let fingerprint = Fingerprint::of_request(None, None, b"{}");
        let state = State::default();
        let key: Arc<str> = "POST /charges k".into();
        lock(&state.running).insert(
            key.clone(),
            InFlight {
                token: 1,
                fingerprint,
            },
        );
        assert!(matches!(state.local(&key), Local::Running(f) if f == fingerprint));
        // The handler ends between the repeat's two looks.
        BETWEEN.with(|b| {
            b.set(Some(|state, key| {
                state.keep(
                    key.into(),
                    stored(Fingerprint::of_request(None, None, b"{}")),
                );
                lock(&state.running).remove(key);
            }));
        });
        match state.local(&key) {
            Local::Kept(s) => assert_eq!(
                (s.status, &s.body[..]),
                (StatusCode::CREATED, &b"charged"[..])
            ),
            Local::Running(_) => panic!("answered in progress: the handler had ended"),
            Local::Unknown => panic!("sent on to the store, with the answer kept here"),
        }
        // Kept: found at the first look, with no handler running.
        assert!(matches!(state.local(&key), Local::Kept(_)));
        state.forget(&key);
        assert!(matches!(state.local(&key), Local::Unknown));
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("idempotency-key", HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn key(values: &[&[u8]]) -> Result<Option<String>, String> {
        key_of(&headers(values), &crate::http::IDEMPOTENCY_KEY).map(|k| k.map(Cow::into_owned))
    }

    #[test]
    fn keys_are_one_to_255_visible_ascii_bytes() {
        let long = [b'k'; 255];
        let too_long = [b'k'; 256];
        assert_eq!(key(&[]), Ok(None));
        assert_eq!(key(&[b"a-b_c.9~!"]), Ok(Some("a-b_c.9~!".into())));
        assert!(key(&[&long]).is_ok());
        for bad in [&b""[..], b"a b", b"a\tb", b"caf\xc3\xa9", &too_long] {
            assert!(key(&[bad]).is_err(), "{bad:?}");
        }
        assert!(key(&[b"a", b"b"]).is_err());
    }

    #[test]
    fn a_quoted_key_is_a_structured_field_string_and_equals_the_bare_one() {
        assert_eq!(key(&[b"\"abc\""]), key(&[b"abc"]));
        assert_eq!(
            key(&[b"\"8e03978e-40d5-43e8-bc93-6894a57f9324\""]),
            Ok(Some("8e03978e-40d5-43e8-bc93-6894a57f9324".into()))
        );
        // Escapes are decoded; spaces are allowed inside quotes.
        assert_eq!(key(&[br#""a\"b\\c d""#]), Ok(Some(r#"a"b\c d"#.into())));
        // Parameters are ignored.
        assert_eq!(key(&[b"\"abc\";v=1"]), Ok(Some("abc".into())));
        let mut long = vec![b'"'];
        long.extend([b'k'; 256]);
        long.push(b'"');
        for bad in [
            &b"\"abc"[..],
            b"\"a\\x\"",
            b"\"\"",
            b"\"abc\" trailing",
            b"\"a\tb\"",
            &long,
        ] {
            assert!(key(&[bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn record_keys_cannot_collide() {
        let k = |m: &Method, p, k, s| record_key(m, p, k, s);
        assert_eq!(k(&Method::POST, "/a", "k", None), "POST /a k");
        assert_ne!(
            k(&Method::POST, "/a", "k", None),
            k(&Method::PATCH, "/a", "k", None)
        );
        assert_ne!(
            k(&Method::POST, "/a", "k", None),
            k(&Method::POST, "/a", "k", Some(""))
        );
        assert_eq!(
            k(&Method::POST, "/a", "k", Some("tenant 1")),
            "POST /a k tenant 1"
        );
        // A quoted key with a space cannot pose as a scope.
        assert_ne!(
            k(&Method::POST, "/a", "k t", None),
            k(&Method::POST, "/a", "k", Some("t"))
        );
        assert_ne!(
            k(&Method::POST, "/a", "k%20t", None),
            k(&Method::POST, "/a", "k t", None)
        );
    }

    #[test]
    fn transient_answers_are_not_replayed() {
        for s in [200, 201, 204, 303, 400, 401, 404, 409, 422] {
            assert!(default_replayable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(!default_replayable(StatusCode::from_u16(s).unwrap()), "{s}");
            assert!(replay_every_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn connection_headers_are_not_stored() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("content-length", HeaderValue::from_static("3"));
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        let kept = storable(&h);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept.get_all("set-cookie").iter().count(), 2);
    }

    /// A header the response's `Connection` names is of that connection only (RFC 9110
    /// 7.6.1), and its `Date` was the time of that answer: neither is replayed (the server
    /// dates each answer it sends itself).
    #[test]
    fn headers_named_by_connection_and_the_date_are_not_stored() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("X-Hop, keep-alive"));
        h.append("connection", HeaderValue::from_static("x-other"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("2"));
        h.insert(
            "date",
            HeaderValue::from_static("Sun, 06 Dec 2026 10:00:00 GMT"),
        );
        h.insert("x-kept", HeaderValue::from_static("3"));
        let kept = storable(&h);
        let names: Vec<&str> = kept.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    fn config(layer: &IdempotencyLayer) -> &Config {
        &layer.config
    }

    #[test]
    fn problems_are_rfc_9457_json() {
        let plain = IdempotencyLayer::new(super::super::MemoryStore::default());
        let res = problem::<()>(config(&plain), IN_PROGRESS, "d \"q\"\\\n");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert!(res.headers().get(LINK).is_none());
        let (_, body) = problem_parts(config(&plain), IN_PROGRESS, "d");
        assert_eq!(
            body,
            r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"d"}"#
        );
        assert_eq!(json_escape("t \"q\" d\\\n"), r#"t \"q\" d\\\u000a"#);

        let docs = plain
            .problem_docs("https://docs.example/idempotency")
            .unwrap();
        let (headers, body) = problem_parts(config(&docs), KEY_REUSED, "d");
        assert_eq!(
            body,
            r#"{"type":"https://docs.example/idempotency#key-reused","title":"Idempotency-Key is already used","status":422,"detail":"d"}"#
        );
        assert_eq!(
            headers[LINK],
            r#"<https://docs.example/idempotency>; rel="describedby""#
        );
        assert!(
            IdempotencyLayer::new(super::super::MemoryStore::default())
                .problem_docs("bad\nuri")
                .is_err()
        );
    }
}
