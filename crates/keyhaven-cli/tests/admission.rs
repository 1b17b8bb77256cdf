//! `keyhaven admission`: `review` on the AdmissionReview fixtures (exit codes, output), and
//! the served webhook over TLS giving the same answers; a certificate reloaded when its
//! files change; bad input refused with 400; every decision counted and logged.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::keyhaven_bin;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../keyhaven-k8s/tests/admission");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    files
}

fn review(file: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(keyhaven_bin())
        .args(["admission", "review"])
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn write_pair(dir: &Path, name: &str) -> String {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = dir.join("tls.key");
    // Written beside and renamed, as a Secret volume update does.
    let tmp_cert = dir.join(format!("{name}.crt.tmp"));
    let tmp_key = dir.join(format!("{name}.key.tmp"));
    std::fs::write(&tmp_cert, cert.pem()).unwrap();
    std::fs::write(&tmp_key, signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&tmp_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp_key, &key).unwrap();
    std::fs::rename(&tmp_cert, dir.join("tls.crt")).unwrap();
    cert.pem()
}

struct Webhook {
    child: Child,
    addr: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, extra: &[&str]) -> Webhook {
    start_with_env(dir, extra, &[])
}

fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Webhook {
    let mut child = Command::new(keyhaven_bin())
        .envs(env.iter().copied())
        .args([
            "admission",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--reload-interval",
            "1",
        ])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["fields"]["addr"].as_str().map(str::to_owned))
            {
                let _ = tx.send(a);
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("webhook did not start: {:?}", logs.lock().unwrap()));
    let port = addr.rsplit(':').next().unwrap();
    Webhook {
        child,
        addr: format!("https://localhost:{port}"),
        logs,
    }
}

