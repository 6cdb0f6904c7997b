//! The tower layer: validate the key, claim it, run the handler once, store and replay.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, request};
use http_body::Body;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use tower_layer::Layer;
use tower_service::Service;

use super::body::ResponseBody;
use super::record::{Fingerprint, InFlight, Record, StoredResponse};
use super::store::{BoxFuture, Claim, IdempotencyStore};

type BoxError = Box<dyn StdError + Send + Sync>;
type ScopeFn = Arc<dyn Fn(&request::Parts) -> Option<String> + Send + Sync>;

/// `Idempotent-Replayed: true` marks a response replayed from the store: the handler did not run.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The store key of a request: `"{method} {path} {key}"`, then `" {scope}"` when the layer has
/// a [scope](IdempotencyLayer::scope).
///
/// Unambiguous: methods, paths and valid keys contain no space, so everything after the third
/// space is the scope. Useful to inspect or purge an entry by hand.
pub fn record_key(method: &Method, path: &str, key: &str, scope: Option<&str>) -> String {
    let mut out = String::with_capacity(
        method.as_str().len() + path.len() + key.len() + scope.map_or(0, |s| s.len() + 1) + 2,
    );
    out.push_str(method.as_str());
    out.push(' ');
    out.push_str(path);
    out.push(' ');
    out.push_str(key);
    if let Some(scope) = scope {
        out.push(' ');
        out.push_str(scope);
    }
    out
}

