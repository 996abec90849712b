//! The book's invariants (crate documentation, "Invariants") over random sequences of inserts,
//! amends, cancels and orders, random curves, fees and admin-linked groups.
//!
//! Every order is checked two ways:
//! - against a naive reference matcher that sorts every open listing of a plain `Vec` model by
//!   (current price, seq) and computes costs and fees independently (the pricing crate's
//!   functions, `Decimal` fees, binary-searched budgets): the engine's outcome must be equal
//!   (price-time priority, invariant 2; the provider rule);
//! - directly, by the spec's statements: limits, maximum totals, self-trade prevention, minimum
//!   fills, CR conservation, and that nothing takeable is left within the order's reach once it
//!   stops (invariants 3 to 7).
//!
//! After each sequence every listing's quantity is accounted for (invariant 1).

mod common;

use common::*;
use credex_ledger::{OrgId, Timestamp};
use credex_matching::{
    BookError, BuyOrder, Fee, FeePayer, Limit, Listing, ListingFields, MarketRules, MatchOutcome,
    OrderBook, ProviderFill, StopReason,
};
use credex_pricing::decay::{price_at, purchase_cost_micro_cr};
use credex_pricing::{DecayCurve, DecayFactor};
use proptest::prelude::*;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

const ORGS: u128 = 6;

#[derive(Debug, Clone)]
enum Op {
    Insert {
        seller: u128,
        quantity: u64,
        min_fill_percent: Option<u64>,
        ask_step: u64,
        ask_jitter: u64,
    },
    Amend {
        pick: usize,
        percent: u64,
    },
    Cancel {
        pick: usize,
    },
    Order {
        buyer: u128,
        quantity: u64,
        limit: LimitChoice,
        provider: Option<(u64, u64)>,
        time_permille: i64,
    },
}

#[derive(Debug, Clone, Copy)]
enum LimitChoice {
    /// A price limit of this many ask steps (scaled).
    Price(u64),
    /// A maximum total of this percentage of the order's cost at the dearest ask.
    Total(u64),
}

#[derive(Debug, Clone)]
struct Market {
    curve: DecayCurve,
    fee: Fee,
    scale: u64,
    groups: [u8; 6],
}

fn curve() -> impl Strategy<Value = DecayCurve> {
    let floor = (0_i64..=600).prop_map(|f| Decimal::new(f, 3));
    prop_oneof![
        floor
            .clone()
            .prop_map(|f| DecayCurve::linear(f).expect("valid")),
        (3_600_u64..=604_800, floor.clone())
            .prop_map(|(h, f)| DecayCurve::half_life(h, f).expect("valid")),
        (1_u32..=20, floor).prop_map(|(s, f)| DecayCurve::stairstep(s, f).expect("valid")),
    ]
}

