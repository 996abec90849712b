//! The model catalog over HTTP: models with their current prices, a model's price schedule,
//! an org's custom prices; for admins, new models, new prices (never in the past), org custom
//! prices and imports of LiteLLM's price map.
//!
//! Prices are USD per 1M tokens, decimal strings. A price takes effect at an instant, now or
//! later, and one in force never changes, so every past cost stays what it was. Every change
//! is written with its audit entry in one transaction.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use credex_ledger::{OrgId, Timestamp};
use credex_pricing::catalog::MAX_SCHEDULE_ENTRIES;
use credex_pricing::litellm::{self, Import};
use credex_pricing::{
    DatedPrice, ModelClass, ModelEntry, ModelId, Price, PriceSchedule, PriceSource, Provider,
    Rates, ScheduleError, Tier,
};
use credex_store::pricing::IMPORT_MAX_MODELS;
use credex_store::{
    AuditAction, AuditEntry, ImportChange, ModelFilter, ModelRecord, ModelSource, PriceRecord,
    PriceScope, PricingError, PutPrice, Store, UserId,
};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{
    AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::{IntoParams, ToSchema};

use crate::auth::access::{Admin, Caller, OrgAccess, Read};
use crate::catalog::{self, model_record, parse_schedule, price_record};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::startup::AppState;
use crate::views::rfc3339;

fn no_such_model(name: &str) -> actix_web::Error {
    ApiError::new(ProblemKind::NotFound, format!("no model is named `{name}`")).into()
}

/// A model id in a path: `/` written `%2F`, every other character as it is.
pub fn path_segment(id: &str) -> String {
    id.replace('/', "%2F")
}

fn pricing_error(error: PricingError) -> actix_web::Error {
    match error {
        PricingError::NameTaken(name) => ApiError::new(
            ProblemKind::Conflict,
            format!("`{name}` already names a model (ids and aliases are unique)"),
        )
        .into(),
        PricingError::NoSuchModel(name) => no_such_model(&name),
        PricingError::NoSuchOrg => ApiError::new(ProblemKind::NotFound, "no such org").into(),
        PricingError::InThePast => ApiError::new(
            ProblemKind::Unprocessable,
            "effective_from: in the past; a price takes effect now or later",
        )
        .into(),
        PricingError::InForce => ApiError::new(
            ProblemKind::Conflict,
            "the price from that instant is already in force and can no longer change",
        )
        .into(),
        refused @ (PricingError::TooManyModels | PricingError::PriceTooLarge) => {
            ApiError::new(ProblemKind::Unprocessable, refused.to_string()).into()
        }
        other => internal(&other),
    }
}

// ---------------------------------------------------------------------------------------------
// Views.

/// Where a model came from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelSourceName {
    /// Shipped with Credex.
    Builtin,
    /// Added by an admin.
    Admin,
    /// Imported from a LiteLLM price map.
    Import,
}

/// Whose price applies.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceSourceName {
    /// The catalog's list price.
    Catalog,
    /// The org's custom price.
    Org,
}

pub fn price_source_name(source: PriceSource) -> &'static str {
    match source {
        PriceSource::Catalog => "catalog",
        PriceSource::Org => "org",
    }
}

/// Where an entry of a schedule stands now.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceState {
    /// Was in force; a later entry replaced it.
    Past,
    /// In force now.
    InForce,
    /// Takes effect later; may still be replaced.
    Scheduled,
}

fn decimal(value: rust_decimal::Decimal) -> String {
    value.normalize().to_string()
}

/// A long-context tier: when a call's prompt tokens exceed `above_prompt_tokens`, its prices
/// bill every token of the call. USD per 1M tokens, decimal strings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TierView {
    pub above_prompt_tokens: u64,
    #[schema(example = "6")]
    pub input: String,
    pub cached_input: String,
    pub cache_write: String,
    pub output: String,
}

/// Prices in USD per 1M tokens (decimal strings), from `effective_from` on.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "effective_from": "2026-11-01T00:00:00Z", "input": "2.5", "cached_input": "1.25",
    "cache_write": "2.5", "output": "10", "tiers": []
}))]
pub struct PriceView {
    #[schema(format = DateTime)]
    pub effective_from: String,
    /// Uncached prompt tokens.
    pub input: String,
    /// Prompt tokens read from the provider's cache.
    pub cached_input: String,
    /// Prompt tokens written into the provider's cache.
    pub cache_write: String,
    /// Generated tokens, reasoning included.
    pub output: String,
    /// Long-context tiers, ascending; the highest one the prompt exceeds applies.
    pub tiers: Vec<TierView>,
}

impl PriceView {
    pub fn new(effective_from: Timestamp, price: &Price) -> Self {
        let base = price.base();
        Self {
            effective_from: rfc3339(effective_from),
            input: decimal(base.input()),
            cached_input: decimal(base.cached_input()),
            cache_write: decimal(base.cache_write()),
            output: decimal(base.output()),
            tiers: price
                .tiers()
                .iter()
                .map(|tier| TierView {
                    above_prompt_tokens: tier.above_prompt_tokens(),
                    input: decimal(tier.rates().input()),
                    cached_input: decimal(tier.rates().cached_input()),
                    cache_write: decimal(tier.rates().cache_write()),
                    output: decimal(tier.rates().output()),
                })
                .collect(),
        }
    }
}

/// An entry of a price schedule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleEntryView {
    #[serde(flatten)]
    pub price: PriceView,
    #[schema(value_type = PriceState)]
    pub state: &'static str,
    #[schema(format = DateTime)]
    pub recorded_at: String,
    /// The admin who recorded it; absent for the built-in catalog and imports before Credex
    /// knew who ran them.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub recorded_by: Option<String>,
}

