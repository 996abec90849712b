//! Budgets over HTTP: an org's owners set limits on what the org, a user, an API key or a task
//! may spend per period (see [`crate::budgets`]); members read them, with what each has spent
//! in its current period, and the alerts their thresholds raised.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use credex_store::{AuditAction, AuditEntry, BudgetAlertRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::access::{OrgAccess, Owner, Read};
use crate::budgets::{
    Budget, BudgetError, NewBudget, Period, Scope, BUDGETS_MAX, DEFAULT_THRESHOLDS,
};
use crate::idempotency::{self, Answer, OptionalIdempotencyKey};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::routes::ledger::json_body;
use crate::startup::AppState;
use crate::views::rfc3339;

/// Whose calls a budget counts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScopeBody {
    /// Every call of the org.
    Org {},
    /// Calls attributed to this user.
    User {
        #[schema(format = Uuid)]
        user_id: String,
    },
    /// Calls made with this API key.
    ApiKey {
        #[schema(format = Uuid)]
        api_key_id: String,
    },
    /// Calls labelled with this task.
    Task {
        #[schema(min_length = 1, max_length = 200)]
        task: String,
    },
}

/// How long a budget's period is.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeriodName {
    Day,
    Week,
    Month,
    /// The billing cycle: the calendar month in UTC.
    Cycle,
}

/// A new budget.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[serde(deserialize_with = "input::object::required")]
    scope: ScopeBody,
    period: PeriodName,
    /// An IANA time zone, where days, weeks and months start (default `UTC`).
    #[schema(min_length = 1, max_length = 64)]
    time_zone: Option<String>,
    /// The most the scope may spend per period, µCR, counted at the model's price whatever
    /// pays for the call (1 to 10^15).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_u64)]
    limit_micro_cr: u64,
    /// Percents of the limit that alert once per period, ascending (default `[75, 90, 100]`).
    #[schema(min_items = 1, max_items = 10)]
    thresholds: Option<Vec<u32>>,
    /// Refuse a charge that would pass the limit (default `false`: only alert).
    hard: Option<bool>,
}

impl BudgetBody {
    /// The budget this body asks for: ids parsed, defaults filled in. [`Budget::new`] checks
    /// the rest (name, task, time zone, limit, thresholds).
    pub(crate) fn parse(self) -> Result<NewBudget, actix_web::Error> {
        let uuid =
            |field: &str, text: &str| input::uuid(text).ok_or_else(|| invalid(field, "not a UUID"));
        let scope = match self.scope {
            ScopeBody::Org {} => Scope::Org,
            ScopeBody::User { user_id } => Scope::User(uuid("scope.user_id", &user_id)?),
            ScopeBody::ApiKey { api_key_id } => {
                Scope::ApiKey(uuid("scope.api_key_id", &api_key_id)?)
            }
            ScopeBody::Task { task } => Scope::Task(task),
        };
        let period = match self.period {
            PeriodName::Day => Period::Day,
            PeriodName::Week => Period::Week,
            PeriodName::Month => Period::Month,
            PeriodName::Cycle => Period::Cycle,
        };
        Ok(NewBudget {
            name: self.name,
            scope,
            period,
            time_zone: self.time_zone.unwrap_or_else(|| "UTC".to_owned()),
            limit_micro_cr: self.limit_micro_cr,
            thresholds: self
                .thresholds
                .unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec()),
            hard: self.hard.unwrap_or(false),
        })
    }
}

/// A budget, with what it has spent in the current period.
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetView {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    /// `org`, `user`, `api_key` or `task`.
    pub scope: String,
    /// The user or key id, or the task; none for the org.
    pub scope_value: Option<String>,
    pub period: PeriodName,
    pub time_zone: String,
    pub limit_micro_cr: u64,
    pub thresholds: Vec<u32>,
    pub hard: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub period_start: String,
    #[schema(format = DateTime)]
    pub period_end: String,
    /// Spent in the current period, µCR.
    pub spent_micro_cr: u64,
    /// Held now by pending reservations in the current period, µCR: a hard budget refuses
    /// what would take spent plus held past its limit.
    pub held_micro_cr: u64,
}

/// A threshold a budget's spend crossed.
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetAlertView {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = Uuid)]
    pub budget_id: String,
    #[schema(format = DateTime)]
    pub period_start: String,
    /// The percent of the limit crossed.
    pub threshold: u32,
    pub spent_micro_cr: u64,
    pub limit_micro_cr: u64,
    #[schema(format = DateTime)]
    pub at: String,
}

