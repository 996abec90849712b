//! The model catalog between storage and the pricing domain: the built-in catalog seeded at
//! start, stored records parsed back into `credex-pricing` types, and the price that applies
//! to a call ([`resolve_price`]).
//!
//! Storage keeps each price as the JSON text `credex-pricing` writes, and this module parses it
//! on every read. A stored row that does not parse breaks an invariant (only this module
//! writes prices, and it writes what the domain serialized): it is answered as an internal
//! error (500) and logged, never priced around.

use credex_ledger::{OrgId, Timestamp};
use credex_pricing::date::format_instant;
use credex_pricing::{
    resolve, Catalog, DatedPrice, ModelClass, ModelEntry, ModelId, Price, PriceSchedule,
    PriceSource, Provider,
};
use credex_store::{ModelRecord, ModelSource, PriceRecord, PriceScope, Store, UserId};

use crate::problem::{ApiError, ProblemKind};

/// The built-in catalog (`pricing/data/catalog.json`) as store records: every price from the
/// catalog, recorded at `now` by nobody.
pub fn builtin_records(now: Timestamp) -> anyhow::Result<Vec<(ModelRecord, Vec<PriceRecord>)>> {
    let catalog = Catalog::builtin()?;
    catalog
        .models()
        .iter()
        .map(|model| {
            let prices = model
                .prices()
                .entries()
                .iter()
                .map(|dated| price_record(dated, now, None))
                .collect();
            Ok((model_record(model, ModelSource::Builtin, now), prices))
        })
        .collect()
}

/// Adds the built-in models the catalog lacks (never changes one that exists); safe in every
/// process at every start. Answers how many it added.
pub async fn seed_builtin(store: &dyn Store) -> anyhow::Result<u64> {
    let records = builtin_records(store.clock().now())?;
    Ok(store.seed_models(&records).await?)
}

/// A catalog model as a store record.
pub fn model_record(model: &ModelEntry, source: ModelSource, now: Timestamp) -> ModelRecord {
    ModelRecord {
        id: model.id().to_string(),
        provider: model.provider().to_string(),
        class: model.class().to_string(),
        context_window: model.context_window_tokens(),
        aliases: model.aliases().iter().map(ModelId::to_string).collect(),
        source,
        created_at: now,
    }
}

/// A dated price as a store record: the price as `credex-pricing` serializes it.
pub fn price_record(dated: &DatedPrice, now: Timestamp, by: Option<UserId>) -> PriceRecord {
    PriceRecord {
        effective_from: dated.effective_from(),
        // A `Price` is strings, integers and lists: serializing it cannot fail.
        price: serde_json::to_string(dated.price()).unwrap_or_default(),
        recorded_at: now,
        recorded_by: by,
    }
}

fn corrupt(model: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::internal(&format!(
        "the stored catalog entry of `{model}` is corrupt: {what}"
    ))
}

/// A stored price, parsed.
pub fn parse_price(model: &str, record: &PriceRecord) -> Result<DatedPrice, ApiError> {
    let price: Price = serde_json::from_str(&record.price).map_err(|error| {
        let at = format_instant(record.effective_from);
        corrupt(model, format!("the price from {at}: {error}"))
    })?;
    Ok(DatedPrice::new(record.effective_from, price))
}

/// A stored schedule, parsed; `None` when it has no price at all.
pub fn parse_schedule(
    model: &str,
    records: &[PriceRecord],
) -> Result<Option<PriceSchedule>, ApiError> {
    if records.is_empty() {
        return Ok(None);
    }
    let entries = records
        .iter()
        .map(|record| parse_price(model, record))
        .collect::<Result<Vec<_>, _>>()?;
    PriceSchedule::new(entries)
        .map(Some)
        .map_err(|error| corrupt(model, error))
}

/// A stored model's class, parsed.
pub fn model_class(model: &ModelRecord) -> Result<ModelClass, ApiError> {
    ModelClass::parse(&model.class).map_err(|error| corrupt(&model.id, error))
}

/// A stored model's provider, parsed.
pub fn model_provider(model: &ModelRecord) -> Result<Provider, ApiError> {
    Provider::parse(&model.provider).map_err(|error| corrupt(&model.id, error))
}

/// The model named `name` (its id or an alias, in any letter case); `None` for a name that no
/// model has, or that no model could have.
pub async fn find_model(store: &dyn Store, name: &str) -> Result<Option<ModelRecord>, ApiError> {
    let Ok(name) = ModelId::parse(name) else {
        return Ok(None);
    };
    store
        .find_model(name.as_str())
        .await
        .map_err(|error| ApiError::internal(&error))
}

