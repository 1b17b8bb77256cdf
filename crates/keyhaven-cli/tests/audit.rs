//! The file audit device end to end: hashing, the hash chain and `keyhaven audit verify`,
//! fail-closed behaviour with a sink that fails or hangs, and SIGHUP rotation.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestServer, call, call_status, contains, init_unseal, keyhaven_bin, unseal};

const PLANTED: &str = "audit-planted-Zq9x7W2vLk4mP0";

/// A plain-HTTP SQLite server config with one `[[audit]]` table (`extra` goes into it).
fn audit_config(dir: &Path, audit_path: &Path, extra: &str) -> PathBuf {
    let path = dir.join("keyhaven.toml");
    let text = format!(
        "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n\n[listener]\naddress = \"127.0.0.1:0\"\ntls_disable = true\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n[[audit]]\ntype = \"file\"\npath = \"{}\"\ndescription = \"e2e audit\"\n{extra}\n",
        dir.join("data/keyhaven.db").display(),
        audit_path.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn enable_kv2(addr: &str, root: &str) {
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/sys/mounts/secret"),
        Some(root),
        Some(&json!({"type": "kv", "options": {"version": "2"}})),
    );
    assert_eq!(s, 204, "{b}");
}

fn keyhaven(args: &[&str]) -> Output {
    Command::new(keyhaven_bin())
        .args(args)
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .output()
        .unwrap()
}

fn verify(files: &[&Path], extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = keyhaven(&args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// A server with a file device at `dir/audit.log`, initialized, unsealed, KV v2 at
/// `secret/`, one secret written and read. Returns the server, the root token and the
/// unseal keys.
fn boot_with_secret(dir: &Path) -> (TestServer, String, Vec<String>) {
    let server = TestServer::with_config(&audit_config(dir, &dir.join("audit.log"), ""));
    let addr = server.addr();
    let (keys, root) = init_unseal(&addr, 1, 1);
    enable_kv2(&addr, &root);
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/secret/data/app"),
        Some(&root),
        Some(&json!({"data": {"password": PLANTED, "port": 5432}})),
    );
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        "GET",
        &format!("{addr}/v1/secret/data/app"),
        Some(&root),
        None,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["data"]["password"], PLANTED);
    (server, root, keys)
}

#[test]
fn a_planted_secret_never_reaches_the_audit_file_and_hashes_match() {
    let dir = tempfile::tempdir().unwrap();
    let (server, root, _) = boot_with_secret(dir.path());
    let addr = server.addr();
    // A denied request (unknown token) is recorded too.
    let (s, _) = call(
        "GET",
        &format!("{addr}/v1/secret/data/app"),
        Some("not-a-token"),
        None,
    );
    assert_eq!(s, 403);

    let (s, listed) = call("GET", &format!("{addr}/v1/sys/audit"), Some(&root), None);
    assert_eq!(s, 200, "{listed}");
    assert_eq!(listed["data"]["file/"]["type"], "file");
    assert_eq!(listed["data"]["file/"]["description"], "e2e audit");
    let (s, hashed) = call(
        "POST",
        &format!("{addr}/v1/sys/audit-hash/file"),
        Some(&root),
        Some(&json!({"input": PLANTED})),
    );
    assert_eq!(s, 200, "{hashed}");
    let hash = hashed["data"]["hash"].as_str().unwrap().to_owned();
    assert!(hash.starts_with("hmac-sha256:"), "{hash}");

    let out = keyhaven(&["audit", "list", "--address", &addr, "--token", &root]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("file/") && stdout.contains("e2e audit"),
        "{stdout}"
    );

    server.stop();
    let audit = dir.path().join("audit.log");
    let bytes = std::fs::read(&audit).unwrap();
    assert!(
        !contains(&bytes, PLANTED.as_bytes()),
        "planted secret in the audit file"
    );
    assert!(
        !contains(&bytes, root.as_bytes()),
        "root token in the audit file"
    );
    assert!(
        !contains(&bytes, b"not-a-token"),
        "presented token in the audit file"
    );
    let records: Vec<Value> = lines_of(&audit)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let write = records
        .iter()
        .find(|r| {
            r["type"] == "request"
                && r["request"]["path"] == "secret/data/app"
                && r["request"]["operation"] == "update"
        })
        .expect("the write's request record");
    assert_eq!(write["request"]["data"]["data"]["password"], hash.as_str());
    assert_eq!(write["request"]["data"]["data"]["port"], 5432);
    let read = records
        .iter()
        .find(|r| {
            r["type"] == "response"
                && r["request"]["operation"] == "read"
                && r["request"]["path"] == "secret/data/app"
        })
        .expect("the read's response record");
    assert_eq!(read["response"]["data"]["data"]["password"], hash.as_str());
    let denied = records
        .iter()
        .find(|r| r["error"] == "permission denied")
        .expect("the denied request");
    assert_eq!(denied["type"], "request");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&audit).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let (ok, stdout, stderr) = verify(&[&audit], &[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("closed"), "{stdout}");
}

#[test]
fn verify_names_the_record_that_was_edited_removed_moved_or_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _root, _) = boot_with_secret(dir.path());
    server.stop();
    let original = dir.path().join("audit.log");
    let lines = lines_of(&original);
    assert!(lines.len() >= 8, "{}", lines.len());
    let copy = dir.path().join("tampered.log");

    // One byte changed in line 5 (a digit of its time, so the line is still valid JSON).
    let mut edited = lines.clone();
    let at = edited[4].find("\"time\":\"").unwrap() + 11;
    let mut bytes = edited[4].clone().into_bytes();
    assert!(bytes[at].is_ascii_digit());
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    edited[4] = String::from_utf8(bytes).unwrap();
    write_lines(&copy, &edited);
    let (ok, _, err) = verify(&[&copy], &[]);
    assert!(!ok);
    assert!(err.contains("line 5: edited record"), "{err}");

    // One byte changed so that the line is no longer JSON.
    let mut broken = lines.clone();
    broken[3].insert(0, '#');
    write_lines(&copy, &broken);
    let (ok, _, err) = verify(&[&copy], &[]);
    assert!(!ok && err.contains("line 4: malformed record"), "{err}");

    let mut deleted = lines.clone();
    deleted.remove(4);
    write_lines(&copy, &deleted);
    let (ok, _, err) = verify(&[&copy], &[]);
    assert!(!ok && err.contains("line 5: missing records"), "{err}");

    let mut swapped = lines.clone();
    swapped.swap(4, 5);
    write_lines(&copy, &swapped);
    let (ok, _, err) = verify(&[&copy], &[]);
    assert!(!ok && err.contains("line 5: reordered records"), "{err}");

    let mut inserted = lines.clone();
    inserted.insert(6, lines[2].clone());
    write_lines(&copy, &inserted);
    let (ok, _, err) = verify(&[&copy], &[]);
    assert!(!ok && err.contains("line 7: inserted record"), "{err}");

    // Cut inside the last record.
    std::fs::copy(&original, &copy).unwrap();
    let len = std::fs::metadata(&copy).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_len(len - 20)
        .unwrap();
    let (ok, _, err) = verify(&[&copy], &[]);
    assert!(
        !ok && err.contains(&format!("line {}: truncated record", lines.len())),
        "{err}"
    );

    // Cut at a line boundary: the close record is gone.
    write_lines(&copy, &lines[..6]);
    let (ok, _, err) = verify(&[&copy], &[]);
    assert!(
        !ok && err.contains("ends at line 6") && err.contains("close record"),
        "{err}"
    );
    // A live file may be checked with --allow-open; --head still catches the cut.
    let (ok, _, _) = verify(&[&copy], &["--allow-open"]);
    assert!(ok);
    let (ok, stdout, _) = verify(&[&original], &["--json"]);
    assert!(ok);
    let head: Value = serde_json::from_str(&stdout).unwrap();
    let head = head["files"][0]["last_hash"].as_str().unwrap().to_owned();
    let (ok, _, err) = verify(&[&copy], &["--head", &head]);
    assert!(!ok && err.contains("not the expected head"), "{err}");
    let (ok, _, _) = verify(&[&original], &["--head", &head]);
    assert!(ok);

    // The untouched file still verifies.
    let (ok, out, err) = verify(&[&original], &[]);
    assert!(ok, "{out}{err}");
}

