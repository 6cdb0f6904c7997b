//! Stamping and recording: every request an attempt sends carries the call's identities, and
//! every response it gets is recorded for the retry decision.
//!
//! Inside a `#[resilient]` body the macro routes each `.send()` on a `reqwest::RequestBuilder`
//! and each `client.execute(request)` through here by type ([`__private::Stampable`]); other
//! `.send()`s are left as written. [`RequestBuilderExt::resilient`] does the same for a request
//! sent by a helper function outside the body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderName, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;

use crate::context::{AttemptCtx, AttemptId, Key, Traceparent, hex32, with_attempt};

/// `Idempotency-Key`: the same value on every attempt of one logical call.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `X-Request-Id`: stable across the attempts of one call.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C `traceparent`: the same trace id on every attempt, a new parent id per attempt.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C `tracestate`: the caller's, sent on with a `traceparent` in its trace.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The attempt number, 1 for the first.
pub const X_ATTEMPT: HeaderName = HeaderName::from_static("x-attempt");
/// The time the caller still waits for this attempt, in whole milliseconds: the smaller of the
/// attempt's timeout and the call's deadline, less what has passed. A server behind
/// [`ContextLayer`](crate::server::ContextLayer) plans its own calls within it.
pub const X_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-timeout-ms");

/// Adds [`resilient`](RequestBuilderExt::resilient) to `reqwest::RequestBuilder`.
pub trait RequestBuilderExt {
    /// Marks this request as an attempt of the enclosing `#[resilient]` call: `send()` then
    /// stamps `Idempotency-Key`, `X-Request-Id`, `traceparent`, `X-Attempt` and
    /// `X-Timeout-Ms`, and records the response status and `Retry-After` for the retry
    /// decision.
    ///
    /// A `.send()` written in the annotated body is stamped without it; call it on a request
    /// that a helper function sends.
    fn resilient(self) -> ResilientRequest;
}

impl RequestBuilderExt for reqwest::RequestBuilder {
    fn resilient(self) -> ResilientRequest {
        ResilientRequest { inner: self }
    }
}

/// A request that stamps itself with the current attempt's identities when sent.
#[derive(Debug)]
#[must_use = "a request does nothing until it is sent"]
pub struct ResilientRequest {
    inner: reqwest::RequestBuilder,
}

impl ResilientRequest {
    /// Sends the request, like `reqwest::RequestBuilder::send`. Stamped here, when the send is
    /// made, not when its future is first polled: handed to another task
    /// (`tokio::spawn(c.post(u).resilient().send())`), it still carries the call's key, and
    /// the attempt counts it as possibly sent (its outcome never comes back).
    pub fn send(
        self,
    ) -> Sending<impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send + use<>>
    {
        Prepared::new(self.inner).send()
    }

    /// The underlying builder, unstamped.
    pub fn into_inner(self) -> reqwest::RequestBuilder {
        self.inner
    }
}

/// What `reqwest::get(url)` in an annotated body becomes: the same one-off GET (a client built
/// for it, as `reqwest::get` builds one), sent stamped and recorded like a `.send()`.
/// Stamped when called, as `.send()` is: handed to another task, it goes with the call's
/// identities.
#[doc(hidden)]
pub fn reqwest_get<U: reqwest::IntoUrl>(
    url: U,
) -> impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send {
    let prepared = reqwest::Client::builder()
        .redirect(crate::redirect_policy())
        .referer(false)
        .build()
        .map(|client| Prepared::new(client.get(url)));
    async move { prepared?.send().await }
}

/// The error of a send the runtime stamps and records: reqwest's own, or (feature
/// `reqwest-middleware`) a `ClientWithMiddleware`'s, which holds reqwest's or a middleware's.
#[doc(hidden)]
pub trait SentError: std::error::Error + Sized + 'static {
    /// Sent through a middleware stack, which may have sent the request before the error it
    /// returns (its own resend), or returned another request's (its own call after it).
    const THROUGH_MIDDLEWARE: bool = false;
    /// The reqwest error inside, if the request itself failed.
    fn reqwest(&self) -> Option<&reqwest::Error>;
    /// Its class for the retry decision, read from its source chain.
    fn class(&self) -> Option<crate::Class> {
        crate::classify::classify_error(self.reqwest().map_or(self as _, |e| e as _))
    }
}

impl SentError for reqwest::Error {
    fn reqwest(&self) -> Option<&reqwest::Error> {
        Some(self)
    }
}

#[cfg(feature = "reqwest-middleware")]
impl SentError for reqwest_middleware::Error {
    const THROUGH_MIDDLEWARE: bool = true;
    fn reqwest(&self) -> Option<&reqwest::Error> {
        match self {
            reqwest_middleware::Error::Reqwest(e) => Some(e),
            reqwest_middleware::Error::Middleware(_) => None,
        }
    }
}

