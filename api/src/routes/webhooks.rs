//! Webhooks and the delivery log over HTTP: an org's owners register URLs its events are
//! posted to (signed; see [`crate::notify`]), members list them and read every delivery (e-mail
//! and webhook) with each of its attempts (see [`crate::delivery`]).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use credex_ledger::{OrgId, Timestamp};
use credex_store::{
    AttemptOutcome, AttemptRecord, AuditAction, AuditEntry, DeliveryChannel, DeliveryFilter,
    DeliveryRecord, DeliveryState, WebhookRecord,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::access::{OrgAccess, Owner, Read};
use crate::delivery::{EVENT_BUDGET_ALERT, WEBHOOKS_MAX};
use crate::idempotency::{self, Answer, OptionalIdempotencyKey};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::routes::ledger::json_body;
use crate::startup::AppState;
use crate::views::rfc3339;

/// The longest webhook URL.
const URL_MAX: usize = 2_048;
/// The longest description.
const DESCRIPTION_MAX: usize = 200;
/// The most event types a webhook names.
const EVENTS_MAX: usize = 10;
/// The most rows of a page, and the default.
const PAGE_MAX: u32 = 100;
const PAGE_DEFAULT: u32 = 20;

pub(crate) fn audit<P: crate::auth::access::Permission>(
    action: &str,
    at: Timestamp,
    access: &OrgAccess<P>,
    details: serde_json::Value,
) -> Result<AuditEntry, actix_web::Error> {
    let action = AuditAction::parse(action).map_err(|error| internal(&error))?;
    let entry = AuditEntry::new(at, action, access.org.to_string(), details)
        .map_err(|error| internal(&error))?
        .in_org(access.org);
    Ok(match access.caller.user_id() {
        Some(user) => entry.by(user),
        None => entry,
    })
}

/// An event a webhook can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub enum EventTypeName {
    /// A budget's spend crossed one of its thresholds. The body is JSON `{"type":
    /// "budget_alert.crossed", "event_id", "org_id", "alert_id", "budget_id", "budget_name",
    /// "threshold_percent", "spent_micro_cr", "limit_micro_cr", "period_start", "at"}`.
    #[serde(rename = "budget_alert.crossed")]
    BudgetAlertCrossed,
}

impl EventTypeName {
    fn as_str(self) -> &'static str {
        match self {
            Self::BudgetAlertCrossed => EVENT_BUDGET_ALERT,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        (text == EVENT_BUDGET_ALERT).then_some(Self::BudgetAlertCrossed)
    }
}

/// A new webhook.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// Where events are POSTed: an `http://` URL of a public address.
    #[schema(max_length = 2048, pattern = r"^http://[!-~]+$")]
    url: String,
    /// A note for the org (default empty).
    #[schema(max_length = 200, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    description: Option<String>,
    /// The event types to receive (default: every type, including types added later).
    #[schema(min_items = 1, max_items = 10)]
    events: Option<Vec<EventTypeName>>,
}

/// A webhook. Each delivery is a `POST` of the event's JSON with the headers
/// `Credex-Event-Id` (the same on every retry, so repeats can be dropped) and
/// `Credex-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    #[schema(format = Uuid)]
    pub id: String,
    pub url: String,
    pub description: String,
    /// The event types it receives; empty for every type.
    pub events: Vec<EventTypeName>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The key that signs deliveries: shown once, when the webhook is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&WebhookRecord> for WebhookView {
    fn from(hook: &WebhookRecord) -> Self {
        Self {
            id: hook.id.to_string(),
            url: hook.url.clone(),
            description: hook.description.clone(),
            events: hook
                .events
                .iter()
                .filter_map(|event| EventTypeName::parse(event))
                .collect(),
            created_at: rfc3339(hook.created_at),
            secret: None,
        }
    }
}

/// A page of webhooks.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhooksPage {
    pub webhooks: Vec<WebhookView>,
    /// The cursor of the next page (`after`), when this one is full.
    #[schema(format = Uuid)]
    pub next: Option<String>,
}

