#!/usr/bin/env bash
# Throughput of `keyhaven envelope encrypt` and `decrypt` on a 1 GiB file in tmpfs (so in
# memory), output to /dev/null, with 1 and 2 threads, beside `openssl speed -evp
# aes-256-gcm` at the envelope's frame size (64 KiB). `openssl enc` refuses AEAD ciphers,
# so `openssl speed` is the OpenSSL figure. The in-process comparison with the raw
# aws-lc-rs AEAD is `cargo bench -p keyhaven-envelope --bench envelope`.
#
#   bench/envelope.sh
#
# Environment:
#   KEYHAVEN   the keyhaven binary (default: $CARGO_TARGET_DIR/release/keyhaven, built
#              with `cargo build --release -p keyhaven-cli` when missing)
#   DIR        where the 1 GiB input goes (default /dev/shm/keyhaven-envelope-bench)
#
# Reports GB/s (10^9 bytes/s) over wall time and over CPU time (user + sys), from
# /usr/bin/time. A loaded machine lowers the wall figures; the CPU figures divide by what
# the process used.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$here/target}"
keyhaven="${KEYHAVEN:-$target_dir/release/keyhaven}"
dir="${DIR:-/dev/shm/keyhaven-envelope-bench}"
size=$((1 << 30))

if [ ! -x "$keyhaven" ]; then
  (cd "$here" && cargo build --release -p keyhaven-cli)
fi
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
head -c "$size" /dev/urandom > "$dir/in"
rm -f "$dir/k"
"$keyhaven" envelope new-local-key -o "$dir/k" >/dev/null
"$keyhaven" envelope encrypt --local-key "$dir/k" -o "$dir/enc" "$dir/in"

measure() { # label, command...
  local label="$1"; shift
  local out
  out=$( { /usr/bin/time -f '%e %U %S' "$@" >/dev/null; } 2>&1 | tail -n1)
  read -r wall user sys <<<"$out"
  awk -v l="$label" -v w="$wall" -v u="$user" -v s="$sys" -v n="$size" \
    'BEGIN { printf "%-28s wall %6.2f GB/s   cpu %6.2f GB/s   (%.2f s wall, %.2f s cpu)\n", l, n/w/1e9, n/(u+s)/1e9, w, u+s }'
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in 1 2; do
  measure "encrypt --threads $t" "$keyhaven" envelope encrypt --local-key "$dir/k" --threads "$t" "$dir/in"
  measure "decrypt --threads $t" "$keyhaven" envelope decrypt --local-key "$dir/k" --threads "$t" "$dir/enc"
done
openssl version
openssl speed -seconds 3 -bytes 65536 -evp aes-256-gcm 2>/dev/null | tail -n1
openssl speed -seconds 3 -bytes 65536 -decrypt -evp aes-256-gcm 2>/dev/null | tail -n1
