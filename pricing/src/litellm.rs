//! Imports LiteLLM's `model_prices_and_context_window.json` map into catalog entries.
//!
//! Text in, entries out: no I/O. Every number is read from the JSON text as a decimal, never
//! through a binary float (`2.5e-07` is exactly 0.00000025), converted from USD per token to USD
//! per 1M tokens, and rounded half-to-even to 10 decimal places ([`MAX_PRICE_SCALE`]), which
//! removes the float artifacts of the map (`1.4999999999999999e-07` per token becomes 0.15 per
//! 1M) and is far below LiteLLM's own `f64` precision.
//!
//! # What is imported, by LiteLLM's own rules (litellm 1.110.2, `generic_cost_per_token`)
//!
//! - Entries whose `mode` is `chat`, `completion` or `responses`. Everything else (embeddings,
//!   images, audio, rerank, …) is skipped with a reason, as is the `sample_spec` entry.
//! - Base prices: `input_cost_per_token` and `output_cost_per_token` (both required),
//!   `cache_read_input_token_cost` and `cache_creation_input_token_cost`. A missing cache price is
//!   the input price, except for the `fireworks_ai` provider, whose missing cache-read price is
//!   half the input price (LiteLLM's `FIREWORKS_AI_DEFAULT_CACHE_READ_RATE_RATIO`).
//! - Long-context tiers from `<price>_above_<N>k_tokens` (or `_above_<N>_tokens`) keys: above N
//!   (× 1000 with `k`) prompt tokens, the tier's prices bill every token. A price the tier does
//!   not name is the tier below's, except a cache price that neither the base nor a lower tier
//!   names, which is the tier's own input price. LiteLLM bills xAI's tiers from exactly N tokens on (`>=`), so an
//!   `xai` tier is written "above N − 1".
//! - Alibaba-style `tiered_pricing` tables (`range: [start, end]`, billed by the tier with
//!   `start < prompt tokens <= end`, the last tier above its end): the first range must start at
//!   0 and each next one where the last ended. The first tier is the base price; each further
//!   tier applies above its start. A tier's missing cache prices are its input price; its missing
//!   output price the model's. (LiteLLM prices a call with *zero* prompt tokens at the model's flat
//!   rates instead of the first tier; Credex uses the first tier.)
//! - `max_input_tokens`, else `max_tokens`, as the context window (optional).
//! - `litellm_provider` as the provider, the key (lowercased) as the model id, and the class by
//!   [`ModelClass::for_rates`]. A key that differs from an earlier one only in letter case is a
//!   duplicate and skipped (the first wins).
//! - An `alias_of` row (`"claude-opus-latest": {"alias_of": "claude-opus-5-5"}`) becomes an alias
//!   of the model it names, as LiteLLM serves it; it is skipped with a reason when the target is
//!   missing, is itself an alias row or was not imported, or when the name is taken. (LiteLLM's
//!   `aliases` lists are not read; the 1.110.2 map has none.)
//!
//! Not modelled, so ignored: service-tier prices (`_priority`, `_flex`, `_batches`, …), 1-hour
//! cache writes, `explicit_cache_read_input_token_cost` (only for explicit caches), per-image,
//! per-audio, per-second and per-query prices. Two of them change what a plain text call costs
//! and are reported as [`Note`]s: `off_peak_pricing` (Credex charges the standard price at all
//! hours) and an `output_cost_per_reasoning_token` that differs from the output price (Credex
//! bills reasoning tokens as output).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use credex_ledger::Timestamp;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::catalog::{
    ModelEntry, ModelEntryError, Price, PriceError, PriceSchedule, Rates, ScheduleError, Tier,
    MAX_ALIASES, MAX_CONTEXT_WINDOW_TOKENS, MAX_PRICE_SCALE, MAX_TIERS,
};
use crate::date::{FIRST_INSTANT, LAST_INSTANT};
use crate::ids::{ModelClass, ModelId, ModelIdError, Provider};

/// The largest map accepted (LiteLLM's is about 3.5 MB).
pub const MAX_MAP_BYTES: usize = 64 << 20;
/// The most entries a map may have.
pub const MAX_MAP_ENTRIES: usize = 100_000;
/// The modes imported.
pub const TEXT_MODES: [&str; 3] = ["chat", "completion", "responses"];

const INPUT: &str = "input_cost_per_token";
const OUTPUT: &str = "output_cost_per_token";
const CACHE_READ: &str = "cache_read_input_token_cost";
const CACHE_WRITE: &str = "cache_creation_input_token_cost";
const PRICE_KEYS: [&str; 4] = [INPUT, CACHE_READ, CACHE_WRITE, OUTPUT];
/// Providers whose tier applies from exactly N tokens on.
const INCLUSIVE_THRESHOLD_PROVIDERS: [&str; 1] = ["xai"];
/// Providers whose missing cache-read price is half the input price.
const HALF_PRICE_CACHE_READ_PROVIDERS: [&str; 1] = ["fireworks_ai"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("the map is larger than {MAX_MAP_BYTES} bytes")]
    TooLarge,
    #[error("the map has more than {MAX_MAP_ENTRIES} entries")]
    TooManyEntries,
    #[error("the map is not a JSON object of entries: {0}")]
    NotAMap(String),
    #[error("the imported prices cannot take effect then: {0}")]
    EffectiveFrom(ScheduleError),
}

