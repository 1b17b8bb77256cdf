#!/usr/bin/env bash
# The envelope bulk path against its physical limit, all in one run, on one 1 GiB file of
# random bytes in tmpfs (so in the page cache), output to /dev/null:
#
#   1. the raw AES-256-GCM of aws-lc-rs and ring, in process, one core
#      (crates/keyhaven-envelope/benches/raw_aead.rs: in place, 64 KiB frames);
#   2. `openssl speed -evp aes-256-gcm` at 64 KiB (in memory), and `openssl enc
#      -aes-256-ctr` over the file (`openssl enc` refuses AEAD ciphers; CTR is GCM without
#      its GHASH, so this is the file-to-/dev/null tool with the same reads and writes);
#   3. `dd bs=1M` over the file: what reading it and writing /dev/null cost alone;
#   4. `keyhaven envelope encrypt` and `decrypt` with --threads 1 and 2.
#
#   bench/envelope.sh
#
# Environment:
#   KEYHAVEN   the keyhaven binary (default: $CARGO_TARGET_DIR/release/keyhaven, built
#              with `cargo build --release --workspace --bin keyhaven` when missing)
#   DIR        where the 1 GiB input goes (default /dev/shm/keyhaven-envelope-bench)
#   REPEATS    runs per command line, the best one is kept (default 5)
#   RAW_AEAD   the built raw_aead bench binary (default: run it through
#              `cargo bench --workspace --bench raw_aead`)
#
# GB/s = 10^9 bytes/s of plaintext, over wall time and over CPU time (user + sys of the
# process, from /usr/bin/time; the raw figures use the thread's CPU time). On a shared
# machine the CPU figures are the comparable ones for one thread; the 2-thread target is a
# wall-clock one and needs two idle cores, so the load average is printed with the figures.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$here/target}"
keyhaven="${KEYHAVEN:-$target_dir/release/keyhaven}"
dir="${DIR:-/dev/shm/keyhaven-envelope-bench}"
repeats="${REPEATS:-5}"
size=$((1 << 30))

if [ ! -x "$keyhaven" ]; then
  (cd "$here" && cargo build --release --workspace --bin keyhaven)
fi
if [ -n "${RAW_AEAD:-}" ]; then
  raw_out="$("$RAW_AEAD" --bench)"
else
  raw_out="$(cd "$here" && cargo bench --workspace --bench raw_aead 2>/dev/null)"
fi

mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
head -c "$size" /dev/urandom > "$dir/in"
rm -f "$dir/k"
"$keyhaven" envelope new-local-key -o "$dir/k" >/dev/null
"$keyhaven" envelope encrypt --local-key "$dir/k" -o "$dir/enc" "$dir/in"
cmp <("$keyhaven" envelope decrypt --local-key "$dir/k" --threads 2 "$dir/enc") "$dir/in"

# measure LABEL COMMAND...: the best of $repeats runs, by wall time and by CPU time.
# Prints "LABEL wall-GB/s cpu-GB/s".
measure() {
  local label="$1"; shift
  local best_w="" best_c="" out wall user sys
  for _ in $(seq "$repeats"); do
    out=$( { /usr/bin/time -f '%e %U %S' "$@" >/dev/null; } 2>&1 | tail -n1)
    read -r wall user sys <<<"$out"
    best_w=$(awk -v a="$best_w" -v b="$wall" 'BEGIN { print (a == "" || b < a) ? b : a }')
    best_c=$(awk -v a="$best_c" -v b="$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" \
      'BEGIN { print (a == "" || b < a) ? b : a }')
  done
  awk -v l="$label" -v w="$best_w" -v c="$best_c" -v n="$size" \
    'BEGIN { printf "%-34s wall %6.2f GB/s   cpu %6.2f GB/s\n", l, n/w/1e9, n/c/1e9 }'
}

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')   load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "$(openssl version)"
echo
echo "$raw_out"
echo
openssl speed -seconds 2 -bytes 65536 -evp aes-256-gcm 2>/dev/null | tail -n1 |
  awk '{ printf "openssl speed aes-256-gcm 64 KiB     cpu %6.2f GB/s\n", $2 * 1000 / 1e9 }'
openssl speed -seconds 2 -bytes 65536 -decrypt -evp aes-256-gcm 2>/dev/null | tail -n1 |
  awk '{ printf "openssl speed -decrypt 64 KiB        cpu %6.2f GB/s\n", $2 * 1000 / 1e9 }'
key=$(printf '%064d' 7)
iv=$(printf '%032d' 1)
rows=$(
  measure "openssl enc -aes-256-ctr (file)" openssl enc -aes-256-ctr -K "$key" -iv "$iv" -in "$dir/in" -out /dev/null
  measure "dd bs=1M (read + write only)" dd if="$dir/in" of=/dev/null bs=1M status=none
  for t in 1 2; do
    measure "keyhaven encrypt --threads $t" "$keyhaven" envelope encrypt --local-key "$dir/k" --threads "$t" "$dir/in"
    measure "keyhaven decrypt --threads $t" "$keyhaven" envelope decrypt --local-key "$dir/k" --threads "$t" "$dir/enc"
  done
)
echo "$rows"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# Ratios against the faster raw backend: encrypt against seal, decrypt against open.
# One thread per CPU-second (target 0.9), two threads by wall clock (target 1.8).
{ echo "$raw_out"; echo "$rows"; } | awk '
  /^raw .* seal/ { v = $(NF-4) + 0; if (v > seal) seal = v }
  /^raw .* open/ { v = $(NF-4) + 0; if (v > open) open = v }
  /^keyhaven (en|de)crypt/ {
    ref = ($2 == "encrypt") ? seal : open
    wall = $(NF-4) + 0; cpu = $(NF-1) + 0
    printf "%-34s %.2fx raw per CPU-second   %.2fx raw by wall clock\n", $1 " " $2 " " $3 " " $4, cpu / ref, wall / ref
  }
  END { printf "(raw reference: seal %.2f GB/s, open %.2f GB/s per CPU-second, the faster backend)\n", seal, open }'
