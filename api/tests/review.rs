//! Fraud review on both backends: each pattern raises flags on exactly the orgs involved, with
//! the reason in the flag and in every refused trade; a flagged org can neither buy nor sell
//! until an admin clears its flag (audited); a scan raises nothing twice.

mod common;

use actix_web::http::StatusCode;
use actix_web::test;
use common::{bearer, call, sign_in, Fixture, ADMIN, PASSWORD};
use credex_api::cycles::{close_cycle, open_cycle, CycleId};
use credex_api::market::{BuyRequest, FraudPolicy, ListRequest, Market, MarketError, Refusal};
use credex_api::review::{scan, ReviewPolicy};
use credex_api::startup::app;
use credex_ledger::{Clock, OrgId, Timestamp};
use credex_matching::Limit;
use credex_store::{
    Allotment, AuditAction, AuditEntry, ClassRecord, FlagKind, OrgName, Plan, VerificationLevel,
};
use credex_tests::TestDb;
use serde_json::json;
use uuid::Uuid;

const DAY: i64 = 86_400_000_000;

fn audit() -> AuditEntry {
    AuditEntry::new(
        Timestamp::EPOCH,
        AuditAction::parse("test").expect("an action"),
        "test",
        json!({}),
    )
    .expect("an entry")
}

fn post(uri: &str, body: serde_json::Value) -> test::TestRequest {
    test::TestRequest::post().uri(uri).set_json(body)
}

