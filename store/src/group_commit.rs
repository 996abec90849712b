//! Group commit: concurrent requests are coalesced into few database transactions.
//!
//! Requests wait in one queue; each of a few flushers takes everything waiting (up to a bound)
//! and commits it as one batch. While one batch commits, the next one gathers, so the busier
//! the ledger, the larger the batches and the fewer the commits per transfer. Nothing waits on a
//! timer: an idle ledger commits a lone request at once.

use std::sync::Arc;

use credex_ledger::{Transfer, TransferResult};
use tokio::sync::{mpsc, oneshot, Mutex, OwnedSemaphorePermit};

use crate::{Store, StoreError};

/// Bounds of the group committer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// The most transfers one database transaction carries.
    pub max_group_transfers: usize,
    /// The most transfers waiting or committing at once; further requests wait for room.
    pub max_queued_transfers: usize,
    /// How many transactions may commit at once.
    pub flushers: usize,
    /// How long a request may wait for room in the queue before it is refused as overloaded.
    pub max_queue_wait: std::time::Duration,
}

impl GroupCommitConfig {
    /// Defaults for a backend: several flushers on PostgreSQL, one on SQLite (one writer).
    pub fn for_backend(backend: crate::Backend) -> Self {
        Self {
            max_group_transfers: 16_380,
            max_queued_transfers: 262_144,
            max_queue_wait: std::time::Duration::from_secs(30),
            flushers: match backend {
                crate::Backend::Postgres => 3,
                crate::Backend::Sqlite => 1,
            },
        }
    }
}

pub(crate) struct Job {
    pub transfers: Vec<Transfer>,
    pub reply: oneshot::Sender<Result<Vec<TransferResult>, StoreError>>,
    pub permit: OwnedSemaphorePermit,
}

pub(crate) struct Queue {
    receiver: mpsc::UnboundedReceiver<Job>,
    carry: Option<Job>,
}

/// Groups being committed right now, and a signal each time one finishes.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    groups: std::sync::atomic::AtomicUsize,
    finished: tokio::sync::Notify,
}

/// A group smaller than this waits for a group in flight to finish before it starts (it would
/// mostly wait on that group's row locks anyway), gathering what arrives meanwhile.
const SMALL_GROUP: usize = 256;

/// The longest a small group waits for a group in flight.
const SMALL_GROUP_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

impl Queue {
    pub fn new(receiver: mpsc::UnboundedReceiver<Job>) -> Self {
        Self {
            receiver,
            carry: None,
        }
    }

    /// Waits for a request, then takes every other one already waiting, up to `max`
    /// transfers. While the group is small and another is being committed, it waits (a
    /// bounded time) for that one to finish and takes what arrived meanwhile. An idle ledger
    /// commits a lone request at once. `None` once the queue is closed and empty.
    async fn next_group(&mut self, max: usize, in_flight: &InFlight) -> Option<Vec<Job>> {
        let first = match self.carry.take() {
            Some(job) => job,
            None => self.receiver.recv().await?,
        };
        let mut total = first.transfers.len();
        let mut group = vec![first];
        loop {
            while let Ok(job) = self.receiver.try_recv() {
                if total + job.transfers.len() > max {
                    self.carry = Some(job);
                    return Some(group);
                }
                total += job.transfers.len();
                group.push(job);
            }
            let busy = in_flight.groups.load(std::sync::atomic::Ordering::Acquire) > 0;
            if total >= SMALL_GROUP.min(max) || !busy {
                return Some(group);
            }
            let finished = in_flight.finished.notified();
            if in_flight.groups.load(std::sync::atomic::Ordering::Acquire) == 0 {
                continue;
            }
            if tokio::time::timeout(SMALL_GROUP_WAIT, finished)
                .await
                .is_err()
            {
                // Still busy after the wait: take what there is.
                while let Ok(job) = self.receiver.try_recv() {
                    if total + job.transfers.len() > max {
                        self.carry = Some(job);
                        break;
                    }
                    total += job.transfers.len();
                    group.push(job);
                }
                return Some(group);
            }
        }
    }
}

/// One flusher: commits groups until the queue closes.
pub(crate) async fn flusher(
    store: Arc<dyn Store>,
    queue: Arc<Mutex<Queue>>,
    in_flight: Arc<InFlight>,
    max: usize,
) {
    use std::sync::atomic::Ordering;
    loop {
        let group = {
            let mut queue = queue.lock().await;
            let group = queue.next_group(max, &in_flight).await;
            if group.is_some() {
                in_flight.groups.fetch_add(1, Ordering::AcqRel);
            }
            group
        };
        let Some(group) = group else {
            return;
        };
        commit_group(store.as_ref(), group).await;
        in_flight.groups.fetch_sub(1, Ordering::AcqRel);
        in_flight.finished.notify_waiters();
    }
}

async fn commit_group(store: &dyn Store, group: Vec<Job>) {
    let mut requests = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    for job in group {
        requests.push(job.transfers);
        replies.push((job.reply, job.permit));
    }
    match store.commit(&requests).await {
        Ok(results) => {
            for ((reply, _permit), result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) if requests.len() > 1 && !matches!(error, StoreError::Busy { .. }) => {
            // One request may be poison; commit each alone so the others still land.
            tracing::warn!(%error, requests = requests.len(), "group commit failed; committing requests one by one");
            for (request, (reply, _permit)) in requests.into_iter().zip(replies) {
                let result = store
                    .commit(std::slice::from_ref(&request))
                    .await
                    .map(|mut results| results.pop().unwrap_or_default());
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for (reply, _permit) in replies {
                let _ = reply.send(Err(StoreError::Shared(error.clone())));
            }
        }
    }
}
