//! The client's key format: bare by default, or the IETF draft's quoted Structured Field
//! string; the idempotency layer takes both as one key.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use resilience::orders::order_service;
use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::server::MemoryStore;
use resilience_runtime::{Error, KeyFormat, RequestBuilderExt as _, resilient};

#[resilient(timeout = "2s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn order(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    Ok(http
        .post(url)
        .body("1 pear")
        .resilient()
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

// One test: the format is process-wide.
#[tokio::test]
async fn keys_are_bare_by_default_and_quoted_when_set_and_the_layer_takes_both() {
    let runs = Arc::new(AtomicUsize::new(0));
    let up = order_service(Some(Arc::new(MemoryStore::default())), runs.clone()).await;
    // The first attempt reaches the handler and its answer is lost; the retry gets the replay.
    let proxy = FaultServer::start(Script::dynamic(move |seen| {
        if seen.index % 2 == 0 {
            Action::forward_then(up, Action::reset())
        } else {
            Action::forward(up)
        }
    }))
    .await;
    let http = reqwest::Client::new();

    assert_eq!(KeyFormat::current(), KeyFormat::Bare);
    let bare = order(&http, &proxy.url("/orders")).await.unwrap();
    KeyFormat::Quoted.set();
    let quoted = order(&http, &proxy.url("/orders")).await.unwrap();
    // The key an error names is the one sent, quotes included: asking again with it sends
    // the same bytes (a gateway comparing keys as strings sees one key).
    let busy = FaultServer::start(Script::always(Action::status(503))).await;
    let e = order(&http, &busy.url("/orders")).await.unwrap_err();
    assert_eq!(
        e.idempotency_key(),
        busy.requests()[0].idempotency_key(),
        "{e}"
    );
    KeyFormat::Bare.set();
    let e = order(&http, &busy.url("/orders")).await.unwrap_err();
    assert_eq!(
        e.idempotency_key(),
        busy.requests()[2].idempotency_key(),
        "{e}"
    );

    let keys: Vec<String> = proxy
        .requests()
        .iter()
        .map(|s| s.idempotency_key().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0], keys[1]);
    assert_eq!(keys[2], keys[3]);
    assert_eq!(keys[0].len(), 36, "a bare UUID: {}", keys[0]);
    assert!(
        keys[2].len() == 38 && keys[2].starts_with('"') && keys[2].ends_with('"'),
        "a quoted UUID: {}",
        keys[2]
    );
    assert_eq!(bare, "order #1 for 1 pear");
    assert_eq!(quoted, "order #2 for 1 pear");
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one run per call"
    );

    // The format is the call's from its start: set between two attempts of one call, it
    // changes the next call, not the key this one already sent (a gateway comparing keys as
    // strings would take `uuid` and `"uuid"` for two charges).
    let flaky = FaultServer::start(vec![Action::status(503)]).await;
    order_switching_format(&http, &flaky.url("/orders"))
        .await
        .unwrap();
    assert_eq!(
        KeyFormat::current(),
        KeyFormat::Quoted,
        "set by the second run"
    );
    KeyFormat::Bare.set();
    let keys: Vec<String> = flaky
        .requests()
        .iter()
        .map(|s| s.idempotency_key().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "one key, byte for byte");
    assert_eq!(
        keys[0].len(),
        36,
        "bare, as when the call began: {}",
        keys[0]
    );

    // Quoted, a nested call handed the call's own key as the attempt shows it (`"uuid"`)
    // charges under the call's key: the call's failure after it says the key's request may
    // have been carried out (it once did not: the quoted form was taken for another key).
    KeyFormat::Quoted.set();
    let shop = FaultServer::start(Script::dynamic(|seen| {
        if seen.path == "/charges" {
            Action::status(201)
        } else {
            Action::status(503)
        }
    }))
    .await;
    let e = place_under_own_key(&http, &shop.url("/charges"), &shop.url("/track"))
        .await
        .unwrap_err();
    KeyFormat::Bare.set();
    assert!(e.to_string().contains("may have been carried out"), "{e}");
    assert_eq!(shop.count_path("/charges"), 1);
}

#[resilient(method = POST, timeout = "1s", max_attempts = 1, budget = false, idempotency_key = key)]
async fn charge_under(http: &reqwest::Client, url: &str, key: &str) -> Result<u16, Error> {
    Ok(http
        .post(url)
        .body("amount=1")
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

#[resilient(method = POST, timeout = "5s", max_attempts = 1, budget = false, idempotency_key = auto)]
async fn place_under_own_key(
    http: &reqwest::Client,
    charges: &str,
    track: &str,
) -> Result<u16, Error> {
    let key = resilience_runtime::current_attempt()
        .and_then(|a| a.idempotency_key)
        .expect("a keyed attempt");
    let charged = charge_under(http, charges, &key).await?;
    http.get(track).send().await?.error_for_status()?;
    Ok(charged)
}

/// Sets the process's key format to quoted when its body runs the second time.
#[resilient(timeout = "2s", max_attempts = 2, backoff(initial = "1ms", max = "1ms"), budget = false, idempotency_key = auto)]
async fn order_switching_format(http: &reqwest::Client, url: &str) -> Result<String, Error> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    if RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
        KeyFormat::Quoted.set();
    }
    Ok(http
        .post(url)
        .body("1 pear")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The order the caller built, whose own id is the key.
struct Order {
    id: String,
    amount: u32,
}

#[resilient(
    timeout = "1s",
    backoff(initial = "1ms", max = "1ms"),
    budget = false,
    idempotency_key = order.id
)]
async fn place(c: &reqwest::Client, url: &str, order: &Order) -> Result<u16, Error> {
    Ok(c.post(url)
        .body(order.amount.to_string())
        .send()
        .await?
        .error_for_status()?
        .status()
        .as_u16())
}

/// `idempotency_key = order.id`: a field of a parameter is the key, sent as it is on every
/// attempt (a 503, then the answer).
#[tokio::test(start_paused = true)]
async fn a_parameters_field_is_the_key_on_every_attempt() {
    let server = FaultServer::start(vec![Action::status(503)]).await;
    let order = Order {
        id: "order-2026-0042".into(),
        amount: 39000,
    };
    assert_eq!(
        place(&reqwest::Client::new(), &server.url("/orders"), &order)
            .await
            .unwrap(),
        200
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.idempotency_key(), Some("order-2026-0042"));
    }
}
