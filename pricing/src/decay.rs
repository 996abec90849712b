//! Market time decay: the factor `D(t)` that scales every ask in a market, and the price and
//! purchase cost that follow from it.
//!
//! A market applies one [`DecayCurve`] over one [`DecayWindow`] (listing-window open to cycle
//! end). A listing's price at `t` is `ask × D(t)` ([`price_at`]); buying `q` tokens at that price
//! costs [`purchase_cost_micro_cr`].
//!
//! # Invariants
//!
//! For every curve, every window and every instant (each one proved by `tests/decay.rs`):
//!
//! - `D(t) = 1` at or before the window opens, and `D(t) = floor` at or after the cycle ends;
//! - `floor ≤ D(t) ≤ 1`;
//! - `D` is non-increasing: `t1 ≤ t2 ⇒ D(t1) ≥ D(t2)`;
//! - `D` is exact to 9 decimal places, rounded down ([`DecayFactor`] holds billionths), and
//!   computed with integer arithmetic only, so the same inputs give the same factor on every
//!   machine and the factor can be stored and compared exactly;
//! - [`price_at`] is non-decreasing in the ask, so one factor applied to every ask of a market
//!   never reorders the book (price-time priority needs no re-sorting).
//!
//! # Rounding
//!
//! - **Factor**: rounded down to 9 decimal places (toward the floor, in the buyer's favour).
//! - **Price** ([`price_at`]): `ask × D` rounded down to whole µCR per 1M tokens. The price a buyer
//!   sees and pays never exceeds the decayed ask; the seller gives up less than 1 µCR per 1M
//!   tokens.
//! - **Cost** ([`purchase_cost_micro_cr`]): `q × price / 1,000,000` rounded up to whole µCR, so a
//!   buyer never pays less than the exact amount for what they get (and buying a few tokens is
//!   never free).
//!
//! # The curves
//!
//! With `e` the time elapsed since the window opened and `w` the window's length:
//!
//! - **Linear** `{floor}`: `D = 1 − (1 − floor) · e / w`.
//! - **Half-life** `{half_life_seconds, floor}`: `D = floor + (1 − floor) · 0.5^(e / h)`, and
//!   exactly `floor` from the cycle end on (the only curve that jumps there: by then the market is
//!   closed). `0.5^(e/h)` is evaluated as `0.5^n · 2^−r` with `n` whole half-lives and `r` the
//!   fraction of the current one; `2^r = exp(r · ln 2)` is summed as a Taylor series of
//!   non-negative terms in 18-decimal fixed point, each term rounded down. Every step is a
//!   monotone integer operation, so the result is monotone by construction, and it lies within
//!   `1e−16` of the true value before the final rounding to 9 places. After 60 half-lives the
//!   exponential part is zero.
//! - **Stairstep** `{steps, floor}`: the window is cut into `steps` equal parts; after each part
//!   the factor drops by `(1 − floor) / steps`, so it is 1 during the first part and reaches
//!   `floor` exactly at the cycle end. `D = 1 − (1 − floor) · ⌊steps · e / w⌋ / steps`.
//!
//! Parameters are validated on construction and on deserialization (same code path): `floor` is
//! in `[0, 1)` with at most 9 decimal places, a half-life is 1 second to 366 days, and a stairstep
//! has 1 to 100 steps.

use std::fmt;

use credex_ledger::{Timestamp, AMOUNT_MAX};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Decimal places a factor keeps (it is counted in billionths).
pub const FACTOR_DECIMAL_PLACES: u32 = 9;
/// The shortest half-life a curve accepts, in seconds.
pub const HALF_LIFE_MIN_SECONDS: u64 = 1;
/// The longest half-life a curve accepts, in seconds (366 days).
pub const HALF_LIFE_MAX_SECONDS: u64 = 366 * 24 * 60 * 60;
/// The fewest steps a stairstep curve accepts.
pub const STEPS_MIN: u32 = 1;
/// The most steps a stairstep curve accepts.
pub const STEPS_MAX: u32 = 100;

