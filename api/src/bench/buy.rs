//! `credex bench buy`: throughput and latency of emergency-credit buys (`POST
//! /v1/orgs/{org_id}/orders`, immediate-or-cancel, provider fill allowed) against a book of
//! `--listings` listings, under a fixed request rate.
//!
//! A whole `credex` server ([`Application`]) runs on a fresh database — SQLite in a temporary
//! directory, and PostgreSQL too when `--postgres` names a server (a database is created there
//! and dropped after). The market is set up in-process first, not measured, through the same
//! services the routes call ([`assemble`]): a token class `bench` (face value 4 CR per 1M
//! tokens) allotted to the teams plan, one seller org per 100 listings and one buyer org per
//! client (all verified, on the teams plan), the cycle of now opened (the benchmark refuses
//! to start in a month's last 10 minutes), the market's listing window widened to the whole
//! cycle (so listing works on any day of the month; its decay curve and other settings stay
//! the defaults), `--listings` listings of 10,000–100,000 tokens at asks of 2–6 CR per 1M
//! tokens drawn from a fixed seed, 1,000 CR in every buyer's wallet and a `market:trade` API
//! key per buyer. Then the server starts on that
//! database and the buyers buy `--quantity` tokens each time: market orders (no price limit)
//! with `allow_provider_fill`, so what the book cannot fill the provider sells at its list
//! price. The default book holds about 550M tokens, and a default run buys 60M, so it does not
//! run dry: buys fill from listings, and the report counts those filled by the provider.
//!
//! The server's configuration differs from the defaults in two places, both for the set-up and
//! the load rather than for what is measured: the market's selling policy lets orgs sell on
//! their first day (`min_org_age_days = 0`), and the per-org velocity limit on market writes
//! (`market_orders_per_minute`, 120 by default) is raised to 10,000,000 so that it never
//! throttles the benchmark (at 500 buys/s over 64 buyers each org sends about 8 buys/s; a
//! default server would answer 429 once an org's burst of 120 is spent).
//!
//! On PostgreSQL the database is `ANALYZE`d after the set-up (and once after the first 1,000
//! listings), as autovacuum would after such a bulk load, and again after the warm-up, as
//! autovacuum would once the orders and fills tables have grown from empty (`--no-analyze`
//! skips all three; this machine's PostgreSQL runs without autovacuum). Without statistics the
//! planner takes the book's partial index, not the primary key, for the update of a filled
//! listing — every fill then scans the whole book — and for a seller's usage; with the
//! statistics of an empty `orders` table it checks each fill's foreign key to its order by
//! scanning every order, a plan each connection keeps until the table is analyzed again.
//!
//! The load is **open-loop**, as in `credex bench estimate`: buy *i* is due at `start + i /
//! rate` whether or not earlier ones have been answered, and its latency is measured from the
//! instant it was due (no coordinated omission). `--clients` keep-alive connections send the
//! buys, each by its own buyer's key; a buy due while every connection is busy waits for one,
//! and the wait counts. The first `--warmup-seconds` are not counted. Every answer must be 201
//! with the whole quantity filled (from listings, the provider, or both) and a body that adds
//! up, or the run fails. After the run the books are checked (every balance recomputed from
//! the journal).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use credex_ledger::{AssetCode, OrgId, Timestamp};
use credex_store::{
    Allotment, AuditAction, AuditEntry, ClassRecord, Plan, Scope, SystemClock, VerificationLevel,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, Mutex};
use uuid::Uuid;

use crate::bench::http::Connection;
use crate::config::Config;
use crate::cycles::{open_cycle, CycleId};
use crate::market::{ListRequest, Market};
use crate::startup::{assemble, Assembled};
use crate::Application;

