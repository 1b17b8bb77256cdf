//! The `operator`, `status` and `kv` commands end to end against a real server: output,
//! `--format json`, exit codes, environment fallbacks and no token in error output.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::{TestServer, call, keyhaven_bin, sqlite_config};

/// Variables that would change what the CLI does; every run starts without them.
const CLIENT_ENV: &[&str] = &[
    "KEYHAVEN_ADDR",
    "VAULT_ADDR",
    "KEYHAVEN_TOKEN",
    "VAULT_TOKEN",
    "KEYHAVEN_CACERT",
    "VAULT_CACERT",
    "KEYHAVEN_FORMAT",
    "VAULT_FORMAT",
    "KEYHAVEN_SKIP_VERIFY",
    "VAULT_SKIP_VERIFY",
];

/// What one run of the binary did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A run of `keyhaven` with a clean client environment.
struct Run {
    cmd: Command,
    stdin: Option<String>,
}

fn kh(args: &[&str]) -> Run {
    let mut cmd = Command::new(keyhaven_bin());
    cmd.args(args);
    for var in CLIENT_ENV {
        cmd.env_remove(var);
    }
    Run { cmd, stdin: None }
}

impl Run {
    fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// Address and token of `server` through `KEYHAVEN_ADDR`/`KEYHAVEN_TOKEN`.
    fn on(self, server: &TestServer) -> Self {
        let token = server.root_token();
        self.env("KEYHAVEN_ADDR", &server.addr())
            .env("KEYHAVEN_TOKEN", &token)
    }

    fn stdin(mut self, text: &str) -> Self {
        self.stdin = Some(text.to_owned());
        self
    }

