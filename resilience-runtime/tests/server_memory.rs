//! The idempotency layer over the in-memory store, through real sockets.

#![cfg(feature = "server")]

mod server_support;

use std::sync::Arc;
use std::time::Duration;

use resilience_runtime::server::{
    BoxFuture, Claim, IdempotencyLayer, IdempotencyStore, InFlight, MemoryStore, Record,
    StoreError, StoredResponse,
};
use server_support::{Store, count, fresh_key, post, serve};

fn store() -> Store {
    Arc::new(MemoryStore::default())
}

/// The store of one rule's test.
async fn store_for(_test: &str) -> Option<Store> {
    Some(store())
}

server_support::every_rule!(store_for);

/// A store that is down.
struct Down;

fn down<T: Send + 'static>() -> BoxFuture<'static, Result<T, StoreError>> {
    Box::pin(std::future::ready(Err(StoreError::new(
        "connection refused",
    ))))
}

impl IdempotencyStore for Down {
    fn claim<'a>(
        &'a self,
        _: &'a str,
        _: &'a InFlight,
        _: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        down()
    }
    fn renew<'a>(
        &'a self,
        _: &'a str,
        _: &'a InFlight,
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        down()
    }
    fn complete<'a>(
        &'a self,
        _: &'a str,
        _: &'a InFlight,
        _: &'a StoredResponse,
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        down()
    }
    fn release<'a>(
        &'a self,
        _: &'a str,
        _: &'a InFlight,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        down()
    }
    fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        down()
    }
}

#[tokio::test]
async fn a_store_that_is_down_refuses_keyed_requests_with_503() {
    let store: Store = Arc::new(Down);
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let refused = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(count(&app.runs.orders), 0, "never run without a claim");
    // Requests without a key do not need the store.
    assert_eq!(post(&app.url("/orders"), None, "x").await.status, 201);
}

#[tokio::test]
async fn a_full_memory_store_keeps_running_claims_and_refuses_new_ones() {
    let store: Store = Arc::new(MemoryStore::new(1));
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let running = tokio::spawn({
        let url = app.url("/gated");
        async move { post(&url, Some(&fresh_key()), "x").await }
    });
    server_support::wait_until(|| count(&app.runs.gated) == 1).await;
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        503
    );
    app.gate.add_permits(1);
    assert_eq!(running.await.unwrap().status, 201);
    // Completed responses make room for new keys: the oldest goes.
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        201
    );
}

/// A store that never answers a claim, like a frozen Redis; counts the claims it was asked.
#[derive(Default)]
struct Hanging {
    claims: std::sync::atomic::AtomicUsize,
}

impl IdempotencyStore for Hanging {
    fn claim<'a>(
        &'a self,
        _: &'a str,
        _: &'a InFlight,
        _: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        self.claims
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
    fn renew<'a>(
        &'a self,
        _: &'a str,
        _: &'a InFlight,
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::pending())
    }
    fn complete<'a>(
        &'a self,
        _: &'a str,
        _: &'a InFlight,
        _: &'a StoredResponse,
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::pending())
    }
    fn release<'a>(
        &'a self,
        _: &'a str,
        _: &'a InFlight,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::pending())
    }
    fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_store_that_hangs_is_answered_within_the_store_timeout_then_at_once() {
    let hanging = Arc::new(Hanging::default());
    let store: Store = hanging.clone();
    let layer = IdempotencyLayer::new(store.clone())
        .store_timeout(Duration::from_millis(100))
        .store_down_for(Duration::from_millis(400));
    let app = serve(&store, layer).await;
    let claims = || hanging.claims.load(std::sync::atomic::Ordering::SeqCst);

    let started = tokio::time::Instant::now();
    let first = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    assert_eq!(first.status, 503, "{first:?}");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "bounded by the store timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(claims(), 1);
    // Known to be down: answered without asking the store.
    let second = post(&app.url("/orders"), Some(&fresh_key()), "x").await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("retry-after"), Some("1"));
    assert_eq!(claims(), 1, "not asked while known to be down");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        post(&app.url("/orders"), Some(&fresh_key()), "x")
            .await
            .status,
        503
    );
    assert_eq!(claims(), 2, "asked again once the down time passed");
    assert_eq!(count(&app.runs.orders), 0);
}

/// A memory store that can be switched off, like a Redis lost and back.
#[derive(Default)]
struct Switch {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
}

