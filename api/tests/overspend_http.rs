//! The overspend test, over HTTP with two `credex serve` processes on one PostgreSQL
//! database: an org with a hard budget of 1,000,000 µCR and plenty of credits sends 200
//! concurrent usage requests, each one call worth 10,000 µCR (1,000 output tokens at $10 per
//! 1M), half to each server. Exactly 100 are charged (201); the other 100 are refused with 402
//! `budget-exceeded`; the budget's spend for the period is exactly its limit; the wallet paid
//! exactly 1,000,000 µCR; 100 calls are recorded; each threshold alerted once; the books
//! balance. (Well-known LLM gateways overspend their hard budgets several times over under
//! exactly this load.)

mod common;

use std::time::Instant;

use common::process::{http, Server, JWT_SECRET};
use common::{ADMIN, PASSWORD};
use credex_api::auth::tokens;
use credex_api::budgets::{Budget, NewBudget, Period, Scope};
use credex_api::config::{Config, Secret};
use credex_api::startup::assemble;
use credex_ledger::{AccountKind, AssetCode, OrgId, Owner, Timestamp};
use credex_store::{
    ApiKeyName, ApiKeyPrefix, Email, NewApiKey, OrgName, Plan, Scope as KeyScope, Scopes,
    SystemClock, TokenHash,
};
use credex_tests::{audit, top_up, TestDb};
use serde_json::Value;
use uuid::Uuid;

const REQUESTS: usize = 200;
const LIMIT: u64 = 1_000_000;
const COST: u64 = 10_000;
/// 100 CR: the wallet never runs dry, only the budget stops the calls.
const CREDITS: u64 = 100_000_000;

struct Fixture {
    org: OrgId,
    key: String,
    budget: Budget,
}

async fn build_fixture(db: &TestDb) -> Fixture {
    let dir = tempfile::tempdir().expect("a directory");
    let mut config = Config::new("127.0.0.1:0", dir.path()).with_database_url(db.url());
    config.admin_email = Some(ADMIN.to_owned());
    config.admin_password = Some(Secret::new(PASSWORD));
    config.jwt_secret = Some(Secret::new(JWT_SECRET));
    let assembled = assemble(&config, std::sync::Arc::new(SystemClock))
        .await
        .expect("assemble");
    let ledger = assembled.ledger.clone();
    let store = ledger.store().clone();
    let now = store.clock().now();
    let org = store
        .create_org(
            &OrgName::parse("Spendthrift").expect("a name"),
            Plan::Teams,
            now,
        )
        .await
        .expect("an org")
        .id;
    top_up(&ledger, org, CREDITS).await;
    let email = Email::parse(ADMIN).expect("an e-mail");
    let (admin, _) = store
        .user_by_email(&email)
        .await
        .expect("read the admin")
        .expect("the first admin");
    let (key, prefix) = tokens::api_key();
    let new = NewApiKey {
        org,
        name: ApiKeyName::parse("worker").expect("a name"),
        prefix: ApiKeyPrefix::parse(&prefix).expect("a prefix"),
        secret_hash: TokenHash::from_bytes(tokens::digest(&key)),
        scopes: Scopes::new([KeyScope::UsageWrite]).expect("scopes"),
        created_by: admin.id,
    };
    store.create_api_key(&new, now).await.expect("an API key");
    let budget = Budget::new(
        Uuid::now_v7(),
        org,
        NewBudget {
            name: "the whole org".to_owned(),
            scope: Scope::Org,
            period: Period::Cycle,
            time_zone: "UTC".to_owned(),
            limit_micro_cr: LIMIT,
            thresholds: vec![75, 90, 100],
            hard: true,
        },
        now,
    )
    .expect("a budget");
    store
        .put_budget(&budget.record(), &audit("budgets.create"))
        .await
        .expect("stored");
    ledger.close().await;
    store.close().await;
    drop(assembled);
    Fixture { org, key, budget }
}

async fn wallet(store: &dyn credex_store::Store, org: OrgId) -> i128 {
    store
        .find_account(&AssetCode::credit(), Owner::Org(org), AccountKind::Wallet)
        .await
        .expect("find")
        .map_or(0, |view| view.balance.net_posted())
}

async fn overspend(db: &TestDb) {
    let started = Instant::now();
    let fixture = build_fixture(db).await;
    let mut servers = [Server::spawn(db.url()), Server::spawn(db.url())];
    for server in &mut servers {
        server.wait_port();
    }
    let ports = [servers[0].port, servers[1].port];
    eprintln!("servers on ports {ports:?} after {:?}", started.elapsed());

    let path = format!("/v1/orgs/{}/usage", fixture.org);
    let bearer = format!("Bearer {}", fixture.key);
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let (path, bearer) = (path.clone(), bearer.clone());
        let port = ports[i % 2];
        let body = serde_json::json!({"events": [{"id": Uuid::new_v4().to_string(),
            "model": "gpt-6-sol", "input_tokens": 0, "output_tokens": 1_000}]})
        .to_string();
        tasks.push(tokio::spawn(async move {
            http(port, "POST", &path, &[("Authorization", &bearer)], &body).await
        }));
    }
    let (mut charged, mut refused) = (0, 0);
    for task in tasks {
        let reply = task.await.expect("a request");
        let body: Value = serde_json::from_str(&reply.body).expect("JSON");
        match reply.status {
            201 => {
                assert_eq!(body["charged"]["cost_micro_cr"], COST, "{body}");
                charged += 1;
            }
            402 => {
                assert_eq!(
                    body["type"], "https://credex.dev/problems/budget-exceeded",
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    for server in &mut servers {
        server.assert_running();
        server.sigterm();
    }
    for server in &mut servers {
        let status = server.wait_stopped();
        assert!(status.success(), "{status}:\n{}", server.log());
    }
    eprintln!(
        "{REQUESTS} requests answered: {charged} charged, {refused} refused, after {:?}",
        started.elapsed()
    );
    assert_eq!((charged, refused), (100, 100));

    let ledger = db.ledger(std::sync::Arc::new(SystemClock)).await;
    let store = ledger.store().clone();
    let recorded = store
        .usage_events(
            fixture.org,
            Timestamp::EPOCH,
            Timestamp::from_micros(i64::MAX),
            None,
            1_000,
        )
        .await
        .expect("events");
    assert_eq!(recorded.len(), 100);
    let start = fixture.budget.period_start(recorded[0].occurred_at);
    assert_eq!(
        store
            .budget_spent(fixture.budget.id(), start)
            .await
            .expect("spent"),
        LIMIT,
        "the budget's spend is exactly its limit"
    );
    assert_eq!(
        wallet(store.as_ref(), fixture.org).await,
        i128::from(CREDITS - LIMIT),
        "the wallet paid exactly the limit"
    );
    let mut thresholds: Vec<u32> = store
        .budget_alerts(fixture.org, 100)
        .await
        .expect("alerts")
        .iter()
        .map(|alert| alert.threshold)
        .collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, vec![75, 90, 100]);
    let report = store.check().await.expect("check");
    assert!(report.is_ok(), "{report:?}");
    ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_never_overspend_a_hard_budget() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    overspend(&db).await;
    db.finish().await;
}
