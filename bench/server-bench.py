"""Driver of bench/server.sh (standard library only): starts the servers, measures
start-up, idle RSS and KV v2 throughput per server CPU-second, prints the tables.

Run it through bench/server.sh, which installs OpenBao and oha and sets the environment.
"""
import http.client
import json
import os
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
SCEN_NAMES = E["SCENARIOS"].split()
SERVER_NAMES = E["SERVERS"].split()
STARTS, PORT = int(E["STARTS"]), int(E["PORT"])
NICE = ["nice", "-n", E["NICE"]] if E["NICE"] != "0" else []
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
HOST = "127.0.0.1"  # loopback only, on purpose
SECRET = {"user": "bench", "password": "0123456789abcdef0123456789abcdef"}

LIVE = {}  # pid -> Popen, every process this driver started and has not reaped


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    LIVE.pop(p.pid, None)


def stop_all(*_):
    for p in list(LIVE.values()):
        stop(p)


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGHUP, on_signal)


# ---------------------------------------------------------------- HTTP helpers
def request(port, method, path, body=None, token=None, timeout=10):
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-Vault-Token"] = token
        c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = c.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data.strip() else {})
    finally:
        c.close()


def call(port, method, path, body=None, token=None, ok=(200, 204)):
    status, j = request(port, method, path, body, token)
    if status not in ok:
        raise RuntimeError(f"{method} {path} on :{port} -> {status} {j}")
    return j


def wait_status(p, port, path, want, t_spawn, timeout=60.0, interval=0.002):
    """Poll until `path` answers `want`; return seconds since t_spawn."""
    deadline = t_spawn + timeout
    while time.perf_counter() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"server exited with {p.returncode} before becoming healthy")
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=1)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == want:
                return time.perf_counter() - t_spawn
        except OSError:
            pass
        time.sleep(interval)
    raise RuntimeError(f"no {want} from {path} on :{port} within {timeout}s")


def port_free(port):
    s = __import__("socket").socket()
    try:
        return s.connect_ex((HOST, port)) != 0
    finally:
        s.close()


# ---------------------------------------------------------------- /proc helpers
def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


def proc_threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def sys_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


