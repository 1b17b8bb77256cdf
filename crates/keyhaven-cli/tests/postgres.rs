//! The server on PostgreSQL storage (`[storage] backend = "postgresql"`): data kept across
//! restarts, one server per database, TLS with the certificate verified, and clear errors
//! at start-up. Run when `KEYHAVEN_TEST_PG` is set (a connection string, or `1` for
//! `host=127.0.0.1 user=postgres dbname=postgres`), each test in its own schema, dropped
//! afterwards; with the variable set, an unreachable database fails the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::{TestServer, call, init_unseal, keyhaven_bin, unseal};

const DEFAULT_URL: &str = "host=127.0.0.1 user=postgres dbname=postgres";

// Saying that the tests were skipped is the point of this message.
#[allow(clippy::print_stderr)]
pub(crate) fn pg_url() -> Option<String> {
    match std::env::var("KEYHAVEN_TEST_PG") {
        Ok(v) if v == "1" => Some(DEFAULT_URL.to_owned()),
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("KEYHAVEN_TEST_PG is not set: PostgreSQL tests not run");
            None
        }
    }
}

/// `psql` on the test database; panics on failure.
pub(crate) fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A schema of this test's own, dropped at the end.
pub(crate) struct Schema {
    url: String,
    pub(crate) name: String,
}

impl Schema {
    pub(crate) fn new(url: &str, tag: &str) -> Schema {
        let name = format!("kh_e2e_{tag}_{}", std::process::id());
        psql(url, &format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
        Schema {
            url: url.to_owned(),
            name,
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.url,
                "-X",
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            ])
            .output();
    }
}

fn pg_config(dir: &Path, storage: &str) -> PathBuf {
    let path = dir.join("keyhaven.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\nbackend = \"postgresql\"\n{storage}\n[listener]\naddress = \"127.0.0.1:0\"\ntls_disable = true\n\n[log]\nformat = \"json\"\n"
        ),
    )
    .unwrap();
    path
}

