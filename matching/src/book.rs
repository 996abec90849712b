//! The order book of one market and its matching engine.
//!
//! # Layout
//!
//! - `index`: base ask → level slot, a `BTreeMap` walked in ascending order.
//! - `levels`: a slab of price levels; each holds its listings in a `VecDeque` sorted by `seq`
//!   (arrivals append at the back). A filled or cancelled listing becomes a tombstone
//!   (quantity 0) until it reaches the front or the level is compacted; a level with no live
//!   listing leaves the index at once, so every indexed level has a live listing at its front.
//!
//! Commands address a listing by its [`ListingKey`] (base ask, seq) — the book's own key — and
//! name its id as a check: amend and cancel find the level in the index and the listing by
//! binary search on `seq`. The book keeps no id map: a hash map's insert and remove (a cache
//! miss each on a large book) would double the cost of a listing's life in the book. Listing
//! ids are the service's (its store keeps them unique); the book checks keys for uniqueness.
//!
//! # Matching
//!
//! Matching runs in two phases over the same code as [`OrderBook::preview`]: a read-only walk
//! plans the fills, then they are applied. The walk visits listings by current price, then
//! `seq`: levels in ascending ask order, which is also ascending price order because one factor
//! scales every ask and `price_at` is non-decreasing in the ask. Two asks may round to the same
//! price; such levels form one group whose listings are merged by `seq`, so the order is exactly
//! (price, seq) even then. The factor is computed once per order, each level's price once.

use std::cmp::Reverse;
use std::collections::{btree_map, BTreeMap, BinaryHeap, VecDeque};

use credex_ledger::{OrgId, Timestamp};
use credex_pricing::DecayFactor;
use serde::Serialize;

use crate::arith::{self, Overflow};
use crate::outcome::{Fill, MatchOutcome, ProviderSale, StopReason};
use crate::types::{
    BuyOrder, Fee, FeePayer, Limit, Listing, ListingId, ListingKey, MarketRules, OrderError,
    DEPTH_LEVELS_MAX, FILLS_MAX, LISTINGS_MAX, QUANTITY_MAX, SKIPS_MAX,
};

/// Why the book refused a command. The book is unchanged after any error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("a listing with ask {ask} and sequence {seq} is already in the book")]
    DuplicateKey { ask: u64, seq: u64 },
    #[error("the book holds its maximum of {LISTINGS_MAX} listings")]
    Full,
    #[error("no open listing with this key and id")]
    NotFound,
    #[error(
        "a listing can only be amended down: it has {quantity} tokens, {requested} were asked"
    )]
    NotADecrease { quantity: u64, requested: u64 },
    #[error("a listing cannot be amended to 0 tokens: cancel it instead")]
    AmendToZero,
}

/// Why an order (or a quote) could not be matched. The book is unchanged after any error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("the market opens at {opens:?}; it is {at:?}")]
    MarketNotOpen { at: Timestamp, opens: Timestamp },
    #[error("the market closed at the cycle end {closed:?}; it is {at:?}")]
    MarketClosed { at: Timestamp, closed: Timestamp },
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("an amount left the range the market's bounds guarantee")]
    Overflow,
}

impl From<Overflow> for MatchError {
    fn from(_: Overflow) -> Self {
        Self::Overflow
    }
}

/// The cheapest listing now, and its price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Best {
    pub listing: Listing,
    pub price_per_1m_micro_cr: u64,
}

/// One price level of the book's depth: every listing whose decayed price is this price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DepthLevel {
    pub price_per_1m_micro_cr: u64,
    pub quantity: u64,
    pub listings: u32,
}

/// What buying a quantity from the book would cost now, for any buyer (no org is excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Quote {
    /// How much of the quantity asked the book can fill (respecting minimum fills).
    pub quantity: u64,
    /// The sum of the fills' costs.
    pub cost_micro_cr: u64,
    /// The sum of the fills' fees (paid by the buyer or deducted from the sellers' proceeds).
    pub fee_micro_cr: u64,
    /// What the buyer would pay in all: the cost, plus fees if the buyer pays them.
    pub buyer_pays_micro_cr: u64,
}

/// A listing removed from the book or made smaller: what leaves `escrow` for `alloc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Released {
    /// The listing as it is now (after an amend) or was (before a cancel).
    pub listing: Listing,
    /// Tokens no longer for sale.
    pub quantity: u64,
}

