"""Summarise collapsed stacks (inferno-collapse-perf output) of keyhaven under transit load:
time by thread, by component (inclusive: a sample counts for every component on its stack),
by category of the code executing (exclusive: the first match walking from the leaf up),
and the top functions by self time.  Usage: transit-profile.py folded.txt
"""
import collections
import re
import sys

# component (inclusive), in report order: name, regex on one frame
ALLOC = r"^(__libc_)?(malloc|free|cfree|realloc|calloc)(@.*)?$|_int_malloc|_int_free|_int_realloc|malloc_consolidate|__rust_alloc|__rust_dealloc|__rust_realloc"
AES = r"aes|gcm|EVP_AEAD|keyhaven_crypto"
SHA = r"sha256|SHA256|HMAC"
RAND = r"getrandom|crng|RAND_bytes|CRYPTO_sysrand|urandom"
AUDIT = r"keyhaven_engine::audit|keyhaven_server::audit_file"
TOKEN = r"keyhaven_engine::token"
ACL = r"keyhaven_engine::policy"
TRANSIT = r"keyhaven_engine::transit"
HTTP = r"^(hyper|axum|tower|tower_http|http_body_util|hyper_util|http)::|keyhaven_server::http"
COMPONENTS = [
    ("engine request handling (keyhaven_engine::core::Core::handle)", r"keyhaven_engine::core::Core::handle"),
    ("transit handler (keyhaven_engine::transit)", TRANSIT),
    ("AES-256-GCM and key material (aws-lc AES/GCM, keyhaven_crypto)", AES),
    ("SHA-256 / HMAC (aws-lc)", SHA),
    ("random bytes (nonces; getrandom)", RAND),
    ("token lookup (keyhaven_engine::token)", TOKEN),
    ("ACL / policy (keyhaven_engine::policy)", ACL),
    ("audit (keyhaven_engine::audit, keyhaven_server::audit_file)", AUDIT),
    ("JSON (serde_json)", r"serde_json"),
    ("allocation (malloc/free/realloc)", ALLOC),
    ("kernel (system calls: sockets, audit file writes; scheduler)", r"_\[k\]$"),
]
# category of the executing code (exclusive), checked per frame from the leaf up
CATEGORIES = [
    ("allocation", ALLOC),
    ("memcpy/memmove/memset/memcmp", r"^__(memcpy|memmove|memset|memcmp|memchr)|^(memcpy|memmove|memset|memcmp)"),
    ("random bytes (getrandom)", RAND),
    ("kernel", r"_\[k\]$"),
    ("SHA-256 / HMAC (aws-lc)", SHA),
    ("AES-256-GCM (aws-lc)", AES),
    ("base64", r"base64"),
    ("JSON (serde_json)", r"serde_json"),
    ("audit", AUDIT),
    ("token lookup", TOKEN),
    ("ACL / policy", ACL),
    ("transit handler", TRANSIT),
    ("HTTP (hyper, axum, tower, keyhaven_server::http)", HTTP),
    ("tokio runtime", r"^tokio::"),
    ("locks / atomics (parking_lot, std::sync)", r"parking_lot|std::sync|futex"),
]


def main(path):
    stacks = []
    for line in open(path):
        line = line.rstrip("\n")
        if not line:
            continue
        st, n = line.rsplit(" ", 1)
        stacks.append((st.split(";"), int(n)))
    total = sum(n for _, n in stacks)
    if not total:
        raise SystemExit("no samples")
    pct = lambda n: f"{100 * n / total:.1f} %"
    threads = collections.Counter()
    comp = collections.Counter()
    cat = collections.Counter()
    selfc = collections.Counter()
    regs = [(name, re.compile(rx)) for name, rx in COMPONENTS]
    cregs = [(name, re.compile(rx)) for name, rx in CATEGORIES]
    for frames, n in stacks:
        thread = re.sub(r"[-_]?\d+$", "", frames[0])
        threads[thread] += n
        body = frames[1:]
        for name, rx in regs:
            if any(rx.search(f) for f in body):
                comp[name] += n
        for f in reversed(body):
            hit = next((name for name, rx in cregs if rx.search(f)), None)
            if hit:
                cat[hit] += n
                break
        else:
            cat["other"] += n
        selfc[body[-1] if body else frames[0]] += n
    print(f"{total} samples\n")
    print("By thread:\n\n| thread | share |\n|---|---:|")
    for t, n in threads.most_common(8):
        print(f"| {t} | {pct(n)} |")
    print("\nBy component (inclusive: a sample counts for each component on its stack):\n")
    print("| component | share of samples |\n|---|---:|")
    for name, _ in COMPONENTS:
        print(f"| {name} | {pct(comp[name])} |")
    print("\nBy code executing (exclusive: first match from the leaf up):\n")
    print("| category | share of samples |\n|---|---:|")
    for name, n in cat.most_common():
        print(f"| {name} | {pct(n)} |")
    print("\nTop functions by self time:\n\n| function | self |\n|---|---:|")
    for f, n in selfc.most_common(20):
        f = re.sub(r"::h[0-9a-f]{16}$", "", f)
        print(f"| `{f[:110]}` | {pct(n)} |")


if __name__ == "__main__":
    main(sys.argv[1])
