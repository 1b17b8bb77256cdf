"""Driver of bench/transit.sh (standard library only): keyhaven and the OpenBao dev server,
both with a file audit device, transit encrypt / decrypt / datakey / batch, interleaved runs,
requests per server CPU-second and per wall second, and the ratios keyhaven / OpenBao.

Run it through bench/transit.sh, which installs OpenBao and oha and sets the environment.
The HTTP, /proc and process helpers are those of bench/server-bench.py.
"""
import base64
import importlib.util
import json
import os
import resource
import shutil
import signal
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

WORK, KEYHAVEN, BAO = E["WORK"], E["KEYHAVEN"], E["BAO"]
DUR, WARM, REPS = int(E["DURATION"]), int(E["WARMUP"]), int(E["REPEATS"])
CONCS = [int(c) for c in E["CONCURRENCY"].split()]
SCEN_NAMES = E["TRANSIT_SCENARIOS"].split()
PORT, FSYNC = int(E["PORT"]), E["FSYNC"]
NICE = ["nice", "-n", E["NICE"]] if E["NICE"] != "0" else []
HOST = sb.HOST  # loopback only, on purpose
HZ = os.sysconf("SC_CLK_TCK")
# a second keyhaven binary (e.g. an older build), run as keyhaven-base beside the first
KEYHAVEN_BASE = E.get("KEYHAVEN_BASE", "")
NAMES = ["keyhaven", "openbao"] + (["keyhaven-base"] if KEYHAVEN_BASE else [])

PT32 = base64.b64encode(bytes(range(32))).decode()  # 32-byte plaintext
BATCH = [{"plaintext": PT32} for _ in range(100)]
ITEMS = {"encrypt": 1, "decrypt": 1, "datakey": 1, "batch_encrypt100": 100, "batch_decrypt100": 100}
PATHS = {"encrypt": "/v1/transit/encrypt/bench", "decrypt": "/v1/transit/decrypt/bench",
         "datakey": "/v1/transit/datakey/plaintext/bench", "batch_encrypt100": "/v1/transit/encrypt/bench",
         "batch_decrypt100": "/v1/transit/decrypt/bench"}


