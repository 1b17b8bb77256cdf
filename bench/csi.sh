#!/usr/bin/env bash
# CSI provider mount latency and throughput: a dev server and `keyhaven csi-provider`
# (release builds), driven by crates/keyhaven-k8s/examples/csi_load.rs over the provider's
# unix socket. Prints one JSON line per phase (cold, cached, throughput, throughput-cpu).
#
#   bench/csi.sh [MOUNTS] [IDENTITIES] [CONCURRENCY]     (defaults 500 50 8)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
mounts="${1:-500}" identities="${2:-50}" concurrency="${3:-8}"
cargo build --release --locked -p keyhaven-cli --bin keyhaven
cargo build --release --locked -p keyhaven-k8s --example csi_load
bin="$target/release/keyhaven"
dir=$(mktemp -d)
server_pid=""; provider_pid=""
cleanup() {
  [ -n "$provider_pid" ] && kill "$provider_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
KEYHAVEN_LOG=warn "$bin" server --dev --dev-listen-address "127.0.0.1:$port" --dev-root-token-id bench-root >"$dir/server.out" 2>&1 &
server_pid=$!
for _ in $(seq 100); do grep -q "Root Token" "$dir/server.out" 2>/dev/null && break; sleep 0.1; done
KEYHAVEN_LOG=warn "$bin" csi-provider --socket "$dir/keyhaven.sock" --address "http://127.0.0.1:$port" 2>"$dir/provider.err" &
provider_pid=$!
for _ in $(seq 100); do [ -S "$dir/keyhaven.sock" ] && break; sleep 0.1; done
"$target/release/examples/csi_load" --address "http://127.0.0.1:$port" --token bench-root \
  --socket "$dir/keyhaven.sock" --mounts "$mounts" --identities "$identities" \
  --concurrency "$concurrency" --pids "$server_pid,$provider_pid"
