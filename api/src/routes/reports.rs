//! Scheduled usage reports over HTTP: an org's owners subscribe addresses to a daily, weekly or
//! monthly report e-mail (a summary and the period's calls as CSV; see [`crate::delivery`]);
//! members read the subscriptions.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use credex_ledger::OrgId;
use credex_store::{ReportFrequency, ReportSubscription};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::access::{OrgAccess, Owner, Read};
use crate::budgets::{period_bounds, Period};
use crate::delivery::RECIPIENTS_MAX;
use crate::input::invalid;
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::routes::webhooks::audit;
use crate::startup::AppState;
use crate::views::rfc3339;

/// How often a report is sent.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportFrequencyName {
    /// After each day, covering it.
    Daily,
    /// After each ISO week (Monday to Sunday), covering it.
    Weekly,
    /// After each month, covering it.
    Monthly,
}

impl From<ReportFrequency> for ReportFrequencyName {
    fn from(frequency: ReportFrequency) -> Self {
        match frequency {
            ReportFrequency::Daily => Self::Daily,
            ReportFrequency::Weekly => Self::Weekly,
            ReportFrequency::Monthly => Self::Monthly,
        }
    }
}

/// Who receives a report.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    /// 1 to 10 addresses (plain ASCII `local@domain`); repeats count once.
    #[schema(min_items = 1, max_items = 10, value_type = Vec<Recipient>)]
    recipients: Vec<String>,
    /// An IANA time zone, where days, weeks and months start (default `UTC`).
    #[schema(min_length = 1, max_length = 64)]
    time_zone: Option<String>,
}

/// An e-mail address that can take mail: plain ASCII `local@domain`.
#[derive(Debug)]
pub struct Recipient;

impl utoipa::PartialSchema for Recipient {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(254))
            .pattern(Some(r"^[!-?A-~]+@[!-?A-~]+$"))
            .description(Some(
                "An e-mail address that can take mail: plain ASCII `local@domain`.",
            ))
            .into()
    }
}

impl ToSchema for Recipient {}

/// A report subscription.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportView {
    pub frequency: ReportFrequencyName,
    pub recipients: Vec<String>,
    pub time_zone: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// When the next report is due: the end of the period it covers.
    #[schema(format = DateTime)]
    pub next_report_at: String,
}

impl From<&ReportSubscription> for ReportView {
    fn from(report: &ReportSubscription) -> Self {
        Self {
            frequency: report.frequency.into(),
            recipients: report.recipients.clone(),
            time_zone: report.time_zone.clone(),
            created_at: rfc3339(report.created_at),
            updated_at: rfc3339(report.updated_at),
            next_report_at: rfc3339(report.next_due_at),
        }
    }
}

fn period_of(frequency: ReportFrequency) -> Period {
    match frequency {
        ReportFrequency::Daily => Period::Day,
        ReportFrequency::Weekly => Period::Week,
        ReportFrequency::Monthly => Period::Month,
    }
}

fn not_found() -> actix_web::Error {
    ApiError::new(
        ProblemKind::NotFound,
        "no report subscription of this frequency",
    )
    .into()
}

async fn stored(
    state: &AppState,
    org: OrgId,
    frequency: ReportFrequency,
) -> Result<Option<ReportSubscription>, actix_web::Error> {
    state
        .ledger
        .store()
        .report(org, frequency)
        .await
        .map_err(|error| internal(&error))
}

