//! The market's domain types. Every field is private and every constructor validates, so a
//! value that exists is within the crate's bounds: the matching arithmetic can then never
//! overflow (see [`QUANTITY_MAX`] and [`ASK_MAX`]).

use std::fmt;

use credex_ledger::{IdError, OrgId, Timestamp, AMOUNT_MAX};
use credex_pricing::{DecayCurve, DecayWindow};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::arith::ONE_BILLIONTHS;

/// The most tokens one listing or one order may carry: 10¹² (a million million tokens).
pub const QUANTITY_MAX: u64 = 1_000_000_000_000;
/// The highest ask or provider list price, in µCR per 1M tokens: 10¹² µCR, i.e. 1,000,000 CR
/// per 1M tokens. With [`QUANTITY_MAX`] it bounds any one cost by 10¹⁸ µCR, below the ledger's
/// largest amount (about 9.2 × 10¹⁸), so a cost, a fee, and their sum always fit a transfer.
pub const ASK_MAX: u64 = 1_000_000_000_000;
/// The most listings one book holds.
pub const LISTINGS_MAX: usize = 1_000_000;
/// The most fills one order may take: each fill settles as up to 3 transfers, so an order
/// settles in at most `3 × 2,000 + 3` transfers, within one ledger request (8,190).
pub const FILLS_MAX: usize = 2_000;
/// The most listings one order may pass over (its own org's, a linked org's, or listings whose
/// minimum fill it cannot meet) before it stops with [`crate::StopReason::ScanLimit`].
pub const SKIPS_MAX: usize = 10_000;
/// The most price levels [`crate::OrderBook::depth`] returns.
pub const DEPTH_LEVELS_MAX: usize = 1_000;

/// Identifies a listing: a non-nil, non-max UUID, like the ledger's ids. The service's store
/// keeps ids unique; the book carries them into fills and checks them on amend and cancel.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Uuid", into = "Uuid")]
pub struct ListingId(Uuid);

impl ListingId {
    /// Accepts any UUID but the nil and the max one.
    pub fn new(uuid: Uuid) -> Result<Self, IdError> {
        if uuid.is_nil() {
            Err(IdError::Nil)
        } else if uuid.is_max() {
            Err(IdError::Max)
        } else {
            Ok(Self(uuid))
        }
    }

    /// Parses the hyphenated or simple textual form of a UUID.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        Self::new(Uuid::parse_str(text).map_err(|_| IdError::Malformed)?)
    }

    pub fn as_uuid(self) -> Uuid {
        self.0
    }
}

impl TryFrom<Uuid> for ListingId {
    type Error = IdError;
    fn try_from(uuid: Uuid) -> Result<Self, IdError> {
        Self::new(uuid)
    }
}

impl From<ListingId> for Uuid {
    fn from(id: ListingId) -> Uuid {
        id.0
    }
}

impl fmt::Display for ListingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ListingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ListingId({})", self.0)
    }
}

/// Where a listing stands in its book: its base ask, then its arrival sequence. Unique in a book,
/// and the order of the book at every instant (equal decayed prices aside, which go by `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListingKey {
    pub ask_per_1m_micro_cr: u64,
    pub seq: u64,
}

/// Why a listing cannot exist as described.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ListingError {
    #[error("a listing's quantity must be 1 to {QUANTITY_MAX} tokens")]
    QuantityOutOfRange,
    #[error("a minimum fill must be at least 1 token and at most the listing's quantity")]
    MinFillOutOfRange,
    #[error("an ask must be 1 to {ASK_MAX} µCR per 1M tokens")]
    AskOutOfRange,
}

/// What a seller lists, before validation. `min_fill: None` means any fill of 1 token or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingFields {
    pub id: ListingId,
    pub seller: OrgId,
    /// Tokens still for sale (tokens in the seller's `escrow` for this listing).
    pub quantity: u64,
    pub min_fill: Option<u64>,
    pub ask_per_1m_micro_cr: u64,
    /// Arrival order: the book ranks equal prices by it, oldest (smallest) first.
    pub seq: u64,
    pub created_at: Timestamp,
}

