//! Model classes, plans' allotments and billing cycles over HTTP: anyone signed in reads them;
//! admins set a class's face value and a plan's allotment per class, and open or close a cycle
//! on demand (the same idempotent jobs `credex serve` runs on schedule, see
//! [`crate::cycles`]).

use actix_web::{web, HttpResponse};
use credex_ledger::Timestamp;
use credex_store::{
    Allotment, AuditAction, AuditEntry, ClassRecord, CycleError, CycleRecord, Plan, Store,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::access::{Admin, Caller};
use crate::cycles::{close_cycle, open_cycle, CloseReport, CycleId, CycleJobError, OpenReport};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::routes::models::require_read;
use crate::startup::AppState;
use crate::views::{rfc3339, PlanName};

/// The largest face value a class may have, in µCR per 1M tokens (the market's largest ask).
const FACE_VALUE_MAX: u64 = credex_matching::ASK_MAX;
/// The longest class description, in characters.
const DESCRIPTION_MAX_CHARS: usize = 200;
/// The most cycles `GET /v1/cycles` lists.
const CYCLES_MAX: u32 = 120;

fn cycle_error(error: CycleError) -> actix_web::Error {
    match error {
        CycleError::NoSuchClass(class) => ApiError::new(
            ProblemKind::NotFound,
            format!("no model class is named {class:?}"),
        )
        .into(),
        other => internal(&other),
    }
}

fn job_error(error: CycleJobError) -> actix_web::Error {
    match error {
        refused @ (CycleJobError::Ended(_) | CycleJobError::NotEnded(_)) => {
            ApiError::new(ProblemKind::Conflict, refused.to_string()).into()
        }
        other => internal(&other),
    }
}

fn plan_name(plan: Plan) -> PlanName {
    match plan {
        Plan::Free => PlanName::Free,
        Plan::Teams => PlanName::Teams,
        Plan::Enterprise => PlanName::Enterprise,
    }
}

/// A plan's allotment of a class per cycle.
#[derive(Debug, Serialize, ToSchema)]
pub struct AllotmentView {
    pub plan: PlanName,
    pub tokens_per_cycle: u64,
}

/// A model class: what 1M of its tokens are worth, and what each plan gets per cycle.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClassView {
    #[schema(pattern = r"^[a-z][a-z0-9]{0,7}$")]
    pub class: String,
    /// µCR per 1M tokens, fixed into each cycle as it opens.
    pub face_value_per_1m_micro_cr: u64,
    pub description: String,
    pub allotments: Vec<AllotmentView>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

async fn class_views(store: &dyn Store) -> Result<Vec<ClassView>, actix_web::Error> {
    let classes = store.classes().await.map_err(cycle_error)?;
    let allotments = store.allotments().await.map_err(cycle_error)?;
    Ok(classes
        .into_iter()
        .map(|record| ClassView {
            allotments: allotments
                .iter()
                .filter(|(class, _)| *class == record.class)
                .map(|(_, allotment)| AllotmentView {
                    plan: plan_name(allotment.plan),
                    tokens_per_cycle: allotment.tokens_per_cycle,
                })
                .collect(),
            class: record.class,
            face_value_per_1m_micro_cr: record.face_value_per_1m_micro_cr,
            description: record.description,
            created_at: rfc3339(record.created_at),
            updated_at: rfc3339(record.updated_at),
        })
        .collect())
}

/// Every model class with its allotments (anyone signed in).
#[utoipa::path(
    get,
    path = "/v1/classes",
    tag = "cycles",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Classes by name", body = Vec<ClassView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_classes(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let store = state.ledger.store();
    Ok(HttpResponse::Ok().json(class_views(store.as_ref()).await?))
}

/// A class's face value and description.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassBody {
    /// µCR per 1M tokens (1 to 10^12); cycles opened from now on use it.
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    face_value_per_1m_micro_cr: u64,
    /// Up to 200 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 200, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    description: Option<String>,
}

