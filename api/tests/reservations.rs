//! Reservations on both backends: a call's worst case is held as pending transfers that count
//! against the balances they would draw on and against hard budgets; settling charges the real
//! call from what was held (posting at most what each leg holds, releasing the rest) and takes
//! any excess from the balances; releasing and expiry give everything back; replays answer
//! what was done; two processes reserving against one hard budget never pass it.

mod common;

use std::sync::Arc;

use common::usage_world::{add_budget, budget, event, face, world, World, ALLOT, CREDITS, MODEL};
use credex_api::budgets::Scope;
use credex_api::usage::reservations::ReservationRequest;
use credex_api::usage::{Usage, UsageError, UsageEvent};
use credex_ledger::{AccountKind, AssetCode, OrgId, Owner, Timestamp};
use credex_pricing::TokenUsage;
use credex_store::ReservationState;
use credex_tests::{on_both_backends, TestDb};
use uuid::Uuid;

fn request(input: u64, output: u64, timeout_seconds: u32) -> ReservationRequest {
    ReservationRequest {
        id: Uuid::new_v4(),
        model: MODEL.to_owned(),
        tokens: TokenUsage::new(input, 0, 0, output).expect("tokens"),
        timeout_seconds,
        user: None,
        api_key: None,
        task: Some("summaries".to_owned()),
        conversation: None,
    }
}

/// (alloc, wallet) available now: posted minus pending debits.
async fn available(w: &World, org: OrgId) -> (i128, i128) {
    let of = |asset: AssetCode, kind| async move {
        w.store()
            .find_account(&asset, Owner::Org(org), kind)
            .await
            .expect("find")
            .map_or(0, |view| view.balance.available())
    };
    (
        of(w.asset.clone(), AccountKind::Alloc).await,
        of(AssetCode::credit(), AccountKind::Wallet).await,
    )
}

fn call(id: Uuid, input: u64, output: u64, at: Timestamp) -> UsageEvent {
    UsageEvent {
        id,
        ..event(input, output, at)
    }
}

