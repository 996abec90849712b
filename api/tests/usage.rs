//! Usage recording on both backends: an event is priced at its instant and charged from
//! `acquired`, then `alloc` of its class and cycle, then the wallet; a batch that cannot be
//! paid is refused whole, changing nothing; an event id is charged once (a replay answers the
//! charge, other values under it are refused); two processes charging one org concurrently
//! never take more than its balances hold.

mod common;

use std::sync::Arc;

use common::usage_world::{add_budget, budget, event, face, world, ALLOT, CREDITS, DAY, MODEL};
use credex_api::budgets::{Budget, Scope};
use credex_api::market::{BuyRequest, FraudPolicy, Market};
use credex_api::usage::{Usage, UsageError, UsageEvent};
use credex_ledger::{AccountKind, Owner, Timestamp};
use credex_matching::Limit;
use credex_pricing::TokenUsage;
use credex_store::{OrgName, Plan, RepaymentOutcome};
use credex_tests::{audit, on_both_backends, top_up, TestDb};
use uuid::Uuid;

async fn charged_acquired_then_alloc_then_wallet(db: &TestDb) {
    let w = world(db, 1).await;
    let org = w.orgs[0];
    // 300,000 tokens bought as emergency credits (from the provider, at the face value).
    let market = Market::new(w.ledger.clone(), FraudPolicy::default());
    let bought = market
        .buy(&BuyRequest {
            id: Uuid::new_v4(),
            buyer: org,
            asset: w.asset.clone(),
            quantity: 300_000,
            limit: Limit::PricePer1m(10_000_000),
            allow_provider_fill: true,
        })
        .await
        .expect("a buy");
    assert_eq!(bought.summary.from_provider, 300_000);
    let wallet = i128::from(CREDITS) - i128::from(bought.summary.buyer_paid_micro_cr);
    assert_eq!(w.balances(org).await, (300_000, i128::from(ALLOT), wallet));
    let now = w.now();

    // 200,000 input tokens ($0.40): all from acquired.
    let first = w
        .record(org, vec![event(200_000, 0, now)])
        .await
        .expect("recorded");
    let r = &first[0].record;
    assert_eq!(
        (
            r.cost_micro_cr,
            r.from_acquired,
            r.from_alloc,
            r.from_wallet_micro_cr
        ),
        (400_000, 200_000, 0, 0)
    );
    assert_eq!(
        (r.class.as_str(), r.price_source.as_str()),
        ("pro", "catalog")
    );
    assert_eq!(r.transfer_ids.len(), 1);
    assert!(!first[0].replayed);

    // 150,000 tokens: the 100,000 acquired left, then 50,000 from alloc.
    let second = w
        .record(org, vec![event(100_000, 50_000, now)])
        .await
        .expect("recorded");
    let r = &second[0].record;
    assert_eq!(
        (r.from_acquired, r.from_alloc, r.from_wallet_micro_cr),
        (100_000, 50_000, 0)
    );
    assert_eq!(r.transfer_ids.len(), 2);

    // 2,000,000 input tokens — above 272,000 prompt tokens the model's long-context rate of
    // $4 per 1M applies: $8 — with 1,950,000 left in alloc: the wallet pays for 50,000 of them,
    // 8 CR × 50,000 / 2,000,000 = 0.2 CR.
    let big = event(2_000_000, 0, now);
    let third = w.record(org, vec![big.clone()]).await.expect("recorded");
    let r = &third[0].record;
    assert_eq!(
        (
            r.cost_micro_cr,
            r.from_acquired,
            r.from_alloc,
            r.from_wallet_micro_cr
        ),
        (8_000_000, 0, 1_950_000, 200_000)
    );
    assert_eq!(w.balances(org).await, (0, 0, wallet - 200_000));
    assert_eq!(
        w.net(&w.asset, Owner::Provider, AccountKind::Spent).await,
        i128::from(300_000 + ALLOT)
    );

    // A replay answers the recorded charge and moves nothing; other values under its id are
    // refused.
    let again = w.record(org, vec![big.clone()]).await.expect("a replay");
    assert!(again[0].replayed);
    assert_eq!(again[0].record, third[0].record);
    let changed = UsageEvent {
        tokens: TokenUsage::new(1, 0, 0, 0).expect("tokens"),
        ..big.clone()
    };
    let refused = w.record(org, vec![changed]).await;
    assert!(
        matches!(refused, Err(UsageError::Conflict { index: 0, .. })),
        "{refused:?}"
    );
    assert_eq!(w.balances(org).await, (0, 0, wallet - 200_000));
    assert_eq!(w.recorded(org).await, 3);
    assert!(w.store().check().await.expect("check").is_ok());
    w.ledger.close().await;
}

