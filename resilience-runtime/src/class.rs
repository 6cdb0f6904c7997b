//! How a failure is classified for the retry decision.

use std::fmt;

use resilience_spec::is_transient_status;

/// What a failure says about whether the request reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Class {
    /// Never sent: connection refused, connect timeout, a DNS lookup that failed for now, TLS
    /// handshake. Always safe to resend. (A name the resolver says does not exist is
    /// [`Permanent`](Class::Permanent): nothing was sent, and the next lookup answers the same.)
    Connect,
    /// Sent, then the connection was lost (reset, closed before the answer). Ambiguous.
    Reset,
    /// Sent, no answer in time. Ambiguous.
    Timeout,
    /// The server answered with this status.
    Status(u16),
    /// Will fail the same way again: a 4xx, a decode error, the function's own logic.
    Permanent,
    /// Refused by the caller's own protection (breaker, bulkhead, budget): never retried.
    Rejected,
}

impl Class {
    /// A failure without the handler's answer (`status`: the last answer the attempt got, if
    /// any): a timeout, a lost or refused connection, a proxy's 502 or 504, a permanent failure
    /// with no answer (a name that does not exist, a certificate refused). Not the handler's
    /// own status, nor the body's own error on what it read: after those, a keyed request is
    /// no longer "in progress", and another attempt of a hedged round would send the handler
    /// what it already answered.
    pub(crate) fn unanswered(self, status: Option<u16>) -> bool {
        match self {
            Class::Timeout | Class::Reset | Class::Connect | Class::Status(502 | 504) => true,
            // A refusal (a nested call's breaker, bulkhead or rate limit, no time left) sent
            // nothing: no answer, unless the attempt had one of its own before it.
            Class::Permanent | Class::Rejected => status.is_none(),
            _ => false,
        }
    }

    /// Whether an attempt that failed so (its last answer's `status`, if any) may have carried
    /// out a request under the call's key: it timed out or lost its connection, was answered
    /// 5xx or 409 (still in progress), or 2xx or 3xx (refused by the function). A failure that
    /// sent nothing itself (a connect failure, a nested call refused, a permanent failure with
    /// no answer: a name that does not exist, a certificate refused) only where such a request
    /// of the attempt reached a server before it (`reached`). Not a 4xx, 408 or 429: the
    /// server refused the request before acting on it.
    pub(crate) fn may_have_carried_out(self, status: Option<u16>, reached: bool) -> bool {
        match self {
            Class::Connect | Class::Rejected => reached,
            Class::Timeout | Class::Reset => true,
            Class::Status(s) => s == 409 || s >= 500,
            Class::Permanent => status.map_or(reached, |s| s < 400),
        }
    }

    /// The request may have reached the server (resending is not safe without idempotency).
    pub fn is_ambiguous(self) -> bool {
        !matches!(self, Class::Connect | Class::Permanent | Class::Rejected)
    }

    /// A failure that says the downstream is unhealthy (counts against a circuit breaker).
    pub fn is_transient(self) -> bool {
        match self {
            Class::Connect | Class::Reset | Class::Timeout => true,
            Class::Status(s) => is_transient_status(s),
            Class::Permanent | Class::Rejected => false,
        }
    }

    /// A failure a circuit breaker counts: a transient one, but not a 429. A dependency that
    /// answers "too many requests" is up and tells this client to slow down (its `Retry-After`
    /// says for how long); opening the breaker would refuse every caller for `open_for`.
    pub(crate) fn trips_breaker(self) -> bool {
        self.is_transient() && self != Class::Status(429)
    }

    /// `connect`, `reset`, `timeout`, `status`, `permanent` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Connect => "connect",
            Class::Reset => "reset",
            Class::Timeout => "timeout",
            Class::Status(_) => "status",
            Class::Permanent => "permanent",
            Class::Rejected => "rejected",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Class::Status(s) => write!(f, "status {s}"),
            c => f.write_str(c.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A permanent failure with no answer (a name that does not exist, a certificate refused)
    /// sent nothing itself: unanswered, as a connect failure is, and carried out only where a
    /// request of the attempt reached a server before it; with an answer, as before.
    #[test]
    fn a_permanent_failure_without_an_answer_is_read_as_a_connect_failure() {
        assert!(Class::Permanent.unanswered(None));
        assert!(!Class::Permanent.unanswered(Some(200)));
        assert!(!Class::Status(503).unanswered(Some(503)));
        assert!(Class::Connect.unanswered(None));
        assert!(Class::Rejected.unanswered(None));
        assert!(!Class::Rejected.unanswered(Some(201)));
        assert!(Class::Permanent.may_have_carried_out(None, true));
        assert!(!Class::Permanent.may_have_carried_out(None, false));
        assert!(Class::Permanent.may_have_carried_out(Some(200), false));
        assert!(!Class::Permanent.may_have_carried_out(Some(404), true));
    }
}
