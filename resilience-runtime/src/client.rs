//! Connection settings that belong to the client, not the call (`[clients.NAME]`).

use std::time::Duration;

/// How the `reqwest::Client` under a policy should treat connections.
///
/// Build it from `resilience.toml` with [`client!`](crate::client):
///
/// ```ignore
/// let http = resilience_runtime::client!("pg").build()?;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// Time to establish a connection; shorter than any attempt timeout, so a connect failure is
    /// recognisable as "never sent" (and safe to retry for any method).
    pub connect_timeout: Duration,
    /// Pooled connections idle longer than this are closed, before the server's keep-alive
    /// timeout closes them under us: the `connection closed before message completed` (or
    /// `Connection reset by peer`) of a stale pooled socket. Must stay below the lowest
    /// keep-alive of the servers called; see [`ClientSettings::DEFAULT`] for common ones.
    pub pool_idle_timeout: Duration,
    /// TCP keep-alive probes on open connections: the idle time before the first. The system
    /// takes whole seconds, 1 to 32767 on Linux (`[clients.NAME]` is refused otherwise); a
    /// value it refuses leaves the socket on its 2-hour default.
    pub tcp_keepalive: Duration,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
}

impl ClientSettings {
    /// Connect timeout 3 s, pool idle timeout 1 s, TCP keep-alive 30 s, 32 idle connections
    /// per host.
    ///
    /// The pool idle timeout is half the lowest idle keep-alive among the servers people
    /// commonly run, so that a pooled socket is dropped by the client before the server drops
    /// it (the server's timer starts when it sent the answer, the client's a little later, when
    /// the answer arrived):
    ///
    /// | server | idle keep-alive by default |
    /// |---|---|
    /// | gunicorn (`--keep-alive`) | 2 s |
    /// | Node.js `http.Server` (`keepAliveTimeout`) | 5 s |
    /// | uvicorn (`--timeout-keep-alive`) | 5 s |
    /// | Apache httpd (`KeepAliveTimeout`) | 5 s |
    /// | AWS Application Load Balancer (idle timeout) | 60 s |
    /// | nginx (`keepalive_timeout`) | 75 s |
    ///
    /// Against a server known to keep connections longer, raise it in `[clients.NAME]`
    /// (`pool_idle_timeout = "30s"` below nginx's 75 s) to reconnect less often.
    pub const DEFAULT: ClientSettings = ClientSettings {
        connect_timeout: resilience_spec::defaults::CONNECT_TIMEOUT,
        pool_idle_timeout: resilience_spec::defaults::POOL_IDLE_TIMEOUT,
        tcp_keepalive: Duration::from_secs(30),
        pool_max_idle_per_host: 32,
    };

    /// A builder with these settings and redirects followed through [`redirect_policy`] (so a
    /// redirect's target that cannot be reached is not taken for a request never sent). Add
    /// TLS, proxies or default headers to it as usual.
    ///
    /// reqwest's own retries are those of its default policy, which sends a request again
    /// only where an HTTP/2 server said it never processed it (`REFUSED_STREAM`, a graceful
    /// `GOAWAY`), at most twice, inside the attempt and its timeout: the server does nothing
    /// twice, so the attempts of the policy do not multiply, and an unkeyed POST refused that
    /// way by a server draining for a deploy goes through inside the attempt. A refusal past
    /// those two reaches the policy as a request never sent (a connect failure). Over
    /// HTTP/1.1 it never retries.
    ///
    /// The client also tells the attempt in progress of every request it completes (answered,
    /// or failed), in the task that sent it: one the runtime did not stamp (an SDK's type
    /// holding this client sends its POST with a plain `.send()`) counts as a request of its
    /// method the attempt sent, without the key, so that an unkeyed POST is not sent again.
    /// Keep the builder's redirect and retry policies: another `.retry(…)` on it turns that
    /// off, and with another `.redirect(…)` a POST sent on by a 307 or 308 counts as one
    /// without the key. A request that could not connect counts as never sent.
    pub fn builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(self.pool_idle_timeout)
            .tcp_keepalive(self.tcp_keepalive)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .redirect(redirect_policy())
            .retry(
                reqwest::retry::for_host(AnyHost)
                    .no_budget()
                    .classify_fn(|req_rep| {
                        if completed(
                            req_rep.method(),
                            req_rep.uri(),
                            req_rep.status(),
                            req_rep.error(),
                        ) {
                            req_rep.retryable()
                        } else {
                            req_rep.success()
                        }
                    }),
            )
            // The URL a redirect came from (its query's token, say) is not the next host's
            // to know.
            .referer(false)
    }

    /// The client, ready to use.
    pub fn build(&self) -> Result<reqwest::Client, crate::Error> {
        Ok(self.builder().build()?)
    }
}

