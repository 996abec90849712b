//! What a model call costs: exact in USD per token kind, then one conversion to µCR.
//!
//! # Conventions
//!
//! - [`TokenUsage::input`] counts **uncached** input tokens only. Cache reads
//!   ([`TokenUsage::cached_input`]) and cache writes ([`TokenUsage::cache_write`]) are counted
//!   apart, never inside `input`. OpenAI and LiteLLM report `prompt_tokens` *including* both;
//!   [`TokenUsage::from_prompt_total`] converts that convention.
//! - The prompt size that selects a long-context tier is [`TokenUsage::prompt_tokens`] =
//!   input + cached input + cache writes, as LiteLLM's `usage.prompt_tokens`.
//!
//! # Exactness
//!
//! A price is at most 100,000 USD per 1M tokens with at most 10 decimal places, so it is an
//! integer number of 1e-16 USD per token; a token count is at most [`MAX_TOKENS_PER_KIND`]. Each
//! kind's cost is therefore an integer number of 1e-16 USD below 1e27, computed in `i128` with
//! checked operations, and the total (below 4e27) fits a `Decimal` exactly. No rounding happens
//! before the conversion to µCR; an overflow is an error, never a panic or a wrap.
//!
//! # Rounding: one rule, once
//!
//! The exact USD total is converted to µCR (1 CR = 1,000,000 µCR, one CR worth
//! [`CrFaceValue`] USD, 1 USD by default) **rounding up to the next whole µCR**: a charge is never
//! less than the exact cost, and exceeds it by less than 1 µCR. Rounding happens once per call,
//! on the total, never per token kind. So pricing a call's tokens in k separate parts (at the same
//! tier) charges between 0 and k − 1 µCR more than pricing them together; never less.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::catalog::{Price, Rates, TokenKind, MAX_PRICE_SCALE};

/// The most tokens of one kind a single call may report: 10^12.
pub const MAX_TOKENS_PER_KIND: u64 = 1_000_000_000_000;
/// µCR in one CR.
pub const MICRO_CR_PER_CR: u64 = 1_000_000;
/// The largest charge, in µCR: what one ledger amount can carry (`i64::MAX`).
pub const MAX_CHARGE_MICRO_CR: u64 = credex_ledger::AMOUNT_MAX;
/// The largest face value of one CR, in USD.
pub const MAX_CR_FACE_VALUE_USD: u32 = 1_000_000;
/// The most decimal places of a CR's face value in USD.
pub const MAX_CR_FACE_VALUE_SCALE: u32 = 6;

/// Costs are computed as integers of 1e-16 USD: a price's smallest step per token.
const COST_SCALE: u32 = MAX_PRICE_SCALE + 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("a call reports at most {MAX_TOKENS_PER_KIND} tokens of each kind")]
    TooManyTokens { kind: TokenKind },
    #[error("cached and cache-write tokens are part of the prompt, so they cannot exceed it")]
    CacheExceedsPrompt,
}

/// The tokens of one call, by kind. `input` excludes cached tokens (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawTokenUsage", into = "RawTokenUsage")]
pub struct TokenUsage {
    input: u64,
    cached_input: u64,
    cache_write: u64,
    output: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenUsage {
    input: u64,
    #[serde(default)]
    cached_input: u64,
    #[serde(default)]
    cache_write: u64,
    output: u64,
}

impl TokenUsage {
    /// Uncached input, cache reads, cache writes and output tokens, each at most
    /// [`MAX_TOKENS_PER_KIND`].
    pub fn new(
        input: u64,
        cached_input: u64,
        cache_write: u64,
        output: u64,
    ) -> Result<Self, UsageError> {
        let counts = [input, cached_input, cache_write, output];
        for (kind, count) in TokenKind::ALL.into_iter().zip(counts) {
            if count > MAX_TOKENS_PER_KIND {
                return Err(UsageError::TooManyTokens { kind });
            }
        }
        Ok(Self {
            input,
            cached_input,
            cache_write,
            output,
        })
    }