/// A request's outcome, for the retry decision of the current attempt, in one look at it: the
/// response's status and `Retry-After` (as [`observe`] records them), and whether the request
/// reached the server, or may have: anything but a connect failure (refused, or timed out
/// before the connection was made), which proves it was never sent, unless a request of the
/// attempt followed a redirect (the failure may be the redirect target's, after a server
/// answered the request), or the request went through a middleware stack and its client
/// reported none of its completions (`unobserved`: a middleware may have sent it before the
/// connect failure it returns, or returned another request's). `method`: the request's, when
/// known; else the least safe the attempt has sent.
fn record_outcome<E: SentError>(
    res: &Result<reqwest::Response, E>,
    method: Option<crate::policy::Method>,
    redirects_at_start: u32,
    unobserved: bool,
    read: bool,
) {
    // Or an HTTP/2 server's word that it never processed it (`REFUSED_STREAM`, a graceful
    // `GOAWAY`), reaching the attempt past reqwest's own retries of it.
    let connect_failure = !(E::THROUGH_MIDDLEWARE && unobserved)
        && matches!(res, Err(e) if e.reqwest().is_some_and(|r| {
            r.is_connect() || crate::classify::protocol_nack(r)
        }));
    let _ = with_attempt(|ctx| {
        // A redirect followed while it was in flight (not one an earlier request of the
        // attempt followed: a GET's 302, then a POST whose connection is refused, never sent).
        let redirected = ctx.redirects.get() != redirects_at_start;
        let reached = !connect_failure || redirected;
        match res {
            Ok(r) => record_response(ctx, response_facts(r), read),
            Err(e) => {
                // The last request has no response: an earlier one's status and `Retry-After`
                // (a 429 the body handled before this request reset) say nothing of it.
                ctx.failure.set(e.class());
                ctx.status.set(None);
                ctx.retry_after.set(None);
                ctx.replayed.set(false);
                ctx.conflict_on_read.set(false);
            }
        }
        if reached && let Some(m) = method.or(ctx.sent_method.get()) {
            // Carried out, or may have been, unless refused with a 4xx (a 409 "still in
            // progress" is being carried out); after a redirect followed, the status is the
            // last hop's, and the request's own was a 3xx.
            let refused = !redirected
                && matches!(res, Ok(r) if crate::context::refused_before_acting(r.status()));
            ctx.note_answered(m, refused);
        }
    });
}

/// A stamped request on its way. Dropped before its outcome is known (the body stopped
/// waiting for it: its own `timeout`, a `try_join!` that another request failed, a `select!`),
/// it may have reached the server: the attempt records it as such, so that running the body
/// again does not resend an unsafe request. Its method: the request's, when known; else the
/// least safe the attempt has sent.
/// Also the URL (hashed; 0: none) at which the attempt expects its completion now
/// ([`crate::context::expected_url`]; after a 307 or 308, the target's), and the attempt's
/// count of matched completions before its current poll: a request that ends, or is dropped,
/// with an expectation of its own still outstanding takes it back. Then the attempt's count of
/// redirects at its start, and whether its completion was expected at all (a body reqwest can
/// copy: one it cannot, a stream or a multipart form, is expected nowhere).
struct InFlight(
    Option<crate::policy::Method>,
    u32,
    u32,
    u32,
    bool,
    // The method its next redirect would send it on with, for the redirect policy (see
    // `AttemptCtx::polling`): a PUT, PATCH or DELETE's own until a 303 makes it a GET; a
    // POST's (none to tell) otherwise.
    crate::policy::Method,
    // The attempt it was made in, whose count of requests not ended there it alone takes
    // back (see `InFlight::ends_here`).
    AttemptId,
);

impl InFlight {
    /// Sent from the attempt (its first poll there): its completion is expected at `url`.
    fn start(method: Option<crate::policy::Method>, url: u32, made_in: AttemptId) -> InFlight {
        use crate::policy::Method;
        let redirects = with_attempt(|ctx| {
            if url != 0 {
                ctx.expect_at(url);
            }
            ctx.redirects.get()
        })
        .unwrap_or(0);
        // `url` is 0 for a safe method (and a body reqwest cannot send again on a redirect).
        let hop = match method {
            Some(m) if url != 0 => m,
            _ => Method::Post,
        };
        InFlight(method, url, 0, redirects, url != 0, hop, made_in)
    }

    /// Before the request's poll: the attempt's count of matched completions, no redirect
    /// target noted yet, and its method for a redirect the poll follows.
    fn before_poll(&mut self) {
        if self.1 != 0
            && let Some(n) = with_attempt(|ctx| {
                ctx.redirect_target.set(0);
                ctx.polling_begins(self.5);
                ctx.matched.get()
            })
        {
            self.2 = n;
        }
    }

    /// After the request's poll: a completion of it reported in the poll took its expectation;
    /// what it expects now is the target of the 307 or 308 followed, if any. Its method as
    /// the redirects followed in the poll left it, and none for another request's poll.
    fn after_poll(&mut self) {
        if self.1 != 0
            && let Some((matched, target, hop)) = with_attempt(|ctx| {
                (
                    ctx.matched.get(),
                    ctx.redirect_target.get(),
                    ctx.polling_ends(),
                )
            })
        {
            self.5 = hop;
            if matched != self.2 {
                self.1 = target;
            }
        }
    }

    /// The outcome arrived: recorded as it is, not as a request given up on.
    fn settle<E: SentError>(mut self, res: &Result<reqwest::Response, E>) {
        // Its completion reported by the client (its expectation taken, in this poll or an
        // earlier one): a client from `ClientSettings` reports each, a plain one none. One
        // expected nowhere (a body reqwest cannot copy) is not known to have been.
        let unobserved = E::THROUGH_MIDDLEWARE
            && (!self.4
                || (self.1 != 0
                    && with_attempt(|ctx| ctx.matched.get() == self.2).unwrap_or(true)));
        let read = self.0.is_some_and(crate::policy::Method::is_safe);
        record_outcome(res, self.0, self.3, unobserved, read);
        self.after_poll();
        self.ends_here();
        std::mem::forget(self);
    }

