//! Reservations over HTTP (see [`crate::usage::reservations`]): a program holds the worst-case
//! cost of a model call before making it, then settles it with the real usage, or releases it;
//! an unsettled reservation expires at its timeout. Holding, settling and releasing need
//! `usage:write`; members (and keys with `read`) read them.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use credex_ledger::Timestamp;
use credex_store::{ReservationRecord, ReservationState, USAGE_PAGE_MAX};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::access::{OrgAccess, Read, UsageWrite};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::routes::usage::{call_fields, parse_event, usage_error, UsageEventBody, UsageEventView};
use crate::startup::AppState;
use crate::usage::reservations::{
    ReservationRequest, RESERVATION_TIMEOUT_DEFAULT, RESERVATION_TIMEOUT_MAX,
};
use crate::usage::LABEL_MAX;
use crate::views::rfc3339;

/// The worst case of one model call, to hold before making it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationBody {
    /// The org's own id for the reservation (a UUID, neither nil nor max): it is held once; a
    /// replay answers the reservation, other values under the id are refused (409).
    #[schema(format = Uuid)]
    id: String,
    /// A model id or alias of the catalog.
    #[schema(min_length = 1, max_length = 128)]
    model: String,
    /// The most uncached input tokens the call may use.
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    input_tokens: u64,
    /// The most cached input tokens (default 0).
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    cached_input_tokens: Option<u64>,
    /// The most cache-write tokens (default 0).
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    cache_write_tokens: Option<u64>,
    /// The most output tokens (the call's `max_tokens`).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    output_tokens: u64,
    /// How long it holds, seconds (1 to 86,400; default 300): then it expires and releases
    /// everything.
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 1, maximum = 86_400)]
    timeout_seconds: Option<u32>,
    /// The user who will cause the call.
    #[schema(format = Uuid)]
    user_id: Option<String>,
    /// The API key it will be made with (default: the calling key, if any).
    #[schema(format = Uuid)]
    api_key_id: Option<String>,
    /// A task label (1 to 200 characters).
    #[schema(min_length = 1, max_length = 200)]
    task: Option<String>,
    /// A conversation label (1 to 200 characters).
    #[schema(min_length = 1, max_length = 200)]
    conversation: Option<String>,
}

/// Where a reservation stands.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStateName {
    /// Holding until `expires_at`.
    Pending,
    /// Settled with `usage_event_id`.
    Settled,
    /// Released by the org.
    Released,
    /// Not settled by `expires_at`: everything was released.
    Expired,
}

/// A reservation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationView {
    #[schema(format = Uuid)]
    pub id: String,
    pub state: ReservationStateName,
    /// The model's id (an alias resolves to it).
    pub model: String,
    pub class: String,
    /// The token asset it holds from: the class in the current cycle.
    pub asset: String,
    /// The worst case held.
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    /// The worst case at the model's price, µCR: what budgets count while it holds.
    pub cost_micro_cr: u64,
    /// Tokens held in `acquired`.
    pub from_acquired: u64,
    /// Tokens held in `alloc`.
    pub from_alloc: u64,
    /// µCR held in the wallet.
    pub from_wallet_micro_cr: u64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// When it was settled or released.
    #[schema(format = DateTime)]
    pub resolved_at: Option<String>,
    /// The usage event it was settled with.
    #[schema(format = Uuid)]
    pub usage_event_id: Option<String>,
    #[schema(format = Uuid)]
    pub user_id: Option<String>,
    #[schema(format = Uuid)]
    pub api_key_id: Option<String>,
    pub task: Option<String>,
    pub conversation: Option<String>,
    /// The pending ledger transfers that hold it.
    pub transfer_ids: Vec<String>,
}

