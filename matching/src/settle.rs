//! Settlement: a match outcome as the ledger's transfers.
//!
//! Each fill settles as one linked chain (spec, "Settlement"), in this order:
//!
//! 1. tokens `escrow(seller) → acquired(buyer)`, code `trade`, the fill's quantity;
//! 2. CR `wallet(buyer) → wallet(seller)`, code `trade`, the fill's cost;
//! 3. CR `wallet(payer) → fees`, code `fee`, the fill's fee, the payer being the seller or the
//!    buyer as the market says. When the seller pays, it pays out of the proceeds of step 2
//!    (the fee never exceeds the cost), so its wallet needs no balance beforehand.
//!
//! A provider sale (emergency credits) settles as tokens `treasury → acquired(buyer)` for as
//! much as the treasury holds, the rest `issuance → acquired(buyer)`, and CR
//! `wallet(buyer) → spent`, all with code `emergency_sale`. No market fee applies to it.
//!
//! Legs of zero amount (a fill priced at zero, a zero fee) are left out: the ledger moves only
//! positive amounts. Transfer ids come from the caller's `next_id`, in leg order, so the same
//! outcome and the same id source give the same transfers. Every leg of a fill carries the
//! metadata `{"listing_id":"…"}`.
//!
//! Conservation per fill, exactly: the buyer pays `cost (+ fee)`, the seller receives
//! `cost (− fee)`, `fees` receives `fee`; `buyer pays = seller receives + fee`.

use credex_ledger::{
    AccountId, Amount, AmountError, AssetCode, Metadata, MetadataError, Movement, OrgId,
    ShapeError, Transfer, TransferCode, TransferId,
};

use crate::outcome::{Fill, MatchOutcome, ProviderSale};
use crate::types::FeePayer;

/// The provider's accounts of one market, and its token asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketAccounts {
    /// The market's token asset, e.g. `TOK.pro.2026-11`.
    pub token: AssetCode,
    /// `fees` (CR).
    pub fees: AccountId,
    /// `spent` (CR): where emergency-sale payments go.
    pub spent: AccountId,
    /// `treasury` of the token asset.
    pub treasury: AccountId,
    /// `issuance` of the token asset.
    pub issuance: AccountId,
}

/// The buyer's accounts: `acquired` of the token asset and its CR `wallet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuyerAccounts {
    pub acquired: AccountId,
    pub wallet: AccountId,
}

/// A seller's accounts: `escrow` of the token asset and its CR `wallet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SellerAccounts {
    pub escrow: AccountId,
    pub wallet: AccountId,
}

