//! `keyhaven csi-provider` against a real dev server with auth/kubernetes configured from
//! a test signing key, called as the Secrets Store CSI driver calls it: attributes JSON
//! with the SecretProviderClass parameters, the `csi.storage.k8s.io/*` pod keys and
//! `serviceAccount.tokens`, `permission: "420"`, no current object versions. The files
//! returned are written the way the driver writes them and read back.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use keyhaven_k8s::proto::csi::csi_driver_provider_client::CsiDriverProviderClient;
use keyhaven_k8s::proto::csi::{MountRequest, MountResponse, VersionRequest};
use serde_json::{Value, json};

use crate::support::{TestServer, call, keyhaven_bin};

pub(crate) const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// A value planted in the secrets; it must never reach the provider's log.
const MARKER: &str = "Marker-CSI-7f3c9a1e5b";

pub(crate) struct Key {
    pub(crate) private_pem: String,
    pub(crate) public_pem: String,
}

pub(crate) fn keypair() -> Key {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    Key {
        private_pem: kp.serialize_pem(),
        public_pem: kp.public_key_pem(),
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "the test issuer signs with real time, which the server checks against"
)]
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A pod: namespace, ServiceAccount, name.
#[derive(Clone, Copy)]
pub(crate) struct Pod {
    pub(crate) ns: &'static str,
    pub(crate) sa: &'static str,
    pub(crate) name: &'static str,
}

const APP: Pod = Pod {
    ns: "team-a",
    sa: "app",
    name: "app-7d9f",
};
const WEB: Pod = Pod {
    ns: "team-b",
    sa: "web",
    name: "web-5c2b",
};

pub(crate) fn pod_token(key: &Key, pod: Pod, aud: &str, exp_offset: i64) -> String {
    let now = now();
    let claims = json!({
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{}:{}", pod.ns, pod.sa),
        "aud": [aud],
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + exp_offset,
        "kubernetes.io": {
            "namespace": pod.ns,
            "serviceaccount": {"name": pod.sa, "uid": "0f6c1f5e-7d43-4a8e-9d61-2f1b4c7a9e10"},
            "pod": {"name": pod.name, "uid": "4b8f2a1c-3e5d-4c6b-8a9f-1d2e3f4a5b6c"}
        }
    });
    let k = jsonwebtoken::EncodingKey::from_ec_pem(key.private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &k,
    )
    .unwrap()
}

