//! Jepsen-style bank tests.
//!
//! Many writers move value at random through two ledgers on one database (two connection
//! pools, each with its own group committer, as two processes would), while readers take
//! whole-ledger snapshots and run the books check. Every snapshot must balance (rule 1) and
//! show no restricted account below zero (rule 2). Every writer keeps what it was told: each
//! transfer acknowledged, each definite failure. At the end the journal must hold exactly the
//! acknowledged transfers, field for field, none of the failed ones, and the balances must be
//! what the acknowledged transfers imply.
//!
//! A second variant calls `Store::commit` directly from two pools with groups of requests that
//! all touch the hot provider accounts, to stress the row-lock order: no deadlock may surface
//! and no update may be lost. A third races the same request through both ledgers at once: it
//! must be answered as committed once and as a replay (`exists`) the other time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credex_ledger::{
    AccountId, AccountKind, Action, AssetCode, Balance, BalanceDelta, Clock, Metadata, Movement,
    PendingState, Transfer, TransferCode, TransferError, TransferId, TransferKind, TransferRecord,
    TransferResult,
};
use credex_store::{JournalEntry, Ledger, Store, StoreError, SystemClock};
use credex_tests::books::{chain, movement, post, single, void, OrgAccounts};
use credex_tests::{on_both_backends, Books, TestDb};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ORGS: usize = 16;
const WRITERS: usize = 16;
const OPS_PER_WRITER: usize = 200;
const READERS: usize = 3;
/// µCR granted to every wallet before the run: 1,000 CR.
const GRANT: u64 = 1_000_000_000;
/// Tokens allotted to every alloc before the run.
const ALLOTMENT: u64 = 1_000_000;
/// More than all the CR and all the tokens in the books: such a transfer must fail.
const OVERDRAW: u64 = 1_000_000_000_000_000;
/// Long enough that no pending transfer times out during a run.
const TIMEOUT: u32 = 3_600;

fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

fn seed() -> u64 {
    let seed = std::env::var("CREDEX_BANK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("bank seed {seed} (set CREDEX_BANK_SEED to replay)");
    seed
}

/// How a request came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Every transfer was created.
    Acked,
    /// The request failed as a whole, with this error on the transfer that broke it.
    Failed(TransferError),
}

/// Judges the results of one request of unlinked single transfers or one linked chain: all
/// created, or exactly one member failed with an allowed error and every other member answered
/// `linked_event_failed`. Anything else is an anomaly.
fn judge(
    transfers: &[Transfer],
    results: &[TransferResult],
    allowed: &[TransferError],
) -> Result<Verdict, String> {
    if results.len() != transfers.len() {
        return Err(format!(
            "{} results for {} transfers",
            results.len(),
            transfers.len()
        ));
    }
    if results.iter().all(Result::is_ok) {
        return Ok(Verdict::Acked);
    }
    let own: Vec<TransferError> = results
        .iter()
        .filter_map(|r| r.err())
        .filter(|e| *e != TransferError::LinkedEventFailed)
        .collect();
    let linked_rest = results
        .iter()
        .filter(|r| **r == Err(TransferError::LinkedEventFailed))
        .count();
    match own.as_slice() {
        [error] if allowed.contains(error) && linked_rest + 1 == results.len() => {
            Ok(Verdict::Failed(*error))
        }
        _ => Err(format!(
            "unexpected results {results:?} (allowed failures {allowed:?}) for {transfers:?}"
        )),
    }
}

/// What the journal must hold for a transfer that was acknowledged, but its timestamp.
fn expected_record(
    transfer: &Transfer,
    pendings: &HashMap<TransferId, Movement>,
) -> Result<TransferRecord, String> {
    let from_movement = |kind, movement: &Movement, timeout_seconds| TransferRecord {
        id: transfer.id(),
        kind,
        debit_account_id: movement.debit_account_id(),
        credit_account_id: movement.credit_account_id(),
        asset: movement.asset().clone(),
        amount: movement.amount(),
        pending_id: None,
        code: movement.code(),
        timeout_seconds,
        metadata: transfer.metadata().clone(),
        linked: transfer.linked(),
        timestamp: credex_ledger::Timestamp::EPOCH,
    };
    let resolving = |kind, pending_id: TransferId, posted: Option<credex_ledger::Amount>| {
        let pending = pendings.get(&pending_id).ok_or_else(|| {
            format!(
                "{} resolves {pending_id}, which was never acknowledged",
                transfer.id()
            )
        })?;
        let mut record = from_movement(kind, pending, None);
        record.amount = posted.unwrap_or(pending.amount());
        record.pending_id = Some(pending_id);
        Ok(record)
    };
    match transfer.action() {
        Action::Move(movement) => Ok(from_movement(TransferKind::Single, movement, None)),
        Action::Reserve {
            movement,
            timeout_seconds,
        } => Ok(from_movement(
            TransferKind::Pending,
            movement,
            *timeout_seconds,
        )),
        Action::Post { pending_id, amount } => resolving(TransferKind::Post, *pending_id, *amount),
        Action::Void { pending_id } => resolving(TransferKind::Void, *pending_id, None),
    }
}