/// Billionths in one: a factor of 1.
const ONE_BILLIONTHS: u32 = 1_000_000_000;
const MICROS_PER_SECOND: u64 = 1_000_000;
const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecayError {
    #[error(
        "a decay floor must be at least 0 and below 1 (got {floor}); \
         0 lets prices fall to nothing at cycle end, 0.5 stops them at half the ask"
    )]
    FloorOutOfRange { floor: Decimal },
    #[error("a decay floor has at most 9 decimal places (got {floor})")]
    FloorTooPrecise { floor: Decimal },
    #[error(
        "a half-life must be {HALF_LIFE_MIN_SECONDS} to {HALF_LIFE_MAX_SECONDS} seconds \
         (1 second to 366 days); got {seconds}"
    )]
    HalfLifeOutOfRange { seconds: u64 },
    #[error("a stairstep curve has {STEPS_MIN} to {STEPS_MAX} steps; got {steps}")]
    StepsOutOfRange { steps: u32 },
    #[error(
        "the listing window must open before the cycle ends \
         (window opens at {window_open_micros}µs, cycle ends at {cycle_end_micros}µs)"
    )]
    EmptyWindow {
        window_open_micros: i64,
        cycle_end_micros: i64,
    },
    #[error("a decay factor is between 0 and 1 with at most 9 decimal places; got {value}")]
    FactorOutOfRange { value: Decimal },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurchaseCostError {
    #[error(
        "buying {quantity_tokens} tokens at {price_per_1m_micro_cr} µCR per 1M tokens would cost \
         more than the largest amount a transfer can carry ({AMOUNT_MAX} µCR)"
    )]
    CostTooLarge {
        quantity_tokens: u64,
        price_per_1m_micro_cr: u64,
    },
}

/// A decay factor in `[0, 1]`, held exactly in billionths (9 decimal places).
///
/// JSON: a decimal string such as `"0.75"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "DecimalText", into = "DecimalText")]
pub struct DecayFactor(u32);

impl DecayFactor {
    pub const ONE: DecayFactor = DecayFactor(ONE_BILLIONTHS);
    pub const ZERO: DecayFactor = DecayFactor(0);

    /// A factor from billionths (`1_000_000_000` is 1).
    pub fn from_billionths(billionths: u32) -> Result<Self, DecayError> {
        if billionths > ONE_BILLIONTHS {
            return Err(DecayError::FactorOutOfRange {
                value: Decimal::new(i64::from(billionths), FACTOR_DECIMAL_PLACES),
            });
        }
        Ok(Self(billionths))
    }

    /// A factor from a decimal in `[0, 1]` with at most 9 decimal places.
    pub fn from_decimal(value: Decimal) -> Result<Self, DecayError> {
        let out_of_range = || DecayError::FactorOutOfRange { value };
        if value < Decimal::ZERO || value > Decimal::ONE {
            return Err(out_of_range());
        }
        let billionths = to_billionths(value).ok_or_else(out_of_range)?;
        Self::from_billionths(billionths)
    }

    pub fn billionths(self) -> u32 {
        self.0
    }

    /// The factor as a decimal, normalized (`0.75`, not `0.750000000`).
    pub fn as_decimal(self) -> Decimal {
        Decimal::new(i64::from(self.0), FACTOR_DECIMAL_PLACES).normalize()
    }
}

impl fmt::Display for DecayFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_decimal(), f)
    }
}

impl fmt::Debug for DecayFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TryFrom<DecimalText> for DecayFactor {
    type Error = DecayError;
    fn try_from(text: DecimalText) -> Result<Self, DecayError> {
        Self::from_decimal(text.0)
    }
}

impl From<DecayFactor> for DecimalText {
    fn from(factor: DecayFactor) -> Self {
        DecimalText(factor.as_decimal())
    }
}

/// The span a curve runs over: from the listing window's opening to the cycle's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecayWindow {
    open: Timestamp,
    cycle_end: Timestamp,
}

