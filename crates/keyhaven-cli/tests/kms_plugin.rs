//! `keyhaven kms-plugin` against a real keyhaven server, driven by a fake kube-apiserver
//! that follows the apiserver's KMS v2 rules (k8s-protocols.md §A.3): prime `Status`,
//! `Encrypt` a 32-byte seed when the `key_id` changes, refuse an `Encrypt` whose `key_id`
//! differs from `Status`, check the 1 KiB and annotation rules, store objects as
//! `k8s:enc:kms:v2:<name>:` + `EncryptedObject` (HKDF-SHA256 seed-derived AES-256-GCM, the
//! etcd key as AAD), and decrypt them again after a restart (empty DEK cache).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::{aead, hkdf};
use keyhaven_k8s::proto::kms::key_management_service_client::KeyManagementServiceClient;
use keyhaven_k8s::proto::kms::{
    DecryptRequest, EncryptRequest, EncryptedDekSourceType, EncryptedObject, StatusRequest,
};
use prost::Message as _;
use serde_json::{Value, json};
use tonic::Code;

use crate::support::{TestServer, call, keyhaven_bin, unseal};

/// The provider name of the EncryptionConfiguration; part of every stored prefix.
pub const PROVIDER: &str = "keyhaven";

// ---------------------------------------------------------------------------------------
// The plugin process.