/// Why an entry of the map was not imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("LiteLLM's sample entry, not a model")]
    SampleSpec,
    #[error("the entry is not a JSON object")]
    NotAnObject,
    #[error("no `mode`")]
    NoMode,
    #[error("not a text model (mode `{mode}`)")]
    NotATextModel { mode: String },
    #[error("no `{field}`")]
    NoPrice { field: &'static str },
    #[error("`{field}` is not a number: `{text}`")]
    UnparseableNumber { field: String, text: String },
    #[error("`{field}`: {error}")]
    BadPrice { field: String, error: PriceError },
    #[error(
        "`{field}` is not a context window of 1 to {MAX_CONTEXT_WINDOW_TOKENS} tokens: `{text}`"
    )]
    BadContextWindow { field: &'static str, text: String },
    #[error("no `litellm_provider`")]
    NoProvider,
    #[error("`{text}` is not a provider name")]
    InvalidProvider { text: String },
    #[error("the key is not a model id: {0}")]
    InvalidId(ModelIdError),
    #[error("the same model id as `{of}` (ids are case-insensitive)")]
    Duplicate { of: String },
    #[error("unsupported `tiered_pricing`: {why}")]
    TieredPricing { why: &'static str },
    #[error("{0}")]
    InvalidEntry(ModelEntryError),
    #[error("an alias of `{target}` that cannot be used: {why}")]
    UnusableAlias { target: String, why: &'static str },
}

impl SkipReason {
    /// A short stable label, for counting reasons.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::SampleSpec => "sample_spec",
            SkipReason::NotAnObject => "not_an_object",
            SkipReason::NoMode => "no_mode",
            SkipReason::NotATextModel { .. } => "not_a_text_model",
            SkipReason::NoPrice { .. } => "no_price",
            SkipReason::UnparseableNumber { .. } => "unparseable_number",
            SkipReason::BadPrice { .. } => "bad_price",
            SkipReason::BadContextWindow { .. } => "bad_context_window",
            SkipReason::NoProvider => "no_provider",
            SkipReason::InvalidProvider { .. } => "invalid_provider",
            SkipReason::InvalidId(_) => "invalid_id",
            SkipReason::Duplicate { .. } => "duplicate",
            SkipReason::TieredPricing { .. } => "tiered_pricing",
            SkipReason::InvalidEntry(_) => "invalid_entry",
            SkipReason::UnusableAlias { .. } => "unusable_alias",
        }
    }
}

/// An entry not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: String,
    pub reason: SkipReason,
}

/// Something about an imported model's LiteLLM price that Credex does not reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// `off_peak_pricing`: Credex charges the standard price at all hours.
    OffPeakPricingIgnored,
    /// `output_cost_per_reasoning_token` differs from the output price: Credex bills reasoning
    /// tokens as output.
    ReasoningPriceIgnored,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub key: String,
    pub kind: NoteKind,
}

/// The result of an import: the models, in map order, and every entry skipped with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Import {
    pub models: Vec<ModelEntry>,
    pub skipped: Vec<Skipped>,
    pub notes: Vec<Note>,
}

impl Import {
    /// How many entries were skipped for each [`SkipReason::label`].
    pub fn skip_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for skipped in &self.skipped {
            *counts.entry(skipped.reason.label()).or_insert(0) += 1;
        }
        counts
    }
}

/// Imports a LiteLLM price map. Every imported model gets one price, in force from
/// `effective_from`. An `alias_of` row becomes an alias of the model it names (as LiteLLM serves
/// it), not a model of its own.
pub fn import(map_json: &str, effective_from: Timestamp) -> Result<Import, ImportError> {
    if map_json.len() > MAX_MAP_BYTES {
        return Err(ImportError::TooLarge);
    }
    if !(FIRST_INSTANT..=LAST_INSTANT).contains(&effective_from) {
        return Err(ImportError::EffectiveFrom(ScheduleError::OutOfRange));
    }
    let entries = serde_json::from_str::<Entries<'_>>(map_json).map_err(|e| {
        if e.to_string().contains(TOO_MANY_ENTRIES) {
            ImportError::TooManyEntries
        } else {
            ImportError::NotAMap(e.to_string())
        }
    })?;
    let mut out = Import::default();
    // Every name taken so far (ids, then aliases), to the key that took it.
    let mut taken: HashMap<ModelId, String> = HashMap::new();
    let mut parsed: Vec<(String, Parsed)> = Vec::new();
    let mut pointers: Vec<(String, String)> = Vec::new();
    for (key, raw) in entries.0 {
        match entry(&key, raw) {
            Ok(Row::Model(model)) => match taken.get(&model.id) {
                Some(first) => out.skipped.push(Skipped {
                    reason: SkipReason::Duplicate { of: first.clone() },
                    key,
                }),
                None => {
                    taken.insert(model.id.clone(), key.clone());
                    parsed.push((key, *model));
                }
            },
            Ok(Row::AliasOf(target)) => pointers.push((key, target)),
            Err(reason) => out.skipped.push(Skipped { key, reason }),
        }
    }
    let aliases = resolve_aliases(pointers, &parsed, &mut taken, &mut out.skipped);
    for (index, (key, model)) in parsed.into_iter().enumerate() {
        // The same instant for every entry: it either fails for the first or never.
        let prices = PriceSchedule::single(effective_from, model.price)
            .map_err(ImportError::EffectiveFrom)?;
        let entry = ModelEntry::new(
            model.id,
            model.provider,
            aliases.get(&index).cloned().unwrap_or_default(),
            model.class,
            model.context_window_tokens,
            prices,
        );
        match entry {
            Ok(entry) => {
                out.notes.extend(model.notes.into_iter().map(|kind| Note {
                    key: key.clone(),
                    kind,
                }));
                out.models.push(entry);
            }
            Err(error) => out.skipped.push(Skipped {
                key,
                reason: SkipReason::InvalidEntry(error),
            }),
        }
    }
    Ok(out)
}