impl DecayWindow {
    /// A window; it must open strictly before the cycle ends.
    pub fn new(open: Timestamp, cycle_end: Timestamp) -> Result<Self, DecayError> {
        if open >= cycle_end {
            return Err(DecayError::EmptyWindow {
                window_open_micros: open.as_micros(),
                cycle_end_micros: cycle_end.as_micros(),
            });
        }
        Ok(Self { open, cycle_end })
    }

    pub fn open(self) -> Timestamp {
        self.open
    }

    pub fn cycle_end(self) -> Timestamp {
        self.cycle_end
    }

    /// Where `at` falls in the window.
    fn position(self, at: Timestamp) -> Position {
        if at <= self.open {
            Position::NotOpen
        } else if at >= self.cycle_end {
            Position::Ended
        } else {
            Position::Inside {
                elapsed_micros: at.as_micros().abs_diff(self.open.as_micros()),
                length_micros: self.cycle_end.as_micros().abs_diff(self.open.as_micros()),
            }
        }
    }
}

enum Position {
    NotOpen,
    /// Strictly inside: `0 < elapsed_micros < length_micros`.
    Inside {
        elapsed_micros: u64,
        length_micros: u64,
    },
    Ended,
}

/// A market's time-decay curve, with validated parameters. See the module documentation for
/// the formulas.
///
/// JSON (the same validation applies when deserializing):
///
/// ```json
/// {"kind": "linear", "floor": "0.1"}
/// {"kind": "half_life", "half_life_seconds": 86400, "floor": "0"}
/// {"kind": "stairstep", "steps": 7, "floor": "0.2"}
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "CurveRepr", into = "CurveRepr")]
pub struct DecayCurve(Curve);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Curve {
    Linear { floor: u32 },
    HalfLife { half_life_seconds: u64, floor: u32 },
    Stairstep { steps: u32, floor: u32 },
}

impl DecayCurve {
    /// Linear from 1 at window open to `floor` at cycle end.
    pub fn linear(floor: Decimal) -> Result<Self, DecayError> {
        let floor = parse_floor(floor)?;
        Ok(Self(Curve::Linear { floor }))
    }

    /// `floor + (1 − floor) · 0.5^(elapsed / half_life)`, then `floor` from the cycle end on.
    pub fn half_life(half_life_seconds: u64, floor: Decimal) -> Result<Self, DecayError> {
        if !(HALF_LIFE_MIN_SECONDS..=HALF_LIFE_MAX_SECONDS).contains(&half_life_seconds) {
            return Err(DecayError::HalfLifeOutOfRange {
                seconds: half_life_seconds,
            });
        }
        let floor = parse_floor(floor)?;
        Ok(Self(Curve::HalfLife {
            half_life_seconds,
            floor,
        }))
    }

    /// `steps` equal drops from 1 to `floor`, the last one at cycle end.
    pub fn stairstep(steps: u32, floor: Decimal) -> Result<Self, DecayError> {
        if !(STEPS_MIN..=STEPS_MAX).contains(&steps) {
            return Err(DecayError::StepsOutOfRange { steps });
        }
        let floor = parse_floor(floor)?;
        Ok(Self(Curve::Stairstep { steps, floor }))
    }

