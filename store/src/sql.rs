//! The SQL shared by both backends.
//!
//! [`shared_store!`] expands the same implementation of [`crate::Store`] for each backend's
//! connection type; the backend module passed to it supplies the dialect: how a list of ids is
//! bound, the row-lock clauses, the bulk writes, and which errors are worth a retry.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use credex_ledger::{
    Account, AccountId, AccountKind, Amount, AssetCode, Balance, Metadata, OrgId, Owner,
    PendingRecord, PendingState, Timestamp, TransferCode, TransferId, TransferKind, TransferRecord,
};
use uuid::Uuid;

use crate::{JournalEntry, StoreError};

pub(crate) const TRANSFER_COLUMNS: &str = "seq, id, kind, debit_account_id, credit_account_id, \
     asset, amount, pending_id, code, timeout_seconds, metadata, linked, timestamp";
pub(crate) const PENDING_COLUMNS: &str = "id, debit_account_id, credit_account_id, asset, amount, \
     code, timestamp, expires_at, state, resolved_at, resolved_by";

/// Accounts with their balances summed over stripes; `{filter}` is replaced by a condition.
pub(crate) const ACCOUNT_VIEW_SQL: &str = "SELECT a.id, a.asset, a.owner_org, a.kind, a.stripes, \
     CAST(SUM(b.debits_pending) AS BIGINT) AS debits_pending, \
     CAST(SUM(b.debits_posted) AS BIGINT) AS debits_posted, \
     CAST(SUM(b.credits_pending) AS BIGINT) AS credits_pending, \
     CAST(SUM(b.credits_posted) AS BIGINT) AS credits_posted \
     FROM accounts a JOIN account_balances b ON b.account_id = a.id \
     WHERE {filter} \
     GROUP BY a.id, a.asset, a.owner_org, a.kind, a.stripes ORDER BY a.id";

/// How a batch attempt reads balances; see `commit_once` in [`shared_store!`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Lock, then decide and write.
    Locked,
    /// Decide and write the journal first, then lock and decide again.
    Speculative,
    /// Lock and read every touched balance whole.
    Whole,
}

/// What a batch's caller knows of its transfers' ids; see `apply_ids_in` in
/// [`shared_store!`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ids {
    /// Some may be in the journal (a retried request, say): each is looked up.
    MayExist,
    /// None was ever committed or failed: nothing is looked up.
    Fresh,
}

/// The smallest batch worth a speculative attempt: below it, the extra statement costs more
/// than the shorter lock hold saves. `CREDEX_SPECULATE_MIN` overrides it (tests set it to 1 to
/// drive every batch through speculation).
pub(crate) fn speculate_min() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| {
        std::env::var("CREDEX_SPECULATE_MIN")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(256)
    })
}

/// How many times a transaction that lost a race (serialization failure, deadlock, a
/// concurrent insert of the same id, a busy database) is tried again.
pub(crate) const MAX_ATTEMPTS: u32 = 12;

/// Waits a little before trying a transaction again: exponential with jitter, at most ~50 ms.
pub(crate) async fn backoff(attempt: u32) {
    let ceiling_us = 200_u64 << attempt.min(8);
    let wait = rand::random_range(ceiling_us / 2..=ceiling_us);
    tokio::time::sleep(std::time::Duration::from_micros(wait)).await;
}

/// An error of a store module that may wrap a database error worth another try.
pub(crate) trait MayRetry: From<StoreError> {
    fn database_error(&self) -> Option<&sqlx::Error>;
}

impl MayRetry for StoreError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            StoreError::Database(error) => Some(error),
            _ => None,
        }
    }
}

/// Runs `attempt` again while it fails with a database error that `is_retryable` accepts (a
/// deadlock, a serialization failure, a busy database, …), with backoff, at most
/// [`MAX_ATTEMPTS`] times; then answers `Busy`.
pub(crate) async fn retry<T, E, F, Fut>(
    is_retryable: fn(&sqlx::Error) -> bool,
    attempt: F,
) -> Result<T, E>
where
    E: MayRetry,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(error) if error.database_error().is_some_and(is_retryable) => {
                if tries >= MAX_ATTEMPTS {
                    return Err(StoreError::Busy { attempts: tries }.into());
                }
                if let Some(error) = error.database_error() {
                    tracing::debug!(%error, tries, "retrying a transaction");
                }
                backoff(tries).await;
            }
            other => return other,
        }
    }
}

/// Whether a database error carries one of these codes (SQLSTATE on PostgreSQL, the
/// extended result code on SQLite).
pub(crate) fn has_code(error: &sqlx::Error, codes: &[&str]) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| codes.contains(&code.as_ref())),
        _ => false,
    }
}

/// A transfer row as stored.
pub(crate) struct RawTransfer {
    pub seq: i64,
    pub id: Uuid,
    pub kind: i16,
    pub debit_account_id: Uuid,
    pub credit_account_id: Uuid,
    pub asset: String,
    pub amount: i64,
    pub pending_id: Option<Uuid>,
    pub code: i16,
    pub timeout_seconds: Option<i64>,
    pub metadata: String,
    pub linked: bool,
    pub timestamp: i64,
}

impl RawTransfer {
    pub fn into_entry(self) -> Result<JournalEntry, StoreError> {
        let record = TransferRecord {
            id: transfer_id(self.id)?,
            kind: TransferKind::from_number(self.kind)
                .ok_or_else(|| StoreError::corrupt(format!("transfer kind {}", self.kind)))?,
            debit_account_id: account_id(self.debit_account_id)?,
            credit_account_id: account_id(self.credit_account_id)?,
            asset: asset_code(&self.asset)?,
            amount: amount(self.amount)?,
            pending_id: self.pending_id.map(transfer_id).transpose()?,
            code: transfer_code(self.code)?,
            timeout_seconds: self
                .timeout_seconds
                .map(|t| u32::try_from(t).map_err(StoreError::corrupt))
                .transpose()?,
            metadata: Metadata::new(self.metadata).map_err(StoreError::corrupt)?,
            linked: self.linked,
            timestamp: Timestamp::from_micros(self.timestamp),
        };
        Ok(JournalEntry {
            seq: self.seq,
            record,
        })
    }
}

/// A pending transfer row as stored.
pub(crate) struct RawPending {
    pub id: Uuid,
    pub debit_account_id: Uuid,
    pub credit_account_id: Uuid,
    pub asset: String,
    pub amount: i64,
    pub code: i16,
    pub timestamp: i64,
    pub expires_at: Option<i64>,
    pub state: i16,
    pub resolved_at: Option<i64>,
    pub resolved_by: Option<Uuid>,
}

impl RawPending {
    pub fn into_record(self) -> Result<PendingRecord, StoreError> {
        Ok(PendingRecord {
            id: transfer_id(self.id)?,
            debit_account_id: account_id(self.debit_account_id)?,
            credit_account_id: account_id(self.credit_account_id)?,
            asset: asset_code(&self.asset)?,
            amount: amount(self.amount)?,
            code: transfer_code(self.code)?,
            timestamp: Timestamp::from_micros(self.timestamp),
            expires_at: self.expires_at.map(Timestamp::from_micros),
            state: PendingState::from_number(self.state)
                .ok_or_else(|| StoreError::corrupt(format!("pending state {}", self.state)))?,
            resolved_at: self.resolved_at.map(Timestamp::from_micros),
            resolved_by: self.resolved_by.map(transfer_id).transpose()?,
        })
    }
}