fn schedule_views(
    model: &str,
    records: &[PriceRecord],
    now: Timestamp,
) -> Result<Vec<ScheduleEntryView>, actix_web::Error> {
    let schedule = parse_schedule(model, records)?;
    let current = schedule
        .as_ref()
        .and_then(|schedule| schedule.price_at(now))
        .map(DatedPrice::effective_from);
    let entries = schedule
        .as_ref()
        .map_or(&[][..], PriceSchedule::entries)
        .iter()
        .zip(records);
    Ok(entries
        .map(|(dated, record)| ScheduleEntryView {
            price: PriceView::new(dated.effective_from(), dated.price()),
            state: match current {
                Some(at) if at == dated.effective_from() => "in_force",
                _ if dated.effective_from() > now => "scheduled",
                _ => "past",
            },
            recorded_at: rfc3339(record.recorded_at),
            recorded_by: record.recorded_by.map(|user| user.to_string()),
        })
        .collect())
}

/// A model of the catalog and its list price in force now.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "gpt-4o", "provider": "openai", "class": "pro", "aliases": ["gpt-4o-2024-08-06"],
    "context_window_tokens": 128000, "source": "builtin",
    "price": {"effective_from": "2024-08-06T00:00:00Z", "input": "2.5", "cached_input": "1.25",
              "cache_write": "2.5", "output": "10", "tiers": []}
}))]
pub struct ModelView {
    /// The model's id (lowercase); ids and aliases are case-insensitive.
    pub id: String,
    /// Who bills for it: `openai`, `anthropic`, or the host of an open model.
    pub provider: String,
    /// Its model class: its tokens are the ledger asset `TOK.<class>.<cycle>`.
    pub class: String,
    /// Other names it answers to.
    pub aliases: Vec<String>,
    /// In tokens; absent when the provider does not publish it.
    pub context_window_tokens: Option<u64>,
    #[schema(value_type = ModelSourceName)]
    pub source: &'static str,
    /// The catalog price in force now; `null` until the model's first price takes effect.
    pub price: Option<PriceView>,
}

fn model_view(model: &ModelRecord, current: Option<PriceView>) -> ModelView {
    ModelView {
        id: model.id.clone(),
        provider: model.provider.clone(),
        class: model.class.clone(),
        aliases: model.aliases.clone(),
        context_window_tokens: model.context_window,
        source: model.source.as_str(),
        price: current,
    }
}

fn current_price(schedule: Option<&PriceSchedule>, now: Timestamp) -> Option<PriceView> {
    schedule
        .and_then(|schedule| schedule.price_at(now))
        .map(|dated| PriceView::new(dated.effective_from(), dated.price()))
}

// ---------------------------------------------------------------------------------------------
// Reading the catalog.

/// Which models, and where a page starts.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ModelsQuery {
    /// `next` of the previous page: the last model id it held.
    #[param(
        max_length = 128,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:/@+-]{0,126}[A-Za-z0-9])?$"
    )]
    after: Option<String>,
    /// At most this many models (1 to 1,000; default 100).
    #[serde(default, deserialize_with = "integer::optional_in_query")]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only this provider's models (any letter case).
    #[param(max_length = 40, pattern = r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")]
    provider: Option<String>,
    /// Only this class's models.
    #[param(max_length = 8, pattern = r"^[a-z][a-z0-9]{0,7}$")]
    class: Option<String>,
}

/// A page of the catalog.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelsPage {
    pub models: Vec<ModelView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// The catalog's models in id order, with their list prices in force now, a page at a time
