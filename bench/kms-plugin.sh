#!/usr/bin/env bash
# KMS v2 plugin load: a dev server, two plugins on it (one with the seed cache, one with
# cache_size = 0 so every Decrypt goes through keyhaven), and the load driver
# (crates/keyhaven-k8s/examples/kms_load.rs) with CALLERS concurrent callers for SECONDS per
# operation. Release build; results go to docs/BENCHMARKS.md by hand.
#
#   bench/kms-plugin.sh [CALLERS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
callers="${1:-16}"
seconds="${2:-5}"
cargo build --release --locked -p keyhaven-cli -p keyhaven-k8s --bin keyhaven --example kms_load
target="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$target/keyhaven" server --dev --dev-listen-address 127.0.0.1:0 --log-level warn >"$work/server.out" 2>&1 &
server=$!; pids+=("$server")
for _ in $(seq 100); do grep -q 'Root Token:' "$work/server.out" && break; sleep 0.1; done
addr=$(sed -n 's/^ *Api Address: *//p' "$work/server.out" | head -1)
token=$(sed -n 's/^ *Root Token: *//p' "$work/server.out" | head -1)
export KEYHAVEN_ADDR="$addr" KEYHAVEN_TOKEN="$token"
"$target/keyhaven" secrets enable transit >/dev/null
"$target/keyhaven" write -f transit/keys/k8s >/dev/null
echo "$token" >"$work/token"

start_plugin() { # name cache_size
  printf 'cache_size = %s\n' "$2" >"$work/$1.toml"
  "$target/keyhaven" kms-plugin --socket "$work/$1.sock" --address "$addr" --key transit/k8s \
    --token-file "$work/token" --config "$work/$1.toml" --log-level warn 2>"$work/$1.log" &
  pids+=("$!")
  for _ in $(seq 100); do [ -S "$work/$1.sock" ] && break; sleep 0.1; done
}
start_plugin cached 10000
cached=${pids[-1]}
start_plugin uncached 0
uncached=${pids[-1]}
sleep 0.5

echo "== plugin with the seed cache (Decrypt = cache hit)"
"$target/examples/kms_load" "$work/cached.sock" "$callers" "$seconds" "$cached" "$server"
echo "== plugin with cache_size = 0 (Decrypt through keyhaven)"
"$target/examples/kms_load" "$work/uncached.sock" "$callers" "$seconds" "$uncached" "$server"