/// One market's order book: listings keyed on (base ask, arrival sequence). See the crate
/// documentation for its invariants.
#[derive(Debug, Clone)]
pub struct OrderBook {
    rules: MarketRules,
    index: BTreeMap<u64, u32>,
    levels: Vec<Level>,
    free: Vec<u32>,
    listings: usize,
    scratch: Scratch,
}

#[derive(Debug, Clone)]
struct Level {
    ask: u64,
    /// Sorted by `seq`; quantity 0 marks a tombstone. The front is live while indexed.
    entries: VecDeque<Listing>,
    live: u32,
    quantity: u64,
    in_use: bool,
}

#[derive(Debug, Clone, Copy)]
struct Planned {
    slot: u32,
    index: usize,
    quantity: u64,
}

#[derive(Debug, Clone, Default)]
struct Scratch {
    plan: Vec<Planned>,
}

/// An order as the walk sees it; a quote has no buyer, no limit and no budget.
#[derive(Debug, Clone, Copy)]
struct Terms {
    buyer: Option<OrgId>,
    quantity: u64,
    limit: Option<u64>,
    budget: Option<u64>,
}

impl Terms {
    fn of(order: &BuyOrder) -> Self {
        let (limit, budget) = match order.limit() {
            Limit::PricePer1m(price) => (Some(price), None),
            Limit::MaxTotal(total) => (None, Some(total)),
        };
        Self {
            buyer: Some(order.buyer()),
            quantity: order.quantity(),
            limit,
            budget,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Walked {
    stop: StopReason,
    remaining: u64,
    budget: Option<u64>,
}

impl OrderBook {
    pub fn new(rules: MarketRules) -> Self {
        Self::with_capacity(rules, 0)
    }

    /// A book with room for `levels` price levels before it reallocates.
    pub fn with_capacity(rules: MarketRules, levels: usize) -> Self {
        Self {
            rules,
            index: BTreeMap::new(),
            levels: Vec::with_capacity(levels.min(LISTINGS_MAX)),
            free: Vec::new(),
            listings: 0,
            scratch: Scratch::default(),
        }
    }

    pub fn rules(&self) -> &MarketRules {
        &self.rules
    }

    /// Applies new market settings from now on. Listings keep their places: the curve scales
    /// every ask alike, so no re-sorting is needed.
    pub fn replace_rules(&mut self, rules: MarketRules) {
        self.rules = rules;
    }

    /// Open listings.
    pub fn len(&self) -> usize {
        self.listings
    }

    pub fn is_empty(&self) -> bool {
        self.listings == 0
    }

    /// Tokens for sale in all.
    pub fn total_quantity(&self) -> u64 {
        self.index
            .values()
            .map(|slot| self.levels[slot_index(*slot)].quantity)
            .sum()
    }

    /// The open listing with this key, as it is now.
    pub fn get(&self, key: ListingKey) -> Option<Listing> {
        let (slot, index) = self.locate(key)?;
        Some(self.levels[slot].entries[index])
    }

    /// Every open listing, by base ask then `seq`.
    pub fn listings(&self) -> impl Iterator<Item = &Listing> + '_ {
        self.index.values().flat_map(move |slot| {
            self.levels[slot_index(*slot)]
                .entries
                .iter()
                .filter(|listing| listing.quantity() > 0)
        })
    }

    /// Adds a listing (whose tokens the service has moved `alloc → escrow`).
    pub fn insert(&mut self, listing: Listing) -> Result<(), BookError> {
        if self.listings >= LISTINGS_MAX {
            return Err(BookError::Full);
        }
        let ask = listing.ask_per_1m_micro_cr();
        let slot = match self.index.entry(ask) {
            btree_map::Entry::Occupied(occupied) => *occupied.get(),
            btree_map::Entry::Vacant(vacant_level) => {
                let slot = match self.free.pop() {
                    Some(slot) => slot,
                    None => {
                        let slot = u32::try_from(self.levels.len()).map_err(|_| BookError::Full)?;
                        self.levels.push(Level {
                            ask,
                            entries: VecDeque::new(),
                            live: 0,
                            quantity: 0,
                            in_use: false,
                        });
                        slot
                    }
                };
                let level = &mut self.levels[slot_index(slot)];
                debug_assert!(!level.in_use && level.entries.is_empty());
                level.ask = ask;
                level.in_use = true;
                vacant_level.insert(slot);
                slot
            }
        };
        let level = &mut self.levels[slot_index(slot)];
        let seq = listing.seq();
        match level.entries.back() {
            Some(last) if last.seq() >= seq => {
                match level.entries.binary_search_by_key(&seq, Listing::seq) {
                    Ok(_) => return Err(BookError::DuplicateKey { ask, seq }),
                    Err(position) => level.entries.insert(position, listing),
                }
            }
            _ => level.entries.push_back(listing),
        }
        level.live += 1;
        level.quantity += listing.quantity();
        self.listings += 1;
        Ok(())
    }

    /// Reduces a listing to `quantity` tokens (at least 1, below what it has now). Its place in
    /// the queue is kept. Returns the listing as amended and the tokens released.
    pub fn amend_down(
        &mut self,
        key: ListingKey,
        id: ListingId,
        quantity: u64,
    ) -> Result<Released, BookError> {
        let (slot, index) = self.locate_checked(key, id)?;
        let level = &mut self.levels[slot];
        let listing = &mut level.entries[index];
        if quantity == 0 {
            return Err(BookError::AmendToZero);
        }
        if quantity >= listing.quantity() {
            return Err(BookError::NotADecrease {
                quantity: listing.quantity(),
                requested: quantity,
            });
        }
        let released = listing.quantity() - quantity;
        *listing = listing.with_quantity(quantity);
        let listing = *listing;
        level.quantity -= released;
        Ok(Released {
            listing,
            quantity: released,
        })
    }

    /// Removes a listing. Returns it as it was, and the tokens released (all it had left).
    pub fn cancel(&mut self, key: ListingKey, id: ListingId) -> Result<Released, BookError> {
        let (slot, index) = self.locate_checked(key, id)?;
        self.listings -= 1;
        let level = &mut self.levels[slot];
        let listing = level.entries[index];
        level.entries[index] = listing.with_quantity(0);
        level.live -= 1;
        level.quantity -= listing.quantity();
        self.clean(slot);
        Ok(Released {
            listing,
            quantity: listing.quantity(),
        })
    }

    /// The cheapest listing at `at` (the oldest among equally priced ones).
    pub fn best(&self, at: Timestamp) -> Option<Best> {
        let factor = self.factor(at);
        Candidates::new(self, factor).next().map(|c| Best {
            listing: *c.listing,
            price_per_1m_micro_cr: c.price,
        })
    }

    /// Up to `levels` price levels (at most [`DEPTH_LEVELS_MAX`]), cheapest first; base asks
    /// that decay to the same price at `at` make one level.
    pub fn depth(&self, levels: usize, at: Timestamp) -> Vec<DepthLevel> {
        let factor = self.factor(at);
        let cap = levels.min(DEPTH_LEVELS_MAX);
        let mut depth: Vec<DepthLevel> = Vec::with_capacity(cap.min(self.index.len()));
        for (ask, slot) in &self.index {
            let level = &self.levels[slot_index(*slot)];
            let price = arith::price(*ask, factor);
            let full = depth.len() == cap;
            match depth.last_mut() {
                Some(last) if last.price_per_1m_micro_cr == price => {
                    last.quantity += level.quantity;
                    last.listings += level.live;
                }
                _ if full => break,
                _ => depth.push(DepthLevel {
                    price_per_1m_micro_cr: price,
                    quantity: level.quantity,
                    listings: level.live,
                }),
            }
        }
        depth
    }

    /// What buying `quantity` tokens would cost at `at`, taking listings as an order would
    /// (cheapest first, minimum fills respected) but for no buyer in particular.
    pub fn quote(&self, quantity: u64, at: Timestamp) -> Result<Quote, MatchError> {
        if !(1..=QUANTITY_MAX).contains(&quantity) {
            return Err(OrderError::QuantityOutOfRange.into());
        }
        let factor = self.open_factor(at)?;
        let terms = Terms {
            buyer: None,
            quantity,
            limit: None,
            budget: None,
        };
        let mut fills = Vec::new();
        let never = |_: OrgId, _: OrgId| false;
        let walked = self.walk(terms, factor, &never, &mut Vec::new(), &mut fills)?;
        let sum = |f: fn(&Fill) -> u64| fills.iter().map(f).sum::<u64>();
        Ok(Quote {
            quantity: quantity - walked.remaining,
            cost_micro_cr: sum(Fill::cost_micro_cr),
            fee_micro_cr: sum(Fill::fee_micro_cr),
            buyer_pays_micro_cr: sum(Fill::buyer_pays_micro_cr),
        })
    }

    /// Exactly what [`OrderBook::match_order`] would return for this order at `at`, without
    /// changing the book.
    pub fn preview(
        &self,
        order: &BuyOrder,
        at: Timestamp,
        linked: &dyn Fn(OrgId, OrgId) -> bool,
    ) -> Result<MatchOutcome, MatchError> {
        let factor = self.open_factor(at)?;
        let mut outcome = MatchOutcome::default();
        let walked = self.walk(
            Terms::of(order),
            factor,
            linked,
            &mut Vec::new(),
            &mut outcome.fills,
        )?;
        finish(order, walked, &mut outcome)?;
        Ok(outcome)
    }

    /// Matches an immediate-or-cancel buy order at `at` and removes what it took from the book.
    ///
    /// `linked(buyer, seller)` says whether two different orgs are admin-linked; the buyer's own
    /// listings and linked orgs' listings are passed over, never filled and never cancelled.
    pub fn match_order(
        &mut self,
        order: &BuyOrder,
        at: Timestamp,
        linked: &dyn Fn(OrgId, OrgId) -> bool,
    ) -> Result<MatchOutcome, MatchError> {
        let mut outcome = MatchOutcome::default();
        self.match_order_into(order, at, linked, &mut outcome)?;
        Ok(outcome)
    }

    /// [`OrderBook::match_order`] writing into `outcome`, whose buffers are reused: the hot
    /// path then allocates nothing.
    pub fn match_order_into(
        &mut self,
        order: &BuyOrder,
        at: Timestamp,
        linked: &dyn Fn(OrgId, OrgId) -> bool,
        outcome: &mut MatchOutcome,
    ) -> Result<(), MatchError> {
        let factor = self.open_factor(at)?;
        outcome.fills.clear();
        outcome.provider_sale = None;
        let mut plan = std::mem::take(&mut self.scratch.plan);
        plan.clear();
        let walked = self.walk(
            Terms::of(order),
            factor,
            linked,
            &mut plan,
            &mut outcome.fills,
        );
        let result = walked.and_then(|walked| finish(order, walked, outcome));
        if result.is_ok() {
            self.apply(&plan);
        } else {
            outcome.fills.clear();
        }
        self.scratch.plan = plan;
        Ok(result?)
    }

    /// Checks the book's internal structure (for tests and debugging): every indexed level is in
    /// use, holds live listings sorted by `seq` with a live one in front, its counts and totals
    /// are right, tombstones never outnumber both 32 and its live listings, the listing count
    /// is right, and the free slots are exactly the levels not in use. O(n).
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut live_total = 0_usize;
        for (ask, slot) in &self.index {
            let level = &self.levels[slot_index(*slot)];
            let live = level.entries.iter().filter(|l| l.quantity() > 0).count();
            let quantity: u64 = level.entries.iter().map(Listing::quantity).sum();
            let dead = level.entries.len() - live;
            let checks = [
                (
                    level.in_use && level.ask == *ask,
                    "indexed level in use at its ask",
                ),
                (live > 0 && live == slot_index(level.live), "live count"),
                (quantity == level.quantity, "level quantity"),
                (
                    level.entries.front().is_some_and(|l| l.quantity() > 0),
                    "live front",
                ),
                (dead <= live.max(32), "tombstones bounded"),
                (
                    level
                        .entries
                        .iter()
                        .zip(level.entries.iter().skip(1))
                        .all(|(a, b)| a.seq() < b.seq()),
                    "sorted by seq",
                ),
                (
                    level
                        .entries
                        .iter()
                        .all(|l| l.ask_per_1m_micro_cr() == *ask),
                    "asks match",
                ),
            ];
            if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
                return Err(format!("level at ask {ask}: {what}"));
            }
            live_total += live;
        }
        if live_total != self.listings {
            return Err(format!(
                "{live_total} live listings, {} counted",
                self.listings
            ));
        }
        let unused = self.levels.iter().filter(|l| !l.in_use).count();
        if unused != self.free.len() || self.index.len() + unused != self.levels.len() {
            return Err("free slots disagree with the levels in use".to_owned());
        }
        Ok(())
    }

