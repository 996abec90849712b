//! Usage over HTTP: an org (usually a program, with an API key holding `usage:write`) reports
//! its model calls one at a time or in batches of up to 1,000; each is priced at its instant
//! and charged once (see [`crate::usage`]); members and `read` keys page through them.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use credex_ledger::Timestamp;
use credex_pricing::cost::MAX_TOKENS_PER_KIND;
use credex_pricing::TokenUsage;
use credex_store::{UsageRecord, USAGE_BATCH_MAX, USAGE_PAGE_MAX};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::access::{OrgAccess, Read, UsageWrite};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::startup::AppState;
use crate::usage::{RecordedUsage, UsageError, UsageEvent, LABEL_MAX, METADATA_MAX};
use crate::views::{csv_field, rfc3339};

/// How far ahead of the server's clock an event may be stamped (clocks drift).
pub(crate) const FUTURE_SKEW_MICROS: i64 = 300_000_000;
/// The largest body: 1,000 events with their metadata.
pub const USAGE_BODY_MAX: usize = 8 << 20;

/// A batch of model calls, charged all or none.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBody {
    /// 1 to 1,000 events, each with an id not used twice in the batch.
    #[schema(min_items = 1, max_items = 1000)]
    pub(crate) events: Vec<UsageEventBody>,
}

/// One model call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageEventBody {
    /// The org's own id for the call (a UUID, neither nil nor max): it is charged once; a
    /// replay answers the recorded charge, other values under the id are refused (409).
    #[schema(format = Uuid)]
    id: String,
    /// A model id or alias of the catalog.
    #[schema(min_length = 1, max_length = 128)]
    model: String,
    /// Uncached input tokens.
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    input_tokens: u64,
    /// Input tokens read from the provider's prompt cache (default 0).
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    cached_input_tokens: Option<u64>,
    /// Input tokens written to the provider's prompt cache (default 0).
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    cache_write_tokens: Option<u64>,
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    output_tokens: u64,
    /// When the call happened (default: now; at most 5 minutes ahead of the server's clock).
    /// It is priced with the price in force then, and charged to that month's cycle.
    #[schema(format = DateTime)]
    at: Option<String>,
    /// The user who caused it.
    #[schema(format = Uuid)]
    user_id: Option<String>,
    /// The API key it was made with (default: the calling key, if any).
    #[schema(format = Uuid)]
    api_key_id: Option<String>,
    /// A task label (1 to 200 characters).
    #[schema(min_length = 1, max_length = 200)]
    task: Option<String>,
    /// A conversation label (1 to 200 characters).
    #[schema(min_length = 1, max_length = 200)]
    conversation: Option<String>,
    /// Free metadata: a JSON object of at most 4,096 bytes.
    #[serde(default, deserialize_with = "input::object::optional")]
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A recorded call and its charge.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageEventView {
    #[schema(format = Uuid)]
    pub id: String,
    /// The model's id (an alias resolves to it).
    pub model: String,
    pub class: String,
    /// The token asset charged: the class in the call's cycle.
    pub asset: String,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    /// The call at the model's price, µCR (rounded up).
    pub cost_micro_cr: u64,
    /// Tokens taken from `acquired`.
    pub from_acquired: u64,
    /// Tokens taken from `alloc`.
    pub from_alloc: u64,
    /// µCR taken from the wallet for the tokens no balance covered.
    pub from_wallet_micro_cr: u64,
    /// `catalog`, or `org` for the org's custom price.
    pub price_source: String,
    #[schema(format = DateTime)]
    pub occurred_at: String,
    #[schema(format = DateTime)]
    pub recorded_at: String,
    #[schema(format = Uuid)]
    pub user_id: Option<String>,
    #[schema(format = Uuid)]
    pub api_key_id: Option<String>,
    pub task: Option<String>,
    pub conversation: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// The ledger transfers of the charge (none for a free call).
    pub transfer_ids: Vec<String>,
}