/// An account row as stored.
pub(crate) struct RawAccount {
    pub id: Uuid,
    pub asset: String,
    pub owner_org: Option<Uuid>,
    pub kind: i16,
    pub stripes: i16,
}

impl RawAccount {
    pub fn into_cached(self) -> Result<CachedAccount, StoreError> {
        let owner = match self.owner_org {
            None => Owner::Provider,
            Some(org) => Owner::Org(OrgId::new(org).map_err(StoreError::corrupt)?),
        };
        let kind = AccountKind::from_number(self.kind)
            .ok_or_else(|| StoreError::corrupt(format!("account kind {}", self.kind)))?;
        let account = Account::new(account_id(self.id)?, asset_code(&self.asset)?, owner, kind)
            .map_err(StoreError::corrupt)?;
        if !(1..=64).contains(&self.stripes) {
            return Err(StoreError::corrupt(format!("{} stripes", self.stripes)));
        }
        Ok(CachedAccount {
            account,
            stripes: self.stripes,
        })
    }
}

pub(crate) fn transfer_id(uuid: Uuid) -> Result<TransferId, StoreError> {
    TransferId::new(uuid).map_err(StoreError::corrupt)
}

pub(crate) fn account_id(uuid: Uuid) -> Result<AccountId, StoreError> {
    AccountId::new(uuid).map_err(StoreError::corrupt)
}

pub(crate) fn asset_code(text: &str) -> Result<AssetCode, StoreError> {
    AssetCode::parse(text).map_err(StoreError::corrupt)
}

pub(crate) fn amount(value: i64) -> Result<Amount, StoreError> {
    Amount::try_from(value).map_err(StoreError::corrupt)
}

pub(crate) fn transfer_code(number: i16) -> Result<TransferCode, StoreError> {
    TransferCode::from_number(number)
        .ok_or_else(|| StoreError::corrupt(format!("transfer code {number}")))
}

/// A balance from four stored sums, which are never negative.
pub(crate) fn balance(totals: [i64; 4]) -> Result<Balance, StoreError> {
    let total =
        |value: i64| u64::try_from(value).map_err(|_| StoreError::corrupt("a negative total"));
    Ok(Balance {
        debits_pending: total(totals[0])?,
        debits_posted: total(totals[1])?,
        credits_pending: total(totals[2])?,
        credits_posted: total(totals[3])?,
    })
}

/// The most one stripe's total may hold either way; the schema's CHECK constraints say the
/// same. With at most 16 stripes, no sum of an account's stripes can overflow an `i64`.
pub(crate) const STRIPE_MAX: i64 = i64::MAX / 16;
const _: () = assert!(STRIPE_MAX.unsigned_abs() == crate::BALANCE_MAX);

/// The most any total of an account with `stripes` stripes may hold.
pub(crate) fn max_total(stripes: i16) -> u64 {
    let stripes = u64::try_from(stripes).unwrap_or(1).clamp(1, 16);
    stripes * crate::BALANCE_MAX
}

/// The balance stripes a transaction locked.
pub(crate) struct Locked {
    /// The one stripe locked for each account updated blindly.
    pub slots: HashMap<AccountId, i16>,
    /// Every stripe of each account read whole.
    pub stripes: HashMap<AccountId, Vec<(i16, [i64; 4])>>,
    /// The summed balance of each account read whole.
    pub balances: HashMap<AccountId, Balance>,
}

pub(crate) fn sum_stripes(rows: &[(i16, [i64; 4])]) -> Result<Balance, StoreError> {
    let mut sum = [0_i64; 4];
    for (_, totals) in rows {
        for (total, value) in sum.iter_mut().zip(totals) {
            *total = total
                .checked_add(*value)
                .ok_or_else(|| StoreError::corrupt("a balance beyond range"))?;
        }
    }
    balance(sum)
}

/// The stripe updates that apply balance deltas: an account updated blindly gets its delta on
/// its one locked stripe; an account read whole has its new totals spread evenly over all its
/// stripes, which keeps every stripe within range.
pub(crate) fn stripe_changes(
    deltas: &[(AccountId, credex_ledger::BalanceDelta)],
    locked: &Locked,
) -> Result<Vec<(Uuid, i16, [i64; 4])>, StoreError> {
    let narrow = |value: i128| {
        i64::try_from(value).map_err(|_| StoreError::corrupt("a balance change out of range"))
    };
    let mut changes = Vec::with_capacity(deltas.len());
    for (id, delta) in deltas {
        let delta = [
            delta.debits_pending,
            delta.debits_posted,
            delta.credits_pending,
            delta.credits_posted,
        ];
        if let Some(&slot) = locked.slots.get(id) {
            let totals = [
                narrow(delta[0])?,
                narrow(delta[1])?,
                narrow(delta[2])?,
                narrow(delta[3])?,
            ];
            changes.push((id.as_uuid(), slot, totals));
            continue;
        }
        let rows = locked
            .stripes
            .get(id)
            .ok_or_else(|| StoreError::corrupt("a changed account was not locked"))?;
        let count = i128::try_from(rows.len())
            .map_err(StoreError::corrupt)?
            .max(1);
        let mut targets = [[0_i128; 4]; 16];
        for field in 0..4 {
            let total: i128 =
                rows.iter().map(|(_, t)| i128::from(t[field])).sum::<i128>() + delta[field];
            for (index, target) in targets.iter_mut().take(rows.len()).enumerate() {
                let index = i128::try_from(index).map_err(StoreError::corrupt)?;
                target[field] =
                    total.div_euclid(count) + i128::from(index < total.rem_euclid(count));
            }
        }
        for (index, (slot, current)) in rows.iter().enumerate() {
            let mut change = [0_i64; 4];
            for field in 0..4 {
                change[field] = narrow(targets[index][field] - i128::from(current[field]))?;
            }
            if change != [0; 4] {
                changes.push((id.as_uuid(), *slot, change));
            }
        }
    }
    Ok(changes)
}

/// An account's metadata with the number of its balance stripes.
#[derive(Debug, Clone)]
pub(crate) struct CachedAccount {
    pub account: Account,
    pub stripes: i16,
}

/// Accounts never change once created, so every process may keep them. Bounded: when full, it
/// starts again empty.
#[derive(Debug, Default)]
pub(crate) struct AccountCache {
    accounts: RwLock<HashMap<AccountId, CachedAccount>>,
}

const ACCOUNT_CACHE_MAX: usize = 1_000_000;

impl AccountCache {
    pub fn split(
        &self,
        ids: &BTreeSet<AccountId>,
    ) -> (HashMap<AccountId, CachedAccount>, Vec<AccountId>) {
        let accounts = self.accounts.read().unwrap_or_else(|e| e.into_inner());
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match accounts.get(id) {
                Some(cached) => {
                    found.insert(*id, cached.clone());
                }
                None => missing.push(*id),
            }
        }
        (found, missing)
    }

    pub fn remember(&self, loaded: &[CachedAccount]) {
        let mut accounts = self.accounts.write().unwrap_or_else(|e| e.into_inner());
        if accounts.len() + loaded.len() > ACCOUNT_CACHE_MAX {
            accounts.clear();
        }
        for cached in loaded {
            accounts.insert(cached.account.id(), cached.clone());
        }
    }
}

