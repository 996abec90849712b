//! The market in the database: markets (one per token asset), listings, buy orders and their
//! fills, buybacks, and admin-linked org pairs.
//!
//! This layer decides nothing about trading. It gives the market service one primitive,
//! [`MarketStore::market_tx`], that makes a market write atomic and safe with any number of
//! processes on one database:
//!
//! 1. lock the market's row (`FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already
//!    serializes writers), so every write of one market runs alone;
//! 2. read, in the same transaction, what the caller asked for ([`MarketReads`]): the open
//!    listings in book order (in pages, as many as the caller's decision needs), one listing, an
//!    order with its fills, the org's standing and selling so far, its linked orgs, balances;
//! 3. hand that [`MarketView`] to the caller's pure decision, which answers with a
//!    [`MarketWrite`] (transfers and rows), asks for more listings, or stops;
//! 4. write the listing changes (each guarded by the quantity it was decided on), run the
//!    transfers through the ledger in the same transaction, and, when every transfer is
//!    accepted (or answered `exists`, a replay), write the order, fills and buyback rows and
//!    commit; otherwise roll back and return the ledger's answers.
//!
//! Lock order: market row → listing rows → (the ledger's) pending transfers → assets → balance
//! stripes. Every writer of a listing holds its market's row first, so listing rows are never
//! contended by a transaction that does not already hold the market.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use async_trait::async_trait;
use credex_ledger::{
    AccountId, AssetCode, Balance, OrgId, Timestamp, Transfer, TransferId, TransferResult,
};
use serde::Serialize;
use uuid::Uuid;

use crate::identity::{AuditEntry, Org, UserId};
use crate::StoreError;

/// The most listings one page of the book returns.
pub const BOOK_PAGE_MAX: u32 = 1_000;
/// The most listings one market transaction loads. The matching engine passes over at most
/// 10,000 listings and takes at most 2,000 fills per order, so an order never needs more.
pub const BOOK_SCAN_MAX: usize = 16_384;
/// The most rows any other page returns.
pub const MARKET_PAGE_MAX: u32 = 1_000;
/// The most rows one multi-row `INSERT` carries (14 parameters each stays far below either
/// backend's limit on parameters).
pub(crate) const INSERT_ROWS_MAX: usize = 500;
/// The most items one [`MarketStore::market_batch_tx`] takes.
pub const BATCH_ITEMS_MAX: usize = 256;

/// A market: one token asset's settings and listing window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarketRecord {
    pub asset: AssetCode,
    pub class: String,
    pub cycle: String,
    /// The listing window opens (and decay starts) here.
    pub window_open: Timestamp,
    /// The cycle's end: the market closes.
    pub cycle_end: Timestamp,
    /// The service's settings, as the JSON it writes.
    pub settings: String,
    pub settings_updated_at: Timestamp,
    /// The arrival sequence the next listing takes.
    pub next_seq: u64,
    pub created_at: Timestamp,
}

/// One settings change, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingsChange {
    pub changed_at: Timestamp,
    pub window_open: Timestamp,
    pub settings: String,
    pub changed_by: Option<UserId>,
}

/// Where a listing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListingState {
    /// In the book, with tokens for sale.
    Open,
    /// Every token was bought.
    Filled,
    /// Withdrawn by its seller or by the cycle's close; the rest went back to `alloc`.
    Cancelled,
    /// Left open when its asset closed; the cycle's expiry took the rest from `escrow`.
    Expired,
    /// The rest was sold to the provider at the buyback price (automatic sale).
    Sold,
}

impl ListingState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Filled => "filled",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Sold => "sold",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Open,
            Self::Filled,
            Self::Cancelled,
            Self::Expired,
            Self::Sold,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

impl fmt::Display for ListingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listing as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListingRecord {
    pub id: Uuid,
    pub asset: AssetCode,
    pub seller: OrgId,
    /// The seller's `escrow` of the asset and its CR `wallet`, fixed when it listed.
    pub seller_escrow: AccountId,
    pub seller_wallet: AccountId,
    pub ask_per_1m_micro_cr: u64,
    pub seq: u64,
    pub min_fill: u64,
    pub quantity_listed: u64,
    /// Tokens still for sale (in the seller's `escrow` for this listing).
    pub quantity_open: u64,
    /// Tokens bought by buyers.
    pub quantity_filled: u64,
    pub state: ListingState,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub auto_sell_at: Option<Timestamp>,
}

/// A listing to insert; the store gives it the market's next sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewListing {
    pub id: Uuid,
    pub seller: OrgId,
    pub seller_escrow: AccountId,
    pub seller_wallet: AccountId,
    pub ask_per_1m_micro_cr: u64,
    pub min_fill: u64,
    pub quantity: u64,
    pub auto_sell_at: Option<Timestamp>,
}

/// A change to a listing, applied only if its open quantity is still `expected_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingChange {
    pub id: Uuid,
    pub expected_open: u64,
    pub open: u64,
    /// Tokens bought by this change (added to `quantity_filled`).
    pub filled: u64,
    pub state: ListingState,
}

/// Who paid a fill's fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FillFeePayer {
    Seller,
    Buyer,
}

impl FillFeePayer {
    fn as_str(self) -> &'static str {
        match self {
            Self::Seller => "seller",
            Self::Buyer => "buyer",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "seller" => Some(Self::Seller),
            "buyer" => Some(Self::Buyer),
            _ => None,
        }
    }
}

/// Tokens bought in one order from one listing, or from the provider (no listing, no seller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FillRecord {
    pub id: Uuid,
    pub order_id: Uuid,
    /// The fill's place in its order (price-time order, the provider's sale last).
    pub position: u32,
    pub asset: AssetCode,
    pub listing_id: Option<Uuid>,
    pub buyer: OrgId,
    pub seller: Option<OrgId>,
    pub quantity: u64,
    pub price_per_1m_micro_cr: u64,
    pub cost_micro_cr: u64,
    pub fee_micro_cr: u64,
    pub fee_payer: Option<FillFeePayer>,
    pub transfer_ids: Vec<TransferId>,
    pub at: Timestamp,
}

/// A buy order as stored: its id is the request's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRecord {
    pub id: Uuid,
    pub buyer: OrgId,
    pub asset: AssetCode,
    /// What was asked, as the service's JSON.
    pub request: String,
    /// What came of it, as the service's JSON.
    pub result: String,
    pub created_at: Timestamp,
}

/// Tokens sold back to the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuybackRecord {
    pub id: Uuid,
    pub org: OrgId,
    pub asset: AssetCode,
    /// The listing whose rest was sold automatically, if any.
    pub listing_id: Option<Uuid>,
    pub quantity: u64,
    pub price_per_1m_micro_cr: u64,
    pub payout_micro_cr: u64,
    pub transfer_ids: Vec<TransferId>,
    pub at: Timestamp,
}

/// What an org has sold of one market's asset so far, and what buybacks paid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SellUsage {
    /// Tokens the org was allotted in this asset (its `allotment` transfers).
    pub allotted: u64,
    /// Tokens in its open listings.
    pub listed_open: u64,
    /// Tokens buyers bought from its listings.
    pub filled: u64,
    /// Tokens it sold back to the provider.
    pub bought_back: u64,
    /// µCR buybacks paid the org in this market.
    pub org_paid_micro_cr: u64,
    /// µCR buybacks paid all orgs in this market.
    pub market_paid_micro_cr: u64,
}

impl SellUsage {
    /// Tokens counted against the per-cycle sell cap: listed (open or bought) and sold back.
    pub fn committed(&self) -> u64 {
        self.listed_open
            .saturating_add(self.filled)
            .saturating_add(self.bought_back)
    }
}

/// What a market transaction reads, under the market's lock, before its decision.
#[derive(Debug, Clone, Default)]
pub struct MarketReads {
    /// The first page of open listings in book order (ask, then arrival); 0 reads none.
    pub book_page: u32,
    pub listing: Option<Uuid>,
    /// An order and its fills.
    pub order: Option<Uuid>,
    pub buyback: Option<Uuid>,
    /// An org's standing (plan, verification, frozen, age).
    pub org: Option<OrgId>,
    /// An org's selling so far ([`SellUsage`]).
    pub usage_of: Option<OrgId>,
    /// The orgs an admin linked to this one.
    pub links_of: Option<OrgId>,
    /// Current balances (sums of stripes) of these accounts.
    pub balances: Vec<AccountId>,
    /// Which of these transfers are in the journal.
    pub transfers: Vec<TransferId>,
}

