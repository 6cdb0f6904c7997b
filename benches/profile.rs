//! One contender in a loop, for a profiler: `PROFILE_CASE=<contender> PROFILE_CALLS=<n>`
//! (`PROFILE_CASE=flaky_<contender>`: its calls fail once first; `PROFILE_THREADS=<n>`: on n
//! threads at once, each calling the same functions).
//!
//! ```sh
//! cargo bench -p resilience-benches --bench profile --no-run
//! PROFILE_CASE=resilient_breaker valgrind --tool=callgrind target/release/deps/profile-<hash>
//! ```
//!
//! Instruction counts (callgrind) do not depend on what else the machine is doing, so two
//! contenders profiled this way compare even on a busy machine: the difference of two runs'
//! totals divided by the calls is the difference per call.

#[macro_use]
mod common;

use common::micro::{BenchError, flaky, ok};
use resilience_runtime::resilient;

/// `PROFILE_CASE=resilient_open`: a call its open breaker refuses (as in `faults.rs`: it fails
/// until the breaker opens, then every call is refused).
#[resilient(
    method = GET, timeout = "10s", deadline = "30s", max_attempts = 3,
    backoff(kind = constant, initial = "0ms", max = "0ms", jitter = none),
    breaker = { failure_rate = 0.5, min_calls = 5, window = 5, open_for = "1h", half_open_calls = 1 },
)]
async fn resilient_open() -> Result<u64, BenchError> {
    Err(BenchError::Transient)
}

fn main() {
    // `PROFILE_RECORDER=1` (built with `--features recorder`): a Prometheus recorder installed,
    // as a service that exports its metrics has one.
    #[cfg(feature = "recorder")]
    if std::env::var_os("PROFILE_RECORDER").is_some() {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("a recorder");
        // As a service does after installing its recorder (the runtime finds it there).
        resilience_runtime::telemetry::describe_metrics();
    }
    // `PROFILE_SUBSCRIBER=1` (built with `--features subscriber`): a `tracing` subscriber at
    // INFO, as a service that logs has one, writing to a sink.
    #[cfg(feature = "subscriber")]
    if std::env::var_os("PROFILE_SUBSCRIBER").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_writer(std::io::sink)
            .init();
    }
    // `PROFILE_THREADS=n`: the case runs on n threads at once, each with a runtime of its own,
    // all calling the same functions (so sharing their breakers, budgets and counters).
    let threads = common::env_usize("PROFILE_THREADS", 1);
    if threads <= 1 {
        // On the main thread, as the instruction counts of BENCHMARKS.md were taken.
        return run_case();
    }
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(run_case);
        }
    });
}

fn run_case() {
    let case = std::env::var("PROFILE_CASE").unwrap_or_else(|_| "resilient_breaker".to_owned());
    let calls = common::env_usize("PROFILE_CALLS", 100_000);
    let rt = common::runtime();
    let mut found = false;
    rt.block_on(async {
        macro_rules! run {
            ($name:literal, $f:ident, $cases:ident) => {
                if case == $name {
                    found = true;
                    for _ in 0..calls {
                        assert!(ok::$f().await.is_ok(), "{}: call failed", $name);
                    }
                }
                // `flaky_<contender>`: every call fails once, then succeeds (its retry rungs).
                if case.strip_prefix("flaky_") == Some($name) {
                    found = true;
                    for _ in 0..calls {
                        let _ = flaky::$f().await;
                    }
                }
            };
        }
        for_each_contender!(run);
        if case == "resilient_open" {
            found = true;
            for _ in 0..10 {
                let _ = resilient_open().await;
            }
            for _ in 0..calls {
                let r = resilient_open().await;
                assert!(
                    matches!(&r, Err(BenchError::Runtime(e)) if e.kind() == resilience_runtime::ErrorKind::CircuitOpen),
                    "the breaker should be open: {r:?}"
                );
            }
        }
    });
    assert!(found, "PROFILE_CASE={case}: no such contender");
    println!("{case}: {calls} calls");
}
