//! The identity commands end to end against a dev server: `login` (token and kubernetes
//! methods) and the token file, `token create|lookup|renew|revoke|capabilities`,
//! `auth` and `secrets` mounts, and the generic `read|write|list|delete`; exit codes,
//! and that a token is printed only where showing it is the point.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{TestServer, keyhaven_bin};

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

    #[track_caller]
    fn ok(self) -> Out {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }

    #[track_caller]
    fn code(self, code: i32) -> Out {
        assert_eq!(self.code, code, "{self:?}");
        self
    }
}

/// A client environment: a server address and a private HOME with its token file.
struct Env {
    addr: String,
    home: tempfile::TempDir,
}

impl Env {
    fn new(server: &TestServer) -> Env {
        Env {
            addr: server.addr(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// The default token file, under the private HOME.
    fn token_file(&self) -> PathBuf {
        self.home.path().join(".keyhaven-token")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// `keyhaven ARGS` with `KEYHAVEN_ADDR`, the private HOME, no token variable.
    fn kh(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(keyhaven_bin());
        cmd.args(args);
        for var in CLIENT_ENV {
            cmd.env_remove(var);
        }
        cmd.env("KEYHAVEN_ADDR", &self.addr)
            .env("HOME", self.home.path());
        Run { cmd, stdin: None }
    }
}

struct Run {
    cmd: Command,
    stdin: Option<String>,
}

impl Run {
    fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    fn token(self, token: &str) -> Self {
        self.env("KEYHAVEN_TOKEN", token)
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
        if let Some(text) = &self.stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The value of a `Key    Value` table row.
fn row<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    table.lines().find_map(|l| {
        l.strip_prefix(key)
            .filter(|rest| rest.starts_with(' '))
            .map(str::trim)
    })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn login_stores_a_private_token_file_that_later_commands_use() {
    let server = TestServer::dev();
    let root = server.root_token();
    let env = Env::new(&server);

    // Nothing stored yet: no token at all.
    let out = env.kh(&["token", "lookup"]).run().code(2);
    assert!(out.stderr.contains("permission denied"), "{out:?}");

    let out = env.kh(&["login", &root]).run().ok();
    assert!(
        out.stdout.contains("Success! You are now authenticated"),
        "{out:?}"
    );
    assert!(out.stdout.contains(r#"["root"]"#), "{out:?}");
    assert!(
        !out.all().contains(&root),
        "login printed the stored token: {out:?}"
    );
    let file = env.token_file();
    assert_eq!(mode(&file), 0o600);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), root);

    // Later commands use the file.
    let out = env.kh(&["token", "lookup", "--format", "json"]).run().ok();
    assert_eq!(out.json()["data"]["policies"], json!(["root"]));
    assert!(
        !out.all().contains(&root),
        "lookup printed the token: {out:?}"
    );

    // Precedence: --token > KEYHAVEN_TOKEN > VAULT_TOKEN > file.
    let bogus = "khs.bogusbogusbogusbogusbogusbogusbogus1";
    for run in [
        env.kh(&["token", "lookup"]).token(bogus),
        env.kh(&["token", "lookup"]).env("VAULT_TOKEN", bogus),
        env.kh(&["token", "lookup", "--token", bogus]).token(&root),
    ] {
        let out = run.run().code(2);
        assert!(out.stderr.contains("permission denied"), "{out:?}");
        assert!(!out.all().contains(bogus), "{out:?}");
    }
    env.kh(&["token", "lookup", "--token", &root])
        .token(bogus)
        .run()
        .ok();

    // A token that does not verify is not stored, and not echoed.
    let out = env
        .kh(&["login", "-"])
        .stdin(&format!("{bogus}\n"))
        .run()
        .code(2);
    assert!(out.stderr.contains("permission denied"), "{out:?}");
    assert!(!out.all().contains(bogus), "{out:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), root);

    // KEYHAVEN_TOKEN_FILE moves the file; a token read from stdin is stored there.
    let child = env
        .kh(&["token", "create", "--policy", "default", "--field", "token"])
        .run()
        .ok()
        .stdout;
    let other = env.path("other-token");
    let out = env
        .kh(&["login", "-"])
        .env("KEYHAVEN_TOKEN_FILE", &other)
        .stdin(&format!("{child}\n"))
        .run()
        .ok();
    assert!(!out.all().contains(&child), "{out:?}");
    assert!(out.stdout.contains(r#"["default"]"#), "{out:?}");
    assert_eq!(mode(&other), 0o600);
    let out = env
        .kh(&["token", "lookup", "--format", "json"])
        .env("KEYHAVEN_TOKEN_FILE", &other)
        .run()
        .ok();
    assert_eq!(out.json()["data"]["policies"], json!(["default"]));

    // --no-store prints the token (its purpose) and writes nothing.
    let unstored = env.path("unstored");
    let out = env
        .kh(&["login", "--no-store", &child])
        .env("KEYHAVEN_TOKEN_FILE", &unstored)
        .run()
        .ok();
    assert!(out.stdout.contains(&child), "{out:?}");
    assert!(!unstored.exists());
    let out = env
        .kh(&["login", "--no-store", "--format", "json", &child])
        .run()
        .ok();
    assert_eq!(out.json()["auth"]["client_token"], child.as_str());

    // Usage errors exit 1.
    env.kh(&["login", "--method", "kubernetes"]).run().code(1);
    env.kh(&["login", "--method", "nope"]).run().code(1);
}

#[test]
fn tokens_are_created_looked_up_renewed_and_revoked() {
    let server = TestServer::dev();
    let root = server.root_token();
    let env = Env::new(&server);

    let out = env
        .kh(&[
            "token",
            "create",
            "--policy",
            "default",
            "--ttl",
            "1h",
            "--metadata",
            "team=a",
            "--display-name",
            "ci",
            "--format",
            "json",
        ])
        .token(&root)
        .run()
        .ok();
    let auth = out.json()["auth"].clone();
    let child = auth["client_token"].as_str().unwrap().to_owned();
    let accessor = auth["accessor"].as_str().unwrap().to_owned();
    assert_eq!(auth["policies"], json!(["default"]));
    assert_eq!(auth["lease_duration"], 3600);
    assert_eq!(auth["metadata"]["team"], "a");

    // The table shows the new token too: handing it out is the point.
    let out = env
        .kh(&["token", "create", "--policy", "default", "--ttl", "30m"])
        .token(&root)
        .run()
        .ok();
    assert!(row(&out.stdout, "token_duration") == Some("30m"), "{out:?}");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("token ")),
        "{out:?}"
    );

    // Lookup by token and by accessor: properties, never the token.
    let out = env
        .kh(&["token", "lookup", &child, "--format", "json"])
        .token(&root)
        .run()
        .ok();
    let data = out.json()["data"].clone();
    assert_eq!(data["accessor"], accessor.as_str());
    assert_eq!(data["display_name"], "token-ci");
    assert_eq!(data["meta"]["team"], "a");
    assert!(data.get("id").is_none(), "{data}");
    assert!(!out.all().contains(&child));
    let out = env
        .kh(&["token", "lookup", "--accessor", &accessor])
        .token(&root)
        .run()
        .ok();
    assert!(out.stdout.contains("ttl"), "{out:?}");
    assert!(!out.all().contains(&child));
    // The token read from stdin with `-`.
    let out = env
        .kh(&["token", "lookup", "-"])
        .token(&root)
        .stdin(&child)
        .run()
        .ok();
    assert!(out.stdout.contains(&accessor), "{out:?}");

    // Renew by token and self.
    let out = env
        .kh(&["token", "renew", &child, "--increment", "2h"])
        .token(&root)
        .run()
        .ok();
    assert!(row(&out.stdout, "token_duration") == Some("2h"), "{out:?}");
    assert!(!out.all().contains(&child), "{out:?}");
    let out = env
        .kh(&["token", "renew", "--format", "json"])
        .token(&child)
        .run()
        .ok();
    assert_eq!(out.json()["auth"]["accessor"], accessor.as_str());
    assert!(
        !out.all().contains(&child),
        "renew-self echoed the token: {out:?}"
    );

    // Capabilities of the child (default policy), by token and for itself.
    let out = env
        .kh(&["token", "capabilities", &child, "auth/token/lookup-self"])
        .token(&root)
        .run()
        .ok();
    assert_eq!(out.stdout.trim(), "read", "{out:?}");
    let out = env
        .kh(&["token", "capabilities", "sys/mounts"])
        .token(&child)
        .run()
        .ok();
    assert_eq!(out.stdout.trim(), "deny", "{out:?}");
    let out = env
        .kh(&["token", "capabilities", "secret/data/x", "--format", "json"])
        .token(&root)
        .run()
        .ok();
    assert_eq!(out.json(), json!(["root"]));

    // Revoke: afterwards the token is refused with exit 2, and never shown.
    let out = env.kh(&["token", "revoke", &child]).token(&root).run().ok();
    assert!(out.stdout.contains("Success! Revoked token"), "{out:?}");
    for run in [
        env.kh(&["token", "lookup"]).token(&child),
        env.kh(&["read", "auth/token/lookup-self"]).token(&child),
        env.kh(&["token", "lookup", "--token", &child]),
    ] {
        let out = run.run().code(2);
        assert!(out.stderr.contains("permission denied"), "{out:?}");
        assert!(
            !out.all().contains(&child),
            "a token in error output: {out:?}"
        );
    }

    // Revoke by accessor, and --self.
    let t2 = env
        .kh(&["token", "create", "--field", "token"])
        .token(&root)
        .run()
        .ok()
        .stdout;
    let acc2 = env
        .kh(&["token", "lookup", &t2, "--format", "json"])
        .token(&root)
        .run()
        .ok()
        .json()["data"]["accessor"]
        .as_str()
        .unwrap()
        .to_owned();
    env.kh(&["token", "revoke", "--accessor", &acc2])
        .token(&root)
        .run()
        .ok();
    env.kh(&["token", "lookup"]).token(&t2).run().code(2);
    let t3 = env
        .kh(&["token", "create", "--field", "token"])
        .token(&root)
        .run()
        .ok()
        .stdout;
    env.kh(&["token", "revoke", "--self"]).token(&t3).run().ok();
    env.kh(&["token", "lookup"]).token(&t3).run().code(2);

    // --mode orphan keeps the children; a plain revoke takes them along.
    let parent = env
        .kh(&["token", "create", "--field", "token"])
        .token(&root)
        .run()
        .ok()
        .stdout;
    let kid = env
        .kh(&["token", "create", "--field", "token"])
        .token(&parent)
        .run()
        .ok()
        .stdout;
    env.kh(&["token", "revoke", "--mode", "orphan", &parent])
        .token(&root)
        .run()
        .ok();
    env.kh(&["token", "lookup"]).token(&parent).run().code(2);
    let out = env
        .kh(&["token", "lookup", "--format", "json"])
        .token(&kid)
        .run()
        .ok();
    assert_eq!(out.json()["data"]["orphan"], true);

    // Orphans and roles.
    let out = env
        .kh(&["token", "create", "--orphan", "--format", "json"])
        .token(&root)
        .run()
        .ok();
    assert_eq!(out.json()["auth"]["orphan"], true);
    env.kh(&["write", "auth/token/roles/ci", "allowed_policies=default"])
        .token(&root)
        .run()
        .ok();
    let out = env
        .kh(&["token", "create", "--role", "ci", "--format", "json"])
        .token(&root)
        .run()
        .ok();
    assert_eq!(out.json()["auth"]["policies"], json!(["default"]));
    let out = env
        .kh(&["token", "create", "--role", "nope"])
        .token(&root)
        .run()
        .code(2);
    assert!(!out.all().contains(&root));

    // Usage errors exit 1.
    env.kh(&["token", "revoke"]).token(&root).run().code(1);
    env.kh(&["token", "revoke", "--self", "x"])
        .token(&root)
        .run()
        .code(1);
    env.kh(&["token", "lookup", "--accessor"])
        .token(&root)
        .run()
        .code(1);
    env.kh(&["token", "create", "--metadata", "hunter2"])
        .token(&root)
        .run()
        .code(1);
}

#[test]
fn auth_methods_and_secrets_engines_are_enabled_listed_and_disabled() {
    let server = TestServer::dev();
    let root = server.root_token();
    let env = Env::new(&server);

    let out = env
        .kh(&["auth", "enable", "kubernetes"])
        .token(&root)
        .run()
        .ok();
    assert_eq!(
        out.stdout.trim(),
        "Success! Enabled kubernetes auth method at: kubernetes/"
    );
    env.kh(&[
        "auth",
        "enable",
        "--path",
        "jwt-a",
        "--description",
        "team a",
        "jwt",
    ])
    .token(&root)
    .run()
    .ok();
    let out = env.kh(&["auth", "list"]).token(&root).run().ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("Path") && lines[0].contains("Description"),
        "{out:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("jwt-a/") && l.contains("team a"))
    );
    assert!(lines.iter().any(|l| l.starts_with("token/")));
    let out = env
        .kh(&["auth", "list", "--format", "json"])
        .token(&root)
        .run()
        .ok();
    assert_eq!(out.json()["kubernetes/"]["type"], "kubernetes");
    let out = env
        .kh(&["auth", "enable", "bogus"])
        .token(&root)
        .run()
        .code(2);
    assert!(out.stderr.contains("bogus"), "{out:?}");
    env.kh(&["auth", "disable", "jwt-a"])
        .token(&root)
        .run()
        .ok();
    let out = env
        .kh(&["auth", "list", "--format", "json"])
        .token(&root)
        .run()
        .ok();
    assert!(out.json().get("jwt-a/").is_none());

    env.kh(&["secrets", "enable", "transit"])
        .token(&root)
        .run()
        .ok();
    let out = env
        .kh(&["secrets", "enable", "--path", "team-kv", "kv-v2"])
        .token(&root)
        .run()
        .ok();
    assert_eq!(
        out.stdout.trim(),
        "Success! Enabled the kv-v2 secrets engine at: team-kv/"
    );
    let out = env
        .kh(&["secrets", "list", "--format", "json"])
        .token(&root)
        .run()
        .ok();
    let mounts = out.json();
    assert_eq!(mounts["transit/"]["type"], "transit");
    assert_eq!(mounts["team-kv/"]["options"]["version"], "2");
    let out = env.kh(&["secrets", "list"]).token(&root).run().ok();
    assert!(
        out.stdout.lines().any(|l| l.starts_with("transit/")),
        "{out:?}"
    );
    env.kh(&["secrets", "disable", "transit"])
        .token(&root)
        .run()
        .ok();
    let out = env
        .kh(&["secrets", "list", "--format", "json"])
        .token(&root)
        .run()
        .ok();
    assert!(out.json().get("transit/").is_none());

    // Without privileges: exit 2, permission denied.
    let weak = env
        .kh(&["token", "create", "--policy", "default", "--field", "token"])
        .token(&root)
        .run()
        .ok()
        .stdout;
    let out = env
        .kh(&["auth", "enable", "jwt"])
        .token(&weak)
        .run()
        .code(2);
    assert!(out.stderr.contains("permission denied"), "{out:?}");
    assert!(!out.all().contains(&weak));
    env.kh(&["secrets", "list"]).token(&weak).run().code(2);
    env.kh(&["auth", "disable", "/"]).token(&root).run().code(1);
}

#[test]
fn generic_read_write_list_delete_reach_any_path() {
    let server = TestServer::dev();
    let root = server.root_token();
    let env = Env::new(&server);
    let policy = env.path("p.hcl");
    std::fs::write(
        &policy,
        "path \"secret/data/app/*\" {\n  capabilities = [\"read\"]\n}\n",
    )
    .unwrap();

    let out = env
        .kh(&[
            "write",
            "sys/policies/acl/app",
            &format!("policy=@{}", policy.display()),
        ])
        .token(&root)
        .run()
        .ok();
    assert_eq!(
        out.stdout.trim(),
        "Success! Data written to: sys/policies/acl/app"
    );
    let out = env
        .kh(&["read", "sys/policies/acl/app"])
        .token(&root)
        .run()
        .ok();
    assert!(out.stdout.contains("secret/data/app/*"), "{out:?}");
    assert!(out.stdout.starts_with("Key"), "{out:?}");
    let out = env
        .kh(&["read", "sys/policies/acl/app", "--field", "name"])
        .token(&root)
        .run()
        .ok();
    assert_eq!(out.stdout, "app");
    let out = env
        .kh(&["list", "sys/policies/acl"])
        .token(&root)
        .run()
        .ok();
    assert!(out.stdout.starts_with("Keys\n----\n"), "{out:?}");
    assert!(out.stdout.lines().any(|l| l == "app"), "{out:?}");
    let out = env
        .kh(&["list", "sys/policies/acl", "--format", "json"])
        .token(&root)
        .run()
        .ok();
    assert!(out.json().as_array().unwrap().contains(&json!("app")));

    // A repeated key is a list; a new token is shown (it is the answer).
    let out = env
        .kh(&[
            "write",
            "auth/token/create",
            "policies=app",
            "policies=default",
            "ttl=10m",
            "--format",
            "json",
        ])
        .token(&root)
        .run()
        .ok();
    let auth = out.json()["auth"].clone();
    assert_eq!(auth["policies"], json!(["app", "default"]));
    let app = auth["client_token"].as_str().unwrap().to_owned();
    let out = env
        .kh(&["token", "capabilities", "secret/data/app/db"])
        .token(&app)
        .run()
        .ok();
    assert_eq!(out.stdout.trim(), "read");

    // The caller's own token is never echoed back.
    let out = env
        .kh(&["read", "auth/token/lookup-self"])
        .token(&app)
        .run()
        .ok();
    assert!(out.stdout.contains("policies"), "{out:?}");
    assert!(!out.all().contains(&app), "{out:?}");
    let out = env
        .kh(&["write", "-f", "auth/token/renew-self", "--format", "json"])
        .token(&app)
        .run()
        .ok();
    assert!(out.json()["auth"]["accessor"].is_string());
    assert!(!out.all().contains(&app), "{out:?}");
    let out = env
        .kh(&["write", "auth/token/lookup", &format!("token={app}")])
        .token(&root)
        .run()
        .ok();
    assert!(!out.all().contains(&app), "{out:?}");

    let out = env
        .kh(&["read", "sys/mounts", "--format", "json"])
        .token(&root)
        .run()
        .ok();
    assert_eq!(out.json()["data"]["secret/"]["type"], "kv");

    // Missing data, missing paths, denied paths.
    let out = env
        .kh(&["write", "sys/policies/acl/x"])
        .token(&root)
        .run()
        .code(1);
    assert!(out.stderr.contains("Must supply data"), "{out:?}");
    env.kh(&["write", "sys/policies/acl/x", "hunter2"])
        .token(&root)
        .run()
        .code(1);
    let out = env
        .kh(&["delete", "sys/policies/acl/app"])
        .token(&root)
        .run()
        .ok();
    assert_eq!(
        out.stdout.trim(),
        "Success! Data deleted (if it existed) at: sys/policies/acl/app"
    );
    let out = env
        .kh(&["read", "sys/policies/acl/app"])
        .token(&root)
        .run()
        .code(2);
    assert!(
        out.stderr
            .contains("No value found at sys/policies/acl/app"),
        "{out:?}"
    );
    env.kh(&["list", "auth/token/roles"])
        .token(&root)
        .run()
        .code(2);
    let out = env.kh(&["read", "sys/mounts"]).token(&app).run().code(2);
    assert!(out.stderr.contains("permission denied"), "{out:?}");
    assert!(!out.all().contains(&app), "{out:?}");
}

/// An RSA issuer made in the test, signing pod-like ServiceAccount tokens (RS256).
struct Issuer {
    key: rcgen::KeyPair,
}

const ISS: &str = "https://kubernetes.default.svc.cluster.local";

impl Issuer {
    fn new() -> Issuer {
        Issuer {
            key: rcgen::KeyPair::generate_rsa_for(
                &rcgen::PKCS_RSA_SHA256,
                rcgen::RsaKeySize::_2048,
            )
            .unwrap(),
        }
    }

    fn public_pem(&self) -> String {
        self.key.public_key_pem()
    }

    fn token(&self, namespace: &str, name: &str) -> String {
        use rcgen::SigningKey as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = json!({"alg": "RS256", "typ": "JWT"});
        let claims = json!({
            "aud": ["keyhaven"],
            // Far in the future: the test does not read the clock.
            "exp": 4_102_444_800_i64,
            "iss": ISS,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": format!("uid-{namespace}-{name}")},
            },
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&sig))
    }
}

#[test]
fn kubernetes_login_exchanges_a_service_account_token() {
    let server = TestServer::dev();
    let root = server.root_token();
    let env = Env::new(&server);
    let issuer = Issuer::new();
    let pem = env.path("issuer.pem");
    std::fs::write(&pem, issuer.public_pem()).unwrap();
    let hcl = env.path("team-a.hcl");
    std::fs::write(
        &hcl,
        "path \"secret/data/team-a/*\" {\n  capabilities = [\"read\"]\n}\n",
    )
    .unwrap();
    for args in [
        vec!["auth", "enable", "kubernetes"],
        vec![
            "write",
            "auth/kubernetes/config",
            &format!("pem_keys=@{}", pem.display()),
            &format!("issuer={ISS}"),
        ],
        vec![
            "write",
            "sys/policies/acl/team-a-read",
            &format!("policy=@{}", hcl.display()),
        ],
        vec![
            "write",
            "auth/kubernetes/role/app",
            "bound_service_account_names=app",
            "bound_service_account_namespaces=team-a",
            "audience=keyhaven",
            "token_policies=team-a-read",
            "token_ttl=5m",
        ],
    ] {
        let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
        env.kh(&args).token(&root).run().ok();
    }

    let jwt = issuer.token("team-a", "app");
    let jwt_file = env.path("sa-token");
    std::fs::write(&jwt_file, format!("{jwt}\n")).unwrap();
    let jwt_arg = jwt_file.to_str().unwrap();

    let out = env
        .kh(&[
            "login",
            "--method",
            "kubernetes",
            "--role",
            "app",
            "--jwt-file",
            jwt_arg,
        ])
        .run()
        .ok();
    assert!(
        out.stdout.contains(r#"["default" "team-a-read"]"#),
        "{out:?}"
    );
    assert!(row(&out.stdout, "token_duration") == Some("5m"), "{out:?}");
    assert!(out.stdout.contains("token_meta_role"), "{out:?}");
    assert!(!out.all().contains(&jwt), "{out:?}");
    let stored = std::fs::read_to_string(env.token_file()).unwrap();
    assert_eq!(mode(&env.token_file()), 0o600);
    assert!(
        !out.all().contains(stored.trim()),
        "the stored token was printed: {out:?}"
    );
    let out = env
        .kh(&["token", "capabilities", "secret/data/team-a/db"])
        .run()
        .ok();
    assert_eq!(out.stdout.trim(), "read");
    let out = env
        .kh(&["token", "capabilities", "secret/data/team-b/db"])
        .run()
        .ok();
    assert_eq!(out.stdout.trim(), "deny");

    // --no-store prints the new token, in JSON too; --mount names another path.
    env.kh(&["auth", "enable", "--path", "k8s-b", "kubernetes"])
        .token(&root)
        .run()
        .ok();
    env.kh(&[
        "write",
        "auth/k8s-b/config",
        &format!("pem_keys=@{}", pem.display()),
        &format!("issuer={ISS}"),
    ])
    .token(&root)
    .run()
    .ok();
    env.kh(&[
        "write",
        "auth/k8s-b/role/app",
        "bound_service_account_names=app",
        "bound_service_account_namespaces=team-a",
        "audience=keyhaven",
        "token_policies=default",
    ])
    .token(&root)
    .run()
    .ok();
    let out = env
        .kh(&[
            "login",
            "--method",
            "kubernetes",
            "--mount",
            "k8s-b",
            "--role",
            "app",
            "--jwt-file",
            jwt_arg,
            "--no-store",
            "--format",
            "json",
        ])
        .run()
        .ok();
    let token = out.json()["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(token.len() > 10);
    assert_eq!(std::fs::read_to_string(env.token_file()).unwrap(), stored);

    // Refusals: wrong namespace, unknown role; the JWT never appears.
    let other = env.path("other-sa");
    std::fs::write(&other, issuer.token("team-b", "app")).unwrap();
    for args in [
        vec!["--role", "app", "--jwt-file", other.to_str().unwrap()],
        vec!["--role", "nope", "--jwt-file", jwt_arg],
    ] {
        let mut full = vec!["login", "--method", "kubernetes"];
        full.extend(args);
        let out = env.kh(&full).run().code(2);
        assert!(!out.all().contains(&jwt), "{out:?}");
    }
    let out = env
        .kh(&[
            "login",
            "--method",
            "kubernetes",
            "--role",
            "app",
            "--jwt-file",
            "/nonexistent/t",
        ])
        .run()
        .code(1);
    assert!(out.stderr.contains("/nonexistent/t"), "{out:?}");
    assert_eq!(std::fs::read_to_string(env.token_file()).unwrap(), stored);
}

/// The request shape of a Kubernetes login, seen by a one-shot HTTP server.
#[test]
fn kubernetes_login_sends_role_and_jwt_without_a_token() {
    use std::io::{BufRead as _, BufReader, Read as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut headers = Vec::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            headers.push(line);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let answer = json!({"request_id": "r", "data": null, "auth": {
            "client_token": "khs.fromthefakeserver0000000000000000000",
            "accessor": "acc", "policies": ["default"], "token_policies": ["default"],
            "metadata": {"role": "r1"}, "lease_duration": 60, "renewable": true}})
        .to_string();
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        (request_line, headers, body)
    });
    let home = tempfile::tempdir().unwrap();
    let jwt_file = home.path().join("jwt");
    std::fs::write(&jwt_file, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n").unwrap();
    let env = Env { addr, home };
    env.kh(&[
        "login",
        "--method",
        "kubernetes",
        "--role",
        "r1",
        "--mount",
        "k8s",
        "--jwt-file",
        jwt_file.to_str().unwrap(),
    ])
    .run()
    .ok();
    let (request_line, headers, body) = seen.join().unwrap();
    assert!(
        request_line.starts_with("POST /v1/auth/k8s/login "),
        "{request_line}"
    );
    assert!(
        !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("x-vault-token")),
        "{headers:?}"
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        json!({"role": "r1", "jwt": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"})
    );
    assert_eq!(
        std::fs::read_to_string(env.token_file()).unwrap().trim(),
        "khs.fromthefakeserver0000000000000000000"
    );
}