fn view(record: &ReservationRecord, now: Timestamp) -> ReservationView {
    let state = match record.state {
        ReservationState::Pending if record.holds_at(now) => ReservationStateName::Pending,
        ReservationState::Pending => ReservationStateName::Expired,
        ReservationState::Settled => ReservationStateName::Settled,
        ReservationState::Released => ReservationStateName::Released,
    };
    ReservationView {
        id: record.id.to_string(),
        state,
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
        created_at: rfc3339(record.created_at),
        expires_at: rfc3339(record.expires_at),
        resolved_at: record.resolved_at.map(rfc3339),
        usage_event_id: record.usage_event.map(|id| id.to_string()),
        user_id: record.user.map(|id| id.to_string()),
        api_key_id: record.api_key.map(|id| id.to_string()),
        task: record.task.clone(),
        conversation: record.conversation.clone(),
        transfer_ids: record
            .transfer_ids
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

pub(crate) fn parse_request(
    body: ReservationBody,
    caller_key: Option<Uuid>,
) -> Result<ReservationRequest, actix_web::Error> {
    let (id, tokens) = call_fields(
        &|name| name.to_owned(),
        &body.id,
        &body.model,
        [
            body.input_tokens,
            body.cached_input_tokens.unwrap_or(0),
            body.cache_write_tokens.unwrap_or(0),
            body.output_tokens,
        ],
    )?;
    let timeout_seconds = body.timeout_seconds.unwrap_or(RESERVATION_TIMEOUT_DEFAULT);
    if !(1..=RESERVATION_TIMEOUT_MAX).contains(&timeout_seconds) {
        return Err(invalid(
            "timeout_seconds",
            format!("1 to {RESERVATION_TIMEOUT_MAX}"),
        ));
    }
    Ok(ReservationRequest {
        id,
        model: body.model,
        tokens,
        timeout_seconds,
        user: input::optional_uuid("user_id", body.user_id.as_deref())?,
        api_key: input::optional_uuid("api_key_id", body.api_key_id.as_deref())?.or(caller_key),
        task: input::optional_text("task", body.task, LABEL_MAX)?,
        conversation: input::optional_text("conversation", body.conversation, LABEL_MAX)?,
    })
}

/// Holds the worst-case cost of a model call before it is made: the same split a usage event
/// would take (`acquired`, then `alloc`, then the wallet), as pending ledger transfers that
/// count against those balances and against budgets until settled, released or expired.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/reservations",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    request_body = ReservationBody,
    responses(
        (status = 201, description = "Held; `Location` names the reservation", body = ReservationView,
            headers(("Location" = String, description = "The reservation: `/v1/orgs/{org_id}/reservations/{reservation_id}`"))),
        (status = 200, description = "A replay: the reservation as first held", body = ReservationView),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "Nothing was held: the balances cannot cover the worst case (`payment-required`), or it would take a hard budget past its limit (`budget-exceeded`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without `usage:write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no such model", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id was used before with other values, or the balances changed under the request several times running", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid (the detail names it): no price in force for the model now, a timeout out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_reservation(
    access: OrgAccess<UsageWrite>,
    body: web::Json<ReservationBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let request = parse_request(body.into_inner(), access.caller.api_key_id())?;
    let answer = state
        .usage
        .reserve_as(access.org, access.caller.api_key_id(), request)
        .await
        .map_err(usage_error)?;
    let now = state.ledger.store().clock().now();
    let record = &answer.reservation;
    if answer.replayed {
        return Ok(HttpResponse::Ok().json(view(record, now)));
    }
    let location = format!("/v1/orgs/{}/reservations/{}", access.org, record.id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(view(record, now)))
}

fn reservation_id(raw: &str) -> Result<Uuid, actix_web::Error> {
    input::uuid(raw)
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, "no such reservation").into())
}

/// A reservation (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/reservations/{reservation_id}",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("reservation_id" = String, Path, format = Uuid, description = "The reservation"),
    ),
    responses(
        (status = 200, description = "The reservation", body = ReservationView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no such reservation in it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_reservation(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let id = reservation_id(&path.1)?;
    let store = state.ledger.store();
    let record = store
        .reservation(access.org, id)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, "no such reservation"))?;
    Ok(HttpResponse::Ok().json(view(&record, store.clock().now())))
}

/// Which reservations to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReservationsQuery {
    /// The `next` cursor of the page before.
    #[param(
        max_length = 64,
        pattern = r"^-?[0-9]{1,18}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    )]
    before: Option<String>,
    /// At most this many (1 to 1,000; default 100).
    #[serde(deserialize_with = "integer::optional_in_query", default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of reservations.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationPageView {
    pub reservations: Vec<ReservationView>,
    /// The cursor of the next page (`before`), when this one is full.
    pub next: Option<String>,
}

