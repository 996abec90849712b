//! What an org's statement reads: its accounts' balances at two instants and what moved them
//! in between, all read at one instant.
//!
//! The store decides nothing about a statement (the service in `credex-api` classifies and
//! reconciles); it answers one read, [`StatementStore::statement_rows`], in one snapshot
//! transaction, so the balances and the movements it returns always belong together even while
//! transfers keep arriving:
//!
//! - each account's balance as it stood just before its window opened and at its window's end
//!   (the same sums as [`crate::Store::balance_as_of`]);
//! - the posted movements of its window (single transfers and posts of pending ones), summed
//!   per (account, side, code, the account on the other side) by the database through the
//!   journal's `(account, timestamp, seq)` indexes;
//! - spends and fees, which need a look beyond the journal, a page at a time: a spend is told
//!   apart by the model of the usage event that made it (its metadata names the event, and the
//!   event names the transfer back), a fee by whether the org sold or bought in the fill that
//!   paid it (its metadata names the listing).

use std::collections::BTreeMap;

use async_trait::async_trait;
use credex_ledger::{AccountId, Balance, OrgId, Timestamp, TransferCode};
use uuid::Uuid;

use crate::StoreError;

/// The most accounts one statement may read.
pub const STATEMENT_ACCOUNTS_MAX: usize = 256;

/// One account's window: movements with `from <= timestamp <= to` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementWindow {
    pub account: AccountId,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// Which side of a transfer the org's account was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The account was debited: value left it.
    Debit,
    /// The account was credited: value came in.
    Credit,
}

/// What a spend or a fee was for, when it can be told.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attribution {
    /// A spend of a recorded usage event of this model.
    Model(String),
    /// A fee the org paid on a fill of its own listing.
    Sale,
    /// A fee the org paid on a fill of another org's listing.
    Purchase,
}

/// Posted movements of one account, summed per side, code and account on the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub account: AccountId,
    pub side: Side,
    pub code: TransferCode,
    pub counterparty: AccountId,
    /// Set for spends and fees whose origin is known.
    pub attribution: Option<Attribution>,
    /// How many transfers.
    pub count: u64,
    /// Their amounts added up, in the asset's unit.
    pub amount: u64,
}

/// An account's balance at both ends of its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowBalances {
    pub window: StatementWindow,
    /// Every transfer before `from`.
    pub opening: Balance,
    /// Every transfer up to `to`, included.
    pub closing: Balance,
}

/// What a statement read, at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementRows {
    /// One per window asked, in the order asked.
    pub balances: Vec<WindowBalances>,
    /// In (account, side, code, counterparty, attribution) order.
    pub flows: Vec<Flow>,
}

/// Statement reads, for either backend.
#[async_trait]
pub trait StatementStore: Send + Sync {
    /// Reads the windows of `org`'s accounts in one snapshot (see the module's documentation).
    /// At most [`STATEMENT_ACCOUNTS_MAX`] windows; an account of another org is refused.
    async fn statement_rows(
        &self,
        org: OrgId,
        windows: &[StatementWindow],
    ) -> Result<StatementRows, StoreError>;
}

/// Adds a page's transfers to the sums, keyed as [`Flow`]s are ordered.
pub(crate) type FlowKey = (AccountId, Side, i16, AccountId, Option<Attribution>);

pub(crate) fn add_flow(
    sums: &mut BTreeMap<FlowKey, (u64, u64)>,
    key: FlowKey,
    count: u64,
    amount: u64,
) -> Result<(), StoreError> {
    let entry = sums.entry(key).or_default();
    entry.0 = entry
        .0
        .checked_add(count)
        .ok_or_else(|| StoreError::corrupt("a count beyond range"))?;
    entry.1 = entry
        .1
        .checked_add(amount)
        .ok_or_else(|| StoreError::corrupt("a sum beyond range"))?;
    Ok(())
}

/// The id a transfer's metadata names under `field` (`{"usage_event_id":"…"}`,
/// `{"listing_id":"…"}`), if it names one.
pub(crate) fn named_id(metadata: &str, field: &str) -> Option<Uuid> {
    let value: serde_json::Value = serde_json::from_str(metadata).ok()?;
    Uuid::parse_str(value.get(field)?.as_str()?).ok()
}

