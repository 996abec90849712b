//! The market's integer arithmetic: decayed price, cost, fee and what a budget affords.
//!
//! [`price`] and [`cost`] are [`credex_pricing::decay::price_at`] and
//! [`credex_pricing::decay::purchase_cost_micro_cr`] with a 64-bit fast path (128-bit division
//! is a library call, 64-bit division by a constant is a multiply): the results are identical,
//! which `tests` below and `tests/properties.rs` check against the pricing crate.

use credex_pricing::decay::{price_at, purchase_cost_micro_cr};
use credex_pricing::DecayFactor;

/// Tokens per unit of a price (prices are per 1M tokens).
pub(crate) const TOKENS_PER_PRICE_UNIT: u64 = 1_000_000;
/// Billionths in one (fee rates and decay factors are held in billionths).
pub(crate) const ONE_BILLIONTHS: u64 = 1_000_000_000;

/// A computation left the range that the crate's bounds guarantee; it cannot happen for
/// validated inputs, and is reported (never wrapped or saturated) if it ever does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow;

/// `ask × factor`, rounded down: exactly [`price_at`].
#[inline]
pub(crate) fn price(ask_per_1m_micro_cr: u64, factor: DecayFactor) -> u64 {
    match ask_per_1m_micro_cr.checked_mul(u64::from(factor.billionths())) {
        Some(product) => product / ONE_BILLIONTHS,
        None => price_at(ask_per_1m_micro_cr, factor),
    }
}

/// `quantity × price / 1M`, rounded up: exactly [`purchase_cost_micro_cr`].
#[inline]
pub(crate) fn cost(quantity: u64, price_per_1m_micro_cr: u64) -> Result<u64, Overflow> {
    match quantity.checked_mul(price_per_1m_micro_cr) {
        // At most u64::MAX / 1M, far below AMOUNT_MAX.
        Some(product) => Ok(product.div_ceil(TOKENS_PER_PRICE_UNIT)),
        None => purchase_cost_micro_cr(quantity, price_per_1m_micro_cr).map_err(|_| Overflow),
    }
}

/// `cost × rate`, rounded up to whole µCR (`rate` in billionths, at most one).
///
/// Rounding up means the platform is never short-changed, and splitting a purchase into many
/// small fills never avoids the fee. Because `rate ≤ 1`, the fee never exceeds the cost.
#[inline]
pub(crate) fn fee(cost_micro_cr: u64, rate_billionths: u32) -> Result<u64, Overflow> {
    let rate = u64::from(rate_billionths);
    let fee = match cost_micro_cr.checked_mul(rate) {
        Some(product) => product.div_ceil(ONE_BILLIONTHS),
        None => {
            let exact = u128::from(cost_micro_cr) * u128::from(rate);
            u64::try_from(exact.div_ceil(u128::from(ONE_BILLIONTHS))).map_err(|_| Overflow)?
        }
    };
    debug_assert!(fee <= cost_micro_cr || rate > ONE_BILLIONTHS);
    Ok(fee)
}

/// The most tokens a budget affords at `price`: the largest `q` with
/// `cost(q) + buyer_fee(cost(q)) ≤ budget`, where the buyer's fee rate is
/// `buyer_fee_billionths` (zero when the seller pays the fee). `u64::MAX` at price zero.
///
/// Derivation (all integers, `n` the rate in billionths, `B` the budget):
/// `c + ⌈c·n/10⁹⌉ = ⌈c·(10⁹+n)/10⁹⌉ ≤ B ⟺ c ≤ ⌊B·10⁹/(10⁹+n)⌋ =: C`, and
/// `⌈q·p/10⁶⌉ ≤ C ⟺ q ≤ ⌊C·10⁶/p⌋`. The spend is non-decreasing in the cost, so this `q` is
/// affordable and `q + 1` is not.
pub(crate) fn affordable(
    budget_micro_cr: u64,
    price_per_1m_micro_cr: u64,
    buyer_fee_billionths: u32,
) -> u64 {
    if price_per_1m_micro_cr == 0 {
        return u64::MAX;
    }
    let budget = u128::from(budget_micro_cr);
    let max_cost = if buyer_fee_billionths == 0 {
        budget
    } else {
        let one = u128::from(ONE_BILLIONTHS);
        budget * one / (one + u128::from(buyer_fee_billionths))
    };
    let quantity = max_cost * u128::from(TOKENS_PER_PRICE_UNIT) / u128::from(price_per_1m_micro_cr);
    u64::try_from(quantity).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factor(billionths: u32) -> DecayFactor {
        DecayFactor::from_billionths(billionths).expect("a valid factor")
    }

    #[test]
    fn fast_paths_agree_with_pricing() {
        let asks = [
            0,
            1,
            999,
            1_000_000,
            18_446_744_073,
            18_446_744_074,
            u64::MAX / 3,
            u64::MAX,
        ];
        let factors = [0, 1, 333_333_333, 999_999_999, 1_000_000_000];
        for ask in asks {
            for billionths in factors {
                let f = factor(billionths);
                assert_eq!(price(ask, f), price_at(ask, f), "{ask} × {billionths}");
            }
        }
        let values = [
            0,
            1,
            999_999,
            1_000_000,
            1_000_001,
            4_294_967_296,
            u64::MAX / 2,
            u64::MAX,
        ];
        for quantity in values {
            for p in values {
                assert_eq!(
                    cost(quantity, p).ok(),
                    purchase_cost_micro_cr(quantity, p).ok(),
                    "{quantity} at {p}"
                );
            }
        }
    }

    #[test]
    fn fees_round_up_and_never_exceed_the_cost() {
        let check = |cost_micro_cr, rate, expected| {
            assert_eq!(
                fee(cost_micro_cr, rate),
                Ok(expected),
                "{cost_micro_cr} × {rate}"
            );
        };
        check(0, 30_000_000, 0);
        check(1, 30_000_000, 1);
        check(100, 30_000_000, 3);
        check(101, 30_000_000, 4);
        check(1_000_000, 0, 0);
        check(u64::MAX, 1_000_000_000, u64::MAX);
        check(u64::MAX, 999_999_999, u64::MAX - u64::MAX / 1_000_000_000);
    }

    #[test]
    fn affordable_is_the_largest_affordable_quantity() {
        for budget in [1_u64, 2, 3, 29, 100, 1_000_003, 987_654_321] {
            for p in [1_u64, 7, 999_999, 1_000_000, 3_000_001] {
                for rate in [0_u32, 30_000_000, 999_999_999] {
                    let q = affordable(budget, p, rate);
                    let spend = |q: u64| {
                        let c = cost(q, p).expect("in range");
                        c + fee(c, rate).expect("in range")
                    };
                    assert!(spend(q) <= budget, "{budget} {p} {rate}: {q}");
                    assert!(spend(q + 1) > budget, "{budget} {p} {rate}: {q} + 1");
                }
            }
        }
        assert_eq!(affordable(5, 0, 0), u64::MAX);
    }
}