fn market() -> impl Strategy<Value = Market> {
    let fee = (0_i64..=200_000_000, any::<bool>()).prop_map(|(billionths, buyer)| {
        let payer = if buyer {
            FeePayer::Buyer
        } else {
            FeePayer::Seller
        };
        Fee::new(Decimal::new(billionths, 9), payer).expect("valid fee")
    });
    let scale = prop_oneof![Just(1_u64), Just(997), Just(1_000_003)];
    (curve(), fee, scale, [0_u8..3, 0..3, 0..3, 0..3, 0..3, 0..3]).prop_map(
        |(curve, fee, scale, groups)| Market {
            curve,
            fee,
            scale,
            groups,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    let insert = (
        0..ORGS,
        1_u64..=500,
        prop::option::of(1_u64..=100),
        1_u64..=20,
        0_u64..=2,
    )
        .prop_map(
            |(seller, quantity, min_fill_percent, ask_step, ask_jitter)| Op::Insert {
                seller,
                quantity,
                min_fill_percent,
                ask_step,
                ask_jitter,
            },
        );
    let limit = prop_oneof![
        (0_u64..=22).prop_map(LimitChoice::Price),
        (1_u64..=120).prop_map(LimitChoice::Total),
    ];
    let order = (
        0..ORGS,
        1_u64..=1_500,
        limit,
        prop::option::of((1_u64..=25, 0_u64..=800)),
        0_i64..1_000,
    )
        .prop_map(
            |(buyer, quantity, limit, provider, time_permille)| Op::Order {
                buyer,
                quantity,
                limit,
                provider,
                time_permille,
            },
        );
    prop_oneof![
        4 => insert,
        1 => (any::<usize>(), 0_u64..=120).prop_map(|(pick, percent)| Op::Amend { pick, percent }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        3 => order,
    ]
}

/// A listing as the model tracks it.
#[derive(Debug, Clone)]
struct Model {
    listing: Listing,
    open: u64,
    filled: u64,
    released: u64,
}

struct Run {
    market: Market,
    rules: MarketRules,
    book: OrderBook,
    model: Vec<Model>,
    next: u128,
}

impl Run {
    fn new(market: Market) -> Self {
        let rules = rules(market.curve, market.fee);
        Self {
            book: OrderBook::new(rules),
            rules,
            market,
            model: Vec::new(),
            next: 0,
        }
    }

    /// Admin-linked groups: orgs with the same group number are linked.
    fn linked(&self) -> impl Fn(OrgId, OrgId) -> bool {
        let groups = self.market.groups;
        move |a, b| {
            let group = |o: OrgId| {
                (0..ORGS)
                    .find(|n| org(*n) == o)
                    .map(|n| groups[usize::try_from(n).expect("small")])
            };
            group(a).is_some() && group(a) == group(b)
        }
    }

    fn open_indices(&self) -> Vec<usize> {
        (0..self.model.len())
            .filter(|i| self.model[*i].open > 0)
            .collect()
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Insert {
                seller,
                quantity,
                min_fill_percent,
                ask_step,
                ask_jitter,
            } => {
                self.next += 1;
                let min_fill = min_fill_percent.map(|p| (quantity * p / 100).max(1));
                let listing = Listing::new(ListingFields {
                    id: listing_id(self.next),
                    seller: org(seller),
                    quantity,
                    min_fill,
                    ask_per_1m_micro_cr: (ask_step * 1_000 + ask_jitter) * self.market.scale,
                    seq: u64::try_from(self.next).expect("small"),
                    created_at: Timestamp::from_micros(OPEN_MICROS),
                })
                .expect("valid listing");
                self.book.insert(listing).expect("inserted");
                self.model.push(Model {
                    listing,
                    open: quantity,
                    filled: 0,
                    released: 0,
                });
            }
            Op::Amend { pick, percent } => {
                let open = self.open_indices();
                if open.is_empty() {
                    return Ok(());
                }
                let index = open[pick % open.len()];
                let current = self.model[index].open;
                let wanted = current * percent / 100;
                let id = self.model[index].listing.id();
                let result = self
                    .book
                    .amend_down(self.model[index].listing.key(), id, wanted);
                if wanted == 0 {
                    prop_assert_eq!(result, Err(BookError::AmendToZero));
                } else if wanted >= current {
                    prop_assert_eq!(
                        result,
                        Err(BookError::NotADecrease {
                            quantity: current,
                            requested: wanted
                        })
                    );
                } else {
                    let released = result.expect("amended");
                    prop_assert_eq!(released.quantity, current - wanted);
                    self.model[index].open = wanted;
                    self.model[index].released += current - wanted;
                }
            }
            Op::Cancel { pick } => {
                let open = self.open_indices();
                if open.is_empty() {
                    return Ok(());
                }
                let index = open[pick % open.len()];
                let released = self
                    .book
                    .cancel(
                        self.model[index].listing.key(),
                        self.model[index].listing.id(),
                    )
                    .expect("cancelled");
                prop_assert_eq!(released.quantity, self.model[index].open);
                self.model[index].released += self.model[index].open;
                self.model[index].open = 0;
            }
            Op::Order {
                buyer,
                quantity,
                limit,
                provider,
                time_permille,
            } => self.order(buyer, quantity, limit, provider, time_permille)?,
        }
        Ok(())
    }

    fn order(
        &mut self,
        buyer: u128,
        quantity: u64,
        limit: LimitChoice,
        provider: Option<(u64, u64)>,
        time_permille: i64,
    ) -> Result<(), TestCaseError> {
        let scale = self.market.scale;
        let limit = match limit {
            LimitChoice::Price(steps) => Limit::PricePer1m(steps * 1_000 * scale),
            LimitChoice::Total(percent) => {
                let dearest = purchase_cost_micro_cr(quantity, 20_002 * scale).expect("fits");
                Limit::MaxTotal((dearest * percent / 100).max(1))
            }
        };
        let provider = provider.map(|(steps, available)| {
            ProviderFill::new(steps * 1_000 * scale, available).expect("valid offer")
        });
        let order = BuyOrder::new(org(buyer), quantity, limit, provider).expect("valid order");
        let at = Timestamp::from_micros(OPEN_MICROS + WINDOW_MICROS / 1_000 * time_permille);
        let factor = self.rules.curve().factor(self.rules.window(), at);

        let expected_quote = reference(
            &self.model,
            None,
            quantity,
            None,
            None,
            factor,
            &self.rules,
            &|_, _| false,
        );
        let quote = self.book.quote(quantity, at).expect("quoted");
        prop_assert_eq!(
            quote.quantity,
            expected_quote.fills.iter().map(|f| f.quantity).sum::<u64>()
        );
        prop_assert_eq!(
            quote.cost_micro_cr,
            expected_quote.fills.iter().map(|f| f.cost).sum::<u64>()
        );

        let linked = self.linked();
        let expected = reference_order(&self.model, &order, factor, &self.rules, &linked);
        let preview = self.book.preview(&order, at, &linked).expect("previewed");
        let outcome = self.book.match_order(&order, at, &linked).expect("matched");
        prop_assert_eq!(&preview, &outcome, "a preview is what the order gets");
        self.compare(&outcome, &expected)?;
        self.check_spec(&order, factor, &outcome)?;
        for fill in outcome.fills() {
            let model = self
                .model
                .iter_mut()
                .find(|m| m.listing.id() == fill.listing())
                .expect("a known listing");
            model.open -= fill.quantity();
            model.filled += fill.quantity();
        }
        self.check_not_crossed(&order, factor, &outcome)?;
        Ok(())
    }

    fn compare(&self, outcome: &MatchOutcome, expected: &Reference) -> Result<(), TestCaseError> {
        let got: Vec<RefFill> = outcome
            .fills()
            .iter()
            .map(|f| RefFill {
                listing: self
                    .model
                    .iter()
                    .position(|m| m.listing.id() == f.listing())
                    .expect("a known listing"),
                quantity: f.quantity(),
                price: f.price_per_1m_micro_cr(),
                cost: f.cost_micro_cr(),
                fee: f.fee_micro_cr(),
            })
            .collect();
        prop_assert_eq!(&got, &expected.fills);
        prop_assert_eq!(outcome.stop_reason(), expected.stop);
        prop_assert_eq!(
            outcome
                .provider_sale()
                .map(|s| (s.quantity(), s.cost_micro_cr())),
            expected.provider
        );
        Ok(())
    }

    /// Invariants 3, 4, 5 and 7, straight from the spec's wording.
    fn check_spec(
        &self,
        order: &BuyOrder,
        factor: DecayFactor,
        outcome: &MatchOutcome,
    ) -> Result<(), TestCaseError> {
        let linked = self.linked();
        let mut sellers_receive = 0_u64;
        for fill in outcome.fills() {
            let model = self
                .model
                .iter()
                .find(|m| m.listing.id() == fill.listing())
                .expect("a known listing");
            let listing = model.listing;
            prop_assert!(listing.seller() != order.buyer(), "no self-trade");
            prop_assert!(!linked(order.buyer(), listing.seller()), "no linked trade");
            prop_assert!(
                fill.quantity() >= listing.min_fill() || fill.quantity() == model.open,
                "minimum fill"
            );
            prop_assert!(fill.quantity() <= model.open);
            let price = price_at(listing.ask_per_1m_micro_cr(), factor);
            prop_assert_eq!(fill.price_per_1m_micro_cr(), price);
            if let Limit::PricePer1m(limit) = order.limit() {
                prop_assert!(price <= limit, "never above the limit");
            }
            let cost = purchase_cost_micro_cr(fill.quantity(), price).expect("fits");
            prop_assert_eq!(fill.cost_micro_cr(), cost);
            prop_assert_eq!(
                fill.fee_micro_cr(),
                decimal_fee(cost, self.rules.fee().rate())
            );
            prop_assert!(fill.fee_micro_cr() <= fill.cost_micro_cr());
            prop_assert_eq!(
                fill.buyer_pays_micro_cr(),
                fill.seller_receives_micro_cr() + fill.fee_micro_cr(),
                "CR is conserved per fill"
            );
            sellers_receive += fill.seller_receives_micro_cr();
        }
        let provider = outcome.provider_sale().map_or(0, |s| s.cost_micro_cr());
        prop_assert_eq!(
            outcome.buyer_pays_micro_cr(),
            sellers_receive + outcome.fees_micro_cr() + provider,
            "CR is conserved per order"
        );
        if let Limit::MaxTotal(total) = order.limit() {
            prop_assert!(
                outcome.buyer_pays_micro_cr() <= total,
                "within the maximum total"
            );
        }
        prop_assert_eq!(outcome.filled() + outcome.unfilled(), order.quantity());
        if let Some(sale) = outcome.provider_sale() {
            let offer = order.provider_fill().expect("allowed by the buyer");
            prop_assert!(sale.quantity() <= offer.available());
            prop_assert!(outcome.stop_reason().book_exhausted_for_order());
        }
        Ok(())
    }

    /// Invariant 6: once the order stops, no listing it could still take is left within reach.
    fn check_not_crossed(
        &self,
        order: &BuyOrder,
        factor: DecayFactor,
        outcome: &MatchOutcome,
    ) -> Result<(), TestCaseError> {
        let stop = outcome.stop_reason();
        prop_assert!(!matches!(
            stop,
            StopReason::FillLimit | StopReason::ScanLimit
        ));
        let remaining = order.quantity() - outcome.filled_from_book();
        if remaining == 0 {
            prop_assert_eq!(stop, StopReason::Filled);
            return Ok(());
        }
        let book_spend: u64 = outcome
            .fills()
            .iter()
            .map(|f| f.buyer_pays_micro_cr())
            .sum();
        let linked = self.linked();
        for model in self.model.iter().filter(|m| m.open > 0) {
            let listing = model.listing;
            if listing.seller() == order.buyer() || linked(order.buyer(), listing.seller()) {
                continue;
            }
            let price = price_at(listing.ask_per_1m_micro_cr(), factor);
            let take = match order.limit() {
                Limit::PricePer1m(limit) if price > limit => 0,
                Limit::PricePer1m(_) => remaining.min(model.open),
                Limit::MaxTotal(total) => {
                    let cap = remaining.min(model.open);
                    largest_affordable(cap, price, total - book_spend, &self.rules)
                }
            };
            prop_assert!(
                take == 0 || (take < listing.min_fill() && take < model.open),
                "listing {:?} at {} was takeable ({} tokens) but left after {:?}",
                listing.id(),
                price,
                take,
                stop
            );
        }
        Ok(())
    }

    /// Invariant 1, and the book agrees with the model.
    fn check_book(&self) -> Result<(), TestCaseError> {
        if let Err(broken) = self.book.check_consistency() {
            return Err(TestCaseError::fail(broken));
        }
        let mut open = 0;
        for model in &self.model {
            prop_assert_eq!(
                model.listing.quantity(),
                model.open + model.filled + model.released,
                "listed = open + filled + released"
            );
            let in_book = self.book.get(model.listing.key()).map(|l| l.quantity());
            prop_assert_eq!(in_book, (model.open > 0).then_some(model.open));
            open += model.open;
        }
        prop_assert_eq!(self.book.total_quantity(), open);
        prop_assert_eq!(
            self.book.listings().map(Listing::quantity).sum::<u64>(),
            open
        );
        let depth = self.book.depth(usize::MAX, at(1, 3));
        prop_assert_eq!(depth.iter().map(|d| d.quantity).sum::<u64>(), open);
        prop_assert!(depth.iter().all(|d| d.quantity > 0 && d.listings > 0));
        prop_assert!(depth
            .windows(2)
            .all(|w| w[0].price_per_1m_micro_cr < w[1].price_per_1m_micro_cr));
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RefFill {
    listing: usize,
    quantity: u64,
    price: u64,
    cost: u64,
    fee: u64,
}

#[derive(Debug)]
struct Reference {
    fills: Vec<RefFill>,
    stop: StopReason,
    provider: Option<(u64, u64)>,
}

fn decimal_fee(cost: u64, rate: Decimal) -> u64 {
    (Decimal::from(cost) * rate)
        .ceil()
        .to_u64()
        .expect("a fee fits")
}

fn spend(quantity: u64, price: u64, rules: &MarketRules) -> u64 {
    let cost = purchase_cost_micro_cr(quantity, price).expect("fits");
    match rules.fee().payer() {
        FeePayer::Buyer => cost + decimal_fee(cost, rules.fee().rate()),
        FeePayer::Seller => cost,
    }
}

/// The largest `q ≤ cap` whose spend fits the budget, by binary search.
fn largest_affordable(cap: u64, price: u64, budget: u64, rules: &MarketRules) -> u64 {
    let (mut low, mut high) = (0, cap);
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        if spend(middle, price, rules) <= budget {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    low
}

fn reference_order(
    model: &[Model],
    order: &BuyOrder,
    factor: DecayFactor,
    rules: &MarketRules,
    linked: &dyn Fn(OrgId, OrgId) -> bool,
) -> Reference {
    let (limit, budget) = match order.limit() {
        Limit::PricePer1m(limit) => (Some(limit), None),
        Limit::MaxTotal(total) => (None, Some(total)),
    };
    let mut result = reference(
        model,
        Some(order.buyer()),
        order.quantity(),
        limit,
        budget,
        factor,
        rules,
        linked,
    );
    let filled: u64 = result.fills.iter().map(|f| f.quantity).sum();
    let spent: u64 = result
        .fills
        .iter()
        .map(|f| spend(f.quantity, f.price, rules))
        .sum();
    let remaining = order.quantity() - filled;
    let exhausted = matches!(
        result.stop,
        StopReason::LimitReached | StopReason::BudgetExhausted | StopReason::BookExhausted
    );
    if let (Some(offer), true, true) = (order.provider_fill(), remaining > 0, exhausted) {
        let price = offer.list_price_per_1m_micro_cr();
        let cap = remaining.min(offer.available());
        let quantity = match (limit, budget) {
            (Some(limit), _) if price > limit => 0,
            (_, Some(total)) => {
                let budget = total - spent;
                let (mut low, mut high) = (0, cap);
                while low < high {
                    let middle = low + (high - low).div_ceil(2);
                    if purchase_cost_micro_cr(middle, price).expect("fits") <= budget {
                        low = middle;
                    } else {
                        high = middle - 1;
                    }
                }
                low
            }
            _ => cap,
        };
        if quantity > 0 {
            let cost = purchase_cost_micro_cr(quantity, price).expect("fits");
            result.provider = Some((quantity, cost));
        }
    }
    result
}

/// The naive matcher: every open listing sorted by (current price, seq), taken greedily.
#[allow(clippy::too_many_arguments)]
fn reference(
    model: &[Model],
    buyer: Option<OrgId>,
    quantity: u64,
    limit: Option<u64>,
    budget: Option<u64>,
    factor: DecayFactor,
    rules: &MarketRules,
    linked: &dyn Fn(OrgId, OrgId) -> bool,
) -> Reference {
    let mut candidates: Vec<(u64, u64, usize)> = (0..model.len())
        .filter(|i| model[*i].open > 0)
        .map(|i| {
            let listing = model[i].listing;
            (
                price_at(listing.ask_per_1m_micro_cr(), factor),
                listing.seq(),
                i,
            )
        })
        .collect();
    candidates.sort_unstable();
    let mut remaining = quantity;
    let mut budget = budget;
    let mut fills = Vec::new();
    let mut stop = StopReason::BookExhausted;
    for (price, _, index) in candidates {
        let (listing, open) = (model[index].listing, model[index].open);
        if limit.is_some_and(|limit| price > limit) {
            stop = StopReason::LimitReached;
            break;
        }
        if buyer.is_some_and(|b| b == listing.seller() || linked(b, listing.seller())) {
            continue;
        }
        let cap = remaining.min(open);
        let mut take = cap;
        let mut budget_bound = false;
        if let Some(budget) = budget {
            if spend(1, price, rules) > budget {
                stop = StopReason::BudgetExhausted;
                break;
            }
            take = largest_affordable(cap, price, budget, rules);
            budget_bound = take < cap;
        }
        if take < listing.min_fill() && take < open {
            continue;
        }
        let cost = purchase_cost_micro_cr(take, price).expect("fits");
        let fee = decimal_fee(cost, rules.fee().rate());
        if let Some(budget) = &mut budget {
            *budget -= spend(take, price, rules);
        }
        remaining -= take;
        fills.push(RefFill {
            listing: index,
            quantity: take,
            price,
            cost,
            fee,
        });
        if remaining == 0 {
            stop = StopReason::Filled;
            break;
        }
        if budget_bound {
            stop = StopReason::BudgetExhausted;
            break;
        }
    }
    Reference {
        fills,
        stop,
        provider: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_book_keeps_its_invariants(
        market in market(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut run = Run::new(market);
        for op in &ops {
            run.step(op)?;
            run.check_book()?;
        }
    }

    #[test]
    fn fast_arithmetic_agrees_with_pricing(
        ask in 1_u64..=credex_matching::ASK_MAX,
        billionths in 0_u32..=1_000_000_000,
        quantity in 1_u64..=credex_matching::QUANTITY_MAX,
    ) {
        // The engine's prices and costs (seen through a one-listing book) are the pricing
        // crate's, over the whole range of inputs.
        let factor = DecayFactor::from_billionths(billionths).expect("valid");
        let price = price_at(ask, factor);
        let cost = purchase_cost_micro_cr(quantity, price).expect("fits by the bounds");
        prop_assert!(cost <= credex_ledger::AMOUNT_MAX);
        let market_rules = rules(linear("0"), Fee::standard());
        let mut book = OrderBook::new(market_rules);
        book.insert(listing(1, 1, quantity, None, ask, 1)).expect("inserted");
        let order = order(2, quantity, Limit::PricePer1m(u64::MAX));
        let outcome = book.match_order(&order, at(0, 1), &unlinked).expect("matched");
        let fill = outcome.fills()[0];
        let full = purchase_cost_micro_cr(quantity, ask).expect("fits by the bounds");
        prop_assert_eq!(fill.cost_micro_cr(), full);
        prop_assert_eq!(fill.fee_micro_cr(), decimal_fee(full, Decimal::new(3, 2)));
    }
}
