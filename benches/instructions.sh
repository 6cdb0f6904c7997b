#!/usr/bin/env bash
# Instructions per call of the per-call contenders, counted by valgrind's callgrind: the same
# count for the same binary however busy the machine is, so two versions of the runtime compare
# even on a shared machine.
#
#   benches/instructions.sh [CASE...]   (default: the rungs BENCHMARKS.md's first table reads)
#
# CASE is a contender of benches/profile.rs (`timeout_bare`, `resilient_timeout`, …; prefixed
# `flaky_`, its calls fail once first; `resilient_open`: refused by an open breaker). Each case
# runs twice, with 10,000 and with 20,000 calls; the difference of the two totals divided by
# 10,000 is what one call costs, setup and teardown cancelled out.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install -y valgrind)" >&2; exit 1; }

if [[ $# -eq 0 ]]; then
    set -- timeout_bare resilient_timeout resilient_breaker \
        flaky_hand_loop_timeout flaky_resilient_retry resilient_open
fi

bin=$(CARGO_PROFILE_BENCH_DEBUG=line-tables-only cargo bench -q -p resilience-benches --bench profile \
    --no-run --message-format=json 2>/dev/null |
    sed -nE 's/.*"executable":"([^"]*profile-[^"]*)".*/\1/p' | tail -n 1)
[[ -x $bin ]] || { echo "could not build benches/profile.rs" >&2; exit 1; }

count() { # $1 = case, $2 = calls: the instructions of the whole run
    PROFILE_CASE=$1 PROFILE_CALLS=$2 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" 2>&1 |
        sed -nE 's/.*Collected : ([0-9]+).*/\1/p'
}

echo "| case | instructions per call |"
echo "|---|---|"
for case in "$@"; do
    a=$(count "$case" 10000)
    b=$(count "$case" 20000)
    echo "| \`$case\` | $(((b - a) / 10000)) |"
done
