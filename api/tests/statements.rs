//! Statements on both backends, through the HTTP API: one billing cycle of an org — its
//! allotment, a grant, usage of two models paid from all three sources, a sale and a purchase
//! on the market (with the seller's fee), a buyback, its open listing cancelled and its tokens
//! expired at the close — and its statement: every figure exact, every account reconciled and
//! equal to the ledger's own balances at the statement's instants, another org's movements and
//! the next cycle's absent; the same statement as CSV and as a PDF whose text (read back by
//! pypdf) names the org, the cycle and the figures; and the answers to bad addresses.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use actix_web::http::StatusCode;
use actix_web::test;
use common::{bearer, call, sign_in, Answer, Fixture, ADMIN, PASSWORD};
use credex_api::startup::app;
use credex_ledger::{AccountKind, AssetCode, OrgId, Owner, Timestamp};
use credex_tests::{on_both_backends, TestDb};
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
        "PATCH" => test::TestRequest::patch(),
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

fn keyed(request: test::TestRequest, key: &str) -> test::TestRequest {
    request.insert_header(("Idempotency-Key", key.to_owned()))
}

fn expect(answer: &Answer, status: StatusCode, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
}

fn number(value: &Value) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("a number: {value}"))
}

/// A response's status, content type, disposition and raw body.
struct Raw {
    status: StatusCode,
    content_type: String,
    disposition: String,
    body: Vec<u8>,
}

async fn raw<S, B>(service: &S, request: test::TestRequest) -> Raw
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody + 'static,
{
    let response = test::call_service(service, request.to_request()).await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let status = response.status();
    let content_type = header("content-type");
    let disposition = header("content-disposition");
    let body = test::read_body(response).await.to_vec();
    Raw {
        status,
        content_type,
        disposition,
        body,
    }
}

fn instant(text: &str) -> Timestamp {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|error| panic!("{text}: {error}"));
    let micros = at.unix_timestamp_nanos() / 1_000;
    Timestamp::from_micros(i64::try_from(micros).expect("in range"))
}

