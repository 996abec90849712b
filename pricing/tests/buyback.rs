//! Buyback pricing: worked examples, caps at their exact boundary, rounding, schedules, settings
//! validation and JSON, and the invariants stated in `src/buyback.rs` as properties.

use std::str::FromStr;

use credex_ledger::{Timestamp, AMOUNT_MAX};
use credex_pricing::buyback::quote;
use credex_pricing::{
    BuybackContext, BuybackError, BuybackSettings, BuybackSettingsError, BuybackSettingsInput,
    CapKind, DecayCurve, DecayFactor, DecayWindow,
};
use proptest::prelude::*;
use rust_decimal::Decimal;

/// 2 CR per 1M tokens.
const FACE: u64 = 2_000_000;

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).expect("test decimals are well formed")
}

fn settings(input: BuybackSettingsInput) -> BuybackSettings {
    BuybackSettings::try_from(input).expect("valid test settings")
}

fn capped(cycle_cap: Option<u64>, org_cap: Option<u64>) -> BuybackSettings {
    settings(BuybackSettingsInput {
        cycle_cap_micro_cr: cycle_cap,
        org_cap_micro_cr: org_cap,
        ..BuybackSettingsInput::default()
    })
}

fn scheduled(schedule: DecayCurve) -> BuybackSettings {
    settings(BuybackSettingsInput {
        schedule: Some(schedule),
        ..BuybackSettingsInput::default()
    })
}

/// A market whose schedule window runs from 0 to 1000 µs, quoted at `now`.
fn market(now: i64, paid_in_cycle: u64, paid_to_org: u64) -> BuybackContext {
    BuybackContext {
        face_value_per_1m_micro_cr: FACE,
        window: DecayWindow::new(Timestamp::from_micros(0), Timestamp::from_micros(1000)).unwrap(),
        now: Timestamp::from_micros(now),
        paid_in_cycle_micro_cr: paid_in_cycle,
        paid_to_org_micro_cr: paid_to_org,
    }
}

/// The payout in µCR of selling `quantity` back, or the refusal.
fn payout(
    settings: &BuybackSettings,
    context: &BuybackContext,
    quantity: u64,
) -> Result<u64, BuybackError> {
    quote(settings, context, quantity).map(|quote| quote.payout_micro_cr().get())
}

#[test]
fn the_default_pays_ninety_percent_of_face_value_rounded_down() {
    let defaults = BuybackSettings::default();
    let context = market(0, 0, 0);
    let cases = [
        (1_000_000, 1_800_000),
        (1, 1),               // 1.8 µCR
        (3, 5),               // 5.4 µCR
        (999_999, 1_799_998), // 1_799_998.2 µCR
        (AMOUNT_MAX / FACE, 8_301_034_833_168),
    ];
    for (quantity, expected) in cases {
        assert_eq!(
            payout(&defaults, &context, quantity),
            Ok(expected),
            "{quantity} tokens"
        );
    }
    let quote = quote(&defaults, &context, 1_000_000).unwrap();
    assert_eq!(quote.unit_price_per_1m_micro_cr(), 1_800_000);
    assert_eq!(quote.rate(), dec("0.9"));
    assert_eq!(quote.effective_rate(), dec("0.9"));
    assert_eq!(quote.schedule_factor(), None);
    assert_eq!(quote.cycle_room_after_micro_cr(), None);
    assert_eq!(quote.org_room_after_micro_cr(), None);
    assert_eq!(quote.quoted_at(), Timestamp::from_micros(0));
}

#[test]
fn a_schedule_scales_the_rate() {
    let schedule = DecayCurve::linear(dec("0.5")).unwrap();
    let settings = scheduled(schedule);
    // Before the window: factor 1. Halfway: 0.75. At the end: the floor, 0.5.
    for (now, expected, factor) in [
        (-10, 1_800_000, "1"),
        (500, 1_350_000, "0.75"),
        (1000, 900_000, "0.5"),
    ] {
        let quote = quote(&settings, &market(now, 0, 0), 1_000_000).unwrap();
        assert_eq!(quote.payout_micro_cr().get(), expected, "at {now}");
        assert_eq!(
            quote.schedule_factor().map(DecayFactor::as_decimal),
            Some(dec(factor))
        );
        assert_eq!(quote.effective_rate(), dec("0.9") * dec(factor));
    }
    // A schedule that falls to 0 leaves nothing to pay at cycle end.
    let to_zero = scheduled(DecayCurve::linear(Decimal::ZERO).unwrap());
    assert!(matches!(
        quote(&to_zero, &market(1000, 0, 0), 1_000_000),
        Err(BuybackError::PriceIsZero { .. })
    ));
}

