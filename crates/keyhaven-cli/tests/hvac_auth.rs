//! The userpass, cert and approle auth methods through hvac (PyPI `hvac`, pinned), the Python
//! client most Vault users have: `tests/python/hvac_auth.py` runs against a keyhaven
//! server on TLS with a client certificate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::bao::{client_pki, tls_server};

const HVAC_VERSION: &str = "2.4.0";

/// The Python of `target/hvac-venv`, with hvac installed once from PyPI.
fn hvac_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/hvac-venv");
            let python = venv.join("bin/python");
            let probe = format!(
                "import importlib.metadata as m,sys; sys.exit(0 if m.version('hvac')=='{HVAC_VERSION}' else 1)"
            );
            let installed = Command::new(&python)
                .args(["-c", &probe])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !installed {
                let ok = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "python3 -m venv failed");
                let ok = Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", &format!("hvac=={HVAC_VERSION}")])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "pip install hvac failed");
            }
            python
        })
        .clone()
}

#[test]
fn userpass_and_cert_through_hvac() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr, server_ca, root) = tls_server(dir.path(), "");
    let pki = client_pki(dir.path(), "app.example.com");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/hvac_auth.py");
    let out = Command::new(hvac_python())
        .arg(&script)
        .arg(&addr)
        .arg(&server_ca)
        .arg(&root)
        .arg(&pki.ca_pem)
        .arg(&pki.client_cert)
        .arg(&pki.client_key)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hvac_auth.py failed:\n{stdout}\n{stderr}"
    );
    for step in [
        "userpass: login, token works with the user's policies",
        "userpass: a wrong password is refused",
        "userpass: password change, list_user, delete_user",
        "cert: login, token works with the role's policies",
        "cert: a login without a certificate is refused",
        "approle: login, token works with the role's policies",
        "approle: a used-up or destroyed secret id is refused",
    ] {
        assert!(stdout.contains(step), "missing step {step:?}:\n{stdout}");
    }
}
