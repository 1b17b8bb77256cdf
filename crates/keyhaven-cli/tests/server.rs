//! The server process end to end: restart and seal, durability under kill -9,
//! no plaintext at rest or in logs, and bad input.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    TestServer, call, call_raw, contains, files_under, init_unseal, sqlite_config, unseal,
};

fn enable_kv2(addr: &str, root: &str) {
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/sys/mounts/kv2"),
        Some(root),
        Some(&json!({"type": "kv-v2"})),
    );
    assert_eq!(s, 204, "{b}");
}

#[test]
fn health_reports_vault_status_codes_and_honours_flags() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(&sqlite_config(dir.path()));
    let addr = server.addr();
    let (s, b) = call("GET", &format!("{addr}/v1/sys/health"), None, None);
    assert_eq!((s, &b["initialized"]), (501, &json!(false)));
    assert_eq!(
        call(
            "GET",
            &format!("{addr}/v1/sys/health?uninitcode=299"),
            None,
            None
        )
        .0,
        299
    );
    let (s, b) = call(
        "PUT",
        &format!("{addr}/v1/sys/init"),
        None,
        Some(&json!({"secret_shares": 3, "secret_threshold": 2})),
    );
    assert_eq!(s, 200, "{b}");
    let (s, b) = call("GET", &format!("{addr}/v1/sys/health"), None, None);
    assert_eq!((s, &b["sealed"]), (503, &json!(true)));
    assert_eq!(
        call(
            "GET",
            &format!("{addr}/v1/sys/health?sealedcode=200"),
            None,
            None
        )
        .0,
        200
    );
    assert_eq!(
        call("HEAD", &format!("{addr}/v1/sys/health"), None, None).0,
        503
    );
}

#[test]
fn a_restarted_server_comes_up_sealed_and_has_every_value_after_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(dir.path());
    let server = TestServer::with_config(&config);
    let addr = server.addr();
    let (keys, root) = init_unseal(&addr, 5, 3);
    enable_kv2(&addr, &root);
    for i in 0..20 {
        let (s, b) = call(
            "POST",
            &format!("{addr}/v1/kv2/data/app/{i}"),
            Some(&root),
            Some(&json!({"data": {"n": i}})),
        );
        assert_eq!(s, 200, "{b}");
    }
    assert!(server.stop().success());

    let server = TestServer::with_config(&config);
    let addr = server.addr();
    let (s, status) = call("GET", &format!("{addr}/v1/sys/seal-status"), None, None);
    assert_eq!(
        (s, &status["sealed"], &status["initialized"]),
        (200, &json!(true), &json!(true))
    );
    let (s, b) = call(
        "GET",
        &format!("{addr}/v1/kv2/data/app/3"),
        Some(&root),
        None,
    );
    assert_eq!(s, 503, "{b}");
    assert!(b["errors"][0].as_str().unwrap().contains("sealed"), "{b}");
    let (s, _) = call("GET", &format!("{addr}/v1/sys/mounts"), Some(&root), None);
    assert_eq!(s, 503);
    unseal(&addr, &keys[2..5]);
    for i in 0..20 {
        let (s, b) = call(
            "GET",
            &format!("{addr}/v1/kv2/data/app/{i}"),
            Some(&root),
            None,
        );
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["data"]["data"]["n"], i);
    }
}

#[test]
fn planted_secrets_never_reach_the_database_files_or_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(dir.path());
    let server = TestServer::with_config(&config);
    let addr = server.addr();
    let (keys, root) = init_unseal(&addr, 1, 1);
    enable_kv2(&addr, &root);
    let marker = "PLANTED-c0ffee-marker-value";
    for i in 0..50 {
        let body = json!({"data": {"password": format!("{marker}-{i}"), "nested": {"k": marker}}});
        let (s, b) = call(
            "POST",
            &format!("{addr}/v1/kv2/data/app{i}"),
            Some(&root),
            Some(&body),
        );
        assert_eq!(s, 200, "{b}");
        let (s, _) = call(
            "PATCH",
            &format!("{addr}/v1/kv2/data/app{i}"),
            Some(&root),
            Some(&json!({"data": {"more": marker}})),
        );
        assert_eq!(s, 200, "patch");
    }
    // Look while the server runs (the WAL holds recent pages) and after it stops.
    let check = |when: &str| {
        let files = files_under(&dir.path().join("data"));
        assert!(
            files.iter().any(|f| f.to_string_lossy().ends_with("-wal")) || when == "stopped",
            "no WAL file: {files:?}"
        );
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            for needle in [marker.as_bytes(), root.as_bytes(), keys[0].as_bytes()] {
                assert!(
                    !contains(&bytes, needle),
                    "{when}: plaintext secret found in {}",
                    f.display()
                );
            }
        }
    };
    check("running");
    let logs = server.logs();
    assert!(
        logs.contains("\"message\":\"request\""),
        "debug request log missing; logs: {logs}"
    );
    assert!(server.stop().success());
    check("stopped");
    for needle in [marker, root.as_str(), keys[0].as_str()] {
        assert!(!logs.contains(needle), "secret found in the log");
    }
}