    fn factor(&self, at: Timestamp) -> DecayFactor {
        self.rules.curve().factor(self.rules.window(), at)
    }

    /// The factor at `at`, if the market is open then: from the window's opening (included) to
    /// the cycle's end (excluded).
    fn open_factor(&self, at: Timestamp) -> Result<DecayFactor, MatchError> {
        let window = self.rules.window();
        if at < window.open() {
            return Err(MatchError::MarketNotOpen {
                at,
                opens: window.open(),
            });
        }
        if at >= window.cycle_end() {
            return Err(MatchError::MarketClosed {
                at,
                closed: window.cycle_end(),
            });
        }
        Ok(self.factor(at))
    }

    /// Plans an order's fills by price-time priority, without changing the book.
    fn walk(
        &self,
        terms: Terms,
        factor: DecayFactor,
        linked: &dyn Fn(OrgId, OrgId) -> bool,
        plan: &mut Vec<Planned>,
        fills: &mut Vec<Fill>,
    ) -> Result<Walked, Overflow> {
        let fee = self.rules.fee();
        let mut state = Walked {
            stop: StopReason::BookExhausted,
            remaining: terms.quantity,
            budget: terms.budget,
        };
        let mut skipped = 0_usize;
        let mut candidates = Candidates::new(self, factor);
        state.stop = loop {
            let Some(candidate) = candidates.next() else {
                break StopReason::BookExhausted;
            };
            let listing = candidate.listing;
            let take = match decide(&terms, &state, &fee, linked, candidate.price, listing)? {
                Step::Stop(reason) => break reason,
                Step::Skip => {
                    skipped += 1;
                    if skipped >= SKIPS_MAX {
                        break StopReason::ScanLimit;
                    }
                    continue;
                }
                Step::Take(take) => take,
            };
            state.remaining -= take.quantity;
            if let Some(budget) = &mut state.budget {
                *budget = budget.checked_sub(take.spend).ok_or(Overflow)?;
            }
            plan.push(Planned {
                slot: candidate.slot,
                index: candidate.index,
                quantity: take.quantity,
            });
            fills.push(Fill {
                listing: listing.id(),
                seller: listing.seller(),
                quantity: take.quantity,
                price_per_1m_micro_cr: candidate.price,
                cost_micro_cr: take.cost,
                fee_micro_cr: take.fee,
                fee_payer: fee.payer(),
            });
            if state.remaining == 0 {
                break StopReason::Filled;
            }
            if take.budget_bound {
                break StopReason::BudgetExhausted;
            }
            if fills.len() >= FILLS_MAX {
                break StopReason::FillLimit;
            }
        };
        Ok(state)
    }