/// (any signed-in caller; API keys need the `read` scope).
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    security(("bearer" = [])),
    params(ModelsQuery),
    responses(
        (status = 200, description = "A page of models", body = ModelsPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_models(
    caller: Caller,
    query: web::Query<ModelsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(invalid("limit", "between 1 and 1000"));
    }
    let after = query
        .after
        .as_deref()
        .map(|text| ModelId::parse(text).map_err(|error| invalid("after", error)))
        .transpose()?;
    let filter = ModelFilter {
        provider: query
            .provider
            .as_deref()
            .map(|text| Provider::parse(text).map_err(|error| invalid("provider", error)))
            .transpose()?
            .map(|provider| provider.as_str().to_owned()),
        class: query
            .class
            .as_deref()
            .map(|text| ModelClass::parse(text).map_err(|error| invalid("class", error)))
            .transpose()?
            .map(|class| class.as_str().to_owned()),
    };
    let store = state.ledger.store();
    let models = store
        .models_page(after.as_ref().map(ModelId::as_str), limit, &filter)
        .await
        .map_err(|error| internal(&error))?;
    let (Some(first), Some(last)) = (models.first(), models.last()) else {
        return Ok(HttpResponse::Ok().json(ModelsPage {
            models: Vec::new(),
            next: None,
        }));
    };
    let mut prices: BTreeMap<String, Vec<PriceRecord>> = BTreeMap::new();
    for (model, price) in store
        .catalog_prices_between(&first.id, &last.id)
        .await
        .map_err(|error| internal(&error))?
    {
        prices.entry(model).or_default().push(price);
    }
    let now = store.clock().now();
    let views = models
        .iter()
        .map(|model| {
            let records = prices.get(&model.id).map_or(&[][..], Vec::as_slice);
            let schedule = parse_schedule(&model.id, records)?;
            Ok(model_view(model, current_price(schedule.as_ref(), now)))
        })
        .collect::<Result<Vec<_>, actix_web::Error>>()?;
    let next =
        (views.len() == usize::try_from(limit).unwrap_or(usize::MAX)).then(|| last.id.clone());
    Ok(HttpResponse::Ok().json(ModelsPage {
        models: views,
        next,
    }))
}

/// The catalog is for any signed-in user, and for API keys with the `read` scope.
pub(crate) fn require_read(caller: &Caller) -> Result<(), actix_web::Error> {
    match caller {
        Caller::Key(key) if !key.scopes.contains(credex_store::Scope::Read) => Err(ApiError::new(
            ProblemKind::Forbidden,
            "this API key lacks the `read` scope",
        )
        .into()),
        _ => Ok(()),
    }
}

/// A model by id or alias, with its list price in force now (any signed-in caller).
#[utoipa::path(
    get,
    path = "/v1/models/{model_id}",
    tag = "models",
    security(("bearer" = [])),
    params(("model_id" = String, Path, max_length = 128, pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:/@+-]{0,126}[A-Za-z0-9])?$", description = "The model's id or an alias, in any letter case (`/` written `%2F`)")),
    responses(
        (status = 200, description = "The model", body = ModelView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No model has this name", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_model(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let store = state.ledger.store().as_ref();
    let model = catalog::find_model(store, &path)
        .await?
        .ok_or_else(|| no_such_model(&path))?;
    let schedule = catalog::schedule(store, &model.id, PriceScope::Catalog).await?;
    let now = store.clock().now();
    Ok(HttpResponse::Ok().json(model_view(&model, current_price(schedule.as_ref(), now))))
}

/// A model's price schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelPrices {
    /// The model's id (the path may have named an alias).
    pub model_id: String,
    /// Oldest first: history, the price in force, and prices scheduled to take effect.
    pub prices: Vec<ScheduleEntryView>,
}

/// A model's catalog price schedule: past prices, the one in force, scheduled ones (any
/// signed-in caller).
#[utoipa::path(
    get,
    path = "/v1/models/{model_id}/prices",
    tag = "models",
    security(("bearer" = [])),
    params(("model_id" = String, Path, max_length = 128, pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:/@+-]{0,126}[A-Za-z0-9])?$", description = "The model's id or an alias, in any letter case (`/` written `%2F`)")),
    responses(
        (status = 200, description = "The schedule, oldest first", body = ModelPrices),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No model has this name", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn model_prices(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let store = state.ledger.store().as_ref();
    let model = catalog::find_model(store, &path)
        .await?
        .ok_or_else(|| no_such_model(&path))?;
    let records = store
        .prices(&model.id, PriceScope::Catalog)
        .await
        .map_err(|error| internal(&error))?;
    let prices = schedule_views(&model.id, &records, store.clock().now())?;
    Ok(HttpResponse::Ok().json(ModelPrices {
        model_id: model.id,
        prices,
    }))
}

/// The price that applies now, and whose it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct EffectivePriceView {
    #[schema(value_type = PriceSourceName)]
    pub source: &'static str,
    #[serde(flatten)]
    pub price: PriceView,
}

/// An org's custom prices for a model, and the price that applies to it now.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgModelPrices {
    #[schema(format = Uuid)]
    pub org_id: String,
    pub model_id: String,
    /// The org's custom schedule, oldest first; empty when it has none. Once one of its prices
    /// is in force it wins over the catalog's.
    pub prices: Vec<ScheduleEntryView>,
    /// The price the org pays now: its custom one when in force, else the catalog's; `null`
    /// when neither has taken effect.
    pub effective: Option<EffectivePriceView>,
}

/// An org's custom prices for a model and the price it pays now (members; API keys need the
/// `read` scope).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/models/{model_id}/prices",
    tag = "models",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("model_id" = String, Path, max_length = 128, pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:/@+-]{0,126}[A-Za-z0-9])?$", description = "The model's id or an alias, in any letter case (`/` written `%2F`)"),
    ),
    responses(
        (status = 200, description = "The org's schedule and the price it pays now", body = OrgModelPrices),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or not the caller's; or no model has this name", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn org_model_prices(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let store = state.ledger.store().as_ref();
    let name = &path.1;
    let model = catalog::find_model(store, name)
        .await?
        .ok_or_else(|| no_such_model(name))?;
    let records = store
        .prices(&model.id, PriceScope::Org(access.org))
        .await
        .map_err(|error| internal(&error))?;
    let now = store.clock().now();
    let prices = schedule_views(&model.id, &records, now)?;
    let effective = match catalog::resolve_price(store, Some(access.org), &model.id, now).await {
        Ok(resolved) => Some(EffectivePriceView {
            source: price_source_name(resolved.source),
            price: PriceView::new(resolved.effective_from, &resolved.price),
        }),
        Err(error) if error.kind == ProblemKind::Unprocessable => None,
        Err(error) => return Err(error.into()),
    };
    Ok(HttpResponse::Ok().json(OrgModelPrices {
        org_id: access.org.to_string(),
        model_id: model.id,
        prices,
        effective,
    }))
}

// ---------------------------------------------------------------------------------------------
// Changing the catalog (admins).

/// `effective_from` in a body: an RFC 3339 date-time, a date, or `null` (now).
fn effective_from_body_schema() -> Schema {
    effective_from_schema(true)
}

/// `effective_from` in a query string: an RFC 3339 date-time or a date.
fn effective_from_query_schema() -> Schema {
    effective_from_schema(false)
}

fn effective_from_schema(nullable: bool) -> Schema {
    let text = |format| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(format)))
    };
    let mut any_of = AnyOfBuilder::new()
        .item(text(KnownFormat::DateTime))
        .item(text(KnownFormat::Date));
    if nullable {
        any_of = any_of.item(ObjectBuilder::new().schema_type(Type::Null));
    }
    any_of
        .description(Some(
            "When the price takes effect: an RFC 3339 date-time, or a date (midnight UTC); now \
             or later, at most 9999-12-31. Default: now. A price in the past is refused (422): \
             past costs never change.",
        ))
        .build()
        .into()
}