/// Creates or changes a model class (admins only). A new face value applies to cycles opened
/// afterwards: a cycle keeps the values it opened with.
#[utoipa::path(
    put,
    path = "/v1/admin/classes/{class}",
    tag = "cycles",
    security(("bearer" = [])),
    params(("class" = String, Path, max_length = 8, pattern = r"^[a-z][a-z0-9]{0,7}$", description = "The class: a lowercase letter, then up to 7 lowercase letters or digits")),
    request_body = ClassBody,
    responses(
        (status = 200, description = "The class as it is now", body = ClassView),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_class(
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<ClassBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let class = path.into_inner();
    if !input::is_model_class(&class) {
        return Err(ApiError::new(ProblemKind::NotFound, "no such class name").into());
    }
    let body = body.into_inner();
    if !(1..=FACE_VALUE_MAX).contains(&body.face_value_per_1m_micro_cr) {
        return Err(invalid(
            "face_value_per_1m_micro_cr",
            format!("1 to {FACE_VALUE_MAX}"),
        ));
    }
    let description = body.description.unwrap_or_default();
    if !input::is_plain_text(&description, DESCRIPTION_MAX_CHARS) {
        return Err(invalid(
            "description",
            "at most 200 characters, no control characters",
        ));
    }
    let store = state.ledger.store();
    let now = store.clock().now();
    let record = ClassRecord {
        class: class.clone(),
        face_value_per_1m_micro_cr: body.face_value_per_1m_micro_cr,
        description: description.clone(),
        created_at: now,
        updated_at: now,
    };
    let details = serde_json::json!({
        "face_value_per_1m_micro_cr": body.face_value_per_1m_micro_cr,
        "description": description,
    });
    let audit = admin_audit(&admin, now, "class.put", &class, details)?;
    store
        .put_class(&record, &audit)
        .await
        .map_err(cycle_error)?;
    let view = class_views(store.as_ref())
        .await?
        .into_iter()
        .find(|view| view.class == class)
        .ok_or_else(|| internal(&"a class put is not there"))?;
    Ok(HttpResponse::Ok().json(view))
}

fn admin_audit(
    admin: &Admin,
    now: Timestamp,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> Result<AuditEntry, actix_web::Error> {
    let action = AuditAction::parse(action).map_err(|error| internal(&error))?;
    Ok(AuditEntry::new(now, action, target, details)
        .map_err(|error| internal(&error))?
        .by(admin.0.id))
}

/// How many tokens of a class a plan's orgs get each cycle.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllotmentBody {
    /// Tokens per cycle (0 to 10^12; 0 gives none).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    tokens_per_cycle: u64,
}

/// Sets a plan's allotment of a class per cycle (admins only); cycles opened afterwards issue it.
#[utoipa::path(
    put,
    path = "/v1/admin/plans/{plan}/allotments/{class}",
    tag = "cycles",
    security(("bearer" = [])),
    params(
        ("plan" = PlanName, Path, description = "The plan"),
        ("class" = String, Path, max_length = 8, pattern = r"^[a-z][a-z0-9]{0,7}$", description = "The model class"),
    ),
    request_body = AllotmentBody,
    responses(
        (status = 200, description = "The class with its allotments as they are now", body = ClassView),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan or class", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_allotment(
    admin: Admin,
    path: web::Path<(String, String)>,
    body: web::Json<AllotmentBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let (plan, class) = path.into_inner();
    let not_found = |what: &str| -> actix_web::Error {
        ApiError::new(ProblemKind::NotFound, format!("no such {what}")).into()
    };
    let plan = Plan::parse(&plan).map_err(|_| not_found("plan"))?;
    if !input::is_model_class(&class) {
        return Err(not_found("class"));
    }
    let tokens = body.into_inner().tokens_per_cycle;
    if tokens > credex_matching::QUANTITY_MAX {
        return Err(invalid(
            "tokens_per_cycle",
            format!("0 to {}", credex_matching::QUANTITY_MAX),
        ));
    }
    let store = state.ledger.store();
    let now = store.clock().now();
    let details = serde_json::json!({ "plan": plan.as_str(), "tokens_per_cycle": tokens });
    let audit = admin_audit(&admin, now, "allotment.put", &class, details)?;
    let allotment = Allotment {
        plan,
        tokens_per_cycle: tokens,
    };
    store
        .put_allotment(&class, allotment, now, &audit)
        .await
        .map_err(cycle_error)?;
    let view = class_views(store.as_ref())
        .await?
        .into_iter()
        .find(|view| view.class == class)
        .ok_or_else(|| not_found("class"))?;
    Ok(HttpResponse::Ok().json(view))
}

/// A billing cycle (a calendar month in UTC) and how far its jobs got.
#[derive(Debug, Serialize, ToSchema)]
pub struct CycleView {
    #[schema(
        pattern = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
    )]
    pub cycle: String,
    #[schema(format = DateTime)]
    pub starts_at: String,
    #[schema(format = DateTime)]
    pub ends_at: String,
    /// When every org present had its allotments (the open job finished once).
    #[schema(format = DateTime)]
    pub opened_at: Option<String>,
    /// When its tokens expired (the close job finished).
    #[schema(format = DateTime)]
    pub closed_at: Option<String>,
}

