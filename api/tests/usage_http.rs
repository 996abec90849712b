//! Usage over HTTP on both backends: a program with a `usage:write` key reports a call and is
//! charged (attributed to its key); the same batch again answers the recorded charge (200); a
//! batch the wallet cannot pay is refused with 402 problem+json and changes nothing; the org's
//! owners set a hard budget for a task, a charge past it is refused with 402 `budget-exceeded`,
//! and members read the budget's spend and the threshold it crossed; members page through
//! what was recorded, and a key without `read` cannot.

mod common;

use actix_web::http::StatusCode;
use actix_web::test;
use common::{bearer, call, sign_in, Answer, Fixture, ADMIN, PASSWORD};
use credex_api::startup::app;
use credex_tests::{on_both_backends, TestDb};
use serde_json::{json, Value};

fn request(method: &str, uri: &str, token: &str, body: Option<Value>) -> test::TestRequest {
    let request = match method {
        "GET" => test::TestRequest::get(),
        "POST" => test::TestRequest::post(),
        "DELETE" => test::TestRequest::delete(),
        "PUT" => test::TestRequest::put(),
        other => panic!("{other}"),
    }
    .uri(uri);
    let request = bearer(request, token);
    match body {
        Some(body) => request.set_json(body),
        None => request,
    }
}

fn expect(answer: &Answer, status: StatusCode, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
}

