//! High availability: how the active tells standbys what changed, and how a standby
//! knows it has heard of every change committed before a given moment.
//!
//! - A write transaction of the active that changes something standbys cache calls
//!   `pg_notify` on the schema's channel ([`PgStore::announce`] says which changes).
//!   PostgreSQL delivers a notification only if its transaction commits, and delivers
//!   the notifications of different transactions in the order they committed.
//! - A standby's [`Listener`] holds one connection outside the pool that `LISTEN`s on
//!   that channel. [`Listener::ping`] sends a notification of its own on the same
//!   channel; when it comes back ([`Notice::Ping`]), every notification committed
//!   before the ping was sent has been delivered before it. So a standby that waits for
//!   a ping sent after a request arrived, and applies each notice before reading the
//!   next, answers that request with every change acknowledged before it arrived.

use std::collections::hash_map::RandomState;
use std::future::poll_fn;
use std::hash::{BuildHasher, Hasher};

use keyhaven_storage::StorageError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::postgres::{PgStore, PgTls, fail};

/// The longest announcement sent as keys; a longer one says "everything" instead
/// (PostgreSQL's limit is 8000 bytes).
pub(crate) const MAX_PAYLOAD: usize = 7_900;

/// What a standby hears on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// The active committed changes to these keys.
    Changed(Vec<String>),
    /// The active committed changes too many to list: drop everything cached.
    Everything,
    /// This listener's own ping `n` came back: every change committed before it was
    /// sent has been delivered.
    Ping(u64),
}

/// A standby's connection listening for the active's announcements
/// ([`PgStore::listen`]). Dropping it closes the connection.
pub struct Listener {
    client: tokio_postgres::Client,
    channel: String,
    token: u64,
    notices: mpsc::UnboundedReceiver<Notice>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Listen for the active's announcements on a connection of its own (see the module
    /// documentation). The connection is named as the pool's are.
    pub async fn listen(&self) -> Result<Listener, StorageError> {
        let token = RandomState::new().build_hasher().finish();
        let (sender, notices) = mpsc::unbounded_channel();
        let client = match &self.tls {
            PgTls::Disable => {
                let (client, conn) = self.pg_config.connect(NoTls).await.map_err(fail)?;
                tokio::spawn(drive(conn, sender, token));
                client
            }
            PgTls::VerifyFull(config) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**config).clone());
                let (client, conn) = self.pg_config.connect(tls).await.map_err(fail)?;
                tokio::spawn(drive(conn, sender, token));
                client
            }
        };
        // A ping is worth nothing after a crash: it need not wait for the disk.
        client
            .batch_execute(&format!(
                "SET synchronous_commit = off; LISTEN \"{}\"",
                self.channel
            ))
            .await
            .map_err(fail)?;
        Ok(Listener {
            client,
            channel: self.channel.clone(),
            token,
            notices,
        })
    }
}

impl Listener {
    /// Send ping `n`; it comes back as [`Notice::Ping`] after every notification
    /// committed before it.
    pub async fn ping(&self, n: u64) -> Result<(), StorageError> {
        let payload = format!("#{:016x}:{n}", self.token);
        self.client
            .execute("SELECT pg_notify($1, $2)", &[&self.channel, &payload])
            .await
            .map_err(fail)?;
        Ok(())
    }

    /// The next notice; `None` once the connection ended (notices may have been missed:
    /// drop everything cached and listen again).
    pub async fn next(&mut self) -> Option<Notice> {
        self.notices.recv().await
    }
}

/// Run the connection, passing on its notifications in the order they arrive.
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    sender: mpsc::UnboundedSender<Notice>,
    token: u64,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(notice) = parse_notice(n.payload(), token)
                    && sender.send(notice).is_err()
                {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(target: "keyhaven::ha", error = %e, "the connection listening for changes ended");
                return;
            }
            None => return,
        }
    }
}

/// A notification payload from the channel as [`Notice`]; `None` for another
/// listener's ping (`token` is this listener's) or anything unknown. Payloads come from
/// whoever can `NOTIFY` on the database: never trusted beyond their shape.
pub fn parse_notice(payload: &str, token: u64) -> Option<Notice> {
    if payload == "*" {
        return Some(Notice::Everything);
    }
    if let Some(keys) = payload.strip_prefix('k') {
        return Some(Notice::Changed(
            keys.split('\n').map(str::to_owned).collect(),
        ));
    }
    let (from, n) = payload.strip_prefix('#')?.split_once(':')?;
    if from != format!("{token:016x}") {
        return None;
    }
    n.parse().ok().map(Notice::Ping)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse_notice("kcore/policy/a\ncore/mounts", 7),
            Some(Notice::Changed(vec![
                "core/policy/a".to_owned(),
                "core/mounts".to_owned()
            ]))
        );
        assert_eq!(parse_notice("*", 7), Some(Notice::Everything));
        assert_eq!(
            parse_notice("#0000000000000007:42", 7),
            Some(Notice::Ping(42))
        );
        // Another standby's ping, and what this version does not know.
        assert_eq!(parse_notice("#0000000000000008:42", 7), None);
        assert_eq!(parse_notice("#zz:1", 7), None);
        assert_eq!(parse_notice("?", 7), None);
    }
}
