//! Errors as RFC 9457 problem details (`application/problem+json`), everywhere.
//!
//! Handlers return [`ApiError`]; everything else that fails — an unknown path (404), a method
//! the path does not take (405, with `Allow`), a body too large (413), a body that is not JSON
//! (415), malformed JSON (400), a panic (500) — is turned into the same shape by
//! [`problem_details`], which also stamps every response with its request id. Each kind of
//! error has a stable `type` URI; no response carries a stack trace or SQL.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, ResponseError};
use futures::FutureExt;
use serde::Serialize;
use tracing::Instrument;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where the `type` URIs of Credex's problems live.
pub const PROBLEM_BASE: &str = "https://credex.dev/problems/";

/// The header carrying a request's id, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// The kinds of problem, each with a stable `type` URI (`PROBLEM_BASE` + slug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    BadRequest,
    MalformedJson,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PaymentRequired,
    BudgetExceeded,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unprocessable,
    TooManyRequests,
    Internal,
    Unavailable,
}

impl ProblemKind {
    pub fn slug(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::MalformedJson => "malformed-json",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict => "conflict",
            Self::PaymentRequired => "payment-required",
            Self::BudgetExceeded => "budget-exceeded",
            Self::PayloadTooLarge => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Unprocessable => "unprocessable",
            Self::TooManyRequests => "too-many-requests",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "The request is not valid",
            Self::MalformedJson => "The body is not valid JSON for this operation",
            Self::Unauthorized => "Authentication is required",
            Self::Forbidden => "You may not do this",
            Self::NotFound => "Nothing is here",
            Self::MethodNotAllowed => "This method is not allowed here",
            Self::Conflict => "The request conflicts with the current state",
            Self::PaymentRequired => "The org's balances cannot pay for this",
            Self::BudgetExceeded => "A hard budget does not allow this",
            Self::PayloadTooLarge => "The body is too large",
            Self::UnsupportedMediaType => "The body must be JSON (application/json)",
            Self::Unprocessable => "The request cannot be processed",
            Self::TooManyRequests => "Too many requests",
            Self::Internal => "Something went wrong on our side",
            Self::Unavailable => "The service is unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest | Self::MalformedJson => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PaymentRequired | Self::BudgetExceeded => StatusCode::PAYMENT_REQUIRED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The kind an error status stands for when nothing more is known.
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => Self::Unauthorized,
            StatusCode::FORBIDDEN => Self::Forbidden,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::CONFLICT => Self::Conflict,
            StatusCode::PAYMENT_REQUIRED => Self::PaymentRequired,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => Self::Unprocessable,
            StatusCode::TOO_MANY_REQUESTS => Self::TooManyRequests,
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable,
            status if status.is_server_error() => Self::Internal,
            _ => Self::BadRequest,
        }
    }
}

/// An RFC 9457 problem document: what went wrong, in a stable shape.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "https://credex.dev/problems/not-found",
    "title": "Nothing is here",
    "status": 404,
    "request_id": "01a218c4-adc8-710b-a55d-40678966060d"
}))]
pub struct Problem {
    /// A URI naming the kind of problem; stable, one per kind.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence, when it helps the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request's id, also in the `X-Request-Id` header and on every log line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: Option<String>) -> Self {
        Self {
            type_uri: format!("{PROBLEM_BASE}{}", kind.slug()),
            title: kind.title().to_owned(),
            status: kind.status().as_u16(),
            detail,
            request_id: None,
        }
    }
}

/// An error a handler answers with: a kind and, when it helps the caller, a detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", kind.slug(), detail.as_deref().unwrap_or(kind.title()))]
pub struct ApiError {
    pub kind: ProblemKind,
    pub detail: Option<String>,
}

impl ApiError {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: Some(detail.into()),
        }
    }

    pub fn bare(kind: ProblemKind) -> Self {
        Self { kind, detail: None }
    }

    /// An internal failure: logged whole, answered with no detail. A store whose database is
    /// out of reach for now (`StoreError::is_unavailable`) is not one: that is 503, worth
    /// trying again, and logged as a warning.
    pub fn internal<E: std::fmt::Display + std::any::Any>(error: &E) -> Self {
        if database_unavailable(error) {
            tracing::warn!(%error, "request failed: the database is unavailable");
            return Self::new(
                ProblemKind::Unavailable,
                "the database is unavailable for now; try again shortly",
            );
        }
        tracing::error!(%error, "request failed");
        Self::bare(ProblemKind::Internal)
    }
}