impl From<&BudgetAlertRecord> for BudgetAlertView {
    fn from(alert: &BudgetAlertRecord) -> Self {
        Self {
            id: alert.id.to_string(),
            budget_id: alert.budget.to_string(),
            period_start: rfc3339(alert.period_start),
            threshold: alert.threshold,
            spent_micro_cr: alert.spent_micro_cr,
            limit_micro_cr: alert.limit_micro_cr,
            at: rfc3339(alert.at),
        }
    }
}

fn period_name(period: Period) -> PeriodName {
    match period {
        Period::Day => PeriodName::Day,
        Period::Week => PeriodName::Week,
        Period::Month => PeriodName::Month,
        Period::Cycle => PeriodName::Cycle,
    }
}

async fn budget_view(state: &AppState, budget: &Budget) -> Result<BudgetView, actix_web::Error> {
    let now = state.ledger.store().clock().now();
    let (start, end) = budget.bounds(now);
    let spent = state
        .ledger
        .store()
        .budget_spent(budget.id(), start)
        .await
        .map_err(|error| internal(&error))?;
    let held = state
        .ledger
        .store()
        .budget_held(budget.id(), start, now)
        .await
        .map_err(|error| internal(&error))?;
    let record = budget.record();
    Ok(BudgetView {
        id: record.id.to_string(),
        name: record.name,
        scope: record.scope_kind,
        scope_value: record.scope_value,
        period: period_name(budget.period()),
        time_zone: record.time_zone,
        limit_micro_cr: record.limit_micro_cr,
        thresholds: record.thresholds,
        hard: record.hard,
        created_at: rfc3339(record.created_at),
        period_start: rfc3339(start),
        period_end: rfc3339(end),
        spent_micro_cr: spent,
        held_micro_cr: held,
    })
}

fn budget_error(error: BudgetError) -> actix_web::Error {
    match error {
        BudgetError::Stored(_) => internal(&error),
        other => {
            let field = other.to_string();
            let (name, why) = field.split_once(": ").unwrap_or(("body", field.as_str()));
            invalid(name, why)
        }
    }
}

fn audit(
    action: &str,
    at: credex_ledger::Timestamp,
    access: &OrgAccess<Owner>,
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

/// Sets a budget (owners; as the org's plan allows): a limit on what the org, a user, an API key
/// or a task may spend per day, week or month (in the budget's time zone) or billing cycle, counted at the model's
/// price whatever pays for the call. Thresholds alert once per period; a hard budget refuses a
/// charge that would pass its limit (402 `budget-exceeded`), atomically with the charge.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/budgets",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "Optional: 1 to 255 visible ASCII characters, new for each new budget; a retry with the same key answers the first answer instead of setting a second budget"),
    ),
    request_body = BudgetBody,
    responses(
        (status = 201, description = "The budget (or, for a retry with the same `Idempotency-Key`, the first answer, with `Idempotent-Replayed: true`); `Location` names it", body = BudgetView,
            headers(("Location" = String, description = "The budget: `/v1/orgs/{org_id}/budgets/{budget_id}`"))),
        (status = 400, description = "A malformed body or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org; or the org's plan does not have this budget (Free: none; Teams: monthly or per-cycle, two thresholds at most, no per-user budgets; the detail says which)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The org has 100 budgets, or the first request with this Idempotency-Key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid (an unknown time zone, thresholds not ascending, a malformed id), or the Idempotency-Key was used for another request", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_budget(
    access: OrgAccess<Owner>,
    req: HttpRequest,
    key: OptionalIdempotencyKey,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let new = json_body::<BudgetBody>(&req, &body)?.parse()?;
    let fingerprint = idempotency::fingerprint(&req, &body);
    let store = state.ledger.store().clone();
    let scope = access.org.to_string();
    idempotency::maybe_once(store.as_ref(), &scope, &key, fingerprint, || async move {
        set_budget(&access, new, &state).await
    })
    .await
}

async fn set_budget(
    access: &OrgAccess<Owner>,
    new: NewBudget,
    state: &AppState,
) -> Result<Answer, actix_web::Error> {
    let store = state.ledger.store();
    let now = store.clock().now();
    let plan = store
        .org(access.org)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, "no such org"))?
        .plan;
    crate::budgets::plan_allows(plan, &new)
        .map_err(|why| ApiError::new(ProblemKind::Forbidden, why))?;
    let budget = Budget::new(Uuid::now_v7(), access.org, new, now).map_err(budget_error)?;
    let existing = store
        .budgets_of(access.org)
        .await
        .map_err(|error| internal(&error))?;
    if existing.len() >= BUDGETS_MAX {
        return Err(ApiError::new(
            ProblemKind::Conflict,
            format!("the org has {BUDGETS_MAX} budgets; delete one first"),
        )
        .into());
    }
    let record = budget.record();
    let entry = audit(
        "budgets.create",
        now,
        access,
        serde_json::json!({"budget_id": record.id, "limit_micro_cr": record.limit_micro_cr,
            "hard": record.hard}),
    )?;
    store
        .put_budget(&record, &entry)
        .await
        .map_err(|error| internal(&error))?;
    let view = budget_view(state, &budget).await?;
    Ok(Answer {
        status: StatusCode::CREATED,
        location: Some(format!("/v1/orgs/{}/budgets/{}", access.org, record.id)),
        body: serde_json::to_value(view).map_err(|error| ApiError::internal(&error))?,
    })
}