/// A long-context tier of a new price: above `above_prompt_tokens` prompt tokens its prices
/// bill every token of the call. USD per 1M tokens, decimal strings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierRequest {
    /// 1 to 100,000,000; each tier of a price starts above a different number.
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 100_000_000)]
    above_prompt_tokens: u64,
    #[schema(pattern = r"^(100000(\.0{1,10})?|[0-9]{1,5}(\.[0-9]{1,10})?)$")]
    input: String,
    /// Default: the tier's input price.
    #[schema(pattern = r"^(100000(\.0{1,10})?|[0-9]{1,5}(\.[0-9]{1,10})?)$")]
    cached_input: Option<String>,
    /// Default: the tier's input price.
    #[schema(pattern = r"^(100000(\.0{1,10})?|[0-9]{1,5}(\.[0-9]{1,10})?)$")]
    cache_write: Option<String>,
    #[schema(pattern = r"^(100000(\.0{1,10})?|[0-9]{1,5}(\.[0-9]{1,10})?)$")]
    output: String,
}

/// A new price, in USD per 1M tokens as decimal strings (0 to 100000, at most 10 decimal
/// places), from `effective_from` on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "effective_from": "2027-01-01", "input": "2.5", "cached_input": "1.25", "output": "10"
}))]
pub struct PriceRequest {
    #[schema(schema_with = effective_from_body_schema)]
    effective_from: Option<String>,
    /// Uncached prompt tokens.
    #[schema(pattern = r"^(100000(\.0{1,10})?|[0-9]{1,5}(\.[0-9]{1,10})?)$")]
    input: String,
    /// Prompt tokens read from the provider's cache. Default: the input price.
    #[schema(pattern = r"^(100000(\.0{1,10})?|[0-9]{1,5}(\.[0-9]{1,10})?)$")]
    cached_input: Option<String>,
    /// Prompt tokens written into the provider's cache. Default: the input price.
    #[schema(pattern = r"^(100000(\.0{1,10})?|[0-9]{1,5}(\.[0-9]{1,10})?)$")]
    cache_write: Option<String>,
    /// Generated tokens, reasoning included.
    #[schema(pattern = r"^(100000(\.0{1,10})?|[0-9]{1,5}(\.[0-9]{1,10})?)$")]
    output: String,
    /// Up to 8 long-context tiers, in any order; no two above the same number of tokens.
    #[serde(default)]
    #[schema(max_items = 8)]
    tiers: Vec<TierRequest>,
}

fn rates(
    field: &str,
    input: &str,
    cached_input: Option<&str>,
    cache_write: Option<&str>,
    output: &str,
) -> Result<Rates, actix_web::Error> {
    let named = |name: &str| format!("{field}{name}");
    let input_usd = input::price(&named("input"), input)?;
    let or_input = |name: &str, value: Option<&str>| {
        value.map_or(Ok(input_usd), |text| input::price(&named(name), text))
    };
    Rates::new(
        input_usd,
        or_input("cached_input", cached_input)?,
        or_input("cache_write", cache_write)?,
        input::price(&named("output"), output)?,
    )
    .map_err(|error| invalid(field.trim_end_matches('.'), error))
}

impl PriceRequest {
    /// The dated price, taking effect now or later. `field` prefixes field names in errors.
    pub(crate) fn parse(
        &self,
        field: &str,
        now: Timestamp,
    ) -> Result<DatedPrice, actix_web::Error> {
        let named = |name: &str| format!("{field}{name}");
        let base = rates(
            field,
            &self.input,
            self.cached_input.as_deref(),
            self.cache_write.as_deref(),
            &self.output,
        )?;
        let mut tiers = self
            .tiers
            .iter()
            .enumerate()
            .map(|(index, tier)| {
                let at = format!("{field}tiers[{index}].");
                let rates = rates(
                    &at,
                    &tier.input,
                    tier.cached_input.as_deref(),
                    tier.cache_write.as_deref(),
                    &tier.output,
                )?;
                Tier::new(tier.above_prompt_tokens, rates)
                    .map_err(|error| invalid(&format!("{at}above_prompt_tokens"), error))
            })
            .collect::<Result<Vec<_>, _>>()?;
        tiers.sort_by_key(Tier::above_prompt_tokens);
        if tiers
            .windows(2)
            .any(|pair| pair[0].above_prompt_tokens() == pair[1].above_prompt_tokens())
        {
            return Err(invalid(
                &named("tiers"),
                "two tiers start above the same number of prompt tokens",
            ));
        }
        let price = Price::new(base, tiers).map_err(|error| invalid(&named("tiers"), error))?;
        let effective_from = match self.effective_from.as_deref() {
            None => now,
            Some(text) => input::effective_from(&named("effective_from"), text)?,
        };
        if effective_from < now {
            return Err(invalid(
                &named("effective_from"),
                format!(
                    "{} is in the past (now is {}): a price takes effect now or later, so past \
                     costs never change",
                    rfc3339(effective_from),
                    rfc3339(now)
                ),
            ));
        }
        Ok(DatedPrice::new(effective_from, price))
    }
}

fn audit_entry(
    now: Timestamp,
    action: &str,
    target: &str,
    details: serde_json::Value,
    by: UserId,
) -> Result<AuditEntry, actix_web::Error> {
    let action = AuditAction::parse(action).map_err(|error| internal(&error))?;
    Ok(AuditEntry::new(now, action, target, details)
        .map_err(|error| internal(&error))?
        .by(by))
}

