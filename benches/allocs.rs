//! Heap allocations per call, for every contender, with a counting global allocator.
//!
//! `cargo bench --bench allocs` (`ALLOC_CALLS`, default 10000 calls per contender, after 200
//! warm-up calls). Counts what the measuring thread asks of the allocator between the first
//! and the last measured call; one current-thread runtime runs every contender, so reqwest's
//! connection tasks are counted too, while the loopback server (its own thread) is not.
//! Prints markdown tables.

#[macro_use]
mod common;

use std::hint::black_box;
use std::time::Duration;

use common::http::{Clients, Contender};
use common::micro::{self, BenchError, flaky, ok};
use common::server::Server;
use resilience_fault_server::counting::{Counting, snapshot};

#[global_allocator]
static ALLOC: Counting = Counting;

const WARM_UP: usize = 200;

/// Allocations and bytes per call of `f`, after a warm-up.
async fn per_call<F, Fut, T>(calls: usize, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for _ in 0..WARM_UP {
        black_box(f().await);
    }
    let (a0, b0) = snapshot();
    for _ in 0..calls {
        black_box(f().await);
    }
    let (a1, b1) = snapshot();
    let n = calls as f64;
    ((a1 - a0) as f64 / n, (b1 - b0) as f64 / n)
}

fn fmt(x: f64) -> String {
    if x == 0.0 {
        "0".to_owned()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

#[resilience_runtime::resilient(
    method = GET, timeout = "10s", deadline = "30s", max_attempts = 3,
    backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none),
    breaker = { failure_rate = 0.5, min_calls = 5, window = 5, open_for = "1h", half_open_calls = 1 },
)]
async fn resilient_open() -> Result<u64, BenchError> {
    Err(BenchError::Transient)
}

fn main() {
    let calls = common::env_usize("ALLOC_CALLS", 10_000);
    let rt = common::runtime();

    println!("### Micro contenders ({calls} calls each)\n");
    println!(
        "| contender | no fault: allocs/call | bytes/call | fail once: allocs/call | bytes/call |"
    );
    println!("|---|---|---|---|---|");
    rt.block_on(async {
        macro_rules! row {
            ($name:literal, $f:ident, $cases:ident) => {{
                let (a, b) = per_call(calls, ok::$f).await;
                let (fa, fb) = row!(@flaky $f, $cases);
                println!(
                    "| {} | {} | {} | {fa} | {fb} |",
                    micro::label($name),
                    fmt(a),
                    fmt(b)
                );
            }};
            (@flaky $f:ident, both) => {{
                let (a, b) = per_call(calls, flaky::$f).await;
                (fmt(a), fmt(b))
            }};
            (@flaky $f:ident, no_fault_only) => {
                ("—".to_owned(), "—".to_owned())
            };
        }
        for_each_contender!(row);
    });

    println!("\n### A call refused by an open breaker ({calls} calls each)\n");
    println!("| contender | allocs/call | bytes/call |");
    println!("|---|---|---|");
    rt.block_on(async {
        use failsafe::futures::CircuitBreaker as _;
        for _ in 0..10 {
            let _ = resilient_open().await;
        }
        assert!(matches!(
            resilient_open().await,
            Err(BenchError::Runtime(e)) if e.kind() == resilience_runtime::ErrorKind::CircuitOpen
        ));
        let (a, b) = per_call(calls, resilient_open).await;
        println!("| `#[resilient]` breaker | {} | {} |", fmt(a), fmt(b));
        let fs = micro::new_failsafe();
        for _ in 0..10 {
            let _ = fs
                .call(async { Err::<u64, _>(BenchError::Transient) })
                .await;
        }
        assert!(!failsafe::futures::CircuitBreaker::is_call_permitted(&fs));
        let (a, b) = per_call(calls, || {
            fs.call(async { Err::<u64, _>(BenchError::Transient) })
        })
        .await;
        println!("| failsafe 1.3 breaker | {} | {} |", fmt(a), fmt(b));
    });

    let http_calls = common::env_usize("ALLOC_HTTP_CALLS", 2_000);
    let server = Server::start();
    let clients = Clients::new(server.url("/"));
    println!("\n### One GET on loopback, read to the end ({http_calls} calls each)\n");
    println!(
        "| contender | 200 OK: allocs/call | bytes/call | every 20th a 503: allocs/call | bytes/call |"
    );
    println!("|---|---|---|---|---|");
    let contenders = [
        Contender::Bare,
        Contender::Resilient,
        Contender::ResilientUnstamped,
        Contender::ResilientFull,
        Contender::Middleware,
        Contender::Backon,
        Contender::TokioRetry2,
        Contender::TowerBudget,
    ];
    rt.block_on(async {
        for which in contenders {
            server.reset(0);
            let (a, b) = per_call(http_calls, || clients.call(which)).await;
            server.reset(20);
            let (fa, fb) = per_call(http_calls, || clients.call(which)).await;
            println!(
                "| {} | {} | {} | {} | {} |",
                which.label(),
                fmt(a),
                fmt(b),
                fmt(fa),
                fmt(fb)
            );
        }
        // Let reqwest's connection tasks settle before the runtime goes.
        tokio::time::sleep(Duration::from_millis(10)).await;
    });
}
