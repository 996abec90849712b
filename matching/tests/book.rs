//! The book's behaviour on small, hand-checked cases: one `check` per case.

mod common;

use common::*;
use credex_ledger::{OrgId, Timestamp};
use credex_matching::{
    BookError, BuyOrder, DepthLevel, Fee, FeePayer, Limit, Listing, MatchError, OrderBook, Quote,
    StopReason,
};
use rust_decimal::Decimal;

/// What a fill should be: (listing number, quantity, price per 1M, cost, fee).
type Expected = (u128, u64, u64, u64, u64);

struct Case<'a> {
    book: OrderBook,
    order: BuyOrder,
    at: Timestamp,
    linked: &'a dyn Fn(OrgId, OrgId) -> bool,
}

fn book(rules: credex_matching::MarketRules, listings: &[Listing]) -> OrderBook {
    let mut book = OrderBook::new(rules);
    for listing in listings {
        book.insert(*listing).expect("inserted");
    }
    book
}

/// Matches the case's order and compares fills, stop reason, provider sale and remainder.
fn check(
    mut case: Case<'_>,
    fills: &[Expected],
    stop: StopReason,
    provider: Option<(u64, u64)>,
    unfilled: u64,
) -> OrderBook {
    let preview = case
        .book
        .preview(&case.order, case.at, case.linked)
        .expect("previewed");
    let outcome = case
        .book
        .match_order(&case.order, case.at, case.linked)
        .expect("matched");
    assert_eq!(preview, outcome, "a preview is what the order gets");
    let got: Vec<Expected> = outcome
        .fills()
        .iter()
        .map(|f| {
            let n = (1..=64)
                .find(|n| listing_id(*n) == f.listing())
                .expect("a known listing");
            (
                n,
                f.quantity(),
                f.price_per_1m_micro_cr(),
                f.cost_micro_cr(),
                f.fee_micro_cr(),
            )
        })
        .collect();
    assert_eq!(got, fills, "fills");
    assert_eq!(outcome.stop_reason(), stop, "stop reason");
    assert_eq!(
        outcome
            .provider_sale()
            .map(|s| (s.quantity(), s.cost_micro_cr())),
        provider,
        "provider sale"
    );
    assert_eq!(outcome.unfilled(), unfilled, "unfilled");
    assert_eq!(
        outcome.filled() + outcome.unfilled(),
        case.order.quantity(),
        "every token is filled or unfilled"
    );
    case.book
}

const START: (i64, i64) = (0, 1);

fn start() -> Timestamp {
    at(START.0, START.1)
}

#[test]
fn cheapest_first_then_oldest() {
    let listings = [
        listing(1, 1, 100, None, 2_000_000, 1),
        listing(2, 2, 100, None, 1_000_000, 2),
        listing(3, 3, 100, None, 1_000_000, 3),
    ];
    let case = Case {
        book: book(standard_rules(), &listings),
        order: order(9, 250, Limit::PricePer1m(u64::MAX)),
        at: start(),
        linked: &unlinked,
    };
    // 100 tokens at 1 CR per 1M cost 100 µCR; 3% of it is 3 µCR.
    let book = check(
        case,
        &[
            (2, 100, 1_000_000, 100, 3),
            (3, 100, 1_000_000, 100, 3),
            (1, 50, 2_000_000, 100, 3),
        ],
        StopReason::Filled,
        None,
        0,
    );
    assert_eq!(book.get(key(2_000_000, 1)).map(|l| l.quantity()), Some(50));
    assert_eq!(book.get(key(1_000_000, 2)), None);
    assert_eq!(book.len(), 1);
}

#[test]
fn decay_scales_every_ask_and_equal_prices_go_by_age() {
    // Halfway through a linear window to 0 the factor is exactly 0.5: asks 1_000_001 and
    // 1_000_000 both decay to 500_000, so the older listing (the dearer ask) goes first.
    let listings = [
        listing(1, 1, 10, None, 1_000_001, 1),
        listing(2, 2, 10, None, 1_000_000, 2),
        listing(3, 3, 10, None, 999_998, 3),
    ];
    let case = Case {
        book: book(standard_rules(), &listings),
        order: order(9, 30, Limit::PricePer1m(500_000)),
        at: at(1, 2),
        linked: &unlinked,
    };
    check(
        case,
        &[
            (3, 10, 499_999, 5, 1),
            (1, 10, 500_000, 5, 1),
            (2, 10, 500_000, 5, 1),
        ],
        StopReason::Filled,
        None,
        0,
    );
}