impl From<&UsageRecord> for UsageEventView {
    fn from(record: &UsageRecord) -> Self {
        Self {
            id: record.id.to_string(),
            model: record.model.clone(),
            class: record.class.clone(),
            asset: record.asset.clone(),
            input_tokens: record.input_tokens,
            cached_input_tokens: record.cached_input_tokens,
            cache_write_tokens: record.cache_write_tokens,
            output_tokens: record.output_tokens,
            cost_micro_cr: record.cost_micro_cr,
            from_acquired: record.from_acquired,
            from_alloc: record.from_alloc,
            from_wallet_micro_cr: record.from_wallet_micro_cr,
            price_source: record.price_source.clone(),
            occurred_at: rfc3339(record.occurred_at),
            recorded_at: rfc3339(record.recorded_at),
            user_id: record.user.map(|id| id.to_string()),
            api_key_id: record.api_key.map(|id| id.to_string()),
            task: record.task.clone(),
            conversation: record.conversation.clone(),
            metadata: record
                .metadata
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok()),
            transfer_ids: record
                .transfer_ids
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

/// A recorded call in a batch's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordedEventView {
    #[serde(flatten)]
    pub event: UsageEventView,
    /// Whether it had been recorded before (this answer repeats that charge).
    pub replayed: bool,
}

/// What a batch came to.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBatchView {
    /// The events in the order sent.
    pub events: Vec<RecordedEventView>,
    /// Sums over the events charged now (replays left out).
    pub charged: ChargedView,
}

/// Sums of a batch's new charges.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ChargedView {
    pub events: u64,
    pub cost_micro_cr: u64,
    pub from_acquired: u64,
    pub from_alloc: u64,
    pub from_wallet_micro_cr: u64,
}

fn field(index: usize, name: &str) -> String {
    format!("events[{index}].{name}")
}

/// The fields a reported call and a reservation share, checked: the id (a UUID, neither nil
/// nor max), the model name (1 to 128 characters) and the four token counts (input, cached
/// input, cache write, output; each at most 10^12). `field` names a field for its error.
pub(crate) fn call_fields(
    field: &dyn Fn(&str) -> String,
    id: &str,
    model: &str,
    counts: [u64; 4],
) -> Result<(uuid::Uuid, TokenUsage), actix_web::Error> {
    let id = input::uuid(id)
        .filter(|id| !id.is_nil() && !id.is_max())
        .ok_or_else(|| invalid(&field("id"), "a UUID, neither nil nor max"))?;
    if model.is_empty() || model.chars().count() > 128 {
        return Err(invalid(&field("model"), "1 to 128 characters"));
    }
    let names = [
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "output_tokens",
    ];
    for (name, count) in names.into_iter().zip(counts) {
        if count > MAX_TOKENS_PER_KIND {
            return Err(invalid(&field(name), "at most 10^12"));
        }
    }
    let tokens = TokenUsage::new(counts[0], counts[1], counts[2], counts[3])
        .map_err(|error| invalid(&field("input_tokens"), error))?;
    Ok((id, tokens))
}

pub(crate) fn parse_event(
    index: usize,
    body: UsageEventBody,
    now: Timestamp,
    caller_key: Option<uuid::Uuid>,
) -> Result<UsageEvent, actix_web::Error> {
    let (id, tokens) = call_fields(
        &|name| field(index, name),
        &body.id,
        &body.model,
        [
            body.input_tokens,
            body.cached_input_tokens.unwrap_or(0),
            body.cache_write_tokens.unwrap_or(0),
            body.output_tokens,
        ],
    )?;
    let at = match body.at.as_deref() {
        Some(raw) => input::instant(&field(index, "at"), raw)?,
        None => now,
    };
    if at > now.plus_micros(FUTURE_SKEW_MICROS) {
        return Err(invalid(
            &field(index, "at"),
            "at most 5 minutes ahead of the server's clock",
        ));
    }
    let metadata = match body.metadata {
        Some(object) => {
            let text = serde_json::Value::Object(object).to_string();
            if text.len() > METADATA_MAX {
                return Err(invalid(
                    &field(index, "metadata"),
                    format!("at most {METADATA_MAX} bytes of JSON"),
                ));
            }
            Some(text)
        }
        None => None,
    };
    Ok(UsageEvent {
        id,
        model: body.model,
        tokens,
        at,
        at_given: body.at.is_some(),
        user: input::optional_uuid(&field(index, "user_id"), body.user_id.as_deref())?,
        api_key: input::optional_uuid(&field(index, "api_key_id"), body.api_key_id.as_deref())?
            .or(caller_key),
        task: input::optional_text(&field(index, "task"), body.task, LABEL_MAX)?,
        conversation: input::optional_text(
            &field(index, "conversation"),
            body.conversation,
            LABEL_MAX,
        )?,
        metadata,
    })
}