#[test]
fn an_unwritable_audit_file_fails_requests_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, root, keys) = boot_with_secret(dir.path());
    server.stop();

    // Restart with an audit file that cannot be written.
    let full = TestServer::with_config(&audit_config(
        dir.path(),
        Path::new("/dev/full"),
        "timeout = \"2s\"",
    ));
    let addr = full.addr();
    unseal(&addr, &keys[..1]);
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/secret/data/app"),
        Some(&root),
        Some(&json!({"data": {"password": "written-while-audit-failed"}})),
    );
    assert_eq!(s, 503, "{b}");
    let (s, _) = call(
        "POST",
        &format!("{addr}/v1/secret/data/new"),
        Some(&root),
        Some(&json!({"data": {"k": "v"}})),
    );
    assert_eq!(s, 503);
    let (s, _) = call(
        "GET",
        &format!("{addr}/v1/secret/data/app"),
        Some(&root),
        None,
    );
    assert_eq!(s, 503, "reads are refused too: they cannot be audited");
    assert_eq!(call_status(&format!("{addr}/v1/sys/health")), Some(200));
    assert!(full.logs().contains("audit"), "the failure is logged");
    full.stop();

    // Audit fixed: the writes attempted while it failed had no effect.
    let server =
        TestServer::with_config(&audit_config(dir.path(), &dir.path().join("audit.log"), ""));
    let addr = server.addr();
    unseal(&addr, &keys[..1]);
    let (s, b) = call(
        "GET",
        &format!("{addr}/v1/secret/data/app"),
        Some(&root),
        None,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["data"]["password"], PLANTED);
    assert_eq!(b["data"]["metadata"]["version"], 1);
    let (s, _) = call(
        "GET",
        &format!("{addr}/v1/secret/data/new"),
        Some(&root),
        None,
    );
    assert_eq!(s, 404);
    server.stop();
    // The file continues its chain across the restarts.
    let (ok, out, err) = verify(&[&dir.path().join("audit.log")], &[]);
    assert!(ok, "{out}{err}");
}

