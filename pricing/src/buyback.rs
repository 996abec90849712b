//! Buyback pricing: what the provider pays, in µCR, for `alloc` tokens an org sells back.
//!
//! ```text
//! payout = ⌊ quantity × face_per_1M × rate × schedule(now) / 1,000,000 ⌋   (whole µCR)
//! ```
//!
//! `face_per_1M` is the model class's face value per 1M tokens in µCR, `rate` the market's
//! admin-tuned buyback rate in `(0, 1]` (default 0.9), and `schedule(now)` the optional
//! [`DecayCurve`] evaluated at `now` over the window the caller passes (1 when there is none).
//!
//! # Invariants
//!
//! - The payout is the exact product rounded **down** to whole µCR: the provider never pays more
//!   than the exact figure, and pays less by under 1 µCR. The product is computed exactly in
//!   integers (no intermediate rounding), for every `u64` quantity and face value.
//! - `payout ≤ quantity × face × rate / 1,000,000` (the schedule factor is at most 1), and the
//!   payout is non-decreasing in the quantity.
//! - A quote never exceeds a cap: `payout ≤ cap − already_paid` for the cycle cap (all orgs in the
//!   market's cycle) and for the per-org cap. A buyback that would cross one is refused whole,
//!   with the room left and the largest quantity that would fit, rather than partly filled: the
//!   seller decides what to do with the rest.
//! - A quote always moves something both ways: zero quantities, zero prices and payouts under
//!   1 µCR are refused, and a payout fits a ledger [`Amount`].
//! - Settings are validated on construction and on deserialization (same code path).

use std::fmt;

use credex_ledger::{Amount, Timestamp, AMOUNT_MAX};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::decay::{to_billionths, DecayCurve, DecayFactor, DecayWindow, FACTOR_DECIMAL_PLACES};

/// Billionths in one.
const ONE_BILLIONTHS: u32 = 1_000_000_000;
/// The default buyback rate, 90% of face value, in billionths.
const DEFAULT_RATE_BILLIONTHS: u32 = 900_000_000;
/// `rate × factor` is counted in 10^−18 (billionths of billionths).
const EFFECTIVE_RATE_DECIMAL_PLACES: u32 = 2 * FACTOR_DECIMAL_PLACES;
const EFFECTIVE_RATE_ONE: u128 = 1_000_000_000_000_000_000;
/// The divisor taking `quantity × face × effective rate` to µCR: 10^6 tokens × 10^18.
const PAYOUT_DIVISOR: u128 = 1_000_000_000_000_000_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuybackSettingsError {
    #[error("a buyback rate is above 0 and at most 1 (got {rate}); 0.9 pays 90% of face value")]
    RateOutOfRange { rate: Decimal },
    #[error("a buyback rate has at most 9 decimal places (got {rate})")]
    RateTooPrecise { rate: Decimal },
    #[error(
        "the {which} buyback cap is at most {AMOUNT_MAX} µCR (got {cap_micro_cr}); \
         leave it out for no cap"
    )]
    CapTooLarge { which: CapKind, cap_micro_cr: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuybackError {
    #[error("sell at least 1 token back")]
    ZeroQuantity,
    #[error("a buyback is at most {AMOUNT_MAX} tokens (got {quantity_tokens})")]
    QuantityTooLarge { quantity_tokens: u64 },
    #[error(
        "the buyback price is zero now (face value {face_value_per_1m_micro_cr} µCR per 1M tokens, \
         schedule factor {factor}); nothing can be sold back"
    )]
    PriceIsZero {
        face_value_per_1m_micro_cr: u64,
        factor: DecayFactor,
    },
    #[error(
        "{quantity_tokens} tokens would pay less than 1 µCR; sell at least {min_quantity_tokens} tokens"
    )]
    PayoutBelowOneMicroCredit {
        quantity_tokens: u64,
        min_quantity_tokens: u128,
    },
    #[error(
        "{quantity_tokens} tokens would pay {payout_micro_cr} µCR, more than one transfer can \
         carry ({AMOUNT_MAX} µCR); sell fewer tokens at a time"
    )]
    PayoutTooLarge {
        quantity_tokens: u64,
        payout_micro_cr: u128,
    },
    #[error(
        "this buyback would pay {payout_micro_cr} µCR but only {room_micro_cr} µCR remain under \
         the {which} cap of {cap_micro_cr} µCR; at most {max_quantity_tokens} tokens fit"
    )]
    CapReached {
        which: CapKind,
        payout_micro_cr: u64,
        cap_micro_cr: u64,
        room_micro_cr: u64,
        max_quantity_tokens: u64,
    },
}

