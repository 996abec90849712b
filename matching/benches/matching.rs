//! Matching-engine throughput: `credex-matching` against the crates.io engine `matchcore`, on the
//! same order sequences, in the same process, rounds alternating between the two.
//!
//! Run (release mode, about a minute):
//!
//! ```sh
//! cargo bench -p credex-matching --bench matching
//! ```
//!
//! Scenarios, each a build phase then a stream, every command counted as one order:
//! - **shallow**: 10,000 price levels × 2 listings (asks 100 µCR apart), then 1,000,000 commands
//!   alternating an immediate-or-cancel buy of 1 to 1,100 tokens and a new listing of 100 to
//!   1,000 tokens at one of the 10,000 asks (so the book stays about as deep as it started);
//! - **deep**: one price level with a queue of 100,000 listings, then the same alternating
//!   stream at that one ask.
//!
//! `matchcore` gets GTC sell limit orders and IOC buy limit orders priced above every ask. Ours
//! gets listings and buy orders with a price limit above every price, for a buyer that owns no
//! listing, checks self-trades through a `linked` function, and prices every order with the
//! market's decay curve at the order's instant (a different instant for every order). Both fill
//! the same quantities (checked). The figure is the median of the rounds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use credex_ledger::{OrgId, Timestamp};
use credex_matching::{
    BuyOrder, Fee, Limit, Listing, ListingFields, ListingId, MarketRules, MatchOutcome, OrderBook,
};
use credex_pricing::{DecayCurve, DecayWindow};
use rust_decimal::Decimal;
use uuid::Uuid;

/// Rounds per scenario; `MATCHING_BENCH_ROUNDS` overrides it.
const ROUNDS: usize = 5;
const STREAM: usize = 1_000_000;
const DAY_MICROS: i64 = 86_400_000_000;

#[derive(Debug, Clone, Copy)]
enum Command {
    Sell { ask: u64, quantity: u64 },
    Buy { quantity: u64 },
}

struct Scenario {
    name: &'static str,
    build: Vec<Command>,
    stream: Vec<Command>,
}

impl Scenario {
    fn orders(&self) -> usize {
        self.build.len() + self.stream.len()
    }

    fn commands(&self) -> impl Iterator<Item = &Command> {
        self.build.iter().chain(&self.stream)
    }
}

/// xorshift64*: a deterministic sequence, the same for both engines.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `low..=high` for a benchmark.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

fn scenario(name: &'static str, levels: u64, per_level: u64) -> Scenario {
    let mut random = Sequence(0x5EED_0000 + levels);
    let ask = |level: u64| 1_000_000 + level * 100;
    let mut build = Vec::new();
    for _ in 0..per_level {
        for level in 0..levels {
            build.push(Command::Sell {
                ask: ask(level),
                quantity: random.between(100, 1_000),
            });
        }
    }
    // Listings arrive with their levels shuffled (Fisher–Yates).
    for i in (1..build.len()).rev() {
        let j = usize::try_from(random.between(0, u64::try_from(i).unwrap_or(0))).unwrap_or(0);
        build.swap(i, j);
    }
    let stream = (0..STREAM)
        .map(|i| {
            if i % 2 == 0 {
                Command::Buy {
                    quantity: random.between(1, 1_100),
                }
            } else {
                Command::Sell {
                    ask: ask(random.between(0, levels - 1)),
                    quantity: random.between(100, 1_000),
                }
            }
        })
        .collect();
    Scenario {
        name,
        build,
        stream,
    }
}

fn rules(curve: DecayCurve) -> MarketRules {
    let open = Timestamp::from_micros(1_800_000_000_000_000);
    let end = open.plus_micros(7 * DAY_MICROS);
    let window = DecayWindow::new(open, end).expect("a valid window");
    MarketRules::new(curve, window, Fee::standard())
}

fn org(n: u64) -> OrgId {
    OrgId::new(Uuid::from_u64_pair(0x0a, n)).expect("a valid org")
}

/// How long each phase took, and the tokens filled in all.
#[derive(Debug, Clone, Copy)]
struct Timing {
    build: Duration,
    stream: Duration,
    filled: u64,
}

/// Sellers are orgs 1 to 64; the buyer is org 100, linked to no one.
fn run_credex(scenario: &Scenario, curve: DecayCurve) -> Timing {
    let rules = rules(curve);
    let buyer = org(100);
    let sellers: Vec<OrgId> = (1..=64).map(org).collect();
    let linked = |a: OrgId, b: OrgId| a == b;
    let start_at = rules.window().open().plus_micros(DAY_MICROS);
    let mut outcome = MatchOutcome::default();
    let mut filled = 0;
    let mut build = Duration::ZERO;
    let started = Instant::now();
    let mut book = OrderBook::with_capacity(rules, 1 << 14);
    for (n, command) in scenario.commands().enumerate() {
        if n == scenario.build.len() {
            build = started.elapsed();
        }
        let seq = u64::try_from(n).unwrap_or(u64::MAX);
        match *command {
            Command::Sell { ask, quantity } => {
                let listing = Listing::new(ListingFields {
                    id: ListingId::new(Uuid::from_u64_pair(1, seq + 1)).expect("a valid id"),
                    seller: sellers[n % sellers.len()],
                    quantity,
                    min_fill: None,
                    ask_per_1m_micro_cr: ask,
                    seq,
                    created_at: start_at,
                })
                .expect("a valid listing");
                book.insert(listing).expect("inserted");
            }
            Command::Buy { quantity } => {
                let order = BuyOrder::new(buyer, quantity, Limit::PricePer1m(10_000_000), None)
                    .expect("a valid order");
                let at = start_at.plus_micros(i64::try_from(n).unwrap_or(0));
                book.match_order_into(&order, at, &linked, &mut outcome)
                    .expect("matched");
                filled += outcome.filled();
            }
        }
    }
    let elapsed = started.elapsed();
    black_box(&book);
    Timing {
        build,
        stream: elapsed - build,
        filled,
    }
}

