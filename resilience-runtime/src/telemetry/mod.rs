//! Observability hooks: the attempt's client span, its trace context, and metrics.
//!
//! The session, the request stamping and the breaker call the small functions below at a few
//! points; what they do depends on the cargo features:
//!
//! - always: a span per attempt (`attempt`), a child of the call's span (`resilient`), with the
//!   OpenTelemetry semantic conventions' HTTP client fields. Disabled, and free, when the
//!   call's span is (no subscriber, or one that filters it out).
//! - `opentelemetry`: `traceparent` and `tracestate` from the OpenTelemetry context of the span
//!   current when the request is stamped (the attempt's, or a span the body entered inside it;
//!   else the current context), through the global propagator (W3C Trace Context when
//!   none is set). Without it, or outside any OpenTelemetry context: a W3C `traceparent` of
//!   the call's own trace id, as before. A request that already carries one keeps it.
//! - `metrics`: counters, histograms and gauges through the `metrics` facade ([`METRICS`]).
//!
//! # The call span
//!
//! `resilient` (its `otel.name` the function's path, the name OpenTelemetry exports it under):
//! `function`, `policy`, `method`, `request_id`, `depth`; at the call's end
//! `resilience.outcome` (the metrics' outcome, below) and `otel.status_code = "error"` when the
//! call failed or was refused (not when its caller stopped waiting).
//!
//! # Warn events
//!
//! A call's warn events (the failure it gave up on, a refusal) name its `function` and `policy`
//! themselves, for a log kept at warn that leaves the call's info span out. A refusal by a
//! breaker, bulkhead, rate limit or concurrency limit logs at most one event a second per
//! function and kind, its `suppressed` field saying how many were held back since the last;
//! the metrics count every refusal.
//!
//! # The attempt span
//!
//! | field | value |
//! |---|---|
//! | `otel.name`, `http.request.method` | the method (`GET`) |
//! | `otel.kind` | `client` |
//! | `server.address`, `server.port`, `url.full` | from the URL sent (user and password, signatures, and the values of query parameters named as credentials, tokens, keys or session ids redacted; the fragment left off) |
//! | `http.response.status_code` | the status received |
//! | `error.type` | the status code when 400 or more, else the failure class (`timeout`, `reset`, `connect`, …) |
//! | `otel.status_code` | `error` when the attempt failed or was answered 400 or more (a client span's error per the conventions, even when the body took the answer for a success) |
//! | `http.request.resend_count` | from the second attempt on: the attempt number − 1 |
//! | `resilience.attempt` | 1 for the first |
//! | `resilience.class`, `resilience.decision`, `resilience.reason`, `resilience.delay_ms` | how it ended: the failure class, `success` / `retry` / `ask` (again, for the replay of a keyed request still in progress: not a retry) / `give up`, or for a hedged attempt the call did not act on, `cancelled` (another answered first, or the caller stopped waiting) / `failed` (it failed while another of its round still ran: its class and `error.type` are recorded), why it gave up, the delay before the retry or the ask |
//!
//! # Metrics
//!
//! With the `metrics` feature, through whatever recorder the application installs (Prometheus,
//! OpenTelemetry, StatsD, …). A global recorder is given their units and help texts when the
//! runtime first records to it; [`describe_metrics`] gives them at once (and to a local
//! recorder where one is set); [`HTTP_DURATION_BUCKETS`] are the bucket boundaries the semantic conventions advise
//! for the durations. Labels are of low cardinality only: the policy, the function, and a
//! fixed set of outcomes, classes and states.
//!
//! | name | kind | unit | labels | what |
//! |---|---|---|---|---|
//! | `resilience.client.calls` | counter | `{call}` | `policy`, `function`, `outcome` | calls ended, by outcome |
//! | `resilience.client.call.duration` | histogram | `s` | `policy`, `function`, `outcome` | a call's duration, attempts and backoff included |
//! | `resilience.client.attempts` | counter | `{attempt}` | `policy`, `function`, `class` | attempts made, by how they ended |
//! | `http.client.request.duration` | histogram | `s` | `policy`, `function`, `class`, `http.request.method` | an attempt's duration |
//! | `resilience.client.retries` | counter | `{retry}` | `policy`, `function`, `class` | retries made, by the class of the failure retried |
//! | `resilience.breaker.state` | gauge | | `breaker` | 0 closed, 1 half-open, 2 open |
//! | `resilience.breaker.transitions` | counter | `{transition}` | `breaker`, `from`, `to` | state changes |
//! | `resilience.budget.available` | gauge | `{retry}` | `budget` | retries the budget would allow now |
//! | `resilience.bulkhead.in_flight` | gauge | `{call}` | `bulkhead` | calls holding a slot |
//! | `resilience.concurrency_limit.limit` | gauge | `{call}` | `concurrency_limit` | an adaptive limit's value now |
//! | `resilience.concurrency_limit.in_flight` | gauge | `{call}` | `concurrency_limit` | calls holding one of its slots |
//! | `resilience.idempotency.requests` | counter | `{request}` | `outcome`, `http.route` | requests the idempotency layer (`server::IdempotencyLayer`) covered, by how it answered them (feature `server`) |
//! | `resilience.idempotency.pending` | gauge | `{response}` | | responses that layer keeps in memory until its store takes them |
//! | `resilience.client.hedges` | counter | `{hedge}` | `policy`, `function`, `outcome` | hedges started, by whether one answered first (`won`) or not (`lost`) |
//! | `resilience.client.fallbacks` | counter | `{call}` | `policy`, `function`, `outcome` | calls that failed for good and met their fallback: `called`, or `withheld` (a request that needs a key may have been carried out: the error comes back) |
//! | `resilience.rate_limit.local_decisions` | counter | `{decision}` | `rate_limit` | decisions a limit shared through Redis took locally: no Redis given, Redis failed, or known down (each instance then holds to the limit alone) |
//!
//! - `outcome`: `successful_without_retry`, `successful_with_retry`, `failed_without_retry`,
//!   `failed_with_retry`, `rejected_breaker`, `rejected_budget`, `rejected_bulkhead`,
//!   `rejected_rate_limit`, `cancelled` (its caller stopped waiting: the call was dropped
//!   before it ended, in an attempt, a backoff or the wait for a slot).
//! - `class`: `ok` (the attempt succeeded), or the failure class: `connect`, `reset`,
//!   `timeout`, `status` (a status the policy may retry, or one the body turned into an
//!   error), `permanent`, `rejected` (the body returned a nested call's refusal: its open
//!   breaker, spent budget, full bulkhead or rate limit).
//! - `from`, `to`: `closed`, `open`, `half-open`.
//! - the idempotency layer's `outcome`: `handled` (the handler ran, its answer kept),
//!   `replayed`, `released` (the handler ran, its status is not kept or the service failed:
//!   the key was given back), `in_progress` (409), `key_reused` (422), `key_missing`,
//!   `key_invalid` (400), `scope_missing` (400: keys are scoped by caller, and the request
//!   named none), `scope_conflict` (500: a layer with a scope inside one that claimed the
//!   request without it), `body_too_large` (413), `body_unreadable` (400),
//!   `store_unavailable` (503), `handler_failed` (a panic), `handler_timed_out`,
//!   `response_not_kept` (too large to keep), `response_failed` (its body failed after a kept
//!   status), `claim_lost` (the handler answered after its claim ran out and another request
//!   took the key: it may have run twice), `unprotected` (no key where it is optional).
//!
//! Gauges are set when a call ends (the bulkhead's also when one starts), a breaker's state
//! also on each transition, an adaptive limit's when a call takes or gives back a slot and
//! whenever the limit moves. A cancelled call's attempt span ends with
//! `resilience.decision = "cancelled"`; the attempt is not counted in the attempt metrics (as
//! for a hedge overtaken by another).
//! The Prometheus exporter's recommended naming turns the dots into underscores and adds the
//! unit and `_total`: `resilience_client_calls_total`, `http_client_request_duration_seconds`.

