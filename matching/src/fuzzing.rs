//! The body of the `order_book` fuzz target (`fuzz/fuzz_targets/order_book.rs`), shared with its
//! regression test (`api/tests/fuzz_regressions.rs`), which replays every file of
//! `fuzz/regressions/order_book/` through it. Not part of the crate's API.
//!
//! The input decodes (with `arbitrary`) into a market and up to [`OPS_MAX`] operations: inserts,
//! amends, cancels (also of listings already gone) and orders at instants before, inside and
//! after the listing window. After every operation the book is compared with a plain model of
//! every listing; after every order its outcome is checked against the crate's invariants.

use arbitrary::{Arbitrary, Unstructured};
use credex_ledger::{OrgId, Timestamp, AMOUNT_MAX};
use credex_pricing::{DecayCurve, DecayWindow};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{
    BookError, BuyOrder, Fee, FeePayer, Limit, Listing, ListingError, ListingFields, ListingId,
    MarketRules, MatchError, MatchOutcome, OrderBook, ProviderFill, StopReason, ASK_MAX,
    QUANTITY_MAX,
};

/// The most operations one input runs.
pub const OPS_MAX: usize = 64;
/// Orgs 0 to `ORGS - 1` trade; `groups` links them.
const ORGS: usize = 6;
const OPEN_MICROS: i64 = 1_800_000_000_000_000;
const WINDOW_MICROS: i64 = 7 * 24 * 3_600 * 1_000_000;
const DAY_MICROS: i64 = 24 * 3_600 * 1_000_000;

#[derive(Debug, Arbitrary)]
struct Scenario {
    curve: CurveChoice,
    /// A fee rate in thousandths (reduced below 1000).
    fee_permille: u16,
    seller_pays: bool,
    /// Orgs with equal group numbers are linked.
    groups: [u8; ORGS],
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum CurveChoice {
    Linear { floor_permille: u16 },
    HalfLife { seconds: u32, floor_permille: u16 },
    Stairstep { steps: u8, floor_permille: u16 },
}

#[derive(Debug, Arbitrary)]
enum Op {
    Insert {
        seller: u8,
        quantity: Size,
        min_fill: Option<Size>,
        ask: Size,
    },
    Amend {
        pick: u16,
        quantity: Size,
    },
    Cancel {
        pick: u16,
    },
    Order {
        buyer: u8,
        quantity: Size,
        limit: Option<LimitChoice>,
        provider: Option<(Size, Size)>,
        /// An instant from a day before the window to a day after it.
        instant: u64,
    },
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum LimitChoice {
    Price(Size),
    Total(u64),
}

/// A number mostly small, sometimes at or just beyond the market's bounds.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Size {
    Small(u16),
    Medium(u32),
    Any(u64),
    Max,
    BeyondMax,
}

impl Size {
    fn get(self, max: u64) -> u64 {
        match self {
            Self::Small(n) => u64::from(n),
            Self::Medium(n) => u64::from(n),
            Self::Any(n) => n,
            Self::Max => max,
            Self::BeyondMax => max.saturating_add(1),
        }
    }
}

/// A listing as the model tracks it.
#[derive(Debug)]
struct Model {
    listing: Listing,
    open: u64,
    filled: u64,
    released: u64,
    cancelled: bool,
}

fn org(n: u8) -> OrgId {
    let n = usize::from(n) % ORGS;
    OrgId::new(Uuid::from_u128(0x0a00 + n as u128)).expect("a valid org id")
}

fn listing_id(n: usize) -> ListingId {
    ListingId::new(Uuid::from_u128(0x1_0000 + n as u128)).expect("a valid listing id")
}

fn fraction(permille: u16) -> Decimal {
    Decimal::new(i64::from(permille % 1000), 3)
}

fn rules(scenario: &Scenario) -> MarketRules {
    let curve = match scenario.curve {
        CurveChoice::Linear { floor_permille } => DecayCurve::linear(fraction(floor_permille)),
        CurveChoice::HalfLife {
            seconds,
            floor_permille,
        } => DecayCurve::half_life(u64::from(seconds).max(1), fraction(floor_permille)),
        CurveChoice::Stairstep {
            steps,
            floor_permille,
        } => DecayCurve::stairstep(u32::from(steps).max(1), fraction(floor_permille)),
    };
    let curve = curve.unwrap_or_else(|_| DecayCurve::linear(Decimal::ZERO).expect("a curve"));
    let payer = if scenario.seller_pays {
        FeePayer::Seller
    } else {
        FeePayer::Buyer
    };
    let fee = Fee::new(fraction(scenario.fee_permille), payer).expect("a fee rate below 1");
    let window = DecayWindow::new(
        Timestamp::from_micros(OPEN_MICROS),
        Timestamp::from_micros(OPEN_MICROS + WINDOW_MICROS),
    )
    .expect("a valid window");
    MarketRules::new(curve, window, fee)
}

/// Runs one input. Panics when an invariant breaks; any input that does not decode runs as far
/// as it decodes.
pub fn order_book(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok(scenario) = Scenario::arbitrary(&mut input) else {
        return;
    };
    let mut run = Run {
        book: OrderBook::new(rules(&scenario)),
        groups: scenario.groups,
        model: Vec::new(),
    };
    for op in scenario.ops.iter().take(OPS_MAX) {
        run.step(op);
        run.check_book();
    }
}

struct Run {
    book: OrderBook,
    groups: [u8; ORGS],
    model: Vec<Model>,
}

impl Run {
    fn linked(&self) -> impl Fn(OrgId, OrgId) -> bool {
        let groups = self.groups;
        move |a: OrgId, b: OrgId| {
            let group = |o: OrgId| {
                (0..ORGS)
                    .find(|n| org(u8::try_from(*n).expect("small")) == o)
                    .map(|n| groups[n])
            };
            a != b && group(a).is_some() && group(a) == group(b)
        }
    }