fn run_matchcore(scenario: &Scenario) -> Timing {
    use matchcore::{
        Command as Cmd, CommandKind, CommandMeta, CommandOutcome, CommandReport, LimitOrder,
        NewOrder, OrderFlags, Price, Quantity, QuantityPolicy, SequenceNumber, Side, SubmitCmd,
        TimeInForce, Timestamp as McTimestamp,
    };
    let mut filled = 0;
    let mut build = Duration::ZERO;
    let started = Instant::now();
    let mut book = matchcore::OrderBook::new("TOK.pro.2026-11");
    for (n, command) in scenario.commands().enumerate() {
        if n == scenario.build.len() {
            build = started.elapsed();
        }
        let seq = u64::try_from(n).unwrap_or(u64::MAX);
        let (side, price, quantity, tif) = match *command {
            Command::Sell { ask, quantity } => (Side::Sell, ask, quantity, TimeInForce::Gtc),
            Command::Buy { quantity } => (Side::Buy, 10_000_000, quantity, TimeInForce::Ioc),
        };
        let command = Cmd {
            meta: CommandMeta {
                sequence_number: SequenceNumber(seq),
                timestamp: McTimestamp(seq),
            },
            kind: CommandKind::Submit(SubmitCmd {
                order: NewOrder::Limit(LimitOrder::new(
                    Price(price),
                    QuantityPolicy::Standard {
                        quantity: Quantity(quantity),
                    },
                    OrderFlags::new(side, false, tif),
                )),
            }),
        };
        let outcome = book.execute(&command);
        if let CommandOutcome::Applied(CommandReport::Submit(effects)) = &outcome {
            if let Some(result) = effects.target_order().match_result() {
                filled += result.executed_quantity().0;
            }
        }
        black_box(outcome);
    }
    let elapsed = started.elapsed();
    black_box(&book);
    Timing {
        build,
        stream: elapsed - build,
        filled,
    }
}

fn per_second(orders: usize, elapsed: Duration) -> u128 {
    let orders = u128::try_from(orders).unwrap_or(u128::MAX);
    orders * 1_000_000_000 / elapsed.as_nanos().max(1)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    let linear = DecayCurve::linear(Decimal::new(1, 1)).expect("a valid curve");
    let curves = [
        ("linear", linear),
        (
            "stairstep",
            DecayCurve::stairstep(7, Decimal::new(1, 1)).expect("a valid curve"),
        ),
        (
            "half_life",
            DecayCurve::half_life(86_400, Decimal::ZERO).expect("a valid curve"),
        ),
    ];
    println!("| scenario | engine | build orders/s | stream orders/s | all orders/s | all ms |");
    println!("|---|---|--:|--:|--:|--:|");
    let rounds = std::env::var("MATCHING_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    // `MATCHING_BENCH_SCENARIO=shallow|deep` runs one scenario (for profiling).
    let only = std::env::var("MATCHING_BENCH_SCENARIO").ok();
    let scenarios = [scenario("shallow", 10_000, 2), scenario("deep", 1, 100_000)];
    for scenario in scenarios
        .into_iter()
        .filter(|s| only.as_deref().is_none_or(|only| only == s.name))
    {
        let mut timings = vec![Vec::new(); curves.len() + 1];
        for _ in 0..rounds {
            let reference = run_matchcore(&scenario);
            timings[0].push(reference);
            for (i, (_, curve)) in curves.iter().enumerate() {
                let ours = run_credex(&scenario, *curve);
                assert_eq!(ours.filled, reference.filled, "both engines fill the same");
                timings[i + 1].push(ours);
            }
        }
        let engines = std::iter::once("matchcore 0.4".to_owned()).chain(
            curves
                .iter()
                .map(|(name, _)| format!("credex-matching, {name} decay")),
        );
        for (engine, runs) in engines.zip(timings) {
            let build = median(runs.iter().map(|t| t.build).collect());
            let stream = median(runs.iter().map(|t| t.stream).collect());
            let all = median(runs.iter().map(|t| t.build + t.stream).collect());
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                scenario.name,
                engine,
                per_second(scenario.build.len(), build),
                per_second(scenario.stream.len(), stream),
                per_second(scenario.orders(), all),
                all.as_millis(),
            );
        }
    }
}