/// The four totals per account that a set of acknowledged transfers implies.
fn implied_balances(
    acked: &[Transfer],
    pendings: &HashMap<TransferId, Movement>,
) -> HashMap<AccountId, BalanceDelta> {
    let mut totals: HashMap<AccountId, BalanceDelta> = HashMap::new();
    for transfer in acked {
        let amount_of = |m: &Movement| i128::from(m.amount().get());
        match transfer.action() {
            Action::Move(m) => {
                totals
                    .entry(m.debit_account_id())
                    .or_default()
                    .debits_posted += amount_of(m);
                totals
                    .entry(m.credit_account_id())
                    .or_default()
                    .credits_posted += amount_of(m);
            }
            Action::Reserve { movement: m, .. } => {
                totals
                    .entry(m.debit_account_id())
                    .or_default()
                    .debits_pending += amount_of(m);
                totals
                    .entry(m.credit_account_id())
                    .or_default()
                    .credits_pending += amount_of(m);
            }
            Action::Post { pending_id, amount } => {
                let m = &pendings[pending_id];
                let posted = i128::from(amount.unwrap_or(m.amount()).get());
                let debit = totals.entry(m.debit_account_id()).or_default();
                debit.debits_pending -= amount_of(m);
                debit.debits_posted += posted;
                let credit = totals.entry(m.credit_account_id()).or_default();
                credit.credits_pending -= amount_of(m);
                credit.credits_posted += posted;
            }
            Action::Void { pending_id } => {
                let m = &pendings[pending_id];
                totals
                    .entry(m.debit_account_id())
                    .or_default()
                    .debits_pending -= amount_of(m);
                totals
                    .entry(m.credit_account_id())
                    .or_default()
                    .credits_pending -= amount_of(m);
            }
        }
    }
    totals
}

fn as_delta(balance: &Balance) -> BalanceDelta {
    BalanceDelta {
        debits_pending: i128::from(balance.debits_pending),
        debits_posted: i128::from(balance.debits_posted),
        credits_pending: i128::from(balance.credits_pending),
        credits_posted: i128::from(balance.credits_posted),
    }
}

/// Rules 1 and 2 on one snapshot: per asset, posted and pending sums are zero; no account that
/// may not go negative has debits (counting pending ones) beyond its posted credits.
fn snapshot_violations(views: &[credex_store::AccountView]) -> Vec<String> {
    let mut sums: BTreeMap<&AssetCode, (i128, i128)> = BTreeMap::new();
    let mut violations = Vec::new();
    for view in views {
        let sum = sums.entry(view.account.asset()).or_default();
        sum.0 += view.balance.net_posted();
        sum.1 += view.balance.net_pending();
        if !view.account.kind().may_go_negative() && view.balance.available() < 0 {
            violations.push(format!(
                "{} {} of {} is negative: {:?}",
                view.account.kind(),
                view.account.id(),
                view.account.asset(),
                view.balance
            ));
        }
    }
    for (asset, (posted, pending)) in sums {
        if posted != 0 || pending != 0 {
            violations.push(format!(
                "{asset} does not balance: posted sum {posted}, pending sum {pending}"
            ));
        }
    }
    violations
}

/// Everything a writer (or the setup) was told.
#[derive(Debug, Default)]
struct Log {
    /// Every transfer acknowledged as created.
    acked: Vec<Transfer>,
    /// Every transfer of a request that definitely failed, with its own result.
    failed: Vec<(Transfer, TransferError)>,
    /// Acknowledged requests, for replays.
    acked_requests: Vec<Vec<Transfer>>,
    /// Single transfers that failed against the ledger's state: their ids are burned.
    burned: Vec<Transfer>,
    /// Results no rule admits, and errors of the store.
    anomalies: Vec<String>,
    requests: u64,
    failed_requests: u64,
    chains: u64,
    resolutions: u64,
    resolution_races: u64,
    overdraws: u64,
    replays: u64,
}

impl Log {
    fn merge(&mut self, other: Log) {
        self.acked.extend(other.acked);
        self.failed.extend(other.failed);
        self.acked_requests.extend(other.acked_requests);
        self.burned.extend(other.burned);
        self.anomalies.extend(other.anomalies);
        self.requests += other.requests;
        self.failed_requests += other.failed_requests;
        self.chains += other.chains;
        self.resolutions += other.resolutions;
        self.resolution_races += other.resolution_races;
        self.overdraws += other.overdraws;
        self.replays += other.replays;
    }

    /// Records what came back for a new request; `None` when it was neither acknowledged nor
    /// a definite failure (an anomaly, logged).
    fn record(
        &mut self,
        transfers: &[Transfer],
        outcome: Result<Vec<TransferResult>, StoreError>,
        allowed: &[TransferError],
    ) -> Option<Verdict> {
        self.requests += 1;
        let results = match outcome {
            Ok(results) => results,
            Err(error) => {
                self.anomalies
                    .push(format!("store error for {transfers:?}: {error}"));
                return None;
            }
        };
        match judge(transfers, &results, allowed) {
            Ok(Verdict::Acked) => {
                self.acked.extend(transfers.iter().cloned());
                self.acked_requests.push(transfers.to_vec());
                Some(Verdict::Acked)
            }
            Ok(Verdict::Failed(error)) => {
                self.failed_requests += 1;
                for (transfer, result) in transfers.iter().zip(&results) {
                    let own = result.err().unwrap_or(TransferError::LinkedEventFailed);
                    self.failed.push((transfer.clone(), own));
                }
                if transfers.len() == 1 && error.burns_id() {
                    self.burned.push(transfers[0].clone());
                }
                Some(Verdict::Failed(error))
            }
            Err(anomaly) => {
                self.anomalies.push(anomaly);
                None
            }
        }
    }