    /// It ends (settled, or dropped) in the attempt polling it now, if any. Its expectation, if
    /// still outstanding (its completion was reported by no client, or it was dropped before
    /// its outcome), is taken back. Found already taken, another request's completion was
    /// taken for it (an SDK's unstamped request to the same URL, completed while this one was
    /// in flight): that one counts as unkeyed. And, in the attempt that made it, that
    /// attempt's count of requests that did not end in it is taken back: one that ends in
    /// another task never comes back here, and counts as possibly sent; one that ends in
    /// another attempt (a nested call's it was handed to) leaves that attempt's count alone
    /// (its own requests handed to other tasks stay counted) and stays counted in its own.
    fn ends_here(&self) {
        let _ = with_attempt(|ctx| {
            if self.1 != 0
                && !ctx.unexpect(self.1)
                && let Some(m) = self.0
            {
                ctx.completed_unmatched(m);
            }
            ctx.ended_here(self.6);
        });
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Dropped before its outcome: possibly sent (`given_up`).
        given_up(self.0);
        self.ends_here();
    }
}

/// A request's method, and (made in an attempt) the URL at which its completion is expected
/// once it is sent from there, into `url`.
fn method_and_url(
    req: &reqwest::Request,
    made_in_attempt: bool,
    url: &mut u32,
) -> crate::policy::Method {
    let m = crate::policy::method_of(req.method());
    if made_in_attempt {
        *url = crate::context::expected_url(m, req);
    }
    m
}

/// A request whose outcome the body did not wait for: it may have reached the server.
#[cold]
fn given_up(method: Option<crate::policy::Method>) {
    let _ = with_attempt(|ctx| {
        if let Some(m) = method.or(ctx.sent_method.get()) {
            ctx.note_own_carried(m);
        }
    });
}

/// Tells the current attempt that its body sent something the runtime cannot see, as a request
/// of `method` would be: a database call, a gRPC stub, a request sent by a helper with a client
/// of its own. The retry decision then counts it as it counts a request it saw: a safe method
/// (or an `idempotent` PUT/DELETE) may be resent after a reset or a timeout; any other method
/// is never resent unkeyed, and a declared send never counts as carrying the key. Without it,
/// an attempt that sent nothing the runtime saw counts as the least safe method. A no-op
/// outside a `#[resilient]` function.
pub fn declare_sent(method: crate::policy::Method) {
    let _ = with_attempt(|ctx| {
        ctx.note_method(method);
        ctx.note_carried(method);
        ctx.stamped.set(true);
        ctx.saw();
        ctx.went_on_to_another();
        if !method.is_safe() {
            ctx.all_keyed.set(false);
        }
    });
}

/// Stamps a built request with the current attempt's identities (a no-op outside a
/// `#[resilient]` function). For a request sent by hand with `Client::execute` outside the
/// annotated body; inside it, `execute` is stamped for you.
///
/// The runtime does not see such a request's outcome: the attempt counts it as possibly sent
/// (a connect failure of a later request then proves nothing of it), so that an unsafe one is
/// not sent again unkeyed after it may have arrived.
pub fn stamp_request(req: &mut reqwest::Request) {
    let _ = with_attempt(|ctx| {
        stamp(ctx, req);
        // Its completion, if a client of `ClientSettings` sends it, is this request's.
        let url = crate::context::expected_url(crate::policy::method_of(req.method()), req);
        if url != 0 {
            ctx.expect_at(url);
            ctx.hand_stamped.set(url);
        }
        ctx.note_own_carried(crate::policy::method_of(req.method()));
    });
}

/// Whether `req`, whose completion is expected at `url`, is the request last stamped by hand
/// (`stamp_request`) in the attempt `ctx`: that one's URL, in this attempt, and carrying this
/// attempt's number as its stamping wrote it (a request made afresh carries none). The record
/// taken. (Only the last request stamped by hand is recorded: one stamped before it, then
/// executed, is stamped again and expected twice.)
fn stamped_by_hand_in(ctx: &AttemptCtx, req: &reqwest::Request, url: u32) -> bool {
    let here = url != 0
        && ctx.hand_stamped.get() == url
        && req.headers().get(X_ATTEMPT) == Some(&attempt_value(ctx.attempt));
    if here {
        ctx.hand_stamped.set(0);
    }
    here
}

