//! SQLite, the embedded store: the dialect and the connection.
//!
//! WAL with `synchronous = FULL`, so a commit is on disk before it is acknowledged. Writers take
//! the database lock up front (`BEGIN IMMEDIATE`), so transactions never deadlock and the
//! row-lock clauses of the shared SQL are empty here. Lists are bound as one JSON array and
//! unpacked with `json_each`; UUIDs travel in it as 32 hex digits.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use credex_ledger::{Clock, PendingRecord, Timestamp, TransferError, TransferId, TransferRecord};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use crate::market::transfer_ids_json;
use crate::sql::{has_code, shared_store, AccountCache};
use crate::usage::{
    RollupRow, UsageRecord, UsageTotal, ROLLUP_COLUMNS, ROLLUP_ON_CONFLICT, USAGE_COLUMNS,
};
use crate::StoreError;

/// The ledger in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    cache: Arc<AccountCache>,
}

impl SqliteStore {
    /// Opens (creating when missing) the database file of a `sqlite:` URL and runs migrations.
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Self {
            pool,
            clock,
            cache: Arc::default(),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

shared_store!(SqliteStore, sqlx::Sqlite, dialect, Backend::Sqlite);
crate::identity::shared_identity!(SqliteStore, sqlx::Sqlite, dialect);
crate::idempotency::shared_idempotency!(SqliteStore);
crate::pricing::shared_pricing!(SqliteStore, sqlx::Sqlite, dialect);
crate::cycles::shared_cycles!(SqliteStore, sqlx::Sqlite, dialect);
crate::market::shared_market!(SqliteStore, sqlx::Sqlite, dialect);
crate::review::shared_review!(SqliteStore, sqlx::Sqlite, dialect);
crate::usage::shared_usage!(SqliteStore, sqlx::Sqlite, dialect);
crate::delivery::shared_delivery!(SqliteStore, sqlx::Sqlite, dialect);
crate::statements::shared_statements!(SqliteStore, sqlx::Sqlite, dialect);

fn hex(uuid: Uuid) -> String {
    uuid.simple().to_string()
}

/// Runs a bulk statement over `rows`, bound as one JSON array (`$1`); nothing for no rows.
async fn bulk(
    conn: &mut SqliteConnection,
    sql: &'static str,
    rows: Vec<serde_json::Value>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(sql)
        .bind(serde_json::Value::Array(rows).to_string())
        .execute(conn)
        .await?;
    Ok(())
}

mod dialect {
    use super::*;

    /// Whether large batches write their journal rows before taking balance locks.
    pub const SPECULATE: bool = false;
    /// `usage_events.user_id` and `api_key_id` (16-byte blobs) as hyphenated lowercase text,
    /// and the UTC day of `occurred_at` (µs since the epoch) as `YYYY-MM-DD`.
    pub const UUID_TEXT_USER: &str = "CASE WHEN user_id IS NULL THEN NULL ELSE \
         lower(substr(hex(user_id), 1, 8) || '-' || substr(hex(user_id), 9, 4) || '-' || \
         substr(hex(user_id), 13, 4) || '-' || substr(hex(user_id), 17, 4) || '-' || \
         substr(hex(user_id), 21)) END";
    pub const UUID_TEXT_API_KEY: &str = "CASE WHEN api_key_id IS NULL THEN NULL ELSE \
         lower(substr(hex(api_key_id), 1, 8) || '-' || substr(hex(api_key_id), 9, 4) || '-' || \
         substr(hex(api_key_id), 13, 4) || '-' || substr(hex(api_key_id), 17, 4) || '-' || \
         substr(hex(api_key_id), 21)) END";
    pub const UTC_DAY_OF_OCCURRED_AT: &str =
        "strftime('%Y-%m-%d', occurred_at / 1000000, 'unixepoch')";
    /// An org's name contains the (lower-case) text bound to `#`: SQLite's `lower` folds ASCII
    /// letters only.
    pub const ORG_NAME_CONTAINS: &str = " AND instr(lower(name), #) > 0";
    pub const FOR_NO_KEY_UPDATE: &str = "";
    pub const FOR_UPDATE: &str = "";
    pub const FOR_UPDATE_SKIP_LOCKED: &str = "";

    pub async fn begin_write(
        pool: &SqlitePool,
    ) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        begin_on_a_clean_connection(pool, "BEGIN IMMEDIATE").await
    }

    /// In WAL mode a read transaction sees one snapshot from its first read on.
    pub async fn begin_snapshot(
        pool: &SqlitePool,
    ) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        begin_on_a_clean_connection(pool, "BEGIN DEFERRED").await
    }