/// Each refusal of the usage service as a problem that says why.
pub(crate) fn usage_error(error: UsageError) -> actix_web::Error {
    use UsageError as E;
    let detail = error.to_string();
    let kind = match error {
        E::Store(error) => return internal(&error),
        E::KeyRevoked => {
            return crate::auth::access::Unauthenticated("the API key is not valid").into()
        }
        E::BatchSize { .. } | E::InvalidId { .. } | E::Duplicate { .. } | E::Invalid { .. } => {
            ProblemKind::Unprocessable
        }
        // An unknown model is missing data, as in a cost preview; no price in force at the
        // event's instant is a field out of range.
        E::Price { error, .. } => error.kind,
        E::Conflict { .. } | E::Ledger(_) => ProblemKind::Conflict,
        E::InsufficientFunds { .. } | E::TooCostly { .. } => ProblemKind::PaymentRequired,
        E::BudgetExceeded { .. } => ProblemKind::BudgetExceeded,
        E::NoOrg | E::NoReservation { .. } => ProblemKind::NotFound,
        E::ReservationClosed { .. } => ProblemKind::Conflict,
        E::ReservationMismatch { .. } => ProblemKind::Unprocessable,
        E::Stale => ProblemKind::Unavailable,
    };
    ApiError::new(kind, detail).into()
}

fn batch_view(recorded: &[RecordedUsage]) -> UsageBatchView {
    let mut charged = ChargedView::default();
    for usage in recorded.iter().filter(|usage| !usage.replayed) {
        let record = &usage.record;
        charged.events += 1;
        charged.cost_micro_cr = charged.cost_micro_cr.saturating_add(record.cost_micro_cr);
        charged.from_acquired = charged.from_acquired.saturating_add(record.from_acquired);
        charged.from_alloc = charged.from_alloc.saturating_add(record.from_alloc);
        charged.from_wallet_micro_cr = charged
            .from_wallet_micro_cr
            .saturating_add(record.from_wallet_micro_cr);
    }
    UsageBatchView {
        events: recorded
            .iter()
            .map(|usage| RecordedEventView {
                event: UsageEventView::from(&usage.record),
                replayed: usage.replayed,
            })
            .collect(),
        charged,
    }
}

/// Records model calls (members; API keys need `usage:write`): each is priced with the price
/// in force when it happened (the org's custom price first) and charged — tokens from
/// `acquired`, then from `alloc` of the model's class for the call's cycle, then µCR from the
/// wallet for the tokens no balance covered — as one linked ledger chain. The batch is charged
/// all or none: if one call cannot be paid, nothing is, and the answer is 402 naming it. An
/// event id is charged once: a replay answers the recorded charge (200 when every event of the
/// batch is a replay).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/usage",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    request_body = UsageBody,
    responses(
        (status = 201, description = "Recorded and charged", body = UsageBatchView),
        (status = 200, description = "Every event had been recorded before: their charges", body = UsageBatchView),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "Nothing was charged: the org's balances cannot pay for an event (`payment-required`; the detail names it and what it needs, or says one call costs more than a charge can carry), or an event would take a hard budget past its limit for the period (`budget-exceeded`; the detail names the event and the budget)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without `usage:write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no model has an event's name (the detail names the event)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An event id was recorded before with other values, or the balances changed under the batch several times running", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 8 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid (the detail names it as `events[i].field`): an id twice in the batch, the nil or max UUID as an id, no price in force for the model at the event's instant, an event more than 5 minutes ahead of the server's clock, metadata over 4,096 bytes", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn record_usage(
    access: OrgAccess<UsageWrite>,
    body: web::Json<UsageBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let body = body.into_inner();
    if body.events.is_empty() || body.events.len() > USAGE_BATCH_MAX {
        return Err(invalid("events", format!("1 to {USAGE_BATCH_MAX} events")));
    }
    let now = state.ledger.store().clock().now();
    let caller_key = access.caller.api_key_id();
    let events = body
        .events
        .into_iter()
        .enumerate()
        .map(|(index, event)| parse_event(index, event, now, caller_key))
        .collect::<Result<Vec<_>, _>>()?;
    let recorded = state
        .usage
        .record_as(access.org, caller_key, events)
        .await
        .map_err(usage_error)?;
    let status = if recorded.iter().all(|usage| usage.replayed) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(HttpResponse::build(status).json(batch_view(&recorded)))
}