async fn org_budgets(
    state: &AppState,
    org: credex_ledger::OrgId,
) -> Result<Vec<Budget>, actix_web::Error> {
    state
        .ledger
        .store()
        .budgets_of(org)
        .await
        .map_err(|error| internal(&error))?
        .iter()
        .map(|record| Budget::parse(record).map_err(|error| internal(&error)))
        .collect()
}

/// The org's budgets with what each spent in its current period (members; API keys need
/// `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/budgets",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    responses(
        (status = 200, description = "Budgets, oldest first", body = Vec<BudgetView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn budgets(
    access: OrgAccess<Read>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let mut views = Vec::new();
    for budget in org_budgets(&state, access.org).await? {
        views.push(budget_view(&state, &budget).await?);
    }
    Ok(HttpResponse::Ok().json(views))
}

async fn own_budget(
    state: &AppState,
    org: credex_ledger::OrgId,
    raw: &str,
) -> Result<Budget, actix_web::Error> {
    let not_found = || -> actix_web::Error {
        ApiError::new(ProblemKind::NotFound, "no such budget in this org").into()
    };
    let id = input::uuid(raw).ok_or_else(not_found)?;
    org_budgets(state, org)
        .await?
        .into_iter()
        .find(|budget| budget.id() == id)
        .ok_or_else(not_found)
}

/// One budget with what it spent in its current period (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/budgets/{budget_id}",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("budget_id" = String, Path, format = Uuid, description = "The budget"),
    ),
    responses(
        (status = 200, description = "The budget", body = BudgetView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no such budget in it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_budget(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let budget = own_budget(&state, access.org, &path.1).await?;
    Ok(HttpResponse::Ok().json(budget_view(&state, &budget).await?))
}

/// Deletes a budget (owners): it no longer counts or refuses; its alerts stay.
#[utoipa::path(
    delete,
    path = "/v1/orgs/{org_id}/budgets/{budget_id}",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("budget_id" = String, Path, format = Uuid, description = "The budget"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no such budget in it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_budget(
    access: OrgAccess<Owner>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let budget = own_budget(&state, access.org, &path.1).await?;
    let now = state.ledger.store().clock().now();
    let entry = audit(
        "budgets.delete",
        now,
        &access,
        serde_json::json!({"budget_id": budget.id()}),
    )?;
    let deleted = state
        .ledger
        .store()
        .delete_budget(access.org, budget.id(), &entry)
        .await
        .map_err(|error| internal(&error))?;
    if !deleted {
        return Err(ApiError::new(ProblemKind::NotFound, "no such budget in this org").into());
    }
    Ok(HttpResponse::NoContent().finish())
}

/// The thresholds the org's budgets crossed, newest first (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/budget-alerts",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    responses(
        (status = 200, description = "Alerts, newest first (at most 1,000)", body = Vec<BudgetAlertView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn budget_alerts(
    access: OrgAccess<Read>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let alerts = state
        .ledger
        .store()
        .budget_alerts(access.org, credex_store::USAGE_PAGE_MAX)
        .await
        .map_err(|error| internal(&error))?;
    let views: Vec<BudgetAlertView> = alerts.iter().map(BudgetAlertView::from).collect();
    Ok(HttpResponse::Ok().json(views))
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/v1/orgs/{org_id}/budgets")
                // The create reads its body raw (for the Idempotency-Key's fingerprint).
                .app_data(web::PayloadConfig::new(16 << 10))
                .route(web::get().to(budgets))
                .route(web::post().to(create_budget)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/budgets/{budget_id}")
                .route(web::get().to(get_budget))
                .route(web::delete().to(delete_budget)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/budget-alerts").route(web::get().to(budget_alerts)),
        );
}
