//! The catalog's rules as admins and the usage path meet them: dated prices, lookups by alias,
//! admin changes that never rewrite the past, organization prices, tier thresholds, bad input.

use credex_ledger::Timestamp;
use credex_pricing::catalog::{
    resolve, Catalog, CatalogError, DatedPrice, ModelEntry, ModelEntryError, OrgPrices, Price,
    PriceError, PriceLookupError, PriceSchedule, PriceSource, Rates, ScheduleError, Tier,
    TokenKind, MAX_ALIASES,
};
use credex_pricing::cost::{cost, CrFaceValue, TokenUsage};
use credex_pricing::date::parse_instant;
use credex_pricing::ids::{ModelClass, ModelId, Provider};
use rust_decimal::Decimal;

fn at(text: &str) -> Timestamp {
    parse_instant(text).unwrap()
}

fn flat(input: &str, output: &str) -> Price {
    let d = |t: &str| t.parse::<Decimal>().unwrap();
    Price::flat(Rates::new(d(input), d(input), d(input), d(output)).unwrap())
}

fn id(text: &str) -> ModelId {
    ModelId::parse(text).unwrap()
}

fn model(name: &str, aliases: &[&str], from: &str, price: Price) -> ModelEntry {
    ModelEntry::new(
        id(name),
        Provider::parse("openai").unwrap(),
        aliases.iter().map(|a| id(a)).collect(),
        ModelClass::std(),
        Some(128_000),
        PriceSchedule::single(at(from), price).unwrap(),
    )
    .unwrap()
}

/// µCR for `input` uncached input and `output` tokens of `name` at `when`.
fn charge(
    catalog: &Catalog,
    org: Option<&OrgPrices>,
    name: &str,
    when: &str,
    input: u64,
    output: u64,
) -> u64 {
    let (_, resolved) = catalog.price_at(name, org, at(when)).unwrap();
    let usage = TokenUsage::new(input, 0, 0, output).unwrap();
    cost(resolved.price, &usage)
        .unwrap()
        .micro_cr(CrFaceValue::ONE_USD)
        .unwrap()
}

#[test]
fn usage_is_priced_with_the_price_in_force_when_it_occurred() {
    let catalog = Catalog::builtin().unwrap();
    // gpt-4o: 5/15 USD per 1M from 2024-05-13, 2.5/10 from 2024-10-02.
    let cases = [
        ("2024-05-13", 5_000 + 15_000),
        ("2024-10-01T23:59:59.999999Z", 5_000 + 15_000),
        ("2024-10-02", 2_500 + 10_000),
        ("2026-11-26T12:00:00Z", 2_500 + 10_000),
    ];
    for (when, micro_cr) in cases {
        assert_eq!(
            charge(&catalog, None, "gpt-4o", when, 1_000, 1_000),
            micro_cr,
            "{when}"
        );
    }
    assert_eq!(
        catalog.price_at("gpt-4o", None, at("2024-05-12T23:59:59Z")),
        Err(PriceLookupError::NoPriceYet {
            model: id("gpt-4o"),
            at: "2024-05-12T23:59:59Z".to_owned()
        })
    );
}

