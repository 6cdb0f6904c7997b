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
    /// A failure without the handler's answer: a timeout, a lost or refused connection, a
    /// proxy's 502 or 504. Not the handler's own status, nor the body's own error on what it
    /// read: after those, a keyed request is no longer "in progress", and another attempt of a
    /// hedged round would send the handler what it already answered.
    pub(crate) fn unanswered(self) -> bool {
        matches!(
            self,
            Class::Timeout | Class::Reset | Class::Connect | Class::Status(502 | 504)
        )
    }

    /// Whether an attempt that failed so (its last answer's `status`, if any) may have carried
    /// out a request under the call's key: it timed out or lost its connection, was answered
    /// 5xx or 409 (still in progress), or 2xx or 3xx (refused by the function). A failure that
    /// sent nothing itself (a connect failure, a nested call refused) only where such a request
    /// of the attempt reached a server before it (`reached`). Not a 4xx, 408 or 429: the
    /// server refused the request before acting on it.
    pub(crate) fn may_have_carried_out(self, status: Option<u16>, reached: bool) -> bool {
        match self {
            Class::Connect | Class::Rejected => reached,
            Class::Timeout | Class::Reset => true,
            Class::Status(s) => s == 409 || s >= 500,
            Class::Permanent => status.is_some_and(|s| s < 400),
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