fn price_details(dated: &DatedPrice) -> serde_json::Value {
    serde_json::json!({
        "effective_from": rfc3339(dated.effective_from()),
        "price": serde_json::to_value(dated.price()).unwrap_or_default(),
    })
}

/// A model id or alias: ASCII letters, digits and `-._:/@+`, starting and ending with a letter
/// or digit; case-insensitive.
#[derive(Debug)]
pub struct ModelName;

impl utoipa::PartialSchema for ModelName {
    fn schema() -> utoipa::openapi::RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(128))
            .pattern(Some(input::MODEL_ID_PATTERN))
            .description(Some(
                "A model id or alias: ASCII letters, digits and `-._:/@+`, starting and ending \
                 with a letter or digit; case-insensitive.",
            ))
            .into()
    }
}

impl ToSchema for ModelName {}

/// A new model and its first price.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "id": "acme-large-2", "provider": "acme", "class": "pro", "aliases": ["acme-large-latest"],
    "context_window_tokens": 200000,
    "price": {"effective_from": "2027-01-01", "input": "3", "cached_input": "0.3", "output": "15"}
}))]
pub struct NewModelRequest {
    /// ASCII letters, digits and `-._:/@+`, starting and ending with a letter or digit;
    /// stored lowercase. Neither a model's id nor an alias yet.
    #[schema(
        max_length = 128,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:/@+-]{0,126}[A-Za-z0-9])?$"
    )]
    id: String,
    /// Who bills for it, such as `openai`; stored lowercase.
    #[schema(max_length = 40, pattern = r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")]
    provider: String,
    /// The model class its tokens belong to, such as `std`, `pro` or `max`.
    #[schema(max_length = 8, pattern = r"^[a-z][a-z0-9]{0,7}$")]
    class: String,
    /// Other names for it (up to 16), none of them a model's id or alias yet. The model's own
    /// id, and a name listed twice (in any letter case), count once.
    #[serde(default)]
    #[schema(max_items = 16, value_type = Vec<ModelName>)]
    aliases: Vec<String>,
    /// In tokens, 1 to 100,000,000; omit it when the provider does not publish one.
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 1, maximum = 100_000_000)]
    context_window_tokens: Option<u64>,
    price: PriceRequest,
}

impl NewModelRequest {
    fn parse(&self, now: Timestamp) -> Result<ModelEntry, actix_web::Error> {
        let id = ModelId::parse(&self.id).map_err(|error| invalid("id", error))?;
        let provider =
            Provider::parse(&self.provider).map_err(|error| invalid("provider", error))?;
        let class = ModelClass::parse(&self.class).map_err(|error| invalid("class", error))?;
        let mut aliases: Vec<ModelId> = Vec::with_capacity(self.aliases.len());
        for (index, alias) in self.aliases.iter().enumerate() {
            let alias = ModelId::parse(alias)
                .map_err(|error| invalid(&format!("aliases[{index}]"), error))?;
            if alias != id && !aliases.contains(&alias) {
                aliases.push(alias);
            }
        }
        let dated = self.price.parse("price.", now)?;
        let prices = PriceSchedule::single(dated.effective_from(), dated.price().clone())
            .map_err(|error| invalid("price.effective_from", error))?;
        let field = match self.context_window_tokens {
            Some(_) => "context_window_tokens",
            None => "aliases",
        };
        ModelEntry::new(
            id,
            provider,
            aliases,
            class,
            self.context_window_tokens,
            prices,
        )
        .map_err(|error| invalid(field, error))
    }
}

/// Adds a model with its first price (admins only).
#[utoipa::path(
    post,
    path = "/v1/admin/models",
    tag = "models",
    security(("bearer" = [])),
    request_body = NewModelRequest,
    responses(
        (status = 201, description = "Added; `Location` names the model", body = ModelView,
            headers(("Location" = String, description = "The new model: `/v1/models/{model_id}`"))),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id or an alias already names a model", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid, or the price would take effect in the past", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_model(
    admin: Admin,
    body: web::Json<NewModelRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let store = state.ledger.store().as_ref();
    let now = store.clock().now();
    let model = body.parse(now)?;
    let record = model_record(&model, ModelSource::Admin, now);
    let prices: Vec<PriceRecord> = model
        .prices()
        .entries()
        .iter()
        .map(|dated| price_record(dated, now, Some(admin.0.id)))
        .collect();
    let mut details = model
        .prices()
        .entries()
        .first()
        .map(price_details)
        .unwrap_or_default();
    details["provider"] = record.provider.clone().into();
    details["class"] = record.class.clone().into();
    details["aliases"] = record.aliases.clone().into();
    details["context_window_tokens"] = record.context_window.into();
    let audit = audit_entry(now, "models.add", &record.id, details, admin.0.id)?;
    store
        .add_model(&record, &prices, &audit)
        .await
        .map_err(pricing_error)?;
    let current = current_price(Some(model.prices()), now);
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/models/{}", path_segment(&record.id)),
        ))
        .json(model_view(&record, current)))
}

