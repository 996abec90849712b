//! Decay curves, decayed prices and purchase costs: worked examples, validation, JSON shapes and
//! the invariants stated in `src/decay.rs`, the last ones as properties.

use std::str::FromStr;

use credex_ledger::{Timestamp, AMOUNT_MAX};
use credex_pricing::decay::{price_at, purchase_cost_micro_cr, HALF_LIFE_MAX_SECONDS, STEPS_MAX};
use credex_pricing::{DecayCurve, DecayError, DecayFactor, DecayWindow, PurchaseCostError};
use proptest::prelude::*;
use rust_decimal::Decimal;

const SECOND: i64 = 1_000_000;

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).expect("test decimals are well formed")
}

fn at(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}

fn window(open: i64, cycle_end: i64) -> DecayWindow {
    DecayWindow::new(at(open), at(cycle_end)).expect("test windows are not empty")
}

fn linear(floor: &str) -> DecayCurve {
    DecayCurve::linear(dec(floor)).expect("valid linear curve")
}

fn half_life(seconds: u64, floor: &str) -> DecayCurve {
    DecayCurve::half_life(seconds, dec(floor)).expect("valid half-life curve")
}

fn stairstep(steps: u32, floor: &str) -> DecayCurve {
    DecayCurve::stairstep(steps, dec(floor)).expect("valid stairstep curve")
}

/// `D(at)` over `[open, cycle_end]` is exactly `expected`.
fn check(curve: DecayCurve, (open, cycle_end): (i64, i64), instant: i64, expected: &str) {
    let factor = curve.factor(window(open, cycle_end), at(instant));
    assert_eq!(
        factor.as_decimal(),
        dec(expected),
        "{curve:?} over [{open}, {cycle_end}] at {instant}"
    );
}

#[test]
fn linear_falls_in_a_straight_line_to_its_floor() {
    let curve = linear("0.1");
    let span = (0, 1000);
    check(curve, span, -5, "1");
    check(curve, span, 0, "1");
    check(curve, span, 1, "0.9991");
    check(curve, span, 333, "0.7003");
    check(curve, span, 500, "0.55");
    check(curve, span, 999, "0.1009");
    check(curve, span, 1000, "0.1");
    check(curve, span, i64::MAX, "0.1");
}

#[test]
fn factors_are_rounded_down_to_nine_places() {
    check(linear("0"), (0, 3), 1, "0.666666666");
    check(linear("0"), (0, 3), 2, "0.333333333");
    check(stairstep(3, "0"), (0, 3), 1, "0.666666666");
    check(
        half_life(1, "0"),
        (0, 10 * SECOND),
        SECOND / 2,
        "0.707106781",
    );
}

#[test]
fn half_life_halves_the_distance_to_the_floor() {
    let span = (0, 10 * SECOND);
    check(half_life(1, "0"), span, SECOND, "0.5");
    check(half_life(1, "0"), span, 2 * SECOND, "0.25");
    check(half_life(1, "0"), span, 3 * SECOND, "0.125");
    // 0.5^1.5 = 0.35355339059327376…
    check(half_life(1, "0"), span, 3 * SECOND / 2, "0.353553390");
    check(half_life(1, "0.2"), span, SECOND, "0.6");
    // 0.2 + 0.8 × 0.35355339059327376… = 0.48284271247461900…
    check(half_life(1, "0.2"), span, 3 * SECOND / 2, "0.482842712");
    // At and after cycle end the factor is the floor, even before the curve gets there.
    check(half_life(3600, "0.2"), span, 10 * SECOND, "0.2");
    // After 60 half-lives the exponential part is gone.
    check(half_life(1, "0.3"), (0, 100 * SECOND), 61 * SECOND, "0.3");
}

#[test]
fn stairstep_drops_after_each_part_of_the_window() {
    let curve = stairstep(4, "0.2");
    let span = (1000, 1400);
    check(curve, span, 1000, "1");
    check(curve, span, 1099, "1");
    check(curve, span, 1100, "0.8");
    check(curve, span, 1250, "0.6");
    check(curve, span, 1399, "0.4");
    check(curve, span, 1400, "0.2");
    check(stairstep(1, "0.5"), span, 1399, "1");
    check(stairstep(1, "0.5"), span, 1400, "0.5");
}

#[test]
fn the_window_must_open_before_the_cycle_ends() {
    for (open, cycle_end) in [(5, 5), (6, 5), (i64::MAX, i64::MIN)] {
        assert_eq!(
            DecayWindow::new(at(open), at(cycle_end)),
            Err(DecayError::EmptyWindow {
                window_open_micros: open,
                cycle_end_micros: cycle_end
            })
        );
    }
    let widest = window(i64::MIN, i64::MAX);
    // The widest window computes without overflow: just short of halfway, just above 0.5.
    assert_eq!(linear("0").factor(widest, at(-1)).as_decimal(), dec("0.5"));
    assert_eq!(
        linear("0").factor(widest, at(0)).as_decimal(),
        dec("0.499999999")
    );
}

