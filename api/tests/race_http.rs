//! Two `credex serve` processes on one PostgreSQL database, 32 buyers racing over HTTP for the
//! same 50 listings: every listing is filled at most once, the books balance per asset, and the
//! fills follow price-time order, per order and across the whole race.
//!
//! PostgreSQL only: the point is several processes sharing one PostgreSQL (SQLite is one
//! process's embedded file). Without a reachable server the test says so and passes, except
//! under `CI=true` ([`TestDb::postgres`]).
//!
//! **Fixture** (in-process, before any server starts, as `credex serve` would set the database
//! up: [`assemble`] on the system clock). Class `pro` with an allotment for the teams plan;
//! [`SELLERS`] verified teams orgs and [`BUYERS`] teams orgs, all created 30 days ago; the
//! current month's cycle opened by `open_cycle`; its `pro` market's listing window opened at
//! the cycle's start (so the test runs on any day of the month). [`LISTINGS`] listings by the
//! sellers, with asks over seven levels, each level shared by several listings (so time
//! priority decides between them), and quantities over four sizes. Every buyer gets CR (a
//! `top_up`) and an API key with the scope `market:trade`.
//!
//! **Race.** Two real processes (`env!("CARGO_BIN_EXE_credex") serve`, same database, same
//! `CREDEX_JWT_SECRET`, port 0 each, the port read from the log). Buyer *i* sends its orders
//! to process *i* mod 2; all 32 start together (a barrier) and each sends
//! [`ORDERS_PER_BUYER`] immediate-or-cancel orders of [`ORDER_QUANTITY`] tokens, one after
//! the other, over plain HTTP/1.1 with its API key and a fresh `Idempotency-Key`. Demand
//! exceeds supply, so the book runs dry; every answer must be 201, including the orders that
//! fill nothing. Each process's `/metrics` counts exactly the orders the test sent it. Both
//! stop on SIGTERM and must exit cleanly.
//!
//! **Checks** (reading the database after both stopped, and the answers):
//! - every answer's fills are the order's fills as stored;
//! - every listing: its fills (all from answered orders) sum to its `quantity_filled`, open +
//!   filled = listed, and the book is exhausted (every listing filled, total filled = total
//!   listed); no provider fill;
//! - each order's fills: strictly increasing (ask, arrival `seq`), non-decreasing price, each
//!   price the decayed ask at the order's instant, cost and fee by the market's rounding;
//! - across the race: orders are stamped under the market's lock, so ordering them by their
//!   instant is their commit order (the instants must be distinct). In that order the
//!   listings consumed never go back in (ask, seq) order, and an order moves on to the next
//!   listing only once the previous one is completely filled — so no order ever took a listing
//!   while a cheaper (or equally priced, older) listing was open; every order is filled
//!   completely until one runs the book dry, and every later order fills nothing
//!   (`book_exhausted`);
//! - balances: each buyer's `acquired` holds what it bought and its wallet paid the costs,
//!   each seller's `escrow` is empty and its wallet got cost − fee, `fees` got every fee;
//! - the books check (`Store::check`, and the `credex check` command) finds no discrepancy and
//!   every asset balanced.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{http, Reply, Server, JWT_SECRET};
use common::{ADMIN, PASSWORD};
use credex_api::auth::tokens;
use credex_api::config::{Config, Secret};
use credex_api::cycles::{open_cycle, CycleId};
use credex_api::market::{ListRequest, MarketSettings};
use credex_api::startup::assemble;
use credex_ledger::{AccountKind, AssetCode, Clock, OrgId, Owner, Timestamp};
use credex_pricing::decay::{price_at, purchase_cost_micro_cr};
use credex_pricing::DecayWindow;
use credex_store::{
    Allotment, ApiKeyName, ApiKeyPrefix, ClassRecord, Email, FillRecord, ListingRecord,
    ListingState, NewApiKey, OrgName, Plan, Scope, Scopes, Store, SystemClock, TokenHash,
    VerificationLevel,
};
use credex_tests::{audit, top_up, TestDb};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

