//! The market service: markets per token asset, listings, immediate-or-cancel buy orders,
//! buybacks and market data, over the store and the pure `credex-matching` engine. No HTTP
//! here: the routes parse, call these functions and render.
//!
//! Every write runs as one [`MarketStore::market_tx`]: under the market's lock, it reads what
//! it needs (the book, the org's standing and sales, a replay), decides here with pure code,
//! and writes its rows and its ledger chain in one transaction. So several processes on one
//! PostgreSQL never fill a listing twice, and a refusal — by a rule below or by the ledger —
//! changes nothing.
//!
//! Transfer ids derive from the request's identity ([`crate::cycles::derived_id`]): a listing
//! from its id, a cancel from the listing, an amend, order or buyback from its request id. A
//! replay finds its rows (or its transfer) and answers what the first run did; the ledger
//! would answer `exists` to its transfers anyway.
//!
//! Rules enforced here (the ledger enforces one hop and the flows on its own): listing only
//! inside the listing window and before the cycle ends; sellers verified, old enough, on a paid
//! plan, not frozen, and within the per-cycle sell cap ([`FraudPolicy`]); frozen orgs cannot
//! buy; an org never trades with itself or an org an admin linked to it.

mod batch;
mod policy;
mod settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use credex_ledger::{
    AccountId, AccountKind, Action, Amount, AssetClass, AssetCode, Metadata, Movement, OrgId,
    Owner, Timestamp, Transfer, TransferCode, TransferError, TransferId, TransferResult,
};
use credex_matching::{
    settle_order, BookError, BuyOrder, BuyerAccounts, DepthLevel, Fill, Limit, Listing,
    ListingError, ListingFields, ListingId, MarketAccounts, MatchError, MatchOutcome, OrderBook,
    OrderError, ProviderFill, Quote, SellerAccounts, SettlementError, QUANTITY_MAX,
};
use credex_pricing::{BuybackContext, BuybackError, DecayWindow};
use credex_store::{
    AuditAction, AuditEntry, BuybackRecord, CycleError, FillFeePayer, FillRecord, Ledger,
    ListingChange, ListingRecord, ListingState, MarketReads, MarketRecord, MarketStep,
    MarketTxOutcome, MarketView, MarketWrite, NewListing, OrderRecord, Store, StoreError, UserId,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cycles::{derived_id, CycleId};

pub use batch::BatchStats;
pub use policy::{FraudPolicy, Refusal};
pub use settings::{MarketSettings, MarketSettingsInput, SettingsError, DEFAULT_WINDOW_MICROS};

/// The first page of the book a buy order reads; it asks for more while it needs them.
const BUY_BOOK_PAGE: u32 = 64;
/// The most listings a quote or the depth reads.
const READ_BOOK_MAX: usize = 16_384;
/// The most account ids the service remembers (accounts never change once made).
const ACCOUNT_CACHE_MAX: usize = 100_000;

/// Why a market operation did not happen. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cycle(#[from] CycleError),
    #[error("{0} is not a token asset: markets trade TOK.<class>.<cycle> assets")]
    NotATokenAsset(String),
    #[error("the cycle {0} does not exist yet")]
    NoSuchCycle(String),
    #[error("no market trades {0}")]
    NoMarket(AssetCode),
    #[error("the cycle {cycle} has no model class {class:?}")]
    NoSuchClass { class: String, cycle: String },
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Listing(#[from] ListingError),
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error(transparent)]
    Match(#[from] MatchError),
    #[error("a listing or request id must not be the nil or the max UUID")]
    InvalidId,
    #[error("listings are taken from {opens:?} until the cycle ends at {closes:?}; it is {at:?}")]
    OutsideListingWindow {
        at: Timestamp,
        opens: Timestamp,
        closes: Timestamp,
    },
    #[error("the market closed at the cycle's end {closed:?}; it is {at:?}")]
    MarketEnded { at: Timestamp, closed: Timestamp },
    #[error("an automatic sale must be set after now and before the cycle ends")]
    AutoSellOutOfRange,
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("no org {0}")]
    UnknownOrg(OrgId),
    #[error("no listing {0} in this market for this org")]
    ListingNotFound(Uuid),
    #[error("listing {id} is {state}: it is no longer open")]
    ListingNotOpen { id: Uuid, state: ListingState },
    #[error("a listing can only be amended down: it has {open} tokens open, {requested} were asked (cancel it to withdraw everything)")]
    NotADecrease { open: u64, requested: u64 },
    #[error(
        "the org's alloc account does not hold enough tokens (acquired tokens can never be sold)"
    )]
    InsufficientTokens,
    #[error("the wallet does not hold enough credits")]
    InsufficientCredits,
    #[error("the ledger refused the operation: {0}")]
    Ledger(TransferError),
    #[error("the request id {0} was used for a different request")]
    IdempotencyConflict(Uuid),
    #[error(transparent)]
    Buyback(#[from] BuybackError),
    #[error(transparent)]
    Settlement(#[from] SettlementError),
}

fn corrupt(what: impl std::fmt::Display) -> MarketError {
    MarketError::Store(StoreError::Corrupt(what.to_string()))
}

/// A market with its parsed settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketInfo {
    pub record: MarketRecord,
    pub settings: MarketSettings,
    pub window: DecayWindow,
}

impl MarketInfo {
    /// A stored market with its settings parsed.
    pub fn parse(record: MarketRecord) -> Result<Self, MarketError> {
        let settings = MarketSettings::from_json(&record.settings).map_err(corrupt)?;
        let window = DecayWindow::new(record.window_open, record.cycle_end).map_err(corrupt)?;
        Ok(Self {
            record,
            settings,
            window,
        })
    }

    fn book(&self, records: &[ListingRecord]) -> Result<OrderBook, MarketError> {
        let mut book = OrderBook::with_capacity(self.settings.rules(self.window), records.len());
        for record in records {
            book.insert(listing_of(record)?)
                .map_err(|error: BookError| corrupt(error))?;
        }
        Ok(book)
    }
}

/// A stored open listing as the book holds it. A minimum fill above what is left means the
/// next fill takes everything: the book's own rule, so it is clamped to what is left.
fn listing_of(record: &ListingRecord) -> Result<Listing, MarketError> {
    Listing::new(ListingFields {
        id: ListingId::new(record.id).map_err(corrupt)?,
        seller: record.seller,
        quantity: record.quantity_open,
        min_fill: Some(record.min_fill.min(record.quantity_open)),
        ask_per_1m_micro_cr: record.ask_per_1m_micro_cr,
        seq: record.seq,
        created_at: record.created_at,
    })
    .map_err(corrupt)
}