    /// Takes planned fills out of the book. Levels are cleaned only once every fill is applied:
    /// cleaning moves listings within a level, and a merged group's fills interleave levels.
    fn apply(&mut self, plan: &[Planned]) {
        for planned in plan {
            let level = &mut self.levels[slot_index(planned.slot)];
            let listing = &mut level.entries[planned.index];
            assert!(
                planned.quantity <= listing.quantity(),
                "a planned fill never exceeds its listing"
            );
            let left = listing.quantity() - planned.quantity;
            *listing = listing.with_quantity(left);
            level.quantity -= planned.quantity;
            if left == 0 {
                level.live -= 1;
                self.listings -= 1;
            }
        }
        let mut cleaned = None;
        for planned in plan {
            if cleaned != Some(planned.slot) {
                self.clean(slot_index(planned.slot));
                cleaned = Some(planned.slot);
            }
        }
    }

    /// Restores a level's invariants after listings left it: an empty level leaves the index;
    /// otherwise its front is live, and tombstones never outnumber live listings for long.
    fn clean(&mut self, slot: usize) {
        let level = &mut self.levels[slot];
        if !level.in_use {
            return;
        }
        if level.live == 0 {
            debug_assert_eq!(level.quantity, 0);
            self.index.remove(&level.ask);
            level.entries.clear();
            level.in_use = false;
            if let Ok(slot) = u32::try_from(slot) {
                self.free.push(slot);
            }
            return;
        }
        while level.entries.front().is_some_and(|l| l.quantity() == 0) {
            level.entries.pop_front();
        }
        let dead = level.entries.len() - slot_index(level.live);
        if dead > 32 && dead > slot_index(level.live) {
            level.entries.retain(|l| l.quantity() > 0);
        }
    }

