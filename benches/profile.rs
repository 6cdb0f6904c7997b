//! One contender in a loop, for a profiler: `PROFILE_CASE=<contender> PROFILE_CALLS=<n>`.
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

use common::micro::ok;

fn main() {
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
            };
        }
        for_each_contender!(run);
    });
    assert!(found, "PROFILE_CASE={case}: no such contender");
    println!("{case}: {calls} calls");
}
