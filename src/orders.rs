//! An order service behind the idempotency layer, for the exactly-once tests and the tour.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

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
    order_service_with(store, runs, Arc::default()).await
}

/// [`order_service`] whose handler counts the order, then works for `work_ms` milliseconds (read
/// when it starts) before answering: a slow payment gateway.
pub async fn order_service_with(
    store: Option<Arc<dyn IdempotencyStore>>,
    runs: Arc<AtomicUsize>,
    work_ms: Arc<AtomicU64>,
) -> SocketAddr {
    #[derive(Clone)]
    struct Shared {
        runs: Arc<AtomicUsize>,
        work_ms: Arc<AtomicU64>,
    }
    async fn create(State(s): State<Shared>, body: String) -> (StatusCode, String) {
        let n = s.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let work = s.work_ms.load(Ordering::SeqCst);
        if work > 0 {
            tokio::time::sleep(Duration::from_millis(work)).await;
        }
        (StatusCode::CREATED, format!("order #{n} for {body}"))
    }
    let router = Router::new().route("/orders", axum::routing::post(create));
    let router = match store {
        Some(store) => router.layer(IdempotencyLayer::new(store)),
        None => router,
    };
    let app = router.with_state(Shared { runs, work_ms });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