#[test]
fn acknowledged_writes_survive_kill_9_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(dir.path());
    let mut keys: Vec<String> = Vec::new();
    let mut root = String::new();
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    for round in 0..3 {
        let server = TestServer::with_config(&config);
        let addr = server.addr();
        if round == 0 {
            let (k, r) = init_unseal(&addr, 1, 1);
            keys = k;
            root = r;
            enable_kv2(&addr, &root);
        } else {
            unseal(&addr, &keys);
            // Everything acknowledged in earlier rounds is there.
            for (path, n) in &acknowledged {
                let (s, b) = call(
                    "GET",
                    &format!("{addr}/v1/kv2/data/{path}"),
                    Some(&root),
                    None,
                );
                assert_eq!(s, 200, "round {round}: acknowledged write {path} lost: {b}");
                assert_eq!(b["data"]["data"]["n"], *n, "round {round}: {path}");
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let (stop, acked, addr, root) =
                    (stop.clone(), acked.clone(), addr.clone(), root.clone());
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap();
                    for i in 0..2000u64 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let path = format!("r{round}/t{t}/k{i}");
                        let resp = client
                            .post(format!("{addr}/v1/kv2/data/{path}"))
                            .header("X-Vault-Token", &root)
                            .json(&json!({"data": {"n": i}}))
                            .send();
                        match resp {
                            Ok(r) if r.status().as_u16() == 200 => {
                                acked.lock().unwrap().push((path, i))
                            }
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        // Let writes flow, then kill the server mid-stream.
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.lock().unwrap().len() < 150 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.join().unwrap();
        }
        let got = acked.lock().unwrap().clone();
        assert!(
            got.len() >= 50,
            "round {round}: too few writes before the kill ({})",
            got.len()
        );
        acknowledged.extend(got);
    }
    // The database still opens and has everything.
    let server = TestServer::with_config(&config);
    let addr = server.addr();
    unseal(&addr, &keys);
    for (path, n) in &acknowledged {
        let (s, b) = call(
            "GET",
            &format!("{addr}/v1/kv2/data/{path}"),
            Some(&root),
            None,
        );
        assert_eq!(s, 200, "final: acknowledged write {path} lost: {b}");
        assert_eq!(b["data"]["data"]["n"], *n);
    }
}

fn small_limit_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = sqlite_config(dir);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "tls_disable = true",
        "tls_disable = true\nmax_request_size = 4096",
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(&small_limit_config(dir.path()));
    let addr = server.addr();
    let (keys, root) = init_unseal(&addr, 3, 2);
    enable_kv2(&addr, &root);
    let url = format!("{addr}/v1/kv2/data/app");
    let (s, _) = call(
        "POST",
        &url,
        Some(&root),
        Some(&json!({"data": {"v": "one"}})),
    );
    assert_eq!(s, 200);
    let current = || {
        call(
            "GET",
            &format!("{addr}/v1/kv2/metadata/app"),
            Some(&root),
            None,
        )
        .1["data"]["current_version"]
            .clone()
    };
    assert_eq!(current(), 1);

    let err_of = |v: &Value| v["errors"][0].as_str().unwrap_or_default().to_owned();
    let secret_bytes = b"{\"data\": {\"v\": \"SECRET-in-bad-json\"".to_vec();
    let (s, b) = call_raw("POST", &url, Some(&root), Some(secret_bytes));
    assert_eq!(s, 400, "{b}");
    assert!(err_of(&b).contains("failed to parse JSON"), "{b}");
    assert!(
        !b.to_string().contains("SECRET-in-bad-json"),
        "input echoed: {b}"
    );

    let (s, b) = call_raw("POST", &url, Some(&root), Some(b"[1,2,3]".to_vec()));
    assert_eq!(s, 400, "{b}");

    let (s, b) = call(
        "POST",
        &url,
        Some(&root),
        Some(&json!({"data": "not-an-object"})),
    );
    assert_eq!(s, 400, "{b}");

    let (s, b) = call(
        "POST",
        &url,
        Some(&root),
        Some(&json!({"data": {"v": "x"}, "options": {"cas": "abc"}})),
    );
    assert_eq!(s, 400, "{b}");
    assert!(err_of(&b).contains("check-and-set"), "{b}");

    let big = json!({"data": {"v": "x".repeat(8192)}});
    let (s, b) = call("POST", &url, Some(&root), Some(&big));
    assert_eq!(s, 413, "{b}");
    assert!(err_of(&b).contains("larger than"), "{b}");

    let (s, b) = call(
        "POST",
        &url,
        Some(&root),
        Some(&json!({"data": {"v": "two"}, "options": {"cas": 7}})),
    );
    assert_eq!(s, 400, "{b}");
    assert!(
        err_of(&b).contains("check-and-set parameter did not match"),
        "{b}"
    );

    let (s, b) = call(
        "GET",
        &format!("{addr}/v1/nomount/data/app"),
        Some(&root),
        None,
    );
    assert_eq!(s, 404, "{b}");

    let (s, b) = call("GET", &url, None, None);
    assert_eq!(s, 403, "{b}");
    assert_eq!(err_of(&b), "permission denied");
    let (s, _) = call(
        "GET",
        &url,
        Some("khs.wrongwrongwrongwrongwrongwrong123456"),
        None,
    );
    assert_eq!(s, 403);

    let (s, b) = call(
        "PUT",
        &format!("{addr}/v1/sys/init"),
        None,
        Some(&json!({"secret_shares": 1, "secret_threshold": 1})),
    );
    assert_eq!(s, 400, "{b}");
    assert!(err_of(&b).contains("already initialized"), "{b}");

    let (s, b) = call(
        "PUT",
        &format!("{addr}/v1/sys/unseal"),
        None,
        Some(&json!({"key": "zz-not-a-key"})),
    );
    assert_eq!(
        s, 400,
        "a key that is neither hex nor base64 is refused: {b}"
    );
    let (s, b) = call(
        "PUT",
        &format!("{addr}/v1/sys/unseal"),
        None,
        Some(&json!({"key": "00"})),
    );
    assert_eq!(
        (s, &b["sealed"]),
        (200, &json!(false)),
        "unsealed servers answer with their status: {b}"
    );

    assert_eq!(current(), 1, "a refused request wrote something");
    let (s, b) = call("GET", &url, Some(&root), None);
    assert_eq!((s, b["data"]["data"]["v"].as_str()), (200, Some("one")));

    // Wrong and duplicate shares on a sealed server.
    let (s, _) = call("PUT", &format!("{addr}/v1/sys/seal"), Some(&root), None);
    assert_eq!(s, 204);
    let (s, b) = call(
        "PUT",
        &format!("{addr}/v1/sys/unseal"),
        None,
        Some(&json!({"key": "zz-not-a-key"})),
    );
    assert_eq!(s, 400, "{b}");
    let (s, _) = call(
        "PUT",
        &format!("{addr}/v1/sys/unseal"),
        None,
        Some(&json!({"key": keys[0]})),
    );
    assert_eq!(s, 200);
    let (s, b) = call(
        "PUT",
        &format!("{addr}/v1/sys/unseal"),
        None,
        Some(&json!({"key": keys[0]})),
    );
    assert_eq!(s, 400, "{b}");
    assert!(err_of(&b).contains("already provided"), "{b}");
    let (s, b) = call(
        "PUT",
        &format!("{addr}/v1/sys/unseal"),
        None,
        Some(&json!({"key": keys[1]})),
    );
    assert_eq!((s, &b["sealed"]), (200, &json!(false)), "{b}");
}

#[test]
fn bearer_tokens_are_accepted() {
    let server = TestServer::dev();
    let client = reqwest::blocking::Client::new();
    let r = client
        .get(format!("{}/v1/sys/mounts", server.addr()))
        .header("Authorization", format!("Bearer {}", server.root_token()))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn dev_mode_refuses_non_loopback_addresses() {
    let out = std::process::Command::new(crate::support::keyhaven_bin())
        .args(["server", "--dev", "--dev-listen-address", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