/// Which buyback cap a figure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapKind {
    /// Total paid out to all orgs in the market's cycle.
    Cycle,
    /// Total paid out to one org in the market's cycle.
    Org,
}

impl fmt::Display for CapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CapKind::Cycle => "per-cycle",
            CapKind::Org => "per-org",
        })
    }
}

/// The fields of [`BuybackSettings`] before validation; also its JSON shape:
///
/// ```json
/// {"rate": "0.9", "schedule": {"kind": "linear", "floor": "0.5"},
///  "cycle_cap_micro_cr": 5000000000, "org_cap_micro_cr": null}
/// ```
///
/// Every field may be left out: the rate defaults to 0.9, the others to none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuybackSettingsInput {
    #[serde(default = "default_rate", with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    #[serde(default)]
    pub schedule: Option<DecayCurve>,
    #[serde(default)]
    pub cycle_cap_micro_cr: Option<u64>,
    #[serde(default)]
    pub org_cap_micro_cr: Option<u64>,
}

fn default_rate() -> Decimal {
    Decimal::new(i64::from(DEFAULT_RATE_BILLIONTHS), FACTOR_DECIMAL_PLACES).normalize()
}

impl Default for BuybackSettingsInput {
    fn default() -> Self {
        BuybackSettings::default().into()
    }
}

/// A market's validated buyback settings: a rate in `(0, 1]` with at most 9 decimal places, an
/// optional schedule, and optional caps of at most [`AMOUNT_MAX`] µCR (a cap of 0 stops
/// buybacks). Serialized as [`BuybackSettingsInput`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BuybackSettingsInput", into = "BuybackSettingsInput")]
pub struct BuybackSettings {
    rate_billionths: u32,
    schedule: Option<DecayCurve>,
    cycle_cap_micro_cr: Option<u64>,
    org_cap_micro_cr: Option<u64>,
}

impl Default for BuybackSettings {
    /// 90% of face value, no schedule, no caps.
    fn default() -> Self {
        Self {
            rate_billionths: DEFAULT_RATE_BILLIONTHS,
            schedule: None,
            cycle_cap_micro_cr: None,
            org_cap_micro_cr: None,
        }
    }
}

impl TryFrom<BuybackSettingsInput> for BuybackSettings {
    type Error = BuybackSettingsError;
    fn try_from(input: BuybackSettingsInput) -> Result<Self, BuybackSettingsError> {
        let rate = input.rate;
        if rate <= Decimal::ZERO || rate > Decimal::ONE {
            return Err(BuybackSettingsError::RateOutOfRange { rate });
        }
        let rate_billionths =
            to_billionths(rate).ok_or(BuybackSettingsError::RateTooPrecise { rate })?;
        check_cap(CapKind::Cycle, input.cycle_cap_micro_cr)?;
        check_cap(CapKind::Org, input.org_cap_micro_cr)?;
        Ok(Self {
            rate_billionths,
            schedule: input.schedule,
            cycle_cap_micro_cr: input.cycle_cap_micro_cr,
            org_cap_micro_cr: input.org_cap_micro_cr,
        })
    }
}

fn check_cap(which: CapKind, cap: Option<u64>) -> Result<(), BuybackSettingsError> {
    match cap {
        Some(cap_micro_cr) if cap_micro_cr > AMOUNT_MAX => Err(BuybackSettingsError::CapTooLarge {
            which,
            cap_micro_cr,
        }),
        _ => Ok(()),
    }
}

