//! Fraud review over HTTP: admins list flags, run a scan now, and clear a flag with a note; an
//! org's members see its open flags (the reason its trades are refused).

use actix_web::{web, HttpResponse};
use credex_ledger::OrgId;
use credex_store::{AuditAction, AuditEntry, FlagKind, FlagRecord, Store};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::access::{Admin, OrgAccess, Read};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::review::{scan, ReviewPolicy, ScanReport};
use crate::startup::AppState;
use crate::views::rfc3339;

/// The longest note an admin leaves when clearing a flag, in characters.
const NOTE_MAX_CHARS: usize = 500;

/// Why an org was flagged.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlagKindName {
    /// Sold most of its allotment cycle after cycle and used little of it.
    SellsAllotment,
    /// Traded with the same org again and again.
    RepeatedCounterparty,
    /// One of several new orgs whose owners share an e-mail domain.
    SharedEmailDomain,
    /// One of several new orgs signing in from one address block.
    SharedAddressBlock,
}

impl From<FlagKind> for FlagKindName {
    fn from(kind: FlagKind) -> Self {
        match kind {
            FlagKind::SellsAllotment => Self::SellsAllotment,
            FlagKind::RepeatedCounterparty => Self::RepeatedCounterparty,
            FlagKind::SharedEmailDomain => Self::SharedEmailDomain,
            FlagKind::SharedAddressBlock => Self::SharedAddressBlock,
        }
    }
}

/// A review flag.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlagView {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = Uuid)]
    pub org_id: String,
    pub kind: FlagKindName,
    /// What it is about: a cycle, the other org and month, a domain, an address block.
    pub subject: String,
    /// The explanation, also given with every refused trade.
    pub reason: String,
    /// The figures behind it.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    #[schema(format = DateTime)]
    pub raised_at: String,
    /// Open while none: the org cannot trade.
    #[schema(format = DateTime)]
    pub cleared_at: Option<String>,
    #[schema(format = Uuid)]
    pub cleared_by: Option<String>,
    pub note: Option<String>,
}

impl From<&FlagRecord> for FlagView {
    fn from(flag: &FlagRecord) -> Self {
        Self {
            id: flag.id.to_string(),
            org_id: flag.org.to_string(),
            kind: flag.kind.into(),
            subject: flag.subject.clone(),
            reason: flag.reason.clone(),
            details: serde_json::from_str(&flag.details).unwrap_or(serde_json::Value::Null),
            raised_at: rfc3339(flag.raised_at),
            cleared_at: flag.cleared_at.map(rfc3339),
            cleared_by: flag.cleared_by.map(|user| user.to_string()),
            note: flag.note.clone(),
        }
    }
}

/// Which flags.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FlagsQuery {
    /// Only this org's flags.
    #[param(format = Uuid)]
    org_id: Option<String>,
    /// Cleared flags too (default: open ones only).
    all: Option<bool>,
    /// At most this many, newest first (1 to 1,000; default 100).
    #[serde(deserialize_with = "integer::optional_in_query", default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Review flags, newest first (admins only).
#[utoipa::path(
    get,
    path = "/v1/admin/review/flags",
    tag = "review",
    security(("bearer" = [])),
    params(FlagsQuery),
    responses(
        (status = 200, description = "Flags, newest first", body = Vec<FlagView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A filter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn review_flags(
    _admin: Admin,
    query: web::Query<FlagsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let query = query.into_inner();
    let org = query
        .org_id
        .as_deref()
        .map(|raw| {
            input::uuid(raw)
                .and_then(|uuid| OrgId::new(uuid).ok())
                .ok_or_else(|| invalid("org_id", "not a UUID"))
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(invalid("limit", "1 to 1000"));
    }
    let flags = state
        .ledger
        .store()
        .flags(org, !query.all.unwrap_or(false), limit)
        .await
        .map_err(|error| internal(&error))?;
    let views: Vec<FlagView> = flags.iter().map(FlagView::from).collect();
    Ok(HttpResponse::Ok().json(views))
}

/// Looks for every pattern now and raises the flags not raised before (admins only; the
/// server also scans every five minutes).
#[utoipa::path(
    post,
    path = "/v1/admin/review/scan",
    tag = "review",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the scan raised", body = ScanReport),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn review_scan(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let store = state.ledger.store();
    let now = store.clock().now();
    let report = scan(store.as_ref(), &ReviewPolicy::default(), now)
        .await
        .map_err(|error| internal(&error))?;
    Ok(HttpResponse::Ok().json(report))
}

/// An admin's reason for clearing a flag.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearBody {
    /// Why the pattern is fine (1 to 500 characters).
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    note: String,
}

/// Clears a flag (admins only): the org may trade again once none is open. Clearing is final
/// for the flag's subject; clearing a cleared flag answers it as it is.
#[utoipa::path(
    post,
    path = "/v1/admin/review/flags/{flag_id}/clear",
    tag = "review",
    security(("bearer" = [])),
    params(("flag_id" = String, Path, format = Uuid, description = "The flag")),
    request_body = ClearBody,
    responses(
        (status = 200, description = "The flag, cleared", body = FlagView),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such flag", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No note, or not a valid one", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn clear_flag(
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<ClearBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let not_found =
        || -> actix_web::Error { ApiError::new(ProblemKind::NotFound, "no such flag").into() };
    let id = input::uuid(&path).ok_or_else(not_found)?;
    let note = input::text("note", &body.note, NOTE_MAX_CHARS)?
        .trim()
        .to_owned();
    let store = state.ledger.store();
    let flag = store
        .flag(id)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(not_found)?;
    let action = AuditAction::parse("review.clear").map_err(|error| internal(&error))?;
    let audit = AuditEntry::new(
        store.clock().now(),
        action,
        flag.org.to_string(),
        serde_json::json!({"flag_id": id.to_string(), "kind": flag.kind.as_str(), "note": note}),
    )
    .map_err(|error| internal(&error))?
    .by(admin.0.id)
    .in_org(flag.org);
    let cleared = store
        .clear_flag(id, admin.0.id, &note, &audit)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(FlagView::from(&cleared)))
}

/// The org's open review flags (members; API keys need `read`): while it has any, its trades
/// are refused.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/review-flags",
    tag = "review",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    responses(
        (status = 200, description = "Open flags, newest first", body = Vec<FlagView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn org_review_flags(
    access: OrgAccess<Read>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let store: &dyn Store = state.ledger.store().as_ref();
    let flags = store
        .flags(Some(access.org), true, 100)
        .await
        .map_err(|error| internal(&error))?;
    let views: Vec<FlagView> = flags.iter().map(FlagView::from).collect();
    Ok(HttpResponse::Ok().json(views))
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/v1/admin/review/flags").route(web::get().to(review_flags)))
        .service(web::resource("/v1/admin/review/scan").route(web::post().to(review_scan)))
        .service(
            web::resource("/v1/admin/review/flags/{flag_id}/clear")
                .route(web::post().to(clear_flag)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/review-flags").route(web::get().to(org_review_flags)),
        );
}
