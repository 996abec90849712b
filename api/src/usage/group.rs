//! Small usage requests of many orgs committed together (group commit).
//!
//! A request of a few events pays mostly for its transaction: the org's row lock, the reads,
//! the ledger's statements and the commit. Here such requests wait in one queue while a group
//! runs; the next group takes them in arrival order (at most one per org, up to
//! [`GROUP_MAX`]) and decides them in one
//! [`UsageStore::usage_group_tx`](credex_store::UsageStore::usage_group_tx): every org's row
//! locked in id order, everything read at once, each request decided by the same pure
//! [`plan`] as a lone one against its own org's balances and budgets, every chain through the
//! ledger together, one commit. Nothing waits on a timer: a lone request runs at once.
//!
//! A request its decision refuses (402, 409, …) gets its error and writes nothing; the others
//! of its group are unaffected (their orgs are different, so their decisions are
//! independent). When the ledger refuses a chain, or the group's transaction fails, nothing of
//! the group is written and its requests run again one by one, exactly as without grouping.
//!
//! Orgs may be spread over [`LANES`] lanes (by their id), each with its own queue and turn, so
//! that many groups run at once, never two with the same org (and so never waiting on each
//! other's org locks); one lane measured fastest on this machine.
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
/// The most requests waiting in one lane; more are refused as overloaded (503).
const QUEUE_MAX: usize = 4_096;
/// How many groups may run at once. One: with four lanes the same benchmark (32 clients of
/// single events, 32 orgs, PostgreSQL) did 903–1,029 events/s against 1,058–1,215 with one,
/// the smaller groups paying more per event than running side by side saved.
const LANES: usize = 1;
/// Requests of at most this many events are grouped; larger ones run alone.
pub(super) const GROUPED_EVENTS_MAX: usize = 10;

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
pub(super) async fn alone(store: &dyn Store, prepared: &Prepared) -> Answer {
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
    waiting: Mutex<VecDeque<Waiter>>,
    /// Held by the lane's group that runs; whoever takes it next runs the next group.
    turn: Arc<tokio::sync::Mutex<()>>,
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
            if waiting.len() >= QUEUE_MAX {
                return Err(UsageError::Store(StoreError::Overloaded {
                    waited: std::time::Duration::ZERO,
                }));
            }
            waiting.push_back(Waiter { prepared, reply });
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

/// The waiting requests of distinct orgs, in arrival order, up to [`GROUP_MAX`]; the rest
/// keep their places.
fn take_group(waiting: &mut VecDeque<Waiter>) -> Vec<Waiter> {
    let mut orgs = HashSet::new();
    let mut group = Vec::new();
    let mut kept = VecDeque::with_capacity(waiting.len());
    while let Some(waiter) = waiting.pop_front() {
        if group.len() < GROUP_MAX && orgs.insert(waiter.prepared.org) {
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
