#!/usr/bin/env bash
# Starts a throwaway Redis Cluster of three masters on 127.0.0.1 for the `redis` feature's cluster
# tests and prints their URLs, comma-separated, on its last line.
#
#   eval "export RESILIENCE_REDIS_CLUSTER_URLS=$(.ci/cluster.sh | tail -n 1)"
#
# Ports 7101-7103 by default (RESILIENCE_REDIS_CLUSTER_PORTS="7101 7102 7103" to change them).
# Installs redis-server with apt-get when it is missing. No persistence: nothing is written to
# disk but each node's cluster configuration file, in a temporary directory. Idempotent: if the
# nodes already answer and `cluster info` says `cluster_state:ok`, the cluster is reused.
set -euo pipefail

read -r -a ports <<<"${RESILIENCE_REDIS_CLUSTER_PORTS:-7101 7102 7103}"
wait_secs="${RESILIENCE_REDIS_CLUSTER_WAIT:-20}"
dir="${TMPDIR:-/tmp}/resilience-redis-cluster"

log() { echo "cluster.sh: $*" >&2; }

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  log "redis-server or redis-cli not found; installing redis-server"
  $sudo apt-get update >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends redis-server >&2
fi

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null; }
answers() { [ "$(cli "$1" ping)" = "PONG" ]; }
state_ok() { cli "$1" cluster info | tr -d '\r' | grep -qx 'cluster_state:ok'; }
masters() { cli "$1" cluster nodes | grep -c 'master' || true; }

urls() {
  local out="" p
  for p in "${ports[@]}"; do out="${out:+$out,}redis://127.0.0.1:$p/"; done
  echo "$out"
}

all_ok() {
  local p
  for p in "${ports[@]}"; do
    answers "$p" && state_ok "$p" || return 1
  done
  [ "$(masters "${ports[0]}")" -ge "${#ports[@]}" ]
}

if all_ok; then
  log "reusing the cluster already answering on 127.0.0.1:${ports[*]}"
  urls
  exit 0
fi

mkdir -p "$dir"
for p in "${ports[@]}"; do
  if answers "$p"; then
    # A node left by an earlier run that never joined a cluster: start it afresh.
    if [ "$(cli "$p" cluster info | tr -d '\r' | grep -c '^cluster_known_nodes:1$' || true)" = 1 ] \
      && [ "$(cli "$p" dbsize)" = 0 ]; then
      continue
    fi
    log "127.0.0.1:$p answers but is not a healthy member of this cluster; stopping it"
    cli "$p" shutdown nosave >/dev/null || true
    sleep 0.5
  fi
  rm -f "$dir/nodes-$p.conf"
  redis-server --bind 127.0.0.1 --port "$p" \
    --cluster-enabled yes --cluster-config-file "$dir/nodes-$p.conf" \
    --cluster-node-timeout 5000 \
    --save '' --appendonly no \
    --daemonize yes --dir "$dir" --logfile "$dir/redis-$p.log" \
    --pidfile "$dir/redis-$p.pid" >&2
done

deadline=$((SECONDS + wait_secs))
for p in "${ports[@]}"; do
  until answers "$p"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "redis-server did not answer PING on 127.0.0.1:$p within ${wait_secs}s; see $dir/redis-$p.log"
      exit 1
    fi
    sleep 0.1
  done
done

nodes=()
for p in "${ports[@]}"; do nodes+=("127.0.0.1:$p"); done
if [ "$(masters "${ports[0]}")" -lt "${#ports[@]}" ]; then
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >&2
fi

until all_ok; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "the cluster on 127.0.0.1:${ports[*]} did not reach cluster_state:ok within ${wait_secs}s"
    log "see $dir/redis-*.log"
    exit 1
  fi
  sleep 0.2
done
log "cluster of ${#ports[@]} masters ok on 127.0.0.1:${ports[*]}"
urls
