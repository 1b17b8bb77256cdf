//! Leases of database credentials across a restart, and with the token that read them:
//! a SQLite server stopped while a lease runs revokes it at expiry once it is back and
//! unsealed; revoking the token that read credentials drops the user.
//!
//! Run when `KEYHAVEN_TEST_PG` is set (see `postgres.rs`).

use std::time::Duration;

use serde_json::Value;

use crate::bao::Bao;
use crate::database::{TestDb, eventually, ok, role_exists};
use crate::postgres::{pg_url, psql};
use crate::support::{TestServer, init_unseal, sqlite_config, unseal};

/// A database of the test's own ([`TestDb`]), and the users the server made in it,
/// dropped at the end.
struct Db {
    db: TestDb,
    /// The role names' prefix, which starts the users' names too.
    tag: String,
}

impl Db {
    fn new(admin: &str, tag: &str) -> Db {
        Db {
            db: TestDb::new(admin, &format!("lease_{tag}")),
            tag: tag.to_owned(),
        }
    }

    fn url(&self) -> String {
        self.db.url_as("postgres")
    }

    fn role_exists(&self, user: &str) -> bool {
        role_exists(&self.db, user)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Users of this test: their names carry the role names `<tag>-…` after the
        // token's display name. `TestDb` drops them with the database.
        let users = self.db.sql(&format!(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%-{}-%'",
            self.tag
        ));
        self.db.roles.extend(users.lines().map(str::to_owned));
    }
}

/// `database/` mounted, with connection `pg` to `db` allowing the roles `<tag>-*`, and
/// `extra` settings of the connection.
fn configure(bao: &Bao, db: &Db, extra: &[&str]) {
    ok(&bao.run(&["secrets", "enable", "database"]), "enable");
    let url = format!("connection_url={}", db.url());
    let allowed = format!("allowed_roles={}-*", db.tag);
    let mut args = vec![
        "write",
        "database/config/pg",
        "plugin_name=postgresql-database-plugin",
        &url,
        &allowed,
    ];
    args.extend_from_slice(extra);
    ok(&bao.run(&args), "config");
}

fn set_up(bao: &Bao, db: &Db) {
    configure(bao, db, &[]);
    let creation =
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';";
    for (role, ttl) in [("long", "1h"), ("short", "6s")] {
        ok(
            &bao.run(&[
                "write",
                &format!("database/roles/{}-{role}", db.tag),
                "db_name=pg",
                &format!("creation_statements={creation}"),
                &format!("default_ttl={ttl}"),
            ]),
            "role",
        );
    }
}