/// The aliases of each parsed model (by index), from `alias_of` rows. A row is refused when its
/// key is not a model id or is taken, or when its target is missing, is itself an alias row, or
/// was not imported; at most [`MAX_ALIASES`] per model.
fn resolve_aliases(
    pointers: Vec<(String, String)>,
    parsed: &[(String, Parsed)],
    taken: &mut HashMap<ModelId, String>,
    skipped: &mut Vec<Skipped>,
) -> HashMap<usize, Vec<ModelId>> {
    let by_key: HashMap<&str, usize> = parsed
        .iter()
        .enumerate()
        .map(|(i, (key, _))| (key.as_str(), i))
        .collect();
    let pointer_keys: HashSet<String> = pointers.iter().map(|(key, _)| key.clone()).collect();
    let mut aliases: HashMap<usize, Vec<ModelId>> = HashMap::new();
    for (key, target) in pointers {
        let unusable = |why| SkipReason::UnusableAlias {
            target: target.clone(),
            why,
        };
        let outcome = match (ModelId::parse(&key), by_key.get(target.as_str())) {
            (Err(error), _) => Err(SkipReason::InvalidId(error)),
            (Ok(_), None) if pointer_keys.contains(&target) => {
                Err(unusable("the target is itself an alias"))
            }
            (Ok(_), None) => Err(unusable("the target is not an imported model")),
            (Ok(alias), Some(&index)) => match taken.get(&alias) {
                Some(first) => Err(SkipReason::Duplicate { of: first.clone() }),
                None if aliases.get(&index).map_or(0, Vec::len) >= MAX_ALIASES => {
                    Err(SkipReason::InvalidEntry(ModelEntryError::TooManyAliases))
                }
                None => Ok((alias, index)),
            },
        };
        match outcome {
            Ok((alias, index)) => {
                taken.insert(alias.clone(), key);
                aliases.entry(index).or_default().push(alias);
            }
            Err(reason) => skipped.push(Skipped { key, reason }),
        }
    }
    aliases
}

/// The map's entries in document order, duplicates kept.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

const TOO_MANY_ENTRIES: &str = "too many entries in the map";

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of model entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    if entries.len() >= MAX_MAP_ENTRIES {
                        return Err(serde::de::Error::custom(TOO_MANY_ENTRIES));
                    }
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// One entry's fields; the value of a repeated field is its last, as Python's `json` reads it.
type Fields<'a> = BTreeMap<String, &'a RawValue>;

/// A row of the map: a model, or a name for another row.
enum Row {
    Model(Box<Parsed>),
    AliasOf(String),
}

/// A model's parts, before they are dated and given their aliases.
struct Parsed {
    id: ModelId,
    provider: Provider,
    class: ModelClass,
    context_window_tokens: Option<u64>,
    price: Price,
    notes: Vec<NoteKind>,
}

fn entry(key: &str, raw: &RawValue) -> Result<Row, SkipReason> {
    if key == "sample_spec" {
        return Err(SkipReason::SampleSpec);
    }
    let fields: Fields<'_> =
        serde_json::from_str(raw.get()).map_err(|_| SkipReason::NotAnObject)?;
    match fields.get("alias_of").map(|v| text_of(v)) {
        None | Some(Text::Null) => {}
        Some(Text::String(target)) => return Ok(Row::AliasOf(target)),
        Some(Text::Other(raw)) => {
            return Err(SkipReason::UnusableAlias {
                target: raw,
                why: "`alias_of` is not a string",
            })
        }
    }
    let mode = match fields.get("mode").map(|v| text_of(v)) {
        None | Some(Text::Null) => return Err(SkipReason::NoMode),
        Some(Text::String(mode)) => mode,
        Some(Text::Other(raw)) => return Err(SkipReason::NotATextModel { mode: raw }),
    };
    if !TEXT_MODES.contains(&mode.as_str()) {
        return Err(SkipReason::NotATextModel { mode });
    }
    let provider = match fields.get("litellm_provider").map(|v| text_of(v)) {
        None | Some(Text::Null) => return Err(SkipReason::NoProvider),
        Some(Text::String(text) | Text::Other(text)) => {
            Provider::parse(&text).map_err(|_| SkipReason::InvalidProvider { text })?
        }
    };
    let id = ModelId::parse(key).map_err(SkipReason::InvalidId)?;
    let price = match fields.get("tiered_pricing") {
        Some(table) if table.get() != "null" => tiered_table_price(&fields, table)?,
        _ => keyed_price(&fields, provider.as_str())?,
    };
    Ok(Row::Model(Box::new(Parsed {
        id,
        provider,
        class: ModelClass::for_rates(price.base().input(), price.base().output()),
        context_window_tokens: context_window(&fields)?,
        price,
        notes: notes(&fields)?,
    })))
}