#[test]
fn bad_parameters_are_refused_with_a_reason() {
    for floor in ["1", "1.5", "-0.1", "-1"] {
        let floor = dec(floor);
        let refused = Err(DecayError::FloorOutOfRange { floor });
        assert_eq!(DecayCurve::linear(floor), refused);
        assert_eq!(DecayCurve::half_life(60, floor), refused);
        assert_eq!(DecayCurve::stairstep(5, floor), refused);
    }
    let floor = dec("0.1234567891");
    assert_eq!(
        DecayCurve::linear(floor),
        Err(DecayError::FloorTooPrecise { floor })
    );
    for steps in [0, STEPS_MAX + 1, u32::MAX] {
        assert_eq!(
            DecayCurve::stairstep(steps, Decimal::ZERO),
            Err(DecayError::StepsOutOfRange { steps })
        );
    }
    for seconds in [0, HALF_LIFE_MAX_SECONDS + 1, u64::MAX] {
        assert_eq!(
            DecayCurve::half_life(seconds, Decimal::ZERO),
            Err(DecayError::HalfLifeOutOfRange { seconds })
        );
    }
    // Trailing zeros are not extra precision; the edges of every range are accepted.
    assert!(DecayCurve::linear(dec("0.100000000000")).is_ok());
    assert!(DecayCurve::linear(dec("0.999999999")).is_ok());
    assert!(DecayCurve::stairstep(STEPS_MAX, Decimal::ZERO).is_ok());
    assert!(DecayCurve::half_life(HALF_LIFE_MAX_SECONDS, Decimal::ZERO).is_ok());
    let message = DecayCurve::linear(dec("1")).unwrap_err().to_string();
    assert!(message.contains("at least 0 and below 1"), "{message}");
}