/// Which of an org's events to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Events that occurred at or after this instant (default: the beginning).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Events that occurred before this instant (default: the end of time).
    #[param(format = DateTime)]
    to: Option<String>,
    /// The `next` cursor of the page before.
    #[param(
        max_length = 64,
        pattern = r"^-?[0-9]{1,18}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    )]
    after: Option<String>,
    /// At most this many (1 to 1,000; default 100).
    #[serde(deserialize_with = "integer::optional_in_query", default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsagePageView {
    pub events: Vec<UsageEventView>,
    /// The cursor of the next page (`after`), when this one is full.
    pub next: Option<String>,
}

/// The org's recorded calls in the order they happened (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/usage",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), UsageQuery),
    responses(
        (status = 200, description = "A page of events, oldest first", body = UsagePageView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A filter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_usage(
    access: OrgAccess<Read>,
    query: web::Query<UsageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let query = query.into_inner();
    let from = match query.from.as_deref() {
        Some(raw) => input::instant("from", raw)?,
        None => Timestamp::from_micros(i64::MIN),
    };
    let to = match query.to.as_deref() {
        Some(raw) => input::instant("to", raw)?,
        None => Timestamp::from_micros(i64::MAX),
    };
    let after = query
        .after
        .as_deref()
        .map(|raw| {
            input::instant_cursor(raw)
                .ok_or_else(|| invalid("after", "a cursor from a page's `next`"))
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=USAGE_PAGE_MAX).contains(&limit) {
        return Err(invalid("limit", "1 to 1000"));
    }
    let records = state
        .ledger
        .store()
        .usage_events(access.org, from, to, after, limit)
        .await
        .map_err(|error| internal(&error))?;
    let full = records.len() == usize::try_from(limit).unwrap_or(usize::MAX);
    let next = records
        .last()
        .filter(|_| full)
        .map(|last| format!("{}_{}", last.occurred_at.as_micros(), last.id));
    Ok(HttpResponse::Ok().json(UsagePageView {
        events: records.iter().map(UsageEventView::from).collect(),
        next,
    }))
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/v1/orgs/{org_id}/usage")
                .app_data(
                    web::JsonConfig::default()
                        .limit(USAGE_BODY_MAX)
                        .error_handler(crate::problem::json_error),
                )
                .route(web::get().to(list_usage))
                .route(web::post().to(record_usage)),
        )
        .service(web::resource("/v1/orgs/{org_id}/usage/totals").route(web::get().to(usage_totals)))
        .service(web::resource("/v1/orgs/{org_id}/usage.csv").route(web::get().to(export_usage)))
        .service(
            web::resource("/v1/orgs/{org_id}/usage/forecast").route(web::get().to(usage_forecast)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/usage/savings").route(web::get().to(usage_savings)),
        );
}

/// How usage totals are grouped.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Model,
    Class,
    User,
    ApiKey,
    Task,
    Conversation,
    /// The UTC day of the call, `YYYY-MM-DD`.
    Day,
}

/// Which events to total, and how.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TotalsQuery {
    /// How the totals are grouped (required; checked after the caller's access, so that a
    /// caller without access learns nothing from a malformed query).
    #[param(required = true, inline)]
    group_by: Option<GroupBy>,
    /// Calls at or after this instant.
    #[param(format = DateTime)]
    from: Option<String>,
    /// Calls before this instant.
    #[param(format = DateTime)]
    to: Option<String>,
    /// Only this model id.
    #[param(min_length = 1, max_length = 128)]
    model: Option<String>,
    /// Only this class.
    #[param(min_length = 1, max_length = 64)]
    class: Option<String>,
    #[param(format = Uuid)]
    user_id: Option<String>,
    #[param(format = Uuid)]
    api_key_id: Option<String>,
    #[param(min_length = 1, max_length = 200)]
    task: Option<String>,
    #[param(min_length = 1, max_length = 200)]
    conversation: Option<String>,
    /// The costliest groups only (1 to 1,000; default 100).
    #[serde(deserialize_with = "integer::optional_in_query", default)]
    #[param(minimum = 1, maximum = 1000)]
    top: Option<u32>,
}

/// One group's totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageTotalView {
    /// The group: a model id, class, user or key id, task, conversation or day; none for
    /// calls without one (no user, say).
    pub key: Option<String>,
    pub events: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub cost_micro_cr: u64,
    pub from_acquired: u64,
    pub from_alloc: u64,
    pub from_wallet_micro_cr: u64,
}