fn notes(fields: &Fields<'_>) -> Result<Vec<NoteKind>, SkipReason> {
    let mut notes = Vec::new();
    if fields
        .get("off_peak_pricing")
        .is_some_and(|v| v.get() != "null")
    {
        notes.push(NoteKind::OffPeakPricingIgnored);
    }
    let reasoning = number(fields, "output_cost_per_reasoning_token")?;
    if reasoning.is_some() && reasoning != number(fields, OUTPUT)? {
        notes.push(NoteKind::ReasoningPriceIgnored);
    }
    Ok(notes)
}

/// Base prices and `_above_<N>k_tokens` tiers.
fn keyed_price(fields: &Fields<'_>, provider: &str) -> Result<Price, SkipReason> {
    let required =
        |name: &'static str| number(fields, name)?.ok_or(SkipReason::NoPrice { field: name });
    let input = per_million(INPUT, required(INPUT)?)?;
    let output = per_million(OUTPUT, required(OUTPUT)?)?;
    let mut cached = optional_per_million(fields, CACHE_READ)?;
    if cached.is_none() && HALF_PRICE_CACHE_READ_PROVIDERS.contains(&provider) {
        cached = Some(halve(input));
    }
    let write = optional_per_million(fields, CACHE_WRITE)?;
    let base = rates(
        "base prices",
        [
            input,
            cached.unwrap_or(input),
            write.unwrap_or(input),
            output,
        ],
    )?;

    let inclusive = INCLUSIVE_THRESHOLD_PROVIDERS.contains(&provider);
    // The prices of the tier below, and whether its cache prices were named (by it or a tier
    // below): a named one carries upward, an unnamed one follows the tier's input price.
    let mut previous = [
        input,
        cached.unwrap_or(input),
        write.unwrap_or(input),
        output,
    ];
    let mut named = [cached.is_some(), write.is_some()];
    let mut tiers = Vec::new();
    for (threshold, label) in tier_thresholds(fields)? {
        let tier_price =
            |name: &str| optional_per_million(fields, &format!("{name}_above_{label}_tokens"));
        let [last_input, last_cached, last_write, last_output] = previous;
        let tier_input = tier_price(INPUT)?.unwrap_or(last_input);
        let tier_output = tier_price(OUTPUT)?.unwrap_or(last_output);
        let mut cache_price = |slot: usize, name: &str, last: Decimal| {
            let own = tier_price(name)?;
            let carried = if named[slot] { last } else { tier_input };
            named[slot] |= own.is_some();
            Ok::<_, SkipReason>(own.unwrap_or(carried))
        };
        let tier_cached = cache_price(0, CACHE_READ, last_cached)?;
        let tier_write = cache_price(1, CACHE_WRITE, last_write)?;
        let resolved = [tier_input, tier_cached, tier_write, tier_output];
        let field = format!("{INPUT}_above_{label}_tokens");
        let tier_rates = rates(&field, resolved)?;
        let above = if inclusive {
            threshold.saturating_sub(1)
        } else {
            threshold
        };
        let tier =
            Tier::new(above, tier_rates).map_err(|error| SkipReason::BadPrice { field, error })?;
        tiers.push(tier);
        previous = resolved;
    }
    Price::new(base, tiers).map_err(|error| SkipReason::BadPrice {
        field: "tiers".to_owned(),
        error,
    })
}

/// The thresholds named by `<price>_above_<N>[k]_tokens` keys with a value, ascending, each with
/// its label as written (`200k`).
fn tier_thresholds(fields: &Fields<'_>) -> Result<BTreeMap<u64, String>, SkipReason> {
    let mut thresholds = BTreeMap::new();
    for (key, value) in fields {
        if value.get() == "null" {
            continue;
        }
        let label = PRICE_KEYS.iter().find_map(|prefix| {
            key.strip_prefix(prefix)?
                .strip_prefix("_above_")?
                .strip_suffix("_tokens")
        });
        let Some(label) = label else { continue };
        let (digits, thousands) = match label.strip_suffix('k') {
            Some(digits) => (digits, 1000),
            None => (label, 1),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue; // not a token threshold (`cache_creation_input_token_cost_above_1hr`).
        }
        let threshold = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(thousands))
            .ok_or_else(|| SkipReason::BadPrice {
                field: key.clone(),
                error: PriceError::TierThreshold,
            })?;
        thresholds.insert(threshold, label.to_owned());
    }
    if thresholds.len() > MAX_TIERS {
        return Err(SkipReason::BadPrice {
            field: "tiers".to_owned(),
            error: PriceError::TooManyTiers,
        });
    }
    Ok(thresholds)
}