#[derive(Debug, Clone, clap::Args)]
pub struct BuyBenchArgs {
    /// Buys per second, issued on schedule.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Seconds of the same load first, not counted.
    #[arg(long, default_value_t = 2)]
    pub warmup_seconds: u32,
    /// Keep-alive connections sending the buys, one buyer org (and API key) each.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Listings in the book before the first buy (100 per seller org).
    #[arg(long, default_value_t = 10_000)]
    pub listings: usize,
    /// Tokens per buy.
    #[arg(long, default_value_t = 10_000)]
    pub quantity: u64,
    /// Also measure on PostgreSQL: a server URL where the benchmark creates (and then drops)
    /// its own database.
    #[arg(long, hide_env_values = true)]
    pub postgres: Option<String>,
    /// On PostgreSQL, do not `ANALYZE` the database after the set-up: the planner then plans
    /// the buys without statistics of the freshly filled tables (as on a server whose
    /// autovacuum has not analyzed them yet).
    #[arg(long)]
    pub no_analyze: bool,
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct BuyMeasurement {
    pub backend: &'static str,
    pub rate: u32,
    pub clients: usize,
    pub buys: usize,
    /// From the first buy's due instant to the last answer.
    pub elapsed: Duration,
    /// Latency from the due instant (what a buyer on schedule sees).
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Latency from the instant the request was written (the server's share).
    pub service_p50: Duration,
    pub service_p99: Duration,
    /// Buys filled wholly from listings.
    pub from_listings: usize,
    /// Buys filled wholly by the provider (emergency credits at its list price).
    pub from_provider: usize,
    /// Buys filled partly from listings, the rest by the provider.
    pub mixed: usize,
    /// Fills (listing fills and provider sales) over all buys.
    pub fills: usize,
}

impl BuyMeasurement {
    /// Answers per second, in thousandths.
    pub fn achieved_milli_per_second(&self) -> u128 {
        let buys = u128::try_from(self.buys).unwrap_or(u128::MAX);
        buys.saturating_mul(1_000_000_000) / self.elapsed.as_micros().max(1)
    }
}

/// The token class traded.
const CLASS: &str = "bench";
/// The class's face value (and so the provider's list price): 4 CR per 1M tokens.
const FACE_PER_1M_MICRO_CR: u64 = 4_000_000;
/// Listings per seller org.
const LISTINGS_PER_SELLER: usize = 100;
/// A listing's tokens and ask (µCR per 1M tokens), drawn uniformly from these ranges.
const LISTING_TOKENS: std::ops::RangeInclusive<u64> = 10_000..=100_000;
const LISTING_ASK: std::ops::RangeInclusive<u64> = 2_000_000..=6_000_000;
/// What a teams org gets per cycle: more than a seller lists (the sell cap is 100% of it).
const ALLOTMENT_TOKENS: u64 = 20_000_000;
/// Every buyer's credits: 1,000 CR.
const BUYER_CREDITS_MICRO_CR: u64 = 1_000_000_000;
/// The seed of the listings' quantities and asks.
const SEED: u64 = 0x00c0_ffee;
/// Listing requests in flight during the set-up.
const SETUP_CONCURRENCY: usize = 8;
/// Listings made before the first `ANALYZE` of a PostgreSQL set-up.
const ANALYZE_AFTER: usize = 1_000;
/// Market writes per org per minute on the benchmark's server: never the limit.
const ORDERS_PER_MINUTE: u32 = 10_000_000;

/// The head of the results' table.
const TABLE_HEAD: &str =
    "| backend | rate/s | clients | listings | tokens/buy | buys | achieved/s | p50 ms | p90 ms | p99 ms | max ms | server p50 ms | server p99 ms | from listings | from provider | mixed | fills/buy |";

pub async fn run(args: &BuyBenchArgs) -> anyhow::Result<Vec<BuyMeasurement>> {
    if args.rate == 0 || args.clients == 0 || args.seconds == 0 {
        bail!("--rate, --clients and --seconds must be positive");
    }
    if args.listings == 0 || args.quantity == 0 {
        bail!("--listings and --quantity must be positive");
    }
    super::on_fresh_databases(args.postgres.as_deref(), TABLE_HEAD, args, measure_backend).await
}

async fn measure_backend(
    backend: &'static str,
    mut config: Config,
    args: &BuyBenchArgs,
) -> anyhow::Result<BuyMeasurement> {
    config.market_policy.min_org_age_days = 0;
    config.market_orders_per_minute = ORDERS_PER_MINUTE;
    let started = Instant::now();
    let analyze = (backend == "postgres" && !args.no_analyze)
        .then(|| config.database_url())
        .transpose()?;
    let world = set_up(&config, args, analyze.as_deref())
        .await
        .context("set up the market")?;
    eprintln!(
        "bench buy: {backend}, {} listings by {} sellers in {}, {} buyers; set up in {:.1?}",
        args.listings,
        args.listings.div_ceil(LISTINGS_PER_SELLER),
        world.asset,
        world.buyers.len(),
        started.elapsed(),
    );
    if let Some(url) = &analyze {
        super::admin_execute(url, "ANALYZE")
            .await
            .context("analyze the benchmark database")?;
    }
    let app = Application::build_with_clock(&config, Arc::new(SystemClock)).await?;
    let port = app.port();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let measured = async {
        let load = Load {
            port,
            world: Arc::new(world),
            quantity: args.quantity,
            rate: args.rate,
            clients: args.clients,
            sent: Arc::new(AtomicU64::new(0)),
        };
        // One buy on its own first: a route that does not answer as expected fails here, once.
        load.one().await?;
        eprintln!(
            "bench buy: {backend}, {} tokens per buy, {} buys/s for {} s after {} s of warm-up",
            args.quantity, args.rate, args.seconds, args.warmup_seconds
        );
        load.drive(args.warmup_seconds).await?;
        // The warm-up made the orders, fills and keys a running market has; a server's
        // autovacuum analyzes a table once it has grown by a tenth (this one's is off).
        if let Some(url) = &analyze {
            super::admin_execute(url, "ANALYZE")
                .await
                .context("analyze the benchmark database after the warm-up")?;
        }
        let samples = load.drive(args.seconds).await?;
        anyhow::Ok(summarize(backend, args, &samples))
    }
    .await;
    handle.stop(true).await;
    server.await??;
    let measurement: BuyMeasurement = measured?;
    check_books(&config).await?;
    let ms = |d: Duration| format!("{}.{:03}", d.as_millis(), d.as_micros() % 1_000);
    let fills_per_buy_centi = measurement.fills * 100 / measurement.buys.max(1);
    println!(
        "| {} | {} | {} | {} | {} | {} | {}.{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}.{:02} |",
        measurement.backend,
        measurement.rate,
        measurement.clients,
        args.listings,
        args.quantity,
        measurement.buys,
        measurement.achieved_milli_per_second() / 1_000,
        measurement.achieved_milli_per_second() % 1_000 / 100,
        ms(measurement.p50),
        ms(measurement.p90),
        ms(measurement.p99),
        ms(measurement.max),
        ms(measurement.service_p50),
        ms(measurement.service_p99),
        measurement.from_listings,
        measurement.from_provider,
        measurement.mixed,
        fills_per_buy_centi / 100,
        fills_per_buy_centi % 100,
    );
    Ok(measurement)
}

/// Recomputes every balance from the journal: the buys must have kept the books whole.
async fn check_books(config: &Config) -> anyhow::Result<()> {
    let store = credex_store::connect(&config.database_url()?, Arc::new(SystemClock)).await?;
    let report = store.check().await;
    store.close().await;
    let report = report?;
    if !report.is_ok() {
        bail!("the books do not balance after the benchmark: {report:?}");
    }
    Ok(())
}

/// What the load needs to know of the prepared market.
#[derive(Debug)]
struct World {
    asset: AssetCode,
    /// Each buyer org with its `market:trade` API key.
    buyers: Vec<(OrgId, String)>,
}

fn audit(now: Timestamp, action: &str) -> anyhow::Result<AuditEntry> {
    let action = AuditAction::parse(action).map_err(|error| anyhow::anyhow!("{error}"))?;
    AuditEntry::new(now, action, "bench buy", serde_json::json!({}))
        .map_err(|error| anyhow::anyhow!("{error}"))
}

/// Prepares the market in-process (see the module's documentation), then closes the store so
/// that the server opens it afresh. `analyze`: the PostgreSQL database's URL, to analyze it
/// part-way through the listings.
async fn set_up(
    config: &Config,
    args: &BuyBenchArgs,
    analyze: Option<&str>,
) -> anyhow::Result<World> {
    let Assembled {
        store,
        ledger,
        market,
        ..
    } = assemble(config, Arc::new(SystemClock)).await?;
    let world = async {
        let now = store.clock().now();
        let cycle = CycleId::of(now);
        let margin = 10 * 60 * 1_000_000;
        if now.plus_micros(margin) >= cycle.ends_at() {
            bail!("the cycle {cycle} ends in less than 10 minutes: run the benchmark after it");
        }
        let class = ClassRecord {
            class: CLASS.to_owned(),
            face_value_per_1m_micro_cr: FACE_PER_1M_MICRO_CR,
            description: "benchmark models".to_owned(),
            created_at: now,
            updated_at: now,
        };
        store.put_class(&class, &audit(now, "classes.put")?).await?;
        let allotment = Allotment {
            plan: Plan::Teams,
            tokens_per_cycle: ALLOTMENT_TOKENS,
        };
        store
            .put_allotment(CLASS, allotment, now, &audit(now, "allotments.put")?)
            .await?;
        let sellers = args.listings.div_ceil(LISTINGS_PER_SELLER);
        let verified = VerificationLevel::new(1).map_err(|error| anyhow::anyhow!("{error}"))?;
        let seller_orgs =
            super::create_orgs(store.as_ref(), "Bench Seller", sellers, Some(verified), now)
                .await?;
        let buyer_orgs = super::create_orgs(
            store.as_ref(),
            "Bench Buyer",
            args.clients,
            Some(verified),
            now,
        )
        .await?;
        open_cycle(&ledger, cycle, now).await?;
        let asset = cycle.asset(CLASS)?;
        let info = market.ensure_market(&asset).await?;
        market
            .change_settings(&asset, cycle.starts_at(), info.settings, None)
            .await?;
        list(&market, &asset, &seller_orgs, args.listings, analyze).await?;
        super::fund(
            &ledger,
            &buyer_orgs,
            BUYER_CREDITS_MICRO_CR,
            "bench buy: credits",
        )
        .await?;
        let keys = super::api_keys(
            store.as_ref(),
            &buyer_orgs,
            Scope::MarketTrade,
            "bench buy",
            now,
        )
        .await?;
        let buyers = buyer_orgs.into_iter().zip(keys).collect();
        anyhow::Ok(World { asset, buyers })
    }
    .await;
    ledger.close().await;
    store.close().await;
    world
}

/// `count` listings, [`LISTINGS_PER_SELLER`] per seller, of quantities and asks drawn from
/// [`SEED`], listed by a few concurrent tasks. With `analyze` (a PostgreSQL URL), the database
/// is analyzed once the first [`ANALYZE_AFTER`] are in, so that the rest are planned with
/// statistics (the seller's usage is then read by its own index, not by scanning the book).
async fn list(
    market: &Arc<Market>,
    asset: &AssetCode,
    sellers: &[OrgId],
    count: usize,
    analyze: Option<&str>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut requests: Vec<ListRequest> = (0..count)
        .map(|i| ListRequest {
            id: Uuid::new_v4(),
            seller: sellers[i / LISTINGS_PER_SELLER],
            asset: asset.clone(),
            quantity: rng.random_range(LISTING_TOKENS),
            ask_per_1m_micro_cr: rng.random_range(LISTING_ASK),
            min_fill: None,
            auto_sell_at: None,
        })
        .collect();
    let Some(url) = analyze else {
        return list_all(market, requests).await;
    };
    let rest = requests.split_off(count.min(ANALYZE_AFTER));
    list_all(market, requests).await?;
    super::admin_execute(url, "ANALYZE")
        .await
        .context("analyze the benchmark database")?;
    list_all(market, rest).await
}

async fn list_all(market: &Arc<Market>, requests: Vec<ListRequest>) -> anyhow::Result<()> {
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(SETUP_CONCURRENCY);
    for _ in 0..SETUP_CONCURRENCY {
        let (market, requests, next) = (market.clone(), requests.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed))?;
                let Some(request) = requests.get(i) else {
                    return anyhow::Ok(());
                };
                market
                    .list(request)
                    .await
                    .with_context(|| format!("listing {}", request.id))?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The load: buys by the buyers' keys, on schedule.
#[derive(Debug)]
struct Load {
    port: u16,
    world: Arc<World>,
    quantity: u64,
    rate: u32,
    clients: usize,
    /// Buys sent so far (each gets its own `Idempotency-Key`).
    sent: Arc<AtomicU64>,
}

/// One answered buy: latency from its due instant and from its send, and where it filled.
#[derive(Debug, Clone, Copy)]
struct Sample {
    due: Instant,
    from_due: Duration,
    from_send: Duration,
    answered: Instant,
    filled: Filled,
}

/// Where an order's tokens came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Filled {
    from_listings: u64,
    from_provider: u64,
    fills: usize,
}

/// One buyer's side of the load.
#[derive(Debug, Clone)]
struct Buyer {
    path: Arc<str>,
    key: Arc<str>,
    body: Arc<[u8]>,
    quantity: u64,
    asset: AssetCode,
}

impl Buyer {
    fn new(load: &Load, index: usize) -> Self {
        let (org, key) = &load.world.buyers[index % load.world.buyers.len()];
        let body = serde_json::json!({
            "asset": load.world.asset.as_str(),
            "quantity": load.quantity,
            "allow_provider_fill": true,
        });
        Self {
            path: Arc::from(format!("/v1/orgs/{org}/orders")),
            key: Arc::from(key.as_str()),
            body: Arc::from(body.to_string().into_bytes()),
            quantity: load.quantity,
            asset: load.world.asset.clone(),
        }
    }

    /// Sends one buy; answers where it filled, or why the answer is not a whole fill.
    async fn buy(
        &self,
        connection: &mut Connection,
        idempotency_key: &str,
    ) -> anyhow::Result<Filled> {
        let answer = connection
            .send(
                "POST",
                &self.path,
                Some(&self.key),
                Some(idempotency_key),
                &self.body,
            )
            .await?;
        let body = String::from_utf8_lossy(&answer.body);
        if answer.status != 201 {
            bail!("a buy answered {}: {body}", answer.status);
        }
        let json: serde_json::Value = serde_json::from_slice(&answer.body)
            .with_context(|| format!("a buy answered {body}"))?;
        self.check(&json, answer.location.as_deref())
            .with_context(|| format!("an implausible answer to a buy: {body}"))
    }

    /// The whole quantity filled, from listings and the provider, paid for, with its fills;
    /// `Location` names the order.
    fn check(&self, answer: &serde_json::Value, location: Option<&str>) -> anyhow::Result<Filled> {
        let number = |field: &str| {
            answer[field]
                .as_u64()
                .with_context(|| format!("no {field}"))
        };
        let order_id = answer["order_id"].as_str().context("no order_id")?;
        Uuid::parse_str(order_id).context("an order_id that is not a UUID")?;
        if location != Some(format!("{}/{order_id}", self.path).as_str()) {
            bail!("Location {location:?} does not name the order");
        }
        if answer["asset"].as_str() != Some(self.asset.as_str()) {
            bail!("another asset");
        }
        let (from_listings, from_provider) = (number("from_listings")?, number("from_provider")?);
        if number("quantity")? != self.quantity
            || number("filled")? != self.quantity
            || from_listings + from_provider != self.quantity
            || number("unfilled")? != 0
        {
            bail!("not a whole fill of {} tokens", self.quantity);
        }
        if number("buyer_paid_micro_cr")? == 0 {
            bail!("tokens bought for nothing");
        }
        number("fees_micro_cr")?;
        answer["stop_reason"].as_str().context("no stop_reason")?;
        let fills = answer["fills"].as_array().context("no fills")?;
        let (mut listed, mut provided) = (0, 0);
        for fill in fills {
            let quantity = fill["quantity"]
                .as_u64()
                .context("a fill without quantity")?;
            if fill["cost_micro_cr"].as_u64().is_none_or(|cost| cost == 0) {
                bail!("a fill without its cost");
            }
            match &fill["listing_id"] {
                serde_json::Value::Null => provided += quantity,
                serde_json::Value::String(_) => listed += quantity,
                _ => bail!("a fill whose listing_id is neither a UUID nor null"),
            }
        }
        if (listed, provided) != (from_listings, from_provider) {
            bail!("fills that do not add up to the order");
        }
        Ok(Filled {
            from_listings,
            from_provider,
            fills: fills.len(),
        })
    }
}

impl Load {
    fn idempotency_key(&self) -> String {
        format!("bench-buy-{}", self.sent.fetch_add(1, Ordering::Relaxed))
    }

    /// One buy by the first buyer.
    async fn one(&self) -> anyhow::Result<()> {
        let mut connection = Connection::open(self.port).await?;
        Buyer::new(self, 0)
            .buy(&mut connection, &self.idempotency_key())
            .await?;
        Ok(())
    }

    /// `seconds` of buys at `rate`, due on schedule.
    async fn drive(&self, seconds: u32) -> anyhow::Result<Vec<Sample>> {
        let total = u64::from(self.rate) * u64::from(seconds);
        let (due_tx, due_rx) = mpsc::unbounded_channel::<Instant>();
        let due_rx = Arc::new(Mutex::new(due_rx));
        let mut clients = Vec::with_capacity(self.clients);
        for index in 0..self.clients {
            let mut connection = Connection::open(self.port).await?;
            let due_rx = due_rx.clone();
            let buyer = Buyer::new(self, index);
            let counter = self.sent.clone();
            clients.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let next = due_rx.lock().await.recv().await;
                    let Some(due) = next else {
                        return anyhow::Ok(samples);
                    };
                    let key = format!("bench-buy-{}", counter.fetch_add(1, Ordering::Relaxed));
                    let sent = Instant::now();
                    let filled = buyer.buy(&mut connection, &key).await?;
                    let answered = Instant::now();
                    samples.push(Sample {
                        due,
                        from_due: answered - due,
                        from_send: answered - sent,
                        answered,
                        filled,
                    });
                }
            }));
        }
        // The schedule runs on a thread of its own: its sleeps are precise to tens of
        // microseconds, where the async runtime's timer has a granularity of a millisecond.
        let rate = self.rate;
        let schedule = std::thread::spawn(move || {
            let start = Instant::now() + Duration::from_millis(10);
            let nanos_per_second = 1_000_000_000_u128;
            for i in 0..total {
                let offset = u128::from(i) * nanos_per_second / u128::from(rate);
                let due = start + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if due_tx.send(due).is_err() {
                    break;
                }
            }
        });
        let mut samples = Vec::new();
        let mut failure = None;
        for client in clients {
            match client.await? {
                Ok(mut answered) => samples.append(&mut answered),
                // The first failure is the one to tell; the others follow from it.
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        // Every client has seen the channel close or failed: the schedule ends once every
        // receiver is gone.
        drop(due_rx);
        schedule
            .join()
            .map_err(|_| anyhow::anyhow!("the schedule thread panicked"))?;
        if let Some(error) = failure {
            return Err(error);
        }
        if samples.len() != usize::try_from(total).unwrap_or(usize::MAX) {
            bail!("{} of {total} buys answered", samples.len());
        }
        Ok(samples)
    }
}

