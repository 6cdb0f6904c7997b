//! Failure classes, found by walking an error's `source()` chain.

use std::error::Error as StdError;
use std::io;

use crate::error::{Error, ErrorKind};

pub use crate::class::Class;

pub use resilience_spec::is_transient_status;

/// Classifies an error by walking its `source()` chain. `None` when nothing in the chain says
/// anything about the network (the caller then uses the recorded response, or `Permanent`).
pub fn classify_error(err: &(dyn StdError + 'static)) -> Option<Class> {
    let mut sent_unknown = false;
    // An error reading an answer's body was met: the request was answered.
    let mut answer_began = false;
    // A reqwest error, or the client's own (hyper-util's: every error sending a request
    // comes through it, none reading an answer's body), was met above.
    let mut sending_known = false;
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(ours) = e.downcast_ref::<Error>() {
            match ours.kind() {
                // A refusal for want of time (a bulkhead slot, a rate-limit permit not had
                // before the deadline) sent nothing: refused, not timed out.
                ErrorKind::DeadlineExceeded if ours.class() == Some(Class::Rejected) => {
                    return Some(Class::Rejected);
                }
                ErrorKind::AttemptTimeout | ErrorKind::DeadlineExceeded => {
                    return Some(Class::Timeout);
                }
                ErrorKind::CircuitOpen
                | ErrorKind::BulkheadFull
                | ErrorKind::BudgetExhausted
                | ErrorKind::RateLimited => {
                    return Some(Class::Rejected);
                }
                ErrorKind::Call => {
                    if let Some(c) = ours.class() {
                        return Some(c);
                    }
                }
            }
        } else if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            sending_known = true;
            if r.is_connect() {
                return Some(connect_class(r));
            }
            // The HTTP/2 server's word that it never processed the request (a client with
            // reqwest's retries off, or past their two): as a request never sent. Not once its
            // answer began (an error reading the answer's body): it was processed.
            answer_began |= r.is_decode() || r.is_body();
            if !answer_began && protocol_nack(r) {
                return Some(Class::Connect);
            }
            if let Some(s) = r.status() {
                return Some(Class::Status(s.as_u16()));
            }
            if r.is_builder() || r.is_redirect() {
                return Some(Class::Permanent);
            }
            if r.is_timeout() {
                return Some(Class::Timeout);
            }
            if r.is_request() || r.is_body() {
                // Look further down for the io error; if none says more, it was sent.
                sent_unknown = true;
            } else if r.is_decode() {
                // A decode error over a body that arrived whole is permanent; one caused by a
                // lost connection shows as an io error further down.
                sent_unknown = false;
            }
        } else if let Some(l) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            sending_known = true;
            // What reqwest wraps; met first when the error above skips the reqwest error
            // (`#[error(transparent)]` forwards `source()` to that error's own cause).
            if l.is_connect() {
                return Some(connect_class(l));
            }
        } else if let Some(h) = e.downcast_ref::<hyper::Error>() {
            // Met first, with neither reqwest's error nor the client's above it (the service's
            // own transparent error type skips them): an error reading an answer's body.
            answer_began |= !sending_known;
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return Some(Class::Reset);
            }
            if h.is_timeout() {
                return Some(Class::Timeout);
            }
            if h.is_parse() || h.is_parse_status() {
                return Some(Class::Reset);
            }
            // An answer whose body the connection cut short (fewer bytes than its
            // `Content-Length`, or chunks not all there, before the peer closed): hyper's own
            // end of file under its body error. The request was answered and the answer lost:
            // a reset, not the function's failure to decode a body that arrived whole.
            if h.source()
                .and_then(|s| s.downcast_ref::<io::Error>())
                .is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof)
            {
                return Some(Class::Reset);
            }
        } else if let Some(h2) = e.downcast_ref::<h2::Error>() {
            // The server's word that it never processed the stream, met without the reqwest
            // error above it (the service's own error type, `#[error(transparent)]` over
            // reqwest's, forwards `source()` past it): never sent, unless an error reading the
            // answer's body was met (it was answered). Any other stream reset, or its
            // connection lost: the request was sent, and its answer (a body cut short after
            // its headers) lost. h2's error has no `source()` to read further.
            if !answer_began && h2_nack(h2) {
                return Some(Class::Connect);
            }
            return Some(Class::Reset);
        } else if let Some(io) = e.downcast_ref::<io::Error>() {
            // `io::Error::source` skips the error it wraps: look at that one first. Its kind
            // says a network failure only when the operating system gave it: an `io::Error`
            // made in the function's own code (serde_json's end of input, `read_exact` on a
            // short body: `UnexpectedEof`) is the function's failure, classified by what the
            // runtime saw of the request, not taken for a reset.
            if let Some(inner) = io.get_ref() {
                let inner: &(dyn StdError + 'static) = inner;
                if let Some(c) = classify_error(inner) {
                    return Some(c);
                }
            } else if io.raw_os_error().is_some()
                && let Some(c) = classify_io(io.kind())
            {
                return Some(c);
            }
        } else if e.is::<tokio::time::error::Elapsed>() {
            return Some(Class::Timeout);
        }
        cur = e.source();
    }
    sent_unknown.then_some(Class::Reset)
}

