//! What one attempt knows, reachable from the request builder through a task-local.

use std::cell::Cell;
use std::time::Duration;

use reqwest::header::HeaderValue;

use crate::policy::Method;

tokio::task_local! {
    pub(crate) static ATTEMPT: AttemptCtx;
}

/// The idempotency key of one logical call.
#[derive(Debug, Clone)]
pub(crate) enum Key {
    Auto(uuid::Uuid),
    Given(HeaderValue),
}

impl Key {
    pub(crate) fn header(&self) -> HeaderValue {
        match self {
            Key::Auto(u) => {
                let mut buf = uuid::Uuid::encode_buffer();
                let s = u.hyphenated().encode_lower(&mut buf);
                HeaderValue::from_str(s).expect("a UUID is a valid header value")
            }
            Key::Given(h) => h.clone(),
        }
    }
}

/// Per-attempt context: identities to stamp, and what the attempt's requests recorded.
#[derive(Debug)]
pub(crate) struct AttemptCtx {
    pub attempt: u32,
    pub request_id: u128,
    pub trace_id: u128,
    pub span_id: u64,
    pub key: Option<Key>,
    /// At least one request of this attempt was stamped through `.resilient()`.
    pub stamped: Cell<bool>,
    /// Every stamped request carried the key.
    pub all_keyed: Cell<bool>,
    /// The least safe method sent in this attempt.
    pub sent_method: Cell<Option<Method>>,
    pub status: Cell<Option<u16>>,
    pub retry_after: Cell<Option<Duration>>,
}

impl AttemptCtx {
    pub(crate) fn new(
        attempt: u32,
        request_id: u128,
        trace_id: u128,
        key: Option<Key>,
    ) -> AttemptCtx {
        AttemptCtx {
            attempt,
            request_id,
            trace_id,
            span_id: fastrand::u64(..).max(1),
            key,
            stamped: Cell::new(false),
            all_keyed: Cell::new(true),
            sent_method: Cell::new(None),
            status: Cell::new(None),
            retry_after: Cell::new(None),
        }
    }

    pub(crate) fn note_method(&self, m: Method) {
        let worst = self.sent_method.get().map_or(m, |prev| prev.least_safe(m));
        self.sent_method.set(Some(worst));
    }
}

/// What the current attempt looks like from inside a `#[resilient]` function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptInfo {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The `X-Request-Id` of the call, the same on every attempt.
    pub request_id: String,
    /// The `Idempotency-Key` of the call, the same on every attempt.
    pub idempotency_key: Option<String>,
    /// The W3C `traceparent` this attempt sends.
    pub traceparent: String,
}

/// The current attempt, when called from inside a `#[resilient]` function.
pub fn current_attempt() -> Option<AttemptInfo> {
    ATTEMPT
        .try_with(|c| AttemptInfo {
            attempt: c.attempt,
            request_id: RequestId(c.request_id).to_string(),
            idempotency_key: c
                .key
                .as_ref()
                .and_then(|k| k.header().to_str().ok().map(str::to_owned)),
            // telemetry (issue 12): the OpenTelemetry trace context when there is one.
            traceparent: crate::telemetry::traceparent(c.trace_id, c.span_id),
        })
        .ok()
}

/// A call's request id as it appears in `X-Request-Id` and in the call's span: 32 hex digits.
pub(crate) struct RequestId(pub u128);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

pub(crate) fn format_traceparent(trace: u128, span: u64) -> String {
    format!("00-{trace:032x}-{span:016x}-01")
}