#[test]
fn quantities_must_be_positive_and_pay_something() {
    let defaults = BuybackSettings::default();
    let context = market(0, 0, 0);
    assert_eq!(
        payout(&defaults, &context, 0),
        Err(BuybackError::ZeroQuantity)
    );
    assert_eq!(
        payout(&defaults, &context, AMOUNT_MAX + 1),
        Err(BuybackError::QuantityTooLarge {
            quantity_tokens: AMOUNT_MAX + 1
        })
    );
    let cheap = BuybackContext {
        face_value_per_1m_micro_cr: 1_000_000,
        ..context
    };
    // 1 token pays 0.9 µCR: refused, and 2 tokens (1.8 µCR) is the least that pays.
    assert_eq!(
        payout(&defaults, &cheap, 1),
        Err(BuybackError::PayoutBelowOneMicroCredit {
            quantity_tokens: 1,
            min_quantity_tokens: 2
        })
    );
    assert_eq!(payout(&defaults, &cheap, 2), Ok(1));
    let free = BuybackContext {
        face_value_per_1m_micro_cr: 0,
        ..context
    };
    assert!(matches!(
        payout(&defaults, &free, 1_000),
        Err(BuybackError::PriceIsZero { .. })
    ));
    let dear = BuybackContext {
        face_value_per_1m_micro_cr: 10_000_000,
        ..context
    };
    assert!(matches!(
        payout(&defaults, &dear, AMOUNT_MAX),
        Err(BuybackError::PayoutTooLarge { .. })
    ));
}

#[test]
fn the_cycle_cap_holds_to_the_last_micro_credit() {
    let settings = capped(Some(10_000_000), None);
    // 1M tokens pay 1_800_000 µCR: exactly the room left.
    let quote = quote(&settings, &market(0, 8_200_000, 0), 1_000_000).unwrap();
    assert_eq!(quote.payout_micro_cr().get(), 1_800_000);
    assert_eq!(quote.cycle_room_after_micro_cr(), Some(0));
    assert_eq!(quote.org_room_after_micro_cr(), None);
    // One µCR less room: refused, and 999_999 tokens (1_799_998 µCR) is the most that fits.
    assert_eq!(
        payout(&settings, &market(0, 8_200_001, 0), 1_000_000),
        Err(BuybackError::CapReached {
            which: CapKind::Cycle,
            payout_micro_cr: 1_800_000,
            cap_micro_cr: 10_000_000,
            room_micro_cr: 1_799_999,
            max_quantity_tokens: 999_999,
        })
    );
    assert_eq!(
        payout(&settings, &market(0, 8_200_001, 0), 999_999),
        Ok(1_799_998)
    );
    // Paid beyond the cap (the admin lowered it): no room at all.
    assert!(matches!(
        payout(&settings, &market(0, 20_000_000, 0), 2),
        Err(BuybackError::CapReached {
            room_micro_cr: 0,
            max_quantity_tokens: 0,
            ..
        })
    ));
}

#[test]
fn the_org_cap_holds_and_the_tighter_cap_is_named() {
    let settings = capped(Some(100_000_000), Some(2_000_000));
    assert_eq!(
        payout(&settings, &market(0, 0, 200_000), 1_000_000),
        Ok(1_800_000)
    );
    let refused = payout(&settings, &market(0, 0, 200_001), 1_000_000);
    assert!(
        matches!(
            refused,
            Err(BuybackError::CapReached {
                which: CapKind::Org,
                room_micro_cr: 1_799_999,
                ..
            })
        ),
        "{refused:?}"
    );
    // Both crossed: the one with less room left is named.
    let refused = payout(&settings, &market(0, 99_000_000, 1_100_000), 1_000_000);
    assert!(
        matches!(
            refused,
            Err(BuybackError::CapReached {
                which: CapKind::Org,
                room_micro_cr: 900_000,
                ..
            })
        ),
        "{refused:?}"
    );
    let refused = payout(&settings, &market(0, 99_500_000, 1_000_000), 1_000_000);
    assert!(
        matches!(
            refused,
            Err(BuybackError::CapReached {
                which: CapKind::Cycle,
                room_micro_cr: 500_000,
                ..
            })
        ),
        "{refused:?}"
    );
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains("only 500000 µCR remain under the per-cycle cap"),
        "{message}"
    );
    // A cap of zero stops buybacks.
    assert!(payout(&capped(None, Some(0)), &market(0, 0, 0), 1_000_000).is_err());
}