#[test]
fn curves_travel_as_tagged_json() {
    let cases = [
        (linear("0.1"), r#"{"kind":"linear","floor":"0.1"}"#),
        (
            half_life(86_400, "0"),
            r#"{"kind":"half_life","half_life_seconds":86400,"floor":"0"}"#,
        ),
        (
            stairstep(7, "0.25"),
            r#"{"kind":"stairstep","steps":7,"floor":"0.25"}"#,
        ),
    ];
    for (curve, json) in cases {
        assert_eq!(serde_json::to_string(&curve).unwrap(), json);
        assert_eq!(serde_json::from_str::<DecayCurve>(json).unwrap(), curve);
    }
    // Same floor written differently reads as the same curve.
    assert_eq!(
        serde_json::from_str::<DecayCurve>(r#"{"kind":"linear","floor":"0.10"}"#).unwrap(),
        linear("0.1")
    );
}

#[test]
fn json_goes_through_the_same_validation() {
    let refused = [
        (r#"{"kind":"linear","floor":"1"}"#, "below 1"),
        (
            r#"{"kind":"stairstep","steps":0,"floor":"0"}"#,
            "1 to 100 steps",
        ),
        (
            r#"{"kind":"stairstep","steps":101,"floor":"0"}"#,
            "1 to 100 steps",
        ),
        (
            r#"{"kind":"half_life","half_life_seconds":0,"floor":"0"}"#,
            "half-life",
        ),
        (r#"{"kind":"linear","floor":0.1}"#, "invalid type"),
        (r#"{"kind":"linear"}"#, "floor"),
        (r#"{"kind":"cubic","floor":"0"}"#, "cubic"),
        (r#"{"kind":"linear","floor":"0","steps":3}"#, "steps"),
    ];
    for (json, hint) in refused {
        let message = serde_json::from_str::<DecayCurve>(json)
            .expect_err(json)
            .to_string();
        assert!(message.contains(hint), "{json}: {message}");
    }
}

#[test]
fn factors_are_decimal_strings_between_zero_and_one() {
    let factor = DecayFactor::from_decimal(dec("0.75")).unwrap();
    assert_eq!(factor.billionths(), 750_000_000);
    assert_eq!(serde_json::to_string(&factor).unwrap(), r#""0.75""#);
    assert_eq!(
        serde_json::from_str::<DecayFactor>(r#""0.75""#).unwrap(),
        factor
    );
    for bad in [r#""1.01""#, r#""-0.5""#, r#""0.0000000001""#, "0.5"] {
        assert!(serde_json::from_str::<DecayFactor>(bad).is_err(), "{bad}");
    }
    assert_eq!(
        DecayFactor::from_billionths(1_000_000_000),
        Ok(DecayFactor::ONE)
    );
    assert!(DecayFactor::from_billionths(1_000_000_001).is_err());
}

#[test]
fn decayed_prices_round_down_and_costs_round_up() {
    let third = DecayFactor::from_decimal(dec("0.333333333")).unwrap();
    assert_eq!(price_at(1_000_000, third), 333_333);
    assert_eq!(
        price_at(3, DecayFactor::from_decimal(dec("0.5")).unwrap()),
        1
    );
    assert_eq!(price_at(u64::MAX, DecayFactor::ONE), u64::MAX);
    assert_eq!(price_at(u64::MAX, DecayFactor::ZERO), 0);

    assert_eq!(purchase_cost_micro_cr(1, 1), Ok(1));
    assert_eq!(purchase_cost_micro_cr(0, 5_000_000), Ok(0));
    assert_eq!(purchase_cost_micro_cr(1_000_000, 2_500_000), Ok(2_500_000));
    assert_eq!(purchase_cost_micro_cr(1_500_001, 1_000_000), Ok(1_500_001));
    assert_eq!(purchase_cost_micro_cr(3, 333_333), Ok(1));
    assert_eq!(
        purchase_cost_micro_cr(AMOUNT_MAX, 1_000_000),
        Ok(AMOUNT_MAX)
    );
    assert_eq!(
        purchase_cost_micro_cr(AMOUNT_MAX, 1_000_001),
        Err(PurchaseCostError::CostTooLarge {
            quantity_tokens: AMOUNT_MAX,
            price_per_1m_micro_cr: 1_000_001
        })
    );
    assert!(purchase_cost_micro_cr(u64::MAX, u64::MAX).is_err());
}

// ---- properties ----

fn any_floor() -> impl Strategy<Value = Decimal> {
    (0_i64..1_000_000_000).prop_map(|billionths| Decimal::new(billionths, 9))
}

fn any_curve() -> impl Strategy<Value = DecayCurve> {
    prop_oneof![
        any_floor().prop_map(|floor| DecayCurve::linear(floor).unwrap()),
        (1..=HALF_LIFE_MAX_SECONDS, any_floor())
            .prop_map(|(seconds, floor)| DecayCurve::half_life(seconds, floor).unwrap()),
        (1..=6_u64, any_floor())
            .prop_map(|(seconds, floor)| DecayCurve::half_life(seconds, floor).unwrap()),
        (1..=STEPS_MAX, any_floor())
            .prop_map(|(steps, floor)| DecayCurve::stairstep(steps, floor).unwrap()),
    ]
}

/// A window of 1 µs to about 400 days, opening anywhere in a few centuries around the epoch.
fn any_window() -> impl Strategy<Value = (i64, i64)> {
    let length = prop_oneof![1_i64..=1000, 1_i64..=400 * 86_400 * SECOND];
    (-(1_i64 << 53)..(1_i64 << 53), length).prop_map(|(open, length)| (open, open + length))
}

/// An instant from a little before the window to a little after it.
fn instant_in((open, cycle_end): (i64, i64)) -> impl Strategy<Value = i64> {
    let length = cycle_end - open;
    (open - length / 4 - 2)..=(cycle_end + length / 4 + 2)
}

proptest! {
    #[test]
    fn factors_never_rise_and_stay_between_floor_and_one(
        (curve, span, t1, t2) in (any_curve(), any_window()).prop_flat_map(|(curve, span)| {
            (Just(curve), Just(span), instant_in(span), instant_in(span))
        })
    ) {
        let window = window(span.0, span.1);
        let (early, late) = (t1.min(t2), t1.max(t2));
        let (early_factor, late_factor) = (curve.factor(window, at(early)), curve.factor(window, at(late)));
        prop_assert!(early_factor >= late_factor, "{curve:?}: D({early}) = {early_factor} < D({late}) = {late_factor}");
        for factor in [early_factor, late_factor] {
            prop_assert!(curve.floor() <= factor && factor <= DecayFactor::ONE);
        }
    }

    #[test]
    fn factors_are_one_at_open_and_the_floor_at_cycle_end(curve in any_curve(), span in any_window()) {
        let window = window(span.0, span.1);
        prop_assert_eq!(curve.factor(window, at(span.0)), DecayFactor::ONE);
        prop_assert_eq!(curve.factor(window, at(span.0 - 1)), DecayFactor::ONE);
        prop_assert_eq!(curve.factor(window, at(span.1)), curve.floor());
        prop_assert_eq!(curve.factor(window, at(span.1 + 1)), curve.floor());
    }

    /// Around every whole half-life, one microsecond at a time, the factor never rises.
    #[test]
    fn half_life_never_rises_across_half_life_boundaries(
        seconds in 1..=HALF_LIFE_MAX_SECONDS,
        floor in any_floor(),
        whole in 0_i64..70,
    ) {
        let curve = DecayCurve::half_life(seconds, floor).unwrap();
        let half_life = i64::try_from(seconds).unwrap() * SECOND;
        let window = window(0, half_life * 80);
        let boundary = half_life * whole;
        let factors: Vec<_> = (boundary - 3..=boundary + 3)
            .map(|t| curve.factor(window, at(t)))
            .collect();
        prop_assert!(factors.windows(2).all(|pair| pair[0] >= pair[1]), "{factors:?}");
    }

    /// The half-life curve is the true exponential rounded down, give or take 1e-9.
    #[test]
    fn half_life_matches_the_exponential(
        seconds in 1..=HALF_LIFE_MAX_SECONDS,
        floor in any_floor(),
        elapsed_per_mille in 0_i64..10_000,
    ) {
        let curve = DecayCurve::half_life(seconds, floor).unwrap();
        let half_life = i64::try_from(seconds).unwrap() * SECOND;
        let elapsed = half_life / 1000 * elapsed_per_mille;
        let window = window(0, half_life * 20);
        let ours = curve.factor(window, at(elapsed)).as_decimal();
        let exact = floor + (Decimal::ONE - floor) * reference_half_power(elapsed, half_life);
        let tolerance = Decimal::new(1, 9);
        let slack = Decimal::new(1, 15);
        prop_assert!(ours <= exact + slack, "{ours} above {exact}");
        prop_assert!(exact - ours < tolerance + slack, "{ours} too far below {exact}");
    }

    #[test]
    fn invalid_parameters_are_always_refused(
        too_high in 1_000_000_000_i64..i64::MAX,
        negative in i64::MIN..0,
        steps in prop_oneof![Just(0_u32), (STEPS_MAX + 1)..=u32::MAX],
        seconds in prop_oneof![Just(0_u64), (HALF_LIFE_MAX_SECONDS + 1)..=u64::MAX],
    ) {
        for floor in [Decimal::new(too_high, 9), Decimal::new(negative, 9)] {
            prop_assert!(DecayCurve::linear(floor).is_err());
            prop_assert!(DecayCurve::half_life(60, floor).is_err());
            prop_assert!(DecayCurve::stairstep(3, floor).is_err());
        }
        prop_assert!(DecayCurve::stairstep(steps, Decimal::ZERO).is_err());
        prop_assert!(DecayCurve::half_life(seconds, Decimal::ZERO).is_err());
    }

    #[test]
    fn curves_survive_a_json_round_trip(curve in any_curve()) {
        let json = serde_json::to_string(&curve).unwrap();
        prop_assert_eq!(serde_json::from_str::<DecayCurve>(&json).unwrap(), curve);
    }

    /// One factor for every ask keeps the book in order.
    #[test]
    fn decayed_prices_keep_the_order_of_asks(
        ask_a in any::<u64>(),
        ask_b in any::<u64>(),
        billionths in 0_u32..=1_000_000_000,
    ) {
        let factor = DecayFactor::from_billionths(billionths).unwrap();
        let (low, high) = (ask_a.min(ask_b), ask_a.max(ask_b));
        prop_assert!(price_at(low, factor) <= price_at(high, factor));
        prop_assert!(price_at(high, factor) <= high);
    }

    #[test]
    fn costs_are_the_exact_amount_rounded_up(quantity in any::<u64>(), price in any::<u64>()) {
        let exact = u128::from(quantity) * u128::from(price);
        match purchase_cost_micro_cr(quantity, price) {
            Ok(cost) => {
                let cost = u128::from(cost);
                prop_assert!(cost * 1_000_000 >= exact);
                prop_assert!(cost == 0 || (cost - 1) * 1_000_000 < exact);
            }
            Err(_) => prop_assert!(exact.div_ceil(1_000_000) > u128::from(AMOUNT_MAX)),
        }
    }
}

/// 0.5^(elapsed / half_life) to about 20 places, the plain way: 0.5 per whole half-life, then
/// 1 / exp(r · ln 2) for the rest, summed with Decimal's 28 digits.
fn reference_half_power(elapsed: i64, half_life: i64) -> Decimal {
    let ln_2 = dec("0.6931471805599453094172321215");
    let whole = elapsed / half_life;
    let part = Decimal::from(elapsed % half_life) / Decimal::from(half_life);
    let x = part * ln_2;
    let (mut term, mut sum) = (Decimal::ONE, Decimal::ONE);
    for k in 1..40 {
        term = term * x / Decimal::from(k);
        sum += term;
    }
    let mut value = Decimal::ONE / sum;
    for _ in 0..whole {
        value /= Decimal::TWO;
    }
    value
}