/// A `tiered_pricing` table.
fn tiered_table_price(fields: &Fields<'_>, table: &RawValue) -> Result<Price, SkipReason> {
    let unsupported = |why| SkipReason::TieredPricing { why };
    let tiers: Vec<Fields<'_>> =
        serde_json::from_str(table.get()).map_err(|_| unsupported("not a list of objects"))?;
    if tiers.is_empty() || tiers.len() > MAX_TIERS + 1 {
        return Err(unsupported("not 1 to 9 tiers"));
    }
    let mut ranged = Vec::with_capacity(tiers.len());
    for tier in &tiers {
        let range: [&RawValue; 2] = tier
            .get("range")
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .ok_or_else(|| unsupported("a tier's range is not two numbers"))?;
        let start =
            whole_tokens(range[0]).ok_or_else(|| unsupported("a range is not whole tokens"))?;
        let end =
            whole_tokens(range[1]).ok_or_else(|| unsupported("a range is not whole tokens"))?;
        if end <= start {
            return Err(unsupported("a range ends before it starts"));
        }
        ranged.push((start, end, tier));
    }
    ranged.sort_by_key(|&(start, _, _)| start);
    if ranged.first().map(|&(start, _, _)| start) != Some(0) {
        return Err(unsupported("the first range does not start at 0"));
    }
    if !ranged.windows(2).all(|pair| pair[0].1 == pair[1].0) {
        return Err(unsupported("the ranges are not contiguous"));
    }
    let model_output = optional_per_million(fields, OUTPUT)?;
    let mut base = None;
    let mut upper = Vec::new();
    for (start, _, tier) in ranged {
        let input = optional_per_million(tier, INPUT)?
            .ok_or_else(|| unsupported("a tier has no input_cost_per_token"))?;
        let output = optional_per_million(tier, OUTPUT)?
            .or(model_output)
            .ok_or(SkipReason::NoPrice { field: OUTPUT })?;
        let cached = optional_per_million(tier, CACHE_READ)?.unwrap_or(input);
        let write = optional_per_million(tier, CACHE_WRITE)?.unwrap_or(input);
        let tier_rates = rates("tiered_pricing", [input, cached, write, output])?;
        if base.is_none() {
            base = Some(tier_rates);
        } else {
            upper.push(
                Tier::new(start, tier_rates).map_err(|error| SkipReason::BadPrice {
                    field: "tiered_pricing".to_owned(),
                    error,
                })?,
            );
        }
    }
    let base = base.ok_or_else(|| unsupported("not 1 to 9 tiers"))?;
    Price::new(base, upper).map_err(|error| SkipReason::BadPrice {
        field: "tiered_pricing".to_owned(),
        error,
    })
}

fn whole_tokens(raw: &RawValue) -> Option<u64> {
    let value = parse_json_number(raw.get()).ok()?.normalize();
    if value.scale() != 0 || value.is_sign_negative() {
        return None;
    }
    u64::try_from(value.mantissa()).ok()
}

fn context_window(fields: &Fields<'_>) -> Result<Option<u64>, SkipReason> {
    for field in ["max_input_tokens", "max_tokens"] {
        let Some(raw) = fields.get(field).filter(|v| v.get() != "null") else {
            continue;
        };
        let bad = || SkipReason::BadContextWindow {
            field,
            text: raw.get().to_owned(),
        };
        let tokens = whole_tokens(raw).ok_or_else(bad)?;
        if !(1..=MAX_CONTEXT_WINDOW_TOKENS).contains(&tokens) {
            return Err(bad());
        }
        return Ok(Some(tokens));
    }
    Ok(None)
}

fn rates(field: &str, [input, cached, write, output]: [Decimal; 4]) -> Result<Rates, SkipReason> {
    Rates::new(input, cached, write, output).map_err(|error| SkipReason::BadPrice {
        field: field.to_owned(),
        error,
    })
}

/// Half a per-1M price, rounded as an imported price is.
fn halve(per_million: Decimal) -> Decimal {
    (per_million / Decimal::TWO)
        .round_dp_with_strategy(MAX_PRICE_SCALE, RoundingStrategy::MidpointNearestEven)
        .normalize()
}

fn optional_per_million(fields: &Fields<'_>, name: &str) -> Result<Option<Decimal>, SkipReason> {
    number(fields, name)?
        .map(|per_token| per_million(name, per_token))
        .transpose()
}

/// USD per token to USD per 1M tokens, rounded half-to-even to [`MAX_PRICE_SCALE`] places.
fn per_million(name: &str, per_token: Decimal) -> Result<Decimal, SkipReason> {
    let unparseable = || SkipReason::UnparseableNumber {
        field: name.to_owned(),
        text: per_token.to_string(),
    };
    let scaled = if per_token.scale() >= 6 {
        let mut shifted = per_token;
        shifted
            .set_scale(per_token.scale() - 6)
            .map_err(|_| unparseable())?;
        shifted
    } else {
        per_token
            .checked_mul(Decimal::from(1_000_000))
            .ok_or_else(unparseable)?
    };
    Ok(scaled
        .round_dp_with_strategy(MAX_PRICE_SCALE, RoundingStrategy::MidpointNearestEven)
        .normalize())
}

