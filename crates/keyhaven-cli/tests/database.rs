//! The `database/` secrets engine with the real `bao` CLI against the machine's
//! PostgreSQL: dynamic credentials with exactly the granted rights, static roles whose
//! password rotates, root rotation, the errors clients see, and no password in clear in
//! storage, the server log or the audit log.
//!
//! Run when `KEYHAVEN_TEST_PG` is set (see `postgres.rs`). PostgreSQL on this machine
//! trusts 127.0.0.1 (`pg_hba.conf`: `host all all 127.0.0.1/32 trust`), so a login there
//! does not check passwords: each password is checked instead against the SCRAM-SHA-256
//! verifier PostgreSQL stored for the user (`pg_authid.rolpassword`), computed as a
//! server checking a login would (RFC 5802/7677), and a wrong password is shown to fail
//! the same check.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::bao::{Bao, Outcome};
use crate::postgres::{pg_url, psql};
use crate::support::{TestServer, contains, files_under, init_unseal};

/// A database of this test's own (and the roles it made), dropped at the end.
pub(crate) struct TestDb {
    admin_url: String,
    name: String,
    pub(crate) roles: Vec<String>,
}

impl TestDb {
    pub(crate) fn new(admin_url: &str, tag: &str) -> TestDb {
        let name = format!("kh_dbe_{tag}_{}", std::process::id());
        psql(
            admin_url,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql(admin_url, &format!("CREATE DATABASE {name}"));
        TestDb {
            admin_url: admin_url.to_owned(),
            name,
            roles: Vec::new(),
        }
    }

    /// A connection string to this database as `user`.
    pub(crate) fn url_as(&self, user: &str) -> String {
        format!("host=127.0.0.1 user={user} dbname={}", self.name)
    }

    pub(crate) fn sql(&self, sql: &str) -> String {
        psql(&self.url_as("postgres"), sql)
    }

    /// Run `sql` as `user`; Ok(output) or Err(psql's error).
    fn sql_as(&self, user: &str, sql: &str) -> Result<String, String> {
        let out = std::process::Command::new("psql")
            .args([
                &self.url_as(user),
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A role made for the test, dropped at the end.
    fn role(&mut self, name: &str, attrs: &str) -> String {
        let name = format!("{name}_{}", std::process::id());
        psql(&self.admin_url, &format!("DROP ROLE IF EXISTS {name}"));
        psql(&self.admin_url, &format!("CREATE ROLE {name} {attrs}"));
        self.roles.push(name.clone());
        name
    }

    /// The stored SCRAM verifier of `user` (empty when the user does not exist).
    fn verifier(&self, user: &str) -> String {
        psql(
            &self.admin_url,
            &format!(
                "SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = '{}'",
                user.replace('\'', "''")
            ),
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let run = |sql: String| {
            let _ = std::process::Command::new("psql")
                .args([&self.admin_url, "-X", "-c", &sql])
                .output();
        };
        run(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
        for role in &self.roles {
            run(format!("DROP ROLE IF EXISTS \"{role}\""));
        }
    }
}

/// Whether `password` matches a `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`
/// verifier: StoredKey = H(HMAC(SaltedPassword, "Client Key")) and ServerKey =
/// HMAC(SaltedPassword, "Server Key"), SaltedPassword = PBKDF2-HMAC-SHA-256.
fn scram_matches(verifier: &str, password: &str) -> bool {
    use aws_lc_rs::{digest, hmac, pbkdf2};
    let b64 = base64::engine::general_purpose::STANDARD;
    let rest = verifier
        .strip_prefix("SCRAM-SHA-256$")
        .unwrap_or_else(|| panic!("not a SCRAM verifier: {verifier:?}"));
    let (params, keys) = rest.split_once('$').unwrap();
    let (iterations, salt) = params.split_once(':').unwrap();
    let (stored_key, server_key) = keys.split_once(':').unwrap();
    let salt = b64.decode(salt).unwrap();
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations.parse().unwrap()).unwrap(),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored = digest::digest(&digest::SHA256, client_key.as_ref());
    let server = hmac::sign(&key, b"Server Key");
    stored.as_ref() == b64.decode(stored_key).unwrap().as_slice()
        && server.as_ref() == b64.decode(server_key).unwrap().as_slice()
}

pub(crate) fn ok(o: &Outcome, what: &str) -> Value {
    assert_eq!(o.code, 0, "{what}: {}{}", o.stdout, o.stderr);
    if o.stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&o.stdout).unwrap_or(Value::Null)
    }
}

fn server_with_audit(dir: &Path) -> (TestServer, String, std::path::PathBuf) {
    let config = dir.join("keyhaven.toml");
    let audit = dir.join("audit.log");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n[listener]\naddress = \"127.0.0.1:0\"\ntls_disable = true\n[log]\nformat = \"json\"\nlevel = \"debug\"\n[[audit]]\ntype = \"file\"\npath = \"{}\"\n",
            dir.join("kh.db").display(),
            audit.display()
        ),
    )
    .unwrap();
    let server = TestServer::with_config(&config);
    let (_, root) = init_unseal(&server.addr(), 1, 1);
    (server, root, audit)
}

/// Every file under `dir` and the server log hold none of `secrets`.
fn assert_no_plaintext(server: &TestServer, dir: &Path, audit: &Path, secrets: &[String]) {
    assert!(
        std::fs::metadata(audit).unwrap().len() > 0,
        "nothing was audited"
    );
    let mut files: Vec<(String, Vec<u8>)> = files_under(dir)
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    files.push(("server log".to_owned(), server.logs().into_bytes()));
    for secret in secrets {
        assert!(secret.len() >= 12, "too short to search for: {secret}");
        for (name, bytes) in &files {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "{name} holds a password in clear"
            );
        }
    }
}