    fn pick(&self, pick: u16) -> Option<usize> {
        (!self.model.is_empty()).then(|| usize::from(pick) % self.model.len())
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Insert {
                seller,
                quantity,
                min_fill,
                ask,
            } => self.insert(seller, quantity, min_fill, ask),
            Op::Amend { pick, quantity } => {
                let Some(index) = self.pick(pick) else { return };
                let wanted = quantity.get(QUANTITY_MAX);
                let model = &self.model[index];
                let result = self
                    .book
                    .amend_down(model.listing.key(), model.listing.id(), wanted);
                let model = &mut self.model[index];
                match result {
                    Ok(released) => {
                        assert!(model.open > 0, "amended a listing that is gone: {model:?}");
                        assert!(
                            wanted >= 1 && wanted < model.open,
                            "amend {wanted} of {model:?}"
                        );
                        assert_eq!(released.quantity, model.open - wanted);
                        assert_eq!(released.listing.quantity(), wanted);
                        model.released += model.open - wanted;
                        model.open = wanted;
                    }
                    Err(BookError::NotFound) => assert_eq!(model.open, 0, "{model:?} not found"),
                    Err(BookError::AmendToZero) => assert_eq!(wanted, 0),
                    Err(BookError::NotADecrease {
                        quantity,
                        requested,
                    }) => {
                        assert_eq!((quantity, requested), (model.open, wanted));
                        assert!(wanted >= model.open);
                    }
                    Err(error) => panic!("amend refused: {error}"),
                }
            }
            Op::Cancel { pick } => {
                let Some(index) = self.pick(pick) else { return };
                let model = &self.model[index];
                let result = self.book.cancel(model.listing.key(), model.listing.id());
                let model = &mut self.model[index];
                match result {
                    Ok(released) => {
                        assert!(
                            model.open > 0,
                            "cancelled a listing that is gone: {model:?}"
                        );
                        assert_eq!(released.quantity, model.open);
                        model.released += model.open;
                        model.open = 0;
                        model.cancelled = true;
                    }
                    Err(BookError::NotFound) => assert_eq!(model.open, 0, "{model:?} not found"),
                    Err(error) => panic!("cancel refused: {error}"),
                }
            }
            Op::Order {
                buyer,
                quantity,
                limit,
                provider,
                instant,
            } => self.order(buyer, quantity, limit, provider, instant),
        }
    }

    fn insert(&mut self, seller: u8, quantity: Size, min_fill: Option<Size>, ask: Size) {
        let quantity = quantity.get(QUANTITY_MAX);
        let min_fill = min_fill.map(|m| m.get(quantity));
        let ask = ask.get(ASK_MAX);
        let seq = u64::try_from(self.model.len()).expect("few listings");
        let fields = ListingFields {
            id: listing_id(self.model.len()),
            seller: org(seller),
            quantity,
            min_fill,
            ask_per_1m_micro_cr: ask,
            seq,
            created_at: Timestamp::from_micros(OPEN_MICROS),
        };
        let listing = match Listing::new(fields) {
            Ok(listing) => listing,
            Err(ListingError::QuantityOutOfRange) => {
                assert!(!(1..=QUANTITY_MAX).contains(&quantity));
                return;
            }
            Err(ListingError::MinFillOutOfRange) => {
                assert!(min_fill.is_some_and(|m| !(1..=quantity).contains(&m)));
                return;
            }
            Err(ListingError::AskOutOfRange) => {
                assert!(!(1..=ASK_MAX).contains(&ask));
                return;
            }
        };
        assert_eq!(listing.quantity(), quantity);
        assert!((1..=quantity).contains(&listing.min_fill()));
        self.book.insert(listing).expect("a new key is inserted");
        self.model.push(Model {
            listing,
            open: quantity,
            filled: 0,
            released: 0,
            cancelled: false,
        });
    }