/// The scope of the client's retry policy: every request, as reqwest's default policy's.
struct AnyHost;

impl PartialEq<&str> for AnyHost {
    fn eq(&self, _: &&str) -> bool {
        true
    }
}

/// reqwest's classifier of a completed request (its method, URI, status or error): tells the
/// attempt in progress ([`AttemptCtx::completed`]: an unsafe request it did not stamp counts
/// as sent without the key), and returns whether to send it again, as the default policy
/// does only for what an HTTP/2 server refused before processing it. Such a refusal is not
/// told: the server did nothing with it.
///
/// [`AttemptCtx::completed`]: crate::context::AttemptCtx
fn completed(
    method: &http::Method,
    uri: &http::Uri,
    status: Option<http::StatusCode>,
    error: Option<&(dyn std::error::Error + 'static)>,
) -> bool {
    let sent_on = status.is_some_and(|s| resent_by(s.as_u16(), method == http::Method::POST));
    // The statuses reqwest's redirect policy is asked about: from this URL.
    let redirected = status
        .is_some_and(|s| matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308))
        .then(|| crate::context::hash_of_uri(uri));
    if error.is_some_and(crate::classify::protocol_nack) {
        return true;
    }
    let connect_failure = error
        .and_then(|e| e.downcast_ref::<reqwest::Error>())
        .is_some_and(reqwest::Error::is_connect);
    let _ = crate::context::with_attempt(|ctx| {
        let m = crate::policy::method_of(method);
        let url = if m.is_safe() {
            0
        } else {
            crate::context::hash_of_uri(uri)
        };
        let refused = status.is_some_and(crate::context::refused_before_acting);
        ctx.completed(m, url, !connect_failure, refused, sent_on, redirected);
    });
    false
}

/// Whether a redirect of `status` sends a request on as it was (its method, body and headers),
/// as reqwest follows redirects: a 307 or 308 any request; a 301 or 302 any but a POST, which
/// it turns into a GET (`post`; a PUT, PATCH or DELETE keeps its method and body).
fn resent_by(status: u16, post: bool) -> bool {
    match status {
        307 | 308 => true,
        301 | 302 => !post,
        _ => false,
    }
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings::DEFAULT
    }
}