/// What a market transaction read, handed to its decision.
#[derive(Debug, Clone)]
pub struct MarketView {
    /// The transaction's instant: its transfers are stamped with it.
    pub now: Timestamp,
    pub market: MarketRecord,
    /// Open listings in book order, as many as loaded so far.
    pub book: Vec<ListingRecord>,
    /// Whether `book` holds every open listing (else the decision may ask for more).
    pub book_complete: bool,
    pub listing: Option<ListingRecord>,
    pub order: Option<(OrderRecord, Vec<FillRecord>)>,
    pub buyback: Option<BuybackRecord>,
    pub org: Option<Org>,
    /// The org's open review flags (with `org`): it cannot trade while it has any.
    pub review_flags: Vec<crate::review::OpenFlag>,
    /// The selling policy admins set, as JSON (with `org`); none: the configuration's.
    pub policy: Option<String>,
    pub usage: Option<SellUsage>,
    pub linked: BTreeSet<OrgId>,
    pub balances: HashMap<AccountId, Balance>,
    pub known_transfers: HashSet<TransferId>,
}

/// What a market transaction writes: one ledger request (a linked chain, usually) and rows.
#[derive(Debug, Clone, Default)]
pub struct MarketWrite {
    pub transfers: Vec<Transfer>,
    pub new_listing: Option<NewListing>,
    pub listing_changes: Vec<ListingChange>,
    pub order: Option<OrderRecord>,
    pub fills: Vec<FillRecord>,
    pub buyback: Option<BuybackRecord>,
}

/// A decision's answer to a [`MarketView`].
#[derive(Debug, Clone)]
pub enum MarketStep {
    Write(Box<MarketWrite>),
    /// Load the next page of the book and decide again (only while `book_complete` is false).
    MoreListings,
    /// Write nothing: the decision refused, or found a replay it answers itself.
    Stop,
}

/// What a market transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarketTxOutcome {
    /// No market for this asset.
    NoMarket,
    /// The decision stopped; nothing was written.
    Stopped,
    /// Everything was written; the ledger's answers (each `Ok` or `exists`), and the listing
    /// inserted, with its sequence number.
    Committed {
        results: Vec<TransferResult>,
        listing: Option<ListingRecord>,
    },
    /// The ledger refused a transfer: nothing was written.
    Refused { results: Vec<TransferResult> },
}

/// The decision of a market transaction: called once, or again after each page of listings it
/// asked for, and again from the start if the transaction is retried.
pub type MarketDecision<'a> = dyn FnMut(&MarketView) -> MarketStep + Send + 'a;

/// The decision of a batch ([`MarketStore::market_batch_tx`]): called for each item in order,
/// with the item's index (again after each page of listings it asks for), and again from the
/// first item if the transaction is retried.
pub type MarketBatchDecision<'a> = dyn FnMut(usize, &MarketView) -> MarketStep + Send + 'a;

/// What a batch of market decisions did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarketBatchOutcome {
    /// No market for this asset.
    NoMarket,
    /// Every item was decided and what they wrote committed together: per item, in order,
    /// `None` where its decision stopped, else the ledger's answers to its chain (each `Ok` or
    /// `exists`).
    Committed(Vec<Option<Vec<TransferResult>>>),
    /// The ledger refused a chain: nothing of the batch was written (the items after it were
    /// decided on a book the refused one had changed). The caller runs the items one by one.
    Refused,
}

/// A batch's running state: the book and balances as the items decided so far left them, and
/// the listing changes they made, merged per listing (the first one's `expected_open`, the
/// last one's `open` and `state`, the sum of `filled`).
#[derive(Debug, Default)]
pub(crate) struct BatchState {
    pub book: Vec<ListingRecord>,
    pub balances: HashMap<AccountId, Balance>,
    pub merged: Vec<ListingChange>,
}

impl BatchState {
    /// Takes in what one item wrote. A change must start from the listing's open quantity in
    /// the book the item saw, and the batch cannot add listings or record buybacks.
    pub(crate) fn apply(&mut self, write: &MarketWrite, now: Timestamp) -> Result<(), StoreError> {
        if write.new_listing.is_some() || write.buyback.is_some() {
            return Err(StoreError::corrupt(
                "a batched market decision may only change listings and write orders",
            ));
        }
        for change in &write.listing_changes {
            let index = self
                .book
                .iter()
                .position(|listing| listing.id == change.id && listing.state == ListingState::Open)
                .ok_or_else(|| {
                    StoreError::corrupt(format!(
                        "a batch changed listing {} not in its book",
                        change.id
                    ))
                })?;
            let listing = &mut self.book[index];
            if listing.quantity_open != change.expected_open {
                return Err(StoreError::corrupt(format!(
                    "a batch changed listing {} from a quantity it did not have",
                    change.id
                )));
            }
            listing.quantity_open = change.open;
            listing.quantity_filled = listing.quantity_filled.saturating_add(change.filled);
            listing.state = change.state;
            listing.updated_at = now;
            if change.state != ListingState::Open {
                self.book.remove(index);
            }
            match self.merged.iter_mut().find(|merged| merged.id == change.id) {
                Some(merged) => {
                    merged.open = change.open;
                    merged.filled = merged.filled.saturating_add(change.filled);
                    merged.state = change.state;
                }
                None => self.merged.push(*change),
            }
        }
        for transfer in &write.transfers {
            if let credex_ledger::Action::Move(movement) = transfer.action() {
                let amount = movement.amount().get();
                if let Some(balance) = self.balances.get_mut(&movement.debit_account_id()) {
                    balance.debits_posted = balance.debits_posted.saturating_add(amount);
                }
                if let Some(balance) = self.balances.get_mut(&movement.credit_account_id()) {
                    balance.credits_posted = balance.credits_posted.saturating_add(amount);
                }
            }
        }
        Ok(())
    }
}

/// Markets, listings, orders, fills, buybacks and org links, for either backend.
#[async_trait]
pub trait MarketStore: Send + Sync {
    /// Creates the market if it does not exist (recording its first settings); returns the
    /// market as stored.
    async fn ensure_market(&self, market: &MarketRecord) -> Result<MarketRecord, StoreError>;

    async fn market(&self, asset: &AssetCode) -> Result<Option<MarketRecord>, StoreError>;

    /// Markets of a cycle (every market with `None`), by asset.
    async fn markets(&self, cycle: Option<&str>) -> Result<Vec<MarketRecord>, StoreError>;

    /// Changes a market's listing window and settings from `audit.at()` on, recording the
    /// change and its audit entry in the same transaction; `None` when there is no market.
    async fn put_market_settings(
        &self,
        asset: &AssetCode,
        window_open: Timestamp,
        settings: &str,
        audit: &AuditEntry,
    ) -> Result<Option<MarketRecord>, StoreError>;

    /// Every settings change of a market, oldest first.
    async fn market_settings_history(
        &self,
        asset: &AssetCode,
    ) -> Result<Vec<SettingsChange>, StoreError>;

    /// One market write, atomic with its ledger chain (see the module documentation).
    async fn market_tx(
        &self,
        asset: &AssetCode,
        reads: &MarketReads,
        decide: &mut MarketDecision<'_>,
    ) -> Result<MarketTxOutcome, StoreError>;

    /// Several decisions on one market in one transaction: one lock, one read of the book, one
    /// commit. Each item sees the book and the balances it asked for as the items before it
    /// left them. An item may read the book, an order, an org (with its open flags and the
    /// policy), its linked orgs and balances — not a listing, a buyback, selling usage or
    /// transfers — and may only change listings and write orders and fills. Two items must
    /// not name the same order.
    async fn market_batch_tx(
        &self,
        asset: &AssetCode,
        reads: &[MarketReads],
        decide: &mut MarketBatchDecision<'_>,
    ) -> Result<MarketBatchOutcome, StoreError>;

    async fn listing(&self, id: Uuid) -> Result<Option<ListingRecord>, StoreError>;

    async fn buyback(&self, id: Uuid) -> Result<Option<BuybackRecord>, StoreError>;

    /// Open listings in book order (ask, then arrival), at most `limit` (up to
    /// [`BOOK_PAGE_MAX`]), after the listing with key `after` (ask, seq).
    async fn book(
        &self,
        asset: &AssetCode,
        after: Option<(u64, u64)>,
        limit: u32,
    ) -> Result<Vec<ListingRecord>, StoreError>;

    /// An org's listings, newest first, optionally of one asset, before `before` (a creation
    /// instant and id), at most `limit`.
    async fn listings_of(
        &self,
        org: OrgId,
        asset: Option<&AssetCode>,
        limit: u32,
    ) -> Result<Vec<ListingRecord>, StoreError>;

    async fn order(&self, id: Uuid) -> Result<Option<(OrderRecord, Vec<FillRecord>)>, StoreError>;

    /// A market's most recent fills, newest first, at most `limit`.
    async fn recent_fills(
        &self,
        asset: &AssetCode,
        limit: u32,
    ) -> Result<Vec<FillRecord>, StoreError>;

