//! Buy orders of one market matched in batches.
//!
//! Every buy of a market must hold the market's row lock while it reads the book and writes its
//! fills, so one market's buys run one after another. Run one transaction each, a market
//! serves only as many buys per second as it can lock, read and commit in that time. Here the
//! buys of one market that arrive while a batch runs wait in a queue; the next batch takes them
//! all (up to [`BATCH_MAX`]) and matches them, in arrival order, in one
//! [`MarketStore::market_batch_tx`](credex_store::MarketStore::market_batch_tx): one lock, one
//! read of the book, every order decided by the same pure code as a lone one against the book
//! the orders before it left, one commit. Nothing waits on a timer: a lone buy runs at once.
//!
//! A batch is all or nothing. When the ledger refuses one order's chain (its buyer lacks the
//! credits, say), the orders after it were decided on a book it changed, so nothing of the
//! batch is written and its orders run again one by one, each in its own transaction, exactly
//! as without batching. The same happens when the batch's transaction fails.
//!
//! A batch runs in a task of its own, so a request that goes away (its client hung up) never
//! cuts a batch short: every order in it gets its answer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use credex_ledger::AssetCode;
use credex_store::{Ledger, MarketBatchOutcome, MarketReads, MarketStep, MarketView, StoreError};
use tokio::sync::oneshot;

use super::{buy_alone, corrupt, plan_buy, BuyContext, MarketError, OrderResult, Plan};

/// The most orders one batch carries.
const BATCH_MAX: usize = 64;
/// The most orders waiting for one market; more are refused as overloaded (503).
const QUEUE_MAX: usize = 4_096;

type Answer = Result<OrderResult, MarketError>;

/// A queue of buy orders per market.
#[derive(Debug, Default)]
pub(super) struct BuyQueues {
    queues: Mutex<HashMap<AssetCode, Arc<BuyQueue>>>,
    stats: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    batched: AtomicU64,
    alone: AtomicU64,
    unbatched: AtomicU64,
}

/// How this process's buy orders ran, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchStats {
    /// Batches of two or more orders committed together.
    pub batches: u64,
    /// Orders in those batches.
    pub batched_orders: u64,
    /// Orders that ran in a transaction of their own.
    pub alone_orders: u64,
    /// Batches that could not commit together (a chain refused, or the transaction failed),
    /// whose orders then ran alone.
    pub unbatched: u64,
}

