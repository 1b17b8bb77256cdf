"""Categorise a callgrind dump of bench/request-profile.sh (standard library only).

    python3 bench/request-profile.py DUMP REQUESTS

Prints, per request: instructions by the code that executes them (exclusive cost,
attributed through the line tables to the source file of the inlined code, first
matching category wins) and the inclusive cost of a few functions of keyhaven's request
path. Needs `callgrind_annotate` (valgrind).
"""
import re
import subprocess
import sys

# (category, regular expression on the function's symbol, then on the source file of the
# inlined code when no symbol matches); first match wins
CATEGORIES = [
    ("route matching (keyhaven route table)", r"keyhaven_engine::route::", r"keyhaven-engine/src/route\.rs"),
    ("token lookup (keyhaven)", r"keyhaven_engine::token::", r"keyhaven-engine/src/token"),
    ("ACL / policy (keyhaven)", r"keyhaven_engine::policy::", r"keyhaven-engine/src/policy"),
    ("audit (keyhaven)", r"keyhaven_engine::audit::", r"keyhaven-engine/src/audit"),
    ("SHA-256 / HMAC (aws-lc)", r"sha256|SHA256|HMAC|hmac", r"/sha/|hmac"),
    ("AES-GCM, random (aws-lc)", r"aws_lc|aes_|gcm|ghash|getrandom|rand::", r"aws-lc"),
    ("JSON (serde_json, serde)", r"serde_json|serde_core|serde::", r"serde_json|serde_core"),
    ("allocation (jemalloc)", r"_rjem_|jemalloc|__rust_(alloc|dealloc|realloc)|finish_grow|tcache|arena_", r"jemalloc"),
    ("memcpy / memmove / memcmp / memset (libc)", r"mem(move|cpy|cmp|set)", r"libc\.so|/string/"),
    ("HTTP: hyper, httparse, http, axum, tower, bytes", r"hyper|httparse|^http::|[<( ]http::|axum|tower|bytes::|matchit",
     r"hyper|httparse|/http-\d|axum|tower|/bytes-|matchit"),
    ("TLS (rustls)", r"rustls", r"rustls"),
    ("tokio runtime", r"tokio|mio::", r"tokio|mio-"),
    ("KV / transit / storage / barrier (keyhaven)",
     r"keyhaven_engine::(kv|transit|barrier)|keyhaven_storage|keyhaven_crypto",
     r"keyhaven-engine/src/(kv|transit|barrier)|keyhaven-storage|keyhaven-crypto"),
    ("keyhaven server (HTTP handler, listener)", r"keyhaven_server::", r"keyhaven-server/"),
    ("keyhaven engine, other (core, request, backend)", r"keyhaven_engine::", r"keyhaven-engine/"),
    ("ceiling server (bench/ceiling)", r"keyhaven_ceiling", r"bench/ceiling"),
    ("Rust core/alloc/std (formatting, strings, collections)", r"^<?(core|alloc|std)::", r"library/|rustc"),
]

# inclusive cost of these functions (regular expressions on the function name)
FUNCTIONS = [
    ("listener: one connection's task (everything per request in user space)", r"keyhaven_server::listener::serve::\{\{closure\}\}::\{\{closure\}\}$"),
    ("axum handler `logical` (request parse, engine, response encode)", r"keyhaven_server::http::logical::\{\{closure\}\}$|<F as axum::handler::Handler<\(M,T1,T2\),S>>::call::\{\{closure\}\}$"),
    ("Core::handle (route, token, ACL, audit, backend)", r"keyhaven_engine::core::Core::handle::\{\{closure\}\}$"),
    ("route::match_route", r"keyhaven_engine::route::match_route$"),
    ("route::check_fields", r"keyhaven_engine::route::check_fields$"),
    ("TokenStore::lookup", r"keyhaven_engine::token::.*lookup::\{\{closure\}\}$"),
    ("HMAC of the token (aws_lc_rs::hmac::sign)", r"aws_lc_rs::hmac::sign$"),
    ("PolicyStore::acl_for", r"acl_for::\{\{closure\}\}$"),
    ("Acl::authorize", r"keyhaven_engine::policy::.*authorize$"),
    ("KV: metadata read (KvBackend::load_meta)", r"KvBackend::load_meta::\{\{closure\}\}$"),
    ("KV: version read (KvBackend::load_payload)", r"KvBackend::load_payload::\{\{closure\}\}$"),
    ("transit handler (TransitBackend::handle)", r"<keyhaven_engine::transit::TransitBackend as keyhaven_engine::backend::Backend>::handle::\{\{closure\}\}$"),
    ("response envelope (http::json_response)", r"keyhaven_server::http::json_response$"),
    ("hyper h1 parse", r"<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse$"),
    ("hyper h1 encode", r"<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::encode$"),
]

LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)(?:\s+\[[^\]]*\])?\s*$")


def annotate(dump, inclusive):
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                          f"--inclusive={'yes' if inclusive else 'no'}", dump],
                         capture_output=True, text=True, check=True).stdout
    rows, body = [], False
    for line in out.splitlines():
        if "file:function" in line:
            body = True
            continue
        m = LINE.match(line)
        if body and m:
            rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    total = next(int(m.group(1).replace(",", "")) for m in map(LINE.match, out.splitlines())
                 if m and "PROGRAM TOTALS" in m.group(2))
    return total, rows


def main():
    dump, n = sys.argv[1], int(sys.argv[2])
    total, rows = annotate(dump, False)
    cats = {}
    for ir, name in rows:
        path, _, fn = name.partition(":")
        cat = next((c for c, frx, _ in CATEGORIES if re.search(frx, fn)), None) or \
            next((c for c, _, prx in CATEGORIES if re.search(prx, path)), "other")
        cats[cat] = cats.get(cat, 0) + ir
    print(f"{dump}: {total:,} Ir over {n} requests = {total / n:,.0f} Ir per request\n")
    print("| code executing (exclusive) | Ir per request | share |\n|---|---:|---:|")
    for cat, ir in sorted(cats.items(), key=lambda x: -x[1]):
        print(f"| {cat} | {ir / n:,.0f} | {100 * ir / total:.1f} % |")
    _, inc = annotate(dump, True)
    print("\n| function (inclusive; the largest entry by that name) | Ir per request | share |\n|---|---:|---:|")
    for title, rx in FUNCTIONS:
        best = 0
        for ir, name in inc:
            fn = name.split(":", 1)[1] if ":" in name else name
            if re.search(rx, fn):
                best = max(best, ir)
        if best:
            print(f"| {title} | {best / n:,.0f} | {100 * best / total:.1f} % |")


if __name__ == "__main__":
    main()
