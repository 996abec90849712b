//! Billing cycles on both backends: opening issues every org its plan's allotments once, however
//! often it runs; closing expires every remaining balance of the cycle's token assets once,
//! however often it runs and wherever a run is cut off.

use std::sync::Arc;
use std::time::Duration;

use credex_api::cycles::{close_cycle, open_cycle, CycleId, CycleJobError};
use credex_ledger::{
    AccountKind, Action, Amount, AssetCode, ManualClock, Metadata, Movement, Owner, Timestamp,
    Transfer, TransferCode, TransferId,
};
use credex_store::{Allotment, AuditAction, AuditEntry, ClassRecord, Ledger, OrgName, Plan, Store};
use credex_tests::{on_both_backends, TestDb};

const NOV: &str = "2026-11";

fn audit() -> AuditEntry {
    AuditEntry::new(
        Timestamp::EPOCH,
        AuditAction::parse("classes.put").expect("an action"),
        "test",
        serde_json::json!({}),
    )
    .expect("an entry")
}

/// Classes `std` (free: 1M, teams: 5M tokens) and `pro` (teams: 2M), and orgs on each plan.
async fn setup(store: &dyn Store, orgs: &[Plan], at: Timestamp) -> Vec<credex_ledger::OrgId> {
    for (class, face) in [("std", 500_000), ("pro", 4_000_000)] {
        let record = ClassRecord {
            class: class.to_owned(),
            face_value_per_1m_micro_cr: face,
            description: format!("{class} models"),
            created_at: at,
            updated_at: at,
        };
        store.put_class(&record, &audit()).await.expect("a class");
    }
    for (class, plan, tokens) in [
        ("std", Plan::Free, 1_000_000),
        ("std", Plan::Teams, 5_000_000),
        ("pro", Plan::Teams, 2_000_000),
        ("pro", Plan::Free, 0),
    ] {
        let allotment = Allotment {
            plan,
            tokens_per_cycle: tokens,
        };
        store
            .put_allotment(class, allotment, at, &audit())
            .await
            .expect("an allotment");
    }
    let mut ids = Vec::new();
    for (i, plan) in orgs.iter().enumerate() {
        let name = OrgName::parse(&format!("Org {i}")).expect("a name");
        ids.push(store.create_org(&name, *plan, at).await.expect("an org").id);
    }
    ids
}

async fn balance(ledger: &Ledger, asset: &AssetCode, owner: Owner, kind: AccountKind) -> i128 {
    ledger
        .store()
        .find_account(asset, owner, kind)
        .await
        .expect("find")
        .map_or(0, |view| view.balance.net_posted())
}

