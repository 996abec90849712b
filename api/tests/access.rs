//! Every operation of the OpenAPI document, walked: without a token 401; in another org 404;
//! a member on an owner's operation, or anyone but an admin on an admin's, 403. The table below
//! must name every operation the document has, so a new one cannot slip through unclassified.

mod common;

use std::collections::BTreeSet;

use actix_web::http::StatusCode;
use actix_web::test;
use common::{bearer, call, sign_in, Fixture, ADMIN, PASSWORD};
use credex_api::startup::app;
use credex_tests::TestDb;
use serde_json::{json, Value};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// Anyone (probes, documents, sign-in).
    Anyone,
    /// Any authenticated caller.
    Authenticated,
    /// A member of the org in the path (or a key with the scope).
    Member,
    /// A member of the org named in the body (`"{org_id}"` in the table's body), or a key of it.
    MemberInBody,
    /// An owner of the org in the path.
    Owner,
    /// A platform admin.
    Admin,
}

/// (operationId, who, a valid body).
fn table() -> Vec<(&'static str, Who, Option<Value>)> {
    vec![
        ("healthz", Who::Anyone, None),
        ("readyz", Who::Anyone, None),
        ("metrics_handler", Who::Anyone, None),
        (
            "login",
            Who::Anyone,
            Some(json!({"email": "x@example.com", "password": "whatever it is"})),
        ),
        (
            "refresh",
            Who::Anyone,
            Some(json!({"refresh_token": "cdxr_unknown"})),
        ),
        ("logout", Who::Authenticated, None),
        ("me", Who::Authenticated, None),
        (
            "change_password",
            Who::Authenticated,
            Some(
                json!({"current_password": "not the password", "new_password": "a new long password"}),
            ),
        ),
        ("get_org", Who::Member, None),
        ("members", Who::Member, None),
        ("balances", Who::Member, None),
        ("history", Who::Member, None),
        (
            "add_member",
            Who::Owner,
            Some(json!({"email": "bob@acme.example", "role": "member"})),
        ),
        ("api_keys", Who::Owner, None),
        (
            "create_api_key",
            Who::Owner,
            Some(json!({"name": "k", "scopes": ["read"]})),
        ),
        ("get_api_key", Who::Owner, None),
        ("revoke_api_key", Who::Owner, None),
        ("list_orgs", Who::Admin, None),
        (
            "create_org",
            Who::Admin,
            Some(json!({"name": "N", "plan": "free"})),
        ),
        ("change_org", Who::Admin, Some(json!({"frozen": false}))),
        (
            "create_user",
            Who::Admin,
            Some(json!({"email": "new@example.com", "password": PASSWORD})),
        ),
        ("get_user", Who::Admin, None),
        ("audit_log", Who::Admin, None),
        (
            "credit",
            Who::Admin,
            Some(json!({"kind": "grant", "amount_micro_cr": 1, "reason": "r"})),
        ),
        (
            "transfers",
            Who::Admin,
            Some(
                json!({"transfers": [{"id": "0192d1a4-8c3e-7b61-9a0f-0000000000aa", "kind": "void", "pending_id": "0192d1a4-8c3e-7b61-9a0f-0000000000bb"}]}),
            ),
        ),
        ("transfer", Who::Admin, None),
        ("books_check", Who::Admin, None),
        ("provider_balances", Who::Admin, None),
        ("list_models", Who::Authenticated, None),
        ("get_model", Who::Authenticated, None),
        ("model_prices", Who::Authenticated, None),
        ("org_model_prices", Who::Member, None),
        (
            "add_model",
            Who::Admin,
            Some(json!({"id": "m-1", "provider": "acme", "class": "pro",
                        "price": {"input": "1", "output": "2"}})),
        ),
        (
            "add_price",
            Who::Admin,
            Some(json!({"input": "1", "output": "2"})),
        ),
        (
            "add_org_price",
            Who::Admin,
            Some(json!({"input": "1", "output": "2"})),
        ),
        ("import_prices", Who::Admin, Some(json!({}))),
        (
            "estimate",
            Who::MemberInBody,
            Some(
                json!({"org_id": "{org_id}", "model": "gpt-4o", "prompt": "Hello",
                        "expected_output_tokens": 10}),
            ),
        ),
        ("list_classes", Who::Authenticated, None),
        ("list_cycles", Who::Authenticated, None),
        (
            "put_class",
            Who::Admin,
            Some(json!({"face_value_per_1m_micro_cr": 1})),
        ),
        (
            "put_allotment",
            Who::Admin,
            Some(json!({"tokens_per_cycle": 1})),
        ),
        ("open_cycle_now", Who::Admin, None),
        ("close_cycle_now", Who::Admin, None),
        ("list_markets", Who::Authenticated, None),
        ("get_market", Who::Authenticated, None),
        ("market_quote", Who::Authenticated, None),
        ("market_depth", Who::Authenticated, None),
        ("market_fills", Who::Authenticated, None),
        ("price_history", Who::Authenticated, None),
        ("patch_market", Who::Admin, Some(json!({}))),
        ("settings_history", Who::Admin, None),
        ("market_policy", Who::Admin, None),
        (
            "put_market_policy",
            Who::Admin,
            Some(json!({"min_verification_level": 1, "min_org_age_days": 0,
                        "paid_plan_required": true, "sell_cap_basis_points": 10000})),
        ),
        ("org_links", Who::Admin, None),
        ("link_orgs", Who::Admin, None),
        ("unlink_orgs", Who::Admin, None),
        (
            "create_listing",
            Who::Member,
            Some(json!({"asset": "TOK.pro.2026-11", "quantity": 1, "ask_per_1m_micro_cr": 1})),
        ),
        ("list_listings", Who::Member, None),
        ("get_listing", Who::Member, None),
        (
            "amend_listing",
            Who::Member,
            Some(json!({"quantity_open": 1})),
        ),
        ("cancel_listing", Who::Member, None),
        (
            "create_order",
            Who::Member,
            Some(json!({"asset": "TOK.pro.2026-11", "quantity": 1})),
        ),
        ("get_order", Who::Member, None),
        (
            "create_buyback",
            Who::Member,
            Some(json!({"asset": "TOK.pro.2026-11", "quantity": 1})),
        ),
        ("list_buybacks", Who::Member, None),
        ("get_buyback", Who::Member, None),
        (
            "create_price_alert",
            Who::Member,
            Some(
                json!({"asset": "TOK.pro.2026-11", "below_per_1m_micro_cr": 1,
                        "notify": {"channel": "webhook", "url": "http://hooks.example.com/a"}}),
            ),
        ),
        ("price_alerts", Who::Member, None),
        ("get_price_alert", Who::Member, None),
        ("cancel_price_alert", Who::Member, None),
        (
            "record_usage",
            Who::Member,
            Some(
                json!({"events": [{"id": "01a21a6b-5f3c-7d2e-9a41-5f7c0b1e2d3f",
                "model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 5}]}),
            ),
        ),
        ("list_usage", Who::Member, None),
        ("usage_totals", Who::Member, None),
        ("export_usage", Who::Member, None),
        ("usage_forecast", Who::Member, None),
        ("usage_savings", Who::Member, None),
        ("list_statements", Who::Member, None),
        ("get_statement", Who::Member, None),
        ("get_statement_csv", Who::Member, None),
        ("get_statement_pdf", Who::Member, None),
        (
            "create_budget",
            Who::Owner,
            Some(
                json!({"name": "team", "scope": {"kind": "org"}, "period": "month",
                "limit_micro_cr": 1_000_000}),
            ),
        ),
        ("budgets", Who::Member, None),
        ("get_budget", Who::Member, None),
        ("delete_budget", Who::Owner, None),
        ("budget_alerts", Who::Member, None),
        (
            "create_reservation",
            Who::Member,
            Some(
                json!({"id": "01a21a6b-5f3c-7d2e-9a41-5f7c0b1e2d40", "model": "gpt-4o-mini",
                "input_tokens": 10, "output_tokens": 5}),
            ),
        ),
        ("list_reservations", Who::Member, None),
        ("get_reservation", Who::Member, None),
        (
            "settle_reservation",
            Who::Member,
            Some(
                json!({"id": "01a21a6b-5f3c-7d2e-9a41-5f7c0b1e2d41", "model": "gpt-4o-mini",
                "input_tokens": 10, "output_tokens": 5}),
            ),
        ),
        ("release_reservation", Who::Member, None),
        ("get_overdraft", Who::Member, None),
        (
            "set_overdraft",
            Who::Admin,
            Some(json!({"limit_micro_cr": 1_000})),
        ),
        (
            "repay_overdraft",
            Who::Admin,
            Some(
                json!({"id": "01a21a6b-5f3c-7d2e-9a41-5f7c0b1e2d42", "amount_micro_cr": 1,
                "reference": "INV-1"}),
            ),
        ),
        (
            "create_webhook",
            Who::Owner,
            Some(json!({"url": "http://hooks.example.com/credex"})),
        ),
        ("webhooks", Who::Member, None),
        ("get_webhook", Who::Member, None),
        ("delete_webhook", Who::Owner, None),
        ("webhook_deliveries", Who::Member, None),
        ("deliveries", Who::Member, None),
        (
            "put_report",
            Who::Owner,
            Some(json!({"recipients": ["ops@acme.example"]})),
        ),
        ("get_report", Who::Member, None),
        ("delete_report", Who::Owner, None),
        ("review_flags", Who::Admin, None),
        ("review_scan", Who::Admin, None),
        ("clear_flag", Who::Admin, Some(json!({"note": "fine"}))),
        ("org_review_flags", Who::Member, None),
    ]
}

struct Operation {
    id: String,
    method: String,
    path: String,
}

fn operations() -> Vec<Operation> {
    let document: Value =
        serde_json::from_str(&credex_api::openapi::document_json()).expect("the document");
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("an item") {
            operations.push(Operation {
                id: operation["operationId"].as_str().expect("an id").to_owned(),
                method: method.to_uppercase(),
                path: path.clone(),
            });
        }
    }
    operations
}

fn request(method: &str, uri: &str, body: Option<&Value>) -> test::TestRequest {
    let request = match method {
        "GET" => test::TestRequest::get(),
        "POST" => test::TestRequest::post(),
        "PATCH" => test::TestRequest::patch(),
        "PUT" => test::TestRequest::put(),
        "DELETE" => test::TestRequest::delete(),
        other => panic!("a method the walk does not know: {other}"),
    }
    .uri(uri)
    .insert_header(("Idempotency-Key", uuid::Uuid::new_v4().to_string()));
    match body {
        Some(body) => request.set_json(body),
        None => request,
    }
}

async fn every_operation_guards_its_door(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let post = |uri: &str, body: Value| test::TestRequest::post().uri(uri).set_json(body);
    let make_org = |name: &str| post("/v1/admin/orgs", json!({"name": name, "plan": "teams"}));
    let acme = call(&service, bearer(make_org("Acme"), &admin)).await.body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let globex = call(&service, bearer(make_org("Globex"), &admin))
        .await
        .body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for (email, org, role) in [
        ("alice@acme.example", &acme, "owner"),
        ("bob@acme.example", &acme, "member"),
        ("carol@globex.example", &globex, "owner"),
    ] {
        let user = json!({"email": email, "password": PASSWORD, "org_id": org, "role": role});
        call(&service, bearer(post("/v1/admin/users", user), &admin)).await;
    }
    let alice = sign_in(&service, "alice@acme.example", PASSWORD).await;
    let bob = sign_in(&service, "bob@acme.example", PASSWORD).await;
    // Objects of Acme to name in paths.
    let key = call(
        &service,
        bearer(
            post(
                &format!("/v1/orgs/{acme}/api-keys"),
                json!({"name": "k", "scopes": ["read"]}),
            ),
            &alice,
        ),
    )
    .await;
    let key_id = key.body["api_key"]["id"]
        .as_str()
        .expect("a key")
        .to_owned();
    let credit = call(
        &service,
        bearer(
            post(
                &format!("/v1/admin/orgs/{acme}/credits"),
                json!({"kind": "grant", "amount_micro_cr": 5, "reason": "r"}),
            ),
            &admin,
        )
        .insert_header(("Idempotency-Key", "setup")),
    )
    .await;
    let transfer_id = credit.body["id"].as_str().expect("a transfer").to_owned();
    let wallet_id = credit.body["credit_account_id"]
        .as_str()
        .expect("a wallet")
        .to_owned();
    let missing = uuid::Uuid::new_v4().to_string();
    let uri = |path: &str, org: &str| {
        path.replace("{org_id}", org)
            .replace("{key_id}", &key_id)
            .replace("{account_id}", &wallet_id)
            .replace("{transfer_id}", &transfer_id)
            .replace("{model_id}", "gpt-4o")
            .replace("{asset}", "TOK.pro.2026-11")
            .replace("{class}", "pro")
            .replace("{plan}", "teams")
            .replace("{cycle}", "2026-11")
            .replace("{other_org_id}", &globex)
            .replace("{listing_id}", &missing)
            .replace("{order_id}", &missing)
            .replace("{buyback_id}", &missing)
            .replace("{flag_id}", &missing)
            .replace("{alert_id}", &missing)
            .replace("{webhook_id}", &missing)
            .replace("{frequency}", "daily")
    };
    let body_in = |body: &Option<Value>, org: &str| -> Option<Value> {
        body.as_ref().map(|body| {
            serde_json::from_str(&body.to_string().replace("{org_id}", org)).expect("JSON")
        })
    };

    // The table names every operation of the document, and nothing else.
    let table = table();
    let documented: BTreeSet<String> = operations().into_iter().map(|op| op.id).collect();
    let classified: BTreeSet<String> = table.iter().map(|(id, ..)| (*id).to_owned()).collect();
    assert_eq!(
        documented, classified,
        "classify every operation in the table"
    );

    let mut checked = 0;
    for operation in operations() {
        let (_, who, body) = table
            .iter()
            .find(|(id, ..)| *id == operation.id)
            .expect("classified");
        let own = uri(&operation.path, &acme);
        let foreign = uri(&operation.path, &globex);
        let (body, foreign_body) = (body_in(body, &acme), body_in(body, &globex));
        let expect = |answer: &common::Answer, status: StatusCode, what: &str| {
            assert_eq!(
                answer.status, status,
                "{} {} {what}: {}",
                operation.method, operation.path, answer.body
            );
            assert_eq!(
                answer
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap_or_default().to_owned()),
                Some("application/problem+json".to_owned()),
                "{} {} {what} answers problem details",
                operation.method,
                operation.path
            );
        };
        if *who != Who::Anyone {
            let answer = call(&service, request(&operation.method, &own, body.as_ref())).await;
            expect(&answer, StatusCode::UNAUTHORIZED, "without a token");
            checked += 1;
        }
        if matches!(who, Who::Member | Who::Owner | Who::MemberInBody) {
            let answer = call(
                &service,
                bearer(
                    request(&operation.method, &foreign, foreign_body.as_ref()),
                    &alice,
                ),
            )
            .await;
            expect(&answer, StatusCode::NOT_FOUND, "in another org");
            checked += 1;
        }
        if *who == Who::Owner {
            let answer = call(
                &service,
                bearer(request(&operation.method, &own, body.as_ref()), &bob),
            )
            .await;
            expect(&answer, StatusCode::FORBIDDEN, "as a member");
            checked += 1;
        }
        if *who == Who::Admin {
            let answer = call(
                &service,
                bearer(request(&operation.method, &own, body.as_ref()), &alice),
            )
            .await;
            expect(&answer, StatusCode::FORBIDDEN, "as an org owner");
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} checks");
    fixture.close().await;
}

credex_tests::on_both_backends!(every_operation_guards_its_door);
