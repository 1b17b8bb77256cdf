//! The PostgreSQL plugin of the `database/` secrets engine
//! ([`keyhaven_engine::database::plugin`]), on tokio-postgres.
//!
//! - Connections come from a pool of at most `max_open_connections` per configuration.
//! - `sslmode` may be `disable` (the default) or `verify-full` with `sslrootcert=<PEM
//!   file>`; `allow`, `prefer`, `require` and `verify-ca` are refused, because they
//!   accept a certificate from anyone and the root credentials would go to whoever
//!   answers.
//! - With `password_authentication=scram-sha-256`, `{{password}}` is replaced by a
//!   SCRAM-SHA-256 verifier computed here: the password never reaches the database,
//!   its statement log or its error messages.
//! - Default statements and the default revocation are OpenBao's (see the reference's
//!   §A.4, §A.6 and §A.8); identifiers in the default statements are quoted.
//!
//! Driver errors are passed on with the database's reason; they never carry the
//! connection string or a password.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use keyhaven_engine::database::plugin::{
    Connection, ConnectionConfig, DatabasePlugins, PasswordAuthentication, PluginError, SecretText,
};
use keyhaven_engine::database::statements;
use tokio_postgres::NoTls;

/// The plugin's name in `plugin_name`.
pub const PLUGIN_NAME: &str = keyhaven_engine::database::POSTGRESQL_PLUGIN;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const DEFAULT_RENEW: &str = "ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';";
const DEFAULT_ROTATE: &str = "ALTER ROLE \"{{username}}\" WITH PASSWORD '{{password}}';";

/// The server's database plugins.
pub fn shared() -> Arc<dyn DatabasePlugins> {
    Arc::new(PgPlugins)
}

struct PgPlugins;

/// The reason of a driver error: the database's own message when it sent one.
fn reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn pool_reason(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => reason(e),
        deadpool_postgres::PoolError::Timeout(_) => {
            "timed out waiting for a database connection".to_owned()
        }
        other => other.to_string(),
    }
}

/// TLS as the connection URL asks for it.
enum Tls {
    Disable,
    VerifyFull(std::path::PathBuf),
}