pub(crate) mod span;

#[cfg(feature = "metrics")]
pub(crate) mod metrics;
#[cfg(feature = "opentelemetry")]
pub(crate) mod otel;

use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::time::Instant;
use tracing::Span;

pub(crate) use span::{attempt_span, on_request};

use crate::classify::Class;
use crate::decision::GiveUp;
use crate::policy::Policy;
use crate::registry::Resolved;

#[cfg(feature = "metrics")]
pub use metrics::describe_metrics;
#[cfg(feature = "metrics")]
pub(crate) use metrics::{Instruments, breaker_transition, instruments};
#[cfg(all(feature = "metrics", feature = "server"))]
pub(crate) use metrics::{increment_static, set_static};

/// Without the `metrics` feature: nothing to keep.
#[cfg(not(feature = "metrics"))]
#[derive(Debug)]
pub(crate) struct Instruments;

#[cfg(not(feature = "metrics"))]
pub(crate) fn instruments(
    _: &'static Policy,
    _: &'static str,
    _: &'static str,
) -> &'static Instruments {
    &Instruments
}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn breaker_transition(
    _: &'static str,
    _: crate::breaker::BreakerState,
    _: crate::breaker::BreakerState,
) {
}

/// The metric names, as recorded.
pub mod names {
    /// Calls that ended, by outcome (counter).
    pub const CALLS: &str = "resilience.client.calls";
    /// Time from a call's start to its answer (histogram, seconds).
    pub const CALL_DURATION: &str = "resilience.client.call.duration";
    /// Attempts by failure class (counter).
    pub const ATTEMPTS: &str = "resilience.client.attempts";
    /// One attempt, as the HTTP semantic conventions name it (histogram, seconds).
    pub const ATTEMPT_DURATION: &str = "http.client.request.duration";
    /// Retries by failure class (counter).
    pub const RETRIES: &str = "resilience.client.retries";
    /// A breaker's state: 0 closed, 1 half-open, 2 open (gauge).
    pub const BREAKER_STATE: &str = "resilience.breaker.state";
    /// A breaker's state changes (counter).
    pub const BREAKER_TRANSITIONS: &str = "resilience.breaker.transitions";
    /// Retries a budget would grant now (gauge).
    pub const BUDGET_AVAILABLE: &str = "resilience.budget.available";
    /// Calls holding a bulkhead slot (gauge).
    pub const BULKHEAD_IN_FLIGHT: &str = "resilience.bulkhead.in_flight";
    /// Hedges sent, by whether they answered first (`outcome="won"`) or not (`"lost"`)
    /// (counter).
    pub const HEDGES: &str = "resilience.client.hedges";
    /// Calls that failed for good and met their fallback: called (`outcome="called"`), or
    /// withheld because an attempt may have carried out a request that needs a key
    /// (`"withheld"`) (counter).
    pub const FALLBACKS: &str = "resilience.client.fallbacks";
    /// An adaptive concurrency limit's value (gauge).
    pub const CONCURRENCY_LIMIT: &str = "resilience.concurrency_limit.limit";
    /// Calls holding a slot of an adaptive concurrency limit (gauge).
    pub const CONCURRENCY_IN_FLIGHT: &str = "resilience.concurrency_limit.in_flight";
    /// Requests the idempotency layer covered, by how it answered them (counter).
    pub const IDEMPOTENCY_REQUESTS: &str = "resilience.idempotency.requests";
    /// Responses the idempotency layer keeps in memory until its store takes them (gauge).
    pub const IDEMPOTENCY_PENDING: &str = "resilience.idempotency.pending";
    /// Decisions a rate limit shared through Redis took locally: no Redis given, Redis failed,
    /// or known down (counter).
    pub const RATE_LIMIT_LOCAL_DECISIONS: &str = "resilience.rate_limit.local_decisions";
}