#[test]
fn bao_issues_postgres_users_with_exactly_the_granted_rights() {
    let Some(admin) = pg_url() else { return };
    let mut db = TestDb::new(&admin, "dyn");
    db.sql("CREATE TABLE granted (id int); INSERT INTO granted VALUES (1), (2); CREATE TABLE other (id int)");
    let root_password = format!("Root-{}-pw-x9", std::process::id());
    let root_user = db.role(
        "kh_root",
        &format!("WITH LOGIN SUPERUSER PASSWORD '{root_password}'"),
    );

    let dir = tempfile::tempdir().unwrap();
    let (server, root, audit) = server_with_audit(dir.path());
    let bao = Bao::new(&server.addr(), Some(&root));
    ok(&bao.run(&["secrets", "enable", "database"]), "enable");

    // A wrong connection string: a 400 with the driver's reason, and nothing stored.
    let refused = bao.run(&[
        "write",
        "database/config/bad",
        "plugin_name=postgresql-database-plugin",
        "connection_url=host=127.0.0.1 port=1 user=postgres dbname=postgres",
    ]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("Code: 400"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("error creating database object: ")
            && refused.stderr.to_lowercase().contains("connection refused"),
        "{}",
        refused.stderr
    );
    let no_user = bao.run(&[
        "write",
        "database/config/bad",
        "plugin_name=postgresql-database-plugin",
        &format!("connection_url={}", db.url_as("kh_no_such_user_x")),
    ]);
    assert!(no_user.stderr.contains("Code: 400"), "{}", no_user.stderr);
    assert!(
        no_user
            .stderr
            .contains("role \"kh_no_such_user_x\" does not exist"),
        "{}",
        no_user.stderr
    );
    let read_bad = bao.run(&["read", "database/config/bad"]);
    assert_ne!(
        read_bad.code, 0,
        "a refused config was stored: {}",
        read_bad.stdout
    );

    let conn_url = format!(
        "connection_url=host=127.0.0.1 user={{{{username}}}} password={{{{password}}}} dbname={}",
        db.name
    );
    ok(
        &bao.run(&[
            "write",
            "database/config/pg",
            "plugin_name=postgresql-database-plugin",
            &conn_url,
            &format!("username={root_user}"),
            &format!("password={root_password}"),
            "allowed_roles=ro,app-*",
            "password_authentication=scram-sha-256",
            "disable_escaping=true",
        ]),
        "config",
    );
    let config = ok(
        &bao.run(&["read", "-format=json", "database/config/pg"]),
        "read config",
    );
    let data = &config["data"];
    assert_eq!(data["plugin_name"], "postgresql-database-plugin");
    assert_eq!(data["allowed_roles"], serde_json::json!(["ro", "app-*"]));
    assert_eq!(data["connection_details"]["username"], root_user);
    assert!(
        data["connection_details"].get("password").is_none(),
        "{data}"
    );
    assert!(!config.to_string().contains(&root_password));

    let creation = "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON granted TO \"{{name}}\";";
    ok(
        &bao.run(&[
            "write",
            "database/roles/ro",
            "db_name=pg",
            &format!("creation_statements={creation}"),
            "default_ttl=1h",
            "max_ttl=24h",
        ]),
        "role",
    );
    let role = ok(
        &bao.run(&["read", "-format=json", "database/roles/ro"]),
        "read role",
    );
    assert_eq!(role["data"]["default_ttl"], 3600);
    assert_eq!(role["data"]["max_ttl"], 86400);

    // The database's clock: the same machine's as the server's.
    let before: u64 = db
        .sql("SELECT floor(extract(epoch FROM now()))::bigint")
        .parse()
        .unwrap();
    let creds = ok(
        &bao.run(&["read", "-format=json", "database/creds/ro"]),
        "creds",
    );
    let user = creds["data"]["username"].as_str().unwrap().to_owned();
    let password = creds["data"]["password"].as_str().unwrap().to_owned();
    db.roles.push(user.clone());
    // OpenBao's default template, with the root token's display name.
    assert!(user.starts_with("v-root-ro-"), "{user}");
    assert!(user.len() <= 63);
    assert_eq!(password.len(), 20);

    // The user logs in and has exactly the grants of the creation statements.
    assert_eq!(
        db.sql_as(&user, "SELECT count(*) FROM granted").unwrap(),
        "2"
    );
    let insert = db
        .sql_as(&user, "INSERT INTO granted VALUES (3)")
        .unwrap_err();
    assert!(insert.contains("permission denied"), "{insert}");
    let other = db.sql_as(&user, "SELECT * FROM other").unwrap_err();
    assert!(other.contains("permission denied"), "{other}");
    // Its password is the one returned (a SCRAM verifier made here: PostgreSQL never saw
    // the password), and the check tells a wrong one apart.
    let verifier = db.verifier(&user);
    assert!(scram_matches(&verifier, &password), "{verifier}");
    assert!(!scram_matches(&verifier, &format!("{password}x")));
    // Valid until the lease's end plus 5 seconds.
    let until: u64 = db
        .sql(&format!(
            "SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = '{user}'"
        ))
        .parse()
        .unwrap();
    assert!(
        until >= before + 3605 && until <= before + 3605 + 60,
        "valid until {until}, issued after {before}"
    );

    // A role the connection does not allow: 500 with OpenBao's message; unknown: 400.
    ok(
        &bao.run(&[
            "write",
            "database/roles/rw",
            "db_name=pg",
            &format!("creation_statements={creation}"),
        ]),
        "role rw",
    );
    let denied = bao.run(&["read", "database/creds/rw"]);
    assert!(denied.stderr.contains("Code: 500"), "{}", denied.stderr);
    assert!(
        denied.stderr.contains("\"rw\" is not an allowed role"),
        "{}",
        denied.stderr
    );
    let unknown = bao.run(&["read", "database/creds/nope"]);
    assert!(unknown.stderr.contains("Code: 400"), "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("unknown role: nope"),
        "{}",
        unknown.stderr
    );
    // Role names are unique across dynamic and static roles.
    let clash = bao.run(&[
        "write",
        "database/static-roles/ro",
        "db_name=pg",
        "username=x",
        "rotation_period=1h",
    ]);
    assert!(
        clash
            .stderr
            .contains("Role and Static Role names must be unique"),
        "{}",
        clash.stderr
    );

    // Root rotation: the root user gets a new password; the old one stops matching and
    // the engine still works with the new one.
    let root_before = db.verifier(&root_user);
    assert!(scram_matches(&root_before, &root_password));
    ok(
        &bao.run(&["write", "-f", "database/rotate-root/pg"]),
        "rotate-root",
    );
    let root_after = db.verifier(&root_user);
    assert_ne!(root_before, root_after);
    assert!(!scram_matches(&root_after, &root_password));
    let again = ok(
        &bao.run(&["read", "-format=json", "database/creds/ro"]),
        "creds after rotate-root",
    );
    let user2 = again["data"]["username"].as_str().unwrap().to_owned();
    db.roles.push(user2.clone());
    assert_ne!(user, user2);
    let password2 = again["data"]["password"].as_str().unwrap().to_owned();

    assert_no_plaintext(
        &server,
        dir.path(),
        &audit,
        &[root_password, password, password2],
    );
}

#[test]
fn bao_static_role_rotates_an_existing_users_password() {
    let Some(admin) = pg_url() else { return };
    let mut db = TestDb::new(&admin, "static");
    let initial = format!("Initial-{}-pw-z7", std::process::id());
    let app_user = db.role("kh_app", &format!("WITH LOGIN PASSWORD '{initial}'"));

    let dir = tempfile::tempdir().unwrap();
    let (server, root, audit) = server_with_audit(dir.path());
    let bao = Bao::new(&server.addr(), Some(&root));
    ok(&bao.run(&["secrets", "enable", "database"]), "enable");
    ok(
        &bao.run(&[
            "write",
            "database/config/pg",
            "plugin_name=postgresql-database-plugin",
            &format!("connection_url={}", db.url_as("postgres")),
            "allowed_roles=app,fast",
        ]),
        "config",
    );
    let bad_period = bao.run(&[
        "write",
        "database/static-roles/app",
        "db_name=pg",
        &format!("username={app_user}"),
        "rotation_period=2s",
    ]);
    assert!(
        bad_period.stderr.contains("Code: 400"),
        "{}",
        bad_period.stderr
    );
    let schedule = bao.run(&[
        "write",
        "database/static-roles/app",
        "db_name=pg",
        &format!("username={app_user}"),
        "rotation_schedule=0 * * * *",
    ]);
    assert!(
        schedule
            .stderr
            .contains("rotation_schedule is not supported"),
        "{}",
        schedule.stderr
    );

    // Creating the role rotates at once.
    ok(
        &bao.run(&[
            "write",
            "database/static-roles/app",
            "db_name=pg",
            &format!("username={app_user}"),
            "rotation_period=1h",
        ]),
        "static role",
    );
    let read = |bao: &Bao| {
        let v = ok(
            &bao.run(&["read", "-format=json", "database/static-creds/app"]),
            "static-creds",
        );
        v["data"].clone()
    };
    let first = read(&bao);
    assert_eq!(first["username"], app_user.as_str());
    assert_eq!(first["rotation_period"], 3600);
    let ttl = first["ttl"].as_u64().unwrap();
    assert!((3590..=3600).contains(&ttl), "{first}");
    assert!(
        first["last_vault_rotation"]
            .as_str()
            .unwrap()
            .ends_with('Z'),
        "{first}"
    );
    let p1 = first["password"].as_str().unwrap().to_owned();
    let v1 = db.verifier(&app_user);
    assert!(scram_matches(&v1, &p1));
    assert!(
        !scram_matches(&v1, &initial),
        "the old password still works"
    );

    // rotate-role: a new password; the previous one stops working.
    let o = bao.run(&["write", "-f", "database/rotate-role/app"]);
    ok(&o, "rotate-role");
    let second = read(&bao);
    let p2 = second["password"].as_str().unwrap().to_owned();
    assert_ne!(p1, p2);
    let v2 = db.verifier(&app_user);
    assert!(scram_matches(&v2, &p2));
    assert!(!scram_matches(&v2, &p1));

    // Scheduled: a 5-second period is rotated by the server's maintenance on its own.
    let fast_user = db.role("kh_fast", "WITH LOGIN PASSWORD 'unused-initial-pw'");
    ok(
        &bao.run(&[
            "write",
            "database/static-roles/fast",
            "db_name=pg",
            &format!("username={fast_user}"),
            "rotation_period=5s",
        ]),
        "fast role",
    );
    let f1 = ok(
        &bao.run(&["read", "-format=json", "database/static-creds/fast"]),
        "fast",
    )["data"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    let f2 = loop {
        let now = ok(
            &bao.run(&["read", "-format=json", "database/static-creds/fast"]),
            "fast",
        )["data"]["password"]
            .as_str()
            .unwrap()
            .to_owned();
        if now != f1 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled rotation within 90 s"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let vf = db.verifier(&fast_user);
    assert!(scram_matches(&vf, &f2));
    assert!(!scram_matches(&vf, &f1));

    // Deleting a static role leaves the user in place.
    ok(&bao.run(&["delete", "database/static-roles/app"]), "delete");
    assert_eq!(db.verifier(&app_user), v2);

    assert_no_plaintext(&server, dir.path(), &audit, &[initial, p1, p2, f1, f2]);
}

/// Whether PostgreSQL has a role named `user`.
pub(crate) fn role_exists(db: &TestDb, user: &str) -> bool {
    db.sql(&format!(
        "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
        user.replace('\'', "''")
    )) == "1"
}

/// Wait up to `secs` for `cond`.
pub(crate) fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn bao_leases_of_database_credentials_drop_the_user() {
    let Some(admin) = pg_url() else { return };
    let mut db = TestDb::new(&admin, "lease");
    db.sql("CREATE TABLE granted (id int)");
    let server = TestServer::dev();
    let root = server.root_token();
    let bao = Bao::new(&server.addr(), Some(&root));
    ok(&bao.run(&["secrets", "enable", "database"]), "enable");
    ok(
        &bao.run(&[
            "write",
            "database/config/pg",
            "plugin_name=postgresql-database-plugin",
            &format!("connection_url={}", db.url_as("postgres")),
            "allowed_roles=*",
        ]),
        "config",
    );
    let creation = "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON granted TO \"{{name}}\";";
    for (role, ttl) in [("ro", "1h"), ("short", "3s")] {
        ok(
            &bao.run(&[
                "write",
                &format!("database/roles/{role}"),
                "db_name=pg",
                &format!("creation_statements={creation}"),
                &format!("default_ttl={ttl}"),
                "max_ttl=24h",
            ]),
            "role",
        );
    }
    let issue = |bao: &Bao, role: &str| {
        let v = ok(
            &bao.run(&["read", "-format=json", &format!("database/creds/{role}")]),
            "creds",
        );
        let user = v["data"]["username"].as_str().unwrap().to_owned();
        (v["lease_id"].as_str().unwrap().to_owned(), user, v)
    };

    // A lease comes with the credentials; revoking it drops the user.
    let (lease, user, v) = issue(&bao, "ro");
    db.roles.push(user.clone());
    assert!(lease.starts_with("database/creds/ro/"), "{v}");
    assert_eq!(v["lease_duration"], 3600);
    assert_eq!(v["renewable"], true);
    assert!(db.sql_as(&user, "SELECT count(*) FROM granted").is_ok());
    // Renewal moves the database's own expiry.
    let renewed = ok(
        &bao.run(&["lease", "renew", "-format=json", "-increment=2h", &lease]),
        "renew",
    );
    assert_eq!(renewed["lease_duration"], 7200, "{renewed}");
    let now: u64 = db
        .sql("SELECT floor(extract(epoch FROM now()))::bigint")
        .parse()
        .unwrap();
    let until: u64 = db
        .sql(&format!(
            "SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = '{user}'"
        ))
        .parse()
        .unwrap();
    assert!(
        until + 60 >= now + 7205 && until <= now + 7205,
        "{until} vs {now}"
    );
    // `bao lease revoke` queues the revocation (sync=false); the scheduler runs it.
    ok(&bao.run(&["lease", "revoke", &lease]), "revoke");
    eventually(30, "the revoked lease's user dropped", || {
        !role_exists(&db, &user)
    });
    let login = db.sql_as(&user, "SELECT 1").unwrap_err();
    assert!(login.contains("does not exist"), "{login}");

    // Revoking the token that read the credentials drops the user.
    let child = ok(
        &bao.run(&["token", "create", "-format=json"]),
        "token create",
    );
    let child_token = child["auth"]["client_token"].as_str().unwrap().to_owned();
    let as_child = Bao::new(&server.addr(), Some(&child_token));
    let (_, child_user, _) = issue(&as_child, "ro");
    db.roles.push(child_user.clone());
    assert!(child_user.starts_with("v-token-ro-"), "{child_user}");
    assert!(role_exists(&db, &child_user));
    ok(&bao.run(&["token", "revoke", &child_token]), "token revoke");
    eventually(30, "the child token's user dropped", || {
        !role_exists(&db, &child_user)
    });

    // revoke-prefix drops every user of the role.
    let users: Vec<String> = (0..3).map(|_| issue(&bao, "ro").1).collect();
    db.roles.extend(users.iter().cloned());
    assert!(users.iter().all(|u| role_exists(&db, u)));
    ok(
        &bao.run(&["lease", "revoke", "-prefix", "database/creds/ro"]),
        "revoke-prefix",
    );
    eventually(30, "every user of the prefix dropped", || {
        users.iter().all(|u| !role_exists(&db, u))
    });

    // keyhaven's own CLI reads credentials as bao does, and revokes their lease.
    let kh = |args: &[&str]| {
        let out = std::process::Command::new(crate::support::keyhaven_bin())
            .args(args)
            .env("KEYHAVEN_ADDR", server.addr())
            .env("KEYHAVEN_TOKEN", &root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = kh(&["read", "database/creds/ro"]);
    let row = |key: &str| {
        table
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {key} row: {table}"))
    };
    let (kh_lease, kh_user) = (row("lease_id"), row("username"));
    db.roles.push(kh_user.clone());
    assert!(kh_lease.starts_with("database/creds/ro/"), "{table}");
    assert!(!row("password").is_empty());
    assert!(role_exists(&db, &kh_user));
    kh(&["lease", "revoke", "--sync", &kh_lease]);
    assert!(!role_exists(&db, &kh_user));

    // A lease that expires is revoked by the server on its own.
    let (_, short_user, v) = issue(&bao, "short");
    db.roles.push(short_user.clone());
    assert_eq!(v["lease_duration"], 3);
    eventually(30, "the expired lease's user dropped", || {
        !role_exists(&db, &short_user)
    });

    // A database that cannot be reached when a lease expires: its revocation is retried
    // until it can. A second connection, `pg2`, is pointed at a closed port once its user
    // exists.
    let pg2 = |url: &str, verify: &str| {
        bao.run(&[
            "write",
            "database/config/pg2",
            "plugin_name=postgresql-database-plugin",
            &format!("connection_url={url}"),
            "allowed_roles=*",
            &format!("verify_connection={verify}"),
        ])
    };
    let good_url = db.url_as("postgres");
    ok(&pg2(&good_url, "true"), "config pg2");
    ok(
        &bao.run(&[
            "write",
            "database/roles/short2",
            "db_name=pg2",
            &format!("creation_statements={creation}"),
            "default_ttl=3s",
        ]),
        "role short2",
    );
    let (_, unreachable_user, _) = issue(&bao, "short2");
    db.roles.push(unreachable_user.clone());
    ok(
        &pg2(
            "host=127.0.0.1 port=1 user=postgres dbname=postgres",
            "false",
        ),
        "config pg2 unreachable",
    );

    // A revocation the database refuses is kept and tried again with backoff: the user
    // owns a table, so DROP ROLE fails until the table is gone.
    let (lease, stuck, _) = issue(&bao, "short");
    db.roles.push(stuck.clone());
    db.sql(&format!(
        "CREATE TABLE blocker (id int); ALTER TABLE blocker OWNER TO \"{stuck}\""
    ));
    let refused = bao.run(&["lease", "revoke", "-sync", &lease]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("cannot be dropped"),
        "{}",
        refused.stderr
    );
    // Past its expiry, the scheduler's attempt fails too: the lease and the user stay.
    std::thread::sleep(Duration::from_secs(6));
    assert!(role_exists(&db, &stuck));
    let lookup = ok(
        &bao.run(&["lease", "lookup", "-format=json", &lease]),
        "lookup",
    );
    assert_eq!(lookup["data"]["id"], lease.as_str());
    assert!(role_exists(&db, &unreachable_user));
    // Both causes go away; the next attempts drop both users.
    db.sql("DROP TABLE blocker");
    ok(&pg2(&good_url, "true"), "config pg2 back");
    eventually(90, "the stuck user dropped on retry", || {
        !role_exists(&db, &stuck)
    });
    eventually(
        90,
        "the unreachable database's user dropped on retry",
        || !role_exists(&db, &unreachable_user),
    );
}

#[test]
fn bao_database_connections_over_tls_verify_the_certificate() {
    let Some(admin) = pg_url() else { return };
    // The machine's PostgreSQL serves TLS with Debian's self-signed certificate for
    // `localhost` (see `postgres.rs`).
    assert_eq!(
        psql(&admin, "SHOW ssl"),
        "on",
        "the test database serves no TLS"
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("db-ca.pem");
    std::fs::copy(psql(&admin, "SHOW ssl_cert_file"), &ca).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let db = TestDb::new(&admin, "tls");

    let server = TestServer::dev();
    let bao = Bao::new(&server.addr(), Some(&server.root_token()));
    ok(&bao.run(&["secrets", "enable", "database"]), "enable");
    let write = |url: String| {
        bao.run(&[
            "write",
            "database/config/pg",
            "plugin_name=postgresql-database-plugin",
            &format!("connection_url={url}"),
            "allowed_roles=*",
        ])
    };
    let url = |host: &str, mode: &str, ca: &Path| {
        format!(
            "host={host} user=postgres dbname={} application_name=kh_dbe_tls sslmode={mode} sslrootcert={}",
            db.name,
            ca.display()
        )
    };
    // Another CA, or a name the certificate does not hold: refused, nothing stored.
    for bad in [
        url("localhost", "verify-full", &other_ca),
        url("127.0.0.1", "verify-full", &ca),
    ] {
        let o = write(bad);
        assert!(o.stderr.contains("Code: 400"), "{}", o.stderr);
        assert!(
            o.stderr.contains("error creating database object")
                && o.stderr.to_lowercase().contains("certificate"),
            "{}",
            o.stderr
        );
    }
    // Modes that check nothing are refused by name.
    let o = write(url("localhost", "require", &ca));
    assert!(o.stderr.contains("sslmode=require"), "{}", o.stderr);
    assert_ne!(bao.run(&["read", "database/config/pg"]).code, 0);

    ok(
        &write(url("localhost", "verify-full", &ca)),
        "config over TLS",
    );
    ok(
        &bao.run(&[
            "write",
            "database/roles/ro",
            "db_name=pg",
            "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        ]),
        "role",
    );
    let creds = ok(
        &bao.run(&["read", "-format=json", "database/creds/ro"]),
        "creds",
    );
    let user = creds["data"]["username"].as_str().unwrap().to_owned();
    let mut db = db;
    db.roles.push(user.clone());
    assert!(role_exists(&db, &user));
    let tls = psql(
        &admin,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE s.ssl AND a.application_name = 'kh_dbe_tls'",
    );
    assert_ne!(tls, "0", "the engine's connections do not use TLS");
}
