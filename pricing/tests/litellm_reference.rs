//! Credex's import of LiteLLM's real price map, and its costs against LiteLLM's own.
//!
//! Fixtures (see `fixtures/litellm_model_prices.README.md`): the map of litellm 1.110.2 and
//! `litellm_reference.json`, what `litellm.cost_per_token` returns for 689 calls.
//!
//! Tolerance: LiteLLM computes in `f64`, so its figures carry binary rounding noise around the
//! 16th significant digit; Credex's are exact decimals. They must agree to 12 significant
//! digits: |credex − litellm| ≤ 1e-12 × |litellm| (and both zero when LiteLLM says zero).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use credex_pricing::catalog::{Catalog, ModelEntry};
use credex_pricing::cost::{cost, TokenUsage};
use credex_pricing::date::parse_date;
use credex_pricing::litellm::{import, parse_json_number, Import, NoteKind, SkipReason};
use rust_decimal::Decimal;
use serde::Deserialize;

const MAP: &str = include_str!("fixtures/litellm_model_prices.json");
const REFERENCE: &str = include_str!("fixtures/litellm_reference.json");
const CATALOG: &str = include_str!("../data/catalog.json");

#[derive(Deserialize)]
struct Reference {
    litellm_version: String,
    cases: Vec<Case>,
}

#[derive(Deserialize, Debug)]
struct Case {
    model: String,
    provider: String,
    prompt_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation_input_tokens: u64,
    completion_tokens: u64,
    prompt_cost_usd: String,
    completion_cost_usd: String,
}

fn imported() -> Import {
    import(MAP, parse_date("2026-11-26").unwrap()).expect("the real map imports")
}

fn by_id(import: &Import) -> HashMap<&str, &ModelEntry> {
    import.models.iter().map(|m| (m.id().as_str(), m)).collect()
}

/// Equal to 12 significant digits (see the module docs).
fn agrees(credex: Decimal, litellm: Decimal) -> bool {
    let tolerance = litellm.abs() * Decimal::new(1, 12);
    (credex - litellm).abs() <= tolerance
}

#[test]
fn the_real_map_imports_thousands_of_models() {
    let import = imported();
    let entries = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(MAP)
        .unwrap()
        .len();
    let aliases: usize = import.models.iter().map(|m| m.aliases().len()).sum();
    assert_eq!(
        import.models.len() + aliases + import.skipped.len(),
        entries,
        "every entry is a model, an alias or a skip"
    );
    assert!(import.models.len() >= 3000, "{}", import.models.len());
    assert!(aliases >= 90, "{aliases}");

    let counts = import.skip_counts();
    eprintln!(
        "{entries} entries: {} models, {aliases} aliases, skipped: {counts:?}",
        import.models.len()
    );
    // `alias_of` rows name their target.
    let by_id = by_id(&import);
    let opus = by_id["claude-opus-5-5"];
    assert!(opus
        .aliases()
        .iter()
        .any(|a| a.as_str() == "claude-opus-latest"));
    let sample = import.skipped.iter().find(|s| s.key == "sample_spec");
    assert_eq!(sample.map(|s| &s.reason), Some(&SkipReason::SampleSpec));
    // Non-text modes are skipped with their mode named.
    let embedding = import
        .skipped
        .iter()
        .find(|s| s.key == "text-embedding-3-small")
        .map(|s| s.reason.to_string());
    assert_eq!(
        embedding.as_deref(),
        Some("not a text model (mode `embedding`)")
    );
    for label in ["not_a_text_model", "no_mode", "no_price", "invalid_id"] {
        assert!(counts.contains_key(label), "no entry skipped as {label}");
    }
    // A wildcard key is not a model id.
    assert!(import
        .skipped
        .iter()
        .any(|s| s.key.contains('*') && s.reason.label() == "invalid_id"));

    let notes: BTreeSet<_> = import.notes.iter().map(|n| n.kind).collect();
    assert!(notes.contains(&NoteKind::OffPeakPricingIgnored));
    let deepseek = import
        .notes
        .iter()
        .any(|n| n.key == "deepseek/deepseek-v4-pro" && n.kind == NoteKind::OffPeakPricingIgnored);
    assert!(deepseek);
}

/// The one known difference: with a `tiered_pricing` table (Alibaba's `dashscope` models),
/// LiteLLM prices a call with zero prompt tokens at the model's flat rates, which those models do
/// not have, so it charges nothing; Credex charges the first tier's prices.
fn known_divergence(case: &Case) -> bool {
    case.provider == "dashscope" && case.prompt_tokens == 0
}

