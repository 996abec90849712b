//! Properties of the cost arithmetic, for any price and usage within the bounds:
//!
//! - splitting a call's tokens into k parts (at the same tier) changes only the rounding: the
//!   exact USD totals add up exactly, and the parts' µCR exceed the whole's by 0 to k − 1;
//! - one more token of any kind never costs less (with tiers priced no lower than the rates
//!   below them);
//! - the µCR charge is the exact cost rounded up: never less, and less than 1 µCR more.

use credex_pricing::catalog::{Price, Rates, Tier, TokenKind};
use credex_pricing::cost::{cost, CrFaceValue, TokenUsage, MAX_TOKENS_PER_KIND};
use proptest::prelude::*;
use rust_decimal::Decimal;

/// A price in USD per 1M tokens: up to 100,000 with up to 10 decimal places.
fn rate() -> impl Strategy<Value = Decimal> {
    (0_u32..=10).prop_flat_map(|scale| {
        let max = 100_000_i64 * 10_i64.pow(scale);
        prop_oneof![
            (0..=max).prop_map(move |m| Decimal::new(m, scale)),
            // Realistic prices: 0.01 to 200 USD per 1M tokens.
            (1_i64..=20_000).prop_map(|m| Decimal::new(m, 2)),
        ]
    })
}

fn rates() -> impl Strategy<Value = Rates> {
    (rate(), rate(), rate(), rate()).prop_map(|(i, c, w, o)| Rates::new(i, c, w, o).unwrap())
}

/// Rates no lower than `below`, kind by kind.
fn rates_above(below: Rates) -> impl Strategy<Value = Rates> {
    (rate(), rate(), rate(), rate()).prop_map(move |(i, c, w, o)| {
        let up = |kind, extra: Decimal| {
            let sum = below.get(kind) + extra;
            sum.min(Decimal::from(100_000))
        };
        Rates::new(
            up(TokenKind::Input, i),
            up(TokenKind::CachedInput, c),
            up(TokenKind::CacheWrite, w),
            up(TokenKind::Output, o),
        )
        .unwrap()
    })
}

/// A price with up to two tiers, each priced no lower than the rates below it.
fn rising_price() -> impl Strategy<Value = Price> {
    (rates(), 1_u64..2_000_000, 1_u64..2_000_000).prop_flat_map(|(base, a, b)| {
        let (low, high) = (a.min(b), a.max(b) + 1);
        rates_above(base.clone()).prop_flat_map(move |first| {
            let base = base.clone();
            rates_above(first.clone()).prop_map(move |second| {
                let tiers = vec![
                    Tier::new(low, first.clone()).unwrap(),
                    Tier::new(high, second).unwrap(),
                ];
                Price::new(base.clone(), tiers).unwrap()
            })
        })
    })
}

fn face() -> impl Strategy<Value = CrFaceValue> {
    prop_oneof![
        Just(CrFaceValue::ONE_USD),
        (1_i64..=1_000_000_000, 0_u32..=6).prop_filter_map("within bounds", |(m, s)| {
            CrFaceValue::new(Decimal::new(m, s)).ok()
        }),
    ]
}

/// Splits `total` into `k` parts at random cut points.
fn split(total: u64, cuts: &[u64]) -> Vec<u64> {
    let mut points: Vec<u64> = cuts.iter().map(|c| c % (total + 1)).collect();
    points.push(0);
    points.push(total);
    points.sort_unstable();
    points.windows(2).map(|w| w[1] - w[0]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn splitting_a_call_changes_only_the_rounding(
        base in rates(),
        tier_rates in rates(),
        threshold in 1_u64..20_000_000,
        counts in prop::array::uniform4(0_u64..2_000_000),
        cuts in prop::collection::vec(prop::array::uniform4(any::<u64>()), 0..8),
        face in face(),
    ) {
        let price = Price::new(base, vec![Tier::new(threshold, tier_rates).unwrap()]).unwrap();
        let [input, cached, write, output] = counts;
        let whole = TokenUsage::new(input, cached, write, output).unwrap();
        // Stay within one tier: the whole below or at the threshold (so is every part), or every
        // part above it.
        let k = cuts.len() + 1;
        let parts_of = |kind: usize, total: u64| {
            split(total, &cuts.iter().map(|c| c[kind]).collect::<Vec<_>>())
        };
        let (inputs, caches, writes, outputs) =
            (parts_of(0, input), parts_of(1, cached), parts_of(2, write), parts_of(3, output));
        let parts: Vec<TokenUsage> = (0..k)
            .map(|i| TokenUsage::new(inputs[i], caches[i], writes[i], outputs[i]).unwrap())
            .collect();
        let tier_of = |u: &TokenUsage| price.rates_for(u.prompt_tokens()).0.map(Tier::above_prompt_tokens);
        prop_assume!(parts.iter().all(|p| tier_of(p) == tier_of(&whole)));

        let whole_cost = cost(&price, &whole).unwrap();
        let mut usd = Decimal::ZERO;
        let mut micro_cr = 0_u64;
        for part in &parts {
            let part_cost = cost(&price, part).unwrap();
            usd += part_cost.total_usd();
            micro_cr += part_cost.micro_cr(face).unwrap();
        }
        prop_assert_eq!(usd, whole_cost.total_usd());
        let whole_micro_cr = whole_cost.micro_cr(face).unwrap();
        let k = u64::try_from(k).unwrap();
        prop_assert!(micro_cr >= whole_micro_cr);
        prop_assert!(micro_cr - whole_micro_cr < k);
        prop_assert!(micro_cr.abs_diff(whole_micro_cr) <= k);
    }

    #[test]
    fn more_tokens_never_cost_less(
        price in rising_price(),
        counts in prop::array::uniform4(0_u64..3_000_000),
        kind in 0_usize..4,
        extra in 1_u64..3_000_000,
        face in face(),
    ) {
        let [input, cached, write, output] = counts;
        let usage = TokenUsage::new(input, cached, write, output).unwrap();
        let mut more = counts;
        more[kind] += extra;
        let [input, cached, write, output] = more;
        let bigger = TokenUsage::new(input, cached, write, output).unwrap();
        let (small, large) = (cost(&price, &usage).unwrap(), cost(&price, &bigger).unwrap());
        prop_assert!(large.total_usd() >= small.total_usd());
        prop_assert!(large.micro_cr(face).unwrap() >= small.micro_cr(face).unwrap());
    }

    #[test]
    fn the_charge_is_the_exact_cost_rounded_up(
        base in rates(),
        counts in prop::array::uniform4(0_u64..=MAX_TOKENS_PER_KIND),
        face in face(),
    ) {
        let [input, cached, write, output] = counts;
        let usage = TokenUsage::new(input, cached, write, output).unwrap();
        let breakdown = cost(&Price::flat(base), &usage).unwrap();
        let total: Decimal = TokenKind::ALL.iter().map(|&k| breakdown.usd(k)).sum();
        prop_assert_eq!(total, breakdown.total_usd());
        // The charge n µCR is worth n × face / 10^6 USD (exact: at most 12 decimal places):
        // at least the exact total, and less than one µCR more.
        if let Ok(n) = breakdown.micro_cr(face) {
            let micro = Decimal::from(1_000_000);
            let charged_usd = Decimal::from(n) * face.usd_per_cr() / micro;
            let one_micro_cr_usd = face.usd_per_cr() / micro;
            prop_assert!(charged_usd >= breakdown.total_usd());
            prop_assert!(charged_usd - one_micro_cr_usd < breakdown.total_usd());
        }
    }
}