impl From<BuybackSettings> for BuybackSettingsInput {
    fn from(settings: BuybackSettings) -> Self {
        Self {
            rate: settings.rate(),
            schedule: settings.schedule,
            cycle_cap_micro_cr: settings.cycle_cap_micro_cr,
            org_cap_micro_cr: settings.org_cap_micro_cr,
        }
    }
}

impl BuybackSettings {
    /// The rate, normalized (`0.9`).
    pub fn rate(&self) -> Decimal {
        Decimal::new(i64::from(self.rate_billionths), FACTOR_DECIMAL_PLACES).normalize()
    }

    pub fn schedule(&self) -> Option<DecayCurve> {
        self.schedule
    }

    pub fn cycle_cap_micro_cr(&self) -> Option<u64> {
        self.cycle_cap_micro_cr
    }

    pub fn org_cap_micro_cr(&self) -> Option<u64> {
        self.org_cap_micro_cr
    }

    /// The buyback price at `now` for a class with the given face value.
    pub fn price(
        &self,
        face_value_per_1m_micro_cr: u64,
        window: DecayWindow,
        now: Timestamp,
    ) -> BuybackPrice {
        BuybackPrice {
            face_value_per_1m_micro_cr,
            rate_billionths: self.rate_billionths,
            factor: self.schedule.map(|curve| curve.factor(window, now)),
        }
    }
}

/// The buyback price at one instant: face value × rate × schedule factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuybackPrice {
    face_value_per_1m_micro_cr: u64,
    rate_billionths: u32,
    /// `None` when the market has no schedule (a factor of 1).
    factor: Option<DecayFactor>,
}

impl BuybackPrice {
    /// The schedule's factor at the quoted instant, if the market has a schedule.
    pub fn schedule_factor(&self) -> Option<DecayFactor> {
        self.factor
    }

    /// `rate × schedule factor`, exact (at most 18 decimal places), normalized.
    pub fn effective_rate(&self) -> Decimal {
        let scaled = i128::try_from(self.effective_rate_scaled())
            .expect("rate × factor ≤ 10^18 fits an i128");
        Decimal::from_i128_with_scale(scaled, EFFECTIVE_RATE_DECIMAL_PLACES).normalize()
    }

    /// The price per 1M tokens in µCR, rounded down. For display: payouts are computed from the
    /// exact product, so `payout ≥ ⌊quantity × this / 10^6⌋`.
    pub fn per_1m_micro_cr(&self) -> u64 {
        let price = u128::from(self.face_value_per_1m_micro_cr) * self.effective_rate_scaled()
            / EFFECTIVE_RATE_ONE;
        u64::try_from(price).expect("face × rate × factor ≤ face")
    }

    /// The exact payout for `quantity_tokens`, rounded down to whole µCR. May be 0, and may
    /// exceed what a transfer can carry; [`quote`] refuses both.
    pub fn payout_micro_cr(&self, quantity_tokens: u64) -> u128 {
        let value = u128::from(quantity_tokens) * u128::from(self.face_value_per_1m_micro_cr);
        mul_div_payout(value, self.effective_rate_scaled())
    }

    /// `rate × factor` in 10^−18, at most 10^18.
    fn effective_rate_scaled(&self) -> u128 {
        let factor = self.factor.map_or(ONE_BILLIONTHS, DecayFactor::billionths);
        u128::from(self.rate_billionths) * u128::from(factor)
    }
}