impl From<&CycleRecord> for CycleView {
    fn from(record: &CycleRecord) -> Self {
        Self {
            cycle: record.cycle.clone(),
            starts_at: rfc3339(record.starts_at),
            ends_at: rfc3339(record.ends_at),
            opened_at: record.opened_at.map(rfc3339),
            closed_at: record.closed_at.map(rfc3339),
        }
    }
}

/// The cycles, most recent first (anyone signed in).
#[utoipa::path(
    get,
    path = "/v1/cycles",
    tag = "cycles",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Up to 120 cycles, the most recent first", body = Vec<CycleView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_cycles(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    require_read(&caller)?;
    let records = state
        .ledger
        .store()
        .cycles(CYCLES_MAX)
        .await
        .map_err(cycle_error)?;
    let views: Vec<CycleView> = records.iter().map(CycleView::from).collect();
    Ok(HttpResponse::Ok().json(views))
}

fn cycle_of_path(raw: &str) -> Result<CycleId, actix_web::Error> {
    CycleId::parse(raw).map_err(|_| ApiError::new(ProblemKind::NotFound, "no such cycle").into())
}

/// What opening a cycle did.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenView {
    pub cycle: CycleView,
    pub report: OpenReport,
}

/// Opens a cycle now (admins only): issues its allotments to every org that has not had them
/// and marks it opened. Idempotent: a second run issues nothing twice. `credex serve` opens the
/// current cycle by itself every minute; this is for not waiting. A cycle that has not started
/// or has ended is refused.
#[utoipa::path(
    post,
    path = "/v1/admin/cycles/{cycle}/open",
    tag = "cycles",
    security(("bearer" = [])),
    params(("cycle" = String, Path, pattern = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The cycle, `YYYY-MM`")),
    responses(
        (status = 200, description = "Opened (or already open)", body = OpenView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not a cycle", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The cycle has not started yet, or has ended", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn open_cycle_now(
    _admin: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let cycle = cycle_of_path(&path)?;
    let ledger = &state.ledger;
    let now = ledger.store().clock().now();
    if now < cycle.starts_at() {
        let detail = format!(
            "the cycle {cycle} starts at {}: its allotments are issued from then on",
            rfc3339(cycle.starts_at())
        );
        return Err(ApiError::new(ProblemKind::Conflict, detail).into());
    }
    let report = open_cycle(ledger, cycle, now).await.map_err(job_error)?;
    let record = cycle_record(ledger.store().as_ref(), cycle).await?;
    Ok(HttpResponse::Ok().json(OpenView {
        cycle: CycleView::from(&record),
        report,
    }))
}

async fn cycle_record(store: &dyn Store, cycle: CycleId) -> Result<CycleRecord, actix_web::Error> {
    store
        .cycle(&cycle.to_string())
        .await
        .map_err(cycle_error)?
        .ok_or_else(|| internal(&"a cycle the job ran on is not there"))
}

/// What closing a cycle did.
#[derive(Debug, Serialize, ToSchema)]
pub struct CloseView {
    pub cycle: CycleView,
    pub report: CloseReport,
}

/// Closes an ended cycle now (admins only): cancels its open listings and expires every
/// remaining balance of its token assets, then marks it closed. Idempotent, and resumes where
/// an interrupted run stopped. `credex serve` closes ended cycles by itself every minute.
#[utoipa::path(
    post,
    path = "/v1/admin/cycles/{cycle}/close",
    tag = "cycles",
    security(("bearer" = [])),
    params(("cycle" = String, Path, pattern = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The cycle, `YYYY-MM`")),
    responses(
        (status = 200, description = "Closed (or already closed)", body = CloseView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not a cycle", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The cycle has not ended yet", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn close_cycle_now(
    _admin: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let cycle = cycle_of_path(&path)?;
    let ledger = &state.ledger;
    let now = ledger.store().clock().now();
    let report = close_cycle(ledger, cycle, now).await.map_err(job_error)?;
    let record = cycle_record(ledger.store().as_ref(), cycle).await?;
    Ok(HttpResponse::Ok().json(CloseView {
        cycle: CycleView::from(&record),
        report,
    }))
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/v1/classes").route(web::get().to(list_classes)))
        .service(web::resource("/v1/cycles").route(web::get().to(list_cycles)))
        .service(web::resource("/v1/admin/classes/{class}").route(web::put().to(put_class)))
        .service(
            web::resource("/v1/admin/plans/{plan}/allotments/{class}")
                .route(web::put().to(put_allotment)),
        )
        .service(
            web::resource("/v1/admin/cycles/{cycle}/open").route(web::post().to(open_cycle_now)),
        )
        .service(
            web::resource("/v1/admin/cycles/{cycle}/close").route(web::post().to(close_cycle_now)),
        );
}