/// Which handler answers are kept and replayed; the others release the key, so that a retry
/// runs the handler again.
///
/// Kept: everything but 5xx, 408 and 429. Those three say "not done, try again": a server
/// failure whose effects a correct handler rolled back, a timeout, a throttle. Replaying them
/// would turn a transient failure into a permanent one for that key. Everything else, 4xx
/// included, is the answer to that request and is replayed as it was.
pub fn default_replayable(status: StatusCode) -> bool {
    !(status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS)
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
    replayable: fn(StatusCode) -> bool,
    scope: Option<ScopeFn>,
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
            .field("scoped", &self.scope.is_some())
            .finish_non_exhaustive()
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
    /// The longest key accepted, in bytes.
    pub const MAX_KEY_LEN: usize = 255;

    /// A layer keeping claims and responses in `store`, with the defaults: 24 h TTL, 10 s lease,
    /// key optional, POST and PATCH covered, `Idempotency-Key` header, 2 MiB body limit.
    pub fn new(store: impl IdempotencyStore + 'static) -> IdempotencyLayer {
        IdempotencyLayer {
            config: Arc::new(Config {
                store: Arc::new(store),
                header: crate::http::IDEMPOTENCY_KEY,
                ttl: Self::DEFAULT_TTL,
                lease: Self::DEFAULT_LEASE,
                require_key: false,
                methods: vec![Method::POST, Method::PATCH],
                max_body: Self::DEFAULT_MAX_BODY,
                replayable: default_replayable,
                scope: None,
            }),
        }
    }

    /// How long a completed response is replayed.
    ///
    /// # Panics
    /// If `ttl` is under a millisecond.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        assert!(ttl >= Duration::from_millis(1), "idempotency TTL under 1ms");
        self.config_mut().ttl = ttl;
        self
    }

    /// How long a claim lasts without renewal. While the handler runs, the layer renews the claim
    /// every third of the lease; if the instance dies mid-handler, the key frees up at most this
    /// long after. A request dropped mid-handler (client gone) releases its claim at once.
    ///
    /// # Panics
    /// If `lease` is under a millisecond.
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(
            lease >= Duration::from_millis(1),
            "idempotency lease under 1ms"
        );
        self.config_mut().lease = lease;
        self
    }

    /// Whether a covered request without a key is refused with 400 (`true`) or passed through
    /// to the handler without protection (`false`, the default). To require it on some routes
    /// only, apply a second layer with `true` to those routes only (axum: `route_layer` on a
    /// router holding those routes): never stack two layers on one route.
    pub fn require_key(mut self, require: bool) -> Self {
        self.config_mut().require_key = require;
        self
    }

    /// The methods the layer covers; other methods pass through untouched. Default: POST, PATCH.
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

    /// Which statuses are stored and replayed. Default: [`default_replayable`].
    pub fn replayable(mut self, keep: fn(StatusCode) -> bool) -> Self {
        self.config_mut().replayable = keep;
        self
    }

    /// Scopes keys, e.g. per tenant or per authenticated user, so that one client can never
    /// receive a response stored for another by sending the same key. The function sees the
    /// request head (headers, extensions set by earlier layers) and returns the scope.
    pub fn scope(
        mut self,
        scope: impl Fn(&request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config_mut().scope = Some(Arc::new(scope));
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

        if !config.methods.contains(req.method()) {
            return passthrough(inner.call(req));
        }
        let key = match key_of(req.headers(), &config.header) {
            Ok(Some(key)) => key.to_owned(),
            Ok(None) if config.require_key => {
                return answer(problem(
                    StatusCode::BAD_REQUEST,
                    "Idempotency key missing",
                    &format!(
                        "{} {} requires an {} header: a unique value per operation, the same on every retry of it.",
                        req.method(),
                        req.uri().path(),
                        display(&config.header),
                    ),
                ));
            }
            Ok(None) => return passthrough(inner.call(req)),
            Err(why) => {
                return answer(problem(
                    StatusCode::BAD_REQUEST,
                    "Idempotency key invalid",
                    &format!("The {} header {why}.", display(&config.header)),
                ));
            }
        };
        Box::pin(run(config, inner, req, key))
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
fn key_of<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, String> {
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
    if bytes.len() > IdempotencyLayer::MAX_KEY_LEN {
        return Err(format!(
            "is {} bytes long; the limit is {}",
            bytes.len(),
            IdempotencyLayer::MAX_KEY_LEN
        ));
    }
    if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("may only hold visible ASCII characters (no spaces or control bytes)".into());
    }
    Ok(Some(value.to_str().expect("visible ASCII is valid UTF-8")))
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
    mut inner: S,
    req: Request<ReqBody>,
    key: String,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
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
        Err(e) => {
            tracing::debug!(error = %e, "could not read a keyed request body");
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "Request body unreadable",
                "The request body could not be read to the end.",
            ));
        }
    };

    let fingerprint = Fingerprint::of(parts.uri.query(), &body);
    let scope = config.scope.as_ref().and_then(|f| f(&parts));
    let store_key: Arc<str> =
        record_key(&parts.method, parts.uri.path(), &key, scope.as_deref()).into();
    let claim = InFlight {
        token: uuid::Uuid::new_v4().as_u128(),
        fingerprint,
    };

    match config.store.claim(&store_key, &claim, config.lease).await {
        Ok(Claim::Acquired) => {}
        Ok(Claim::Existing(record)) if *record.fingerprint() != fingerprint => {
            return Ok(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency key reused",
                &format!(
                    "This key was already used for a different request (body or query string) to {} {}; use a new key for a new operation.",
                    parts.method,
                    parts.uri.path()
                ),
            ));
        }
        Ok(Claim::Existing(Record::InFlight(_))) => {
            let mut res = problem(
                StatusCode::CONFLICT,
                "Request in progress",
                "A request with this idempotency key is still being processed; retry later to receive its response.",
            );
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(res);
        }
        Ok(Claim::Existing(Record::Completed(stored))) => {
            tracing::debug!(key = %store_key, status = %stored.status, "idempotent replay");
            return Ok(replay(stored));
        }
        Err(e) => {
            tracing::warn!(key = %store_key, error = %e, "idempotency claim failed; refusing the request");
            let mut res = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Idempotency store unavailable",
                "The request was not processed; retry later with the same key.",
            );
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(res);
        }
    }

    let guard = ClaimGuard::new(config.store.clone(), store_key, claim, config.lease);
    let res = match inner
        .call(Request::from_parts(parts, ReqBody::from(body)))
        .await
    {
        Ok(res) => res,
        Err(e) => {
            guard.release().await;
            return Err(e);
        }
    };
    if !(config.replayable)(res.status()) {
        guard.release().await;
        return Ok(res.map(ResponseBody::inner));
    }

    let (parts, body) = res.into_parts();
    // Converted at once: the body's own error type need not be `Send`.
    let collected = body.collect().await.map_err(Into::<BoxError>::into);
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            guard.release().await;
            return Ok(Response::from_parts(parts, ResponseBody::failed(e)));
        }
    };
    let stored = StoredResponse {
        fingerprint,
        status: parts.status,
        headers: storable(&parts.headers),
        body: body.clone(),
    };
    guard.complete(&stored, config.ttl).await;
    Ok(Response::from_parts(parts, ResponseBody::full(body)))
}

fn replay<B>(stored: StoredResponse) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::full(stored.body));
    *res.status_mut() = stored.status;
    *res.headers_mut() = stored.headers;
    res.headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    res
}