#[test]
fn credex_costs_equal_litellm_costs() {
    let reference: Reference = serde_json::from_str(REFERENCE).unwrap();
    assert_eq!(reference.litellm_version, "1.110.2");
    let import = imported();
    let models = by_id(&import);
    let at = parse_date("2026-11-26").unwrap();

    let mut mismatches = Vec::new();
    for case in &reference.cases {
        let model = models
            .get(case.model.to_ascii_lowercase().as_str())
            .unwrap_or_else(|| panic!("{} was not imported", case.model));
        let price = model.prices().price_at(at).unwrap().price();
        let usage = TokenUsage::from_prompt_total(
            case.prompt_tokens,
            case.cache_read_input_tokens,
            case.cache_creation_input_tokens,
            case.completion_tokens,
        )
        .unwrap();
        let breakdown = cost(price, &usage).unwrap();
        use credex_pricing::catalog::TokenKind::*;
        let prompt = breakdown.usd(Input) + breakdown.usd(CachedInput) + breakdown.usd(CacheWrite);
        let completion = breakdown.usd(Output);
        let expected_prompt = parse_json_number(&case.prompt_cost_usd.replace('E', "e")).unwrap();
        let expected_completion =
            parse_json_number(&case.completion_cost_usd.replace('E', "e")).unwrap();
        if known_divergence(case) {
            // Credex bills the output at the first tier's price; LiteLLM at none.
            assert!(
                completion > Decimal::ZERO && expected_completion.is_zero(),
                "{case:?}"
            );
            continue;
        }
        if !agrees(prompt, expected_prompt) || !agrees(completion, expected_completion) {
            mismatches.push(format!(
                "{case:?}: credex {prompt} + {completion}, tier {:?}",
                breakdown.tier_above_prompt_tokens()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        reference.cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn the_reference_covers_providers_tiers_and_caches() {
    let reference: Reference = serde_json::from_str(REFERENCE).unwrap();
    let models: BTreeSet<_> = reference.cases.iter().map(|c| &c.model).collect();
    let providers: BTreeSet<_> = reference.cases.iter().map(|c| &c.provider).collect();
    assert!(models.len() >= 25, "{}", models.len());
    assert!(providers.len() >= 8, "{providers:?}");
    let import = imported();
    let by_id = by_id(&import);
    let at = parse_date("2026-11-26").unwrap();
    let mut above_a_tier = 0;
    let mut at_a_threshold = 0;
    for case in &reference.cases {
        let model = by_id[case.model.to_ascii_lowercase().as_str()];
        let price = model.prices().price_at(at).unwrap().price();
        let usage = TokenUsage::from_prompt_total(
            case.prompt_tokens,
            case.cache_read_input_tokens,
            case.cache_creation_input_tokens,
            case.completion_tokens,
        )
        .unwrap();
        if price.rates_for(usage.prompt_tokens()).0.is_some() && usage.cached_input() > 0 {
            above_a_tier += 1;
        }
        if price
            .tiers()
            .iter()
            .any(|t| t.above_prompt_tokens() == usage.prompt_tokens())
        {
            at_a_threshold += 1;
        }
    }
    assert!(above_a_tier >= 50, "{above_a_tier}");
    assert!(at_a_threshold >= 20, "{at_a_threshold}");
}

/// The shipped catalog was made from the same map by `data/make_catalog.py`: every model's
/// current price, class and context window must be what the importer reads from that map.
#[test]
fn the_builtin_catalog_agrees_with_the_import() {
    #[derive(Deserialize)]
    struct Document {
        models: Vec<Source>,
    }
    #[derive(Deserialize)]
    struct Source {
        id: String,
        litellm_key: String,
    }
    let document: Document = serde_json::from_str(CATALOG).unwrap();
    let catalog = Catalog::builtin().unwrap();
    let import = imported();
    let by_id = by_id(&import);
    let at = parse_date("2026-11-26").unwrap();
    for source in &document.models {
        let ours = catalog.get(&source.id).unwrap();
        let theirs = by_id[source.litellm_key.to_ascii_lowercase().as_str()];
        let our_price = ours.prices().price_at(at).unwrap().price();
        let their_price = theirs.prices().price_at(at).unwrap().price();
        assert_eq!(our_price, their_price, "{}", source.id);
        assert_eq!(ours.class(), theirs.class(), "{}", source.id);
        assert_eq!(
            ours.context_window_tokens(),
            theirs.context_window_tokens(),
            "{}",
            source.id
        );
    }
}
