#!/usr/bin/env bash
# bench/transit-profile.sh: where keyhaven's time goes on transit encrypt (32 bytes), with
# the same set-up as bench/transit.sh (SQLite storage, root token, file audit device).
#
# Starts keyhaven alone on loopback, warms up, attaches `perf record` (call graphs from
# DWARF unwinding; the release profile keeps line tables) to the server for DURATION seconds
# of oha load, then writes to $WORK:
#   perf.data, folded.txt (stacks collapsed by inferno-collapse-perf),
#   summary.md (time by category and the top functions, from bench/transit-profile.py),
#   and, with OUT_SVG set, a flame graph (inferno-flamegraph) there.
# Needs perf (Debian: apt-get install linux-perf) and inferno (cargo install inferno).
# Only loopback traffic; only the processes it starts are stopped, by PID.
#
# Knobs: DURATION=5 WARMUP=2 CONCURRENCY=16 (the first value is used) PORT=18450
#        FREQ=499 (samples per second)  FSYNC=false  KEYHAVEN=<binary>  KEYHAVEN_COMMIT=...
#        WORK=$CARGO_TARGET_DIR/bench-transit-profile  OUT_SVG=<path of the flame graph>
#
# Example:
#   OUT_SVG=docs/bench/transit-encrypt-flame.svg bench/transit-profile.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=${WORK:-$CARGO_TARGET_DIR/bench-transit-profile}
KEYHAVEN=${KEYHAVEN:-$CARGO_TARGET_DIR/release/keyhaven}
FREQ=${FREQ:-499}
OUT_SVG=${OUT_SVG:-}
export DURATION=${DURATION:-5} WARMUP=${WARMUP:-2} REPEATS=1
export CONCURRENCY=${CONCURRENCY:-16} PORT=${PORT:-18450} NICE=0 FSYNC=${FSYNC:-false}
export TRANSIT_SCENARIOS=encrypt TRANSIT_MODE=profile BAO=none
export PERF_CMD="perf record -F $FREQ -g --call-graph dwarf,16384"
PATH="$HOME/.cargo/bin:$PATH"

case "$WORK" in *..*) echo "refusing odd paths" >&2; exit 2;; esac
for t in perf oha inferno-collapse-perf; do
  command -v "$t" >/dev/null || { echo "missing $t (see the header)" >&2; exit 2; }
done
[ -x "$KEYHAVEN" ] || { echo "no keyhaven binary at $KEYHAVEN" >&2; exit 2; }
mkdir -p "$WORK"
export KEYHAVEN WORK KEYHAVEN_VERSION KEYHAVEN_COMMIT LOADGEN_VERSION BAO_VERSION=none
KEYHAVEN_VERSION=$("$KEYHAVEN" --version 2>/dev/null | head -1 || echo keyhaven)
KEYHAVEN_COMMIT=${KEYHAVEN_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
LOADGEN_VERSION=$(oha --version | head -1)
echo "keyhaven: $KEYHAVEN ($KEYHAVEN_VERSION, built from $KEYHAVEN_COMMIT); $(perf --version); $LOADGEN_VERSION"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 "$ROOT/bench/transit-bench.py"
perf script --no-inline -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf --all >"$WORK/folded.txt"
python3 "$ROOT/bench/transit-profile.py" "$WORK/folded.txt" | tee "$WORK/summary.md"
if [ -n "$OUT_SVG" ]; then
  # drop frames under 0.2 % so the SVG stays small
  inferno-flamegraph --title "keyhaven transit encrypt (32 B), c=$CONCURRENCY, perf -F $FREQ" \
    --minwidth 0.2 --width 1200 <"$WORK/folded.txt" >"$OUT_SVG"
  echo "flame graph: $OUT_SVG ($(du -k "$OUT_SVG" | cut -f1) KiB)"
fi