/// Take `sslmode` and `sslrootcert` out of a URL or `key=value` connection string.
fn split_tls(url: &str) -> Result<(String, Tls), PluginError> {
    let url = url.trim();
    let mut sslmode = None;
    let mut rootcert = None;
    let mut take = |k: &str, v: &str| match k {
        "sslmode" => {
            sslmode = Some(v.to_owned());
            true
        }
        "sslrootcert" => {
            rootcert = Some(v.to_owned());
            true
        }
        _ => false,
    };
    let conninfo = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .filter(|p| !p.split_once('=').is_some_and(|(k, v)| take(k, v)))
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        url.split_whitespace()
            .filter(|w| {
                !w.split_once('=')
                    .is_some_and(|(k, v)| take(k, v.trim_matches('\'')))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let tls = match sslmode.as_deref() {
        None | Some("disable") => Tls::Disable,
        Some("verify-full") => match rootcert {
            Some(path) => Tls::VerifyFull(path.into()),
            None => {
                return Err(PluginError::new(
                    "sslmode=verify-full needs sslrootcert=<file of trusted CA certificates>",
                ));
            }
        },
        Some(weak @ ("allow" | "prefer" | "require" | "verify-ca")) => {
            return Err(PluginError::new(format!(
                "sslmode={weak} does not check whom it talks to; use sslmode=verify-full with \
                 sslrootcert, or sslmode=disable for a database on this machine"
            )));
        }
        Some(_) => return Err(PluginError::new("sslmode must be disable or verify-full")),
    };
    Ok((conninfo, tls))
}

fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, PluginError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let shown = ca_file.display();
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| PluginError::new(format!("sslrootcert {shown}: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| PluginError::new(format!("sslrootcert {shown}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| PluginError::new(format!("sslrootcert {shown}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(PluginError::new(format!(
            "sslrootcert {shown}: no certificate in the file"
        )));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PluginError::new(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[async_trait]
impl DatabasePlugins for PgPlugins {
    async fn open(&self, config: &ConnectionConfig) -> Result<Arc<dyn Connection>, PluginError> {
        if config.plugin_name != PLUGIN_NAME {
            return Err(PluginError::new(format!(
                "unknown plugin {:?}",
                config.plugin_name
            )));
        }
        let (conninfo, tls) = split_tls(config.url.expose())?;
        let mut pg: tokio_postgres::Config =
            conninfo.parse().map_err(|e: tokio_postgres::Error| {
                PluginError::new(format!("invalid connection_url: {}", reason(&e)))
            })?;
        pg.connect_timeout(CONNECT_TIMEOUT);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            Tls::Disable => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::from_config(pg, NoTls, manager_config)
            }
            Tls::VerifyFull(ca) => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(&ca)?);
                Manager::from_config(pg, tls, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(config.max_open_connections.max(1))
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| PluginError::new(e.to_string()))?;
        Ok(Arc::new(PgConnection {
            pool,
            scram: config.password_authentication == PasswordAuthentication::ScramSha256,
            queue: Arc::default(),
            serial: Arc::default(),
        }))
    }
}

struct PgConnection {
    pool: Pool,
    scram: bool,
    /// Changes of users and grants waiting for the next batch.
    queue: Arc<parking_lot::Mutex<Vec<Pending>>>,
    /// Held while a batch runs. PostgreSQL refuses the second of two concurrent `GRANT`s
    /// or `REVOKE`s on one object ("tuple concurrently updated": both rewrite its catalog
    /// row), so one configuration changes users in one transaction at a time, as
    /// OpenBao's plugin does; but that transaction carries every change that queued up
    /// meanwhile (group commit: one flush of the database's log for all of them), each
    /// under its own savepoint so that one failing change does not undo the others. The
    /// pool still serves `verify` beside it.
    serial: Arc<tokio::sync::Mutex<()>>,
}

/// One change of users or grants.
enum Change {
    /// Statements, already filled in, and the values an error must not repeat.
    Statements {
        sql: Vec<zeroize::Zeroizing<String>>,
        redact: Vec<zeroize::Zeroizing<String>>,
    },
    /// OpenBao's default revocation of a user.
    DefaultRevoke { username: String },
}

/// A change and who waits for its outcome.
struct Pending {
    change: Change,
    reply: tokio::sync::oneshot::Sender<Result<(), PluginError>>,
}

/// `"ident"`, with inner quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PgConnection {
    async fn client(&self) -> Result<deadpool_postgres::Object, PluginError> {
        self.pool
            .get()
            .await
            .map_err(|e| PluginError::new(pool_reason(&e)))
    }

    /// What `{{password}}` becomes.
    fn password_value(&self, password: &SecretText) -> SecretText {
        if self.scram {
            SecretText::new(postgres_protocol::password::scram_sha_256(
                password.expose().as_bytes(),
            ))
        } else {
            password.clone()
        }
    }

    /// Run the queries of `templates` (or of `default`) with `values`, in one transaction
    /// (shared with the changes queued beside it, under a savepoint of its own).
    async fn run(
        &self,
        templates: &[String],
        default: &str,
        values: &[(&str, &str)],
    ) -> Result<(), PluginError> {
        let owned;
        let templates = if templates.is_empty() {
            owned = [default.to_owned()];
            &owned[..]
        } else {
            templates
        };
        let queries = statements::queries(templates);
        if queries.is_empty() {
            return Err(PluginError::new("empty statements"));
        }
        let sql = queries
            .iter()
            .map(|q| zeroize::Zeroizing::new(statements::substitute(q, values)))
            .collect();
        let redact = values
            .iter()
            .filter(|(key, value)| *key == "password" && !value.is_empty())
            .map(|(_, value)| zeroize::Zeroizing::new((*value).to_owned()))
            .collect();
        self.submit(Change::Statements { sql, redact }).await
    }

    /// Queue `change` and wait for its outcome. Whoever holds the batch lock runs every
    /// change queued so far; a caller that gets the lock and finds its change done
    /// returns at once. The batch runs in a task of its own, so a caller that goes away
    /// (its client disconnected) never leaves the others' outcomes unknown.
    async fn submit(&self, change: Change) -> Result<(), PluginError> {
        let (reply, mut outcome) = tokio::sync::oneshot::channel();
        self.queue.lock().push(Pending { change, reply });
        loop {
            let guard = self.serial.clone().lock_owned().await;
            match outcome.try_recv() {
                Ok(result) => return result,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    return Err(PluginError::new(
                        "the change was interrupted before its outcome was known",
                    ));
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            let batch = std::mem::take(&mut *self.queue.lock());
            let pool = self.pool.clone();
            let task = tokio::spawn(async move {
                apply(&pool, batch).await;
                drop(guard);
            });
            let _ = task.await;
        }
    }

    /// OpenBao's default revocation: revoke what the user was granted, then drop it.
    async fn default_revoke(&self, username: &str) -> Result<(), PluginError> {
        self.submit(Change::DefaultRevoke {
            username: username.to_owned(),
        })
        .await
    }
}

/// What OpenBao's default revocation runs for each of `usernames` that exists: its
/// `REVOKE`s (each may fail on its own in the fallback), by user. One query for all of
/// them: the schemas where a user holds table or column privileges come straight from the
/// catalogs' ACLs, exploded once for the whole batch (OpenBao asks
/// `information_schema.role_table_grants` and `role_column_grants` per user, which
/// explodes every ACL of the database each time; with thousands of users granted on one
/// table that query, not the `REVOKE`s, is what a revocation costs).
async fn default_revokes(
    client: &impl deadpool_postgres::GenericClient,
    usernames: &[&str],
) -> Result<std::collections::HashMap<String, Vec<String>>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH users AS (SELECT r.rolname::text AS name, r.oid FROM pg_roles r \
               WHERE r.rolname = ANY($1)), \
             tables AS MATERIALIZED (SELECT a.grantee, c.relnamespace \
               FROM pg_class c, aclexplode(c.relacl) a \
               WHERE c.relacl IS NOT NULL AND a.grantee IN (SELECT oid FROM users)), \
             columns AS MATERIALIZED (SELECT a.grantee, c.relnamespace \
               FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid, aclexplode(t.attacl) a \
               WHERE t.attacl IS NOT NULL AND a.grantee IN (SELECT oid FROM users)) \
             SELECT u.name, current_database()::text, \
               ARRAY(SELECT DISTINCT n.nspname::text FROM \
                 (SELECT * FROM tables UNION ALL SELECT * FROM columns) g \
                 JOIN pg_namespace n ON n.oid = g.relnamespace WHERE g.grantee = u.oid) \
             FROM users u",
            &[&usernames],
        )
        .await?;
    let mut out = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let username: String = row.try_get(0)?;
        let database: String = row.try_get(1)?;
        let schemas: Vec<String> = row.try_get(2)?;
        let user = quote_ident(&username);
        let mut revokes = Vec::new();
        for schema in schemas.iter().filter(|s| *s != "public") {
            let schema = quote_ident(schema);
            revokes.push(format!(
                "REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA {schema} FROM {user}"
            ));
            revokes.push(format!("REVOKE USAGE ON SCHEMA {schema} FROM {user}"));
        }
        revokes.push(format!(
            "REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM {user}"
        ));
        revokes.push(format!(
            "REVOKE ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public FROM {user}"
        ));
        revokes.push(format!("REVOKE USAGE ON SCHEMA public FROM {user}"));
        revokes.push(format!(
            "REVOKE CONNECT ON DATABASE {} FROM {user}",
            quote_ident(&database)
        ));
        out.insert(username, revokes);
    }
    Ok(out)
}