    /// Checks a replay's results against what they must be.
    fn replayed(
        &mut self,
        what: &str,
        outcome: Result<Vec<TransferResult>, StoreError>,
        expected: &[TransferResult],
    ) {
        self.replays += 1;
        match outcome {
            Ok(results) if results == expected => {}
            Ok(results) => self.anomalies.push(format!(
                "replay of {what}: got {results:?}, expected {expected:?}"
            )),
            Err(error) => self
                .anomalies
                .push(format!("store error replaying {what}: {error}")),
        }
    }
}

/// A pending transfer that any writer may try to resolve.
#[derive(Debug, Clone)]
struct Open {
    id: TransferId,
    movement: Movement,
}

#[derive(Debug)]
struct World {
    books: Books,
    ledgers: [Ledger; 2],
    /// Acknowledged pending transfers not yet seen resolved. Writers pick from it without
    /// taking, so two writers often race to resolve the same one.
    open: Mutex<Vec<Open>>,
}

impl World {
    fn provider(&self, asset: &AssetCode, kind: AccountKind) -> AccountId {
        self.books.provider(asset, kind)
    }
}

fn pick_pair(books: &Books, rng: &mut StdRng) -> (OrgAccounts, OrgAccounts) {
    let a = rng.random_range(0..books.orgs.len());
    let b = (a + rng.random_range(1..books.orgs.len())) % books.orgs.len();
    (books.orgs[a], books.orgs[b])
}

fn with_metadata(transfer: Transfer, text: &str) -> Transfer {
    transfer.with_metadata(Metadata::new(text).expect("valid metadata"))
}

/// A CR amount: usually small, sometimes large enough to overdraw a wallet that has paid out.
fn cr_amount(rng: &mut StdRng) -> u64 {
    if rng.random_range(0..10) == 0 {
        rng.random_range(1..=GRANT)
    } else {
        rng.random_range(1..=GRANT / 50)
    }
}

fn token_amount(rng: &mut StdRng) -> u64 {
    if rng.random_range(0..10) == 0 {
        rng.random_range(1..=ALLOTMENT)
    } else {
        rng.random_range(1..=ALLOTMENT / 50)
    }
}