/// Every metric: name, kind, unit (UCUM, as the semantic conventions write it), help text.
pub const METRICS: [(&str, &str, &str, &str); 16] = [
    (
        names::CALLS,
        "counter",
        "{call}",
        "Calls of #[resilient] functions that ended, by outcome",
    ),
    (
        names::CALL_DURATION,
        "histogram",
        "s",
        "Duration of #[resilient] calls, attempts and backoff included",
    ),
    (
        names::ATTEMPTS,
        "counter",
        "{attempt}",
        "Attempts the call acted on (a hedged round once), by how they ended (ok or the failure class)",
    ),
    (
        names::ATTEMPT_DURATION,
        "histogram",
        "s",
        "Duration of one attempt (an HTTP client request)",
    ),
    (
        names::RETRIES,
        "counter",
        "{retry}",
        "Retries made, by the class of the failure retried",
    ),
    (
        names::BREAKER_STATE,
        "gauge",
        "",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open",
    ),
    (
        names::BREAKER_TRANSITIONS,
        "counter",
        "{transition}",
        "Circuit breaker state changes",
    ),
    (
        names::BUDGET_AVAILABLE,
        "gauge",
        "{retry}",
        "Retries the retry budget would allow now",
    ),
    (
        names::BULKHEAD_IN_FLIGHT,
        "gauge",
        "{call}",
        "Calls holding a bulkhead slot",
    ),
    (
        names::HEDGES,
        "counter",
        "{hedge}",
        "Hedges sent, by whether they answered first (won) or not (lost)",
    ),
    (
        names::FALLBACKS,
        "counter",
        "{call}",
        "Calls that failed for good and met their fallback: called, or withheld (a request that needs a key may have been carried out)",
    ),
    (
        names::CONCURRENCY_LIMIT,
        "gauge",
        "{call}",
        "An adaptive concurrency limit: calls it lets in flight now",
    ),
    (
        names::CONCURRENCY_IN_FLIGHT,
        "gauge",
        "{call}",
        "Calls holding a slot of an adaptive concurrency limit",
    ),
    (
        names::IDEMPOTENCY_REQUESTS,
        "counter",
        "{request}",
        "Requests the idempotency layer covered, by how it answered them",
    ),
    (
        names::IDEMPOTENCY_PENDING,
        "gauge",
        "{response}",
        "Responses the idempotency layer keeps in memory until its store takes them",
    ),
    (
        names::RATE_LIMIT_LOCAL_DECISIONS,
        "counter",
        "{decision}",
        "Decisions a rate limit shared through Redis took locally (no Redis, Redis failed or known down)",
    ),
];