/// Why an outcome could not be turned into transfers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettlementError {
    #[error("no accounts are known for seller {0}")]
    UnknownSeller(OrgId),
    #[error("a settlement leg is malformed: {0}")]
    Shape(#[from] ShapeError),
    #[error("a settlement leg's amount is out of range: {0}")]
    Amount(#[from] AmountError),
    #[error("a settlement leg's metadata is invalid: {0}")]
    Metadata(#[from] MetadataError),
}

/// One fill's linked chain (the last transfer closes it).
pub fn settle_fill(
    fill: &Fill,
    buyer: &BuyerAccounts,
    seller: &SellerAccounts,
    market: &MarketAccounts,
    mut next_id: impl FnMut() -> TransferId,
) -> Result<Vec<Transfer>, SettlementError> {
    let mut legs = Vec::with_capacity(3);
    fill_legs(fill, buyer, seller, market, &mut next_id, &mut legs)?;
    Ok(chain(legs))
}

/// A provider sale's linked chain. `treasury_available` is what the market's `treasury` can
/// give now; the rest of the tokens come from `issuance`.
pub fn settle_provider_sale(
    sale: &ProviderSale,
    buyer: &BuyerAccounts,
    market: &MarketAccounts,
    treasury_available: u64,
    mut next_id: impl FnMut() -> TransferId,
) -> Result<Vec<Transfer>, SettlementError> {
    let mut legs = Vec::with_capacity(3);
    provider_legs(
        sale,
        buyer,
        market,
        treasury_available,
        &mut next_id,
        &mut legs,
    )?;
    Ok(chain(legs))
}

/// A whole order as one linked chain: every fill's legs, then the provider sale's. The order
/// commits or fails as one, so the ledger never holds half of what the book applied. At most
/// `3 × FILLS_MAX + 3` transfers: one ledger request.
pub fn settle_order(
    outcome: &MatchOutcome,
    buyer: &BuyerAccounts,
    market: &MarketAccounts,
    sellers: impl Fn(OrgId) -> Option<SellerAccounts>,
    treasury_available: u64,
    mut next_id: impl FnMut() -> TransferId,
) -> Result<Vec<Transfer>, SettlementError> {
    let mut legs = Vec::with_capacity(3 * outcome.fills().len() + 3);
    for fill in outcome.fills() {
        let seller = sellers(fill.seller()).ok_or(SettlementError::UnknownSeller(fill.seller()))?;
        fill_legs(fill, buyer, &seller, market, &mut next_id, &mut legs)?;
    }
    if let Some(sale) = outcome.provider_sale() {
        provider_legs(
            sale,
            buyer,
            market,
            treasury_available,
            &mut next_id,
            &mut legs,
        )?;
    }
    Ok(chain(legs))
}

fn fill_legs(
    fill: &Fill,
    buyer: &BuyerAccounts,
    seller: &SellerAccounts,
    market: &MarketAccounts,
    next_id: &mut impl FnMut() -> TransferId,
    legs: &mut Vec<Transfer>,
) -> Result<(), SettlementError> {
    let metadata = Metadata::new(format!(r#"{{"listing_id":"{}"}}"#, fill.listing()))?;
    let mut leg = |debit, credit, asset: AssetCode, amount: u64, code| {
        if amount == 0 {
            return Ok::<(), SettlementError>(());
        }
        let movement = Movement::new(debit, credit, asset, Amount::new(amount)?, code)?;
        legs.push(Transfer::movement(next_id(), movement).with_metadata(metadata.clone()));
        Ok(())
    };
    leg(
        seller.escrow,
        buyer.acquired,
        market.token.clone(),
        fill.quantity(),
        TransferCode::Trade,
    )?;
    leg(
        buyer.wallet,
        seller.wallet,
        AssetCode::credit(),
        fill.cost_micro_cr(),
        TransferCode::Trade,
    )?;
    let payer = match fill.fee_payer() {
        FeePayer::Seller => seller.wallet,
        FeePayer::Buyer => buyer.wallet,
    };
    leg(
        payer,
        market.fees,
        AssetCode::credit(),
        fill.fee_micro_cr(),
        TransferCode::Fee,
    )
}

fn provider_legs(
    sale: &ProviderSale,
    buyer: &BuyerAccounts,
    market: &MarketAccounts,
    treasury_available: u64,
    next_id: &mut impl FnMut() -> TransferId,
    legs: &mut Vec<Transfer>,
) -> Result<(), SettlementError> {
    let from_treasury = sale.quantity().min(treasury_available);
    let from_issuance = sale.quantity() - from_treasury;
    let mut leg = |debit, asset: AssetCode, amount: u64, credit| {
        if amount == 0 {
            return Ok::<(), SettlementError>(());
        }
        let movement = Movement::new(
            debit,
            credit,
            asset,
            Amount::new(amount)?,
            TransferCode::EmergencySale,
        )?;
        legs.push(Transfer::movement(next_id(), movement));
        Ok(())
    };
    leg(
        market.treasury,
        market.token.clone(),
        from_treasury,
        buyer.acquired,
    )?;
    leg(
        market.issuance,
        market.token.clone(),
        from_issuance,
        buyer.acquired,
    )?;
    leg(
        buyer.wallet,
        AssetCode::credit(),
        sale.cost_micro_cr(),
        market.spent,
    )
}

/// Links every transfer to the next; the last closes the chain.
fn chain(legs: Vec<Transfer>) -> Vec<Transfer> {
    let last = legs.len().saturating_sub(1);
    legs.into_iter()
        .enumerate()
        .map(|(index, transfer)| transfer.with_linked(index < last))
        .collect()
}
