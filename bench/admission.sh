#!/usr/bin/env bash
# Admission webhook load: `keyhaven admission serve` (release build, 2 worker threads) with
# a self-signed certificate, and the load driver (crates/keyhaven-k8s/examples/admission_load.rs)
# posting a 20-container Deployment review over CONNECTIONS keep-alive TLS connections for
# SECONDS. Prints p50/p99 latency and decisions per CPU-second of the webhook process, and
# the same review judged in-process (no HTTP/TLS) as the peer of the run.
# Results go to docs/BENCHMARKS.md by hand.
#
#   bench/admission.sh [CONNECTIONS] [SECONDS]
#   KEYHAVEN=path/to/keyhaven bench/admission.sh ...   (that binary as the webhook)
#   ADMISSION_LOAD=path/to/admission_load KEYHAVEN=... bench/admission.sh ...
#     (prebuilt binaries: nothing is built, so builds of other commits can be interleaved)
set -euo pipefail
cd "$(dirname "$0")/.."
connections="${1:-4}"
seconds="${2:-10}"
target="${CARGO_TARGET_DIR:-target}/release"
load="$target/examples/admission_load"
if [ -n "${ADMISSION_LOAD:-}" ]; then
  load="$ADMISSION_LOAD"
  keyhaven="${KEYHAVEN:?ADMISSION_LOAD needs KEYHAVEN}"
elif [ -n "${KEYHAVEN:-}" ]; then
  # Another build of the webhook (an older commit, say), measured with this tree's driver.
  cargo build --release --locked -p keyhaven-k8s --example admission_load
  keyhaven="$KEYHAVEN"
else
  cargo build --release --locked -p keyhaven-cli -p keyhaven-k8s --bin keyhaven --example admission_load
  keyhaven="$target/keyhaven"
fi
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
chmod 600 "$work/tls.key"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$keyhaven" admission serve --listen "127.0.0.1:$port" \
  --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" --log-level info 2>"$work/webhook.log" &
pid=$!
for _ in $(seq 100); do
  curl -sf --cacert "$work/tls.crt" "https://localhost:$port/healthz" >/dev/null && break
  sleep 0.1
done
"$load" "localhost:$port" "$work/tls.crt" "$connections" "$seconds" "$pid"