/// Adds `dated` to a schedule by the domain's rules (never in the past, never over a price in
/// force, at most [`MAX_SCHEDULE_ENTRIES`]), then writes it with its audit entry; the store
/// checks the same rules again under its lock.
async fn put_price(
    store: &dyn Store,
    model: &ModelRecord,
    scope: PriceScope,
    dated: DatedPrice,
    now: Timestamp,
    audit: AuditEntry,
) -> Result<PutPrice, actix_web::Error> {
    let existing = catalog::schedule(store, &model.id, scope).await?;
    let replaces = existing.as_ref().is_some_and(|schedule| {
        schedule
            .entries()
            .iter()
            .any(|entry| entry.effective_from() == dated.effective_from())
    });
    let checked = match existing {
        None => PriceSchedule::single(dated.effective_from(), dated.price().clone()).map(drop),
        Some(mut schedule) => schedule.add(dated.effective_from(), dated.price().clone(), now),
    };
    match checked {
        Ok(()) => {}
        Err(ScheduleError::AlreadyInForce { effective_from }) => {
            let detail = format!(
                "the price from {effective_from} is already in force and can no longer change"
            );
            return Err(ApiError::new(ProblemKind::Conflict, detail).into());
        }
        Err(ScheduleError::TooLong) => {
            let detail =
                format!("a schedule holds at most {MAX_SCHEDULE_ENTRIES} prices; this one is full");
            return Err(ApiError::new(ProblemKind::Conflict, detail).into());
        }
        Err(error) => return Err(invalid("effective_from", error)),
    }
    let record = price_record(&dated, now, audit.actor());
    let outcome = store
        .put_price(&model.id, scope, &record, now, &audit)
        .await
        .map_err(pricing_error)?;
    if (outcome == PutPrice::Replaced) != replaces {
        // Another admin changed the schedule between the read and the write; what was written
        // is right either way, and the answer says what happened.
        tracing::info!(model = %model.id, "the schedule changed while a price was added");
    }
    Ok(outcome)
}

/// What was added to a schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct PutPriceView {
    pub model_id: String,
    /// The org whose custom price it is; absent for a catalog price.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub org_id: Option<String>,
    pub price: PriceView,
}

fn put_price_answer(outcome: PutPrice, location: String, view: &PutPriceView) -> HttpResponse {
    match outcome {
        PutPrice::Added => HttpResponse::Created()
            .insert_header((header::LOCATION, location))
            .json(view),
        PutPrice::Replaced => HttpResponse::Ok().json(view),
    }
}

/// Adds a catalog price to a model from `effective_from` (now or later; admins only). A price
/// scheduled at the same instant and not yet in force is replaced.
#[utoipa::path(
    post,
    path = "/v1/admin/models/{model_id}/prices",
    tag = "models",
    security(("bearer" = [])),
    params(("model_id" = String, Path, max_length = 128, pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:/@+-]{0,126}[A-Za-z0-9])?$", description = "The model's id or an alias, in any letter case (`/` written `%2F`)")),
    request_body = PriceRequest,
    responses(
        (status = 200, description = "Replaced the scheduled price from that instant", body = PutPriceView),
        (status = 201, description = "Added; `Location` names the model's schedule", body = PutPriceView,
            headers(("Location" = String, description = "The schedule: `/v1/models/{model_id}/prices`"))),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No model has this name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The price from that instant is already in force, or the schedule is full (512 prices)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid, or the price would take effect in the past", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_price(
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<PriceRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let store = state.ledger.store().as_ref();
    let model = catalog::find_model(store, &path)
        .await?
        .ok_or_else(|| no_such_model(&path))?;
    let now = store.clock().now();
    let dated = body.parse("", now)?;
    let mut details = price_details(&dated);
    let view = PutPriceView {
        model_id: model.id.clone(),
        org_id: None,
        price: PriceView::new(dated.effective_from(), dated.price()),
    };
    details["scope"] = "catalog".into();
    let audit = audit_entry(now, "prices.put", &model.id, details, admin.0.id)?;
    let outcome = put_price(store, &model, PriceScope::Catalog, dated, now, audit).await?;
    let location = format!("/v1/models/{}/prices", path_segment(&model.id));
    Ok(put_price_answer(outcome, location, &view))
}

/// Adds a custom price for an org (admins only): from `effective_from` (now or later) the org
/// pays it instead of the catalog's.
#[utoipa::path(
    post,
    path = "/v1/admin/orgs/{org_id}/models/{model_id}/prices",
    tag = "models",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("model_id" = String, Path, max_length = 128, pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:/@+-]{0,126}[A-Za-z0-9])?$", description = "The model's id or an alias, in any letter case (`/` written `%2F`)"),
    ),
    request_body = PriceRequest,
    responses(
        (status = 200, description = "Replaced the org's scheduled price from that instant", body = PutPriceView),
        (status = 201, description = "Added; `Location` names the org's prices of the model", body = PutPriceView,
            headers(("Location" = String, description = "`/v1/orgs/{org_id}/models/{model_id}/prices`"))),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no model has this name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The org's price from that instant is already in force, or its schedule is full (512 prices)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid, or the price would take effect in the past", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_org_price(
    admin: Admin,
    path: web::Path<(String, String)>,
    body: web::Json<PriceRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let no_such_org =
        || -> actix_web::Error { ApiError::new(ProblemKind::NotFound, "no such org").into() };
    let org = OrgId::parse(&path.0).map_err(|_| no_such_org())?;
    let store = state.ledger.store().as_ref();
    if store
        .org(org)
        .await
        .map_err(|error| internal(&error))?
        .is_none()
    {
        return Err(no_such_org());
    }
    let model = catalog::find_model(store, &path.1)
        .await?
        .ok_or_else(|| no_such_model(&path.1))?;
    let now = store.clock().now();
    let dated = body.parse("", now)?;
    let mut details = price_details(&dated);
    details["scope"] = "org".into();
    let view = PutPriceView {
        model_id: model.id.clone(),
        org_id: Some(org.to_string()),
        price: PriceView::new(dated.effective_from(), dated.price()),
    };
    let audit = audit_entry(now, "org_prices.put", &model.id, details, admin.0.id)?.in_org(org);
    let outcome = put_price(store, &model, PriceScope::Org(org), dated, now, audit).await?;
    let location = format!("/v1/orgs/{org}/models/{}/prices", path_segment(&model.id));
    Ok(put_price_answer(outcome, location, &view))
}