    /// Where the open listing with this key is: its level's slot and its index in that level.
    fn locate(&self, key: ListingKey) -> Option<(usize, usize)> {
        let slot = slot_index(*self.index.get(&key.ask_per_1m_micro_cr)?);
        let entries = &self.levels[slot].entries;
        let index = entries.binary_search_by_key(&key.seq, Listing::seq).ok()?;
        (entries[index].quantity() > 0).then_some((slot, index))
    }

    /// [`OrderBook::locate`], refusing a listing whose id is not the one named.
    fn locate_checked(&self, key: ListingKey, id: ListingId) -> Result<(usize, usize), BookError> {
        self.locate(key)
            .filter(|(slot, index)| self.levels[*slot].entries[*index].id() == id)
            .ok_or(BookError::NotFound)
    }
}

/// Provider sale and unfilled remainder, once the walk is done.
fn finish(order: &BuyOrder, walked: Walked, outcome: &mut MatchOutcome) -> Result<(), Overflow> {
    outcome.stop_reason = walked.stop;
    outcome.provider_sale = None;
    let mut remaining = walked.remaining;
    if let Some(offer) = order.provider_fill() {
        let price = offer.list_price_per_1m_micro_cr();
        let within_limit = match order.limit() {
            Limit::PricePer1m(limit) => price <= limit,
            Limit::MaxTotal(_) => true,
        };
        if remaining > 0 && walked.stop.book_exhausted_for_order() && within_limit {
            let mut quantity = remaining.min(offer.available());
            if let Some(budget) = walked.budget {
                quantity = quantity.min(arith::affordable(budget, price, 0));
            }
            if quantity > 0 {
                outcome.provider_sale = Some(ProviderSale {
                    quantity,
                    price_per_1m_micro_cr: price,
                    cost_micro_cr: arith::cost(quantity, price)?,
                });
                remaining -= quantity;
            }
        }
    }
    outcome.unfilled = remaining;
    Ok(())
}

