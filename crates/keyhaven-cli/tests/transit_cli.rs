//! `keyhaven transit …` end to end against a dev server: keys, encrypt/decrypt of text
//! and binary files, rotation and rewrap, data keys, sign/verify, HMAC, JSON output and
//! exit codes.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::{TestServer, call, keyhaven_bin};

/// Variables that would change what the CLI does; every run starts without them.
const CLIENT_ENV: &[&str] = &[
    "KEYHAVEN_ADDR",
    "VAULT_ADDR",
    "KEYHAVEN_TOKEN",
    "VAULT_TOKEN",
    "KEYHAVEN_TOKEN_FILE",
    "KEYHAVEN_CACERT",
    "VAULT_CACERT",
    "KEYHAVEN_FORMAT",
    "VAULT_FORMAT",
    "KEYHAVEN_SKIP_VERIFY",
    "VAULT_SKIP_VERIFY",
];

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    fn code(self, code: i32) -> Out {
        assert_eq!(self.code, code, "stdout: {}\n{self:?}", self.text());
        self
    }

    #[track_caller]
    fn ok(self) -> Out {
        self.code(0)
    }
}

struct Cli {
    addr: String,
    token: String,
    home: tempfile::TempDir,
}

impl Cli {
    fn new(server: &TestServer) -> Cli {
        Cli {
            addr: server.addr(),
            token: server.root_token(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn run_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
        let mut cmd = Command::new(keyhaven_bin());
        cmd.arg("transit").args(args);
        for var in CLIENT_ENV {
            cmd.env_remove(var);
        }
        cmd.env("KEYHAVEN_ADDR", &self.addr)
            .env("KEYHAVEN_TOKEN", &self.token)
            .env("HOME", self.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None)
    }

    /// `transit ARGS --format json`, expecting success; the answer's `data`.
    fn data(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        self.run(&all).ok().json()["data"].clone()
    }
}

fn enable_transit(server: &TestServer) {
    let (status, body) = call(
        "POST",
        &format!("{}/v1/sys/mounts/transit", server.addr()),
        Some(&server.root_token()),
        Some(&json!({"type": "transit"})),
    );
    assert!(status == 200 || status == 204, "{status} {body}");
}

fn ciphertext(v: &Value) -> String {
    v["ciphertext"].as_str().unwrap().to_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
fn transit_commands_end_to_end() {
    let server = TestServer::dev();
    enable_transit(&server);
    let cli = Cli::new(&server);
    let dir = cli.home.path().to_owned();

    // Keys: create, list, read.
    cli.run(&["create", "app"]).ok();
    cli.run(&["create", "signer", "--type", "ed25519"]).ok();
    cli.run(&["create", "tenant", "--derived"]).ok();
    let keys = cli.run(&["list", "--format", "json"]).ok().json();
    assert_eq!(keys, json!(["app", "signer", "tenant"]));
    let table = cli.run(&["list"]).ok().text();
    assert!(
        table.starts_with("Keys\n----\n") && table.contains("signer"),
        "{table}"
    );
    let info = cli.data(&["read", "app"]);
    assert_eq!(info["type"], "aes256-gcm96");
    assert_eq!(info["latest_version"], 1);

    // Encrypt text; decrypt prints the raw bytes.
    let ct = ciphertext(&cli.data(&["encrypt", "app", "hello world"]));
    assert!(ct.starts_with("vault:v1:"), "{ct}");
    let out = cli.run(&["decrypt", "app", &ct]).ok();
    assert_eq!(out.stdout, b"hello world");
    // The table shows the ciphertext, never the plaintext; --field gives it bare.
    let table = cli.run(&["encrypt", "app", "s3cr3t-text"]).ok().text();
    assert!(
        table.contains("ciphertext") && table.contains("vault:v1:"),
        "{table}"
    );
    assert!(!table.contains("s3cr3t-text"), "{table}");
    let bare = cli
        .run(&["encrypt", "app", "x", "--field", "ciphertext"])
        .ok()
        .text();
    assert!(
        bare.starts_with("vault:v1:") && !bare.contains('\n'),
        "{bare}"
    );

    // A file of binary bytes round-trips byte-exact, to stdout and to --output.
    let binary: Vec<u8> = (0..=255u8).chain([0, 0xff, b'\n', 0x80]).collect();
    let file = write(&dir, "blob.bin", &binary);
    let ct_file = ciphertext(&cli.data(&["encrypt", "app", "--file", &file]));
    assert_eq!(cli.run(&["decrypt", "app", &ct_file]).ok().stdout, binary);
    let out_path = dir.join("plain.out");
    let out_arg = out_path.display().to_string();
    let out = cli
        .run(&["decrypt", "app", &ct_file, "--output", &out_arg])
        .ok();
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read(&out_path).unwrap(), binary);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    // Stdin, with associated data that must match.
    let ct_aad = ciphertext(&cli.data_stdin(&["encrypt", "app", "-", "--aad", "hdr"], b"\x00in"));
    assert_eq!(
        cli.run(&["decrypt", "app", &ct_aad, "--aad", "hdr"])
            .ok()
            .stdout,
        b"\x00in"
    );
    cli.run(&["decrypt", "app", &ct_aad, "--aad", "other"])
        .code(2);
    // Derived keys need the context.
    let ct_ctx = ciphertext(&cli.data(&["encrypt", "tenant", "t", "--context", "acme"]));
    assert_eq!(
        cli.run(&["decrypt", "tenant", &ct_ctx, "--context", "acme"])
            .ok()
            .stdout,
        b"t"
    );
    cli.run(&["decrypt", "tenant", &ct_ctx, "--context", "other"])
        .code(2);
    // decrypt --format json shows the answer.
    let j = cli.data(&["decrypt", "app", &ct]);
    assert_eq!(j["plaintext"], "aGVsbG8gd29ybGQ=");

    // Rotate: old ciphertexts still decrypt, new ones carry v2; rewrap moves to v2.
    let rotated = cli.data(&["rotate", "app"]);
    assert_eq!(rotated["latest_version"], 2);
    assert_eq!(
        cli.run(&["decrypt", "app", &ct]).ok().stdout,
        b"hello world"
    );
    let ct2 = ciphertext(&cli.data(&["encrypt", "app", "after"]));
    assert!(ct2.starts_with("vault:v2:"), "{ct2}");
    let rewrapped = cli.data(&["rewrap", "app", &ct]);
    let rw = ciphertext(&rewrapped);
    assert!(rw.starts_with("vault:v2:"), "{rw}");
    assert!(rewrapped.get("plaintext").is_none());
    assert_eq!(
        cli.run(&["decrypt", "app", &rw]).ok().stdout,
        b"hello world"
    );

    // Config: raise min_decryption_version; v1 ciphertexts no longer decrypt.
    cli.run(&["config", "app", "min_decryption_version=2"]).ok();
    cli.run(&["decrypt", "app", &ct]).code(2);
    cli.run(&["config", "app", "nonsense"]).code(1);

    // Data keys: plaintext shows the key, wrapped does not.
    let dk = cli.data(&["datakey", "app", "--plaintext"]);
    let plain = dk["plaintext"].as_str().unwrap();
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(plain)
        .unwrap();
    assert_eq!(raw.len(), 32);
    let back = cli.data(&["decrypt", "app", &ciphertext(&dk)]);
    assert_eq!(back["plaintext"], plain);
    let wrapped = cli.data(&["datakey", "app", "--wrapped", "--bits", "512"]);
    assert!(wrapped.get("plaintext").is_none(), "{wrapped}");
    assert!(ciphertext(&wrapped).starts_with("vault:v2:"));
    let default = cli.data(&["datakey", "app"]);
    assert!(default.get("plaintext").is_none(), "{default}");

    // Sign and verify: valid exits 0, tampered input or signature exits 2.
    let sig = cli.data(&["sign", "signer", "payload"])["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(sig.starts_with("vault:v1:"), "{sig}");
    let v = cli.run(&["verify", "signer", &sig, "payload"]).ok().text();
    assert!(v.contains("valid") && v.contains("true"), "{v}");
    let v = cli
        .run(&["verify", "signer", &sig, "payload", "--format", "json"])
        .ok()
        .json();
    assert_eq!(v["data"]["valid"], true);
    cli.run(&["verify", "signer", &sig, "payloaD"]).code(2);
    let mut tampered = sig.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    cli.run(&["verify", "signer", &tampered, "payload"]).code(2);
    let sig_file = cli.data(&["sign", "signer", "--file", &file])["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    cli.run(&["verify", "signer", &sig_file, "--file", &file])
        .ok();

    // HMAC: deterministic per key version and input.
    let h1 = cli.data(&["hmac", "app", "msg"])["hmac"].clone();
    let h2 = cli.data(&["hmac", "app", "msg", "--algorithm", "sha2-256"])["hmac"].clone();
    assert!(h1.as_str().unwrap().starts_with("vault:v2:"), "{h1}");
    assert_eq!(h1, h2);
    assert_ne!(h1, cli.data(&["hmac", "app", "msg2"])["hmac"]);
    let h512 = cli.data(&["hmac", "app", "msg", "--algorithm", "sha2-512"])["hmac"].clone();
    assert_ne!(h1, h512);

    // Exit codes: usage errors 1, API errors 2.
    cli.run(&["encrypt", "app"]).code(1);
    cli.run(&["encrypt", "app", "x", "--file", &file]).code(1);
    cli.run(&["bogus"]).code(1);
    cli.run(&["encrypt", "a/b", "x"]).code(1);
    let out = cli.run(&["decrypt", "app", "vault:v1:not-base64!"]).code(2);
    assert!(out.stderr.contains("Code: 400"), "{}", out.stderr);
    cli.run(&["rotate", "missing"]).code(2);
    let out = cli.run(&["--mount", "nowhere", "list"]).code(2);
    assert!(!out.stderr.is_empty());
}

impl Cli {
    fn data_stdin(&self, args: &[&str], stdin: &[u8]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        self.run_with(&all, Some(stdin)).ok().json()["data"].clone()
    }
}

/// `[limits]` in the server config bounds transit batches; a batch over a limit is a 400
/// that names the limit and its key.
#[test]
fn batch_limits_come_from_the_server_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::sqlite_config(dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[limits]\nmax_batch_items = 2\nmax_batch_bytes = 4096\n");
    std::fs::write(&config, text).unwrap();
    let server = TestServer::with_config(&config);
    let addr = server.addr();
    let (_, root) = crate::support::init_unseal(&addr, 1, 1);
    let (status, body) = call(
        "POST",
        &format!("{addr}/v1/sys/mounts/transit"),
        Some(&root),
        Some(&json!({"type": "transit"})),
    );
    assert!(status == 200 || status == 204, "{status} {body}");
    let item = json!({"plaintext": "aGk="});
    let url = format!("{addr}/v1/transit/encrypt/k");
    let (status, body) = call(
        "POST",
        &url,
        Some(&root),
        Some(&json!({"batch_input": [item, item, item]})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["errors"],
        json!(["batch_input has 3 items; the limit is 2 (max_batch_items)"])
    );
    let big = json!({"plaintext": "a".repeat(5000)});
    let (status, body) = call(
        "POST",
        &url,
        Some(&root),
        Some(&json!({"batch_input": [big]})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .ends_with("the limit is 4096 (max_batch_bytes)"),
        "{body}"
    );
    let (status, body) = call(
        "POST",
        &url,
        Some(&root),
        Some(&json!({"batch_input": [item, item]})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["batch_results"].as_array().unwrap().len(), 2);
}
