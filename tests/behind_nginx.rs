//! Exactly once behind a real nginx whose `proxy_read_timeout` is shorter than the handler:
//! nginx answers 504 and closes the upstream connection while the handler runs, the keyed
//! client retries, meets 409, waits, and gets the replay.
//!
//! Starts its own nginx (`master_process off`, its own config and temp directory, a free
//! loopback port). Needs the `nginx` binary (`.ci/test` installs it); without it the test is
//! skipped, unless `CI` is set: then it fails.

mod process;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use resilience_runtime::server::{IdempotencyLayer, MemoryStore};
use resilience_runtime::{Error, RequestBuilderExt as _, resilient};

/// nginx's read timeout towards the service.
const PROXY_READ_TIMEOUT_MS: u64 = 100;
/// The handler's work: longer than nginx waits.
const HANDLER_MS: u64 = 300;

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 4,
    backoff(initial = "5ms", max = "20ms"),
    idempotency_key = auto
)]
async fn charge(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("order=1042&amount=39000")
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// nginx on a free loopback port, proxying to `upstream`; `None` (skip) if not installed.
async fn nginx(upstream: SocketAddr) -> Option<process::Process> {
    process::Process::start("nginx", |dir, port| {
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
                 proxy_pass http://{upstream};\n      proxy_read_timeout {PROXY_READ_TIMEOUT_MS}ms;\n\
                 proxy_next_upstream off;\n    }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        vec![
            "-p".into(),
            dir.into(),
            "-c".into(),
            path.into(),
            "-e".into(),
            dir.join("error.log").into(),
        ]
    })
    .await
}

#[tokio::test]
async fn a_proxy_timing_out_before_the_handler_never_makes_it_run_twice() {
    let (addr, _, runs) = process::slow_charges(
        Some(IdempotencyLayer::new(MemoryStore::default())),
        HANDLER_MS,
    )
    .await;
    let Some(proxy) = nginx(addr).await else {
        return;
    };
    let http = reqwest::Client::new();
    let receipt = charge(&http, &proxy.url("/charges")).await;
    assert_eq!(receipt.unwrap(), "charge #1");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "charged once");
}

#[tokio::test]
async fn the_same_with_the_handler_inside_the_request_future_charges_again() {
    // The regression, kept as the control: nginx's 504 closes the upstream connection, hyper
    // drops the request future, and a handler that lives in it is cancelled and its claim
    // released; the retry charges again.
    let layer = IdempotencyLayer::new(MemoryStore::default()).__attached_for_benchmarks();
    let (addr, _, runs) = process::slow_charges(Some(layer), HANDLER_MS).await;
    let Some(proxy) = nginx(addr).await else {
        return;
    };
    let http = reqwest::Client::new();
    let _ = charge(&http, &proxy.url("/charges")).await;
    assert!(
        runs.load(Ordering::SeqCst) >= 2,
        "{} runs",
        runs.load(Ordering::SeqCst)
    );
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 4,
    backoff(initial = "5ms", max = "20ms"),
    idempotency_key = auto,
    hedge(delay = "30ms")
)]
async fn hedged_charge(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    let receipt = http
        .post(url)
        .body("order=1042&amount=39000")
        .send()
        .await?
        .error_for_status()?;
    Ok(receipt.text().await?)
}

#[resilient(
    timeout = "1s",
    deadline = "10s",
    max_attempts = 1,
    idempotency_key = auto,
    hedge(delay = "30ms")
)]
async fn hedged_charge_once(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    let receipt = http
        .post(url)
        .body("order=1042&amount=39000")
        .send()
        .await?
        .error_for_status()?;
    Ok(receipt.text().await?)
}

/// A hedged keyed charge behind the proxy: the hedge goes out while the first request's
/// handler runs and is told "still in progress" (409), then nginx answers the first 504; the
/// call asks again with the key until the replay comes. One charge, its receipt returned.
#[tokio::test]
async fn a_hedged_charge_behind_a_proxy_timing_out_is_charged_once() {
    let (addr, requests, runs) = process::slow_charges(
        Some(IdempotencyLayer::new(MemoryStore::default())),
        HANDLER_MS,
    )
    .await;
    let Some(proxy) = nginx(addr).await else {
        return;
    };
    let http = reqwest::Client::new();
    let receipt = hedged_charge(&http, &proxy.url("/charges")).await;
    assert_eq!(receipt.unwrap(), "charge #1");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "charged once");
    let arrivals: Vec<_> = requests.lock().unwrap().iter().map(|(at, _)| *at).collect();
    assert!(
        arrivals.len() >= 3,
        "the first, its hedge, and an ask for the replay: {arrivals:?}"
    );
    assert!(
        arrivals[1] - arrivals[0] < Duration::from_millis(PROXY_READ_TIMEOUT_MS),
        "the second a hedge, before nginx gave up on the first: {arrivals:?}"
    );
}

/// The caller gives up while the first request and its hedge are both on their way (a
/// `select!` that took another branch once both arrived): both reached the server with the one key; the charge
/// runs once, to its end, and its receipt is kept for the key.
#[tokio::test]
async fn a_caller_giving_up_mid_hedge_leaves_one_charge() {
    let (addr, requests, runs) = process::slow_charges(
        Some(IdempotencyLayer::new(MemoryStore::default())),
        HANDLER_MS,
    )
    .await;
    let Some(proxy) = nginx(addr).await else {
        return;
    };
    let http = reqwest::Client::new();
    let url = proxy.url("/charges");
    let both_arrived = async {
        for _ in 0..1000 {
            if requests.lock().unwrap().len() == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the hedge never reached the server");
    };
    tokio::select! {
        done = hedged_charge(&http, &url) => panic!("answered: {done:?}"),
        () = both_arrived => {}
    }
    // The handler outlives its caller and nginx's 100 ms: wait for its end.
    tokio::time::sleep(Duration::from_millis(HANDLER_MS + 200)).await;
    assert_eq!(
        requests.lock().unwrap().len(),
        2,
        "the first and its hedge reached the server, nothing after"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "charged once");
}

/// The same with no retry allowed (`max_attempts = 1`): the hedge was told "still in
/// progress", then nginx answered the first request 504. The round is decided on what the
/// hedge learned, not on the proxy's 504: the charge is running, and the call asks for its
/// replay (asking is no retry) instead of failing while the card is being charged.
#[tokio::test]
async fn a_hedged_charge_told_in_progress_then_504_asks_for_the_replay() {
    let (addr, requests, runs) = process::slow_charges(
        Some(IdempotencyLayer::new(MemoryStore::default())),
        HANDLER_MS,
    )
    .await;
    let Some(proxy) = nginx(addr).await else {
        return;
    };
    let http = reqwest::Client::new();
    let receipt = hedged_charge_once(&http, &proxy.url("/charges")).await;
    assert_eq!(receipt.unwrap(), "charge #1");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "charged once");
    let arrivals: Vec<_> = requests.lock().unwrap().iter().map(|(at, _)| *at).collect();
    assert!(arrivals.len() >= 3, "{arrivals:?}");
}
