//! Usage requests of many orgs committed together (group commit).
//!
//! A request pays for its transaction as well as for its events: the org's row lock, the
//! reads, the ledger's statements (each a round trip) and the commit. Here requests wait in a
//! queue while a group runs; the next group takes them in arrival order (at most one per org,
//! up to [`GROUP_MAX`] requests and [`GROUP_EVENTS_MAX`] events)
//! and decides them in one
//! [`UsageStore::usage_group_tx`](credex_store::UsageStore::usage_group_tx): every org's row
//! locked in id order, everything read at once, each request decided by the same pure
//! [`plan`] as a lone one against its own org's balances and budgets, every chain through the
//! ledger together, the calls of all of them inserted by one statement, one commit. Nothing
//! waits on a timer: a request that finds its lane idle runs at once.
//!
//! A request its decision refuses (402, 409, …) gets its error and writes nothing; the others
//! of its group are unaffected (their orgs are different, so their decisions are
//! independent). When the ledger refuses a chain, or the group's transaction fails, nothing of
//! the group is written and its requests run again one by one, exactly as without grouping.
//!
//! Orgs are spread over [`LANES`] lanes (by their id), each with its own queue and turn, so
//! that as many groups run at once, never two with the same org (and so never waiting on each
//! other's org locks). A lane's queue holds at most [`QUEUE_MAX`] requests and
//! [`QUEUE_EVENTS_MAX`] events; a request that finds it full is refused as overloaded (503).
//!
//! A group runs in a task of its own, so a client that hangs up never cuts it short.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use credex_store::{UsageGroupOutcome, UsageItemOutcome, USAGE_GROUP_MAX};
use tokio::sync::oneshot;

use super::*;

/// The most requests one group carries.
const GROUP_MAX: usize = 64;
/// The most events a group carries (ten batches of 100), unless its first request alone has
/// more (a batch may have up to `USAGE_BATCH_MAX`).
const GROUP_EVENTS_MAX: usize = 1_000;
/// The most requests waiting in one lane; more are refused as overloaded (503).
const QUEUE_MAX: usize = 4_096;
/// The most events waiting in one lane, which bounds what waiting requests hold in memory.
const QUEUE_EVENTS_MAX: usize = 65_536;
/// How many groups may run at once, one per lane. Two: one backend for the group being
/// written while the other lane's group is decided, so both cores work. Measured (`bench
/// usage`, PostgreSQL, a 2-core machine): batches of 100 from 32 clients, each in its own
/// transaction 29,116 events/s, grouped in two lanes 37,154–46,998 (four lanes did no better
/// at 25,000 events/s offered); single events, one lane 1,658/s, two 1,975–2,147/s.
const LANES: usize = 2;

const _: () = assert!(GROUP_MAX <= USAGE_GROUP_MAX);

/// A request priced and ready to decide: its events, its org's budgets and what it reads.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) org: OrgId,
    pub(super) priced: Vec<Priced>,
    pub(super) budgets: Arc<Vec<Budget>>,
    pub(super) reads: UsageReads,
}

/// The recorded events and how many budget thresholds they crossed.
type Recorded = (Vec<RecordedUsage>, u64);
type Answer = Result<Recorded, UsageError>;

/// Decides one request against its view: what to write, and its answer.
fn decide(
    prepared: &Prepared,
    view: &UsageView,
) -> Result<(Option<UsageWrite>, Recorded), UsageError> {
    let (write, recorded) = plan(prepared.org, view, &prepared.priced, &prepared.budgets)?;
    let crossed = u64::try_from(write.alerts.len()).unwrap_or(u64::MAX);
    let write = (!write.records.is_empty()).then_some(write);
    Ok((write, (recorded, crossed)))
}

/// Runs one request in a transaction of its own.
async fn alone(store: &dyn Store, prepared: &Prepared) -> Answer {
    run(store, prepared.org, &prepared.reads, |view| {
        decide(prepared, view)
    })
    .await
}

#[derive(Debug)]
struct Waiter {
    prepared: Prepared,
    reply: oneshot::Sender<Answer>,
}

#[derive(Debug, Default)]
struct Counters {
    groups: AtomicU64,
    grouped: AtomicU64,
    alone: AtomicU64,
    ungrouped: AtomicU64,
}

