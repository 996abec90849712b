//! Background jobs of `credex serve`.

use std::sync::Arc;
use std::time::Duration;

use credex_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Runs `pass` every `period` (the first at once) until `stop` turns true. A pass that runs
/// late delays the next one rather than bunching them.
pub(crate) fn every<F, Fut>(
    period: Duration,
    mut stop: watch::Receiver<bool>,
    mut pass: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            pass().await;
        }
    })
}

/// How many pending transfers one expiry pass releases at most.
pub const EXPIRY_BATCH: u32 = 1_000;

/// Releases pending transfers whose timeout has run out, every `period`, until `stop` turns
/// true. Safe to run in every process at once: each pass locks what it expires and skips what
/// another process holds.
pub fn spawn_expiry(
    store: Arc<dyn Store>,
    period: Duration,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    every(period, stop, move || {
        let store = store.clone();
        async move {
            loop {
                match store.expire_pending(EXPIRY_BATCH).await {
                    Ok(EXPIRY_BATCH) => continue,
                    Ok(0) => break,
                    Ok(count) => {
                        tracing::info!(count, "expired pending transfers");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "expiring pending transfers failed");
                        break;
                    }
                }
            }
        }
    })
}

/// Removes idempotency keys older than their retention, every `period`, until `stop`.
pub fn spawn_idempotency_purge(
    store: Arc<dyn Store>,
    period: Duration,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    every(period, stop, move || {
        let store = store.clone();
        async move {
            let retention = i64::from(crate::idempotency::RETENTION_HOURS) * 3_600 * 1_000_000;
            let before = store.clock().now().plus_micros(-retention);
            match store.idempotency_purge(before).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "purged idempotency keys"),
                Err(error) => tracing::warn!(%error, "purging idempotency keys failed"),
            }
        }
    })
}

/// Deletes the per-call usage history each plan no longer keeps ([`crate::usage::purge_history`]),
/// every `period`, until `stop`. Safe in every process at once.
pub fn spawn_history_purge(
    store: Arc<dyn Store>,
    period: Duration,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    every(period, stop, move || {
        let store = store.clone();
        async move {
            match crate::usage::purge_history(store.as_ref()).await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::info!(count, "purged usage history past its plan's retention");
                }
                Err(error) => tracing::warn!(%error, "purging usage history failed"),
            }
        }
    })
}

/// How many passes of [`spawn_cycles`] between sweeps of recently closed cycles.
pub const SWEEP_EVERY: u64 = 60;

/// Opens the current billing cycle (allotting orgs that joined since the last pass) and
/// closes every ended cycle that is not closed, every `period`, until `stop`. Safe in every
/// process at once: both jobs are idempotent (see [`crate::cycles`]).
pub fn spawn_cycles(
    ledger: Arc<credex_store::Ledger>,
    period: Duration,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    use crate::cycles::{close_cycle, open_cycle, CycleId};
    let mut passes: u64 = 0;
    every(period, stop, move || {
        passes = passes.wrapping_add(1);
        // Every `SWEEP_EVERY` passes, closed cycles of the last 40 days are closed again: a
        // hold released after its cycle closed frees tokens, and this expires them.
        let sweep = passes % SWEEP_EVERY == 1;
        let ledger = ledger.clone();
        async move {
            let now = ledger.store().clock().now();
            let ended = match ledger.store().cycles(120).await {
                Ok(cycles) => cycles,
                Err(error) => {
                    tracing::warn!(%error, "reading the cycles failed");
                    return;
                }
            };
            let recent = now.plus_micros(-40 * 86_400_000_000);
            for record in ended.iter().filter(|c| {
                c.ends_at <= now && (c.closed_at.is_none() || (sweep && c.ends_at >= recent))
            }) {
                let Ok(cycle) = CycleId::parse(&record.cycle) else {
                    continue;
                };
                if let Err(error) = close_cycle(&ledger, cycle, now).await {
                    tracing::warn!(%error, %cycle, "closing a cycle failed; the next pass retries");
                }
            }
            let current = CycleId::of(now);
            if let Err(error) = open_cycle(&ledger, current, now).await {
                tracing::warn!(%error, cycle = %current, "opening a cycle failed; the next pass retries");
            }
        }
    })
}

/// How many listings one automatic-sale pass sells at most.
pub const AUTO_SALE_BATCH: u32 = 500;

/// Sells to the provider what is left of listings whose automatic sale is due, every
/// `period`, until `stop`. Safe in every process at once: a listing is sold once (see
/// [`crate::market::Market::run_auto_sales`]).
pub fn spawn_auto_sales(
    market: Arc<crate::market::Market>,
    period: Duration,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    every(period, stop, move || {
        let market = market.clone();
        async move {
            match market.run_auto_sales(AUTO_SALE_BATCH).await {
                Ok(report) if report.sold > 0 || report.refused > 0 => {
                    tracing::info!(
                        sold = report.sold,
                        refused = report.refused,
                        "automatic sales"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "automatic sales failed; the next pass retries");
                }
            }
        }
    })
}

/// Scans for the patterns fraud review flags (see [`crate::review`]) every `period`, until
/// `stop`. Safe in every process at once: a flag is raised once.
pub fn spawn_review(
    store: Arc<dyn Store>,
    period: Duration,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let policy = crate::review::ReviewPolicy::default();
    every(period, stop, move || {
        let store = store.clone();
        async move {
            let now = store.clock().now();
            match crate::review::scan(store.as_ref(), &policy, now).await {
                Ok(report) if report.raised > 0 => {
                    tracing::warn!(raised = report.raised, "fraud review raised flags");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "the fraud review scan failed; the next pass retries");
                }
            }
        }
    })
}
