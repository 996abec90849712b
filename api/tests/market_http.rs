//! One billing cycle through the HTTP API, on both backends, as the README walks it: an admin
//! sets a class and a plan's allotment and opens the cycle; two orgs list tokens; a third buys
//! them (cheapest first) and then emergency credits from the provider; a seller sells some back;
//! a listing is amended and cancelled; the admin tunes the market; the cycle closes and every
//! token of it is gone while the books balance. On the way, every way for tokens bought to be
//! sold on, sold back or moved (one hop), and for CR to leave the closed loop, is tried through
//! each operation that could do it and refused with a problem that says why, changing nothing;
//! every market write replays under its `Idempotency-Key`; and the per-org velocity limit
//! answers 429.

mod common;

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::test;
use common::{bearer, call, sign_in, Answer, Fixture, ADMIN, PASSWORD};
use credex_api::startup::app;
use credex_ledger::Timestamp;
use credex_tests::TestDb;
use serde_json::{json, Value};

const ASSET: &str = "TOK.pro.2026-11";
const DAY: i64 = 86_400_000_000;
/// 2026-11-01T00:00:00Z.
const NOV_1: Timestamp = Timestamp::from_micros(1_793_491_200_000_000);
/// 2026-12-01T00:00:00Z.
const DEC_1: Timestamp = Timestamp::from_micros(1_796_083_200_000_000);

fn request(method: &str, uri: &str, token: &str, body: Option<Value>) -> test::TestRequest {
    let request = match method {
        "GET" => test::TestRequest::get(),
        "POST" => test::TestRequest::post(),
        "PUT" => test::TestRequest::put(),
        "PATCH" => test::TestRequest::patch(),
        "DELETE" => test::TestRequest::delete(),
        other => panic!("{other}"),
    }
    .uri(uri);
    let request = bearer(request, token);
    match body {
        Some(body) => request.set_json(body),
        None => request,
    }
}

fn keyed(request: test::TestRequest, key: &str) -> test::TestRequest {
    request.insert_header(("Idempotency-Key", key.to_owned()))
}

fn expect(answer: &Answer, status: StatusCode, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
}

/// A refusal of tokens that are not the org's to sell: either its cap for the cycle (which is
/// its allotment, so any quantity beyond its own tokens is over it) or the ledger (acquired
/// tokens never leave `acquired`) says no, whichever looks first.
fn refused_resale(answer: &Answer, what: &str) {
    expect(answer, StatusCode::CONFLICT, what);
    let detail = answer.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("acquired tokens can never be sold") || detail.contains("over its cap"),
        "{what}: {detail:?}"
    );
}

/// A refusal: the status, problem details, and a detail that says why.
fn refused(answer: &Answer, status: StatusCode, why: &str, what: &str) {
    expect(answer, status, what);
    let detail = answer.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(why),
        "{what}: {detail:?} should say {why:?}"
    );
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{what}"
    );
}

fn number(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("a number: {value}"))
}