    /// `"linear"`, `"half_life"` or `"stairstep"`, as in JSON.
    pub fn kind(&self) -> &'static str {
        match self.0 {
            Curve::Linear { .. } => "linear",
            Curve::HalfLife { .. } => "half_life",
            Curve::Stairstep { .. } => "stairstep",
        }
    }

    /// The factor the curve reaches at cycle end.
    pub fn floor(&self) -> DecayFactor {
        DecayFactor(self.floor_billionths())
    }

    pub fn half_life_seconds(&self) -> Option<u64> {
        match self.0 {
            Curve::HalfLife {
                half_life_seconds, ..
            } => Some(half_life_seconds),
            _ => None,
        }
    }

    pub fn steps(&self) -> Option<u32> {
        match self.0 {
            Curve::Stairstep { steps, .. } => Some(steps),
            _ => None,
        }
    }

    fn floor_billionths(&self) -> u32 {
        match self.0 {
            Curve::Linear { floor }
            | Curve::HalfLife { floor, .. }
            | Curve::Stairstep { floor, .. } => floor,
        }
    }

    /// The factor `D(at)` over `window`: 1 until the window opens, `floor` from the cycle end on,
    /// non-increasing in between. Rounded down to 9 decimal places.
    pub fn factor(&self, window: DecayWindow, at: Timestamp) -> DecayFactor {
        let floor = self.floor_billionths();
        let (elapsed, length) = match window.position(at) {
            Position::NotOpen => return DecayFactor::ONE,
            Position::Ended => return DecayFactor(floor),
            Position::Inside {
                elapsed_micros,
                length_micros,
            } => (u128::from(elapsed_micros), u128::from(length_micros)),
        };
        let drop = u128::from(ONE_BILLIONTHS - floor);
        let factor = match self.0 {
            // 1 − drop · e / w, rounded down: subtract the drop rounded up.
            Curve::Linear { .. } => ONE_BILLIONTHS - narrow((drop * elapsed).div_ceil(length)),
            Curve::Stairstep { steps, .. } => {
                let steps = u128::from(steps);
                let done = steps * elapsed / length;
                ONE_BILLIONTHS - narrow((drop * done).div_ceil(steps))
            }
            Curve::HalfLife {
                half_life_seconds, ..
            } => {
                let half_life = u128::from(half_life_seconds * MICROS_PER_SECOND);
                let remaining = half_power(elapsed / half_life, elapsed % half_life, half_life);
                floor + narrow(drop * remaining / FIXED_ONE)
            }
        };
        debug_assert!((floor..=ONE_BILLIONTHS).contains(&factor));
        DecayFactor(factor)
    }
}

impl fmt::Debug for DecayCurve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let floor = self.floor();
        match self.0 {
            Curve::Linear { .. } => write!(f, "Linear {{ floor: {floor} }}"),
            Curve::HalfLife {
                half_life_seconds, ..
            } => write!(
                f,
                "HalfLife {{ half_life_seconds: {half_life_seconds}, floor: {floor} }}"
            ),
            Curve::Stairstep { steps, .. } => {
                write!(f, "Stairstep {{ steps: {steps}, floor: {floor} }}")
            }
        }
    }
}

/// The decayed price per 1M tokens: `ask × factor`, rounded down to whole µCR.
///
/// Non-decreasing in `ask` for a fixed factor, and never above `ask`.
pub fn price_at(ask_per_1m_micro_cr: u64, factor: DecayFactor) -> u64 {
    let price = u128::from(ask_per_1m_micro_cr) * u128::from(factor.0) / u128::from(ONE_BILLIONTHS);
    u64::try_from(price).expect("ask × factor ≤ ask because factor ≤ 1")
}

/// What `quantity_tokens` cost at `price_per_1m_micro_cr`: `quantity × price / 1,000,000`,
/// rounded up to whole µCR. Fails when the cost would exceed [`AMOUNT_MAX`].
pub fn purchase_cost_micro_cr(
    quantity_tokens: u64,
    price_per_1m_micro_cr: u64,
) -> Result<u64, PurchaseCostError> {
    let exact = u128::from(quantity_tokens) * u128::from(price_per_1m_micro_cr);
    let cost = exact.div_ceil(TOKENS_PER_PRICE_UNIT);
    u64::try_from(cost)
        .ok()
        .filter(|cost| *cost <= AMOUNT_MAX)
        .ok_or(PurchaseCostError::CostTooLarge {
            quantity_tokens,
            price_per_1m_micro_cr,
        })
}

/// One in the 18-decimal fixed point used for the half-life curve.
const FIXED_ONE: u128 = 1_000_000_000_000_000_000;
/// ln 2 in 18-decimal fixed point, rounded down (ln 2 = 0.693147180559945309417…).
const FIXED_LN_2: u128 = 693_147_180_559_945_309;
/// Beyond this many whole half-lives, 0.5^n is below one unit of the fixed point.
const HALF_LIVES_MAX: u128 = 60;
/// Taylor terms of exp(x) for x < ln 2: the 30th is below 1e−40, far under one fixed-point unit.
const TAYLOR_TERMS_MAX: u128 = 30;

