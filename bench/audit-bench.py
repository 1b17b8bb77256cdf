"""Driver of bench/audit.sh (standard library only): four servers (keyhaven and OpenBao,
each without and with a file audit device), KV v2 read with a non-root token, interleaved
runs, and the audit cost as a fraction of each server's own no-audit throughput.
"""
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

E = os.environ
WORK = E["WORK"]
KEYHAVEN, BAO = E["KEYHAVEN"], E["BAO"]
DUR, WARM, REPS = int(E["DURATION"]), int(E["WARMUP"]), int(E["REPEATS"])
CONCS = [int(c) for c in E["CONCURRENCY"].split()]
PORT = int(E["PORT"])
LOADGEN, FSYNC = E["LOADGEN"], E["FSYNC"]
NICE = ["nice", "-n", E["NICE"]] if E["NICE"] != "0" else []
# The process, HTTP and /proc helpers are those of bench/server-bench.py (which reads
# these at import; they do not matter here).
for k, v in (("SCENARIOS", ""), ("SERVERS", ""), ("STARTS", "1")):
    E.setdefault(k, v)
_spec = importlib.util.spec_from_file_location(
    "server_bench", os.path.join(os.path.dirname(os.path.abspath(__file__)), "server-bench.py"))
sb = importlib.util.module_from_spec(_spec)
sys.dont_write_bytecode = True  # no __pycache__ in the checkout
_spec.loader.exec_module(sb)  # also installs its SIGTERM/SIGINT/SIGHUP handlers (stop_all)
HZ, HOST, LIVE = sb.HZ, sb.HOST, sb.LIVE  # HOST: loopback only, on purpose
stop, stop_all, request, call, proc_ticks = sb.stop, sb.stop_all, sb.request, sb.call, sb.proc_ticks

NAMES = ["keyhaven", "keyhaven+audit", "openbao", "openbao+audit"]
SECRET = {"user": "bench", "password": "0123456789abcdef0123456789abcdef"}
POLICY = 'path "secret/data/*" { capabilities = ["read"] }'


