//! What matching an order produced. These values are made only by the book, so settlement can
//! rely on them: a fill's cost is `⌈quantity × price / 10⁶⌉`, its fee `⌈cost × rate⌉ ≤ cost`.

use credex_ledger::OrgId;
use serde::Serialize;

use crate::types::{FeePayer, ListingId};

/// Tokens bought from one listing at one price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fill {
    pub(crate) listing: ListingId,
    pub(crate) seller: OrgId,
    pub(crate) quantity: u64,
    pub(crate) price_per_1m_micro_cr: u64,
    pub(crate) cost_micro_cr: u64,
    pub(crate) fee_micro_cr: u64,
    pub(crate) fee_payer: FeePayer,
}

impl Fill {
    pub fn listing(&self) -> ListingId {
        self.listing
    }
    pub fn seller(&self) -> OrgId {
        self.seller
    }
    /// Tokens moved from the seller's `escrow` to the buyer's `acquired`.
    pub fn quantity(&self) -> u64 {
        self.quantity
    }
    /// The listing's decayed price at the instant of the match.
    pub fn price_per_1m_micro_cr(&self) -> u64 {
        self.price_per_1m_micro_cr
    }
    /// `⌈quantity × price / 10⁶⌉`: what moves from the buyer's wallet to the seller's.
    pub fn cost_micro_cr(&self) -> u64 {
        self.cost_micro_cr
    }
    /// `⌈cost × fee rate⌉`: what moves from the payer's wallet to `fees`; never above the cost.
    pub fn fee_micro_cr(&self) -> u64 {
        self.fee_micro_cr
    }
    pub fn fee_payer(&self) -> FeePayer {
        self.fee_payer
    }
    /// What leaves the buyer's wallet: the cost, plus the fee when the buyer pays it.
    pub fn buyer_pays_micro_cr(&self) -> u64 {
        match self.fee_payer {
            FeePayer::Buyer => self.cost_micro_cr + self.fee_micro_cr,
            FeePayer::Seller => self.cost_micro_cr,
        }
    }
    /// What the seller's wallet gains in all: the cost, less the fee when the seller pays it.
    pub fn seller_receives_micro_cr(&self) -> u64 {
        match self.fee_payer {
            FeePayer::Buyer => self.cost_micro_cr,
            FeePayer::Seller => self.cost_micro_cr - self.fee_micro_cr,
        }
    }
}

/// Tokens sold by the provider (emergency credits) at its list price, without a market fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProviderSale {
    pub(crate) quantity: u64,
    pub(crate) price_per_1m_micro_cr: u64,
    pub(crate) cost_micro_cr: u64,
}

impl ProviderSale {
    pub fn quantity(&self) -> u64 {
        self.quantity
    }
    pub fn price_per_1m_micro_cr(&self) -> u64 {
        self.price_per_1m_micro_cr
    }
    /// `⌈quantity × list price / 10⁶⌉`: what moves from the buyer's wallet to `spent`.
    pub fn cost_micro_cr(&self) -> u64 {
        self.cost_micro_cr
    }
}

/// Why matching against the listings stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The order's whole quantity was filled from listings.
    Filled,
    /// The next listing the order could take is priced above its limit.
    LimitReached,
    /// The order's maximum total does not afford one more token at the next price.
    BudgetExhausted,
    /// No listing is left that the order could take (the book is empty, or what is left belongs
    /// to the buyer's own or linked orgs, or asks for a larger minimum fill).
    BookExhausted,
    /// The order took [`crate::FILLS_MAX`] fills; cheaper listings may remain.
    FillLimit,
    /// The order passed over [`crate::SKIPS_MAX`] listings; cheaper listings may remain.
    ScanLimit,
}

impl StopReason {
    /// Whether every listing the order could still take is gone or priced beyond its reach, so
    /// that a provider sale does not jump ahead of a cheaper listing.
    pub fn book_exhausted_for_order(self) -> bool {
        matches!(
            self,
            Self::LimitReached | Self::BudgetExhausted | Self::BookExhausted
        )
    }
}

/// The result of matching one buy order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchOutcome {
    pub(crate) fills: Vec<Fill>,
    pub(crate) provider_sale: Option<ProviderSale>,
    pub(crate) unfilled: u64,
    pub(crate) stop_reason: StopReason,
}

impl Default for MatchOutcome {
    /// An empty outcome, for [`crate::OrderBook::match_order_into`] to fill.
    fn default() -> Self {
        Self {
            fills: Vec::new(),
            provider_sale: None,
            unfilled: 0,
            stop_reason: StopReason::BookExhausted,
        }
    }
}

impl MatchOutcome {
    /// Fills from listings, in the order they were taken (price, then age).
    pub fn fills(&self) -> &[Fill] {
        &self.fills
    }
    pub fn provider_sale(&self) -> Option<&ProviderSale> {
        self.provider_sale.as_ref()
    }
    /// What neither the book nor the provider filled; it is not kept (immediate-or-cancel).
    pub fn unfilled(&self) -> u64 {
        self.unfilled
    }
    pub fn stop_reason(&self) -> StopReason {
        self.stop_reason
    }
    /// Tokens bought from listings.
    pub fn filled_from_book(&self) -> u64 {
        self.fills.iter().map(|f| f.quantity).sum()
    }
    /// Tokens bought in all, from listings and from the provider.
    pub fn filled(&self) -> u64 {
        self.filled_from_book() + self.provider_sale.map_or(0, |s| s.quantity)
    }
    /// Everything that leaves the buyer's wallet: costs, buyer-paid fees, the provider sale.
    pub fn buyer_pays_micro_cr(&self) -> u64 {
        let book: u64 = self.fills.iter().map(Fill::buyer_pays_micro_cr).sum();
        book + self.provider_sale.map_or(0, |s| s.cost_micro_cr)
    }
    /// Fees to the `fees` account, whoever pays them.
    pub fn fees_micro_cr(&self) -> u64 {
        self.fills.iter().map(|f| f.fee_micro_cr).sum()
    }
}