/// The running provider process; killed on drop.
pub(crate) struct ProviderProcess {
    child: Child,
    pub(crate) socket: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl ProviderProcess {
    pub(crate) fn start(dir: &Path, address: &str, config: Option<&str>) -> ProviderProcess {
        let socket = dir.join("providers/keyhaven.sock");
        let mut cmd = Command::new(keyhaven_bin());
        cmd.args([
            "csi-provider",
            "--socket",
            socket.to_str().unwrap(),
            "--address",
            address,
        ]);
        if let Some(text) = config {
            let path = dir.join("csi.toml");
            std::fs::write(&path, text).unwrap();
            cmd.args(["--config", path.to_str().unwrap()]);
        }
        let mut child = cmd
            .env("KEYHAVEN_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let p = ProviderProcess { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "provider did not start: {}",
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mode = std::fs::metadata(&p.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the socket is the only access control");
        p
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dev server with auth/kubernetes, policies, roles and secrets, and a provider.
struct Env {
    _dir: tempfile::TempDir,
    server: TestServer,
    root: String,
    key: Key,
    provider: ProviderProcess,
    rt: tokio::runtime::Runtime,
}

impl Env {
    fn new() -> Env {
        Self::with_config(None)
    }

    /// With a configuration file made from the server's address.
    fn with_config(config: Option<&dyn Fn(&str) -> String>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::dev();
        let root = server.root_token();
        let key = keypair();
        let text = config.map(|f| f(&server.addr()));
        let provider = ProviderProcess::start(dir.path(), &server.addr(), text.as_deref());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let env = Env {
            _dir: dir,
            server,
            root,
            key,
            provider,
            rt,
        };
        env.ok("POST", "sys/auth/kubernetes", json!({"type": "kubernetes"}));
        env.ok(
            "POST",
            "auth/kubernetes/config",
            json!({"pem_keys": [env.key.public_pem.clone()], "issuer": ISSUER}),
        );
        env.ok(
            "PUT",
            "sys/policies/acl/app-read",
            json!({"policy": "path \"secret/data/app/*\" { capabilities = [\"read\"] }\npath \"sys/tools/random/*\" { capabilities = [\"update\"] }"}),
        );
        env.ok(
            "PUT",
            "sys/policies/acl/web-read",
            json!({"policy": "path \"secret/data/web/*\" { capabilities = [\"read\"] }"}),
        );
        env.ok(
            "POST",
            "auth/kubernetes/role/app",
            json!({"bound_service_account_names": "app", "bound_service_account_namespaces": "team-a", "audience": "keyhaven", "token_policies": "app-read", "token_ttl": "10m"}),
        );
        env.ok(
            "POST",
            "auth/kubernetes/role/web",
            json!({"bound_service_account_names": "web", "bound_service_account_namespaces": "team-b", "audience": "keyhaven", "token_policies": "web-read", "token_ttl": "10m"}),
        );
        env.put_secret("app/db", json!({"username": "app", "password": MARKER}));
        env.put_secret(
            "app/config",
            json!({"host": "db.team-a.svc", "port": "5432", "ca.crt": format!("cert-{MARKER}")}),
        );
        env.put_secret(
            "app/blob",
            json!({"key": base64::engine::general_purpose::STANDARD.encode(b"\x00\x01binary")}),
        );
        env.put_secret("web/api", json!({"token": "web-only"}));
        env
    }

    fn v1(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.server.addr())
    }

    fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, b) = call(method, &self.v1(path), Some(&self.root), Some(&body));
        assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
        b
    }

    fn put_secret(&self, path: &str, data: Value) {
        self.ok(
            "POST",
            &format!("secret/data/{path}"),
            json!({ "data": data }),
        );
    }

    /// Call `Mount` as the driver does.
    fn mount_raw(
        &self,
        attributes: String,
        secrets: &str,
    ) -> Result<MountResponse, (String, String)> {
        let socket = self.provider.socket.clone();
        self.rt.block_on(async move {
            let channel = keyhaven_k8s::socket::connect(&socket).await.unwrap();
            let mut client = CsiDriverProviderClient::new(channel);
            let version = client
                .version(VersionRequest {
                    version: "v1alpha1".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                (version.version.as_str(), version.runtime_name.as_str()),
                ("v1alpha1", "keyhaven")
            );
            client
                .mount(MountRequest {
                    attributes,
                    secrets: secrets.to_owned(),
                    target_path:
                        "/var/lib/kubelet/pods/4b8f2a1c/volumes/kubernetes.io~csi/secrets/mount"
                            .into(),
                    permission: "420".into(),
                    current_object_version: Vec::new(),
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|e| (format!("{:?}", e.code()), e.message().to_owned()))
        })
    }

    /// The attributes the driver sends: SPC parameters, then pod volume attributes over
    /// them, then the pod keys and the tokens.
    fn attributes(
        &self,
        spc: &[(&str, &str)],
        pod_attrs: &[(&str, &str)],
        pod: Pod,
        tokens: Value,
    ) -> String {
        let mut a = BTreeMap::new();
        for (k, v) in spc.iter().chain(pod_attrs) {
            a.insert(k.to_string(), v.to_string());
        }
        a.insert("secretProviderClass".into(), "app-secrets".into());
        a.insert("csi.storage.k8s.io/pod.name".into(), pod.name.into());
        a.insert("csi.storage.k8s.io/pod.namespace".into(), pod.ns.into());
        a.insert(
            "csi.storage.k8s.io/pod.uid".into(),
            "4b8f2a1c-3e5d-4c6b-8a9f-1d2e3f4a5b6c".into(),
        );
        a.insert(
            "csi.storage.k8s.io/serviceAccount.name".into(),
            pod.sa.into(),
        );
        a.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
        a.insert(
            "csi.storage.k8s.io/serviceAccount.tokens".into(),
            tokens.to_string(),
        );
        serde_json::to_string(&a).unwrap()
    }

    fn tokens(&self, pod: Pod, aud: &str, exp_offset: i64) -> Value {
        json!({ "keyhaven": {"token": pod_token(&self.key, pod, aud, exp_offset), "expirationTimestamp": "2099-01-01T00:00:00Z"} })
    }

    /// Mount `objects` with role `role` as `pod`.
    fn mount(
        &self,
        pod: Pod,
        role: &str,
        objects: &str,
    ) -> Result<MountResponse, (String, String)> {
        let attrs = self.attributes(
            &[("roleName", role), ("objects", objects)],
            &[],
            pod,
            self.tokens(pod, "keyhaven", 3600),
        );
        self.mount_raw(attrs, "null")
    }

    fn assert_no_marker_in_logs(&self) {
        let logs = self.provider.logs();
        assert!(
            !logs.is_empty(),
            "the provider logged nothing at debug level"
        );
        assert!(
            !logs.contains(MARKER),
            "a secret value reached the provider's log:\n{logs}"
        );
    }
}

/// Write the files as the driver does (relative, clean paths; the given modes) into
/// `dir`, and return (path, mode, contents) read back from disk.
fn write_like_the_driver(dir: &Path, r: &MountResponse) -> BTreeMap<String, (u32, Vec<u8>)> {
    for f in &r.files {
        assert!(
            !f.path.starts_with('/') && !f.path.split('/').any(|e| e == ".." || e.is_empty()),
            "{}",
            f.path
        );
        assert!((0..=0o777).contains(&f.mode));
        let p = dir.join(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &f.contents).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode as u32)).unwrap();
    }
    crate::support::files_under(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            (rel, (mode, std::fs::read(&p).unwrap()))
        })
        .collect()
}

fn versions(r: &MountResponse) -> BTreeMap<String, String> {
    r.object_version
        .iter()
        .map(|v| (v.id.clone(), v.version.clone()))
        .collect()
}

const OBJECTS: &str = r#"
- objectName: db-password
  secretPath: secret/data/app/db
  secretKey: password
  filePermission: "0600"
- objectName: db.json
  secretPath: secret/data/app/db
- objectName: config
  secretPath: secret/data/app/config
  allKeys: true
- objectName: dsn
  secretPath: secret/data/app/db
  template: "postgres://{{ .username }}:{{ password }}@db:5432/app"
- objectName: blob
  secretPath: secret/data/app/blob
  secretKey: key
  encoding: base64
- objectName: not-there-yet
  secretPath: secret/data/app/missing
  secretKey: x
  optional: true
- objectName: nonce
  secretPath: sys/tools/random/16
  method: PUT
  secretArgs:
    format: hex
  secretKey: random_bytes
  encoding: hex
"#;

#[test]
fn csi_a_pod_mounts_its_secrets_with_names_modes_and_versions() {
    let env = Env::new();
    let r = env.mount(APP, "app", OBJECTS).unwrap();
    let out = tempfile::tempdir().unwrap();
    let files = write_like_the_driver(out.path(), &r);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "blob",
            "config/ca.crt",
            "config/host",
            "config/port",
            "db-password",
            "db.json",
            "dsn",
            "nonce"
        ]
    );
    assert_eq!(files["db-password"], (0o600, MARKER.as_bytes().to_vec()));
    assert_eq!(
        files["config/host"],
        (0o644, b"db.team-a.svc".to_vec()),
        "permission \"420\" is the default"
    );
    assert_eq!(
        files["config/ca.crt"].1,
        format!("cert-{MARKER}").into_bytes()
    );
    assert_eq!(
        files["dsn"].1,
        format!("postgres://app:{MARKER}@db:5432/app").into_bytes()
    );
    assert_eq!(files["blob"].1, b"\x00\x01binary");
    assert_eq!(
        files["nonce"].1.len(),
        16,
        "PUT with secretArgs, hex-decoded"
    );
    let whole: Value = serde_json::from_slice(&files["db.json"].1).unwrap();
    assert_eq!(whole["data"]["username"], "app");
    // One version per object, the absent optional one included; none is a plain hash.
    let v = versions(&r);
    assert_eq!(v.len(), 7, "{v:?}");
    assert!(v.contains_key("not-there-yet"));
    let plain = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, MARKER.as_bytes());
    let plain_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(plain.as_ref());
    let plain_hex: String = plain.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    for version in v.values() {
        assert!(version != &plain_b64 && version != &plain_hex && !version.contains(MARKER));
    }

    // The optional object appears once its secret exists, with a new version.
    env.put_secret("app/missing", json!({"x": "now here"}));
    let r2 = env.mount(APP, "app", OBJECTS).unwrap();
    assert!(
        r2.files
            .iter()
            .any(|f| f.path == "not-there-yet" && f.contents == b"now here")
    );
    assert_ne!(versions(&r2)["not-there-yet"], v["not-there-yet"]);
    env.assert_no_marker_in_logs();
}

