//! Leases through `Core`, with the `database/` engine on an in-memory database plugin:
//! issue, expiry on the engine's clock, revocation with the token, retries with backoff,
//! irrevocable leases, renewal caps, prefixes, unmount, and leases across seal/unseal.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use keyhaven_crypto::shamir::Share;
use keyhaven_engine::database::plugin::{
    Connection, ConnectionConfig, DatabasePlugins, PluginError, SecretText,
};
use keyhaven_engine::{
    ClientToken, Core, CoreOptions, EngineError, InitParams, ManualClock, Operation, Request,
    Response, UnsealInput,
};
use keyhaven_storage::MemStore;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use Operation::{Delete, List, Read, Update};

/// A database that keeps its users in memory and can be made unreachable.
#[derive(Default)]
struct FakeDb {
    users: Mutex<BTreeSet<String>>,
    down: AtomicBool,
    revoke_calls: AtomicUsize,
}

struct FakeConn(Arc<FakeDb>);

struct FakePlugins(Arc<FakeDb>);

#[async_trait]
impl DatabasePlugins for FakePlugins {
    async fn open(&self, _config: &ConnectionConfig) -> Result<Arc<dyn Connection>, PluginError> {
        Ok(Arc::new(FakeConn(self.0.clone())))
    }
}

impl FakeConn {
    fn up(&self) -> Result<(), PluginError> {
        if self.0.down.load(Ordering::SeqCst) {
            Err(PluginError::new("connection refused"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Connection for FakeConn {
    async fn verify(&self) -> Result<(), PluginError> {
        self.up()
    }
    async fn create_user(
        &self,
        _statements: &[String],
        username: &str,
        _password: &SecretText,
        _expiration: &str,
    ) -> Result<(), PluginError> {
        self.up()?;
        self.0.users.lock().insert(username.to_owned());
        Ok(())
    }
    async fn revoke_user(&self, _statements: &[String], username: &str) -> Result<(), PluginError> {
        self.0.revoke_calls.fetch_add(1, Ordering::SeqCst);
        self.up()?;
        self.0.users.lock().remove(username);
        Ok(())
    }
    async fn renew_user(
        &self,
        _statements: &[String],
        _username: &str,
        _expiration: &str,
    ) -> Result<(), PluginError> {
        self.up()
    }
    async fn set_password(
        &self,
        _statements: &[String],
        _username: &str,
        _password: &SecretText,
    ) -> Result<(), PluginError> {
        self.up()
    }
    async fn close(&self) {}
}

struct Env {
    core: Arc<Core>,
    clock: Arc<ManualClock>,
    db: Arc<FakeDb>,
    root: String,
    shares: Vec<Share>,
}

impl Env {
    async fn new() -> Env {
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let db = Arc::new(FakeDb::default());
        let options = CoreOptions {
            database: Some(Arc::new(FakePlugins(db.clone()))),
            ..CoreOptions::default()
        };
        let core = Core::with_options(Arc::new(MemStore::new()), clock.clone(), options)
            .await
            .unwrap();
        let init = core
            .init(InitParams {
                secret_shares: 1,
                secret_threshold: 1,
            })
            .await
            .unwrap();
        let env = Env {
            core,
            clock,
            db,
            root: init.root_token.expose_secret().to_owned(),
            shares: init.shares,
        };
        env.unseal().await;
        env.ok(Update, "sys/mounts/database", json!({"type": "database"}))
            .await;
        env.ok(
            Update,
            "database/config/pg",
            json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1/db",
                "username": "postgres",
                "password": "root-secret",
                "allowed_roles": "*",
            }),
        )
        .await;
        env.ok(
            Update,
            "database/roles/ro",
            json!({
                "db_name": "pg",
                "creation_statements": "CREATE ROLE \"{{name}}\";",
                "default_ttl": "1h",
                "max_ttl": "2h",
            }),
        )
        .await;
        env
    }

    async fn unseal(&self) {
        let share = SecretString::from(hex::encode(self.shares[0].as_bytes()));
        self.core.unseal(UnsealInput::Key(share)).await.unwrap();
        assert!(!self.core.is_sealed());
    }

    async fn call(
        &self,
        op: Operation,
        path: &str,
        data: Value,
        token: &str,
    ) -> Result<Response, EngineError> {
        let data: Map<String, Value> = match data {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self.core
            .handle(Request {
                id: "test".into(),
                operation: op,
                path: path.into(),
                data,
                token: Some(ClientToken::new(token.to_owned())),
                remote_addr: None,
                client_certs: Vec::new(),
            })
            .await
    }

    async fn ok(&self, op: Operation, path: &str, data: Value) -> Response {
        match self.call(op, path, data, &self.root.clone()).await {
            Ok(r) => r,
            Err(e) => panic!("{op} {path}: {e}"),
        }
    }

    async fn err(&self, op: Operation, path: &str, data: Value) -> String {
        match self.call(op, path, data, &self.root.clone()).await {
            Ok(_) => panic!("{op} {path} succeeded"),
            Err(e) => e.to_string(),
        }
    }

    /// Issue credentials with `token`: (lease id, duration, username).
    async fn creds_with(&self, token: &str) -> (String, u64, String) {
        let r = self
            .call(Read, "database/creds/ro", json!({}), token)
            .await
            .unwrap();
        let lease = r.lease.expect("a lease");
        let user = r.data.unwrap()["username"].as_str().unwrap().to_owned();
        assert!(self.db.users.lock().contains(&user));
        (lease.lease_id, lease.duration, user)
    }

    async fn creds(&self) -> (String, u64, String) {
        self.creds_with(&self.root.clone()).await
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    fn exists(&self, user: &str) -> bool {
        self.db.users.lock().contains(user)
    }

    async fn child_token(&self, ttl: &str) -> String {
        let r = self
            .ok(Update, "auth/token/create", json!({"ttl": ttl}))
            .await;
        r.auth.unwrap()["client_token"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn an_expired_lease_is_revoked_by_the_scheduler_and_nothing_before() {
    let env = Env::new().await;
    let (id, duration, user) = env.creds().await;
    assert!(id.starts_with("database/creds/ro/"), "{id}");
    let suffix = id.rsplit('/').next().unwrap();
    assert_eq!(suffix.len(), 24);
    assert_eq!(duration, 3600, "the role's default_ttl");

    let looked = env
        .ok(Update, "sys/leases/lookup", json!({"lease_id": id}))
        .await
        .data
        .unwrap();
    assert_eq!(looked["id"], json!(id));
    assert_eq!(looked["ttl"], json!(3600));
    assert_eq!(looked["renewable"], json!(true));
    assert!(looked["last_renewal"].is_null());

    env.advance(3599);
    let pass = env.core.expire_leases().await.unwrap();
    assert_eq!(pass.revoked, 0);
    assert!(env.exists(&user), "not yet expired");
    assert_eq!(env.db.revoke_calls.load(Ordering::SeqCst), 0);

    env.advance(1);
    let pass = env.core.expire_leases().await.unwrap();
    assert_eq!(pass.revoked, 1);
    assert!(!env.exists(&user), "dropped at expiry");
    let e = env
        .err(Update, "sys/leases/lookup", json!({"lease_id": id}))
        .await;
    assert_eq!(e, "invalid lease");
}

#[tokio::test]
async fn revoking_a_token_revokes_its_leases_and_its_childrens() {
    let env = Env::new().await;
    let parent = env.child_token("8h").await;
    let (_, _, user) = env.creds_with(&parent).await;
    // A child of the parent, with credentials of its own.
    let r = env
        .call(Update, "auth/token/create", json!({}), &parent)
        .await
        .unwrap();
    let child = r.auth.unwrap()["client_token"].as_str().unwrap().to_owned();
    let (_, _, child_user) = env.creds_with(&child).await;
    let (_, _, root_user) = env.creds().await;

    env.ok(Update, "auth/token/revoke", json!({"token": parent}))
        .await;
    env.core.expire_leases().await.unwrap();
    assert!(!env.exists(&user), "the token's lease was revoked");
    assert!(!env.exists(&child_user), "the child's lease was revoked");
    assert!(env.exists(&root_user), "other leases stay");
}

#[tokio::test]
async fn a_lease_never_outlives_its_token_and_an_expired_token_takes_its_leases() {
    let env = Env::new().await;
    let token = env.child_token("10m").await;
    let (_, duration, user) = env.creds_with(&token).await;
    assert_eq!(
        duration, 600,
        "capped by the token's TTL, not the role's 1h"
    );
    env.advance(601);
    env.core.maintenance().await.unwrap();
    env.core.expire_leases().await.unwrap();
    assert!(!env.exists(&user));
}

#[tokio::test]
async fn a_failed_revocation_is_retried_with_backoff_until_the_database_is_back() {
    let env = Env::new().await;
    let (id, _, user) = env.creds().await;
    env.db.down.store(true, Ordering::SeqCst);
    env.advance(3600);
    let pass = env.core.expire_leases().await.unwrap();
    assert_eq!((pass.revoked, pass.failed), (0, 1));
    assert_eq!(env.db.revoke_calls.load(Ordering::SeqCst), 1);
    // The first retry waits 20 s ± 50 %: not before 10 s.
    env.advance(9);
    env.core.expire_leases().await.unwrap();
    assert_eq!(
        env.db.revoke_calls.load(Ordering::SeqCst),
        1,
        "no retry before the backoff"
    );
    // The lease is kept meanwhile, and cannot be renewed.
    let e = env
        .err(Update, "sys/leases/renew", json!({"lease_id": id}))
        .await;
    assert_eq!(e, "lease expired");

    env.db.down.store(false, Ordering::SeqCst);
    env.advance(21);
    let pass = env.core.expire_leases().await.unwrap();
    assert_eq!(pass.revoked, 1);
    assert!(!env.exists(&user), "dropped once the database is back");
}

#[tokio::test]
async fn after_six_failures_a_lease_is_irrevocable_listed_and_removed_only_by_force() {
    let env = Env::new().await;
    let (id, _, user) = env.creds().await;
    env.db.down.store(true, Ordering::SeqCst);
    env.advance(3600);
    let mut irrevocable = 0;
    for _ in 0..6 {
        let pass = env.core.expire_leases().await.unwrap();
        irrevocable += pass.irrevocable;
        // Past the longest backoff of the attempt (2^n × 10 s × 1.5).
        env.advance(500);
    }
    assert_eq!(irrevocable, 1);
    assert_eq!(env.db.revoke_calls.load(Ordering::SeqCst), 6);
    assert!(env.exists(&user));

    let looked = env
        .ok(Update, "sys/leases/lookup", json!({"lease_id": id}))
        .await
        .data
        .unwrap();
    assert_eq!(looked["revoke_error"], json!("connection refused"));
    let listed = env
        .ok(Read, "sys/leases", json!({"type": "irrevocable"}))
        .await
        .data
        .unwrap();
    assert_eq!(listed["lease_count"], json!(1));
    assert_eq!(listed["leases"][0]["lease_id"], json!(id));
    assert_eq!(listed["leases"][0]["error"], json!("connection refused"));
    let counted = env
        .ok(Read, "sys/leases/count", json!({"type": "irrevocable"}))
        .await
        .data
        .unwrap();
    assert_eq!(counted["counts"]["database/"], json!(1));
    let e = env
        .err(Update, "sys/leases/renew", json!({"lease_id": id}))
        .await;
    assert_eq!(
        e,
        "lease is expired and has failed previous revocation attempts"
    );

    // No more attempts until the daily retry.
    env.advance(3600);
    env.core.expire_leases().await.unwrap();
    assert_eq!(env.db.revoke_calls.load(Ordering::SeqCst), 6);

    env.ok(
        Update,
        "sys/leases/revoke-force/database/creds/ro",
        json!({}),
    )
    .await;
    let listed = env
        .ok(Read, "sys/leases", json!({"type": "irrevocable"}))
        .await
        .data
        .unwrap();
    assert_eq!(listed["lease_count"], json!(0));
}

#[tokio::test]
async fn renewal_is_capped_by_max_ttl_from_issue_with_vaults_warning() {
    let env = Env::new().await;
    let (id, _, _) = env.creds().await;
    env.advance(1800);
    let r = env
        .ok(
            Update,
            "sys/leases/renew",
            json!({"lease_id": id, "increment": "1h"}),
        )
        .await;
    let lease = r.lease.unwrap();
    assert_eq!(lease.duration, 3600, "1h from now is within the 2h max");
    assert!(r.warnings.is_empty());
    env.advance(1800);
    let r = env
        .ok(
            Update,
            "sys/renew",
            json!({"lease_id": id, "increment": "2h"}),
        )
        .await;
    assert_eq!(r.lease.unwrap().duration, 3600, "2h from issue, 1h left");
    assert_eq!(
        r.warnings,
        vec![
            "TTL of \"2h0m0s\" exceeded the effective max_ttl of \"1h0m0s\"; TTL value is capped accordingly"
                .to_owned()
        ]
    );
    let looked = env
        .ok(Update, "sys/leases/lookup", json!({"lease_id": id}))
        .await
        .data
        .unwrap();
    assert!(looked["last_renewal"].is_string());
    let e = env
        .err(
            Update,
            "sys/leases/renew",
            json!({"lease_id": "database/creds/ro/nope"}),
        )
        .await;
    assert_eq!(e, "lease not found");
}

#[tokio::test]
async fn revoke_prefix_and_async_revoke_drop_the_users() {
    let env = Env::new().await;
    let (a, _, user_a) = env.creds().await;
    let (_, _, user_b) = env.creds().await;
    let (_, _, user_c) = env.creds().await;

    let r = env
        .ok(
            Update,
            "sys/leases/revoke",
            json!({"lease_id": a, "sync": false}),
        )
        .await;
    assert!(r.accepted, "an asynchronous revocation answers 202");
    assert!(env.exists(&user_a), "not yet revoked");
    env.core.expire_leases().await.unwrap();
    assert!(!env.exists(&user_a), "revoked by the next pass");

    // Revoking what is gone succeeds.
    let r = env
        .ok(Update, "sys/leases/revoke", json!({"lease_id": a}))
        .await;
    assert!(r.is_empty(), "204");

    let keys = env
        .ok(List, "sys/leases/lookup/database/creds/ro/", json!({}))
        .await
        .data
        .unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);

    env.ok(Update, "sys/leases/revoke-prefix/database/creds", json!({}))
        .await;
    assert!(!env.exists(&user_b) && !env.exists(&user_c));
    let e = env
        .err(List, "sys/leases/lookup/database/creds/ro/", json!({}))
        .await;
    assert_eq!(e, "", "nothing left: 404");
}

#[tokio::test]
async fn prefixes_and_ids_cannot_leave_the_lease_tree() {
    let env = Env::new().await;
    for bad in ["../core", "a//b", "./x"] {
        let e = env
            .err(
                Update,
                &format!("sys/leases/revoke-prefix/{bad}"),
                json!({}),
            )
            .await;
        assert!(e.contains("invalid prefix"), "{bad}: {e}");
    }
    let e = env
        .err(
            Update,
            "sys/leases/lookup",
            json!({"lease_id": "../../core/keyring"}),
        )
        .await;
    assert_eq!(e, "invalid lease");
}

#[tokio::test]
async fn a_non_sudo_token_may_renew_but_not_revoke_a_prefix() {
    let env = Env::new().await;
    let r = env
        .ok(
            Update,
            "auth/token/create",
            json!({"ttl": "1h", "policies": ["default"]}),
        )
        .await;
    let token = r.auth.unwrap()["client_token"].as_str().unwrap().to_owned();
    let (id, _, _) = env.creds().await;
    // The default policy allows renew and lookup.
    env.call(Update, "sys/leases/renew", json!({"lease_id": id}), &token)
        .await
        .unwrap();
    let e = env
        .call(
            Update,
            "sys/leases/revoke-prefix/database/",
            json!({}),
            &token,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::PermissionDenied), "{e}");
}

#[tokio::test]
async fn leases_survive_seal_and_unseal_and_are_revoked_at_expiry() {
    let env = Env::new().await;
    let (_, _, user) = env.creds().await;
    env.core.seal().await;
    env.advance(3600);
    env.unseal().await;
    let pass = env.core.expire_leases().await.unwrap();
    assert_eq!(pass.revoked, 1);
    assert!(!env.exists(&user));
}

#[tokio::test]
async fn disabling_the_engine_revokes_its_leases_or_refuses() {
    let env = Env::new().await;
    let (_, _, user) = env.creds().await;
    env.db.down.store(true, Ordering::SeqCst);
    let e = env.err(Delete, "sys/mounts/database", json!({})).await;
    assert!(e.contains("the mount stays"), "{e}");
    assert!(env.exists(&user));
    env.db.down.store(false, Ordering::SeqCst);
    env.ok(Delete, "sys/mounts/database", json!({})).await;
    assert!(!env.exists(&user), "revoked before the mount went");
}
