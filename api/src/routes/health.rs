//! `GET /healthz` (the process is up) and `GET /readyz` (the database answers).

use actix_web::{web, HttpResponse, ResponseError};
use serde_json::json;

use crate::problem::{ApiError, ProblemKind};
use crate::startup::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.ledger.store();
    match store.ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({
            "status": "ready",
            "database": store.backend(),
        })),
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