#[test]
fn csi_rotation_changes_the_version_only_when_the_secret_changes() {
    let env = Env::new();
    let objects = "- {objectName: db-password, secretPath: secret/data/app/db, secretKey: password}\n- {objectName: host, secretPath: secret/data/app/config, secretKey: host}";
    let first = env.mount(APP, "app", objects).unwrap();
    let again = env.mount(APP, "app", objects).unwrap();
    assert_eq!(
        versions(&first),
        versions(&again),
        "unchanged secrets keep their versions"
    );
    assert_eq!(first.files, again.files);

    env.put_secret(
        "app/db",
        json!({"username": "app", "password": "rotated-password"}),
    );
    let rotated = env.mount(APP, "app", objects).unwrap();
    let (v1, v2) = (versions(&first), versions(&rotated));
    assert_ne!(
        v1["db-password"], v2["db-password"],
        "a changed secret gets a new version"
    );
    assert_eq!(v1["host"], v2["host"], "an unchanged one keeps it");
    let f = rotated
        .files
        .iter()
        .find(|f| f.path == "db-password")
        .unwrap();
    assert_eq!(f.contents, b"rotated-password");
    // A changed object configuration is a new version even for the same content.
    let renamed_mode = "- {objectName: db-password, secretPath: secret/data/app/db, secretKey: password, filePermission: \"0400\"}";
    let r = env.mount(APP, "app", renamed_mode).unwrap();
    assert_ne!(versions(&r)["db-password"], v2["db-password"]);
    env.assert_no_marker_in_logs();
}