#[test]
fn payouts_are_exact_for_the_largest_figures() {
    let window = DecayWindow::new(Timestamp::from_micros(0), Timestamp::from_micros(1)).unwrap();
    let now = Timestamp::from_micros(0);
    let full = settings(BuybackSettingsInput {
        rate: Decimal::ONE,
        ..BuybackSettingsInput::default()
    });
    let half = settings(BuybackSettingsInput {
        rate: dec("0.5"),
        ..BuybackSettingsInput::default()
    });
    let everything = u128::from(u64::MAX) * u128::from(u64::MAX);
    assert_eq!(
        full.price(u64::MAX, window, now).payout_micro_cr(u64::MAX),
        everything / 1_000_000
    );
    assert_eq!(
        half.price(u64::MAX, window, now).payout_micro_cr(u64::MAX),
        everything / 2_000_000
    );
    // 0.9 × 0.75 = 0.675 on a value of 10^35 µCR·tokens.
    let scaled = scheduled(DecayCurve::linear(dec("0.75")).unwrap());
    let at_end = Timestamp::from_micros(1);
    let value = 100_000_000_000_000_000_u128 * 1_000_000_000_000_000_000;
    assert_eq!(
        scaled
            .price(1_000_000_000_000_000_000, window, at_end)
            .payout_micro_cr(100_000_000_000_000_000),
        value * 675 / 1_000_000_000
    );
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    for rate in ["0", "-0.1", "1.01", "2"] {
        let rate = dec(rate);
        assert_eq!(
            BuybackSettings::try_from(BuybackSettingsInput {
                rate,
                ..BuybackSettingsInput::default()
            }),
            Err(BuybackSettingsError::RateOutOfRange { rate })
        );
    }
    let rate = dec("0.1234567891");
    assert_eq!(
        BuybackSettings::try_from(BuybackSettingsInput {
            rate,
            ..BuybackSettingsInput::default()
        }),
        Err(BuybackSettingsError::RateTooPrecise { rate })
    );
    assert_eq!(
        BuybackSettings::try_from(BuybackSettingsInput {
            org_cap_micro_cr: Some(AMOUNT_MAX + 1),
            ..BuybackSettingsInput::default()
        }),
        Err(BuybackSettingsError::CapTooLarge {
            which: CapKind::Org,
            cap_micro_cr: AMOUNT_MAX + 1
        })
    );
    for rate in ["1", "0.000000001"] {
        let input = BuybackSettingsInput {
            rate: dec(rate),
            ..BuybackSettingsInput::default()
        };
        assert!(BuybackSettings::try_from(input).is_ok(), "{rate}");
    }
}

