//! The OpenAPI 3.1 document, generated from the code (`utoipa`), served at `/openapi.json` and
//! committed at `openapi/openapi.json` (a test fails when the two differ; `credex openapi`
//! prints it), and the API reference at `/docs`, rendered on the server from the same document:
//! no script, nothing downloaded.

use std::fmt::Write as _;

use actix_web::{web, HttpResponse};
use utoipa::openapi::{OpenApi as Document, PathItem};
use utoipa::OpenApi;

use crate::problem::Problem;
use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Credex",
        description = "The credit exchange and ledger of an AI API provider. Errors are RFC 9457 problem details (`application/problem+json`) with a stable `type` URI and the request's id.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        routes::health::healthz,
        routes::health::readyz,
        crate::metrics::metrics_handler,
        routes::auth::login,
        routes::auth::refresh,
        routes::auth::logout,
        routes::auth::me,
        routes::auth::change_password,
        routes::orgs::list_orgs,
        routes::orgs::create_org,
        routes::orgs::change_org,
        routes::orgs::create_user,
        routes::orgs::get_user,
        routes::orgs::audit_log,
        routes::orgs::get_org,
        routes::orgs::members,
        routes::orgs::add_member,
        routes::orgs::create_api_key,
        routes::orgs::api_keys,
        routes::orgs::get_api_key,
        routes::orgs::revoke_api_key,
        routes::ledger::balances,
        routes::ledger::history,
        routes::ledger::credit,
        routes::ledger::transfer,
        routes::ledger::transfers,
        routes::ledger::books_check,
        routes::ledger::provider_balances,
        routes::models::list_models,
        routes::models::get_model,
        routes::models::model_prices,
        routes::models::org_model_prices,
        routes::models::add_model,
        routes::models::add_price,
        routes::models::add_org_price,
        routes::models::import_prices,
        routes::estimate::estimate,
        routes::cycles::list_classes,
        routes::cycles::put_class,
        routes::cycles::put_allotment,
        routes::cycles::list_cycles,
        routes::cycles::open_cycle_now,
        routes::cycles::close_cycle_now,
        routes::market::list_markets,
        routes::market::get_market,
        routes::market::market_quote,
        routes::market::market_depth,
        routes::market::market_fills,
        routes::market::price_history,
        routes::market::patch_market,
        routes::market::settings_history,
        routes::market::market_policy,
        routes::market::put_market_policy,
        routes::market::org_links,
        routes::market::link_orgs,
        routes::market::unlink_orgs,
        routes::market::create_listing,
        routes::market::list_listings,
        routes::market::get_listing,
        routes::market::amend_listing,
        routes::market::cancel_listing,
        routes::market::create_order,
        routes::market::get_order,
        routes::market::create_buyback,
        routes::market::list_buybacks,
        routes::market::get_buyback,
        routes::alerts::create_price_alert,
        routes::alerts::price_alerts,
        routes::alerts::get_price_alert,
        routes::alerts::cancel_price_alert,
        routes::review::review_flags,
        routes::review::review_scan,
        routes::review::clear_flag,
        routes::review::org_review_flags,
        routes::usage::record_usage,
        routes::usage::list_usage,
        routes::usage::usage_totals,
        routes::usage::export_usage,
        routes::usage::usage_forecast,
        routes::usage::usage_savings,
        routes::statements::list_statements,
        routes::statements::get_statement,
        routes::statements::get_statement_csv,
        routes::statements::get_statement_pdf,
        routes::budgets::create_budget,
        routes::budgets::budgets,
        routes::budgets::get_budget,
        routes::budgets::delete_budget,
        routes::budgets::budget_alerts,
        routes::reservations::create_reservation,
        routes::reservations::list_reservations,
        routes::reservations::get_reservation,
        routes::reservations::settle_reservation,
        routes::reservations::release_reservation,
        routes::overdraft::get_overdraft,
        routes::overdraft::set_overdraft,
        routes::overdraft::repay_overdraft,
        routes::webhooks::create_webhook,
        routes::webhooks::webhooks,
        routes::webhooks::get_webhook,
        routes::webhooks::delete_webhook,
        routes::webhooks::webhook_deliveries,
        routes::webhooks::deliveries,
        routes::reports::put_report,
        routes::reports::get_report,
        routes::reports::delete_report,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth, &FrameworkResponses, &ClosedVariants),
    tags(
        (name = "auth", description = "Signing in and out; who is calling"),
        (name = "orgs", description = "Orgs, members, users, API keys and the audit log"),
        (name = "ledger", description = "Balances, history, credits and raw transfers"),
        (name = "models", description = "The model catalog and its dated prices, org custom prices, LiteLLM imports, and cost previews"),
        (name = "cycles", description = "Model classes, plans' allotments and billing cycles"),
        (name = "market", description = "The market: quotes and depth, listings, buy orders (emergency credits included), buybacks, and its admin settings"),
        (name = "review", description = "Fraud review: flags on orgs whose trading needs an admin's look, and clearing them"),
        (name = "usage", description = "Model calls reported, priced and charged once; the org's usage history; reservations (two-phase holds before a call); budgets and their alerts; webhooks, scheduled reports and the log of their deliveries; statements per cycle"),
        (name = "operations", description = "Probes and metrics for load balancers, orchestrators and Prometheus"),
    ),
)]
struct ApiDoc;