/// A running `keyhaven kms-plugin`; killed on drop.
pub struct PluginProcess {
    child: Child,
    pub socket: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// Settings of a test plugin.
pub struct PluginOpts<'a> {
    pub address: &'a str,
    pub key: &'a str,
    /// The token file's content, or the (role, JWT, mount) to log in with.
    pub token: Option<&'a str>,
    pub login: Option<(&'a str, &'a str, &'a str)>,
    /// Extra TOML config lines.
    pub config: &'a str,
}

impl PluginProcess {
    pub fn start(opts: &PluginOpts<'_>) -> PluginProcess {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/kms.sock");
        let config = dir.path().join("kms.toml");
        // A generous request timeout: a loaded test machine must not look like an outage.
        let mut text = opts.config.to_owned();
        for default in ["refresh_interval_ms = 200", "request_timeout_ms = 5000"] {
            let name = default.split(' ').next().unwrap();
            if !text.contains(name) {
                text.push_str(default);
                text.push('\n');
            }
        }
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(keyhaven_bin());
        cmd.arg("kms-plugin")
            .arg("--socket")
            .arg(&socket)
            .args(["--address", opts.address, "--key", opts.key])
            .arg("--config")
            .arg(&config);
        if let Some(token) = opts.token {
            let file = dir.path().join("token");
            std::fs::write(&file, format!("{token}\n")).unwrap();
            cmd.arg("--token-file").arg(file);
        }
        if let Some((role, jwt, mount)) = opts.login {
            let file = dir.path().join("jwt");
            std::fs::write(&file, jwt).unwrap();
            cmd.args(["--login-role", role, "--auth-mount", mount])
                .arg("--jwt-file")
                .arg(file);
        }
        let mut child = cmd
            .env("KEYHAVEN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let plugin = PluginProcess {
            child,
            socket,
            stderr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !plugin.socket.exists() {
            plugin.assert_alive();
            assert!(
                Instant::now() < deadline,
                "plugin did not start: {}",
                plugin.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        plugin
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn assert_alive(&self) {
        let alive = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .is_ok_and(|s| !s.contains(") Z "));
        assert!(alive, "the plugin exited: {}", self.logs());
    }

    /// SIGTERM and wait; returns whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "plugin did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The fake kube-apiserver.

/// The write state the apiserver keeps per provider.
struct WriteState {
    seed: Vec<u8>,
    ciphertext: Vec<u8>,
    key_id: String,
    annotations: HashMap<String, Vec<u8>>,
}

/// Why the fake apiserver refused an Encrypt response (the apiserver discards the new
/// seed and keeps coasting on the old one).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    KeyIdMismatch,
    CiphertextSize,
    KeyIdSize,
    Annotation(String),
}

/// The apiserver's `ValidateEncryptedObject` and `Status`/`Encrypt` key_id agreement.
pub fn check_encrypt_response(
    status_key_id: &str,
    ciphertext: &[u8],
    key_id: &str,
    annotations: &HashMap<String, Vec<u8>>,
) -> Result<(), Refusal> {
    if key_id != status_key_id {
        return Err(Refusal::KeyIdMismatch);
    }
    if ciphertext.is_empty() || ciphertext.len() > 1024 {
        return Err(Refusal::CiphertextSize);
    }
    if key_id.is_empty() || key_id.len() > 1024 {
        return Err(Refusal::KeyIdSize);
    }
    keyhaven_k8s::kms::envelope::check_annotations(
        annotations.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
    )
    .map_err(Refusal::Annotation)
}

/// The apiserver's DEK cache key: encrypted seed, key_id, sorted annotations.
type DekCacheKey = (Vec<u8>, String, BTreeMap<String, Vec<u8>>);

/// What Encrypt returned: ciphertext, key_id, annotations.
type Wrapped = (Vec<u8>, String, HashMap<String, Vec<u8>>);

/// A kube-apiserver's KMS v2 client side.
pub struct FakeApiserver {
    rt: tokio::runtime::Runtime,
    client: KeyManagementServiceClient<tonic::transport::Channel>,
    first_version: Option<String>,
    write: Option<WriteState>,
    /// Decrypted seeds by (ciphertext, key_id, sorted annotations).
    dek_cache: HashMap<DekCacheKey, Vec<u8>>,
    /// Encrypt calls made (once per key_id change).
    pub encrypts: usize,
}

/// A Status answer as the apiserver judges it.
#[derive(Debug, Clone)]
pub struct Health {
    pub healthy: bool,
    pub healthz: String,
    pub key_id: String,
}

impl FakeApiserver {
    pub fn connect(socket: &Path) -> FakeApiserver {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = rt.block_on(keyhaven_k8s::socket::connect(socket)).unwrap();
        FakeApiserver {
            rt,
            client: KeyManagementServiceClient::new(channel),
            first_version: None,
            write: None,
            dek_cache: HashMap::new(),
            encrypts: 0,
        }
    }

    /// One Status poll, judged as the apiserver does.
    pub fn status(&mut self) -> Health {
        let r = self
            .rt
            .block_on(self.client.status(StatusRequest {}))
            .unwrap()
            .into_inner();
        let first = self.first_version.get_or_insert_with(|| r.version.clone());
        let healthy = (r.version == "v2" || r.version == "v2beta1")
            && r.version == *first
            && r.healthz == "ok"
            && !r.key_id.is_empty()
            && r.key_id.len() <= 1024;
        Health {
            healthy,
            healthz: r.healthz,
            key_id: r.key_id,
        }
    }

    /// A poll followed by `rotateDEKOnKeyIDChange`: a new seed is encrypted when the
    /// key_id differs from the write state's. Returns the poll's result and the refusal,
    /// if the Encrypt response was refused.
    pub fn poll(&mut self) -> (Health, Option<Result<(), Refusal>>) {
        let health = self.status();
        if !health.healthy {
            return (health, None);
        }
        if self
            .write
            .as_ref()
            .is_some_and(|w| w.key_id == health.key_id)
        {
            return (health, None);
        }
        let mut seed = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut seed).unwrap();
        self.encrypts += 1;
        let r = self.rt.block_on(self.client.encrypt(EncryptRequest {
            plaintext: seed.clone(),
            uid: format!("uid-encrypt-{}", self.encrypts),
        }));
        let outcome = match r {
            Err(status) => Err(Refusal::Annotation(format!("Encrypt failed: {status}"))),
            Ok(r) => {
                let r = r.into_inner();
                check_encrypt_response(&health.key_id, &r.ciphertext, &r.key_id, &r.annotations)
                    .map(|()| {
                        self.write = Some(WriteState {
                            seed,
                            ciphertext: r.ciphertext,
                            key_id: r.key_id,
                            annotations: r.annotations,
                        });
                    })
            }
        };
        (health, Some(outcome))
    }

    /// The key_id new objects are written with.
    pub fn write_key_id(&self) -> Option<String> {
        self.write.as_ref().map(|w| w.key_id.clone())
    }

    /// An object as the apiserver stores it at `etcd_key`.
    pub fn encrypt_object(&self, etcd_key: &str, plaintext: &[u8]) -> Vec<u8> {
        let w = self.write.as_ref().expect("no write state: prime first");
        let mut info = [0u8; 32];
        aws_lc_rs::rand::fill(&mut info).unwrap();
        let key = derive(&w.seed, &info);
        let mut nonce = [0u8; 12];
        aws_lc_rs::rand::fill(&mut nonce).unwrap();
        let mut sealed = plaintext.to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(etcd_key.as_bytes()),
            &mut sealed,
        )
        .unwrap();
        let mut data = info.to_vec();
        data.extend_from_slice(&nonce);
        data.extend_from_slice(&sealed);
        let object = EncryptedObject {
            encrypted_data: data,
            key_id: w.key_id.clone(),
            encrypted_dek_source: w.ciphertext.clone(),
            annotations: w.annotations.clone(),
            encrypted_dek_source_type: EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed as i32,
        };
        let mut out = format!("k8s:enc:kms:v2:{PROVIDER}:").into_bytes();
        out.extend_from_slice(&object.encode_to_vec());
        out
    }

    /// Reads a stored object back: the seed from the DEK cache or a Decrypt call.
    pub fn decrypt_object(
        &mut self,
        etcd_key: &str,
        stored: &[u8],
    ) -> Result<Vec<u8>, tonic::Status> {
        let prefix = format!("k8s:enc:kms:v2:{PROVIDER}:");
        let body = stored
            .strip_prefix(prefix.as_bytes())
            .expect("stored value has the provider's prefix");
        let object = EncryptedObject::decode(body).unwrap();
        assert_eq!(
            object.encrypted_dek_source_type,
            EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed as i32
        );
        let cache_key = (
            object.encrypted_dek_source.clone(),
            object.key_id.clone(),
            object
                .annotations
                .clone()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        );
        let seed = match self.dek_cache.get(&cache_key) {
            Some(seed) => seed.clone(),
            None => {
                let r = self.rt.block_on(self.client.decrypt(DecryptRequest {
                    ciphertext: object.encrypted_dek_source.clone(),
                    uid: "uid-decrypt".into(),
                    key_id: object.key_id.clone(),
                    annotations: object.annotations.clone(),
                }))?;
                let seed = r.into_inner().plaintext;
                self.dek_cache.insert(cache_key, seed.clone());
                seed
            }
        };
        let data = object.encrypted_data;
        let (info, rest) = data.split_at(32);
        let (nonce, sealed) = rest.split_at(12);
        let key = derive(&seed, info);
        let mut buf = sealed.to_vec();
        let plain = key
            .open_in_place(
                aead::Nonce::try_assume_unique_for_key(nonce).unwrap(),
                aead::Aad::from(etcd_key.as_bytes()),
                &mut buf,
            )
            .map_err(|_| tonic::Status::data_loss("AES-GCM open failed"))?;
        Ok(plain.to_vec())
    }

    /// Raw Encrypt.
    pub fn encrypt_raw(&mut self, plaintext: &[u8]) -> Result<Wrapped, tonic::Status> {
        let r = self.rt.block_on(self.client.encrypt(EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: "uid-raw".into(),
        }))?;
        let r = r.into_inner();
        Ok((r.ciphertext, r.key_id, r.annotations))
    }

    /// Raw Decrypt.
    pub fn decrypt_raw(
        &mut self,
        ciphertext: &[u8],
        key_id: &str,
    ) -> Result<Vec<u8>, tonic::Status> {
        let r = self.rt.block_on(self.client.decrypt(DecryptRequest {
            ciphertext: ciphertext.to_vec(),
            uid: "uid-raw-decrypt".into(),
            key_id: key_id.to_owned(),
            annotations: HashMap::new(),
        }))?;
        Ok(r.into_inner().plaintext)
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The apiserver's KDF: HKDF-SHA256 Expand with the seed as PRK and the stored info.
fn derive(seed: &[u8], info: &[u8]) -> aead::LessSafeKey {
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, seed);
    let info = [info];
    let okm = prk.expand(&info, Len(32)).unwrap();
    let mut dek = [0u8; 32];
    okm.fill(&mut dek).unwrap();
    aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &dek).unwrap())
}

// ---------------------------------------------------------------------------------------
// Server helpers.

/// Mounts transit at `transit` and creates key `name`.
pub fn transit_key(addr: &str, token: &str, name: &str) {
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/sys/mounts/transit"),
        Some(token),
        Some(&json!({"type": "transit"})),
    );
    assert!(s == 204 || s == 200 || s == 400, "{s} {b}");
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/transit/keys/{name}"),
        Some(token),
        Some(&json!({})),
    );
    assert!(s == 200 || s == 204, "{s} {b}");
}