/// `⌊value × rate / 10^24⌋` exactly, for any `value` and `rate ≤ 10^18`, without overflow.
///
/// With `value = high · 10^24 + low` and `low = low_high · 10^12 + low_low`:
/// `low × rate = (low_high × rate) · 10^12 + low_low × rate`, each product below 10^30.
fn mul_div_payout(value: u128, rate: u128) -> u128 {
    const SPLIT: u128 = 1_000_000_000_000;
    debug_assert!(rate <= EFFECTIVE_RATE_ONE);
    let (high, low) = (value / PAYOUT_DIVISOR, value % PAYOUT_DIVISOR);
    let (low_high, low_low) = (low / SPLIT, low % SPLIT);
    let upper = low_high * rate;
    let lower = low_low * rate;
    let (upper_high, upper_low) = (upper / SPLIT, upper % SPLIT);
    // low × rate = upper_high · 10^24 + (upper_low · 10^12 + lower)
    high * rate + upper_high + (upper_low * SPLIT + lower) / PAYOUT_DIVISOR
}

/// The market's state a quote depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuybackContext {
    /// The model class's face value per 1M tokens, in µCR.
    pub face_value_per_1m_micro_cr: u64,
    /// The window the schedule runs over (normally the market's listing window).
    pub window: DecayWindow,
    /// The instant of the quote.
    pub now: Timestamp,
    /// Already paid out in buybacks to all orgs in this market's cycle.
    pub paid_in_cycle_micro_cr: u64,
    /// Already paid out in buybacks to the selling org in this market's cycle.
    pub paid_to_org_micro_cr: u64,
}

/// A priced, cap-checked buyback, ready to be settled as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuybackQuote {
    quantity_tokens: Amount,
    payout_micro_cr: Amount,
    unit_price_per_1m_micro_cr: u64,
    #[serde(with = "rust_decimal::serde::str")]
    rate: Decimal,
    schedule_factor: Option<DecayFactor>,
    #[serde(with = "rust_decimal::serde::str")]
    effective_rate: Decimal,
    cycle_room_after_micro_cr: Option<u64>,
    org_room_after_micro_cr: Option<u64>,
    quoted_at: Timestamp,
}

impl BuybackQuote {
    pub fn quantity_tokens(&self) -> Amount {
        self.quantity_tokens
    }

    /// What the org receives, in µCR.
    pub fn payout_micro_cr(&self) -> Amount {
        self.payout_micro_cr
    }

    /// Face × rate × factor per 1M tokens, rounded down; for display.
    pub fn unit_price_per_1m_micro_cr(&self) -> u64 {
        self.unit_price_per_1m_micro_cr
    }

    pub fn rate(&self) -> Decimal {
        self.rate
    }

    /// `None` when the market has no schedule.
    pub fn schedule_factor(&self) -> Option<DecayFactor> {
        self.schedule_factor
    }

    /// `rate × schedule factor`.
    pub fn effective_rate(&self) -> Decimal {
        self.effective_rate
    }

    /// Room left under the cycle cap once this buyback is paid; `None` when uncapped.
    pub fn cycle_room_after_micro_cr(&self) -> Option<u64> {
        self.cycle_room_after_micro_cr
    }

    /// Room left under the per-org cap once this buyback is paid; `None` when uncapped.
    pub fn org_room_after_micro_cr(&self) -> Option<u64> {
        self.org_room_after_micro_cr
    }

    pub fn quoted_at(&self) -> Timestamp {
        self.quoted_at
    }
}

/// Quotes a buyback of `quantity_tokens`, or says why it cannot be made.
pub fn quote(
    settings: &BuybackSettings,
    context: &BuybackContext,
    quantity_tokens: u64,
) -> Result<BuybackQuote, BuybackError> {
    let quantity = Amount::new(quantity_tokens).map_err(|_| match quantity_tokens {
        0 => BuybackError::ZeroQuantity,
        _ => BuybackError::QuantityTooLarge { quantity_tokens },
    })?;
    let price = settings.price(
        context.face_value_per_1m_micro_cr,
        context.window,
        context.now,
    );
    let payout = checked_payout(&price, quantity_tokens)?;
    let cycle = Cap::new(
        CapKind::Cycle,
        settings.cycle_cap_micro_cr,
        context.paid_in_cycle_micro_cr,
    );
    let org = Cap::new(
        CapKind::Org,
        settings.org_cap_micro_cr,
        context.paid_to_org_micro_cr,
    );
    check_caps(&price, quantity_tokens, payout.get(), [cycle, org])?;
    Ok(BuybackQuote {
        quantity_tokens: quantity,
        payout_micro_cr: payout,
        unit_price_per_1m_micro_cr: price.per_1m_micro_cr(),
        rate: settings.rate(),
        schedule_factor: price.schedule_factor(),
        effective_rate: price.effective_rate(),
        cycle_room_after_micro_cr: cycle.room_after(payout.get()),
        org_room_after_micro_cr: org.room_after(payout.get()),
        quoted_at: context.now,
    })
}

