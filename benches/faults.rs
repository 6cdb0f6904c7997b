//! Fault scenarios: what a total outage costs the downstream, and what a call costs while a
//! breaker is open.
//!
//! `taskset -c 1 cargo bench --bench faults` (one CPU for client and server: see BENCHMARKS.md).
//! 1. Outage: the loopback server answers every request with `503` + `Retry-After: 0`;
//!    `FAULT_CALLS` calls (default 1000) one after the other per contender, from a fresh
//!    process (fresh budgets); prints the requests the server saw per call.
//! 2. Open breaker: `OPEN_CALLS` calls (default 200000) refused by an open breaker, per
//!    contender, interleaved over `OPEN_ROUNDS` rounds (default 5), against two baselines
//!    measured in the same rounds: a successful `tokio::time::timeout(bare)` call and a
//!    successful GET on loopback (what the open breaker spares the downstream).

mod common;

use std::hint::black_box;
use std::time::Instant;

use backon::Retryable as _;
use common::http::{Clients, Contender};
use common::median;
use common::micro::{self, BACKON, BenchError};
use common::server::Server;
use failsafe::futures::CircuitBreaker as _;
use resilience_runtime::{ErrorKind, resilient};

const OUTAGE: [Contender; 7] = [
    Contender::Bare,
    Contender::Resilient,
    Contender::ResilientNoBudget,
    Contender::Middleware,
    Contender::Backon,
    Contender::TokioRetry2,
    Contender::TowerBudget,
];

#[resilient(
    method = GET, timeout = "10s", deadline = "30s", max_attempts = 3,
    backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none),
    breaker = { failure_rate = 0.5, min_calls = 5, window = 5, open_for = "1h", half_open_calls = 1 },
)]
async fn resilient_open() -> Result<u64, BenchError> {
    Err(BenchError::Transient)
}

/// Nanoseconds per call of `f` over `n` calls.
async fn ns_per_call<F, Fut, T>(n: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let t = Instant::now();
    for _ in 0..n {
        black_box(f().await);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let calls = common::env_usize("FAULT_CALLS", 1_000);
    let open_calls = common::env_usize("OPEN_CALLS", 200_000);
    let rounds = common::env_usize("OPEN_ROUNDS", 5);
    let server = Server::start();
    let rt = common::runtime();
    let clients = Clients::new(server.url("/"));

    println!(
        "### Total outage: every response a 503 with `Retry-After: 0`, {calls} calls in a row\n"
    );
    println!("| contender | requests/call | × no retry | calls/s |");
    println!("|---|---|---|---|");
    rt.block_on(async {
        // Connections first, so that the figures are requests, not connection set-ups.
        server.reset(0);
        for _ in 0..16 {
            clients.call(Contender::Bare).await;
        }
        let mut base = None;
        for which in OUTAGE {
            server.reset(1);
            let t = Instant::now();
            for _ in 0..calls {
                assert!(
                    !clients.call(which).await,
                    "a call succeeded during the outage"
                );
            }
            let per_sec = calls as f64 / t.elapsed().as_secs_f64();
            let rpc = server.served() as f64 / calls as f64;
            let base = *base.get_or_insert(rpc);
            println!(
                "| {} | {rpc:.3} | {:.2}× | {per_sec:.0} |",
                which.label(),
                rpc / base
            );
        }
    });

    println!(
        "\n### A call while the breaker is open: {open_calls} calls per contender per round, {rounds} rounds\n"
    );
    let http_calls = (open_calls / 100).max(100);
    rt.block_on(async {
        server.reset(0);
        for _ in 0..10 {
            let _ = resilient_open().await;
        }
        match resilient_open().await {
            Err(BenchError::Runtime(e)) if e.kind() == ErrorKind::CircuitOpen => {}
            other => panic!("the breaker should be open: {other:?}"),
        }
        let fs = micro::new_failsafe();
        for _ in 0..10 {
            let _ = fs.call(async { Err::<u64, _>(BenchError::Transient) }).await;
        }
        assert!(matches!(
            fs.call(async { Ok::<u64, BenchError>(1) }).await,
            Err(failsafe::Error::Rejected)
        ));
        let stack = micro::new_failsafe();
        for _ in 0..10 {
            let _ = stack.call(async { Err::<u64, _>(BenchError::Transient) }).await;
        }
        let backon_failsafe = || {
            (|| async {
                stack
                    .call(micro::ok::timeout_bare())
                    .await
                    .map_err(micro::from_failsafe)
            })
            .retry(BACKON)
            .when(BenchError::is_transient)
        };
        assert!(matches!(backon_failsafe().await, Err(BenchError::Rejected)));

        let names = [
            "`tokio::time::timeout(bare)`, succeeding (baseline)",
            "bare reqwest GET on loopback, 200 OK",
            "`#[resilient]` breaker open",
            "failsafe 1.3 breaker open",
            "backon + failsafe + `timeout`, breaker open",
        ];
        let mut ns: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for round in 0..rounds {
            for k in 0..names.len() {
                let i = (k + round) % names.len();
                let t = match i {
                    0 => ns_per_call(open_calls, micro::ok::timeout_bare).await,
                    1 => ns_per_call(http_calls, || clients.call(Contender::Bare)).await,
                    2 => ns_per_call(open_calls, resilient_open).await,
                    3 => {
                        ns_per_call(open_calls, || {
                            fs.call(async { Ok::<u64, BenchError>(1) })
                        })
                        .await
                    }
                    _ => ns_per_call(open_calls, backon_failsafe).await,
                };
                ns[i].push(t);
            }
        }
        let base = median(&mut ns[0].clone());
        let rtt = median(&mut ns[1].clone());
        println!("| contender | ns/call (median of rounds) | × `timeout(bare)` | share of a loopback GET |");
        println!("|---|---|---|---|");
        for (i, name) in names.iter().enumerate() {
            let m = median(&mut ns[i]);
            println!(
                "| {name} | {m:.1} | {:.2}× | {:.3}% |",
                m / base,
                100.0 * m / rtt
            );
        }
    });
}
