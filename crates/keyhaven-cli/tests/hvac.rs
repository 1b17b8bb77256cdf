//! Compatibility with hvac, the Python client: cases of `tests/python/hvac_cases.py` run
//! against a keyhaven dev server, each printing what it observed as one JSON object.
//!
//! hvac and its dependencies are installed once into `target/hvac-venv` from the pinned
//! `tests/python/requirements.txt` (or `$KEYHAVEN_HVAC_PYTHON` names an interpreter that
//! has them). To add a case: a `case_<name>` function in the script, and a test here that
//! calls [`run_case`] and asserts on its result.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::TestServer;

const HVAC_VERSION: &str = "2.4.0";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Python interpreter with hvac: `$KEYHAVEN_HVAC_PYTHON`, or `target/hvac-venv`,
/// installed on first use.
fn hvac_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("KEYHAVEN_HVAC_PYTHON") {
                return PathBuf::from(p);
            }
            let venv = repo_root().join("target/hvac-venv");
            let python = venv.join("bin/python");
            let probe = format!(
                "import importlib.metadata as m, sys; sys.exit(0 if m.version('hvac') == '{HVAC_VERSION}' else 1)"
            );
            let installed = Command::new(&python)
                .args(["-c", &probe])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !installed {
                let ok = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "python3 -m venv failed");
                let ok = Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "-r"])
                    .arg(repo_root().join("tests/python/requirements.txt"))
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "pip install -r tests/python/requirements.txt failed");
            }
            python
        })
        .clone()
}

/// Run one case of `tests/python/hvac_cases.py` against `addr` with `token`, within a
/// time bound, and return what it printed.
pub fn run_case(case: &str, addr: &str, token: &str) -> Value {
    let mut child = Command::new(hvac_python())
        .arg(repo_root().join("tests/python/hvac_cases.py"))
        .arg(case)
        .env("KEYHAVEN_ADDR", addr)
        .env("KEYHAVEN_TOKEN", token)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hvac case {case} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hvac case {case} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("hvac case {case}: not JSON: {stdout}"))
}

#[test]
fn hvac_wraps_unwraps_and_uses_the_cubbyhole() {
    let server = TestServer::dev();
    let r = run_case("wrapping", &server.addr(), &server.root_token());
    // A wrapped read answers a wrapping token, not the secret.
    assert_eq!(r["wrapped_read_data"], Value::Null, "{r}");
    assert_eq!(r["wrapped_read_ttl"], 60);
    assert_eq!(r["wrapped_read_creation_path"], "secret/data/hvac/app");
    assert_eq!(r["unwrapped_password"], "HV-wrapped-1");
    // Single use, whichever way the token is given.
    for key in ["second_unwrap", "second_unwrap_as_client_token"] {
        assert_eq!(r[key]["error"], "InvalidRequest", "{key}: {r}");
        assert!(
            r[key]["message"]
                .as_str()
                .unwrap()
                .contains("wrapping token is not valid or does not exist"),
            "{key}: {r}"
        );
    }
    assert_eq!(r["wrap_ttl"], 120);
    assert_eq!(
        r["unwrapped_as_client_token"],
        json!({"app": "billing", "key": "HV-2"})
    );
    // A wrapped token creation gives no token in clear; the unwrapped one works.
    assert_eq!(r["create_auth"], Value::Null, "{r}");
    assert_eq!(r["wrapped_accessor_matches"], true, "{r}");
    assert_eq!(r["unwrapped_token_is_authenticated"], true, "{r}");
    assert_eq!(r["cubbyhole_read"], json!({"note": "HV-cubby"}));
    assert_eq!(r["cubbyhole_list"], json!(["hvac"]));
    assert!(
        !server.logs().contains("HV-wrapped-1"),
        "a wrapped secret reached the server log"
    );
}

#[test]
fn hvac_lists_with_list_true_and_a_namespaced_client_is_refused() {
    let server = TestServer::dev();
    let r = run_case("listing", &server.addr(), &server.root_token());
    // hvac's Client.list sends `GET …?list=True`.
    assert_eq!(r["list"], json!(["a", "b", "sub/"]), "{r}");
    assert_eq!(
        r["list_missing"],
        Value::Null,
        "a 404 list is None in hvac: {r}"
    );
    assert_eq!(r["kv2_list"], json!(["a", "b", "sub/"]), "{r}");
    // keyhaven has only the root namespace: never answered from the root.
    assert_eq!(r["namespaced_read"]["error"], "InvalidRequest", "{r}");
    assert!(
        r["namespaced_read"]["message"]
            .as_str()
            .unwrap()
            .contains("team-a"),
        "{r}"
    );
}