    /// From the OpenAI/LiteLLM convention, where `prompt_tokens` includes the cache reads and
    /// writes: `input = prompt_tokens − cached_input − cache_write`.
    pub fn from_prompt_total(
        prompt_tokens: u64,
        cached_input: u64,
        cache_write: u64,
        output: u64,
    ) -> Result<Self, UsageError> {
        let input = prompt_tokens
            .checked_sub(cached_input)
            .and_then(|rest| rest.checked_sub(cache_write))
            .ok_or(UsageError::CacheExceedsPrompt)?;
        Self::new(input, cached_input, cache_write, output)
    }

    /// Tokens of a kind.
    pub fn get(&self, kind: TokenKind) -> u64 {
        match kind {
            TokenKind::Input => self.input,
            TokenKind::CachedInput => self.cached_input,
            TokenKind::CacheWrite => self.cache_write,
            TokenKind::Output => self.output,
        }
    }

    /// Uncached input tokens.
    pub fn input(&self) -> u64 {
        self.input
    }

    pub fn cached_input(&self) -> u64 {
        self.cached_input
    }

    pub fn cache_write(&self) -> u64 {
        self.cache_write
    }

    pub fn output(&self) -> u64 {
        self.output
    }

    /// All tokens sent to the model: input + cached input + cache writes. This selects the tier.
    /// Cannot overflow: each count is at most 10^12.
    pub fn prompt_tokens(&self) -> u64 {
        self.input
            .saturating_add(self.cached_input)
            .saturating_add(self.cache_write)
    }
}

impl TryFrom<RawTokenUsage> for TokenUsage {
    type Error = UsageError;
    fn try_from(raw: RawTokenUsage) -> Result<Self, UsageError> {
        Self::new(raw.input, raw.cached_input, raw.cache_write, raw.output)
    }
}

impl From<TokenUsage> for RawTokenUsage {
    fn from(usage: TokenUsage) -> Self {
        Self {
            input: usage.input,
            cached_input: usage.cached_input,
            cache_write: usage.cache_write,
            output: usage.output,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    #[error("the cost is beyond what can be computed exactly")]
    Overflow,
    #[error("the charge exceeds {MAX_CHARGE_MICRO_CR} µCR")]
    ChargeTooLarge,
    #[error("a cost cannot be negative")]
    Negative,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a CR's face value is more than 0 and at most {MAX_CR_FACE_VALUE_USD} USD, with at most {MAX_CR_FACE_VALUE_SCALE} decimal places")]
pub struct CrFaceValueError;

/// What one CR is worth in USD: positive, at most [`MAX_CR_FACE_VALUE_USD`], at most
/// [`MAX_CR_FACE_VALUE_SCALE`] decimal places. 1 USD by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct CrFaceValue(Decimal);

impl CrFaceValue {
    pub const ONE_USD: CrFaceValue = CrFaceValue(Decimal::ONE);

    pub fn new(usd_per_cr: Decimal) -> Result<Self, CrFaceValueError> {
        let usd_per_cr = usd_per_cr.normalize();
        let ok = usd_per_cr > Decimal::ZERO
            && usd_per_cr <= Decimal::from(MAX_CR_FACE_VALUE_USD)
            && usd_per_cr.scale() <= MAX_CR_FACE_VALUE_SCALE;
        if ok {
            Ok(Self(usd_per_cr))
        } else {
            Err(CrFaceValueError)
        }
    }

    pub fn usd_per_cr(self) -> Decimal {
        self.0
    }
}

impl Default for CrFaceValue {
    fn default() -> Self {
        Self::ONE_USD
    }
}

impl TryFrom<Decimal> for CrFaceValue {
    type Error = CrFaceValueError;
    fn try_from(usd_per_cr: Decimal) -> Result<Self, CrFaceValueError> {
        Self::new(usd_per_cr)
    }
}

impl From<CrFaceValue> for Decimal {
    fn from(face: CrFaceValue) -> Decimal {
        face.0
    }
}

/// A call's exact cost in USD, by token kind, and the tier that priced it. Serialized with the
/// amounts as decimal strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct CostBreakdown {
    /// The threshold of the long-context tier that priced the call; `None` for the base rates.
    tier_above_prompt_tokens: Option<u64>,
    input_usd: Decimal,
    cached_input_usd: Decimal,
    cache_write_usd: Decimal,
    output_usd: Decimal,
    total_usd: Decimal,
}

impl CostBreakdown {
    pub fn tier_above_prompt_tokens(&self) -> Option<u64> {
        self.tier_above_prompt_tokens
    }

    /// The exact cost of the tokens of a kind, in USD.
    pub fn usd(&self, kind: TokenKind) -> Decimal {
        match kind {
            TokenKind::Input => self.input_usd,
            TokenKind::CachedInput => self.cached_input_usd,
            TokenKind::CacheWrite => self.cache_write_usd,
            TokenKind::Output => self.output_usd,
        }
    }

    /// The exact total in USD: the sum of the four kinds.
    pub fn total_usd(&self) -> Decimal {
        self.total_usd
    }

    /// The exact total in USD as a plain decimal string (`"0.0123"`, never an exponent).
    pub fn total_usd_text(&self) -> String {
        usd_text(self.total_usd)
    }

    /// The charge in µCR: the exact total rounded up to a whole µCR (see the module docs).
    pub fn micro_cr(&self, face: CrFaceValue) -> Result<u64, CostError> {
        usd_to_micro_cr(self.total_usd, face)
    }
}

/// A priced call: the exact breakdown and the charge in µCR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Charge {
    pub breakdown: CostBreakdown,
    pub micro_cr: u64,
}

/// The exact cost of a call's tokens at a price. The tier is chosen by
/// [`TokenUsage::prompt_tokens`] (see [`Price::rates_for`]) and its rates bill every token.
pub fn cost(price: &Price, usage: &TokenUsage) -> Result<CostBreakdown, CostError> {
    let (tier, rates) = price.rates_for(usage.prompt_tokens());
    let mut units = [0_i128; 4];
    for (slot, kind) in units.iter_mut().zip(TokenKind::ALL) {
        *slot = kind_cost_units(rates, kind, usage.get(kind))?;
    }
    let total = units
        .iter()
        .try_fold(0_i128, |sum, &u| sum.checked_add(u))
        .ok_or(CostError::Overflow)?;
    let [input, cached_input, cache_write, output] = units;
    Ok(CostBreakdown {
        tier_above_prompt_tokens: tier.map(|t| t.above_prompt_tokens()),
        input_usd: units_to_usd(input)?,
        cached_input_usd: units_to_usd(cached_input)?,
        cache_write_usd: units_to_usd(cache_write)?,
        output_usd: units_to_usd(output)?,
        total_usd: units_to_usd(total)?,
    })
}

/// Prices a call and converts it to µCR in one step.
pub fn charge(price: &Price, usage: &TokenUsage, face: CrFaceValue) -> Result<Charge, CostError> {
    let breakdown = cost(price, usage)?;
    let micro_cr = breakdown.micro_cr(face)?;
    Ok(Charge {
        breakdown,
        micro_cr,
    })
}

/// tokens × rate, in 1e-16 USD. The rate (USD per 1M tokens, at most 10 decimal places) is
/// rate_mantissa × 10^(10 − scale) in 1e-10 USD per 1M tokens = 1e-16 USD per token.
fn kind_cost_units(rates: &Rates, kind: TokenKind, tokens: u64) -> Result<i128, CostError> {
    let rate = rates.get(kind);
    let shift = MAX_PRICE_SCALE
        .checked_sub(rate.scale())
        .ok_or(CostError::Overflow)?;
    let per_token_units = 10_i128
        .checked_pow(shift)
        .and_then(|p| rate.mantissa().checked_mul(p))
        .ok_or(CostError::Overflow)?;
    per_token_units
        .checked_mul(i128::from(tokens))
        .ok_or(CostError::Overflow)
}

fn units_to_usd(units: i128) -> Result<Decimal, CostError> {
    Decimal::try_from_i128_with_scale(units, COST_SCALE)
        .map(|d| d.normalize())
        .map_err(|_| CostError::Overflow)
}

/// An exact USD amount in µCR, rounded up to the next whole µCR: the smallest n with
/// n × face / 10^6 ≥ usd. Integer arithmetic throughout (`u128`, checked).
pub fn usd_to_micro_cr(usd: Decimal, face: CrFaceValue) -> Result<u64, CostError> {
    if usd.is_sign_negative() && !usd.is_zero() {
        return Err(CostError::Negative);
    }
    // usd = m / 10^s and face = n / 10^t, so µCR = m × 10^(6 + t) / (n × 10^s).
    let m = u128::try_from(usd.mantissa()).map_err(|_| CostError::Negative)?;
    let n = u128::try_from(face.0.mantissa()).map_err(|_| CostError::Overflow)?;
    let (s, t) = (usd.scale(), face.0.scale());
    let up = 6_u32.checked_add(t).ok_or(CostError::Overflow)?;
    let common = up.min(s);
    let pow = |e: u32| 10_u128.checked_pow(e).ok_or(CostError::Overflow);
    let numerator = m
        .checked_mul(pow(up - common)?)
        .ok_or(CostError::Overflow)?;
    let denominator = n.checked_mul(pow(s - common)?).ok_or(CostError::Overflow)?;
    let quotient = numerator
        .checked_div(denominator)
        .ok_or(CostError::Overflow)?;
    let remainder = numerator
        .checked_rem(denominator)
        .ok_or(CostError::Overflow)?;
    let rounded_up = quotient
        .checked_add(u128::from(remainder > 0))
        .ok_or(CostError::Overflow)?;
    u64::try_from(rounded_up)
        .ok()
        .filter(|&micro_cr| micro_cr <= MAX_CHARGE_MICRO_CR)
        .ok_or(CostError::ChargeTooLarge)
}

/// A USD amount as a plain decimal string without trailing zeros (`"1.5"`, `"0.000002"`).
pub fn usd_text(usd: Decimal) -> String {
    usd.normalize().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Tier;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn rates(input: &str, cached: &str, write: &str, output: &str) -> Rates {
        Rates::new(d(input), d(cached), d(write), d(output)).unwrap()
    }

    #[test]
    fn usd_to_micro_cr_rounds_up_once() {
        let one = CrFaceValue::ONE_USD;
        let cent = CrFaceValue::new(d("0.01")).unwrap();
        let cases: &[(&str, CrFaceValue, Result<u64, CostError>)] = &[
            ("0", one, Ok(0)),
            ("1", one, Ok(1_000_000)),
            ("0.000001", one, Ok(1)),
            ("0.0000010000000000000001", one, Ok(2)),
            ("0.0000000000000001", one, Ok(1)),
            ("0.0025", one, Ok(2500)),
            ("0.0025", cent, Ok(250_000)),
            ("0.00000001", cent, Ok(1)),
            ("1", CrFaceValue::new(d("3")).unwrap(), Ok(333_334)),
            ("-0.01", one, Err(CostError::Negative)),
            ("9223372036854.775807", one, Ok(MAX_CHARGE_MICRO_CR)),
            ("9223372036854.775808", one, Err(CostError::ChargeTooLarge)),
        ];
        for (usd, face, expected) in cases {
            assert_eq!(
                usd_to_micro_cr(d(usd), *face),
                *expected,
                "{usd} at {face:?}"
            );
        }
    }

    #[test]
    fn face_values_are_bounded() {
        for good in ["1", "0.01", "0.000001", "1000000", "2.50"] {
            assert!(CrFaceValue::new(d(good)).is_ok(), "{good}");
        }
        for bad in ["0", "-1", "0.0000001", "1000000.01"] {
            assert_eq!(CrFaceValue::new(d(bad)), Err(CrFaceValueError), "{bad}");
        }
    }

    #[test]
    fn costs_are_exact_per_kind() {
        let price = Price::flat(rates("3", "0.3", "3.75", "15"));
        let usage = TokenUsage::new(600, 400, 100, 1000).unwrap();
        let breakdown = cost(&price, &usage).unwrap();
        assert_eq!(breakdown.usd(TokenKind::Input), d("0.0018"));
        assert_eq!(breakdown.usd(TokenKind::CachedInput), d("0.00012"));
        assert_eq!(breakdown.usd(TokenKind::CacheWrite), d("0.000375"));
        assert_eq!(breakdown.usd(TokenKind::Output), d("0.015"));
        assert_eq!(breakdown.total_usd_text(), "0.017295");
        assert_eq!(breakdown.micro_cr(CrFaceValue::ONE_USD), Ok(17_295));
        assert_eq!(breakdown.tier_above_prompt_tokens(), None);
    }

    #[test]
    fn the_smallest_price_and_the_largest_call_stay_exact() {
        let tiny = Price::flat(rates("0.0000000001", "0", "0", "0"));
        let one_token = TokenUsage::new(1, 0, 0, 0).unwrap();
        let breakdown = cost(&tiny, &one_token).unwrap();
        assert_eq!(breakdown.total_usd_text(), "0.0000000000000001");
        assert_eq!(breakdown.micro_cr(CrFaceValue::ONE_USD), Ok(1));

        let huge = Price::flat(rates("100000", "100000", "100000", "99999.9999999999"));
        let max = MAX_TOKENS_PER_KIND;
        let usage = TokenUsage::new(max, max, max, max).unwrap();
        let breakdown = cost(&huge, &usage).unwrap();
        assert_eq!(breakdown.total_usd_text(), "399999999999.9999");
        assert_eq!(
            breakdown.micro_cr(CrFaceValue::ONE_USD),
            Ok(399_999_999_999_999_900)
        );
        let expensive_cr = CrFaceValue::new(d("0.000001")).unwrap();
        assert_eq!(
            breakdown.micro_cr(expensive_cr),
            Err(CostError::ChargeTooLarge)
        );
    }

    #[test]
    fn usage_is_bounded_and_converts_from_prompt_totals() {
        let over = MAX_TOKENS_PER_KIND + 1;
        assert_eq!(
            TokenUsage::new(0, 0, over, 0),
            Err(UsageError::TooManyTokens {
                kind: TokenKind::CacheWrite
            })
        );
        let usage = TokenUsage::from_prompt_total(1000, 400, 100, 7).unwrap();
        assert_eq!((usage.input(), usage.prompt_tokens()), (500, 1000));
        assert_eq!(
            TokenUsage::from_prompt_total(100, 60, 41, 0),
            Err(UsageError::CacheExceedsPrompt)
        );
        let json = r#"{"input":5,"output":2}"#;
        let parsed: TokenUsage = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, TokenUsage::new(5, 0, 0, 2).unwrap());
        let too_many = format!(r#"{{"input":{over},"output":2}}"#);
        assert!(serde_json::from_str::<TokenUsage>(&too_many).is_err());
    }

    #[test]
    fn a_tier_prices_every_token_of_the_call() {
        let tier = Tier::new(200_000, rates("6", "0.6", "7.5", "22.5")).unwrap();
        let price = Price::new(rates("3", "0.3", "3.75", "15"), vec![tier]).unwrap();
        let at = |input, cached, write| {
            let usage = TokenUsage::new(input, cached, write, 1000).unwrap();
            cost(&price, &usage).unwrap()
        };
        // 200,000 prompt tokens: not above the threshold.
        let below = at(150_000, 40_000, 10_000);
        assert_eq!(below.tier_above_prompt_tokens(), None);
        assert_eq!(below.usd(TokenKind::Output), d("0.015"));
        // 200,001 prompt tokens, counting cache reads and writes: the tier bills everything.
        let above = at(150_000, 40_001, 10_000);
        assert_eq!(above.tier_above_prompt_tokens(), Some(200_000));
        assert_eq!(above.usd(TokenKind::Input), d("0.9"));
        assert_eq!(above.usd(TokenKind::CachedInput), d("0.0240006"));
        assert_eq!(above.usd(TokenKind::CacheWrite), d("0.075"));
        assert_eq!(above.usd(TokenKind::Output), d("0.0225"));
    }
}