#[test]
fn minimum_fills_are_respected() {
    let listings = [
        listing(1, 1, 1_000, Some(600), 1_000_000, 1),
        listing(2, 2, 1_000, None, 1_000_000, 2),
    ];
    // 500 tokens cannot meet listing 1's minimum of 600: it is passed over, not cancelled.
    let case = Case {
        book: book(standard_rules(), &listings),
        order: order(9, 500, Limit::PricePer1m(u64::MAX)),
        at: start(),
        linked: &unlinked,
    };
    let book = check(
        case,
        &[(2, 500, 1_000_000, 500, 15)],
        StopReason::Filled,
        None,
        0,
    );
    assert_eq!(
        book.get(key(1_000_000, 1)).map(|l| l.quantity()),
        Some(1_000)
    );
    // 700 tokens meet it; the 300 left in listing 1 are below its minimum, yet a fill that
    // takes all that is left is allowed.
    let case = Case {
        book,
        order: order(9, 700, Limit::PricePer1m(u64::MAX)),
        at: start(),
        linked: &unlinked,
    };
    let book = check(
        case,
        &[(1, 700, 1_000_000, 700, 21)],
        StopReason::Filled,
        None,
        0,
    );
    let case = Case {
        book,
        order: order(9, 400, Limit::PricePer1m(u64::MAX)),
        at: start(),
        linked: &unlinked,
    };
    check(
        case,
        &[(1, 300, 1_000_000, 300, 9), (2, 100, 1_000_000, 100, 3)],
        StopReason::Filled,
        None,
        0,
    );
}

#[test]
fn own_and_linked_listings_are_skipped_not_cancelled() {
    let listings = [
        listing(1, 9, 100, None, 1_000_000, 1),
        listing(2, 8, 100, None, 1_000_000, 2),
        listing(3, 3, 100, None, 2_000_000, 3),
    ];
    let linked = |a: OrgId, b: OrgId| {
        let group = [org(8), org(9)];
        group.contains(&a) && group.contains(&b)
    };
    let case = Case {
        book: book(standard_rules(), &listings),
        order: order(9, 300, Limit::PricePer1m(u64::MAX)),
        at: start(),
        linked: &linked,
    };
    let book = check(
        case,
        &[(3, 100, 2_000_000, 200, 6)],
        StopReason::BookExhausted,
        None,
        200,
    );
    assert_eq!(book.len(), 2);
    assert_eq!(book.total_quantity(), 200);
}

#[test]
fn a_price_limit_is_never_exceeded() {
    let listings = [
        listing(1, 1, 100, None, 1_000_000, 1),
        listing(2, 2, 100, None, 1_000_001, 2),
    ];
    let case = Case {
        book: book(standard_rules(), &listings),
        order: order(9, 200, Limit::PricePer1m(1_000_000)),
        at: start(),
        linked: &unlinked,
    };
    check(
        case,
        &[(1, 100, 1_000_000, 100, 3)],
        StopReason::LimitReached,
        None,
        100,
    );
}

#[test]
fn a_maximum_total_is_never_exceeded() {
    let listings = [listing(1, 1, 1_000_000, None, 3_000_000, 1)];
    // At 3 CR per 1M, 1,000 µCR buys ⌊1000 × 10⁶ / 3×10⁶⌋ = 333 tokens costing 999 µCR.
    let case = Case {
        book: book(standard_rules(), &listings),
        order: order(9, 1_000, Limit::MaxTotal(1_000)),
        at: start(),
        linked: &unlinked,
    };
    check(
        case,
        &[(1, 333, 3_000_000, 999, 30)],
        StopReason::BudgetExhausted,
        None,
        667,
    );
    // When the buyer pays the fee, the total covers it: cost c with c + ⌈0.03c⌉ ≤ 1000 is at
    // most 970, so 323 tokens (969 µCR, fee 30: 999 in all).
    let fee = Fee::new(Decimal::new(3, 2), FeePayer::Buyer).expect("a fee");
    let case = Case {
        book: book(rules(linear("0"), fee), &listings),
        order: order(9, 1_000, Limit::MaxTotal(1_000)),
        at: start(),
        linked: &unlinked,
    };
    check(
        case,
        &[(1, 323, 3_000_000, 969, 30)],
        StopReason::BudgetExhausted,
        None,
        677,
    );
}