// ---------------------------------------------------------------------------------------------
// Imports.

/// How an import runs.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// When the imported prices take effect (now or later). Default: now.
    #[param(schema_with = effective_from_query_schema)]
    effective_from: Option<String>,
    /// Report what the import would do and write nothing. Default: false.
    dry_run: Option<bool>,
}

/// LiteLLM's `model_prices_and_context_window.json`: entries by model name, each with its
/// `litellm_provider`, `mode`, `input_cost_per_token`, `output_cost_per_token`, cache prices
/// and long-context tiers. At most 100,000 entries and 16 MiB; entries that are not text
/// models, or not usable, are skipped and reported.
#[derive(Debug)]
pub struct LitellmPriceMap;

impl utoipa::PartialSchema for LitellmPriceMap {
    fn schema() -> utoipa::openapi::RefOr<Schema> {
        use utoipa::openapi::schema::AdditionalProperties;
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .max_properties(Some(litellm::MAX_MAP_ENTRIES))
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .description(Some(
                "LiteLLM's `model_prices_and_context_window.json`: entries by model name, each \
                 with its `litellm_provider`, `mode`, `input_cost_per_token`, \
                 `output_cost_per_token`, cache prices and long-context tiers. At most 100,000 \
                 entries and 16 MiB; entries that are not text models, or not usable, are \
                 skipped and reported.",
            ))
            .examples([serde_json::json!({
                "acme-large-2": {
                    "litellm_provider": "acme", "mode": "chat", "max_input_tokens": 200000,
                    "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                    "cache_read_input_token_cost": 3e-07
                }
            })])
            .into()
    }
}

impl ToSchema for LitellmPriceMap {}

/// An entry of the map that was not imported.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkippedEntry {
    pub key: String,
    /// A stable label: `not_a_text_model`, `no_price`, `duplicate`, `unusable_alias`, …
    pub reason: &'static str,
    /// What exactly was wrong.
    pub detail: String,
}

/// What an import did (or, in a dry run, would do).
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReport {
    pub dry_run: bool,
    #[schema(format = DateTime)]
    pub effective_from: String,
    /// Entries in the map.
    pub entries: u64,
    /// `alias_of` entries, imported as aliases of the models they name.
    pub aliases: u64,
    /// Models that were not in the catalog, added with their imported price.
    pub models_added: u64,
    /// Models whose imported price differs from the one in force then: a new price for each.
    pub prices_added: u64,
    /// Models whose imported price is the one in force then.
    pub unchanged: u64,
    /// Entries skipped, by reason label.
    pub skipped: BTreeMap<String, u64>,
    /// The first 200 entries skipped, in map order, with their reasons.
    pub skipped_entries: Vec<SkippedEntry>,
    /// Changes that no longer applied when they were written (another admin added the model,
    /// or a price at that instant, meanwhile).
    pub conflicts: u64,
    /// Imported models whose LiteLLM price has parts Credex does not bill (off-peak prices,
    /// a separate reasoning price).
    pub notes: u64,
}

/// How many skipped entries a report lists.
const SKIPPED_LISTED: usize = 200;
/// The largest map accepted.
pub const IMPORT_BODY_MAX: usize = 16 << 20;

/// The whole catalog by every name: its models and their catalog schedules.
async fn whole_catalog(
    store: &dyn Store,
) -> Result<BTreeMap<String, (String, Option<PriceSchedule>)>, actix_web::Error> {
    let mut names = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .models_page(
                after.as_deref(),
                credex_store::PAGE_MAX,
                &ModelFilter::default(),
            )
            .await
            .map_err(|error| internal(&error))?;
        let (Some(first), Some(last)) = (page.first(), page.last()) else {
            break;
        };
        let mut prices: BTreeMap<String, Vec<PriceRecord>> = BTreeMap::new();
        for (model, price) in store
            .catalog_prices_between(&first.id, &last.id)
            .await
            .map_err(|error| internal(&error))?
        {
            prices.entry(model).or_default().push(price);
        }
        for model in &page {
            let records = prices.get(&model.id).map_or(&[][..], Vec::as_slice);
            let schedule = parse_schedule(&model.id, records)?;
            for name in std::iter::once(&model.id).chain(&model.aliases) {
                names.insert(name.clone(), (model.id.clone(), schedule.clone()));
            }
        }
        if page.len() < usize::try_from(credex_store::PAGE_MAX).unwrap_or(usize::MAX) {
            break;
        }
        after = Some(last.id.clone());
    }
    Ok(names)
}

/// The changes an import makes to the catalog, and how many models it leaves unchanged.
fn import_changes(
    import: &Import,
    catalog: &BTreeMap<String, (String, Option<PriceSchedule>)>,
    effective_from: Timestamp,
    now: Timestamp,
    by: UserId,
) -> (Vec<ImportChange>, u64) {
    let mut changes = Vec::new();
    let mut unchanged = 0;
    for model in &import.models {
        let Some(dated) = model.prices().entries().first() else {
            continue;
        };
        let record = price_record(dated, now, Some(by));
        match catalog.get(model.id().as_str()) {
            None => changes.push(ImportChange::NewModel {
                model: model_record(model, ModelSource::Import, now),
                prices: vec![record],
            }),
            Some((id, schedule)) => {
                let in_force = schedule
                    .as_ref()
                    .and_then(|schedule| schedule.price_at(effective_from));
                if in_force.is_some_and(|current| current.price() == dated.price()) {
                    unchanged += 1;
                } else {
                    changes.push(ImportChange::NewPrice {
                        model_id: id.clone(),
                        price: record,
                    });
                }
            }
        }
    }
    (changes, unchanged)
}

