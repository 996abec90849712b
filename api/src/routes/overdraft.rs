//! Overdraft allowances over HTTP: admins set how far past its wallet an org may spend and
//! record the org's repayments (made by invoice, outside Credex); members read where their
//! org stands. While an allowance has room, a charge the wallet cannot pay is paid by an
//! advance (`issuance → wallet`, code `overdraft`, linked with the spend) instead of being
//! refused with 402 (see [`crate::usage`]).

use actix_web::{web, HttpResponse};
use credex_ledger::OrgId;
use credex_store::{AuditAction, AuditEntry, Overdraft, RepaymentOutcome, Store};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::access::{Admin, OrgAccess, Read};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::routes::market::known_org;
use crate::startup::AppState;

/// The largest allowance: 1,000,000 CR.
const LIMIT_MAX: u64 = 1_000_000_000_000;
/// The longest repayment reference.
const REFERENCE_MAX: usize = 200;

fn problem(kind: ProblemKind, detail: impl Into<String>) -> actix_web::Error {
    ApiError::new(kind, detail).into()
}

/// An org's overdraft allowance.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverdraftView {
    /// How far past its wallet the org may spend, µCR (0: no overdraft).
    pub limit_micro_cr: u64,
    /// Advanced and not yet repaid, µCR.
    pub used_micro_cr: u64,
    /// What may still be advanced, µCR.
    pub available_micro_cr: u64,
}

impl From<Overdraft> for OverdraftView {
    fn from(overdraft: Overdraft) -> Self {
        Self {
            limit_micro_cr: overdraft.limit_micro_cr,
            used_micro_cr: overdraft.used_micro_cr,
            available_micro_cr: overdraft.headroom(),
        }
    }
}

fn audit(
    admin: &Admin,
    store: &dyn Store,
    action: &str,
    org: OrgId,
    details: serde_json::Value,
) -> Result<AuditEntry, actix_web::Error> {
    let action = AuditAction::parse(action).map_err(|error| internal(&error))?;
    Ok(
        AuditEntry::new(store.clock().now(), action, org.to_string(), details)
            .map_err(|error| internal(&error))?
            .by(admin.0.id)
            .in_org(org),
    )
}

/// The org's overdraft allowance and what of it is outstanding (members; API keys need
/// `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/overdraft",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    responses(
        (status = 200, description = "The allowance", body = OverdraftView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_overdraft(
    access: OrgAccess<Read>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let overdraft = state
        .ledger
        .store()
        .overdraft(access.org)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| problem(ProblemKind::NotFound, "no such org"))?;
    Ok(HttpResponse::Ok().json(OverdraftView::from(overdraft)))
}

/// A new overdraft allowance.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverdraftBody {
    /// How far past its wallet the org may spend, µCR (0 to 10^12; 0 ends the allowance).
    /// Lowering it below what is outstanding advances nothing more until repayments bring
    /// the outstanding amount under it.
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    limit_micro_cr: u64,
}

/// Sets an org's overdraft allowance (admins; audited).
#[utoipa::path(
    put,
    path = "/v1/admin/orgs/{org_id}/overdraft",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    request_body = OverdraftBody,
    responses(
        (status = 200, description = "The allowance now", body = OverdraftView),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The limit is out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn set_overdraft(
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<OverdraftBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let store = state.ledger.store();
    let org = known_org(store.as_ref(), &path).await?;
    let limit = body.limit_micro_cr;
    if limit > LIMIT_MAX {
        return Err(invalid("limit_micro_cr", "0 to 10^12"));
    }
    let entry = audit(
        &admin,
        store.as_ref(),
        "org.overdraft",
        org,
        serde_json::json!({ "limit_micro_cr": limit }),
    )?;
    let overdraft = store
        .set_overdraft_limit(org, limit, &entry)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| problem(ProblemKind::NotFound, "no such org"))?;
    Ok(HttpResponse::Ok().json(OverdraftView::from(overdraft)))
}

/// A repayment of an org's overdraft, made outside Credex.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepaymentBody {
    /// The repayment's id (a UUID, neither nil nor max): it is recorded once; the same id
    /// again answers what it did, with another amount it is refused (409).
    #[schema(format = Uuid)]
    id: String,
    /// µCR repaid: 1 to what is outstanding.
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    amount_micro_cr: u64,
    /// The invoice or payment it was made with (1 to 200 characters).
    #[schema(min_length = 1, max_length = 200)]
    reference: String,
}

/// Records that an org repaid part or all of its overdraft (admins; audited): what is
/// outstanding falls by the amount. No CR move: the advances were spent.
#[utoipa::path(
    post,
    path = "/v1/admin/orgs/{org_id}/overdraft/repayments",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    request_body = RepaymentBody,
    responses(
        (status = 201, description = "Recorded: the allowance now", body = OverdraftView),
        (status = 200, description = "A replay: the allowance now", body = OverdraftView),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "More than is outstanding, or the id was recorded with another amount", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid (the detail names it)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn repay_overdraft(
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<RepaymentBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let store = state.ledger.store();
    let org = known_org(store.as_ref(), &path).await?;
    let body = body.into_inner();
    let id = input::uuid(&body.id)
        .filter(|id| !id.is_nil() && !id.is_max())
        .ok_or_else(|| invalid("id", "a UUID, neither nil nor max"))?;
    if body.amount_micro_cr == 0 || body.amount_micro_cr > LIMIT_MAX {
        return Err(invalid("amount_micro_cr", "1 to 10^12"));
    }
    let reference = body.reference.trim();
    if reference.is_empty() || reference.chars().count() > REFERENCE_MAX {
        return Err(invalid("reference", "1 to 200 characters"));
    }
    let entry = audit(
        &admin,
        store.as_ref(),
        "org.overdraft_repayment",
        org,
        serde_json::json!({ "repayment_id": id, "amount_micro_cr": body.amount_micro_cr,
            "reference": reference }),
    )?;
    let outcome = store
        .repay_overdraft(org, id, body.amount_micro_cr, reference, &entry)
        .await
        .map_err(|error| internal(&error))?;
    match outcome {
        RepaymentOutcome::NoOrg => Err(problem(ProblemKind::NotFound, "no such org")),
        RepaymentOutcome::Repaid(now) => Ok(HttpResponse::Created().json(OverdraftView::from(now))),
        RepaymentOutcome::Replayed(now) => Ok(HttpResponse::Ok().json(OverdraftView::from(now))),
        RepaymentOutcome::Conflict => Err(problem(
            ProblemKind::Conflict,
            format!("repayment {id} was recorded with another amount"),
        )),
        RepaymentOutcome::TooMuch(now) => Err(problem(
            ProblemKind::Conflict,
            format!(
                "the org owes {} µCR on its overdraft, less than {} µCR",
                now.used_micro_cr, body.amount_micro_cr
            ),
        )),
    }
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/v1/orgs/{org_id}/overdraft").route(web::get().to(get_overdraft)))
        .service(
            web::resource("/v1/admin/orgs/{org_id}/overdraft").route(web::put().to(set_overdraft)),
        )
        .service(
            web::resource("/v1/admin/orgs/{org_id}/overdraft/repayments")
                .route(web::post().to(repay_overdraft)),
        );
}