fn stamp(ctx: &AttemptCtx, req: &mut reqwest::Request) {
    ctx.note_method(crate::policy::method_of(req.method()));
    ctx.stamped.set(true);
    ctx.saw();
    ctx.went_on();
    // telemetry (issue 12): method, server and URL on the attempt's span, its first request's.
    if !ctx.described.replace(true) {
        crate::telemetry::on_request(req);
    }
    let own_timeout = req.timeout().copied();
    let headers = req.headers_mut();
    // Every generated value is written into one stack buffer, copied to the heap once, and
    // each header value is a slice of that one allocation.
    let mut buf = Stamp::default();
    let key = match &ctx.key {
        // A request that brings a key of its own (a helper's builder, headers copied from the
        // request being served) keeps it; it carries the call's key only when it is the same
        // value, bare or quoted (`Key::is_text`). Another value (one a helper draws afresh each time the body runs) is no key
        // the attempts share: the request counts as unkeyed, so it is not sent again after it
        // may have reached the server.
        Some(k) if headers.contains_key(&IDEMPOTENCY_KEY) => {
            if headers
                .get_all(&IDEMPOTENCY_KEY)
                .iter()
                .all(|v| k.is_text(v.as_bytes()))
            {
                ctx.key_sent.set(true);
            } else {
                ctx.all_keyed.set(false);
                ctx.foreign_key.set(true);
            }
            None
        }
        Some(Key::Auto(u, format)) => {
            ctx.key_sent.set(true);
            let mut b = uuid::Uuid::encode_buffer();
            let uuid = u.hyphenated().encode_lower(&mut b).as_bytes();
            // Bare, or the IETF draft's quoted Structured Field string (`KeyFormat`), as it
            // was when the call began.
            let d = format.delimiter().as_bytes();
            let start = buf.push(d).start;
            buf.push(uuid);
            Some(Err(start..buf.push(d).end))
        }
        Some(Key::Given(h)) => {
            ctx.key_sent.set(true);
            Some(Ok(h.clone()))
        }
        None => {
            if !headers.contains_key(&IDEMPOTENCY_KEY) {
                ctx.all_keyed.set(false);
            }
            None
        }
    };
    // A request id or trace context the caller propagates itself (say, from the request it is
    // serving) wins over the generated ones.
    // The caller's own id, in a form other than ours, goes on as it came (its own value).
    let request_id = match &ctx.request_id_text {
        _ if headers.contains_key(&X_REQUEST_ID) => None,
        Some(v) => {
            headers.insert(X_REQUEST_ID, HeaderValue::clone(v));
            None
        }
        None => Some(buf.push(hex32(ctx.request_id()).as_str().as_bytes())),
    };
    let traceparent = (!headers.contains_key(&TRACEPARENT)).then(|| {
        buf.push(Traceparent::new(ctx.trace_id(), ctx.span_id(), ctx.trace_flags).as_bytes())
    });
    let ms = time_left_ms(ctx.until, own_timeout.as_ref());
    let timeout = buf.push_u64(ms);
    let shared = buf.freeze();
    let value = |r: std::ops::Range<usize>| HeaderValue::from_maybe_shared(shared.slice(r)).ok();
    match key {
        Some(Ok(h)) => {
            headers.insert(IDEMPOTENCY_KEY, h);
        }
        Some(Err(r)) => {
            if let Some(v) = value(r) {
                headers.insert(IDEMPOTENCY_KEY, v);
            }
        }
        None => {}
    }
    if let Some(v) = request_id.and_then(value) {
        headers.insert(X_REQUEST_ID, v);
    }
    // telemetry (issue 12): traceparent/tracestate, from OpenTelemetry when there is a context.
    crate::telemetry::inject_trace_context(headers, ctx.trace_id(), || traceparent.and_then(value));
    headers.insert(X_ATTEMPT, attempt_value(ctx.attempt));
    // A shorter time set by hand (a caller's, forwarded) stays: the server is told the least
    // of what its caller and the attempt allow.
    let by_hand = if headers.contains_key(&X_TIMEOUT_MS) {
        shortest_timeout_ms(headers)
    } else {
        None
    };
    if by_hand.is_none_or(|h| h > ms)
        && let Some(v) = value(timeout)
    {
        headers.insert(X_TIMEOUT_MS, v);
    }
}

/// The generated header values of one request, on the stack until they are frozen into one
/// shared allocation.
struct Stamp {
    bytes: [u8; 168],
    len: usize,
}

impl Default for Stamp {
    fn default() -> Stamp {
        Stamp {
            bytes: [0; 168],
            len: 0,
        }
    }
}

impl Stamp {
    /// Appends `s`; its range in the buffer.
    fn push(&mut self, s: &[u8]) -> std::ops::Range<usize> {
        let start = self.len;
        let end = (start + s.len()).min(self.bytes.len());
        self.bytes[start..end].copy_from_slice(&s[..end - start]);
        self.len = end;
        start..end
    }

    fn push_u64(&mut self, mut n: u64) -> std::ops::Range<usize> {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    fn freeze(&self) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(&self.bytes[..self.len])
    }
}