fn issue(bao: &Bao, role: &str) -> (String, String) {
    let v = ok(
        &bao.run(&["read", "-format=json", &format!("database/creds/{role}")]),
        "creds",
    );
    (
        v["lease_id"].as_str().unwrap().to_owned(),
        v["data"]["username"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn a_lease_is_revoked_at_expiry_after_a_restart() {
    let Some(admin) = pg_url() else { return };
    let db = Db::new(&admin, "rs");
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_config(dir.path());
    let server = TestServer::with_config(&config);
    let (keys, root) = init_unseal(&server.addr(), 1, 1);
    let bao = Bao::new(&server.addr(), Some(&root));
    set_up(&bao, &db);
    let (_, short) = issue(&bao, "rs-short");
    let (long_lease, long) = issue(&bao, "rs-long");
    assert!(db.role_exists(&short) && db.role_exists(&long));

    // Down across the short lease's expiry: nobody revokes it meanwhile.
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_secs(7));
    assert!(db.role_exists(&short), "no server, no revocation");

    let server = TestServer::with_config(&config);
    unseal(&server.addr(), &keys);
    eventually(20, "the expired lease revoked after the restart", || {
        !db.role_exists(&short)
    });
    assert!(db.role_exists(&long), "the live lease stays");
    // The lease of the long user is still known, with its TTL counted from its issue.
    let bao = Bao::new(&server.addr(), Some(&root));
    let lookup = ok(
        &bao.run(&["lease", "lookup", "-format=json", &long_lease]),
        "lookup",
    );
    let ttl = lookup["data"]["ttl"].as_i64().unwrap();
    assert!(ttl > 3500 && ttl < 3600, "{lookup}");
    ok(
        &bao.run(&["lease", "revoke", "-sync", &long_lease]),
        "revoke",
    );
    assert!(!db.role_exists(&long));
}

#[test]
fn revoking_the_token_that_read_credentials_drops_the_user() {
    let Some(admin) = pg_url() else { return };
    let db = Db::new(&admin, "tk");
    let server = TestServer::dev();
    let root = server.root_token();
    let bao = Bao::new(&server.addr(), Some(&root));
    set_up(&bao, &db);
    let created = ok(
        &bao.run(&["token", "create", "-format=json", "-ttl=1h"]),
        "token create",
    );
    let token = created["auth"]["client_token"].as_str().unwrap().to_owned();
    let as_token = Bao::new(&server.addr(), Some(&token));
    let (_, user) = issue(&as_token, "tk-long");
    let (_, other) = issue(&bao, "tk-long");
    assert!(db.role_exists(&user));

    ok(&bao.run(&["token", "revoke", &token]), "token revoke");
    eventually(20, "the token's user dropped", || !db.role_exists(&user));
    assert!(db.role_exists(&other), "another token's user stays");
}

/// `keyhaven ARGS` against `addr` with `token`; (exit code, stdout, stderr).
fn kh(addr: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::support::keyhaven_bin())
        .args(args)
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_ADDR")
        .env("KEYHAVEN_ADDR", addr)
        .env("KEYHAVEN_TOKEN", token)
        .env("HOME", home.path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn keyhaven_read_and_lease_commands_issue_renew_and_revoke_credentials() {
    let Some(admin) = pg_url() else { return };
    let db = Db::new(&admin, "kc");
    let server = TestServer::dev();
    let root = server.root_token();
    set_up(&Bao::new(&server.addr(), Some(&root)), &db);
    let addr = server.addr();

    // The table shows the lease rows first, as `bao read` does.
    let (code, out, err) = kh(&addr, &root, &["read", "database/creds/kc-long"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<(&str, &str)> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    assert_eq!(rows[0].0, "lease_id", "{out}");
    assert_eq!(rows[1], ("lease_duration", "1h"), "{out}");
    assert_eq!(rows[2], ("lease_renewable", "true"), "{out}");
    let lease = rows[0].1.to_owned();
    let user = rows
        .iter()
        .find(|(k, _)| *k == "username")
        .unwrap()
        .1
        .to_owned();
    assert!(db.role_exists(&user));

    let (code, out, err) = kh(
        &addr,
        &root,
        &["lease", "renew", "--increment", "30m", &lease],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("lease_duration") && out.contains("30m"),
        "{out}"
    );
    let (code, out, err) = kh(
        &addr,
        &root,
        &["lease", "lookup", "--format", "json", &lease],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"]["id"], lease.as_str());
    assert!(v["data"]["last_renewal"].is_string(), "{v}");

    let (code, out, err) = kh(&addr, &root, &["lease", "revoke", "--sync", &lease]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Success! Revoked lease"), "{out}");
    assert!(!db.role_exists(&user));

    // A prefix, and the errors a user sees.
    let users: Vec<String> = (0..2)
        .map(|_| issue(&Bao::new(&addr, Some(&root)), "kc-long").1)
        .collect();
    let (code, _, err) = kh(
        &addr,
        &root,
        &[
            "lease",
            "revoke",
            "--prefix",
            "--sync",
            "database/creds/kc-long",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(users.iter().all(|u| !db.role_exists(u)));
    let (code, _, err) = kh(&addr, &root, &["lease", "renew", &lease]);
    assert_ne!(code, 0);
    assert!(err.contains("lease not found"), "{err}");
    let (code, _, err) = kh(&addr, &root, &["lease", "revoke", "--force", &lease]);
    assert_ne!(code, 0, "--force needs --prefix");
    assert!(err.contains("--prefix"), "{err}");
}

/// PostgreSQL refuses the second of two concurrent GRANTs on one table ("tuple
/// concurrently updated"): credentials issued and revoked at the same time, with a pool
/// of several connections, must all succeed.
#[test]
fn concurrent_issues_and_revocations_of_one_role_all_succeed() {
    let Some(admin) = pg_url() else { return };
    let db = Db::new(&admin, "cc");
    psql(&db.url(), "CREATE TABLE granted (id int)");
    let server = TestServer::dev();
    let root = server.root_token();
    let bao = Bao::new(&server.addr(), Some(&root));
    configure(&bao, &db, &["max_open_connections=8"]);
    ok(
        &bao.run(&[
            "write",
            "database/roles/cc-ro",
            "db_name=pg",
            "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON granted TO \"{{name}}\";",
        ]),
        "role",
    );
    let url = format!("{}/v1/database/creds/cc-ro", server.addr());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, root) = (url.clone(), root.clone());
            std::thread::spawn(move || {
                (0..4)
                    .map(|_| crate::support::call("GET", &url, Some(&root), None))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut users = Vec::new();
    for t in threads {
        for (status, body) in t.join().unwrap() {
            assert_eq!(status, 200, "{body}");
            users.push(body["data"]["username"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(users.len(), 32);
    assert!(users.iter().all(|u| db.role_exists(u)));
    ok(
        &bao.run(&[
            "lease",
            "revoke",
            "-sync",
            "-prefix",
            "database/creds/cc-ro",
        ]),
        "revoke-prefix",
    );
    assert!(users.iter().all(|u| !db.role_exists(u)));
}

#[test]
fn a_failing_change_batched_with_others_undoes_only_itself() {
    let Some(admin) = pg_url() else { return };
    let db = Db::new(&admin, "gc");
    psql(&db.url(), "CREATE TABLE granted (id int)");
    let server = TestServer::dev();
    let root = server.root_token();
    let bao = Bao::new(&server.addr(), Some(&root));
    configure(&bao, &db, &["max_open_connections=8"]);
    ok(
        &bao.run(&[
            "write",
            "database/roles/gc-good",
            "db_name=pg",
            "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON granted TO \"{{name}}\";",
        ]),
        "good role",
    );
    // Creates the user, then fails: the creation must be undone with it.
    ok(
        &bao.run(&[
            "write",
            "database/roles/gc-bad",
            "db_name=pg",
            "username_template=gcbad-{{random 12}}",
            "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'; GRANT SELECT ON no_such_table TO \"{{name}}\";",
        ]),
        "bad role",
    );
    // Good and bad issues at once, so that they share transactions.
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let role = if i % 2 == 0 { "gc-good" } else { "gc-bad" };
            let url = format!("{}/v1/database/creds/{role}", server.addr());
            let root = root.clone();
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| (role, crate::support::call("GET", &url, Some(&root), None)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut good = Vec::new();
    for t in threads {
        for (role, (status, body)) in t.join().unwrap() {
            if role == "gc-good" {
                assert_eq!(status, 200, "{body}");
                good.push(body["data"]["username"].as_str().unwrap().to_owned());
            } else {
                assert_eq!(status, 500, "{body}");
                assert!(body.to_string().contains("no_such_table"), "{body}");
            }
        }
    }
    assert_eq!(good.len(), 18);
    assert!(good.iter().all(|u| db.role_exists(u)));
    let leftover = psql(
        &db.url(),
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'gcbad-%'",
    );
    assert_eq!(leftover, "0", "a failed creation left its user behind");
}

#[test]
fn the_default_revocation_finds_grants_in_every_schema_and_on_columns() {
    let Some(admin) = pg_url() else { return };
    let db = Db::new(&admin, "sc");
    psql(
        &db.url(),
        "CREATE TABLE granted (id int); CREATE SCHEMA app; CREATE TABLE app.t (id int, x int); \
         CREATE SEQUENCE counter",
    );
    let server = TestServer::dev();
    let root = server.root_token();
    let bao = Bao::new(&server.addr(), Some(&root));
    configure(&bao, &db, &[]);
    // No revocation statements: OpenBao's default revocation, which must find every
    // schema the user holds privileges in, or DROP ROLE fails on what depends on it.
    ok(
        &bao.run(&[
            "write",
            "database/roles/sc-wide",
            "db_name=pg",
            "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'; \
             GRANT SELECT ON granted TO \"{{name}}\"; GRANT USAGE ON SCHEMA app TO \"{{name}}\"; \
             GRANT SELECT (x) ON app.t TO \"{{name}}\"; GRANT USAGE ON SEQUENCE counter TO \"{{name}}\";",
        ]),
        "role",
    );
    let users: Vec<(String, String)> = (0..3).map(|_| issue(&bao, "sc-wide")).collect();
    for (_, user) in &users {
        assert!(db.role_exists(user));
    }
    ok(
        &bao.run(&[
            "lease",
            "revoke",
            "-sync",
            "-prefix",
            "database/creds/sc-wide",
        ]),
        "revoke-prefix",
    );
    for (_, user) in &users {
        assert!(!db.role_exists(user), "{user} is left");
    }
}