class Server:
    def __init__(self, name, port):
        self.name, self.port = name, port
        self.kind = "keyhaven" if name.startswith("keyhaven") else name
        self.binary = KEYHAVEN_BASE if name == "keyhaven-base" else KEYHAVEN
        self.dir = f"{WORK}/{name}"
        self.audit_log = f"{self.dir}/audit.log"
        self.token, self.proc, self.bodies = None, None, {}

    def start(self):
        if not sb.port_free(self.port):
            raise SystemExit(f"something already listens on {HOST}:{self.port}; set PORT")
        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.dir)
        log = open(f"{self.dir}/server.log", "ab")
        addr = f"{HOST}:{self.port}"
        if self.kind == "keyhaven":
            cfg = f"{self.dir}/keyhaven.toml"
            with open(cfg, "w") as f:
                f.write(f'[storage]\nbackend = "sqlite"\npath = "{self.dir}/data/keyhaven.db"\n\n'
                        f'[listener]\naddress = "{addr}"\ntls_disable = true\n\n[log]\nlevel = "warn"\n\n'
                        f'[[audit]]\ntype = "file"\nname = "bench"\npath = "{self.audit_log}"\n'
                        f'description = "benchmark audit device"\nfsync = {FSYNC}\n')
            argv = [self.binary, "server", "--config", cfg]
            health = "/v1/sys/health?sealedcode=200&uninitcode=200"
        else:
            # OpenBao refuses API-created audit devices unless unsafe_allow_api_audit_creation
            # is set, so the device is declared in a config file instead.
            hcl = f"{self.dir}/audit.hcl"
            with open(hcl, "w") as f:
                f.write(f'audit "file" "bench" {{\n  description = "benchmark audit device"\n'
                        f'  options {{\n    file_path = "{self.audit_log}"\n  }}\n}}\n')
            argv = [BAO, "server", "-dev", "-dev-root-token-id=root", f"-dev-listen-address={addr}",
                    f"-config={hcl}"]
            health = "/v1/sys/health"
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(NICE + argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        sb.LIVE[self.proc.pid] = self.proc
        sb.wait_status(self.proc, self.port, health, 200, t0)
        self.setup()

    def setup(self):
        p, call = self.port, sb.call
        if self.kind == "keyhaven":
            j = call(p, "PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
            self.token = j["root_token"]
            j = call(p, "PUT", "/v1/sys/unseal", {"key": j["keys"][0]})
            assert j.get("sealed") is False, j
        else:
            self.token = "root"
            for _ in range(500):  # the dev server unseals itself; wait until the token works
                if sb.request(p, "GET", "/v1/sys/mounts", token=self.token)[0] == 200:
                    break
                time.sleep(0.01)
        call(p, "POST", "/v1/sys/mounts/transit", {"type": "transit"}, self.token)
        call(p, "POST", "/v1/transit/keys/bench", {"type": "aes256-gcm96"}, self.token)
        listed = call(p, "GET", "/v1/sys/audit", token=self.token)
        assert "bench/" in listed.get("data", listed), f"{self.name}: audit device missing: {listed}"
        # bodies; the ciphertexts come from this server, and every scenario must work once
        ct = call(p, "POST", "/v1/transit/encrypt/bench", {"plaintext": PT32}, self.token)["data"]["ciphertext"]
        assert ct.startswith("vault:v1:"), ct
        got = call(p, "POST", "/v1/transit/decrypt/bench", {"ciphertext": ct}, self.token)["data"]["plaintext"]
        assert got == PT32, got
        res = call(p, "POST", "/v1/transit/encrypt/bench", {"batch_input": BATCH}, self.token)["data"]["batch_results"]
        assert len(res) == 100 and all(r["ciphertext"].startswith("vault:v1:") for r in res), res[:2]
        bct = [{"ciphertext": r["ciphertext"]} for r in res]
        res = call(p, "POST", "/v1/transit/decrypt/bench", {"batch_input": bct}, self.token)["data"]["batch_results"]
        assert len(res) == 100 and all(r["plaintext"] == PT32 for r in res), res[:2]
        dk = call(p, "POST", "/v1/transit/datakey/plaintext/bench", {}, self.token)["data"]
        assert len(base64.b64decode(dk["plaintext"])) == 32 and dk["ciphertext"].startswith("vault:v1:"), dk
        bodies = {"encrypt": {"plaintext": PT32}, "decrypt": {"ciphertext": ct}, "datakey": {},
                  "batch_encrypt100": {"batch_input": BATCH}, "batch_decrypt100": {"batch_input": bct}}
        for n in SCEN_NAMES:
            if n not in bodies:
                raise SystemExit(f"unknown scenario {n}")
            path = f"{self.dir}/body_{n}.json"
            with open(path, "w") as f:
                json.dump(bodies[n], f)
            self.bodies[n] = path

    def reset_audit(self):
        """Keep the disk small between runs."""
        if not os.path.exists(self.audit_log):
            return
        if self.kind == "keyhaven":
            old = self.audit_log + ".old"
            os.rename(self.audit_log, old)
            self.proc.send_signal(signal.SIGHUP)
            for _ in range(200):  # the device reopens its file on SIGHUP
                if os.path.exists(self.audit_log):
                    break
                time.sleep(0.01)
            os.unlink(old)
        else:
            open(self.audit_log, "w").close()


def run_load(srv, name, c, seconds):
    url = f"http://{HOST}:{srv.port}{PATHS[name]}"
    if not url.startswith(f"http://{HOST}:{srv.port}/v1/transit/"):
        raise SystemExit(f"refusing to load {url}")
    cmd = ["oha", "-z", f"{seconds}s", "-c", str(c), "--no-tui", "--output-format", "json",
           "-m", "POST", "-H", f"X-Vault-Token: {srv.token}", "-T", "application/json",
           "-D", srv.bodies[name], url]
    out = subprocess.run(NICE + cmd, capture_output=True, text=True, check=True).stdout
    j = json.loads(out)
    codes = j.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    total = sum(codes.values())
    errs = total - ok + sum(v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k)
    m = j["metrics"]
    # count only successful requests: an error answer is cheap and must not inflate the figure
    ok_rps = m["requests_per_sec"] * ok / total if total else 0.0
    return cmd, ok_rps, m["latency_ms"]["p50"], m["latency_ms"]["p99"], errs, codes


def measure(srv, name, c, rep, raw, rows):
    srv.reset_audit()
    if WARM > 0:
        run_load(srv, name, c, WARM)
    pid = srv.proc.pid
    load1 = os.getloadavg()[0]
    s0, b0 = sb.proc_ticks(pid), sb.sys_busy()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    cmd, rps, p50, p99, errs, codes = run_load(srv, name, c, DUR)
    el = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1, b1 = sb.proc_ticks(pid), sb.sys_busy()
    cores = (s1 - s0) / HZ / el
    lg = (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) / el
    machine = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * os.cpu_count()
    audit_mib = os.path.getsize(srv.audit_log) / 2**20 if os.path.exists(srv.audit_log) else 0.0
    k = ITEMS[name]
    rec = dict(server=srv.name, rep=rep, scenario=name, conc=c, rps=rps, per_cpu_s=rps / max(cores, 1e-9),
               items_per_s=rps * k, items_per_cpu_s=rps * k / max(cores, 1e-9),
               p50_ms=p50, p99_ms=p99, errors=errs, codes=codes, server_cores=cores, loadgen_cores=lg,
               machine_busy_cores=machine, load1=load1, audit_mib=audit_mib,
               cmd=" ".join(cmd).replace(srv.token, "<token>"))
    raw.write(json.dumps(rec) + "\n")
    raw.flush()
    rows.setdefault((srv.name, name, c), []).append(rec)
    print(f"rep {rep} {srv.name:13s} {name:16s} c={c:<3d} {rps:8.0f} req/s  {rec['per_cpu_s']:8.0f} req/CPU-s  "
          f"{rec['items_per_s']:9.0f} items/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  err {errs}  "
          f"server {cores:.2f} cores  loadgen {lg:.2f}  machine {machine:.2f}  audit {audit_mib:.0f} MiB  "
          f"load1 {load1:.1f}", flush=True)


def main():
    t_all = time.time()
    os.makedirs(WORK, exist_ok=True)
    # 10 ports apart: OpenBao's dev server also listens on port + 1 (cluster)
    servers = [Server(n, PORT + 10 * i) for i, n in enumerate(NAMES)]
    for s in servers:
        s.start()
        print(f"{s.name:13s} up on :{s.port}, pid {s.proc.pid}, transit key ready, file audit device on",
              flush=True)
    start_load = os.getloadavg()
    print(f"load average {start_load[0]:.2f} {start_load[1]:.2f} {start_load[2]:.2f}", flush=True)
    rows, raw = {}, open(f"{WORK}/raw.jsonl", "w")
    for rep in range(1, REPS + 1):
        for name in SCEN_NAMES:
            for c in CONCS:
                for s in servers:
                    measure(s, name, c, rep, raw, rows)
    raw.close()
    for s in servers:
        s.reset_audit()
    for s in servers:
        sb.stop(s.proc)  # keyhaven closes its audit file with a close record
    if os.path.exists(f"{WORK}/keyhaven/audit.log"):
        v = subprocess.run([KEYHAVEN, "audit", "verify", f"{WORK}/keyhaven/audit.log"],
                           capture_output=True, text=True)
        print(f"keyhaven audit verify of the last file: exit {v.returncode}: {v.stdout.strip()} {v.stderr.strip()}")
    report(rows, start_load, os.getloadavg(), time.time() - t_all)


def report(rows, start_load, end_load, wall):
    med = sb.med

    def errors(r):
        n = sum(x["errors"] for x in r)
        if not n:
            return "0"
        tot = {}
        for x in r:
            for k, v in x["codes"].items():
                tot[k] = tot.get(k, 0) + v
        return f"{n} of {sum(tot.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(tot.items()))})"

    L = [f"keyhaven {E['KEYHAVEN_VERSION']} (built from {E['KEYHAVEN_COMMIT']}) vs OpenBao {E['BAO_VERSION']} "
         f"(dev server); {E['LOADGEN_VERSION']}; root token on both; file audit device on both "
         f"(keyhaven fsync={FSYNC}); {DUR}s per run after {WARM}s warm-up, {REPS} interleaved runs each, "
         f"concurrency {' '.join(map(str, CONCS))}; {os.cpu_count()} CPUs; load average at start "
         f"{start_load[0]:.2f}/{start_load[1]:.2f}/{start_load[2]:.2f}, at end "
         f"{end_load[0]:.2f}/{end_load[1]:.2f}/{end_load[2]:.2f}; wall {wall:.0f}s", "",
         "Detail (medians of the runs; min-max in brackets; successful requests only):", "",
         "| server | scenario | conc | ok req/s | ok req per server CPU-s | items/s | server cores | p50 ms | p99 ms | errors (codes) | loadgen cores | machine busy cores | load1 |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in SCEN_NAMES:
        for c in CONCS:
            for n in NAMES:
                r = rows[(n, s, c)]
                rps, pc = [x["rps"] for x in r], [x["per_cpu_s"] for x in r]
                L.append(f"| {n} | {s} | {c} | {med(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                         f"{med(pc):,.0f} ({min(pc):,.0f}-{max(pc):,.0f}) | "
                         f"{med([x['items_per_s'] for x in r]):,.0f} | "
                         f"{med([x['server_cores'] for x in r]):.2f} | {med([x['p50_ms'] for x in r]):.2f} | "
                         f"{med([x['p99_ms'] for x in r]):.2f} | {errors(r)} | "
                         f"{med([x['loadgen_cores'] for x in r]):.2f} | "
                         f"{med([x['machine_busy_cores'] for x in r]):.2f} | {med([x['load1'] for x in r]):.1f} |")

    def best(n, s, key):  # best concurrency's median
        b = None
        for c in CONCS:
            r = rows.get((n, s, c))
            if r:
                v = med([x[key] for x in r])
                if b is None or v > b[0]:
                    b = (v, c)
        return b

    L += ["", "Summary (best concurrency's median) and ratios keyhaven / OpenBao:", "",
          "| scenario | figure | keyhaven | OpenBao | ratio | target |", "|---|---|---:|---:|---:|---|"]
    for s in SCEN_NAMES:
        batch = ITEMS[s] > 1
        figs = ([("items_per_s", "items/s (wall)"), ("items_per_cpu_s", "items per server CPU-s")] if batch else []) + \
               [("per_cpu_s", "req per server CPU-s"), ("rps", "req/s (wall)")]
        for key, title in figs:
            a, b = best("keyhaven", s, key), best("openbao", s, key)
            ratio = a[0] / b[0] if a and b and b[0] else float("nan")
            target = ""
            if batch and key == "items_per_s":
                target = f"≥ 5x: {'met' if ratio >= 5 else 'not met'}"
            elif not batch and key == "per_cpu_s":
                target = f"≥ 10x: {'met' if ratio >= 10 else 'not met'}"
            L.append(f"| {s} | {title} | {a[0]:,.0f} (c={a[1]}) | {b[0]:,.0f} (c={b[1]}) | {ratio:.1f}x | {target} |")
    if KEYHAVEN_BASE:
        L += ["", f"The base binary (KEYHAVEN_BASE, built from {E.get('KEYHAVEN_BASE_COMMIT', '?')}) in the "
              "same run (best concurrency's median):", "",
              "| scenario | figure | keyhaven | keyhaven-base | OpenBao | keyhaven / OpenBao | "
              "keyhaven-base / OpenBao | keyhaven / keyhaven-base |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
        for s in SCEN_NAMES:
            for key, title in [("per_cpu_s", "req per server CPU-s"), ("rps", "req/s (wall)")]:
                a, z, b = best("keyhaven", s, key), best("keyhaven-base", s, key), best("openbao", s, key)
                L.append(f"| {s} | {title} | {a[0]:,.0f} (c={a[1]}) | {z[0]:,.0f} (c={z[1]}) | "
                         f"{b[0]:,.0f} (c={b[1]}) | {a[0] / b[0]:.2f}x | {z[0] / b[0]:.2f}x | {a[0] / z[0]:.3f} |")
    table = "\n".join(L)
    print("\n" + table)
    with open(f"{WORK}/summary.md", "w") as f:
        f.write(table + "\n")
    print(f"\nraw results: {WORK}/raw.jsonl, tables: {WORK}/summary.md, server logs: {WORK}/*/server.log")


def profile():
    """TRANSIT_MODE=profile (bench/transit-profile.sh): keyhaven alone, encrypt at the first
    concurrency, `perf record` attached to the server for DURATION seconds of the load."""
    srv = Server("keyhaven", PORT)
    srv.start()
    c = CONCS[0]
    print(f"keyhaven up on :{srv.port}, pid {srv.proc.pid}; warm-up {WARM}s, encrypt c={c}", flush=True)
    if WARM > 0:
        run_load(srv, "encrypt", c, WARM)
    srv.reset_audit()
    perf = subprocess.Popen(E["PERF_CMD"].split() + ["-o", f"{WORK}/perf.data", "-p", str(srv.proc.pid)],
                            stdout=subprocess.DEVNULL, stderr=open(f"{WORK}/perf.log", "w"))
    sb.LIVE[perf.pid] = perf
    time.sleep(0.5)
    load1 = os.getloadavg()[0]
    k0, t0 = sb.proc_ticks(srv.proc.pid), time.time()
    _, rps, p50, p99, errs, _ = run_load(srv, "encrypt", c, DUR)
    el, k1 = time.time() - t0, sb.proc_ticks(srv.proc.pid)
    perf.send_signal(signal.SIGINT)
    perf.wait(120)
    sb.LIVE.pop(perf.pid, None)
    cores = (k1 - k0) / HZ / el
    print(f"under perf: {rps:.0f} req/s, {rps / max(cores, 1e-9):.0f} req per server CPU-s, "
          f"server {cores:.2f} cores, p50 {p50:.2f} ms, p99 {p99:.2f} ms, errors {errs}, load1 {load1:.1f}",
          flush=True)
    sb.stop(srv.proc)


if __name__ == "__main__":
    try:
        profile() if E.get("TRANSIT_MODE") == "profile" else main()
    finally:
        sb.stop_all()