/// An HTTP/2 server's word that it never processed the request: `REFUSED_STREAM`, or a
/// graceful `GOAWAY` (`NO_ERROR`: h2 gives it only to the streams past the server's last
/// processed one), as reqwest's default retry policy reads them (RFC 9113, section 8.7).
pub(crate) fn protocol_nack(err: &(dyn StdError + 'static)) -> bool {
    let mut e = Some(err);
    // Bounded: a chain of sources ends, and no error reqwest gives is this deep.
    for _ in 0..8 {
        let Some(cur) = e else { return false };
        if let Some(h2) = cur.downcast_ref::<h2::Error>() {
            return h2_nack(h2);
        }
        e = cur.source();
    }
    false
}

/// An HTTP/2 error that is the server's word it never processed the stream (see
/// [`protocol_nack`]).
fn h2_nack(h2: &h2::Error) -> bool {
    h2.is_remote()
        && ((h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
            || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
}

/// The class of a connect failure: nothing was sent, so `Connect` (retried whatever the
/// method), unless what it wraps says the next try meets the same answer, which is
/// `Permanent`: the system's resolver found no such name (`EAI_NONAME`: a misspelt or removed
/// host; `EAI_NODATA`: the name has no address), or the TLS handshake failed on what the two
/// ends are ([`handshake_refused`]). A lookup that failed for now (`EAI_AGAIN`: no answer from
/// the DNS server), a resolver's error this does not know, a handshake the connection's loss
/// or a timeout cut short, stays `Connect`.
fn connect_class(err: &(dyn StdError + 'static)) -> Class {
    let mut cur = err.source();
    while let Some(e) = cur {
        // An `io::Error` around another (reqwest's connector wraps the TLS stack's in one of
        // kind `Other`): each is looked at, since `io::Error::source` skips the one it wraps.
        let mut io = e.downcast_ref::<io::Error>();
        while let Some(i) = io {
            if name_not_found(i) || handshake_refused(i) {
                return Class::Permanent;
            }
            io = i
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<io::Error>());
        }
        cur = e.source();
    }
    Class::Connect
}

/// Whether a TLS handshake's error (rustls's, as reqwest's rustls connector hands it on: an
/// `io::Error` of kind `InvalidData` around it) says it fails the same way every time: the
/// server's certificate is not trusted or not valid for the name (expired, another host's, an
/// unknown issuer), the port does not speak TLS (its answer is no TLS record), or the server
/// refused the client's hello for what the client is (no protocol version or cipher in
/// common, no certificate of the client's, a name it does not serve). An alert that says
/// nothing of the configuration (`internal_error`), or an error of another TLS stack, is not
/// recognized: retried as a connect failure.
fn handshake_refused(io: &io::Error) -> bool {
    if io.kind() != io::ErrorKind::InvalidData || io.raw_os_error().is_some() {
        return false;
    }
    let Some(inner) = io.get_ref() else {
        return false;
    };
    let text = inner.to_string();
    if text.starts_with("invalid peer certificate")
        || text.starts_with("received corrupt message")
        || text.starts_with("peer is incompatible")
    {
        return true;
    }
    text.strip_prefix("received fatal alert: ")
        .is_some_and(|alert| {
            matches!(
                alert,
                "ProtocolVersion"
                    | "HandshakeFailure"
                    | "InsufficientSecurity"
                    | "BadCertificate"
                    | "UnsupportedCertificate"
                    | "CertificateRevoked"
                    | "CertificateExpired"
                    | "CertificateUnknown"
                    | "CertificateRequired"
                    | "UnknownCA"
                    | "AccessDenied"
                    | "UnrecognisedName"
                    | "NoApplicationProtocol"
            )
        })
}

/// Whether a lookup's error says the name does not exist or has no address, as the standard
/// library reports the system resolver's answer: `gai_strerror`'s text after its own prefix
/// (the C locale's, which a Rust program keeps unless it sets another; glibc, musl, the BSDs
/// and macOS word it differently), or the Windows socket error.
fn name_not_found(io: &io::Error) -> bool {
    #[cfg(windows)]
    if matches!(io.raw_os_error(), Some(11001 | 11004)) {
        // WSAHOST_NOT_FOUND, WSANO_DATA
        return true;
    }
    if io.raw_os_error().is_some() {
        return false;
    }
    let text = io.to_string();
    let Some(detail) = text.strip_prefix("failed to lookup address information: ") else {
        return false;
    };
    matches!(
        detail,
        "Name or service not known"
            | "No address associated with hostname"
            | "Name does not resolve"
            | "nodename nor servname provided, or not known"
            | "hostname nor servname provided, or not known"
    )
}

/// The kind of the first runtime [`Error`] in an error's `source()` chain (looking inside
/// `io::Error`s as [`classify_error`] does): what `Error::kind()` tells the caller of an error
/// that wraps a nested call's refusal or timeout. For `fallback_on`.
pub(crate) fn runtime_kind(err: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    runtime_error(err).map(Error::kind)
}

/// The runtime's own `Error` in `err`'s source chain (an `io::Error`'s payload included), if
/// any.
pub(crate) fn runtime_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(ours) = e.downcast_ref::<Error>() {
            return Some(ours);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            let inner: &(dyn StdError + 'static) = inner;
            if let Some(ours) = runtime_error(inner) {
                return Some(ours);
            }
        }
        cur = e.source();
    }
    None
}

/// The class of an operating system's error met with no connect error above it (a connect
/// error of reqwest's or hyper-util's is classified before its cause is reached): a refused
/// connection or an address that cannot be bound never sent anything; an unreachable host or
/// network, or a socket no longer connected, is what an established connection meets too,
/// mid-exchange (an ICMP unreachable during a retransmission): it may have been sent.
fn classify_io(kind: io::ErrorKind) -> Option<Class> {
    use io::ErrorKind as K;
    match kind {
        K::ConnectionRefused | K::AddrNotAvailable => Some(Class::Connect),
        K::HostUnreachable | K::NetworkUnreachable | K::NotConnected => Some(Class::Reset),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            Some(Class::Reset)
        }
        K::TimedOut => Some(Class::Timeout),
        _ => None,
    }
}

/// Lets a user's error type say its class explicitly (takes precedence over the source chain).
///
/// ```
/// use resilience_runtime::{Class, Classify};
/// #[derive(Debug)]
/// enum PaymentError { Declined, GatewayBusy }
/// impl Classify for PaymentError {
///     fn class(&self) -> Option<Class> {
///         match self {
///             PaymentError::Declined => Some(Class::Permanent),
///             PaymentError::GatewayBusy => Some(Class::Status(503)),
///         }
///     }
/// }
/// ```
pub trait Classify {
    /// The class of this failure, or `None` to fall back to the source chain (when the type
    /// is a `std::error::Error`: a wrapped `reqwest::Error` or runtime `Error` is classified as
    /// it would be alone) and then to the response the attempt recorded.
    fn class(&self) -> Option<Class>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operating system's error with no connect error above it: refused is never sent;
    /// unreachable or not connected may be met mid-exchange, so it may have been sent.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_os_error_alone_is_connect_only_when_nothing_can_have_been_sent() {
        let class = |code| classify_error(&io::Error::from_raw_os_error(code));
        assert_eq!(class(111), Some(Class::Connect), "ECONNREFUSED");
        assert_eq!(class(99), Some(Class::Connect), "EADDRNOTAVAIL");
        assert_eq!(class(113), Some(Class::Reset), "EHOSTUNREACH");
        assert_eq!(class(101), Some(Class::Reset), "ENETUNREACH");
        assert_eq!(class(107), Some(Class::Reset), "ENOTCONN");
        assert_eq!(class(104), Some(Class::Reset), "ECONNRESET");
    }

    /// The resolver's answers as the standard library words them: a name that does not exist
    /// (glibc, musl, macOS, FreeBSD) or has no address, against one that failed for now, a
    /// failure of the resolver itself, or an operating system's error.
    #[test]
    fn a_lookup_is_permanent_only_when_the_name_does_not_exist() {
        let lookup = |detail: &str| {
            name_not_found(&io::Error::other(format!(
                "failed to lookup address information: {detail}"
            )))
        };
        assert!(lookup("Name or service not known"));
        assert!(lookup("No address associated with hostname"));
        assert!(lookup("Name does not resolve"));
        assert!(lookup("nodename nor servname provided, or not known"));
        assert!(lookup("hostname nor servname provided, or not known"));
        assert!(!lookup("Temporary failure in name resolution"));
        assert!(!lookup("Try again"));
        assert!(!lookup("Non-recoverable failure in name resolution"));
        assert!(!name_not_found(&io::Error::other(
            "Name or service not known"
        )));
        assert!(!name_not_found(&io::Error::from_raw_os_error(111)));
    }
}