#[test]
fn csi_authorization_comes_from_the_pods_own_token_only() {
    let env = Env::new();
    let objects =
        "- {objectName: db-password, secretPath: secret/data/app/db, secretKey: password}";
    // The control: the right pod reads (and its token is now cached).
    env.mount(APP, "app", objects).unwrap();

    let refused = |attrs: String, what: &str, expect_code: &str, expect: &[&str]| {
        let (code, msg) = env.mount_raw(attrs, "null").expect_err(what);
        assert_eq!(code, expect_code, "{what}: {msg}");
        for e in expect {
            assert!(msg.contains(e), "{what}: {msg:?} lacks {e:?}");
        }
        assert!(!msg.contains(MARKER));
    };
    let spc = |role: &'static str| vec![("roleName", role), ("objects", objects)];

    // Another namespace/ServiceAccount asking for the app role.
    refused(
        env.attributes(&spc("app"), &[], WEB, env.tokens(WEB, "keyhaven", 3600)),
        "other pod",
        "Unauthenticated",
        &[
            "role \"app\"",
            "bound_service_account_names=web",
            "bound_service_account_namespaces=team-b",
            "auth/kubernetes/role/app",
        ],
    );
    // A pod attribute overriding roleName gains nothing: the web pod with roleName=app.
    refused(
        env.attributes(
            &spc("web"),
            &[("roleName", "app")],
            WEB,
            env.tokens(WEB, "keyhaven", 3600),
        ),
        "roleName override",
        "Unauthenticated",
        &["role \"app\""],
    );
    // Its own role cannot read the app's secret either.
    refused(
        env.attributes(&spc("web"), &[], WEB, env.tokens(WEB, "keyhaven", 3600)),
        "web role on app path",
        "PermissionDenied",
        &["secret/data/app/db", "role \"web\"", "policy"],
    );
    // Expired token.
    refused(
        env.attributes(&spc("app"), &[], APP, env.tokens(APP, "keyhaven", -120)),
        "expired",
        "Unauthenticated",
        &["expired"],
    );
    // A token minted for another audience under our audience's key.
    refused(
        env.attributes(&spc("app"), &[], APP, env.tokens(APP, "vault", 3600)),
        "wrong audience",
        "Unauthenticated",
        &["audiences are [\"vault\"]", "tokenRequests"],
    );
    // No token for our audience at all.
    refused(
        env.attributes(&spc("app"), &[], APP, json!({"vault": {"token": pod_token(&env.key, APP, "vault", 3600), "expirationTimestamp": ""}})),
        "no token",
        "Unauthenticated",
        &["no ServiceAccount token for audience \"keyhaven\"", "tokenRequests"],
    );
    // A forged token with the app pod's claims, signed by another key: the cache (keyed
    // by the token itself) does not hand out the app pod's keyhaven token.
    let forged = json!({"keyhaven": {"token": pod_token(&keypair(), APP, "keyhaven", 3600), "expirationTimestamp": ""}});
    refused(
        env.attributes(&spc("app"), &[], APP, forged),
        "forged",
        "Unauthenticated",
        &["refused"],
    );
    // A path the role's policy denies.
    refused(
        env.attributes(
            &[
                ("roleName", "app"),
                (
                    "objects",
                    "- {objectName: t, secretPath: secret/data/web/api, secretKey: token}",
                ),
            ],
            &[],
            APP,
            env.tokens(APP, "keyhaven", 3600),
        ),
        "denied path",
        "PermissionDenied",
        &["secret/data/web/api"],
    );
    // vaultAddress that the operator did not allow.
    refused(
        env.attributes(
            &[
                ("roleName", "app"),
                ("objects", objects),
                ("vaultAddress", "https://attacker.example:8200"),
            ],
            &[],
            APP,
            env.tokens(APP, "keyhaven", 3600),
        ),
        "vaultAddress",
        "InvalidArgument",
        &["allowed_addresses"],
    );
    env.assert_no_marker_in_logs();
}