/// Which webhooks to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WebhooksQuery {
    /// The `next` cursor of the page before.
    #[param(format = Uuid)]
    after: Option<String>,
    /// At most this many (1 to 100; default 20).
    #[serde(deserialize_with = "integer::optional_in_query", default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// How a delivery travels.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryChannelName {
    Email,
    Webhook,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStateName {
    /// Waiting for its next attempt.
    Pending,
    /// Accepted by the SMTP server, written to the outbox, or answered 2xx by the webhook.
    Delivered,
    /// Given up on after its last attempt (`last_error` says why).
    Failed,
}

impl From<DeliveryStateName> for DeliveryState {
    fn from(state: DeliveryStateName) -> Self {
        match state {
            DeliveryStateName::Pending => Self::Pending,
            DeliveryStateName::Delivered => Self::Delivered,
            DeliveryStateName::Failed => Self::Failed,
        }
    }
}

/// What an attempt came to.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcomeName {
    Delivered,
    /// Failed; another attempt follows.
    Retry,
    /// Failed; the delivery gave up.
    Failed,
}

/// One attempt at a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first.
    pub attempt: u32,
    #[schema(format = DateTime)]
    pub started_at: String,
    pub duration_micros: u64,
    pub outcome: AttemptOutcomeName,
    /// The webhook's HTTP status, or the SMTP server's reply code.
    pub status: Option<u16>,
    /// The error, the server's reply, or where the outbox file went.
    pub detail: Option<String>,
}

impl From<&AttemptRecord> for AttemptView {
    fn from(attempt: &AttemptRecord) -> Self {
        Self {
            attempt: attempt.attempt,
            started_at: rfc3339(attempt.started_at),
            duration_micros: attempt.duration_micros,
            outcome: match attempt.outcome {
                AttemptOutcome::Delivered => AttemptOutcomeName::Delivered,
                AttemptOutcome::Retry => AttemptOutcomeName::Retry,
                AttemptOutcome::Failed => AttemptOutcomeName::Failed,
            },
            status: attempt.status,
            detail: attempt.detail.clone(),
        }
    }
}

/// A message to one target, with its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    #[schema(format = Uuid)]
    pub id: String,
    pub channel: DeliveryChannelName,
    /// The e-mail address, or the webhook's id.
    pub target: String,
    #[schema(format = Uuid)]
    pub webhook_id: Option<String>,
    /// `budget_alert.crossed`, `report.daily`, `report.weekly` or `report.monthly`.
    pub event_type: String,
    /// The event's id (a budget alert's id): the same for every target and attempt.
    #[schema(format = Uuid)]
    pub event_id: String,
    pub state: DeliveryStateName,
    pub attempts: u32,
    /// When a pending delivery is tried next.
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub delivered_at: Option<String>,
    pub last_error: Option<String>,
    /// Every attempt, first first.
    pub log: Vec<AttemptView>,
}