/// What the walk does with the next listing in priority order.
#[derive(Debug, Clone, Copy)]
enum Step {
    Take(Take),
    /// The buyer's own or a linked org's listing, or a minimum fill the order cannot meet.
    Skip,
    Stop(StopReason),
}

#[derive(Debug, Clone, Copy)]
struct Take {
    quantity: u64,
    cost: u64,
    fee: u64,
    /// What leaves the buyer's wallet for this fill: the cost, plus the fee if the buyer pays.
    spend: u64,
    /// The budget, not the order or the listing, bounds this fill: then not one more token is
    /// affordable at this price, nor at any later (higher) one.
    budget_bound: bool,
}

/// The greedy rule: take `min(still wanted, listing quantity, affordable)` from a listing the
/// buyer may trade with, if that meets its minimum fill or empties it; pass over it otherwise.
fn decide(
    terms: &Terms,
    state: &Walked,
    fee: &Fee,
    linked: &dyn Fn(OrgId, OrgId) -> bool,
    price: u64,
    listing: &Listing,
) -> Result<Step, Overflow> {
    if terms.limit.is_some_and(|limit| price > limit) {
        return Ok(Step::Stop(StopReason::LimitReached));
    }
    let seller = listing.seller();
    if terms
        .buyer
        .is_some_and(|buyer| buyer == seller || linked(buyer, seller))
    {
        return Ok(Step::Skip);
    }
    let mut quantity = state.remaining.min(listing.quantity());
    let mut budget_bound = false;
    if let Some(budget) = state.budget {
        let affordable = arith::affordable(budget, price, fee.buyer_rate_billionths());
        if affordable == 0 {
            return Ok(Step::Stop(StopReason::BudgetExhausted));
        }
        budget_bound = affordable < quantity;
        quantity = quantity.min(affordable);
    }
    if quantity < listing.min_fill() && quantity < listing.quantity() {
        return Ok(Step::Skip);
    }
    let cost = arith::cost(quantity, price)?;
    let fee_micro_cr = arith::fee(cost, fee.rate_billionths())?;
    let spend = match fee.payer() {
        FeePayer::Buyer => cost.checked_add(fee_micro_cr).ok_or(Overflow)?,
        FeePayer::Seller => cost,
    };
    Ok(Step::Take(Take {
        quantity,
        cost,
        fee: fee_micro_cr,
        spend,
        budget_bound,
    }))
}

