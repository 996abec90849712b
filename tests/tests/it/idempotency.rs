//! Idempotency keys in storage, on both backends: one claim per key, replays answer the first
//! answer, a different request under the same key is told so, stale claims are taken over.

use std::sync::Arc;

use credex_ledger::{ManualClock, Timestamp};
use credex_store::{Begin, Store};
use credex_tests::{on_both_backends, TestDb};

const T0: Timestamp = Timestamp::from_micros(1_795_651_200_000_000);
const MINUTE: i64 = 60_000_000;

async fn begin(store: &dyn Store, key: &str, fingerprint: u8, now: Timestamp) -> Begin {
    store
        .idempotency_begin(
            "org-a",
            key,
            &[fingerprint; 32],
            now,
            now.plus_micros(-5 * MINUTE),
        )
        .await
        .expect("begin")
}

async fn claims_replays_and_mismatches(db: &TestDb) {
    let store = db.store(Arc::new(ManualClock::new(T0))).await;
    let store = store.as_ref();
    assert_eq!(begin(store, "k1", 1, T0).await, Begin::Started);
    assert_eq!(begin(store, "k1", 1, T0).await, Begin::InProgress);
    assert_eq!(begin(store, "k1", 2, T0).await, Begin::Mismatch);
    // Another scope has its own keys.
    let other = store
        .idempotency_begin("org-b", "k1", &[1; 32], T0, T0)
        .await
        .expect("begin");
    assert_eq!(other, Begin::Started);
    store
        .idempotency_finish("org-a", "k1", 201, r#"{"id":"x"}"#)
        .await
        .expect("finish");
    let replay = Begin::Replay {
        status: 201,
        body: r#"{"id":"x"}"#.to_owned(),
    };
    assert_eq!(begin(store, "k1", 1, T0).await, replay);
    assert_eq!(
        begin(store, "k1", 1, T0.plus_micros(60 * MINUTE)).await,
        replay
    );
    assert_eq!(begin(store, "k1", 2, T0).await, Begin::Mismatch);

    // A claim abandoned after a failure can be claimed again; a stale one is taken over.
    assert_eq!(begin(store, "k2", 1, T0).await, Begin::Started);
    store
        .idempotency_abandon("org-a", "k2")
        .await
        .expect("abandon");
    assert_eq!(begin(store, "k2", 1, T0).await, Begin::Started);
    assert_eq!(
        begin(store, "k2", 1, T0.plus_micros(4 * MINUTE)).await,
        Begin::InProgress
    );
    assert_eq!(
        begin(store, "k2", 1, T0.plus_micros(6 * MINUTE)).await,
        Begin::Started
    );

    // The purge removes what is older than the retention.
    let purged = store
        .idempotency_purge(T0.plus_micros(MINUTE))
        .await
        .expect("purge");
    assert_eq!(
        purged, 2,
        "k1 of org-a and of org-b; k2 was taken over later"
    );
    assert_eq!(
        begin(store, "k1", 2, T0.plus_micros(7 * MINUTE)).await,
        Begin::Started
    );
}

/// Many callers with one key, through two pools: exactly one runs.
async fn one_claim_under_concurrency(db: &TestDb) {
    let clock = Arc::new(ManualClock::new(T0));
    let pools = [db.store(clock.clone()).await, db.store(clock).await];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = pools[i % 2].clone();
        tasks.spawn(async move { begin(store.as_ref(), "race", 7, T0).await });
    }
    let mut started = 0;
    while let Some(outcome) = tasks.join_next().await {
        match outcome.expect("a task") {
            Begin::Started => started += 1,
            Begin::InProgress => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, 1);
}

on_both_backends!(claims_replays_and_mismatches, one_claim_under_concurrency);