fn delivery_view(delivery: &DeliveryRecord, attempts: &[AttemptRecord]) -> DeliveryView {
    DeliveryView {
        id: delivery.id.to_string(),
        channel: match delivery.channel {
            DeliveryChannel::Email => DeliveryChannelName::Email,
            DeliveryChannel::Webhook => DeliveryChannelName::Webhook,
        },
        target: delivery.target.clone(),
        webhook_id: delivery.webhook.map(|id| id.to_string()),
        event_type: delivery.event_type.clone(),
        event_id: delivery.event_id.to_string(),
        state: match delivery.state {
            DeliveryState::Pending => DeliveryStateName::Pending,
            DeliveryState::Delivered => DeliveryStateName::Delivered,
            DeliveryState::Failed => DeliveryStateName::Failed,
        },
        attempts: delivery.attempts,
        next_attempt_at: (delivery.state == DeliveryState::Pending)
            .then(|| rfc3339(delivery.next_attempt_at)),
        created_at: rfc3339(delivery.created_at),
        delivered_at: delivery.delivered_at.map(rfc3339),
        last_error: delivery.last_error.clone(),
        log: attempts
            .iter()
            .filter(|attempt| attempt.delivery == delivery.id)
            .map(AttemptView::from)
            .collect(),
    }
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveriesPage {
    pub deliveries: Vec<DeliveryView>,
    /// The cursor of the next page (`after`), when this one is full.
    pub next: Option<String>,
}

/// Which deliveries to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only deliveries in this state.
    state: Option<DeliveryStateName>,
    /// The `next` cursor of the page before.
    #[param(
        max_length = 64,
        pattern = r"^-?[0-9]{1,18}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    )]
    after: Option<String>,
    /// At most this many (1 to 100; default 20).
    #[serde(deserialize_with = "integer::optional_in_query", default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

fn page_limit(limit: Option<u32>) -> Result<u32, actix_web::Error> {
    let limit = limit.unwrap_or(PAGE_DEFAULT);
    if (1..=PAGE_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(invalid("limit", "1 to 100"))
    }
}

fn cursor(raw: &str) -> Option<(Timestamp, Uuid)> {
    input::instant_cursor(raw)
}

/// Registers a webhook (owners): the org's events are POSTed to it, signed with a secret shown
/// only in this answer. The URL must be `http://` and name a public address.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/webhooks",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "Optional: 1 to 255 visible ASCII characters, new for each new webhook; a retry with the same key answers the first answer (the same webhook and secret) instead of registering a second one"),
    ),
    request_body = WebhookBody,
    responses(
        (status = 201, description = "The webhook with its secret (or, for a retry with the same `Idempotency-Key`, the first answer, with `Idempotent-Replayed: true`); `Location` names it", body = WebhookView,
            headers(("Location" = String, description = "The webhook: `/v1/orgs/{org_id}/webhooks/{webhook_id}`"))),
        (status = 400, description = "A malformed body or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The org has 20 webhooks, or the first request with this Idempotency-Key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid (a URL that is not public `http://`, a description with control characters), or the Idempotency-Key was used for another request", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_webhook(
    access: OrgAccess<Owner>,
    req: HttpRequest,
    key: OptionalIdempotencyKey,
    raw: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let body: WebhookBody = json_body(&req, &raw)?;
    if body.url.len() > URL_MAX {
        return Err(invalid("url", "at most 2048 characters"));
    }
    state
        .alerts
        .check_webhook_url(&body.url)
        .map_err(|reason| invalid("url", reason))?;
    let description = body.description.unwrap_or_default();
    if !input::is_plain_text(&description, DESCRIPTION_MAX) {
        return Err(invalid(
            "description",
            "at most 200 characters, no control characters",
        ));
    }
    let mut events: Vec<&'static str> = Vec::new();
    match &body.events {
        Some(list) if list.is_empty() || list.len() > EVENTS_MAX => {
            return Err(invalid("events", "1 to 10 event types"));
        }
        Some(list) => {
            for event in list {
                if !events.contains(&event.as_str()) {
                    events.push(event.as_str());
                }
            }
        }
        None => {}
    }
    let fingerprint = idempotency::fingerprint(&req, &raw);
    let store = state.ledger.store().clone();
    let scope = access.org.to_string();
    idempotency::maybe_once(store.as_ref(), &scope, &key, fingerprint, || async move {
        register(&access, body.url, description, &events, &state).await
    })
    .await
}

/// Registers a validated webhook, if the org has room for it.
async fn register(
    access: &OrgAccess<Owner>,
    url: String,
    description: String,
    events: &[&'static str],
    state: &AppState,
) -> Result<Answer, actix_web::Error> {
    let store = state.ledger.store();
    let existing = store
        .webhooks_of(
            access.org,
            None,
            u32::try_from(WEBHOOKS_MAX).unwrap_or(u32::MAX),
        )
        .await
        .map_err(|error| internal(&error))?;
    if existing.len() >= WEBHOOKS_MAX {
        return Err(ApiError::new(
            ProblemKind::Conflict,
            format!("the org has {WEBHOOKS_MAX} webhooks; delete one first"),
        )
        .into());
    }
    let now = store.clock().now();
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let record = WebhookRecord {
        id: Uuid::now_v7(),
        org: access.org,
        url,
        secret: format!("whsec_{secret}"),
        description,
        events: events.iter().map(|&event| event.to_owned()).collect(),
        created_at: now,
        deleted_at: None,
    };
    let entry = audit(
        "webhooks.create",
        now,
        access,
        serde_json::json!({"webhook_id": record.id, "url": record.url}),
    )?;
    store
        .create_webhook(&record, &entry)
        .await
        .map_err(|error| internal(&error))?;
    let mut view = WebhookView::from(&record);
    view.secret = Some(record.secret.clone());
    Ok(Answer {
        status: StatusCode::CREATED,
        location: Some(format!("/v1/orgs/{}/webhooks/{}", access.org, record.id)),
        body: serde_json::to_value(view).map_err(|error| ApiError::internal(&error))?,
    })
}

/// The org's webhooks, oldest first, without their secrets (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/webhooks",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), WebhooksQuery),
    responses(
        (status = 200, description = "A page of webhooks", body = WebhooksPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed cursor or limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn webhooks(
    access: OrgAccess<Read>,
    query: web::Query<WebhooksQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let query = query.into_inner();
    let limit = page_limit(query.limit)?;
    let after = query
        .after
        .as_deref()
        .map(|raw| {
            input::uuid(raw).ok_or_else(|| invalid("after", "a cursor from a page's `next`"))
        })
        .transpose()?;
    let hooks = state
        .ledger
        .store()
        .webhooks_of(access.org, after, limit)
        .await
        .map_err(|error| internal(&error))?;
    let full = hooks.len() == usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(HttpResponse::Ok().json(WebhooksPage {
        next: hooks
            .last()
            .filter(|_| full)
            .map(|last| last.id.to_string()),
        webhooks: hooks.iter().map(WebhookView::from).collect(),
    }))
}

async fn own_webhook(
    state: &AppState,
    org: OrgId,
    raw: &str,
) -> Result<WebhookRecord, actix_web::Error> {
    let not_found = || -> actix_web::Error {
        ApiError::new(ProblemKind::NotFound, "no such webhook in this org").into()
    };
    let id = input::uuid(raw).ok_or_else(not_found)?;
    state
        .ledger
        .store()
        .webhook(id)
        .await
        .map_err(|error| internal(&error))?
        .filter(|hook| hook.org == org && hook.deleted_at.is_none())
        .ok_or_else(not_found)
}

/// One of the org's webhooks, without its secret (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/webhooks/{webhook_id}",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("webhook_id" = String, Path, format = Uuid, description = "The webhook"),
    ),
    responses(
        (status = 200, description = "The webhook", body = WebhookView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no such webhook in it (or it was deleted)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_webhook(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let hook = own_webhook(&state, access.org, &path.1).await?;
    Ok(HttpResponse::Ok().json(WebhookView::from(&hook)))
}

/// Deletes a webhook (owners): nothing more is posted to it, and its pending deliveries fail.
/// Its delivery log stays in `GET /v1/orgs/{org_id}/deliveries`.
#[utoipa::path(
    delete,
    path = "/v1/orgs/{org_id}/webhooks/{webhook_id}",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("webhook_id" = String, Path, format = Uuid, description = "The webhook"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no such webhook in it (or it was deleted)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_webhook(
    access: OrgAccess<Owner>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let hook = own_webhook(&state, access.org, &path.1).await?;
    let store = state.ledger.store();
    let entry = audit(
        "webhooks.delete",
        store.clock().now(),
        &access,
        serde_json::json!({"webhook_id": hook.id}),
    )?;
    let deleted = store
        .delete_webhook(access.org, hook.id, &entry)
        .await
        .map_err(|error| internal(&error))?;
    if !deleted {
        return Err(ApiError::new(ProblemKind::NotFound, "no such webhook in this org").into());
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn deliveries_page(
    state: &AppState,
    org: OrgId,
    webhook: Option<Uuid>,
    query: DeliveriesQuery,
) -> Result<HttpResponse, actix_web::Error> {
    let limit = page_limit(query.limit)?;
    let after = query
        .after
        .as_deref()
        .map(|raw| cursor(raw).ok_or_else(|| invalid("after", "a cursor from a page's `next`")))
        .transpose()?;
    let filter = DeliveryFilter {
        state: query.state.map(DeliveryState::from),
        webhook,
    };
    let store = state.ledger.store();
    let deliveries = store
        .deliveries_of(org, filter, after, limit)
        .await
        .map_err(|error| internal(&error))?;
    let ids: Vec<Uuid> = deliveries.iter().map(|delivery| delivery.id).collect();
    let attempts = store
        .delivery_attempts(&ids)
        .await
        .map_err(|error| internal(&error))?;
    let full = deliveries.len() == usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(HttpResponse::Ok().json(DeliveriesPage {
        next: deliveries
            .last()
            .filter(|_| full)
            .map(|last| format!("{}_{}", last.created_at.as_micros(), last.id)),
        deliveries: deliveries
            .iter()
            .map(|delivery| delivery_view(delivery, &attempts))
            .collect(),
    }))
}

/// A webhook's deliveries, newest first, each with every attempt (members; API keys need
/// `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/webhooks/{webhook_id}/deliveries",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("webhook_id" = String, Path, format = Uuid, description = "The webhook"),
        DeliveriesQuery,
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveriesPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no such webhook in it (or it was deleted)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed cursor or limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn webhook_deliveries(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    query: web::Query<DeliveriesQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let hook = own_webhook(&state, access.org, &path.1).await?;
    deliveries_page(&state, access.org, Some(hook.id), query.into_inner()).await
}

/// Every delivery of the org's notifications (budget-alert e-mails and webhook posts, report
/// e-mails), newest first, each with every attempt (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/deliveries",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), DeliveriesQuery),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveriesPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed cursor or limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn deliveries(
    access: OrgAccess<Read>,
    query: web::Query<DeliveriesQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    deliveries_page(&state, access.org, None, query.into_inner()).await
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/v1/orgs/{org_id}/webhooks")
                // The create reads its body raw (for the Idempotency-Key's fingerprint).
                .app_data(web::PayloadConfig::new(16 << 10))
                .route(web::get().to(webhooks))
                .route(web::post().to(create_webhook)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/webhooks/{webhook_id}")
                .route(web::get().to(get_webhook))
                .route(web::delete().to(delete_webhook)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/webhooks/{webhook_id}/deliveries")
                .route(web::get().to(webhook_deliveries)),
        )
        .service(web::resource("/v1/orgs/{org_id}/deliveries").route(web::get().to(deliveries)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_we_hand_out_parse() {
        let id = Uuid::now_v7();
        let raw = format!("{}_{id}", 1_795_651_200_000_000_i64);
        assert_eq!(
            cursor(&raw),
            Some((Timestamp::from_micros(1_795_651_200_000_000), id))
        );
        assert_eq!(
            cursor(&format!("-5_{id}")),
            Some((Timestamp::from_micros(-5), id))
        );
        let upper = format!("5_{}", id.to_string().to_uppercase());
        let long = format!("{}_{id}", "1".repeat(19));
        for bad in ["", "_", "5", "x_y", "-_", upper.as_str(), long.as_str()] {
            assert_eq!(cursor(bad), None, "{bad}");
        }
    }
}
