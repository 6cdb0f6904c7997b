//! Real HTTP on loopback under a deterministic fault schedule: a hyper server on its own thread
//! and runtime answers every 20th response with `503` + `Retry-After: 0` (then, for reference,
//! the same with no fault).
//!
//! `taskset -c 1 cargo bench --bench http` (one CPU for client and server: see BENCHMARKS.md).
//! `HTTP_REQUESTS` calls (default 20000) per contender, per schedule, per concurrency (1 and
//! 16), per round; `HTTP_ROUNDS` rounds (default 5), the contenders interleaved and their order
//! rotated every round. The client is one current-thread runtime
//! on the main thread; concurrency 16 is 16 tasks taking calls from a shared counter. Prints,
//! per concurrency, the median over the rounds of each figure and of its ratio to bare reqwest
//! in the same round.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::http::{Clients, Contender};
use common::median;
use common::server::Server;
use hdrhistogram::Histogram;

const CONTENDERS: [Contender; 6] = [
    Contender::Bare,
    Contender::Resilient,
    Contender::ResilientUnstamped,
    Contender::ResilientFull,
    Contender::Middleware,
    Contender::Backon,
];

/// The schedules: every 20th response a 503; then, for reference, no fault at all.
const SCHEDULES: [u64; 2] = [20, 0];

#[derive(Debug, Clone, Copy)]
struct Run {
    per_sec: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    ok_share: f64,
    requests_per_call: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

async fn run(
    clients: &Arc<Clients>,
    server: &Server,
    which: Contender,
    calls: usize,
    concurrency: usize,
    fail_every: u64,
) -> Run {
    server.reset(fail_every);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (clients, next) = (clients.clone(), next.clone());
        tasks.spawn(async move {
            let mut h = histogram();
            let mut ok = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                let t = Instant::now();
                ok += usize::from(clients.call(which).await);
                h.record(t.elapsed().as_nanos() as u64).expect("in bounds");
            }
            (h, ok)
        });
    }
    let mut h = histogram();
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        let (part, n) = r.expect("a worker panicked");
        h.add(part).expect("same bounds");
        ok += n;
    }
    let elapsed = started.elapsed();
    Run {
        per_sec: calls as f64 / elapsed.as_secs_f64(),
        p50: h.value_at_quantile(0.50) as f64 / 1e3,
        p99: h.value_at_quantile(0.99) as f64 / 1e3,
        p999: h.value_at_quantile(0.999) as f64 / 1e3,
        ok_share: ok as f64 / calls as f64,
        requests_per_call: server.served() as f64 / calls as f64,
    }
}

fn main() {
    let calls = common::env_usize("HTTP_REQUESTS", 20_000);
    let rounds = common::env_usize("HTTP_ROUNDS", 5);
    let concurrencies = [1usize, 16];
    let server = Server::start();
    let rt = common::runtime();
    let clients = Arc::new(Clients::new(server.url("/")));

    let mut results: HashMap<(u64, usize, usize), Vec<Run>> = HashMap::new();
    rt.block_on(async {
        // Warm-up: 16 pooled connections and every code path, for every contender.
        for which in CONTENDERS {
            run(&clients, &server, which, 2_000, 16, SCHEDULES[0]).await;
        }
        for round in 0..rounds {
            for (&every, &conc) in SCHEDULES
                .iter()
                .flat_map(|e| concurrencies.iter().map(move |c| (e, c)))
            {
                for k in 0..CONTENDERS.len() {
                    let i = (k + round) % CONTENDERS.len();
                    let r = run(&clients, &server, CONTENDERS[i], calls, conc, every).await;
                    eprintln!(
                        "round {round} 503 every {every} c={conc} {:<45} {:>9.0}/s p50 {:>7.1}µs p99 {:>7.1}µs p99.9 {:>7.1}µs ok {:.4} req/call {:.4}",
                        CONTENDERS[i].label(),
                        r.per_sec,
                        r.p50,
                        r.p99,
                        r.p999,
                        r.ok_share,
                        r.requests_per_call
                    );
                    results.entry((every, conc, i)).or_default().push(r);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    });

    for (&every, &conc) in SCHEDULES
        .iter()
        .flat_map(|e| concurrencies.iter().map(move |c| (e, c)))
    {
        let schedule = match every {
            0 => "no fault".to_owned(),
            n => format!("every {n}th response a 503"),
        };
        println!(
            "\n### {schedule}, concurrency {conc}: {calls} calls per contender per round, {rounds} rounds\n"
        );
        println!(
            "| contender | calls/s | × bare | p50 µs | × bare | p99 µs | × bare | p99.9 µs | × bare | calls OK | requests/call |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        let base = &results[&(every, conc, 0)];
        for (i, which) in CONTENDERS.iter().enumerate() {
            let runs = &results[&(every, conc, i)];
            let fig = |f: fn(&Run) -> f64| {
                let mut v: Vec<f64> = runs.iter().map(f).collect();
                let mut ratio: Vec<f64> = runs.iter().zip(base).map(|(r, b)| f(r) / f(b)).collect();
                (median(&mut v), median(&mut ratio))
            };
            let (tp, tp_r) = fig(|r| r.per_sec);
            let (p50, p50_r) = fig(|r| r.p50);
            let (p99, p99_r) = fig(|r| r.p99);
            let (p999, p999_r) = fig(|r| r.p999);
            let (ok, _) = fig(|r| r.ok_share);
            let (rpc, _) = fig(|r| r.requests_per_call);
            println!(
                "| {} | {tp:.0} | {tp_r:.3} | {p50:.1} | {p50_r:.3} | {p99:.1} | {p99_r:.3} | {p999:.1} | {p999_r:.3} | {:.2}% | {rpc:.4} |",
                which.label(),
                ok * 100.0
            );
        }
    }
}