impl From<&credex_store::UsageTotal> for UsageTotalView {
    fn from(total: &credex_store::UsageTotal) -> Self {
        Self {
            key: total.key.clone(),
            events: total.events,
            input_tokens: total.input_tokens,
            cached_input_tokens: total.cached_input_tokens,
            cache_write_tokens: total.cache_write_tokens,
            output_tokens: total.output_tokens,
            cost_micro_cr: total.cost_micro_cr,
            from_acquired: total.from_acquired,
            from_alloc: total.from_alloc,
            from_wallet_micro_cr: total.from_wallet_micro_cr,
        }
    }
}

/// Totals per group, and over every matching call.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageTotalsView {
    pub group_by: GroupBy,
    /// The costliest groups first.
    pub groups: Vec<UsageTotalView>,
    /// Every matching call, whatever its group.
    pub total: UsageTotalView,
}

fn optional_instant(field: &str, raw: Option<&str>) -> Result<Option<Timestamp>, actix_web::Error> {
    raw.map(|text| input::instant(field, text)).transpose()
}

/// Tokens and cost of the org's calls grouped by model, class, user, API key, task,
/// conversation or day, with filters; the costliest groups first (members; API keys need
/// `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/usage/totals",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), TotalsQuery),
    responses(
        (status = 200, description = "Totals per group and over all", body = UsageTotalsView),
        (status = 400, description = "A query string that does not parse", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A filter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn usage_totals(
    access: OrgAccess<Read>,
    query: web::Query<TotalsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    use credex_store::{UsageFilter, UsageGroup};
    let query = query.into_inner();
    let filter = UsageFilter {
        from: optional_instant("from", query.from.as_deref())?,
        to: optional_instant("to", query.to.as_deref())?,
        model: input::optional_text("model", query.model, 128)?,
        class: input::optional_text("class", query.class, 64)?,
        user: input::optional_uuid("user_id", query.user_id.as_deref())?,
        api_key: input::optional_uuid("api_key_id", query.api_key_id.as_deref())?,
        task: input::optional_text("task", query.task, LABEL_MAX)?,
        conversation: input::optional_text("conversation", query.conversation, LABEL_MAX)?,
    };
    let top = query.top.unwrap_or(100);
    if !(1..=USAGE_PAGE_MAX).contains(&top) {
        return Err(invalid("top", "1 to 1000"));
    }
    let Some(group_by) = query.group_by else {
        return Err(invalid(
            "group_by",
            "one of model, class, user, api_key, task, conversation, day",
        ));
    };
    let group = match group_by {
        GroupBy::Model => UsageGroup::Model,
        GroupBy::Class => UsageGroup::Class,
        GroupBy::User => UsageGroup::User,
        GroupBy::ApiKey => UsageGroup::ApiKey,
        GroupBy::Task => UsageGroup::Task,
        GroupBy::Conversation => UsageGroup::Conversation,
        GroupBy::Day => UsageGroup::Day,
    };
    let store = state.ledger.store();
    let groups = store
        .usage_totals(access.org, &filter, group, top)
        .await
        .map_err(|error| internal(&error))?;
    let total = store
        .usage_totals(access.org, &filter, UsageGroup::All, 1)
        .await
        .map_err(|error| internal(&error))?
        .pop()
        .unwrap_or_default();
    let mut total = UsageTotalView::from(&total);
    total.key = None;
    Ok(HttpResponse::Ok().json(UsageTotalsView {
        group_by,
        groups: groups.iter().map(UsageTotalView::from).collect(),
        total,
    }))
}

/// Which events to export.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Calls at or after this instant (default: the beginning).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Calls before this instant (default: the end of time).
    #[param(format = DateTime)]
    to: Option<String>,
}

/// The CSV header of an export.
pub(crate) const CSV_HEADER: &str = "id,occurred_at,recorded_at,model,class,asset,input_tokens,\
cached_input_tokens,cache_write_tokens,output_tokens,cost_micro_cr,from_acquired,from_alloc,\
from_wallet_micro_cr,price_source,user_id,api_key_id,task,conversation,metadata\r\n";

pub(crate) fn csv_row(out: &mut String, record: &UsageRecord) {
    let numbers = [
        record.input_tokens,
        record.cached_input_tokens,
        record.cache_write_tokens,
        record.output_tokens,
        record.cost_micro_cr,
        record.from_acquired,
        record.from_alloc,
        record.from_wallet_micro_cr,
    ];
    let mut fields: Vec<String> = vec![
        record.id.to_string(),
        rfc3339(record.occurred_at),
        rfc3339(record.recorded_at),
        record.model.clone(),
        record.class.clone(),
        record.asset.clone(),
    ];
    fields.extend(numbers.iter().map(ToString::to_string));
    fields.push(record.price_source.clone());
    fields.push(record.user.map(|id| id.to_string()).unwrap_or_default());
    fields.push(record.api_key.map(|id| id.to_string()).unwrap_or_default());
    fields.push(record.task.clone().unwrap_or_default());
    fields.push(record.conversation.clone().unwrap_or_default());
    fields.push(record.metadata.clone().unwrap_or_default());
    for (index, field) in fields.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        csv_field(out, field);
    }
    out.push_str("\r\n");
}

