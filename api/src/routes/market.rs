//! The market over HTTP. Market data (markets, quotes, depth, recent fills, price history) is
//! for anyone signed in; an org's listings, orders and buybacks are its own; admins tune a
//! market's settings and link orgs that must never trade with each other.
//!
//! Every write (a listing, an amendment, a cancel, an order, a buyback) needs an
//! `Idempotency-Key`: the request's identity derives from it, so a retry finds what the first
//! run did (the same listing, order or buyback, the same ledger transfers) and answers it. The
//! rules live in [`crate::market`] and the ledger; this module parses, calls, and renders,
//! mapping each refusal to a problem that says why.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use credex_ledger::{AssetCode, OrgId, Timestamp};
use credex_matching::{Limit, ASK_MAX, QUANTITY_MAX};
use credex_pricing::decay::price_at;
use credex_pricing::DecayCurve;
use credex_store::{
    AuditAction, AuditEntry, BuybackRecord, FillRecord, ListingRecord, ListingState, Store,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::access::{Admin, Caller, MarketTrade, OrgAccess, Read};
use crate::idempotency::{self, Answer, IdempotencyKey};
use crate::input::{self, integer, invalid};
use crate::market::{
    BuyRequest, BuybackRequest, FraudPolicy, ListRequest, MarketError, MarketInfo,
    MarketSettingsInput, Refusal, Withdrawer,
};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::ratelimit::TooMany;
use crate::routes::ledger::json_body;
use crate::routes::models::require_read;
use crate::startup::AppState;
use crate::views::rfc3339;

/// The most listings, fills or buybacks one read answers.
const PAGE_MAX: u32 = credex_store::market::MARKET_PAGE_MAX;
/// The most depth levels one read answers.
const DEPTH_MAX: usize = credex_matching::DEPTH_LEVELS_MAX;
/// Bodies of market writes are small.
const WRITE_BODY_MAX: usize = 16 << 10;

fn problem(kind: ProblemKind, detail: impl Into<String>) -> actix_web::Error {
    ApiError::new(kind, detail).into()
}

/// Each refusal of the market service as a problem that says why.
fn market_error(error: MarketError) -> actix_web::Error {
    use MarketError as E;
    let detail = error.to_string();
    match error {
        E::Store(error) => internal(&error),
        E::Cycle(error) => internal(&error),
        E::Settlement(error) => internal(&error),
        E::NotATokenAsset(_)
        | E::NoSuchCycle(_)
        | E::NoMarket(_)
        | E::NoSuchClass { .. }
        | E::UnknownOrg(_)
        | E::ListingNotFound(_) => problem(ProblemKind::NotFound, detail),
        E::Refused(refusal) => match refusal {
            Refusal::SellCap { .. } => problem(ProblemKind::Conflict, detail),
            _ => problem(ProblemKind::Forbidden, detail),
        },
        E::OutsideListingWindow { .. }
        | E::MarketEnded { .. }
        | E::AutoSellOutOfRange
        | E::ListingNotOpen { .. }
        | E::NotADecrease { .. }
        | E::InsufficientTokens
        | E::InsufficientCredits
        | E::Ledger(_)
        | E::Buyback(_)
        | E::Settings(_)
        | E::Match(_) => problem(ProblemKind::Conflict, detail),
        E::Listing(_) | E::Order(_) | E::InvalidId | E::IdempotencyConflict(_) => {
            problem(ProblemKind::Unprocessable, detail)
        }
    }
}

fn asset_of_path(raw: &str) -> Result<AssetCode, actix_web::Error> {
    let not_found = || problem(ProblemKind::NotFound, format!("no market trades {raw:?}"));
    if !input::is_market_asset(raw) {
        return Err(not_found());
    }
    AssetCode::parse(raw).map_err(|_| not_found())
}

fn asset_of_body(raw: &str) -> Result<AssetCode, actix_web::Error> {
    if !input::is_market_asset(raw) {
        return Err(invalid("asset", "a token asset TOK.<class>.<YYYY-MM>"));
    }
    AssetCode::parse(raw).map_err(|error| invalid("asset", error))
}

fn in_range(
    field: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, actix_web::Error> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("{} to {}", range.start(), range.end()),
        ))
    }
}

/// Runs a market write once per `Idempotency-Key` in the org's scope (a replay answers the
/// first answer); only a new request counts against the org's velocity limit.
async fn market_write<Fut>(
    state: web::Data<AppState>,
    org: OrgId,
    req: &HttpRequest,
    body: &[u8],
    key: &IdempotencyKey,
    work: impl FnOnce(std::sync::Arc<AppState>) -> Fut,
) -> Result<HttpResponse, actix_web::Error>
where
    Fut: std::future::Future<Output = Result<Answer, actix_web::Error>>,
{
    let fingerprint = idempotency::fingerprint(req, body);
    let store = state.ledger.store().clone();
    let state = state.into_inner();
    idempotency::once(
        store.as_ref(),
        &org.to_string(),
        key,
        fingerprint,
        || async move {
            velocity(&state, org)?;
            work(state).await
        },
    )
    .await
}

/// Takes one market write from the org's allowance (velocity limit), or answers 429.
fn velocity(state: &AppState, org: OrgId) -> Result<(), actix_web::Error> {
    state
        .market_velocity
        .check(&org.to_string())
        .map_err(|wait| TooMany(wait).into())
}

// ---------------------------------------------------------------------------------------------
// Settings: the shapes of a market's curve, fee, buyback terms and emergency credits.

/// A time-decay curve: the factor the asks are multiplied by, from 1 when the listing window
/// opens down to `floor` at the cycle's end.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CurveBody {
    /// Linear from 1 to `floor`.
    Linear {
        #[schema(pattern = r"^0(\.[0-9]{1,9})?$")]
        floor: String,
    },
    /// `floor + (1 − floor) · 0.5^(elapsed / half-life)`.
    HalfLife {
        #[serde(deserialize_with = "integer::required")]
        #[schema(minimum = 1, maximum = 31_622_400)]
        half_life_seconds: u64,
        #[schema(pattern = r"^0(\.[0-9]{1,9})?$")]
        floor: String,
    },
    /// `steps` equal drops from 1 to `floor`, the last one at the cycle's end.
    Stairstep {
        #[serde(deserialize_with = "integer::required")]
        #[schema(minimum = 1, maximum = 100)]
        steps: u32,
        #[schema(pattern = r"^0(\.[0-9]{1,9})?$")]
        floor: String,
    },
}

impl CurveBody {
    pub(crate) fn parse(&self, field: &str) -> Result<DecayCurve, actix_web::Error> {
        let floor_of =
            |raw: &str| input::decimal(&format!("{field}.floor"), raw, input::is_fraction(raw));
        let curve = match self {
            Self::Linear { floor } => DecayCurve::linear(floor_of(floor)?),
            Self::HalfLife {
                half_life_seconds,
                floor,
            } => DecayCurve::half_life(*half_life_seconds, floor_of(floor)?),
            Self::Stairstep { steps, floor } => DecayCurve::stairstep(*steps, floor_of(floor)?),
        };
        curve.map_err(|error| invalid(field, error))
    }
}

/// Who pays a market fee.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeePayerName {
    /// Deducted from the seller's proceeds.
    Seller,
    /// Added to what the buyer pays.
    Buyer,
}