/// [`ApiError::internal`] as the error a handler returns.
pub fn internal<E: std::fmt::Display + std::any::Any>(error: &E) -> actix_web::Error {
    ApiError::internal(error).into()
}

/// Whether `error` is, or wraps, a store's failure to reach its database for now
/// (`StoreError::is_unavailable`).
fn database_unavailable(error: &dyn std::any::Any) -> bool {
    use crate::cycles::CycleJobError;
    use crate::delivery::DeliveryError;
    use crate::market::MarketError;
    use crate::statements::StatementError;
    use crate::usage::UsageError;
    use credex_store::{CycleError, IdentityError, PricingError, StoreError};

    if let Some(error) = error.downcast_ref::<StoreError>() {
        return error.is_unavailable();
    }
    if let Some(error) = error.downcast_ref::<sqlx::Error>() {
        return credex_store::database_unavailable(error);
    }
    macro_rules! wrapping_a_store {
        ($($wrapper:ident),*) => {$(
            if let Some($wrapper::Store(error)) = error.downcast_ref::<$wrapper>() {
                return error.is_unavailable();
            }
        )*};
    }
    wrapping_a_store!(
        UsageError,
        MarketError,
        DeliveryError,
        StatementError,
        CycleJobError,
        IdentityError,
        PricingError,
        CycleError
    );
    false
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = problem_response(
            self.kind.status(),
            &Problem::new(self.kind, self.detail.clone()),
        );
        if self.kind == ProblemKind::Unavailable {
            // Out of reach for now: a client may try again after a second.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn problem_response(status: StatusCode, problem: &Problem) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(PROBLEM_JSON)
        .json(problem)
}

/// The body parsers' errors as problems: malformed JSON, a body too large, a body that is not
/// JSON. The detail says what is wrong, never more than the parser saw.
pub fn json_error(
    error: actix_web::error::JsonPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let api = match error {
        E::Deserialize(inner) => ApiError::new(ProblemKind::MalformedJson, inner.to_string()),
        E::ContentType => ApiError::bare(ProblemKind::UnsupportedMediaType),
        too_large @ (E::OverflowKnownLength { .. } | E::Overflow { .. }) => {
            ApiError::new(ProblemKind::PayloadTooLarge, too_large.to_string())
        }
        other => ApiError::new(ProblemKind::BadRequest, other.to_string()),
    };
    api.into()
}

/// A query string that does not parse (a number that is not one, an unknown parameter) as a
/// problem: 400, saying what is wrong.
#[allow(clippy::needless_pass_by_value)] // the signature actix-web's `QueryConfig` takes
pub fn query_error(
    error: actix_web::error::QueryPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::new(
        ProblemKind::BadRequest,
        format!("the query string is not valid: {error}"),
    )
    .into()
}

/// A request id: the caller's `X-Request-Id` when it is short and plain, else a fresh UUIDv7.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            (1..=64).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// The request's id, for handlers.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware: gives each request an id and a tracing span, catches panics, and answers every
/// error that is not already problem details with problem details (keeping headers such as
/// `Allow` and `Retry-After`).
pub async fn problem_details(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = request_id(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.path()
    );
    let outcome = std::panic::AssertUnwindSafe(next.call(req))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    match outcome {
        Ok(Ok(response)) => {
            let response = into_problem(response.map_into_boxed_body(), &id).await;
            span.in_scope(|| tracing::info!(status = response.status().as_u16(), "answered"));
            Ok(response)
        }
        // Errors and panics below this middleware carry no request any more: they are answered
        // through `Rendered`, the same problem details in the same shape.
        Ok(Err(error)) => {
            let rendered = Rendered::from_response(error.error_response(), &id).await;
            span.in_scope(|| tracing::info!(status = rendered.status.as_u16(), "answered"));
            Err(rendered.into())
        }
        Err(_) => {
            span.in_scope(|| tracing::error!("a handler panicked"));
            let response = ApiError::bare(ProblemKind::Internal).error_response();
            Err(Rendered::from_response(response, &id).await.into())
        }
    }
}

/// A problem already rendered for a request, with the headers to keep.
#[derive(Debug)]
struct Rendered {
    status: StatusCode,
    problem: Problem,
    headers: header::HeaderMap,
}

impl Rendered {
    async fn from_response(response: HttpResponse, id: &str) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let (problem, _) = to_problem(status, &headers, response.into_body(), id).await;
        Self {
            status,
            problem,
            headers,
        }
    }
}

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.problem.title)
    }
}