/// Run `batch` in one transaction, each change under a savepoint, and tell each waiter
/// its outcome. A default revocation that fails inside the transaction is done again
/// OpenBao's way afterwards: statement by statement, carrying on after a failure, so
/// that as much as possible is revoked and the error reported.
async fn apply(pool: &Pool, batch: Vec<Pending>) {
    if batch.is_empty() {
        return;
    }
    let mut client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let why = pool_reason(&e);
            for p in batch {
                let _ = p.reply.send(Err(PluginError::new(why.clone())));
            }
            return;
        }
    };
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => {
            let why = reason(&e);
            for p in batch {
                let _ = p.reply.send(Err(PluginError::new(why.clone())));
            }
            return;
        }
    };
    // Per change: Ok (pending the commit), its error, or "redo outside" (a revocation).
    enum Step {
        Done,
        Failed(PluginError),
        Redo(String),
    }
    let mut steps = Vec::with_capacity(batch.len());
    let mut broken: Option<String> = None;
    // Every default revocation's statements, from one lookup for the whole batch; if it
    // fails, each is done again on its own after the commit.
    let revoking: Vec<&str> = batch
        .iter()
        .filter_map(|p| match &p.change {
            Change::DefaultRevoke { username } => Some(username.as_str()),
            Change::Statements { .. } => None,
        })
        .collect();
    let mut lookup = None;
    if !revoking.is_empty() {
        if let Err(e) = tx.batch_execute("SAVEPOINT keyhaven_lookup").await {
            broken = Some(reason(&e));
        } else {
            let found = default_revokes(&tx, &revoking).await;
            let undo = if found.is_ok() {
                "RELEASE SAVEPOINT keyhaven_lookup"
            } else {
                "ROLLBACK TO SAVEPOINT keyhaven_lookup; RELEASE SAVEPOINT keyhaven_lookup"
            };
            if let Err(e) = tx.batch_execute(undo).await {
                broken = Some(reason(&e));
            }
            lookup = found.ok();
        }
    }
    for p in &batch {
        if let Some(why) = &broken {
            steps.push(Step::Failed(PluginError::new(why.clone())));
            continue;
        }
        if let Err(e) = tx.batch_execute("SAVEPOINT keyhaven_change").await {
            let why = reason(&e);
            broken = Some(why.clone());
            steps.push(Step::Failed(PluginError::new(why)));
            continue;
        }
        let result: Result<(), Step> = match &p.change {
            Change::Statements { sql, redact } => {
                let mut out = Ok(());
                for query in sql {
                    if let Err(e) = tx.batch_execute(query).await {
                        // PostgreSQL quotes the statement in some errors (`syntax error
                        // at or near "…"`): the password (or its verifier) never goes
                        // back out in one.
                        let mut text = reason(&e);
                        for value in redact {
                            text = text.replace(value.as_str(), "<redacted>");
                        }
                        out = Err(Step::Failed(PluginError::new(text)));
                        break;
                    }
                }
                out
            }
            Change::DefaultRevoke { username } => match lookup.as_ref().map(|l| l.get(username)) {
                // No such user: nothing to revoke.
                Some(None) => Ok(()),
                Some(Some(revokes)) => {
                    let sql = format!(
                        "{}; DROP ROLE IF EXISTS {}",
                        revokes.join("; "),
                        quote_ident(username)
                    );
                    tx.batch_execute(&sql)
                        .await
                        .map_err(|_| Step::Redo(username.clone()))
                }
                None => Err(Step::Redo(username.clone())),
            },
        };
        let undo = match result {
            Ok(()) => {
                steps.push(Step::Done);
                "RELEASE SAVEPOINT keyhaven_change"
            }
            Err(step) => {
                steps.push(step);
                "ROLLBACK TO SAVEPOINT keyhaven_change; RELEASE SAVEPOINT keyhaven_change"
            }
        };
        if let Err(e) = tx.batch_execute(undo).await {
            broken = Some(reason(&e));
        }
    }
    let committed = match &broken {
        Some(why) => {
            drop(tx);
            Err(why.clone())
        }
        None => tx.commit().await.map_err(|e| reason(&e)),
    };
    for (p, step) in batch.into_iter().zip(steps) {
        let outcome = match (step, &committed) {
            (Step::Failed(e), _) => Err(e),
            (Step::Done, Ok(())) => Ok(()),
            (Step::Done | Step::Redo(_), Err(why)) => Err(PluginError::new(why.clone())),
            (Step::Redo(username), Ok(())) => redo_revoke(&client, &username).await,
        };
        let _ = p.reply.send(outcome);
    }
}

