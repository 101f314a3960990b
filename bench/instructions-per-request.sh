#!/usr/bin/env bash
# User-space instructions per request of a sluice binary under load, counted by callgrind:
# repeatable where requests per second on this shared 2-core machine are not (the same
# binary and config give the same count within about 1%, whatever else the machine does).
# Counts sluice's own instructions only: the kernel's work for its system calls is not in it.
#
#   bench/instructions-per-request.sh BINARY CONFIG [SECONDS]
#   bench/instructions-per-request.sh target/release/sluice bench/sluice-allow.yaml 8
#
# Needs valgrind, and the upstream the config names listening (for bench/sluice-*.yaml: the
# peer harness's nginx on 127.0.0.1:18080, e.g. `nginx -c` a copy of its upstream.conf).
# sluice runs under callgrind on CPU 1 and listens on 127.0.0.1:18084; its counters are
# zeroed once it serves, wrk (CPU 0, 64 connections, X-API-Key like the harness) loads it for
# SECONDS, and the instructions counted in between are divided by the requests wrk completed.
set -euo pipefail
bin=$1
config=$2
seconds=${3:-8}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" "$bin" run -c "$config" \
  >"$out/sluice.log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/18084) 2>/dev/null && break; sleep 0.2; done
sleep 1
callgrind_control -z "$pid" >/dev/null 2>&1
requests=$(taskset -c 0 wrk -t1 -c64 -d"${seconds}s" -H 'X-API-Key: bench-key-1' \
  http://127.0.0.1:18084/v1/messages | awk '/requests in/{print $1}')
callgrind_control -d "$pid" >/dev/null 2>&1
sleep 0.5
kill "$pid"
wait "$pid" 2>/dev/null || true
instructions=$(grep -h '^summary:' "$out"/cg.*.1 | awk '{print $2}')
echo "$(basename "$config"): $requests requests, $instructions instructions," \
  "$((instructions / requests)) per request"
