//! Testkit: boots the real `keyhaven` binary on 127.0.0.1 with an ephemeral port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the binary under test.
pub fn keyhaven_bin() -> &'static str {
    env!("CARGO_BIN_EXE_keyhaven")
}

/// A running server process; killed on drop.
pub struct TestServer {
    child: Child,
    addr: String,
    root_token: Option<String>,
    unseal_key: Option<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn pump(stream: impl std::io::Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
}

impl TestServer {
    /// `keyhaven server --dev` on an ephemeral loopback port.
    pub fn dev() -> TestServer {
        Self::dev_with(&[])
    }

    /// Dev server with extra arguments.
    pub fn dev_with(extra: &[&str]) -> TestServer {
        let mut args = vec!["server", "--dev", "--dev-listen-address", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut server = Self::spawn(&args);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let out = server.stdout.lock().unwrap();
                let find = |p: &str| {
                    out.iter()
                        .find_map(|l| l.strip_prefix(p).map(|s| s.trim().to_owned()))
                };
                if let (Some(a), Some(t), Some(k)) = (
                    find("Api Address:"),
                    find("Root Token:"),
                    find("Unseal Key:"),
                ) {
                    server.addr = a;
                    server.root_token = Some(t);
                    server.unseal_key = Some(k);
                    break;
                }
            }
            server.assert_alive();
            assert!(
                Instant::now() < deadline,
                "dev server did not start: {}",
                server.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `keyhaven server --config FILE`; the config must log in JSON so the bound address
    /// can be read from the `listening` event.
    pub fn with_config(config: &Path) -> TestServer {
        let mut server = Self::spawn(&["server", "--config", config.to_str().unwrap()]);
        server.wait_listening();
        server
    }

    /// Wait for the `listening` event of a server logging JSON and take its address.
    fn wait_listening(&mut self) {
        let server = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = server.stderr.lock().unwrap().iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                if v["message"] != "listening" {
                    return None;
                }
                Some(format!(
                    "{}://{}",
                    v["scheme"].as_str()?,
                    v["address"].as_str()?
                ))
            });
            if let Some(addr) = found {
                server.addr = addr;
                break;
            }
            server.assert_alive();
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                server.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`TestServer::with_config`], with the soft `RLIMIT_NOFILE` of the server
    /// process set to `nofile` (through `sh -c 'ulimit -n …; exec …'`, so the process
    /// id is the server's).
    pub fn with_config_and_nofile(config: &Path, nofile: u64) -> TestServer {
        let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
        let mut command = Command::new("sh");
        command.args([
            "-c",
            &script,
            keyhaven_bin(),
            "server",
            "--config",
            config.to_str().unwrap(),
        ]);
        let mut server = Self::spawn_command(command);
        server.wait_listening();
        server
    }

    fn spawn(args: &[&str]) -> TestServer {
        let mut command = Command::new(keyhaven_bin());
        command.args(args);
        Self::spawn_command(command)
    }

    fn spawn_command(mut command: Command) -> TestServer {
        let mut child = command
            .env_remove("KEYHAVEN_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keyhaven");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        pump(child.stdout.take().unwrap(), stdout.clone());
        pump(child.stderr.take().unwrap(), stderr.clone());
        TestServer {
            child,
            addr: String::new(),
            root_token: None,
            unseal_key: None,
            stdout,
            stderr,
        }
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("server exited early with {status}: {}", self.logs());
        }
    }

    /// Base address, e.g. `http://127.0.0.1:41234`.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Root token printed by dev mode.
    pub fn root_token(&self) -> String {
        self.root_token
            .clone()
            .expect("dev servers print a root token")
    }

    /// Unseal key printed by dev mode.
    pub fn unseal_key(&self) -> String {
        self.unseal_key
            .clone()
            .expect("dev servers print an unseal key")
    }

    /// Everything the process wrote to stderr (its log) so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory (`VmRSS` in `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// How many descriptors the process has open.
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Host and port, e.g. `127.0.0.1:41234`.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        self.addr
            .rsplit_once("://")
            .map_or(self.addr.as_str(), |(_, a)| a)
            .parse()
            .unwrap()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write a config for a plain-HTTP SQLite server in `dir` and return its path.
pub fn sqlite_config(dir: &Path) -> PathBuf {
    let path = dir.join("keyhaven.toml");
    let text = format!(
        "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n\n[listener]\naddress = \"127.0.0.1:0\"\ntls_disable = true\n\n[log]\nformat = \"json\"\nlevel = \"debug\"\n",
        dir.join("data/keyhaven.db").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// One HTTP call; returns the status and the JSON body (Null when empty).
pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    call_raw(
        method,
        url,
        token,
        body.map(|b| serde_json::to_vec(b).unwrap()),
    )
}

/// One HTTP call with a raw body.
pub fn call_raw(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut rb = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    if let Some(t) = token {
        rb = rb.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        rb = rb.header("Content-Type", "application/json").body(b);
    }
    let resp = rb.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, json)
}

/// Initialize (n shares, threshold t) and unseal through the API; returns (keys, root token).
pub fn init_unseal(addr: &str, n: u8, t: u8) -> (Vec<String>, String) {
    let (status, init) = call(
        "PUT",
        &format!("{addr}/v1/sys/init"),
        None,
        Some(&serde_json::json!({"secret_shares": n, "secret_threshold": t})),
    );
    assert_eq!(status, 200, "{init}");
    let keys: Vec<String> = init["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let root = init["root_token"].as_str().unwrap().to_owned();
    unseal(addr, &keys[..usize::from(t)]);
    (keys, root)
}

/// Submit unseal keys until unsealed.
pub fn unseal(addr: &str, keys: &[String]) {
    let mut last = Value::Null;
    for k in keys {
        let (status, body) = call(
            "PUT",
            &format!("{addr}/v1/sys/unseal"),
            None,
            Some(&serde_json::json!({ "key": k })),
        );
        assert_eq!(status, 200, "{body}");
        last = body;
    }
    assert_eq!(last["sealed"], false, "{last}");
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                out.push(p)
            }
        }
    }
    out
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Raise this process's soft `RLIMIT_NOFILE` to at least `want` descriptors (within the
/// hard limit); returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= want {
        return current;
    }
    let target = limit.maximum.map_or(want, |max| max.min(want));
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        },
    );
    if raised.is_ok() { target } else { current }
}

/// The status of a GET, or `None` if nothing answers.
pub fn call_status(url: &str) -> Option<u16> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    client.get(url).send().ok().map(|r| r.status().as_u16())
}
