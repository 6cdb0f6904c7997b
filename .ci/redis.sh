#!/usr/bin/env bash
# Starts a throwaway redis-server on 127.0.0.1 for the `redis` feature's tests and prints its URL.
#
#   eval "export RESILIENCE_REDIS_URL=$(.ci/redis.sh)"
#
# Installs redis-server with apt-get when it is missing. No persistence: nothing is written to disk.
# Idempotent: if something already answers PING on the port, it is reused.
set -euo pipefail

port="${RESILIENCE_REDIS_PORT:-6399}"
wait_secs="${RESILIENCE_REDIS_WAIT:-10}"

log() { echo "redis.sh: $*" >&2; }

if ! command -v redis-server >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  log "redis-server not found; installing it"
  $sudo apt-get update >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends redis-server >&2
fi

ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]
  else
    # Plain RESP over bash's /dev/tcp when redis-cli is not installed.
    local reply=""
    exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 1 reply <&3 || true
    exec 3<&- 3>&-
    [ "${reply%$'\r'}" = "+PONG" ]
  fi
}

if ping; then
  log "reusing the redis-server already answering on 127.0.0.1:$port"
else
  redis-server --bind 127.0.0.1 --port "$port" \
    --save '' --appendonly no \
    --daemonize yes --logfile "${TMPDIR:-/tmp}/resilience-redis-$port.log" \
    --pidfile "${TMPDIR:-/tmp}/resilience-redis-$port.pid" >&2
  deadline=$((SECONDS + wait_secs))
  until ping; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "redis-server did not answer PING on 127.0.0.1:$port within ${wait_secs}s"
      log "see ${TMPDIR:-/tmp}/resilience-redis-$port.log"
      exit 1
    fi
    sleep 0.1
  done
  log "redis-server answering on 127.0.0.1:$port"
fi

echo "redis://127.0.0.1:$port/"
