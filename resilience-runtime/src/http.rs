//! The request-builder extension: stamps every attempt and records what the server answered.

use std::time::SystemTime;

use reqwest::header::{HeaderName, HeaderValue, RETRY_AFTER};

use crate::context::{ATTEMPT, AttemptCtx, RequestId};
use crate::policy::Method;

/// `Idempotency-Key`: the same value on every attempt of one logical call.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `X-Request-Id`: stable across the attempts of one call.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C `traceparent`: the same trace id on every attempt, a new parent id per attempt.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The attempt number, 1 for the first.
pub const X_ATTEMPT: HeaderName = HeaderName::from_static("x-attempt");

/// Adds [`resilient`](RequestBuilderExt::resilient) to `reqwest::RequestBuilder`.
pub trait RequestBuilderExt {
    /// Marks this request as an attempt of the enclosing `#[resilient]` call: `send()` then
    /// stamps `Idempotency-Key`, `X-Request-Id`, `traceparent` and `X-Attempt`, and records the
    /// response status and `Retry-After` for the retry decision.
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
    /// Sends the request, like `reqwest::RequestBuilder::send`.
    pub async fn send(self) -> Result<reqwest::Response, reqwest::Error> {
        let (client, req) = self.inner.build_split();
        let mut req = req?;
        let _ = ATTEMPT.try_with(|ctx| stamp(ctx, &mut req));
        let res = client.execute(req).await;
        if let Ok(resp) = &res {
            observe(resp);
        }
        res
    }

    /// The underlying builder, unstamped.
    pub fn into_inner(self) -> reqwest::RequestBuilder {
        self.inner
    }
}

fn stamp(ctx: &AttemptCtx, req: &mut reqwest::Request) {
    ctx.note_method(Method::from_http(req.method()));
    ctx.stamped.set(true);
    // telemetry (issue 12): method, server and URL on the attempt's span.
    crate::telemetry::on_request(req);
    let headers = req.headers_mut();
    match &ctx.key {
        Some(k) if !headers.contains_key(&IDEMPOTENCY_KEY) => {
            headers.insert(IDEMPOTENCY_KEY, k.header());
        }
        Some(_) => {}
        None if headers.contains_key(&IDEMPOTENCY_KEY) => {}
        None => ctx.all_keyed.set(false),
    }
    // A request id or trace context the caller propagates itself (say, from the request it is
    // serving) wins over the generated ones.
    if !headers.contains_key(&X_REQUEST_ID)
        && let Ok(v) = HeaderValue::from_str(&RequestId(ctx.request_id).to_string())
    {
        headers.insert(X_REQUEST_ID, v);
    }
    // telemetry (issue 12): traceparent/tracestate, from OpenTelemetry when there is a context.
    crate::telemetry::inject_trace_context(headers, ctx.trace_id, ctx.span_id);
    headers.insert(X_ATTEMPT, HeaderValue::from(ctx.attempt));
}

/// Records a response's status and `Retry-After` for the retry decision of the current attempt.
///
/// `.resilient().send()` does this itself; call it when a response reached you another way.
/// A no-op outside a `#[resilient]` function.
pub fn observe(resp: &reqwest::Response) {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::retry_after::parse(v, SystemTime::now()));
    let _ = ATTEMPT.try_with(|ctx| {
        ctx.status.set(Some(status));
        // telemetry (issue 12)
        crate::telemetry::on_response(status);
        ctx.retry_after.set(retry_after);
    });
}