/// Bucket boundaries for the duration histograms, in seconds: the semantic conventions' advice
/// for `http.client.request.duration`.
pub const HTTP_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The `class` label's values; index 0 is a successful attempt.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const CLASSES: [&str; 7] = [
    "ok",
    "connect",
    "reset",
    "timeout",
    "status",
    "permanent",
    "rejected",
];

#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn class_index(class: Option<Class>) -> usize {
    match class {
        None => 0,
        Some(Class::Connect) => 1,
        Some(Class::Reset) => 2,
        Some(Class::Timeout) => 3,
        Some(Class::Status(_)) => 4,
        Some(Class::Permanent) => 5,
        Some(Class::Rejected) => 6,
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    SuccessfulWithoutRetry,
    SuccessfulWithRetry,
    FailedWithoutRetry,
    FailedWithRetry,
    RejectedBreaker,
    RejectedBudget,
    RejectedBulkhead,
    RejectedRateLimit,
    Cancelled,
}

impl Outcome {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [Outcome; 9] = [
        Outcome::SuccessfulWithoutRetry,
        Outcome::SuccessfulWithRetry,
        Outcome::FailedWithoutRetry,
        Outcome::FailedWithRetry,
        Outcome::RejectedBreaker,
        Outcome::RejectedBudget,
        Outcome::RejectedBulkhead,
        Outcome::RejectedRateLimit,
        Outcome::Cancelled,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Outcome::SuccessfulWithoutRetry => "successful_without_retry",
            Outcome::SuccessfulWithRetry => "successful_with_retry",
            Outcome::FailedWithoutRetry => "failed_without_retry",
            Outcome::FailedWithRetry => "failed_with_retry",
            Outcome::RejectedBreaker => "rejected_breaker",
            Outcome::RejectedBudget => "rejected_budget",
            Outcome::RejectedBulkhead => "rejected_bulkhead",
            Outcome::RejectedRateLimit => "rejected_rate_limit",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// A call that failed or was refused (not one its caller stopped waiting for).
    const fn failed(self) -> bool {
        !matches!(
            self,
            Outcome::SuccessfulWithoutRetry | Outcome::SuccessfulWithRetry | Outcome::Cancelled
        )
    }

    /// A call that succeeded; `retried`: after retrying a failure (not after a hedge or an ask
    /// for a replay).
    pub(crate) fn succeeded(retried: bool) -> Outcome {
        if retried {
            Outcome::SuccessfulWithRetry
        } else {
            Outcome::SuccessfulWithoutRetry
        }
    }

    /// A call that gave up (its last attempt perhaps refused by an open breaker), for the
    /// reason `why`; `retried` as for [`succeeded`](Self::succeeded).
    pub(crate) fn gave_up(retried: bool, why: GiveUp, circuit_open: bool) -> Outcome {
        match why {
            GiveUp::BudgetExhausted => Outcome::RejectedBudget,
            _ if circuit_open => Outcome::RejectedBreaker,
            _ if !retried => Outcome::FailedWithoutRetry,
            _ => Outcome::FailedWithRetry,
        }
    }
}

/// How an attempt ended: its failure class (`None`: it succeeded), the status it received,
/// and what the call does next.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptEnd {
    pub class: Option<Class>,
    pub status: Option<u16>,
    /// `"success"`, `"retry"`, `"ask"` (for the replay of a keyed request still in progress)
    /// or `"give up"`.
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    /// The delay before the retry, when the decision is to retry.
    pub delay: Option<Duration>,
}

