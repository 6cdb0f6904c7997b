//! A service that calls a flaky downstream through `#[resilient]` and exposes its metrics in
//! Prometheus text format at `/metrics`.
//!
//! ```sh
//! cargo run --example metrics_service --features metrics            # serves until Ctrl-C
//! cargo run --example metrics_service --features metrics -- --once  # prints /metrics, exits
//! ```
//!
//! It installs `metrics-exporter-prometheus` as the process's recorder (recommended naming:
//! units and `_total` in the names; the semantic conventions' buckets for the durations),
//! starts a downstream on 127.0.0.1 that fails now and then (a 503, a reset, a stall), and
//! serves `GET /work` (one call downstream) and `GET /metrics`. With `--once` it makes a few
//! calls, fetches its own `/metrics` over loopback and prints it: CI checks that text with
//! `promtool check metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use resilience_fault_server::{Action, FaultServer, Script};
use resilience_runtime::{ClientSettings, Error, resilient, telemetry};

#[resilient(
    timeout = "300ms",
    deadline = "2s",
    backoff(initial = "10ms", max = "50ms"),
    breaker = { name = "inventory", failure_rate = 0.5, min_calls = 10, window = 20, open_for = "5s", half_open_calls = 2 },
    bulkhead = { name = "inventory", max_concurrent = 16 },
)]
async fn stock(c: &reqwest::Client, base: &str) -> Result<String, Error> {
    Ok(c.get(format!("{base}/stock"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

#[derive(Clone)]
struct App {
    client: reqwest::Client,
    downstream: String,
    metrics: PrometheusHandle,
}

/// The call's failure is this service's 502 (a gateway's failure, told as one), not a 200
/// whose body says "failed": callers, their retries and status dashboards read the status.
async fn work(State(app): State<App>) -> (axum::http::StatusCode, String) {
    match stock(&app.client, &app.downstream).await {
        Ok(body) => (axum::http::StatusCode::OK, body),
        Err(e) => {
            tracing::warn!(error = %e, "stock failed");
            (
                axum::http::StatusCode::BAD_GATEWAY,
                "the inventory service failed\n".to_owned(),
            )
        }
    }
}

async fn metrics(State(app): State<App>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

/// Every fifth request fails: a 503, a reset, a stall past the attempt timeout, in turn.
fn flaky() -> Script {
    let n = Arc::new(AtomicU32::new(0));
    Script::dynamic(move |_| match n.fetch_add(1, Ordering::Relaxed) % 15 {
        4 => Action::status(503),
        9 => Action::reset(),
        14 => Action::stall(),
        _ => Action::ok(),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let handle = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(&telemetry::HTTP_DURATION_BUCKETS)?
        .install_recorder()?;
    telemetry::describe_metrics();

    let downstream = FaultServer::start(flaky()).await;
    let app = App {
        // The client the README advises: idle pooled connections closed after a second (before
        // a server's keep-alive drops them under a request), a connect
        // timeout shorter than `stock`'s 300 ms attempt timeout (the default's 3 s is not),
        // and what it completes reported to the attempt that sent it.
        client: ClientSettings {
            connect_timeout: Duration::from_millis(100),
            ..ClientSettings::DEFAULT
        }
        .build()?,
        downstream: downstream.url(""),
        metrics: handle,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let router = axum::Router::new()
        .route("/work", get(work))
        .route("/metrics", get(metrics))
        .with_state(app);
    tokio::spawn(async move { axum::serve(listener, router).await });

    let client = reqwest::Client::new();
    if once {
        for _ in 0..30 {
            client.get(format!("http://{addr}/work")).send().await?;
        }
        let text = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        print!("{text}");
        return Ok(());
    }
    eprintln!("serving on http://{addr}");
    eprintln!("  GET http://{addr}/work      one call downstream (flaky: 1 in 5 fails once)");
    eprintln!("  GET http://{addr}/metrics   Prometheus text: resilience_client_calls_total, ...");
    eprintln!("for example: curl -s http://{addr}/metrics | grep ^resilience_client_calls_total");
    loop {
        // Some traffic of its own, so that /metrics has something to show.
        let _ = client.get(format!("http://{addr}/work")).send().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