#[test]
fn the_provider_fills_what_the_book_cannot() {
    let listings = [listing(1, 1, 100, None, 1_000_000, 1)];
    let case = Case {
        book: book(standard_rules(), &listings),
        order: order_with_provider(9, 1_000, Limit::PricePer1m(5_000_000), 4_000_000, 500),
        at: start(),
        linked: &unlinked,
    };
    // 500 tokens from the provider at 4 CR per 1M: 2,000 µCR; 400 stay unfilled.
    check(
        case,
        &[(1, 100, 1_000_000, 100, 3)],
        StopReason::BookExhausted,
        Some((500, 2_000)),
        400,
    );
    // Not above the buyer's limit.
    let case = Case {
        book: book(standard_rules(), &listings),
        order: order_with_provider(9, 1_000, Limit::PricePer1m(3_000_000), 4_000_000, 500),
        at: start(),
        linked: &unlinked,
    };
    check(
        case,
        &[(1, 100, 1_000_000, 100, 3)],
        StopReason::BookExhausted,
        None,
        900,
    );
    // Within the buyer's total: 100 µCR went to the book, 900 µCR buy 225 tokens at 4 CR.
    let case = Case {
        book: book(standard_rules(), &listings),
        order: order_with_provider(9, 1_000, Limit::MaxTotal(1_000), 4_000_000, 5_000),
        at: start(),
        linked: &unlinked,
    };
    check(
        case,
        &[(1, 100, 1_000_000, 100, 3)],
        StopReason::BookExhausted,
        Some((225, 900)),
        675,
    );
}

#[test]
fn amend_and_cancel() {
    let mut book = book(
        standard_rules(),
        &[
            listing(1, 1, 100, Some(50), 1_000_000, 1),
            listing(2, 2, 100, None, 1_000_000, 2),
        ],
    );
    let released = book
        .amend_down(key(1_000_000, 1), listing_id(1), 40)
        .expect("amended");
    assert_eq!(released.quantity, 60);
    assert_eq!(released.listing.quantity(), 40);
    assert_eq!(
        book.amend_down(key(1_000_000, 1), listing_id(1), 40),
        Err(BookError::NotADecrease {
            quantity: 40,
            requested: 40
        })
    );
    assert_eq!(
        book.amend_down(key(1_000_000, 1), listing_id(1), 0),
        Err(BookError::AmendToZero)
    );
    // The key must hold the listing named.
    assert_eq!(
        book.amend_down(key(1_000_000, 1), listing_id(7), 1),
        Err(BookError::NotFound)
    );
    assert_eq!(
        book.amend_down(key(5, 1), listing_id(1), 1),
        Err(BookError::NotFound)
    );
    // Amending keeps the listing's place: it still goes first.
    assert_eq!(
        book.best(start()).map(|b| b.listing.id()),
        Some(listing_id(1))
    );
    let cancelled = book
        .cancel(key(1_000_000, 1), listing_id(1))
        .expect("cancelled");
    assert_eq!(cancelled.quantity, 40);
    assert_eq!(
        book.cancel(key(1_000_000, 1), listing_id(1)),
        Err(BookError::NotFound)
    );
    assert_eq!(
        book.best(start()).map(|b| b.listing.id()),
        Some(listing_id(2))
    );
    assert_eq!(
        book.insert(listing(3, 3, 5, None, 1_000_000, 2)),
        Err(BookError::DuplicateKey {
            ask: 1_000_000,
            seq: 2
        })
    );
    // A listing arriving with an older sequence number (a rebuild out of order) takes its place.
    book.insert(listing(4, 4, 5, None, 1_000_000, 0))
        .expect("inserted");
    assert_eq!(
        book.best(start()).map(|b| b.listing.id()),
        Some(listing_id(4))
    );
}

#[test]
fn depth_best_and_quote() {
    let book = book(
        standard_rules(),
        &[
            listing(1, 1, 100, None, 1_000_001, 1),
            listing(2, 2, 200, None, 1_000_000, 2),
            listing(3, 3, 300, Some(300), 3_000_000, 3),
            listing(4, 4, 400, None, 4_000_000, 4),
        ],
    );
    let half = at(1, 2);
    assert_eq!(
        book.depth(2, half),
        vec![
            DepthLevel {
                price_per_1m_micro_cr: 500_000,
                quantity: 300,
                listings: 2
            },
            DepthLevel {
                price_per_1m_micro_cr: 1_500_000,
                quantity: 300,
                listings: 1
            },
        ]
    );
    assert_eq!(book.depth(10, half).len(), 3);
    let best = book.best(half).expect("a best listing");
    assert_eq!(
        (best.listing.id(), best.price_per_1m_micro_cr),
        (listing_id(1), 500_000)
    );
    // 500 tokens: 300 at 0.5 CR (150 µCR: 50 + 100), then listing 3's minimum of 300 cannot be
    // met by the 200 still wanted, so 200 come from listing 4 at 2 CR (400 µCR).
    assert_eq!(
        book.quote(500, half),
        Ok(Quote {
            quantity: 500,
            cost_micro_cr: 550,
            fee_micro_cr: 2 + 3 + 12,
            buyer_pays_micro_cr: 550,
        })
    );
    assert_eq!(book.quote(10_000, half).map(|q| q.quantity), Ok(1_000));
}

