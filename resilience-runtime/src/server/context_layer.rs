//! The inbound half of deadline and trace propagation: a tower layer that turns the caller's
//! `X-Timeout-Ms` (or `grpc-timeout`), `traceparent` and `X-Request-Id` into the ambient
//! context of every `#[resilient]` call made while handling the request.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request};
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::{INBOUND, Inbound};
use crate::http::{TRACEPARENT, X_REQUEST_ID, X_TIMEOUT_MS};

/// The unprefixed request id header some gateways send instead of `X-Request-Id`.
const REQUEST_ID: &str = "request-id";

const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Makes the `#[resilient]` calls a handler makes plan within the time its caller still waits,
/// and join the caller's trace.
///
/// Reads, per request:
/// - `X-Timeout-Ms: 1500` (what `#[resilient]` sends on every attempt: the attempt's time left,
///   in whole milliseconds), or `grpc-timeout: 1500m` (gRPC's form: up to 8 digits and a unit,
///   `H M S m u n`); with both, the shorter. The calls made while handling the request get a deadline no later than
///   the time this layer sees the request + that time: make it the outermost layer, so that
///   a wait in a layer outside it counts. Repeated (fields, or a list as a proxy combines
///   them: `100, 5000`), the shortest element counts.
///   A value over [`max`](ContextLayer::max) is clamped to it; a
///   malformed or negative element is ignored. Both are logged at debug level, never an error to
///   the client and never a panic.
/// - `traceparent` (W3C; a version after 00 read by its first four fields): the calls join
///   that trace and keep its sampled flag (the other flags are not sent on). Two of them join
///   no trace.
/// - `X-Request-Id` (or `Request-Id`), in any form of 1 to 128 visible ASCII characters (a
///   UUID, a gateway's `req-…`): the calls send it on as it came. A request without one gets
///   one (an outer `ContextLayer`'s, or a new one), the same on every call its handler makes.
///
/// The headers are trusted: a caller's short time cuts the calls' attempts, and their
/// timeouts count for the breaker. Let a public edge strip them.
///
/// Behind an [`IdempotencyLayer`](super::IdempotencyLayer), on either side of it, the handler
/// of a keyed request it claimed runs on past its caller's attempt so that the retry gets its
/// answer: its calls plan within that layer's `handler_limit`, not the caller's time.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use resilience_runtime::server::ContextLayer;
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "ok" }))
///     .layer(ContextLayer::new().max(Duration::from_secs(60)));
/// ```
///
/// The context is task-local, around the handler's future: a handler that spawns a task, or
/// returns a body streamed after it, hands it on with
/// [`with_inbound`](crate::with_inbound)`(`[`current_inbound()`](crate::current_inbound)`, task)`.
#[derive(Debug, Clone, Copy)]
pub struct ContextLayer {
    max: Duration,
}

impl ContextLayer {
    /// The longest time accepted from a caller by default: 5 minutes.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(300);

    /// A layer with the default [`max`](Self::max).
    pub fn new() -> ContextLayer {
        ContextLayer {
            max: Self::DEFAULT_MAX,
        }
    }

    /// The longest time accepted from a caller; longer values are clamped to it.
    pub fn max(mut self, max: Duration) -> ContextLayer {
        self.max = max.min(super::FOREVER);
        self
    }
}

