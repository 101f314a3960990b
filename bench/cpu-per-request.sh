#!/usr/bin/env bash
# CPU time per request of running processes while wrk loads a port: user and system
# microseconds per request for each PID, from /proc/PID/stat (utime, stime) before and
# after the run, and the context switches per request (voluntary: it waited; involuntary:
# it was preempted, e.g. by an upstream on the same CPU woken by its write).
#
#   bench/cpu-per-request.sh PORT PID...
#
# Start the proxy and its upstream pinned to CPU 1 first (as ../shared/bench/run.sh does:
# `taskset -c 1 ...`); wrk runs on CPU 0 with 64 connections for $DURATION (6s) and sends
# `X-API-Key: bench-key`.
set -euo pipefail
port=$1
shift
duration=${DURATION:-6s}
ticks=$(getconf CLK_TCK)
declare -A user0 sys0 vol0 invol0
for pid in "$@"; do
  read -r user0[$pid] sys0[$pid] < <(awk '{print $14, $15}' "/proc/$pid/stat")
  vol0[$pid]=$(awk '/^voluntary_ctxt_switches/{print $2}' "/proc/$pid/status")
  invol0[$pid]=$(awk '/^nonvoluntary_ctxt_switches/{print $2}' "/proc/$pid/status")
done
out=$(taskset -c 0 wrk -t1 -c64 -d"$duration" -H 'X-API-Key: bench-key' "http://127.0.0.1:$port/v1/messages")
requests=$(echo "$out" | awk '/requests in/{print $1}')
echo "$out" | grep Requests/sec
for pid in "$@"; do
  read -r user sys < <(awk '{print $14, $15}' "/proc/$pid/stat")
  vol=$(awk '/^voluntary_ctxt_switches/{print $2}' "/proc/$pid/status")
  invol=$(awk '/^nonvoluntary_ctxt_switches/{print $2}' "/proc/$pid/status")
  awk -v n="$requests" -v hz="$ticks" -v pid="$pid" -v name="$(cat "/proc/$pid/comm")" \
    -v u=$((user - user0[$pid])) -v s=$((sys - sys0[$pid])) \
    -v cs=$((vol - vol0[$pid])) -v ics=$((invol - invol0[$pid])) \
    'BEGIN { printf "%s (%s): user %.2f us, system %.2f us, %.2f vol %.2f invol cs per request\n",
             name, pid, u * 1e6 / hz / n, s * 1e6 / hz / n, cs / n, ics / n }'
done
