//! Builders shared by the integration tests.
#![allow(dead_code)]

use credex_ledger::{OrgId, Timestamp};
use credex_matching::{
    BuyOrder, Fee, Limit, Listing, ListingFields, ListingId, ListingKey, MarketRules, ProviderFill,
};
use credex_pricing::{DecayCurve, DecayWindow};
use rust_decimal::Decimal;
use uuid::Uuid;

/// The listing window opens here (µs since the epoch) and lasts a week.
pub const OPEN_MICROS: i64 = 1_800_000_000_000_000;
pub const WINDOW_MICROS: i64 = 7 * 24 * 3_600 * 1_000_000;

pub fn org(n: u128) -> OrgId {
    OrgId::new(Uuid::from_u128(0x0a00 + n)).expect("a valid org id")
}

pub fn listing_id(n: u128) -> ListingId {
    ListingId::new(Uuid::from_u128(0x1_0000 + n)).expect("a valid listing id")
}

pub fn window() -> DecayWindow {
    DecayWindow::new(
        Timestamp::from_micros(OPEN_MICROS),
        Timestamp::from_micros(OPEN_MICROS + WINDOW_MICROS),
    )
    .expect("a valid window")
}

/// The instant `numerator / denominator` of the way through the window.
pub fn at(numerator: i64, denominator: i64) -> Timestamp {
    Timestamp::from_micros(OPEN_MICROS + WINDOW_MICROS / denominator * numerator)
}

pub fn linear(floor: &str) -> DecayCurve {
    DecayCurve::linear(floor.parse::<Decimal>().expect("a decimal")).expect("a valid curve")
}

pub fn rules(curve: DecayCurve, fee: Fee) -> MarketRules {
    MarketRules::new(curve, window(), fee)
}

/// Linear decay to 0, the standard fee (3%, seller pays).
pub fn standard_rules() -> MarketRules {
    rules(linear("0"), Fee::standard())
}

pub fn listing(
    id: u128,
    seller: u128,
    quantity: u64,
    min_fill: Option<u64>,
    ask: u64,
    seq: u64,
) -> Listing {
    Listing::new(ListingFields {
        id: listing_id(id),
        seller: org(seller),
        quantity,
        min_fill,
        ask_per_1m_micro_cr: ask,
        seq,
        created_at: Timestamp::from_micros(OPEN_MICROS),
    })
    .expect("a valid listing")
}

pub fn order(buyer: u128, quantity: u64, limit: Limit) -> BuyOrder {
    BuyOrder::new(org(buyer), quantity, limit, None).expect("a valid order")
}

pub fn order_with_provider(
    buyer: u128,
    quantity: u64,
    limit: Limit,
    list_price: u64,
    available: u64,
) -> BuyOrder {
    let provider = ProviderFill::new(list_price, available).expect("a valid offer");
    BuyOrder::new(org(buyer), quantity, limit, Some(provider)).expect("a valid order")
}

pub fn key(ask: u64, seq: u64) -> ListingKey {
    ListingKey {
        ask_per_1m_micro_cr: ask,
        seq,
    }
}

pub fn unlinked(_: OrgId, _: OrgId) -> bool {
    false
}