impl Default for ContextLayer {
    fn default() -> Self {
        ContextLayer::new()
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> ContextService<S> {
        ContextService {
            inner,
            max: self.max,
        }
    }
}

/// The service made by [`ContextLayer`].
#[derive(Debug, Clone)]
pub struct ContextService<S> {
    inner: S,
    max: Duration,
}

impl<S, B> Service<Request<B>> for ContextService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<Inbound, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut inbound = inbound_of(req.headers(), self.max, Instant::now());
        // A request that came without a request id gets one, the same for every call its
        // handler makes (each drew its own: sibling calls of one request could not be told
        // together in the next services' logs): an outer `ContextLayer`'s, or a new one.
        if inbound.request_id.is_none() && inbound.request_id_text.is_none() {
            match INBOUND.try_with(|i| (i.request_id, i.request_id_text.clone())) {
                Ok((Some(id), _)) => inbound.request_id = Some(id),
                Ok((None, Some(text))) => inbound.request_id_text = Some(text),
                _ => inbound.request_id = Some(fastrand::u128(..).max(1)),
            }
        }
        // Inside an `IdempotencyLayer` that claimed the request: the caller's time is its
        // attempt's, and the handler runs on for the retry, up to the layer's limit.
        if let Some(claimed) = req.extensions().get::<Claimed>() {
            inbound.deadline = claimed.until;
            inbound.parent_key = claimed.parent.clone();
        } else if let Ok(Some(outer)) = INBOUND.try_with(|i| i.deadline) {
            // Inside another `ContextLayer` (one on the app, one on a nested router): its
            // deadline, counted from when the request reached it, not from here, later (the
            // time the middleware between them took is the caller's too).
            inbound.deadline = Some(inbound.deadline.map_or(outer, |d| d.min(outer)));
        }
        crate::context::inbound_in_use();
        // The service inside is called in the context too, not only its future polled there:
        // a layer that calls inward as it is called (`map_future`, a hand-written one), with
        // another `ContextLayer` inside it, has that one find this one's id and deadline.
        let fut = INBOUND.sync_scope(inbound.clone(), || self.inner.call(req));
        INBOUND.scope(inbound, fut)
    }
}

/// Set by `IdempotencyLayer` on a request whose key it claimed: its handler runs on past the
/// caller's attempt, until the layer's limit on it.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) until: Option<Instant>,
    /// The request's key, which the handler's `idempotency_key = auto` calls derive theirs
    /// from.
    pub(crate) parent: Option<std::sync::Arc<crate::context::ParentKey>>,
    /// The caller the claiming layer's `scope` found (`None`: it has none, or it found none):
    /// a layer stacked inside with a scope of its own checks it names the same caller.
    pub(crate) scope: Option<std::sync::Arc<str>>,
}