/// A market's buyback terms: the provider pays face value × `rate` (× the schedule's factor,
/// if any) per token sold back, within optional caps per cycle and per org.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuybackTerms {
    /// More than 0, at most 1, at most 9 decimal places without trailing zeros (default 0.9).
    #[serde(default)]
    #[schema(pattern = r"^(0\.[0-9]{0,8}[1-9]|1(\.0{1,9})?)$")]
    pub rate: Option<String>,
    /// A decay of the buyback price over the listing window; none keeps it flat.
    #[serde(default, deserialize_with = "input::object::optional")]
    pub schedule: Option<CurveBody>,
    /// The most µCR buybacks pay in the cycle, all orgs together (none: no cap; 0 stops them).
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_u64)]
    pub cycle_cap_micro_cr: Option<u64>,
    /// The most µCR buybacks pay one org in the cycle (none: no cap).
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_u64)]
    pub org_cap_micro_cr: Option<u64>,
}

/// A market's settings as they are.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SettingsView {
    pub curve: CurveBody,
    /// The fee on each fill, a fraction of its cost.
    #[schema(pattern = r"^0(\.[0-9]{1,9})?$")]
    pub fee_rate: String,
    pub fee_payer: FeePayerName,
    pub buyback: BuybackTerms,
    /// What the provider charges for emergency credits (tokens it sells when listings run
    /// out), in µCR per 1M tokens.
    pub provider_list_price_per_1m_micro_cr: u64,
    /// Whether the provider sells emergency credits in this market.
    pub provider_fill: bool,
}

fn settings_view(info: &MarketInfo) -> Result<SettingsView, actix_web::Error> {
    serde_json::from_str(&info.settings.to_json()).map_err(|error| internal(&error))
}

/// A market: the token asset it trades, its listing window and settings, and its prices now.
#[derive(Debug, Serialize, ToSchema)]
pub struct MarketView {
    #[schema(
        pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
    )]
    pub asset: String,
    pub class: String,
    pub cycle: String,
    /// Listings are taken from here until the cycle ends; the decay runs over this window.
    #[schema(format = DateTime)]
    pub window_opens_at: String,
    #[schema(format = DateTime)]
    pub cycle_ends_at: String,
    pub settings: SettingsView,
    #[schema(format = DateTime)]
    pub settings_updated_at: String,
    /// The decay factor now, a decimal from 0 to 1.
    pub decay_factor_now: String,
    /// The cheapest decayed price in the book now, µCR per 1M tokens; none when empty.
    pub best_price_now_per_1m_micro_cr: Option<u64>,
    /// Tokens for sale at that price.
    pub best_quantity_now: Option<u64>,
    /// What the provider pays now for 1M tokens sold back.
    pub buyback_price_now_per_1m_micro_cr: u64,
}

async fn market_view(state: &AppState, info: &MarketInfo) -> Result<MarketView, actix_web::Error> {
    let market = &state.market;
    let now = state.ledger.store().clock().now();
    let best = market.best(info).await.map_err(market_error)?;
    let factor = info.settings.curve().factor(info.window, now);
    Ok(MarketView {
        asset: info.record.asset.to_string(),
        class: info.record.class.clone(),
        cycle: info.record.cycle.clone(),
        window_opens_at: rfc3339(info.record.window_open),
        cycle_ends_at: rfc3339(info.record.cycle_end),
        settings: settings_view(info)?,
        settings_updated_at: rfc3339(info.record.settings_updated_at),
        decay_factor_now: factor.as_decimal().normalize().to_string(),
        best_price_now_per_1m_micro_cr: best.map(|(price, _)| price),
        best_quantity_now: best.map(|(_, quantity)| quantity),
        buyback_price_now_per_1m_micro_cr: market
            .buyback_price_now(info)
            .await
            .map_err(market_error)?,
    })
}

async fn existing_market(
    state: &AppState,
    asset: &AssetCode,
) -> Result<MarketInfo, actix_web::Error> {
    state
        .market
        .market(asset)
        .await
        .map_err(market_error)?
        .ok_or_else(|| problem(ProblemKind::NotFound, format!("no market trades {asset}")))
}

/// Filters of the market list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MarketsQuery {
    /// Only the markets of this cycle (`YYYY-MM`).
    #[param(
        pattern = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
    )]
    cycle: Option<String>,
}