/// The payout as a transferable amount: at least 1 µCR, at most [`AMOUNT_MAX`].
fn checked_payout(price: &BuybackPrice, quantity_tokens: u64) -> Result<Amount, BuybackError> {
    let scaled_price = u128::from(price.face_value_per_1m_micro_cr) * price.effective_rate_scaled();
    if scaled_price == 0 {
        return Err(BuybackError::PriceIsZero {
            face_value_per_1m_micro_cr: price.face_value_per_1m_micro_cr,
            factor: price.factor.unwrap_or(DecayFactor::ONE),
        });
    }
    let payout_micro_cr = price.payout_micro_cr(quantity_tokens);
    if payout_micro_cr == 0 {
        return Err(BuybackError::PayoutBelowOneMicroCredit {
            quantity_tokens,
            min_quantity_tokens: PAYOUT_DIVISOR.div_ceil(scaled_price),
        });
    }
    u64::try_from(payout_micro_cr)
        .ok()
        .and_then(|payout| Amount::new(payout).ok())
        .ok_or(BuybackError::PayoutTooLarge {
            quantity_tokens,
            payout_micro_cr,
        })
}

/// One cap and what has been paid against it.
#[derive(Clone, Copy)]
struct Cap {
    which: CapKind,
    /// `(cap, room left)`; `None` when uncapped.
    limit: Option<(u64, u64)>,
}

impl Cap {
    fn new(which: CapKind, cap: Option<u64>, paid_micro_cr: u64) -> Self {
        Self {
            which,
            limit: cap.map(|cap| (cap, cap.saturating_sub(paid_micro_cr))),
        }
    }

    fn room(self) -> u64 {
        self.limit.map_or(u64::MAX, |(_, room)| room)
    }

    fn room_after(self, payout_micro_cr: u64) -> Option<u64> {
        self.limit
            .map(|(_, room)| room.saturating_sub(payout_micro_cr))
    }
}

/// Refuses a payout over either cap, naming the one with less room (the cycle cap on a tie).
fn check_caps(
    price: &BuybackPrice,
    quantity_tokens: u64,
    payout_micro_cr: u64,
    caps: [Cap; 2],
) -> Result<(), BuybackError> {
    let tightest = caps
        .into_iter()
        .filter(|cap| payout_micro_cr > cap.room())
        .min_by_key(|cap| cap.room());
    let Some(Cap {
        which,
        limit: Some((cap_micro_cr, room_micro_cr)),
    }) = tightest
    else {
        return Ok(());
    };
    Err(BuybackError::CapReached {
        which,
        payout_micro_cr,
        cap_micro_cr,
        room_micro_cr,
        max_quantity_tokens: max_quantity_within(price, quantity_tokens, room_micro_cr),
    })
}

/// The largest quantity below `above` whose payout is at most `room_micro_cr` (payouts are
/// non-decreasing in the quantity, so a binary search finds it).
fn max_quantity_within(price: &BuybackPrice, above: u64, room_micro_cr: u64) -> u64 {
    let (mut fits, mut exceeds) = (0_u64, above);
    while exceeds - fits > 1 {
        let middle = fits + (exceeds - fits) / 2;
        if price.payout_micro_cr(middle) <= u128::from(room_micro_cr) {
            fits = middle;
        } else {
            exceeds = middle;
        }
    }
    fits
}
