"""Driver of bench/ceiling.sh (standard library only): keyhaven, the ceiling server and
optionally the OpenBao dev server, over plain HTTP and TLS; KV v2 read and transit encrypt
of 32 bytes, interleaved runs, requests per wall second and per server CPU-second, the
ratios to the ceiling and each server's TLS cost.

Run it through bench/ceiling.sh, which builds and installs what it needs, makes the TLS
certificate and sets the environment. The process and /proc helpers are those of
bench/server-bench.py.
"""
import base64
import http.client
import importlib.util
import json
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import time

E = os.environ
# server-bench.py reads these at import; they do not matter here
for k, v in (("SCENARIOS", ""), ("SERVERS", ""), ("STARTS", "1")):
    E.setdefault(k, v)
_spec = importlib.util.spec_from_file_location(
    "server_bench", os.path.join(os.path.dirname(os.path.abspath(__file__)), "server-bench.py"))
sb = importlib.util.module_from_spec(_spec)
sys.dont_write_bytecode = True  # no __pycache__ in the checkout
_spec.loader.exec_module(sb)  # also installs its SIGTERM/SIGINT/SIGHUP handlers (stop_all)

WORK, KEYHAVEN, CEILING, BAO = E["WORK"], E["KEYHAVEN"], E["CEILING"], E["BAO"]
DUR, WARM, REPS = int(E["DURATION"]), int(E["WARMUP"]), int(E["REPEATS"])
CONCS = [int(c) for c in E["CONCURRENCY"].split()]
SCEN_NAMES = E["CEILING_SCENARIOS"].split()
SERVER_NAMES = E["CEILING_SERVERS"].split()
TRANSPORTS = E["TRANSPORTS"].split()
PORT = int(E["PORT"])
NICE = ["nice", "-n", E["NICE"]] if E["NICE"] != "0" else []
TLS_DIR = E["TLS_DIR"]
CERT, KEY = f"{TLS_DIR}/cert.pem", f"{TLS_DIR}/key.pem"
HOST = sb.HOST  # loopback only, on purpose
HZ = os.sysconf("SC_CLK_TCK")
ALL_SERVERS = ["keyhaven-dev", "keyhaven-sqlite", "ceiling", "openbao-dev",
               "keyhaven-base-dev", "keyhaven-base-sqlite"]
# a second keyhaven binary (e.g. an older build), run as keyhaven-base-* beside the first
KEYHAVEN_BASE = E.get("KEYHAVEN_BASE", "")

SECRET = {"user": "bench", "password": "0123456789abcdef0123456789abcdef"}  # as bench/server.sh
PT32 = base64.b64encode(bytes(range(32))).decode()  # 32-byte plaintext, as bench/transit.sh
SCENARIOS = {  # name: (method, path, body)
    "kv_read": ("GET", "/v1/secret/data/bench", None),
    "encrypt": ("POST", "/v1/transit/encrypt/bench", {"plaintext": PT32}),
}

for n in SCEN_NAMES:
    if n not in SCENARIOS:
        raise SystemExit(f"unknown scenario {n}; known: {' '.join(SCENARIOS)}")
for n in SERVER_NAMES:
    if n not in ALL_SERVERS:
        raise SystemExit(f"unknown server {n}; known: {' '.join(ALL_SERVERS)}")
for t in TRANSPORTS:
    if t not in ("plain", "tls"):
        raise SystemExit(f"unknown transport {t}; use plain and/or tls")
if "ceiling" not in SERVER_NAMES:
    raise SystemExit("SERVERS must include ceiling")
if any(n.startswith("keyhaven-base-") for n in SERVER_NAMES) and not KEYHAVEN_BASE:
    raise SystemExit("keyhaven-base-* servers need KEYHAVEN_BASE=<binary>")

SSL_CONTEXT = ssl.create_default_context(cafile=CERT) if "tls" in TRANSPORTS else None


