#!/usr/bin/env bash
# bench/request-profile.sh: user-space instructions per request, by function, of keyhaven
# and of the ceiling (bench/ceiling), under valgrind's callgrind, for a fixed number of
# requests on loopback. For machines without hardware counters (no `perf stat -e
# instructions`): instruction counts are exact and do not depend on other load, but they
# leave out the kernel (system calls, loopback TCP, scheduling) and weigh every
# instruction alike.
#
# For each server and scenario a fresh server process runs under callgrind with
# instrumentation off; it is set up (KV v2 secret/bench as bench/server.sh, transit key
# "bench" as bench/transit.sh), warmed with WARM_N requests, then instrumentation is
# switched on (`callgrind_control -i on`), N requests are sent with oha at concurrency
# CONC, and the counters are dumped (`callgrind_control -d`). Reports Ir per request
# and writes `callgrind_annotate --inclusive=yes` and exclusive listings next to the
# dumps.
#
# Scenarios (SCENARIOS): kv_read (GET /v1/secret/data/bench), encrypt (POST
# /v1/transit/encrypt/bench, 32 bytes). Servers (SERVERS): keyhaven-dev (`keyhaven server
# --dev`, no audit), keyhaven-sqlite (SQLite storage with its read cache, no audit; not
# by default), ceiling. Only loopback traffic; only the processes this script
# starts are stopped, by PID.
#
# Knobs: KEYHAVEN=<binary> (with symbols: the release profile keeps line tables)
#   CEILING=<binary>  SERVERS="keyhaven-dev ceiling"  SCENARIOS="kv_read encrypt"
#   N=5000  WARM_N=500  CONC=16  PORT=18900  WORK=$CARGO_TARGET_DIR/bench-profile
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
N=${N:-5000}
WARM_N=${WARM_N:-500}
PORT=${PORT:-18900}
WORK=${WORK:-$CARGO_TARGET_DIR/bench-profile}
. "$ROOT/bench/common.sh"
bench_request_knobs
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
  { echo "needs valgrind (callgrind, callgrind_control)" >&2; exit 2; }

SERVER_PID=""
trap bench_stop_server EXIT INT TERM

load() { # scenario count
  bench_request_args "$1"
  oha -n "$2" -c "$CONC" --no-tui --output-format json -H "X-Vault-Token: $TOKEN" "${REQUEST_ARGS[@]}" >"$WORK/oha.json"
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); c=j.get("statusCodeDistribution",{});
ok=sum(v for k,v in c.items() if k.startswith("2")); print(ok); sys.exit(0 if ok==int(sys.argv[2]) else 1)' \
    "$WORK/oha.json" "$2"
}

printf '| server | scenario | requests | Ir (instrumented) | Ir per request |\n|---|---|---:|---:|---:|\n' >"$WORK/summary.md"
for s in $SERVERS; do
  for sc in $SCENARIOS; do
    out="$WORK/callgrind.$s.$sc"
    rm -f "$out" "$out".*
    TOKEN=root # keyhaven-sqlite replaces it with its own root token
    bench_start_server "$s" "$WORK/$s.$sc.log" \
      valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out"
    load "$sc" "$WARM_N" >/dev/null
    callgrind_control -i on "$SERVER_PID" >/dev/null 2>&1
    load "$sc" "$WARM_N" >/dev/null # warm the instrumented code too
    callgrind_control -z "$SERVER_PID" >/dev/null 2>&1
    ok=$(load "$sc" "$N")
    callgrind_control -d "$SERVER_PID" >/dev/null 2>&1
    bench_stop_server
    dump=$(ls -t "$out".* 2>/dev/null | grep -v '\.txt$' | head -1)
    ir=$(sed -n 's/^summary: //p; s/^totals: //p' "$dump" | head -1 | awk '{print $1}')
    callgrind_annotate --inclusive=yes --threshold=99 "$dump" >"$out.inclusive.txt" 2>/dev/null || true
    callgrind_annotate --threshold=99 "$dump" >"$out.exclusive.txt" 2>/dev/null || true
    printf '| %s | %s | %s | %s | %s |\n' "$s" "$sc" "$ok" "$ir" $((ir / ok)) | tee -a "$WORK/summary.md"
  done
done
echo "dumps and listings: $WORK/callgrind.*; table: $WORK/summary.md"