/// The org's reservations, newest first (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/reservations",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), ReservationsQuery),
    responses(
        (status = 200, description = "A page of reservations, newest first", body = ReservationPageView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A cursor or limit is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_reservations(
    access: OrgAccess<Read>,
    query: web::Query<ReservationsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let query = query.into_inner();
    let before = query
        .before
        .as_deref()
        .map(|raw| {
            input::instant_cursor(raw)
                .ok_or_else(|| invalid("before", "a cursor from a page's `next`"))
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=USAGE_PAGE_MAX).contains(&limit) {
        return Err(invalid("limit", "1 to 1000"));
    }
    let store = state.ledger.store();
    let records = store
        .reservations_of(access.org, before, limit)
        .await
        .map_err(|error| internal(&error))?;
    let now = store.clock().now();
    let full = records.len() == usize::try_from(limit).unwrap_or(usize::MAX);
    let next = records
        .last()
        .filter(|_| full)
        .map(|last| format!("{}_{}", last.created_at.as_micros(), last.id));
    Ok(HttpResponse::Ok().json(ReservationPageView {
        reservations: records.iter().map(|record| view(record, now)).collect(),
        next,
    }))
}

/// A settled reservation and the call it recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettlementView {
    pub reservation: ReservationView,
    /// The call, recorded and charged as a usage event.
    pub event: UsageEventView,
    /// Whether it had been settled before with this event (this answer repeats that).
    pub replayed: bool,
}

/// Settles a reservation with the call it was made for: the call is recorded as a usage event
/// and charged from what was held (each held leg posted for what the call takes from it, the
/// rest released); a call costing more than was held takes the rest from the balances as any
/// event would. The event's model must be the reservation's, in the same cycle.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/reservations/{reservation_id}/settle",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("reservation_id" = String, Path, format = Uuid, description = "The reservation"),
    ),
    request_body = UsageEventBody,
    responses(
        (status = 201, description = "Settled", body = SettlementView),
        (status = 200, description = "A replay: the settlement as first made", body = SettlementView),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 402, description = "Nothing changed: the call costs more than was held and the balances cannot pay the rest (`payment-required`), or it would take a hard budget past its limit (`budget-exceeded`); the reservation still holds", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without `usage:write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, reservation or model", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The reservation was settled (with another event), released or has expired; or the event id was recorded before with other values", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid (the detail names it), or the event is for another model or cycle than the reservation", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn settle_reservation(
    access: OrgAccess<UsageWrite>,
    path: web::Path<(String, String)>,
    body: web::Json<UsageEventBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let id = reservation_id(&path.1)?;
    let store = state.ledger.store();
    let event = parse_event(
        0,
        body.into_inner(),
        store.clock().now(),
        access.caller.api_key_id(),
    )?;
    let settled = state
        .usage
        .settle_as(access.org, access.caller.api_key_id(), id, event)
        .await
        .map_err(usage_error)?;
    let status = if settled.usage.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(HttpResponse::build(status).json(SettlementView {
        reservation: view(&settled.reservation, store.clock().now()),
        event: UsageEventView::from(&settled.usage.record),
        replayed: settled.usage.replayed,
    }))
}

/// Releases a pending reservation: everything it held is free again (releasing it again
/// answers the same).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/reservations/{reservation_id}/release",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("reservation_id" = String, Path, format = Uuid, description = "The reservation"),
    ),
    responses(
        (status = 200, description = "Released", body = ReservationView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without `usage:write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no such reservation in it", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The reservation was settled or has expired", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn release_reservation(
    access: OrgAccess<UsageWrite>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let id = reservation_id(&path.1)?;
    let answer = state
        .usage
        .release_as(access.org, access.caller.api_key_id(), id)
        .await
        .map_err(usage_error)?;
    let now = state.ledger.store().clock().now();
    Ok(HttpResponse::Ok().json(view(&answer.reservation, now)))
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/v1/orgs/{org_id}/reservations")
                .route(web::get().to(list_reservations))
                .route(web::post().to(create_reservation)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/reservations/{reservation_id}")
                .route(web::get().to(get_reservation)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/reservations/{reservation_id}/settle")
                .route(web::post().to(settle_reservation)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/reservations/{reservation_id}/release")
                .route(web::post().to(release_reservation)),
        );
}
