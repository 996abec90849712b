//! The ledger over HTTP, on both backends: credits with idempotency keys, balances now and as
//! of an instant, history pages, raw transfer batches, the books check — and who may do what.

mod common;

use actix_web::http::StatusCode;
use actix_web::test;
use common::{bearer, call, sign_in, Fixture, ADMIN, PASSWORD};
use credex_api::startup::app;
use credex_tests::TestDb;
use serde_json::{json, Value};

fn post(uri: &str, body: &Value) -> test::TestRequest {
    test::TestRequest::post().uri(uri).set_json(body)
}

fn get(uri: &str) -> test::TestRequest {
    test::TestRequest::get().uri(uri)
}

fn keyed(request: test::TestRequest, key: &str) -> test::TestRequest {
    request.insert_header(("Idempotency-Key", key.to_owned()))
}

async fn ledger_over_http(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let org = call(
        &service,
        bearer(
            post("/v1/admin/orgs", &json!({"name": "Acme", "plan": "teams"})),
            &admin,
        ),
    )
    .await;
    let acme = org.body["id"].as_str().expect("an id").to_owned();
    let user = json!({"email": "alice@acme.example", "password": PASSWORD, "org_id": acme, "role": "owner"});
    call(&service, bearer(post("/v1/admin/users", &user), &admin)).await;
    let alice = sign_in(&service, "alice@acme.example", PASSWORD).await;

    // A credit needs an Idempotency-Key, and an admin.
    let credits = format!("/v1/admin/orgs/{acme}/credits");
    let top_up = json!({"kind": "top_up", "amount_micro_cr": 25_000_000, "reason": "invoice 118"});
    let missing = call(&service, bearer(post(&credits, &top_up), &admin)).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.body);
    let refused = call(
        &service,
        keyed(bearer(post(&credits, &top_up), &alice), "k1"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // The first answer, then the same answer for a replay, and 422 for a different body.
    let first = call(
        &service,
        keyed(bearer(post(&credits, &top_up), &admin), "k1"),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.body["code"], "top_up");
    assert_eq!(first.body["amount"], 25_000_000);
    let location = first
        .headers
        .get("location")
        .expect("Location")
        .to_str()
        .expect("text")
        .to_owned();
    let replay = call(
        &service,
        keyed(bearer(post(&credits, &top_up), &admin), "k1"),
    )
    .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.body, first.body);
    assert_eq!(
        replay
            .headers
            .get("location")
            .expect("Location")
            .to_str()
            .expect("text"),
        location
    );
    assert_eq!(
        replay.headers.get("idempotent-replayed").expect("marked"),
        "true"
    );
    let other = json!({"kind": "grant", "amount_micro_cr": 1, "reason": "other"});
    let mismatch = call(
        &service,
        keyed(bearer(post(&credits, &other), &admin), "k1"),
    )
    .await;
    assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad = call(
        &service,
        keyed(
            bearer(
                post(
                    &credits,
                    &json!({"kind": "gift", "amount_micro_cr": 1, "reason": "x"}),
                ),
                &admin,
            ),
            "k2",
        ),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.body["detail"]
        .as_str()
        .unwrap_or_default()
        .starts_with("kind:"));
    let zero = call(
        &service,
        keyed(
            bearer(
                post(
                    &credits,
                    &json!({"kind": "grant", "amount_micro_cr": 0, "reason": "x"}),
                ),
                &admin,
            ),
            "k3",
        ),
    )
    .await;
    assert_eq!(zero.status, StatusCode::UNPROCESSABLE_ENTITY);
    let entry = call(&service, bearer(get(&location), &admin)).await;
    assert_eq!(entry.body, first.body);

    // An hour later, a grant; balances now and as of before it.
    fixture.clock.advance_seconds(3_600);
    // Access tokens last 15 minutes: sign in again.
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let alice = sign_in(&service, "alice@acme.example", PASSWORD).await;
    let grant = json!({"kind": "grant", "amount_micro_cr": 5_000_000, "reason": "welcome"});
    let granted = call(
        &service,
        keyed(bearer(post(&credits, &grant), &admin), "k4"),
    )
    .await;
    assert_eq!(granted.status, StatusCode::CREATED);
    let balances = call(
        &service,
        bearer(get(&format!("/v1/orgs/{acme}/balances")), &alice),
    )
    .await;
    assert_eq!(balances.status, StatusCode::OK, "{}", balances.body);
    let wallet = &balances.body[0];
    assert_eq!(
        (wallet["asset"].clone(), wallet["kind"].clone()),
        (json!("CR"), json!("wallet"))
    );
    assert_eq!(wallet["balance"]["balance"], 30_000_000);
    let before = first.body["timestamp"].as_str().expect("a time");
    let then = call(
        &service,
        bearer(
            get(&format!("/v1/orgs/{acme}/balances?as_of={before}")),
            &alice,
        ),
    )
    .await;
    assert_eq!(
        then.body[0]["balance"]["balance"], 25_000_000,
        "{}",
        then.body
    );
    let bad_time = call(
        &service,
        bearer(
            get(&format!("/v1/orgs/{acme}/balances?as_of=yesterday")),
            &alice,
        ),
    )
    .await;
    assert_eq!(bad_time.status, StatusCode::UNPROCESSABLE_ENTITY);

    // History, a page at a time.
    let wallet_id = wallet["account_id"].as_str().expect("an id").to_owned();
    let page = call(
        &service,
        bearer(
            get(&format!(
                "/v1/orgs/{acme}/accounts/{wallet_id}/history?limit=1"
            )),
            &alice,
        ),
    )
    .await;
    assert_eq!(page.body["entries"][0]["code"], "top_up", "{}", page.body);
    let next = page.body["next"].as_str().expect("a next page").to_owned();
    let page = call(
        &service,
        bearer(
            get(&format!(
                "/v1/orgs/{acme}/accounts/{wallet_id}/history?limit=1&cursor={next}"
            )),
            &alice,
        ),
    )
    .await;
    assert_eq!(page.body["entries"][0]["code"], "grant");
    let next = page.body["next"].as_str().expect("a next page").to_owned();
    let page = call(
        &service,
        bearer(
            get(&format!(
                "/v1/orgs/{acme}/accounts/{wallet_id}/history?limit=1&cursor={next}"
            )),
            &alice,
        ),
    )
    .await;
    assert_eq!(page.body["entries"].as_array().map(Vec::len), Some(0));
    assert_eq!(page.body["next"], Value::Null);

    // Raw batches: one outcome per transfer; a replay answers the first answer.
    let issuance = call(&service, bearer(get("/v1/admin/books/check"), &admin)).await;
    assert_eq!(issuance.body["ok"], true, "{}", issuance.body);
    let spend = json!({"transfers": [
        {"id": "0192d1a4-8c3e-7b61-9a0f-000000000001", "kind": "single",
         "debit_account_id": wallet_id, "credit_account_id": wallet_id, "asset": "CR", "amount": 1, "code": "spend"}
    ]});
    let same_account = call(
        &service,
        keyed(bearer(post("/v1/admin/transfers", &spend), &admin), "b0"),
    )
    .await;
    assert_eq!(
        same_account.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        same_account.body
    );
    let unknown = json!({"transfers": [
        {"id": "0192d1a4-8c3e-7b61-9a0f-000000000002", "kind": "single",
         "debit_account_id": wallet_id, "credit_account_id": "0192d1a4-8c3e-7b61-9a0f-00000000aaaa",
         "asset": "CR", "amount": 1, "code": "spend"},
        {"id": "0192d1a4-8c3e-7b61-9a0f-000000000003", "kind": "void",
         "pending_id": "0192d1a4-8c3e-7b61-9a0f-00000000bbbb"}
    ]});
    let outcomes = call(
        &service,
        keyed(bearer(post("/v1/admin/transfers", &unknown), &admin), "b1"),
    )
    .await;
    assert_eq!(outcomes.status, StatusCode::OK, "{}", outcomes.body);
    assert_eq!(outcomes.body[0]["result"], "credit_account_not_found");
    assert_eq!(outcomes.body[1]["result"], "pending_transfer_not_found");
    let again = call(
        &service,
        keyed(bearer(post("/v1/admin/transfers", &unknown), &admin), "b1"),
    )
    .await;
    assert_eq!(again.body, outcomes.body);
    let refused = call(
        &service,
        keyed(bearer(post("/v1/admin/transfers", &unknown), &alice), "b2"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // Another org sees nothing of Acme's.
    let globex = call(
        &service,
        bearer(
            post("/v1/admin/orgs", &json!({"name": "Globex", "plan": "free"})),
            &admin,
        ),
    )
    .await;
    let globex = globex.body["id"].as_str().expect("an id").to_owned();
    let carol = json!({"email": "carol@globex.example", "password": PASSWORD, "org_id": globex, "role": "owner"});
    call(&service, bearer(post("/v1/admin/users", &carol), &admin)).await;
    let carol = sign_in(&service, "carol@globex.example", PASSWORD).await;
    let hidden = call(
        &service,
        bearer(get(&format!("/v1/orgs/{acme}/balances")), &carol),
    )
    .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    let hidden = call(
        &service,
        bearer(
            get(&format!("/v1/orgs/{globex}/accounts/{wallet_id}/history")),
            &carol,
        ),
    )
    .await;
    assert_eq!(
        hidden.status,
        StatusCode::NOT_FOUND,
        "an account of another org is not found"
    );
    let check = call(&service, bearer(get("/v1/admin/books/check"), &admin)).await;
    assert_eq!(check.body["ok"], true);
    fixture.close().await;
}

credex_tests::on_both_backends!(ledger_over_http);
