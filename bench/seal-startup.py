#!/usr/bin/env python3
# bench/seal-startup.py: start-up to unsealed-and-healthy of a SQLite keyhaven, for each
# seal, median of STARTS starts (interleaved round by round, so the seals see the same
# machine load):
#   shamir   no [seal]; the driver enters the one unseal share as soon as the listener
#            answers (the plain figure: what a script or an operator's tool would do)
#   pkcs11   [seal] type = "pkcs11" on a SoftHSM2 token of its own (AES-GCM)
#   transit  [seal] type = "transit" against a second keyhaven (SQLite, already running)
# Measured: spawn -> first 200 from /v1/sys/health (polled every 2 ms), and the server's
# CPU time (utime+stime from /proc/<pid>/stat) at that moment.
#
# Usage: bench/seal-startup.py PATH/TO/keyhaven [STARTS]
# Needs softhsm2-util and pkcs11-tool (Debian softhsm2, opensc). Traffic goes to
# 127.0.0.1 only; every process started here is killed (by PID) before exit.
import atexit, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

BIN = sys.argv[1]
STARTS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
LIB = "/usr/lib/softhsm/libsofthsm2.so"
TICK = os.sysconf("SC_CLK_TCK")
procs = []
work = tempfile.mkdtemp(prefix="kh-seal-bench.")


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(work, ignore_errors=True)


atexit.register(cleanup)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(addr, method, path, body=None, token=None):
    req = urllib.request.Request(
        f"{addr}/v1/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"X-Vault-Token": token or "", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        b = r.read()
        return json.loads(b) if b else None


def status_of(url):
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return None


def cpu_ms(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICK


def site(name, seal):
    d = os.path.join(work, name)
    os.makedirs(d)
    port = free_port()
    cfg = os.path.join(d, "keyhaven.toml")
    text = (
        f'[storage]\nbackend = "sqlite"\npath = "{d}/data/kh.db"\n'
        f'[listener]\naddress = "127.0.0.1:{port}"\ntls_disable = true\n'
    )
    if seal:
        text += "[seal]\n" + seal
    open(cfg, "w").write(text)
    return cfg, f"http://127.0.0.1:{port}"


def start(cfg, env=None):
    p = subprocess.Popen(
        [BIN, "server", "--config", cfg],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    procs.append(p)
    return p


def stop(p):
    p.kill()
    p.wait()
    procs.remove(p)


def wait_code(addr, want, deadline):
    while time.time() < deadline:
        if status_of(f"{addr}/v1/sys/health") in want:
            return True
        time.sleep(0.002)
    raise SystemExit(f"{addr} did not answer {want}")


# The HSM: a token of its own and an AES key.
hsm = os.path.join(work, "hsm")
os.makedirs(f"{hsm}/tokens")
open(f"{hsm}/softhsm2.conf", "w").write(
    f"directories.tokendir = {hsm}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n"
)
hsm_env = dict(os.environ, SOFTHSM2_CONF=f"{hsm}/softhsm2.conf")
subprocess.run(
    ["softhsm2-util", "--init-token", "--free", "--label", "bench", "--so-pin", "1234", "--pin", "5678"],
    env=hsm_env, check=True, stdout=subprocess.DEVNULL,
)
subprocess.run(
    ["pkcs11-tool", "--module", LIB, "--token-label", "bench", "--login", "--pin", "5678",
     "--keygen", "--key-type", "AES:32", "--label", "kek", "--id", "01", "--usage-decrypt", "--sensitive"],
    env=hsm_env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
open(f"{hsm}/pin", "w").write("5678\n")

# The transit remote: a keyhaven with a transit key, left running.
remote_cfg, remote = site("remote", "")
rp = start(remote_cfg)
wait_code(remote, {501}, time.time() + 10)
init = call(remote, "PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
call(remote, "PUT", "sys/unseal", {"key": init["keys"][0]})
rroot = init["root_token"]
call(remote, "POST", "sys/mounts/transit", {"type": "transit"}, rroot)
call(remote, "POST", "transit/keys/unseal", {}, rroot)
open(f"{work}/transit-token", "w").write(rroot + "\n")

sites = {
    "shamir": site("shamir", ""),
    "pkcs11": site(
        "pkcs11",
        f'type = "pkcs11"\nlib = "{LIB}"\ntoken_label = "bench"\npin_file = "{hsm}/pin"\nkey_label = "kek"\n',
    ),
    "transit": site(
        "transit",
        f'type = "transit"\naddress = "{remote}"\ntoken_file = "{work}/transit-token"\nkey_name = "unseal"\n',
    ),
}
shamir_key = None
for name, (cfg, addr) in sites.items():
    p = start(cfg, hsm_env)
    wait_code(addr, {501}, time.time() + 10)
    if name == "shamir":
        i = call(addr, "PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
        shamir_key = i["keys"][0]
    else:
        call(addr, "PUT", "sys/init", {"recovery_shares": 1, "recovery_threshold": 1})
    stop(p)

results = {name: ([], []) for name in sites}
for _ in range(STARTS):
    for name, (cfg, addr) in sites.items():
        t0 = time.time()
        p = start(cfg, hsm_env)
        if name == "shamir":
            wait_code(addr, {503}, t0 + 10)
            call(addr, "PUT", "sys/unseal", {"key": shamir_key})
        wait_code(addr, {200}, t0 + 10)
        wall = (time.time() - t0) * 1000
        results[name][0].append(wall)
        results[name][1].append(cpu_ms(p.pid))
        stop(p)

plain = statistics.median(results["shamir"][0])
print(f"starts per seal: {STARTS} (interleaved); binary: {BIN}")
print(f"{'seal':8} {'median ms':>10} {'min':>7} {'max':>7} {'over plain ms':>14} {'cpu ms median':>14}")
for name, (walls, cpus) in results.items():
    med = statistics.median(walls)
    print(
        f"{name:8} {med:10.1f} {min(walls):7.1f} {max(walls):7.1f} {med - plain:14.1f} "
        f"{statistics.median(cpus):14.1f}"
    )