/// The markets, by asset (anyone signed in). A market exists once its cycle opened and anyone
/// traded or an admin set it up.
#[utoipa::path(
    get,
    path = "/v1/markets",
    tag = "market",
    security(("bearer" = [])),
    params(MarketsQuery),
    responses(
        (status = 200, description = "Markets by asset", body = Vec<MarketView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A filter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_markets(
    caller: Caller,
    query: web::Query<MarketsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let cycle = query.into_inner().cycle;
    if let Some(cycle) = &cycle {
        if !input::is_cycle(cycle) {
            return Err(invalid("cycle", "YYYY-MM"));
        }
    }
    let records = state
        .ledger
        .store()
        .markets(cycle.as_deref())
        .await
        .map_err(|error| internal(&error))?;
    let mut views = Vec::with_capacity(records.len());
    for record in records {
        let info = MarketInfo::parse(record).map_err(market_error)?;
        views.push(market_view(&state, &info).await?);
    }
    Ok(HttpResponse::Ok().json(views))
}

/// One market (anyone signed in).
#[utoipa::path(
    get,
    path = "/v1/markets/{asset}",
    tag = "market",
    security(("bearer" = [])),
    params(("asset" = String, Path, pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The token asset, `TOK.<class>.<YYYY-MM>`")),
    responses(
        (status = 200, description = "The market", body = MarketView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No market trades this asset", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_market(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let asset = asset_of_path(&path)?;
    let info = existing_market(&state, &asset).await?;
    Ok(HttpResponse::Ok().json(market_view(&state, &info).await?))
}

/// What buying a quantity now would cost.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QuoteQuery {
    /// Tokens (1 to 10^12).
    #[serde(deserialize_with = "integer::required_in_query")]
    #[param(minimum = 1, maximum = 1_000_000_000_000_u64)]
    quantity: u64,
}

/// What buying a quantity from the book would cost now.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuoteView {
    pub asset: String,
    pub requested: u64,
    /// How much of it the listings can fill now (respecting their minimum fills).
    pub available: u64,
    /// The fills' costs at the decayed prices.
    pub cost_micro_cr: u64,
    pub fee_micro_cr: u64,
    /// Cost plus fees if the buyer pays them.
    pub buyer_pays_micro_cr: u64,
    /// What the provider would charge for the rest as emergency credits, if it sells them.
    pub provider_rest_micro_cr: Option<u64>,
    #[schema(format = DateTime)]
    pub at: String,
}

/// What buying `quantity` tokens would cost now, from the cheapest listings up (anyone signed
/// in; an order may differ: it skips its own org's listings and prices at its own instant).
#[utoipa::path(
    get,
    path = "/v1/markets/{asset}/quote",
    tag = "market",
    security(("bearer" = [])),
    params(("asset" = String, Path, pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The token asset"), QuoteQuery),
    responses(
        (status = 200, description = "The quote", body = QuoteView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No market trades this asset", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The market is not open now (before its window, or after the cycle ended)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid quantity", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn market_quote(
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<QuoteQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let asset = asset_of_path(&path)?;
    let quantity = in_range("quantity", query.into_inner().quantity, 1..=QUANTITY_MAX)?;
    let info = existing_market(&state, &asset).await?;
    let quote = state
        .market
        .quote(&asset, quantity)
        .await
        .map_err(market_error)?;
    let rest = quantity.saturating_sub(quote.quantity);
    let provider_rest_micro_cr = info.settings.provider_fill().then(|| {
        credex_pricing::decay::purchase_cost_micro_cr(
            rest,
            info.settings.provider_list_price_per_1m_micro_cr(),
        )
    });
    Ok(HttpResponse::Ok().json(QuoteView {
        asset: asset.to_string(),
        requested: quantity,
        available: quote.quantity,
        cost_micro_cr: quote.cost_micro_cr,
        fee_micro_cr: quote.fee_micro_cr,
        buyer_pays_micro_cr: quote.buyer_pays_micro_cr,
        provider_rest_micro_cr: provider_rest_micro_cr.and_then(Result::ok),
        at: rfc3339(state.ledger.store().clock().now()),
    }))
}

/// How many price levels.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DepthQuery {
    /// Price levels, cheapest first (1 to 1,000; default 20).
    #[serde(deserialize_with = "integer::optional_in_query", default)]
    #[param(minimum = 1, maximum = 1000)]
    levels: Option<u32>,
}

/// One price level of the book now.
#[derive(Debug, Serialize, ToSchema)]
pub struct DepthLevelView {
    /// The decayed price now, µCR per 1M tokens.
    pub price_per_1m_micro_cr: u64,
    pub quantity: u64,
    pub listings: u32,
}

/// The book's depth now, by decayed price, cheapest first (anyone signed in).
#[utoipa::path(
    get,
    path = "/v1/markets/{asset}/depth",
    tag = "market",
    security(("bearer" = [])),
    params(("asset" = String, Path, pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The token asset"), DepthQuery),
    responses(
        (status = 200, description = "Price levels, cheapest first", body = Vec<DepthLevelView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No market trades this asset", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid number of levels", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn market_depth(
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<DepthQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let asset = asset_of_path(&path)?;
    let levels = query.into_inner().levels.unwrap_or(20);
    let levels = in_range("levels", u64::from(levels), 1..=DEPTH_MAX as u64)?;
    existing_market(&state, &asset).await?;
    let depth = state
        .market
        .depth(&asset, usize::try_from(levels).unwrap_or(DEPTH_MAX))
        .await
        .map_err(market_error)?;
    let views: Vec<DepthLevelView> = depth
        .into_iter()
        .map(|level| DepthLevelView {
            price_per_1m_micro_cr: level.price_per_1m_micro_cr,
            quantity: level.quantity,
            listings: level.listings,
        })
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

/// How many.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// At most this many (1 to 1,000; default 100).
    #[serde(deserialize_with = "integer::optional_in_query", default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

impl LimitQuery {
    fn get(&self) -> Result<u32, actix_web::Error> {
        let limit = in_range(
            "limit",
            u64::from(self.limit.unwrap_or(100)),
            1..=u64::from(PAGE_MAX),
        )?;
        Ok(u32::try_from(limit).unwrap_or(PAGE_MAX))
    }
}

/// A trade as the market shows it (no orgs).
#[derive(Debug, Serialize, ToSchema)]
pub struct TradeView {
    pub quantity: u64,
    pub price_per_1m_micro_cr: u64,
    pub cost_micro_cr: u64,
    /// Whether the provider sold it (emergency credits) rather than a listing.
    pub from_provider: bool,
    #[schema(format = DateTime)]
    pub at: String,
}

impl From<&FillRecord> for TradeView {
    fn from(fill: &FillRecord) -> Self {
        Self {
            quantity: fill.quantity,
            price_per_1m_micro_cr: fill.price_per_1m_micro_cr,
            cost_micro_cr: fill.cost_micro_cr,
            from_provider: fill.listing_id.is_none(),
            at: rfc3339(fill.at),
        }
    }
}

/// The market's most recent trades, newest first (anyone signed in).
#[utoipa::path(
    get,
    path = "/v1/markets/{asset}/fills",
    tag = "market",
    security(("bearer" = [])),
    params(("asset" = String, Path, pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The token asset"), LimitQuery),
    responses(
        (status = 200, description = "Trades, newest first", body = Vec<TradeView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No market trades this asset", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn market_fills(
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<LimitQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let asset = asset_of_path(&path)?;
    let limit = query.get()?;
    existing_market(&state, &asset).await?;
    let fills = state
        .market
        .recent_fills(&asset, limit)
        .await
        .map_err(market_error)?;
    let views: Vec<TradeView> = fills.iter().map(TradeView::from).collect();
    Ok(HttpResponse::Ok().json(views))
}

/// The bucket of a price history.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BucketName {
    Hour,
    Day,
}

/// Which buckets.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// An hour (default) or a day.
    #[param(inline)]
    bucket: Option<BucketName>,
}

/// The trades of one bucket: open, high, low and close price per 1M tokens, and the volume.
#[derive(Debug, Serialize, ToSchema)]
pub struct PriceBucket {
    #[schema(format = DateTime)]
    pub starts_at: String,
    pub open_per_1m_micro_cr: u64,
    pub high_per_1m_micro_cr: u64,
    pub low_per_1m_micro_cr: u64,
    pub close_per_1m_micro_cr: u64,
    pub volume_tokens: u64,
    pub trades: u32,
}

/// A market's price history.
#[derive(Debug, Serialize, ToSchema)]
pub struct PriceHistoryView {
    pub asset: String,
    /// The trades it covers: the market's most recent 1,000 trades between orgs (emergency
    /// credits sold by the provider are not market prices and are left out).
    pub trades: u32,
    /// Oldest first.
    pub buckets: Vec<PriceBucket>,
}

/// A market's price history in hourly or daily buckets over its recent trades between orgs
/// (anyone signed in).
#[utoipa::path(
    get,
    path = "/v1/markets/{asset}/history",
    tag = "market",
    security(("bearer" = [])),
    params(("asset" = String, Path, pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The token asset"), HistoryQuery),
    responses(
        (status = 200, description = "Buckets, oldest first", body = PriceHistoryView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No market trades this asset", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid bucket", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn price_history(
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let asset = asset_of_path(&path)?;
    let bucket_micros: i64 = match query.into_inner().bucket.unwrap_or(BucketName::Hour) {
        BucketName::Hour => 3_600_000_000,
        BucketName::Day => 86_400_000_000,
    };
    existing_market(&state, &asset).await?;
    let fills = state
        .market
        .recent_fills(&asset, PAGE_MAX)
        .await
        .map_err(market_error)?;
    let mut trades = 0_u32;
    let mut buckets: Vec<(i64, PriceBucket)> = Vec::new();
    // Newest first from the store: walk it backwards, oldest first.
    for fill in fills.iter().rev().filter(|fill| fill.listing_id.is_some()) {
        trades += 1;
        let start = fill.at.as_micros().div_euclid(bucket_micros) * bucket_micros;
        let price = fill.price_per_1m_micro_cr;
        match buckets.last_mut() {
            Some((at, bucket)) if *at == start => {
                bucket.high_per_1m_micro_cr = bucket.high_per_1m_micro_cr.max(price);
                bucket.low_per_1m_micro_cr = bucket.low_per_1m_micro_cr.min(price);
                bucket.close_per_1m_micro_cr = price;
                bucket.volume_tokens = bucket.volume_tokens.saturating_add(fill.quantity);
                bucket.trades += 1;
            }
            _ => buckets.push((
                start,
                PriceBucket {
                    starts_at: rfc3339(Timestamp::from_micros(start)),
                    open_per_1m_micro_cr: price,
                    high_per_1m_micro_cr: price,
                    low_per_1m_micro_cr: price,
                    close_per_1m_micro_cr: price,
                    volume_tokens: fill.quantity,
                    trades: 1,
                },
            )),
        }
    }
    Ok(HttpResponse::Ok().json(PriceHistoryView {
        asset: asset.to_string(),
        trades,
        buckets: buckets.into_iter().map(|(_, bucket)| bucket).collect(),
    }))
}

// ---------------------------------------------------------------------------------------------
// Admin: settings and links.

/// Changes to a market's settings; what is left out stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarketPatch {
    /// When listings open (before the cycle's end); the decay runs from here.
    #[schema(format = DateTime)]
    window_opens_at: Option<String>,
    #[serde(default, deserialize_with = "input::object::optional")]
    curve: Option<CurveBody>,
    /// The fee on each fill, a fraction of its cost from 0 to below 1.
    #[schema(pattern = r"^0(\.[0-9]{1,9})?$")]
    fee_rate: Option<String>,
    fee_payer: Option<FeePayerName>,
    /// The buyback terms, replaced whole.
    #[serde(default, deserialize_with = "input::object::optional")]
    buyback: Option<BuybackTerms>,
    /// µCR per 1M tokens for emergency credits (1 to 10^12).
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    provider_list_price_per_1m_micro_cr: Option<u64>,
    provider_fill: Option<bool>,
}

fn parse_buyback(
    terms: &BuybackTerms,
) -> Result<credex_pricing::BuybackSettingsInput, actix_web::Error> {
    let rate = match &terms.rate {
        Some(raw) => input::decimal("buyback.rate", raw, input::is_buyback_rate(raw))?,
        None => credex_pricing::BuybackSettingsInput::default().rate,
    };
    let schedule = terms
        .schedule
        .as_ref()
        .map(|curve| curve.parse("buyback.schedule"))
        .transpose()?;
    for (field, cap) in [
        ("buyback.cycle_cap_micro_cr", terms.cycle_cap_micro_cr),
        ("buyback.org_cap_micro_cr", terms.org_cap_micro_cr),
    ] {
        if let Some(cap) = cap {
            in_range(field, cap, 0..=credex_ledger::AMOUNT_MAX)?;
        }
    }
    Ok(credex_pricing::BuybackSettingsInput {
        rate,
        schedule,
        cycle_cap_micro_cr: terms.cycle_cap_micro_cr,
        org_cap_micro_cr: terms.org_cap_micro_cr,
    })
}

/// Sets up or tunes a market (admins only): its listing window, decay curve, fee, buyback
/// terms and emergency credits. Effective from this instant for every decision taken after;
/// recorded in the market's settings history and the audit log. A market is made for a token
/// asset of an opened cycle on first use.
#[utoipa::path(
    patch,
    path = "/v1/admin/markets/{asset}",
    tag = "market",
    security(("bearer" = [])),
    params(("asset" = String, Path, pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The token asset")),
    request_body = MarketPatch,
    responses(
        (status = 200, description = "The market as it is now", body = MarketView),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The cycle has not been opened, or has no such class", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The window would open at or after the cycle's end", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_market(
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<MarketPatch>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let asset = asset_of_path(&path)?;
    let patch = body.into_inner();
    let window_open = patch
        .window_opens_at
        .as_deref()
        .map(|raw| input::instant("window_opens_at", raw))
        .transpose()?;
    let curve = patch.curve.as_ref().map(|c| c.parse("curve")).transpose()?;
    let fee_rate = patch
        .fee_rate
        .as_deref()
        .map(|raw| input::decimal("fee_rate", raw, input::is_fraction(raw)))
        .transpose()?;
    let buyback = patch.buyback.as_ref().map(parse_buyback).transpose()?;
    if let Some(price) = patch.provider_list_price_per_1m_micro_cr {
        in_range("provider_list_price_per_1m_micro_cr", price, 1..=ASK_MAX)?;
    }
    let market = &state.market;
    let info = market.ensure_market(&asset).await.map_err(market_error)?;
    let mut settings = MarketSettingsInput::from(info.settings);
    if let Some(curve) = curve {
        settings.curve = curve;
    }
    if let Some(rate) = fee_rate {
        settings.fee_rate = rate;
    }
    if let Some(payer) = patch.fee_payer {
        settings.fee_payer = match payer {
            FeePayerName::Seller => credex_matching::FeePayer::Seller,
            FeePayerName::Buyer => credex_matching::FeePayer::Buyer,
        };
    }
    if let Some(buyback) = buyback {
        settings.buyback = buyback
            .try_into()
            .map_err(|error: credex_pricing::BuybackSettingsError| invalid("buyback", error))?;
    }
    if let Some(price) = patch.provider_list_price_per_1m_micro_cr {
        settings.provider_list_price_per_1m_micro_cr = price;
    }
    if let Some(fill) = patch.provider_fill {
        settings.provider_fill = fill;
    }
    let settings = settings
        .try_into()
        .map_err(|error: crate::market::SettingsError| invalid("settings", error))?;
    let window_open = window_open.unwrap_or(info.record.window_open);
    let info = market
        .change_settings(&asset, window_open, settings, Some(admin.0.id))
        .await
        .map_err(market_error)?;
    Ok(HttpResponse::Ok().json(market_view(&state, &info).await?))
}

/// One change of a market's settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsChangeView {
    #[schema(format = DateTime)]
    pub changed_at: String,
    #[schema(format = DateTime)]
    pub window_opens_at: String,
    pub settings: SettingsView,
    /// The admin who changed them (none for the defaults a market starts with).
    #[schema(format = Uuid)]
    pub changed_by: Option<String>,
}

/// Every settings change of a market, oldest first (admins only).
#[utoipa::path(
    get,
    path = "/v1/admin/markets/{asset}/settings-history",
    tag = "market",
    security(("bearer" = [])),
    params(("asset" = String, Path, pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The token asset")),
    responses(
        (status = 200, description = "Changes, oldest first", body = Vec<SettingsChangeView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No market trades this asset", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn settings_history(
    _admin: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let asset = asset_of_path(&path)?;
    existing_market(&state, &asset).await?;
    let changes = state
        .ledger
        .store()
        .market_settings_history(&asset)
        .await
        .map_err(|error| internal(&error))?;
    let mut views = Vec::with_capacity(changes.len());
    for change in changes {
        views.push(SettingsChangeView {
            changed_at: rfc3339(change.changed_at),
            window_opens_at: rfc3339(change.window_open),
            settings: serde_json::from_str(&change.settings).map_err(|error| internal(&error))?,
            changed_by: change.changed_by.map(|user| user.to_string()),
        });
    }
    Ok(HttpResponse::Ok().json(views))
}

/// The orgs linked to an org: the same owner as far as the market is concerned, so they never
/// trade with each other.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinksView {
    #[schema(format = Uuid)]
    pub org_id: String,
    #[schema(value_type = Vec<String>, format = Uuid)]
    pub linked: Vec<String>,
}

async fn links_view(store: &dyn Store, org: OrgId) -> Result<LinksView, actix_web::Error> {
    let linked = store
        .linked_orgs(org)
        .await
        .map_err(|error| internal(&error))?;
    Ok(LinksView {
        org_id: org.to_string(),
        linked: linked.iter().map(ToString::to_string).collect(),
    })
}

/// The org named by `raw`, when it exists (404 otherwise).
pub(crate) async fn known_org(store: &dyn Store, raw: &str) -> Result<OrgId, actix_web::Error> {
    let not_found = || problem(ProblemKind::NotFound, "no such org");
    let org = OrgId::parse(raw).map_err(|_| not_found())?;
    store
        .org(org)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(not_found)?;
    Ok(org)
}

/// The orgs linked to an org (admins only).
#[utoipa::path(
    get,
    path = "/v1/admin/orgs/{org_id}/links",
    tag = "market",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    responses(
        (status = 200, description = "Its links", body = LinksView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn org_links(
    _admin: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let store = state.ledger.store();
    let org = known_org(store.as_ref(), &path).await?;
    Ok(HttpResponse::Ok().json(links_view(store.as_ref(), org).await?))
}

async fn change_link(
    admin: &Admin,
    state: &AppState,
    orgs: (String, String),
    link: bool,
) -> Result<HttpResponse, actix_web::Error> {
    let store = state.ledger.store();
    let org = known_org(store.as_ref(), &orgs.0).await?;
    let other = known_org(store.as_ref(), &orgs.1).await?;
    if org == other {
        return Err(problem(
            ProblemKind::Conflict,
            "an org cannot be linked to itself: it never trades with itself anyway",
        ));
    }
    let action = if link { "org.link" } else { "org.unlink" };
    let action = AuditAction::parse(action).map_err(|error| internal(&error))?;
    let audit = AuditEntry::new(
        store.clock().now(),
        action,
        org.to_string(),
        serde_json::json!({ "other_org_id": other.to_string() }),
    )
    .map_err(|error| internal(&error))?
    .by(admin.0.id)
    .in_org(org);
    let changed = if link {
        store.link_orgs(org, other, &audit).await
    } else {
        store.unlink_orgs(org, other, &audit).await
    };
    changed.map_err(|error| internal(&error))?;
    Ok(HttpResponse::Ok().json(links_view(store.as_ref(), org).await?))
}

/// Links two orgs (admins only): from now on neither buys the other's listings. Linking twice
/// changes nothing.
#[utoipa::path(
    put,
    path = "/v1/admin/orgs/{org_id}/links/{other_org_id}",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("other_org_id" = String, Path, format = Uuid, description = "The org to link it to"),
    ),
    responses(
        (status = 200, description = "The org's links now", body = LinksView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The two orgs are the same", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn link_orgs(
    admin: Admin,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    change_link(&admin, &state, path.into_inner(), true).await
}

/// Unlinks two orgs (admins only). Unlinking orgs that are not linked changes nothing.
#[utoipa::path(
    delete,
    path = "/v1/admin/orgs/{org_id}/links/{other_org_id}",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("other_org_id" = String, Path, format = Uuid, description = "The org to unlink"),
    ),
    responses(
        (status = 200, description = "The org's links now", body = LinksView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The two orgs are the same", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn unlink_orgs(
    admin: Admin,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    change_link(&admin, &state, path.into_inner(), false).await
}

// ---------------------------------------------------------------------------------------------
// An org's listings.

/// Where a listing stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListingStateName {
    /// In the book with tokens for sale.
    Open,
    /// Every token was bought.
    Filled,
    /// Withdrawn by its seller or the cycle's close; the rest went back to `alloc`.
    Cancelled,
    /// Left open when its cycle closed; the rest expired.
    Expired,
    /// The rest was sold to the provider at the buyback price (automatic sale).
    Sold,
}

impl From<ListingState> for ListingStateName {
    fn from(state: ListingState) -> Self {
        match state {
            ListingState::Open => Self::Open,
            ListingState::Filled => Self::Filled,
            ListingState::Cancelled => Self::Cancelled,
            ListingState::Expired => Self::Expired,
            ListingState::Sold => Self::Sold,
        }
    }
}

/// A listing: tokens of the org's allotment for sale at a base ask, decaying toward the
/// cycle's end.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListingView {
    #[schema(format = Uuid)]
    pub id: String,
    pub asset: String,
    /// The base ask, µCR per 1M tokens; the price at any instant is the ask × the decay factor.
    pub ask_per_1m_micro_cr: u64,
    /// The decayed price now (open listings only).
    pub price_now_per_1m_micro_cr: Option<u64>,
    /// No fill takes fewer tokens, unless it takes all that is left.
    pub min_fill: u64,
    pub quantity_listed: u64,
    /// Tokens still for sale, held in the org's escrow.
    pub quantity_open: u64,
    pub quantity_filled: u64,
    pub state: ListingStateName,
    /// Its place in the market's arrival order.
    pub seq: u64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When what is left is sold to the provider at the buyback price.
    #[schema(format = DateTime)]
    pub auto_sell_at: Option<String>,
}

/// Listing views, with prices now from each listing's market.
async fn listing_views(
    state: &AppState,
    records: &[ListingRecord],
) -> Result<Vec<ListingView>, actix_web::Error> {
    let now = state.ledger.store().clock().now();
    let mut markets: HashMap<AssetCode, MarketInfo> = HashMap::new();
    let mut views = Vec::with_capacity(records.len());
    for record in records {
        let price_now = if record.state == ListingState::Open {
            if !markets.contains_key(&record.asset) {
                let info = existing_market(state, &record.asset).await?;
                markets.insert(record.asset.clone(), info);
            }
            markets.get(&record.asset).map(|info| {
                let factor = info.settings.curve().factor(info.window, now);
                price_at(record.ask_per_1m_micro_cr, factor)
            })
        } else {
            None
        };
        views.push(ListingView {
            id: record.id.to_string(),
            asset: record.asset.to_string(),
            ask_per_1m_micro_cr: record.ask_per_1m_micro_cr,
            price_now_per_1m_micro_cr: price_now,
            min_fill: record.min_fill,
            quantity_listed: record.quantity_listed,
            quantity_open: record.quantity_open,
            quantity_filled: record.quantity_filled,
            state: record.state.into(),
            seq: record.seq,
            created_at: rfc3339(record.created_at),
            updated_at: rfc3339(record.updated_at),
            auto_sell_at: record.auto_sell_at.map(rfc3339),
        });
    }
    Ok(views)
}

async fn listing_view(
    state: &AppState,
    record: &ListingRecord,
) -> Result<serde_json::Value, actix_web::Error> {
    let view = listing_views(state, std::slice::from_ref(record))
        .await?
        .pop()
        .ok_or_else(|| internal(&"no view of a listing"))?;
    serde_json::to_value(view).map_err(|error| internal(&error))
}

/// A new listing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListingBody {
    /// The token asset, `TOK.<class>.<YYYY-MM>`: tokens of the org's allotment of that cycle.
    #[schema(
        pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
    )]
    asset: String,
    /// Tokens (1 to 10^12).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    quantity: u64,
    /// The base ask, µCR per 1M tokens (1 to 10^12).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    ask_per_1m_micro_cr: u64,
    /// The fewest tokens one fill may take (1 to the quantity; default 1).
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    min_fill: Option<u64>,
    /// Sell what is left to the provider at the buyback price at this instant (after now,
    /// before the cycle ends).
    #[schema(format = DateTime)]
    auto_sell_at: Option<String>,
}

impl ListingBody {
    /// The listing request this body asks for, its fields checked; `id` is the request's own.
    pub(crate) fn parse(&self, id: Uuid, seller: OrgId) -> Result<ListRequest, actix_web::Error> {
        let asset = asset_of_body(&self.asset)?;
        in_range("quantity", self.quantity, 1..=QUANTITY_MAX)?;
        in_range("ask_per_1m_micro_cr", self.ask_per_1m_micro_cr, 1..=ASK_MAX)?;
        if let Some(min_fill) = self.min_fill {
            in_range("min_fill", min_fill, 1..=self.quantity)?;
        }
        let auto_sell_at = self
            .auto_sell_at
            .as_deref()
            .map(|raw| input::instant("auto_sell_at", raw))
            .transpose()?;
        Ok(ListRequest {
            id,
            seller,
            asset,
            quantity: self.quantity,
            ask_per_1m_micro_cr: self.ask_per_1m_micro_cr,
            min_fill: self.min_fill,
            auto_sell_at,
        })
    }
}

fn listing_location(org: OrgId, id: Uuid) -> String {
    format!("/v1/orgs/{org}/listings/{id}")
}

/// Lists tokens for sale (an API key needs `market:trade`): they move from the org's `alloc` to
/// its `escrow` until bought, withdrawn, sold back automatically, or expired. Only tokens of the
/// org's own allotment can be listed (bought tokens never can), inside the market's listing
/// window, by an org that may sell (verified, old enough, on a paid plan, not frozen, within its
/// cap for the cycle). Needs an `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/listings",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The selling org"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters, new for each new request; a retry with the same key answers the first answer"),
    ),
    request_body = ListingBody,
    responses(
        (status = 201, description = "Listed; `Location` names the listing", body = ListingView,
            headers(("Location" = String, description = "The listing: `/v1/orgs/{org_id}/listings/{listing_id}`"))),
        (status = 400, description = "No Idempotency-Key, or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The org may not sell (the detail says why: frozen, unverified, too new, free plan), or an API key without `market:trade`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no market for the asset (its cycle is not open)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Outside the listing window, over the org's cap, not enough tokens in `alloc`, or the first request with this key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid, or the key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many market requests from this org; `Retry-After` says when to retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_listing(
    access: OrgAccess<MarketTrade>,
    req: HttpRequest,
    key: IdempotencyKey,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let org = access.org;
    let body_in: ListingBody = json_body(&req, &body)?;
    let scope = org.to_string();
    let id = key.transfer_id(&format!("{scope}/listing"), 0).as_uuid();
    let request = body_in.parse(id, org)?;
    market_write(state, org, &req, &body, &key, |state| async move {
        let record = state.market.list(&request).await.map_err(market_error)?;
        Ok(Answer {
            status: StatusCode::CREATED,
            location: Some(listing_location(org, record.id)),
            body: listing_view(&state, &record).await?,
        })
    })
    .await
}

/// Filters of an org's listings.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListingsQuery {
    /// Only listings of this token asset.
    #[param(
        pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
    )]
    asset: Option<String>,
    /// At most this many, newest first (1 to 1,000; default 100).
    #[serde(deserialize_with = "integer::optional_in_query", default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The org's listings, newest first (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/listings",
    tag = "market",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), ListingsQuery),
    responses(
        (status = 200, description = "Listings, newest first", body = Vec<ListingView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A filter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_listings(
    access: OrgAccess<Read>,
    query: web::Query<ListingsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let query = query.into_inner();
    let asset = match &query.asset {
        Some(raw) if input::is_market_asset(raw) => {
            Some(AssetCode::parse(raw).map_err(|error| invalid("asset", error))?)
        }
        Some(_) => return Err(invalid("asset", "a token asset TOK.<class>.<YYYY-MM>")),
        None => None,
    };
    let limit = LimitQuery { limit: query.limit }.get()?;
    let records = state
        .ledger
        .store()
        .listings_of(access.org, asset.as_ref(), limit)
        .await
        .map_err(|error| internal(&error))?;
    Ok(HttpResponse::Ok().json(listing_views(&state, &records).await?))
}

async fn own_listing(
    state: &AppState,
    org: OrgId,
    raw: &str,
) -> Result<ListingRecord, actix_web::Error> {
    let not_found = || problem(ProblemKind::NotFound, "no such listing in this org");
    let id = input::uuid(raw).ok_or_else(not_found)?;
    state
        .ledger
        .store()
        .listing(id)
        .await
        .map_err(|error| internal(&error))?
        .filter(|listing| listing.seller == org)
        .ok_or_else(not_found)
}

/// One of the org's listings (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/listings/{listing_id}",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("listing_id" = String, Path, format = Uuid, description = "The listing"),
    ),
    responses(
        (status = 200, description = "The listing", body = ListingView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org or listing", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_listing(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let record = own_listing(&state, access.org, &path.1).await?;
    Ok(HttpResponse::Ok().json(listing_view(&state, &record).await?))
}

/// A listing's new, lower open quantity.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendBody {
    /// Tokens left for sale (at least 1, fewer than are open now; cancel to withdraw all).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    quantity_open: u64,
}

/// Lowers a listing's open quantity (an API key needs `market:trade`); the rest goes back to
/// `alloc`. A listing is only ever amended down: its place in the queue stays. Needs an
/// `Idempotency-Key`.
#[utoipa::path(
    patch,
    path = "/v1/orgs/{org_id}/listings/{listing_id}",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("listing_id" = String, Path, format = Uuid, description = "The listing"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters, new for each new request; a retry with the same key answers the first answer"),
    ),
    request_body = AmendBody,
    responses(
        (status = 200, description = "The listing as it is now", body = ListingView),
        (status = 400, description = "No Idempotency-Key, or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without `market:trade`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org or listing", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The listing is no longer open, the quantity is not lower than what is open, or the first request with this key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid, or the key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many market requests from this org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn amend_listing(
    access: OrgAccess<MarketTrade>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    key: IdempotencyKey,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let org = access.org;
    let amend: AmendBody = json_body(&req, &body)?;
    let quantity = in_range("quantity_open", amend.quantity_open, 1..=QUANTITY_MAX)?;
    let listing = own_listing(&state, org, &path.1).await?;
    let scope = org.to_string();
    let request_id = key.transfer_id(&format!("{scope}/amend"), 0).as_uuid();
    market_write(state, org, &req, &body, &key, |state| async move {
        let record = state
            .market
            .amend_down(request_id, org, &listing.asset, listing.id, quantity)
            .await
            .map_err(market_error)?;
        Ok(Answer {
            status: StatusCode::OK,
            location: None,
            body: listing_view(&state, &record).await?,
        })
    })
    .await
}

/// Withdraws what is left of a listing (an API key needs `market:trade`): it goes back to
/// `alloc`. Needs an `Idempotency-Key`; cancelling a cancelled listing answers it as it is.
#[utoipa::path(
    delete,
    path = "/v1/orgs/{org_id}/listings/{listing_id}",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("listing_id" = String, Path, format = Uuid, description = "The listing"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters, new for each new request; a retry with the same key answers the first answer"),
    ),
    responses(
        (status = 200, description = "The cancelled listing", body = ListingView),
        (status = 400, description = "No Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without `market:trade`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org or listing", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The listing was filled, expired or sold back, or the first request with this key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many market requests from this org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_listing(
    access: OrgAccess<MarketTrade>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    key: IdempotencyKey,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let org = access.org;
    let listing = own_listing(&state, org, &path.1).await?;
    market_write(state, org, &req, &[], &key, |state| async move {
        let record = state
            .market
            .cancel(Withdrawer::Seller(org), &listing.asset, listing.id)
            .await
            .map_err(market_error)?;
        Ok(Answer {
            status: StatusCode::OK,
            location: None,
            body: listing_view(&state, &record).await?,
        })
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Orders.

/// An order's limit: the highest decayed price per 1M tokens, or the most it spends in all.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LimitBody {
    /// No fill above this decayed price (fees aside), µCR per 1M tokens.
    Price {
        #[serde(deserialize_with = "integer::required")]
        #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
        per_1m_micro_cr: u64,
    },
    /// The most µCR the whole order spends, fees and emergency credits included.
    Total {
        #[serde(deserialize_with = "integer::required")]
        #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
        micro_cr: u64,
    },
}

/// A buy order, immediate-or-cancel: it takes what it can now and drops the rest.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    /// The token asset, `TOK.<class>.<YYYY-MM>`.
    #[schema(
        pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
    )]
    asset: String,
    /// Tokens (1 to 10^12).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    quantity: u64,
    /// No limit: buy at whatever the book asks.
    #[serde(default, deserialize_with = "input::object::optional")]
    limit: Option<LimitBody>,
    /// Let the provider sell what the listings cannot, at its list price (emergency credits).
    #[serde(default)]
    allow_provider_fill: bool,
}

impl OrderBody {
    /// The buy request this body asks for, its fields checked; `id` is the request's own.
    pub(crate) fn parse(&self, id: Uuid, buyer: OrgId) -> Result<BuyRequest, actix_web::Error> {
        let asset = asset_of_body(&self.asset)?;
        in_range("quantity", self.quantity, 1..=QUANTITY_MAX)?;
        let limit = match self.limit {
            None => Limit::PricePer1m(ASK_MAX),
            Some(LimitBody::Price { per_1m_micro_cr }) => Limit::PricePer1m(in_range(
                "limit.per_1m_micro_cr",
                per_1m_micro_cr,
                0..=ASK_MAX,
            )?),
            Some(LimitBody::Total { micro_cr }) => Limit::MaxTotal(in_range(
                "limit.micro_cr",
                micro_cr,
                1..=credex_ledger::AMOUNT_MAX,
            )?),
        };
        Ok(BuyRequest {
            id,
            buyer,
            asset,
            quantity: self.quantity,
            limit,
            allow_provider_fill: self.allow_provider_fill,
        })
    }
}

/// One fill of an order.
#[derive(Debug, Serialize, ToSchema)]
pub struct FillView {
    /// The listing it came from; none when the provider sold it (emergency credits).
    #[schema(format = Uuid)]
    pub listing_id: Option<String>,
    pub quantity: u64,
    pub price_per_1m_micro_cr: u64,
    pub cost_micro_cr: u64,
    pub fee_micro_cr: u64,
    #[schema(format = DateTime)]
    pub at: String,
}

/// An order and what came of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    #[schema(format = Uuid)]
    pub order_id: String,
    pub asset: String,
    pub quantity: u64,
    pub filled: u64,
    pub from_listings: u64,
    pub from_provider: u64,
    /// Dropped: the order is immediate-or-cancel.
    pub unfilled: u64,
    pub buyer_paid_micro_cr: u64,
    pub fees_micro_cr: u64,
    /// Why it stopped: `filled`, `book_exhausted`, `limit`, and the like.
    pub stop_reason: String,
    /// Cheapest first, then oldest listing first; the provider's sale last.
    pub fills: Vec<FillView>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

fn order_view(
    asset: &AssetCode,
    result: &crate::market::OrderResult,
    created_at: Timestamp,
) -> OrderView {
    let summary = &result.summary;
    OrderView {
        order_id: result.order_id.to_string(),
        asset: asset.to_string(),
        quantity: summary.quantity,
        filled: summary.filled,
        from_listings: summary.from_listings,
        from_provider: summary.from_provider,
        unfilled: summary.unfilled,
        buyer_paid_micro_cr: summary.buyer_paid_micro_cr,
        fees_micro_cr: summary.fees_micro_cr,
        stop_reason: summary.stop_reason.clone(),
        fills: result
            .fills
            .iter()
            .map(|fill| FillView {
                listing_id: fill.listing_id.map(|id| id.to_string()),
                quantity: fill.quantity,
                price_per_1m_micro_cr: fill.price_per_1m_micro_cr,
                cost_micro_cr: fill.cost_micro_cr,
                fee_micro_cr: fill.fee_micro_cr,
                at: rfc3339(fill.at),
            })
            .collect(),
        created_at: rfc3339(created_at),
    }
}

/// Buys tokens now (an API key needs `market:trade`), immediate-or-cancel: cheapest decayed
/// price first, then oldest listing, never from the org itself or orgs linked to it, within the
/// limit; then, if allowed and the market sells them, emergency credits from the provider at
/// its list price. Fills land in the org's `acquired` account: they can be spent, never sold
/// on. Every fill, the CR paid and the fees commit together. Needs an `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/orders",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The buying org"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters, new for each new request; a retry with the same key answers the first answer"),
    ),
    request_body = OrderBody,
    responses(
        (status = 201, description = "The order and its fills (possibly none); `Location` names it", body = OrderView,
            headers(("Location" = String, description = "The order: `/v1/orgs/{org_id}/orders/{order_id}`"))),
        (status = 400, description = "No Idempotency-Key, or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The org is frozen, or an API key without `market:trade`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no market for the asset", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The market is not open, the wallet lacks the credits, or the first request with this key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid, or the key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many market requests from this org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_order(
    access: OrgAccess<MarketTrade>,
    req: HttpRequest,
    key: IdempotencyKey,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let org = access.org;
    let order: OrderBody = json_body(&req, &body)?;
    let scope = org.to_string();
    let id = key.transfer_id(&format!("{scope}/order"), 0).as_uuid();
    let request = order.parse(id, org)?;
    let asset = request.asset.clone();
    market_write(state, org, &req, &body, &key, |state| async move {
        let result = state.market.buy(&request).await.map_err(market_error)?;
        let view = order_view(&asset, &result, result.created_at);
        Ok(Answer {
            status: StatusCode::CREATED,
            location: Some(format!("/v1/orgs/{org}/orders/{}", result.order_id)),
            body: serde_json::to_value(view).map_err(|error| internal(&error))?,
        })
    })
    .await
}

/// One of the org's orders (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/orders/{order_id}",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("order_id" = String, Path, format = Uuid, description = "The order"),
    ),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org or order", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_order(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let not_found = || problem(ProblemKind::NotFound, "no such order in this org");
    let id = input::uuid(&path.1).ok_or_else(not_found)?;
    let (record, result) = state
        .market
        .order(id)
        .await
        .map_err(market_error)?
        .filter(|(record, _)| record.buyer == access.org)
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(order_view(&record.asset, &result, record.created_at)))
}

// ---------------------------------------------------------------------------------------------
// Buybacks.

/// Tokens to sell back to the provider.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuybackBody {
    /// The token asset, `TOK.<class>.<YYYY-MM>`.
    #[schema(
        pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
    )]
    asset: String,
    /// Tokens of the org's own allotment (1 to 10^12).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    quantity: u64,
}

/// A sale of tokens back to the provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuybackView {
    #[schema(format = Uuid)]
    pub id: String,
    pub asset: String,
    /// The listing whose rest was sold automatically, if any.
    #[schema(format = Uuid)]
    pub listing_id: Option<String>,
    pub quantity: u64,
    pub price_per_1m_micro_cr: u64,
    /// CR paid into the org's wallet.
    pub payout_micro_cr: u64,
    #[schema(format = DateTime)]
    pub at: String,
}

impl From<&BuybackRecord> for BuybackView {
    fn from(record: &BuybackRecord) -> Self {
        Self {
            id: record.id.to_string(),
            asset: record.asset.to_string(),
            listing_id: record.listing_id.map(|id| id.to_string()),
            quantity: record.quantity,
            price_per_1m_micro_cr: record.price_per_1m_micro_cr,
            payout_micro_cr: record.payout_micro_cr,
            at: rfc3339(record.at),
        }
    }
}

/// Sells tokens of the org's own allotment back to the provider at the market's buyback price
/// now (an API key needs `market:trade`), paid in CR to the org's wallet, within the market's
/// caps per cycle and per org. Bought tokens can never be sold back. Needs an
/// `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/buybacks",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The selling org"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters, new for each new request; a retry with the same key answers the first answer"),
    ),
    request_body = BuybackBody,
    responses(
        (status = 201, description = "Sold back; `Location` names the buyback", body = BuybackView,
            headers(("Location" = String, description = "The buyback: `/v1/orgs/{org_id}/buybacks/{buyback_id}`"))),
        (status = 400, description = "No Idempotency-Key, or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The org may not sell (the detail says why), or an API key without `market:trade`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no market for the asset", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A cap is reached, the payout would be below 1 µCR or the price is zero, not enough tokens in `alloc`, or the first request with this key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid, or the key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many market requests from this org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_buyback(
    access: OrgAccess<MarketTrade>,
    req: HttpRequest,
    key: IdempotencyKey,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let org = access.org;
    let buyback: BuybackBody = json_body(&req, &body)?;
    let asset = asset_of_body(&buyback.asset)?;
    in_range("quantity", buyback.quantity, 1..=QUANTITY_MAX)?;
    let scope = org.to_string();
    let request = BuybackRequest {
        id: key.transfer_id(&format!("{scope}/buyback"), 0).as_uuid(),
        org,
        asset,
        quantity: buyback.quantity,
    };
    market_write(state, org, &req, &body, &key, |state| async move {
        let record = state.market.buyback(&request).await.map_err(market_error)?;
        Ok(Answer {
            status: StatusCode::CREATED,
            location: Some(format!("/v1/orgs/{org}/buybacks/{}", record.id)),
            body: serde_json::to_value(BuybackView::from(&record))
                .map_err(|error| internal(&error))?,
        })
    })
    .await
}

/// Which buybacks.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BuybacksQuery {
    /// The token asset.
    #[param(
        required = true,
        pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
    )]
    asset: Option<String>,
}

/// The org's buybacks in a market, oldest first (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/buybacks",
    tag = "market",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), BuybacksQuery),
    responses(
        (status = 200, description = "Buybacks, oldest first", body = Vec<BuybackView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No asset, or not a valid one", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_buybacks(
    access: OrgAccess<Read>,
    query: web::Query<BuybacksQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let asset = query
        .asset
        .as_deref()
        .ok_or_else(|| invalid("asset", "required"))?;
    let asset = asset_of_body(asset)?;
    let records = state
        .ledger
        .store()
        .buybacks_of(access.org, &asset)
        .await
        .map_err(|error| internal(&error))?;
    let views: Vec<BuybackView> = records.iter().map(BuybackView::from).collect();
    Ok(HttpResponse::Ok().json(views))
}

/// One of the org's buybacks (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/buybacks/{buyback_id}",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("buyback_id" = String, Path, format = Uuid, description = "The buyback"),
    ),
    responses(
        (status = 200, description = "The buyback", body = BuybackView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org or buyback", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_buyback(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let not_found = || problem(ProblemKind::NotFound, "no such buyback in this org");
    let id = input::uuid(&path.1).ok_or_else(not_found)?;
    let record = state
        .ledger
        .store()
        .buyback(id)
        .await
        .map_err(|error| internal(&error))?
        .filter(|record| record.org == access.org)
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(BuybackView::from(&record)))
}

/// Who may sell on the market, as in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    pub min_verification_level: u8,
    pub min_org_age_days: u32,
    pub paid_plan_required: bool,
    /// How much of a cycle's allotment an org may sell (listed, bought, sold back), in basis
    /// points of the allotment.
    pub sell_cap_basis_points: u32,
    /// `admin` once an admin set it, else `configuration`.
    pub source: String,
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
    #[schema(format = Uuid)]
    pub updated_by: Option<String>,
}

async fn policy_view(state: &AppState) -> Result<PolicyView, actix_web::Error> {
    let stored = state
        .ledger
        .store()
        .market_policy()
        .await
        .map_err(|error| internal(&error))?;
    let (policy, source, at, by) = match stored {
        Some((json, at, by)) => (
            FraudPolicy::from_json(&json).map_err(|error| internal(&error))?,
            "admin",
            Some(rfc3339(at)),
            by.map(|user| user.to_string()),
        ),
        None => (state.market.policy(), "configuration", None, None),
    };
    Ok(PolicyView {
        min_verification_level: policy.min_verification_level,
        min_org_age_days: policy.min_org_age_days,
        paid_plan_required: policy.paid_plan_required,
        sell_cap_basis_points: policy.sell_cap_basis_points,
        source: source.to_owned(),
        updated_at: at,
        updated_by: by,
    })
}

/// The market's selling policy in force (admins only).
#[utoipa::path(
    get,
    path = "/v1/admin/market-policy",
    tag = "market",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The policy", body = PolicyView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn market_policy(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    Ok(HttpResponse::Ok().json(policy_view(&state).await?))
}

/// A new selling policy, whole.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// The identity verification level a seller needs (0 to 3).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 3)]
    min_verification_level: u8,
    /// How many days old a seller must be (0 to 3,650).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 3650)]
    min_org_age_days: u32,
    /// Whether only orgs on a paid plan may sell.
    paid_plan_required: bool,
    /// How much of a cycle's allotment an org may sell, in basis points (0 to 10,000).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 10000)]
    sell_cap_basis_points: u32,
}

/// Sets the market's selling policy (admins only), effective at once in every process: every
/// listing and buyback decided after this reads it. Audited.
#[utoipa::path(
    put,
    path = "/v1/admin/market-policy",
    tag = "market",
    security(("bearer" = [])),
    request_body = PolicyBody,
    responses(
        (status = 200, description = "The policy now in force", body = PolicyView),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A value is out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_market_policy(
    admin: Admin,
    body: web::Json<PolicyBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let body = body.into_inner();
    let policy = FraudPolicy {
        min_verification_level: body.min_verification_level,
        min_org_age_days: body.min_org_age_days,
        paid_plan_required: body.paid_plan_required,
        sell_cap_basis_points: body.sell_cap_basis_points,
    };
    policy
        .validate()
        .map_err(|error| problem(ProblemKind::Unprocessable, error))?;
    let json = serde_json::to_string(&policy).map_err(|error| internal(&error))?;
    let store = state.ledger.store();
    let action = AuditAction::parse("market.policy").map_err(|error| internal(&error))?;
    let details = serde_json::to_value(policy).map_err(|error| internal(&error))?;
    let audit = AuditEntry::new(store.clock().now(), action, "market", details)
        .map_err(|error| internal(&error))?
        .by(admin.0.id);
    store
        .put_market_policy(&json, &audit)
        .await
        .map_err(|error| internal(&error))?;
    Ok(HttpResponse::Ok().json(policy_view(&state).await?))
}

pub fn configure(config: &mut web::ServiceConfig) {
    let writes = || web::PayloadConfig::new(WRITE_BODY_MAX);
    config
        .service(web::resource("/v1/markets").route(web::get().to(list_markets)))
        .service(web::resource("/v1/markets/{asset}").route(web::get().to(get_market)))
        .service(web::resource("/v1/markets/{asset}/quote").route(web::get().to(market_quote)))
        .service(web::resource("/v1/markets/{asset}/depth").route(web::get().to(market_depth)))
        .service(web::resource("/v1/markets/{asset}/fills").route(web::get().to(market_fills)))
        .service(web::resource("/v1/markets/{asset}/history").route(web::get().to(price_history)))
        .service(
            web::resource("/v1/admin/markets/{asset}")
                .app_data(
                    web::JsonConfig::default()
                        .limit(WRITE_BODY_MAX)
                        .error_handler(crate::problem::json_error),
                )
                .route(web::patch().to(patch_market)),
        )
        .service(
            web::resource("/v1/admin/markets/{asset}/settings-history")
                .route(web::get().to(settings_history)),
        )
        .service(
            web::resource("/v1/admin/market-policy")
                .route(web::get().to(market_policy))
                .route(web::put().to(put_market_policy)),
        )
        .service(web::resource("/v1/admin/orgs/{org_id}/links").route(web::get().to(org_links)))
        .service(
            web::resource("/v1/admin/orgs/{org_id}/links/{other_org_id}")
                .route(web::put().to(link_orgs))
                .route(web::delete().to(unlink_orgs)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/listings")
                .app_data(writes())
                .route(web::get().to(list_listings))
                .route(web::post().to(create_listing)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/listings/{listing_id}")
                .app_data(writes())
                .route(web::get().to(get_listing))
                .route(web::patch().to(amend_listing))
                .route(web::delete().to(cancel_listing)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/orders")
                .app_data(writes())
                .route(web::post().to(create_order)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/orders/{order_id}").route(web::get().to(get_order)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/buybacks")
                .app_data(writes())
                .route(web::get().to(list_buybacks))
                .route(web::post().to(create_buyback)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/buybacks/{buyback_id}")
                .route(web::get().to(get_buyback)),
        );
}