#[test]
fn orders_match_only_while_the_market_is_open() {
    let mut book = book(standard_rules(), &[listing(1, 1, 100, None, 1_000_000, 1)]);
    let order = order(9, 10, Limit::PricePer1m(u64::MAX));
    let before = Timestamp::from_micros(OPEN_MICROS - 1);
    let end = Timestamp::from_micros(OPEN_MICROS + WINDOW_MICROS);
    assert!(matches!(
        book.match_order(&order, before, &unlinked),
        Err(MatchError::MarketNotOpen { .. })
    ));
    assert!(matches!(
        book.match_order(&order, end, &unlinked),
        Err(MatchError::MarketClosed { .. })
    ));
    assert_eq!(book.total_quantity(), 100);
    let last = Timestamp::from_micros(OPEN_MICROS + WINDOW_MICROS - 1);
    let outcome = book.match_order(&order, last, &unlinked).expect("matched");
    // One microsecond before the end, a linear curve to 0 has fallen to 0 (the factor is rounded
    // down to billionths): the tokens go for nothing, and settlement moves no CR for them.
    let fill = outcome.fills()[0];
    assert_eq!(
        (
            fill.quantity(),
            fill.price_per_1m_micro_cr(),
            fill.cost_micro_cr()
        ),
        (10, 0, 0)
    );
}

#[test]
fn an_order_stops_at_its_fill_and_scan_limits() {
    use credex_matching::{FILLS_MAX, SKIPS_MAX};
    let count = u64::try_from(FILLS_MAX).expect("small") + 1;
    let mut book = OrderBook::new(standard_rules());
    for n in 0..count {
        book.insert(listing(1_000 + u128::from(n), 1, 1, None, 1_000_000, n))
            .expect("inserted");
    }
    // The provider never fills ahead of listings the order could still take.
    let order = order_with_provider(9, 3_000, Limit::PricePer1m(u64::MAX), 1_000_000, 5_000);
    let outcome = book
        .match_order(&order, start(), &unlinked)
        .expect("matched");
    assert_eq!(outcome.fills().len(), FILLS_MAX);
    assert_eq!(outcome.stop_reason(), StopReason::FillLimit);
    assert_eq!(outcome.provider_sale(), None);
    assert_eq!(outcome.unfilled(), 1_000);
    assert_eq!(book.len(), 1);
    book.check_consistency().expect("consistent");

    let mut book = OrderBook::new(standard_rules());
    let own = u64::try_from(SKIPS_MAX).expect("small");
    for n in 0..own {
        book.insert(listing(1_000 + u128::from(n), 9, 1, None, 1_000_000, n))
            .expect("inserted");
    }
    book.insert(listing(1, 1, 1, None, 1_000_000, own))
        .expect("inserted");
    let outcome = book
        .match_order(&order, start(), &unlinked)
        .expect("matched");
    assert_eq!(outcome.stop_reason(), StopReason::ScanLimit);
    assert_eq!((outcome.filled(), outcome.provider_sale()), (0, None));
    assert_eq!(book.len(), SKIPS_MAX + 1);
}

#[test]
fn fills_behind_a_skipped_listing_leave_tombstones_that_are_compacted() {
    let mut book = OrderBook::new(standard_rules());
    book.insert(listing(1, 9, 1, None, 1_000_000, 0))
        .expect("inserted");
    for n in 1..=50_u64 {
        book.insert(listing(u128::from(n) + 1, 1, 1, None, 1_000_000, n))
            .expect("inserted");
    }
    for n in 1..=49_u64 {
        let outcome = book
            .match_order(
                &order(9, 1, Limit::PricePer1m(u64::MAX)),
                start(),
                &unlinked,
            )
            .expect("matched");
        assert_eq!(outcome.fills()[0].listing(), listing_id(u128::from(n) + 1));
        book.check_consistency().expect("consistent");
        // Cancelling deep in the queue keeps the book consistent too.
        if n == 25 {
            book.cancel(key(1_000_000, 50), listing_id(51))
                .expect("cancelled");
            book.check_consistency().expect("consistent");
        }
    }
    // Only the buyer's own listing is left, untouched.
    assert_eq!(book.len(), 1);
    assert_eq!(book.get(key(1_000_000, 0)).map(|l| l.quantity()), Some(1));
}