def wait_up(p, port, path, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"server on :{port} exited with {p.returncode}")
        try:
            if request(port, "GET", path, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server on :{port} did not come up")


class Server:
    def __init__(self, name, port):
        self.name, self.port = name, port
        self.audit = name.endswith("+audit")
        self.dir = f"{WORK}/{name.replace('+', '-')}"
        self.audit_log = f"{self.dir}/audit.log"
        self.root, self.token, self.proc = None, None, None

    def start(self):
        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir)
        log = open(f"{self.dir}/server.log", "ab")
        addr = f"{HOST}:{self.port}"
        if self.name.startswith("keyhaven"):
            cfg = f"{self.dir}/keyhaven.toml"
            with open(cfg, "w") as f:
                f.write(f'[storage]\nbackend = "sqlite"\npath = "{self.dir}/data/keyhaven.db"\n\n'
                        f'[listener]\naddress = "{addr}"\ntls_disable = true\n\n[log]\nlevel = "warn"\n')
                if self.audit:
                    f.write(f'\n[[audit]]\ntype = "file"\nname = "bench"\npath = "{self.audit_log}"\n'
                            f'description = "benchmark audit device"\nfsync = {FSYNC}\n')
            argv = [KEYHAVEN, "server", "--config", cfg]
            health = "/v1/sys/health?sealedcode=200&uninitcode=200"
        else:
            argv = [BAO, "server", "-dev", "-dev-root-token-id=root", f"-dev-listen-address={addr}"]
            if self.audit:
                hcl = f"{self.dir}/audit.hcl"
                with open(hcl, "w") as f:
                    f.write(f'audit "file" "bench" {{\n  description = "benchmark audit device"\n'
                            f'  options {{\n    file_path = "{self.audit_log}"\n  }}\n}}\n')
                argv.append(f"-config={hcl}")
            health = "/v1/sys/health"
        self.proc = subprocess.Popen(NICE + argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        LIVE[self.proc.pid] = self.proc
        wait_up(self.proc, self.port, health)
        self.setup()

    def setup(self):
        p = self.port
        if self.name.startswith("keyhaven"):
            j = call(p, "PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
            self.root = j["root_token"]
            call(p, "PUT", "/v1/sys/unseal", {"key": j["keys"][0]})
            call(p, "POST", "/v1/sys/mounts/secret", {"type": "kv", "options": {"version": "2"}}, self.root)
        else:
            self.root = "root"
        for _ in range(500):
            status, _ = request(p, "POST", "/v1/secret/data/bench", {"data": SECRET}, self.root)
            if status in (200, 204):
                break
            time.sleep(0.01)
        call(p, "PUT", "/v1/sys/policies/acl/kvread", {"policy": POLICY}, self.root)
        j = call(p, "POST", "/v1/auth/token/create", {"policies": ["kvread"], "ttl": "24h"}, self.root)
        self.token = j["auth"]["client_token"]
        got = call(p, "GET", "/v1/secret/data/bench", token=self.token)
        assert got["data"]["data"] == SECRET, got
        status, _ = request(p, "POST", "/v1/secret/data/bench", {"data": SECRET}, self.token)
        assert status == 403, f"{self.name}: the kvread token may write ({status})"
        if self.audit:
            listed = call(p, "GET", "/v1/sys/audit", token=self.root)
            assert "bench/" in listed.get("data", listed), listed

    def reset_audit(self):
        """Keep the disk small between runs."""
        if not self.audit or not os.path.exists(self.audit_log):
            return
        if self.name.startswith("keyhaven"):
            old = self.audit_log + ".old"
            os.rename(self.audit_log, old)
            self.proc.send_signal(signal.SIGHUP)
            for _ in range(200):  # the writer reopens at once when idle
                if os.path.exists(self.audit_log):
                    break
                time.sleep(0.01)
            os.unlink(old)
        else:
            open(self.audit_log, "w").close()


LUA = """wrk.method = "GET"
wrk.headers["X-Vault-Token"] = os.getenv("WRK_TOKEN")
"""


def unit_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    x = float(m.group(1))
    return x / 1000 if m.group(2) == "us" else x * 1000 if m.group(2) == "s" else x


def run_load(srv, c, seconds):
    url = f"http://{HOST}:{srv.port}/v1/secret/data/bench"
    if LOADGEN == "oha":
        cmd = ["oha", "-z", f"{seconds}s", "-c", str(c), "--no-tui", "--output-format", "json",
               "-H", f"X-Vault-Token: {srv.token}", url]
        out = subprocess.run(NICE + cmd, capture_output=True, text=True, check=True).stdout
        j = json.loads(out)
        codes = j.get("statusCodeDistribution", {})
        errs = sum(codes.values()) - sum(v for k, v in codes.items() if k.startswith("2"))
        m = j["metrics"]
        return cmd, m["requests_per_sec"], m["latency_ms"]["p50"], m["latency_ms"]["p99"], errs
    cmd = ["wrk", "-t", "2", "-c", str(c), "-d", f"{seconds}s", "--latency", "-s", f"{WORK}/wrk.lua", url]
    out = subprocess.run(NICE + cmd, capture_output=True, text=True, check=True,
                         env=dict(os.environ, WRK_TOKEN=srv.token)).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = unit_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = unit_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errs = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return cmd, rps, p50, p99, errs


def main():
    os.makedirs(WORK, exist_ok=True)
    with open(f"{WORK}/wrk.lua", "w") as f:
        f.write(LUA)
    # 10 ports apart: OpenBao's dev server also listens on port + 1 (cluster)
    servers = [Server(n, PORT + 10 * i) for i, n in enumerate(NAMES)]
    for s in servers:
        s.start()
        print(f"{s.name:15s} up on :{s.port}, pid {s.proc.pid}, non-root token ready", flush=True)
    start_load = os.getloadavg()
    rows, raw = {}, open(f"{WORK}/raw.jsonl", "w")
    t_all = time.time()
    for rep in range(1, REPS + 1):
        for c in CONCS:
            for s in servers:
                s.reset_audit()
                if WARM > 0:
                    run_load(s, c, WARM)
                pid = s.proc.pid
                t0, k0 = time.time(), proc_ticks(pid)
                cmd, rps, p50, p99, errs = run_load(s, c, DUR)
                el, k1 = time.time() - t0, proc_ticks(pid)
                cores = (k1 - k0) / HZ / el
                audit_mib = os.path.getsize(s.audit_log) / 2**20 if s.audit and os.path.exists(s.audit_log) else 0
                rec = dict(server=s.name, rep=rep, conc=c, rps=rps, per_cpu_s=rps / max(cores, 1e-9),
                           cores=cores, p50_ms=p50, p99_ms=p99, errors=errs, audit_mib=audit_mib,
                           load1=os.getloadavg()[0], cmd=" ".join(cmd).replace(s.token, "<token>"))
                raw.write(json.dumps(rec) + "\n")
                raw.flush()
                rows.setdefault((s.name, c), []).append(rec)
                print(f"rep {rep} c={c:<3d} {s.name:15s} {rps:9.0f} req/s  {rec['per_cpu_s']:8.0f} req/CPU-s  "
                      f"server {cores:.2f} cores  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  err {errs}  "
                      f"audit {audit_mib:.0f} MiB  load1 {rec['load1']:.1f}", flush=True)
    raw.close()
    for s in servers:
        stop(s.proc)
    if any(s.name == "keyhaven+audit" for s in servers):
        v = subprocess.run([KEYHAVEN, "audit", "verify", f"{WORK}/keyhaven-audit/audit.log"],
                           capture_output=True, text=True)
        print(f"keyhaven audit verify of the last file: exit {v.returncode}: {v.stdout.strip()} {v.stderr.strip()}")
    report(rows, start_load, time.time() - t_all)


def med(v):
    return statistics.median(v)


def report(rows, start_load, wall):
    end_load = os.getloadavg()
    L = [f"keyhaven {E['KEYHAVEN_VERSION']} (tree {E['KEYHAVEN_COMMIT']}) and OpenBao {E['BAO_VERSION']}; "
         f"{E['LOADGEN_VERSION']}; KV v2 read with a non-root token; {DUR}s per run after {WARM}s warm-up, "
         f"{REPS} interleaved runs each; keyhaven fsync={FSYNC}; {os.cpu_count()} CPUs; load average "
         f"{start_load[0]:.2f} at start, {end_load[0]:.2f} at end; wall {wall:.0f}s", "",
         "| server | conc | req/s median (min-max) | req per server CPU-s | server cores | p50 ms | p99 ms | errors |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in NAMES:
        for c in CONCS:
            r = rows[(n, c)]
            rps = [x["rps"] for x in r]
            L.append(f"| {n} | {c} | {med(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                     f"{med([x['per_cpu_s'] for x in r]):,.0f} | {med([x['cores'] for x in r]):.2f} | "
                     f"{med([x['p50_ms'] for x in r]):.2f} | {med([x['p99_ms'] for x in r]):.2f} | "
                     f"{sum(x['errors'] for x in r)} |")
    L += ["", "Audit cost (1 - with audit / without, medians; per run pair in brackets):", "",
          "| server | conc | loss in req/s | loss in req per server CPU-s |", "|---|---:|---:|---:|"]
    for base in ("keyhaven", "openbao"):
        for c in CONCS:
            a, b = rows[(base, c)], rows[(base + "+audit", c)]
            def loss(key):
                pairs = [1 - y[key] / x[key] for x, y in zip(a, b)]
                return f"{(1 - med([y[key] for y in b]) / med([x[key] for x in a])) * 100:.1f} % " \
                       f"({', '.join(f'{p*100:.0f}' for p in pairs)})"
            L.append(f"| {base} | {c} | {loss('rps')} | {loss('per_cpu_s')} |")
    table = "\n".join(L)
    print("\n" + table)
    with open(f"{WORK}/summary.md", "w") as f:
        f.write(table + "\n")
    print(f"\nraw results: {WORK}/raw.jsonl, table: {WORK}/summary.md")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