async fn cycle_through_http(db: &TestDb) {
    let fixture = Fixture::configured(db, |config| config.market_orders_per_minute = 1_000).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let clock = fixture.clock.clone();
    // Orgs are made at the start of November: old enough to sell by the listing window.
    clock.set(NOV_1.plus_micros(DAY));
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let mut orgs = BTreeMap::new();
    for (name, owner) in [
        ("Acme", "alice@acme.example"),
        ("Globex", "gus@globex.example"),
        ("Initech", "ian@initech.example"),
    ] {
        let made = call(
            &service,
            request(
                "POST",
                "/v1/admin/orgs",
                &admin,
                Some(json!({"name": name, "plan": "teams"})),
            ),
        )
        .await;
        expect(&made, StatusCode::CREATED, "an org");
        let id = made.body["id"].as_str().expect("an id").to_owned();
        let verified = call(
            &service,
            request(
                "PATCH",
                &format!("/v1/admin/orgs/{id}"),
                &admin,
                Some(json!({"verification_level": 1})),
            ),
        )
        .await;
        expect(&verified, StatusCode::OK, "verified");
        let user = json!({"email": owner, "password": PASSWORD, "org_id": id, "role": "owner"});
        let made = call(
            &service,
            request("POST", "/v1/admin/users", &admin, Some(user)),
        )
        .await;
        expect(&made, StatusCode::CREATED, "an owner");
        orgs.insert(name, (id, owner));
    }
    let id = |name: &str| orgs[name].0.clone();

    // The admin: a class, the teams plan's allotment of it, the cycle opened.
    let class = call(
        &service,
        request(
            "PUT",
            "/v1/admin/classes/pro",
            &admin,
            Some(json!({"face_value_per_1m_micro_cr": 4_000_000, "description": "pro models"})),
        ),
    )
    .await;
    expect(&class, StatusCode::OK, "a class");
    let allotment = call(
        &service,
        request(
            "PUT",
            "/v1/admin/plans/teams/allotments/pro",
            &admin,
            Some(json!({"tokens_per_cycle": 2_000_000})),
        ),
    )
    .await;
    expect(&allotment, StatusCode::OK, "an allotment");
    assert_eq!(
        allotment.body["allotments"][0]["tokens_per_cycle"],
        2_000_000
    );
    let opened = call(
        &service,
        request("POST", "/v1/admin/cycles/2026-11/open", &admin, None),
    )
    .await;
    expect(&opened, StatusCode::OK, "opened");
    assert_eq!(opened.body["report"]["orgs"], 3, "{}", opened.body);
    let again = call(
        &service,
        request("POST", "/v1/admin/cycles/2026-11/open", &admin, None),
    )
    .await;
    assert_eq!(
        again.body["report"]["transfers"], 0,
        "opening twice issues nothing"
    );
    let early = call(
        &service,
        request("POST", "/v1/admin/cycles/2026-11/close", &admin, None),
    )
    .await;
    refused(&early, StatusCode::CONFLICT, "not ended", "closing early");

    // Into the listing window (the cycle's last 7 days).
    clock.set(DEC_1.plus_micros(-5 * DAY));
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let mut tokens = BTreeMap::new();
    for (name, (_, owner)) in &orgs {
        tokens.insert(*name, sign_in(&service, owner, PASSWORD).await);
    }
    let token = |name: &str| tokens[name].clone();
    let credit = call(
        &service,
        keyed(
            request(
                "POST",
                &format!("/v1/admin/orgs/{}/credits", id("Initech")),
                &admin,
                Some(
                    json!({"kind": "top_up", "amount_micro_cr": 100_000_000, "reason": "invoice"}),
                ),
            ),
            "initech-top-up",
        ),
    )
    .await;
    expect(&credit, StatusCode::CREATED, "credits");

    // Listings: Acme 1M tokens at 4 CR per 1M, Globex 500k at 3 CR per 1M.
    let list = |org: &str, quantity: u64, ask: u64| {
        request(
            "POST",
            &format!("/v1/orgs/{}/listings", id(org)),
            &token(org),
            Some(json!({"asset": ASSET, "quantity": quantity, "ask_per_1m_micro_cr": ask})),
        )
    };
    let acme = call(
        &service,
        keyed(list("Acme", 1_000_000, 4_000_000), "acme-1"),
    )
    .await;
    expect(&acme, StatusCode::CREATED, "Acme lists");
    let location = acme
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location");
    let listing = acme.body["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        location,
        format!("/v1/orgs/{}/listings/{listing}", id("Acme"))
    );
    let replay = call(
        &service,
        keyed(list("Acme", 1_000_000, 4_000_000), "acme-1"),
    )
    .await;
    expect(&replay, StatusCode::CREATED, "a replay");
    assert_eq!(replay.body["id"], acme.body["id"]);
    assert!(replay.headers.contains_key("idempotent-replayed"));
    let globex = call(
        &service,
        keyed(list("Globex", 500_000, 3_000_000), "globex-1"),
    )
    .await;
    expect(&globex, StatusCode::CREATED, "Globex lists");
    let balances = balances_of(&service, &id("Acme"), &token("Acme")).await;
    assert_eq!(balances[&(ASSET.to_owned(), "alloc".to_owned())], 1_000_000);
    assert_eq!(
        balances[&(ASSET.to_owned(), "escrow".to_owned())],
        1_000_000
    );

    // Market data: the cheapest decayed price first.
    let market = call(
        &service,
        request(
            "GET",
            &format!("/v1/markets/{ASSET}"),
            &token("Initech"),
            None,
        ),
    )
    .await;
    expect(&market, StatusCode::OK, "the market");
    let best = number(&market.body["best_price_now_per_1m_micro_cr"]);
    assert!(
        best < 3_000_000 && best > 0,
        "decayed below Globex's ask: {best}"
    );
    let depth = call(
        &service,
        request(
            "GET",
            &format!("/v1/markets/{ASSET}/depth"),
            &token("Initech"),
            None,
        ),
    )
    .await;
    assert_eq!(
        depth.body.as_array().map(Vec::len),
        Some(2),
        "{}",
        depth.body
    );
    let quote = call(
        &service,
        request(
            "GET",
            &format!("/v1/markets/{ASSET}/quote?quantity=700000"),
            &token("Initech"),
            None,
        ),
    )
    .await;
    expect(&quote, StatusCode::OK, "a quote");
    assert_eq!(quote.body["available"], 700_000);

    // Initech buys 700k: Globex's 500k first (cheaper), then 200k of Acme's.
    let order = |quantity: u64, provider: bool| {
        request(
            "POST",
            &format!("/v1/orgs/{}/orders", id("Initech")),
            &token("Initech"),
            Some(json!({"asset": ASSET, "quantity": quantity, "allow_provider_fill": provider})),
        )
    };
    let bought = call(&service, keyed(order(700_000, false), "buy-1")).await;
    expect(&bought, StatusCode::CREATED, "a buy");
    assert_eq!(bought.body["filled"], 700_000, "{}", bought.body);
    let fills = bought.body["fills"].as_array().expect("fills");
    assert_eq!(fills.len(), 2);
    assert_eq!(fills[0]["listing_id"], globex.body["id"]);
    assert_eq!(fills[0]["quantity"], 500_000);
    assert_eq!(fills[1]["listing_id"], acme.body["id"]);
    assert_eq!(
        quote.body["cost_micro_cr"],
        bought.body["fills"]
            .as_array()
            .map(|f| {
                f.iter()
                    .map(|fill| number(&fill["cost_micro_cr"]))
                    .sum::<u64>()
            })
            .expect("costs")
    );
    let replayed = call(&service, keyed(order(700_000, false), "buy-1")).await;
    assert_eq!(replayed.body["order_id"], bought.body["order_id"]);
    assert_eq!(
        replayed.body["fills"], bought.body["fills"],
        "a replay buys nothing twice"
    );
    let order_uri = bought
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_owned();
    let found = call(
        &service,
        request("GET", &order_uri, &token("Initech"), None),
    )
    .await;
    assert_eq!(found.body["fills"], bought.body["fills"]);
    let someone_elses = call(
        &service,
        request(
            "GET",
            &order_uri.replace(&id("Initech"), &id("Acme")),
            &token("Acme"),
            None,
        ),
    )
    .await;
    expect(&someone_elses, StatusCode::NOT_FOUND, "another org's order");

    // One hop: Initech holds 2M of its own allotment and 700k bought. Nothing lets the 700k
    // out: not a listing, not a buyback, not a raw transfer.
    let before = balances_of(&service, &id("Initech"), &token("Initech")).await;
    assert_eq!(before[&(ASSET.to_owned(), "acquired".to_owned())], 700_000);
    assert_eq!(before[&(ASSET.to_owned(), "alloc".to_owned())], 2_000_000);
    let resale = call(
        &service,
        keyed(
            request(
                "POST",
                &format!("/v1/orgs/{}/listings", id("Initech")),
                &token("Initech"),
                Some(json!({"asset": ASSET, "quantity": 2_700_000, "ask_per_1m_micro_cr": 9_000_000})),
            ),
            "resell",
        ),
    )
    .await;
    refused_resale(&resale, "listing bought tokens");
    let sell_back = call(
        &service,
        keyed(
            request(
                "POST",
                &format!("/v1/orgs/{}/buybacks", id("Initech")),
                &token("Initech"),
                Some(json!({"asset": ASSET, "quantity": 2_700_000})),
            ),
            "sell-back",
        ),
    )
    .await;
    refused_resale(&sell_back, "selling bought tokens back");
    let acquired_id = account_id(
        &service,
        &id("Initech"),
        &token("Initech"),
        ASSET,
        "acquired",
    )
    .await;
    let acme_alloc = account_id(&service, &id("Acme"), &token("Acme"), ASSET, "alloc").await;
    let acme_escrow = account_id(&service, &id("Acme"), &token("Acme"), ASSET, "escrow").await;
    let wallet = account_id(&service, &id("Initech"), &token("Initech"), "CR", "wallet").await;
    let acme_wallet = account_id(&service, &id("Acme"), &token("Acme"), "CR", "wallet").await;
    for (debit, credit, asset, code, what) in [
        (
            &acquired_id,
            &acme_alloc,
            ASSET,
            "trade",
            "bought tokens moved to another org",
        ),
        (
            &acquired_id,
            &acme_alloc,
            ASSET,
            "list",
            "bought tokens moved as a listing",
        ),
        (
            &acquired_id,
            &acme_escrow,
            ASSET,
            "list",
            "bought tokens put in another org's escrow",
        ),
        (
            &wallet,
            &acme_wallet,
            "CR",
            "spend",
            "CR spent into another org's wallet",
        ),
        (
            &wallet,
            &acme_wallet,
            "CR",
            "grant",
            "CR moved between orgs",
        ),
    ] {
        let raw = json!({"transfers": [{
            "id": uuid::Uuid::new_v4().to_string(), "kind": "single",
            "debit_account_id": debit, "credit_account_id": credit,
            "asset": asset, "amount": 1_000, "code": code,
        }]});
        let answer = call(
            &service,
            keyed(
                request("POST", "/v1/admin/transfers", &admin, Some(raw)),
                &uuid::Uuid::new_v4().to_string(),
            ),
        )
        .await;
        let results = answer.body["results"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ok = results.iter().any(|result| result["result"] == "ok");
        assert!(
            !ok && answer.status != StatusCode::INTERNAL_SERVER_ERROR,
            "{what}: {} {}",
            answer.status,
            answer.body
        );
    }
    assert_eq!(
        balances_of(&service, &id("Initech"), &token("Initech")).await,
        before,
        "nothing moved"
    );

    // Acme sells 100k of its own tokens back to the provider at 90% of face value.
    let buyback = call(
        &service,
        keyed(
            request(
                "POST",
                &format!("/v1/orgs/{}/buybacks", id("Acme")),
                &token("Acme"),
                Some(json!({"asset": ASSET, "quantity": 100_000})),
            ),
            "acme-buyback",
        ),
    )
    .await;
    expect(&buyback, StatusCode::CREATED, "a buyback");
    assert_eq!(buyback.body["payout_micro_cr"], 360_000, "{}", buyback.body);
    let location = buyback
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_owned();
    let found = call(&service, request("GET", &location, &token("Acme"), None)).await;
    assert_eq!(found.body, buyback.body);

    // Amend Acme's listing down, then cancel it: the rest goes back to alloc.
    let listing_uri = format!("/v1/orgs/{}/listings/{listing}", id("Acme"));
    let up = call(
        &service,
        keyed(
            request(
                "PATCH",
                &listing_uri,
                &token("Acme"),
                Some(json!({"quantity_open": 900_000})),
            ),
            "amend-up",
        ),
    )
    .await;
    refused(
        &up,
        StatusCode::CONFLICT,
        "only be amended down",
        "amending up",
    );
    let amended = call(
        &service,
        keyed(
            request(
                "PATCH",
                &listing_uri,
                &token("Acme"),
                Some(json!({"quantity_open": 300_000})),
            ),
            "amend-1",
        ),
    )
    .await;
    expect(&amended, StatusCode::OK, "amended");
    assert_eq!(amended.body["quantity_open"], 300_000);
    let cancelled = call(
        &service,
        keyed(
            request("DELETE", &listing_uri, &token("Acme"), None),
            "cancel-1",
        ),
    )
    .await;
    expect(&cancelled, StatusCode::OK, "cancelled");
    assert_eq!(cancelled.body["state"], "cancelled");
    let replay = call(
        &service,
        keyed(
            request("DELETE", &listing_uri, &token("Acme"), None),
            "cancel-1",
        ),
    )
    .await;
    assert_eq!(replay.body, cancelled.body);
    let acme_now = balances_of(&service, &id("Acme"), &token("Acme")).await;
    assert!(!acme_now.contains_key(&(ASSET.to_owned(), "escrow".to_owned())));
    assert_eq!(
        acme_now[&(ASSET.to_owned(), "alloc".to_owned())],
        2_000_000 - 200_000 - 100_000
    );

    // The admin tunes the market: a 5% fee paid by buyers, emergency credits at 5 CR per 1M.
    let tuned = call(
        &service,
        request(
            "PATCH",
            &format!("/v1/admin/markets/{ASSET}"),
            &admin,
            Some(json!({"fee_rate": "0.05", "fee_payer": "buyer", "provider_list_price_per_1m_micro_cr": 5_000_000, "provider_fill": true})),
        ),
    )
    .await;
    expect(&tuned, StatusCode::OK, "tuned");
    assert_eq!(tuned.body["settings"]["fee_rate"], "0.05");
    let history = call(
        &service,
        request(
            "GET",
            &format!("/v1/admin/markets/{ASSET}/settings-history"),
            &admin,
            None,
        ),
    )
    .await;
    assert_eq!(
        history.body.as_array().map(Vec::len),
        Some(2),
        "{}",
        history.body
    );
    let bad = call(
        &service,
        request(
            "PATCH",
            &format!("/v1/admin/markets/{ASSET}"),
            &admin,
            Some(json!({"fee_rate": "1.5"})),
        ),
    )
    .await;
    refused(
        &bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        "fee_rate",
        "a fee rate of 150%",
    );

    // Emergency credits: the book is empty now, the provider fills at its list price.
    let emergency = call(&service, keyed(order(1_000_000, true), "emergency-1")).await;
    expect(&emergency, StatusCode::CREATED, "emergency credits");
    assert_eq!(
        emergency.body["from_provider"], 1_000_000,
        "{}",
        emergency.body
    );
    assert_eq!(emergency.body["buyer_paid_micro_cr"], 5_000_000);

    // Linked orgs never trade: Globex lists again, Initech (linked to it) cannot buy it.
    let link = call(
        &service,
        request(
            "PUT",
            &format!("/v1/admin/orgs/{}/links/{}", id("Initech"), id("Globex")),
            &admin,
            None,
        ),
    )
    .await;
    expect(&link, StatusCode::OK, "linked");
    let again = call(
        &service,
        keyed(list("Globex", 100_000, 1_000_000), "globex-2"),
    )
    .await;
    expect(&again, StatusCode::CREATED, "Globex lists again");
    let blocked = call(&service, keyed(order(100_000, false), "buy-linked")).await;
    expect(&blocked, StatusCode::CREATED, "an order that fills nothing");
    assert_eq!(blocked.body["filled"], 0, "{}", blocked.body);

    // The cycle ends and closes: open listings cancelled, every token expired.
    clock.set(DEC_1.plus_micros(1));
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let closed = call(
        &service,
        request("POST", "/v1/admin/cycles/2026-11/close", &admin, None),
    )
    .await;
    expect(&closed, StatusCode::OK, "closed");
    assert!(
        closed.body["cycle"]["closed_at"].is_string(),
        "{}",
        closed.body
    );
    for name in ["Acme", "Globex", "Initech"] {
        let token = sign_in(&service, orgs[name].1, PASSWORD).await;
        let balances = balances_of(&service, &id(name), &token).await;
        for ((asset, kind), balance) in &balances {
            if asset == ASSET {
                assert_eq!(*balance, 0, "{name} {kind} after the close");
            }
        }
    }
    let late = call(
        &service,
        keyed(
            request(
                "POST",
                &format!("/v1/orgs/{}/orders", id("Initech")),
                &sign_in(&service, "ian@initech.example", PASSWORD).await,
                Some(json!({"asset": ASSET, "quantity": 1})),
            ),
            "late",
        ),
    )
    .await;
    refused(
        &late,
        StatusCode::CONFLICT,
        "closed",
        "buying after the close",
    );
    let books = call(
        &service,
        request("GET", "/v1/admin/books/check", &admin, None),
    )
    .await;
    expect(&books, StatusCode::OK, "the books");
    assert_eq!(books.body["ok"], true, "{}", books.body);
    fixture.close().await;
}

/// (asset, kind) → net posted balance of each of the org's accounts.
async fn balances_of<S, B>(service: &S, org: &str, token: &str) -> BTreeMap<(String, String), i64>
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
        request("GET", &format!("/v1/orgs/{org}/balances"), token, None),
    )
    .await;
    expect(&answer, StatusCode::OK, "balances");
    answer
        .body
        .as_array()
        .expect("accounts")
        .iter()
        .map(|account| {
            let key = (
                account["asset"].as_str().expect("asset").to_owned(),
                account["kind"].as_str().expect("kind").to_owned(),
            );
            (
                key,
                account["balance"]["balance"].as_i64().expect("a balance"),
            )
        })
        // An empty account a refused request made on its way (accounts are made on first
        // use) holds nothing: value is what must not change.
        .filter(|(_, balance)| *balance != 0)
        .collect()
}