#[test]
fn csi_bad_input_is_refused_with_clear_errors() {
    let env = Env::new();
    let bad = |objects: &str, expect: &str| {
        let (code, msg) = env.mount(APP, "app", objects).expect_err(objects);
        assert!(msg.contains(expect), "{objects}: {code} {msg}");
        code
    };
    assert_eq!(bad("- objectName: [", "not a YAML list"), "InvalidArgument");
    bad(
        "- {objectName: a, secretPath: secret/data/app/db}\n- {objectName: a, secretPath: secret/data/app/config}",
        "duplicate objectName",
    );
    bad(
        "- {objectName: ../x, secretPath: secret/data/app/db}",
        "\"..\" element",
    );
    bad(
        "- {objectName: /etc/x, secretPath: secret/data/app/db}",
        "relative",
    );
    bad(
        "- {objectName: a, secretPath: secret/data/app/db, secretKey: nope}",
        "has no key \"nope\"",
    );
    bad(
        "- {objectName: a, secretPath: secret/data/app/none, secretKey: x}",
        "optional: true",
    );

    // `secrets: null` and `{}` are both accepted.
    let attrs = env.attributes(
        &[
            ("roleName", "app"),
            (
                "objects",
                "- {objectName: a, secretPath: secret/data/app/db, secretKey: username}",
            ),
        ],
        &[],
        APP,
        env.tokens(APP, "keyhaven", 3600),
    );
    env.mount_raw(attrs.clone(), "null").unwrap();
    env.mount_raw(attrs.clone(), "{}").unwrap();
    let (code, msg) = env.mount_raw(attrs, "[\"x\"]").unwrap_err();
    assert_eq!(code, "InvalidArgument", "{msg}");
    let (code, msg) = env.mount_raw("not json".into(), "null").unwrap_err();
    assert!(
        msg.contains("not a JSON object") && code == "InvalidArgument",
        "{msg}"
    );

    // Over the 4 MiB receive limit: 9 files of 512 KiB.
    env.put_secret("app/big", json!({"v": "x".repeat(512 * 1024)}));
    let big: String = (0..9)
        .map(|i| {
            format!("- {{objectName: big{i}, secretPath: secret/data/app/big, secretKey: v}}\n")
        })
        .collect();
    let code = bad(&big, "over the 4194304-byte limit");
    assert_eq!(code, "ResourceExhausted");
    env.assert_no_marker_in_logs();
}

#[test]
fn csi_an_allowed_vault_address_is_used_and_config_typos_are_refused() {
    // The operator allows a second address (the same server under another name).
    let other = |addr: &str| addr.replace("127.0.0.1", "localhost");
    let env = Env::with_config(Some(&|addr: &str| {
        format!("allowed_addresses = [\"{}\"]\n", other(addr))
    }));
    let addr = other(&env.server.addr());
    let objects = "- {objectName: u, secretPath: secret/data/app/db, secretKey: username}";
    let attrs = env.attributes(
        &[
            ("roleName", "app"),
            ("objects", objects),
            ("vaultAddress", &addr),
        ],
        &[],
        APP,
        env.tokens(APP, "keyhaven", 3600),
    );
    env.mount_raw(attrs, "null").unwrap();

    // An unknown configuration key stops the provider with a message naming it.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("csi.toml");
    std::fs::write(&cfg, "adress = \"http://127.0.0.1:1\"\n").unwrap();
    let out = Command::new(keyhaven_bin())
        .args([
            "csi-provider",
            "--config",
            cfg.to_str().unwrap(),
            "--socket",
            dir.path().join("s.sock").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field") && err.contains("adress"),
        "{err}"
    );
}