/// The org's calls in a range as CSV (RFC 4180), streamed a page at a time, oldest first
/// (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/usage.csv",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), ExportQuery),
    responses(
        (status = 200, description = "Every call in the range, one per line after a header", body = String, content_type = "text/csv"),
        (status = 400, description = "A query string that does not parse", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bound is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn export_usage(
    access: OrgAccess<Read>,
    query: web::Query<ExportQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let from = optional_instant("from", query.from.as_deref())?
        .unwrap_or(Timestamp::from_micros(i64::MIN));
    let to =
        optional_instant("to", query.to.as_deref())?.unwrap_or(Timestamp::from_micros(i64::MAX));
    let store = state.ledger.store().clone();
    let org = access.org;
    // (the cursor after the last row sent, whether the header went, whether the end was met)
    let pages = futures::stream::try_unfold(
        (None, false, false),
        move |(after, header_sent, done): (Option<(Timestamp, uuid::Uuid)>, bool, bool)| {
            let store = store.clone();
            async move {
                if done {
                    return Ok::<_, actix_web::Error>(None);
                }
                let mut out = String::new();
                if !header_sent {
                    out.push_str(CSV_HEADER);
                }
                let page = store
                    .usage_events(org, from, to, after, USAGE_PAGE_MAX)
                    .await
                    .map_err(|error| internal(&error))?;
                for record in &page {
                    csv_row(&mut out, record);
                }
                let full = page.len() == usize::try_from(USAGE_PAGE_MAX).unwrap_or(usize::MAX);
                let next = page
                    .last()
                    .map(|last| (last.occurred_at, last.id))
                    .or(after);
                Ok(Some((web::Bytes::from(out), (next, true, !full))))
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            "attachment; filename=\"usage.csv\"",
        ))
        .streaming(pages))
}

/// Which period to forecast.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForecastQuery {
    /// The period (default `month`).
    period: Option<crate::routes::budgets::PeriodName>,
    /// An IANA time zone, where days, weeks and months start (default `UTC`).
    #[param(min_length = 1, max_length = 64)]
    time_zone: Option<String>,
}

/// The period's spend so far and where it is heading.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastView {
    pub period: crate::routes::budgets::PeriodName,
    #[schema(format = DateTime)]
    pub period_start: String,
    #[schema(format = DateTime)]
    pub period_end: String,
    /// Spent so far this period, µCR at the models' prices.
    pub spent_micro_cr: u64,
    /// Spent over the last 7 days (the rate the forecast assumes).
    pub trailing_7_days_micro_cr: u64,
    /// `spent + trailing rate × time left`, rounded up.
    pub forecast_micro_cr: u64,
}