/// How this process's small usage requests ran, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupStats {
    /// Groups of two or more requests committed together.
    pub groups: u64,
    /// Requests in those groups.
    pub grouped_requests: u64,
    /// Requests that ran in a transaction of their own.
    pub alone_requests: u64,
    /// Groups that could not commit together, whose requests then ran alone.
    pub ungrouped: u64,
}

/// The queues of small usage requests, one per lane.
#[derive(Debug, Default)]
pub(super) struct Groups {
    lanes: [Lane; LANES],
    stats: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Lane {
    waiting: Mutex<Queue>,
    /// Held by the lane's group that runs; whoever takes it next runs the next group.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// A lane's waiting requests, and how many events they carry together.
#[derive(Debug, Default)]
struct Queue {
    waiters: VecDeque<Waiter>,
    events: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Groups {
    pub(super) fn stats(&self) -> GroupStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GroupStats {
            groups: read(&self.stats.groups),
            grouped_requests: read(&self.stats.grouped),
            alone_requests: read(&self.stats.alone),
            ungrouped: read(&self.stats.ungrouped),
        }
    }

    /// Queues the request and waits for its answer, running groups (its own, or the one it
    /// is in) while the turn is free.
    pub(super) async fn submit(&self, ledger: &Arc<Ledger>, prepared: Prepared) -> Answer {
        let bytes = prepared.org.as_uuid().as_u128();
        let lane = &self.lanes[usize::try_from(bytes % LANES as u128).unwrap_or(0)];
        let (reply, mut answer) = oneshot::channel();
        {
            let mut waiting = lock(&lane.waiting);
            let events = waiting.events.saturating_add(prepared.priced.len());
            if waiting.waiters.len() >= QUEUE_MAX || events > QUEUE_EVENTS_MAX {
                return Err(UsageError::Store(StoreError::Overloaded {
                    waited: std::time::Duration::ZERO,
                }));
            }
            waiting.events = events;
            waiting.waiters.push_back(Waiter { prepared, reply });
        }
        loop {
            let turn = Arc::clone(&lane.turn).lock_owned().await;
            match answer.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(corrupt("a group of usage requests ended without an answer"));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let group = take_group(&mut lock(&lane.waiting));
            let ledger = Arc::clone(ledger);
            let stats = Arc::clone(&self.stats);
            let task = tokio::spawn(async move {
                let _turn = turn;
                run_group(ledger.store().as_ref(), &stats, group).await;
            });
            if let Err(error) = task.await {
                tracing::error!(%error, "a group of usage requests failed");
            }
        }
    }
}

/// The waiting requests of distinct orgs, in arrival order, up to [`GROUP_MAX`] requests
/// and [`GROUP_EVENTS_MAX`] events (or the first request alone, whatever its size); the
/// rest keep their places.
fn take_group(waiting: &mut Queue) -> Vec<Waiter> {
    let group = take(&mut waiting.waiters, |waiter| {
        (waiter.prepared.org, waiter.prepared.priced.len())
    });
    let taken: usize = group
        .iter()
        .map(|waiter| waiter.prepared.priced.len())
        .sum();
    waiting.events = waiting.events.saturating_sub(taken);
    group
}

/// [`take_group`] over anything with an org and a number of events.
fn take<T>(waiting: &mut VecDeque<T>, org_and_size: impl Fn(&T) -> (OrgId, usize)) -> Vec<T> {
    let mut orgs = HashSet::new();
    let mut group = Vec::new();
    let mut events = 0_usize;
    let mut kept = VecDeque::with_capacity(waiting.len());
    while let Some(waiter) = waiting.pop_front() {
        let (org, size) = org_and_size(&waiter);
        if group.len() < GROUP_MAX
            && (group.is_empty() || events.saturating_add(size) <= GROUP_EVENTS_MAX)
            && orgs.insert(org)
        {
            events = events.saturating_add(size);
            group.push(waiter);
        } else {
            kept.push_back(waiter);
        }
    }
    *waiting = kept;
    group
}

/// Answers every request of the group: together if they can be, else one by one.
async fn run_group(store: &dyn Store, stats: &Counters, group: Vec<Waiter>) {
    let mut group = group;
    if group.len() > 1 {
        match together(store, &group).await {
            Ok(Some(answers)) => {
                stats.groups.fetch_add(1, Ordering::Relaxed);
                stats.grouped.fetch_add(
                    u64::try_from(answers.len()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                for (waiter, answer) in group.drain(..).zip(answers) {
                    let _ = waiter.reply.send(answer);
                }
            }
            Ok(None) => {
                stats.ungrouped.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                stats.ungrouped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, requests = group.len(), "a group of usage requests failed; running them one by one");
            }
        }
    }
    for waiter in group {
        stats.alone.fetch_add(1, Ordering::Relaxed);
        let answer = alone(store, &waiter.prepared).await;
        let _ = waiter.reply.send(answer);
    }
}

/// Runs the group in one transaction: each request's answer, or `None` when the ledger
/// refused a chain and nothing was written.
async fn together(store: &dyn Store, group: &[Waiter]) -> Result<Option<Vec<Answer>>, UsageError> {
    let items: Vec<(OrgId, UsageReads)> = group
        .iter()
        .map(|waiter| (waiter.prepared.org, waiter.prepared.reads.clone()))
        .collect();
    let mut answers: Vec<Option<Answer>> = group.iter().map(|_| None).collect();
    let outcome = {
        let mut step = |index: usize, view: &UsageView| {
            let Some(waiter) = group.get(index) else {
                return UsageStep::Stop;
            };
            match decide(&waiter.prepared, view) {
                Ok((write, answer)) => {
                    answers[index] = Some(Ok(answer));
                    match write {
                        Some(write) => UsageStep::Write(Box::new(write)),
                        None => UsageStep::Stop,
                    }
                }
                Err(error) => {
                    answers[index] = Some(Err(error));
                    UsageStep::Stop
                }
            }
        };
        store.usage_group_tx(&items, &mut step).await?
    };
    match outcome {
        UsageGroupOutcome::Refused { .. } => Ok(None),
        UsageGroupOutcome::Done(outcomes) => Ok(Some(
            outcomes
                .into_iter()
                .zip(answers)
                .map(|(outcome, answer)| match outcome {
                    UsageItemOutcome::NoOrg => Err(UsageError::NoOrg),
                    UsageItemOutcome::Stale => Err(UsageError::Stale),
                    UsageItemOutcome::KeyRevoked => Err(UsageError::KeyRevoked),
                    UsageItemOutcome::Stopped | UsageItemOutcome::Written => {
                        answer.unwrap_or_else(|| Err(corrupt("a usage request ended undecided")))
                    }
                })
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(n: u128) -> OrgId {
        OrgId::new(Uuid::from_u128(n + 1)).expect("an org id")
    }

    #[test]
    fn a_group_takes_distinct_orgs_in_order_within_its_event_cap() {
        // (org, events): org 1 twice, and batches that overflow the cap on the way.
        let mut waiting: VecDeque<(OrgId, usize)> = [
            (org(1), 400),
            (org(2), 400),
            (org(1), 100),
            (org(3), 300),
            (org(4), 200),
            (org(5), 1),
        ]
        .into_iter()
        .collect();
        let group = take(&mut waiting, |item| *item);
        // 400 + 400 + 200 = 1,000: org 1's second request waits for its org, org 3's 300 would
        // pass the cap, org 5's one event fits no more.
        assert_eq!(group, vec![(org(1), 400), (org(2), 400), (org(4), 200)]);
        assert_eq!(
            waiting.iter().copied().collect::<Vec<_>>(),
            vec![(org(1), 100), (org(3), 300), (org(5), 1)]
        );
        // A first request larger than the cap goes alone.
        let mut waiting: VecDeque<(OrgId, usize)> =
            [(org(6), 1_000), (org(7), 1)].into_iter().collect();
        assert_eq!(take(&mut waiting, |item| *item), vec![(org(6), 1_000)]);
        let mut waiting: VecDeque<(OrgId, usize)> = (0..100).map(|n| (org(n), 1)).collect();
        assert_eq!(take(&mut waiting, |item| *item).len(), GROUP_MAX);
        assert_eq!(waiting.len(), 100 - GROUP_MAX);
    }
}