/// The venv's Python (`CREDEX_TEST_PYTHON`, or `<workspace>/.venv/bin/python`), checked to
/// import pypdf.
fn python() -> PathBuf {
    let path = std::env::var_os("CREDEX_TEST_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
        PathBuf::from,
    );
    let check = Command::new(&path)
        .args(["-c", "import pypdf"])
        .output()
        .unwrap_or_else(|error| panic!("run {}: {error} (.ci/run makes the venv)", path.display()));
    assert!(
        check.status.success(),
        "{} cannot import pypdf: `.venv/bin/pip install pypdf==7.1.1`\n{}",
        path.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    path
}

/// The text of a PDF as pypdf extracts it, page after page.
fn pdf_text(pdf: &[u8]) -> (usize, String) {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("statement.pdf");
    std::fs::write(&file, pdf).expect("write the PDF");
    let script = "import sys, pypdf\n\
                  reader = pypdf.PdfReader(sys.argv[1])\n\
                  print(len(reader.pages))\n\
                  for page in reader.pages:\n    print(page.extract_text())\n";
    let output = Command::new(python())
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("run Python");
    assert!(
        output.status.success(),
        "pypdf could not read the statement: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let (pages, text) = text.split_once('\n').expect("a page count");
    (pages.trim().parse().expect("a count"), text.to_owned())
}

/// A section's lines as (asset, account, item, count, amount), in the statement's order.
fn lines(statement: &Value, section: &str) -> Vec<(String, String, String, i64, i64)> {
    statement["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .filter(|s| s["section"] == section)
        .flat_map(|s| s["lines"].as_array().expect("lines").clone())
        .map(|line| {
            (
                line["asset"].as_str().expect("asset").to_owned(),
                line["account"].as_str().expect("account").to_owned(),
                line["item"].as_str().expect("item").to_owned(),
                number(&line["count"]),
                number(&line["amount"]),
            )
        })
        .collect()
}

fn line(
    asset: &str,
    account: &str,
    item: &str,
    count: i64,
    amount: i64,
) -> (String, String, String, i64, i64) {
    (
        asset.to_owned(),
        account.to_owned(),
        item.to_owned(),
        count,
        amount,
    )
}

/// (asset, account) → the statement's account object.
fn accounts(statement: &Value) -> BTreeMap<(String, String), Value> {
    statement["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| {
            (
                (
                    a["asset"].as_str().expect("asset").to_owned(),
                    a["account"].as_str().expect("account").to_owned(),
                ),
                a.clone(),
            )
        })
        .collect()
}

async fn a_cycle_s_statement(db: &TestDb) {
    let fixture = Fixture::configured(db, |config| config.market_orders_per_minute = 1_000).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let store = fixture.assembled.ledger.store().clone();
    let clock = fixture.clock.clone();
    clock.set(NOV_1.plus_micros(DAY));
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let mut orgs = BTreeMap::new();
    for (name, owner) in [
        ("Acme", "alice@acme.example"),
        ("Globex", "gus@globex.example"),
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
    let opened = call(
        &service,
        request("POST", "/v1/admin/cycles/2026-11/open", &admin, None),
    )
    .await;
    expect(&opened, StatusCode::OK, "opened");

    let credit = |token: &str, org: &str, kind: &str, amount: u64, key: &str| {
        keyed(
            request(
                "POST",
                &format!("/v1/admin/orgs/{}/credits", id(org)),
                token,
                Some(json!({"kind": kind, "amount_micro_cr": amount, "reason": "statement test"})),
            ),
            key,
        )
    };
    expect(
        &call(
            &service,
            credit(&admin, "Acme", "grant", 50_000_000, "acme-grant"),
        )
        .await,
        StatusCode::CREATED,
        "a grant",
    );
    let alice = sign_in(&service, "alice@acme.example", PASSWORD).await;
    let usage = |org: &str, token: &str, id: &str, model: &str, input: u64| {
        keyed(
            request(
                "POST",
                &format!("/v1/orgs/{org}/usage"),
                token,
                Some(
                    json!({"events": [{"id": id, "model": model, "input_tokens": input,
                    "output_tokens": 0}]}),
                ),
            ),
            id,
        )
    };
    // Usage from `alloc`: 100k tokens of gpt-6-sol.
    let first = call(
        &service,
        usage(
            &id("Acme"),
            &alice,
            "0192f1de-3c4b-7a5e-8f60-000000000001",
            "gpt-6-sol",
            100_000,
        ),
    )
    .await;
    expect(&first, StatusCode::CREATED, "usage");
    assert_eq!(
        first.body["events"][0]["from_alloc"], 100_000,
        "{}",
        first.body
    );

    // The listing window.
    clock.set(DEC_1.plus_micros(-5 * DAY));
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let alice = sign_in(&service, "alice@acme.example", PASSWORD).await;
    let gus = sign_in(&service, "gus@globex.example", PASSWORD).await;
    expect(
        &call(
            &service,
            credit(&admin, "Globex", "top_up", 77_777_777, "globex-top-up"),
        )
        .await,
        StatusCode::CREATED,
        "Globex's top-up",
    );
    let list = |org: &str, token: &str, quantity: u64, ask: u64, key: &str| {
        keyed(
            request(
                "POST",
                &format!("/v1/orgs/{org}/listings"),
                token,
                Some(json!({"asset": ASSET, "quantity": quantity, "ask_per_1m_micro_cr": ask})),
            ),
            key,
        )
    };
    let order = |org: &str, token: &str, quantity: u64, key: &str| {
        keyed(
            request(
                "POST",
                &format!("/v1/orgs/{org}/orders"),
                token,
                Some(json!({"asset": ASSET, "quantity": quantity})),
            ),
            key,
        )
    };
    // Acme buys Globex's 100k, then lists 500k of its own, of which Globex buys 200k.
    let listed = call(
        &service,
        list(&id("Globex"), &gus, 100_000, 3_000_000, "g-list"),
    )
    .await;
    expect(&listed, StatusCode::CREATED, "Globex lists");
    let bought = call(&service, order(&id("Acme"), &alice, 100_000, "a-buy")).await;
    expect(&bought, StatusCode::CREATED, "Acme buys");
    assert_eq!(bought.body["filled"], 100_000, "{}", bought.body);
    let paid = number(&bought.body["buyer_paid_micro_cr"]);
    let listed = call(
        &service,
        list(&id("Acme"), &alice, 500_000, 4_000_000, "a-list"),
    )
    .await;
    expect(&listed, StatusCode::CREATED, "Acme lists");
    let sold = call(&service, order(&id("Globex"), &gus, 200_000, "g-buy")).await;
    expect(&sold, StatusCode::CREATED, "Globex buys");
    assert_eq!(sold.body["filled"], 200_000, "{}", sold.body);
    let proceeds = number(&sold.body["fills"][0]["cost_micro_cr"]);
    let fee = number(&sold.body["fills"][0]["fee_micro_cr"]);
    assert!(fee > 0, "the market charges a fee: {}", sold.body);
    // The seller pays the fee (the default): Globex paid the cost alone.
    assert_eq!(
        number(&sold.body["buyer_paid_micro_cr"]),
        proceeds,
        "{}",
        sold.body
    );
    let buyback = call(
        &service,
        keyed(
            request(
                "POST",
                &format!("/v1/orgs/{}/buybacks", id("Acme")),
                &alice,
                Some(json!({"asset": ASSET, "quantity": 300_000})),
            ),
            "a-buyback",
        ),
    )
    .await;
    expect(&buyback, StatusCode::CREATED, "a buyback");
    let payout = number(&buyback.body["payout_micro_cr"]);
    // Usage from all three sources: 100k acquired, the 1.1M left in `alloc`, 50k from the
    // wallet.
    let second = call(
        &service,
        usage(
            &id("Acme"),
            &alice,
            "0192f1de-3c4b-7a5e-8f60-000000000002",
            "claude-sonnet-5",
            1_250_000,
        ),
    )
    .await;
    expect(&second, StatusCode::CREATED, "usage");
    let event = &second.body["events"][0];
    assert_eq!(event["from_acquired"], 100_000, "{event}");
    assert_eq!(event["from_alloc"], 1_100_000, "{event}");
    let from_wallet = number(&event["from_wallet_micro_cr"]);
    assert!(from_wallet > 0, "{event}");
    // Globex's own usage, which Acme's statement must never show.
    let theirs = call(
        &service,
        usage(
            &id("Globex"),
            &gus,
            "0192f1de-3c4b-7a5e-8f60-000000000003",
            "gpt-4o",
            1_000,
        ),
    )
    .await;
    expect(&theirs, StatusCode::CREATED, "Globex's usage");

    // The cycle ends and closes: Acme's open listing is cancelled and its tokens expire.
    clock.set(DEC_1.plus_micros(3_600_000_000));
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let closed = call(
        &service,
        request("POST", "/v1/admin/cycles/2026-11/close", &admin, None),
    )
    .await;
    expect(&closed, StatusCode::OK, "closed");
    // December: a grant that belongs to December's statement, not November's.
    clock.set(DEC_1.plus_micros(DAY));
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    expect(
        &call(
            &service,
            credit(&admin, "Acme", "grant", 1_000_000, "acme-december"),
        )
        .await,
        StatusCode::CREATED,
        "December's grant",
    );
    // A statement counts what came before its instant.
    clock.set(DEC_1.plus_micros(DAY + 1_000_000));
    let alice = sign_in(&service, "alice@acme.example", PASSWORD).await;
    let gus = sign_in(&service, "gus@globex.example", PASSWORD).await;

    // The statement of November.
    let uri = format!("/v1/orgs/{}/statements/2026-11", id("Acme"));
    let answer = call(&service, request("GET", &uri, &alice, None)).await;
    expect(&answer, StatusCode::OK, "the statement");
    let statement = answer.body;
    assert_eq!(statement["org_id"], id("Acme").as_str());
    assert_eq!(statement["org_name"], "Acme");
    assert_eq!(statement["cycle"], "2026-11");
    assert_eq!(statement["state"], "closed");
    assert_eq!(statement["period_start"], "2026-11-01T00:00:00Z");
    assert_eq!(statement["period_end"], "2026-12-01T00:00:00Z");

    // Every section, exactly.
    let w = "wallet";
    assert_eq!(
        lines(&statement, "allotments"),
        [line(ASSET, "alloc", "allotment", 1, 2_000_000)]
    );
    assert_eq!(
        lines(&statement, "credits"),
        [line("CR", w, "grant", 1, 50_000_000)]
    );
    assert_eq!(
        lines(&statement, "usage"),
        [
            line("CR", w, "claude-sonnet-5", 1, -from_wallet),
            line(ASSET, "alloc", "claude-sonnet-5", 1, -1_100_000),
            line(ASSET, "alloc", "gpt-6-sol", 1, -100_000),
            line(ASSET, "acquired", "claude-sonnet-5", 1, -100_000),
        ]
    );
    assert_eq!(
        lines(&statement, "trades"),
        [
            line("CR", w, "bought", 1, -paid),
            line("CR", w, "sold", 1, proceeds),
            line(ASSET, "acquired", "bought", 1, 100_000),
            line(ASSET, "escrow", "sold", 1, -200_000),
        ]
    );
    assert_eq!(
        lines(&statement, "fees"),
        [line("CR", w, "on sales", 1, -fee)]
    );
    assert_eq!(
        lines(&statement, "buybacks"),
        [
            line("CR", w, "sold to the provider", 1, payout),
            line(ASSET, "alloc", "sold to the provider", 1, -300_000),
        ]
    );
    assert_eq!(
        lines(&statement, "listings"),
        [
            line(ASSET, "alloc", "listed", 1, -500_000),
            line(ASSET, "alloc", "unlisted", 1, 300_000),
            line(ASSET, "escrow", "listed", 1, 500_000),
            line(ASSET, "escrow", "unlisted", 1, -300_000),
        ]
    );
    assert_eq!(
        lines(&statement, "expiry"),
        [line(ASSET, "alloc", "expired", 1, -300_000)]
    );
    let sections: Vec<&str> = statement["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .map(|s| s["section"].as_str().expect("a name"))
        .collect();
    assert_eq!(
        sections,
        [
            "allotments",
            "credits",
            "usage",
            "trades",
            "fees",
            "buybacks",
            "listings",
            "expiry"
        ]
    );
    let usage_totals = &statement["sections"][2]["totals"];
    assert_eq!(
        usage_totals,
        &json!([
            {"asset": "CR", "unit": "micro_cr", "account": "wallet", "amount": -from_wallet},
            {"asset": ASSET, "unit": "tokens", "account": "alloc", "amount": -1_200_000},
            {"asset": ASSET, "unit": "tokens", "account": "acquired", "amount": -100_000},
        ])
    );

    // The balances: the wallet over November, the tokens over their life; each reconciles,
    // and each equals the ledger's own balance at its instants.
    let wallet_closing = 50_000_000 - paid + proceeds - fee + payout - from_wallet;
    let accounts = accounts(&statement);
    let keys: Vec<(String, String)> = accounts.keys().cloned().collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    let wallet = &accounts[&("CR".to_owned(), w.to_owned())];
    assert_eq!(wallet["opening"], 0);
    assert_eq!(wallet["closing"], wallet_closing);
    assert_eq!(wallet["credits"], 50_000_000 + proceeds + payout);
    assert_eq!(wallet["debits"], paid + fee + from_wallet);
    assert_eq!(wallet["opening_at"], "2026-11-01T00:00:00Z");
    assert_eq!(wallet["closing_at"], "2026-12-01T00:00:00Z");
    for kind in ["alloc", "acquired", "escrow"] {
        let account = &accounts[&(ASSET.to_owned(), kind.to_owned())];
        assert_eq!(account["opening"], 0, "{kind}");
        assert_eq!(account["closing"], 0, "{kind}: every token expired or went");
        assert_eq!(
            account["closing_at"], "2026-12-02T00:00:01Z",
            "{kind}: the statement's instant"
        );
    }
    let acme = OrgId::parse(&id("Acme")).expect("an org id");
    let mut line_sums: BTreeMap<(String, String), i64> = BTreeMap::new();
    for section in statement["sections"].as_array().expect("sections") {
        for l in section["lines"].as_array().expect("lines") {
            let key = (
                l["asset"].as_str().expect("asset").to_owned(),
                l["account"].as_str().expect("account").to_owned(),
            );
            *line_sums.entry(key).or_default() += number(&l["amount"]);
        }
    }
    for ((asset, kind), account) in &accounts {
        let (opening, closing) = (number(&account["opening"]), number(&account["closing"]));
        let (credits, debits) = (number(&account["credits"]), number(&account["debits"]));
        assert_eq!(
            opening + credits - debits,
            closing,
            "{asset} {kind} reconciles"
        );
        assert_eq!(
            opening + line_sums[&(asset.clone(), kind.clone())],
            closing,
            "{asset} {kind}: its lines"
        );
        let code = AssetCode::parse(asset).expect("an asset");
        let kind_of = match kind.as_str() {
            "alloc" => AccountKind::Alloc,
            "acquired" => AccountKind::Acquired,
            "escrow" => AccountKind::Escrow,
            _ => AccountKind::Wallet,
        };
        let found = store
            .find_account(&code, Owner::Org(acme), kind_of)
            .await
            .expect("find")
            .expect("the account");
        let at =
            |field: &str| instant(account[field].as_str().expect("an instant")).plus_micros(-1);
        let ledger = |at: Timestamp| {
            let store = store.clone();
            let id = found.account.id();
            async move {
                let balance = store
                    .balance_as_of(id, at)
                    .await
                    .expect("as of")
                    .expect("known");
                i64::try_from(balance.net_posted()).expect("in range")
            }
        };
        assert_eq!(
            ledger(at("opening_at")).await,
            opening,
            "{asset} {kind} opening"
        );
        assert_eq!(
            ledger(at("closing_at")).await,
            closing,
            "{asset} {kind} closing"
        );
    }

    // Nothing of Globex's and nothing of December's.
    let text = statement.to_string();
    for absent in ["77777777", "gpt-4o", r#""item":"top-up""#] {
        assert!(
            !text.contains(absent),
            "{absent} is not Acme's November: {text}"
        );
    }
    let december = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{}/statements/2026-12", id("Acme")),
            &alice,
            None,
        ),
    )
    .await;
    expect(&december, StatusCode::OK, "December's statement");
    assert_eq!(december.body["state"], "open");
    assert_eq!(
        lines(&december.body, "credits"),
        [line("CR", w, "grant", 1, 1_000_000)]
    );
    let next = accounts_of(&december.body);
    assert_eq!(
        next["CR"]["opening"], wallet_closing,
        "December opens where November closed"
    );
    assert_eq!(next["CR"]["closing"], wallet_closing + 1_000_000);
    assert_eq!(
        next.len(),
        1,
        "no token of November on December's statement"
    );
    let globex = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{}/statements/2026-11", id("Globex")),
            &gus,
            None,
        ),
    )
    .await;
    expect(&globex, StatusCode::OK, "Globex's statement");
    assert_eq!(
        lines(&globex.body, "credits"),
        [line("CR", w, "top-up", 1, 77_777_777)]
    );
    assert!(
        !globex.body.to_string().contains("claude-sonnet-5"),
        "Acme's usage is Acme's"
    );

    // The list: the current cycle first.
    let list = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{}/statements", id("Acme")),
            &alice,
            None,
        ),
    )
    .await;
    expect(&list, StatusCode::OK, "the list");
    let cycles: Vec<&str> = list.body["statements"]
        .as_array()
        .expect("statements")
        .iter()
        .map(|s| s["cycle"].as_str().expect("a cycle"))
        .collect();
    assert_eq!(cycles, ["2026-12", "2026-11"]);
    assert_eq!(list.body["statements"][1]["href"], uri.as_str());
    assert_eq!(list.body["statements"][1]["pdf_href"], format!("{uri}.pdf"));

    // CSV: one header line, the sections, RFC 4180 lines.
    let csv = raw(
        &service,
        request("GET", &format!("{uri}.csv"), &alice, None),
    )
    .await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    assert_eq!(
        csv.disposition,
        format!(
            "attachment; filename=\"credex-statement-{}-2026-11.csv\"",
            id("Acme")
        )
    );
    let text = String::from_utf8(csv.body).expect("UTF-8");
    assert!(text.ends_with("\r\n"));
    let rows: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        rows[0],
        "section,asset,unit,account,item,count,amount,value"
    );
    assert_eq!(
        rows.iter().filter(|r| r.starts_with("section,")).count(),
        1,
        "one header"
    );
    for expected in [
        "statement,,,,org,,,Acme".to_owned(),
        "statement,,,,state,,,closed".to_owned(),
        format!("allotments,{ASSET},tokens,alloc,allotment,1,2000000,2000000"),
        format!("usage,{ASSET},tokens,alloc,gpt-6-sol,1,-100000,-100000"),
        "credits,CR,micro_cr,wallet,grant,1,50000000,50.000000".to_owned(),
        format!(
            "balance,CR,micro_cr,wallet,closing,,{wallet_closing},{}",
            cr(wallet_closing)
        ),
        format!("expiry_total,{ASSET},tokens,alloc,total,,-300000,-300000"),
    ] {
        assert!(rows.contains(&expected.as_str()), "{expected} in\n{text}");
    }
    let negotiated = raw(
        &service,
        request("GET", &uri, &alice, None).insert_header(("Accept", "text/csv")),
    )
    .await;
    assert_eq!(negotiated.content_type, "text/csv; charset=utf-8");
    assert_eq!(String::from_utf8(negotiated.body).expect("UTF-8"), text);

    // PDF: a document whose text names the org, the cycle and the figures.
    let pdf = raw(
        &service,
        request("GET", &format!("{uri}.pdf"), &alice, None),
    )
    .await;
    assert_eq!(pdf.status, StatusCode::OK);
    assert_eq!(pdf.content_type, "application/pdf");
    assert!(
        pdf.disposition.ends_with("-2026-11.pdf\""),
        "{}",
        pdf.disposition
    );
    assert!(pdf.body.starts_with(b"%PDF-"));
    let (pages, text) = pdf_text(&pdf.body);
    assert!(pages >= 1);
    for expected in [
        "Statement: Acme".to_owned(),
        "Cycle 2026-11".to_owned(),
        "closed".to_owned(),
        "2,000,000".to_owned(),
        "50.000000".to_owned(),
        "gpt-6-sol".to_owned(),
        "claude-sonnet-5".to_owned(),
        "Expiry at the cycle's close".to_owned(),
        grouped_cr(wallet_closing),
    ] {
        assert!(
            text.contains(&expected),
            "{expected:?} in the PDF's text:\n{text}"
        );
    }
    let by_accept = raw(
        &service,
        request("GET", &uri, &alice, None).insert_header(("Accept", "application/pdf")),
    )
    .await;
    assert!(by_accept.body.starts_with(b"%PDF-"));

    // Bad addresses: a cycle that has not started, one before the org, one malformed; another
    // org's statement.
    for (path, status) in [
        (
            format!("/v1/orgs/{}/statements/2027-01", id("Acme")),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/v1/orgs/{}/statements/2026-10.pdf", id("Acme")),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/v1/orgs/{}/statements/2026-13", id("Acme")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/v1/orgs/{}/statements/november.csv", id("Acme")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/v1/orgs/{}/statements/2026-11", id("Globex")),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/v1/orgs/{}/statements/2026-11.csv", id("Globex")),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let answer = call(&service, request("GET", &path, &alice, None)).await;
        expect(&answer, status, &path);
        assert_eq!(
            answer
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{path}"
        );
    }
    // An admin reads any org's statement.
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let as_admin = call(&service, request("GET", &uri, &admin, None)).await;
    expect(&as_admin, StatusCode::OK, "an admin");
    assert_eq!(as_admin.body["accounts"], statement["accounts"]);
    fixture.close().await;
}

/// µCR as CR with six decimals.
fn cr(micro: i64) -> String {
    let sign = if micro < 0 { "-" } else { "" };
    let magnitude = micro.unsigned_abs();
    format!(
        "{sign}{}.{:06}",
        magnitude / 1_000_000,
        magnitude % 1_000_000
    )
}

/// As the PDF writes it: the whole part grouped by thousands.
fn grouped_cr(micro: i64) -> String {
    let text = cr(micro);
    let (whole, fraction) = text.split_once('.').expect("a point");
    let digits: Vec<char> = whole.chars().collect();
    let mut out = String::new();
    for (index, c) in digits.iter().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(*c);
    }
    format!("{out}.{fraction}")
}

/// asset → the statement's account object (for statements with one account per asset).
fn accounts_of(statement: &Value) -> BTreeMap<String, Value> {
    statement["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| (a["asset"].as_str().expect("asset").to_owned(), a.clone()))
        .collect()
}

on_both_backends!(a_cycle_s_statement);
