//! Price alerts on both backends, delivered for real: e-mail through an SMTP server (aiosmtpd)
//! and signed webhooks to an HTTP server. An alert fires once when the best decayed price is at
//! or below its level, never above it; a failing webhook is retried on schedule and then
//! fails with its error; a cancelled alert never fires; bad targets are refused.

mod common;

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::test;
use common::servers::{SmtpServer, WebhookServer, FROM};
use common::{bearer, call, sign_in, Fixture, ADMIN, PASSWORD};
use credex_api::cycles::{open_cycle, CycleId};
use credex_api::market::ListRequest;
use credex_api::startup::app;
use credex_ledger::{Clock, Timestamp};
use credex_store::{AuditAction, AuditEntry, ClassRecord, OrgName, Plan, VerificationLevel};
use credex_tests::TestDb;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn alerts_fire_once_by_email_and_webhook(db: &TestDb) {
    let smtp = SmtpServer::start();
    let hooks = WebhookServer::start();
    let port = smtp.port;
    let fixture = Fixture::configured(db, |config| {
        config.smtp = Some(("127.0.0.1".to_owned(), port, FROM.to_owned()));
        config.webhooks_allow_private = true;
    })
    .await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let store = fixture.assembled.store.clone();
    let market = fixture.assembled.market.clone();
    let alerts = fixture.assembled.alerts.clone();
    let now = fixture.clock.now();

    // A market with one listing: 1M tokens at a base ask of 4 CR per 1M.
    let class = ClassRecord {
        class: "pro".to_owned(),
        face_value_per_1m_micro_cr: 4_000_000,
        description: String::new(),
        created_at: now,
        updated_at: now,
    };
    store.put_class(&class, &audit()).await.expect("a class");
    store
        .put_allotment(
            "pro",
            credex_store::Allotment {
                plan: Plan::Teams,
                tokens_per_cycle: 1_000_000,
            },
            now,
            &audit(),
        )
        .await
        .expect("an allotment");
    let seller = store
        .create_org(
            &OrgName::parse("Seller").expect("a name"),
            Plan::Teams,
            now.plus_micros(-30 * DAY),
        )
        .await
        .expect("an org")
        .id;
    store
        .set_verification(seller, VerificationLevel::new(1).expect("a level"))
        .await
        .expect("verified");
    let cycle = CycleId::of(now);
    open_cycle(&fixture.assembled.ledger, cycle, now)
        .await
        .expect("open");
    let asset = cycle.asset("pro").expect("an asset");
    market
        .list(&ListRequest {
            id: Uuid::now_v7(),
            seller,
            asset: asset.clone(),
            quantity: 1_000_000,
            ask_per_1m_micro_cr: 4_000_000,
            min_fill: None,
            auto_sell_at: None,
        })
        .await
        .expect("a listing");
    let best = market.depth(&asset, 1).await.expect("depth")[0].price_per_1m_micro_cr;
    assert!(best <= 4_000_000);

    // The watcher: an org whose owner asks for alerts.
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    let made = call(
        &service,
        bearer(
            test::TestRequest::post()
                .uri("/v1/admin/orgs")
                .set_json(json!({"name": "Watcher", "plan": "teams"})),
            &admin,
        ),
    )
    .await;
    let org = made.body["id"].as_str().expect("an id").to_owned();
    let user =
        json!({"email": "w@watcher.example", "password": PASSWORD, "org_id": org, "role": "owner"});
    call(
        &service,
        bearer(
            test::TestRequest::post()
                .uri("/v1/admin/users")
                .set_json(user),
            &admin,
        ),
    )
    .await;
    let owner = sign_in(&service, "w@watcher.example", PASSWORD).await;
    let create = |below: u64, notify: Value| {
        bearer(
            test::TestRequest::post()
                .uri(&format!("/v1/orgs/{org}/price-alerts"))
                .set_json(json!({"asset": asset.as_str(), "below_per_1m_micro_cr": below, "notify": notify})),
            &owner,
        )
    };
    let email = call(
        &service,
        create(
            best,
            json!({"channel": "email", "email": "ops@watcher.example"}),
        ),
    )
    .await;
    assert_eq!(email.status, StatusCode::CREATED, "{}", email.body);
    let webhook = call(
        &service,
        create(
            best + 1,
            json!({"channel": "webhook", "url": hooks.url("/credex")}),
        ),
    )
    .await;
    assert_eq!(webhook.status, StatusCode::CREATED, "{}", webhook.body);
    let secret = webhook.body["webhook_secret"]
        .as_str()
        .expect("a secret, once")
        .to_owned();
    let below = call(
        &service,
        create(
            best - 1,
            json!({"channel": "webhook", "url": hooks.url("/below")}),
        ),
    )
    .await;
    assert_eq!(below.status, StatusCode::CREATED);
    let failing = call(
        &service,
        create(
            best,
            json!({"channel": "webhook", "url": hooks.url("/fail")}),
        ),
    )
    .await;
    let cancelled = call(
        &service,
        create(
            best,
            json!({"channel": "email", "email": "nobody@watcher.example"}),
        ),
    )
    .await;
    let cancel = call(
        &service,
        bearer(
            test::TestRequest::delete().uri(&format!(
                "/v1/orgs/{org}/price-alerts/{}",
                cancelled.body["id"].as_str().expect("id")
            )),
            &owner,
        ),
    )
    .await;
    assert_eq!(cancel.body["state"], "cancelled", "{}", cancel.body);
    // Cancelled, it is gone from its address (the list keeps it, as history).
    let gone = call(
        &service,
        bearer(
            test::TestRequest::get().uri(&format!(
                "/v1/orgs/{org}/price-alerts/{}",
                cancelled.body["id"].as_str().expect("id")
            )),
            &owner,
        ),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
    for (body, why) in [
        (
            json!({"channel": "webhook", "url": "https://hooks.example.com/"}),
            "https",
        ),
        (
            json!({"channel": "email", "email": "not an address@x"}),
            "address",
        ),
    ] {
        let refused = call(&service, create(best, body)).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{why}: {}",
            refused.body
        );
    }

    // One pass: the e-mail and the webhook at or above the price fire; the one below does not.
    let report = alerts.run(&market).await.expect("a pass");
    assert_eq!((report.delivered, report.failed), (2, 1), "{report:?}");
    let mails = smtp.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 1, "the cancelled alert sent nothing");
    assert_eq!(mails[0]["headers"]["To"], "ops@watcher.example");
    assert!(
        mails[0]["headers"]["Subject"]
            .as_str()
            .expect("a subject")
            .contains(asset.as_str()),
        "{}",
        mails[0]
    );
    let requests = hooks.wait_for_requests(2, Duration::from_secs(10)).await;
    let delivered: Vec<_> = requests.iter().filter(|r| r.path == "/credex").collect();
    assert_eq!(delivered.len(), 1);
    let request = delivered[0];
    let signature = request.header("credex-signature");
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .expect("t=…,v1=…");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("a key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(&request.body);
    assert_eq!(
        hex(&mac.finalize().into_bytes()),
        v1,
        "the signature verifies"
    );
    assert_eq!(
        request.header("credex-event-id"),
        webhook.body["id"].as_str().expect("id")
    );
    let event: Value = serde_json::from_slice(&request.body).expect("JSON");
    assert_eq!(event["type"], "price_alert.triggered");
    assert_eq!(event["price_per_1m_micro_cr"], best);
    assert!(
        requests.iter().all(|r| r.path != "/below"),
        "never above its level"
    );

    // Spent: the next pass sends nothing again.
    let again = alerts.run(&market).await.expect("a pass");
    assert_eq!(
        (again.delivered, again.failed),
        (0, 0),
        "the failing one waits a minute"
    );
    let listed = call(
        &service,
        bearer(
            test::TestRequest::get().uri(&format!("/v1/orgs/{org}/price-alerts")),
            &owner,
        ),
    )
    .await;
    let state_of = |id: &Value| {
        listed
            .body
            .as_array()
            .expect("alerts")
            .iter()
            .find(|a| a["id"] == *id)
            .expect("listed")["state"]
            .clone()
    };
    assert_eq!(state_of(&email.body["id"]), "delivered");
    assert_eq!(state_of(&webhook.body["id"]), "delivered");
    assert_eq!(state_of(&below.body["id"]), "active");
    assert_eq!(state_of(&failing.body["id"]), "active");
    assert!(listed
        .body
        .as_array()
        .expect("alerts")
        .iter()
        .all(|a| a.get("webhook_secret").is_none()));

    // The failing webhook is retried after 1, 5, 30 and 120 minutes, then fails.
    for minutes in [1, 5, 30, 120] {
        fixture.clock.advance_seconds(minutes * 60 + 1);
        let retry = alerts.run(&market).await.expect("a pass");
        assert_eq!(retry.failed, 1, "retried after {minutes} min");
    }
    let owner = sign_in(&service, "w@watcher.example", PASSWORD).await;
    let failed = call(
        &service,
        bearer(
            test::TestRequest::get().uri(&format!(
                "/v1/orgs/{org}/price-alerts/{}",
                failing.body["id"].as_str().expect("id")
            )),
            &owner,
        ),
    )
    .await;
    assert_eq!(failed.body["state"], "failed", "{}", failed.body);
    assert_eq!(failed.body["attempts"], 5);
    assert!(failed.body["last_error"]
        .as_str()
        .expect("an error")
        .contains("500"));
    hooks.handle.stop(true).await;
    fixture.close().await;
}

credex_tests::on_both_backends!(alerts_fire_once_by_email_and_webhook);