const SELLERS: usize = 10;
const BUYERS: usize = 32;
const LISTINGS: usize = 50;
const ORDERS_PER_BUYER: usize = 4;
/// Tokens per order: 32 × 4 × 12,000 = 1,536,000 asked for 865,000 listed.
const ORDER_QUANTITY: u64 = 12_000;
/// µCR per 1M tokens of the class `pro`.
const FACE: u64 = 4_000_000;
/// Tokens of `pro` a teams org gets per cycle.
const ALLOT: u64 = 2_000_000;
/// Every buyer's credits: 100 CR, far more than its orders can cost.
const CREDITS: u64 = 100_000_000;
const DAY: i64 = 86_400_000_000;
/// The route template `/metrics` counts orders under.
const ORDERS_ROUTE: &str = "/v1/orgs/{org_id}/orders";

/// Listing `i`: its ask (seven levels, not in arrival order: 1.0, 1.3, 1.6, 1.2, 1.5, 1.1,
/// 1.4 CR per 1M tokens, then again) and its quantity (10,000 to 25,000 tokens).
fn listing_terms(i: usize) -> (u64, u64) {
    let level = u64::try_from((i * 3) % 7).expect("small");
    let size = u64::try_from(i % 4).expect("small");
    (1_000_000 + level * 100_000, 10_000 + size * 5_000)
}

/// What the test made.
struct Fixture {
    asset: AssetCode,
    sellers: Vec<OrgId>,
    /// Each buyer with its API key.
    buyers: Vec<(OrgId, String)>,
    /// The listings as made, in arrival order.
    listings: Vec<ListingRecord>,
}

/// The current cycle, waiting for the next one when this one ends within three minutes (the
/// servers run on the system clock, and the race must not straddle a cycle's end).
async fn current_cycle() -> CycleId {
    let now = SystemClock.now();
    let cycle = CycleId::of(now);
    let left = cycle.ends_at().as_micros() - now.as_micros();
    if left > 180_000_000 {
        return cycle;
    }
    let wait = Duration::from_micros(u64::try_from(left).expect("not ended") + 2_000_000);
    eprintln!("the cycle {cycle} ends in {left} µs: waiting {wait:?} for the next one");
    tokio::time::sleep(wait).await;
    CycleId::of(SystemClock.now())
}