/// A listing the walk offers next, with its current price and its place in the book.
#[derive(Debug, Clone, Copy)]
struct Candidate<'a> {
    price: u64,
    slot: u32,
    index: usize,
    listing: &'a Listing,
}

/// Open listings in (current price, seq) order.
#[derive(Debug)]
struct Candidates<'a> {
    levels: &'a [Level],
    index: btree_map::Iter<'a, u64, u32>,
    factor: DecayFactor,
    /// The next level, already priced.
    peeked: Option<(u32, u64)>,
    group: Group,
}

#[derive(Debug)]
enum Group {
    Between,
    /// One level alone at its price: its queue in order.
    Single {
        slot: u32,
        price: u64,
        next: usize,
    },
    /// Several levels at one price: their queues merged by `seq`.
    Merged {
        price: u64,
        heads: BinaryHeap<Reverse<(u64, u32, usize)>>,
    },
}

impl<'a> Candidates<'a> {
    fn new(book: &'a OrderBook, factor: DecayFactor) -> Self {
        Self {
            levels: &book.levels,
            index: book.index.iter(),
            factor,
            peeked: None,
            group: Group::Between,
        }
    }

    fn next_level(&mut self) -> Option<(u32, u64)> {
        match self.peeked.take() {
            Some(peeked) => Some(peeked),
            None => {
                let (ask, slot) = self.index.next()?;
                Some((*slot, arith::price(*ask, self.factor)))
            }
        }
    }

    fn peek_level(&mut self) -> Option<(u32, u64)> {
        if self.peeked.is_none() {
            self.peeked = self.next_level();
        }
        self.peeked
    }
}

impl<'a> Iterator for Candidates<'a> {
    type Item = Candidate<'a>;

    fn next(&mut self) -> Option<Candidate<'a>> {
        let levels = self.levels;
        loop {
            match &mut self.group {
                Group::Single { slot, price, next } => {
                    let entries = &levels[slot_index(*slot)].entries;
                    while *next < entries.len() {
                        let index = *next;
                        *next += 1;
                        let listing = &entries[index];
                        if listing.quantity() > 0 {
                            return Some(Candidate {
                                price: *price,
                                slot: *slot,
                                index,
                                listing,
                            });
                        }
                    }
                    self.group = Group::Between;
                }
                Group::Merged { price, heads } => {
                    if let Some(Reverse((_, slot, index))) = heads.pop() {
                        heads.extend(live_from(levels, slot, index + 1).map(Reverse));
                        return Some(Candidate {
                            price: *price,
                            slot,
                            index,
                            listing: &levels[slot_index(slot)].entries[index],
                        });
                    }
                    self.group = Group::Between;
                }
                Group::Between => {
                    let (slot, price) = self.next_level()?;
                    if self.peek_level().is_some_and(|(_, next)| next == price) {
                        let mut heads = BinaryHeap::new();
                        heads.extend(live_from(levels, slot, 0).map(Reverse));
                        while let Some((next_slot, next_price)) = self.peek_level() {
                            if next_price != price {
                                break;
                            }
                            self.peeked = None;
                            heads.extend(live_from(levels, next_slot, 0).map(Reverse));
                        }
                        self.group = Group::Merged { price, heads };
                    } else {
                        self.group = Group::Single {
                            slot,
                            price,
                            next: 0,
                        };
                    }
                }
            }
        }
    }
}

/// The first live listing of a level at or after `from`, as a merge head `(seq, slot, index)`.
fn live_from(levels: &[Level], slot: u32, from: usize) -> Option<(u64, u32, usize)> {
    let entries = &levels[slot_index(slot)].entries;
    (from..entries.len())
        .find(|index| entries[*index].quantity() > 0)
        .map(|index| (entries[index].seq(), slot, index))
}

/// A slot or count held as `u32` used as an index: lossless on every supported target.
fn slot_index(slot: u32) -> usize {
    usize::try_from(slot).unwrap_or(usize::MAX)
}
