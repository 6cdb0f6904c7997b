//! Behind a real haproxy that retries on its own (`retry-on all-retryable-errors`, `retries 2`),
//! with a `timeout server` shorter than the handler: after 100 ms without an answer the proxy sends
//! the same request again, body and headers as it got them. A keyed charge behind an
//! `IdempotencyLayer` still runs once: the proxy's resend carries the key and is answered 409, and
//! the client asks for the replay; with two instances sharing Redis, the resend goes to the other
//! one, which finds the key claimed there. The controls show what the proxy does to a handler
//! nothing protects (three runs for one request the client sent once), and what a backend the proxy
//! cannot reach looks like from the client (a 503, not a connect failure).
//!
//! Starts its own haproxy (foreground, its own config, a free loopback port). Needs the
//! `haproxy` binary (`.ci/test` installs it); without it the tests are skipped, unless `CI`
//! is set: then they fail.

mod process;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use resilience_runtime::server::{IdempotencyLayer, MemoryStore, RedisStore};
use resilience_runtime::{Error, ErrorKind, resilient};

/// haproxy's `timeout server`: how long it waits for the service's answer before trying again.
const SERVER_TIMEOUT_MS: u64 = 100;
/// haproxy's `retries`: its own tries after the first.
const PROXY_RETRIES: usize = 2;
/// The handler's work: longer than haproxy waits.
const HANDLER_MS: u64 = 300;

/// haproxy on a free loopback port, proxying to `upstreams` in turn; `None` (skip) if not
/// installed.
async fn haproxy(upstreams: &[SocketAddr]) -> Option<process::Process> {
    let servers: String = upstreams
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("  server s{i} {addr}\n"))
        .collect();
    process::Process::start("haproxy", |dir, port| {
        // A common production shape: layer-7 retries on every error haproxy deems retryable
        // (a connect failure, no answer in time, an empty or broken answer, 500/502/503/504),
        // each retry to another instance where there are several (`redispatch`).
        let conf = format!(
            "global\n  maxconn 64\n\
             defaults\n  mode http\n  timeout connect 100ms\n  timeout client 10s\n\
               timeout server {SERVER_TIMEOUT_MS}ms\n  retries {PROXY_RETRIES}\n\
               retry-on all-retryable-errors\n  option redispatch 1\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  balance roundrobin\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, conf).expect("write haproxy.cfg");
        vec!["-db".into(), "-f".into(), path.into()]
    })
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
    let (addr, arrivals, runs) = process::slow_charges(Some(layer), HANDLER_MS).await;
    let Some(proxy) = haproxy(&[addr]).await else {
        return;
    };
    let http = reqwest::Client::new();
    let receipt = charge(&http, &proxy.url("/charges")).await;
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(
        receipt.as_deref().map_err(ToString::to_string),
        Ok("charge #1"),
        "{arrivals:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "charged once");
    // Three on a quiet machine; one more for each 409 slower than the proxy's 100 ms.
    assert!(
        arrivals.len() >= 3,
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

/// The production shape: two instances of the service behind the proxy, sharing their claims
/// and answers through Redis. The proxy's resend goes to the other instance (`redispatch`),
/// which finds the key claimed in Redis and answers 409; the client's ask for the replay gets
/// the answer the first instance kept there. One charge, on whichever instance took it.
#[tokio::test]
async fn two_instances_sharing_redis_behind_a_resending_proxy_charge_once() {
    let Some(url) = support::redis_url().await else {
        return;
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let prefix = format!(
        "behind-haproxy:{}:{}:",
        std::process::id(),
        now.unwrap().as_nanos()
    );
    let store = || async {
        RedisStore::connect(&url)
            .await
            .expect("connect to Redis")
            .prefix(prefix.clone())
    };
    let (a, arrivals_a, runs_a) =
        process::slow_charges(Some(IdempotencyLayer::new(store().await)), HANDLER_MS).await;
    let (b, arrivals_b, runs_b) =
        process::slow_charges(Some(IdempotencyLayer::new(store().await)), HANDLER_MS).await;
    let Some(proxy) = haproxy(&[a, b]).await else {
        return;
    };
    let http = reqwest::Client::new();
    let receipt = charge(&http, &proxy.url("/charges")).await;
    assert_eq!(
        receipt.as_deref().map_err(ToString::to_string),
        Ok("charge #1"),
        "{:?} and {:?}",
        arrivals_a.lock().unwrap(),
        arrivals_b.lock().unwrap()
    );
    let runs = runs_a.load(Ordering::SeqCst) + runs_b.load(Ordering::SeqCst);
    assert_eq!(runs, 1, "charged once, on one instance");
    let (a, b) = (
        arrivals_a.lock().unwrap().len(),
        arrivals_b.lock().unwrap().len(),
    );
    assert!(
        a >= 1 && b >= 1 && a + b >= 3,
        "the first try on one instance, the proxy's resend on the other, the client's ask: {a} and {b}"
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
    let (addr, arrivals, runs) = process::slow_charges(None, HANDLER_MS).await;
    let Some(proxy) = haproxy(&[addr]).await else {
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
    let closed = resilience_fault_server::refused_addr();
    let Some(proxy) = haproxy(&[closed]).await else {
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