/// The context a request's headers hand down, as of `now`.
pub(crate) fn inbound_of(headers: &HeaderMap, max: Duration, now: Instant) -> Inbound {
    let mut inbound = Inbound::NONE;
    // Each header that parses counts, the shorter first: a malformed `X-Timeout-Ms` does not
    // hide a valid `grpc-timeout`.
    // A header repeated, as fields or folded into one by a proxy (`100, 5000`), counts each
    // value: the shortest.
    let mut left = None;
    for (name, parse) in [
        (&X_TIMEOUT_MS, parse_ms as fn(&[u8]) -> _),
        (&GRPC_TIMEOUT, parse_grpc),
    ] {
        for v in headers.get_all(name) {
            // Told once per field, with the first reason and a count: a field of many bad
            // elements (a comma list a client made up) is not one event, of the whole field,
            // per element.
            let (mut ignored, mut first_why) = (0usize, "");
            for one in v.as_bytes().split(|b| *b == b',') {
                match parse(one) {
                    Ok(Some(d)) => left = Some(left.map_or(d, |l: Duration| l.min(d))),
                    Ok(None) => {}
                    Err(why) => {
                        if ignored == 0 {
                            first_why = why;
                        }
                        ignored += 1;
                    }
                }
            }
            if ignored > 0 {
                let shown = &v.as_bytes()[..v.len().min(64)];
                tracing::debug!(
                    header = name.as_str(),
                    value = ?String::from_utf8_lossy(shown),
                    why = first_why,
                    ignored,
                    "inbound timeout ignored"
                );
            }
        }
    }
    if let Some(d) = left {
        let d = if d > max {
            tracing::debug!(
                requested_ms = d.as_millis() as u64,
                max_ms = max.as_millis() as u64,
                "inbound timeout above the maximum: clamped"
            );
            max
        } else {
            d
        };
        inbound = inbound.deadline(super::after(now, d));
    }
    // One `traceparent` only: with two (fields, or folded into one) the request belongs to no
    // one trace, and its calls start their own, as W3C Trace Context's test suite expects.
    let mut parents = headers.get_all(&TRACEPARENT).iter();
    let parent = match (parents.next(), parents.next()) {
        (Some(one), None) => {
            let one = one.to_str().ok().filter(|v| !v.contains(','));
            if one.is_none() {
                tracing::debug!("traceparent not of visible ASCII, or a list: a new trace");
            }
            one
        }
        (Some(_), Some(_)) => {
            tracing::debug!("more than one traceparent: a new trace");
            None
        }
        _ => None,
    };
    if let Some(tp) = parent {
        inbound = inbound.traceparent(tp);
        // Its `tracestate`, one header or several (combined as one list, as the spec says).
        if inbound.trace.is_some() {
            // A field that is not visible ASCII makes the list not of its form: dropped whole,
            // not the list sent on without that field.
            let fields = headers.get_all(&crate::http::TRACESTATE);
            let ascii = fields.iter().all(|v| v.to_str().is_ok());
            if !ascii {
                tracing::debug!("tracestate field not of visible ASCII: the tracestate dropped");
            }
            let mut states = fields
                .iter()
                .filter(|_| ascii)
                .filter_map(|v| v.to_str().ok());
            match (states.next(), states.next()) {
                (Some(one), None) => inbound = inbound.tracestate(one),
                (Some(first), Some(second)) => {
                    let mut all = format!("{first},{second}");
                    for s in states {
                        all.push(',');
                        all.push_str(s);
                    }
                    inbound = inbound.tracestate(&all);
                }
                _ => {}
            }
        }
    }
    // `X-Request-Id`, or the unprefixed `Request-Id` some gateways send: the first that is
    // a request id (an `X-Request-Id` too long or not ASCII does not hide a good one).
    for value in [headers.get(&X_REQUEST_ID), headers.get(REQUEST_ID)] {
        if let Some(id) = value.and_then(|v| v.to_str().ok()) {
            inbound = inbound.request_id(id);
        }
        if inbound.request_id.is_some() || inbound.request_id_text.is_some() {
            break;
        }
    }
    inbound
}

fn parse_ms(v: &[u8]) -> Result<Option<Duration>, &'static str> {
    crate::http::parse_timeout_ms(v).map(|ms| Some(Duration::from_millis(ms)))
}

