//! Behind a real haproxy that retries on its own (`retry-on all-retryable-errors`, `retries
//! 2`), with a `timeout server` shorter than the handler: after 100 ms without an answer the
//! proxy sends the same request again, body and headers as it got them. A keyed charge behind
//! an `IdempotencyLayer` still runs once: the proxy's resend carries the key and is answered
//! 409, and the client asks for the replay. The controls show what the proxy does to a handler
//! nothing protects (three runs for one request the client sent once), and what a backend the
//! proxy cannot reach looks like from the client (a 503, not a connect failure).
//!
//! Starts its own haproxy (foreground, its own config, a free loopback port). Needs the
//! `haproxy` binary (`.ci/test` installs it); without it the tests are skipped, unless `CI`
//! is set: then they fail.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use resilience_runtime::server::{IdempotencyLayer, MemoryStore};
use resilience_runtime::{Error, ErrorKind, resilient};

/// haproxy's `timeout server`: how long it waits for the service's answer before trying again.
const SERVER_TIMEOUT_MS: u64 = 100;
/// haproxy's `retries`: its own tries after the first.
const PROXY_RETRIES: usize = 2;
/// The handler's work: longer than haproxy waits.
const HANDLER_MS: u64 = 300;

mod proxy;

/// haproxy on a free loopback port, proxying to `upstream`; `None` (skip) if not installed.
async fn haproxy(upstream: SocketAddr) -> Option<proxy::Proxy> {
    proxy::Proxy::start(
        "haproxy",
        "haproxy.cfg",
        // A common production shape: layer-7 retries on every error haproxy deems retryable
        // (a connect failure, no answer in time, an empty or broken answer, 500/502/503/504).
        |_, port| {
            format!(
                "global\n  maxconn 64\n\
                 defaults\n  mode http\n  timeout connect 100ms\n  timeout client 10s\n\
                   timeout server {SERVER_TIMEOUT_MS}ms\n  retries {PROXY_RETRIES}\n\
                   retry-on all-retryable-errors\n  option redispatch\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
                 backend be\n  server s1 {upstream}\n"
            )
        },
        |_, conf| vec!["-db".into(), "-f".into(), conf.into()],
    )
    .await
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 4,
    backoff(initial = "5ms", max = "20ms"),
    idempotency_key = auto
)]
async fn charge(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    let receipt = http
        .post(url)
        .body("order=1042&amount=39000")
        .send()
        .await?
        .error_for_status()?;
    Ok(receipt.text().await?)
}

/// The client sends the charge once; haproxy's `timeout server` strikes while the handler runs,
/// and it sends the request again with the call's key. The layer runs the handler for the
/// first and answers the proxy's resend 409 ("still in progress"), which haproxy does not
/// retry and passes on; the client asks again with the
/// key after `Retry-After` and gets the replay. One charge, its receipt returned.
#[tokio::test]
async fn a_proxy_resending_a_keyed_charge_on_its_own_still_charges_once() {
    let layer = IdempotencyLayer::new(MemoryStore::default());
    let (addr, arrivals, runs) = proxy::slow_charges(Some(layer), HANDLER_MS).await;
    let Some(proxy) = haproxy(addr).await else {
        return;
    };
    let http = reqwest::Client::new();
    let receipt = charge(&http, &proxy.url("/charges")).await;
    assert_eq!(receipt.unwrap(), "charge #1");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "charged once");
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(
        arrivals.len(),
        3,
        "the proxy's first try, its resend (answered 409, passed on), the client's ask: {arrivals:?}"
    );
    assert!(
        arrivals[1].0 - arrivals[0].0 < Duration::from_millis(HANDLER_MS),
        "the second came while the handler ran, long before the client's attempt timeout (1s): the proxy's own resend: {arrivals:?}"
    );
    let key = arrivals[0].1.clone().expect("the charge went out keyed");
    assert!(
        arrivals
            .iter()
            .all(|(_, k)| k.as_deref() == Some(key.as_str())),
        "every request, the proxy's resend too, carries the one key: {arrivals:?}"
    );
}

/// The control: the same proxy in front of a handler nothing protects. The function sends its
/// POST once (`max_attempts = 1`, no key: nothing of the client's retries it), and the handler
/// runs three times: the proxy's own retries resend what it got. The client gets the proxy's
/// 504 after one attempt. What the key and the layer above prevent.
#[resilient(timeout = "2s", deadline = "5s", max_attempts = 1)]
async fn charge_once_unkeyed(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    let receipt = http
        .post(url)
        .body("order=1042&amount=39000")
        .send()
        .await?
        .error_for_status()?;
    Ok(receipt.text().await?)
}

#[tokio::test]
async fn the_same_proxy_runs_an_unprotected_handler_once_per_resend() {
    let (addr, arrivals, runs) = proxy::slow_charges(None, HANDLER_MS).await;
    let Some(proxy) = haproxy(addr).await else {
        return;
    };
    let http = reqwest::Client::new();
    let err = charge_once_unkeyed(&http, &proxy.url("/charges"))
        .await
        .expect_err("the proxy gave up: 504");
    assert_eq!(err.attempts(), 1, "{err}");
    assert_eq!(err.http_status(), Some(504), "{err}");
    let keys: Vec<Option<String>> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|(_, k)| k.clone())
        .collect();
    assert_eq!(
        keys,
        vec![None; PROXY_RETRIES + 1],
        "the proxy's first try and its resends, unkeyed"
    );
    // Each run began when its request arrived (the handler counts, then works).
    assert_eq!(runs.load(Ordering::SeqCst), PROXY_RETRIES + 1);
}

#[resilient(
    timeout = "2s",
    deadline = "8s",
    max_attempts = 3,
    backoff(initial = "5ms", max = "20ms")
)]
async fn get_charge(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[resilient(
    timeout = "2s",
    deadline = "8s",
    max_attempts = 3,
    retry_on = [connect],
    backoff(initial = "5ms", max = "20ms")
)]
async fn post_charge_on_connect(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("order=1042")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// A backend the proxy cannot reach (nothing listens on its port): haproxy tries to connect
/// three times and answers 503. For the client that is an answer, not a connect failure: a GET
/// is retried on it (a transient status), and an unkeyed POST allowed retries on `connect`
/// only is not (it cannot tell that its request never reached a service).
#[tokio::test]
async fn a_backend_the_proxy_cannot_reach_is_a_503_not_a_connect_failure() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().unwrap()
    };
    let Some(proxy) = haproxy(closed).await else {
        return;
    };
    let http = reqwest::Client::new();
    let url = proxy.url("/charges");

    let err = get_charge(&http, &url).await.expect_err("no backend");
    assert_eq!(err.kind(), ErrorKind::Call, "{err}");
    assert_eq!(err.http_status(), Some(503), "{err}");
    assert_eq!(err.attempts(), 3, "a GET retried on the proxy's 503: {err}");

    let err = post_charge_on_connect(&http, &url)
        .await
        .expect_err("no backend");
    assert_eq!(err.kind(), ErrorKind::Call, "{err}");
    assert_eq!(err.http_status(), Some(503), "{err}");
    assert_eq!(
        err.attempts(),
        1,
        "the proxy's 503 is no connect failure of the client's: {err}"
    );
}