/// A listing: a quantity of one market's tokens offered at a base ask per 1M tokens.
///
/// Its price at `t` is `ask × D(t)`; every fill from it is at least `min_fill` tokens, unless the
/// fill takes everything the listing has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Listing {
    id: ListingId,
    seller: OrgId,
    quantity: u64,
    min_fill: u64,
    ask_per_1m_micro_cr: u64,
    seq: u64,
    created_at: Timestamp,
}

impl Listing {
    pub fn new(fields: ListingFields) -> Result<Self, ListingError> {
        let ListingFields {
            id,
            seller,
            quantity,
            min_fill,
            ask_per_1m_micro_cr,
            seq,
            created_at,
        } = fields;
        if !(1..=QUANTITY_MAX).contains(&quantity) {
            return Err(ListingError::QuantityOutOfRange);
        }
        let min_fill = min_fill.unwrap_or(1);
        if !(1..=quantity).contains(&min_fill) {
            return Err(ListingError::MinFillOutOfRange);
        }
        if !(1..=ASK_MAX).contains(&ask_per_1m_micro_cr) {
            return Err(ListingError::AskOutOfRange);
        }
        Ok(Self {
            id,
            seller,
            quantity,
            min_fill,
            ask_per_1m_micro_cr,
            seq,
            created_at,
        })
    }

    pub fn id(&self) -> ListingId {
        self.id
    }
    pub fn seller(&self) -> OrgId {
        self.seller
    }
    /// Tokens still for sale.
    pub fn quantity(&self) -> u64 {
        self.quantity
    }
    /// The smallest fill this listing accepts (1 when it set none), unless a fill takes all of
    /// [`Listing::quantity`].
    pub fn min_fill(&self) -> u64 {
        self.min_fill
    }
    pub fn ask_per_1m_micro_cr(&self) -> u64 {
        self.ask_per_1m_micro_cr
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }
    /// The listing's place in its book: what amend and cancel name.
    pub fn key(&self) -> ListingKey {
        ListingKey {
            ask_per_1m_micro_cr: self.ask_per_1m_micro_cr,
            seq: self.seq,
        }
    }

    pub(crate) fn with_quantity(mut self, quantity: u64) -> Self {
        self.quantity = quantity;
        self
    }
}

impl TryFrom<ListingFields> for Listing {
    type Error = ListingError;
    fn try_from(fields: ListingFields) -> Result<Self, ListingError> {
        Self::new(fields)
    }
}

/// How much a buyer is willing to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The highest decayed price per 1M tokens the buyer accepts (fees not included).
    PricePer1m(u64),
    /// The most µCR the buyer spends on the whole order: costs, the buyer's fees when the
    /// buyer pays them, and any provider sale.
    MaxTotal(u64),
}

/// The provider's offer to fill what the book could not: emergency credits at a list price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProviderFill {
    list_price_per_1m_micro_cr: u64,
    available: u64,
}

impl ProviderFill {
    /// `list_price_per_1m_micro_cr`: 1 to [`ASK_MAX`]; `available`: the most tokens the provider
    /// sells for this order (any number; zero sells nothing).
    pub fn new(list_price_per_1m_micro_cr: u64, available: u64) -> Result<Self, OrderError> {
        if !(1..=ASK_MAX).contains(&list_price_per_1m_micro_cr) {
            return Err(OrderError::ListPriceOutOfRange);
        }
        Ok(Self {
            list_price_per_1m_micro_cr,
            available,
        })
    }

    pub fn list_price_per_1m_micro_cr(&self) -> u64 {
        self.list_price_per_1m_micro_cr
    }
    pub fn available(&self) -> u64 {
        self.available
    }
}

