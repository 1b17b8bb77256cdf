#!/usr/bin/env python3
# Start-up time to healthy (dev server, 7 starts) and idle RSS of a SQLite server after
# init, unseal, a KV write and 40 reads. Usage: bench/startup-rss.py PATH/TO/keyhaven
# Traffic goes to 127.0.0.1 only; every process started here is killed before exit.
import subprocess, time, urllib.request, statistics, socket, os, sys, tempfile, json, shutil
BIN=sys.argv[1]
def free_port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
def wait(url, deadline):
    while time.time()<deadline:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as r:
                if r.status==200: return True
        except Exception: pass
        time.sleep(0.002)
    return False
times=[]; rss=None
for i in range(7):
    port=free_port()
    t0=time.time()
    p=subprocess.Popen([BIN,"server","--dev","--dev-listen-address",f"127.0.0.1:{port}","--dev-root-token-id","root"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    ok=wait(f"http://127.0.0.1:{port}/v1/sys/health", t0+10)
    times.append((time.time()-t0)*1000)
    p.kill(); p.wait()
print("dev start-up ms: median %.1f min %.1f max %.1f"%(statistics.median(times),min(times),max(times)))
# sqlite idle RSS
d=tempfile.mkdtemp(); port=free_port()
open(f"{d}/c.toml","w").write(f'[storage]\nbackend="sqlite"\npath="{d}/kh.db"\n[listener]\naddress="127.0.0.1:{port}"\ntls_disable=true\n')
p=subprocess.Popen([BIN,"server","--config",f"{d}/c.toml"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
import atexit
atexit.register(lambda: (p.poll() is None and p.kill(), shutil.rmtree(d, ignore_errors=True)))
t0=time.time()
wait(f"http://127.0.0.1:{port}/v1/sys/health?sealedcode=200&uninitcode=200", t0+10)
print("sqlite start-up to healthy (uninit) ms: %.1f"%((time.time()-t0)*1000))
def call(m,path,body=None,tok=None):
    req=urllib.request.Request(f"http://127.0.0.1:{port}/v1/{path}",method=m,data=None if body is None else json.dumps(body).encode(),headers={"X-Vault-Token":tok or ""})
    with urllib.request.urlopen(req) as r: b=r.read(); return json.loads(b) if b else None
init=call("PUT","sys/init",{"secret_shares":1,"secret_threshold":1})
call("PUT","sys/unseal",{"key":init["keys"][0]})
root=init["root_token"]
call("POST","sys/mounts/secret",{"type":"kv-v2"},root)
call("POST","secret/data/bench",{"data":{"a":"b"}},root)
for _ in range(40): call("GET","secret/data/bench",None,root)
time.sleep(1)
for l in open(f"/proc/{p.pid}/status"):
    if l.startswith(("VmRSS","RssAnon","RssFile")): print("sqlite", l.strip())
p.kill(); p.wait()