/// OpenBao's default revocation of `username`, outside a transaction.
async fn redo_revoke(
    client: &deadpool_postgres::Object,
    username: &str,
) -> Result<(), PluginError> {
    let revokes = match default_revokes(client, &[username]).await {
        Ok(mut found) => match found.remove(username) {
            None => return Ok(()),
            Some(revokes) => revokes,
        },
        Err(e) => return Err(PluginError::new(reason(&e))),
    };
    default_revoke_each(client, &quote_ident(username), &revokes).await
}

/// OpenBao's default revocation, statement by statement outside a transaction.
async fn default_revoke_each(
    client: &deadpool_postgres::Object,
    user: &str,
    revokes: &[String],
) -> Result<(), PluginError> {
    let mut failures = Vec::new();
    for sql in revokes {
        if let Err(e) = client.batch_execute(sql).await {
            failures.push(reason(&e));
        }
    }
    if let Some(first) = failures.first() {
        return Err(PluginError::new(format!(
            "{} revoke statement(s) failed; first: {first}",
            failures.len()
        )));
    }
    client
        .batch_execute(&format!("DROP ROLE IF EXISTS {user}"))
        .await
        .map_err(|e| PluginError::new(reason(&e)))
}

#[async_trait]
impl Connection for PgConnection {
    async fn verify(&self) -> Result<(), PluginError> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| PluginError::new(reason(&e)))
    }

    async fn create_user(
        &self,
        statements: &[String],
        username: &str,
        password: &SecretText,
        expiration: &str,
    ) -> Result<(), PluginError> {
        if statements.is_empty() {
            return Err(PluginError::new("empty creation statements"));
        }
        let password = self.password_value(password);
        self.run(
            statements,
            "",
            &[
                ("name", username),
                ("username", username),
                ("password", password.expose()),
                ("expiration", expiration),
            ],
        )
        .await
    }

    async fn revoke_user(&self, statements: &[String], username: &str) -> Result<(), PluginError> {
        if statements.is_empty() {
            return self.default_revoke(username).await;
        }
        self.run(
            statements,
            "",
            &[("name", username), ("username", username)],
        )
        .await
    }

    async fn renew_user(
        &self,
        statements: &[String],
        username: &str,
        expiration: &str,
    ) -> Result<(), PluginError> {
        self.run(
            statements,
            DEFAULT_RENEW,
            &[
                ("name", username),
                ("username", username),
                ("expiration", expiration),
            ],
        )
        .await
    }

    async fn set_password(
        &self,
        statements: &[String],
        username: &str,
        password: &SecretText,
    ) -> Result<(), PluginError> {
        let password = self.password_value(password);
        self.run(
            statements,
            DEFAULT_ROTATE,
            &[
                ("name", username),
                ("username", username),
                ("password", password.expose()),
            ],
        )
        .await
    }

    async fn close(&self) {
        self.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_and_weak_modes_refused() {
        let (c, tls) =
            split_tls("postgresql://u:p@h:5432/db?sslmode=disable&application_name=x").unwrap();
        assert_eq!(c, "postgresql://u:p@h:5432/db?application_name=x");
        assert!(matches!(tls, Tls::Disable));
        let (c, tls) =
            split_tls("host=h user=u sslmode=verify-full sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!(c, "host=h user=u");
        assert!(matches!(tls, Tls::VerifyFull(p) if p == std::path::Path::new("/etc/ca.pem")));
        for weak in ["require", "prefer", "verify-ca"] {
            let err = split_tls(&format!("postgres://h/db?sslmode={weak}"))
                .err()
                .unwrap();
            assert!(err.message.contains(weak), "{err}");
        }
        assert!(split_tls("postgres://h/db?sslmode=verify-full").is_err());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
