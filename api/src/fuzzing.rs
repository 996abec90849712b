//! The bodies of the `money` and `dto` fuzz targets (`fuzz/fuzz_targets/`), shared with their
//! regression test (`api/tests/fuzz_regressions.rs`), which replays every file of
//! `fuzz/regressions/money/` and `fuzz/regressions/dto/` through them. Not part of the crate's
//! API: nothing else calls these functions.
//!
//! Each body panics when a property breaks; an input the product refuses is fine.

use credex_ledger::{Action, Amount, Timestamp, AMOUNT_MAX};
use credex_matching::{BuyOrder, Limit, Listing, ListingFields, ListingId, ASK_MAX, QUANTITY_MAX};
use credex_pricing::catalog::{MAX_PRICE_PER_MILLION_USD, MAX_PRICE_SCALE};
use credex_pricing::cost::MAX_TOKENS_PER_KIND;
use credex_pricing::litellm::parse_json_number;
use credex_pricing::tokens::{MAX_CHAT_MESSAGES, MAX_INPUT_BYTES};
use credex_pricing::{DecayCurve, DecayFactor, Price, TokenUsage};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::budgets::{Budget, NAME_MAX};
use crate::input;
use crate::portal::{cr, parse_cr};
use crate::routes::budgets::BudgetBody;
use crate::routes::estimate::{Estimate, Prompt, CHAT_LABEL_MAX_CHARS};
use crate::routes::ledger::{TransferBatch, METADATA_MAX_CHARS};
use crate::routes::market::{CurveBody, ListingBody, OrderBody};
use crate::routes::models::PriceRequest;
use crate::routes::reservations::{parse_request, ReservationBody};
use crate::routes::usage::{parse_event, UsageBody, FUTURE_SKEW_MICROS};
use crate::usage::reservations::RESERVATION_TIMEOUT_MAX;
use crate::usage::{LABEL_MAX, METADATA_MAX};

/// The server's clock in the bodies: 2026-11-27T06:12:00Z.
const NOW_MICROS: i64 = 1_795_759_920_000_000;

fn now() -> Timestamp {
    Timestamp::from_micros(NOW_MICROS)
}

fn scale_of(value: Decimal) -> u32 {
    value.normalize().scale()
}

// ---------------------------------------------------------------------------------------------
// money

/// Text that turns into money or a rate, as the product parses it: CR amounts typed in the
/// portal, catalog prices, decay floors and fee rates, buyback rates, LiteLLM's JSON numbers,
/// the CR face value, ledger amounts, and prices as the catalog's JSON stores them. Accepted
/// values are in range and round-trip (format, then parse, gives the same value).
pub fn money(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    cr_amount(text);
    catalog_price(text);
    fraction(text);
    buyback_rate(text);
    json_number(text);
    face_value(text);
    ledger_amount(text);
    price_json(text);
}

fn cr_amount(text: &str) {
    let Ok(micro) = parse_cr(text) else { return };
    assert!(
        i64::try_from(micro).is_ok(),
        "{text:?} gave {micro} µCR, beyond storage"
    );
    let shown = cr(i128::from(micro));
    assert_eq!(
        parse_cr(&shown),
        Ok(micro),
        "{text:?}: the portal shows {shown:?}"
    );
    let plain = format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000);
    assert_eq!(parse_cr(&plain), Ok(micro), "{text:?}: written {plain:?}");
}

fn catalog_price(text: &str) {
    let Ok(usd) = input::price("price", text) else {
        return;
    };
    assert!(
        !usd.is_sign_negative() || usd.is_zero(),
        "{text:?} gave {usd}"
    );
    assert!(
        usd <= Decimal::from(MAX_PRICE_PER_MILLION_USD),
        "{text:?} gave {usd}"
    );
    assert!(usd.scale() <= MAX_PRICE_SCALE, "{text:?} gave {usd}");
    let again = input::price("price", &usd.to_string()).expect("a price written back");
    assert_eq!((again, again.scale()), (usd, usd.scale()));
}