#[test]
fn a_hung_sink_fails_requests_within_the_bound_and_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Hold the FIFO open for reading and writing, and never read: once the pipe buffer is
    // full, the server's writes block.
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let server = TestServer::with_config(&audit_config(dir.path(), &fifo, "timeout = \"500ms\""));
    let addr = server.addr();
    let (_, root) = init_unseal(&addr, 1, 1);
    enable_kv2(&addr, &root);
    let body = json!({"data": {"blob": "x".repeat(4096)}});
    let mut failed_at = None;
    for i in 0..200 {
        let started = Instant::now();
        let (s, _) = call(
            "POST",
            &format!("{addr}/v1/secret/data/k{i}"),
            Some(&root),
            Some(&body),
        );
        let took = started.elapsed();
        if s == 503 {
            assert!(
                took < Duration::from_secs(3),
                "a failing request took {took:?}"
            );
            failed_at = Some(i);
            break;
        }
        assert_eq!(s, 200);
    }
    let failed_at = failed_at.expect("the pipe never filled");
    assert!(failed_at > 0, "requests succeeded before the pipe filled");
    for _ in 0..3 {
        let started = Instant::now();
        let (s, _) = call(
            "GET",
            &format!("{addr}/v1/secret/data/k0"),
            Some(&root),
            None,
        );
        assert_eq!(s, 503);
        assert!(started.elapsed() < Duration::from_secs(3));
        let started = Instant::now();
        assert_eq!(call_status(&format!("{addr}/v1/sys/health")), Some(200));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // Drain the pipe: the writer continues and requests succeed again.
    let mut reader = pipe.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while reader.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = call(
            "GET",
            &format!("{addr}/v1/secret/data/k0"),
            Some(&root),
            None,
        );
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "requests did not recover after the sink drained"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
    drop(pipe);
}

#[test]
fn sighup_reopens_the_file_and_the_segments_link() {
    let dir = tempfile::tempdir().unwrap();
    let (server, root, _) = boot_with_secret(dir.path());
    let addr = server.addr();
    let live = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    std::fs::rename(&live, &rotated).unwrap();
    let pid = rustix::process::Pid::from_raw(i32::try_from(server.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !live.exists() {
        // The writer reopens when it next wakes: the signal wakes it, a request does too.
        let _ = call(
            "GET",
            &format!("{addr}/v1/secret/data/app"),
            Some(&root),
            None,
        );
        assert!(Instant::now() < deadline, "no new file after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (s, _) = call(
        "POST",
        &format!("{addr}/v1/secret/data/after"),
        Some(&root),
        Some(&json!({"data": {"password": PLANTED}})),
    );
    assert_eq!(s, 200);
    // The live file verifies as an open segment while the server runs.
    let (ok, out, err) = verify(&[&live], &["--allow-open"]);
    assert!(ok, "{out}{err}");
    server.stop();

    let (ok, out, err) = verify(&[&rotated], &[]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = verify(&[&live], &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("continues the segment"), "{out}");
    let (ok, out, err) = verify(&[&rotated, &live], &[]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = verify(&[&live, &rotated], &[]);
    assert!(!ok && err.contains("broken link"), "{err}");
    let new_records = lines_of(&live);
    assert!(new_records.iter().any(|l| l.contains("secret/data/after")));
    assert!(
        !lines_of(&rotated)
            .iter()
            .any(|l| l.contains("secret/data/after"))
    );
    assert!(!contains(
        &std::fs::read(&live).unwrap(),
        PLANTED.as_bytes()
    ));
}

#[test]
fn bad_audit_paths_stop_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let ww = dir.path().join("ww.log");
    std::fs::write(&ww, b"").unwrap();
    std::fs::set_permissions(
        &ww,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666),
    )
    .unwrap();
    for (path, needle) in [
        (dir.path().to_owned(), "is a directory"),
        (ww, "world-writable"),
    ] {
        let config = audit_config(dir.path(), &path, "");
        let out = keyhaven(&["server", "--config", config.to_str().unwrap()]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
    }
}