impl ResponseError for Rendered {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = problem_response(self.status, &self.problem);
        copy_headers(&self.headers, &mut response);
        stamp(
            &mut response,
            self.problem.request_id.as_deref().unwrap_or_default(),
        );
        response
    }
}

/// The problem an error response stands for: its own body when it is already problem
/// details, else the generic problem of its status; stamped with the request id.
async fn to_problem(
    status: StatusCode,
    headers: &header::HeaderMap,
    body: BoxBody,
    id: &str,
) -> (Problem, ()) {
    let is_problem = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    let mut problem = if is_problem {
        let body = actix_web::body::to_bytes(body).await.unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| problem_from_value(&value))
            .unwrap_or_else(|| Problem::new(ProblemKind::from_status(status), None))
    } else {
        Problem::new(ProblemKind::from_status(status), None)
    };
    problem.request_id = Some(id.to_owned());
    (problem, ())
}

fn copy_headers(from: &header::HeaderMap, to: &mut HttpResponse) {
    for (name, value) in from.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            to.headers_mut().insert(name.clone(), value.clone());
        }
    }
}

fn stamp(response: &mut HttpResponse, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static(REQUEST_ID), value);
    }
}

/// Rewrites an error response that is not problem details, and stamps the request id into
/// every response (header) and every problem (body).
async fn into_problem(response: ServiceResponse<BoxBody>, id: &str) -> ServiceResponse<BoxBody> {
    let status = response.status();
    let (request, mut response) = response.into_parts();
    // The portal's pages answer errors as pages of their own (the form again, with the
    // problem next to its field); everything else answers problem details.
    let is_page = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/html"));
    if (status.is_client_error() || status.is_server_error()) && !is_page {
        let headers = response.headers().clone();
        let (problem, ()) = to_problem(status, &headers, response.into_body(), id).await;
        let mut rebuilt = problem_response(status, &problem);
        copy_headers(&headers, &mut rebuilt);
        response = rebuilt;
    }
    stamp(&mut response, id);
    ServiceResponse::new(request, response)
}

fn problem_from_value(value: &serde_json::Value) -> Option<Problem> {
    Some(Problem {
        type_uri: value.get("type")?.as_str()?.to_owned(),
        title: value.get("title")?.as_str()?.to_owned(),
        status: u16::try_from(value.get("status")?.as_u64()?).ok()?,
        detail: value
            .get("detail")
            .and_then(|d| d.as_str())
            .map(str::to_owned),
        request_id: None,
    })
}

#[cfg(test)]
mod tests {
    use actix_web::{test, web, App};

    use super::*;

