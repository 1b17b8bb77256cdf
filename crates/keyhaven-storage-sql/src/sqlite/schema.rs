//! Versioned schema of the SQLite store and the migrations that reach it.

use rusqlite::{Connection, TransactionBehavior};

use keyhaven_storage::StorageError;

use super::sql_error;

/// `PRAGMA application_id` of a keyhaven database ("khv1"), so that a foreign SQLite
/// file is recognised instead of being migrated.
pub(crate) const APPLICATION_ID: i32 = 0x6b68_7631;

/// Migration `i` takes the schema from version `i` to `i + 1` (`PRAGMA user_version`).
/// Append only: never edit a released migration.
const MIGRATIONS: &[&str] = &[
    // 1: the key-value table. Keys are UTF-8 stored as BLOB so that the primary key
    // orders them by bytes (memcmp), which is the order `list_page` promises. WITHOUT
    // ROWID makes a point read one B-tree search; STRICT refuses values of other types.
    "CREATE TABLE kv (
        key   BLOB NOT NULL PRIMARY KEY,
        value BLOB NOT NULL
    ) STRICT, WITHOUT ROWID;",
];

/// The schema version this build creates and understands.
pub(crate) const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;

/// Bring the database to [`SCHEMA_VERSION`] in one immediate transaction, or refuse it.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error)?;
    let application_id: i32 = tx
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(sql_error)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql_error)?;
    let objects: i64 = tx
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(sql_error)?;

    if application_id == 0 && version == 0 && objects == 0 {
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(sql_error)?;
    } else if application_id != APPLICATION_ID {
        return Err(StorageError::Corrupt {
            detail: format!(
                "not a keyhaven database (application_id {application_id:#x}, \
                 user_version {version}, {objects} schema objects)"
            ),
        });
    }
    let version = u64::try_from(version).map_err(|_| StorageError::Corrupt {
        detail: format!("negative schema version {version}"),
    })?;
    if version > SCHEMA_VERSION {
        return Err(StorageError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let pending = usize::try_from(version).unwrap_or(usize::MAX);
    for (from, migration) in MIGRATIONS.iter().enumerate().skip(pending) {
        tx.execute_batch(migration).map_err(sql_error)?;
        tracing::info!(from, to = from + 1, "applied storage schema migration");
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(sql_error)?;
    }
    tx.commit().map_err(sql_error)
}
