//! What `MemoryStore` holds is what it counts: a handler's body and header values may be
//! slices of a larger buffer (a downstream answer read by hyper keeps its whole read buffer
//! alive in each slice); the store keeps copies of its own, so its bound on bytes is a bound on
//! memory. Alone in its test binary: it counts the process's live heap bytes.

#![cfg(feature = "server")]

use std::sync::Arc;

use axum::routing;
use bytes::Bytes;
use resilience_fault_server::counting::{Counting, live_bytes};
use resilience_runtime::server::{IdempotencyLayer, MemoryStore};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A 16-byte answer and a header value, both slices of a buffer of 1 MiB, as a handler that
/// forwards a downstream answer hands them back.
async fn forwarded() -> axum::response::Response {
    let read_buffer = Bytes::from(vec![b'7'; 1 << 20]);
    let etag = axum::http::HeaderValue::from_maybe_shared(read_buffer.slice(..8)).unwrap();
    axum::response::Response::builder()
        .status(201)
        .header("etag", etag)
        .body(axum::body::Body::from(read_buffer.slice(..16)))
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_kept_response_holds_its_own_bytes_not_the_buffer_it_was_cut_from() {
    let memory = Arc::new(MemoryStore::with_limits(1_000, 64 * 1024));
    let app = axum::Router::new()
        .route("/charges", routing::post(forwarded))
        .layer(IdempotencyLayer::new(memory.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/charges", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = reqwest::Client::new();
    // One first, so that what the client, the server and the store keep for good is made
    // before counting.
    let send = |key: String| {
        let c = c.clone();
        let url = url.clone();
        async move {
            let r = c
                .post(&url)
                .header("idempotency-key", key)
                .body("9.99")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            assert_eq!(r.text().await.unwrap(), "7".repeat(16));
        }
    };
    send(uuid::Uuid::new_v4().to_string()).await;
    let before = live_bytes();
    for _ in 0..20 {
        send(uuid::Uuid::new_v4().to_string()).await;
    }
    let held = live_bytes() - before;
    assert!(memory.bytes() <= 64 * 1024, "{}", memory.bytes());
    // Twenty answers of 16 bytes, their headers and keys: a few KiB. Kept as slices, each
    // held its 1 MiB buffer: 20 MiB.
    assert!(held < 1 << 20, "20 kept answers hold {held} bytes");
}
