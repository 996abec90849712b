//! The ten ledger rules of the spec, each shown on both backends.

use std::sync::Arc;

use credex_ledger::{AccountKind, ManualClock, Timestamp, TransferCode, TransferError};
use credex_tests::books::single;
use credex_tests::{on_both_backends, Books, TestDb};

const NOV_26: Timestamp = Timestamp::from_micros(1_795_651_200_000_000);

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(NOV_26))
}

async fn smoke(db: &TestDb) {
    let clock = clock();
    let ledger = db.ledger(clock.clone()).await;
    let books = Books::open(&ledger, 2).await;
    let issuance = books.provider(&books.credit, AccountKind::Issuance);
    let a = books.orgs[0];
    let b = books.orgs[1];
    let results = ledger
        .create_transfers(vec![
            single(
                issuance,
                a.wallet,
                &books.credit,
                1_000,
                TransferCode::Grant,
            ),
            single(a.wallet, b.wallet, &books.credit, 400, TransferCode::Trade),
            single(a.wallet, b.wallet, &books.credit, 601, TransferCode::Trade),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![Ok(()), Ok(()), Err(TransferError::ExceedsCredits)]
    );
    let views = ledger
        .store()
        .accounts(&[a.wallet, b.wallet])
        .await
        .unwrap();
    assert_eq!(views[0].balance.net_posted(), 600);
    assert_eq!(views[1].balance.net_posted(), 400);
    let report = ledger.store().check().await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    ledger.close().await;
}

on_both_backends!(smoke);
