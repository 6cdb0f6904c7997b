#!/usr/bin/env bash
# Checks the Prometheus exposition of the metrics example with `promtool check metrics`.
# Installs Debian's `prometheus` package (which ships promtool) with apt-get when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "promtool.sh: $*" >&2; }

if ! command -v promtool >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  log "promtool not found; installing Debian's prometheus package"
  $sudo apt-get update >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus >&2
fi

out="${CARGO_TARGET_DIR:-target}/metrics-exposition.txt"
mkdir -p "$(dirname "$out")"
cargo run --quiet --example metrics_service --all-features -- --once >"$out"
for name in resilience_client_calls_total resilience_client_attempts_total \
  http_client_request_duration_seconds_bucket resilience_client_call_duration_seconds_bucket; do
  if ! grep -q "^$name{" "$out"; then
    log "$name missing from the exposition ($out)"
    exit 1
  fi
done
# The example's downstream fails with a 503, a reset and a stall: each must reach the metrics
# as a retry of its class, and the calls it hit as successful after a retry.
for sample in 'resilience_client_retries_total{.*class="status"' \
  'resilience_client_retries_total{.*class="reset"' \
  'resilience_client_retries_total{.*class="timeout"' \
  'resilience_client_calls_total{.*outcome="successful_with_retry"'; do
  if ! grep -Eq "^$sample" "$out"; then
    log "no sample matching $sample in the exposition ($out)"
    exit 1
  fi
done
promtool check metrics <"$out"
log "$(grep -c '^[a-z]' "$out") samples in $out: promtool check metrics passed"