/// Sets the database up as `credex serve` would, then the class, orgs, cycle, market,
/// listings, credits and API keys (see the module's comment).
async fn build_fixture(db: &TestDb) -> Fixture {
    let cycle = current_cycle().await;
    let dir = tempfile::tempdir().expect("a directory");
    let mut config = Config::new("127.0.0.1:0", dir.path()).with_database_url(db.url());
    config.admin_email = Some(ADMIN.to_owned());
    config.admin_password = Some(Secret::new(PASSWORD));
    config.jwt_secret = Some(Secret::new(JWT_SECRET));
    let assembled = assemble(&config, Arc::new(SystemClock))
        .await
        .expect("assemble");
    let (store, ledger, market) = (
        assembled.store.clone(),
        assembled.ledger.clone(),
        assembled.market.clone(),
    );
    let now = store.clock().now();

    let class = ClassRecord {
        class: "pro".to_owned(),
        face_value_per_1m_micro_cr: FACE,
        description: "pro models".to_owned(),
        created_at: now,
        updated_at: now,
    };
    store
        .put_class(&class, &audit("classes.put"))
        .await
        .expect("a class");
    let allotment = Allotment {
        plan: Plan::Teams,
        tokens_per_cycle: ALLOT,
    };
    store
        .put_allotment("pro", allotment, now, &audit("allotments.put"))
        .await
        .expect("an allotment");

    // Teams orgs 30 days old; the sellers verified (so they may sell).
    let created = now.plus_micros(-30 * DAY);
    let mut orgs = Vec::new();
    for i in 0..SELLERS + BUYERS {
        let name = OrgName::parse(&format!("Org {i}")).expect("a name");
        let org = store
            .create_org(&name, Plan::Teams, created)
            .await
            .expect("an org")
            .id;
        if i < SELLERS {
            let level = VerificationLevel::new(1).expect("a level");
            store.set_verification(org, level).await.expect("verify");
        }
        orgs.push(org);
    }
    let (sellers, buyer_orgs) = orgs.split_at(SELLERS);

    open_cycle(&ledger, cycle, store.clock().now())
        .await
        .expect("open the cycle");
    let asset = cycle.asset("pro").expect("an asset");
    let info = market.ensure_market(&asset).await.expect("a market");
    let info = market
        .change_settings(&asset, cycle.starts_at(), info.settings, None)
        .await
        .expect("open the listing window at the cycle's start");
    assert_eq!(info.record.window_open, cycle.starts_at());

    let mut listings = Vec::new();
    for i in 0..LISTINGS {
        let (ask, quantity) = listing_terms(i);
        let request = ListRequest {
            id: Uuid::new_v4(),
            seller: sellers[i % SELLERS],
            asset: asset.clone(),
            quantity,
            ask_per_1m_micro_cr: ask,
            min_fill: None,
            auto_sell_at: None,
        };
        listings.push(market.list(&request).await.expect("a listing"));
    }
    assert!(
        listings.windows(2).all(|w| w[0].seq < w[1].seq),
        "listings arrive in order"
    );

    let email = Email::parse(ADMIN).expect("an e-mail");
    let (admin, _) = store
        .user_by_email(&email)
        .await
        .expect("read the admin")
        .expect("the first admin");
    let mut buyers = Vec::new();
    for org in buyer_orgs {
        top_up(&ledger, *org, CREDITS).await;
        let (key, prefix) = tokens::api_key();
        let new = NewApiKey {
            org: *org,
            name: ApiKeyName::parse("race").expect("a name"),
            prefix: ApiKeyPrefix::parse(&prefix).expect("a prefix"),
            secret_hash: TokenHash::from_bytes(tokens::digest(&key)),
            scopes: Scopes::new([Scope::MarketTrade]).expect("scopes"),
            created_by: admin.id,
        };
        store
            .create_api_key(&new, store.clock().now())
            .await
            .expect("an API key");
        buyers.push((*org, key));
    }

    let report = store.check().await.expect("check");
    assert!(report.is_ok(), "{report:?}");
    ledger.close().await;
    store.close().await;
    drop(assembled);
    Fixture {
        asset,
        sellers: sellers.to_vec(),
        buyers,
        listings,
    }
}

/// One fill as an answer shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AnsweredFill {
    listing: Uuid,
    quantity: u64,
    price: u64,
    cost: u64,
    fee: u64,
}

/// One order's 201, as the buyer saw it.
#[derive(Debug, Clone)]
struct Answered {
    server: usize,
    buyer: OrgId,
    order: Uuid,
    quantity: u64,
    filled: u64,
    unfilled: u64,
    from_provider: u64,
    buyer_paid: u64,
    fees: u64,
    stop_reason: String,
    fills: Vec<AnsweredFill>,
}