/// The `bearer` security scheme: a user's access token (a JWT from `/v1/auth/login`) or an
/// org's API key (`cdx_…`).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, document: &mut Document) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT or API key")
            .description(Some(
                "An access token from POST /v1/auth/login (15 minutes), or an API key `cdx_…`.",
            ))
            .build();
        document
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The answers every operation may get from the framework around its handler, documented on
/// each operation (where the operation does not document them itself):
/// - 429 with `Retry-After`: every request is rate-limited per client address;
/// - for an operation with a JSON body: 400 (not JSON, or not this operation's JSON), 413 (too
///   large), 415 (not `application/json`);
/// - for an operation with query parameters: 400 (a query string that does not parse);
/// - `WWW-Authenticate` on every 401, `Retry-After` on every 429, and `X-Request-Id` on every
///   answer.
struct FrameworkResponses;

fn problem_response(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            crate::problem::PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

fn header(
    kind: utoipa::openapi::schema::Type,
    description: &str,
) -> utoipa::openapi::header::Header {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::ObjectBuilder;
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(kind))
        .description(Some(description))
        .build()
}

impl utoipa::Modify for FrameworkResponses {
    fn modify(&self, document: &mut Document) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::schema::Type;
        use utoipa::openapi::RefOr;
        for item in document.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let has_body = operation.request_body.is_some();
                let has_query = operation
                    .parameters
                    .iter()
                    .flatten()
                    .any(|parameter| parameter.parameter_in == ParameterIn::Query);
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::T(problem_response(description)));
                };
                if has_body {
                    add("400", "The body is not JSON, or not this operation's JSON");
                    add("413", "The body is too large");
                    add(
                        "415",
                        "The body is not JSON (`Content-Type: application/json`)",
                    );
                }
                if has_query {
                    add("400", "The query string does not parse");
                }
                add("429", "Too many requests; see Retry-After");
                for (status, response) in responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    response.headers.insert(
                        "X-Request-Id".to_owned(),
                        header(
                            Type::String,
                            "The request's id, also in problem details and on every log line",
                        ),
                    );
                    match status.as_str() {
                        "401" => {
                            response.headers.insert(
                                "WWW-Authenticate".to_owned(),
                                header(Type::String, "`Bearer realm=\"credex\"`"),
                            );
                        }
                        "429" => {
                            response.headers.insert(
                                "Retry-After".to_owned(),
                                header(Type::Integer, "Seconds to wait before trying again"),
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Request bodies refuse unknown fields (`#[serde(deny_unknown_fields)]`), and the document
/// says so with `additionalProperties: false`. utoipa writes that for structs but not for the
/// struct variants of a tagged enum, which serde closes all the same; this closes them.
struct ClosedVariants;

impl utoipa::Modify for ClosedVariants {
    fn modify(&self, document: &mut Document) {
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        use utoipa::openapi::RefOr;
        let Some(components) = document.components.as_mut() else {
            return;
        };
        for name in [
            "TransferRequest",
            "CurveBody",
            "LimitBody",
            "AlertTarget",
            "ScopeBody",
        ] {
            let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut(name) else {
                panic!("{name} is a oneOf of its variants");
            };
            for variant in &mut one_of.items {
                if let RefOr::T(Schema::Object(object)) = variant {
                    object.additional_properties =
                        Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
    }
}

/// The whole document.
pub fn document() -> Document {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document
}

/// The document as committed: pretty JSON with a final newline.
///
/// Every response header the document names is always sent, so each is marked `required`
/// (utoipa's header object has no such field; it is added to the JSON here).
pub fn document_json() -> String {
    let mut value = serde_json::to_value(document()).expect("the OpenAPI document serializes");
    if let Some(paths) = value
        .get_mut("paths")
        .and_then(|paths| paths.as_object_mut())
    {
        let responses = paths
            .values_mut()
            .filter_map(|item| item.as_object_mut())
            .flat_map(|item| item.values_mut())
            .filter_map(|operation| operation.get_mut("responses"))
            .filter_map(|responses| responses.as_object_mut())
            .flat_map(|responses| responses.values_mut());
        for response in responses {
            let headers = response
                .get_mut("headers")
                .and_then(|headers| headers.as_object_mut());
            for header in headers.into_iter().flat_map(|headers| headers.values_mut()) {
                if let Some(header) = header.as_object_mut() {
                    header.insert("required".to_owned(), serde_json::Value::Bool(true));
                }
            }
        }
    }
    let mut json = serde_json::to_string_pretty(&value).expect("the OpenAPI document serializes");
    json.push('\n');
    json
}

/// `GET /openapi.json`.
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document_json())
}

/// `GET /docs`: every operation with its responses, as plain HTML.
pub async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(reference_html(&document()))
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/openapi.json").route(web::get().to(openapi_json)))
        .service(web::resource("/docs").route(web::get().to(docs)));
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn operations(item: &PathItem) -> Vec<(&'static str, &utoipa::openapi::path::Operation)> {
    [
        ("GET", item.get.as_ref()),
        ("POST", item.post.as_ref()),
        ("PUT", item.put.as_ref()),
        ("PATCH", item.patch.as_ref()),
        ("DELETE", item.delete.as_ref()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|operation| (method, operation)))
    .collect()
}

fn reference_html(document: &Document) -> String {
    let mut html = String::new();
    let title = escape(&document.info.title);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} API reference</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}\
         code{{background:#f3f3f3;padding:0 .2rem}}section{{border-top:1px solid #ddd;padding:.5rem 0}}\
         .method{{font-weight:bold;margin-right:.5rem}}</style></head><body>\
         <h1>{title} API reference</h1><p>Version {}. The machine-readable document is at \
         <a href=\"/openapi.json\"><code>/openapi.json</code></a>.</p>",
        escape(&document.info.version)
    );
    if let Some(description) = &document.info.description {
        let _ = write!(html, "<p>{}</p>", escape(description));
    }
    for (path, item) in &document.paths.paths {
        for (method, operation) in operations(item) {
            let _ = write!(
                html,
                "<section><h2><span class=\"method\">{method}</span><code>{}</code></h2>",
                escape(path)
            );
            if let Some(summary) = &operation.summary {
                let _ = write!(html, "<p>{}</p>", escape(summary));
            }
            if let Some(description) = &operation.description {
                let _ = write!(html, "<p>{}</p>", escape(description));
            }
            html.push_str("<ul>");
            for (status, response) in &operation.responses.responses {
                let text = match response {
                    utoipa::openapi::RefOr::T(response) => escape(&response.description),
                    utoipa::openapi::RefOr::Ref(reference) => escape(&reference.ref_location),
                };
                let _ = write!(html, "<li><code>{}</code> {text}</li>", escape(status));
            }
            html.push_str("</ul></section>");
        }
    }
    html.push_str("</body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document is the generated one: change the code, then run
    /// `cargo run -- openapi > openapi/openapi.json`.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == document_json(),
            "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json`"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_operation_answers_problems() {
        let json: serde_json::Value = serde_json::from_str(&document_json()).expect("valid JSON");
        assert_eq!(json["openapi"], "3.1.0");
        let paths = json["paths"].as_object().expect("paths");
        assert!(paths.contains_key("/healthz") && paths.contains_key("/readyz"));
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("an item") {
                let responses = operation["responses"].as_object().expect("responses");
                let errors: Vec<_> = responses.keys().filter(|s| !s.starts_with('2')).collect();
                assert!(!errors.is_empty(), "{method} {path} documents no error");
                for status in errors {
                    let content = &responses[status]["content"];
                    assert!(
                        content.get("application/problem+json").is_some(),
                        "{method} {path} {status} is not problem details"
                    );
                }
            }
        }
    }

    #[test]
    fn the_reference_lists_every_operation() {
        let html = reference_html(&document());
        assert!(html.contains("<code>/healthz</code>") && html.contains("<code>/readyz</code>"));
        assert!(html.contains("<code>503</code>"));
        assert!(!html.contains("<script"));
    }
}