async fn reserve_settle_release_and_expire(db: &TestDb) {
    let w = world(db, 1).await;
    let org = w.orgs[0];
    let allot = i128::from(ALLOT);
    let credits = i128::from(CREDITS);

    // 100,000 input ($0.20) + 50,000 output ($0.50) at most: 150,000 tokens held in alloc.
    let asked = request(100_000, 50_000, 300);
    let held = w.usage.reserve(org, asked.clone()).await.expect("held");
    assert!(!held.replayed);
    let r = &held.reservation;
    assert_eq!(
        (
            r.cost_micro_cr,
            r.from_acquired,
            r.from_alloc,
            r.from_wallet_micro_cr
        ),
        (700_000, 0, 150_000, 0)
    );
    assert_eq!(r.state, ReservationState::Pending);
    assert_eq!(r.expires_at, w.now().plus_seconds(300));
    assert_eq!(available(&w, org).await, (allot - 150_000, credits));
    // Nothing is spent yet: posted balances are untouched.
    assert_eq!(w.balances(org).await, (0, allot, credits));
    // A replay answers the reservation; the same id with another worst case is refused.
    let again = w.usage.reserve(org, asked.clone()).await.expect("a replay");
    assert!(again.replayed);
    assert_eq!(again.reservation, held.reservation);
    let mut other = asked.clone();
    other.tokens = TokenUsage::new(1, 0, 0, 1).expect("tokens");
    assert!(matches!(
        w.usage.reserve(org, other).await,
        Err(UsageError::Conflict { .. })
    ));

    // The call used 60,000 input + 10,000 output: 70,000 tokens posted, 80,000 released.
    let used = call(Uuid::new_v4(), 60_000, 10_000, w.now());
    let settled = w
        .usage
        .settle(org, asked.id, used.clone())
        .await
        .expect("settled");
    let e = &settled.usage.record;
    assert_eq!(
        (
            e.cost_micro_cr,
            e.from_acquired,
            e.from_alloc,
            e.from_wallet_micro_cr
        ),
        (220_000, 0, 70_000, 0)
    );
    assert_eq!(settled.reservation.state, ReservationState::Settled);
    assert_eq!(settled.reservation.usage_event, Some(used.id));
    assert_eq!(available(&w, org).await, (allot - 70_000, credits));
    assert_eq!(w.balances(org).await, (0, allot - 70_000, credits));
    assert_eq!(w.recorded(org).await, 1);
    // Settling again with the same call answers it; with another call it is refused.
    let replay = w
        .usage
        .settle(org, asked.id, used.clone())
        .await
        .expect("replay");
    assert!(replay.usage.replayed);
    assert_eq!(replay.usage.record, settled.usage.record);
    assert!(matches!(
        w.usage
            .settle(org, asked.id, call(Uuid::new_v4(), 1, 1, w.now()))
            .await,
        Err(UsageError::ReservationClosed {
            state: "settled",
            ..
        })
    ));
    assert!(matches!(
        w.usage.release(org, asked.id).await,
        Err(UsageError::ReservationClosed {
            state: "settled",
            ..
        })
    ));

    // Released: everything is free again; releasing again answers the same.
    let second = request(10_000, 0, 300);
    w.usage.reserve(org, second.clone()).await.expect("held");
    assert_eq!(available(&w, org).await, (allot - 80_000, credits));
    let released = w.usage.release(org, second.id).await.expect("released");
    assert_eq!(released.reservation.state, ReservationState::Released);
    assert!(!released.replayed);
    assert!(
        w.usage
            .release(org, second.id)
            .await
            .expect("again")
            .replayed
    );
    assert_eq!(available(&w, org).await, (allot - 70_000, credits));
    assert!(matches!(
        w.usage
            .settle(org, second.id, call(Uuid::new_v4(), 1, 1, w.now()))
            .await,
        Err(UsageError::ReservationClosed {
            state: "released",
            ..
        })
    ));

    // Expired: past its timeout it cannot be settled, and the ledger's expiry frees it.
    let third = request(20_000, 0, 60);
    w.usage.reserve(org, third.clone()).await.expect("held");
    assert_eq!(available(&w, org).await, (allot - 90_000, credits));
    w.clock.set(w.now().plus_seconds(61));
    assert!(matches!(
        w.usage
            .settle(org, third.id, call(Uuid::new_v4(), 1, 1, w.now()))
            .await,
        Err(UsageError::ReservationClosed {
            state: "expired",
            ..
        })
    ));
    assert_eq!(w.store().expire_pending(100).await.expect("expired"), 1);
    assert_eq!(available(&w, org).await, (allot - 70_000, credits));
    let stored = w
        .store()
        .reservation(org, third.id)
        .await
        .expect("read")
        .expect("there");
    assert!(!stored.holds_at(w.now()));
    // Unknown reservations are not found; nothing else was recorded.
    assert!(matches!(
        w.usage.release(org, Uuid::new_v4()).await,
        Err(UsageError::NoReservation { .. })
    ));
    assert_eq!(w.recorded(org).await, 1);
    let listed = w
        .store()
        .reservations_of(org, None, 10)
        .await
        .expect("listed");
    let mut ids: Vec<Uuid> = listed.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    let mut expected = vec![asked.id, second.id, third.id];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(w.store().check().await.expect("check").is_ok());
    w.ledger.close().await;
}

/// Held amounts cannot be spent twice; a call costing more than was held takes the rest from
/// the balances; a worst case the balances cannot cover is refused with nothing held.
async fn holds_count_against_balances(db: &TestDb) {
    let w = world(db, 1).await;
    let org = w.orgs[0];
    let credits = i128::from(CREDITS);
    // The allotment spent first, so that the wallet pays.
    w.record(org, vec![event(ALLOT, 0, w.now())])
        .await
        .expect("recorded");
    // 100,000 input tokens: 200,000 µCR held in the wallet.
    let asked = request(100_000, 0, 300);
    let held = w.usage.reserve(org, asked.clone()).await.expect("held");
    assert_eq!(held.reservation.from_wallet_micro_cr, 200_000);
    assert_eq!(available(&w, org).await, (0, credits - 200_000));
    // 9.8 CR more cannot be charged while 0.2 CR are held: 4,900,001 input tokens cost
    // 9,800,002 µCR.
    assert!(matches!(
        w.record(org, vec![event(4_900_001, 0, w.now())]).await,
        Err(UsageError::InsufficientFunds { .. })
    ));
    // A worst case past what is left is refused, holding nothing.
    let too_much = request(5_000_000, 0, 300);
    assert!(matches!(
        w.usage.reserve(org, too_much.clone()).await,
        Err(UsageError::InsufficientFunds { .. })
    ));
    assert!(w
        .store()
        .reservation(org, too_much.id)
        .await
        .expect("read")
        .is_none());
    // The call used 150,000 tokens (300,000 µCR): 200,000 posted, 100,000 more from the wallet.
    let settled = w
        .usage
        .settle(org, asked.id, call(Uuid::new_v4(), 150_000, 0, w.now()))
        .await
        .expect("settled");
    assert_eq!(settled.usage.record.from_wallet_micro_cr, 300_000);
    assert_eq!(settled.usage.record.transfer_ids.len(), 2);
    assert_eq!(available(&w, org).await, (0, credits - 300_000));
    let (_, _, wallet) = w.balances(org).await;
    assert_eq!(wallet, credits - 300_000);
    // Another model than the one held is refused.
    let other = request(10, 0, 300);
    w.usage.reserve(org, other.clone()).await.expect("held");
    let mut wrong = call(Uuid::new_v4(), 10, 0, w.now());
    wrong.model = "gpt-6-nova".to_owned();
    let refused = w.usage.settle(org, other.id, wrong).await;
    assert!(
        matches!(
            refused,
            Err(UsageError::ReservationMismatch { .. } | UsageError::Price { .. })
        ),
        "{refused:?}"
    );
    assert!(w.store().check().await.expect("check").is_ok());
    w.ledger.close().await;
}