/// A ciphertext the plugin never saw: transit encrypt directly, in the plugin's format.
pub fn unseen_ciphertext(addr: &str, token: &str, name: &str, seed: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/transit/encrypt/{name}"),
        Some(token),
        Some(&json!({"plaintext": base64::engine::general_purpose::STANDARD.encode(seed)})),
    );
    assert_eq!(s, 200, "{b}");
    keyhaven_k8s::kms::envelope::encode(b["data"]["ciphertext"].as_str().unwrap()).unwrap()
}

/// Polls Status (bounded) until `want` holds.
pub fn wait_for(api: &mut FakeApiserver, what: &str, want: impl Fn(&Health) -> bool) -> Health {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = api.status();
        if want(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last {h:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config for a persistent SQLite server on a fixed loopback port (so it can be
/// restarted at the same address).
fn fixed_port_config(dir: &Path) -> PathBuf {
    let path = dir.join("keyhaven.toml");
    let text = format!(
        "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n\n[listener]\naddress = \"127.0.0.1:{}\"\ntls_disable = true\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n",
        dir.join("data/keyhaven.db").display(),
        free_port()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn count(haystack: &str, needles: &[&str]) -> usize {
    haystack
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

// ---------------------------------------------------------------------------------------
// Tests.

#[test]
fn the_apiserver_flow_primes_encrypts_polls_and_reads_back_after_a_restart() {
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
    let (health, outcome) = api.poll();
    assert!(health.healthy, "{health:?}\n{}", plugin.logs());
    assert_eq!(outcome, Some(Ok(())), "the prime Encrypt is accepted");
    assert!(
        health.key_id.starts_with("kh1:transit/k8s:1:"),
        "{health:?}"
    );
    let w = api.write.as_ref().unwrap();
    assert!(w.ciphertext.len() <= 1024 && w.ciphertext.starts_with(b"KH\x01vault:v1:"));
    assert_eq!(
        w.annotations
            .get("transit-key.kms.keyhaven.io")
            .map(Vec::as_slice),
        Some(b"transit/k8s".as_slice())
    );

    // Steady state: polls with an unchanged key_id make no Encrypt call.
    for _ in 0..3 {
        let (h, outcome) = api.poll();
        assert!(h.healthy && outcome.is_none(), "{h:?} {outcome:?}");
    }
    assert_eq!(api.encrypts, 1);

    let secret = br#"{"kind":"Secret","data":{"password":"S3CRET-MARKER-apiflow"}}"#;
    let stored: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            let key = format!("/registry/secrets/default/s{i}");
            let v = api.encrypt_object(&key, secret);
            (key, v)
        })
        .collect();
    for (key, v) in &stored {
        assert!(!crate::support::contains(v, b"S3CRET-MARKER"));
        assert_eq!(api.decrypt_object(key, v).unwrap(), secret);
    }
    // The AAD binds the etcd key: a value moved to another key does not open.
    let (_, moved) = &stored[0];
    assert_eq!(
        api.decrypt_object("/registry/secrets/default/other", moved)
            .unwrap_err()
            .code(),
        Code::DataLoss
    );

    // A restarted apiserver has no DEK cache: one Decrypt for the one seed, then reads.
    drop(api);
    let mut api = FakeApiserver::connect(&plugin.socket);
    let (h, _) = api.poll();
    assert!(h.healthy);
    for (key, v) in &stored {
        assert_eq!(api.decrypt_object(key, v).unwrap(), secret);
    }
    assert_eq!(api.dek_cache.len(), 1);

    // `keyhaven kms-plugin check` is a round trip over the socket.
    let out = Command::new(keyhaven_bin())
        .args([
            "kms-plugin",
            "check",
            "--round-trip",
            "--require-healthy",
            "--socket",
        ])
        .arg(&plugin.socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("healthz: ok") && stdout.contains("round trip: ok"),
        "{stdout}"
    );

    // No token and no plaintext in the plugin's log; a clean stop removes the socket.
    let logs = plugin.logs();
    assert!(!logs.contains(&root), "the token leaked into the log");
    assert!(!logs.contains("S3CRET-MARKER"));
    let socket = plugin.socket.clone();
    assert!(plugin.stop(), "clean exit on SIGTERM");
    assert!(!socket.exists(), "the socket is removed on stop");
}

#[test]
fn the_fake_apiserver_refuses_what_the_apiserver_refuses() {
    let ok = HashMap::from([("a.example.com".to_owned(), b"1".to_vec())]);
    assert_eq!(check_encrypt_response("k1", b"c", "k1", &ok), Ok(()));
    assert_eq!(
        check_encrypt_response("k1", b"c", "k2", &ok),
        Err(Refusal::KeyIdMismatch)
    );
    assert_eq!(
        check_encrypt_response("k1", &[0; 1025], "k1", &ok),
        Err(Refusal::CiphertextSize)
    );
    assert_eq!(
        check_encrypt_response("k1", b"", "k1", &ok),
        Err(Refusal::CiphertextSize)
    );
    let long = "k".repeat(1025);
    assert_eq!(
        check_encrypt_response(&long, b"c", &long, &ok),
        Err(Refusal::KeyIdSize)
    );
    let bad = HashMap::from([("version".to_owned(), b"1".to_vec())]);
    assert!(matches!(
        check_encrypt_response("k1", b"c", "k1", &bad),
        Err(Refusal::Annotation(_))
    ));
    let big = HashMap::from([("a.example.com".to_owned(), vec![0; 32 * 1024])]);
    assert!(matches!(
        check_encrypt_response("k1", b"c", "k1", &big),
        Err(Refusal::Annotation(_))
    ));
}

#[test]
fn a_rotation_changes_the_key_id_old_data_decrypts_and_min_decryption_version_is_enforced() {
    let server = TestServer::dev();
    let (addr, root) = (server.addr(), server.root_token());
    transit_key(&addr, &root, "k8s");
    // No seed cache: every Decrypt goes to keyhaven, so the server's rules show.
    let plugin = PluginProcess::start(&PluginOpts {
        address: &addr,
        key: "transit/k8s",
        token: Some(&root),
        login: None,
        config: "cache_size = 0\n",
    });
    let mut api = FakeApiserver::connect(&plugin.socket);
    let (h1, _) = api.poll();
    assert!(h1.healthy, "{h1:?}");
    let old = api.encrypt_object("/registry/secrets/ns/a", b"v1 data");
    let old_key_id = api.write_key_id().unwrap();

    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/transit/keys/k8s/rotate"),
        Some(&root),
        None,
    );
    assert!(s == 200 || s == 204, "{b}");
    // The refresher runs every 200 ms here (10 s by default, under the apiserver's 60 s
    // poll): the next poll after one refresh sees the new id.
    std::thread::sleep(Duration::from_millis(600));
    let (h2, outcome) = api.poll();
    assert_ne!(h2.key_id, h1.key_id, "rotation changes the key_id");
    assert!(h2.key_id.starts_with("kh1:transit/k8s:2:"), "{h2:?}");
    assert_eq!(
        outcome,
        Some(Ok(())),
        "a new seed is wrapped under the new key_id"
    );
    assert_eq!(api.encrypts, 2);
    let new = api.encrypt_object("/registry/secrets/ns/b", b"v2 data");
    assert!(
        api.write
            .as_ref()
            .unwrap()
            .ciphertext
            .starts_with(b"KH\x01vault:v2:")
    );

    let mut restarted = FakeApiserver::connect(&plugin.socket);
    assert_eq!(
        restarted
            .decrypt_object("/registry/secrets/ns/a", &old)
            .unwrap(),
        b"v1 data"
    );
    assert_eq!(
        restarted
            .decrypt_object("/registry/secrets/ns/b", &new)
            .unwrap(),
        b"v2 data"
    );

    // Version 1 retired: its data is refused, with the reason.
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/transit/keys/k8s/config"),
        Some(&root),
        Some(&json!({"min_decryption_version": 2})),
    );
    assert!(s == 200 || s == 204, "{b}");
    std::thread::sleep(Duration::from_millis(600));
    let mut again = FakeApiserver::connect(&plugin.socket);
    let err = again
        .decrypt_object("/registry/secrets/ns/a", &old)
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("min_decryption_version") || err.message().contains("too old"),
        "{err:?}"
    );
    assert_eq!(
        again
            .decrypt_object("/registry/secrets/ns/b", &new)
            .unwrap(),
        b"v2 data"
    );
    assert_ne!(old_key_id, api.write_key_id().unwrap());
}

#[test]
fn encrypt_returns_the_status_key_id_even_when_the_key_rotates_in_between() {
    let server = TestServer::dev();
    let (addr, root) = (server.addr(), server.root_token());
    transit_key(&addr, &root, "k8s");
    let plugin = PluginProcess::start(&PluginOpts {
        address: &addr,
        key: "transit/k8s",
        token: Some(&root),
        login: None,
        config: "refresh_interval_ms = 50000\n",
    });
    let mut api = FakeApiserver::connect(&plugin.socket);
    let h = api.status();
    assert!(h.healthy);
    let (s, _) = call(
        "POST",
        &format!("{addr}/v1/transit/keys/k8s/rotate"),
        Some(&root),
        None,
    );
    assert!(s == 200 || s == 204);
    let (ct, key_id, _) = api.encrypt_raw(&[7u8; 32]).unwrap();
    assert_eq!(key_id, h.key_id, "Encrypt's key_id equals Status's");
    assert!(
        ct.starts_with(b"KH\x01vault:v1:"),
        "wrapped with the version Status names"
    );
    assert_eq!(api.decrypt_raw(&ct, &key_id).unwrap(), vec![7u8; 32]);
}

/// The outage checks shared by the kill and the seal test: Status keeps the key_id and
/// reports why; seen ciphertexts decrypt; unseen ones and Encrypt fail clearly.
fn assert_outage(
    plugin: &PluginProcess,
    stored: &[(String, Vec<u8>)],
    unseen: &[u8],
    key_id: &str,
    reason: &str,
) {
    let mut api = FakeApiserver::connect(&plugin.socket);
    let h = wait_for(&mut api, "an unhealthy Status", |h| !h.healthy);
    assert_eq!(h.key_id, key_id, "a transient failure is not a rotation");
    assert!(h.healthz.contains(reason), "{h:?}");
    // A restarted apiserver still reads everything it had written.
    for (key, v) in stored {
        assert_eq!(api.decrypt_object(key, v).unwrap(), b"payload");
    }
    let err = api.decrypt_raw(unseen, key_id).unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("not in the plugin's cache"),
        "{err:?}"
    );
    let err = api.encrypt_raw(&[1u8; 32]).unwrap_err();
    assert!(matches!(err.code(), Code::Unavailable), "{err:?}");
    // Still the same key_id many polls later.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(api.status().key_id, key_id);
}

fn assert_recovered(
    plugin: &PluginProcess,
    stored: &[(String, Vec<u8>)],
    unseen: &[u8],
    key_id: &str,
) {
    let mut api = FakeApiserver::connect(&plugin.socket);
    let h = wait_for(&mut api, "a healthy Status", |h| h.healthy);
    assert_eq!(h.key_id, key_id);
    assert_eq!(api.decrypt_raw(unseen, key_id).unwrap(), vec![9u8; 32]);
    let (h, outcome) = api.poll();
    assert!(h.healthy);
    assert_eq!(outcome, Some(Ok(())));
    for (key, v) in stored {
        assert_eq!(api.decrypt_object(key, v).unwrap(), b"payload");
    }
}

#[test]
fn a_sealed_server_leaves_status_on_the_same_key_id_and_seen_seeds_decryptable() {
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
    let (h, _) = api.poll();
    assert!(h.healthy);
    let stored: Vec<_> = (0..3)
        .map(|i| {
            let k = format!("/registry/secrets/x/{i}");
            let v = api.encrypt_object(&k, b"payload");
            (k, v)
        })
        .collect();
    let unseen = unseen_ciphertext(&addr, &root, "k8s", &[9u8; 32]);

    let (s, b) = call("PUT", &format!("{addr}/v1/sys/seal"), Some(&root), None);
    assert!(s == 204 || s == 200, "{b}");
    assert_outage(&plugin, &stored, &unseen, &h.key_id, "sealed");

    unseal(&addr, &[server.unseal_key()]);
    assert_recovered(&plugin, &stored, &unseen, &h.key_id);
    let logs = plugin.logs();
    assert_eq!(
        count(&logs, &["unhealthy", "sealed"]),
        1,
        "logged once: {logs}"
    );
    assert_eq!(count(&logs, &["reachable again"]), 1, "{logs}");
}

#[test]
fn a_stopped_server_leaves_status_on_the_same_key_id_and_everything_recovers_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixed_port_config(dir.path());
    let server = TestServer::with_config(&config);
    let addr = server.addr();
    let (keys, root) = crate::support::init_unseal(&addr, 1, 1);
    transit_key(&addr, &root, "k8s");
    let plugin = PluginProcess::start(&PluginOpts {
        address: &addr,
        key: "transit/k8s",
        token: Some(&root),
        login: None,
        config: "",
    });
    let pid = plugin.pid();
    let mut api = FakeApiserver::connect(&plugin.socket);
    let (h, _) = api.poll();
    assert!(h.healthy, "{h:?}");
    let stored: Vec<_> = (0..3)
        .map(|i| {
            let k = format!("/registry/secrets/y/{i}");
            let v = api.encrypt_object(&k, b"payload");
            (k, v)
        })
        .collect();
    let unseen = unseen_ciphertext(&addr, &root, "k8s", &[9u8; 32]);

    server.kill9();
    assert_outage(&plugin, &stored, &unseen, &h.key_id, "unreachable");
    let out = Command::new(keyhaven_bin())
        .args(["kms-plugin", "check", "--socket"])
        .arg(&plugin.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "liveness passes during an outage");
    let out = Command::new(keyhaven_bin())
        .args(["kms-plugin", "check", "--require-healthy", "--socket"])
        .arg(&plugin.socket)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "readiness fails during an outage"
    );

    let server = TestServer::with_config(&config);
    assert_eq!(server.addr(), addr);
    unseal(&addr, &keys[..1]);
    assert_recovered(&plugin, &stored, &unseen, &h.key_id);
    assert_eq!(plugin.pid(), pid, "the plugin was not restarted");
    plugin.assert_alive();
    let logs = plugin.logs();
    assert_eq!(
        count(&logs, &["unhealthy", "unreachable"]),
        1,
        "logged once: {logs}"
    );
    assert!(!logs.contains(&root));
}