fn fraction(text: &str) {
    let admitted = input::is_fraction(text);
    let Ok(value) = input::decimal("floor", text, admitted) else {
        return;
    };
    assert!(
        value >= Decimal::ZERO && value < Decimal::ONE,
        "{text:?} gave {value}"
    );
    assert!(value.scale() <= 9);
    assert!(
        input::is_fraction(&value.to_string()),
        "{value} written back"
    );
    let factor = DecayFactor::from_decimal(value).expect("a fraction is a decay factor");
    assert_eq!(
        factor.as_decimal(),
        value,
        "a factor keeps the fraction exactly"
    );
    DecayCurve::linear(value).expect("a fraction is a floor");
    credex_matching::Fee::new(value, credex_matching::FeePayer::Seller)
        .expect("a fraction is a fee rate");
    let body = CurveBody::Stairstep {
        steps: 4,
        floor: text.to_owned(),
    };
    let curve = body.parse("curve").expect("the same floor in a curve");
    assert_eq!(curve.floor().as_decimal(), value);
}

fn buyback_rate(text: &str) {
    let admitted = input::is_buyback_rate(text);
    let Ok(rate) = input::decimal("rate", text, admitted) else {
        return;
    };
    assert!(
        rate > Decimal::ZERO && rate <= Decimal::ONE,
        "{text:?} gave {rate}"
    );
    assert!(scale_of(rate) <= 9);
    assert!(
        input::is_buyback_rate(&rate.to_string()),
        "{rate} written back"
    );
}

fn json_number(text: &str) {
    let Ok(value) = parse_json_number(text) else {
        return;
    };
    let written = value.to_string();
    assert_eq!(
        parse_json_number(&written),
        Ok(value),
        "{text:?} gave {written}"
    );
    // A number with no exponent has exactly the value its digits say. `from_str_exact` refuses
    // more than 28 decimal places even when the extra ones are trailing zeros, which
    // `parse_json_number` rightly drops (fuzz/regressions/money/json-number-trailing-zeros).
    if !text.contains(['e', 'E']) {
        if let Ok(exact) = Decimal::from_str_exact(text) {
            assert_eq!(exact, value, "{text:?}");
        }
    }
}

fn face_value(text: &str) {
    let Ok(value) = crate::config::face_value(text) else {
        return;
    };
    let usd = value.usd_per_cr();
    assert!(
        usd > Decimal::ZERO && usd <= Decimal::from(1_000_000),
        "{text:?} gave {usd}"
    );
    assert!(scale_of(usd) <= 6, "{text:?} gave {usd}");
    let again = crate::config::face_value(&usd.to_string()).expect("written back");
    assert_eq!(again.usd_per_cr(), usd);
}

fn ledger_amount(text: &str) {
    let Ok(amount) = serde_json::from_str::<Amount>(text) else {
        return;
    };
    assert!(
        (1..=AMOUNT_MAX).contains(&amount.get()),
        "{text:?} gave {amount}"
    );
    let written = serde_json::to_string(&amount).expect("an amount serializes");
    assert_eq!(serde_json::from_str::<Amount>(&written).ok(), Some(amount));
}

fn price_json(text: &str) {
    let json = serde_json::json!({"input": text, "cached_input": text, "cache_write": text,
        "output": text});
    let Ok(price) = serde_json::from_value::<Price>(json) else {
        return;
    };
    let written = serde_json::to_string(&price).expect("a price serializes");
    let again: Price = serde_json::from_str(&written).expect("a written price is read back");
    assert_eq!(again, price, "{text:?} written as {written}");
    let input = price.base().input();
    assert!(
        !input.is_sign_negative() || input.is_zero(),
        "{text:?} gave {input}"
    );
    assert!(input <= Decimal::from(MAX_PRICE_PER_MILLION_USD));
}

// ---------------------------------------------------------------------------------------------
// dto