/// Subscribes addresses to the org's daily, weekly or monthly usage report (owners), or
/// replaces the addresses and time zone of the subscription. The first report covers the
/// period in which the subscription was made, and is sent once that period ends.
#[utoipa::path(
    put,
    path = "/v1/orgs/{org_id}/reports/{frequency}",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("frequency" = ReportFrequencyName, Path, description = "`daily`, `weekly` or `monthly`"),
    ),
    request_body = ReportBody,
    responses(
        (status = 200, description = "The subscription, replaced", body = ReportView),
        (status = 201, description = "The subscription, new; `Location` names it", body = ReportView,
            headers(("Location" = String, description = "The subscription: `/v1/orgs/{org_id}/reports/{frequency}`"))),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown frequency, no or more than 10 recipients, an address that cannot take mail, an unknown time zone", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_report(
    access: OrgAccess<Owner>,
    path: web::Path<(String, String)>,
    body: web::Json<ReportBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let frequency = ReportFrequency::parse(&path.1)
        .ok_or_else(|| invalid("frequency", "daily, weekly or monthly"))?;
    let body = body.into_inner();
    if body.recipients.is_empty() || body.recipients.len() > RECIPIENTS_MAX {
        return Err(invalid("recipients", "1 to 10 addresses"));
    }
    let mut recipients: Vec<String> = Vec::new();
    for (index, address) in body.recipients.into_iter().enumerate() {
        if !crate::notify::is_deliverable_address(&address) {
            return Err(invalid(
                &format!("recipients[{index}]"),
                "a plain ASCII address local@domain",
            ));
        }
        if !recipients.contains(&address) {
            recipients.push(address);
        }
    }
    let time_zone = body.time_zone.unwrap_or_else(|| "UTC".to_owned());
    let zone = crate::budgets::zone(&time_zone).map_err(|error| {
        let text = error.to_string();
        let why = text
            .split_once(": ")
            .map_or(text.as_str(), |(_, why)| why)
            .to_owned();
        invalid("time_zone", why)
    })?;
    let store = state.ledger.store();
    let now = store.clock().now();
    let existed = stored(&state, access.org, frequency).await?.is_some();
    let (_, next_due_at) = period_bounds(period_of(frequency), &zone, now);
    let subscription = ReportSubscription {
        org: access.org,
        frequency,
        recipients,
        time_zone,
        created_at: now,
        updated_at: now,
        next_due_at,
    };
    let entry = audit(
        "reports.put",
        now,
        &access,
        serde_json::json!({"frequency": frequency.as_str(),
            "recipients": subscription.recipients.len()}),
    )?;
    let saved = store
        .put_report(&subscription, &entry)
        .await
        .map_err(|error| internal(&error))?;
    let view = ReportView::from(&saved);
    if existed {
        return Ok(HttpResponse::Ok().json(view));
    }
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/orgs/{}/reports/{}", access.org, frequency.as_str()),
        ))
        .json(view))
}

/// The org's subscription to a report (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/reports/{frequency}",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("frequency" = ReportFrequencyName, Path, description = "`daily`, `weekly` or `monthly`"),
    ),
    responses(
        (status = 200, description = "The subscription", body = ReportView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, no such frequency, or no subscription to it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_report(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let frequency = ReportFrequency::parse(&path.1).ok_or_else(not_found)?;
    let report = stored(&state, access.org, frequency)
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(ReportView::from(&report)))
}

/// Ends the org's subscription to a report (owners): no more reports of it are sent.
#[utoipa::path(
    delete,
    path = "/v1/orgs/{org_id}/reports/{frequency}",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("frequency" = ReportFrequencyName, Path, description = "`daily`, `weekly` or `monthly`"),
    ),
    responses(
        (status = 204, description = "Ended"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, no such frequency, or no subscription to it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_report(
    access: OrgAccess<Owner>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let frequency = ReportFrequency::parse(&path.1).ok_or_else(not_found)?;
    let store = state.ledger.store();
    let entry = audit(
        "reports.delete",
        store.clock().now(),
        &access,
        serde_json::json!({"frequency": frequency.as_str()}),
    )?;
    let deleted = store
        .delete_report(access.org, frequency, &entry)
        .await
        .map_err(|error| internal(&error))?;
    if !deleted {
        return Err(not_found());
    }
    Ok(HttpResponse::NoContent().finish())
}

pub fn configure(config: &mut web::ServiceConfig) {
    config.service(
        web::resource("/v1/orgs/{org_id}/reports/{frequency}")
            .app_data(
                web::JsonConfig::default()
                    .limit(16 << 10)
                    .error_handler(crate::problem::json_error),
            )
            .route(web::get().to(get_report))
            .route(web::put().to(put_report))
            .route(web::delete().to(delete_report)),
    );
}