#[test]
fn bad_input_gets_clear_errors_and_nothing_crashes() {
    let server = TestServer::dev();
    let (addr, root) = (server.addr(), server.root_token());
    transit_key(&addr, &root, "k8s");
    transit_key(&addr, &root, "other");
    let plugin = PluginProcess::start(&PluginOpts {
        address: &addr,
        key: "transit/k8s",
        token: Some(&root),
        login: None,
        config: "",
    });
    let mut api = FakeApiserver::connect(&plugin.socket);
    let h = api.status();
    assert!(h.healthy);

    let err = api.encrypt_raw(b"").unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("plaintext is empty"), "{err:?}");
    let err = api.encrypt_raw(&[0u8; 513]).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("513 bytes"), "{err:?}");

    let (ct, key_id, _) = api.encrypt_raw(&[5u8; 32]).unwrap();
    for (garbage, why) in [
        (b"".to_vec(), "empty"),
        (b"\x00\x01garbage".to_vec(), "marker"),
        (vec![b'K'; 5000], "longer than 1024"),
        (b"KH\x01vault:v1:!!!!".to_vec(), "bad characters"),
        (b"KH\x09vault:v1:AAAA".to_vec(), "format version 9"),
    ] {
        let err = api.decrypt_raw(&garbage, &key_id).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{why}: {err:?}");
        assert!(err.message().contains(why), "{why}: {err:?}");
    }
    for (bad_id, why) in [
        ("kms-test", "unknown"),
        ("", "unknown"),
        ("kh1:transit/other:1:5", "this plugin serves transit/k8s"),
        ("kh1:transit/k8s:2:5", "names version 2"),
    ] {
        let err = api.decrypt_raw(&ct, bad_id).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad_id}: {err:?}");
        assert!(err.message().contains(why), "{bad_id}: {err:?}");
    }
    // The right version number with another creation time: the key was re-created.
    let recreated = format!("{}:1", key_id.rsplit_once(':').unwrap().0);
    let err = api.decrypt_raw(&ct, &recreated).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Well-formed but tampered: keyhaven refuses it.
    let mut tampered = unseen_ciphertext(&addr, &root, "k8s", &[1u8; 32]);
    let n = tampered.len();
    tampered[n - 6] = if tampered[n - 6] == b'A' { b'B' } else { b'A' };
    let err = api.decrypt_raw(&tampered, &key_id).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Made with another transit key: refused by the server, not a crash.
    let foreign = unseen_ciphertext(&addr, &root, "other", &[1u8; 32]);
    assert!(api.decrypt_raw(&foreign, &key_id).is_err());

    assert_eq!(api.decrypt_raw(&ct, &key_id).unwrap(), vec![5u8; 32]);
    assert!(api.status().healthy);
    plugin.assert_alive();
    let mode = std::fs::metadata(&plugin.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_socket_others_could_replace_a_bad_config_or_a_missing_socket_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let base = |socket: &Path| {
        let mut c = Command::new(keyhaven_bin());
        c.arg("kms-plugin")
            .arg("--socket")
            .arg(socket)
            .args([
                "--address",
                "http://127.0.0.1:9",
                "--key",
                "transit/k8s",
                "--token-file",
            ])
            .arg(&token);
        c
    };
    let out = base(&run.join("kms.sock")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("writable by other users"), "{stderr}");
    assert!(!run.join("kms.sock").exists());

    // A file that is not a socket is never replaced.
    let file = dir.path().join("precious");
    std::fs::write(&file, "keep").unwrap();
    let out = base(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");

    let config = dir.path().join("kms.toml");
    std::fs::write(&config, "cache_sise = 5\n").unwrap();
    let out = base(&dir.path().join("ok.sock"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `cache_sise`"));

    let out = Command::new(keyhaven_bin())
        .args([
            "kms-plugin",
            "--socket",
            "/x.sock",
            "--address",
            "http://127.0.0.1:9",
            "--key",
            "transit/k8s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));

    let out = Command::new(keyhaven_bin())
        .args(["kms-plugin", "check", "--socket"])
        .arg(dir.path().join("absent.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot dial"));
}

#[test]
fn a_jwt_login_with_a_narrow_policy_is_renewed_before_the_token_expires() {
    let server = TestServer::dev();
    let (addr, root) = (server.addr(), server.root_token());
    transit_key(&addr, &root, "k8s");
    let policy = r#"
path "transit/keys/k8s" { capabilities = ["read"] }
path "transit/encrypt/k8s" { capabilities = ["update"] }
path "transit/decrypt/k8s" { capabilities = ["update"] }
"#;
    let (s, b) = call(
        "PUT",
        &format!("{addr}/v1/sys/policies/acl/kms-plugin"),
        Some(&root),
        Some(&json!({"policy": policy})),
    );
    assert!(s == 204 || s == 200, "{b}");
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/sys/auth/jwt"),
        Some(&root),
        Some(&json!({"type": "jwt"})),
    );
    assert!(s == 204 || s == 200, "{b}");
    let key = rcgen::KeyPair::generate().unwrap();
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/auth/jwt/config"),
        Some(&root),
        Some(&json!({"jwt_validation_pubkeys": [key.public_key_pem()]})),
    );
    assert!(s == 204 || s == 200, "{b}");
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/auth/jwt/role/kms"),
        Some(&root),
        Some(&json!({
            "role_type": "jwt", "bound_audiences": ["keyhaven-kms"], "user_claim": "sub",
            "token_policies": ["kms-plugin"], "token_ttl": "3s", "token_max_ttl": "3s"
        })),
    );
    assert!(s == 204 || s == 200, "{b}");
    #[allow(
        clippy::disallowed_methods,
        reason = "the JWT's iat/exp are wall-clock times the server checks"
    )]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:kube-system:kms",
        "aud": ["keyhaven-kms"], "iat": now, "nbf": now, "exp": now + 3600
    });
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let plugin = PluginProcess::start(&PluginOpts {
        address: &addr,
        key: "transit/k8s",
        token: None,
        login: Some(("kms", &jwt, "jwt")),
        config: "",
    });
    let mut api = FakeApiserver::connect(&plugin.socket);
    let h = wait_for(&mut api, "a healthy Status", |h| h.healthy);
    let (ct, key_id, _) = api.encrypt_raw(&[3u8; 32]).unwrap();
    // Past the first token's 3 s lifetime: the plugin logged in again before it expired.
    std::thread::sleep(Duration::from_millis(4500));
    let again = api.status();
    assert!(again.healthy, "{again:?}\n{}", plugin.logs());
    assert_eq!(again.key_id, h.key_id);
    let (ct2, _, _) = api.encrypt_raw(&[4u8; 32]).unwrap();
    let mut fresh = FakeApiserver::connect(&plugin.socket);
    assert_eq!(fresh.decrypt_raw(&ct2, &key_id).unwrap(), vec![4u8; 32]);
    assert_eq!(fresh.decrypt_raw(&ct, &key_id).unwrap(), vec![3u8; 32]);
    let logs = plugin.logs();
    assert!(count(&logs, &["logged in to keyhaven"]) >= 2, "{logs}");
    assert!(!logs.contains(&jwt), "the JWT leaked into the log");
}