    fn order(
        &mut self,
        buyer: u8,
        quantity: Size,
        limit: Option<LimitChoice>,
        provider: Option<(Size, Size)>,
        instant: u64,
    ) {
        let span = u64::try_from(WINDOW_MICROS + 2 * DAY_MICROS).expect("positive");
        let offset = i64::try_from(instant % span).expect("within i64");
        let at = Timestamp::from_micros(OPEN_MICROS - DAY_MICROS + offset);
        let limit = match limit {
            None => Limit::PricePer1m(ASK_MAX),
            Some(LimitChoice::Price(price)) => {
                Limit::PricePer1m(price.get(ASK_MAX) % (ASK_MAX + 1))
            }
            Some(LimitChoice::Total(total)) => Limit::MaxTotal(total % AMOUNT_MAX + 1),
        };
        let provider = provider.and_then(|(price, available)| {
            ProviderFill::new(price.get(ASK_MAX), available.get(QUANTITY_MAX)).ok()
        });
        let Ok(order) = BuyOrder::new(org(buyer), quantity.get(QUANTITY_MAX), limit, provider)
        else {
            return;
        };
        let linked = self.linked();
        let preview = self.book.preview(&order, at, &linked);
        let before = self.book.total_quantity();
        let result = self.book.match_order(&order, at, &linked);
        assert_eq!(preview, result, "a preview is what you get");
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(MatchError::MarketNotOpen { .. }) => {
                assert!(at < Timestamp::from_micros(OPEN_MICROS));
                assert_eq!(self.book.total_quantity(), before);
                return;
            }
            Err(MatchError::MarketClosed { .. }) => {
                assert!(at >= Timestamp::from_micros(OPEN_MICROS + WINDOW_MICROS));
                assert_eq!(self.book.total_quantity(), before);
                return;
            }
            Err(error) => panic!("order refused: {error} ({order:?} at {at:?})"),
        };
        self.check_outcome(&order, &outcome, &linked);
    }

    fn check_outcome(
        &mut self,
        order: &BuyOrder,
        outcome: &MatchOutcome,
        linked: &dyn Fn(OrgId, OrgId) -> bool,
    ) {
        assert_eq!(
            outcome.filled() + outcome.unfilled(),
            order.quantity(),
            "filled + unfilled = ordered"
        );
        let mut last: Option<(u64, u64)> = None;
        for fill in outcome.fills() {
            let index = self
                .model
                .iter()
                .position(|m| m.listing.id() == fill.listing())
                .expect("a fill from a known listing");
            let model = &mut self.model[index];
            assert!(!model.cancelled, "a cancelled listing filled: {model:?}");
            assert!(
                fill.quantity() >= 1 && fill.quantity() <= model.open,
                "{fill:?} of {model:?}"
            );
            assert!(
                fill.quantity() >= model.listing.min_fill() || fill.quantity() == model.open,
                "{fill:?} below the minimum fill of {model:?}"
            );
            assert_eq!(fill.seller(), model.listing.seller());
            assert_ne!(fill.seller(), order.buyer(), "self-trade");
            assert!(
                !linked(order.buyer(), fill.seller()),
                "trade between linked orgs"
            );
            assert!(fill.price_per_1m_micro_cr() <= model.listing.ask_per_1m_micro_cr());
            if let Limit::PricePer1m(limit) = order.limit() {
                assert!(
                    fill.price_per_1m_micro_cr() <= limit,
                    "{fill:?} above {limit}"
                );
            }
            assert!(fill.fee_micro_cr() <= fill.cost_micro_cr());
            assert_eq!(
                fill.buyer_pays_micro_cr(),
                fill.seller_receives_micro_cr() + fill.fee_micro_cr(),
                "CR is conserved in {fill:?}"
            );
            let rank = (fill.price_per_1m_micro_cr(), model.listing.seq());
            assert!(
                last.is_none_or(|l| l < rank),
                "price-time priority: {rank:?} after {last:?}"
            );
            last = Some(rank);
            model.open -= fill.quantity();
            model.filled += fill.quantity();
        }
        if let Limit::MaxTotal(total) = order.limit() {
            assert!(
                outcome.buyer_pays_micro_cr() <= total,
                "{outcome:?} over {total}"
            );
        }
        if let Some(sale) = outcome.provider_sale() {
            let offer = order.provider_fill().expect("a sale only when allowed");
            assert!(sale.quantity() >= 1 && sale.quantity() <= offer.available());
            assert!(outcome.stop_reason().book_exhausted_for_order());
        }
        if outcome.stop_reason() == StopReason::Filled {
            assert_eq!(outcome.filled_from_book(), order.quantity());
        }
    }

    /// Every listing accounted for: listed = open + filled + released, and the book agrees.
    fn check_book(&self) {
        let mut open_total = 0;
        let mut open_count = 0;
        for model in &self.model {
            assert_eq!(
                model.listing.quantity(),
                model.open + model.filled + model.released,
                "quantity conserved: {model:?}"
            );
            let in_book = self.book.get(model.listing.key());
            if model.open > 0 {
                let listing = in_book.expect("an open listing is in the book");
                assert_eq!(listing.id(), model.listing.id());
                assert_eq!(listing.quantity(), model.open, "{model:?}");
                open_count += 1;
            } else {
                assert!(in_book.is_none(), "{model:?} is still in the book");
            }
            open_total += model.open;
        }
        assert_eq!(self.book.total_quantity(), open_total);
        assert_eq!(self.book.len(), open_count);
        self.book.check_consistency().expect("a consistent book");
    }
}
