//! What the `database/` engine asks of a database plugin, and what it hands it.
//!
//! The engine holds no SQL driver: the server provides one [`DatabasePlugins`] (through
//! [`crate::CoreOptions::database`]) that opens a [`Connection`] for a stored
//! configuration. Statements reach the plugin as the templates the operator wrote
//! (`{{name}}`, `{{username}}`, `{{password}}`, `{{expiration}}`), already split as
//! [`super::statements`] says; the plugin substitutes the values, so it can put a
//! password verifier in place of `{{password}}` when the configuration asks for it.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use zeroize::Zeroizing;

/// A secret string (a password, a connection URL holding one): zeroized on drop, never
/// printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    /// Wrap a secret.
    pub fn new(text: String) -> Self {
        SecretText(Zeroizing::new(text))
    }

    /// The secret itself, to hand to the driver.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl serde::Serialize for SecretText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Only records behind the barrier are serialized with their secrets.
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretText::new)
    }
}

/// How a password reaches the database in `{{password}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordAuthentication {
    /// As it is (PostgreSQL then hashes it as its `password_encryption` says).
    Password,
    /// As a SCRAM-SHA-256 verifier computed here: the password itself never reaches the
    /// database or its logs.
    ScramSha256,
}

/// What a plugin needs to open connections to one configured database.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The plugin (`postgresql-database-plugin`).
    pub plugin_name: String,
    /// The connection URL with `{{username}}`/`{{password}}` filled in.
    pub url: SecretText,
    /// The most connections open at once (at least 1).
    pub max_open_connections: usize,
    /// Seconds a connection may live (0: forever).
    pub max_connection_lifetime: u64,
    /// How passwords are handed to the database.
    pub password_authentication: PasswordAuthentication,
}

/// Why a plugin call failed: the driver's reason, without secrets (no password, no
/// connection URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    /// What failed, as the driver said it.
    pub message: String,
}

impl PluginError {
    /// A failure with this reason.
    pub fn new(message: impl Into<String>) -> Self {
        PluginError {
            message: message.into(),
        }
    }
}

/// Opens connections for stored configurations (the server's database drivers).
#[async_trait]
pub trait DatabasePlugins: Send + Sync + 'static {
    /// A connection (pool) for `config`; connecting may be deferred to first use, which
    /// [`Connection::verify`] forces.
    async fn open(&self, config: &ConnectionConfig) -> Result<Arc<dyn Connection>, PluginError>;
}

/// One configured database, as the engine uses it.
///
/// Every method takes statements as templates; an empty list means the plugin's default
/// for the operation.
#[async_trait]
pub trait Connection: Send + Sync + 'static {
    /// Connect now and check the database answers.
    async fn verify(&self) -> Result<(), PluginError>;

    /// Create a user with `password`, valid until `expiration`
    /// (`2006-01-02 15:04:05-0700`). Runs in one transaction: on failure nothing stays.
    async fn create_user(
        &self,
        statements: &[String],
        username: &str,
        password: &SecretText,
        expiration: &str,
    ) -> Result<(), PluginError>;

    /// Remove a user; a user that does not exist is not an error.
    async fn revoke_user(&self, statements: &[String], username: &str) -> Result<(), PluginError>;

    /// Extend a user's validity to `expiration`.
    async fn renew_user(
        &self,
        statements: &[String],
        username: &str,
        expiration: &str,
    ) -> Result<(), PluginError>;

    /// Set an existing user's password.
    async fn set_password(
        &self,
        statements: &[String],
        username: &str,
        password: &SecretText,
    ) -> Result<(), PluginError>;

    /// Close every connection (on reset, config change or delete).
    async fn close(&self);
}
