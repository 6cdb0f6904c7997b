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

macro_rules! rules {
    ($($rule:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $rule() {
            server_support::$rule(store()).await;
        }
    )*};
}

rules!(
    replays_the_stored_response_without_running_the_handler,
    a_reused_key_with_another_body_is_422,
    a_key_belongs_to_one_method_and_path,
    a_repeat_while_the_first_runs_is_409,
    a_route_requiring_a_key_refuses_requests_without_one,
    malformed_keys_are_400,
    server_errors_release_the_key,
    client_errors_are_replayed,
    concurrent_requests_run_the_handler_once,
    responses_expire_after_the_ttl,
    a_dropped_request_releases_its_claim,
    a_running_handler_keeps_its_claim_past_the_lease,
    an_abandoned_claim_expires_with_its_lease,
    oversized_bodies_are_413,
    the_store_holds_the_response,
    scoped_keys_never_cross_scopes,
    only_the_configured_methods_are_covered,
);

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