async fn account_id<S, B>(service: &S, org: &str, token: &str, asset: &str, kind: &str) -> String
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
        request("GET", &format!("/v1/orgs/{org}/balances"), token, None),
    )
    .await;
    answer
        .body
        .as_array()
        .expect("accounts")
        .iter()
        .find(|account| account["asset"] == asset && account["kind"] == kind)
        .and_then(|account| account["account_id"].as_str())
        .unwrap_or_else(|| panic!("{org} has a {asset} {kind} account: {}", answer.body))
        .to_owned()
}

/// The velocity limit: the third market write in a minute from one org answers 429 with
/// `Retry-After`, and writes nothing.
async fn market_writes_are_rate_limited_per_org(db: &TestDb) {
    let fixture = Fixture::configured(db, |config| config.market_orders_per_minute = 2).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let made = call(
        &service,
        request(
            "POST",
            "/v1/admin/orgs",
            &admin,
            Some(json!({"name": "Hasty", "plan": "teams"})),
        ),
    )
    .await;
    let org = made.body["id"].as_str().expect("an id").to_owned();
    let mut statuses = Vec::new();
    for i in 0..3 {
        let answer = call(
            &service,
            keyed(
                request(
                    "POST",
                    &format!("/v1/orgs/{org}/orders"),
                    &admin,
                    Some(json!({"asset": ASSET, "quantity": 1})),
                ),
                &format!("hasty-{i}"),
            ),
        )
        .await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(answer.headers.contains_key("retry-after"));
        }
        statuses.push(answer.status);
    }
    // No market exists: the first two reach the service (404), the third is throttled first.
    assert_eq!(
        statuses,
        [
            StatusCode::NOT_FOUND,
            StatusCode::NOT_FOUND,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    fixture.close().await;
}

/// The selling policy is the admins' to tune at run time: a new org may not sell under the
/// default policy; once an admin lowers the required age it may, at once; values out of range
/// are refused and change nothing; the change is audited.
async fn admins_tune_who_may_sell(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    for (method, uri, body) in [
        (
            "PUT",
            "/v1/admin/classes/pro",
            json!({"face_value_per_1m_micro_cr": 4_000_000}),
        ),
        (
            "PUT",
            "/v1/admin/plans/teams/allotments/pro",
            json!({"tokens_per_cycle": 1_000}),
        ),
    ] {
        let answer = call(&service, request(method, uri, &admin, Some(body))).await;
        expect(&answer, StatusCode::OK, uri);
    }
    let made = call(
        &service,
        request(
            "POST",
            "/v1/admin/orgs",
            &admin,
            Some(json!({"name": "Newco", "plan": "teams"})),
        ),
    )
    .await;
    let org = made.body["id"].as_str().expect("an id").to_owned();
    call(
        &service,
        request(
            "PATCH",
            &format!("/v1/admin/orgs/{org}"),
            &admin,
            Some(json!({"verification_level": 1})),
        ),
    )
    .await;
    let opened = call(
        &service,
        request("POST", "/v1/admin/cycles/2026-11/open", &admin, None),
    )
    .await;
    expect(&opened, StatusCode::OK, "opened");
    let list = |key: &str| {
        keyed(
            request(
                "POST",
                &format!("/v1/orgs/{org}/listings"),
                &admin,
                Some(json!({"asset": ASSET, "quantity": 10, "ask_per_1m_micro_cr": 1_000})),
            ),
            key,
        )
    };
    let young = call(&service, list("young")).await;
    refused(&young, StatusCode::FORBIDDEN, "days old", "a new org sells");
    let shown = call(
        &service,
        request("GET", "/v1/admin/market-policy", &admin, None),
    )
    .await;
    assert_eq!(shown.body["source"], "configuration");
    assert_eq!(shown.body["min_org_age_days"], 14);
    let policy = |age: u64, cap: u64| {
        json!({"min_verification_level": 1, "min_org_age_days": age,
               "paid_plan_required": true, "sell_cap_basis_points": cap})
    };
    let bad = call(
        &service,
        request(
            "PUT",
            "/v1/admin/market-policy",
            &admin,
            Some(policy(0, 10_001)),
        ),
    )
    .await;
    expect(&bad, StatusCode::UNPROCESSABLE_ENTITY, "a cap over 100%");
    let set = call(
        &service,
        request(
            "PUT",
            "/v1/admin/market-policy",
            &admin,
            Some(policy(0, 5_000)),
        ),
    )
    .await;
    expect(&set, StatusCode::OK, "the policy");
    assert_eq!(set.body["source"], "admin");
    let listed = call(&service, list("grown")).await;
    expect(&listed, StatusCode::CREATED, "the same org sells now");
    let over = call(
        &service,
        keyed(
            request(
                "POST",
                &format!("/v1/orgs/{org}/listings"),
                &admin,
                Some(json!({"asset": ASSET, "quantity": 491, "ask_per_1m_micro_cr": 1_000})),
            ),
            "over-cap",
        ),
    )
    .await;
    refused(
        &over,
        StatusCode::CONFLICT,
        "cap of 500 tokens",
        "over the 50% cap",
    );
    let audit = call(
        &service,
        request("GET", "/v1/admin/audit?action=market.policy", &admin, None),
    )
    .await;
    assert_eq!(
        audit.body["entries"].as_array().map(Vec::len),
        Some(1),
        "{}",
        audit.body
    );
    fixture.close().await;
}

credex_tests::on_both_backends!(
    cycle_through_http,
    market_writes_are_rate_limited_per_org,
    admins_tune_who_may_sell
);
