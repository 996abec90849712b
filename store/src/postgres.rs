//! PostgreSQL, the production store: the dialect and the connection.
//!
//! Batches run at READ COMMITTED with explicit row locks taken in the crate's fixed order, so
//! any number of processes can share one database. Lists are bound as arrays; bulk writes go
//! through `UNNEST`, and usage calls, the largest, through binary `COPY`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use credex_ledger::{Clock, PendingRecord, Timestamp, TransferError, TransferId, TransferRecord};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::market::transfer_ids_json;
use crate::sql::{has_code, shared_store, AccountCache};
use crate::usage::{
    RollupRow, UsageRecord, UsageTotal, ROLLUP_COLUMNS, ROLLUP_ON_CONFLICT, USAGE_COLUMNS,
};
use crate::StoreError;

/// The ledger in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    cache: Arc<AccountCache>,
}

impl PostgresStore {
    /// Connects with durable commits (`synchronous_commit = on`) and runs migrations.
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        Self::connect_with(url, clock, 16).await
    }

    /// As [`PostgresStore::connect`], with a pool of at most `max_connections`.
    pub async fn connect_with(
        url: &str,
        clock: Arc<dyn Clock>,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?
            .options([("synchronous_commit", "on"), ("lock_timeout", "30s")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            clock,
            cache: Arc::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

shared_store!(PostgresStore, sqlx::Postgres, dialect, Backend::Postgres);
crate::identity::shared_identity!(PostgresStore, sqlx::Postgres, dialect);
crate::idempotency::shared_idempotency!(PostgresStore);
crate::pricing::shared_pricing!(PostgresStore, sqlx::Postgres, dialect);
crate::cycles::shared_cycles!(PostgresStore, sqlx::Postgres, dialect);
crate::market::shared_market!(PostgresStore, sqlx::Postgres, dialect);
crate::review::shared_review!(PostgresStore, sqlx::Postgres, dialect);
crate::usage::shared_usage!(PostgresStore, sqlx::Postgres, dialect);
crate::delivery::shared_delivery!(PostgresStore, sqlx::Postgres, dialect);
crate::statements::shared_statements!(PostgresStore, sqlx::Postgres, dialect);

mod dialect {
    use super::*;

    /// Whether large batches write their journal rows before taking balance locks.
    pub const SPECULATE: bool = true;
    /// `usage_events.user_id` and `api_key_id` as text, and the UTC day of `occurred_at`
    /// (µs since the epoch) as `YYYY-MM-DD`.
    pub const UUID_TEXT_USER: &str = "CAST(user_id AS TEXT)";
    pub const UUID_TEXT_API_KEY: &str = "CAST(api_key_id AS TEXT)";
    pub const UTC_DAY_OF_OCCURRED_AT: &str =
        "to_char(to_timestamp(occurred_at / 1000000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')";
    /// An org's name contains the (lower-case) text bound to `#`: `lower` under the "C"
    /// collation folds ASCII letters only, as SQLite's does.
    pub const ORG_NAME_CONTAINS: &str = " AND strpos(lower(name COLLATE \"C\"), #) > 0";
    pub const FOR_NO_KEY_UPDATE: &str = " FOR NO KEY UPDATE";
    pub const FOR_UPDATE: &str = " FOR UPDATE";
    pub const FOR_UPDATE_SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";

    pub async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        pool.begin().await
    }

    /// A read-only transaction that sees one snapshot of the database.
    pub async fn begin_snapshot(
        pool: &PgPool,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
    }

    /// `column` is one of the UUIDs bound as `$1`.
    pub fn in_uuids(column: &str) -> String {
        in_uuids_at(column, 1)
    }

    /// `column` is one of the UUIDs bound at parameter `n` (a [`uuid_list`]).
    pub fn in_uuids_at(column: &str, n: u8) -> String {
        format!("{column} = ANY(${n})")
    }

    pub fn uuid_list(ids: &[Uuid]) -> Vec<Uuid> {
        ids.to_vec()
    }

    /// The rows `select` (a query ending in `WHERE `) finds whose `(org_id, id)` is one of
    /// `pairs`: one index probe per pair (`org_id = ANY(…) AND id = ANY(…)` would probe every
    /// org with every id).
    pub async fn fetch_org_pairs(
        conn: &mut PgConnection,
        select: &str,
        pairs: &[(Uuid, Uuid)],
    ) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        let (orgs, ids): (Vec<Uuid>, Vec<Uuid>) = pairs.iter().copied().unzip();
        sqlx::query(&format!(
            "{select}(org_id, id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))"
        ))
        .bind(orgs)
        .bind(ids)
        .fetch_all(conn)
        .await
    }

    /// `column` is one of the strings bound as `$1`.
    pub fn in_texts(column: &str) -> String {
        format!("{column} = ANY($1)")
    }

    pub fn text_list(items: &[String]) -> Vec<String> {
        items.to_vec()
    }

    /// Serialization failures, deadlocks, a concurrent insert of the same key, lock timeouts.
    pub fn is_retryable(error: &sqlx::Error) -> bool {
        has_code(error, &["40001", "40P01", "23505", "55P03"])
    }

    /// A CHECK constraint (a balance stripe's range) or an integer overflow.
    pub fn is_out_of_range(error: &sqlx::Error) -> bool {
        has_code(error, &["23514", "22003"])
    }

    /// The first key of Credex's advisory locks ("CRDX"); the second is the asset code's hash.
    const ASSET_LOCK_SPACE: i32 = 0x4352_4458;

    /// Takes the assets' advisory locks shared. Shared locks live in the lock manager only:
    /// unlike `FOR SHARE` on the asset row, concurrent batches write nothing to take them.
    /// Two assets whose codes hash alike only make a close wait a little longer.
    pub async fn lock_assets_shared(
        conn: &mut PgConnection,
        codes: &[String],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "SELECT count(pg_advisory_xact_lock_shared($2, hashtext(code))) \
             FROM unnest($1::text[]) AS t(code)",
        )
        .bind(codes)
        .bind(ASSET_LOCK_SPACE)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Takes one asset's advisory lock exclusively: waits for every batch touching it.
    pub async fn lock_asset_exclusive(
        conn: &mut PgConnection,
        code: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock($2, hashtext($1))")
            .bind(code)
            .bind(ASSET_LOCK_SPACE)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Locks the given balance stripes in key order and reads them.
    pub async fn lock_balances(
        conn: &mut PgConnection,
        keys: &[(Uuid, i16)],
    ) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (accounts, slots): (Vec<Uuid>, Vec<i16>) = keys.iter().copied().unzip();
        let rows = sqlx::query(
            "SELECT account_id, slot, debits_pending, debits_posted, credits_pending, credits_posted \
             FROM account_balances \
             WHERE (account_id, slot) IN (SELECT * FROM UNNEST($1::uuid[], $2::int2[])) \
             ORDER BY account_id, slot FOR UPDATE",
        )
        .bind(accounts)
        .bind(slots)
        .fetch_all(conn)
        .await?;
        Ok(rows)
    }

    pub async fn insert_transfers(
        conn: &mut PgConnection,
        records: &[TransferRecord],
    ) -> Result<(), sqlx::Error> {
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len();
        let mut ids = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut debits = Vec::with_capacity(n);
        let mut credits = Vec::with_capacity(n);
        let mut assets = Vec::with_capacity(n);
        let mut amounts = Vec::with_capacity(n);
        let mut pending_ids = Vec::with_capacity(n);
        let mut codes = Vec::with_capacity(n);
        let mut timeouts = Vec::with_capacity(n);
        let mut metadata = Vec::with_capacity(n);
        let mut linked = Vec::with_capacity(n);
        let mut timestamps = Vec::with_capacity(n);
        for record in records {
            ids.push(record.id.as_uuid());
            kinds.push(record.kind.number());
            debits.push(record.debit_account_id.as_uuid());
            credits.push(record.credit_account_id.as_uuid());
            assets.push(record.asset.as_str());
            amounts.push(record.amount.as_i64());
            pending_ids.push(record.pending_id.map(|id| id.as_uuid()));
            codes.push(record.code.number());
            timeouts.push(record.timeout_seconds.map(i64::from));
            metadata.push(record.metadata.as_str());
            linked.push(record.linked);
            timestamps.push(record.timestamp.as_micros());
        }
        sqlx::query(
            "INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, asset, amount, \
             pending_id, code, timeout_seconds, metadata, linked, timestamp) \
             SELECT * FROM UNNEST($1::uuid[], $2::int2[], $3::uuid[], $4::uuid[], $5::text[], \
             $6::int8[], $7::uuid[], $8::int2[], $9::int8[], $10::text[], $11::bool[], $12::int8[])",
        )
        .bind(ids)
        .bind(kinds)
        .bind(debits)
        .bind(credits)
        .bind(assets)
        .bind(amounts)
        .bind(pending_ids)
        .bind(codes)
        .bind(timeouts)
        .bind(metadata)
        .bind(linked)
        .bind(timestamps)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn insert_pendings(
        conn: &mut PgConnection,
        records: &[PendingRecord],
    ) -> Result<(), sqlx::Error> {
        if records.is_empty() {
            return Ok(());
        }
        let column = |f: &dyn Fn(&PendingRecord) -> Option<i64>| -> Vec<Option<i64>> {
            records.iter().map(f).collect()
        };
        let ids: Vec<Uuid> = records.iter().map(|p| p.id.as_uuid()).collect();
        let debits: Vec<Uuid> = records
            .iter()
            .map(|p| p.debit_account_id.as_uuid())
            .collect();
        let credits: Vec<Uuid> = records
            .iter()
            .map(|p| p.credit_account_id.as_uuid())
            .collect();
        let assets: Vec<&str> = records.iter().map(|p| p.asset.as_str()).collect();
        let amounts = column(&|p| Some(p.amount.as_i64()));
        let codes: Vec<i16> = records.iter().map(|p| p.code.number()).collect();
        let timestamps = column(&|p| Some(p.timestamp.as_micros()));
        let expires = column(&|p| p.expires_at.map(Timestamp::as_micros));
        let states: Vec<i16> = records.iter().map(|p| p.state.number()).collect();
        let resolved_at = column(&|p| p.resolved_at.map(Timestamp::as_micros));
        let resolved_by: Vec<Option<Uuid>> = records
            .iter()
            .map(|p| p.resolved_by.map(TransferId::as_uuid))
            .collect();
        sqlx::query(
            "INSERT INTO pending_transfers (id, debit_account_id, credit_account_id, asset, amount, \
             code, timestamp, expires_at, state, resolved_at, resolved_by) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int8[], \
             $6::int2[], $7::int8[], $8::int8[], $9::int2[], $10::int8[], $11::uuid[])",
        )
        .bind(ids)
        .bind(debits)
        .bind(credits)
        .bind(assets)
        .bind(amounts)
        .bind(codes)
        .bind(timestamps)
        .bind(expires)
        .bind(states)
        .bind(resolved_at)
        .bind(resolved_by)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn update_pendings(
        conn: &mut PgConnection,
        records: &[PendingRecord],
    ) -> Result<(), sqlx::Error> {
        if records.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = records.iter().map(|p| p.id.as_uuid()).collect();
        let states: Vec<i16> = records.iter().map(|p| p.state.number()).collect();
        let resolved_at: Vec<Option<i64>> = records
            .iter()
            .map(|p| p.resolved_at.map(Timestamp::as_micros))
            .collect();
        let resolved_by: Vec<Option<Uuid>> = records
            .iter()
            .map(|p| p.resolved_by.map(TransferId::as_uuid))
            .collect();
        sqlx::query(
            "UPDATE pending_transfers AS p \
             SET state = u.state, resolved_at = u.resolved_at, resolved_by = u.resolved_by \
             FROM UNNEST($1::uuid[], $2::int2[], $3::int8[], $4::uuid[]) \
               AS u(id, state, resolved_at, resolved_by) \
             WHERE p.id = u.id",
        )
        .bind(ids)
        .bind(states)
        .bind(resolved_at)
        .bind(resolved_by)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn insert_failures(
        conn: &mut PgConnection,
        failures: &[(TransferId, TransferError)],
        now: Timestamp,
    ) -> Result<(), sqlx::Error> {
        if failures.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = failures.iter().map(|(id, _)| id.as_uuid()).collect();
        let errors: Vec<&str> = failures.iter().map(|(_, error)| error.name()).collect();
        sqlx::query(
            "INSERT INTO transfer_failures (id, error, timestamp) \
             SELECT id, error, $3 FROM UNNEST($1::uuid[], $2::text[]) AS f(id, error)",
        )
        .bind(ids)
        .bind(errors)
        .bind(now.as_micros())
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Adds each change to its stripe; the stripes were locked beforehand.
    pub async fn apply_deltas(
        conn: &mut PgConnection,
        changes: &[(Uuid, i16, [i64; 4])],
    ) -> Result<(), sqlx::Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let accounts: Vec<Uuid> = changes.iter().map(|c| c.0).collect();
        let slots: Vec<i16> = changes.iter().map(|c| c.1).collect();
        let total = |i: usize| -> Vec<i64> { changes.iter().map(|c| c.2[i]).collect() };
        sqlx::query(
            "UPDATE account_balances AS b SET \
               debits_pending = b.debits_pending + d.debits_pending, \
               debits_posted = b.debits_posted + d.debits_posted, \
               credits_pending = b.credits_pending + d.credits_pending, \
               credits_posted = b.credits_posted + d.credits_posted \
             FROM UNNEST($1::uuid[], $2::int2[], $3::int8[], $4::int8[], $5::int8[], $6::int8[]) \
               AS d(account_id, slot, debits_pending, debits_posted, credits_pending, credits_posted) \
             WHERE b.account_id = d.account_id AND b.slot = d.slot",
        )
        .bind(accounts)
        .bind(slots)
        .bind(total(0))
        .bind(total(1))
        .bind(total(2))
        .bind(total(3))
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Inserts usage calls with one `COPY … FROM STDIN (FORMAT binary)`: PostgreSQL writes
    /// the heap rows a page at a time (one WAL record per page rather than one per row, as
    /// `INSERT` does) and skips the executor. `COPY` has no `ON CONFLICT`: a call already
    /// recorded fails the statement, and so the transaction, with a unique violation, which
    /// the usage transaction takes as its cue to run again reading the calls it meets
    /// (`Recorded` in `usage.rs`).
    pub async fn insert_usage_events(
        conn: &mut PgConnection,
        records: &[UsageRecord],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        // One field per column, in the order of `USAGE_COLUMNS`.
        let fields = USAGE_COLUMNS.split(',').count();
        let mut data = CopyBinary::new(records.len() * 400);
        for record in records {
            data.row(fields);
            data.uuid(record.org.as_uuid());
            data.uuid(record.id);
            data.text(Some(&record.model));
            data.text(Some(&record.class));
            data.text(Some(&record.asset));
            for count in UsageTotal::of_call(record).stored_counts()? {
                data.int8(count);
            }
            data.text(Some(&record.price_source));
            data.int8(record.occurred_at.as_micros());
            data.int8(record.recorded_at.as_micros());
            data.optional_uuid(record.user);
            data.optional_uuid(record.api_key);
            data.text(record.task.as_deref());
            data.text(record.conversation.as_deref());
            data.text(record.metadata.as_deref());
            data.field(Some(record.fingerprint.as_slice()));
            data.text(Some(&transfer_ids_json(&record.transfer_ids)));
        }
        let mut copy = conn
            .copy_in_raw(&format!(
                "COPY usage_events ({USAGE_COLUMNS}) FROM STDIN (FORMAT binary)"
            ))
            .await?;
        copy.send(data.finish()?).await?;
        copy.finish().await?;
        Ok(())
    }

    /// Adds rollup rows, in the order given (a function scan of the arrays), in one statement
    /// whatever their number.
    pub async fn add_usage_rollups(
        conn: &mut PgConnection,
        rows: &[RollupRow],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let orgs: Vec<Uuid> = rows.iter().map(|row| row.0).collect();
        let dimensions: Vec<&str> = rows.iter().map(|row| row.1).collect();
        let days: Vec<i64> = rows.iter().map(|row| row.2).collect();
        let keys: Vec<&str> = rows.iter().map(|row| row.3.as_str()).collect();
        let events: Vec<i64> = rows.iter().map(|row| row.4).collect();
        let count = |i: usize| -> Vec<i64> { rows.iter().map(|row| row.5[i]).collect() };
        sqlx::query(&format!(
            "INSERT INTO usage_rollups ({ROLLUP_COLUMNS}) SELECT * FROM UNNEST($1::uuid[], \
             $2::text[], $3::int8[], $4::text[], $5::int8[], $6::int8[], $7::int8[], $8::int8[], \
             $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[]){ROLLUP_ON_CONFLICT}"
        ))
        .bind(orgs)
        .bind(dimensions)
        .bind(days)
        .bind(keys)
        .bind(events)
        .bind(count(0))
        .bind(count(1))
        .bind(count(2))
        .bind(count(3))
        .bind(count(4))
        .bind(count(5))
        .bind(count(6))
        .bind(count(7))
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Rows in PostgreSQL's binary `COPY` format: a signature and header, then per row a field
/// count and each field as its length (-1 for NULL) and its binary send form, then a trailer.
struct CopyBinary {
    buf: Vec<u8>,
    /// A value longer than a field can say (2 GiB), or a row of more fields than its count
    /// can say, was given: the data is refused.
    oversized: bool,
}

impl CopyBinary {
    fn new(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.saturating_add(32));
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0_i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0_i32.to_be_bytes()); // no header extension
        Self {
            buf,
            oversized: false,
        }
    }

    fn row(&mut self, fields: usize) {
        match i16::try_from(fields) {
            Ok(fields) => self.buf.extend_from_slice(&fields.to_be_bytes()),
            Err(_) => self.oversized = true,
        }
    }

    fn field(&mut self, value: Option<&[u8]>) {
        match value {
            None => self.buf.extend_from_slice(&(-1_i32).to_be_bytes()),
            Some(bytes) => match i32::try_from(bytes.len()) {
                Ok(length) => {
                    self.buf.extend_from_slice(&length.to_be_bytes());
                    self.buf.extend_from_slice(bytes);
                }
                Err(_) => self.oversized = true,
            },
        }
    }

    fn uuid(&mut self, id: Uuid) {
        self.field(Some(id.as_bytes()));
    }

    fn optional_uuid(&mut self, id: Option<Uuid>) {
        self.field(id.as_ref().map(|id| id.as_bytes().as_slice()));
    }

    fn int8(&mut self, value: i64) {
        self.field(Some(&value.to_be_bytes()));
    }

    fn text(&mut self, value: Option<&str>) {
        self.field(value.map(str::as_bytes));
    }

    fn finish(mut self) -> Result<Vec<u8>, StoreError> {
        if self.oversized {
            return Err(StoreError::corrupt("a value or a row too long for COPY"));
        }
        self.buf.extend_from_slice(&(-1_i16).to_be_bytes());
        Ok(self.buf)
    }
}