/// Start a server expected to fail; its standard error.
fn start_fails(config: &Path) -> String {
    let mut child = Command::new(keyhaven_bin())
        .args(["server", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "the server exited successfully");
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return err;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn postgresql_storage_keeps_data_admits_one_server_and_stores_no_plaintext() {
    let Some(url) = pg_url() else { return };
    let schema = Schema::new(&url, "keep");
    let dir = tempfile::tempdir().unwrap();
    let config = pg_config(
        dir.path(),
        &format!("connection_url = \"{url}\"\nschema = \"{}\"\n", schema.name),
    );
    let server = TestServer::with_config(&config);
    let addr = server.addr();
    let (keys, root) = init_unseal(&addr, 1, 1);
    let (s, status) = call("GET", &format!("{addr}/v1/sys/seal-status"), None, None);
    assert_eq!(s, 200);
    assert_eq!(status["storage_type"], "postgresql", "{status}");
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/sys/mounts/secret"),
        Some(&root),
        Some(&json!({"type": "kv-v2"})),
    );
    assert!(s == 204 || s == 200, "{b}");
    let marker = "pg-marker-7f3a9c1e55d2";
    let (s, b) = call(
        "POST",
        &format!("{addr}/v1/secret/data/app"),
        Some(&root),
        Some(&json!({"data": {"password": marker}})),
    );
    assert_eq!(s, 200, "{b}");

    // A second server on the same schema is refused, and says why.
    let err = start_fails(&config);
    assert!(
        err.contains("another keyhaven server is active on this database"),
        "{err}"
    );
    // The first is unaffected.
    let (s, _) = call(
        "GET",
        &format!("{addr}/v1/secret/data/app"),
        Some(&root),
        None,
    );
    assert_eq!(s, 200);

    // Nothing stored in the clear.
    let hits = psql(
        &url,
        &format!(
            "SELECT count(*) FROM {}.kv WHERE position(convert_to('{marker}', 'UTF8') IN value) > 0 \
             OR position(convert_to('{root}', 'UTF8') IN value) > 0",
            schema.name
        ),
    );
    assert_eq!(hits, "0", "a secret is stored in the clear");
    assert!(!server.logs().contains(marker));

    // Restarted, sealed, unsealed: the data is there.
    let status = server.stop();
    assert!(status.success(), "{status}");
    let server = TestServer::with_config(&config);
    let addr = server.addr();
    unseal(&addr, &keys);
    let (s, b) = call(
        "GET",
        &format!("{addr}/v1/secret/data/app"),
        Some(&root),
        None,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"]["data"]["password"], marker);
}

#[test]
fn postgresql_over_tls_verifies_the_database_certificate() {
    let Some(url) = pg_url() else { return };
    // The machine's PostgreSQL serves TLS with Debian's self-signed certificate for
    // `localhost`.
    assert_eq!(
        psql(&url, "SHOW ssl"),
        "on",
        "the test database serves no TLS"
    );
    let cert_file = psql(&url, "SHOW ssl_cert_file");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("db-ca.pem");
    std::fs::copy(&cert_file, &ca).unwrap();
    let schema = Schema::new(&url, "tls");
    let storage = |host: &str, ca: &Path| {
        format!(
            "connection_url = \"host={host} user=postgres dbname=postgres sslmode=verify-full\"\nschema = \"{}\"\ntls_ca_file = \"{}\"\n",
            schema.name,
            ca.display()
        )
    };
    let config = pg_config(dir.path(), &storage("localhost", &ca));
    let server = TestServer::with_config(&config);
    let addr = server.addr();
    init_unseal(&addr, 1, 1);
    let ssl = psql(
        &url,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE s.ssl AND a.application_name <> 'psql'",
    );
    assert_ne!(ssl, "0", "no connection of the server uses TLS");
    drop(server);

    // The certificate names `localhost`, not the address.
    let config = pg_config(dir.path(), &storage("127.0.0.1", &ca));
    let err = start_fails(&config);
    assert!(err.contains("cannot open storage"), "{err}");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the error does not say the certificate was refused: {err}"
    );

    // Another CA: refused.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let config = pg_config(dir.path(), &storage("localhost", &other_ca));
    let err = start_fails(&config);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn postgresql_start_up_errors_name_the_problem() {
    let Some(url) = pg_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        // Nothing listens on port 1.
        (
            "connection_url = \"host=127.0.0.1 port=1 user=postgres dbname=postgres\"\n",
            "cannot open storage",
        ),
        (
            "connection_url = \"host=127.0.0.1 user=no_such_role_kh dbname=postgres\"\n",
            "no_such_role_kh",
        ),
        (
            "connection_url = \"host=127.0.0.1 user=postgres dbname=postgres sslmode=require\"\n",
            "sslmode=require does not check whom it talks to",
        ),
        (
            "connection_url = \"host=db.example.com user=postgres dbname=postgres\"\n",
            "names a database on another machine",
        ),
        (
            "connection_url = \"host=localhost user=postgres sslmode=verify-full\"\n",
            "storage.tls_ca_file is required",
        ),
        (
            "path = \"x.db\"\n",
            "storage.path is for the sqlite backend",
        ),
    ];
    for (storage, want) in cases {
        let config = pg_config(dir.path(), storage);
        let err = start_fails(&config);
        assert!(err.contains(want), "{storage}: {err}");
    }
    // A password in the connection string is never repeated.
    let config = pg_config(
        dir.path(),
        "connection_url = \"postgresql://postgres:Sup3r-S3cret-pw@127.0.0.1:1/postgres\"\n",
    );
    let err = start_fails(&config);
    assert!(!err.contains("Sup3r-S3cret-pw"), "{err}");
    let _ = url;
}

#[test]
fn a_server_whose_database_lock_ends_stops_serving() {
    let Some(url) = pg_url() else { return };
    let schema = Schema::new(&url, "lost");
    let dir = tempfile::tempdir().unwrap();
    let app = format!("kh_lost_{}", std::process::id());
    let connection = if url.contains("://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={app}")
    } else {
        format!("{url} application_name={app}")
    };
    let config = pg_config(
        dir.path(),
        &format!(
            "connection_url = \"{connection}\"\nschema = \"{}\"\n",
            schema.name
        ),
    );
    let mut server = TestServer::with_config(&config);
    init_unseal(&server.addr(), 1, 1);
    // PostgreSQL restarting looks like this to the server: every session ends.
    let ended = psql(
        &url,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
        ),
    );
    assert_ne!(ended, "0", "no session of the server was found");
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = server.exited() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server kept serving without its lock: {}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{status}");
    assert!(
        server.logs().contains("stopped serving"),
        "{}",
        server.logs()
    );
}

#[test]
fn the_database_password_can_come_from_a_file_and_is_never_shown() {
    let Some(url) = pg_url() else { return };
    let schema = Schema::new(&url, "pwfile");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-password");
    let config = pg_config(
        dir.path(),
        &format!(
            "connection_url = \"{url}\"\nschema = \"{}\"\npassword_file = \"{}\"\n",
            schema.name,
            missing.display()
        ),
    );
    let err = start_fails(&config);
    assert!(
        err.contains("storage.password_file") && err.contains("missing-password"),
        "{err}"
    );
    // This machine's database trusts local connections: the password is sent and
    // ignored, and must appear nowhere.
    let marker = "pg-password-marker-5c1d";
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{marker}\n")).unwrap();
    std::fs::write(dir.path().join("empty"), "").unwrap();
    let config = pg_config(
        dir.path(),
        &format!(
            "connection_url = \"{url}\"\nschema = \"{}\"\npassword_file = \"{}\"\n",
            schema.name,
            dir.path().join("empty").display()
        ),
    );
    assert!(start_fails(&config).contains("is empty"));
    let config = pg_config(
        dir.path(),
        &format!(
            "connection_url = \"{url}\"\nschema = \"{}\"\npassword_file = \"{}\"\n",
            schema.name,
            file.display()
        ),
    );
    let server = TestServer::with_config(&config);
    let (s, _) = call(
        "GET",
        &format!("{}/v1/sys/health", server.addr()),
        None,
        None,
    );
    assert_eq!(s, 501, "the server answers, uninitialized");
    assert!(!server.logs().contains(marker));
}