async fn opening_allots_each_org_once(db: &TestDb) {
    let november = CycleId::parse(NOV).expect("a cycle");
    let start = november.starts_at();
    let clock = Arc::new(ManualClock::new(start));
    let ledger = db.ledger(clock.clone()).await;
    let store = ledger.store().clone();
    let orgs = setup(
        store.as_ref(),
        &[Plan::Free, Plan::Teams, Plan::Enterprise],
        start,
    )
    .await;

    let report = open_cycle(&ledger, november, start).await.expect("open");
    assert_eq!(report.orgs, 3);
    // Free: std only (its pro allotment is 0); teams: std and pro; enterprise: none set.
    assert_eq!(report.transfers, 3);
    let std = november.asset("std").expect("an asset");
    let pro = november.asset("pro").expect("an asset");
    assert_eq!(
        balance(&ledger, &std, Owner::Org(orgs[0]), AccountKind::Alloc).await,
        1_000_000
    );
    assert_eq!(
        balance(&ledger, &pro, Owner::Org(orgs[0]), AccountKind::Alloc).await,
        0
    );
    assert_eq!(
        balance(&ledger, &std, Owner::Org(orgs[1]), AccountKind::Alloc).await,
        5_000_000
    );
    assert_eq!(
        balance(&ledger, &pro, Owner::Org(orgs[1]), AccountKind::Alloc).await,
        2_000_000
    );
    assert_eq!(
        balance(&ledger, &std, Owner::Provider, AccountKind::Issuance).await,
        -6_000_000
    );

    // Again: nothing new. Even with the bookkeeping lost, the ledger answers `exists`.
    let again = open_cycle(&ledger, november, start)
        .await
        .expect("open again");
    assert_eq!((again.orgs, again.transfers), (0, 0));
    sqlx_forget_allotments(db, NOV).await;
    let replay = open_cycle(&ledger, november, start)
        .await
        .expect("open after a loss");
    assert_eq!((replay.orgs, replay.transfers), (3, 0));
    assert_eq!(
        balance(&ledger, &std, Owner::Org(orgs[1]), AccountKind::Alloc).await,
        5_000_000
    );

    // An org that joins mid-cycle is allotted by the next run; the cycle is marked opened.
    let late = store
        .create_org(&OrgName::parse("Late").expect("a name"), Plan::Teams, start)
        .await
        .expect("an org")
        .id;
    let report = open_cycle(&ledger, november, start).await.expect("open");
    assert_eq!((report.orgs, report.transfers), (1, 2));
    assert_eq!(
        balance(&ledger, &pro, Owner::Org(late), AccountKind::Alloc).await,
        2_000_000
    );
    let record = store.cycle(NOV).await.expect("read").expect("the cycle");
    assert!(record.opened_at.is_some());
    assert_eq!(
        store.cycle_classes(NOV).await.expect("classes"),
        vec![("pro".to_owned(), 4_000_000), ("std".to_owned(), 500_000)]
    );

    // An ended cycle is not opened.
    let ended = open_cycle(&ledger, november, november.ends_at()).await;
    assert!(matches!(ended, Err(CycleJobError::Ended(_))), "{ended:?}");
    assert!(store.check().await.expect("check").is_ok());
    ledger.close().await;
}

/// Forgets which orgs were allotted, as if the bookkeeping after the ledger's commit was lost.
async fn sqlx_forget_allotments(db: &TestDb, cycle: &str) {
    match db.backend() {
        credex_store::Backend::Sqlite => {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(db.url())
                .await
                .expect("connect");
            sqlx::query("DELETE FROM cycle_allotments WHERE cycle = $1")
                .bind(cycle)
                .execute(&mut conn)
                .await
                .expect("delete");
        }
        credex_store::Backend::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(db.url())
                .await
                .expect("connect");
            sqlx::query("DELETE FROM cycle_allotments WHERE cycle = $1")
                .bind(cycle)
                .execute(&mut conn)
                .await
                .expect("delete");
        }
    }
}