/// The bytes as the JSON body of each request DTO in turn, then its conversion into domain
/// types; whatever converts satisfies the limits the routes and the domain types state.
pub fn dto(data: &[u8]) {
    if let Ok(batch) = serde_json::from_slice::<TransferBatch>(data) {
        transfers(&batch);
    }
    if let Ok(body) = serde_json::from_slice::<UsageBody>(data) {
        usage(body);
    }
    if let Ok(body) = serde_json::from_slice::<ReservationBody>(data) {
        reservation(body);
    }
    if let Ok(body) = serde_json::from_slice::<BudgetBody>(data) {
        budget(body);
    }
    if let Ok(body) = serde_json::from_slice::<ListingBody>(data) {
        listing(&body);
    }
    if let Ok(body) = serde_json::from_slice::<OrderBody>(data) {
        order(&body);
    }
    if let Ok(body) = serde_json::from_slice::<PriceRequest>(data) {
        price(&body);
    }
    if let Ok(body) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data) {
        estimate(body);
    }
}

fn check_label(label: Option<&str>) {
    if let Some(label) = label {
        assert!(
            (1..=LABEL_MAX).contains(&label.chars().count()),
            "{label:?}"
        );
        assert!(!label.chars().any(char::is_control), "{label:?}");
        assert!(!label.trim().is_empty(), "{label:?}");
    }
}

fn check_tokens(tokens: &TokenUsage) {
    let json = serde_json::to_value(tokens).expect("token counts serialize");
    for (kind, count) in json.as_object().expect("an object") {
        let count = count.as_u64().expect("a count");
        assert!(count <= MAX_TOKENS_PER_KIND, "{kind} = {count}");
    }
}

fn check_call(id: Uuid, model: &str) {
    assert!(!id.is_nil() && !id.is_max());
    assert!((1..=128).contains(&model.chars().count()), "{model:?}");
}

fn transfers(batch: &TransferBatch) {
    for (index, request) in batch.transfers.iter().enumerate() {
        let Ok(transfer) = request.parse(index) else {
            continue;
        };
        let metadata = transfer.metadata().as_str();
        assert!(
            metadata.chars().count() <= METADATA_MAX_CHARS,
            "{metadata:?}"
        );
        assert!(!metadata.chars().any(char::is_control), "{metadata:?}");
        let movement = match transfer.action() {
            Action::Move(movement) | Action::Reserve { movement, .. } => Some(movement),
            Action::Post { amount, .. } => {
                assert!(amount.is_none_or(|a| (1..=AMOUNT_MAX).contains(&a.get())));
                None
            }
            Action::Void { .. } => None,
        };
        if let Some(movement) = movement {
            assert!((1..=AMOUNT_MAX).contains(&movement.amount().get()));
            assert_ne!(movement.debit_account_id(), movement.credit_account_id());
        }
    }
}

fn usage(body: UsageBody) {
    for (index, event) in body.events.into_iter().enumerate() {
        let Ok(event) = parse_event(index, event, now(), None) else {
            continue;
        };
        check_call(event.id, &event.model);
        check_tokens(&event.tokens);
        assert!(
            event.at <= now().plus_micros(FUTURE_SKEW_MICROS),
            "{:?}",
            event.at
        );
        check_label(event.task.as_deref());
        check_label(event.conversation.as_deref());
        if let Some(metadata) = &event.metadata {
            assert!(metadata.len() <= METADATA_MAX, "{} bytes", metadata.len());
            let value: serde_json::Value = serde_json::from_str(metadata).expect("JSON");
            assert!(value.is_object());
        }
    }
}

fn reservation(body: ReservationBody) {
    let Ok(request) = parse_request(body, None) else {
        return;
    };
    check_call(request.id, &request.model);
    check_tokens(&request.tokens);
    assert!((1..=RESERVATION_TIMEOUT_MAX).contains(&request.timeout_seconds));
    check_label(request.task.as_deref());
    check_label(request.conversation.as_deref());
}

