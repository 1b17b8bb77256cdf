//! High availability: how the active tells standbys what changed, and how a standby
//! knows it has heard of every change committed before a given moment.
//!
//! - A write transaction of the active that changes something standbys cache calls
//!   `pg_notify` on the schema's channel ([`PgStore::announce`] says which changes).
//!   PostgreSQL delivers a notification only if its transaction commits, and delivers
//!   the notifications of different transactions in the order they committed.
//! - A standby's [`Listener`] holds one connection outside the pool that `LISTEN`s on
//!   that channel, and on a channel of its own. [`Listener::ping`] sends a notification
//!   on its own channel; when it comes back ([`Notice::Ping`]), every notification
//!   committed before the ping was sent has been delivered before it: PostgreSQL keeps
//!   one queue of notifications for all channels, in commit order, and a listener reads
//!   it in order. (Other standbys never see this standby's pings.) So a standby that waits for
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
    /// `NOTIFY "<own channel>", '`: a ping is this and its number.
    ping_prefix: String,
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
        let own = format!(
            "{}_{:016x}",
            self.channel,
            RandomState::new().build_hasher().finish()
        );
        let (sender, notices) = mpsc::unbounded_channel();
        let client = match &self.tls {
            PgTls::Disable => {
                let (client, conn) = self.pg_config.connect(NoTls).await.map_err(fail)?;
                tokio::spawn(drive(conn, sender, own.clone()));
                client
            }
            PgTls::VerifyFull(config) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**config).clone());
                let (client, conn) = self.pg_config.connect(tls).await.map_err(fail)?;
                tokio::spawn(drive(conn, sender, own.clone()));
                client
            }
        };
        // A ping is worth nothing after a crash: it need not wait for the disk.
        client
            .batch_execute(&format!(
                "SET synchronous_commit = off; LISTEN \"{}\"; LISTEN \"{own}\"",
                self.channel
            ))
            .await
            .map_err(fail)?;
        Ok(Listener {
            client,
            channel: self.channel.clone(),
            ping_prefix: format!("NOTIFY \"{own}\", '"),
            notices,
        })
    }
}

impl Listener {
    /// Send ping `n`; it comes back as [`Notice::Ping`] after every notification
    /// committed before it.
    pub async fn ping(&self, n: u64) -> Result<(), StorageError> {
        // One round trip (the simple protocol); the payload is a number.
        self.client
            .batch_execute(&format!("{}{n}'", self.ping_prefix))
            .await
            .map_err(fail)
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
    own: String,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                let notice = if n.channel() == own {
                    n.payload().parse().ok().map(Notice::Ping)
                } else {
                    parse_notice(n.payload())
                };
                if let Some(notice) = notice
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

/// An announcement's payload as [`Notice`]: `k` and keys, one per line, or `*`;
/// `None` for anything else. Payloads come from whoever can `NOTIFY` on the database:
/// never trusted beyond their shape.
pub fn parse_notice(payload: &str) -> Option<Notice> {
    if payload == "*" {
        return Some(Notice::Everything);
    }
    let keys = payload.strip_prefix('k')?;
    Some(Notice::Changed(
        keys.split('\n').map(str::to_owned).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse_notice("kcore/policy/a\ncore/mounts"),
            Some(Notice::Changed(vec![
                "core/policy/a".to_owned(),
                "core/mounts".to_owned()
            ]))
        );
        assert_eq!(parse_notice("*"), Some(Notice::Everything));
        // What this version does not know.
        assert_eq!(parse_notice("#1"), None);
        assert_eq!(parse_notice(""), None);
    }
}