/// A model's schedule in `scope`, parsed; `None` when it has no price there.
pub async fn schedule(
    store: &dyn Store,
    model: &str,
    scope: PriceScope,
) -> Result<Option<PriceSchedule>, ApiError> {
    let records = store
        .prices(model, scope)
        .await
        .map_err(|error| ApiError::internal(&error))?;
    parse_schedule(model, &records)
}

/// The price a call to a model is charged at, and why.
#[derive(Debug, Clone)]
pub struct ResolvedModelPrice {
    pub model: ModelRecord,
    pub class: ModelClass,
    pub source: PriceSource,
    pub effective_from: Timestamp,
    pub price: Price,
}

/// A model with its price schedules: the catalog's and an org's custom one.
#[derive(Debug, Clone)]
pub struct ModelPrices {
    pub model: ModelRecord,
    pub class: ModelClass,
    catalog: Option<PriceSchedule>,
    custom: Option<PriceSchedule>,
}

impl ModelPrices {
    /// The price of a call at `at`: the org's custom price when one of its entries is in force,
    /// else the catalog's. No price in force at `at`: 422.
    pub fn at(&self, at: Timestamp) -> Result<ResolvedModelPrice, ApiError> {
        let resolved = match &self.catalog {
            Some(catalog) => resolve(catalog, self.custom.as_ref(), at),
            // No catalog price at all: only a custom one can apply.
            None => self
                .custom
                .as_ref()
                .and_then(|custom| resolve(custom, None, at))
                .map(|found| credex_pricing::ResolvedPrice {
                    source: PriceSource::Org,
                    ..found
                }),
        };
        let Some(resolved) = resolved else {
            let detail = format!(
                "`{}` has no price in force at {}",
                self.model.id,
                crate::views::rfc3339(at)
            );
            return Err(ApiError::new(ProblemKind::Unprocessable, detail));
        };
        Ok(ResolvedModelPrice {
            model: self.model.clone(),
            class: self.class.clone(),
            source: resolved.source,
            effective_from: resolved.effective_from,
            price: resolved.price.clone(),
        })
    }
}

/// The model named `model_name` (an id or an alias) with its schedules for `org`, read in one
/// statement. Unknown model: 404.
pub async fn model_prices(
    store: &dyn Store,
    org: Option<OrgId>,
    model_name: &str,
) -> Result<ModelPrices, ApiError> {
    let unknown = || {
        ApiError::new(
            ProblemKind::NotFound,
            format!("no model is named `{model_name}`"),
        )
    };
    let Ok(name) = ModelId::parse(model_name) else {
        return Err(unknown());
    };
    let found = store
        .model_for_pricing(name.as_str(), org)
        .await
        .map_err(|error| ApiError::internal(&error))?
        .ok_or_else(unknown)?;
    let model = found.model;
    let class = model_class(&model)?;
    let catalog = parse_schedule(&model.id, &found.catalog)?;
    let custom = parse_schedule(&model.id, &found.org)?;
    Ok(ModelPrices {
        model,
        class,
        catalog,
        custom,
    })
}

/// The price of a call to the model named `model_name` at `at` ([`ModelPrices::at`]). Unknown
/// model: 404; no price in force at `at`: 422.
pub async fn resolve_price(
    store: &dyn Store,
    org: Option<OrgId>,
    model_name: &str,
    at: Timestamp,
) -> Result<ResolvedModelPrice, ApiError> {
    model_prices(store, org, model_name).await?.at(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_becomes_records_that_parse_back() {
        let now = Timestamp::from_micros(1_795_651_200_000_000);
        let records = builtin_records(now).expect("the built-in catalog");
        assert!(records.len() >= 60, "{}", records.len());
        for (model, prices) in &records {
            assert_eq!(model.source, ModelSource::Builtin);
            assert!(model_class(model).is_ok(), "{}", model.id);
            assert!(model_provider(model).is_ok(), "{}", model.id);
            let schedule = parse_schedule(&model.id, prices).expect("parses");
            assert!(schedule.is_some(), "{} has prices", model.id);
            assert!(prices.iter().all(|p| p.recorded_by.is_none()));
        }
    }

    #[test]
    fn a_corrupt_price_is_an_internal_error() {
        let record = PriceRecord {
            effective_from: Timestamp::from_micros(0),
            price: r#"{"input":3}"#.to_owned(),
            recorded_at: Timestamp::from_micros(0),
            recorded_by: None,
        };
        let error = parse_schedule("m", &[record]).expect_err("corrupt");
        assert_eq!(error.kind, ProblemKind::Internal);
        assert_eq!(parse_schedule("m", &[]).expect("empty"), None);
    }
}