/// `0.5^(whole + part / half_life)` in 18-decimal fixed point, rounded down at every step;
/// non-increasing in `whole · half_life + part`. Requires `part < half_life`.
fn half_power(whole: u128, part: u128, half_life: u128) -> u128 {
    if whole >= HALF_LIVES_MAX {
        return 0;
    }
    // x = (part / half_life) · ln 2 < ln 2, non-decreasing in `part`.
    let x = part * FIXED_LN_2 / half_life;
    // 2^(part/half_life) = exp(x) = Σ x^k / k!, every term ≥ 0 and non-decreasing in x.
    let mut term = FIXED_ONE;
    let mut sum = FIXED_ONE;
    for k in 1..=TAYLOR_TERMS_MAX {
        term = term * x / (k * FIXED_ONE);
        if term == 0 {
            break;
        }
        sum += term;
    }
    // sum < 2 · FIXED_ONE (every term is rounded down, x < ln 2), so within ≥ FIXED_ONE / 2:
    // the end of one half-life never falls below the start of the next.
    let within = FIXED_ONE * FIXED_ONE / sum;
    within >> whole
}

/// A billionths count already known to be at most one.
fn narrow(billionths: u128) -> u32 {
    u32::try_from(billionths).expect("a factor's billionths are bounded by 1_000_000_000")
}

fn parse_floor(floor: Decimal) -> Result<u32, DecayError> {
    if floor < Decimal::ZERO || floor >= Decimal::ONE {
        return Err(DecayError::FloorOutOfRange { floor });
    }
    to_billionths(floor).ok_or(DecayError::FloorTooPrecise { floor })
}

/// `value × 10^9` when that is a whole number that fits a `u32`; `None` for negative values, more
/// than 9 decimal places, or anything above 4.29.
pub(crate) fn to_billionths(value: Decimal) -> Option<u32> {
    let value = value.normalize();
    let places = value.scale();
    if places > FACTOR_DECIMAL_PLACES {
        return None;
    }
    let mantissa = u128::try_from(value.mantissa()).ok()?;
    let billionths = mantissa.checked_mul(10_u128.pow(FACTOR_DECIMAL_PLACES - places))?;
    u32::try_from(billionths).ok()
}

/// A decimal that travels in JSON as a string only (never as a JSON number).
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct DecimalText(#[serde(with = "rust_decimal::serde::str")] pub(crate) Decimal);

/// The JSON shape of a curve; turned into a [`DecayCurve`] only through its constructors.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum CurveRepr {
    Linear {
        floor: DecimalText,
    },
    HalfLife {
        half_life_seconds: u64,
        floor: DecimalText,
    },
    Stairstep {
        steps: u32,
        floor: DecimalText,
    },
}

impl TryFrom<CurveRepr> for DecayCurve {
    type Error = DecayError;
    fn try_from(repr: CurveRepr) -> Result<Self, DecayError> {
        match repr {
            CurveRepr::Linear { floor } => Self::linear(floor.0),
            CurveRepr::HalfLife {
                half_life_seconds,
                floor,
            } => Self::half_life(half_life_seconds, floor.0),
            CurveRepr::Stairstep { steps, floor } => Self::stairstep(steps, floor.0),
        }
    }
}

impl From<DecayCurve> for CurveRepr {
    fn from(curve: DecayCurve) -> Self {
        let floor = DecimalText(curve.floor().as_decimal());
        match curve.0 {
            Curve::Linear { .. } => CurveRepr::Linear { floor },
            Curve::HalfLife {
                half_life_seconds, ..
            } => CurveRepr::HalfLife {
                half_life_seconds,
                floor,
            },
            Curve::Stairstep { steps, .. } => CurveRepr::Stairstep { steps, floor },
        }
    }
}