#[test]
fn settings_travel_as_json_through_the_same_validation() {
    let parsed: BuybackSettings = serde_json::from_str("{}").unwrap();
    assert_eq!(parsed, BuybackSettings::default());
    assert_eq!(
        serde_json::to_string(&parsed).unwrap(),
        r#"{"rate":"0.9","schedule":null,"cycle_cap_micro_cr":null,"org_cap_micro_cr":null}"#
    );
    let json = r#"{"rate":"0.8","schedule":{"kind":"stairstep","steps":4,"floor":"0.5"},"cycle_cap_micro_cr":5000000000,"org_cap_micro_cr":250000000}"#;
    let parsed: BuybackSettings = serde_json::from_str(json).unwrap();
    assert_eq!(parsed.rate(), dec("0.8"));
    assert_eq!(
        parsed.schedule(),
        Some(DecayCurve::stairstep(4, dec("0.5")).unwrap())
    );
    assert_eq!(parsed.cycle_cap_micro_cr(), Some(5_000_000_000));
    assert_eq!(parsed.org_cap_micro_cr(), Some(250_000_000));
    assert_eq!(serde_json::to_string(&parsed).unwrap(), json);

    for (json, hint) in [
        (r#"{"rate":"1.5"}"#, "at most 1"),
        (r#"{"rate":0.5}"#, "invalid type"),
        (r#"{"schedule":{"kind":"linear","floor":"1"}}"#, "below 1"),
        (r#"{"rate":"0.9","cap":5}"#, "cap"),
    ] {
        let message = serde_json::from_str::<BuybackSettings>(json)
            .expect_err(json)
            .to_string();
        assert!(message.contains(hint), "{json}: {message}");
    }
}

#[test]
fn quotes_serialize_with_every_figure() {
    let settings = settings(BuybackSettingsInput {
        schedule: Some(DecayCurve::linear(dec("0.5")).unwrap()),
        cycle_cap_micro_cr: Some(10_000_000),
        ..BuybackSettingsInput::default()
    });
    let quote = quote(&settings, &market(500, 0, 0), 1_000_000).unwrap();
    assert_eq!(
        serde_json::to_value(&quote).unwrap(),
        serde_json::json!({
            "quantity_tokens": 1_000_000,
            "payout_micro_cr": 1_350_000,
            "unit_price_per_1m_micro_cr": 1_350_000,
            "rate": "0.9",
            "schedule_factor": "0.75",
            "effective_rate": "0.675",
            "cycle_room_after_micro_cr": 8_650_000,
            "org_room_after_micro_cr": null,
            "quoted_at": 500,
        })
    );
}

// ---- properties ----

/// Settings with any valid rate and a linear schedule whose floor is the factor in force at the
/// window's end, so the quoted factor is any value in [0, 1).
fn any_price_settings() -> impl Strategy<Value = (BuybackSettings, Option<u32>)> {
    let rate = 1_i64..=1_000_000_000;
    let factor = prop_oneof![Just(None), (0_u32..1_000_000_000).prop_map(Some)];
    (rate, factor).prop_map(|(rate, factor)| {
        let schedule = factor.map(|f| DecayCurve::linear(Decimal::new(i64::from(f), 9)).unwrap());
        let input = BuybackSettingsInput {
            rate: Decimal::new(rate, 9),
            schedule,
            ..BuybackSettingsInput::default()
        };
        (BuybackSettings::try_from(input).unwrap(), factor)
    })
}

fn window_ended() -> (DecayWindow, Timestamp) {
    let window = DecayWindow::new(Timestamp::from_micros(0), Timestamp::from_micros(1)).unwrap();
    (window, Timestamp::from_micros(1))
}

proptest! {
    #[test]
    fn payouts_are_the_exact_figure_rounded_down(
        (settings, factor) in any_price_settings(),
        face in any::<u64>(),
        quantity in any::<u64>(),
    ) {
        let (window, now) = window_ended();
        let paid = settings.price(face, window, now).payout_micro_cr(quantity);
        let rate = settings.rate_billionths_for_tests();
        let factor = u128::from(factor.unwrap_or(1_000_000_000));
        let exact = reference_floor(u128::from(quantity) * u128::from(face), rate * factor);
        prop_assert_eq!(paid, exact);
        // Never above quantity × face × rate, exactly.
        let without_schedule = reference_floor(u128::from(quantity) * u128::from(face), rate * 1_000_000_000);
        prop_assert!(paid <= without_schedule);
    }

    #[test]
    fn payouts_never_fall_as_the_quantity_grows(
        (settings, _) in any_price_settings(),
        face in any::<u64>(),
        a in any::<u64>(),
        b in any::<u64>(),
    ) {
        let (window, now) = window_ended();
        let price = settings.price(face, window, now);
        let (fewer, more) = (a.min(b), a.max(b));
        prop_assert!(price.payout_micro_cr(fewer) <= price.payout_micro_cr(more));
    }

    #[test]
    fn quotes_stay_within_both_caps(
        (settings, factor) in any_price_settings(),
        cycle_cap in proptest::option::of(0_u64..20_000_000),
        org_cap in proptest::option::of(0_u64..5_000_000),
        paid_in_cycle in 0_u64..20_000_000,
        paid_to_org in 0_u64..5_000_000,
        quantity in 1_u64..10_000_000,
    ) {
        let input = BuybackSettingsInput { cycle_cap_micro_cr: cycle_cap, org_cap_micro_cr: org_cap, ..BuybackSettingsInput::from(settings) };
        let settings = BuybackSettings::try_from(input).unwrap();
        let (window, now) = window_ended();
        let context = BuybackContext { face_value_per_1m_micro_cr: FACE, window, now, paid_in_cycle_micro_cr: paid_in_cycle, paid_to_org_micro_cr: paid_to_org };
        let room = |cap: Option<u64>, paid: u64| cap.map_or(u64::MAX, |cap| cap.saturating_sub(paid));
        let room = room(cycle_cap, paid_in_cycle).min(room(org_cap, paid_to_org));
        let price = settings.price(FACE, window, now);
        match quote(&settings, &context, quantity) {
            Ok(quote) => {
                let paid = quote.payout_micro_cr().get();
                prop_assert!(paid <= room);
                prop_assert_eq!(u128::from(paid), price.payout_micro_cr(quantity));
            }
            Err(BuybackError::CapReached { payout_micro_cr, room_micro_cr, max_quantity_tokens, .. }) => {
                prop_assert_eq!(room_micro_cr, room);
                prop_assert!(payout_micro_cr > room);
                prop_assert!(price.payout_micro_cr(max_quantity_tokens) <= u128::from(room));
                prop_assert!(price.payout_micro_cr(max_quantity_tokens + 1) > u128::from(room));
            }
            Err(BuybackError::PriceIsZero { .. }) => prop_assert_eq!(factor, Some(0)),
            Err(BuybackError::PayoutBelowOneMicroCredit { min_quantity_tokens, .. }) => {
                prop_assert_eq!(price.payout_micro_cr(quantity), 0);
                let least = u64::try_from(min_quantity_tokens).unwrap();
                prop_assert!(price.payout_micro_cr(least) >= 1);
                prop_assert_eq!(price.payout_micro_cr(least - 1), 0);
            }
            Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
        }
    }

    #[test]
    fn settings_survive_a_json_round_trip((settings, _) in any_price_settings(), cap in proptest::option::of(0..=AMOUNT_MAX)) {
        let input = BuybackSettingsInput { cycle_cap_micro_cr: cap, org_cap_micro_cr: cap, ..BuybackSettingsInput::from(settings) };
        let settings = BuybackSettings::try_from(input).unwrap();
        let json = serde_json::to_string(&settings).unwrap();
        prop_assert_eq!(serde_json::from_str::<BuybackSettings>(&json).unwrap(), settings);
    }
}

trait RateForTests {
    fn rate_billionths_for_tests(&self) -> u128;
}

impl RateForTests for BuybackSettings {
    fn rate_billionths_for_tests(&self) -> u128 {
        let scaled = self.rate() * Decimal::new(1_000_000_000, 0);
        u128::try_from(scaled.mantissa()).unwrap() / 10_u128.pow(scaled.scale())
    }
}

/// `⌊value × rate / 10^24⌋` by schoolbook arithmetic on 64-bit limbs, independent of the
/// library's splitting: multiply, then divide by 10^12 twice (⌊⌊x / a⌋ / b⌋ = ⌊x / ab⌋).
fn reference_floor(value: u128, rate: u128) -> u128 {
    let rate = u64::try_from(rate).unwrap();
    let limbs = [value & u128::from(u64::MAX), value >> 64];
    let mut product = [0_u64; 3];
    let mut carry = 0_u128;
    for (index, limb) in limbs.into_iter().enumerate() {
        let step = limb * u128::from(rate) + carry;
        product[index] = u64::try_from(step & u128::from(u64::MAX)).unwrap();
        carry = step >> 64;
    }
    product[2] = u64::try_from(carry).unwrap();
    for _ in 0..2 {
        let mut remainder = 0_u128;
        for limb in product.iter_mut().rev() {
            let current = (remainder << 64) | u128::from(*limb);
            *limb = u64::try_from(current / 1_000_000_000_000).unwrap();
            remainder = current % 1_000_000_000_000;
        }
    }
    assert_eq!(product[2], 0, "the quotient fits 128 bits");
    (u128::from(product[1]) << 64) | u128::from(product[0])
}