    /// Fills of one listing, oldest first.
    async fn listing_fills(&self, listing: Uuid) -> Result<Vec<FillRecord>, StoreError>;

    /// An org's buybacks in a market, oldest first.
    async fn buybacks_of(
        &self,
        org: OrgId,
        asset: &AssetCode,
    ) -> Result<Vec<BuybackRecord>, StoreError>;

    /// Open listings whose automatic sale is due at `now`, the most overdue first, at most
    /// `limit`.
    async fn due_auto_sales(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<ListingRecord>, StoreError>;

    /// Marks every listing still open in a market as expired (its tokens went with the
    /// asset's expiry), under the market's lock; returns how many. For a closed asset only.
    async fn expire_open_listings(
        &self,
        asset: &AssetCode,
        now: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Links two different orgs (they never trade with each other), with an audit entry;
    /// `false` when they were linked already.
    async fn link_orgs(&self, a: OrgId, b: OrgId, audit: &AuditEntry) -> Result<bool, StoreError>;

    /// Unlinks two orgs, with an audit entry; `false` when they were not linked.
    async fn unlink_orgs(&self, a: OrgId, b: OrgId, audit: &AuditEntry)
        -> Result<bool, StoreError>;

    /// The orgs linked to this one, in id order.
    async fn linked_orgs(&self, org: OrgId) -> Result<Vec<OrgId>, StoreError>;
}

pub(crate) fn listing_state(text: &str) -> Result<ListingState, StoreError> {
    ListingState::parse(text).ok_or_else(|| StoreError::corrupt(format!("listing state {text}")))
}

pub(crate) fn fee_payer(text: Option<String>) -> Result<Option<FillFeePayer>, StoreError> {
    text.map(|text| {
        FillFeePayer::parse(&text).ok_or_else(|| StoreError::corrupt(format!("fee payer {text}")))
    })
    .transpose()
}

pub(crate) fn fee_payer_text(payer: Option<FillFeePayer>) -> Option<&'static str> {
    payer.map(FillFeePayer::as_str)
}

pub(crate) fn transfer_ids_json(ids: &[TransferId]) -> String {
    let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
    serde_json::to_string(&texts).expect("strings serialize")
}

pub(crate) fn transfer_ids(text: &str) -> Result<Vec<TransferId>, StoreError> {
    let texts: Vec<String> = serde_json::from_str(text).map_err(StoreError::corrupt)?;
    texts
        .iter()
        .map(|text| {
            Uuid::parse_str(text)
                .map_err(StoreError::corrupt)
                .and_then(crate::sql::transfer_id)
        })
        .collect()
}

pub(crate) fn unsigned(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::corrupt("a negative quantity"))
}

pub(crate) fn signed(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::corrupt("a quantity beyond range"))
}

pub(crate) fn org_id(uuid: Uuid) -> Result<OrgId, StoreError> {
    OrgId::new(uuid).map_err(StoreError::corrupt)
}