/// One writer: `ops` random operations through one of the two ledgers.
async fn writer(world: Arc<World>, index: usize, seed: u64, ops: usize) -> Log {
    use TransferCode::*;
    use TransferError::{
        ExceedsCredits, IdAlreadyFailed, PendingTransferAlreadyPosted, PendingTransferAlreadyVoided,
    };
    let mut rng = StdRng::seed_from_u64(seed ^ u64::try_from(index).expect("small index"));
    let ledger = &world.ledgers[index % 2];
    let books = &world.books;
    let (cr, tok) = (&books.credit, &books.token);
    let mut log = Log::default();
    for op in 0..ops {
        let roll = rng.random_range(0..100);
        let (a, b) = pick_pair(books, &mut rng);
        if roll < 14 {
            let t = single(a.wallet, b.wallet, cr, cr_amount(&mut rng), Trade);
            let outcome = ledger.create_transfers(vec![t.clone()]).await;
            log.record(&[t], outcome, &[ExceedsCredits]);
        } else if roll < 20 {
            let fees = world.provider(cr, AccountKind::Fees);
            let t = single(a.wallet, fees, cr, rng.random_range(1..=100_000), Fee);
            let outcome = ledger.create_transfers(vec![t.clone()]).await;
            log.record(&[t], outcome, &[ExceedsCredits]);
        } else if roll < 26 {
            let spent = world.provider(cr, AccountKind::Spent);
            let t = single(a.wallet, spent, cr, cr_amount(&mut rng), Spend);
            let outcome = ledger.create_transfers(vec![t.clone()]).await;
            log.record(&[t], outcome, &[ExceedsCredits]);
        } else if roll < 34 {
            let t = single(a.alloc, a.escrow, tok, token_amount(&mut rng), List);
            let outcome = ledger.create_transfers(vec![t.clone()]).await;
            log.record(&[t], outcome, &[ExceedsCredits]);
        } else if roll < 39 {
            let t = single(a.escrow, a.alloc, tok, token_amount(&mut rng), Unlist);
            let outcome = ledger.create_transfers(vec![t.clone()]).await;
            log.record(&[t], outcome, &[ExceedsCredits]);
        } else if roll < 45 {
            let spent = world.provider(tok, AccountKind::Spent);
            let from = if rng.random_range(0..2) == 0 {
                a.alloc
            } else {
                a.acquired
            };
            let t = single(from, spent, tok, token_amount(&mut rng), Spend);
            let outcome = ledger.create_transfers(vec![t.clone()]).await;
            log.record(&[t], outcome, &[ExceedsCredits]);
        } else if roll < 57 {
            // A market fill: the seller's escrowed tokens to the buyer, the buyer's CR to the
            // seller, the fee to the provider, as one linked chain.
            let (seller, buyer) = (a, b);
            let tokens = rng.random_range(1..=ALLOTMENT / 20);
            let price = tokens * rng.random_range(1..=200);
            let fee = price / 100 + 1;
            let fees = world.provider(cr, AccountKind::Fees);
            let fill = format!(r#"{{"fill":{op},"writer":{index},"note":"a \"quoted\" \\ path"}}"#);
            let transfers = chain(vec![
                with_metadata(
                    single(seller.escrow, buyer.acquired, tok, tokens, Trade),
                    &fill,
                ),
                single(buyer.wallet, seller.wallet, cr, price, Trade),
                single(buyer.wallet, fees, cr, fee, Fee),
            ]);
            log.chains += 1;
            let outcome = ledger.create_transfers(transfers.clone()).await;
            log.record(&transfers, outcome, &[ExceedsCredits]);
        } else if roll < 67 {
            let timeout = if rng.random_range(0..2) == 0 {
                None
            } else {
                Some(TIMEOUT)
            };
            let m = match rng.random_range(0..3) {
                0 => movement(
                    a.wallet,
                    world.provider(cr, AccountKind::Spent),
                    cr,
                    cr_amount(&mut rng),
                    Spend,
                ),
                1 => movement(
                    a.alloc,
                    world.provider(tok, AccountKind::Spent),
                    tok,
                    token_amount(&mut rng),
                    Spend,
                ),
                _ => movement(a.wallet, b.wallet, cr, cr_amount(&mut rng), Trade),
            };
            let t = Transfer::new(
                TransferId::generate(),
                Action::Reserve {
                    movement: m.clone(),
                    timeout_seconds: timeout,
                },
                Metadata::default(),
                false,
            )
            .expect("a well-formed pending transfer");
            let outcome = ledger.create_transfers(vec![t.clone()]).await;
            if log.record(std::slice::from_ref(&t), outcome, &[ExceedsCredits])
                == Some(Verdict::Acked)
            {
                let open = Open {
                    id: t.id(),
                    movement: m,
                };
                world.open.lock().expect("open pendings").push(open);
            }
        } else if roll < 80 {
            let picked = {
                let open = world.open.lock().expect("open pendings");
                (!open.is_empty()).then(|| open[rng.random_range(0..open.len())].clone())
            };
            let Some(open) = picked else { continue };
            let full = open.movement.amount().get();
            let resolve = match rng.random_range(0..3) {
                0 => post(open.id, None),
                1 => post(open.id, Some(rng.random_range(1..=full))),
                _ => void(open.id),
            };
            // Sometimes the resolution is linked with a fee, as a settlement would be.
            let transfers = if rng.random_range(0..4) == 0 {
                let fees = world.provider(cr, AccountKind::Fees);
                chain(vec![
                    resolve,
                    single(b.wallet, fees, cr, rng.random_range(1..=1_000), Fee),
                ])
            } else {
                vec![resolve]
            };
            log.resolutions += 1;
            let outcome = ledger.create_transfers(transfers.clone()).await;
            let verdict = log.record(
                &transfers,
                outcome,
                &[
                    ExceedsCredits,
                    PendingTransferAlreadyPosted,
                    PendingTransferAlreadyVoided,
                ],
            );
            let resolved = match verdict {
                Some(Verdict::Acked) => true,
                Some(Verdict::Failed(
                    PendingTransferAlreadyPosted | PendingTransferAlreadyVoided,
                )) => {
                    log.resolution_races += 1;
                    true
                }
                _ => false,
            };
            if resolved {
                world
                    .open
                    .lock()
                    .expect("open pendings")
                    .retain(|o| o.id != open.id);
            }
        } else if roll < 86 {
            // Overdraws: alone, or as the second link of a chain whose first link would pass.
            log.overdraws += 1;
            let over = single(a.wallet, b.wallet, cr, OVERDRAW, Trade);
            let transfers = if rng.random_range(0..2) == 0 {
                vec![over]
            } else {
                chain(vec![single(b.wallet, a.wallet, cr, 1, Trade), over])
            };
            let outcome = ledger.create_transfers(transfers.clone()).await;
            if log.record(&transfers, outcome, &[ExceedsCredits]) == Some(Verdict::Acked) {
                log.anomalies
                    .push(format!("an overdraw was acknowledged: {transfers:?}"));
            }
        } else {
            match rng.random_range(0..3) {
                0 if !log.acked_requests.is_empty() => {
                    let request =
                        log.acked_requests[rng.random_range(0..log.acked_requests.len())].clone();
                    let expected = vec![Err(TransferError::Exists); request.len()];
                    let outcome = ledger.create_transfers(request.clone()).await;
                    log.replayed(&format!("{request:?}"), outcome, &expected);
                }
                1 if !log.burned.is_empty() => {
                    let t = log.burned[rng.random_range(0..log.burned.len())].clone();
                    let outcome = ledger.create_transfers(vec![t.clone()]).await;
                    log.replayed(&format!("{t:?}"), outcome, &[Err(IdAlreadyFailed)]);
                }
                _ => {
                    // The same id with another amount is refused, whatever happened to it.
                    let moves: Vec<&Transfer> = log
                        .acked_requests
                        .iter()
                        .filter(|r| r.len() == 1 && matches!(r[0].action(), Action::Move(_)))
                        .map(|r| &r[0])
                        .collect();
                    if moves.is_empty() {
                        continue;
                    }
                    let original = moves[rng.random_range(0..moves.len())];
                    let Action::Move(m) = original.action() else {
                        unreachable!("filtered on moves")
                    };
                    let changed = Transfer::movement(
                        original.id(),
                        movement(
                            m.debit_account_id(),
                            m.credit_account_id(),
                            m.asset(),
                            m.amount().get() + 1,
                            m.code(),
                        ),
                    );
                    let outcome = ledger.create_transfers(vec![changed.clone()]).await;
                    log.replayed(
                        &format!("{changed:?}"),
                        outcome,
                        &[Err(TransferError::ExistsWithDifferentAmount)],
                    );
                }
            }
        }
    }
    log
}

/// Grants CR to every wallet and allots tokens to every alloc.
async fn fund(ledger: &Ledger, books: &Books, log: &mut Log) {
    let cr_issuance = books.provider(&books.credit, AccountKind::Issuance);
    let tok_issuance = books.provider(&books.token, AccountKind::Issuance);
    let mut transfers = Vec::new();
    for org in &books.orgs {
        transfers.push(single(
            cr_issuance,
            org.wallet,
            &books.credit,
            GRANT,
            TransferCode::Grant,
        ));
        transfers.push(single(
            tok_issuance,
            org.alloc,
            &books.token,
            ALLOTMENT,
            TransferCode::Allotment,
        ));
    }
    let results = ledger
        .create_transfers(transfers.clone())
        .await
        .expect("fund the books");
    assert_eq!(results, vec![Ok(()); transfers.len()], "funding");
    log.acked.extend(transfers);
}

/// Reads the whole journal in order.
async fn whole_journal(store: &dyn Store) -> Vec<JournalEntry> {
    let mut entries = Vec::new();
    let mut after = i64::MIN;
    loop {
        let page = store.journal(after, 1_000).await.expect("read the journal");
        let Some(last) = page.last() else { break };
        after = last.seq;
        entries.extend(page);
    }
    entries
}

/// The end-of-run checks: the journal holds exactly the acknowledged transfers with their
/// fields, none of the failed ones; the books check passes; every balance is what the
/// acknowledged transfers imply; every pending transfer is in the state its acknowledged
/// resolution (if any) put it in.
async fn verify(store: &dyn Store, log: &Log, started: credex_ledger::Timestamp) {
    let finished = store.clock().now();
    let pendings: HashMap<TransferId, Movement> = log
        .acked
        .iter()
        .filter_map(|t| match t.action() {
            Action::Reserve { movement, .. } => Some((t.id(), movement.clone())),
            _ => None,
        })
        .collect();

    // Every acknowledged transfer is there, with the fields it was sent with.
    let acked_ids: Vec<TransferId> = log.acked.iter().map(Transfer::id).collect();
    let unique: HashSet<TransferId> = acked_ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        acked_ids.len(),
        "an id was acknowledged twice"
    );
    let mut found: HashMap<TransferId, TransferRecord> = HashMap::new();
    for ids in acked_ids.chunks(500) {
        for entry in store.transfers(ids).await.expect("read transfers") {
            found.insert(entry.record.id, entry.record);
        }
    }
    let mut mismatches = Vec::new();
    for transfer in &log.acked {
        let Some(stored) = found.get(&transfer.id()) else {
            mismatches.push(format!("acknowledged but missing: {transfer:?}"));
            continue;
        };
        let mut expected = expected_record(transfer, &pendings).expect("a known pending");
        expected.timestamp = stored.timestamp;
        if *stored != expected {
            mismatches.push(format!("stored {stored:?}\n  expected {expected:?}"));
        }
        if stored.timestamp < started || stored.timestamp > finished {
            mismatches.push(format!("timestamp out of the run: {stored:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} acknowledged transfers are wrong in the journal:\n{}",
        mismatches.len(),
        log.acked.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );

    // Nothing that failed is there, and nothing that was not acknowledged.
    let failed_ids: Vec<TransferId> = log.failed.iter().map(|(t, _)| t.id()).collect();
    for ids in failed_ids.chunks(500) {
        let ghosts = store.transfers(ids).await.expect("read transfers");
        assert!(
            ghosts.is_empty(),
            "transfers answered as failed are in the journal: {ghosts:?}"
        );
    }
    let journal = whole_journal(store).await;
    let journal_ids: HashSet<TransferId> = journal.iter().map(|e| e.record.id).collect();
    assert_eq!(
        journal.len(),
        journal_ids.len(),
        "an id is twice in the journal"
    );
    let unacknowledged: Vec<&JournalEntry> = journal
        .iter()
        .filter(|e| !unique.contains(&e.record.id))
        .collect();
    assert!(
        unacknowledged.is_empty(),
        "the journal holds transfers nobody was told about: {unacknowledged:?}"
    );
    assert_eq!(journal.len(), log.acked.len());

    let report = store.check().await.expect("books check");
    assert!(report.is_ok(), "books check: {report:?}");
    assert_eq!(
        report.journal_entries,
        i64::try_from(log.acked.len()).expect("count fits")
    );

    // Balances are what the acknowledged transfers imply, all four totals of every account.
    let implied = implied_balances(&log.acked, &pendings);
    let snapshot = store.snapshot().await.expect("snapshot");
    assert!(snapshot_violations(&snapshot).is_empty());
    let mut wrong = Vec::new();
    for view in &snapshot {
        let want = implied.get(&view.account.id()).copied().unwrap_or_default();
        if as_delta(&view.balance) != want {
            wrong.push(format!(
                "{} {}: stored {:?}, implied {want:?}",
                view.account.kind(),
                view.account.id(),
                view.balance
            ));
        }
    }
    assert!(wrong.is_empty(), "balances differ:\n{}", wrong.join("\n"));
    let known: HashSet<AccountId> = snapshot.iter().map(|v| v.account.id()).collect();
    assert!(implied.keys().all(|id| known.contains(id)));

    // Each pending transfer was resolved at most once, by the resolution acknowledged.
    let mut resolved_by: HashMap<TransferId, (TransferId, PendingState)> = HashMap::new();
    for transfer in &log.acked {
        let (pending_id, state) = match transfer.action() {
            Action::Post { pending_id, .. } => (*pending_id, PendingState::Posted),
            Action::Void { pending_id } => (*pending_id, PendingState::Voided),
            _ => continue,
        };
        let previous = resolved_by.insert(pending_id, (transfer.id(), state));
        assert!(
            previous.is_none(),
            "pending {pending_id} was resolved twice: {previous:?} and {}",
            transfer.id()
        );
    }
    let ids: Vec<TransferId> = pendings.keys().copied().collect();
    let mut stored_pendings = Vec::new();
    for chunk in ids.chunks(500) {
        stored_pendings.extend(store.pendings(chunk).await.expect("read pendings"));
    }
    assert_eq!(stored_pendings.len(), pendings.len());
    for pending in stored_pendings {
        match resolved_by.get(&pending.id) {
            Some((by, state)) => {
                assert_eq!(pending.state, *state, "{pending:?}");
                assert_eq!(pending.resolved_by, Some(*by), "{pending:?}");
            }
            None => {
                assert_eq!(pending.state, PendingState::Pending, "{pending:?}");
                assert_eq!(pending.resolved_by, None, "{pending:?}");
            }
        }
    }
}

/// Takes snapshots until told to stop (at least one), checking rules 1 and 2 on each.
async fn snapshot_reader(store: Arc<dyn Store>, done: Arc<AtomicBool>) -> Result<u64, Vec<String>> {
    let mut taken = 0;
    loop {
        let views = match store.snapshot().await {
            Ok(views) => views,
            Err(error) => return Err(vec![format!("snapshot failed: {error}")]),
        };
        taken += 1;
        let violations = snapshot_violations(&views);
        if !violations.is_empty() {
            return Err(violations);
        }
        if done.load(Ordering::SeqCst) {
            return Ok(taken);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs the books check until told to stop (at least once); each must pass.
async fn check_reader(store: Arc<dyn Store>, done: Arc<AtomicBool>) -> Result<u64, String> {
    let mut taken = 0;
    loop {
        match store.check().await {
            Ok(report) if report.is_ok() => {}
            Ok(report) => return Err(format!("books check under load: {report:?}")),
            Err(error) => return Err(format!("books check failed: {error}")),
        }
        taken += 1;
        if done.load(Ordering::SeqCst) {
            return Ok(taken);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bank(db: &TestDb) {
    let seed = seed();
    let clock = system_clock();
    let started = clock.now();
    let ledgers = [
        db.ledger(clock.clone()).await,
        db.ledger(clock.clone()).await,
    ];
    let books = Books::open(&ledgers[0], ORGS).await;
    let mut log = Log::default();
    fund(&ledgers[0], &books, &mut log).await;
    let world = Arc::new(World {
        books,
        ledgers,
        open: Mutex::new(Vec::new()),
    });

    let begun = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let snapshots: Vec<_> = (0..READERS)
        .map(|i| {
            let store = world.ledgers[i % 2].store().clone();
            tokio::spawn(snapshot_reader(store, done.clone()))
        })
        .collect();
    let checks = tokio::spawn(check_reader(world.ledgers[1].store().clone(), done.clone()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| tokio::spawn(writer(world.clone(), i, seed, OPS_PER_WRITER)))
        .collect();
    for handle in writers {
        log.merge(handle.await.expect("a writer"));
    }
    let writing = begun.elapsed();
    done.store(true, Ordering::SeqCst);
    let mut snapshot_count = 0;
    for handle in snapshots {
        match handle.await.expect("a snapshot reader") {
            Ok(count) => snapshot_count += count,
            Err(violations) => panic!("a snapshot broke rule 1 or 2:\n{}", violations.join("\n")),
        }
    }
    let check_count = checks
        .await
        .expect("the check reader")
        .unwrap_or_else(|e| panic!("{e}"));

    assert!(
        log.anomalies.is_empty(),
        "{} anomalies, first ones:\n{}",
        log.anomalies.len(),
        log.anomalies[..log.anomalies.len().min(10)].join("\n")
    );
    eprintln!(
        "bank[{}]: {} requests ({} failed as a whole, {} chains, {} resolutions of which {} lost a race, \
         {} overdraws, {} replays) -> {} transfers acknowledged, {} failed; {} snapshots, {} checks; \
         writing took {:?}",
        db.backend(),
        log.requests,
        log.failed_requests,
        log.chains,
        log.resolutions,
        log.resolution_races,
        log.overdraws,
        log.replays,
        log.acked.len(),
        log.failed.len(),
        snapshot_count,
        check_count,
        writing
    );
    assert!(snapshot_count > 0 && check_count > 0);
    // The run did what it is meant to: value moved, requests failed, replays were answered.
    assert!(log.acked.len() > WRITERS * OPS_PER_WRITER / 2);
    assert!(log.failed_requests > 0 && log.overdraws > 0 && log.replays > 0);
    assert!(log.resolutions > 0 && log.chains > 0);

    let world = Arc::try_unwrap(world).expect("every task has finished");
    for ledger in &world.ledgers {
        ledger.close().await;
    }
    verify(world.ledgers[0].store().as_ref(), &log, started).await;
}

/// One request of the direct-commit variant: every one touches `issuance` and `spent` (and
/// `fees` for credits) and a random pair of org accounts.
fn hot_request(books: &Books, rng: &mut StdRng) -> Vec<Transfer> {
    use TransferCode::*;
    let (a, b) = pick_pair(books, rng);
    if rng.random_range(0..5) == 0 {
        let tok = &books.token;
        return chain(vec![
            single(
                books.provider(tok, AccountKind::Issuance),
                a.alloc,
                tok,
                rng.random_range(1..=1_000),
                Allotment,
            ),
            single(a.alloc, a.escrow, tok, rng.random_range(1..=1_000), List),
            single(
                a.alloc,
                books.provider(tok, AccountKind::Spent),
                tok,
                rng.random_range(1..=1_000),
                Spend,
            ),
        ]);
    }
    let cr = &books.credit;
    let trade = if rng.random_range(0..10) == 0 {
        OVERDRAW
    } else {
        rng.random_range(1..=GRANT / 20)
    };
    chain(vec![
        single(
            books.provider(cr, AccountKind::Issuance),
            a.wallet,
            cr,
            rng.random_range(1..=1_000_000),
            Grant,
        ),
        single(a.wallet, b.wallet, cr, trade, Trade),
        single(
            b.wallet,
            books.provider(cr, AccountKind::Fees),
            cr,
            rng.random_range(1..=10_000),
            Fee,
        ),
        single(
            b.wallet,
            books.provider(cr, AccountKind::Spent),
            cr,
            rng.random_range(1..=GRANT / 20),
            Spend,
        ),
    ])
}

const COMMITTERS: usize = 8;
const GROUPS_PER_COMMITTER: usize = 40;

/// One task of the direct-commit variant: groups of requests straight to `Store::commit`.
async fn committer(store: Arc<dyn Store>, books: Arc<Books>, index: usize, seed: u64) -> Log {
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::try_from(index).expect("small") << 32));
    let mut log = Log::default();
    for _ in 0..GROUPS_PER_COMMITTER {
        let size = rng.random_range(1..=8);
        let mut group: Vec<Vec<Transfer>> = Vec::with_capacity(size + 1);
        // What each request of the group is: new, a copy of an earlier one of the same group,
        // or a replay of an acknowledged one.
        let mut sources: Vec<Option<usize>> = Vec::with_capacity(size + 1);
        let mut replays = 0;
        for _ in 0..size {
            let roll = rng.random_range(0..20);
            if roll == 0 && !group.is_empty() {
                let original = rng.random_range(0..group.len());
                if sources[original].is_none() {
                    group.push(group[original].clone());
                    sources.push(Some(original));
                    continue;
                }
            }
            if roll == 1 && !log.acked_requests.is_empty() {
                let request =
                    log.acked_requests[rng.random_range(0..log.acked_requests.len())].clone();
                group.push(request);
                sources.push(Some(usize::MAX));
                replays += 1;
                continue;
            }
            group.push(hot_request(&books, &mut rng));
            sources.push(None);
        }
        let results = match store.commit(&group).await {
            Ok(results) => results,
            Err(error) => {
                log.anomalies.push(format!(
                    "commit of {} requests failed: {error}",
                    group.len()
                ));
                continue;
            }
        };
        if results.len() != group.len() {
            log.anomalies.push(format!(
                "{} results for {} requests",
                results.len(),
                group.len()
            ));
            continue;
        }
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(group.len());
        for (i, (request, results)) in group.iter().zip(results).enumerate() {
            match sources[i] {
                None => {
                    let verdict =
                        log.record(request, Ok(results), &[TransferError::ExceedsCredits]);
                    verdicts.push(verdict);
                }
                Some(original) => {
                    let original_acked =
                        original == usize::MAX || verdicts[original] == Some(Verdict::Acked);
                    log.replays += 1;
                    if original_acked {
                        if results != vec![Err(TransferError::Exists); request.len()] {
                            log.anomalies
                                .push(format!("a copy of a committed request got {results:?}"));
                        }
                    } else if results
                        .iter()
                        .any(|r| r.is_ok() || *r == Err(TransferError::Exists))
                    {
                        log.anomalies
                            .push(format!("a copy of a failed request got {results:?}"));
                    }
                    verdicts.push(None);
                }
            }
        }
        log.replays += replays;
    }
    log
}

async fn bank_direct_commit(db: &TestDb) {
    let seed = seed();
    let clock = system_clock();
    let started = clock.now();
    let setup = db.ledger(clock.clone()).await;
    let books = Books::open(&setup, ORGS).await;
    let mut log = Log::default();
    fund(&setup, &books, &mut log).await;
    setup.close().await;
    let books = Arc::new(books);
    let stores = [db.store(clock.clone()).await, db.store(clock.clone()).await];

    let begun = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(snapshot_reader(stores[0].clone(), done.clone()));
    let tasks: Vec<_> = (0..COMMITTERS)
        .map(|i| tokio::spawn(committer(stores[i % 2].clone(), books.clone(), i, seed)))
        .collect();
    for task in tasks {
        log.merge(task.await.expect("a committer"));
    }
    done.store(true, Ordering::SeqCst);
    let snapshots = reader
        .await
        .expect("the reader")
        .unwrap_or_else(|v| panic!("a snapshot broke rule 1 or 2:\n{}", v.join("\n")));
    eprintln!(
        "bank_direct_commit[{}]: {} requests ({} failed), {} copies and replays -> {} transfers \
         acknowledged; {} snapshots; took {:?}",
        db.backend(),
        log.requests,
        log.failed_requests,
        log.replays,
        log.acked.len(),
        snapshots,
        begun.elapsed()
    );
    assert!(
        log.anomalies.is_empty(),
        "{} anomalies (a deadlock or lost race must never reach the caller), first ones:\n{}",
        log.anomalies.len(),
        log.anomalies[..log.anomalies.len().min(10)].join("\n")
    );
    assert!(snapshots > 0);
    assert!(log.failed_requests > 0 && log.replays > 0);
    assert!(log.acked.len() > COMMITTERS * GROUPS_PER_COMMITTER);
    verify(stores[1].as_ref(), &log, started).await;
}

const RACE_ROUNDS: usize = 60;

/// The same request sent through both ledgers at once must be committed once: one caller is
/// told it was created, the other that it exists (rule 6). The request spends the whole wallet,
/// so re-deciding it against the balance the first commit left would fail with
/// `exceeds_credits` — an answer the first caller's success contradicts.
async fn concurrent_duplicates(db: &TestDb) {
    let clock = system_clock();
    let ledgers = [
        db.ledger(clock.clone()).await,
        db.ledger(clock.clone()).await,
    ];
    let books = Books::open(&ledgers[0], 2).await;
    let (a, b) = (books.orgs[0], books.orgs[1]);
    let cr = &books.credit;
    let issuance = books.provider(cr, AccountKind::Issuance);
    let mut wrong = Vec::new();
    let mut committed = Vec::new();
    for round in 0..RACE_ROUNDS {
        let grant = single(issuance, a.wallet, cr, 1_000_000, TransferCode::Grant);
        let results = ledgers[0]
            .create_transfers(vec![grant])
            .await
            .expect("grant");
        assert_eq!(results, vec![Ok(())]);
        let store = ledgers[0].store();
        let available = store.accounts(&[a.wallet]).await.expect("wallet")[0]
            .balance
            .available();
        let value = u64::try_from(available).expect("a wallet is never negative");
        let t = single(a.wallet, b.wallet, cr, value, TransferCode::Trade);
        let (first, second) = tokio::join!(
            ledgers[round % 2].create_transfers(vec![t.clone()]),
            ledgers[(round + 1) % 2].create_transfers(vec![t.clone()]),
        );
        let (first, second) = (first.expect("first"), second.expect("second"));
        let ok = vec![Ok(())];
        let exists = vec![Err(TransferError::Exists)];
        let consistent = (first == ok && second == exists) || (first == exists && second == ok);
        if !consistent {
            wrong.push(format!(
                "round {round}: {} answered {first:?} and {second:?}",
                t.id()
            ));
        }
        if first == ok || second == ok {
            committed.push(t.clone());
        }
        let replay = ledgers[0]
            .create_transfers(vec![t.clone()])
            .await
            .expect("replay");
        let in_journal = store.transfers(&[t.id()]).await.expect("transfer").len();
        if !consistent {
            wrong.push(format!(
                "  then: in journal {in_journal} time(s), a replay answers {replay:?}"
            ));
        }
    }
    let report = ledgers[0].store().check().await.expect("check");
    assert!(report.is_ok(), "{report:?}");
    for ledger in &ledgers {
        ledger.close().await;
    }
    assert!(
        wrong.is_empty(),
        "{} of {RACE_ROUNDS} races gave the same request two different answers:\n{}",
        wrong.len() / 2,
        wrong.join("\n")
    );
    assert_eq!(committed.len(), RACE_ROUNDS);
    let balance = |views: Vec<credex_store::AccountView>| views[0].balance;
    let final_b = balance(ledgers[0].store().accounts(&[b.wallet]).await.expect("b"));
    assert_eq!(
        final_b.net_posted(),
        i128::from(1_000_000_u64) * i128::try_from(RACE_ROUNDS).expect("small")
    );
}

/// The bank test with every PostgreSQL batch speculative (journal rows written before the
/// balance locks, decided again under them): speculation that guesses wrong under
/// contention must never show. SQLite never speculates; its variant repeats the bank test.
async fn bank_speculative(db: &TestDb) {
    // Each nextest test runs in its own process, which reads this once.
    std::env::set_var("CREDEX_SPECULATE_MIN", "1");
    bank(db).await;
}

/// Concurrent duplicates with every PostgreSQL batch speculative.
async fn concurrent_duplicates_speculative(db: &TestDb) {
    std::env::set_var("CREDEX_SPECULATE_MIN", "1");
    concurrent_duplicates(db).await;
}

on_both_backends!(
    bank,
    bank_direct_commit,
    concurrent_duplicates,
    bank_speculative,
    concurrent_duplicates_speculative
);