# ---------------------------------------------------------------- servers
class Server:
    """One running server: process, port, root token, and what it is."""

    def __init__(self, name, port):
        self.name, self.port, self.token, self.proc = name, port, "root", None
        self.log = open(f"{WORK}/{name}.log", "ab")
        self.db = f"{WORK}/keyhaven-sqlite/keyhaven.db"
        self.cfg = f"{WORK}/keyhaven-sqlite.toml"

    def argv(self):
        addr = f"{HOST}:{self.port}"
        if self.name == "keyhaven-dev":
            return [KEYHAVEN, "server", "--dev", "--dev-listen-address", addr, "--dev-root-token-id", "root"]
        if self.name == "keyhaven-sqlite":
            return [KEYHAVEN, "server", "--config", self.cfg]
        if self.name == "openbao-dev":
            return [BAO, "server", "-dev", "-dev-root-token-id=root", f"-dev-listen-address={addr}"]
        raise SystemExit(f"unknown server {self.name}")

    def health_path(self):
        # the SQLite server starts sealed: count the first answer of a running HTTP server
        # (Vault's sealedcode/uninitcode flags turn it into a 200)
        if self.name == "keyhaven-sqlite":
            return "/v1/sys/health?sealedcode=200&uninitcode=200"
        return "/v1/sys/health"

    def spawn(self):
        if not port_free(self.port):
            raise SystemExit(f"something already listens on {HOST}:{self.port}; set PORT")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(NICE + self.argv(), stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        LIVE[self.proc.pid] = self.proc
        return t0

    def start(self):
        t0 = self.spawn()
        return wait_status(self.proc, self.port, self.health_path(), 200, t0)

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def fresh_sqlite(self):
        d = os.path.dirname(self.db)
        if os.path.isdir(d):
            shutil.rmtree(d)
        with open(self.cfg, "w") as f:
            f.write(f'[storage]\nbackend = "sqlite"\npath = "{self.db}"\n\n'
                    f'[listener]\naddress = "{HOST}:{self.port}"\ntls_disable = true\n')

    def setup(self):
        """Bring the started server to: unsealed, KV v2 at secret/, secret/bench written."""
        p = self.port
        if self.name == "keyhaven-sqlite":
            st = call(p, "GET", "/v1/sys/init")
            if not st.get("initialized"):
                j = call(p, "PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
                self.unseal_key, self.token = j["keys"][0], j["root_token"]
            self.unseal()
            mounts = call(p, "GET", "/v1/sys/mounts", token=self.token)
            if "secret/" not in mounts.get("data", mounts):
                call(p, "POST", "/v1/sys/mounts/secret", {"type": "kv-v2"}, self.token)
        # the dev servers mount KV v2 at secret/ themselves; wait until it answers
        for _ in range(500):
            status, j = request(p, "POST", "/v1/secret/data/bench", {"data": SECRET}, self.token)
            if status in (200, 204):
                break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"{self.name}: cannot write secret/bench: {status} {j}")
        got = call(p, "GET", "/v1/secret/data/bench", token=self.token)
        assert got["data"]["data"] == SECRET, got
        body = {"data": SECRET}
        call(p, "POST", "/v1/secret/data/bench-write", body, self.token)
        call(p, "POST", "/v1/secret/data/bench-k0000", body, self.token)

    def unseal(self):
        t0 = time.perf_counter()
        j = call(self.port, "PUT", "/v1/sys/unseal", {"key": self.unseal_key})
        assert j.get("sealed") is False, j
        return time.perf_counter() - t0


# ---------------------------------------------------------------- load
def scenario(name, port):
    base = f"http://{HOST}:{port}/v1"
    if name == "kv_read":
        return ["-m", "GET", f"{base}/secret/data/bench"]
    body = f"{WORK}/body_kv_write.json"
    with open(body, "w") as f:
        json.dump({"data": SECRET}, f)
    if name == "kv_write":
        return ["-m", "POST", "-T", "application/json", "-D", body, f"{base}/secret/data/bench-write"]
    if name == "kv_write_keys":  # one of 10,000 keys per request
        # oha's --rand-regex-url treats '.' literally ("dot is disabled"): do not escape it,
        # '\\.' would turn the host into a random one
        pattern = f"http://{HOST}:{port}/v1/secret/data/bench-k[0-9]{{4}}"
        check_urls(pattern, port)
        return ["-m", "POST", "-T", "application/json", "-D", body, "--rand-regex-url", pattern]
    raise SystemExit(f"unknown scenario {name}")


CHECKED = set()


def check_urls(pattern, port):
    """Refuse to load unless every URL the pattern generates is on this loopback port."""
    if pattern in CHECKED:
        return
    out = subprocess.run(["oha", "--dump-urls", "200", "--rand-regex-url", pattern],
                         capture_output=True, text=True, check=True).stdout.split()
    prefix = f"http://{HOST}:{port}/v1/secret/data/bench-k"
    if len(out) != 200 or not all(u.startswith(prefix) for u in out):
        raise SystemExit(f"generated URLs leave {HOST}:{port}: {out[:3]}")
    CHECKED.add(pattern)


def run_load(srv, name, c, seconds):
    cmd = (["oha", "-z", f"{seconds}s", "-c", str(c), "--no-tui", "--output-format", "json",
            "-H", f"X-Vault-Token: {srv.token}"] + scenario(name, srv.port))
    out = subprocess.run(NICE + cmd, capture_output=True, text=True, check=True).stdout
    j = json.loads(out)
    codes = j.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    errs = sum(codes.values()) - ok + sum(
        v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k)
    m = j["metrics"]
    total = sum(codes.values())
    # count only successful requests: an error answer is cheap and must not inflate the figure
    ok_rps = m["requests_per_sec"] * ok / total if total else 0.0
    return cmd, ok_rps, m["latency_ms"]["p50"], m["latency_ms"]["p99"], errs, codes


def measure(srv, name, c, rep, raw, rows):
    if WARM > 0:
        run_load(srv, name, c, WARM)
    pid = srv.proc.pid
    load1 = os.getloadavg()[0]
    s0, b0 = proc_ticks(pid), sys_busy()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    cmd, rps, p50, p99, errs, codes = run_load(srv, name, c, DUR)
    el = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1, b1 = proc_ticks(pid), sys_busy()
    cores = (s1 - s0) / HZ / el
    lg = (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) / el
    machine = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * os.cpu_count()
    rec = dict(server=srv.name, rep=rep, scenario=name, conc=c, rps=rps, per_cpu_s=rps / max(cores, 1e-9),
               p50_ms=p50, p99_ms=p99, errors=errs, codes=codes, server_cores=cores, loadgen_cores=lg,
               machine_busy_cores=machine, load1=load1, threads=proc_threads(pid),
               cmd=" ".join(cmd).replace(srv.token, "<token>"))
    raw.write(json.dumps(rec) + "\n")
    raw.flush()
    rows.setdefault((srv.name, name, c), []).append(rec)
    print(f"rep {rep} {srv.name:15s} {name:13s} c={c:<3d} {rps:9.0f} req/s  p50 {p50:7.2f} ms  "
          f"p99 {p99:7.2f} ms  err {errs}  server {cores:.2f} cores  {rec['per_cpu_s']:8.0f} req/CPU-s  "
          f"loadgen {lg:.2f}  machine {machine:.2f}  load1 {load1:.1f}", flush=True)


# ---------------------------------------------------------------- machine notes
def fsync_latency(n=100):
    """Median and p90 of write(4 KiB)+fsync on the disk that holds WORK."""
    path = f"{WORK}/fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    lat = []
    try:
        for i in range(n):
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            lat.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return statistics.median(lat) * 1e3, lat[int(0.9 * (n - 1))] * 1e3


def med(v):
    return statistics.median(v)


def main():
    t_all = time.time()
    os.makedirs(WORK, exist_ok=True)
    servers = {n: Server(n, PORT + i) for i, n in enumerate(["keyhaven-dev", "keyhaven-sqlite", "openbao-dev"])}
    for n in SERVER_NAMES:
        if n not in servers:
            raise SystemExit(f"unknown server {n}")
    fs_med, fs_p90 = fsync_latency()
    notes = dict(start_load=os.getloadavg(), fsync_ms=(fs_med, fs_p90), cpus=os.cpu_count())
    print(f"load average {notes['start_load'][0]:.2f} {notes['start_load'][1]:.2f} {notes['start_load'][2]:.2f}; "
          f"fsync on {WORK}: median {fs_med:.2f} ms, p90 {fs_p90:.2f} ms", flush=True)

    # ---- 1. start-up time to healthy, one server at a time
    startup, extra = {}, {}
    for n in SERVER_NAMES:
        srv = servers[n]
        if n == "keyhaven-sqlite":  # create and initialise the database once; then restarts
            srv.fresh_sqlite()
            srv.start()
            srv.setup()
            srv.stop()
        ts, unseal = [], []
        for _ in range(STARTS):
            ts.append(srv.start())
            if n == "keyhaven-sqlite":
                unseal.append(ts[-1] + srv.unseal())
            srv.stop()
        startup[n] = ts
        if unseal:
            extra["keyhaven-sqlite-unsealed"] = unseal
        print(f"start-up {n:15s} median {med(ts)*1e3:8.1f} ms  (min {min(ts)*1e3:.1f}, max {max(ts)*1e3:.1f}, "
              f"n={len(ts)})" + (f"; to unsealed median {med(unseal)*1e3:.1f} ms" if unseal else ""), flush=True)

    # ---- 2. throughput, one server at a time; idle RSS after set-up and a few requests
    rows, rss = {}, {}
    raw = open(f"{WORK}/raw.jsonl", "w")
    for n in SERVER_NAMES:
        srv = servers[n]
        srv.start()
        srv.setup()
        for _ in range(20):
            call(srv.port, "GET", "/v1/secret/data/bench", token=srv.token)
            call(srv.port, "POST", "/v1/secret/data/bench-write", {"data": SECRET}, srv.token)
        time.sleep(1.0)
        pid = srv.proc.pid
        rss[n] = dict(idle=proc_status(pid, "VmRSS"), anon=proc_status(pid, "RssAnon"),
                      file=proc_status(pid, "RssFile"), threads=proc_threads(pid))
        print(f"idle RSS {n:15s} {rss[n]['idle']:.1f} MiB (anonymous {rss[n]['anon']:.1f}, "
              f"file-backed {rss[n]['file']:.1f}), {rss[n]['threads']} threads", flush=True)
        for rep in range(1, REPS + 1):
            for s in SCEN_NAMES:
                for c in CONCS:
                    measure(srv, s, c, rep, raw, rows)
        time.sleep(1.0)
        rss[n]["after"] = proc_status(pid, "VmRSS")
        rss[n]["hwm"] = proc_status(pid, "VmHWM")
        if n == "keyhaven-sqlite":
            rss[n]["db_mib"] = sum(os.path.getsize(os.path.join(os.path.dirname(srv.db), f))
                                   for f in os.listdir(os.path.dirname(srv.db))) / 2**20
        srv.stop()
    raw.close()
    notes["end_load"] = os.getloadavg()
    notes["wall_s"] = time.time() - t_all
    report(rows, startup, extra, rss, notes)


def report(rows, startup, extra, rss, notes):
    names = SERVER_NAMES
    def errors(r):
        n = sum(x["errors"] for x in r)
        if not n:
            return "0"
        tot = {}
        for x in r:
            for k, v in x["codes"].items():
                tot[k] = tot.get(k, 0) + v
        return f"{n} of {sum(tot.values())} ({', '.join(f'{k}: {v}' for k, v in sorted(tot.items()))})"

    head = (f"keyhaven {E['KEYHAVEN_VERSION']} (built from {E['KEYHAVEN_COMMIT']}) vs OpenBao {E['BAO_VERSION']}; "
            f"{E['LOADGEN_VERSION']}; {DUR}s per run after {WARM}s warm-up, {REPS} runs each, "
            f"concurrency {' '.join(map(str, CONCS))}; {notes['cpus']} CPUs; "
            f"load average at start {notes['start_load'][0]:.2f}/{notes['start_load'][1]:.2f}/"
            f"{notes['start_load'][2]:.2f}, at end {notes['end_load'][0]:.2f}/{notes['end_load'][1]:.2f}/"
            f"{notes['end_load'][2]:.2f}; fsync (4 KiB) on the database disk: median "
            f"{notes['fsync_ms'][0]:.2f} ms, p90 {notes['fsync_ms'][1]:.2f} ms; wall {notes['wall_s']:.0f}s")
    L = [head, "", "Detail (medians of the runs; min-max in brackets):", "",
         "| server | scenario | conc | ok req/s | ok req per server CPU-s | server cores | p50 ms | p99 ms | errors (codes) | loadgen cores | machine busy cores | load1 |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        for s in SCEN_NAMES:
            for c in CONCS:
                r = rows[(n, s, c)]
                rps, pc = [x["rps"] for x in r], [x["per_cpu_s"] for x in r]
                L.append(f"| {n} | {s} | {c} | {med(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
                         f"{med(pc):,.0f} ({min(pc):,.0f}-{max(pc):,.0f}) | "
                         f"{med([x['server_cores'] for x in r]):.2f} | {med([x['p50_ms'] for x in r]):.2f} | "
                         f"{med([x['p99_ms'] for x in r]):.2f} | {errors(r)} | "
                         f"{med([x['loadgen_cores'] for x in r]):.2f} | {med([x['machine_busy_cores'] for x in r]):.2f} | "
                         f"{med([x['load1'] for x in r]):.1f} |")

    def cell(n, s, key):  # best concurrency's median
        best = None
        for c in CONCS:
            r = rows.get((n, s, c))
            if r:
                v = med([x[key] for x in r])
                if best is None or v > best[0]:
                    best = (v, c)
        return best

    def fmt(b, n=None, s=None):
        if b is None:
            return "-"
        r = rows.get((n, s, b[1]), [])
        bad = sum(x["errors"] for x in r)
        tot = sum(sum(x["codes"].values()) for x in r)
        note = f", {100 * bad / tot:.0f}% errors" if bad and tot else ""
        return f"{b[0]:,.0f} (c={b[1]}{note})"

    L += ["", "Summary (best concurrency's median; successful requests only):", "",
          "| figure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for s, title in [("kv_read", "KV v2 read"), ("kv_write", "KV v2 write, one key"),
                     ("kv_write_keys", "KV v2 write, random of 10k keys")]:
        if s not in SCEN_NAMES:
            continue
        L.append(f"| {title}: req per server CPU-s | " + " | ".join(fmt(cell(n, s, "per_cpu_s"), n, s) for n in names) + " |")
        L.append(f"| {title}: req/s (wall) | " + " | ".join(fmt(cell(n, s, "rps"), n, s) for n in names) + " |")
    L.append("| durable writes | " + " | ".join("yes (SQLite WAL, synchronous=FULL)" if n == "keyhaven-sqlite"
                                              else "no (in memory)" for n in names) + " |")
    L.append("| start-up to healthy, median (min-max) | " + " | ".join(
        f"{med(startup[n])*1e3:.1f} ms ({min(startup[n])*1e3:.1f}-{max(startup[n])*1e3:.1f})" +
        (" (sealed)" if n == "keyhaven-sqlite" else "") for n in names) + " |")
    if "keyhaven-sqlite-unsealed" in extra:
        u = extra["keyhaven-sqlite-unsealed"]
        L.append("| start-up to unsealed, median | " + " | ".join(
            f"{med(u)*1e3:.1f} ms" if n == "keyhaven-sqlite" else "-" for n in names) + " |")
    L.append("| idle RSS | " + " | ".join(f"{rss[n]['idle']:.1f} MiB" for n in names) + " |")
    L.append("| idle RSS: anonymous / file-backed (mostly the executable's code) | " + " | ".join(
        f"{rss[n]['anon']:.1f} / {rss[n]['file']:.1f} MiB" for n in names) + " |")
    L.append("| RSS after the load (peak) | " + " | ".join(
        f"{rss[n]['after']:.1f} MiB ({rss[n]['hwm']:.1f})" for n in names) + " |")
    L.append("| threads when idle | " + " | ".join(str(rss[n]["threads"]) for n in names) + " |")
    if "keyhaven-sqlite" in rss:
        L.append(f"\nSQLite files after the run: {rss['keyhaven-sqlite']['db_mib']:.1f} MiB.")

    if "openbao-dev" in names:
        L += ["", "Ratios keyhaven / OpenBao dev, measured in this run:", ""]
        for kh in [n for n in names if n.startswith("keyhaven")]:
            for s in SCEN_NAMES:
                for key, unit in [("per_cpu_s", "per server CPU-s"), ("rps", "per wall s")]:
                    a, b = cell(kh, s, key), cell("openbao-dev", s, key)
                    if a and b:
                        L.append(f"- {s} {unit}: {kh} {a[0]:,.0f} / openbao-dev {b[0]:,.0f} = {a[0]/b[0]:.1f}x")
            L.append(f"- start-up: openbao-dev {med(startup['openbao-dev'])*1e3:.0f} ms / {kh} "
                     f"{med(startup[kh])*1e3:.1f} ms = {med(startup['openbao-dev'])/med(startup[kh]):.0f}x faster")
            L.append(f"- idle RSS: openbao-dev {rss['openbao-dev']['idle']:.1f} MiB / {kh} "
                     f"{rss[kh]['idle']:.1f} MiB = {rss['openbao-dev']['idle']/rss[kh]['idle']:.1f}x smaller")
    if "keyhaven-sqlite" in names:
        for s in ("kv_write", "kv_write_keys"):
            a = cell("keyhaven-sqlite", s, "rps")
            if a:
                L.append(f"- durable {s}: keyhaven-sqlite {a[0]:,.0f} writes/s = {a[0]/140:.1f}x the 140 writes/s "
                         f"OpenBao publishes for raft (target >= 20x = 2,800/s)")
    table = "\n".join(L)
    print("\n" + table)
    with open(f"{WORK}/summary.md", "w") as f:
        f.write(table + "\n")
    print(f"\nraw results: {WORK}/raw.jsonl, tables: {WORK}/summary.md, server logs: {WORK}/*.log")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