/// Where the period's spend is heading: spent so far plus the last 7 days' rate over the time
/// left (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/usage/forecast",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), ForecastQuery),
    responses(
        (status = 200, description = "The forecast", body = ForecastView),
        (status = 400, description = "A query string that does not parse", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown time zone", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn usage_forecast(
    access: OrgAccess<Read>,
    query: web::Query<ForecastQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    use crate::budgets::Period;
    use crate::routes::budgets::PeriodName;
    use credex_store::{UsageFilter, UsageGroup};
    let query = query.into_inner();
    let name = query.period.unwrap_or(PeriodName::Month);
    let period = match name {
        PeriodName::Day => Period::Day,
        PeriodName::Week => Period::Week,
        PeriodName::Month => Period::Month,
        PeriodName::Cycle => Period::Cycle,
    };
    let zone_name = query.time_zone.unwrap_or_else(|| "UTC".to_owned());
    let zone = jiff::tz::db()
        .get(&zone_name)
        .map_err(|_| invalid("time_zone", "an IANA time zone such as Europe/Paris"))?;
    let store = state.ledger.store();
    let now = store.clock().now();
    let (start, end) = crate::budgets::period_bounds(period, &zone, now);
    let total = |from: Timestamp| {
        let filter = UsageFilter {
            from: Some(from),
            to: Some(now.plus_micros(1)),
            ..UsageFilter::default()
        };
        let store = store.clone();
        async move {
            store
                .usage_totals(access.org, &filter, UsageGroup::All, 1)
                .await
                .map(|mut totals| totals.pop().map_or(0, |t| t.cost_micro_cr))
                .map_err(|error| internal(&error))
        }
    };
    const WEEK_MICROS: i64 = 7 * 86_400_000_000;
    let spent = total(start).await?;
    let trailing = total(now.plus_micros(-WEEK_MICROS)).await?;
    let left = u64::try_from(end.as_micros().saturating_sub(now.as_micros())).unwrap_or(0);
    let forecast = crate::usage::forecast(spent, trailing, WEEK_MICROS.unsigned_abs(), left);
    Ok(HttpResponse::Ok().json(ForecastView {
        period: name,
        period_start: rfc3339(start),
        period_end: rfc3339(end),
        spent_micro_cr: spent,
        trailing_7_days_micro_cr: trailing,
        forecast_micro_cr: forecast,
    }))
}

/// A cheaper model of the same class, and what the calls would have cost with it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SavingView {
    /// The model used.
    pub model: String,
    pub class: String,
    pub events: u64,
    /// What its calls cost.
    pub cost_micro_cr: u64,
    /// The cheapest model of the same class for these tokens, at today's prices.
    pub alternative: String,
    /// What the same tokens would cost with it (at today's price).
    pub alternative_cost_micro_cr: u64,
    pub savings_micro_cr: u64,
}

