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
            serial: tokio::sync::Mutex::new(()),
        }))
    }
}

struct PgConnection {
    pool: Pool,
    scram: bool,
    /// Held by every statement batch that changes users or grants. PostgreSQL refuses
    /// the second of two concurrent `GRANT`s or `REVOKE`s on one object ("tuple
    /// concurrently updated": both rewrite its catalog row), so, as OpenBao's plugin
    /// does, one configuration changes one user at a time; the pool still serves
    /// `verify` beside it.
    serial: tokio::sync::Mutex<()>,
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

    /// Run the queries of `templates` (or of `default`) with `values`, in one transaction.
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
        let _serial = self.serial.lock().await;
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| PluginError::new(reason(&e)))?;
        // PostgreSQL quotes the statement in some errors (`syntax error at or near "…"`):
        // the password (or its verifier) never goes back out in one.
        let scrub = |e: &tokio_postgres::Error| {
            let mut text = reason(e);
            for (key, value) in values {
                if *key == "password" && !value.is_empty() {
                    text = text.replace(value, "<redacted>");
                }
            }
            PluginError::new(text)
        };
        for query in &queries {
            let sql = zeroize::Zeroizing::new(statements::substitute(query, values));
            tx.batch_execute(&sql).await.map_err(|e| scrub(&e))?;
        }
        tx.commit().await.map_err(|e| PluginError::new(reason(&e)))
    }

    /// OpenBao's default revocation: revoke what the user was granted, then drop it.
    async fn default_revoke(&self, username: &str) -> Result<(), PluginError> {
        let _serial = self.serial.lock().await;
        let client = self.client().await?;
        // One round trip for what the statements depend on.
        let row = client
            .query_one(
                "SELECT exists(SELECT 1 FROM pg_roles WHERE rolname = $1), \
                 current_database()::text, \
                 ARRAY(SELECT DISTINCT table_schema::text FROM \
                 information_schema.role_column_grants WHERE grantee = $1 UNION SELECT \
                 DISTINCT table_schema::text FROM information_schema.role_table_grants \
                 WHERE grantee = $1)",
                &[&username],
            )
            .await
            .map_err(|e| PluginError::new(reason(&e)))?;
        let exists: bool = row.try_get(0).map_err(|e| PluginError::new(reason(&e)))?;
        if !exists {
            return Ok(());
        }
        let database: String = row.try_get(1).map_err(|e| PluginError::new(reason(&e)))?;
        let schemas: Vec<String> = row.try_get(2).map_err(|e| PluginError::new(reason(&e)))?;
        let user = quote_ident(username);
        let mut revokes = Vec::new();
        for schema in schemas {
            let schema = quote_ident(&schema);
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
        // First all of it in one transaction (one commit, so one flush of the
        // database's log rather than one per statement). If anything fails, it is rolled
        // back and done OpenBao's way below: each statement on its own, carrying on
        // after a failure, so that as much as possible is revoked and the error reported.
        {
            let mut client = client;
            let batch = format!("{}; DROP ROLE IF EXISTS {user}", revokes.join("; "));
            let done = match client.transaction().await {
                Ok(tx) => match tx.batch_execute(&batch).await {
                    Ok(()) => tx.commit().await.is_ok(),
                    Err(_) => false,
                },
                Err(_) => false,
            };
            if done {
                return Ok(());
            }
            self.default_revoke_each(&client, &user, &revokes).await
        }
    }

    /// OpenBao's default revocation, statement by statement outside a transaction.
    async fn default_revoke_each(
        &self,
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