/// Three new orgs whose owners share a company domain are flagged, a fourth at a webmail
/// domain is not; members see the flag; a flagged org's order is refused with the reason; the
/// admin clears it and the org trades again; a second scan raises nothing.
async fn clusters_of_new_orgs_are_flagged_and_cleared(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let mut orgs = Vec::new();
    for (i, email) in [
        "a@shell.example",
        "b@shell.example",
        "c@SHELL.example",
        "d@gmail.com",
    ]
    .into_iter()
    .enumerate()
    {
        let org = call(
            &service,
            bearer(
                post(
                    "/v1/admin/orgs",
                    json!({"name": format!("Org {i}"), "plan": "teams"}),
                ),
                &admin,
            ),
        )
        .await;
        let org = org.body["id"].as_str().expect("an id").to_owned();
        let user = json!({"email": email, "password": PASSWORD, "org_id": org, "role": "owner"});
        let made = call(&service, bearer(post("/v1/admin/users", user), &admin)).await;
        assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
        orgs.push((org, email.to_ascii_lowercase()));
    }
    let scanned = call(
        &service,
        bearer(post("/v1/admin/review/scan", json!({})), &admin),
    )
    .await;
    assert_eq!(scanned.status, StatusCode::OK, "{}", scanned.body);
    assert_eq!(scanned.body["shared_email_domain"], 3, "{}", scanned.body);
    let again = call(
        &service,
        bearer(post("/v1/admin/review/scan", json!({})), &admin),
    )
    .await;
    assert_eq!(again.body["raised"], 0, "a scan raises nothing twice");

    let flags = call(
        &service,
        bearer(
            test::TestRequest::get().uri("/v1/admin/review/flags"),
            &admin,
        ),
    )
    .await;
    let flagged: Vec<&str> = flags
        .body
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| f["org_id"].as_str().expect("org"))
        .collect();
    assert_eq!(flagged.len(), 3);
    assert!(
        !flagged.contains(&orgs[3].0.as_str()),
        "a webmail domain says nothing"
    );
    let owner = sign_in(&service, &orgs[0].1, PASSWORD).await;
    let own = call(
        &service,
        bearer(
            test::TestRequest::get().uri(&format!("/v1/orgs/{}/review-flags", orgs[0].0)),
            &owner,
        ),
    )
    .await;
    let flag = own.body[0].clone();
    assert_eq!(flag["kind"], "shared_email_domain", "{}", own.body);
    assert!(flag["reason"]
        .as_str()
        .expect("a reason")
        .contains("shell.example"));

    // The flagged org's order is refused, whatever the market: the flag comes first.
    let order = |key: &str| {
        bearer(
            post(
                &format!("/v1/orgs/{}/orders", orgs[0].0),
                json!({"asset": "TOK.pro.2026-11", "quantity": 1}),
            ),
            &owner,
        )
        .insert_header(("Idempotency-Key", key.to_owned()))
    };
    // No market exists yet: set one up so the order reaches the policy.
    let store = fixture.assembled.store.clone();
    let now = fixture.clock.now();
    store
        .put_class(
            &ClassRecord {
                class: "pro".to_owned(),
                face_value_per_1m_micro_cr: 4_000_000,
                description: String::new(),
                created_at: now,
                updated_at: now,
            },
            &audit(),
        )
        .await
        .expect("a class");
    open_cycle(&fixture.assembled.ledger, CycleId::of(now), now)
        .await
        .expect("open");
    let refused = call(&service, order("flagged-1")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let detail = refused.body["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("flagged for review") && detail.contains("shell.example"),
        "{detail}"
    );

    let cleared = call(
        &service,
        bearer(
            post(
                &format!(
                    "/v1/admin/review/flags/{}/clear",
                    flag["id"].as_str().expect("id")
                ),
                json!({"note": "one company, three teams: confirmed by phone"}),
            ),
            &admin,
        ),
    )
    .await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.body);
    assert!(cleared.body["cleared_at"].is_string());
    let traded = call(&service, order("flagged-2")).await;
    assert_eq!(
        traded.status,
        StatusCode::CREATED,
        "cleared, it trades: {}",
        traded.body
    );
    let audit = call(
        &service,
        bearer(
            test::TestRequest::get().uri("/v1/admin/audit?action=review.clear"),
            &admin,
        ),
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

struct World {
    market: Market,
    ledger: std::sync::Arc<credex_store::Ledger>,
    clock: std::sync::Arc<credex_ledger::ManualClock>,
    orgs: Vec<OrgId>,
}

async fn world(db: &TestDb, start: Timestamp, count: usize) -> World {
    let clock = std::sync::Arc::new(credex_ledger::ManualClock::new(start));
    let ledger = std::sync::Arc::new(db.ledger(clock.clone()).await);
    let store = ledger.store().clone();
    let class = ClassRecord {
        class: "pro".to_owned(),
        face_value_per_1m_micro_cr: 4_000_000,
        description: String::new(),
        created_at: start,
        updated_at: start,
    };
    store.put_class(&class, &audit()).await.expect("a class");
    let allotment = Allotment {
        plan: Plan::Teams,
        tokens_per_cycle: 1_000_000,
    };
    store
        .put_allotment("pro", allotment, start, &audit())
        .await
        .expect("an allotment");
    let mut orgs = Vec::new();
    for i in 0..count {
        let name = OrgName::parse(&format!("Org {i}")).expect("a name");
        let org = store
            .create_org(&name, Plan::Teams, start.plus_micros(-60 * DAY))
            .await
            .expect("an org")
            .id;
        store
            .set_verification(org, VerificationLevel::new(1).expect("a level"))
            .await
            .expect("verified");
        orgs.push(org);
    }
    let market = Market::new(ledger.clone(), FraudPolicy::default());
    World {
        market,
        ledger,
        clock,
        orgs,
    }
}

/// Two orgs trading with each other five times are both flagged (and no one else is); an
/// org that sells 90% of its allotment and spends none of it in two closed cycles in a row is
/// flagged, one that did so once is not; a flagged seller cannot list.
async fn repeated_trades_and_selling_the_allotment_are_flagged(db: &TestDb) {
    let sep = CycleId::parse("2026-09").expect("a cycle");
    let w = world(db, sep.starts_at(), 4).await;
    let (seller, buyer, once, bystander) = (w.orgs[0], w.orgs[1], w.orgs[2], w.orgs[3]);
    let store = w.ledger.store().clone();
    // September: both sell 900k in 3 buys; October: the seller alone, in 5 buys. The scan
    // runs at November's start: only October's fills are in its 30 days.
    for (cycle, sellers, buys) in [
        (sep, vec![seller, once], 3_u64),
        (CycleId::parse("2026-10").expect("a cycle"), vec![seller], 5),
    ] {
        w.clock.set(cycle.starts_at());
        open_cycle(&w.ledger, cycle, cycle.starts_at())
            .await
            .expect("open");
        let asset = cycle.asset("pro").expect("an asset");
        let info = w.market.ensure_market(&asset).await.expect("a market");
        w.clock.set(info.record.window_open.plus_micros(1));
        for org in &sellers {
            w.market
                .list(&ListRequest {
                    id: Uuid::now_v7(),
                    seller: *org,
                    asset: asset.clone(),
                    quantity: 900_000,
                    ask_per_1m_micro_cr: 1_000,
                    min_fill: None,
                    auto_sell_at: None,
                })
                .await
                .expect("a listing");
        }
        let credit = credex_ledger::AssetCode::credit();
        let issuance = w
            .ledger
            .ensure_account(
                &credit,
                credex_ledger::Owner::Provider,
                credex_ledger::AccountKind::Issuance,
            )
            .await
            .expect("issuance");
        let wallet = w
            .ledger
            .ensure_account(
                &credit,
                credex_ledger::Owner::Org(buyer),
                credex_ledger::AccountKind::Wallet,
            )
            .await
            .expect("wallet");
        let top_up = credex_ledger::Transfer::new(
            credex_ledger::TransferId::generate(),
            credex_ledger::Action::Move(
                credex_ledger::Movement::new(
                    issuance.account.id(),
                    wallet.account.id(),
                    credit,
                    credex_ledger::Amount::new(1_000_000_000).expect("an amount"),
                    credex_ledger::TransferCode::TopUp,
                )
                .expect("a movement"),
            ),
            credex_ledger::Metadata::new("test").expect("metadata"),
            false,
        )
        .expect("a transfer");
        w.ledger
            .create_transfers(vec![top_up])
            .await
            .expect("credits");
        let total = 900_000 * u64::try_from(sellers.len()).expect("small");
        for _ in 0..buys {
            w.market
                .buy(&BuyRequest {
                    id: Uuid::now_v7(),
                    buyer,
                    asset: asset.clone(),
                    quantity: total / buys,
                    limit: Limit::PricePer1m(1_000_000),
                    allow_provider_fill: false,
                })
                .await
                .expect("a buy");
        }
        w.clock.set(cycle.ends_at());
        close_cycle(&w.ledger, cycle, cycle.ends_at())
            .await
            .expect("close");
    }
    let now = w.clock.now();
    let report = scan(store.as_ref(), &ReviewPolicy::default(), now)
        .await
        .expect("a scan");
    let flags = store.flags(None, true, 100).await.expect("flags");
    let of = |org: OrgId, kind: FlagKind| {
        flags
            .iter()
            .filter(|f| f.org == org && f.kind == kind)
            .count()
    };
    assert_eq!(of(seller, FlagKind::SellsAllotment), 1, "{flags:#?}");
    assert_eq!(
        of(once, FlagKind::SellsAllotment),
        0,
        "once is not a pattern"
    );
    assert_eq!(of(buyer, FlagKind::SellsAllotment), 0);
    assert_eq!(of(seller, FlagKind::RepeatedCounterparty), 1, "{report:?}");
    assert_eq!(of(buyer, FlagKind::RepeatedCounterparty), 1);
    assert_eq!(
        of(once, FlagKind::RepeatedCounterparty),
        0,
        "no trade with once in 30 days"
    );
    assert!(flags.iter().all(|f| f.org != bystander));
    let sells = flags
        .iter()
        .find(|f| f.org == seller && f.kind == FlagKind::SellsAllotment)
        .expect("a flag");
    assert!(
        sells.reason.contains("900000 of 1000000 tokens sold"),
        "{}",
        sells.reason
    );

    // Flagged, the seller cannot list in the next cycle.
    let nov = CycleId::parse("2026-11").expect("a cycle");
    open_cycle(&w.ledger, nov, nov.starts_at())
        .await
        .expect("open");
    let asset = nov.asset("pro").expect("an asset");
    let info = w.market.ensure_market(&asset).await.expect("a market");
    w.clock.set(info.record.window_open.plus_micros(1));
    let refused = w
        .market
        .list(&ListRequest {
            id: Uuid::now_v7(),
            seller,
            asset,
            quantity: 1,
            ask_per_1m_micro_cr: 1_000,
            min_fill: None,
            auto_sell_at: None,
        })
        .await;
    assert!(
        matches!(
            refused,
            Err(MarketError::Refused(Refusal::UnderReview { .. }))
        ),
        "{refused:?}"
    );
}

credex_tests::on_both_backends!(
    clusters_of_new_orgs_are_flagged_and_cleared,
    repeated_trades_and_selling_the_allotment_are_flagged
);