#[test]
fn admins_add_prices_from_now_on_and_never_rewrite_the_past() {
    let mut catalog = Catalog::builtin().unwrap();
    let now = at("2026-11-26T10:00:00Z");
    let before = charge(
        &catalog,
        None,
        "gpt-4.1",
        "2026-11-26T09:59:59Z",
        1_000_000,
        0,
    );

    // A price in the past is refused, and nothing changes.
    let refused = catalog.add_price("gpt-4.1", at("2026-11-26T09:59:59Z"), flat("1", "4"), now);
    assert_eq!(
        refused,
        Err(CatalogError::Schedule {
            model: id("gpt-4.1"),
            source: ScheduleError::InThePast {
                effective_from: "2026-11-26T09:59:59Z".to_owned(),
                now: "2026-11-26T10:00:00Z".to_owned(),
            }
        })
    );
    // A future price, then a correction of it before it takes effect.
    let december = at("2026-12-01");
    catalog
        .add_price("GPT-4.1", december, flat("1", "4"), now)
        .unwrap();
    catalog
        .add_price("gpt-4.1", december, flat("1.5", "6"), now)
        .unwrap();
    // A price from now on.
    catalog
        .add_price("gpt-4.1-2025-04-14", now, flat("1.8", "7"), now)
        .unwrap();
    // That one is in force now: it cannot be replaced any more.
    assert_eq!(
        catalog.add_price("gpt-4.1", now, flat("0", "0"), now),
        Err(CatalogError::Schedule {
            model: id("gpt-4.1"),
            source: ScheduleError::AlreadyInForce {
                effective_from: "2026-11-26T10:00:00Z".to_owned()
            }
        })
    );

    assert_eq!(
        charge(
            &catalog,
            None,
            "gpt-4.1",
            "2026-11-26T09:59:59Z",
            1_000_000,
            0
        ),
        before
    );
    assert_eq!(
        charge(
            &catalog,
            None,
            "gpt-4.1",
            "2026-11-26T10:00:00Z",
            1_000_000,
            0
        ),
        1_800_000
    );
    assert_eq!(
        charge(&catalog, None, "gpt-4.1", "2026-12-01", 1_000_000, 0),
        1_500_000
    );
    let dates: Vec<_> = catalog
        .get("gpt-4.1")
        .unwrap()
        .prices()
        .entries()
        .iter()
        .map(DatedPrice::effective_from)
        .collect();
    assert_eq!(dates, [at("2025-04-14"), now, december]);

    assert_eq!(
        catalog.add_price("gpt-9", now, flat("1", "1"), now),
        Err(CatalogError::UnknownModel {
            name: "gpt-9".to_owned()
        })
    );
    // Schedules keep their instants to the microsecond through JSON.
    let text = serde_json::to_string(&catalog).unwrap();
    assert!(text.contains(r#""effective_from":"2026-11-26T10:00:00Z""#));
    assert_eq!(Catalog::from_json(&text).unwrap(), catalog);
}

#[test]
fn models_are_found_by_id_or_alias_in_any_case() {
    let catalog = Catalog::builtin().unwrap();
    let cases = [
        ("gpt-4o-mini", Some("gpt-4o-mini")),
        ("GPT-4o-Mini-2024-07-18", Some("gpt-4o-mini")),
        ("claude-opus-4-7-20260416", Some("claude-opus-4-7")),
        ("Gemini-Pro-Latest", Some("gemini-3.1-pro-preview")),
        (
            "deepinfra/meta-llama/llama-4-scout-17b-16e-instruct",
            Some("deepinfra/meta-llama/llama-4-scout-17b-16e-instruct"),
        ),
        (
            "DeepInfra/Meta-Llama/Llama-4-Scout-17B-16E-Instruct",
            Some("deepinfra/meta-llama/llama-4-scout-17b-16e-instruct"),
        ),
        ("gpt-4o-mini ", None),
        ("", None),
        ("no-such-model", None),
    ];
    for (name, expected) in cases {
        assert_eq!(
            catalog.get(name).map(|m| m.id().as_str()),
            expected,
            "{name:?}"
        );
    }
}

#[test]
fn added_models_need_free_names_and_present_prices() {
    let mut catalog = Catalog::builtin().unwrap();
    let now = at("2026-11-26T10:00:00Z");
    let count = catalog.models().len();

    let taken_alias = model(
        "gpt-x",
        &["GPT-4o-mini-2024-07-18"],
        "2026-11-26T10:00:00Z",
        flat("1", "2"),
    );
    assert_eq!(
        catalog.add_model(taken_alias, now),
        Err(CatalogError::NameTaken {
            name: id("gpt-4o-mini-2024-07-18"),
            first: id("gpt-4o-mini"),
            second: id("gpt-x"),
        })
    );
    let taken_id = model("o3-2025-04-16", &[], "2026-12-01", flat("1", "2"));
    assert!(matches!(
        catalog.add_model(taken_id, now),
        Err(CatalogError::NameTaken { .. })
    ));
    let in_the_past = model("gpt-x", &[], "2026-11-26T09:00:00Z", flat("1", "2"));
    assert!(matches!(
        catalog.add_model(in_the_past, now),
        Err(CatalogError::Schedule {
            source: ScheduleError::InThePast { .. },
            ..
        })
    ));
    assert_eq!(catalog.models().len(), count);

    catalog
        .add_model(
            model(
                "gpt-x",
                &["gpt-x-2026-11-26"],
                "2026-11-26T10:00:00Z",
                flat("1", "2"),
            ),
            now,
        )
        .unwrap();
    assert_eq!(
        catalog.get("GPT-X-2026-11-26").map(|m| m.id().as_str()),
        Some("gpt-x")
    );
    assert_eq!(
        charge(&catalog, None, "gpt-x", "2026-11-27", 1_000_000, 1_000_000),
        3_000_000
    );

    // Two models of a new catalog may not share a name either.
    let twins = vec![
        model("a", &["shared"], "2026-01-01", flat("1", "1")),
        model("b", &["Shared"], "2026-01-01", flat("1", "1")),
    ];
    assert!(matches!(
        Catalog::new(twins),
        Err(CatalogError::NameTaken { .. })
    ));
}

#[test]
fn an_org_price_wins_once_in_force() {
    let catalog = Catalog::builtin().unwrap();
    let now = at("2026-11-26T10:00:00Z");
    let mut org = OrgPrices::new();
    let sonnet = catalog.get("claude-sonnet-4-5-20250929").unwrap();
    org.add_price(sonnet, at("2026-12-01"), flat("2", "10"), now)
        .unwrap();

    let list = charge(
        &catalog,
        None,
        "claude-sonnet-4-5",
        "2026-12-02",
        1_000_000,
        0,
    );
    assert_eq!(list, 3_000_000);
    assert_eq!(
        charge(
            &catalog,
            Some(&org),
            "claude-sonnet-4-5",
            "2026-11-30",
            1_000_000,
            0
        ),
        3_000_000
    );
    assert_eq!(
        charge(
            &catalog,
            Some(&org),
            "claude-sonnet-4-5",
            "2026-12-01",
            1_000_000,
            0
        ),
        2_000_000
    );
    let (_, resolved) = catalog
        .price_at("Claude-Sonnet-4-5", Some(&org), at("2027-01-01"))
        .unwrap();
    assert_eq!(
        (resolved.source, resolved.effective_from),
        (PriceSource::Org, at("2026-12-01"))
    );
    // Other models keep the catalog price.
    let (_, other) = catalog
        .price_at("gpt-4o", Some(&org), at("2027-01-01"))
        .unwrap();
    assert_eq!(other.source, PriceSource::Catalog);

    // Org prices follow the same rule: never in the past.
    assert!(matches!(
        org.add_price(sonnet, at("2026-11-01"), flat("1", "1"), now),
        Err(CatalogError::Schedule {
            source: ScheduleError::InThePast { .. },
            ..
        })
    ));
    let text = serde_json::to_string(&org).unwrap();
    assert!(
        text.starts_with(r#"{"claude-sonnet-4-5":[{"effective_from":"2026-12-01","#),
        "{text}"
    );
    assert_eq!(serde_json::from_str::<OrgPrices>(&text).unwrap(), org);

    // `resolve` on bare schedules: nothing before either starts.
    let catalog_schedule = PriceSchedule::single(at("2026-01-01"), flat("1", "1")).unwrap();
    let org_schedule = PriceSchedule::single(at("2025-01-01"), flat("9", "9")).unwrap();
    assert_eq!(
        resolve(&catalog_schedule, Some(&org_schedule), at("2024-12-31")),
        None
    );
    let early = resolve(&catalog_schedule, Some(&org_schedule), at("2025-06-01")).unwrap();
    assert_eq!(early.source, PriceSource::Org);
    let plain = resolve(&catalog_schedule, None, at("2026-06-01")).unwrap();
    assert_eq!(plain.source, PriceSource::Catalog);
}

#[test]
fn the_tier_starts_just_above_its_threshold() {
    let catalog = Catalog::builtin().unwrap();
    let when = at("2026-11-26");
    let tier_of = |name: &str, input, cached, write| {
        let (_, resolved) = catalog.price_at(name, None, when).unwrap();
        let usage = TokenUsage::new(input, cached, write, 10).unwrap();
        cost(resolved.price, &usage)
            .unwrap()
            .tier_above_prompt_tokens()
    };
    // Gemini 2.5 Pro: above 200,000 prompt tokens, cache reads and writes counted.
    assert_eq!(tier_of("gemini-2.5-pro", 200_000, 0, 0), None);
    assert_eq!(tier_of("gemini-2.5-pro", 150_000, 50_000, 0), None);
    assert_eq!(tier_of("gemini-2.5-pro", 150_000, 50_000, 1), Some(200_000));
    assert_eq!(tier_of("gemini-2.5-pro", 200_001, 0, 0), Some(200_000));
    // xAI bills its tier from exactly 200,000 prompt tokens on.
    assert_eq!(tier_of("grok-4.20", 199_999, 0, 0), None);
    assert_eq!(tier_of("grok-4.20", 100_000, 100_000, 0), Some(199_999));

    // The tier bills every kind, output included.
    let (_, gemini) = catalog.price_at("gemini-2.5-pro", None, when).unwrap();
    let above = TokenUsage::new(200_001, 0, 0, 1_000_000).unwrap();
    let below = TokenUsage::new(200_000, 0, 0, 1_000_000).unwrap();
    let output = |usage| cost(gemini.price, &usage).unwrap().usd(TokenKind::Output);
    assert_eq!(output(below), Decimal::from(10));
    assert_eq!(output(above), Decimal::from(15));
}

#[test]
fn bad_entries_are_refused_with_the_right_error() {
    let d = |t: &str| t.parse::<Decimal>().unwrap();
    let one = Decimal::ONE;
    assert_eq!(
        Rates::new(one, d("-0.5"), one, one),
        Err(PriceError::Negative {
            kind: TokenKind::CachedInput
        })
    );
    assert_eq!(
        Rates::new(one, one, one, d("100001")),
        Err(PriceError::TooLarge {
            kind: TokenKind::Output
        })
    );
    let rates = Rates::new(one, one, one, one).unwrap();
    let tier = |n| Tier::new(n, rates.clone()).unwrap();
    assert_eq!(
        Price::new(rates.clone(), vec![tier(5), tier(5)]),
        Err(PriceError::TiersNotAscending)
    );

    let dated = |when: &str| DatedPrice::new(at(when), Price::flat(rates.clone()));
    assert_eq!(PriceSchedule::new(vec![]), Err(ScheduleError::Empty));
    assert_eq!(
        PriceSchedule::new(vec![dated("2026-02-01"), dated("2026-01-01")]),
        Err(ScheduleError::NotAscending)
    );
    assert_eq!(
        PriceSchedule::new(vec![dated("2026-01-01"), dated("2026-01-01")]),
        Err(ScheduleError::NotAscending)
    );
    assert_eq!(
        PriceSchedule::single(Timestamp::from_micros(-1), Price::flat(rates.clone())),
        Err(ScheduleError::OutOfRange)
    );

    let schedule = PriceSchedule::single(at("2026-01-01"), Price::flat(rates)).unwrap();
    let entry = |aliases: Vec<ModelId>, window| {
        ModelEntry::new(
            id("m"),
            Provider::parse("openai").unwrap(),
            aliases,
            ModelClass::pro(),
            window,
            schedule.clone(),
        )
    };
    assert_eq!(
        entry(vec![id("M")], None),
        Err(ModelEntryError::AliasIsId { alias: id("m") })
    );
    assert_eq!(
        entry(vec![id("a"), id("A")], None),
        Err(ModelEntryError::DuplicateAlias { alias: id("a") })
    );
    let many = (0..=MAX_ALIASES).map(|i| id(&format!("a{i}"))).collect();
    assert_eq!(entry(many, None), Err(ModelEntryError::TooManyAliases));
    assert_eq!(entry(vec![], Some(0)), Err(ModelEntryError::ContextWindow));

    // A stored catalog that breaks a rule does not load, and says why.
    let document = |price: &str| {
        format!(
            r#"{{"models":[{{"id":"m","provider":"openai","class":"std","prices":[{{"effective_from":"2026-01-01",{price}}}]}}]}}"#
        )
    };
    let cases = [
        (
            r#""input":"-1","cached_input":"1","cache_write":"1","output":"1""#,
            "the input price must not be negative",
        ),
        (
            r#""input":1,"cached_input":"1","cache_write":"1","output":"1""#,
            r#"invalid type: integer `1`, expected a decimal number in a string, such as "12.5""#,
        ),
        (
            r#""input":"1e-6","cached_input":"1","cache_write":"1","output":"1""#,
            "`1e-6` is not a decimal number",
        ),
        (
            r#""input":"1","cached_input":"1","cache_write":"1","output":"1","discount":"1""#,
            "unknown field `discount`",
        ),
        (
            r#""input":"1","cached_input":"1","cache_write":"1""#,
            "missing field `output`",
        ),
    ];
    for (price, message) in cases {
        let error = Catalog::from_json(&document(price)).unwrap_err();
        assert!(
            matches!(&error, CatalogError::Document(text) if text.contains(message)),
            "{price}: {error}"
        );
    }
    let bad_date = r#"{"models":[{"id":"m","provider":"openai","class":"std","prices":[{"effective_from":"2026-02-30","input":"1","cached_input":"1","cache_write":"1","output":"1"}]}]}"#;
    assert!(Catalog::from_json(bad_date)
        .unwrap_err()
        .to_string()
        .contains("that day does not exist"));
    assert!(matches!(
        Catalog::from_json("[]"),
        Err(CatalogError::Document(_))
    ));
}
