#!/usr/bin/env bash
# bench/request-perf.sh: where a request's CPU goes, kernel included, for keyhaven and
# the ceiling (bench/ceiling), under load on loopback. The companion of
# bench/request-profile.sh (callgrind: exact user-space instructions, no kernel): this
# one samples the server's threads with `perf record` (cpu-clock, DWARF call graphs),
# which needs no hardware counters, and reports the server's CPU time per request, split
# by what the sampled stack was doing (bench/request-perf.py).
#
# For each server and scenario a fresh server is started and set up (KV v2 secret/bench
# as bench/server.sh, transit key "bench" as bench/transit.sh), oha sends requests at
# concurrency CONC for WARMUP + SECONDS + 1 seconds, and over SECONDS in the middle the
# script reads the server's CPU time (utime + stime from /proc/<pid>/stat) and samples it
# with perf at FREQ Hz. CPU per request = CPU time / requests answered in that window
# (oha's rate x SECONDS). The split is of the samples, scaled to that CPU time.
#
# Scenarios (SCENARIOS): kv_read (GET /v1/secret/data/bench), encrypt (POST
# /v1/transit/encrypt/bench, 32 bytes). Servers (SERVERS): keyhaven-dev (`keyhaven server
# --dev`, no audit), keyhaven-sqlite (SQLite storage with its read cache, no audit; not
# by default), ceiling. Only loopback traffic; only the processes this script
# starts are stopped, by PID. Needs perf (linux-perf) with access to the server's PID.
#
# Knobs: KEYHAVEN=<binary> (the release profile keeps line tables for the call graphs)
#   CEILING=<binary>  SERVERS="keyhaven-dev ceiling"  SCENARIOS="kv_read encrypt"
#   SECONDS_=4  WARMUP=2  FREQ=999  CONC=16  PORT=18950  WORK=$CARGO_TARGET_DIR/bench-perf
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SECONDS_=${SECONDS_:-4}
WARMUP=${WARMUP:-2}
FREQ=${FREQ:-999}
PORT=${PORT:-18950}
WORK=${WORK:-$CARGO_TARGET_DIR/bench-perf}
. "$ROOT/bench/common.sh"
bench_request_knobs
command -v perf >/dev/null || { echo "needs perf" >&2; exit 2; }

SERVER_PID=""
LOAD_PID=""
cleanup() {
  if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then
    kill "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true
  fi
  bench_stop_server
}
trap cleanup EXIT INT TERM

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

printf '| server | scenario | requests/s | server CPU-s | µs of CPU per request |\n|---|---|---:|---:|---:|\n' >"$WORK/summary.md"
for s in $SERVERS; do
  for sc in $SCENARIOS; do
    TOKEN=root # keyhaven-sqlite replaces it with its own root token
    bench_start_server "$s" "$WORK/$s.$sc.log"
    bench_request_args "$sc"
    oha -z "$((WARMUP + SECONDS_ + 1))s" -c "$CONC" --no-tui --output-format json \
      -H "X-Vault-Token: $TOKEN" "${REQUEST_ARGS[@]}" >"$WORK/oha.$s.$sc.json" &
    LOAD_PID=$!
    sleep "$WARMUP"
    t0=$(ticks "$SERVER_PID")
    perf record -q -F "$FREQ" --call-graph dwarf,16384 -p "$SERVER_PID" -o "$WORK/perf.$s.$sc.data" \
      -- sleep "$SECONDS_" >/dev/null 2>&1
    t1=$(ticks "$SERVER_PID")
    wait "$LOAD_PID"
    LOAD_PID=""
    bench_stop_server
    rps=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); c=j.get("statusCodeDistribution",{});
assert all(k.startswith("2") for k in c), c; print(round(j["summary"]["requestsPerSec"]))' "$WORK/oha.$s.$sc.json")
    cpu=$(python3 -c "print(round(($t1 - $t0) / $HZ, 2))")
    us=$(python3 -c "print(round(1e6 * ($t1 - $t0) / $HZ / ($rps * $SECONDS_), 2))")
    perf script -i "$WORK/perf.$s.$sc.data" 2>/dev/null >"$WORK/perf.$s.$sc.txt"
    printf '| %s | %s | %s | %s | %s |\n' "$s" "$sc" "$rps" "$cpu" "$us" | tee -a "$WORK/summary.md"
    python3 "$ROOT/bench/request-perf.py" "$WORK/perf.$s.$sc.txt" "$us" >"$WORK/split.$s.$sc.md"
    cat "$WORK/split.$s.$sc.md"
  done
done
echo "samples: $WORK/perf.*.txt; tables: $WORK/summary.md, $WORK/split.*.md"