/// Imports LiteLLM's price map (admins only): adds the text models the catalog lacks, and a
/// price from `effective_from` for each model whose imported price differs from the one in
/// force then. With `dry_run`, only reports.
#[utoipa::path(
    post,
    path = "/v1/admin/prices/import",
    tag = "models",
    security(("bearer" = [])),
    params(ImportQuery),
    request_body = LitellmPriceMap,
    responses(
        (status = 200, description = "What the import did, or would do", body = ImportReport),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The map is larger than 16 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is not valid, `effective_from` is in the past, the map has more than 100,000 entries, or it would add or change more than 20,000 models at once", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn import_prices(
    admin: Admin,
    req: HttpRequest,
    query: web::Query<ImportQuery>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let store = state.ledger.store().clone();
    let now = store.clock().now();
    let effective_from = match query.effective_from.as_deref() {
        None => now,
        Some(text) => input::effective_from("effective_from", text)?,
    };
    if effective_from < now {
        return Err(invalid(
            "effective_from",
            format!(
                "{} is in the past (now is {}): imported prices take effect now or later",
                rfc3339(effective_from),
                rfc3339(now)
            ),
        ));
    }
    let dry_run = query.dry_run.unwrap_or(false);
    let text = json_text(&req, &body)?.to_owned();
    let import = web::block(move || litellm::import(&text, effective_from))
        .await
        .map_err(|error| internal(&error))?
        .map_err(|error| import_error(&error))?;
    let catalog = whole_catalog(store.as_ref()).await?;
    let (changes, unchanged) = import_changes(&import, &catalog, effective_from, now, admin.0.id);
    if changes.len() > IMPORT_MAX_MODELS {
        let detail = format!(
            "the map would add or change {} models; one import does at most {IMPORT_MAX_MODELS}",
            changes.len()
        );
        return Err(ApiError::new(ProblemKind::Unprocessable, detail).into());
    }
    let new_models = changes
        .iter()
        .filter(|change| matches!(change, ImportChange::NewModel { .. }))
        .count();
    // LiteLLM's `alias_of` rows become aliases of the models they name.
    let aliases: usize = import
        .models
        .iter()
        .map(|model| model.aliases().len())
        .sum();
    let mut report = ImportReport {
        dry_run,
        effective_from: rfc3339(effective_from),
        entries: count(import.models.len() + aliases + import.skipped.len()),
        aliases: count(aliases),
        models_added: count(new_models),
        prices_added: count(changes.len() - new_models),
        unchanged,
        skipped: import
            .skip_counts()
            .into_iter()
            .map(|(label, n)| (label.to_owned(), count(n)))
            .collect(),
        skipped_entries: import
            .skipped
            .iter()
            .take(SKIPPED_LISTED)
            .map(|skipped| SkippedEntry {
                key: skipped.key.chars().take(200).collect(),
                reason: skipped.reason.label(),
                detail: skipped.reason.to_string().chars().take(300).collect(),
            })
            .collect(),
        conflicts: 0,
        notes: count(import.notes.len()),
    };
    if !dry_run {
        let details = serde_json::json!({
            "effective_from": report.effective_from,
            "entries": report.entries,
            "models_added": report.models_added,
            "prices_added": report.prices_added,
            "unchanged": report.unchanged,
            "skipped": report.skipped,
        });
        let audit = audit_entry(now, "prices.import", "litellm", details, admin.0.id)?;
        let counts = store
            .import_models(&changes, now, &audit)
            .await
            .map_err(pricing_error)?;
        report.models_added = counts.models_added;
        report.prices_added = counts.prices_added;
        report.conflicts = counts.skipped;
    }
    Ok(HttpResponse::Ok().json(report))
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn import_error(error: &litellm::ImportError) -> actix_web::Error {
    match error {
        litellm::ImportError::TooLarge => {
            ApiError::new(ProblemKind::PayloadTooLarge, error.to_string()).into()
        }
        litellm::ImportError::NotAMap(_) => {
            ApiError::new(ProblemKind::MalformedJson, error.to_string()).into()
        }
        litellm::ImportError::TooManyEntries | litellm::ImportError::EffectiveFrom(_) => {
            ApiError::new(ProblemKind::Unprocessable, error.to_string()).into()
        }
    }
}

/// The body as JSON text: `application/json` and UTF-8.
fn json_text<'a>(req: &HttpRequest, body: &'a [u8]) -> Result<&'a str, actix_web::Error> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !json {
        return Err(ApiError::bare(ProblemKind::UnsupportedMediaType).into());
    }
    std::str::from_utf8(body).map_err(|error| {
        ApiError::new(ProblemKind::MalformedJson, format!("not UTF-8: {error}")).into()
    })
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/v1/models").route(web::get().to(list_models)))
        .service(web::resource("/v1/models/{model_id}").route(web::get().to(get_model)))
        .service(web::resource("/v1/models/{model_id}/prices").route(web::get().to(model_prices)))
        .service(
            web::resource("/v1/orgs/{org_id}/models/{model_id}/prices")
                .route(web::get().to(org_model_prices)),
        )
        .service(web::resource("/v1/admin/models").route(web::post().to(add_model)))
        .service(
            web::resource("/v1/admin/models/{model_id}/prices").route(web::post().to(add_price)),
        )
        .service(
            web::resource("/v1/admin/orgs/{org_id}/models/{model_id}/prices")
                .route(web::post().to(add_org_price)),
        )
        .service(
            web::resource("/v1/admin/prices/import")
                .app_data(web::PayloadConfig::new(IMPORT_BODY_MAX))
                .route(web::post().to(import_prices)),
        );
}