/// Expands the shared implementation of [`MarketStore`] for `$store` (whose fields are `pool`,
/// a `sqlx::Pool<$db>`, and `clock`), with the backend's dialect module `$dialect`.
macro_rules! shared_market {
    ($store:ident, $db:ty, $dialect:ident) => {
        mod market_shared {
            use std::collections::{BTreeSet, HashMap, HashSet};

            use async_trait::async_trait;
            use credex_ledger::{
                AccountId, AccountKind, AssetCode, OrgId, Timestamp, Transfer, TransferCode,
                TransferResult,
            };
            use sqlx::Row;
            use uuid::Uuid;

            use super::$dialect as dialect;
            use super::$store;
            use crate::identity::{AuditEntry, RawOrg, UserId};
            use crate::market::{
                fee_payer, fee_payer_text, listing_state, org_id, signed, transfer_ids,
                transfer_ids_json, unsigned, BuybackRecord, FillRecord, ListingRecord,
                ListingState, MarketDecision, MarketReads, MarketRecord, MarketStep, MarketStore,
                MarketTxOutcome, MarketView, MarketWrite, NewListing, OrderRecord, SellUsage,
                SettingsChange, BatchState, MarketBatchDecision, MarketBatchOutcome,
                BATCH_ITEMS_MAX, BOOK_PAGE_MAX, BOOK_SCAN_MAX, INSERT_ROWS_MAX, MARKET_PAGE_MAX,
            };
            use crate::sql::Mode;
            use crate::StoreError;

            type Connection = <$db as sqlx::Database>::Connection;
            type DbRow = <$db as sqlx::Database>::Row;

            const MARKET_COLUMNS: &str = "asset, class, cycle, window_open, cycle_end, settings, \
                 settings_updated_at, next_seq, created_at";
            const LISTING_COLUMNS: &str = "id, asset, seller_org, seller_escrow, seller_wallet, \
                 ask_per_1m_micro_cr, seq, min_fill, quantity_listed, quantity_open, \
                 quantity_filled, state, created_at, updated_at, auto_sell_at";
            const FILL_COLUMNS: &str = "id, order_id, position, asset, listing_id, buyer_org, \
                 seller_org, quantity, price_per_1m_micro_cr, cost_micro_cr, fee_micro_cr, \
                 fee_payer, transfer_ids, at";
            const BUYBACK_COLUMNS: &str = "id, org_id, asset, listing_id, quantity, \
                 price_per_1m_micro_cr, payout_micro_cr, transfer_ids, at";

            fn asset(row: &DbRow) -> Result<AssetCode, StoreError> {
                crate::sql::asset_code(&row.try_get::<String, _>("asset")?)
            }

            fn instant(row: &DbRow, column: &str) -> Result<Timestamp, StoreError> {
                Ok(Timestamp::from_micros(row.try_get(column)?))
            }

            fn quantity(row: &DbRow, column: &str) -> Result<u64, StoreError> {
                unsigned(row.try_get(column)?)
            }

            fn market_record(row: &DbRow) -> Result<MarketRecord, StoreError> {
                Ok(MarketRecord {
                    asset: asset(row)?,
                    class: row.try_get("class")?,
                    cycle: row.try_get("cycle")?,
                    window_open: instant(row, "window_open")?,
                    cycle_end: instant(row, "cycle_end")?,
                    settings: row.try_get("settings")?,
                    settings_updated_at: instant(row, "settings_updated_at")?,
                    next_seq: quantity(row, "next_seq")?,
                    created_at: instant(row, "created_at")?,
                })
            }

            fn listing_record(row: &DbRow) -> Result<ListingRecord, StoreError> {
                Ok(ListingRecord {
                    id: row.try_get("id")?,
                    asset: asset(row)?,
                    seller: org_id(row.try_get("seller_org")?)?,
                    seller_escrow: crate::sql::account_id(row.try_get("seller_escrow")?)?,
                    seller_wallet: crate::sql::account_id(row.try_get("seller_wallet")?)?,
                    ask_per_1m_micro_cr: quantity(row, "ask_per_1m_micro_cr")?,
                    seq: quantity(row, "seq")?,
                    min_fill: quantity(row, "min_fill")?,
                    quantity_listed: quantity(row, "quantity_listed")?,
                    quantity_open: quantity(row, "quantity_open")?,
                    quantity_filled: quantity(row, "quantity_filled")?,
                    state: listing_state(&row.try_get::<String, _>("state")?)?,
                    created_at: instant(row, "created_at")?,
                    updated_at: instant(row, "updated_at")?,
                    auto_sell_at: row
                        .try_get::<Option<i64>, _>("auto_sell_at")?
                        .map(Timestamp::from_micros),
                })
            }

            fn fill_record(row: &DbRow) -> Result<FillRecord, StoreError> {
                let position: i32 = row.try_get("position")?;
                Ok(FillRecord {
                    id: row.try_get("id")?,
                    order_id: row.try_get("order_id")?,
                    position: u32::try_from(position).map_err(StoreError::corrupt)?,
                    asset: asset(row)?,
                    listing_id: row.try_get("listing_id")?,
                    buyer: org_id(row.try_get("buyer_org")?)?,
                    seller: row
                        .try_get::<Option<Uuid>, _>("seller_org")?
                        .map(org_id)
                        .transpose()?,
                    quantity: quantity(row, "quantity")?,
                    price_per_1m_micro_cr: quantity(row, "price_per_1m_micro_cr")?,
                    cost_micro_cr: quantity(row, "cost_micro_cr")?,
                    fee_micro_cr: quantity(row, "fee_micro_cr")?,
                    fee_payer: fee_payer(row.try_get("fee_payer")?)?,
                    transfer_ids: transfer_ids(&row.try_get::<String, _>("transfer_ids")?)?,
                    at: instant(row, "at")?,
                })
            }

            fn buyback_record(row: &DbRow) -> Result<BuybackRecord, StoreError> {
                Ok(BuybackRecord {
                    id: row.try_get("id")?,
                    org: org_id(row.try_get("org_id")?)?,
                    asset: asset(row)?,
                    listing_id: row.try_get("listing_id")?,
                    quantity: quantity(row, "quantity")?,
                    price_per_1m_micro_cr: quantity(row, "price_per_1m_micro_cr")?,
                    payout_micro_cr: quantity(row, "payout_micro_cr")?,
                    transfer_ids: transfer_ids(&row.try_get::<String, _>("transfer_ids")?)?,
                    at: instant(row, "at")?,
                })
            }

            fn order_record(row: &DbRow) -> Result<OrderRecord, StoreError> {
                Ok(OrderRecord {
                    id: row.try_get("id")?,
                    buyer: org_id(row.try_get("buyer_org")?)?,
                    asset: asset(row)?,
                    request: row.try_get("request")?,
                    result: row.try_get("result")?,
                    created_at: instant(row, "created_at")?,
                })
            }

            crate::sql::append_audit_fn!(StoreError);

            /// The market's row, locked for the rest of the transaction.
            async fn lock_market(
                conn: &mut Connection,
                asset: &AssetCode,
            ) -> Result<Option<MarketRecord>, StoreError> {
                let sql = format!(
                    "SELECT {MARKET_COLUMNS} FROM markets WHERE asset = $1{}",
                    dialect::FOR_UPDATE
                );
                let row = sqlx::query(&sql)
                    .bind(asset.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                row.as_ref().map(market_record).transpose()
            }

            async fn book_page(
                conn: &mut Connection,
                asset: &AssetCode,
                after: Option<(u64, u64)>,
                limit: u32,
            ) -> Result<Vec<ListingRecord>, StoreError> {
                let (ask, seq) = match after {
                    Some((ask, seq)) => (signed(ask)?, signed(seq)?),
                    None => (0, 0),
                };
                let sql = format!(
                    "SELECT {LISTING_COLUMNS} FROM listings \
                     WHERE asset = $1 AND state = 'open' \
                     AND (ask_per_1m_micro_cr, seq) > ($2, $3) \
                     ORDER BY ask_per_1m_micro_cr, seq LIMIT $4"
                );
                let rows = sqlx::query(&sql)
                    .bind(asset.as_str())
                    .bind(ask)
                    .bind(seq)
                    .bind(i64::from(limit.clamp(1, BOOK_PAGE_MAX)))
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter().map(listing_record).collect()
            }

            async fn fetch_listing(
                conn: &mut Connection,
                id: Uuid,
            ) -> Result<Option<ListingRecord>, StoreError> {
                let sql = format!("SELECT {LISTING_COLUMNS} FROM listings WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *conn).await?;
                row.as_ref().map(listing_record).transpose()
            }

            async fn fetch_order(
                conn: &mut Connection,
                id: Uuid,
            ) -> Result<Option<(OrderRecord, Vec<FillRecord>)>, StoreError> {
                let row = sqlx::query(
                    "SELECT id, buyer_org, asset, request, result, created_at FROM orders \
                     WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let order = order_record(&row)?;
                let sql = format!(
                    "SELECT {FILL_COLUMNS} FROM fills WHERE order_id = $1 ORDER BY position"
                );
                let rows = sqlx::query(&sql).bind(id).fetch_all(&mut *conn).await?;
                let fills = rows.iter().map(fill_record).collect::<Result<_, _>>()?;
                Ok(Some((order, fills)))
            }

            async fn fetch_buyback(
                conn: &mut Connection,
                id: Uuid,
            ) -> Result<Option<BuybackRecord>, StoreError> {
                let sql = format!("SELECT {BUYBACK_COLUMNS} FROM buybacks WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *conn).await?;
                row.as_ref().map(buyback_record).transpose()
            }

            async fn fetch_org(
                conn: &mut Connection,
                org: OrgId,
            ) -> Result<Option<crate::identity::Org>, StoreError> {
                let row = sqlx::query(
                    "SELECT id, name, plan, verification_level, frozen, created_at FROM orgs \
                     WHERE id = $1",
                )
                .bind(org.as_uuid())
                .fetch_optional(&mut *conn)
                .await?;
                row.as_ref().map(org_record).transpose()
            }

            fn org_record(row: &DbRow) -> Result<crate::identity::Org, StoreError> {
                let raw = RawOrg {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    plan: row.try_get("plan")?,
                    verification_level: row.try_get("verification_level")?,
                    frozen: row.try_get("frozen")?,
                    created_at: row.try_get("created_at")?,
                };
                raw.into_org().map_err(StoreError::corrupt)
            }

            async fn fetch_open_flags(
                conn: &mut Connection,
                org: OrgId,
            ) -> Result<Vec<crate::review::OpenFlag>, StoreError> {
                let rows = sqlx::query(
                    "SELECT kind, reason FROM review_flags WHERE org_id = $1 \
                     AND cleared_at IS NULL ORDER BY raised_at, id LIMIT 8",
                )
                .bind(org.as_uuid())
                .fetch_all(&mut *conn)
                .await?;
                rows.iter()
                    .map(|row| {
                        let kind: String = row.try_get("kind")?;
                        Ok(crate::review::OpenFlag {
                            kind: crate::review::FlagKind::parse(&kind).ok_or_else(|| {
                                StoreError::corrupt(format!("a flag kind {kind:?}"))
                            })?,
                            reason: row.try_get("reason")?,
                        })
                    })
                    .collect()
            }

            async fn fetch_usage(
                conn: &mut Connection,
                asset: &AssetCode,
                org: OrgId,
            ) -> Result<SellUsage, StoreError> {
                let row = sqlx::query(
                    "SELECT \
                     (SELECT CAST(COALESCE(SUM(t.amount), 0) AS BIGINT) FROM transfers t \
                       JOIN accounts a ON a.id = t.credit_account_id \
                       WHERE a.asset = $1 AND a.owner_org = $2 AND a.kind = $3 AND t.code = $4) \
                       AS allotted, \
                     (SELECT CAST(COALESCE(SUM(quantity_open), 0) AS BIGINT) FROM listings \
                       WHERE asset = $1 AND seller_org = $2 AND state = 'open') AS listed_open, \
                     (SELECT CAST(COALESCE(SUM(quantity_filled), 0) AS BIGINT) FROM listings \
                       WHERE asset = $1 AND seller_org = $2) AS filled, \
                     (SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM buybacks \
                       WHERE asset = $1 AND org_id = $2) AS bought_back, \
                     (SELECT CAST(COALESCE(SUM(payout_micro_cr), 0) AS BIGINT) FROM buybacks \
                       WHERE asset = $1 AND org_id = $2) AS org_paid, \
                     (SELECT CAST(COALESCE(SUM(payout_micro_cr), 0) AS BIGINT) FROM buybacks \
                       WHERE asset = $1) AS market_paid",
                )
                .bind(asset.as_str())
                .bind(org.as_uuid())
                .bind(AccountKind::Alloc.number())
                .bind(TransferCode::Allotment.number())
                .fetch_one(&mut *conn)
                .await?;
                Ok(SellUsage {
                    allotted: quantity(&row, "allotted")?,
                    listed_open: quantity(&row, "listed_open")?,
                    filled: quantity(&row, "filled")?,
                    bought_back: quantity(&row, "bought_back")?,
                    org_paid_micro_cr: quantity(&row, "org_paid")?,
                    market_paid_micro_cr: quantity(&row, "market_paid")?,
                })
            }

            async fn fetch_links(
                conn: &mut Connection,
                org: OrgId,
            ) -> Result<BTreeSet<OrgId>, StoreError> {
                let rows = sqlx::query(
                    "SELECT org_b AS other FROM org_links WHERE org_a = $1 \
                     UNION SELECT org_a AS other FROM org_links WHERE org_b = $1",
                )
                .bind(org.as_uuid())
                .fetch_all(&mut *conn)
                .await?;
                rows.iter()
                    .map(|row| org_id(row.try_get("other")?))
                    .collect()
            }

            async fn fetch_balances(
                conn: &mut Connection,
                ids: &[AccountId],
            ) -> Result<HashMap<AccountId, credex_ledger::Balance>, StoreError> {
                let mut balances = HashMap::with_capacity(ids.len());
                for id in ids {
                    let row = sqlx::query(
                        "SELECT CAST(COALESCE(SUM(debits_pending), 0) AS BIGINT) AS debits_pending, \
                         CAST(COALESCE(SUM(debits_posted), 0) AS BIGINT) AS debits_posted, \
                         CAST(COALESCE(SUM(credits_pending), 0) AS BIGINT) AS credits_pending, \
                         CAST(COALESCE(SUM(credits_posted), 0) AS BIGINT) AS credits_posted, \
                         COUNT(*) AS stripes \
                         FROM account_balances WHERE account_id = $1",
                    )
                    .bind(id.as_uuid())
                    .fetch_one(&mut *conn)
                    .await?;
                    if row.try_get::<i64, _>("stripes")? == 0 {
                        continue;
                    }
                    let balance = crate::sql::balance([
                        row.try_get("debits_pending")?,
                        row.try_get("debits_posted")?,
                        row.try_get("credits_pending")?,
                        row.try_get("credits_posted")?,
                    ])?;
                    balances.insert(*id, balance);
                }
                Ok(balances)
            }

            async fn fetch_known_transfers(
                conn: &mut Connection,
                ids: &[credex_ledger::TransferId],
            ) -> Result<HashSet<credex_ledger::TransferId>, StoreError> {
                if ids.is_empty() {
                    return Ok(HashSet::new());
                }
                let uuids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
                let sql = format!("SELECT id FROM transfers WHERE {}", dialect::in_uuids("id"));
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(&uuids))
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter()
                    .map(|row| crate::sql::transfer_id(row.try_get("id")?))
                    .collect()
            }

            /// Reads everything `reads` names, under the market's lock.
            async fn read_view(
                conn: &mut Connection,
                market: MarketRecord,
                reads: &MarketReads,
                now: Timestamp,
            ) -> Result<MarketView, StoreError> {
                let asset = market.asset.clone();
                let (book, book_complete) = if reads.book_page == 0 {
                    (Vec::new(), false)
                } else {
                    let page = reads.book_page.min(BOOK_PAGE_MAX);
                    let book = book_page(&mut *conn, &asset, None, page).await?;
                    let complete = book.len() < usize::try_from(page).unwrap_or(usize::MAX);
                    (book, complete)
                };
                let listing = match reads.listing {
                    Some(id) => fetch_listing(&mut *conn, id).await?,
                    None => None,
                };
                let order = match reads.order {
                    Some(id) => fetch_order(&mut *conn, id).await?,
                    None => None,
                };
                let buyback = match reads.buyback {
                    Some(id) => fetch_buyback(&mut *conn, id).await?,
                    None => None,
                };
                let org = match reads.org {
                    Some(id) => fetch_org(&mut *conn, id).await?,
                    None => None,
                };
                let review_flags = match reads.org {
                    Some(id) => fetch_open_flags(&mut *conn, id).await?,
                    None => Vec::new(),
                };
                let policy = match reads.org {
                    Some(_) => sqlx::query_scalar::<_, String>(
                        "SELECT policy FROM market_policy WHERE id = 1",
                    )
                    .fetch_optional(&mut *conn)
                    .await?,
                    None => None,
                };
                let usage = match reads.usage_of {
                    Some(id) => Some(fetch_usage(&mut *conn, &asset, id).await?),
                    None => None,
                };
                let linked = match reads.links_of {
                    Some(id) => fetch_links(&mut *conn, id).await?,
                    None => BTreeSet::new(),
                };
                let balances = fetch_balances(&mut *conn, &reads.balances).await?;
                let known_transfers = fetch_known_transfers(&mut *conn, &reads.transfers).await?;
                Ok(MarketView {
                    now,
                    market,
                    book,
                    book_complete,
                    listing,
                    order,
                    buyback,
                    org,
                    review_flags,
                    policy,
                    usage,
                    linked,
                    balances,
                    known_transfers,
                })
            }

            /// Asks the decision until it writes or stops, loading pages of the book it asks
            /// for.
            ///
            /// `cursor` is the key (ask, seq) of the last listing read from the database: the
            /// book in the view may have lost listings the batch filled, so it cannot tell.
            async fn decide_with_pages(
                conn: &mut Connection,
                view: &mut MarketView,
                first_page: u32,
                cursor: &mut Option<(u64, u64)>,
                decide: &mut MarketDecision<'_>,
            ) -> Result<Option<Box<MarketWrite>>, StoreError> {
                let mut page = first_page.clamp(1, BOOK_PAGE_MAX);
                loop {
                    match decide(view) {
                        MarketStep::Write(write) => return Ok(Some(write)),
                        MarketStep::Stop => return Ok(None),
                        MarketStep::MoreListings => {
                            if view.book_complete {
                                return Err(StoreError::corrupt(
                                    "a market decision asked for listings beyond the book",
                                ));
                            }
                            page = page.saturating_mul(2).min(BOOK_PAGE_MAX);
                            let asset = view.market.asset.clone();
                            let more = book_page(&mut *conn, &asset, *cursor, page).await?;
                            let full = more.len() == usize::try_from(page).unwrap_or(usize::MAX);
                            if let Some(last) = more.last() {
                                *cursor = Some((last.ask_per_1m_micro_cr, last.seq));
                            }
                            view.book.extend(more);
                            // Past the scan bound the matching engine never looks (see
                            // BOOK_SCAN_MAX): the book is complete for every decision.
                            view.book_complete = !full || view.book.len() >= BOOK_SCAN_MAX;
                        }
                    }
                }
            }

            /// Writes the listing changes and the new listing: every change only if the
            /// listing still has the open quantity it was decided on.
            async fn write_listings(
                conn: &mut Connection,
                market: &MarketRecord,
                write: &MarketWrite,
                now: Timestamp,
            ) -> Result<Option<ListingRecord>, StoreError> {
                for change in &write.listing_changes {
                    // By primary key alone (the market is checked on the row it returns): a
                    // condition on the asset lets the planner take the book's partial index
                    // instead, scanning the whole book when its statistics are stale — as they
                    // are for every new cycle's asset.
                    let asset: Option<String> = sqlx::query_scalar(
                        "UPDATE listings SET quantity_open = $2, \
                         quantity_filled = quantity_filled + $3, state = $4, updated_at = $5 \
                         WHERE id = $1 AND quantity_open = $6 AND state = 'open' RETURNING asset",
                    )
                    .bind(change.id)
                    .bind(signed(change.open)?)
                    .bind(signed(change.filled)?)
                    .bind(change.state.as_str())
                    .bind(now.as_micros())
                    .bind(signed(change.expected_open)?)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if asset.as_deref() != Some(market.asset.as_str()) {
                        return Err(StoreError::corrupt(format!(
                            "listing {} changed under its market's lock",
                            change.id
                        )));
                    }
                }
                let Some(new) = &write.new_listing else {
                    return Ok(None);
                };
                let seq = market.next_seq;
                sqlx::query("UPDATE markets SET next_seq = $2 WHERE asset = $1")
                    .bind(market.asset.as_str())
                    .bind(signed(seq + 1)?)
                    .execute(&mut *conn)
                    .await?;
                insert_listing(conn, market, new, seq, now).await.map(Some)
            }

            async fn insert_listing(
                conn: &mut Connection,
                market: &MarketRecord,
                new: &NewListing,
                seq: u64,
                now: Timestamp,
            ) -> Result<ListingRecord, StoreError> {
                let record = ListingRecord {
                    id: new.id,
                    asset: market.asset.clone(),
                    seller: new.seller,
                    seller_escrow: new.seller_escrow,
                    seller_wallet: new.seller_wallet,
                    ask_per_1m_micro_cr: new.ask_per_1m_micro_cr,
                    seq,
                    min_fill: new.min_fill,
                    quantity_listed: new.quantity,
                    quantity_open: new.quantity,
                    quantity_filled: 0,
                    state: ListingState::Open,
                    created_at: now,
                    updated_at: now,
                    auto_sell_at: new.auto_sell_at,
                };
                sqlx::query(
                    "INSERT INTO listings (id, asset, seller_org, seller_escrow, seller_wallet, \
                     ask_per_1m_micro_cr, seq, min_fill, quantity_listed, quantity_open, \
                     quantity_filled, state, created_at, updated_at, auto_sell_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, 0, 'open', $10, $10, $11)",
                )
                .bind(record.id)
                .bind(record.asset.as_str())
                .bind(record.seller.as_uuid())
                .bind(record.seller_escrow.as_uuid())
                .bind(record.seller_wallet.as_uuid())
                .bind(signed(record.ask_per_1m_micro_cr)?)
                .bind(signed(seq)?)
                .bind(signed(record.min_fill)?)
                .bind(signed(record.quantity_listed)?)
                .bind(now.as_micros())
                .bind(record.auto_sell_at.map(Timestamp::as_micros))
                .execute(&mut *conn)
                .await?;
                Ok(record)
            }

            /// Writes the orders and fills of committed decisions, a few statements for all.
            async fn insert_orders_and_fills(
                conn: &mut Connection,
                writes: &[&MarketWrite],
            ) -> Result<(), StoreError> {
                let orders: Vec<&OrderRecord> =
                    writes.iter().filter_map(|write| write.order.as_ref()).collect();
                for chunk in orders.chunks(INSERT_ROWS_MAX) {
                    let mut query = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO orders (id, buyer_org, asset, request, result, created_at) ",
                    );
                    query.push_values(chunk, |mut row, order| {
                        row.push_bind(order.id)
                            .push_bind(order.buyer.as_uuid())
                            .push_bind(order.asset.as_str().to_owned())
                            .push_bind(order.request.clone())
                            .push_bind(order.result.clone())
                            .push_bind(order.created_at.as_micros());
                    });
                    query.build().execute(&mut *conn).await?;
                }
                let fills: Vec<&FillRecord> =
                    writes.iter().flat_map(|write| write.fills.iter()).collect();
                for chunk in fills.chunks(INSERT_ROWS_MAX) {
                    let mut rows = Vec::with_capacity(chunk.len());
                    for fill in chunk {
                        rows.push((
                            *fill,
                            i32::try_from(fill.position).map_err(StoreError::corrupt)?,
                            signed(fill.quantity)?,
                            signed(fill.price_per_1m_micro_cr)?,
                            signed(fill.cost_micro_cr)?,
                            signed(fill.fee_micro_cr)?,
                        ));
                    }
                    let mut query = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO fills (id, order_id, position, asset, listing_id, buyer_org, \
                         seller_org, quantity, price_per_1m_micro_cr, cost_micro_cr, \
                         fee_micro_cr, fee_payer, transfer_ids, at) ",
                    );
                    query.push_values(rows, |mut row, (fill, position, quantity, price, cost, fee)| {
                        row.push_bind(fill.id)
                            .push_bind(fill.order_id)
                            .push_bind(position)
                            .push_bind(fill.asset.as_str().to_owned())
                            .push_bind(fill.listing_id)
                            .push_bind(fill.buyer.as_uuid())
                            .push_bind(fill.seller.map(OrgId::as_uuid))
                            .push_bind(quantity)
                            .push_bind(price)
                            .push_bind(cost)
                            .push_bind(fee)
                            .push_bind(fee_payer_text(fill.fee_payer))
                            .push_bind(transfer_ids_json(&fill.transfer_ids))
                            .push_bind(fill.at.as_micros());
                    });
                    query.build().execute(&mut *conn).await?;
                }
                Ok(())
            }

            /// Writes the order, its fills and the buyback of a committed decision.
            async fn write_records(
                conn: &mut Connection,
                write: &MarketWrite,
            ) -> Result<(), StoreError> {
                insert_orders_and_fills(&mut *conn, &[write]).await?;
                if let Some(buyback) = &write.buyback {
                    sqlx::query(
                        "INSERT INTO buybacks (id, org_id, asset, listing_id, quantity, \
                         price_per_1m_micro_cr, payout_micro_cr, transfer_ids, at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(buyback.id)
                    .bind(buyback.org.as_uuid())
                    .bind(buyback.asset.as_str())
                    .bind(buyback.listing_id)
                    .bind(signed(buyback.quantity)?)
                    .bind(signed(buyback.price_per_1m_micro_cr)?)
                    .bind(signed(buyback.payout_micro_cr)?)
                    .bind(transfer_ids_json(&buyback.transfer_ids))
                    .bind(buyback.at.as_micros())
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            }

            /// What the items of a batch read, each kind in one statement for all of them.
            #[derive(Default)]
            struct BatchReads {
                orders: HashMap<Uuid, (OrderRecord, Vec<FillRecord>)>,
                orgs: HashMap<OrgId, crate::identity::Org>,
                flags: HashMap<OrgId, Vec<crate::review::OpenFlag>>,
                policy: Option<String>,
                links: HashMap<OrgId, BTreeSet<OrgId>>,
            }

            async fn read_batch(
                conn: &mut Connection,
                reads: &[MarketReads],
            ) -> Result<BatchReads, StoreError> {
                let mut out = BatchReads::default();
                for item in reads {
                    let unsupported = item.listing.is_some()
                        || item.buyback.is_some()
                        || item.usage_of.is_some()
                        || !item.transfers.is_empty();
                    if unsupported {
                        return Err(StoreError::corrupt(
                            "a batched market decision may read the book, orders, orgs, links \
                             and balances only",
                        ));
                    }
                }
                let order_ids: Vec<Uuid> = reads.iter().filter_map(|item| item.order).collect();
                if !order_ids.is_empty() {
                    let sql =
                        format!("SELECT id FROM orders WHERE {}", dialect::in_uuids("id"));
                    let found: Vec<Uuid> = sqlx::query_scalar(&sql)
                        .bind(dialect::uuid_list(&order_ids))
                        .fetch_all(&mut *conn)
                        .await?;
                    // Replays are rare: each is read whole, with its fills.
                    for id in found {
                        if let Some(order) = fetch_order(&mut *conn, id).await? {
                            out.orders.insert(id, order);
                        }
                    }
                }
                let mut org_ids: Vec<Uuid> = reads
                    .iter()
                    .filter_map(|item| item.org.map(OrgId::as_uuid))
                    .collect();
                org_ids.sort_unstable();
                org_ids.dedup();
                if !org_ids.is_empty() {
                    let sql = format!(
                        "SELECT id, name, plan, verification_level, frozen, created_at FROM orgs \
                         WHERE {}",
                        dialect::in_uuids("id")
                    );
                    let rows = sqlx::query(&sql)
                        .bind(dialect::uuid_list(&org_ids))
                        .fetch_all(&mut *conn)
                        .await?;
                    for row in &rows {
                        let org = org_record(row)?;
                        out.orgs.insert(org.id, org);
                    }
                    let sql = format!(
                        "SELECT org_id, kind, reason FROM review_flags WHERE {} \
                         AND cleared_at IS NULL ORDER BY raised_at, id",
                        dialect::in_uuids("org_id")
                    );
                    let rows = sqlx::query(&sql)
                        .bind(dialect::uuid_list(&org_ids))
                        .fetch_all(&mut *conn)
                        .await?;
                    for row in &rows {
                        let org = org_id(row.try_get("org_id")?)?;
                        let kind: String = row.try_get("kind")?;
                        let flag = crate::review::OpenFlag {
                            kind: crate::review::FlagKind::parse(&kind).ok_or_else(|| {
                                StoreError::corrupt(format!("a flag kind {kind:?}"))
                            })?,
                            reason: row.try_get("reason")?,
                        };
                        let flags = out.flags.entry(org).or_default();
                        if flags.len() < 8 {
                            flags.push(flag);
                        }
                    }
                    out.policy = sqlx::query_scalar::<_, String>(
                        "SELECT policy FROM market_policy WHERE id = 1",
                    )
                    .fetch_optional(&mut *conn)
                    .await?;
                }
                let mut link_ids: Vec<Uuid> = reads
                    .iter()
                    .filter_map(|item| item.links_of.map(OrgId::as_uuid))
                    .collect();
                link_ids.sort_unstable();
                link_ids.dedup();
                if !link_ids.is_empty() {
                    let sql = format!(
                        "SELECT org_a, org_b FROM org_links WHERE {} OR {}",
                        dialect::in_uuids("org_a"),
                        dialect::in_uuids("org_b")
                    );
                    let rows = sqlx::query(&sql)
                        .bind(dialect::uuid_list(&link_ids))
                        .fetch_all(&mut *conn)
                        .await?;
                    for row in &rows {
                        let a = org_id(row.try_get("org_a")?)?;
                        let b = org_id(row.try_get("org_b")?)?;
                        out.links.entry(a).or_default().insert(b);
                        out.links.entry(b).or_default().insert(a);
                    }
                }
                Ok(out)
            }

            impl $store {
                async fn market_tx_once(
                    &self,
                    asset: &AssetCode,
                    reads: &MarketReads,
                    decide: &mut MarketDecision<'_>,
                    mode: Mode,
                ) -> Result<MarketTxOutcome, StoreError> {
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let Some(market) = lock_market(&mut tx, asset).await? else {
                        return Ok(MarketTxOutcome::NoMarket);
                    };
                    // Taken under the lock, so a market's writes are stamped in their order.
                    let now = self.clock.now();
                    let mut view = read_view(&mut tx, market, reads, now).await?;
                    let mut cursor = view
                        .book
                        .last()
                        .map(|last| (last.ask_per_1m_micro_cr, last.seq));
                    let Some(write) = decide_with_pages(
                        &mut tx,
                        &mut view,
                        reads.book_page,
                        &mut cursor,
                        decide,
                    )
                    .await?
                    else {
                        tx.rollback().await?;
                        return Ok(MarketTxOutcome::Stopped);
                    };
                    let listing = write_listings(&mut tx, &view.market, &write, now).await?;
                    let results = if write.transfers.is_empty() {
                        Vec::new()
                    } else {
                        let requests = [write.transfers.clone()];
                        self.apply_in(&mut tx, &requests, mode, now)
                            .await?
                            .pop()
                            .ok_or_else(|| StoreError::corrupt("no results for a request"))?
                    };
                    let accepted = results.iter().all(|result| match result {
                        Ok(()) => true,
                        Err(error) => error.is_exists(),
                    });
                    if !accepted {
                        tx.rollback().await?;
                        return Ok(MarketTxOutcome::Refused { results });
                    }
                    write_records(&mut tx, &write).await?;
                    tx.commit().await?;
                    Ok(MarketTxOutcome::Committed { results, listing })
                }
            }

            impl $store {
                async fn market_batch_once(
                    &self,
                    asset: &AssetCode,
                    reads: &[MarketReads],
                    decide: &mut MarketBatchDecision<'_>,
                    mode: Mode,
                ) -> Result<MarketBatchOutcome, StoreError> {
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let Some(market) = lock_market(&mut tx, asset).await? else {
                        return Ok(MarketBatchOutcome::NoMarket);
                    };
                    let now = self.clock.now();
                    let shared = read_batch(&mut tx, reads).await?;
                    let first_page = reads
                        .iter()
                        .map(|item| item.book_page)
                        .max()
                        .unwrap_or(0);
                    let (book, mut book_complete) = if first_page == 0 {
                        (Vec::new(), false)
                    } else {
                        let page = first_page.min(BOOK_PAGE_MAX);
                        let book = book_page(&mut tx, asset, None, page).await?;
                        let complete = book.len() < usize::try_from(page).unwrap_or(usize::MAX);
                        (book, complete)
                    };
                    let mut cursor = book
                        .last()
                        .map(|last| (last.ask_per_1m_micro_cr, last.seq));
                    let mut balance_ids: Vec<AccountId> =
                        reads.iter().flat_map(|item| item.balances.iter().copied()).collect();
                    balance_ids.sort_unstable();
                    balance_ids.dedup();
                    let mut balances = fetch_balances(&mut tx, &balance_ids).await?;
                    for id in balance_ids {
                        balances.entry(id).or_default();
                    }
                    let mut state = BatchState {
                        book,
                        balances,
                        merged: Vec::new(),
                    };
                    let mut writes: Vec<(usize, Box<MarketWrite>)> = Vec::new();
                    let mut last_instant: Option<Timestamp> = None;
                    for (index, item) in reads.iter().enumerate() {
                        // Each decision at its own instant, later than the one before it: a
                        // market's orders are stamped in the order they were decided.
                        let instant = match last_instant {
                            None => now,
                            Some(last) => self.clock.now().max(last.plus_micros(1)),
                        };
                        last_instant = Some(instant);
                        let org = item.org.and_then(|id| shared.orgs.get(&id).cloned());
                        let mut view = MarketView {
                            now: instant,
                            market: market.clone(),
                            book: std::mem::take(&mut state.book),
                            book_complete,
                            listing: None,
                            order: item.order.and_then(|id| shared.orders.get(&id).cloned()),
                            buyback: None,
                            review_flags: item
                                .org
                                .and_then(|id| shared.flags.get(&id).cloned())
                                .unwrap_or_default(),
                            policy: item.org.and(shared.policy.clone()),
                            org,
                            usage: None,
                            linked: item
                                .links_of
                                .and_then(|id| shared.links.get(&id).cloned())
                                .unwrap_or_default(),
                            balances: item
                                .balances
                                .iter()
                                .filter_map(|id| state.balances.get(id).map(|b| (*id, *b)))
                                .collect(),
                            known_transfers: HashSet::new(),
                        };
                        let mut one = |view: &MarketView| decide(index, view);
                        let step = decide_with_pages(
                            &mut tx,
                            &mut view,
                            item.book_page,
                            &mut cursor,
                            &mut one,
                        )
                        .await?;
                        state.book = view.book;
                        book_complete = view.book_complete;
                        if let Some(write) = step {
                            state.apply(&write, instant)?;
                            writes.push((index, write));
                        }
                    }
                    let mut answers: Vec<Option<Vec<TransferResult>>> = vec![None; reads.len()];
                    if writes.is_empty() {
                        tx.rollback().await?;
                        return Ok(MarketBatchOutcome::Committed(answers));
                    }
                    let changes = MarketWrite {
                        listing_changes: std::mem::take(&mut state.merged),
                        ..MarketWrite::default()
                    };
                    write_listings(&mut tx, &market, &changes, now).await?;
                    let chained: Vec<&(usize, Box<MarketWrite>)> = writes
                        .iter()
                        .filter(|(_, write)| !write.transfers.is_empty())
                        .collect();
                    let requests: Vec<Vec<Transfer>> = chained
                        .iter()
                        .map(|(_, write)| write.transfers.clone())
                        .collect();
                    let results = self.apply_in(&mut tx, &requests, mode, now).await?;
                    if results.len() != requests.len() {
                        return Err(StoreError::corrupt("a batch's chains and answers differ"));
                    }
                    let accepted = results.iter().flatten().all(|result| match result {
                        Ok(()) => true,
                        Err(error) => error.is_exists(),
                    });
                    if !accepted {
                        tx.rollback().await?;
                        return Ok(MarketBatchOutcome::Refused);
                    }
                    let records: Vec<&MarketWrite> =
                        writes.iter().map(|(_, write)| write.as_ref()).collect();
                    insert_orders_and_fills(&mut tx, &records).await?;
                    tx.commit().await?;
                    for ((index, _), result) in chained.iter().zip(results) {
                        answers[*index] = Some(result);
                    }
                    for (index, _) in &writes {
                        answers[*index].get_or_insert_with(Vec::new);
                    }
                    Ok(MarketBatchOutcome::Committed(answers))
                }
            }

            #[async_trait]
            impl MarketStore for $store {
                async fn ensure_market(
                    &self,
                    market: &MarketRecord,
                ) -> Result<MarketRecord, StoreError> {
                    self.retrying(Mode::Locked, |_| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let inserted = sqlx::query(
                            "INSERT INTO markets (asset, class, cycle, window_open, cycle_end, \
                             settings, settings_updated_at, next_seq, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8) \
                             ON CONFLICT (asset) DO NOTHING",
                        )
                        .bind(market.asset.as_str())
                        .bind(&market.class)
                        .bind(&market.cycle)
                        .bind(market.window_open.as_micros())
                        .bind(market.cycle_end.as_micros())
                        .bind(&market.settings)
                        .bind(market.settings_updated_at.as_micros())
                        .bind(market.created_at.as_micros())
                        .execute(&mut *tx)
                        .await?;
                        if inserted.rows_affected() == 1 {
                            sqlx::query(
                                "INSERT INTO market_settings_history (id, asset, changed_at, \
                                 window_open, settings, changed_by) VALUES ($1, $2, $3, $4, $5, NULL)",
                            )
                            .bind(Uuid::new_v4())
                            .bind(market.asset.as_str())
                            .bind(market.settings_updated_at.as_micros())
                            .bind(market.window_open.as_micros())
                            .bind(&market.settings)
                            .execute(&mut *tx)
                            .await?;
                        }
                        let sql = format!("SELECT {MARKET_COLUMNS} FROM markets WHERE asset = $1");
                        let row = sqlx::query(&sql)
                            .bind(market.asset.as_str())
                            .fetch_one(&mut *tx)
                            .await?;
                        let stored = market_record(&row)?;
                        tx.commit().await?;
                        Ok(stored)
                    })
                    .await
                }

                async fn market(
                    &self,
                    asset: &AssetCode,
                ) -> Result<Option<MarketRecord>, StoreError> {
                    let sql = format!("SELECT {MARKET_COLUMNS} FROM markets WHERE asset = $1");
                    let row = sqlx::query(&sql)
                        .bind(asset.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(market_record).transpose()
                }

                async fn markets(&self, cycle: Option<&str>) -> Result<Vec<MarketRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {MARKET_COLUMNS} FROM markets \
                         WHERE $1 IS NULL OR cycle = $1 ORDER BY asset"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(cycle)
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(market_record).collect()
                }

                async fn put_market_settings(
                    &self,
                    asset: &AssetCode,
                    window_open: Timestamp,
                    settings: &str,
                    audit: &AuditEntry,
                ) -> Result<Option<MarketRecord>, StoreError> {
                    self.retrying(Mode::Locked, |_| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        if lock_market(&mut tx, asset).await?.is_none() {
                            return Ok(None);
                        }
                        let at = audit.at().as_micros();
                        sqlx::query(
                            "UPDATE markets SET window_open = $2, settings = $3, \
                             settings_updated_at = $4 WHERE asset = $1",
                        )
                        .bind(asset.as_str())
                        .bind(window_open.as_micros())
                        .bind(settings)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(
                            "INSERT INTO market_settings_history (id, asset, changed_at, \
                             window_open, settings, changed_by) VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(audit.id().as_uuid())
                        .bind(asset.as_str())
                        .bind(at)
                        .bind(window_open.as_micros())
                        .bind(settings)
                        .bind(audit.actor().map(UserId::as_uuid))
                        .execute(&mut *tx)
                        .await?;
                        append_audit(&mut tx, audit).await?;
                        let stored = lock_market(&mut tx, asset).await?;
                        tx.commit().await?;
                        Ok(stored)
                    })
                    .await
                }

                async fn market_settings_history(
                    &self,
                    asset: &AssetCode,
                ) -> Result<Vec<SettingsChange>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT changed_at, window_open, settings, changed_by \
                         FROM market_settings_history WHERE asset = $1 ORDER BY changed_at, id",
                    )
                    .bind(asset.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok(SettingsChange {
                                changed_at: instant(row, "changed_at")?,
                                window_open: instant(row, "window_open")?,
                                settings: row.try_get("settings")?,
                                changed_by: row
                                    .try_get::<Option<Uuid>, _>("changed_by")?
                                    .map(|id| UserId::new(id).map_err(StoreError::corrupt))
                                    .transpose()?,
                            })
                        })
                        .collect()
                }

                async fn market_tx(
                    &self,
                    asset: &AssetCode,
                    reads: &MarketReads,
                    decide: &mut MarketDecision<'_>,
                ) -> Result<MarketTxOutcome, StoreError> {
                    // A lock makes the decision shareable by the retried attempts; they run
                    // one after another, so it is never contended.
                    let decide = tokio::sync::Mutex::new(decide);
                    let decide = &decide;
                    self.retrying(Mode::Locked, |mode| async move {
                        let mut decide = decide.lock().await;
                        self.market_tx_once(asset, reads, &mut **decide, mode).await
                    })
                    .await
                }

                async fn market_batch_tx(
                    &self,
                    asset: &AssetCode,
                    reads: &[MarketReads],
                    decide: &mut MarketBatchDecision<'_>,
                ) -> Result<MarketBatchOutcome, StoreError> {
                    if reads.len() > BATCH_ITEMS_MAX {
                        return Err(StoreError::corrupt(format!(
                            "a batch of {} market decisions (at most {BATCH_ITEMS_MAX})",
                            reads.len()
                        )));
                    }
                    // A lock makes the decision shareable by the retried attempts; they run
                    // one after another, so it is never contended.
                    let decide = tokio::sync::Mutex::new(decide);
                    let decide = &decide;
                    self.retrying(Mode::Locked, |mode| async move {
                        let mut decide = decide.lock().await;
                        self.market_batch_once(asset, reads, &mut **decide, mode).await
                    })
                    .await
                }

                async fn buyback(&self, id: Uuid) -> Result<Option<BuybackRecord>, StoreError> {
                    let mut conn = self.pool.acquire().await?;
                    fetch_buyback(&mut conn, id).await
                }

                async fn listing(&self, id: Uuid) -> Result<Option<ListingRecord>, StoreError> {
                    let mut conn = self.pool.acquire().await?;
                    fetch_listing(&mut conn, id).await
                }

                async fn book(
                    &self,
                    asset: &AssetCode,
                    after: Option<(u64, u64)>,
                    limit: u32,
                ) -> Result<Vec<ListingRecord>, StoreError> {
                    let mut conn = self.pool.acquire().await?;
                    book_page(&mut conn, asset, after, limit).await
                }

                async fn listings_of(
                    &self,
                    org: OrgId,
                    asset: Option<&AssetCode>,
                    limit: u32,
                ) -> Result<Vec<ListingRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {LISTING_COLUMNS} FROM listings WHERE seller_org = $1 \
                         AND ($2 IS NULL OR asset = $2) ORDER BY created_at DESC, id LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(asset.map(AssetCode::as_str))
                        .bind(i64::from(limit.clamp(1, MARKET_PAGE_MAX)))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(listing_record).collect()
                }

                async fn order(
                    &self,
                    id: Uuid,
                ) -> Result<Option<(OrderRecord, Vec<FillRecord>)>, StoreError> {
                    let mut conn = self.pool.acquire().await?;
                    fetch_order(&mut conn, id).await
                }

                async fn recent_fills(
                    &self,
                    asset: &AssetCode,
                    limit: u32,
                ) -> Result<Vec<FillRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {FILL_COLUMNS} FROM fills WHERE asset = $1 \
                         ORDER BY at DESC, order_id, position DESC LIMIT $2"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(asset.as_str())
                        .bind(i64::from(limit.clamp(1, MARKET_PAGE_MAX)))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(fill_record).collect()
                }

                async fn listing_fills(&self, listing: Uuid) -> Result<Vec<FillRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {FILL_COLUMNS} FROM fills WHERE listing_id = $1 ORDER BY at, id"
                    );
                    let rows = sqlx::query(&sql).bind(listing).fetch_all(&self.pool).await?;
                    rows.iter().map(fill_record).collect()
                }

                async fn buybacks_of(
                    &self,
                    org: OrgId,
                    asset: &AssetCode,
                ) -> Result<Vec<BuybackRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {BUYBACK_COLUMNS} FROM buybacks WHERE org_id = $1 AND asset = $2 \
                         ORDER BY at, id"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(asset.as_str())
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(buyback_record).collect()
                }

                async fn due_auto_sales(
                    &self,
                    now: Timestamp,
                    limit: u32,
                ) -> Result<Vec<ListingRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {LISTING_COLUMNS} FROM listings WHERE state = 'open' \
                         AND auto_sell_at IS NOT NULL AND auto_sell_at <= $1 \
                         ORDER BY auto_sell_at, id LIMIT $2"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(now.as_micros())
                        .bind(i64::from(limit.clamp(1, MARKET_PAGE_MAX)))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(listing_record).collect()
                }

                async fn expire_open_listings(
                    &self,
                    asset: &AssetCode,
                    now: Timestamp,
                ) -> Result<u64, StoreError> {
                    self.retrying(Mode::Locked, |_| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        if lock_market(&mut tx, asset).await?.is_none() {
                            return Ok(0);
                        }
                        let done = sqlx::query(
                            "UPDATE listings SET state = 'expired', quantity_open = 0, \
                             updated_at = $2 WHERE asset = $1 AND state = 'open'",
                        )
                        .bind(asset.as_str())
                        .bind(now.as_micros())
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        Ok(done.rows_affected())
                    })
                    .await
                }

                async fn link_orgs(
                    &self,
                    a: OrgId,
                    b: OrgId,
                    audit: &AuditEntry,
                ) -> Result<bool, StoreError> {
                    let (low, high) = if a < b { (a, b) } else { (b, a) };
                    self.retrying(Mode::Locked, |_| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let done = sqlx::query(
                            "INSERT INTO org_links (org_a, org_b, created_at) VALUES ($1, $2, $3) \
                             ON CONFLICT (org_a, org_b) DO NOTHING",
                        )
                        .bind(low.as_uuid())
                        .bind(high.as_uuid())
                        .bind(audit.at().as_micros())
                        .execute(&mut *tx)
                        .await?;
                        let linked = done.rows_affected() == 1;
                        if linked {
                            append_audit(&mut tx, audit).await?;
                        }
                        tx.commit().await?;
                        Ok(linked)
                    })
                    .await
                }

                async fn unlink_orgs(
                    &self,
                    a: OrgId,
                    b: OrgId,
                    audit: &AuditEntry,
                ) -> Result<bool, StoreError> {
                    let (low, high) = if a < b { (a, b) } else { (b, a) };
                    self.retrying(Mode::Locked, |_| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let done = sqlx::query("DELETE FROM org_links WHERE org_a = $1 AND org_b = $2")
                            .bind(low.as_uuid())
                            .bind(high.as_uuid())
                            .execute(&mut *tx)
                            .await?;
                        let unlinked = done.rows_affected() == 1;
                        if unlinked {
                            append_audit(&mut tx, audit).await?;
                        }
                        tx.commit().await?;
                        Ok(unlinked)
                    })
                    .await
                }

                async fn linked_orgs(&self, org: OrgId) -> Result<Vec<OrgId>, StoreError> {
                    let mut conn = self.pool.acquire().await?;
                    Ok(fetch_links(&mut conn, org).await?.into_iter().collect())
                }
            }
        }
    };
}

pub(crate) use shared_market;