/// The class and cycle of a token asset.
fn class_and_cycle(asset: &AssetCode) -> Result<(String, CycleId), MarketError> {
    let not_token = || MarketError::NotATokenAsset(asset.to_string());
    if asset.class() != AssetClass::Token {
        return Err(not_token());
    }
    let mut parts = asset.as_str().splitn(3, '.');
    let (Some(_), Some(class), Some(cycle)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(not_token());
    };
    let cycle = CycleId::parse(cycle).map_err(|_| not_token())?;
    Ok((class.to_owned(), cycle))
}

/// Account ids by (asset, owner, kind), made on first use.
#[derive(Debug, Default)]
pub(crate) struct AccountBook {
    ids: Mutex<HashMap<(AssetCode, Owner, AccountKind), AccountId>>,
}

impl AccountBook {
    pub(crate) async fn get(
        &self,
        ledger: &Ledger,
        asset: &AssetCode,
        owner: Owner,
        kind: AccountKind,
    ) -> Result<AccountId, StoreError> {
        let key = (asset.clone(), owner, kind);
        if let Some(id) = self.ids.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(*id);
        }
        let id = ledger
            .ensure_account(asset, owner, kind)
            .await?
            .account
            .id();
        self.remember(key, id);
        Ok(id)
    }

    /// The account if it exists (not made): a found id is remembered, a missing one is looked
    /// up again next time (it may have been made since).
    pub(crate) async fn find(
        &self,
        ledger: &Ledger,
        asset: &AssetCode,
        owner: Owner,
        kind: AccountKind,
    ) -> Result<Option<AccountId>, StoreError> {
        let key = (asset.clone(), owner, kind);
        if let Some(id) = self.ids.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(Some(*id));
        }
        let Some(found) = ledger.store().find_account(asset, owner, kind).await? else {
            return Ok(None);
        };
        let id = found.account.id();
        self.remember(key, id);
        Ok(Some(id))
    }

    fn remember(&self, key: (AssetCode, Owner, AccountKind), id: AccountId) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.len() >= ACCOUNT_CACHE_MAX {
            ids.clear();
        }
        ids.insert(key, id);
    }

    async fn market(
        &self,
        ledger: &Ledger,
        asset: &AssetCode,
    ) -> Result<MarketAccounts, StoreError> {
        let credit = AssetCode::credit();
        Ok(MarketAccounts {
            token: asset.clone(),
            fees: self
                .get(ledger, &credit, Owner::Provider, AccountKind::Fees)
                .await?,
            spent: self
                .get(ledger, &credit, Owner::Provider, AccountKind::Spent)
                .await?,
            treasury: self
                .get(ledger, asset, Owner::Provider, AccountKind::Treasury)
                .await?,
            issuance: self
                .get(ledger, asset, Owner::Provider, AccountKind::Issuance)
                .await?,
        })
    }
}

/// What a decision over a [`MarketView`] comes to.
enum Plan<T> {
    /// Write this, then answer with the value.
    Write(Box<MarketWrite>, T),
    /// Answer with the value without writing (a replay).
    Done(T),
    /// Read more of the book first.
    More,
}

/// What a market transaction produced.
struct Ran<T> {
    value: T,
    listing: Option<ListingRecord>,
}

/// Runs a decision in one market transaction and turns its outcome into a value or an error.
async fn run<T, F>(
    store: &dyn Store,
    asset: &AssetCode,
    reads: &MarketReads,
    mut plan: F,
) -> Result<Ran<T>, MarketError>
where
    T: Send,
    F: FnMut(&MarketView) -> Result<Plan<T>, MarketError> + Send,
{
    let mut last: Option<Result<(T, Vec<Transfer>), MarketError>> = None;
    let outcome = {
        let mut decide = |view: &MarketView| match plan(view) {
            Ok(Plan::More) => MarketStep::MoreListings,
            Ok(Plan::Done(value)) => {
                last = Some(Ok((value, Vec::new())));
                MarketStep::Stop
            }
            Ok(Plan::Write(write, value)) => {
                last = Some(Ok((value, write.transfers.clone())));
                MarketStep::Write(write)
            }
            Err(error) => {
                last = Some(Err(error));
                MarketStep::Stop
            }
        };
        store.market_tx(asset, reads, &mut decide).await?
    };
    let decided = || last.ok_or_else(|| corrupt("a market transaction ended undecided"));
    match outcome {
        MarketTxOutcome::NoMarket => Err(MarketError::NoMarket(asset.clone())),
        MarketTxOutcome::Stopped => decided()?.map(|(value, _)| Ran {
            value,
            listing: None,
        }),
        MarketTxOutcome::Committed { listing, .. } => {
            decided()?.map(|(value, _)| Ran { value, listing })
        }
        MarketTxOutcome::Refused { results } => {
            let (_, transfers) = decided()??;
            Err(refusal(&transfers, &results))
        }
    }
}

/// The ledger's reason for refusing a chain: the first transfer that failed on its own.
fn refusal(transfers: &[Transfer], results: &[TransferResult]) -> MarketError {
    let failed = transfers
        .iter()
        .zip(results)
        .find_map(|(transfer, result)| match result {
            Err(TransferError::LinkedEventFailed) | Ok(()) => None,
            Err(error) => Some((transfer, *error)),
        });
    match failed {
        Some((transfer, TransferError::ExceedsCredits)) => match transfer.action() {
            Action::Move(movement) if movement.asset().class() == AssetClass::Credit => {
                MarketError::InsufficientCredits
            }
            _ => MarketError::InsufficientTokens,
        },
        Some((_, error)) => MarketError::Ledger(error),
        None => corrupt("the ledger refused a chain without a reason"),
    }
}

fn movement_transfer(
    id: TransferId,
    (debit, credit): (AccountId, AccountId),
    asset: &AssetCode,
    amount: u64,
    code: TransferCode,
    metadata: &str,
) -> Result<Transfer, MarketError> {
    let amount = Amount::new(amount).map_err(corrupt)?;
    let movement = Movement::new(debit, credit, asset.clone(), amount, code).map_err(corrupt)?;
    let metadata = Metadata::new(metadata).map_err(corrupt)?;
    Transfer::new(id, Action::Move(movement), metadata, false).map_err(corrupt)
}

/// A new listing, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    /// The listing's id: the request's identity (a replay finds the listing).
    pub id: Uuid,
    pub seller: OrgId,
    pub asset: AssetCode,
    pub quantity: u64,
    pub ask_per_1m_micro_cr: u64,
    pub min_fill: Option<u64>,
    /// Sell what is left to the provider at the buyback price at this instant.
    pub auto_sell_at: Option<Timestamp>,
}

