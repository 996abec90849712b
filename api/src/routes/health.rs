//! `GET /healthz` (the process is up) and `GET /readyz` (the database answers).

use actix_web::{get, web, HttpResponse};
use serde_json::json;

use crate::startup::AppState;

#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.ledger.store();
    match store.ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({
            "status": "ready",
            "database": store.backend(),
        })),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            HttpResponse::ServiceUnavailable()
                .content_type("application/problem+json")
                .json(json!({
                    "type": "https://credex.dev/problems/database-unavailable",
                    "title": "The database is unavailable",
                    "status": 503,
                }))
        }
    }
}