fn budget(body: BudgetBody) {
    let Ok(new) = body.parse() else { return };
    let org = credex_ledger::OrgId::new(Uuid::from_u128(0x0a01)).expect("an org id");
    let Ok(budget) = Budget::new(Uuid::from_u128(0x0b01), org, new, now()) else {
        return;
    };
    assert!((1..=NAME_MAX).contains(&budget.name().chars().count()));
    assert!((1..=crate::budgets::LIMIT_MAX).contains(&budget.limit_micro_cr()));
    assert!(!budget.thresholds().is_empty());
    assert!(budget.thresholds().windows(2).all(|pair| pair[0] < pair[1]));
    let record = budget.record();
    let again = Budget::parse(&record).expect("a stored budget is read back");
    assert_eq!(again.record(), record);
}

fn listing(body: &ListingBody) {
    let id = Uuid::from_u128(0x1_0001);
    let org = credex_ledger::OrgId::new(Uuid::from_u128(0x0a01)).expect("an org id");
    let Ok(request) = body.parse(id, org) else {
        return;
    };
    assert!((1..=QUANTITY_MAX).contains(&request.quantity));
    assert!((1..=ASK_MAX).contains(&request.ask_per_1m_micro_cr));
    assert!(request
        .min_fill
        .is_none_or(|m| (1..=request.quantity).contains(&m)));
    assert!(
        request.asset.as_str().starts_with("TOK."),
        "{}",
        request.asset
    );
    Listing::new(ListingFields {
        id: ListingId::new(id).expect("a listing id"),
        seller: org,
        quantity: request.quantity,
        min_fill: request.min_fill,
        ask_per_1m_micro_cr: request.ask_per_1m_micro_cr,
        seq: 1,
        created_at: now(),
    })
    .expect("what the route accepts, the book accepts");
}

fn order(body: &OrderBody) {
    let org = credex_ledger::OrgId::new(Uuid::from_u128(0x0a01)).expect("an org id");
    let Ok(request) = body.parse(Uuid::from_u128(0x2_0001), org) else {
        return;
    };
    assert!((1..=QUANTITY_MAX).contains(&request.quantity));
    match request.limit {
        Limit::PricePer1m(price) => assert!(price <= ASK_MAX),
        Limit::MaxTotal(total) => assert!((1..=AMOUNT_MAX).contains(&total)),
    }
    BuyOrder::new(org, request.quantity, request.limit, None)
        .expect("what the route accepts, the book accepts");
}

fn price(body: &PriceRequest) {
    let Ok(dated) = body.parse("", now()) else {
        return;
    };
    assert!(dated.effective_from() >= now());
    let price = dated.price();
    let all = std::iter::once(price.base()).chain(price.tiers().iter().map(|t| t.rates()));
    for rates in all {
        for usd in [
            rates.input(),
            rates.cached_input(),
            rates.cache_write(),
            rates.output(),
        ] {
            assert!(usd >= Decimal::ZERO && usd <= Decimal::from(MAX_PRICE_PER_MILLION_USD));
            assert!(usd.scale() <= MAX_PRICE_SCALE, "{usd}");
        }
    }
    let written = serde_json::to_string(&dated).expect("a dated price serializes");
    let again: credex_pricing::DatedPrice =
        serde_json::from_str(&written).expect("a dated price is read back");
    assert_eq!(&again, &dated, "written as {written}");
}

fn estimate(body: serde_json::Map<String, serde_json::Value>) {
    let Ok(estimate) = Estimate::parse(body) else {
        return;
    };
    assert!(estimate.expected_output_tokens <= MAX_TOKENS_PER_KIND);
    assert!(estimate.cached_input_tokens <= MAX_TOKENS_PER_KIND);
    assert!(input::is_model_id(&estimate.model), "{:?}", estimate.model);
    match &estimate.prompt {
        Prompt::Text(text) => assert!(text.len() <= MAX_INPUT_BYTES),
        Prompt::Chat(messages) => {
            assert!(messages.len() <= MAX_CHAT_MESSAGES);
            for message in messages {
                assert!(message.role.chars().count() <= CHAT_LABEL_MAX_CHARS);
                let name = message.name.as_deref().unwrap_or_default();
                assert!(name.chars().count() <= CHAT_LABEL_MAX_CHARS);
            }
        }
    }
    let _ = (&estimate.org_id, &estimate.at);
}