fn number(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

fn parse_answer(server: usize, buyer: OrgId, reply: &Reply) -> Answered {
    assert_eq!(
        reply.status, 201,
        "an order to server {server} answered {}:\n{}\n{}",
        reply.status, reply.head, reply.body
    );
    let body: Value = serde_json::from_str(&reply.body).expect("a JSON answer");
    let order = Uuid::parse_str(body["order_id"].as_str().expect("an order id")).expect("a UUID");
    assert!(
        reply
            .head
            .contains(&format!("location: /v1/orgs/{buyer}/orders/{order}")),
        "{}",
        reply.head
    );
    let fills = body["fills"]
        .as_array()
        .expect("fills")
        .iter()
        .map(|fill| AnsweredFill {
            listing: Uuid::parse_str(fill["listing_id"].as_str().expect("a listing fill"))
                .expect("a UUID"),
            quantity: number(fill, "quantity"),
            price: number(fill, "price_per_1m_micro_cr"),
            cost: number(fill, "cost_micro_cr"),
            fee: number(fill, "fee_micro_cr"),
        })
        .collect();
    Answered {
        server,
        buyer,
        order,
        quantity: number(&body, "quantity"),
        filled: number(&body, "filled"),
        unfilled: number(&body, "unfilled"),
        from_provider: number(&body, "from_provider"),
        buyer_paid: number(&body, "buyer_paid_micro_cr"),
        fees: number(&body, "fees_micro_cr"),
        stop_reason: body["stop_reason"].as_str().expect("a reason").to_owned(),
        fills,
    }
}

/// 32 buyers at once, buyer `i` on server `i % 2`, each sending its orders one after another.
async fn race(fixture: &Fixture, ports: [u16; 2]) -> Vec<Answered> {
    let barrier = Arc::new(tokio::sync::Barrier::new(BUYERS));
    let body = format!(
        r#"{{"asset": "{}", "quantity": {ORDER_QUANTITY}}}"#,
        fixture.asset
    );
    let mut tasks = Vec::new();
    for (i, (buyer, key)) in fixture.buyers.iter().cloned().enumerate() {
        let (barrier, body) = (barrier.clone(), body.clone());
        let server = i % 2;
        let port = ports[server];
        tasks.push(tokio::spawn(async move {
            let path = format!("/v1/orgs/{buyer}/orders");
            let auth = format!("Bearer {key}");
            barrier.wait().await;
            let mut answers = Vec::new();
            for n in 0..ORDERS_PER_BUYER {
                let idempotency = format!("race-{i}-{n}-{}", Uuid::new_v4().simple());
                let headers = [
                    ("Authorization", auth.as_str()),
                    ("Idempotency-Key", idempotency.as_str()),
                ];
                let reply = http(port, "POST", &path, &headers, &body).await;
                answers.push(parse_answer(server, buyer, &reply));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.expect("a buyer"));
    }
    answers
}

/// What one server's `/metrics` says it answered 201 to order requests.
async fn orders_counted(port: u16) -> u64 {
    let reply = http(port, "GET", "/metrics", &[], "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let series = format!(
        "credex_http_requests_total{{method=\"POST\",route=\"{ORDERS_ROUTE}\",status=\"201\"}} "
    );
    reply
        .body
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |count| count.trim().parse().expect("a count"))
}

/// An account's posted balance (0 for an account never made).
async fn net(store: &dyn Store, asset: &AssetCode, owner: Owner, kind: AccountKind) -> i128 {
    store
        .find_account(asset, owner, kind)
        .await
        .expect("find")
        .map_or(0, |view| view.balance.net_posted())
}

/// The fee on a cost: ⌈cost × rate⌉.
fn fee_of(cost: u64, rate: Decimal) -> u64 {
    (Decimal::from(cost) * rate)
        .ceil()
        .to_u64()
        .expect("a fee in range")
}

/// Everything the race left in the database agrees with the answers, every listing was filled
/// at most once, in price-time order, and the books balance (see the module's comment).
async fn verify(db: &TestDb, fixture: &Fixture, answers: &[Answered]) {
    let store = credex_store::connect(db.url(), Arc::new(SystemClock))
        .await
        .expect("connect");
    let store = store.as_ref();
    let asset = &fixture.asset;
    let market = store
        .market(asset)
        .await
        .expect("read the market")
        .expect("the market");
    let settings = MarketSettings::from_json(&market.settings).expect("settings");
    let window = DecayWindow::new(market.window_open, market.cycle_end).expect("a window");
    let curve = settings.curve();
    let rate = settings.fee().rate();

    // The listings as they are now, keyed by id.
    let mut listings: HashMap<Uuid, ListingRecord> = HashMap::new();
    for seller in &fixture.sellers {
        for listing in store
            .listings_of(*seller, Some(asset), 1_000)
            .await
            .expect("listings")
        {
            listings.insert(listing.id, listing);
        }
    }
    assert_eq!(listings.len(), LISTINGS);
    for made in &fixture.listings {
        let now = &listings[&made.id];
        assert_eq!(
            (now.ask_per_1m_micro_cr, now.seq, now.quantity_listed),
            (made.ask_per_1m_micro_cr, made.seq, made.quantity_listed)
        );
    }
    let key_of = |id: &Uuid| {
        let listing = &listings[id];
        (listing.ask_per_1m_micro_cr, listing.seq)
    };

    // Each answer is its order as stored; each order's fills in price-time order, priced at
    // its instant.
    let answered: HashMap<Uuid, &Answered> = answers.iter().map(|a| (a.order, a)).collect();
    assert_eq!(answered.len(), answers.len(), "order ids are unique");
    let mut orders: Vec<(Timestamp, &Answered)> = Vec::new();
    for answer in answers {
        let (record, fills) = store
            .order(answer.order)
            .await
            .expect("read an order")
            .unwrap_or_else(|| panic!("the answered order {} is not stored", answer.order));
        assert_eq!(record.buyer, answer.buyer);
        assert_eq!(&record.asset, asset);
        let stored: Vec<AnsweredFill> = fills
            .iter()
            .map(|fill| AnsweredFill {
                listing: fill.listing_id.expect("no provider fill"),
                quantity: fill.quantity,
                price: fill.price_per_1m_micro_cr,
                cost: fill.cost_micro_cr,
                fee: fill.fee_micro_cr,
            })
            .collect();
        assert_eq!(stored, answer.fills, "order {}", answer.order);
        assert_eq!(answer.quantity, ORDER_QUANTITY);
        assert_eq!(answer.from_provider, 0);
        assert_eq!(answer.filled + answer.unfilled, answer.quantity);
        assert_eq!(
            answer.filled,
            answer.fills.iter().map(|f| f.quantity).sum::<u64>()
        );
        assert_eq!(
            answer.buyer_paid,
            answer.fills.iter().map(|f| f.cost).sum::<u64>(),
            "the seller pays the fee"
        );
        assert_eq!(answer.fees, answer.fills.iter().map(|f| f.fee).sum::<u64>());
        let factor = curve.factor(window, record.created_at);
        for (position, fill) in fills.iter().enumerate() {
            assert_eq!(fill.position, u32::try_from(position).expect("small"));
            assert_eq!(fill.at, record.created_at, "a fill at its order's instant");
            assert_eq!(fill.buyer, answer.buyer);
            let listing = &listings[&fill.listing_id.expect("a listing")];
            assert_eq!(fill.seller, Some(listing.seller));
            let price = price_at(listing.ask_per_1m_micro_cr, factor);
            assert_eq!(fill.price_per_1m_micro_cr, price, "{fill:?}");
            let cost = purchase_cost_micro_cr(fill.quantity, price).expect("a cost");
            assert_eq!(fill.cost_micro_cr, cost, "{fill:?}");
            assert_eq!(fill.fee_micro_cr, fee_of(cost, rate), "{fill:?}");
        }
        let keys: Vec<(u64, u64)> = answer.fills.iter().map(|f| key_of(&f.listing)).collect();
        assert!(
            keys.windows(2).all(|k| k[0] < k[1]),
            "order {}: fills out of (ask, seq) order: {keys:?}",
            answer.order
        );
        let prices: Vec<u64> = answer.fills.iter().map(|f| f.price).collect();
        assert!(
            prices.windows(2).all(|p| p[0] <= p[1]),
            "order {}: prices fall: {prices:?}",
            answer.order
        );
        orders.push((record.created_at, answer));
    }

    // Every listing filled exactly once over: its fills (all from answered orders) sum to what
    // it says it sold, which is all it listed.
    let mut fills_seen = 0;
    let mut listed_total = 0;
    let mut filled_total = 0;
    for listing in listings.values() {
        let fills = store.listing_fills(listing.id).await.expect("fills");
        for fill in &fills {
            let answer = answered.get(&fill.order_id).unwrap_or_else(|| {
                panic!(
                    "a fill of {} by an order nobody was answered: {fill:?}",
                    listing.id
                )
            });
            assert!(answer.fills.iter().any(|f| f.listing == listing.id));
        }
        fills_seen += fills.len();
        let sold: u64 = fills.iter().map(|f| f.quantity).sum();
        assert_eq!(sold, listing.quantity_filled, "{listing:?}");
        assert_eq!(
            listing.quantity_open + listing.quantity_filled,
            listing.quantity_listed,
            "{listing:?}"
        );
        assert_eq!(listing.quantity_open, 0, "the book ran dry: {listing:?}");
        assert_eq!(listing.state, ListingState::Filled, "{listing:?}");
        listed_total += listing.quantity_listed;
        filled_total += listing.quantity_filled;
    }
    assert_eq!(filled_total, listed_total);
    assert_eq!(
        answers.iter().map(|a| a.filled).sum::<u64>(),
        listed_total,
        "the buyers got exactly what was listed"
    );
    assert_eq!(
        fills_seen,
        answers.iter().map(|a| a.fills.len()).sum::<usize>()
    );
    let recent: Vec<FillRecord> = store.recent_fills(asset, 1_000).await.expect("fills");
    assert_eq!(recent.len(), fills_seen, "no fill outside the listings");

    // Across the race, in commit order: never back in (ask, seq), never past a listing with
    // tokens left, every order whole until the book runs dry, nothing after.
    orders.sort_by_key(|(at, answer)| (*at, answer.order));
    assert!(
        orders.windows(2).all(|w| w[0].0 < w[1].0),
        "two orders stamped at the same instant under the market's lock"
    );
    let mut taken: BTreeMap<Uuid, u64> = BTreeMap::new();
    let mut last: Option<Uuid> = None;
    for (at, answer) in &orders {
        for fill in &answer.fills {
            if let Some(previous) = last.filter(|previous| *previous != fill.listing) {
                assert!(
                    key_of(&previous) < key_of(&fill.listing),
                    "at {at:?} order {} took {:?} after {:?}",
                    answer.order,
                    key_of(&fill.listing),
                    key_of(&previous)
                );
                assert_eq!(
                    taken.get(&previous).copied().unwrap_or(0),
                    listings[&previous].quantity_listed,
                    "at {at:?} order {} moved on from listing {:?} while it had tokens left",
                    answer.order,
                    key_of(&previous)
                );
            }
            *taken.entry(fill.listing).or_default() += fill.quantity;
            last = Some(fill.listing);
        }
    }
    let short = orders
        .iter()
        .position(|(_, answer)| answer.filled < answer.quantity)
        .expect("demand exceeds supply: some order came back short");
    for (_, answer) in &orders[..short] {
        assert_eq!(answer.stop_reason, "filled", "{answer:?}");
    }
    assert_eq!(orders[short].1.stop_reason, "book_exhausted");
    for (_, answer) in &orders[short + 1..] {
        assert_eq!(
            answer.filled, 0,
            "an order after the book ran dry: {answer:?}"
        );
        assert_eq!(answer.stop_reason, "book_exhausted", "{answer:?}");
    }

    // Balances: what each side holds is what its fills say.
    let credit = AssetCode::credit();
    let mut bought: HashMap<OrgId, (u64, u64)> = HashMap::new();
    let mut earned: HashMap<OrgId, u64> = HashMap::new();
    let mut fees = 0;
    for answer in answers {
        let entry = bought.entry(answer.buyer).or_default();
        entry.0 += answer.filled;
        entry.1 += answer.buyer_paid;
        for fill in &answer.fills {
            *earned.entry(listings[&fill.listing].seller).or_default() += fill.cost - fill.fee;
            fees += fill.fee;
        }
    }
    for (buyer, _) in &fixture.buyers {
        let (tokens, paid) = bought[buyer];
        let owner = Owner::Org(*buyer);
        assert_eq!(
            net(store, asset, owner, AccountKind::Acquired).await,
            i128::from(tokens)
        );
        assert_eq!(
            net(store, &credit, owner, AccountKind::Wallet).await,
            i128::from(CREDITS) - i128::from(paid)
        );
    }
    for seller in &fixture.sellers {
        let owner = Owner::Org(*seller);
        let listed: u64 = listings
            .values()
            .filter(|l| l.seller == *seller)
            .map(|l| l.quantity_listed)
            .sum();
        assert_eq!(net(store, asset, owner, AccountKind::Escrow).await, 0);
        assert_eq!(
            net(store, asset, owner, AccountKind::Alloc).await,
            i128::from(ALLOT) - i128::from(listed)
        );
        assert_eq!(
            net(store, &credit, owner, AccountKind::Wallet).await,
            i128::from(earned.get(seller).copied().unwrap_or(0))
        );
    }
    assert_eq!(
        net(store, &credit, Owner::Provider, AccountKind::Fees).await,
        i128::from(fees)
    );

    // The books: every stored balance is its journal's, every asset sums to zero.
    let report = store.check().await.expect("check");
    assert!(report.is_ok(), "the books do not balance: {report:?}");
    assert!(report.discrepancies.is_empty());
    assert!(report.unbalanced_assets.is_empty());
    store.close().await;

    // The operator's command agrees.
    let check = Command::new(env!("CARGO_BIN_EXE_credex"))
        .arg("check")
        .env_remove("CREDEX_CONFIG")
        .env("DATABASE_URL", db.url())
        .output()
        .expect("run credex check");
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(printed.contains("\"discrepancies\": []"), "{printed}");
    assert!(printed.contains("\"unbalanced_assets\": []"), "{printed}");

    let filled_orders = orders.iter().filter(|(_, a)| a.filled > 0).count();
    let per_server: Vec<usize> = (0..2)
        .map(|s| {
            orders
                .iter()
                .filter(|(_, a)| a.server == s && a.filled > 0)
                .count()
        })
        .collect();
    let switches = orders
        .windows(2)
        .filter(|w| w[0].1.filled > 0 && w[1].1.filled > 0 && w[0].1.server != w[1].1.server)
        .count();
    eprintln!(
        "{} orders: {filled_orders} filled something (server 0: {}, server 1: {}; the \
         committing process changed {switches} times among them), {listed_total} tokens \
         over {LISTINGS} listings in {fills_seen} fills, {} µCR in fees",
        orders.len(),
        per_server[0],
        per_server[1],
        fees
    );
}

async fn two_processes_race(db: &TestDb) {
    let started = Instant::now();
    let fixture = build_fixture(db).await;
    eprintln!("fixture built in {:?}", started.elapsed());

    // Both processes start together on the same database, then serve the race.
    let mut servers = [Server::spawn(db.url()), Server::spawn(db.url())];
    for server in &mut servers {
        server.wait_port();
    }
    let ports = [servers[0].port, servers[1].port];
    eprintln!("servers on ports {ports:?} after {:?}", started.elapsed());
    let raced = Instant::now();
    let answers = race(&fixture, ports).await;
    let race_took = raced.elapsed();
    for server in &mut servers {
        server.assert_running();
    }

    // Both served: each answered exactly its buyers' orders, and counted them as 201s.
    assert_eq!(answers.len(), BUYERS * ORDERS_PER_BUYER);
    for (s, server) in servers.iter().enumerate() {
        let sent = answers.iter().filter(|a| a.server == s).count();
        assert_eq!(sent, BUYERS / 2 * ORDERS_PER_BUYER);
        let counted = orders_counted(server.port).await;
        assert_eq!(
            counted,
            u64::try_from(sent).expect("small"),
            "server {s}'s metrics"
        );
    }
    let buyers: HashSet<OrgId> = answers.iter().map(|a| a.buyer).collect();
    assert_eq!(buyers.len(), BUYERS);

    for server in &servers {
        server.sigterm();
    }
    for server in &mut servers {
        let status = server.wait_stopped();
        assert!(
            status.success(),
            "credex serve exited with {status}:\n{}",
            server.log()
        );
    }
    eprintln!(
        "{} orders answered in {race_took:?}; both servers stopped cleanly",
        answers.len()
    );

    verify(db, &fixture, &answers).await;
    eprintln!("done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_racing_32_buyers_fill_each_listing_once_in_price_time_order() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    two_processes_race(&db).await;
    db.finish().await;
}