    fn run(mut self) -> Out {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = self.cmd.spawn().expect("start keyhaven");
        if let Some(text) = self.stdin.take() {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().expect("exited normally"),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    /// Run and require exit code `code`.
    fn expect(self, code: i32) -> Out {
        let out = self.run();
        assert_eq!(out.code, code, "{out:?}");
        out
    }
}

/// The value of `key` in a Vault-like key/value table.
fn row(table: &str, key: &str) -> Option<String> {
    table.lines().find_map(|l| {
        l.strip_prefix(key)
            .filter(|rest| rest.starts_with("  "))
            .map(|rest| rest.trim().to_owned())
    })
}

/// An address where nothing listens.
fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[test]
fn kv_put_get_patch_and_cas() {
    let server = TestServer::dev();
    let out = kh(&["kv", "put", "secret/app", "password=M1", "user=u"])
        .on(&server)
        .expect(0);
    assert!(out.stdout.contains("secret/data/app"), "{out:?}");
    assert_eq!(row(&out.stdout, "version").as_deref(), Some("1"), "{out:?}");

    let out = kh(&["kv", "get", "secret/app"]).on(&server).expect(0);
    assert_eq!(
        row(&out.stdout, "password").as_deref(),
        Some("M1"),
        "{out:?}"
    );
    assert!(out.stdout.contains("=== Data ==="), "{out:?}");

    // --field prints the bare value (no newline when stdout is not a terminal).
    let out = kh(&["kv", "get", "--field", "password", "secret/app"])
        .on(&server)
        .expect(0);
    assert_eq!(out.stdout, "M1");
    let out = kh(&["kv", "get", "--field", "nope", "secret/app"])
        .on(&server)
        .expect(1);
    assert!(
        out.stderr.contains("Field \"nope\" not present in secret"),
        "{out:?}"
    );

    let out = kh(&["kv", "patch", "secret/app", "extra=1"])
        .on(&server)
        .expect(0);
    assert_eq!(row(&out.stdout, "version").as_deref(), Some("2"), "{out:?}");
    let v = kh(&["kv", "get", "--format", "json", "secret/app"])
        .on(&server)
        .expect(0)
        .json();
    assert_eq!(
        v["data"]["data"],
        json!({"password": "M1", "user": "u", "extra": "1"})
    );
    assert_eq!(v["data"]["metadata"]["version"], 2);

    // Check-and-set: a stale version is refused with the server's message and exit 2.
    let out = kh(&["kv", "put", "--cas", "1", "secret/app", "password=M2"])
        .on(&server)
        .expect(2);
    assert!(
        out.stderr
            .contains("check-and-set parameter did not match the current version"),
        "{out:?}"
    );
    assert!(out.stderr.contains("Code: 400"), "{out:?}");
    let v = kh(&[
        "kv",
        "put",
        "--cas",
        "2",
        "--format",
        "json",
        "secret/app",
        "password=M2",
    ])
    .on(&server)
    .expect(0)
    .json();
    assert_eq!(v["data"]["version"], 3);

    let v = kh(&[
        "kv",
        "get",
        "--version",
        "1",
        "--format",
        "json",
        "secret/app",
    ])
    .on(&server)
    .expect(0)
    .json();
    assert_eq!(v["data"]["data"], json!({"password": "M1", "user": "u"}));
    let out = kh(&[
        "kv",
        "get",
        "--version",
        "1",
        "--field",
        "password",
        "--format",
        "json",
        "secret/app",
    ])
    .on(&server)
    .expect(0);
    assert_eq!(out.json(), json!("M1"));

    // patch of a missing key: nothing to patch.
    let out = kh(&["kv", "patch", "secret/missing", "a=b"])
        .on(&server)
        .expect(2);
    assert!(
        out.stderr.contains("No value found at secret/data/missing"),
        "{out:?}"
    );
}

#[test]
fn kv_metadata_delete_undelete_destroy_and_list() {
    let server = TestServer::dev();
    for v in ["a=1", "a=2", "a=3"] {
        kh(&["kv", "put", "secret/team/app", v])
            .on(&server)
            .expect(0);
    }
    kh(&["kv", "put", "secret/team/db", "p=x"])
        .on(&server)
        .expect(0);

    let out = kh(&[
        "kv",
        "metadata",
        "put",
        "--max-versions",
        "5",
        "--cas-required",
        "--delete-version-after",
        "1h",
        "--custom-metadata",
        "owner=team-a",
        "--custom-metadata",
        "tier=1",
        "secret/team/app",
    ])
    .on(&server)
    .expect(0);
    assert!(
        out.stdout
            .contains("Success! Data written to: secret/metadata/team/app"),
        "{out:?}"
    );
    let m = kh(&[
        "kv",
        "metadata",
        "get",
        "--format",
        "json",
        "secret/team/app",
    ])
    .on(&server)
    .expect(0)
    .json();
    assert_eq!(m["data"]["max_versions"], 5);
    assert_eq!(m["data"]["cas_required"], true);
    assert_eq!(m["data"]["current_version"], 3);
    assert_eq!(
        m["data"]["custom_metadata"],
        json!({"owner": "team-a", "tier": "1"})
    );
    assert_eq!(m["data"]["delete_version_after"], "1h0m0s");
    let out = kh(&["kv", "metadata", "get", "secret/team/app"])
        .on(&server)
        .expect(0);
    assert!(
        out.stdout.contains("Version 3") && out.stdout.contains("max_versions"),
        "{out:?}"
    );
    // cas is now required.
    kh(&["kv", "put", "secret/team/app", "a=4"])
        .on(&server)
        .expect(2);
    kh(&[
        "kv",
        "metadata",
        "put",
        "--cas-required=false",
        "secret/team/app",
    ])
    .on(&server)
    .expect(0);

    // Delete the latest version: a read shows its deletion time and no data.
    let out = kh(&["kv", "delete", "secret/team/app"])
        .on(&server)
        .expect(0);
    assert!(
        out.stdout
            .contains("Success! Data deleted (if it existed) at: secret/data/team/app"),
        "{out:?}"
    );
    let v = kh(&["kv", "get", "--format", "json", "secret/team/app"])
        .on(&server)
        .expect(0)
        .json();
    assert_eq!(v["data"]["data"], Value::Null);
    assert_ne!(v["data"]["metadata"]["deletion_time"], "");
    let out = kh(&["kv", "get", "--field", "a", "secret/team/app"])
        .on(&server)
        .expect(2);
    assert!(
        out.stderr.contains("No data found at secret/data/team/app"),
        "{out:?}"
    );

    kh(&["kv", "undelete", "--versions", "3", "secret/team/app"])
        .on(&server)
        .expect(0);
    assert_eq!(
        kh(&["kv", "get", "--field", "a", "secret/team/app"])
            .on(&server)
            .expect(0)
            .stdout,
        "3"
    );

    kh(&["kv", "delete", "--versions", "1,2", "secret/team/app"])
        .on(&server)
        .expect(0);
    let v = kh(&[
        "kv",
        "get",
        "--version",
        "2",
        "--format",
        "json",
        "secret/team/app",
    ])
    .on(&server)
    .expect(0)
    .json();
    assert_ne!(v["data"]["metadata"]["deletion_time"], "");
    let out = kh(&["kv", "destroy", "--versions", "1", "secret/team/app"])
        .on(&server)
        .expect(0);
    assert!(
        out.stdout
            .contains("Success! Data written to: secret/destroy/team/app"),
        "{out:?}"
    );
    let v = kh(&[
        "kv",
        "get",
        "--version",
        "1",
        "--format",
        "json",
        "secret/team/app",
    ])
    .on(&server)
    .expect(0)
    .json();
    assert_eq!(v["data"]["metadata"]["destroyed"], true);
    assert_eq!(v["data"]["data"], Value::Null);

    // List: table and JSON, with and without a trailing slash, and --mount.
    let out = kh(&["kv", "list", "secret/"]).on(&server).expect(0);
    assert_eq!(out.stdout.trim(), "Keys\n----\nteam/");
    let keys = kh(&["kv", "list", "--format", "json", "secret/team"])
        .on(&server)
        .expect(0)
        .json();
    assert_eq!(keys, json!(["app", "db"]));
    let keys = kh(&[
        "kv", "list", "--mount", "secret", "--format", "json", "team/",
    ])
    .on(&server)
    .expect(0)
    .json();
    assert_eq!(keys, json!(["app", "db"]));
    let keys = kh(&[
        "kv",
        "list",
        "--limit",
        "1",
        "--format",
        "json",
        "secret/team",
    ])
    .on(&server)
    .expect(0)
    .json();
    assert_eq!(keys, json!(["app"]));
    let keys = kh(&[
        "kv",
        "list",
        "--after",
        "app",
        "--format",
        "json",
        "secret/team",
    ])
    .on(&server)
    .expect(0)
    .json();
    assert_eq!(keys, json!(["db"]));

    // Delete the whole key: gone from reads and lists.
    kh(&["kv", "metadata", "delete", "secret/team/app"])
        .on(&server)
        .expect(0);
    let out = kh(&["kv", "get", "secret/team/app"]).on(&server).expect(2);
    assert!(
        out.stderr
            .contains("No value found at secret/data/team/app"),
        "{out:?}"
    );
    kh(&["kv", "metadata", "get", "secret/team/app"])
        .on(&server)
        .expect(2);
    assert_eq!(
        kh(&["kv", "list", "--format", "json", "secret/team"])
            .on(&server)
            .expect(0)
            .json(),
        json!(["db"])
    );
}

#[test]
fn kv_values_from_files_stdin_and_mount_flag() {
    let server = TestServer::dev();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cert.pem");
    std::fs::write(&file, "-----BEGIN X-----\nabc\n-----END X-----\n").unwrap();
    let file_arg = format!("cert=@{}", file.display());
    kh(&[
        "kv",
        "put",
        "--mount",
        "secret",
        "apps/web",
        &file_arg,
        "pin=-",
        "plain=a=b",
    ])
    .on(&server)
    .stdin("from stdin")
    .expect(0);
    let v = kh(&[
        "kv", "get", "--mount", "secret", "--format", "json", "apps/web",
    ])
    .on(&server)
    .expect(0)
    .json();
    assert_eq!(
        v["data"]["data"],
        json!({"cert": "-----BEGIN X-----\nabc\n-----END X-----\n", "pin": "from stdin", "plain": "a=b"})
    );
    // A JSON object on stdin.
    kh(&["kv", "put", "secret/apps/json", "-"])
        .on(&server)
        .stdin(r#"{"a": "1", "b": "2"}"#)
        .expect(0);
    let v = kh(&["kv", "get", "--format", "json", "secret/apps/json"])
        .on(&server)
        .expect(0)
        .json();
    assert_eq!(v["data"]["data"], json!({"a": "1", "b": "2"}));
    // Global options are accepted before the subcommand too.
    let v = kh(&["kv", "--format", "json", "get", "secret/apps/json"])
        .on(&server)
        .expect(0)
        .json();
    assert_eq!(v["data"]["data"]["a"], "1");
}

#[test]
fn missing_things_exit_2_and_usage_errors_exit_1() {
    let server = TestServer::dev();
    let out = kh(&["kv", "get", "secret/nope"]).on(&server).expect(2);
    assert!(
        out.stderr.contains("No value found at secret/data/nope"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = kh(&["kv", "list", "secret/empty/"]).on(&server).expect(2);
    assert!(
        out.stderr
            .contains("No value found at secret/metadata/empty"),
        "{out:?}"
    );
    let out = kh(&["kv", "get", "nomount/app"]).on(&server).expect(2);
    assert!(
        out.stderr.contains("No secrets engine is mounted"),
        "{out:?}"
    );

    // A KV version 1 mount is found by the preflight and named, not misread as version 2.
    kh(&["secrets", "enable", "--path", "kv1", "kv"])
        .on(&server)
        .expect(0);
    let out = kh(&["kv", "get", "kv1/app"]).on(&server).expect(2);
    assert!(
        out.stderr.contains("\"kv1/\" is a KV version 1 mount"),
        "{out:?}"
    );
    kh(&[
        "secrets",
        "enable",
        "--path",
        "kv2b",
        "--version",
        "2",
        "kv",
    ])
    .on(&server)
    .expect(0);
    kh(&["kv", "put", "kv2b/app", "a=b"]).on(&server).expect(0);

    // Usage errors: clap's and our own.
    kh(&["kv", "get"]).on(&server).expect(1);
    kh(&["kv", "frobnicate", "secret/a"]).on(&server).expect(1);
    kh(&["kv", "put", "secret/a"]).on(&server).expect(1);
    kh(&["kv", "undelete", "secret/a"]).on(&server).expect(1);
    kh(&["kv", "get", "--version", "x", "secret/a"])
        .on(&server)
        .expect(1);
    kh(&["operator", "init", "--key-shares", "0"])
        .on(&server)
        .expect(1);
    kh(&["status", "--format", "yaml"]).on(&server).expect(1);
    let out = kh(&["kv", "put", "secret/a", "hunter2-not-a-pair"])
        .on(&server)
        .expect(1);
    assert!(!out.all().contains("hunter2"), "{out:?}");
    // Help and version are not errors; `scan` keeps its own usage exit code.
    kh(&["kv", "--help"]).expect(0);
    kh(&["--version"]).expect(0);
    kh(&["scan", "--no-such-flag"]).expect(2);
}

#[test]
fn status_seal_and_unseal_on_a_dev_server() {
    let server = TestServer::dev();
    let out = kh(&["status"]).on(&server).expect(0);
    assert_eq!(
        row(&out.stdout, "Sealed").as_deref(),
        Some("false"),
        "{out:?}"
    );
    let v = kh(&["status", "--format", "json"])
        .on(&server)
        .expect(0)
        .json();
    assert_eq!(
        (
            v["sealed"].clone(),
            v["initialized"].clone(),
            v["t"].clone()
        ),
        (json!(false), json!(true), json!(1))
    );

    let out = kh(&["operator", "seal"]).on(&server).expect(0);
    assert!(out.stdout.contains("sealed"), "{out:?}");
    let out = kh(&["status"]).on(&server).expect(2);
    assert_eq!(
        row(&out.stdout, "Sealed").as_deref(),
        Some("true"),
        "{out:?}"
    );
    assert_eq!(
        row(&out.stdout, "Unseal Progress").as_deref(),
        Some("0/1"),
        "{out:?}"
    );
    // Sealed: API calls fail with 503 and exit 2.
    let out = kh(&["kv", "get", "secret/a"]).on(&server).expect(2);
    assert!(out.stderr.contains("503"), "{out:?}");

    // A wrong-length share is refused; the key from stdin unseals.
    kh(&["operator", "unseal", "abcd"]).on(&server).expect(2);
    kh(&["operator", "unseal", "--reset"]).on(&server).expect(0);
    let v = kh(&["operator", "unseal", "--format", "json"])
        .on(&server)
        .stdin(&format!("{}\n", server.unseal_key()))
        .expect(0)
        .json();
    assert_eq!(v["sealed"], false);
    kh(&["status"]).on(&server).expect(0);

    // And the key as an argument.
    kh(&["operator", "seal"]).on(&server).expect(0);
    let out = kh(&["operator", "unseal", &server.unseal_key()])
        .on(&server)
        .expect(0);
    assert_eq!(
        row(&out.stdout, "Sealed").as_deref(),
        Some("false"),
        "{out:?}"
    );
    kh(&["operator", "unseal"])
        .on(&server)
        .stdin("\n")
        .expect(1);
}

#[test]
fn operator_init_unseal_rotate_on_a_fresh_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(&sqlite_config(dir.path()));
    let addr = server.addr();
    let run = |args: &[&str]| kh(args).env("KEYHAVEN_ADDR", &addr);

    run(&["operator", "init", "--status"]).expect(2);
    let out = run(&["status"]).expect(2);
    assert_eq!(
        row(&out.stdout, "Initialized").as_deref(),
        Some("false"),
        "{out:?}"
    );
    run(&[
        "operator",
        "init",
        "--key-shares",
        "2",
        "--key-threshold",
        "3",
    ])
    .expect(1);

    let init = run(&[
        "operator",
        "init",
        "--key-shares",
        "3",
        "--key-threshold",
        "2",
        "--format",
        "json",
    ])
    .expect(0)
    .json();
    let keys: Vec<String> = init["unseal_keys_b64"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let hex: Vec<String> = init["unseal_keys_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!((keys.len(), hex.len()), (3, 3));
    assert_eq!(
        (
            init["unseal_shares"].clone(),
            init["unseal_threshold"].clone()
        ),
        (json!(3), json!(2))
    );
    let root = init["root_token"].as_str().unwrap().to_owned();
    assert!(!root.is_empty());

    run(&["operator", "init", "--status"]).expect(0);
    let out = run(&["operator", "init"]).expect(2);
    assert!(out.stderr.contains("Code: 400"), "{out:?}");

    let out = run(&["status"]).expect(2);
    assert_eq!(
        row(&out.stdout, "Unseal Progress").as_deref(),
        Some("0/2"),
        "{out:?}"
    );
    // Base64 and hex shares are both accepted.
    let v = run(&["operator", "unseal", "--format", "json", &keys[0]])
        .expect(0)
        .json();
    assert_eq!(
        (v["sealed"].clone(), v["progress"].clone()),
        (json!(true), json!(1))
    );
    let out = run(&["status"]).expect(2);
    assert_eq!(
        row(&out.stdout, "Unseal Progress").as_deref(),
        Some("1/2"),
        "{out:?}"
    );
    run(&["operator", "unseal", &hex[1]]).expect(0);
    let out = run(&["status"]).expect(0);
    assert_eq!(
        (
            row(&out.stdout, "Total Shares"),
            row(&out.stdout, "Threshold")
        ),
        (Some("3".into()), Some("2".into())),
        "{out:?}"
    );

    // The root token works; rotation bumps the key term.
    let before = run(&["operator", "key-status", "--format", "json"])
        .env("KEYHAVEN_TOKEN", &root)
        .expect(0)
        .json();
    let out = run(&["operator", "rotate"])
        .env("KEYHAVEN_TOKEN", &root)
        .expect(0);
    assert!(out.stdout.contains("Key Term"), "{out:?}");
    let after = run(&["operator", "key-status", "--format", "json"])
        .env("KEYHAVEN_TOKEN", &root)
        .expect(0)
        .json();
    assert_eq!(
        after["term"].as_u64().unwrap(),
        before["term"].as_u64().unwrap() + 1
    );
    // No token: permission denied, exit 2.
    run(&["operator", "rotate"]).expect(2);

    // A fresh server has no KV mount: enable one, then data survives a seal/unseal
    // cycle done with the CLI.
    let (status, body) = call(
        "POST",
        &format!("{addr}/v1/sys/mounts/secret"),
        Some(&root),
        Some(&json!({"type": "kv-v2"})),
    );
    assert_eq!(status, 204, "{body}");
    run(&["kv", "put", "secret/x", "k=v"])
        .env("KEYHAVEN_TOKEN", &root)
        .expect(0);
    run(&["operator", "seal"])
        .env("KEYHAVEN_TOKEN", &root)
        .expect(0);
    run(&["status"]).expect(2);
    run(&["operator", "unseal", &keys[2]]).expect(0);
    run(&["operator", "unseal"])
        .stdin(&format!("{}\n", keys[0]))
        .expect(0);
    run(&["status"]).expect(0);
    let out = run(&["kv", "get", "--field", "k", "secret/x"])
        .env("KEYHAVEN_TOKEN", &root)
        .expect(0);
    assert_eq!(out.stdout, "v");
}

#[test]
fn environment_fallbacks_and_precedence() {
    let server = TestServer::dev();
    let (addr, token) = (server.addr(), server.root_token());
    let dead = dead_address();
    kh(&["kv", "put", "secret/env", "k=v"])
        .on(&server)
        .expect(0);

    // VAULT_* alone.
    let out = kh(&["kv", "get", "--field", "k", "secret/env"])
        .env("VAULT_ADDR", &addr)
        .env("VAULT_TOKEN", &token)
        .expect(0);
    assert_eq!(out.stdout, "v");
    // KEYHAVEN_* wins over VAULT_*: a dead VAULT_ADDR and a bad VAULT_TOKEN are ignored.
    kh(&["kv", "get", "secret/env"])
        .env("KEYHAVEN_ADDR", &addr)
        .env("VAULT_ADDR", &dead)
        .env("KEYHAVEN_TOKEN", &token)
        .env("VAULT_TOKEN", "khs.bogus")
        .expect(0);
    // ... and the other way round it fails: the KEYHAVEN_TOKEN is used.
    let out = kh(&["kv", "get", "secret/env"])
        .env("KEYHAVEN_ADDR", &addr)
        .env("KEYHAVEN_TOKEN", "khs.bogus")
        .env("VAULT_TOKEN", &token)
        .expect(2);
    assert!(out.stderr.contains("403"), "{out:?}");
    kh(&["status"])
        .env("KEYHAVEN_ADDR", &dead)
        .env("VAULT_ADDR", &addr)
        .expect(1);
    // Flags win over both.
    kh(&[
        "kv",
        "get",
        "--address",
        &addr,
        "--token",
        &token,
        "secret/env",
    ])
    .env("KEYHAVEN_ADDR", &dead)
    .env("KEYHAVEN_TOKEN", "khs.bogus")
    .expect(0);
    // KEYHAVEN_FORMAT / VAULT_FORMAT select the output format.
    let v = kh(&["kv", "get", "secret/env"])
        .on(&server)
        .env("VAULT_FORMAT", "json")
        .expect(0)
        .json();
    assert_eq!(v["data"]["data"]["k"], "v");
}

#[test]
fn tokens_never_appear_in_error_output() {
    let server = TestServer::dev();
    let root = server.root_token();
    let bogus = "khs.SECRETMARKERbogustoken0000000000";

    // A rejected token.
    let out = kh(&["kv", "get", "secret/a"])
        .env("KEYHAVEN_ADDR", &server.addr())
        .env("KEYHAVEN_TOKEN", bogus)
        .expect(2);
    assert!(out.stderr.contains("Code: 403"), "{out:?}");
    assert!(!out.all().contains("SECRETMARKER"), "{out:?}");
    let out = kh(&["kv", "get", "--token", bogus, "secret/a"])
        .env("KEYHAVEN_ADDR", &server.addr())
        .expect(2);
    assert!(!out.all().contains("SECRETMARKER"), "{out:?}");

    // API errors and a server that cannot be reached, with the real root token.
    for args in [
        &["kv", "get", "secret/none"][..],
        &["kv", "put", "--cas", "7", "secret/a", "k=v"][..],
        &["kv", "undelete", "--versions", "1", "nomount/a"][..],
        &["operator", "unseal", "zz-not-hex-or-base64"][..],
    ] {
        let out = kh(args).on(&server).run();
        assert_ne!(out.code, 0, "{out:?}");
        assert!(!out.all().contains(&root), "{args:?}: {out:?}");
    }
    let dead = dead_address();
    let out = kh(&["kv", "get", "secret/a"])
        .env("KEYHAVEN_ADDR", &dead)
        .env("KEYHAVEN_TOKEN", &root)
        .expect(2);
    assert!(!out.all().contains(&root), "{out:?}");
    let out = kh(&[
        "kv",
        "get",
        "--token",
        &root,
        "--address",
        &dead,
        "secret/a",
    ])
    .expect(2);
    assert!(!out.all().contains(&root), "{out:?}");
    // A token that is not a valid header value is refused without echo.
    let out = kh(&["kv", "get", "secret/a"])
        .env("KEYHAVEN_ADDR", &server.addr())
        .env("KEYHAVEN_TOKEN", "SECRETMARKER\u{7f}x")
        .expect(1);
    assert!(!out.all().contains("SECRETMARKER"), "{out:?}");
}

#[test]
fn transport_errors_and_bad_addresses() {
    let dead = dead_address();
    let out = kh(&["kv", "get", "secret/a"])
        .env("KEYHAVEN_ADDR", &dead)
        .expect(2);
    assert!(out.stderr.contains("Error checking the mount"), "{out:?}");
    let out = kh(&["status"]).env("KEYHAVEN_ADDR", &dead).expect(1);
    assert!(out.stderr.contains("Error checking seal status"), "{out:?}");
    let out = kh(&["status", "--address", "not a url"]).expect(1);
    assert!(out.stderr.contains("invalid server address"), "{out:?}");
    let out = kh(&[
        "status",
        "--address",
        "https://127.0.0.1:1",
        "--ca-cert",
        "/nonexistent/ca.pem",
    ])
    .expect(1);
    assert!(out.stderr.contains("cannot read CA certificate"), "{out:?}");
}

/// The client library's typed `sys/` and KV calls against a real server.
#[test]
fn client_library_against_a_dev_server() {
    use keyhaven_client::{Client, ClientConfig, EnableMount};
    use secrecy::SecretString;
    use serde_json::Map;

    let server = TestServer::dev();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = ClientConfig::new(server.addr());
        config.token = Some(SecretString::from(server.root_token()));
        let c = Client::new(config).unwrap();

        let (code, health) = c.health().await.unwrap();
        assert_eq!(code, 200);
        assert!(health.initialized && !health.sealed);
        assert!(c.init_status().await.unwrap());

        // Mounts: enable, list, preflight, tune, disable.
        c.enable_mount("kv2", &EnableMount::new("kv-v2"))
            .await
            .unwrap();
        let mounts = c.list_mounts().await.unwrap();
        assert_eq!(mounts["kv2/"].kind, "kv");
        let pre = c.mount_preflight("kv2/team/app").await.unwrap().unwrap();
        assert_eq!(
            (pre.path.as_str(), pre.kind.as_str(), pre.kv_version),
            ("kv2/", "kv", 2)
        );
        // As OpenBao: an unknown mount is a 403, like a mount the token may not use.
        let err = c.mount_preflight("nothing/here").await.unwrap_err();
        assert_eq!(err.status(), Some(403), "{err}");
        let mut tune = Map::new();
        tune.insert("description".into(), json!("tuned"));
        c.tune_mount("kv2", &tune).await.unwrap();
        assert_eq!(
            c.read_mount_tune("kv2").await.unwrap().data["description"],
            "tuned"
        );

        // KV v2.
        let kv = c.kv2("kv2");
        let mut data = Map::new();
        data.insert("k".into(), json!("v1"));
        assert_eq!(
            kv.write("team/app", &data, Some(0))
                .await
                .unwrap()
                .data
                .version,
            1
        );
        data.insert("k".into(), json!("v2"));
        assert_eq!(
            kv.write("team/app", &data, None)
                .await
                .unwrap()
                .data
                .version,
            2
        );
        let read = kv.read("team/app", Some(1)).await.unwrap().unwrap();
        assert_eq!(read.data.data.unwrap()["k"], "v1");
        assert!(kv.read("team/none", None).await.unwrap().is_none());
        let err = kv.write("team/app", &data, Some(1)).await.unwrap_err();
        assert!(err.is_api() && !err.is_transport());
        assert_eq!(err.status(), Some(400));
        assert_eq!(
            err.api_errors(),
            ["check-and-set parameter did not match the current version"]
        );
        kv.write("team/db", &data, None).await.unwrap();
        let page = kv.list("team", None, Some(1)).await.unwrap().unwrap();
        assert_eq!(page.data.keys, ["app"]);
        let page = kv.list("team", Some("app"), None).await.unwrap().unwrap();
        assert_eq!(page.data.keys, ["db"]);
        assert!(kv.list("empty", None, None).await.unwrap().is_none());
        kv.delete_versions("team/app", &[1]).await.unwrap();
        kv.undelete("team/app", &[1]).await.unwrap();
        kv.destroy("team/app", &[1]).await.unwrap();
        let meta = kv.read_metadata("team/app").await.unwrap().unwrap();
        assert!(meta.data.versions["1"].destroyed);
        kv.delete_metadata("team/app").await.unwrap();
        assert!(kv.read_metadata("team/app").await.unwrap().is_none());

        c.disable_mount("kv2").await.unwrap();
        let gone = c.mount_preflight("kv2/team/app").await.unwrap_err();
        assert_eq!(gone.status(), Some(403), "{gone}");

        // Seal: health answers 503 and is not an error; unseal with the dev key.
        let term = c.key_status().await.unwrap().term;
        c.rotate().await.unwrap();
        assert_eq!(c.key_status().await.unwrap().term, term + 1);
        c.seal().await.unwrap();
        let (code, health) = c.health().await.unwrap();
        assert_eq!((code, health.sealed), (503, true));
        assert!(c.seal_status().await.unwrap().sealed);
        let status = c
            .unseal(&SecretString::from(server.unseal_key()))
            .await
            .unwrap();
        assert!(!status.sealed);

        // Transport errors are not API errors.
        let dead = Client::new(ClientConfig::new(dead_address())).unwrap();
        let err = dead.seal_status().await.unwrap_err();
        assert!(err.is_transport() && err.status().is_none(), "{err:?}");
    });
}