/// Metrics: calls, latency and cache hits on the loopback listener.
#[test]
fn metrics_count_calls_latency_and_cache_hits() {
    let server = TestServer::dev();
    let (addr, root) = (server.addr(), server.root_token());
    transit_key(&addr, &root, "k8s");
    let port = free_port();
    let plugin = PluginProcess::start(&PluginOpts {
        address: &addr,
        key: "transit/k8s",
        token: Some(&root),
        login: None,
        config: &format!("metrics_address = \"127.0.0.1:{port}\"\n"),
    });
    let mut api = FakeApiserver::connect(&plugin.socket);
    assert!(api.status().healthy);
    let (ct, key_id, _) = api.encrypt_raw(&[5u8; 32]).unwrap();
    api.decrypt_raw(&ct, &key_id).unwrap();
    api.decrypt_raw(&ct, &key_id).unwrap();
    let _ = api.decrypt_raw(b"junk", &key_id);
    let text = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    for want in [
        "keyhaven_kms_calls_total{method=\"Status\",code=\"OK\"} 1",
        "keyhaven_kms_calls_total{method=\"Encrypt\",code=\"OK\"} 1",
        "keyhaven_kms_calls_total{method=\"Decrypt\",code=\"OK\"} 2",
        "keyhaven_kms_calls_total{method=\"Decrypt\",code=\"InvalidArgument\"} 1",
        "keyhaven_kms_call_duration_seconds_count{method=\"Decrypt\"} 3",
        "keyhaven_kms_seed_cache_hits_total 2",
        "keyhaven_kms_healthy 1",
        "keyhaven_kms_key_version 1",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let _ = Value::Null;
}

#[test]
fn the_deployment_files_pass_the_posture_scan_and_the_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kms-plugin");
    let out = Command::new(keyhaven_bin())
        .args(["scan", "--posture", "--no-progress", "--format", "json"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["findings"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );

    // The static pod starts the plugin with the fixed interface and the shipped config;
    // the config's keys are all known (unknown ones would be refused).
    let pod = std::fs::read_to_string(dir.join("static-pod.yaml")).unwrap();
    for arg in [
        "- kms-plugin",
        "- --config",
        "- --socket",
        "- /var/run/kmsplugin/keyhaven.sock",
    ] {
        assert!(pod.contains(arg), "{arg}");
    }
    let enc = std::fs::read_to_string(dir.join("encryption-configuration.yaml")).unwrap();
    for line in [
        "kind: EncryptionConfiguration",
        "apiVersion: v2",
        "endpoint: unix:///var/run/kmsplugin/keyhaven.sock",
        "- identity: {}",
    ] {
        assert!(enc.contains(line), "{line}");
    }
    let raw = keyhaven_k8s::kms::RawConfig::from_file(&dir.join("kms-plugin.toml")).unwrap();
    let config = raw
        .overlay(keyhaven_k8s::kms::RawConfig {
            socket: Some("/var/run/kmsplugin/keyhaven.sock".into()),
            ..Default::default()
        })
        .validate()
        .unwrap();
    assert_eq!(config.settings.key, "k8s-etcd");
}