/// Why a buy order cannot exist as described.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("an order's quantity must be 1 to {QUANTITY_MAX} tokens")]
    QuantityOutOfRange,
    #[error("a maximum total must be 1 to {AMOUNT_MAX} µCR")]
    MaxTotalOutOfRange,
    #[error("a provider list price must be 1 to {ASK_MAX} µCR per 1M tokens")]
    ListPriceOutOfRange,
}

/// An immediate-or-cancel buy order: what the book cannot fill now (and the provider does not)
/// is reported as unfilled, never kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BuyOrder {
    buyer: OrgId,
    quantity: u64,
    limit: Limit,
    provider_fill: Option<ProviderFill>,
}

impl BuyOrder {
    /// `provider_fill: None` means the buyer does not allow emergency credits.
    pub fn new(
        buyer: OrgId,
        quantity: u64,
        limit: Limit,
        provider_fill: Option<ProviderFill>,
    ) -> Result<Self, OrderError> {
        if !(1..=QUANTITY_MAX).contains(&quantity) {
            return Err(OrderError::QuantityOutOfRange);
        }
        if let Limit::MaxTotal(total) = limit {
            if !(1..=AMOUNT_MAX).contains(&total) {
                return Err(OrderError::MaxTotalOutOfRange);
            }
        }
        Ok(Self {
            buyer,
            quantity,
            limit,
            provider_fill,
        })
    }

    pub fn buyer(&self) -> OrgId {
        self.buyer
    }
    pub fn quantity(&self) -> u64 {
        self.quantity
    }
    pub fn limit(&self) -> Limit {
        self.limit
    }
    pub fn provider_fill(&self) -> Option<ProviderFill> {
        self.provider_fill
    }
}

/// Who pays a market fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeePayer {
    /// The fee is deducted from the seller's proceeds (the spec's default).
    Seller,
    /// The fee is added to what the buyer pays.
    Buyer,
}

/// Why a fee rate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeeError {
    #[error("a fee rate must be at least 0 and below 1 (got {rate}); 0.03 is 3%")]
    RateOutOfRange { rate: Decimal },
    #[error("a fee rate has at most 9 decimal places (got {rate})")]
    RateTooPrecise { rate: Decimal },
}

/// A market's fee: a rate in `[0, 1)` with at most 9 decimal places, and who pays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fee {
    rate: Decimal,
    rate_billionths: u32,
    payer: FeePayer,
}

impl Fee {
    pub fn new(rate: Decimal, payer: FeePayer) -> Result<Self, FeeError> {
        if rate < Decimal::ZERO || rate >= Decimal::ONE {
            return Err(FeeError::RateOutOfRange { rate });
        }
        let rate = rate.normalize();
        let too_precise = || FeeError::RateTooPrecise { rate };
        if rate.scale() > 9 {
            return Err(too_precise());
        }
        let mantissa = u64::try_from(rate.mantissa()).map_err(|_| too_precise())?;
        let billionths = mantissa
            .checked_mul(10_u64.pow(9 - rate.scale()))
            .filter(|b| *b < ONE_BILLIONTHS)
            .and_then(|b| u32::try_from(b).ok())
            .ok_or_else(too_precise)?;
        Ok(Self {
            rate,
            rate_billionths: billionths,
            payer,
        })
    }

    /// The spec's default: 3%, paid by the seller.
    pub fn standard() -> Self {
        Self {
            rate: Decimal::new(3, 2),
            rate_billionths: 30_000_000,
            payer: FeePayer::Seller,
        }
    }

    pub fn rate(&self) -> Decimal {
        self.rate
    }
    pub fn payer(&self) -> FeePayer {
        self.payer
    }
    pub(crate) fn rate_billionths(&self) -> u32 {
        self.rate_billionths
    }
    /// The rate the buyer pays on top of a cost: the fee rate when the buyer pays, else zero.
    pub(crate) fn buyer_rate_billionths(&self) -> u32 {
        match self.payer {
            FeePayer::Buyer => self.rate_billionths,
            FeePayer::Seller => 0,
        }
    }
}