/// Expands the shared implementation of [`StatementStore`] for `$store` (whose field `pool` is a
/// `sqlx::Pool<$db>`), with the backend's dialect module `$dialect`.
macro_rules! shared_statements {
    ($store:ident, $db:ty, $dialect:ident) => {
        mod statements_shared {
            use std::collections::{BTreeMap, BTreeSet, HashMap};

            use async_trait::async_trait;
            use credex_ledger::{AccountId, Balance, OrgId, Timestamp, TransferCode};
            use sqlx::Row;
            use uuid::Uuid;

            use super::$dialect as dialect;
            use super::$store;
            use crate::statements::{
                add_flow, named_id, Attribution, Flow, FlowKey, Side, StatementRows,
                StatementStore, StatementWindow, WindowBalances, STATEMENT_ACCOUNTS_MAX,
            };
            use crate::StoreError;

            type Connection = <$db as sqlx::Database>::Connection;

            /// Transfers read per page of spends and fees.
            const PAGE: i64 = 1_000;

            /// An account's four totals from the transfers up to `at`, included (as
            /// `balance_as_of`).
            async fn balance_at(
                conn: &mut Connection,
                id: AccountId,
                at: Timestamp,
            ) -> Result<Balance, StoreError> {
                let row = sqlx::query(
                    "SELECT \
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
                .fetch_one(&mut *conn)
                .await?;
                crate::sql::balance([
                    row.try_get("debits_pending")?,
                    row.try_get("debits_posted")?,
                    row.try_get("credits_pending")?,
                    row.try_get("credits_posted")?,
                ])
            }

            /// Posted movements of the window summed per code and other account, on one side;
            /// on the debit side, spends and fees are left to [`attributed`].
            async fn summed(
                conn: &mut Connection,
                window: &StatementWindow,
                side: Side,
                sums: &mut BTreeMap<FlowKey, (u64, u64)>,
            ) -> Result<(), StoreError> {
                let (own, other, skip) = match side {
                    Side::Debit => ("debit_account_id", "credit_account_id", "AND code NOT IN (4, 8)"),
                    Side::Credit => ("credit_account_id", "debit_account_id", ""),
                };
                let sql = format!(
                    "SELECT {other} AS counterparty, code, COUNT(*) AS n, \
                     CAST(SUM(amount) AS BIGINT) AS total FROM transfers \
                     WHERE {own} = $1 AND timestamp >= $2 AND timestamp <= $3 \
                     AND kind IN (0, 2) {skip} GROUP BY {other}, code"
                );
                let rows = sqlx::query(&sql)
                    .bind(window.account.as_uuid())
                    .bind(window.from.as_micros())
                    .bind(window.to.as_micros())
                    .fetch_all(&mut *conn)
                    .await?;
                for row in &rows {
                    let counterparty = crate::sql::account_id(row.try_get("counterparty")?)?;
                    let code: i16 = row.try_get("code")?;
                    crate::sql::transfer_code(code)?;
                    let count = crate::market::unsigned(row.try_get("n")?)?;
                    let total = crate::market::unsigned(row.try_get("total")?)?;
                    add_flow(sums, (window.account, side, code, counterparty, None), count, total)?;
                }
                Ok(())
            }

            /// A page of the window's posted spends and fees (always debits of the org's
            /// accounts), after the cursor.
            struct Charge {
                id: Uuid,
                counterparty: AccountId,
                code: i16,
                amount: u64,
                metadata: String,
            }

            async fn charges(
                conn: &mut Connection,
                window: &StatementWindow,
                after: (i64, i64),
            ) -> Result<(Vec<Charge>, Option<(i64, i64)>), StoreError> {
                let rows = sqlx::query(
                    "SELECT seq, id, credit_account_id, code, amount, metadata, timestamp \
                     FROM transfers WHERE debit_account_id = $1 AND timestamp >= $2 \
                     AND timestamp <= $3 AND kind IN (0, 2) AND code IN (4, 8) \
                     AND (timestamp > $4 OR (timestamp = $4 AND seq > $5)) \
                     ORDER BY timestamp, seq LIMIT $6",
                )
                .bind(window.account.as_uuid())
                .bind(window.from.as_micros())
                .bind(window.to.as_micros())
                .bind(after.0)
                .bind(after.1)
                .bind(PAGE)
                .fetch_all(&mut *conn)
                .await?;
                let mut last = None;
                let mut page = Vec::with_capacity(rows.len());
                for row in &rows {
                    last = Some((row.try_get::<i64, _>("timestamp")?, row.try_get::<i64, _>("seq")?));
                    page.push(Charge {
                        id: row.try_get("id")?,
                        counterparty: crate::sql::account_id(row.try_get("credit_account_id")?)?,
                        code: row.try_get("code")?,
                        amount: crate::market::unsigned(row.try_get("amount")?)?,
                        metadata: row.try_get("metadata")?,
                    });
                }
                let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) == PAGE;
                Ok((page, last.filter(|_| full)))
            }

            /// The models of the org's usage events among `ids` whose charge holds the
            /// transfer: (event, transfer) → model.
            async fn event_models(
                conn: &mut Connection,
                org: OrgId,
                ids: &[Uuid],
            ) -> Result<HashMap<(Uuid, Uuid), String>, StoreError> {
                if ids.is_empty() {
                    return Ok(HashMap::new());
                }
                let sql = format!(
                    "SELECT id, model, transfer_ids FROM usage_events WHERE {} AND org_id = $2",
                    dialect::in_uuids("id")
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(ids))
                    .bind(org.as_uuid())
                    .fetch_all(&mut *conn)
                    .await?;
                let mut models = HashMap::new();
                for row in &rows {
                    let event: Uuid = row.try_get("id")?;
                    let model: String = row.try_get("model")?;
                    let text: String = row.try_get("transfer_ids")?;
                    for transfer in crate::market::transfer_ids(&text)? {
                        models.insert((event, transfer.as_uuid()), model.clone());
                    }
                }
                Ok(models)
            }

            /// The sellers of the listings among `ids`.
            async fn listing_sellers(
                conn: &mut Connection,
                ids: &[Uuid],
            ) -> Result<HashMap<Uuid, Uuid>, StoreError> {
                if ids.is_empty() {
                    return Ok(HashMap::new());
                }
                let sql = format!(
                    "SELECT id, seller_org FROM listings WHERE {}",
                    dialect::in_uuids("id")
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(ids))
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter()
                    .map(|row| Ok((row.try_get("id")?, row.try_get("seller_org")?)))
                    .collect()
            }

            /// Spends by model and fees by side, a page at a time.
            async fn attributed(
                conn: &mut Connection,
                org: OrgId,
                window: &StatementWindow,
                sums: &mut BTreeMap<FlowKey, (u64, u64)>,
            ) -> Result<(), StoreError> {
                let spend = TransferCode::Spend.number();
                let mut after = (i64::MIN, i64::MIN);
                loop {
                    let (page, next) = charges(conn, window, after).await?;
                    let mut events = BTreeSet::new();
                    let mut listings = BTreeSet::new();
                    for charge in &page {
                        if charge.code == spend {
                            events.extend(named_id(&charge.metadata, "usage_event_id"));
                        } else {
                            listings.extend(named_id(&charge.metadata, "listing_id"));
                        }
                    }
                    let events: Vec<Uuid> = events.into_iter().collect();
                    let listings: Vec<Uuid> = listings.into_iter().collect();
                    let models = event_models(conn, org, &events).await?;
                    let sellers = listing_sellers(conn, &listings).await?;
                    for charge in page {
                        let attribution = if charge.code == spend {
                            named_id(&charge.metadata, "usage_event_id")
                                .and_then(|event| models.get(&(event, charge.id)))
                                .map(|model| Attribution::Model(model.clone()))
                        } else {
                            named_id(&charge.metadata, "listing_id")
                                .and_then(|listing| sellers.get(&listing))
                                .map(|seller| {
                                    if *seller == org.as_uuid() {
                                        Attribution::Sale
                                    } else {
                                        Attribution::Purchase
                                    }
                                })
                        };
                        let key = (window.account, Side::Debit, charge.code, charge.counterparty, attribution);
                        add_flow(sums, key, 1, charge.amount)?;
                    }
                    match next {
                        Some(cursor) => after = cursor,
                        None => return Ok(()),
                    }
                }
            }

            #[async_trait]
            impl StatementStore for $store {
                async fn statement_rows(
                    &self,
                    org: OrgId,
                    windows: &[StatementWindow],
                ) -> Result<StatementRows, StoreError> {
                    if windows.len() > STATEMENT_ACCOUNTS_MAX {
                        return Err(StoreError::corrupt(format!(
                            "a statement reads at most {STATEMENT_ACCOUNTS_MAX} accounts"
                        )));
                    }
                    let mut tx = dialect::begin_snapshot(&self.pool).await?;
                    let ids: Vec<Uuid> = windows.iter().map(|w| w.account.as_uuid()).collect();
                    let owned = accounts_by_id(&mut tx, &ids).await?;
                    for window in windows {
                        let owner = owned.get(&window.account).and_then(|a| a.owner().org());
                        if owner != Some(org) {
                            return Err(StoreError::corrupt(format!(
                                "account {} is not an account of org {org}",
                                window.account
                            )));
                        }
                    }
                    let mut balances = Vec::with_capacity(windows.len());
                    let mut sums = BTreeMap::new();
                    for window in windows {
                        let before = Timestamp::from_micros(window.from.as_micros().saturating_sub(1));
                        let opening = balance_at(&mut tx, window.account, before).await?;
                        let closing = balance_at(&mut tx, window.account, window.to).await?;
                        balances.push(WindowBalances { window: *window, opening, closing });
                        summed(&mut tx, window, Side::Debit, &mut sums).await?;
                        summed(&mut tx, window, Side::Credit, &mut sums).await?;
                        attributed(&mut tx, org, window, &mut sums).await?;
                    }
                    tx.commit().await?;
                    let mut flows = Vec::with_capacity(sums.len());
                    for ((account, side, code, counterparty, attribution), (count, amount)) in sums {
                        flows.push(Flow {
                            account,
                            side,
                            code: crate::sql::transfer_code(code)?,
                            counterparty,
                            attribution,
                            count,
                            amount,
                        });
                    }
                    Ok(StatementRows { balances, flows })
                }
            }

            async fn accounts_by_id(
                conn: &mut Connection,
                ids: &[Uuid],
            ) -> Result<BTreeMap<AccountId, credex_ledger::Account>, StoreError> {
                if ids.is_empty() {
                    return Ok(BTreeMap::new());
                }
                let sql = format!(
                    "SELECT id, asset, owner_org, kind, stripes FROM accounts WHERE {}",
                    dialect::in_uuids("id")
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(ids))
                    .fetch_all(&mut *conn)
                    .await?;
                let mut accounts = BTreeMap::new();
                for row in &rows {
                    let raw = crate::sql::RawAccount {
                        id: row.try_get("id")?,
                        asset: row.try_get("asset")?,
                        owner_org: row.try_get("owner_org")?,
                        kind: row.try_get("kind")?,
                        stripes: row.try_get("stripes")?,
                    };
                    let account = raw.into_cached()?.account;
                    accounts.insert(account.id(), account);
                }
                Ok(accounts)
            }
        }
    };
}

pub(crate) use shared_statements;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_ids() {
        let id = Uuid::now_v7();
        let text = format!(r#"{{"usage_event_id":"{id}"}}"#);
        assert_eq!(named_id(&text, "usage_event_id"), Some(id));
        assert_eq!(named_id(&text, "listing_id"), None);
        assert_eq!(named_id("not json", "listing_id"), None);
        assert_eq!(named_id(r#"{"listing_id":42}"#, "listing_id"), None);
        assert_eq!(named_id(r#"{"listing_id":"nope"}"#, "listing_id"), None);
    }
}
