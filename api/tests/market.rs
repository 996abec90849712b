//! The market service on both backends: listings, amendments and cancels move exactly their
//! tokens; buy orders fill in price-time order across sellers with fees, within limits and
//! budgets, from the provider when listings run out, never from the buyer's own or linked orgs;
//! one hop holds; buybacks stay within their caps; every refusal changes nothing; replays move
//! nothing twice; two processes racing 32 buyers over 50 listings never fill one twice; and a
//! cycle's close cancels its listings.

use std::collections::HashMap;
use std::sync::Arc;

use credex_api::cycles::{close_cycle, open_cycle, CycleId};
use credex_api::market::{
    BuyRequest, BuybackRequest, FraudPolicy, ListRequest, Market, MarketError, MarketSettings,
    MarketSettingsInput, OrderResult, Refusal, Withdrawer,
};
use credex_ledger::{
    AccountKind, Action, Amount, AssetCode, Clock, ManualClock, Metadata, Movement, OrgId, Owner,
    Transfer, TransferCode, TransferId,
};
use credex_matching::{FeePayer, Limit};
use credex_pricing::{BuybackSettings, BuybackSettingsInput, CapKind, DecayCurve};
use credex_store::{
    AccountView, Allotment, ClassRecord, Ledger, ListingRecord, ListingState, OrgName, Plan, Store,
    VerificationLevel,
};
use credex_tests::{audit, on_both_backends, top_up, TestDb};
use rust_decimal::Decimal;
use uuid::Uuid;

const NOV: &str = "2026-11";
/// µCR per 1M tokens of the class `pro`.
const FACE: u64 = 4_000_000;
/// Tokens of `pro` a teams org gets per cycle.
const ALLOT: u64 = 2_000_000;
/// Every org's credits: 1,000 CR.
const CREDITS: u64 = 1_000_000_000;
const DAY: i64 = 86_400_000_000;

struct World {
    market: Market,
    ledger: Arc<Ledger>,
    clock: Arc<ManualClock>,
    cycle: CycleId,
    asset: AssetCode,
    orgs: Vec<OrgId>,
}

/// Class `pro` (free: 1M tokens, teams and enterprise: 2M), verified orgs 30 days old with
/// 1,000 CR each, the November cycle opened, and the clock at its market's window opening
/// (where the decay factor is still 1).
async fn world(db: &TestDb, plans: &[Plan]) -> World {
    let cycle = CycleId::parse(NOV).expect("a cycle");
    let start = cycle.starts_at();
    let clock = Arc::new(ManualClock::new(start));
    let ledger = Arc::new(db.ledger(clock.clone()).await);
    let store = ledger.store().clone();
    let class = ClassRecord {
        class: "pro".to_owned(),
        face_value_per_1m_micro_cr: FACE,
        description: "pro models".to_owned(),
        created_at: start,
        updated_at: start,
    };
    store
        .put_class(&class, &audit("classes.put"))
        .await
        .expect("a class");
    for (plan, tokens) in [
        (Plan::Free, 1_000_000),
        (Plan::Teams, ALLOT),
        (Plan::Enterprise, ALLOT),
    ] {
        let allotment = Allotment {
            plan,
            tokens_per_cycle: tokens,
        };
        store
            .put_allotment("pro", allotment, start, &audit("allotments.put"))
            .await
            .expect("an allotment");
    }
    let mut orgs = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let name = OrgName::parse(&format!("Org {i}")).expect("a name");
        let org = store
            .create_org(&name, *plan, start.plus_micros(-30 * DAY))
            .await
            .expect("an org")
            .id;
        let level = VerificationLevel::new(1).expect("a level");
        store.set_verification(org, level).await.expect("verify");
        orgs.push(org);
    }
    open_cycle(&ledger, cycle, start).await.expect("open");
    for org in &orgs {
        top_up(&ledger, *org, CREDITS).await;
    }
    let market = Market::new(ledger.clone(), FraudPolicy::default());
    let asset = cycle.asset("pro").expect("an asset");
    let info = market.ensure_market(&asset).await.expect("a market");
    assert_eq!(
        info.record.window_open,
        cycle.ends_at().plus_micros(-7 * DAY)
    );
    clock.set(info.record.window_open);
    World {
        market,
        ledger,
        clock,
        cycle,
        asset,
        orgs,
    }
}

fn transfer(movement: Movement) -> Transfer {
    Transfer::new(
        TransferId::generate(),
        Action::Move(movement),
        Metadata::new("test").expect("metadata"),
        false,
    )
    .expect("a transfer")
}

impl World {
    fn store(&self) -> &Arc<dyn Store> {
        self.ledger.store()
    }

    /// An account's posted balance, credits minus debits (0 for an account not made yet).
    async fn net(&self, asset: &AssetCode, owner: Owner, kind: AccountKind) -> i128 {
        self.store()
            .find_account(asset, owner, kind)
            .await
            .expect("find")
            .map_or(0, |view| view.balance.net_posted())
    }

    async fn tokens(&self, org: OrgId, kind: AccountKind) -> i128 {
        self.net(&self.asset, Owner::Org(org), kind).await
    }

    async fn credits(&self, org: OrgId) -> i128 {
        self.net(&AssetCode::credit(), Owner::Org(org), AccountKind::Wallet)
            .await
    }

    async fn provider(&self, asset: &AssetCode, kind: AccountKind) -> i128 {
        self.net(asset, Owner::Provider, kind).await
    }