#[derive(Debug, Default)]
struct BuyQueue {
    waiting: Mutex<VecDeque<Waiter>>,
    /// Held by the batch that runs; whoever takes it next runs the next batch.
    turn: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct Waiter {
    context: BuyContext,
    reply: oneshot::Sender<Answer>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BuyQueues {
    pub(super) fn stats(&self) -> BatchStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BatchStats {
            batches: read(&self.stats.batches),
            batched_orders: read(&self.stats.batched),
            alone_orders: read(&self.stats.alone),
            unbatched: read(&self.stats.unbatched),
        }
    }

    /// Queues the order and waits for its answer, running batches (its own, or the one it is
    /// in) while its market's turn is free.
    pub(super) async fn buy(&self, ledger: &Arc<Ledger>, context: BuyContext) -> Answer {
        let queue = Arc::clone(
            lock(&self.queues)
                .entry(context.request.asset.clone())
                .or_default(),
        );
        let (reply, mut answer) = oneshot::channel();
        {
            let mut waiting = lock(&queue.waiting);
            if waiting.len() >= QUEUE_MAX {
                return Err(MarketError::Store(StoreError::Overloaded {
                    waited: std::time::Duration::ZERO,
                }));
            }
            waiting.push_back(Waiter { context, reply });
        }
        loop {
            let turn = Arc::clone(&queue.turn).lock_owned().await;
            match answer.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(corrupt("a batch of buy orders ended without an answer"));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<Waiter> = {
                let mut waiting = lock(&queue.waiting);
                let take = waiting.len().min(BATCH_MAX);
                waiting.drain(..take).collect()
            };
            let ledger = Arc::clone(ledger);
            let stats = Arc::clone(&self.stats);
            let task = tokio::spawn(async move {
                let _turn = turn;
                run_batch(&ledger, &stats, batch).await;
            });
            if let Err(error) = task.await {
                tracing::error!(%error, "a batch of buy orders failed");
            }
        }
    }
}

/// Answers every order of the batch: together if they can be, else one by one.
async fn run_batch(ledger: &Ledger, stats: &Counters, batch: Vec<Waiter>) {
    // An order id twice in one batch (a client's retry racing its first try): the later one
    // runs alone after the batch, and finds the first one's order.
    let mut seen = HashSet::with_capacity(batch.len());
    let (mut together, mut alone): (Vec<Waiter>, Vec<Waiter>) = (Vec::new(), Vec::new());
    for waiter in batch {
        if seen.insert(waiter.context.request.id) {
            together.push(waiter);
        } else {
            alone.push(waiter);
        }
    }
    if together.len() > 1 {
        let started = std::time::Instant::now();
        let outcome = together_once(ledger, &together).await;
        tracing::debug!(
            orders = together.len(),
            micros = started.elapsed().as_micros(),
            "a batch of buy orders ran"
        );
        match outcome {
            Ok(Some(answers)) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.batched.fetch_add(
                    u64::try_from(answers.len()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                for (waiter, answer) in together.drain(..).zip(answers) {
                    let _ = waiter.reply.send(answer);
                }
            }
            Ok(None) => {
                stats.unbatched.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                stats.unbatched.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, orders = together.len(), "a batch of buy orders failed; running them one by one");
            }
        }
    }
    for waiter in together.into_iter().chain(alone) {
        stats.alone.fetch_add(1, Ordering::Relaxed);
        let answer = buy_alone(ledger.store().as_ref(), &waiter.context).await;
        let _ = waiter.reply.send(answer);
    }
}

/// Runs the orders in one market batch: each one's answer, or `None` when the ledger refused a
/// chain and nothing was written.
async fn together_once(
    ledger: &Ledger,
    waiters: &[Waiter],
) -> Result<Option<Vec<Answer>>, MarketError> {
    let Some(first) = waiters.first() else {
        return Ok(Some(Vec::new()));
    };
    let asset = &first.context.request.asset;
    if waiters
        .iter()
        .any(|waiter| &waiter.context.request.asset != asset)
    {
        return Err(corrupt("a batch of buy orders of several markets"));
    }
    let reads: Vec<MarketReads> = waiters
        .iter()
        .map(|waiter| waiter.context.reads())
        .collect();
    let mut decided: Vec<Option<Answer>> = waiters.iter().map(|_| None).collect();
    let outcome = {
        let mut decide = |index: usize, view: &MarketView| {
            let Some(waiter) = waiters.get(index) else {
                return MarketStep::Stop;
            };
            match plan_buy(view, &waiter.context) {
                Ok(Plan::More) => MarketStep::MoreListings,
                Ok(Plan::Done(value)) => {
                    decided[index] = Some(Ok(value));
                    MarketStep::Stop
                }
                Ok(Plan::Write(write, value)) => {
                    decided[index] = Some(Ok(value));
                    MarketStep::Write(write)
                }
                Err(error) => {
                    decided[index] = Some(Err(error));
                    MarketStep::Stop
                }
            }
        };
        ledger
            .store()
            .market_batch_tx(asset, &reads, &mut decide)
            .await?
    };
    match outcome {
        MarketBatchOutcome::NoMarket => Ok(Some(
            waiters
                .iter()
                .map(|_| Err(MarketError::NoMarket(asset.clone())))
                .collect(),
        )),
        MarketBatchOutcome::Refused => Ok(None),
        MarketBatchOutcome::Committed(_) => decided
            .into_iter()
            .map(|answer| answer.ok_or_else(|| corrupt("a batched buy order ended undecided")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}