/// A buy order, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuyRequest {
    /// The order's id: the request's identity (a replay finds the order).
    pub id: Uuid,
    pub buyer: OrgId,
    pub asset: AssetCode,
    pub quantity: u64,
    pub limit: Limit,
    /// Whether the provider may fill what the listings cannot (emergency credits).
    pub allow_provider_fill: bool,
}

/// A sale of `alloc` tokens to the provider, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuybackRequest {
    pub id: Uuid,
    pub org: OrgId,
    pub asset: AssetCode,
    pub quantity: u64,
}

/// What an order came to, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    pub quantity: u64,
    pub filled: u64,
    pub from_listings: u64,
    pub from_provider: u64,
    pub unfilled: u64,
    pub buyer_paid_micro_cr: u64,
    pub fees_micro_cr: u64,
    pub stop_reason: String,
}

/// An order's answer: its summary and fills; `replayed` when it was found, not made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderResult {
    pub order_id: Uuid,
    pub summary: OrderSummary,
    pub fills: Vec<FillRecord>,
    pub replayed: bool,
    /// When the order was made (its transaction's instant).
    pub created_at: Timestamp,
}

/// Who asks to withdraw a listing: its seller, or the platform (the cycle's close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawer {
    Seller(OrgId),
    Platform,
}

/// The market service.
#[derive(Debug)]
pub struct Market {
    ledger: Arc<Ledger>,
    policy: FraudPolicy,
    accounts: AccountBook,
    buys: batch::BuyQueues,
    known_markets: Mutex<std::collections::HashSet<AssetCode>>,
}

