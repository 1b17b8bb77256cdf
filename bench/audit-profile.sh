#!/usr/bin/env bash
# bench/audit-profile.sh: server CPU per request of keyhaven with and without a file audit
# device, measured back to back (KV v2 read, non-root token, oha on loopback), and
# optionally a perf profile of the audited server.
#
# Knobs: KEYHAVEN=<binary> DURATION=8 CONC=32 PORT=18390 PERF=0|1 WORK=$CARGO_TARGET_DIR/audit-profile
# Only the processes it starts are stopped, by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KEYHAVEN=${KEYHAVEN:-$CARGO_TARGET_DIR/release/keyhaven}
DURATION=${DURATION:-8} CONC=${CONC:-32} PORT=${PORT:-18390} PERF=${PERF:-0}
WORK=${WORK:-$CARGO_TARGET_DIR/audit-profile}
case "$WORK" in *..*) echo "refusing odd paths" >&2; exit 2;; esac
TICK=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

run() { # name audit(0|1)
  local name=$1 audit=$2 dir="$WORK/$1" addr="127.0.0.1:$PORT"
  rm -rf "$dir"; mkdir -p "$dir"
  {
    printf '[storage]\nbackend = "sqlite"\npath = "%s/data/keyhaven.db"\n\n' "$dir"
    printf '[listener]\naddress = "%s"\ntls_disable = true\n\n[log]\nlevel = "warn"\n' "$addr"
    if [ "$audit" = 1 ]; then
      printf '\n[[audit]]\ntype = "file"\nname = "bench"\npath = "%s/audit.log"\nfsync = false\n' "$dir"
    fi
  } > "$dir/keyhaven.toml"
  "$KEYHAVEN" server --config "$dir/keyhaven.toml" > "$dir/server.log" 2>&1 &
  local pid=$!; PIDS+=("$pid")
  local a="http://$addr"
  for _ in $(seq 100); do curl -sf -o /dev/null "$a/v1/sys/health?sealedcode=200&uninitcode=200" && break; sleep 0.05; done
  local init root key tok
  init=$(curl -sf -X PUT "$a/v1/sys/init" -d '{"secret_shares":1,"secret_threshold":1}')
  root=$(echo "$init" | json 'd["root_token"]'); key=$(echo "$init" | json 'd["keys"][0]')
  curl -sf -o /dev/null -X PUT "$a/v1/sys/unseal" -d "{\"key\":\"$key\"}"
  curl -sf -o /dev/null -X POST -H "X-Vault-Token: $root" "$a/v1/sys/mounts/secret" -d '{"type":"kv","options":{"version":"2"}}'
  for _ in $(seq 100); do
    curl -sf -o /dev/null -X POST -H "X-Vault-Token: $root" "$a/v1/secret/data/bench" -d '{"data":{"username":"app","password":"s3cret"}}' && break
    sleep 0.05
  done
  curl -sf -o /dev/null -X PUT -H "X-Vault-Token: $root" "$a/v1/sys/policies/acl/kvread" -d '{"policy":"path \"secret/data/*\" { capabilities = [\"read\"] }"}'
  tok=$(curl -sf -X POST -H "X-Vault-Token: $root" "$a/v1/auth/token/create" -d '{"policies":["kvread"]}' | json 'd["auth"]["client_token"]')
  oha -z 1s -c "$CONC" --no-tui -H "X-Vault-Token: $tok" "$a/v1/secret/data/bench" > /dev/null
  local t0 t1 perfpid=""
  t0=$(cpu_ticks "$pid")
  if [ "$PERF" = 1 ]; then
    perf record -F 999 -g -p "$pid" -o "$dir/perf.data" -- sleep "$DURATION" > /dev/null 2>&1 &
    perfpid=$!
  fi
  oha -z "${DURATION}s" -c "$CONC" --no-tui -H "X-Vault-Token: $tok" "$a/v1/secret/data/bench" > "$dir/oha.txt"
  t1=$(cpu_ticks "$pid")
  [ -n "$perfpid" ] && wait "$perfpid"
  local rps n
  rps=$(awk '/Requests\/sec/ {print $2}' "$dir/oha.txt")
  n=$(awk -v r="$rps" -v d="$DURATION" 'BEGIN {printf "%d", r*d}')
  awk -v name="$name" -v r="$rps" -v n="$n" -v c="$((t1 - t0))" -v t="$TICK" \
    'BEGIN {printf "%-15s %8.0f req/s  %6.1f us server CPU per request\n", name, r, c/t/n*1e6}'
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [ "$PERF" = 1 ] && echo "  profile: perf report -i $dir/perf.data --no-children --sort symbol"
  if [ "$audit" = 1 ]; then
    "$KEYHAVEN" audit verify "$dir/audit.log" | head -1

  fi
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
run keyhaven 0
run keyhaven+audit 1
run keyhaven 0
run keyhaven+audit 1
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