impl Default for Fee {
    fn default() -> Self {
        Self::standard()
    }
}

/// One market's settings as the book needs them: its decay curve over its window, and its fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarketRules {
    curve: DecayCurve,
    window: DecayWindow,
    fee: Fee,
}

impl MarketRules {
    /// Orders match from the window's opening (factor 1) until the cycle ends (excluded).
    pub fn new(curve: DecayCurve, window: DecayWindow, fee: Fee) -> Self {
        Self { curve, window, fee }
    }

    pub fn curve(&self) -> DecayCurve {
        self.curve
    }
    pub fn window(&self) -> DecayWindow {
        self.window
    }
    pub fn fee(&self) -> Fee {
        self.fee
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> OrgId {
        OrgId::new(Uuid::from_u128(7)).expect("valid")
    }

    #[test]
    fn listings_validate() {
        let fields = |quantity, min_fill, ask| ListingFields {
            id: ListingId::new(Uuid::from_u128(1)).expect("valid"),
            seller: org(),
            quantity,
            min_fill,
            ask_per_1m_micro_cr: ask,
            seq: 1,
            created_at: Timestamp::EPOCH,
        };
        let check = |f: ListingFields, expected: Result<u64, ListingError>| {
            assert_eq!(Listing::new(f).map(|l| l.min_fill()), expected, "{f:?}");
        };
        check(fields(10, None, 5), Ok(1));
        check(fields(10, Some(10), 5), Ok(10));
        check(fields(0, None, 5), Err(ListingError::QuantityOutOfRange));
        check(
            fields(QUANTITY_MAX + 1, None, 5),
            Err(ListingError::QuantityOutOfRange),
        );
        check(fields(10, Some(0), 5), Err(ListingError::MinFillOutOfRange));
        check(
            fields(10, Some(11), 5),
            Err(ListingError::MinFillOutOfRange),
        );
        check(fields(10, None, 0), Err(ListingError::AskOutOfRange));
        check(
            fields(10, None, ASK_MAX + 1),
            Err(ListingError::AskOutOfRange),
        );
        assert_eq!(ListingId::new(Uuid::nil()), Err(IdError::Nil));
        assert_eq!(ListingId::new(Uuid::max()), Err(IdError::Max));
    }

    #[test]
    fn orders_validate() {
        let check = |quantity, limit, expected: Result<(), OrderError>| {
            assert_eq!(
                BuyOrder::new(org(), quantity, limit, None).map(|_| ()),
                expected
            );
        };
        check(1, Limit::PricePer1m(0), Ok(()));
        check(0, Limit::PricePer1m(5), Err(OrderError::QuantityOutOfRange));
        check(1, Limit::MaxTotal(0), Err(OrderError::MaxTotalOutOfRange));
        check(
            1,
            Limit::MaxTotal(AMOUNT_MAX + 1),
            Err(OrderError::MaxTotalOutOfRange),
        );
        assert_eq!(
            ProviderFill::new(0, 5),
            Err(OrderError::ListPriceOutOfRange)
        );
    }

    #[test]
    fn fee_rates_validate() {
        let check = |rate: &str, expected: Result<u32, ()>| {
            let rate: Decimal = rate.parse().expect("a decimal");
            let got = Fee::new(rate, FeePayer::Seller)
                .map(|f| f.rate_billionths())
                .map_err(|_| ());
            assert_eq!(got, expected, "{rate}");
        };
        check("0.03", Ok(30_000_000));
        check("0", Ok(0));
        check("0.999999999", Ok(999_999_999));
        check("0.0000000001", Err(()));
        check("1", Err(()));
        check("-0.01", Err(()));
        assert_eq!(
            Fee::standard(),
            Fee::new(Decimal::new(3, 2), FeePayer::Seller).expect("ok")
        );
    }
}
