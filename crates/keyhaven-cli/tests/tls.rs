//! TLS on the listener: HTTPS with a configured certificate, and refusal of a private key
//! file that others can read.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::TestServer;

fn write_tls_config(dir: &std::path::Path, key_mode: u32) -> (std::path::PathBuf, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert_path = dir.join("tls.crt");
    let key_path = dir.join("tls.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(key_mode)).unwrap();
    let config = dir.join("keyhaven.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n[listener]\naddress = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n[log]\nformat = \"json\"\n",
            dir.join("kh.db").display(),
            cert_path.display(),
            key_path.display()
        ),
    )
    .unwrap();
    (config, cert.pem())
}

#[test]
fn the_listener_speaks_tls_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (config, ca_pem) = write_tls_config(dir.path(), 0o600);
    let server = TestServer::with_config(&config);
    let addr = server.addr();
    assert!(addr.starts_with("https://"), "{addr}");
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = addr.replace("127.0.0.1", "localhost");
    let resp = client
        .get(format!("{url}/v1/sys/seal-status"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["initialized"], false);
    // Plain HTTP to the TLS port gets no API answer.
    let plain = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = plain
        .get(format!(
            "{}/v1/sys/seal-status",
            url.replace("https://", "http://")
        ))
        .send();
    assert!(r.map(|r| !r.status().is_success()).unwrap_or(true));
}

#[test]
fn a_private_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_tls_config(dir.path(), 0o644);
    let out = std::process::Command::new(crate::support::keyhaven_bin())
        .args(["server", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by group or others"), "{err}");
}