/// The headers worth replaying: not those of one connection, nor the length (recomputed).
fn storable(headers: &HeaderMap) -> HeaderMap {
    const SKIP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "idempotent-replayed",
    ];
    let mut out = HeaderMap::with_capacity(headers.keys_len());
    for (name, value) in headers {
        if !SKIP.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// An RFC 9457 problem response.
fn problem<B>(status: StatusCode, title: &str, detail: &str) -> Response<ResponseBody<B>> {
    let body = format!(
        r#"{{"type":"about:blank","title":"{}","status":{},"detail":"{}"}}"#,
        json_escape(title),
        status.as_u16(),
        json_escape(detail)
    );
    let mut res = Response::new(ResponseBody::full(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
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
/// the request ends without storing a response, including when the request future is dropped.
struct ClaimGuard {
    store: Arc<dyn IdempotencyStore>,
    key: Arc<str>,
    claim: InFlight,
    renewal: Option<(tokio::task::AbortHandle, Arc<AtomicBool>)>,
    armed: bool,
}

impl ClaimGuard {
    fn new(
        store: Arc<dyn IdempotencyStore>,
        key: Arc<str>,
        claim: InFlight,
        lease: Duration,
    ) -> ClaimGuard {
        let renewal = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let done = Arc::new(AtomicBool::new(false));
            let task = rt.spawn(renew(
                store.clone(),
                key.clone(),
                claim,
                lease,
                done.clone(),
            ));
            (task.abort_handle(), done)
        });
        ClaimGuard {
            store,
            key,
            claim,
            renewal,
            armed: true,
        }
    }

    fn stop_renewal(&mut self) {
        if let Some((task, done)) = self.renewal.take() {
            done.store(true, Ordering::Relaxed);
            task.abort();
        }
    }

    /// Stores the response in place of the claim.
    async fn complete(mut self, stored: &StoredResponse, ttl: Duration) {
        self.stop_renewal();
        match self
            .store
            .complete(&self.key, &self.claim, stored, ttl)
            .await
        {
            Ok(true) => self.armed = false,
            Ok(false) => {
                self.armed = false;
                tracing::warn!(
                    key = %self.key,
                    "idempotent response not stored: the claim expired and another request took the key (is the lease shorter than the handler?)"
                );
            }
            // Stays armed: dropping the guard releases the claim, so a retry can run.
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "idempotent response not stored")
            }
        }
    }

    /// Gives the key back, so that a repeat runs the handler again.
    async fn release(mut self) {
        self.stop_renewal();
        if let Err(e) = self.store.release(&self.key, &self.claim).await {
            tracing::warn!(key = %self.key, error = %e, "idempotency claim not released; it will expire with its lease");
        }
        self.armed = false;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.stop_renewal();
        if !self.armed {
            return;
        }
        // Dropped mid-handler (client gone, panic) or mid-release: release in the background.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, key, claim) = (self.store.clone(), self.key.clone(), self.claim);
            rt.spawn(async move {
                if let Err(e) = store.release(&key, &claim).await {
                    tracing::warn!(key = %key, error = %e, "idempotency claim not released; it will expire with its lease");
                }
            });
        }
    }
}

async fn renew(
    store: Arc<dyn IdempotencyStore>,
    key: Arc<str>,
    claim: InFlight,
    lease: Duration,
    done: Arc<AtomicBool>,
) {
    let every = (lease / 3).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.renew(&key, &claim, lease).await {
            Ok(true) => {}
            Ok(false) => {
                if !done.load(Ordering::Relaxed) {
                    tracing::warn!(key = %key, "idempotency claim lost while the handler runs; a repeat may run it again");
                }
                return;
            }
            Err(e) => tracing::warn!(key = %key, error = %e, "idempotency claim not renewed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("idempotency-key", HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn keys_are_one_to_255_visible_ascii_bytes() {
        let name = crate::http::IDEMPOTENCY_KEY;
        let long = [b'k'; 255];
        let too_long = [b'k'; 256];
        assert_eq!(key_of(&headers(&[]), &name), Ok(None));
        assert_eq!(
            key_of(&headers(&[b"a-b_c.9~!"]), &name),
            Ok(Some("a-b_c.9~!"))
        );
        assert!(key_of(&headers(&[Box::leak(Box::new(long))]), &name).is_ok());
        for bad in [
            &b""[..],
            b"a b",
            b"a\tb",
            b"caf\xc3\xa9",
            Box::leak(Box::new(too_long)),
        ] {
            assert!(key_of(&headers(&[bad]), &name).is_err(), "{bad:?}");
        }
        assert!(key_of(&headers(&[b"a", b"b"]), &name).is_err());
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
    }

    #[test]
    fn transient_answers_are_not_replayed() {
        for s in [200, 201, 204, 303, 400, 401, 404, 409, 422] {
            assert!(default_replayable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(!default_replayable(StatusCode::from_u16(s).unwrap()), "{s}");
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

    #[test]
    fn problems_are_json() {
        let res = problem::<()>(StatusCode::CONFLICT, "t \"q\"", "d\\\n");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(json_escape("t \"q\" d\\\n"), r#"t \"q\" d\\\u000a"#);
    }
}
