//! The retry decision: one pure function of what happened and what is left.
//!
//! Not public API (hidden): public for the exhaustive table test.

use std::time::Duration;

use crate::classify::Class;
use crate::policy::{Method, RetryOn};

/// Everything the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The least safe method this attempt actually sent (or the policy's, if none was seen).
    pub method: Method,
    /// Whether this attempt's request carried an idempotency key.
    pub keyed: bool,
    /// The author declared the call idempotent (PUT/DELETE).
    pub idempotent: bool,
    /// How the attempt failed.
    pub class: Class,
    /// The attempt that just failed, 1-based, as counted against `max_attempts`: the attempts
    /// that only asked again for the replay of a keyed request still in progress do not count.
    pub attempt: u32,
    /// The policy's `max_attempts`.
    pub max_attempts: u32,
    /// The policy's `retry_on`.
    pub retry_on: &'a RetryOn,
    /// The backoff delay the schedule proposes.
    pub backoff: Duration,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// The policy's `max_retry_after`.
    pub max_retry_after: Duration,
    /// Time left before the call's deadline.
    pub time_left: Duration,
    /// The time one attempt could be given at the call's start: the policy's `timeout`, or
    /// the call's whole time when that was shorter (a caller's `X-Timeout-Ms`, an enclosing
    /// call's attempt). A retry that would begin with less than a tenth of it left before the
    /// deadline is not made (it could only time out, a request sent in vain); asking again
    /// for a replay is (a stored answer comes at once).
    pub timeout: Duration,
    /// The least safe method among the attempt's requests that reached the server, or may
    /// have (`None`: none did). Running the body again sends them again, whatever the class of
    /// the failure that ended the attempt: a connect failure proves only that its own request
    /// was never sent.
    pub reached: Option<Method>,
    /// The policy's method, when the attempt's seen requests were all safer: a request of it
    /// may have gone out unseen (sent by a helper without `.resilient()`), and without the key.
    pub unseen: Option<Method>,
    /// The failing response was marked `Idempotent-Replayed: true`: the server replayed the
    /// answer it stored for the key, and gives the same one to every retry with it.
    pub replayed: bool,
}

/// Why a failed call is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUp {
    /// The failure will not go away by itself (a 4xx, a decode error, the function's own logic).
    Permanent,
    /// Refused by the breaker, bulkhead or budget.
    Rejected,
    /// The policy's `retry_on` does not list this failure.
    NotInRetryOn,
    /// The request may have reached the server and resending it is not safe.
    UnsafeToResend,
    /// `max_attempts` ran.
    AttemptsExhausted,
    /// The server asked to wait longer than `max_retry_after`.
    RetryAfterTooLong,
    /// The wait before the next attempt would reach the deadline, or leave it less than a
    /// tenth of its `timeout`.
    DeadlineTooClose,
    /// A retry was due but the retry budget was spent.
    BudgetExhausted,
    /// A nested `#[resilient]` call already retried this failure as far as its own policy
    /// allowed: one layer retries, not every layer.
    RetriedInside,
    /// The server replayed the answer it stored for the idempotency key
    /// (`Idempotent-Replayed: true`): a retry with the key gets the same answer.
    Replayed,
}

impl GiveUp {
    /// A short reason, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::Permanent => "permanent failure",
            GiveUp::Rejected => "rejected",
            GiveUp::NotInRetryOn => "not in retry_on",
            GiveUp::UnsafeToResend => "not idempotent: may have reached the server",
            GiveUp::AttemptsExhausted => "max_attempts reached",
            GiveUp::RetryAfterTooLong => "Retry-After above max_retry_after",
            GiveUp::DeadlineTooClose => "no time left before the deadline",
            GiveUp::BudgetExhausted => "retry budget exhausted",
            GiveUp::RetriedInside => "already retried by a nested #[resilient] call",
            GiveUp::Replayed => "the server replayed its stored answer to the key",
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Retry after this delay.
    RetryAfter(Duration),
    /// Return the last error.
    GiveUp(GiveUp),
}

pub use resilience_spec::may_resend;

/// A 409 with `Retry-After` to a keyed request: the server's "this key is still being
/// processed". The first attempt's handler runs on; the next request with the key gets its
/// replay once it ends. Asking again sends nothing new to the handler, so it is bounded by the
/// deadline alone: not by `max_attempts`, and not paid from the retry budget. A 409 the handler
/// itself answered, replayed from the store, is not one.
pub fn in_progress(f: &Facts<'_>) -> bool {
    f.keyed && !f.replayed && f.class == Class::Status(409) && f.retry_after.is_some()
}

/// The retry decision table of the design, as a function.
#[inline]
pub fn decide(f: &Facts<'_>) -> Decision {
    use Decision::GiveUp as G;
    let in_progress = in_progress(f);
    let listed = match f.class {
        // A stored answer is final: asking again with the key replays it again.
        Class::Status(_) if f.replayed => return G(GiveUp::Replayed),
        _ if in_progress => true,
        Class::Permanent => return G(GiveUp::Permanent),
        Class::Rejected => return G(GiveUp::Rejected),
        Class::Status(s) if !crate::classify::is_transient_status(s) => {
            return G(GiveUp::Permanent);
        }
        Class::Connect => f.retry_on.connect,
        Class::Reset => f.retry_on.reset,
        Class::Timeout => f.retry_on.timeout,
        Class::Status(s) => f.retry_on.allows_status(s),
    };
    if !listed {
        return G(GiveUp::NotInRetryOn);
    }
    if f.class.is_ambiguous() && !may_resend(f.method, f.keyed, f.idempotent) {
        return G(GiveUp::UnsafeToResend);
    }
    if f.reached
        .is_some_and(|m| !may_resend(m, f.keyed, f.idempotent))
        || f.unseen
            .is_some_and(|m| !may_resend(m, false, f.idempotent))
    {
        return G(GiveUp::UnsafeToResend);
    }
    // Waiting for the replay runs nothing again: bounded by the deadline, not by attempts.
    if f.attempt >= f.max_attempts && !in_progress {
        return G(GiveUp::AttemptsExhausted);
    }
    let mut delay = f.backoff;
    if let Some(ra) = f.retry_after {
        if ra > f.max_retry_after {
            return G(GiveUp::RetryAfterTooLong);
        }
        delay = delay.max(ra);
    }
    if delay >= f.time_left {
        return G(GiveUp::DeadlineTooClose);
    }
    let rest = f.time_left - delay;
    if !in_progress && rest < f.timeout && rest < f.timeout / 10 {
        return G(GiveUp::DeadlineTooClose);
    }
    Decision::RetryAfter(delay)
}