/// `X-Attempt` without an allocation for the attempts a policy can have (1 to 10).
fn attempt_value(n: u32) -> HeaderValue {
    const STATIC: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    match n.checked_sub(1).and_then(|i| STATIC.get(i as usize)) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

/// Records a response's status and `Retry-After` for the retry decision of the current attempt.
///
/// Requests sent in the annotated body, and through `.resilient()`, are recorded for you; call
/// it when a response reached you another way. A no-op outside a `#[resilient]` function.
pub fn observe(resp: &reqwest::Response) {
    let facts = response_facts(resp);
    // The request's method is not known here.
    let _ = with_attempt(|ctx| record_response(ctx, facts, false));
}

/// `Idempotent-Replayed: true` marks a response replayed from the store: the handler did not run.
/// The server half sets it; a client receiving it knows that asking again with the same key
/// gets the same answer, so it does not retry it, whatever its status.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What the retry decision reads off a response.
#[derive(Clone, Copy)]
struct ResponseFacts {
    status: u16,
    retry_after: Option<Duration>,
    /// Marked `Idempotent-Replayed: true`: a stored answer, the same on every ask.
    replayed: bool,
}

/// A response's status, `Retry-After` and replay mark.
fn response_facts(resp: &reqwest::Response) -> ResponseFacts {
    let headers = resp.headers();
    let status = resp.status().as_u16();
    // Read on an error status only: a success's (a 202's "poll again later") asks for no
    // wait before a retry of a failure that follows it (its body cut short).
    let retry_after = if status < 400 {
        None
    } else {
        retry_after_of(headers).or_else(|| {
            // A 409 with a `Retry-After` that cannot be read (`soon`, a date with the wrong
            // weekday) is still the server's "this key is still being processed" (the server
            // half tells it by the field's presence): asked again after the backoff alone,
            // where ending the call would leave the first request's outcome unasked for.
            (status == 409 && headers.contains_key(RETRY_AFTER)).then_some(Duration::ZERO)
        })
    };
    let replayed = headers
        .get(IDEMPOTENT_REPLAYED)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    ResponseFacts {
        status,
        retry_after,
        replayed,
    }
}

/// The `Retry-After` of an error answer. Repeated fields, unmerged, read as their merged list
/// is: the longest wait.
fn retry_after_of(headers: &reqwest::header::HeaderMap) -> Option<std::time::Duration> {
    let mut fields = headers.get_all(RETRY_AFTER).iter();
    match (fields.next(), fields.next()) {
        (None, _) => None,
        (Some(one), None) => one
            .to_str()
            .ok()
            .and_then(|v| crate::retry_after::parse(v, SystemTime::now())),
        (Some(_), Some(_)) => {
            let now = SystemTime::now();
            headers
                .get_all(RETRY_AFTER)
                .iter()
                .filter_map(|v| crate::retry_after::parse(v.to_str().ok()?, now))
                .max()
        }
    }
}

/// `read`: the request was a read (GET, HEAD, OPTIONS).
fn record_response(ctx: &AttemptCtx, facts: ResponseFacts, read: bool) {
    ctx.status.set(Some(facts.status));
    // A read's 409 is a plain conflict (a lock service's "locked, try in 1 s"), never "this
    // key is still being processed", which answers a request the key guards, an unsafe one,
    // whatever `Retry-After` it carries (the call asked again until its deadline, past
    // `max_attempts`, the budget and the breaker).
    ctx.conflict_on_read.set(read && facts.status == 409);
    ctx.failure.set(None);
    ctx.retry_after.set(facts.retry_after);
    ctx.retry_after_nested.set(false);
    ctx.retry_after_handled.set(None);
    ctx.replayed.set(facts.replayed);
}

pin_project_lite::pin_project! {
    /// A `Client::execute` future whose response is recorded when it arrives.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless awaited"]
    pub struct Observed<F> {
        #[pin]
        inner: F,
        // The response (or the error) arrived and was recorded.
        settled: bool,
        // Polled once: the attempt it runs in takes its outcome over from the count of
        // requests made and not sent from it (`AttemptCtx::made_for_execute`) when it ends
        // there (settled, or dropped).
        polled: bool,
        // The future of a request stamped for it (not a wrapper's `execute` handed something
        // else): the attempt whose count of such requests it takes back when it ends there
        // (in another attempt, a nested call's it was handed to, it takes back none).
        counted: Option<AttemptId>,
        // That request's method for the redirect policy, as `InFlight`'s: a PUT, PATCH or
        // DELETE's until a 303 makes it a GET, or a POST's (none to tell); none for a safe
        // one or a future of a request not stamped for it.
        hop: Option<crate::policy::Method>,
        // The attempt's count of redirects followed at its first poll.
        redirects_at_start: u32,
        // A request stamped for it whose method is a read (see `record_response`).
        read: bool,
    }

    impl<F> PinnedDrop for Observed<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its outcome: the request may have reached the server.
            let this = this.project();
            if !*this.settled {
                given_up(None);
                if *this.polled {
                    let counted = *this.counted;
                    let _ = with_attempt(|ctx| ctx.execute_ended_here(counted));
                }
            }
        }
    }
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<reqwest::Response, E>>,
    E: SentError,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !*this.polled {
            *this.polled = true;
            if let Some(n) = with_attempt(|ctx| {
                ctx.polled_execute();
                ctx.redirects.get()
            }) {
                *this.redirects_at_start = n;
            }
        }
        // Its method told to a redirect the poll follows, and taken back after, as
        // `InFlight` tells it (see `AttemptCtx::polling_begins`).
        if let Some(m) = *this.hop {
            let _ = with_attempt(|ctx| ctx.polling_begins(m));
        }
        let out = this.inner.poll(cx);
        if this.hop.is_some()
            && let Some(now) = with_attempt(AttemptCtx::polling_ends)
        {
            *this.hop = Some(now);
        }
        if let Poll::Ready(res) = &out {
            *this.settled = true;
            // The request's own method is not known here: the least safe the attempt sent.
            // Nor is whether the client reported its completion (through a middleware stack,
            // a connect failure does not prove it was never sent).
            record_outcome(res, None, *this.redirects_at_start, true, *this.read);
            let counted = *this.counted;
            let _ = with_attempt(|ctx| ctx.execute_ended_here(counted));
        }
        out
    }
}

/// A request the annotated body built with `.send()`, stamped where it was made: in the
/// attempt that made it, it carries the call's key and identities even when it is sent from
/// another task (`tokio::spawn(client.post(url).send())`), and the attempt counts it as
/// possibly sent until its first poll in the attempt takes its outcome over.
#[doc(hidden)]
#[derive(Debug)]
#[must_use = "a request does nothing until it is sent"]
pub struct Prepared {
    client: reqwest::Client,
    req: Result<reqwest::Request, reqwest::Error>,
    /// The attempt it was made in, which counts it until it ends there.
    made_in: Option<Made>,
}

/// The attempt a request was made in, and when that attempt ends: the time left the request
/// tells as it goes out, from wherever it is sent.
#[derive(Debug, Clone, Copy)]
struct Made {
    at: AttemptId,
    until: Instant,
}

/// Stamps a request the body built for the attempt it is made in, which counts it as possibly
/// sent until it ends there. The attempt it was made in (none: outside one, or a request that
/// could not be built).
fn made(req: &mut Result<reqwest::Request, reqwest::Error>) -> Option<Made> {
    match req {
        Ok(req) => with_attempt(|ctx| {
            stamp(ctx, req);
            ctx.made(crate::policy::method_of(req.method()));
            Made {
                at: ctx.id(),
                until: ctx.until,
            }
        }),
        Err(_) => None,
    }
}

impl Prepared {
    fn new(builder: reqwest::RequestBuilder) -> Prepared {
        let (client, mut req) = builder.build_split();
        let made_in = made(&mut req);
        Prepared {
            client,
            req,
            made_in,
        }
    }

