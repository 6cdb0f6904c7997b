//! An order service behind the idempotency layer, for the exactly-once tests and the tour.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use resilience_runtime::server::{IdempotencyLayer, IdempotencyStore};

/// Starts a service on 127.0.0.1 whose `POST /orders` creates an order (counting in `runs`)
/// and answers `201 order #N for BODY`. With a store, the idempotency layer turns a repeated
/// key into a replay; with `None`, every request that arrives creates an order.
pub async fn order_service(
    store: Option<Arc<dyn IdempotencyStore>>,
    runs: Arc<AtomicUsize>,
) -> SocketAddr {
    async fn create(State(runs): State<Arc<AtomicUsize>>, body: String) -> (StatusCode, String) {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        (StatusCode::CREATED, format!("order #{n} for {body}"))
    }
    let router = Router::new().route("/orders", axum::routing::post(create));
    let router = match store {
        Some(store) => router.layer(IdempotencyLayer::new(store)),
        None => router,
    };
    let app = router.with_state(runs);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