class Target:
    """One server process answering over one transport."""

    def __init__(self, server, transport, port):
        self.server, self.transport, self.port = server, transport, port
        # keyhaven-base-dev runs KEYHAVEN_BASE as keyhaven-dev runs KEYHAVEN, and so on
        self.kind = server.replace("keyhaven-base-", "keyhaven-")
        self.binary = KEYHAVEN_BASE if server.startswith("keyhaven-base-") else KEYHAVEN
        self.name = f"{server}/{transport}"
        self.tls = transport == "tls"
        self.dir = f"{WORK}/{server}-{transport}"
        self.token, self.proc, self.sizes = "root", None, {}

    # ---- HTTP(S)
    def request(self, method, path, body=None, token=None, timeout=10):
        if self.tls:
            c = http.client.HTTPSConnection(HOST, self.port, timeout=timeout, context=SSL_CONTEXT)
        else:
            c = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if token:
                headers["X-Vault-Token"] = token
            c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            r = c.getresponse()
            data = r.read()
            return r.status, r.getheaders(), data
        finally:
            c.close()

    def call(self, method, path, body=None, token=None, ok=(200, 204)):
        status, _, data = self.request(method, path, body, token)
        j = json.loads(data) if data.strip() else {}
        if status not in ok:
            raise RuntimeError(f"{self.name}: {method} {path} -> {status} {j}")
        return j

    # ---- process
    def argv(self):
        addr = f"{HOST}:{self.port}"
        if self.kind == "keyhaven-dev":
            return [self.binary, "server", "--dev", "--dev-listen-address", addr,
                    "--dev-root-token-id", "root", "--log-level", "warn"]
        if self.kind == "keyhaven-sqlite":
            cfg = f"{self.dir}/keyhaven.toml"
            listener = (f'tls_cert_file = "{CERT}"\ntls_key_file = "{KEY}"\n' if self.tls
                        else "tls_disable = true\n")
            with open(cfg, "w") as f:
                f.write(f'[storage]\nbackend = "sqlite"\npath = "{self.dir}/data/keyhaven.db"\n\n'
                        f'[listener]\naddress = "{addr}"\n{listener}\n[log]\nlevel = "warn"\n')
            return [self.binary, "server", "--config", cfg]
        if self.server == "ceiling":
            return [CEILING, "--listen", addr] + (["--tls-cert", CERT, "--tls-key", KEY] if self.tls else [])
        if self.server == "openbao-dev":
            argv = [BAO, "server", "-dev", "-dev-root-token-id=root"]
            if not self.tls:
                return argv + [f"-dev-listen-address={addr}"]
            # the TLS listener is declared in a config file; the dev listener (plain, unused)
            # goes two ports up, as each listener's cluster listener takes the next port
            hcl = f"{self.dir}/tls.hcl"
            with open(hcl, "w") as f:
                f.write(f'listener "tcp" {{\n  address = "{addr}"\n  tls_cert_file = "{CERT}"\n'
                        f'  tls_key_file = "{KEY}"\n}}\n')
            return argv + [f"-dev-listen-address={HOST}:{self.port + 2}", f"-config={hcl}"]
        raise SystemExit(f"unknown server {self.server}")

    def ready(self):
        """A request that answers 200 once the server serves."""
        if self.server == "ceiling":
            return "GET", "/v1/secret/data/bench", "root"
        if self.kind == "keyhaven-sqlite":
            return "GET", "/v1/sys/health?sealedcode=200&uninitcode=200", None
        return "GET", "/v1/sys/health", None

    def start(self):
        for p in range(self.port, self.port + 4):
            if not sb.port_free(p):
                raise SystemExit(f"something already listens on {HOST}:{p}; set PORT")
        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir, mode=0o700)
        log = open(f"{self.dir}/server.log", "ab")
        self.proc = subprocess.Popen(NICE + self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        sb.LIVE[self.proc.pid] = self.proc
        method, path, token = self.ready()
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.dir}/server.log")
            try:
                if self.request(method, path, token=token, timeout=1)[0] == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: not ready within 60 s; see {self.dir}/server.log")
            time.sleep(0.02)
        self.setup()

    def setup(self):
        """KV v2 at secret/ with secret/bench, transit at transit/ with key "bench"; then
        every scenario once, checked, and the size of its answer."""
        if self.kind == "keyhaven-sqlite":
            j = self.call("PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
            self.token = j["root_token"]
            j = self.call("PUT", "/v1/sys/unseal", {"key": j["keys"][0]})
            assert j.get("sealed") is False, j
            self.call("POST", "/v1/sys/mounts/secret", {"type": "kv-v2"}, self.token)
        if self.server != "ceiling":
            for _ in range(500):  # dev servers mount secret/ themselves; wait until it answers
                if self.request("POST", "/v1/secret/data/bench", {"data": SECRET}, self.token)[0] in (200, 204):
                    break
                time.sleep(0.01)
            else:
                raise RuntimeError(f"{self.name}: cannot write secret/bench")
            self.call("POST", "/v1/sys/mounts/transit", {"type": "transit"}, self.token)
            self.call("POST", "/v1/transit/keys/bench", {"type": "aes256-gcm96"}, self.token)
        # the ceiling too: its fixed answers must look like the real ones
        status, _, _ = self.request("GET", "/v1/secret/data/bench", token="not-the-token")
        assert status == 403, f"{self.name}: a wrong token got {status}"
        for n in SCEN_NAMES:
            method, path, body = SCENARIOS[n]
            status, headers, data = self.request(method, path, body, self.token)
            assert status == 200, f"{self.name}: {n} -> {status} {data[:200]!r}"
            j = json.loads(data)
            if n == "kv_read":
                assert j["data"]["data"] == SECRET, f"{self.name}: {j}"
            else:
                assert j["data"]["ciphertext"].startswith("vault:v1:"), f"{self.name}: {j}"
            self.sizes[n] = (len(data), sorted(k.lower() for k, _ in headers))
            if body is not None:
                with open(f"{self.dir}/body_{n}.json", "w") as f:
                    json.dump(body, f)
            # and through the load generator (TLS included), before any run counts
            cmd, _, _, _, errs, codes = run_load(self, n, 1, None)
            if errs or not codes:
                shown = " ".join(cmd).replace(self.token, "<token>")
                raise RuntimeError(f"{self.name}: {n} through oha failed: {codes} ({shown})")

    def stop(self):
        if self.proc is not None:
            sb.stop(self.proc)
            self.proc = None


def run_load(t, name, c, seconds):
    method, path, body = SCENARIOS[name]
    url = f"{'https' if t.tls else 'http'}://{HOST}:{t.port}{path}"
    if not url.split("://", 1)[1].startswith(f"{HOST}:{t.port}/v1/"):
        raise SystemExit(f"refusing to load {url}")
    # for a duration, or (seconds=None) a handful of requests
    amount = ["-z", f"{seconds}s"] if seconds is not None else ["-n", "4"]
    cmd = ["oha"] + amount + ["-c", str(c), "--no-tui", "--output-format", "json",
                              "-m", method, "-H", f"X-Vault-Token: {t.token}"]
    if t.tls:
        cmd += ["--cacert", CERT]  # HTTP/1.1 all the same (oha's default)
    if body is not None:
        cmd += ["-T", "application/json", "-D", f"{t.dir}/body_{name}.json"]
    cmd.append(url)
    out = subprocess.run(NICE + cmd, capture_output=True, text=True, check=True).stdout
    j = json.loads(out)
    codes = j.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    total = sum(codes.values())
    errs = total - ok + sum(v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k)
    m = j["metrics"]
    # count only successful requests: an error answer is cheap and must not inflate the figure
    ok_rps = m["requests_per_sec"] * ok / total if total else 0.0
    nan = float("nan")  # oha reports no latency when every request failed
    return cmd, ok_rps, m["latency_ms"]["p50"] or nan, m["latency_ms"]["p99"] or nan, errs, codes


def measure(t, name, c, rep, raw, rows):
    if WARM > 0:
        run_load(t, name, c, WARM)
    pid = t.proc.pid
    load1 = os.getloadavg()[0]
    s0, b0 = sb.proc_ticks(pid), sb.sys_busy()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    cmd, rps, p50, p99, errs, codes = run_load(t, name, c, DUR)
    el = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1, b1 = sb.proc_ticks(pid), sb.sys_busy()
    cores = (s1 - s0) / HZ / el
    lg = (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) / el
    machine = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * os.cpu_count()
    rec = dict(server=t.server, transport=t.transport, rep=rep, scenario=name, conc=c, rps=rps,
               per_cpu_s=rps / max(cores, 1e-9), p50_ms=p50, p99_ms=p99, errors=errs, codes=codes,
               server_cores=cores, loadgen_cores=lg, machine_busy_cores=machine, load1=load1,
               threads=sb.proc_threads(pid), cmd=" ".join(cmd).replace(t.token, "<token>"))
    raw.write(json.dumps(rec) + "\n")
    raw.flush()
    rows.setdefault((t.server, t.transport, name, c), []).append(rec)
    print(f"rep {rep} {t.name:21s} {name:8s} c={c:<3d} {rps:8.0f} req/s  {rec['per_cpu_s']:8.0f} req/CPU-s  "
          f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  err {errs}  server {cores:.2f} cores  "
          f"loadgen {lg:.2f}  machine {machine:.2f}  load1 {load1:.1f}", flush=True)


def med(v):
    return statistics.median(v)


def main():
    t_all = time.time()
    os.umask(0o077)  # config files, databases and logs for this user only
    os.makedirs(WORK, exist_ok=True)
    targets, i = [], 0
    for s in SERVER_NAMES:
        for tr in TRANSPORTS:
            if s.replace("keyhaven-base-", "keyhaven-") == "keyhaven-dev" and tr == "tls":
                continue  # dev mode serves plain HTTP only
            targets.append(Target(s, tr, PORT + 4 * i))
            i += 1
    start_load = os.getloadavg()
    print(f"load average {start_load[0]:.2f} {start_load[1]:.2f} {start_load[2]:.2f}; "
          f"{len(targets)} server processes", flush=True)
    for t in targets:
        t.start()
        print(f"up: {t.name:21s} pid {t.proc.pid:<7d} port {t.port}  answers: " + ", ".join(
            f"{n} {t.sizes[n][0]} bytes" for n in SCEN_NAMES), flush=True)
    rows = {}
    with open(f"{WORK}/raw.jsonl", "w") as raw:
        for rep in range(1, REPS + 1):
            for n in SCEN_NAMES:
                for c in CONCS:
                    for t in targets:
                        measure(t, n, c, rep, raw, rows)
    for t in targets:
        t.stop()
    end_load = os.getloadavg()
    report(targets, rows, start_load, end_load, time.time() - t_all)


def report(targets, rows, start_load, end_load, wall):
    def errors(r):
        n = sum(x["errors"] for x in r)
        if not n:
            return "0"
        tot = {}
        for x in r:
            for k, v in x["codes"].items():
                tot[k] = tot.get(k, 0) + v
        return f"{n} of {sum(tot.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(tot.items()))})"

    def cell(s, tr, n, c, key):
        r = rows.get((s, tr, n, c))
        return med([x[key] for x in r]) if r else None

    bao = f"; {E['BAO_VERSION']}" if E.get("BAO_VERSION") else ""
    L = [f"{E['KEYHAVEN_VERSION']} (built from {E['KEYHAVEN_COMMIT']}) vs the ceiling "
         f"(bench/ceiling){bao}; {E['LOADGEN_VERSION']}; {DUR}s per run after {WARM}s warm-up, "
         f"{REPS} runs each, concurrency {' '.join(map(str, CONCS))}; {os.cpu_count()} CPUs; load average "
         f"at start {start_load[0]:.2f}/{start_load[1]:.2f}/{start_load[2]:.2f}, at end "
         f"{end_load[0]:.2f}/{end_load[1]:.2f}/{end_load[2]:.2f}; wall {wall:.0f}s",
         "", "Answers (body bytes; header names besides date and content-length):", ""]
    for t in targets:
        for n in SCEN_NAMES:
            size, names = t.sizes[n]
            names = [h for h in names if h not in ("date", "content-length")]
            L.append(f"- {t.name} {n}: {size} bytes; {', '.join(names)}")
    L += ["", "Detail (medians of the runs; min-max in brackets):", "",
          "| server | transport | scenario | conc | ok req/s | ok req per server CPU-s | server cores | "
          "p50 ms | p99 ms | errors (codes) | loadgen cores | machine busy cores | load1 |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in SCEN_NAMES:
        for c in CONCS:
            for t in targets:
                r = rows[(t.server, t.transport, n, c)]
                rps, pc = [x["rps"] for x in r], [x["per_cpu_s"] for x in r]
                L.append(f"| {t.server} | {t.transport} | {n} | {c} | {med(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                         f"{med(pc):,.0f} ({min(pc):,.0f}-{max(pc):,.0f}) | "
                         f"{med([x['server_cores'] for x in r]):.2f} | {med([x['p50_ms'] for x in r]):.2f} | "
                         f"{med([x['p99_ms'] for x in r]):.2f} | {errors(r)} | "
                         f"{med([x['loadgen_cores'] for x in r]):.2f} | {med([x['machine_busy_cores'] for x in r]):.2f} | "
                         f"{med([x['load1'] for x in r]):.1f} |")

    L += ["", "Against the ceiling (same scenario, transport and concurrency; medians; "
          "ratio = server / ceiling):", "",
          "| server | scenario | transport | conc | req per CPU-s | ceiling | ratio | req/s (wall) | ceiling | ratio |",
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in [x for x in SERVER_NAMES if x != "ceiling"]:
        for n in SCEN_NAMES:
            for tr in TRANSPORTS:
                for c in CONCS:
                    a, b = cell(s, tr, n, c, "per_cpu_s"), cell("ceiling", tr, n, c, "per_cpu_s")
                    aw, bw = cell(s, tr, n, c, "rps"), cell("ceiling", tr, n, c, "rps")
                    if None in (a, b, aw, bw):
                        continue
                    L.append(f"| {s} | {n} | {tr} | {c} | {a:,.0f} | {b:,.0f} | **{a / b:.2f}** | "
                             f"{aw:,.0f} | {bw:,.0f} | {aw / bw:.2f} |")

    others = [(s, "openbao-dev", "OpenBao") for s in SERVER_NAMES
              if s.startswith("keyhaven-") and "openbao-dev" in SERVER_NAMES]
    others += [(s, s.replace("keyhaven-", "keyhaven-base-"), "the base binary") for s in SERVER_NAMES
               if s.startswith("keyhaven-") and not s.startswith("keyhaven-base-")
               and s.replace("keyhaven-", "keyhaven-base-") in SERVER_NAMES]
    if others:
        L += ["", "Against OpenBao and the base binary (KEYHAVEN_BASE, built from "
              f"{E.get('KEYHAVEN_BASE_COMMIT', '?')}), per server CPU-second (medians):", "",
              "| server | against | scenario | transport | conc | server req per CPU-s | other req per CPU-s | ratio |",
              "|---|---|---|---|---:|---:|---:|---:|"]
        for s, o, label in others:
            for n in SCEN_NAMES:
                for tr in TRANSPORTS:
                    for c in CONCS:
                        a, b = cell(s, tr, n, c, "per_cpu_s"), cell(o, tr, n, c, "per_cpu_s")
                        if None in (a, b):
                            continue
                        L.append(f"| {s} | {o} | {n} | {tr} | {c} | {a:,.0f} | {b:,.0f} | **{a / b:.2f}** |")

    if "plain" in TRANSPORTS and "tls" in TRANSPORTS:
        L += ["", "TLS cost = 1 - (TLS / plain), same server, scenario and concurrency (medians):", "",
              "| server | scenario | conc | plain req per CPU-s | TLS req per CPU-s | TLS cost per CPU-s | "
              "plain req/s | TLS req/s | TLS cost per wall s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for s in SERVER_NAMES:
            for n in SCEN_NAMES:
                for c in CONCS:
                    p, q = cell(s, "plain", n, c, "per_cpu_s"), cell(s, "tls", n, c, "per_cpu_s")
                    pw, qw = cell(s, "plain", n, c, "rps"), cell(s, "tls", n, c, "rps")
                    if None in (p, q, pw, qw):
                        continue
                    L.append(f"| {s} | {n} | {c} | {p:,.0f} | {q:,.0f} | **{100 * (1 - q / p):.1f} %** | "
                             f"{pw:,.0f} | {qw:,.0f} | {100 * (1 - qw / pw):.1f} % |")
        if "keyhaven-dev" in SERVER_NAMES:
            L.append("\nkeyhaven-dev has no TLS listener (dev mode); keyhaven-sqlite gives keyhaven's TLS cost.")
    table = "\n".join(L)
    print("\n" + table)
    with open(f"{WORK}/summary.md", "w") as f:
        f.write(table + "\n")
    print(f"\nraw results: {WORK}/raw.jsonl, tables: {WORK}/summary.md, server logs: {WORK}/*/server.log")


if __name__ == "__main__":
    try:
        main()
    finally:
        sb.stop_all()