    /// Sends the request, like `reqwest::RequestBuilder::send`; the future is `Unpin` as
    /// reqwest's is (`tokio::select! { r = &mut sending => … }` in a loop).
    pub fn send(
        self,
    ) -> Sending<impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send + use<>>
    {
        let client = self.client;
        let mut url = 0;
        let (method, fut, error) = match self.req {
            Ok(req) => (
                Some(method_and_url(&req, self.made_in.is_some(), &mut url)),
                Some(Deferred {
                    start: Some((req, self.made_in.map(|m| m.until), move |req| {
                        client.execute(req)
                    })),
                    fut: None,
                }),
                None,
            ),
            Err(e) => (None, None, Some(e)),
        };
        Sending {
            fut,
            error,
            method,
            url,
            // A request that could not be built was never made in the attempt.
            made_in: self.made_in.map(|m| m.at),
            first: true,
            in_flight: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's sending, begun at its first poll rather than when it was made: the time
    /// left it tells the server (`X-Timeout-Ms`) is then the attempt's as the request goes out,
    /// not as it was built (a request made, then sent seconds later by a `buffered(n)` or after
    /// an `await`). `Unpin` when the client's future is, as reqwest's is.
    struct Deferred<M, F> {
        // The request, when the attempt it was made in ends (the time left it tells as it
        // goes out, from wherever it is sent; none: made outside an attempt), and what sends
        // it.
        start: Option<(reqwest::Request, Option<Instant>, M)>,
        #[pin]
        fut: Option<F>,
    }
}

impl<M, F> Future for Deferred<M, F>
where
    M: FnOnce(reqwest::Request) -> F,
    F: Future,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        if let Some((mut req, until, make)) = this.start.take() {
            if let Some(until) = until {
                tell_time_left_now(&mut req, until);
            }
            this.fut.set(Some(make(req)));
        }
        match this.fut.as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => Poll::Pending,
        }
    }
}

/// One `X-Timeout-Ms` value (an element of the header's list): whole milliseconds, digits
/// only, spaces around allowed; an overflow is just a very large number. Read alike by the
/// server (`ContextLayer`) and by the stamping of a value set by hand.
pub(crate) fn parse_timeout_ms(v: &[u8]) -> Result<u64, &'static str> {
    if !v.is_ascii() {
        return Err("not ASCII");
    }
    let s = std::str::from_utf8(v)
        .map_err(|_| "not ASCII")?
        .trim_ascii();
    if s.is_empty() {
        return Err("empty");
    }
    if s.starts_with('-') {
        return Err("negative");
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a whole number of milliseconds");
    }
    Ok(s.parse::<u64>().unwrap_or(u64::MAX))
}

/// The shortest `X-Timeout-Ms` a request carries, each field and each element of a list
/// counted, as the server reads it; `None` when none is valid.
fn shortest_timeout_ms(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get_all(&X_TIMEOUT_MS)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|one| parse_timeout_ms(one).ok())
        .min()
}