enum Text {
    Null,
    String(String),
    Other(String),
}

fn text_of(raw: &RawValue) -> Text {
    match raw.get() {
        "null" => Text::Null,
        text if text.starts_with('"') => match serde_json::from_str::<String>(text) {
            Ok(string) => Text::String(string),
            Err(_) => Text::Other(text.to_owned()),
        },
        text => Text::Other(text.to_owned()),
    }
}

/// A number field: absent or `null` is `None`; a JSON number, or a string holding one (LiteLLM
/// reads `"3e-7"` too), is its exact decimal value; anything else is unparseable.
fn number(fields: &Fields<'_>, name: &str) -> Result<Option<Decimal>, SkipReason> {
    let Some(raw) = fields.get(name) else {
        return Ok(None);
    };
    let text = match text_of(raw) {
        Text::Null => return Ok(None),
        Text::String(text) | Text::Other(text) => text,
    };
    parse_json_number(&text)
        .map(Some)
        .map_err(|_| SkipReason::UnparseableNumber {
            field: name.to_owned(),
            text: raw.get().to_owned(),
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("not a JSON number")]
    Syntax,
    #[error("more significant digits than a Decimal holds")]
    TooPrecise,
    #[error("beyond the range of a Decimal")]
    OutOfRange,
}

/// The largest exponent read; beyond it a non-zero number is out of a `Decimal`'s range anyway.
const MAX_EXPONENT: i64 = 100_000;
/// The most significant digits a `Decimal` mantissa (96 bits) surely holds, plus one.
const MAX_SIGNIFICANT_DIGITS: usize = 29;
const MAX_DECIMAL_SCALE: i64 = 28;

/// The exact value of a JSON number (`-?int(.frac)?([eE][+-]?exp)?`), exponent included, without
/// a binary float: `2.5e-07` is 0.00000025.
pub fn parse_json_number(text: &str) -> Result<Decimal, NumberError> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa_text, exponent) = match rest.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, parse_exponent(exponent)?),
        None => (rest, 0),
    };
    let (int_digits, frac_digits) = match mantissa_text.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return Err(NumberError::Syntax),
        None => (mantissa_text, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let int_ok = !int_digits.is_empty()
        && all_digits(int_digits)
        && !(int_digits.len() > 1 && int_digits.starts_with('0'));
    if !int_ok || !all_digits(frac_digits) {
        return Err(NumberError::Syntax);
    }
    // value = digits × 10^-scale, digits = int_digits ++ frac_digits.
    let frac_len = i64::try_from(frac_digits.len()).map_err(|_| NumberError::TooPrecise)?;
    let mut scale = frac_len - exponent;
    let digits = format!("{int_digits}{frac_digits}");
    let significant = digits.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    if trimmed.is_empty() {
        return Ok(Decimal::ZERO);
    }
    let trailing_zeros =
        i64::try_from(significant.len() - trimmed.len()).map_err(|_| NumberError::TooPrecise)?;
    scale -= trailing_zeros;
    if trimmed.len() > MAX_SIGNIFICANT_DIGITS {
        return Err(NumberError::TooPrecise);
    }
    let mut mantissa = trimmed
        .bytes()
        .try_fold(0_i128, |n, b| {
            n.checked_mul(10)?.checked_add(i128::from(b - b'0'))
        })
        .ok_or(NumberError::TooPrecise)?;
    if scale > MAX_DECIMAL_SCALE {
        return Err(NumberError::TooPrecise);
    }
    if scale < 0 {
        let up = u32::try_from(-scale).map_err(|_| NumberError::OutOfRange)?;
        mantissa = 10_i128
            .checked_pow(up)
            .and_then(|p| mantissa.checked_mul(p))
            .ok_or(NumberError::OutOfRange)?;
        scale = 0;
    }
    if negative {
        mantissa = -mantissa;
    }
    let scale = u32::try_from(scale).map_err(|_| NumberError::OutOfRange)?;
    Decimal::try_from_i128_with_scale(mantissa, scale).map_err(|_| NumberError::OutOfRange)
}