/// Hard budgets count what reservations hold, from two processes at once: 30 concurrent
/// reservations of 100,000 µCR against a hard budget of 1,000,000 µCR hold exactly 10; a
/// charge while they hold is refused; released or expired, they stop counting; reservations
/// raise no threshold alert (spend does).
async fn budgets_count_what_reservations_hold(db: &TestDb) {
    let w = world(db, 1).await;
    let org = w.orgs[0];
    w.record(org, vec![event(ALLOT, 0, w.now())])
        .await
        .expect("recorded");
    let hard = add_budget(&w, org, budget("org", Scope::Org, 1_000_000, true)).await;
    let second = Arc::new(db.ledger(w.clock.clone()).await);
    let services = [
        Arc::new(Usage::new(w.ledger.clone(), face())),
        Arc::new(Usage::new(second.clone(), face())),
    ];
    let mut tasks = Vec::new();
    for i in 0..30 {
        let usage = services[i % 2].clone();
        // 50,000 input tokens: 100,000 µCR.
        let asked = request(50_000, 0, 120);
        tasks.push(tokio::spawn(async move { usage.reserve(org, asked).await }));
    }
    let (mut held, mut refused) = (Vec::new(), 0);
    for task in tasks {
        match task.await.expect("a task") {
            Ok(answer) => held.push(answer.reservation.id),
            Err(UsageError::BudgetExceeded { budget, .. }) => {
                assert_eq!(budget, hard.id());
                refused += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((held.len(), refused), (10, 20));
    let start = hard.period_start(w.now());
    assert_eq!(
        w.store()
            .budget_held(hard.id(), start, w.now())
            .await
            .expect("held"),
        1_000_000
    );
    assert!(w
        .store()
        .budget_alerts(org, 100)
        .await
        .expect("alerts")
        .is_empty());
    // A charge while the budget is fully held is refused.
    assert!(matches!(
        w.record(org, vec![event(1_000, 0, w.now())]).await,
        Err(UsageError::BudgetExceeded { .. })
    ));
    // Settle one for less than held (80,000 µCR), release another: 180,000 µCR free again.
    w.usage
        .settle(org, held[0], call(Uuid::new_v4(), 40_000, 0, w.now()))
        .await
        .expect("settled");
    w.usage.release(org, held[1]).await.expect("released");
    assert_eq!(
        w.store()
            .budget_spent(hard.id(), start)
            .await
            .expect("spent"),
        80_000
    );
    // 120,000 µCR is free: 60,000 input tokens fit, 60,001 do not.
    assert!(matches!(
        w.usage.reserve(org, request(60_001, 0, 120)).await,
        Err(UsageError::BudgetExceeded { .. })
    ));
    w.usage
        .reserve(org, request(60_000, 0, 120))
        .await
        .expect("fits exactly");
    // Past their timeout the eight others and this one hold nothing.
    w.clock.set(w.now().plus_seconds(121));
    // (Two calls of 230,000 input tokens, 460,000 µCR each: under the model's long-context tier.)
    for _ in 0..2 {
        w.usage
            .reserve(org, request(230_000, 0, 120))
            .await
            .expect("920,000 µCR fits once the holds expired");
    }
    assert_eq!(w.store().expire_pending(100).await.expect("expired"), 9);
    assert!(w.store().check().await.expect("check").is_ok());
    second.close().await;
    w.ledger.close().await;
}

on_both_backends!(
    reserve_settle_release_and_expire,
    holds_count_against_balances,
    budgets_count_what_reservations_hold,
);