/// The attempt's time left, in whole milliseconds, at least 1: what `X-Timeout-Ms` says. Or
/// the request's own timeout (`.timeout(d)` on its builder), when shorter: its caller stops
/// waiting then. A timeout on the reqwest client's builder cannot be read, and is not told.
fn time_left_ms(until: Instant, own: Option<&Duration>) -> u64 {
    let mut left = until.saturating_duration_since(Instant::now());
    if let Some(own) = own {
        left = left.min(*own);
    }
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Brings a stamped request's `X-Timeout-Ms` up to date as it goes out, to what is left of the
/// attempt it was made in (`until`), wherever it is sent from (the attempt's own polls, or a
/// task it was handed to): rewritten when it says 10 ms or more than is left now (stamped
/// long before it is sent; a shorter value set by hand is kept as it is); a request sent at
/// once keeps its value, with no allocation.
fn tell_time_left_now(req: &mut reqwest::Request, until: Instant) {
    let Some(told) = shortest_timeout_ms(req.headers()) else {
        return;
    };
    let ms = time_left_ms(until, req.timeout());
    if told >= ms.saturating_add(10) {
        req.headers_mut()
            .insert(X_TIMEOUT_MS, HeaderValue::from(ms));
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Prepared::send`]. Sent from the attempt that made it (its first poll
    /// there), its outcome is recorded there; elsewhere (another task) it goes as stamped, and
    /// the attempt keeps counting it.
    #[doc(hidden)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Sending<F, E = reqwest::Error> {
        #[pin]
        fut: Option<F>,
        error: Option<E>,
        method: Option<crate::policy::Method>,
        // Where the attempt expects its completion (see `InFlight`).
        url: u32,
        // The attempt it was made in (see `InFlight`).
        made_in: Option<AttemptId>,
        first: bool,
        // Given up on (dropped before its outcome): recorded as possibly sent.
        in_flight: Option<InFlight>,
    }
}

impl<F, E> std::fmt::Debug for Sending<F, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sending")
    }
}

impl<F, E> Future for Sending<F, E>
where
    F: Future<Output = Result<reqwest::Response, E>>,
    E: SentError,
{
    type Output = Result<reqwest::Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if std::mem::take(this.first)
            && let Some(made_in) = *this.made_in
            && with_attempt(AttemptCtx::polled).is_some()
        {
            *this.in_flight = Some(InFlight::start(*this.method, *this.url, made_in));
        }
        if let Some(f) = this.in_flight.as_mut() {
            f.before_poll();
        }
        let Some(fut) = this.fut.as_pin_mut() else {
            return Poll::Ready(Err(this
                .error
                .take()
                .expect("a failed request's future polled after it ended")));
        };
        let res = match fut.poll(cx) {
            Poll::Ready(res) => res,
            Poll::Pending => {
                if let Some(f) = this.in_flight.as_mut() {
                    f.after_poll();
                }
                return Poll::Pending;
            }
        };
        if let Some(in_flight) = this.in_flight.take() {
            in_flight.settle(&res);
        }
        Poll::Ready(res)
    }
}

/// A request a `reqwest-middleware` builder made in the annotated body, stamped where it was
/// made, as [`Prepared`] is; sent through the middleware client's stack with the builder's
/// extensions, as the builder's own `send` does.
#[cfg(feature = "reqwest-middleware")]
#[doc(hidden)]
#[derive(Debug)]
#[must_use = "a request does nothing until it is sent"]
pub struct PreparedWithMiddleware {
    client: reqwest_middleware::ClientWithMiddleware,
    req: Result<reqwest::Request, reqwest::Error>,
    extensions: http::Extensions,
    made_in: Option<Made>,
}

#[cfg(feature = "reqwest-middleware")]
impl PreparedWithMiddleware {
    fn new(mut builder: reqwest_middleware::RequestBuilder) -> PreparedWithMiddleware {
        let extensions = std::mem::take(builder.extensions());
        let (client, mut req) = builder.build_split();
        let made_in = made(&mut req);
        PreparedWithMiddleware {
            client,
            req,
            extensions,
            made_in,
        }
    }

    /// Sends the request, like `reqwest_middleware::RequestBuilder::send`.
    pub fn send(
        self,
    ) -> Sending<
        impl Future<Output = reqwest_middleware::Result<reqwest::Response>> + Send + use<>,
        reqwest_middleware::Error,
    > {
        let PreparedWithMiddleware {
            client,
            req,
            mut extensions,
            made_in,
        } = self;
        let made_in_attempt = made_in.is_some();
        let until = made_in.map(|m| m.until);
        let mut url = 0;
        let (method, fut, error) = match req {
            Ok(mut req) => (
                Some(method_and_url(&req, made_in_attempt, &mut url)),
                Some(async move {
                    // The time left as it goes out (see `Deferred`).
                    if let Some(until) = until {
                        tell_time_left_now(&mut req, until);
                    }
                    client.execute_with_extensions(req, &mut extensions).await
                }),
                None,
            ),
            Err(e) => (None, None, Some(e.into())),
        };
        Sending {
            fut,
            error,
            method,
            url,
            made_in: made_in.map(|m| m.at),
            first: true,
            in_flight: None,
        }
    }
}

/// Type dispatch for the code `#[resilient]` generates around `.send()` and `.execute(…)`
/// (autoref specialization): a reqwest request is stamped and its response recorded; any
/// other value passes through exactly as it was.
#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
pub mod dispatch {
    use std::cell::Cell;

    use super::{Observed, Prepared};

    /// Holds the receiver (or argument) while method resolution picks an impl.
    pub struct Stampable<T>(Cell<Option<T>>);

    impl<T> std::fmt::Debug for Stampable<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Stampable")
        }
    }

    impl<T> Stampable<T> {
        pub fn new(value: T) -> Stampable<T> {
            Stampable(Cell::new(Some(value)))
        }

        fn take(&self) -> T {
            self.0.take().expect("taken once")
        }
    }

    /// `.send()` on a `reqwest::RequestBuilder` (or, feature `reqwest-middleware`, a
    /// `reqwest_middleware::RequestBuilder`): send it stamped.
    pub trait SendRequest: Sized {
        type Prepared;
        fn __resilience_stamp(self) -> Self::Prepared;
        /// The same, for a `.send()` whose receiver shows a safe method only (what it tells
        /// counts for a send of another type, [`PassThrough`]).
        #[inline(always)]
        fn __resilience_stamp_safe(self) -> Self::Prepared {
            self.__resilience_stamp()
        }
    }
    impl SendRequest for &&Stampable<reqwest::RequestBuilder> {
        type Prepared = Prepared;
        fn __resilience_stamp(self) -> Prepared {
            Prepared::new(self.take())
        }
    }
    #[cfg(feature = "reqwest-middleware")]
    impl SendRequest for &&Stampable<reqwest_middleware::RequestBuilder> {
        type Prepared = super::PreparedWithMiddleware;
        fn __resilience_stamp(self) -> super::PreparedWithMiddleware {
            super::PreparedWithMiddleware::new(self.take())
        }
    }

    /// `.send()` on what `.resilient()` made: it stamps itself when sent.
    impl SendRequest for &&Stampable<super::ResilientRequest> {
        type Prepared = super::ResilientRequest;
        fn __resilience_stamp(self) -> super::ResilientRequest {
            self.take()
        }
    }

    /// `.execute(request)`: stamp a `reqwest::Request` argument.
    pub trait StampArg {
        type Arg;
        fn __resilience_stamp_arg(self) -> Self::Arg;
    }
    impl StampArg for &&Stampable<reqwest::Request> {
        type Arg = reqwest::Request;
        fn __resilience_stamp_arg(self) -> reqwest::Request {
            let mut req = self.take();
            let _ = super::with_attempt(|ctx| {
                let method = crate::policy::method_of(req.method());
                // Stamped by hand in this attempt already (`stamp_request` in the helper that
                // built it): its expectation and its count as possibly sent are there. Stamped
                // again, it was expected twice, and the one left over was taken for another
                // request's completion (an SDK's unkeyed POST to the same URL, sent again).
                let url = crate::context::expected_url(method, &req);
                if super::stamped_by_hand_in(ctx, &req, url) {
                    // Handed over now: the time left as it is (stamped a while ago, it would
                    // tell the time left then).
                    super::tell_time_left_now(&mut req, ctx.until);
                } else {
                    super::stamp(ctx, &mut req);
                    if url != 0 {
                        ctx.expect_at(url);
                    }
                }
                // Counted as possibly sent until the `execute` future is polled in the
                // attempt, which records its outcome then (a connect failure sent nothing:
                // it was once counted as sent from its stamping on, and not retried); one
                // whose outcome never comes back (spawned, never polled) stays counted.
                ctx.made_for_execute(method);
            });
            req
        }
    }

    /// `.execute(builder)` of a wrapper of the service's own taking reqwest's builder: what it
    /// sends is not stamped here (unproven), as another type's; not another reqwest version's.
    /// A read (`limiter.execute(c.get(u))`: its method safe, as a copy of the builder shows)
    /// is unproven as another type's read is, and leaves the retries; any other, or one that
    /// cannot be copied (a streamed body), counts as the least safe send.
    impl StampArg for &&Stampable<reqwest::RequestBuilder> {
        type Arg = reqwest::RequestBuilder;
        fn __resilience_stamp_arg(self) -> reqwest::RequestBuilder {
            let builder = self.take();
            let read = builder
                .try_clone()
                .and_then(|b| b.build().ok())
                .is_some_and(|r| r.method().is_safe());
            let unsafe_ = if read {
                0
            } else {
                crate::context::UNPROVEN_UNSAFE
            };
            mark_unproven(unsafe_);
            builder
        }
    }

    /// The future `execute` returned: record its response.
    pub trait ObserveFuture<F> {
        fn __resilience_observe(self) -> Observed<F>;
    }
    impl<F, E> ObserveFuture<F> for &&Stampable<F>
    where
        F: std::future::Future<Output = Result<reqwest::Response, E>>,
        E: super::SentError,
    {
        fn __resilience_observe(self) -> Observed<F> {
            // Made right after its argument was stamped, if it was a request's.
            let stamped =
                super::with_attempt(|ctx| ctx.take_execute_mark().map(|m| (m, ctx.id()))).flatten();
            Observed {
                inner: self.take(),
                settled: false,
                polled: false,
                counted: stamped.map(|(_, at)| at),
                hop: stamped.map(|(m, _)| m).filter(|m| !m.is_safe()),
                redirects_at_start: 0,
                read: stamped.is_some_and(|(m, _)| m.is_safe()),
            }
        }
    }

    /// A send of another type (`T`) ran: marks the attempt ([`AttemptCtx::unproven`]) and says
    /// when `T` is another reqwest version's.
    fn unproven<T>(unsafe_: u8) {
        mark_unproven(unsafe_);
        foreign_reqwest(std::any::type_name::<T>());
    }

    /// Marks the attempt ([`AttemptCtx::unproven`]): something it sent went unstamped. The
    /// body went on, too ([`AttemptCtx::went_on`]): a failure after a nested call that gave
    /// up may be this send's, which no layer retried yet.
    fn mark_unproven(unsafe_: u8) {
        let _ = super::with_attempt(|ctx| {
            ctx.unproven
                .set(ctx.unproven.get() | crate::context::UNPROVEN | unsafe_);
            ctx.went_on_to_another();
        });
    }

    /// Says, once, when `name` (a type's) is reqwest's request builder, client or request: one
    /// that comes here is another version's than the runtime's, or the runtime's seen only
    /// through a generic parameter (its own are stamped by type where the type is known),
    /// whose requests go out unstamped, without the call's key, and leave the attempt
    /// unretried.
    /// Said once, at `warn`: nothing else would tell.
    pub(crate) fn foreign_reqwest(name: &str) {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        // Not the runtime's own version's blocking client (a `spawn_blocking` in a body).
        let foreign = name.starts_with("reqwest::")
            && !name.starts_with("reqwest::blocking::")
            && ["::RequestBuilder", "::Client", "::Request"]
                .iter()
                .any(|t| name.ends_with(t));
        if foreign
            && !SAID.load(std::sync::atomic::Ordering::Relaxed)
            && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                r#type = name,
                runtime_reqwest = "0.13",
                "a reqwest type the annotated function could not see as the runtime's: another reqwest version's, or one it names only through a generic parameter or an associated type; its requests go out without the call's key, trace or deadline headers, unseen, and a call that sent only those is not retried; depend on the runtime's reqwest version, and name reqwest's types in the signature"
            );
        }
    }

    /// Anything else: as it was. A `.send()` or `.execute(…)` on another type (a wrapper
    /// client's builder, `reqwest-middleware`'s without its feature, a database query) may
    /// send a request the runtime does not see: what the body shows of its methods
    /// (`orders.post(u).send()`) no longer proves that its POST went out only where seen
    /// (`AttemptCtx::unproven`; nothing else changes).
    pub trait PassThrough<T> {
        fn __resilience_stamp(self) -> T;
        fn __resilience_stamp_safe(self) -> T;
        fn __resilience_stamp_arg(self) -> T;
        fn __resilience_observe(self) -> T;
    }
    impl<T> PassThrough<T> for &Stampable<T> {
        fn __resilience_stamp(self) -> T {
            unproven::<T>(crate::context::UNPROVEN_UNSAFE);
            self.take()
        }
        /// A `.send()` whose receiver shows a safe method only (`tokens.get(u).send()`).
        fn __resilience_stamp_safe(self) -> T {
            unproven::<T>(0);
            self.take()
        }
        /// `.execute(x)` of another type: a database query's (`.execute(&pool)`) as often as
        /// a client's; what it sent is unproven, not known to need the key.
        fn __resilience_stamp_arg(self) -> T {
            unproven::<T>(0);
            self.take()
        }
        fn __resilience_observe(self) -> T {
            self.take()
        }
    }
}