    /// Begins a transaction on a pooled connection that sqlx counts as outside any
    /// transaction. A request cut off while its transaction was open (a client that hangs up
    /// drops the handler's future) can leave a pooled connection whose count says otherwise,
    /// and on such a connection every `BEGIN IMMEDIATE` fails; it is closed instead of
    /// reused (closing it ends whatever it still held).
    async fn begin_on_a_clean_connection(
        pool: &SqlitePool,
        statement: &'static str,
    ) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        use sqlx::Connection;
        for _ in 0..8 {
            let mut conn = pool.acquire().await?;
            if conn.is_in_transaction() {
                tracing::warn!("closing a SQLite connection left inside a transaction");
                conn.close_on_drop();
                continue;
            }
            return Transaction::begin(conn, Some(statement.into())).await;
        }
        Err(sqlx::Error::InvalidSavePointStatement)
    }

    /// `column` is one of the UUIDs bound as `$1` (a JSON array of hex strings).
    pub fn in_uuids(column: &str) -> String {
        in_uuids_at(column, 1)
    }

    /// `column` is one of the UUIDs bound at parameter `n` (a [`uuid_list`]).
    pub fn in_uuids_at(column: &str, n: u8) -> String {
        format!("{column} IN (SELECT unhex(value) FROM json_each(${n}))")
    }

    pub fn uuid_list(ids: &[Uuid]) -> String {
        let hexes: Vec<String> = ids.iter().copied().map(hex).collect();
        serde_json::to_string(&hexes).expect("strings serialize")
    }

    /// The rows `select` (a query ending in `WHERE `) finds whose `(org_id, id)` is one of
    /// `pairs` (bound as one JSON array of hex pairs).
    pub async fn fetch_org_pairs(
        conn: &mut SqliteConnection,
        select: &str,
        pairs: &[(Uuid, Uuid)],
    ) -> Result<Vec<sqlx::sqlite::SqliteRow>, sqlx::Error> {
        let rows: Vec<[String; 2]> = pairs
            .iter()
            .map(|(org, id)| [hex(*org), hex(*id)])
            .collect();
        sqlx::query(&format!(
            "{select}(org_id, id) IN (SELECT unhex(value ->> 0), unhex(value ->> 1) \
             FROM json_each($1))"
        ))
        .bind(serde_json::to_string(&rows).expect("strings serialize"))
        .fetch_all(conn)
        .await
    }

    /// `column` is one of the strings bound as `$1` (a JSON array).
    pub fn in_texts(column: &str) -> String {
        format!("{column} IN (SELECT value FROM json_each($1))")
    }

    pub fn text_list(items: &[String]) -> String {
        serde_json::to_string(items).expect("strings serialize")
    }

    /// A busy or locked database.
    pub fn is_retryable(error: &sqlx::Error) -> bool {
        has_code(error, &["5", "6", "261", "262", "517"])
    }

    /// A CHECK constraint (a balance stripe's range), or an integer overflow that SQLite
    /// turned into a REAL a STRICT table refuses.
    pub fn is_out_of_range(error: &sqlx::Error) -> bool {
        has_code(error, &["275", "3091"])
    }

    /// Nothing to take: the write lock already excludes every other writer.
    pub async fn lock_assets_shared(
        _conn: &mut SqliteConnection,
        _codes: &[String],
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Nothing to take: the write lock already excludes every other writer.
    pub async fn lock_asset_exclusive(
        _conn: &mut SqliteConnection,
        _code: &str,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Reads the given balance stripes; the write lock is already held.
    pub async fn lock_balances(
        conn: &mut SqliteConnection,
        keys: &[(Uuid, i16)],
    ) -> Result<Vec<sqlx::sqlite::SqliteRow>, sqlx::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<(String, i16)> = keys.iter().map(|(id, slot)| (hex(*id), *slot)).collect();
        let rows = sqlx::query(
            "SELECT account_id, slot, debits_pending, debits_posted, credits_pending, credits_posted \
             FROM account_balances \
             WHERE (account_id, slot) IN (SELECT unhex(value ->> 0), value ->> 1 FROM json_each($1)) \
             ORDER BY account_id, slot",
        )
        .bind(serde_json::to_string(&list).expect("keys serialize"))
        .fetch_all(conn)
        .await?;
        Ok(rows)
    }

    pub async fn insert_transfers(
        conn: &mut SqliteConnection,
        records: &[TransferRecord],
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!([
                    hex(r.id.as_uuid()),
                    r.kind.number(),
                    hex(r.debit_account_id.as_uuid()),
                    hex(r.credit_account_id.as_uuid()),
                    r.asset.as_str(),
                    r.amount.as_i64(),
                    r.pending_id.map(|id| hex(id.as_uuid())),
                    r.code.number(),
                    r.timeout_seconds,
                    r.metadata.as_str(),
                    i64::from(r.linked),
                    r.timestamp.as_micros(),
                ])
            })
            .collect();
        bulk(
            conn,
            "INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, asset, amount, \
             pending_id, code, timeout_seconds, metadata, linked, timestamp) \
             SELECT unhex(value ->> 0), value ->> 1, unhex(value ->> 2), unhex(value ->> 3), \
             value ->> 4, value ->> 5, unhex(value ->> 6), value ->> 7, value ->> 8, value ->> 9, \
             value ->> 10, value ->> 11 FROM json_each($1) ORDER BY key",
            rows,
        )
        .await
    }

    pub async fn insert_pendings(
        conn: &mut SqliteConnection,
        records: &[PendingRecord],
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|p| {
                serde_json::json!([
                    hex(p.id.as_uuid()),
                    hex(p.debit_account_id.as_uuid()),
                    hex(p.credit_account_id.as_uuid()),
                    p.asset.as_str(),
                    p.amount.as_i64(),
                    p.code.number(),
                    p.timestamp.as_micros(),
                    p.expires_at.map(Timestamp::as_micros),
                    p.state.number(),
                    p.resolved_at.map(Timestamp::as_micros),
                    p.resolved_by.map(|id| hex(id.as_uuid())),
                ])
            })
            .collect();
        bulk(
            conn,
            "INSERT INTO pending_transfers (id, debit_account_id, credit_account_id, asset, amount, \
             code, timestamp, expires_at, state, resolved_at, resolved_by) \
             SELECT unhex(value ->> 0), unhex(value ->> 1), unhex(value ->> 2), value ->> 3, \
             value ->> 4, value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9, \
             unhex(value ->> 10) FROM json_each($1)",
            rows,
        )
        .await
    }

    pub async fn update_pendings(
        conn: &mut SqliteConnection,
        records: &[PendingRecord],
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<serde_json::Value> = records
            .iter()
            .map(|p| {
                serde_json::json!([
                    hex(p.id.as_uuid()),
                    p.state.number(),
                    p.resolved_at.map(Timestamp::as_micros),
                    p.resolved_by.map(|id| hex(id.as_uuid())),
                ])
            })
            .collect();
        bulk(
            conn,
            "UPDATE pending_transfers AS p \
             SET state = u.state, resolved_at = u.resolved_at, resolved_by = u.resolved_by \
             FROM (SELECT unhex(value ->> 0) AS id, value ->> 1 AS state, \
                   value ->> 2 AS resolved_at, unhex(value ->> 3) AS resolved_by \
                   FROM json_each($1)) AS u \
             WHERE p.id = u.id",
            rows,
        )
        .await
    }

    pub async fn insert_failures(
        conn: &mut SqliteConnection,
        failures: &[(TransferId, TransferError)],
        now: Timestamp,
    ) -> Result<(), sqlx::Error> {
        if failures.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, &str)> = failures
            .iter()
            .map(|(id, error)| (hex(id.as_uuid()), error.name()))
            .collect();
        sqlx::query(
            "INSERT INTO transfer_failures (id, error, timestamp) \
             SELECT unhex(value ->> 0), value ->> 1, $2 FROM json_each($1)",
        )
        .bind(serde_json::to_string(&rows).expect("failures serialize"))
        .bind(now.as_micros())
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn apply_deltas(
        conn: &mut SqliteConnection,
        changes: &[(Uuid, i16, [i64; 4])],
    ) -> Result<(), sqlx::Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, i16, i64, i64, i64, i64)> = changes
            .iter()
            .map(|(id, slot, d)| (hex(*id), *slot, d[0], d[1], d[2], d[3]))
            .collect();
        sqlx::query(
            "UPDATE account_balances AS b SET \
               debits_pending = b.debits_pending + d.debits_pending, \
               debits_posted = b.debits_posted + d.debits_posted, \
               credits_pending = b.credits_pending + d.credits_pending, \
               credits_posted = b.credits_posted + d.credits_posted \
             FROM (SELECT unhex(value ->> 0) AS account_id, value ->> 1 AS slot, \
                   value ->> 2 AS debits_pending, value ->> 3 AS debits_posted, \
                   value ->> 4 AS credits_pending, value ->> 5 AS credits_posted \
                   FROM json_each($1)) AS d \
             WHERE b.account_id = d.account_id AND b.slot = d.slot",
        )
        .bind(serde_json::to_string(&rows).expect("changes serialize"))
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Inserts usage calls as one multi-row `VALUES` (at most `INSERT_ROWS_MAX` of them, 23
    /// binds each, within SQLite's 32,766).
    pub async fn insert_usage_events(
        conn: &mut SqliteConnection,
        records: &[UsageRecord],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(records.len());
        for record in records {
            rows.push((record, UsageTotal::of_call(record).stored_counts()?));
        }
        let mut query = sqlx::QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO usage_events ({USAGE_COLUMNS}) "
        ));
        query.push_values(rows, |mut row, (record, counts)| {
            row.push_bind(record.org.as_uuid())
                .push_bind(record.id)
                .push_bind(record.model.clone())
                .push_bind(record.class.clone())
                .push_bind(record.asset.clone());
            for count in counts {
                row.push_bind(count);
            }
            row.push_bind(record.price_source.clone())
                .push_bind(record.occurred_at.as_micros())
                .push_bind(record.recorded_at.as_micros())
                .push_bind(record.user)
                .push_bind(record.api_key)
                .push_bind(record.task.clone())
                .push_bind(record.conversation.clone())
                .push_bind(record.metadata.clone())
                .push_bind(record.fingerprint.to_vec())
                .push_bind(transfer_ids_json(&record.transfer_ids));
        });
        query.build().execute(conn).await?;
        Ok(())
    }

    /// Adds rollup rows, in the order given, as one multi-row `VALUES` (13 binds each).
    pub async fn add_usage_rollups(
        conn: &mut SqliteConnection,
        rows: &[RollupRow],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut query = sqlx::QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO usage_rollups ({ROLLUP_COLUMNS}) "
        ));
        query.push_values(
            rows,
            |mut row, (org, dimension, day, key, events, counts)| {
                row.push_bind(*org)
                    .push_bind(*dimension)
                    .push_bind(*day)
                    .push_bind(key.clone())
                    .push_bind(*events);
                for count in counts {
                    row.push_bind(*count);
                }
            },
        );
        query.push(ROLLUP_ON_CONFLICT);
        query.build().execute(conn).await?;
        Ok(())
    }
}