/// An attempt in progress: its span, and (with `metrics`) when it started.
#[derive(Debug)]
pub(crate) struct AttemptScope {
    span: Span,
    #[cfg(feature = "metrics")]
    started: Instant,
    /// When the attempt ended, if before the call acted on it (an answer of a hedged round
    /// that ends on it later: [`KeptAnswer`]); else when the call acts on it.
    #[cfg(feature = "metrics")]
    ended: Option<Instant>,
}

impl AttemptScope {
    /// Enters the attempt's span, when it is enabled (the body is polled in it).
    #[inline]
    pub(crate) fn enter(&self) -> Option<tracing::span::Entered<'_>> {
        (!self.span.is_disabled()).then(|| self.span.enter())
    }

    /// Attempt number `attempt` of the call whose span is `call`, starting at `started`;
    /// `None` when there is nothing to record (no span, no metrics).
    #[inline]
    pub(crate) fn start(
        call: &Span,
        policy: &Policy,
        attempt: u32,
        started: Instant,
    ) -> Option<Self> {
        #[cfg(not(feature = "metrics"))]
        {
            let _ = started;
            if call.is_disabled() {
                return None;
            }
        }
        Some(AttemptScope {
            span: attempt_span(call, policy, attempt),
            #[cfg(feature = "metrics")]
            started,
            #[cfg(feature = "metrics")]
            ended: None,
        })
    }
}