async fn usage_through_http(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let made = call(
        &service,
        request(
            "POST",
            "/v1/admin/orgs",
            &admin,
            Some(json!({"name": "Acme", "plan": "enterprise"})),
        ),
    )
    .await;
    expect(&made, StatusCode::CREATED, "an org");
    let org = made.body["id"].as_str().expect("an id").to_owned();
    let owner = json!({"email": "alice@acme.example", "password": PASSWORD, "org_id": org,
        "role": "owner"});
    let made = call(
        &service,
        request("POST", "/v1/admin/users", &admin, Some(owner)),
    )
    .await;
    expect(&made, StatusCode::CREATED, "an owner");
    let credit = call(
        &service,
        request(
            "POST",
            &format!("/v1/admin/orgs/{org}/credits"),
            &admin,
            Some(json!({"kind": "top_up", "amount_micro_cr": 5_000_000, "reason": "invoice"})),
        )
        .insert_header(("Idempotency-Key", "acme-top-up")),
    )
    .await;
    expect(&credit, StatusCode::CREATED, "credits");
    let alice = sign_in(&service, "alice@acme.example", PASSWORD).await;
    let made = call(
        &service,
        request(
            "POST",
            &format!("/v1/orgs/{org}/api-keys"),
            &alice,
            Some(json!({"name": "worker", "scopes": ["usage:write"]})),
        ),
    )
    .await;
    expect(&made, StatusCode::CREATED, "a key");
    let key = made.body["key"].as_str().expect("the key").to_owned();
    let key_id = made.body["api_key"]["id"]
        .as_str()
        .expect("its id")
        .to_owned();
    let usage = format!("/v1/orgs/{org}/usage");
    let wallet = || async {
        let answer = call(
            &service,
            request("GET", &format!("/v1/orgs/{org}/balances"), &alice, None),
        )
        .await;
        expect(&answer, StatusCode::OK, "balances");
        answer
            .body
            .as_array()
            .expect("a list")
            .iter()
            .find(|b| b["asset"] == "CR")
            .map_or(0, |b| b["balance"]["available"].as_i64().expect("a number"))
    };
    assert_eq!(wallet().await, 5_000_000);

    // 100,000 input tokens of a pro model at $2 per 1M: 0.2 CR. No cycle is open, so no
    // token balance covers it: the wallet pays.
    let batch = json!({"events": [{
        "id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e6f",
        "model": "gpt-6-sol",
        "input_tokens": 100_000,
        "output_tokens": 0,
        "task": "triage",
        "metadata": {"ticket": 42},
    }]});
    let first = call(&service, request("POST", &usage, &key, Some(batch.clone()))).await;
    expect(&first, StatusCode::CREATED, "recorded");
    let event = &first.body["events"][0];
    assert_eq!(event["cost_micro_cr"], 200_000, "{event}");
    assert_eq!(event["from_wallet_micro_cr"], 200_000);
    assert_eq!(
        event["api_key_id"],
        key_id.as_str(),
        "attributed to the calling key"
    );
    assert_eq!(event["metadata"]["ticket"], 42);
    assert_eq!(event["replayed"], false);
    assert_eq!(first.body["charged"]["from_wallet_micro_cr"], 200_000);
    assert_eq!(wallet().await, 4_800_000);

    // The same batch again, a minute later: the recorded charge, nothing moved. (The events
    // name no `at`: the server's clock stamped them, and a replay is not held to it.)
    let stamped = credex_ledger::Clock::now(fixture.clock.as_ref());
    fixture.clock.advance_seconds(60);
    let again = call(&service, request("POST", &usage, &key, Some(batch))).await;
    fixture.clock.set(stamped);
    expect(&again, StatusCode::OK, "a replay");
    assert_eq!(again.body["events"][0]["replayed"], true);
    assert_eq!(again.body["charged"]["events"], 0);
    assert_eq!(wallet().await, 4_800_000);

    // 1,000,000 output tokens at $10 per 1M: 10 CR, more than the wallet holds. With a call
    // that fits before it, nothing is charged.
    let short = json!({"events": [
        {"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e70", "model": "gpt-6-sol",
         "input_tokens": 10, "output_tokens": 0},
        {"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e71", "model": "gpt-6-sol",
         "input_tokens": 0, "output_tokens": 1_000_000},
    ]});
    let refused = call(&service, request("POST", &usage, &key, Some(short))).await;
    expect(&refused, StatusCode::PAYMENT_REQUIRED, "cannot pay");
    assert_eq!(
        refused
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    assert_eq!(
        refused.body["type"],
        "https://credex.dev/problems/payment-required"
    );
    let detail = refused.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("event 1") && detail.contains("cannot be paid"),
        "{detail}"
    );
    assert_eq!(wallet().await, 4_800_000);

    // Bad input: an unknown model (404), the same id twice (422), an event from the future.
    let unknown = json!({"events": [{"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e72",
        "model": "no-such-model", "input_tokens": 1, "output_tokens": 1}]});
    let answer = call(&service, request("POST", &usage, &key, Some(unknown))).await;
    expect(&answer, StatusCode::NOT_FOUND, "an unknown model");
    let twice = json!({"events": [
        {"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e73", "model": "gpt-6-sol", "input_tokens": 1,
         "output_tokens": 1},
        {"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e73", "model": "gpt-6-sol", "input_tokens": 2,
         "output_tokens": 1},
    ]});
    let answer = call(&service, request("POST", &usage, &key, Some(twice))).await;
    expect(&answer, StatusCode::UNPROCESSABLE_ENTITY, "an id twice");
    let future = json!({"events": [{"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e74",
        "model": "gpt-6-sol", "input_tokens": 1, "output_tokens": 1,
        "at": "2030-01-01T00:00:00Z"}]});
    let answer = call(&service, request("POST", &usage, &key, Some(future))).await;
    expect(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an event from the future",
    );
    assert!(answer.body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("events[0].at"));
    assert_eq!(wallet().await, 4_800_000);

    // A hard budget of 0.5 CR a month for the `triage` task (0.2 CR spent on it already this
    // month is not counted: it predates the budget). 0.4 CR fits, 0.2 CR more does not.
    let made = call(
        &service,
        request(
            "POST",
            &format!("/v1/orgs/{org}/budgets"),
            &alice,
            Some(
                json!({"name": "triage", "scope": {"kind": "task", "task": "triage"},
                "period": "month", "time_zone": "Europe/Paris", "limit_micro_cr": 500_000,
                "hard": true}),
            ),
        ),
    )
    .await;
    expect(&made, StatusCode::CREATED, "a budget");
    assert_eq!(made.body["thresholds"], json!([75, 90, 100]));
    let budget_id = made.body["id"].as_str().expect("an id").to_owned();
    let triage = |id: &str, input_tokens: u64| {
        json!({"events": [{"id": id, "model": "gpt-6-sol", "input_tokens": input_tokens,
            "output_tokens": 0, "task": "triage"}]})
    };
    let fits = triage("0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e80", 200_000);
    let answer = call(&service, request("POST", &usage, &key, Some(fits))).await;
    expect(&answer, StatusCode::CREATED, "within the budget");
    let over = triage("0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e81", 100_000);
    let answer = call(&service, request("POST", &usage, &key, Some(over))).await;
    expect(&answer, StatusCode::PAYMENT_REQUIRED, "past the budget");
    assert_eq!(
        answer.body["type"],
        "https://credex.dev/problems/budget-exceeded"
    );
    assert!(answer.body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains(&budget_id));
    assert_eq!(wallet().await, 4_400_000);
    let budgets = call(
        &service,
        request("GET", &format!("/v1/orgs/{org}/budgets"), &alice, None),
    )
    .await;
    expect(&budgets, StatusCode::OK, "budgets");
    assert_eq!(budgets.body[0]["spent_micro_cr"], 400_000);
    let alerts = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{org}/budget-alerts"),
            &alice,
            None,
        ),
    )
    .await;
    expect(&alerts, StatusCode::OK, "alerts");
    assert_eq!(alerts.body.as_array().map(Vec::len), Some(1));
    assert_eq!(alerts.body[0]["threshold"], 75);

    // Members read the history; the usage key, without `read`, cannot.
    let page = call(&service, request("GET", &usage, &alice, None)).await;
    expect(&page, StatusCode::OK, "the history");
    assert_eq!(page.body["events"].as_array().map(Vec::len), Some(2));
    assert_eq!(page.body["events"][0]["task"], "triage");
    let denied = call(&service, request("GET", &usage, &key, None)).await;
    expect(&denied, StatusCode::FORBIDDEN, "a key without read");

    // A cost preview says which budgets apply and whether they allow the call: an org-wide
    // hard budget of 0.01 CR does not allow 1,000 output tokens at $10 per 1M.
    let made = call(
        &service,
        request(
            "POST",
            &format!("/v1/orgs/{org}/budgets"),
            &alice,
            Some(
                json!({"name": "tight", "scope": {"kind": "org"}, "period": "day",
                "limit_micro_cr": 10_000, "hard": true}),
            ),
        ),
    )
    .await;
    expect(&made, StatusCode::CREATED, "an org budget");
    let tight = made.body["id"].as_str().expect("an id").to_owned();
    let preview = call(
        &service,
        request(
            "POST",
            "/v1/estimate",
            &alice,
            Some(
                json!({"org_id": org, "model": "gpt-6-sol", "prompt": "hello",
                "expected_output_tokens": 1_000}),
            ),
        ),
    )
    .await;
    expect(&preview, StatusCode::OK, "a preview");
    let budgets = &preview.body["budgets"];
    assert_eq!(budgets["allowed"], false, "{budgets}");
    let applying = budgets["applying"].as_array().expect("a list");
    assert_eq!(
        applying.len(),
        1,
        "the task budget does not apply: {budgets}"
    );
    assert_eq!(applying[0]["name"], "tight");
    assert_eq!(applying[0]["allows"], false);
    assert_eq!(preview.body["prompt_limit"]["plan"], "enterprise");
    assert_eq!(preview.body["prompt_limit"]["max_prompt_tokens"], 100_000);
    assert_eq!(preview.body["prompt_limit"]["within"], true);

    // The process's metrics: calls and cost charged by class, refusals by reason, thresholds.
    let response = test::call_service(
        &service,
        test::TestRequest::get()
            .uri("/metrics")
            .peer_addr("198.51.100.9:40000".parse().expect("an address"))
            .to_request(),
    )
    .await;
    let metrics = String::from_utf8(test::read_body(response).await.to_vec()).expect("UTF-8");
    for line in [
        "credex_usage_events_total{class=\"pro\"} 2",
        "credex_usage_cost_micro_cr_total{class=\"pro\"} 600000",
        "credex_usage_tokens_total{class=\"pro\",kind=\"input\"} 300000",
        "credex_usage_refused_total{reason=\"insufficient_funds\"} 1",
        "credex_usage_refused_total{reason=\"budget_exceeded\"} 1",
        "credex_budget_alerts_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // Analytics: totals by task (costliest first) and over all; by day.
    let totals = call(
        &service,
        request(
            "GET",
            &format!("{usage}/totals?group_by=task"),
            &alice,
            None,
        ),
    )
    .await;
    expect(&totals, StatusCode::OK, "totals");
    assert_eq!(totals.body["groups"][0]["key"], "triage", "{}", totals.body);
    assert_eq!(totals.body["groups"][0]["events"], 2);
    assert_eq!(totals.body["groups"][0]["cost_micro_cr"], 600_000);
    assert_eq!(totals.body["total"]["events"], 2);
    let by_day = call(
        &service,
        request(
            "GET",
            &format!("{usage}/totals?group_by=day&model=gpt-6-sol"),
            &alice,
            None,
        ),
    )
    .await;
    expect(&by_day, StatusCode::OK, "by day");
    assert_eq!(
        by_day.body["groups"][0]["key"], "2026-11-26",
        "{}",
        by_day.body
    );
    let bad = call(
        &service,
        request(
            "GET",
            &format!("{usage}/totals?group_by=day&user_id=nope"),
            &alice,
            None,
        ),
    )
    .await;
    expect(&bad, StatusCode::UNPROCESSABLE_ENTITY, "a bad filter");

    // The month's forecast: 0.6 CR spent on the 26th, all of it in the last 7 days, so 5 days
    // left add 0.6 × 5 / 7 CR, rounded up.
    let forecast = call(
        &service,
        request("GET", &format!("{usage}/forecast"), &alice, None),
    )
    .await;
    expect(&forecast, StatusCode::OK, "a forecast");
    assert_eq!(
        forecast.body["spent_micro_cr"], 600_000,
        "{}",
        forecast.body
    );
    assert_eq!(forecast.body["forecast_micro_cr"], 600_000 + 428_572);
    assert_eq!(forecast.body["period_end"], "2026-12-01T00:00:00Z");
    // Savings: a cheaper model of the same class for the same tokens, if the catalog has one.
    let savings = call(
        &service,
        request("GET", &format!("{usage}/savings"), &alice, None),
    )
    .await;
    expect(&savings, StatusCode::OK, "savings");
    // Two calls of 150,000 input tokens on average: $1.25 per 1M is the cheapest pro input
    // (gemini-2.5-pro below its long-context tier, gpt-5, gpt-5.1; ties go to the first id).
    assert_eq!(
        savings.body[0]["alternative"], "gemini-2.5-pro",
        "{}",
        savings.body
    );
    assert_eq!(savings.body[0]["alternative_cost_micro_cr"], 375_000);
    for saving in savings.body.as_array().expect("a list") {
        assert_eq!(saving["model"], "gpt-6-sol");
        assert_eq!(saving["class"], "pro");
        assert_ne!(saving["alternative"], "gpt-6-sol");
        let cost = saving["cost_micro_cr"].as_u64().expect("a cost");
        let alternative = saving["alternative_cost_micro_cr"]
            .as_u64()
            .expect("a cost");
        assert!(alternative < cost);
        assert_eq!(saving["savings_micro_cr"], cost - alternative);
    }

    // The CSV export: a header and one line per call.
    let response = test::call_service(
        &service,
        request("GET", &format!("/v1/orgs/{org}/usage.csv"), &alice, None)
            .peer_addr("198.51.100.9:40000".parse().expect("an address"))
            .to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = test::read_body(response).await;
    let text = String::from_utf8(body.to_vec()).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("id,occurred_at,"));
    assert!(lines[1].contains(",gpt-6-sol,pro,"), "{}", lines[1]);
    assert!(lines[1].contains("\"{\"\"ticket\"\":42}\""), "{}", lines[1]);

    // Reservations (with the tight daily budget deleted): the key holds a call's worst case
    // (10,000 output tokens: 0.1 CR from the wallet), settles it with the real call (2,000
    // output tokens: 0.02 CR), and the rest is free again.
    let deleted = call(
        &service,
        request(
            "DELETE",
            &format!("/v1/orgs/{org}/budgets/{tight}"),
            &alice,
            None,
        ),
    )
    .await;
    expect(&deleted, StatusCode::NO_CONTENT, "deleted");
    let reservations = format!("/v1/orgs/{org}/reservations");
    let before = wallet().await;
    let hold = json!({"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e80", "model": "gpt-6-sol",
        "input_tokens": 0, "output_tokens": 10_000, "timeout_seconds": 60, "task": "drafts"});
    let held = call(
        &service,
        request("POST", &reservations, &key, Some(hold.clone())),
    )
    .await;
    expect(&held, StatusCode::CREATED, "held");
    assert_eq!(held.body["state"], "pending", "{}", held.body);
    assert_eq!(held.body["from_wallet_micro_cr"], 100_000);
    assert_eq!(held.body["api_key_id"], key_id.as_str());
    let location = held
        .headers
        .get("location")
        .expect("a Location")
        .to_str()
        .expect("a Location")
        .to_owned();
    assert_eq!(
        location,
        format!("{reservations}/0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e80")
    );
    assert_eq!(
        wallet().await,
        before - 100_000,
        "held amounts are not available"
    );
    let replay = call(&service, request("POST", &reservations, &key, Some(hold))).await;
    expect(&replay, StatusCode::OK, "a replay");
    let read = call(&service, request("GET", &location, &alice, None)).await;
    expect(&read, StatusCode::OK, "read back");
    assert_eq!(read.body["cost_micro_cr"], 100_000);
    let used = json!({"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e81", "model": "gpt-6-sol",
        "input_tokens": 0, "output_tokens": 2_000, "task": "drafts"});
    let settle = format!("{location}/settle");
    let settled = call(&service, request("POST", &settle, &key, Some(used.clone()))).await;
    expect(&settled, StatusCode::CREATED, "settled");
    assert_eq!(
        settled.body["reservation"]["state"], "settled",
        "{}",
        settled.body
    );
    assert_eq!(settled.body["event"]["from_wallet_micro_cr"], 20_000);
    assert_eq!(wallet().await, before - 20_000);
    let again = call(&service, request("POST", &settle, &key, Some(used))).await;
    expect(&again, StatusCode::OK, "a settled replay");
    assert_eq!(again.body["replayed"], true);
    let released = call(
        &service,
        request("POST", &format!("{location}/release"), &key, None),
    )
    .await;
    expect(&released, StatusCode::CONFLICT, "settled, not releasable");
    // A worst case past the wallet is refused with 402, holding nothing; unknown ids are 404;
    // a bad timeout is 422.
    let huge = json!({"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e82", "model": "gpt-6-sol",
        "input_tokens": 0, "output_tokens": 100_000_000, "task": "drafts"});
    let refused = call(&service, request("POST", &reservations, &key, Some(huge))).await;
    expect(&refused, StatusCode::PAYMENT_REQUIRED, "cannot hold");
    let missing = call(
        &service,
        request(
            "POST",
            &format!("{reservations}/0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e83/release"),
            &key,
            None,
        ),
    )
    .await;
    expect(&missing, StatusCode::NOT_FOUND, "no such reservation");
    let bad = json!({"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e84", "model": "gpt-6-sol",
        "input_tokens": 1, "output_tokens": 1, "timeout_seconds": 0});
    let bad = call(&service, request("POST", &reservations, &key, Some(bad))).await;
    expect(&bad, StatusCode::UNPROCESSABLE_ENTITY, "a bad timeout");
    // An overdraft allowance set by an admin, read by the org; a repayment of more than is
    // owed is refused.
    let allowance = call(
        &service,
        request(
            "PUT",
            &format!("/v1/admin/orgs/{org}/overdraft"),
            &admin,
            Some(json!({"limit_micro_cr": 2_000_000})),
        ),
    )
    .await;
    expect(&allowance, StatusCode::OK, "an allowance");
    let read = call(
        &service,
        request("GET", &format!("/v1/orgs/{org}/overdraft"), &alice, None),
    )
    .await;
    expect(&read, StatusCode::OK, "read");
    assert_eq!(read.body["available_micro_cr"], 2_000_000, "{}", read.body);
    let repaid = call(
        &service,
        request(
            "POST",
            &format!("/v1/admin/orgs/{org}/overdraft/repayments"),
            &admin,
            Some(
                json!({"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e90", "amount_micro_cr": 1,
                "reference": "INV-1"}),
            ),
        ),
    )
    .await;
    expect(&repaid, StatusCode::CONFLICT, "nothing is owed");
    let listed = call(&service, request("GET", &reservations, &alice, None)).await;
    expect(&listed, StatusCode::OK, "listed");
    assert_eq!(
        listed.body["reservations"].as_array().map(Vec::len),
        Some(1)
    );

    // The key is authenticated from memory for usage writes (it was used just above), yet once
    // revoked it is refused at once (401) by every usage write — the charge's transaction
    // checks it — and changes nothing.
    let pending = json!({"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e85", "model": "gpt-6-sol",
        "input_tokens": 0, "output_tokens": 1_000, "timeout_seconds": 600, "task": "drafts"});
    let held = call(
        &service,
        request("POST", &reservations, &key, Some(pending)),
    )
    .await;
    expect(&held, StatusCode::CREATED, "held before the revocation");
    let pending_uri = format!("{reservations}/0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e85");
    let before = wallet().await;
    let revoked = call(
        &service,
        request(
            "DELETE",
            &format!("/v1/orgs/{org}/api-keys/{key_id}"),
            &alice,
            None,
        ),
    )
    .await;
    expect(&revoked, StatusCode::NO_CONTENT, "revoked");
    let late = json!({"events": [{"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e86",
        "model": "gpt-6-sol", "input_tokens": 1_000, "output_tokens": 0}]});
    let refused = call(&service, request("POST", &usage, &key, Some(late))).await;
    expect(
        &refused,
        StatusCode::UNAUTHORIZED,
        "usage with a revoked key",
    );
    assert_eq!(refused.body["status"], 401, "{}", refused.body);
    let another = json!({"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e87", "model": "gpt-6-sol",
        "input_tokens": 0, "output_tokens": 1_000, "timeout_seconds": 60});
    let refused = call(
        &service,
        request("POST", &reservations, &key, Some(another)),
    )
    .await;
    expect(
        &refused,
        StatusCode::UNAUTHORIZED,
        "a hold with a revoked key",
    );
    let used = json!({"id": "0192f1de-3c4b-7a5e-8f60-1a2b3c4d5e88", "model": "gpt-6-sol",
        "input_tokens": 0, "output_tokens": 500});
    let refused = call(
        &service,
        request("POST", &format!("{pending_uri}/settle"), &key, Some(used)),
    )
    .await;
    expect(
        &refused,
        StatusCode::UNAUTHORIZED,
        "a settlement with a revoked key",
    );
    let refused = call(
        &service,
        request("POST", &format!("{pending_uri}/release"), &key, None),
    )
    .await;
    expect(
        &refused,
        StatusCode::UNAUTHORIZED,
        "a release with a revoked key",
    );
    assert_eq!(wallet().await, before, "nothing moved");
    let read = call(&service, request("GET", &pending_uri, &alice, None)).await;
    assert_eq!(read.body["state"], "pending", "{}", read.body);
    let listed = call(&service, request("GET", &reservations, &alice, None)).await;
    assert_eq!(
        listed.body["reservations"].as_array().map(Vec::len),
        Some(2),
        "no hold was made with the revoked key"
    );
    fixture.close().await;
}

on_both_backends!(usage_through_http);