/// Redirects followed as reqwest follows them by default (up to 10; a 307 or 308 back to a URL
/// already visited is an error at once, not ten more sends of the request, and another
/// redirect at a URL's second visit), each told to the attempt
/// in progress: a request that was redirected reached a server, so a connect failure that
/// follows (the `Location` refuses, does not resolve) is not proof that it was never sent,
/// and an unkeyed POST is not sent again for it.
///
/// [`ClientSettings::builder`] and `client!` use it. A client built by hand follows
/// redirects without telling the runtime: give it this policy (or
/// `reqwest::redirect::Policy::none()`) where its functions send unkeyed POSTs and retry on
/// `connect`.
///
/// ```
/// let client = reqwest::Client::builder()
///     .redirect(resilience_runtime::redirect_policy())
///     .build()
///     .unwrap();
/// ```
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        // Whether the hop just reported (by a client of `ClientSettings`, whose classifier ran
        // on it in this same poll) was a stamped unsafe request's 307 or 308: taken here, on
        // every path, so that it never outlives this redirect.
        // The hop's method as that client reported it; or else as the stamped request being
        // polled tells it (a client built by hand reports nothing).
        let (unsafe_hop, hop_method) = crate::context::with_attempt(|ctx| {
            use crate::policy::Method;
            ctx.redirects.set(ctx.redirects.get().wrapping_add(1));
            // Reported of the hop this redirect is from, not left by another's.
            let from = attempt.previous().last().map(crate::context::hash_of_url);
            let reported = ctx
                .hop_method
                .take()
                .filter(|(_, url)| from == Some(*url))
                .map(|(m, _)| m);
            let polling = ctx.polling.get();
            // A 303 sends the request being polled on as a GET (reqwest keeps a HEAD a HEAD:
            // safe either way); not another's 303 in its poll, where a client tells it.
            if attempt.status() == reqwest::StatusCode::SEE_OTHER
                && polling != Method::Post
                && reported.is_none_or(|m| m == polling)
            {
                ctx.polling.set(Method::Get);
            }
            (ctx.unsafe_hop.replace(0), reported.unwrap_or(polling))
        })
        .unwrap_or((0, crate::policy::Method::Post));
        // ... and this redirect is from that hop's URL (not one of a client that reports
        // nothing, after a 307 whose redirect was never followed).
        let unsafe_hop = unsafe_hop != 0
            && attempt
                .previous()
                .last()
                .is_some_and(|from| crate::context::hash_of_url(from) == unsafe_hop);
        // A loop (a `Location` already visited, the request resent as it was, by a 307 or
        // 308): reqwest's own policy counts hops only, and a 307 back to itself resends the
        // POST ten times within one send. Not a 303 to the URL posted to (the POST's answer
        // read with a GET), nor a 301 or 302, which turn a POST into a GET too.
        // A 301, 302 or 303 back to a URL visited twice already (a GET going round: once
        // back is the 303 of a POST to its own URL, read there with a GET).
        let visits = attempt
            .previous()
            .iter()
            .filter(|u| *u == attempt.url())
            .count();
        // Resent as it was: a 307 or 308; a 301 or 302 of an unsafe request but a POST (its
        // method reported by a client of `ClientSettings` in this same poll, or told by the
        // stamped request being polled; a POST's when neither tells it): an unkeyed PATCH
        // answered 302 back to its own URL was once applied twice within one send.
        // (A safe request's 301 or 302 going round is the GET rule's below.)
        let resent = resent_by(
            attempt.status().as_u16(),
            hop_method == crate::policy::Method::Post || hop_method.is_safe(),
        );
        if (resent && visits > 0) || visits > 1 {
            // The URL is reqwest's error's to show (redacted with it), not this message's.
            return attempt.error("redirect loop back to a URL already visited");
        }
        // Followed (reqwest's default follows while at most 10 URLs came before): a stamped
        // unsafe request a 307 or 308 sends on as it was completes at the target as the same
        // request, which a client of `ClientSettings` reports.
        if unsafe_hop && resent && attempt.previous().len() <= 10 {
            let _ = crate::context::with_attempt(|ctx| {
                let to = crate::context::with_method(
                    crate::context::hash_of_url(attempt.url()),
                    hop_method,
                );
                ctx.expect_at(to);
                ctx.redirect_target.set(to);
            });
        }
        reqwest::redirect::Policy::default().redirect(attempt)
    })
}

/// How the client writes the `Idempotency-Key` it generates (`idempotency_key = auto`).
///
/// The IETF idempotency-key draft makes the header a Structured Field string, quoted:
/// `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`. Payment APIs (and most servers
/// in use) expect the bare value, which is the default. This crate's own
/// `server::IdempotencyLayer` accepts both as the same key.
///
/// A key taken from a parameter (`idempotency_key = order_id`) is sent as the caller gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    /// `Idempotency-Key: 8e03978e-40d5-43e8-bc93-6894a57f9324` (the default).
    #[default]
    Bare,
    /// `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`, the draft's form.
    Quoted,
}

static KEY_FORMAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl KeyFormat {
    /// Sets the format of every generated key in this process, from the next call on (a call
    /// in progress keeps the format it began with, so its attempts send one key).
    pub fn set(self) {
        KEY_FORMAT.store(
            self == KeyFormat::Quoted,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The format in use.
    pub fn current() -> KeyFormat {
        if KEY_FORMAT.load(std::sync::atomic::Ordering::Relaxed) {
            KeyFormat::Quoted
        } else {
            KeyFormat::Bare
        }
    }

    /// What goes on each side of a key in this format: nothing, or the Structured Field
    /// string's quotes.
    pub(crate) fn delimiter(self) -> &'static str {
        match self {
            KeyFormat::Bare => "",
            KeyFormat::Quoted => "\"",
        }
    }

    /// `key` (visible ASCII without `"` or `\`, such as a UUID) in this format.
    pub(crate) fn header(self, key: &str) -> http::HeaderValue {
        let d = self.delimiter();
        http::HeaderValue::from_str(&format!("{d}{key}{d}"))
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid-key"))
    }
}
