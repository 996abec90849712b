//! The model catalog and cost previews over HTTP, on both backends: the built-in catalog in
//! pages, aliases, admins adding models and dated prices (never in the past; a scheduled price
//! replaced; a past instant keeps its price), org custom prices, LiteLLM imports, and
//! estimates with real token counts, exact costs and the balance that would pay.

mod common;

use actix_web::http::StatusCode;
use actix_web::test;
use common::{bearer, call, sign_in, Answer, Fixture, ADMIN, NOV_26, PASSWORD};
use credex_api::startup::app;
use credex_ledger::{
    AccountKind, Amount, AssetCode, Movement, OrgId, Owner, Transfer, TransferCode, TransferId,
};
use credex_pricing::{count_chat, count_text, ChatMessage};
use credex_tests::TestDb;
use rust_decimal::Decimal;
use serde_json::{json, Value};

const DAY_SECONDS: u32 = 86_400;

fn post(uri: &str, body: &Value) -> test::TestRequest {
    test::TestRequest::post().uri(uri).set_json(body)
}

fn get(uri: &str) -> test::TestRequest {
    test::TestRequest::get().uri(uri)
}

fn text<'a>(answer: &'a Answer, pointer: &str) -> &'a str {
    answer
        .body
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} in {}", answer.body))
}

fn number(answer: &Answer, pointer: &str) -> u64 {
    answer
        .body
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} in {}", answer.body))
}

fn location_of(answer: &Answer) -> &str {
    answer
        .headers
        .get("location")
        .and_then(|value| value.to_str().ok())
        .expect("a Location")
}

fn decimal(answer: &Answer, pointer: &str) -> Decimal {
    text(answer, pointer).parse().expect("a decimal")
}

/// The application with an admin, an org "Acme" whose owner is alice, and an org "Globex".
struct World<S> {
    service: S,
    admin: String,
    alice: String,
    acme: String,
    globex: String,
}

async fn world(
    fixture: &Fixture,
) -> World<
    impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
    >,
> {
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let make_org = |name: &str| post("/v1/admin/orgs", &json!({"name": name, "plan": "teams"}));
    let acme = call(&service, bearer(make_org("Acme"), &admin)).await;
    let acme = text(&acme, "/id").to_owned();
    let globex = call(&service, bearer(make_org("Globex"), &admin)).await;
    let globex = text(&globex, "/id").to_owned();
    let user = json!({"email": "alice@acme.example", "password": PASSWORD, "org_id": acme, "role": "owner"});
    call(&service, bearer(post("/v1/admin/users", &user), &admin)).await;
    let alice = sign_in(&service, "alice@acme.example", PASSWORD).await;
    World {
        service,
        admin,
        alice,
        acme,
        globex,
    }
}

