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
//! - A standby answers requests only while it holds a *read lease* (`pg_readers`). After
//!   each write it announced, the active sends a *barrier* on the shared channel
//!   ([`Notice::Barrier`]); a standby acknowledges it ([`Listener::ack`]) once it has
//!   applied everything before it, and the active's call returns only when every
//!   standby holding a lease has acknowledged, or has had its lease revoked and run out.

use std::future::poll_fn;

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
    /// The active replica whose reader id is `origin` asks every standby holding a read
    /// lease to acknowledge barrier `n` once it has applied the changes before it.
    Barrier {
        /// The active's reader id (16 hex digits): its acknowledgements' channel.
        origin: String,
        /// The barrier's number.
        n: u64,
    },
}

/// A standby's connection listening for the active's announcements
/// ([`PgStore::listen`]). Dropping it closes the connection.
pub struct Listener {
    client: tokio_postgres::Client,
    channel: String,
    /// This replica's reader id, sent with each acknowledgement.
    reader: String,
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
        let own = format!("{}_{}", self.channel, crate::pg_readers::random_id());
        let (sender, notices) = mpsc::unbounded_channel();
        let ping_channel = own.clone();
        let client = self
            .connect_outside_pool(move |channel, payload| {
                let notice = if channel == ping_channel {
                    payload.parse().ok().map(Notice::Ping)
                } else {
                    parse_notice(payload)
                };
                notice.is_none_or(|notice| sender.send(notice).is_ok())
            })
            .await?;
        // A ping or an acknowledgement is worth nothing after a crash: neither need wait
        // for the disk.
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
            reader: self.readers.id.clone(),
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

    /// Acknowledge barrier `n` of the active whose reader id is `origin`: every change
    /// announced before it has been applied.
    pub async fn ack(&self, origin: &str, n: u64) -> Result<(), StorageError> {
        // It names a channel: nothing but a reader id's shape goes into the statement.
        if !crate::pg_readers::is_reader_id(origin) {
            return Err(StorageError::unavailable(
                "a barrier's origin is not a reader id",
            ));
        }
        self.client
            .batch_execute(&format!(
                "NOTIFY \"{}\", '{} {n}'",
                crate::pg_readers::ack_channel(&self.channel, origin),
                self.reader
            ))
            .await
            .map_err(fail)
    }

    /// The next notice; `None` once the connection ended (notices may have been missed:
    /// drop everything cached and listen again).
    pub async fn next(&mut self) -> Option<Notice> {
        self.notices.recv().await
    }
}

impl PgStore {
    /// A connection outside the pool, with every notification it receives passed to
    /// `on_notification(channel, payload)` in the order they arrive until that returns
    /// false or the connection ends.
    pub(crate) async fn connect_outside_pool(
        &self,
        on_notification: impl FnMut(&str, &str) -> bool + Send + 'static,
    ) -> Result<tokio_postgres::Client, StorageError> {
        Ok(match &self.tls {
            PgTls::Disable => {
                let (client, conn) = self.pg_config.connect(NoTls).await.map_err(fail)?;
                tokio::spawn(drive(conn, on_notification));
                client
            }
            PgTls::VerifyFull(config) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**config).clone());
                let (client, conn) = self.pg_config.connect(tls).await.map_err(fail)?;
                tokio::spawn(drive(conn, on_notification));
                client
            }
        })
    }
}

/// Run the connection, passing on its notifications in the order they arrive.
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    mut on_notification: impl FnMut(&str, &str) -> bool,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if !on_notification(n.channel(), n.payload()) {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(target: "keyhaven::ha", error = %e, "a connection listening for notifications ended");
                return;
            }
            None => return,
        }
    }
}

/// An announcement's payload as [`Notice`]: `k` and keys, one per line, `*`, or `b`, the
/// active's reader id, a space and a barrier number; `None` for anything else. Payloads come from whoever can `NOTIFY` on the database:
/// never trusted beyond their shape.
pub fn parse_notice(payload: &str) -> Option<Notice> {
    if payload == "*" {
        return Some(Notice::Everything);
    }
    if let Some(barrier) = payload.strip_prefix('b') {
        // The same shape as an acknowledgement: the active's reader id and a number.
        let (origin, n) = crate::pg_readers::parse_ack(barrier)?;
        return Some(Notice::Barrier {
            origin: origin.to_owned(),
            n,
        });
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
        assert_eq!(
            parse_notice("b0123456789abcdef 42"),
            Some(Notice::Barrier {
                origin: "0123456789abcdef".to_owned(),
                n: 42
            })
        );
        // A barrier's origin names a channel: nothing but its own shape is accepted.
        for bad in [
            "b0123456789abcdef",
            "b0123456789abcdef ",
            "b0123456789abcdef +4",
            "b0123456789abcdef 99999999999999999999999",
            "b0123456789ABCDEF 4",
            "b0123456789abcde\" 4",
            "b\" 4",
        ] {
            assert_eq!(parse_notice(bad), None, "{bad}");
        }
        // What this version does not know.
        assert_eq!(parse_notice("#1"), None);
        assert_eq!(parse_notice(""), None);
    }
}
