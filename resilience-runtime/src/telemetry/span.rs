//! The client span of one attempt, per the OpenTelemetry semantic conventions for HTTP.

use tracing::Span;
use tracing::field::{Empty, display};

use crate::classify::Class;
use crate::policy::Policy;

// Numbers are recorded as i64: OpenTelemetry has no unsigned attributes, and
// tracing-opentelemetry turns a u64 into a string.

/// A new span for attempt number `attempt` (1 for the first), a child of the call's span.
///
/// Disabled (and free) when the call's span is: no subscriber, or one that filters it out.
#[inline]
pub(crate) fn attempt_span(call: &Span, policy: &Policy, attempt: u32) -> Span {
    if call.is_disabled() {
        return Span::none();
    }
    enabled_attempt_span(call, policy, attempt)
}

/// Out of line: the span macro is a lot of code, and inlined it would keep the session's
/// attempt bookkeeping from being inlined on the path where tracing is off.
#[inline(never)]
fn enabled_attempt_span(call: &Span, policy: &Policy, attempt: u32) -> Span {
    // Semantic conventions: `http.request.resend_count` only from the second attempt on.
    let resend_count = attempt.checked_sub(1).filter(|n| *n > 0).map(i64::from);
    // Named after the policy's method until a request goes out; `http.request.method` is the
    // method sent, recorded then (recorded twice, an exported span would carry it twice).
    let (name, _) = semconv_method(policy.method.as_str());
    tracing::info_span!(
        parent: call,
        "attempt",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = Empty,
        http.request.method_original = Empty,
        server.address = Empty,
        server.port = Empty,
        url.full = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        http.request.resend_count = resend_count,
        resilience.attempt = i64::from(attempt),
        resilience.class = Empty,
        resilience.decision = Empty,
        resilience.reason = Empty,
        resilience.delay_ms = Empty,
    )
}

/// The current span, when it is an attempt's: stamping runs inside the attempt's body, whose
/// span is current unless the body entered one of its own (then the fields are not recorded;
/// the trace context still comes from the current span, a descendant of the attempt's).
fn current_attempt() -> Option<Span> {
    let span = Span::current();
    span.metadata()
        .is_some_and(|m| m.name() == "attempt" && m.target() == module_path!())
        .then_some(span)
}

/// Records what the attempt is about to send: method, server, URL (credentials and signed
/// query parameters redacted).
pub(crate) fn on_request(req: &reqwest::Request) {
    let Some(span) = current_attempt() else {
        return;
    };
    let url = req.url();
    // The method actually sent names the span (the policy's may differ: a helper's, `OTHER`).
    let sent = req.method().as_str();
    let (name, method) = semconv_method(sent);
    span.record("otel.name", name);
    // A span already started (entered) takes a new name only through OpenTelemetry itself.
    #[cfg(feature = "opentelemetry")]
    super::otel::rename(&span, name);
    span.record("http.request.method", method);
    if method == OTHER {
        span.record("http.request.method_original", sent);
    }
    if let Some(host) = server_address(url) {
        span.record("server.address", host);
    }
    if let Some(port) = url.port_or_known_default() {
        span.record("server.port", i64::from(port));
    }
    span.record("url.full", display(redacted(url)));
}

/// What the conventions write for a method they do not know.
const OTHER: &str = "_OTHER";

/// The span's name and `http.request.method` for a method, per the conventions: the method
/// for the nine they know, else `HTTP` and `_OTHER`.
pub(crate) fn semconv_method(m: &str) -> (&'static str, &'static str) {
    const KNOWN: [&str; 9] = [
        "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
    ];
    match KNOWN.iter().find(|k| **k == m) {
        Some(k) => (k, k),
        None => ("HTTP", OTHER),
    }
}

/// The host as the conventions write `server.address`: a name, or an IP address without the
/// brackets an IPv6 address has in a URL.
fn server_address(url: &reqwest::Url) -> Option<&str> {
    let host = url.host_str()?;
    Some(
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host),
    )
}

/// Query parameters whose values are redacted, by name lower-cased without `_` and `-`
/// (`accessToken`, `access-token` and `ACCESS_TOKEN` alike): the four the conventions name
/// (`AWSAccessKeyId`, `Signature`, `sig`, `X-Goog-Signature`, the last two by their ending
/// below), the usual names of a key or a password in a URL, a session's id (`sessionid` by
/// its ending, below), an OAuth authorization `code`, and a `jwt`.
const SENSITIVE_QUERY: [&str; 9] = [
    "awsaccesskeyid",
    "sig",
    "key",
    "auth",
    "pwd",
    "session",
    "sid",
    "code",
    "jwt",
];

