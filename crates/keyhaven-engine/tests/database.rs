//! The `database/` engine against a recording plugin, on MemStore with a manual clock:
//! what reaches the plugin, what is stored, leases' revocation and renewal, scheduled
//! static rotation and its retry, and root rotation that never loses the password.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use keyhaven_engine::database::plugin::{
    Connection, ConnectionConfig, DatabasePlugins, PluginError, SecretText,
};
use keyhaven_engine::route;
use keyhaven_engine::{
    Backend, BackendContext, EngineError, LeaseRef, ManualClock, Operation, Response,
};
use keyhaven_storage::{MemStore, Store};
use serde_json::{Map, Value, json};

/// One call the plugin saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Open {
        url: String,
    },
    Create {
        statements: Vec<String>,
        username: String,
        password: String,
        expiration: String,
    },
    Revoke {
        statements: Vec<String>,
        username: String,
    },
    Renew {
        username: String,
        expiration: String,
    },
    SetPassword {
        username: String,
        password: String,
    },
}

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<Call>>,
    /// Fail every call with this reason.
    fail: Mutex<Option<String>>,
}

impl Fake {
    fn check(&self) -> Result<(), PluginError> {
        match self.fail.lock().unwrap().clone() {
            Some(reason) => Err(PluginError::new(reason)),
            None => Ok(()),
        }
    }
    fn record(&self, call: Call) -> Result<(), PluginError> {
        self.check()?;
        self.calls.lock().unwrap().push(call);
        Ok(())
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn set_fail(&self, reason: Option<&str>) {
        *self.fail.lock().unwrap() = reason.map(str::to_owned);
    }
}

struct Plugins(Arc<Fake>);
struct Conn(Arc<Fake>);

#[async_trait]
impl DatabasePlugins for Plugins {
    async fn open(&self, config: &ConnectionConfig) -> Result<Arc<dyn Connection>, PluginError> {
        self.0.calls.lock().unwrap().push(Call::Open {
            url: config.url.expose().to_owned(),
        });
        Ok(Arc::new(Conn(self.0.clone())))
    }
}

#[async_trait]
impl Connection for Conn {
    async fn verify(&self) -> Result<(), PluginError> {
        self.0.check()
    }
    async fn create_user(
        &self,
        statements: &[String],
        username: &str,
        password: &SecretText,
        expiration: &str,
    ) -> Result<(), PluginError> {
        self.0.record(Call::Create {
            statements: statements.to_vec(),
            username: username.to_owned(),
            password: password.expose().to_owned(),
            expiration: expiration.to_owned(),
        })
    }
    async fn revoke_user(&self, statements: &[String], username: &str) -> Result<(), PluginError> {
        self.0.record(Call::Revoke {
            statements: statements.to_vec(),
            username: username.to_owned(),
        })
    }
    async fn renew_user(
        &self,
        _statements: &[String],
        username: &str,
        expiration: &str,
    ) -> Result<(), PluginError> {
        self.0.record(Call::Renew {
            username: username.to_owned(),
            expiration: expiration.to_owned(),
        })
    }
    async fn set_password(
        &self,
        _statements: &[String],
        username: &str,
        password: &SecretText,
    ) -> Result<(), PluginError> {
        self.0.record(Call::SetPassword {
            username: username.to_owned(),
            password: password.expose().to_owned(),
        })
    }
    async fn close(&self) {}
}

struct Db {
    backend: Arc<dyn Backend>,
    fake: Arc<Fake>,
    clock: ManualClock,
    store: Arc<MemStore>,
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

const T0: u64 = 1_700_000_000;
const T0I: i64 = 1_700_000_000;

fn mount() -> Db {
    let fake = Arc::new(Fake::default());
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0));
    let store = Arc::new(MemStore::new());
    let backend = keyhaven_engine::database::factory(BackendContext {
        storage: store.clone(),
        clock: Arc::new(clock.clone()),
        options: Map::new(),
        outbound: None,
        database: Some(Arc::new(Plugins(fake.clone()))),
        limits: Default::default(),
    })
    .unwrap();
    Db {
        backend,
        fake,
        clock,
        store,
    }
}