impl Switch {
    fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl IdempotencyStore for Switch {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        if self.is_down() {
            return down();
        }
        self.inner.claim(key, claim, lease)
    }
    fn renew<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        if self.is_down() {
            return down();
        }
        self.inner.renew(key, claim, lease)
    }
    fn complete<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        if self.is_down() {
            return down();
        }
        self.inner.complete(key, claim, response, ttl)
    }
    fn release<'a>(
        &'a self,
        key: &'a str,
        claim: &'a InFlight,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        if self.is_down() {
            return down();
        }
        self.inner.release(key, claim)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        if self.is_down() {
            return down();
        }
        self.inner.get(key)
    }
}

#[tokio::test]
async fn a_store_lost_while_the_handler_runs_keeps_the_result_and_writes_it_when_back() {
    let switch = Arc::new(Switch::default());
    let store: Store = switch.clone();
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let key = fresh_key();
    let url = app.url("/gated");
    let first = tokio::spawn({
        let (url, key) = (url.clone(), key.clone());
        async move { post(&url, Some(&key), "x").await }
    });
    server_support::wait_until(|| count(&app.runs.gated) == 1).await;
    switch.down.store(true, std::sync::atomic::Ordering::SeqCst);
    app.gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (201, "gated 1"));

    // The store is still down: this instance answers the repeat from the result it kept.
    let kept = post(&url, Some(&key), "x").await;
    assert_eq!(
        (kept.status, kept.replayed(), kept.body.as_str()),
        (201, true, "gated 1")
    );
    assert_eq!(post(&url, Some(&key), "y").await.status, 422);

    // Back: the result is written, and the store itself replays it.
    switch
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let store_key =
        resilience_runtime::server::record_key(&reqwest::Method::POST, "/gated", &key, None);
    for _ in 0..200 {
        if matches!(
            switch.inner.get(&store_key).await,
            Ok(Some(Record::Completed(_)))
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Ok(Some(Record::Completed(stored))) = switch.inner.get(&store_key).await else {
        panic!("the response was not written once the store came back");
    };
    assert_eq!(stored.body, "gated 1");
    let later = post(&url, Some(&key), "x").await;
    assert_eq!(
        (later.status, later.replayed(), later.body.as_str()),
        (201, true, "gated 1")
    );
    assert_eq!(count(&app.runs.gated), 1, "never run twice");
}

#[tokio::test]
async fn stored_response_bytes_stay_under_the_memory_stores_bound() {
    // Regression: 16 keyed responses of 16 MiB kept 310 MiB for the 24 h TTL. Scaled down:
    // a 64 KiB store, responses of 20 KiB each.
    let memory = Arc::new(MemoryStore::with_limits(100, 64 * 1024));
    let store: Store = memory.clone();
    let app = serve(&store, IdempotencyLayer::new(store.clone())).await;
    let body = "x".repeat(20 * 1024);
    let keys: Vec<String> = (0..8).map(|_| fresh_key()).collect();
    for key in &keys {
        assert_eq!(
            post(&app.url("/orders"), Some(key), &body).await.status,
            201
        );
        assert!(memory.bytes() <= 64 * 1024, "{} bytes", memory.bytes());
    }
    assert!(
        memory.bytes() > 40 * 1024,
        "the newest are kept: {}",
        memory.bytes()
    );
    // The newest response is replayed; the oldest went to make room.
    assert!(
        post(&app.url("/orders"), Some(&keys[7]), &body)
            .await
            .replayed()
    );
    let oldest = post(&app.url("/orders"), Some(&keys[0]), &body).await;
    assert!(
        !oldest.replayed(),
        "evicted, so run again: {}",
        oldest.status
    );
}

#[tokio::test]
async fn problem_docs_type_and_link_the_applications_page() {
    let store = store();
    let layer = IdempotencyLayer::new(store.clone())
        .problem_docs("https://docs.example/idempotency")
        .unwrap();
    let app = serve(&store, layer).await;
    let key = fresh_key();
    assert_eq!(post(&app.url("/orders"), Some(&key), "a").await.status, 201);
    let reused = post(&app.url("/orders"), Some(&key), "b").await;
    assert_eq!(reused.status, 422);
    assert_eq!(
        reused.header("link"),
        Some(r#"<https://docs.example/idempotency>; rel="describedby""#)
    );
    assert!(
        reused
            .body
            .contains(r#""type":"https://docs.example/idempotency#key-reused""#),
        "{}",
        reused.body
    );
    let malformed = post(&app.url("/orders"), Some("\"unclosed"), "a").await;
    assert_eq!(malformed.status, 400);
    assert!(
        malformed.body.contains("#key-invalid"),
        "{}",
        malformed.body
    );
}