fn parse_grpc(v: &[u8]) -> Result<Option<Duration>, &'static str> {
    // ASCII only: the unit is split off as the last byte, which must not cut a character.
    if !v.is_ascii() {
        return Err("not ASCII");
    }
    let s = std::str::from_utf8(v).map_err(|_| "not ASCII")?.trim();
    let (digits, unit) = s.split_at(s.len().saturating_sub(1));
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not 1 to 8 digits and a unit");
    }
    let n: u64 = digits.parse().map_err(|_| "not a number")?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err("unknown unit"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[tokio::test(start_paused = true)]
    async fn reads_clamps_and_ignores() {
        let now = Instant::now();
        let max = Duration::from_secs(60);
        let at = |h: &[(&'static str, &'static [u8])]| inbound_of(&headers(h), max, now).deadline;
        assert_eq!(
            at(&[("x-timeout-ms", b"1500")]),
            Some(now + Duration::from_millis(1500))
        );
        assert_eq!(at(&[("x-timeout-ms", b"0")]), Some(now));
        assert_eq!(
            at(&[("grpc-timeout", b"2S")]),
            Some(now + Duration::from_secs(2))
        );
        assert_eq!(
            at(&[("grpc-timeout", b"250m")]),
            Some(now + Duration::from_millis(250))
        );
        // Absurd: clamped.
        assert_eq!(
            at(&[("x-timeout-ms", b"99999999999999999999999")]),
            Some(now + max)
        );
        assert_eq!(at(&[("grpc-timeout", b"99999999H")]), Some(now + max));
        // Malformed or negative: ignored.
        for bad in [
            &b"-5"[..],
            b"",
            b"1.5",
            b"12ms",
            b"\xff",
            b"1 2",
            b"\xc2\xa0150\xc2\xa0",
        ] {
            let h = {
                let mut h = HeaderMap::new();
                h.insert("x-timeout-ms", HeaderValue::from_bytes(bad).unwrap());
                h
            };
            assert_eq!(inbound_of(&h, max, now).deadline, None, "{bad:?}");
        }
        assert_eq!(at(&[("grpc-timeout", b"123456789m")]), None);
        // Bytes above 0x7f are valid in a header value: not a panic splitting a character.
        assert_eq!(at(&[("grpc-timeout", b"1\xc3\xa9")]), None);
        assert_eq!(at(&[("grpc-timeout", b"\xc3\xa9")]), None);
        assert_eq!(at(&[("x-timeout-ms", b"1\xc3\xa9")]), None);
        assert_eq!(at(&[("grpc-timeout", b"5x")]), None);
        assert_eq!(at(&[]), None);
        // Both: the shorter; a malformed one does not hide the other.
        assert_eq!(
            at(&[("x-timeout-ms", b"100"), ("grpc-timeout", b"5S")]),
            Some(now + Duration::from_millis(100))
        );
        assert_eq!(
            at(&[("x-timeout-ms", b"5000"), ("grpc-timeout", b"250m")]),
            Some(now + Duration::from_millis(250))
        );
        assert_eq!(
            at(&[("x-timeout-ms", b"abc"), ("grpc-timeout", b"2S")]),
            Some(now + Duration::from_secs(2))
        );
        // Repeated, as fields or folded by a proxy: the shortest value counts.
        let ms = |n| Some(now + Duration::from_millis(n));
        assert_eq!(
            at(&[("x-timeout-ms", b"5000"), ("x-timeout-ms", b"100")]),
            ms(100)
        );
        assert_eq!(at(&[("x-timeout-ms", b"100, 5000")]), ms(100));
        assert_eq!(at(&[("x-timeout-ms", b"5000,100")]), ms(100));
        assert_eq!(at(&[("x-timeout-ms", b"abc, 300")]), ms(300));
        assert_eq!(
            at(&[("grpc-timeout", b"5S"), ("grpc-timeout", b"250m")]),
            ms(250)
        );
    }

    /// Two `traceparent` fields (or two folded into one): no trace is joined.
    #[test]
    fn a_repeated_traceparent_joins_no_trace() {
        const TP: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        const OTHER: &[u8] = b"00-11111111111111111111111111111111-2222222222222222-01";
        let trace = |pairs: &[(&'static str, &'static [u8])]| {
            inbound_of(&headers(pairs), Duration::from_secs(1), Instant::now()).trace
        };
        assert!(trace(&[("traceparent", TP)]).is_some());
        assert_eq!(trace(&[("traceparent", TP), ("traceparent", OTHER)]), None);
        assert_eq!(trace(&[("traceparent", TP), ("traceparent", TP)]), None);
        let folded = [TP, b", ", OTHER].concat().leak();
        assert_eq!(trace(&[("traceparent", folded)]), None);
    }

    /// A `tracestate` field not of visible ASCII makes the whole list not of its form:
    /// dropped, not sent on without that field.
    #[test]
    fn a_tracestate_field_not_ascii_drops_the_whole_list() {
        const TP: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let state = |pairs: &[(&'static str, &'static [u8])]| {
            inbound_of(&headers(pairs), Duration::from_secs(1), Instant::now()).tracestate
        };
        assert!(
            state(&[
                ("traceparent", TP),
                ("tracestate", b"congo=1"),
                ("tracestate", b"rojo=2")
            ])
            .is_some()
        );
        assert_eq!(
            state(&[
                ("traceparent", TP),
                ("tracestate", b"congo=1"),
                ("tracestate", b"rojo=\xc3\xa9")
            ]),
            None
        );
    }

    /// The README's default: a caller may hand down at most 5 minutes; a layer told "no
    /// bound" (`Duration::MAX`) takes an absurd header for a far deadline, not an overflow.
    #[tokio::test(start_paused = true)]
    async fn the_default_bound_is_five_minutes_and_none_is_no_overflow() {
        let now = Instant::now();
        let absurd = headers(&[("x-timeout-ms", b"99999999999999999999999")]);
        let default = ContextLayer::new().max;
        assert_eq!(
            inbound_of(&absurd, default, now).deadline,
            Some(now + Duration::from_secs(300))
        );
        let unbounded = ContextLayer::new().max(Duration::MAX).max;
        assert_eq!(
            inbound_of(&absurd, unbounded, now).deadline,
            Some(now + crate::server::FOREVER)
        );
    }

    #[test]
    fn trace_and_request_id() {
        let i = inbound_of(
            &headers(&[
                (
                    "traceparent",
                    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                ),
                ("x-request-id", b"00000000000000000000000000000abc"),
            ]),
            Duration::from_secs(1),
            Instant::now(),
        );
        assert_eq!(
            i.trace,
            Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 0))
        );
        assert_eq!(i.request_id, Some(0xabc));
        let i = inbound_of(
            &headers(&[("traceparent", b"garbage"), ("x-request-id", b"not-hex")]),
            Duration::from_secs(1),
            Instant::now(),
        );
        assert_eq!((i.trace, i.request_id), (None, None));
        assert_eq!(*i.request_id_text.unwrap(), "not-hex", "kept as it came");
    }

    #[test]
    fn request_ids_in_other_forms_are_kept_as_they_came() {
        let id = |pairs: &[(&'static str, &'static [u8])]| {
            let i = inbound_of(&headers(pairs), Duration::from_secs(1), Instant::now());
            (i.request_id, i.request_id_text.map(|v| (*v).clone()))
        };
        let uuid = "550e8400-e29b-41d4-a716-446655440000";
        assert_eq!(id(&[("x-request-id", uuid.as_bytes())]).1.unwrap(), uuid);
        // Short hex is not the library's form: sent as it came, not padded.
        assert_eq!(id(&[("x-request-id", b"5eed")]).1.unwrap(), "5eed");
        // Upper-case hex likewise (the library would send it lower-cased).
        let upper = "0AF7651916CD43DD8448EB211C80319C";
        assert_eq!(
            id(&[("x-request-id", upper.as_bytes())]),
            (None, Some(HeaderValue::from_static(upper)))
        );
        // `Request-Id` when there is no `X-Request-Id`; `X-Request-Id` when both.
        assert_eq!(id(&[("request-id", b"req-42")]).1.unwrap(), "req-42");
        assert_eq!(
            id(&[("request-id", b"req-42"), ("x-request-id", b"req-43")])
                .1
                .unwrap(),
            "req-43"
        );
        // Not sent on: empty, inner spaces, longer than 128 characters.
        assert_eq!(id(&[("x-request-id", b"")]), (None, None));
        assert_eq!(id(&[("x-request-id", b"a b")]), (None, None));
        assert_eq!(id(&[("x-request-id", &[b'a'; 129])]), (None, None));
        assert!(id(&[("x-request-id", &[b'a'; 128])]).1.is_some());
        // One that is none does not hide a `Request-Id` that is.
        assert_eq!(
            id(&[("x-request-id", b"a b"), ("request-id", b"req-44")])
                .1
                .unwrap(),
            "req-44"
        );
    }
}