impl Db {
    async fn call(&self, op: Operation, path: &str, body: Value) -> Result<Response, EngineError> {
        route::call(self.backend.as_ref(), op, path, &obj(body)).await
    }

    async fn configure(&self) {
        self.call(
            Operation::Update,
            "config/pg",
            json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": "postgresql://{{username}}:{{password}}@db:5432/app",
                "username": "root",
                "password": "r00t p@ss",
                "allowed_roles": "ro,app",
            }),
        )
        .await
        .unwrap();
    }

    fn now(&self) -> u64 {
        self.clock.now_secs()
    }
}

trait NowSecs {
    fn now_secs(&self) -> u64;
}

impl NowSecs for ManualClock {
    fn now_secs(&self) -> u64 {
        keyhaven_engine::Clock::now(self)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }
}

#[tokio::test]
async fn a_config_that_cannot_connect_is_refused_and_not_stored() {
    let db = mount();
    db.fake
        .set_fail(Some("error connecting to server: Connection refused"));
    let err = db
        .call(
            Operation::Update,
            "config/pg",
            json!({"plugin_name": "postgresql-database-plugin", "connection_url": "host=x"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidRequest(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "error creating database object: error connecting to server: Connection refused"
    );
    assert!(db.store.get("config/pg").await.unwrap().is_none());
    assert!(matches!(
        db.call(Operation::Read, "config/pg", json!({})).await,
        Err(EngineError::NotFound(_))
    ));
    // verify_connection=false stores it without connecting.
    db.call(
        Operation::Update,
        "config/pg",
        json!({"plugin_name": "postgresql-database-plugin", "connection_url": "host=x", "verify_connection": false}),
    )
    .await
    .unwrap();
    assert!(db.store.get("config/pg").await.unwrap().is_some());
    // An unknown plugin and an empty URL are refused by name.
    let err = db
        .call(
            Operation::Update,
            "config/m",
            json!({"plugin_name": "mysql-database-plugin", "connection_url": "x"}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mysql-database-plugin"), "{err}");
    let err = db
        .call(
            Operation::Update,
            "config/m",
            json!({"plugin_name": "postgresql-database-plugin"}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connection_url"), "{err}");
}

#[tokio::test]
async fn config_escapes_root_credentials_and_never_reads_back_the_password() {
    let db = mount();
    db.configure().await;
    assert_eq!(
        db.fake.calls()[0],
        Call::Open {
            url: "postgresql://root:r00t%20p%40ss@db:5432/app".to_owned()
        }
    );
    let read = db
        .call(Operation::Read, "config/pg", json!({}))
        .await
        .unwrap();
    let text = serde_json::to_string(&read.data).unwrap();
    assert!(!text.contains("r00t"), "{text}");
    let data = read.data.unwrap();
    assert_eq!(data["connection_details"]["username"], "root");
    assert_eq!(data["allowed_roles"], json!(["ro", "app"]));
    assert_eq!(data["connection_details"]["max_open_connections"], 4);
}

#[tokio::test]
async fn creds_issue_a_lease_whose_revocation_outlives_the_role() {
    let db = mount();
    db.configure().await;
    db.call(
        Operation::Update,
        "roles/ro",
        json!({
            "db_name": "pg",
            "creation_statements": "CREATE ROLE \"{{name}}\"; GRANT SELECT ON t TO \"{{name}}\";",
            "revocation_statements": ["DROP ROLE \"{{name}}\""],
            "default_ttl": "1h",
            "max_ttl": "2h",
        }),
    )
    .await
    .unwrap();
    let resp = db
        .call(Operation::Read, "creds/ro", json!({}))
        .await
        .unwrap();
    let data = resp.data.clone().unwrap();
    let username = data["username"].as_str().unwrap().to_owned();
    let password = data["password"].as_str().unwrap().to_owned();
    let secret = resp.secret.as_ref().unwrap();
    assert_eq!(
        (secret.ttl, secret.max_ttl, secret.renewable),
        (3600, 7200, true)
    );
    assert!(
        !serde_json::to_string(&secret.internal)
            .unwrap()
            .contains(&password)
    );
    assert_eq!(secret.internal["role"], "ro");
    assert_eq!(secret.internal["db_name"], "pg");
    match db.fake.calls().last().unwrap() {
        Call::Create {
            username: u,
            password: p,
            expiration,
            statements,
        } => {
            assert_eq!(u, &username);
            assert_eq!(p, &password);
            // The lease's end plus the 5-second buffer.
            assert_eq!(expiration, "2023-11-14 23:13:25+0000");
            assert_eq!(statements.len(), 1);
        }
        other => panic!("{other:?}"),
    }

    // Deleting the role does not stop revocation: the lease carries what it needs.
    db.call(Operation::Delete, "roles/ro", json!({}))
        .await
        .unwrap();
    let lease = LeaseRef {
        lease_id: "database/creds/ro/abc",
        path: "creds/ro",
        internal: &secret.internal,
        issue_time: T0I,
        expire_time: T0I + 3600,
    };
    db.backend.revoke_secret(&lease).await.unwrap();
    assert_eq!(
        db.fake.calls().last().unwrap(),
        &Call::Revoke {
            statements: vec!["DROP ROLE \"{{name}}\"".to_owned()],
            username: username.clone()
        }
    );
    // A database that fails keeps the lease for a retry.
    db.fake.set_fail(Some("connection reset"));
    let err = db.backend.revoke_secret(&lease).await.unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
    db.fake.set_fail(None);
    // Renewal needs the role.
    assert!(db.backend.renew_secret(&lease, T0I + 7200).await.is_err());
}

#[tokio::test]
async fn renewal_extends_the_database_validity_with_the_buffer() {
    let db = mount();
    db.configure().await;
    db.call(
        Operation::Update,
        "roles/ro",
        json!({"db_name": "pg", "creation_statements": ["CREATE ROLE \"{{name}}\""]}),
    )
    .await
    .unwrap();
    let resp = db
        .call(Operation::Read, "creds/ro", json!({}))
        .await
        .unwrap();
    let secret = resp.secret.unwrap();
    // No role TTL: the lease takes the mount's default, the database the system's.
    assert_eq!(secret.ttl, 0);
    let lease = LeaseRef {
        lease_id: "database/creds/ro/x",
        path: "creds/ro",
        internal: &secret.internal,
        issue_time: T0I,
        expire_time: T0I + 60,
    };
    db.backend.renew_secret(&lease, T0I + 600).await.unwrap();
    assert_eq!(
        db.fake.calls().last().unwrap(),
        &Call::Renew {
            username: secret.internal["username"].as_str().unwrap().to_owned(),
            expiration: "2023-11-14 22:23:25+0000".to_owned()
        }
    );
}

#[tokio::test]
async fn roles_are_checked_before_anything_reaches_the_database() {
    let db = mount();
    db.configure().await;
    let err = db
        .call(Operation::Read, "creds/none", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "unknown role: none");
    db.call(
        Operation::Update,
        "roles/rw",
        json!({"db_name": "pg", "creation_statements": "CREATE ROLE \"{{name}}\""}),
    )
    .await
    .unwrap();
    let err = db
        .call(Operation::Read, "creds/rw", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Failed(_)), "{err:?}");
    assert_eq!(err.to_string(), "\"rw\" is not an allowed role");
    assert!(
        !db.fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Create { .. }))
    );
    let err = db
        .call(
            Operation::Update,
            "roles/x",
            json!({"creation_statements": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "database name is required");
    let err = db
        .call(
            Operation::Update,
            "static-roles/rw",
            json!({"db_name": "pg", "username": "u", "rotation_period": 60}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Role and Static Role names must be unique");
}

#[tokio::test]
async fn static_roles_rotate_on_schedule_and_retry_failures_after_ten_seconds() {
    let db = mount();
    db.configure().await;
    db.call(
        Operation::Update,
        "static-roles/app",
        json!({"db_name": "pg", "username": "app_user", "rotation_period": "60s"}),
    )
    .await
    .unwrap();
    let set_passwords = |db: &Db| {
        db.fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::SetPassword { username, password } => Some((username, password)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // Created: rotated at once.
    let first = set_passwords(&db);
    assert_eq!(first.len(), 1);
    let creds = db
        .call(Operation::Read, "static-creds/app", json!({}))
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(creds["password"], first[0].1.as_str());
    assert_eq!(creds["ttl"], 60);
    assert_eq!(creds["rotation_period"], 60);
    assert_eq!(creds["last_vault_rotation"], "2023-11-14T22:13:20Z");

    db.clock.advance(Duration::from_secs(59));
    db.backend.tick().await.unwrap();
    assert_eq!(set_passwords(&db).len(), 1, "rotated early");
    db.clock.advance(Duration::from_secs(1));
    db.backend.tick().await.unwrap();
    let second = set_passwords(&db);
    assert_eq!(second.len(), 2);
    assert_ne!(second[0].1, second[1].1);

    // A failure keeps the current password and tries again 10 s later.
    db.clock.advance(Duration::from_secs(60));
    db.fake.set_fail(Some("down"));
    assert!(db.backend.tick().await.is_err());
    db.fake.set_fail(None);
    let creds = db
        .call(Operation::Read, "static-creds/app", json!({}))
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(creds["password"], second[1].1.as_str());
    assert_eq!(creds["ttl"], 10);
    db.clock.advance(Duration::from_secs(9));
    db.backend.tick().await.unwrap();
    assert_eq!(set_passwords(&db).len(), 2);
    db.clock.advance(Duration::from_secs(1));
    db.backend.tick().await.unwrap();
    let third = set_passwords(&db);
    assert_eq!(third.len(), 3);
    let creds = db
        .call(Operation::Read, "static-creds/app", json!({}))
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(creds["password"], third[2].1.as_str());
    assert_eq!(db.now() - T0, 130);
    assert_eq!(creds["ttl"], 60);

    // rotation_period under 5 s, a changed username and a cron schedule are refused.
    for (body, needle) in [
        (json!({"rotation_period": 4}), "5 seconds"),
        (
            json!({"username": "other"}),
            "cannot update static account username",
        ),
        (
            json!({"rotation_schedule": "0 * * * *"}),
            "rotation_schedule is not supported",
        ),
    ] {
        let err = db
            .call(Operation::Update, "static-roles/app", body)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[tokio::test]
async fn a_failed_root_rotation_keeps_the_working_password() {
    let db = mount();
    db.configure().await;
    db.fake.set_fail(Some("permission denied to alter role"));
    let err = db
        .call(Operation::Update, "rotate-root/pg", json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    db.fake.set_fail(None);
    // The stored configuration still has the old password.
    db.call(Operation::Update, "reset/pg", json!({}))
        .await
        .unwrap();
    assert_eq!(
        db.fake.calls().last().unwrap(),
        &Call::Open {
            url: "postgresql://root:r00t%20p%40ss@db:5432/app".to_owned()
        }
    );
    db.call(Operation::Update, "rotate-root/pg", json!({}))
        .await
        .unwrap();
    let new_password = match db.fake.calls().last().unwrap() {
        Call::SetPassword { username, password } => {
            assert_eq!(username, "root");
            password.clone()
        }
        other => panic!("{other:?}"),
    };
    // The next use reconnects with the new password.
    db.call(Operation::Update, "reset/pg", json!({}))
        .await
        .unwrap();
    assert_eq!(
        db.fake.calls().last().unwrap(),
        &Call::Open {
            url: format!("postgresql://root:{new_password}@db:5432/app")
        }
    );
}