/// Lists part of an org's allotment (`alloc → escrow`) and spends part (`alloc → spent`).
async fn move_some(ledger: &Ledger, asset: &AssetCode, org: credex_ledger::OrgId) {
    let alloc = ledger
        .ensure_account(asset, Owner::Org(org), AccountKind::Alloc)
        .await
        .expect("alloc");
    let escrow = ledger
        .ensure_account(asset, Owner::Org(org), AccountKind::Escrow)
        .await
        .expect("escrow");
    let spent = ledger
        .ensure_account(asset, Owner::Provider, AccountKind::Spent)
        .await
        .expect("spent");
    let transfers = [
        (escrow.account.id(), TransferCode::List, 300_000),
        (spent.account.id(), TransferCode::Spend, 100_000),
    ]
    .into_iter()
    .map(|(to, code, amount)| {
        let movement = Movement::new(
            alloc.account.id(),
            to,
            asset.clone(),
            Amount::new(amount).expect("an amount"),
            code,
        )
        .expect("a movement");
        Transfer::new(
            TransferId::generate(),
            Action::Move(movement),
            Metadata::new("test").expect("metadata"),
            false,
        )
        .expect("a transfer")
    })
    .collect();
    let results = ledger.create_transfers(transfers).await.expect("commit");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// After a complete close: every org account and the treasury hold nothing, `expired` holds
/// what they held, nothing expired twice, and the books balance.
async fn assert_closed(ledger: &Ledger, november: CycleId, orgs: &[credex_ledger::OrgId]) {
    let std = november.asset("std").expect("an asset");
    for org in orgs {
        for kind in [
            AccountKind::Alloc,
            AccountKind::Escrow,
            AccountKind::Acquired,
        ] {
            assert_eq!(
                balance(ledger, &std, Owner::Org(*org), kind).await,
                0,
                "{kind}"
            );
        }
    }
    // Allotted 1M + 5M + 5M; 3 × 100k spent; the rest expired, exactly once.
    assert_eq!(
        balance(ledger, &std, Owner::Provider, AccountKind::Expired).await,
        11_000_000 - 300_000
    );
    let store = ledger.store();
    assert!(store.check().await.expect("check").is_ok());
    let record = store.cycle(NOV).await.expect("read").expect("the cycle");
    assert!(record.closed_at.is_some());
    // A closed asset takes nothing but expiries.
    let again = close_cycle(ledger, november, november.ends_at())
        .await
        .expect("close again");
    assert_eq!((again.assets_closed, again.expiries), (0, 0));
}

async fn closing_expires_everything_once(db: &TestDb) {
    let november = CycleId::parse(NOV).expect("a cycle");
    let clock = Arc::new(ManualClock::new(november.starts_at()));
    let ledger = db.ledger(clock.clone()).await;
    let store = ledger.store().clone();
    let orgs = setup(
        store.as_ref(),
        &[Plan::Free, Plan::Teams, Plan::Teams],
        november.starts_at(),
    )
    .await;
    open_cycle(&ledger, november, november.starts_at())
        .await
        .expect("open");
    let std = november.asset("std").expect("an asset");
    for org in &orgs {
        move_some(&ledger, &std, *org).await;
    }

    let early = close_cycle(&ledger, november, november.ends_at().plus_micros(-1)).await;
    assert!(
        matches!(early, Err(CycleJobError::NotEnded(_))),
        "{early:?}"
    );

    clock.set(november.ends_at());
    let report = close_cycle(&ledger, november, november.ends_at())
        .await
        .expect("close");
    assert_eq!(report.assets_closed, 2);
    // std: 3 allocs and 3 escrows; pro: 2 allocs.
    assert_eq!(report.expiries, 8);
    assert_closed(&ledger, november, &orgs).await;
    ledger.close().await;
}

/// Runs of the close cut off at many points (the task dropped at an await, as a killed process
/// stops), then one run to the end: the same state as an uninterrupted close.
async fn an_interrupted_close_finishes_exactly(db: &TestDb) {
    let november = CycleId::parse(NOV).expect("a cycle");
    let clock = Arc::new(ManualClock::new(november.starts_at()));
    let ledger = Arc::new(db.ledger(clock.clone()).await);
    let store = ledger.store().clone();
    let orgs = setup(
        store.as_ref(),
        &[Plan::Free, Plan::Teams, Plan::Teams],
        november.starts_at(),
    )
    .await;
    open_cycle(&ledger, november, november.starts_at())
        .await
        .expect("open");
    let std = november.asset("std").expect("an asset");
    for org in &orgs {
        move_some(&ledger, &std, *org).await;
    }
    clock.set(november.ends_at());
    for cut in [0u64, 1, 2, 3, 5, 8, 13, 21] {
        let running = {
            let ledger = ledger.clone();
            tokio::spawn(async move { close_cycle(&ledger, november, november.ends_at()).await })
        };
        tokio::time::sleep(Duration::from_millis(cut)).await;
        running.abort();
        let _ = running.await;
    }
    // Two runs at once, as two processes would.
    let (a, b) = tokio::join!(
        close_cycle(&ledger, november, november.ends_at()),
        close_cycle(&ledger, november, november.ends_at())
    );
    a.expect("a close");
    b.expect("a close");
    assert_closed(&ledger, november, &orgs).await;
    ledger.close().await;
}

on_both_backends!(
    opening_allots_each_org_once,
    closing_expires_everything_once,
    an_interrupted_close_finishes_exactly,
);