/// Expands the shared implementation of [`crate::Store`] for `$store`, whose fields are
/// `pool: sqlx::Pool<$db>`, `clock: Arc<dyn Clock>` and `cache: AccountCache`, with the
/// dialect module `$dialect`.
macro_rules! shared_store {
    ($store:ident, $db:ty, $dialect:ident, $backend:expr) => {
        mod shared {
            use std::collections::{BTreeSet, HashMap, HashSet};
            use std::sync::Arc;

            use async_trait::async_trait;
            use credex_ledger::engine::{self, BatchInput, LoadedAccount, Requirements};
            use credex_ledger::{
                Account, AccountId, AccountKind, AssetCode, AssetState, Balance, Clock, Owner,
                PendingRecord, Timestamp, Transfer, TransferError, TransferId, TransferResult,
            };
            use sqlx::Row;
            use uuid::Uuid;

            use super::$dialect as dialect;
            use super::$store;
            use crate::sql::{
                backoff, balance, max_total, stripe_changes, sum_stripes, CachedAccount, Ids, Locked, Mode,
                RawAccount, RawPending, RawTransfer, ACCOUNT_VIEW_SQL, MAX_ATTEMPTS,
                PENDING_COLUMNS, TRANSFER_COLUMNS,
            };
            use crate::{
                AccountView, AssetView, Backend, BooksSink, CheckReport, CloseOutcome, CreateAccountError,
                HistoryCursor, JournalEntry, JournalTotals, Store, StoreError,
                HOT_ACCOUNT_STRIPES,
            };

            type Connection = <$db as sqlx::Database>::Connection;
            type DbRow = <$db as sqlx::Database>::Row;

            fn raw_transfer(row: &DbRow) -> Result<RawTransfer, sqlx::Error> {
                Ok(RawTransfer {
                    seq: row.try_get("seq")?,
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    debit_account_id: row.try_get("debit_account_id")?,
                    credit_account_id: row.try_get("credit_account_id")?,
                    asset: row.try_get("asset")?,
                    amount: row.try_get("amount")?,
                    pending_id: row.try_get("pending_id")?,
                    code: row.try_get("code")?,
                    timeout_seconds: row.try_get("timeout_seconds")?,
                    metadata: row.try_get("metadata")?,
                    linked: row.try_get("linked")?,
                    timestamp: row.try_get("timestamp")?,
                })
            }

            fn entry(row: &DbRow) -> Result<JournalEntry, StoreError> {
                raw_transfer(row)?.into_entry()
            }

            fn pending(row: &DbRow) -> Result<PendingRecord, StoreError> {
                RawPending {
                    id: row.try_get("id")?,
                    debit_account_id: row.try_get("debit_account_id")?,
                    credit_account_id: row.try_get("credit_account_id")?,
                    asset: row.try_get("asset")?,
                    amount: row.try_get("amount")?,
                    code: row.try_get("code")?,
                    timestamp: row.try_get("timestamp")?,
                    expires_at: row.try_get("expires_at")?,
                    state: row.try_get("state")?,
                    resolved_at: row.try_get("resolved_at")?,
                    resolved_by: row.try_get("resolved_by")?,
                }
                .into_record()
            }

            fn cached_account(row: &DbRow) -> Result<CachedAccount, StoreError> {
                RawAccount {
                    id: row.try_get("id")?,
                    asset: row.try_get("asset")?,
                    owner_org: row.try_get("owner_org")?,
                    kind: row.try_get("kind")?,
                    stripes: row.try_get("stripes")?,
                }
                .into_cached()
            }

            fn account_view(row: &DbRow) -> Result<AccountView, StoreError> {
                let cached = cached_account(row)?;
                let balance = balance([
                    row.try_get("debits_pending")?,
                    row.try_get("debits_posted")?,
                    row.try_get("credits_pending")?,
                    row.try_get("credits_posted")?,
                ])?;
                Ok(AccountView {
                    account: cached.account,
                    balance,
                })
            }

            fn uuids<T: Into<Uuid> + Copy>(ids: impl IntoIterator<Item = T>) -> Vec<Uuid> {
                ids.into_iter().map(Into::into).collect()
            }

            async fn fetch_entries(
                conn: &mut Connection,
                ids: &[Uuid],
            ) -> Result<Vec<JournalEntry>, StoreError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE {} ORDER BY seq",
                    dialect::in_uuids("id")
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(ids))
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter().map(entry).collect()
            }

            async fn fetch_failures(
                conn: &mut Connection,
                ids: &[Uuid],
            ) -> Result<HashMap<TransferId, TransferError>, StoreError> {
                if ids.is_empty() {
                    return Ok(HashMap::new());
                }
                let sql = format!(
                    "SELECT id, error FROM transfer_failures WHERE {}",
                    dialect::in_uuids("id")
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(ids))
                    .fetch_all(&mut *conn)
                    .await?;
                let mut failed = HashMap::with_capacity(rows.len());
                for row in &rows {
                    let id = crate::sql::transfer_id(row.try_get("id")?)?;
                    let name: String = row.try_get("error")?;
                    let error = TransferError::parse(&name).ok_or_else(|| {
                        StoreError::corrupt(format!("transfer error {name}"))
                    })?;
                    failed.insert(id, error);
                }
                Ok(failed)
            }

            /// Pending transfers, locked in id order.
            async fn lock_pendings(
                conn: &mut Connection,
                ids: &[Uuid],
            ) -> Result<Vec<PendingRecord>, StoreError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT {PENDING_COLUMNS} FROM pending_transfers WHERE {} ORDER BY id{}",
                    dialect::in_uuids("id"),
                    dialect::FOR_UPDATE
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(ids))
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter().map(pending).collect()
            }

            /// Assets, share-locked: a cycle cannot close under a batch.
            async fn share_assets(
                conn: &mut Connection,
                codes: &[String],
            ) -> Result<HashMap<AssetCode, AssetState>, StoreError> {
                // Shared with every batch, exclusive for a close: taken before the read, so the
                // read sees any close that committed while this waited.
                dialect::lock_assets_shared(&mut *conn, codes).await?;
                let sql = format!(
                    "SELECT code, closed_at FROM assets WHERE {} ORDER BY code",
                    dialect::in_texts("code"),
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::text_list(codes))
                    .fetch_all(&mut *conn)
                    .await?;
                let mut assets = HashMap::with_capacity(rows.len());
                for row in &rows {
                    let code = crate::sql::asset_code(&row.try_get::<String, _>("code")?)?;
                    let closed = row.try_get::<Option<i64>, _>("closed_at")?.is_some();
                    assets.insert(code.clone(), AssetState { code, closed });
                }
                Ok(assets)
            }

            /// Locks the stripes a batch touches, in (account, slot) order: every stripe of an
            /// account in `whole`, one random stripe of any other.
            async fn lock_accounts(
                conn: &mut Connection,
                accounts: &HashMap<AccountId, CachedAccount>,
                whole: &BTreeSet<AccountId>,
            ) -> Result<Locked, StoreError> {
                let mut keys = Vec::with_capacity(accounts.len());
                let mut slots = HashMap::with_capacity(accounts.len());
                for (id, cached) in accounts {
                    if whole.contains(id) {
                        keys.extend((0..cached.stripes).map(|slot| (id.as_uuid(), slot)));
                    } else {
                        let slot = if cached.stripes > 1 {
                            rand::random_range(0..cached.stripes)
                        } else {
                            0
                        };
                        keys.push((id.as_uuid(), slot));
                        slots.insert(*id, slot);
                    }
                }
                keys.sort_unstable();
                let rows = dialect::lock_balances(conn, &keys).await?;
                if rows.len() != keys.len() {
                    return Err(StoreError::corrupt("missing balance stripes"));
                }
                let mut stripes: HashMap<AccountId, Vec<(i16, [i64; 4])>> = HashMap::new();
                for row in &rows {
                    let id = crate::sql::account_id(row.try_get("account_id")?)?;
                    let slot: i16 = row.try_get("slot")?;
                    let totals: [i64; 4] = [
                        row.try_get("debits_pending")?,
                        row.try_get("debits_posted")?,
                        row.try_get("credits_pending")?,
                        row.try_get("credits_posted")?,
                    ];
                    if whole.contains(&id) {
                        stripes.entry(id).or_default().push((slot, totals));
                    }
                }
                let balances = stripes
                    .iter()
                    .map(|(id, rows)| Ok((*id, sum_stripes(rows)?)))
                    .collect::<Result<_, StoreError>>()?;
                Ok(Locked {
                    slots,
                    stripes,
                    balances,
                })
            }

            impl $store {
                async fn load_accounts(
                    &self,
                    conn: &mut Connection,
                    ids: &BTreeSet<AccountId>,
                ) -> Result<HashMap<AccountId, CachedAccount>, StoreError> {
                    let (mut found, missing) = self.cache.split(ids);
                    if missing.is_empty() {
                        return Ok(found);
                    }
                    let sql = format!(
                        "SELECT id, asset, owner_org, kind, stripes FROM accounts WHERE {}",
                        dialect::in_uuids("id")
                    );
                    let rows = sqlx::query(&sql)
                        .bind(dialect::uuid_list(&uuids(missing)))
                        .fetch_all(&mut *conn)
                        .await?;
                    let loaded = rows
                        .iter()
                        .map(cached_account)
                        .collect::<Result<Vec<_>, _>>()?;
                    self.cache.remember(&loaded);
                    for cached in loaded {
                        found.insert(cached.account.id(), cached);
                    }
                    Ok(found)
                }

                /// One attempt at a batch: its own transaction around [`Self::apply_in`], committed.
                async fn commit_once(
                    &self,
                    requests: &[Vec<Transfer>],
                    mode: Mode,
                ) -> Result<Vec<Vec<TransferResult>>, StoreError> {
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let now = self.clock.now();
                    let results = self.apply_in(&mut tx, requests, mode, now).await?;
                    tx.commit().await?;
                    Ok(results)
                }

                /// The body of a batch inside the caller's transaction, which it leaves open:
                /// load and lock, decide, write. Nothing is committed; the caller commits (or
                /// rolls back) the transaction with whatever else it wrote, so a feature's
                /// rows (a market's fills, say) commit atomically with their transfers. The
                /// caller's own locks come before these in the global lock order.
                ///
                /// `Mode::Whole` reads every touched balance whole, so the engine can bound
                /// every total exactly (used when a blind update ran out of range).
                /// `Mode::Speculative` decides once on unlocked reads and writes the journal
                /// rows before taking the balance locks, then decides again under the locks and
                /// fails with `SpeculationMissed` unless both decisions agree: the locks are then
                /// held only for the balance updates, so concurrent transactions wait on each
                /// other for less. A caller with rows of its own passes `Mode::Locked` (or
                /// `Mode::Whole` when retrying an out-of-range update).
                pub(crate) async fn apply_in(
                    &self,
                    conn: &mut Connection,
                    requests: &[Vec<Transfer>],
                    mode: Mode,
                    now: Timestamp,
                ) -> Result<Vec<Vec<TransferResult>>, StoreError> {
                    self.apply_ids_in(conn, requests, mode, now, Ids::MayExist).await
                }

                /// [`Self::apply_in`] for a caller that knows, from what it read under its own
                /// locks in this transaction, that no transfer of `requests` was ever committed
                /// or failed (`Ids::Fresh`): the journal is then not searched for them. Were
                /// one there after all, its insert would break the journal's unique key and the
                /// transaction would fail, never commit it twice.
                pub(crate) async fn apply_ids_in(
                    &self,
                    conn: &mut Connection,
                    requests: &[Vec<Transfer>],
                    mode: Mode,
                    now: Timestamp,
                    ids: Ids,
                ) -> Result<Vec<Vec<TransferResult>>, StoreError> {
                    let needs = Requirements::of(requests);
                    let pending_ids = uuids(needs.pending_ids.iter().copied());
                    let pendings = lock_pendings(&mut *conn, &pending_ids).await?;

                    let mut account_ids = needs.account_ids;
                    for pending in &pendings {
                        account_ids.insert(pending.debit_account_id);
                        account_ids.insert(pending.credit_account_id);
                    }
                    let accounts = self.load_accounts(&mut *conn, &account_ids).await?;
                    let codes: BTreeSet<String> = accounts
                        .values()
                        .map(|cached| cached.account.asset().to_string())
                        .collect();
                    let codes: Vec<String> = codes.into_iter().collect();
                    let assets = share_assets(&mut *conn, &codes).await?;

                    let whole = if mode == Mode::Whole {
                        accounts.keys().copied().collect()
                    } else {
                        engine::full_balance_accounts(requests, |id| {
                            accounts.get(&id).map(|cached| cached.account.kind())
                        })
                    };
                    let input = |balances: &HashMap<AccountId, Balance>,
                                 committed: Vec<JournalEntry>,
                                 failed: HashMap<TransferId, TransferError>| BatchInput {
                        now,
                        assets: assets.clone(),
                        accounts: accounts
                            .iter()
                            .map(|(id, cached)| {
                                let loaded = LoadedAccount {
                                    account: cached.account.clone(),
                                    balance: balances.get(id).copied(),
                                    max_total: max_total(cached.stripes),
                                };
                                (*id, loaded)
                            })
                            .collect(),
                        committed: committed
                            .into_iter()
                            .map(|entry| (entry.record.id, entry.record))
                            .collect(),
                        failed,
                        pendings: pendings.iter().map(|p| (p.id, p.clone())).collect(),
                    };

                    let mut recheck = match ids {
                        Ids::MayExist => uuids(needs.transfer_ids.iter().copied()),
                        Ids::Fresh => Vec::new(),
                    };
                    let mut written = Vec::new();
                    if mode == Mode::Speculative {
                        let balances = read_balances(&mut *conn, &whole).await?;
                        let committed = fetch_entries(&mut *conn, &recheck).await?;
                        let failed = fetch_failures(&mut *conn, &recheck).await?;
                        let guess = engine::apply(input(&balances, committed, failed), requests)?;
                        dialect::insert_transfers(&mut *conn, &guess.inserts).await?;
                        let ids: HashSet<Uuid> =
                            guess.inserts.iter().map(|r| r.id.as_uuid()).collect();
                        recheck.retain(|id| !ids.contains(id));
                        written = guess.inserts;
                    }

                    let locked = lock_accounts(&mut *conn, &accounts, &whole).await?;
                    // Only now, under the locks: a transaction that carried the same transfer
                    // and held these rows has committed, and each statement of READ COMMITTED
                    // sees it, so a concurrent duplicate is answered `exists`. (A transfer
                    // written speculatively needs no second look: had another transaction
                    // committed its id, the insert would have failed on the unique key.)
                    let committed = fetch_entries(&mut *conn, &recheck).await?;
                    let failed = fetch_failures(&mut *conn, &recheck).await?;
                    let outcome = engine::apply(input(&locked.balances, committed, failed), requests)?;

                    if mode == Mode::Speculative {
                        if outcome.inserts != written {
                            return Err(StoreError::SpeculationMissed);
                        }
                    } else {
                        dialect::insert_transfers(&mut *conn, &outcome.inserts).await?;
                    }
                    dialect::insert_pendings(&mut *conn, &outcome.pending_inserts).await?;
                    dialect::update_pendings(&mut *conn, &outcome.pending_updates).await?;
                    dialect::insert_failures(&mut *conn, &outcome.failures, now).await?;
                    let changes = stripe_changes(&outcome.deltas, &locked)?;
                    dialect::apply_deltas(&mut *conn, &changes).await?;
                    Ok(outcome.results)
                }

                async fn expire_once(&self, limit: u32, mode: Mode) -> Result<u32, StoreError> {
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let now = self.clock.now();
                    let sql = format!(
                        "SELECT {PENDING_COLUMNS} FROM pending_transfers WHERE state = 0 AND id IN \
                         (SELECT id FROM pending_transfers WHERE state = 0 AND expires_at <= $1 \
                         ORDER BY expires_at LIMIT $2) ORDER BY id{}",
                        dialect::FOR_UPDATE_SKIP_LOCKED
                    );
                    let rows = sqlx::query(&sql)
                        .bind(now.as_micros())
                        .bind(i64::from(limit))
                        .fetch_all(&mut *tx)
                        .await?;
                    let due = rows.iter().map(pending).collect::<Result<Vec<_>, _>>()?;
                    if due.is_empty() {
                        return Ok(0);
                    }
                    let outcome = engine::expire(due, now);
                    let ids: BTreeSet<AccountId> =
                        outcome.deltas.iter().map(|(id, _)| *id).collect();
                    let accounts = self.load_accounts(&mut tx, &ids).await?;
                    let whole = if mode == Mode::Whole { ids } else { BTreeSet::new() };
                    let locked = lock_accounts(&mut tx, &accounts, &whole).await?;
                    dialect::update_pendings(&mut tx, &outcome.updates).await?;
                    let changes = stripe_changes(&outcome.deltas, &locked)?;
                    dialect::apply_deltas(&mut tx, &changes).await?;
                    tx.commit().await?;
                    u32::try_from(outcome.updates.len()).map_err(StoreError::corrupt)
                }

                async fn create_accounts_once(
                    &self,
                    accounts: &[Account],
                ) -> Result<Vec<Result<(), CreateAccountError>>, StoreError> {
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let now = self.clock.now().as_micros();
                    let mut results = Vec::with_capacity(accounts.len());
                    for account in accounts {
                        results.push(create_account(&mut tx, account, now).await?);
                    }
                    tx.commit().await?;
                    Ok(results)
                }

                /// Runs `attempt` again while it fails with an error worth a retry, starting
                /// in `mode`. A missed speculation runs again with locks first; a blind
                /// balance update that ran out of a stripe's range runs again in whole mode,
                /// which bounds every total and rebalances stripes.
                pub(crate) async fn retrying<T, F, Fut>(&self, mut mode: Mode, attempt: F) -> Result<T, StoreError>
                where
                    F: Fn(Mode) -> Fut,
                    Fut: std::future::Future<Output = Result<T, StoreError>>,
                {
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        match attempt(mode).await {
                            Err(StoreError::SpeculationMissed) => {
                                tracing::debug!("a speculative batch guessed wrong; locking first");
                                mode = Mode::Locked;
                            }
                            Err(StoreError::Database(error))
                                if mode != Mode::Whole && dialect::is_out_of_range(&error) =>
                            {
                                tracing::info!(%error, "a balance stripe ran out of range; retrying with whole balances");
                                mode = Mode::Whole;
                            }
                            Err(StoreError::Database(error)) if dialect::is_retryable(&error) => {
                                if tries >= MAX_ATTEMPTS {
                                    return Err(StoreError::Busy { attempts: tries });
                                }
                                tracing::debug!(%error, tries, "retrying a transaction");
                                backoff(tries).await;
                            }
                            other => return other,
                        }
                    }
                }
            }

            /// Unlocked sums of the stripes of these accounts: a guess, for speculation.
            async fn read_balances(
                conn: &mut Connection,
                ids: &BTreeSet<AccountId>,
            ) -> Result<HashMap<AccountId, Balance>, StoreError> {
                if ids.is_empty() {
                    return Ok(HashMap::new());
                }
                let sql = format!(
                    "SELECT account_id, \
                     CAST(SUM(debits_pending) AS BIGINT) AS debits_pending, \
                     CAST(SUM(debits_posted) AS BIGINT) AS debits_posted, \
                     CAST(SUM(credits_pending) AS BIGINT) AS credits_pending, \
                     CAST(SUM(credits_posted) AS BIGINT) AS credits_posted \
                     FROM account_balances WHERE {} GROUP BY account_id",
                    dialect::in_uuids("account_id")
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(&uuids(ids.iter().copied())))
                    .fetch_all(&mut *conn)
                    .await?;
                let mut balances = HashMap::with_capacity(rows.len());
                for row in &rows {
                    let id = crate::sql::account_id(row.try_get("account_id")?)?;
                    let value = balance([
                        row.try_get("debits_pending")?,
                        row.try_get("debits_posted")?,
                        row.try_get("credits_pending")?,
                        row.try_get("credits_posted")?,
                    ])?;
                    balances.insert(id, value);
                }
                Ok(balances)
            }

            async fn create_account(
                conn: &mut Connection,
                account: &Account,
                now: i64,
            ) -> Result<Result<(), CreateAccountError>, StoreError> {
                let id = account.id().as_uuid();
                let owner = account.owner().org().map(|org| org.as_uuid());
                let existing = sqlx::query(
                    "SELECT id, asset, owner_org, kind, stripes FROM accounts WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(row) = existing {
                    let stored = cached_account(&row)?.account;
                    return Ok(Err(if stored.asset() != account.asset() {
                        CreateAccountError::ExistsWithDifferentAsset
                    } else if stored.owner() != account.owner() {
                        CreateAccountError::ExistsWithDifferentOwner
                    } else if stored.kind() != account.kind() {
                        CreateAccountError::ExistsWithDifferentKind
                    } else {
                        CreateAccountError::Exists
                    }));
                }
                let duplicate = sqlx::query(
                    "SELECT id FROM accounts WHERE asset = $1 AND kind = $2 \
                     AND owner_org IS NOT DISTINCT FROM $3",
                )
                .bind(account.asset().as_str())
                .bind(account.kind().number())
                .bind(owner)
                .fetch_optional(&mut *conn)
                .await?;
                if duplicate.is_some() {
                    return Ok(Err(CreateAccountError::DuplicateOwnerKindAsset));
                }
                let asset = sqlx::query("SELECT code FROM assets WHERE code = $1")
                    .bind(account.asset().as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                if asset.is_none() {
                    return Ok(Err(CreateAccountError::AssetNotFound));
                }
                let stripes = if account.is_striped() { HOT_ACCOUNT_STRIPES } else { 1 };
                sqlx::query(
                    "INSERT INTO accounts (id, asset, owner_org, kind, stripes, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(id)
                .bind(account.asset().as_str())
                .bind(owner)
                .bind(account.kind().number())
                .bind(stripes)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                for slot in 0..stripes {
                    sqlx::query("INSERT INTO account_balances (account_id, slot) VALUES ($1, $2)")
                        .bind(id)
                        .bind(slot)
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(Ok(()))
            }

            async fn account_views(
                conn: &mut Connection,
                filter: &str,
                ids: Option<&[Uuid]>,
            ) -> Result<Vec<AccountView>, StoreError> {
                let sql = ACCOUNT_VIEW_SQL.replace("{filter}", filter);
                let query = sqlx::query(&sql);
                let query = match ids {
                    Some(ids) => query.bind(dialect::uuid_list(ids)),
                    None => query,
                };
                let rows = query.fetch_all(&mut *conn).await?;
                rows.iter().map(account_view).collect()
            }

            async fn journal_totals(conn: &mut Connection) -> Result<JournalTotals, StoreError> {
                const POSTED: &str = "FROM transfers WHERE kind IN (0, 2)";
                const PENDING: &str = "FROM transfers t JOIN pending_transfers p ON p.id = t.id \
                                       WHERE t.kind = 1 AND p.state = 0";
                let queries = [
                    format!("SELECT debit_account_id AS account, CAST(SUM(amount) AS BIGINT) AS total {POSTED} GROUP BY debit_account_id"),
                    format!("SELECT credit_account_id AS account, CAST(SUM(amount) AS BIGINT) AS total {POSTED} GROUP BY credit_account_id"),
                    format!("SELECT t.debit_account_id AS account, CAST(SUM(t.amount) AS BIGINT) AS total {PENDING} GROUP BY t.debit_account_id"),
                    format!("SELECT t.credit_account_id AS account, CAST(SUM(t.amount) AS BIGINT) AS total {PENDING} GROUP BY t.credit_account_id"),
                ];
                let mut totals = JournalTotals::new();
                for (index, sql) in queries.iter().enumerate() {
                    let rows = sqlx::query(sql).fetch_all(&mut *conn).await?;
                    for row in &rows {
                        let id = crate::sql::account_id(row.try_get("account")?)?;
                        let total: i64 = row.try_get("total")?;
                        let total = u64::try_from(total).map_err(StoreError::corrupt)?;
                        let balance = totals.entry(id).or_default();
                        match index {
                            0 => balance.debits_posted = total,
                            1 => balance.credits_posted = total,
                            2 => balance.debits_pending = total,
                            _ => balance.credits_pending = total,
                        }
                    }
                }
                Ok(totals)
            }

            /// Journal rows that break pending bookkeeping.
            const BROKEN_PENDING_LINKS_SQL: &str = "SELECT \
                (SELECT COUNT(*) FROM transfers t LEFT JOIN pending_transfers p ON p.id = t.id \
                  WHERE t.kind = 1 AND p.id IS NULL) \
              + (SELECT COUNT(*) FROM pending_transfers p JOIN transfers t ON t.id = p.id \
                  WHERE t.kind <> 1 OR t.amount <> p.amount \
                     OR t.debit_account_id <> p.debit_account_id \
                     OR t.credit_account_id <> p.credit_account_id) \
              + (SELECT COUNT(*) FROM pending_transfers p LEFT JOIN transfers r ON r.id = p.resolved_by \
                  WHERE p.state IN (1, 2) AND (r.id IS NULL OR r.pending_id <> p.id)) \
              + (SELECT COUNT(*) FROM transfers r LEFT JOIN pending_transfers p ON p.id = r.pending_id \
                  WHERE r.kind IN (2, 3) AND (p.id IS NULL OR p.resolved_by <> r.id)) \
              + (SELECT COUNT(*) FROM pending_transfers p LEFT JOIN transfers t ON t.id = p.id \
                  WHERE t.id IS NULL) \
              AS broken";

            /// Journal rows naming an account that does not exist, or of another asset.
            const ORPHANS_SQL: &str = "SELECT COUNT(*) AS orphans FROM transfers t \
                LEFT JOIN accounts d ON d.id = t.debit_account_id \
                LEFT JOIN accounts c ON c.id = t.credit_account_id \
                WHERE d.id IS NULL OR c.id IS NULL OR d.asset <> t.asset OR c.asset <> t.asset";

            const LEG_SQL_TEMPLATE: &str = crate::audit::LEG_SQL;

            /// The journal rows (with their accounts) a leg query selects; `ids` bound as `$1`.
            async fn fetch_legs(
                conn: &mut Connection,
                sql: &str,
                ids: Option<&[Uuid]>,
            ) -> Result<Vec<crate::audit::LegRow>, StoreError> {
                let mut query = sqlx::query(sql);
                if let Some(ids) = ids {
                    query = query.bind(dialect::uuid_list(ids));
                }
                let rows = query.fetch_all(&mut *conn).await?;
                let mut legs = Vec::with_capacity(rows.len());
                for row in &rows {
                    legs.push(crate::audit::LegRow {
                        seq: row.try_get("seq")?,
                        id: row.try_get("id")?,
                        kind: row.try_get("kind")?,
                        code: row.try_get("code")?,
                        asset: row.try_get("asset")?,
                        amount: row.try_get("amount")?,
                        timestamp: row.try_get("timestamp")?,
                        debit_account: row.try_get("debit_account_id")?,
                        debit_kind: row.try_get("debit_kind")?,
                        debit_org: row.try_get("debit_org")?,
                        credit_account: row.try_get("credit_account_id")?,
                        credit_kind: row.try_get("credit_kind")?,
                        credit_org: row.try_get("credit_org")?,
                    });
                }
                Ok(legs)
            }

            #[async_trait]
            impl Store for $store {
                fn backend(&self) -> Backend {
                    $backend
                }

                fn clock(&self) -> &Arc<dyn Clock> {
                    &self.clock
                }

                async fn ping(&self) -> Result<(), StoreError> {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                }

                async fn close(&self) {
                    self.pool.close().await;
                }

                fn pool_status(&self) -> crate::PoolStatus {
                    crate::PoolStatus {
                        size: self.pool.size(),
                        idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
                    }
                }

                async fn create_asset(&self, code: &AssetCode) -> Result<bool, StoreError> {
                    let class: i16 = match code.class() {
                        credex_ledger::AssetClass::Credit => 0,
                        credex_ledger::AssetClass::Token => 1,
                    };
                    let now = self.clock.now().as_micros();
                    self.retrying(Mode::Locked, |_| async {
                        let done = sqlx::query(
                            "INSERT INTO assets (code, class, closed_at, created_at) \
                             VALUES ($1, $2, NULL, $3) ON CONFLICT (code) DO NOTHING",
                        )
                        .bind(code.as_str())
                        .bind(class)
                        .bind(now)
                        .execute(&self.pool)
                        .await?;
                        Ok(done.rows_affected() == 1)
                    })
                    .await
                }

                async fn close_asset(&self, code: &AssetCode) -> Result<CloseOutcome, StoreError> {
                    if code.class() != credex_ledger::AssetClass::Token {
                        return Ok(CloseOutcome::NotACycle);
                    }
                    self.retrying(Mode::Locked, |_| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        // Waits for every batch holding the asset shared.
                        dialect::lock_asset_exclusive(&mut tx, code.as_str()).await?;
                        let sql = format!(
                            "SELECT closed_at FROM assets WHERE code = $1{}",
                            dialect::FOR_UPDATE
                        );
                        let row = sqlx::query(&sql)
                            .bind(code.as_str())
                            .fetch_optional(&mut *tx)
                            .await?;
                        let Some(row) = row else {
                            return Ok(CloseOutcome::NotFound);
                        };
                        if row.try_get::<Option<i64>, _>("closed_at")?.is_some() {
                            return Ok(CloseOutcome::AlreadyClosed);
                        }
                        sqlx::query("UPDATE assets SET closed_at = $1 WHERE code = $2")
                            .bind(self.clock.now().as_micros())
                            .bind(code.as_str())
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        Ok(CloseOutcome::Closed)
                    })
                    .await
                }

                async fn assets(&self) -> Result<Vec<AssetView>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT code, closed_at, created_at FROM assets ORDER BY code",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok(AssetView {
                                code: crate::sql::asset_code(&row.try_get::<String, _>("code")?)?,
                                closed_at: row
                                    .try_get::<Option<i64>, _>("closed_at")?
                                    .map(Timestamp::from_micros),
                                created_at: Timestamp::from_micros(row.try_get("created_at")?),
                            })
                        })
                        .collect()
                }

                async fn create_accounts(
                    &self,
                    accounts: &[Account],
                ) -> Result<Vec<Result<(), CreateAccountError>>, StoreError> {
                    self.retrying(Mode::Locked, |_| self.create_accounts_once(accounts)).await
                }

                async fn commit(
                    &self,
                    requests: &[Vec<Transfer>],
                ) -> Result<Vec<Vec<TransferResult>>, StoreError> {
                    let size: usize = requests.iter().map(Vec::len).sum();
                    let mode = if dialect::SPECULATE && size >= crate::sql::speculate_min() {
                        Mode::Speculative
                    } else {
                        Mode::Locked
                    };
                    self.retrying(mode, |mode| self.commit_once(requests, mode)).await
                }

                async fn expire_pending(&self, limit: u32) -> Result<u32, StoreError> {
                    self.retrying(Mode::Locked, |mode| self.expire_once(limit, mode)).await
                }

                async fn accounts(&self, ids: &[AccountId]) -> Result<Vec<AccountView>, StoreError> {
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut conn = self.pool.acquire().await?;
                    let filter = dialect::in_uuids("a.id");
                    let ids_uuid = uuids(ids.iter().copied());
                    let views = account_views(&mut conn, &filter, Some(&ids_uuid)).await?;
                    let mut by_id: HashMap<AccountId, AccountView> =
                        views.into_iter().map(|v| (v.account.id(), v)).collect();
                    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
                }

                async fn find_account(
                    &self,
                    asset: &AssetCode,
                    owner: Owner,
                    kind: AccountKind,
                ) -> Result<Option<AccountView>, StoreError> {
                    let row = sqlx::query(
                        "SELECT id FROM accounts WHERE asset = $1 AND kind = $2 \
                         AND owner_org IS NOT DISTINCT FROM $3",
                    )
                    .bind(asset.as_str())
                    .bind(kind.number())
                    .bind(owner.org().map(|org| org.as_uuid()))
                    .fetch_optional(&self.pool)
                    .await?;
                    let Some(row) = row else {
                        return Ok(None);
                    };
                    let id = crate::sql::account_id(row.try_get("id")?)?;
                    Ok(self.accounts(&[id]).await?.pop())
                }

                async fn accounts_of(&self, owner: Owner) -> Result<Vec<AccountView>, StoreError> {
                    let sql = ACCOUNT_VIEW_SQL.replace("{filter}", "a.owner_org IS NOT DISTINCT FROM $1");
                    let rows = sqlx::query(&sql)
                        .bind(owner.org().map(|org| org.as_uuid()))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(account_view).collect()
                }

                async fn balance_as_of(
                    &self,
                    id: AccountId,
                    at: Timestamp,
                ) -> Result<Option<Balance>, StoreError> {
                    let row = sqlx::query(
                        "SELECT (SELECT COUNT(*) FROM accounts WHERE id = $1) AS found, \
                         (SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM transfers \
                           WHERE debit_account_id = $1 AND timestamp <= $2 AND kind IN (0, 2)) AS debits_posted, \
                         (SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM transfers \
                           WHERE credit_account_id = $1 AND timestamp <= $2 AND kind IN (0, 2)) AS credits_posted, \
                         (SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM pending_transfers \
                           WHERE debit_account_id = $1 AND timestamp <= $2 \
                           AND (resolved_at IS NULL OR resolved_at > $2) \
                           AND (expires_at IS NULL OR expires_at > $2)) AS debits_pending, \
                         (SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM pending_transfers \
                           WHERE credit_account_id = $1 AND timestamp <= $2 \
                           AND (resolved_at IS NULL OR resolved_at > $2) \
                           AND (expires_at IS NULL OR expires_at > $2)) AS credits_pending",
                    )
                    .bind(id.as_uuid())
                    .bind(at.as_micros())
                    .fetch_one(&self.pool)
                    .await?;
                    if row.try_get::<i64, _>("found")? == 0 {
                        return Ok(None);
                    }
                    Ok(Some(balance([
                        row.try_get("debits_pending")?,
                        row.try_get("debits_posted")?,
                        row.try_get("credits_pending")?,
                        row.try_get("credits_posted")?,
                    ])?))
                }

                async fn history(
                    &self,
                    id: AccountId,
                    after: Option<HistoryCursor>,
                    limit: u32,
                ) -> Result<Vec<JournalEntry>, StoreError> {
                    let limit = i64::from(limit.clamp(1, crate::PAGE_MAX));
                    let (timestamp, seq) = after.map_or((i64::MIN, i64::MIN), |cursor| {
                        (cursor.timestamp.as_micros(), cursor.seq)
                    });
                    let side = |column: &str| {
                        format!(
                            "SELECT * FROM (SELECT {TRANSFER_COLUMNS} FROM transfers \
                             WHERE {column} = $1 AND (timestamp, seq) > ($2, $3) \
                             ORDER BY timestamp, seq LIMIT $4) AS {column}_side"
                        )
                    };
                    let sql = format!(
                        "{} UNION ALL {} ORDER BY timestamp, seq LIMIT $4",
                        side("debit_account_id"),
                        side("credit_account_id")
                    );
                    let rows = sqlx::query(&sql)
                        .bind(id.as_uuid())
                        .bind(timestamp)
                        .bind(seq)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(entry).collect()
                }

                async fn transfers(&self, ids: &[TransferId]) -> Result<Vec<JournalEntry>, StoreError> {
                    let mut conn = self.pool.acquire().await?;
                    fetch_entries(&mut conn, &uuids(ids.iter().copied())).await
                }

                async fn pendings(&self, ids: &[TransferId]) -> Result<Vec<PendingRecord>, StoreError> {
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    let sql = format!(
                        "SELECT {PENDING_COLUMNS} FROM pending_transfers WHERE {} ORDER BY id",
                        dialect::in_uuids("id")
                    );
                    let rows = sqlx::query(&sql)
                        .bind(dialect::uuid_list(&uuids(ids.iter().copied())))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(pending).collect()
                }

                async fn journal(
                    &self,
                    after_seq: i64,
                    limit: u32,
                ) -> Result<Vec<JournalEntry>, StoreError> {
                    let sql = format!(
                        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE seq > $1 ORDER BY seq LIMIT $2"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(after_seq)
                        .bind(i64::from(limit.clamp(1, crate::PAGE_MAX)))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(entry).collect()
                }

                async fn snapshot(&self) -> Result<Vec<AccountView>, StoreError> {
                    let mut conn = self.pool.acquire().await?;
                    account_views(&mut conn, "1 = 1", None).await
                }

                async fn read_books(&self, sink: &mut dyn BooksSink) -> Result<(), StoreError> {
                    let mut tx = dialect::begin_snapshot(&self.pool).await?;
                    for view in account_views(&mut tx, "1 = 1", None).await? {
                        sink.account(&view);
                    }
                    let sql = format!(
                        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE seq > $1 ORDER BY seq LIMIT $2"
                    );
                    let mut after = i64::MIN;
                    loop {
                        let rows = sqlx::query(&sql)
                            .bind(after)
                            .bind(i64::from(crate::PAGE_MAX))
                            .fetch_all(&mut *tx)
                            .await?;
                        for row in &rows {
                            let entry = entry(row)?;
                            after = entry.seq;
                            sink.entry(&entry);
                        }
                        if rows.len() < crate::PAGE_MAX as usize {
                            break;
                        }
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn check(&self) -> Result<CheckReport, StoreError> {
                    let mut tx = dialect::begin_snapshot(&self.pool).await?;
                    let stored = account_views(&mut tx, "1 = 1", None).await?;
                    let journal = journal_totals(&mut tx).await?;
                    let entries: i64 = sqlx::query("SELECT COUNT(*) AS n FROM transfers")
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("n")?;
                    let broken: i64 = sqlx::query(BROKEN_PENDING_LINKS_SQL)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("broken")?;
                    let orphans: i64 = sqlx::query(ORPHANS_SQL)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("orphans")?;
                    tx.commit().await?;
                    Ok(CheckReport::build(&stored, &journal, entries, broken, orphans))
                }

                async fn audit_invariants(&self) -> Result<crate::AuditReport, StoreError> {
                    use crate::audit::{self, BuybackRow, FillRow, LegRow};
                    // An account the ledger cannot read (a CR account of a token-only kind,
                    // say) makes the books check fail; the checks below still name it.
                    let (books, books_unreadable) = match self.check().await {
                        Ok(books) => (books, None),
                        Err(StoreError::Corrupt(what)) => (CheckReport::default(), Some(what)),
                        Err(error) => return Err(error),
                    };
                    let mut tx = dialect::begin_snapshot(&self.pool).await?;
                    let legs = |filter: &str| LEG_SQL_TEMPLATE.replace("{filter}", filter);
                    let one_hop = fetch_legs(&mut tx, &legs(audit::ONE_HOP_FILTER), None).await?;
                    let closed_loop =
                        fetch_legs(&mut tx, &legs(audit::CLOSED_LOOP_FILTER), None).await?;
                    let closed_cycles =
                        fetch_legs(&mut tx, &legs(audit::CLOSED_CYCLE_FILTER), None).await?;
                    let mut misplaced_accounts = Vec::new();
                    for row in sqlx::query(audit::MISPLACED_ACCOUNTS_SQL)
                        .fetch_all(&mut *tx)
                        .await?
                    {
                        misplaced_accounts.push(crate::audit::MisplacedAccount {
                            account_id: row.try_get("id")?,
                            asset: row.try_get("asset")?,
                            kind: audit::kind_name(row.try_get("kind")?),
                        });
                    }
                    let mut open_assets_of_closed_cycles = Vec::new();
                    for row in sqlx::query(audit::OPEN_ASSETS_OF_CLOSED_CYCLES_SQL)
                        .fetch_all(&mut *tx)
                        .await?
                    {
                        open_assets_of_closed_cycles.push(crate::audit::OpenAssetOfClosedCycle {
                            cycle: row.try_get("cycle")?,
                            asset: row.try_get("code")?,
                        });
                    }
                    let mut fills = Vec::new();
                    for row in sqlx::query(audit::FILLS_SQL).fetch_all(&mut *tx).await? {
                        fills.push(FillRow {
                            id: row.try_get("id")?,
                            order_id: row.try_get("order_id")?,
                            asset: row.try_get("asset")?,
                            listing_id: row.try_get("listing_id")?,
                            buyer: row.try_get("buyer_org")?,
                            seller: row.try_get("seller_org")?,
                            quantity: row.try_get("quantity")?,
                            cost: row.try_get("cost_micro_cr")?,
                            fee: row.try_get("fee_micro_cr")?,
                            fee_payer: row.try_get("fee_payer")?,
                            transfer_ids: row.try_get("transfer_ids")?,
                        });
                    }
                    let mut buybacks = Vec::new();
                    for row in sqlx::query(audit::BUYBACKS_SQL).fetch_all(&mut *tx).await? {
                        buybacks.push(BuybackRow {
                            id: row.try_get("id")?,
                            org: row.try_get("org_id")?,
                            asset: row.try_get("asset")?,
                            quantity: row.try_get("quantity")?,
                            payout: row.try_get("payout_micro_cr")?,
                            transfer_ids: row.try_get("transfer_ids")?,
                        });
                    }
                    let mut chain_legs: HashMap<Uuid, LegRow> = HashMap::new();
                    let by_id = legs(&dialect::in_uuids("t.id"));
                    for ids in audit::chain_ids(&fills, &buybacks).chunks(500) {
                        for leg in fetch_legs(&mut tx, &by_id, Some(ids)).await? {
                            chain_legs.insert(leg.id, leg);
                        }
                    }
                    let mut budgets = Vec::new();
                    for row in sqlx::query(audit::BUDGETS_SQL).fetch_all(&mut *tx).await? {
                        budgets.push(crate::audit::BudgetBreach {
                            budget_id: row.try_get("id")?,
                            org_id: row.try_get("org_id")?,
                            name: row.try_get("name")?,
                            period: row.try_get("period")?,
                            period_start: row.try_get("period_start")?,
                            spent_micro_cr: row.try_get("spent_micro_cr")?,
                            limit_micro_cr: row.try_get("limit_micro_cr")?,
                        });
                    }
                    let budget_periods: i64 = sqlx::query("SELECT COUNT(*) AS n FROM budget_spend")
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("n")?;
                    tx.commit().await?;
                    let mut market_chains = audit::check_fills(&fills, &chain_legs);
                    market_chains.extend(audit::check_buybacks(&buybacks, &chain_legs));
                    Ok(crate::AuditReport {
                        books,
                        books_unreadable,
                        one_hop: one_hop.iter().map(Into::into).collect(),
                        closed_loop: closed_loop.iter().map(Into::into).collect(),
                        misplaced_accounts,
                        closed_cycles: closed_cycles.iter().map(Into::into).collect(),
                        open_assets_of_closed_cycles,
                        market_chains,
                        budgets,
                        fills: fills.len(),
                        buybacks: buybacks.len(),
                        budget_periods,
                    })
                }
            }
        }
    };
}

pub(crate) use shared_store;

/// Expands `append_audit(conn, entry)` in a store module (which names its backend's
/// `Connection` type, and imports `AuditEntry`, `UserId` and `OrgId`): the audit row, written
/// in the caller's transaction, so a change and its record commit together. `$error` is the
/// module's error type (any `From<sqlx::Error>`).
macro_rules! append_audit_fn {
    ($error:ty) => {
        async fn append_audit(conn: &mut Connection, entry: &AuditEntry) -> Result<(), $error> {
            sqlx::query(
                "INSERT INTO audit_log (id, at, actor_id, org_id, action, target, details) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(entry.id().as_uuid())
            .bind(entry.at().as_micros())
            .bind(entry.actor().map(UserId::as_uuid))
            .bind(entry.org().map(OrgId::as_uuid))
            .bind(entry.action().as_str())
            .bind(entry.target())
            .bind(entry.details().to_string())
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
    };
}

pub(crate) use append_audit_fn;