fn client(ca_pem: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[test]
fn review_exit_codes_and_the_served_webhook_agree() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_pair(dir.path(), "a");
    let hook = start(dir.path(), &[]);
    let http = client(&ca);
    assert_eq!(
        http.get(format!("{}/healthz", hook.addr))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "ok\n"
    );
    let mut decisions = 0;
    let mut denied = 0;
    for file in fixtures() {
        let (code, stdout, stderr) = review(&file, &[]);
        let offline: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"));
        let allowed = offline["response"]["allowed"].as_bool().unwrap();
        assert_eq!(
            code,
            if allowed { 0 } else { 1 },
            "{}: {stdout}",
            file.display()
        );
        let body = std::fs::read(&file).unwrap();
        let request: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(offline["response"]["uid"], request["request"]["uid"]);
        let resp = http
            .post(format!("{}/validate", hook.addr))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let served: Value = resp.json().unwrap();
        assert_eq!(served, offline, "{}", file.display());
        decisions += 1;
        if !allowed {
            denied += 1;
            assert_eq!(served["response"]["status"]["code"], 403);
        }
    }
    assert!(denied >= 4, "{denied}");

    // Bad input: 400 naming the problem, and the webhook keeps serving.
    for (body, says) in [
        (b"not json".to_vec(), "not valid JSON"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#.to_vec(),
            "unsupported apiVersion",
        ),
        (
            format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","operation":"CREATE","object":{}1{}}}}}"#,
                "{\"a\":".repeat(10_000),
                "}".repeat(10_000)
            )
            .into_bytes(),
            "nested too deeply",
        ),
    ] {
        let resp = http.post(format!("{}/validate", hook.addr)).body(body).send().unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let text = resp.text().unwrap();
        assert!(text.contains(says), "{text}");
    }
    let huge = vec![b' '; 8 * 1024 * 1024];
    let resp = http
        .post(format!("{}/validate", hook.addr))
        .body(huge)
        .send();
    if let Ok(r) = resp {
        assert_eq!(r.status().as_u16(), 413);
    }
    assert_eq!(
        http.get(format!("{}/healthz", hook.addr))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    // Every decision counted and logged as one line.
    let metrics = http
        .get(format!("{}/metrics", hook.addr))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let count = |outcome: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "keyhaven_admission_decisions_total{{outcome=\"{outcome}\""
                ))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(count("denied"), denied, "{metrics}");
    assert_eq!(count("allowed"), decisions - denied, "{metrics}");
    assert!(
        metrics.contains("keyhaven_admission_review_errors_total{reason=\"not_json\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "keyhaven_admission_findings_total{check=\"k8s-privileged\",mode=\"enforce\"}"
        ),
        "{metrics}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = hook
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("admission decision"))
            .cloned()
            .collect();
        if lines.len() as u64 == decisions {
            let dry = lines
                .iter()
                .find(|l| l.contains("705ab4f5-6393-11e8-b7cc-42010a800007"))
                .unwrap();
            let v: Value = serde_json::from_str(dry).unwrap();
            assert_eq!(v["fields"]["dry_run"], true);
            assert_eq!(v["fields"]["outcome"], "denied");
            assert_eq!(v["fields"]["denied"], "k8s-privileged");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} decision lines for {decisions}: {lines:?}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn review_of_plain_manifests_policies_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.yaml");
    std::fs::write(&manifest, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: shop\nspec:\n  containers:\n    - name: c\n      image: busybox\n      securityContext:\n        allowPrivilegeEscalation: false\n").unwrap();
    // Only warnings by default: allowed, exit 0.
    let (code, out, _) = review(&manifest, &[]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["response"]["warnings"].as_array().unwrap().len() >= 3,
        "{out}"
    );
    // A policy that enforces them denies.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[checks]\nk8s-run-as-root = \"enforce\"\n").unwrap();
    let (code, out, _) = review(&manifest, &["--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[k8s-run-as-root] spec.containers[0].securityContext.runAsNonRoot"),
        "{out}"
    );
    // Errors: exit 2 with the reason.
    std::fs::write(&policy, "[checks]\nk8s-run-as-rot = \"enforce\"\n").unwrap();
    let (code, _, err) = review(&manifest, &["--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown check `k8s-run-as-rot`"), "{err}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    let (code, out, err) = review(&bad, &[]);
    assert_eq!(code, 2);
    assert!(out.is_empty() && err.contains("not valid JSON"), "{err}");
    let (code, _, err) = review(&dir.path().join("missing.yaml"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
    let out = Command::new(keyhaven_bin())
        .args(["admission", "review"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The value of `name` in the environment of process `pid`.
fn environ_of(pid: u32, name: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(name)?.strip_prefix('=').map(str::to_owned)
    })
}

#[test]
fn the_webhook_runs_with_its_allocator_settings_unless_the_operator_sets_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_pair(dir.path(), "a");
    // The process started is the one that serves (exec keeps the process id): its
    // jemalloc settings once it answers.
    let served_setting = |env: &[(&str, &str)]| {
        let hook = start_with_env(dir.path(), &[], env);
        let health = client(&ca)
            .get(format!("{}/healthz", hook.addr))
            .send()
            .unwrap();
        assert!(health.status().is_success());
        environ_of(hook.child.id(), "_RJEM_MALLOC_CONF")
    };
    assert_eq!(
        served_setting(&[]).as_deref(),
        Some("narenas:4,tcache_nslots_small_max:200")
    );
    // An operator's setting is kept as it is.
    assert_eq!(
        served_setting(&[("_RJEM_MALLOC_CONF", "narenas:1")]).as_deref(),
        Some("narenas:1")
    );
}

#[test]
fn the_certificate_is_reloaded_when_its_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_pair(dir.path(), "a");
    let hook = start(dir.path(), &[]);
    let health = |ca: &str| {
        client(ca)
            .get(format!("{}/healthz", hook.addr))
            .send()
            .is_ok_and(|r| r.status().is_success())
    };
    assert!(health(&first));
    let second = write_pair(dir.path(), "b");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !health(&second) {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served: {:?}",
            hook.logs.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!health(&first), "the old certificate is still served");
    // A broken pair is not loaded: the current one stays.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(health(&second));
    assert!(
        hook.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("certificate not reloaded"))
    );

    // A key that others can read is refused at start.
    let other = tempfile::tempdir().unwrap();
    write_pair(other.path(), "c");
    std::fs::set_permissions(
        other.path().join("tls.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = Command::new(keyhaven_bin())
        .args(["admission", "serve", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(other.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(other.path().join("tls.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by others"));
}