/// The attempt ended: records it on its span and in the metrics, then closes the span.
///
/// `now` is the end instant, when the caller has read the clock already.
#[inline(always)]
pub(crate) fn on_attempt_end(
    scope: Option<AttemptScope>,
    shared: &Resolved,
    end: AttemptEnd,
    now: Option<Instant>,
) {
    let Some(scope) = scope else {
        return;
    };
    span::on_end(&scope.span, &end);
    #[cfg(feature = "metrics")]
    {
        let now = now.unwrap_or_else(Instant::now);
        metrics::on_attempt_end(
            shared.telemetry,
            &end,
            scope
                .ended
                .unwrap_or(now)
                .saturating_duration_since(scope.started),
            now,
        );
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (shared, now);
}

/// An attempt that did not end the call: a hedge or the first attempt overtaken by another
/// that answered first (`cancelled`), or one that failed while another still runs. Its span
/// says so; the attempt metrics count only the attempts whose outcome the call acted on.
#[inline]
pub(crate) fn attempt_superseded(scope: Option<AttemptScope>, status: Option<u16>) {
    end_unacted(
        scope,
        "cancelled",
        "another attempt answered first",
        None,
        status,
    );
}

/// A hedged attempt that failed while another of its round still runs: the call acts on the
/// round's last outcome, this one's span says how it failed.
pub(crate) fn attempt_failed_in_round(
    scope: Option<AttemptScope>,
    class: Option<Class>,
    status: Option<u16>,
) {
    end_unacted(scope, "failed", "another attempt still runs", class, status);
}

/// A hedged attempt answered by the handler while another of its round still runs, kept with
/// how it failed: should the round end on this answer ([`KeptAnswer::acted_on`]), its span
/// (still open) records the call's decision, and its metrics its own duration, to its end;
/// else (a later answer took its place, the round was dropped) it ends as
/// [`attempt_failed_in_round`] (the attempts still running end without an answer of their
/// own after it: [`attempt_overruled`]).
pub(crate) struct KeptAnswer {
    scope: Option<AttemptScope>,
    class: Option<Class>,
    status: Option<u16>,
}

impl KeptAnswer {
    pub(crate) fn new(
        scope: Option<AttemptScope>,
        class: Option<Class>,
        status: Option<u16>,
    ) -> KeptAnswer {
        #[cfg(feature = "metrics")]
        let scope = scope.map(|mut s| {
            s.ended = Some(Instant::now());
            s
        });
        KeptAnswer {
            scope,
            class,
            status,
        }
    }

    /// The round ends on this answer: its scope, for the call's decision.
    pub(crate) fn acted_on(mut self) -> Option<AttemptScope> {
        self.scope.take()
    }
}

impl Drop for KeptAnswer {
    fn drop(&mut self) {
        attempt_failed_in_round(self.scope.take(), self.class, self.status);
    }
}

/// The last attempt of a hedged round, ended without the handler's answer after another was
/// answered: the call acts on that answer, not on this attempt's outcome.
pub(crate) fn attempt_overruled(
    scope: Option<AttemptScope>,
    class: Option<Class>,
    status: Option<u16>,
) {
    end_unacted(
        scope,
        "failed",
        "the round ended on another attempt's answer",
        class,
        status,
    );
}

/// A hedged attempt still in flight when its call was dropped (the caller stopped waiting).
pub(crate) fn attempt_cancelled(scope: AttemptScope, status: Option<u16>) {
    end_unacted(
        Some(scope),
        "cancelled",
        "the caller stopped waiting",
        None,
        status,
    );
}

/// A hedged attempt stopped because another one sent what may not go out twice.
pub(crate) fn attempt_stopped(scope: Option<AttemptScope>, status: Option<u16>) {
    end_unacted(
        scope,
        "cancelled",
        "another attempt sent what may not go out twice",
        None,
        status,
    );
}

/// Ends an attempt whose outcome the call did not act on: on its span only.
fn end_unacted(
    scope: Option<AttemptScope>,
    decision: &'static str,
    reason: &'static str,
    class: Option<Class>,
    status: Option<u16>,
) {
    if let Some(scope) = scope {
        let end = AttemptEnd {
            class,
            status,
            decision,
            reason: Some(reason),
            delay: None,
        };
        span::on_end(&scope.span, &end);
    }
}

/// A call that failed for good met its fallback: called it, or withheld it.
#[cold]
pub(crate) fn fallback(shared: &Resolved, called: bool) {
    #[cfg(feature = "metrics")]
    metrics::fallback(shared.telemetry, called);
    #[cfg(not(feature = "metrics"))]
    let _ = (shared, called);
}

/// A hedge ended: it answered first (`won`), or it did not.
#[inline]
pub(crate) fn hedge_ended(shared: &Resolved, won: bool) {
    #[cfg(feature = "metrics")]
    metrics::hedge_ended(shared.telemetry, won);
    #[cfg(not(feature = "metrics"))]
    let _ = (shared, won);
}

/// The call ended with `outcome`; `started` is when (`None`: it never started, as when the
/// bulkhead refused it). The bulkhead gauge is not set here: it follows the slot itself
/// ([`bulkhead_moved`]), given back just after.
///
/// `now` as for [`on_attempt_end`].
#[inline]
pub(crate) fn on_call_end(
    shared: &Resolved,
    outcome: Outcome,
    started: Option<Instant>,
    now: Option<Instant>,
) {
    #[cfg(feature = "metrics")]
    {
        // One clock reading (or the caller's) for the call's duration and the budget's gauge.
        let end = (started.is_some() || shared.budget.is_some())
            .then(|| now.unwrap_or_else(Instant::now));
        metrics::on_call_end(
            shared.telemetry,
            outcome,
            started
                .zip(end)
                .map(|(s, e)| e.saturating_duration_since(s)),
            end,
            shared.budget,
            shared.breaker,
        );
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (shared, outcome, started, now);
}

/// The call took its bulkhead slot, or gave it back: the gauge follows the bulkhead.
#[inline]
pub(crate) fn bulkhead_moved(shared: &Resolved) {
    #[cfg(feature = "metrics")]
    if let Some(b) = shared.bulkhead {
        metrics::bulkhead_gauge(shared.telemetry, b);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = shared;
}

/// Writes the attempt's trace context into `headers`, unless they already carry a
/// `traceparent`: with the `opentelemetry` feature, from the OpenTelemetry context of the
/// current span (the attempt's, or one the body entered inside it), else the current
/// OpenTelemetry context, through the global propagator; otherwise, or when there
/// is no OpenTelemetry context, a W3C `traceparent` of the call's trace id and the attempt's
/// span id.
#[inline]
pub(crate) fn inject_trace_context(
    headers: &mut HeaderMap,
    trace_id: u128,
    fallback: impl FnOnce() -> Option<reqwest::header::HeaderValue>,
) {
    if headers.contains_key(&crate::http::TRACEPARENT) {
        return;
    }
    // An OpenTelemetry context in another trace than the caller's, handed down (the library's
    // own spans filtered out, the current span is the handler's, a root of its own trace when
    // no extractor gave it the caller's): the call's own `traceparent`, in the caller's trace.
    #[cfg(feature = "opentelemetry")]
    {
        let joins = crate::context::inbound_trace_id();
        if otel::inject(headers, &Span::current(), joins) {
            // The caller's `tracestate`, where the OpenTelemetry context wrote a
            // `traceparent` (in the caller's trace: the only context `inject` takes when one
            // was handed down) and no `tracestate`: a list the OpenTelemetry API refused to
            // read (its older key rules, a vendor key of the Level 2 form) would go without,
            // every vendor's entry lost. Only such a list: an empty state the SDK chose (a
            // sampler's) stays empty.
            if let Some(trace) = joins
                && headers.contains_key(&crate::http::TRACEPARENT)
                && !headers.contains_key(&crate::http::TRACESTATE)
                && let Some(state) = crate::context::inbound_tracestate(trace)
                && otel::refuses_tracestate(&state)
            {
                headers.insert(
                    crate::http::TRACESTATE,
                    reqwest::header::HeaderValue::clone(&state),
                );
            }
            return;
        }
    }
    if let Some(v) = fallback() {
        headers.insert(crate::http::TRACEPARENT, v);
        // The caller's `tracestate` goes on with a `traceparent` of its trace.
        if !headers.contains_key(&crate::http::TRACESTATE)
            && let Some(state) = crate::context::inbound_tracestate(trace_id)
        {
            headers.insert(
                crate::http::TRACESTATE,
                reqwest::header::HeaderValue::clone(&state),
            );
        }
    }
}

/// The `traceparent` [`inject_trace_context`] writes for an attempt.
pub(crate) fn traceparent(
    fallback_trace_id: u128,
    fallback_span_id: u64,
    fallback_flags: u8,
) -> String {
    #[cfg(feature = "opentelemetry")]
    if let Some(tp) = otel::traceparent(&Span::current(), crate::context::inbound_trace_id()) {
        return tp;
    }
    crate::context::Traceparent::new(fallback_trace_id, fallback_span_id, fallback_flags)
        .as_str()
        .to_owned()
}

/// The span an attempt's body runs in: its own, else (disabled by a filter) the call's; `None`
/// when both are disabled (tracing off), without cloning either.
pub(crate) fn body_span(scope: Option<&AttemptScope>, call: &Span) -> Option<Span> {
    match scope {
        Some(s) if !s.span.is_disabled() => Some(s.span.clone()),
        _ if call.is_disabled() => None,
        _ => Some(call.clone()),
    }
}

/// The attempt succeeded, and with it the call.
#[inline]
pub(crate) fn call_succeeded(
    scope: Option<AttemptScope>,
    call: &Span,
    shared: &Resolved,
    retried: bool,
    status: Option<u16>,
    started: Instant,
) {
    let end = AttemptEnd {
        class: None,
        status,
        decision: "success",
        reason: None,
        delay: None,
    };
    // One clock read for the attempt's end and the call's (none without `metrics`).
    let now = end_instant();
    on_attempt_end(scope, shared, end, now);
    let outcome = Outcome::succeeded(retried);
    call_span_ended(call, outcome);
    on_call_end(shared, outcome, Some(started), now);
}

/// The call's span gets how the call ended: `resilience.outcome`, the metrics' outcome, and
/// `otel.status_code = "error"` when it failed or was refused (a trace shows the call's own
/// span as failed, and why: a retry refused by the breaker ends no attempt span).
#[inline]
fn call_span_ended(call: &Span, outcome: Outcome) {
    if !call.is_disabled() {
        record_call_end(call, outcome);
    }
}

#[inline(never)]
fn record_call_end(call: &Span, outcome: Outcome) {
    call.record("resilience.outcome", outcome.as_str());
    if outcome.failed() {
        call.record("otel.status_code", "error");
    }
}

/// The retry of a failure of `class` began (counted then, not when it was decided on: the
/// breaker, the deadline or the caller may stop it before).
#[inline]
pub(crate) fn retry_made(shared: &Resolved, class: Class) {
    #[cfg(feature = "metrics")]
    metrics::retry_made(shared.telemetry, class);
    #[cfg(not(feature = "metrics"))]
    let _ = (shared, class);
}

/// The attempt failed with `class`; the call retries after `delay`, or (`ask`) asks again
/// for the replay of its keyed request still in progress, which is not a retry.
#[inline]
pub(crate) fn attempt_retried(
    scope: Option<AttemptScope>,
    ask: bool,
    shared: &Resolved,
    class: Class,
    status: Option<u16>,
    delay: Duration,
) {
    let end = AttemptEnd {
        class: Some(class),
        status,
        decision: if ask { "ask" } else { "retry" },
        reason: None,
        delay: Some(delay),
    };
    on_attempt_end(scope, shared, end, None);
}

/// The attempt failed with `class` (or was refused by an open breaker: `circuit_open`), and
/// the call gives up for the reason `why`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn call_gave_up(
    scope: Option<AttemptScope>,
    call: &Span,
    shared: &Resolved,
    retried: bool,
    class: Class,
    status: Option<u16>,
    why: GiveUp,
    circuit_open: bool,
    started: Instant,
) {
    let end = AttemptEnd {
        class: Some(class),
        status,
        decision: "give up",
        reason: Some(why.as_str()),
        delay: None,
    };
    let now = end_instant();
    on_attempt_end(scope, shared, end, now);
    let outcome = Outcome::gave_up(retried, why, circuit_open);
    call_span_ended(call, outcome);
    on_call_end(shared, outcome, Some(started), now);
}

/// The call's caller stopped waiting for it (see `Session`'s `Drop`): the attempt in progress,
/// if any, ends `cancelled` on its span, and the call is counted with the outcome `cancelled`.
/// The attempt metrics count only attempts whose outcome the call acted on, as for a hedge
/// overtaken by another.
pub(crate) fn call_cancelled(
    scope: Option<AttemptScope>,
    call: &Span,
    shared: &Resolved,
    status: Option<u16>,
    started: Instant,
) {
    end_unacted(
        scope,
        "cancelled",
        "the caller stopped waiting",
        None,
        status,
    );
    call_span_ended(call, Outcome::Cancelled);
    on_call_end(shared, Outcome::Cancelled, Some(started), None);
}

/// The call was unwound by a panic: its attempt ends `give up`, the call failed.
#[cold]
pub(crate) fn call_panicked(
    scope: Option<AttemptScope>,
    call: &Span,
    shared: &Resolved,
    retried: bool,
    status: Option<u16>,
    started: Instant,
) {
    // The body's own failure, as an error it returned would be: an error span, counted in
    // the attempts by that class.
    let end = AttemptEnd {
        class: Some(Class::Permanent),
        status,
        decision: "give up",
        reason: Some("a panic unwound the call"),
        delay: None,
    };
    on_attempt_end(scope, shared, end, None);
    let outcome = if retried {
        Outcome::FailedWithRetry
    } else {
        Outcome::FailedWithoutRetry
    };
    call_span_ended(call, outcome);
    on_call_end(shared, outcome, Some(started), None);
}

/// The clock, read once for an attempt's end and its call's, only when metrics need it.
#[inline]
fn end_instant() -> Option<Instant> {
    #[cfg(feature = "metrics")]
    return Some(Instant::now());
    #[cfg(not(feature = "metrics"))]
    None
}

/// The bulkhead (or the concurrency limit) refused the call, `started` when it began to wait:
/// its time, the wait, goes into the call duration.
#[inline]
pub(crate) fn call_rejected_by_bulkhead(shared: &Resolved, started: Instant) {
    on_call_end(shared, Outcome::RejectedBulkhead, Some(started), None);
}

/// The call was refused by its open breaker before it started.
#[inline]
pub(crate) fn call_rejected_by_breaker(shared: &Resolved) {
    on_call_end(shared, Outcome::RejectedBreaker, None, None);
}

/// The call was refused by its rate limit before any attempt, `started` when it began: its
/// time (a wait for a permit) goes into the call duration.
#[inline]
pub(crate) fn call_rejected_by_rate_limit(shared: &Resolved, started: Instant) {
    on_call_end(shared, Outcome::RejectedRateLimit, Some(started), None);
}