impl Market {
    pub fn new(ledger: Arc<Ledger>, policy: FraudPolicy) -> Self {
        Self {
            ledger,
            policy,
            accounts: AccountBook::default(),
            buys: batch::BuyQueues::default(),
            known_markets: Mutex::default(),
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn policy(&self) -> FraudPolicy {
        self.policy
    }

    /// How this process's buy orders ran: in batches or alone.
    pub fn batch_stats(&self) -> BatchStats {
        self.buys.stats()
    }

    fn store(&self) -> &dyn Store {
        self.ledger.store().as_ref()
    }

    /// The market of a token asset, made with the default settings if it does not exist: the
    /// listing window is the cycle's last 7 days, buybacks and emergency credits are priced
    /// from the class's face value in that cycle. The cycle must exist (opened or being
    /// opened).
    pub async fn ensure_market(&self, asset: &AssetCode) -> Result<MarketInfo, MarketError> {
        if let Some(record) = self.store().market(asset).await? {
            return MarketInfo::parse(record);
        }
        let (class, cycle) = class_and_cycle(asset)?;
        let name = cycle.to_string();
        if self.store().cycle(&name).await?.is_none() {
            return Err(MarketError::NoSuchCycle(name));
        }
        let face = face_value(self.store(), &class, &name).await?;
        self.ledger.ensure_asset(&AssetCode::credit()).await?;
        self.ledger.ensure_asset(asset).await?;
        let now = self.store().clock().now();
        let cycle_end = cycle.ends_at();
        let window_open = cycle
            .starts_at()
            .max(cycle_end.plus_micros(-DEFAULT_WINDOW_MICROS));
        let record = MarketRecord {
            asset: asset.clone(),
            class,
            cycle: name,
            window_open,
            cycle_end,
            settings: MarketSettings::defaults(face)?.to_json(),
            settings_updated_at: now,
            next_seq: 1,
            created_at: now,
        };
        MarketInfo::parse(self.store().ensure_market(&record).await?)
    }

    /// The market, if it exists.
    pub async fn market(&self, asset: &AssetCode) -> Result<Option<MarketInfo>, MarketError> {
        self.store()
            .market(asset)
            .await?
            .map(MarketInfo::parse)
            .transpose()
    }

    /// Changes a market's listing window and settings, effective from now: every decision
    /// taken after this commits reads them. Audited, with the admin who acted.
    pub async fn change_settings(
        &self,
        asset: &AssetCode,
        window_open: Timestamp,
        settings: MarketSettings,
        actor: Option<UserId>,
    ) -> Result<MarketInfo, MarketError> {
        let current = self.ensure_market(asset).await?;
        DecayWindow::new(window_open, current.record.cycle_end).map_err(SettingsError::from)?;
        let json = settings.to_json();
        let details = serde_json::json!({
            "window_open_micros": window_open.as_micros(),
            "settings": serde_json::from_str::<serde_json::Value>(&json).map_err(corrupt)?,
        });
        let action = AuditAction::parse("market.settings").map_err(corrupt)?;
        let mut audit =
            AuditEntry::new(self.store().clock().now(), action, asset.as_str(), details)
                .map_err(corrupt)?;
        if let Some(actor) = actor {
            audit = audit.by(actor);
        }
        let record = self
            .store()
            .put_market_settings(asset, window_open, &json, &audit)
            .await?
            .ok_or_else(|| MarketError::NoMarket(asset.clone()))?;
        MarketInfo::parse(record)
    }

    /// Lists tokens from the seller's `alloc` (`alloc → escrow`, code `list`), with the listing
    /// row, atomically. A replay of the same request answers the listing as it is now.
    pub async fn list(&self, request: &ListRequest) -> Result<ListingRecord, MarketError> {
        Listing::new(ListingFields {
            id: ListingId::new(request.id).map_err(|_| MarketError::InvalidId)?,
            seller: request.seller,
            quantity: request.quantity,
            min_fill: request.min_fill,
            ask_per_1m_micro_cr: request.ask_per_1m_micro_cr,
            seq: 0,
            created_at: Timestamp::EPOCH,
        })?;
        self.ensure_market(&request.asset).await?;
        let seller = Owner::Org(request.seller);
        let asset = &request.asset;
        let alloc = self.account(asset, seller, AccountKind::Alloc).await?;
        let escrow = self.account(asset, seller, AccountKind::Escrow).await?;
        let wallet = self
            .account(&AssetCode::credit(), seller, AccountKind::Wallet)
            .await?;
        let transfer = movement_transfer(
            derived_id(&["list", &request.id.to_string()]),
            (alloc, escrow),
            asset,
            request.quantity,
            TransferCode::List,
            &format!(r#"{{"listing_id":"{}"}}"#, request.id),
        )?;
        let new = NewListing {
            id: request.id,
            seller: request.seller,
            seller_escrow: escrow,
            seller_wallet: wallet,
            ask_per_1m_micro_cr: request.ask_per_1m_micro_cr,
            min_fill: request.min_fill.unwrap_or(1),
            quantity: request.quantity,
            auto_sell_at: request.auto_sell_at,
        };
        let reads = MarketReads {
            listing: Some(request.id),
            org: Some(request.seller),
            usage_of: Some(request.seller),
            ..MarketReads::default()
        };
        let policy = self.policy;
        let ran = run(self.store(), asset, &reads, |view| {
            plan_list(view, &policy, request, &new, &transfer)
        })
        .await?;
        ran.listing
            .or(ran.value)
            .ok_or_else(|| corrupt("a listing was neither written nor found"))
    }

    /// Lowers a listing's open quantity to `quantity` (at least 1); the rest goes back
    /// `escrow → alloc` (code `unlist`). `request_id` names this amendment: a replay answers
    /// the listing as it is now.
    pub async fn amend_down(
        &self,
        request_id: Uuid,
        seller: OrgId,
        asset: &AssetCode,
        listing_id: Uuid,
        quantity: u64,
    ) -> Result<ListingRecord, MarketError> {
        let id = derived_id(&["amend", &request_id.to_string()]);
        let change = Withdrawal {
            transfer_id: id,
            who: Withdrawer::Seller(seller),
            keep: quantity,
        };
        withdraw(&self.ledger, &self.accounts, asset, listing_id, change).await
    }

    /// Withdraws what is left of a listing (`escrow → alloc`, code `unlist`). A listing is
    /// cancelled once: a replay answers the cancelled listing.
    pub async fn cancel(
        &self,
        who: Withdrawer,
        asset: &AssetCode,
        listing_id: Uuid,
    ) -> Result<ListingRecord, MarketError> {
        let change = Withdrawal {
            transfer_id: cancel_id(listing_id),
            who,
            keep: 0,
        };
        withdraw(&self.ledger, &self.accounts, asset, listing_id, change).await
    }

    /// Buys immediately what the book (and, if allowed, the provider) can fill now: cheapest
    /// price first, then oldest listing, never from the buyer's own or linked orgs. The fills,
    /// the listings' new quantities, the order and its one linked ledger chain commit together;
    /// the rest of the order is dropped (immediate-or-cancel). A replay answers the first run.
    pub async fn buy(&self, request: &BuyRequest) -> Result<OrderResult, MarketError> {
        if request.id.is_nil() || request.id.is_max() {
            return Err(MarketError::InvalidId);
        }
        let asset = &request.asset;
        // A market, once made, is never removed: a buy makes sure of it once per process.
        let known = self
            .known_markets
            .lock()
            .is_ok_and(|known| known.contains(asset));
        if !known {
            self.ensure_market(asset).await?;
            if let Ok(mut known) = self.known_markets.lock() {
                if known.len() >= ACCOUNT_CACHE_MAX {
                    known.clear();
                }
                known.insert(asset.clone());
            }
        }
        BuyOrder::new(request.buyer, request.quantity, request.limit, None)?;
        let buyer = Owner::Org(request.buyer);
        let accounts = BuyerAccounts {
            acquired: self.account(asset, buyer, AccountKind::Acquired).await?,
            wallet: self
                .account(&AssetCode::credit(), buyer, AccountKind::Wallet)
                .await?,
        };
        let market = self.accounts.market(&self.ledger, asset).await?;
        let context = BuyContext {
            request: request.clone(),
            policy: self.policy,
            buyer: accounts,
            market,
            request_json: buy_request_json(request),
        };
        self.buys.buy(&self.ledger, context).await
    }

    /// Sells `alloc` tokens to the provider at the market's buyback price now (`alloc →
    /// treasury` tokens, `issuance → wallet` credits, code `buyback`, one linked chain), within
    /// the market's caps per cycle and per org, summed in the same transaction.
    pub async fn buyback(&self, request: &BuybackRequest) -> Result<BuybackRecord, MarketError> {
        if request.id.is_nil() || request.id.is_max() {
            return Err(MarketError::InvalidId);
        }
        let asset = &request.asset;
        let info = self.ensure_market(asset).await?;
        let face = face_value(self.store(), &info.record.class, &info.record.cycle).await?;
        let org = Owner::Org(request.org);
        let credit = AssetCode::credit();
        let accounts = BuybackAccounts {
            source: self.account(asset, org, AccountKind::Alloc).await?,
            treasury: self
                .account(asset, Owner::Provider, AccountKind::Treasury)
                .await?,
            issuance: self
                .account(&credit, Owner::Provider, AccountKind::Issuance)
                .await?,
            wallet: self.account(&credit, org, AccountKind::Wallet).await?,
        };
        let reads = MarketReads {
            buyback: Some(request.id),
            org: Some(request.org),
            usage_of: Some(request.org),
            ..MarketReads::default()
        };
        let policy = self.policy;
        let ran = run(self.store(), asset, &reads, |view| {
            plan_buyback(view, &policy, request, face, &accounts)
        })
        .await?;
        Ok(ran.value)
    }

    /// Sells to the provider, at the buyback price, what is left of every listing whose
    /// automatic sale is due (`escrow → treasury` tokens, `issuance → wallet` credits, code
    /// `buyback`), at most `limit` listings per run. Safe in every process at once and to run
    /// again: a listing is sold once (its buyback's id derives from the listing). A sale the
    /// buyback caps refuse leaves the listing open, and a frozen seller's listing is skipped.
    pub async fn run_auto_sales(&self, limit: u32) -> Result<AutoSaleReport, MarketError> {
        let now = self.store().clock().now();
        let mut report = AutoSaleReport::default();
        for listing in self.store().due_auto_sales(now, limit).await? {
            match self.auto_sell(&listing).await {
                Ok(Some(_)) => report.sold += 1,
                Ok(None) => {}
                Err(MarketError::Buyback(error)) => {
                    tracing::warn!(listing = %listing.id, %error, "an automatic sale was refused");
                    report.refused += 1;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(report)
    }

    async fn auto_sell(
        &self,
        listing: &ListingRecord,
    ) -> Result<Option<BuybackRecord>, MarketError> {
        let asset = &listing.asset;
        let info = self.ensure_market(asset).await?;
        let face = face_value(self.store(), &info.record.class, &info.record.cycle).await?;
        let credit = AssetCode::credit();
        let accounts = BuybackAccounts {
            source: listing.seller_escrow,
            treasury: self
                .account(asset, Owner::Provider, AccountKind::Treasury)
                .await?,
            issuance: self
                .account(&credit, Owner::Provider, AccountKind::Issuance)
                .await?,
            wallet: listing.seller_wallet,
        };
        let request = BuybackRequest {
            id: derived_id(&["auto_sale", &listing.id.to_string()]).as_uuid(),
            org: listing.seller,
            asset: asset.clone(),
            quantity: listing.quantity_open,
        };
        let reads = MarketReads {
            listing: Some(listing.id),
            buyback: Some(request.id),
            org: Some(listing.seller),
            usage_of: Some(listing.seller),
            ..MarketReads::default()
        };
        let ran = run(self.store(), asset, &reads, |view| {
            plan_auto_sale(view, &request, face, &accounts)
        })
        .await?;
        Ok(ran.value)
    }

    /// What buying `quantity` tokens from the book would cost now (for any buyer).
    pub async fn quote(&self, asset: &AssetCode, quantity: u64) -> Result<Quote, MarketError> {
        let (info, records) = self.read_book(asset).await?;
        let book = info.book(&records)?;
        Ok(book.quote(quantity, self.store().clock().now())?)
    }

    /// The book's depth now, cheapest first: up to `levels` price levels.
    pub async fn depth(
        &self,
        asset: &AssetCode,
        levels: usize,
    ) -> Result<Vec<DepthLevel>, MarketError> {
        let (info, records) = self.read_book(asset).await?;
        let book = info.book(&records)?;
        Ok(book.depth(levels, self.store().clock().now()))
    }

    /// An order and what came of it, as the first run answered.
    pub async fn order(&self, id: Uuid) -> Result<Option<(OrderRecord, OrderResult)>, MarketError> {
        let Some((order, fills)) = self.store().order(id).await? else {
            return Ok(None);
        };
        let summary = serde_json::from_str(&order.result).map_err(corrupt)?;
        let result = OrderResult {
            order_id: order.id,
            summary,
            fills,
            replayed: true,
            created_at: order.created_at,
        };
        Ok(Some((order, result)))
    }

    /// What the provider would pay now for 1M tokens sold back in this market.
    pub async fn buyback_price_now(&self, info: &MarketInfo) -> Result<u64, MarketError> {
        let face = face_value(self.store(), &info.record.class, &info.record.cycle).await?;
        let now = self.store().clock().now();
        Ok(info
            .settings
            .buyback()
            .price(face, info.window, now)
            .per_1m_micro_cr())
    }

    /// The cheapest decayed price now and the tokens for sale at it; `None` for an empty book.
    /// Reads the book (in (ask, arrival) order, which decay never reorders) only
    /// as far as that price, not the whole of it as [`Market::depth`] does.
    pub async fn best(&self, info: &MarketInfo) -> Result<Option<(u64, u64)>, MarketError> {
        let asset = &info.record.asset;
        let factor = info
            .settings
            .curve()
            .factor(info.window, self.store().clock().now());
        let mut best: Option<(u64, u64)> = None;
        let mut after = None;
        loop {
            let page = self.store().book(asset, after, BUY_BOOK_PAGE).await?;
            for listing in &page {
                let price = credex_pricing::decay::price_at(listing.ask_per_1m_micro_cr, factor);
                match &mut best {
                    None => best = Some((price, listing.quantity_open)),
                    Some((at, quantity)) if *at == price => {
                        *quantity = quantity.saturating_add(listing.quantity_open);
                    }
                    Some(_) => return Ok(best),
                }
            }
            match page.last() {
                Some(last) if page.len() == BUY_BOOK_PAGE as usize => {
                    after = Some((last.ask_per_1m_micro_cr, last.seq));
                }
                _ => return Ok(best),
            }
        }
    }

    /// The market's most recent fills, newest first.
    pub async fn recent_fills(
        &self,
        asset: &AssetCode,
        limit: u32,
    ) -> Result<Vec<FillRecord>, MarketError> {
        Ok(self.store().recent_fills(asset, limit).await?)
    }

    async fn read_book(
        &self,
        asset: &AssetCode,
    ) -> Result<(MarketInfo, Vec<ListingRecord>), MarketError> {
        let info = self.ensure_market(asset).await?;
        let mut records: Vec<ListingRecord> = Vec::new();
        loop {
            let after = records
                .last()
                .map(|last| (last.ask_per_1m_micro_cr, last.seq));
            let page = self
                .store()
                .book(asset, after, credex_store::market::BOOK_PAGE_MAX)
                .await?;
            let full = page.len() == credex_store::market::BOOK_PAGE_MAX as usize;
            records.extend(page);
            if !full || records.len() >= READ_BOOK_MAX {
                return Ok((info, records));
            }
        }
    }

    async fn account(
        &self,
        asset: &AssetCode,
        owner: Owner,
        kind: AccountKind,
    ) -> Result<AccountId, MarketError> {
        Ok(self.accounts.get(&self.ledger, asset, owner, kind).await?)
    }
}

/// The selling policy in force: the one admins set (read in the transaction), else the
/// configuration's.
fn effective_policy(
    view: &MarketView,
    configured: &FraudPolicy,
) -> Result<FraudPolicy, MarketError> {
    match &view.policy {
        Some(json) => FraudPolicy::from_json(json).map_err(corrupt),
        None => Ok(*configured),
    }
}

/// The class's face value in the cycle.
async fn face_value(store: &dyn Store, class: &str, cycle: &str) -> Result<u64, MarketError> {
    store
        .cycle_classes(cycle)
        .await?
        .into_iter()
        .find(|(name, _)| name == class)
        .map(|(_, face)| face)
        .ok_or_else(|| MarketError::NoSuchClass {
            class: class.to_owned(),
            cycle: cycle.to_owned(),
        })
}

fn plan_list(
    view: &MarketView,
    policy: &FraudPolicy,
    request: &ListRequest,
    new: &NewListing,
    transfer: &Transfer,
) -> Result<Plan<Option<ListingRecord>>, MarketError> {
    if let Some(existing) = &view.listing {
        let same = existing.seller == request.seller
            && existing.asset == request.asset
            && existing.ask_per_1m_micro_cr == request.ask_per_1m_micro_cr
            && existing.quantity_listed == request.quantity
            && existing.min_fill == new.min_fill
            && existing.auto_sell_at == request.auto_sell_at;
        return if same {
            Ok(Plan::Done(Some(existing.clone())))
        } else {
            Err(MarketError::IdempotencyConflict(request.id))
        };
    }
    let org = view
        .org
        .as_ref()
        .ok_or(MarketError::UnknownOrg(request.seller))?;
    let policy = effective_policy(view, policy)?;
    policy.check_seller(org, &view.review_flags, view.now)?;
    let market = &view.market;
    if view.now < market.window_open || view.now >= market.cycle_end {
        return Err(MarketError::OutsideListingWindow {
            at: view.now,
            opens: market.window_open,
            closes: market.cycle_end,
        });
    }
    if let Some(at) = request.auto_sell_at {
        if at <= view.now || at >= market.cycle_end {
            return Err(MarketError::AutoSellOutOfRange);
        }
    }
    let usage = view.usage.unwrap_or_default();
    policy.check_sell_cap(&usage, request.quantity)?;
    let write = MarketWrite {
        transfers: vec![transfer.clone()],
        new_listing: Some(new.clone()),
        ..MarketWrite::default()
    };
    Ok(Plan::Write(Box::new(write), None))
}

/// An amendment or cancellation: what to keep open, under which transfer id, asked by whom.
#[derive(Debug, Clone, Copy)]
struct Withdrawal {
    transfer_id: TransferId,
    who: Withdrawer,
    /// Tokens left open afterwards: 0 cancels.
    keep: u64,
}

impl Withdrawal {
    fn allows(&self, seller: OrgId) -> bool {
        match self.who {
            Withdrawer::Seller(org) => org == seller,
            Withdrawer::Platform => true,
        }
    }
}

/// The id of a listing's cancellation: a listing is cancelled once, by its seller or by the
/// cycle's close, whichever comes first.
fn cancel_id(listing: Uuid) -> TransferId {
    derived_id(&["cancel", &listing.to_string()])
}

/// Amends or cancels a listing in its market's transaction.
async fn withdraw(
    ledger: &Ledger,
    accounts: &AccountBook,
    asset: &AssetCode,
    listing_id: Uuid,
    change: Withdrawal,
) -> Result<ListingRecord, MarketError> {
    let store = ledger.store().as_ref();
    let Some(listing) = store.listing(listing_id).await? else {
        return Err(MarketError::ListingNotFound(listing_id));
    };
    if &listing.asset != asset || !change.allows(listing.seller) {
        return Err(MarketError::ListingNotFound(listing_id));
    }
    let alloc = accounts
        .get(
            ledger,
            asset,
            Owner::Org(listing.seller),
            AccountKind::Alloc,
        )
        .await?;
    let reads = MarketReads {
        listing: Some(listing_id),
        transfers: vec![change.transfer_id],
        ..MarketReads::default()
    };
    let ran = run(store, asset, &reads, |view| {
        plan_withdrawal(view, listing_id, &change, alloc)
    })
    .await?;
    match ran.value {
        Some(listing) => Ok(listing),
        None => store
            .listing(listing_id)
            .await?
            .ok_or(MarketError::ListingNotFound(listing_id)),
    }
}

fn plan_withdrawal(
    view: &MarketView,
    listing_id: Uuid,
    change: &Withdrawal,
    alloc: AccountId,
) -> Result<Plan<Option<ListingRecord>>, MarketError> {
    let listing = view
        .listing
        .as_ref()
        .filter(|listing| change.allows(listing.seller))
        .ok_or(MarketError::ListingNotFound(listing_id))?;
    let replay = view.known_transfers.contains(&change.transfer_id)
        || (change.keep == 0 && listing.state == ListingState::Cancelled);
    if replay {
        return Ok(Plan::Done(Some(listing.clone())));
    }
    if listing.state != ListingState::Open {
        return Err(MarketError::ListingNotOpen {
            id: listing.id,
            state: listing.state,
        });
    }
    let open = listing.quantity_open;
    if change.keep >= open {
        return Err(MarketError::NotADecrease {
            open,
            requested: change.keep,
        });
    }
    let transfer = movement_transfer(
        change.transfer_id,
        (listing.seller_escrow, alloc),
        &listing.asset,
        open - change.keep,
        TransferCode::Unlist,
        &format!(r#"{{"listing_id":"{}"}}"#, listing.id),
    )?;
    let state = if change.keep == 0 {
        ListingState::Cancelled
    } else {
        ListingState::Open
    };
    let mut after = listing.clone();
    after.quantity_open = change.keep;
    after.state = state;
    after.updated_at = view.now;
    let write = MarketWrite {
        transfers: vec![transfer],
        listing_changes: vec![ListingChange {
            id: listing.id,
            expected_open: open,
            open: change.keep,
            filled: 0,
            state,
        }],
        ..MarketWrite::default()
    };
    Ok(Plan::Write(Box::new(write), Some(after)))
}

/// A buy order with what its decision needs besides the view.
#[derive(Debug)]
struct BuyContext {
    request: BuyRequest,
    policy: FraudPolicy,
    buyer: BuyerAccounts,
    market: MarketAccounts,
    request_json: String,
}

impl BuyContext {
    /// What a buy reads under the market's lock: the book, a replay, the buyer's standing and
    /// links, and the treasury (emergency credits come from its stock first).
    fn reads(&self) -> MarketReads {
        MarketReads {
            book_page: BUY_BOOK_PAGE,
            order: Some(self.request.id),
            org: Some(self.request.buyer),
            links_of: Some(self.request.buyer),
            balances: vec![self.market.treasury],
            ..MarketReads::default()
        }
    }
}

/// Runs one buy order in its own market transaction.
async fn buy_alone(store: &dyn Store, context: &BuyContext) -> Result<OrderResult, MarketError> {
    let reads = context.reads();
    let ran = run(store, &context.request.asset, &reads, |view| {
        plan_buy(view, context)
    })
    .await?;
    Ok(ran.value)
}

fn buy_request_json(request: &BuyRequest) -> String {
    let (limit_kind, limit) = match request.limit {
        Limit::PricePer1m(price) => ("price_per_1m_micro_cr", price),
        Limit::MaxTotal(total) => ("max_total_micro_cr", total),
    };
    serde_json::json!({
        "buyer": request.buyer,
        "asset": request.asset.as_str(),
        "quantity": request.quantity,
        limit_kind: limit,
        "allow_provider_fill": request.allow_provider_fill,
    })
    .to_string()
}

fn plan_buy(view: &MarketView, context: &BuyContext) -> Result<Plan<OrderResult>, MarketError> {
    let request = &context.request;
    if let Some((order, fills)) = &view.order {
        if order.request != context.request_json {
            return Err(MarketError::IdempotencyConflict(request.id));
        }
        let summary = serde_json::from_str(&order.result).map_err(corrupt)?;
        return Ok(Plan::Done(OrderResult {
            order_id: order.id,
            summary,
            fills: fills.clone(),
            replayed: true,
            created_at: order.created_at,
        }));
    }
    let org = view
        .org
        .as_ref()
        .ok_or(MarketError::UnknownOrg(request.buyer))?;
    effective_policy(view, &context.policy)?.check_trader(org, &view.review_flags)?;
    let info = MarketInfo::parse(view.market.clone())?;
    let provider_fill = if request.allow_provider_fill && info.settings.provider_fill() {
        let price = info.settings.provider_list_price_per_1m_micro_cr();
        Some(ProviderFill::new(price, QUANTITY_MAX)?)
    } else {
        None
    };
    let order = BuyOrder::new(
        request.buyer,
        request.quantity,
        request.limit,
        provider_fill,
    )?;
    let mut book = info.book(&view.book)?;
    let linked = |_buyer: OrgId, seller: OrgId| view.linked.contains(&seller);
    let outcome = book.match_order(&order, view.now, &linked)?;
    if !view.book_complete && outcome.stop_reason() == credex_matching::StopReason::BookExhausted {
        return Ok(Plan::More);
    }
    let treasury = view
        .balances
        .get(&context.market.treasury)
        .map_or(0, |balance| u64::try_from(balance.available()).unwrap_or(0));
    settle(view, context, &outcome, treasury)
}

/// The order's chain, fills, listing changes and order row.
fn settle(
    view: &MarketView,
    context: &BuyContext,
    outcome: &MatchOutcome,
    treasury_available: u64,
) -> Result<Plan<OrderResult>, MarketError> {
    let request = &context.request;
    let listings: HashMap<Uuid, &ListingRecord> = view
        .book
        .iter()
        .map(|listing| (listing.id, listing))
        .collect();
    let sellers: HashMap<OrgId, SellerAccounts> = view
        .book
        .iter()
        .map(|listing| {
            let accounts = SellerAccounts {
                escrow: listing.seller_escrow,
                wallet: listing.seller_wallet,
            };
            (listing.seller, accounts)
        })
        .collect();
    let order_text = request.id.to_string();
    let mut next = 0_u64;
    let next_id = || {
        next += 1;
        derived_id(&["buy", &order_text, &next.to_string()])
    };
    let transfers = settle_order(
        outcome,
        &context.buyer,
        &context.market,
        |org| sellers.get(&org).copied(),
        treasury_available,
        next_id,
    )?;
    let mut legs = transfers.iter().map(Transfer::id);
    let mut fills = Vec::with_capacity(outcome.fills().len() + 1);
    let mut changes = Vec::with_capacity(outcome.fills().len());
    for (position, fill) in outcome.fills().iter().enumerate() {
        let ids: Vec<TransferId> = legs.by_ref().take(fill_legs(fill)).collect();
        let listing = listings
            .get(&fill.listing().as_uuid())
            .ok_or_else(|| corrupt("a fill from a listing not in the book"))?;
        let open = listing.quantity_open - fill.quantity();
        changes.push(ListingChange {
            id: listing.id,
            expected_open: listing.quantity_open,
            open,
            filled: fill.quantity(),
            state: if open == 0 {
                ListingState::Filled
            } else {
                ListingState::Open
            },
        });
        fills.push(fill_record(view, request, position, fill, ids)?);
    }
    if let Some(sale) = outcome.provider_sale() {
        let ids: Vec<TransferId> = legs.by_ref().collect();
        fills.push(FillRecord {
            id: derived_id(&["fill", &order_text, &fills.len().to_string()]).as_uuid(),
            order_id: request.id,
            position: u32::try_from(fills.len()).map_err(corrupt)?,
            asset: request.asset.clone(),
            listing_id: None,
            buyer: request.buyer,
            seller: None,
            quantity: sale.quantity(),
            price_per_1m_micro_cr: sale.price_per_1m_micro_cr(),
            cost_micro_cr: sale.cost_micro_cr(),
            fee_micro_cr: 0,
            fee_payer: None,
            transfer_ids: ids,
            at: view.now,
        });
    }
    if legs.next().is_some() {
        return Err(corrupt("settlement made more legs than its fills"));
    }
    let summary = summary(request, outcome);
    let order = OrderRecord {
        id: request.id,
        buyer: request.buyer,
        asset: request.asset.clone(),
        request: context.request_json.clone(),
        result: serde_json::to_string(&summary).map_err(corrupt)?,
        created_at: view.now,
    };
    let result = OrderResult {
        order_id: request.id,
        summary,
        fills: fills.clone(),
        replayed: false,
        created_at: view.now,
    };
    let write = MarketWrite {
        transfers,
        listing_changes: changes,
        order: Some(order),
        fills,
        ..MarketWrite::default()
    };
    Ok(Plan::Write(Box::new(write), result))
}

/// How many ledger legs a fill settles as: tokens, then the cost and the fee when not zero.
fn fill_legs(fill: &Fill) -> usize {
    1 + usize::from(fill.cost_micro_cr() > 0) + usize::from(fill.fee_micro_cr() > 0)
}

fn fill_record(
    view: &MarketView,
    request: &BuyRequest,
    position: usize,
    fill: &Fill,
    transfer_ids: Vec<TransferId>,
) -> Result<FillRecord, MarketError> {
    Ok(FillRecord {
        id: derived_id(&["fill", &request.id.to_string(), &position.to_string()]).as_uuid(),
        order_id: request.id,
        position: u32::try_from(position).map_err(corrupt)?,
        asset: request.asset.clone(),
        listing_id: Some(fill.listing().as_uuid()),
        buyer: request.buyer,
        seller: Some(fill.seller()),
        quantity: fill.quantity(),
        price_per_1m_micro_cr: fill.price_per_1m_micro_cr(),
        cost_micro_cr: fill.cost_micro_cr(),
        fee_micro_cr: fill.fee_micro_cr(),
        fee_payer: Some(match fill.fee_payer() {
            credex_matching::FeePayer::Seller => FillFeePayer::Seller,
            credex_matching::FeePayer::Buyer => FillFeePayer::Buyer,
        }),
        transfer_ids,
        at: view.now,
    })
}

fn summary(request: &BuyRequest, outcome: &MatchOutcome) -> OrderSummary {
    let stop_reason = serde_json::to_value(outcome.stop_reason())
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    OrderSummary {
        quantity: request.quantity,
        filled: outcome.filled(),
        from_listings: outcome.filled_from_book(),
        from_provider: outcome.provider_sale().map_or(0, |sale| sale.quantity()),
        unfilled: outcome.unfilled(),
        buyer_paid_micro_cr: outcome.buyer_pays_micro_cr(),
        fees_micro_cr: outcome.fees_micro_cr(),
        stop_reason,
    }
}

#[derive(Debug, Clone, Copy)]
struct BuybackAccounts {
    /// The org's `alloc` for its own sale, the listing's `escrow` for an automatic sale.
    source: AccountId,
    treasury: AccountId,
    issuance: AccountId,
    wallet: AccountId,
}

fn plan_buyback(
    view: &MarketView,
    policy: &FraudPolicy,
    request: &BuybackRequest,
    face_value_per_1m_micro_cr: u64,
    accounts: &BuybackAccounts,
) -> Result<Plan<BuybackRecord>, MarketError> {
    if let Some(existing) = &view.buyback {
        let same = existing.org == request.org
            && existing.asset == request.asset
            && existing.quantity == request.quantity;
        return if same {
            Ok(Plan::Done(existing.clone()))
        } else {
            Err(MarketError::IdempotencyConflict(request.id))
        };
    }
    let org = view
        .org
        .as_ref()
        .ok_or(MarketError::UnknownOrg(request.org))?;
    let policy = effective_policy(view, policy)?;
    policy.check_seller(org, &view.review_flags, view.now)?;
    let market = &view.market;
    if view.now >= market.cycle_end {
        return Err(MarketError::MarketEnded {
            at: view.now,
            closed: market.cycle_end,
        });
    }
    let usage = view.usage.unwrap_or_default();
    policy.check_sell_cap(&usage, request.quantity)?;
    let write = buyback_write(view, request, face_value_per_1m_micro_cr, accounts)?;
    let record = write
        .buyback
        .clone()
        .ok_or_else(|| corrupt("a buyback without its record"))?;
    Ok(Plan::Write(Box::new(write), record))
}

/// A buyback's linked chain and record, priced and cap-checked at the view's instant.
fn buyback_write(
    view: &MarketView,
    request: &BuybackRequest,
    face_value_per_1m_micro_cr: u64,
    accounts: &BuybackAccounts,
) -> Result<MarketWrite, MarketError> {
    let info = MarketInfo::parse(view.market.clone())?;
    let usage = view.usage.unwrap_or_default();
    let context = BuybackContext {
        face_value_per_1m_micro_cr,
        window: info.window,
        now: view.now,
        paid_in_cycle_micro_cr: usage.market_paid_micro_cr,
        paid_to_org_micro_cr: usage.org_paid_micro_cr,
    };
    let quote =
        credex_pricing::buyback::quote(&info.settings.buyback(), &context, request.quantity)?;
    let id = request.id.to_string();
    let metadata = format!(r#"{{"buyback_id":"{id}"}}"#);
    let tokens = movement_transfer(
        derived_id(&["buyback", &id, "tokens"]),
        (accounts.source, accounts.treasury),
        &request.asset,
        quote.quantity_tokens().get(),
        TransferCode::Buyback,
        &metadata,
    )?
    .with_linked(true);
    let credits = movement_transfer(
        derived_id(&["buyback", &id, "credits"]),
        (accounts.issuance, accounts.wallet),
        &AssetCode::credit(),
        quote.payout_micro_cr().get(),
        TransferCode::Buyback,
        &metadata,
    )?;
    let record = BuybackRecord {
        id: request.id,
        org: request.org,
        asset: request.asset.clone(),
        listing_id: None,
        quantity: request.quantity,
        price_per_1m_micro_cr: quote.unit_price_per_1m_micro_cr(),
        payout_micro_cr: quote.payout_micro_cr().get(),
        transfer_ids: vec![tokens.id(), credits.id()],
        at: view.now,
    };
    Ok(MarketWrite {
        transfers: vec![tokens, credits],
        buyback: Some(record),
        ..MarketWrite::default()
    })
}

/// What a run of the automatic sales did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AutoSaleReport {
    /// Listings whose rest was sold to the provider.
    pub sold: u64,
    /// Listings left open because a buyback cap refused the sale.
    pub refused: u64,
}

/// An automatic sale: what is left of a due listing, from its `escrow`, at the buyback price.
/// The tokens were counted against the sell cap when listed, so the cap is not checked again.
fn plan_auto_sale(
    view: &MarketView,
    request: &BuybackRequest,
    face_value_per_1m_micro_cr: u64,
    accounts: &BuybackAccounts,
) -> Result<Plan<Option<BuybackRecord>>, MarketError> {
    if let Some(existing) = &view.buyback {
        return Ok(Plan::Done(Some(existing.clone())));
    }
    let Some(listing) = &view.listing else {
        return Ok(Plan::Done(None));
    };
    let due = listing.auto_sell_at.is_some_and(|at| at <= view.now);
    let frozen = view.org.as_ref().is_none_or(|org| org.frozen) || !view.review_flags.is_empty();
    if listing.state != ListingState::Open || !due || frozen || view.now >= view.market.cycle_end {
        return Ok(Plan::Done(None));
    }
    let request = BuybackRequest {
        quantity: listing.quantity_open,
        ..request.clone()
    };
    let mut write = buyback_write(view, &request, face_value_per_1m_micro_cr, accounts)?;
    if let Some(record) = &mut write.buyback {
        record.listing_id = Some(listing.id);
    }
    write.listing_changes.push(ListingChange {
        id: listing.id,
        expected_open: listing.quantity_open,
        open: 0,
        filled: 0,
        state: ListingState::Sold,
    });
    let record = write.buyback.clone();
    Ok(Plan::Write(Box::new(write), record))
}

/// Cancels every open listing of a market (the cycle's close does this before closing its
/// assets): each as its seller's cancel would, with the same derived transfer id, so running
/// it again, or beside a seller's own cancel, moves nothing twice. Returns how many this run
/// cancelled. A market whose asset has closed is left alone: its listings are expired with it.
pub async fn cancel_open_listings(ledger: &Ledger, asset: &AssetCode) -> Result<u64, MarketError> {
    let store = ledger.store();
    if store.market(asset).await?.is_none() {
        return Ok(0);
    }
    let closed = store
        .assets()
        .await?
        .into_iter()
        .any(|view| &view.code == asset && view.closed_at.is_some());
    if closed {
        return Ok(0);
    }
    let accounts = AccountBook::default();
    let mut cancelled = 0;
    let mut previous = None;
    loop {
        let page = store
            .book(asset, None, credex_store::market::BOOK_PAGE_MAX)
            .await?;
        let Some(first) = page.first() else {
            return Ok(cancelled);
        };
        if previous == Some(first.id) {
            return Err(corrupt(format!(
                "listing {} stays open after its cancel",
                first.id
            )));
        }
        previous = Some(first.id);
        for listing in page {
            let change = Withdrawal {
                transfer_id: cancel_id(listing.id),
                who: Withdrawer::Platform,
                keep: 0,
            };
            match withdraw(ledger, &accounts, asset, listing.id, change).await {
                Ok(_) => cancelled += 1,
                Err(MarketError::ListingNotOpen { .. }) => {}
                Err(error) => return Err(error),
            }
        }
    }
}
