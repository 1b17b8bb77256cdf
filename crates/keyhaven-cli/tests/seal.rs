//! Auto-unseal through a PKCS#11 HSM (SoftHSM2, one token per test with its own
//! `SOFTHSM2_CONF`, found by label), recovery shares, seal migration, and the process's
//! memory hygiene. SoftHSM2 and `pkcs11-tool` (Debian `softhsm2`, `opensc`) are
//! installed by `scripts/test`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{TestServer, call, contains, files_under};

const SOFTHSM_LIB: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "5678";
const TOKEN: &str = "kms";

/// A SoftHSM2 token of its own, in a temporary directory.
struct SoftHsm {
    dir: tempfile::TempDir,
}

impl SoftHsm {
    fn new() -> SoftHsm {
        assert!(
            Path::new(SOFTHSM_LIB).exists(),
            "{SOFTHSM_LIB} is missing: install softhsm2 and opensc (scripts/test does as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let hsm = SoftHsm { dir };
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", hsm.conf())
            .args([
                "--init-token",
                "--free",
                "--label",
                TOKEN,
                "--so-pin",
                "1234",
                "--pin",
                PIN,
            ])
            .output()
            .expect("run softhsm2-util");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        hsm
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    fn tool(&self, args: &[&str]) -> Output {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", self.conf())
            .args([
                "--module",
                SOFTHSM_LIB,
                "--token-label",
                TOKEN,
                "--login",
                "--pin",
                PIN,
            ])
            .args(args)
            .output()
            .expect("run pkcs11-tool");
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// An AES-256 key; `extractable` only where a test must read the key back.
    fn aes_key(&self, label: &str, id: &str, extractable: bool) {
        let flag = if extractable {
            "--extractable"
        } else {
            "--sensitive"
        };
        self.tool(&[
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            label,
            "--id",
            id,
            "--usage-decrypt",
            flag,
        ]);
    }

    fn rsa_key(&self, label: &str, id: &str) {
        self.tool(&[
            "--keypair",
            "--key-type",
            "rsa:2048",
            "--label",
            label,
            "--id",
            id,
            "--usage-decrypt",
        ]);
    }

    fn delete_aes_key(&self, label: &str) {
        self.tool(&["--delete-object", "--type", "secrkey", "--label", label]);
    }

    fn read_aes_key(&self, label: &str) -> Vec<u8> {
        self.tool(&["--read-object", "--type", "secrkey", "--label", label])
            .stdout
    }
}

/// A server directory: SQLite storage, a PIN file, and a config with `seal` (a `[seal]`
/// table body, or empty for Shamir).
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_pin(&self, pin: &str) -> PathBuf {
        let path = self.path().join("pin");
        std::fs::write(&path, format!("{pin}\n")).unwrap();
        path
    }

    fn config(&self, seal: &str) -> PathBuf {
        let path = self.path().join("keyhaven.toml");
        let mut text = format!(
            "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n\n[listener]\naddress = \"127.0.0.1:0\"\ntls_disable = true\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n",
            self.path().join("data/keyhaven.db").display()
        );
        if !seal.is_empty() {
            text.push_str("\n[seal]\n");
            text.push_str(seal);
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    fn pkcs11_config(&self, key_label: &str, extra: &str) -> PathBuf {
        let pin = self.path().join("pin");
        if !pin.exists() {
            self.write_pin(PIN);
        }
        self.config(&format!(
            "type = \"pkcs11\"\nlib = \"{SOFTHSM_LIB}\"\ntoken_label = \"{TOKEN}\"\npin_file = \"{}\"\nkey_label = \"{key_label}\"\n{extra}",
            pin.display()
        ))
    }

    fn start(&self, hsm: &SoftHsm, config: &Path) -> TestServer {
        let mut command = Command::new(crate::support::keyhaven_bin());
        command.env("SOFTHSM2_CONF", hsm.conf()).args([
            "server",
            "--config",
            config.to_str().unwrap(),
        ]);
        TestServer::with_command(command)
    }
}

fn status(addr: &str) -> Value {
    let (code, body) = call("GET", &format!("{addr}/v1/sys/seal-status"), None, None);
    assert_eq!(code, 200, "{body}");
    body
}

fn wait_unsealed(server: &TestServer) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&server.addr());
        if s["sealed"] == false {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "not unsealed: {s}\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for a log line containing `needle`; returns it.
fn wait_log(server: &TestServer, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(line) = server.logs().lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?}:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn init_recovery(addr: &str, n: u8, t: u8) -> (Vec<String>, String) {
    let (code, body) = call(
        "PUT",
        &format!("{addr}/v1/sys/init"),
        None,
        Some(&json!({"recovery_shares": n, "recovery_threshold": t})),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["keys"], json!([]), "{body}");
    let keys = body["recovery_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(keys.len(), usize::from(n));
    (keys, body["root_token"].as_str().unwrap().to_owned())
}

fn write_secret(addr: &str, token: &str, name: &str, value: &str) {
    let (code, body) = call(
        "POST",
        &format!("{addr}/v1/secret/data/{name}"),
        Some(token),
        Some(&json!({"data": {"value": value}})),
    );
    assert_eq!(code, 200, "{body}");
}

fn read_secret(addr: &str, token: &str, name: &str) -> String {
    let (code, body) = call(
        "GET",
        &format!("{addr}/v1/secret/data/{name}"),
        Some(token),
        None,
    );
    assert_eq!(code, 200, "{body}");
    body["data"]["data"]["value"].as_str().unwrap().to_owned()
}

fn mount_kv(addr: &str, token: &str) {
    let (code, body) = call(
        "POST",
        &format!("{addr}/v1/sys/mounts/secret"),
        Some(token),
        Some(&json!({"type": "kv", "options": {"version": "2"}})),
    );
    assert_eq!(code, 204, "{body}");
}

fn unseal_call(addr: &str, key: &str, migrate: bool) -> (u16, Value) {
    let mut body = json!({ "key": key });
    if migrate {
        body["migrate"] = json!(true);
    }
    call("PUT", &format!("{addr}/v1/sys/unseal"), None, Some(&body))
}

/// The sealed root-key blob (`KHSEAL` format 1) found in the storage files: (iv, ct).
fn find_sealed_root(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    for file in files_under(dir) {
        let bytes = std::fs::read(&file).unwrap();
        let Some(at) = bytes.windows(8).position(|w| w == b"KHSEAL\x01\x06") else {
            continue;
        };
        let mut r = &bytes[at + 7..];
        let mut take = |n: usize| {
            let (head, tail) = r.split_at(n);
            r = tail;
            head.to_vec()
        };
        let tlen = usize::from(take(1)[0]);
        assert_eq!(take(tlen), b"pkcs11");
        let k = take(2);
        let klen = usize::from(u16::from_be_bytes([k[0], k[1]]));
        take(klen);
        let ivlen = usize::from(take(1)[0]);
        let iv = take(ivlen);
        let c = take(4);
        let clen = usize::try_from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap();
        return (iv, take(clen));
    }
    panic!("no sealed root key in {}", dir.display());
}

#[test]
fn pkcs11_seal_unseals_at_start_and_the_root_key_never_reaches_storage() {
    let hsm = SoftHsm::new();
    // Extractable only so this test can read the key back and decrypt the blob itself.
    hsm.aes_key("kek", "01", true);
    let site = Site::new();
    let config = site.pkcs11_config("kek", "");
    let server = site.start(&hsm, &config);
    let addr = server.addr();
    let s = status(&addr);
    assert_eq!(
        (
            &s["type"],
            &s["recovery_seal"],
            &s["recovery_seal_type"],
            &s["initialized"]
        ),
        (
            &json!("pkcs11"),
            &json!(true),
            &json!("shamir"),
            &json!(false)
        ),
        "{s}"
    );
    // The Shamir parameters are refused under auto-unseal, as OpenBao does.
    let (code, body) = call(
        "PUT",
        &format!("{addr}/v1/sys/init"),
        None,
        Some(&json!({"secret_shares": 3, "secret_threshold": 2})),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["errors"][0],
        "parameters secret_shares,secret_threshold not applicable to seal type pkcs11"
    );
    let (recovery, root) = init_recovery(&addr, 3, 2);
    let s = wait_unsealed(&server);
    assert_eq!((&s["t"], &s["n"]), (&json!(2), &json!(3)), "{s}");
    mount_kv(&addr, &root);
    write_secret(&addr, &root, "app", "planted-value-4711");
    drop(server);

    // Restart: unsealed by the HSM without any share; the data is readable.
    let server = site.start(&hsm, &config);
    let addr = server.addr();
    wait_unsealed(&server);
    assert_eq!(read_secret(&addr, &root, "app"), "planted-value-4711");
    wait_log(&server, "unsealed by the seal");

    // Recovery shares authorize generate-root (and only with the threshold).
    let (code, attempt) = call(
        "PUT",
        &format!("{addr}/v1/sys/generate-root-token/attempt"),
        Some(&root),
        Some(&json!({})),
    );
    assert_eq!(code, 200, "{attempt}");
    let attempt = &attempt["data"];
    assert_eq!(attempt["required"], 2, "{attempt}");
    let otp = attempt["otp"].as_str().unwrap().to_owned();
    let nonce = attempt["nonce"].as_str().unwrap().to_owned();
    let mut last = Value::Null;
    for key in &recovery[1..3] {
        let (code, body) = call(
            "PUT",
            &format!("{addr}/v1/sys/generate-root-token/update"),
            Some(&root),
            Some(&json!({"key": key, "nonce": nonce})),
        );
        assert_eq!(code, 200, "{body}");
        last = body["data"].clone();
    }
    assert_eq!(last["complete"], true, "{last}");
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(last["encoded_token"].as_str().unwrap())
        .unwrap();
    let new_root: String = encoded
        .iter()
        .zip(otp.bytes())
        .map(|(a, b)| char::from(a ^ b))
        .collect();
    assert_eq!(read_secret(&addr, &new_root, "app"), "planted-value-4711");

    // After a manual seal, the recovery shares unseal (through the HSM).
    let (code, body) = call("PUT", &format!("{addr}/v1/sys/seal"), Some(&root), None);
    assert_eq!(code, 204, "{body}");
    assert_eq!(status(&addr)["sealed"], true);
    let (code, body) = unseal_call(&addr, &recovery[0], false);
    assert_eq!((code, &body["progress"]), (200, &json!(1)), "{body}");
    let (code, body) = unseal_call(&addr, &recovery[2], false);
    assert_eq!((code, &body["sealed"]), (200, &json!(false)), "{body}");
    drop(server);

    // The blob in storage is the HSM's ciphertext: decrypting it with the HSM key gives
    // the root key, which appears nowhere in the storage files (raw, hex or base64).
    let key = hsm.read_aes_key("kek");
    assert_eq!(key.len(), 32);
    let (iv, ct) = find_sealed_root(&site.path().join("data"));
    let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key).unwrap();
    let opener = aws_lc_rs::aead::LessSafeKey::new(unbound);
    let mut buf = ct.clone();
    let root_key = opener
        .open_in_place(
            aws_lc_rs::aead::Nonce::try_assume_unique_for_key(&iv).unwrap(),
            aws_lc_rs::aead::Aad::from(b"core/root-key"),
            &mut buf,
        )
        .expect("the blob decrypts with the HSM key")
        .to_vec();
    assert_eq!(root_key.len(), 32);
    let hex_key = root_key
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let b64_key = base64::engine::general_purpose::STANDARD.encode(&root_key);
    for file in files_under(&site.path().join("data")) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in [&root_key[..], hex_key.as_bytes(), b64_key.as_bytes()] {
            assert!(!contains(&bytes, needle), "root key in {}", file.display());
        }
        assert!(
            !contains(&bytes, b"planted-value-4711"),
            "{}",
            file.display()
        );
    }
}

#[test]
fn a_missing_hsm_key_or_a_wrong_pin_keeps_the_server_sealed_and_says_why() {
    let hsm = SoftHsm::new();
    hsm.aes_key("kek", "02", false);
    let site = Site::new();
    let config = site.pkcs11_config("kek", "");
    let server = site.start(&hsm, &config);
    let (recovery, _root) = init_recovery(&server.addr(), 1, 1);
    drop(server);

    // A wrong PIN: sealed, retried, the reason logged; recovery shares do not unseal.
    site.write_pin("0000");
    let server = site.start(&hsm, &config);
    let addr = server.addr();
    let line = wait_log(&server, "auto-unseal failed");
    assert!(line.contains("the PIN is wrong"), "{line}");
    let s = status(&addr);
    assert_eq!(
        (&s["sealed"], &s["initialized"]),
        (&json!(true), &json!(true)),
        "{s}"
    );
    // The recovery key checks out, but only the HSM can decrypt the root key: the
    // answer is 503, and the log says why.
    let (code, body) = unseal_call(&addr, &recovery[0], false);
    assert_eq!(code, 503, "{body}");
    let line = wait_log(&server, "request failed");
    assert!(
        line.contains("the pkcs11 seal cannot decrypt the root key") && line.contains("PIN"),
        "{line}"
    );
    assert_eq!(status(&addr)["sealed"], true);
    drop(server);

    // The HSM key gone: sealed, and the log names the key and the token.
    site.write_pin(PIN);
    hsm.delete_aes_key("kek");
    let server = site.start(&hsm, &config);
    let line = wait_log(&server, "auto-unseal failed");
    assert!(
        line.contains(r#"the HSM key (label \"kek\") was not found on token \"kms\""#),
        "{line}"
    );
    assert_eq!(status(&server.addr())["sealed"], true);
}

#[test]
fn rsa_oaep_seals_and_unseals_across_a_restart() {
    let hsm = SoftHsm::new();
    hsm.rsa_key("rsa-kek", "03");
    let site = Site::new();
    // SoftHSM2 implements OAEP with SHA-1 only.
    let config = site.pkcs11_config(
        "rsa-kek",
        "mechanism = \"CKM_RSA_PKCS_OAEP\"\nrsa_oaep_hash = \"sha1\"\n",
    );
    let server = site.start(&hsm, &config);
    let (_, root) = init_recovery(&server.addr(), 1, 1);
    mount_kv(&server.addr(), &root);
    write_secret(&server.addr(), &root, "r", "rsa-sealed");
    drop(server);
    let server = site.start(&hsm, &config);
    wait_unsealed(&server);
    assert_eq!(read_secret(&server.addr(), &root, "r"), "rsa-sealed");
}

#[test]
fn a_rotated_hsm_key_keeps_the_old_blob_readable() {
    let hsm = SoftHsm::new();
    hsm.aes_key("kek-1", "04", false);
    hsm.aes_key("kek-2", "05", false);
    let site = Site::new();
    let server = site.start(&hsm, &site.pkcs11_config("kek-1", ""));
    let (_, root) = init_recovery(&server.addr(), 1, 1);
    drop(server);
    // The config now names the new key; the blob names the old one, still on the token.
    let server = site.start(&hsm, &site.pkcs11_config("kek-2", ""));
    wait_unsealed(&server);
    let (code, body) = call(
        "GET",
        &format!("{}/v1/auth/token/lookup-self", server.addr()),
        Some(&root),
        None,
    );
    assert_eq!(code, 200, "{body}");
}

#[test]
fn migration_from_shamir_to_pkcs11_and_back_keeps_every_secret_readable() {
    let hsm = SoftHsm::new();
    hsm.aes_key("kek", "06", false);
    let site = Site::new();
    let shamir = site.config("");
    let server = TestServer::with_config(&shamir);
    let addr = server.addr();
    // The recovery parameters are refused under Shamir, as OpenBao does.
    let (code, body) = call(
        "PUT",
        &format!("{addr}/v1/sys/init"),
        None,
        Some(&json!({"recovery_shares": 1, "recovery_threshold": 1})),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["errors"][0],
        "parameters recovery_shares,recovery_threshold not applicable to seal type shamir"
    );
    let (shares, root) = crate::support::init_unseal(&addr, 3, 2);
    mount_kv(&addr, &root);
    write_secret(&addr, &root, "one", "before-migration");
    drop(server);

    // Step 1: Shamir → PKCS#11 with the old shares and migrate=true.
    let pkcs11 = site.pkcs11_config("kek", "");
    let server = site.start(&hsm, &pkcs11);
    let addr = server.addr();
    let s = status(&addr);
    assert_eq!(
        (&s["sealed"], &s["migration"]),
        (&json!(true), &json!(true)),
        "{s}"
    );
    let (code, body) = unseal_call(&addr, &shares[0], false);
    assert_eq!(code, 400, "{body}");
    assert!(
        body["errors"][0].as_str().unwrap().contains("migrate=true"),
        "{body}"
    );
    unseal_call(&addr, &shares[0], true);
    let (code, s) = unseal_call(&addr, &shares[1], true);
    assert_eq!((code, &s["sealed"]), (200, &json!(false)), "{s}");
    let s = status(&addr);
    assert_eq!(
        (&s["type"], &s["recovery_seal"], &s["migration"]),
        (&json!("pkcs11"), &json!(true), &json!(false)),
        "{s}"
    );
    assert_eq!(read_secret(&addr, &root, "one"), "before-migration");
    write_secret(&addr, &root, "two", "under-pkcs11");
    drop(server);

    // The HSM now unseals; the old shares no longer do, neither without the HSM nor
    // under a Shamir config.
    let server = site.start(&hsm, &pkcs11);
    wait_unsealed(&server);
    assert_eq!(read_secret(&server.addr(), &root, "two"), "under-pkcs11");
    drop(server);
    site.write_pin("0000");
    let server = site.start(&hsm, &pkcs11);
    wait_log(&server, "auto-unseal failed");
    unseal_call(&server.addr(), &shares[0], false);
    let (code, body) = unseal_call(&server.addr(), &shares[1], false);
    assert_eq!(code, 503, "{body}");
    assert_eq!(status(&server.addr())["sealed"], true);
    drop(server);
    site.write_pin(PIN);
    let server = TestServer::with_config(&site.config(""));
    let (code, body) = unseal_call(&server.addr(), &shares[0], false);
    assert_eq!(code, 400, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("storage is sealed by the \"pkcs11\" seal"),
        "{body}"
    );
    drop(server);

    // Step 2: PKCS#11 → Shamir: the seal block marked disabled, the recovery shares
    // (the former unseal shares) with migrate=true.
    let back = site.pkcs11_config("kek", "disabled = \"true\"\n");
    let server = site.start(&hsm, &back);
    let addr = server.addr();
    assert_eq!(status(&addr)["migration"], true);
    unseal_call(&addr, &shares[2], true);
    let (code, s) = unseal_call(&addr, &shares[0], true);
    assert_eq!((code, &s["sealed"]), (200, &json!(false)), "{s}");
    assert_eq!(status(&addr)["type"], "shamir");
    assert_eq!(read_secret(&addr, &root, "one"), "before-migration");
    assert_eq!(read_secret(&addr, &root, "two"), "under-pkcs11");
    drop(server);

    // Plain Shamir again: the shares unseal, every secret is there.
    let server = TestServer::with_config(&site.config(""));
    crate::support::unseal(&server.addr(), &shares[1..3]);
    assert_eq!(
        read_secret(&server.addr(), &root, "one"),
        "before-migration"
    );
    assert_eq!(read_secret(&server.addr(), &root, "two"), "under-pkcs11");
}

/// `/proc/<pid>/status` of the server.
fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_owned()
}

/// `keyhaven args…` run as an unprivileged user when the tests run as root (so that a
/// dumpable process's `/proc/<pid>` files would belong to that user), with `CAP_IPC_LOCK`
/// as its only (ambient) capability when `ipc_lock`, and `RLIMIT_MEMLOCK` lowered to
/// `memlock` KiB when given.
fn unprivileged(args: &[&str], ipc_lock: bool, memlock: Option<u64>, dir: &Path) -> Command {
    let root = rustix::process::geteuid().is_root();
    if root {
        // The server must be able to create its storage under `dir`.
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        for d in [dir, data.as_path()] {
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
    }
    let limit = memlock.map_or_else(String::new, |kib| format!("ulimit -l {kib} && "));
    let caps = if ipc_lock { "-all,+ipc_lock" } else { "-all" };
    let script = if root {
        format!(
            "{limit}exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps={caps} --ambient-caps={caps} --bounding-set={caps} \"$0\" \"$@\""
        )
    } else {
        format!("{limit}exec \"$0\" \"$@\"")
    };
    let mut command = Command::new("sh");
    command
        .args(["-c", &script, crate::support::keyhaven_bin()])
        .args(args);
    command
}

#[test]
fn the_server_is_not_dumpable_has_no_core_limit_and_locks_its_memory() {
    let site = Site::new();
    let config = site.config("");
    // Readable by the unprivileged user the server may run as.
    let world: std::fs::Permissions = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(site.path(), world).unwrap();
    // CAP_IPC_LOCK lifts RLIMIT_MEMLOCK, as a deployment that locks memory would grant.
    let server = TestServer::with_command(unprivileged(
        &["server", "--config", config.to_str().unwrap()],
        true,
        None,
        site.path(),
    ));
    let (shares, root) = crate::support::init_unseal(&server.addr(), 1, 1);
    assert_eq!(shares.len(), 1);
    mount_kv(&server.addr(), &root);
    let pid = server.pid();
    let status = proc_status(pid);
    // Not dumpable: the kernel gives its /proc entries to root, whatever its uid.
    let uid = status_field(&status, "Uid");
    let real_uid: u32 = uid.split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(real_uid, 0, "the server must run unprivileged here: {uid}");
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(format!("/proc/{pid}/status")).unwrap(),
    );
    assert_eq!(
        owner, 0,
        "/proc/{pid} belongs to uid {owner}: the server is dumpable"
    );
    // Locked memory shows in VmLck.
    let locked: u64 = status_field(&status, "VmLck")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    assert!(locked > 0, "VmLck: {locked} kB");
    // No core file, ever.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );
}

#[test]
fn a_memlock_limit_too_low_is_a_clear_start_up_error_unless_mlock_is_disabled() {
    let site = Site::new();
    let config = site.config("");
    let world: std::fs::Permissions = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(site.path(), world).unwrap();
    let out = unprivileged(
        &["server", "--config", config.to_str().unwrap()],
        false,
        Some(8192),
        site.path(),
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RLIMIT_MEMLOCK is 8388608 bytes") && err.contains("disable_mlock = true"),
        "{err}"
    );
    // The escape hatch: the same limit with disable_mlock starts, with nothing locked.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("disable_mlock = true\n{text}")).unwrap();
    let server = TestServer::with_command(unprivileged(
        &["server", "--config", config.to_str().unwrap()],
        false,
        Some(8192),
        site.path(),
    ));
    let status = proc_status(server.pid());
    assert_eq!(status_field(&status, "VmLck"), "0 kB");
}
