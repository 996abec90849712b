//! Credex's market: one order book per token asset (model class × cycle) and its matching
//! engine.
//!
//! # Architecture invariant
//!
//! Pure and deterministic: no I/O, no clock, no randomness. Time comes in as a
//! [`credex_ledger::Timestamp`] argument, transfer ids from the caller. The same commands in the
//! same order give the same book and the same outcomes. The crate knows nothing of storage,
//! HTTP, balances, or who may trade: the service checks eligibility (verification, org age,
//! caps, velocity, frozen orgs), moves listed tokens `alloc → escrow` before
//! [`OrderBook::insert`] and back after [`OrderBook::cancel`] / [`OrderBook::amend_down`], and
//! commits the transfers of [`settle_order`] after [`OrderBook::match_order`].
//!
//! # API boundary
//!
//! - Domain types with private fields and validating constructors: [`Listing`] (from
//!   [`ListingFields`]), [`BuyOrder`] with a [`Limit`] and an optional [`ProviderFill`],
//!   [`MarketRules`] (a [`credex_pricing::DecayCurve`] over a [`credex_pricing::DecayWindow`],
//!   and a [`Fee`]).
//! - [`OrderBook`]: `insert`, `amend_down`, `cancel`, `get`, `best`, `depth`, `quote`,
//!   `preview` (a dry run) and `match_order` (also `match_order_into`, which reuses buffers).
//!   A listing is addressed by its [`ListingKey`] (base ask, arrival `seq`), the book's own
//!   key, with its [`ListingId`] as a check; the service's store keeps ids unique.
//! - `linked(buyer, seller)`, passed to each order, says whether two different orgs are
//!   admin-linked; the crate never learns how groups are formed.
//! - [`settle_order`], [`settle_fill`], [`settle_provider_sale`]: an outcome as ledger
//!   transfers (see [`settle`]).
//!
//! # Prices and rounding
//!
//! A market applies one factor `D(t)` to every ask; a listing's price at `t` is
//! `⌊ask × D(t)⌋` µCR per 1M tokens ([`credex_pricing::decay::price_at`]). A fill of `q` tokens at
//! price `p` costs `⌈q × p / 10⁶⌉` µCR ([`credex_pricing::decay::purchase_cost_micro_cr`]). Its
//! fee is `⌈cost × rate⌉`, rounded **up**: the platform is never short, splitting an order into
//! small fills never avoids the fee, and since `rate < 1` the fee never exceeds the cost. CR is
//! conserved exactly, whatever the rounding: the buyer pays `cost` (plus `fee` if the market
//! says the buyer pays), the seller receives `cost` (less `fee` if the seller pays), `fees`
//! receives `fee`. A provider sale costs `⌈q × list price / 10⁶⌉` and carries no fee.
//!
//! # Invariants
//!
//! Proved by `tests/properties.rs` over random sequences of inserts, amends, cancels and
//! orders, against a naive reference matcher, unless noted:
//!
//! 1. **Quantity is conserved**: for every listing, listed = open + filled + released (amended
//!    away or cancelled); the book's open quantity equals the sum of its listings'.
//! 2. **Price-time priority**: an order's fills are exactly those of the greedy walk over every
//!    open listing sorted by (current price, `seq`) that takes from each listing
//!    `min(still wanted, listing quantity, affordable)` when that meets the listing's minimum
//!    fill (or empties it) and passes over it otherwise. So no listing that is cheaper, or as
//!    cheap and older, than a filled one is left with quantity unless the buyer could not take
//!    it (its own or a linked org's, or its minimum fill above what the order still wanted).
//! 3. **Limits**: no fill is priced above a price limit; with a maximum total, costs plus
//!    buyer-paid fees plus any provider sale never exceed the total.
//! 4. **No self-trade**: no fill is from the buyer's own org or an org `linked` to it; such
//!    listings stay in the book untouched.
//! 5. **Minimum fill**: every fill is at least its listing's minimum fill, or all that listing
//!    had left.
//! 6. **Not crossed after an order**: when an order stops with `LimitReached`,
//!    `BudgetExhausted` or `BookExhausted` and leaves a remainder, no open listing of another,
//!    unlinked org is priced within its limit *and* takeable (affordable, minimum fill met);
//!    stopping at `FillLimit` or `ScanLimit` are the only exceptions.
//! 7. **CR is conserved**: per fill and per order, buyer pays = sellers receive + fees; each
//!    fill's cost and fee are exactly the rounding rules above.
//! 8. **A preview is what you get**: [`OrderBook::preview`] returns exactly what
//!    [`OrderBook::match_order`] then does.
//! 9. **Settlement passes the ledger** (`tests/ledger.rs`, a proptest driving listings, amends,
//!    cancels and orders through [`credex_ledger::engine::apply`]): every request of
//!    [`settle_order`] is accepted whole, every asset's balances sum to zero, no restricted
//!    account goes negative, each seller's `escrow` equals its open listings in the book, each
//!    buyer's `acquired` what it bought, `fees` the fees, and the buyer's wallet loses exactly
//!    what the outcome says it pays.
//! 10. **Structure** ([`OrderBook::check_consistency`], after every step of the proptests):
//!     levels, counts, totals, `seq` order and tombstone bounds hold.
//!
//! Determinism needs no test of its own: the book holds no hash map, reads no clock and draws
//! no random number; its iteration orders are those of a `BTreeMap` and of `VecDeque`s.
//!
//! An order never waits in the book (immediate-or-cancel); the provider fills the remainder
//! only when the order allows it and the book has nothing left the order could take (so a
//! provider sale never jumps ahead of a cheaper listing).
//!
//! Bounds ([`QUANTITY_MAX`], [`ASK_MAX`], [`LISTINGS_MAX`], [`FILLS_MAX`], [`SKIPS_MAX`],
//! [`DEPTH_LEVELS_MAX`]) keep every amount within a ledger transfer and every order's work and
//! settlement within one ledger request.

mod arith;
pub mod book;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod outcome;
pub mod settle;
pub mod types;

pub use book::{Best, BookError, DepthLevel, MatchError, OrderBook, Quote, Released};
pub use outcome::{Fill, MatchOutcome, ProviderSale, StopReason};
pub use settle::{
    settle_fill, settle_order, settle_provider_sale, BuyerAccounts, MarketAccounts, SellerAccounts,
    SettlementError,
};
pub use types::{
    BuyOrder, Fee, FeeError, FeePayer, Limit, Listing, ListingError, ListingFields, ListingId,
    ListingKey, MarketRules, OrderError, ProviderFill, ASK_MAX, DEPTH_LEVELS_MAX, FILLS_MAX,
    LISTINGS_MAX, QUANTITY_MAX, SKIPS_MAX,
};
