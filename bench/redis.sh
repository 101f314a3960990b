#!/usr/bin/env bash
# Redis store benchmark, in one run: throughput of the memory store beside the redis store
# (strict and sync), Redis calls per request counted by Redis itself (INFO commandstats)
# over the requests sluice answered (its sluice_requests_total),
# and the latency of a run during which Redis is killed (strict, on_error: allow).
#
#   cargo build --release && bench/redis.sh
#
# wrk -t1 -c64 on CPU 0; the upstream (nginx `return 200`), sluice and redis-server share
# CPU 1. Env: DURATION (10s), CONNS (64), OUT (results dir), SLUICE (target/release/sluice),
# RUNS ("memory strict sync sync-10k strict-killed").
# Ports: upstream 18180, sluice 18184, admin 19190, redis 16390.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}; CONNS=${CONNS:-64}
OUT=${OUT:-$(mktemp -d -t bench-redis.XXXX)}; mkdir -p "$OUT"
SLUICE=${SLUICE:-target/release/sluice}
LOAD_CPU=${LOAD_CPU:-0}; SERVER_CPU=${SERVER_CPU:-1}
for t in nginx redis-server redis-cli wrk taskset; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install -y nginx redis-server wrk)"; exit 1; }
done
[ -x "$SLUICE" ] || { echo "build first: cargo build --release"; exit 1; }

pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
start() { # name cmd... ; sets PID
  local name=$1; shift
  taskset -c "$SERVER_CPU" "$@" >"$OUT/$name.log" 2>&1 & PID=$!; pids+=($PID)
}

cat > "$OUT/nginx.conf" <<NG
worker_processes 1; daemon off; pid $OUT/nginx.pid; error_log $OUT/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18180 backlog=4096; location / { return 200 "ok"; } }
}
NG
start upstream nginx -c "$OUT/nginx.conf"; wait_port 18180
start redis redis-server --port 16390 --bind 127.0.0.1 --save "" --appendonly no; REDIS=$PID
wait_port 16390

# Calls of one command since Redis started, from its own INFO commandstats.
calls() { redis-cli -p 16390 INFO commandstats | tr -d '\r' | sed -n "s/^cmdstat_$1:calls=\([0-9]*\),.*/\1/p" | grep . || echo 0; }
# One wrk field: requests, req/s, p50, p99, non-2xx.
field() {
  case $2 in
    requests) sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$1" ;;
    rps) sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p' "$1" ;;
    p50) sed -n 's/^ *50% *\([0-9.a-z]*\)/\1/p' "$1" ;;
    p99) sed -n 's/^ *99% *\([0-9.a-z]*\)/\1/p' "$1" ;;
    max) awk '/^ *Latency/ {print $4}' "$1" ;;
    non2xx) sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]*\)/\1/p' "$1" | grep . || echo 0 ;;
  esac
}

# Requests sluice answered (wrk's count leaves out those in flight when it stops).
handled() { curl -s http://127.0.0.1:19190/metrics | awk '/^sluice_requests_total/ { n += $2 } END { printf "%d", n }'; }

printf '%-14s %10s %9s %9s %9s %8s %10s %12s %10s\n' run req/s p50 p99 max non-2xx requests redis-calls calls/req
run() { # name config [kill-after-seconds] [wrk args...]
  local name=$1 config=$2 kill_after=${3:-}; shift 3 || shift $#
  start "sluice-$name" "$SLUICE" run -c "$config"; local sluice=$PID
  wait_port 18184; sleep 1.5 # the heartbeat has run
  # Script calls = EVALSHA minus heartbeats (the heartbeat script is the one that ZADDs).
  local e0 z0 e1 z1; e0=$(calls evalsha); z0=$(calls zadd)
  if [ -n "$kill_after" ]; then (sleep "$kill_after"; kill -9 "$REDIS") & fi
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "X-API-Key: bench" "$@" \
    http://127.0.0.1:18184/ >"$OUT/wrk-$name.txt"
  local f="$OUT/wrk-$name.txt" script
  if [ -n "$kill_after" ]; then
    script="killed"
    curl -s http://127.0.0.1:19190/metrics | grep -E '^sluice_store_(breaker_open|fail_open_total|errors_total)' >"$OUT/metrics-$name.txt" || true
  elif [ "$name" = memory ]; then script=0
  else
    e1=$(calls evalsha); z1=$(calls zadd); script=$(( (e1 - e0) - (z1 - z0) ))
  fi
  local requests; requests=$(handled)
  curl -s http://127.0.0.1:19190/metrics | grep -E '^sluice_store_(leased_decisions_total|duration_seconds_count)' >"$OUT/store-$name.txt" || true
  local ratio=-; [ "$script" != killed ] && ratio=$(awk -v c="$script" -v r="$requests" 'BEGIN { printf "%.4f", c / r }')
  printf '%-14s %10s %9s %9s %9s %8s %10s %12s %10s\n' "$name" "$(field "$f" rps)" "$(field "$f" p50)" \
    "$(field "$f" p99)" "$(field "$f" max)" "$(field "$f" non2xx)" "$requests" "$script" "$ratio"
  kill "$sluice"; wait "$sluice" 2>/dev/null || true
}

RUNS=${RUNS:-"memory strict sync sync-10k strict-killed"}
for r in $RUNS; do
  case $r in
    memory) run memory bench/redis-memory.yaml ;;
    strict) run strict bench/redis-strict.yaml ;;
    sync) run sync bench/redis-sync.yaml ;;
    sync-10k) run sync-10k bench/redis-sync.yaml "" -s bench/redis-pace.lua ;;
    strict-killed) run strict-killed bench/redis-strict.yaml 3
      echo "redis killed 3 s into strict-killed; its metrics after the run:"
      cat "$OUT/metrics-strict-killed.txt" ;;
  esac
done
echo "results in $OUT"