    #[actix_web::test]
    async fn a_database_out_of_reach_is_unavailable_bare_or_wrapped_and_nothing_else_is() {
        use credex_store::StoreError;
        let refused = || {
            StoreError::Database(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )))
        };
        let unavailable = [
            ApiError::internal(&refused()),
            ApiError::internal(&sqlx::Error::PoolTimedOut),
            ApiError::internal(&StoreError::Busy { attempts: 5 }),
            ApiError::internal(&crate::usage::UsageError::Store(refused())),
            ApiError::internal(&credex_store::IdentityError::Store(StoreError::Shared(
                std::sync::Arc::new(refused()),
            ))),
        ];
        for error in unavailable {
            assert_eq!(error.kind, ProblemKind::Unavailable);
            let response = error.error_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .map(|v| v.as_bytes()),
                Some(&b"1"[..])
            );
        }
        let internal = [
            ApiError::internal(&StoreError::Corrupt("a row".to_owned())),
            ApiError::internal(&sqlx::Error::RowNotFound),
            ApiError::internal(&"no authenticator configured"),
        ];
        for error in internal {
            assert_eq!(error.kind, ProblemKind::Internal);
            assert!(error
                .error_response()
                .headers()
                .get(header::RETRY_AFTER)
                .is_none());
        }
    }

    async fn call(
        req: test::TestRequest,
    ) -> (
        StatusCode,
        actix_web::http::header::HeaderMap,
        serde_json::Value,
    ) {
        let app = test::init_service(
            App::new()
                .wrap(actix_web::middleware::from_fn(problem_details))
                .app_data(
                    web::JsonConfig::default()
                        .limit(64)
                        .error_handler(json_error),
                )
                .service(
                    web::resource("/ok")
                        .route(web::get().to(|| async { HttpResponse::Ok().body("fine") })),
                )
                .route(
                    "/echo",
                    web::post().to(|body: web::Json<serde_json::Value>| async move {
                        HttpResponse::Ok().json(body.into_inner())
                    }),
                )
                .route(
                    "/teapot",
                    web::get().to(|| async {
                        Err::<HttpResponse, _>(ApiError::new(ProblemKind::Conflict, "already done"))
                    }),
                )
                .route(
                    "/panic",
                    web::get().to(|| async {
                        if std::hint::black_box(true) {
                            panic!("boom");
                        }
                        HttpResponse::Ok().finish()
                    }),
                ),
        )
        .await;
        // An error leaving the middleware is what the server renders with `error_response`.
        let response = match test::try_call_service(&app, req.to_request()).await {
            Ok(response) => response.into_parts().1,
            Err(error) => error.error_response(),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap_or_default();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }

    fn problem_type(json: &serde_json::Value) -> &str {
        json["type"].as_str().unwrap_or_default()
    }

    #[actix_web::test]
    async fn every_error_is_a_problem_with_a_request_id() {
        let (status, headers, json) = call(test::TestRequest::get().uri("/nowhere")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers.get(header::CONTENT_TYPE).unwrap(), PROBLEM_JSON);
        assert_eq!(problem_type(&json), "https://credex.dev/problems/not-found");
        assert_eq!(json["status"], 404);
        let id = headers.get(REQUEST_ID).unwrap().to_str().unwrap();
        assert_eq!(json["request_id"], id);

        let (status, headers, json) = call(test::TestRequest::delete().uri("/ok")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers.get(header::ALLOW).unwrap(), "GET");
        assert_eq!(
            problem_type(&json),
            "https://credex.dev/problems/method-not-allowed"
        );

        let (status, _, json) = call(
            test::TestRequest::post()
                .uri("/echo")
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .set_payload("{\"a\": "),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            problem_type(&json),
            "https://credex.dev/problems/malformed-json"
        );

        let (status, _, json) = call(
            test::TestRequest::post()
                .uri("/echo")
                .insert_header((header::CONTENT_TYPE, "text/plain"))
                .set_payload("{}"),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            problem_type(&json),
            "https://credex.dev/problems/unsupported-media-type"
        );

        let (status, _, json) = call(
            test::TestRequest::post()
                .uri("/echo")
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .set_payload(format!("\"{}\"", "x".repeat(100))),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            problem_type(&json),
            "https://credex.dev/problems/payload-too-large"
        );

        let (status, _, json) = call(test::TestRequest::get().uri("/teapot")).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(json["detail"], "already done");
        assert!(json["request_id"].is_string());

        let (status, _, json) = call(test::TestRequest::get().uri("/panic")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(problem_type(&json), "https://credex.dev/problems/internal");
        assert!(
            !json.to_string().contains("boom"),
            "no panic text reaches the caller"
        );
    }

    #[actix_web::test]
    async fn a_plain_caller_request_id_is_kept_and_a_hostile_one_replaced() {
        let (_, headers, _) = call(
            test::TestRequest::get()
                .uri("/ok")
                .insert_header((REQUEST_ID, "abc-123")),
        )
        .await;
        assert_eq!(headers.get(REQUEST_ID).unwrap(), "abc-123");
        let (_, headers, _) = call(
            test::TestRequest::get()
                .uri("/ok")
                .insert_header((REQUEST_ID, "x".repeat(65))),
        )
        .await;
        let id = headers.get(REQUEST_ID).unwrap().to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
}