/// Savings recommendations: for each model the org used in the range, the cheapest model of
/// the same class for the same tokens at today's prices (its custom prices first), when it is
/// cheaper; the largest savings first (members; API keys need `read`). The alternative prices
/// the calls as that many calls of the average size (so long-context tiers apply per call).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/usage/savings",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), ExportQuery),
    responses(
        (status = 200, description = "Recommendations, the largest savings first", body = Vec<SavingView>),
        (status = 400, description = "A query string that does not parse", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bound is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn usage_savings(
    access: OrgAccess<Read>,
    query: web::Query<ExportQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    use credex_store::{ModelFilter, UsageFilter, UsageGroup};
    let filter = UsageFilter {
        from: optional_instant("from", query.from.as_deref())?,
        to: optional_instant("to", query.to.as_deref())?,
        ..UsageFilter::default()
    };
    let store = state.ledger.store();
    let now = store.clock().now();
    let used = store
        .usage_totals(access.org, &filter, UsageGroup::Model, USAGE_PAGE_MAX)
        .await
        .map_err(|error| internal(&error))?;
    let mut candidates: std::collections::HashMap<String, Vec<crate::catalog::ResolvedModelPrice>> =
        std::collections::HashMap::new();
    let mut savings = Vec::new();
    for total in &used {
        let Some(model) = total.key.as_deref() else {
            continue;
        };
        let Ok(prices) =
            crate::catalog::model_prices(store.as_ref(), Some(access.org), model).await
        else {
            continue; // a model no longer in the catalog
        };
        let class = prices.class.to_string();
        if !candidates.contains_key(&class) {
            let mut priced = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let filter = ModelFilter {
                    class: Some(class.clone()),
                    ..ModelFilter::default()
                };
                let page = store
                    .models_page(after.as_deref(), credex_store::PAGE_MAX, &filter)
                    .await
                    .map_err(|error| internal(&error))?;
                for record in &page {
                    let found =
                        crate::catalog::model_prices(store.as_ref(), Some(access.org), &record.id)
                            .await
                            .ok()
                            .and_then(|prices| prices.at(now).ok());
                    priced.extend(found);
                }
                match page.last() {
                    Some(last) if page.len() == credex_store::PAGE_MAX as usize => {
                        after = Some(last.id.clone());
                    }
                    _ => break,
                }
            }
            candidates.insert(class.clone(), priced);
        }
        // Priced as that many average calls, so that long-context tiers apply as they would
        // to a call, not to the sum of all of them.
        let events = total.events.max(1);
        let average = |tokens: u64| (tokens / events).min(MAX_TOKENS_PER_KIND);
        let Ok(tokens) = TokenUsage::new(
            average(total.input_tokens),
            average(total.cached_input_tokens),
            average(total.cache_write_tokens),
            average(total.output_tokens),
        ) else {
            continue;
        };
        let cheapest = candidates[&class]
            .iter()
            .filter(|candidate| candidate.model.id != model)
            .filter_map(|candidate| {
                credex_pricing::charge(&candidate.price, &tokens, state.cr_face_value)
                    .ok()
                    .and_then(|charge| charge.micro_cr.checked_mul(events))
                    .map(|cost| (cost, candidate.model.id.clone()))
            })
            .min();
        if let Some((cost, alternative)) = cheapest {
            if cost < total.cost_micro_cr {
                savings.push(SavingView {
                    model: model.to_owned(),
                    class: class.clone(),
                    events: total.events,
                    cost_micro_cr: total.cost_micro_cr,
                    alternative,
                    alternative_cost_micro_cr: cost,
                    savings_micro_cr: total.cost_micro_cr - cost,
                });
            }
        }
    }
    savings.sort_by_key(|saving| std::cmp::Reverse(saving.savings_micro_cr));
    Ok(HttpResponse::Ok().json(savings))
}