fn summarize(backend: &'static str, args: &BuyBenchArgs, samples: &[Sample]) -> BuyMeasurement {
    let percentile = |sorted: &[Duration], p: usize| {
        sorted
            .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let mut from_due: Vec<Duration> = samples.iter().map(|s| s.from_due).collect();
    let mut from_send: Vec<Duration> = samples.iter().map(|s| s.from_send).collect();
    from_due.sort_unstable();
    from_send.sort_unstable();
    let first_due = samples.iter().map(|s| s.due).min();
    let last_answer = samples.iter().map(|s| s.answered).max();
    let elapsed = match (first_due, last_answer) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    let count = |f: fn(&Filled) -> bool| samples.iter().filter(|s| f(&s.filled)).count();
    BuyMeasurement {
        backend,
        rate: args.rate,
        clients: args.clients,
        buys: samples.len(),
        elapsed,
        p50: percentile(&from_due, 50),
        p90: percentile(&from_due, 90),
        p99: percentile(&from_due, 99),
        max: from_due.last().copied().unwrap_or_default(),
        service_p50: percentile(&from_send, 50),
        service_p99: percentile(&from_send, 99),
        from_listings: count(|f| f.from_provider == 0),
        from_provider: count(|f| f.from_listings == 0),
        mixed: count(|f| f.from_listings > 0 && f.from_provider > 0),
        fills: samples.iter().map(|s| s.filled.fills).sum(),
    }
}