/// Endings of a normalised name that make it a credential's: `token` (`access_token`,
/// `sessionToken`, `X-Amz-Security-Token`), `secret` (`client_secret`), `password`,
/// `passwd`, `signature` (`X-Amz-Signature`), `apikey` (`api_key`, `x-api-key`),
/// `secretkey`, `privatekey` and `accesskey` written as one word, `credential` and
/// `credentials` (`X-Amz-Credential`, `X-Goog-Credential`), `assertion` (an OAuth
/// `client_assertion`), `sessionid` and `sessid` (`JSESSIONID`, `PHPSESSID`).
const SENSITIVE_ENDING: [&str; 14] = [
    "token",
    "secret",
    "password",
    "passwd",
    "signature",
    "apikey",
    "secretkey",
    "privatekey",
    "accesskey",
    "credential",
    "credentials",
    "assertion",
    "sessionid",
    "sessid",
];

fn sensitive(name: &str) -> bool {
    // Normalised into a buffer of the name's last 64 bytes kept (no allocation on a request's
    // way out): the exact names are shorter, and an ending is the end.
    let mut buf = [0u8; 64];
    let mut len = 0usize;
    let mut long = false;
    for b in name.bytes().filter(|b| *b != b'_' && *b != b'-') {
        if len == buf.len() {
            buf.copy_within(1.., 0);
            len -= 1;
            long = true;
        }
        buf[len] = b.to_ascii_lowercase();
        len += 1;
    }
    let n = &buf[..len];
    (!long && SENSITIVE_QUERY.iter().any(|s| s.as_bytes() == n))
        || SENSITIVE_ENDING.iter().any(|e| n.ends_with(e.as_bytes()))
        || ends_in_key_word(name)
}

/// A name whose last word is `key` (`secret_key`, `private-key`, `accessKey`,
/// `AWSSecretAccessKey`), not one that only ends in the letters (`monkey`, `turkey`).
fn ends_in_key_word(name: &str) -> bool {
    let b = name.as_bytes();
    let Some(before) = b.len().checked_sub(4).map(|i| b[i]) else {
        return false;
    };
    let key = &b[b.len() - 3..];
    key.eq_ignore_ascii_case(b"key")
        && (before == b'_' || before == b'-' || (key[0] == b'K' && before.is_ascii_lowercase()))
}