fn parse_exponent(text: &str) -> Result<i64, NumberError> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberError::Syntax);
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 7 {
        return Err(NumberError::OutOfRange);
    }
    let value = significant
        .bytes()
        .fold(0_i64, |n, b| n * 10 + i64::from(b - b'0'));
    if value > MAX_EXPONENT {
        return Err(NumberError::OutOfRange);
    }
    Ok(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::date::parse_date;

    #[test]
    fn json_numbers_are_exact_decimals() {
        let cases: &[(&str, Result<&str, NumberError>)] = &[
            ("0", Ok("0")),
            ("-0", Ok("0")),
            ("2.5e-07", Ok("0.00000025")),
            ("2.5E-7", Ok("0.00000025")),
            ("1.4999999999999999e-07", Ok("0.00000014999999999999999")),
            ("3e-6", Ok("0.000003")),
            ("1e+3", Ok("1000")),
            ("1e3", Ok("1000")),
            ("128000", Ok("128000")),
            ("128000.0", Ok("128000")),
            ("1.000000000000000000000000000000000000000", Ok("1")),
            (
                "0.00000000000000000000000000001e1",
                Ok("0.0000000000000000000000000001"),
            ),
            ("-1.5", Ok("-1.5")),
            ("1e-29", Err(NumberError::TooPrecise)),
            ("1e29", Err(NumberError::OutOfRange)),
            ("1e99999999", Err(NumberError::OutOfRange)),
            ("0e99999999", Err(NumberError::OutOfRange)),
            ("0e-5", Ok("0")),
            (
                "12345678901234567890123456789012",
                Err(NumberError::TooPrecise),
            ),
            ("", Err(NumberError::Syntax)),
            ("-", Err(NumberError::Syntax)),
            ("01", Err(NumberError::Syntax)),
            ("1.", Err(NumberError::Syntax)),
            (".5", Err(NumberError::Syntax)),
            ("1e", Err(NumberError::Syntax)),
            ("1e+", Err(NumberError::Syntax)),
            ("0x10", Err(NumberError::Syntax)),
            ("NaN", Err(NumberError::Syntax)),
            ("1 ", Err(NumberError::Syntax)),
        ];
        for (text, expected) in cases {
            let got = parse_json_number(text).map(|d| d.normalize().to_string());
            assert_eq!(got, expected.map(str::to_owned), "{text}");
        }
    }

    #[test]
    fn per_million_rounds_float_artifacts_away() {
        let d = |t: &str| parse_json_number(t).unwrap();
        let cases = [
            ("2.5e-07", "0.25"),
            ("1.4999999999999999e-07", "0.15"),
            ("2.0000000000000002e-07", "0.2"),
            ("3e-06", "3"),
            ("0.00015", "150"),
            ("1e-17", "0"),
            ("5e-17", "0"), // half to even
            ("1.5e-16", "0.0000000002"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                per_million("x", d(text)).unwrap().to_string(),
                expected,
                "{text}"
            );
        }
    }

    fn import_one(entry: &str) -> Result<ModelEntry, SkipReason> {
        let map = format!(r#"{{"m": {entry}}}"#);
        let mut result = import(&map, parse_date("2026-11-01").unwrap()).unwrap();
        match (result.models.pop(), result.skipped.pop()) {
            (Some(model), None) => Ok(model),
            (None, Some(skipped)) => Err(skipped.reason),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entries_are_imported_or_skipped_with_a_reason() {
        let ok = import_one(
            r#"{"mode":"chat","litellm_provider":"openai","input_cost_per_token":2.5e-06,
                "output_cost_per_token":1e-05,"max_input_tokens":128000}"#,
        )
        .unwrap();
        let base = ok.prices().entries()[0].price().base().clone();
        assert_eq!(base.input().to_string(), "2.5");
        assert_eq!(base.cached_input().to_string(), "2.5");
        assert_eq!(base.cache_write().to_string(), "2.5");
        assert_eq!(base.output().to_string(), "10");
        assert_eq!(ok.class().as_str(), "pro");
        assert_eq!(ok.context_window_tokens(), Some(128_000));

        let cases: &[(&str, &str)] = &[
            (r#"[1]"#, "not_an_object"),
            (r#"{"litellm_provider":"openai"}"#, "no_mode"),
            (
                r#"{"mode":"embedding","litellm_provider":"openai"}"#,
                "not_a_text_model",
            ),
            (r#"{"mode":"chat"}"#, "no_provider"),
            (
                r#"{"mode":"chat","litellm_provider":"open ai"}"#,
                "invalid_provider",
            ),
            (
                r#"{"mode":"chat","litellm_provider":"openai","output_cost_per_token":1e-6}"#,
                "no_price",
            ),
            (
                r#"{"mode":"chat","litellm_provider":"openai","input_cost_per_token":"cheap","output_cost_per_token":1e-6}"#,
                "unparseable_number",
            ),
            (
                r#"{"mode":"chat","litellm_provider":"openai","input_cost_per_token":-1e-6,"output_cost_per_token":1e-6}"#,
                "bad_price",
            ),
            (
                r#"{"mode":"chat","litellm_provider":"openai","input_cost_per_token":1e-6,"output_cost_per_token":1e-6,"max_tokens":"lots"}"#,
                "bad_context_window",
            ),
            (
                r#"{"mode":"chat","litellm_provider":"dashscope","tiered_pricing":[{"input_cost_per_token":1e-6,"output_cost_per_token":1e-6,"range":[0,100]},{"input_cost_per_token":2e-6,"range":[200,300]}]}"#,
                "tiered_pricing",
            ),
        ];
        for (entry, label) in cases {
            let reason = import_one(entry).unwrap_err();
            assert_eq!(reason.label(), *label, "{entry}: {reason}");
        }
    }

    #[test]
    fn keyed_tiers_follow_litellm_fallbacks() {
        let model = import_one(
            r#"{"mode":"chat","litellm_provider":"vertex_ai","input_cost_per_token":1e-6,
                "output_cost_per_token":2e-6,
                "input_cost_per_token_above_100k_tokens":3e-6,
                "cache_read_input_token_cost_above_100k_tokens":5e-7,
                "output_cost_per_token_above_200k_tokens":8e-6,
                "input_cost_per_token_above_200k_tokens":4e-6,
                "cache_creation_input_token_cost_above_1hr":9e-6,
                "input_cost_per_token_above_272k_tokens_priority":9e-6,
                "output_cost_per_token_above_300k_tokens":null}"#,
        )
        .unwrap();
        let price = model.prices().entries()[0].price().clone();
        let text = |r: &Rates| {
            [r.input(), r.cached_input(), r.cache_write(), r.output()].map(|d| d.to_string())
        };
        assert_eq!(text(price.base()), ["1", "1", "1", "2"]);
        let tiers: Vec<_> = price
            .tiers()
            .iter()
            .map(|t| (t.above_prompt_tokens(), text(t.rates())))
            .collect();
        assert_eq!(
            tiers,
            [
                // The tier names a cache-read price; its cache write follows its input.
                (100_000, ["3", "0.5", "3", "2"].map(str::to_owned)),
                // The cache read named below carries upward; the write follows the input.
                (200_000, ["4", "0.5", "4", "8"].map(str::to_owned)),
            ]
        );
        // xAI's tiers start at the threshold itself.
        let grok = import_one(
            r#"{"mode":"chat","litellm_provider":"xai","input_cost_per_token":1e-6,
                "output_cost_per_token":2e-6,"input_cost_per_token_above_200k_tokens":3e-6}"#,
        )
        .unwrap();
        let tier = &grok.prices().entries()[0].price().tiers()[0];
        assert_eq!(tier.above_prompt_tokens(), 199_999);
        // Fireworks' missing cache-read price is half the input price.
        let fireworks = import_one(
            r#"{"mode":"chat","litellm_provider":"fireworks_ai","input_cost_per_token":2.2e-7,
                "output_cost_per_token":8.8e-7}"#,
        )
        .unwrap();
        let base = fireworks.prices().entries()[0].price().base().clone();
        assert_eq!(base.cached_input().to_string(), "0.11");
        assert_eq!(base.cache_write().to_string(), "0.22");
    }

    #[test]
    fn alias_rows_name_their_target() {
        let entry = r#"{"mode":"chat","litellm_provider":"anthropic","input_cost_per_token":1e-6,"output_cost_per_token":1e-6}"#;
        let map = format!(
            r#"{{"opus-latest": {{"alias_of": "claude-opus"}}, "claude-opus": {entry},
                "Opus-Latest": {{"alias_of": "claude-opus"}}, "chain": {{"alias_of": "opus-latest"}},
                "nowhere": {{"alias_of": "missing"}}, "bad id!": {{"alias_of": "claude-opus"}},
                "claude-opus-2": {entry}, "claude-opus-2-alias": {{"alias_of": "CLAUDE-OPUS-2"}}}}"#
        );
        let result = import(&map, Timestamp::EPOCH).unwrap();
        let aliases: Vec<_> = result
            .models
            .iter()
            .map(|m| {
                (
                    m.id().as_str(),
                    m.aliases().iter().map(ModelId::as_str).collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            aliases,
            [
                ("claude-opus", vec!["opus-latest"]),
                ("claude-opus-2", vec![])
            ]
        );
        let reasons: Vec<_> = result
            .skipped
            .iter()
            .map(|s| (s.key.as_str(), s.reason.to_string()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("Opus-Latest", "the same model id as `opus-latest` (ids are case-insensitive)".to_owned()),
                ("chain", "an alias of `opus-latest` that cannot be used: the target is itself an alias".to_owned()),
                ("nowhere", "an alias of `missing` that cannot be used: the target is not an imported model".to_owned()),
                ("bad id!", "the key is not a model id: a model id is ASCII letters, digits and `-._:/@+`, starting and ending with a letter or digit".to_owned()),
                ("claude-opus-2-alias", "an alias of `CLAUDE-OPUS-2` that cannot be used: the target is not an imported model".to_owned()),
            ]
        );
    }

    #[test]
    fn ids_and_duplicates() {
        let entry = r#"{"mode":"chat","litellm_provider":"openai","input_cost_per_token":1e-6,"output_cost_per_token":1e-6}"#;
        let map = format!(
            r#"{{"sample_spec": {{"mode":"chat"}}, "Gpt-X": {entry}, "gpt-x": {entry}, "bedrock/*/x": {entry}}}"#
        );
        let result = import(&map, Timestamp::EPOCH).unwrap();
        assert_eq!(result.models.len(), 1);
        assert_eq!(result.models[0].id().as_str(), "gpt-x");
        let reasons: Vec<_> = result
            .skipped
            .iter()
            .map(|s| (s.key.as_str(), s.reason.label()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("sample_spec", "sample_spec"),
                ("gpt-x", "duplicate"),
                ("bedrock/*/x", "invalid_id")
            ]
        );
        assert!(matches!(
            import("[]", Timestamp::EPOCH),
            Err(ImportError::NotAMap(_))
        ));
        assert!(matches!(
            import("{}", Timestamp::MAX),
            Err(ImportError::EffectiveFrom(_))
        ));
        assert!(matches!(
            import("{", Timestamp::EPOCH),
            Err(ImportError::NotAMap(_))
        ));
    }
}