    async fn list(&self, seller: OrgId, quantity: u64, ask: u64) -> ListingRecord {
        self.try_list(Uuid::new_v4(), seller, quantity, ask)
            .await
            .expect("a listing")
    }

    async fn try_list(
        &self,
        id: Uuid,
        seller: OrgId,
        quantity: u64,
        ask: u64,
    ) -> Result<ListingRecord, MarketError> {
        let request = ListRequest {
            id,
            seller,
            asset: self.asset.clone(),
            quantity,
            ask_per_1m_micro_cr: ask,
            min_fill: None,
            auto_sell_at: None,
        };
        self.market.list(&request).await
    }

    fn buy_request(&self, buyer: OrgId, quantity: u64, limit: Limit, provider: bool) -> BuyRequest {
        BuyRequest {
            id: Uuid::new_v4(),
            buyer,
            asset: self.asset.clone(),
            quantity,
            limit,
            allow_provider_fill: provider,
        }
    }

    async fn buy(&self, buyer: OrgId, quantity: u64, limit: Limit, provider: bool) -> OrderResult {
        let request = self.buy_request(buyer, quantity, limit, provider);
        self.market.buy(&request).await.expect("a buy")
    }

    fn buyback_request(&self, org: OrgId, quantity: u64) -> BuybackRequest {
        BuybackRequest {
            id: Uuid::new_v4(),
            org,
            asset: self.asset.clone(),
            quantity,
        }
    }

    async fn listing(&self, id: Uuid) -> ListingRecord {
        self.store()
            .listing(id)
            .await
            .expect("read")
            .expect("the listing")
    }

    /// The listings as stored now, each checked: open + filled = listed, and its fills sum to
    /// what it says it sold.
    async fn listings_add_up(&self, listings: &[ListingRecord]) -> Vec<ListingRecord> {
        let mut stored = Vec::new();
        for listing in listings {
            let now = self.listing(listing.id).await;
            let fills = self.store().listing_fills(listing.id).await.expect("fills");
            let sold: u64 = fills.iter().map(|f| f.quantity).sum();
            assert_eq!(sold, now.quantity_filled, "{now:?}");
            assert_eq!(now.quantity_open + now.quantity_filled, now.quantity_listed);
            stored.push(now);
        }
        stored
    }

    /// Each of the first `sellers` orgs' escrow holds exactly its listings' open quantities.
    async fn escrows_hold_open_listings(&self, stored: &[ListingRecord], sellers: usize) {
        for seller in &self.orgs[..sellers] {
            let open: u64 = stored
                .iter()
                .filter(|l| l.seller == *seller)
                .map(|l| l.quantity_open)
                .sum();
            assert_eq!(
                self.tokens(*seller, AccountKind::Escrow).await,
                i128::from(open)
            );
        }
    }