/// `url` as `url.full` may show it: no credentials, no signatures.
pub(crate) fn redacted(url: &reqwest::Url) -> std::borrow::Cow<'_, str> {
    let has_credentials = !url.username().is_empty() || url.password().is_some();
    let has_sensitive = url.query_pairs().any(|(k, _)| sensitive(&k));
    // A fragment is never sent (an OAuth implicit grant's token travels in one).
    let has_fragment = url.fragment().is_some();
    if !has_credentials && !has_sensitive && !has_fragment {
        return url.as_str().into();
    }
    let mut u = url.clone();
    u.set_fragment(None);
    if has_credentials {
        let _ = u.set_username("REDACTED");
        if url.password().is_some() {
            let _ = u.set_password(Some("REDACTED"));
        }
    }
    if has_sensitive {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if sensitive(&k) {
                    "REDACTED".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    String::from(u).into()
}

/// Records how the attempt ended on its span.
#[inline]
pub(crate) fn on_end(span: &Span, end: &super::AttemptEnd) {
    if !span.is_disabled() {
        record_end(span, end);
    }
}

#[inline(never)]
fn record_end(span: &Span, end: &super::AttemptEnd) {
    // The status of the attempt's last response, the one its outcome was judged by: recorded
    // once (an OpenTelemetry span keeps every value recorded, not the last).
    if let Some(s) = end.status {
        span.record("http.response.status_code", i64::from(s));
    }
    span.record("resilience.decision", end.decision);
    if let Some(reason) = end.reason {
        span.record("resilience.reason", reason);
    }
    if let Some(delay) = end.delay {
        span.record(
            "resilience.delay_ms",
            i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
        );
    }
    if let Some(class) = end.class {
        span.record("resilience.class", class.as_str());
        span.record("otel.status_code", "error");
        match (class, end.status) {
            (Class::Status(s), _) => span.record("error.type", display(s)),
            (_, Some(s)) if s >= 400 => span.record("error.type", display(s)),
            (c, _) => span.record("error.type", c.as_str()),
        };
    } else if let Some(s) = end.status.filter(|s| *s >= 400) {
        // A body that succeeded despite an error status: the conventions still call it one,
        // and a client span answered 4xx or 5xx an error.
        span.record("error.type", display(s));
        span.record("otel.status_code", "error");
    }
}

#[cfg(test)]
mod tests {
    use super::{redacted, server_address};

    #[test]
    fn server_address_is_the_host_without_brackets() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(server_address(&u("http://[::1]:8080/a")), Some("::1"));
        assert_eq!(server_address(&u("http://127.0.0.1/a")), Some("127.0.0.1"));
        assert_eq!(
            server_address(&u("https://pg.example/")),
            Some("pg.example")
        );
    }

    #[test]
    fn url_full_hides_credentials_and_signatures() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(
            redacted(&u("http://127.0.0.1:8080/a?b=1")),
            "http://127.0.0.1:8080/a?b=1"
        );
        assert_eq!(
            redacted(&u("http://user:pw@127.0.0.1/a")),
            "http://REDACTED:REDACTED@127.0.0.1/a"
        );
        assert_eq!(
            redacted(&u("https://h/p?x=1&sig=secret&Signature=s2")),
            "https://h/p?x=1&sig=REDACTED&Signature=REDACTED"
        );
        assert_eq!(
            redacted(&u(
                "https://maps.example/geo?q=seoul&key=AIza123&API-Key=k2&Access_Token=t&page=2"
            )),
            "https://maps.example/geo?q=seoul&key=REDACTED&API-Key=REDACTED&Access_Token=REDACTED&page=2"
        );
        assert_eq!(
            redacted(&u(
                "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261204&X-Amz-Security-Token=tok&X-Amz-Signature=abc123"
            )),
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED"
        );
        // Every name the README lists, in any case, `-` for `_`; names that only contain one
        // are kept.
        for name in [
            "key",
            "api_key",
            "apikey",
            "access_token",
            "token",
            "auth",
            "password",
            "secret",
            "client_secret",
            "TOKEN",
            "Auth",
            "Client-Secret",
            "PassWord",
            "API-KEY",
            "pwd",
            "passwd",
            "PWD",
            "sig",
        ] {
            assert_eq!(
                redacted(&u(&format!("https://h/p?{name}=v&n=1"))),
                format!("https://h/p?{name}=REDACTED&n=1"),
                "{name}"
            );
        }
        // Names of credentials written other ways: camel case, another prefix, an ending.
        for name in [
            "accessToken",
            "clientSecret",
            "refresh_token",
            "id_token",
            "sessionToken",
            "signature",
            "x-amz-security-token",
            "X-Amz-Security-Token",
            "x-api-key",
            "userPassword",
            "AWSAccessKeyId",
            "X-Goog-Credential",
            "secret_key",
            "access-key",
            "private_key",
            "clientKey",
            "AWSSecretAccessKey",
            "SECRET_KEY",
            "session",
            "SessionId",
            "sid",
            "code",
            "jwt",
            "client_assertion",
            "db_passwd",
            "credentials",
            "secretkey",
            "PRIVATEKEY",
            "accesskey",
            "JSESSIONID",
            "PHPSESSID",
        ] {
            assert_eq!(
                redacted(&u(&format!("https://h/p?{name}=v&n=1"))),
                format!("https://h/p?{name}=REDACTED&n=1"),
                "{name}"
            );
        }
        // A fragment is never sent, and may hold a token: left off.
        assert_eq!(
            redacted(&u("https://h/cb?state=1#access_token=t&x=1")),
            "https://h/cb?state=1"
        );
        let long = format!("https://h/p?{}_token=v", "x".repeat(80));
        assert!(redacted(&u(&long)).ends_with("_token=REDACTED"), "{long}");
        for kept in [
            "tokens",
            "author",
            "keyword",
            "secretary",
            "monkey",
            "MONKEY",
            "turkey",
            "keys",
            "zip_code",
            "page",
            "tokenizer",
        ] {
            let url = format!("https://h/p?{kept}=v");
            assert_eq!(redacted(&u(&url)), url, "{kept}");
        }
    }
}