async fn audited<S, B>(service: &S, admin: &str, action: &str) -> Vec<Value>
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody + 'static,
{
    let answer = call(
        service,
        bearer(get(&format!("/v1/admin/audit?action={action}")), admin),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["entries"].as_array().expect("entries").clone()
}

async fn the_catalog_in_pages(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let w = world(&fixture).await;
    let s = &w.service;

    // The whole catalog, 20 at a time, in id order, every model with a price in force.
    let mut ids: Vec<String> = Vec::new();
    let mut uri = "/v1/models?limit=20".to_owned();
    loop {
        let page = call(s, bearer(get(&uri), &w.alice)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for model in page.body["models"].as_array().expect("models") {
            ids.push(model["id"].as_str().expect("an id").to_owned());
            assert!(model["price"]["input"].is_string(), "{model}");
            assert!(model["price"]["effective_from"].is_string(), "{model}");
        }
        match page.body["next"].as_str() {
            Some(next) => uri = format!("/v1/models?limit=20&after={}", next.replace('/', "%2F")),
            None => break,
        }
    }
    assert!(ids.len() >= 60, "{} models", ids.len());
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "id order, each model once");
    let first = call(s, bearer(get("/v1/models"), &w.alice)).await;
    assert_eq!(
        first.body["models"].as_array().expect("models").len(),
        ids.len().min(100)
    );

    // One model, with its aliases and current price (as of 2026-11-26).
    let gpt4o = first.body["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|model| model["id"] == "gpt-4o")
        .expect("gpt-4o")
        .clone();
    assert_eq!(
        gpt4o,
        json!({"id": "gpt-4o", "provider": "openai", "class": "pro", "aliases": [],
               "context_window_tokens": 128000, "source": "builtin",
               "price": {"effective_from": "2024-10-02T00:00:00Z", "input": "2.5",
                         "cached_input": "1.25", "cache_write": "2.5", "output": "10",
                         "tiers": []}})
    );

    // Filters.
    let anthropic = call(s, bearer(get("/v1/models?provider=Anthropic"), &w.alice)).await;
    let models = anthropic.body["models"].as_array().expect("models");
    assert!(models.len() >= 5, "{}", anthropic.body);
    assert!(models.iter().all(|m| m["provider"] == "anthropic"));
    let std = call(
        s,
        bearer(
            get("/v1/models?class=std&provider=openai&limit=2"),
            &w.alice,
        ),
    )
    .await;
    let models = std.body["models"].as_array().expect("models");
    assert_eq!(models.len(), 2, "{}", std.body);
    assert!(models
        .iter()
        .all(|m| m["class"] == "std" && m["provider"] == "openai"));
    let next = std.body["next"].as_str().expect("more openai std models");
    let more = call(
        s,
        bearer(
            get(&format!(
                "/v1/models?class=std&provider=openai&after={next}"
            )),
            &w.alice,
        ),
    )
    .await;
    assert!(more.body["models"][0]["id"].as_str() > Some(next));
    for bad in [
        "limit=0",
        "limit=1001",
        "class=Pro",
        "after=-x",
        "provider=1a",
    ] {
        let answer = call(s, bearer(get(&format!("/v1/models?{bad}")), &w.alice)).await;
        assert!(
            answer.status == StatusCode::UNPROCESSABLE_ENTITY
                || answer.status == StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.status
        );
    }

    // By alias, in any letter case; a name with `/` written %2F; unknown names.
    let by_alias = call(s, bearer(get("/v1/models/GPT-5-2025-08-07"), &w.alice)).await;
    assert_eq!(by_alias.status, StatusCode::OK, "{}", by_alias.body);
    assert_eq!(text(&by_alias, "/id"), "gpt-5");
    let hosted = call(
        s,
        bearer(
            get("/v1/models/deepinfra%2Fmeta-llama%2Fllama-4-scout-17b-16e-instruct"),
            &w.alice,
        ),
    )
    .await;
    assert_eq!(hosted.status, StatusCode::OK, "{}", hosted.body);
    assert_eq!(text(&hosted, "/provider"), "deepinfra");
    for unknown in ["no-such-model", "-bad-", "gpt-4o%20"] {
        let answer = call(s, bearer(get(&format!("/v1/models/{unknown}")), &w.alice)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{unknown}");
    }

    // The schedule: history and the price in force.
    let prices = call(s, bearer(get("/v1/models/gpt-4o/prices"), &w.alice)).await;
    assert_eq!(prices.status, StatusCode::OK, "{}", prices.body);
    assert_eq!(text(&prices, "/model_id"), "gpt-4o");
    let states: Vec<&str> = prices.body["prices"]
        .as_array()
        .expect("prices")
        .iter()
        .map(|p| p["state"].as_str().expect("a state"))
        .collect();
    assert_eq!(states, ["past", "in_force"]);
    assert_eq!(text(&prices, "/prices/0/input"), "5");
    assert!(prices.body["prices"][0]["recorded_by"].is_null());

    // API keys: with `read` they list; without it they may not.
    let key_of = |scopes: Value| {
        bearer(
            post(
                &format!("/v1/orgs/{}/api-keys", w.acme),
                &json!({"name": "k", "scopes": scopes}),
            ),
            &w.alice,
        )
    };
    let reader = call(s, key_of(json!(["read"]))).await;
    let reader = text(&reader, "/key").to_owned();
    let writer = call(s, key_of(json!(["usage:write"]))).await;
    let writer = text(&writer, "/key").to_owned();
    let listed = call(s, bearer(get("/v1/models?limit=1"), &reader)).await;
    assert_eq!(listed.status, StatusCode::OK);
    for uri in [
        "/v1/models",
        "/v1/models/gpt-4o",
        "/v1/models/gpt-4o/prices",
    ] {
        let refused = call(s, bearer(get(uri), &writer)).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{uri}");
    }
    fixture.close().await;
}

async fn admins_add_models_and_dated_prices(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let w = world(&fixture).await;
    let s = &w.service;
    let model = json!({
        "id": "Acme-Large-2", "provider": "acme", "class": "pro",
        "aliases": ["acme-large-latest", "ACME-LARGE-LATEST", "acme-large-2", "gpt-4o-acme"],
        "context_window_tokens": 200000,
        "price": {"input": "3", "cached_input": "0.3", "output": "15",
                  "tiers": [{"above_prompt_tokens": 100000, "input": "6", "output": "22.5"}]}
    });

    // Only admins.
    let refused = call(s, bearer(post("/v1/admin/models", &model), &w.alice)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let added = call(s, bearer(post("/v1/admin/models", &model), &w.admin)).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    assert_eq!(
        added.body,
        json!({"id": "acme-large-2", "provider": "acme", "class": "pro",
               "aliases": ["acme-large-latest", "gpt-4o-acme"], "context_window_tokens": 200000,
               "source": "admin",
               "price": {"effective_from": "2026-11-26T00:00:00Z", "input": "3",
                         "cached_input": "0.3", "cache_write": "3", "output": "15",
                         "tiers": [{"above_prompt_tokens": 100000, "input": "6",
                                    "cached_input": "6", "cache_write": "6",
                                    "output": "22.5"}]}})
    );
    let location = location_of(&added).to_owned();
    assert_eq!(location, "/v1/models/acme-large-2");
    let fetched = call(s, bearer(get("/v1/models/acme-large-latest"), &w.alice)).await;
    assert_eq!(fetched.body, added.body);

    // Names are unique across ids and aliases.
    for (id, aliases) in [
        ("acme-large-2", json!([])),
        ("acme-large-latest", json!([])),
        ("acme-other", json!(["ACME-LARGE-2"])),
    ] {
        let again = json!({"id": id, "provider": "acme", "class": "pro", "aliases": aliases,
                           "price": {"input": "1", "output": "1"}});
        let conflict = call(s, bearer(post("/v1/admin/models", &again), &w.admin)).await;
        assert_eq!(
            conflict.status,
            StatusCode::CONFLICT,
            "{id}: {}",
            conflict.body
        );
    }
    // Malformed fields, and a first price in the past.
    for bad in [
        json!({"id": "x", "provider": "acme", "class": "Pro", "price": {"input": "1", "output": "1"}}),
        json!({"id": "x", "provider": "acme", "class": "pro", "price": {"input": "1.", "output": "1"}}),
        json!({"id": "x", "provider": "acme", "class": "pro", "price": {"input": "100000.1", "output": "1"}}),
        json!({"id": "x", "provider": "acme", "class": "pro", "context_window_tokens": 0,
               "price": {"input": "1", "output": "1"}}),
        json!({"id": "x", "provider": "acme", "class": "pro",
               "price": {"input": "1", "output": "1", "effective_from": "2026-11-25"}}),
        json!({"id": "x", "provider": "acme", "class": "pro",
               "price": {"input": "1", "output": "1", "tiers": [
                   {"above_prompt_tokens": 5, "input": "1", "output": "1"},
                   {"above_prompt_tokens": 5, "input": "2", "output": "2"}]}}),
    ] {
        let answer = call(s, bearer(post("/v1/admin/models", &bad), &w.admin)).await;
        assert!(
            answer.status == StatusCode::UNPROCESSABLE_ENTITY
                || answer.status == StatusCode::BAD_REQUEST,
            "{bad}: {} {}",
            answer.status,
            answer.body
        );
    }
    assert_eq!(
        call(s, bearer(get("/v1/models/x"), &w.alice)).await.status,
        StatusCode::NOT_FOUND
    );

    // A price in the past is refused and changes nothing.
    let prices = "/v1/admin/models/acme-large-latest/prices";
    let schedule = || bearer(get("/v1/models/acme-large-2/prices"), &w.admin);
    let before = call(s, schedule()).await.body;
    let past = json!({"effective_from": "2026-11-25T23:59:59Z", "input": "1", "output": "2"});
    let refused = call(s, bearer(post(prices, &past), &w.admin)).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert!(
        text(&refused, "/detail").contains("in the past"),
        "{}",
        refused.body
    );
    assert_eq!(call(s, schedule()).await.body, before);
    assert_eq!(audited(s, &w.admin, "prices.put").await.len(), 0);
    // Non-admins may not add prices.
    let december = json!({"effective_from": "2026-12-01", "input": "2", "output": "12"});
    let refused = call(s, bearer(post(prices, &december), &w.alice)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    // The price now in force cannot be replaced.
    let now = json!({"effective_from": "2026-11-26", "input": "9", "output": "9"});
    let in_force = call(s, bearer(post(prices, &now), &w.admin)).await;
    assert_eq!(in_force.status, StatusCode::CONFLICT, "{}", in_force.body);

    // A future price is added (201), then replaced while still in the future (200).
    let scheduled = call(s, bearer(post(prices, &december), &w.admin)).await;
    assert_eq!(scheduled.status, StatusCode::CREATED, "{}", scheduled.body);
    assert_eq!(location_of(&scheduled), "/v1/models/acme-large-2/prices");
    assert_eq!(
        text(&scheduled, "/price/effective_from"),
        "2026-12-01T00:00:00Z"
    );
    let december =
        json!({"effective_from": "2026-12-01T00:00:00Z", "input": "2.5", "output": "12"});
    let replaced = call(s, bearer(post(prices, &december), &w.admin)).await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    let after = call(s, schedule()).await.body;
    let entries = after["prices"].as_array().expect("prices");
    assert_eq!(entries.len(), 2, "{after}");
    assert_eq!(entries[0]["state"], "in_force");
    assert_eq!(
        (entries[1]["state"].clone(), entries[1]["input"].clone()),
        (json!("scheduled"), json!("2.5"))
    );
    assert!(entries[1]["recorded_by"].is_string());
    let now_price = call(s, bearer(get("/v1/models/acme-large-2"), &w.alice)).await;
    assert_eq!(text(&now_price, "/price/input"), "3");

    // A week later: December's price is in force for new calls, but a call on November 27
    // keeps the price it had.
    fixture.clock.advance_seconds(7 * DAY_SECONDS);
    let alice = sign_in(s, "alice@acme.example", PASSWORD).await;
    let admin = sign_in(s, ADMIN, PASSWORD).await;
    let estimate = |at: Option<&str>| {
        let mut body = json!({"org_id": w.acme, "model": "acme-large-2",
                              "prompt": "How much?", "expected_output_tokens": 1000000});
        if let Some(at) = at {
            body["at"] = json!(at);
        }
        bearer(post("/v1/estimate", &body), &alice)
    };
    let old = call(s, estimate(Some("2026-11-27T12:00:00Z"))).await;
    assert_eq!(old.status, StatusCode::OK, "{}", old.body);
    assert_eq!(text(&old, "/price/output"), "15");
    assert_eq!(text(&old, "/price/effective_from"), "2026-11-26T00:00:00Z");
    assert_eq!(text(&old, "/cost/output_usd"), "15");
    let new = call(s, estimate(None)).await;
    assert_eq!(text(&new, "/price/output"), "12");
    assert_eq!(text(&new, "/price/effective_from"), "2026-12-01T00:00:00Z");
    assert_eq!(text(&new, "/cost/output_usd"), "12");
    // Tokens are counted with the model's own tokenizer, whatever name the request used: the
    // alias `gpt-4o-acme` would be o200k, the model `acme-large-2` has no public tokenizer.
    let prompt = "Counted by the model, not by its name. ".repeat(20);
    let by_alias = json!({"org_id": w.acme, "model": "gpt-4o-acme", "prompt": prompt,
                          "expected_output_tokens": 1});
    let answer = call(s, bearer(post("/v1/estimate", &by_alias), &alice)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(text(&answer, "/model/id"), "acme-large-2");
    assert_eq!(text(&answer, "/tokens/encoding"), "estimated");
    assert_eq!(
        number(&answer, "/tokens/prompt"),
        count_text("acme-large-2", &prompt)
            .expect("counts")
            .tokens()
    );
    assert_ne!(
        count_text("acme-large-2", &prompt)
            .expect("counts")
            .tokens(),
        count_text("gpt-4o-acme", &prompt).expect("counts").tokens()
    );
    // …and December's price, now in force, can no longer be replaced.
    let late = call(s, bearer(post(prices, &december), &admin)).await;
    assert_eq!(
        late.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        late.body
    );

    // Every change is in the audit log, with who made it.
    let added = audited(s, &admin, "models.add").await;
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["target"], "acme-large-2");
    assert!(added[0]["actor"].is_string());
    let put = audited(s, &admin, "prices.put").await;
    assert_eq!(put.len(), 2);
    assert_eq!(put[1]["details"]["price"]["input"], "2.5");
    fixture.close().await;
}

async fn org_custom_prices_win(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let w = world(&fixture).await;
    let s = &w.service;
    let custom = format!("/v1/admin/orgs/{}/models/gpt-4o/prices", w.acme);
    let price = json!({"input": "2", "cached_input": "1", "output": "8"});
    let refused = call(s, bearer(post(&custom, &price), &w.alice)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let unknown_org = format!("/v1/admin/orgs/{}/models/gpt-4o/prices", OrgId::generate());
    assert_eq!(
        call(s, bearer(post(&unknown_org, &price), &w.admin))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let unknown_model = format!("/v1/admin/orgs/{}/models/nope/prices", w.acme);
    assert_eq!(
        call(s, bearer(post(&unknown_model, &price), &w.admin))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Before: the catalog's price.
    let own = format!("/v1/orgs/{}/models/gpt-4o/prices", w.acme);
    let before = call(s, bearer(get(&own), &w.alice)).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.body);
    assert_eq!(before.body["prices"], json!([]));
    assert_eq!(text(&before, "/effective/source"), "catalog");

    let added = call(s, bearer(post(&custom, &price), &w.admin)).await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    assert_eq!(location_of(&added), own);
    let after = call(s, bearer(get(&own), &w.alice)).await;
    assert_eq!(text(&after, "/effective/source"), "org");
    assert_eq!(text(&after, "/effective/input"), "2");
    assert_eq!(text(&after, "/prices/0/state"), "in_force");

    // The estimate uses it for Acme, and the catalog's for Globex.
    let body = |org: &str| {
        json!({"org_id": org, "model": "gpt-4o", "prompt": "Hello there, general.",
               "expected_output_tokens": 1000000})
    };
    let acme = call(s, bearer(post("/v1/estimate", &body(&w.acme)), &w.alice)).await;
    assert_eq!(acme.status, StatusCode::OK, "{}", acme.body);
    assert_eq!(text(&acme, "/price/source"), "org");
    assert_eq!(text(&acme, "/cost/output_usd"), "8");
    let globex = call(s, bearer(post("/v1/estimate", &body(&w.globex)), &w.admin)).await;
    assert_eq!(text(&globex, "/price/source"), "catalog");
    assert_eq!(text(&globex, "/cost/output_usd"), "10");
    // Another org's prices are not Alice's to read.
    let foreign = format!("/v1/orgs/{}/models/gpt-4o/prices", w.globex);
    assert_eq!(
        call(s, bearer(get(&foreign), &w.alice)).await.status,
        StatusCode::NOT_FOUND
    );
    let entries = audited(s, &w.admin, "org_prices.put").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["org"], json!(w.acme));
    fixture.close().await;
}

async fn estimates_count_price_and_fund(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let w = world(&fixture).await;
    let s = &w.service;
    let prompt = "The quick brown fox jumps over the lazy dog. Ünïcödé, 日本語, and code: \
                  fn main() { println!(\"{}\", 1 + 2); }"
        .repeat(3);

    // A GPT model: o200k, exactly Python tiktoken's count.
    let gpt = json!({"org_id": w.acme, "model": "gpt-4o", "prompt": prompt,
                     "expected_output_tokens": 1000, "cached_input_tokens": 10});
    let answer = call(s, bearer(post("/v1/estimate", &gpt), &w.alice)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let expected = count_text("gpt-4o", &prompt).expect("counts").tokens();
    assert_eq!(number(&answer, "/tokens/prompt"), expected);
    assert_eq!(number(&answer, "/tokens/input"), expected - 10);
    assert_eq!(number(&answer, "/tokens/cached_input"), 10);
    assert_eq!(number(&answer, "/tokens/output"), 1000);
    assert_eq!(number(&answer, "/tokens/total"), expected + 1000);
    assert_eq!(text(&answer, "/tokens/encoding"), "o200k_base");
    assert_eq!(answer.body["tokens"]["estimated"], false);
    assert_eq!(text(&answer, "/price/source"), "catalog");
    assert!(answer.body["price"]["tier_above_prompt_tokens"].is_null());
    // 2.5 USD per 1M uncached, 1.25 cached, 10 output: exact, then rounded up once to µCR.
    let per_million = |tokens: u64, usd: &str| {
        Decimal::from(tokens) * usd.parse::<Decimal>().expect("a decimal")
            / Decimal::from(1_000_000)
    };
    let input_usd = per_million(expected - 10, "2.5");
    let cached_usd = per_million(10, "1.25");
    let output_usd = per_million(1000, "10");
    assert_eq!(decimal(&answer, "/cost/input_usd"), input_usd);
    assert_eq!(decimal(&answer, "/cost/cached_input_usd"), cached_usd);
    assert_eq!(decimal(&answer, "/cost/output_usd"), output_usd);
    let total = input_usd + cached_usd + output_usd;
    assert_eq!(decimal(&answer, "/cost/total_usd"), total);
    let micro = (total * Decimal::from(1_000_000)).ceil();
    assert_eq!(
        Decimal::from(number(&answer, "/cost/total_micro_cr")),
        micro
    );
    assert_eq!(text(&answer, "/cost/cr_face_value_usd"), "1");
    assert_eq!(answer.body["budgets"]["allowed"], true);
    assert_eq!(answer.body["budgets"]["applying"], json!([]));
    assert_eq!(text(&answer, "/at"), "2026-11-26T00:00:00Z");

    // Nothing to pay with yet.
    assert_eq!(text(&answer, "/funding/source"), "insufficient");
    assert_eq!(text(&answer, "/funding/token_asset"), "TOK.pro.2026-11");
    assert_eq!(number(&answer, "/funding/available/wallet_micro_cr"), 0);

    // A Claude model: no public tokenizer, an estimate that says so.
    let claude = json!({"org_id": w.acme, "model": "Claude-Sonnet-4-5-20250929",
                        "prompt": prompt, "expected_output_tokens": 0});
    let answer = call(s, bearer(post("/v1/estimate", &claude), &w.alice)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(text(&answer, "/model/id"), "claude-sonnet-4-5");
    assert_eq!(text(&answer, "/tokens/encoding"), "estimated");
    assert_eq!(answer.body["tokens"]["estimated"], true);
    let claude_count = count_text("claude-sonnet-4-5", &prompt)
        .expect("counts")
        .tokens();
    assert_eq!(number(&answer, "/tokens/prompt"), claude_count);
    assert!(claude_count > expected, "{claude_count} vs {expected}");

    // Chat messages: the same text costs the cookbook's overhead more.
    let messages = json!([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": prompt, "name": "ada"}]);
    let chat = json!({"org_id": w.acme, "model": "gpt-4o", "messages": messages,
                      "expected_output_tokens": 0});
    let answer = call(s, bearer(post("/v1/estimate", &chat), &w.alice)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let chat_messages = vec![
        ChatMessage {
            role: "system".into(),
            content: "Be brief.".into(),
            name: None,
        },
        ChatMessage {
            role: "user".into(),
            content: prompt.clone(),
            name: Some("ada".into()),
        },
    ];
    let chat_count = count_chat("gpt-4o", &chat_messages)
        .expect("counts")
        .tokens();
    assert_eq!(number(&answer, "/tokens/prompt"), chat_count);
    assert!(chat_count > expected);

    // Refusals.
    let refusals = [
        (
            json!({"org_id": w.acme, "model": "gpt-4o", "prompt": "hi", "messages": [],
                "expected_output_tokens": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"org_id": w.acme, "model": "gpt-4o", "expected_output_tokens": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"org_id": w.acme, "model": "gpt-4o", "prompt": "hi",
                "expected_output_tokens": 1, "cached_input_tokens": 2}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"model": "gpt-4o", "prompt": "hi", "expected_output_tokens": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"org_id": w.acme, "model": "nope", "prompt": "hi",
                "expected_output_tokens": 1}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"org_id": w.acme, "model": "gpt-4o", "prompt": "hi",
                "expected_output_tokens": 1, "at": "2020-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"org_id": w.globex, "model": "gpt-4o", "prompt": "hi",
                "expected_output_tokens": 1}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"org_id": w.acme, "model": "gpt-4o", "prompt": "hi",
                "expected_output_tokens": 1, "extra": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"org_id": w.acme, "model": "gpt-4o", "prompt": "x".repeat(4 * 1024 * 1024 + 1),
                "expected_output_tokens": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (body, status) in refusals {
        let answer = call(s, bearer(post("/v1/estimate", &body), &w.alice)).await;
        assert_eq!(answer.status, status, "{}", answer.body);
    }
    // At a past instant, the price then: gpt-4o cost 15 USD per 1M output before 2024-10-02.
    let then = json!({"org_id": w.acme, "model": "gpt-4o", "prompt": "",
                      "expected_output_tokens": 1000000, "at": "2024-06-01T00:00:00Z"});
    let answer = call(s, bearer(post("/v1/estimate", &then), &w.alice)).await;
    assert_eq!(text(&answer, "/cost/output_usd"), "15");
    assert_eq!(text(&answer, "/funding/token_asset"), "TOK.pro.2024-06");

    // The wallet pays once credited (through the admin credits route).
    let credit = call(
        s,
        bearer(
            post(
                &format!("/v1/admin/orgs/{}/credits", w.acme),
                &json!({"kind": "top_up", "amount_micro_cr": 25_000_000, "reason": "invoice"}),
            ),
            &w.admin,
        )
        .insert_header(("Idempotency-Key", "estimate-credit")),
    )
    .await;
    assert_eq!(credit.status, StatusCode::CREATED, "{}", credit.body);
    let answer = call(s, bearer(post("/v1/estimate", &gpt), &w.alice)).await;
    assert_eq!(
        text(&answer, "/funding/source"),
        "wallet",
        "{}",
        answer.body
    );
    assert_eq!(
        number(&answer, "/funding/available/wallet_micro_cr"),
        25_000_000
    );
    // A call the wallet cannot pay is insufficient.
    let huge = json!({"org_id": w.acme, "model": "gpt-4o", "prompt": "hi",
                      "expected_output_tokens": 10_000_000u64});
    let answer = call(s, bearer(post("/v1/estimate", &huge), &w.alice)).await;
    assert_eq!(text(&answer, "/funding/source"), "insufficient");

    // Allotted tokens of the class and cycle pay before the wallet.
    let ledger = &fixture.assembled.ledger;
    let asset = AssetCode::token("pro", "2026-11").expect("an asset");
    ledger.ensure_asset(&asset).await.expect("the asset");
    let org = OrgId::parse(&w.acme).expect("an org");
    let alloc = ledger
        .ensure_account(&asset, Owner::Org(org), AccountKind::Alloc)
        .await
        .expect("alloc");
    let issuance = ledger
        .ensure_account(&asset, Owner::Provider, AccountKind::Issuance)
        .await
        .expect("issuance");
    let movement = Movement::new(
        issuance.account.id(),
        alloc.account.id(),
        asset,
        Amount::new(1_000_000).expect("an amount"),
        TransferCode::Allotment,
    )
    .expect("a movement");
    let results = ledger
        .create_transfers(vec![Transfer::movement(TransferId::generate(), movement)])
        .await
        .expect("committed");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let answer = call(s, bearer(post("/v1/estimate", &gpt), &w.alice)).await;
    assert_eq!(text(&answer, "/funding/source"), "alloc", "{}", answer.body);
    assert_eq!(
        number(&answer, "/funding/available/alloc_tokens"),
        1_000_000
    );
    // Not enough tokens for the huge call: the wallet is asked next, and it cannot pay either.
    let answer = call(s, bearer(post("/v1/estimate", &huge), &w.alice)).await;
    assert_eq!(text(&answer, "/funding/source"), "insufficient");

    // An API key acts in its own org: no org_id needed; another org's is not found.
    let key = call(
        s,
        bearer(
            post(
                &format!("/v1/orgs/{}/api-keys", w.acme),
                &json!({"name": "estimator", "scopes": ["read"]}),
            ),
            &w.alice,
        ),
    )
    .await;
    let key = text(&key, "/key").to_owned();
    let own = json!({"model": "gpt-4o", "prompt": prompt, "expected_output_tokens": 1000,
                     "cached_input_tokens": 10});
    let answer = call(s, bearer(post("/v1/estimate", &own), &key)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(text(&answer, "/org_id"), w.acme);
    let foreign = json!({"org_id": w.globex, "model": "gpt-4o", "prompt": "hi",
                         "expected_output_tokens": 1});
    let answer = call(s, bearer(post("/v1/estimate", &foreign), &key)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    // Nothing of this moved value or wrote to the audit log.
    assert!(audited(s, &w.admin, "prices.put").await.is_empty());
    assert_eq!(NOV_26.as_micros(), 1_795_651_200_000_000);
    fixture.close().await;
}

/// A small LiteLLM map: a new chat model, gpt-4o at its catalog price, gpt-4o-mini at a new
/// price, and entries to skip.
fn small_map() -> Value {
    json!({
        "sample_spec": {"litellm_provider": "openai", "mode": "chat"},
        "acme-chat-1": {"litellm_provider": "acme", "mode": "chat", "max_input_tokens": 100000,
                        "input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},
        "acme-embed": {"litellm_provider": "acme", "mode": "embedding",
                       "input_cost_per_token": 1e-07},
        "acme-broken": {"litellm_provider": "acme", "mode": "chat",
                        "input_cost_per_token": 1e-06},
        "gpt-4o": {"litellm_provider": "openai", "mode": "chat",
                   "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                   "cache_read_input_token_cost": 1.25e-06},
        "gpt-4o-mini": {"litellm_provider": "openai", "mode": "chat",
                        "input_cost_per_token": 1e-07, "output_cost_per_token": 4e-07}
    })
}

async fn imports_of_litellm_maps(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let w = world(&fixture).await;
    let s = &w.service;
    let refused = call(
        s,
        bearer(post("/v1/admin/prices/import", &small_map()), &w.alice),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // A dry run reports and writes nothing.
    let dry = call(
        s,
        bearer(
            post("/v1/admin/prices/import?dry_run=true", &small_map()),
            &w.admin,
        ),
    )
    .await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    assert_eq!(dry.body["dry_run"], true);
    assert_eq!(
        (
            number(&dry, "/entries"),
            number(&dry, "/models_added"),
            number(&dry, "/prices_added"),
            number(&dry, "/unchanged")
        ),
        (6, 1, 1, 1),
        "{}",
        dry.body
    );
    assert_eq!(
        dry.body["skipped"],
        json!({"no_price": 1, "not_a_text_model": 1, "sample_spec": 1})
    );
    let skipped = dry.body["skipped_entries"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 3);
    let broken = skipped
        .iter()
        .find(|entry| entry["key"] == "acme-broken")
        .expect("acme-broken");
    assert_eq!(broken["reason"], "no_price");
    assert!(broken["detail"]
        .as_str()
        .expect("detail")
        .contains("output_cost_per_token"));
    assert_eq!(
        call(s, bearer(get("/v1/models/acme-chat-1"), &w.alice))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let mini = call(s, bearer(get("/v1/models/gpt-4o-mini/prices"), &w.alice)).await;
    assert_eq!(mini.body["prices"].as_array().expect("prices").len(), 1);
    assert!(audited(s, &w.admin, "prices.import").await.is_empty());

    // In the past: refused.
    let past = call(
        s,
        bearer(
            post(
                "/v1/admin/prices/import?effective_from=2026-11-01",
                &small_map(),
            ),
            &w.admin,
        ),
    )
    .await;
    assert_eq!(
        past.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        past.body
    );

    // For real, from December on.
    let uri = "/v1/admin/prices/import?effective_from=2026-12-01T00:00:00Z";
    let done = call(s, bearer(post(uri, &small_map()), &w.admin)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["dry_run"], false);
    assert_eq!(
        (
            number(&done, "/models_added"),
            number(&done, "/prices_added"),
            number(&done, "/unchanged"),
            number(&done, "/conflicts")
        ),
        (1, 1, 1, 0)
    );
    let added = call(s, bearer(get("/v1/models/acme-chat-1"), &w.alice)).await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    assert_eq!(text(&added, "/source"), "import");
    assert_eq!(text(&added, "/class"), "std");
    assert_eq!(number(&added, "/context_window_tokens"), 100_000);
    assert!(
        added.body["price"].is_null(),
        "not in force before December"
    );
    let mini = call(s, bearer(get("/v1/models/gpt-4o-mini/prices"), &w.alice)).await;
    let entries = mini.body["prices"].as_array().expect("prices");
    assert_eq!(entries.len(), 2, "{}", mini.body);
    assert_eq!(
        (entries[1]["input"].clone(), entries[1]["state"].clone()),
        (json!("0.1"), json!("scheduled"))
    );
    let audit = audited(s, &w.admin, "prices.import").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["details"]["models_added"], 1);
    assert_eq!(audit[0]["details"]["prices_added"], 1);

    // Again: nothing new.
    let again = call(s, bearer(post(uri, &small_map()), &w.admin)).await;
    assert_eq!(
        (
            number(&again, "/models_added"),
            number(&again, "/prices_added"),
            number(&again, "/unchanged")
        ),
        (0, 0, 3),
        "{}",
        again.body
    );
    // Not a map.
    let not_a_map = call(
        s,
        bearer(post("/v1/admin/prices/import", &json!([1, 2])), &w.admin),
    )
    .await;
    assert_eq!(not_a_map.status, StatusCode::BAD_REQUEST);
    fixture.close().await;
}

/// LiteLLM's real map (4,878 entries, 3.5 MB) through HTTP: thousands of models added.
async fn import_of_the_real_litellm_map(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let w = world(&fixture).await;
    let s = &w.service;
    let map = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pricing/tests/fixtures/litellm_model_prices.json"
    ))
    .expect("the fixture");
    let request = test::TestRequest::post()
        .uri("/v1/admin/prices/import")
        .insert_header(("content-type", "application/json"))
        .set_payload(map);
    let started = std::time::Instant::now();
    let done = call(s, bearer(request, &w.admin)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let added = number(&done, "/models_added");
    eprintln!(
        "imported in {:?}: {} models added, {} prices added, {} unchanged, skipped {}",
        started.elapsed(),
        added,
        number(&done, "/prices_added"),
        number(&done, "/unchanged"),
        done.body["skipped"]
    );
    assert!(added >= 1_000, "{}", done.body);
    assert_eq!(number(&done, "/entries"), 4_878);
    assert_eq!(
        done.body["skipped_entries"]
            .as_array()
            .expect("skipped")
            .len(),
        200
    );
    let page = call(s, bearer(get("/v1/models?limit=1000"), &w.alice)).await;
    assert_eq!(page.body["models"].as_array().expect("models").len(), 1000);
    assert!(page.body["next"].is_string());
    fixture.close().await;
}

credex_tests::on_both_backends!(
    the_catalog_in_pages,
    admins_add_models_and_dated_prices,
    org_custom_prices_win,
    estimates_count_price_and_fund,
    imports_of_litellm_maps,
    import_of_the_real_litellm_map,
);