async fn a_batch_that_cannot_be_paid_changes_nothing(db: &TestDb) {
    let w = world(db, 1).await;
    let org = w.orgs[0];
    let now = w.now();
    let before = w.balances(org).await;
    // The allotment, then 10 CR buy 1,000,000 output tokens ($10): the second event is short.
    let fits = event(ALLOT, 0, now);
    let too_much = event(0, 1_000_001, now);
    let refused = w.record(org, vec![fits.clone(), too_much.clone()]).await;
    match refused {
        Err(UsageError::InsufficientFunds {
            index,
            id,
            needed_micro_cr,
            available_micro_cr,
        }) => {
            assert_eq!((index, id), (1, too_much.id));
            assert_eq!((needed_micro_cr, available_micro_cr), (10_000_010, CREDITS));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.balances(org).await, before);
    assert_eq!(w.recorded(org).await, 0);

    // A model unknown, or no price in force at the event's instant (the model's first price is
    // from 1 November): refused, naming the event.
    let unknown = UsageEvent {
        model: "no-such-model".to_owned(),
        ..event(1, 0, now)
    };
    let refused = w.record(org, vec![fits.clone(), unknown]).await;
    assert!(
        matches!(refused, Err(UsageError::Price { index: 1, .. })),
        "{refused:?}"
    );
    let october = event(1, 0, now.plus_micros(-40 * DAY));
    let refused = w.record(org, vec![october]).await;
    assert!(
        matches!(refused, Err(UsageError::Price { index: 0, .. })),
        "{refused:?}"
    );
    // Malformed batches.
    let refused = w.record(org, vec![fits.clone(), fits.clone()]).await;
    assert!(
        matches!(refused, Err(UsageError::Duplicate { index: 1, .. })),
        "{refused:?}"
    );
    let refused = w.record(org, Vec::new()).await;
    assert!(
        matches!(refused, Err(UsageError::BatchSize { .. })),
        "{refused:?}"
    );
    assert_eq!(w.balances(org).await, before);

    // What fits is charged.
    let recorded = w.record(org, vec![fits]).await.expect("recorded");
    assert_eq!(recorded[0].record.from_alloc, ALLOT);
    assert!(w.store().check().await.expect("check").is_ok());
    w.ledger.close().await;
}

/// Two processes charge one org 40 events of 1 CR each (100,000 output tokens at $10 per 1M)
/// from a wallet of 10 CR, concurrently: exactly 10 are charged, the rest refused, the wallet
/// ends at 0 and the books balance.
/// One org whose allotment is spent (so that only its wallet pays), and two usage services on
/// the database, each with a ledger and pool of its own: two processes.
async fn wallet_only_in_two_processes(
    db: &TestDb,
) -> (
    common::usage_world::World,
    Arc<credex_store::Ledger>,
    [Arc<Usage>; 2],
) {
    let w = world(db, 1).await;
    w.record(w.orgs[0], vec![event(ALLOT, 0, w.now())])
        .await
        .expect("recorded");
    let second = Arc::new(db.ledger(w.clock.clone()).await);
    let services = [
        Arc::new(Usage::new(w.ledger.clone(), face())),
        Arc::new(Usage::new(second.clone(), face())),
    ];
    (w, second, services)
}

async fn concurrent_charges_never_overdraw(db: &TestDb) {
    let (w, second, services) = wallet_only_in_two_processes(db).await;
    let org = w.orgs[0];
    let now = w.now();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let usage = services[i % 2].clone();
        let one = event(0, 100_000, now);
        tasks.push(tokio::spawn(
            async move { usage.record(org, vec![one]).await },
        ));
    }
    let (mut charged, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("a task") {
            Ok(recorded) => {
                assert_eq!(recorded[0].record.from_wallet_micro_cr, 1_000_000);
                charged += 1;
            }
            Err(UsageError::InsufficientFunds { .. }) => refused += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((charged, refused), (10, 30));
    assert_eq!(w.balances(org).await, (0, 0, 0));
    assert_eq!(w.recorded(org).await, 11);
    assert!(w.store().check().await.expect("check").is_ok());
    second.close().await;
    w.ledger.close().await;
}

/// The overspend test, on one database shared by two processes (two ledgers and usage
/// services, two connection pools): a hard budget of 1,000,000 µCR and 200 concurrent
/// requests of 10,000 µCR each (1,000 output tokens at $10 per 1M). Exactly 100 are charged;
/// the rest are refused by the budget; the budget's spend is exactly its limit, each threshold
/// alerted once, and nothing was charged for a refused request.
async fn a_hard_budget_is_never_overspent(db: &TestDb) {
    // Every request is paid by the wallet (10 CR).
    let (w, second, services) = wallet_only_in_two_processes(db).await;
    let org = w.orgs[0];
    let hard = add_budget(&w, org, budget("org", Scope::Org, 1_000_000, true)).await;
    let now = w.now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let usage = services[i % 2].clone();
        let one = event(0, 1_000, now);
        tasks.push(tokio::spawn(
            async move { usage.record(org, vec![one]).await },
        ));
    }
    let (mut charged, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("a task") {
            Ok(recorded) => {
                assert_eq!(recorded[0].record.cost_micro_cr, 10_000);
                charged += 1;
            }
            Err(UsageError::BudgetExceeded {
                budget,
                limit_micro_cr,
                ..
            }) => {
                assert_eq!((budget, limit_micro_cr), (hard.id(), 1_000_000));
                refused += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((charged, refused), (100, 100));
    let start = hard.period_start(now);
    assert_eq!(
        w.store()
            .budget_spent(hard.id(), start)
            .await
            .expect("spent"),
        1_000_000
    );
    let (_, _, wallet) = w.balances(org).await;
    assert_eq!(wallet, i128::from(CREDITS) - 1_000_000);
    let mut thresholds: Vec<u32> = w
        .store()
        .budget_alerts(org, 100)
        .await
        .expect("alerts")
        .iter()
        .map(|alert| alert.threshold)
        .collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, vec![75, 90, 100]);
    assert_eq!(w.recorded(org).await, 101);
    assert!(w.store().check().await.expect("check").is_ok());
    second.close().await;
    w.ledger.close().await;
}

/// Budgets count only their scope's calls; a soft one alerts and never refuses; a new period
/// starts from zero; a deleted budget no longer counts.
async fn budgets_count_their_scope_and_period(db: &TestDb) {
    let w = world(db, 1).await;
    let org = w.orgs[0];
    let now = w.now();
    let user = Uuid::now_v7();
    let task = add_budget(
        &w,
        org,
        budget(
            "summaries",
            Scope::Task("summaries".to_owned()),
            500_000,
            true,
        ),
    )
    .await;
    let soft = add_budget(&w, org, budget("alice", Scope::User(user), 100_000, false)).await;
    // 200,000 input tokens at $2 per 1M: 400,000 µCR, labelled `summaries` by `event`.
    let mut by_alice = event(200_000, 0, now);
    by_alice.user = Some(user);
    w.record(org, vec![by_alice]).await.expect("recorded");
    let spent = |budget: &Budget, at: Timestamp| {
        let start = budget.period_start(at);
        let id = budget.id();
        let store = w.store().clone();
        async move { store.budget_spent(id, start).await.expect("spent") }
    };
    assert_eq!(spent(&task, now).await, 400_000);
    assert_eq!(
        spent(&soft, now).await,
        400_000,
        "a soft budget never refuses"
    );
    // The task's hard budget has 100,000 µCR left: 200,000 more is refused, an untagged call
    // is not its business.
    let refused = w.record(org, vec![event(100_000, 0, now)]).await;
    assert!(
        matches!(refused, Err(UsageError::BudgetExceeded { .. })),
        "{refused:?}"
    );
    let untagged = UsageEvent {
        task: None,
        ..event(100_000, 0, now)
    };
    w.record(org, vec![untagged]).await.expect("recorded");
    assert_eq!(spent(&task, now).await, 400_000);
    // The soft budget crossed all three thresholds at once, and says so once each.
    let alerts = w.store().budget_alerts(org, 100).await.expect("alerts");
    let mut soft_alerts: Vec<u32> = alerts
        .iter()
        .filter(|alert| alert.budget == soft.id())
        .map(|alert| alert.threshold)
        .collect();
    soft_alerts.sort_unstable();
    assert_eq!(soft_alerts, vec![75, 90, 100]);
    // December (in Paris) is a new period for the task's budget.
    let december = Timestamp::from_micros(now.as_micros() + 7 * DAY);
    w.clock.set(december);
    w.record(org, vec![event(100_000, 0, december)])
        .await
        .expect("a new month");
    assert_eq!(spent(&task, december).await, 200_000);
    // Deleted, it no longer refuses.
    let deleted = w
        .store()
        .delete_budget(org, task.id(), &audit("budgets.delete"))
        .await
        .expect("deleted");
    assert!(deleted);
    w.record(org, vec![event(200_000, 0, december)])
        .await
        .expect("no budget");
    assert_eq!(spent(&task, december).await, 200_000);
    w.ledger.close().await;
}

/// Per-call history is kept 7 days on Free, 90 on Teams, forever on Enterprise; the ledger's
/// charges stay whatever the plan.
async fn history_is_kept_as_long_as_the_plan_says(db: &TestDb) {
    let w = world(db, 1).await;
    let teams = w.orgs[0];
    let store = w.store().clone();
    let now = w.now();
    let mut orgs = vec![(teams, Plan::Teams)];
    for (name, plan) in [("Free", Plan::Free), ("Enterprise", Plan::Enterprise)] {
        let org = store
            .create_org(&OrgName::parse(name).expect("a name"), plan, now)
            .await
            .expect("an org")
            .id;
        top_up(&w.ledger, org, CREDITS).await;
        orgs.push((org, plan));
    }
    // Each org: a call on 1 November (the model's first price) and one on the 15th.
    let nov_1 = Timestamp::from_micros(1_793_491_200_000_000);
    for (org, _) in &orgs {
        let events = vec![
            event(1_000, 0, nov_1),
            event(1_000, 0, nov_1.plus_micros(14 * DAY)),
        ];
        w.record(*org, events).await.expect("recorded");
    }
    let journal_before = store
        .journal(i64::MIN, 10_000)
        .await
        .expect("journal")
        .len();
    // Purge 95 days after the first call (81 after the second): Free keeps nothing older than
    // 7 days, Teams nothing older than 90, Enterprise everything.
    w.clock.set(nov_1.plus_micros(95 * DAY));
    let purged = credex_api::usage::purge_history(store.as_ref())
        .await
        .expect("purged");
    let kept: Vec<usize> = {
        let mut kept = Vec::new();
        for (org, _) in &orgs {
            kept.push(w.recorded(*org).await);
        }
        kept
    };
    assert_eq!(
        kept,
        vec![1, 0, 2],
        "Teams keeps the recent call, Free none, Enterprise both"
    );
    assert_eq!(purged, 3);
    assert_eq!(
        store
            .journal(i64::MIN, 10_000)
            .await
            .expect("journal")
            .len(),
        journal_before,
        "the ledger keeps every charge"
    );
    w.ledger.close().await;
}

/// Small requests of many orgs are decided and committed in groups: 240 concurrent single-event
/// requests from 8 orgs, of which one has nothing to pay with and one has a hard budget that
/// holds 10 of its calls. Every answer is what a lone request would get: the broke org's calls
/// are refused with nothing moved, exactly 10 of the budgeted org's calls are charged, every
/// other call is charged, each org's wallet holds exactly what its recorded calls left, and
/// groups of several requests did commit.
async fn small_requests_commit_in_groups(db: &TestDb) {
    let w = world(db, 8).await;
    let now = w.now();
    for org in &w.orgs {
        // The allotments spent first, so that every call is paid by the wallet (10 CR).
        w.record(*org, vec![event(ALLOT, 0, now)])
            .await
            .expect("recorded");
    }
    let broke = w.orgs[0];
    // 10 CR in one call of 1,000,000 output tokens at $10 per 1M: the wallet is empty.
    w.record(broke, vec![event(0, 1_000_000, now)])
        .await
        .expect("recorded");
    let budgeted = w.orgs[1];
    add_budget(&w, budgeted, budget("org", Scope::Org, 100_000, true)).await;
    let usage = Arc::new(Usage::new(w.ledger.clone(), face()));
    let mut tasks = Vec::new();
    for i in 0..240 {
        let usage = usage.clone();
        let org = w.orgs[i % 8];
        // 1,000 output tokens: 10,000 µCR.
        let one = event(0, 1_000, now);
        tasks.push(tokio::spawn(async move {
            (org, usage.record(org, vec![one]).await)
        }));
    }
    let mut charged = std::collections::HashMap::new();
    for task in tasks {
        let (org, answer) = task.await.expect("a task");
        match answer {
            Ok(recorded) => {
                assert_eq!(recorded[0].record.from_wallet_micro_cr, 10_000);
                *charged.entry(org).or_insert(0_i128) += 1;
            }
            Err(UsageError::InsufficientFunds { .. }) => assert_eq!(org, broke),
            Err(UsageError::BudgetExceeded { .. }) => assert_eq!(org, budgeted),
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(charged.get(&broke), None);
    assert_eq!(charged.get(&budgeted), Some(&10));
    for org in &w.orgs[2..] {
        assert_eq!(charged.get(org), Some(&30));
    }
    for org in &w.orgs {
        let calls = charged.get(org).copied().unwrap_or(0);
        let (_, _, wallet) = w.balances(*org).await;
        let expected = if *org == broke {
            0
        } else {
            i128::from(CREDITS) - 10_000 * calls
        };
        assert_eq!(wallet, expected);
        let recorded = i128::try_from(w.recorded(*org).await).expect("a count");
        let extra = if *org == broke { 2 } else { 1 };
        assert_eq!(recorded, calls + extra);
    }
    let stats = usage.group_stats();
    assert!(stats.groups >= 1, "{stats:?}");
    assert_eq!(stats.ungrouped, 0, "{stats:?}");
    assert_eq!(
        stats.grouped_requests + stats.alone_requests,
        240,
        "{stats:?}"
    );
    assert!(w.store().check().await.expect("check").is_ok());
    w.ledger.close().await;
}

/// Batches of 8 orgs sent at once, each repeating three events its org recorded before
/// beside new ones, and one org's repeating one of them with other values. The transactions
/// assume no event was recorded (no read of them) and so meet the recorded ones on the
/// primary key; each such group runs again reading them. Every repeated event answers as a
/// replay with its first charge, every new one is charged once, the conflicting batch is
/// refused whole, and the books balance.
async fn replays_within_groups_answer_the_first_charge(db: &TestDb) {
    let w = world(db, 8).await;
    let now = w.now();
    let mut first = Vec::new();
    for org in &w.orgs {
        // The allotment spent first (10 CR), then three calls of 10,000 µCR each.
        w.record(*org, vec![event(ALLOT, 0, now)])
            .await
            .expect("recorded");
        let events: Vec<UsageEvent> = (0..3).map(|_| event(0, 1_000, now)).collect();
        let recorded = w.record(*org, events.clone()).await.expect("recorded");
        first.push((events, recorded));
    }
    let conflicting = w.orgs[7];
    let usage = Arc::new(Usage::new(w.ledger.clone(), face()));
    let mut tasks = Vec::new();
    for round in 0..4 {
        for (org, (events, _)) in w.orgs.iter().zip(&first) {
            let mut batch = events.clone();
            if *org == conflicting && round == 0 {
                batch[1].tokens = TokenUsage::new(0, 0, 0, 2_000).expect("tokens");
            }
            batch.extend((0..50).map(|_| event(0, 1_000, now)));
            let (usage, org) = (usage.clone(), *org);
            tasks.push(tokio::spawn(async move {
                (org, round, usage.record(org, batch).await)
            }));
        }
    }
    let mut charged = std::collections::HashMap::new();
    for task in tasks {
        let (org, round, answer) = task.await.expect("a task");
        if org == conflicting && round == 0 {
            assert!(
                matches!(answer, Err(UsageError::Conflict { index: 1, .. })),
                "{answer:?}"
            );
            continue;
        }
        let answer = answer.expect("recorded");
        let (_, recorded) = &first[w.orgs.iter().position(|o| *o == org).expect("an org")];
        for (again, before) in answer[..3].iter().zip(recorded) {
            assert!(again.replayed);
            assert_eq!(again.record, before.record);
        }
        assert!(answer[3..]
            .iter()
            .all(|r| !r.replayed && r.record.from_wallet_micro_cr == 10_000));
        *charged.entry(org).or_insert(0_i128) += 50;
    }
    for org in &w.orgs {
        let new = charged.get(org).copied().unwrap_or(0);
        let expected = if *org == conflicting { 150 } else { 200 };
        assert_eq!(new, expected);
        let (_, _, wallet) = w.balances(*org).await;
        assert_eq!(wallet, i128::from(CREDITS) - 10_000 * (3 + new));
        let recorded = i128::try_from(w.recorded(*org).await).expect("a count");
        assert_eq!(recorded, 1 + 3 + new);
    }
    assert!(w.store().check().await.expect("check").is_ok());
    w.ledger.close().await;
}

async fn overdraft_used(w: &common::usage_world::World, org: credex_ledger::OrgId) -> u64 {
    w.store()
        .overdraft(org)
        .await
        .expect("read")
        .expect("an org")
        .used_micro_cr
}

async fn repay(
    w: &common::usage_world::World,
    org: credex_ledger::OrgId,
    id: Uuid,
    amount: u64,
) -> RepaymentOutcome {
    w.store()
        .repay_overdraft(org, id, amount, "INV-7", &audit("org.overdraft_repayment"))
        .await
        .expect("repay")
}

/// An org with an overdraft allowance is not refused when its wallet runs dry: the shortfall is
/// advanced (`issuance → wallet`, code `overdraft`, in the charge's chain) until the allowance
/// is used up; repayments (idempotent by id, never more than is owed) make room again.
async fn overdraft_pays_what_the_wallet_lacks(db: &TestDb) {
    let w = world(db, 1).await;
    let org = w.orgs[0];
    let now = w.now();
    w.record(org, vec![event(ALLOT, 0, now)])
        .await
        .expect("recorded");
    let entry = audit("org.overdraft");
    let set = w
        .store()
        .set_overdraft_limit(org, 1_000_000, &entry)
        .await
        .expect("set")
        .expect("an org");
    assert_eq!((set.limit_micro_cr, set.used_micro_cr), (1_000_000, 0));
    // 1,050,000 output tokens at $10 per 1M: 10.5 CR, 0.5 CR more than the wallet holds.
    let first = w
        .record(org, vec![event(0, 1_050_000, now)])
        .await
        .expect("advanced");
    assert_eq!(first[0].record.from_wallet_micro_cr, 10_500_000);
    assert_eq!(
        first[0].record.transfer_ids.len(),
        2,
        "the advance and the spend"
    );
    assert_eq!(w.balances(org).await, (0, 0, 0));
    assert_eq!(overdraft_used(&w, org).await, 500_000);
    // 0.6 CR more is past the 0.5 CR left: refused, nothing moved.
    assert!(matches!(
        w.record(org, vec![event(0, 60_000, now)]).await,
        Err(UsageError::InsufficientFunds {
            available_micro_cr: 500_000,
            ..
        })
    ));
    assert_eq!(overdraft_used(&w, org).await, 500_000);
    // Two calls of 0.25 CR in one batch use the rest exactly.
    w.record(org, vec![event(0, 25_000, now), event(0, 25_000, now)])
        .await
        .expect("the rest");
    assert_eq!(overdraft_used(&w, org).await, 1_000_000);
    assert!(matches!(
        w.record(org, vec![event(0, 1, now)]).await,
        Err(UsageError::InsufficientFunds { .. })
    ));
    // Repaid 0.4 CR: idempotent by id, never more than owed.
    let repayment = Uuid::new_v4();
    assert!(matches!(
        repay(&w, org, repayment, 400_000).await,
        RepaymentOutcome::Repaid(o) if o.used_micro_cr == 600_000
    ));
    assert!(matches!(
        repay(&w, org, repayment, 400_000).await,
        RepaymentOutcome::Replayed(o) if o.used_micro_cr == 600_000
    ));
    assert!(matches!(
        repay(&w, org, repayment, 1).await,
        RepaymentOutcome::Conflict
    ));
    assert!(matches!(
        w.store()
            .repay_overdraft(
                org,
                Uuid::new_v4(),
                600_001,
                "INV-8",
                &audit("org.overdraft_repayment")
            )
            .await
            .expect("repay"),
        RepaymentOutcome::TooMuch(_)
    ));
    w.record(org, vec![event(0, 40_000, now)])
        .await
        .expect("advanced again");
    assert_eq!(overdraft_used(&w, org).await, 1_000_000);
    assert!(w.store().check().await.expect("check").is_ok());
    w.ledger.close().await;
}

async fn cr_account(
    w: &common::usage_world::World,
    owner: Owner,
    kind: AccountKind,
) -> credex_ledger::AccountId {
    w.store()
        .find_account(&credex_ledger::AssetCode::credit(), owner, kind)
        .await
        .expect("find")
        .expect("an account")
        .account
        .id()
}

/// A group usage transaction is all or nothing: when the ledger refuses one org's chain (its
/// wallet cannot pay), the other org's accepted chain is not written either, and the answer
/// names the refusal; the same group without the bad chain commits both parts.
async fn a_group_is_all_or_nothing(db: &TestDb) {
    use credex_ledger::{Amount, AssetCode, Movement, Transfer, TransferCode, TransferId};
    use credex_store::{UsageGroupOutcome, UsageItemOutcome, UsageReads, UsageStep, UsageWrite};
    let w = world(db, 2).await;
    let (a, b) = (w.orgs[0], w.orgs[1]);
    let credit = AssetCode::credit();
    let spent = cr_account(&w, Owner::Provider, AccountKind::Spent).await;
    let wallets = [
        cr_account(&w, Owner::Org(a), AccountKind::Wallet).await,
        cr_account(&w, Owner::Org(b), AccountKind::Wallet).await,
    ];
    let spend = |wallet, amount| {
        let movement = Movement::new(
            wallet,
            spent,
            credit.clone(),
            Amount::new(amount).expect("an amount"),
            TransferCode::Spend,
        )
        .expect("a movement");
        Transfer::movement(TransferId::generate(), movement)
    };
    let items = vec![(a, UsageReads::default()), (b, UsageReads::default())];
    // Each part writes one chain of its own.
    let store = w.store().clone();
    let run = |chains: [Transfer; 2]| {
        let (items, store) = (items.clone(), store.clone());
        async move {
            let mut decide = |index: usize, _: &credex_store::UsageView| {
                UsageStep::Write(Box::new(UsageWrite {
                    chains: vec![vec![chains[index].clone()]],
                    ..UsageWrite::default()
                }))
            };
            store
                .usage_group_tx(&items, &mut decide)
                .await
                .expect("a group")
        }
    };
    // Org b's chain asks for more than its wallet holds.
    let outcome = run([spend(wallets[0], 1_000), spend(wallets[1], CREDITS + 1)]).await;
    assert!(
        matches!(outcome, UsageGroupOutcome::Refused { .. }),
        "{outcome:?}"
    );
    assert_eq!(w.balances(a).await.2, i128::from(CREDITS), "nothing of a");
    assert_eq!(w.balances(b).await.2, i128::from(CREDITS), "nothing of b");
    // Both within their wallets: both written, in one commit.
    let outcome = run([spend(wallets[0], 1_000), spend(wallets[1], 2_000)]).await;
    assert_eq!(
        outcome,
        UsageGroupOutcome::Done(vec![UsageItemOutcome::Written, UsageItemOutcome::Written])
    );
    assert_eq!(w.balances(a).await.2, i128::from(CREDITS) - 1_000);
    assert_eq!(w.balances(b).await.2, i128::from(CREDITS) - 2_000);
    // An org named twice is refused before anything is read.
    let twice = vec![(a, UsageReads::default()), (a, UsageReads::default())];
    let mut never = |_: usize, _: &credex_store::UsageView| UsageStep::Stop;
    assert!(w.store().usage_group_tx(&twice, &mut never).await.is_err());
    assert!(w.store().check().await.expect("check").is_ok());
    w.ledger.close().await;
}

/// Totals over whole UTC days come from the daily rollups, the partial days at a range's ends
/// from the calls: whatever the range, the grouping and the purge, they equal the totals
/// computed from the recorded calls one by one (the rollups are written with the calls, in
/// their transaction; a replay adds nothing).
async fn rollups_agree_with_the_calls(db: &TestDb) {
    use credex_store::{UsageFilter, UsageGroup, UsageRecord, UsageTotal};
    use std::collections::BTreeMap;

    let w = world(db, 1).await;
    let org = w.orgs[0];
    top_up(&w.ledger, org, 1_000_000_000).await;
    let users = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    let models = ["gpt-6-sol", "gpt-4o", "gpt-4o-mini"];
    let nov_1 = Timestamp::from_micros(1_793_491_200_000_000);
    // 6 days of calls from 1 November, 7 hours apart, in batches (one replayed).
    let mut batch = Vec::new();
    let mut seed: u64 = 7;
    for i in 0..20i64 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let pick = usize::try_from(seed >> 60).unwrap_or(0);
        let mut call = event(
            1_000 + u64::try_from(i).unwrap_or(0),
            300,
            nov_1.plus_micros(i * 7 * 3_600_000_000),
        );
        call.model = models[pick % 3].to_owned();
        call.user = (pick % 4 != 3).then(|| users[pick % 3]);
        call.task = (pick % 2 == 0).then(|| format!("task-{}", pick % 3));
        batch.push(call);
    }
    w.record(org, batch[..10].to_vec()).await.expect("recorded");
    w.record(org, batch[..10].to_vec()).await.expect("replayed");
    w.record(org, batch[10..].to_vec()).await.expect("recorded");
    let store = w.store().clone();
    let calls: Vec<UsageRecord> = store
        .usage_events(
            org,
            Timestamp::EPOCH,
            Timestamp::from_micros(i64::MAX),
            None,
            1_000,
        )
        .await
        .expect("calls");
    assert_eq!(calls.len(), 20, "the replay recorded nothing more");
    let expected = |group: UsageGroup, from: i64, to: i64| -> Vec<UsageTotal> {
        let mut totals: BTreeMap<Option<String>, UsageTotal> = BTreeMap::new();
        for call in calls
            .iter()
            .filter(|c| (from..to).contains(&c.occurred_at.as_micros()))
        {
            let key = match group {
                UsageGroup::Model => Some(call.model.clone()),
                UsageGroup::User => call.user.map(|u| u.to_string()),
                UsageGroup::Task => call.task.clone(),
                UsageGroup::Day => Some(credex_store::day_key(credex_store::day_start(
                    call.occurred_at.as_micros(),
                ))),
                UsageGroup::All => Some("all".to_owned()),
                _ => unreachable!("not compared"),
            };
            let total = totals.entry(key.clone()).or_default();
            total.key = key;
            total.events += 1;
            total.input_tokens += call.input_tokens;
            total.output_tokens += call.output_tokens;
            total.cost_micro_cr += call.cost_micro_cr;
            total.from_acquired += call.from_acquired;
            total.from_alloc += call.from_alloc;
            total.from_wallet_micro_cr += call.from_wallet_micro_cr;
        }
        let mut totals: Vec<UsageTotal> = totals.into_values().collect();
        totals.sort_by(|a, b| {
            b.cost_micro_cr
                .cmp(&a.cost_micro_cr)
                .then_with(|| a.key.cmp(&b.key))
        });
        totals
    };
    let hour = 3_600_000_000;
    let start = nov_1.as_micros();
    let ranges = [
        (start, start + 6 * DAY),                       // whole days only
        (start + 5 * hour, start + 4 * DAY + 3 * hour), // partial days at both ends
        (start + 2 * DAY, start + 3 * DAY),             // one whole day
        (start + hour, start + 20 * hour),              // less than a day
        (i64::MIN, i64::MAX),                           // everything
    ];
    let groups = [
        UsageGroup::Model,
        UsageGroup::User,
        UsageGroup::Task,
        UsageGroup::Day,
        UsageGroup::All,
    ];
    let check = |label: &'static str| {
        let store = store.clone();
        let expected = &expected;
        async move {
            for (from, to) in ranges {
                for group in groups {
                    let filter = UsageFilter {
                        from: (from != i64::MIN).then(|| Timestamp::from_micros(from)),
                        to: (to != i64::MAX).then(|| Timestamp::from_micros(to)),
                        ..UsageFilter::default()
                    };
                    let got = store
                        .usage_totals(org, &filter, group, 100)
                        .await
                        .expect("totals");
                    assert_eq!(
                        got,
                        expected(group, from, to),
                        "{label}: {group:?} over {from}..{to}"
                    );
                }
            }
        }
    };
    check("recorded").await;
    // Purged (Free keeps 7 days): whole days go from the calls and the rollups together.
    store.set_org_plan(org, Plan::Free).await.expect("plan");
    w.clock.set(nov_1.plus_micros(10 * DAY + 5 * hour));
    credex_api::usage::purge_history(store.as_ref())
        .await
        .expect("purged");
    let calls_left = store
        .usage_events(
            org,
            Timestamp::EPOCH,
            Timestamp::from_micros(i64::MAX),
            None,
            1_000,
        )
        .await
        .expect("calls");
    assert!(
        calls_left.len() < 20 && !calls_left.is_empty(),
        "{} calls left",
        calls_left.len()
    );
    let totals = store
        .usage_totals(org, &UsageFilter::default(), UsageGroup::All, 1)
        .await
        .expect("totals");
    assert_eq!(
        totals[0].events,
        u64::try_from(calls_left.len()).expect("a count")
    );
    w.ledger.close().await;
}

/// What charging keeps in memory (prices, budgets, which accounts exist) never outlives a
/// change made elsewhere: here every change goes through the store behind the service's back,
/// as another process's would, and the next charge sees it (the usage transaction compares the
/// versions the memory was read at; migration `0015`'s triggers bump them).
async fn what_charging_keeps_in_memory_never_outlives_a_change(db: &TestDb) {
    let w = world(db, 1).await;
    let org = w.orgs[0];
    let store = w.store().clone();
    let cost = |recorded: &[credex_api::usage::RecordedUsage]| recorded[0].record.cost_micro_cr;
    // 1,000 input tokens at the catalog's $2 per 1M; the org's `acquired` is missing.
    let first = w
        .record(org, vec![event(1_000, 0, w.now())])
        .await
        .expect("recorded");
    assert_eq!((cost(&first), first[0].record.from_acquired), (2_000, 0));

    // A new catalog price, in force from the next second.
    let price = |input: &str| credex_store::PriceRecord {
        effective_from: w.now().plus_seconds(1),
        price: format!(
            r#"{{"input":"{input}","cached_input":"{input}","cache_write":"{input}","output":"10"}}"#
        ),
        recorded_at: w.now(),
        recorded_by: None,
    };
    store
        .put_price(
            MODEL,
            credex_store::PriceScope::Catalog,
            &price("4"),
            w.now(),
            &audit("models.price"),
        )
        .await
        .expect("a catalog price");
    w.clock.set(w.now().plus_seconds(2));
    let second = w
        .record(org, vec![event(1_000, 0, w.now())])
        .await
        .expect("recorded");
    assert_eq!(cost(&second), 4_000, "the new catalog price");

    // The org's custom price wins over it.
    store
        .put_price(
            MODEL,
            credex_store::PriceScope::Org(org),
            &price("1"),
            w.now(),
            &audit("models.org_price"),
        )
        .await
        .expect("a custom price");
    w.clock.set(w.now().plus_seconds(2));
    let third = w
        .record(org, vec![event(1_000, 0, w.now())])
        .await
        .expect("recorded");
    assert_eq!(
        (cost(&third), third[0].record.price_source.as_str()),
        (1_000, "org"),
        "the new custom price"
    );

    // Tokens bought make the org's `acquired`: the next call draws on it.
    let market = Market::new(w.ledger.clone(), FraudPolicy::default());
    market
        .buy(&BuyRequest {
            id: Uuid::new_v4(),
            buyer: org,
            asset: w.asset.clone(),
            quantity: 10_000,
            limit: Limit::PricePer1m(10_000_000),
            allow_provider_fill: true,
        })
        .await
        .expect("a buy");
    let fourth = w
        .record(org, vec![event(1_000, 0, w.now())])
        .await
        .expect("recorded");
    assert_eq!(fourth[0].record.from_acquired, 1_000, "the new account");

    // A hard budget with room for less than one more call refuses it; deleted, it does not.
    let hard = add_budget(&w, org, budget("tight", Scope::Org, 500, true)).await;
    let refused = w.record(org, vec![event(1_000, 0, w.now())]).await;
    assert!(
        matches!(refused, Err(UsageError::BudgetExceeded { budget, .. }) if budget == hard.id()),
        "{refused:?}"
    );
    assert!(store
        .delete_budget(org, hard.id(), &audit("budgets.delete"))
        .await
        .expect("deleted"));
    w.record(org, vec![event(1_000, 0, w.now())])
        .await
        .expect("the budget is gone");

    // A second service (another process's memory) agrees throughout.
    let other = Usage::new(w.ledger.clone(), face());
    let fifth = other
        .record(org, vec![event(1_000, 0, w.now())])
        .await
        .expect("recorded");
    assert_eq!(
        (cost(&fifth), fifth[0].record.from_acquired),
        (1_000, 1_000)
    );
    assert_eq!(w.recorded(org).await, 6);
    assert!(w.store().check().await.expect("check").is_ok());
    w.ledger.close().await;
}

/// Batches of 100 events (on PostgreSQL the ledger speculates for them: journal rows first,
/// balance stripes locked last) from two processes, with top-ups landing meanwhile: no batch
/// is charged in part, the wallet never goes below zero, and what was charged is exactly what
/// the wallet lost.
async fn large_batches_never_overdraw(db: &TestDb) {
    let (w, second, services) = wallet_only_in_two_processes(db).await;
    let org = w.orgs[0];
    let now = w.now();
    let mut batches = Vec::new();
    for i in 0..16 {
        let usage = services[i % 2].clone();
        // 100 calls of 1,000 output tokens at $10 per 1M: 1 CR a batch.
        let batch: Vec<UsageEvent> = (0..100).map(|_| event(0, 1_000, now)).collect();
        batches.push(tokio::spawn(async move { usage.record(org, batch).await }));
    }
    let mut top_ups = Vec::new();
    for _ in 0..4 {
        let ledger = second.clone();
        top_ups.push(tokio::spawn(async move {
            top_up(&ledger, org, 1_000_000).await;
        }));
    }
    let mut charged = 0_i128;
    for task in batches {
        match task.await.expect("a task") {
            Ok(recorded) => {
                assert_eq!(recorded.len(), 100);
                assert!(recorded
                    .iter()
                    .all(|r| r.record.from_wallet_micro_cr == 10_000));
                charged += 1;
            }
            Err(UsageError::InsufficientFunds { .. }) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    for task in top_ups {
        task.await.expect("a top-up");
    }
    assert!((10..=14).contains(&charged), "{charged} batches charged");
    let wallet = i128::from(CREDITS) + 4_000_000 - charged * 1_000_000;
    assert_eq!(w.balances(org).await, (0, 0, wallet));
    let totals = w
        .store()
        .usage_totals(
            org,
            &credex_store::UsageFilter::default(),
            credex_store::UsageGroup::All,
            1,
        )
        .await
        .expect("totals");
    assert_eq!(i128::from(totals[0].events), charged * 100 + 1);
    assert!(w.store().check().await.expect("check").is_ok());
    second.close().await;
    w.ledger.close().await;
}

/// A batch is charged in one transfer per leg and model, not one per event: each transfer sums
/// its events' legs, every event names the transfers its legs went into, and each transfer's
/// metadata names its first event (how a statement finds its model); a replay moves nothing.
async fn a_batch_is_charged_in_one_transfer_per_leg_and_model(db: &TestDb) {
    let w = world(db, 1).await;
    let org = w.orgs[0];
    let now = w.now();
    let other = |input: u64| UsageEvent {
        model: "claude-sonnet-5".to_owned(),
        ..event(input, 0, now)
    };
    // Alloc holds 2,000,000 tokens: the first three events take 1,000,000, 500,000 and the last
    // 500,000 of it, the third's other 300,000 tokens and the fourth are paid from the wallet.
    let batch = vec![
        event(1_000_000, 0, now),
        other(500_000),
        event(800_000, 0, now),
        event(100_000, 0, now),
    ];
    let recorded = w.record(org, batch.clone()).await.expect("recorded");
    let records: Vec<_> = recorded.iter().map(|r| r.record.clone()).collect();
    assert_eq!(
        records.iter().map(|r| r.from_alloc).collect::<Vec<_>>(),
        [1_000_000, 500_000, 500_000, 0]
    );
    assert!(records[2].from_wallet_micro_cr > 0 && records[3].from_wallet_micro_cr > 0);
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| records[i].transfer_ids.clone());
    assert_eq!((a.len(), b.len(), c.len(), d.len()), (1, 1, 2, 1));
    let (alloc_model, alloc_other, wallet_model) = (a[0], b[0], d[0]);
    assert_eq!(
        c,
        [alloc_model, wallet_model],
        "the third shares the first's and fourth's"
    );
    assert_ne!(alloc_model, alloc_other, "one transfer per model");

    let entries = w
        .store()
        .transfers(&[alloc_model, alloc_other, wallet_model])
        .await
        .expect("the transfers");
    assert_eq!(entries.len(), 3);
    let of = |id| {
        let entry = entries
            .iter()
            .find(|entry| entry.record.id == id)
            .expect("journaled");
        (
            entry.record.amount.get(),
            entry.record.metadata.as_str().to_owned(),
        )
    };
    let named = |event: &UsageEvent, n: u64| {
        if n > 1 {
            format!(r#"{{"usage_event_id":"{}","usage_events":{n}}}"#, event.id)
        } else {
            format!(r#"{{"usage_event_id":"{}"}}"#, event.id)
        }
    };
    assert_eq!(of(alloc_model), (1_500_000, named(&batch[0], 2)));
    assert_eq!(of(alloc_other), (500_000, named(&batch[1], 1)));
    assert_eq!(
        of(wallet_model),
        (
            records[2].from_wallet_micro_cr + records[3].from_wallet_micro_cr,
            named(&batch[2], 2)
        )
    );
    let spent = records[2].from_wallet_micro_cr + records[3].from_wallet_micro_cr;
    let wallet = i128::from(CREDITS) - i128::from(spent);
    assert_eq!(w.balances(org).await, (0, 0, wallet));

    // A replay of the batch answers the same records and moves nothing.
    let again = w.record(org, batch).await.expect("a replay");
    assert!(again.iter().all(|r| r.replayed));
    assert_eq!(
        again.into_iter().map(|r| r.record).collect::<Vec<_>>(),
        records
    );
    assert_eq!(w.balances(org).await, (0, 0, wallet));
}

on_both_backends!(
    replays_within_groups_answer_the_first_charge,
    a_batch_is_charged_in_one_transfer_per_leg_and_model,
    rollups_agree_with_the_calls,
    a_group_is_all_or_nothing,
    overdraft_pays_what_the_wallet_lacks,
    small_requests_commit_in_groups,
    history_is_kept_as_long_as_the_plan_says,
    charged_acquired_then_alloc_then_wallet,
    a_batch_that_cannot_be_paid_changes_nothing,
    concurrent_charges_never_overdraw,
    a_hard_budget_is_never_overspent,
    budgets_count_their_scope_and_period,
    what_charging_keeps_in_memory_never_outlives_a_change,
    large_batches_never_overdraw,
);
