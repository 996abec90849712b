//! `GET /healthz` (the process is up) and `GET /readyz` (the database answers).

use actix_web::{web, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::{ApiError, Problem, ProblemKind};
use crate::startup::AppState;

/// The process is up.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// The database answers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "database": "postgres"}))]
pub struct Readiness {
    /// Always `ready`.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub database: String,
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process is up", body = Health),
        (status = 405, description = "Only GET is allowed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".to_owned(),
    })
}

/// Readiness: answers 200 when the database answers, 503 otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The database answers", body = Readiness),
        (status = 405, description = "Only GET is allowed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database does not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.ledger.store();
    match store.ping().await {
        Ok(()) => HttpResponse::Ok().json(Readiness {
            status: "ready".to_owned(),
            database: store.backend().to_string(),
        }),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            ApiError::new(ProblemKind::Unavailable, "the database does not answer").error_response()
        }
    }
}

/// The probes. Routes are registered per resource with their methods, so that a method a path
/// does not take answers 405 with `Allow` (attribute macros would answer 404).
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/healthz").route(web::get().to(healthz)))
        .service(web::resource("/readyz").route(web::get().to(readyz)));
}
