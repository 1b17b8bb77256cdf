"""Split the samples of bench/request-perf.sh by what the server was doing (standard
library only).

    python3 bench/request-perf.py PERF_SCRIPT_OUTPUT MICROSECONDS_PER_REQUEST

Each sample is one stack (`perf script` text, innermost frame first). It goes to the
first category whose pattern matches any frame of the stack, so a sample inside the
engine counts as engine work even when its innermost frame is in the kernel (an
interrupt, a page fault) or in the allocator. The table gives each category's share of
the samples, the share whose innermost frame was in the kernel, and both as
microseconds of CPU per request (the share times MICROSECONDS_PER_REQUEST).
"""
import re
import sys

# (category, pattern on a frame); first match wins, in this order
CATEGORIES = [
    ("engine: backend (route's handler, its storage reads)", r"Core::dispatch"),
    ("engine: token lookup", r"TokenStore>::lookup"),
    ("engine: the rest of Core::handle (route, ACL, audit, metrics)", r"Core::handle_(wrapped|encoded)"),
    ("server: response envelope", r"json_response|bytes_response|http::Envelope"),
    ("server: request body", r"read_json_body"),
    ("server: the rest of the handler (request id, headers, query)", r"http::logical"),
    ("axum router and middleware", r"axum::|tower::"),
    ("writing the response (writev; the kernel wakes the client)", r"writev|poll_write_vectored"),
    ("reading the request (recv)", r"__libc_recv|poll_read"),
    ("waiting for work (epoll, timers, parking)", r"park|epoll_wait|Driver::turn"),
    ("hyper: parsing and encoding HTTP/1", r"hyper"),
]
COMPILED = [(name, re.compile(p)) for name, p in CATEGORIES]


def main():
    path, per_request = sys.argv[1], float(sys.argv[2])
    counts, kernel, total = {}, {}, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        raw = f.readlines()
    # one stack per sample, innermost frame first; perf script names each frame's DSO
    # in parentheses, "[kernel.kallsyms]" for the kernel
    stack_list, current = [], []
    for line in raw + ["\n"]:
        if not line.strip():
            if current:
                stack_list.append(current)
            current = []
        elif line.startswith(("\t", " ")):
            current.append(line)
    for frames in stack_list:
        total += 1
        names = [l.strip().split(" ", 1)[1].rsplit(" (", 1)[0] for l in frames if " " in l.strip()]
        in_kernel = "[kernel.kallsyms]" in frames[0]
        text = "\n".join(names)
        name = "other (tokio scheduling, the connection's task, libc)"
        for cat, pattern in COMPILED:
            if pattern.search(text):
                name = cat
                break
        counts[name] = counts.get(name, 0) + 1
        kernel[name] = kernel.get(name, 0) + (1 if in_kernel else 0)
    if total == 0:
        print("no samples")
        return
    print(f"| {total} samples, {per_request} µs of CPU per request | share | µs per request | of which in the kernel |")
    print("|---|---:|---:|---:|")
    for name, c in sorted(counts.items(), key=lambda kv: -kv[1]):
        share = c / total
        k = kernel[name] / total
        print(f"| {name} | {100 * share:.1f} % | {share * per_request:.2f} | {k * per_request:.2f} |")
    k_all = sum(kernel.values()) / total
    print(f"| **all** | 100 % | {per_request:.2f} | {k_all * per_request:.2f} |")


if __name__ == "__main__":
    main()
