//! Requests per second through the idempotency layer, with criterion: what running the
//! claimed handler detached from the connection (a task per keyed request) costs, against the
//! same layer running it inside the request future, as before, in the same run.
//!
//! `taskset -c 1 cargo bench --bench idempotency` (one CPU for client and server). An axum
//! server on its own thread and current-thread runtime serves `POST /orders` three ways:
//! - `no_layer`: the handler alone;
//! - `attached`: behind `IdempotencyLayer` over `MemoryStore`, the handler run inside the
//!   request future, so that a dropped connection cancels it (the behaviour before);
//! - `detached`: the same layer as shipped: the handler runs in a task of its own.
//!
//! Every request carries a fresh `Idempotency-Key`, so each one goes the whole way: fingerprint,
//! claim, handler, store. The client is one reqwest client on a current-thread runtime, one
//! request at a time over a kept-alive connection. Two rounds (criterion ids `<variant>_r<n>`),
//! the order rotated. Throughput is printed as `elem/s`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use resilience_runtime::server::{IdempotencyLayer, MemoryStore};

async fn create(body: String) -> (StatusCode, String) {
    (StatusCode::CREATED, format!("order for {body}"))
}

/// Starts the server on its own thread; returns its base URL.
fn serve() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let plain = Router::new().route("/no_layer/orders", post(create));
            let attached = Router::new()
                .route("/attached/orders", post(create))
                .layer(IdempotencyLayer::new(MemoryStore::default()).__attached_for_benchmarks());
            let detached = Router::new()
                .route("/detached/orders", post(create))
                .layer(IdempotencyLayer::new(MemoryStore::default()));
            let app = plain.merge(attached).merge(detached);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1");
            tx.send(listener.local_addr().expect("local addr"))
                .expect("send the address");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    format!("http://{}", rx.recv().expect("the server's address"))
}

fn bench(c: &mut Criterion) {
    let base = serve();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let http = reqwest::Client::builder()
        .retry(reqwest::retry::never())
        .build()
        .expect("client");
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let run = std::process::id();

    let mut group = c.benchmark_group("idempotency_layer");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    // Two rounds, the order rotated, so that the machine's noise falls on every variant alike.
    let variants = ["no_layer", "attached", "detached"];
    for round in 0..2 {
        for i in 0..variants.len() {
            let which = variants[(i + round) % variants.len()];
            let url = format!("{base}/{which}/orders");
            group.bench_function(format!("{which}_r{round}"), |b| {
                b.to_async(&rt).iter(|| async {
                    let key = format!("bench-{run}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
                    let res = http
                        .post(&url)
                        .header("idempotency-key", key)
                        .body("2 apples")
                        .send()
                        .await
                        .expect("answered");
                    assert_eq!(res.status(), 201);
                    res.bytes().await.expect("body")
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