    /// Everything a refused request must leave as it was: every balance, the journal's
    /// length, every listing, every order's fills. (A request may make an org's empty account
    /// before it is refused: accounts are made ahead, outside the market's transaction, and an
    /// empty account holds no value, so those are left out.)
    async fn state(&self) -> State {
        let store = self.store();
        let mut accounts = store.snapshot().await.expect("snapshot");
        accounts.retain(|view| view.balance != credex_ledger::Balance::default());
        let journal = store.journal(i64::MIN, 1_000).await.expect("journal").len();
        let mut listings = Vec::new();
        for org in &self.orgs {
            listings.extend(
                store
                    .listings_of(*org, None, 1_000)
                    .await
                    .expect("listings"),
            );
        }
        let fills = store
            .recent_fills(&self.asset, 1_000)
            .await
            .expect("fills")
            .len();
        assert!(store.check().await.expect("check").is_ok());
        State {
            accounts,
            journal,
            listings,
            fills,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct State {
    accounts: Vec<AccountView>,
    journal: usize,
    listings: Vec<ListingRecord>,
    fills: usize,
}

fn teams(n: usize) -> Vec<Plan> {
    vec![Plan::Teams; n]
}

async fn listing_amend_and_cancel_move_exactly_their_tokens(db: &TestDb) {
    let w = world(db, &teams(2)).await;
    let (a, b) = (w.orgs[0], w.orgs[1]);
    let id = Uuid::new_v4();
    let listing = w
        .try_list(id, a, 500_000, 3_000_000)
        .await
        .expect("a listing");
    assert_eq!(
        (listing.quantity_open, listing.seq, listing.state),
        (500_000, 1, ListingState::Open)
    );
    assert_eq!(w.tokens(a, AccountKind::Alloc).await, 1_500_000);
    assert_eq!(w.tokens(a, AccountKind::Escrow).await, 500_000);

    // A replay answers the listing; the same id for something else is refused.
    let before = w.state().await;
    let again = w
        .try_list(id, a, 500_000, 3_000_000)
        .await
        .expect("a replay");
    assert_eq!(again, listing);
    let other = w.try_list(id, a, 400_000, 3_000_000).await;
    assert!(
        matches!(other, Err(MarketError::IdempotencyConflict(_))),
        "{other:?}"
    );
    assert_eq!(w.state().await, before);

    let amend = Uuid::new_v4();
    let amended = w
        .market
        .amend_down(amend, a, &w.asset, id, 200_000)
        .await
        .expect("amend");
    assert_eq!(
        (amended.quantity_open, amended.quantity_listed),
        (200_000, 500_000)
    );
    assert_eq!(w.tokens(a, AccountKind::Alloc).await, 1_800_000);
    assert_eq!(w.tokens(a, AccountKind::Escrow).await, 200_000);
    let before = w.state().await;
    let replay = w.market.amend_down(amend, a, &w.asset, id, 200_000).await;
    assert_eq!(replay.expect("a replay").quantity_open, 200_000);
    let up = w
        .market
        .amend_down(Uuid::new_v4(), a, &w.asset, id, 300_000)
        .await;
    assert!(
        matches!(
            up,
            Err(MarketError::NotADecrease {
                open: 200_000,
                requested: 300_000
            })
        ),
        "{up:?}"
    );
    let foreign = w.market.cancel(Withdrawer::Seller(b), &w.asset, id).await;
    assert!(
        matches!(foreign, Err(MarketError::ListingNotFound(_))),
        "{foreign:?}"
    );
    assert_eq!(w.state().await, before);

    let cancelled = w
        .market
        .cancel(Withdrawer::Seller(a), &w.asset, id)
        .await
        .expect("cancel");
    assert_eq!(
        (cancelled.state, cancelled.quantity_open),
        (ListingState::Cancelled, 0)
    );
    assert_eq!(w.tokens(a, AccountKind::Alloc).await, i128::from(ALLOT));
    assert_eq!(w.tokens(a, AccountKind::Escrow).await, 0);
    let before = w.state().await;
    let again = w.market.cancel(Withdrawer::Seller(a), &w.asset, id).await;
    assert_eq!(again.expect("a replay").state, ListingState::Cancelled);
    let late = w
        .market
        .amend_down(Uuid::new_v4(), a, &w.asset, id, 1)
        .await;
    assert!(
        matches!(late, Err(MarketError::ListingNotOpen { .. })),
        "{late:?}"
    );
    assert_eq!(w.state().await, before);
    w.ledger.close().await;
}

async fn a_buy_fills_across_sellers_in_price_time_order_with_fees(db: &TestDb) {
    let w = world(db, &teams(5)).await;
    let (a, b, c, d, e) = (w.orgs[0], w.orgs[1], w.orgs[2], w.orgs[3], w.orgs[4]);
    let la = w.list(a, 100_000, 3_000_000).await;
    let lb = w.list(b, 100_000, 2_000_000).await;
    let lc = w.list(c, 100_000, 2_000_000).await;
    let ld = w.list(d, 100_000, 5_000_000).await;

    let request = w.buy_request(e, 250_000, Limit::PricePer1m(4_000_000), false);
    let result = w.market.buy(&request).await.expect("a buy");
    let got: Vec<(Option<Uuid>, u64, u64, u64, u64)> = result
        .fills
        .iter()
        .map(|f| {
            (
                f.listing_id,
                f.quantity,
                f.price_per_1m_micro_cr,
                f.cost_micro_cr,
                f.fee_micro_cr,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(lb.id), 100_000, 2_000_000, 200_000, 6_000),
            (Some(lc.id), 100_000, 2_000_000, 200_000, 6_000),
            (Some(la.id), 50_000, 3_000_000, 150_000, 4_500),
        ]
    );
    let summary = &result.summary;
    assert_eq!((summary.filled, summary.unfilled), (250_000, 0));
    assert_eq!(
        (summary.buyer_paid_micro_cr, summary.fees_micro_cr),
        (550_000, 16_500)
    );
    assert_eq!(summary.stop_reason, "filled");
    assert!(!result.replayed);

    // The seller pays the fee out of the proceeds.
    assert_eq!(w.credits(e).await, i128::from(CREDITS) - 550_000);
    assert_eq!(w.credits(b).await, i128::from(CREDITS) + 194_000);
    assert_eq!(w.credits(c).await, i128::from(CREDITS) + 194_000);
    assert_eq!(w.credits(a).await, i128::from(CREDITS) + 145_500);
    assert_eq!(
        w.provider(&AssetCode::credit(), AccountKind::Fees).await,
        16_500
    );
    assert_eq!(w.tokens(e, AccountKind::Acquired).await, 250_000);
    for (org, escrow) in [(a, 50_000), (b, 0), (c, 0), (d, 100_000)] {
        assert_eq!(w.tokens(org, AccountKind::Escrow).await, escrow);
    }
    let la = w.listing(la.id).await;
    assert_eq!(
        (la.quantity_open, la.quantity_filled, la.state),
        (50_000, 50_000, ListingState::Open)
    );
    assert_eq!(w.listing(lb.id).await.state, ListingState::Filled);
    assert_eq!(w.listing(ld.id).await.quantity_open, 100_000);

    // Market data: what is left, cheapest first.
    let quote = w.market.quote(&w.asset, 100_000).await.expect("a quote");
    assert_eq!(
        (quote.quantity, quote.cost_micro_cr),
        (100_000, 150_000 + 250_000)
    );
    let depth = w.market.depth(&w.asset, 10).await.expect("depth");
    let levels: Vec<(u64, u64)> = depth
        .iter()
        .map(|l| (l.price_per_1m_micro_cr, l.quantity))
        .collect();
    assert_eq!(levels, vec![(3_000_000, 50_000), (5_000_000, 100_000)]);
    let recent = w.market.recent_fills(&w.asset, 10).await.expect("fills");
    assert_eq!(recent.len(), 3);

    // A replay answers the same fills and moves nothing; the id for another order is refused.
    let before = w.state().await;
    let replay = w.market.buy(&request).await.expect("a replay");
    assert!(replay.replayed);
    assert_eq!(
        (replay.summary.clone(), replay.fills.clone()),
        (result.summary, result.fills)
    );
    let mut other = request.clone();
    other.quantity = 1;
    let conflict = w.market.buy(&other).await;
    assert!(
        matches!(conflict, Err(MarketError::IdempotencyConflict(_))),
        "{conflict:?}"
    );
    assert_eq!(w.state().await, before);
    w.ledger.close().await;
}

async fn a_maximum_total_is_respected_and_prices_decay(db: &TestDb) {
    let w = world(db, &teams(3)).await;
    let (a, b, e) = (w.orgs[0], w.orgs[1], w.orgs[2]);
    let la = w.list(a, 100_000, 2_000_000).await;
    let lb = w.list(b, 100_000, 2_000_000).await;
    let result = w.buy(e, 300_000, Limit::MaxTotal(250_000), false).await;
    assert_eq!(result.summary.filled, 125_000);
    assert_eq!(result.summary.buyer_paid_micro_cr, 250_000);
    assert_eq!(result.summary.stop_reason, "budget_exhausted");
    assert_eq!(w.credits(e).await, i128::from(CREDITS) - 250_000);
    assert_eq!(w.listing(la.id).await.state, ListingState::Filled);
    assert_eq!(w.listing(lb.id).await.quantity_open, 75_000);

    // Half-way through the window the linear curve halves every price.
    let info = w
        .market
        .market(&w.asset)
        .await
        .expect("read")
        .expect("the market");
    w.clock
        .set(info.record.window_open.plus_micros(7 * DAY / 2));
    let result = w.buy(e, 50_000, Limit::PricePer1m(1_000_000), false).await;
    let fill = &result.fills[0];
    assert_eq!(
        (
            fill.price_per_1m_micro_cr,
            fill.cost_micro_cr,
            fill.fee_micro_cr
        ),
        (1_000_000, 50_000, 1_500)
    );
    // At the cycle's end the market is closed.
    w.clock.set(w.cycle.ends_at());
    let request = w.buy_request(e, 1, Limit::MaxTotal(1_000), false);
    let closed = w.market.buy(&request).await;
    assert!(matches!(closed, Err(MarketError::Match(_))), "{closed:?}");
    w.ledger.close().await;
}

async fn the_provider_fills_what_listings_cannot(db: &TestDb) {
    let w = world(db, &teams(3)).await;
    let (a, e, f) = (w.orgs[0], w.orgs[1], w.orgs[2]);
    w.list(a, 100_000, 2_000_000).await;
    let issued_before = w.provider(&w.asset, AccountKind::Issuance).await;
    let result = w.buy(e, 300_000, Limit::PricePer1m(5_000_000), true).await;
    assert_eq!(result.summary.from_listings, 100_000);
    assert_eq!(result.summary.from_provider, 200_000);
    // 100k at 2 CR per 1M, 200k at the list price (the face value, 4 CR per 1M).
    assert_eq!(result.summary.buyer_paid_micro_cr, 200_000 + 800_000);
    let sale = result.fills.last().expect("a provider fill");
    assert_eq!(
        (sale.listing_id, sale.seller, sale.cost_micro_cr),
        (None, None, 800_000)
    );
    assert_eq!(w.tokens(e, AccountKind::Acquired).await, 300_000);
    assert_eq!(
        w.provider(&w.asset, AccountKind::Issuance).await,
        issued_before - 200_000
    );
    assert_eq!(
        w.provider(&AssetCode::credit(), AccountKind::Spent).await,
        800_000
    );

    // Without the buyer's consent the provider sells nothing; the order is recorded empty.
    let result = w.buy(f, 100_000, Limit::PricePer1m(5_000_000), false).await;
    assert_eq!(
        (result.summary.filled, result.summary.unfilled),
        (0, 100_000)
    );
    assert_eq!(result.summary.stop_reason, "book_exhausted");
    assert_eq!(w.tokens(f, AccountKind::Acquired).await, 0);
    assert_eq!(w.credits(f).await, i128::from(CREDITS));
    w.ledger.close().await;
}

async fn orgs_never_trade_with_themselves_or_linked_orgs(db: &TestDb) {
    let w = world(db, &teams(4)).await;
    let (a, b, c, d) = (w.orgs[0], w.orgs[1], w.orgs[2], w.orgs[3]);
    let linked = w
        .store()
        .link_orgs(c, b, &audit("orgs.link"))
        .await
        .expect("link");
    assert!(linked);
    let own = w.list(c, 100_000, 1_000_000).await;
    let lb = w.list(b, 100_000, 1_500_000).await;
    let ld = w.list(d, 100_000, 2_000_000).await;
    let result = w.buy(c, 150_000, Limit::PricePer1m(3_000_000), false).await;
    let sources: Vec<Option<Uuid>> = result.fills.iter().map(|f| f.listing_id).collect();
    assert_eq!(sources, vec![Some(ld.id)]);
    assert_eq!(
        (result.summary.filled, result.summary.unfilled),
        (100_000, 50_000)
    );
    assert_eq!(w.listing(own.id).await.quantity_open, 100_000);
    assert_eq!(w.listing(lb.id).await.quantity_open, 100_000);
    // Another org takes the cheapest.
    let result = w.buy(a, 100_000, Limit::PricePer1m(3_000_000), false).await;
    assert_eq!(result.fills[0].listing_id, Some(own.id));
    w.ledger.close().await;
}

async fn bought_tokens_can_be_neither_listed_nor_sold_back(db: &TestDb) {
    let w = world(db, &teams(2)).await;
    let (a, e) = (w.orgs[0], w.orgs[1]);
    w.list(a, 100_000, 2_000_000).await;
    // E spends most of its allotment, then buys 100k tokens: acquired, spendable only.
    let alloc = w
        .ledger
        .ensure_account(&w.asset, Owner::Org(e), AccountKind::Alloc)
        .await
        .expect("alloc");
    let spent = w
        .ledger
        .ensure_account(&w.asset, Owner::Provider, AccountKind::Spent)
        .await
        .expect("spent");
    let spend = Movement::new(
        alloc.account.id(),
        spent.account.id(),
        w.asset.clone(),
        Amount::new(1_500_000).expect("an amount"),
        TransferCode::Spend,
    )
    .expect("a movement");
    let results = w
        .ledger
        .create_transfers(vec![transfer(spend)])
        .await
        .expect("spend");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    w.buy(e, 100_000, Limit::PricePer1m(2_000_000), false).await;
    assert_eq!(w.tokens(e, AccountKind::Alloc).await, 500_000);
    assert_eq!(w.tokens(e, AccountKind::Acquired).await, 100_000);

    let before = w.state().await;
    let listed = w.try_list(Uuid::new_v4(), e, 550_000, 1_000_000).await;
    assert!(
        matches!(listed, Err(MarketError::InsufficientTokens)),
        "{listed:?}"
    );
    let sold = w.market.buyback(&w.buyback_request(e, 550_000)).await;
    assert!(
        matches!(sold, Err(MarketError::InsufficientTokens)),
        "{sold:?}"
    );
    assert_eq!(w.state().await, before);
    w.ledger.close().await;
}

fn settings_with_caps(cycle_cap: Option<u64>, org_cap: Option<u64>) -> MarketSettings {
    let buyback = BuybackSettings::try_from(BuybackSettingsInput {
        rate: Decimal::new(9, 1),
        schedule: None,
        cycle_cap_micro_cr: cycle_cap,
        org_cap_micro_cr: org_cap,
    })
    .expect("buyback settings");
    MarketSettings::try_from(MarketSettingsInput {
        curve: DecayCurve::linear(Decimal::ZERO).expect("a curve"),
        fee_rate: Decimal::new(3, 2),
        fee_payer: FeePayer::Seller,
        buyback,
        provider_list_price_per_1m_micro_cr: FACE,
        provider_fill: true,
    })
    .expect("settings")
}

async fn buybacks_stay_within_their_caps(db: &TestDb) {
    let w = world(db, &teams(4)).await;
    let (a, b, c, e) = (w.orgs[0], w.orgs[1], w.orgs[2], w.orgs[3]);
    let info = w
        .market
        .market(&w.asset)
        .await
        .expect("read")
        .expect("the market");
    let settings = settings_with_caps(Some(1_000_000), Some(500_000));
    w.market
        .change_settings(&w.asset, info.record.window_open, settings, None)
        .await
        .expect("settings");
    let history = w
        .store()
        .market_settings_history(&w.asset)
        .await
        .expect("history");
    assert_eq!(history.len(), 2);

    // 100k tokens at 4 CR per 1M × 0.9: 360,000 µCR.
    let request = w.buyback_request(a, 100_000);
    let record = w.market.buyback(&request).await.expect("a buyback");
    assert_eq!(
        (record.quantity, record.payout_micro_cr),
        (100_000, 360_000)
    );
    assert_eq!(w.credits(a).await, i128::from(CREDITS) + 360_000);
    assert_eq!(
        w.tokens(a, AccountKind::Alloc).await,
        i128::from(ALLOT) - 100_000
    );
    assert_eq!(w.provider(&w.asset, AccountKind::Treasury).await, 100_000);

    let before = w.state().await;
    let replay = w.market.buyback(&request).await.expect("a replay");
    assert_eq!(replay, record);
    let over = w.market.buyback(&w.buyback_request(a, 100_000)).await;
    assert!(
        matches!(
            over,
            Err(MarketError::Buyback(
                credex_pricing::BuybackError::CapReached {
                    which: CapKind::Org,
                    ..
                }
            ))
        ),
        "{over:?}"
    );
    assert_eq!(w.state().await, before);

    w.market
        .buyback(&w.buyback_request(b, 100_000))
        .await
        .expect("a buyback");
    let before = w.state().await;
    let over = w.market.buyback(&w.buyback_request(c, 100_000)).await;
    assert!(
        matches!(
            over,
            Err(MarketError::Buyback(
                credex_pricing::BuybackError::CapReached {
                    which: CapKind::Cycle,
                    ..
                }
            ))
        ),
        "{over:?}"
    );
    assert_eq!(w.state().await, before);
    let record = w
        .market
        .buyback(&w.buyback_request(c, 50_000))
        .await
        .expect("within the cap");
    assert_eq!(record.payout_micro_cr, 180_000);
    assert_eq!(w.provider(&w.asset, AccountKind::Treasury).await, 250_000);

    // Emergency credits come from the treasury first.
    let issued = w.provider(&w.asset, AccountKind::Issuance).await;
    let result = w.buy(e, 150_000, Limit::PricePer1m(FACE), true).await;
    assert_eq!(result.summary.from_provider, 150_000);
    assert_eq!(w.provider(&w.asset, AccountKind::Treasury).await, 100_000);
    assert_eq!(w.provider(&w.asset, AccountKind::Issuance).await, issued);
    w.ledger.close().await;
}

async fn every_refusal_changes_nothing(db: &TestDb) {
    let w = world(
        db,
        &[
            Plan::Teams,
            Plan::Free,
            Plan::Teams,
            Plan::Teams,
            Plan::Teams,
        ],
    )
    .await;
    let (a, free, unverified, frozen, buyer) =
        (w.orgs[0], w.orgs[1], w.orgs[2], w.orgs[3], w.orgs[4]);
    let store = w.store();
    store
        .set_verification(unverified, VerificationLevel::new(0).expect("a level"))
        .await
        .expect("unverify");
    store.set_frozen(frozen, true).await.expect("freeze");
    // An org 9 days old at the window's opening, allotted by a second run of the open job.
    let young = store
        .create_org(
            &OrgName::parse("Young").expect("a name"),
            Plan::Teams,
            w.cycle.starts_at().plus_micros(14 * DAY),
        )
        .await
        .expect("an org")
        .id;
    store
        .set_verification(young, VerificationLevel::new(1).expect("a level"))
        .await
        .expect("verify");
    open_cycle(&w.ledger, w.cycle, w.cycle.starts_at())
        .await
        .expect("open");

    let listing = w.list(a, 1_500_000, 1_000_000_000).await;
    let before = w.state().await;
    let refused = |result: Result<ListingRecord, MarketError>| format!("{result:?}");

    let info = w
        .market
        .market(&w.asset)
        .await
        .expect("read")
        .expect("the market");
    w.clock.set(info.record.window_open.plus_micros(-1));
    let early = w.try_list(Uuid::new_v4(), a, 1, 1_000).await;
    assert!(
        matches!(early, Err(MarketError::OutsideListingWindow { .. })),
        "{}",
        refused(early)
    );
    w.clock.set(info.record.window_open);

    for (org, expected) in [
        (free, Refusal::FreePlan),
        (
            unverified,
            Refusal::Unverified {
                level: 0,
                required: 1,
            },
        ),
        (
            young,
            Refusal::TooNew {
                age_days: 9,
                required_days: 14,
            },
        ),
        (frozen, Refusal::Frozen),
    ] {
        let result = w.try_list(Uuid::new_v4(), org, 1_000, 1_000_000).await;
        assert!(
            matches!(&result, Err(MarketError::Refused(refusal)) if *refusal == expected),
            "{}",
            refused(result)
        );
    }
    let over = w.try_list(Uuid::new_v4(), a, 500_001, 1_000_000).await;
    assert!(
        matches!(
            over,
            Err(MarketError::Refused(Refusal::SellCap {
                cap: 2_000_000,
                committed: 1_500_000,
                would_be: 2_000_001
            }))
        ),
        "{}",
        refused(over)
    );
    let frozen_buy = w
        .market
        .buy(&w.buy_request(frozen, 1_000, Limit::PricePer1m(u64::MAX / 2), false))
        .await;
    assert!(
        matches!(frozen_buy, Err(MarketError::Refused(Refusal::Frozen))),
        "{frozen_buy:?}"
    );
    // 1.5M tokens at 1,000 CR per 1M cost 1,500 CR; the buyer has 1,000.
    let poor = w
        .market
        .buy(&w.buy_request(buyer, 1_500_000, Limit::PricePer1m(1_000_000_000), false))
        .await;
    assert!(
        matches!(poor, Err(MarketError::InsufficientCredits)),
        "{poor:?}"
    );
    let up = w
        .market
        .amend_down(Uuid::new_v4(), a, &w.asset, listing.id, 1_500_000)
        .await;
    assert!(
        matches!(up, Err(MarketError::NotADecrease { .. })),
        "{up:?}"
    );
    let frozen_sale = w.market.buyback(&w.buyback_request(frozen, 1_000)).await;
    assert!(
        matches!(frozen_sale, Err(MarketError::Refused(Refusal::Frozen))),
        "{frozen_sale:?}"
    );
    assert_eq!(w.state().await, before);
    w.ledger.close().await;
}

/// Two processes (two ledgers, two connection pools) on one database; 32 buyers race for 50
/// listings. Every listing is filled at most once, fills follow price-time order across the
/// whole book, escrows hold exactly the open quantities, and the books balance.
async fn concurrent_buyers_in_two_processes_never_double_fill(db: &TestDb) {
    const SELLERS: usize = 10;
    const BUYERS: usize = 32;
    const PER_LISTING: u64 = 10_000;
    const WANTED: u64 = 12_000;
    let w = world(db, &teams(SELLERS + BUYERS)).await;
    let mut listings = Vec::new();
    for i in 0..50 {
        let ask = 1_000_000 + (i as u64 % 7) * 100_000;
        listings.push(w.list(w.orgs[i % SELLERS], PER_LISTING, ask).await);
    }
    let second = Arc::new(db.ledger(w.clock.clone()).await);
    let markets = [
        Arc::new(Market::new(w.ledger.clone(), FraudPolicy::default())),
        Arc::new(Market::new(second.clone(), FraudPolicy::default())),
    ];
    let mut tasks = Vec::new();
    for i in 0..BUYERS {
        let market = markets[i % 2].clone();
        let request = w.buy_request(
            w.orgs[SELLERS + i],
            WANTED,
            Limit::PricePer1m(10_000_000),
            false,
        );
        tasks.push(tokio::spawn(async move { market.buy(&request).await }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("a task").expect("a buy"));
    }
    let total: u64 = results.iter().map(|r| r.summary.filled).sum();
    assert_eq!(total, BUYERS as u64 * WANTED);
    for (i, result) in results.iter().enumerate() {
        let buyer = w.orgs[SELLERS + i];
        assert_eq!(
            w.tokens(buyer, AccountKind::Acquired).await,
            i128::from(result.summary.filled)
        );
        let prices: Vec<u64> = result
            .fills
            .iter()
            .map(|f| f.price_per_1m_micro_cr)
            .collect();
        assert!(prices.windows(2).all(|p| p[0] <= p[1]), "{prices:?}");
    }

    let mut stored = w.listings_add_up(&listings).await;
    // Price-time order over the whole book: filled listings, at most one partial, untouched.
    stored.sort_by_key(|l| (l.ask_per_1m_micro_cr, l.seq));
    let filled: Vec<u64> = stored.iter().map(|l| l.quantity_filled).collect();
    let full = filled.iter().take_while(|q| **q == PER_LISTING).count();
    assert!(filled[full + 1..].iter().all(|q| *q == 0), "{filled:?}");
    w.escrows_hold_open_listings(&stored, SELLERS).await;
    assert!(w.store().check().await.expect("check").is_ok());
    assert!(second.store().check().await.expect("check").is_ok());
    second.close().await;
    w.ledger.close().await;
}

/// Buys that arrive together are matched in batches (one transaction for many orders), and
/// come out as they would one by one: every order whole while the book lasts, no listing sold
/// twice, linked orgs never matched, a replayed order id answered with the first run's fills,
/// and an order the ledger refuses (its buyer cannot pay) refused alone, changing nothing,
/// while the batch it came in runs again without it.
async fn batched_buys_come_out_as_one_by_one(db: &TestDb) {
    const SELLERS: usize = 6;
    const BUYERS: usize = 24;
    const PER_LISTING: u64 = 10_000;
    const WANTED: u64 = 7_000;
    let w = world(db, &teams(SELLERS + BUYERS)).await;
    let mut listings = Vec::new();
    for i in 0..40 {
        let ask = 1_000_000 + (i as u64 % 5) * 100_000;
        listings.push(w.list(w.orgs[i % SELLERS], PER_LISTING, ask).await);
    }
    // The first buyer may not buy from the first seller.
    let linked = w.orgs[SELLERS];
    w.store()
        .link_orgs(linked, w.orgs[0], &audit("orgs.link"))
        .await
        .expect("link");
    // The last buyer asks the provider for far more than its 1,000 CR pay for.
    let broke = w.orgs[SELLERS + BUYERS - 1];
    let market = Arc::new(Market::new(w.ledger.clone(), FraudPolicy::default()));
    let mut requests = Vec::new();
    for i in 0..BUYERS - 1 {
        requests.push(w.buy_request(
            w.orgs[SELLERS + i],
            WANTED,
            Limit::PricePer1m(10_000_000),
            false,
        ));
    }
    let replayed = requests[3].clone();
    requests.insert(7, replayed.clone());
    requests.insert(
        16,
        w.buy_request(broke, 400_000_000, Limit::PricePer1m(10_000_000), true),
    );
    // Every buyer's accounts made first (an order below every ask buys nothing), so that the
    // orders below reach their market's queue without waiting on the database.
    for i in 0..BUYERS {
        let request = w.buy_request(w.orgs[SELLERS + i], 1_000, Limit::PricePer1m(1), false);
        let answer = market.buy(&request).await.expect("a buy");
        assert_eq!(answer.summary.filled, 0);
    }
    // Two waves: the first batches commit; the second's batch holds the refused order. (In
    // each wave the first order runs alone: nothing waits behind it yet.)
    let mut answers = Vec::new();
    for wave in [&requests[..13], &requests[13..]] {
        let mut tasks = Vec::new();
        for request in wave {
            let (market, request) = (market.clone(), request.clone());
            tasks.push(tokio::spawn(async move { market.buy(&request).await }));
        }
        for task in tasks {
            answers.push(task.await.expect("a task"));
        }
    }
    let stats = market.batch_stats();
    // In each wave the first order runs alone and the rest wait behind it: one batch each.
    assert_eq!(stats.batches, 1, "{stats:?}");
    assert_eq!(
        stats.unbatched, 1,
        "the refused order's batch committed: {stats:?}"
    );

    let mut filled_by_order: HashMap<Uuid, &OrderResult> = HashMap::new();
    for (request, answer) in requests.iter().zip(&answers) {
        if request.buyer == broke {
            assert!(
                matches!(answer, Err(MarketError::InsufficientCredits)),
                "{answer:?}"
            );
            continue;
        }
        let answer = answer.as_ref().expect("a buy");
        assert_eq!(answer.summary.filled, WANTED, "{answer:?}");
        if request.buyer == linked {
            assert!(answer.fills.iter().all(|f| f.seller != Some(w.orgs[0])));
        }
        if let Some(first) = filled_by_order.insert(request.id, answer) {
            assert_eq!(first.fills, answer.fills, "a replay answers the first run");
            assert!(first.replayed || answer.replayed);
        }
    }
    assert_eq!(filled_by_order.len(), BUYERS - 1);
    assert_eq!(w.tokens(broke, AccountKind::Acquired).await, 0);
    assert_eq!(w.credits(broke).await, i128::from(CREDITS));
    for request in &requests {
        if request.buyer != broke {
            assert_eq!(
                w.tokens(request.buyer, AccountKind::Acquired).await,
                i128::from(WANTED)
            );
        }
    }
    let stored = w.listings_add_up(&listings).await;
    let sold: u64 = stored.iter().map(|l| l.quantity_filled).sum();
    assert_eq!(sold, (BUYERS as u64 - 1) * WANTED);
    w.escrows_hold_open_listings(&stored, SELLERS).await;
    assert!(w.store().check().await.expect("check").is_ok());
    w.ledger.close().await;
}

async fn closing_the_cycle_cancels_open_listings(db: &TestDb) {
    let w = world(db, &teams(3)).await;
    let (a, b, e) = (w.orgs[0], w.orgs[1], w.orgs[2]);
    let la = w.list(a, 100_000, 2_000_000).await;
    let lb = w.list(b, 50_000, 3_000_000).await;
    w.buy(e, 20_000, Limit::PricePer1m(2_000_000), false).await;
    w.clock.set(w.cycle.ends_at());
    close_cycle(&w.ledger, w.cycle, w.cycle.ends_at())
        .await
        .expect("close");
    let la = w.listing(la.id).await;
    assert_eq!(
        (la.state, la.quantity_open, la.quantity_filled),
        (ListingState::Cancelled, 0, 20_000)
    );
    assert_eq!(w.listing(lb.id).await.state, ListingState::Cancelled);
    for org in [a, b, e] {
        for kind in [
            AccountKind::Alloc,
            AccountKind::Escrow,
            AccountKind::Acquired,
        ] {
            assert_eq!(w.tokens(org, kind).await, 0, "{kind}");
        }
    }
    // Every allotted token expired, wherever it was: alloc, escrow (after the cancel) or
    // acquired.
    assert_eq!(
        w.provider(&w.asset, AccountKind::Expired).await,
        3 * i128::from(ALLOT)
    );
    let before = w.state().await;
    close_cycle(&w.ledger, w.cycle, w.cycle.ends_at())
        .await
        .expect("close again");
    assert_eq!(w.state().await, before);
    w.ledger.close().await;
}

async fn a_due_automatic_sale_sells_the_rest_to_the_provider_once(db: &TestDb) {
    let w = world(db, &teams(2)).await;
    let (a, e) = (w.orgs[0], w.orgs[1]);
    let open = w.clock.now();
    let request = ListRequest {
        id: Uuid::new_v4(),
        seller: a,
        asset: w.asset.clone(),
        quantity: 100_000,
        ask_per_1m_micro_cr: 2_000_000,
        min_fill: None,
        auto_sell_at: Some(open.plus_micros(2 * DAY)),
    };
    let listing = w.market.list(&request).await.expect("a listing");
    let mut late = request.clone();
    late.id = Uuid::new_v4();
    late.auto_sell_at = Some(w.cycle.ends_at());
    let refused = w.market.list(&late).await;
    assert!(
        matches!(refused, Err(MarketError::AutoSellOutOfRange)),
        "{refused:?}"
    );
    w.buy(e, 30_000, Limit::PricePer1m(2_000_000), false).await;

    w.clock.set(open.plus_micros(DAY));
    let report = w.market.run_auto_sales(100).await.expect("a run");
    assert_eq!((report.sold, report.refused), (0, 0));
    w.clock.set(open.plus_micros(2 * DAY));
    let report = w.market.run_auto_sales(100).await.expect("a run");
    assert_eq!(report.sold, 1);
    let sold = w.listing(listing.id).await;
    assert_eq!(
        (sold.state, sold.quantity_open, sold.quantity_filled),
        (ListingState::Sold, 0, 30_000)
    );
    assert_eq!(w.tokens(a, AccountKind::Escrow).await, 0);
    assert_eq!(w.provider(&w.asset, AccountKind::Treasury).await, 70_000);
    // 30k sold at 2 CR per 1M less the 3% fee, then 70k at 90% of the 4 CR face value.
    assert_eq!(w.credits(a).await, i128::from(CREDITS) + 58_200 + 252_000);
    let buybacks = w.store().buybacks_of(a, &w.asset).await.expect("buybacks");
    assert_eq!(buybacks.len(), 1);
    assert_eq!(buybacks[0].listing_id, Some(listing.id));

    let before = w.state().await;
    let report = w.market.run_auto_sales(100).await.expect("a run");
    assert_eq!(report.sold, 0);
    assert_eq!(w.state().await, before);
    w.ledger.close().await;
}

on_both_backends!(
    a_due_automatic_sale_sells_the_rest_to_the_provider_once,
    listing_amend_and_cancel_move_exactly_their_tokens,
    a_buy_fills_across_sellers_in_price_time_order_with_fees,
    a_maximum_total_is_respected_and_prices_decay,
    the_provider_fills_what_listings_cannot,
    orgs_never_trade_with_themselves_or_linked_orgs,
    bought_tokens_can_be_neither_listed_nor_sold_back,
    buybacks_stay_within_their_caps,
    every_refusal_changes_nothing,
    concurrent_buyers_in_two_processes_never_double_fill,
    closing_the_cycle_cancels_open_listings,
);

/// On one thread, so that which orders wait behind which is certain: each wave's first order
/// runs alone, and every other order of the wave queues behind it before it ends.
mod batched {
    #[tokio::test(flavor = "current_thread")]
    async fn sqlite() {
        let db = credex_tests::TestDb::sqlite().await;
        super::batched_buys_come_out_as_one_by_one(&db).await;
        db.finish().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn postgres() {
        let Some(db) = credex_tests::TestDb::postgres().await else {
            return;
        };
        super::batched_buys_come_out_as_one_by_one(&db).await;
        db.finish().await;
    }
}
